/*
 * flashsale-gateway: the HTTP front door. Start-up connects nothing
 * blocking: Redis, Kafka and PostgreSQL all come up in the background and
 * /healthz says when the gateway is ready to take purchases.
 */
#include "gateway.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <event2/http.h>

#include "config.h"
#include "daemon.h"
#include "pg.h"
#include "log.h"
#include "flashsale_config.h"

#define APP "gateway"
/* Let the last answers leave their sockets before the listener goes. */
#define DRAIN_LINGER_MS 200
/* Rate-limit table: 64 Ki slots of 24 bytes. */
#define RL_SLOTS 65536

static struct gateway gw;

static struct cf_key keys[] = {
	DAEMON_CF_KEYS(gw.cfg.base, "8080"),
	REDIS_CF_KEYS(gw.cfg.redis_address),
	PG_CF_KEYS(gw.cfg.pg_conninfo),
	{ "gateway.admin_token", CF_STR, &gw.cfg.admin_token, "", 0, 0,
	  "Bearer token of POST /admin/promotions (empty disables the admin API)" },
	{ "gateway.max_inflight", CF_INT, &gw.cfg.max_inflight, "20000", 1, 10000000,
	  "Intents awaiting Kafka acknowledgement (and, counted apart, reads awaiting Redis) "
	  "before requests get 503 busy", true },
	{ "gateway.user_rate_per_s", CF_INT, &gw.cfg.user_rate_per_s, "5", 1, 1000000,
	  "Purchase attempts per second per user (token bucket refill)", true },
	{ "gateway.user_burst", CF_INT, &gw.cfg.user_burst, "10", 1, 1000000,
	  "Purchase attempts a user may make at once (token bucket size)", true },
	{ "gateway.refresh_ms", CF_INT, &gw.cfg.refresh_ms, "500", 50, 60000,
	  "How often the promotion cache and the Redis clock offset are refreshed" },
	{ "gateway.cache_max_age_ms", CF_INT, &gw.cfg.cache_max_age_ms, "5000", 100, 3600000,
	  "Oldest promotion cache purchases may be filtered with (older: 503 busy)" },
	RECORD_TTL_CF_KEY("gateway.record_ttl_s", gw.cfg.record_ttl_s),
	{ "gateway.drain_timeout_ms", CF_INT, &gw.cfg.drain_timeout_ms, "10000", 0, 600000,
	  "On SIGTERM, how long to wait for in-flight produces before failing them" },
	{ "gateway.max_body", CF_INT, &gw.cfg.max_body, "4096", 256, 1048576,
	  "Largest accepted request body, bytes" },
	{ NULL, 0, NULL, NULL, 0, 0, NULL },
};

static struct cf_table table = { .app = APP, .usage = NULL, .keys = keys };

static enum daemon_health gw_health(void *arg, char *detail, size_t n)
{
	struct gateway *g = arg;
	bool redis = gw_store_ready(&g->store);
	bool cache = promo_fresh(&g->promo);
	/*
	 * All-brokers-down is reported, not fatal to health: it is cleared
	 * only by a delivery, which an instance taken out of traffic never gets.
	 */
	bool kafka = !g->prod.fatal;
	int64_t age = promo_age_ms(&g->promo);

	snprintf(detail, n,
		 "{\"redis\":%s,\"cache_fresh\":%s,\"cache_age_ms\":%" PRId64 ",\"kafka\":%s,"
		 "\"kafka_brokers_down\":%s,"
		 "\"postgres\":%s,\"inflight\":%lld,\"draining\":%s}",
		 redis ? "true" : "false", cache ? "true" : "false",
		 age == INT64_MAX ? -1 : age, kafka ? "true" : "false",
		 g->prod.all_brokers_down ? "true" : "false",
		 adminpg_ready(&g->pg) ? "true" : "false", g->prod.inflight,
		 g->draining ? "true" : "false");
	return redis && cache && kafka && !g->draining ? HEALTH_OK : HEALTH_FAILED;
}

static void gw_linger_cb(evutil_socket_t fd, short what, void *arg)
{
	struct gateway *g = arg;

	log_info("drained", "msg=\"stopping the loop\"");
	event_base_loopbreak(g->base);
}

/* Producer done: close everything that answers late, then linger and stop. */
static void gw_drain_finish(struct gateway *g)
{
	struct timeval tv = { 0, DRAIN_LINGER_MS * 1000 };

	event_free(g->drain_ev);
	g->drain_ev = NULL;
	producer_close(&g->prod, 1000);
	gw_store_close(&g->store);
	adminpg_free(&g->pg);
	if (event_base_once(g->base, -1, EV_TIMEOUT, gw_linger_cb, g, &tv) < 0)
		event_base_loopbreak(g->base);
}

static void gw_drain_tick(evutil_socket_t fd, short what, void *arg)
{
	struct gateway *g = arg;
	int64_t waited = (mono_us() - g->drain_start_us) / 1000;

	if (g->prod.inflight > 0 && waited < g->cfg.drain_timeout_ms)
		return;
	if (g->prod.inflight > 0) {
		log_warn("drain_timeout", "inflight=%lld waited_ms=%" PRId64, g->prod.inflight, waited);
		producer_purge(&g->prod);
	}
	gw_drain_finish(g);
}

static void gw_drain(void *arg)
{
	struct gateway *g = arg;
	struct timeval tv = { 0, 20 * 1000 };

	if (g->draining)
		return;
	g->draining = true;
	g->drain_start_us = mono_us();
	daemon_notify_stopping();
	log_info("draining", "inflight=%lld timeout_ms=%lld", g->prod.inflight,
		 g->cfg.drain_timeout_ms);
	g->drain_ev = event_new(g->base, -1, EV_PERSIST, gw_drain_tick, g);
	if (g->drain_ev == NULL || event_add(g->drain_ev, &tv) < 0)
		event_base_loopbreak(g->base);
}

/* A reloaded limit takes effect for the next request (see cf_key.reload). */
static void gw_config_changed(const char *key, void *arg)
{
	struct gateway *g = arg;

	if (strcmp(key, "gateway.user_rate_per_s") == 0 || strcmp(key, "gateway.user_burst") == 0)
		ratelimit_set(&g->rl, (double)g->cfg.user_rate_per_s, (double)g->cfg.user_burst);
}

static void gw_reload(void *arg)
{
	daemon_reload_config(&table, gw_config_changed, arg);
}

int main(int argc, char **argv)
{
	struct daemon_hooks hooks = {
		.on_drain = gw_drain,
		.on_reload = gw_reload,
		.health = gw_health,
		.arg = &gw,
	};
	char err[512];
	size_t max_req;

	daemon_init(&table, &gw.cfg.base, argc, argv, NULL);
	if (gw.cfg.base.http_port == 0)
		die("bad_config", "key=http.port value=0 msg=\"it serves the API\"");

	gw.base = event_base_new();
	if (gw.base == NULL)
		die("startup_failed", "what=event_loop msg=\"event_base_new\"");
	routes_metrics_register();
	if (ratelimit_init(&gw.rl, RL_SLOTS, (double)gw.cfg.user_rate_per_s,
			   (double)gw.cfg.user_burst) < 0)
		die("startup_failed", "what=ratelimit msg=\"out of memory\"");
	if (gw_store_init(&gw.store, gw.base, gw.cfg.redis_address) < 0)
		die("startup_failed", "what=redis msg=\"out of memory\"");
	if (producer_init(&gw.prod, gw.base, &gw.cfg.base.kafka, routes_on_delivery, &gw,
			  err, sizeof(err)) < 0)
		die("startup_failed", "what=kafka msg=\"%s\"", err);
	if (promo_init(&gw) < 0)
		die("startup_failed", "what=promo_cache msg=\"out of memory\"");
	/* Admin disabled: no PostgreSQL connection at all. */
	if (gw.cfg.admin_token[0] != '\0' &&
	    adminpg_init(&gw.pg, gw.base, gw.cfg.pg_conninfo) < 0)
		die("startup_failed", "what=postgres msg=\"out of memory\"");

	gw.http = evhttp_new(gw.base);
	if (gw.http == NULL)
		die("startup_failed", "what=http msg=\"evhttp_new\"");
	/* Slightly too large bodies get our JSON 400; huge ones evhttp's 413, unbuffered. */
	max_req = (size_t)gw.cfg.max_body * 4;
	evhttp_set_max_body_size(gw.http, (ev_ssize_t)(max_req < 65536 ? 65536 : max_req));
	evhttp_set_timeout(gw.http, 30);
	evhttp_set_allowed_methods(gw.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD);
	evhttp_set_gencb(gw.http, routes_handle, &gw);
	if (evhttp_bind_socket(gw.http, gw.cfg.base.http_host, (ev_uint16_t)gw.cfg.base.http_port) < 0)
		die("startup_failed", "what=http msg=\"cannot listen on %s:%lld\"", gw.cfg.base.http_host,
		    gw.cfg.base.http_port);
	daemon_http(gw.base, gw.http, NULL, 0, &hooks);
	daemon_signals(gw.base, &hooks);
	log_info("listening", "host=%s port=%lld version=%s", gw.cfg.base.http_host, gw.cfg.base.http_port,
		 FLASHSALE_VERSION);
	daemon_notify_ready();

	event_base_dispatch(gw.base);

	/* Loop stopped: free everything (second signal exits without this). */
	if (gw.drain_ev != NULL) {
		event_free(gw.drain_ev);
		gw.drain_ev = NULL;
	}
	/* Late Redis/PostgreSQL callbacks answer while the requests still exist. */
	producer_close(&gw.prod, 0);
	gw_store_free(&gw.store);
	adminpg_free(&gw.pg);
	evhttp_free(gw.http);
	promo_free(&gw);
	ratelimit_free(&gw.rl);
	event_base_free(gw.base);
	log_info("stopped", "msg=\"bye\"");
	cf_free(&table);
	return 0;
}
