/*
 * The ledger fold: turns ledger events (PostgreSQL's prefix, then the Kafka
 * tail) into the per-request records and per-SKU counters that Redis held
 * before it was lost. Pure: no I/O, so it is unit-tested on its own.
 *
 * Rules (they mirror deductor/deduct.lua, which produced the events):
 *   - events are deduplicated on event_id. The contract makes it
 *     "<request_id>:<kind>[:<reason>]", so the fold keeps one bit per kind
 *     on each request record (plus the outcome for refusals) instead of a
 *     set of id strings: a byte per request rather than ~40 per event;
 *   - the first purchase outcome o (reserved or a refusal reason) wins;
 *   - a terminal state (paid, cancelled, expired) wins over reserved, and
 *     the first terminal state wins over later ones (a replayed RESERVED
 *     after PAID keeps paid);
 *   - TRANSITION_REFUSED changes nothing and is only counted;
 *   - per intents partition the fold keeps the highest intent offset of a
 *     changing event (Redis' fs:wm), and per SKU the highest sku_seq of any
 *     event (Redis' promotion seq), duplicates included: what a repaired
 *     Redis must show so that no deductor's floor is above it.
 */
#ifndef FLASHSALE_RECONCILER_FOLD_H
#define FLASHSALE_RECONCILER_FOLD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "intent.h"
#include "strmap.h"
#include "util.h"

/* Same numbers as flashsale.LedgerEvent.Kind (names: ledger_kind_parse). */
enum fold_kind {
	FOLD_RESERVED = 1,
	FOLD_PAID = 2,
	FOLD_CANCELLED = 3,
	FOLD_EXPIRED = 4,
	FOLD_REFUSED = 5,
	FOLD_TRANSITION_REFUSED = 6,
};

/* One ledger event, as read from PostgreSQL or decoded from Kafka. */
struct fold_event {
	int kind;                 /* enum fold_kind */
	const char *request_id;
	const char *sku;
	const char *user_id;
	const char *state;
	const char *reason;
	long long qty;
	long long deadline_ms;
	long long at_ms;
	int intent_partition;     /* -1 when no intent made it */
	long long intent_offset;
	long long sku_seq;
	bool changed;
};

/* One request's record, as fs:req:<rid> holds it. */
struct fold_req {
	const char *rid;
	const char *sku;
	const char *user;
	long long qty;
	long long dl;             /* payment deadline (ms), 0 when refused */
	long long ts;             /* at_ms of the last change */
	long long q0;             /* sku_seq of the first outcome */
	long long q;              /* sku_seq of the current state */
	uint8_t o;                /* first outcome: index for fold_word() */
	uint8_t st;               /* state: index for fold_word() */
	uint8_t seen;             /* bit (1 << kind) per kind folded */
};

struct fold_stats {
	size_t events;            /* fold_add calls */
	size_t applied;           /* events that changed or created a record */
	size_t duplicates;        /* same event_id seen before */
	size_t ignored;           /* transition refusals, later outcomes/terminals */
	size_t invalid;           /* unknown kind or state, missing ids */
};

struct fold_promo {
	char sku[65];
	long long stock;
	long long limit;
	long long start_ms;
	long long end_ms;
	long long hold_ms;
	/* Funnel limits, restored to fs:cfg:<sku>: k_pct ip_rate_per_s user_rate_per_s sku_rate_per_s. */
	long long cfg[4];
};

struct fold_user {
	const char *user;
	long long qty;            /* units reserved or paid */
};

struct fold_hold {
	const char *rid;
	long long dl;
};

struct fold_sku {
	struct fold_promo promo;
	long long held;
	long long sold;
	long long remaining;      /* stock - held - sold, at least 0 */
	long long oversold;       /* held + sold - stock when above 0 (allow_oversold) */
	long long seq;            /* the SKU's change sequence */
	long long requests;       /* request records of this SKU, any outcome */
	struct fold_user *users;
	size_t nusers;
	struct fold_hold *holds;  /* reserved requests */
	size_t nholds;
};

struct fold;

struct fold *fold_new(void) FS_MUSTCHECK;
void fold_free(struct fold *f);

/*
 * Fold one event. Returns 1 when it created or changed a record, 0 when it
 * was a duplicate, ignored or invalid (see fold_stats; err says why for an
 * invalid one), -1 when out of memory.
 */
int fold_add(struct fold *f, const struct fold_event *ev, char *err, size_t errlen)
	FS_MUSTCHECK;

/* The state word of a record's o or st index ("reserved", "sold_out", ...). */
const char *fold_word(uint8_t idx);

const struct fold_stats *fold_stats(const struct fold *f);
size_t fold_count(const struct fold *f);
const struct fold_req *fold_get(const struct fold *f, size_t i);
/* The record of request_id, or NULL. */
const struct fold_req *fold_find(const struct fold *f, const char *rid);

/* fs:wm of an intents partition: the highest offset of a changing event, -1 none. */
long long fold_watermark(const struct fold *f, int partition);

/*
 * Per-SKU counters for the promotions (in their order): held, sold, users,
 * holds and the change sequence from the records of each SKU. When
 * remaining would be negative (the ledger says the SKU was oversold, which
 * only a detection failure allows) it fails with -1 and the SKU in err,
 * since writing that back would hide it; with allow_oversold it clamps
 * remaining to 0 and reports the excess in oversold instead (the correction
 * path, fold_plan_correction). *out must be freed with fold_skus_free; its
 * strings point into f and live as long as f.
 */
int fold_summarize(const struct fold *f, const struct fold_promo *promos, size_t npromos,
		   bool allow_oversold, struct fold_sku **out, char *err, size_t errlen)
	FS_MUSTCHECK;
void fold_skus_free(struct fold_sku *s, size_t n);

/*
 * The oversell correction for a summarized SKU (seed 003's data-correction
 * tool): its unpaid holds to cancel, most recent first (latest deadline,
 * then request id), until held + sold <= stock or no hold is left. Up to n
 * records go to out; returns how many. *paid_over gets the units paid
 * beyond the stock that cancelling holds cannot cover: those are for a
 * person, never changed here. -1 when out of memory.
 */
int fold_plan_correction(const struct fold *f, const struct fold_sku *s,
			 const struct fold_req **out, size_t n, long long *paid_over)
	FS_MUSTCHECK;

#endif
