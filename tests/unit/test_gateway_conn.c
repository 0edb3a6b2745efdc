/* Unit tests of the gateway's connection guard: which peers are trusted proxies. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <event2/event.h>

#include "conn.h"

static void test_trusted_proxies(void **state)
{
	struct gw_conn_limits lim = {
		.max_connections = 10, .max_per_ip = 2, .max_header_bytes = 8192,
		.max_headers = 64, .header_timeout_ms = 1000,
		.trusted_proxies = "10.0.0.0/8, 192.168.1.7,2001:db8::/32 ,172.16.0.0/12",
	};
	struct event_base *base = event_base_new();
	struct gw_conn_counts counts;
	struct gw_conns cs;
	char err[256];
	(void)state;

	assert_non_null(base);
	assert_int_equal(gw_conn_counts_init(&counts), 0);
	assert_int_equal(gw_conns_init(&cs, base, &lim, &counts, err, sizeof(err)), 0);
	assert_int_equal(cs.ntrusted, 4);
	assert_true(gw_conns_trusted(&cs, "10.1.2.3"));
	assert_true(gw_conns_trusted(&cs, "10.255.255.255"));
	assert_false(gw_conns_trusted(&cs, "11.0.0.1"));
	assert_true(gw_conns_trusted(&cs, "192.168.1.7"));
	assert_false(gw_conns_trusted(&cs, "192.168.1.8"));
	/* /12: 172.16.0.0 - 172.31.255.255, a mask inside a byte. */
	assert_true(gw_conns_trusted(&cs, "172.31.0.1"));
	assert_false(gw_conns_trusted(&cs, "172.32.0.1"));
	assert_false(gw_conns_trusted(&cs, "172.15.255.255"));
	assert_true(gw_conns_trusted(&cs, "2001:db8::1"));
	assert_false(gw_conns_trusted(&cs, "2001:db9::1"));
	/* An IPv4 address never matches an IPv6 network, nor garbage anything. */
	assert_false(gw_conns_trusted(&cs, "::ffff:10.1.2.3"));
	assert_false(gw_conns_trusted(&cs, "not an address"));
	assert_false(gw_conns_trusted(&cs, ""));
	gw_conns_free(&cs);

	lim.trusted_proxies = "";
	assert_int_equal(gw_conns_init(&cs, base, &lim, &counts, err, sizeof(err)), 0);
	assert_false(gw_conns_trusted(&cs, "127.0.0.1"));
	gw_conns_free(&cs);

	for (const char *bad = "10.0.0.0/33\0" "10.0.0/8\0" "host.example\0" "10.0.0.1/\0"
			       "::1/129\0";
	     *bad != '\0'; bad += strlen(bad) + 1) {
		lim.trusted_proxies = bad;
		assert_int_equal(gw_conns_init(&cs, base, &lim, &counts, err, sizeof(err)), -1);
		assert_non_null(strstr(err, "trusted proxy"));
		gw_conns_free(&cs);
	}
	gw_conn_counts_free(&counts);
	event_base_free(base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_trusted_proxies),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
