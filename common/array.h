/*
 * Growing an array: the one way this code makes room for more elements.
 * ARRAY_GROW(v, cap, need) makes v (a T *) hold at least need elements,
 * doubling from 16; -1 when out of memory (v and cap unchanged).
 */
#ifndef FLASHSALE_COMMON_ARRAY_H
#define FLASHSALE_COMMON_ARRAY_H

#include <stdint.h>
#include <stdlib.h>

#include "util.h"

static inline int array_grow(void **v, size_t *cap, size_t need, size_t elem) FS_MUSTCHECK;

static inline int array_grow(void **v, size_t *cap, size_t need, size_t elem)
{
	size_t n = *cap ? *cap : 16;
	void *nv;

	if (need <= *cap)
		return 0;
	while (n < need) {
		if (n > SIZE_MAX / 2 / elem)
			return -1;
		n *= 2;
	}
	nv = realloc(*v, n * elem);
	if (nv == NULL)
		return -1;
	*v = nv;
	*cap = n;
	return 0;
}

#define ARRAY_GROW(v, cap, need) array_grow((void **)&(v), &(cap), (need), sizeof(*(v)))

#endif
