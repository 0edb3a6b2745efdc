/*
 * Metrics in Prometheus text format. A metric is registered once at start-up
 * (not thread-safe), then updated lock-free from any thread (relaxed atomics)
 * and rendered by the HTTP thread. Names get the "flashsale_" prefix.
 */
#ifndef FLASHSALE_COMMON_METRICS_H
#define FLASHSALE_COMMON_METRICS_H

#include <stdint.h>
#include <stddef.h>

struct evbuffer;

enum metric_type { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM };

#define METRIC_BUCKETS 14

struct metric {
	const char *name;       /* without prefix, e.g. "gateway_requests_total" */
	const char *help;
	const char *labels;     /* fixed label set, e.g. "code=\"202\"", or NULL */
	enum metric_type type;
	int64_t value;          /* counter / gauge (atomic) */
	uint64_t buckets[METRIC_BUCKETS]; /* histogram counts per bucket (atomic) */
	uint64_t count;         /* histogram observations (atomic) */
	uint64_t sum_us;        /* histogram sum in microseconds (atomic) */
	struct metric *next;
};

/* Register a metric; the struct must live as long as the process (static). */
void metrics_register(struct metric *m);

static inline void metric_add(struct metric *m, int64_t n)
{
	__atomic_add_fetch(&m->value, n, __ATOMIC_RELAXED);
}

static inline void metric_set(struct metric *m, int64_t v)
{
	__atomic_store_n(&m->value, v, __ATOMIC_RELAXED);
}

static inline int64_t metric_get(const struct metric *m)
{
	return __atomic_load_n(&m->value, __ATOMIC_RELAXED);
}

/* Record one latency observation, in microseconds (buckets 100us .. ~10s). */
void metric_observe_us(struct metric *m, uint64_t us);

/* Append every registered metric in Prometheus text exposition format. */
void metrics_render(struct evbuffer *out);

#endif
