/*
 * What every daemon does around its real work: signals as libevent events,
 * sd_notify, and a small HTTP listener for /healthz and /metrics.
 *
 * Shutdown contract: the first SIGTERM or SIGINT calls on_drain (finish
 * in-flight work, commit offsets, close; then break the loop). A second one
 * exits at once with status 1. SIGHUP calls on_reload when given.
 */
#ifndef FLASHSALE_DAEMON_H
#define FLASHSALE_DAEMON_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct evhttp;
struct evhttp_request;

struct daemon_hooks {
	void (*on_drain)(void *arg);   /* required */
	void (*on_reload)(void *arg);  /* may be NULL */
	/* /healthz: return true when healthy, and fill detail (JSON object text). */
	bool (*health)(void *arg, char *detail, size_t n);
	void *arg;
};

/* Install the signal events on base. Start-up only (dies on failure). */
void daemon_signals(struct event_base *base, const struct daemon_hooks *hooks);

/*
 * Serve GET /healthz and GET /metrics on host:port (port 0 = disabled) on
 * base. If http is not NULL the handlers are added to that existing server
 * instead (the gateway). Start-up only (dies on failure).
 */
struct evhttp *daemon_http(struct event_base *base, struct evhttp *http,
			   const char *host, int port, const struct daemon_hooks *hooks);

/*
 * A daemon whose real work runs on one worker thread (deductor,
 * order-writer, reconciler run): the caller creates and starts the worker;
 * this runs the main loop (signals, /healthz and /metrics on host:port,
 * sd_notify READY) until the worker has finished, either after the drain that
 * a signal asked for through stop(), or on its own failure. The caller joins
 * and frees the worker afterwards. Returns true when the stop was a drain.
 * Start-up failures die().
 */
struct daemon_worker_ops {
	void (*stop)(void *worker);        /* ask the worker to drain; called once */
	bool (*finished)(void *worker);    /* true once the thread is done */
	bool (*health)(void *worker, char *detail, size_t n);
	void *worker;
};

bool daemon_run_worker(const struct daemon_worker_ops *ops, const char *host, int port)
	__attribute__((warn_unused_result));

/* sd_notify wrappers: no-ops without systemd. */
void daemon_notify_ready(void);
void daemon_notify_stopping(void);
void daemon_notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* True once the first SIGTERM/SIGINT arrived (workers poll it). */
bool daemon_draining(void);

#define HTTP_CF_KEYS(hostvar, portvar, defport) \
	{ "http.host", CF_STR, &(hostvar), "127.0.0.1", 0, 0, \
	  "Address the /healthz and /metrics listener binds" }, \
	{ "http.port", CF_INT, &(portvar), defport, 0, 65535, \
	  "Port of the /healthz and /metrics listener (0 disables it)" }

#endif
