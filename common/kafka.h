/*
 * Kafka helpers shared by every daemon: configuration objects built the same
 * way everywhere (one partitioner, idempotent producers), the topic names,
 * and the dead-letter path.
 */
#ifndef FLASHSALE_COMMON_KAFKA_H
#define FLASHSALE_COMMON_KAFKA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <librdkafka/rdkafka.h>

#include "intent.h"     /* topic names and FS_PARTITIONS: the wire contract */
#include "util.h"

/* Keys every daemon shares; embed in the daemon's cf_key table with KAFKA_CF_KEYS. */
struct kafka_cfg {
	char *bootstrap;     /* kafka.bootstrap: "host:port,host:port" */
	char *settings;      /* kafka.settings: extra "prop=value,prop=value" for librdkafka */
	long long produce_timeout_ms; /* kafka.produce_timeout_ms: message.timeout.ms */
};

#define KAFKA_CF_KEYS(kc) \
	{ "kafka.bootstrap", CF_STR, &(kc).bootstrap, "127.0.0.1:9092", 0, 0, \
	  "Kafka bootstrap servers, comma separated" }, \
	{ "kafka.settings", CF_STR, &(kc).settings, "", 0, 0, \
	  "Extra librdkafka properties, \"prop=value,prop=value\" (TLS, SASL, tuning)" }, \
	{ "kafka.produce_timeout_ms", CF_INT, &(kc).produce_timeout_ms, "5000", 100, 300000, \
	  "How long a produced message may wait for acknowledgement before it fails" }

enum kafka_role {
	KAFKA_PRODUCER,   /* acks=all, idempotent, murmur2_random, small linger */
	KAFKA_CONSUMER,   /* group member, manual offset store, auto commit of stored offsets */
	KAFKA_READER,     /* assign-only reader: never commits, reports partition EOF */
};

/*
 * Build a librdkafka configuration for the role: bootstrap, client.id,
 * kafka.settings applied last. For KAFKA_CONSUMER, group_id names the group
 * (must not be NULL). Returns NULL with a reason in err.
 */
rd_kafka_conf_t *kafka_conf_new(const struct kafka_cfg *kc, enum kafka_role role,
				const char *client_id, const char *group_id,
				char *err, size_t errlen) FS_MUSTCHECK;

/*
 * An idempotent producer (kafka_conf_new KAFKA_PRODUCER) whose delivery
 * reports go to dr_cb and, when error_cb is not NULL, errors to error_cb
 * instead of the logging default; opaque is handed to both. When topic is
 * not NULL the producer starts looking up that topic's leaders at once, so
 * that the first message does not wait for it. NULL with the reason in err.
 */
rd_kafka_t *kafka_producer_new(const struct kafka_cfg *kc, const char *client_id,
			       const char *topic,
			       void (*dr_cb)(rd_kafka_t *, const rd_kafka_message_t *, void *),
			       void (*error_cb)(rd_kafka_t *, int, const char *, void *),
			       void *opaque, char *err, size_t errlen)
	FS_MUSTCHECK;

/* Set one property, with the reason in err on failure. */
int kafka_conf_set(rd_kafka_conf_t *conf, const char *name, const char *value,
		   char *err, size_t errlen) FS_MUSTCHECK;

/*
 * Produce the message m (as consumed) to the dead-letter topic wrapped in a
 * DeadLetter with the reason, without blocking. -1 if it could not be
 * enqueued; the caller decides whether to retry (it must not drop silently).
 */
int kafka_deadletter(rd_kafka_t *producer, const rd_kafka_message_t *m,
		     const char *consumer, const char *reason,
		     char *err, size_t errlen) FS_MUSTCHECK;

/*
 * Poll one batch from a subscribed consumer: wait up to first_ms for a first
 * message, then at most wait_ms more, until max messages. Each message is
 * handed to take(arg, m), which owns it from then on; error events are logged
 * and dropped (partition EOF silently). Returns how many were taken and sets
 * *t0_us (mono_us) to when the first one arrived.
 */
size_t kafka_poll_batch(rd_kafka_t *consumer, size_t max, int first_ms, int wait_ms,
			void (*take)(void *arg, rd_kafka_message_t *m), void *arg,
			int64_t *t0_us);

/*
 * Flush the producer until every enqueued message was delivered or failed,
 * at most timeout_ms. Returns 0 when the out-queue is empty.
 */
int kafka_flush(rd_kafka_t *producer, int timeout_ms) FS_MUSTCHECK;

/*
 * The partition every flashsale producer puts a key on (murmur2, the Java
 * client's default, which kafka_conf_new configures): a SKU's intents and
 * ledger events all live on kafka_partition_of(sku) of their topic.
 */
int32_t kafka_partition_of(const char *key, size_t keylen);

/* An assign-only consumer (KAFKA_READER) for kafka_read_ranges. NULL with err. */
rd_kafka_t *kafka_reader_new(const struct kafka_cfg *kc, const char *client_id,
			     char *err, size_t errlen) FS_MUSTCHECK;

/*
 * The low and high watermarks of one partition, from its leader. After a
 * leader moved, librdkafka may keep asking the old one ("Not leader for
 * partition") until its next periodic metadata refresh, minutes later
 * (a three-node campaign seed stalled a deductor's probe 2.5 min): on an
 * error the topic's metadata is refreshed and the query made once more.
 */
rd_kafka_resp_err_t kafka_watermarks(rd_kafka_t *rk, const char *topic, int32_t partition,
				     int64_t *lo, int64_t *hi, int timeout_ms);

/* Offsets [from, to) of one partition; to is usually a high watermark. */
struct kafka_range {
	int32_t partition;
	int64_t from;
	int64_t to;
};

/*
 * Read every range of topic with the reader rk (kafka_reader_new), handing
 * each message to fn(arg, m) in offset order per partition; fn must not keep
 * m. Ranges with from >= to are skipped. Fails (-1, reason in err) when fn
 * returns -1, or when idle_ms pass without a message while a range is
 * unfinished. The reader is left unassigned either way.
 */
int kafka_read_ranges(rd_kafka_t *rk, const char *topic, const struct kafka_range *r,
		      size_t n, int64_t idle_ms,
		      int (*fn)(void *arg, const rd_kafka_message_t *m), void *arg,
		      char *err, size_t errlen) FS_MUSTCHECK;

#endif
