/*
 * Long polls waiting for a purchase to move, by request id: the deductor
 * announces every state change on fs:st (push.c), and the loop wakes the
 * waiters of that id at once instead of finding out at its next poll.
 * Intrusive and per loop: a waiter is embedded in the request that waits,
 * adding and removing never allocate, a wake is one bucket walk.
 * Event loop thread only.
 */
#ifndef FLASHSALE_GATEWAY_WAITERS_H
#define FLASHSALE_GATEWAY_WAITERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

struct waiter {
	struct waiter *next;
	struct waiter **pprev;      /* NULL: not in a table */
	uint32_t hash;
	const char *id;             /* owned by the embedding request */
};

struct waiters {
	struct waiter **bucket;
	size_t mask;                /* buckets - 1, a power of two */
	size_t n;
};

/* Start-up: -1 on allocation failure. */
int waiters_init(struct waiters *t) FS_MUSTCHECK;
void waiters_free(struct waiters *t);

/*
 * Add w, waiting for id (which must outlive the membership). The table
 * grows when it can; when it cannot, chains get longer, nothing fails.
 */
void waiters_add(struct waiters *t, struct waiter *w, const char *id);

/* Remove w; nothing when it is not in a table. */
void waiters_remove(struct waiters *t, struct waiter *w);

static inline bool waiters_waiting(const struct waiter *w)
{
	return w->pprev != NULL;
}

/*
 * Call fn(w, arg) for every waiter of id, each removed first (fn may add it
 * back, or free it). The number woken.
 */
size_t waiters_wake(struct waiters *t, const char *id, void (*fn)(struct waiter *w, void *arg),
		    void *arg);

/*
 * Call fn(w, arg) for every waiter, each removed first (fn may add it
 * back): a drain, or pushes that may have been missed. The number woken.
 */
size_t waiters_wake_all(struct waiters *t, void (*fn)(struct waiter *w, void *arg), void *arg);

#endif
