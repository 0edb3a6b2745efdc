#include "pg.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "log.h"

/* common/schema.sql, embedded at build time by embed.py. */
extern const char fs_schema_sql[];

/*
 * Arbitrary constant shared by every process applying the schema: two
 * daemons starting at once would otherwise race on CREATE TABLE IF NOT
 * EXISTS (which is not safe against concurrent creators).
 */
#define FS_SCHEMA_LOCK_KEY 0x666c617368LL /* "flash" */

/*
 * Copy a libpq message as one line: errors end up in logfmt lines, where a
 * newline would split the event (libpq adds "LINE 1: ..." and a caret line).
 */
static void pg_copy_error(char *err, size_t errlen, const char *prefix, const char *msg)
{
	size_t o, n;

	if (errlen == 0)
		return;
	snprintf(err, errlen, "%s", prefix);
	o = strlen(err);
	for (const char *p = msg != NULL ? msg : "unknown error"; *p != '\0' && o + 1 < errlen; p++) {
		char ch = *p;

		if (ch == '\n' || ch == '\r' || ch == '\t')
			ch = ' ';
		/* collapse runs of blanks */
		if (ch == ' ' && o > 0 && err[o - 1] == ' ')
			continue;
		err[o++] = ch;
	}
	err[o] = '\0';
	n = o;
	while (n > 0 && err[n - 1] == ' ')
		err[--n] = '\0';
}

/* Server notices (e.g. "already exists, skipping") go through our logger. */
static void pg_notice(void *arg, const char *message)
{
	char line[1024];
	char quoted[1100];

	(void)arg;
	pg_copy_error(line, sizeof(line), "", message);
	if (strncmp(line, "WARNING", 7) == 0)
		log_warn("pg_notice", "msg=\"%s\"", log_quote(quoted, sizeof(quoted), line));
	else
		log_debug("pg_notice", "msg=\"%s\"", log_quote(quoted, sizeof(quoted), line));
}

PGconn *pg_connect(const char *conninfo, char *err, size_t errlen)
{
	PGconn *c = PQconnectdb(conninfo);

	if (c == NULL) {
		snprintf(err, errlen, "postgres: out of memory");
		return NULL;
	}
	if (PQstatus(c) != CONNECTION_OK) {
		pg_copy_error(err, errlen, "postgres: ", PQerrorMessage(c));
		PQfinish(c);
		return NULL;
	}
	PQsetNoticeProcessor(c, pg_notice, NULL);
	return c;
}

int pg_exec(PGconn *c, const char *sql, char *err, size_t errlen)
{
	PGresult *r = PQexec(c, sql);
	ExecStatusType st;

	if (r == NULL) {
		pg_copy_error(err, errlen, "postgres: ", PQerrorMessage(c));
		return -1;
	}
	st = PQresultStatus(r);
	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
		const char *msg = PQresultErrorMessage(r);

		pg_copy_error(err, errlen, "postgres: ",
			      msg != NULL && msg[0] != '\0' ? msg : PQresStatus(st));
		PQclear(r);
		return -1;
	}
	PQclear(r);
	return 0;
}

/*
 * The schema's identity: FNV-1a of its text. A database that records this
 * hash in flashsale_schema has exactly this schema, so start-up runs no DDL:
 * CREATE ... IF NOT EXISTS still takes table locks, which would queue behind
 * (or deadlock with) a running writer's batch.
 */
static unsigned long long schema_hash(void)
{
	unsigned long long h = 14695981039346656037ULL;

	for (const unsigned char *p = (const unsigned char *)fs_schema_sql; *p != '\0'; p++)
		h = (h ^ *p) * 1099511628211ULL;
	return h;
}

int pg_apply_schema(PGconn *c, char *err, size_t errlen)
{
	char sql[160];
	PGresult *r;
	bool current;

	snprintf(sql, sizeof(sql), "SELECT 1 FROM flashsale_schema WHERE hash = '%016llx'",
		 schema_hash());
	/* An error here is a database without the table yet: apply below. */
	r = PQexec(c, sql);
	current = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
	PQclear(r);
	if (current)
		return 0;

	if (pg_exec(c, "BEGIN", err, errlen) < 0)
		return -1;
	snprintf(sql, sizeof(sql), "SELECT pg_advisory_xact_lock(%lld)", FS_SCHEMA_LOCK_KEY);
	if (pg_exec(c, sql, err, errlen) < 0 ||
	    pg_exec(c, fs_schema_sql, err, errlen) < 0)
		goto fail;
	snprintf(sql, sizeof(sql), "INSERT INTO flashsale_schema (hash) VALUES ('%016llx') "
		 "ON CONFLICT DO NOTHING", schema_hash());
	if (pg_exec(c, sql, err, errlen) < 0 || pg_exec(c, "COMMIT", err, errlen) < 0)
		goto fail;
	return 0;
fail:
	/*
	 * The lock is transaction-scoped: the rollback releases it. Its own
	 * failure (connection gone) adds nothing to err.
	 */
	PQclear(PQexec(c, "ROLLBACK"));
	return -1;
}
