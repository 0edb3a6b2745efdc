/* The load generator's report: a human summary and a JSON document. */
#ifndef FLASHSALE_LOADGEN_REPORT_H
#define FLASHSALE_LOADGEN_REPORT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "loadgen_run.h"

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
int lg_report_ts_header(FILE *f) __attribute__((warn_unused_result));
int lg_report_ts_row(FILE *f, const struct lg_ts_row *row)
	__attribute__((warn_unused_result));

/*
 * How many SKUs the report lists one by one (the first ones): per_sku_max,
 * where LG_PER_SKU_AUTO means every --sku, or the first 100 of --skus N.
 */
size_t lg_report_per_sku_listed(const struct lg_config *cf);

/* Sort the samples; call once before the report functions. */
void lg_report_prepare(struct lg_result *res);

void lg_report_print(FILE *out, const struct lg_config *cf,
	const struct lg_result *res, int exit_code);

/* Write the JSON document to path ("-" for stdout). */
int lg_report_json(const char *path, const struct lg_config *cf,
	const struct lg_result *res, int exit_code, char *err, size_t errlen)
	__attribute__((warn_unused_result));

#endif
