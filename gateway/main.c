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
	  "Bearer token of POST /admin/promotions (empty disables the admin API)", false, true },
	{ "gateway.admin_host", CF_STR, &gw.cfg.admin_host, "127.0.0.1", 0, 0,
	  "Address of the private listener: /admin, /metrics, /healthz" },
	{ "gateway.admin_port", CF_INT, &gw.cfg.admin_port, "8081", 0, 65535,
	  "Port of the private listener (0 disables it, and with it /admin and /metrics)" },
	{ "gateway.jwt_secret", CF_STR, &gw.cfg.jwt_secret, "", 0, 0,
	  "HS256 secret of buyer tokens, at least 32 bytes (or in the file named by "
	  "FLASHSALE_GATEWAY_JWT_SECRET_FILE)", false, true },
	{ "gateway.jwt_jwks_file", CF_STR, &gw.cfg.jwt_jwks_file, "", 0, 0,
	  "JWKS file of buyer token keys (RS256, ES256 P-256, HS256), chosen by kid" },
	{ "gateway.jwt_issuer", CF_STR, &gw.cfg.jwt_issuer, "", 0, 0,
	  "Required iss of buyer tokens (empty: not checked)" },
	{ "gateway.jwt_audience", CF_STR, &gw.cfg.jwt_audience, "", 0, 0,
	  "Required aud of buyer tokens (empty: not checked)" },
	{ "gateway.jwt_leeway_s", CF_INT, &gw.cfg.jwt_leeway_s, "30", 0, 600,
	  "Clock skew allowed on a token's exp and nbf, seconds" },
	{ "gateway.max_connections", CF_INT, &gw.cfg.conn.max_connections, "20000", 1, 1000000,
	  "Connections the public listener keeps open at once (more: 503 and closed)" },
	{ "gateway.max_connections_per_ip", CF_INT, &gw.cfg.conn.max_per_ip, "256", 1, 1000000,
	  "Connections one client address keeps open at once (more: 503 and closed)" },
	{ "gateway.max_header_bytes", CF_INT, &gw.cfg.conn.max_header_bytes, "8192", 512, 1048576,
	  "Largest request head (request line and headers), bytes (more: 431)" },
	{ "gateway.max_headers", CF_INT, &gw.cfg.conn.max_headers, "64", 4, 1000,
	  "Most header lines in a request (more: 431)" },
	{ "gateway.header_timeout_ms", CF_INT, &gw.cfg.conn.header_timeout_ms, "5000", 100, 600000,
	  "A request's head must arrive within this long of its first byte (else 408)" },
	{ "gateway.trusted_proxies", CF_STR, &gw.cfg.trusted_proxies, "", 0, 0,
	  "Addresses or CIDRs of proxies whose PROXY line or X-Forwarded-For names the client "
	  "(comma separated; empty: none)" },
	{ "gateway.max_inflight", CF_INT, &gw.cfg.max_inflight, "20000", 1, 10000000,
	  "Intents awaiting Kafka acknowledgement (and, counted apart, reads awaiting Redis) "
	  "before requests get 503 busy", true },
	{ "gateway.admission_k_pct", CF_INT, &gw.cfg.admission_k_pct, "200", 100, 100000,
	  "Purchases admitted to Kafka per SKU, in percent of its remaining units: admitted but "
	  "undecided units stay below k x remaining (a promotion's own k wins)", true },
	{ "gateway.global_inflight", CF_INT, &gw.cfg.global_inflight, "0", 0, 100000000,
	  "Admitted but undecided units over every SKU and gateway before purchases get 503 "
	  "busy (0: no cap)", true },
	{ "gateway.ip_rate_per_s", CF_INT, &gw.cfg.ip_rate_per_s, "0", 0, 1000000,
	  "Purchase attempts per second per client address, burst twice that (0: off, the "
	  "default: many buyers may share one address behind a carrier's NAT; a "
	  "promotion's own rate wins)", true },
	{ "gateway.max_wait_ms", CF_INT, &gw.cfg.max_wait_ms, "10000", 0, 60000,
	  "Longest long poll: GET /v1/purchases/{id}?wait_ms=N answers once the state changes "
	  "or after N ms, N at most this (0: no long polls)", true },
	{ "gateway.hot_sku_threshold", CF_INT, &gw.cfg.hot_sku_threshold, "5000", 0, 100000000,
	  "Purchase attempts per second at which a SKU is logged as hot (hot_sku; 0: never); "
	  "the busiest SKUs are in /metrics whatever this is", true },
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

static struct cf_table table = {
	.app = APP,
	.usage = "[token --user USER [--ttl SECONDS]]",
	.keys = keys,
};

/*
 * `flashsale-gateway token --user U [--ttl S]`: print a buyer token signed
 * with the configured HS256 key (the demo stack's), for curl and the tests.
 */
static int gw_token(int argc, char **argv)
{
	const char *user = NULL;
	long long ttl = 3600;
	char err[256], *tok, *end;

	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--user") == 0 && i + 1 < argc) {
			user = argv[++i];
		} else if (strcmp(argv[i], "--ttl") == 0 && i + 1 < argc) {
			ttl = strtoll(argv[++i], &end, 10);
			if (*end != '\0' || ttl < 1 || ttl > 31536000) {
				fprintf(stderr, "flashsale-gateway token: --ttl wants 1..31536000\n");
				return 2;
			}
		} else {
			fprintf(stderr, "usage: flashsale-gateway token --user USER [--ttl SECONDS]\n");
			return 2;
		}
	}
	if (user == NULL) {
		fprintf(stderr, "usage: flashsale-gateway token --user USER [--ttl SECONDS]\n");
		return 2;
	}
	if (auth_init(&gw.auth, gw.cfg.jwt_secret, gw.cfg.jwt_jwks_file, gw.cfg.jwt_issuer,
		      gw.cfg.jwt_audience, gw.cfg.jwt_leeway_s, err, sizeof(err)) < 0 ||
	    (tok = auth_sign(&gw.auth, user, now_ms() / 1000, ttl, err, sizeof(err))) == NULL) {
		fprintf(stderr, "flashsale-gateway token: %s\n", err);
		auth_free(&gw.auth);
		return 1;
	}
	printf("%s\n", tok);
	free(tok);
	auth_free(&gw.auth);
	return 0;
}

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
	push_close(&g->push);
	adminpg_free(&g->pg);
	if (event_base_once(g->base, -1, EV_TIMEOUT, gw_linger_cb, g, &tv) < 0)
		event_base_loopbreak(g->base);
}

static void gw_drain_tick(evutil_socket_t fd, short what, void *arg)
{
	struct gateway *g = arg;
	int64_t waited = (mono_us() - g->drain_start_us) / 1000;

	/* Purchases still in admission become produces or answers first. */
	if ((g->prod.inflight > 0 || g->adm.n > 0 || g->adm.batches_in_flight > 0) &&
	    waited < g->cfg.drain_timeout_ms)
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
	g->adm.default_k_pct = g->cfg.admission_k_pct;
	g->adm.global_cap = g->cfg.global_inflight;
	g->hot.threshold = g->cfg.hot_sku_threshold;
}

/*
 * SIGHUP also re-reads the JWKS file: keys rotate without a restart (add
 * the new key, issue with it, drop the old one after the longest token
 * lifetime). A file that does not load keeps the keys in use.
 */
static void gw_reload(void *arg)
{
	struct gateway *g = arg;
	struct auth fresh;
	char err[512];

	daemon_reload_config(&table, gw_config_changed, arg);
	if (auth_init(&fresh, g->cfg.jwt_secret, g->cfg.jwt_jwks_file, g->cfg.jwt_issuer,
		      g->cfg.jwt_audience, g->cfg.jwt_leeway_s, err, sizeof(err)) < 0) {
		log_error("keys_reload_failed", "msg=\"%s\" keys=%zu kept=true", err, g->auth.nkeys);
		return;
	}
	auth_free(&g->auth);
	g->auth = fresh;
	log_info("keys_reloaded", "keys=%zu", g->auth.nkeys);
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
	int args;

	daemon_init(&table, &gw.cfg.base, argc, argv, &args);
	if (args < argc && strcmp(argv[args], "token") == 0) {
		int rc = gw_token(argc - args - 1, argv + args + 1);

		cf_free(&table);
		return rc;
	}
	if (args < argc)
		die("bad_usage", "msg=\"unexpected argument %s\"", argv[args]);
	if (auth_init(&gw.auth, gw.cfg.jwt_secret, gw.cfg.jwt_jwks_file, gw.cfg.jwt_issuer,
		      gw.cfg.jwt_audience, gw.cfg.jwt_leeway_s, err, sizeof(err)) < 0)
		die("bad_config", "what=jwt msg=\"%s\"", err);
	if (gw.cfg.base.http_port == 0)
		die("bad_config", "key=http.port value=0 msg=\"it serves the API\"");

	gw.base = event_base_new();
	/* Three priorities, 1 the default: admission runs last in a turn (admit.h). */
	if (gw.base == NULL || event_base_priority_init(gw.base, 3) < 0)
		die("startup_failed", "what=event_loop msg=\"event_base_new\"");
	routes_metrics_register();
	admit_metrics_register();
	strmap_init(&gw.degraded);
	push_metrics_register();
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
	if (admit_init(&gw.adm, gw.base, &gw.store, gw.cfg.record_ttl_s, gw.cfg.admission_k_pct,
		       gw.cfg.global_inflight, routes_on_admitted, &gw) < 0 ||
	    ratelimit_init(&gw.ip_rl, RL_SLOTS, 1, 1) < 0 ||
	    push_init(&gw.push, &gw, gw.cfg.redis_address) < 0 ||
	    hotkeys_init(&gw.hot, gw.base, gw.cfg.hot_sku_threshold) < 0)
		die("startup_failed", "what=admission msg=\"out of memory\"");
	/* Admin disabled: no PostgreSQL connection at all. */
	if (gw.cfg.admin_token[0] != '\0' &&
	    adminpg_init(&gw.pg, gw.base, gw.cfg.pg_conninfo) < 0)
		die("startup_failed", "what=postgres msg=\"out of memory\"");

	gw.http = evhttp_new(gw.base);
	if (gw.http == NULL)
		die("startup_failed", "what=http msg=\"evhttp_new\"");
	gw.cfg.conn.trusted_proxies = gw.cfg.trusted_proxies;
	if (gw_conn_counts_init(&gw.conn_counts) < 0)
		die("startup_failed", "what=conn_counts msg=\"out of memory\"");
	if (gw_conns_init(&gw.conns, gw.base, &gw.cfg.conn, &gw.conn_counts, err, sizeof(err)) < 0)
		die("bad_config", "key=gateway.trusted_proxies msg=\"%s\"", err);
	/* Every connection goes through the guard before evhttp parses it. */
	evhttp_set_bevcb(gw.http, gw_conns_bevcb, &gw.conns);
	evhttp_set_max_headers_size(gw.http, (ev_ssize_t)gw.cfg.conn.max_header_bytes);
	/* Slightly too large bodies get our JSON 400; huge ones evhttp's 413, unbuffered. */
	max_req = (size_t)gw.cfg.max_body * 4;
	evhttp_set_max_body_size(gw.http, (ev_ssize_t)(max_req < 65536 ? 65536 : max_req));
	evhttp_set_timeout(gw.http, 30);
	evhttp_set_allowed_methods(gw.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD);
	evhttp_set_gencb(gw.http, routes_handle, &gw);
	if (evhttp_bind_socket(gw.http, gw.cfg.base.http_host, (ev_uint16_t)gw.cfg.base.http_port) < 0)
		die("startup_failed", "what=http msg=\"cannot listen on %s:%lld\"", gw.cfg.base.http_host,
		    gw.cfg.base.http_port);
	/* The public listener answers buyers and /healthz; the rest is private. */
	gw.admin_http = daemon_http(gw.base, NULL, gw.cfg.admin_host, (int)gw.cfg.admin_port, &hooks);
	daemon_http_healthz(gw.http);
	if (gw.admin_http != NULL)
		evhttp_set_gencb(gw.admin_http, routes_handle_admin, &gw);
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
	admit_free(&gw.adm);
	hotkeys_free(&gw.hot);
	strmap_free(&gw.degraded);
	producer_close(&gw.prod, 0);
	gw_store_free(&gw.store);
	push_free(&gw.push);
	adminpg_free(&gw.pg);
	evhttp_free(gw.http);
	if (gw.admin_http != NULL)
		evhttp_free(gw.admin_http);
	gw_conns_free(&gw.conns);
	gw_conn_counts_free(&gw.conn_counts);
	auth_free(&gw.auth);
	promo_free(&gw);
	ratelimit_free(&gw.rl);
	ratelimit_free(&gw.ip_rl);
	event_base_free(gw.base);
	log_info("stopped", "msg=\"bye\"");
	cf_free(&table);
	return 0;
}
