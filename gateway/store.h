/*
 * The gateway's one asynchronous Redis connection: connect, reconnect with
 * backoff after a loss, and the few commands the gateway sends. Nothing here
 * blocks; while Redis is away commands are refused at once (the caller
 * answers 503) instead of queueing behind a dead socket.
 */
#ifndef GATEWAY_STORE_H
#define GATEWAY_STORE_H

#include <stdbool.h>
#include <stddef.h>

#include "redisx.h"

struct event_base;
struct event;

struct store {
	struct event_base *base;
	const char *address;
	redisAsyncContext *ac;      /* NULL while disconnected */
	bool connected;             /* connect callback said OK */
	bool stopping;              /* no reconnect after store_close */
	struct event *retry_ev;
	int backoff_ms;
	long long connects;         /* successful connects, for logs */
};

/* Start connecting (never blocks). Start-up only: -1 on allocation failure. */
int store_init(struct store *s, struct event_base *base, const char *address)
	__attribute__((warn_unused_result));

static inline bool store_ready(const struct store *s)
{
	return s->ac != NULL && s->connected;
}

/*
 * Send one command; fn(ac, reply, privdata) runs later with reply NULL if
 * the connection is lost first. -1 (and fn never runs) when not connected.
 */
int store_command_argv(struct store *s, redisCallbackFn *fn, void *privdata,
		       int argc, const char **argv, const size_t *argvlen)
	__attribute__((warn_unused_result));

/*
 * Fire-and-forget "queued" marker for an accepted purchase: HSETNX st so the
 * deductor's own record (field o, st overwritten) always wins, EXPIRE NX so
 * the deductor's TTL is not shortened.
 */
void store_mark_queued(struct store *s, const char *request_id, long long ttl_s);

/*
 * Drop the connection now (Redis stopped answering without closing it):
 * pending callbacks run with reply NULL, and a reconnect is scheduled.
 */
void store_reset(struct store *s);

/* Graceful: let sent commands get their replies, then disconnect; no reconnect. */
void store_close(struct store *s);

/* Free whatever is left (pending callbacks run with reply NULL). */
void store_free(struct store *s);

#endif
