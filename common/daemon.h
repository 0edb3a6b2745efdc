/*
 * What every daemon does around its real work: signals as libevent events,
 * sd_notify, and a small HTTP listener for /healthz and /metrics.
 *
 * Shutdown contract: the first SIGTERM or SIGINT calls on_drain (finish
 * in-flight work, commit offsets, close; then break the loop). A second one
 * exits at once with status 1. SIGHUP calls on_reload when given.
 */
#ifndef FLASHSALE_COMMON_DAEMON_H
#define FLASHSALE_COMMON_DAEMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

#include "kafka.h"
#include "log.h"
#include "util.h"

struct event_base;
struct evhttp;
struct evhttp_request;
struct cf_table;

/*
 * What /healthz says. DEGRADED is answered 200 (restarting the process
 * would not help: a dependency needs repair) with "status":"degraded" and
 * the reason in the detail; FAILED is answered 503.
 */
enum daemon_health {
	HEALTH_OK = 0,
	HEALTH_DEGRADED,
	HEALTH_FAILED,
};

typedef enum daemon_health (*daemon_health_fn)(void *arg, char *detail, size_t n);

struct daemon_hooks {
	void (*on_drain)(void *arg);   /* required */
	void (*on_reload)(void *arg);  /* may be NULL */
	/* /healthz: fill detail (JSON object text) and say how healthy. */
	daemon_health_fn health;
	void *arg;
};

/*
 * An event base whose epoll backend batches each loop turn's changes into
 * the epoll set (EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST): evhttp disables and
 * re-enables reading around every request, two epoll_ctl calls a request
 * otherwise. The flag's condition: no fd the loop watches may be a dup() of
 * another, and none is here (sockets, eventfds, libevent's own pipes). NULL
 * on failure. Start-up only.
 */
struct event_base *daemon_base_new(void);

/* Install the signal events on base. Start-up only (dies on failure). */
void daemon_signals(struct event_base *base, const struct daemon_hooks *hooks);

/*
 * Serve GET /healthz and GET /metrics on host:port (port 0 = disabled) on
 * base. If http is not NULL the handlers are added to that existing server
 * instead (the gateway's admin listener). Start-up only (dies on failure).
 */
struct evhttp *daemon_http(struct event_base *base, struct evhttp *http,
			   const char *host, int port, const struct daemon_hooks *hooks);

/*
 * Serve GET /healthz only on an existing server, with the hooks daemon_http
 * was given (the gateway's public listener: /metrics stays private).
 */
void daemon_http_healthz(struct evhttp *http);

/*
 * The one worker thread of a consumer daemon (deductor, order-writer,
 * reconciler run), shared between it and the main thread. The worker polls
 * daemon_thread_stopping() at least every 100 ms, beats while alive, and
 * calls daemon_thread_exit() as its last act; the main thread asks it to
 * drain with daemon_thread_stop() and watches daemon_thread_finished().
 */
struct daemon_thread {
	pthread_t tid;
	bool started;
	int stop;          /* atomic: drain requested */
	int finished;      /* atomic: the thread is done */
	int failed;        /* atomic: ... and it ended on a failure */
	int64_t beat_us;   /* atomic: mono_us of the last sign of life */
};

int daemon_thread_start(struct daemon_thread *t, void *(*fn)(void *), void *arg,
			char *err, size_t errlen) FS_MUSTCHECK;
void daemon_thread_stop(struct daemon_thread *t);
bool daemon_thread_stopping(const struct daemon_thread *t);
void daemon_thread_beat(struct daemon_thread *t);
/* Milliseconds since the last beat. */
int64_t daemon_thread_beat_age_ms(const struct daemon_thread *t);
/* The thread's last act: mark it finished (failed or not). */
void daemon_thread_exit(struct daemon_thread *t, bool failed);
bool daemon_thread_finished(const struct daemon_thread *t);
/* Join if started; 0 when the thread ended without failure. */
int daemon_thread_join(struct daemon_thread *t);

/*
 * Run the main thread of such a daemon until its worker thread has finished,
 * either after the drain a signal asked for, or on its own failure: signals,
 * /healthz (through health, arg) and /metrics on host:port, sd_notify READY
 * and STOPPING. The caller then joins and frees the worker. Returns true when
 * the stop was a drain. Start-up failures die().
 */
bool daemon_run_worker(struct daemon_thread *t, daemon_health_fn health,
		       void *arg, const char *host, int port, struct cf_table *config)
	FS_MUSTCHECK;

/*
 * SIGHUP: read the configuration again (cf_reload). A bad file or value is
 * logged and the old configuration stays; otherwise the reloadable keys take
 * effect (log.level here, the rest through changed) and the others log that
 * they need a restart. Tells systemd RELOADING, then READY.
 */
void daemon_reload_config(struct cf_table *config, void (*changed)(const char *key, void *arg),
			  void *arg);

/* sd_notify wrappers: no-ops without systemd. */
void daemon_notify_ready(void);
void daemon_notify_stopping(void);

/*
 * What every daemon's configuration starts with: its first member is a
 * struct daemon_cfg `base`, and its cf_key table starts with
 * DAEMON_CF_KEYS(cfg.base, "<default http.port>").
 */
struct daemon_cfg {
	struct kafka_cfg kafka;
	char *http_host;       /* http.host: /healthz, /metrics (the gateway: its API) */
	long long http_port;   /* http.port */
	char *log_level;       /* log.level */
};

#define DAEMON_CF_KEYS(base, defport) \
	KAFKA_CF_KEYS((base).kafka), \
	{ "http.host", CF_STR, &(base).http_host, "127.0.0.1", 0, 0, \
	  "Address the HTTP listener binds (/healthz and /metrics; the gateway's API)" }, \
	{ "http.port", CF_INT, &(base).http_port, defport, 0, 65535, \
	  "Port of the HTTP listener (0 disables it where the daemon allows)" }, \
	LOG_CF_KEY((base).log_level)

/*
 * Start-up of a daemon: parse the configuration (exits 2 on a usage error,
 * 0 after --help, --version or --print-config), start logging as
 * table->app at base->log_level, and refuse extra arguments unless args is
 * not NULL. Then argv is reordered: the common options first, wherever they
 * were, then the command and its own flags (`rebuild --force`, `token
 * --user U`), which start at *args. Dies on a bad log level.
 */
void daemon_init(struct cf_table *table, const struct daemon_cfg *base, int argc, char **argv,
		 int *args);

#endif
