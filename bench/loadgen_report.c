#include "loadgen_report.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

static const double pcts[] = { 0.50, 0.90, 0.99, 0.999 };
static const char *const pct_names[] = { "p50", "p90", "p99", "p999" };
static const char *const pct_labels[] = { "p50", "p90", "p99", "p99.9" };

/* --skus N lists this many SKUs one by one unless --per-sku says otherwise. */
#define LG_PER_SKU_DEFAULT 100

void
lg_report_prepare(struct lg_result *res)
{
	lg_samples_sort(&res->purchase_lat);
	lg_samples_sort(&res->request_lat);
	lg_samples_sort(&res->final_lat);
}

static double
ms(int64_t us)
{
	return (double)us / 1000.0;
}

static void
print_lat(FILE *out, const char *label, const struct lg_samples *s)
{
	size_t i;

	fprintf(out, "  %-30s n=%llu", label,
		(unsigned long long)lg_samples_count(s));
	if (s->n == 0) {
		fputc('\n', out);
		return;
	}
	for (i = 0; i < sizeof(pcts) / sizeof(pcts[0]); i++)
		fprintf(out, " %s=%.1f", pct_labels[i],
			ms(lg_samples_pct(s, pcts[i])));
	fprintf(out, " max=%.1f mean=%.1f ms", ms(lg_samples_max(s)),
		lg_samples_mean(s) / 1000.0);
	if (s->n < lg_samples_count(s))
		fprintf(out, " (percentiles from %zu sampled)", s->n);
	fputc('\n', out);
}

static void
print_counts(FILE *out, const char *label, const struct lg_counts *t)
{
	size_t i;

	fprintf(out, "  %-30s", label);
	if (t->n == 0)
		fprintf(out, " none");
	for (i = 0; i < t->n; i++)
		fprintf(out, " %s=%llu", t->c[i].name,
			(unsigned long long)t->c[i].n);
	fputc('\n', out);
}

#define U(x) ((unsigned long long)(x))

size_t
lg_report_per_sku_listed(const struct lg_config *cf)
{
	size_t max = cf->per_sku_max;

	if (max == LG_PER_SKU_AUTO)
		max = cf->sku_prefix != NULL ? LG_PER_SKU_DEFAULT : cf->nskus;
	return max < cf->nskus ? max : cf->nskus;
}

/* min / median / max of one per-SKU counter over every SKU. */
struct sku_spread {
	uint64_t min, p50, max;
	size_t nonzero;
};

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return (x > y) - (x < y);
}

static void
sku_spread(const struct lg_config *cf, const struct lg_result *res,
	size_t field, uint64_t *tmp, struct sku_spread *sp)
{
	size_t i;

	memset(sp, 0, sizeof(*sp));
	if (cf->nskus == 0)
		return;
	for (i = 0; i < cf->nskus; i++) {
		const struct lg_sku_stats *k = &res->per_sku[i];

		tmp[i] = field == 0 ? k->buyers : field == 1 ? k->accepted : k->paid;
		sp->nonzero += tmp[i] != 0;
	}
	qsort(tmp, cf->nskus, sizeof(*tmp), cmp_u64);
	sp->min = tmp[0];
	sp->p50 = tmp[(cf->nskus - 1) / 2];
	sp->max = tmp[cf->nskus - 1];
}

void
lg_report_print(FILE *out, const struct lg_config *cf,
	const struct lg_result *res, int exit_code)
{
	size_t i;

	size_t listed = lg_report_per_sku_listed(cf);

	fprintf(out, "flashsale-loadgen: %s buyers=%u users=%u skus=%zu%s%s%s "
		"concurrency=%u ramp=%ums seed=%llu run-id=%s\n",
		cf->url, cf->buyers, cf->users, cf->nskus,
		cf->sku_prefix ? " (" : "", cf->sku_prefix ? cf->sku_prefix : "",
		cf->sku_prefix ? "0..)" : "", cf->concurrency,
		cf->ramp_ms, U(cf->seed), cf->run_id);
	if (res->interrupted)
		fprintf(out, "  INTERRUPTED: the numbers below are partial\n");
	if (res->responses == 0)
		fprintf(out, "  ERROR: the gateway never answered\n");
	fprintf(out, "  %-30s %llu (purchase %llu, duplicate %llu, retry %llu, "
		"poll %llu, pay %llu, cancel %llu)\n", "requests sent",
		U(res->sent), U(res->sent_purchase), U(res->sent_duplicate),
		U(res->sent_retry), U(res->sent_poll), U(res->sent_pay),
		U(res->sent_cancel));
	fprintf(out, "  %-30s", "answers by status");
	for (i = 1; i < 600; i++)
		if (res->status[i])
			fprintf(out, " %zu=%llu", i, U(res->status[i]));
	if (res->status[0])
		fprintf(out, " transport_error=%llu", U(res->status[0]));
	fputc('\n', out);
	fprintf(out, "  %-30s %llu of %llu buyers\n", "accepted (202)",
		U(res->accepted), U(res->buyers));
	fprintf(out, "  %-30s %llu\n", "refused", U(res->refused));
	print_counts(out, "refused by reason", &res->refused_by);
	fprintf(out, "  %-30s %llu (answers differing: %llu)\n",
		"duplicates sent", U(res->sent_duplicate),
		U(res->duplicate_mismatch));
	print_counts(out, "answers differing, first->second", &res->mismatch_by);
	fprintf(out, "  %-30s %llu\n", "purchase failed (no answer)",
		U(res->purchase_failed));
	fprintf(out, "  %-30s %llu\n", "final", U(res->final));
	print_counts(out, "final states", &res->final_by);
	fprintf(out, "  %-30s paid=%llu cancelled=%llu expired=%llu "
		"unfinished=%llu%s\n", "outcomes", U(res->paid),
		U(res->cancelled), U(res->expired), U(res->unfinished),
		cf->wait_final ? "" : " (not waited for final)");
	fprintf(out, "  %-30s pay=%llu cancel=%llu expire=%llu; pay 202=%llu "
		"cancel 202=%llu refused=%llu not_reserved_yet=%llu\n",
		"plans", U(res->plan_pay), U(res->plan_cancel),
		U(res->plan_expire), U(res->pay_accepted),
		U(res->cancel_accepted), U(res->action_refused),
		U(res->not_reserved_yet));
	fprintf(out, "  %-30s %llu (retries exhausted %llu)\n", "http errors",
		U(res->http_errors), U(res->retries_exhausted));
	print_lat(out, "purchase latency (scheduled)", &res->purchase_lat);
	print_lat(out, "request latency (sent)", &res->request_lat);
	print_lat(out, "scheduled start -> final", &res->final_lat);
	fprintf(out, "  %-30s run=%.1f ms first-request->all-done=%.1f ms\n",
		"durations", ms(res->run_us), ms(res->first_to_done_us));
	if (cf->timeseries_path != NULL)
		fprintf(out, "  %-30s %llu rows in %s%s\n", "timeseries",
			U(res->ts_rows), cf->timeseries_path,
			res->ts_write_failed ? " (WRITE FAILED)" : "");
	for (i = 0; i < listed; i++)
		fprintf(out, "  sku %-26s buyers=%llu accepted=%llu paid=%llu\n",
			cf->skus[i], U(res->per_sku[i].buyers),
			U(res->per_sku[i].accepted), U(res->per_sku[i].paid));
	if (listed < cf->nskus) {
		uint64_t *tmp = malloc(cf->nskus * sizeof(*tmp));
		struct sku_spread sp[3];
		size_t f;

		fprintf(out, "  %-30s %zu more not listed (--per-sku)\n",
			"skus", cf->nskus - listed);
		for (f = 0; tmp != NULL && f < 3; f++) {
			sku_spread(cf, res, f, tmp, &sp[f]);
			fprintf(out, "  %-30s min=%llu median=%llu max=%llu "
				"skus>0=%zu\n", f == 0 ? "per sku: buyers" :
				f == 1 ? "per sku: accepted" : "per sku: paid",
				U(sp[f].min), U(sp[f].p50), U(sp[f].max),
				sp[f].nonzero);
		}
		free(tmp);
	}
	fprintf(out, "  %-30s %d\n", "exit", exit_code);
}

/*
 * This process's peak resident set (VmHWM), in KiB; 0 if unknown. Read from
 * /proc rather than getrusage(): ru_maxrss keeps the high-water mark of the
 * forking parent from before exec, which is the harness's, not ours.
 */
static long
peak_rss_kib(void)
{
	char line[128];
	long kib = 0;
	FILE *f = fopen("/proc/self/status", "r");

	if (f == NULL)
		return 0;
	while (fgets(line, sizeof(line), f) != NULL)
		if (sscanf(line, "VmHWM: %ld kB", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

static cJSON *
json_lat(const struct lg_samples *s)
{
	cJSON *o = cJSON_CreateObject();
	size_t i;

	cJSON_AddNumberToObject(o, "count", (double)lg_samples_count(s));
	for (i = 0; i < sizeof(pcts) / sizeof(pcts[0]); i++)
		cJSON_AddNumberToObject(o, pct_names[i],
			ms(lg_samples_pct(s, pcts[i])));
	cJSON_AddNumberToObject(o, "max", ms(lg_samples_max(s)));
	cJSON_AddNumberToObject(o, "mean", lg_samples_mean(s) / 1000.0);
	if (s->n < lg_samples_count(s))
		cJSON_AddNumberToObject(o, "sampled", (double)s->n);
	if (s->dropped)
		cJSON_AddNumberToObject(o, "dropped", (double)s->dropped);
	return o;
}

static cJSON *
json_counts(const struct lg_counts *t)
{
	cJSON *o = cJSON_CreateObject();
	size_t i;

	for (i = 0; i < t->n; i++)
		cJSON_AddNumberToObject(o, t->c[i].name, (double)t->c[i].n);
	return o;
}

static cJSON *
json_config(const struct lg_config *cf)
{
	cJSON *o = cJSON_CreateObject(), *skus = cJSON_CreateArray();
	size_t i, n;

	cJSON_AddStringToObject(o, "url", cf->url);
	cJSON_AddNumberToObject(o, "buyers", cf->buyers);
	cJSON_AddNumberToObject(o, "users", cf->users);
	/* generated SKUs: only those listed per SKU, the rest is P<i> */
	n = cf->sku_prefix != NULL ? lg_report_per_sku_listed(cf) : cf->nskus;
	for (i = 0; i < n; i++)
		cJSON_AddItemToArray(skus, cJSON_CreateString(cf->skus[i]));
	cJSON_AddItemToObject(o, "skus", skus);
	cJSON_AddNumberToObject(o, "sku_count", (double)cf->nskus);
	if (cf->sku_prefix != NULL)
		cJSON_AddStringToObject(o, "sku_prefix", cf->sku_prefix);
	else
		cJSON_AddNullToObject(o, "sku_prefix");
	cJSON_AddNumberToObject(o, "qty_max", cf->qty_max);
	cJSON_AddNumberToObject(o, "ramp_ms", cf->ramp_ms);
	cJSON_AddNumberToObject(o, "concurrency", cf->concurrency);
	cJSON_AddNumberToObject(o, "dup_ratio", cf->dup_ratio);
	cJSON_AddNumberToObject(o, "retries", cf->retries);
	cJSON_AddNumberToObject(o, "poll_ms", cf->poll_ms);
	cJSON_AddNumberToObject(o, "wait_ms", cf->wait_ms);
	cJSON_AddNumberToObject(o, "wait_concurrency", cf->wait_concurrency);
	cJSON_AddBoolToObject(o, "wait_final", cf->wait_final);
	cJSON_AddNumberToObject(o, "final_timeout_s", cf->final_timeout_s);
	cJSON_AddNumberToObject(o, "pay_ratio", cf->pay_ratio);
	cJSON_AddNumberToObject(o, "cancel_ratio", cf->cancel_ratio);
	cJSON_AddNumberToObject(o, "seed", (double)cf->seed);
	cJSON_AddStringToObject(o, "run_id", cf->run_id);
	cJSON_AddStringToObject(o, "user_prefix", cf->user_prefix);
	cJSON_AddNumberToObject(o, "timeout_ms", cf->timeout_ms);
	if (cf->timeseries_path != NULL) {
		cJSON_AddStringToObject(o, "timeseries", cf->timeseries_path);
		cJSON_AddNumberToObject(o, "interval_ms", cf->interval_ms);
	}
	return o;
}

/*
 * Every SKU summarised in a few numbers, so 10,000 SKUs do not need 10,000
 * entries: how many are listed in "per_sku", and min/median/max with the
 * count of SKUs above zero for buyers, accepted and paid.
 */
static cJSON *
json_sku_summary(const struct lg_config *cf, const struct lg_result *res,
	size_t listed)
{
	static const char *const fields[] = { "buyers", "accepted", "paid" };
	cJSON *o = cJSON_CreateObject();
	uint64_t *tmp = malloc((cf->nskus ? cf->nskus : 1) * sizeof(*tmp));
	size_t f;

	cJSON_AddNumberToObject(o, "skus", (double)cf->nskus);
	cJSON_AddNumberToObject(o, "listed", (double)listed);
	for (f = 0; tmp != NULL && f < 3; f++) {
		struct sku_spread sp;
		cJSON *k = cJSON_AddObjectToObject(o, fields[f]);

		sku_spread(cf, res, f, tmp, &sp);
		cJSON_AddNumberToObject(k, "min", (double)sp.min);
		cJSON_AddNumberToObject(k, "median", (double)sp.p50);
		cJSON_AddNumberToObject(k, "max", (double)sp.max);
		cJSON_AddNumberToObject(k, "skus_nonzero", (double)sp.nonzero);
	}
	free(tmp);
	return o;
}

int
lg_report_json(const char *path, const struct lg_config *cf,
	const struct lg_result *res, int exit_code, char *err, size_t errlen)
{
	cJSON *doc = cJSON_CreateObject();
	cJSON *o;
	char *text, num[16];
	FILE *f;
	size_t i, listed;
	int rc = 0;

	if (doc == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	cJSON_AddItemToObject(doc, "config", json_config(cf));
	cJSON_AddNumberToObject(doc, "buyers", (double)res->buyers);

	o = cJSON_AddObjectToObject(doc, "requests");
	cJSON_AddNumberToObject(o, "sent", (double)res->sent);
	cJSON_AddNumberToObject(o, "purchase", (double)res->sent_purchase);
	cJSON_AddNumberToObject(o, "duplicate", (double)res->sent_duplicate);
	cJSON_AddNumberToObject(o, "retry", (double)res->sent_retry);
	cJSON_AddNumberToObject(o, "poll", (double)res->sent_poll);
	cJSON_AddNumberToObject(o, "pay", (double)res->sent_pay);
	cJSON_AddNumberToObject(o, "cancel", (double)res->sent_cancel);
	cJSON_AddNumberToObject(o, "answered", (double)res->responses);
	o = cJSON_AddObjectToObject(doc, "answers_by_status");
	for (i = 0; i < 600; i++) {
		if (res->status[i] == 0)
			continue;
		if (i == 0)
			snprintf(num, sizeof(num), "transport_error");
		else
			snprintf(num, sizeof(num), "%zu", i);
		cJSON_AddNumberToObject(o, num, (double)res->status[i]);
	}

	cJSON_AddNumberToObject(doc, "requests_sent", (double)res->sent);
	cJSON_AddNumberToObject(doc, "accepted", (double)res->accepted);
	cJSON_AddNumberToObject(doc, "duplicates_sent", (double)res->sent_duplicate);
	cJSON_AddNumberToObject(doc, "duplicate_mismatches",
		(double)res->duplicate_mismatch);
	cJSON_AddItemToObject(doc, "duplicate_mismatch_kinds",
		json_counts(&res->mismatch_by));
	cJSON_AddNumberToObject(doc, "refused_total", (double)res->refused);
	cJSON_AddItemToObject(doc, "refused", json_counts(&res->refused_by));
	cJSON_AddNumberToObject(doc, "purchase_failed", (double)res->purchase_failed);
	cJSON_AddNumberToObject(doc, "final_total", (double)res->final);
	cJSON_AddItemToObject(doc, "final_states", json_counts(&res->final_by));
	cJSON_AddNumberToObject(doc, "paid", (double)res->paid);
	cJSON_AddNumberToObject(doc, "cancelled", (double)res->cancelled);
	cJSON_AddNumberToObject(doc, "expired", (double)res->expired);
	cJSON_AddNumberToObject(doc, "unfinished", (double)res->unfinished);
	cJSON_AddNumberToObject(doc, "not_waited", (double)res->not_waited);
	cJSON_AddNumberToObject(doc, "http_errors", (double)res->http_errors);
	cJSON_AddNumberToObject(doc, "retries_exhausted",
		(double)res->retries_exhausted);

	o = cJSON_AddObjectToObject(doc, "actions");
	cJSON_AddNumberToObject(o, "plan_pay", (double)res->plan_pay);
	cJSON_AddNumberToObject(o, "plan_cancel", (double)res->plan_cancel);
	cJSON_AddNumberToObject(o, "plan_expire", (double)res->plan_expire);
	cJSON_AddNumberToObject(o, "pay_accepted", (double)res->pay_accepted);
	cJSON_AddNumberToObject(o, "cancel_accepted", (double)res->cancel_accepted);
	cJSON_AddNumberToObject(o, "refused", (double)res->action_refused);
	cJSON_AddNumberToObject(o, "not_reserved_yet", (double)res->not_reserved_yet);
	cJSON_AddNumberToObject(o, "poll_unknown_request", (double)res->poll_unknown);

	o = cJSON_AddObjectToObject(doc, "latency_ms");
	cJSON_AddItemToObject(o, "purchase", json_lat(&res->purchase_lat));
	cJSON_AddItemToObject(o, "request", json_lat(&res->request_lat));
	cJSON_AddItemToObject(o, "to_final", json_lat(&res->final_lat));

	cJSON_AddNumberToObject(doc, "peak_rss_kib", (double)peak_rss_kib());

	o = cJSON_AddObjectToObject(doc, "durations_ms");
	cJSON_AddNumberToObject(o, "run", ms(res->run_us));
	cJSON_AddNumberToObject(o, "first_request_to_all_done",
		ms(res->first_to_done_us));
	if (res->unfinished == 0 && res->responses > 0)
		cJSON_AddNumberToObject(o, "first_request_to_all_final",
			ms(res->first_to_done_us));
	else
		cJSON_AddNullToObject(o, "first_request_to_all_final");

	o = cJSON_AddObjectToObject(doc, "per_sku");
	listed = lg_report_per_sku_listed(cf);
	for (i = 0; i < listed; i++) {
		cJSON *k = cJSON_AddObjectToObject(o, cf->skus[i]);

		cJSON_AddNumberToObject(k, "buyers", (double)res->per_sku[i].buyers);
		cJSON_AddNumberToObject(k, "accepted",
			(double)res->per_sku[i].accepted);
		cJSON_AddNumberToObject(k, "paid", (double)res->per_sku[i].paid);
	}
	cJSON_AddItemToObject(doc, "per_sku_summary", json_sku_summary(cf, res,
		listed));
	if (cf->timeseries_path != NULL) {
		o = cJSON_AddObjectToObject(doc, "timeseries");
		cJSON_AddStringToObject(o, "path", cf->timeseries_path);
		cJSON_AddNumberToObject(o, "interval_ms", cf->interval_ms);
		cJSON_AddNumberToObject(o, "rows", (double)res->ts_rows);
		cJSON_AddBoolToObject(o, "write_failed", res->ts_write_failed);
	}
	cJSON_AddBoolToObject(doc, "interrupted", res->interrupted);
	cJSON_AddBoolToObject(doc, "gateway_reached", res->responses > 0);
	cJSON_AddNumberToObject(doc, "exit_code", exit_code);

	text = cJSON_Print(doc);
	cJSON_Delete(doc);
	if (text == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	f = strcmp(path, "-") == 0 ? stdout : fopen(path, "w");
	if (f == NULL) {
		snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
		free(text);
		return -1;
	}
	if (fputs(text, f) == EOF || fputc('\n', f) == EOF)
		rc = -1;
	if (f != stdout) {
		if (fclose(f) != 0)
			rc = -1;
	} else if (fflush(f) != 0) {
		rc = -1;
	}
	if (rc != 0)
		snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
	free(text);
	return rc;
}
