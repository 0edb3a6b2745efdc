/*
 * flashsale-deductor: the main thread runs the libevent loop for signals,
 * /healthz and /metrics; the worker thread does the Kafka/Redis work.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <event2/http.h>

#include "config.h"
#include "daemon.h"
#include "deductor.h"
#include "log.h"
#include "redisx.h"

static struct deductor_cfg cfg;

static struct cf_key keys[] = {
	KAFKA_CF_KEYS(cfg.kafka),
	REDIS_CF_KEYS(cfg.redis_address),
	HTTP_CF_KEYS(cfg.http_host, cfg.http_port, "9101"),
	{ "log.level", CF_STR, &cfg.log_level, "info", 0, 0,
	  "Log level: error, warn, info or debug" },
	{ "deductor.group", CF_STR, &cfg.group, "flashsale-deductor", 0, 0,
	  "Kafka consumer group of the deductors on the intents topic" },
	{ "deductor.batch_size", CF_INT, &cfg.batch_size, "512", 1, 10000,
	  "Most intents applied in one Redis pipeline and committed together" },
	{ "deductor.batch_wait_ms", CF_INT, &cfg.batch_wait_ms, "2", 0, 1000,
	  "How long to wait for more intents after the first of a batch" },
	{ "deductor.record_ttl_s", CF_INT, &cfg.record_ttl_s, "604800", 60, 315360000,
	  "Seconds Redis keeps a request's record (the idempotency horizon for replays)" },
	{ "deductor.retry_backoff_ms", CF_INT, &cfg.retry_backoff_ms, "200", 10, 5000,
	  "First wait before retrying after a Redis, Kafka or not_ready failure (doubles up to 5 s)" },
	{ NULL, 0, NULL, NULL, 0, 0, NULL },
};

static struct cf_table table = {
	.app = "deductor",
	.usage = NULL,
	.keys = keys,
};

struct app {
	struct event_base *base;
	struct worker *worker;
	bool draining;
};

static void on_drain(void *arg)
{
	struct app *a = arg;

	a->draining = true;
	worker_stop(a->worker);
}

static bool on_health(void *arg, char *detail, size_t n)
{
	struct app *a = arg;

	return worker_health(a->worker, detail, n);
}

/* The loop ends when the worker does: after a drain, or on its own failure. */
static void watch_cb(evutil_socket_t fd, short what, void *arg)
{
	struct app *a = arg;

	if (!worker_finished(a->worker))
		return;
	if (!a->draining)
		log_error("worker_exited", "msg=\"worker stopped without a drain\"");
	event_base_loopbreak(a->base);
}

int main(int argc, char **argv)
{
	struct daemon_hooks hooks = { 0 };
	struct timeval tick = { 0, 50 * 1000 };
	struct app a = { 0 };
	struct event *watch;
	struct evhttp *http;
	char err[512];
	int first_arg, rc;

	cf_parse_args(&table, argc, argv, &first_arg);
	log_init("deductor");
	if (!log_set_level(cfg.log_level))
		die("bad_config", "key=log.level value=%s", cfg.log_level);
	if (first_arg < argc)
		die("bad_usage", "msg=\"unexpected argument %s\"", argv[first_arg]);

	worker_metrics_register();
	a.base = event_base_new();
	if (a.base == NULL)
		die("event_base", "msg=\"cannot create the event loop\"");
	a.worker = worker_new(&cfg, err, sizeof(err));
	if (a.worker == NULL)
		die("worker_init", "msg=\"%s\"", err);

	hooks.on_drain = on_drain;
	hooks.health = on_health;
	hooks.arg = &a;
	daemon_signals(a.base, &hooks);
	http = daemon_http(a.base, NULL, cfg.http_host, (int)cfg.http_port, &hooks);

	watch = event_new(a.base, -1, EV_PERSIST, watch_cb, &a);
	if (watch == NULL || event_add(watch, &tick) < 0)
		die("event_setup", "msg=\"cannot add the worker watch\"");
	if (worker_start(a.worker, err, sizeof(err)) < 0)
		die("worker_start", "msg=\"%s\"", err);

	log_info("started", "group=%s redis=%s bootstrap=%s http_port=%lld", cfg.group,
		 cfg.redis_address, cfg.kafka.bootstrap, cfg.http_port);
	daemon_notify_ready();
	event_base_dispatch(a.base);

	daemon_notify_stopping();
	rc = worker_join(a.worker);
	worker_free(a.worker);
	event_free(watch);
	if (http != NULL)
		evhttp_free(http);
	event_base_free(a.base);
	log_info("stopped", "clean=%s", rc == 0 && a.draining ? "true" : "false");
	cf_free(&table);
	return rc == 0 && a.draining ? 0 : 1;
}
