/*
 * The at-least-once batch consumer (see consumer.h). Everything here runs on
 * the worker thread except consumer_alive/consumer_assigned, which read
 * atomics for /healthz.
 */
#include "consumer.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "array.h"
#include "log.h"

#define POLL_FIRST_MS 100
#define SEEK_TIMEOUT_MS 5000
/* While draining, a batch that keeps failing is given up after this many
 * attempts: its offsets were not stored, so its next owner reads it again. */
#define DRAIN_ATTEMPTS 3
#define DEADLETTER_TRIES 50

enum { M_BATCHES, M_DURATION, M_SIZE, M_MESSAGES, M_DEADLETTERS, M_REDO_APPLY,
       M_REDO_PRODUCE, M_REDO_DELIVERED, M_LAG, M_COUNT };

struct consumer {
	const struct consumer_ops *ops;
	const struct kafka_cfg *kafka;
	const struct consumer_settings *set;
	void *app;
	rd_kafka_t *rk;
	rd_kafka_t *producer;
	struct daemon_thread th;
	bool failed;             /* worker thread only */
	int assigned;            /* atomic */
	int64_t dr_failed;       /* atomic: deliveries that failed */
	char dr_error[256];      /* the last one (worker thread: reports are served there) */
	struct consumer_batch batch;
	size_t cap;
	struct offsets_pos *pos;
	size_t poscap;
	int64_t backoff_ms;
	char names[M_COUNT][64];
	struct metric m[M_COUNT];
};

bool consumer_stopping(const struct consumer *c)
{
	return daemon_thread_stopping(&c->th);
}

void consumer_sleep(struct consumer *c, int64_t ms)
{
	int64_t end = mono_us() + ms * 1000;

	while (!consumer_stopping(c)) {
		int64_t left = end - mono_us();
		struct timespec ts;

		daemon_thread_beat(&c->th);
		if (left <= 0)
			break;
		if (left > 100000)
			left = 100000;
		ts.tv_sec = 0;
		ts.tv_nsec = (long)left * 1000;
		nanosleep(&ts, NULL);
		/* Reports of dead letters sent before the wait. */
		rd_kafka_poll(c->producer, 0);
	}
}

void consumer_backoff(int64_t *ms, int64_t first)
{
	*ms = *ms <= 0 ? first : *ms * 2;
	if (*ms > CONSUMER_BACKOFF_MAX_MS)
		*ms = CONSUMER_BACKOFF_MAX_MS;
}

void consumer_fail(struct consumer *c)
{
	c->failed = true;
	daemon_thread_stop(&c->th);
}

rd_kafka_t *consumer_producer(struct consumer *c)
{
	return c->producer;
}

/* ---- the batch ---- */

static void consumer_item_clear(struct consumer *c, struct consumer_item *it)
{
	if (it->value != NULL)
		c->ops->release(c->app, it->value);
	it->value = NULL;
	if (it->msg != NULL)
		rd_kafka_message_destroy(it->msg);
	it->msg = NULL;
	it->why[0] = '\0';
}

static void consumer_batch_clear(struct consumer *c)
{
	for (size_t i = 0; i < c->batch.n; i++)
		consumer_item_clear(c, &c->batch.items[i]);
	c->batch.n = 0;
	offsets_reset(&c->batch.pos);
}

void consumer_reject(struct consumer_batch *b, size_t i, const char *why)
{
	snprintf(b->items[i].why, sizeof(b->items[i].why), "%s", why[0] ? why : "rejected");
}

void consumer_block(struct consumer_batch *b, size_t i)
{
	offsets_block(&b->pos, b->items[i].msg->partition, b->items[i].msg->offset);
}

bool consumer_blocked(const struct consumer_batch *b, size_t i)
{
	return offsets_is_blocked(&b->pos, b->items[i].msg->partition, b->items[i].msg->offset);
}

/* Take one polled message into the batch: note its position, decode it. */
static void consumer_take(void *arg, rd_kafka_message_t *m)
{
	struct consumer *c = arg;
	struct consumer_item *it = &c->batch.items[c->batch.n++];

	if (offsets_note(&c->batch.pos, m->partition, m->offset) < 0) {
		log_error("out_of_memory", "what=offsets");
		abort();
	}
	it->msg = m;
	it->why[0] = '\0';
	it->value = c->ops->decode(c->app, m, it->why, sizeof(it->why));
	if (it->value == NULL && it->why[0] == '\0')
		snprintf(it->why, sizeof(it->why), "undecodable message");
}

/*
 * A revoked partition is no longer ours: drop its messages from the batch
 * being collected. Nothing of it was stored, so its next owner reads it.
 */
static void consumer_drop(struct consumer *c, const rd_kafka_topic_partition_list_t *parts)
{
	struct consumer_batch *b = &c->batch;
	size_t k = 0;

	for (int j = 0; j < parts->cnt; j++)
		offsets_drop(&b->pos, parts->elems[j].partition);
	for (size_t i = 0; i < b->n; i++) {
		if (!offsets_has(&b->pos, b->items[i].msg->partition)) {
			consumer_item_clear(c, &b->items[i]);
			continue;
		}
		if (k != i) {
			b->items[k] = b->items[i];
			b->items[i].msg = NULL;
			b->items[i].value = NULL;
		}
		k++;
	}
	b->n = k;
}

/* Eager rebalance; called from rd_kafka_consumer_poll/close on the worker thread. */
static void consumer_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
				  rd_kafka_topic_partition_list_t *parts, void *opaque)
{
	struct consumer *c = opaque;
	rd_kafka_resp_err_t aerr;

	if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
		log_info("partitions_assigned", "count=%d", parts->cnt);
		if (c->ops->assigned != NULL)
			c->ops->assigned(c->app, parts);
		aerr = rd_kafka_assign(rk, parts);
		__atomic_store_n(&c->assigned, aerr == RD_KAFKA_RESP_ERR_NO_ERROR ? parts->cnt : 0,
				 __ATOMIC_RELAXED);
	} else {
		if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
			log_info("partitions_revoked", "count=%d", parts->cnt);
		else
			log_warn("rebalance_error", "err=%s", rd_kafka_err2name(err));
		consumer_drop(c, parts);
		if (c->ops->revoked != NULL)
			c->ops->revoked(c->app, parts);
		aerr = rd_kafka_assign(rk, NULL);
		__atomic_store_n(&c->assigned, 0, __ATOMIC_RELAXED);
	}
	if (aerr != RD_KAFKA_RESP_ERR_NO_ERROR)
		log_error("assign_failed", "err=%s", rd_kafka_err2name(aerr));
}

/* Delivery reports, served by rd_kafka_poll/flush on the worker thread. */
static void consumer_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	struct consumer *c = opaque;

	(void)rk;
	if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR)
		return;
	__atomic_add_fetch(&c->dr_failed, 1, __ATOMIC_RELAXED);
	snprintf(c->dr_error, sizeof(c->dr_error), "%s: %s", rd_kafka_topic_name(m->rkt),
		 rd_kafka_err2str(m->err));
}

/* ---- offsets ---- */

static size_t consumer_positions(struct consumer *c,
				 size_t (*fn)(const struct offsets *, struct offsets_pos *, size_t))
{
	if (ARRAY_GROW(c->pos, c->poscap, c->batch.pos.nparts) < 0) {
		log_error("out_of_memory", "what=positions");
		abort();
	}
	return fn(&c->batch.pos, c->pos, c->poscap);
}

static rd_kafka_topic_partition_list_t *consumer_list(struct consumer *c, size_t n)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)n);

	for (size_t i = 0; i < n; i++)
		rd_kafka_topic_partition_list_add(l, c->ops->topic, c->pos[i].partition)->offset =
			c->pos[i].offset;
	return l;
}

/*
 * Rewind partitions so that the next polls return these messages again.
 * -1 when any partition could not be rewound.
 */
static int consumer_seek(struct consumer *c, size_t n, const char *why)
{
	rd_kafka_topic_partition_list_t *l;
	rd_kafka_error_t *e;
	int rc = 0;

	if (n == 0)
		return 0;
	l = consumer_list(c, n);
	e = rd_kafka_seek_partitions(c->rk, l, SEEK_TIMEOUT_MS);
	if (e != NULL) {
		log_error("seek_failed", "why=%s err=%s", why, rd_kafka_error_string(e));
		rd_kafka_error_destroy(e);
		rc = -1;
	}
	for (int i = 0; i < l->cnt; i++) {
		if (l->elems[i].err == RD_KAFKA_RESP_ERR_NO_ERROR)
			continue;
		log_warn("seek_failed", "why=%s partition=%" PRId32 " offset=%" PRId64 " err=%s",
			 why, l->elems[i].partition, l->elems[i].offset,
			 rd_kafka_err2name(l->elems[i].err));
		rc = -1;
	}
	rd_kafka_topic_partition_list_destroy(l);
	return rc;
}

/* Hand the batch's next offsets to librdkafka (auto commit sends them). */
static void consumer_store(struct consumer *c)
{
	size_t n = consumer_positions(c, offsets_store_positions);
	rd_kafka_topic_partition_list_t *l;
	int64_t lag = 0;

	if (n == 0)
		return;
	for (size_t i = 0; i < n; i++) {
		int64_t lo, hi;

		if (rd_kafka_get_watermark_offsets(c->rk, c->ops->topic, c->pos[i].partition, &lo,
						   &hi) == RD_KAFKA_RESP_ERR_NO_ERROR &&
		    hi > c->pos[i].offset)
			lag += hi - c->pos[i].offset;
	}
	metric_set(&c->m[M_LAG], lag);
	l = consumer_list(c, n);
	/* A partition revoked meanwhile cannot be stored; its next owner redoes it. */
	if (rd_kafka_offsets_store(c->rk, l) != RD_KAFKA_RESP_ERR_NO_ERROR)
		for (int i = 0; i < l->cnt; i++)
			if (l->elems[i].err != RD_KAFKA_RESP_ERR_NO_ERROR)
				log_warn("offset_store_failed", "partition=%" PRId32 " offset=%" PRId64
					 " err=%s", l->elems[i].partition, l->elems[i].offset,
					 rd_kafka_err2name(l->elems[i].err));
	rd_kafka_topic_partition_list_destroy(l);
}

/* ---- one batch ---- */

/*
 * Dead-letter the rejected items (blocked ones are not acted on), then wait
 * for every delivery of the batch, the daemon's own messages included. -1
 * with err when anything was not delivered.
 */
static int consumer_emit(struct consumer *c, char *err, size_t errlen)
{
	struct consumer_batch *b = &c->batch;
	int64_t failed = __atomic_load_n(&c->dr_failed, __ATOMIC_RELAXED);
	int tries;

	for (size_t i = 0; i < b->n; i++) {
		const struct consumer_item *it = &b->items[i];
		char q[512];

		if (it->why[0] == '\0' || consumer_blocked(b, i))
			continue;
		log_warn("deadletter", "partition=%" PRId32 " offset=%" PRId64 " reason=\"%s\"",
			 it->msg->partition, it->msg->offset, log_quote(q, sizeof(q), it->why));
		for (tries = 0; kafka_deadletter(c->producer, it->msg, c->ops->name, it->why, err,
						 errlen) < 0; tries++) {
			if (tries >= DEADLETTER_TRIES)
				return -1;
			rd_kafka_poll(c->producer, 100);
		}
		metric_add(&c->m[M_DEADLETTERS], 1);
	}
	if (kafka_flush(c->producer, (int)c->kafka->produce_timeout_ms + 1000) < 0) {
		snprintf(err, errlen, "flush: %d messages not delivered in time",
			 rd_kafka_outq_len(c->producer));
		return -1;
	}
	if (__atomic_load_n(&c->dr_failed, __ATOMIC_RELAXED) != failed) {
		snprintf(err, errlen, "deliveries failed, last: %s", c->dr_error);
		return -1;
	}
	return 0;
}

/*
 * Apply, emit and confirm the collected batch until it is done, then store
 * its offsets and rewind its blocked partitions. Whatever fails leaves the
 * offsets unstored and the batch is applied again from memory after a
 * backoff (the daemon's work is idempotent).
 */
static enum consumer_result consumer_process(struct consumer *c)
{
	struct consumer_batch *b = &c->batch;
	enum consumer_result r;
	char err[512], q[600], ferr[256];
	int attempt = 0;

again:
	/* Each attempt starts afresh: only what decode rejected stays rejected. */
	offsets_unblock(&b->pos);
	for (size_t i = 0; i < b->n; i++)
		if (b->items[i].value != NULL)
			b->items[i].why[0] = '\0';
	r = c->ops->apply(c->app, b);
	if (r == CONSUMER_OK) {
		err[0] = '\0';
		if (consumer_emit(c, err, sizeof(err)) < 0) {
			log_warn("batch_redo", "why=produce items=%zu msg=\"%s\"", b->n,
				 log_quote(q, sizeof(q), err));
			metric_add(&c->m[M_REDO_PRODUCE], 1);
			if (rd_kafka_fatal_error(c->producer, ferr, sizeof(ferr)) !=
			    RD_KAFKA_RESP_ERR_NO_ERROR) {
				/* An idempotent producer that hit a fatal error never recovers. */
				log_error("producer_fatal", "msg=\"%s\"", log_quote(q, sizeof(q), ferr));
				return CONSUMER_FATAL;
			}
			r = CONSUMER_RETRY;
		} else if (c->ops->delivered != NULL) {
			r = c->ops->delivered(c->app, b);
			if (r == CONSUMER_RETRY)
				metric_add(&c->m[M_REDO_DELIVERED], 1);
		}
	} else if (r == CONSUMER_RETRY) {
		metric_add(&c->m[M_REDO_APPLY], 1);
	}
	if (r == CONSUMER_RETRY) {
		if (consumer_stopping(c) && ++attempt >= DRAIN_ATTEMPTS)
			r = CONSUMER_ABANDON;
		else {
			consumer_backoff(&c->backoff_ms, c->set->retry_backoff_ms);
			consumer_sleep(c, c->backoff_ms);
			goto again;
		}
	}
	if (r == CONSUMER_ABANDON)
		log_warn("batch_abandoned", "items=%zu msg=\"draining; its offsets are not stored\"",
			 b->n);
	if (r != CONSUMER_OK)
		return r;

	c->backoff_ms = 0;
	consumer_store(c);
	metric_add(&c->m[M_BATCHES], 1);
	metric_add(&c->m[M_MESSAGES], (int64_t)b->n);
	metric_set(&c->m[M_SIZE], (int64_t)b->n);
	metric_observe_us(&c->m[M_DURATION], (uint64_t)(mono_us() - b->t0_us));
	log_debug("batch_done", "items=%zu partitions=%zu blocked=%s", b->n, b->pos.nparts,
		  offsets_any_blocked(&b->pos) ? "true" : "false");
	if (!offsets_any_blocked(&b->pos))
		return CONSUMER_OK;
	/* Blocked partitions resume at their block; meanwhile, let the cause pass. */
	if (consumer_seek(c, consumer_positions(c, offsets_blocked_positions), "blocked") < 0) {
		/* The unblocked part is stored: applying it again is a replay. */
		log_warn("batch_redo_in_place", "why=blocked items=%zu", b->n);
		consumer_sleep(c, c->set->retry_backoff_ms);
		if (!consumer_stopping(c))
			goto again;
	}
	consumer_sleep(c, c->set->retry_backoff_ms);
	return CONSUMER_OK;
}

static void *consumer_main(void *arg)
{
	struct consumer *c = arg;
	const struct consumer_settings *set = c->set;
	rd_kafka_resp_err_t kerr;
	char fatal[256];

	log_info("worker_started", "group=%s topic=%s batch_size=%lld batch_wait_ms=%lld",
		 set->group, c->ops->topic, set->batch_size, set->batch_wait_ms);
	while (!consumer_stopping(c)) {
		enum consumer_result r;

		daemon_thread_beat(&c->th);
		rd_kafka_poll(c->producer, 0);
		if (c->ops->idle != NULL)
			c->ops->idle(c->app);
		consumer_batch_clear(c);
		(void)kafka_poll_batch(c->rk, (size_t)set->batch_size, POLL_FIRST_MS,
				       (int)set->batch_wait_ms, consumer_take, c, &c->batch.t0_us);
		if (c->batch.n == 0) {
			if (rd_kafka_fatal_error(c->rk, fatal, sizeof(fatal)) !=
			    RD_KAFKA_RESP_ERR_NO_ERROR) {
				log_error("consumer_fatal", "msg=\"%s\"", fatal);
				consumer_fail(c);
			}
			continue;
		}
		/* A drain lets this batch finish: it is applied, emitted, stored. */
		r = consumer_process(c);
		if (r == CONSUMER_FATAL)
			consumer_fail(c);
		else if (r == CONSUMER_ABANDON)
			break;
	}
	consumer_batch_clear(c);

	log_info("worker_draining", "msg=\"closing consumer\"");
	/* Commits the stored offsets and leaves the group. */
	kerr = rd_kafka_consumer_close(c->rk);
	if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR)
		log_warn("consumer_close", "err=%s", rd_kafka_err2name(kerr));
	if (kafka_flush(c->producer, (int)c->kafka->produce_timeout_ms + 1000) < 0)
		log_warn("producer_flush", "msg=\"undelivered messages at exit\" outq=%d",
			 rd_kafka_outq_len(c->producer));
	log_info("worker_stopped", "failed=%s", c->failed ? "true" : "false");
	daemon_thread_exit(&c->th, c->failed);
	return NULL;
}

/* ---- lifecycle ---- */

static void consumer_metrics_register(struct consumer *c)
{
	static const struct { const char *suffix, *help, *labels; enum metric_type type; } def[] = {
		[M_BATCHES] = { "batches_total", "Batches applied and committed", NULL,
				METRIC_COUNTER },
		[M_DURATION] = { "batch_duration_seconds",
				 "Time from a batch's first message to its stored offsets", NULL,
				 METRIC_HISTOGRAM },
		[M_SIZE] = { "batch_size", "Messages in the last batch", NULL, METRIC_GAUGE },
		[M_MESSAGES] = { "messages_total", "Messages in committed batches", NULL,
				 METRIC_COUNTER },
		[M_DEADLETTERS] = { "deadletters_total", "Messages sent to the dead-letter topic",
				    NULL, METRIC_COUNTER },
		[M_REDO_APPLY] = { "redo_total", "Batch attempts redone, by what failed",
				   "reason=\"apply\"", METRIC_COUNTER },
		[M_REDO_PRODUCE] = { "redo_total", NULL, "reason=\"produce\"", METRIC_COUNTER },
		[M_REDO_DELIVERED] = { "redo_total", NULL, "reason=\"delivered\"",
				       METRIC_COUNTER },
		[M_LAG] = { "lag_messages",
			    "Messages behind the high watermark on the last batch's partitions",
			    NULL, METRIC_GAUGE },
	};

	for (int i = 0; i < M_COUNT; i++) {
		snprintf(c->names[i], sizeof(c->names[i]), "%s_%s", c->ops->metric_prefix,
			 def[i].suffix);
		c->m[i].name = c->names[i];
		c->m[i].help = def[i].help;
		c->m[i].labels = def[i].labels;
		c->m[i].type = def[i].type;
		metrics_register(&c->m[i]);
	}
}

struct consumer *consumer_new(const struct consumer_ops *ops, const struct kafka_cfg *kafka,
			      const struct consumer_settings *settings, void *app,
			      char *err, size_t errlen)
{
	struct consumer *c = calloc(1, sizeof(*c));
	rd_kafka_topic_partition_list_t *topics;
	rd_kafka_conf_t *conf;
	rd_kafka_resp_err_t kerr;
	char client[96], why[512];

	if (c == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	c->ops = ops;
	c->kafka = kafka;
	c->set = settings;
	c->app = app;
	offsets_init(&c->batch.pos);
	c->batch.items = calloc((size_t)settings->batch_size, sizeof(*c->batch.items));
	if (c->batch.items == NULL) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	snprintf(client, sizeof(client), "flashsale-%s", ops->name);
	c->producer = kafka_producer_new(kafka, client, ops->produce_topic, consumer_dr_cb, NULL,
					 c, err, errlen);
	if (c->producer == NULL)
		goto fail;
	conf = kafka_conf_new(kafka, KAFKA_CONSUMER, client, settings->group, err, errlen);
	if (conf == NULL)
		goto fail;
	rd_kafka_conf_set_opaque(conf, c);
	rd_kafka_conf_set_rebalance_cb(conf, consumer_rebalance_cb);
	c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof(why));
	if (c->rk == NULL) {
		rd_kafka_conf_destroy(conf);
		snprintf(err, errlen, "kafka consumer: %s", why);
		goto fail;
	}
	rd_kafka_poll_set_consumer(c->rk);
	topics = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(topics, ops->topic, RD_KAFKA_PARTITION_UA);
	kerr = rd_kafka_subscribe(c->rk, topics);
	rd_kafka_topic_partition_list_destroy(topics);
	if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
		snprintf(err, errlen, "subscribe %s: %s", ops->topic, rd_kafka_err2str(kerr));
		goto fail;
	}
	consumer_metrics_register(c);
	daemon_thread_beat(&c->th);
	return c;
fail:
	consumer_free(c);
	return NULL;
}

int consumer_run(struct consumer *c, const struct daemon_cfg *base, struct cf_table *table,
		 daemon_health_fn health, void *arg)
{
	char err[256];
	bool drained;
	int rc;

	if (daemon_thread_start(&c->th, consumer_main, c, err, sizeof(err)) < 0)
		die("startup_failed", "what=thread msg=\"%s\"", err);
	drained = daemon_run_worker(&c->th, health, arg, base->http_host, (int)base->http_port,
				    table);
	rc = daemon_thread_join(&c->th);
	log_info("stopped", "clean=%s", rc == 0 && drained ? "true" : "false");
	return rc == 0 && drained ? 0 : 1;
}

void consumer_free(struct consumer *c)
{
	if (c == NULL)
		return;
	if (c->batch.items != NULL)
		consumer_batch_clear(c);
	if (c->rk != NULL)
		rd_kafka_destroy(c->rk);
	if (c->producer != NULL)
		rd_kafka_destroy(c->producer);
	offsets_free(&c->batch.pos);
	free(c->batch.items);
	free(c->pos);
	free(c);
}

bool consumer_alive(struct consumer *c, int64_t max_age_ms, int64_t *age_ms)
{
	*age_ms = daemon_thread_beat_age_ms(&c->th);
	return !daemon_thread_finished(&c->th) && *age_ms <= max_age_ms;
}

int consumer_assigned(const struct consumer *c)
{
	return __atomic_load_n(&c->assigned, __ATOMIC_RELAXED);
}
