/*
 * Buyers as small state machines on one event loop.
 *
 * Each buyer has at most one call outstanding: it is waiting for its
 * arrival, waiting on a timer (poll interval, retry backoff), queued for a
 * free connection, or in flight. The FIFO of buyers wanting a connection is
 * a linked list through the buyer array, so a run allocates nothing per
 * request beyond what libevent does.
 *
 * Purchase latency is measured from the buyer's scheduled arrival, so time
 * spent queued inside the generator (all connections busy) counts against
 * the gateway: a slow gateway cannot make the generator send less and hide
 * its own slowness (coordinated omission).
 *
 * Memory is bounded per buyer: a 56-byte buyer, one purchase and at most
 * one final latency sample (8 bytes each); per-request samples go to a
 * fixed-size reservoir, per-interval ones to a reused buffer.
 */
#include "loadgen_run.h"
#include "loadgen_http.h"
#include "loadgen_token.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <netdb.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

#include <cJSON.h>
#include <event2/event.h>
#include <event2/http.h>

enum lg_job {
	JOB_NONE = 0,
	JOB_PURCHASE,
	JOB_POLL,
	JOB_PAY,
	JOB_CANCEL,
};

enum lg_plan {
	PLAN_EXPIRE = 0,
	PLAN_PAY,
	PLAN_CANCEL,
};

enum lg_phase {
	PH_ARRIVING = 0,
	PH_PURCHASE,		/* first send, its retries */
	PH_DUPLICATE,		/* second send, its retries */
	PH_FOLLOW,		/* accepted: polling, paying, cancelling */
	PH_DONE,
};

#define LG_NO_BUYER (-1)
#define LG_BACKOFF_BASE_US 50000
#define LG_BACKOFF_MAX_US 1000000
#define LG_REQUEST_SAMPLES (2u << 20)	/* request latency reservoir (16 MB) */
#define LG_REASONS 64			/* distinct first-answer reasons kept */
#define LG_REASON_OTHER 255

struct lg_run;

struct lg_buyer {
	struct lg_run *run;
	int32_t next;			/* ready-queue link */
	uint32_t user;
	uint32_t sku;
	uint16_t qty;
	int16_t first_status;
	uint8_t phase;
	uint8_t job;			/* the call it wants or has in flight */
	uint8_t plan;
	bool dup;			/* sends its purchase twice */
	bool accepted;
	bool first_answered;
	bool action_done;		/* pay/cancel settled (202 or given up) */
	bool action_refused;		/* ... and it was refused: stop waiting */
	bool seen_reserved;		/* a poll said reserved: decided, no more long polls */
	uint8_t tries;			/* retries of the current call */
	uint8_t first_reason;		/* index into lg_run.reasons */
	int64_t sched_us;		/* scheduled arrival */
	int64_t accepted_us;
};

struct lg_slot {
	struct lg_run *run;
	struct lg_http http;
	int32_t buyer;			/* LG_NO_BUYER when idle */
	uint8_t pool;			/* LG_POOL_CALLS or LG_POOL_WAITS */
	int64_t sent_us;
};

/*
 * Connections and the buyers waiting for one. Long polls have a pool of
 * their own (--wait-concurrency): each holds its connection until the
 * purchase is decided, as each buyer's device would, without taking the
 * connections that stand for the crowd's clicks.
 */
enum { LG_POOL_CALLS = 0, LG_POOL_WAITS, LG_POOLS };

struct lg_pool {
	uint32_t *idle;			/* stack of idle slot indexes */
	uint32_t nidle;
	int32_t qhead, qtail;		/* FIFO of buyers through lg_buyer.next */
};

struct lg_run {
	const struct lg_config *cf;
	struct lg_result *res;
	struct event_base *base;
	struct evhttp_uri *uri;
	const char *host;
	int port;
	struct sockaddr_storage addr;	/* host:port, resolved once */
	socklen_t addrlen;
	char host_header[300];
	char prefix[256];		/* path prefix from the URL, no trailing '/' */

	struct lg_buyer *buyers;
	uint32_t released;		/* buyers whose arrival came */
	uint32_t done;

	struct lg_slot *slots;
	uint32_t nslots;
	struct lg_pool pools[LG_POOLS];

	struct event *pump_ev;
	struct event *arrive_ev;
	struct event *progress_ev;
	struct event *sigint_ev;
	struct event *sigterm_ev;
	bool stopping;

	int64_t t0_us;
	int64_t first_send_us;
	int64_t last_done_us;
	uint64_t rng;			/* backoff jitter */
	struct event *deadline_ev;	/* fails the calls past --timeout-ms */

	int64_t prog_last_us;
	uint64_t prog_last_sent;

	/* first answers' reasons, interned so a buyer keeps one byte */
	char reasons[LG_REASONS][LG_NAME_MAX];
	uint32_t nreasons;

	/* --timeseries: one CSV row per tick, from the first request on */
	FILE *ts;
	struct event *tick_ev;
	struct timeval tick_tv;
	int64_t tick_last_us;
	uint64_t tick_last_answers;
	uint64_t iv_purchase_answers;
	struct lg_samples iv_purchase_lat;


};

static const char *const final_states[] = {
	"paid", "cancelled", "expired", "sold_out", "limit_reached",
	"not_started", "ended", "unknown_sku",
};

static int64_t
mono_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* splitmix64: tiny, seedable, good enough for decisions and jitter. */
static uint64_t
rng_next(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static double
rng_unit(uint64_t *s)
{
	return (double)(rng_next(s) >> 11) / 9007199254740992.0;
}

static uint32_t
rng_below(uint64_t *s, uint32_t n)
{
	return n ? (uint32_t)(rng_next(s) % n) : 0;
}

static uint32_t
buyer_index(const struct lg_run *r, const struct lg_buyer *b)
{
	return (uint32_t)(b - r->buyers);
}

static void
schedule_pump(struct lg_run *r)
{
	if (!r->stopping && !event_pending(r->pump_ev, EV_TIMEOUT, NULL))
		event_active(r->pump_ev, EV_TIMEOUT, 0);
}

/* A long poll: while the purchase is undecided, with --wait-ms. */
static bool
buyer_long_polls(const struct lg_run *r, const struct lg_buyer *b)
{
	return b->job == JOB_POLL && r->cf->wait_ms > 0 && !b->seen_reserved;
}

/* The pool b's next call goes through. */
static struct lg_pool *
buyer_pool(struct lg_run *r, const struct lg_buyer *b)
{
	return &r->pools[r->cf->wait_concurrency > 0 && buyer_long_polls(r, b) ?
			 LG_POOL_WAITS : LG_POOL_CALLS];
}

static void
queue_push(struct lg_run *r, struct lg_buyer *b)
{
	struct lg_pool *q = buyer_pool(r, b);
	int32_t i = (int32_t)buyer_index(r, b);

	b->next = LG_NO_BUYER;
	if (q->qtail == LG_NO_BUYER)
		q->qhead = i;
	else
		r->buyers[q->qtail].next = i;
	q->qtail = i;
	schedule_pump(r);
}

/* For a reaction to an answer (a client retry, a pay): no waiting in line. */
static void
queue_push_front(struct lg_run *r, struct lg_buyer *b)
{
	struct lg_pool *q = buyer_pool(r, b);
	int32_t i = (int32_t)buyer_index(r, b);

	b->next = q->qhead;
	q->qhead = i;
	if (q->qtail == LG_NO_BUYER)
		q->qtail = i;
	schedule_pump(r);
}

static struct lg_buyer *
queue_pop(struct lg_run *r, struct lg_pool *q)
{
	struct lg_buyer *b;

	if (q->qhead == LG_NO_BUYER)
		return NULL;
	b = &r->buyers[q->qhead];
	q->qhead = b->next;
	if (q->qhead == LG_NO_BUYER)
		q->qtail = LG_NO_BUYER;
	return b;
}

static void
buyer_done(struct lg_run *r, struct lg_buyer *b)
{
	b->phase = PH_DONE;
	b->job = JOB_NONE;
	r->done++;
	r->last_done_us = mono_now_us();
	if (r->done == r->cf->buyers)
		event_base_loopexit(r->base, NULL);
}

static void buyer_timer_cb(evutil_socket_t fd, short what, void *arg);

/* Run `job` for b after delay_us (0: queue it now). */
static void
buyer_after(struct lg_run *r, struct lg_buyer *b, enum lg_job job, int64_t delay_us)
{
	struct timeval tv;

	b->job = (uint8_t)job;
	if (delay_us <= 0) {
		queue_push_front(r, b);
		return;
	}
	tv.tv_sec = (time_t)(delay_us / 1000000);
	tv.tv_usec = (suseconds_t)(delay_us % 1000000);
	if (event_base_once(r->base, -1, EV_TIMEOUT, buyer_timer_cb, b, &tv) < 0)
		queue_push(r, b);	/* no timer: go now rather than stall */
}

static int64_t
backoff_us(struct lg_run *r, unsigned attempt)
{
	int64_t d = LG_BACKOFF_BASE_US << (attempt > 5 ? 5 : attempt);

	if (d > LG_BACKOFF_MAX_US)
		d = LG_BACKOFF_MAX_US;
	/* jitter so a burst of 503s does not come back as one burst */
	return d / 2 + (int64_t)rng_below(&r->rng, (uint32_t)(d / 2 + 1));
}

static bool
follow_timed_out(struct lg_run *r, struct lg_buyer *b)
{
	return mono_now_us() - b->accepted_us >=
		(int64_t)r->cf->final_timeout_s * 1000000;
}

static void
schedule_poll(struct lg_run *r, struct lg_buyer *b, int64_t delay_us)
{
	if (follow_timed_out(r, b)) {
		r->res->unfinished++;
		buyer_done(r, b);
		return;
	}
	b->tries = 0;
	buyer_after(r, b, JOB_POLL, delay_us);
}

static void
buyer_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct lg_buyer *b = arg;
	struct lg_run *r = b->run;

	if (r->stopping)
		return;
	if (b->job == JOB_POLL && follow_timed_out(r, b)) {
		r->res->unfinished++;
		buyer_done(r, b);
		return;
	}
	/*
	 * A pay or cancel goes before the crowd's first clicks: the buyer acts
	 * on their own device, within the hold. Polls wait their turn (a long
	 * poll for the decision in its own pool, --wait-concurrency): with a
	 * million first clicks queued, a winner's poll in their line came back
	 * after the hold had expired, and nobody could pay; thousands of
	 * polls ahead of the line starved it instead.
	 */
	if (b->job == JOB_PAY || b->job == JOB_CANCEL)
		queue_push_front(r, b);
	else
		queue_push(r, b);
}

/* ---- sending ---- */

static void on_response(void *arg, int code, const char *body, size_t len);

/* A slot's connection: connected by its first call, again after a failure. */
static void
slot_init(struct lg_run *r, struct lg_slot *s)
{
	lg_http_init(&s->http, r->base, (const struct sockaddr *)&r->addr, r->addrlen,
		on_response, s);
}

static void handle_answer(struct lg_run *r, struct lg_buyer *b, int code,
	const char *body);

static void
count_send(struct lg_run *r, struct lg_buyer *b)
{
	struct lg_result *res = r->res;

	res->sent++;
	if (b->tries > 0) {
		res->sent_retry++;
		return;
	}
	switch (b->job) {
	case JOB_PURCHASE:
		if (b->phase == PH_DUPLICATE)
			res->sent_duplicate++;
		else
			res->sent_purchase++;
		break;
	case JOB_POLL:
		res->sent_poll++;
		break;
	case JOB_PAY:
		res->sent_pay++;
		break;
	case JOB_CANCEL:
		res->sent_cancel++;
		break;
	default:
		break;
	}
}

/* Start b's call on slot s. Returns -1 if libevent refused the request. */
static int
slot_send(struct lg_run *r, struct lg_slot *s, struct lg_buyer *b)
{
	const struct lg_config *cf = r->cf;
	uint32_t bi = buyer_index(r, b);
	bool post = true;
	char path[512], body[512], user[96], auth[640], req[2048];
	int blen = -1, n;

	switch (b->job) {
	case JOB_PURCHASE:
		snprintf(path, sizeof(path), "%s/v1/purchases", r->prefix);
		blen = snprintf(body, sizeof(body),
			"{\"sku\":\"%s\",\"user_id\":\"%s%u\",\"qty\":%u,"
			"\"request_id\":\"%s-%u\"}",
			cf->skus[b->sku], cf->user_prefix, b->user,
			(unsigned)b->qty, cf->run_id, bi);
		break;
	case JOB_POLL:
		post = false;
		if (cf->wait_ms > 0 && !b->seen_reserved)
			/*
			 * The gateway holds it until the purchase is decided. A
			 * hold left to run out is polled: a long poll would keep
			 * one of the generator's few connections for its length.
			 */
			snprintf(path, sizeof(path),
				"%s/v1/purchases/%s-%u?wait_ms=%u&from=queued",
				r->prefix, cf->run_id, bi, (unsigned)cf->wait_ms);
		else
			snprintf(path, sizeof(path), "%s/v1/purchases/%s-%u",
				r->prefix, cf->run_id, bi);
		break;
	case JOB_PAY:
	case JOB_CANCEL:
		snprintf(path, sizeof(path), "%s/v1/purchases/%s-%u/%s",
			r->prefix, cf->run_id, bi,
			b->job == JOB_PAY ? "pay" : "cancel");
		/* The owner proves the purchase is theirs. */
		blen = snprintf(body, sizeof(body), "{\"user_id\":\"%s%u\"}",
			cf->user_prefix, b->user);
		break;
	default:
		return -1;
	}

	n = snprintf(req, sizeof(req),
		"%s %s HTTP/1.1\r\nHost: %s\r\nConnection: keep-alive\r\n"
		"Accept: application/json\r\n", post ? "POST" : "GET", path,
		r->host_header);
	/* Every call of a buyer carries its token: the gateway trusts nothing else. */
	if (cf->jwt_secret != NULL) {
		snprintf(user, sizeof(user), "%s%u", cf->user_prefix, b->user);
		if (lg_token_header(cf->jwt_secret, user, (int64_t)time(NULL), 3600, auth,
				    sizeof(auth)) < 0)
			return -1;
		n += snprintf(req + n, sizeof(req) - (size_t)n, "Authorization: %s\r\n", auth);
	}
	if (blen >= 0)
		n += snprintf(req + n, sizeof(req) - (size_t)n,
			"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
			blen, body);
	else
		n += snprintf(req + n, sizeof(req) - (size_t)n, "\r\n");
	if ((size_t)n >= sizeof(req))
		return -1;

	count_send(r, b);
	s->buyer = (int32_t)bi;
	s->sent_us = mono_now_us();
	if (r->first_send_us == 0) {
		r->first_send_us = s->sent_us;
		r->tick_last_us = s->sent_us;
		if (r->tick_ev != NULL)
			evtimer_add(r->tick_ev, &r->tick_tv);
	}
	if (lg_http_send(&s->http, req, (size_t)n,
			 s->sent_us + (int64_t)cf->timeout_ms * 1000) != 0) {
		/* Not even sent (no socket, refused at once): the caller answers. */
		s->buyer = LG_NO_BUYER;
		return -1;
	}
	return 0;
}

/* Give q's idle connections to the buyers waiting in q's line. */
static void
pump_pool(struct lg_run *r, struct lg_pool *q)
{
	while (!r->stopping && q->nidle > 0 && q->qhead != LG_NO_BUYER) {
		uint32_t si = q->idle[--q->nidle];
		struct lg_slot *s = &r->slots[si];
		struct lg_buyer *b = queue_pop(r, q);

		if (slot_send(r, s, b) != 0) {
			q->idle[q->nidle++] = si;
			handle_answer(r, b, 0, NULL);
			break;	/* the next go, after handle_answer's backoff */
		}
	}
}

static void
pump_cb(evutil_socket_t fd, short what, void *arg)
{
	struct lg_run *r = arg;

	(void)fd;
	(void)what;
	for (int p = 0; p < LG_POOLS; p++)
		pump_pool(r, &r->pools[p]);
}

/* A call's answer (code 0: it failed), from the slot's connection. */
static void
on_response(void *arg, int code, const char *body, size_t len)
{
	struct lg_slot *s = arg;
	struct lg_run *r = s->run;
	struct lg_buyer *b;

	(void)len;
	if (s->buyer == LG_NO_BUYER || r->stopping)
		return;
	b = &r->buyers[s->buyer];
	s->buyer = LG_NO_BUYER;
	if (code <= 0 || code >= 600)
		code = 0;
	r->pools[s->pool].idle[r->pools[s->pool].nidle++] = (uint32_t)(s - r->slots);
	lg_samples_add(&r->res->request_lat, mono_now_us() - s->sent_us);
	handle_answer(r, b, code, code ? body : NULL);
	schedule_pump(r);
}

/* Every 100 ms: fail the calls out longer than --timeout-ms. */
static void
deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct lg_run *r = arg;
	int64_t now = mono_now_us();

	(void)fd;
	(void)what;
	for (uint32_t i = 0; i < r->nslots; i++)
		lg_http_check_deadline(&r->slots[i].http, now);
}

/* ---- answers ---- */

/* The "error" or "state" member of a JSON body, into out; false if absent. */
/* A number member of a JSON body (false when absent or not a number). */
static bool
body_number(const char *body, const char *field, double *out)
{
	cJSON *doc, *v;
	bool ok;

	if (body == NULL || (doc = cJSON_Parse(body)) == NULL)
		return false;
	v = cJSON_GetObjectItemCaseSensitive(doc, field);
	ok = cJSON_IsNumber(v);
	if (ok)
		*out = v->valuedouble;
	cJSON_Delete(doc);
	return ok;
}

static bool
body_field(const char *body, const char *field, char *out, size_t outlen)
{
	cJSON *doc, *v;
	bool ok = false;
	size_t i;

	out[0] = '\0';
	if (body == NULL || (doc = cJSON_Parse(body)) == NULL)
		return false;
	v = cJSON_GetObjectItemCaseSensitive(doc, field);
	if (cJSON_IsString(v) && v->valuestring[0] != '\0' &&
	    strlen(v->valuestring) < outlen) {
		ok = true;
		/* keep report keys tame whatever the server says */
		for (i = 0; v->valuestring[i] != '\0'; i++) {
			char c = v->valuestring[i];

			if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			    (c >= '0' && c <= '9') || c == '_' || c == '-')) {
				ok = false;
				break;
			}
		}
		if (ok)
			strcpy(out, v->valuestring);
	}
	cJSON_Delete(doc);
	return ok;
}

static void
answer_reason(int code, const char *body, char *out, size_t outlen)
{
	if (!body_field(body, "error", out, outlen))
		snprintf(out, outlen, "http_%d", code);
}

static bool
is_final_state(const char *st)
{
	size_t i;

	for (i = 0; i < sizeof(final_states) / sizeof(final_states[0]); i++)
		if (strcmp(st, final_states[i]) == 0)
			return true;
	return false;
}

/* The one-byte id of a reason string; LG_REASON_OTHER past the table. */
static uint8_t
reason_id(struct lg_run *r, const char *reason)
{
	uint32_t i;

	for (i = 0; i < r->nreasons; i++)
		if (strcmp(r->reasons[i], reason) == 0)
			return (uint8_t)i;
	if (r->nreasons >= LG_REASONS || strlen(reason) >= LG_NAME_MAX)
		return LG_REASON_OTHER;
	strcpy(r->reasons[r->nreasons], reason);
	return (uint8_t)r->nreasons++;
}

static const char *
reason_name(const struct lg_run *r, uint8_t id)
{
	return id < r->nreasons ? r->reasons[id] : "other";
}

static void
buyer_accepted(struct lg_run *r, struct lg_buyer *b)
{
	b->accepted = true;
	b->accepted_us = mono_now_us();
	r->res->accepted++;
	r->res->per_sku[b->sku].accepted++;
}

/* The purchase (and its duplicate, if any) is settled: move on. */
static void
purchase_settled(struct lg_run *r, struct lg_buyer *b)
{
	struct lg_result *res = r->res;

	if (!b->accepted) {
		if (b->first_answered) {
			res->refused++;
			lg_counts_add(&res->refused_by,
				reason_name(r, b->first_reason), 1);
		} else {
			res->purchase_failed++;
		}
		buyer_done(r, b);
		return;
	}
	if (r->cf->no_follow) {
		/* The accept path alone (bench/run): no polls compete with it. */
		res->not_waited++;
		buyer_done(r, b);
		return;
	}
	b->phase = PH_FOLLOW;
	schedule_poll(r, b, (int64_t)r->cf->poll_ms * 1000);
}

static void
on_purchase_answer(struct lg_run *r, struct lg_buyer *b, int code,
	const char *body)
{
	struct lg_result *res = r->res;
	bool transient = code == 0 || code >= 500;
	char reason[LG_NAME_MAX];

	if (transient && b->tries < r->cf->retries) {
		b->tries++;
		buyer_after(r, b, JOB_PURCHASE, backoff_us(r, b->tries));
		return;
	}
	if (code == 0 || (code >= 500 && code != 503)) {
		/*
		 * No answer that says anything about the purchase: a failed
		 * first send leaves the buyer failed, a failed duplicate
		 * leaves the first answer standing.
		 */
		res->retries_exhausted++;
		purchase_settled(r, b);
		return;
	}
	if (code == 503)
		res->retries_exhausted++;
	if (code != 202)
		answer_reason(code, body, reason, sizeof(reason));
	else
		strcpy(reason, "accepted");
	if (code != 202 && !(code >= 400 && code < 500) && code != 503)
		res->http_errors++;	/* 2xx/3xx we do not expect */

	if (b->phase == PH_PURCHASE) {
		int64_t lat = mono_now_us() - b->sched_us;

		lg_samples_add(&res->purchase_lat, lat);
		if (r->ts != NULL)
			lg_samples_add(&r->iv_purchase_lat, lat);
		b->first_answered = true;
		b->first_status = (int16_t)code;
		b->first_reason = reason_id(r, reason);
		if (code == 202)
			buyer_accepted(r, b);
		if (b->dup) {
			/* a client retry right after the first answer */
			b->phase = PH_DUPLICATE;
			b->tries = 0;
			buyer_after(r, b, JOB_PURCHASE, 0);
			return;
		}
	} else {
		if (code != b->first_status ||
		    reason_id(r, reason) != b->first_reason) {
			char pair[LG_NAME_MAX];

			res->duplicate_mismatch++;
			snprintf(pair, sizeof(pair), "%s->%s",
				reason_name(r, b->first_reason), reason);
			lg_counts_add(&res->mismatch_by, pair, 1);
		}
		if (code == 202 && !b->accepted)
			buyer_accepted(r, b);
	}
	purchase_settled(r, b);
}

static void
on_poll_answer(struct lg_run *r, struct lg_buyer *b, int code,
	const char *body)
{
	struct lg_result *res = r->res;
	int64_t poll_us = (int64_t)r->cf->poll_ms * 1000;
	char st[LG_NAME_MAX];

	if (code == 200 && r->cf->wait_ms > 0 && !b->seen_reserved)
		poll_us = 0;	/* a long poll waited already: ask again at once */
	if (code == 404) {
		/* the result may not be visible yet right after the 202 */
		res->poll_unknown++;
		schedule_poll(r, b, poll_us);
		return;
	}
	if (code != 200 || !body_field(body, "state", st, sizeof(st))) {
		if (code != 503)
			res->http_errors += code != 0;	/* transport counted already */
		schedule_poll(r, b, poll_us);
		return;
	}
	if (is_final_state(st)) {
		int64_t now = mono_now_us();

		res->final++;
		lg_counts_add(&res->final_by, st, 1);
		if (strcmp(st, "paid") == 0) {
			res->paid++;
			res->per_sku[b->sku].paid++;
		} else if (strcmp(st, "cancelled") == 0) {
			res->cancelled++;
		} else if (strcmp(st, "expired") == 0) {
			res->expired++;
		}
		lg_samples_add(&res->final_lat, now - b->sched_us);
		buyer_done(r, b);
		return;
	}
	if (strcmp(st, "reserved") == 0)
		b->seen_reserved = true;
	if (strcmp(st, "reserved") == 0 && !r->cf->wait_final &&
	    (b->plan == PLAN_EXPIRE || (b->action_done && b->action_refused))) {
		/* --no-wait-final: a hold left to expire is not waited for */
		res->not_waited++;
		buyer_done(r, b);
		return;
	}
	if (strcmp(st, "reserved") == 0 && !b->action_done &&
	    b->plan != PLAN_EXPIRE) {
		b->tries = 0;
		buyer_after(r, b, b->plan == PLAN_PAY ? JOB_PAY : JOB_CANCEL, 0);
		return;
	}
	/*
	 * queued, reserved and waiting, or a state we do not know. A hold left
	 * to run out ends at its deadline: look again then rather than every
	 * poll_ms (thousands of such buyers polling 4 times a second took the
	 * generator's connections from the crowd's first clicks).
	 */
	if (strcmp(st, "reserved") == 0 &&
	    (b->plan == PLAN_EXPIRE || (b->action_done && b->action_refused))) {
		struct timespec ts;
		double deadline;
		int64_t left_us = b->accepted_us + (int64_t)r->cf->final_timeout_s * 1000000 -
				  mono_now_us();

		clock_gettime(CLOCK_REALTIME, &ts);
		if (body_number(body, "deadline_ms", &deadline)) {
			int64_t until_us = ((int64_t)deadline - (int64_t)ts.tv_sec * 1000 -
					    ts.tv_nsec / 1000000) * 1000;

			/* A buyer who paid waits for the pay, not the deadline; and
			 * nobody waits past their --final-timeout-s. */
			if (until_us > left_us)
				until_us = left_us;
			if (until_us > poll_us)
				poll_us = until_us;
		}
	}
	schedule_poll(r, b, poll_us);
}

static void
on_action_answer(struct lg_run *r, struct lg_buyer *b, int code,
	const char *body)
{
	struct lg_result *res = r->res;
	int64_t poll_us = (int64_t)r->cf->poll_ms * 1000;
	char reason[LG_NAME_MAX];

	if (code == 202) {
		b->action_done = true;
		if (b->job == JOB_PAY)
			res->pay_accepted++;
		else
			res->cancel_accepted++;
	} else if (code == 0 || code >= 500) {
		if (b->tries < r->cf->retries && !follow_timed_out(r, b)) {
			b->tries++;
			buyer_after(r, b, (enum lg_job)b->job,
				backoff_us(r, b->tries));
			return;
		}
		res->retries_exhausted++;
		b->action_done = true;
	} else {
		answer_reason(code, body, reason, sizeof(reason));
		if ((code == 409 && strcmp(reason, "not_reserved_yet") == 0) ||
		    code == 404) {
			/*
			 * Poll until reserved shows, then try again. A 404 is
			 * the record missing while Redis is being rebuilt.
			 */
			res->not_reserved_yet++;
		} else {
			res->action_refused++;
			b->action_done = true;
			b->action_refused = true;
		}
	}
	schedule_poll(r, b, poll_us);
}

static void
handle_answer(struct lg_run *r, struct lg_buyer *b, int code, const char *body)
{
	struct lg_result *res = r->res;

	res->status[code]++;
	if (code == 0)
		res->http_errors++;
	else
		res->responses++;
	if (code != 0 && b->job == JOB_PURCHASE)
		r->iv_purchase_answers++;

	switch (b->job) {
	case JOB_PURCHASE:
		on_purchase_answer(r, b, code, body);
		break;
	case JOB_POLL:
		on_poll_answer(r, b, code, body);
		break;
	case JOB_PAY:
	case JOB_CANCEL:
		on_action_answer(r, b, code, body);
		break;
	default:
		break;
	}
}

/* ---- arrivals, progress, signals ---- */

static void
arrive_cb(evutil_socket_t fd, short what, void *arg)
{
	struct lg_run *r = arg;
	int64_t now = mono_now_us();
	struct timeval tv;
	int64_t wait;

	while (r->released < r->cf->buyers &&
	    r->buyers[r->released].sched_us <= now) {
		struct lg_buyer *b = &r->buyers[r->released++];

		b->phase = PH_PURCHASE;
		b->job = JOB_PURCHASE;
		queue_push(r, b);
	}
	if (r->released == r->cf->buyers)
		return;
	wait = r->buyers[r->released].sched_us - now;
	tv.tv_sec = (time_t)(wait / 1000000);
	tv.tv_usec = (suseconds_t)(wait % 1000000);
	evtimer_add(r->arrive_ev, &tv);
}

static void
progress_line(struct lg_run *r, bool last)
{
	struct lg_result *res = r->res;
	int64_t now = mono_now_us();
	double dt = (double)(now - r->prog_last_us) / 1e6;
	double rate = dt > 0 ? (double)(res->sent - r->prog_last_sent) / dt : 0;

	if (last) {
		double all = (double)(now - r->t0_us) / 1e6;

		rate = all > 0 ? (double)res->sent / all : 0;
	}
	fprintf(stderr, "\r%7.1fs sent=%llu accepted=%llu refused=%llu "
		"final=%llu done=%u/%u rate=%.0f/s   ",
		(double)(now - r->t0_us) / 1e6,
		(unsigned long long)res->sent,
		(unsigned long long)res->accepted,
		(unsigned long long)res->refused,
		(unsigned long long)res->final,
		r->done, r->cf->buyers, rate);
	if (last)
		fputc('\n', stderr);
	fflush(stderr);
	r->prog_last_us = now;
	r->prog_last_sent = res->sent;
}

static void
progress_cb(evutil_socket_t fd, short what, void *arg)
{
	progress_line(arg, false);
}

/* ---- --timeseries ---- */

/*
 * Write the row for the interval that ends now and start the next one.
 * The cost is a sort of this interval's purchase latencies only.
 */
static void
ts_row(struct lg_run *r, int64_t now)
{
	struct lg_result *res = r->res;
	struct lg_ts_row row;
	double dt = (double)(now - r->tick_last_us) / 1e6;

	memset(&row, 0, sizeof(row));
	row.t_s = (double)(now - r->first_send_us) / 1e6;
	row.sent = res->sent;
	row.accepted = res->accepted;
	row.refused = res->refused;
	row.final = res->final;
	if (dt > 0) {
		row.answers_per_s =
			(double)(res->responses - r->tick_last_answers) / dt;
		row.purchases_per_s = (double)r->iv_purchase_answers / dt;
	}
	if (r->iv_purchase_lat.n > 0) {
		lg_samples_sort(&r->iv_purchase_lat);
		row.have_lat = true;
		row.purchase_p50_ms =
			(double)lg_samples_pct(&r->iv_purchase_lat, 0.50) / 1000.0;
		row.purchase_p99_ms =
			(double)lg_samples_pct(&r->iv_purchase_lat, 0.99) / 1000.0;
	}
	if (lg_ts_write(r->ts, &row) != 0)
		res->ts_write_failed = true;
	res->ts_rows++;
	r->tick_last_us = now;
	r->tick_last_answers = res->responses;
	r->iv_purchase_answers = 0;
	lg_samples_reset(&r->iv_purchase_lat);
}

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct lg_run *r = arg;

	if (r->stopping)
		return;
	ts_row(r, mono_now_us());
}

static void
signal_cb(evutil_socket_t sig, short what, void *arg)
{
	struct lg_run *r = arg;

	r->res->interrupted = true;
	event_base_loopbreak(r->base);
}

/* ---- set-up and tear-down ---- */

/* "host:port", with brackets around an IPv6 literal, for a Host header. */
static void
host_port(char *out, size_t outlen, const char *host, int port)
{
	if (strchr(host, ':') != NULL)
		snprintf(out, outlen, "[%s]:%d", host, port);
	else
		snprintf(out, outlen, "%s:%d", host, port);
}

static int
run_parse_url(struct lg_run *r, char *err, size_t errlen)
{
	const struct lg_config *cf = r->cf;
	const char *scheme, *path;
	size_t n;

	r->uri = evhttp_uri_parse(cf->url);
	if (r->uri == NULL) {
		snprintf(err, errlen, "cannot parse url %s", cf->url);
		return -1;
	}
	scheme = evhttp_uri_get_scheme(r->uri);
	if (scheme == NULL || strcasecmp(scheme, "http") != 0) {
		snprintf(err, errlen, "url must be http://host[:port]: %s",
			cf->url);
		return -1;
	}
	r->host = evhttp_uri_get_host(r->uri);
	if (r->host == NULL || r->host[0] == '\0') {
		snprintf(err, errlen, "url has no host: %s", cf->url);
		return -1;
	}
	r->port = evhttp_uri_get_port(r->uri);
	if (r->port <= 0)
		r->port = 80;
	{
		struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai = NULL;
		char port[16];
		int e;

		snprintf(port, sizeof(port), "%d", r->port);
		e = getaddrinfo(r->host, port, &hints, &ai);
		if (e != 0 || ai == NULL || ai->ai_addrlen > sizeof(r->addr)) {
			snprintf(err, errlen, "cannot resolve %s: %s", r->host,
				e != 0 ? gai_strerror(e) : "no address");
			if (ai != NULL)
				freeaddrinfo(ai);
			return -1;
		}
		memcpy(&r->addr, ai->ai_addr, ai->ai_addrlen);
		r->addrlen = ai->ai_addrlen;
		freeaddrinfo(ai);
	}
	path = evhttp_uri_get_path(r->uri);
	snprintf(r->prefix, sizeof(r->prefix), "%s", path ? path : "");
	n = strlen(r->prefix);
	while (n > 0 && r->prefix[n - 1] == '/')
		r->prefix[--n] = '\0';
	if (cf->host_header != NULL)
		snprintf(r->host_header, sizeof(r->host_header), "%s",
			cf->host_header);
	else
		host_port(r->host_header, sizeof(r->host_header), r->host,
			r->port);
	return 0;
}

/* Decide every buyer up front from the seed, so runs are reproducible. */
static void
run_plan_buyers(struct lg_run *r)
{
	const struct lg_config *cf = r->cf;
	uint64_t urng = cf->seed ^ 0x5eedu;
	uint32_t i;

	for (i = 0; i < cf->buyers; i++) {
		struct lg_buyer *b = &r->buyers[i];
		uint64_t s = cf->seed * 0x100000001b3ULL + i;
		double u;

		(void)rng_next(&s);
		b->run = r;
		b->next = LG_NO_BUYER;
		b->user = i % cf->users;
		b->sku = rng_below(&s, (uint32_t)cf->nskus);
		b->qty = (uint16_t)(1 + rng_below(&s, cf->qty_max));
		b->dup = rng_unit(&s) < cf->dup_ratio;
		u = rng_unit(&s);
		if (u < cf->pay_ratio)
			b->plan = PLAN_PAY;
		else if (u < cf->pay_ratio + cf->cancel_ratio)
			b->plan = PLAN_CANCEL;
		else
			b->plan = PLAN_EXPIRE;
		b->sched_us = cf->buyers > 1 ?
			(int64_t)cf->ramp_ms * 1000 * i / cf->buyers : 0;
	}
	/*
	 * Users are dealt round-robin (each gets buyers/users +-1 buyers) and
	 * then shuffled, so --users == --buyers means one buyer per user and
	 * fewer users share buyers evenly in a random order.
	 */
	for (i = cf->buyers; i > 1; i--) {
		uint32_t j = rng_below(&urng, i);
		uint32_t t = r->buyers[i - 1].user;

		r->buyers[i - 1].user = r->buyers[j].user;
		r->buyers[j].user = t;
	}
	for (i = 0; i < cf->buyers; i++) {
		r->res->per_sku[r->buyers[i].sku].buyers++;
		switch (r->buyers[i].plan) {
		case PLAN_PAY:
			r->res->plan_pay++;
			break;
		case PLAN_CANCEL:
			r->res->plan_cancel++;
			break;
		default:
			r->res->plan_expire++;
			break;
		}
	}
}

static void
raise_fd_limit(uint32_t need)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return;
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (rlim_t)need + 64) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static void
run_free(struct lg_run *r)
{
	uint32_t i;

	r->stopping = true;
	if (r->slots != NULL)
		for (i = 0; i < r->nslots; i++)
			lg_http_free(&r->slots[i].http);
	if (r->pump_ev)
		event_free(r->pump_ev);
	if (r->arrive_ev)
		event_free(r->arrive_ev);
	if (r->progress_ev)
		event_free(r->progress_ev);
	if (r->sigint_ev)
		event_free(r->sigint_ev);
	if (r->sigterm_ev)
		event_free(r->sigterm_ev);
	if (r->tick_ev)
		event_free(r->tick_ev);
	if (r->deadline_ev)
		event_free(r->deadline_ev);
	if (r->base)
		event_base_free(r->base);	/* also frees pending once-timers */
	if (r->uri)
		evhttp_uri_free(r->uri);
	if (r->ts != NULL && fclose(r->ts) != 0)
		r->res->ts_write_failed = true;
	r->ts = NULL;
	lg_samples_free(&r->iv_purchase_lat);
	free(r->slots);
	for (int p = 0; p < LG_POOLS; p++)
		free(r->pools[p].idle);
	free(r->buyers);
}

int
lg_run(const struct lg_config *cf, struct lg_result *res, char *err,
	size_t errlen)
{
	struct lg_run run, *r = &run;
	struct timeval quarter = { 0, 250000 };
	uint32_t i;
	int64_t end_us;

	memset(r, 0, sizeof(*r));
	r->cf = cf;
	r->res = res;
	for (int p = 0; p < LG_POOLS; p++)
		r->pools[p].qhead = r->pools[p].qtail = LG_NO_BUYER;
	r->rng = cf->seed ^ 0xbac0ffULL;
	res->buyers = cf->buyers;

	signal(SIGPIPE, SIG_IGN);
	raise_fd_limit(cf->concurrency + cf->wait_concurrency);
	if (run_parse_url(r, err, errlen) != 0)
		goto fail;
	res->request_lat.limit = LG_REQUEST_SAMPLES;
	res->request_lat.rng = cf->seed ^ 0x1a7e5ULL;
	res->per_sku = calloc(cf->nskus, sizeof(*res->per_sku));
	r->buyers = calloc(cf->buyers ? cf->buyers : 1, sizeof(*r->buyers));
	r->nslots = cf->concurrency + cf->wait_concurrency;
	r->slots = calloc(r->nslots, sizeof(*r->slots));
	r->pools[LG_POOL_CALLS].idle = calloc(cf->concurrency, sizeof(uint32_t));
	r->pools[LG_POOL_WAITS].idle = calloc(cf->wait_concurrency + 1, sizeof(uint32_t));
	r->base = event_base_new();
	if (res->per_sku == NULL || r->buyers == NULL || r->slots == NULL ||
	    r->pools[LG_POOL_CALLS].idle == NULL || r->pools[LG_POOL_WAITS].idle == NULL ||
	    r->base == NULL) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	r->pump_ev = event_new(r->base, -1, 0, pump_cb, r);
	r->arrive_ev = evtimer_new(r->base, arrive_cb, r);
	r->progress_ev = event_new(r->base, -1, EV_PERSIST, progress_cb, r);
	r->sigint_ev = evsignal_new(r->base, SIGINT, signal_cb, r);
	r->sigterm_ev = evsignal_new(r->base, SIGTERM, signal_cb, r);
	r->deadline_ev = event_new(r->base, -1, EV_PERSIST, deadline_cb, r);
	if (cf->timeseries_path != NULL) {
		r->tick_ev = event_new(r->base, -1, EV_PERSIST, tick_cb, r);
		r->tick_tv.tv_sec = (time_t)(cf->interval_ms / 1000);
		r->tick_tv.tv_usec = (suseconds_t)(cf->interval_ms % 1000) * 1000;
	}
	if (!r->pump_ev || !r->arrive_ev || !r->progress_ev || !r->deadline_ev ||
	    !r->sigint_ev || !r->sigterm_ev ||
	    (cf->timeseries_path != NULL && !r->tick_ev)) {
		snprintf(err, errlen, "cannot create events");
		goto fail;
	}
	if (cf->timeseries_path != NULL) {
		r->ts = fopen(cf->timeseries_path, "w");
		if (r->ts == NULL) {
			snprintf(err, errlen, "cannot open %s: %s",
				cf->timeseries_path, strerror(errno));
			goto fail;
		}
		if (lg_ts_header(r->ts) != 0)
			res->ts_write_failed = true;
	}
	for (i = 0; i < r->nslots; i++) {
		uint32_t si = r->nslots - 1 - i;
		struct lg_pool *q;

		r->slots[si].run = r;
		r->slots[si].buyer = LG_NO_BUYER;
		r->slots[si].pool = si < cf->concurrency ? LG_POOL_CALLS : LG_POOL_WAITS;
		slot_init(r, &r->slots[si]);
		/* hand out low slots first: the pool warms up from the bottom */
		q = &r->pools[r->slots[si].pool];
		q->idle[q->nidle++] = si;
	}
	run_plan_buyers(r);

	evsignal_add(r->sigint_ev, NULL);
	evsignal_add(r->sigterm_ev, NULL);
	{
		struct timeval tenth = { 0, 100000 };

		evtimer_add(r->deadline_ev, &tenth);
	}
	if (cf->progress)
		evtimer_add(r->progress_ev, &quarter);

	r->t0_us = mono_now_us();
	r->prog_last_us = r->t0_us;
	for (i = 0; i < cf->buyers; i++)
		r->buyers[i].sched_us += r->t0_us;
	if (cf->buyers > 0) {
		arrive_cb(-1, EV_TIMEOUT, r);
		event_base_dispatch(r->base);
	}
	end_us = mono_now_us();
	/* the last, usually shorter, interval up to the end of the run */
	if (r->ts != NULL && r->first_send_us != 0 && end_us > r->tick_last_us)
		ts_row(r, end_us);

	if (cf->progress)
		progress_line(r, true);
	/* an interrupted run: whoever is not done did not finish */
	if (r->done < cf->buyers)
		res->unfinished += cf->buyers - r->done;
	res->run_us = end_us - r->t0_us;
	res->first_to_done_us = r->first_send_us && r->last_done_us ?
		r->last_done_us - r->first_send_us : 0;
	run_free(r);
	return 0;
fail:
	run_free(r);
	return -1;
}

void
lg_result_free(struct lg_result *res)
{
	lg_counts_free(&res->refused_by);
	lg_counts_free(&res->mismatch_by);
	lg_counts_free(&res->final_by);
	lg_samples_free(&res->purchase_lat);
	lg_samples_free(&res->request_lat);
	lg_samples_free(&res->final_lat);
	free(res->per_sku);
	res->per_sku = NULL;
}
