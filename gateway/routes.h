/*
 * HTTP handlers of the public API: the dispatch of every request, the
 * purchase filters, and the purchase operations answered after a Redis
 * read and/or a Kafka delivery (answers go through call.h; the admin API
 * is admin.h).
 */
#ifndef FLASHSALE_GATEWAY_ROUTES_H
#define FLASHSALE_GATEWAY_ROUTES_H

#include <stdbool.h>

#include <librdkafka/rdkafka.h>

struct evhttp_request;

/* Register every gateway metric, the other modules' too, in /metrics order (start-up). */
void routes_metrics_register(void);

/* The public listener's evhttp generic callback: arg is the struct gateway. */
void routes_handle(struct evhttp_request *req, void *arg);

/* The admin listener's generic callback (/admin/promotions): arg is the struct gateway. */
void routes_handle_admin(struct evhttp_request *req, void *arg);

/*
 * The producer's delivery callback (producer_delivery_cb): arg is the
 * struct gateway, msg_opaque the request that produced the intent.
 */
void routes_on_delivery(void *arg, void *msg_opaque, rd_kafka_resp_err_t err,
			bool maybe_stored);

/*
 * A purchase changed state (fs:st, push.c): its long polls on this loop
 * read it again now. gw is the struct gateway of the calling loop.
 */
struct gateway;
void routes_purchase_moved(struct gateway *gw, const char *request_id);

/*
 * Every long poll of this loop reads again now: a drain (each answers
 * with what it reads), or a new fs:st subscription (pushes may have been
 * missed while it was down).
 */
void routes_wake_all(struct gateway *gw);

struct admit_result;

/*
 * The admission callback (admit_done_cb): arg is the struct gateway, opaque
 * the purchase. Admitted: produce; otherwise answer.
 */
void routes_on_admitted(void *arg, void *opaque, const struct admit_result *r);

#endif
