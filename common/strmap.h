/*
 * A map from short strings (SKUs, ids) to int64 values: open addressing with
 * linear probing, keys copied. Made for hot paths that look up a few
 * thousand keys per batch without allocating.
 */
#ifndef FLASHSALE_COMMON_STRMAP_H
#define FLASHSALE_COMMON_STRMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

struct strmap_slot {
	char *key;      /* NULL: empty */
	uint32_t hash;
	int64_t value;
};

struct strmap {
	struct strmap_slot *slot;
	size_t mask;        /* slots - 1 (a power of two), 0 before the first put */
	size_t n;
};

void strmap_init(struct strmap *m);
void strmap_free(struct strmap *m);
/* Forget every key (the slots are kept). */
void strmap_clear(struct strmap *m);

/* The value of key, or def when absent. */
int64_t strmap_get(const struct strmap *m, const char *key, int64_t def);

/* Set key to value when absent or smaller. -1 when out of memory. */
int strmap_put_max(struct strmap *m, const char *key, int64_t value) FS_MUSTCHECK;

/*
 * Add delta to key's value (absent counts as 0) and store the sum in *out;
 * a key whose value reaches 0 is removed. -1 when out of memory.
 */
int strmap_add(struct strmap *m, const char *key, int64_t delta, int64_t *out) FS_MUSTCHECK;

static inline size_t strmap_count(const struct strmap *m)
{
	return m->n;
}

#endif
