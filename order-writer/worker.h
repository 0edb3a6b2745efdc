/*
 * The order-writer's part of the shared batch consumer (common/consumer.h):
 * a batch of ledger events becomes one PostgreSQL transaction (COPY into a
 * staging table, set-based idempotent upserts, ledger_offsets), and the
 * offsets are stored only once it committed and its dead letters are
 * delivered.
 */
#ifndef FLASHSALE_ORDER_WRITER_WORKER_H
#define FLASHSALE_ORDER_WRITER_WORKER_H

#include <stdbool.h>
#include <stddef.h>

#include "consumer.h"
#include "daemon.h"
#include "store.h"
#include "util.h"

/* Every key of the order-writer's config table (main.c). */
struct ow_config {
	struct daemon_cfg base;
	struct consumer_settings consumer; /* order_writer.group, .batch_size, ... */
	char *pg_conninfo;
};

struct ow_worker;

/*
 * Create the consumer (subscribed to the ledger, dead letters to their
 * topic) and the metrics. The worker takes ownership of store, which must
 * be connected; cfg must outlive it. NULL with the reason in err (store is
 * then still the caller's).
 */
struct ow_worker *ow_worker_new(const struct ow_config *cfg, struct ow_store *store,
				char *err, size_t errlen) FS_MUSTCHECK;

/* The worker's consumer, for consumer_run(). */
struct consumer *ow_worker_consumer(struct ow_worker *w);

/*
 * /healthz (a daemon_health_fn on a struct ow_worker): healthy when the
 * thread beat within the last 5 s and PostgreSQL is connected. Any thread.
 */
enum daemon_health ow_worker_health(void *ow_worker, char *detail, size_t n);

/* Free everything, the store too (after consumer_run, or if never started). */
void ow_worker_free(struct ow_worker *w);

#endif
