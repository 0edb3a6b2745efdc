/*
 * HTTP handlers of the public API and the bookkeeping of an answer that
 * comes later (a Kafka delivery, a Redis or PostgreSQL reply).
 *
 * A deferred answer lives in a struct gw_call. evhttp serves one request
 * per connection at a time, so the call registers the connection's close
 * callback: if the client goes away first the call is marked dead and the
 * late answer is dropped without touching memory evhttp freed.
 */
#ifndef GATEWAY_ROUTES_H
#define GATEWAY_ROUTES_H

#include <stdbool.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "metrics.h"
#include "util.h"

struct gateway;
struct evhttp_request;
struct evhttp_connection;
struct cJSON;

enum gw_route {
	ROUTE_PURCHASE,
	ROUTE_PURCHASE_GET,
	ROUTE_PAY,
	ROUTE_CANCEL,
	ROUTE_PROMO_GET,
	ROUTE_PROMO_ADMIN,
	ROUTE_TIME,
	ROUTE_OTHER,
	ROUTE_N
};

struct gw_call {
	struct gateway *gw;
	struct evhttp_request *req;        /* NULL once answered or freed by evhttp */
	struct evhttp_connection *evcon;   /* NULL once closed */
	enum gw_route route;
	bool dead;                         /* the client went away */
};

/* A request waiting for Redis and/or a Kafka delivery report. */
struct pending {
	struct gw_call call;
	int kind;                          /* Flashsale__Intent__Kind */
	char request_id[FS_ID_MAX + 1];
	char sku[FS_ID_MAX + 1];
	char user_id[FS_ID_MAX + 1];
	char state[32];                    /* pay/cancel: st when asked */
	char owner[FS_ID_MAX + 1];         /* pay/cancel: user_id the caller claims */
	int64_t produced_us;               /* mono time of the produce call */
	/* purchase refused by a filter, pending the request id's look-up */
	int refusal;                       /* enum refusal in routes.c */
	int refusal_code;
	const char *refusal_error;         /* static strings */
	const char *refusal_reason;
};

/* Metrics the other modules update. */
extern struct metric gw_m_accepted;
extern struct metric gw_m_inflight;
extern struct metric gw_m_produce_latency;
extern struct metric gw_m_cache_age;

/* Register every gateway metric (start-up). */
void routes_metrics_register(void);

/* The evhttp generic callback: arg is the struct gateway. */
void routes_handle(struct evhttp_request *req, void *arg);

/* Start a deferred answer for req (registers the close callback). */
void call_init(struct gw_call *c, struct gateway *gw, struct evhttp_request *req,
	       enum gw_route route);

/* Answer a call (takes body); a dead call is only counted. */
void call_reply(struct gw_call *c, int code, struct cJSON *body);
void call_error(struct gw_call *c, int code, const char *error, const char *reason);

/* Delivery report of the intent produced for pd (runs on the loop). */
/*
 * A delivery report. When it failed, maybe_stored says the broker may
 * have stored the intent anyway (timed out or purged in flight): then the
 * buyer must not be told that nothing happened.
 */
void routes_on_delivery(struct gateway *gw, struct pending *pd, rd_kafka_resp_err_t err,
			bool maybe_stored);

#endif
