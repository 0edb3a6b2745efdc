/*
 * The release loop (`run`): one worker thread that, every
 * reconciler.release_interval_ms, sends a RELEASE intent for every hold whose
 * deadline (Redis clock) has passed, and publishes the stock totals.
 *
 * Guarantee: one release per hold in effect. The deductor applies a release
 * at most once per request (deduct.lua moves reserved -> expired once; any
 * later release answers "expired" again and changes nothing), so a duplicate
 * RELEASE after a crash between delivery and marking fs:req rs is a no-op
 * event. We send at most one release per hold per reconciler.release_resend_ms
 * (rs marks the last delivered one), and resend after that period while the
 * hold is still in fs:holds (the intent was lost or is still queued).
 */
#ifndef FLASHSALE_RECONCILER_RELEASE_H
#define FLASHSALE_RECONCILER_RELEASE_H

#include "daemon.h"
#include <stdbool.h>
#include <stddef.h>
#include "util.h"

struct rc_config;
struct release;
struct redisContext;

/* One due hold of a release round. */
struct release_due {
	char rid[FS_ID_MAX + 1];
	char sku[FS_ID_MAX + 1];
	int send;                 /* 1: release it this round */
	int delivered;
};

/* Register the loop's metrics. Start-up only. */
void release_metrics_register(void);

/* Create the producer and start the worker thread; NULL with a reason in err. */
struct release *release_start(const struct rc_config *cfg, char *err, size_t errlen)
	FS_MUSTCHECK;

/*
 * The worker thread, for daemon_run_worker(). Its stop request drains
 * without blocking: the worker finishes its round, flushes the producer,
 * gives the lock back and exits, at most about one round plus
 * kafka.produce_timeout_ms later.
 */
struct daemon_thread *release_thread(struct release *r);

/*
 * Of n due holds (members of fs:holds:<sku> past their deadline a moment
 * ago), mark with send = 1 those to release now: still reserved, and no
 * release sent (the record's rs) within resend_ms before now. *orphans
 * counts those whose record is not reserved while their member is still in
 * fs:holds, which nothing but a bug leaves behind. Blocking; -1 on a Redis
 * error (the context is then unusable).
 */
int release_filter_due(struct redisContext *rc, struct release_due *due, size_t n,
		       long long now, long long resend_ms, size_t *orphans) FS_MUSTCHECK;

/* Join the worker (stopping it first if needed) and free everything. */
void release_free(struct release *r);

/*
 * /healthz: heartbeat and Redis (failed without), fenced partitions and the
 * last automatic repair's failure (degraded while it fails). Any thread.
 */
enum daemon_health release_health(void *release, char *detail, size_t n);

#endif
