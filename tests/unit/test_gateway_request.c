/* Unit tests of the gateway's pure modules: request bodies and token buckets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "request.h"
#include "ratelimit.h"
#include "util.h"

#define MAX_BODY 4096

static int parse(const char *body, struct purchase_req *pr, const char **code,
		 char *err, size_t n)
{
	return request_parse_purchase(body, strlen(body), MAX_BODY, pr, code, err, n);
}

static void test_good_body(void **state)
{
	struct purchase_req pr;
	const char *code = NULL;
	char err[256];

	assert_int_equal(parse("{\"sku\":\"SKU-1\",\"user_id\":\"u@x.com\",\"qty\":2,"
			       "\"request_id\":\"r_1-A\"}", &pr, &code, err, sizeof(err)), 0);
	assert_string_equal(pr.sku, "SKU-1");
	assert_string_equal(pr.user_id, "u@x.com");
	assert_string_equal(pr.request_id, "r_1-A");
	assert_int_equal(pr.qty, 2);
	assert_false(pr.generated_id);
	/* whitespace around the object, 1.0 is the integer 1 */
	assert_int_equal(parse("  {\"sku\":\"a.b:c\",\"user_id\":\"u\",\"qty\":1.0}\n",
			       &pr, &code, err, sizeof(err)), 0);
	assert_int_equal(pr.qty, 1);
	/* The buyer is the token's: user_id may be left out. */
	assert_int_equal(parse("{\"sku\":\"S\",\"qty\":3}", &pr, &code, err, sizeof(err)), 0);
	assert_string_equal(pr.user_id, "");
	assert_int_equal(pr.qty, 3);
}

static void test_generated_id(void **state)
{
	struct purchase_req pr, pr2;
	const char *code = NULL;
	char err[256];

	assert_int_equal(parse("{\"sku\":\"S\",\"user_id\":\"u\",\"qty\":1}", &pr, &code,
			       err, sizeof(err)), 0);
	assert_true(pr.generated_id);
	assert_int_equal(strlen(pr.request_id), 26);
	assert_true(valid_request_id(pr.request_id));
	/* null counts as absent */
	assert_int_equal(parse("{\"sku\":\"S\",\"user_id\":\"u\",\"qty\":1,\"request_id\":null}",
			       &pr2, &code, err, sizeof(err)), 0);
	assert_true(pr2.generated_id);
	assert_string_not_equal(pr.request_id, pr2.request_id);
}

struct bad_case {
	const char *body;
	const char *code;
	const char *field;      /* must appear in the reason, or NULL */
};

static void test_malformed(void **state)
{
	static const struct bad_case cases[] = {
		{ "not json", "invalid_json", NULL },
		{ "{\"sku\":\"S\",\"user_id\":\"u\",\"qty\":1", "invalid_json", NULL },
		{ "{\"sku\":\"S\",\"user_id\":\"u\",\"qty\":1} x", "invalid_json", NULL },
		{ "[1,2]", "invalid_json", NULL },
		{ "{\"sku\":\"S\\u0000x\",\"user_id\":\"u\",\"qty\":1}", "invalid_json", NULL },
		{ "\"str\"", "invalid_json", NULL },
		{ "", "invalid_json", NULL },
		{ "{\"user_id\":\"u\",\"qty\":1}", "invalid_field", "sku" },
		{ "{\"sku\":5,\"user_id\":\"u\",\"qty\":1}", "invalid_field", "sku" },
		{ "{\"sku\":\"a b\",\"user_id\":\"u\",\"qty\":1}", "invalid_field", "sku" },
		{ "{\"sku\":\"a/b\",\"user_id\":\"u\",\"qty\":1}", "invalid_field", "sku" },
		{ "{\"sku\":\"\",\"user_id\":\"u\",\"qty\":1}", "invalid_field", "sku" },
		/* Duplicate keys: a proxy that takes the last one would read another body. */
		{ "{\"sku\":\"S\",\"user_id\":\"u\",\"qty\":1,\"qty\":9}", "invalid_json", "qty" },
		{ "{\"sku\":\"S\",\"sku\":\"S\",\"qty\":1}", "invalid_json", "sku" },
		{ "{\"sku\":\"S\",\"user_id\":\"u!\",\"qty\":1}", "invalid_field", "user_id" },
		{ "{\"sku\":\"S\",\"user_id\":\"u\"}", "invalid_field", "qty" },
		{ "{\"sku\":\"S\",\"user_id\":\"u\",\"qty\":0}", "invalid_field", "qty" },
		{ "{\"sku\":\"S\",\"user_id\":\"u\",\"qty\":-1}", "invalid_field", "qty" },
		{ "{\"sku\":\"S\",\"user_id\":\"u\",\"qty\":1.5}", "invalid_field", "qty" },
		{ "{\"sku\":\"S\",\"user_id\":\"u\",\"qty\":\"1\"}", "invalid_field", "qty" },
		{ "{\"sku\":\"S\",\"user_id\":\"u\",\"qty\":true}", "invalid_field", "qty" },
		{ "{\"sku\":\"S\",\"user_id\":\"u\",\"qty\":1e12}", "invalid_field", "qty" },
		{ "{\"sku\":\"S\",\"user_id\":\"u\",\"qty\":1,\"request_id\":\"a.b\"}",
		  "invalid_field", "request_id" },
		{ "{\"sku\":\"S\",\"user_id\":\"u\",\"qty\":1,\"request_id\":7}",
		  "invalid_field", "request_id" },
		{ "{\"sku\":\"S\",\"user_id\":\"u\",\"qty\":1,\"request_id\":\"\"}",
		  "invalid_field", "request_id" },
	};
	struct purchase_req pr;
	char err[256];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *code = NULL;

		err[0] = '\0';
		if (parse(cases[i].body, &pr, &code, err, sizeof(err)) != -1)
			fail_msg("accepted: %s", cases[i].body);
		assert_non_null(code);
		if (strcmp(code, cases[i].code) != 0)
			fail_msg("body %s: code %s, want %s", cases[i].body, code, cases[i].code);
		if (cases[i].field != NULL && strstr(err, cases[i].field) == NULL)
			fail_msg("body %s: reason \"%s\" does not name %s", cases[i].body, err,
				 cases[i].field);
	}
}

static void test_long_ids_and_body(void **state)
{
	struct purchase_req pr;
	const char *code = NULL;
	char err[256], id65[66], body[MAX_BODY + 200];

	memset(id65, 'a', 65);
	id65[65] = '\0';
	snprintf(body, sizeof(body), "{\"sku\":\"%s\",\"user_id\":\"u\",\"qty\":1}", id65);
	assert_int_equal(parse(body, &pr, &code, err, sizeof(err)), -1);
	assert_string_equal(code, "invalid_field");
	id65[64] = '\0';        /* 64 chars is the limit, still fine */
	snprintf(body, sizeof(body), "{\"sku\":\"%s\",\"user_id\":\"%s\",\"qty\":1,"
		 "\"request_id\":\"%s\"}", id65, id65, id65);
	assert_int_equal(parse(body, &pr, &code, err, sizeof(err)), 0);
	assert_string_equal(pr.request_id, id65);

	/* too large: a valid object padded with spaces beyond the limit */
	memset(body, ' ', sizeof(body) - 1);
	body[sizeof(body) - 1] = '\0';
	memcpy(body, "{\"sku\":\"S\",\"user_id\":\"u\",\"qty\":1}", 33);
	assert_int_equal(request_parse_purchase(body, MAX_BODY + 1, MAX_BODY, &pr, &code,
						err, sizeof(err)), -1);
	assert_string_equal(code, "body_too_large");
	assert_int_equal(request_parse_purchase(body, MAX_BODY, MAX_BODY, &pr, &code,
						err, sizeof(err)), 0);
	/* not NUL-terminated input is fine: only len bytes are read */
	assert_int_equal(request_parse_purchase("{\"sku\":\"S\",\"user_id\":\"u\",\"qty\":3}XXXX",
						33, MAX_BODY, &pr, &code, err, sizeof(err)), 0);
	assert_int_equal(pr.qty, 3);
}

static void test_promo_body(void **state)
{
	struct promo_req p;
	const char *code = NULL;
	char err[256];
	const char *b1 = "{\"sku\":\"P1\",\"stock\":100,\"per_user_limit\":2}";
	const char *b2 = "{\"sku\":\"P1\",\"stock\":0,\"per_user_limit\":1,\"start_ms\":1000,"
			 "\"end_ms\":5000,\"hold_seconds\":60}";
	const char *bad[] = {
		"{\"sku\":\"P1\",\"stock\":-1,\"per_user_limit\":2}",
		"{\"sku\":\"P1\",\"stock\":1,\"per_user_limit\":0}",
		"{\"sku\":\"P1\",\"stock\":1.5,\"per_user_limit\":1}",
		"{\"sku\":\"P1\",\"stock\":1,\"per_user_limit\":1,\"start_ms\":10,\"end_ms\":10}",
		"{\"sku\":\"P1\",\"stock\":1,\"per_user_limit\":1,\"hold_seconds\":0}",
		"{\"stock\":1,\"per_user_limit\":1}",
	};

	assert_int_equal(request_parse_promo(b1, strlen(b1), MAX_BODY, 777, &p, &code,
					     err, sizeof(err)), 0);
	assert_int_equal(p.stock, 100);
	assert_int_equal(p.start_ms, 777);
	assert_false(p.start_given);
	assert_int_equal(p.end_ms, 777 + 3600000);
	assert_int_equal(p.hold_seconds, 1200);
	assert_int_equal(request_parse_promo(b2, strlen(b2), MAX_BODY, 777, &p, &code,
					     err, sizeof(err)), 0);
	assert_int_equal(p.stock, 0);
	assert_int_equal(p.start_ms, 1000);
	assert_int_equal(p.end_ms, 5000);
	assert_int_equal(p.hold_seconds, 60);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (request_parse_promo(bad[i], strlen(bad[i]), MAX_BODY, 777, &p, &code,
					err, sizeof(err)) != -1)
			fail_msg("accepted: %s", bad[i]);
}

/* A NUL byte and junk after the object are not "trailing whitespace". */
static void test_nul_then_junk(void **state)
{
	static const char body[] = "{\"sku\":\"S\",\"user_id\":\"u\",\"qty\":1}\0junk";
	struct purchase_req pr;
	const char *code = NULL;
	char err[256];
	(void)state;

	assert_int_equal(request_parse_purchase(body, sizeof(body) - 1, MAX_BODY, &pr, &code,
						err, sizeof(err)), -1);
	assert_string_equal(code, "invalid_json");
}

/*
 * Found by fuzzing (tests/fuzz/crashes/http_body/): cJSON takes a raw NUL
 * inside a string, and the C string ends there, so "sku-1<NUL>x" bought
 * sku-1; and the duplicate-key check was quadratic in the member count.
 */
static void test_nul_in_string_and_many_members(void **state)
{
	static const char nul[] = "{\"sku\":\"sku-1\0x\",\"qty\":1}";
	struct purchase_req pr;
	const char *code = NULL;
	char err[256], *big;
	size_t n = 0;
	(void)state;

	assert_int_equal(request_parse_purchase(nul, sizeof(nul) - 1, MAX_BODY, &pr, &code,
						err, sizeof(err)), -1);
	assert_string_equal(code, "invalid_json");

	big = malloc(1 << 20);
	assert_non_null(big);
	n += (size_t)sprintf(big, "{\"sku\":\"S\",\"qty\":1");
	for (int i = 0; i < 30; i++)
		n += (size_t)sprintf(big + n, ",\"k%d\":%d", i, i);
	strcpy(big + n, "}");
	/* 32 members pass, 33 do not, 50,000 are refused without a pairwise scan. */
	assert_int_equal(request_parse_purchase(big, strlen(big), 1 << 20, &pr, &code, err,
						sizeof(err)), 0);
	sprintf(big + n, ",\"k30\":0}");
	assert_int_equal(request_parse_purchase(big, strlen(big), 1 << 20, &pr, &code, err,
						sizeof(err)), -1);
	assert_non_null(strstr(err, "members"));
	for (int i = 31; i < 50000; i++)
		n += (size_t)sprintf(big + n, ",\"k%d\":0", i);
	strcpy(big + n, "}");
	assert_int_equal(request_parse_purchase(big, strlen(big), 1 << 20, &pr, &code, err,
						sizeof(err)), -1);
	free(big);
}

/*
 * pay/cancel bodies: empty, {} or the owner's user_id (checked against the
 * token's sub by the route); a user_id given must be valid.
 */
static void test_owner_body(void **state)
{
	char user[FS_ID_MAX + 1];
	const char *code = NULL;
	char err[256];
	const char *good = "{\"user_id\":\"alice\"}";
	const char *bad[] = {
		"[]", "{\"user_id\":7}", "{\"user_id\":\"bad user\"}", "not json",
		"{\"user_id\":\"a\",\"user_id\":\"b\"}",
	};
	(void)state;

	assert_int_equal(request_parse_owner(good, strlen(good), MAX_BODY, user, &code,
					     err, sizeof(err)), 0);
	assert_string_equal(user, "alice");
	assert_int_equal(request_parse_owner("", 0, MAX_BODY, user, &code, err, sizeof(err)), 0);
	assert_string_equal(user, "");
	assert_int_equal(request_parse_owner("{}", 2, MAX_BODY, user, &code, err, sizeof(err)), 0);
	assert_string_equal(user, "");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		code = NULL;
		if (request_parse_owner(bad[i], strlen(bad[i]), MAX_BODY, user, &code,
					err, sizeof(err)) != -1)
			fail_msg("accepted: %s", bad[i]);
		assert_non_null(code);
	}
}

static void test_ratelimit(void **state)
{
	struct ratelimit rl;
	int64_t t = 1000000;
	int ok = 0;

	assert_int_equal(ratelimit_init(&rl, 1000, 5, 10), 0);
	assert_int_equal(rl.nslots, 1024);
	/* a burst of 10, then nothing */
	for (int i = 0; i < 20; i++)
		ok += ratelimit_take(&rl, "alice", t);
	assert_int_equal(ok, 10);
	/* another user has their own bucket */
	assert_true(ratelimit_take(&rl, "bob", t));
	/* 5/s: after 200 ms exactly one more token */
	t += 200000;
	assert_true(ratelimit_take(&rl, "alice", t));
	assert_false(ratelimit_take(&rl, "alice", t));
	/* after a long pause the bucket is full again, not more */
	t += 60 * 1000000LL;
	ok = 0;
	for (int i = 0; i < 20; i++)
		ok += ratelimit_take(&rl, "alice", t);
	assert_int_equal(ok, 10);
	/* time going backwards never adds tokens */
	assert_false(ratelimit_take(&rl, "alice", t - 5000000));
	ratelimit_free(&rl);
}

static void test_ratelimit_many_users(void **state)
{
	struct ratelimit rl;
	char user[32];
	int ok = 0;

	/* tiny table: many users share slots but each newcomer gets a fresh bucket */
	assert_int_equal(ratelimit_init(&rl, 4, 1, 1), 0);
	for (int i = 0; i < 100; i++) {
		snprintf(user, sizeof(user), "user%d", i);
		ok += ratelimit_take(&rl, user, 1000);
	}
	assert_int_equal(ok, 100);
	ratelimit_free(&rl);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_good_body),
		cmocka_unit_test(test_generated_id),
		cmocka_unit_test(test_malformed),
		cmocka_unit_test(test_long_ids_and_body),
		cmocka_unit_test(test_promo_body),
		cmocka_unit_test(test_owner_body),
		cmocka_unit_test(test_nul_then_junk),
		cmocka_unit_test(test_nul_in_string_and_many_members),
		cmocka_unit_test(test_ratelimit),
		cmocka_unit_test(test_ratelimit_many_users),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
