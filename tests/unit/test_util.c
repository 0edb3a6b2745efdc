/* Unit tests for common/util.c: identifier rules, request ids, clocks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "util.h"

static void fill(char *buf, size_t n, char c)
{
	memset(buf, c, n);
	buf[n] = '\0';
}

static void test_id_lengths(void **state)
{
	char buf[80];
	(void)state;

	fill(buf, 1, 'a');
	assert_true(valid_request_id(buf));
	assert_true(valid_sku(buf));
	assert_true(valid_user_id(buf));
	fill(buf, 64, 'a');
	assert_true(valid_request_id(buf));
	assert_true(valid_sku(buf));
	assert_true(valid_user_id(buf));
	fill(buf, 65, 'a');
	assert_false(valid_request_id(buf));
	assert_false(valid_sku(buf));
	assert_false(valid_user_id(buf));
	assert_false(valid_request_id(""));
	assert_false(valid_sku(""));
	assert_false(valid_user_id(""));
	assert_false(valid_request_id(NULL));
	assert_false(valid_sku(NULL));
	assert_false(valid_user_id(NULL));
}

static void test_id_charsets(void **state)
{
	(void)state;
	assert_true(valid_request_id("AZaz09_-"));
	assert_false(valid_request_id("a.b"));
	assert_false(valid_request_id("a:b"));
	assert_false(valid_request_id("a@b"));
	assert_false(valid_request_id("a b"));

	assert_true(valid_sku("AZaz09._:-"));
	assert_false(valid_sku("a@b"));
	assert_true(valid_sku("a_b"));
	assert_false(valid_sku("a,b"));
	assert_false(valid_sku("a/b"));

	assert_true(valid_user_id("user.name:x@example-1"));
	assert_true(valid_user_id("a_b"));
	assert_false(valid_user_id("a+b"));
	assert_false(valid_user_id("a b"));
	assert_false(valid_user_id("\xc3\xa9t\xc3\xa9"));
	assert_false(valid_user_id("a\nb"));
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* fmt_i64 agrees with printf over the edges and a spread of values. */
static void test_fmt_i64(void **state)
{
	const int64_t edge[] = { 0, 1, -1, 9, 10, -10, 99, 100, 1234567890, INT64_MAX, INT64_MIN,
				 INT64_MAX - 1, INT64_MIN + 1 };
	char got[21], want[32];

	(void)state;
	for (size_t i = 0; i < sizeof(edge) / sizeof(edge[0]); i++) {
		snprintf(want, sizeof(want), "%" PRId64, edge[i]);
		assert_int_equal(fmt_i64(got, edge[i]), strlen(want));
		assert_string_equal(got, want);
	}
	for (int64_t v = 1; v < INT64_MAX / 7; v = v * 7 + 3) {
		snprintf(want, sizeof(want), "%" PRId64, -v);
		assert_int_equal(fmt_i64(got, -v), strlen(want));
		assert_string_equal(got, want);
	}
}

static void test_request_id_new(void **state)
{
	enum { N = 10000 };
	static const char alphabet[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
	char **ids = calloc(N, sizeof(*ids));
	char prev_time[11] = "";
	(void)state;

	assert_non_null(ids);
	for (int i = 0; i < N; i++) {
		char id[27];

		memset(id, 'x', sizeof(id));
		request_id_new(id);
		assert_int_equal(strlen(id), 26);
		for (int j = 0; j < 26; j++)
			assert_non_null(strchr(alphabet, id[j]));
		/* 48-bit time in 10 chars of 5 bits: the first holds 3 bits. */
		assert_true(id[0] <= '7');
		assert_true(valid_request_id(id));
		/* Time-ordered prefix never goes backwards. */
		assert_true(strncmp(prev_time, id, 10) <= 0);
		memcpy(prev_time, id, 10);
		ids[i] = strdup(id);
		assert_non_null(ids[i]);
	}
	qsort(ids, N, sizeof(*ids), cmp_str);
	for (int i = 1; i < N; i++)
		assert_string_not_equal(ids[i - 1], ids[i]);
	for (int i = 0; i < N; i++)
		free(ids[i]);
	free(ids);
}

static void test_request_id_time(void **state)
{
	static const char alphabet[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
	char id[27];
	int64_t before, after;
	uint64_t t = 0;
	(void)state;

	before = now_ms();
	request_id_new(id);
	after = now_ms();
	for (int i = 0; i < 10; i++)
		t = t * 32 + (uint64_t)(strchr(alphabet, id[i]) - alphabet);
	assert_true((int64_t)t >= before);
	assert_true((int64_t)t <= after);
}

static void test_clocks(void **state)
{
	int64_t a, b, w;
	(void)state;

	w = now_ms();
	/* After 2020-01-01 and before 2100. */
	assert_true(w > 1577836800000LL);
	assert_true(w < 4102444800000LL);
	a = mono_us();
	for (int i = 0; i < 1000; i++) {
		b = mono_us();
		assert_true(b >= a);
		a = b;
	}
	a = mono_us();
	{
		struct timespec ts = { 0, 2 * 1000 * 1000 };

		nanosleep(&ts, NULL);
	}
	b = mono_us();
	assert_true(b - a >= 2000);
	assert_true(b - a < 10 * 1000 * 1000);
}

static void read_back(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "r");
	size_t n;

	assert_non_null(f);
	n = fread(buf, 1, len - 1, f);
	buf[n] = '\0';
	fclose(f);
}

static void test_write_atomic(void **state)
{
	char dir[] = "/tmp/fs-util-XXXXXX", path[64], tmp[80], buf[64], err[256];

	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/port", dir);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	assert_int_equal(util_write_atomic(path, "41234", err, sizeof(err)), 0);
	read_back(path, buf, sizeof(buf));
	assert_string_equal(buf, "41234\n");
	/* A second write replaces the file whole and leaves no temporary behind. */
	assert_int_equal(util_write_atomic(path, "7", err, sizeof(err)), 0);
	read_back(path, buf, sizeof(buf));
	assert_string_equal(buf, "7\n");
	assert_int_equal(access(tmp, F_OK), -1);
	/* A directory that does not exist is an error with a reason. */
	err[0] = '\0';
	assert_int_equal(util_write_atomic("/nonexistent-dir/x", "1", err, sizeof(err)), -1);
	assert_true(strlen(err) > 0);
	unlink(path);
	rmdir(dir);
}

/* The gateway's event loops share a port only when each asks to. */
static void test_listen_tcp(void **state)
{
	char err[256];
	int a, b, c, port;

	(void)state;
	a = util_listen_tcp("127.0.0.1", 0, true, err, sizeof(err));
	assert_true(a >= 0);
	port = util_bound_port(a);
	assert_true(port > 0);
	b = util_listen_tcp("127.0.0.1", port, true, err, sizeof(err));
	assert_true(b >= 0);
	assert_int_equal(util_bound_port(b), port);
	/* A program that did not ask for SO_REUSEPORT cannot join them. */
	c = util_listen_tcp("127.0.0.1", port, false, err, sizeof(err));
	assert_int_equal(c, -1);
	assert_non_null(strstr(err, "in use"));
	close(a);
	close(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_id_lengths),
		cmocka_unit_test(test_id_charsets),
		cmocka_unit_test(test_fmt_i64),
		cmocka_unit_test(test_request_id_new),
		cmocka_unit_test(test_request_id_time),
		cmocka_unit_test(test_clocks),
		cmocka_unit_test(test_write_atomic),
		cmocka_unit_test(test_listen_tcp),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
