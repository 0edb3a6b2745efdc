#include "producer.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"

struct metric gw_m_inflight = {
	.name = "gateway_inflight",
	.help = "Intents produced and not yet acknowledged",
	.type = METRIC_GAUGE,
};

/* Delivery report: called from rd_kafka_poll, hence on the loop thread. */
static void producer_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	struct producer *p = opaque;

	p->inflight--;
	metric_add(&gw_m_inflight, -1);     /* every loop's producer adds to it */
	if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR)
		p->all_brokers_down = false;
	if (m->_private != NULL)
		p->on_delivery(p->on_delivery_arg, m->_private, m->err,
			       rd_kafka_message_status(m) != RD_KAFKA_MSG_STATUS_NOT_PERSISTED);
}

static void producer_error_cb(rd_kafka_t *rk, int errcode, const char *reason, void *opaque)
{
	struct producer *p = opaque;
	char q[512];

	if (errcode == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
		p->all_brokers_down = true;
	if (errcode == RD_KAFKA_RESP_ERR__FATAL) {
		char why[512];

		/* Every later produce fails: say why once, and turn unhealthy. */
		rd_kafka_fatal_error(rk, why, sizeof(why));
		p->fatal = true;
		log_error("kafka_fatal", "msg=\"%s\"", log_quote(q, sizeof(q), why));
		return;
	}
	log_warn("kafka_error", "err=%s msg=\"%s\"",
		 rd_kafka_err2name((rd_kafka_resp_err_t)errcode), log_quote(q, sizeof(q), reason));
}

static void producer_pipe_cb(evutil_socket_t fd, short what, void *arg)
{
	struct producer *p = arg;
	char buf[256];

	while (read(fd, buf, sizeof(buf)) > 0)
		;
	if (p->rk != NULL)
		rd_kafka_poll(p->rk, 0);
}

static void producer_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct producer *p = arg;

	if (p->rk != NULL)
		rd_kafka_poll(p->rk, 0);
}

int producer_init(struct producer *p, struct event_base *base, const struct kafka_cfg *kc,
		  producer_delivery_cb on_delivery, void *arg, char *err, size_t errlen)
{
	struct timeval tv = { 0, 100 * 1000 };

	memset(p, 0, sizeof(*p));
	p->pipefd[0] = p->pipefd[1] = -1;
	p->on_delivery = on_delivery;
	p->on_delivery_arg = arg;
	p->rk = kafka_producer_new(kc, "flashsale-gateway", FS_TOPIC_INTENTS,
				   producer_dr_cb,
				   producer_error_cb, p, err, errlen);
	if (p->rk == NULL)
		return -1;
	if (pipe2(p->pipefd, O_NONBLOCK | O_CLOEXEC) < 0) {
		snprintf(err, errlen, "pipe: %s", strerror(errno));
		return -1;
	}
	p->mainq = rd_kafka_queue_get_main(p->rk);
	rd_kafka_queue_io_event_enable(p->mainq, p->pipefd[1], "1", 1);
	p->pipe_ev = event_new(base, p->pipefd[0], EV_READ | EV_PERSIST, producer_pipe_cb, p);
	p->poll_ev = event_new(base, -1, EV_PERSIST, producer_timer_cb, p);
	if (p->pipe_ev == NULL || p->poll_ev == NULL ||
	    event_add(p->pipe_ev, NULL) < 0 || event_add(p->poll_ev, &tv) < 0) {
		snprintf(err, errlen, "cannot add producer events");
		return -1;
	}
	return 0;
}

int producer_send(struct producer *p, const fs_intent *in, void *msg_opaque,
		  char *err, size_t errlen)
{
	uint8_t buf[1024];
	size_t len;
	rd_kafka_resp_err_t e;

	if (p->rk == NULL) {
		snprintf(err, errlen, "producer closed");
		return -1;
	}
	/* Ids are at most 64 chars each: an intent is far below 1 KiB. */
	len = intent_packed_size(in);
	if (len > sizeof(buf)) {
		snprintf(err, errlen, "intent too large (%zu bytes)", len);
		return -1;
	}
	intent_pack(in, buf);
	e = rd_kafka_producev(p->rk,
			      RD_KAFKA_V_TOPIC(FS_TOPIC_INTENTS),
			      RD_KAFKA_V_KEY(in->sku, strlen(in->sku)),
			      RD_KAFKA_V_VALUE(buf, len),
			      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
			      RD_KAFKA_V_OPAQUE(msg_opaque),
			      RD_KAFKA_V_END);
	if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
		snprintf(err, errlen, "produce: %s", rd_kafka_err2str(e));
		return -1;
	}
	p->inflight++;
	metric_add(&gw_m_inflight, 1);
	return 0;
}

void producer_purge(struct producer *p)
{
	if (p->rk == NULL)
		return;
	rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
	rd_kafka_poll(p->rk, 0);
}

void producer_close(struct producer *p, int timeout_ms)
{
	if (p->rk != NULL) {
		if (kafka_flush(p->rk, timeout_ms) < 0) {
			log_warn("producer_flush_incomplete", "left=%d", rd_kafka_outq_len(p->rk));
			/* Every pending request must get its report (a 503) before destroy. */
			producer_purge(p);
		}
		/* Serve whatever reports the flush produced, then detach the pipe. */
		rd_kafka_poll(p->rk, 0);
		rd_kafka_queue_io_event_enable(p->mainq, -1, NULL, 0);
		rd_kafka_queue_destroy(p->mainq);
		p->mainq = NULL;
		rd_kafka_destroy(p->rk);
		p->rk = NULL;
	}
	if (p->pipe_ev != NULL)
		event_free(p->pipe_ev);
	if (p->poll_ev != NULL)
		event_free(p->poll_ev);
	p->pipe_ev = p->poll_ev = NULL;
	if (p->pipefd[0] >= 0)
		close(p->pipefd[0]);
	if (p->pipefd[1] >= 0)
		close(p->pipefd[1]);
	p->pipefd[0] = p->pipefd[1] = -1;
}
