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

/* A body past the stack buffer: the same bytes, in memory of its own. */
static void test_long_body_on_the_heap(void **state)
{
	char big[3000], small[64], *heap, want[64];
	const char *kv[] = { "request_id", big, "state", "queued" };
	const char *few[] = { "request_id", "r-1" };
	size_t len;
	cJSON *o = cJSON_CreateObject();
	char *cj;

	(void)state;
	memset(big, '\x01', sizeof(big) - 1);   /* escapes to \u0001: 6 bytes each */
	big[sizeof(big) - 1] = '\0';
	cJSON_AddStringToObject(o, "request_id", big);
	cJSON_AddStringToObject(o, "state", "queued");
	cj = cJSON_PrintUnformatted(o);
	len = call_strings_body(small, sizeof(small), kv, 2, &heap);
	assert_non_null(heap);
	assert_int_equal(len, strlen(cj) + 1);
	assert_memory_equal(heap, cj, strlen(cj));
	assert_int_equal(heap[len - 1], '\n');
	free(heap);
	free(cj);
	cJSON_Delete(o);

	/* One that fits stays in buf, newline included. */
	len = call_strings_body(small, sizeof(small), few, 1, &heap);
	assert_null(heap);
	snprintf(want, sizeof(want), "{\"request_id\":\"r-1\"}\n");
	assert_int_equal(len, strlen(want));
	assert_memory_equal(small, want, len);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_byte_as_cjson),
		cmocka_unit_test(test_too_long_is_refused),
		cmocka_unit_test(test_object_as_cjson),
		cmocka_unit_test(test_long_body_on_the_heap),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
