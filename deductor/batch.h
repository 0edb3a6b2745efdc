/*
 * Batch bookkeeping: which offsets of which partitions a batch holds, where a
 * partition is blocked (the first not_ready intent), and from that which
 * offsets may be stored and where to seek back. Pure: no Kafka, no Redis, so
 * the rules can be unit tested.
 *
 * Offsets of one partition arrive in increasing order within a batch.
 */
#ifndef DEDUCTOR_BATCH_H
#define DEDUCTOR_BATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BATCH_MUSTCHECK __attribute__((warn_unused_result))

struct batch_part {
	int32_t partition;
	int64_t first;     /* offset of the first message of this batch */
	int64_t last;      /* offset of the last message of this batch */
	int64_t blocked;   /* offset of the first not_ready message, or -1 */
};

struct batch {
	struct batch_part *parts;
	size_t nparts, cap;
};

/* One (partition, offset) pair: an offset to store or a position to seek to. */
struct batch_pos {
	int32_t partition;
	int64_t offset;
};

void batch_init(struct batch *b);
void batch_free(struct batch *b);
/* Forget every partition (start of a new batch). */
void batch_reset(struct batch *b);

/* Note that the batch holds message (partition, offset). -1 on out of memory. */
int batch_note(struct batch *b, int32_t partition, int64_t offset) BATCH_MUSTCHECK;

/*
 * A message of the partition answered not_ready: block the partition from
 * that offset on. The lowest blocked offset wins.
 */
void batch_block(struct batch *b, int32_t partition, int64_t offset);

/* Forget every block (the batch is about to be applied again). */
void batch_unblock(struct batch *b);

/* True when the message must not be acted on in this batch. */
bool batch_is_blocked(const struct batch *b, int32_t partition, int64_t offset);

/* True when some partition of the batch is blocked. */
bool batch_any_blocked(const struct batch *b);

/* Drop a partition (revoked): its messages are no longer ours to finish. */
void batch_drop(struct batch *b, int32_t partition);

/* True when the batch holds the partition. */
bool batch_has(const struct batch *b, int32_t partition);

/*
 * Offsets to store once the batch succeeded: last + 1 for a free partition,
 * the blocked offset for a blocked one (nothing when it is blocked at its
 * first message: there is no progress to record). Writes at most n entries
 * into out and returns how many.
 */
size_t batch_store_positions(const struct batch *b, struct batch_pos *out, size_t n);

/* Where blocked partitions must resume: their blocked offsets. */
size_t batch_blocked_positions(const struct batch *b, struct batch_pos *out, size_t n);

/* Where to resume to redo the whole batch: every partition's first offset. */
size_t batch_first_positions(const struct batch *b, struct batch_pos *out, size_t n);

#endif
