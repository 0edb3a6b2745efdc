/*
 * A consumed batch's bookkeeping: which offsets of which partitions it
 * holds, where a partition is blocked (the first message its consumer could
 * not act on yet), and from that which offsets may be stored and where to
 * seek back. Pure: no Kafka, so the rules are unit tested.
 *
 * Offsets of one partition arrive in increasing order within a batch.
 */
#ifndef FLASHSALE_COMMON_OFFSETS_H
#define FLASHSALE_COMMON_OFFSETS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

struct offsets_part {
	int32_t partition;
	int64_t first;     /* offset of the first message of this batch */
	int64_t last;      /* offset of the last message of this batch */
	int64_t blocked;   /* offset of the first message not acted on, or -1 */
};

struct offsets {
	struct offsets_part *parts;
	size_t nparts, cap;
};

/* One (partition, offset) pair: an offset to store or a position to seek to. */
struct offsets_pos {
	int32_t partition;
	int64_t offset;
};

void offsets_init(struct offsets *b);
void offsets_free(struct offsets *b);
/* Forget every partition (start of a new batch). */
void offsets_reset(struct offsets *b);

/* Note that the batch holds message (partition, offset). -1 on out of memory. */
int offsets_note(struct offsets *b, int32_t partition, int64_t offset) FS_MUSTCHECK;

/*
 * A message of the partition cannot be acted on yet: block the partition
 * from that offset on. The lowest blocked offset wins.
 */
void offsets_block(struct offsets *b, int32_t partition, int64_t offset);

/* Forget every block (the batch is about to be applied again). */
void offsets_unblock(struct offsets *b);

/* True when the message must not be acted on in this batch. */
bool offsets_is_blocked(const struct offsets *b, int32_t partition, int64_t offset);

/* True when some partition of the batch is blocked. */
bool offsets_any_blocked(const struct offsets *b);

/* Drop a partition (revoked): its messages are no longer ours to finish. */
void offsets_drop(struct offsets *b, int32_t partition);

/* True when the batch holds the partition. */
bool offsets_has(const struct offsets *b, int32_t partition);

/*
 * Offsets to store once the batch succeeded: last + 1 for a free partition,
 * the blocked offset for a blocked one (nothing when it is blocked at its
 * first message: there is no progress to record). Writes at most n entries
 * into out and returns how many.
 */
size_t offsets_store_positions(const struct offsets *b, struct offsets_pos *out, size_t n);

/* Where blocked partitions must resume: their blocked offsets. */
size_t offsets_blocked_positions(const struct offsets *b, struct offsets_pos *out, size_t n);

/* Where to resume to redo the whole batch: every partition's first offset. */
size_t offsets_first_positions(const struct offsets *b, struct offsets_pos *out, size_t n);

#endif
