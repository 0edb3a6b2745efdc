#include "worker.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "batch.h"
#include "daemon.h"
#include "intent.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#define WORKER_CLIENT_ID "flashsale-order-writer"
#define WORKER_CONSUMER_NAME "order-writer"
#define WORKER_BACKOFF_MAX_MS 5000
#define WORKER_HEALTH_BEAT_US (5 * 1000000LL)
#define WORKER_POLL_MS 100
#define WORKER_IDLE_PING_US (2 * 1000000LL)
/* While draining, a batch PostgreSQL keeps refusing is given up after this
 * many attempts: its offsets were not stored, so it is simply read again. */
#define WORKER_DRAIN_ATTEMPTS 3

enum worker_outcome {
	WORKER_OK = 0,
	WORKER_DATA = STORE_DATA,
	WORKER_ABANDON = -3,   /* draining and PostgreSQL still failing */
	WORKER_FATAL = -4,     /* out of memory: stop, nothing was stored */
	WORKER_REDO = -5,      /* a dead letter was not delivered: do it all again */
};

struct worker_entry {
	rd_kafka_message_t *m;
	fs_ledger_event *ev;   /* NULL once dead-lettered */
};

struct worker {
	struct worker_cfg cfg;
	struct store *store;
	rd_kafka_t *consumer;
	rd_kafka_t *producer;
	struct daemon_thread th;
	int status;            /* worker thread only: -1 once a fatal error stops it */
	/* Shared with other threads: atomics only. */
	int pg_up;
	int64_t dl_failed;     /* dead letters whose delivery failed (producer thread) */

	struct worker_entry *entries;
	size_t n;
	struct batch_buf rows;
	struct batch_buf one;
	struct batch_offsets offs;
	struct batch_offsets one_offs;
	int backoff_ms;
	int64_t pg_used_us;    /* last time PostgreSQL answered */
	size_t attempt_deadletters;  /* dead letters sent by this batch attempt */
};

#define EVENTS_HELP "Ledger events applied to PostgreSQL, by kind"
#define EVENTS_METRIC(k) { .name = "order_writer_events_total", .help = EVENTS_HELP, \
			   .labels = "kind=\"" k "\"", .type = METRIC_COUNTER }

/* Indexed by LedgerEvent.Kind - 1. */
static struct metric m_events[] = {
	EVENTS_METRIC("reserved"),
	EVENTS_METRIC("paid"),
	EVENTS_METRIC("cancelled"),
	EVENTS_METRIC("expired"),
	EVENTS_METRIC("refused"),
	EVENTS_METRIC("transition_refused"),
};
static struct metric m_batches = {
	.name = "order_writer_batches_total", .type = METRIC_COUNTER,
	.help = "Batches committed to PostgreSQL" };
static struct metric m_batch_latency = {
	.name = "order_writer_batch_seconds", .type = METRIC_HISTOGRAM,
	.help = "Time from the first event of a batch being read to its offsets being stored" };
static struct metric m_rows = {
	.name = "order_writer_rows_total", .type = METRIC_COUNTER,
	.help = "Ledger messages handled (applied or dead-lettered)" };
static struct metric m_batch_rows = {
	.name = "order_writer_batch_rows", .type = METRIC_GAUGE,
	.help = "Messages in the last batch" };
static struct metric m_deadletters = {
	.name = "order_writer_deadletters_total", .type = METRIC_COUNTER,
	.help = "Ledger messages sent to the dead-letter topic" };
static struct metric m_redo = {
	.name = "order_writer_batch_redo_total", .type = METRIC_COUNTER,
	.help = "Batch attempts redone after a PostgreSQL or dead-letter failure" };
static struct metric m_fallback = {
	.name = "order_writer_batch_fallback_total", .type = METRIC_COUNTER,
	.help = "Batches applied one event per transaction after a data error" };
static struct metric m_lag = {
	.name = "order_writer_lag_messages", .type = METRIC_GAUGE,
	.help = "Messages behind the high watermark on the partitions of the last batch" };
static struct metric m_pg_up = {
	.name = "order_writer_postgres_connected", .type = METRIC_GAUGE,
	.help = "1 when the worker holds a PostgreSQL connection" };

void worker_metrics_register(void)
{
	size_t i;

	for (i = 0; i < sizeof(m_events) / sizeof(m_events[0]); i++)
		metrics_register(&m_events[i]);
	metrics_register(&m_batches);
	metrics_register(&m_batch_latency);
	metrics_register(&m_rows);
	metrics_register(&m_batch_rows);
	metrics_register(&m_deadletters);
	metrics_register(&m_redo);
	metrics_register(&m_fallback);
	metrics_register(&m_lag);
	metrics_register(&m_pg_up);
}

static void worker_beat(struct worker *w)
{
	daemon_thread_beat(&w->th);
}

static bool worker_stopping(const struct worker *w)
{
	return daemon_thread_stopping(&w->th);
}

static void worker_set_pg_up(struct worker *w, bool up)
{
	__atomic_store_n(&w->pg_up, up ? 1 : 0, __ATOMIC_RELAXED);
	metric_set(&m_pg_up, up ? 1 : 0);
}

/* Sleep ms, beating so that a backoff is not mistaken for a hung thread. */
static void worker_sleep_ms(struct worker *w, int ms)
{
	while (ms > 0) {
		int step = ms < 100 ? ms : 100;
		struct timespec ts = { 0, (long)step * 1000000L };

		nanosleep(&ts, NULL);
		ms -= step;
		worker_beat(w);
		if (w->producer != NULL)
			rd_kafka_poll(w->producer, 0);
	}
}

/* Delivery reports (served by rd_kafka_poll/flush on the worker thread): a
 * dead letter that was not delivered must not vanish. */
static void worker_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	struct worker *w = opaque;

	if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR)
		return;
	__atomic_add_fetch(&w->dl_failed, 1, __ATOMIC_RELAXED);
	log_error("deadletter_failed", "err=%s", rd_kafka_err2name(m->err));
}

/*
 * Send entry e to the dead-letter topic. Waits while the producer queue is
 * full; gives up (loudly) only after ~10 s so a dead Kafka cannot wedge a
 * drain forever; the batch's flush then notices the loss and redoes it.
 */
static void worker_deadletter(struct worker *w, struct worker_entry *e, const char *reason)
{
	char err[256], q[512];
	int attempt;

	w->attempt_deadletters++;
	log_warn("deadletter", "partition=%" PRId32 " offset=%" PRId64 " reason=\"%s\"",
		 e->m->partition, (int64_t)e->m->offset, log_quote(q, sizeof(q), reason));
	for (attempt = 0; attempt < 100; attempt++) {
		if (kafka_deadletter(w->producer, e->m, WORKER_CONSUMER_NAME, reason,
				     err, sizeof(err)) == 0) {
			metric_add(&m_deadletters, 1);
			return;
		}
		rd_kafka_poll(w->producer, 100);
		worker_beat(w);
	}
	__atomic_add_fetch(&w->dl_failed, 1, __ATOMIC_RELAXED);
	log_error("deadletter_failed", "partition=%" PRId32 " offset=%" PRId64 " msg=\"%s\"",
		  e->m->partition, (int64_t)e->m->offset, log_quote(q, sizeof(q), err));
}

/*
 * Apply rows/offs in one transaction, reconnecting and retrying with a
 * doubling backoff on anything but a data error (the work is idempotent).
 * Returns WORKER_OK, WORKER_DATA (err says why; the connection is kept) or
 * WORKER_ABANDON when draining and PostgreSQL keeps failing.
 */
static int worker_apply(struct worker *w, const char *rows, size_t len,
			const struct batch_offsets *offs, bool project,
			char *err, size_t errlen)
{
	int attempt;

	for (attempt = 1;; attempt++) {
		char q[1024];

		worker_beat(w);
		if (!store_connected(w->store)) {
			if (store_connect(w->store, false, err, errlen) < 0) {
				worker_set_pg_up(w, false);
				log_warn("pg_connect_failed", "attempt=%d msg=\"%s\"", attempt,
					 log_quote(q, sizeof(q), err));
				goto backoff;
			}
			worker_set_pg_up(w, true);
			log_info("pg_connected", "attempt=%d", attempt);
		}
		switch (store_apply(w->store, rows, len, offs, project, err, errlen)) {
		case STORE_OK:
			w->pg_used_us = mono_us();
			w->backoff_ms = w->cfg.retry_backoff_ms;
			return WORKER_OK;
		case STORE_DATA:
			return WORKER_DATA;
		case STORE_RETRY:
			break;
		}
		worker_set_pg_up(w, store_connected(w->store));
		metric_add(&m_redo, 1);
		log_warn("batch_retry", "attempt=%d backoff_ms=%d msg=\"%s\"", attempt,
			 w->backoff_ms, log_quote(q, sizeof(q), err));
backoff:
		if (worker_stopping(w) && attempt >= WORKER_DRAIN_ATTEMPTS)
			return WORKER_ABANDON;
		worker_sleep_ms(w, w->backoff_ms);
		w->backoff_ms = w->backoff_ms * 2 > WORKER_BACKOFF_MAX_MS ?
				WORKER_BACKOFF_MAX_MS : w->backoff_ms * 2;
	}
}

/*
 * Fallback step for one event: its own transaction; if PostgreSQL refuses
 * it, the ledger_events row alone, and a dead letter either way.
 */
static int worker_apply_one(struct worker *w, struct worker_entry *e)
{
	char err[1024], err2[1024], reason[2400];
	int rc;

	batch_buf_reset(&w->one);
	batch_offsets_reset(&w->one_offs);
	if (batch_row_append(&w->one, e->ev, e->m->partition, e->m->offset, 0) < 0 ||
	    batch_offsets_note(&w->one_offs, e->m->partition, e->m->offset) < 0)
		return WORKER_FATAL;
	rc = worker_apply(w, w->one.data, w->one.len, &w->one_offs, true, err, sizeof(err));
	if (rc != WORKER_DATA)
		return rc;
	rc = worker_apply(w, w->one.data, w->one.len, &w->one_offs, false, err2, sizeof(err2));
	if (rc == WORKER_OK)
		snprintf(reason, sizeof(reason), "postgres refused the event (kept in "
			 "ledger_events only; orders/refusals not updated): %s", err);
	else if (rc == WORKER_DATA)
		snprintf(reason, sizeof(reason), "postgres refused the event (not "
			 "stored): %s; ledger_events: %s", err, err2);
	else
		return rc;
	worker_deadletter(w, e, reason);
	ledger_free(e->ev);
	e->ev = NULL;
	return WORKER_OK;
}

/*
 * A data error (SQLSTATE class 22/23: say a reservation for a SKU with no
 * promotions row, or a value out of range) rolled back the whole batch.
 * Redoing it unchanged would fail forever and wedge the consumer, and every
 * other event of the batch is fine; so apply the batch one event per
 * transaction. An event PostgreSQL still refuses is kept in ledger_events if
 * that alone works (so `reconciler rebuild` still sees the stock it moved),
 * and goes to the dead-letter topic with PostgreSQL's message either way.
 */
static int worker_fallback(struct worker *w, const char *first_err)
{
	char err[1024], q[1024];
	size_t i;
	int rc;

	metric_add(&m_fallback, 1);
	log_warn("batch_data_error", "events=%zu msg=\"%s\"", w->n,
		 log_quote(q, sizeof(q), first_err));
	for (i = 0; i < w->n; i++) {
		if (w->entries[i].ev != NULL && (rc = worker_apply_one(w, &w->entries[i])) != WORKER_OK)
			return rc;
	}
	/* The batch's offsets, so that dead letters at a partition's tail count as done. */
	rc = worker_apply(w, NULL, 0, &w->offs, false, err, sizeof(err));
	if (rc == WORKER_DATA) {
		log_error("offsets_refused", "msg=\"%s\"", log_quote(q, sizeof(q), err));
		rc = WORKER_OK;
	}
	return rc;
}

static void worker_entries_clear_events(struct worker *w)
{
	size_t i;

	for (i = 0; i < w->n; i++) {
		ledger_free(w->entries[i].ev);
		w->entries[i].ev = NULL;
	}
}

static void worker_entries_release(struct worker *w)
{
	size_t i;

	worker_entries_clear_events(w);
	for (i = 0; i < w->n; i++)
		rd_kafka_message_destroy(w->entries[i].m);
	w->n = 0;
}

/* Hand the batch's next offsets to librdkafka (auto commit sends them). */
static void worker_store_offsets(struct worker *w)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)w->offs.n);
	rd_kafka_resp_err_t rerr;
	int64_t lag = 0;
	size_t i;

	if (l == NULL)
		return;
	for (i = 0; i < w->offs.n; i++)
		rd_kafka_topic_partition_list_add(l, FS_TOPIC_LEDGER,
						  w->offs.v[i].partition)->offset = w->offs.v[i].next;
	rerr = rd_kafka_offsets_store(w->consumer, l);
	/*
	 * Fails for partitions revoked while the batch was being written: their
	 * new owner reads them again, which PostgreSQL absorbs (idempotent).
	 */
	if (rerr != RD_KAFKA_RESP_ERR_NO_ERROR)
		log_warn("offsets_store_failed", "err=%s", rd_kafka_err2name(rerr));
	for (i = 0; i < w->offs.n; i++) {
		int64_t lo = 0, hi = 0;

		if (rd_kafka_get_watermark_offsets(w->consumer, FS_TOPIC_LEDGER,
						   w->offs.v[i].partition, &lo, &hi) ==
		    RD_KAFKA_RESP_ERR_NO_ERROR && hi > w->offs.v[i].next)
			lag += hi - w->offs.v[i].next;
	}
	metric_set(&m_lag, lag);
	rd_kafka_topic_partition_list_destroy(l);
}

/* Wait for the batch's dead letters; WORKER_REDO if one was lost. */
static int worker_flush_deadletters(struct worker *w, int64_t failed_before)
{
	int attempt = 0;

	while (kafka_flush(w->producer, 1000) < 0) {
		worker_beat(w);
		if (++attempt % 10 == 0)
			log_warn("deadletter_flush_slow", "outq=%d", rd_kafka_outq_len(w->producer));
		if (worker_stopping(w) && attempt >= 10)
			return WORKER_ABANDON;
	}
	if (__atomic_load_n(&w->dl_failed, __ATOMIC_RELAXED) != failed_before)
		return WORKER_REDO;
	return WORKER_OK;
}

/* One attempt at the whole batch: decode, dead-letter, apply, flush. */
static int worker_batch_once(struct worker *w)
{
	int64_t failed_before = __atomic_load_n(&w->dl_failed, __ATOMIC_RELAXED);
	char err[1024], reason[1200];
	size_t i;
	int rc;

	w->attempt_deadletters = 0;
	worker_entries_clear_events(w);
	batch_buf_reset(&w->rows);
	batch_offsets_reset(&w->offs);
	for (i = 0; i < w->n; i++) {
		struct worker_entry *e = &w->entries[i];
		fs_ledger_event *ev;

		if (batch_offsets_note(&w->offs, e->m->partition, e->m->offset) < 0)
			return WORKER_FATAL;
		ev = ledger_decode(e->m->payload, e->m->len, err, sizeof(err));
		if (ev == NULL) {
			snprintf(reason, sizeof(reason), "undecodable ledger event: %s", err);
			worker_deadletter(w, e, reason);
			continue;
		}
		if (batch_event_check(ev, err, sizeof(err)) < 0) {
			snprintf(reason, sizeof(reason), "invalid ledger event: %s", err);
			worker_deadletter(w, e, reason);
			ledger_free(ev);
			continue;
		}
		e->ev = ev;
		if (batch_row_append(&w->rows, ev, e->m->partition, e->m->offset, (int64_t)i) < 0)
			return WORKER_FATAL;
	}
	rc = worker_apply(w, w->rows.data, w->rows.len, &w->offs, true, err, sizeof(err));
	if (rc == WORKER_DATA)
		rc = worker_fallback(w, err);
	if (rc != WORKER_OK)
		return rc;
	/* Offsets are stored only once every dead letter of the batch is delivered. */
	if (w->attempt_deadletters > 0)
		rc = worker_flush_deadletters(w, failed_before);
	return rc;
}

/*
 * Apply the collected batch until it is durable, then store its offsets.
 * 0 when done, 1 when abandoned during a drain (offsets not stored: the
 * batch will be read again), -1 on a fatal error.
 */
static int worker_batch(struct worker *w, int64_t t0)
{
	size_t i;
	int rc;

	for (;;) {
		rc = worker_batch_once(w);
		if (rc != WORKER_REDO)
			break;
		metric_add(&m_redo, 1);
		log_warn("batch_redo", "why=deadletter_lost events=%zu", w->n);
		if (worker_stopping(w))
			return 1;
		worker_sleep_ms(w, w->backoff_ms);
	}
	if (rc == WORKER_ABANDON) {
		log_warn("batch_abandoned", "events=%zu why=draining", w->n);
		return 1;
	}
	if (rc != WORKER_OK) {
		log_error("batch_failed", "events=%zu why=out_of_memory", w->n);
		return -1;
	}
	worker_store_offsets(w);
	for (i = 0; i < w->n; i++) {
		const fs_ledger_event *ev = w->entries[i].ev;

		if (ev != NULL && ev->kind >= 1 &&
		    (size_t)ev->kind <= sizeof(m_events) / sizeof(m_events[0]))
			metric_add(&m_events[ev->kind - 1], 1);
	}
	metric_add(&m_batches, 1);
	metric_add(&m_rows, (int64_t)w->n);
	metric_set(&m_batch_rows, (int64_t)w->n);
	metric_observe_us(&m_batch_latency, (uint64_t)(mono_us() - t0));
	log_debug("batch_done", "events=%zu partitions=%zu us=%" PRId64, w->n, w->offs.n,
		  mono_us() - t0);
	return 0;
}

static void worker_take(void *arg, rd_kafka_message_t *m)
{
	struct worker *w = arg;

	w->entries[w->n].m = m;
	w->entries[w->n].ev = NULL;
	w->n++;
}

/*
 * Fill w->entries: wait up to WORKER_POLL_MS for a first message, then up to
 * batch_wait_ms more (or only what is already there when it is 0), at most
 * batch_size. *t0 gets the time the first message arrived.
 */
static void worker_collect(struct worker *w, int64_t *t0)
{
	(void)kafka_poll_batch(w->consumer, (size_t)w->cfg.batch_size, WORKER_POLL_MS,
			       w->cfg.batch_wait_ms, worker_take, w, t0);
}

/*
 * Between batches: check the connection now and then (reconnecting if it is
 * gone) so /healthz tells the truth while no events arrive.
 */
static void worker_idle_check(struct worker *w)
{
	char err[512], q[600];
	int64_t now = mono_us();

	if (now - w->pg_used_us < WORKER_IDLE_PING_US)
		return;
	w->pg_used_us = now;
	if (store_connected(w->store) && store_ping(w->store, err, sizeof(err)) == 0)
		return;
	if (store_connect(w->store, false, err, sizeof(err)) == 0) {
		worker_set_pg_up(w, true);
		log_info("pg_connected", "when=idle");
		return;
	}
	if (__atomic_load_n(&w->pg_up, __ATOMIC_RELAXED) != 0)
		log_warn("pg_connect_failed", "when=idle msg=\"%s\"", log_quote(q, sizeof(q), err));
	worker_set_pg_up(w, false);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	rd_kafka_resp_err_t rerr;
	char fatal[256];

	log_info("worker_started", "group=%s batch_size=%d batch_wait_ms=%d",
		 w->cfg.group, w->cfg.batch_size, w->cfg.batch_wait_ms);
	while (!worker_stopping(w)) {
		int64_t t0 = 0;
		int rc;

		worker_beat(w);
		rd_kafka_poll(w->producer, 0);
		worker_collect(w, &t0);
		if (w->n == 0) {
			if (rd_kafka_fatal_error(w->consumer, fatal, sizeof(fatal)) !=
			    RD_KAFKA_RESP_ERR_NO_ERROR) {
				log_error("consumer_fatal", "msg=\"%s\"", fatal);
				w->status = -1;
				break;
			}
			worker_idle_check(w);
			continue;
		}
		rc = worker_batch(w, t0);
		worker_entries_release(w);
		if (rc < 0) {
			w->status = -1;
			break;
		}
		if (rc > 0)
			break;
	}
	worker_entries_release(w);
	/* Commits the stored offsets and leaves the group. */
	rerr = rd_kafka_consumer_close(w->consumer);
	if (rerr != RD_KAFKA_RESP_ERR_NO_ERROR)
		log_warn("consumer_close_failed", "err=%s", rd_kafka_err2name(rerr));
	if (kafka_flush(w->producer, 5000) < 0)
		log_error("deadletter_flush_failed", "outq=%d", rd_kafka_outq_len(w->producer));
	store_disconnect(w->store);
	worker_set_pg_up(w, false);
	log_info("worker_stopped", "status=%d", w->status);
	daemon_thread_exit(&w->th, w->status != 0);
	return NULL;
}

struct worker *worker_new(const struct worker_cfg *cfg, struct store *store,
			  char *err, size_t errlen)
{
	rd_kafka_topic_partition_list_t *topics;
	rd_kafka_conf_t *conf;
	rd_kafka_resp_err_t rerr;
	char rkerr[512];
	struct worker *w = calloc(1, sizeof(*w));

	if (w == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	w->cfg = *cfg;
	w->backoff_ms = cfg->retry_backoff_ms > 0 ? cfg->retry_backoff_ms : 1;
	w->cfg.retry_backoff_ms = w->backoff_ms;
	w->entries = calloc((size_t)cfg->batch_size, sizeof(*w->entries));
	if (w->entries == NULL) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}

	w->producer = kafka_producer_new(cfg->kafka, WORKER_CLIENT_ID, FS_TOPIC_DEADLETTER,
					 worker_dr_cb, NULL, w,
					 err, errlen);
	if (w->producer == NULL)
		goto fail;

	conf = kafka_conf_new(cfg->kafka, KAFKA_CONSUMER, WORKER_CLIENT_ID, cfg->group,
			      err, errlen);
	if (conf == NULL)
		goto fail;
	w->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, conf, rkerr, sizeof(rkerr));
	if (w->consumer == NULL) {
		rd_kafka_conf_destroy(conf);
		snprintf(err, errlen, "kafka consumer: %s", rkerr);
		goto fail;
	}
	rd_kafka_poll_set_consumer(w->consumer);
	topics = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(topics, FS_TOPIC_LEDGER, RD_KAFKA_PARTITION_UA);
	rerr = rd_kafka_subscribe(w->consumer, topics);
	rd_kafka_topic_partition_list_destroy(topics);
	if (rerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
		snprintf(err, errlen, "subscribe %s: %s", FS_TOPIC_LEDGER, rd_kafka_err2str(rerr));
		goto fail;
	}
	w->store = store;
	worker_set_pg_up(w, store_connected(store));
	w->pg_used_us = mono_us();
	worker_beat(w);
	return w;
fail:
	worker_free(w);
	return NULL;
}

int worker_start(struct worker *w, char *err, size_t errlen)
{
	return daemon_thread_start(&w->th, worker_main, w, err, errlen);
}

struct daemon_thread *worker_thread(struct worker *w)
{
	return &w->th;
}

int worker_join(struct worker *w)
{
	return daemon_thread_join(&w->th);
}

enum daemon_health worker_health(const struct worker *w, char *detail, size_t n)
{
	int64_t age_ms = daemon_thread_beat_age_ms(&w->th);
	bool pg = __atomic_load_n(&w->pg_up, __ATOMIC_RELAXED) != 0;
	bool alive = age_ms * 1000 < WORKER_HEALTH_BEAT_US && !daemon_thread_finished(&w->th);

	snprintf(detail, n, "{\"worker_beat_age_ms\":%" PRId64 ",\"worker_alive\":%s,"
		 "\"postgres_connected\":%s,\"batches\":%" PRId64 "}",
		 age_ms, alive ? "true" : "false", pg ? "true" : "false",
		 metric_get(&m_batches));
	return alive && pg ? HEALTH_OK : HEALTH_FAILED;
}

void worker_free(struct worker *w)
{
	if (w == NULL)
		return;
	if (w->consumer != NULL)
		rd_kafka_destroy(w->consumer);
	if (w->producer != NULL)
		rd_kafka_destroy(w->producer);
	store_free(w->store);
	free(w->entries);
	batch_buf_free(&w->rows);
	batch_buf_free(&w->one);
	batch_offsets_free(&w->offs);
	batch_offsets_free(&w->one_offs);
	free(w);
}
