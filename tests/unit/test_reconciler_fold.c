/*
 * The ledger fold that `reconciler rebuild` writes back to Redis: replays and
 * duplicates collapse, terminal states win, refusals keep their outcome, and
 * the per-SKU counters add up (or the oversell is reported).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "reconciler.h"

static struct fold_event ev(int kind, const char *rid, const char *sku, const char *user,
			    long long qty, const char *reason, long long dl, long long at)
{
	struct fold_event e = {
		.kind = kind, .request_id = rid, .sku = sku, .user_id = user,
		.qty = qty, .reason = reason, .state = reason, .deadline_ms = dl, .at_ms = at,
	};
	return e;
}

static int add(struct fold *f, struct fold_event e)
{
	char err[256] = "";
	int rc = fold_add(f, &e, err, sizeof(err));

	assert_int_not_equal(rc, -1);
	return rc;
}

static struct fold_promo promo(const char *sku, long long stock, long long limit)
{
	struct fold_promo p = { .stock = stock, .limit = limit, .start_ms = 1, .end_ms = 2,
				.hold_ms = 600000 };

	snprintf(p.sku, sizeof(p.sku), "%s", sku);
	return p;
}

static void test_dedup(void **state)
{
	struct fold *f = fold_new();

	assert_non_null(f);
	assert_int_equal(add(f, ev(FOLD_RESERVED, "r1", "A", "u1", 2, "", 500, 100)), 1);
	assert_int_equal(add(f, ev(FOLD_RESERVED, "r1", "A", "u1", 2, "", 500, 100)), 0);
	assert_int_equal(add(f, ev(FOLD_PAID, "r1", "A", "u1", 2, "", 500, 200)), 1);
	assert_int_equal(add(f, ev(FOLD_PAID, "r1", "A", "u1", 2, "", 500, 200)), 0);
	assert_int_equal(fold_count(f), 1);
	assert_int_equal(fold_stats(f)->duplicates, 2);
	assert_int_equal(fold_stats(f)->applied, 2);
	assert_string_equal(fold_word(fold_find(f, "r1")->st), "paid");
	assert_int_equal(fold_find(f, "r1")->ts, 200);
	assert_null(fold_find(f, "r2"));
	fold_free(f);
}

static void test_replayed_reserved_after_paid(void **state)
{
	struct fold *f = fold_new();
	const struct fold_req *r;

	assert_non_null(f);
	add(f, ev(FOLD_RESERVED, "r1", "A", "u1", 1, "", 500, 100));
	add(f, ev(FOLD_PAID, "r1", "A", "u1", 1, "", 500, 200));
	/* The tail replays the purchase (same event id): paid stays. */
	add(f, ev(FOLD_RESERVED, "r1", "A", "u1", 1, "", 500, 300));
	/* A later release or cancel cannot override the first terminal state. */
	add(f, ev(FOLD_EXPIRED, "r1", "A", "u1", 1, "", 500, 400));
	add(f, ev(FOLD_CANCELLED, "r1", "A", "u1", 1, "", 500, 400));
	r = fold_find(f, "r1");
	assert_non_null(r);
	assert_string_equal(fold_word(r->o), "reserved");
	assert_string_equal(fold_word(r->st), "paid");
	assert_int_equal(r->dl, 500);
	assert_int_equal(r->ts, 200);

	/* Transition refusals change nothing and create no record. */
	assert_int_equal(add(f, ev(FOLD_TRANSITION_REFUSED, "r9", "A", "", 0,
				   "unknown_request", 0, 1)), 0);
	assert_null(fold_find(f, "r9"));
	fold_free(f);
}

static void test_refused_keeps_outcome(void **state)
{
	struct fold *f = fold_new();
	const struct fold_req *r;
	char err[256];
	struct fold_event bad = ev(FOLD_REFUSED, "r3", "A", "u", 1, "no_such_reason", 0, 1);

	assert_non_null(f);
	add(f, ev(FOLD_REFUSED, "r2", "A", "u2", 1, "sold_out", 0, 100));
	/* A different refusal or a reservation later cannot replace the first outcome. */
	assert_int_equal(add(f, ev(FOLD_REFUSED, "r2", "A", "u2", 1, "limit_reached", 0, 150)), 0);
	assert_int_equal(add(f, ev(FOLD_RESERVED, "r2", "A", "u2", 1, "", 900, 200)), 0);
	assert_int_equal(add(f, ev(FOLD_PAID, "r2", "A", "u2", 1, "", 900, 300)), 0);
	r = fold_find(f, "r2");
	assert_non_null(r);
	assert_string_equal(fold_word(r->o), "sold_out");
	assert_string_equal(fold_word(r->st), "sold_out");
	assert_int_equal(r->dl, 0);
	assert_int_equal(r->qty, 1);

	assert_int_equal(fold_add(f, &bad, err, sizeof(err)), 0);
	assert_int_equal(fold_stats(f)->invalid, 1);
	assert_null(fold_find(f, "r3"));
	assert_int_equal(ledger_kind_parse("transition_refused"), FOLD_TRANSITION_REFUSED);
	assert_int_equal(ledger_kind_parse("paid"), FOLD_PAID);
	assert_int_equal(ledger_kind_parse("bogus"), 0);
	fold_free(f);
}

static const struct fold_user *find_user(const struct fold_sku *s, const char *u)
{
	for (size_t i = 0; i < s->nusers; i++)
		if (strcmp(s->users[i].user, u) == 0)
			return &s->users[i];
	return NULL;
}

static void test_summary(void **state)
{
	struct fold *f = fold_new();
	struct fold_promo p[2] = { promo("A", 10, 3), promo("B", 5, 1) };
	struct fold_sku *s = NULL;
	char err[256];

	assert_non_null(f);
	add(f, ev(FOLD_RESERVED, "a1", "A", "u1", 2, "", 500, 1));   /* held */
	add(f, ev(FOLD_RESERVED, "a2", "A", "u1", 1, "", 600, 2));   /* paid */
	add(f, ev(FOLD_PAID, "a2", "A", "u1", 1, "", 600, 3));
	add(f, ev(FOLD_RESERVED, "a3", "A", "u2", 3, "", 700, 4));   /* cancelled */
	add(f, ev(FOLD_CANCELLED, "a3", "A", "u2", 3, "", 700, 5));
	add(f, ev(FOLD_RESERVED, "a4", "A", "u2", 1, "", 800, 6));   /* expired */
	add(f, ev(FOLD_EXPIRED, "a4", "A", "u2", 1, "", 800, 7));
	add(f, ev(FOLD_RESERVED, "a5", "A", "u3", 3, "", 900, 8));   /* paid */
	add(f, ev(FOLD_PAID, "a5", "A", "u3", 3, "", 900, 9));
	add(f, ev(FOLD_REFUSED, "a6", "A", "u1", 1, "limit_reached", 0, 10));
	add(f, ev(FOLD_RESERVED, "b1", "B", "u1", 1, "", 950, 11));
	add(f, ev(FOLD_REFUSED, "z1", "Z", "u1", 1, "unknown_sku", 0, 12));
	assert_int_equal(fold_count(f), 8);

	assert_int_equal(fold_summarize(f, p, 2, false, &s, err, sizeof(err)), 0);
	assert_non_null(s);
	assert_string_equal(s[0].promo.sku, "A");
	assert_int_equal(s[0].held, 2);
	assert_int_equal(s[0].sold, 4);
	assert_int_equal(s[0].remaining, 4);
	assert_int_equal(s[0].requests, 6);
	assert_int_equal(s[0].nusers, 2);           /* u2 holds nothing any more */
	assert_int_equal(find_user(&s[0], "u1")->qty, 3);
	assert_int_equal(find_user(&s[0], "u3")->qty, 3);
	assert_null(find_user(&s[0], "u2"));
	assert_int_equal(s[0].nholds, 1);
	assert_string_equal(s[0].holds[0].rid, "a1");
	assert_int_equal(s[0].holds[0].dl, 500);

	assert_int_equal(s[1].held, 1);
	assert_int_equal(s[1].sold, 0);
	assert_int_equal(s[1].remaining, 4);
	assert_int_equal(s[1].nusers, 1);
	assert_int_equal(find_user(&s[1], "u1")->qty, 1);
	fold_skus_free(s, 2);
	fold_free(f);
}

static void test_oversold_detected(void **state)
{
	struct fold *f = fold_new();
	struct fold_promo p = promo("A", 2, 5);
	struct fold_sku *s = NULL;
	char err[256] = "";

	assert_non_null(f);
	add(f, ev(FOLD_RESERVED, "a1", "A", "u1", 2, "", 500, 1));
	add(f, ev(FOLD_PAID, "a1", "A", "u1", 2, "", 500, 2));
	add(f, ev(FOLD_RESERVED, "a2", "A", "u2", 1, "", 500, 3));
	assert_int_equal(fold_summarize(f, &p, 1, false, &s, err, sizeof(err)), -1);
	assert_null(s);
	assert_non_null(strstr(err, "sku=A"));
	fold_free(f);
}

static void test_many_requests(void **state)
{
	struct fold *f = fold_new();
	struct fold_promo p = promo("A", 100000, 1);
	struct fold_sku *s = NULL;
	char rid[32], user[32], err[256];

	assert_non_null(f);
	for (int i = 0; i < 50000; i++) {
		snprintf(rid, sizeof(rid), "r%d", i);
		snprintf(user, sizeof(user), "u%d", i);
		add(f, ev(FOLD_RESERVED, rid, "A", user, 1, "", 1000 + i, i));
		if (i % 2)
			add(f, ev(FOLD_PAID, rid, "A", user, 1, "", 1000 + i, i));
	}
	assert_int_equal(fold_count(f), 50000);
	assert_non_null(fold_find(f, "r49999"));
	assert_int_equal(fold_summarize(f, &p, 1, false, &s, err, sizeof(err)), 0);
	assert_int_equal(s[0].held, 25000);
	assert_int_equal(s[0].sold, 25000);
	assert_int_equal(s[0].remaining, 50000);
	assert_int_equal(s[0].nusers, 50000);
	assert_int_equal(s[0].nholds, 25000);
	fold_skus_free(s, 1);
	fold_free(f);
}

/* An event at (intent partition, offset) with its sku_seq and changed flag. */
static struct fold_event at(struct fold_event e, int part, long long off, long long seq,
			    bool changed)
{
	e.intent_partition = part;
	e.intent_offset = off;
	e.sku_seq = seq;
	e.changed = changed;
	return e;
}

/*
 * What a repaired Redis must show: the highest offset of a changing event per
 * partition (replays at later offsets, refused transitions and duplicates
 * do not count) and the highest sku_seq per SKU; records keep the sequence
 * of their outcome and of their state.
 */
static void test_watermarks_and_seq(void **state)
{
	struct fold *f = fold_new();
	struct fold_promo p[2] = { promo("A", 10, 3), promo("B", 5, 1) };
	struct fold_sku *s = NULL;
	const struct fold_req *r;
	char err[256];

	assert_non_null(f);
	assert_int_equal(fold_watermark(f, 3), -1);
	add(f, at(ev(FOLD_RESERVED, "a1", "A", "u1", 1, "", 500, 1), 3, 10, 1, true));
	add(f, at(ev(FOLD_REFUSED, "a2", "A", "u2", 9, "limit_reached", 0, 2), 3, 11, 2, true));
	add(f, at(ev(FOLD_PAID, "a1", "A", "u1", 1, "", 500, 3), 3, 12, 3, true));
	/* A client's retry of a1 at a later offset: a replay, not a change. */
	add(f, at(ev(FOLD_RESERVED, "a1", "A", "u1", 1, "", 500, 1), 3, 40, 1, false));
	add(f, at(ev(FOLD_TRANSITION_REFUSED, "a1", "A", "u1", 1, "not_reserved", 0, 4), 3, 41,
		  3, false));
	add(f, at(ev(FOLD_RESERVED, "b1", "B", "u1", 1, "", 500, 5), 7, 2, 1, true));
	/* An oversell correction: no intent made it. */
	add(f, at(ev(FOLD_CANCELLED, "b1", "B", "u1", 1, "oversell_correction", 500, 6), -1, -1,
		  2, true));
	assert_int_equal(fold_watermark(f, 3), 12);
	assert_int_equal(fold_watermark(f, 7), 2);
	assert_int_equal(fold_watermark(f, 0), -1);
	assert_int_equal(fold_watermark(f, 99), -1);
	r = fold_find(f, "a1");
	assert_int_equal(r->q0, 1);
	assert_int_equal(r->q, 3);
	r = fold_find(f, "a2");
	assert_int_equal(r->q0, 2);
	assert_int_equal(r->q, 2);
	assert_string_equal(fold_word(fold_find(f, "b1")->st), "cancelled");

	assert_int_equal(fold_summarize(f, p, 2, false, &s, err, sizeof(err)), 0);
	assert_int_equal(s[0].seq, 3);
	assert_int_equal(s[1].seq, 2);
	assert_int_equal(s[1].held, 0);
	fold_skus_free(s, 2);
	fold_free(f);
}

/*
 * The correction tool's plan: with allow_oversold the summary reports the
 * excess, and the most recent unpaid holds are picked until the stock covers
 * the rest; payments beyond the stock are left for a person.
 */
static void test_correction_plan(void **state)
{
	struct fold *f = fold_new();
	struct fold_promo p[2] = { promo("A", 4, 5), promo("B", 2, 5) };
	struct fold_sku *s = NULL;
	const struct fold_req *plan[8];
	long long over;
	char err[256];

	assert_non_null(f);
	/* A: stock 4, paid 1, held 2+1+2 = 5: two units too many. */
	add(f, ev(FOLD_RESERVED, "a1", "A", "u1", 1, "", 100, 1));
	add(f, ev(FOLD_PAID, "a1", "A", "u1", 1, "", 100, 2));
	add(f, ev(FOLD_RESERVED, "a2", "A", "u2", 2, "", 200, 3));
	add(f, ev(FOLD_RESERVED, "a3", "A", "u3", 1, "", 400, 4));
	add(f, ev(FOLD_RESERVED, "a4", "A", "u4", 2, "", 300, 5));
	/* B: stock 2, paid 3, held 1: nothing cancellable covers the payments. */
	add(f, ev(FOLD_RESERVED, "b1", "B", "u1", 2, "", 100, 6));
	add(f, ev(FOLD_PAID, "b1", "B", "u1", 2, "", 100, 7));
	add(f, ev(FOLD_RESERVED, "b2", "B", "u2", 1, "", 200, 8));
	add(f, ev(FOLD_PAID, "b2", "B", "u2", 1, "", 200, 9));
	add(f, ev(FOLD_RESERVED, "b3", "B", "u3", 1, "", 300, 10));

	assert_int_equal(fold_summarize(f, p, 2, false, &s, err, sizeof(err)), -1);
	assert_int_equal(fold_summarize(f, p, 2, true, &s, err, sizeof(err)), 0);
	assert_int_equal(s[0].oversold, 2);
	assert_int_equal(s[0].remaining, 0);
	assert_int_equal(s[1].oversold, 2);

	/* Latest deadline first: a3 (1 unit), then a4 (2 units) covers it. */
	assert_int_equal(fold_plan_correction(f, &s[0], plan, 8, &over), 2);
	assert_string_equal(plan[0]->rid, "a3");
	assert_string_equal(plan[1]->rid, "a4");
	assert_int_equal(over, 0);
	/* B: its only hold goes, one paid unit stays beyond the stock. */
	assert_int_equal(fold_plan_correction(f, &s[1], plan, 8, &over), 1);
	assert_string_equal(plan[0]->rid, "b3");
	assert_int_equal(over, 1);
	fold_skus_free(s, 2);

	/* After the cancellations A fits its stock again. */
	add(f, ev(FOLD_CANCELLED, "a3", "A", "u3", 1, "oversell_correction", 400, 11));
	add(f, ev(FOLD_CANCELLED, "a4", "A", "u4", 2, "oversell_correction", 300, 12));
	assert_int_equal(fold_summarize(f, p, 1, false, &s, err, sizeof(err)), 0);
	assert_int_equal(s[0].held, 2);
	assert_int_equal(s[0].sold, 1);
	assert_int_equal(s[0].remaining, 1);
	assert_int_equal(fold_plan_correction(f, &s[0], plan, 8, &over), 0);
	fold_skus_free(s, 1);
	fold_free(f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_dedup),
		cmocka_unit_test(test_replayed_reserved_after_paid),
		cmocka_unit_test(test_refused_keeps_outcome),
		cmocka_unit_test(test_summary),
		cmocka_unit_test(test_oversold_detected),
		cmocka_unit_test(test_many_requests),
		cmocka_unit_test(test_watermarks_and_seq),
		cmocka_unit_test(test_correction_plan),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
