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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "flashsale_config.h"
#include "kafka.h"
#include "log.h"
#include "util.h"

#define APP "kafka-mock"

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

/* librdkafka's own log lines, kept in the same logfmt shape. */
static void rk_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	if (level <= 3)
		log_error("rdkafka_log", "fac=%s msg=\"%s\"", fac, buf);
	else if (level <= 4)
		log_warn("rdkafka_log", "fac=%s msg=\"%s\"", fac, buf);
	else
		log_info("rdkafka_log", "fac=%s msg=\"%s\"", fac, buf);
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

	log_init(APP);
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
		log_error("sigmask_failed", "msg=\"%s\"", strerror(errno));
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);

	conf = rd_kafka_conf_new();
	rd_kafka_conf_set_log_cb(conf, rk_log);
	/* The handle only hosts the mock cluster; it never connects anywhere. */
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (rk == NULL) {
		rd_kafka_conf_destroy(conf);
		log_error("rdkafka_new_failed", "msg=\"%s\"", errstr);
		return 1;
	}
	mc = rd_kafka_mock_cluster_new(rk, (int)brokers);
	if (mc == NULL) {
		log_error("mock_cluster_failed", "brokers=%ld", brokers);
		goto out;
	}
	for (size_t i = 0; i < sizeof(topics) / sizeof(topics[0]); i++) {
		rd_kafka_resp_err_t rerr;

		rerr = rd_kafka_mock_topic_create(mc, topics[i].name, topics[i].partitions,
						  (int)brokers);
		if (rerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
			log_error("topic_create_failed", "topic=%s msg=\"%s\"",
				 topics[i].name, rd_kafka_err2str(rerr));
			goto out;
		}
	}
	bootstraps = rd_kafka_mock_cluster_bootstraps(mc);
	if (bootstrap_file != NULL && util_write_atomic(bootstrap_file, bootstraps,
						   errstr, sizeof(errstr)) != 0) {
		log_error("bootstrap_file_failed", "file=%s msg=\"%s\"",
			 bootstrap_file, errstr);
		goto out;
	}
	printf("%s\n", bootstraps);
	fflush(stdout);
	log_info("ready", "brokers=%ld bootstrap=%s partitions=%d", brokers,
		 bootstraps, FS_PARTITIONS);

	while (sig != SIGTERM && sig != SIGINT) {
		if (sigwait(&set, &sig) != 0)
			break;
	}
	log_info("stopping", "signal=%d", sig);
	status = 0;
out:
	if (mc != NULL)
		rd_kafka_mock_cluster_destroy(mc);
	rd_kafka_destroy(rk);
	if (bootstrap_file != NULL && status == 0)
		unlink(bootstrap_file);
	return status;
}
