/*
 * Unit test of the long polls' table (gateway/waiters.c): a wake reaches
 * exactly the waiters of its id, a woken waiter may put itself back, and
 * the table keeps its members through growth and removal.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "waiters.h"

struct poll {
	struct waiter w;
	char id[32];
	int woken;
	bool stay;
};

static struct waiters *table;

static void wake(struct waiter *w, void *arg)
{
	struct poll *p = (struct poll *)w;

	assert_ptr_equal(arg, table);
	assert_false(waiters_waiting(w));   /* removed before fn runs */
	p->woken++;
	if (p->stay)
		waiters_add(table, w, p->id);
}

static void test_wake_reaches_its_id_only(void **state)
{
	struct waiters t;
	struct poll a = { .stay = false }, b = { .stay = true }, c = { .stay = false };
	(void)state;

	assert_int_equal(waiters_init(&t), 0);
	table = &t;
	snprintf(a.id, sizeof(a.id), "u:1");
	snprintf(b.id, sizeof(b.id), "u:1");   /* the same purchase, polled twice */
	snprintf(c.id, sizeof(c.id), "u:2");
	waiters_add(&t, &a.w, a.id);
	waiters_add(&t, &b.w, b.id);
	waiters_add(&t, &c.w, c.id);
	assert_int_equal(t.n, 3);
	assert_int_equal(waiters_wake(&t, "u:3", wake, &t), 0);
	assert_int_equal(waiters_wake(&t, "u:1", wake, &t), 2);
	assert_int_equal(a.woken, 1);
	assert_int_equal(b.woken, 1);
	assert_int_equal(c.woken, 0);
	/* a left, b put itself back: the next wake finds b alone. */
	assert_false(waiters_waiting(&a.w));
	assert_true(waiters_waiting(&b.w));
	assert_int_equal(t.n, 2);
	assert_int_equal(waiters_wake(&t, "u:1", wake, &t), 1);
	assert_int_equal(a.woken, 1);
	assert_int_equal(b.woken, 2);
	waiters_remove(&t, &b.w);
	waiters_remove(&t, &b.w);            /* twice: nothing */
	assert_int_equal(t.n, 1);
	assert_int_equal(waiters_wake(&t, "u:1", wake, &t), 0);
	/* All at once (a drain): b came back, stays; c leaves. */
	waiters_add(&t, &b.w, b.id);
	assert_int_equal(waiters_wake_all(&t, wake, &t), 2);
	assert_int_equal(b.woken, 3);
	assert_int_equal(c.woken, 1);
	assert_int_equal(t.n, 1);
	assert_true(waiters_waiting(&b.w));
	assert_false(waiters_waiting(&c.w));
	waiters_add(&t, &c.w, c.id);
	waiters_free(&t);
	assert_false(waiters_waiting(&c.w));
	assert_false(waiters_waiting(&b.w));
}

static void test_growth_keeps_every_waiter(void **state)
{
	enum { N = 5000 };
	static struct poll p[N];
	struct waiters t;
	size_t woken = 0;
	(void)state;

	assert_int_equal(waiters_init(&t), 0);
	table = &t;
	for (int i = 0; i < N; i++) {
		snprintf(p[i].id, sizeof(p[i].id), "user-%d:req-%d", i % 97, i);
		p[i].stay = false;
		p[i].woken = 0;
		waiters_add(&t, &p[i].w, p[i].id);
	}
	assert_int_equal(t.n, N);
	assert_true(t.mask + 1 > 1024);      /* it grew past its first buckets */
	/* Every other one leaves; the rest are each found by their own id. */
	for (int i = 0; i < N; i += 2)
		waiters_remove(&t, &p[i].w);
	assert_int_equal(t.n, N / 2);
	for (int i = 0; i < N; i++)
		woken += waiters_wake(&t, p[i].id, wake, &t);
	assert_int_equal(woken, N / 2);
	for (int i = 0; i < N; i++)
		assert_int_equal(p[i].woken, i % 2);
	assert_int_equal(t.n, 0);
	waiters_free(&t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_wake_reaches_its_id_only),
		cmocka_unit_test(test_growth_keeps_every_waiter),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
