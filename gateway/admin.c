#include "gateway.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <event2/http.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "log.h"

struct admin_op {
	struct gw_call call;
	struct promo_req pr;
	bool created;               /* PostgreSQL inserted the row (else identical existed) */
	char p_stock[24], p_limit[24], p_start[24], p_end[24], p_hold[24];
};

static const char admin_insert_sql[] =
	"INSERT INTO promotions (sku, stock, per_user_limit, starts_at, ends_at, hold_seconds) "
	"VALUES ($1, $2, $3, to_timestamp($4 / 1000.0), to_timestamp($5 / 1000.0), $6) "
	"ON CONFLICT (sku) DO NOTHING RETURNING sku";

static const char admin_select_sql[] =
	"SELECT stock, per_user_limit, "
	"round(extract(epoch FROM starts_at) * 1000)::bigint, "
	"round(extract(epoch FROM ends_at) * 1000)::bigint, hold_seconds "
	"FROM promotions WHERE sku = $1";

static void admin_fail(struct admin_op *op, int code, const char *error, const char *reason)
{
	call_error(&op->call, code, error, reason);
	free(op);
}

static void admin_pg_error(struct admin_op *op, const char *err)
{
	char q[256];

	log_warn("admin_pg_error", "sku=%s msg=\"%s\"", op->pr.sku, log_quote(q, sizeof(q), err));
	admin_fail(op, 503, "store_unavailable",
		   "PostgreSQL is unavailable or refused the promotion; retry later");
}

static void admin_lua_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct admin_op *op = privdata;
	struct gateway *gw = op->call.gw;
	redisReply *rep = reply;
	struct promo p;
	cJSON *o;
	bool ok = true;

	if (rep == NULL) {
		admin_fail(op, 503, "store_unavailable", "Redis is unavailable; retry later");
		return;
	}
	if (rep->type == REDIS_REPLY_ERROR) {
		if (strstr(rep->str, "not_ready") != NULL) {
			admin_fail(op, 503, "state_not_ready",
				   "Redis state is not initialised: run `flashsale-reconciler rebuild`");
			return;
		}
		log_error("admin_lua_error", "sku=%s err=\"%s\"", op->pr.sku, rep->str);
		admin_fail(op, 503, "store_unavailable", "Redis refused the promotion");
		return;
	}
	if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 9) {
		admin_fail(op, 503, "store_unavailable", "unexpected Redis reply");
		return;
	}
	memset(&p, 0, sizeof(p));
	strcpy(p.sku, op->pr.sku);
	if (!promo_from_replies(&p, rep->element + 1))
		ok = false;
	/* 201 when this call made it exist anywhere (a retry after a Redis failure too). */
	if (gw_store_reply_int(rep->element[0], &ok) == 1)
		op->created = true;
	if (ok) {
		p.added_us = mono_us();
		if (promo_put(&gw->promo, &p) < 0)
			log_warn("promo_cache_oom", "sku=%s", p.sku);
		promo_refresh_others(gw);
	}
	log_info("promotion_loaded", "sku=%s created=%d", op->pr.sku, op->created);
	o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "sku", op->pr.sku);
	cJSON_AddNumberToObject(o, "stock", (double)op->pr.stock);
	cJSON_AddNumberToObject(o, "per_user_limit", (double)op->pr.per_user_limit);
	cJSON_AddNumberToObject(o, "start_ms", (double)op->pr.start_ms);
	cJSON_AddNumberToObject(o, "end_ms", (double)op->pr.end_ms);
	cJSON_AddNumberToObject(o, "hold_seconds", (double)op->pr.hold_seconds);
	cJSON_AddBoolToObject(o, "created", op->created);
	call_reply(&op->call, op->created ? 201 : 200, o);
	free(op);
}

/* PostgreSQL holds the promotion: make Redis hold it too. */
static void admin_load_redis(struct admin_op *op)
{
	struct gateway *gw = op->call.gw;
	char key[FS_ID_MAX + 16], hold_ms[24];
	const char *argv[] = { "EVAL", gw_promo_load_lua, "3", "fs:ready", key, "fs:promos",
			       op->pr.sku, op->p_stock, op->p_limit, op->p_start, op->p_end,
			       hold_ms };

	snprintf(key, sizeof(key), "fs:promo:%s", op->pr.sku);
	snprintf(hold_ms, sizeof(hold_ms), "%lld", op->pr.hold_seconds * 1000);
	if (gw_store_command_argv(&gw->store, admin_lua_cb, op, 12, argv, NULL) < 0)
		admin_fail(op, 503, "store_unavailable", "Redis is unavailable; retry later");
}

static void admin_select_cb(void *arg, const PGresult *res, const char *err)
{
	struct admin_op *op = arg;
	const struct promo_req *pr = &op->pr;

	if (res == NULL) {
		admin_pg_error(op, err);
		return;
	}
	if (PQntuples(res) != 1) {
		/* Inserted-then-deleted by someone: not something to guess about. */
		admin_fail(op, 409, "promotion_exists", "the promotion changed meanwhile; retry");
		return;
	}
	if (atoll(PQgetvalue(res, 0, 0)) != pr->stock ||
	    atoll(PQgetvalue(res, 0, 1)) != pr->per_user_limit ||
	    atoll(PQgetvalue(res, 0, 2)) != pr->start_ms ||
	    atoll(PQgetvalue(res, 0, 3)) != pr->end_ms ||
	    atoll(PQgetvalue(res, 0, 4)) != pr->hold_seconds) {
		admin_fail(op, 409, "promotion_exists",
			   "a different promotion exists for this sku (a retry must repeat start_ms)");
		return;
	}
	op->created = false;
	admin_load_redis(op);
}

static void admin_insert_cb(void *arg, const PGresult *res, const char *err)
{
	struct admin_op *op = arg;
	struct gateway *gw = op->call.gw;
	const char *params[] = { op->pr.sku };

	if (res == NULL) {
		admin_pg_error(op, err);
		return;
	}
	if (PQntuples(res) == 1) {
		op->created = true;
		admin_load_redis(op);
		return;
	}
	/* ON CONFLICT: idempotent only if the existing row is the same. */
	if (adminpg_submit(&gw->pg, admin_select_sql, 1, params, admin_select_cb, op) < 0)
		admin_fail(op, 503, "store_unavailable", "PostgreSQL is unavailable; retry later");
}

/* The authorized request: parse it, then PostgreSQL first (admin_insert_cb). */
static void admin_create(struct gateway *gw, struct evhttp_request *req,
			 const char *body, size_t len)
{
	struct admin_op *op;
	const char *code = NULL;
	char err[256];
	const char *params[6];

	op = calloc(1, sizeof(*op));
	if (op == NULL) {
		evhttp_send_error(req, 500, NULL);
		return;
	}
	call_init(&op->call, gw, req, ROUTE_PROMO_ADMIN);
	/* start defaults to now on the Redis clock, the clock the sale runs on */
	if (request_parse_promo(body, len, (size_t)gw->cfg.max_body, gateway_now_ms(gw),
				&op->pr, &code, err, sizeof(err)) < 0) {
		admin_fail(op, 400, code, err);
		return;
	}
	snprintf(op->p_stock, sizeof(op->p_stock), "%lld", op->pr.stock);
	snprintf(op->p_limit, sizeof(op->p_limit), "%lld", op->pr.per_user_limit);
	snprintf(op->p_start, sizeof(op->p_start), "%lld", op->pr.start_ms);
	snprintf(op->p_end, sizeof(op->p_end), "%lld", op->pr.end_ms);
	params[0] = op->pr.sku;
	params[1] = op->p_stock;
	params[2] = op->p_limit;
	params[3] = op->p_start;
	params[4] = op->p_end;
	params[5] = op->p_hold;
	snprintf(op->p_hold, sizeof(op->p_hold), "%lld", op->pr.hold_seconds);
	if (!gw_store_ready(&gw->store)) {
		admin_fail(op, 503, "store_unavailable", "Redis is unavailable; retry later");
		return;
	}
	if (adminpg_submit(&gw->pg, admin_insert_sql, 6, params, admin_insert_cb, op) < 0)
		admin_fail(op, 503, "store_unavailable",
			   "PostgreSQL is unavailable; retry later");
}

/* ---- POST /admin/promotions/{sku}/limits ---- */

struct limits_op {
	struct gw_call call;
	char sku[FS_ID_MAX + 1];
	struct limits_req lr;
	char p[4][24];
	long long v[4];             /* the limits PostgreSQL now holds */
};

static const char limits_update_sql[] =
	"UPDATE promotions SET k_pct = coalesce($2::int, k_pct), "
	"ip_rate_per_s = coalesce($3::int, ip_rate_per_s), "
	"user_rate_per_s = coalesce($4::int, user_rate_per_s), "
	"sku_rate_per_s = coalesce($5::int, sku_rate_per_s) "
	"WHERE sku = $1 RETURNING k_pct, ip_rate_per_s, user_rate_per_s, sku_rate_per_s";

static void limits_fail(struct limits_op *op, int code, const char *error, const char *reason)
{
	call_error(&op->call, code, error, reason);
	free(op);
}

static void limits_redis_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	static const char *const names[4] = LIMITS_FIELDS;
	struct limits_op *op = privdata;
	struct gateway *gw = op->call.gw;
	redisReply *rep = reply;
	struct promo *p;
	cJSON *o;

	(void)ac;
	if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
		/* PostgreSQL has them: the next call, or a rebuild, puts them in Redis. */
		limits_fail(op, 503, "store_unavailable", "Redis is unavailable; retry later");
		return;
	}
	promo_refresh_others(gw);
	p = (struct promo *)promo_find(&gw->promo, op->sku);
	if (p != NULL) {
		p->k_pct = op->v[0];
		p->ip_rate_per_s = op->v[1];
		p->user_rate_per_s = op->v[2];
		p->sku_rate_per_s = op->v[3];
	}
	log_info("limits_set", "sku=%s k_pct=%lld ip_rate_per_s=%lld user_rate_per_s=%lld "
		 "sku_rate_per_s=%lld", op->sku, op->v[0], op->v[1], op->v[2], op->v[3]);
	o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "sku", op->sku);
	for (int i = 0; i < 4; i++)
		cJSON_AddNumberToObject(o, names[i], (double)op->v[i]);
	call_reply(&op->call, 200, o);
	free(op);
}

static void limits_pg_cb(void *arg, const PGresult *res, const char *err)
{
	struct limits_op *op = arg;
	struct gateway *gw = op->call.gw;
	char key[FS_ID_MAX + 16], vals[4][24];
	const char *argv[10] = { "HSET", key, "k_pct", vals[0], "ip_rate_per_s", vals[1],
				 "user_rate_per_s", vals[2], "sku_rate_per_s", vals[3] };

	if (res == NULL) {
		char q[256];

		log_warn("admin_pg_error", "sku=%s msg=\"%s\"", op->sku, log_quote(q, sizeof(q), err));
		limits_fail(op, 503, "store_unavailable", "PostgreSQL is unavailable; retry later");
		return;
	}
	if (PQntuples(res) != 1) {
		limits_fail(op, 404, "unknown_sku", "no promotion for this sku");
		return;
	}
	for (int i = 0; i < 4; i++) {
		op->v[i] = atoll(PQgetvalue(res, 0, i));
		snprintf(vals[i], sizeof(vals[i]), "%lld", op->v[i]);
	}
	snprintf(key, sizeof(key), "fs:cfg:%s", op->sku);
	if (gw_store_command_argv(&gw->store, limits_redis_cb, op, 10, argv, NULL) < 0)
		limits_fail(op, 503, "store_unavailable", "Redis is unavailable; retry later");
}

static void admin_set_limits(struct gateway *gw, struct evhttp_request *req, const char *sku,
			     const char *body, size_t len)
{
	struct limits_op *op = calloc(1, sizeof(*op));
	long long *v[4];
	const char *params[5], *code = NULL;
	char err[256];

	if (op == NULL) {
		evhttp_send_error(req, 500, NULL);
		return;
	}
	call_init(&op->call, gw, req, ROUTE_PROMO_ADMIN);
	if (!valid_sku(sku)) {
		limits_fail(op, 404, "unknown_sku", "no promotion for this sku");
		return;
	}
	snprintf(op->sku, sizeof(op->sku), "%s", sku);
	/* A bad value changes nothing: 400 before any store is touched. */
	if (request_parse_limits(body, len, (size_t)gw->cfg.max_body, &op->lr, &code, err,
				 sizeof(err)) < 0) {
		limits_fail(op, 400, code, err);
		return;
	}
	v[0] = &op->lr.k_pct;
	v[1] = &op->lr.ip_rate_per_s;
	v[2] = &op->lr.user_rate_per_s;
	v[3] = &op->lr.sku_rate_per_s;
	params[0] = op->sku;
	for (int i = 0; i < 4; i++) {
		snprintf(op->p[i], sizeof(op->p[i]), "%lld", *v[i]);
		params[i + 1] = op->lr.given[i] ? op->p[i] : NULL;
	}
	if (!gw_store_ready(&gw->store)) {
		limits_fail(op, 503, "store_unavailable", "Redis is unavailable; retry later");
		return;
	}
	if (adminpg_submit(&gw->pg, limits_update_sql, 5, params, limits_pg_cb, op) < 0)
		limits_fail(op, 503, "store_unavailable", "PostgreSQL is unavailable; retry later");
}

/*
 * The token must not leak through timing, neither its bytes nor its
 * length: both sides are hashed to 32 bytes and compared in constant time,
 * over the whole digest whatever the caller sent.
 */
static bool admin_token_equal(const char *given, const char *want)
{
	uint8_t a[32], b[32];
	unsigned int la = sizeof(a), lb = sizeof(b);

	if (EVP_Digest(given, strlen(given), a, &la, EVP_sha256(), NULL) != 1 ||
	    EVP_Digest(want, strlen(want), b, &lb, EVP_sha256(), NULL) != 1)
		return false;
	return CRYPTO_memcmp(a, b, sizeof(a)) == 0 && want[0] != '\0';
}

void admin_handle(struct gateway *gw, struct evhttp_request *req, const char *sku)
{
	const char *auth, *body;
	size_t len;

	if (gw->cfg.admin_token == NULL || gw->cfg.admin_token[0] == '\0') {
		call_error_now(req, ROUTE_PROMO_ADMIN, 403, "admin_disabled",
			       "the admin API is disabled (gateway.admin_token is empty)", false);
		return;
	}
	auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	if (auth == NULL || strncmp(auth, "Bearer ", 7) != 0 ||
	    !admin_token_equal(auth + 7, gw->cfg.admin_token)) {
		call_error_now(req, ROUTE_PROMO_ADMIN, 401, "unauthorized",
			       "missing or wrong bearer token", false);
		return;
	}
	if (gw->draining) {
		call_error_now(req, ROUTE_PROMO_ADMIN, 503, "busy", "shutting down; retry shortly",
			       true);
		return;
	}
	body = call_body(gw, req, &len);
	if (sku == NULL)
		admin_create(gw, req, body, len);
	else
		admin_set_limits(gw, req, sku, body, len);
}
