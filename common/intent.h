/*
 * Intents and ledger events on the wire: validation and (de)serialisation
 * shared by every producer and consumer, so that what the gateway sends is
 * exactly what the deductor accepts.
 */
#ifndef FLASHSALE_INTENT_H
#define FLASHSALE_INTENT_H

#include <stdbool.h>
#include <stddef.h>
#include "flashsale.pb-c.h"

#define FS_TOPIC_INTENTS "flashsale.intents"
#define FS_TOPIC_LEDGER "flashsale.ledger"
#define FS_TOPIC_DEADLETTER "flashsale.deadletter"
/*
 * Both the intents and the ledger topic have this many partitions. Fixed:
 * changing it would move SKUs between partitions mid-sale.
 */
#define FS_PARTITIONS 12

typedef Flashsale__Intent fs_intent;
typedef Flashsale__LedgerEvent fs_ledger_event;

/*
 * Check an intent against the contract in proto/flashsale.proto and the
 * message key it arrived under (key may be NULL when not known). -1 with the
 * reason in err.
 */
int intent_validate(const fs_intent *in, const void *key, size_t keylen,
		    char *err, size_t errlen) __attribute__((warn_unused_result));

/*
 * Decode and validate a Kafka message value; NULL with the reason in err.
 * Free the result with intent_free().
 */
fs_intent *intent_decode(const void *buf, size_t len, const void *key, size_t keylen,
			 char *err, size_t errlen) __attribute__((warn_unused_result));
void intent_free(fs_intent *in);

/* Packed size / pack: thin wrappers so callers need not know protobuf-c names. */
size_t intent_packed_size(const fs_intent *in);
size_t intent_pack(const fs_intent *in, void *out);

fs_ledger_event *ledger_decode(const void *buf, size_t len, char *err, size_t errlen)
	__attribute__((warn_unused_result));
void ledger_free(fs_ledger_event *ev);

/* Names used in logs, event ids and PostgreSQL: "purchase", "reserved", ... */
const char *intent_kind_name(int kind);
const char *ledger_kind_name(int kind);

#endif
