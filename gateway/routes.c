#include "gateway.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>
#include <event2/http.h>

#include "log.h"

#define FRIENDLY "sorry, you didn't get it this time"
#define FRIENDLY_RETRY "sorry, you didn't get it this time; retry with the same request_id"
/* The gateway clock may differ from Redis's by the refresh jitter: let the deductor decide. */
#define WINDOW_SLACK_MS 1000

/* ---- metrics ---- */

enum refusal {
	REF_INVALID, REF_UNKNOWN_SKU, REF_NOT_STARTED, REF_ENDED, REF_SOLD_OUT,
	REF_LIMIT, REF_RATE_LIMITED, REF_BUSY, REF_STALE_CACHE, REF_DRAINING,
	REF_QUEUE_UNAVAILABLE, REF_UNAUTHORIZED, REF_N
};
static const char *const refusal_names[REF_N] = {
	"invalid", "unknown_sku", "not_started", "ended", "sold_out", "limit_reached",
	"rate_limited", "busy", "stale_cache", "draining", "queue_unavailable", "unauthorized",
};
static struct metric m_refusals[REF_N];
static char m_refusal_labels[REF_N][48];
static struct metric m_replays = {
	.name = "gateway_purchase_replays_total",
	.help = "Purchases a filter would have refused, answered 202 because the request id "
		"was already accepted",
	.type = METRIC_COUNTER,
};

static struct metric m_accepted = {
	.name = "gateway_purchases_accepted_total",
	.help = "Purchases acknowledged by Kafka and answered 202",
	.type = METRIC_COUNTER,
};
static struct metric m_produce_latency = {
	.name = "gateway_produce_ack_seconds",
	.help = "Time from produce to delivery report",
	.type = METRIC_HISTOGRAM,
};
static struct metric m_auth_failed = {
	.name = "gateway_auth_failures_total",
	.help = "Buyer requests refused 401: no, malformed, expired or wrongly signed token",
	.type = METRIC_COUNTER,
};

void routes_metrics_register(void)
{
	call_metrics_register();
	for (int i = 0; i < REF_N; i++) {
		snprintf(m_refusal_labels[i], sizeof(m_refusal_labels[i]), "reason=\"%s\"",
			 refusal_names[i]);
		m_refusals[i].name = "gateway_refusals_total";
		m_refusals[i].help = "Purchases refused by the gateway's filters, by reason";
		m_refusals[i].labels = m_refusal_labels[i];
		m_refusals[i].type = METRIC_COUNTER;
		metrics_register(&m_refusals[i]);
	}
	metrics_register(&m_replays);
	metrics_register(&m_accepted);
	metrics_register(&gw_m_inflight);
	metrics_register(&m_produce_latency);
	metrics_register(&gw_m_cache_age);
	metrics_register(&m_auth_failed);
}

/* A request waiting for Redis and/or a Kafka delivery report. */
struct pending {
	struct gw_call call;
	int kind;                          /* Flashsale__Intent__Kind */
	char request_id[FS_ID_MAX + 1];    /* the pipeline's: scoped to the buyer */
	char client_id[FS_ID_MAX + 1];     /* the buyer's own, in every answer */
	char sku[FS_ID_MAX + 1];
	char user_id[FS_ID_MAX + 1];
	char state[32];                    /* pay/cancel: st when asked */
	char owner[FS_ID_MAX + 1];         /* the buyer, from the token */
	int64_t produced_us;               /* mono time of the produce call */
	/* purchase refused by a filter, pending the request id's look-up */
	enum refusal refusal;
	int refusal_code;
	const char *refusal_error;         /* static strings */
	const char *refusal_reason;
};

/* ---- the buyer ---- */

/*
 * The buyer of a request: the sub of its `Authorization: Bearer` token,
 * verified (auth.h). false when it answered 401 itself. Why a token was
 * refused goes to the debug log only: a client learns no more than that.
 */
static bool routes_buyer(struct gateway *gw, struct evhttp_request *req, enum gw_route route,
			 char user[FS_ID_MAX + 1])
{
	const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	char err[256];

	if (h != NULL && strncasecmp(h, "Bearer ", 7) == 0 &&
	    auth_verify(&gw->auth, h + 7, now_ms() / 1000, user, err, sizeof(err)) == 0)
		return true;
	if (h == NULL)
		snprintf(err, sizeof(err), "no Authorization header");
	log_debug("auth_refused", "route=%d msg=\"%s\"", (int)route, err);
	metric_add(&m_auth_failed, 1);
	evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
			  h == NULL ? "Bearer" : "Bearer error=\"invalid_token\"");
	call_error_now(req, route, 401, "unauthorized",
		       "a valid bearer token of the buyer is required", false);
	return false;
}

/* A body's user_id, when given, must be the token's buyer. */
static bool routes_same_buyer(struct evhttp_request *req, enum gw_route route,
			      const char *body_user, const char *user)
{
	if (body_user[0] == '\0' || strcmp(body_user, user) == 0)
		return true;
	call_error_now(req, route, 400, "invalid_field",
		       "user_id does not match the bearer token's user", false);
	return false;
}

/* 413 for a body over gateway.max_body, 400 for any other parse error. */
static int parse_status(const char *code)
{
	return strcmp(code, "body_too_large") == 0 ? 413 : 400;
}

/* ---- replies ---- */

static cJSON *queue_unavailable_body(const char *request_id)
{
	cJSON *o = call_error_body("queue_unavailable", FRIENDLY_RETRY);

	cJSON_AddStringToObject(o, "request_id", request_id);
	return o;
}

static void refuse(struct evhttp_request *req, enum refusal why, int code,
		   const char *error, const char *reason, bool close)
{
	metric_add(&m_refusals[why], 1);
	call_error_now(req, ROUTE_PURCHASE, code, error, reason, close);
}

static void replay_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct pending *pd = privdata;
	redisReply *r = reply;
	cJSON *o;

	pd->call.gw->redis_pending--;
	if (r != NULL && r->type == REDIS_REPLY_STRING) {
		o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "request_id", pd->client_id);
		cJSON_AddStringToObject(o, "state", r->str);
		metric_add(&m_replays, 1);
		call_reply(&pd->call, 202, o);
	} else {
		metric_add(&m_refusals[pd->refusal], 1);
		call_error(&pd->call, pd->refusal_code, pd->refusal_error, pd->refusal_reason);
	}
	free(pd);
}

/*
 * A refusal by one of the filters that change over a sale (sold out, ended,
 * rate limited) must not contradict an earlier answer to the same request
 * id: a buyer whose 202 got lost retries, and must not be told "sold out"
 * about the unit it holds. So when the client chose the request id, it is
 * looked up first (one HGET on the async connection): a known id gets what
 * its first send got, 202, with the purchase's current state. Without Redis,
 * or with the look-ups saturated, the plain refusal goes out, as before.
 * error and reason must be static strings.
 */
static void refuse_unless_known(struct gateway *gw, struct evhttp_request *req,
				const struct purchase_req *pr, const char *rid, enum refusal why,
				int code, const char *error, const char *reason)
{
	char key[FS_ID_MAX + 16];
	const char *hget[] = { "HGET", key, "st" };
	struct pending *pd;

	if (pr->generated_id || !gw_store_ready(&gw->store) ||
	    gw->redis_pending >= gw->cfg.max_inflight ||
	    (pd = calloc(1, sizeof(*pd))) == NULL) {
		refuse(req, why, code, error, reason, false);
		return;
	}
	strcpy(pd->request_id, rid);
	strcpy(pd->client_id, pr->request_id);
	pd->refusal = why;
	pd->refusal_code = code;
	pd->refusal_error = error;
	pd->refusal_reason = reason;
	snprintf(key, sizeof(key), "fs:req:%s", rid);
	if (gw_store_command_argv(&gw->store, replay_cb, pd, 3, hget, NULL) < 0) {
		free(pd);
		refuse(req, why, code, error, reason, false);
		return;
	}
	gw->redis_pending++;
	call_init(&pd->call, gw, req, ROUTE_PURCHASE);
}

/* ---- handlers ---- */

static void route_purchase(struct gateway *gw, struct evhttp_request *req)
{
	struct purchase_req pr;
	const struct promo *p;
	struct pending *pd;
	const char *body, *code = NULL;
	char err[256], user[FS_ID_MAX + 1], rid[27], ip[GW_IP_MAX] = "";
	size_t len;
	int64_t now;
	fs_intent in = FLASHSALE__INTENT__INIT;

	if (gw->draining) {
		refuse(req, REF_DRAINING, 503, "busy", FRIENDLY, true);
		return;
	}
	if (!routes_buyer(gw, req, ROUTE_PURCHASE, user)) {
		metric_add(&m_refusals[REF_UNAUTHORIZED], 1);
		return;
	}
	body = call_body(gw, req, &len);
	if (request_parse_purchase(body, len, (size_t)gw->cfg.max_body, &pr, &code,
				   err, sizeof(err)) < 0) {
		refuse(req, REF_INVALID, parse_status(code), code, err, false);
		return;
	}
	if (!routes_same_buyer(req, ROUTE_PURCHASE, pr.user_id, user)) {
		metric_add(&m_refusals[REF_INVALID], 1);
		return;
	}
	strcpy(pr.user_id, user);
	/* Ids are the buyer's own: nobody can claim another's, none collide. */
	auth_scoped_id(user, pr.request_id, rid);
	/* Cheapest first: nothing below does I/O until the produce. */
	if (!promo_fresh(&gw->promo)) {
		refuse(req, REF_STALE_CACHE, 503, "busy", FRIENDLY, false);
		return;
	}
	p = promo_find(&gw->promo, pr.sku);
	if (p == NULL) {
		refuse(req, REF_UNKNOWN_SKU, 404, "unknown_sku", "no promotion for this sku", false);
		return;
	}
	now = gateway_now_ms(gw);
	if (now < p->start_ms - WINDOW_SLACK_MS) {
		refuse(req, REF_NOT_STARTED, 409, "not_started", "the sale has not started yet", false);
		return;
	}
	if (now >= p->end_ms + WINDOW_SLACK_MS) {
		refuse_unless_known(gw, req, &pr, rid, REF_ENDED, 409, "ended", "the sale has ended");
		return;
	}
	if (p->remaining <= 0) {
		refuse_unless_known(gw, req, &pr, rid, REF_SOLD_OUT, 409, "sold_out", "sold out");
		return;
	}
	if (pr.qty > p->limit) {
		snprintf(err, sizeof(err), "qty is above the per-user limit of %" PRId64, p->limit);
		refuse(req, REF_LIMIT, 409, "limit_reached", err, false);
		return;
	}
	if (!ratelimit_take(&gw->rl, pr.user_id, mono_us())) {
		refuse_unless_known(gw, req, &pr, rid, REF_RATE_LIMITED, 429, "rate_limited", FRIENDLY);
		return;
	}
	if (gw->prod.inflight >= gw->cfg.max_inflight) {
		refuse(req, REF_BUSY, 503, "busy", FRIENDLY, false);
		return;
	}
	pd = calloc(1, sizeof(*pd));
	if (pd == NULL) {
		refuse(req, REF_BUSY, 503, "busy", FRIENDLY, false);
		return;
	}
	pd->kind = FLASHSALE__INTENT__KIND__PURCHASE;
	strcpy(pd->request_id, rid);
	strcpy(pd->client_id, pr.request_id);
	strcpy(pd->sku, pr.sku);
	strcpy(pd->user_id, pr.user_id);
	(void)gw_conns_client_ip(&gw->conns, req, ip);
	in.kind = FLASHSALE__INTENT__KIND__PURCHASE;
	in.request_id = pd->request_id;
	in.sku = pd->sku;
	in.user_id = pd->user_id;
	in.qty = (uint32_t)pr.qty;
	in.client_ip = ip;
	in.sent_at_ms = now_ms();
	in.source = (char *)"gateway";
	pd->produced_us = mono_us();
	if (producer_send(&gw->prod, &in, pd, err, sizeof(err)) < 0) {
		log_warn("produce_failed", "request_id=%s err=\"%s\"", pd->request_id, err);
		free(pd);
		metric_add(&m_refusals[REF_QUEUE_UNAVAILABLE], 1);
		call_reply_now(req, ROUTE_PURCHASE, 503, queue_unavailable_body(pd->client_id),
			       false);
		return;
	}
	call_init(&pd->call, gw, req, ROUTE_PURCHASE);
}

void routes_on_delivery(void *arg, void *msg_opaque, rd_kafka_resp_err_t err,
			bool maybe_stored)
{
	struct gateway *gw = arg;
	struct pending *pd = msg_opaque;
	cJSON *o;

	metric_observe_us(&m_produce_latency, (uint64_t)(mono_us() - pd->produced_us));
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		log_warn("delivery_failed", "request_id=%s kind=%s err=%s", pd->request_id,
			 intent_kind_name(pd->kind), rd_kafka_err2name(err));
		if (pd->kind == FLASHSALE__INTENT__KIND__PURCHASE)
			metric_add(&m_refusals[REF_QUEUE_UNAVAILABLE], 1);
		if (maybe_stored) {
			/* Retrying with the same id is safe: the deductor applies it once. */
			cJSON *u = call_error_body("outcome_unknown",
						   "we could not confirm your request; "
						   "check it or retry with the same request_id");

			cJSON_AddStringToObject(u, "request_id", pd->client_id);
			call_reply(&pd->call, 503, u);
		} else {
			call_reply(&pd->call, 503, queue_unavailable_body(pd->client_id));
		}
		free(pd);
		return;
	}
	o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "request_id", pd->client_id);
	if (pd->kind == FLASHSALE__INTENT__KIND__PURCHASE) {
		/* The purchase is in Kafka: it will be decided whether or not the client stays. */
		gw_store_mark_queued(&gw->store, pd->request_id, gw->cfg.record_ttl_s);
		metric_add(&m_accepted, 1);
		cJSON_AddStringToObject(o, "state", "queued");
	} else {
		cJSON_AddStringToObject(o, "state", pd->state);
		cJSON_AddStringToObject(o, "requested",
					pd->kind == FLASHSALE__INTENT__KIND__PAY ? "pay" : "cancel");
	}
	call_reply(&pd->call, 202, o);
	free(pd);
}

/* Find field name in an HGETALL/HMGET-style flat reply of pairs. */
static const char *pair_get(const redisReply *r, const char *name)
{
	for (size_t i = 0; i + 1 < r->elements; i += 2)
		if (r->element[i]->type == REDIS_REPLY_STRING &&
		    strcmp(r->element[i]->str, name) == 0 &&
		    r->element[i + 1]->type == REDIS_REPLY_STRING)
			return r->element[i + 1]->str;
	return NULL;
}

static void purchase_get_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct pending *pd = privdata;
	redisReply *r = reply;
	const char *v;
	cJSON *o;

	pd->call.gw->redis_pending--;
	if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
		call_error(&pd->call, 503, "store_unavailable", "Redis is unavailable; retry later");
		free(pd);
		return;
	}
	/*
	 * Only the owner sees a purchase; anyone else gets the answer of an
	 * unknown id, so ids cannot be probed. (A "queued" marker has no user
	 * yet: its id is already the owner's own, scoped by the token.)
	 */
	if (r->elements == 0 || pair_get(r, "st") == NULL ||
	    ((v = pair_get(r, "user")) != NULL && strcmp(v, pd->owner) != 0)) {
		call_error(&pd->call, 404, "unknown_request", "no purchase with this request_id");
		free(pd);
		return;
	}
	o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "request_id", pd->client_id);
	/* A "queued" marker has only st until the deductor writes the record. */
	if ((v = pair_get(r, "sku")) != NULL)
		cJSON_AddStringToObject(o, "sku", v);
	if ((v = pair_get(r, "user")) != NULL)
		cJSON_AddStringToObject(o, "user_id", v);
	if ((v = pair_get(r, "qty")) != NULL)
		cJSON_AddNumberToObject(o, "qty", (double)atoll(v));
	cJSON_AddStringToObject(o, "state", pair_get(r, "st"));
	if (strcmp(pair_get(r, "st"), "sold_out") == 0 && (v = pair_get(r, "qty")) != NULL &&
	    strcmp(v, "1") == 0 && (v = pair_get(r, "sku")) != NULL && pair_get(r, "ts") != NULL)
		promo_note_sold_out(&pd->call.gw->promo, v, atoll(pair_get(r, "ts")));
	if (strcmp(pair_get(r, "st"), "reserved") == 0 && (v = pair_get(r, "dl")) != NULL)
		cJSON_AddNumberToObject(o, "deadline_ms", (double)atoll(v));
	call_reply(&pd->call, 200, o);
	free(pd);
}

/* HMGET fs:req:<rid> sku st user dl, then produce the PAY/CANCEL intent. */
static void transition_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct pending *pd = privdata;
	struct gateway *gw = pd->call.gw;
	redisReply *r = reply;
	const redisReply *sku, *st, *user, *dl;
	char err[256];
	fs_intent in = FLASHSALE__INTENT__INIT;
	int64_t now;

	gw->redis_pending--;
	if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 4) {
		call_error(&pd->call, 503, "store_unavailable", "Redis is unavailable; retry later");
		free(pd);
		return;
	}
	sku = r->element[0];
	st = r->element[1];
	user = r->element[2];
	dl = r->element[3];
	if (st->type != REDIS_REPLY_STRING) {
		call_error(&pd->call, 404, "unknown_request", "no purchase with this request_id");
		free(pd);
		return;
	}
	if (strcmp(st->str, "queued") == 0 || sku->type != REDIS_REPLY_STRING ||
	    !valid_sku(sku->str)) {
		call_error(&pd->call, 409, "not_reserved_yet",
			   "the purchase is still queued: poll until reserved");
		free(pd);
		return;
	}
	if (gw->draining || gw->prod.inflight >= gw->cfg.max_inflight) {
		call_error(&pd->call, 503, "busy", "busy; retry shortly");
		free(pd);
		return;
	}
	if (user->type != REDIS_REPLY_STRING || strcmp(user->str, pd->owner) != 0) {
		/* The same answer as an unknown id: do not confirm whose it is. */
		call_error(&pd->call, 404, "unknown_request", "no purchase with this request_id");
		free(pd);
		return;
	}
	/*
	 * A payment counts at the time we accept it (the deductor honours the
	 * stamp however late it applies the PAY), on the Redis clock the
	 * deadline is set on. Past the deadline we say so now rather than
	 * accept and let the deductor expire it; without a fresh clock we
	 * cannot tell, so the buyer retries.
	 */
	now = gateway_now_ms(gw);
	if (pd->kind == FLASHSALE__INTENT__KIND__PAY && strcmp(st->str, "reserved") == 0) {
		if (!promo_fresh(&gw->promo)) {
			call_error(&pd->call, 503, "busy", "busy; retry shortly");
			free(pd);
			return;
		}
		if (dl->type == REDIS_REPLY_STRING && now > atoll(dl->str)) {
			call_error(&pd->call, 409, "payment_too_late",
				   "the payment deadline has passed; the hold is being released");
			free(pd);
			return;
		}
	}
	strcpy(pd->sku, sku->str);
	snprintf(pd->state, sizeof(pd->state), "%s", st->str);
	strcpy(pd->user_id, user->str);
	in.kind = pd->kind;
	in.accepted_at_ms = pd->kind == FLASHSALE__INTENT__KIND__PAY ? now : 0;
	in.request_id = pd->request_id;
	in.sku = pd->sku;
	in.user_id = pd->user_id;
	in.client_ip = (char *)"";
	in.sent_at_ms = now_ms();
	in.source = (char *)"gateway";
	pd->produced_us = mono_us();
	if (producer_send(&gw->prod, &in, pd, err, sizeof(err)) < 0) {
		log_warn("produce_failed", "request_id=%s err=\"%s\"", pd->request_id, err);
		call_reply(&pd->call, 503, queue_unavailable_body(pd->client_id));
		free(pd);
	}
}

/* GET /v1/purchases/{rid} and POST .../pay, .../cancel: a Redis read first. */
static void route_request_op(struct gateway *gw, struct evhttp_request *req,
			     enum gw_route route, const char *rid)
{
	struct pending *pd;
	char key[FS_ID_MAX + 16], body_user[FS_ID_MAX + 1] = "", user[FS_ID_MAX + 1], err[256];
	const char *getall[] = { "HGETALL", key };
	const char *hmget[] = { "HMGET", key, "sku", "st", "user", "dl" };
	const char *body, *code = NULL;
	size_t len;
	int rc;

	if (!valid_request_id(rid)) {
		call_error_now(req, route, 400, "invalid_field", "request_id is not valid", false);
		return;
	}
	if (!routes_buyer(gw, req, route, user))
		return;
	if (route != ROUTE_PURCHASE_GET) {
		body = call_body(gw, req, &len);
		if (request_parse_owner(body != NULL ? body : "", body != NULL ? len : 0,
					(size_t)gw->cfg.max_body, body_user, &code, err,
					sizeof(err)) < 0) {
			call_error_now(req, route, parse_status(code), code, err, false);
			return;
		}
		if (!routes_same_buyer(req, route, body_user, user))
			return;
	}
	if (route != ROUTE_PURCHASE_GET && gw->draining) {
		call_error_now(req, route, 503, "busy", "shutting down; retry shortly", true);
		return;
	}
	if (!gw_store_ready(&gw->store)) {
		call_error_now(req, route, 503, "store_unavailable",
			       "Redis is unavailable; retry later", false);
		return;
	}
	/* Bounded like the Kafka side: a slow Redis must not pile up requests. */
	if (gw->redis_pending >= gw->cfg.max_inflight) {
		call_error_now(req, route, 503, "busy", "busy; retry shortly", false);
		return;
	}
	pd = calloc(1, sizeof(*pd));
	if (pd == NULL) {
		call_error_now(req, route, 503, "busy", "out of memory", false);
		return;
	}
	auth_scoped_id(user, rid, pd->request_id);
	strcpy(pd->client_id, rid);
	strcpy(pd->owner, user);
	snprintf(key, sizeof(key), "fs:req:%s", pd->request_id);
	if (route == ROUTE_PURCHASE_GET) {
		rc = gw_store_command_argv(&gw->store, purchase_get_cb, pd, 2, getall, NULL);
	} else {
		pd->kind = route == ROUTE_PAY ? FLASHSALE__INTENT__KIND__PAY :
						FLASHSALE__INTENT__KIND__CANCEL;
		rc = gw_store_command_argv(&gw->store, transition_cb, pd, 6, hmget, NULL);
	}
	if (rc < 0) {
		free(pd);
		call_error_now(req, route, 503, "store_unavailable",
			       "Redis is unavailable; retry later", false);
		return;
	}
	gw->redis_pending++;
	call_init(&pd->call, gw, req, route);
}

static void route_promo_get(struct gateway *gw, struct evhttp_request *req, const char *sku)
{
	const struct promo *p = valid_sku(sku) ? promo_find(&gw->promo, sku) : NULL;
	cJSON *o;

	if (p == NULL) {
		call_error_now(req, ROUTE_PROMO_GET, 404, "unknown_sku",
			       "no promotion for this sku", false);
		return;
	}
	/* Counters are as of the last refresh (at most refresh_ms old while Redis is up). */
	o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "sku", p->sku);
	cJSON_AddNumberToObject(o, "stock", (double)p->initial);
	cJSON_AddNumberToObject(o, "remaining", (double)p->remaining);
	cJSON_AddNumberToObject(o, "held", (double)p->held);
	cJSON_AddNumberToObject(o, "sold", (double)p->sold);
	cJSON_AddNumberToObject(o, "per_user_limit", (double)p->limit);
	cJSON_AddNumberToObject(o, "start_ms", (double)p->start_ms);
	cJSON_AddNumberToObject(o, "end_ms", (double)p->end_ms);
	cJSON_AddNumberToObject(o, "hold_seconds", (double)(p->hold_ms / 1000));
	cJSON_AddStringToObject(o, "status", promo_status(p, gateway_now_ms(gw)));
	call_reply_now(req, ROUTE_PROMO_GET, 200, o, false);
}

static void route_time(struct gateway *gw, struct evhttp_request *req)
{
	cJSON *o = cJSON_CreateObject();

	cJSON_AddNumberToObject(o, "now_ms", (double)gateway_now_ms(gw));
	call_reply_now(req, ROUTE_TIME, 200, o, false);
}

void routes_handle(struct evhttp_request *req, void *arg)
{
	struct gateway *gw = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	enum evhttp_cmd_type m = evhttp_request_get_command(req);
	const char *rest;
	char id[FS_ID_MAX + 2];
	size_t n;

	if (path == NULL)
		path = "";
	if (strcmp(path, "/v1/purchases") == 0) {
		if (m != EVHTTP_REQ_POST)
			goto bad_method;
		route_purchase(gw, req);
		return;
	}
	if (strncmp(path, "/v1/purchases/", 14) == 0) {
		rest = path + 14;
		n = strcspn(rest, "/");
		if (n == 0 || n > FS_ID_MAX) {
			call_error_now(req, ROUTE_OTHER, 404, "not_found", "no such resource",
				       false);
			return;
		}
		memcpy(id, rest, n);
		id[n] = '\0';
		rest += n;
		if (rest[0] == '\0') {
			if (m != EVHTTP_REQ_GET)
				goto bad_method;
			route_request_op(gw, req, ROUTE_PURCHASE_GET, id);
		} else if (strcmp(rest, "/pay") == 0 || strcmp(rest, "/cancel") == 0) {
			if (m != EVHTTP_REQ_POST)
				goto bad_method;
			route_request_op(gw, req, rest[1] == 'p' ? ROUTE_PAY : ROUTE_CANCEL, id);
		} else {
			call_error_now(req, ROUTE_OTHER, 404, "not_found", "no such resource",
				       false);
		}
		return;
	}
	if (strncmp(path, "/v1/promotions/", 15) == 0) {
		if (m != EVHTTP_REQ_GET)
			goto bad_method;
		route_promo_get(gw, req, path + 15);
		return;
	}
	if (strcmp(path, "/v1/time") == 0) {
		if (m != EVHTTP_REQ_GET)
			goto bad_method;
		route_time(gw, req);
		return;
	}
	call_error_now(req, ROUTE_OTHER, 404, "not_found", "no such resource", false);
	return;
bad_method:
	call_error_now(req, ROUTE_OTHER, 405, "method_not_allowed", "method not allowed here",
		       false);
}

void routes_handle_admin(struct evhttp_request *req, void *arg)
{
	struct gateway *gw = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;

	if (path == NULL || strcmp(path, "/admin/promotions") != 0) {
		call_error_now(req, ROUTE_OTHER, 404, "not_found", "no such resource", false);
		return;
	}
	if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
		call_error_now(req, ROUTE_OTHER, 405, "method_not_allowed",
			       "method not allowed here", false);
		return;
	}
	admin_create_promo(gw, req);
}
