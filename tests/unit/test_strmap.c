/*
 * common/strmap.h: lookups, the max and add updates, removal at zero (with
 * the entries that probed past a removed one still found), growth.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>

#include "strmap.h"

static void test_put_max_and_get(void **state)
{
	struct strmap m;

	(void)state;
	strmap_init(&m);
	assert_int_equal(strmap_get(&m, "a", -7), -7);
	assert_int_equal(strmap_put_max(&m, "a", 5), 0);
	assert_int_equal(strmap_put_max(&m, "a", 3), 0);
	assert_int_equal(strmap_get(&m, "a", 0), 5);
	assert_int_equal(strmap_put_max(&m, "a", 9), 0);
	assert_int_equal(strmap_get(&m, "a", 0), 9);
	assert_int_equal(strmap_count(&m), 1);
	strmap_clear(&m);
	assert_int_equal(strmap_count(&m), 0);
	assert_int_equal(strmap_get(&m, "a", -1), -1);
	strmap_free(&m);
}

/* Many keys in a small table: removals must keep every other key findable. */
static void test_add_and_remove(void **state)
{
	struct strmap m;
	char key[32];
	int64_t v;

	(void)state;
	strmap_init(&m);
	for (int i = 0; i < 5000; i++) {
		snprintf(key, sizeof(key), "10.0.%d.%d", i / 256, i % 256);
		assert_int_equal(strmap_add(&m, key, 2, &v), 0);
		assert_int_equal(v, 2);
	}
	assert_int_equal(strmap_count(&m), 5000);
	for (int i = 0; i < 5000; i += 2) {
		snprintf(key, sizeof(key), "10.0.%d.%d", i / 256, i % 256);
		assert_int_equal(strmap_add(&m, key, -1, &v), 0);
		assert_int_equal(v, 1);
		assert_int_equal(strmap_add(&m, key, -1, &v), 0);
		assert_int_equal(v, 0);
	}
	assert_int_equal(strmap_count(&m), 2500);
	for (int i = 0; i < 5000; i++) {
		snprintf(key, sizeof(key), "10.0.%d.%d", i / 256, i % 256);
		assert_int_equal(strmap_get(&m, key, 0), i % 2 ? 2 : 0);
	}
	strmap_free(&m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_put_max_and_get),
		cmocka_unit_test(test_add_and_remove),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
