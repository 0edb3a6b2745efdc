/*
 * Unit tests of the gateway's connection guard: which peers are trusted
 * proxies, and what its filter passes on to evhttp from a socket, however
 * the bytes are split into reads.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "conn.h"

static void test_trusted_proxies(void **state)
{
	struct gw_conn_limits lim = {
		.max_connections = 10, .max_per_ip = 2, .max_header_bytes = 8192,
		.max_headers = 64, .header_timeout_ms = 1000,
		.trusted_proxies = "10.0.0.0/8, 192.168.1.7,2001:db8::/32 ,172.16.0.0/12",
	};
	struct event_base *base = event_base_new();
	struct gw_conn_counts counts;
	struct gw_conns cs;
	char err[256];
	(void)state;

	assert_non_null(base);
	assert_int_equal(gw_conn_counts_init(&counts), 0);
	assert_int_equal(gw_conns_init(&cs, base, &lim, &counts, err, sizeof(err)), 0);
	assert_int_equal(cs.ntrusted, 4);
	assert_true(gw_conns_trusted(&cs, "10.1.2.3"));
	assert_true(gw_conns_trusted(&cs, "10.255.255.255"));
	assert_false(gw_conns_trusted(&cs, "11.0.0.1"));
	assert_true(gw_conns_trusted(&cs, "192.168.1.7"));
	assert_false(gw_conns_trusted(&cs, "192.168.1.8"));
	/* /12: 172.16.0.0 - 172.31.255.255, a mask inside a byte. */
	assert_true(gw_conns_trusted(&cs, "172.31.0.1"));
	assert_false(gw_conns_trusted(&cs, "172.32.0.1"));
	assert_false(gw_conns_trusted(&cs, "172.15.255.255"));
	assert_true(gw_conns_trusted(&cs, "2001:db8::1"));
	assert_false(gw_conns_trusted(&cs, "2001:db9::1"));
	/* An IPv4 address never matches an IPv6 network, nor garbage anything. */
	assert_false(gw_conns_trusted(&cs, "::ffff:10.1.2.3"));
	assert_false(gw_conns_trusted(&cs, "not an address"));
	assert_false(gw_conns_trusted(&cs, ""));
	gw_conns_free(&cs);

	lim.trusted_proxies = "";
	assert_int_equal(gw_conns_init(&cs, base, &lim, &counts, err, sizeof(err)), 0);
	assert_false(gw_conns_trusted(&cs, "127.0.0.1"));
	gw_conns_free(&cs);

	for (const char *bad = "10.0.0.0/33\0" "10.0.0/8\0" "host.example\0" "10.0.0.1/\0"
			       "::1/129\0";
	     *bad != '\0'; bad += strlen(bad) + 1) {
		lim.trusted_proxies = bad;
		assert_int_equal(gw_conns_init(&cs, base, &lim, &counts, err, sizeof(err)), -1);
		assert_non_null(strstr(err, "trusted proxy"));
		gw_conns_free(&cs);
	}
	gw_conn_counts_free(&counts);
	event_base_free(base);
}

/* What the filter passed on, and what the client read back (a refusal). */
struct fed {
	char passed[4096];
	size_t npassed;
	char answer[256];
};

/* A connected TCP pair on 127.0.0.1: sv[0] the server's end. */
static void tcp_pair(int sv[2])
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);
	int l = socket(AF_INET, SOCK_STREAM, 0);

	assert_true(l >= 0);
	assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(l, 1), 0);
	assert_int_equal(getsockname(l, (struct sockaddr *)&a, &al), 0);
	sv[1] = socket(AF_INET, SOCK_STREAM, 0);
	assert_int_equal(connect(sv[1], (struct sockaddr *)&a, sizeof(a)), 0);
	sv[0] = accept(l, NULL, NULL);
	assert_true(sv[0] >= 0);
	close(l);
}

/*
 * Feed text to a guarded connection through a socket pair, chunk bytes per
 * write (0: all at once), with the loop run after each; collect what the
 * filter passed on and what it answered. proxy: over TCP from 127.0.0.1,
 * a trusted proxy (which may open with a PROXY line).
 */
static void feed_ex(const char *text, size_t chunk, bool proxy, struct fed *out)
{
	struct gw_conn_limits lim = {
		.max_connections = 10, .max_per_ip = 10, .max_header_bytes = 256,
		.max_headers = 4, .header_timeout_ms = 10000,
		.trusted_proxies = proxy ? "127.0.0.1" : "",
	};
	struct event_base *base = event_base_new();
	struct gw_conn_counts counts;
	struct gw_conns cs;
	struct bufferevent *bev;
	size_t len = strlen(text), off = 0;
	char err[256];
	int sv[2];
	ssize_t got;

	memset(out, 0, sizeof(*out));
	assert_non_null(base);
	if (proxy)
		tcp_pair(sv);
	else
		assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	assert_int_equal(gw_conn_counts_init(&counts), 0);
	assert_int_equal(gw_conns_init(&cs, base, &lim, &counts, err, sizeof(err)), 0);
	bev = gw_conns_bevcb(base, &cs);
	assert_non_null(bev);
	assert_int_equal(bufferevent_setfd(bev, sv[0]), 0);
	assert_int_equal(bufferevent_enable(bev, EV_READ), 0);
	do {
		size_t n = chunk == 0 || len - off < chunk ? len - off : chunk;

		/* A refused connection is shut: the rest of the text has nowhere to go. */
		if (send(sv[1], text + off, n, MSG_NOSIGNAL) != (ssize_t)n)
			break;
		off += n;
		for (int i = 0; i < 4; i++)
			assert_int_not_equal(event_base_loop(base, EVLOOP_NONBLOCK), -1);
	} while (off < len);
	out->npassed = evbuffer_remove(bufferevent_get_input(bev), out->passed,
				       sizeof(out->passed) - 1);
	got = recv(sv[1], out->answer, sizeof(out->answer) - 1, MSG_DONTWAIT);
	out->answer[got > 0 ? got : 0] = '\0';
	bufferevent_free(bev);
	close(sv[1]);
	/* First: the base runs the guard's deferred free, which uncounts it. */
	event_base_free(base);
	gw_conns_free(&cs);
	gw_conn_counts_free(&counts);
}

static void feed(const char *text, size_t chunk, struct fed *out)
{
	feed_ex(text, chunk, false, out);
}

static const char pipelined[] =
	"GET /v1/time HTTP/1.1\r\nHost: a\r\n\r\n"
	"POST /v1/purchases HTTP/1.1\r\nHost: a\r\nContent-Length: 17\r\n\r\n"
	"{\"sku\":\"s\",\"x\":1}"
	"GET /v1/time HTTP/1.1\r\ncontent-length: 0\r\n\r\n";

static void test_filter_passes_requests_whole(void **state)
{
	static const size_t chunks[] = { 0, 1, 2, 7, 33, 64 };
	struct fed f;
	(void)state;

	/* Every byte on, in order, nothing answered: whatever the reads. */
	for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
		feed(pipelined, chunks[i], &f);
		assert_int_equal(f.npassed, strlen(pipelined));
		assert_memory_equal(f.passed, pipelined, f.npassed);
		assert_string_equal(f.answer, "");
	}
	/* A body is not a head: its "lines" count against no limit. */
	feed("POST / HTTP/1.1\r\nContent-Length: 64\r\n\r\n"
	     "a\r\nb\r\nc\r\nd\r\ne\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
	     5, &f);
	assert_int_equal(f.npassed, 39 + 64);
	assert_string_equal(f.answer, "");
}

/*
 * A trusted proxy's PROXY line is taken off, not counted in the head that
 * follows: a request line near max_header_bytes (256 here) that came with
 * the PROXY line in one read, its end in the next, was refused 431 by a
 * review's build of the in-place filter (the line's bytes were counted
 * before it was taken off).
 */
static void test_filter_proxy_line_is_not_head(void **state)
{
	char text[512], line[240];
	const char *proxy_line = "PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n";
	size_t plen = strlen(proxy_line), split;
	struct fed f;
	(void)state;

	memset(line, 'a', sizeof(line) - 1);
	line[sizeof(line) - 1] = '\0';
	snprintf(text, sizeof(text), "%sGET /%s HTTP/1.1\r\n\r\n", proxy_line, line + 20);
	split = (size_t)(strstr(text, " HTTP/1.1\r\n") - text) + strlen(" HTTP/1.1");
	assert_true(strlen(text) - plen <= 256 && split - plen > 200);
	feed_ex(text, split, true, &f);
	assert_string_equal(f.answer, "");
	assert_int_equal(f.npassed, strlen(text) - plen);
	assert_memory_equal(f.passed, text + plen, f.npassed);
	/* And whole, or a byte at a time. */
	feed_ex(text, 0, true, &f);
	assert_int_equal(f.npassed, strlen(text) - plen);
	feed_ex(text, 1, true, &f);
	assert_int_equal(f.npassed, strlen(text) - plen);
}

static void test_filter_refuses_bad_heads(void **state)
{
	static const size_t chunks[] = { 0, 1, 9 };
	static const struct {
		const char *text, *status;
		const char *bad;        /* where the offending line starts */
		size_t before;          /* the requests ahead of the bad one */
	} cases[] = {
		{ "POST / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nab",
		  "HTTP/1.1 400", "content-length", 0 },
		{ "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.1 400",
		  "Transfer", 0 },
		{ "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "HTTP/1.1 400", "Content", 0 },
		{ "GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\ne: 5\r\n\r\n",
		  "HTTP/1.1 431", "e: 5", 0 },
		{ "GET / HTTP/1.1\r\nX: "
		  "0123456789012345678901234567890123456789012345678901234567890123456789"
		  "0123456789012345678901234567890123456789012345678901234567890123456789"
		  "0123456789012345678901234567890123456789012345678901234567890123456789"
		  "0123456789012345678901234567890123456789\r\n\r\n", "HTTP/1.1 431", "X: ", 0 },
		/* No end of line in sight, past the limit. */
		{ "GET / HTTP/1.1\r\nX: "
		  "0123456789012345678901234567890123456789012345678901234567890123456789"
		  "0123456789012345678901234567890123456789012345678901234567890123456789"
		  "0123456789012345678901234567890123456789012345678901234567890123456789"
		  "0123456789012345678901234567890123456789", "HTTP/1.1 431", "X: ", 0 },
		/* A good request first, then a bad one: the good one went on. */
		{ "GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nTransfer-Encoding: x\r\n\r\n",
		  "HTTP/1.1 400", "Transfer", 18 },
	};
	struct fed f;
	(void)state;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t bad = (size_t)(strstr(cases[i].text, cases[i].bad) - cases[i].text);

		for (size_t j = 0; j < sizeof(chunks) / sizeof(chunks[0]); j++) {
			feed(cases[i].text, chunks[j], &f);
			if (strncmp(f.answer, cases[i].status, strlen(cases[i].status)) != 0)
				fail_msg("case %zu, chunks of %zu: answered \"%s\"", i, chunks[j],
					 f.answer);
			/* What went on is the text's own beginning, never the bad line
			 * (so evhttp never sees the bad head whole), and the request
			 * ahead of it went on whole. */
			if (f.npassed > bad || memcmp(f.passed, cases[i].text, f.npassed) != 0 ||
			    f.npassed < cases[i].before)
				fail_msg("case %zu, chunks of %zu: passed %zu bytes \"%.*s\"", i,
					 chunks[j], f.npassed, (int)f.npassed, f.passed);
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_trusted_proxies),
		cmocka_unit_test(test_filter_passes_requests_whole),
		cmocka_unit_test(test_filter_refuses_bad_heads),
		cmocka_unit_test(test_filter_proxy_line_is_not_head),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
