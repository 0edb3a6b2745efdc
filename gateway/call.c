#include "gateway.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "metrics.h"

static const char *const route_names[ROUTE_N] = {
	"purchase", "purchase_get", "pay", "cancel", "promotion_get", "promotion_admin",
	"time", "other",
};
static const int codes[] = { 200, 201, 202, 400, 401, 403, 404, 405, 409, 429, 500, 503 };
#define NCODES (sizeof(codes) / sizeof(codes[0]))
static struct metric m_requests[ROUTE_N][NCODES + 1];   /* + "other" code */
static char m_request_labels[ROUTE_N][NCODES + 1][64];

void call_metrics_register(void)
{
	for (int r = 0; r < ROUTE_N; r++) {
		for (size_t i = 0; i <= NCODES; i++) {
			struct metric *m = &m_requests[r][i];

			if (i < NCODES)
				snprintf(m_request_labels[r][i], sizeof(m_request_labels[r][i]),
					 "route=\"%s\",code=\"%d\"", route_names[r], codes[i]);
			else
				snprintf(m_request_labels[r][i], sizeof(m_request_labels[r][i]),
					 "route=\"%s\",code=\"other\"", route_names[r]);
			m->name = "gateway_requests_total";
			m->help = "HTTP requests answered, by route and status code";
			m->labels = m_request_labels[r][i];
			m->type = METRIC_COUNTER;
			metrics_register(m);
		}
	}
}

static void call_count(enum gw_route route, int code)
{
	size_t i;

	for (i = 0; i < NCODES; i++)
		if (codes[i] == code)
			break;
	metric_add(&m_requests[route][i], 1);
}

const char *call_body(struct gateway *gw, struct evhttp_request *req, size_t *len)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);

	*len = evbuffer_get_length(in);
	if (*len > (size_t)gw->cfg.max_body || *len == 0)
		return NULL;
	return (const char *)evbuffer_pullup(in, (ev_ssize_t)*len);
}

cJSON *call_error_body(const char *error, const char *reason)
{
	cJSON *o = cJSON_CreateObject();

	cJSON_AddStringToObject(o, "error", error);
	cJSON_AddStringToObject(o, "reason", reason);
	return o;
}

void call_reply_now(struct evhttp_request *req, enum gw_route route, int code,
		    cJSON *body, bool close)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	struct evbuffer *buf = evhttp_request_get_output_buffer(req);
	char *text = body ? cJSON_PrintUnformatted(body) : NULL;

	evhttp_add_header(h, "Content-Type", "application/json");
	if (close)
		evhttp_add_header(h, "Connection", "close");
	if (text != NULL) {
		evbuffer_add(buf, text, strlen(text));
		evbuffer_add(buf, "\n", 1);
	}
	free(text);
	cJSON_Delete(body);
	call_count(route, code);
	evhttp_send_reply(req, code, NULL, NULL);
}

void call_error_now(struct evhttp_request *req, enum gw_route route, int code,
		    const char *error, const char *reason, bool close)
{
	call_reply_now(req, route, code, call_error_body(error, reason), close);
}

/*
 * evhttp calls this when the connection goes away. On EOF while a request
 * is unanswered, libevent 2.1 detaches the request (evcon = NULL) and leaves
 * it to us: free it here. Otherwise evhttp frees it right after: forget it.
 */
static void call_closecb(struct evhttp_connection *evcon, void *arg)
{
	struct gw_call *c = arg;

	c->dead = true;
	c->evcon = NULL;
	if (c->req != NULL && evhttp_request_get_connection(c->req) == NULL)
		evhttp_request_free(c->req);
	c->req = NULL;
}

void call_init(struct gw_call *c, struct gateway *gw, struct evhttp_request *req,
	       enum gw_route route)
{
	c->gw = gw;
	c->req = req;
	c->route = route;
	c->dead = false;
	c->evcon = evhttp_request_get_connection(req);
	if (c->evcon != NULL)
		evhttp_connection_set_closecb(c->evcon, call_closecb, c);
}

void call_reply(struct gw_call *c, int code, cJSON *body)
{
	if (c->req == NULL) {
		/* the client left: count what it would have got */
		call_count(c->route, code);
		cJSON_Delete(body);
		return;
	}
	if (c->evcon != NULL)
		evhttp_connection_set_closecb(c->evcon, NULL, NULL);
	call_reply_now(c->req, c->route, code, body, c->gw->draining);
	c->req = NULL;
	c->evcon = NULL;
}

void call_error(struct gw_call *c, int code, const char *error, const char *reason)
{
	call_reply(c, code, call_error_body(error, reason));
}
