/*
 * flashsale-order-writer: consumer group on the ledger topic that persists
 * every ledger event, the orders and their state changes, refusals and the
 * ledger offsets covered, to PostgreSQL in idempotent batches.
 *
 * The main thread runs the libevent loop (signals, /healthz, /metrics); one
 * worker thread does the blocking consume/apply/commit work.
 */
#include <stdio.h>
#include <stdlib.h>


#include "config.h"
#include "daemon.h"
#include "kafka.h"
#include "log.h"
#include "order_writer.h"
#include "pg.h"

static struct ow_config cfg;

static struct cf_key keys[] = {
	DAEMON_CF_KEYS(cfg.base, "9102"),
	PG_CF_KEYS(cfg.pg_conninfo),
	/* One PostgreSQL transaction per batch. */
	CONSUMER_CF_KEYS("order_writer", cfg.consumer, "flashsale-order-writer", "2000", 50000,
			 "20"),
	{ NULL, 0, NULL, NULL, 0, 0, NULL },
};

static struct cf_table table = { .app = "order-writer", .usage = NULL, .keys = keys };

int main(int argc, char **argv)
{
	struct ow_worker *worker;
	struct ow_store *store;
	char err[1024];
	int rc;

	daemon_init(&table, &cfg.base, argc, argv, NULL);
	store = ow_store_new(cfg.pg_conninfo);
	if (store == NULL)
		die("startup_failed", "what=store msg=\"out of memory\"");
	if (ow_store_connect(store, true, err, sizeof(err)) < 0)
		die("startup_failed", "what=postgres msg=\"%s\"", err);
	worker = ow_worker_new(&cfg, store, err, sizeof(err));
	if (worker == NULL)
		die("startup_failed", "what=worker msg=\"%s\"", err);
	log_info("started", "group=%s topic=%s http_port=%lld", cfg.consumer.group,
		 FS_TOPIC_LEDGER, cfg.base.http_port);
	rc = consumer_run(ow_worker_consumer(worker), &cfg.base, &table, ow_worker_health, worker);
	ow_worker_free(worker);
	cf_free(&table);
	return rc;
}
