#include "pg.h"

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

int pg_apply_schema(PGconn *c, char *err, size_t errlen)
{
	char lock[128];

	if (pg_exec(c, "BEGIN", err, errlen) < 0)
		return -1;
	snprintf(lock, sizeof(lock), "SELECT pg_advisory_xact_lock(%lld)", FS_SCHEMA_LOCK_KEY);
	if (pg_exec(c, lock, err, errlen) < 0 ||
	    pg_exec(c, fs_schema_sql, err, errlen) < 0 ||
	    pg_exec(c, "COMMIT", err, errlen) < 0) {
		/*
		 * The lock is transaction-scoped: the rollback releases it. Its
		 * own failure (connection gone) adds nothing to err.
		 */
		PQclear(PQexec(c, "ROLLBACK"));
		return -1;
	}
	return 0;
}
