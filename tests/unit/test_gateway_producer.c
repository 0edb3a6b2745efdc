/*
 * gateway/producer.h against librdkafka's own mock cluster
 * (test.mock.num.brokers): one producer shared by two event loops, each
 * loop getting its own delivery reports on its own thread, and a port that
 * closes while the broker is down getting every report (purged) before it
 * goes.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <event2/event.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "gateway.h"

#define PER_LOOP 200

struct loop {
	int id;
	struct event_base *base;
	struct producer_port *port;
	pthread_t thread;
	int sent, reported, wrong_thread, wrong_loop, failed, persisted_maybe;
	struct event *deadline;
};

static void on_delivery(void *arg, void *msg_opaque, rd_kafka_resp_err_t err,
			bool maybe_stored)
{
	struct loop *l = arg;

	l->reported++;
	if (!pthread_equal(pthread_self(), l->thread))
		l->wrong_thread++;
	if (msg_opaque != (void *)l)
		l->wrong_loop++;
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		l->failed++;
	if (maybe_stored)
		l->persisted_maybe++;
	if (l->reported == l->sent)
		event_base_loopbreak(l->base);
}

static void send_all(evutil_socket_t fd, short what, void *arg)
{
	struct loop *l = arg;
	char err[256], rid[32], sku[16];

	(void)fd;
	(void)what;
	for (int i = 0; i < PER_LOOP; i++) {
		fs_intent in = FLASHSALE__INTENT__INIT;

		snprintf(rid, sizeof(rid), "r-%d-%d", l->id, i);
		snprintf(sku, sizeof(sku), "sku-%d", i % 7);
		in.kind = FLASHSALE__INTENT__KIND__PURCHASE;
		in.request_id = rid;
		in.sku = sku;
		in.user_id = "u";
		in.qty = 1;
		assert_int_equal(producer_send(l->port, &in, l, err, sizeof(err)), 0);
		l->sent++;
	}
}

static void give_up(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	event_base_loopbreak(((struct loop *)arg)->base);
}

static void *loop_thread(void *arg)
{
	struct loop *l = arg;
	struct timeval now = { 0, 0 }, ten = { 10, 0 };

	event_base_once(l->base, -1, EV_TIMEOUT, send_all, l, &now);
	l->deadline = evtimer_new(l->base, give_up, l);
	evtimer_add(l->deadline, &ten);
	event_base_dispatch(l->base);
	event_free(l->deadline);
	return NULL;
}

static void producer_up(struct producer *p, char *settings)
{
	struct kafka_cfg kc = { .bootstrap = "", .settings = settings,
				.produce_timeout_ms = 5000 };
	char err[256];

	assert_int_equal(producer_init(p, &kc, err, sizeof(err)), 0);
}

static void test_each_loop_gets_its_own_reports(void **state)
{
	struct producer p;
	struct loop loops[2];
	char err[256];

	(void)state;
	producer_up(&p, "test.mock.num.brokers=1");
	memset(loops, 0, sizeof(loops));
	for (int i = 0; i < 2; i++) {
		loops[i].id = i;
		loops[i].base = event_base_new();
		assert_non_null(loops[i].base);
		loops[i].port = producer_port_new(&p, loops[i].base, on_delivery, &loops[i], err,
						  sizeof(err));
		assert_non_null(loops[i].port);
	}
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&loops[i].thread, NULL, loop_thread, &loops[i]), 0);
	for (int i = 0; i < 2; i++)
		pthread_join(loops[i].thread, NULL);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(loops[i].sent, PER_LOOP);
		assert_int_equal(loops[i].reported, PER_LOOP);
		assert_int_equal(loops[i].wrong_thread, 0);
		assert_int_equal(loops[i].wrong_loop, 0);
		assert_int_equal(loops[i].failed, 0);
		assert_int_equal(loops[i].port->inflight, 0);
		producer_port_close(loops[i].port, 0);
	}
	assert_int_equal(producer_inflight(&p), 0);
	assert_false(producer_fatal(&p));
	producer_free(&p, 1000);
	for (int i = 0; i < 2; i++)
		event_base_free(loops[i].base);
}

/*
 * The broker is down: close waits its timeout, purges, and every purchase
 * still gets its report on the loop before the port goes (a request is
 * never left without an answer).
 */
static void test_close_purges_and_reports_everything(void **state)
{
	struct producer p;
	struct loop l;
	rd_kafka_mock_cluster_t *mc;
	char err[256];
	int64_t t0;

	(void)state;
	producer_up(&p, "test.mock.num.brokers=1");
	mc = rd_kafka_handle_mock_cluster(p.rk);
	assert_non_null(mc);
	assert_int_equal(rd_kafka_mock_broker_set_down(mc, 1), RD_KAFKA_RESP_ERR_NO_ERROR);
	memset(&l, 0, sizeof(l));
	l.thread = pthread_self();
	l.base = event_base_new();
	l.port = producer_port_new(&p, l.base, on_delivery, &l, err, sizeof(err));
	assert_non_null(l.port);
	send_all(-1, 0, &l);
	assert_int_equal(l.port->inflight, PER_LOOP);
	t0 = mono_us();
	producer_port_close(l.port, 300);
	assert_true(mono_us() - t0 >= 300 * 1000);
	assert_int_equal(l.reported, PER_LOOP);
	assert_int_equal(l.failed, PER_LOOP);
	assert_int_equal(l.wrong_thread, 0);
	assert_int_equal(l.port->inflight, 0);
	/* Closed: a send is refused, nothing is queued. */
	{
		fs_intent in = FLASHSALE__INTENT__INIT;

		in.kind = FLASHSALE__INTENT__KIND__PURCHASE;
		in.request_id = "late";
		in.sku = "sku-0";
		in.user_id = "u";
		in.qty = 1;
		assert_int_equal(producer_send(l.port, &in, &l, err, sizeof(err)), -1);
	}
	producer_free(&p, 100);
	event_base_free(l.base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_each_loop_gets_its_own_reports),
		cmocka_unit_test(test_close_purges_and_reports_everything),
	};

	/* Each base is built before its thread starts and used by it alone: no evthread. */
	return cmocka_run_group_tests(tests, NULL, NULL);
}
