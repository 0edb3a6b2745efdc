/*
 * flashsale-bench-ceiling: the "HTTP ceiling" baseline of the gateway
 * benchmark. An evhttp server set up exactly like the gateway's (--loops
 * event loops, each a thread with its own SO_REUSEPORT listener on the one
 * port; same body limit, timeout and methods, keep-alive) that answers every
 * request with the gateway's 202 purchase answer and does nothing else, so
 * that gateway req/s divided by ceiling req/s, measured in the same run on the
 * same machine, says how much of the HTTP stack's limit the gateway reaches.
 *
 * Exit status: 0 stopped by SIGTERM/SIGINT, 1 start-up failure, 2 usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <pthread.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/thread.h>

#include "daemon.h"
#include "flashsale_config.h"
#include "log.h"
#include "util.h"

#define APP "bench-ceiling"

/*
 * What the gateway sends for an accepted purchase: same headers and a body
 * of the same length (a 26-char request id, newline included).
 */
static const char ceiling_body[] =
	"{\"request_id\":\"00000000000000000000000000\",\"state\":\"queued\"}\n";

#define MAX_LOOPS 256

struct ceiling_loop {
	struct event_base *base;
	struct evhttp *http;
	pthread_t thread;
};

struct ceiling {
	struct ceiling_loop loops[MAX_LOOPS];
	int nloops;
	struct event *sig_term;
	struct event *sig_int;
};

static void usage(FILE *out)
{
	fprintf(out,
"usage: flashsale-bench-ceiling [options]\n"
"\n"
"HTTP ceiling baseline: an evhttp server configured like the gateway that\n"
"answers every request with the gateway's 202 purchase answer, doing no work.\n"
"\n"
"      --host ADDR        address to bind (default 127.0.0.1)\n"
"      --port N           port to bind, 0 = ephemeral (default 0)\n"
"      --port-file PATH   write the bound port there (atomically: tmp + rename)\n"
"      --loops N          event loops (threads) on the port, as the gateway's\n"
"                         gateway.loops (default 1)\n"
"  -h, --help             this help\n"
"  -V, --version          print the version\n"
"\n"
"Runs until SIGTERM or SIGINT. Exit: 0 stopped, 1 start-up failure,\n"
"2 usage error.\n");
}

/* Every request, any method or path: the fixed answer, body ignored. */
static void ceiling_handle(struct evhttp_request *req, void *arg)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	struct evbuffer *out = evhttp_request_get_output_buffer(req);

	(void)arg;
	evbuffer_drain(in, evbuffer_get_length(in));
	evhttp_add_header(h, "Content-Type", "application/json");
	evbuffer_add_reference(out, ceiling_body, sizeof(ceiling_body) - 1, NULL, NULL);
	evhttp_send_reply(req, 202, "Accepted", NULL);
}

static void ceiling_signal_cb(evutil_socket_t sig, short what, void *arg)
{
	struct ceiling *c = arg;

	(void)what;
	log_info("stopping", "signal=%s", sig == SIGTERM ? "TERM" : "INT");
	for (int i = 0; i < c->nloops; i++)
		event_base_loopbreak(c->loops[i].base);
}

/* One loop: its base and server on a socket of its own. -1 on failure. */
static int ceiling_loop_init(struct ceiling_loop *l, const char *host, long port, bool reuseport,
			     int *got)
{
	char err[256];
	evutil_socket_t fd;

	/* The gateway's base (daemon_base_new): the same libevent settings. */
	l->base = daemon_base_new();
	l->http = l->base != NULL ? evhttp_new(l->base) : NULL;
	if (l->http == NULL)
		return -1;
	/* The gateway's settings (gateway/main.c) with its default gateway.max_body. */
	evhttp_set_max_body_size(l->http, 65536);
	evhttp_set_timeout(l->http, 30);
	evhttp_set_allowed_methods(l->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD);
	evhttp_set_gencb(l->http, ceiling_handle, l);
	fd = util_listen_tcp(host, port, reuseport, err, sizeof(err));
	if (fd < 0 || evhttp_accept_socket(l->http, fd) < 0) {
		if (fd >= 0)
			evutil_closesocket(fd);
		return -1;
	}
	*got = util_bound_port(fd);
	return *got < 0 ? -1 : 0;
}

static void *ceiling_thread(void *arg)
{
	struct ceiling_loop *l = arg;

	event_base_dispatch(l->base);
	return NULL;
}

static void ceiling_free(struct ceiling *c)
{
	if (c->sig_term != NULL)
		event_free(c->sig_term);
	if (c->sig_int != NULL)
		event_free(c->sig_int);
	for (int i = 0; i < MAX_LOOPS; i++) {
		if (c->loops[i].http != NULL)
			evhttp_free(c->loops[i].http);
		if (c->loops[i].base != NULL)
			event_base_free(c->loops[i].base);
	}
	memset(c, 0, sizeof(*c));
}

enum { OPT_HOST = 256, OPT_PORT, OPT_PORT_FILE, OPT_LOOPS };

static const struct option long_opts[] = {
	{ "host", required_argument, NULL, OPT_HOST },
	{ "port", required_argument, NULL, OPT_PORT },
	{ "port-file", required_argument, NULL, OPT_PORT_FILE },
	{ "loops", required_argument, NULL, OPT_LOOPS },
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, 'V' },
	{ NULL, 0, NULL, 0 },
};

int main(int argc, char **argv)
{
	static struct ceiling c;
	const char *host = "127.0.0.1", *port_file = NULL;
	char err[512], port_text[16];
	long port = 0, loops = 1;
	int opt, got = -1;
	sigset_t all, old;

	log_init(APP);
	while ((opt = getopt_long(argc, argv, "hV", long_opts, NULL)) != -1) {
		char *end;

		switch (opt) {
		case OPT_HOST:
			host = optarg;
			break;
		case OPT_PORT:
			errno = 0;
			port = strtol(optarg, &end, 10);
			if (errno != 0 || end == optarg || *end != '\0' || port < 0 || port > 65535) {
				fprintf(stderr, "flashsale-bench-ceiling: --port: not a port: %s\n",
					optarg);
				return 2;
			}
			break;
		case OPT_PORT_FILE:
			port_file = optarg;
			break;
		case OPT_LOOPS:
			errno = 0;
			loops = strtol(optarg, &end, 10);
			if (errno != 0 || end == optarg || *end != '\0' || loops < 1 ||
			    loops > MAX_LOOPS) {
				fprintf(stderr, "flashsale-bench-ceiling: --loops wants 1..%d: %s\n",
					MAX_LOOPS, optarg);
				return 2;
			}
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("flashsale-bench-ceiling %s\n", FLASHSALE_VERSION);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "flashsale-bench-ceiling: unexpected argument %s\n", argv[optind]);
		usage(stderr);
		return 2;
	}

	/* A client closing its socket must be an error return, not our death. */
	signal(SIGPIPE, SIG_IGN);
	if (evthread_use_pthreads() < 0) {
		log_error("startup_failed", "msg=\"evthread_use_pthreads\"");
		return 1;
	}
	c.nloops = (int)loops;
	/* The first loop gets the port (maybe ephemeral), the others join it. */
	for (int i = 0; i < c.nloops; i++) {
		if (ceiling_loop_init(&c.loops[i], host, i == 0 ? port : got, c.nloops > 1,
				      &got) < 0) {
			log_error("startup_failed", "msg=\"cannot listen on %s:%ld (loop %d): %s\"",
				  host, i == 0 ? port : (long)got, i, strerror(errno));
			ceiling_free(&c);
			return 1;
		}
	}
	c.sig_term = evsignal_new(c.loops[0].base, SIGTERM, ceiling_signal_cb, &c);
	c.sig_int = evsignal_new(c.loops[0].base, SIGINT, ceiling_signal_cb, &c);
	if (c.sig_term == NULL || c.sig_int == NULL ||
	    evsignal_add(c.sig_term, NULL) < 0 || evsignal_add(c.sig_int, NULL) < 0) {
		log_error("startup_failed", "msg=\"cannot install signal events\"");
		ceiling_free(&c);
		return 1;
	}
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	for (int i = 1; i < c.nloops; i++) {
		if (pthread_create(&c.loops[i].thread, NULL, ceiling_thread, &c.loops[i]) != 0) {
			log_error("startup_failed", "msg=\"pthread_create\"");
			return 1;
		}
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	/* Last: a poller that sees the file may connect at once. */
	snprintf(port_text, sizeof(port_text), "%d", got);
	if (port_file != NULL && util_write_atomic(port_file, port_text, err, sizeof(err)) < 0) {
		log_error("startup_failed", "path=%s msg=\"port file: %s\"", port_file, err);
		return 1;
	}
	log_info("listening", "host=%s port=%d loops=%d version=%s", host, got, c.nloops,
		 FLASHSALE_VERSION);

	event_base_dispatch(c.loops[0].base);
	for (int i = 1; i < c.nloops; i++)
		pthread_join(c.loops[i].thread, NULL);

	ceiling_free(&c);
	log_info("stopped", "msg=\"bye\"");
	return 0;
}
