/*
 * The deductor's worker thread: poll a batch of intents, apply them in Redis
 * (one pipelined EVALSHA each), produce their ledger events, wait for
 * delivery, check the Redis epoch, then store the offsets. Offsets are only
 * stored after all of that succeeded, so a crash, a rebalance or a failure
 * anywhere means the intents are applied again; the step is idempotent per
 * request id, so that is safe.
 */
#ifndef DEDUCTOR_WORKER_H
#define DEDUCTOR_WORKER_H

#include "daemon.h"
#include <stdbool.h>
#include <stddef.h>

#include "kafka.h"

#define WORKER_MUSTCHECK __attribute__((warn_unused_result))

struct deductor_cfg {
	struct kafka_cfg kafka;
	char *redis_address;
	char *http_host;
	long long http_port;
	char *log_level;
	char *group;                 /* deductor.group */
	long long batch_size;        /* deductor.batch_size */
	long long batch_wait_ms;     /* deductor.batch_wait_ms */
	long long record_ttl_s;      /* deductor.record_ttl_s */
	long long retry_backoff_ms;  /* deductor.retry_backoff_ms */
	long long pay_max_lag_ms;    /* deductor.pay_max_lag_ms */
	long long probe_events;      /* deductor.probe_events */
	long long probe_timeout_ms;  /* deductor.probe_timeout_ms */
};

struct worker;

/* Register the deductor's metrics (start-up, once). */
void worker_metrics_register(void);

/*
 * Create the Kafka consumer (subscribed to the intents topic) and producer.
 * cfg must outlive the worker. NULL with a reason in err.
 */
struct worker *worker_new(const struct deductor_cfg *cfg, char *err, size_t errlen)
	WORKER_MUSTCHECK;

/* Start the thread. */
int worker_start(struct worker *w, char *err, size_t errlen) WORKER_MUSTCHECK;

/*
 * The thread, for daemon_run_worker(): its stop request drains (finish the
 * batch, store offsets, close).
 */
struct daemon_thread *worker_thread(struct worker *w);

/* Join the thread; 0 if it drained cleanly, -1 if it stopped on a failure. */
int worker_join(struct worker *w) WORKER_MUSTCHECK;

void worker_free(struct worker *w);

/*
 * /healthz: heartbeat, Redis connection (failed without), missing state or
 * fenced partitions (degraded, with the reason and the fences). Any thread.
 */
enum daemon_health worker_health(struct worker *w, char *detail, size_t n);

#endif
