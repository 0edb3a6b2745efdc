/*
 * `reconciler rebuild` (see rebuild.h). Order of work:
 *   1. fence: refuse or clear a present state (fs:ready), let batches settle;
 *   2. read PostgreSQL in one REPEATABLE READ snapshot, so ledger_events and
 *      ledger_offsets agree (the order-writer commits them together);
 *   3. read the ledger tail after those offsets up to the high watermarks;
 *   4. fold, check, write Redis pipelined, and set fs:ready LAST: until then
 *      the deductor answers not_ready and sells nothing.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "intent.h"
#include "log.h"
#include "pg.h"
#include "redisx.h"
#include "util.h"
#include "reconciler.h"

#define REDIS_TIMEOUT_MS 60000
#define PG_FETCH 10000
#define PG_FETCH_SQL "FETCH 10000 FROM ledger"

struct rebuild {
	const struct reconciler_cfg *cfg;
	redisContext *rc;
	PGconn *pg;
	struct fold *fold;
	struct fold_promo *promos;
	size_t npromos;
	long long next_offset[FS_PARTITIONS];   /* -1: PostgreSQL has none */
	size_t events_pg, events_tail, undecodable, invalid;
	char err[512];
};

static void sleep_ms(long long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) < 0)
		;
}

static long long field_ll(const PGresult *res, int row, int col)
{
	return strtoll(PQgetvalue(res, row, col), NULL, 10);
}

/* One statement that returns rows; NULL with err filled. */
static PGresult *pg_rows(struct rebuild *b, const char *sql)
{
	PGresult *res = PQexec(b->pg, sql);

	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		snprintf(b->err, sizeof(b->err), "postgres: %s", PQerrorMessage(b->pg));
		PQclear(res);
		return NULL;
	}
	return res;
}

static int rebuild_fold_pg_rows(struct rebuild *b, const PGresult *res)
{
	for (int i = 0; i < PQntuples(res); i++) {
		struct fold_event ev = {
			.kind = fold_kind_parse(PQgetvalue(res, i, 0)),
			.request_id = PQgetvalue(res, i, 1),
			.sku = PQgetvalue(res, i, 2),
			.user_id = PQgetvalue(res, i, 3),
			.qty = field_ll(res, i, 4),
			.state = PQgetvalue(res, i, 5),
			.reason = PQgetvalue(res, i, 6),
			.deadline_ms = field_ll(res, i, 7),
			.at_ms = field_ll(res, i, 8),
		};
		char err[256];
		int rc = fold_add(b->fold, &ev, err, sizeof(err));

		if (rc < 0) {
			snprintf(b->err, sizeof(b->err), "%s", err);
			return -1;
		}
		b->events_pg++;
	}
	return 0;
}

/* Promotions, offsets and every ledger event, in one snapshot. */
static int rebuild_read_pg(struct rebuild *b)
{
	PGresult *res = NULL;
	char err[512];
	int rc = -1;

	for (int p = 0; p < FS_PARTITIONS; p++)
		b->next_offset[p] = -1;
	if (pg_exec(b->pg, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", err, sizeof(err)) < 0) {
		snprintf(b->err, sizeof(b->err), "%s", err);
		return -1;
	}
	res = pg_rows(b, "SELECT sku, stock, per_user_limit, "
		      "(extract(epoch FROM starts_at) * 1000)::bigint, "
		      "(extract(epoch FROM ends_at) * 1000)::bigint, hold_seconds "
		      "FROM promotions ORDER BY sku");
	if (res == NULL)
		goto out;
	b->npromos = (size_t)PQntuples(res);
	b->promos = calloc(b->npromos ? b->npromos : 1, sizeof(*b->promos));
	if (b->promos == NULL) {
		snprintf(b->err, sizeof(b->err), "out of memory");
		goto out;
	}
	for (size_t i = 0; i < b->npromos; i++) {
		struct fold_promo *p = &b->promos[i];

		snprintf(p->sku, sizeof(p->sku), "%s", PQgetvalue(res, (int)i, 0));
		p->stock = field_ll(res, (int)i, 1);
		p->limit = field_ll(res, (int)i, 2);
		p->start_ms = field_ll(res, (int)i, 3);
		p->end_ms = field_ll(res, (int)i, 4);
		p->hold_ms = field_ll(res, (int)i, 5) * 1000;
	}
	PQclear(res);

	res = pg_rows(b, "SELECT ledger_partition, next_offset FROM ledger_offsets");
	if (res == NULL)
		goto out;
	for (int i = 0; i < PQntuples(res); i++) {
		long long p = field_ll(res, i, 0);

		if (p < 0 || p >= FS_PARTITIONS) {
			snprintf(b->err, sizeof(b->err),
				 "ledger_offsets names partition %lld but the ledger has %d", p,
				 FS_PARTITIONS);
			goto out;
		}
		b->next_offset[p] = field_ll(res, i, 1);
	}
	PQclear(res);
	res = NULL;

	/* A cursor: a million events must not sit in one PGresult. */
	if (pg_exec(b->pg, "DECLARE ledger NO SCROLL CURSOR FOR "
		    "SELECT kind, request_id, sku, user_id, qty, state, reason, deadline_ms, at_ms "
		    "FROM ledger_events ORDER BY ledger_partition, ledger_offset",
		    err, sizeof(err)) < 0) {
		snprintf(b->err, sizeof(b->err), "%s", err);
		goto out;
	}
	for (;;) {
		int n;

		res = pg_rows(b, PG_FETCH_SQL);
		if (res == NULL)
			goto out;
		n = PQntuples(res);
		if (rebuild_fold_pg_rows(b, res) < 0)
			goto out;
		PQclear(res);
		res = NULL;
		if (n < PG_FETCH)
			break;
	}
	rc = 0;
out:
	PQclear(res);
	if (pg_exec(b->pg, rc == 0 ? "COMMIT" : "ROLLBACK", err, sizeof(err)) < 0 && rc == 0) {
		snprintf(b->err, sizeof(b->err), "%s", err);
		rc = -1;
	}
	return rc;
}

/* Decode and fold one tail message; -1 only when out of memory. */
static int rebuild_fold_message(struct rebuild *b, const rd_kafka_message_t *m)
{
	int rc;

	fs_ledger_event *ev;
	struct fold_event fe;
	char err[256];

	ev = ledger_decode(m->payload, m->len, err, sizeof(err));
	if (ev == NULL) {
		b->undecodable++;
		log_warn("ledger_undecodable", "partition=%d offset=%" PRId64 " msg=\"%s\"",
			 (int)m->partition, m->offset, err);
		return 0;
	}
	fe.kind = ev->kind;
	fe.request_id = ev->request_id;
	fe.sku = ev->sku;
	fe.user_id = ev->user_id;
	fe.state = ev->state;
	fe.reason = ev->reason;
	fe.qty = ev->qty;
	fe.deadline_ms = ev->deadline_ms;
	fe.at_ms = ev->at_ms;
	rc = fold_add(b->fold, &fe, err, sizeof(err));
	if (rc < 0)
		snprintf(b->err, sizeof(b->err), "%s", err);
	b->events_tail++;
	ledger_free(ev);
	return rc < 0 ? -1 : 0;
}

/*
 * Consume each partition from PostgreSQL's next offset up to the high
 * watermark taken before consuming: everything the ledger held when we
 * started, which with fs:ready absent is everything the deductor applied.
 */
static int rebuild_read_tail(struct rebuild *b)
{
	const struct reconciler_cfg *cfg = b->cfg;
	rd_kafka_conf_t *conf;
	rd_kafka_t *rk = NULL;
	rd_kafka_topic_partition_list_t *parts = NULL;
	rd_kafka_resp_err_t kerr;
	int64_t lo[FS_PARTITIONS], hi[FS_PARTITIONS], pos[FS_PARTITIONS];
	char err[256];
	int waiting = 0, rc = -1;
	int64_t last_progress;

	conf = kafka_conf_new(&cfg->kafka, KAFKA_CONSUMER, "flashsale-reconciler-rebuild",
			      "flashsale-reconciler-rebuild", err, sizeof(err));
	if (conf == NULL || kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof(err)) < 0) {
		if (conf != NULL)
			rd_kafka_conf_destroy(conf);
		snprintf(b->err, sizeof(b->err), "kafka: %s", err);
		return -1;
	}
	rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
	if (rk == NULL) {
		rd_kafka_conf_destroy(conf);
		snprintf(b->err, sizeof(b->err), "kafka consumer: %s", err);
		return -1;
	}
	parts = rd_kafka_topic_partition_list_new(FS_PARTITIONS);
	for (int p = 0; p < FS_PARTITIONS; p++) {
		int64_t start = b->next_offset[p];

		kerr = rd_kafka_query_watermark_offsets(rk, FS_TOPIC_LEDGER, p, &lo[p], &hi[p],
							(int)cfg->rebuild_tail_timeout_ms);
		if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
			snprintf(b->err, sizeof(b->err), "kafka watermarks of %s[%d]: %s",
				 FS_TOPIC_LEDGER, p, rd_kafka_err2str(kerr));
			goto out;
		}
		/* Retention took events PostgreSQL never got: we cannot know them. */
		if ((start < 0 && lo[p] > 0) || (start >= 0 && start < lo[p])) {
			snprintf(b->err, sizeof(b->err),
				 "ledger %s[%d] starts at %" PRId64 " but PostgreSQL needs it from %lld: "
				 "events were lost to retention", FS_TOPIC_LEDGER, p, lo[p],
				 start < 0 ? 0LL : (long long)start);
			goto out;
		}
		if (start > hi[p])
			log_warn("ledger_behind_postgres", "partition=%d next_offset=%" PRId64
				 " high=%" PRId64, p, start, hi[p]);
		pos[p] = start < 0 ? lo[p] : start;
		if (pos[p] >= hi[p])
			continue;
		rd_kafka_topic_partition_list_add(parts, FS_TOPIC_LEDGER, p)->offset =
			start < 0 ? RD_KAFKA_OFFSET_BEGINNING : start;
		waiting++;
	}
	log_info("ledger_tail", "partitions=%d", waiting);
	if (waiting == 0) {
		rc = 0;
		goto out;
	}
	kerr = rd_kafka_assign(rk, parts);
	if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
		snprintf(b->err, sizeof(b->err), "kafka assign: %s", rd_kafka_err2str(kerr));
		goto out;
	}
	last_progress = mono_us();
	while (waiting > 0) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
		int p;

		if (mono_us() - last_progress > cfg->rebuild_tail_timeout_ms * 1000) {
			snprintf(b->err, sizeof(b->err),
				 "ledger tail: no progress for %lld ms with %d partitions short of "
				 "their high watermark", cfg->rebuild_tail_timeout_ms, waiting);
			goto out_assigned;
		}
		if (m == NULL)
			continue;
		if (m->err) {
			if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
				log_warn("ledger_consume_error", "msg=\"%s\"", rd_kafka_message_errstr(m));
			rd_kafka_message_destroy(m);
			continue;
		}
		p = m->partition;
		if (p < 0 || p >= FS_PARTITIONS || pos[p] >= hi[p] || m->offset >= hi[p]) {
			/* Past the watermark: after our snapshot, not ours to fold. */
			rd_kafka_message_destroy(m);
			continue;
		}
		if (rebuild_fold_message(b, m) < 0) {
			rd_kafka_message_destroy(m);
			goto out_assigned;
		}
		pos[p] = m->offset + 1;
		last_progress = mono_us();
		if (pos[p] >= hi[p])
			waiting--;
		rd_kafka_message_destroy(m);
	}
	rc = 0;
out_assigned:
	(void)rd_kafka_assign(rk, NULL);
out:
	rd_kafka_topic_partition_list_destroy(parts);
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
	return rc;
}

/* A reply we must have; NULL with err filled on failure. */
static redisReply *redis_must(struct rebuild *b, redisReply *r, const char *what)
{
	if (r == NULL) {
		snprintf(b->err, sizeof(b->err), "redis %s: %s", what,
			 b->rc->errstr[0] ? b->rc->errstr : "no reply");
		return NULL;
	}
	if (r->type == REDIS_REPLY_ERROR) {
		snprintf(b->err, sizeof(b->err), "redis %s: %s", what, r->str);
		freeReplyObject(r);
		return NULL;
	}
	return r;
}

/*
 * Decided request records (with an outcome o) that the ledger does not know
 * come from steps whose events never reached the ledger (fenced batches):
 * left in place they would answer a replay without deducting. Records with
 * only the gateway's "queued" marker are kept.
 */
static int rebuild_drop_stale(struct rebuild *b, size_t *dropped)
{
	char cursor[32] = "0";

	*dropped = 0;
	do {
		redisReply *r = redis_must(b, redisCommand(b->rc,
				"SCAN %s MATCH fs:req:* COUNT 1000", cursor), "SCAN");
		redisReply *keys;
		size_t nstale = 0;

		if (r == NULL)
			return -1;
		if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
			freeReplyObject(r);
			snprintf(b->err, sizeof(b->err), "redis SCAN: unexpected reply");
			return -1;
		}
		snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
		keys = r->element[1];
		for (size_t i = 0; i < keys->elements; i++) {
			const char *k = keys->element[i]->str;

			if (fold_find(b->fold, k + strlen("fs:req:")) != NULL)
				continue;
			if (redisAppendCommand(b->rc, "EVAL %s 1 %s",
					       "if redis.call('HEXISTS', KEYS[1], 'o') == 1 then "
					       "return redis.call('DEL', KEYS[1]) end return 0",
					       k) != REDIS_OK) {
				freeReplyObject(r);
				snprintf(b->err, sizeof(b->err), "redis append failed");
				return -1;
			}
			nstale++;
		}
		for (size_t i = 0; i < nstale; i++) {
			redisReply *d = NULL;

			if (redisGetReply(b->rc, (void **)&d) != REDIS_OK ||
			    redis_must(b, d, "DEL stale record") == NULL) {
				freeReplyObject(r);
				return -1;
			}
			*dropped += d->type == REDIS_REPLY_INTEGER && d->integer > 0;
			freeReplyObject(d);
		}
		freeReplyObject(r);
	} while (strcmp(cursor, "0") != 0);
	return 0;
}

#define VAL_LEN 24

/* Append a variadic-length command built in argv[0..n) through the pipe. */
static int pipe_argv(struct rpipe *p, size_t n, const char **argv)
{
	return rpipe_append(p, (int)n, argv, NULL);
}

static int rebuild_write_sku(struct rpipe *p, const struct fold_sku *s)
{
	char k_promo[96], k_users[96], k_holds[96];
	char v[7][VAL_LEN];
	const char *del[] = { "DEL", k_promo, k_users, k_holds };
	const char *hset[] = { "HSET", k_promo, "initial", v[0], "remaining", v[1], "held", v[2],
			       "sold", v[3], "limit", v[4], "start_ms", v[5], "end_ms", v[6],
			       "hold_ms", NULL };
	char hold_ms[VAL_LEN];
	const char *sadd[] = { "SADD", "fs:promos", s->promo.sku };
	enum { PAIRS = 500 };
	const char *argv[2 + 2 * PAIRS];
	char (*nums)[VAL_LEN] = NULL;
	int rc = -1;

	snprintf(k_promo, sizeof(k_promo), "fs:promo:%s", s->promo.sku);
	snprintf(k_users, sizeof(k_users), "fs:users:%s", s->promo.sku);
	snprintf(k_holds, sizeof(k_holds), "fs:holds:%s", s->promo.sku);
	snprintf(v[0], VAL_LEN, "%lld", s->promo.stock);
	snprintf(v[1], VAL_LEN, "%lld", s->remaining);
	snprintf(v[2], VAL_LEN, "%lld", s->held);
	snprintf(v[3], VAL_LEN, "%lld", s->sold);
	snprintf(v[4], VAL_LEN, "%lld", s->promo.limit);
	snprintf(v[5], VAL_LEN, "%lld", s->promo.start_ms);
	snprintf(v[6], VAL_LEN, "%lld", s->promo.end_ms);
	snprintf(hold_ms, sizeof(hold_ms), "%lld", s->promo.hold_ms);
	hset[17] = hold_ms;
	if (pipe_argv(p, 4, del) < 0 || pipe_argv(p, 18, hset) < 0)
		return -1;

	nums = malloc(PAIRS * sizeof(*nums));
	if (nums == NULL)
		return -1;
	for (size_t i = 0; i < s->nusers; i += PAIRS) {
		size_t n = 2;

		argv[0] = "HSET";
		argv[1] = k_users;
		for (size_t j = i; j < s->nusers && j < i + PAIRS; j++) {
			snprintf(nums[j - i], VAL_LEN, "%lld", s->users[j].qty);
			argv[n++] = s->users[j].user;
			argv[n++] = nums[j - i];
		}
		if (pipe_argv(p, n, argv) < 0)
			goto out;
	}
	for (size_t i = 0; i < s->nholds; i += PAIRS) {
		size_t n = 2;

		argv[0] = "ZADD";
		argv[1] = k_holds;
		for (size_t j = i; j < s->nholds && j < i + PAIRS; j++) {
			snprintf(nums[j - i], VAL_LEN, "%lld", s->holds[j].dl);
			argv[n++] = nums[j - i];
			argv[n++] = s->holds[j].rid;
		}
		if (pipe_argv(p, n, argv) < 0)
			goto out;
	}
	rc = pipe_argv(p, 3, sadd);
out:
	free(nums);
	return rc;
}

static int rebuild_write_req(struct rpipe *p, const struct fold_req *r, const char *ttl)
{
	char key[FS_ID_MAX + 16], qty[VAL_LEN], dl[VAL_LEN], ts[VAL_LEN];
	const char *del[] = { "DEL", key };
	const char *hset[] = { "HSET", key, "o", fold_word(r->o), "st", fold_word(r->st),
			       "sku", r->sku, "user", r->user, "qty", qty, "dl", dl, "ts", ts };
	const char *expire[] = { "EXPIRE", key, ttl };

	snprintf(key, sizeof(key), "fs:req:%s", r->rid);
	snprintf(qty, sizeof(qty), "%lld", r->qty);
	snprintf(dl, sizeof(dl), "%lld", r->dl);
	snprintf(ts, sizeof(ts), "%lld", r->ts);
	if (pipe_argv(p, 2, del) < 0 || pipe_argv(p, 16, hset) < 0 || pipe_argv(p, 3, expire) < 0)
		return -1;
	return 0;
}

/* Redis TIME in microseconds: a new epoch differs from every earlier one. */
static long long rebuild_epoch(struct rebuild *b)
{
	redisReply *r = redis_must(b, redisCommand(b->rc, "TIME"), "TIME");
	long long us = -1;

	if (r == NULL)
		return -1;
	if (r->type == REDIS_REPLY_ARRAY && r->elements == 2)
		us = strtoll(r->element[0]->str, NULL, 10) * 1000000 +
		     strtoll(r->element[1]->str, NULL, 10);
	freeReplyObject(r);
	return us;
}

static int rebuild_write(struct rebuild *b, const struct fold_sku *skus, long long *epoch)
{
	struct rpipe p;
	char ttl[VAL_LEN];
	const char *del_promos[] = { "DEL", "fs:promos" };
	redisReply *r;
	size_t dropped;

	if (rebuild_drop_stale(b, &dropped) < 0)
		return -1;
	if (dropped > 0)
		log_warn("stale_records_dropped", "count=%zu msg=\"decided requests not on the ledger\"",
			 dropped);
	snprintf(ttl, sizeof(ttl), "%lld", b->cfg->record_ttl_s);
	/* hiredis formats each command when appended: chunks bound its buffer. */
	rpipe_init(&p, b->rc, 1000);
	if (pipe_argv(&p, 2, del_promos) < 0)
		goto fail;
	for (size_t i = 0; i < b->npromos; i++)
		if (rebuild_write_sku(&p, &skus[i]) < 0)
			goto fail;
	for (size_t i = 0; i < fold_count(b->fold); i++)
		if (rebuild_write_req(&p, fold_get(b->fold, i), ttl) < 0)
			goto fail;
	if (rpipe_flush(&p) < 0)
		goto fail;

	*epoch = rebuild_epoch(b);
	if (*epoch < 0)
		return -1;
	r = redis_must(b, redisCommand(b->rc, "SET fs:ready %lld", *epoch), "SET fs:ready");
	if (r == NULL)
		return -1;
	freeReplyObject(r);
	return 0;
fail:
	snprintf(b->err, sizeof(b->err), "%s", p.err[0] ? p.err : "redis pipeline failed");
	return -1;
}

/* fs:ready: 1 present, 0 absent, -1 error. */
static int rebuild_state_present(struct rebuild *b)
{
	redisReply *r = redis_must(b, redisCommand(b->rc, "EXISTS fs:ready"), "EXISTS");
	int present;

	if (r == NULL)
		return -1;
	present = r->type == REDIS_REPLY_INTEGER && r->integer > 0;
	freeReplyObject(r);
	return present;
}

/*
 * With fs:ready gone, deductor batches hit not_ready and stop, but a batch
 * applied just before may still be delivering its ledger events, for up to
 * the deductors' kafka.produce_timeout_ms. Wait that out before reading the
 * ledger's high watermarks, so the rebuild folds every event of the old
 * epoch and the deductor's epoch-fence redo only repeats first outcomes.
 * Nothing to wait for when no promotion exists (a fresh stack).
 */
static int rebuild_quiesce(struct rebuild *b, const char *why)
{
	PGresult *r = PQexec(b->pg, "SELECT 1 FROM promotions LIMIT 1");
	bool any;

	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		snprintf(b->err, sizeof(b->err), "postgres: %s", PQerrorMessage(b->pg));
		PQclear(r);
		return -1;
	}
	any = PQntuples(r) > 0;
	PQclear(r);
	if (!any)
		return 0;
	log_warn("state_fenced", "msg=\"%s; waiting for in-flight deductor batches\" quiesce_ms=%lld",
		 why, b->cfg->rebuild_quiesce_ms);
	sleep_ms(b->cfg->rebuild_quiesce_ms);
	return 0;
}

/* Fence: 0 to go on, 1 nothing to do, -1 refused or failed. */
static int rebuild_fence(struct rebuild *b, const struct rebuild_opts *opt)
{
	int present = rebuild_state_present(b);
	redisReply *r;

	if (present < 0)
		return -1;
	if (present == 0)
		return rebuild_quiesce(b, "fs:ready absent");
	if (opt->if_missing) {
		printf("state present, nothing to do\n");
		return 1;
	}
	if (!opt->force) {
		snprintf(b->err, sizeof(b->err),
			 "fs:ready is present: Redis holds a live state; rebuilding over it needs "
			 "--force (or --if-missing to accept it)");
		return -1;
	}
	r = redis_must(b, redisCommand(b->rc, "DEL fs:ready"), "DEL fs:ready");
	if (r == NULL)
		return -1;
	freeReplyObject(r);
	return rebuild_quiesce(b, "fs:ready deleted for a forced rebuild");
}

int rebuild_run(const struct reconciler_cfg *cfg, const struct rebuild_opts *opt)
{
	struct rebuild b = { .cfg = cfg };
	struct fold_sku *skus = NULL;
	const struct fold_stats *st;
	long long epoch = 0;
	int64_t t0 = mono_us();
	int rc = -1, fence;

	b.rc = redisx_connect(cfg->redis_address, REDIS_TIMEOUT_MS, b.err, sizeof(b.err));
	if (b.rc == NULL)
		goto out;
	b.pg = pg_connect(cfg->pg_conninfo, b.err, sizeof(b.err));
	if (b.pg == NULL || pg_apply_schema(b.pg, b.err, sizeof(b.err)) < 0)
		goto out;
	fence = rebuild_fence(&b, opt);
	if (fence != 0) {
		rc = fence > 0 ? 0 : -1;
		goto out;
	}
	b.fold = fold_new();
	if (b.fold == NULL) {
		snprintf(b.err, sizeof(b.err), "out of memory");
		goto out;
	}
	if (rebuild_read_pg(&b) < 0)
		goto out;
	log_info("ledger_postgres", "promotions=%zu events=%zu requests=%zu", b.npromos,
		 b.events_pg, fold_count(b.fold));
	if (rebuild_read_tail(&b) < 0)
		goto out;
	st = fold_stats(b.fold);
	log_info("ledger_folded", "events_pg=%zu events_tail=%zu undecodable=%zu duplicates=%zu "
		 "ignored=%zu invalid=%zu requests=%zu", b.events_pg, b.events_tail, b.undecodable,
		 st->duplicates, st->ignored, st->invalid, fold_count(b.fold));
	if (fold_summarize(b.fold, b.promos, b.npromos, &skus, b.err, sizeof(b.err)) < 0)
		goto out;
	/*
	 * Another rebuild may have finished meanwhile: do not overwrite its
	 * state. (This narrows the window; two rebuilds at once are still an
	 * operator error.)
	 */
	if (rebuild_state_present(&b) != 0) {
		snprintf(b.err, sizeof(b.err), "fs:ready appeared during the rebuild: another "
			 "rebuild ran; not writing");
		goto out;
	}
	if (rebuild_write(&b, skus, &epoch) < 0)
		goto out;
	for (size_t i = 0; i < b.npromos; i++)
		printf("sku=%s initial=%lld sold=%lld held=%lld remaining=%lld requests=%lld\n",
		       skus[i].promo.sku, skus[i].promo.stock, skus[i].sold, skus[i].held,
		       skus[i].remaining, skus[i].requests);
	printf("rebuild skus=%zu requests=%zu events_pg=%zu events_tail=%zu duplicates=%zu "
	       "undecodable=%zu invalid=%zu epoch=%lld ms=%" PRId64 "\n",
	       b.npromos, fold_count(b.fold), b.events_pg, b.events_tail, st->duplicates,
	       b.undecodable, st->invalid, epoch, (mono_us() - t0) / 1000);
	fflush(stdout);
	log_info("rebuilt", "skus=%zu requests=%zu epoch=%lld", b.npromos, fold_count(b.fold), epoch);
	rc = 0;
out:
	if (rc < 0) {
		char q[600];

		log_error("rebuild_failed", "msg=\"%s\"", log_quote(q, sizeof(q), b.err));
	}
	fold_skus_free(skus, b.npromos);
	fold_free(b.fold);
	free(b.promos);
	if (b.pg != NULL)
		PQfinish(b.pg);
	if (b.rc != NULL)
		redisFree(b.rc);
	return rc;
}
