/*
 * Unit test of the load generator's HTTP client (bench/loadgen_http.c):
 * the answer parser's edges, and calls over real sockets to a server that
 * answers in pieces, closes idle keep-alive connections, and stalls.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cmocka.h>
#include <event2/event.h>

#include "loadgen_http.h"

static int parse(const char *s, struct lg_http_answer *a)
{
	return lg_http_parse(s, strlen(s), a);
}

static void test_parse(void **state)
{
	struct lg_http_answer a;
	const char *ok = "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"
			 "content-length: 5\r\n\r\nhello";
	(void)state;

	assert_int_equal(parse(ok, &a), 1);
	assert_int_equal(a.code, 202);
	assert_int_equal(a.total, strlen(ok));
	assert_int_equal(a.total - a.head, 5);
	assert_false(a.closes);
	/* Every prefix is "more, please", never a wrong answer. */
	for (size_t n = 0; n < strlen(ok); n++)
		assert_int_equal(lg_http_parse(ok, n, &a), 0);
	assert_int_equal(parse("HTTP/1.1 409 Conflict\r\nContent-Length: 0\r\n"
			       "Connection: close\r\n\r\n", &a), 1);
	assert_int_equal(a.code, 409);
	assert_true(a.closes);
	assert_int_equal(parse("HTTP/1.0 204 No Content\r\n\r\n", &a), 1);
	assert_int_equal(a.total, a.head);
	assert_int_equal(parse("HTTP/1.1 100 Continue\r\n\r\n", &a), -1);
	/* No length: the body runs until the connection ends. */
	assert_int_equal(parse("HTTP/1.0 200 OK\r\n\r\nabc", &a), 0);
	assert_true(a.until_close);
	/* Not ours. */
	assert_int_equal(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", &a), -1);
	assert_int_equal(parse("HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n", &a), -1);
	assert_int_equal(parse("SMTP 220 hi\r\n\r\n", &a), -1);
	assert_int_equal(parse("HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n", &a), -1);
	assert_int_equal(parse("HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n", &a),
			 -1);
}

/* ---- over sockets: the test plays the server on the same loop ---- */

struct call {
	int code;
	char body[64];
	int calls;
};

static void done(void *arg, int code, const char *body, size_t len)
{
	struct call *c = arg;

	c->code = code;
	c->calls++;
	snprintf(c->body, sizeof(c->body), "%.*s", (int)len, body != NULL ? body : "");
}

static int64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Run the loop until the call is answered (at most ~2 s). */
static void run_until(struct event_base *base, struct call *c, int calls)
{
	for (int i = 0; i < 2000 && c->calls < calls; i++)
		event_base_loop(base, EVLOOP_NONBLOCK | EVLOOP_ONCE), usleep(1000);
}

static int accept_one(struct event_base *base, int lfd)
{
	int fd = -1;

	for (int i = 0; i < 2000 && fd < 0; i++) {
		event_base_loop(base, EVLOOP_NONBLOCK);
		fd = accept(lfd, NULL, NULL);
		if (fd < 0)
			usleep(1000);
	}
	return fd;
}

/*
 * Read the request (headers and a Content-Length body) the client sent,
 * running the client's loop meanwhile: on a busy machine its connect may
 * still be in progress, and the request goes out on EV_WRITE.
 */
static void read_request(struct event_base *base, int fd, char *buf, size_t n)
{
	size_t got = 0;

	for (int i = 0; i < 2000; i++) {
		event_base_loop(base, EVLOOP_NONBLOCK);
		ssize_t k = recv(fd, buf + got, n - 1 - got, MSG_DONTWAIT);

		if (k > 0)
			got += (size_t)k;
		buf[got] = '\0';
		if (strstr(buf, "\r\n\r\n") != NULL &&
		    (strstr(buf, "Content-Length: ") == NULL || strstr(buf, "}") != NULL))
			return;
		usleep(1000);
	}
	fail_msg("no request: %s", buf);
}

static void test_calls(void **state)
{
	struct event_base *base = event_base_new();
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t salen = sizeof(sa);
	struct lg_http h;
	struct call c = { 0 };
	char req[512], got[2048];
	const char *post = "POST /v1/purchases HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
	int lfd, fd, fd2;
	(void)state;

	assert_non_null(base);
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(lfd, 8), 0);
	assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &salen), 0);
	lg_http_init(&h, base, (struct sockaddr *)&sa, salen, done, &c);

	/* 1. An answer in two pieces, on a connection the first call opens. */
	assert_int_equal(lg_http_send(&h, post, strlen(post), now_us() + 2000000), 0);
	assert_int_equal(c.calls, 0);           /* never from inside send */
	fd = accept_one(base, lfd);
	assert_true(fd >= 0);
	read_request(base, fd, got, sizeof(got));
	assert_non_null(strstr(got, "POST /v1/purchases"));
	assert_int_equal(write(fd, "HTTP/1.1 202 Accepted\r\nContent-Le", 33), 33);
	event_base_loop(base, EVLOOP_NONBLOCK);
	assert_int_equal(c.calls, 0);
	assert_int_equal(write(fd, "ngth: 13\r\n\r\n{\"state\":\"q\"}", 25), 25);
	run_until(base, &c, 1);
	assert_int_equal(c.code, 202);
	assert_string_equal(c.body, "{\"state\":\"q\"}");

	/* 2. Kept alive: the next call goes on the same connection. */
	snprintf(req, sizeof(req), "GET /v1/purchases/a HTTP/1.1\r\nHost: x\r\n\r\n");
	assert_int_equal(lg_http_send(&h, req, strlen(req), now_us() + 2000000), 0);
	read_request(base, fd, got, sizeof(got));
	assert_non_null(strstr(got, "GET /v1/purchases/a"));
	assert_int_equal(write(fd, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 45), 45);
	run_until(base, &c, 2);
	assert_int_equal(c.code, 404);
	assert_string_equal(c.body, "");

	/* 3. The server closes the idle connection: the next call reconnects. */
	close(fd);
	run_until(base, &c, 3);                 /* nothing is out: no answer */
	assert_int_equal(c.calls, 2);
	assert_int_equal(lg_http_send(&h, post, strlen(post), now_us() + 2000000), 0);
	fd2 = accept_one(base, lfd);
	assert_true(fd2 >= 0);
	read_request(base, fd2, got, sizeof(got));
	assert_int_equal(write(fd2, "HTTP/1.1 409 Conflict\r\nContent-Length: 2\r\n\r\n{}", 46), 46);
	run_until(base, &c, 3);
	assert_int_equal(c.code, 409);

	/* 4. A call past its deadline fails (code 0), and so does a lost connection. */
	assert_int_equal(lg_http_send(&h, post, strlen(post), now_us() + 1000), 0);
	read_request(base, fd2, got, sizeof(got));
	usleep(2000);
	lg_http_check_deadline(&h, now_us());
	assert_int_equal(c.calls, 4);
	assert_int_equal(c.code, 0);
	close(fd2);
	assert_int_equal(lg_http_send(&h, post, strlen(post), now_us() + 2000000), 0);
	fd = accept_one(base, lfd);
	assert_true(fd >= 0);
	read_request(base, fd, got, sizeof(got));
	close(fd);                              /* no answer at all */
	run_until(base, &c, 5);
	assert_int_equal(c.calls, 5);
	assert_int_equal(c.code, 0);

	/* 5. A garbled answer fails the call. */
	assert_int_equal(lg_http_send(&h, post, strlen(post), now_us() + 2000000), 0);
	fd = accept_one(base, lfd);
	read_request(base, fd, got, sizeof(got));
	assert_int_equal(write(fd, "HTTP/1.1 OK\r\n\r\n", 15), 15);
	run_until(base, &c, 6);
	assert_int_equal(c.code, 0);
	close(fd);

	lg_http_free(&h);
	close(lfd);
	event_base_free(base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse),
		cmocka_unit_test(test_calls),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
