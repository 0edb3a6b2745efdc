/*
 * The deductor's pure parts: ledger event building, the step's command and
 * its reply parsing.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "deductor.h"

static void test_event_id(void **state)
{
	char id[LEDGER_EVENT_ID_MAX];

	(void)state;
	assert_int_equal(ledger_event_id(id, sizeof(id), "r1",
					 FLASHSALE__LEDGER_EVENT__KIND__RESERVED, ""), 0);
	assert_string_equal(id, "r1:reserved");
	assert_int_equal(ledger_event_id(id, sizeof(id), "r1",
					 FLASHSALE__LEDGER_EVENT__KIND__PAID, ""), 0);
	assert_string_equal(id, "r1:paid");
	assert_int_equal(ledger_event_id(id, sizeof(id), "r1",
					 FLASHSALE__LEDGER_EVENT__KIND__EXPIRED, ""), 0);
	assert_string_equal(id, "r1:expired");
	assert_int_equal(ledger_event_id(id, sizeof(id), "r1",
					 FLASHSALE__LEDGER_EVENT__KIND__CANCELLED, ""), 0);
	assert_string_equal(id, "r1:cancelled");
	assert_int_equal(ledger_event_id(id, sizeof(id), "r1",
					 FLASHSALE__LEDGER_EVENT__KIND__REFUSED, "sold_out"), 0);
	assert_string_equal(id, "r1:refused:sold_out");
	assert_int_equal(ledger_event_id(id, sizeof(id), "r1",
					 FLASHSALE__LEDGER_EVENT__KIND__TRANSITION_REFUSED,
					 "not_due"), 0);
	assert_string_equal(id, "r1:transition_refused:not_due");
	assert_int_equal(ledger_event_id(id, 8, "r1", FLASHSALE__LEDGER_EVENT__KIND__REFUSED,
					 "sold_out"), -1);
}

static struct step_result ok_result(void)
{
	struct step_result r;

	memset(&r, 0, sizeof(r));
	r.status = STEP_OK;
	r.event_kind = FLASHSALE__LEDGER_EVENT__KIND__RESERVED;
	strcpy(r.state, "reserved");
	strcpy(r.user_id, "alice");
	r.qty = 2;
	r.deadline_ms = 1700000060000;
	r.at_ms = 1700000000000;
	r.remaining = 8;
	r.held = 2;
	r.sold = 0;
	r.initial = 10;
	r.epoch = 42;
	r.changed = true;
	return r;
}

static void test_ledger_build(void **state)
{
	Flashsale__Intent in = FLASHSALE__INTENT__INIT;
	struct step_result r = ok_result();
	struct ledger_out out;
	fs_ledger_event *back;
	uint8_t buf[512];
	size_t len;
	char err[128];

	(void)state;
	in.kind = FLASHSALE__INTENT__KIND__PURCHASE;
	in.request_id = "rid-1";
	in.sku = "sku-9";
	in.user_id = "alice";
	in.qty = 2;
	assert_int_equal(ledger_build(&out, &in, &r, 7, 12345, err, sizeof(err)), 0);

	/* Through the wire and back: every field survives. */
	len = flashsale__ledger_event__get_packed_size(&out.ev);
	assert_true(len < sizeof(buf));
	flashsale__ledger_event__pack(&out.ev, buf);
	back = ledger_decode(buf, len, err, sizeof(err));
	assert_non_null(back);
	assert_int_equal(back->kind, FLASHSALE__LEDGER_EVENT__KIND__RESERVED);
	assert_string_equal(back->event_id, "rid-1:reserved");
	assert_string_equal(back->request_id, "rid-1");
	assert_string_equal(back->sku, "sku-9");
	assert_string_equal(back->user_id, "alice");
	assert_int_equal(back->qty, 2);
	assert_string_equal(back->state, "reserved");
	assert_string_equal(back->reason, "");
	assert_int_equal(back->deadline_ms, 1700000060000);
	assert_int_equal(back->at_ms, 1700000000000);
	assert_int_equal(back->remaining, 8);
	assert_int_equal(back->held, 2);
	assert_int_equal(back->sold, 0);
	assert_int_equal(back->initial, 10);
	assert_int_equal(back->intent_kind, FLASHSALE__INTENT__KIND__PURCHASE);
	assert_int_equal(back->intent_partition, 7);
	assert_int_equal(back->intent_offset, 12345);
	assert_int_equal(back->epoch, 42);
	ledger_free(back);
}

static void test_ledger_build_refusals(void **state)
{
	Flashsale__Intent in = FLASHSALE__INTENT__INIT;
	struct step_result r = ok_result();
	struct ledger_out out;
	char err[128];

	(void)state;
	in.kind = FLASHSALE__INTENT__KIND__RELEASE;
	in.request_id = "rid-2";
	in.sku = "sku-9";
	in.user_id = "";
	r.event_kind = FLASHSALE__LEDGER_EVENT__KIND__TRANSITION_REFUSED;
	strcpy(r.state, "reserved");
	strcpy(r.reason, "not_due");
	r.changed = false;
	assert_int_equal(ledger_build(&out, &in, &r, 0, 0, err, sizeof(err)), 0);
	assert_string_equal(out.ev.event_id, "rid-2:transition_refused:not_due");
	assert_string_equal(out.ev.reason, "not_due");
	/* The buyer comes from Redis' record, not the release intent. */
	assert_string_equal(out.ev.user_id, "alice");
	assert_int_equal(out.ev.intent_kind, FLASHSALE__INTENT__KIND__RELEASE);

	/* Without a recorded buyer the intent's user is used. */
	in.kind = FLASHSALE__INTENT__KIND__PURCHASE;
	in.user_id = "bob";
	r.event_kind = FLASHSALE__LEDGER_EVENT__KIND__REFUSED;
	strcpy(r.reason, "sold_out");
	r.user_id[0] = '\0';
	assert_int_equal(ledger_build(&out, &in, &r, 3, 9, err, sizeof(err)), 0);
	assert_string_equal(out.ev.event_id, "rid-2:refused:sold_out");
	assert_string_equal(out.ev.user_id, "bob");

	/* No event for a step that did not answer ok. */
	r.status = STEP_NOT_READY;
	assert_int_equal(ledger_build(&out, &in, &r, 3, 9, err, sizeof(err)), -1);
}

/* ---- step reply parsing on hand-made replies ---- */

static redisReply *mk_str(const char *s)
{
	redisReply *r = calloc(1, sizeof(*r));

	r->type = REDIS_REPLY_STRING;
	r->str = strdup(s);
	r->len = strlen(s);
	return r;
}

static redisReply *mk_int(long long v)
{
	redisReply *r = calloc(1, sizeof(*r));

	r->type = REDIS_REPLY_INTEGER;
	r->integer = v;
	return r;
}

static redisReply *mk_array(size_t n)
{
	redisReply *r = calloc(1, sizeof(*r));

	r->type = REDIS_REPLY_ARRAY;
	r->elements = n;
	r->element = calloc(n, sizeof(*r->element));
	return r;
}

static redisReply *mk_ok_reply(const char *ev, const char *reason)
{
	redisReply *r = mk_array(15);

	r->element[0] = mk_str("ok");
	r->element[1] = mk_str(ev);
	r->element[2] = mk_str("sold_out");
	r->element[3] = mk_str(reason);
	r->element[4] = mk_str("carol");
	r->element[5] = mk_int(3);
	r->element[6] = mk_int(0);
	r->element[7] = mk_int(1700000000123);
	r->element[8] = mk_int(1);
	r->element[9] = mk_int(4);
	r->element[10] = mk_int(5);
	r->element[11] = mk_int(10);
	r->element[12] = mk_int(9);
	r->element[13] = mk_int(1);
	r->element[14] = mk_int(77);
	return r;
}

static void test_step_parse(void **state)
{
	struct step_result res;
	redisReply *r;

	(void)state;
	r = mk_ok_reply("refused", "sold_out");
	step_parse(r, &res);
	assert_int_equal(res.status, STEP_OK);
	assert_int_equal(res.event_kind, FLASHSALE__LEDGER_EVENT__KIND__REFUSED);
	assert_string_equal(res.state, "sold_out");
	assert_string_equal(res.reason, "sold_out");
	assert_string_equal(res.user_id, "carol");
	assert_int_equal(res.qty, 3);
	assert_int_equal(res.at_ms, 1700000000123);
	assert_int_equal(res.remaining, 1);
	assert_int_equal(res.held, 4);
	assert_int_equal(res.sold, 5);
	assert_int_equal(res.initial, 10);
	assert_int_equal(res.epoch, 9);
	assert_int_equal(res.sku_seq, 77);
	assert_true(res.changed);

	/* An unknown event word is a failure, not a silent kind 0. */
	freeReplyObject(r->element[1]);
	r->element[1] = mk_str("bogus");
	step_parse(r, &res);
	assert_int_equal(res.status, STEP_FAILED);
	freeReplyObject(r);

	/* Short reply (e.g. a nil cut the Lua table) */
	r = mk_ok_reply("reserved", "");
	r->elements = 12;
	step_parse(r, &res);
	assert_int_equal(res.status, STEP_FAILED);
	r->elements = 15;
	freeReplyObject(r);

	r = mk_array(1);
	r->element[0] = mk_str("not_ready");
	step_parse(r, &res);
	assert_int_equal(res.status, STEP_NOT_READY);
	freeReplyObject(r);

	r = mk_array(2);
	r->element[0] = mk_str("fenced");
	r->element[1] = mk_str("reason=watermark partition=3 redis=9 ledger=12 at_ms=1");
	step_parse(r, &res);
	assert_int_equal(res.status, STEP_FENCED);
	assert_string_equal(res.error, "reason=watermark partition=3 redis=9 ledger=12 at_ms=1");
	freeReplyObject(r);

	r = calloc(1, sizeof(*r));
	r->type = REDIS_REPLY_ERROR;
	r->str = strdup("NOSCRIPT No matching script");
	r->len = strlen(r->str);
	assert_true(step_reply_noscript(r));
	step_parse(r, &res);
	assert_int_equal(res.status, STEP_FAILED);
	assert_non_null(strstr(res.error, "NOSCRIPT"));
	freeReplyObject(r);

	r = mk_int(1);
	assert_false(step_reply_noscript(r));
	step_parse(r, &res);
	assert_int_equal(res.status, STEP_FAILED);
	freeReplyObject(r);
}

static void test_step_cmd(void **state)
{
	Flashsale__Intent in = FLASHSALE__INTENT__INIT;
	struct step_cmd cmd;
	static const char *const want[STEP_ARGC] = {
		"EVALSHA", "0123456789012345678901234567890123456789", "7", "fs:ready",
		"fs:promo:sku-9", "fs:users:sku-9", "fs:holds:sku-9", "fs:req:rid-1",
		"fs:wm", "fs:fence",
		"purchase", "rid-1", "sku-9", "alice", "2", "604800",
		"7", "1234", "1200", "41", "0", "600000",
	};
	struct step_args a = { .partition = 7, .offset = 1234, .min_wm = 1200, .min_seq = 41 };
	struct step_params prm = { .record_ttl_s = 604800, .pay_max_lag_ms = 600000 };
	int i;

	(void)state;
	in.kind = FLASHSALE__INTENT__KIND__PURCHASE;
	in.request_id = "rid-1";
	in.sku = "sku-9";
	in.user_id = "alice";
	in.qty = 2;
	step_cmd_build(&cmd, "0123456789012345678901234567890123456789", &in, &a, &prm);
	for (i = 0; i < STEP_ARGC; i++) {
		assert_string_equal(cmd.argv[i], want[i]);
		assert_int_equal(cmd.argvlen[i], strlen(want[i]));
	}
	in.kind = FLASHSALE__INTENT__KIND__PAY;
	in.accepted_at_ms = 1700000000123;
	a.min_wm = -1;
	prm.record_ttl_s = 60;
	step_cmd_build(&cmd, "x", &in, &a, &prm);
	assert_string_equal(cmd.argv[10], "pay");
	assert_string_equal(cmd.argv[15], "60");
	assert_string_equal(cmd.argv[18], "-1");
	assert_string_equal(cmd.argv[20], "1700000000123");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_event_id),
		cmocka_unit_test(test_ledger_build),
		cmocka_unit_test(test_ledger_build_refusals),
		cmocka_unit_test(test_step_parse),
		cmocka_unit_test(test_step_cmd),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
