#include "metrics.h"

#include <inttypes.h>
#include <stdbool.h>
#include <string.h>
#include <event2/buffer.h>

/* Upper bounds of the histogram buckets, microseconds and as printed (seconds). */
static const uint64_t bucket_us[METRIC_BUCKETS] = {
	100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000,
	100000, 250000, 500000, 1000000, 2500000,
};
static const char *const bucket_le[METRIC_BUCKETS] = {
	"0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01",
	"0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5",
};

static struct metric *metrics_head;
static struct metric *metrics_tail;

void metrics_register(struct metric *m)
{
	/* Registering twice would make a cycle; ignore repeats. */
	for (struct metric *p = metrics_head; p != NULL; p = p->next) {
		if (p == m)
			return;
	}
	m->next = NULL;
	if (metrics_tail != NULL)
		metrics_tail->next = m;
	else
		metrics_head = m;
	metrics_tail = m;
}

void metric_observe_us(struct metric *m, uint64_t us)
{
	for (int i = 0; i < METRIC_BUCKETS; i++) {
		if (us <= bucket_us[i]) {
			__atomic_add_fetch(&m->buckets[i], 1, __ATOMIC_RELAXED);
			break;
		}
	}
	/* Beyond the last bound it only counts towards +Inf (= count). */
	__atomic_add_fetch(&m->sum_us, us, __ATOMIC_RELAXED);
	__atomic_add_fetch(&m->count, 1, __ATOMIC_RELAXED);
}

static const char *metric_type_name(enum metric_type t)
{
	switch (t) {
	case METRIC_COUNTER:
		return "counter";
	case METRIC_GAUGE:
		return "gauge";
	case METRIC_HISTOGRAM:
		return "histogram";
	}
	return "untyped";
}

static bool has_labels(const struct metric *m)
{
	return m->labels != NULL && m->labels[0] != '\0';
}

static void render_histogram(struct evbuffer *out, const struct metric *m)
{
	const char *lb = has_labels(m) ? m->labels : "";
	const char *sep = has_labels(m) ? "," : "";
	uint64_t cum = 0, count, sum_us;

	/*
	 * Observers bump a bucket before count, so a concurrent render may see
	 * more in the buckets than in count; raise count to keep the series
	 * monotonic (+Inf >= every bucket).
	 */
	count = __atomic_load_n(&m->count, __ATOMIC_RELAXED);
	sum_us = __atomic_load_n(&m->sum_us, __ATOMIC_RELAXED);
	for (int i = 0; i < METRIC_BUCKETS; i++) {
		cum += __atomic_load_n(&m->buckets[i], __ATOMIC_RELAXED);
		if (cum > count)
			count = cum;
		evbuffer_add_printf(out, "flashsale_%s_bucket{%s%sle=\"%s\"} %" PRIu64 "\n",
				    m->name, lb, sep, bucket_le[i], cum);
	}
	evbuffer_add_printf(out, "flashsale_%s_bucket{%s%sle=\"+Inf\"} %" PRIu64 "\n",
			    m->name, lb, sep, count);
	evbuffer_add_printf(out, "flashsale_%s_sum%s%s%s %" PRIu64 ".%06" PRIu64 "\n",
			    m->name, has_labels(m) ? "{" : "", lb, has_labels(m) ? "}" : "",
			    sum_us / 1000000, sum_us % 1000000);
	evbuffer_add_printf(out, "flashsale_%s_count%s%s%s %" PRIu64 "\n",
			    m->name, has_labels(m) ? "{" : "", lb, has_labels(m) ? "}" : "",
			    count);
}

static void render_one(struct evbuffer *out, const struct metric *m)
{
	if (m->type == METRIC_HISTOGRAM) {
		render_histogram(out, m);
		return;
	}
	if (has_labels(m))
		evbuffer_add_printf(out, "flashsale_%s{%s} %" PRId64 "\n", m->name, m->labels,
				    metric_get(m));
	else
		evbuffer_add_printf(out, "flashsale_%s %" PRId64 "\n", m->name, metric_get(m));
}

void metrics_render(struct evbuffer *out)
{
	for (const struct metric *m = metrics_head; m != NULL; m = m->next) {
		bool seen = false;

		/* HELP/TYPE once per name: the first registration leads its group. */
		for (const struct metric *p = metrics_head; p != m; p = p->next) {
			if (strcmp(p->name, m->name) == 0) {
				seen = true;
				break;
			}
		}
		if (seen)
			continue;
		evbuffer_add_printf(out, "# HELP flashsale_%s %s\n", m->name,
				    m->help != NULL ? m->help : m->name);
		evbuffer_add_printf(out, "# TYPE flashsale_%s %s\n", m->name,
				    metric_type_name(m->type));
		for (const struct metric *p = m; p != NULL; p = p->next) {
			if (strcmp(p->name, m->name) == 0)
				render_one(out, p);
		}
	}
}
