/*
 * flashsale-deductor: the main thread runs the libevent loop for signals,
 * /healthz and /metrics; the worker thread does the Kafka/Redis work.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


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
	LOG_CF_KEY(cfg.log_level),
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
	{ "deductor.pay_max_lag_ms", CF_INT, &cfg.pay_max_lag_ms, "600000", 0, 86400000,
	  "A PAY counts at the time the gateway accepted it, but at most this long before it "
	  "is applied (bounds what a forged old stamp can reach)" },
	{ "deductor.probe_events", CF_INT, &cfg.probe_events, "512", 1, 1000000,
	  "Ledger events read back per newly assigned partition to learn what Redis must hold" },
	{ "deductor.probe_timeout_ms", CF_INT, &cfg.probe_timeout_ms, "10000", 100, 600000,
	  "Give up reading the ledger back after this long without progress (retried)" },
	{ NULL, 0, NULL, NULL, 0, 0, NULL },
};

static struct cf_table table = {
	.app = "deductor",
	.usage = NULL,
	.keys = keys,
};

static enum daemon_health app_health(void *w, char *detail, size_t n)
{
	return worker_health(w, detail, n);
}

int main(int argc, char **argv)
{
	struct worker *worker;
	char err[512];
	int first_arg, rc;
	bool drained;

	cf_parse_args(&table, argc, argv, &first_arg);
	log_init("deductor");
	if (!log_set_level(cfg.log_level))
		die("bad_config", "key=log.level value=%s", cfg.log_level);
	if (first_arg < argc)
		die("bad_usage", "msg=\"unexpected argument %s\"", argv[first_arg]);

	worker_metrics_register();
	worker = worker_new(&cfg, err, sizeof(err));
	if (worker == NULL)
		die("worker_init", "msg=\"%s\"", err);
	if (worker_start(worker, err, sizeof(err)) < 0)
		die("worker_start", "msg=\"%s\"", err);
	log_info("started", "group=%s redis=%s bootstrap=%s http_port=%lld", cfg.group,
		 cfg.redis_address, cfg.kafka.bootstrap, cfg.http_port);
	drained = daemon_run_worker(worker_thread(worker), app_health, worker,
				    cfg.http_host, (int)cfg.http_port, &table);

	rc = worker_join(worker);
	worker_free(worker);
	log_info("stopped", "clean=%s", rc == 0 && drained ? "true" : "false");
	cf_free(&table);
	return rc == 0 && drained ? 0 : 1;
}
