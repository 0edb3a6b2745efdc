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
	if (rl->slots == NULL)
		return -1;
	rl->nslots = n;
	ratelimit_set(rl, rate_per_s, burst);
	return 0;
}

void ratelimit_set(struct ratelimit *rl, double rate_per_s, double burst)
{
	rl->rate_per_us = rate_per_s / 1e6;
	rl->burst = burst < 1 ? 1 : burst;
}

bool ratelimit_take(struct ratelimit *rl, const char *user, int64_t now_us)
{
	uint64_t h = rl_hash(user);
	struct rl_bucket *b = &rl->slots[h & (rl->nslots - 1)];
	/* | 1: fingerprint 0 marks a never-used slot */
	uint32_t fp = (uint32_t)(h >> 32) | 1;
	double tokens;

	if (b->fingerprint != fp) {
		b->fingerprint = fp;
		b->tokens = rl->burst;
		b->last_us = now_us;
	}
	tokens = b->tokens;
	if (now_us > b->last_us) {
		tokens += (double)(now_us - b->last_us) * rl->rate_per_us;
		if (tokens > rl->burst)
			tokens = rl->burst;
		b->last_us = now_us;
	}
	if (tokens < 1.0) {
		b->tokens = tokens;
		return false;
	}
	b->tokens = (tokens - 1.0);
	return true;
}

void ratelimit_free(struct ratelimit *rl)
{
	free(rl->slots);
	rl->slots = NULL;
	rl->nslots = 0;
}
