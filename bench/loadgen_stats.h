/*
 * Sample sets and named counters for the load generator's report.
 *
 * Latencies are kept as every sample (microseconds), not a histogram: one
 * sample per buyer stays small even at a million buyers (8 MB) and gives
 * exact percentiles. A set whose size grows with something else than the
 * buyers (one sample per request: polls) can be given a limit, past which
 * it keeps a uniform random sample (reservoir) of that many; count, max
 * and mean stay exact, percentiles become estimates from the reservoir.
 */
#ifndef FLASHSALE_BENCH_LOADGEN_STATS_H
#define FLASHSALE_BENCH_LOADGEN_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "util.h"

#define LG_NAME_MAX 40

struct lg_samples {
	int64_t *v;
	size_t n;		/* samples held in v */
	size_t cap;
	size_t limit;		/* 0: keep all; else reservoir size (set before use) */
	uint64_t seen;		/* samples offered */
	int64_t max;
	double sum;
	uint64_t rng;		/* reservoir replacement choices */
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

/*
 * Add one sample (negative counts as 0); on allocation failure it still
 * counts for count/max/mean but is missing from the percentiles (dropped).
 */
void lg_samples_add(struct lg_samples *s, int64_t us);
/* Forget every sample but keep the buffer, for a set reused per interval. */
void lg_samples_reset(struct lg_samples *s);
/* Samples offered (not only those held). */
uint64_t lg_samples_count(const struct lg_samples *s);
/* Sort once before asking for percentiles. */
void lg_samples_sort(struct lg_samples *s);
/* Nearest-rank percentile, p in [0,1]; 0 when there is no sample. Needs lg_samples_sort. */
int64_t lg_samples_pct(const struct lg_samples *s, double p);
/* Exact even for a reservoir; no sorting needed. */
int64_t lg_samples_max(const struct lg_samples *s);
double lg_samples_mean(const struct lg_samples *s);
void lg_samples_free(struct lg_samples *s);

/*
 * Add `by` to the counter called `name`, creating it if needed; names past
 * the table's capacity, or longer than LG_NAME_MAX - 1, land in "other".
 */
void lg_counts_add(struct lg_counts *t, const char *name, uint64_t by);
void lg_counts_free(struct lg_counts *t);

/* One --timeseries row: the interval that ends t_s after the first request. */
struct lg_ts_row {
	double t_s;
	uint64_t sent;			/* cumulative */
	uint64_t accepted;
	uint64_t refused;
	uint64_t final;
	double answers_per_s;		/* this interval */
	double purchases_per_s;
	bool have_lat;			/* a purchase answer in this interval */
	double purchase_p50_ms;
	double purchase_p99_ms;
};

/* The CSV header line and one row; -1 on a write error. */
int lg_ts_header(FILE *f) FS_MUSTCHECK;
int lg_ts_write(FILE *f, const struct lg_ts_row *row)
	FS_MUSTCHECK;

#endif
