/*
 * The Kafka producer: one per process, shared by every event loop, as
 * librdkafka intends: one batch per partition per linger goes to the broker
 * instead of one per loop, and the process runs one set of librdkafka
 * threads instead of one per loop (bench/run, two loops on the real broker,
 * three pairs of runs: the gateway's CPU per accepted purchase 76, 68 and
 * 81 us against 82, 82 and 82 with a producer per loop).
 *
 * A thread of the producer's own serves librdkafka's events (rd_kafka_poll)
 * and hands each delivery report to the loop that produced the message: its
 * port, an inbox under a mutex and an eventfd the loop listens to. The loop
 * then calls the callback given at producer_port_new. Nothing else polls
 * the producer, so a report is served exactly once, on its own loop.
 */
#ifndef FLASHSALE_GATEWAY_PRODUCER_H
#define FLASHSALE_GATEWAY_PRODUCER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include <librdkafka/rdkafka.h>

#include "intent.h"
#include "kafka.h"
#include "metrics.h"
#include "util.h"

struct event_base;
struct event;

/*
 * A delivery report for the msg_opaque given to producer_send, on the loop.
 * When it failed, maybe_stored says the broker may have stored the intent
 * anyway (timed out or purged in flight): then the buyer must not be told
 * that nothing happened.
 */
typedef void (*producer_delivery_cb)(void *arg, void *msg_opaque, rd_kafka_resp_err_t err,
				     bool maybe_stored);

struct producer_report {
	void *opaque;
	rd_kafka_resp_err_t err;
	bool maybe_stored;
};

/* One loop's end of the producer. */
struct producer_port {
	struct producer *p;
	struct event *wake_ev;
	int wakefd;                      /* eventfd: the inbox has reports */
	pthread_mutex_t mu;
	struct producer_report *inbox;   /* under mu: filled by the poll thread */
	size_t n, cap;
	struct producer_report *spare;   /* the loop's: the inbox it is serving */
	size_t spare_cap;
	bool closed;                     /* under mu: later reports are dropped */
	bool dirty;                      /* poll thread: wake the loop after this poll */
	long long inflight;              /* the loop's: produced, report not yet served */
	producer_delivery_cb on_delivery;
	void *on_delivery_arg;
	struct producer_port *next;      /* the producer's list */
};

struct producer {
	rd_kafka_t *rk;
	pthread_t thread;
	bool started;
	int stop;                        /* atomic: the poll thread returns */
	long long inflight;              /* atomic: every port's, until reported */
	bool all_brokers_down;           /* atomic: set by error_cb, cleared by a delivery */
	bool fatal;                      /* atomic: the idempotent producer failed for good */
	pthread_mutex_t ports_mu;
	struct producer_port *ports;
};

/* Intents produced and not yet acknowledged; routes_metrics_register registers it. */
extern struct metric gw_m_inflight;

/* Create the producer and start its poll thread. Start-up only. */
int producer_init(struct producer *p, const struct kafka_cfg *kc, char *err, size_t errlen)
	FS_MUSTCHECK;

/*
 * A loop's port: every report of a message it sends goes to on_delivery(arg,
 * ...) on base's thread. Owned by the producer (producer_free). Start-up only.
 */
struct producer_port *producer_port_new(struct producer *p, struct event_base *base,
					producer_delivery_cb on_delivery, void *arg,
					char *err, size_t errlen) FS_MUSTCHECK;

/*
 * Enqueue intent in (key = sku) from port's loop. 0: on_delivery will get
 * msg_opaque once, on this loop. -1: nothing was queued.
 */
int producer_send(struct producer_port *port, const fs_intent *in, void *msg_opaque,
		  char *err, size_t errlen) FS_MUSTCHECK;

/*
 * Fail whatever is still queued or in flight (a drain timed out). It is the
 * whole process's producer: every loop gets its reports, which only a
 * process that stops wants; they come through the poll thread as usual.
 */
void producer_purge(struct producer_port *port);

/*
 * On port's loop, when it stops: serve its reports until none is due
 * (waiting at most timeout_ms, then purging and waiting as long again),
 * then detach from the loop; later reports are dropped. Idempotent.
 */
void producer_port_close(struct producer_port *port, int timeout_ms);

/* After every loop stopped: flush (bounded), stop the thread, destroy. */
void producer_free(struct producer *p, int timeout_ms);

/* Health, from any thread. */
bool producer_fatal(const struct producer *p);
bool producer_brokers_down(const struct producer *p);
long long producer_inflight(const struct producer *p);

#endif
