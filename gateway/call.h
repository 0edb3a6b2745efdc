/*
 * Answering HTTP requests: the JSON replies every handler sends, counted by
 * route and status code, and the bookkeeping of an answer that comes later
 * (a Kafka delivery, a Redis or PostgreSQL reply).
 *
 * A deferred answer lives in a struct gw_call. evhttp serves one request
 * per connection at a time, so the call registers the connection's close
 * callback: if the client goes away first the call is marked dead and the
 * late answer is dropped without touching memory evhttp freed.
 */
#ifndef FLASHSALE_GATEWAY_CALL_H
#define FLASHSALE_GATEWAY_CALL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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

/* Register gateway_requests_total, one series per route and code (start-up). */
void call_metrics_register(void);

/* The body as a contiguous string, or NULL when empty or too large (len still set). */
const char *call_body(struct gateway *gw, struct evhttp_request *req, size_t *len);

/* {"error": error, "reason": reason}, to be completed or sent. */
struct cJSON *call_error_body(const char *error, const char *reason);

/* Answer req at once with body (taken); close asks the client to go away. */
void call_reply_now(struct evhttp_request *req, enum gw_route route, int code,
		    struct cJSON *body, bool close);
void call_error_now(struct evhttp_request *req, enum gw_route route, int code,
		    const char *error, const char *reason, bool close);

/*
 * The refusal a buyer gets most (sold out, throttled), written without
 * building a cJSON tree: {"error", "reason"[, "retry_after_ms" and a
 * Retry-After header in whole seconds, when retry_ms >= 0][, "may_return",
 * when may_return >= 0]}. The same JSON call_error_body would give.
 */
void call_refusal_now(struct evhttp_request *req, enum gw_route route, int code,
		      const char *error, const char *reason, int64_t retry_ms, int may_return,
		      bool close);

/*
 * s as a JSON string, quotes included, into out (n bytes, NUL-terminated),
 * escaped as cJSON escapes. Its length, or 0 when it does not fit.
 */
size_t call_json_string(char *out, size_t n, const char *s);

/*
 * {"k1":"v1","k2":"v2",...} from kv (pairs key, value: 2 x pairs strings)
 * into out (n bytes, NUL-terminated), as cJSON prints an object of those
 * strings. Its length, or 0 when it does not fit.
 */
size_t call_json_object(char *out, size_t n, const char *const *kv, size_t pairs);

/*
 * call_json_object's text and a newline, the body of an answer: in buf (n
 * bytes) when it fits, else in memory put in *heap for the caller to free
 * (*heap is NULL otherwise). Its length; 0 only when memory ran out.
 */
size_t call_strings_body(char *buf, size_t n, const char *const *kv, size_t pairs,
			 char **heap);

/* Start a deferred answer for req (registers the close callback). */
void call_init(struct gw_call *c, struct gateway *gw, struct evhttp_request *req,
	       enum gw_route route);

/* Answer a call (takes body); a dead call is only counted. */
void call_reply(struct gw_call *c, int code, struct cJSON *body);
void call_error(struct gw_call *c, int code, const char *error, const char *reason);
/*
 * Answer a call with an object of strings (call_json_object), the 202 every
 * accepted purchase gets, without a cJSON tree; a dead call is only counted.
 */
void call_reply_strings(struct gw_call *c, int code, const char *const *kv, size_t pairs);
/* call_refusal_now for a call; a dead call is only counted. */
void call_refusal(struct gw_call *c, int code, const char *error, const char *reason,
		  int64_t retry_ms, int may_return);

#endif
