/*
 * deduct.lua against a real redis-server (REDIS_SERVER, see redis_server.h),
 * through the same code the deductor runs: step_cmd_build / step_run /
 * step_parse.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "deductor.h"
#include "redis_server.h"

static redisContext *rc;
static char sha[41];
static int64_t epoch_set = 1;

static int group_setup(void **state)
{
	redisReply *r;

	(void)state;
	rc = test_redis_start(getenv("REDIS_SERVER"));
	if (rc == NULL)
		return -1;
	r = redisCommand(rc, "SCRIPT LOAD %s", fs_deduct_lua);
	if (r == NULL || r->type != REDIS_REPLY_STRING || r->len != 40) {
		fprintf(stderr, "SCRIPT LOAD failed: %s\n",
			r != NULL && r->type == REDIS_REPLY_ERROR ? r->str : "no reply");
		if (r != NULL)
			freeReplyObject(r);
		return -1;
	}
	memcpy(sha, r->str, 41);
	freeReplyObject(r);
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	test_redis_stop();
	return 0;
}

/* ---- helpers ---- */

static void cmd_ok(const char *fmt, ...)
{
	va_list ap;
	redisReply *r;

	va_start(ap, fmt);
	r = redisvCommand(rc, fmt, ap);
	va_end(ap);
	assert_non_null(r);
	if (r->type == REDIS_REPLY_ERROR)
		fail_msg("redis: %s", r->str);
	freeReplyObject(r);
}

static long long redis_now_ms(void)
{
	redisReply *r = redisCommand(rc, "TIME");
	long long ms;

	assert_non_null(r);
	assert_int_equal(r->type, REDIS_REPLY_ARRAY);
	ms = strtoll(r->element[0]->str, NULL, 10) * 1000 +
	     strtoll(r->element[1]->str, NULL, 10) / 1000;
	freeReplyObject(r);
	return ms;
}

/* A promotion open now (or shifted by start/end offsets from Redis' clock). */
static void promo(const char *sku, long long stock, long long limit, long long start_off_ms,
		  long long end_off_ms, long long hold_ms)
{
	long long now = redis_now_ms();

	cmd_ok("HSET fs:promo:%s initial %lld remaining %lld held 0 sold 0 limit %lld "
	       "start_ms %lld end_ms %lld hold_ms %lld", sku, stock, stock, limit,
	       now + start_off_ms, now + end_off_ms, hold_ms);
	cmd_ok("SADD fs:promos %s", sku);
}

static int setup(void **state)
{
	(void)state;
	cmd_ok("FLUSHALL");
	cmd_ok("SET fs:ready %lld", (long long)epoch_set);
	promo("sku-1", 10, 3, -60000, 3600000, 60000);
	return 0;
}

struct counters {
	long long initial, remaining, held, sold;
};

/* HGETALL fs:promo:<sku>; also checks the invariant every test relies on. */
static struct counters counters(const char *sku)
{
	struct counters c = { -1, -1, -1, -1 };
	redisReply *r = redisCommand(rc, "HGETALL fs:promo:%s", sku);
	size_t i;

	assert_non_null(r);
	assert_int_equal(r->type, REDIS_REPLY_ARRAY);
	for (i = 0; i + 1 < r->elements; i += 2) {
		const char *k = r->element[i]->str;
		long long v = strtoll(r->element[i + 1]->str, NULL, 10);

		if (strcmp(k, "initial") == 0)
			c.initial = v;
		else if (strcmp(k, "remaining") == 0)
			c.remaining = v;
		else if (strcmp(k, "held") == 0)
			c.held = v;
		else if (strcmp(k, "sold") == 0)
			c.sold = v;
	}
	freeReplyObject(r);
	assert_true(c.remaining >= 0);
	assert_true(c.held >= 0);
	assert_true(c.sold >= 0);
	assert_int_equal(c.remaining + c.held + c.sold, c.initial);
	return c;
}

static void assert_counters(const char *sku, long long remaining, long long held,
			    long long sold)
{
	struct counters c = counters(sku);

	assert_int_equal(c.remaining, remaining);
	assert_int_equal(c.held, held);
	assert_int_equal(c.sold, sold);
}

static long long user_units(const char *sku, const char *user)
{
	redisReply *r = redisCommand(rc, "HGET fs:users:%s %s", sku, user);
	long long v = 0;

	assert_non_null(r);
	if (r->type == REDIS_REPLY_STRING)
		v = strtoll(r->str, NULL, 10);
	else
		assert_int_equal(r->type, REDIS_REPLY_NIL);
	freeReplyObject(r);
	return v;
}

static long long redis_int(const char *fmt, const char *arg)
{
	redisReply *r = redisCommand(rc, fmt, arg);
	long long v;

	assert_non_null(r);
	assert_int_equal(r->type, REDIS_REPLY_INTEGER);
	v = r->integer;
	freeReplyObject(r);
	return v;
}

static void intent_fill(fs_intent *in, int kind, const char *rid, const char *sku,
			const char *user, unsigned qty)
{
	flashsale__intent__init(in);
	in->kind = kind;
	in->request_id = (char *)rid;
	in->sku = (char *)sku;
	in->user_id = (char *)(user != NULL ? user : "");
	in->qty = qty;
}

static const struct step_params params = { .record_ttl_s = 3600, .pay_max_lag_ms = 600000 };

/* Partition 0, the next offset, no floors: what a fresh deductor sends. */
static int64_t next_offset;

static struct step_args args_default(void)
{
	struct step_args a = { .partition = 0, .offset = next_offset++, .min_wm = -1, .min_seq = 0 };

	return a;
}

/* step_run over n intents with default args (partition 0, offsets in order). */
static int run_steps(const struct step_params *prm, fs_intent **list, struct step_result *res,
		     size_t n, char *err, size_t errlen)
{
	struct step_args args[64];

	assert_true(n <= 64);
	for (size_t i = 0; i < n; i++)
		args[i] = args_default();
	return step_run(rc, sha, prm, list, args, res, n, err, errlen);
}

#define K_PURCHASE FLASHSALE__INTENT__KIND__PURCHASE
#define K_PAY FLASHSALE__INTENT__KIND__PAY
#define K_CANCEL FLASHSALE__INTENT__KIND__CANCEL
#define K_RELEASE FLASHSALE__INTENT__KIND__RELEASE
#define E_RESERVED FLASHSALE__LEDGER_EVENT__KIND__RESERVED
#define E_PAID FLASHSALE__LEDGER_EVENT__KIND__PAID
#define E_CANCELLED FLASHSALE__LEDGER_EVENT__KIND__CANCELLED
#define E_EXPIRED FLASHSALE__LEDGER_EVENT__KIND__EXPIRED
#define E_REFUSED FLASHSALE__LEDGER_EVENT__KIND__REFUSED
#define E_TREFUSED FLASHSALE__LEDGER_EVENT__KIND__TRANSITION_REFUSED

/*
 * A pay or cancel names the purchase's owner, as the gateway sends it: when
 * a test leaves the user out, it is the buyer Redis recorded (a test of the
 * owner check names another one).
 */
static void owner_default(fs_intent *in)
{
	static char owner[FS_ID_MAX + 1];
	redisReply *r;

	if ((in->kind != K_PAY && in->kind != K_CANCEL) || in->user_id[0] != '\0')
		return;
	r = redisCommand(rc, "HGET fs:req:%s user", in->request_id);
	assert_non_null(r);
	snprintf(owner, sizeof(owner), "%s", r->type == REDIS_REPLY_STRING ? r->str : "nobody");
	freeReplyObject(r);
	in->user_id = owner;
}

/* Apply one intent at args through step_run and return its result. */
static struct step_result apply_at(const fs_intent *given, const struct step_args *a,
				   const struct step_params *prm)
{
	struct step_result res;
	fs_intent in = *given;
	fs_intent *list[1] = { &in };
	char err[256];

	owner_default(&in);
	assert_int_equal(step_run(rc, sha, prm, list, a, &res, 1, err, sizeof(err)), STEP_RUN_OK);
	return res;
}

/* Apply one intent through step_run and return its result. */
static struct step_result apply(int kind, const char *rid, const char *sku, const char *user,
				unsigned qty)
{
	struct step_args a = args_default();
	fs_intent in;

	intent_fill(&in, kind, rid, sku, user, qty);
	return apply_at(&in, &a, &params);
}

static void assert_event(const struct step_result *r, int kind, const char *state,
			 const char *reason, bool changed)
{
	assert_int_equal(r->status, STEP_OK);
	assert_int_equal(r->event_kind, kind);
	assert_string_equal(r->state, state);
	assert_string_equal(r->reason, reason);
	assert_int_equal(r->changed, changed);
	assert_int_equal(r->epoch, epoch_set);
	assert_true(r->at_ms > 0);
}


/* ---- cases ---- */

/* 30 buyers, stock 10, all in one pipeline as the deductor sends them. */
static void test_stock_never_negative(void **state)
{
	enum { N = 30 };
	fs_intent in[N];
	fs_intent *list[N];
	struct step_result res[N];
	char rids[N][16], users[N][16], err[256];
	long long reserved = 0, refused = 0;
	struct counters c;
	int i;

	(void)state;
	for (i = 0; i < N; i++) {
		snprintf(rids[i], sizeof(rids[i]), "r%02d", i);
		snprintf(users[i], sizeof(users[i]), "u%02d", i);
		intent_fill(&in[i], K_PURCHASE, rids[i], "sku-1", users[i], (unsigned)(i % 3 + 1));
		list[i] = &in[i];
	}
	assert_int_equal(run_steps(&params, list, res, N, err, sizeof(err)), STEP_RUN_OK);
	for (i = 0; i < N; i++) {
		assert_int_equal(res[i].status, STEP_OK);
		if (res[i].event_kind == E_RESERVED) {
			assert_event(&res[i], E_RESERVED, "reserved", "", true);
			assert_int_equal(res[i].qty, i % 3 + 1);
			assert_true(res[i].deadline_ms > res[i].at_ms);
			reserved += res[i].qty;
		} else {
			assert_event(&res[i], E_REFUSED, "sold_out", "sold_out", true);
			refused++;
		}
		/* Counters in each reply satisfy the invariant too. */
		assert_int_equal(res[i].remaining + res[i].held + res[i].sold, 10);
		assert_true(res[i].remaining >= 0);
	}
	assert_true(reserved <= 10);
	assert_true(refused > 0);
	c = counters("sku-1");
	assert_int_equal(c.initial, 10);
	assert_int_equal(c.held, reserved);
	assert_int_equal(c.remaining, 10 - reserved);
	assert_int_equal(c.sold, 0);
	assert_int_equal(redis_int("ZCARD fs:holds:%s", "sku-1"), N - refused);
}

static void test_idempotent_replay(void **state)
{
	struct step_result a, b;
	char ida[LEDGER_EVENT_ID_MAX], idb[LEDGER_EVENT_ID_MAX];

	(void)state;
	a = apply(K_PURCHASE, "rid-1", "sku-1", "alice", 2);
	assert_event(&a, E_RESERVED, "reserved", "", true);
	b = apply(K_PURCHASE, "rid-1", "sku-1", "alice", 2);
	assert_event(&b, E_RESERVED, "reserved", "", false);
	assert_int_equal(a.deadline_ms, b.deadline_ms);
	assert_int_equal(a.qty, b.qty);
	assert_string_equal(b.user_id, "alice");
	assert_int_equal(ledger_event_id(ida, sizeof(ida), "rid-1", a.event_kind, a.reason), 0);
	assert_int_equal(ledger_event_id(idb, sizeof(idb), "rid-1", b.event_kind, b.reason), 0);
	assert_string_equal(ida, idb);
	assert_counters("sku-1", 8, 2, 0);
	assert_int_equal(user_units("sku-1", "alice"), 2);

	/* A replayed refusal answers the same refusal. */
	a = apply(K_PURCHASE, "rid-2", "sku-1", "bob", 4);
	assert_event(&a, E_REFUSED, "limit_reached", "limit_reached", true);
	b = apply(K_PURCHASE, "rid-2", "sku-1", "bob", 4);
	assert_event(&b, E_REFUSED, "limit_reached", "limit_reached", false);
	assert_counters("sku-1", 8, 2, 0);
}

static void test_limit_reached(void **state)
{
	struct step_result r;

	(void)state;
	r = apply(K_PURCHASE, "rid-1", "sku-1", "alice", 2);
	assert_event(&r, E_RESERVED, "reserved", "", true);
	r = apply(K_PURCHASE, "rid-2", "sku-1", "alice", 2);
	assert_event(&r, E_REFUSED, "limit_reached", "limit_reached", true);
	assert_counters("sku-1", 8, 2, 0);
	r = apply(K_PURCHASE, "rid-3", "sku-1", "alice", 1);
	assert_event(&r, E_RESERVED, "reserved", "", true);
	assert_counters("sku-1", 7, 3, 0);
	assert_int_equal(user_units("sku-1", "alice"), 3);
	r = apply(K_PURCHASE, "rid-4", "sku-1", "alice", 1);
	assert_event(&r, E_REFUSED, "limit_reached", "limit_reached", true);
	assert_counters("sku-1", 7, 3, 0);
}

static void test_pay_and_replay(void **state)
{
	struct step_result r;

	(void)state;
	r = apply(K_PURCHASE, "rid-1", "sku-1", "alice", 2);
	assert_event(&r, E_RESERVED, "reserved", "", true);
	r = apply(K_PAY, "rid-1", "sku-1", NULL, 0);
	assert_event(&r, E_PAID, "paid", "", true);
	assert_string_equal(r.user_id, "alice");
	assert_int_equal(r.qty, 2);
	assert_counters("sku-1", 8, 0, 2);
	assert_int_equal(redis_int("ZCARD fs:holds:%s", "sku-1"), 0);
	r = apply(K_PAY, "rid-1", "sku-1", NULL, 0);
	assert_event(&r, E_PAID, "paid", "", false);
	assert_counters("sku-1", 8, 0, 2);
	/* Paid units still count against the buyer's limit. */
	assert_int_equal(user_units("sku-1", "alice"), 2);
	/* Cancel after pay changes nothing. */
	r = apply(K_CANCEL, "rid-1", "sku-1", NULL, 0);
	assert_event(&r, E_TREFUSED, "paid", "not_reserved", false);
	assert_counters("sku-1", 8, 0, 2);
}

/* The next message sub reads, which must come on channel; its payload into buf. */
static void next_message(redisContext *sub, const char *channel, char *buf, size_t len)
{
	redisReply *r = NULL;

	assert_int_equal(redisGetReply(sub, (void **)&r), REDIS_OK);
	assert_non_null(r);
	assert_int_equal(r->type, REDIS_REPLY_ARRAY);
	assert_int_equal(r->elements, 3);
	assert_string_equal(r->element[0]->str, "message");
	assert_string_equal(r->element[1]->str, channel);
	snprintf(buf, len, "%s", r->element[2]->str);
	freeReplyObject(r);
}

/* The next fs:st message on sub: "request_id state". */
static void assert_told(redisContext *sub, const char *rid, const char *state)
{
	char got[128], want[128];

	next_message(sub, "fs:st", got, sizeof(got));
	snprintf(want, sizeof(want), "%s %s", rid, state);
	assert_string_equal(got, want);
}

/*
 * Every state change of a purchase is published on fs:st, once: the
 * gateways wake the long polls waiting on it. Replays and refused
 * transitions change nothing and say nothing (the next message is the
 * next change's).
 */
static void test_moves_are_told(void **state)
{
	redisContext *sub = test_redis_subscribe("fs:st");
	struct step_result res;

	(void)state;
	assert_non_null(sub);
	promo("sku-t", 2, 1, -60000, 3600000, 0);   /* holds end at once: releasable */
	res = apply(K_PURCHASE, "t-1", "sku-1", "alice", 1);
	assert_event(&res, E_RESERVED, "reserved", "", true);
	assert_told(sub, "t-1", "reserved");
	res = apply(K_PURCHASE, "t-1", "sku-1", "alice", 1);          /* replay */
	assert_event(&res, E_RESERVED, "reserved", "", false);
	res = apply(K_PAY, "t-1", "sku-1", NULL, 0);
	assert_told(sub, "t-1", "paid");
	res = apply(K_PAY, "t-1", "sku-1", NULL, 0);                  /* replay */
	res = apply(K_CANCEL, "t-1", "sku-1", NULL, 0);               /* refused */
	assert_event(&res, E_TREFUSED, "paid", "not_reserved", false);
	res = apply(K_PURCHASE, "t-2", "sku-1", "bob", 11);
	assert_told(sub, "t-2", "limit_reached");
	res = apply(K_PURCHASE, "t-3", "sku-1", "carol", 2);
	res = apply(K_CANCEL, "t-3", "sku-1", NULL, 0);
	assert_told(sub, "t-3", "reserved");
	assert_told(sub, "t-3", "cancelled");
	res = apply(K_PURCHASE, "t-4", "sku-t", "dave", 1);
	res = apply(K_RELEASE, "t-4", "sku-t", NULL, 0);
	assert_event(&res, E_EXPIRED, "expired", "", true);
	assert_told(sub, "t-4", "reserved");
	assert_told(sub, "t-4", "expired");
	redisFree(sub);
}

/* The next fs:chg message: sku, remaining and held as given, and the SKU's change number. */
static void assert_pushed(redisContext *sub, const char *sku, long long remaining, long long held)
{
	redisReply *q;
	char got[160], s[80];
	long long rem, h, earliest, at, seq;

	next_message(sub, "fs:chg", got, sizeof(got));
	assert_int_equal(sscanf(got, "%79s %lld %lld %lld %lld %lld", s, &rem, &h, &earliest, &at,
				&seq), 6);
	assert_string_equal(s, sku);
	assert_int_equal(rem, remaining);
	assert_int_equal(h, held);
	assert_true(at > 0);
	q = redisCommand(rc, "HGET fs:promo:%s seq", sku);
	assert_non_null(q);
	assert_int_equal(q->type, REDIS_REPLY_STRING);
	assert_int_equal(seq, atoll(q->str));
	freeReplyObject(q);
}

/*
 * A SKU running out, and getting units back, is pushed on fs:chg with the
 * number of that change: the gateways tell a newer push from an older one
 * read late by it (gateway/board.h). A release announced before its
 * change was numbered carried the number before.
 */
static void test_run_out_and_back_are_pushed(void **state)
{
	redisContext *sub = test_redis_subscribe("fs:chg");
	struct step_result res;

	(void)state;
	assert_non_null(sub);
	promo("sku-c", 1, 1, -60000, 3600000, 60000);
	res = apply(K_PURCHASE, "c-1", "sku-c", "alice", 1);
	assert_event(&res, E_RESERVED, "reserved", "", true);
	assert_pushed(sub, "sku-c", 0, 1);
	res = apply(K_CANCEL, "c-1", "sku-c", NULL, 0);
	assert_event(&res, E_CANCELLED, "cancelled", "", true);
	assert_pushed(sub, "sku-c", 1, 0);
	res = apply(K_PURCHASE, "c-2", "sku-c", "bob", 1);
	assert_pushed(sub, "sku-c", 0, 1);
	redisFree(sub);
}

static void test_cancel(void **state)
{
	struct step_result r;

	(void)state;
	r = apply(K_PURCHASE, "rid-1", "sku-1", "alice", 3);
	assert_event(&r, E_RESERVED, "reserved", "", true);
	assert_counters("sku-1", 7, 3, 0);
	r = apply(K_CANCEL, "rid-1", "sku-1", NULL, 0);
	assert_event(&r, E_CANCELLED, "cancelled", "", true);
	assert_counters("sku-1", 10, 0, 0);
	assert_int_equal(user_units("sku-1", "alice"), 0);
	assert_int_equal(redis_int("ZCARD fs:holds:%s", "sku-1"), 0);
	r = apply(K_CANCEL, "rid-1", "sku-1", NULL, 0);
	assert_event(&r, E_CANCELLED, "cancelled", "", false);
	assert_counters("sku-1", 10, 0, 0);
	/* The per-user count came back: she may buy her full limit again. */
	r = apply(K_PURCHASE, "rid-2", "sku-1", "alice", 3);
	assert_event(&r, E_RESERVED, "reserved", "", true);
	assert_counters("sku-1", 7, 3, 0);
	/* Paying the cancelled purchase is refused. */
	r = apply(K_PAY, "rid-1", "sku-1", NULL, 0);
	assert_event(&r, E_TREFUSED, "cancelled", "not_reserved", false);
	assert_counters("sku-1", 7, 3, 0);
}

static void test_release_not_due(void **state)
{
	struct step_result r;

	(void)state;
	r = apply(K_PURCHASE, "rid-1", "sku-1", "alice", 2);
	assert_event(&r, E_RESERVED, "reserved", "", true);
	r = apply(K_RELEASE, "rid-1", "sku-1", NULL, 0);
	assert_event(&r, E_TREFUSED, "reserved", "not_due", false);
	assert_counters("sku-1", 8, 2, 0);
	assert_int_equal(user_units("sku-1", "alice"), 2);
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static void test_release_after_deadline(void **state)
{
	struct step_result r;

	(void)state;
	promo("sku-2", 5, 2, -60000, 3600000, 50);
	r = apply(K_PURCHASE, "rid-1", "sku-2", "alice", 2);
	assert_event(&r, E_RESERVED, "reserved", "", true);
	assert_counters("sku-2", 3, 2, 0);
	sleep_ms(150);
	r = apply(K_RELEASE, "rid-1", "sku-2", NULL, 0);
	assert_event(&r, E_EXPIRED, "expired", "", true);
	assert_counters("sku-2", 5, 0, 0);
	assert_int_equal(user_units("sku-2", "alice"), 0);
	assert_int_equal(redis_int("ZCARD fs:holds:%s", "sku-2"), 0);
	/* A second release is a replay. */
	r = apply(K_RELEASE, "rid-1", "sku-2", NULL, 0);
	assert_event(&r, E_EXPIRED, "expired", "", false);
	/* Paying an expired hold changes nothing: the terminal event again. */
	r = apply(K_PAY, "rid-1", "sku-2", NULL, 0);
	assert_event(&r, E_EXPIRED, "expired", "", false);
	assert_counters("sku-2", 5, 0, 0);
}

static void test_release_after_pay(void **state)
{
	struct step_result r;

	(void)state;
	promo("sku-2", 5, 2, -60000, 3600000, 50);
	r = apply(K_PURCHASE, "rid-1", "sku-2", "alice", 1);
	assert_event(&r, E_RESERVED, "reserved", "", true);
	r = apply(K_PAY, "rid-1", "sku-2", NULL, 0);
	assert_event(&r, E_PAID, "paid", "", true);
	sleep_ms(100);
	r = apply(K_RELEASE, "rid-1", "sku-2", NULL, 0);
	assert_event(&r, E_TREFUSED, "paid", "not_reserved", false);
	assert_counters("sku-2", 4, 0, 1);
	assert_int_equal(user_units("sku-2", "alice"), 1);
}

static void test_pay_after_deadline(void **state)
{
	struct step_result r;

	(void)state;
	promo("sku-2", 5, 2, -60000, 3600000, 50);
	r = apply(K_PURCHASE, "rid-1", "sku-2", "alice", 2);
	assert_event(&r, E_RESERVED, "reserved", "", true);
	sleep_ms(150);
	r = apply(K_PAY, "rid-1", "sku-2", NULL, 0);
	assert_event(&r, E_EXPIRED, "expired", "", true);
	assert_counters("sku-2", 5, 0, 0);
	assert_int_equal(user_units("sku-2", "alice"), 0);
	/* The reconciler's release arriving afterwards replays the same event. */
	r = apply(K_RELEASE, "rid-1", "sku-2", NULL, 0);
	assert_event(&r, E_EXPIRED, "expired", "", false);
	/*
	 * The late pay itself replayed (its event was lost to a crash) emits
	 * the EXPIRED event again rather than a refusal, so the ledger gets it.
	 */
	r = apply(K_PAY, "rid-1", "sku-2", NULL, 0);
	assert_event(&r, E_EXPIRED, "expired", "", false);
	assert_counters("sku-2", 5, 0, 0);
}

static void test_not_ready(void **state)
{
	struct step_result r;
	redisReply *rep;

	(void)state;
	r = apply(K_PURCHASE, "rid-1", "sku-1", "alice", 1);
	assert_event(&r, E_RESERVED, "reserved", "", true);
	cmd_ok("DEL fs:ready");
	r = apply(K_PURCHASE, "rid-2", "sku-1", "bob", 1);
	assert_int_equal(r.status, STEP_NOT_READY);
	r = apply(K_PAY, "rid-1", "sku-1", NULL, 0);
	assert_int_equal(r.status, STEP_NOT_READY);
	r = apply(K_CANCEL, "rid-1", "sku-1", NULL, 0);
	assert_int_equal(r.status, STEP_NOT_READY);
	assert_counters("sku-1", 9, 1, 0);
	assert_int_equal(redis_int("EXISTS %s", "fs:req:rid-2"), 0);
	rep = redisCommand(rc, "HGET fs:req:rid-1 st");
	assert_non_null(rep);
	assert_string_equal(rep->str, "reserved");
	freeReplyObject(rep);
	/* A new epoch: the step answers again and carries it. */
	cmd_ok("SET fs:ready 7");
	r = apply(K_PURCHASE, "rid-2", "sku-1", "bob", 1);
	assert_int_equal(r.status, STEP_OK);
	assert_int_equal(r.epoch, 7);
}

static void test_unknown_sku(void **state)
{
	struct step_result r;

	(void)state;
	r = apply(K_PURCHASE, "rid-1", "nope", "alice", 1);
	assert_event(&r, E_REFUSED, "unknown_sku", "unknown_sku", true);
	assert_int_equal(redis_int("EXISTS %s", "fs:promo:nope"), 0);
	r = apply(K_PAY, "rid-9", "sku-1", NULL, 0);
	assert_event(&r, E_TREFUSED, "unknown", "unknown_request", false);
	assert_counters("sku-1", 10, 0, 0);
}

static void test_window(void **state)
{
	struct step_result r;

	(void)state;
	promo("early", 5, 2, 3600000, 7200000, 60000);
	promo("late", 5, 2, -7200000, -1000, 60000);
	r = apply(K_PURCHASE, "rid-1", "early", "alice", 1);
	assert_event(&r, E_REFUSED, "not_started", "not_started", true);
	assert_counters("early", 5, 0, 0);
	r = apply(K_PURCHASE, "rid-2", "late", "alice", 1);
	assert_event(&r, E_REFUSED, "ended", "ended", true);
	assert_counters("late", 5, 0, 0);
	assert_int_equal(user_units("early", "alice"), 0);
	assert_int_equal(user_units("late", "alice"), 0);
}

/* A pay/cancel/release naming another SKU than the purchase's moves nothing. */
static void test_other_sku_transition(void **state)
{
	struct step_result r;

	(void)state;
	promo("sku-2", 5, 2, -60000, 3600000, 60000);
	r = apply(K_PURCHASE, "rid-1", "sku-1", "alice", 2);
	assert_event(&r, E_RESERVED, "reserved", "", true);
	r = apply(K_PAY, "rid-1", "sku-2", NULL, 0);
	assert_event(&r, E_TREFUSED, "unknown", "unknown_request", false);
	r = apply(K_CANCEL, "rid-1", "sku-2", NULL, 0);
	assert_event(&r, E_TREFUSED, "unknown", "unknown_request", false);
	/*
	 * A purchase reusing the id on another SKU is refused without a copy
	 * of the first purchase's event on this SKU's stream.
	 */
	r = apply(K_PURCHASE, "rid-1", "sku-2", "alice", 1);
	assert_event(&r, E_TREFUSED, "unknown", "request_id_reused", false);
	assert_counters("sku-1", 8, 2, 0);
	assert_counters("sku-2", 5, 0, 0);
}

/*
 * Redis refusing for now (OOM under noeviction) is a retry of the batch, never
 * a failed intent: failed intents are dead-lettered, and this purchase was
 * already acknowledged to the buyer.
 */
static void test_oom_is_retried(void **state)
{
	struct step_result res;
	fs_intent in;
	fs_intent *list[1] = { &in };
	char err[256];

	(void)state;
	promo("sku-2", 5, 2, -60000, 3600000, 60000);
	cmd_ok("CONFIG SET maxmemory-policy noeviction");
	cmd_ok("CONFIG SET maxmemory 1");
	intent_fill(&in, K_PURCHASE, "rid-oom", "sku-2", "alice", 1);
	assert_int_equal(run_steps(&params, list, &res, 1, err, sizeof(err)), STEP_RUN_BUSY);
	assert_non_null(strstr(err, "OOM"));
	assert_int_not_equal(res.status, STEP_FAILED);
	assert_counters("sku-2", 5, 0, 0);
	cmd_ok("CONFIG SET maxmemory 0");
	res = apply(K_PURCHASE, "rid-oom", "sku-2", "alice", 1);
	assert_event(&res, E_RESERVED, "reserved", "", true);
}

/* A script error (bad kind) comes back as a failed result, not a crash. */
static void test_script_error(void **state)
{
	struct step_result res;
	redisReply *r;

	(void)state;
	r = redisCommand(rc, "EVALSHA %s 7 fs:ready fs:promo:sku-1 fs:users:sku-1 "
			 "fs:holds:sku-1 fs:req:x fs:wm fs:fence bogus x sku-1 u 1 60 0 0 -1 0 0 0",
			 sha);
	assert_non_null(r);
	step_parse(r, &res);
	freeReplyObject(r);
	assert_int_equal(res.status, STEP_FAILED);
	assert_non_null(strstr(res.error, "unknown kind"));
	assert_counters("sku-1", 10, 0, 0);
}

/* After SCRIPT FLUSH step_run reports NOSCRIPT for the batch. */
static void test_noscript(void **state)
{
	struct step_result res[2];
	fs_intent a, b;
	fs_intent *list[2] = { &a, &b };
	char err[256];
	redisReply *r;

	(void)state;
	intent_fill(&a, K_PURCHASE, "rid-1", "sku-1", "alice", 1);
	intent_fill(&b, K_PURCHASE, "rid-2", "sku-1", "bob", 1);
	cmd_ok("SCRIPT FLUSH");
	assert_int_equal(run_steps(&params, list, res, 2, err, sizeof(err)), STEP_RUN_NOSCRIPT);
	assert_counters("sku-1", 10, 0, 0);
	r = redisCommand(rc, "SCRIPT LOAD %s", fs_deduct_lua);
	assert_non_null(r);
	assert_string_equal(r->str, sha);
	freeReplyObject(r);
	/* The connection is still in step: the redo works. */
	assert_int_equal(run_steps(&params, list, res, 2, err, sizeof(err)), STEP_RUN_OK);
	assert_int_equal(res[1].status, STEP_OK);
	assert_counters("sku-1", 8, 2, 0);
}

static char *redis_str(const char *fmt, const char *a, const char *b)
{
	redisReply *r = redisCommand(rc, fmt, a, b);
	char *s = NULL;

	assert_non_null(r);
	if (r->type == REDIS_REPLY_STRING)
		s = strdup(r->str);
	else
		assert_int_equal(r->type, REDIS_REPLY_NIL);
	freeReplyObject(r);
	return s;
}

/*
 * The watermark check: a Redis whose fs:wm for the partition is below what
 * the ledger shows (the floor) is fenced before anything is applied, and
 * the fence holds for every later step of that partition whatever floor it
 * carries, until the repair lifts it. Other partitions go on.
 */
static void test_watermark_fence(void **state)
{
	struct step_args a = { .partition = 3, .offset = 10, .min_wm = -1, .min_seq = 0 };
	struct step_result r;
	fs_intent in;
	char *s;

	(void)state;
	intent_fill(&in, K_PURCHASE, "rid-1", "sku-1", "alice", 1);
	r = apply_at(&in, &a, &params);
	assert_event(&r, E_RESERVED, "reserved", "", true);
	s = redis_str("HGET %s %s", "fs:wm", "3");
	assert_string_equal(s, "10");
	free(s);
	/* Replays change nothing, so they move the watermark neither way. */
	a.offset = 4;
	r = apply_at(&in, &a, &params);
	assert_event(&r, E_RESERVED, "reserved", "", false);
	a.offset = 40;
	r = apply_at(&in, &a, &params);
	assert_event(&r, E_RESERVED, "reserved", "", false);
	s = redis_str("HGET %s %s", "fs:wm", "3");
	assert_string_equal(s, "10");
	free(s);
	/* The floor is met: applied. */
	intent_fill(&in, K_PURCHASE, "rid-2", "sku-1", "bob", 1);
	a.offset = 11;
	a.min_wm = 10;
	r = apply_at(&in, &a, &params);
	assert_event(&r, E_RESERVED, "reserved", "", true);
	assert_counters("sku-1", 8, 2, 0);

	/* Redis goes back: it forgot offset 11. */
	cmd_ok("HSET fs:wm 3 10");
	intent_fill(&in, K_PURCHASE, "rid-3", "sku-1", "carol", 1);
	a.offset = 12;
	a.min_wm = 11;
	r = apply_at(&in, &a, &params);
	assert_int_equal(r.status, STEP_FENCED);
	assert_non_null(strstr(r.error, "reason=watermark"));
	assert_non_null(strstr(r.error, "redis=10 ledger=11"));
	assert_counters("sku-1", 8, 2, 0);
	assert_int_equal(redis_int("EXISTS %s", "fs:req:rid-3"), 0);
	s = redis_str("HGET %s %s", "fs:fence", "3");
	assert_non_null(s);
	assert_non_null(strstr(s, "reason=watermark"));
	free(s);
	/* Every step of the partition is refused now, even without a floor. */
	a.min_wm = -1;
	r = apply_at(&in, &a, &params);
	assert_int_equal(r.status, STEP_FENCED);
	intent_fill(&in, K_PAY, "rid-1", "sku-1", NULL, 0);
	r = apply_at(&in, &a, &params);
	assert_int_equal(r.status, STEP_FENCED);
	assert_counters("sku-1", 8, 2, 0);
	/* Another partition is not concerned. */
	intent_fill(&in, K_PURCHASE, "rid-4", "sku-1", "dave", 1);
	a.partition = 4;
	a.offset = 0;
	r = apply_at(&in, &a, &params);
	assert_event(&r, E_RESERVED, "reserved", "", true);
	/* The repair lifts the fence. */
	cmd_ok("HDEL fs:fence 3");
	intent_fill(&in, K_PURCHASE, "rid-3", "sku-1", "carol", 1);
	a.partition = 3;
	a.offset = 12;
	r = apply_at(&in, &a, &params);
	assert_event(&r, E_RESERVED, "reserved", "", true);
	assert_counters("sku-1", 6, 4, 0);
}

/*
 * The SKU sequence: every change takes the next number, a replay answers
 * the number of the step that made its event, and a SKU whose sequence is
 * below the floor fences the partition (the check that survives sharding).
 */
static void test_sku_seq(void **state)
{
	struct step_args a = { .partition = 1, .offset = 0, .min_wm = -1, .min_seq = 0 };
	struct step_result r;
	fs_intent in;

	(void)state;
	intent_fill(&in, K_PURCHASE, "rid-1", "sku-1", "alice", 1);
	r = apply_at(&in, &a, &params);
	assert_event(&r, E_RESERVED, "reserved", "", true);
	assert_int_equal(r.sku_seq, 1);
	intent_fill(&in, K_PURCHASE, "rid-2", "sku-1", "bob", 9);
	a.offset++;
	r = apply_at(&in, &a, &params);
	assert_event(&r, E_REFUSED, "limit_reached", "limit_reached", true);
	assert_int_equal(r.sku_seq, 2);
	intent_fill(&in, K_PAY, "rid-1", "sku-1", NULL, 0);
	a.offset++;
	r = apply_at(&in, &a, &params);
	assert_event(&r, E_PAID, "paid", "", true);
	assert_int_equal(r.sku_seq, 3);
	/* Replays carry the number of the event they repeat. */
	intent_fill(&in, K_PURCHASE, "rid-1", "sku-1", "alice", 1);
	r = apply_at(&in, &a, &params);
	assert_event(&r, E_RESERVED, "reserved", "", false);
	assert_int_equal(r.sku_seq, 1);
	intent_fill(&in, K_PURCHASE, "rid-2", "sku-1", "bob", 9);
	r = apply_at(&in, &a, &params);
	assert_int_equal(r.sku_seq, 2);
	intent_fill(&in, K_PAY, "rid-1", "sku-1", NULL, 0);
	r = apply_at(&in, &a, &params);
	assert_event(&r, E_PAID, "paid", "", false);
	assert_int_equal(r.sku_seq, 3);
	/* An unknown SKU has no sequence and gets no promotion hash. */
	intent_fill(&in, K_PURCHASE, "rid-3", "nope", "alice", 1);
	r = apply_at(&in, &a, &params);
	assert_event(&r, E_REFUSED, "unknown_sku", "unknown_sku", true);
	assert_int_equal(r.sku_seq, 0);
	assert_int_equal(redis_int("EXISTS %s", "fs:promo:nope"), 0);

	/* The SKU's state went back two changes; the watermark did not. */
	cmd_ok("HSET fs:promo:sku-1 seq 1");
	intent_fill(&in, K_PURCHASE, "rid-4", "sku-1", "carol", 1);
	a.offset++;
	a.min_seq = 3;
	r = apply_at(&in, &a, &params);
	assert_int_equal(r.status, STEP_FENCED);
	assert_non_null(strstr(r.error, "reason=sku_seq"));
	assert_non_null(strstr(r.error, "sku=sku-1 redis=1 ledger=3"));
	assert_int_equal(redis_int("EXISTS %s", "fs:req:rid-4"), 0);
	assert_counters("sku-1", 9, 0, 1);
}

/*
 * A PAY counts at the time the gateway accepted it, clamped to
 * [apply time - pay_max_lag_ms, apply time].
 */
static void test_pay_judged_at_acceptance(void **state)
{
	struct step_params tight = { .record_ttl_s = 3600, .pay_max_lag_ms = 20 };
	struct step_args a = args_default();
	struct step_result r, held;
	fs_intent in;

	(void)state;
	promo("sku-2", 5, 2, -60000, 3600000, 50);
	/* Accepted 10 ms into a 50 ms hold, applied 150 ms later: paid. */
	held = apply(K_PURCHASE, "rid-1", "sku-2", "alice", 1);
	assert_event(&held, E_RESERVED, "reserved", "", true);
	sleep_ms(150);
	intent_fill(&in, K_PAY, "rid-1", "sku-2", NULL, 0);
	in.accepted_at_ms = held.at_ms + 10;
	r = apply_at(&in, &a, &params);
	assert_event(&r, E_PAID, "paid", "", true);
	assert_counters("sku-2", 4, 0, 1);

	/* The same stamp with a 20 ms lag bound is clamped past the deadline. */
	held = apply(K_PURCHASE, "rid-2", "sku-2", "bob", 1);
	sleep_ms(150);
	intent_fill(&in, K_PAY, "rid-2", "sku-2", NULL, 0);
	in.accepted_at_ms = held.at_ms + 10;
	r = apply_at(&in, &a, &tight);
	assert_event(&r, E_EXPIRED, "expired", "", true);

	/* A stamp from the future counts as the apply time. */
	held = apply(K_PURCHASE, "rid-3", "sku-2", "carol", 1);
	sleep_ms(150);
	intent_fill(&in, K_PAY, "rid-3", "sku-2", NULL, 0);
	in.accepted_at_ms = held.at_ms + 3600000;
	r = apply_at(&in, &a, &params);
	assert_event(&r, E_EXPIRED, "expired", "", true);

	/* A stamp after the deadline is late whatever the lag. */
	held = apply(K_PURCHASE, "rid-4", "sku-2", "dave", 1);
	sleep_ms(150);
	intent_fill(&in, K_PAY, "rid-4", "sku-2", NULL, 0);
	in.accepted_at_ms = held.deadline_ms + 1;
	r = apply_at(&in, &a, &params);
	assert_event(&r, E_EXPIRED, "expired", "", true);
	assert_counters("sku-2", 4, 0, 1);
}

/*
 * Only the buyer pays or cancels: an intent forged onto the topic that
 * names another user changes nothing and says nothing about whose it is.
 */
static void test_owner_only(void **state)
{
	struct step_args a = args_default();
	struct step_result r;
	fs_intent in;

	(void)state;
	r = apply(K_PURCHASE, "rid-1", "sku-1", "alice", 2);
	assert_event(&r, E_RESERVED, "reserved", "", true);
	intent_fill(&in, K_CANCEL, "rid-1", "sku-1", "mallory", 0);
	r = apply_at(&in, &a, &params);
	assert_event(&r, E_TREFUSED, "unknown", "unknown_request", false);
	assert_string_equal(r.user_id, "mallory");
	intent_fill(&in, K_PAY, "rid-1", "sku-1", "mallory", 0);
	r = apply_at(&in, &a, &params);
	assert_event(&r, E_TREFUSED, "unknown", "unknown_request", false);
	assert_counters("sku-1", 8, 2, 0);
	r = apply(K_PAY, "rid-1", "sku-1", "alice", 0);
	assert_event(&r, E_PAID, "paid", "", true);
	assert_counters("sku-1", 8, 0, 2);
}

int main(void)
{
	const char *server = getenv("REDIS_SERVER");
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup(test_stock_never_negative, setup),
		cmocka_unit_test_setup(test_idempotent_replay, setup),
		cmocka_unit_test_setup(test_limit_reached, setup),
		cmocka_unit_test_setup(test_pay_and_replay, setup),
		cmocka_unit_test_setup(test_moves_are_told, setup),
		cmocka_unit_test_setup(test_run_out_and_back_are_pushed, setup),
		cmocka_unit_test_setup(test_cancel, setup),
		cmocka_unit_test_setup(test_release_not_due, setup),
		cmocka_unit_test_setup(test_release_after_deadline, setup),
		cmocka_unit_test_setup(test_release_after_pay, setup),
		cmocka_unit_test_setup(test_pay_after_deadline, setup),
		cmocka_unit_test_setup(test_not_ready, setup),
		cmocka_unit_test_setup(test_unknown_sku, setup),
		cmocka_unit_test_setup(test_window, setup),
		cmocka_unit_test_setup(test_other_sku_transition, setup),
		cmocka_unit_test_setup(test_oom_is_retried, setup),
		cmocka_unit_test_setup(test_script_error, setup),
		cmocka_unit_test_setup(test_noscript, setup),
		cmocka_unit_test_setup(test_watermark_fence, setup),
		cmocka_unit_test_setup(test_sku_seq, setup),
		cmocka_unit_test_setup(test_pay_judged_at_acceptance, setup),
		cmocka_unit_test_setup(test_owner_only, setup),
	};

	if (server == NULL || server[0] == '\0') {
		printf("SKIP: REDIS_SERVER is empty (redis-server not found at configure time)\n");
		return 77;
	}
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
