/*
 * The deductor's part of the shared batch consumer (common/consumer.h): a
 * batch of intents is applied in Redis (one pipelined EVALSHA of deduct.lua
 * each), their ledger events are produced, and once they are delivered the
 * Redis epoch is checked; only then are the offsets stored. So a crash, a
 * rebalance or a failure anywhere means the intents are applied again; the
 * step is idempotent per request id, so that is safe.
 */
#ifndef FLASHSALE_DEDUCTOR_WORKER_H
#define FLASHSALE_DEDUCTOR_WORKER_H

#include <stdbool.h>
#include <stddef.h>

#include "consumer.h"
#include "daemon.h"
#include "util.h"

/* Every key of the deductor's config table (main.c). */
struct dd_config {
	struct daemon_cfg base;
	struct consumer_settings consumer; /* deductor.group, .batch_size, ... */
	char *redis_address;
	long long record_ttl_s;      /* deductor.record_ttl_s */
	long long pay_max_lag_ms;    /* deductor.pay_max_lag_ms */
	long long probe_events;      /* deductor.probe_events */
	long long probe_timeout_ms;  /* deductor.probe_timeout_ms */
};

struct dd_worker;

/*
 * Create the consumer (subscribed to the intents topic, producing to the
 * ledger), the ledger reader and the metrics. cfg must outlive the worker.
 * Start-up only: NULL with a reason in err.
 */
struct dd_worker *dd_worker_new(const struct dd_config *cfg, char *err, size_t errlen)
	FS_MUSTCHECK;

/* The worker's consumer, for consumer_run(). */
struct consumer *dd_worker_consumer(struct dd_worker *w);

void dd_worker_free(struct dd_worker *w);

/*
 * /healthz (a daemon_health_fn on a struct dd_worker): heartbeat, Redis
 * connection (failed without), missing state or fenced partitions
 * (degraded, with the reason and the fences). Any thread.
 */
enum daemon_health dd_worker_health(void *dd_worker, char *detail, size_t n);

#endif
