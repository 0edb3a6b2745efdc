#include "adminpg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "log.h"

#define ADMINPG_BACKOFF_MIN_MS 500
#define ADMINPG_BACKOFF_MAX_MS 10000

static void adminpg_connect(struct adminpg *pg);
static void adminpg_kick(struct adminpg *pg);

static void adminpg_job_free(struct adminpg_job *j)
{
	for (int i = 0; i < j->nparams; i++)
		free(j->params[i]);
	free(j);
}

/* Fail every queued job with err (connection lost or shutting down). */
static void adminpg_fail_all(struct adminpg *pg, const char *err)
{
	struct adminpg_job *j;

	while ((j = pg->head) != NULL) {
		pg->head = j->next;
		pg->queued--;
		j->cb(j->arg, NULL, err);
		adminpg_job_free(j);
	}
	pg->tail = NULL;
	pg->running = false;
	if (pg->first != NULL) {
		PQclear(pg->first);
		pg->first = NULL;
	}
}

static void adminpg_set_io(struct adminpg *pg, short what,
			   void (*cb)(evutil_socket_t, short, void *))
{
	if (pg->io_ev != NULL) {
		event_free(pg->io_ev);
		pg->io_ev = NULL;
	}
	if (what == 0)
		return;
	pg->io_ev = event_new(pg->base, PQsocket(pg->conn), what, cb, pg);
	if (pg->io_ev == NULL || event_add(pg->io_ev, NULL) < 0)
		log_error("pg_event_failed", "msg=\"cannot watch the PostgreSQL socket\"");
}

static void adminpg_down(struct adminpg *pg, const char *why)
{
	char q[512];
	struct timeval tv;

	log_warn("pg_down", "retry_ms=%d msg=\"%s\"", pg->backoff_ms,
		 log_quote(q, sizeof(q), why));
	adminpg_set_io(pg, 0, NULL);
	if (pg->conn != NULL) {
		PQfinish(pg->conn);
		pg->conn = NULL;
	}
	pg->state = ADMINPG_DOWN;
	adminpg_fail_all(pg, "PostgreSQL connection lost");
	if (pg->stopping)
		return;
	tv.tv_sec = pg->backoff_ms / 1000;
	tv.tv_usec = (pg->backoff_ms % 1000) * 1000;
	evtimer_add(pg->retry_ev, &tv);
	pg->backoff_ms *= 2;
	if (pg->backoff_ms > ADMINPG_BACKOFF_MAX_MS)
		pg->backoff_ms = ADMINPG_BACKOFF_MAX_MS;
}

static void adminpg_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	adminpg_connect(arg);
}

/* Results (or a server close) on the ready connection. */
static void adminpg_io_cb(evutil_socket_t fd, short what, void *arg)
{
	struct adminpg *pg = arg;
	struct adminpg_job *j;
	PGresult *res;

	if (what & EV_WRITE) {
		int f = PQflush(pg->conn);

		if (f < 0) {
			adminpg_down(pg, PQerrorMessage(pg->conn));
			return;
		}
		if (f == 0)
			adminpg_set_io(pg, EV_READ | EV_PERSIST, adminpg_io_cb);
		if (!(what & EV_READ))
			return;
	}
	if (!PQconsumeInput(pg->conn) || PQstatus(pg->conn) == CONNECTION_BAD) {
		adminpg_down(pg, PQerrorMessage(pg->conn));
		return;
	}
	while (pg->running && !PQisBusy(pg->conn)) {
		res = PQgetResult(pg->conn);
		if (res != NULL) {
			if (pg->first == NULL)
				pg->first = res;
			else
				PQclear(res);
			continue;
		}
		/* NULL: the query is complete. */
		j = pg->head;
		pg->head = j->next;
		if (pg->head == NULL)
			pg->tail = NULL;
		pg->queued--;
		pg->running = false;
		res = pg->first;
		pg->first = NULL;
		if (res == NULL)
			j->cb(j->arg, NULL, "no result");
		else if (PQresultStatus(res) != PGRES_TUPLES_OK &&
			 PQresultStatus(res) != PGRES_COMMAND_OK)
			j->cb(j->arg, NULL, PQresultErrorMessage(res));
		else
			j->cb(j->arg, res, NULL);
		PQclear(res);
		adminpg_job_free(j);
		/* The callback may have failed the connection or queued more. */
		if (pg->state != ADMINPG_READY)
			return;
		adminpg_kick(pg);
	}
}

/* Send the head job if nothing runs. */
static void adminpg_kick(struct adminpg *pg)
{
	struct adminpg_job *j = pg->head;
	int f;

	if (pg->running || j == NULL || pg->state != ADMINPG_READY)
		return;
	if (!PQsendQueryParams(pg->conn, j->sql, j->nparams, NULL,
			       (const char *const *)j->params, NULL, NULL, 0)) {
		adminpg_down(pg, PQerrorMessage(pg->conn));
		return;
	}
	pg->running = true;
	f = PQflush(pg->conn);
	if (f < 0) {
		adminpg_down(pg, PQerrorMessage(pg->conn));
		return;
	}
	adminpg_set_io(pg, f == 1 ? EV_READ | EV_WRITE | EV_PERSIST : EV_READ | EV_PERSIST,
		       adminpg_io_cb);
}

static void adminpg_connect_cb(evutil_socket_t fd, short what, void *arg)
{
	struct adminpg *pg = arg;

	switch (PQconnectPoll(pg->conn)) {
	case PGRES_POLLING_READING:
		adminpg_set_io(pg, EV_READ, adminpg_connect_cb);
		break;
	case PGRES_POLLING_WRITING:
		adminpg_set_io(pg, EV_WRITE, adminpg_connect_cb);
		break;
	case PGRES_POLLING_OK:
		if (PQsetnonblocking(pg->conn, 1) != 0) {
			adminpg_down(pg, PQerrorMessage(pg->conn));
			break;
		}
		pg->state = ADMINPG_READY;
		pg->backoff_ms = ADMINPG_BACKOFF_MIN_MS;
		log_info("pg_connected", "server_version=%d", PQserverVersion(pg->conn));
		adminpg_set_io(pg, EV_READ | EV_PERSIST, adminpg_io_cb);
		break;
	default:
		adminpg_down(pg, PQerrorMessage(pg->conn));
		break;
	}
}

static void adminpg_connect(struct adminpg *pg)
{
	if (pg->stopping || pg->conn != NULL)
		return;
	pg->conn = PQconnectStart(pg->conninfo);
	if (pg->conn == NULL) {
		adminpg_down(pg, "out of memory");
		return;
	}
	if (PQstatus(pg->conn) == CONNECTION_BAD) {
		adminpg_down(pg, PQerrorMessage(pg->conn));
		return;
	}
	pg->state = ADMINPG_CONNECTING;
	/* The first poll is done as if the socket were writable (libpq docs). */
	adminpg_set_io(pg, EV_WRITE, adminpg_connect_cb);
}

int adminpg_init(struct adminpg *pg, struct event_base *base, const char *conninfo)
{
	memset(pg, 0, sizeof(*pg));
	pg->base = base;
	pg->conninfo = conninfo;
	pg->backoff_ms = ADMINPG_BACKOFF_MIN_MS;
	pg->retry_ev = evtimer_new(base, adminpg_retry_cb, pg);
	if (pg->retry_ev == NULL)
		return -1;
	adminpg_connect(pg);
	return 0;
}

int adminpg_submit(struct adminpg *pg, const char *sql, int nparams,
		   const char *const *params, adminpg_cb cb, void *arg)
{
	struct adminpg_job *j;

	if (pg->state != ADMINPG_READY || pg->queued >= ADMINPG_MAX_QUEUE ||
	    nparams > ADMINPG_MAX_PARAMS)
		return -1;
	j = calloc(1, sizeof(*j));
	if (j == NULL)
		return -1;
	j->sql = sql;
	j->cb = cb;
	j->arg = arg;
	for (int i = 0; i < nparams; i++) {
		/* NULL is SQL NULL (libpq takes it as such). */
		j->params[i] = params[i] != NULL ? strdup(params[i]) : NULL;
		if (params[i] != NULL && j->params[i] == NULL) {
			adminpg_job_free(j);
			return -1;
		}
		j->nparams = i + 1;
	}
	if (pg->tail != NULL)
		pg->tail->next = j;
	else
		pg->head = j;
	pg->tail = j;
	pg->queued++;
	adminpg_kick(pg);
	return 0;
}

void adminpg_free(struct adminpg *pg)
{
	pg->stopping = true;
	if (pg->base == NULL)
		return;
	adminpg_set_io(pg, 0, NULL);
	adminpg_fail_all(pg, "shutting down");
	if (pg->conn != NULL) {
		PQfinish(pg->conn);
		pg->conn = NULL;
	}
	if (pg->retry_ev != NULL) {
		event_free(pg->retry_ev);
		pg->retry_ev = NULL;
	}
	pg->state = ADMINPG_DOWN;
}
