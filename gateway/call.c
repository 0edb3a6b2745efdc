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

/* Send code with a JSON body of len bytes (the newline included, if any); count it. */
static void call_send_json(struct evhttp_request *req, enum gw_route route, int code,
			   const char *body, size_t len, bool close)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);

	evhttp_add_header(h, "Content-Type", "application/json");
	if (close)
		evhttp_add_header(h, "Connection", "close");
	if (len > 0)
		evbuffer_add(evhttp_request_get_output_buffer(req), body, len);
	call_count(route, code);
	evhttp_send_reply(req, code, NULL, NULL);
}

void call_reply_now(struct evhttp_request *req, enum gw_route route, int code,
		    cJSON *body, bool close)
{
	char *text = body ? cJSON_PrintUnformatted(body) : NULL;
	size_t len = text != NULL ? strlen(text) : 0;

	if (text != NULL)
		evbuffer_add(evhttp_request_get_output_buffer(req), text, len);
	call_send_json(req, route, code, "\n", text != NULL ? 1 : 0, close);
	free(text);
	cJSON_Delete(body);
}

size_t call_json_string(char *out, size_t n, const char *s)
{
	static const char hex[] = "0123456789abcdef";
	size_t len = 0;

	if (n < 3)
		return 0;
	out[len++] = '"';
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;
		char esc = c == '"' ? '"' : c == '\\' ? '\\' : c == '\b' ? 'b' : c == '\f' ? 'f' :
			   c == '\n' ? 'n' : c == '\r' ? 'r' : c == '\t' ? 't' : 0;

		/* This character, then the closing quote and the NUL must fit. */
		if (len + (esc != 0 ? 2 : c < 0x20 ? 6 : 1) + 2 > n)
			return 0;
		if (esc != 0) {
			out[len++] = '\\';
			out[len++] = esc;
		} else if (c < 0x20) {
			memcpy(out + len, "\\u00", 4);
			out[len + 4] = hex[c >> 4];
			out[len + 5] = hex[c & 15];
			len += 6;
		} else {
			out[len++] = (char)c;
		}
	}
	out[len++] = '"';
	out[len] = '\0';
	return len;
}

size_t call_json_object(char *out, size_t n, const char *const *kv, size_t pairs)
{
	size_t len = 0, w;

	if (n < 3)
		return 0;
	out[len++] = '{';
	for (size_t i = 0; i < 2 * pairs; i++) {
		/* Key or value, then ':' or ',' or the closing brace, then the NUL. */
		if (i > 0)
			out[len++] = i % 2 ? ':' : ',';
		w = call_json_string(out + len, n - len, kv[i]);
		if (w == 0 || len + w + 2 > n)
			return 0;
		len += w;
	}
	out[len++] = '}';
	out[len] = '\0';
	return len;
}

/* n bytes of s at out + at; the new length. */
static size_t put(char *out, size_t at, const char *s, size_t n)
{
	memcpy(out + at, s, n);
	return at + n;
}

void call_refusal_now(struct evhttp_request *req, enum gw_route route, int code,
		      const char *error, const char *reason, int64_t retry_ms, int may_return,
		      bool close)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	char e[128], r[512], body[768], secs[24];
	size_t el = call_json_string(e, sizeof(e), error);
	size_t rl = el > 0 ? call_json_string(r, sizeof(r), reason) : 0;
	size_t len;

	if (el == 0 || rl == 0) {
		/* Longer than any refusal of ours: the general path copes. */
		cJSON *o = call_error_body(error, reason);

		if (retry_ms >= 0)
			cJSON_AddNumberToObject(o, "retry_after_ms", (double)retry_ms);
		if (may_return >= 0)
			cJSON_AddBoolToObject(o, "may_return", may_return != 0);
		if (retry_ms >= 0) {
			snprintf(secs, sizeof(secs), "%lld", (long long)((retry_ms + 999) / 1000));
			evhttp_add_header(h, "Retry-After", secs);
		}
		call_reply_now(req, route, code, o, close);
		return;
	}
	/* Parts of known length, copied: printf's parsing was most of this. */
	len = 0;
	len = put(body, len, "{\"error\":", 9);
	len = put(body, len, e, el);
	len = put(body, len, ",\"reason\":", 10);
	len = put(body, len, r, rl);
	if (retry_ms >= 0) {
		len = put(body, len, ",\"retry_after_ms\":", 18);
		len += fmt_i64(body + len, retry_ms);
		(void)fmt_i64(secs, (retry_ms + 999) / 1000);
		evhttp_add_header(h, "Retry-After", secs);
	}
	if (may_return >= 0)
		len = may_return ? put(body, len, ",\"may_return\":true", 18) :
		      put(body, len, ",\"may_return\":false", 19);
	len = put(body, len, "}\n", 2);
	call_send_json(req, route, code, body, len, close);
}

void call_error_now(struct evhttp_request *req, enum gw_route route, int code,
		    const char *error, const char *reason, bool close)
{
	call_refusal_now(req, route, code, error, reason, -1, -1, close);
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

/* The request to answer now, detached from the call; NULL (counted) when the client left. */
static struct evhttp_request *call_take(struct gw_call *c, int code)
{
	struct evhttp_request *req = c->req;

	if (req == NULL) {
		call_count(c->route, code);
		return NULL;
	}
	if (c->evcon != NULL)
		evhttp_connection_set_closecb(c->evcon, NULL, NULL);
	c->req = NULL;
	c->evcon = NULL;
	return req;
}

void call_reply(struct gw_call *c, int code, cJSON *body)
{
	struct evhttp_request *req = call_take(c, code);

	if (req == NULL)
		cJSON_Delete(body);
	else
		call_reply_now(req, c->route, code, body, c->gw->draining);
}

size_t call_strings_body(char *buf, size_t n, const char *const *kv, size_t pairs,
			 char **heap)
{
	/* Every byte escapes to at most 6 ("\u00XX"), plus quotes and separators. */
	size_t need = 4, len;

	*heap = NULL;
	if (n > 1 && (len = call_json_object(buf, n - 1, kv, pairs)) > 0) {
		buf[len++] = '\n';
		return len;
	}
	for (size_t i = 0; i < 2 * pairs; i++)
		need += 6 * strlen(kv[i]) + 3;
	*heap = malloc(need + 1);
	if (*heap == NULL || (len = call_json_object(*heap, need, kv, pairs)) == 0) {
		free(*heap);
		*heap = NULL;
		return 0;
	}
	(*heap)[len++] = '\n';
	return len;
}

void call_reply_strings(struct gw_call *c, int code, const char *const *kv, size_t pairs)
{
	struct evhttp_request *req = call_take(c, code);
	char body[1024], *heap;
	size_t len;

	if (req == NULL)
		return;
	/* Longer than 1 KiB only if a caller ever answers with long strings. */
	len = call_strings_body(body, sizeof(body), kv, pairs, &heap);
	if (len == 0) {
		call_error_now(req, c->route, 500, "internal", "out of memory", c->gw->draining);
		return;
	}
	call_send_json(req, c->route, code, heap != NULL ? heap : body, len, c->gw->draining);
	free(heap);
}

void call_refusal(struct gw_call *c, int code, const char *error, const char *reason,
		  int64_t retry_ms, int may_return)
{
	struct evhttp_request *req = call_take(c, code);

	if (req != NULL)
		call_refusal_now(req, c->route, code, error, reason, retry_ms, may_return,
				 c->gw->draining);
}

void call_error(struct gw_call *c, int code, const char *error, const char *reason)
{
	call_reply(c, code, call_error_body(error, reason));
}
