#include "loadgen_http.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <netinet/in.h>
#include <netinet/tcp.h>

#include <event2/event.h>

#define LG_HTTP_HEAD_MAX (64 * 1024)
#define LG_HTTP_BODY_MAX (1024 * 1024)
#define LG_HTTP_READ 4096

static void http_cb(evutil_socket_t fd, short what, void *arg);

void lg_http_init(struct lg_http *c, struct event_base *base, const struct sockaddr *sa,
		  socklen_t salen, lg_http_done_cb done, void *arg)
{
	memset(c, 0, sizeof(*c));
	c->base = base;
	c->sa = sa;
	c->salen = salen;
	c->fd = -1;
	c->done = done;
	c->arg = arg;
}

static void http_close(struct lg_http *c)
{
	if (c->ev != NULL) {
		event_free(c->ev);
		c->ev = NULL;
	}
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->ev_what = 0;
	c->inlen = 0;
	c->outlen = c->outoff = 0;
}

void lg_http_free(struct lg_http *c)
{
	http_close(c);
	free(c->in);
	free(c->out);
	c->in = c->out = NULL;
	c->incap = c->outcap = 0;
	c->busy = false;
}

/* The request out failed: close, and say so. */
static void http_fail(struct lg_http *c)
{
	http_close(c);
	if (c->busy) {
		c->busy = false;
		c->done(c->arg, 0, NULL, 0);
	}
}

/* Wait for what (EV_READ, with EV_WRITE while request bytes are left). */
static int http_watch(struct lg_http *c, short what)
{
	if (c->ev_what == what)
		return 0;
	if (c->ev_what != 0)
		event_del(c->ev);
	if (event_assign(c->ev, c->base, c->fd, what | EV_PERSIST, http_cb, c) < 0 ||
	    event_add(c->ev, NULL) < 0)
		return -1;
	c->ev_what = what;
	return 0;
}

static int http_connect(struct lg_http *c)
{
	int one = 1;
	int fd = socket(c->sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	if (c->sa->sa_family != AF_UNIX)
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, c->sa, c->salen) < 0 && errno != EINPROGRESS) {
		close(fd);
		return -1;
	}
	c->fd = fd;
	c->ev = event_new(c->base, -1, 0, http_cb, c);
	if (c->ev == NULL || http_watch(c, EV_READ) < 0) {
		http_close(c);
		return -1;
	}
	return 0;
}

/* Write what is left of the request; -1 on a broken connection. */
static int http_flush(struct lg_http *c)
{
	while (c->outoff < c->outlen) {
		ssize_t n = write(c->fd, c->out + c->outoff, c->outlen - c->outoff);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return http_watch(c, EV_READ | EV_WRITE);
		if (n <= 0)
			return -1;
		c->outoff += (size_t)n;
	}
	c->outlen = c->outoff = 0;
	return http_watch(c, EV_READ);
}

int lg_http_send(struct lg_http *c, const char *req, size_t len, int64_t deadline_us)
{
	ssize_t n = -1;

	if (c->busy)
		return -1;
	/*
	 * A keep-alive connection the server closed while idle shows as an
	 * error on the first write, or as an end of file before the answer:
	 * the first is retried on a new connection here, once.
	 */
	for (int attempt = 0; attempt < 2; attempt++) {
		if (c->fd < 0 && http_connect(c) < 0)
			return -1;
		do
			n = write(c->fd, req, len);
		while (n < 0 && errno == EINTR);
		if (n >= 0 || errno == EAGAIN || errno == EWOULDBLOCK)
			break;
		http_close(c);
	}
	if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
		return -1;
	if (n < 0)
		n = 0;
	c->inlen = 0;
	c->deadline_us = deadline_us;
	if ((size_t)n < len) {
		/* Still connecting, or a full socket buffer: the rest on EV_WRITE. */
		if (c->outcap < len - (size_t)n) {
			char *o = realloc(c->out, len);

			if (o == NULL) {
				http_close(c);
				return -1;
			}
			c->out = o;
			c->outcap = len;
		}
		memcpy(c->out, req + n, len - (size_t)n);
		c->outlen = len - (size_t)n;
		c->outoff = 0;
		if (http_watch(c, EV_READ | EV_WRITE) < 0) {
			http_close(c);
			return -1;
		}
	}
	c->busy = true;
	return 0;
}

void lg_http_check_deadline(struct lg_http *c, int64_t now_us)
{
	if (c->busy && now_us >= c->deadline_us)
		http_fail(c);
}

int lg_http_parse(const char *buf, size_t len, struct lg_http_answer *a)
{
	const char *end = len >= 4 ? memmem(buf, len, "\r\n\r\n", 4) : NULL;
	const char *line, *eol;
	bool have_length = false;
	size_t length = 0;

	memset(a, 0, sizeof(*a));
	if (end == NULL)
		return len > LG_HTTP_HEAD_MAX ? -1 : 0;
	/* "HTTP/1.x NNN" */
	if (end - buf < 12 || memcmp(buf, "HTTP/1.", 7) != 0 || buf[8] != ' ' ||
	    buf[9] < '1' || buf[9] > '5' || buf[10] < '0' || buf[10] > '9' ||
	    buf[11] < '0' || buf[11] > '9' || (buf[12] != ' ' && buf[12] != '\r'))
		return -1;
	a->code = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
	a->head = (size_t)(end - buf) + 4;
	for (line = memchr(buf, '\n', a->head) + 1; line < end; line = eol + 2) {
		eol = memmem(line, (size_t)(end + 2 - line), "\r\n", 2);
		if (eol == NULL)
			return -1;
		if (eol - line > 15 && strncasecmp(line, "content-length:", 15) == 0) {
			const char *p = line + 15;

			while (p < eol && (*p == ' ' || *p == '\t'))
				p++;
			if (p == eol)
				return -1;
			for (length = 0; p < eol && *p >= '0' && *p <= '9'; p++) {
				length = length * 10 + (size_t)(*p - '0');
				if (length > LG_HTTP_BODY_MAX)
					return -1;
			}
			while (p < eol && (*p == ' ' || *p == '\t'))
				p++;
			if (p != eol)
				return -1;
			have_length = true;
		} else if (eol - line >= 18 &&
			   strncasecmp(line, "transfer-encoding:", 18) == 0) {
			return -1;      /* chunked (or anything else): not ours */
		} else if (eol - line >= 11 && strncasecmp(line, "connection:", 11) == 0) {
			const char *p = line + 11;

			while (p < eol && (*p == ' ' || *p == '\t'))
				p++;
			if (eol - p >= 5 && strncasecmp(p, "close", 5) == 0)
				a->closes = true;
		}
	}
	if (a->code < 200)
		return -1;              /* interim answers: never asked for (no Expect) */
	if (!have_length && (a->code == 204 || a->code == 304))
		have_length = true;     /* no body by definition */
	if (!have_length) {
		a->until_close = true;
		return len - a->head > LG_HTTP_BODY_MAX ? -1 : 0;
	}
	a->total = a->head + length;
	return len >= a->total ? 1 : 0;
}

/* Hand the answer in c->in[0..total) to done. */
static void http_deliver(struct lg_http *c, const struct lg_http_answer *a, size_t total)
{
	/* Bytes nobody asked for, or an answer before the request was all out: drop the connection. */
	bool extra = c->inlen > total || c->outoff < c->outlen;
	size_t blen = total - a->head;

	c->in[total] = '\0';            /* incap keeps a byte for it */
	c->busy = false;
	c->inlen = 0;
	if (extra || a->closes || a->until_close)
		http_close(c);
	/* c->in stays as it is until the next read, after done returns. */
	c->done(c->arg, a->code, blen > 0 ? c->in + a->head : NULL, blen);
}

static void http_cb(evutil_socket_t fd, short what, void *arg)
{
	struct lg_http *c = arg;
	struct lg_http_answer a;
	ssize_t n;
	int rc;

	(void)fd;
	if ((what & EV_WRITE) && http_flush(c) < 0) {
		http_fail(c);
		return;
	}
	if (!(what & EV_READ))
		return;
	if (c->incap - c->inlen < LG_HTTP_READ + 1) {
		/* Room for the largest answer the parser takes, a read and the NUL. */
		size_t most = LG_HTTP_HEAD_MAX + LG_HTTP_BODY_MAX + LG_HTTP_READ + 1;
		size_t cap = c->incap ? c->incap * 2 : 2 * LG_HTTP_READ;
		char *in;

		if (cap > most)
			cap = most;
		in = cap > c->incap ? realloc(c->in, cap) : NULL;

		if (in == NULL) {
			http_fail(c);
			return;
		}
		c->in = in;
		c->incap = cap;
	}
	do
		n = read(c->fd, c->in + c->inlen, c->incap - c->inlen - 1);
	while (n < 0 && errno == EINTR);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		return;
	if (n <= 0) {
		/* The end: it completes an answer that runs until close, or fails the request. */
		if (c->busy && lg_http_parse(c->in, c->inlen, &a) == 0 && a.until_close) {
			http_deliver(c, &a, c->inlen);
			return;
		}
		http_fail(c);
		return;
	}
	c->inlen += (size_t)n;
	if (!c->busy) {
		http_close(c);          /* nothing was asked */
		return;
	}
	rc = lg_http_parse(c->in, c->inlen, &a);
	if (rc < 0)
		http_fail(c);
	else if (rc > 0)
		http_deliver(c, &a, a.total);
}
