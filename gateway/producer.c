#include "producer.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"

struct metric gw_m_inflight = {
	.name = "gateway_inflight",
	.help = "Intents produced and not yet acknowledged",
	.type = METRIC_GAUGE,
};

/* What a message carries to its report: the loop that sent it, and its opaque. */
struct producer_ticket {
	struct producer_port *port;
	void *opaque;
};

/*
 * Delivery report, on the poll thread: into the sending loop's inbox, which
 * the thread wakes once this poll is over (producer_wake_ports).
 */
static void producer_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	struct producer *p = opaque;
	struct producer_ticket *t = m->_private;
	struct producer_port *port;
	struct producer_report r;

	(void)rk;
	__atomic_sub_fetch(&p->inflight, 1, __ATOMIC_RELAXED);
	metric_add(&gw_m_inflight, -1);
	if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR)
		__atomic_store_n(&p->all_brokers_down, false, __ATOMIC_RELAXED);
	if (t == NULL)
		return;
	port = t->port;
	r.opaque = t->opaque;
	r.err = m->err;
	r.maybe_stored = rd_kafka_message_status(m) != RD_KAFKA_MSG_STATUS_NOT_PERSISTED;
	free(t);
	pthread_mutex_lock(&port->mu);
	if (!port->closed) {
		if (port->n == port->cap) {
			size_t cap = port->cap ? 2 * port->cap : 256;
			struct producer_report *in = realloc(port->inbox, cap * sizeof(*in));

			if (in == NULL) {
				/* The buyer's request then waits for the loop's own end. */
				pthread_mutex_unlock(&port->mu);
				log_error("producer_report_lost", "msg=\"out of memory\"");
				return;
			}
			port->inbox = in;
			port->cap = cap;
		}
		port->inbox[port->n++] = r;
		port->dirty = true;
	}
	pthread_mutex_unlock(&port->mu);
}

static void producer_error_cb(rd_kafka_t *rk, int errcode, const char *reason, void *opaque)
{
	struct producer *p = opaque;
	char q[512];

	if (errcode == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
		__atomic_store_n(&p->all_brokers_down, true, __ATOMIC_RELAXED);
	if (errcode == RD_KAFKA_RESP_ERR__FATAL) {
		char why[512];

		/* Every later produce fails: say why once, and turn unhealthy. */
		rd_kafka_fatal_error(rk, why, sizeof(why));
		__atomic_store_n(&p->fatal, true, __ATOMIC_RELAXED);
		log_error("kafka_fatal", "msg=\"%s\"", log_quote(q, sizeof(q), why));
		return;
	}
	log_warn("kafka_error", "err=%s msg=\"%s\"",
		 rd_kafka_err2name((rd_kafka_resp_err_t)errcode), log_quote(q, sizeof(q), reason));
}

/* After a poll: one wake-up per loop that got reports, however many. */
static void producer_wake_ports(struct producer *p)
{
	uint64_t one = 1;

	pthread_mutex_lock(&p->ports_mu);
	for (struct producer_port *port = p->ports; port != NULL; port = port->next) {
		bool wake;

		pthread_mutex_lock(&port->mu);
		wake = port->dirty;
		port->dirty = false;
		pthread_mutex_unlock(&port->mu);
		/* A full eventfd counter (EAGAIN) is already a wake-up. */
		if (wake && write(port->wakefd, &one, sizeof(one)) < 0 && errno != EAGAIN)
			log_error("producer_wake_failed", "msg=\"%s\"", strerror(errno));
	}
	pthread_mutex_unlock(&p->ports_mu);
}

static void *producer_thread(void *arg)
{
	struct producer *p = arg;

	while (!__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE)) {
		rd_kafka_poll(p->rk, 100);
		producer_wake_ports(p);
	}
	return NULL;
}

/* On the port's loop: every report in the inbox to its callback. */
static void producer_port_serve(struct producer_port *port)
{
	uint64_t v;
	struct producer_report *batch;
	size_t n, cap;

	if (read(port->wakefd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		log_error("producer_wake_failed", "msg=\"%s\"", strerror(errno));
	/* Swap buffers: the poll thread fills the other while this one is served. */
	pthread_mutex_lock(&port->mu);
	batch = port->inbox;
	cap = port->cap;
	n = port->n;
	port->inbox = port->spare;
	port->cap = port->spare_cap;
	port->n = 0;
	port->spare = batch;
	port->spare_cap = cap;
	pthread_mutex_unlock(&port->mu);
	for (size_t i = 0; i < n; i++) {
		port->inflight--;
		port->on_delivery(port->on_delivery_arg, batch[i].opaque, batch[i].err,
				  batch[i].maybe_stored);
	}
}

static void producer_wake_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	producer_port_serve(arg);
}

int producer_init(struct producer *p, const struct kafka_cfg *kc, char *err, size_t errlen)
{
	int rc;

	memset(p, 0, sizeof(*p));
	if (pthread_mutex_init(&p->ports_mu, NULL) != 0) {
		snprintf(err, errlen, "pthread_mutex_init failed");
		return -1;
	}
	p->rk = kafka_producer_new(kc, "flashsale-gateway", FS_TOPIC_INTENTS, producer_dr_cb,
				   producer_error_cb, p, err, errlen);
	if (p->rk == NULL)
		return -1;
	rc = pthread_create(&p->thread, NULL, producer_thread, p);
	if (rc != 0) {
		snprintf(err, errlen, "pthread_create: %s", strerror(rc));
		return -1;
	}
	p->started = true;
	return 0;
}

struct producer_port *producer_port_new(struct producer *p, struct event_base *base,
					producer_delivery_cb on_delivery, void *arg,
					char *err, size_t errlen)
{
	struct producer_port *port = calloc(1, sizeof(*port));

	if (port == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	port->p = p;
	port->on_delivery = on_delivery;
	port->on_delivery_arg = arg;
	port->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (port->wakefd < 0 || pthread_mutex_init(&port->mu, NULL) != 0) {
		snprintf(err, errlen, "eventfd: %s", strerror(errno));
		if (port->wakefd >= 0)
			close(port->wakefd);
		free(port);
		return NULL;
	}
	port->wake_ev = event_new(base, port->wakefd, EV_READ | EV_PERSIST, producer_wake_cb,
				  port);
	if (port->wake_ev == NULL || event_add(port->wake_ev, NULL) < 0) {
		snprintf(err, errlen, "cannot add the producer's event");
		if (port->wake_ev != NULL)
			event_free(port->wake_ev);
		pthread_mutex_destroy(&port->mu);
		close(port->wakefd);
		free(port);
		return NULL;
	}
	pthread_mutex_lock(&p->ports_mu);
	port->next = p->ports;
	p->ports = port;
	pthread_mutex_unlock(&p->ports_mu);
	return port;
}

int producer_send(struct producer_port *port, const fs_intent *in, void *msg_opaque,
		  char *err, size_t errlen)
{
	struct producer *p = port->p;
	struct producer_ticket *t;
	uint8_t buf[1024];
	size_t len;
	rd_kafka_resp_err_t e;

	if (p->rk == NULL || port->closed) {
		snprintf(err, errlen, "producer closed");
		return -1;
	}
	/* Ids are at most 64 chars each: an intent is far below 1 KiB. */
	len = intent_packed_size(in);
	if (len > sizeof(buf)) {
		snprintf(err, errlen, "intent too large (%zu bytes)", len);
		return -1;
	}
	if ((t = malloc(sizeof(*t))) == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	t->port = port;
	t->opaque = msg_opaque;
	intent_pack(in, buf);
	/* Counted first: the report may come before producev returns. */
	__atomic_add_fetch(&p->inflight, 1, __ATOMIC_RELAXED);
	metric_add(&gw_m_inflight, 1);
	e = rd_kafka_producev(p->rk,
			      RD_KAFKA_V_TOPIC(FS_TOPIC_INTENTS),
			      RD_KAFKA_V_KEY(in->sku, strlen(in->sku)),
			      RD_KAFKA_V_VALUE(buf, len),
			      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
			      RD_KAFKA_V_OPAQUE(t),
			      RD_KAFKA_V_END);
	if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
		__atomic_sub_fetch(&p->inflight, 1, __ATOMIC_RELAXED);
		metric_add(&gw_m_inflight, -1);
		free(t);
		snprintf(err, errlen, "produce: %s", rd_kafka_err2str(e));
		return -1;
	}
	port->inflight++;
	return 0;
}

void producer_purge(struct producer_port *port)
{
	if (port->p->rk != NULL)
		rd_kafka_purge(port->p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
}

/* Serve port's reports until none is due or until_us (monotonic) passes. */
static void producer_port_wait(struct producer_port *port, int64_t until_us)
{
	producer_port_serve(port);
	while (port->inflight > 0) {
		int64_t left_us = until_us - mono_us();
		/* Rounded up: the whole timeout, not a millisecond short of it. */
		int64_t left_ms = (left_us + 999) / 1000;
		struct pollfd pfd = { .fd = port->wakefd, .events = POLLIN };

		if (left_us <= 0)
			return;
		if (poll(&pfd, 1, left_ms > 100 ? 100 : (int)left_ms) < 0 && errno != EINTR)
			return;
		producer_port_serve(port);
	}
}

void producer_port_close(struct producer_port *port, int timeout_ms)
{
	if (port == NULL || port->wake_ev == NULL)
		return;
	producer_port_wait(port, mono_us() + (int64_t)timeout_ms * 1000);
	if (port->inflight > 0 && timeout_ms > 0) {
		log_warn("producer_flush_incomplete", "left=%lld", port->inflight);
		/* Every pending request must get its report (a 503) before the loop goes. */
		producer_purge(port);
		producer_port_wait(port, mono_us() + (int64_t)timeout_ms * 1000);
	}
	pthread_mutex_lock(&port->mu);
	port->closed = true;
	pthread_mutex_unlock(&port->mu);
	if (port->inflight > 0)
		log_warn("producer_reports_dropped", "left=%lld", port->inflight);
	event_free(port->wake_ev);
	port->wake_ev = NULL;
}

void producer_free(struct producer *p, int timeout_ms)
{
	struct producer_port *port, *next;

	if (p->started) {
		__atomic_store_n(&p->stop, 1, __ATOMIC_RELEASE);
		pthread_join(p->thread, NULL);
		p->started = false;
	}
	if (p->rk != NULL) {
		/* Every loop has stopped: what is left is flushed, its reports dropped. */
		if (kafka_flush(p->rk, timeout_ms) < 0) {
			log_warn("producer_flush_incomplete", "left=%d", rd_kafka_outq_len(p->rk));
			rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
		}
		rd_kafka_poll(p->rk, 0);
		rd_kafka_destroy(p->rk);
		p->rk = NULL;
	}
	for (port = p->ports; port != NULL; port = next) {
		next = port->next;
		if (port->wake_ev != NULL)
			event_free(port->wake_ev);
		close(port->wakefd);
		pthread_mutex_destroy(&port->mu);
		free(port->inbox);
		free(port->spare);
		free(port);
	}
	p->ports = NULL;
	pthread_mutex_destroy(&p->ports_mu);
}

bool producer_fatal(const struct producer *p)
{
	return __atomic_load_n(&p->fatal, __ATOMIC_RELAXED);
}

bool producer_brokers_down(const struct producer *p)
{
	return __atomic_load_n(&p->all_brokers_down, __ATOMIC_RELAXED);
}

long long producer_inflight(const struct producer *p)
{
	return __atomic_load_n(&p->inflight, __ATOMIC_RELAXED);
}
