#include "ratelimit.h"

#include <stdlib.h>
#include <string.h>

/* FNV-1a, 64 bit: low bits index the slot, high bits are the fingerprint. */
static uint64_t rl_hash(const char *s)
{
	uint64_t h = 1469598103934665603ULL;

	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 1099511628211ULL;
	}
	return h;
}

int ratelimit_init(struct ratelimit *rl, size_t nslots, double rate_per_s, double burst)
{
	size_t n = 1;

	memset(rl, 0, sizeof(*rl));
	while (n < nslots)
		n <<= 1;
	rl->slots = calloc(n, sizeof(*rl->slots));
	if (rl->slots == NULL || pthread_mutex_init(&rl->mu, NULL) != 0) {
		free(rl->slots);
		rl->slots = NULL;
		return -1;
	}
	rl->nslots = n;
	ratelimit_set(rl, rate_per_s, burst);
	return 0;
}

void ratelimit_set(struct ratelimit *rl, double rate_per_s, double burst)
{
	double rate = rate_per_s / 1e6, b = burst < 1 ? 1 : burst;

	if (rl->slots != NULL)
		pthread_mutex_lock(&rl->mu);
	rl->rate_per_us = rate;
	rl->burst = b;
	if (rl->slots != NULL)
		pthread_mutex_unlock(&rl->mu);
}

bool ratelimit_take(struct ratelimit *rl, const char *user, int64_t now_us)
{
	double rate, burst;

	pthread_mutex_lock(&rl->mu);
	rate = rl->rate_per_us * 1e6;
	burst = rl->burst;
	pthread_mutex_unlock(&rl->mu);
	return ratelimit_take_rate(rl, user, now_us, rate, burst);
}

bool ratelimit_take_rate(struct ratelimit *rl, const char *user, int64_t now_us,
			 double rate_per_s, double burst)
{
	uint64_t h = rl_hash(user);
	double rate_per_us = rate_per_s / 1e6;
	bool ok;
	struct rl_bucket *b = &rl->slots[h & (rl->nslots - 1)];
	/* | 1: fingerprint 0 marks a never-used slot */
	uint32_t fp = (uint32_t)(h >> 32) | 1;
	double tokens;

	pthread_mutex_lock(&rl->mu);
	if (b->fingerprint != fp) {
		b->fingerprint = fp;
		b->tokens = burst < 1 ? 1 : burst;
		b->last_us = now_us;
	}
	tokens = b->tokens;
	if (now_us > b->last_us) {
		tokens += (double)(now_us - b->last_us) * rate_per_us;
		if (tokens > burst)
			tokens = burst < 1 ? 1 : burst;
		b->last_us = now_us;
	}
	ok = tokens >= 1.0;
	b->tokens = ok ? tokens - 1.0 : tokens;
	pthread_mutex_unlock(&rl->mu);
	return ok;
}

void ratelimit_free(struct ratelimit *rl)
{
	if (rl->slots != NULL)
		pthread_mutex_destroy(&rl->mu);
	free(rl->slots);
	rl->slots = NULL;
	rl->nslots = 0;
}
