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

static struct dd_config cfg;

static struct cf_key keys[] = {
	DAEMON_CF_KEYS(cfg.base, "9101"),
	REDIS_CF_KEYS(cfg.redis_address),
	/* One Redis pipeline per batch. */
	CONSUMER_CF_KEYS("deductor", cfg.consumer, "flashsale-deductor", "512", 10000, "2"),
	RECORD_TTL_CF_KEY("deductor.record_ttl_s", cfg.record_ttl_s),
	{ "deductor.pay_max_lag_ms", CF_INT, &cfg.pay_max_lag_ms, "600000", 0, 86400000,
	  "A PAY counts at the time the gateway accepted it, but at most this long before it "
	  "is applied (bounds what a forged old stamp can reach)" },
	{ "deductor.probe_events", CF_INT, &cfg.probe_events, "512", 1, 1000000,
	  "Ledger events read back per newly assigned partition to learn what Redis must hold" },
	{ "deductor.probe_timeout_ms", CF_INT, &cfg.probe_timeout_ms, "10000", 100, 600000,
	  "Give up reading the ledger back after this long without progress (retried)" },
	{ NULL, 0, NULL, NULL, 0, 0, NULL },
};

static struct cf_table table = { .app = "deductor", .usage = NULL, .keys = keys };

int main(int argc, char **argv)
{
	struct dd_worker *worker;
	char err[512];
	int rc;

	daemon_init(&table, &cfg.base, argc, argv, NULL);
	worker = dd_worker_new(&cfg, err, sizeof(err));
	if (worker == NULL)
		die("startup_failed", "what=worker msg=\"%s\"", err);
	log_info("started", "group=%s redis=%s bootstrap=%s http_port=%lld", cfg.consumer.group,
		 cfg.redis_address, cfg.base.kafka.bootstrap, cfg.base.http_port);
	rc = consumer_run(dd_worker_consumer(worker), &cfg.base, &table, dd_worker_health, worker);
	dd_worker_free(worker);
	cf_free(&table);
	return rc;
}
