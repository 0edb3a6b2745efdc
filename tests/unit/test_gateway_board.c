/* The board of pushes the gateway's event loops share (gateway/board.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
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

static void put(struct gateway *gw, const char *sku, int64_t remaining)
{
	struct promo p;

	memset(&p, 0, sizeof(p));
	snprintf(p.sku, sizeof(p.sku), "%s", sku);
	p.initial = 10;
	p.remaining = remaining;
	p.limit = 1;
	assert_int_equal(promo_put(&gw->promo, &p), 0);
}

/*
 * Two loops of one process: what the first read is in the second's cache
 * once it catches up (as it does before it filters a purchase), without
 * its own subscriber; and that push, read later by the second loop
 * itself, is old news.
 */
static void test_second_loop_knows_from_the_board(void **state)
{
	static struct gw_shared sh;
	static struct gateway first, second;
	struct board_item it = item("hot", 0, 7);
	(void)state;

	assert_int_equal(board_init(&sh.board), 0);
	first.sh = second.sh = &sh;
	put(&first, "hot", 3);
	put(&second, "hot", 3);
	put(&second, "cold", 5);

	assert_true(board_post(&sh.board, &it));
	assert_true(promo_note_push(&first.promo, &it, "push"));
	assert_int_equal(promo_find(&second.promo, "hot")->remaining, 3);
	promo_catch_up(&second);
	assert_int_equal(promo_find(&second.promo, "hot")->remaining, 0);
	assert_int_equal(promo_find(&second.promo, "hot")->push_seq, 7);
	assert_int_equal(promo_find(&second.promo, "cold")->remaining, 5);
	assert_false(board_post(&sh.board, &it));
	assert_false(promo_note_push(&second.promo, &it, "push"));
	promo_catch_up(&first);             /* its own post: already applied */
	assert_int_equal(promo_find(&first.promo, "hot")->remaining, 0);
	free(first.promo.items);
	free(second.promo.items);
	board_free(&sh.board);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_post_first_only),
		cmocka_unit_test(test_catch_up),
		cmocka_unit_test(test_second_loop_knows_from_the_board),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
