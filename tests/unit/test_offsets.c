/*
 * A consumed batch's bookkeeping (common/offsets.h): what is stored, where a
 * blocked partition resumes, what a revoked partition leaves.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "offsets.h"

static const struct offsets_pos *find_pos(const struct offsets_pos *p, size_t n, int32_t part)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (p[i].partition == part)
			return &p[i];
	return NULL;
}

static void assert_pos(const struct offsets_pos *p, size_t n, int32_t part, int64_t off)
{
	const struct offsets_pos *e = find_pos(p, n, part);

	if (e == NULL)
		fail_msg("partition %d missing", (int)part);
	assert_int_equal(e->offset, off);
}

static void note(struct offsets *b, int32_t part, int64_t first, int64_t last)
{
	int64_t o;

	for (o = first; o <= last; o++)
		assert_int_equal(offsets_note(b, part, o), 0);
}

static void test_store_without_blocks(void **state)
{
	struct offsets b;
	struct offsets_pos pos[8];
	size_t n;

	(void)state;
	offsets_init(&b);
	note(&b, 3, 100, 109);
	note(&b, 7, 5, 5);
	note(&b, 0, 0, 2);
	assert_false(offsets_any_blocked(&b));
	assert_false(offsets_is_blocked(&b, 3, 105));
	n = offsets_store_positions(&b, pos, 8);
	assert_int_equal(n, 3);
	assert_pos(pos, n, 3, 110);
	assert_pos(pos, n, 7, 6);
	assert_pos(pos, n, 0, 3);
	n = offsets_first_positions(&b, pos, 8);
	assert_int_equal(n, 3);
	assert_pos(pos, n, 3, 100);
	assert_pos(pos, n, 7, 5);
	assert_pos(pos, n, 0, 0);
	assert_int_equal(offsets_blocked_positions(&b, pos, 8), 0);
	/* out is bounded by n */
	assert_int_equal(offsets_store_positions(&b, pos, 2), 2);
	offsets_free(&b);
}

static void test_blocked_partition(void **state)
{
	struct offsets b;
	struct offsets_pos pos[8];
	size_t n;

	(void)state;
	offsets_init(&b);
	note(&b, 1, 10, 19);
	note(&b, 2, 50, 59);
	note(&b, 4, 70, 71);
	/* Partition 1 met not_ready at 14 and again at 17: 14 wins. */
	offsets_block(&b, 1, 17);
	offsets_block(&b, 1, 14);
	offsets_block(&b, 1, 18);
	/* Partition 4 is blocked at its first message. */
	offsets_block(&b, 4, 70);
	/* Blocking a partition the batch does not hold is ignored. */
	offsets_block(&b, 9, 1);
	assert_true(offsets_any_blocked(&b));

	assert_false(offsets_is_blocked(&b, 1, 13));
	assert_true(offsets_is_blocked(&b, 1, 14));
	assert_true(offsets_is_blocked(&b, 1, 19)); /* later 'ok' stays blocked */
	assert_false(offsets_is_blocked(&b, 2, 59));
	assert_true(offsets_is_blocked(&b, 4, 70));
	assert_false(offsets_is_blocked(&b, 9, 1));

	n = offsets_store_positions(&b, pos, 8);
	assert_int_equal(n, 2);
	assert_pos(pos, n, 1, 14);   /* up to the blocked offset */
	assert_pos(pos, n, 2, 60);   /* free: last + 1 */
	assert_null(find_pos(pos, n, 4)); /* no progress to store */

	n = offsets_blocked_positions(&b, pos, 8);
	assert_int_equal(n, 2);
	assert_pos(pos, n, 1, 14);
	assert_pos(pos, n, 4, 70);

	n = offsets_first_positions(&b, pos, 8);
	assert_int_equal(n, 3);
	assert_pos(pos, n, 1, 10);
	assert_pos(pos, n, 2, 50);
	assert_pos(pos, n, 4, 70);

	/* Redoing the batch starts from no blocks. */
	offsets_unblock(&b);
	assert_false(offsets_any_blocked(&b));
	assert_false(offsets_is_blocked(&b, 1, 19));
	n = offsets_store_positions(&b, pos, 8);
	assert_int_equal(n, 3);
	assert_pos(pos, n, 1, 20);
	assert_pos(pos, n, 4, 72);
	offsets_free(&b);
}

static void test_drop_and_reset(void **state)
{
	struct offsets b;
	struct offsets_pos pos[40];
	size_t n;
	int32_t p;

	(void)state;
	offsets_init(&b);
	/* More partitions than the first allocation holds. */
	for (p = 0; p < 30; p++)
		note(&b, p, p * 10, p * 10 + 1);
	assert_int_equal(b.nparts, 30);
	offsets_block(&b, 5, 51);
	offsets_drop(&b, 5);
	offsets_drop(&b, 0);
	offsets_drop(&b, 99);
	assert_false(offsets_has(&b, 5));
	assert_false(offsets_has(&b, 0));
	assert_true(offsets_has(&b, 29));
	assert_false(offsets_any_blocked(&b));
	n = offsets_store_positions(&b, pos, 40);
	assert_int_equal(n, 28);
	assert_null(find_pos(pos, n, 5));
	assert_pos(pos, n, 29, 292);
	assert_pos(pos, n, 1, 12);
	offsets_reset(&b);
	assert_int_equal(offsets_store_positions(&b, pos, 40), 0);
	note(&b, 5, 7, 7);
	assert_false(offsets_is_blocked(&b, 5, 7));
	assert_int_equal(offsets_store_positions(&b, pos, 40), 1);
	assert_pos(pos, 1, 5, 8);
	offsets_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_store_without_blocks),
		cmocka_unit_test(test_blocked_partition),
		cmocka_unit_test(test_drop_and_reset),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
