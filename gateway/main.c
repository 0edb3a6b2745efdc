/*
 * flashsale-gateway: the HTTP front door. Start-up connects nothing
 * blocking: Redis, Kafka and PostgreSQL all come up in the background and
 * /healthz says when the gateway is ready to take purchases.
 */
#include "gateway.h"

#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/http.h>
#include <event2/thread.h>
#include <event2/util.h>

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

static struct gateway gw;        /* loop 0: the configuration table writes its cfg */
static struct gw_shared shared;
static struct gateway *others;   /* loops 1 .. gw.nloops - 1 */
/* gw.cfg while SIGHUP rewrites it and the other loops copy it. */
static pthread_mutex_t cfg_mu = PTHREAD_MUTEX_INITIALIZER;

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
	{ "gateway.loops", CF_INT, &gw.cfg.loops, "0", 0, 256,
	  "Event loops (threads) serving the public port, each with its own Redis and Kafka "
	  "connections (0: one per core, at most 16)" },
	{ "gateway.max_inflight", CF_INT, &gw.cfg.max_inflight, "20000", 1, 10000000,
	  "Intents awaiting Kafka acknowledgement (and, counted apart, reads awaiting Redis) "
	  "per event loop before requests get 503 busy", true },
	{ "gateway.admission_k_pct", CF_INT, &gw.cfg.admission_k_pct, "200", 100, 100000,
	  "Purchases admitted to Kafka per SKU, in percent of its remaining units: admitted but "
	  "undecided units stay below k x remaining (a promotion's own k wins)", true },
	{ "gateway.admission_lease", CF_INT, &gw.cfg.admission_lease, "64", 0, 100000,
	  "Units of a SKU's admission budget an event loop leases at a time, to send new "
	  "purchases to Kafka without waiting for Redis first (0: no leases; proto/README.md, "
	  "Leases)", true },
	{ "gateway.admission_lease_ms", CF_INT, &gw.cfg.admission_lease_ms, "1000", 50, 10000,
	  "How long a loop gives units of one lease before it returns what is left (keep it "
	  "well under reconciler.admission_heal_ms, which takes back leases older than that)",
	  true },
	{ "gateway.admission_lease_min_free", CF_INT, &gw.cfg.admission_lease_min_free, "1000",
	  0, 1000000000, "Smallest free admission budget of a SKU (k x remaining, less the "
	  "undecided units) that leases are granted from", true },
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
	{ "gateway.known_ids", CF_BOOL, &gw.cfg.known_ids, "true", 0, 0,
	  "Refuse a new client-chosen request id (sold out, ended, rate limited) without asking "
	  "Redis whether it is a retry, when this loop knows Redis has no record of it "
	  "(gateway/known.h). Off during a rolling upgrade from a build without it: older "
	  "gateways and reconcilers do not announce the ids they write", true },
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
	bool kafka = !producer_fatal(&g->sh->prod);
	int64_t age = promo_age_ms(&g->promo);
	bool serving = true;

	/* Every loop serves buyers: each must be able to (gateway_note_health). */
	for (struct gateway *l = g->next; l != NULL; l = l->next)
		serving = serving && __atomic_load_n(&l->serving, __ATOMIC_RELAXED);
	snprintf(detail, n,
		 "{\"redis\":%s,\"cache_fresh\":%s,\"cache_age_ms\":%" PRId64 ",\"kafka\":%s,"
		 "\"kafka_brokers_down\":%s,"
		 "\"postgres\":%s,\"inflight\":%lld,\"draining\":%s,\"loops\":%d,"
		 "\"loops_serving\":%s}",
		 redis ? "true" : "false", cache ? "true" : "false",
		 age == INT64_MAX ? -1 : age, kafka ? "true" : "false",
		 producer_brokers_down(&g->sh->prod) ? "true" : "false",
		 adminpg_ready(&g->pg) ? "true" : "false", producer_inflight(&g->sh->prod),
		 g->draining ? "true" : "false", g->nloops, serving ? "true" : "false");
	return redis && cache && kafka && serving && !g->draining ? HEALTH_OK : HEALTH_FAILED;
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
	producer_port_close(g->port, 1000);
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
	if ((g->port->inflight > 0 || g->adm.n > 0 || g->adm.nops > 0 ||
	     g->adm.batches_in_flight > 0) &&
	    waited < g->cfg.drain_timeout_ms)
		return;
	if (g->port->inflight > 0) {
		log_warn("drain_timeout", "inflight=%lld waited_ms=%" PRId64, g->port->inflight,
			 waited);
		/* The whole process's producer: every loop is draining too. */
		producer_purge(g->port);
	}
	gw_drain_finish(g);
}

/* One loop stops taking purchases, finishes its produces and stops. */
static void gw_drain_loop(struct gateway *g)
{
	struct timeval tv = { 0, 20 * 1000 };

	if (g->draining)
		return;
	g->draining = true;
	g->drain_start_us = mono_us();
	/* Long polls answer now, with the state as it is, not at their next look. */
	routes_wake_all(g);
	/* After the marks of the purchases under them, in the same calls. */
	admit_leases_return(&g->adm);
	log_info("draining", "loop=%d inflight=%lld timeout_ms=%lld", g->loop, g->port->inflight,
		 g->cfg.drain_timeout_ms);
	g->drain_ev = event_new(g->base, -1, EV_PERSIST, gw_drain_tick, g);
	if (g->drain_ev == NULL || event_add(g->drain_ev, &tv) < 0)
		event_base_loopbreak(g->base);
}

static void gw_wake_drain_cb(evutil_socket_t fd, short what, void *arg)
{
	gw_drain_loop(arg);
}

static void gw_wake_refresh_cb(evutil_socket_t fd, short what, void *arg)
{
	promo_refresh_now(arg);
}

/* SIGTERM, on loop 0: every loop drains; main() joins them. */
static void gw_drain(void *arg)
{
	struct gateway *g = arg;

	if (g->draining)
		return;
	daemon_notify_stopping();
	for (int i = 1; i < g->nloops; i++)
		event_active(others[i - 1].wake_drain, EV_TIMEOUT, 0);
	gw_drain_loop(g);
}

/* A reloaded limit takes effect for the next request (see cf_key.reload). */
static void gw_config_changed(const char *key, void *arg)
{
	struct gateway *g = arg;

	if (strcmp(key, "gateway.user_rate_per_s") == 0 || strcmp(key, "gateway.user_burst") == 0)
		ratelimit_set(g->rl, (double)g->cfg.user_rate_per_s, (double)g->cfg.user_burst);
	g->hot->threshold = g->cfg.hot_sku_threshold;  /* read by loop 0 only */
}

/* What one loop keeps of its cfg in its modules. */
static void gw_loop_apply(struct gateway *g)
{
	g->adm.default_k_pct = g->cfg.admission_k_pct;
	g->adm.global_cap = g->cfg.global_inflight;
	if (!g->draining)
		g->adm.lease_units = g->cfg.admission_lease;
	g->adm.lease_ms = g->cfg.admission_lease_ms;
	g->adm.lease_min_free = g->cfg.admission_lease_min_free;
}

/* The keys again; false (and the old ones kept) when they do not load. */
static bool gw_keys_reload(struct gateway *g)
{
	struct auth fresh;
	char err[512];

	if (auth_init(&fresh, g->cfg.jwt_secret, g->cfg.jwt_jwks_file, g->cfg.jwt_issuer,
		      g->cfg.jwt_audience, g->cfg.jwt_leeway_s, err, sizeof(err)) < 0) {
		if (g->loop == 0)
			log_error("keys_reload_failed", "msg=\"%s\" keys=%zu kept=true", err,
				  g->auth.nkeys);
		return false;
	}
	auth_free(&g->auth);
	g->auth = fresh;
	return true;
}

/* SIGHUP on loop 0 reached loop g: take loop 0's cfg and reload the keys. */
static void gw_wake_reload_cb(evutil_socket_t fd, short what, void *arg)
{
	struct gateway *g = arg;

	pthread_mutex_lock(&cfg_mu);
	g->cfg = g->loop0->cfg;
	pthread_mutex_unlock(&cfg_mu);
	gw_loop_apply(g);
	if (gw_keys_reload(g))
		log_info("keys_reloaded", "loop=%d keys=%zu", g->loop, g->auth.nkeys);
}

/*
 * SIGHUP also re-reads the JWKS file: keys rotate without a restart (add
 * the new key, issue with it, drop the old one after the longest token
 * lifetime). A file that does not load keeps the keys in use.
 */
static void gw_reload(void *arg)
{
	struct gateway *g = arg;

	pthread_mutex_lock(&cfg_mu);
	daemon_reload_config(&table, gw_config_changed, arg);
	pthread_mutex_unlock(&cfg_mu);
	gw_loop_apply(g);
	for (int i = 1; i < g->nloops; i++)
		event_active(others[i - 1].wake_reload, EV_TIMEOUT, 0);
	if (gw_keys_reload(g))
		log_info("keys_reloaded", "loop=0 keys=%zu", g->auth.nkeys);
}

/*
 * One event loop's gateway: its base, Redis and Kafka connections,
 * caches and public listener. die() on failure: this is start-up.
 */
static void gw_loop_init(struct gateway *g)
{
	char err[512];
	size_t max_req;
	evutil_socket_t fd;

	g->base = daemon_base_new();
	/* Three priorities, 1 the default: admission runs last in a turn (admit.h). */
	if (g->base == NULL || event_base_priority_init(g->base, 3) < 0)
		die("startup_failed", "what=event_loop msg=\"daemon_base_new\"");
	strmap_init(&g->degraded);
	if (waiters_init(&g->waiters) < 0)
		die("startup_failed", "what=long_polls msg=\"out of memory\"");
	g->sh = &shared;
	g->rl = &shared.rl;
	g->ip_rl = &shared.ip_rl;
	g->hot = &shared.hot;
	if (g->loop > 0 &&
	    auth_init(&g->auth, g->cfg.jwt_secret, g->cfg.jwt_jwks_file, g->cfg.jwt_issuer,
		      g->cfg.jwt_audience, g->cfg.jwt_leeway_s, err, sizeof(err)) < 0)
		die("bad_config", "what=jwt msg=\"%s\"", err);
	if (gw_store_init(&g->store, g->base, g->cfg.redis_address, -1) < 0)
		die("startup_failed", "what=redis msg=\"out of memory\"");
	if (known_init(&g->known, &g->store, KNOWN_IDS_MAX) < 0)
		die("startup_failed", "what=known_ids msg=\"out of memory\"");
	if ((g->port = producer_port_new(&shared.prod, g->base, routes_on_delivery, g,
					 err, sizeof(err))) == NULL)
		die("startup_failed", "what=kafka msg=\"%s\"", err);
	if (promo_init(g) < 0)
		die("startup_failed", "what=promo_cache msg=\"out of memory\"");
	if (admit_init(&g->adm, g->base, &g->store, g->cfg.record_ttl_s, g->cfg.admission_k_pct,
		       g->cfg.global_inflight, routes_on_admitted, g) < 0 ||
	    push_init(&g->push, g, g->cfg.redis_address) < 0)
		die("startup_failed", "what=admission msg=\"out of memory\"");
	/* Admin disabled: no PostgreSQL connection at all. */
	if (g->loop == 0 && g->cfg.admin_token[0] != '\0' &&
	    adminpg_init(&g->pg, g->base, g->cfg.pg_conninfo) < 0)
		die("startup_failed", "what=postgres msg=\"out of memory\"");
	g->wake_drain = event_new(g->base, -1, 0, gw_wake_drain_cb, g);
	g->wake_reload = event_new(g->base, -1, 0, gw_wake_reload_cb, g);
	g->wake_refresh = event_new(g->base, -1, 0, gw_wake_refresh_cb, g);
	if (g->wake_drain == NULL || g->wake_reload == NULL || g->wake_refresh == NULL)
		die("startup_failed", "what=event_loop msg=\"event_new\"");

	g->http = evhttp_new(g->base);
	if (g->http == NULL)
		die("startup_failed", "what=http msg=\"evhttp_new\"");
	g->cfg.conn.trusted_proxies = g->cfg.trusted_proxies;
	if (gw_conns_init(&g->conns, g->base, &g->cfg.conn, &shared.counts, err, sizeof(err)) < 0)
		die("bad_config", "key=gateway.trusted_proxies msg=\"%s\"", err);
	/* Every connection goes through the guard before evhttp parses it. */
	evhttp_set_bevcb(g->http, gw_conns_bevcb, &g->conns);
	evhttp_set_max_headers_size(g->http, (ev_ssize_t)g->cfg.conn.max_header_bytes);
	/* Slightly too large bodies get our JSON 400; huge ones evhttp's 413, unbuffered. */
	max_req = (size_t)g->cfg.max_body * 4;
	evhttp_set_max_body_size(g->http, (ev_ssize_t)(max_req < 65536 ? 65536 : max_req));
	evhttp_set_timeout(g->http, 30);
	evhttp_set_allowed_methods(g->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD);
	evhttp_set_gencb(g->http, routes_handle, g);
	/* With several loops, each its own socket on the port (util_listen_tcp). */
	fd = util_listen_tcp(g->cfg.base.http_host, g->cfg.base.http_port, g->nloops > 1, err,
			     sizeof(err));
	if (fd < 0 || evhttp_accept_socket(g->http, fd) < 0)
		die("startup_failed", "what=http msg=\"cannot listen on %s:%lld: %s\"",
		    g->cfg.base.http_host, g->cfg.base.http_port, fd < 0 ? err : "accept");
	daemon_http_healthz(g->http);
	gw_loop_apply(g);
}

/* After its loop stopped (a second signal exits without this). */
static void gw_loop_free(struct gateway *g)
{
	if (g->drain_ev != NULL) {
		event_free(g->drain_ev);
		g->drain_ev = NULL;
	}
	/* Late Redis/PostgreSQL callbacks answer while the requests still exist. */
	admit_free(&g->adm);
	strmap_free(&g->degraded);
	producer_port_close(g->port, 0);
	gw_store_free(&g->store);
	push_free(&g->push);
	known_free(&g->known);
	adminpg_free(&g->pg);
	evhttp_free(g->http);
	if (g->admin_http != NULL)
		evhttp_free(g->admin_http);
	auth_free(&g->auth);
	promo_free(g);
	waiters_free(&g->waiters);
	event_free(g->wake_drain);
	event_free(g->wake_reload);
	event_free(g->wake_refresh);
	/*
	 * evhttp_free leaves the guarded bufferevents of open connections to
	 * the base's finalizers: their conn_free runs in event_base_free and
	 * still needs the guard's maps (a map freed before it was grown again
	 * and leaked: LeakSanitizer on a stop with idle connections open).
	 */
	event_base_free(g->base);
	gw_conns_free(&g->conns);
}

static void *gw_loop_thread(void *arg)
{
	struct gateway *g = arg;

	event_base_dispatch(g->base);
	return NULL;
}

int main(int argc, char **argv)
{
	struct daemon_hooks hooks = {
		.on_drain = gw_drain,
		.on_reload = gw_reload,
		.health = gw_health,
		.arg = &gw,
	};
	char err[512], malloc_name[96];
	sigset_t all, old;
	long cores;
	int args, rc;

	daemon_init(&table, &gw.cfg.base, argc, argv, &args);
	if (args < argc && strcmp(argv[args], "token") == 0) {
		rc = gw_token(argc - args - 1, argv + args + 1);
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
	/* Loop 0 wakes the others (event_active) from its own thread. */
	if (evthread_use_pthreads() < 0)
		die("startup_failed", "what=event_loop msg=\"evthread_use_pthreads\"");
	cores = sysconf(_SC_NPROCESSORS_ONLN);
	/* Each loop has its own Redis connections: by default no more than 16,
	 * however many cores. The Kafka producer is the process's. */
	gw.nloops = gw.cfg.loops > 0 ? (int)gw.cfg.loops :
		    cores > 16 ? 16 : cores > 0 ? (int)cores : 1;
	gw.loop0 = &gw;

	routes_metrics_register();
	admit_metrics_register();
	push_metrics_register();
	known_metrics_register();
	if (ratelimit_init(&shared.rl, RL_SLOTS, (double)gw.cfg.user_rate_per_s,
			   (double)gw.cfg.user_burst) < 0 ||
	    ratelimit_init(&shared.ip_rl, RL_SLOTS, 1, 1) < 0 ||
	    gw_conn_counts_init(&shared.counts) < 0 || board_init(&shared.board) < 0 ||
	    pthread_mutex_init(&shared.recent_mu, NULL) != 0)
		die("startup_failed", "what=ratelimit msg=\"out of memory\"");
	strmap_init(&shared.recent);
	if (gw.nloops > 1 && (others = calloc((size_t)gw.nloops - 1, sizeof(*others))) == NULL)
		die("startup_failed", "what=event_loop msg=\"out of memory\"");
	if (producer_init(&shared.prod, &gw.cfg.base.kafka, err, sizeof(err)) < 0)
		die("startup_failed", "what=kafka msg=\"%s\"", err);
	gw_loop_init(&gw);
	if (hotkeys_init(&shared.hot, gw.base, gw.cfg.hot_sku_threshold) < 0)
		die("startup_failed", "what=hotkeys msg=\"out of memory\"");
	for (int i = 1; i < gw.nloops; i++) {
		struct gateway *g = &others[i - 1];

		g->loop = i;
		g->nloops = gw.nloops;
		g->loop0 = &gw;
		g->cfg = gw.cfg;
		gw_loop_init(g);
		(i == 1 ? &gw : &others[i - 2])->next = g;
	}
	/* The public listener answers buyers and /healthz; the rest is private. */
	gw.admin_http = daemon_http(gw.base, NULL, gw.cfg.admin_host, (int)gw.cfg.admin_port, &hooks);
	if (gw.admin_http != NULL)
		evhttp_set_gencb(gw.admin_http, routes_handle_admin, &gw);
	daemon_signals(gw.base, &hooks);
	/* Signals are loop 0's: the other threads never take one. */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	for (int i = 1; i < gw.nloops; i++) {
		rc = pthread_create(&others[i - 1].thread, NULL, gw_loop_thread, &others[i - 1]);
		if (rc != 0)
			die("startup_failed", "what=event_loop msg=\"pthread_create: %s\"", strerror(rc));
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	util_malloc_name(malloc_name, sizeof(malloc_name));
	log_info("listening", "host=%s port=%lld loops=%d version=%s malloc=\"%s\"",
		 gw.cfg.base.http_host, gw.cfg.base.http_port, gw.nloops, FLASHSALE_VERSION,
		 malloc_name);
	daemon_notify_ready();

	event_base_dispatch(gw.base);

	/* Loop 0 drained; the others drain in parallel (gw_drain). */
	for (int i = 1; i < gw.nloops; i++)
		pthread_join(others[i - 1].thread, NULL);
	hotkeys_free(&shared.hot);
	for (int i = 1; i < gw.nloops; i++)
		gw_loop_free(&others[i - 1]);
	gw_loop_free(&gw);
	/* Every port closed with its loop: nothing is answered from here on. */
	producer_free(&shared.prod, 1000);
	free(others);
	gw_conn_counts_free(&shared.counts);
	board_free(&shared.board);
	strmap_free(&shared.recent);
	pthread_mutex_destroy(&shared.recent_mu);
	ratelimit_free(&shared.rl);
	ratelimit_free(&shared.ip_rl);
	log_info("stopped", "msg=\"bye\"");
	cf_free(&table);
	return 0;
}
