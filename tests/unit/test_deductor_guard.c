/*
 * The deductor's guard against a Redis that went back in time (guard.h):
 * floors learned from the ledger, notes for /healthz, and the comparison
 * with fs:wm after a reconnect, against a real redis-server (REDIS_SERVER).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "deductor.h"
#include "redis_server.h"

static void cmd_ok(const char *fmt, ...)
{
	va_list ap;
	redisReply *r;

	va_start(ap, fmt);
	r = redisvCommand(test_rc, fmt, ap);
	va_end(ap);
	assert_non_null(r);
	if (r->type == REDIS_REPLY_ERROR)
		fail_msg("redis: %s", r->str);
	freeReplyObject(r);
}

static bool fenced_in_redis(int p)
{
	redisReply *r = redisCommand(test_rc, "HEXISTS fs:fence %d", p);
	bool yes;

	assert_non_null(r);
	yes = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
	freeReplyObject(r);
	return yes;
}

/* Own every partition and pretend the ledger was read back for each. */
static void own_all(struct dd_guard *g)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(FS_PARTITIONS);

	for (int p = 0; p < FS_PARTITIONS; p++)
		rd_kafka_topic_partition_list_add(l, FS_TOPIC_INTENTS, p);
	guard_assigned(g, l);
	rd_kafka_topic_partition_list_destroy(l);
	assert_true(guard_needs_probe(g));
	for (int p = 0; p < FS_PARTITIONS; p++)
		g->probed[p] = true;
	assert_false(guard_needs_probe(g));
}

static void test_floors(void **state)
{
	fs_intent a = FLASHSALE__INTENT__INIT, b = FLASHSALE__INTENT__INIT;
	struct step_args args;
	struct dd_guard g;

	(void)state;
	assert_int_equal(guard_init(&g, 2), 0);
	a.sku = (char *)"A";
	b.sku = (char *)"B";
	guard_args(&g, &a, 3, 11, &args);
	assert_int_equal(args.partition, 3);
	assert_int_equal(args.offset, 11);
	assert_int_equal(args.min_wm, -1);
	assert_int_equal(args.min_seq, 0);

	assert_int_equal(guard_learn(&g, "A", 3, 10, 5), 0);
	assert_int_equal(guard_learn(&g, "A", 3, 7, 4), 0);     /* older: floors stay */
	assert_int_equal(guard_learn(&g, "B", -1, -1, 9), 0);   /* no intent: seq only */
	guard_args(&g, &a, 3, 11, &args);
	assert_int_equal(args.min_wm, 10);
	assert_int_equal(args.min_seq, 5);
	guard_args(&g, &b, 3, 12, &args);
	assert_int_equal(args.min_wm, 10);
	assert_int_equal(args.min_seq, 9);
	guard_args(&g, &b, 4, 0, &args);
	assert_int_equal(args.min_wm, -1);

	/* Past seq_max SKUs the sequence floors start over; watermarks stay. */
	assert_int_equal(guard_learn(&g, "C", 3, 13, 2), 0);
	guard_args(&g, &a, 3, 14, &args);
	assert_int_equal(args.min_seq, 0);
	assert_int_equal(args.min_wm, 13);
	guard_free(&g);
}

static void test_notes_and_health_json(void **state)
{
	struct dd_guard g;
	char json[512];

	(void)state;
	assert_int_equal(guard_init(&g, 100), 0);
	assert_true(guard_note_fenced(&g, 4, "A", "reason=watermark \"x\"\n"));
	assert_false(guard_note_fenced(&g, 4, "A", "again"));
	assert_false(guard_note_fenced(&g, 99, "A", "out of range"));
	assert_int_equal(guard_fenced_count(&g), 1);
	guard_fences_json(&g, json, sizeof(json));
	assert_non_null(strstr(json, "[{\"partition\":4,\"sku\":\"A\""));
	assert_non_null(strstr(json, "\"why\":\"again\"}]"));
	assert_true(guard_note_clear(&g, 4));
	assert_false(guard_note_clear(&g, 4));
	guard_fences_json(&g, json, sizeof(json));
	assert_string_equal(json, "[]");
	/* Too small a buffer still gives valid JSON. */
	assert_true(guard_note_fenced(&g, 1, "B", "why"));
	guard_fences_json(&g, json, 8);
	assert_string_equal(json, "[]");
	guard_free(&g);
}

/*
 * After a reconnect every owned partition is compared at once: one EVAL
 * with all of them (a regression test: with twelve partitions its argument
 * array overflowed). Behind ones get fenced, fences found are noted, and a
 * repaired partition's note goes.
 */
static void test_verify_every_partition(void **state)
{
	struct dd_guard g;
	char err[256];

	(void)state;
	cmd_ok("FLUSHALL");
	cmd_ok("SET fs:ready 1");
	assert_int_equal(guard_init(&g, 100), 0);
	own_all(&g);
	for (int p = 0; p < FS_PARTITIONS; p++) {
		assert_int_equal(guard_learn(&g, "A", p, 100 + p, 0), 0);
		cmd_ok("HSET fs:wm %d %d", p, p == 5 ? 50 : 100 + p);
	}
	cmd_ok("HSET fs:fence 7 %s", "reason=sku_seq partition=7 at_ms=1");
	assert_int_equal(guard_verify(&g, test_rc, err, sizeof(err)), 0);
	assert_int_equal(guard_fenced_count(&g), 2);
	assert_true(fenced_in_redis(5));
	assert_true(fenced_in_redis(7));
	assert_false(fenced_in_redis(6));

	/* Repaired: watermark back, fences lifted. */
	cmd_ok("HSET fs:wm 5 105");
	cmd_ok("DEL fs:fence");
	assert_int_equal(guard_verify(&g, test_rc, err, sizeof(err)), 0);
	assert_int_equal(guard_fenced_count(&g), 0);
	assert_false(fenced_in_redis(5));

	/* A lost state is not_ready's business, not a fence. */
	cmd_ok("FLUSHALL");
	assert_int_equal(guard_verify(&g, test_rc, err, sizeof(err)), 0);
	assert_int_equal(guard_fenced_count(&g), 0);
	assert_false(fenced_in_redis(5));
	guard_free(&g);
}

static void test_revoked_partitions_are_forgotten(void **state)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
	struct dd_guard g;

	(void)state;
	assert_int_equal(guard_init(&g, 100), 0);
	own_all(&g);
	assert_true(guard_note_fenced(&g, 2, "A", "why"));
	rd_kafka_topic_partition_list_add(l, FS_TOPIC_INTENTS, 2);
	guard_revoked(&g, l);
	assert_int_equal(guard_fenced_count(&g), 0);
	assert_false(g.owned[2]);
	rd_kafka_topic_partition_list_destroy(l);
	guard_free(&g);
}

int main(void)
{
	const char *server = getenv("REDIS_SERVER");
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_floors),
		cmocka_unit_test(test_notes_and_health_json),
		cmocka_unit_test(test_verify_every_partition),
		cmocka_unit_test(test_revoked_partitions_are_forgotten),
	};

	if (server == NULL || server[0] == '\0') {
		printf("SKIP: REDIS_SERVER is empty (redis-server not found at configure time)\n");
		return 77;
	}
	return cmocka_run_group_tests(tests, test_redis_group_setup, test_redis_group_teardown);
}
