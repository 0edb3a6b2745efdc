/*
 * Per-user token buckets in a fixed table indexed by a hash of the user id:
 * no allocation per user, so a flood of made-up ids costs no memory. Two
 * users whose ids land in one slot do not share tokens: the slot keeps a
 * fingerprint and a newcomer starts with a full bucket (a fairer mistake
 * than refusing an innocent user; an abuser can invent ids anyway).
 * Thread-safe: every event loop of the gateway takes from the same table.
 */
#ifndef FLASHSALE_GATEWAY_RATELIMIT_H
#define FLASHSALE_GATEWAY_RATELIMIT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "util.h"

struct rl_bucket {
	uint32_t fingerprint;
	double tokens;
	int64_t last_us;
};

struct ratelimit {
	pthread_mutex_t mu;       /* the gateway's event loops share one table */
	struct rl_bucket *slots;
	size_t nslots;            /* power of two */
	double rate_per_us;
	double burst;
};

/* Allocate nslots (rounded up to a power of two) buckets. */
int ratelimit_init(struct ratelimit *rl, size_t nslots, double rate_per_s, double burst)
	FS_MUSTCHECK;

/* Change the rate and burst (SIGHUP); buckets keep their tokens, capped. */
void ratelimit_set(struct ratelimit *rl, double rate_per_s, double burst);

/* Take one token for user at now_us (monotonic); false when the bucket is empty. */
bool ratelimit_take(struct ratelimit *rl, const char *user, int64_t now_us);

/* The same with this key's own rate and burst (a promotion's limits). */
bool ratelimit_take_rate(struct ratelimit *rl, const char *key, int64_t now_us,
			 double rate_per_s, double burst);

void ratelimit_free(struct ratelimit *rl);

#endif
