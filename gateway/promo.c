#include "gateway.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <event2/event.h>
#include <event2/http.h>

#include "log.h"

/* One refresh: TIME, GET fs:ready and SMEMBERS, then one HMGET per SKU, all pipelined. */
struct promo_refresh {
	struct gateway *gw;
	int64_t start_us;           /* mono, to keep admin additions made meanwhile */
	int64_t sent_wall_ms;
	int pending;                /* replies still expected */
	bool failed;
	bool have_time;
	int64_t redis_ms;           /* Redis TIME when this refresh began */
	bool state_lost;            /* fs:ready absent: Redis lost, not yet rebuilt */
	int64_t offset_ms;
	struct promo *items;
	size_t n, next;             /* next: which item the next HMGET reply fills */
	size_t cap;
};

int64_t gateway_now_ms(const struct gateway *gw)
{
	return now_ms() + gw->promo.clock_offset_ms;
}

static int promo_cmp(const void *a, const void *b)
{
	return strcmp(((const struct promo *)a)->sku, ((const struct promo *)b)->sku);
}

const struct promo *promo_find(const struct promo_cache *c, const char *sku)
{
	struct promo key;

	if (c->n == 0 || strlen(sku) > FS_ID_MAX)
		return NULL;
	strcpy(key.sku, sku);
	return bsearch(&key, c->items, c->n, sizeof(*c->items), promo_cmp);
}

int64_t promo_age_ms(const struct promo_cache *c)
{
	if (c->refreshed_us == 0)
		return INT64_MAX;
	return (mono_us() - c->refreshed_us) / 1000;
}

bool promo_fresh(const struct promo_cache *c)
{
	return promo_age_ms(c) <= c->max_age_ms;
}

const char *promo_status(const struct promo *p, int64_t now)
{
	if (now >= p->end_ms)
		return "ended";
	if (now < p->start_ms)
		return "upcoming";
	if (p->remaining <= 0)
		return "sold_out";
	return "active";
}

int promo_put(struct promo_cache *c, const struct promo *p)
{
	struct promo *found = (struct promo *)promo_find(c, p->sku);
	struct promo *items;
	size_t i;

	if (found != NULL) {
		*found = *p;
		return 0;
	}
	items = realloc(c->items, (c->n + 1) * sizeof(*items));
	if (items == NULL)
		return -1;
	c->items = items;
	for (i = c->n; i > 0 && strcmp(items[i - 1].sku, p->sku) > 0; i--)
		items[i] = items[i - 1];
	items[i] = *p;
	c->n++;
	return 0;
}

void promo_note_sold_out(struct promo_cache *c, const char *sku, int64_t at_ms)
{
	struct promo *p;

	/* Older than what the table was read at: the table already knows better. */
	if (at_ms <= c->refreshed_redis_ms)
		return;
	p = (struct promo *)promo_find(c, sku);
	if (p != NULL)
		p->remaining = 0;
}

static int64_t reply_int(const redisReply *r, bool *ok)
{
	char *end;
	long long v;

	if (r == NULL)
		goto bad;
	if (r->type == REDIS_REPLY_INTEGER)
		return r->integer;
	if (r->type != REDIS_REPLY_STRING || r->len == 0)
		goto bad;
	v = strtoll(r->str, &end, 10);
	if (*end != '\0')
		goto bad;
	return v;
bad:
	*ok = false;
	return 0;
}

/* Fill p from 8 replies: initial remaining held sold limit start_ms end_ms hold_ms. */
static bool promo_from_replies(struct promo *p, redisReply **e)
{
	bool ok = true;

	p->initial = reply_int(e[0], &ok);
	p->remaining = reply_int(e[1], &ok);
	p->held = reply_int(e[2], &ok);
	p->sold = reply_int(e[3], &ok);
	p->limit = reply_int(e[4], &ok);
	p->start_ms = reply_int(e[5], &ok);
	p->end_ms = reply_int(e[6], &ok);
	p->hold_ms = reply_int(e[7], &ok);
	return ok;
}

/* The last reply arrived: swap the table in, unless something failed. */
static void promo_refresh_done(struct promo_refresh *r)
{
	struct gateway *gw = r->gw;
	struct promo_cache *c = &gw->promo;
	struct promo *old = c->items;
	size_t oldn = c->n, n = 0;

	c->cur = NULL;
	if (r->failed || !r->have_time) {
		log_debug("promo_refresh_failed", "age_ms=%" PRId64, promo_age_ms(c));
		free(r->items);
		free(r);
		return;
	}
	if (r->state_lost) {
		/*
		 * Redis was lost and is being rebuilt: the promotions still
		 * exist. Keep the last table so buyers keep queueing (the
		 * deductor waits for the rebuild) instead of hearing
		 * unknown_sku.
		 */
		if (!c->state_lost)
			log_warn("promo_state_lost", "msg=\"fs:ready absent; keeping cached promotions\" skus=%zu", c->n);
		c->state_lost = true;
		free(r->items);
		c->clock_offset_ms = r->offset_ms;
		c->refreshed_us = mono_us();
		c->refreshed_redis_ms = r->redis_ms;
		free(r);
		return;
	}
	if (c->state_lost)
		log_info("promo_state_back", "skus=%zu", r->n);
	c->state_lost = false;
	/* Drop SKUs whose hash was missing, then sort. */
	for (size_t i = 0; i < r->n; i++)
		if (r->items[i].sku[0] != '\0')
			r->items[n++] = r->items[i];
	qsort(r->items, n, sizeof(*r->items), promo_cmp);
	c->items = r->items;
	c->n = n;
	/* An admin call may have added a SKU after this refresh read the set. */
	for (size_t i = 0; i < oldn; i++)
		if (old[i].added_us > r->start_us && promo_find(c, old[i].sku) == NULL &&
		    promo_put(c, &old[i]) < 0)
			log_warn("promo_cache_oom", "sku=%s", old[i].sku);
	free(old);
	c->clock_offset_ms = r->offset_ms;
	c->refreshed_us = mono_us();
	c->refreshed_redis_ms = r->redis_ms;
	free(r);
}

static void promo_reply_done(struct promo_refresh *r)
{
	if (--r->pending == 0)
		promo_refresh_done(r);
}

static void promo_time_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct promo_refresh *r = privdata;
	redisReply *rep = reply;
	bool ok = true;

	if (rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2) {
		r->failed = true;
	} else {
		int64_t sec = reply_int(rep->element[0], &ok);
		int64_t usec = reply_int(rep->element[1], &ok);
		/* Assume the reply was made halfway through the round trip. */
		int64_t mid = (r->sent_wall_ms + now_ms()) / 2;

		if (ok) {
			r->redis_ms = sec * 1000 + usec / 1000;
			r->offset_ms = r->redis_ms - mid;
			r->have_time = true;
		} else {
			r->failed = true;
		}
	}
	promo_reply_done(r);
}

static void promo_hmget_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct promo_refresh *r = privdata;
	redisReply *rep = reply;
	/* Replies come in command order: this one belongs to the next item. */
	struct promo *p = &r->items[r->next++];

	if (rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements != 8) {
		r->failed = true;
	} else if (rep->element[0]->type == REDIS_REPLY_NIL) {
		p->sku[0] = '\0';     /* in the set but no hash: not loaded */
	} else if (!promo_from_replies(p, rep->element)) {
		log_warn("promo_bad_hash", "sku=%s", p->sku);
		p->sku[0] = '\0';
	}
	promo_reply_done(r);
}

static void promo_ready_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct promo_refresh *r = privdata;
	redisReply *rep = reply;

	if (rep == NULL || rep->type == REDIS_REPLY_ERROR)
		r->failed = true;
	else if (rep->type == REDIS_REPLY_NIL)
		r->state_lost = true;
	promo_reply_done(r);
}

static void promo_members_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct promo_refresh *r = privdata;
	struct gateway *gw = r->gw;
	redisReply *rep = reply;
	char key[FS_ID_MAX + 16];
	const char *argv[10] = { "HMGET", key, "initial", "remaining", "held", "sold",
				 "limit", "start_ms", "end_ms", "hold_ms" };

	if (rep == NULL || rep->type != REDIS_REPLY_ARRAY) {
		r->failed = true;
		promo_reply_done(r);
		return;
	}
	r->items = calloc(rep->elements ? rep->elements : 1, sizeof(*r->items));
	if (r->items == NULL) {
		r->failed = true;
		promo_reply_done(r);
		return;
	}
	for (size_t i = 0; i < rep->elements; i++) {
		const redisReply *e = rep->element[i];

		if (e->type != REDIS_REPLY_STRING || !valid_sku(e->str))
			continue;
		snprintf(key, sizeof(key), "fs:promo:%s", e->str);
		if (store_command_argv(&gw->store, promo_hmget_cb, r, 10, argv, NULL) < 0) {
			r->failed = true;
			break;
		}
		strcpy(r->items[r->n].sku, e->str);
		r->n++;
		r->pending++;
	}
	promo_reply_done(r);
}

static void promo_tick(evutil_socket_t fd, short what, void *arg)
{
	struct gateway *gw = arg;
	struct promo_cache *c = &gw->promo;
	struct promo_refresh *r;
	const char *time_argv[] = { "TIME" };
	const char *members_argv[] = { "SMEMBERS", "fs:promos" };
	const char *ready_argv[] = { "GET", "fs:ready" };

	metric_set(&gw_m_cache_age, c->refreshed_us ? promo_age_ms(c) : -1);
	/*
	 * One refresh at a time: a slow Redis must not pile them up. One that
	 * has waited past cache_max_age_ms means a Redis that stopped
	 * answering without closing the socket (paused, black-holed): hiredis
	 * has no command timeout, so drop the connection; every pending
	 * callback, this refresh's included, then runs with a NULL reply.
	 */
	if (c->cur != NULL && (mono_us() - c->cur->start_us) / 1000 > c->max_age_ms)
		store_reset(&gw->store);
	if (c->cur != NULL || !store_ready(&gw->store))
		return;
	r = calloc(1, sizeof(*r));
	if (r == NULL)
		return;
	r->gw = gw;
	r->start_us = mono_us();
	r->sent_wall_ms = now_ms();
	if (store_command_argv(&gw->store, promo_time_cb, r, 1, time_argv, NULL) < 0) {
		free(r);
		return;
	}
	/* From here the replies own r (they arrive, or come back NULL on a loss). */
	r->pending = 1;
	c->cur = r;
	if (store_command_argv(&gw->store, promo_ready_cb, r, 2, ready_argv, NULL) == 0)
		r->pending++;
	else
		r->failed = true;
	if (store_command_argv(&gw->store, promo_members_cb, r, 2, members_argv, NULL) == 0)
		r->pending++;
	else
		r->failed = true;
}

int promo_init(struct gateway *gw)
{
	struct promo_cache *c = &gw->promo;
	struct timeval tv;

	memset(c, 0, sizeof(*c));
	c->refresh_ms = gw->cfg.refresh_ms;
	c->max_age_ms = gw->cfg.cache_max_age_ms;
	c->timer = event_new(gw->base, -1, EV_PERSIST, promo_tick, gw);
	if (c->timer == NULL)
		return -1;
	tv.tv_sec = c->refresh_ms / 1000;
	tv.tv_usec = (c->refresh_ms % 1000) * 1000;
	if (event_add(c->timer, &tv) < 0)
		return -1;
	return 0;
}

void promo_free(struct gateway *gw)
{
	struct promo_cache *c = &gw->promo;

	if (c->timer != NULL) {
		event_free(c->timer);
		c->timer = NULL;
	}
	free(c->items);
	c->items = NULL;
	c->n = 0;
}

/* ---- admin: create a promotion ---- */

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
	if (reply_int(rep->element[0], &ok) == 1)
		op->created = true;
	if (ok) {
		p.added_us = mono_us();
		if (promo_put(&gw->promo, &p) < 0)
			log_warn("promo_cache_oom", "sku=%s", p.sku);
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
	if (store_command_argv(&gw->store, admin_lua_cb, op, 12, argv, NULL) < 0)
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

void promo_admin_create(struct gateway *gw, struct evhttp_request *req,
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
	if (!store_ready(&gw->store)) {
		admin_fail(op, 503, "store_unavailable", "Redis is unavailable; retry later");
		return;
	}
	if (adminpg_submit(&gw->pg, admin_insert_sql, 6, params, admin_insert_cb, op) < 0)
		admin_fail(op, 503, "store_unavailable",
			   "PostgreSQL is unavailable; retry later");
}
