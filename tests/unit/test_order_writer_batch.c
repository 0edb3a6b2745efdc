/*
 * order-writer batch building: text-format COPY rows (escaping, column
 * order, NULL for events that do not touch orders), the kind -> orders.state
 * mapping, event checks, and per-partition next offsets.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "order_writer.h"

static struct batch_buf buf;

static int teardown(void **state)
{
	batch_buf_free(&buf);
	return 0;
}

static fs_ledger_event make_event(int kind, const char *event_id, const char *rid,
				  const char *sku, const char *user)
{
	fs_ledger_event ev = FLASHSALE__LEDGER_EVENT__INIT;

	ev.kind = (Flashsale__LedgerEvent__Kind)kind;
	ev.event_id = (char *)event_id;
	ev.request_id = (char *)rid;
	ev.sku = (char *)sku;
	ev.user_id = (char *)user;
	return ev;
}

static size_t count_char(const char *s, size_t len, char c)
{
	size_t i, n = 0;

	for (i = 0; i < len; i++)
		n += s[i] == c;
	return n;
}

static void test_escape(void **state)
{
	assert_int_equal(batch_copy_escape(&buf, "plain-id_09:@."), 0);
	assert_string_equal(buf.data, "plain-id_09:@.");
	batch_buf_reset(&buf);
	assert_int_equal(batch_copy_escape(&buf, "a\\b\tc\nd\re"), 0);
	assert_string_equal(buf.data, "a\\\\b\\tc\\nd\\re");
	assert_int_equal(buf.len, strlen("a\\\\b\\tc\\nd\\re"));
	batch_buf_reset(&buf);
	/* "\." alone on a line would end COPY early: the backslash must double. */
	assert_int_equal(batch_copy_escape(&buf, "\\."), 0);
	assert_string_equal(buf.data, "\\\\.");
	batch_buf_reset(&buf);
	assert_int_equal(batch_copy_escape(&buf, ""), 0);
	assert_int_equal(batch_copy_escape(&buf, NULL), 0);
	assert_int_equal(buf.len, 0);
	/* Appends, never overwrites; survives growth past the first allocation. */
	for (int i = 0; i < 300; i++)
		assert_int_equal(batch_copy_escape(&buf, "\t"), 0);
	assert_int_equal(buf.len, 600);
	assert_memory_equal(buf.data + 598, "\\t", 2);
}

static void test_row_reserved(void **state)
{
	fs_ledger_event ev = make_event(FLASHSALE__LEDGER_EVENT__KIND__RESERVED,
					"r1:reserved", "r1", "sku-1", "alice");

	ev.qty = 2;
	ev.state = (char *)"reserved";
	ev.reason = (char *)"";
	ev.deadline_ms = 1700000060000LL;
	ev.at_ms = 1700000000000LL;
	ev.remaining = 8;
	ev.held = 2;
	ev.sold = 0;
	ev.intent_kind = FLASHSALE__INTENT__KIND__PURCHASE;
	ev.intent_partition = 7;
	ev.intent_offset = 99;
	ev.sku_seq = 41;
	ev.changed = true;
	assert_int_equal(batch_row_append(&buf, &ev, 7, 12345, 3), 0);
	assert_string_equal(buf.data,
		"3\tr1:reserved\treserved\tr1\tsku-1\talice\t2\treserved\t\t"
		"1700000060000\t1700000000000\t8\t2\t0\t7\t12345\t7\t99\t41\tt\theld\n");
}

static void test_row_refused_and_transition(void **state)
{
	fs_ledger_event ev = make_event(FLASHSALE__LEDGER_EVENT__KIND__REFUSED,
					"r2:refused:sold_out", "r2", "sku-1", "bob");

	ev.qty = 1;
	ev.state = (char *)"sold_out";
	ev.reason = (char *)"sold_out";
	ev.at_ms = 5;
	assert_int_equal(batch_row_append(&buf, &ev, 0, 0, 0), 0);
	/* No orders row: order_state is SQL NULL (\N), not the text "\N". */
	assert_string_equal(buf.data,
		"0\tr2:refused:sold_out\trefused\tr2\tsku-1\tbob\t1\tsold_out\tsold_out\t"
		"0\t5\t0\t0\t0\t0\t0\t-1\t-1\t0\tf\t\\N\n");

	batch_buf_reset(&buf);
	ev = make_event(FLASHSALE__LEDGER_EVENT__KIND__TRANSITION_REFUSED,
			"r3:transition_refused:unknown_request", "r3", "sku-1", "");
	ev.state = (char *)"unknown";
	ev.reason = (char *)"unknown_request";
	assert_int_equal(batch_row_append(&buf, &ev, 11, 9, 1), 0);
	assert_string_equal(buf.data,
		"1\tr3:transition_refused:unknown_request\ttransition_refused\tr3\tsku-1\t\t"
		"0\tunknown\tunknown_request\t0\t0\t0\t0\t0\t11\t9\t-1\t-1\t0\tf\t\\N\n");
}

static void test_row_terminal_states(void **state)
{
	static const struct { int kind; const char *name; } cases[] = {
		{ FLASHSALE__LEDGER_EVENT__KIND__PAID, "paid" },
		{ FLASHSALE__LEDGER_EVENT__KIND__CANCELLED, "cancelled" },
		{ FLASHSALE__LEDGER_EVENT__KIND__EXPIRED, "expired" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		fs_ledger_event ev = make_event(cases[i].kind, "x", "x", "s", "u");
		char tail[64];
		size_t tl;

		batch_buf_reset(&buf);
		assert_int_equal(batch_row_append(&buf, &ev, 1, 1, 1), 0);
		/* kind column and order_state column both carry the terminal state. */
		snprintf(tail, sizeof(tail), "\t%s\n", cases[i].name);
		tl = strlen(tail);
		assert_true(buf.len > tl);
		assert_string_equal(buf.data + buf.len - tl, tail);
		snprintf(tail, sizeof(tail), "1\tx\t%s\t", cases[i].name);
		assert_memory_equal(buf.data, tail, strlen(tail));
	}
}

static void test_row_escapes_fields(void **state)
{
	fs_ledger_event ev = make_event(FLASHSALE__LEDGER_EVENT__KIND__RESERVED,
					"e\t1", "r\n1", "s\\1", "u\r\t\n\\");

	assert_int_equal(batch_row_append(&buf, &ev, 0, 0, 0), 0);
	/* Still exactly 21 columns and one line, whatever the fields held. */
	assert_int_equal(count_char(buf.data, buf.len, '\t'), 20);
	assert_int_equal(count_char(buf.data, buf.len, '\n'), 1);
	assert_int_equal(count_char(buf.data, buf.len, '\r'), 0);
	assert_non_null(strstr(buf.data, "\te\\t1\treserved\tr\\n1\ts\\\\1\tu\\r\\t\\n\\\\\t"));

	/* Rows accumulate into one COPY stream. */
	assert_int_equal(batch_row_append(&buf, &ev, 0, 1, 1), 0);
	assert_int_equal(count_char(buf.data, buf.len, '\n'), 2);
}

static void test_row_unknown_kind(void **state)
{
	fs_ledger_event ok = make_event(FLASHSALE__LEDGER_EVENT__KIND__PAID, "a", "a", "s", "u");
	fs_ledger_event bad = make_event(0, "a", "a", "s", "u");
	size_t len;

	assert_int_equal(batch_row_append(&buf, &ok, 0, 0, 0), 0);
	len = buf.len;
	assert_int_equal(batch_row_append(&buf, &bad, 0, 1, 1), -1);
	bad.kind = (Flashsale__LedgerEvent__Kind)7;
	assert_int_equal(batch_row_append(&buf, &bad, 0, 1, 1), -1);
	/* A refused row leaves the stream as it was. */
	assert_int_equal(buf.len, len);
}

static void test_event_check(void **state)
{
	fs_ledger_event ev = make_event(FLASHSALE__LEDGER_EVENT__KIND__RESERVED,
					"r1:reserved", "r1", "sku", "");
	char err[128];

	/* An empty user id is legal (refused transitions of unknown requests). */
	assert_int_equal(batch_event_check(&ev, err, sizeof(err)), 0);

	ev.event_id = (char *)"";
	assert_int_equal(batch_event_check(&ev, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "event_id"));
	ev.event_id = NULL;
	assert_int_equal(batch_event_check(&ev, err, sizeof(err)), -1);
	ev.event_id = (char *)"r1:reserved";

	ev.request_id = (char *)"";
	assert_int_equal(batch_event_check(&ev, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "request_id"));
	ev.request_id = (char *)"r1";

	ev.sku = (char *)"";
	assert_int_equal(batch_event_check(&ev, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "sku"));
	ev.sku = (char *)"sku";

	ev.kind = FLASHSALE__LEDGER_EVENT__KIND__KIND_UNSPECIFIED;
	assert_int_equal(batch_event_check(&ev, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "kind"));
	ev.kind = (Flashsale__LedgerEvent__Kind)42;
	assert_int_equal(batch_event_check(&ev, err, sizeof(err)), -1);
}

static void test_positions_arrays(void **state)
{
	struct offsets_pos p[40] = { { 0, 0 } };
	struct batch_buf parts = { 0 }, nexts = { 0 };

	assert_int_equal(batch_positions_arrays(p, 0, &parts, &nexts), 0);
	assert_string_equal(parts.data, "{}");
	assert_string_equal(nexts.data, "{}");
	p[0] = (struct offsets_pos){ 3, 13 };
	p[1] = (struct offsets_pos){ 5, 3 };
	p[2] = (struct offsets_pos){ 0, 1 };
	assert_int_equal(batch_positions_arrays(p, 3, &parts, &nexts), 0);
	assert_string_equal(parts.data, "{3,5,0}");
	assert_string_equal(nexts.data, "{13,3,1}");

	/* Large offsets survive; many partitions grow the buffers. */
	for (int32_t i = 0; i < 40; i++)
		p[i] = (struct offsets_pos){ i, 9000000001LL + i };
	assert_int_equal(batch_positions_arrays(p, 40, &parts, &nexts), 0);
	assert_non_null(strstr(nexts.data, ",9000000040}"));
	assert_memory_equal(parts.data, "{0,1,2,", 7);
	batch_buf_free(&parts);
	batch_buf_free(&nexts);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_escape, teardown),
		cmocka_unit_test_teardown(test_row_reserved, teardown),
		cmocka_unit_test_teardown(test_row_refused_and_transition, teardown),
		cmocka_unit_test_teardown(test_row_terminal_states, teardown),
		cmocka_unit_test_teardown(test_row_escapes_fields, teardown),
		cmocka_unit_test_teardown(test_row_unknown_kind, teardown),
		cmocka_unit_test(test_event_check),
		cmocka_unit_test(test_positions_arrays),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
