/*
 * flashsale-gateway: the asynchronous HTTP front door. gateway.loops event
 * loops (default: one per core), each a thread with its own listening
 * socket on the same port (SO_REUSEPORT: the kernel spreads connections),
 * its own Redis and Kafka connections and its own struct gateway, as if
 * several gateways ran behind a load balancer: the admission budget is in
 * Redis and shared anyway. What must be one per process is shared and
 * locks itself: the per-user and per-address rate limits, the connection
 * counts and the hot-SKU table (struct gw_shared). Loop 0 is the main
 * thread; it alone has the signals, the private listener (/admin,
 * /metrics) and the PostgreSQL connection, and fans SIGTERM and SIGHUP
 * out to the others. Nothing blocks a loop after start-up.
 *
 *   auth       buyer identity: JWT verification, request ids scoped to the buyer
 *   conn       the guard below evhttp: connection caps, head deadline and limits
 *   request    pure parsing and validation of request bodies
 *   ratelimit  per-user token buckets
 *   store      the Redis connection (struct gw_store)
 *   promo      the promotion cache and its refresh, the Redis clock
 *   producer   the process's Kafka producer; each loop's delivery reports
 *              come to it through its port
 *   admit      the shared admission budget per SKU, one Redis call per loop turn
 *   push       the deductor's pushes (Redis pub/sub): counters into the cache,
 *              purchases that moved to their long polls
 *   board      the latest pushes, shared: every loop knows what the first read
 *   waiters    the long polls of a loop, by request id
 *   hotkey     purchase attempts per SKU per second: the hottest in /metrics
 *   adminpg    the PostgreSQL connection of the admin API
 *   call       answering requests: replies, deferred answers, their counts
 *   admin      POST /admin/promotions
 *   routes     the public API's handlers and the dispatch of every request
 */
#ifndef FLASHSALE_GATEWAY_H
#define FLASHSALE_GATEWAY_H

#include <stdbool.h>
#include <stdint.h>
#include <pthread.h>

#include "daemon.h"
#include "kafka.h"
#include "auth.h"
#include "conn.h"
#include "request.h"
#include "ratelimit.h"
#include "store.h"
#include "board.h"
#include "promo.h"
#include "producer.h"
#include "admit.h"
#include "push.h"
#include "waiters.h"
#include "known.h"
#include "hotkey.h"
#include "adminpg.h"
#include "call.h"
#include "admin.h"
#include "routes.h"

struct event_base;
struct evhttp;
struct event;

struct gw_config {
	struct daemon_cfg base;
	char *redis_address;
	char *pg_conninfo;
	char *admin_token;          /* "" = admin API disabled */
	char *admin_host;           /* the private listener: /admin, /metrics */
	long long admin_port;
	char *jwt_secret;           /* HS256 secret */
	char *jwt_jwks_file;        /* RS256 / ES256 / HS256 keys */
	char *jwt_issuer;
	char *jwt_audience;
	long long jwt_leeway_s;
	struct gw_conn_limits conn; /* gateway.max_connections ... trusted_proxies */
	char *trusted_proxies;
	long long loops;            /* event loops; 0 = one per core */
	long long max_inflight;
	long long admission_k_pct;
	long long admission_lease;
	long long admission_lease_ms;
	long long admission_lease_min_free;
	long long global_inflight;
	long long ip_rate_per_s;
	long long max_wait_ms;
	bool known_ids;             /* refusals skip the look-up of ids Redis has no record of */
	long long hot_sku_threshold;
	long long user_rate_per_s;
	long long user_burst;
	long long refresh_ms;
	long long cache_max_age_ms;
	long long record_ttl_s;
	long long drain_timeout_ms;
	long long max_body;
};

/* Shared by every loop of the process; each member guards itself. */
struct gw_shared {
	struct ratelimit rl;        /* per user */
	struct ratelimit ip_rl;     /* per client address */
	struct gw_conn_counts counts;
	struct hotkeys hot;         /* ticked by loop 0 */
	struct board board;         /* the latest pushes, posted by the loop that read them first */
	pthread_mutex_t recent_mu;
	struct strmap recent;       /* purchases accepted lately (routes_recent_*) */
	struct producer prod;       /* one Kafka producer; each loop has a port */
};

struct gateway {
	int loop;                   /* 0: the main thread's */
	int nloops;
	struct gateway *loop0;      /* its cfg is the configuration table's */
	struct gateway *next;       /* the next loop, NULL after the last */
	struct gw_shared *sh;
	bool serving;               /* atomic: Redis, cache and Kafka fine (gateway_note_health) */
	struct event_base *base;
	struct evhttp *http;        /* the public API */
	struct evhttp *admin_http;  /* /admin, /metrics: 127.0.0.1 by default */
	struct auth auth;
	struct gw_conns conns;
	struct gw_config cfg;
	struct gw_store store;
	struct promo_cache promo;
	struct producer_port *port; /* its end of the shared producer */
	struct admission adm;
	struct gw_push push;
	uint64_t board_cursor;      /* the board's posts this loop caught up with */
	struct waiters waiters;     /* long polls, woken by push */
	struct known known;         /* request ids Redis has records of (push.c) */
	struct hotkeys *hot;        /* shared */
	struct strmap degraded;     /* sku -> units admitted here while Redis' state is lost */
	struct ratelimit *rl;       /* shared: per user */
	struct ratelimit *ip_rl;    /* shared: per client address */
	struct adminpg pg;          /* loop 0 only */
	bool draining;
	long long redis_pending;    /* GET/pay/cancel reads awaiting Redis */
	int64_t drain_start_us;
	struct event *drain_ev;     /* drain progress timer */
	struct event *wake_drain;   /* loops 1..: SIGTERM, from loop 0 */
	struct event *wake_reload;  /* loops 1..: SIGHUP, from loop 0 */
	struct event *wake_refresh; /* an admin change on loop 0: refresh the cache now */
	pthread_t thread;           /* loops 1.. */
};

/*
 * Record, for loop 0's /healthz, whether this loop can take purchases: its
 * Redis connection, a fresh cache and the Kafka producer (called by the
 * loop itself at every cache tick and refresh).
 */
void gateway_note_health(struct gateway *gw);

/* The gateway clock corrected to the Redis clock (ms): the one clock of deadlines. */
int64_t gateway_now_ms(const struct gateway *gw);

#endif
