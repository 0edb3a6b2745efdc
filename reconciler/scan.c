/* Skipping SKUs with no hold that can be due yet (see scan.h). */
#include <stdlib.h>
#include <string.h>

#include "array.h"
#include "scan.h"

void scan_init(struct scan *s, uint32_t slots)
{
	memset(s, 0, sizeof(*s));
	strmap_init(&s->idx);
	s->slots = slots > 0 ? slots : 1;
}

void scan_free(struct scan *s)
{
	strmap_free(&s->idx);
	free(s->e);
	memset(s, 0, sizeof(*s));
}

void scan_reset(struct scan *s)
{
	strmap_clear(&s->idx);
	s->n = 0;
}

void scan_round(struct scan *s)
{
	s->round++;
}

int scan_want(struct scan *s, const char *sku, long long now, size_t *idx, bool *want)
{
	int64_t i = strmap_get(&s->idx, sku, -1);

	if (i < 0) {
		/* strmap_put_max stores the index once: the key is absent. */
		if (ARRAY_GROW(s->e, s->cap, s->n + 1) < 0 ||
		    strmap_put_max(&s->idx, sku, (int64_t)s->n) < 0)
			return -1;
		i = (int64_t)s->n++;
		memset(&s->e[i], 0, sizeof(s->e[i]));
		*idx = (size_t)i;
		*want = true;
		return 0;
	}
	*idx = (size_t)i;
	/* The backstop: each round reads the slice of SKUs whose index falls on it. */
	*want = s->e[i].next_ms <= now ||
		(uint32_t)((uint64_t)i % s->slots) == s->round % s->slots;
	return 0;
}

void scan_note(struct scan_entry *e, long long now, size_t due, long long earliest,
	       long long hold_ms, long long grace_ms)
{
	long long first = now + hold_ms;

	if (due > 0 || hold_ms <= 0) {
		e->next_ms = 0;      /* releases in flight, or nothing to bound by */
		return;
	}
	if (earliest >= 0 && earliest < first)
		first = earliest;
	e->next_ms = first + grace_ms;
}
