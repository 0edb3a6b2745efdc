/*
 * Pure batch building for the order-writer: validated ledger events become
 * rows of PostgreSQL's text COPY format for the staging table, and the
 * batch's per-partition high offsets are tracked for ledger_offsets and the
 * Kafka offset store. No I/O here, so everything is unit-tested.
 */
#ifndef FLASHSALE_OW_BATCH_H
#define FLASHSALE_OW_BATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "intent.h"

#define BATCH_MUSTCHECK __attribute__((warn_unused_result))

/*
 * The staging table's columns in the order batch_row_append() writes them.
 * order_state is the orders.state the event leads to (NULL when the event
 * does not touch orders): the C mapping below is the only place it is decided.
 */
#define BATCH_COPY_COLUMNS \
	"seq, event_id, kind, request_id, sku, user_id, qty, state, reason, " \
	"deadline_ms, at_ms, remaining, held, sold, ledger_partition, " \
	"ledger_offset, intent_partition, intent_offset, sku_seq, changed, order_state"

/* A growable byte buffer (always NUL-terminated when cap > 0). */
struct batch_buf {
	char *data;
	size_t len;
	size_t cap;
};

void batch_buf_reset(struct batch_buf *b);
void batch_buf_free(struct batch_buf *b);
int batch_buf_append(struct batch_buf *b, const void *p, size_t n) BATCH_MUSTCHECK;

/*
 * Append s escaped for a text-format COPY field: backslash, tab, newline and
 * carriage return become \\ \t \n \r; every other byte is copied as is.
 */
int batch_copy_escape(struct batch_buf *b, const char *s) BATCH_MUSTCHECK;

/* ledger_events.kind for a LedgerEvent.Kind, NULL when unknown. */
const char *batch_kind_name(int kind);

/*
 * orders.state that an event of this kind leads to: "held" for RESERVED,
 * "paid" / "cancelled" / "expired" for the terminal kinds, NULL for kinds
 * that do not touch orders (refusals, unknown).
 */
const char *batch_order_state(int kind);

/* True for the kinds that end a hold (PAID, CANCELLED, EXPIRED). */
bool batch_kind_terminal(int kind);

/*
 * Whether the order-writer can store ev at all: non-empty event_id,
 * request_id and sku, and a known kind. -1 with the reason in err.
 */
int batch_event_check(const fs_ledger_event *ev, char *err, size_t errlen) BATCH_MUSTCHECK;

/*
 * Append one staging row (BATCH_COPY_COLUMNS, tab separated, newline
 * terminated) for a checked event that was read at partition/offset; seq
 * orders the rows within the batch. -1 on out of memory or unknown kind.
 */
int batch_row_append(struct batch_buf *b, const fs_ledger_event *ev,
		     int32_t partition, int64_t offset, int64_t seq) BATCH_MUSTCHECK;

struct batch_offset {
	int32_t partition;
	int64_t next;          /* highest offset seen + 1 */
};

/* Per-partition next offsets of a batch, in first-seen order. */
struct batch_offsets {
	struct batch_offset *v;
	size_t n;
	size_t cap;
};

void batch_offsets_reset(struct batch_offsets *o);
void batch_offsets_free(struct batch_offsets *o);

/* Note that offset was read from partition (any order). -1 on out of memory. */
int batch_offsets_note(struct batch_offsets *o, int32_t partition, int64_t offset) BATCH_MUSTCHECK;

/*
 * PostgreSQL array literals of the partitions and their next offsets, in the
 * same order ("{0,5}" and "{17,3}"), for unnest() in one statement.
 */
int batch_offsets_arrays(const struct batch_offsets *o, struct batch_buf *parts,
			 struct batch_buf *nexts) BATCH_MUSTCHECK;

#endif
