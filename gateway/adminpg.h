/*
 * One asynchronous PostgreSQL connection for the admin API, through libpq's
 * non-blocking calls driven by libevent: PQconnectStart/PQconnectPoll to
 * connect, PQsendQueryParams and PQconsumeInput/PQisBusy to run. Queries
 * run one at a time in FIFO order (admin traffic is tiny). While PostgreSQL
 * is away submissions fail at once and a timer reconnects in the background.
 */
#ifndef FLASHSALE_GATEWAY_ADMINPG_H
#define FLASHSALE_GATEWAY_ADMINPG_H

#include <stdbool.h>
#include <stddef.h>

#include <libpq-fe.h>
#include "util.h"

struct event_base;
struct event;

#define ADMINPG_MAX_PARAMS 8
#define ADMINPG_MAX_QUEUE 64

/*
 * Result of a query: res is the first result (not owned: cleared after the
 * callback) or NULL with err set when the query or connection failed.
 */
typedef void (*adminpg_cb)(void *arg, const PGresult *res, const char *err);

struct adminpg_job {
	struct adminpg_job *next;
	const char *sql;             /* static text */
	int nparams;
	char *params[ADMINPG_MAX_PARAMS];
	adminpg_cb cb;
	void *arg;
};

enum adminpg_state { ADMINPG_DOWN, ADMINPG_CONNECTING, ADMINPG_READY };

struct adminpg {
	struct event_base *base;
	const char *conninfo;
	PGconn *conn;
	enum adminpg_state state;
	struct event *io_ev;         /* the socket: connect polling or results */
	struct event *retry_ev;
	struct adminpg_job *head, *tail;
	int queued;
	bool running;                /* head was sent */
	PGresult *first;             /* first result of the running query */
	int backoff_ms;
	bool stopping;
};

/* Start connecting in the background. Start-up only: -1 on allocation failure. */
int adminpg_init(struct adminpg *pg, struct event_base *base, const char *conninfo)
	FS_MUSTCHECK;

static inline bool adminpg_ready(const struct adminpg *pg)
{
	return pg->state == ADMINPG_READY;
}

/*
 * Queue a query (a NULL param is SQL NULL); -1 (cb never runs) when not
 * connected or the queue is full.
 */
int adminpg_submit(struct adminpg *pg, const char *sql, int nparams,
		   const char *const *params, adminpg_cb cb, void *arg)
	FS_MUSTCHECK;

/* Close: queued callbacks run with an error. */
void adminpg_free(struct adminpg *pg);

#endif
