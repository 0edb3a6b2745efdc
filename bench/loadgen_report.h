/* The load generator's report: a human summary and a JSON document. */
#ifndef FLASHSALE_LOADGEN_REPORT_H
#define FLASHSALE_LOADGEN_REPORT_H

#include <stdio.h>

#include "loadgen_run.h"

/* Sort the samples; call once before the report functions. */
void lg_report_prepare(struct lg_result *res);

void lg_report_print(FILE *out, const struct lg_config *cf,
	const struct lg_result *res, int exit_code);

/* Write the JSON document to path ("-" for stdout). */
int lg_report_json(const char *path, const struct lg_config *cf,
	const struct lg_result *res, int exit_code, char *err, size_t errlen)
	__attribute__((warn_unused_result));

#endif
