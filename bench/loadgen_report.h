/* The load generator's report: a human summary and a JSON document. */
#ifndef FLASHSALE_BENCH_LOADGEN_REPORT_H
#define FLASHSALE_BENCH_LOADGEN_REPORT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "loadgen_run.h"
#include "util.h"

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
	FS_MUSTCHECK;

#endif
