#include "store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "log.h"
#include "pg.h"

struct ow_store {
	char *conninfo;
	PGconn *conn;
	struct batch_buf parts;   /* scratch for the ledger_offsets arrays */
	struct batch_buf nexts;
};

/*
 * Per connection: ON COMMIT DELETE ROWS empties it at every commit (and a
 * rollback discards the COPY), so a batch never sees another's rows. seq
 * keeps the batch's order for the DISTINCT ON picks; order_state carries the
 * C mapping of kind to orders.state (ledger_kind_order_state()).
 */
static const char sql_stage[] =
	"CREATE TEMP TABLE IF NOT EXISTS ledger_stage ("
	" LIKE ledger_events, seq bigint NOT NULL, order_state text"
	") ON COMMIT DELETE ROWS";

static const char sql_copy[] =
	"COPY ledger_stage (" BATCH_COPY_COLUMNS ") FROM STDIN";

/* a) the audit trail: one row per event id, the first copy in the batch wins. */
static const char sql_events[] =
	"INSERT INTO ledger_events (event_id, kind, request_id, sku, user_id, qty,"
	" state, reason, deadline_ms, at_ms, remaining, held, sold,"
	" ledger_partition, ledger_offset, intent_partition, intent_offset, sku_seq,"
	" changed)"
	" SELECT DISTINCT ON (event_id) event_id, kind, request_id, sku, user_id,"
	" qty, state, reason, deadline_ms, at_ms, remaining, held, sold,"
	" ledger_partition, ledger_offset, intent_partition, intent_offset, sku_seq,"
	" changed"
	" FROM ledger_stage ORDER BY event_id, seq"
	" ON CONFLICT (event_id) DO NOTHING";

/*
 * b) a reservation creates its order once; a replayed RESERVED after the
 * order moved on hits the conflict and changes nothing.
 */
static const char sql_orders_insert[] =
	"INSERT INTO orders (request_id, sku, user_id, qty, state, deadline,"
	" created_at, updated_at)"
	" SELECT DISTINCT ON (request_id) request_id, sku, user_id, qty, order_state,"
	" to_timestamp(deadline_ms / 1000.0), to_timestamp(at_ms / 1000.0),"
	" to_timestamp(at_ms / 1000.0)"
	" FROM ledger_stage WHERE order_state = 'held'"
	" ORDER BY request_id, seq"
	" ON CONFLICT (request_id) DO NOTHING";

/*
 * c) state only moves forward: only a held order takes a terminal state, and
 * the first terminal event of the batch is the one the deductor applied
 * (later ones in the same batch are replays of it or refused transitions).
 */
static const char sql_orders_update[] =
	"UPDATE orders SET state = s.order_state,"
	" updated_at = to_timestamp(s.at_ms / 1000.0)"
	" FROM (SELECT DISTINCT ON (request_id) request_id, order_state, at_ms"
	"       FROM ledger_stage"
	"       WHERE order_state IN ('paid', 'cancelled', 'expired')"
	"       ORDER BY request_id, seq) s"
	" WHERE orders.request_id = s.request_id AND orders.state = 'held'";

/* d) refused purchases, once per request id. */
static const char sql_refusals[] =
	"INSERT INTO refusals (request_id, sku, user_id, qty, reason, at)"
	" SELECT DISTINCT ON (request_id) request_id, sku, user_id, qty, reason,"
	" to_timestamp(at_ms / 1000.0)"
	" FROM ledger_stage WHERE kind = 'refused'"
	" ORDER BY request_id, seq"
	" ON CONFLICT DO NOTHING";

/*
 * e) in the same transaction as the rows: PostgreSQL then holds exactly the
 * ledger prefix below next_offset, which `reconciler rebuild` relies on.
 * GREATEST keeps it monotonic when an old batch is redone after a rebalance.
 */
static const char sql_offsets[] =
	"INSERT INTO ledger_offsets (ledger_partition, next_offset)"
	" SELECT p, o FROM unnest($1::integer[], $2::bigint[]) AS t(p, o)"
	" ON CONFLICT (ledger_partition) DO UPDATE"
	" SET next_offset = GREATEST(ledger_offsets.next_offset, EXCLUDED.next_offset)";

/* libpq's COPY length is an int: send big batches in pieces. */
#define OW_STORE_COPY_CHUNK (1024 * 1024)

struct ow_store *ow_store_new(const char *conninfo)
{
	struct ow_store *s = calloc(1, sizeof(*s));

	if (s == NULL)
		return NULL;
	s->conninfo = strdup(conninfo != NULL ? conninfo : "");
	if (s->conninfo == NULL) {
		free(s);
		return NULL;
	}
	return s;
}

void ow_store_disconnect(struct ow_store *s)
{
	if (s->conn != NULL) {
		PQfinish(s->conn);
		s->conn = NULL;
	}
}

void ow_store_free(struct ow_store *s)
{
	if (s == NULL)
		return;
	ow_store_disconnect(s);
	batch_buf_free(&s->parts);
	batch_buf_free(&s->nexts);
	free(s->conninfo);
	free(s);
}

bool ow_store_connected(const struct ow_store *s)
{
	return s->conn != NULL && PQstatus(s->conn) == CONNECTION_OK;
}

int ow_store_connect(struct ow_store *s, bool apply_schema, char *err, size_t errlen)
{
	ow_store_disconnect(s);
	s->conn = pg_connect(s->conninfo, err, errlen);
	if (s->conn == NULL)
		return -1;
	if ((apply_schema && pg_apply_schema(s->conn, err, errlen) < 0) ||
	    pg_exec(s->conn, "SET application_name = 'flashsale-order-writer'", err, errlen) < 0 ||
	    pg_exec(s->conn, sql_stage, err, errlen) < 0) {
		ow_store_disconnect(s);
		return -1;
	}
	return 0;
}

int ow_store_ping(struct ow_store *s, char *err, size_t errlen)
{
	if (!ow_store_connected(s) || pg_exec(s->conn, "SELECT 1", err, errlen) < 0) {
		if (s->conn == NULL)
			snprintf(err, errlen, "not connected to postgres");
		ow_store_disconnect(s);
		return -1;
	}
	return 0;
}

/* Make libpq's message one line: inner newlines become spaces, trailing ones go. */
static void ow_store_trim(char *err)
{
	size_t n;
	char *p;

	for (p = err; *p != '\0'; p++)
		if (*p == '\n' || *p == '\r' || *p == '\t')
			*p = ' ';
	n = strlen(err);
	while (n > 0 && err[n - 1] == ' ')
		err[--n] = '\0';
}

/*
 * Turn a failed step into text and a class, then end the transaction: a
 * data error rolls back and keeps the connection; anything else drops the
 * connection so that the caller reconnects before it redoes the batch.
 */
static enum ow_store_result ow_store_fail(struct ow_store *s, PGresult *r, const char *step,
				    char *err, size_t errlen)
{
	const char *state = r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
	const char *primary = r != NULL ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	const char *detail = r != NULL ? PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL) : NULL;
	enum ow_store_result res = OW_STORE_RETRY;

	/* One line (it travels in logs and dead letters): "step: SQLSTATE message (detail)". */
	if (state != NULL && primary != NULL) {
		snprintf(err, errlen, "%s: %s %s%s%s%s", step, state, primary,
			 detail != NULL ? " (" : "", detail != NULL ? detail : "",
			 detail != NULL ? ")" : "");
	} else {
		const char *msg = r != NULL ? PQresultErrorMessage(r) : NULL;

		if (msg == NULL || msg[0] == '\0')
			msg = PQerrorMessage(s->conn);
		snprintf(err, errlen, "%s: %s", step,
			 msg != NULL && msg[0] != '\0' ? msg : "unknown error");
	}
	ow_store_trim(err);
	if (state != NULL && state[0] == '2' && (state[1] == '2' || state[1] == '3'))
		res = OW_STORE_DATA;
	if (r != NULL)
		PQclear(r);
	if (res == OW_STORE_DATA && PQstatus(s->conn) == CONNECTION_OK) {
		char ignore[256];

		/* Drain what is left of a failed COPY before the rollback. */
		while ((r = PQgetResult(s->conn)) != NULL)
			PQclear(r);
		if (pg_exec(s->conn, "ROLLBACK", ignore, sizeof(ignore)) == 0)
			return OW_STORE_DATA;
	}
	ow_store_disconnect(s);
	return res;
}

/* Run a statement that returns no rows; OW_STORE_OK or the failure class. */
static enum ow_store_result ow_store_step(struct ow_store *s, const char *step, const char *sql,
				    int nparams, const char *const *params,
				    char *err, size_t errlen)
{
	PGresult *r;

	if (nparams > 0)
		r = PQexecParams(s->conn, sql, nparams, NULL, params, NULL, NULL, 0);
	else
		r = PQexec(s->conn, sql);
	if (r == NULL || PQresultStatus(r) != PGRES_COMMAND_OK)
		return ow_store_fail(s, r, step, err, errlen);
	log_debug("ow_store_step", "step=%s rows=%s", step, PQcmdTuples(r));
	PQclear(r);
	return OW_STORE_OK;
}

static enum ow_store_result ow_store_copy(struct ow_store *s, const char *rows, size_t len,
				    char *err, size_t errlen)
{
	PGresult *r = PQexec(s->conn, sql_copy);
	size_t off;

	if (r == NULL || PQresultStatus(r) != PGRES_COPY_IN)
		return ow_store_fail(s, r, "copy", err, errlen);
	PQclear(r);
	for (off = 0; off < len; off += OW_STORE_COPY_CHUNK) {
		size_t n = len - off < OW_STORE_COPY_CHUNK ? len - off : OW_STORE_COPY_CHUNK;

		if (PQputCopyData(s->conn, rows + off, (int)n) != 1)
			return ow_store_fail(s, NULL, "copy", err, errlen);
	}
	if (PQputCopyEnd(s->conn, NULL) != 1)
		return ow_store_fail(s, NULL, "copy", err, errlen);
	r = PQgetResult(s->conn);
	if (r == NULL || PQresultStatus(r) != PGRES_COMMAND_OK)
		return ow_store_fail(s, r, "copy", err, errlen);
	PQclear(r);
	while ((r = PQgetResult(s->conn)) != NULL)
		PQclear(r);
	return OW_STORE_OK;
}

enum ow_store_result ow_store_apply(struct ow_store *s, const char *rows, size_t len,
				    const struct offsets_pos *next, size_t nnext, bool project,
				    char *err, size_t errlen)
{
	enum ow_store_result res;

	if (!ow_store_connected(s)) {
		snprintf(err, errlen, "not connected to postgres");
		ow_store_disconnect(s);
		return OW_STORE_RETRY;
	}
	if ((res = ow_store_step(s, "begin", "BEGIN", 0, NULL, err, errlen)) != OW_STORE_OK)
		return res;
	if (len > 0) {
		if ((res = ow_store_copy(s, rows, len, err, errlen)) != OW_STORE_OK ||
		    (res = ow_store_step(s, "ledger_events", sql_events, 0, NULL, err, errlen)) != OW_STORE_OK)
			return res;
		if (project &&
		    ((res = ow_store_step(s, "orders_insert", sql_orders_insert, 0, NULL,
				       err, errlen)) != OW_STORE_OK ||
		     (res = ow_store_step(s, "orders_update", sql_orders_update, 0, NULL,
				       err, errlen)) != OW_STORE_OK ||
		     (res = ow_store_step(s, "refusals", sql_refusals, 0, NULL,
				       err, errlen)) != OW_STORE_OK))
			return res;
	}
	if (nnext > 0) {
		const char *params[2];

		if (batch_positions_arrays(next, nnext, &s->parts, &s->nexts) < 0) {
			char ignore[256];

			snprintf(err, errlen, "out of memory");
			if (pg_exec(s->conn, "ROLLBACK", ignore, sizeof(ignore)) < 0)
				ow_store_disconnect(s);
			return OW_STORE_RETRY;
		}
		params[0] = s->parts.data;
		params[1] = s->nexts.data;
		if ((res = ow_store_step(s, "ledger_offsets", sql_offsets, 2, params,
				      err, errlen)) != OW_STORE_OK)
			return res;
	}
	return ow_store_step(s, "commit", "COMMIT", 0, NULL, err, errlen);
}
