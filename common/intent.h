/*
 * Intents and ledger events on the wire: validation and (de)serialisation
 * shared by every producer and consumer, so that what the gateway sends is
 * exactly what the deductor accepts.
 */
#ifndef FLASHSALE_COMMON_INTENT_H
#define FLASHSALE_COMMON_INTENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "flashsale.pb-c.h"
#include "util.h"

#define FS_TOPIC_INTENTS "flashsale.intents"
#define FS_TOPIC_LEDGER "flashsale.ledger"
#define FS_TOPIC_DEADLETTER "flashsale.deadletter"
/*
 * Both the intents and the ledger topic have this many partitions. Fixed:
 * changing it would move SKUs between partitions mid-sale.
 */
#define FS_PARTITIONS 12

/* Limits of an Intent on the wire (proto/README.md): larger ones are dead-lettered. */
#define FS_INTENT_MAX_BYTES 1024
#define FS_CLIENT_IP_MAX 45     /* the longest textual IPv6 address */
#define FS_SOURCE_MAX 32

typedef Flashsale__Intent fs_intent;
typedef Flashsale__LedgerEvent fs_ledger_event;

/*
 * Check an intent against the contract in proto/flashsale.proto and the
 * message key it arrived under (which must equal its sku; NULL fails). -1
 * with the reason in err.
 */
int intent_validate(const fs_intent *in, const void *key, size_t keylen,
		    char *err, size_t errlen) FS_MUSTCHECK;

/*
 * Decode and validate a Kafka message value of at most FS_INTENT_MAX_BYTES;
 * NULL with the reason in err. Free the result with intent_free().
 */
fs_intent *intent_decode(const void *buf, size_t len, const void *key, size_t keylen,
			 char *err, size_t errlen) FS_MUSTCHECK;
void intent_free(fs_intent *in);

/* Packed size / pack: thin wrappers so callers need not know protobuf-c names. */
size_t intent_packed_size(const fs_intent *in);
size_t intent_pack(const fs_intent *in, void *out);

/*
 * What one ledger event says, as its producers know it (the deductor's
 * step, the reconciler's correction). ledger_event_set() turns it into a
 * LedgerEvent whose strings point into these (NULL strings become "").
 */
struct ledger_fields {
	int kind;                   /* LedgerEvent.Kind */
	const char *event_id, *request_id, *sku, *user_id, *state, *reason;
	uint32_t qty;
	int64_t deadline_ms, at_ms;
	int64_t remaining, held, sold, initial;   /* the SKU's counters after it */
	int intent_kind;            /* Intent.Kind that made it, 0 when none did */
	int32_t intent_partition;
	int64_t intent_offset;
	int64_t epoch, sku_seq;
	bool changed;
};

void ledger_event_set(fs_ledger_event *ev, const struct ledger_fields *f);

fs_ledger_event *ledger_decode(const void *buf, size_t len, char *err, size_t errlen)
	FS_MUSTCHECK;
void ledger_free(fs_ledger_event *ev);

/* An Intent.Kind's name in logs and Lua: "purchase" ...; "unspecified" if unknown. */
const char *intent_kind_name(int kind);

/*
 * The ledger's vocabulary, one table for every daemon: a LedgerEvent.Kind's
 * name in event ids, Lua replies and PostgreSQL ("reserved" ...
 * "transition_refused"), NULL when unknown; and back (0 when unknown).
 */
const char *ledger_kind_name(int kind);
int ledger_kind_parse(const char *name);

/*
 * orders.state an event of this kind leads to: "held" for RESERVED, "paid",
 * "cancelled", "expired" for the terminal kinds; NULL for kinds that do not
 * touch orders (refusals, unknown).
 */
const char *ledger_kind_order_state(int kind);

/* True for the kinds that end a hold: PAID, CANCELLED, EXPIRED. */
bool ledger_kind_terminal(int kind);

#endif
