#include "gateway.h"

#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include <cjson/cJSON.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "log.h"

#define FRIENDLY "sorry, you didn't get it this time"
#define FRIENDLY_RETRY "sorry, you didn't get it this time; retry with the same request_id"
/* The gateway clock may differ from Redis's by the refresh jitter: let the deductor decide. */
#define WINDOW_SLACK_MS 1000

/* ---- metrics ---- */

enum refusal {
	REF_INVALID, REF_UNKNOWN_SKU, REF_NOT_STARTED, REF_ENDED, REF_SOLD_OUT,
	REF_LIMIT, REF_RATE_LIMITED, REF_BUSY, REF_STALE_CACHE, REF_DRAINING,
	REF_QUEUE_UNAVAILABLE, REF_UNAUTHORIZED, REF_CLAIMED, REF_SKU_RATE, REF_IP_RATE, REF_INFLIGHT, REF_N
};
static const char *const refusal_names[REF_N] = {
	"invalid", "unknown_sku", "not_started", "ended", "sold_out", "limit_reached",
	"rate_limited", "busy", "stale_cache", "draining", "queue_unavailable", "unauthorized",
	"claimed", "sku_rate", "ip_rate", "inflight_cap",
};
static struct metric m_refusals[REF_N];
static char m_refusal_labels[REF_N][48];
static struct metric m_wakes = {
	.name = "gateway_long_poll_wakes_total",
	.help = "Long polls woken to look again: their purchase moved (fs:st), or anything may "
		"have (a resubscribe, a rebuild, the drain)",
	.type = METRIC_COUNTER,
};
static struct metric m_replays = {
	.name = "gateway_purchase_replays_total",
	.help = "Purchases a filter would have refused, answered 202 because the request id "
		"was already accepted",
	.type = METRIC_COUNTER,
};

static struct metric m_unlooked = {
	.name = "gateway_refusals_unlooked_total",
	.help = "Refusals of a client-chosen request id sent without asking Redis: the loop "
		"knew it had no record of the id",
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
static struct metric m_admission_latency = {
	.name = "gateway_admission_seconds",
	.help = "Time a purchase waits for its admission verdict (the loop turn's Redis call)",
	.type = METRIC_HISTOGRAM,
};
static struct metric m_accept_latency = {
	.name = "gateway_accept_seconds",
	.help = "Time from a purchase's request to its 202 (admission, Kafka's ack, the hand-offs)",
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
	metrics_register(&m_unlooked);
	metrics_register(&m_wakes);
	metrics_register(&m_accepted);
	metrics_register(&gw_m_inflight);
	metrics_register(&m_produce_latency);
	metrics_register(&m_admission_latency);
	metrics_register(&m_accept_latency);
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
	char ip[GW_IP_MAX];                /* purchase: the client's address */
	int64_t qty;                       /* purchase */
	int64_t received_us;               /* purchase: mono time its handler ran */
	int64_t produced_us;               /* mono time of the produce call */
	bool resend;                       /* a retry of a purchase still undecided */
	/* purchase under its loop's lease: produced before its marker, answered
	 * once both the delivery report and the marker's verdict are in */
	bool leased;
	char lease[ADMIT_LEASE_ID_MAX];    /* the lease it was produced under */
	int waits;                         /* of those two, still to come */
	enum admit_verdict mark;           /* the marker's verdict */
	rd_kafka_resp_err_t dr_err;        /* the delivery report, kept */
	bool dr_maybe_stored;
	/* purchase refused by a filter, pending the request id's look-up */
	enum refusal refusal;
	int refusal_code;
	const char *refusal_error;         /* static strings */
	const char *refusal_reason;
	int64_t retry_ms;                  /* >= 0: retry_after_ms and Retry-After */
	int may_return;                    /* >= 0: may_return */
	/* GET ?wait_ms=N&from=S: answer once the state is not S, or at wait_until_us */
	int64_t wait_until_us;
	char from_state[24];
	struct event *wait_ev;
	int wait_step_ms;
	struct waiter waiter;              /* in gw->waiters while the long poll lasts */
	bool reading;                      /* its HGETALL is out */
	bool woken;                        /* pushed while reading: read again at once */
};

/* How often a long poll looks while the deductor's pushes wake it (a net under them). */
#define WAIT_LOOK_PUSHED_MS 1000

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

static bool purchase_produce(struct gateway *gw, struct pending *pd);
static void purchase_delivered(struct gateway *gw, struct pending *pd, rd_kafka_resp_err_t err,
			       bool maybe_stored);

/*
 * Purchases this gateway answered 202 lately (request id -> the second of
 * the answer on the monotonic clock, plus 1), so that
 *   - a retry of one is answered 202 while Redis, which knows every id, is
 *     away: admission fails closed for new purchases only;
 *   - a GET of one Redis has no record of is answered "queued" (its marker
 *     call failed, or Redis lost its state): it is in Kafka, and the
 *     deductor's decision writes its record.
 * A window, not a log: cleared whole when full, per process (another
 * gateway's 202s get the plain 503 or 404, as before), and an entry older
 * than gateway.record_ttl_s is not trusted: by then a decided purchase's
 * record may have expired.
 */
#define RECENT_MAX 100000

static void routes_recent_note(struct gateway *gw, const char *rid)
{
	pthread_mutex_lock(&gw->sh->recent_mu);
	if (strmap_count(&gw->sh->recent) >= RECENT_MAX)
		strmap_clear(&gw->sh->recent);
	if (strmap_put_max(&gw->sh->recent, rid, mono_us() / 1000000 + 1) < 0)
		log_debug("recent_oom", "request_id=%s", rid);
	pthread_mutex_unlock(&gw->sh->recent_mu);
}

static bool routes_recent_known(struct gateway *gw, const char *rid)
{
	int64_t at;

	pthread_mutex_lock(&gw->sh->recent_mu);
	at = strmap_get(&gw->sh->recent, rid, 0);
	pthread_mutex_unlock(&gw->sh->recent_mu);
	return at > 0 && mono_us() / 1000000 + 1 - at <= gw->cfg.record_ttl_s;
}

static void replay_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct pending *pd = privdata;
	redisReply *r = reply;
	cJSON *o;

	pd->call.gw->redis_pending--;
	if (r != NULL && r->type == REDIS_REPLY_STRING && strcmp(r->str, "queued") == 0) {
		/* Undecided: the first send may have failed; send it again (see resend). */
		metric_add(&m_replays, 1);
		pd->resend = true;
		purchase_produce(pd->call.gw, pd);
		return;
	}
	if (r != NULL && r->type == REDIS_REPLY_STRING) {
		o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "request_id", pd->client_id);
		cJSON_AddStringToObject(o, "state", r->str);
		metric_add(&m_replays, 1);
		call_reply(&pd->call, 202, o);
	} else {
		metric_add(&m_refusals[pd->refusal], 1);
		call_refusal(&pd->call, pd->refusal_code, pd->refusal_error, pd->refusal_reason,
			     pd->retry_ms, pd->may_return);
	}
	free(pd);
}

/*
 * A refusal by one of the filters that change over a sale (sold out, ended,
 * rate limited) must not contradict an earlier answer to the same request
 * id: a buyer whose 202 got lost retries, and must not be told "sold out"
 * about the unit it holds. So when the client chose the request id and
 * Redis may have a record of it (known.h: for most refused buyers the loop
 * knows it has none), it is looked up first (one HGET on the async
 * connection): a known id gets what its first send got, 202, with the
 * purchase's current state. Without Redis, or with the look-ups saturated,
 * the plain refusal goes out, as before. error and reason must be static
 * strings.
 */
static void refuse_unless_known_later(struct gateway *gw, struct evhttp_request *req,
				      const struct purchase_req *pr, const char *rid,
				      enum refusal why, int code, const char *error,
				      const char *reason, int64_t retry_ms, int may_return)
{
	char key[FS_ID_MAX + 16];
	const char *hget[] = { "HGET", key, "st" };
	struct pending *pd;

	bool unknown = !pr->generated_id && gw->cfg.known_ids &&
		       !known_may_exist(&gw->known, rid, mono_us());

	if (unknown)
		metric_add(&m_unlooked, 1);
	if (pr->generated_id || unknown || !gw_store_ready(&gw->store) ||
	    gw->redis_pending >= gw->cfg.max_inflight ||
	    (pd = calloc(1, sizeof(*pd))) == NULL) {
		metric_add(&m_refusals[why], 1);
		call_refusal_now(req, ROUTE_PURCHASE, code, error, reason, retry_ms, may_return,
				 false);
		return;
	}
	strcpy(pd->request_id, rid);
	strcpy(pd->client_id, pr->request_id);
	/* What a resend needs (replay_cb): the purchase itself. */
	pd->kind = FLASHSALE__INTENT__KIND__PURCHASE;
	strcpy(pd->sku, pr->sku);
	strcpy(pd->user_id, pr->user_id);
	pd->qty = pr->qty;
	(void)gw_conns_client_ip(&gw->conns, req, pd->ip);
	pd->refusal = why;
	pd->refusal_code = code;
	pd->refusal_error = error;
	pd->refusal_reason = reason;
	pd->retry_ms = retry_ms;
	pd->may_return = may_return;
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

/*
 * The filters of a promotion this loop's cache knows, cheapest first;
 * nothing here does I/O but a look-up of a client-chosen id (see
 * refuse_unless_known_later). false when the request was answered.
 */
static bool purchase_filters(struct gateway *gw, struct evhttp_request *req,
			     const struct purchase_req *pr, const struct promo *p, const char *rid)
{
	char err[128];
	int64_t now = gateway_now_ms(gw);

	hotkeys_note(gw->hot, p->sku);
	if (now < p->start_ms - WINDOW_SLACK_MS) {
		refuse(req, REF_NOT_STARTED, 409, "not_started", "the sale has not started yet", false);
		return false;
	}
	if (now >= p->end_ms + WINDOW_SLACK_MS) {
		refuse_unless_known_later(gw, req, pr, rid, REF_ENDED, 409, "ended",
					  "the sale has ended", -1, -1);
		return false;
	}
	if (p->remaining <= 0) {
		/*
		 * Held units may come back when their holds end: say when. A
		 * buyer's own id may be a retry of a purchase that got in, which
		 * must get its first answer: it is looked up first, one HGET
		 * pipelined with the loop turn's others (an admission call costs
		 * Redis several times more per refusal: bench/run soldout).
		 */
		bool back = p->held > 0;
		/* Nothing can come back: no Retry-After, which would invite a retry storm. */
		int64_t retry = !back ? -1 : p->earliest_ms > now ? p->earliest_ms - now : 0;

		refuse_unless_known_later(gw, req, pr, rid, REF_SOLD_OUT, 409, "sold_out",
					  back ? "sold out for now: held units may come back" :
					  "sold out", retry, back);
		return false;
	}
	if (pr->qty > p->limit) {
		snprintf(err, sizeof(err), "qty is above the per-user limit of %" PRId64, p->limit);
		refuse(req, REF_LIMIT, 409, "limit_reached", err, false);
		return false;
	}
	return true;
}

static void route_purchase(struct gateway *gw, struct evhttp_request *req)
{
	struct purchase_req pr;
	const struct promo *p;
	struct pending *pd;
	const char *body, *code = NULL;
	char err[256], user[FS_ID_MAX + 1], rid[27], ip[GW_IP_MAX] = "";
	size_t len;
	int64_t rate, mono = mono_us();

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
	auth_scoped_id(&gw->auth, user, pr.request_id, rid);
	if (!promo_fresh(&gw->promo)) {
		if (!pr.generated_id && routes_recent_known(gw, rid)) {
			/* Redis is away, but this retry's purchase got its 202 here. */
			cJSON *o = cJSON_CreateObject();

			cJSON_AddStringToObject(o, "request_id", pr.request_id);
			cJSON_AddStringToObject(o, "state", "queued");
			metric_add(&m_replays, 1);
			call_reply_now(req, ROUTE_PURCHASE, 202, o, false);
			return;
		}
		refuse(req, REF_STALE_CACHE, 503, "busy", FRIENDLY, false);
		return;
	}
	/*
	 * A SKU this loop's cache does not know may be newer than the cache
	 * (created a moment ago through another loop or gateway): admission
	 * reads Redis and answers 404 unknown_sku if it does not exist.
	 */
	promo_catch_up(gw);
	p = promo_find(&gw->promo, pr.sku);
	if (p != NULL && !purchase_filters(gw, req, &pr, p, rid))
		return;
	/* Layered rates, each the promotion's own or the gateway's default. */
	rate = p != NULL && p->user_rate_per_s > 0 ? p->user_rate_per_s : gw->cfg.user_rate_per_s;
	if (!ratelimit_take_rate(gw->rl, pr.user_id, mono, (double)rate,
				 p != NULL && p->user_rate_per_s > 0 ? (double)(2 * rate) :
				 (double)gw->cfg.user_burst)) {
		refuse_unless_known_later(gw, req, &pr, rid, REF_RATE_LIMITED, 429, "rate_limited",
					  FRIENDLY, 1000, -1);
		return;
	}
	rate = p != NULL && p->ip_rate_per_s > 0 ? p->ip_rate_per_s : gw->cfg.ip_rate_per_s;
	if (rate > 0 && gw_conns_client_ip(&gw->conns, req, ip) &&
	    !ratelimit_take_rate(gw->ip_rl, ip, mono, (double)rate, (double)(2 * rate))) {
		refuse_unless_known_later(gw, req, &pr, rid, REF_IP_RATE, 429, "try_later", FRIENDLY,
					  1000, -1);
		return;
	}
	if (gw->port->inflight >= gw->cfg.max_inflight) {
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
	pd->qty = pr.qty;
	pd->received_us = mono;
	(void)gw_conns_client_ip(&gw->conns, req, pd->ip);
	call_init(&pd->call, gw, req, ROUTE_PURCHASE);
	/*
	 * A new request id (Redis has no record of it) with budget this loop
	 * holds goes to Kafka now; its marker is written meanwhile. A client
	 * id Redis may know is a retry: admission answers it with its state.
	 */
	if (p != NULL && (pr.generated_id || (gw->cfg.known_ids &&
					      !known_may_exist(&gw->known, rid, mono))) &&
	    admit_lease_take(&gw->adm, pd->sku, pd->qty, mono, pd->lease)) {
		pd->leased = true;
		pd->waits = 2;
		if (purchase_produce(gw, pd))
			admit_mark(&gw->adm, pd->sku, pd->request_id, pd->qty, pd->lease, pd);
		return;
	}
	/* The shared budget decides, with this turn's other purchases. */
	admit_submit(&gw->adm, pd->sku, pd->request_id, pd->qty, pd);
}

/*
 * Produce an admitted purchase; answered from the delivery report. false
 * when it could not be: answered 503 and freed.
 */
static bool purchase_produce(struct gateway *gw, struct pending *pd)
{
	char err[256];
	fs_intent in = FLASHSALE__INTENT__INIT;

	in.kind = FLASHSALE__INTENT__KIND__PURCHASE;
	in.request_id = pd->request_id;
	in.sku = pd->sku;
	in.user_id = pd->user_id;
	in.qty = (uint32_t)pd->qty;
	in.client_ip = pd->ip;
	in.sent_at_ms = now_ms();
	in.source = (char *)"gateway";
	pd->produced_us = mono_us();
	if (producer_send(gw->port, &in, pd, err, sizeof(err)) < 0) {
		log_warn("produce_failed", "request_id=%s err=\"%s\"", pd->request_id, err);
		/* (A leased unit not produced stays in its lease, returned with it.) */
		if (!pd->resend && !pd->leased)
			admit_release(&gw->adm, pd->sku, pd->request_id);
		metric_add(&m_refusals[REF_QUEUE_UNAVAILABLE], 1);
		call_reply(&pd->call, 503, queue_unavailable_body(pd->client_id));
		free(pd);
		return false;
	}
	return true;
}

/* An admission's refusal that may lift. */
static void refuse_later(struct pending *pd, enum refusal why, int code, const char *error,
			 const char *reason, int64_t retry_ms, int may_return)
{
	metric_add(&m_refusals[why], 1);
	call_refusal(&pd->call, code, error, reason, retry_ms < 0 ? 0 : retry_ms, may_return);
}

/* Degraded admission while the Redis state is rebuilt (see routes_on_admitted). */
static bool purchase_admit_degraded(struct gateway *gw, struct pending *pd)
{
	const struct promo *p = promo_find(&gw->promo, pd->sku);
	int64_t k = p != NULL && p->k_pct > 0 ? p->k_pct : gw->cfg.admission_k_pct;
	int64_t used = strmap_get(&gw->degraded, pd->sku, 0), now_used;

	if (p == NULL || p->remaining <= 0 ||
	    used + pd->qty > (p->remaining * k + 99) / 100 ||
	    strmap_add(&gw->degraded, pd->sku, pd->qty, &now_used) < 0)
		return false;
	return true;
}

void routes_on_admitted(void *arg, void *opaque, const struct admit_result *r)
{
	struct gateway *gw = arg;
	struct pending *pd = opaque;
	cJSON *o;

	if (pd->leased) {
		/* Its marker: the purchase is in Kafka, or on its way. */
		pd->mark = r->verdict;
		if (r->verdict == ADMIT_KNOWN)
			snprintf(pd->state, sizeof(pd->state), "%s", r->state);
		if (--pd->waits == 0)
			purchase_delivered(gw, pd, pd->dr_err, pd->dr_maybe_stored);
		return;
	}
	metric_observe_us(&m_admission_latency, (uint64_t)(mono_us() - pd->received_us));
	if (r->verdict != ADMIT_NOT_READY && strmap_count(&gw->degraded) > 0)
		strmap_clear(&gw->degraded);    /* the state is back */
	switch (r->verdict) {
	case ADMIT_OK:
		(void)purchase_produce(gw, pd);
		return;       /* pd lives on until the delivery report */
	case ADMIT_NOT_READY:
		/*
		 * Redis lost its state and is being rebuilt: the deductor
		 * waits, and purchases queue in Kafka meanwhile, as they did
		 * before the funnel. This gateway admits alone, against the
		 * remaining units it last saw: k x remaining per SKU in all
		 * while it lasts. Their budget is not counted in Redis (the
		 * rebuilt state starts at 0): more buyers, never more sales.
		 */
		if (purchase_admit_degraded(gw, pd)) {
			(void)purchase_produce(gw, pd);
			return;
		}
		refuse_later(pd, REF_CLAIMED, 429, "try_later",
			     "every unit left is claimed by buyers ahead of you; " FRIENDLY, 1000, 1);
		break;
	case ADMIT_KNOWN:
		if (strcmp(r->state, "queued") == 0) {
			/*
			 * Admitted, not yet decided: its first send may still be
			 * waiting for Kafka, or may have failed. A 202 must mean
			 * "in Kafka", so the retry is sent again (the deductor
			 * applies a request id once) and answered from its own
			 * delivery report.
			 */
			metric_add(&m_replays, 1);
			pd->resend = true;
			(void)purchase_produce(gw, pd);
			return;
		}
		/* A retry of a decided purchase: 202 with its current state. */
		o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "request_id", pd->client_id);
		cJSON_AddStringToObject(o, "state", r->state);
		metric_add(&m_replays, 1);
		call_reply(&pd->call, 202, o);
		break;
	case ADMIT_SOLD_OUT:
		promo_note_counts(&gw->promo, pd->sku, 0, r->may_return ? 1 : 0,
				  r->may_return ? gateway_now_ms(gw) + r->retry_after_ms : 0,
				  "admission");
		refuse_later(pd, REF_SOLD_OUT, 409, "sold_out",
			     r->may_return ? "sold out for now: held units may come back" :
			     "sold out", r->may_return ? r->retry_after_ms : -1, r->may_return);
		break;
	case ADMIT_CLAIMED:
		refuse_later(pd, REF_CLAIMED, 429, "try_later",
			     "every unit left is claimed by buyers ahead of you; " FRIENDLY,
			     r->retry_after_ms, 1);
		break;
	case ADMIT_SKU_RATE:
		refuse_later(pd, REF_SKU_RATE, 429, "try_later", FRIENDLY, r->retry_after_ms, -1);
		break;
	case ADMIT_INFLIGHT:
		refuse_later(pd, REF_INFLIGHT, 503, "busy", FRIENDLY, r->retry_after_ms, -1);
		break;
	case ADMIT_UNKNOWN_SKU:
		metric_add(&m_refusals[REF_UNKNOWN_SKU], 1);
		call_error(&pd->call, 404, "unknown_sku", "no promotion for this sku");
		break;
	case ADMIT_UNAVAILABLE:
	default:
		if (routes_recent_known(gw, pd->request_id)) {
			/* A retry of a purchase that got its 202 here: it still has it. */
			o = cJSON_CreateObject();
			cJSON_AddStringToObject(o, "request_id", pd->client_id);
			cJSON_AddStringToObject(o, "state", "queued");
			metric_add(&m_replays, 1);
			call_reply(&pd->call, 202, o);
			break;
		}
		/* Fail closed: no budget to check against, no purchase to Kafka. */
		refuse_later(pd, REF_BUSY, 503, "busy", FRIENDLY, 1000, -1);
		break;
	}
	free(pd);
}

void routes_on_delivery(void *arg, void *msg_opaque, rd_kafka_resp_err_t err,
			bool maybe_stored)
{
	struct gateway *gw = arg;
	struct pending *pd = msg_opaque;

	metric_observe_us(&m_produce_latency, (uint64_t)(mono_us() - pd->produced_us));
	if (pd->leased) {
		pd->dr_err = err;
		pd->dr_maybe_stored = maybe_stored;
		if (--pd->waits > 0)
			return;    /* its marker's verdict answers it */
	}
	purchase_delivered(gw, pd, err, maybe_stored);
}

/* What Kafka said of a produced intent, answered (and pd freed). */
static void purchase_delivered(struct gateway *gw, struct pending *pd, rd_kafka_resp_err_t err,
			       bool maybe_stored)
{
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		log_warn("delivery_failed", "request_id=%s kind=%s err=%s", pd->request_id,
			 intent_kind_name(pd->kind), rd_kafka_err2name(err));
		if (pd->kind == FLASHSALE__INTENT__KIND__PURCHASE)
			metric_add(&m_refusals[REF_QUEUE_UNAVAILABLE], 1);
		/* A resend's first send may be in Kafka: its budget is the heal's. */
		if (pd->kind == FLASHSALE__INTENT__KIND__PURCHASE && !maybe_stored && !pd->resend &&
		    (!pd->leased || pd->mark == ADMIT_OK))
			admit_release(&gw->adm, pd->sku, pd->request_id);
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
	if (pd->kind == FLASHSALE__INTENT__KIND__PURCHASE) {
		/* A leased purchase whose id had a record: that record's state. */
		const char *kv[] = { "request_id", pd->client_id, "state",
				     pd->leased && pd->mark == ADMIT_KNOWN ? pd->state : "queued" };

		/* The purchase is in Kafka: it will be decided whether or not the
		 * client stays. Its "queued" marker came with its admission, or
		 * goes when Redis is back. */
		if (pd->leased && (pd->mark == ADMIT_UNAVAILABLE || pd->mark == ADMIT_NOT_READY))
			admit_mark_again(&gw->adm, pd->sku, pd->request_id, pd->qty, pd->lease);
		metric_add(&m_accepted, 1);
		metric_observe_us(&m_accept_latency, (uint64_t)(mono_us() - pd->received_us));
		routes_recent_note(gw, pd->request_id);
		call_reply_strings(&pd->call, 202, kv, 2);
	} else {
		const char *kv[] = { "request_id", pd->client_id, "state", pd->state, "requested",
				     pd->kind == FLASHSALE__INTENT__KIND__PAY ? "pay" : "cancel" };

		call_reply_strings(&pd->call, 202, kv, 3);
	}
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

static void pending_free(struct pending *pd)
{
	waiters_remove(&pd->call.gw->waiters, &pd->waiter);
	if (pd->wait_ev != NULL)
		event_free(pd->wait_ev);
	free(pd);
}

static void purchase_get_cb(redisAsyncContext *ac, void *reply, void *privdata);

/* A long poll's next look: the same HGETALL, a little later each time. */
static void purchase_wait_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pending *pd = arg;
	struct gateway *gw = pd->call.gw;
	char key[FS_ID_MAX + 16];
	const char *getall[] = { "HGETALL", key };

	(void)fd;
	(void)what;
	snprintf(key, sizeof(key), "fs:req:%s", pd->request_id);
	if (pd->call.dead) {
		pending_free(pd);      /* nobody is waiting any more */
		return;
	}
	if (gw_store_command_argv(&gw->store, purchase_get_cb, pd, 2, getall, NULL) < 0) {
		call_error(&pd->call, 503, "store_unavailable", "Redis is unavailable; retry later");
		pending_free(pd);
		return;
	}
	pd->reading = true;
	gw->redis_pending++;
}

/*
 * Keep a long poll waiting: true when pd was scheduled for another look
 * (the state is still from_state, time is left, the client is there).
 * The deductor's push (fs:st) wakes it when its purchase moves
 * (routes_purchase_moved); it still looks once a second in case a push
 * was lost. Without the pushes, looks back off from 20 ms to 200 ms: a
 * crowd of waiters costs Redis a few pipelined reads a second each, not a
 * request per client poll.
 */
static bool purchase_keep_waiting(struct pending *pd, const char *state)
{
	struct gateway *gw = pd->call.gw;
	struct timeval tv;
	int64_t left = pd->wait_until_us - mono_us();

	if (pd->wait_until_us == 0 || left <= 0 || pd->call.dead || gw->draining ||
	    strcmp(state, pd->from_state) != 0)
		return false;
	if (pd->wait_ev == NULL &&
	    (pd->wait_ev = evtimer_new(gw->base, purchase_wait_cb, pd)) == NULL)
		return false;
	if (pd->woken)
		pd->wait_step_ms = 0;   /* it moved after Redis answered this read */
	else if (gw->push.live)
		pd->wait_step_ms = WAIT_LOOK_PUSHED_MS;
	else
		pd->wait_step_ms = pd->wait_step_ms == 0 ? 20 :
				   pd->wait_step_ms * 2 > 200 ? 200 : pd->wait_step_ms * 2;
	pd->woken = false;
	if (pd->wait_step_ms * 1000LL > left)
		pd->wait_step_ms = (int)(left / 1000) + 1;
	tv.tv_sec = pd->wait_step_ms / 1000;
	tv.tv_usec = (pd->wait_step_ms % 1000) * 1000;
	return evtimer_add(pd->wait_ev, &tv) == 0;
}

static void purchase_get_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct pending *pd = privdata;
	redisReply *r = reply;
	const char *v;
	cJSON *o;

	pd->call.gw->redis_pending--;
	pd->reading = false;
	if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
		call_error(&pd->call, 503, "store_unavailable", "Redis is unavailable; retry later");
		pending_free(pd);
		return;
	}
	if (r->elements > 0 && (v = pair_get(r, "st")) != NULL &&
	    ((v = pair_get(r, "user")) == NULL || strcmp(v, pd->owner) == 0) &&
	    purchase_keep_waiting(pd, pair_get(r, "st")))
		return;
	if (r->elements == 0 && routes_recent_known(pd->call.gw, pd->request_id)) {
		/* Answered 202 here, no record yet (routes_recent_note). */
		const char *kv[] = { "request_id", pd->client_id, "state", "queued" };

		if (purchase_keep_waiting(pd, "queued"))
			return;
		call_reply_strings(&pd->call, 200, kv, 2);
		pending_free(pd);
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
		pending_free(pd);
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
	pending_free(pd);
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
	if (st->type != REDIS_REPLY_STRING && !routes_recent_known(gw, pd->request_id)) {
		call_error(&pd->call, 404, "unknown_request", "no purchase with this request_id");
		free(pd);
		return;
	}
	/* (No record but answered 202 here: queued too, as a GET says.) */
	if (st->type != REDIS_REPLY_STRING || strcmp(st->str, "queued") == 0 ||
	    sku->type != REDIS_REPLY_STRING ||
	    !valid_sku(sku->str)) {
		call_error(&pd->call, 409, "not_reserved_yet",
			   "the purchase is still queued: poll until reserved");
		free(pd);
		return;
	}
	if (gw->draining || gw->port->inflight >= gw->cfg.max_inflight) {
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
	if (producer_send(gw->port, &in, pd, err, sizeof(err)) < 0) {
		log_warn("produce_failed", "request_id=%s err=\"%s\"", pd->request_id, err);
		call_reply(&pd->call, 503, queue_unavailable_body(pd->client_id));
		free(pd);
	}
}

/* GET /v1/purchases/{rid} and POST .../pay, .../cancel: a Redis read first. */
/*
 * GET /v1/purchases/{id}?wait_ms=N&from=S: a long poll that answers as soon
 * as the purchase's state is not S (default "queued"), or after N ms (at
 * most gateway.max_wait_ms). -1 on a malformed query.
 */
static int purchase_wait_args(struct gateway *gw, struct evhttp_request *req,
			      struct pending *pd)
{
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *q = uri != NULL ? evhttp_uri_get_query(uri) : NULL;
	struct evkeyvalq args;
	const char *w, *from;
	char *end;
	long long ms;
	int rc = 0;

	if (q == NULL || q[0] == '\0')
		return 0;
	TAILQ_INIT(&args);
	if (evhttp_parse_query_str(q, &args) < 0)
		return -1;
	w = evhttp_find_header(&args, "wait_ms");
	from = evhttp_find_header(&args, "from");
	if (from == NULL)
		from = "queued";
	if (w != NULL) {
		ms = strtoll(w, &end, 10);
		if (*w == '\0' || *end != '\0' || ms < 0 || ms > gw->cfg.max_wait_ms ||
		    strlen(from) >= sizeof(pd->from_state) ||
		    strspn(from, "abcdefghijklmnopqrstuvwxyz_") != strlen(from)) {
			rc = -1;
		} else if (ms > 0) {
			pd->wait_until_us = mono_us() + ms * 1000;
			snprintf(pd->from_state, sizeof(pd->from_state), "%s", from);
		}
	}
	evhttp_clear_headers(&args);
	return rc;
}

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
	auth_scoped_id(&gw->auth, user, rid, pd->request_id);
	strcpy(pd->client_id, rid);
	strcpy(pd->owner, user);
	snprintf(key, sizeof(key), "fs:req:%s", pd->request_id);
	if (route == ROUTE_PURCHASE_GET) {
		if (purchase_wait_args(gw, req, pd) < 0) {
			free(pd);
			call_error_now(req, route, 400, "invalid_field",
				       "wait_ms wants 0.." "gateway.max_wait_ms and from a state name",
				       false);
			return;
		}
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
	if (pd->wait_until_us > 0) {
		/* Registered from the first read on, so no push falls between two reads. */
		pd->reading = true;
		waiters_add(&gw->waiters, &pd->waiter, pd->request_id);
	}
}

/* One long poll of a purchase that moved: look now, or right after the read that is out. */
static void routes_wake_one(struct waiter *w, void *arg)
{
	struct gateway *gw = arg;
	struct pending *pd = (struct pending *)((char *)w - offsetof(struct pending, waiter));

	/* It waits until answered: the purchase may not have left from_state. */
	waiters_add(&gw->waiters, w, pd->request_id);
	if (pd->reading) {
		pd->woken = true;
	} else if (pd->wait_ev != NULL) {
		evtimer_del(pd->wait_ev);
		event_active(pd->wait_ev, EV_TIMEOUT, 1);
	}
}

void routes_purchase_moved(struct gateway *gw, const char *request_id)
{
	metric_add(&m_wakes, (int64_t)waiters_wake(&gw->waiters, request_id, routes_wake_one, gw));
}

void routes_wake_all(struct gateway *gw)
{
	metric_add(&m_wakes, (int64_t)waiters_wake_all(&gw->waiters, routes_wake_one, gw));
}

/* The answer of GET /v1/promotions/{sku} for a promotion p (req still open). */
static void promo_answer(struct gateway *gw, struct evhttp_request *req, const struct promo *p)
{
	struct evkeyvalq *h;
	const char *status, *inm;
	char etag[160];
	bool final;
	int64_t now;
	cJSON *o;

	/*
	 * Counters are as of the last refresh or push. A CDN may serve this:
	 * a validator from everything the answer holds, and a short life while
	 * units can still move (a final state keeps longer).
	 */
	now = gateway_now_ms(gw);
	status = promo_status(p, now);
	snprintf(etag, sizeof(etag), "\"%" PRId64 "-%" PRId64 "-%" PRId64 "-%" PRId64 "-%" PRId64
		 "-%s\"", p->initial, p->remaining, p->held, p->sold, p->end_ms, status);
	final = strcmp(status, "ended") == 0 || (p->remaining <= 0 && p->held <= 0);
	h = evhttp_request_get_output_headers(req);
	evhttp_add_header(h, "ETag", etag);
	evhttp_add_header(h, "Cache-Control", final ? "public, max-age=30" :
			  "public, max-age=1, stale-while-revalidate=1");
	inm = evhttp_find_header(evhttp_request_get_input_headers(req), "If-None-Match");
	if (inm != NULL && strcmp(inm, etag) == 0) {
		call_reply_now(req, ROUTE_PROMO_GET, 304, NULL, false);
		return;
	}
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
	cJSON_AddStringToObject(o, "status", status);
	if (p->remaining <= 0 && p->held > 0) {
		/* Sold out for now: held units come back if their buyers do not pay. */
		cJSON_AddBoolToObject(o, "may_return", true);
		cJSON_AddNumberToObject(o, "retry_after_ms",
					(double)(p->earliest_ms > now ? p->earliest_ms - now : 0));
	}
	call_reply_now(req, ROUTE_PROMO_GET, 200, o, false);
}

/*
 * A SKU this loop's cache does not know yet may have been created a moment
 * ago (through another loop, or another gateway): Redis says, and the
 * answer goes into the cache. Unknown there too: 404.
 */
static void promo_get_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct pending *pd = privdata;
	struct gateway *gw = pd->call.gw;
	redisReply *r = reply;
	struct promo p;

	(void)ac;
	gw->redis_pending--;
	memset(&p, 0, sizeof(p));
	snprintf(p.sku, sizeof(p.sku), "%s", pd->sku);
	if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 8) {
		call_error(&pd->call, 503, "busy", FRIENDLY);
	} else if (r->element[0]->type == REDIS_REPLY_NIL || !promo_from_replies(&p, r->element)) {
		call_error(&pd->call, 404, "unknown_sku", "no promotion for this sku");
	} else {
		p.added_us = mono_us();    /* a refresh under way keeps it (promo.c) */
		if (promo_put(&gw->promo, &p) < 0)
			log_warn("promo_cache_oom", "sku=%s", p.sku);
		if (pd->call.req != NULL) {
			/* Answered here, headers and all: the call is over. */
			if (pd->call.evcon != NULL)
				evhttp_connection_set_closecb(pd->call.evcon, NULL, NULL);
			promo_answer(gw, pd->call.req, &p);
		}
	}
	free(pd);
}

static void route_promo_get(struct gateway *gw, struct evhttp_request *req, const char *sku)
{
	const struct promo *p;
	const char *argv[] = { "HMGET", NULL, "initial", "remaining", "held", "sold", "limit",
			       "start_ms", "end_ms", "hold_ms" };
	char key[FS_ID_MAX + 16];
	struct pending *pd;

	promo_catch_up(gw);
	p = valid_sku(sku) ? promo_find(&gw->promo, sku) : NULL;
	if (p != NULL) {
		promo_answer(gw, req, p);
		return;
	}
	if (!valid_sku(sku) || !gw_store_ready(&gw->store) ||
	    gw->redis_pending >= gw->cfg.max_inflight || (pd = calloc(1, sizeof(*pd))) == NULL) {
		call_error_now(req, ROUTE_PROMO_GET, 404, "unknown_sku",
			       "no promotion for this sku", false);
		return;
	}
	snprintf(pd->sku, sizeof(pd->sku), "%s", sku);
	snprintf(key, sizeof(key), "fs:promo:%s", sku);
	argv[1] = key;
	if (gw_store_command_argv(&gw->store, promo_get_cb, pd, 10, argv, NULL) < 0) {
		free(pd);
		call_error_now(req, ROUTE_PROMO_GET, 503, "busy", FRIENDLY, false);
		return;
	}
	gw->redis_pending++;
	call_init(&pd->call, gw, req, ROUTE_PROMO_GET);
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

	char sku[FS_ID_MAX + 1];
	const char *rest;
	size_t n;

	if (path == NULL) {
		call_error_now(req, ROUTE_OTHER, 404, "not_found", "no such resource", false);
		return;
	}
	sku[0] = '\0';
	if (strcmp(path, "/admin/promotions") != 0) {
		/* /admin/promotions/{sku}/limits */
		if (strncmp(path, "/admin/promotions/", 18) != 0 ||
		    (rest = strchr(path + 18, '/')) == NULL || strcmp(rest, "/limits") != 0 ||
		    (n = (size_t)(rest - (path + 18))) == 0 || n > FS_ID_MAX) {
			call_error_now(req, ROUTE_OTHER, 404, "not_found", "no such resource", false);
			return;
		}
		memcpy(sku, path + 18, n);
		sku[n] = '\0';
	}
	if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
		call_error_now(req, ROUTE_OTHER, 405, "method_not_allowed",
			       "method not allowed here", false);
		return;
	}
	admin_handle(gw, req, sku[0] != '\0' ? sku : NULL);
}
