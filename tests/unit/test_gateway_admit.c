/*
 * gateway/admit.lua and its counterpart in deductor/deduct.lua against a
 * real Redis: the shared admission budget, and every verdict.
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

#include "admit.h"
#include "deductor.h"
#include "redis_server.h"
#include "store.h"

extern const char gw_admit_lua[];
extern const char gw_unadmit_lua[];

/* A fresh promotion: stock units, remaining as given, nothing admitted. */
static int setup(void **state)
{
	redisReply *r;

	(void)state;
	r = redisCommand(test_rc, "FLUSHALL");
	freeReplyObject(r);
	r = redisCommand(test_rc, "SET fs:ready 1");
	freeReplyObject(r);
	r = redisCommand(test_rc, "HSET fs:promo:s initial 10 remaining 10 held 0 sold 0 limit 5 "
			 "start_ms 0 end_ms 9999999999999 hold_ms 60000");
	freeReplyObject(r);
	return 0;
}

static long long redis_int(const char *fmt, const char *arg)
{
	redisReply *r = redisCommand(test_rc, fmt, arg);
	long long v = 0;

	assert_non_null(r);
	if (r->type == REDIS_REPLY_STRING)
		v = atoll(r->str);
	else if (r->type == REDIS_REPLY_INTEGER)
		v = r->integer;
	freeReplyObject(r);
	return v;
}

struct verdict {
	char what[16];
	long long a, b;
	char state[16];
};

/* A lease operation: op "grant" or "return", its SKU, lease id and units. */
struct lease_op {
	const char *op, *sku, *id;
	long long units;
};

/*
 * One admit.lua call: n purchases of qty each (ids rid-<first>.., or all
 * rid-<first> when same_id), marks under lease when it is not "", then the
 * lease operations; min_free as given. granted[j]: units per operation.
 */
static void admit_call(const char *sku, int first, int n, int qty, long long k_pct,
		       long long cap, bool same_id, const char *lease, long long min_free,
		       const struct lease_op *ops, int nops, struct verdict *out,
		       long long *granted)
{
	const char *argv[3 + 3 + 3 * 64 + 6 + 4 * 64 + 4 * 8];
	char keys[64][3][64], args[64][2][32], num[7][24], units[8][24];
	redisReply *r;
	int k = 0;

	assert_true(n <= 64 && nops <= 8);
	argv[k++] = "EVAL";
	argv[k++] = gw_admit_lua;
	snprintf(num[0], sizeof(num[0]), "%d", 3 + 3 * n);
	argv[k++] = num[0];
	argv[k++] = "fs:ready";
	argv[k++] = "fs:adm:all";
	argv[k++] = "fs:adm:total";
	for (int i = 0; i < n; i++) {
		snprintf(keys[i][0], 64, "fs:promo:%s", sku);
		snprintf(keys[i][1], 64, "fs:cfg:%s", sku);
		snprintf(keys[i][2], 64, "fs:req:rid-%d", first + (same_id ? 0 : i));
		for (int j = 0; j < 3; j++)
			argv[k++] = keys[i][j];
	}
	argv[k++] = "3600";
	snprintf(num[1], sizeof(num[1]), "%lld", k_pct);
	argv[k++] = num[1];
	snprintf(num[2], sizeof(num[2]), "%d", n);
	argv[k++] = num[2];
	snprintf(num[3], sizeof(num[3]), "%lld", cap);
	argv[k++] = num[3];
	snprintf(num[4], sizeof(num[4]), "%lld", min_free);
	argv[k++] = num[4];
	for (int i = 0; i < n; i++) {
		snprintf(args[i][0], 32, "rid-%d", first + (same_id ? 0 : i));
		snprintf(args[i][1], 32, "%d", qty);
		argv[k++] = sku;
		argv[k++] = args[i][0];
		argv[k++] = args[i][1];
		argv[k++] = lease;
	}
	snprintf(num[5], sizeof(num[5]), "%d", nops);
	argv[k++] = num[5];
	for (int j = 0; j < nops; j++) {
		argv[k++] = ops[j].op;
		argv[k++] = ops[j].sku;
		argv[k++] = ops[j].id;
		snprintf(units[j], sizeof(units[j]), "%lld", ops[j].units);
		argv[k++] = units[j];
	}
	r = redisCommandArgv(test_rc, k, argv, NULL);
	assert_non_null(r);
	if (r->type == REDIS_REPLY_ERROR)
		fail_msg("admit.lua: %s", r->str);
	assert_int_equal(r->type, REDIS_REPLY_ARRAY);
	if (r->elements == 1 && r->element[0]->type == REDIS_REPLY_STRING) {  /* {'not_ready'} */
		snprintf(out[0].what, sizeof(out[0].what), "%s", r->element[0]->str);
		freeReplyObject(r);
		return;
	}
	assert_int_equal(r->elements, (size_t)n + (nops > 0));
	for (int i = 0; i < n; i++) {
		redisReply *e = r->element[i];

		memset(&out[i], 0, sizeof(out[i]));
		snprintf(out[i].what, sizeof(out[i].what), "%s", e->element[0]->str);
		if (e->element[1]->type == REDIS_REPLY_STRING)
			snprintf(out[i].state, sizeof(out[i].state), "%s", e->element[1]->str);
		else
			out[i].a = e->element[1]->integer;
		out[i].b = e->element[2]->integer;
	}
	if (nops > 0) {
		assert_int_equal(r->element[n]->type, REDIS_REPLY_ARRAY);
		assert_int_equal(r->element[n]->elements, (size_t)nops);
		for (int j = 0; j < nops; j++)
			granted[j] = r->element[n]->element[j]->integer;
	}
	freeReplyObject(r);
}

static void admit_ex(const char *sku, int first, int n, int qty, long long k_pct, long long cap,
		     bool same_id, struct verdict *out)
{
	admit_call(sku, first, n, qty, k_pct, cap, same_id, "", 1000, NULL, 0, out, NULL);
}

static void admit(const char *sku, int first, int n, int qty, long long k_pct, long long cap,
		  struct verdict *out)
{
	admit_ex(sku, first, n, qty, k_pct, cap, false, out);
}

static int count(const struct verdict *v, int n, const char *what)
{
	int c = 0;

	for (int i = 0; i < n; i++)
		c += strcmp(v[i].what, what) == 0;
	return c;
}

/* The deductor's first decision of purchase rid-<i> (deduct.lua). */
static void deduct(int i, const char *user, int qty)
{
	char rid[32], q[16];
	const char *argv[] = { "EVAL", fs_deduct_lua, "7", "fs:ready", "fs:promo:s", "fs:users:s",
			       "fs:holds:s", NULL, "fs:wm", "fs:fence", "purchase", rid, "s", user,
			       q, "3600", "0", "0", "-1", "0", "0", "0" };
	char key[48];
	redisReply *r;

	snprintf(rid, sizeof(rid), "rid-%d", i);
	snprintf(key, sizeof(key), "fs:req:rid-%d", i);
	snprintf(q, sizeof(q), "%d", qty);
	argv[7] = key;
	r = redisCommandArgv(test_rc, 22, argv, NULL);
	assert_non_null(r);
	if (r->type == REDIS_REPLY_ERROR)
		fail_msg("deduct.lua: %s", r->str);
	freeReplyObject(r);
}

/* Within k x remaining everyone is admitted; beyond, "claimed". */
static void test_budget(void **state)
{
	struct verdict v[64];
	(void)state;

	admit("s", 0, 30, 1, 200, 0, v);
	assert_int_equal(count(v, 30, "admitted"), 20);
	assert_int_equal(count(v, 30, "claimed"), 10);
	for (int i = 20; i < 30; i++) {
		assert_string_equal(v[i].what, "claimed");
		assert_int_equal(v[i].b, 1);             /* may come back */
	}
	assert_int_equal(redis_int("HGET fs:promo:%s adm", "s"), 20);
	assert_int_equal(redis_int("GET %s", "fs:adm:total"), 20);
	assert_int_equal(redis_int("ZCARD %s", "fs:adm:all"), 20);
	/* The marker: queued, with what it took. */
	assert_int_equal(redis_int("HGET fs:req:rid-0 %s", "adm"), 1);

	/* A retry of an admitted id is "known", never admitted twice. */
	admit("s", 0, 1, 1, 200, 0, v);
	assert_string_equal(v[0].what, "known");
	assert_string_equal(v[0].state, "queued");
	assert_int_equal(redis_int("HGET fs:promo:%s adm", "s"), 20);

	/* One id twice in one call (a retry in the same loop turn): admitted
	 * once, and the second sees the first's marker (admit.lua writes the
	 * markers as it goes, the counters once at the end). */
	freeReplyObject(redisCommand(test_rc, "HSET fs:promo:s2 remaining 10 held 0 adm 0"));
	admit_ex("s2", 500, 3, 1, 200, 0, true, v);
	assert_string_equal(v[0].what, "admitted");
	assert_string_equal(v[1].what, "known");
	assert_string_equal(v[2].what, "known");
	assert_int_equal(redis_int("HGET fs:promo:%s adm", "s2"), 1);
	assert_int_equal(redis_int("GET %s", "fs:adm:total"), 21);
	assert_int_equal(redis_int("ZCARD %s", "fs:adm:all"), 21);
	{
		redisReply *r = redisCommand(test_rc, "HSET fs:promo:s2 adm 0");

		freeReplyObject(r);
		r = redisCommand(test_rc, "ZREM fs:adm:all %s", "s2 rid-500");
		freeReplyObject(r);
		r = redisCommand(test_rc, "DECRBY fs:adm:total 1");
		freeReplyObject(r);
	}

	/* Decisions give the places back: 10 reserved, 10 sold out. */
	for (int i = 0; i < 20; i++) {
		char user[16];

		snprintf(user, sizeof(user), "u%d", i);
		deduct(i, user, 1);
	}
	assert_int_equal(redis_int("HGET fs:promo:%s adm", "s"), 0);
	assert_int_equal(redis_int("GET %s", "fs:adm:total"), 0);
	assert_int_equal(redis_int("ZCARD %s", "fs:adm:all"), 0);
	assert_int_equal(redis_int("HEXISTS fs:req:rid-0 %s", "adm"), 0);
	/* A replayed decision gives nothing twice. */
	deduct(0, "u0", 1);
	assert_int_equal(redis_int("HGET fs:promo:%s adm", "s"), 0);
	assert_int_equal(redis_int("GET %s", "fs:adm:total"), 0);
}

/* Sold out with holds: when they end, and that units may come back. */
static void test_sold_out(void **state)
{
	struct verdict v[2];
	redisReply *r;
	(void)state;

	r = redisCommand(test_rc, "HSET fs:promo:s remaining 0 held 10");
	freeReplyObject(r);
	r = redisCommand(test_rc, "ZADD fs:holds:s 9999999999998 a 9999999999999 b");
	freeReplyObject(r);
	admit("s", 100, 1, 1, 200, 0, v);
	assert_string_equal(v[0].what, "sold_out");
	assert_true(v[0].a > 0);
	assert_int_equal(v[0].b, 1);
	r = redisCommand(test_rc, "HSET fs:promo:s held 0 sold 10");
	freeReplyObject(r);
	r = redisCommand(test_rc, "DEL fs:holds:s");
	freeReplyObject(r);
	admit("s", 101, 1, 1, 200, 0, v);
	assert_string_equal(v[0].what, "sold_out");
	assert_int_equal(v[0].b, 0);                 /* nothing can come back */
	assert_int_equal(redis_int("HGET fs:promo:%s adm", "s"), 0);
}

/*
 * A promotion's own limits (fs:cfg): k, where 0 means the default (the
 * admin API writes all four, zeros included: found by the integration
 * test, admission was shut), and the SKU's rate per second.
 */
static void test_promotion_limits(void **state)
{
	struct verdict v[64];
	redisReply *r;
	(void)state;

	r = redisCommand(test_rc, "HSET fs:cfg:s k_pct 0 ip_rate_per_s 0 user_rate_per_s 0 "
			 "sku_rate_per_s 0");
	freeReplyObject(r);
	admit("s", 0, 25, 1, 200, 0, v);
	assert_int_equal(count(v, 25, "admitted"), 20);
	r = redisCommand(test_rc, "FLUSHALL");
	freeReplyObject(r);
	setup(NULL);
	r = redisCommand(test_rc, "HSET fs:cfg:s k_pct 100 sku_rate_per_s 0");
	freeReplyObject(r);
	admit("s", 0, 25, 1, 200, 0, v);
	assert_int_equal(count(v, 25, "admitted"), 10);

	setup(NULL);
	r = redisCommand(test_rc, "HSET fs:cfg:s sku_rate_per_s 4");
	freeReplyObject(r);
	admit("s", 0, 10, 1, 200, 0, v);
	/* 4 a second (unless this ran across a second's edge: at most 8). */
	assert_true(count(v, 10, "admitted") >= 4 && count(v, 10, "admitted") <= 8);
	assert_true(count(v, 10, "sku_rate") >= 2);
}

static void test_global_cap_unknown_and_not_ready(void **state)
{
	struct verdict v[8];
	redisContext *sub;
	redisReply *r;
	(void)state;

	admit("s", 0, 5, 1, 200, 3, v);
	assert_int_equal(count(v, 5, "admitted"), 3);
	assert_int_equal(count(v, 5, "inflight"), 2);
	admit("nope", 10, 1, 1, 200, 0, v);
	assert_string_equal(v[0].what, "unknown_sku");
	/*
	 * unadmit.lua: Kafka refused rid-0: its place comes back once, and a
	 * long poll on it (a retry through another gateway) is told.
	 */
	sub = test_redis_subscribe("fs:st");
	assert_non_null(sub);
	for (int i = 0; i < 2; i++) {
		const char *argv[] = { "EVAL", gw_unadmit_lua, "4", "fs:promo:s", "fs:req:rid-0",
				       "fs:adm:all", "fs:adm:total", "s rid-0" };

		r = redisCommandArgv(test_rc, 8, argv, NULL);
		assert_non_null(r);
		assert_int_equal(r->type, REDIS_REPLY_INTEGER);
		assert_int_equal(r->integer, i == 0 ? 1 : 0);
		freeReplyObject(r);
	}
	assert_int_equal(redis_int("HGET fs:promo:%s adm", "s"), 2);
	assert_int_equal(redis_int("GET %s", "fs:adm:total"), 2);
	/* Told once: the second call gave nothing back. */
	assert_int_equal(redisGetReply(sub, (void **)&r), REDIS_OK);
	assert_int_equal(r->type, REDIS_REPLY_ARRAY);
	assert_int_equal(r->elements, 3);
	assert_string_equal(r->element[2]->str, "rid-0 gone");
	freeReplyObject(r);
	redisFree(sub);
	r = redisCommand(test_rc, "DEL fs:ready");
	freeReplyObject(r);
	admit("s", 20, 1, 1, 200, 0, v);
	assert_string_equal(v[0].what, "not_ready");
}

/* Every gateway learns the ids admitted (gateway/known.h): one message per call. */
static void test_admitted_ids_are_told(void **state)
{
	struct verdict v[8];
	redisContext *sub = test_redis_subscribe("fs:st");
	redisReply *r;

	(void)state;
	assert_non_null(sub);
	admit("s", 0, 3, 1, 200, 0, v);
	assert_int_equal(count(v, 3, "admitted"), 3);
	assert_int_equal(redisGetReply(sub, (void **)&r), REDIS_OK);
	assert_int_equal(r->type, REDIS_REPLY_ARRAY);
	assert_int_equal(r->elements, 3);
	assert_string_equal(r->element[2]->str, "+ rid-0 rid-1 rid-2");
	freeReplyObject(r);
	/* Nothing admitted (all known now), nothing told: the next message is this one. */
	admit("s", 0, 3, 1, 200, 0, v);
	assert_int_equal(count(v, 3, "known"), 3);
	r = redisCommand(test_rc, "PUBLISH fs:st marker");
	freeReplyObject(r);
	assert_int_equal(redisGetReply(sub, (void **)&r), REDIS_OK);
	assert_string_equal(r->element[2]->str, "marker");
	freeReplyObject(r);
	redisFree(sub);
}

static long long lease_grant(const char *sku, const char *id, long long units, long long min_free)
{
	struct lease_op op = { "grant", sku, id, units };
	struct verdict v[1];
	long long g = -1;

	admit_call(sku, 0, 0, 1, 200, 0, false, "", min_free, &op, 1, v, &g);
	return g;
}

/*
 * Leases: a grant is counted in the budget at once; marks move its units
 * to their purchases (the budget unchanged); a return gives back what is
 * left, once; a mark under a lease gone counts anew.
 */
/* A lease's units left, and SKU "big"'s adm and lease, and fs:adm:total. */
static void assert_lease_counts(const char *lease, long long left, long long adm,
				long long leased, long long total)
{
	assert_int_equal(redis_int("HGET fs:req:%s adm", lease), left);
	assert_int_equal(redis_int("HGET fs:promo:%s adm", "big"), adm);
	assert_int_equal(redis_int("HGET fs:promo:%s lease", "big"), leased);
	assert_int_equal(redis_int("GET %s", "fs:adm:total"), total);
}

static void test_lease_grant_mark_return(void **state)
{
	struct lease_op ret = { "return", "big", "~L.1", 0 };
	struct verdict v[4];
	long long g = -1;
	(void)state;

	freeReplyObject(redisCommand(test_rc, "HSET fs:promo:big remaining 100000 held 0 adm 0"));
	assert_int_equal(lease_grant("big", "~L.1", 64, 1000), 64);
	assert_int_equal(redis_int("HGET fs:promo:%s adm", "big"), 64);
	assert_int_equal(redis_int("HGET fs:promo:%s lease", "big"), 64);
	assert_int_equal(redis_int("GET %s", "fs:adm:total"), 64);
	assert_int_equal(redis_int("HGET fs:req:%s adm", "~L.1"), 64);
	assert_int_equal(redis_int("ZSCORE fs:adm:all %s", "big ~L.1") > 0, 1);

	admit_call("big", 0, 3, 1, 200, 0, false, "~L.1", 1000, NULL, 0, v, NULL);
	assert_int_equal(count(v, 3, "admitted"), 3);
	assert_lease_counts("~L.1", 61, 64, 61, 64);
	assert_int_equal(redis_int("HGET fs:req:rid-2 %s", "adm"), 1);
	assert_int_equal(redis_int("ZCARD %s", "fs:adm:all"), 4);
	/* A mark of an id with a record: "known", the lease untouched. */
	admit_call("big", 0, 1, 1, 200, 0, false, "~L.1", 1000, NULL, 0, v, NULL);
	assert_string_equal(v[0].what, "known");
	assert_string_equal(v[0].state, "queued");
	assert_int_equal(redis_int("HGET fs:req:%s adm", "~L.1"), 61);

	/* The return, in the same call as a mark: the mark first. */
	admit_call("big", 3, 1, 1, 200, 0, false, "~L.1", 1000, &ret, 1, v, &g);
	assert_string_equal(v[0].what, "admitted");
	assert_int_equal(g, 0);
	assert_int_equal(redis_int("HGET fs:promo:%s adm", "big"), 4);
	assert_int_equal(redis_int("HGET fs:promo:%s lease", "big"), 0);
	assert_int_equal(redis_int("GET %s", "fs:adm:total"), 4);
	assert_int_equal(redis_int("EXISTS %s", "fs:req:~L.1"), 0);
	assert_int_equal(redis_int("ZCARD %s", "fs:adm:all"), 4);
	/* Returned twice: nothing more. */
	admit_call("big", 0, 0, 1, 200, 0, false, "", 1000, &ret, 1, v, &g);
	assert_int_equal(redis_int("HGET fs:promo:%s adm", "big"), 4);
	/* A mark under the lease gone: counted anew. */
	admit_call("big", 10, 1, 1, 200, 0, false, "~L.1", 1000, NULL, 0, v, NULL);
	assert_string_equal(v[0].what, "admitted");
	assert_int_equal(redis_int("HGET fs:promo:%s adm", "big"), 5);
	assert_int_equal(redis_int("GET %s", "fs:adm:total"), 5);
	/*
	 * More marks in one call than the lease has left (the script reads the
	 * lease once per call and writes it back once): the first two come
	 * from the lease, the third is counted anew, the lease ends at 0.
	 */
	assert_int_equal(lease_grant("big", "~L.2", 2, 1000), 2);
	admit_call("big", 20, 3, 1, 200, 0, false, "~L.2", 1000, NULL, 0, v, NULL);
	assert_int_equal(count(v, 3, "admitted"), 3);
	assert_lease_counts("~L.2", 0, 8, 0, 8);
}

/*
 * Grants come only from a large free budget, a sixteenth of it at most,
 * never from a SKU with a rate across gateways, and all leases together stay
 * within k x remaining - remaining: a buyer refused "claimed" means the
 * undecided purchases cover every unit left.
 */
static void test_lease_bounds(void **state)
{
	struct verdict v[64];
	long long sum = 0, g;
	char id[16];
	(void)state;

	/* setup's promotion: 10 units, a budget of 20, under min_free. */
	assert_int_equal(lease_grant("s", "~L.s", 64, 1000), 0);
	assert_int_equal(lease_grant("s", "~L.s", 64, 0), 1);    /* 20 / 16 */
	freeReplyObject(redisCommand(test_rc, "HSET fs:promo:b remaining 1000 held 0 adm 0"));
	assert_int_equal(lease_grant("b", "~L.b0", 500, 1000), 125);   /* 2000 / 16 */
	assert_int_equal(lease_grant("b", "~L.b1", 500, 1000), 117);   /* 1875 / 16 */
	assert_int_equal(lease_grant("b", "~L.b1", 500, 1800), 0);     /* free 1758 */
	sum = 125 + 117;
	for (int i = 2; i < 200 && (g = lease_grant("b", (snprintf(id, sizeof(id), "~L.b%d", i), id),
						 500, 0)) > 0; i++)
		sum += g;
	assert_int_equal(sum, 1000);
	assert_int_equal(redis_int("HGET fs:promo:%s lease", "b"), 1000);
	/* The leases never hold what buyers need: every unit left is admitted. */
	admit_call("b", 0, 64, 16, 200, 0, false, "", 0, NULL, 0, v, NULL);
	assert_int_equal(count(v, 64, "admitted"), 62);        /* 62 x 16 = 992 of 1000 */
	/* Each marker holds its qty, and its entry the time it was admitted. */
	assert_int_equal(redis_int("HGET fs:req:rid-0 %s", "adm"), 16);
	assert_true(redis_int("ZSCORE fs:adm:all %s", "b rid-0") > 1700000000000LL);
	/* A rate across gateways is counted per purchase: no leases. */
	freeReplyObject(redisCommand(test_rc, "HSET fs:promo:r remaining 100000 held 0 adm 0"));
	freeReplyObject(redisCommand(test_rc, "HSET fs:cfg:r sku_rate_per_s 1000"));
	assert_int_equal(lease_grant("r", "~L.r", 64, 1000), 0);
	/* Nor from a SKU sold out, or unknown (and none is created). */
	freeReplyObject(redisCommand(test_rc, "HSET fs:promo:z remaining 0 held 0 adm 0"));
	assert_int_equal(lease_grant("z", "~L.z", 64, 0), 0);
	assert_int_equal(lease_grant("nope", "~L.n", 64, 0), 0);
	assert_int_equal(redis_int("EXISTS %s", "fs:promo:nope"), 0);
	/* The global cap counts leases too. */
	freeReplyObject(redisCommand(test_rc, "FLUSHALL"));
	setup(NULL);
	freeReplyObject(redisCommand(test_rc, "HSET fs:promo:big remaining 100000 held 0 adm 0"));
	{
		struct lease_op op = { "grant", "big", "~L.c", 64 };

		admit_call("big", 0, 0, 1, 200, 40, false, "", 0, &op, 1, v, &g);
		assert_int_equal(g, 2);                          /* 40 / 16 */
	}
}

/* gateway/admit.c on a loop of its own, against the same Redis. */
struct loop {
	struct event_base *base;
	struct gw_store store;
	struct admission a;
	int verdicts[16];
};

static void on_done(void *arg, void *opaque, const struct admit_result *r)
{
	struct loop *l = arg;

	(void)opaque;
	l->verdicts[r->verdict]++;
}

/* Run the loop until nothing is queued or in flight (10 s at most). */
static void settle(struct loop *l)
{
	for (int i = 0; i < 10000; i++) {
		event_base_loop(l->base, EVLOOP_NONBLOCK);
		if (l->a.batches_in_flight == 0 && l->a.n == 0 && l->a.nops == 0)
			return;
		usleep(1000);
	}
	fail_msg("admission calls never settled");
}

/* n purchases of sku through the lease table: how many got a unit. */
/* A loop with its store connected and an admission leasing 64 units. */
static void loop_open(struct loop *l)
{
	char address[256];

	l->base = event_base_new();
	assert_non_null(l->base);
	assert_int_equal(event_base_priority_init(l->base, 3), 0);
	snprintf(address, sizeof(address), "unix:%s", test_redis_socket());
	assert_int_equal(gw_store_init(&l->store, l->base, address, -1), 0);
	for (int i = 0; i < 10000 && !l->store.connected; i++) {
		event_base_loop(l->base, EVLOOP_NONBLOCK);
		usleep(1000);
	}
	assert_true(l->store.connected);
	assert_int_equal(admit_init(&l->a, l->base, &l->store, 3600, 200, 0, on_done, l), 0);
	l->a.lease_units = 64;
}

static void loop_close(struct loop *l)
{
	admit_free(&l->a);
	gw_store_free(&l->store);
	event_base_free(l->base);
}

static int take(struct loop *l, const char *sku, int n, char id[ADMIT_LEASE_ID_MAX])
{
	int got = 0;

	for (int i = 0; i < n; i++)
		got += admit_lease_take(&l->a, sku, 1, mono_us(), id);
	return got;
}

/*
 * A loop's lease table: the first purchases of a SKU ask for a lease, then
 * take units of it; a mark moves them to its marker; every lease goes back.
 * Two regressions from review: a grant answered after leases were turned
 * off (a reload) left the SKU "asked" for good, and a refused grant was
 * asked for again every few purchases.
 */
static void test_lease_table(void **state)
{
	struct loop l = { 0 };
	char id[ADMIT_LEASE_ID_MAX];
	(void)state;

	freeReplyObject(redisCommand(test_rc, "HSET fs:promo:big remaining 100000 held 0 adm 0"));
	freeReplyObject(redisCommand(test_rc, "HSET fs:promo:big2 remaining 100000 held 0 adm 0"));
	freeReplyObject(redisCommand(test_rc, "HSET fs:promo:big3 remaining 100000 held 0 adm 0"));
	loop_open(&l);

	/* Three purchases the slow way; the fourth asks. */
	assert_int_equal(take(&l, "big", 3, id), 0);
	assert_int_equal(l.a.nops, 0);
	assert_int_equal(take(&l, "big", 1, id), 0);
	assert_int_equal(l.a.nops, 1);
	settle(&l);
	assert_int_equal(redis_int("HGET fs:promo:%s lease", "big"), 64);
	assert_int_equal(take(&l, "big", 1, id), 1);
	assert_int_equal(id[0], '~');
	admit_mark(&l.a, "big", "m-1", 1, id, NULL);
	settle(&l);
	assert_int_equal(l.verdicts[ADMIT_OK], 1);
	assert_int_equal(redis_int("HGET fs:req:m-1 %s", "adm"), 1);
	assert_int_equal(redis_int("HGET fs:promo:%s lease", "big"), 63);
	assert_int_equal(redis_int("HGET fs:promo:%s adm", "big"), 64);

	/* Leases off while a grant is on its way: it goes back; on again, the SKU asks again. */
	assert_int_equal(take(&l, "big2", 4, id), 0);
	assert_int_equal(l.a.nops, 1);
	l.a.lease_units = 0;
	settle(&l);
	assert_int_equal(redis_int("HGET fs:promo:%s lease", "big2"), 0);
	assert_int_equal(redis_int("HGET fs:promo:%s adm", "big2"), 0);
	l.a.lease_units = 64;
	assert_int_equal(take(&l, "big2", 4, id), 0);
	assert_int_equal(l.a.nops, 1);
	settle(&l);
	assert_int_equal(take(&l, "big2", 1, id), 1);

	/* A grant refused: not asked for again at once. */
	l.a.lease_min_free = 1000000000;
	assert_int_equal(take(&l, "big3", 4, id), 0);
	assert_int_equal(l.a.nops, 1);
	settle(&l);
	assert_int_equal(take(&l, "big3", 8, id), 0);
	assert_int_equal(l.a.nops, 0);
	usleep(150 * 1000);
	assert_int_equal(take(&l, "big3", 4, id), 0);
	assert_int_equal(l.a.nops, 1);                 /* and again after a while */
	settle(&l);

	/* Every lease back: only the marked purchase is counted. */
	admit_leases_return(&l.a);
	settle(&l);
	assert_int_equal(redis_int("HGET fs:promo:%s adm", "big"), 1);
	assert_int_equal(redis_int("HGET fs:promo:%s lease", "big"), 0);
	assert_int_equal(redis_int("HGET fs:promo:%s adm", "big2"), 0);
	assert_int_equal(redis_int("GET %s", "fs:adm:total"), 1);
	assert_int_equal(redis_int("ZCARD %s", "fs:adm:all"), 1);
	loop_close(&l);
}

static long long evalsha_calls(void)
{
	redisReply *r = redisCommand(test_rc, "INFO commandstats");
	const char *p;
	long long n = 0;

	assert_non_null(r);
	assert_int_equal(r->type, REDIS_REPLY_STRING);
	p = strstr(r->str, "cmdstat_evalsha:calls=");
	if (p != NULL)
		n = atoll(p + strlen("cmdstat_evalsha:calls="));
	freeReplyObject(r);
	return n;
}

/*
 * Marks queued while a call is in flight wait for its reply and go in one
 * call, however many loop turns they came in (a turn's marks used to make
 * a call of their own, a few marks each); a purchase waiting for its
 * admission is not held back, and takes the marks with it. CLIENT PAUSE
 * keeps the first call in Redis meanwhile.
 */
static void test_marks_wait_for_the_call_in_flight(void **state)
{
	struct loop l = { 0 };
	char id[ADMIT_LEASE_ID_MAX], rid[16];
	(void)state;

	freeReplyObject(redisCommand(test_rc, "HSET fs:promo:big remaining 100000 held 0 adm 0"));
	loop_open(&l);
	assert_int_equal(take(&l, "big", 4, id), 0);
	settle(&l);
	assert_int_equal(take(&l, "big", 1, id), 1);
	freeReplyObject(redisCommand(test_rc, "CONFIG RESETSTAT"));
	freeReplyObject(redisCommand(test_rc, "CLIENT PAUSE 300 ALL"));

	admit_mark(&l.a, "big", "w-0", 1, id, NULL);
	event_base_loop(l.base, EVLOOP_NONBLOCK);
	assert_int_equal(l.a.batches_in_flight, 1);
	for (int i = 1; i <= 3; i++) {
		snprintf(rid, sizeof(rid), "w-%d", i);
		assert_int_equal(take(&l, "big", 1, id), 1);
		admit_mark(&l.a, "big", rid, 1, id, NULL);
		event_base_loop(l.base, EVLOOP_NONBLOCK);
	}
	assert_int_equal(l.a.n, 3);
	assert_int_equal(l.a.batches_in_flight, 1);
	admit_submit(&l.a, "big", "w-slow", 1, NULL);
	event_base_loop(l.base, EVLOOP_NONBLOCK);
	assert_int_equal(l.a.n, 0);
	assert_int_equal(l.a.batches_in_flight, 2);
	settle(&l);
	assert_int_equal(l.verdicts[ADMIT_OK], 5);
	assert_int_equal(evalsha_calls(), 2);
	assert_int_equal(redis_int("HGET fs:req:w-3 %s", "adm"), 1);
	assert_int_equal(redis_int("HGET fs:req:w-slow %s", "adm"), 1);
	loop_close(&l);
}

/* Run the loop for ms (the lease sweep, every 100 ms, sends marks again). */
static void run_for(struct loop *l, int ms)
{
	int64_t until = mono_us() + ms * 1000;

	while (mono_us() < until) {
		event_base_loop(l->base, EVLOOP_NONBLOCK);
		usleep(1000);
	}
	settle(l);
}

/*
 * A mark whose call failed, for a purchase Kafka took, is sent again once
 * Redis can take it, so that every gateway finds its marker (before, only
 * the deductor's decision made the purchase known elsewhere); tried while
 * Redis is not ready, given up after again_ms. The tries answer nobody:
 * each purchase had its answer from the first.
 */
static void test_marks_sent_again(void **state)
{
	struct loop l = { 0 };
	char id[ADMIT_LEASE_ID_MAX];
	(void)state;

	freeReplyObject(redisCommand(test_rc, "HSET fs:promo:big remaining 100000 held 0 adm 0"));
	loop_open(&l);
	l.a.lease_ms = 10000;       /* the lease outlives the test */
	assert_int_equal(take(&l, "big", 4, id), 0);
	settle(&l);
	assert_int_equal(take(&l, "big", 2, id), 2);
	freeReplyObject(redisCommand(test_rc, "DEL fs:ready"));
	admit_mark(&l.a, "big", "again-1", 1, id, NULL);
	admit_mark(&l.a, "big", "again-2", 1, id, NULL);
	settle(&l);
	assert_int_equal(l.verdicts[ADMIT_NOT_READY], 2);
	admit_mark_again(&l.a, "big", "again-1", 1, id);
	admit_mark_again(&l.a, "big", "again-2", 1, id);
	freeReplyObject(redisCommand(test_rc, "CONFIG RESETSTAT"));
	run_for(&l, 1000);
	/* Tried (not ready yet) and kept; refused again, tried less often:
	 * at 100, 300 and 700 ms, not every 100 ms. */
	assert_in_range(evalsha_calls(), 1, 4);
	assert_int_equal(l.a.nagain, 2);
	assert_int_equal(redis_int("EXISTS %s", "fs:req:again-1"), 0);
	for (size_t i = 0; i < l.a.nagain; i++)
		if (strcmp(l.a.again[i].rid, "again-2") == 0)
			l.a.again[i].again_until_us = mono_us();    /* its time is up */
	freeReplyObject(redisCommand(test_rc, "SET fs:ready 1"));
	run_for(&l, 1000);
	assert_int_equal(l.a.nagain, 0);
	assert_int_equal(redis_int("HGET fs:req:again-1 %s", "adm"), 1);
	assert_int_equal(redis_int("EXISTS %s", "fs:req:again-2"), 0);
	/* Its unit moved from the lease of 64 to its marker. */
	assert_int_equal(redis_int("HGET fs:promo:%s lease", "big"), 63);
	assert_int_equal(redis_int("HGET fs:promo:%s adm", "big"), 64);
	assert_int_equal(l.verdicts[ADMIT_OK] + l.verdicts[ADMIT_UNAVAILABLE], 0);
	assert_int_equal(l.verdicts[ADMIT_NOT_READY], 2);
	loop_close(&l);
}

/*
 * A call still out when the admission is freed (a drain that timed out) is
 * answered when the store is freed after it: nobody is told, nothing is
 * kept. It called the freed admission's done (NULL) before.
 */
static void test_reply_after_free(void **state)
{
	struct loop l = { 0 };
	(void)state;

	loop_open(&l);
	freeReplyObject(redisCommand(test_rc, "CLIENT PAUSE 300 ALL"));
	admit_submit(&l.a, "s", "late-1", 1, NULL);
	event_base_loop(l.base, EVLOOP_NONBLOCK);
	assert_int_equal(l.a.batches_in_flight, 1);
	admit_free(&l.a);
	gw_store_free(&l.store);    /* answers the call: a NULL reply */
	event_base_free(l.base);
	assert_int_equal(l.verdicts[ADMIT_UNAVAILABLE] + l.verdicts[ADMIT_OK], 0);
	usleep(350 * 1000);         /* the pause ends before the next test */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup(test_budget, setup),
		cmocka_unit_test_setup(test_sold_out, setup),
		cmocka_unit_test_setup(test_promotion_limits, setup),
		cmocka_unit_test_setup(test_global_cap_unknown_and_not_ready, setup),
		cmocka_unit_test_setup(test_admitted_ids_are_told, setup),
		cmocka_unit_test_setup(test_lease_grant_mark_return, setup),
		cmocka_unit_test_setup(test_lease_bounds, setup),
		cmocka_unit_test_setup(test_lease_table, setup),
		cmocka_unit_test_setup(test_marks_wait_for_the_call_in_flight, setup),
		cmocka_unit_test_setup(test_marks_sent_again, setup),
		cmocka_unit_test_setup(test_reply_after_free, setup),
	};

	return cmocka_run_group_tests(tests, test_redis_group_setup, test_redis_group_teardown);
}
