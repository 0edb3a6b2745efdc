/*
 * The order-writer's apply logic on the shared consumer (see worker.h):
 * decode and check each ledger event, write the batch in one transaction,
 * and when PostgreSQL refuses the data, one event per transaction so that
 * only the refused events go to the dead-letter topic.
 */
#include "worker.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "array.h"
#include "batch.h"
#include "consumer.h"
#include "intent.h"
#include "log.h"
#include "metrics.h"

#define HEARTBEAT_MAX_MS 5000
#define IDLE_PING_US (2 * 1000000LL)

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
static struct metric m_fallback = { "order_writer_batch_fallback_total",
	"Batches applied one event per transaction after a data error", NULL, METRIC_COUNTER };
static struct metric m_pg_up = { "order_writer_postgres_connected",
	"1 when the worker holds a PostgreSQL connection", NULL, METRIC_GAUGE };

struct ow_worker {
	const struct ow_config *cfg;
	struct consumer *consumer;
	struct ow_store *store;
	int pg_up;                  /* atomic */
	int64_t pg_used_us;         /* last time PostgreSQL answered */
	struct batch_buf rows;
	struct batch_buf one;
	struct offsets_pos *next;   /* the batch's next offsets */
	size_t nextcap;
};

static void ow_set_pg_up(struct ow_worker *w, bool up)
{
	__atomic_store_n(&w->pg_up, up ? 1 : 0, __ATOMIC_RELAXED);
	metric_set(&m_pg_up, up ? 1 : 0);
}

static void *ow_decode(void *app, const rd_kafka_message_t *m, char *why, size_t whylen)
{
	fs_ledger_event *ev;
	char err[256];

	(void)app;
	ev = ledger_decode(m->payload, m->len, err, sizeof(err));
	if (ev == NULL) {
		snprintf(why, whylen, "undecodable ledger event: %s", err);
		return NULL;
	}
	if (batch_event_check(ev, err, sizeof(err)) < 0) {
		snprintf(why, whylen, "invalid ledger event: %s", err);
		ledger_free(ev);
		return NULL;
	}
	return ev;
}

static void ow_release(void *app, void *value)
{
	(void)app;
	ledger_free(value);
}

/*
 * One transaction over rows and next (see ow_store_apply), connecting first
 * if needed. OW_STORE_DATA keeps the connection; OW_STORE_RETRY means the
 * consumer backs off and applies the batch again (it is idempotent).
 */
static enum ow_store_result ow_write(struct ow_worker *w, const struct batch_buf *rows,
				     const struct offsets_pos *next, size_t nnext, bool project,
				     char *err, size_t errlen)
{
	enum ow_store_result r;
	char q[1200];

	if (!ow_store_connected(w->store)) {
		if (ow_store_connect(w->store, false, err, errlen) < 0) {
			ow_set_pg_up(w, false);
			log_warn("pg_connect_failed", "msg=\"%s\"", log_quote(q, sizeof(q), err));
			return OW_STORE_RETRY;
		}
		ow_set_pg_up(w, true);
		log_info("pg_connected", "when=batch");
	}
	r = ow_store_apply(w->store, rows->data, rows->len, next, nnext, project, err, errlen);
	if (r == OW_STORE_OK)
		w->pg_used_us = mono_us();
	else if (r == OW_STORE_RETRY)
		log_warn("batch_retry", "msg=\"%s\"", log_quote(q, sizeof(q), err));
	ow_set_pg_up(w, ow_store_connected(w->store));
	return r;
}

/*
 * A data error (SQLSTATE class 22/23: say a reservation for a SKU with no
 * promotions row, or a value out of range) rolled back the whole batch.
 * Redoing it unchanged would fail forever and wedge the consumer, and every
 * other event of the batch is fine; so apply it one event per transaction.
 * An event PostgreSQL still refuses is kept in ledger_events if that alone
 * works (so `reconciler rebuild` still sees the stock it moved), and goes to
 * the dead-letter topic with PostgreSQL's message either way.
 */
static enum consumer_result ow_fallback(struct ow_worker *w, struct consumer_batch *b,
					size_t nnext, const char *first_err)
{
	char err[1024], err2[1024], why[2400], q[1024];
	enum ow_store_result r;

	metric_add(&m_fallback, 1);
	log_warn("batch_data_error", "events=%zu msg=\"%s\"", b->n,
		 log_quote(q, sizeof(q), first_err));
	for (size_t i = 0; i < b->n; i++) {
		const rd_kafka_message_t *m = b->items[i].msg;
		struct offsets_pos one = { m->partition, m->offset + 1 };

		if (b->items[i].value == NULL)
			continue;
		batch_buf_reset(&w->one);
		if (batch_row_append(&w->one, b->items[i].value, m->partition, m->offset, 0) < 0)
			return CONSUMER_FATAL;
		r = ow_write(w, &w->one, &one, 1, true, err, sizeof(err));
		if (r == OW_STORE_DATA)
			r = ow_write(w, &w->one, &one, 1, false, err2, sizeof(err2));
		else if (r == OW_STORE_OK)
			continue;
		if (r == OW_STORE_RETRY)
			return CONSUMER_RETRY;
		snprintf(why, sizeof(why), r == OW_STORE_OK ?
			 "postgres refused the event (kept in ledger_events only; orders/refusals "
			 "not updated): %s" : "postgres refused the event (not stored): %s; "
			 "ledger_events: %s", err, err2);
		consumer_reject(b, i, why);
	}
	/* The batch's offsets, so that dead letters at a partition's tail count as done. */
	batch_buf_reset(&w->one);
	r = ow_write(w, &w->one, w->next, nnext, false, err, sizeof(err));
	if (r == OW_STORE_DATA)
		log_error("offsets_refused", "msg=\"%s\"", log_quote(q, sizeof(q), err));
	return r == OW_STORE_RETRY ? CONSUMER_RETRY : CONSUMER_OK;
}

static enum consumer_result ow_apply(void *app, struct consumer_batch *b)
{
	struct ow_worker *w = app;
	char err[1024];
	size_t nnext;

	if (ARRAY_GROW(w->next, w->nextcap, b->pos.nparts) < 0)
		return CONSUMER_FATAL;
	nnext = offsets_store_positions(&b->pos, w->next, w->nextcap);
	batch_buf_reset(&w->rows);
	for (size_t i = 0; i < b->n; i++) {
		const rd_kafka_message_t *m = b->items[i].msg;

		if (b->items[i].value != NULL &&
		    batch_row_append(&w->rows, b->items[i].value, m->partition, m->offset,
				     (int64_t)i) < 0)
			return CONSUMER_FATAL;
	}
	switch (ow_write(w, &w->rows, w->next, nnext, true, err, sizeof(err))) {
	case OW_STORE_OK:
		return CONSUMER_OK;
	case OW_STORE_DATA:
		return ow_fallback(w, b, nnext, err);
	default:
		return CONSUMER_RETRY;
	}
}

static enum consumer_result ow_delivered(void *app, struct consumer_batch *b)
{
	(void)app;
	for (size_t i = 0; i < b->n; i++) {
		const fs_ledger_event *ev = b->items[i].value;

		if (ev != NULL && b->items[i].why[0] == '\0' && ev->kind >= 1 &&
		    (size_t)ev->kind <= sizeof(m_events) / sizeof(m_events[0]))
			metric_add(&m_events[ev->kind - 1], 1);
	}
	return CONSUMER_OK;
}

/*
 * Between batches: check the connection now and then (reconnecting if it is
 * gone) so /healthz tells the truth while no events arrive.
 */
static void ow_idle(void *app)
{
	struct ow_worker *w = app;
	char err[512], q[600];
	int64_t now = mono_us();

	if (now - w->pg_used_us < IDLE_PING_US)
		return;
	w->pg_used_us = now;
	if (ow_store_connected(w->store) && ow_store_ping(w->store, err, sizeof(err)) == 0)
		return;
	if (ow_store_connect(w->store, false, err, sizeof(err)) == 0) {
		ow_set_pg_up(w, true);
		log_info("pg_connected", "when=idle");
		return;
	}
	if (__atomic_load_n(&w->pg_up, __ATOMIC_RELAXED) != 0)
		log_warn("pg_connect_failed", "when=idle msg=\"%s\"", log_quote(q, sizeof(q), err));
	ow_set_pg_up(w, false);
}

/* Ledger events in, PostgreSQL rows out (and dead letters). */
static const struct consumer_ops ow_ops = {
	.name = "order-writer", .metric_prefix = "order_writer",
	.topic = FS_TOPIC_LEDGER, .produce_topic = FS_TOPIC_DEADLETTER,
	.decode = ow_decode, .release = ow_release, .apply = ow_apply, .delivered = ow_delivered,
	.idle = ow_idle,
};

struct ow_worker *ow_worker_new(const struct ow_config *cfg, struct ow_store *store,
				char *err, size_t errlen)
{
	struct ow_worker *w = calloc(1, sizeof(*w));

	if (w == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	w->cfg = cfg;
	for (size_t i = 0; i < sizeof(m_events) / sizeof(m_events[0]); i++)
		metrics_register(&m_events[i]);
	metrics_register(&m_fallback);
	metrics_register(&m_pg_up);
	w->consumer = consumer_new(&ow_ops, &cfg->base.kafka, &cfg->consumer, w, err, errlen);
	if (w->consumer == NULL) {
		free(w);
		return NULL;
	}
	w->store = store;
	ow_set_pg_up(w, ow_store_connected(store));
	w->pg_used_us = mono_us();
	return w;
}

struct consumer *ow_worker_consumer(struct ow_worker *w)
{
	return w->consumer;
}

enum daemon_health ow_worker_health(void *ow_worker, char *detail, size_t n)
{
	struct ow_worker *w = ow_worker;
	int64_t age_ms;
	bool alive = consumer_alive(w->consumer, HEARTBEAT_MAX_MS, &age_ms);
	bool pg = __atomic_load_n(&w->pg_up, __ATOMIC_RELAXED) != 0;

	snprintf(detail, n, "{\"worker_beat_age_ms\":%" PRId64 ",\"worker_alive\":%s,"
		 "\"postgres_connected\":%s,\"partitions\":%d}", age_ms, alive ? "true" : "false",
		 pg ? "true" : "false", consumer_assigned(w->consumer));
	return alive && pg ? HEALTH_OK : HEALTH_FAILED;
}

void ow_worker_free(struct ow_worker *w)
{
	if (w == NULL)
		return;
	consumer_free(w->consumer);
	ow_store_free(w->store);
	__atomic_store_n(&w->pg_up, 0, __ATOMIC_RELAXED);
	batch_buf_free(&w->rows);
	batch_buf_free(&w->one);
	free(w->next);
	free(w);
}
