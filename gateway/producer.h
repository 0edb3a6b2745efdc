/*
 * The Kafka producer, served from the loop: librdkafka writes a byte into a
 * pipe when its main queue has events (delivery reports, errors) and the
 * loop answers with rd_kafka_poll(rk, 0); a 100 ms timer polls too, in case
 * a wake-up is ever missed. Delivery reports complete pending requests.
 */
#ifndef GATEWAY_PRODUCER_H
#define GATEWAY_PRODUCER_H

#include <stdbool.h>
#include <stddef.h>

#include <librdkafka/rdkafka.h>

#include "intent.h"

struct gateway;
struct pending;
struct event;

struct producer {
	rd_kafka_t *rk;
	rd_kafka_queue_t *mainq;
	int pipefd[2];
	struct event *pipe_ev;
	struct event *poll_ev;
	long long inflight;         /* produced, delivery report not yet served */
	bool all_brokers_down;      /* set by error_cb, cleared by a delivery */
	bool fatal;                 /* the idempotent producer failed for good */
};

/* Create the producer and its loop events. Start-up only. */
int producer_init(struct producer *p, struct gateway *gw, char *err, size_t errlen)
	__attribute__((warn_unused_result));

/*
 * Enqueue intent in (key = sku) with pd as the delivery opaque. 0: the
 * delivery report will call routes_on_delivery(pd). -1: nothing was queued.
 */
int producer_send(struct producer *p, const fs_intent *in, struct pending *pd,
		  char *err, size_t errlen) __attribute__((warn_unused_result));

/* Fail whatever is still queued (drain timeout); reports are served at once. */
void producer_purge(struct producer *p);

/* Flush (bounded), detach from the loop and destroy. */
void producer_close(struct producer *p, int timeout_ms);

#endif
