/*
 * The Kafka producer, served from the loop: librdkafka writes a byte into a
 * pipe when its main queue has events (delivery reports, errors) and the
 * loop answers with rd_kafka_poll(rk, 0); a 100 ms timer polls too, in case
 * a wake-up is ever missed. Each delivery report goes to the callback given
 * at producer_init, which completes the request waiting for it.
 */
#ifndef FLASHSALE_GATEWAY_PRODUCER_H
#define FLASHSALE_GATEWAY_PRODUCER_H

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

struct producer {
	rd_kafka_t *rk;
	rd_kafka_queue_t *mainq;
	int pipefd[2];
	struct event *pipe_ev;
	struct event *poll_ev;
	long long inflight;         /* produced, delivery report not yet served */
	bool all_brokers_down;      /* set by error_cb, cleared by a delivery */
	bool fatal;                 /* the idempotent producer failed for good */
	producer_delivery_cb on_delivery;
	void *on_delivery_arg;
};

/* Intents produced and not yet acknowledged; routes_metrics_register registers it. */
extern struct metric gw_m_inflight;

/*
 * Create the producer and its loop events; every delivery report of a
 * message sent with a msg_opaque goes to on_delivery(arg, ...). Start-up
 * only.
 */
int producer_init(struct producer *p, struct event_base *base, const struct kafka_cfg *kc,
		  producer_delivery_cb on_delivery, void *arg, char *err, size_t errlen)
	FS_MUSTCHECK;

/*
 * Enqueue intent in (key = sku). 0: on_delivery will get msg_opaque once
 * (unless it is NULL). -1: nothing was queued.
 */
int producer_send(struct producer *p, const fs_intent *in, void *msg_opaque,
		  char *err, size_t errlen) FS_MUSTCHECK;

/* Fail whatever is still queued (drain timeout); reports are served at once. */
void producer_purge(struct producer *p);

/* Flush (bounded), detach from the loop and destroy. */
void producer_close(struct producer *p, int timeout_ms);

#endif
