/*
 * Pure batch building for the order-writer: validated ledger events become
 * rows of PostgreSQL's text COPY format for the staging table, and the
 * batch's next offsets become the arrays that raise ledger_offsets. No I/O here, so everything is unit-tested.
 */
#ifndef FLASHSALE_ORDER_WRITER_BATCH_H
#define FLASHSALE_ORDER_WRITER_BATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "intent.h"
#include "offsets.h"
#include "util.h"


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
int batch_buf_append(struct batch_buf *b, const void *p, size_t n) FS_MUSTCHECK;

/*
 * Append s escaped for a text-format COPY field: backslash, tab, newline and
 * carriage return become \\ \t \n \r; every other byte is copied as is.
 */
int batch_copy_escape(struct batch_buf *b, const char *s) FS_MUSTCHECK;

/*
 * Whether the order-writer can store ev at all: non-empty event_id,
 * request_id and sku, and a known kind. -1 with the reason in err.
 */
int batch_event_check(const fs_ledger_event *ev, char *err, size_t errlen) FS_MUSTCHECK;

/*
 * Append one staging row (BATCH_COPY_COLUMNS, tab separated, newline
 * terminated) for a checked event that was read at partition/offset; seq
 * orders the rows within the batch. -1 on out of memory or unknown kind.
 */
int batch_row_append(struct batch_buf *b, const fs_ledger_event *ev,
		     int32_t partition, int64_t offset, int64_t seq) FS_MUSTCHECK;

/*
 * PostgreSQL array literals of the partitions and their next offsets, in the
 * same order ("{0,5}" and "{17,3}"), for unnest() in one statement.
 */
int batch_positions_arrays(const struct offsets_pos *pos, size_t n, struct batch_buf *parts,
			   struct batch_buf *nexts) FS_MUSTCHECK;

#endif
