/*
 * The request ids Redis knows (a record fs:req:<rid> exists), as one event
 * loop learned them, so that a filter refusing a client-chosen id (sold out,
 * ended, rate limited) asks Redis whether the id is a retry of a purchase
 * that got in only when it may be (routes.c, refuse_unless_known_later). In
 * a sale, almost every buyer is refused: one Redis look-up each was most of
 * what a refusal cost beyond parsing the request.
 *
 * How it stays complete (no id that Redis knows is missing):
 *   - every writer of a record tells, in the same script, on fs:st: admit.lua
 *     "+ rid rid ...", deduct.lua "rid state", a rebuild "* rebuilt";
 *   - the loop's subscriber (push.c) notes each id, and on every subscribe
 *     sweeps what was written before (SCAN fs:req:*): the set is complete
 *     from the end of a sweep that ran entirely while subscribed;
 *   - a lost subscription, a rebuild, or more ids than the cap make it
 *     incomplete again: every refusal asks Redis, as before, until the next
 *     sweep ends;
 *   - a subscriber that lags (or whose socket died silently) is caught by
 *     an echo: every 100 ms the loop publishes its clock on a channel of its
 *     own, and Redis delivers a subscriber's messages in order, so an echo
 *     back means every id told before it was sent has been noted. Refusals
 *     trust the set only while the last echo back was sent less than
 *     KNOWN_LAG_US ago; push.c drops a subscriber silent for seconds.
 * Ids are kept as 64-bit hashes: a collision, like an id whose record has
 * expired or was given back, only costs the look-up it would have cost.
 * What it cannot see: a retry that arrives at one gateway within moments
 * of another gateway's admission, before the push (microseconds, at most
 * KNOWN_LAG_US with a lagging subscriber; the admitting gateway answers 202
 * only after Kafka's acknowledgement, and a buyer retries after a timeout,
 * not then). Event loop thread only.
 */
#ifndef FLASHSALE_GATEWAY_KNOWN_H
#define FLASHSALE_GATEWAY_KNOWN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

struct gw_store;

/* Ids a loop keeps at most: 16 MB of slots at most (half full, 8 bytes each). */
#define KNOWN_IDS_MAX (1u << 20)
/* Trust the set only while the subscriber is known caught up to this recently. */
#define KNOWN_LAG_US (250 * 1000LL)

struct known {
	uint64_t *slot;             /* 0: empty */
	size_t mask;                /* slots - 1, a power of two */
	size_t n;
	size_t max;                 /* ids kept at most (beyond: incomplete) */
	bool live;                  /* subscribed to fs:st: every new id is told */
	bool complete;              /* a sweep ended while live, nothing lost since */
	bool sweeping;
	uint64_t gen;               /* bumped on every loss: a sweep of an older one is void */
	uint64_t sweep_gen;
	int64_t overflow_us;        /* mono time of the last overflow, 0: none */
	int64_t overflow_pause_us;  /* no sweep this long after it; doubles, 0 once complete */
	bool swept_since_overflow;  /* a sweep began after the last overflow */
	int64_t caught_up_us;       /* every id told before this mono time is noted */
	char cursor[24];            /* the running sweep's SCAN cursor */
	struct gw_store *store;     /* the loop's commands connection, for sweeps */
};

/* Start-up: -1 on allocation failure. */
int known_init(struct known *k, struct gw_store *store, size_t max) FS_MUSTCHECK;
void known_free(struct known *k);

/* Note an id Redis has a record of (told on fs:st, or swept). */
void known_note(struct known *k, const char *rid);

/* Note each id of a space-separated list (admit.lua's "+ rid rid ..."). */
void known_note_list(struct known *k, const char *ids);

/*
 * false only when the set is complete, caught up to KNOWN_LAG_US before
 * now_us (mono), and rid is not in it: Redis has no record of rid. true
 * means "ask Redis".
 */
bool known_may_exist(const struct known *k, const char *rid, int64_t now_us);

/* The subscriber read everything published before mono time t (an echo, or its subscribe). */
void known_caught_up(struct known *k, int64_t t);

/* The subscription is up (again): sweep what was written before it. */
void known_live(struct known *k);

/* The subscription is lost, or Redis was rewritten: incomplete until a new sweep. */
void known_lost(struct known *k, bool still_live);

/*
 * Start a sweep if one is due and none runs (live, incomplete, the store
 * connected; after an overflow, not before a pause of a minute that doubles
 * with each overflow in a row, up to 16). Called on subscribe
 * and by the cache tick, which retries a sweep a lost connection cut short.
 */
void known_sweep(struct known *k);

/* Start-up. */
void known_metrics_register(void);

#endif
