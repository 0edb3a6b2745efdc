/*
 * `reconciler audit` (see audit.h). Redis and PostgreSQL are read one after
 * the other, not in one snapshot: on a live pipeline they differ by what is
 * in flight, which is why --wait-drain repeats until they agree.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "pg.h"
#include "redisx.h"
#include "util.h"
#include "reconciler.h"

#define REDIS_TIMEOUT_MS 10000

enum audit_reason {
	A_STATE_MISSING,
	A_PROMO_MISSING,
	A_NOT_IN_PG,
	A_NEGATIVE,
	A_SUM,
	A_DRIFT,
	A_HELD,
	A_SOLD,
	A_OVER_LIMIT,
	A_USERS,
	A_HOLDS,
	A_STUCK,
	A_FENCED,
	A_COUNT
};

static const char *const audit_reason_names[A_COUNT] = {
	"state_missing", "promo_missing", "not_in_pg", "negative_remaining", "sum_mismatch",
	"drift", "held_mismatch", "sold_mismatch", "over_limit", "users_mismatch",
	"holds_mismatch", "stuck", "fenced",
};

struct audit_sku {
	char sku[FS_ID_MAX + 1];
	long long stock, limit;       /* PostgreSQL; stock -1 when not in PG */
	bool in_redis;
	long long initial, remaining, held, sold;   /* Redis */
	long long users_sum, users_over, holds;     /* Redis fs:users, fs:holds */
	long long pg_held, pg_sold, pg_held_orders; /* PostgreSQL orders */
	long long pg_over, stuck;
	unsigned reasons;
};

struct audit {
	const struct rc_config *cfg;
	redisContext *rc;
	PGconn *pg;
	struct audit_sku *skus;
	size_t nskus, capskus;
	bool ready;
	bool fenced[FS_PARTITIONS];   /* fs:fence: Redis older than the ledger there */
	int nfenced;
	long long now_ms;
	char err[512];
};

static struct audit_sku *audit_find(struct audit *a, const char *sku)
{
	for (size_t i = 0; i < a->nskus; i++)
		if (strcmp(a->skus[i].sku, sku) == 0)
			return &a->skus[i];
	return NULL;
}

static struct audit_sku *audit_add(struct audit *a, const char *sku)
{
	struct audit_sku *s;

	if (a->nskus == a->capskus) {
		size_t cap = a->capskus ? a->capskus * 2 : 16;
		struct audit_sku *ns = realloc(a->skus, cap * sizeof(*ns));

		if (ns == NULL)
			return NULL;
		a->skus = ns;
		a->capskus = cap;
	}
	s = &a->skus[a->nskus++];
	memset(s, 0, sizeof(*s));
	snprintf(s->sku, sizeof(s->sku), "%s", sku);
	s->stock = -1;
	return s;
}

static PGresult *audit_pg(struct audit *a, const char *sql, int nparams, const char *const *params)
{
	PGresult *res = PQexecParams(a->pg, sql, nparams, NULL, params, NULL, NULL, 0);

	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		snprintf(a->err, sizeof(a->err), "postgres: %s", PQerrorMessage(a->pg));
		PQclear(res);
		return NULL;
	}
	return res;
}

static long long ll_at(const PGresult *res, int row, int col)
{
	return strtoll(PQgetvalue(res, row, col), NULL, 10);
}

static int audit_read_pg(struct audit *a)
{
	char cutoff[32];
	const char *params[] = { cutoff };
	PGresult *res;

	res = audit_pg(a, "SELECT sku, stock, per_user_limit FROM promotions ORDER BY sku", 0, NULL);
	if (res == NULL)
		return -1;
	for (int i = 0; i < PQntuples(res); i++) {
		struct audit_sku *s = audit_add(a, PQgetvalue(res, i, 0));

		if (s == NULL) {
			PQclear(res);
			snprintf(a->err, sizeof(a->err), "out of memory");
			return -1;
		}
		s->stock = ll_at(res, i, 1);
		s->limit = ll_at(res, i, 2);
	}
	PQclear(res);

	res = audit_pg(a, "SELECT sku, state, count(*), coalesce(sum(qty), 0) FROM orders "
		       "WHERE state IN ('held', 'paid') GROUP BY sku, state", 0, NULL);
	if (res == NULL)
		return -1;
	for (int i = 0; i < PQntuples(res); i++) {
		struct audit_sku *s = audit_find(a, PQgetvalue(res, i, 0));

		if (s == NULL)
			continue;       /* orders REFERENCES promotions: cannot happen */
		if (strcmp(PQgetvalue(res, i, 1), "held") == 0) {
			s->pg_held = ll_at(res, i, 3);
			s->pg_held_orders = ll_at(res, i, 2);
		} else {
			s->pg_sold = ll_at(res, i, 3);
		}
	}
	PQclear(res);

	res = audit_pg(a, "SELECT o.sku, count(*) FROM (SELECT sku, user_id, sum(qty) AS q "
		       "FROM orders WHERE state IN ('held', 'paid') GROUP BY sku, user_id) o "
		       "JOIN promotions p ON p.sku = o.sku WHERE o.q > p.per_user_limit "
		       "GROUP BY o.sku", 0, NULL);
	if (res == NULL)
		return -1;
	for (int i = 0; i < PQntuples(res); i++) {
		struct audit_sku *s = audit_find(a, PQgetvalue(res, i, 0));

		if (s != NULL)
			s->pg_over = ll_at(res, i, 1);
	}
	PQclear(res);

	/* A hold this far past its deadline should have been released by now. */
	snprintf(cutoff, sizeof(cutoff), "%lld", a->now_ms - a->cfg->audit_grace_ms);
	res = audit_pg(a, "SELECT sku, count(*) FROM orders WHERE state = 'held' AND "
		       "deadline < to_timestamp($1::bigint / 1000.0) GROUP BY sku", 1, params);
	if (res == NULL)
		return -1;
	for (int i = 0; i < PQntuples(res); i++) {
		struct audit_sku *s = audit_find(a, PQgetvalue(res, i, 0));

		if (s != NULL)
			s->stuck = ll_at(res, i, 1);
	}
	PQclear(res);
	return 0;
}

/* A reply we must have; NULL with a->err filled on failure. */
#define audit_redis(a, r, what) redisx_must((a)->rc, (r), (what), (a)->err, sizeof((a)->err))

static long long reply_ll(const redisReply *e, bool *present)
{
	if (e->type == REDIS_REPLY_STRING)
		return strtoll(e->str, NULL, 10);
	if (e->type == REDIS_REPLY_INTEGER)
		return e->integer;
	if (present != NULL)
		*present = false;
	return 0;
}

/* Users of one SKU: the sum of their units and how many exceed the limit. */
static int audit_scan_users(struct audit *a, struct audit_sku *s)
{
	char cursor[32] = "0";

	do {
		redisReply *r = audit_redis(a, redisCommand(a->rc, "HSCAN fs:users:%s %s COUNT 1000",
							    s->sku, cursor), "HSCAN");
		const redisReply *kv;

		if (r == NULL)
			return -1;
		if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
			freeReplyObject(r);
			snprintf(a->err, sizeof(a->err), "redis HSCAN: unexpected reply");
			return -1;
		}
		snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
		kv = r->element[1];
		for (size_t i = 1; i < kv->elements; i += 2) {
			long long q = reply_ll(kv->element[i], NULL);

			s->users_sum += q;
			if (s->limit > 0 && q > s->limit)
				s->users_over++;
		}
		freeReplyObject(r);
	} while (strcmp(cursor, "0") != 0);
	return 0;
}

static int audit_read_redis(struct audit *a)
{
	redisReply *r;

	r = audit_redis(a, redisCommand(a->rc, "SMEMBERS fs:promos"), "SMEMBERS");
	if (r == NULL)
		return -1;
	for (size_t i = 0; i < r->elements; i++) {
		if (r->element[i]->type == REDIS_REPLY_STRING &&
		    audit_find(a, r->element[i]->str) == NULL &&
		    audit_add(a, r->element[i]->str) == NULL) {
			freeReplyObject(r);
			snprintf(a->err, sizeof(a->err), "out of memory");
			return -1;
		}
	}
	freeReplyObject(r);

	for (size_t i = 0; i < a->nskus; i++) {
		struct audit_sku *s = &a->skus[i];
		bool present = true;

		r = audit_redis(a, redisCommand(a->rc, "HMGET fs:promo:%s initial remaining held sold",
						s->sku), "HMGET");
		if (r == NULL)
			return -1;
		if (r->type == REDIS_REPLY_ARRAY && r->elements == 4) {
			s->initial = reply_ll(r->element[0], &present);
			s->remaining = reply_ll(r->element[1], &present);
			s->held = reply_ll(r->element[2], &present);
			s->sold = reply_ll(r->element[3], &present);
		} else {
			present = false;
		}
		freeReplyObject(r);
		s->in_redis = present;
		r = audit_redis(a, redisCommand(a->rc, "ZCARD fs:holds:%s", s->sku), "ZCARD");
		if (r == NULL)
			return -1;
		s->holds = r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
		freeReplyObject(r);
		if (audit_scan_users(a, s) < 0)
			return -1;
	}
	return 0;
}

static int audit_read(struct audit *a)
{
	redisReply *r;

	a->nskus = 0;
	r = audit_redis(a, redisCommand(a->rc, "EXISTS fs:ready"), "EXISTS");
	if (r == NULL)
		return -1;
	a->ready = r->type == REDIS_REPLY_INTEGER && r->integer > 0;
	freeReplyObject(r);
	r = audit_redis(a, redisCommand(a->rc, "HKEYS fs:fence"), "HKEYS");
	if (r == NULL)
		return -1;
	memset(a->fenced, 0, sizeof(a->fenced));
	a->nfenced = 0;
	for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
		int p = atoi(r->element[i]->str);

		if (p >= 0 && p < FS_PARTITIONS && !a->fenced[p]) {
			a->fenced[p] = true;
			a->nfenced++;
		}
	}
	freeReplyObject(r);
	a->now_ms = redisx_time_ms(a->rc, a->err, sizeof(a->err));
	if (a->now_ms < 0)
		return -1;
	if (audit_read_pg(a) < 0 || audit_read_redis(a) < 0)
		return -1;
	return 0;
}

static long long drift_of(const struct audit_sku *s)
{
	return (s->held + s->sold) - (s->pg_held + s->pg_sold);
}

/* Apply every check; returns the number of violations. */
static long long audit_judge(struct audit *a)
{
	long long n = a->ready ? 0 : 1;

	for (size_t i = 0; i < a->nskus; i++) {
		struct audit_sku *s = &a->skus[i];
		unsigned m = 0;

		if (!a->ready)
			m |= 1u << A_STATE_MISSING;
		if (s->stock < 0)
			m |= 1u << A_NOT_IN_PG;
		if (a->ready && !s->in_redis && s->stock >= 0)
			m |= 1u << A_PROMO_MISSING;
		if (s->in_redis) {
			if (s->remaining < 0)
				m |= 1u << A_NEGATIVE;
			if (s->stock >= 0 && (s->remaining + s->held + s->sold != s->stock ||
					      s->initial != s->stock))
				m |= 1u << A_SUM;
			if (s->users_sum != s->held + s->sold)
				m |= 1u << A_USERS;
		}
		if (a->ready) {
			if (drift_of(s) != 0)
				m |= 1u << A_DRIFT;
			if (s->held != s->pg_held)
				m |= 1u << A_HELD;
			if (s->sold != s->pg_sold)
				m |= 1u << A_SOLD;
			if (s->holds != s->pg_held_orders)
				m |= 1u << A_HOLDS;
		}
		if (s->pg_over + s->users_over > 0)
			m |= 1u << A_OVER_LIMIT;
		if (s->stuck > 0)
			m |= 1u << A_STUCK;
		if (a->fenced[kafka_partition_of(s->sku, strlen(s->sku))])
			m |= 1u << A_FENCED;
		s->reasons = m;
		for (int r = 0; r < A_COUNT; r++)
			if (r != A_STATE_MISSING && (m & (1u << r)))
				n++;
	}
	return n;
}

/* Drained: Redis and PostgreSQL agree on what is held and sold everywhere. */
static bool audit_drained(const struct audit *a)
{
	if (!a->ready)
		return true;    /* nothing to wait for: only a rebuild helps */
	if (a->nfenced > 0)
		return false;   /* `reconciler run` repairs them */
	for (size_t i = 0; i < a->nskus; i++) {
		const struct audit_sku *s = &a->skus[i];

		if (drift_of(s) != 0 || s->held != s->pg_held || s->sold != s->pg_sold ||
		    s->holds != s->pg_held_orders)
			return false;
	}
	return true;
}

static void audit_print(const struct audit *a, long long violations)
{
	for (size_t i = 0; i < a->nskus; i++) {
		const struct audit_sku *s = &a->skus[i];
		char verdict[512] = "ok";

		if (s->reasons) {
			size_t off = (size_t)snprintf(verdict, sizeof(verdict), "FAIL");

			for (int r = 0; r < A_COUNT && off < sizeof(verdict); r++)
				if (s->reasons & (1u << r))
					off += (size_t)snprintf(verdict + off, sizeof(verdict) - off,
								"%c%s", off == 4 ? ':' : ',',
								audit_reason_names[r]);
		}
		printf("sku=%s initial=%lld sold=%lld held=%lld remaining=%lld pg_sold=%lld "
		       "pg_held=%lld drift=%lld over_limit=%lld stuck=%lld verdict=%s\n",
		       s->sku, s->in_redis ? s->initial : s->stock, s->sold, s->held, s->remaining,
		       s->pg_sold, s->pg_held, drift_of(s), s->pg_over + s->users_over, s->stuck,
		       verdict);
	}
	if (!a->ready)
		printf("state_missing: fs:ready is absent (Redis state lost; run "
		       "flashsale-reconciler rebuild)\n");
	for (int p = 0; p < FS_PARTITIONS; p++)
		if (a->fenced[p])
			printf("fenced: partition %d (Redis older than the ledger; `flashsale-reconciler "
			       "run` repairs it, or `flashsale-reconciler repair`)\n", p);
	printf("audit skus=%zu violations=%lld verdict=%s\n", a->nskus, violations,
	       violations ? "FAIL" : "ok");
	fflush(stdout);
}

int audit_run(const struct rc_config *cfg, int wait_drain_s, long long *violations)
{
	struct audit a = { .cfg = cfg };
	int64_t deadline = mono_us() + (int64_t)wait_drain_s * 1000000;
	int rc = -1;

	*violations = 0;
	a.rc = redisx_connect(cfg->redis_address, REDIS_TIMEOUT_MS, a.err, sizeof(a.err));
	if (a.rc == NULL)
		goto out;
	/* Read-only: the audit never applies the schema (DDL takes locks). */
	a.pg = pg_connect(cfg->pg_conninfo, a.err, sizeof(a.err));
	if (a.pg == NULL)
		goto out;
	for (;;) {
		struct timespec ts = { 0, 250 * 1000000 };

		if (audit_read(&a) < 0)
			goto out;
		if (audit_drained(&a) || mono_us() >= deadline)
			break;
		nanosleep(&ts, NULL);
	}
	if (wait_drain_s > 0 && !audit_drained(&a))
		log_warn("not_drained", "wait_drain_s=%d msg=\"stores still differ\"", wait_drain_s);
	*violations = audit_judge(&a);
	audit_print(&a, *violations);
	rc = 0;
out:
	if (rc < 0) {
		char q[600];

		log_error("audit_failed", "msg=\"%s\"", log_quote(q, sizeof(q), a.err));
	}
	free(a.skus);
	if (a.pg != NULL)
		PQfinish(a.pg);
	if (a.rc != NULL)
		redisFree(a.rc);
	return rc;
}
