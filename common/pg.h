/*
 * PostgreSQL helpers: connection with a clear error, and statement execution
 * that turns every failure into text in the caller's buffer.
 */
#ifndef FLASHSALE_COMMON_PG_H
#define FLASHSALE_COMMON_PG_H

#include <stddef.h>
#include <libpq-fe.h>
#include "util.h"

#define PG_CF_KEYS(connvar) \
	{ "postgres.conninfo", CF_STR, &(connvar), "host=/run/postgresql dbname=flashsale", 0, 0, \
	  "libpq connection string (host= may be a Unix socket directory; may hold a password)", \
	  false, true }

/* Blocking connect; NULL with the server's message in err. */
PGconn *pg_connect(const char *conninfo, char *err, size_t errlen) FS_MUSTCHECK;

/*
 * Run a command that returns no rows (or whose rows are not wanted).
 * -1 with the error text in err.
 */
int pg_exec(PGconn *c, const char *sql, char *err, size_t errlen) FS_MUSTCHECK;

/* Apply the schema (embedded common/schema.sql); idempotent. */
int pg_apply_schema(PGconn *c, char *err, size_t errlen) FS_MUSTCHECK;

#endif
