/*
 * flashsale-bench-fill: pre-fill the intents topic for the deductor
 * benchmark. Produces N PURCHASE intents keyed by SKU with the production
 * producer (kafka_producer_new: same partitioner, acks, idempotence, linger)
 * and the production encoding (common/intent.h), each checked with
 * intent_validate first, so the deductor treats them exactly like the
 * gateway's.
 *
 * Intent n: request_id "<run-id>-<n>", user_id "<run-id>-u<n>", sku
 * "<sku-prefix><n % skus>". Running twice with the same run id produces the
 * same request ids again: the deductor applies them once (replays).
 *
 * The stack's Kafka mock (librdkafka's mock cluster) keeps only the last
 * ~5 MiB per partition: about 60,000 of these intents uncompressed, several
 * times that in the producers' lz4 batches (200,000 on one partition were
 * all read). A larger pre-fill of one partition loses its oldest intents
 * before the deductor reads them (the consumer logs "offset reset ...
 * Offset out of range"), which bench/run's held == filled check reports.
 *
 * --topic sends them elsewhere: bench/run warms a fresh broker up with this
 * producer's requests on a scratch topic, which no daemon reads.
 *
 * Exit status: 0 every message acknowledged, 1 some failed or the flush timed
 * out (or the producer could not be created), 2 usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "flashsale_config.h"
#include "intent.h"
#include "kafka.h"
#include "log.h"
#include "util.h"

#define APP "bench-fill"
#define FILL_SOURCE "bench-fill"
/* What the gateway records as the peer of a local client. */
#define FILL_CLIENT_IP "127.0.0.1"
#define FILL_FLUSH_MS 60000
#define FILL_QUEUE_FULL_POLL_MS 100

struct fill_opts {
	struct kafka_cfg kafka;
	unsigned long long count;
	unsigned long long skus;
	const char *sku_prefix;
	const char *run_id;
	const char *topic;
	unsigned long qty;
	bool json;
};

/* Written by the delivery report callback, which runs inside rd_kafka_poll/flush. */
struct fill_stats {
	unsigned long long delivered;
	unsigned long long failed;
	unsigned long long first_errors_logged;
};

static void usage(FILE *out)
{
	fprintf(out,
"usage: flashsale-bench-fill --count N [options]\n"
"\n"
"Pre-fill the intents topic (" FS_TOPIC_INTENTS ") with N PURCHASE intents,\n"
"keyed by SKU, with the daemons' producer settings.\n"
"\n"
"      --bootstrap LIST     Kafka bootstrap servers (default: env\n"
"                           FLASHSALE_KAFKA_BOOTSTRAP)\n"
"  -n, --count N            intents to produce (required, >= 1)\n"
"      --skus K             SKUs to spread them over (default 1)\n"
"      --sku-prefix P       SKU i is P<i>, i in 0..K-1; intent n goes to\n"
"                           SKU n %% K (default \"bench-sku-\")\n"
"      --run-id R           request id R-<n>, user id R-u<n> (default \"fill\")\n"
"      --qty N              units per purchase (default 1)\n"
"      --topic T            produce to T instead (default " FS_TOPIC_INTENTS ")\n"
"      --json               print {\"produced\":..,\"failed\":..,\"seconds\":..,\n"
"                           \"rate_per_s\":..} on stdout instead of a line on stderr\n"
"  -h, --help               this help\n"
"  -V, --version            print the version\n"
"\n"
"Environment: FLASHSALE_KAFKA_SETTINGS (extra librdkafka \"prop=value,...\"),\n"
"FLASHSALE_KAFKA_PRODUCE_TIMEOUT_MS (default 5000), as for the daemons.\n"
"\n"
"Exit: 0 all acknowledged, 1 some failed or the flush timed out, 2 usage error.\n");
}

static void fill_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	struct fill_stats *st = opaque;

	(void)rk;
	if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
		st->delivered++;
		return;
	}
	st->failed++;
	/* A dead broker fails everything: a few lines say why, not one per message. */
	if (st->first_errors_logged++ < 5)
		log_warn("delivery_failed", "err=%s", rd_kafka_err2name(m->err));
}

/* Strict unsigned parse in [min, max]; false on junk. */
static bool parse_ull(const char *s, unsigned long long min, unsigned long long max,
		      unsigned long long *out)
{
	char *end;
	unsigned long long v;

	if (s == NULL || *s == '\0' || *s == '-' || *s == '+')
		return false;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return false;
	*out = v;
	return true;
}

struct fill_ids {
	char request_id[FS_ID_MAX + 2];
	char user_id[FS_ID_MAX + 2];
	char sku[FS_ID_MAX + 2];
};

/*
 * Build intent n into in (pointing into ids). -1 with the reason in err when
 * the ids would break the contract (too long, bad characters).
 */
static int fill_intent(const struct fill_opts *o, unsigned long long n, struct fill_ids *ids,
		       fs_intent *in, char *err, size_t errlen)
{
	int a, b, c;

	a = snprintf(ids->request_id, sizeof(ids->request_id), "%s-%llu", o->run_id, n);
	b = snprintf(ids->user_id, sizeof(ids->user_id), "%s-u%llu", o->run_id, n);
	c = snprintf(ids->sku, sizeof(ids->sku), "%s%llu", o->sku_prefix, n % o->skus);
	if (a < 0 || b < 0 || c < 0 || a > FS_ID_MAX || b > FS_ID_MAX || c > FS_ID_MAX) {
		snprintf(err, errlen, "an id of intent %llu is longer than %d characters",
			 n, FS_ID_MAX);
		return -1;
	}
	*in = (fs_intent)FLASHSALE__INTENT__INIT;
	in->kind = FLASHSALE__INTENT__KIND__PURCHASE;
	in->request_id = ids->request_id;
	in->sku = ids->sku;
	in->user_id = ids->user_id;
	in->qty = (uint32_t)o->qty;
	in->client_ip = (char *)FILL_CLIENT_IP;
	in->sent_at_ms = now_ms();
	in->source = (char *)FILL_SOURCE;
	if (intent_validate(in, ids->sku, strlen(ids->sku), err, errlen) < 0)
		return -1;
	return 0;
}

/*
 * Produce intent n, waiting (serving delivery reports) while the local queue
 * is full. 0 enqueued, -1 refused for good with the reason in err.
 */
static int fill_produce(rd_kafka_t *rk, const char *topic, const fs_intent *in, char *err,
			size_t errlen)
{
	uint8_t buf[1024];
	size_t len, keylen;
	rd_kafka_resp_err_t e;

	/* Ids are at most 64 chars each: an intent is far below 1 KiB. */
	len = intent_packed_size(in);
	if (len > sizeof(buf)) {
		snprintf(err, errlen, "intent too large (%zu bytes)", len);
		return -1;
	}
	intent_pack(in, buf);
	keylen = strlen(in->sku);
	for (;;) {
		e = rd_kafka_producev(rk,
				      RD_KAFKA_V_TOPIC(topic),
				      RD_KAFKA_V_KEY(in->sku, keylen),
				      RD_KAFKA_V_VALUE(buf, len),
				      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
				      RD_KAFKA_V_END);
		if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL)
			break;
		/* Queued messages leave by delivery or by message.timeout.ms: this ends. */
		rd_kafka_poll(rk, FILL_QUEUE_FULL_POLL_MS);
	}
	if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
		snprintf(err, errlen, "produce: %s", rd_kafka_err2str(e));
		return -1;
	}
	return 0;
}

enum { OPT_BOOTSTRAP = 256, OPT_SKUS, OPT_SKU_PREFIX, OPT_RUN_ID, OPT_QTY, OPT_JSON, OPT_TOPIC };

static const struct option long_opts[] = {
	{ "bootstrap", required_argument, NULL, OPT_BOOTSTRAP },
	{ "count", required_argument, NULL, 'n' },
	{ "skus", required_argument, NULL, OPT_SKUS },
	{ "sku-prefix", required_argument, NULL, OPT_SKU_PREFIX },
	{ "run-id", required_argument, NULL, OPT_RUN_ID },
	{ "qty", required_argument, NULL, OPT_QTY },
	{ "json", no_argument, NULL, OPT_JSON },
	{ "topic", required_argument, NULL, OPT_TOPIC },
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, 'V' },
	{ NULL, 0, NULL, 0 },
};

/* Say what is wrong, then the usage; returns the usage exit status. */
static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "flashsale-bench-fill: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	usage(stderr);
	return 2;
}

/* 2 on a usage error, 0 to go on, and -1 when -h/-V was answered. */
static int fill_parse(struct fill_opts *o, int argc, char **argv)
{
	unsigned long long v;
	const char *env;
	bool have_count = false;
	int opt;

	memset(o, 0, sizeof(*o));
	o->skus = 1;
	o->sku_prefix = "bench-sku-";
	o->run_id = "fill";
	o->topic = FS_TOPIC_INTENTS;
	o->qty = 1;
	o->kafka.bootstrap = getenv("FLASHSALE_KAFKA_BOOTSTRAP");
	o->kafka.settings = getenv("FLASHSALE_KAFKA_SETTINGS");
	o->kafka.produce_timeout_ms = 5000;
	env = getenv("FLASHSALE_KAFKA_PRODUCE_TIMEOUT_MS");
	if (env != NULL && env[0] != '\0') {
		if (!parse_ull(env, 100, 300000, &v))
			return usage_error("FLASHSALE_KAFKA_PRODUCE_TIMEOUT_MS: not in 100..300000: %s",
					   env);
		o->kafka.produce_timeout_ms = (long long)v;
	}
	while ((opt = getopt_long(argc, argv, "n:hV", long_opts, NULL)) != -1) {
		switch (opt) {
		case OPT_BOOTSTRAP:
			o->kafka.bootstrap = optarg;
			break;
		case 'n':
			if (!parse_ull(optarg, 1, 1000000000ULL, &o->count))
				return usage_error("--count: not in 1..1000000000: %s", optarg);
			have_count = true;
			break;
		case OPT_SKUS:
			if (!parse_ull(optarg, 1, 1000000ULL, &o->skus))
				return usage_error("--skus: not in 1..1000000: %s", optarg);
			break;
		case OPT_SKU_PREFIX:
			o->sku_prefix = optarg;
			break;
		case OPT_RUN_ID:
			o->run_id = optarg;
			break;
		case OPT_QTY:
			if (!parse_ull(optarg, 1, 1000000ULL, &v))
				return usage_error("--qty: not in 1..1000000: %s", optarg);
			o->qty = (unsigned long)v;
			break;
		case OPT_JSON:
			o->json = true;
			break;
		case OPT_TOPIC:
			if (optarg[0] == '\0')
				return usage_error("--topic: empty");
			o->topic = optarg;
			break;
		case 'h':
			usage(stdout);
			return -1;
		case 'V':
			printf("flashsale-bench-fill %s\n", FLASHSALE_VERSION);
			return -1;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc)
		return usage_error("unexpected argument %s", argv[optind]);
	if (!have_count)
		return usage_error("--count is required");
	if (o->kafka.bootstrap == NULL || o->kafka.bootstrap[0] == '\0')
		return usage_error("no --bootstrap and FLASHSALE_KAFKA_BOOTSTRAP is not set");
	if (o->kafka.settings == NULL)
		o->kafka.settings = "";
	return 0;
}

int main(int argc, char **argv)
{
	struct fill_opts o;
	struct fill_stats st;
	struct fill_ids ids;
	fs_intent in;
	rd_kafka_t *rk;
	char err[512];
	unsigned long long n, refused = 0, failed;
	int64_t t0, t1;
	double secs, rate;
	bool flushed;
	int rc;

	log_init(APP);
	rc = fill_parse(&o, argc, argv);
	if (rc != 0)
		return rc < 0 ? 0 : rc;
	/* The longest ids belong to the last intent and the last SKU: check both up front. */
	if (fill_intent(&o, o.count - 1, &ids, &in, err, sizeof(err)) < 0 ||
	    fill_intent(&o, o.skus - 1, &ids, &in, err, sizeof(err)) < 0)
		return usage_error("the intents would be invalid: %s", err);

	memset(&st, 0, sizeof(st));
	rk = kafka_producer_new(&o.kafka, "flashsale-bench-fill", o.topic,
				fill_dr_cb, NULL, &st,
				err, sizeof(err));
	if (rk == NULL) {
		log_error("startup_failed", "msg=\"%s\"", err);
		return 1;
	}

	t0 = mono_us();
	for (n = 0; n < o.count; n++) {
		if (fill_intent(&o, n, &ids, &in, err, sizeof(err)) < 0 ||
		    fill_produce(rk, o.topic, &in, err, sizeof(err)) < 0) {
			/* Fatal producer state (or a contract break): the rest would fail too. */
			log_error("produce_failed", "n=%llu msg=\"%s\"", n, err);
			refused = o.count - n;
			break;
		}
		rd_kafka_poll(rk, 0);
	}
	flushed = kafka_flush(rk, FILL_FLUSH_MS) == 0;
	if (!flushed) {
		log_error("flush_timeout", "left=%d timeout_ms=%d", rd_kafka_outq_len(rk),
			  FILL_FLUSH_MS);
		/* The rest get their (failed) delivery reports before destroy. */
		rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
		rd_kafka_poll(rk, 0);
	}
	t1 = mono_us();
	rd_kafka_destroy(rk);

	failed = st.failed + refused;
	secs = (double)(t1 - t0) / 1e6;
	rate = secs > 0 ? (double)st.delivered / secs : 0.0;
	if (o.json)
		printf("{\"produced\":%llu,\"failed\":%llu,\"seconds\":%.3f,\"rate_per_s\":%.1f}\n",
		       st.delivered, failed, secs, rate);
	else
		fprintf(stderr, "flashsale-bench-fill: produced %llu, failed %llu in %.3f s "
			"(%.0f intents/s) to %s\n", st.delivered, failed, secs, rate,
			o.topic);
	return failed == 0 && flushed ? 0 : 1;
}
