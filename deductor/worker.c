/*
 * The deductor's apply logic on the shared consumer (see worker.h): decode
 * and check each intent, run the batch's Redis step, block what Redis could
 * not take yet (state missing, partition fenced), produce the ledger events,
 * and once they are delivered learn the guard's floors and check the epoch.
 */
#include "worker.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "array.h"
#include "consumer.h"
#include "guard.h"
#include "ledger.h"
#include "log.h"
#include "metrics.h"
#include "step.h"

#define HEARTBEAT_MAX_MS 5000
#define GUARD_SKUS_MAX 100000

#define N_INTENT_KINDS 4   /* purchase pay cancel release */
#define N_EVENT_KINDS 6    /* reserved .. transition_refused */

static struct metric m_intents[N_INTENT_KINDS][N_EVENT_KINDS];
static char m_intents_labels[N_INTENT_KINDS][N_EVENT_KINDS][64];
static struct metric m_not_ready = { "deductor_not_ready_waits_total",
	"Batches that met a lost Redis state (fs:ready absent) and waited", NULL, METRIC_COUNTER };
static struct metric m_redis_up = { "deductor_redis_connected",
	"1 while the worker holds a Redis connection", NULL, METRIC_GAUGE };
static struct metric m_fenced = { "deductor_fenced_partitions",
	"Partitions fenced because Redis is older than the ledger (nothing applied)", NULL,
	METRIC_GAUGE };
static struct metric m_fenced_steps = { "deductor_fenced_steps_total",
	"Intents not applied because their partition is fenced (applied after repair)", NULL,
	METRIC_COUNTER };
static struct metric m_probes = { "deductor_ledger_probes_total",
	"Ledger tails read back after a partition assignment", NULL, METRIC_COUNTER };

struct dd_worker {
	const struct dd_config *cfg;
	struct consumer *consumer;
	rd_kafka_t *reader;          /* reads the ledger's tail back (guard_probe) */
	struct step_conn redis;
	struct step_params params;
	struct dd_guard guard;
	int64_t next_probe_us;       /* after a failed probe: not before this */
	int64_t next_verify_us;      /* the next idle comparison with the ledger */
	int64_t not_ready_since_us;  /* atomic: start of the current outage, 0 if none */

	/* Per batch item: intents[i] is the item's value (NULL when rejected). */
	fs_intent **intents;
	struct step_args *args;
	struct step_result *results;
	size_t cap_intents, cap_args, cap_results;
	uint8_t *pack;
	size_t packcap;
};

static void dd_metrics_register(void)
{
	static const char *const kinds[N_INTENT_KINDS] = {
		"purchase", "pay", "cancel", "release",
	};

	for (int k = 0; k < N_INTENT_KINDS; k++) {
		for (int e = 0; e < N_EVENT_KINDS; e++) {
			struct metric *m = &m_intents[k][e];

			snprintf(m_intents_labels[k][e], sizeof(m_intents_labels[k][e]),
				 "kind=\"%s\",outcome=\"%s\"", kinds[k], ledger_kind_name(e + 1));
			m->name = "deductor_intents_total";
			m->help = "Intents applied, by intent kind and ledger event";
			m->labels = m_intents_labels[k][e];
			m->type = METRIC_COUNTER;
			metrics_register(m);
		}
	}
	metrics_register(&m_not_ready);
	metrics_register(&m_redis_up);
	metrics_register(&m_fenced);
	metrics_register(&m_fenced_steps);
	metrics_register(&m_probes);
}

/* ---- the guard ---- */

/*
 * Read back the ledger's tail of newly assigned partitions (see guard.h).
 * -1 when Kafka could not be read: nothing may be applied there yet.
 */
static int dd_probe(struct dd_worker *w)
{
	char err[512], q[512];
	int64_t now = mono_us();

	if (now < w->next_probe_us)
		return -1;
	metric_add(&m_probes, 1);
	if (guard_probe(&w->guard, w->reader, w->cfg->probe_events, w->cfg->probe_timeout_ms,
			err, sizeof(err)) == 0) {
		w->redis.fresh = true;      /* compare the new partitions too */
		return 0;
	}
	log_warn("probe_failed", "msg=\"%s\"", log_quote(q, sizeof(q), err));
	w->next_probe_us = now + w->cfg->consumer.retry_backoff_ms * 1000;
	return -1;
}

/*
 * How often an idle deductor compares Redis with the ledger. A Redis that
 * restarts from an older copy while no intent comes (campaign seed 477: a
 * rollback after the sale's last intent) leaves the worker's synchronous
 * connection looking alive until its next command: without this look
 * nothing was fenced, nothing repaired, and 35 holds were never released.
 */
#define DD_VERIFY_EVERY_US (1000 * 1000)

/*
 * Between batches: keep a Redis connection (so /healthz tells the truth and
 * the first batch after an outage does not pay for the connect), read back
 * newly assigned partitions and, after a (re)connect and once a second
 * anyway, compare Redis' watermarks with the ledger's, so that a stale
 * Redis is fenced and reported before any intent arrives.
 */
static void dd_idle(void *app)
{
	struct dd_worker *w = app;
	char err[512], q[512];

	if (step_conn_ensure(&w->redis) < 0)
		log_debug("redis_unreachable", "when=idle");
	metric_set(&m_redis_up, __atomic_load_n(&w->redis.up, __ATOMIC_RELAXED));
	if (guard_needs_probe(&w->guard) && dd_probe(w) < 0)
		return;
	/* After a (re)connect it may be another Redis, or an older copy. */
	if (mono_us() >= w->next_verify_us) {
		w->next_verify_us = mono_us() + DD_VERIFY_EVERY_US;
		w->redis.fresh = true;
	}
	if (!w->redis.fresh || w->redis.c == NULL)
		return;
	if (guard_verify(&w->guard, w->redis.c, err, sizeof(err)) < 0) {
		log_warn("redis_error", "cmd=verify msg=\"%s\"", log_quote(q, sizeof(q), err));
		step_conn_drop(&w->redis);
		return;
	}
	w->redis.fresh = false;
	metric_set(&m_fenced, guard_fenced_count(&w->guard));
}

static void dd_assigned(void *app, const rd_kafka_topic_partition_list_t *parts)
{
	struct dd_worker *w = app;

	guard_assigned(&w->guard, parts);
}

static void dd_revoked(void *app, const rd_kafka_topic_partition_list_t *parts)
{
	struct dd_worker *w = app;

	guard_revoked(&w->guard, parts);
	metric_set(&m_fenced, guard_fenced_count(&w->guard));
}

/* ---- one batch ---- */

static void *dd_decode(void *app, const rd_kafka_message_t *m, char *why, size_t whylen)
{
	fs_intent *in = intent_decode(m->payload, m->len, m->key, m->key_len, why, whylen);

	(void)app;
	if (in != NULL && kafka_partition_of(m->key, m->key_len) != m->partition) {
		/*
		 * A SKU's intents must form one ordered stream, and its
		 * partition's fence and repair cover exactly the SKUs that
		 * hash to it: an intent placed by another partitioner would
		 * escape both.
		 */
		snprintf(why, whylen, "intent for sku %s on partition %" PRId32 " but its key "
			 "hashes to %" PRId32 " (murmur2, see proto/README.md)", in->sku,
			 m->partition, kafka_partition_of(m->key, m->key_len));
		intent_free(in);
		return NULL;
	}
	return in;
}

static void dd_release(void *app, void *value)
{
	(void)app;
	intent_free(value);
}

/*
 * Block not_ready and fenced positions (nothing at or after them is acted
 * on; they are polled again), reject failed steps, and track the outage
 * and the fences.
 */
static void dd_block(struct dd_worker *w, struct consumer_batch *b)
{
	bool not_ready = false, ok = false;
	int64_t since;

	for (size_t i = 0; i < b->n; i++) {
		const rd_kafka_message_t *m = b->items[i].msg;
		const struct step_result *r = &w->results[i];

		if (r->status == STEP_NOT_READY) {
			consumer_block(b, i);
			not_ready = true;
		} else if (r->status == STEP_FENCED) {
			consumer_block(b, i);
			metric_add(&m_fenced_steps, 1);
			if (guard_note_fenced(&w->guard, m->partition, w->intents[i]->sku, r->error))
				log_error("partition_fenced", "partition=%" PRId32 " sku=%s why=\"%s\" "
					  "msg=\"Redis is older than the ledger: nothing of this "
					  "partition is applied until the reconciler repairs it\"",
					  m->partition, w->intents[i]->sku, r->error);
		} else if (r->status == STEP_FAILED) {
			consumer_reject(b, i, r->error);
		} else if (r->status == STEP_OK) {
			ok = true;
			if (guard_note_clear(&w->guard, m->partition))
				log_info("partition_unfenced", "partition=%" PRId32, m->partition);
		}
	}
	metric_set(&m_fenced, guard_fenced_count(&w->guard));
	since = __atomic_load_n(&w->not_ready_since_us, __ATOMIC_RELAXED);
	if (not_ready) {
		metric_add(&m_not_ready, 1);
		if (since == 0) {
			__atomic_store_n(&w->not_ready_since_us, mono_us(), __ATOMIC_RELAXED);
			log_warn("redis_not_ready", "msg=\"fs:ready is absent: Redis state lost; "
				 "waiting for reconciler rebuild\"");
		}
	} else if (ok && since != 0) {
		__atomic_store_n(&w->not_ready_since_us, 0, __ATOMIC_RELAXED);
		log_info("redis_ready", "outage_ms=%" PRId64, (mono_us() - since) / 1000);
	}
}

/* Produce item i's ledger event; waits (bounded) while the producer's queue is full. */
static int dd_produce(struct dd_worker *w, const struct consumer_batch *b, size_t i,
		      char *err, size_t errlen)
{
	rd_kafka_t *rk = consumer_producer(w->consumer);
	const rd_kafka_message_t *m = b->items[i].msg;
	const fs_intent *in = w->intents[i];
	struct ledger_out out;
	rd_kafka_resp_err_t kerr;
	int64_t give_up_us;
	size_t len;

	if (ledger_build(&out, in, &w->results[i], m->partition, m->offset, err, errlen) < 0)
		return -1;
	len = flashsale__ledger_event__get_packed_size(&out.ev);
	if (ARRAY_GROW(w->pack, w->packcap, len) < 0) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	flashsale__ledger_event__pack(&out.ev, w->pack);
	/*
	 * Bounded: a rebuild waits out how long an applied step's event may
	 * take to land (reconciler.rebuild_quiesce_ms), which is this wait plus
	 * the message timeout. Past it the batch is redone.
	 */
	give_up_us = mono_us() + w->cfg->base.kafka.produce_timeout_ms * 1000;
	for (;;) {
		/* The ledger partition is the intent's: what the guard reads
		 * back for a partition is exactly that partition's events. */
		kerr = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(FS_TOPIC_LEDGER),
					 RD_KAFKA_V_PARTITION(m->partition),
					 RD_KAFKA_V_KEY(in->sku, strlen(in->sku)),
					 RD_KAFKA_V_VALUE(w->pack, len),
					 RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
		if (kerr != RD_KAFKA_RESP_ERR__QUEUE_FULL || mono_us() > give_up_us)
			break;
		rd_kafka_poll(rk, 100);
	}
	if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
		snprintf(err, errlen, "produce %s: %s", FS_TOPIC_LEDGER, rd_kafka_err2str(kerr));
		return -1;
	}
	return 0;
}

/* Apply the batch in Redis and produce its events (see consumer.h). */
static enum consumer_result dd_apply(void *app, struct consumer_batch *b)
{
	struct dd_worker *w = app;
	char err[512], q[512];

	if (ARRAY_GROW(w->intents, w->cap_intents, b->n) < 0 ||
	    ARRAY_GROW(w->args, w->cap_args, b->n) < 0 ||
	    ARRAY_GROW(w->results, w->cap_results, b->n) < 0) {
		log_error("out_of_memory", "what=batch");
		return CONSUMER_FATAL;
	}
	/* Without the ledger's floors a stale Redis would go unnoticed. */
	if (guard_needs_probe(&w->guard) && dd_probe(w) < 0)
		return CONSUMER_RETRY;
	for (size_t i = 0; i < b->n; i++) {
		const rd_kafka_message_t *m = b->items[i].msg;

		w->intents[i] = b->items[i].value;
		memset(&w->results[i], 0, sizeof(w->results[i]));
		if (w->intents[i] != NULL)
			guard_args(&w->guard, w->intents[i], m->partition, m->offset, &w->args[i]);
	}
	if (step_conn_run(&w->redis, &w->params, w->intents, w->args, w->results, b->n) < 0)
		return CONSUMER_RETRY;
	dd_block(w, b);
	for (size_t i = 0; i < b->n; i++) {
		if (w->results[i].status != STEP_OK || consumer_blocked(b, i))
			continue;
		if (dd_produce(w, b, i, err, sizeof(err)) < 0) {
			log_warn("batch_redo", "why=produce items=%zu msg=\"%s\"", b->n,
				 log_quote(q, sizeof(q), err));
			return CONSUMER_RETRY;
		}
	}
	return CONSUMER_OK;
}

/*
 * The epoch every 'ok' result ran against: false when they disagree (the
 * state was rebuilt in the middle of the batch). *any false when no result
 * was ok (nothing to fence).
 */
static bool dd_batch_epoch(const struct dd_worker *w, size_t n, bool *any, int64_t *epoch)
{
	*any = false;
	*epoch = 0;
	for (size_t i = 0; i < n; i++) {
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
 * The batch's events are on the ledger: raise the guard's floors, then the
 * epoch fence. If Redis lost its state and was rebuilt while this batch
 * ran, the rebuild may have folded the ledger before our events reached it,
 * so Redis may not hold the movements we just emitted: committing would
 * lose them. Redo instead: against the rebuilt state each intent is applied
 * again or answers its earlier outcome; both are safe, the events dedupe.
 */
static enum consumer_result dd_delivered(void *app, struct consumer_batch *b)
{
	struct dd_worker *w = app;
	bool same, any, present;
	int64_t epoch, now_epoch;

	for (size_t i = 0; i < b->n; i++) {
		const rd_kafka_message_t *m = b->items[i].msg;
		const struct step_result *r = &w->results[i];

		if (r->status != STEP_OK || !r->changed || consumer_blocked(b, i))
			continue;
		if (guard_learn(&w->guard, w->intents[i]->sku, m->partition, m->offset,
				r->sku_seq) < 0) {
			log_error("out_of_memory", "what=guard");
			return CONSUMER_FATAL;
		}
	}
	same = dd_batch_epoch(w, b->n, &any, &epoch);
	if (any) {
		if (step_conn_epoch(&w->redis, &present, &now_epoch) < 0)
			return CONSUMER_RETRY;
		if (!same || !present || now_epoch != epoch) {
			log_warn("batch_redo", "why=epoch items=%zu batch_epoch=%" PRId64
				 " mixed=%s now_epoch=%" PRId64 " present=%s", b->n, epoch,
				 same ? "false" : "true", now_epoch, present ? "true" : "false");
			return CONSUMER_RETRY;
		}
	}
	for (size_t i = 0; i < b->n; i++) {
		const struct step_result *r = &w->results[i];
		int k;

		if (r->status != STEP_OK || consumer_blocked(b, i))
			continue;
		k = (int)w->intents[i]->kind - 1;
		if (k >= 0 && k < N_INTENT_KINDS && r->event_kind >= 1 &&
		    r->event_kind <= N_EVENT_KINDS)
			metric_add(&m_intents[k][r->event_kind - 1], 1);
	}
	return CONSUMER_OK;
}

/* Intents in, ledger events out. */
static const struct consumer_ops dd_ops = {
	.name = "deductor", .metric_prefix = "deductor",
	.topic = FS_TOPIC_INTENTS, .produce_topic = FS_TOPIC_LEDGER,
	.decode = dd_decode, .release = dd_release, .apply = dd_apply, .delivered = dd_delivered,
	.assigned = dd_assigned, .revoked = dd_revoked, .idle = dd_idle,
};

/* ---- lifecycle ---- */

struct dd_worker *dd_worker_new(const struct dd_config *cfg, char *err, size_t errlen)
{
	struct dd_worker *w = calloc(1, sizeof(*w));

	if (w == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	w->cfg = cfg;
	step_conn_init(&w->redis, cfg->redis_address, cfg->consumer.retry_backoff_ms);
	w->params.record_ttl_s = cfg->record_ttl_s;
	w->params.pay_max_lag_ms = cfg->pay_max_lag_ms;
	if (guard_init(&w->guard, GUARD_SKUS_MAX) < 0) {
		snprintf(err, errlen, "guard: cannot create its lock");
		free(w);
		return NULL;
	}
	dd_metrics_register();
	w->reader = kafka_reader_new(&cfg->base.kafka, "flashsale-deductor-probe", err, errlen);
	if (w->reader == NULL)
		goto fail;
	w->consumer = consumer_new(&dd_ops, &cfg->base.kafka, &cfg->consumer, w, err, errlen);
	if (w->consumer == NULL)
		goto fail;
	return w;
fail:
	dd_worker_free(w);
	return NULL;
}

struct consumer *dd_worker_consumer(struct dd_worker *w)
{
	return w->consumer;
}

void dd_worker_free(struct dd_worker *w)
{
	if (w == NULL)
		return;
	consumer_free(w->consumer);
	if (w->reader != NULL) {
		rd_kafka_consumer_close(w->reader);
		rd_kafka_destroy(w->reader);
	}
	step_conn_drop(&w->redis);
	guard_free(&w->guard);
	free(w->intents);
	free(w->args);
	free(w->results);
	free(w->pack);
	free(w);
}

enum daemon_health dd_worker_health(void *dd_worker, char *detail, size_t n)
{
	struct dd_worker *w = dd_worker;
	char fences[1400];
	int64_t since = __atomic_load_n(&w->not_ready_since_us, __ATOMIC_RELAXED);
	int64_t outage = since != 0 ? (mono_us() - since) / 1000 : 0, beat_age;
	bool redis = __atomic_load_n(&w->redis.up, __ATOMIC_RELAXED) != 0;
	bool alive = consumer_alive(w->consumer, HEARTBEAT_MAX_MS, &beat_age);
	int nfenced = guard_fenced_count(&w->guard);
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
		 consumer_assigned(w->consumer), fences, reason);
	if (!alive || !redis)
		return HEALTH_FAILED;
	return reason[0] != '\0' ? HEALTH_DEGRADED : HEALTH_OK;
}
