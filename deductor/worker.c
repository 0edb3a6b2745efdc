#include "worker.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>
#include <librdkafka/rdkafka.h>

#include "batch.h"
#include "flashsale.pb-c.h"
#include "guard.h"
#include "intent.h"
#include "ledger.h"
#include "log.h"
#include "metrics.h"
#include "redisx.h"
#include "step.h"
#include "util.h"

#define REDIS_TIMEOUT_MS 5000
#define BACKOFF_MAX_MS 5000
#define POLL_FIRST_MS 100
#define SEEK_TIMEOUT_MS 5000
#define HEARTBEAT_MAX_US (5 * 1000000LL)
#define GUARD_SKUS_MAX 100000
#define NOT_READY_MAX_US (30 * 1000000LL)

/* ---- metrics ---- */

#define N_INTENT_KINDS 4   /* purchase pay cancel release */
#define N_EVENT_KINDS 6    /* reserved .. transition_refused */

static struct metric m_intents[N_INTENT_KINDS][N_EVENT_KINDS];
static char m_intents_labels[N_INTENT_KINDS][N_EVENT_KINDS][64];
static struct metric m_batches = {
	.name = "deductor_batches_total",
	.help = "Batches of intents applied and committed",
	.type = METRIC_COUNTER,
};
static struct metric m_batch_seconds = {
	.name = "deductor_batch_duration_seconds",
	.help = "Time from a batch's poll to its stored offsets",
	.type = METRIC_HISTOGRAM,
};
static struct metric m_batch_size = {
	.name = "deductor_batch_size",
	.help = "Messages in the last batch",
	.type = METRIC_GAUGE,
};
static struct metric m_batch_messages = {
	.name = "deductor_batch_messages_total",
	.help = "Messages taken into batches (with redone ones)",
	.type = METRIC_COUNTER,
};
static struct metric m_deadletters = {
	.name = "deductor_deadletters_total",
	.help = "Intents sent to the dead-letter topic",
	.type = METRIC_COUNTER,
};
static struct metric m_not_ready = {
	.name = "deductor_not_ready_waits_total",
	.help = "Batches that met a lost Redis state (fs:ready absent) and waited",
	.type = METRIC_COUNTER,
};
static struct metric m_redo_epoch = {
	.name = "deductor_redo_total",
	.help = "Batches redone: Redis epoch changed, produce failed, Redis I/O error",
	.labels = "reason=\"epoch\"",
	.type = METRIC_COUNTER,
};
static struct metric m_redo_produce = {
	.name = "deductor_redo_total",
	.labels = "reason=\"produce\"",
	.type = METRIC_COUNTER,
};
static struct metric m_redo_redis = {
	.name = "deductor_redo_total",
	.labels = "reason=\"redis\"",
	.type = METRIC_COUNTER,
};
static struct metric m_redis_up = {
	.name = "deductor_redis_connected",
	.help = "1 while the worker holds a Redis connection",
	.type = METRIC_GAUGE,
};
static struct metric m_fenced = {
	.name = "deductor_fenced_partitions",
	.help = "Partitions fenced because Redis is older than the ledger (nothing applied)",
	.type = METRIC_GAUGE,
};
static struct metric m_fenced_steps = {
	.name = "deductor_fenced_steps_total",
	.help = "Intents not applied because their partition is fenced (applied after repair)",
	.type = METRIC_COUNTER,
};
static struct metric m_probes = {
	.name = "deductor_ledger_probes_total",
	.help = "Ledger tails read back after a partition assignment",
	.type = METRIC_COUNTER,
};

void worker_metrics_register(void)
{
	static const char *const kinds[N_INTENT_KINDS] = {
		"purchase", "pay", "cancel", "release",
	};
	int k, e;

	for (k = 0; k < N_INTENT_KINDS; k++) {
		for (e = 0; e < N_EVENT_KINDS; e++) {
			struct metric *m = &m_intents[k][e];

			snprintf(m_intents_labels[k][e], sizeof(m_intents_labels[k][e]),
				 "kind=\"%s\",outcome=\"%s\"", kinds[k], step_event_name(e + 1));
			m->name = "deductor_intents_total";
			m->help = "Intents applied, by intent kind and ledger event";
			m->labels = m_intents_labels[k][e];
			m->type = METRIC_COUNTER;
			metrics_register(m);
		}
	}
	metrics_register(&m_batches);
	metrics_register(&m_batch_seconds);
	metrics_register(&m_batch_size);
	metrics_register(&m_batch_messages);
	metrics_register(&m_deadletters);
	metrics_register(&m_not_ready);
	metrics_register(&m_redo_epoch);
	metrics_register(&m_redo_produce);
	metrics_register(&m_redo_redis);
	metrics_register(&m_redis_up);
	metrics_register(&m_fenced);
	metrics_register(&m_fenced_steps);
	metrics_register(&m_probes);
}

/* ---- the worker ---- */

struct item {
	rd_kafka_message_t *msg;
	char invalid[256];   /* why the message was rejected; empty when valid */
};

struct worker {
	const struct deductor_cfg *cfg;
	rd_kafka_t *consumer;
	rd_kafka_t *producer;
	rd_kafka_t *reader;    /* reads the ledger's tail back (guard_probe) */
	redisContext *redis;
	char sha[41];
	struct step_params params;
	struct dd_guard guard;
	bool verify_redis;     /* compare fs:wm with the guard at the next idle turn */
	int64_t next_probe_us; /* after a failed probe: not before this */

	struct daemon_thread th;
	bool fatal;            /* worker thread only: stopping on a failure */
	int redis_up;          /* atomic */
	int assigned;          /* atomic: partitions this member owns (health) */
	int64_t not_ready_since_us; /* atomic: start of the current outage, 0 if none */

	/* The batch: items[i] decoded into intents[i] (NULL when invalid). */
	struct item *items;
	fs_intent **intents;
	struct step_args *args;
	struct step_result *results;
	size_t nitems, cap;
	struct batch batch;
	struct batch_pos *pos;
	size_t poscap;

	/* Delivery of the current batch: reports are served on this thread. */
	uintptr_t gen;
	int64_t dr_failed;
	char dr_error[256];

	int64_t sleep_ms;      /* wait before the next poll (not_ready) */
	int64_t batch_t0_us;   /* when the batch's first message arrived */
	int64_t next_connect_us; /* idle reconnect: not before this */
	int64_t connect_backoff_ms;
	uint8_t *pack;
	size_t packcap;
};

static bool worker_stopping(const struct worker *w)
{
	return daemon_thread_stopping(&w->th);
}

static void worker_beat(struct worker *w)
{
	daemon_thread_beat(&w->th);
}

static void worker_set_redis_up(struct worker *w, bool up)
{
	__atomic_store_n(&w->redis_up, up ? 1 : 0, __ATOMIC_RELAXED);
	metric_set(&m_redis_up, up ? 1 : 0);
}

/* Sleep ms in short slices, staying alive for /healthz; returns early on drain. */
static void worker_sleep(struct worker *w, int64_t ms)
{
	int64_t end = mono_us() + ms * 1000;

	while (!worker_stopping(w)) {
		int64_t left = end - mono_us();
		struct timespec ts;

		worker_beat(w);
		if (left <= 0)
			break;
		if (left > 100000)
			left = 100000;
		ts.tv_sec = 0;
		ts.tv_nsec = (long)left * 1000;
		nanosleep(&ts, NULL);
	}
}

static void item_clear(struct worker *w, size_t i)
{
	if (w->intents[i] != NULL)
		intent_free(w->intents[i]);
	w->intents[i] = NULL;
	if (w->items[i].msg != NULL)
		rd_kafka_message_destroy(w->items[i].msg);
	w->items[i].msg = NULL;
	w->items[i].invalid[0] = '\0';
}

static void batch_clear(struct worker *w)
{
	size_t i;

	for (i = 0; i < w->nitems; i++)
		item_clear(w, i);
	w->nitems = 0;
	batch_reset(&w->batch);
}

/*
 * A revoked partition is no longer ours: drop its messages from the batch
 * being collected. Nothing of it was stored, so its next owner redoes it.
 */
static void worker_drop_partitions(struct worker *w,
				   const rd_kafka_topic_partition_list_t *parts)
{
	size_t i, k = 0;
	int j;

	for (j = 0; j < parts->cnt; j++)
		batch_drop(&w->batch, parts->elems[j].partition);
	for (i = 0; i < w->nitems; i++) {
		if (batch_has(&w->batch, w->items[i].msg->partition)) {
			if (k != i) {
				w->items[k] = w->items[i];
				w->intents[k] = w->intents[i];
				w->items[i].msg = NULL;
				w->intents[i] = NULL;
			}
			k++;
		} else {
			item_clear(w, i);
		}
	}
	w->nitems = k;
}

/* Eager rebalance; called from rd_kafka_consumer_poll/close on the worker thread. */
static void worker_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
				rd_kafka_topic_partition_list_t *parts, void *opaque)
{
	struct worker *w = opaque;
	rd_kafka_resp_err_t aerr;

	switch (err) {
	case RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS:
		log_info("partitions_assigned", "count=%d", parts->cnt);
		guard_assigned(&w->guard, parts);
		aerr = rd_kafka_assign(rk, parts);
		__atomic_store_n(&w->assigned, aerr == RD_KAFKA_RESP_ERR_NO_ERROR ? parts->cnt : 0,
				 __ATOMIC_RELAXED);
		break;
	case RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS:
		log_info("partitions_revoked", "count=%d", parts->cnt);
		worker_drop_partitions(w, parts);
		guard_revoked(&w->guard, parts);
		metric_set(&m_fenced, guard_fenced_count(&w->guard));
		aerr = rd_kafka_assign(rk, NULL);
		__atomic_store_n(&w->assigned, 0, __ATOMIC_RELAXED);
		break;
	default:
		log_warn("rebalance_error", "err=%s", rd_kafka_err2name(err));
		worker_drop_partitions(w, parts);
		guard_revoked(&w->guard, parts);
		aerr = rd_kafka_assign(rk, NULL);
		__atomic_store_n(&w->assigned, 0, __ATOMIC_RELAXED);
		break;
	}
	if (aerr != RD_KAFKA_RESP_ERR_NO_ERROR)
		log_error("assign_failed", "err=%s", rd_kafka_err2name(aerr));
}

/*
 * Delivery reports of the producer (served by rd_kafka_flush on this thread).
 * Ledger events carry the batch generation as opaque; dead letters carry
 * none and belong to the current batch too, since every batch is flushed
 * before the next one starts.
 */
static void worker_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	struct worker *w = opaque;

	if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR)
		return;
	if (m->_private != NULL && (uintptr_t)m->_private != w->gen)
		return;
	w->dr_failed++;
	snprintf(w->dr_error, sizeof(w->dr_error), "%s: %s",
		 rd_kafka_topic_name(m->rkt), rd_kafka_err2str(m->err));
}

static int worker_reserve(struct worker *w, size_t n)
{
	if (n <= w->cap)
		return 0;
	w->items = calloc(n, sizeof(*w->items));
	w->intents = calloc(n, sizeof(*w->intents));
	w->args = calloc(n, sizeof(*w->args));
	w->results = calloc(n, sizeof(*w->results));
	if (w->items == NULL || w->intents == NULL || w->args == NULL || w->results == NULL)
		return -1;
	w->cap = n;
	return 0;
}

struct worker *worker_new(const struct deductor_cfg *cfg, char *err, size_t errlen)
{
	struct worker *w = calloc(1, sizeof(*w));
	rd_kafka_topic_partition_list_t *topics;
	rd_kafka_conf_t *conf;
	rd_kafka_resp_err_t kerr;
	char kmsg[512];

	if (w == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	w->cfg = cfg;
	batch_init(&w->batch);
	if (guard_init(&w->guard, GUARD_SKUS_MAX) < 0) {
		snprintf(err, errlen, "guard: cannot create its lock");
		free(w);
		return NULL;
	}
	if (worker_reserve(w, (size_t)cfg->batch_size) < 0) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	w->params.record_ttl_s = cfg->record_ttl_s;
	w->params.pay_max_lag_ms = cfg->pay_max_lag_ms;
	w->reader = kafka_reader_new(&cfg->kafka, "flashsale-deductor-probe", err, errlen);
	if (w->reader == NULL)
		goto fail;

	w->producer = kafka_producer_new(&cfg->kafka, "flashsale-deductor", FS_TOPIC_LEDGER,
					 worker_dr_cb, NULL,
					 w, err, errlen);
	if (w->producer == NULL)
		goto fail;

	conf = kafka_conf_new(&cfg->kafka, KAFKA_CONSUMER, "flashsale-deductor", cfg->group,
			      err, errlen);
	if (conf == NULL)
		goto fail;
	rd_kafka_conf_set_opaque(conf, w);
	rd_kafka_conf_set_rebalance_cb(conf, worker_rebalance_cb);
	w->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, conf, kmsg, sizeof(kmsg));
	if (w->consumer == NULL) {
		rd_kafka_conf_destroy(conf);
		snprintf(err, errlen, "kafka consumer: %s", kmsg);
		goto fail;
	}
	rd_kafka_poll_set_consumer(w->consumer);
	topics = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(topics, FS_TOPIC_INTENTS, RD_KAFKA_PARTITION_UA);
	kerr = rd_kafka_subscribe(w->consumer, topics);
	rd_kafka_topic_partition_list_destroy(topics);
	if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
		snprintf(err, errlen, "subscribe %s: %s", FS_TOPIC_INTENTS, rd_kafka_err2str(kerr));
		goto fail;
	}
	worker_beat(w);
	return w;
fail:
	worker_free(w);
	return NULL;
}

/* ---- Redis ---- */

static void worker_redis_drop(struct worker *w)
{
	if (w->redis != NULL)
		redisFree(w->redis);
	w->redis = NULL;
	worker_set_redis_up(w, false);
}

static int worker_redis_connect(struct worker *w, char *err, size_t errlen)
{
	w->redis = redisx_connect(w->cfg->redis_address, REDIS_TIMEOUT_MS, err, errlen);
	if (w->redis == NULL)
		return -1;
	if (redisx_script_load(w->redis, fs_deduct_lua, w->sha, err, errlen) < 0) {
		worker_redis_drop(w);
		return -1;
	}
	worker_set_redis_up(w, true);
	/* It may be another Redis than the last one, or an older copy of it. */
	w->verify_redis = true;
	log_info("redis_connected", "address=%s sha=%s", w->cfg->redis_address, w->sha);
	return 0;
}

/*
 * Between batches, keep a connection open so that /healthz tells the truth
 * and the first batch after an outage does not pay for the connect; one
 * attempt per backoff period, never blocking the poll loop for long.
 */
static void worker_idle_connect(struct worker *w)
{
	char err[512], q[512];
	int64_t now;

	if (w->redis != NULL)
		return;
	now = mono_us();
	if (now < w->next_connect_us)
		return;
	if (worker_redis_connect(w, err, sizeof(err)) == 0) {
		w->connect_backoff_ms = 0;
		return;
	}
	w->connect_backoff_ms = w->connect_backoff_ms == 0 ? w->cfg->retry_backoff_ms :
				w->connect_backoff_ms * 2;
	if (w->connect_backoff_ms > BACKOFF_MAX_MS)
		w->connect_backoff_ms = BACKOFF_MAX_MS;
	w->next_connect_us = now + w->connect_backoff_ms * 1000;
	log_warn("redis_connect_failed", "backoff_ms=%" PRId64 " msg=\"%s\"",
		 w->connect_backoff_ms, log_quote(q, sizeof(q), err));
}

/*
 * Make sure there is a connection, retrying with a doubling backoff. -1 only
 * when a drain was requested while Redis stays unreachable.
 */
static int worker_redis_ensure(struct worker *w, int64_t *backoff)
{
	char err[512], q[512];

	while (w->redis == NULL) {
		if (worker_redis_connect(w, err, sizeof(err)) == 0)
			return 0;
		log_warn("redis_connect_failed", "backoff_ms=%" PRId64 " msg=\"%s\"", *backoff,
			 log_quote(q, sizeof(q), err));
		if (worker_stopping(w))
			return -1;
		worker_sleep(w, *backoff);
		*backoff = *backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : *backoff * 2;
	}
	return 0;
}

/*
 * Apply every valid intent of the batch: one pipeline, redone whole after
 * NOSCRIPT or a lost connection (each step is idempotent per request id, so
 * running an intent twice returns its first outcome). -1 when abandoned
 * because of a drain during a Redis outage.
 */
static int worker_redis_step(struct worker *w)
{
	int64_t backoff = w->cfg->retry_backoff_ms;
	char err[512], q[512];
	int rc;

	for (;;) {
		if (worker_redis_ensure(w, &backoff) < 0)
			return -1;
		rc = step_run(w->redis, w->sha, &w->params, w->intents, w->args, w->results,
			      w->nitems, err, sizeof(err));
		if (rc == STEP_RUN_OK)
			return 0;
		if (rc == STEP_RUN_NOSCRIPT) {
			/* Redis restarted or SCRIPT FLUSH: load it and redo. */
			log_info("redis_noscript", "msg=\"reloading deduct.lua\"");
			if (redisx_script_load(w->redis, fs_deduct_lua, w->sha, err,
					       sizeof(err)) == 0)
				continue;
		}
		log_warn("redis_error", "items=%zu msg=\"%s\"", w->nitems,
			 log_quote(q, sizeof(q), err));
		metric_add(&m_redo_redis, 1);
		/* A refusal (OOM, READONLY...) comes over a healthy connection. */
		if (rc != STEP_RUN_BUSY)
			worker_redis_drop(w);
		if (worker_stopping(w))
			return -1;
		worker_sleep(w, backoff);
		backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
	}
}

/*
 * The current epoch: GET fs:ready. *present false when the key is absent.
 * -1 when abandoned (drain during an outage).
 */
static int worker_epoch(struct worker *w, bool *present, int64_t *epoch)
{
	int64_t backoff = w->cfg->retry_backoff_ms;
	char q[512];

	for (;;) {
		redisReply *r;

		if (worker_redis_ensure(w, &backoff) < 0)
			return -1;
		r = redisCommand(w->redis, "GET fs:ready");
		if (r != NULL && (r->type == REDIS_REPLY_NIL || r->type == REDIS_REPLY_STRING)) {
			*present = r->type == REDIS_REPLY_STRING;
			*epoch = *present ? strtoll(r->str, NULL, 10) : 0;
			freeReplyObject(r);
			return 0;
		}
		log_warn("redis_error", "cmd=GET msg=\"%s\"",
			 log_quote(q, sizeof(q), r != NULL && r->type == REDIS_REPLY_ERROR ? r->str :
				   w->redis->errstr));
		if (r != NULL)
			freeReplyObject(r);
		worker_redis_drop(w);
		if (worker_stopping(w))
			return -1;
		worker_sleep(w, backoff);
		backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
	}
}

/* ---- Kafka positions ---- */

static size_t worker_positions(struct worker *w,
			       size_t (*fn)(const struct batch *, struct batch_pos *, size_t))
{
	if (w->poscap < w->batch.nparts) {
		struct batch_pos *p = realloc(w->pos, w->batch.nparts * sizeof(*p));

		if (p == NULL) {
			log_error("out_of_memory", "what=positions");
			abort();
		}
		w->pos = p;
		w->poscap = w->batch.nparts;
	}
	return fn(&w->batch, w->pos, w->poscap);
}

static rd_kafka_topic_partition_list_t *worker_list(struct worker *w, size_t n)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)n);
	size_t i;

	for (i = 0; i < n; i++)
		rd_kafka_topic_partition_list_add(l, FS_TOPIC_INTENTS,
						  w->pos[i].partition)->offset = w->pos[i].offset;
	return l;
}

/*
 * Rewind partitions so that the next polls return these messages again.
 * -1 when any partition could not be rewound: the caller must then redo the
 * batch from memory, or later batches would store offsets past it.
 */
static int worker_seek(struct worker *w, size_t n, const char *why)
{
	rd_kafka_topic_partition_list_t *l;
	rd_kafka_error_t *e;
	int i, rc = 0;

	if (n == 0)
		return 0;
	l = worker_list(w, n);
	e = rd_kafka_seek_partitions(w->consumer, l, SEEK_TIMEOUT_MS);
	if (e != NULL) {
		log_error("seek_failed", "why=%s err=%s", why, rd_kafka_error_string(e));
		rd_kafka_error_destroy(e);
		rc = -1;
	}
	for (i = 0; i < l->cnt; i++) {
		if (l->elems[i].err != RD_KAFKA_RESP_ERR_NO_ERROR) {
			log_warn("seek_failed", "why=%s partition=%" PRId32 " offset=%" PRId64
				 " err=%s", why, l->elems[i].partition, l->elems[i].offset,
				 rd_kafka_err2name(l->elems[i].err));
			rc = -1;
		} else {
			log_debug("seek", "why=%s partition=%" PRId32 " offset=%" PRId64, why,
				  l->elems[i].partition, l->elems[i].offset);
		}
	}
	rd_kafka_topic_partition_list_destroy(l);
	return rc;
}

static int worker_seek_first(struct worker *w, const char *why)
{
	return worker_seek(w, worker_positions(w, batch_first_positions), why);
}

static void worker_store(struct worker *w)
{
	size_t n = worker_positions(w, batch_store_positions);
	rd_kafka_topic_partition_list_t *l;
	rd_kafka_resp_err_t err;
	int i;

	if (n == 0)
		return;
	l = worker_list(w, n);
	err = rd_kafka_offsets_store(w->consumer, l);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		/* A partition revoked meanwhile cannot be stored; its next owner redoes it. */
		for (i = 0; i < l->cnt; i++)
			if (l->elems[i].err != RD_KAFKA_RESP_ERR_NO_ERROR)
				log_warn("offset_store_failed", "partition=%" PRId32 " offset=%"
					 PRId64 " err=%s", l->elems[i].partition,
					 l->elems[i].offset, rd_kafka_err2name(l->elems[i].err));
	}
	rd_kafka_topic_partition_list_destroy(l);
}

/* ---- one batch ---- */

/* Take one polled message into the batch: note its position, decode it. */
static void worker_take(void *arg, rd_kafka_message_t *m)
{
	struct worker *w = arg;
	struct item *it = &w->items[w->nitems];
	char err[256];

	if (batch_note(&w->batch, m->partition, m->offset) < 0) {
		log_error("out_of_memory", "what=batch");
		abort();
	}
	it->msg = m;
	it->invalid[0] = '\0';
	w->intents[w->nitems] = intent_decode(m->payload, m->len, m->key, m->key_len,
					      err, sizeof(err));
	if (w->intents[w->nitems] == NULL) {
		snprintf(it->invalid, sizeof(it->invalid), "%s",
			 err[0] != '\0' ? err : "invalid intent");
	} else if (kafka_partition_of(m->key, m->key_len) != m->partition) {
		/*
		 * A SKU's intents must form one ordered stream, and its
		 * partition's fence and repair cover exactly the SKUs that
		 * hash to it: an intent placed by another partitioner would
		 * escape both.
		 */
		snprintf(it->invalid, sizeof(it->invalid),
			 "intent for sku %s on partition %" PRId32 " but its key hashes to %"
			 PRId32 " (murmur2, see proto/README.md)", w->intents[w->nitems]->sku,
			 m->partition, kafka_partition_of(m->key, m->key_len));
		intent_free(w->intents[w->nitems]);
		w->intents[w->nitems] = NULL;
	}
	w->nitems++;
}

/*
 * Poll up to batch_size messages: wait up to 100 ms for the first, then at
 * most batch_wait_ms for the rest. Returns with nitems == 0 when nothing came
 * (the caller checks the drain flag between calls).
 */
static void worker_collect(struct worker *w)
{
	batch_clear(w);
	(void)kafka_poll_batch(w->consumer, (size_t)w->cfg->batch_size, POLL_FIRST_MS,
			       (int)w->cfg->batch_wait_ms, worker_take, w, &w->batch_t0_us);
}

/* Produce one ledger event; waits while the producer's queue is full. */
static int worker_produce(struct worker *w, size_t i, char *err, size_t errlen)
{
	const fs_intent *in = w->intents[i];
	const rd_kafka_message_t *m = w->items[i].msg;
	struct ledger_out out;
	rd_kafka_resp_err_t kerr;
	int64_t give_up_us;
	size_t len;

	if (ledger_build(&out, in, &w->results[i], m->partition, m->offset, err, errlen) < 0)
		return -1;
	len = flashsale__ledger_event__get_packed_size(&out.ev);
	if (len > w->packcap) {
		uint8_t *p = realloc(w->pack, len);

		if (p == NULL) {
			snprintf(err, errlen, "out of memory");
			return -1;
		}
		w->pack = p;
		w->packcap = len;
	}
	flashsale__ledger_event__pack(&out.ev, w->pack);
	/*
	 * Bounded: a rebuild waits out how long an applied step's event may
	 * take to land (reconciler.rebuild_quiesce_ms), which is this wait plus
	 * the message timeout. Past it the batch is redone.
	 */
	give_up_us = mono_us() + w->cfg->kafka.produce_timeout_ms * 1000;
	for (;;) {
		/* The ledger partition is the intent's: what the guard reads
		 * back for a partition is exactly that partition's events. */
		kerr = rd_kafka_producev(w->producer,
					 RD_KAFKA_V_TOPIC(FS_TOPIC_LEDGER),
					 RD_KAFKA_V_PARTITION(m->partition),
					 RD_KAFKA_V_KEY(in->sku, strlen(in->sku)),
					 RD_KAFKA_V_VALUE(w->pack, len),
					 RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
					 RD_KAFKA_V_OPAQUE((void *)w->gen),
					 RD_KAFKA_V_END);
		if (kerr != RD_KAFKA_RESP_ERR__QUEUE_FULL || mono_us() > give_up_us)
			break;
		rd_kafka_poll(w->producer, 100);
	}
	if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
		snprintf(err, errlen, "produce %s: %s", FS_TOPIC_LEDGER, rd_kafka_err2str(kerr));
		return -1;
	}
	return 0;
}

/* Dead-letter the message; waits a while if the producer's queue is full. */
static int worker_deadletter(struct worker *w, size_t i, const char *reason,
			     char *err, size_t errlen)
{
	const rd_kafka_message_t *m = w->items[i].msg;
	char q[512];
	int tries;

	log_warn("deadletter", "partition=%" PRId32 " offset=%" PRId64 " reason=\"%s\"",
		 m->partition, m->offset, log_quote(q, sizeof(q), reason));
	for (tries = 0; ; tries++) {
		if (kafka_deadletter(w->producer, m, "deductor", reason, err, errlen) == 0)
			return 0;
		if (tries >= 50)
			return -1;
		rd_kafka_poll(w->producer, 100);
	}
}

/*
 * Emit what this batch must emit: ledger events for 'ok' steps and dead
 * letters for invalid intents and failed steps, except at or after a blocked
 * position. Then wait for every delivery report. -1 when anything failed.
 */
static int worker_emit(struct worker *w, char *err, size_t errlen)
{
	rd_kafka_resp_err_t ferr;
	size_t i;

	w->gen++;
	w->dr_failed = 0;
	w->dr_error[0] = '\0';
	for (i = 0; i < w->nitems; i++) {
		const rd_kafka_message_t *m = w->items[i].msg;
		int rc;

		if (batch_is_blocked(&w->batch, m->partition, m->offset))
			continue;
		if (w->intents[i] == NULL) {
			rc = worker_deadletter(w, i, w->items[i].invalid, err, errlen);
		} else if (w->results[i].status == STEP_FAILED) {
			rc = worker_deadletter(w, i, w->results[i].error, err, errlen);
		} else if (w->results[i].status == STEP_OK) {
			rc = worker_produce(w, i, err, errlen);
		} else {
			snprintf(err, errlen, "intent at %" PRId32 "/%" PRId64 " has no result",
				 m->partition, m->offset);
			rc = -1;
		}
		if (rc < 0)
			return -1;
	}
	ferr = rd_kafka_flush(w->producer, (int)w->cfg->kafka.produce_timeout_ms + 1000);
	if (ferr != RD_KAFKA_RESP_ERR_NO_ERROR) {
		snprintf(err, errlen, "flush: %s", rd_kafka_err2str(ferr));
		return -1;
	}
	if (w->dr_failed > 0) {
		snprintf(err, errlen, "%" PRId64 " deliveries failed, last: %s", w->dr_failed,
			 w->dr_error);
		return -1;
	}
	return 0;
}

static void worker_count(struct worker *w)
{
	size_t i;

	for (i = 0; i < w->nitems; i++) {
		const rd_kafka_message_t *m = w->items[i].msg;
		const struct step_result *r = &w->results[i];
		int k;

		if (batch_is_blocked(&w->batch, m->partition, m->offset))
			continue;
		if (w->intents[i] == NULL || r->status == STEP_FAILED) {
			metric_add(&m_deadletters, 1);
			continue;
		}
		k = (int)w->intents[i]->kind - 1;
		if (r->status == STEP_OK && k >= 0 && k < N_INTENT_KINDS &&
		    r->event_kind >= 1 && r->event_kind <= N_EVENT_KINDS)
			metric_add(&m_intents[k][r->event_kind - 1], 1);
	}
}

/*
 * Mark not_ready and fenced positions (nothing at or after them is acted
 * on; they are polled again), track the outage and the fences. Returns true
 * when some partition is blocked.
 */
static bool worker_block(struct worker *w)
{
	bool not_ready = false, fenced = false, ok = false;
	size_t i;

	for (i = 0; i < w->nitems; i++) {
		const rd_kafka_message_t *m = w->items[i].msg;
		const struct step_result *r = &w->results[i];

		if (r->status == STEP_NOT_READY) {
			batch_block(&w->batch, m->partition, m->offset);
			not_ready = true;
		} else if (r->status == STEP_FENCED) {
			batch_block(&w->batch, m->partition, m->offset);
			fenced = true;
			metric_add(&m_fenced_steps, 1);
			if (guard_note_fenced(&w->guard, m->partition, w->intents[i]->sku, r->error))
				log_error("partition_fenced", "partition=%" PRId32 " sku=%s why=\"%s\" "
					  "msg=\"Redis is older than the ledger: nothing of this "
					  "partition is applied until the reconciler repairs it\"",
					  m->partition, w->intents[i]->sku, r->error);
		} else if (r->status == STEP_OK) {
			ok = true;
			if (guard_note_clear(&w->guard, m->partition))
				log_info("partition_unfenced", "partition=%" PRId32, m->partition);
		}
	}
	metric_set(&m_fenced, guard_fenced_count(&w->guard));
	if (not_ready) {
		metric_add(&m_not_ready, 1);
		if (__atomic_load_n(&w->not_ready_since_us, __ATOMIC_RELAXED) == 0) {
			__atomic_store_n(&w->not_ready_since_us, mono_us(), __ATOMIC_RELAXED);
			log_warn("redis_not_ready", "msg=\"fs:ready is absent: Redis state lost; "
				 "waiting for reconciler rebuild\"");
		}
	} else if (ok && __atomic_load_n(&w->not_ready_since_us, __ATOMIC_RELAXED) != 0) {
		int64_t since = __atomic_load_n(&w->not_ready_since_us, __ATOMIC_RELAXED);

		__atomic_store_n(&w->not_ready_since_us, 0, __ATOMIC_RELAXED);
		log_info("redis_ready", "outage_ms=%" PRId64, (mono_us() - since) / 1000);
	}
	return not_ready || fenced;
}

/*
 * The epoch every 'ok' result ran against: false when they disagree (the
 * state was rebuilt in the middle of the batch). *any false when no result
 * was ok (nothing to fence).
 */
static bool worker_batch_epoch(struct worker *w, bool *any, int64_t *epoch)
{
	size_t i;

	*any = false;
	*epoch = 0;
	for (i = 0; i < w->nitems; i++) {
		if (w->results[i].status != STEP_OK)
			continue;
		if (*any && w->results[i].epoch != *epoch)
			return false;
		*any = true;
		*epoch = w->results[i].epoch;
	}
	return true;
}

/*
 * Read back the ledger's tail of newly assigned partitions (see guard.h).
 * -1 when Kafka could not be read: nothing of the batch may be applied yet.
 */
static int worker_probe(struct worker *w)
{
	char err[512], q[512];
	int64_t now = mono_us();

	if (now < w->next_probe_us)
		return -1;
	metric_add(&m_probes, 1);
	if (guard_probe(&w->guard, w->reader, w->cfg->probe_events, w->cfg->probe_timeout_ms,
			err, sizeof(err)) == 0) {
		w->verify_redis = true;
		return 0;
	}
	log_warn("probe_failed", "msg=\"%s\"", log_quote(q, sizeof(q), err));
	w->next_probe_us = now + w->cfg->retry_backoff_ms * 1000;
	return -1;
}

/* The batch's events are on the ledger: raise the guard's floors. */
static int worker_learn(struct worker *w)
{
	for (size_t i = 0; i < w->nitems; i++) {
		const rd_kafka_message_t *m = w->items[i].msg;
		const struct step_result *r = &w->results[i];

		if (r->status != STEP_OK || !r->changed ||
		    batch_is_blocked(&w->batch, m->partition, m->offset))
			continue;
		if (guard_learn(&w->guard, w->intents[i]->sku, m->partition, m->offset,
				r->sku_seq) < 0)
			return -1;
	}
	return 0;
}

/*
 * Between batches: read back newly assigned partitions and, after a Redis
 * (re)connect, compare its watermarks with the ledger's, so that a stale
 * Redis is fenced and reported before any intent arrives.
 */
static void worker_idle_verify(struct worker *w)
{
	char err[512], q[512];

	if (guard_needs_probe(&w->guard) && worker_probe(w) < 0)
		return;
	if (!w->verify_redis || w->redis == NULL)
		return;
	if (guard_verify(&w->guard, w->redis, err, sizeof(err)) < 0) {
		log_warn("redis_error", "cmd=verify msg=\"%s\"", log_quote(q, sizeof(q), err));
		worker_redis_drop(w);
		return;
	}
	w->verify_redis = false;
	metric_set(&m_fenced, guard_fenced_count(&w->guard));
}

enum process_outcome {
	PROCESS_DONE,       /* stored, or rewound to be polled again */
	PROCESS_AGAIN,      /* could not rewind: redo this batch from memory */
	PROCESS_ABANDONED,  /* drain during an outage: nothing stored */
};

/* After a failure: rewind to the batch's first offsets, or redo from memory. */
static enum process_outcome worker_redo(struct worker *w, const char *why)
{
	if (worker_seek_first(w, why) == 0)
		return PROCESS_DONE;
	log_warn("batch_redo_in_place", "why=%s items=%zu", why, w->nitems);
	return PROCESS_AGAIN;
}

/*
 * Apply the collected batch, emit its events, fence on the epoch and store
 * its offsets. Whatever fails leaves the offsets unstored and rewinds the
 * partitions, so the batch is polled and applied again.
 */
static enum process_outcome worker_process(struct worker *w)
{
	char err[512], q[512], ferr[256];
	bool same, any, present, not_ready;
	int64_t epoch, now_epoch;
	size_t i;

	metric_set(&m_batch_size, (int64_t)w->nitems);
	metric_add(&m_batch_messages, (int64_t)w->nitems);

	batch_unblock(&w->batch);
	if (guard_needs_probe(&w->guard) && worker_probe(w) < 0) {
		/* Without the ledger's floors a stale Redis would go unnoticed. */
		w->sleep_ms = w->cfg->retry_backoff_ms;
		return worker_redo(w, "probe");
	}
	for (i = 0; i < w->nitems; i++) {
		const rd_kafka_message_t *m = w->items[i].msg;

		memset(&w->results[i], 0, sizeof(w->results[i]));
		if (w->intents[i] != NULL)
			guard_args(&w->guard, w->intents[i], m->partition, m->offset, &w->args[i]);
	}
	if (worker_redis_step(w) < 0) {
		log_warn("batch_abandoned", "items=%zu msg=\"drain during a Redis outage\"",
			 w->nitems);
		return PROCESS_ABANDONED;
	}
	not_ready = worker_block(w);

	err[0] = '\0';
	if (worker_emit(w, err, sizeof(err)) < 0) {
		log_warn("batch_redo", "why=produce items=%zu msg=\"%s\"", w->nitems,
			 log_quote(q, sizeof(q), err));
		metric_add(&m_redo_produce, 1);
		if (rd_kafka_fatal_error(w->producer, ferr, sizeof(ferr)) !=
		    RD_KAFKA_RESP_ERR_NO_ERROR) {
			/* An idempotent producer that hit a fatal error never recovers. */
			log_error("producer_fatal", "msg=\"%s\"", log_quote(q, sizeof(q), ferr));
			w->fatal = true;
			daemon_thread_stop(&w->th);
			return PROCESS_ABANDONED;
		}
		w->sleep_ms = w->cfg->retry_backoff_ms;
		return worker_redo(w, "produce");
	}
	if (worker_learn(w) < 0) {
		log_error("out_of_memory", "what=guard");
		abort();
	}

	/*
	 * Epoch fence. The events above are durable now, but if Redis lost its
	 * state and was rebuilt while this batch ran, the rebuild may have
	 * folded the ledger before our events reached it, so Redis may not
	 * hold the movements we just emitted. Committing would lose them.
	 * Redo instead: against the rebuilt state each intent is applied again
	 * or answers its earlier outcome; both are safe, the events dedupe.
	 */
	same = worker_batch_epoch(w, &any, &epoch);
	if (any) {
		if (worker_epoch(w, &present, &now_epoch) < 0) {
			log_warn("batch_abandoned", "items=%zu msg=\"drain during a Redis outage\"",
				 w->nitems);
			return PROCESS_ABANDONED;
		}
		if (!same || !present || now_epoch != epoch) {
			log_warn("batch_redo", "why=epoch items=%zu batch_epoch=%" PRId64
				 " mixed=%s now_epoch=%" PRId64 " present=%s", w->nitems, epoch,
				 same ? "false" : "true", now_epoch, present ? "true" : "false");
			metric_add(&m_redo_epoch, 1);
			return worker_redo(w, "epoch");
		}
	}

	worker_store(w);
	worker_count(w);
	metric_add(&m_batches, 1);
	metric_observe_us(&m_batch_seconds, (uint64_t)(mono_us() - w->batch_t0_us));
	log_debug("batch_done", "items=%zu partitions=%zu not_ready=%s", w->nitems,
		  w->batch.nparts, not_ready ? "true" : "false");
	if (not_ready) {
		w->sleep_ms = w->cfg->retry_backoff_ms;
		if (worker_seek(w, worker_positions(w, batch_blocked_positions),
				"not_ready") < 0) {
			/* The unblocked part is stored; redoing it is a replay. */
			log_warn("batch_redo_in_place", "why=not_ready items=%zu", w->nitems);
			return PROCESS_AGAIN;
		}
	}
	return PROCESS_DONE;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	rd_kafka_resp_err_t kerr;

	log_info("worker_started", "group=%s batch_size=%lld batch_wait_ms=%lld",
		 w->cfg->group, w->cfg->batch_size, w->cfg->batch_wait_ms);
	while (!worker_stopping(w)) {
		worker_beat(w);
		if (w->sleep_ms > 0) {
			worker_sleep(w, w->sleep_ms);
			w->sleep_ms = 0;
			continue;
		}
		worker_idle_connect(w);
		worker_idle_verify(w);
		worker_collect(w);
		if (w->nitems == 0)
			continue;
		/* A drain lets this batch finish: it is applied, emitted, stored. */
		while (worker_process(w) == PROCESS_AGAIN && !worker_stopping(w)) {
			worker_sleep(w, w->sleep_ms > 0 ? w->sleep_ms : w->cfg->retry_backoff_ms);
			w->sleep_ms = 0;
		}
		batch_clear(w);
	}
	batch_clear(w);

	log_info("worker_draining", "msg=\"closing consumer\"");
	/* Commits the stored offsets (auto commit) and leaves the group. */
	kerr = rd_kafka_consumer_close(w->consumer);
	if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
		log_warn("consumer_close", "err=%s", rd_kafka_err2name(kerr));
		w->fatal = true;
	}
	rd_kafka_destroy(w->consumer);
	w->consumer = NULL;
	if (rd_kafka_flush(w->producer, (int)w->cfg->kafka.produce_timeout_ms + 1000) !=
	    RD_KAFKA_RESP_ERR_NO_ERROR)
		log_warn("producer_flush", "msg=\"undelivered messages at exit\"");
	rd_kafka_destroy(w->producer);
	w->producer = NULL;
	worker_redis_drop(w);
	log_info("worker_stopped", "failed=%s", w->fatal ? "true" : "false");
	daemon_thread_exit(&w->th, w->fatal);
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

void worker_free(struct worker *w)
{
	if (w == NULL)
		return;
	if (w->items != NULL && w->intents != NULL)
		batch_clear(w);
	if (w->consumer != NULL) {
		rd_kafka_consumer_close(w->consumer);
		rd_kafka_destroy(w->consumer);
	}
	if (w->producer != NULL)
		rd_kafka_destroy(w->producer);
	if (w->reader != NULL) {
		rd_kafka_consumer_close(w->reader);
		rd_kafka_destroy(w->reader);
	}
	if (w->redis != NULL)
		redisFree(w->redis);
	batch_free(&w->batch);
	guard_free(&w->guard);
	free(w->items);
	free(w->intents);
	free(w->args);
	free(w->results);
	free(w->pos);
	free(w->pack);
	free(w);
}

enum daemon_health worker_health(struct worker *w, char *detail, size_t n)
{
	char fences[1400];
	int nfenced = guard_fenced_count(&w->guard);
	int64_t now = mono_us();
	int64_t since = __atomic_load_n(&w->not_ready_since_us, __ATOMIC_RELAXED);
	bool redis = __atomic_load_n(&w->redis_up, __ATOMIC_RELAXED) != 0;
	int64_t beat_age = daemon_thread_beat_age_ms(&w->th);
	int64_t outage = since != 0 ? (now - since) / 1000 : 0;
	bool alive = !daemon_thread_finished(&w->th) && beat_age * 1000 <= HEARTBEAT_MAX_US;
	const char *reason = since != 0 ? "redis_state_missing" :
			     nfenced > 0 ? "partitions_fenced" : "";

	guard_fences_json(&w->guard, fences, sizeof(fences));
	/*
	 * Owning no partition is healthy (a group may have more members than
	 * partitions); it is reported so a starter can wait for the first
	 * assignment before sending traffic. A missing or fenced state is
	 * degraded, not failed: intents queue in Kafka until the reconciler
	 * rebuilds or repairs it, and restarting this process would not help.
	 */
	snprintf(detail, n, "{\"worker_alive\":%s,\"heartbeat_age_ms\":%" PRId64
		 ",\"redis_connected\":%s,\"redis_not_ready_ms\":%" PRId64 ",\"partitions\":%d"
		 ",\"fenced\":%s,\"reason\":\"%s\"}",
		 alive ? "true" : "false", beat_age, redis ? "true" : "false", outage,
		 __atomic_load_n(&w->assigned, __ATOMIC_RELAXED), fences, reason);
	if (!alive || !redis)
		return HEALTH_FAILED;
	return reason[0] != '\0' ? HEALTH_DEGRADED : HEALTH_OK;
}
