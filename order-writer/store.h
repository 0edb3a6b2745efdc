/*
 * The order-writer's SQL: one PostgreSQL connection (worker thread only), a
 * TEMP staging table per connection, and the transaction that applies a
 * batch of staged ledger rows to ledger_events, orders, refusals and
 * ledger_offsets at once.
 */
#ifndef FLASHSALE_OW_STORE_H
#define FLASHSALE_OW_STORE_H

#include <stdbool.h>
#include <stddef.h>

#include "batch.h"

#define STORE_MUSTCHECK __attribute__((warn_unused_result))

enum store_result {
	STORE_OK = 0,
	/*
	 * Transient: connection lost, serialization failure, deadlock, or any
	 * error that is not about the data. The transaction was rolled back (or
	 * the connection dropped); redo the same batch after a backoff.
	 */
	STORE_RETRY = -1,
	/*
	 * SQLSTATE class 22 (data exception) or 23 (integrity constraint): some
	 * row can never be stored as it is. Rolled back; redoing it unchanged
	 * would fail forever.
	 */
	STORE_DATA = -2,
};

struct store;

/* A store for conninfo, not yet connected. NULL on out of memory. */
struct store *store_new(const char *conninfo) STORE_MUSTCHECK;
void store_free(struct store *s);

/*
 * (Re)connect and create the staging table; with apply_schema, also apply
 * common/schema.sql first (start-up). -1 with the reason in err.
 */
int store_connect(struct store *s, bool apply_schema, char *err, size_t errlen) STORE_MUSTCHECK;
void store_disconnect(struct store *s);
bool store_connected(const struct store *s);

/*
 * Round trip to the server when idle, so a lost connection shows in health
 * before the next batch needs it. Disconnects and returns -1 on failure.
 */
int store_ping(struct store *s, char *err, size_t errlen) STORE_MUSTCHECK;

/*
 * One transaction: COPY rows (text format, BATCH_COPY_COLUMNS; may be
 * empty) into the staging table, then insert new ledger_events; with
 * project, also create orders from reservations, move held orders to the
 * first terminal state in the batch, and record refusals; finally raise
 * ledger_offsets to offs. Everything is idempotent, so a batch may be
 * applied any number of times.
 */
enum store_result store_apply(struct store *s, const char *rows, size_t len,
			      const struct batch_offsets *offs, bool project,
			      char *err, size_t errlen) STORE_MUSTCHECK;

#endif
