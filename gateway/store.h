/*
 * The gateway's one asynchronous Redis connection: connect, reconnect with
 * backoff after a loss, and the few commands the gateway sends. Nothing here
 * blocks; while Redis is away commands are refused at once (the caller
 * answers 503) instead of queueing behind a dead socket.
 */
#ifndef FLASHSALE_GATEWAY_STORE_H
#define FLASHSALE_GATEWAY_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "redisx.h"
#include "util.h"

struct event_base;
struct event;

struct gw_store {
	struct event_base *base;
	const char *address;
	redisAsyncContext *ac;      /* NULL while disconnected */
	bool connected;             /* connect callback said OK */
	bool stopping;              /* no reconnect after gw_store_close */
	struct event *retry_ev;
	int backoff_ms;
	long long connects;         /* successful connects, for logs */
	void (*on_connect)(void *arg); /* after every successful connect, if set */
	void *on_connect_arg;
	int priority;               /* of its events; -1: the loop's default */
};

/*
 * Start connecting (never blocks); its events get priority (-1: the loop's
 * default). Start-up only: -1 on allocation failure.
 */
int gw_store_init(struct gw_store *s, struct event_base *base, const char *address,
		  int priority) FS_MUSTCHECK;

static inline bool gw_store_ready(const struct gw_store *s)
{
	return s->ac != NULL && s->connected;
}

/*
 * Send one command; fn(ac, reply, privdata) runs later with reply NULL if
 * the connection is lost first. -1 (and fn never runs) when not connected.
 */
int gw_store_command_argv(struct gw_store *s, redisCallbackFn *fn, void *privdata,
			  int argc, const char **argv, const size_t *argvlen) FS_MUSTCHECK;
/* The same with a command already in RESP (struct resp, redisx.h): len bytes at cmd. */
int gw_store_command_resp(struct gw_store *s, redisCallbackFn *fn, void *privdata,
			  const char *cmd, size_t len) FS_MUSTCHECK;

/*
 * A reply as an integer: an integer reply, or a string holding only a
 * decimal number. Anything else (NULL included) gives 0 and sets *ok to
 * false, so that several fields can be read before one check.
 */
int64_t gw_store_reply_int(const redisReply *r, bool *ok);

/*
 * Drop the connection now (Redis stopped answering without closing it):
 * pending callbacks run with reply NULL, and a reconnect is scheduled.
 */
void gw_store_reset(struct gw_store *s);

/* Graceful: let sent commands get their replies, then disconnect; no reconnect. */
void gw_store_close(struct gw_store *s);

/* Free whatever is left (pending callbacks run with reply NULL). */
void gw_store_free(struct gw_store *s);

#endif
