/*
 * The order-writer's worker thread: consume ledger events in batches, apply
 * each batch to PostgreSQL in one transaction (store.h), then store the
 * Kafka offsets (auto commit sends them). Blocking libpq and librdkafka calls
 * happen only on this thread; the main thread's event loop only asks for a
 * drain, reads health and joins.
 */
#ifndef FLASHSALE_OW_WORKER_H
#define FLASHSALE_OW_WORKER_H

#include "daemon.h"
#include <stdbool.h>
#include <stddef.h>

#include "kafka.h"
#include "store.h"

#define WORKER_MUSTCHECK __attribute__((warn_unused_result))

struct worker_cfg {
	const struct kafka_cfg *kafka;
	const char *group;          /* consumer group id */
	int batch_size;             /* events per batch, >= 1 */
	int batch_wait_ms;          /* wait after the first event of a batch */
	int retry_backoff_ms;       /* first backoff after a PostgreSQL failure */
};

struct worker;

/* Register the order-writer metrics (start-up, once). */
void worker_metrics_register(void);

/*
 * Create the consumer (subscribed to the ledger) and the dead-letter
 * producer. The worker takes ownership of store, which must be connected.
 * NULL with the reason in err; store is then still the caller's.
 */
struct worker *worker_new(const struct worker_cfg *cfg, struct store *store,
			  char *err, size_t errlen) WORKER_MUSTCHECK;

/* Start the thread. -1 with the reason in err. */
int worker_start(struct worker *w, char *err, size_t errlen) WORKER_MUSTCHECK;

/*
 * The thread, for daemon_run_worker(): its stop request makes the worker
 * finish its batch, store offsets, close and exit.
 */
struct daemon_thread *worker_thread(struct worker *w);

/* Wait for the thread; its exit status: 0 after a drain, -1 on a fatal error. */
int worker_join(struct worker *w);

/*
 * Healthy when the thread beat within the last 5 s and PostgreSQL is
 * connected; detail gets a JSON object. Any thread.
 */
enum daemon_health worker_health(const struct worker *w, char *detail, size_t n);

/* Free everything (after worker_join, or if never started). */
void worker_free(struct worker *w);

#endif
