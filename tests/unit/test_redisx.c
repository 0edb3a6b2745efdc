/*
 * common/redisx.h's asynchronous connection against a real redis-server:
 * a burst of pub/sub messages is read in one loop turn, not 16 KB a turn
 * as hiredis's own libevent adapter does (a loop busy with a spike turns a
 * few times a second: the 10,000-SKU sale's sold-out pushes were late).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <hiredis/async.h>

#include "redis_server.h"
#include "redisx.h"
#include "util.h"

#define BURST 1000

struct sub {
	int subscribed;
	int messages;
};

static void on_message(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct sub *s = privdata;
	redisReply *r = reply;

	(void)ac;
	if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 3)
		return;
	if (strcmp(r->element[0]->str, "subscribe") == 0)
		s->subscribed = 1;
	else if (strcmp(r->element[0]->str, "message") == 0)
		s->messages++;
}

static void test_a_burst_is_read_in_one_turn(void **state)
{
	struct event_base *base = event_base_new();
	char address[256], err[256], payload[80];
	redisAsyncContext *ac;
	struct sub s = { 0, 0 };
	int64_t until;
	int avail = 0, last = -1;

	(void)state;
	assert_non_null(base);
	snprintf(address, sizeof(address), "unix:%s", test_redis_socket());
	ac = redisx_connect_async(base, address, -1, err, sizeof(err));
	assert_non_null(ac);
	assert_int_equal(redisAsyncCommand(ac, on_message, &s, "SUBSCRIBE burst"), REDIS_OK);
	until = mono_us() + 5000000;
	while (!s.subscribed && mono_us() < until)
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	assert_true(s.subscribed);

	/*
	 * About 110 KB on the subscriber's socket before the loop looks at it,
	 * published in one pipeline so that Redis writes it in few large
	 * writes (one small write each would fill the socket's buffer with
	 * per-write overhead long before that).
	 */
	memset(payload, 'x', sizeof(payload) - 1);
	payload[sizeof(payload) - 1] = '\0';
	for (int i = 0; i < BURST; i++)
		assert_int_equal(redisAppendCommand(test_rc, "PUBLISH burst %s", payload), REDIS_OK);
	for (int i = 0; i < BURST; i++) {
		void *r = NULL;

		assert_int_equal(redisGetReply(test_rc, &r), REDIS_OK);
		freeReplyObject(r);
	}
	/* Until every byte has arrived (the count stops growing). */
	until = mono_us() + 5000000;
	while (mono_us() < until) {
		usleep(20000);
		assert_int_equal(ioctl(ac->c.fd, FIONREAD, &avail), 0);
		if (avail == last)
			break;
		last = avail;
	}
	/* Far more than the 16 KB hiredis reads at a time. */
	assert_true(avail > 64 * 1024);

	/* One turn of the loop: every message. */
	event_base_loop(base, EVLOOP_ONCE);
	assert_int_equal(s.messages, BURST);

	redisAsyncFree(ac);
	event_base_free(base);
}

/*
 * struct resp writes what hiredis' own formatting writes, byte for byte,
 * over empty, long, binary and numeric arguments and a buffer that grows
 * and is reused; and Redis runs it.
 */
static void test_resp_is_hiredis_format(void **state)
{
	static const char bin[] = { 'a', '\0', '\r', '\n', 'b' };
	char longarg[300], n1[32];
	struct resp r = { 0 };
	char *want = NULL;
	redisReply *rep;
	int wl;

	(void)state;
	memset(longarg, 'x', sizeof(longarg) - 1);
	longarg[sizeof(longarg) - 1] = '\0';
	snprintf(n1, sizeof(n1), "%lld", -9223372036854775807LL - 1);
	for (int round = 0; round < 2; round++) {
		const char *argv[] = { "EVAL", "return {ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]}",
				       "0", "", longarg, bin, n1, "fs:promo:sku-1" };
		size_t argvlen[] = { 4, strlen(argv[1]), 1, 0, strlen(longarg), sizeof(bin),
				     strlen(n1), 14 };

		resp_begin(&r, 8);
		resp_arg(&r, "EVAL", 4);
		resp_arg(&r, argv[1], strlen(argv[1]));
		resp_int(&r, 0);
		resp_arg(&r, "", 0);
		resp_arg(&r, longarg, strlen(longarg));
		resp_arg(&r, bin, sizeof(bin));
		resp_int(&r, -9223372036854775807LL - 1);
		resp_arg2(&r, "fs:promo:", "sku-1");
		assert_false(r.oom);
		wl = redisFormatCommandArgv(&want, 8, argv, argvlen);
		assert_true(wl > 0);
		assert_int_equal(r.len, (size_t)wl);
		assert_memory_equal(r.buf, want, r.len);
		redisFreeCommand(want);
	}
	assert_int_equal(redisAppendFormattedCommand(test_rc, r.buf, r.len), REDIS_OK);
	assert_int_equal(redisGetReply(test_rc, (void **)&rep), REDIS_OK);
	assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
	assert_int_equal(rep->elements, 5);
	assert_int_equal(rep->element[0]->len, 0);
	assert_int_equal(rep->element[1]->len, strlen(longarg));
	assert_int_equal(rep->element[2]->len, sizeof(bin));
	assert_memory_equal(rep->element[2]->str, bin, sizeof(bin));
	assert_string_equal(rep->element[3]->str, n1);
	assert_string_equal(rep->element[4]->str, "fs:promo:sku-1");
	freeReplyObject(rep);
	resp_free(&r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_a_burst_is_read_in_one_turn),
		cmocka_unit_test(test_resp_is_hiredis_format),
	};

	return cmocka_run_group_tests(tests, test_redis_group_setup, test_redis_group_teardown);
}
