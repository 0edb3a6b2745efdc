#include "gateway.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"
#include "metrics.h"

static struct metric m_pushes = { "gateway_pushes_total",
	"Counter changes pushed by the deductor (fs:chg) and applied to the cache", NULL,
	METRIC_COUNTER };
static struct metric m_bad = { "gateway_pushes_malformed_total",
	"fs:chg and fs:st messages that did not parse (ignored)", NULL, METRIC_COUNTER };
static struct metric m_stalls = { "gateway_push_stalls_total",
	"Subscribers dropped and connected again: no echo back for " "3000" " ms", NULL,
	METRIC_COUNTER };
static struct metric m_delay = { "gateway_push_delay_seconds",
	"From a SKU running out (or getting units back) in Redis to this gateway knowing it",
	NULL, METRIC_HISTOGRAM };
static struct metric m_stale = { "gateway_push_stale_total",
	"Pushes a loop read that it knew already (from the board) or that were older", NULL,
	METRIC_COUNTER };

void push_metrics_register(void)
{
	metrics_register(&m_pushes);
	metrics_register(&m_bad);
	metrics_register(&m_stalls);
	metrics_register(&m_delay);
	metrics_register(&gw_m_board_applied);
	metrics_register(&m_stale);
}

bool push_parse(const char *msg, struct board_item *it)
{
	char s[FS_ID_MAX + 2];
	long long r, h, e, opt[2] = { 0, 0 };
	int used = 0;

	if (sscanf(msg, "%65s %lld %lld %lld%n", s, &r, &h, &e, &used) != 4)
		return false;
	/* Optional, in order: changed_ms, then seq (older deductors send fewer). */
	for (int i = 0; i < 2 && msg[used] == ' '; i++) {
		int more = 0;

		if (sscanf(msg + used, " %lld%n", &opt[i], &more) != 1 || opt[i] < 0)
			return false;
		used += more;
	}
	if (msg[used] != '\0' || !valid_sku(s) || strlen(s) >= sizeof(it->sku) || h < 0 || e < 0)
		return false;
	snprintf(it->sku, sizeof(it->sku), "%s", s);
	it->remaining = r;
	it->held = h;
	it->earliest_ms = e;
	it->changed_ms = opt[0];
	it->seq = opt[1];
	return true;
}

/*
 * One message on fs:st (known.h has who sends what):
 *   "request_id state"  a purchase moved: wake the long polls waiting on it;
 *   "+ rid rid ..."     purchases admitted: ids Redis now has records of;
 *   "* why"             the reconciler rewrote Redis from the ledger: anything
 *                       may have moved, so every long poll looks again, the
 *                       promotion cache is read now, and the known ids are
 *                       swept again.
 */
static void push_moved(struct gw_push *p, const char *msg)
{
	char rid[FS_ID_MAX + 2];
	size_t n = strcspn(msg, " ");

	if (n == 1 && msg[0] == '+' && msg[1] == ' ') {
		known_note_list(&p->gw->known, msg + 2);
		return;
	}
	if (n == 1 && msg[0] == '*') {
		char q[128];

		log_info("push_wake_all", "msg=\"%s\"", log_quote(q, sizeof(q), msg + 1 + (msg[1] == ' ')));
		known_lost(&p->gw->known, true);
		known_sweep(&p->gw->known);
		routes_wake_all(p->gw);
		promo_refresh_now(p->gw);
		return;
	}

	if (n == 0 || n >= sizeof(rid) || msg[n] != ' ') {
		metric_add(&m_bad, 1);
		return;
	}
	memcpy(rid, msg, n);
	rid[n] = '\0';
	if (strcmp(msg + n, " gone") != 0)      /* unadmit.lua deleted it */
		known_note(&p->gw->known, rid);
	routes_purchase_moved(p->gw, rid);
}

/* Every message of the subscriptions, and their confirmations; NULL on a loss. */
static void push_message_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct gw_push *p = privdata;
	redisReply *r = reply;
	struct board_item it;
	const char *what, *channel;
	int64_t delay = -1;
	bool first;

	(void)ac;
	if (r == NULL) {
		/* Lost: long polls look for themselves, refusals ask Redis, until the next subscribe. */
		p->live = false;
		known_lost(&p->gw->known, false);
		return;
	}
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
	    r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_STRING)
		return;
	what = r->element[0]->str;
	channel = r->element[1]->str;
	if (strcmp(channel, p->echo) == 0) {
		if (strcmp(what, "message") == 0 && r->element[2]->type == REDIS_REPLY_STRING) {
			known_caught_up(&p->gw->known, strtoll(r->element[2]->str, NULL, 10));
			p->unanswered_us = 0;
		}
		return;
	}
	if (strcmp(what, "subscribe") == 0) {
		log_info("push_subscribed", "channel=%s", channel);
		if (strcmp(channel, "fs:chg") == 0) {
			promo_refresh_now(p->gw);
		} else {
			p->live = true;
			p->unanswered_us = 0;
			/* What moved while it was down was not pushed: look once, sweep the ids. */
			known_live(&p->gw->known);
			routes_wake_all(p->gw);
		}
		return;
	}
	if (strcmp(what, "message") != 0 || r->element[2]->type != REDIS_REPLY_STRING)
		return;
	if (strcmp(channel, "fs:st") == 0) {
		push_moved(p, r->element[2]->str);
		return;
	}
	if (!push_parse(r->element[2]->str, &it)) {
		metric_add(&m_bad, 1);
		return;
	}
	metric_add(&m_pushes, 1);
	/* A push without a change number (an older deductor) is each loop's own. */
	first = board_post(&p->gw->sh->board, &it) || it.seq == 0;
	if (it.changed_ms > 0) {
		/* Both ends on the Redis clock; a skewed host shows as 0, not as a negative. */
		delay = gateway_now_ms(p->gw) - it.changed_ms;
		if (delay < 0)
			delay = 0;
		/* How late the process knew: the loop that read it first (board.h). */
		if (first)
			metric_observe_us(&m_delay, (uint64_t)delay * 1000);
	}
	if (!promo_note_push(&p->gw->promo, &it, "push"))
		metric_add(&m_stale, 1);
	/* One line per crossing of zero (the deductor pushes nothing else). */
	log_info("pushed", "sku=%s remaining=%" PRId64 " held=%" PRId64 " delay_ms=%" PRId64
		 " first=%d", it.sku, it.remaining, it.held, delay, first);
}

static void push_on_connect(void *arg)
{
	struct gw_push *p = arg;
	const char *argv[] = { "SUBSCRIBE", "fs:chg", "fs:st", p->echo };

	if (gw_store_command_argv(&p->sub, push_message_cb, p, 4, argv, NULL) < 0)
		log_warn("push_subscribe_failed", "msg=\"will retry at the next connect\"");
}

/*
 * Every PUSH_ECHO_MS: publish this loop's clock on its echo channel, through
 * the commands connection (push.h). A subscriber whose echoes stopped coming
 * back while they were being sent is dropped: its callbacks run with NULL
 * (live false, the known ids incomplete) and it connects again.
 */
static void push_echo_tick(evutil_socket_t fd, short what, void *arg)
{
	struct gw_push *p = arg;
	struct gateway *gw = p->gw;
	int64_t now = mono_us();
	char t[24];
	const char *argv[] = { "PUBLISH", p->echo, t };

	(void)fd;
	(void)what;
	if (!p->live || !gw_store_ready(&gw->store))
		return;
	if (p->unanswered_us != 0 && now - p->unanswered_us > PUSH_STALL_MS * 1000LL) {
		metric_add(&m_stalls, 1);
		log_warn("push_stalled", "waited_ms=%lld msg=\"no echo back: dropping the "
			 "subscriber, refusals ask Redis until it is back\"",
			 (long long)((now - p->unanswered_us) / 1000));
		p->unanswered_us = 0;
		gw_store_reset(&p->sub);
		return;
	}
	snprintf(t, sizeof(t), "%" PRId64, now);
	if (gw_store_command_argv(&gw->store, NULL, NULL, 3, argv, NULL) == 0 &&
	    p->unanswered_us == 0)
		p->unanswered_us = now;
}

int push_init(struct gw_push *p, struct gateway *gw, const char *address)
{
	struct timeval tv = { 0, PUSH_ECHO_MS * 1000 };
	uint64_t nonce;

	p->gw = gw;
	/* Unique to this loop of this process on any host: nobody else's echo counts. */
	if (getrandom(&nonce, sizeof(nonce), 0) != (ssize_t)sizeof(nonce))
		nonce = (uint64_t)mono_us() ^ ((uint64_t)getpid() << 32);
	snprintf(p->echo, sizeof(p->echo), "fs:echo:%016" PRIx64 ":%d", nonce, gw->loop);
	p->echo_ev = event_new(gw->base, -1, EV_PERSIST, push_echo_tick, p);
	if (p->echo_ev == NULL || event_add(p->echo_ev, &tv) < 0)
		return -1;
	/* Ahead of the requests: a loop busy with a spike reads its pushes first. */
	if (gw_store_init(&p->sub, gw->base, address, 0) < 0)
		return -1;
	/* The connect completes on the loop, after this. */
	p->sub.on_connect = push_on_connect;
	p->sub.on_connect_arg = p;
	return 0;
}

void push_close(struct gw_push *p)
{
	if (p->echo_ev != NULL)
		event_del(p->echo_ev);
	gw_store_close(&p->sub);
}

void push_free(struct gw_push *p)
{
	if (p->echo_ev != NULL)
		event_free(p->echo_ev);
	p->echo_ev = NULL;
	gw_store_free(&p->sub);
}
