#include "daemon.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#ifdef HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "config.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

/* Copies: callers may pass hooks that live on main()'s stack. */
static struct daemon_hooks signal_hooks;
static struct daemon_hooks http_hooks;
static int draining;
/* Kept for the process lifetime (reachable, so leak checkers stay quiet). */
static struct event *signal_events[3];

/* Runs in the event loop, not in a signal handler: exit() is safe here. */
static void daemon_signal_cb(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	(void)arg;
	if (sig == SIGHUP) {
		if (signal_hooks.on_reload != NULL) {
			log_info("reload", "signal=HUP");
			signal_hooks.on_reload(signal_hooks.arg);
		} else {
			log_info("reload_unsupported", "signal=HUP msg=\"reload is not supported; restart to apply configuration\"");
		}
		return;
	}
	if (__atomic_exchange_n(&draining, 1, __ATOMIC_ACQ_REL) != 0) {
		log_warn("exit_now", "signal=%s msg=\"second signal while draining\"",
			 sig == SIGTERM ? "TERM" : "INT");
		exit(1);
	}
	log_info("draining", "signal=%s", sig == SIGTERM ? "TERM" : "INT");
	daemon_notify_stopping();
	if (signal_hooks.on_drain != NULL)
		signal_hooks.on_drain(signal_hooks.arg);
}

struct event_base *daemon_base_new(void)
{
	struct event_config *cfg = event_config_new();
	struct event_base *base = NULL;

	if (cfg == NULL)
		return NULL;
	if (event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST) == 0)
		base = event_base_new_with_config(cfg);
	event_config_free(cfg);
	return base;
}

void daemon_signals(struct event_base *base, const struct daemon_hooks *hooks)
{
	static const int sigs[] = { SIGTERM, SIGINT, SIGHUP };

	if (hooks != NULL)
		signal_hooks = *hooks;
	/* A peer closing a socket must be an error return, not our death. */
	signal(SIGPIPE, SIG_IGN);
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
		struct event *ev;

		ev = evsignal_new(base, sigs[i], daemon_signal_cb, NULL);
		if (ev == NULL || evsignal_add(ev, NULL) < 0)
			die("startup_failed", "what=signals signal=%d msg=\"cannot install signal event\"",
			    sigs[i]);
		signal_events[i] = ev;
	}
}

static bool daemon_get_only(struct evhttp_request *req)
{
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);

	if (cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD)
		return true;
	evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
	evhttp_send_error(req, 405, "Method Not Allowed");
	return false;
}

/* Append s as a JSON string body (without quotes), escaping what JSON needs. */
static void json_escape_add(struct evbuffer *b, const char *s)
{
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			evbuffer_add_printf(b, "\\%c", c);
		else if (c < 0x20)
			evbuffer_add_printf(b, "\\u%04x", c);
		else
			evbuffer_add(b, &c, 1);
	}
}

static void daemon_healthz_cb(struct evhttp_request *req, void *arg)
{
	struct evbuffer *b;
	static const char *const words[] = { "ok", "degraded", "unhealthy" };
	char detail[2048] = "";
	enum daemon_health h = HEALTH_OK;
	size_t dl;
	(void)arg;

	if (!daemon_get_only(req))
		return;
	if (http_hooks.health != NULL)
		h = http_hooks.health(http_hooks.arg, detail, sizeof(detail));
	if (h < HEALTH_OK || h > HEALTH_FAILED)
		h = HEALTH_FAILED;
	detail[sizeof(detail) - 1] = '\0';
	b = evbuffer_new();
	if (b == NULL) {
		evhttp_send_error(req, 500, "Internal Server Error");
		return;
	}
	evbuffer_add_printf(b, "{\"status\":\"%s\"", words[h]);
	/* detail is a JSON object: merge its members into ours. */
	dl = strlen(detail);
	while (dl > 0 && (detail[dl - 1] == '\n' || detail[dl - 1] == ' '))
		detail[--dl] = '\0';
	if (dl >= 2 && detail[0] == '{' && detail[dl - 1] == '}') {
		const char *inner = detail + 1;
		size_t il = dl - 2;

		while (il > 0 && (*inner == ' ' || *inner == '\n')) {
			inner++;
			il--;
		}
		if (il > 0) {
			evbuffer_add(b, ",", 1);
			evbuffer_add(b, inner, il);
		}
	} else if (dl > 0) {
		evbuffer_add_printf(b, ",\"detail\":\"");
		json_escape_add(b, detail);
		evbuffer_add(b, "\"", 1);
	}
	evbuffer_add(b, "}\n", 2);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "application/json");
	evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
	evhttp_send_reply(req, h == HEALTH_FAILED ? 503 : 200,
			  h == HEALTH_FAILED ? "Service Unavailable" : "OK", b);
	evbuffer_free(b);
}

static void daemon_metrics_cb(struct evhttp_request *req, void *arg)
{
	struct evbuffer *b;
	(void)arg;

	if (!daemon_get_only(req))
		return;
	b = evbuffer_new();
	if (b == NULL) {
		evhttp_send_error(req, 500, "Internal Server Error");
		return;
	}
	metrics_render(b);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "text/plain; version=0.0.4");
	evhttp_send_reply(req, 200, "OK", b);
	evbuffer_free(b);
}

struct evhttp *daemon_http(struct event_base *base, struct evhttp *http,
			   const char *host, int port, const struct daemon_hooks *hooks)
{
	if (hooks != NULL)
		http_hooks = *hooks;
	if (http == NULL) {
		if (port == 0)
			return NULL;
		http = evhttp_new(base);
		if (http == NULL)
			die("startup_failed", "what=http msg=\"evhttp_new failed\"");
		if (evhttp_bind_socket_with_handle(http, host, (ev_uint16_t)port) == NULL) {
			int e = errno;

			evhttp_free(http);
			die("startup_failed", "what=http host=%s port=%d msg=\"%s\"", host, port,
			    strerror(e));
		}
		log_info("http_listening", "host=%s port=%d", host, port);
	}
	if (evhttp_set_cb(http, "/healthz", daemon_healthz_cb, NULL) != 0 ||
	    evhttp_set_cb(http, "/metrics", daemon_metrics_cb, NULL) != 0)
		die("startup_failed", "what=http msg=\"cannot register /healthz or /metrics\"");
	return http;
}

void daemon_http_healthz(struct evhttp *http)
{
	if (evhttp_set_cb(http, "/healthz", daemon_healthz_cb, NULL) != 0)
		die("startup_failed", "what=http msg=\"cannot register /healthz\"");
}

void daemon_notify_ready(void)
{
#ifdef HAVE_SYSTEMD
	(void)sd_notify(0, "READY=1");
#endif
}

void daemon_notify_stopping(void)
{
#ifdef HAVE_SYSTEMD
	(void)sd_notify(0, "STOPPING=1");
#endif
}

int daemon_thread_start(struct daemon_thread *t, void *(*fn)(void *), void *arg,
			char *err, size_t errlen)
{
	int rc;

	daemon_thread_beat(t);
	rc = pthread_create(&t->tid, NULL, fn, arg);
	if (rc != 0) {
		snprintf(err, errlen, "pthread_create: %s", strerror(rc));
		return -1;
	}
	t->started = true;
	return 0;
}

void daemon_thread_stop(struct daemon_thread *t)
{
	__atomic_store_n(&t->stop, 1, __ATOMIC_RELEASE);
}

bool daemon_thread_stopping(const struct daemon_thread *t)
{
	return __atomic_load_n(&t->stop, __ATOMIC_ACQUIRE) != 0;
}

void daemon_thread_beat(struct daemon_thread *t)
{
	__atomic_store_n(&t->beat_us, mono_us(), __ATOMIC_RELAXED);
}

int64_t daemon_thread_beat_age_ms(const struct daemon_thread *t)
{
	return (mono_us() - __atomic_load_n(&t->beat_us, __ATOMIC_RELAXED)) / 1000;
}

void daemon_thread_exit(struct daemon_thread *t, bool failed)
{
	if (failed)
		__atomic_store_n(&t->failed, 1, __ATOMIC_RELAXED);
	__atomic_store_n(&t->finished, 1, __ATOMIC_RELEASE);
}

bool daemon_thread_finished(const struct daemon_thread *t)
{
	return __atomic_load_n(&t->finished, __ATOMIC_ACQUIRE) != 0;
}

int daemon_thread_join(struct daemon_thread *t)
{
	if (t->started) {
		pthread_join(t->tid, NULL);
		t->started = false;
	}
	return __atomic_load_n(&t->failed, __ATOMIC_RELAXED) ? -1 : 0;
}

static void reload_changed(const char *key, void *arg)
{
	struct cf_table *t = arg;

	log_info("config_reloaded", "key=%s", key);
	if (strcmp(key, "log.level") != 0)
		return;
	for (const struct cf_key *k = t->keys; k->name != NULL; k++)
		if (strcmp(k->name, "log.level") == 0 &&
		    !log_set_level(*(char *const *)k->target))
			log_warn("config_bad_level", "value=%s", *(char *const *)k->target);
}

struct reload_ctx {
	struct cf_table *t;
	void (*changed)(const char *key, void *arg);
	void *arg;
};

static void reload_dispatch(const char *key, void *arg)
{
	struct reload_ctx *r = arg;

	reload_changed(key, r->t);
	if (r->changed != NULL)
		r->changed(key, r->arg);
}

void daemon_reload_config(struct cf_table *config, void (*changed)(const char *key, void *arg),
			  void *arg)
{
	struct reload_ctx r = { .t = config, .changed = changed, .arg = arg };
	char err[1024];

#ifdef HAVE_SYSTEMD
	sd_notify(0, "RELOADING=1");
#endif
	if (cf_reload(config, reload_dispatch, &r, err, sizeof(err)) < 0)
		log_error("reload_failed", "msg=\"%s; keeping the old configuration\"", err);
	else
		log_info("reload_done", "app=%s", config->app);
	daemon_notify_ready();
}

struct worker_loop {
	struct cf_table *config;
	struct daemon_thread *thread;
	daemon_health_fn health;
	void *arg;
	struct event_base *base;
	bool drained;
};

static void worker_loop_drain(void *arg)
{
	struct worker_loop *l = arg;

	l->drained = true;
	daemon_thread_stop(l->thread);
}

static void worker_loop_reload(void *arg)
{
	struct worker_loop *l = arg;

	daemon_reload_config(l->config, NULL, NULL);
}

static enum daemon_health worker_loop_health(void *arg, char *detail, size_t n)
{
	struct worker_loop *l = arg;

	return l->health(l->arg, detail, n);
}

/* The worker cannot wake the loop itself; a short tick watches for its end. */
static void worker_loop_watch(evutil_socket_t fd, short what, void *arg)
{
	struct worker_loop *l = arg;

	if (daemon_thread_finished(l->thread))
		event_base_loopbreak(l->base);
}

bool daemon_run_worker(struct daemon_thread *t, daemon_health_fn health,
		       void *arg, const char *host, int port, struct cf_table *config)
{
	struct worker_loop l = { .config = config, .thread = t, .health = health, .arg = arg };
	struct daemon_hooks hooks = {
		.on_drain = worker_loop_drain, .on_reload = worker_loop_reload,
		.health = worker_loop_health, .arg = &l,
	};
	struct timeval tick = { 0, 50 * 1000 };
	struct event *watch;
	struct evhttp *http;

	l.base = daemon_base_new();
	if (l.base == NULL)
		die("startup_failed", "what=event_loop msg=\"cannot create the event loop\"");
	daemon_signals(l.base, &hooks);
	http = daemon_http(l.base, NULL, host, port, &hooks);
	watch = event_new(l.base, -1, EV_PERSIST, worker_loop_watch, &l);
	if (watch == NULL || event_add(watch, &tick) < 0)
		die("startup_failed", "what=event_loop msg=\"cannot add the worker watch\"");
	daemon_notify_ready();
	event_base_dispatch(l.base);
	if (!l.drained)
		log_error("worker_exited", "msg=\"worker stopped without a drain\"");
	daemon_notify_stopping();
	event_free(watch);
	if (http != NULL)
		evhttp_free(http);
	event_base_free(l.base);
	return l.drained;
}

static bool common_option(const char *s, bool *takes_value)
{
	static const char *const with_value[] = { "-c", "-s", "--config", "--set" };
	static const char *const flags[] = { "-h", "--help", "-V", "--version", "--print-config" };

	*takes_value = false;
	for (size_t i = 0; i < sizeof(with_value) / sizeof(with_value[0]); i++)
		if (strcmp(s, with_value[i]) == 0)
			return *takes_value = true;
	for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
		if (strcmp(s, flags[i]) == 0)
			return true;
	return strncmp(s, "--config=", 9) == 0 || strncmp(s, "--set=", 6) == 0 ||
	       ((s[1] == 'c' || s[1] == 's') && s[0] == '-' && s[2] != '\0');
}

/*
 * Reorder argv in place: the common options (anywhere) first, for
 * cf_parse_args, which must not see a command's own flags (--force,
 * --user ...); then the command and its arguments, in their order.
 * Returns the index of the command's first word (argc when none).
 */
static int split_args(int argc, char **argv)
{
	char **cmdv = calloc((size_t)argc + 1, sizeof(*cmdv));
	bool in_command = false, takes_value;
	int commonc = 1, cmdc = 0;

	if (cmdv == NULL) {
		fprintf(stderr, "%s: out of memory\n", argv[0]);
		exit(1);
	}
	for (int i = 1; i < argc; i++) {
		const char *s = argv[i];

		if (s[0] == '-' && (!in_command || common_option(s, &takes_value))) {
			argv[commonc++] = argv[i];
			if (common_option(s, &takes_value) && takes_value && i + 1 < argc)
				argv[commonc++] = argv[++i];
			continue;
		}
		in_command = true;
		cmdv[cmdc++] = argv[i];
	}
	memcpy(argv + commonc, cmdv, (size_t)cmdc * sizeof(*cmdv));
	free(cmdv);
	return commonc;
}

void daemon_init(struct cf_table *table, const struct daemon_cfg *base, int argc, char **argv,
		 int *args)
{
	int first_arg, commonc = args != NULL ? split_args(argc, argv) : argc;

	cf_parse_args(table, commonc, argv, &first_arg);
	log_init(table->app);
	if (!log_set_level(base->log_level))
		die("bad_config", "key=log.level value=%s", base->log_level);
	if (args != NULL)
		*args = first_arg < commonc ? first_arg : commonc;
	else if (first_arg < argc)
		die("bad_usage", "msg=\"unexpected argument %s\"", argv[first_arg]);
}
