#include "redisx.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include <event2/event.h>
#include <hiredis/async.h>

#include "array.h"

/*
 * Split "unix:/path" or "host:port". Returns 1 for a Unix socket (path in
 * host), 0 for TCP, -1 when malformed.
 */
static int redisx_parse(const char *address, char *host, size_t hostlen, int *port,
			char *err, size_t errlen)
{
	const char *colon;
	char *end;
	long p;

	if (address == NULL || address[0] == '\0') {
		snprintf(err, errlen, "empty redis address");
		return -1;
	}
	if (strncmp(address, "unix:", 5) == 0) {
		if (address[5] == '\0' || strlen(address + 5) >= hostlen) {
			snprintf(err, errlen, "bad redis address '%s'", address);
			return -1;
		}
		snprintf(host, hostlen, "%s", address + 5);
		*port = 0;
		return 1;
	}
	colon = strrchr(address, ':');
	if (colon == NULL || colon == address || (size_t)(colon - address) >= hostlen) {
		snprintf(err, errlen, "bad redis address '%s' (want unix:/path or host:port)",
			 address);
		return -1;
	}
	p = strtol(colon + 1, &end, 10);
	if (colon[1] == '\0' || *end != '\0' || p <= 0 || p > 65535) {
		snprintf(err, errlen, "bad port in redis address '%s'", address);
		return -1;
	}
	memcpy(host, address, (size_t)(colon - address));
	host[colon - address] = '\0';
	/* "[::1]:6379" */
	if (host[0] == '[' && host[strlen(host) - 1] == ']') {
		memmove(host, host + 1, strlen(host));
		host[strlen(host) - 1] = '\0';
	}
	*port = (int)p;
	return 0;
}

/* timeout_ms <= 0: no connect or command timeout. */
redisContext *redisx_connect(const char *address, int timeout_ms,
			     char *err, size_t errlen)
{
	struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
	char host[512];
	int port, kind;
	redisContext *c;

	kind = redisx_parse(address, host, sizeof(host), &port, err, errlen);
	if (kind < 0)
		return NULL;
	/* A zero timeout would make hiredis give up at once: treat it as "none". */
	if (kind == 1)
		c = timeout_ms > 0 ? redisConnectUnixWithTimeout(host, tv) : redisConnectUnix(host);
	else
		c = timeout_ms > 0 ? redisConnectWithTimeout(host, port, tv) : redisConnect(host, port);
	if (c == NULL) {
		snprintf(err, errlen, "redis %s: cannot allocate context", address);
		return NULL;
	}
	if (c->err) {
		snprintf(err, errlen, "redis %s: %s", address, c->errstr);
		redisFree(c);
		return NULL;
	}
	if (timeout_ms > 0 && redisSetTimeout(c, tv) != REDIS_OK) {
		snprintf(err, errlen, "redis %s: cannot set timeout: %s", address, c->errstr);
		redisFree(c);
		return NULL;
	}
	return c;
}

/*
 * hiredis's libevent adapter (adapters/libevent.h), with two changes. A
 * readable socket is read until it is empty: hiredis takes 16 KB a call,
 * so a burst of pub/sub messages used to take one loop turn per 16 KB, and
 * under load a turn is tens of milliseconds (bench/run, 100,000 buyers for
 * 10,000 SKUs: sold-out pushes reached a loop up to 164 ms late). And the
 * events may get a libevent priority.
 */
struct redisx_ev {
	redisAsyncContext *ac;
	struct event *rev, *wev;
	bool reading;               /* inside redisx_ev_read */
	bool freed;                 /* hiredis cleaned up meanwhile: free on the way out */
};

/* Reads per wake-up at most (16 KB each): other events get their turn too. */
#define REDISX_READS_MAX 64

static void redisx_ev_free(struct redisx_ev *e)
{
	event_free(e->rev);
	event_free(e->wev);
	free(e);
}

static void redisx_ev_read(evutil_socket_t fd, short what, void *arg)
{
	struct redisx_ev *e = arg;
	int avail;

	(void)what;
	e->reading = true;
	for (int i = 0; i < REDISX_READS_MAX; i++) {
		redisAsyncHandleRead(e->ac);
		/* A callback may have closed the context: then e->ac is gone. */
		if (e->freed || ioctl(fd, FIONREAD, &avail) < 0 || avail <= 0)
			break;
	}
	e->reading = false;
	if (e->freed)
		redisx_ev_free(e);
}

static void redisx_ev_write(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	redisAsyncHandleWrite(((struct redisx_ev *)arg)->ac);
}

static void redisx_ev_add_read(void *privdata)
{
	event_add(((struct redisx_ev *)privdata)->rev, NULL);
}

static void redisx_ev_del_read(void *privdata)
{
	event_del(((struct redisx_ev *)privdata)->rev);
}

static void redisx_ev_add_write(void *privdata)
{
	event_add(((struct redisx_ev *)privdata)->wev, NULL);
}

static void redisx_ev_del_write(void *privdata)
{
	event_del(((struct redisx_ev *)privdata)->wev);
}

static void redisx_ev_cleanup(void *privdata)
{
	struct redisx_ev *e = privdata;

	if (e->reading) {
		event_del(e->rev);
		event_del(e->wev);
		e->freed = true;
		return;
	}
	redisx_ev_free(e);
}

static int redisx_attach(redisAsyncContext *ac, struct event_base *base, int priority)
{
	struct redisx_ev *e;

	if (ac->ev.data != NULL || (e = calloc(1, sizeof(*e))) == NULL)
		return -1;
	e->ac = ac;
	e->rev = event_new(base, ac->c.fd, EV_READ, redisx_ev_read, e);
	e->wev = event_new(base, ac->c.fd, EV_WRITE, redisx_ev_write, e);
	if (e->rev == NULL || e->wev == NULL ||
	    (priority >= 0 && (event_priority_set(e->rev, priority) < 0 ||
			       event_priority_set(e->wev, priority) < 0))) {
		if (e->rev != NULL)
			event_free(e->rev);
		if (e->wev != NULL)
			event_free(e->wev);
		free(e);
		return -1;
	}
	ac->ev.addRead = redisx_ev_add_read;
	ac->ev.delRead = redisx_ev_del_read;
	ac->ev.addWrite = redisx_ev_add_write;
	ac->ev.delWrite = redisx_ev_del_write;
	ac->ev.cleanup = redisx_ev_cleanup;
	ac->ev.data = e;
	/* As the adapter does: the connect completes on the first event of either. */
	event_add(e->rev, NULL);
	event_add(e->wev, NULL);
	return 0;
}

redisAsyncContext *redisx_connect_async(struct event_base *base, const char *address,
					int priority, char *err, size_t errlen)
{
	char host[512];
	int port, kind;
	redisAsyncContext *ac;

	kind = redisx_parse(address, host, sizeof(host), &port, err, errlen);
	if (kind < 0)
		return NULL;
	if (kind == 1)
		ac = redisAsyncConnectUnix(host);
	else
		ac = redisAsyncConnect(host, port);
	if (ac == NULL) {
		snprintf(err, errlen, "redis %s: cannot allocate context", address);
		return NULL;
	}
	if (ac->err) {
		snprintf(err, errlen, "redis %s: %s", address, ac->errstr);
		redisAsyncFree(ac);
		return NULL;
	}
	if (redisx_attach(ac, base, priority) < 0) {
		snprintf(err, errlen, "redis %s: cannot attach to the event loop", address);
		redisAsyncFree(ac);
		return NULL;
	}
	return ac;
}

int redisx_script_load(redisContext *c, const char *src, char sha[41],
		       char *err, size_t errlen)
{
	redisReply *r = redisCommand(c, "SCRIPT LOAD %s", src);
	int rc = -1;

	if (r == NULL) {
		snprintf(err, errlen, "SCRIPT LOAD: %s", c->errstr[0] ? c->errstr : "no reply");
		return -1;
	}
	if (r->type == REDIS_REPLY_ERROR)
		snprintf(err, errlen, "SCRIPT LOAD: %s", r->str);
	else if (r->type != REDIS_REPLY_STRING || r->len != 40)
		snprintf(err, errlen, "SCRIPT LOAD: unexpected reply type %d", r->type);
	else {
		memcpy(sha, r->str, 40);
		sha[40] = '\0';
		rc = 0;
	}
	freeReplyObject(r);
	return rc;
}

long long redisx_time_ms(redisContext *c, char *err, size_t errlen)
{
	redisReply *r = redisCommand(c, "TIME");
	long long ms = -1;

	if (r == NULL) {
		snprintf(err, errlen, "TIME: %s", c->errstr[0] ? c->errstr : "no reply");
		return -1;
	}
	if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
	    r->element[0]->type == REDIS_REPLY_STRING &&
	    r->element[1]->type == REDIS_REPLY_STRING) {
		long long s = strtoll(r->element[0]->str, NULL, 10);
		long long us = strtoll(r->element[1]->str, NULL, 10);

		ms = s * 1000 + us / 1000;
	} else if (r->type == REDIS_REPLY_ERROR) {
		snprintf(err, errlen, "TIME: %s", r->str);
	} else {
		snprintf(err, errlen, "TIME: unexpected reply type %d", r->type);
	}
	freeReplyObject(r);
	return ms;
}

redisReply *redisx_must(redisContext *c, redisReply *r, const char *what, char *err,
			size_t errlen)
{
	if (r == NULL) {
		snprintf(err, errlen, "redis %s: %s", what, c->errstr[0] ? c->errstr : "no reply");
		return NULL;
	}
	if (r->type == REDIS_REPLY_ERROR) {
		snprintf(err, errlen, "redis %s: %s", what, r->str);
		freeReplyObject(r);
		return NULL;
	}
	return r;
}

/* Room for n more bytes; false (oom set) when there is none. */
static bool resp_room(struct resp *r, size_t n)
{
	if (r->oom)
		return false;
	if (r->len + n > r->cap && ARRAY_GROW(r->buf, r->cap, r->len + n) < 0) {
		r->oom = true;
		return false;
	}
	return true;
}

/* "<c><n>\r\n": an array's or a bulk string's header. */
static void resp_head(struct resp *r, char c, size_t n)
{
	if (!resp_room(r, 24))
		return;
	r->buf[r->len++] = c;
	r->len += fmt_i64(r->buf + r->len, (int64_t)n);
	r->buf[r->len++] = '\r';
	r->buf[r->len++] = '\n';
}

void resp_begin(struct resp *r, size_t argc)
{
	r->len = 0;
	r->oom = false;
	resp_head(r, '*', argc);
}

void resp_arg(struct resp *r, const char *s, size_t n)
{
	resp_head(r, '$', n);
	if (!resp_room(r, n + 2))
		return;
	memcpy(r->buf + r->len, s, n);
	r->len += n;
	r->buf[r->len++] = '\r';
	r->buf[r->len++] = '\n';
}

void resp_arg2(struct resp *r, const char *prefix, const char *s)
{
	size_t pn = strlen(prefix), sn = strlen(s);

	resp_head(r, '$', pn + sn);
	if (!resp_room(r, pn + sn + 2))
		return;
	memcpy(r->buf + r->len, prefix, pn);
	memcpy(r->buf + r->len + pn, s, sn);
	r->len += pn + sn;
	r->buf[r->len++] = '\r';
	r->buf[r->len++] = '\n';
}

void resp_int(struct resp *r, long long v)
{
	char d[21];

	resp_arg(r, d, fmt_i64(d, v));
}

void resp_free(struct resp *r)
{
	free(r->buf);
	memset(r, 0, sizeof(*r));
}
