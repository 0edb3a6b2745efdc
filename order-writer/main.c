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

static struct kafka_cfg kc;
static char *pg_conninfo;
static char *http_host;
static long long http_port;
static char *log_level;
static char *group;
static long long batch_size;
static long long batch_wait_ms;
static long long retry_backoff_ms;

static struct cf_key keys[] = {
	KAFKA_CF_KEYS(kc),
	PG_CF_KEYS(pg_conninfo),
	HTTP_CF_KEYS(http_host, http_port, "9102"),
	LOG_CF_KEY(log_level),
	{ "order_writer.group", CF_STR, &group, "flashsale-order-writer", 0, 0,
	  "Kafka consumer group on the ledger topic" },
	{ "order_writer.batch_size", CF_INT, &batch_size, "2000", 1, 50000,
	  "Most ledger events applied in one PostgreSQL transaction" },
	{ "order_writer.batch_wait_ms", CF_INT, &batch_wait_ms, "20", 0, 5000,
	  "How long a batch keeps collecting after its first event (ms)" },
	{ "order_writer.retry_backoff_ms", CF_INT, &retry_backoff_ms, "200", 1, 5000,
	  "First wait before redoing a batch after a PostgreSQL failure; doubles up to 5 s" },
	{ NULL, 0, NULL, NULL, 0, 0, NULL },
};

static struct cf_table table = {
	.app = "order-writer",
	.usage = NULL,
	.keys = keys,
};

static enum daemon_health app_health(void *w, char *detail, size_t n)
{
	return worker_health(w, detail, n);
}

int main(int argc, char **argv)
{
	struct worker_cfg wc;
	struct worker *worker;
	struct store *store;
	char err[1024];
	int first_arg, status;
	bool drained;

	cf_parse_args(&table, argc, argv, &first_arg);
	log_init("order-writer");
	if (!log_set_level(log_level))
		die("config_invalid", "key=log.level value=%s", log_level);
	if (first_arg < argc)
		die("usage", "msg=\"unexpected argument %s\"", argv[first_arg]);
	worker_metrics_register();

	store = store_new(pg_conninfo);
	if (store == NULL)
		die("start_failed", "msg=\"out of memory\"");
	if (store_connect(store, true, err, sizeof(err)) < 0)
		die("pg_connect_failed", "msg=\"%s\"", err);

	wc.kafka = &kc;
	wc.group = group;
	wc.batch_size = (int)batch_size;
	wc.batch_wait_ms = (int)batch_wait_ms;
	wc.retry_backoff_ms = (int)retry_backoff_ms;
	worker = worker_new(&wc, store, err, sizeof(err));
	if (worker == NULL)
		die("kafka_setup_failed", "msg=\"%s\"", err);
	if (worker_start(worker, err, sizeof(err)) < 0)
		die("start_failed", "msg=\"%s\"", err);
	log_info("started", "group=%s topic=%s http_port=%lld", group, FS_TOPIC_LEDGER, http_port);
	drained = daemon_run_worker(worker_thread(worker), app_health, worker,
				    http_host, (int)http_port, &table);

	status = worker_join(worker);
	log_info("stopped", "status=%d clean=%s", status, status == 0 && drained ? "true" : "false");
	worker_free(worker);
	cf_free(&table);
	return status == 0 && drained ? 0 : 1;
}
