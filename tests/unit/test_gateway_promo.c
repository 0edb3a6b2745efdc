/* The gateway's promotion cache: lookup, status, and the sold-out flag
 * learned from the deductor's answers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gateway.h"

static struct promo make(const char *sku, int64_t remaining)
{
	struct promo p;

	memset(&p, 0, sizeof(p));
	strcpy(p.sku, sku);
	p.initial = 100;
	p.remaining = remaining;
	p.limit = 1;
	p.start_ms = 1000;
	p.end_ms = 2000;
	p.hold_ms = 60000;
	return p;
}

static void test_put_find_sorted(void **state)
{
	struct promo_cache c;
	struct promo a = make("b-sku", 5), b = make("a-sku", 7), d = make("c-sku", 0);
	(void)state;

	memset(&c, 0, sizeof(c));
	assert_null(promo_find(&c, "a-sku"));
	assert_int_equal(promo_put(&c, &a), 0);
	assert_int_equal(promo_put(&c, &b), 0);
	assert_int_equal(promo_put(&c, &d), 0);
	assert_int_equal(c.n, 3);
	assert_string_equal(c.items[0].sku, "a-sku");
	assert_string_equal(c.items[2].sku, "c-sku");
	assert_int_equal(promo_find(&c, "b-sku")->remaining, 5);
	assert_null(promo_find(&c, "nope"));
	/* Putting an existing SKU replaces it. */
	a.remaining = 4;
	assert_int_equal(promo_put(&c, &a), 0);
	assert_int_equal(c.n, 3);
	assert_int_equal(promo_find(&c, "b-sku")->remaining, 4);
	free(c.items);
}

static void test_status(void **state)
{
	struct promo p = make("s", 3);
	(void)state;

	assert_string_equal(promo_status(&p, 999), "upcoming");
	assert_string_equal(promo_status(&p, 1000), "active");
	assert_string_equal(promo_status(&p, 2000), "ended");
	p.remaining = 0;
	assert_string_equal(promo_status(&p, 1500), "sold_out");
}

static void test_note_sold_out(void **state)
{
	struct promo_cache c;
	struct promo a = make("hot", 50), b = make("cold", 9);
	(void)state;

	memset(&c, 0, sizeof(c));
	c.refreshed_redis_ms = 5000;
	assert_int_equal(promo_put(&c, &a), 0);
	assert_int_equal(promo_put(&c, &b), 0);
	/* A refusal older than the table says nothing new: units may be back. */
	promo_note_sold_out(&c, "hot", 4000);
	assert_int_equal(promo_find(&c, "hot")->remaining, 50);
	promo_note_sold_out(&c, "hot", 5001);
	assert_int_equal(promo_find(&c, "hot")->remaining, 0);
	assert_string_equal(promo_status(promo_find(&c, "hot"), 1500), "sold_out");
	/* Only that SKU, and an unknown one is ignored. */
	assert_int_equal(promo_find(&c, "cold")->remaining, 9);
	promo_note_sold_out(&c, "unknown", 6000);
	assert_int_equal(c.n, 2);
	free(c.items);
}

/* The deductor's fs:chg payloads, with and without the change's time and number. */
static void test_push_parse(void **state)
{
	struct board_item it;
	static const char *const bad[] = {
		"", "sku-1", "sku-1 0 3", "sku-1 0 -1 5", "sku-1 0 3 -5", "sku-1 0 3 5 -7",
		"sku-1 0 3 5 7 -8", "sku-1 0 3 5 7 8 9", "sku-1 0 3 5 ", "sku-1 0 3 5 7 ",
		"sku-1 0 3 5 x", "bad/sku 0 0 0", "sku-1 0 3 5 7x", "sku-1 0 3 5 7 8x",
	};
	size_t i;

	(void)state;
	assert_true(push_parse("sku-1 0 3 1700000000123", &it));
	assert_string_equal(it.sku, "sku-1");
	assert_int_equal(it.remaining, 0);
	assert_int_equal(it.held, 3);
	assert_int_equal(it.earliest_ms, 1700000000123);
	assert_int_equal(it.changed_ms, 0);
	assert_int_equal(it.seq, 0);
	assert_true(push_parse("sku-1 -2 0 0 1700000000456", &it));
	assert_int_equal(it.remaining, -2);
	assert_int_equal(it.changed_ms, 1700000000456);
	assert_int_equal(it.seq, 0);
	assert_true(push_parse("sku-1 1 0 0 1700000000789 42", &it));
	assert_int_equal(it.remaining, 1);
	assert_int_equal(it.changed_ms, 1700000000789);
	assert_int_equal(it.seq, 42);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_false(push_parse(bad[i], &it));
}

static struct board_item pushed(const char *sku, int64_t remaining, int64_t held, int64_t seq)
{
	struct board_item it;

	memset(&it, 0, sizeof(it));
	snprintf(it.sku, sizeof(it.sku), "%s", sku);
	it.remaining = remaining;
	it.held = held;
	it.changed_ms = 1000;
	it.seq = seq;
	return it;
}

/*
 * A push is applied only when its change number is above the SKU's (read
 * or pushed): the same push from the board and then from the loop's own
 * subscriber, or an older one read late, changes nothing. Pushes without
 * a number (older deductors) are always applied.
 */
static void test_note_push_newer_only(void **state)
{
	struct promo_cache c;
	struct promo p = make("hot", 5);
	struct board_item it;
	(void)state;

	memset(&c, 0, sizeof(c));
	p.push_seq = 3;                     /* as read by a refresh */
	assert_int_equal(promo_put(&c, &p), 0);
	it = pushed("hot", 0, 5, 3);
	assert_false(promo_note_push(&c, &it, "push"));
	assert_int_equal(promo_find(&c, "hot")->remaining, 5);
	it = pushed("hot", 0, 5, 4);        /* ran out: from the board */
	assert_true(promo_note_push(&c, &it, "board"));
	assert_int_equal(promo_find(&c, "hot")->remaining, 0);
	assert_int_equal(promo_find(&c, "hot")->push_seq, 4);
	assert_false(promo_note_push(&c, &it, "push"));   /* the loop's own, later */
	it = pushed("hot", 1, 4, 6);        /* a unit back */
	assert_true(promo_note_push(&c, &it, "board"));
	it = pushed("hot", 0, 5, 5);        /* an older one, read late */
	assert_false(promo_note_push(&c, &it, "push"));
	assert_int_equal(promo_find(&c, "hot")->remaining, 1);
	it = pushed("hot", 0, 5, 0);        /* no number: applied */
	assert_true(promo_note_push(&c, &it, "push"));
	assert_int_equal(promo_find(&c, "hot")->remaining, 0);
	assert_int_equal(promo_find(&c, "hot")->push_seq, 6);
	it = pushed("unknown", 0, 1, 9);
	assert_false(promo_note_push(&c, &it, "push"));
	free(c.items);
}

/*
 * A refresh whose read has a change number at or above the last push's
 * wins even when the push was applied after the read was made (it was
 * read late); a lower number loses to a push applied after the read, and
 * wins over one applied before it (a state loaded again numbers anew).
 */
static void test_read_seq_beats_late_push(void **state)
{
	struct promo_cache c;
	struct promo items[1];
	struct board_item it;
	(void)state;

	memset(&c, 0, sizeof(c));
	items[0] = make("s-1", 10);
	assert_int_equal(promo_put(&c, &items[0]), 0);
	it = pushed("s-1", 0, 10, 5);       /* change 5, applied at 5,000 */
	assert_true(promo_note_push(&c, &it, "push"));
	c.items[0].noted_ms = 5000;
	items[0] = make("s-1", 1);          /* read at 4,000, already at change 6 */
	items[0].push_seq = 6;
	assert_int_equal(promo_apply_slice(&c, items, 1, 4000), 0);
	assert_int_equal(promo_find(&c, "s-1")->remaining, 1);
	assert_int_equal(promo_find(&c, "s-1")->push_seq, 6);
	assert_false(promo_note_push(&c, &it, "push"));

	it = pushed("s-1", 0, 10, 7);       /* change 7 at 5,000, after a read at 4,000 of 6 */
	assert_true(promo_note_push(&c, &it, "push"));
	c.items[0].noted_ms = 5000;
	items[0] = make("s-1", 1);
	items[0].push_seq = 6;
	assert_int_equal(promo_apply_slice(&c, items, 1, 4000), 0);
	assert_int_equal(promo_find(&c, "s-1")->remaining, 0);
	assert_int_equal(promo_find(&c, "s-1")->push_seq, 7);

	items[0] = make("s-1", 9);          /* read at 6,000: numbered anew from 2 */
	items[0].push_seq = 2;
	assert_int_equal(promo_apply_slice(&c, items, 1, 6000), 0);
	assert_int_equal(promo_find(&c, "s-1")->remaining, 9);
	assert_int_equal(promo_find(&c, "s-1")->push_seq, 2);
	it = pushed("s-1", 0, 9, 3);
	assert_true(promo_note_push(&c, &it, "push"));
	free(c.items);
}

/* The Redis clock's offset comes from the TIME round trip least delayed. */
static void test_clock_sample_shortest_round_trip_wins(void **state)
{
	struct promo_cache c;
	(void)state;

	memset(&c, 0, sizeof(c));
	/* A 60 ms round trip answered at 60 ms, Redis saying 50: +20 ms on its own. */
	promo_clock_sample(&c, 60000, 60000, 50000);
	assert_int_equal(c.clock_offset_ms, 20);
	/* A 2 ms one says +0.5 ms: it wins, rounded to 1. */
	promo_clock_sample(&c, 2000, 1002000, 1001500);
	assert_int_equal(c.clock_offset_ms, 1);
	/* A slower one that agrees within its range (-20 +- 40 ms) does not move it. */
	promo_clock_sample(&c, 80000, 2080000, 2020000);
	assert_int_equal(c.clock_offset_ms, 1);
	/* Negative offsets round away from zero too. */
	promo_clock_sample(&c, 1000, 3000000, 2998900);
	assert_int_equal(c.clock_offset_ms, -1);
	/* Slower samples that agree (+1.4 ms) keep it until PROMO_CLOCK_SAMPLES
	 * newer ones came: then the old best is gone. */
	for (int i = 0; i < PROMO_CLOCK_SAMPLES; i++) {
		assert_int_equal(c.clock_offset_ms, -1);
		promo_clock_sample(&c, 1800, 10000000 + i * 500000, 10000000 + i * 500000 + 500);
	}
	assert_int_equal(c.clock_offset_ms, 1);
}

/* When the best sample is the oldest, the next best of those kept follows it. */
static void test_clock_sample_next_best_when_the_best_goes(void **state)
{
	struct promo_cache c;
	(void)state;

	memset(&c, 0, sizeof(c));
	promo_clock_sample(&c, 1000, 1000000, 1000000);          /* rtt 1 ms, +0.5 ms */
	promo_clock_sample(&c, 2000, 2000000, 2002500);          /* rtt 2 ms, +3.5 ms */
	for (int i = 2; i < PROMO_CLOCK_SAMPLES; i++)            /* rtt 8 ms, +1 ms */
		promo_clock_sample(&c, 8000, 3000000 + i * 500000, 3000000 + i * 500000 - 3000);
	assert_int_equal(c.clock_offset_ms, 1);
	/* A slow one takes the first's place: the 2 ms one is the best now. */
	promo_clock_sample(&c, 9000, 20000000, 19997500);
	assert_int_equal(c.clock_offset_ms, 4);
}

/* A clock that stepped is followed at the next round trip, not 16 later. */
static void test_clock_sample_follows_a_step(void **state)
{
	struct promo_cache c;
	(void)state;

	memset(&c, 0, sizeof(c));
	promo_clock_sample(&c, 500, 1000000, 1000000);
	assert_int_equal(c.clock_offset_ms, 0);
	/* The host's clock jumped 5 s ahead: a slower sample that cannot agree. */
	promo_clock_sample(&c, 30000, 7000000, 2000000);
	assert_int_equal(c.clock_offset_ms, -4985);
	/* The pre-step sample is gone: a later, quicker one is compared with this. */
	promo_clock_sample(&c, 1000, 8000000, 3000000);
	assert_int_equal(c.clock_offset_ms, -5000);
	assert_int_equal(c.clock_n, 2);
}

/*
 * A refresh that straddles a FLUSHALL read the SKU set before it and the
 * hashes after: the cached SKUs must survive it (found by CI: the sale's
 * SKU vanished from the cache and buyers heard unknown_sku for 13 s, until
 * the rebuild), while a SKU never seen is still dropped.
 */
static void test_refresh_keeps_known_skus(void **state)
{
	struct promo_cache c;
	struct promo live = make("live-1", 42), items[3];
	(void)state;

	memset(&c, 0, sizeof(c));
	assert_int_equal(promo_put(&c, &live), 0);
	items[0] = make("live-1", 0);
	items[0].initial = -1;             /* its hash was gone */
	items[1] = make("never-seen", 0);
	items[1].initial = -1;
	items[2] = make("fresh-1", 9);     /* read whole */
	assert_int_equal(promo_keep_known(&c, items, 3), 2);
	assert_string_equal(items[0].sku, "live-1");
	assert_int_equal(items[0].initial, 100);
	assert_int_equal(items[0].remaining, 42);
	assert_string_equal(items[1].sku, "fresh-1");
	assert_int_equal(items[1].remaining, 9);
	free(c.items);
}

/*
 * A large catalogue is read a slice per refresh: over ceil(members / 1000)
 * refreshes every known SKU is read exactly once, none of them reads much
 * more than 1000, and a SKU the cache does not know is read every time.
 * Small catalogues and full refreshes read everything.
 */
static void test_refresh_slices(void **state)
{
	enum { N = 10000 };
	struct promo_cache c;
	static int reads[N];
	char sku[32];
	const uint64_t slices = (N + PROMO_SLICE_SKUS - 1) / PROMO_SLICE_SKUS;

	(void)state;
	memset(&c, 0, sizeof(c));
	memset(reads, 0, sizeof(reads));
	/* Sorted, as the cache keeps them. */
	c.items = calloc(N, sizeof(*c.items));
	assert_non_null(c.items);
	for (int i = 0; i < N; i++) {
		snprintf(sku, sizeof(sku), "sku-%05d", i);
		c.items[c.n++] = make(sku, 1);
	}
	for (uint64_t slice = 7; slice < 7 + slices; slice++) {
		int in_slice = 0;

		for (int i = 0; i < N; i++) {
			snprintf(sku, sizeof(sku), "sku-%05d", i);
			if (promo_slice_reads(&c, sku, N, slice, false)) {
				reads[i]++;
				in_slice++;
			}
		}
		assert_true(in_slice > PROMO_SLICE_SKUS / 2 && in_slice < 3 * PROMO_SLICE_SKUS / 2);
	}
	for (int i = 0; i < N; i++)
		assert_int_equal(reads[i], 1);
	/* Unknown, full, or a catalogue of one slice: always read. */
	for (uint64_t slice = 0; slice < slices; slice++)
		assert_true(promo_slice_reads(&c, "brand-new", N, slice, false));
	for (uint64_t slice = 0; slice < slices; slice++) {
		assert_true(promo_slice_reads(&c, "sku-00042", N, slice, true));
		assert_true(promo_slice_reads(&c, "sku-00042", PROMO_SLICE_SKUS, slice, false));
	}
	free(c.items);
}

/* The set's digest follows every insert, not a replace; any other set differs. */
static void test_same_set_digest(void **state)
{
	struct promo_cache c;
	struct promo a = make("a-sku", 1), b = make("b-sku", 2);
	uint64_t ha = promo_sku_hash("a-sku"), hb = promo_sku_hash("b-sku");
	(void)state;

	memset(&c, 0, sizeof(c));
	assert_true(promo_same_set(&c, 0, 0));
	assert_int_equal(promo_put(&c, &a), 0);
	assert_int_equal(promo_put(&c, &b), 0);
	assert_true(promo_same_set(&c, 2, ha + hb));
	b.remaining = 0;
	assert_int_equal(promo_put(&c, &b), 0);
	assert_true(promo_same_set(&c, 2, hb + ha));
	assert_false(promo_same_set(&c, 2, ha + promo_sku_hash("x-sku")));
	assert_false(promo_same_set(&c, 1, ha));
	assert_false(promo_same_set(&c, 3, ha + hb + promo_sku_hash("x-sku")));
	free(c.items);
}

/*
 * A slice applied in place leaves what a rebuild would: read counters and
 * limits replace the cached ones, but a push newer than the read keeps its
 * counters; a missing hash keeps the cached entry, a bad one drops the SKU,
 * an unknown SKU is inserted; SKUs outside the slice are untouched; the
 * digest follows.
 */
static void test_apply_slice_in_place(void **state)
{
	struct promo_cache c;
	struct promo base[5], items[5];
	const char *skus[5] = { "s-0", "s-1", "s-2", "s-3", "s-4" };
	uint64_t sum = 0;
	(void)state;

	memset(&c, 0, sizeof(c));
	for (int i = 0; i < 5; i++) {
		base[i] = make(skus[i], 10 + i);
		assert_int_equal(promo_put(&c, &base[i]), 0);
	}
	/* s-1 was pushed at 5,000 (Redis clock), after the read at 4,000. */
	promo_note_counts(&c, "s-1", 0, 7, 9000, "push");
	c.items[1].noted_ms = 5000;
	items[0] = make("s-0", 3);            /* read: replaces */
	items[0].k_pct = 300;
	items[1] = make("s-1", 6);            /* read before the push */
	items[1].limit = 4;
	items[2] = make("s-2", 0);
	items[2].initial = -1;                /* its hash was gone */
	items[3] = make("s-3", 0);
	items[3].initial = PROMO_HASH_BAD;
	items[4] = make("new-1", 8);          /* added since the set was read */
	assert_int_equal(promo_apply_slice(&c, items, 5, 4000), 0);

	assert_int_equal(c.n, 5);
	assert_int_equal(promo_find(&c, "s-0")->remaining, 3);
	assert_int_equal(promo_find(&c, "s-0")->k_pct, 300);
	assert_int_equal(promo_find(&c, "s-1")->remaining, 0);
	assert_int_equal(promo_find(&c, "s-1")->held, 7);
	assert_int_equal(promo_find(&c, "s-1")->earliest_ms, 9000);
	assert_int_equal(promo_find(&c, "s-1")->noted_ms, 5000);
	assert_int_equal(promo_find(&c, "s-1")->limit, 4);
	assert_int_equal(promo_find(&c, "s-2")->remaining, 12);
	assert_null(promo_find(&c, "s-3"));
	assert_int_equal(promo_find(&c, "s-4")->remaining, 14);
	assert_int_equal(promo_find(&c, "new-1")->remaining, 8);
	for (size_t i = 1; i < c.n; i++)
		assert_true(strcmp(c.items[i - 1].sku, c.items[i].sku) < 0);
	for (size_t i = 0; i < c.n; i++)
		sum += promo_sku_hash(c.items[i].sku);
	assert_true(promo_same_set(&c, c.n, sum));

	/* A push older than the read loses: the read counters are newer. */
	promo_note_counts(&c, "s-4", 0, 1, 0, "push");
	c.items[4].noted_ms = 3000;
	assert_string_equal(c.items[4].sku, "s-4");
	items[0] = make("s-4", 5);
	assert_int_equal(promo_apply_slice(&c, items, 1, 4000), 0);
	assert_int_equal(promo_find(&c, "s-4")->remaining, 5);
	assert_int_equal(promo_find(&c, "s-4")->noted_ms, 0);
	free(c.items);
}

/* A bad hash drops the SKU from a rebuild too (it used to blank its name). */
static void test_keep_known_drops_bad_hash(void **state)
{
	struct promo_cache c;
	struct promo live = make("live-1", 42), items[2];
	(void)state;

	memset(&c, 0, sizeof(c));
	assert_int_equal(promo_put(&c, &live), 0);
	items[0] = make("live-1", 0);
	items[0].initial = PROMO_HASH_BAD;
	items[1] = make("fresh-1", 9);
	assert_int_equal(promo_keep_known(&c, items, 2), 1);
	assert_string_equal(items[0].sku, "fresh-1");
	free(c.items);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_put_find_sorted),
		cmocka_unit_test(test_status),
		cmocka_unit_test(test_note_sold_out),
		cmocka_unit_test(test_push_parse),
		cmocka_unit_test(test_note_push_newer_only),
		cmocka_unit_test(test_read_seq_beats_late_push),
		cmocka_unit_test(test_clock_sample_shortest_round_trip_wins),
		cmocka_unit_test(test_clock_sample_next_best_when_the_best_goes),
		cmocka_unit_test(test_clock_sample_follows_a_step),
		cmocka_unit_test(test_refresh_keeps_known_skus),
		cmocka_unit_test(test_refresh_slices),
		cmocka_unit_test(test_same_set_digest),
		cmocka_unit_test(test_apply_slice_in_place),
		cmocka_unit_test(test_keep_known_drops_bad_hash),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
