/*
 * The guard on every connection of the public listener, below evhttp: a
 * filtering bufferevent (evhttp_set_bevcb) that sees the bytes before
 * evhttp parses them, because libevent 2.1 has no hook to refuse a
 * connection and restarts its read timeout on every byte.
 *   - caps: at most max_connections at once, max_per_ip from one client;
 *   - a deadline for each request head, counted from its first byte (and
 *     from the connection for the first one): a client dribbling bytes is
 *     cut off however often it sends;
 *   - head limits: max_header_bytes and max_headers lines (431);
 *   - no ambiguity for a proxy in front: two Content-Length headers, or a
 *     Transfer-Encoding, are refused (400);
 *   - the client's address: the peer's, or a PROXY protocol v1 line's when
 *     the peer is a trusted proxy (and X-Forwarded-For from one, per request).
 * A refusal writes a minimal answer straight to the socket and closes it.
 * Answers pass through untouched, but libevent 2.1's filter needs two
 * nudges to send them on time (conn.c, conn_filter_out). Event loop thread
 * only.
 */
#ifndef FLASHSALE_GATEWAY_CONN_H
#define FLASHSALE_GATEWAY_CONN_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "strmap.h"
#include "util.h"

struct event_base;
struct bufferevent;
struct evhttp_request;

#define GW_IP_MAX 46    /* INET6_ADDRSTRLEN */

struct gw_conn_limits {
	long long max_connections;
	long long max_per_ip;
	long long max_header_bytes;
	long long max_headers;
	long long header_timeout_ms;
	const char *trusted_proxies;  /* "10.0.0.0/8,::1": may send PROXY and X-Forwarded-For */
};

struct gw_cidr;

/* What the caps count, shared by every event loop of the gateway. */
struct gw_conn_counts {
	pthread_mutex_t mu;
	struct strmap per_ip;     /* client address -> open connections */
	long long open;           /* connections open, all loops */
};

int gw_conn_counts_init(struct gw_conn_counts *cc) FS_MUSTCHECK;
void gw_conn_counts_free(struct gw_conn_counts *cc);

struct gw_conns {
	struct event_base *base;
	struct gw_conn_limits lim;
	struct gw_cidr *trusted;
	size_t ntrusted;
	struct gw_conn_counts *counts; /* shared with the other loops */
	struct strmap by_bev;     /* "%p" of a filter bufferevent -> its struct gw_conn */
	uint64_t refused[4];      /* by enum gw_conn_refusal, for /metrics */
};

enum gw_conn_refusal {
	GW_CONN_TOO_MANY,         /* a cap: 503 */
	GW_CONN_SLOW_HEAD,        /* the head deadline: 408 */
	GW_CONN_BIG_HEAD,         /* header bytes or lines: 431 */
	GW_CONN_AMBIGUOUS,        /* duplicate Content-Length, Transfer-Encoding: 400 */
};

/* Start-up: -1 with err when trusted_proxies does not parse. counts: shared. */
int gw_conns_init(struct gw_conns *cs, struct event_base *base, const struct gw_conn_limits *lim,
		  struct gw_conn_counts *counts, char *err, size_t errlen) FS_MUSTCHECK;
void gw_conns_free(struct gw_conns *cs);

/* For evhttp_set_bevcb: the guarded bufferevent of a new connection (arg: the set). */
struct bufferevent *gw_conns_bevcb(struct event_base *base, void *arg);

/*
 * The client address of a request: the connection's (peer or PROXY line),
 * or, when that is a trusted proxy, the last untrusted address of
 * X-Forwarded-For. Into out; false when unknown.
 */
bool gw_conns_client_ip(struct gw_conns *cs, struct evhttp_request *req, char out[GW_IP_MAX]);

/* True when addr (text) lies in one of the CIDRs of list (exposed for the unit test). */
bool gw_conns_trusted(const struct gw_conns *cs, const char *addr);

#endif
