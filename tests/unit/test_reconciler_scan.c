/*
 * Which SKUs a release round reads (reconciler/scan.c): a SKU is skipped
 * only while no hold of it can be due, and every SKU is read once per
 * `slots` rounds whatever the bound says.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "reconciler.h"

#define GRACE 7000

/* Whether the current round reads sku at Redis time now. */
static bool wants(struct scan *s, const char *sku, long long now, size_t *idx)
{
	bool want = false;

	assert_int_equal(scan_want(s, sku, now, idx, &want), 0);
	return want;
}

/* Rounds (after this one) until sku is read, with nothing else changing. */
static int rounds_until_read(struct scan *s, const char *sku, long long now, int max)
{
	size_t idx;

	for (int k = 1; k <= max; k++) {
		scan_round(s);
		if (wants(s, sku, now, &idx))
			return k;
	}
	return -1;
}

/* A scan of `slots` whose first round has just read "sku" at now: its index. */
static size_t begin(struct scan *s, uint32_t slots, long long now)
{
	size_t i;

	scan_init(s, slots);
	scan_round(s);
	assert_true(wants(s, "sku", now, &i));
	return i;
}

static void test_first_sight_is_read(void **state)
{
	struct scan s;
	size_t a, b;

	(void)state;
	scan_init(&s, 1000);
	scan_round(&s);
	assert_true(wants(&s, "sku-a", 0, &a));
	assert_true(wants(&s, "sku-b", 0, &b));
	assert_int_not_equal(a, b);
	assert_int_equal(s.n, 2);
	scan_free(&s);
}

/* The earliest pending deadline bounds the skip when it comes first. */
static void test_skip_until_earliest_deadline(void **state)
{
	struct scan s;
	size_t i;

	(void)state;
	i = begin(&s, 1000, 1000);
	scan_note(&s.e[i], 1000, 0, 5000, 60000, GRACE);
	assert_int_equal(s.e[i].next_ms, 5000 + GRACE);
	scan_round(&s);
	assert_false(wants(&s, "sku", 5000 + GRACE - 1, &i));
	scan_round(&s);
	assert_true(wants(&s, "sku", 5000 + GRACE, &i));
	scan_free(&s);
}

/* With no hold pending, a hold made after the read bounds it: now + hold_ms. */
static void test_skip_until_new_hold_can_be_due(void **state)
{
	struct scan s;
	size_t i;

	(void)state;
	i = begin(&s, 1000, 1000);
	scan_note(&s.e[i], 1000, 0, -1, 3000, GRACE);
	assert_int_equal(s.e[i].next_ms, 1000 + 3000 + GRACE);
	/* A pending deadline later than the next new hold's does not extend it. */
	scan_note(&s.e[i], 1000, 0, 9000, 3000, GRACE);
	assert_int_equal(s.e[i].next_ms, 1000 + 3000 + GRACE);
	scan_round(&s);
	assert_false(wants(&s, "sku", 1000 + 3000 + GRACE - 1, &i));
	scan_free(&s);
}

/* Due holds (releases in flight) and an unknown hold_ms: read every round. */
static void test_due_or_unknown_reads_every_round(void **state)
{
	struct scan s;
	size_t i;

	(void)state;
	i = begin(&s, 1000, 1000);
	scan_note(&s.e[i], 1000, 3, 90000, 60000, GRACE);
	assert_int_equal(rounds_until_read(&s, "sku", 1001, 1), 1);
	scan_note(&s.e[i], 1000, 0, -1, 0, GRACE);
	assert_int_equal(rounds_until_read(&s, "sku", 1001, 1), 1);
	scan_free(&s);
}

/* The backstop: a SKU bounded far ahead is still read once per `slots` rounds. */
static void test_backstop_reads_each_sku_once_per_slots(void **state)
{
	struct scan s;
	const char *skus[] = { "a", "b", "c", "d", "e", "f", "g", "h", "i" };
	int reads[9] = { 0 };
	size_t i;

	(void)state;
	scan_init(&s, 4);
	scan_round(&s);
	for (int k = 0; k < 9; k++) {
		assert_true(wants(&s, skus[k], 0, &i));
		scan_note(&s.e[i], 0, 0, -1, 3600000, GRACE);
	}
	for (int round = 0; round < 8; round++) {
		scan_round(&s);
		for (int k = 0; k < 9; k++)
			reads[k] += wants(&s, skus[k], 1, &i) ? 1 : 0;
	}
	for (int k = 0; k < 9; k++)
		assert_int_equal(reads[k], 2);
	scan_free(&s);
}

/* slots <= 1 turns skipping off; scan_reset forgets every bound. */
static void test_no_slots_and_reset(void **state)
{
	struct scan s;
	size_t i;

	(void)state;
	i = begin(&s, 0, 0);
	scan_note(&s.e[i], 0, 0, -1, 3600000, GRACE);
	assert_int_equal(rounds_until_read(&s, "sku", 1, 1), 1);
	scan_free(&s);

	i = begin(&s, 1000, 0);
	scan_note(&s.e[i], 0, 0, -1, 3600000, GRACE);
	scan_round(&s);
	assert_false(wants(&s, "sku", 1, &i));
	scan_reset(&s);
	assert_int_equal(s.n, 0);
	scan_round(&s);
	assert_true(wants(&s, "sku", 1, &i));
	scan_free(&s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_first_sight_is_read),
		cmocka_unit_test(test_skip_until_earliest_deadline),
		cmocka_unit_test(test_skip_until_new_hold_can_be_due),
		cmocka_unit_test(test_due_or_unknown_reads_every_round),
		cmocka_unit_test(test_backstop_reads_each_sku_once_per_slots),
		cmocka_unit_test(test_no_slots_and_reset),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
