/*
 * Redis helpers: one address syntax for every daemon, script loading, and
 * the key layout that the deductor, gateway and reconciler share.
 *
 * Key layout (one Redis instance; every key of a SKU carries the SKU):
 *   fs:ready          string  epoch of the loaded state; absent = state lost:
 *                             the deductor must not sell (it waits)
 *   fs:rebuilds       string  bumped by every rebuild or repair that wrote state
 *                             (the reconciler's release loop reads all SKUs again)
 *   fs:promos         set     SKUs that have a promotion loaded
 *   fs:promo:<sku>    hash    initial remaining held sold limit start_ms
 *                             end_ms hold_ms
 *   fs:users:<sku>    hash    user_id -> units held or paid by that user
 *   fs:holds:<sku>    zset    request_id scored by payment deadline (ms)
 *   fs:req:<rid>      hash    sku user qty o(first outcome) st(state) dl(deadline ms)
 *                             ts(ms of last change) rs(release intent sent, reconciler)
 * States in fs:req st (the API's words): queued reserved paid cancelled
 * expired sold_out limit_reached not_started ended unknown_sku
 */
#ifndef FLASHSALE_COMMON_REDISX_H
#define FLASHSALE_COMMON_REDISX_H

#include <stdbool.h>
#include <stddef.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include "util.h"

struct event_base;

/*
 * How long Redis keeps a request's record (fs:req:<id>): the idempotency
 * horizon for replays. The gateway's "queued" marker, the deductor's record
 * and the reconciler's rebuilt one must agree, so the key is one macro:
 * RECORD_TTL_CF_KEY("deductor.record_ttl_s", cfg.record_ttl_s).
 */
#define RECORD_TTL_CF_KEY(key, var) \
	{ key, CF_INT, &(var), "604800", 60, 315360000, \
	  "Seconds Redis keeps a request's record: the idempotency horizon for replays " \
	  "(the same in the gateway, the deductor and the reconciler)" }

#define REDIS_CF_KEYS(addrvar) \
	{ "redis.address", CF_STR, &(addrvar), "127.0.0.1:6379", 0, 0, \
	  "Redis address: unix:/path/to/socket or host:port" }

/*
 * Connect (blocking, start-up or worker threads only) to "unix:/path" or
 * "host:port" with a connect/command timeout. NULL with a reason in err.
 */
redisContext *redisx_connect(const char *address, int timeout_ms,
			     char *err, size_t errlen) FS_MUSTCHECK;

/*
 * Same address syntax, non-blocking, attached to base: hiredis's libevent
 * adapter, except that a readable socket is read until it is empty, and
 * the events get priority (-1: the base's default).
 */
redisAsyncContext *redisx_connect_async(struct event_base *base, const char *address,
					int priority, char *err, size_t errlen) FS_MUSTCHECK;

/* SCRIPT LOAD src and write its 40-hex sha1 plus NUL into sha. */
int redisx_script_load(redisContext *c, const char *src, char sha[41],
		       char *err, size_t errlen) FS_MUSTCHECK;

/* Redis TIME in milliseconds: the one clock every deadline uses. -1 on error. */
/*
 * The reply r of a command on c that must have worked: r, or NULL (r
 * freed) with "redis <what>: <why>" in err when there was no reply or an
 * error reply.
 */
redisReply *redisx_must(redisContext *c, redisReply *r, const char *what, char *err,
			size_t errlen);

long long redisx_time_ms(redisContext *c, char *err, size_t errlen) FS_MUSTCHECK;

/*
 * A command built in RESP in one buffer, for redisAsyncFormattedCommand or
 * redisAppendFormattedCommand: resp_begin with the argument count, then
 * each argument. hiredis' argv formatting spends a strlen, an sdscatfmt and
 * two appends per argument, a tenth of the gateway's work per admitted
 * purchase (admit.lua takes seven arguments per purchase). A failed
 * allocation sets oom and makes every later call a no-op; the buffer is
 * kept for the next command (resp_begin empties it), freed by resp_free.
 */
struct resp {
	char *buf;
	size_t len, cap;
	bool oom;
};

void resp_begin(struct resp *r, size_t argc);
/* One argument: n bytes at s. */
void resp_arg(struct resp *r, const char *s, size_t n);
/* One argument: prefix and s joined ("fs:promo:" and a SKU), both NUL-terminated. */
void resp_arg2(struct resp *r, const char *prefix, const char *s);
/* One argument: v in decimal. */
void resp_int(struct resp *r, long long v);
void resp_free(struct resp *r);

#endif
