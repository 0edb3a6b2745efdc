/*
 * The guard against a Redis that went back in time (a failover to a lagging
 * replica, a restored snapshot). The ledger in Kafka is the truth of what
 * Redis already did, so the guard keeps what the ledger shows Redis must
 * hold:
 *   - per intents partition, the highest offset of an intent that changed
 *     Redis and whose event reached the ledger (Redis keeps its own in
 *     fs:wm, written by the same atomic step as each change);
 *   - per SKU, the highest sku_seq on the ledger (Redis keeps it in the
 *     SKU's promotion hash, so it holds per shard once Redis is sharded).
 * Every step passes both as a floor (step_args); deduct.lua refuses and
 * fences the partition (fs:fence) when Redis is below either. The guard
 * learns from every event it saw delivered, and from the ledger's tail when
 * it gets a partition (guard_probe); after a Redis reconnect it compares at
 * once (guard_verify) so that /healthz tells the truth before traffic comes.
 *
 * Worker thread only, except the fence notes (guard_note_*, guard_health),
 * which are locked because /healthz reads them from the main thread.
 */
#ifndef FLASHSALE_DEDUCTOR_GUARD_H
#define FLASHSALE_DEDUCTOR_GUARD_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>
#include <librdkafka/rdkafka.h>

#include "intent.h"
#include "kafka.h"
#include "step.h"
#include "strmap.h"
#include "util.h"

#define GUARD_WHY_MAX 192

struct guard_fence {
	int64_t since_ms;                /* wall clock; 0 when not fenced */
	char why[GUARD_WHY_MAX];         /* deduct.lua's reason */
	char sku[FS_ID_MAX + 1];         /* a SKU whose intent met the fence */
};

struct dd_guard {
	int64_t wm[FS_PARTITIONS];       /* -1: nothing known */
	bool owned[FS_PARTITIONS];       /* assigned to this member */
	bool probed[FS_PARTITIONS];      /* ledger tail read since assigned */
	struct strmap seq;               /* sku -> highest sku_seq on the ledger */
	size_t seq_max;                  /* forget every SKU past this many */

	pthread_mutex_t mu;              /* fence[] and nfenced */
	struct guard_fence fence[FS_PARTITIONS];
	int nfenced;
};

/* seq_max bounds the per-SKU memory; -1 on failure (mutex). */
int guard_init(struct dd_guard *g, size_t seq_max) FS_MUSTCHECK;
void guard_free(struct dd_guard *g);

/* The floors for the step of intent in at (partition, offset). */
void guard_args(const struct dd_guard *g, const fs_intent *in, int32_t partition,
		int64_t offset, struct step_args *out);

/*
 * A changing event is on the ledger: it was applied to Redis by the intent at
 * (intent_partition, intent_offset) (-1 for events no intent made) and left
 * the SKU at sku_seq. Raise the floors. -1 only when out of memory.
 */
int guard_learn(struct dd_guard *g, const char *sku, int64_t intent_partition,
		int64_t intent_offset, int64_t sku_seq) FS_MUSTCHECK;

/* Rebalance: these partitions are ours now (to be probed) / no longer. */
void guard_assigned(struct dd_guard *g, const rd_kafka_topic_partition_list_t *parts);
void guard_revoked(struct dd_guard *g, const rd_kafka_topic_partition_list_t *parts);

/* True when some partition is owned but not probed yet. */
bool guard_needs_probe(const struct dd_guard *g);

/*
 * Read back the last `events` ledger events of every owned, unprobed
 * partition (one reader pass, up to the high watermarks taken first) and
 * learn from them. 0 when all were read; -1 with err (retry later).
 */
int guard_probe(struct dd_guard *g, rd_kafka_t *reader, long long events,
		long long timeout_ms, char *err, size_t errlen) FS_MUSTCHECK;

/*
 * Compare fs:wm with the floors of every owned, probed partition, fencing
 * (fs:fence) those Redis is behind on, and note every fence found. -1 with
 * err on a Redis error.
 */
int guard_verify(struct dd_guard *g, redisContext *c, char *err, size_t errlen) FS_MUSTCHECK;

/*
 * A step of partition met a fence (why from deduct.lua) for sku / succeeded.
 * True when that changed the partition's state (log it).
 */
bool guard_note_fenced(struct dd_guard *g, int32_t partition, const char *sku, const char *why);
bool guard_note_clear(struct dd_guard *g, int32_t partition);

/* Fenced partitions now (any thread). */
int guard_fenced_count(struct dd_guard *g);

/*
 * Append to out (NUL-terminated, at most n) the JSON array of fenced
 * partitions: [{"partition":3,"sku":"x","since_ms":...,"why":"..."}]. Any thread.
 */
void guard_fences_json(struct dd_guard *g, char *out, size_t n);

#endif
