/*
 * flashsale-loadgen: buyers of a flash sale against the gateway's HTTP API.
 *
 * Exit status: 0 the run completed (refusals included), 1 the gateway never
 * answered or, with --wait-final, some accepted buyer did not reach a final
 * state (or the run was interrupted), 2 usage error.
 */
#include "loadgen.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "flashsale_config.h"

#define LG_MAX_SKUS 4096
#define LG_MAX_GEN_SKUS 100000
#define LG_MAX_BUYERS 10000000u

static void
usage(FILE *out)
{
	fprintf(out,
"usage: flashsale-loadgen [options] --sku SKU [--sku SKU2,SKU3 ...]\n"
"       flashsale-loadgen [options] --skus N [--sku-prefix P]\n"
"\n"
"Simulated flash-sale buyers against the gateway's HTTP API.\n"
"\n"
"  -u, --url URL            gateway base URL (default http://127.0.0.1:8080)\n"
"      --host-header HOST   Host header to send (default host:port of URL)\n"
"  -s, --sku SKU[,SKU..]    SKU(s) to buy, uniformly; repeatable\n"
"      --skus N             instead of --sku: N SKUs named P0..P(N-1)\n"
"                           (N <= 100000), bought uniformly\n"
"      --sku-prefix P       prefix of the --skus names (default \"sku-\")\n"
"      --per-sku K          list K SKUs one by one in the report (default:\n"
"                           every --sku, the first 100 of --skus; all SKUs\n"
"                           are always summarised in per_sku_summary)\n"
"  -n, --buyers N           buyers, one request id each (default 1000)\n"
"      --users U            distinct user ids, dealt evenly over buyers\n"
"                           in random order (default = buyers)\n"
"      --user-prefix P      user id prefix (default \"user-\")\n"
"      --qty-max Q          qty uniform in 1..Q (default 1)\n"
"      --ramp-ms MS         spread arrivals over MS (default 0: all at once)\n"
"  -c, --concurrency C      keep-alive connections = requests in flight\n"
"                           (default 256)\n"
"      --dup-ratio R        share of buyers that send their purchase twice\n"
"                           with the same request id (default 0.2)\n"
"      --retries N          retries of a call after 503 or a transport\n"
"                           error, same request id (default 5)\n"
"      --poll-ms MS         result poll interval (default 200)\n"
"      --wait-ms MS         long polls while a purchase is undecided: the gateway\n"
"                           answers when it is, or after MS (default 0: plain\n"
"                           polls); a hold left to expire is still polled\n"
"      --wait-concurrency N connections of their own for long polls (default 0:\n"
"                           they share --concurrency's)\n"
"      --wait-final         poll until every accepted buyer is final (default)\n"
"      --no-wait-final      do not wait for holds left to expire (payers still pay)\n"
"      --no-follow          a buyer ends with its purchase's answer: no polls,\n"
"                           pays or cancels (measures the accept path alone)\n"
"      --final-timeout-s S  give up on a buyer S after its 202 (default 120)\n"
"      --pay-ratio P        share of buyers that pay when reserved (0.5)\n"
"      --cancel-ratio P     share of buyers that cancel when reserved (0);\n"
"                           the rest let the hold expire\n"
"      --seed N             PRNG seed for every decision (default 1)\n"
"      --run-id ID          request id prefix: ids are ID-<n>\n"
"                           (default: derived from time and pid)\n"
"      --timeout-ms MS      per-request timeout (default 10000)\n"
"      --progress           live progress line on stderr\n"
"      --json FILE          also write the report as JSON (\"-\": stdout)\n"
"      --timeseries FILE    CSV, one row per interval from the first request:\n"
"                           t_s,sent,accepted,refused,final,answers_per_s,\n"
"                           purchases_per_s,purchase_p50_ms,purchase_p99_ms\n"
"      --interval-ms MS     timeseries interval (default 250)\n"
"      --jwt-secret-file F  sign each buyer's calls with an HS256 token (the\n"
"                           gateway's gateway.jwt_secret, in file F)\n"
"  -q, --quiet              no human summary on stdout\n"
"  -h, --help               this help\n"
"  -V, --version            print the version\n"
"\n"
"Exit: 0 run completed, 1 gateway unreachable or buyers unfinished,\n"
"2 usage error.\n");
}

enum {
	OPT_HOST_HEADER = 256, OPT_USERS, OPT_USER_PREFIX, OPT_QTY_MAX,
	OPT_RAMP_MS, OPT_DUP_RATIO, OPT_RETRIES, OPT_POLL_MS, OPT_WAIT_MS, OPT_WAIT_CONCURRENCY, OPT_WAIT_FINAL,
	OPT_NO_WAIT_FINAL, OPT_NO_FOLLOW, OPT_FINAL_TIMEOUT, OPT_PAY_RATIO, OPT_CANCEL_RATIO,
	OPT_SEED, OPT_RUN_ID, OPT_TIMEOUT_MS, OPT_PROGRESS, OPT_JSON,
	OPT_SKUS, OPT_SKU_PREFIX, OPT_PER_SKU, OPT_TIMESERIES, OPT_INTERVAL_MS, OPT_JWT_SECRET,
};

static const struct option long_opts[] = {
	{ "url", required_argument, NULL, 'u' },
	{ "host-header", required_argument, NULL, OPT_HOST_HEADER },
	{ "sku", required_argument, NULL, 's' },
	{ "buyers", required_argument, NULL, 'n' },
	{ "users", required_argument, NULL, OPT_USERS },
	{ "user-prefix", required_argument, NULL, OPT_USER_PREFIX },
	{ "qty-max", required_argument, NULL, OPT_QTY_MAX },
	{ "ramp-ms", required_argument, NULL, OPT_RAMP_MS },
	{ "concurrency", required_argument, NULL, 'c' },
	{ "dup-ratio", required_argument, NULL, OPT_DUP_RATIO },
	{ "retries", required_argument, NULL, OPT_RETRIES },
	{ "poll-ms", required_argument, NULL, OPT_POLL_MS },
	{ "wait-ms", required_argument, NULL, OPT_WAIT_MS },
	{ "wait-concurrency", required_argument, NULL, OPT_WAIT_CONCURRENCY },
	{ "wait-final", no_argument, NULL, OPT_WAIT_FINAL },
	{ "no-wait-final", no_argument, NULL, OPT_NO_WAIT_FINAL },
	{ "no-follow", no_argument, NULL, OPT_NO_FOLLOW },
	{ "final-timeout-s", required_argument, NULL, OPT_FINAL_TIMEOUT },
	{ "pay-ratio", required_argument, NULL, OPT_PAY_RATIO },
	{ "cancel-ratio", required_argument, NULL, OPT_CANCEL_RATIO },
	{ "seed", required_argument, NULL, OPT_SEED },
	{ "run-id", required_argument, NULL, OPT_RUN_ID },
	{ "timeout-ms", required_argument, NULL, OPT_TIMEOUT_MS },
	{ "progress", no_argument, NULL, OPT_PROGRESS },
	{ "json", required_argument, NULL, OPT_JSON },
	{ "skus", required_argument, NULL, OPT_SKUS },
	{ "sku-prefix", required_argument, NULL, OPT_SKU_PREFIX },
	{ "per-sku", required_argument, NULL, OPT_PER_SKU },
	{ "timeseries", required_argument, NULL, OPT_TIMESERIES },
	{ "interval-ms", required_argument, NULL, OPT_INTERVAL_MS },
	{ "jwt-secret-file", required_argument, NULL, OPT_JWT_SECRET },
	{ "quiet", no_argument, NULL, 'q' },
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, 'V' },
	{ NULL, 0, NULL, 0 },
};

static const char *current_opt;

static const char *
opt_name(int opt)
{
	const struct option *o;

	for (o = long_opts; o->name != NULL; o++)
		if (o->val == opt)
			return o->name;
	return "option";
}

static void
bad_usage(const char *value, const char *what)
{
	fprintf(stderr, "flashsale-loadgen: invalid %s: '%s' (see --help)\n",
		what, value);
	exit(2);
}

/* The first line of a file (a secret); exits 2 when unreadable or empty. */
static char *
read_secret(const char *path)
{
	static char buf[1024];
	FILE *f = fopen(path, "r");

	if (f == NULL || fgets(buf, sizeof(buf), f) == NULL)
		bad_usage(path, "--jwt-secret-file (unreadable)");
	fclose(f);
	buf[strcspn(buf, "\r\n")] = '\0';
	if (buf[0] == '\0')
		bad_usage(path, "--jwt-secret-file (empty)");
	return buf;
}

static uint64_t
parse_u64(const char *s, uint64_t min, uint64_t max)
{
	char *end;
	unsigned long long v;

	errno = 0;
	if (s[0] == '-' || s[0] == '\0')
		bad_usage(s, current_opt);
	v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		bad_usage(s, current_opt);
	return v;
}

static double
parse_ratio(const char *s)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || *end != '\0' || end == s || !(v >= 0.0 && v <= 1.0))
		bad_usage(s, current_opt);
	return v;
}

/* Characters the gateway accepts in a request id / user id / SKU. */
static bool
id_chars_ok(const char *s, const char *extra, size_t maxlen)
{
	size_t n = strlen(s), i;

	if (n == 0 || n > maxlen)
		return false;
	for (i = 0; i < n; i++) {
		char c = s[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		    (c >= '0' && c <= '9') || c == '_' || c == '-' ||
		    strchr(extra, c) != NULL))
			return false;
	}
	return true;
}

static void
add_skus(struct lg_config *cf, const char *arg)
{
	char *copy = strdup(arg), *tok, *save = NULL;

	if (copy == NULL) {
		fprintf(stderr, "flashsale-loadgen: out of memory\n");
		exit(1);
	}
	for (tok = strtok_r(copy, ",", &save); tok != NULL;
	    tok = strtok_r(NULL, ",", &save)) {
		char **n;

		if (!id_chars_ok(tok, ".:", 64))
			bad_usage(tok, "--sku");
		if (cf->nskus >= LG_MAX_SKUS)
			bad_usage(arg, "--sku (too many SKUs)");
		n = realloc(cf->skus, (cf->nskus + 1) * sizeof(*n));
		if (n == NULL || (n[cf->nskus] = strdup(tok)) == NULL) {
			fprintf(stderr, "flashsale-loadgen: out of memory\n");
			exit(1);
		}
		cf->skus = n;
		cf->nskus++;
	}
	free(copy);
}

/* --skus N: names prefix0 .. prefix(N-1). */
static void
gen_skus(struct lg_config *cf, const char *prefix, size_t n)
{
	char name[128];
	size_t i;

	snprintf(name, sizeof(name), "%s%zu", prefix, n - 1);
	if (!id_chars_ok(name, ".:", 64))
		bad_usage(prefix, "--sku-prefix ([A-Za-z0-9._:-], names <= 64)");
	cf->skus = calloc(n, sizeof(*cf->skus));
	if (cf->skus == NULL) {
		fprintf(stderr, "flashsale-loadgen: out of memory\n");
		exit(1);
	}
	for (i = 0; i < n; i++) {
		snprintf(name, sizeof(name), "%s%zu", prefix, i);
		if ((cf->skus[i] = strdup(name)) == NULL) {
			fprintf(stderr, "flashsale-loadgen: out of memory\n");
			exit(1);
		}
		cf->nskus++;
	}
	cf->sku_prefix = prefix;
}

static void
free_skus(struct lg_config *cf)
{
	size_t i;

	for (i = 0; i < cf->nskus; i++)
		free(cf->skus[i]);
	free(cf->skus);
}

int
main(int argc, char **argv)
{
	struct lg_config cf = {
		.url = "http://127.0.0.1:8080",
		.buyers = 1000,
		.qty_max = 1,
		.concurrency = 256,
		.dup_ratio = 0.2,
		.retries = 5,
		.poll_ms = 200,
		.wait_final = true,
		.final_timeout_s = 120,
		.pay_ratio = 0.5,
		.cancel_ratio = 0,
		.seed = 1,
		.user_prefix = "user-",
		.timeout_ms = 10000,
		.per_sku_max = LG_PER_SKU_AUTO,
		.interval_ms = 250,
	};
	const char *sku_prefix = NULL;
	size_t gen_nskus = 0;
	struct lg_result res;
	const char *json_path = NULL;
	bool quiet = false;
	char err[512], run_id[40], idbuf[128];
	int opt, code;

	memset(&res, 0, sizeof(res));
	while ((opt = getopt_long(argc, argv, "u:s:n:c:qhV", long_opts,
	    NULL)) != -1) {
		current_opt = opt_name(opt);
		switch (opt) {
		case 'u':
			cf.url = optarg;
			break;
		case OPT_HOST_HEADER:
			cf.host_header = optarg;
			break;
		case 's':
			add_skus(&cf, optarg);
			break;
		case 'n':
			cf.buyers = (uint32_t)parse_u64(optarg, 1, LG_MAX_BUYERS);
			break;
		case OPT_USERS:
			cf.users = (uint32_t)parse_u64(optarg, 1, LG_MAX_BUYERS);
			break;
		case OPT_USER_PREFIX:
			cf.user_prefix = optarg;
			break;
		case OPT_QTY_MAX:
			cf.qty_max = (uint32_t)parse_u64(optarg, 1, 65535);
			break;
		case OPT_RAMP_MS:
			cf.ramp_ms = (uint32_t)parse_u64(optarg, 0, 3600000);
			break;
		case 'c':
			cf.concurrency = (uint32_t)parse_u64(optarg, 1, 65536);
			break;
		case OPT_DUP_RATIO:
			cf.dup_ratio = parse_ratio(optarg);
			break;
		case OPT_RETRIES:
			cf.retries = (uint32_t)parse_u64(optarg, 0, 100);
			break;
		case OPT_WAIT_MS:
			cf.wait_ms = (uint32_t)parse_u64(optarg, 0, 60000);
			break;
		case OPT_WAIT_CONCURRENCY:
			cf.wait_concurrency = (uint32_t)parse_u64(optarg, 0, 65536);
			break;
		case OPT_POLL_MS:
			cf.poll_ms = (uint32_t)parse_u64(optarg, 0, 600000);
			break;
		case OPT_WAIT_FINAL:
			cf.wait_final = true;
			break;
		case OPT_NO_WAIT_FINAL:
			cf.wait_final = false;
			break;
		case OPT_NO_FOLLOW:
			cf.no_follow = true;
			cf.wait_final = false;
			break;
		case OPT_FINAL_TIMEOUT:
			cf.final_timeout_s = (uint32_t)parse_u64(optarg, 1, 86400);
			break;
		case OPT_PAY_RATIO:
			cf.pay_ratio = parse_ratio(optarg);
			break;
		case OPT_CANCEL_RATIO:
			cf.cancel_ratio = parse_ratio(optarg);
			break;
		case OPT_SEED:
			cf.seed = parse_u64(optarg, 0, UINT64_MAX);
			break;
		case OPT_RUN_ID:
			cf.run_id = optarg;
			break;
		case OPT_TIMEOUT_MS:
			cf.timeout_ms = (uint32_t)parse_u64(optarg, 1, 3600000);
			break;
		case OPT_PROGRESS:
			cf.progress = true;
			break;
		case OPT_JSON:
			json_path = optarg;
			break;
		case OPT_SKUS:
			gen_nskus = (size_t)parse_u64(optarg, 1, LG_MAX_GEN_SKUS);
			break;
		case OPT_SKU_PREFIX:
			sku_prefix = optarg;
			break;
		case OPT_PER_SKU:
			cf.per_sku_max = (size_t)parse_u64(optarg, 0,
				LG_MAX_GEN_SKUS);
			break;
		case OPT_TIMESERIES:
			cf.timeseries_path = optarg;
			break;
		case OPT_INTERVAL_MS:
			cf.interval_ms = (uint32_t)parse_u64(optarg, 10, 3600000);
			break;
		case OPT_JWT_SECRET:
			cf.jwt_secret = read_secret(optarg);
			break;
		case 'q':
			quiet = true;
			break;
		case 'h':
			usage(stdout);
			free_skus(&cf);
			return 0;
		case 'V':
			printf("flashsale-loadgen %s\n", FLASHSALE_VERSION);
			free_skus(&cf);
			return 0;
		default:
			usage(stderr);
			free_skus(&cf);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "flashsale-loadgen: unexpected argument: %s\n",
			argv[optind]);
		free_skus(&cf);
		return 2;
	}
	if (gen_nskus > 0 && cf.nskus > 0) {
		fprintf(stderr, "flashsale-loadgen: --sku and --skus cannot be combined\n");
		free_skus(&cf);
		return 2;
	}
	if (sku_prefix != NULL && gen_nskus == 0) {
		fprintf(stderr, "flashsale-loadgen: --sku-prefix needs --skus\n");
		free_skus(&cf);
		return 2;
	}
	if (gen_nskus > 0)
		gen_skus(&cf, sku_prefix ? sku_prefix : "sku-", gen_nskus);
	if (cf.nskus == 0) {
		fprintf(stderr, "flashsale-loadgen: --sku or --skus is required (see --help)\n");
		return 2;
	}
	if (cf.pay_ratio + cf.cancel_ratio > 1.0 + 1e-9) {
		fprintf(stderr, "flashsale-loadgen: --pay-ratio + --cancel-ratio must be <= 1\n");
		free_skus(&cf);
		return 2;
	}
	if (cf.users == 0)
		cf.users = cf.buyers;
	if (cf.concurrency > cf.buyers * 2)
		cf.concurrency = cf.buyers * 2;	/* no idle sockets for nothing */
	/* A long poll must not outlive the request's own timeout. */
	if (cf.wait_concurrency > cf.buyers)
		cf.wait_concurrency = cf.buyers;
	if (cf.wait_ms > 0 && cf.timeout_ms < cf.wait_ms + 5000)
		cf.timeout_ms = cf.wait_ms + 5000;
	if (cf.run_id == NULL) {
		/* fresh ids per run: the gateway answers a reused id with its first outcome */
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		snprintf(run_id, sizeof(run_id), "lg%llx%llx",
			(unsigned long long)(ts.tv_sec * 1000 + ts.tv_nsec / 1000000),
			(unsigned long long)getpid());
		cf.run_id = run_id;
	}
	snprintf(idbuf, sizeof(idbuf), "%s-%u", cf.run_id, cf.buyers - 1);
	if (!id_chars_ok(idbuf, "", 64)) {
		fprintf(stderr, "flashsale-loadgen: --run-id must be [A-Za-z0-9_-] and leave room for -<n> in 64 chars\n");
		free_skus(&cf);
		return 2;
	}
	snprintf(idbuf, sizeof(idbuf), "%s%u", cf.user_prefix, cf.users - 1);
	if (!id_chars_ok(idbuf, ".:@", 64)) {
		fprintf(stderr, "flashsale-loadgen: --user-prefix must be [A-Za-z0-9._:@-] and short\n");
		free_skus(&cf);
		return 2;
	}

	if (lg_run(&cf, &res, err, sizeof(err)) != 0) {
		fprintf(stderr, "flashsale-loadgen: %s\n", err);
		lg_result_free(&res);
		free_skus(&cf);
		return 1;
	}
	if (res.responses == 0)
		code = 1;
	else if (cf.wait_final && res.unfinished > 0)
		code = 1;
	else if (res.interrupted)
		code = 1;
	else
		code = 0;

	lg_report_prepare(&res);
	if (!quiet)
		lg_report_print(stdout, &cf, &res, code);
	fflush(stdout);
	if (json_path != NULL &&
	    lg_report_json(json_path, &cf, &res, code, err, sizeof(err)) != 0) {
		fprintf(stderr, "flashsale-loadgen: %s\n", err);
		code = 1;
	}
	if (res.ts_write_failed) {
		fprintf(stderr, "flashsale-loadgen: cannot write %s\n",
			cf.timeseries_path);
		code = 1;
	}
	if (res.responses == 0)
		fprintf(stderr, "flashsale-loadgen: could not reach the gateway at %s\n",
			cf.url);
	lg_result_free(&res);
	free_skus(&cf);
	return code;
}
