/* flashsale-loadgen: simulated flash-sale buyers against the gateway's HTTP API. */
#ifndef FLASHSALE_BENCH_LOADGEN_H
#define FLASHSALE_BENCH_LOADGEN_H

#include "loadgen_stats.h"
#include "loadgen_run.h"
#include "loadgen_report.h"

#endif
