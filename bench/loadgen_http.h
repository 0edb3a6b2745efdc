/*
 * The load generator's HTTP/1.1 client connection: one request at a time
 * on a keep-alive socket, written with one write() and read with one
 * read() per readiness, the socket registered with the loop once. It
 * replaces libevent's evhttp client, which cost the generator about 44 us
 * of CPU per request (a dozen allocations, header lists, and three
 * epoll_ctl calls to switch the bufferevent between writing and reading):
 * on the two cores the generator shares with the gateway, that CPU was
 * taken from the system it measures (bench/run's million-buyer sale).
 *
 * Answers must carry Content-Length (the gateway's always do) or end with
 * the connection; chunked answers count as failures.
 */
#ifndef FLASHSALE_BENCH_LOADGEN_HTTP_H
#define FLASHSALE_BENCH_LOADGEN_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sys/socket.h>

struct event_base;
struct event;

/*
 * The answer of the request in flight: code 0 when it failed (connection
 * refused or lost, timeout, unparsable answer; the connection is then
 * closed and the next send reconnects). body is NUL-terminated, NULL when
 * empty or failed, valid during the call only.
 */
typedef void (*lg_http_done_cb)(void *arg, int code, const char *body, size_t len);

struct lg_http {
	struct event_base *base;
	const struct sockaddr *sa;
	socklen_t salen;
	int fd;                     /* -1: not connected */
	struct event *ev;
	short ev_what;              /* what ev waits for now */
	bool busy;                  /* a request is out */
	char *in;                   /* the answer so far */
	size_t inlen, incap;
	char *out;                  /* request bytes not written yet */
	size_t outlen, outoff, outcap;
	int64_t deadline_us;        /* of the request out (monotonic) */
	lg_http_done_cb done;
	void *arg;
};

/* No socket yet: the first send connects. */
void lg_http_init(struct lg_http *c, struct event_base *base, const struct sockaddr *sa,
		  socklen_t salen, lg_http_done_cb done, void *arg);

/*
 * Send one request (the whole text: request line, headers, body), due by
 * deadline_us. 0: done will be called once, never from inside this call.
 * -1: nothing was sent, done will not be called.
 */
int lg_http_send(struct lg_http *c, const char *req, size_t len, int64_t deadline_us);

/* Fail the request out if its deadline passed (call it from a timer). */
void lg_http_check_deadline(struct lg_http *c, int64_t now_us);

/* Close the socket and free the buffers (done is not called). */
void lg_http_free(struct lg_http *c);

/* What lg_http_parse found in an answer's head. */
struct lg_http_answer {
	int code;
	size_t head;                /* bytes of the status line and headers */
	size_t total;               /* head plus body, once known */
	bool until_close;           /* no Content-Length: the body ends with the connection */
	bool closes;                /* Connection: close */
};

/*
 * Parse an answer in buf[0..len). 1: complete (a->total bytes), 0: more
 * bytes needed, -1: not an answer this client takes (malformed, chunked,
 * an interim 1xx, a head over 64 KiB). Exposed for the unit test.
 */
int lg_http_parse(const char *buf, size_t len, struct lg_http_answer *a);

#endif
