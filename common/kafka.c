#include "kafka.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flashsale.pb-c.h"
#include "log.h"
#include "util.h"

int kafka_conf_set(rd_kafka_conf_t *conf, const char *name, const char *value,
		   char *err, size_t errlen)
{
	char rerr[512];

	if (rd_kafka_conf_set(conf, name, value, rerr, sizeof(rerr)) != RD_KAFKA_CONF_OK) {
		snprintf(err, errlen, "kafka property %s=%s: %s", name, value, rerr);
		return -1;
	}
	return 0;
}

/* librdkafka's internal logs, through our logger (called from its threads). */
static void kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	enum log_level lvl;
	char quoted[1024];

	/* syslog levels: 0..3 error, 4 warning, 5..6 info, 7 debug */
	if (level <= 3)
		lvl = LOG_LEVEL_ERROR;
	else if (level == 4)
		lvl = LOG_LEVEL_WARN;
	else if (level <= 6)
		lvl = LOG_LEVEL_INFO;
	else
		lvl = LOG_LEVEL_DEBUG;
	log_at(lvl, "kafka_log", "client=%s fac=%s msg=\"%s\"",
	       rd_kafka_name(rk), fac, log_quote(quoted, sizeof(quoted), buf));
}

static void kafka_error_cb(rd_kafka_t *rk, int errcode, const char *reason, void *opaque)
{
	char quoted[1024];
	char fatal[512];

	log_quote(quoted, sizeof(quoted), reason);
	if (errcode == RD_KAFKA_RESP_ERR__FATAL) {
		rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, fatal, sizeof(fatal));
		char fq[600];

		log_error("kafka_error", "client=%s fatal=true err=%s msg=\"%s\" cause=\"%s\"",
			  rd_kafka_name(rk), rd_kafka_err2name(orig), quoted,
			  log_quote(fq, sizeof(fq), fatal));
		return;
	}
	log_warn("kafka_error", "client=%s err=%s msg=\"%s\"", rd_kafka_name(rk),
		 rd_kafka_err2name((rd_kafka_resp_err_t)errcode), quoted);
}

/* Apply "prop=value,prop=value" (empty entries ignored). */
static int kafka_apply_settings(rd_kafka_conf_t *conf, const char *settings,
				char *err, size_t errlen)
{
	char *copy, *save = NULL, *tok;
	int rc = 0;

	if (settings == NULL || settings[0] == '\0')
		return 0;
	copy = strdup(settings);
	if (copy == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	for (tok = strtok_r(copy, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
		char *eq;

		while (*tok == ' ' || *tok == '\t')
			tok++;
		if (*tok == '\0')
			continue;
		eq = strchr(tok, '=');
		if (eq == NULL || eq == tok) {
			snprintf(err, errlen, "kafka.settings: '%s' is not prop=value", tok);
			rc = -1;
			break;
		}
		*eq = '\0';
		if (kafka_conf_set(conf, tok, eq + 1, err, errlen) < 0) {
			rc = -1;
			break;
		}
	}
	free(copy);
	return rc;
}

rd_kafka_conf_t *kafka_conf_new(const struct kafka_cfg *kc, enum kafka_role role,
				const char *client_id, const char *group_id,
				char *err, size_t errlen)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char timeout[32];

	if (conf == NULL) {
		snprintf(err, errlen, "rd_kafka_conf_new failed");
		return NULL;
	}
	if (kafka_conf_set(conf, "bootstrap.servers", kc->bootstrap ? kc->bootstrap : "",
			   err, errlen) < 0 ||
	    kafka_conf_set(conf, "client.id", client_id ? client_id : "flashsale", err, errlen) < 0)
		goto fail;

	switch (role) {
	case KAFKA_PRODUCER:
		snprintf(timeout, sizeof(timeout), "%lld", kc->produce_timeout_ms);
		if (kafka_conf_set(conf, "acks", "all", err, errlen) < 0 ||
		    kafka_conf_set(conf, "enable.idempotence", "true", err, errlen) < 0 ||
		    kafka_conf_set(conf, "partitioner", "murmur2_random", err, errlen) < 0 ||
		    /* A buyer waits for the ack: 1 ms, not librdkafka's 5. In a
		     * spike, batches fill by themselves (bench/run: p50 of the
		     * accept path 11 ms instead of 15 on the real broker). */
		    kafka_conf_set(conf, "linger.ms", "1", err, errlen) < 0 ||
		    /* Intents and ledger events of one SKU are near-identical:
		     * lz4 batches are several times smaller on the broker and
		     * the wire for little CPU (and the development mock, which
		     * keeps 5 MB per partition, holds that many more). */
		    kafka_conf_set(conf, "compression.codec", "lz4", err, errlen) < 0 ||
		    kafka_conf_set(conf, "message.timeout.ms", timeout, err, errlen) < 0)
			goto fail;
		break;
	case KAFKA_CONSUMER:
		if (group_id == NULL) {
			snprintf(err, errlen, "kafka consumer needs a group id");
			goto fail;
		}
		if (kafka_conf_set(conf, "group.id", group_id, err, errlen) < 0 ||
		    kafka_conf_set(conf, "enable.auto.offset.store", "false", err, errlen) < 0 ||
		    kafka_conf_set(conf, "enable.auto.commit", "true", err, errlen) < 0 ||
		    kafka_conf_set(conf, "auto.commit.interval.ms", "500", err, errlen) < 0 ||
		    kafka_conf_set(conf, "auto.offset.reset", "earliest", err, errlen) < 0 ||
		    kafka_conf_set(conf, "session.timeout.ms", "6000", err, errlen) < 0 ||
		    kafka_conf_set(conf, "heartbeat.interval.ms", "1000", err, errlen) < 0)
			goto fail;
		break;
	case KAFKA_READER:
		/* librdkafka wants a group id even for assign(); nothing is committed. */
		if (kafka_conf_set(conf, "group.id", group_id ? group_id : client_id, err,
				   errlen) < 0 ||
		    kafka_conf_set(conf, "enable.auto.commit", "false", err, errlen) < 0 ||
		    kafka_conf_set(conf, "enable.auto.offset.store", "false", err, errlen) < 0 ||
		    kafka_conf_set(conf, "enable.partition.eof", "true", err, errlen) < 0 ||
		    kafka_conf_set(conf, "auto.offset.reset", "earliest", err, errlen) < 0)
			goto fail;
		break;
	default:
		snprintf(err, errlen, "unknown kafka role %d", (int)role);
		goto fail;
	}
	if (kafka_apply_settings(conf, kc->settings, err, errlen) < 0)
		goto fail;
	rd_kafka_conf_set_log_cb(conf, kafka_log_cb);
	rd_kafka_conf_set_error_cb(conf, kafka_error_cb);
	return conf;
fail:
	rd_kafka_conf_destroy(conf);
	return NULL;
}

int kafka_deadletter(rd_kafka_t *producer, const rd_kafka_message_t *m,
		     const char *consumer, const char *reason,
		     char *err, size_t errlen)
{
	Flashsale__DeadLetter dl = FLASHSALE__DEAD_LETTER__INIT;
	rd_kafka_resp_err_t rerr;
	uint8_t *buf;
	size_t len, keylen;

	dl.topic = (char *)(m->rkt != NULL ? rd_kafka_topic_name(m->rkt) : "");
	dl.partition = m->partition;
	dl.offset = m->offset;
	dl.key.data = m->key;
	dl.key.len = m->key != NULL ? m->key_len : 0;
	dl.value.data = m->payload;
	dl.value.len = m->payload != NULL ? m->len : 0;
	dl.reason = (char *)(reason != NULL ? reason : "");
	dl.consumer = (char *)(consumer != NULL ? consumer : "");
	dl.at_ms = now_ms();

	len = flashsale__dead_letter__get_packed_size(&dl);
	buf = malloc(len > 0 ? len : 1);
	if (buf == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	flashsale__dead_letter__pack(&dl, buf);
	/* RD_KAFKA_V_KEY casts its length unparenthesised: pass a plain variable. */
	keylen = dl.key.len;
	rerr = rd_kafka_producev(producer,
				 RD_KAFKA_V_TOPIC(FS_TOPIC_DEADLETTER),
				 RD_KAFKA_V_KEY(m->key, keylen),
				 RD_KAFKA_V_VALUE(buf, len),
				 RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
				 RD_KAFKA_V_END);
	free(buf);
	if (rerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
		snprintf(err, errlen, "dead-letter produce: %s", rd_kafka_err2str(rerr));
		return -1;
	}
	return 0;
}

int kafka_flush(rd_kafka_t *producer, int timeout_ms)
{
	(void)rd_kafka_flush(producer, timeout_ms);
	return rd_kafka_outq_len(producer) == 0 ? 0 : -1;
}

size_t kafka_poll_batch(rd_kafka_t *consumer, size_t max, int first_ms, int wait_ms,
			void (*take)(void *arg, rd_kafka_message_t *m), void *arg,
			int64_t *t0_us)
{
	int64_t deadline = 0;
	size_t n = 0;

	while (n < max) {
		rd_kafka_message_t *m;
		int timeout;

		if (n == 0) {
			timeout = first_ms;
		} else {
			int64_t left = deadline - mono_us();

			timeout = left > 0 ? (int)((left + 999) / 1000) : 0;
		}
		m = rd_kafka_consumer_poll(consumer, timeout);
		if (m == NULL) {
			if (n == 0 || timeout == 0)
				break;
			continue;
		}
		if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
			if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
				log_warn("consume_error", "err=%s msg=\"%s\"",
					 rd_kafka_err2name(m->err), rd_kafka_message_errstr(m));
			rd_kafka_message_destroy(m);
			continue;
		}
		if (n++ == 0) {
			*t0_us = mono_us();
			deadline = *t0_us + (int64_t)wait_ms * 1000;
		}
		take(arg, m);
	}
	return n;
}

rd_kafka_t *kafka_producer_new(const struct kafka_cfg *kc, const char *client_id,
			       const char *topic,
			       void (*dr_cb)(rd_kafka_t *, const rd_kafka_message_t *, void *),
			       void (*error_cb)(rd_kafka_t *, int, const char *, void *),
			       void *opaque, char *err, size_t errlen)
{
	rd_kafka_conf_t *conf = kafka_conf_new(kc, KAFKA_PRODUCER, client_id, NULL, err, errlen);
	rd_kafka_t *rk;
	char why[512];

	if (conf == NULL)
		return NULL;
	rd_kafka_conf_set_opaque(conf, opaque);
	rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
	if (error_cb != NULL)
		rd_kafka_conf_set_error_cb(conf, error_cb);
	/* rd_kafka_new takes the conf only when it succeeds. */
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof(why));
	if (rk == NULL) {
		rd_kafka_conf_destroy(conf);
		snprintf(err, errlen, "kafka producer: %s", why);
		return NULL;
	}
	if (topic != NULL) {
		/* Otherwise the topic is first looked up by the first produce,
		 * and that message (a whole deductor batch after a restart)
		 * waits about half a second for the metadata. The handle only
		 * starts the lookup; rk keeps the topic after we let go of it. */
		rd_kafka_topic_t *t = rd_kafka_topic_new(rk, topic, NULL);

		if (t != NULL)
			rd_kafka_topic_destroy(t);
	}
	return rk;
}

int32_t kafka_partition_of(const char *key, size_t keylen)
{
	/* With a key this partitioner is pure murmur2: it reads neither the
	 * topic handle nor the opaques. */
	return rd_kafka_msg_partitioner_murmur2_random(NULL, key, keylen, FS_PARTITIONS,
						       NULL, NULL);
}

rd_kafka_resp_err_t kafka_watermarks(rd_kafka_t *rk, const char *topic, int32_t partition,
				     int64_t *lo, int64_t *hi, int timeout_ms)
{
	rd_kafka_resp_err_t err = rd_kafka_query_watermark_offsets(rk, topic, partition, lo, hi,
								    timeout_ms);
	rd_kafka_topic_t *rkt;
	const struct rd_kafka_metadata *md = NULL;

	if (err == RD_KAFKA_RESP_ERR_NO_ERROR || err == RD_KAFKA_RESP_ERR__TIMED_OUT)
		return err;
	/* Any Metadata answer updates librdkafka's cache of leaders. */
	rkt = rd_kafka_topic_new(rk, topic, NULL);
	if (rkt == NULL)
		return err;
	if (rd_kafka_metadata(rk, 0, rkt, &md, timeout_ms) == RD_KAFKA_RESP_ERR_NO_ERROR)
		rd_kafka_metadata_destroy(md);
	rd_kafka_topic_destroy(rkt);
	return rd_kafka_query_watermark_offsets(rk, topic, partition, lo, hi, timeout_ms);
}

rd_kafka_t *kafka_reader_new(const struct kafka_cfg *kc, const char *client_id,
			     char *err, size_t errlen)
{
	rd_kafka_conf_t *conf = kafka_conf_new(kc, KAFKA_READER, client_id, NULL, err, errlen);
	rd_kafka_t *rk;
	char why[512];

	if (conf == NULL)
		return NULL;
	rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof(why));
	if (rk == NULL) {
		rd_kafka_conf_destroy(conf);
		snprintf(err, errlen, "kafka reader: %s", why);
		return NULL;
	}
	return rk;
}

int kafka_read_ranges(rd_kafka_t *rk, const char *topic, const struct kafka_range *r,
		      size_t n, int64_t idle_ms,
		      int (*fn)(void *arg, const rd_kafka_message_t *m), void *arg,
		      char *err, size_t errlen)
{
	rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new((int)n);
	int64_t pos[FS_PARTITIONS], to[FS_PARTITIONS], last_progress;
	rd_kafka_resp_err_t kerr;
	int waiting = 0, rc = -1;

	for (int p = 0; p < FS_PARTITIONS; p++)
		pos[p] = to[p] = 0;
	for (size_t i = 0; i < n; i++) {
		int32_t p = r[i].partition;

		if (p < 0 || p >= FS_PARTITIONS) {
			snprintf(err, errlen, "%s[%d]: no such partition", topic, (int)p);
			goto out;
		}
		if (r[i].from >= r[i].to)
			continue;
		pos[p] = r[i].from;
		to[p] = r[i].to;
		rd_kafka_topic_partition_list_add(parts, topic, p)->offset = r[i].from;
		waiting++;
	}
	if (waiting == 0) {
		rc = 0;
		goto out;
	}
	kerr = rd_kafka_assign(rk, parts);
	if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
		snprintf(err, errlen, "kafka assign %s: %s", topic, rd_kafka_err2str(kerr));
		goto out;
	}
	last_progress = mono_us();
	while (waiting > 0) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
		int32_t p;

		if (m == NULL) {
			if (mono_us() - last_progress > idle_ms * 1000) {
				snprintf(err, errlen, "%s: no progress for %lld ms with %d "
					 "partitions short of their end", topic,
					 (long long)idle_ms, waiting);
				goto out_assigned;
			}
			continue;
		}
		p = m->partition;
		if (p < 0 || p >= FS_PARTITIONS || pos[p] >= to[p]) {
			rd_kafka_message_destroy(m);
			continue;
		}
		if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
			/* The end of the log: nothing more will come below to. */
			if (m->offset >= to[p]) {
				pos[p] = to[p];
				waiting--;
			}
			rd_kafka_message_destroy(m);
			continue;
		}
		if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
			log_warn("read_error", "topic=%s partition=%d msg=\"%s\"", topic, (int)p,
				 rd_kafka_message_errstr(m));
			rd_kafka_message_destroy(m);
			continue;
		}
		if (m->offset >= pos[p] && m->offset < to[p] && fn(arg, m) < 0) {
			snprintf(err, errlen, "%s[%d]@%lld: not applied", topic, (int)p,
				 (long long)m->offset);
			rd_kafka_message_destroy(m);
			goto out_assigned;
		}
		if (m->offset >= pos[p])
			pos[p] = m->offset + 1;
		last_progress = mono_us();
		if (pos[p] >= to[p])
			waiting--;
		rd_kafka_message_destroy(m);
	}
	rc = 0;
out_assigned:
	(void)rd_kafka_assign(rk, NULL);
out:
	rd_kafka_topic_partition_list_destroy(parts);
	return rc;
}
