#include "loadgen_report.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

static const double pcts[] = { 0.50, 0.90, 0.99, 0.999 };
static const char *const pct_names[] = { "p50", "p90", "p99", "p99_9" };

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

	fprintf(out, "  %-30s n=%zu", label, s->n);
	if (s->n == 0) {
		fputc('\n', out);
		return;
	}
	for (i = 0; i < sizeof(pcts) / sizeof(pcts[0]); i++)
		fprintf(out, " %s=%.1f", pct_names[i], ms(lg_samples_pct(s, pcts[i])));
	fprintf(out, " max=%.1f mean=%.1f ms\n", ms(lg_samples_max(s)),
		lg_samples_mean(s) / 1000.0);
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

void
lg_report_print(FILE *out, const struct lg_config *cf,
	const struct lg_result *res, int exit_code)
{
	size_t i;

	fprintf(out, "flashsale-loadgen: %s buyers=%u users=%u skus=%zu "
		"concurrency=%u ramp=%ums seed=%llu run-id=%s\n",
		cf->url, cf->buyers, cf->users, cf->nskus, cf->concurrency,
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
	for (i = 0; i < cf->nskus; i++)
		fprintf(out, "  sku %-26s buyers=%llu accepted=%llu paid=%llu\n",
			cf->skus[i], U(res->per_sku[i].buyers),
			U(res->per_sku[i].accepted), U(res->per_sku[i].paid));
	fprintf(out, "  %-30s %d\n", "exit", exit_code);
}

static cJSON *
json_lat(const struct lg_samples *s)
{
	cJSON *o = cJSON_CreateObject();
	size_t i;

	cJSON_AddNumberToObject(o, "count", (double)s->n);
	for (i = 0; i < sizeof(pcts) / sizeof(pcts[0]); i++)
		cJSON_AddNumberToObject(o, pct_names[i],
			ms(lg_samples_pct(s, pcts[i])));
	cJSON_AddNumberToObject(o, "max", ms(lg_samples_max(s)));
	cJSON_AddNumberToObject(o, "mean", lg_samples_mean(s) / 1000.0);
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
	size_t i;

	cJSON_AddStringToObject(o, "url", cf->url);
	cJSON_AddNumberToObject(o, "buyers", cf->buyers);
	cJSON_AddNumberToObject(o, "users", cf->users);
	for (i = 0; i < cf->nskus; i++)
		cJSON_AddItemToArray(skus, cJSON_CreateString(cf->skus[i]));
	cJSON_AddItemToObject(o, "skus", skus);
	cJSON_AddNumberToObject(o, "qty_max", cf->qty_max);
	cJSON_AddNumberToObject(o, "ramp_ms", cf->ramp_ms);
	cJSON_AddNumberToObject(o, "concurrency", cf->concurrency);
	cJSON_AddNumberToObject(o, "dup_ratio", cf->dup_ratio);
	cJSON_AddNumberToObject(o, "retries", cf->retries);
	cJSON_AddNumberToObject(o, "poll_ms", cf->poll_ms);
	cJSON_AddBoolToObject(o, "wait_final", cf->wait_final);
	cJSON_AddNumberToObject(o, "final_timeout_s", cf->final_timeout_s);
	cJSON_AddNumberToObject(o, "pay_ratio", cf->pay_ratio);
	cJSON_AddNumberToObject(o, "cancel_ratio", cf->cancel_ratio);
	cJSON_AddNumberToObject(o, "seed", (double)cf->seed);
	cJSON_AddStringToObject(o, "run_id", cf->run_id);
	cJSON_AddStringToObject(o, "user_prefix", cf->user_prefix);
	cJSON_AddNumberToObject(o, "timeout_ms", cf->timeout_ms);
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
	size_t i;
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
	for (i = 0; i < cf->nskus; i++) {
		cJSON *k = cJSON_AddObjectToObject(o, cf->skus[i]);

		cJSON_AddNumberToObject(k, "buyers", (double)res->per_sku[i].buyers);
		cJSON_AddNumberToObject(k, "accepted",
			(double)res->per_sku[i].accepted);
		cJSON_AddNumberToObject(k, "paid", (double)res->per_sku[i].paid);
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
