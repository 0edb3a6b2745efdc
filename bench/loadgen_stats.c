#include "loadgen_stats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void
lg_samples_add(struct lg_samples *s, int64_t us)
{
	if (us < 0)
		us = 0;
	s->seen++;
	s->sum += (double)us;
	if (us > s->max)
		s->max = us;
	if (s->limit != 0 && s->n >= s->limit) {
		/* Algorithm R: each of the seen samples is held with equal chance */
		uint64_t z = (s->rng += 0x9e3779b97f4a7c15ULL), j;

		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
		z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
		j = (z ^ (z >> 31)) % s->seen;
		if (j < s->n) {
			s->v[j] = us;
			s->sorted = false;
		}
		return;
	}
	if (s->n == s->cap) {
		size_t ncap = s->cap ? s->cap * 2 : 1024;
		int64_t *nv = realloc(s->v, ncap * sizeof(*nv));

		if (nv == NULL) {
			s->dropped++;
			return;
		}
		s->v = nv;
		s->cap = ncap;
	}
	s->v[s->n++] = us;
	s->sorted = false;
}

void
lg_samples_reset(struct lg_samples *s)
{
	s->n = 0;
	s->seen = 0;
	s->max = 0;
	s->sum = 0;
	s->dropped = 0;
	s->sorted = false;
}

uint64_t
lg_samples_count(const struct lg_samples *s)
{
	return s->seen;
}

static int
cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

void
lg_samples_sort(struct lg_samples *s)
{
	if (!s->sorted && s->n > 1)
		qsort(s->v, s->n, sizeof(*s->v), cmp_i64);
	s->sorted = true;
}

int64_t
lg_samples_pct(const struct lg_samples *s, double p)
{
	size_t rank;

	if (s->n == 0)
		return 0;
	if (p <= 0)
		return s->v[0];
	/* nearest rank: the smallest sample with at least p of them at or below */
	rank = (size_t)((double)s->n * p);
	if ((double)rank < (double)s->n * p)
		rank++;
	if (rank < 1)
		rank = 1;
	if (rank > s->n)
		rank = s->n;
	return s->v[rank - 1];
}

int64_t
lg_samples_max(const struct lg_samples *s)
{
	return s->max;
}

double
lg_samples_mean(const struct lg_samples *s)
{
	return s->seen ? s->sum / (double)s->seen : 0;
}

void
lg_samples_free(struct lg_samples *s)
{
	free(s->v);
	memset(s, 0, sizeof(*s));
}

static struct lg_count *
counts_find(struct lg_counts *t, const char *name)
{
	size_t i;

	for (i = 0; i < t->n; i++)
		if (strcmp(t->c[i].name, name) == 0)
			return &t->c[i];
	return NULL;
}

void
lg_counts_add(struct lg_counts *t, const char *name, uint64_t by)
{
	struct lg_count *c;

	if (strlen(name) >= LG_NAME_MAX || t->n >= 64)
		name = "other";
	c = counts_find(t, name);
	if (c == NULL) {
		if (t->n == t->cap) {
			size_t ncap = t->cap ? t->cap * 2 : 8;
			struct lg_count *nc = realloc(t->c, ncap * sizeof(*nc));

			if (nc == NULL)
				return;
			t->c = nc;
			t->cap = ncap;
		}
		c = &t->c[t->n++];
		memset(c, 0, sizeof(*c));
		strcpy(c->name, name);
	}
	c->n += by;
}

void
lg_counts_free(struct lg_counts *t)
{
	free(t->c);
	memset(t, 0, sizeof(*t));
}

int
lg_ts_header(FILE *f)
{
	return fputs("t_s,sent,accepted,refused,final,answers_per_s,"
		"purchases_per_s,purchase_p50_ms,purchase_p99_ms\n", f) == EOF || fflush(f) != 0 ? -1 : 0;
}

int
lg_ts_write(FILE *f, const struct lg_ts_row *row)
{
	char lat[64] = "";

	if (row->have_lat)
		snprintf(lat, sizeof(lat), "%.3f,%.3f", row->purchase_p50_ms,
			row->purchase_p99_ms);
	else
		snprintf(lat, sizeof(lat), ",");
	/* flushed per row so a live plot can tail the file */
	if (fprintf(f, "%.3f,%llu,%llu,%llu,%llu,%.1f,%.1f,%s\n",
	    row->t_s, (unsigned long long)(row->sent), (unsigned long long)(row->accepted), (unsigned long long)(row->refused),
	    (unsigned long long)(row->final), row->answers_per_s, row->purchases_per_s,
	    lat) < 0 || fflush(f) != 0)
		return -1;
	return 0;
}
