/* The board of pushes the gateway's event loops share (gateway/board.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "gateway.h"

static struct board_item item(const char *sku, int64_t remaining, int64_t seq)
{
	struct board_item it;

	memset(&it, 0, sizeof(it));
	snprintf(it.sku, sizeof(it.sku), "%s", sku);
	it.remaining = remaining;
	it.changed_ms = 1000 + seq;
	it.seq = seq;
	return it;
}

struct seen {
	int n;
	struct board_item it[BOARD_RING + 8];
};

static void note(void *arg, const struct board_item *it)
{
	struct seen *s = arg;

	s->it[s->n++] = *it;
}

/*
 * The first loop to read a push posts it; the same change read by another
 * loop, an older one, or one without a number is not posted again.
 */
static void test_post_first_only(void **state)
{
	struct board b;
	struct board_item it;
	(void)state;

	assert_int_equal(board_init(&b), 0);
	it = item("a", 0, 5);
	assert_true(board_post(&b, &it));
	assert_false(board_post(&b, &it));
	it = item("a", 1, 4);
	assert_false(board_post(&b, &it));
	it = item("a", 0, 0);
	assert_false(board_post(&b, &it));
	it = item("b", 0, 4);               /* each SKU numbers its own changes */
	assert_true(board_post(&b, &it));
	it = item("a", 1, 6);
	assert_true(board_post(&b, &it));
	assert_int_equal(b.posted, 3);
	board_free(&b);
}

/*
 * A loop catches up with what was posted since its cursor, oldest first,
 * and nothing twice; one that fell more than BOARD_RING behind gets the
 * last BOARD_RING.
 */
static void test_catch_up(void **state)
{
	static struct board b;
	static struct seen s;
	struct board_item it;
	uint64_t cursor = 0;
	(void)state;

	assert_int_equal(board_init(&b), 0);
	board_catch_up(&b, &cursor, note, &s);
	assert_int_equal(s.n, 0);
	for (int i = 1; i <= 3; i++) {
		it = item("a", i % 2, i);
		assert_true(board_post(&b, &it));
	}
	board_catch_up(&b, &cursor, note, &s);
	assert_int_equal(s.n, 3);
	assert_int_equal(s.it[0].seq, 1);
	assert_int_equal(s.it[2].seq, 3);
	assert_int_equal(cursor, 3);
	board_catch_up(&b, &cursor, note, &s);
	assert_int_equal(s.n, 3);

	for (int i = 4; i < 4 + BOARD_RING + 5; i++) {
		it = item("a", i % 2, i);
		assert_true(board_post(&b, &it));
	}
	s.n = 0;
	board_catch_up(&b, &cursor, note, &s);
	assert_int_equal(s.n, BOARD_RING);
	assert_int_equal(s.it[0].seq, 4 + 5);
	assert_int_equal(s.it[BOARD_RING - 1].seq, 3 + BOARD_RING + 5);
	assert_int_equal(cursor, b.posted);
	board_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_post_first_only),
		cmocka_unit_test(test_catch_up),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
