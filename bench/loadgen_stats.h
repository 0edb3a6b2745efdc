/*
 * Sample sets and named counters for the load generator's report.
 *
 * Latencies are kept as every sample (microseconds), not a histogram: one
 * sample per buyer and per request stays small at the scales we run (a
 * 100k-buyer benchmark keeps a few MB) and gives exact percentiles.
 */
#ifndef FLASHSALE_LOADGEN_STATS_H
#define FLASHSALE_LOADGEN_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LG_NAME_MAX 40

struct lg_samples {
	int64_t *v;
	size_t n;
	size_t cap;
	size_t dropped;		/* samples lost to a failed allocation */
	bool sorted;
};

/* A small name -> count table (refusal reasons, final states). */
struct lg_count {
	char name[LG_NAME_MAX];
	uint64_t n;
};

struct lg_counts {
	struct lg_count *c;
	size_t n;
	size_t cap;
};

/* Append one sample; on allocation failure the sample is counted as dropped. */
void lg_samples_add(struct lg_samples *s, int64_t us);
/* Sort once before asking for percentiles. */
void lg_samples_sort(struct lg_samples *s);
/* Nearest-rank percentile, p in [0,1]; 0 when there is no sample. Needs lg_samples_sort. */
int64_t lg_samples_pct(const struct lg_samples *s, double p);
int64_t lg_samples_max(const struct lg_samples *s);
double lg_samples_mean(const struct lg_samples *s);
void lg_samples_free(struct lg_samples *s);

/*
 * Add `by` to the counter called `name`, creating it if needed; names past
 * the table's capacity, or longer than LG_NAME_MAX - 1, land in "other".
 */
void lg_counts_add(struct lg_counts *t, const char *name, uint64_t by);
uint64_t lg_counts_get(const struct lg_counts *t, const char *name);
void lg_counts_free(struct lg_counts *t);

#endif
