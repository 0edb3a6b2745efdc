#include "strmap.h"

#include <stdlib.h>
#include <string.h>

static uint32_t strmap_hash(const char *s)
{
	uint32_t h = 2166136261u;   /* FNV-1a */

	for (; *s != '\0'; s++) {
		h ^= (unsigned char)*s;
		h *= 16777619u;
	}
	return h;
}

void strmap_init(struct strmap *m)
{
	memset(m, 0, sizeof(*m));
}

void strmap_clear(struct strmap *m)
{
	if (m->slot == NULL)
		return;
	for (size_t i = 0; i <= m->mask; i++) {
		free(m->slot[i].key);
		m->slot[i].key = NULL;
	}
	m->n = 0;
}

void strmap_free(struct strmap *m)
{
	strmap_clear(m);
	free(m->slot);
	strmap_init(m);
}

/* The slot holding key, or the empty slot where it would go (m has slots). */
static struct strmap_slot *strmap_find(const struct strmap *m, const char *key, uint32_t h)
{
	size_t i = h & m->mask;

	for (;;) {
		struct strmap_slot *s = &m->slot[i];

		if (s->key == NULL || (s->hash == h && strcmp(s->key, key) == 0))
			return s;
		i = (i + 1) & m->mask;
	}
}

int64_t strmap_get(const struct strmap *m, const char *key, int64_t def)
{
	const struct strmap_slot *s;

	if (m->slot == NULL)
		return def;
	s = strmap_find(m, key, strmap_hash(key));
	return s->key != NULL ? s->value : def;
}

/* Double the table (or make the first one); -1 when out of memory. */
static int strmap_grow(struct strmap *m)
{
	size_t n = m->slot != NULL ? (m->mask + 1) * 2 : 64;
	struct strmap old = *m;
	struct strmap_slot *ns = calloc(n, sizeof(*ns));

	if (ns == NULL)
		return -1;
	m->slot = ns;
	m->mask = n - 1;
	if (old.slot != NULL) {
		for (size_t i = 0; i <= old.mask; i++)
			if (old.slot[i].key != NULL)
				*strmap_find(m, old.slot[i].key, old.slot[i].hash) = old.slot[i];
		free(old.slot);
	}
	return 0;
}

int strmap_put_max(struct strmap *m, const char *key, int64_t value)
{
	uint32_t h = strmap_hash(key);
	struct strmap_slot *s;

	/* Keep the load under a half so probes stay short. */
	if ((m->n + 1) * 2 > (m->slot != NULL ? m->mask + 1 : 0) && strmap_grow(m) < 0)
		return -1;
	s = strmap_find(m, key, h);
	if (s->key != NULL) {
		if (value > s->value)
			s->value = value;
		return 0;
	}
	s->key = strdup(key);
	if (s->key == NULL)
		return -1;
	s->hash = h;
	s->value = value;
	m->n++;
	return 0;
}

/* Remove slot i, shifting back the entries that probed past it (no tombstones). */
static void strmap_remove_at(struct strmap *m, size_t i)
{
	size_t j = i;

	free(m->slot[i].key);
	m->slot[i].key = NULL;
	m->n--;
	for (;;) {
		size_t home;

		j = (j + 1) & m->mask;
		if (m->slot[j].key == NULL)
			return;
		home = m->slot[j].hash & m->mask;
		/* Leave it when its home lies cyclically in (i, j]. */
		if (i <= j ? (home > i && home <= j) : (home > i || home <= j))
			continue;
		m->slot[i] = m->slot[j];
		m->slot[j].key = NULL;
		i = j;
	}
}

int strmap_add(struct strmap *m, const char *key, int64_t delta, int64_t *out)
{
	struct strmap_slot *s;

	if (strmap_put_max(m, key, INT64_MIN) < 0)
		return -1;
	s = strmap_find(m, key, strmap_hash(key));
	if (s->value == INT64_MIN)
		s->value = 0;
	s->value += delta;
	*out = s->value;
	if (s->value == 0)
		strmap_remove_at(m, (size_t)(s - m->slot));
	return 0;
}
