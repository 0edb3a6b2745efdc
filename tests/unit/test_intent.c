/* Unit tests for common/intent.c and the wire format in proto/flashsale.proto. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "intent.h"
#include "flashsale.pb-c.h"

static fs_intent good_purchase(void)
{
	fs_intent in = FLASHSALE__INTENT__INIT;

	in.kind = FLASHSALE__INTENT__KIND__PURCHASE;
	in.request_id = "01HZX3T5Q2ABCDEFGHJKMNPQRS";
	in.sku = "sku-1";
	in.user_id = "user@example.com";
	in.qty = 2;
	in.client_ip = "10.0.0.1";
	in.sent_at_ms = 1700000000123LL;
	in.source = "gateway";
	return in;
}

static void test_intent_round_trip(void **state)
{
	fs_intent in = good_purchase();
	char err[256];
	uint8_t *buf;
	size_t len;
	fs_intent *out;
	(void)state;

	len = intent_packed_size(&in);
	assert_true(len > 0);
	buf = malloc(len);
	assert_non_null(buf);
	assert_int_equal(intent_pack(&in, buf), len);
	out = intent_decode(buf, len, "sku-1", 5, err, sizeof(err));
	assert_non_null(out);
	assert_int_equal(out->kind, FLASHSALE__INTENT__KIND__PURCHASE);
	assert_string_equal(out->request_id, in.request_id);
	assert_string_equal(out->sku, in.sku);
	assert_string_equal(out->user_id, in.user_id);
	assert_int_equal(out->qty, 2);
	assert_string_equal(out->client_ip, in.client_ip);
	assert_int_equal(out->sent_at_ms, in.sent_at_ms);
	assert_string_equal(out->source, in.source);
	intent_free(out);

	/* The key must match the SKU byte for byte. */
	out = intent_decode(buf, len, "sku-2", 5, err, sizeof(err));
	assert_null(out);
	assert_non_null(strstr(err, "key"));
	/* Garbage does not decode. */
	buf[0] = 0xff;
	out = intent_decode(buf, len, NULL, 0, err, sizeof(err));
	assert_null(out);
	free(buf);
}

static void test_ledger_round_trip(void **state)
{
	fs_ledger_event ev = FLASHSALE__LEDGER_EVENT__INIT;
	fs_ledger_event *out;
	char err[256];
	uint8_t *buf;
	size_t len;
	(void)state;

	ev.kind = FLASHSALE__LEDGER_EVENT__KIND__RESERVED;
	ev.event_id = "r1:reserved";
	ev.request_id = "r1";
	ev.sku = "sku-1";
	ev.user_id = "u1";
	ev.qty = 3;
	ev.state = "reserved";
	ev.reason = "";
	ev.deadline_ms = 1700000060000LL;
	ev.at_ms = 1700000000000LL;
	ev.remaining = 97;
	ev.held = 3;
	ev.sold = 0;
	ev.initial = 100;
	ev.intent_kind = FLASHSALE__INTENT__KIND__PURCHASE;
	ev.intent_partition = 7;
	ev.intent_offset = 123456789012LL;
	ev.epoch = 42;

	len = flashsale__ledger_event__get_packed_size(&ev);
	buf = malloc(len);
	assert_non_null(buf);
	assert_int_equal(flashsale__ledger_event__pack(&ev, buf), len);
	out = ledger_decode(buf, len, err, sizeof(err));
	assert_non_null(out);
	assert_int_equal(out->kind, ev.kind);
	assert_string_equal(out->event_id, ev.event_id);
	assert_string_equal(out->request_id, ev.request_id);
	assert_string_equal(out->sku, ev.sku);
	assert_string_equal(out->user_id, ev.user_id);
	assert_int_equal(out->qty, ev.qty);
	assert_string_equal(out->state, ev.state);
	assert_string_equal(out->reason, "");
	assert_int_equal(out->deadline_ms, ev.deadline_ms);
	assert_int_equal(out->at_ms, ev.at_ms);
	assert_int_equal(out->remaining, 97);
	assert_int_equal(out->held, 3);
	assert_int_equal(out->sold, 0);
	assert_int_equal(out->initial, 100);
	assert_int_equal(out->intent_kind, FLASHSALE__INTENT__KIND__PURCHASE);
	assert_int_equal(out->intent_partition, 7);
	assert_int_equal(out->intent_offset, 123456789012LL);
	assert_int_equal(out->epoch, 42);
	assert_string_equal(ledger_kind_name(out->kind), "reserved");
	ledger_free(out);
	free(buf);
}

static void test_deadletter_round_trip(void **state)
{
	static const uint8_t value[] = { 0x00, 0xff, 0x10, 0x00, 0x7f };
	Flashsale__DeadLetter dl = FLASHSALE__DEAD_LETTER__INIT;
	Flashsale__DeadLetter *out;
	uint8_t *buf;
	size_t len;
	(void)state;

	dl.topic = "flashsale.intents";
	dl.partition = 11;
	dl.offset = 99;
	dl.key.data = (uint8_t *)"sku-1";
	dl.key.len = 5;
	dl.value.data = (uint8_t *)value;
	dl.value.len = sizeof(value);
	dl.reason = "invalid kind 0";
	dl.consumer = "deductor";
	dl.at_ms = 1700000000000LL;

	len = flashsale__dead_letter__get_packed_size(&dl);
	buf = malloc(len);
	assert_non_null(buf);
	assert_int_equal(flashsale__dead_letter__pack(&dl, buf), len);
	out = flashsale__dead_letter__unpack(NULL, len, buf);
	assert_non_null(out);
	assert_string_equal(out->topic, dl.topic);
	assert_int_equal(out->partition, 11);
	assert_int_equal(out->offset, 99);
	assert_int_equal(out->key.len, 5);
	assert_memory_equal(out->key.data, "sku-1", 5);
	assert_int_equal(out->value.len, sizeof(value));
	assert_memory_equal(out->value.data, value, sizeof(value));
	assert_string_equal(out->reason, dl.reason);
	assert_string_equal(out->consumer, dl.consumer);
	assert_int_equal(out->at_ms, dl.at_ms);
	flashsale__dead_letter__free_unpacked(out, NULL);
	free(buf);
}

static int validate(const fs_intent *in, const char *key)
{
	char err[256];

	err[0] = '\0';
	if (intent_validate(in, key, key != NULL ? strlen(key) : 0, err, sizeof(err)) < 0) {
		/* A refusal always says why. */
		assert_true(err[0] != '\0');
		return -1;
	}
	return 0;
}

static void test_validate_accepts(void **state)
{
	fs_intent in = good_purchase();
	(void)state;

	assert_int_equal(validate(&in, "sku-1"), 0);
	in.qty = 1000000;
	assert_int_equal(validate(&in, in.sku), 0);

	for (int k = FLASHSALE__INTENT__KIND__PAY; k <= FLASHSALE__INTENT__KIND__RELEASE; k++) {
		fs_intent t = good_purchase();

		t.kind = k;
		t.qty = 0;	/* ignored outside PURCHASE */
		t.user_id = "";
		if (k == FLASHSALE__INTENT__KIND__RELEASE)
			t.source = "reconciler";
		/* A release has no user; a pay or cancel names the owner. */
		assert_int_equal(validate(&t, "sku-1"), k == FLASHSALE__INTENT__KIND__RELEASE ? 0 : -1);
		t.user_id = "u1";
		assert_int_equal(validate(&t, "sku-1"), 0);
		t.user_id = "bad user";
		assert_int_equal(validate(&t, "sku-1"), -1);
	}
}

static void test_validate_rejects(void **state)
{
	char long_id[66];
	fs_intent in;
	(void)state;

	in = good_purchase();
	in.kind = FLASHSALE__INTENT__KIND__KIND_UNSPECIFIED;
	assert_int_equal(validate(&in, in.sku), -1);
	in.kind = 5;
	assert_int_equal(validate(&in, in.sku), -1);

	in = good_purchase();
	in.request_id = "";
	assert_int_equal(validate(&in, in.sku), -1);
	memset(long_id, 'a', 65);
	long_id[65] = '\0';
	in.request_id = long_id;
	assert_int_equal(validate(&in, in.sku), -1);
	long_id[64] = '\0';
	assert_int_equal(validate(&in, in.sku), 0);
	in.request_id = "abc.def";
	assert_int_equal(validate(&in, in.sku), -1);
	in.request_id = "abc def";
	assert_int_equal(validate(&in, in.sku), -1);

	in = good_purchase();
	assert_int_equal(validate(&in, "sku-2"), -1);
	assert_int_equal(validate(&in, "sku-10"), -1);
	assert_int_equal(validate(&in, "sku-"), -1);
	assert_int_equal(validate(&in, ""), -1);
	in.sku = "";
	assert_int_equal(validate(&in, in.sku), -1);
	in.sku = "sku/1";
	assert_int_equal(validate(&in, in.sku), -1);

	in = good_purchase();
	in.qty = 0;
	assert_int_equal(validate(&in, in.sku), -1);
	in.qty = 1000001;
	assert_int_equal(validate(&in, in.sku), -1);

	in = good_purchase();
	in.user_id = "";
	assert_int_equal(validate(&in, in.sku), -1);
	in.user_id = "no spaces";
	assert_int_equal(validate(&in, in.sku), -1);
}

/* The door of the deductor: a key, short fields, a bounded size (issue 9). */
static void test_validate_limits(void **state)
{
	fs_intent in = good_purchase(), *out;
	char ip[64], err[256];
	uint8_t buf[2048];
	size_t len;
	(void)state;

	/* No key: one SKU's intents could land on two partitions. */
	assert_int_equal(validate(&in, NULL), -1);
	in.client_ip = "2001:0db8:85a3:0000:0000:8a2e:0370:7334";
	assert_int_equal(validate(&in, "sku-1"), 0);
	memset(ip, '1', 46);
	ip[46] = '\0';
	in.client_ip = ip;
	assert_int_equal(validate(&in, "sku-1"), -1);
	in.client_ip = "10.0.0.1; DROP";
	assert_int_equal(validate(&in, "sku-1"), -1);
	in = good_purchase();
	in.source = "Gateway!";
	assert_int_equal(validate(&in, "sku-1"), -1);
	in.source = "reconciler";
	assert_int_equal(validate(&in, "sku-1"), 0);
	in.sent_at_ms = -1;
	assert_int_equal(validate(&in, "sku-1"), -1);

	/* A message over FS_INTENT_MAX_BYTES is refused before it is decoded. */
	in = good_purchase();
	len = intent_pack(&in, buf);
	memset(buf + len, 0, sizeof(buf) - len);
	out = intent_decode(buf, len, "sku-1", 5, err, sizeof(err));
	assert_non_null(out);
	intent_free(out);
	assert_null(intent_decode(buf, FS_INTENT_MAX_BYTES + 1, "sku-1", 5, err, sizeof(err)));
	assert_non_null(strstr(err, "limit"));

	/* Only the reconciler releases (issue 9): a forged RELEASE is refused. */
	in = good_purchase();
	in.kind = FLASHSALE__INTENT__KIND__RELEASE;
	in.user_id = "";
	assert_int_equal(validate(&in, "sku-1"), -1);
	in.source = "reconciler";
	assert_int_equal(validate(&in, "sku-1"), 0);
}

/*
 * Found by fuzzing (tests/fuzz/crashes/intent/): protobuf-c ends a C string
 * at a NUL, so "req-1\0other" acted as request "req-1"; and field 0 written
 * as a two-byte tag passed as an unknown field. Both are dead-lettered.
 */
static void test_decode_refuses_what_c_strings_hide(void **state)
{
	fs_intent in = good_purchase(), *out;
	uint8_t buf[512], *p;
	char err[256];
	size_t len;
	(void)state;

	in.request_id = "req-1Xother";
	len = intent_pack(&in, buf);
	p = memmem(buf, len, "req-1Xother", 11);
	assert_non_null(p);
	out = intent_decode(buf, len, "sku-1", 5, err, sizeof(err));
	assert_non_null(out);
	intent_free(out);
	p[5] = '\0';
	assert_null(intent_decode(buf, len, "sku-1", 5, err, sizeof(err)));
	assert_non_null(strstr(err, "NUL byte in field 2"));

	/* The sku matching the key up to a NUL. */
	in = good_purchase();
	in.sku = "sku-1Xx";
	len = intent_pack(&in, buf);
	p = memmem(buf, len, "sku-1Xx", 7);
	assert_non_null(p);
	p[5] = '\0';
	assert_null(intent_decode(buf, len, "sku-1", 5, err, sizeof(err)));

	/* Field 0 as the overlong tag 0x85 0x00 (fixed32), then 4 bytes. */
	in = good_purchase();
	len = intent_pack(&in, buf);
	memcpy(buf + len, "\x85\x00\x01\x02\x03\x04", 6);
	assert_null(intent_decode(buf, len + 6, "sku-1", 5, err, sizeof(err)));
	assert_non_null(strstr(err, "field number 0"));
}

static void test_kind_names(void **state)
{
	(void)state;
	assert_string_equal(intent_kind_name(FLASHSALE__INTENT__KIND__PURCHASE), "purchase");
	assert_string_equal(intent_kind_name(FLASHSALE__INTENT__KIND__PAY), "pay");
	assert_string_equal(intent_kind_name(FLASHSALE__INTENT__KIND__CANCEL), "cancel");
	assert_string_equal(intent_kind_name(FLASHSALE__INTENT__KIND__RELEASE), "release");
	assert_string_equal(intent_kind_name(0), "unspecified");
	assert_string_equal(intent_kind_name(77), "unspecified");
}

/* The one ledger vocabulary every daemon uses: names, orders.state, terminal. */
static void test_ledger_vocabulary(void **state)
{
	assert_string_equal(ledger_kind_name(FLASHSALE__LEDGER_EVENT__KIND__RESERVED), "reserved");
	assert_string_equal(ledger_kind_name(FLASHSALE__LEDGER_EVENT__KIND__PAID), "paid");
	assert_string_equal(ledger_kind_name(FLASHSALE__LEDGER_EVENT__KIND__CANCELLED), "cancelled");
	assert_string_equal(ledger_kind_name(FLASHSALE__LEDGER_EVENT__KIND__EXPIRED), "expired");
	assert_string_equal(ledger_kind_name(FLASHSALE__LEDGER_EVENT__KIND__REFUSED), "refused");
	assert_string_equal(ledger_kind_name(FLASHSALE__LEDGER_EVENT__KIND__TRANSITION_REFUSED),
			    "transition_refused");
	assert_null(ledger_kind_name(0));
	assert_null(ledger_kind_name(7));
	assert_null(ledger_kind_name(-1));

	assert_string_equal(ledger_kind_order_state(FLASHSALE__LEDGER_EVENT__KIND__RESERVED), "held");
	assert_string_equal(ledger_kind_order_state(FLASHSALE__LEDGER_EVENT__KIND__PAID), "paid");
	assert_string_equal(ledger_kind_order_state(FLASHSALE__LEDGER_EVENT__KIND__CANCELLED), "cancelled");
	assert_string_equal(ledger_kind_order_state(FLASHSALE__LEDGER_EVENT__KIND__EXPIRED), "expired");
	assert_null(ledger_kind_order_state(FLASHSALE__LEDGER_EVENT__KIND__REFUSED));
	assert_null(ledger_kind_order_state(FLASHSALE__LEDGER_EVENT__KIND__TRANSITION_REFUSED));
	assert_null(ledger_kind_order_state(0));

	assert_false(ledger_kind_terminal(FLASHSALE__LEDGER_EVENT__KIND__RESERVED));
	assert_true(ledger_kind_terminal(FLASHSALE__LEDGER_EVENT__KIND__PAID));
	assert_true(ledger_kind_terminal(FLASHSALE__LEDGER_EVENT__KIND__CANCELLED));
	assert_true(ledger_kind_terminal(FLASHSALE__LEDGER_EVENT__KIND__EXPIRED));
	assert_false(ledger_kind_terminal(FLASHSALE__LEDGER_EVENT__KIND__REFUSED));
	assert_false(ledger_kind_terminal(FLASHSALE__LEDGER_EVENT__KIND__TRANSITION_REFUSED));
	for (int k = 1; k <= 6; k++)
		assert_int_equal(ledger_kind_parse(ledger_kind_name(k)), k);
	assert_int_equal(ledger_kind_parse("bogus"), 0);
	assert_int_equal(ledger_kind_parse(NULL), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_intent_round_trip),
		cmocka_unit_test(test_ledger_vocabulary),
		cmocka_unit_test(test_ledger_round_trip),
		cmocka_unit_test(test_deadletter_round_trip),
		cmocka_unit_test(test_validate_accepts),
		cmocka_unit_test(test_validate_rejects),
		cmocka_unit_test(test_validate_limits),
		cmocka_unit_test(test_decode_refuses_what_c_strings_hide),
		cmocka_unit_test(test_kind_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
