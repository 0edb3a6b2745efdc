/*
 * flashsale-kafka-mock: librdkafka's in-process mock cluster, run as its own
 * process so that the daemons and the tests talk to a Kafka-protocol broker
 * over TCP without a JVM. It creates the project's topics with the fixed
 * partition count, announces the bootstrap list, and lives until SIGTERM or
 * SIGINT. Development and tests only: the mock keeps everything in memory.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "flashsale_config.h"
#include "kafka.h"

#define APP "kafka-mock"

/* One logfmt line on stderr, like common/log.c, without linking common. */
static void mock_log(const char *level, const char *event, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void mock_log(const char *level, const char *event, const char *fmt, ...)
{
	struct timespec ts;
	struct tm tm;
	char when[32];
	va_list ap;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
	fprintf(stderr, "ts=%s.%03ldZ level=%s app=" APP " event=%s ",
		when, ts.tv_nsec / 1000000, level, event);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: flashsale-kafka-mock [options]\n"
		"Run a librdkafka mock Kafka cluster with the flashsale topics.\n"
		"\n"
		"  --brokers N            number of mock brokers (default 3)\n"
		"  --bootstrap-file PATH  also write the bootstrap list to PATH (atomically)\n"
		"  -h, --help             show this help\n"
		"  -V, --version          show the version\n"
		"\n"
		"The bootstrap list is printed on one stdout line once the topics exist.\n"
		"SIGTERM or SIGINT stops the cluster (its data is lost).\n");
}

/* Write text plus a newline to path through path.tmp + rename, so a reader
 * polling for the file never sees it half written. */
static int write_atomic(const char *path, const char *text, char *err, size_t errlen)
{
	char tmp[4096];
	FILE *f;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
		snprintf(err, errlen, "path too long");
		return -1;
	}
	f = fopen(tmp, "w");
	if (f == NULL) {
		snprintf(err, errlen, "open of the temporary file: %s", strerror(errno));
		return -1;
	}
	if (fprintf(f, "%s\n", text) < 0 || fflush(f) != 0 || fsync(fileno(f)) != 0) {
		snprintf(err, errlen, "write of the temporary file: %s", strerror(errno));
		fclose(f);
		unlink(tmp);
		return -1;
	}
	if (fclose(f) != 0) {
		snprintf(err, errlen, "close of the temporary file: %s", strerror(errno));
		unlink(tmp);
		return -1;
	}
	if (rename(tmp, path) != 0) {
		snprintf(err, errlen, "rename of the temporary file: %s", strerror(errno));
		unlink(tmp);
		return -1;
	}
	return 0;
}

/* librdkafka's own log lines, kept in the same logfmt shape. */
static void rk_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	mock_log(level <= 3 ? "error" : level <= 4 ? "warn" : "info", "rdkafka_log",
		 "fac=%s msg=\"%s\"", fac, buf);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "brokers", required_argument, NULL, 'b' },
		{ "bootstrap-file", required_argument, NULL, 'f' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	static const struct {
		const char *name;
		int partitions;
	} topics[] = {
		{ FS_TOPIC_INTENTS, FS_PARTITIONS },
		{ FS_TOPIC_LEDGER, FS_PARTITIONS },
		{ FS_TOPIC_DEADLETTER, 1 },
	};
	const char *bootstrap_file = NULL;
	long brokers = 3;
	char errstr[512];
	char *end;
	rd_kafka_conf_t *conf;
	rd_kafka_t *rk = NULL;
	rd_kafka_mock_cluster_t *mc = NULL;
	const char *bootstraps;
	sigset_t set;
	int sig = 0;
	int status = 1;
	int c;

	while ((c = getopt_long(argc, argv, "hV", opts, NULL)) != -1) {
		switch (c) {
		case 'b':
			errno = 0;
			brokers = strtol(optarg, &end, 10);
			if (errno != 0 || *end != '\0' || brokers < 1 || brokers > 16) {
				fprintf(stderr, "flashsale-kafka-mock: --brokers must be 1..16\n");
				return 2;
			}
			break;
		case 'f':
			bootstrap_file = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("flashsale-kafka-mock %s (librdkafka %s)\n",
			       FLASHSALE_VERSION, rd_kafka_version_str());
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}

	/*
	 * Block the stop signals before librdkafka starts its threads (they
	 * inherit the mask), so that sigwait below is the only receiver.
	 */
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0) {
		mock_log("error", "sigmask_failed", "msg=\"%s\"", strerror(errno));
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);

	conf = rd_kafka_conf_new();
	rd_kafka_conf_set_log_cb(conf, rk_log);
	/* The handle only hosts the mock cluster; it never connects anywhere. */
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (rk == NULL) {
		rd_kafka_conf_destroy(conf);
		mock_log("error", "rdkafka_new_failed", "msg=\"%s\"", errstr);
		return 1;
	}
	mc = rd_kafka_mock_cluster_new(rk, (int)brokers);
	if (mc == NULL) {
		mock_log("error", "mock_cluster_failed", "brokers=%ld", brokers);
		goto out;
	}
	for (size_t i = 0; i < sizeof(topics) / sizeof(topics[0]); i++) {
		rd_kafka_resp_err_t rerr;

		rerr = rd_kafka_mock_topic_create(mc, topics[i].name, topics[i].partitions,
						  (int)brokers);
		if (rerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
			mock_log("error", "topic_create_failed", "topic=%s msg=\"%s\"",
				 topics[i].name, rd_kafka_err2str(rerr));
			goto out;
		}
	}
	bootstraps = rd_kafka_mock_cluster_bootstraps(mc);
	if (bootstrap_file != NULL && write_atomic(bootstrap_file, bootstraps,
						   errstr, sizeof(errstr)) != 0) {
		mock_log("error", "bootstrap_file_failed", "file=%s msg=\"%s\"",
			 bootstrap_file, errstr);
		goto out;
	}
	printf("%s\n", bootstraps);
	fflush(stdout);
	mock_log("info", "ready", "brokers=%ld bootstrap=%s partitions=%d", brokers,
		 bootstraps, FS_PARTITIONS);

	while (sig != SIGTERM && sig != SIGINT) {
		if (sigwait(&set, &sig) != 0)
			break;
	}
	mock_log("info", "stopping", "signal=%d", sig);
	status = 0;
out:
	if (mc != NULL)
		rd_kafka_mock_cluster_destroy(mc);
	rd_kafka_destroy(rk);
	if (bootstrap_file != NULL && status == 0)
		unlink(bootstrap_file);
	return status;
}
