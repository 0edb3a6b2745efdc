#include "conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "log.h"
#include "metrics.h"

#define PROXY_LINE_MAX 108      /* PROXY protocol v1: at most 107 bytes and CRLF */
#define NAME_PEEK 24            /* enough of a header line to know its name */

struct gw_cidr {
	int family;
	uint8_t addr[16];
	int bits;
};

struct gw_conn {
	struct gw_conns *cs;
	struct bufferevent *bev;        /* the filter evhttp reads from */
	struct event *deadline;         /* the current head's */
	struct event *kick;             /* pushes an answer evhttp queued (below) */
	char ip[GW_IP_MAX];             /* the client: peer, or the PROXY line's */
	char key[32];                   /* bev's address (conn_key), in cs->by_bev */
	bool started, counted_ip, refused, in_head, proxy_done, peer_trusted, via_proxy;
	size_t head_bytes, head_lines;
	int content_lengths;
	long long body_left;
};

static const char *const refusal_names[] = {
	[GW_CONN_TOO_MANY] = "too_many", [GW_CONN_SLOW_HEAD] = "slow_head",
	[GW_CONN_BIG_HEAD] = "big_head", [GW_CONN_AMBIGUOUS] = "ambiguous",
};
static struct metric m_refused[4];
static char m_refused_labels[4][32];
static struct metric m_open = { "gateway_connections",
	"Connections open on the public listener", NULL, METRIC_GAUGE };

/* ---- trusted proxies ---- */

static int cidr_parse(const char *text, struct gw_cidr *c)
{
	char buf[64], *slash;
	long bits;

	snprintf(buf, sizeof(buf), "%s", text);
	slash = strchr(buf, '/');
	if (slash != NULL)
		*slash++ = '\0';
	memset(c, 0, sizeof(*c));
	if (inet_pton(AF_INET, buf, c->addr) == 1)
		c->family = AF_INET;
	else if (inet_pton(AF_INET6, buf, c->addr) == 1)
		c->family = AF_INET6;
	else
		return -1;
	bits = c->family == AF_INET ? 32 : 128;
	if (slash != NULL) {
		char *end;
		long b = strtol(slash, &end, 10);

		if (*slash == '\0' || *end != '\0' || b < 0 || b > bits)
			return -1;
		bits = b;
	}
	c->bits = (int)bits;
	return 0;
}

bool gw_conns_trusted(const struct gw_conns *cs, const char *addr)
{
	uint8_t a[16];
	int family = strchr(addr, ':') != NULL ? AF_INET6 : AF_INET;

	if (inet_pton(family, addr, a) != 1)
		return false;
	for (size_t i = 0; i < cs->ntrusted; i++) {
		const struct gw_cidr *c = &cs->trusted[i];
		int full = c->bits / 8, rest = c->bits % 8;

		if (c->family != family || memcmp(a, c->addr, (size_t)full) != 0)
			continue;
		if (rest == 0 || ((a[full] ^ c->addr[full]) & (0xff << (8 - rest))) == 0)
			return true;
	}
	return false;
}

int gw_conn_counts_init(struct gw_conn_counts *cc)
{
	memset(cc, 0, sizeof(*cc));
	strmap_init(&cc->per_ip);
	return pthread_mutex_init(&cc->mu, NULL) == 0 ? 0 : -1;
}

void gw_conn_counts_free(struct gw_conn_counts *cc)
{
	strmap_free(&cc->per_ip);
	pthread_mutex_destroy(&cc->mu);
}

int gw_conns_init(struct gw_conns *cs, struct event_base *base, const struct gw_conn_limits *lim,
		  struct gw_conn_counts *counts, char *err, size_t errlen)
{
	const char *p = lim->trusted_proxies != NULL ? lim->trusted_proxies : "";

	memset(cs, 0, sizeof(*cs));
	cs->base = base;
	cs->lim = *lim;
	cs->counts = counts;
	strmap_init(&cs->by_bev);
	while (*p != '\0') {
		size_t n = strcspn(p, ", ");
		char item[64];
		struct gw_cidr *nt;

		if (n > 0) {
			snprintf(item, sizeof(item), "%.*s", (int)n, p);
			nt = realloc(cs->trusted, (cs->ntrusted + 1) * sizeof(*nt));
			if (nt == NULL) {
				snprintf(err, errlen, "out of memory");
				return -1;
			}
			cs->trusted = nt;
			if (n >= sizeof(item) || cidr_parse(item, &cs->trusted[cs->ntrusted]) < 0) {
				snprintf(err, errlen, "trusted proxy %.*s is not an address or a CIDR",
					 (int)n, p);
				return -1;
			}
			cs->ntrusted++;
		}
		p += n;
		p += strspn(p, ", ");
	}
	for (int i = 0; i < 4; i++) {
		snprintf(m_refused_labels[i], sizeof(m_refused_labels[i]), "reason=\"%s\"",
			 refusal_names[i]);
		m_refused[i].name = "gateway_connections_refused_total";
		m_refused[i].help = "Connections closed by the guard, by reason";
		m_refused[i].labels = m_refused_labels[i];
		m_refused[i].type = METRIC_COUNTER;
		metrics_register(&m_refused[i]);
	}
	metrics_register(&m_open);
	return 0;
}

void gw_conns_free(struct gw_conns *cs)
{
	strmap_free(&cs->by_bev);
	free(cs->trusted);
}

/* ---- one connection ---- */

/* A bufferevent's address in hex, its key in by_bev (looked up per request). */
static void conn_key(char out[32], const struct bufferevent *bev)
{
	static const char hex[] = "0123456789abcdef";
	uintptr_t v = (uintptr_t)bev;
	size_t n = 0;

	do {
		out[n++] = hex[v & 15];
		v >>= 4;
	} while (v != 0);
	out[n] = '\0';
}

/* Count c's client address in or out; the count after, -1 out of memory. */
static int64_t conn_count_ip(struct gw_conn *c, int64_t delta)
{
	struct gw_conn_counts *cc = c->cs->counts;
	int64_t n;

	pthread_mutex_lock(&cc->mu);
	if (strmap_add(&cc->per_ip, c->ip, delta, &n) < 0) {
		log_error("out_of_memory", "what=per_ip");
		n = -1;
	}
	pthread_mutex_unlock(&cc->mu);
	c->counted_ip = delta > 0;
	return n;
}

/*
 * Refuse: a minimal answer written straight to the socket (best effort,
 * never blocking), then both directions shut, so evhttp sees the end and
 * frees the connection; nothing more is passed to it.
 */
static void conn_refuse(struct gw_conn *c, enum gw_conn_refusal why)
{
	static const char *const answers[] = {
		[GW_CONN_TOO_MANY] = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n",
		[GW_CONN_SLOW_HEAD] = "HTTP/1.1 408 Request Timeout\r\n",
		[GW_CONN_BIG_HEAD] = "HTTP/1.1 431 Request Header Fields Too Large\r\n",
		[GW_CONN_AMBIGUOUS] = "HTTP/1.1 400 Bad Request\r\n",
	};
	char buf[256];
	int fd = (int)bufferevent_getfd(c->bev), len;

	if (c->refused)
		return;
	c->refused = true;
	c->cs->refused[why]++;
	metric_add(&m_refused[why], 1);
	log_debug("connection_refused", "ip=%s reason=%s", c->ip, refusal_names[why]);
	len = snprintf(buf, sizeof(buf), "%sConnection: close\r\nContent-Length: 0\r\n\r\n",
		       answers[why]);
	if (fd >= 0) {
		if (send(fd, buf, (size_t)len, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
			log_debug("connection_refuse_send", "err=%s", strerror(errno));
		shutdown(fd, SHUT_RDWR);
	}
	if (c->deadline != NULL)
		event_del(c->deadline);
}

static void conn_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	conn_refuse(arg, GW_CONN_SLOW_HEAD);
}

static void conn_head_begins(struct gw_conn *c)
{
	struct timeval tv = { c->cs->lim.header_timeout_ms / 1000,
			      (c->cs->lim.header_timeout_ms % 1000) * 1000 };

	c->in_head = true;
	c->head_bytes = 0;
	c->head_lines = 0;
	c->content_lengths = 0;
	c->body_left = 0;
	if (c->deadline != NULL)
		event_add(c->deadline, &tv);
}

/* The connection's first turn: who is it, and is there room for it. */
static void conn_start(struct gw_conn *c)
{
	struct gw_conns *cs = c->cs;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	int fd = (int)bufferevent_getfd(c->bev);
	int64_t n;

	if (c->started || fd < 0)
		return;
	c->started = true;
	snprintf(c->ip, sizeof(c->ip), "unknown");
	if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET)
			inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, c->ip, sizeof(c->ip));
		else if (ss.ss_family == AF_INET6)
			inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, c->ip,
				  sizeof(c->ip));
	}
	c->peer_trusted = gw_conns_trusted(cs, c->ip);
	conn_head_begins(c);
	if (__atomic_load_n(&cs->counts->open, __ATOMIC_RELAXED) > cs->lim.max_connections) {
		conn_refuse(c, GW_CONN_TOO_MANY);
		return;
	}
	/* Behind a trusted proxy every connection has its address: the
	 * client's comes with the PROXY line, or per request. */
	if (c->peer_trusted)
		return;
	n = conn_count_ip(c, 1);
	if (n > cs->lim.max_per_ip)
		conn_refuse(c, GW_CONN_TOO_MANY);
}

/*
 * A trusted peer's first bytes may be a PROXY protocol v1 line: the client
 * it stands for. 1 when the line was taken (or there is none), 0 to wait
 * for more, -1 refused.
 */
static int conn_proxy_line(struct gw_conn *c, struct evbuffer *src)
{
	char line[PROXY_LINE_MAX + 1], proto[8], from[GW_IP_MAX], to[GW_IP_MAX], head[6];
	struct evbuffer_ptr eol;
	size_t eol_len, len = evbuffer_get_length(src), k = len < 6 ? len : 6;
	uint8_t bin[16];

	evbuffer_copyout(src, head, k);
	if (memcmp(head, "PROXY ", k) != 0)
		return 1;       /* not a PROXY line: an ordinary request */
	if (k < 6)
		return 0;
	eol = evbuffer_search_eol(src, NULL, &eol_len, EVBUFFER_EOL_CRLF_STRICT);
	if (eol.pos < 0)
		return len > PROXY_LINE_MAX ? -1 : 0;
	if ((size_t)eol.pos > PROXY_LINE_MAX)
		return -1;
	evbuffer_remove(src, line, (size_t)eol.pos);
	evbuffer_drain(src, eol_len);
	line[eol.pos] = '\0';
	if (sscanf(line, "PROXY %7s %45s %45s", proto, from, to) == 3 &&
	    (strcmp(proto, "TCP4") == 0 || strcmp(proto, "TCP6") == 0) &&
	    inet_pton(proto[3] == '4' ? AF_INET : AF_INET6, from, bin) == 1) {
		snprintf(c->ip, sizeof(c->ip), "%s", from);
		c->via_proxy = true;
		if (conn_count_ip(c, 1) > c->cs->lim.max_per_ip)
			return -1;
		return 1;
	}
	return strncmp(line, "PROXY UNKNOWN", 13) == 0 ? 1 : -1;
}

/* Case-insensitive "name:" at the start of a header line. */
static bool header_is(const char *peek, size_t n, const char *name)
{
	size_t l = strlen(name);

	return n > l && strncasecmp(peek, name, l) == 0 && peek[l] == ':';
}

/*
 * One header line of n bytes (eol included) at at in src: its
 * Content-Length (counted: two are refused), no Transfer-Encoding. -1 to
 * refuse the connection.
 */
static int conn_header(struct gw_conn *c, struct evbuffer *src, struct evbuffer_ptr *at, size_t n)
{
	char peek[NAME_PEEK + 32], *end;
	size_t k = n < sizeof(peek) - 1 ? n : sizeof(peek) - 1;
	long long v;

	if (evbuffer_copyout_from(src, at, peek, k) != (ev_ssize_t)k)
		return -1;
	peek[k] = '\0';
	if (header_is(peek, k, "transfer-encoding"))
		return -1;
	if (!header_is(peek, k, "content-length"))
		return 0;
	if (++c->content_lengths > 1 || n > sizeof(peek) - 1)
		return -1;
	v = strtoll(peek + strlen("content-length:"), &end, 10);
	while (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n')
		end++;
	if (v < 0 || *end != '\0')
		return -1;
	c->body_left = v;
	return 0;
}

/*
 * The bytes on their way to evhttp. Each head is checked line by line where
 * it lies in src, and everything checked (heads and the bodies they
 * announce) moves on in one evbuffer_remove_buffer at the end: a whole read
 * moves as the chains it came in, not copied a line at a time.
 */
static enum bufferevent_filter_result conn_filter_in(struct evbuffer *src, struct evbuffer *dst,
						     ev_ssize_t limit, enum bufferevent_flush_mode mode,
						     void *ctx)
{
	struct gw_conn *c = ctx;
	const struct gw_conn_limits *lim = &c->cs->lim;
	struct evbuffer_ptr at;
	size_t checked = 0;     /* bytes of src that may go on */

	(void)limit;
	(void)mode;
	conn_start(c);
	while (!c->refused && evbuffer_get_length(src) > checked) {
		struct evbuffer_ptr eol;
		size_t eol_len, n, left = evbuffer_get_length(src) - checked;

		if (!c->in_head) {
			if (c->body_left == 0) {
				conn_head_begins(c);
				continue;
			}
			n = c->body_left < (long long)left ? (size_t)c->body_left : left;
			c->body_left -= (long long)n;
			checked += n;
			continue;
		}
		if (!c->proxy_done && c->peer_trusted) {
			/* Only a connection's first bytes: nothing is checked yet. */
			int r = conn_proxy_line(c, src);

			if (r < 0)
				conn_refuse(c, GW_CONN_TOO_MANY);
			if (r <= 0)
				break;
		}
		c->proxy_done = true;
		left = evbuffer_get_length(src) - checked;     /* the PROXY line is gone */
		if (evbuffer_ptr_set(src, &at, checked, EVBUFFER_PTR_SET) < 0)
			break;
		eol = evbuffer_search_eol(src, &at, &eol_len, EVBUFFER_EOL_CRLF);
		if (eol.pos < 0) {
			if (c->head_bytes + left > (size_t)lim->max_header_bytes)
				conn_refuse(c, GW_CONN_BIG_HEAD);
			break;
		}
		n = (size_t)eol.pos - checked + eol_len;
		c->head_bytes += n;
		if (c->head_bytes > (size_t)lim->max_header_bytes ||
		    ++c->head_lines > (size_t)lim->max_headers + 1) {
			conn_refuse(c, GW_CONN_BIG_HEAD);
			break;
		}
		if ((size_t)eol.pos == checked) {
			/* The head is whole: its deadline is met. */
			c->in_head = false;
			if (c->deadline != NULL)
				event_del(c->deadline);
		} else if (c->head_lines > 1 && conn_header(c, src, &at, n) < 0) {
			conn_refuse(c, GW_CONN_AMBIGUOUS);
			break;
		}
		checked += n;
	}
	if (checked > 0)
		evbuffer_remove_buffer(src, dst, checked);
	if (c->refused)
		evbuffer_drain(src, evbuffer_get_length(src));
	return checked > 0 ? BEV_OK : BEV_NEED_MORE;
}

/*
 * The answer's way out. libevent 2.1's filter moves output only while the
 * filter is enabled for writing, and evhttp queues an answer before it
 * enables writing (evhttp_send, then evhttp_write_buffer): an answer sent
 * from a later loop turn (after Redis, Kafka) would wait for a write event
 * that never comes. So every addition kicks a flush on the next turn.
 * And evhttp frees a "Connection: close" connection as soon as the filter
 * handed everything on, which frees the socket bufferevent with its
 * output unsent (libevent #616): the filter writes to the socket itself
 * when nothing is queued below it, so only what the kernel would not take
 * waits in the socket bufferevent. The kick's first turn is also the
 * connection's start (conn_start), once evhttp gave it its socket.
 */
static enum bufferevent_filter_result conn_filter_out(struct evbuffer *src, struct evbuffer *dst,
						      ev_ssize_t limit,
						      enum bufferevent_flush_mode mode, void *ctx)
{
	struct gw_conn *c = ctx;
	size_t len = evbuffer_get_length(src);
	int fd = (int)bufferevent_getfd(c->bev);

	(void)limit;
	(void)mode;
	if (len == 0)
		return BEV_NEED_MORE;
	if (fd >= 0 && evbuffer_get_length(dst) == 0)
		(void)evbuffer_write(src, fd);  /* EAGAIN: the rest waits below */
	evbuffer_add_buffer(dst, src);
	return BEV_OK;
}

static void conn_kick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct gw_conn *c = arg;

	(void)fd;
	(void)what;
	conn_start(c);
	(void)bufferevent_flush(c->bev, EV_WRITE, BEV_NORMAL);
}

static void conn_out_added(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	struct gw_conn *c = arg;

	(void)buf;
	if (info->n_added > 0)
		event_active(c->kick, EV_TIMEOUT, 1);
}

static void conn_free(void *ctx)
{
	struct gw_conn *c = ctx;
	int64_t gone;

	if (c->counted_ip)
		(void)conn_count_ip(c, -1);
	if (strmap_add(&c->cs->by_bev, c->key, -strmap_get(&c->cs->by_bev, c->key, 0), &gone) < 0)
		log_error("out_of_memory", "what=by_bev");
	/* Moved, not set: a loop setting the count it fetched could put back an
	 * older one over another loop's newer (CI waited 10 s for 5 of 5). */
	__atomic_sub_fetch(&c->cs->counts->open, 1, __ATOMIC_RELAXED);
	metric_add(&m_open, -1);
	if (c->deadline != NULL)
		event_free(c->deadline);
	if (c->kick != NULL)
		event_free(c->kick);
	free(c);
}

struct bufferevent *gw_conns_bevcb(struct event_base *base, void *arg)
{
	struct gw_conns *cs = arg;
	struct gw_conn *c = calloc(1, sizeof(*c));
	struct bufferevent *under = NULL;
	int64_t one;

	if (c == NULL || (under = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE)) == NULL)
		goto fail;
	c->cs = cs;
	c->deadline = evtimer_new(base, conn_deadline_cb, c);
	c->kick = event_new(base, -1, 0, conn_kick_cb, c);
	if (c->deadline == NULL || c->kick == NULL)
		goto fail;
	c->bev = bufferevent_filter_new(under, conn_filter_in, conn_filter_out,
					BEV_OPT_CLOSE_ON_FREE, conn_free, c);
	if (c->bev == NULL)
		goto fail;
	under = NULL;   /* the filter owns it now, and c: conn_free undoes what follows */
	conn_key(c->key, c->bev);
	if (strmap_add(&cs->by_bev, c->key, (int64_t)(intptr_t)c, &one) < 0)
		log_error("out_of_memory", "what=by_bev");
	__atomic_add_fetch(&cs->counts->open, 1, __ATOMIC_RELAXED);
	metric_add(&m_open, 1);
	if (evbuffer_add_cb(bufferevent_get_output(c->bev), conn_out_added, c) == NULL) {
		bufferevent_free(c->bev);
		log_error("out_of_memory", "what=connection_guard");
		return NULL;
	}
	/* evhttp gives the bufferevent its socket after this returns: the
	 * kick's first turn counts the connection (conn_kick_cb). */
	event_active(c->kick, EV_TIMEOUT, 1);
	return c->bev;
fail:
	if (c != NULL && c->deadline != NULL)
		event_free(c->deadline);
	if (c != NULL && c->kick != NULL)
		event_free(c->kick);
	if (under != NULL)
		bufferevent_free(under);
	free(c);
	/* evhttp then makes an unguarded one; say so. */
	log_error("out_of_memory", "what=connection_guard");
	return NULL;
}

/* The rightmost address of X-Forwarded-For that is not a trusted proxy. */
static bool conn_forwarded(const struct gw_conns *cs, const char *xff, char out[GW_IP_MAX])
{
	char buf[1024], *save = NULL, *tok;
	char best[GW_IP_MAX] = "";

	snprintf(buf, sizeof(buf), "%s", xff);
	for (tok = strtok_r(buf, ", ", &save); tok != NULL; tok = strtok_r(NULL, ", ", &save)) {
		uint8_t bin[16];

		if (inet_pton(strchr(tok, ':') ? AF_INET6 : AF_INET, tok, bin) != 1)
			continue;
		if (!gw_conns_trusted(cs, tok))
			snprintf(best, sizeof(best), "%s", tok);
	}
	if (best[0] == '\0')
		return false;
	memcpy(out, best, GW_IP_MAX);
	return true;
}

bool gw_conns_client_ip(struct gw_conns *cs, struct evhttp_request *req, char out[GW_IP_MAX])
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	struct bufferevent *bev = evcon != NULL ? evhttp_connection_get_bufferevent(evcon) : NULL;
	char key[32];
	const struct gw_conn *c;
	const char *xff;

	if (bev == NULL)
		return false;
	conn_key(key, bev);
	c = (const struct gw_conn *)(intptr_t)strmap_get(&cs->by_bev, key, 0);
	if (c == NULL || !c->started)
		return false;
	xff = c->peer_trusted && !c->via_proxy ?
	      evhttp_find_header(evhttp_request_get_input_headers(req), "X-Forwarded-For") : NULL;
	if (xff != NULL && conn_forwarded(cs, xff, out))
		return true;
	memcpy(out, c->ip, GW_IP_MAX);
	return true;
}
