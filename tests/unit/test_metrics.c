/* Unit tests for common/metrics.c: Prometheus text exposition. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <event2/buffer.h>

#include "metrics.h"

static struct metric m_total = {
	.name = "test_requests_total", .help = "Requests seen", .type = METRIC_COUNTER,
};
static struct metric m_ok = {
	.name = "test_responses_total", .help = "Responses by code",
	.labels = "code=\"202\"", .type = METRIC_COUNTER,
};
static struct metric m_gauge = {
	.name = "test_inflight", .help = "In flight", .type = METRIC_GAUGE,
};
static struct metric m_bad = {
	.name = "test_responses_total", .help = "Responses by code",
	.labels = "code=\"429\"", .type = METRIC_COUNTER,
};
static struct metric m_lat = {
	.name = "test_latency_seconds", .help = "Latency", .type = METRIC_HISTOGRAM,
};
static struct metric m_lat_l = {
	.name = "test_step_seconds", .help = "Step latency", .labels = "step=\"lua\"",
	.type = METRIC_HISTOGRAM,
};

static char *render(void)
{
	struct evbuffer *b = evbuffer_new();
	size_t len;
	char *s;

	assert_non_null(b);
	metrics_render(b);
	len = evbuffer_get_length(b);
	s = malloc(len + 1);
	assert_non_null(s);
	assert_int_equal(evbuffer_remove(b, s, len), (int)len);
	s[len] = '\0';
	evbuffer_free(b);
	return s;
}

/* Count lines equal to line (whole line match). */
static int count_line(const char *text, const char *line)
{
	size_t n = strlen(line);
	int count = 0;

	for (const char *p = text; (p = strstr(p, line)) != NULL; p += n) {
		if ((p == text || p[-1] == '\n') && p[n] == '\n')
			count++;
	}
	return count;
}

static int setup(void **state)
{
	(void)state;
	metrics_register(&m_total);
	metrics_register(&m_ok);
	metrics_register(&m_gauge);
	metrics_register(&m_bad);
	metrics_register(&m_lat);
	metrics_register(&m_lat_l);
	metrics_register(&m_total);	/* repeats are ignored */
	return 0;
}

static void test_counter_and_gauge(void **state)
{
	char *s;
	(void)state;

	metric_add(&m_total, 3);
	metric_add(&m_total, 4);
	metric_set(&m_gauge, -5);
	assert_int_equal(metric_get(&m_total), 7);
	s = render();
	assert_int_equal(count_line(s, "# HELP flashsale_test_requests_total Requests seen"), 1);
	assert_int_equal(count_line(s, "# TYPE flashsale_test_requests_total counter"), 1);
	assert_int_equal(count_line(s, "flashsale_test_requests_total 7"), 1);
	assert_int_equal(count_line(s, "# TYPE flashsale_test_inflight gauge"), 1);
	assert_int_equal(count_line(s, "flashsale_test_inflight -5"), 1);
	free(s);
}

static void test_labelled_pair(void **state)
{
	const char *help, *a, *b, *g;
	char *s;
	(void)state;

	metric_add(&m_ok, 10);
	metric_add(&m_bad, 2);
	s = render();
	/* One HELP/TYPE for the name, both series right after it. */
	assert_int_equal(count_line(s, "# HELP flashsale_test_responses_total Responses by code"), 1);
	assert_int_equal(count_line(s, "# TYPE flashsale_test_responses_total counter"), 1);
	assert_int_equal(count_line(s, "flashsale_test_responses_total{code=\"202\"} 10"), 1);
	assert_int_equal(count_line(s, "flashsale_test_responses_total{code=\"429\"} 2"), 1);
	help = strstr(s, "# TYPE flashsale_test_responses_total");
	a = strstr(s, "flashsale_test_responses_total{code=\"202\"}");
	b = strstr(s, "flashsale_test_responses_total{code=\"429\"}");
	g = strstr(s, "# TYPE flashsale_test_inflight");
	assert_non_null(help);
	assert_non_null(g);
	assert_true(help < a && a < b);
	/* Grouped: the gauge registered between them comes after the group. */
	assert_true(b < g);
	free(s);
}

static void test_histogram(void **state)
{
	char *s;
	(void)state;

	metric_observe_us(&m_lat, 50);        /* <= 0.0001 */
	metric_observe_us(&m_lat, 100);       /* <= 0.0001 (bound inclusive) */
	metric_observe_us(&m_lat, 101);       /* <= 0.00025 */
	metric_observe_us(&m_lat, 3000);      /* <= 0.005 */
	metric_observe_us(&m_lat, 2000000);   /* <= 2.5 */
	metric_observe_us(&m_lat, 9000000);   /* +Inf only */
	s = render();
	assert_int_equal(count_line(s, "# TYPE flashsale_test_latency_seconds histogram"), 1);
	assert_int_equal(count_line(s, "flashsale_test_latency_seconds_bucket{le=\"0.0001\"} 2"), 1);
	assert_int_equal(count_line(s, "flashsale_test_latency_seconds_bucket{le=\"0.00025\"} 3"), 1);
	assert_int_equal(count_line(s, "flashsale_test_latency_seconds_bucket{le=\"0.0005\"} 3"), 1);
	assert_int_equal(count_line(s, "flashsale_test_latency_seconds_bucket{le=\"0.0025\"} 3"), 1);
	assert_int_equal(count_line(s, "flashsale_test_latency_seconds_bucket{le=\"0.005\"} 4"), 1);
	assert_int_equal(count_line(s, "flashsale_test_latency_seconds_bucket{le=\"1\"} 4"), 1);
	assert_int_equal(count_line(s, "flashsale_test_latency_seconds_bucket{le=\"2.5\"} 5"), 1);
	assert_int_equal(count_line(s, "flashsale_test_latency_seconds_bucket{le=\"+Inf\"} 6"), 1);
	assert_int_equal(count_line(s, "flashsale_test_latency_seconds_count 6"), 1);
	/* 50+100+101+3000+2000000+9000000 us */
	assert_int_equal(count_line(s, "flashsale_test_latency_seconds_sum 11.003251"), 1);
	free(s);

	metric_observe_us(&m_lat_l, 400);
	s = render();
	assert_int_equal(count_line(s,
		"flashsale_test_step_seconds_bucket{step=\"lua\",le=\"0.00025\"} 0"), 1);
	assert_int_equal(count_line(s,
		"flashsale_test_step_seconds_bucket{step=\"lua\",le=\"0.0005\"} 1"), 1);
	assert_int_equal(count_line(s,
		"flashsale_test_step_seconds_bucket{step=\"lua\",le=\"+Inf\"} 1"), 1);
	assert_int_equal(count_line(s, "flashsale_test_step_seconds_count{step=\"lua\"} 1"), 1);
	assert_int_equal(count_line(s, "flashsale_test_step_seconds_sum{step=\"lua\"} 0.000400"), 1);
	free(s);
}

static void test_every_line_well_formed(void **state)
{
	char *s = render();
	char *save = NULL;
	int series = 0;
	(void)state;

	for (char *line = strtok_r(s, "\n", &save); line != NULL;
	     line = strtok_r(NULL, "\n", &save)) {
		if (line[0] == '#') {
			assert_true(strncmp(line, "# HELP flashsale_", 17) == 0 ||
				    strncmp(line, "# TYPE flashsale_", 17) == 0);
			continue;
		}
		assert_true(strncmp(line, "flashsale_", 10) == 0);
		assert_non_null(strchr(line, ' '));
		series++;
	}
	/* 1 + 2 + 1 counters/gauges, 2 histograms of 14 + 1 + 2 lines */
	assert_int_equal(series, 4 + 2 * 17);
	free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_counter_and_gauge),
		cmocka_unit_test(test_labelled_pair),
		cmocka_unit_test(test_histogram),
		cmocka_unit_test(test_every_line_well_formed),
	};

	return cmocka_run_group_tests(tests, setup, NULL);
}
