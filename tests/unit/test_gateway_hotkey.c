/* Unit test of the gateway's hot-key window: the top SKUs and the threshold's edges. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "hotkey.h"

static void note(struct hotkeys *h, const char *sku, int n)
{
	for (int i = 0; i < n; i++)
		hotkeys_note(h, sku);
}

static void test_top_and_edges(void **state)
{
	struct hotkeys h;
	char sku[16];
	(void)state;

	assert_int_equal(hotkeys_init(&h, NULL, 100), 0);
	/* Twenty SKUs, sku-k asked k times; two of them hot. */
	for (int k = 1; k <= 20; k++) {
		snprintf(sku, sizeof(sku), "sku-%d", k);
		note(&h, sku, k);
	}
	note(&h, "hot-a", 300);
	note(&h, "hot-b", 150);
	hotkeys_roll(&h);
	assert_string_equal(h.labels[0], "rank=\"1\",sku=\"hot-a\"");
	assert_int_equal(h.top[0].value, 300);
	assert_string_equal(h.labels[1], "rank=\"2\",sku=\"hot-b\"");
	assert_int_equal(h.top[1].value, 150);
	assert_string_equal(h.labels[2], "rank=\"3\",sku=\"sku-20\"");
	assert_string_equal(h.labels[4], "rank=\"5\",sku=\"sku-18\"");
	assert_int_equal(h.top[4].value, 18);
	assert_int_equal(strmap_count(&h.hot), 2);
	assert_int_equal(strmap_count(&h.cur), 0);      /* a new window */

	/* Next second: hot-a stays hot, hot-b cools; fewer SKUs than ranks. */
	note(&h, "hot-a", 120);
	note(&h, "hot-b", 5);
	hotkeys_roll(&h);
	assert_int_equal(strmap_count(&h.hot), 1);
	assert_int_equal(strmap_get(&h.hot, "hot-a", 0), 1);
	assert_string_equal(h.labels[2], "rank=\"3\",sku=\"\"");
	assert_int_equal(h.top[2].value, 0);

	/* A quiet second: everything cools, nothing ranks. */
	hotkeys_roll(&h);
	assert_int_equal(strmap_count(&h.hot), 0);
	assert_int_equal(h.top[0].value, 0);
	hotkeys_free(&h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_top_and_edges),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
