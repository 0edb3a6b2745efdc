/*
 * gateway/call.c: the refusal body written by hand (call_json_string) is
 * the JSON cJSON would print, byte for byte, for every byte value; the
 * 202's object of strings (call_json_object) too.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "gateway.h"

static void assert_as_cjson(const char *s)
{
	cJSON *o = cJSON_CreateString(s);
	char *want = cJSON_PrintUnformatted(o);
	char got[1024];
	size_t n = call_json_string(got, sizeof(got), s);

	assert_non_null(want);
	assert_int_equal(n, strlen(want));
	assert_string_equal(got, want);
	free(want);
	cJSON_Delete(o);
}

static void test_every_byte_as_cjson(void **state)
{
	char s[4];

	(void)state;
	for (int c = 1; c < 256; c++) {
		snprintf(s, sizeof(s), "%c", c);
		assert_as_cjson(s);
	}
	assert_as_cjson("");
	assert_as_cjson("sold out for now: held units may come back");
	assert_as_cjson("qty \"x\" \\ \n\t\r\b\f \x01\x1f caf\xc3\xa9");
}

static void test_too_long_is_refused(void **state)
{
	char out[8];

	(void)state;
	assert_int_equal(call_json_string(out, sizeof(out), "abcd"), 6);
	assert_string_equal(out, "\"abcd\"");
	assert_int_equal(call_json_string(out, sizeof(out), "abcdefgh"), 0);
	assert_int_equal(call_json_string(out, sizeof(out), "\n\n\n"), 0);
	assert_int_equal(call_json_string(out, 2, ""), 0);
}

static void assert_object_as_cjson(const char *const *kv, size_t pairs)
{
	cJSON *o = cJSON_CreateObject();
	char *want, got[512];
	size_t n;

	for (size_t i = 0; i < pairs; i++)
		cJSON_AddStringToObject(o, kv[2 * i], kv[2 * i + 1]);
	want = cJSON_PrintUnformatted(o);
	assert_non_null(want);
	n = call_json_object(got, sizeof(got), kv, pairs);
	assert_int_equal(n, strlen(want));
	assert_string_equal(got, want);
	/* One byte short of the text and its NUL: refused, never cut. */
	assert_int_equal(call_json_object(got, n, kv, pairs), 0);
	assert_int_equal(call_json_object(got, n + 1, kv, pairs), n);
	assert_string_equal(got, want);
	free(want);
	cJSON_Delete(o);
}

static void test_object_as_cjson(void **state)
{
	const char *accepted[] = { "request_id", "c-1", "state", "queued" };
	const char *pay[] = { "request_id", "a\"b\\c\n\x01", "state", "reserved",
			      "requested", "pay" };
	const char *empty[] = { "", "" };

	(void)state;
	assert_object_as_cjson(accepted, 2);
	assert_object_as_cjson(pay, 3);
	assert_object_as_cjson(empty, 1);
	assert_object_as_cjson(NULL, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_byte_as_cjson),
		cmocka_unit_test(test_too_long_is_refused),
		cmocka_unit_test(test_object_as_cjson),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
