/*
 * common/kafka.h against librdkafka's mock cluster: watermarks of a
 * partition whose leader moved. librdkafka 2.0 keeps asking the old leader
 * ("Not leader for partition") until its periodic metadata refresh; a
 * three-node campaign seed (tests/chaos, --kafka kraft3, seed 9) stalled a
 * deductor's probe that way for 2.5 minutes, its purchases undecided.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "kafka.h"

static rd_kafka_t *new_client(rd_kafka_type_t type, const char *bootstrap)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char err[256];
	rd_kafka_t *rk;

	assert_int_equal(rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, err,
					   sizeof(err)), RD_KAFKA_CONF_OK);
	assert_int_equal(rd_kafka_conf_set(conf, "group.id", "test-kafka", err, sizeof(err)),
			 RD_KAFKA_CONF_OK);
	assert_int_equal(rd_kafka_conf_set(conf, "log_level", "0", err, sizeof(err)),
			 RD_KAFKA_CONF_OK);
	rk = rd_kafka_new(type, conf, err, sizeof(err));
	assert_non_null(rk);
	return rk;
}

static void test_watermarks_follow_a_new_leader(void **state)
{
	rd_kafka_t *host = new_client(RD_KAFKA_PRODUCER, "");
	rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(host, 3);
	rd_kafka_t *reader;
	int64_t lo = -1, hi = -1;

	(void)state;
	assert_non_null(mc);
	assert_int_equal(rd_kafka_mock_topic_create(mc, "t", 1, 3), RD_KAFKA_RESP_ERR_NO_ERROR);
	assert_int_equal(rd_kafka_mock_partition_set_leader(mc, "t", 0, 1),
			 RD_KAFKA_RESP_ERR_NO_ERROR);
	reader = new_client(RD_KAFKA_CONSUMER, rd_kafka_mock_cluster_bootstraps(mc));
	assert_int_equal(kafka_watermarks(reader, "t", 0, &lo, &hi, 5000),
			 RD_KAFKA_RESP_ERR_NO_ERROR);
	assert_int_equal(lo, 0);
	assert_int_equal(hi, 0);

	/* The leader moves; the reader still knows the old one. */
	assert_int_equal(rd_kafka_mock_partition_set_leader(mc, "t", 0, 2),
			 RD_KAFKA_RESP_ERR_NO_ERROR);
	for (int i = 0; i < 3; i++) {
		lo = hi = -1;
		assert_int_equal(kafka_watermarks(reader, "t", 0, &lo, &hi, 5000),
				 RD_KAFKA_RESP_ERR_NO_ERROR);
		assert_int_equal(hi, 0);
	}
	rd_kafka_destroy(reader);
	rd_kafka_mock_cluster_destroy(mc);
	rd_kafka_destroy(host);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_watermarks_follow_a_new_leader),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
