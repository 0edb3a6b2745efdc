/*
 * The release loop (see release.h for the guarantee). Blocking hiredis and
 * librdkafka calls on one worker thread; the main thread only reads the
 * atomics below for /healthz and /metrics.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "array.h"
#include "intent.h"
#include "log.h"
#include "metrics.h"
#include "redisx.h"
#include "util.h"
#include "reconciler.h"

#define LOCK_KEY "fs:lock:release"
#define LOCK_TTL_MS "5000"
#define REDIS_TIMEOUT_MS 5000

/* Renew only our own lock: another reconciler may have taken it after expiry. */
static const char lock_renew_lua[] =
	"if redis.call('GET', KEYS[1]) == ARGV[1] then "
	"return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0";
static const char lock_drop_lua[] =
	"if redis.call('GET', KEYS[1]) == ARGV[1] then "
	"return redis.call('DEL', KEYS[1]) end return 0";
/* Mark a sent release only on a record that exists: never create a stray hash. */
static const char mark_lua[] =
	"if redis.call('EXISTS', KEYS[1]) == 1 then "
	"redis.call('HSET', KEYS[1], 'rs', ARGV[1]) return 1 end return 0";

static struct metric m_rounds = { "reconciler_rounds_total",
	"Release rounds run while holding the release lock", NULL, METRIC_COUNTER };
static struct metric m_sent = { "reconciler_releases_sent_total",
	"RELEASE intents delivered to Kafka", NULL, METRIC_COUNTER };
static struct metric m_failed = { "reconciler_release_failures_total",
	"RELEASE intents that could not be produced or delivered (retried next round)",
	NULL, METRIC_COUNTER };
static struct metric m_due = { "reconciler_due_holds",
	"Holds past their deadline seen in the last round", NULL, METRIC_GAUGE };
static struct metric m_orphans = { "reconciler_orphan_holds_total",
	"Due holds whose request record is missing or not reserved (not released)",
	NULL, METRIC_COUNTER };
static struct metric m_not_ready = { "reconciler_not_ready_rounds_total",
	"Rounds skipped because fs:ready is absent (Redis state lost)", NULL, METRIC_COUNTER };
static struct metric m_errors = { "reconciler_redis_errors_total",
	"Rounds aborted on a Redis error", NULL, METRIC_COUNTER };
static struct metric m_lock = { "reconciler_release_lock_held",
	"1 while this process holds the release lock", NULL, METRIC_GAUGE };
/* Totals over every promotion: per-SKU labels would need a label set per SKU. */
static struct metric m_promos = { "reconciler_promotions",
	"Promotions in fs:promos", NULL, METRIC_GAUGE };
static struct metric m_remaining = { "reconciler_stock_units",
	"Units over all promotions by state (Redis)", "state=\"remaining\"", METRIC_GAUGE };
static struct metric m_held = { "reconciler_stock_units",
	"Units over all promotions by state (Redis)", "state=\"held\"", METRIC_GAUGE };
static struct metric m_sold = { "reconciler_stock_units",
	"Units over all promotions by state (Redis)", "state=\"sold\"", METRIC_GAUGE };
static struct metric m_read = { "reconciler_skus_read",
	"SKUs the last round read (the others can have no due hold yet)", NULL, METRIC_GAUGE };
static struct metric m_forgot = { "reconciler_scan_resets_total",
	"Times the release loop forgot when each SKU can next have a due hold and read them all "
	"(new connection, epoch, rebuild, fence, lock)", NULL, METRIC_COUNTER };
static struct metric m_round_time = { "reconciler_round_duration_seconds",
	"Duration of a release round", NULL, METRIC_HISTOGRAM };
static struct metric m_fenced = { "reconciler_fenced_partitions",
	"Partitions fenced in fs:fence (Redis older than the ledger, or a rebuild running)",
	NULL, METRIC_GAUGE };
static struct metric m_healed = { "reconciler_admissions_healed_total",
	"Admitted purchases never decided whose admission budget was given back", NULL,
	METRIC_COUNTER };
static struct metric m_repairs_ok = { "reconciler_repairs_total",
	"Automatic repairs of fenced partitions", "result=\"ok\"", METRIC_COUNTER };
static struct metric m_repairs_failed = { "reconciler_repairs_total",
	"Automatic repairs of fenced partitions", "result=\"failed\"", METRIC_COUNTER };

void release_metrics_register(void)
{
	metrics_register(&m_rounds);
	metrics_register(&m_sent);
	metrics_register(&m_failed);
	metrics_register(&m_due);
	metrics_register(&m_orphans);
	metrics_register(&m_not_ready);
	metrics_register(&m_errors);
	metrics_register(&m_lock);
	metrics_register(&m_promos);
	metrics_register(&m_remaining);
	metrics_register(&m_held);
	metrics_register(&m_sold);
	metrics_register(&m_round_time);
	metrics_register(&m_read);
	metrics_register(&m_forgot);
	metrics_register(&m_fenced);
	metrics_register(&m_repairs_ok);
	metrics_register(&m_healed);
	metrics_register(&m_repairs_failed);
}

struct release {
	const struct rc_config *cfg;
	redisContext *rc;
	rd_kafka_t *rk;
	struct daemon_thread th;   /* beats after each finished round */
	int redis_ok;              /* atomic */
	int locked;                /* atomic: for health */
	char token[33];
	bool warned_not_ready;
	bool warned_connect;
	uint32_t round;            /* tags delivery reports with their round */
	struct release_due *due;
	size_t ndue, capdue;
	int64_t next_repair_us;    /* after a failed repair: not before this */
	pthread_mutex_t mu;        /* repair_err, for /healthz */
	char repair_err[512];      /* last repair's failure, "" when it worked */
	int fenced;                /* atomic: fs:fence entries seen last round */
	struct scan scan;          /* which SKUs a round reads */
	struct { size_t idx; bool read; } *ent;   /* per member of fs:promos this round */
	size_t capent;
	char state[64];            /* "fs:ready/fs:rebuilds" as last seen */
	redisReply *members;       /* fs:promos as last read (release_members) */
};

/*
 * Delivery reports carry (round, index): a report from an earlier round
 * whose flush timed out must not mark this round's entry.
 */
static void release_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	struct release *r = opaque;
	uintptr_t tag = (uintptr_t)m->_private;
	uint32_t round = (uint32_t)(tag >> 32);
	size_t idx = (size_t)(tag & 0xffffffffu);

	(void)rk;
	if (round != r->round || idx >= r->ndue)
		return;
	if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
		r->due[idx].delivered = 1;
	} else {
		metric_add(&m_failed, 1);
		log_warn("release_not_delivered", "request_id=%s sku=%s msg=\"%s\"",
			 r->due[idx].rid, r->due[idx].sku, rd_kafka_err2str(m->err));
	}
}

static void release_redis_drop(struct release *r, const char *why)
{
	log_warn("redis_error", "msg=\"%s\"", why);
	metric_add(&m_errors, 1);
	if (r->rc != NULL)
		redisFree(r->rc);
	r->rc = NULL;
	__atomic_store_n(&r->redis_ok, 0, __ATOMIC_RELAXED);
	/* We cannot know whether the lock survived; take it again later. */
	__atomic_store_n(&r->locked, 0, __ATOMIC_RELAXED);
	metric_set(&m_lock, 0);
}

/* The next round reads every SKU: what bounded the skips may no longer hold. */
static void release_forget(struct release *r, const char *why)
{
	if (r->scan.n == 0)
		return;
	scan_reset(&r->scan);
	metric_add(&m_forgot, 1);
	log_debug("scan_reset", "why=%s", why);
}

/* Run one command; NULL (connection dropped) on a transport or error reply. */
static redisReply *release_cmd(struct release *r, int argc, const char **argv)
{
	redisReply *rep = redisCommandArgv(r->rc, argc, argv, NULL);
	char why[256];

	if (rep == NULL) {
		snprintf(why, sizeof(why), "%s", r->rc->errstr[0] ? r->rc->errstr : "no reply");
		release_redis_drop(r, why);
		return NULL;
	}
	if (rep->type == REDIS_REPLY_ERROR) {
		snprintf(why, sizeof(why), "%s: %s", argv[0], rep->str);
		freeReplyObject(rep);
		release_redis_drop(r, why);
		return NULL;
	}
	return rep;
}

/* Take or renew the release lock; true while we hold it. */
static bool release_lock(struct release *r)
{
	redisReply *rep;
	bool held;

	if (__atomic_load_n(&r->locked, __ATOMIC_RELAXED)) {
		const char *argv[] = { "EVAL", lock_renew_lua, "1", LOCK_KEY, r->token, LOCK_TTL_MS };

		rep = release_cmd(r, 6, argv);
		if (rep == NULL)
			return false;
		held = rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
		if (!held)
			log_warn("release_lock_lost", "msg=\"another reconciler holds fs:lock:release\"");
	} else {
		const char *argv[] = { "SET", LOCK_KEY, r->token, "NX", "PX", LOCK_TTL_MS };

		rep = release_cmd(r, 6, argv);
		if (rep == NULL)
			return false;
		held = rep->type == REDIS_REPLY_STATUS;
		if (held)
			log_info("release_lock_taken", "token=%s", r->token);
	}
	freeReplyObject(rep);
	__atomic_store_n(&r->locked, held ? 1 : 0, __ATOMIC_RELAXED);
	metric_set(&m_lock, held ? 1 : 0);
	return held;
}

static int due_push(struct release *r, const char *rid, size_t rlen, const char *sku)
{
	struct release_due *d;

	if (rlen == 0 || rlen > FS_ID_MAX)
		return 0;
	if (r->ndue == r->capdue) {
		size_t cap = r->capdue ? r->capdue * 2 : 256;
		struct release_due *nd = realloc(r->due, cap * sizeof(*nd));

		if (nd == NULL)
			return -1;
		r->due = nd;
		r->capdue = cap;
	}
	d = &r->due[r->ndue++];
	memcpy(d->rid, rid, rlen);
	d->rid[rlen] = '\0';
	snprintf(d->sku, sizeof(d->sku), "%s", sku);
	d->send = 0;
	d->delivered = 0;
	return 0;
}

static long long reply_ll(const redisReply *e)
{
	if (e == NULL)
		return 0;
	if (e->type == REDIS_REPLY_INTEGER)
		return e->integer;
	if (e->type == REDIS_REPLY_STRING)
		return strtoll(e->str, NULL, 10);
	return 0;
}

/*
 * The members of fs:promos, kept between rounds (r->members) and read again
 * only when SCARD moved (members are only ever added: promo_load.lua, the
 * rebuild), after the loop forgot its bounds, or once per backstop period.
 * Mid-sale, SMEMBERS of 10,000 SKUs held Redis 2-9 ms a call (slowlog).
 * NULL on a Redis error (connection dropped).
 */
static redisReply *release_members(struct release *r)
{
	const char *scard[] = { "SCARD", "fs:promos" };
	const char *smembers[] = { "SMEMBERS", "fs:promos" };
	redisReply *rep;

	if (r->members != NULL && r->scan.n > 0 && (r->scan.round + 1) % r->scan.slots != 0) {
		bool same;

		rep = release_cmd(r, 2, scard);
		if (rep == NULL)
			return NULL;
		same = rep->type == REDIS_REPLY_INTEGER &&
		       rep->integer == (long long)r->members->elements;
		freeReplyObject(rep);
		if (same)
			return r->members;
	}
	rep = release_cmd(r, 2, smembers);
	if (rep == NULL)
		return NULL;
	if (rep->type != REDIS_REPLY_ARRAY) {
		freeReplyObject(rep);
		release_redis_drop(r, "SMEMBERS fs:promos: not an array");
		return NULL;
	}
	if (r->members != NULL)
		freeReplyObject(r->members);
	r->members = rep;
	return rep;
}

/*
 * The SKUs this round reads (scan.h): the counters (for the gauges), the due
 * holds and the earliest deadline still pending, in one pipeline. The gauges
 * sum what each SKU showed when last read. -1 on a Redis error (connection
 * dropped).
 */
static int release_collect(struct release *r, long long now)
{
	const struct rc_config *cfg = r->cfg;
	const redisReply *skus = release_members(r);
	long long remaining = 0, held = 0, sold = 0;
	char nows[32], limit[32];
	size_t nread = 0;
	int rc = -1;

	if (skus == NULL)
		return -1;
	/* SKUs taken out of fs:promos would stay in the map for ever. */
	if (r->scan.n > 2 * skus->elements + 64)
		scan_reset(&r->scan);
	scan_round(&r->scan);
	if (ARRAY_GROW(r->ent, r->capent, skus->elements + 1) < 0) {
		log_error("out_of_memory", "msg=\"scan entries\"");
		goto out;
	}
	/*
	 * Due only after the grace: a PAY the gateway accepted before the
	 * deadline may take up to its produce timeout to reach the partition,
	 * and it must be ahead of our RELEASE there to count.
	 */
	snprintf(nows, sizeof(nows), "%lld", now - cfg->release_grace_ms);
	snprintf(limit, sizeof(limit), "%lld", cfg->release_batch);
	for (size_t i = 0; i < skus->elements; i++) {
		const char *sku = skus->element[i]->str;
		bool want;

		if (scan_want(&r->scan, sku, now, &r->ent[i].idx, &want) < 0) {
			log_error("out_of_memory", "msg=\"scan entries\"");
			scan_reset(&r->scan);
			/* Commands already appended would answer the next round's. */
			release_redis_drop(r, "out of memory");
			goto out;
		}
		r->ent[i].read = want;
		if (!want)
			continue;
		nread++;
		if (redisAppendCommand(r->rc, "HMGET fs:promo:%s remaining held sold hold_ms",
				       sku) != REDIS_OK ||
		    redisAppendCommand(r->rc, "ZRANGEBYSCORE fs:holds:%s -inf %s LIMIT 0 %s",
				       sku, nows, limit) != REDIS_OK ||
		    redisAppendCommand(r->rc, "ZRANGEBYSCORE fs:holds:%s (%s +inf WITHSCORES "
				       "LIMIT 0 1", sku, nows) != REDIS_OK) {
			release_redis_drop(r, "append failed");
			goto out;
		}
	}
	for (size_t i = 0; i < skus->elements; i++) {
		struct scan_entry *e = &r->scan.e[r->ent[i].idx];
		redisReply *p = NULL, *h = NULL, *nx = NULL;
		long long hold_ms = 0, earliest = -1;
		size_t ndue = r->ndue;

		if (!r->ent[i].read)
			continue;
		if (redisGetReply(r->rc, (void **)&p) != REDIS_OK ||
		    redisGetReply(r->rc, (void **)&h) != REDIS_OK ||
		    redisGetReply(r->rc, (void **)&nx) != REDIS_OK) {
			if (p != NULL)
				freeReplyObject(p);
			if (h != NULL)
				freeReplyObject(h);
			release_redis_drop(r, r->rc->errstr[0] ? r->rc->errstr : "no reply");
			goto out;
		}
		if (p->type == REDIS_REPLY_ARRAY && p->elements == 4) {
			e->remaining = reply_ll(p->element[0]);
			e->held = reply_ll(p->element[1]);
			e->sold = reply_ll(p->element[2]);
			hold_ms = reply_ll(p->element[3]);
		}
		if (h->type == REDIS_REPLY_ARRAY) {
			for (size_t j = 0; j < h->elements; j++) {
				const redisReply *m = h->element[j];

				if (m->type == REDIS_REPLY_STRING &&
				    due_push(r, m->str, m->len, skus->element[i]->str) < 0) {
					log_error("out_of_memory", "msg=\"due holds\"");
					break;
				}
			}
		}
		if (nx->type == REDIS_REPLY_ARRAY && nx->elements == 2)
			earliest = reply_ll(nx->element[1]);
		/* A reply that is not what we asked for bounds nothing. */
		if (h->type != REDIS_REPLY_ARRAY || nx->type != REDIS_REPLY_ARRAY)
			hold_ms = 0;
		scan_note(e, now, r->ndue - ndue, earliest, hold_ms, cfg->release_grace_ms);
		freeReplyObject(p);
		freeReplyObject(h);
		freeReplyObject(nx);
	}
	for (size_t i = 0; i < skus->elements; i++) {
		const struct scan_entry *e = &r->scan.e[r->ent[i].idx];

		remaining += e->remaining;
		held += e->held;
		sold += e->sold;
	}
	metric_set(&m_promos, (int64_t)skus->elements);
	metric_set(&m_remaining, remaining);
	metric_set(&m_held, held);
	metric_set(&m_sold, sold);
	metric_set(&m_due, (int64_t)r->ndue);
	metric_set(&m_read, (int64_t)nread);
	rc = 0;
out:
	return rc;
}

int release_filter_due(redisContext *rc, struct release_due *due, size_t n, long long now,
		       long long resend_ms, size_t *orphans)
{
	size_t suspects = 0;
	int rc_ = 0;

	*orphans = 0;
	for (size_t i = 0; i < n; i++) {
		if (redisAppendCommand(rc, "HMGET fs:req:%s st rs", due[i].rid) != REDIS_OK)
			return -1;
	}
	for (size_t i = 0; i < n; i++) {
		redisReply *rep = NULL;
		const redisReply *st, *rs;

		if (redisGetReply(rc, (void **)&rep) != REDIS_OK)
			return -1;
		due[i].send = 0;
		if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2) {
			freeReplyObject(rep);
			continue;
		}
		st = rep->element[0];
		rs = rep->element[1];
		if (st->type != REDIS_REPLY_STRING || strcmp(st->str, "reserved") != 0) {
			due[i].send = -1;       /* decided since the round began, or an orphan */
			suspects++;
		} else if (rs->type != REDIS_REPLY_STRING ||
			   now - strtoll(rs->str, NULL, 10) >= resend_ms) {
			due[i].send = 1;
		}
		freeReplyObject(rep);
	}
	/*
	 * deduct.lua ends a hold and takes it out of fs:holds in one step, so a
	 * hold decided between the round's ZRANGEBYSCORE and the HMGET above
	 * (a pay, or our last round's release, applied meanwhile: routine in a
	 * busy sale) is gone from fs:holds now. One still there is an orphan.
	 */
	for (size_t i = 0; i < n && suspects > 0; i++) {
		if (due[i].send == -1 &&
		    redisAppendCommand(rc, "ZSCORE fs:holds:%s %s", due[i].sku, due[i].rid) != REDIS_OK)
			return -1;
	}
	for (size_t i = 0; i < n && suspects > 0; i++) {
		redisReply *rep = NULL;

		if (due[i].send != -1)
			continue;
		due[i].send = 0;
		if (redisGetReply(rc, (void **)&rep) != REDIS_OK) {
			rc_ = -1;   /* the remaining replies are lost with the context */
			break;
		}
		if (rep->type != REDIS_REPLY_NIL)
			(*orphans)++;
		freeReplyObject(rep);
	}
	return rc_;
}

/* Decide which due holds to send; say so when some are orphans. */
static int release_filter(struct release *r, long long now)
{
	size_t orphans = 0;

	if (release_filter_due(r->rc, r->due, r->ndue, now, r->cfg->release_resend_ms,
			       &orphans) < 0) {
		release_redis_drop(r, r->rc->errstr[0] ? r->rc->errstr : "no reply");
		return -1;
	}
	if (orphans > 0) {
		metric_add(&m_orphans, (int64_t)orphans);
		log_warn("orphan_holds", "count=%zu msg=\"fs:holds member without a reserved record\"",
			 orphans);
	}
	return 0;
}

/* Produce the RELEASE intents and wait for their delivery reports. */
static size_t release_send(struct release *r)
{
	size_t queued = 0, delivered = 0;
	int timeout = (int)r->cfg->base.kafka.produce_timeout_ms + 1000;

	for (size_t i = 0; i < r->ndue; i++) {
		fs_intent in = FLASHSALE__INTENT__INIT;
		uint8_t buf[512];
		size_t len, skulen;
		rd_kafka_resp_err_t err;
		uintptr_t tag = ((uintptr_t)r->round << 32) | (uintptr_t)i;
		int tries = 0;

		if (!r->due[i].send)
			continue;
		in.kind = FLASHSALE__INTENT__KIND__RELEASE;
		in.request_id = r->due[i].rid;
		in.sku = r->due[i].sku;
		in.source = (char *)"reconciler";
		in.sent_at_ms = now_ms();
		len = intent_packed_size(&in);
		if (len > sizeof(buf))
			continue;       /* ids are at most 64 chars: cannot happen */
		intent_pack(&in, buf);
		skulen = strlen(r->due[i].sku);
		do {
			err = rd_kafka_producev(r->rk,
						RD_KAFKA_V_TOPIC(FS_TOPIC_INTENTS),
						RD_KAFKA_V_KEY(r->due[i].sku, skulen),
						RD_KAFKA_V_VALUE(buf, len),
						RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
						RD_KAFKA_V_OPAQUE((void *)tag),
						RD_KAFKA_V_END);
			if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL)
				rd_kafka_poll(r->rk, 100);
		} while (err == RD_KAFKA_RESP_ERR__QUEUE_FULL && ++tries < 50);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
			metric_add(&m_failed, 1);
			log_warn("release_produce_failed", "request_id=%s msg=\"%s\"",
				 r->due[i].rid, rd_kafka_err2str(err));
			continue;
		}
		queued++;
	}
	if (queued == 0)
		return 0;
	if (kafka_flush(r->rk, timeout) < 0)
		log_warn("release_flush_timeout", "queued=%zu timeout_ms=%d", queued, timeout);
	for (size_t i = 0; i < r->ndue; i++)
		delivered += r->due[i].delivered ? 1 : 0;
	metric_add(&m_sent, (int64_t)delivered);
	return delivered;
}

/* rs = now on each delivered one, so the next rounds do not resend it. */
static int release_mark(struct release *r, long long now)
{
	struct rpipe p;
	char nows[32];

	snprintf(nows, sizeof(nows), "%lld", now);
	rpipe_init(&p, r->rc, 1000);
	for (size_t i = 0; i < r->ndue; i++) {
		char key[FS_ID_MAX + 16];
		const char *argv[] = { "EVAL", mark_lua, "1", key, nows };

		if (!r->due[i].delivered)
			continue;
		snprintf(key, sizeof(key), "fs:req:%s", r->due[i].rid);
		if (rpipe_append(&p, 5, argv, NULL) < 0)
			break;
	}
	if (rpipe_flush(&p) < 0) {
		release_redis_drop(r, p.err);
		return -1;
	}
	return 0;
}

/*
 * Repair the partitions the deductor fenced once their fences are old
 * enough (rebuild_quiesce_ms): rebuilt from PostgreSQL and the ledger, then
 * unfenced. Runs on this thread between release rounds; its connections are
 * its own. A failure is retried after a backoff and shown in /healthz.
 */
static void release_repair(struct release *r)
{
	struct rebuild_opts opt = { .mode = REBUILD_REPAIR, .partition = -1, .no_wait = true,
				    .quiet = true };
	struct rebuild_report rep = { 0 };
	const char *argv[] = { "HLEN", "fs:fence" };
	redisReply *n = release_cmd(r, 2, argv);
	int fenced;

	if (n == NULL)
		return;
	fenced = n->type == REDIS_REPLY_INTEGER ? (int)n->integer : 0;
	freeReplyObject(n);
	/* A repair restores holds with old deadlines: read every SKU until it is over. */
	if (fenced > 0 || __atomic_load_n(&r->fenced, __ATOMIC_RELAXED) > 0)
		release_forget(r, "fenced");
	__atomic_store_n(&r->fenced, fenced, __ATOMIC_RELAXED);
	metric_set(&m_fenced, fenced);
	if (fenced == 0 || !r->cfg->repair || mono_us() < r->next_repair_us) {
		if (fenced == 0) {
			pthread_mutex_lock(&r->mu);
			r->repair_err[0] = '\0';
			pthread_mutex_unlock(&r->mu);
		}
		return;
	}
	if (rebuild_run(r->cfg, &opt, &rep) == 0) {
		if (rep.partitions > 0) {
			metric_add(&m_repairs_ok, 1);
			log_info("repaired", "partitions=%d waiting=%d", rep.partitions, rep.skipped);
		}
		pthread_mutex_lock(&r->mu);
		r->repair_err[0] = '\0';
		pthread_mutex_unlock(&r->mu);
		return;
	}
	metric_add(&m_repairs_failed, 1);
	pthread_mutex_lock(&r->mu);
	snprintf(r->repair_err, sizeof(r->repair_err), "%s", rep.err);
	pthread_mutex_unlock(&r->mu);
	r->next_repair_us = mono_us() + r->cfg->rebuild_quiesce_ms * 1000;
}

/*
 * Give back the admission budget of purchases admitted before cutoff that
 * no deductor decided (gateway/admit.lua): their gateway died between the
 * admission and Kafka. The same for a gateway's lease of budget that it
 * never returned (it died, or lost Redis): its units left go back. A decision that comes later finds no adm on the
 * marker and gives nothing twice. Only stale entries are looked at.
 * KEYS: fs:adm:all fs:adm:total   ARGV: cutoff_ms limit
 * Returns how many were healed.
 */
static const char heal_lua[] =
	"local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])\n"
	"local healed = 0\n"
	"for _, m in ipairs(ids) do\n"
	"  local sku, rid = string.match(m, '^(%S+) (%S+)$')\n"
	"  if sku then\n"
	"    local key, promo = 'fs:req:' .. rid, 'fs:promo:' .. sku\n"
	"    local r = redis.call('HMGET', key, 'o', 'adm', 'st')\n"
	"    local adm = tonumber(r[2])\n"
	"    if adm and not r[1] then\n"
	"      if r[3] == 'lease' then redis.call('DEL', key) else redis.call('HDEL', key, 'adm') end\n"
	"      if redis.call('EXISTS', promo) == 1 then\n"
	"        if redis.call('HINCRBY', promo, 'adm', -adm) < 0 then\n"
	"          redis.call('HSET', promo, 'adm', 0)\n"
	"        end\n"
	"        if r[3] == 'lease' and redis.call('HINCRBY', promo, 'lease', -adm) < 0 then\n"
	"          redis.call('HSET', promo, 'lease', 0)\n"
	"        end\n"
	"      end\n"
	"      if redis.call('DECRBY', KEYS[2], adm) < 0 then redis.call('SET', KEYS[2], 0) end\n"
	"      healed = healed + 1\n"
	"    end\n"
	"  end\n"
	"  redis.call('ZREM', KEYS[1], m)\n"
	"end\n"
	"return healed\n";

static void release_heal(struct release *r, long long now)
{
	char cutoff[24];
	const char *argv[] = { "EVAL", heal_lua, "2", "fs:adm:all", "fs:adm:total", cutoff, "500" };
	redisReply *n;

	snprintf(cutoff, sizeof(cutoff), "%lld", now - r->cfg->admission_heal_ms);
	n = release_cmd(r, 7, argv);
	if (n == NULL)
		return;
	if (n->type == REDIS_REPLY_INTEGER && n->integer > 0) {
		metric_add(&m_healed, n->integer);
		log_warn("admission_healed", "purchases=%lld msg=\"admitted, never decided: their "
			 "gateway died before Kafka took them\"", n->integer);
	}
	freeReplyObject(n);
}

static void release_round(struct release *r)
{
	const struct rc_config *cfg = r->cfg;
	const char *ready[] = { "MGET", "fs:ready", "fs:rebuilds" };
	redisReply *rep;
	char err[256];
	long long now;
	size_t sent;
	bool was_locked;
	char state[sizeof(r->state)];

	if (r->rc == NULL) {
		r->rc = redisx_connect(cfg->redis_address, REDIS_TIMEOUT_MS, err, sizeof(err));
		if (r->rc == NULL) {
			__atomic_store_n(&r->redis_ok, 0, __ATOMIC_RELAXED);
			/* Once per outage, not every round. */
			if (!r->warned_connect)
				log_warn("redis_connect_failed", "msg=\"%s\"", err);
			r->warned_connect = true;
			return;
		}
		r->warned_connect = false;
		log_info("redis_connected", "address=%s", cfg->redis_address);
		release_forget(r, "connected");   /* another Redis, or this one restarted */
	}
	was_locked = __atomic_load_n(&r->locked, __ATOMIC_RELAXED) != 0;
	if (!release_lock(r)) {
		if (r->rc != NULL)
			__atomic_store_n(&r->redis_ok, 1, __ATOMIC_RELAXED);
		return;
	}
	__atomic_store_n(&r->redis_ok, 1, __ATOMIC_RELAXED);
	/* Another reconciler released meanwhile: start from what Redis shows. */
	if (!was_locked)
		release_forget(r, "lock_taken");
	rep = release_cmd(r, 3, ready);
	if (rep == NULL)
		return;
	if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
	    rep->element[0]->type != REDIS_REPLY_STRING) {
		/* State lost: releasing against it could return units twice. */
		freeReplyObject(rep);
		metric_add(&m_not_ready, 1);
		if (!r->warned_not_ready)
			log_warn("state_missing", "msg=\"fs:ready absent: not releasing until rebuild\"");
		r->warned_not_ready = true;
		return;
	}
	/* A new epoch, or a rebuild of some partitions: holds with old deadlines. */
	snprintf(state, sizeof(state), "%s/%s", rep->element[0]->str,
		 rep->element[1]->type == REDIS_REPLY_STRING ? rep->element[1]->str : "0");
	if (strcmp(r->state, state) != 0) {
		release_forget(r, "rebuilt");
		memcpy(r->state, state, sizeof(state));
	}
	freeReplyObject(rep);
	if (r->warned_not_ready)
		log_info("state_present", "msg=\"fs:ready back: releasing again\"");
	r->warned_not_ready = false;

	release_repair(r);
	if (r->rc == NULL)
		return;
	now = redisx_time_ms(r->rc, err, sizeof(err));
	if (now < 0) {
		release_redis_drop(r, err);
		return;
	}
	release_heal(r, now);
	if (r->rc == NULL)
		return;
	metric_add(&m_rounds, 1);
	r->round++;
	r->ndue = 0;
	if (release_collect(r, now) < 0 || r->ndue == 0)
		return;
	if (release_filter(r, now) < 0)
		return;
	sent = release_send(r);
	if (sent == 0)
		return;
	if (release_mark(r, now) < 0)
		return;
	log_info("released", "due=%zu sent=%zu", r->ndue, sent);
	/* The flush may have taken a while: keep the lock for the next round. */
	(void)release_lock(r);
}

static void *release_main(void *arg)
{
	struct release *r = arg;
	const struct rc_config *cfg = r->cfg;
	int64_t interval_us = cfg->release_interval_ms * 1000;

	while (!daemon_thread_stopping(&r->th)) {
		int64_t t0 = mono_us(), left;

		release_round(r);
		metric_observe_us(&m_round_time, (uint64_t)(mono_us() - t0));
		daemon_thread_beat(&r->th);
		/* Sleep in short slices so a drain is noticed quickly. */
		while ((left = t0 + interval_us - mono_us()) > 0 &&
		       !daemon_thread_stopping(&r->th)) {
			struct timespec ts = { 0, (left > 50000 ? 50000 : left) * 1000 };

			nanosleep(&ts, NULL);
		}
	}

	if (kafka_flush(r->rk, (int)cfg->base.kafka.produce_timeout_ms) < 0)
		log_warn("drain_flush_incomplete", "outq=%d", rd_kafka_outq_len(r->rk));
	if (r->rc != NULL && __atomic_load_n(&r->locked, __ATOMIC_RELAXED)) {
		const char *argv[] = { "EVAL", lock_drop_lua, "1", LOCK_KEY, r->token };
		redisReply *rep = release_cmd(r, 5, argv);

		if (rep != NULL)
			freeReplyObject(rep);
	}
	log_info("release_stopped", "msg=\"round finished, producer flushed\"");
	daemon_thread_exit(&r->th, false);
	return NULL;
}

struct release *release_start(const struct rc_config *cfg, char *err, size_t errlen)
{
	struct release *r = calloc(1, sizeof(*r));
	char rid[27];

	if (r == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	r->cfg = cfg;
	pthread_mutex_init(&r->mu, NULL);
	scan_init(&r->scan, (uint32_t)(cfg->release_full_scan_ms / cfg->release_interval_ms));
	/* Unique per process: request_id_new is random and time-ordered. */
	request_id_new(rid);
	snprintf(r->token, sizeof(r->token), "%s-%d", rid, (int)getpid() % 10000);
	r->rk = kafka_producer_new(&cfg->base.kafka, "flashsale-reconciler", FS_TOPIC_INTENTS,
				   release_dr_cb, NULL, r,
				   err, errlen);
	if (r->rk == NULL)
		goto fail;
	if (daemon_thread_start(&r->th, release_main, r, err, errlen) < 0) {
		rd_kafka_destroy(r->rk);
		goto fail;
	}
	return r;
fail:
	free(r);
	return NULL;
}

struct daemon_thread *release_thread(struct release *r)
{
	return &r->th;
}

void release_free(struct release *r)
{
	if (r == NULL)
		return;
	daemon_thread_stop(&r->th);
	(void)daemon_thread_join(&r->th);
	rd_kafka_destroy(r->rk);
	if (r->rc != NULL)
		redisFree(r->rc);
	free(r->due);
	free(r->ent);
	if (r->members != NULL)
		freeReplyObject(r->members);
	scan_free(&r->scan);
	pthread_mutex_destroy(&r->mu);
	free(r);
}

enum daemon_health release_health(void *release, char *detail, size_t n)
{
	struct release *r = release;
	int64_t age_ms = daemon_thread_beat_age_ms(&r->th);
	/* A repair runs on this thread: give it the quiesce time and the tail's. */
	int64_t limit_ms = r->cfg->release_interval_ms * 20 + r->cfg->base.kafka.produce_timeout_ms +
			   r->cfg->rebuild_tail_timeout_ms;
	bool redis_ok = __atomic_load_n(&r->redis_ok, __ATOMIC_RELAXED) != 0;
	bool alive = age_ms <= (limit_ms > 5000 ? limit_ms : 5000);
	int fenced = __atomic_load_n(&r->fenced, __ATOMIC_RELAXED);
	char why[600] = "";
	size_t k = 0;

	pthread_mutex_lock(&r->mu);
	for (const char *s = r->repair_err; *s != '\0' && k + 3 < sizeof(why); s++) {
		if ((unsigned char)*s < 0x20)
			continue;
		if (*s == '"' || *s == '\\')
			why[k++] = '\\';
		why[k++] = *s;
	}
	why[k] = '\0';
	pthread_mutex_unlock(&r->mu);
	snprintf(detail, n, "{\"worker_heartbeat_ms\":%" PRId64 ",\"redis\":%s,\"release_lock\":%s,"
		 "\"fenced_partitions\":%d,\"repair_error\":\"%s\"}",
		 age_ms, redis_ok ? "true" : "false",
		 __atomic_load_n(&r->locked, __ATOMIC_RELAXED) ? "true" : "false", fenced, why);
	if (!alive || !redis_ok)
		return HEALTH_FAILED;
	return why[0] != '\0' ? HEALTH_DEGRADED : HEALTH_OK;
}
