/*
 * The at-least-once batch consumer every consuming daemon runs: a Kafka
 * consumer group member on one topic, on its own worker thread, that polls
 * a batch, hands it to the daemon, dead-letters what the daemon could not
 * take, waits until everything the batch produced is delivered, and only
 * then stores the batch's offsets (librdkafka's auto commit sends them). A
 * crash, a rebalance or a failure anywhere before that means the batch is
 * read again, so the daemon's work must be idempotent.
 *
 * The daemon plugs in (struct consumer_ops, all on the worker thread):
 *
 *   decode(app, msg, why)   a message's value, or NULL with why: invalid,
 *                           dead-lettered, never shown to apply
 *   apply(app, batch)       do the batch's work (items whose value is not
 *                           NULL); it may produce to
 *                           consumer_producer(), dead-letter an item
 *                           (consumer_reject) and block a partition at an
 *                           item (consumer_block: nothing from there on is
 *                           stored, the partition is polled again from it).
 *                           Returns CONSUMER_OK, CONSUMER_RETRY (back off,
 *                           apply the same batch again), CONSUMER_ABANDON
 *                           (drain during an outage: drop it unstored) or
 *                           CONSUMER_FATAL (stop the worker)
 *   delivered(app, batch)   everything the batch produced is delivered; the
 *                           last word before its offsets are stored (may
 *                           ask for a retry). Optional
 *   assigned / revoked      rebalance (eager): partitions gained / lost.
 *                           A revoked partition's items are dropped from
 *                           the batch being collected. Optional
 *   idle(app)               between batches: reconnect, ping. Optional
 *   release(app, value)     free a decoded value
 *
 * The shape follows librdkafka's examples/consumer.c: subscribe, poll with
 * a rebalance callback, consumer_close on the way out. SIGTERM (through
 * daemon_run_worker) lets the batch in hand finish, stores, closes.
 */
#ifndef FLASHSALE_COMMON_CONSUMER_H
#define FLASHSALE_COMMON_CONSUMER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "daemon.h"
#include "kafka.h"
#include "metrics.h"
#include "offsets.h"
#include "util.h"

enum consumer_result {
	CONSUMER_OK = 0,
	CONSUMER_RETRY,
	CONSUMER_ABANDON,
	CONSUMER_FATAL,
};

struct consumer_item {
	rd_kafka_message_t *msg;
	void *value;              /* decode()'s result; NULL when rejected */
	char why[256];            /* why it goes to the dead-letter topic; "" if it does not */
};

struct consumer_batch {
	struct consumer_item *items;
	size_t n;
	int64_t t0_us;            /* mono_us() when its first message arrived */
	struct offsets pos;       /* per partition: first, last, blocked */
};

/* A consuming daemon: what it consumes and produces, and its callbacks. */
struct consumer_ops {
	const char *name;          /* "deductor": client flashsale-<name>, dead letters */
	const char *metric_prefix; /* "deductor", "order_writer" */
	const char *topic;         /* subscribed */
	const char *produce_topic; /* looked up at start by the producer */
	void *(*decode)(void *app, const rd_kafka_message_t *m, char *why, size_t whylen);
	void (*release)(void *app, void *value);
	enum consumer_result (*apply)(void *app, struct consumer_batch *b);
	enum consumer_result (*delivered)(void *app, struct consumer_batch *b);
	void (*assigned)(void *app, const rd_kafka_topic_partition_list_t *parts);
	void (*revoked)(void *app, const rd_kafka_topic_partition_list_t *parts);
	void (*idle)(void *app);
};

/* A consuming daemon's consumer keys (CONSUMER_CF_KEYS). */
struct consumer_settings {
	char *group;
	long long batch_size;
	long long batch_wait_ms;     /* wait for more after a batch's first message */
	long long retry_backoff_ms;  /* first backoff; doubles up to CONSUMER_BACKOFF_MAX_MS */
};

#define CONSUMER_CF_KEYS(sect, s, defgroup, defbatch, maxbatch, defwait) \
	{ sect ".group", CF_STR, &(s).group, defgroup, 0, 0, \
	  "Kafka consumer group this daemon's members join" }, \
	{ sect ".batch_size", CF_INT, &(s).batch_size, defbatch, 1, maxbatch, \
	  "Most messages applied and committed together" }, \
	{ sect ".batch_wait_ms", CF_INT, &(s).batch_wait_ms, defwait, 0, 5000, \
	  "How long a batch keeps collecting after its first message (ms)" }, \
	{ sect ".retry_backoff_ms", CF_INT, &(s).retry_backoff_ms, "200", 10, 5000, \
	  "First wait before a failed batch is applied again; doubles up to 5 s (ms)" }

#define CONSUMER_BACKOFF_MAX_MS 5000

struct consumer;

/*
 * Create the consumer (subscribed) and its producer, and register its
 * metrics (<prefix>_batches_total, _batch_duration_seconds, _batch_size,
 * _messages_total, _deadletters_total, _redo_total{reason}, _lag_messages).
 * ops, kafka and settings must outlive it. Start-up only: NULL with the
 * reason in err.
 */
struct consumer *consumer_new(const struct consumer_ops *ops, const struct kafka_cfg *kafka,
			      const struct consumer_settings *settings, void *app,
			      char *err, size_t errlen) FS_MUSTCHECK;

/*
 * A consuming daemon's life after start-up: start the worker thread, serve
 * signals, /healthz (health, arg) and /metrics on base's listener until the
 * worker drained or stopped, join it. Returns the exit status: 0 after a
 * clean drain, 1 otherwise. Dies if the thread cannot start.
 */
int consumer_run(struct consumer *c, const struct daemon_cfg *base, struct cf_table *table,
		 daemon_health_fn health, void *arg);

void consumer_free(struct consumer *c);

/* The producer the batch's messages (and dead letters) go through. */
rd_kafka_t *consumer_producer(struct consumer *c);

/* Worker thread: a drain was requested. */
bool consumer_stopping(const struct consumer *c);

/* Worker thread: sleep ms in short slices, beating; returns early on a drain. */
void consumer_sleep(struct consumer *c, int64_t ms);

/* *ms doubled, capped at CONSUMER_BACKOFF_MAX_MS (first call: first). */
void consumer_backoff(int64_t *ms, int64_t first);

/* Worker thread: give up on the consumer for good (fatal error); the thread ends. */
void consumer_fail(struct consumer *c);

/* apply: dead-letter item i with why (cleared if the batch is applied again). */
void consumer_reject(struct consumer_batch *b, size_t i, const char *why);

/* apply: nothing of item i's partition from item i on is stored or acted on. */
void consumer_block(struct consumer_batch *b, size_t i);

/* True when item i is at or after its partition's block. */
bool consumer_blocked(const struct consumer_batch *b, size_t i);

/* Any thread: the thread is running and beat within max_age_ms. */
bool consumer_alive(struct consumer *c, int64_t max_age_ms, int64_t *age_ms);

/* Any thread: partitions this member owns now. */
int consumer_assigned(const struct consumer *c);

#endif
