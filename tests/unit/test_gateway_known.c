/*
 * gateway/known.c against a real Redis: a loop's set of the request ids
 * Redis has records of says "no record" only once a sweep ended while
 * subscribed, and never for an id that has one.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>

#include "gateway.h"
#include "redis_server.h"

struct fixture {
	struct event_base *base;
	struct gw_store store;
	struct known k;
	char address[256];
};

/* Run the loop until *flag or 10 s; false on timeout. */
static bool run_until(struct fixture *f, const bool *flag)
{
	for (int i = 0; i < 10000 && !*flag; i++) {
		event_base_loop(f->base, EVLOOP_NONBLOCK);
		if (!*flag)
			usleep(1000);
	}
	return *flag;
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	redisReply *r;

	assert_non_null(f);
	r = redisCommand(test_rc, "FLUSHALL");
	freeReplyObject(r);
	f->base = event_base_new();
	assert_non_null(f->base);
	snprintf(f->address, sizeof(f->address), "unix:%s", test_redis_socket());
	assert_int_equal(gw_store_init(&f->store, f->base, f->address, -1), 0);
	assert_true(run_until(f, &f->store.connected));
	assert_int_equal(known_init(&f->k, &f->store, 10000), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	gw_store_free(&f->store);
	known_free(&f->k);
	event_base_free(f->base);
	free(f);
	return 0;
}

static void records(const char *prefix, int n)
{
	for (int i = 0; i < n; i++) {
		redisReply *r = redisCommand(test_rc, "HSET fs:req:%s%d st queued", prefix, i);

		assert_non_null(r);
		freeReplyObject(r);
	}
}

/* known_may_exist now, with the subscriber just heard from (an echo back). */
static bool may(struct fixture *f, const char *rid)
{
	known_caught_up(&f->k, mono_us());
	return known_may_exist(&f->k, rid, mono_us());
}

static bool sweep_done(struct fixture *f)
{
	bool done = false;

	for (int i = 0; i < 10000 && !done; i++) {
		event_base_loop(f->base, EVLOOP_NONBLOCK);
		done = !f->k.sweeping;
		if (!done)
			usleep(1000);
	}
	return done;
}

/* Before any sweep, and after every loss, each id may exist: ask Redis. */
static void test_incomplete_says_ask(void **state)
{
	struct fixture *f = *state;

	assert_true(may(f, "anything"));
	known_note(&f->k, "a");
	assert_true(may(f, "b"));
	/* Not subscribed: no sweep starts, nothing is claimed. */
	known_sweep(&f->k);
	assert_false(f->k.sweeping);
	assert_true(may(f, "b"));
}

/* A sweep while live finds every record; then only told ids are added. */
static void test_sweep_then_told(void **state)
{
	struct fixture *f = *state;

	records("rid-", 2500);           /* several SCAN pages */
	known_live(&f->k);
	assert_true(f->k.sweeping);
	assert_true(sweep_done(f));
	assert_true(f->k.complete);
	for (int i = 0; i < 2500; i++) {
		char rid[32];

		snprintf(rid, sizeof(rid), "rid-%d", i);
		assert_true(may(f, rid));
	}
	assert_false(may(f, "never-seen"));
	assert_false(may(f, "rid-2500"));
	/* A subscriber not heard from lately may be behind on what was told: ask. */
	assert_true(known_may_exist(&f->k, "never-seen", mono_us() + KNOWN_LAG_US + 1000));
	/* What the pushes tell (deduct.lua "rid state", admit.lua "+ rid rid"). */
	known_note(&f->k, "never-seen");
	assert_true(may(f, "never-seen"));
	known_note_list(&f->k, "x-1  x-2 x-3");
	assert_true(may(f, "x-1"));
	assert_true(may(f, "x-2"));
	assert_true(may(f, "x-3"));
	assert_false(may(f, "x-4"));
	/* The subscription drops: what is written meanwhile is not told. */
	known_lost(&f->k, false);
	assert_true(may(f, "x-4"));
	records("late-", 3);
	known_live(&f->k);
	assert_true(sweep_done(f));
	assert_true(f->k.complete);
	assert_true(may(f, "late-2"));
	assert_false(may(f, "late-3"));
}

/* A loss while a sweep runs voids it: the sweep starts over and still ends complete. */
static void test_loss_during_sweep(void **state)
{
	struct fixture *f = *state;

	records("rid-", 900);
	known_live(&f->k);
	assert_true(f->k.sweeping);
	known_lost(&f->k, true);         /* a rebuild rewrote Redis mid-sweep */
	records("new-", 5);
	assert_true(sweep_done(f));
	assert_true(f->k.complete);
	assert_true(may(f, "new-4"));
	assert_true(may(f, "rid-899"));
}

/* More records than the cap: the set gives up (every refusal asks) instead of lying. */
static void test_overflow_stays_incomplete(void **state)
{
	struct fixture *f = *state;

	known_free(&f->k);
	assert_int_equal(known_init(&f->k, &f->store, 100), 0);
	records("rid-", 150);
	known_live(&f->k);
	assert_true(sweep_done(f));
	assert_false(f->k.complete);
	assert_true(may(f, "rid-149"));
	assert_true(may(f, "not-a-record"));
	/* No sweep again right away: it would overflow again. */
	known_sweep(&f->k);
	assert_false(f->k.sweeping);
	assert_true(f->k.overflow_pause_us == 60 * 1000000LL);
}

/*
 * Overflows in a row push the next sweep further out (a minute, two, four...
 * up to 16), so that a loop that cannot hold Redis's ids does not SCAN them
 * all every minute; a sweep that completes starts the count again.
 */
static void test_overflow_backs_off(void **state)
{
	struct fixture *f = *state;
	const int64_t minute = 60 * 1000000LL;
	redisReply *r;

	known_free(&f->k);
	assert_int_equal(known_init(&f->k, &f->store, 100), 0);
	records("rid-", 150);
	known_live(&f->k);
	assert_true(sweep_done(f));
	for (int64_t pause = minute, i = 0; i < 6; i++) {
		assert_true(f->k.overflow_pause_us == pause);
		/* Just short of the pause: not yet. */
		f->k.overflow_us = mono_us() - pause + minute / 2;
		known_sweep(&f->k);
		assert_false(f->k.sweeping);
		/* Past it: a sweep, which overflows again. */
		f->k.overflow_us = mono_us() - pause - 1;
		known_sweep(&f->k);
		assert_true(f->k.sweeping);
		assert_true(sweep_done(f));
		assert_false(f->k.complete);
		pause = 2 * pause > 16 * minute ? 16 * minute : 2 * pause;
	}
	assert_true(f->k.overflow_pause_us == 16 * minute);
	/* Fewer records than the cap: the next sweep completes, the pause is forgotten. */
	r = redisCommand(test_rc, "FLUSHALL");
	freeReplyObject(r);
	records("rid-", 50);
	f->k.overflow_us = mono_us() - 16 * minute - 1;
	known_sweep(&f->k);
	assert_true(sweep_done(f));
	assert_true(f->k.complete);
	assert_true(f->k.overflow_pause_us == 0);
	assert_false(may(f, "rid-60"));
	assert_true(may(f, "rid-49"));
}

/*
 * Overflows from live tells alone, no sweep in between (a busy sale): the
 * pause stays at its first minute. Only a sweep that overflows again
 * doubles it (review of 517c4d6: 505 tells took it to the 16-minute cap).
 */
static void test_live_overflows_keep_the_pause(void **state)
{
	struct fixture *f = *state;
	const int64_t minute = 60 * 1000000LL;
	char rid[32];

	known_free(&f->k);
	assert_int_equal(known_init(&f->k, &f->store, 100), 0);
	known_live(&f->k);
	assert_true(sweep_done(f));
	assert_true(f->k.complete);
	for (int i = 0; i < 505; i++) {
		snprintf(rid, sizeof(rid), "told-%d", i);
		known_note(&f->k, rid);
	}
	assert_false(f->k.complete);
	assert_true(f->k.overflow_pause_us == minute);
	/* A sweep past the pause that overflows too: now it doubles. */
	records("rid-", 150);
	f->k.overflow_us = mono_us() - minute - 1;
	known_sweep(&f->k);
	assert_true(f->k.sweeping);
	assert_true(sweep_done(f));
	assert_true(f->k.overflow_pause_us == 2 * minute);
	/* Tells overflowing again before the next sweep leave it there. */
	for (int i = 0; i < 505; i++) {
		snprintf(rid, sizeof(rid), "again-%d", i);
		known_note(&f->k, rid);
	}
	assert_true(f->k.overflow_pause_us == 2 * minute);
}

/* The connection is lost mid-sweep: incomplete; the next tick sweeps again. */
static void test_connection_lost_mid_sweep(void **state)
{
	struct fixture *f = *state;

	records("rid-", 600);
	known_live(&f->k);
	assert_true(f->k.sweeping);
	gw_store_reset(&f->store);       /* pending replies come back NULL */
	assert_false(f->k.sweeping);
	assert_false(f->k.complete);
	assert_true(may(f, "rid-1"));
	assert_true(run_until(f, &f->store.connected));
	known_sweep(&f->k);              /* what the cache tick does */
	assert_true(sweep_done(f));
	assert_true(f->k.complete);
	assert_true(may(f, "rid-599"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_incomplete_says_ask, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sweep_then_told, setup, teardown),
		cmocka_unit_test_setup_teardown(test_loss_during_sweep, setup, teardown),
		cmocka_unit_test_setup_teardown(test_overflow_stays_incomplete, setup, teardown),
		cmocka_unit_test_setup_teardown(test_overflow_backs_off, setup, teardown),
		cmocka_unit_test_setup_teardown(test_live_overflows_keep_the_pause, setup, teardown),
		cmocka_unit_test_setup_teardown(test_connection_lost_mid_sweep, setup, teardown),
	};

	return cmocka_run_group_tests(tests, test_redis_group_setup, test_redis_group_teardown);
}
