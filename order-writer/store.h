/*
 * The order-writer's SQL: one PostgreSQL connection (worker thread only), a
 * TEMP staging table per connection, and the transaction that applies a
 * batch of staged ledger rows to ledger_events, orders, refusals and
 * ledger_offsets at once.
 */
#ifndef FLASHSALE_ORDER_WRITER_STORE_H
#define FLASHSALE_ORDER_WRITER_STORE_H

#include <stdbool.h>
#include <stddef.h>

#include "batch.h"


enum ow_store_result {
	OW_STORE_OK = 0,
	/*
	 * Transient: connection lost, serialization failure, deadlock, or any
	 * error that is not about the data. The transaction was rolled back (or
	 * the connection dropped); redo the same batch after a backoff.
	 */
	OW_STORE_RETRY = -1,
	/*
	 * SQLSTATE class 22 (data exception) or 23 (integrity constraint): some
	 * row can never be stored as it is. Rolled back; redoing it unchanged
	 * would fail forever.
	 */
	OW_STORE_DATA = -2,
};

struct ow_store;

/* A store for conninfo, not yet connected. NULL on out of memory. */
struct ow_store *ow_store_new(const char *conninfo) FS_MUSTCHECK;
void ow_store_free(struct ow_store *s);

/*
 * (Re)connect and create the staging table; with apply_schema, also apply
 * common/schema.sql first (start-up). -1 with the reason in err.
 */
int ow_store_connect(struct ow_store *s, bool apply_schema, char *err, size_t errlen) FS_MUSTCHECK;
void ow_store_disconnect(struct ow_store *s);
bool ow_store_connected(const struct ow_store *s);

/*
 * Round trip to the server when idle, so a lost connection shows in health
 * before the next batch needs it. Disconnects and returns -1 on failure.
 */
int ow_store_ping(struct ow_store *s, char *err, size_t errlen) FS_MUSTCHECK;

/*
 * One transaction: COPY rows (text format, BATCH_COPY_COLUMNS; may be
 * empty) into the staging table, then insert new ledger_events; with
 * project, also create orders from reservations, move held orders to the
 * first terminal state in the batch, and record refusals; finally raise
 * ledger_offsets to next (the partitions' next offsets). Everything is idempotent, so a batch may be
 * applied any number of times.
 */
enum ow_store_result ow_store_apply(struct ow_store *s, const char *rows, size_t len,
				    const struct offsets_pos *next, size_t nnext, bool project,
				    char *err, size_t errlen) FS_MUSTCHECK;

#endif
