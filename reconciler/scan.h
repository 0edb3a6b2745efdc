/*
 * Which SKUs a release round must read. A hold's deadline is fixed when the
 * deductor makes it (Redis TIME + the promotion's hold_ms, deduct.lua), and
 * only pays, cancels and releases remove holds. So after a read at Redis time
 * t that found no due hold, a SKU cannot have one before
 *
 *     min(its earliest pending deadline, t + hold_ms) + grace
 *
 * and the round need not read it until then. With 10,000 SKUs this spares
 * Redis two commands per SKU every round.
 *
 * What could break that bound makes the caller forget everything
 * (scan_reset): a new Redis connection (another Redis, or this one restored
 * from a snapshot), a new fs:ready epoch or fs:rebuilds count (a rebuild or
 * repair restores holds with old deadlines), a fenced partition, the release
 * lock taken anew. As a backstop against what none of those shows (Redis's
 * clock stepping back, a hand-edited key), every SKU is read anyway once per
 * `slots` rounds (reconciler.release_full_scan_ms), a different slice of
 * the SKUs each round. Skipping only ever delays a release, by at most that
 * backstop: what is released is decided against Redis as before.
 */
#ifndef FLASHSALE_RECONCILER_SCAN_H
#define FLASHSALE_RECONCILER_SCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "strmap.h"
#include "util.h"

/* What the release loop knows of one SKU between rounds (Redis's view). */
struct scan_entry {
	long long next_ms;        /* read again once Redis time reaches this; 0: every round */
	long long remaining, held, sold;
};

struct scan {
	struct strmap idx;        /* sku -> index into e */
	struct scan_entry *e;
	size_t n, cap;
	uint32_t slots;           /* every SKU is read at least once per this many rounds */
	uint32_t round;
};

/* slots <= 1: every SKU every round (no skipping). */
void scan_init(struct scan *s, uint32_t slots);
void scan_free(struct scan *s);

/* Forget every SKU: the next round reads them all. */
void scan_reset(struct scan *s);

/* Start a round (advances the backstop's slice). */
void scan_round(struct scan *s);

/*
 * The index in s->e of sku's entry (made on first sight, and then read this
 * round) in *idx, and whether this round must read the SKU at Redis time
 * now. -1 when out of memory. The index is valid until scan_reset.
 */
int scan_want(struct scan *s, const char *sku, long long now, size_t *idx, bool *want)
	FS_MUSTCHECK;

/*
 * After reading a SKU at Redis time now: `due` holds were past now - grace,
 * `earliest` is the earliest deadline still pending (-1: none) and hold_ms the
 * promotion's hold (<= 0 when unknown: read every round).
 */
void scan_note(struct scan_entry *e, long long now, size_t due, long long earliest,
	       long long hold_ms, long long grace_ms);

#endif
