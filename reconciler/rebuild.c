/*
 * rebuild / repair / correct (see rebuild.h). Order of work:
 *   1. choose the partitions: all when fs:ready is absent, else fence them
 *      (or take the ones the deductor fenced);
 *   2. wait for deductor batches that were in flight when the fence came;
 *   3. read PostgreSQL in one REPEATABLE READ snapshot (ledger_events and
 *      ledger_offsets agree: the order-writer commits them together), then
 *      the ledger tail after those offsets up to the high watermarks;
 *   4. fold and check; `correct` cancels unpaid holds beyond the stock on
 *      the ledger first;
 *   5. write Redis pipelined, and only then lift the fences (or set
 *      fs:ready): until then the deductor applies nothing there.
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
#define FENCE_MAX 256
#define VAL_LEN 24

/* Lift a fence only while it is the one we saw: a newer detection stays. */
static const char unfence_lua[] =
	"if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then "
	"return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0";

struct rebuild {
	const struct rc_config *cfg;
	const struct rebuild_opts *opt;
	redisContext *rc;
	PGconn *pg;
	struct fold *fold;
	struct fold_promo *promos;
	size_t npromos;
	bool full;                            /* fs:ready absent: every partition, new epoch */
	bool in[FS_PARTITIONS];               /* partitions being rebuilt */
	int nin, skipped;
	char fence[FS_PARTITIONS][FENCE_MAX]; /* as set or found; lifted only if unchanged */
	bool ours[FS_PARTITIONS];             /* set by this run: lifted on failure too */
	long long next_offset[FS_PARTITIONS]; /* -1: PostgreSQL has none */
	size_t events_pg, events_tail, undecodable, corrected;
	long long epoch;
	char err[512];
};

static const char *const mode_names[] = {
	[REBUILD_MISSING] = "rebuild", [REBUILD_FORCE] = "rebuild_force",
	[REBUILD_REPAIR] = "repair", [REBUILD_CORRECT] = "correct",
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

static bool rebuild_owns(const struct rebuild *b, const char *sku)
{
	return b->full || b->in[kafka_partition_of(sku, strlen(sku))];
}

/* ---- Redis ---- */

/* A reply we must have; NULL with b->err filled on failure. */
#define redis_must(b, r, what) redisx_must((b)->rc, (r), (what), (b)->err, sizeof((b)->err))

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

/* "at_ms=N" in a fence's text (both the deductor's and ours carry it); 0 if none. */
static long long fence_at_ms(const char *v)
{
	const char *p = strstr(v, "at_ms=");

	return p != NULL ? strtoll(p + 6, NULL, 10) : 0;
}

/* FORCE / CORRECT: fence the chosen partitions, keeping fences already there. */
static int rebuild_fence_set(struct rebuild *b, long long now)
{
	for (int p = 0; p < FS_PARTITIONS; p++) {
		char val[FENCE_MAX];
		redisReply *r;

		if (!b->in[p])
			continue;
		snprintf(val, sizeof(val), "reason=%s partition=%d by=reconciler at_ms=%lld",
			 mode_names[b->opt->mode], p, now);
		r = redis_must(b, redisCommand(b->rc, "HSETNX fs:fence %d %s", p, val), "HSETNX");
		if (r == NULL)
			return -1;
		b->ours[p] = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
		freeReplyObject(r);
		if (b->ours[p]) {
			snprintf(b->fence[p], sizeof(b->fence[p]), "%s", val);
			continue;
		}
		r = redis_must(b, redisCommand(b->rc, "HGET fs:fence %d", p), "HGET");
		if (r == NULL)
			return -1;
		snprintf(b->fence[p], sizeof(b->fence[p]), "%s",
			 r->type == REDIS_REPLY_STRING ? r->str : "");
		freeReplyObject(r);
	}
	return 0;
}

/* REPAIR: the partitions fenced now (restricted to opt->partition). */
static int rebuild_fence_read(struct rebuild *b)
{
	redisReply *r = redis_must(b, redisCommand(b->rc, "HGETALL fs:fence"), "HGETALL");

	if (r == NULL)
		return -1;
	for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2) {
		char *end;
		long p = strtol(r->element[i]->str, &end, 10);

		if (*end != '\0' || p < 0 || p >= FS_PARTITIONS ||
		    (b->opt->partition >= 0 && p != b->opt->partition))
			continue;
		b->in[p] = true;
		snprintf(b->fence[p], sizeof(b->fence[p]), "%s", r->element[i + 1]->str);
	}
	freeReplyObject(r);
	return 0;
}

/* Lift the fences of the set (only_ours: just the ones this run set). */
static int rebuild_unfence(struct rebuild *b, bool only_ours)
{
	int rc = 0;

	for (int p = 0; p < FS_PARTITIONS; p++) {
		char part[16];
		const char *argv[] = { "EVAL", unfence_lua, "1", "fs:fence", part, b->fence[p] };
		redisReply *r;

		if (!b->in[p] || (only_ours && !b->ours[p]) || b->fence[p][0] == '\0')
			continue;
		snprintf(part, sizeof(part), "%d", p);
		r = redis_must(b, redisCommandArgv(b->rc, 6, argv, NULL), "unfence");
		if (r == NULL) {
			rc = -1;
			continue;
		}
		if (r->type == REDIS_REPLY_INTEGER && r->integer == 1)
			log_info("partition_unfenced", "partition=%d by=%s", p,
				 mode_names[b->opt->mode]);
		else
			log_warn("fence_changed", "partition=%d msg=\"a newer fence stays\"", p);
		freeReplyObject(r);
	}
	return rc;
}

/* True while every fence of the set is still the one we saw. */
static int rebuild_fences_unchanged(struct rebuild *b)
{
	for (int p = 0; p < FS_PARTITIONS; p++) {
		redisReply *r;
		bool same;

		if (!b->in[p])
			continue;
		r = redis_must(b, redisCommand(b->rc, "HGET fs:fence %d", p), "HGET");
		if (r == NULL)
			return -1;
		same = r->type == REDIS_REPLY_STRING && strcmp(r->str, b->fence[p]) == 0;
		freeReplyObject(r);
		if (!same) {
			snprintf(b->err, sizeof(b->err), "the fence of partition %d changed or was "
				 "lifted during the run: another repair ran; not writing", p);
			return -1;
		}
	}
	return 0;
}

/*
 * Wait until every fence of the set is rebuild_quiesce_ms old on the Redis
 * clock: a deductor batch that applied steps just before a fence may still
 * be delivering their events, for up to its produce timeout. With no_wait
 * (the daemon), young fences are left for a later round instead.
 */
static int rebuild_quiesce_fences(struct rebuild *b)
{
	char err[256];
	long long now = redisx_time_ms(b->rc, err, sizeof(err)), wait = 0;

	if (now < 0) {
		snprintf(b->err, sizeof(b->err), "redis TIME: %s", err);
		return -1;
	}
	for (int p = 0; p < FS_PARTITIONS; p++) {
		long long due;

		if (!b->in[p])
			continue;
		due = fence_at_ms(b->fence[p]) + b->cfg->rebuild_quiesce_ms;
		if (due <= now)
			continue;
		if (b->opt->no_wait) {
			b->in[p] = false;
			b->nin--;
			b->skipped++;
		} else if (due - now > wait) {
			wait = due - now;
		}
	}
	if (wait > 0) {
		log_info("state_fenced", "partitions=%d quiesce_ms=%lld msg=\"waiting for in-flight "
			 "deductor batches\"", b->nin, wait);
		sleep_ms(wait);
	}
	return 0;
}

/*
 * fs:ready absent: deductor batches hit not_ready and stop, but one applied
 * just before may still be delivering its ledger events. Nothing to wait for
 * when no promotion exists (a fresh stack).
 */
static int rebuild_quiesce_full(struct rebuild *b)
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
	log_warn("state_missing", "msg=\"fs:ready absent; waiting for in-flight deductor batches\" "
		 "quiesce_ms=%lld", b->cfg->rebuild_quiesce_ms);
	sleep_ms(b->cfg->rebuild_quiesce_ms);
	return 0;
}

/* ---- reading the ledger ---- */

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
			.kind = ledger_kind_parse(PQgetvalue(res, i, 0)),
			.request_id = PQgetvalue(res, i, 1),
			.sku = PQgetvalue(res, i, 2),
			.user_id = PQgetvalue(res, i, 3),
			.qty = field_ll(res, i, 4),
			.state = PQgetvalue(res, i, 5),
			.reason = PQgetvalue(res, i, 6),
			.deadline_ms = field_ll(res, i, 7),
			.at_ms = field_ll(res, i, 8),
			.intent_partition = (int)field_ll(res, i, 9),
			.intent_offset = field_ll(res, i, 10),
			.sku_seq = field_ll(res, i, 11),
			.changed = PQgetvalue(res, i, 12)[0] == 't',
		};
		char err[256];

		if (fold_add(b->fold, &ev, err, sizeof(err)) < 0) {
			snprintf(b->err, sizeof(b->err), "%s", err);
			return -1;
		}
		b->events_pg++;
	}
	return 0;
}

/* The set as a PostgreSQL array literal: "{0,3,7}". */
static void rebuild_set_literal(const struct rebuild *b, char *out, size_t n)
{
	size_t len = 0;

	len += (size_t)snprintf(out, n, "{");
	for (int p = 0; p < FS_PARTITIONS && len < n; p++)
		if (b->in[p])
			len += (size_t)snprintf(out + len, n - len, "%s%d", len > 1 ? "," : "", p);
	if (len < n)
		snprintf(out + len, n - len, "}");
}

/* Promotions, offsets and every ledger event of the set, in one snapshot. */
static int rebuild_read_pg(struct rebuild *b)
{
	PGresult *res = NULL;
	char err[512], set[128], sql[768];
	int rc = -1;

	for (int p = 0; p < FS_PARTITIONS; p++)
		b->next_offset[p] = -1;
	rebuild_set_literal(b, set, sizeof(set));
	if (pg_exec(b->pg, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", err, sizeof(err)) < 0) {
		snprintf(b->err, sizeof(b->err), "%s", err);
		return -1;
	}
	res = pg_rows(b, "SELECT sku, stock, per_user_limit, "
		      "(extract(epoch FROM starts_at) * 1000)::bigint, "
		      "(extract(epoch FROM ends_at) * 1000)::bigint, hold_seconds, "
		      "k_pct, ip_rate_per_s, user_rate_per_s, sku_rate_per_s "
		      "FROM promotions ORDER BY sku");
	if (res == NULL)
		goto out;
	b->promos = calloc((size_t)PQntuples(res) + 1, sizeof(*b->promos));
	if (b->promos == NULL) {
		snprintf(b->err, sizeof(b->err), "out of memory");
		goto out;
	}
	for (int i = 0; i < PQntuples(res); i++) {
		struct fold_promo *p = &b->promos[b->npromos];

		if (!rebuild_owns(b, PQgetvalue(res, i, 0)))
			continue;
		snprintf(p->sku, sizeof(p->sku), "%s", PQgetvalue(res, i, 0));
		p->stock = field_ll(res, i, 1);
		p->limit = field_ll(res, i, 2);
		p->start_ms = field_ll(res, i, 3);
		p->end_ms = field_ll(res, i, 4);
		p->hold_ms = field_ll(res, i, 5) * 1000;
		for (int j = 0; j < 4; j++)
			p->cfg[j] = field_ll(res, i, 6 + j);
		b->npromos++;
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
	snprintf(sql, sizeof(sql), "DECLARE ledger NO SCROLL CURSOR FOR "
		 "SELECT kind, request_id, sku, user_id, qty, state, reason, deadline_ms, at_ms, "
		 "intent_partition, intent_offset, sku_seq, changed "
		 "FROM ledger_events WHERE ledger_partition = ANY('%s'::integer[]) "
		 "ORDER BY ledger_partition, ledger_offset", set);
	if (pg_exec(b->pg, sql, err, sizeof(err)) < 0) {
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

/* A decoded ledger event as the fold takes it. */
static void rebuild_event_of(const fs_ledger_event *ev, struct fold_event *fe)
{
	*fe = (struct fold_event){
		.kind = ev->kind, .request_id = ev->request_id, .sku = ev->sku,
		.user_id = ev->user_id, .state = ev->state, .reason = ev->reason, .qty = ev->qty,
		.deadline_ms = ev->deadline_ms, .at_ms = ev->at_ms,
		.intent_partition = ev->intent_kind != 0 ? ev->intent_partition : -1,
		.intent_offset = ev->intent_offset, .sku_seq = ev->sku_seq, .changed = ev->changed,
	};
}

/* Decode and fold one tail message; -1 only when out of memory. */
static int rebuild_fold_message(void *arg, const rd_kafka_message_t *m)
{
	struct rebuild *b = arg;
	fs_ledger_event *ev;
	struct fold_event fe;
	char err[256];
	int rc;

	ev = ledger_decode(m->payload, m->len, err, sizeof(err));
	if (ev == NULL) {
		b->undecodable++;
		log_warn("ledger_undecodable", "partition=%d offset=%" PRId64 " msg=\"%s\"",
			 (int)m->partition, m->offset, err);
		return 0;
	}
	rebuild_event_of(ev, &fe);
	rc = fold_add(b->fold, &fe, err, sizeof(err));
	if (rc < 0)
		snprintf(b->err, sizeof(b->err), "%s", err);
	b->events_tail++;
	ledger_free(ev);
	return rc < 0 ? -1 : 0;
}

/*
 * Consume each partition of the set from PostgreSQL's next offset up to the
 * high watermark taken first: everything the ledger held when we started,
 * which behind the fences (or with fs:ready absent) is everything the
 * deductor applied there.
 */
static int rebuild_read_tail(struct rebuild *b)
{
	struct kafka_range r[FS_PARTITIONS];
	rd_kafka_t *rk;
	size_t n = 0;
	char err[512];
	int rc = -1;

	rk = kafka_reader_new(&b->cfg->base.kafka, "flashsale-reconciler-rebuild", err, sizeof(err));
	if (rk == NULL) {
		snprintf(b->err, sizeof(b->err), "%.400s", err);
		return -1;
	}
	for (int p = 0; p < FS_PARTITIONS; p++) {
		int64_t lo, hi, start = b->next_offset[p];
		rd_kafka_resp_err_t kerr;

		if (!b->in[p])
			continue;
		kerr = kafka_watermarks(rk, FS_TOPIC_LEDGER, p, &lo, &hi,
					(int)b->cfg->rebuild_tail_timeout_ms);
		if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
			snprintf(b->err, sizeof(b->err), "kafka watermarks of %s[%d]: %s",
				 FS_TOPIC_LEDGER, p, rd_kafka_err2str(kerr));
			goto out;
		}
		/* Retention took events PostgreSQL never got: we cannot know them. */
		if ((start < 0 && lo > 0) || (start >= 0 && start < lo)) {
			snprintf(b->err, sizeof(b->err),
				 "ledger %s[%d] starts at %" PRId64 " but PostgreSQL needs it from %lld: "
				 "events were lost to retention", FS_TOPIC_LEDGER, p, lo,
				 start < 0 ? 0LL : (long long)start);
			goto out;
		}
		if (start > hi)
			log_warn("ledger_behind_postgres", "partition=%d next_offset=%" PRId64
				 " high=%" PRId64, p, start, hi);
		r[n].partition = p;
		r[n].from = start < 0 ? lo : start;
		r[n].to = hi;
		n++;
	}
	if (kafka_read_ranges(rk, FS_TOPIC_LEDGER, r, n, b->cfg->rebuild_tail_timeout_ms,
			      rebuild_fold_message, b, err, sizeof(err)) < 0) {
		if (b->err[0] == '\0')
			snprintf(b->err, sizeof(b->err), "ledger tail: %.400s", err);
		goto out;
	}
	rc = 0;
out:
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
	return rc;
}

/* ---- correction ---- */

static void correct_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	int *failed = opaque;

	(void)rk;
	if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR)
		(*failed)++;
}

static int paid_cmp_recent(const void *a, const void *b)
{
	const struct fold_req *x = *(const struct fold_req *const *)a;
	const struct fold_req *y = *(const struct fold_req *const *)b;

	if (x->ts != y->ts)
		return x->ts > y->ts ? -1 : 1;
	return strcmp(y->rid, x->rid);
}

/*
 * For a person: the most recent payments of an oversold SKU that cover the
 * units sold beyond its stock. Never changed by us.
 */
static void rebuild_report_paid(struct rebuild *b, const struct fold_sku *s, long long over)
{
	const struct fold_req **paid = calloc(fold_count(b->fold) + 1, sizeof(*paid));
	size_t n = 0;

	log_error("oversold_paid", "sku=%s stock=%lld sold=%lld paid_over=%lld msg=\"units paid "
		  "beyond the stock: for a person to settle; nothing was changed\"",
		  s->promo.sku, s->promo.stock, s->sold, over);
	printf("oversold sku=%s stock=%lld sold=%lld paid_over=%lld\n", s->promo.sku,
	       s->promo.stock, s->sold, over);
	if (paid == NULL)
		return;
	for (size_t i = 0; i < fold_count(b->fold); i++) {
		const struct fold_req *r = fold_get(b->fold, i);

		if (strcmp(r->sku, s->promo.sku) == 0 && strcmp(fold_word(r->st), "paid") == 0)
			paid[n++] = r;
	}
	qsort(paid, n, sizeof(*paid), paid_cmp_recent);
	for (size_t i = 0; i < n && over > 0; i++) {
		printf("oversold_paid sku=%s request_id=%s user_id=%s qty=%lld at_ms=%lld\n",
		       s->promo.sku, paid[i]->rid, paid[i]->user, paid[i]->qty, paid[i]->ts);
		over -= paid[i]->qty;
	}
	free(paid);
}

/* Produce one correction event and fold it. -1 (b->err) on failure. */
static int rebuild_cancel_one(struct rebuild *b, rd_kafka_t *pk, const struct fold_sku *s,
			      const struct fold_req *r, long long now, long long *held,
			      long long *seq)
{
	fs_ledger_event ev;
	char event_id[FS_ID_MAX + 16], rid[FS_ID_MAX + 1], user[FS_ID_MAX + 1];
	struct fold_event fe;
	rd_kafka_resp_err_t kerr;
	uint8_t *buf;
	size_t len, skulen = strlen(s->promo.sku);
	long long left, dl = r->dl, qty = r->qty;
	char err[256];

	/* fold_add below may move the record: keep what the event needs. */
	snprintf(rid, sizeof(rid), "%s", r->rid);
	snprintf(user, sizeof(user), "%s", r->user);
	snprintf(event_id, sizeof(event_id), "%s:cancelled", rid);
	*held -= qty;
	*seq += 1;
	left = s->promo.stock - *held - s->sold;
	/* No intent made it: no watermark moves, the SKU's sequence does. */
	ledger_event_set(&ev, &(struct ledger_fields){
		.kind = FLASHSALE__LEDGER_EVENT__KIND__CANCELLED, .event_id = event_id,
		.request_id = rid, .sku = s->promo.sku, .user_id = user, .qty = (uint32_t)qty,
		.state = "cancelled", .reason = "oversell_correction", .deadline_ms = dl,
		.at_ms = now, .remaining = left > 0 ? left : 0, .held = *held, .sold = s->sold,
		.initial = s->promo.stock, .intent_partition = -1, .intent_offset = -1,
		.sku_seq = *seq, .changed = true,
	});
	len = flashsale__ledger_event__get_packed_size(&ev);
	buf = malloc(len + 1);
	if (buf == NULL) {
		snprintf(b->err, sizeof(b->err), "out of memory");
		return -1;
	}
	flashsale__ledger_event__pack(&ev, buf);
	kerr = rd_kafka_producev(pk, RD_KAFKA_V_TOPIC(FS_TOPIC_LEDGER),
				 RD_KAFKA_V_PARTITION(kafka_partition_of(s->promo.sku, skulen)),
				 RD_KAFKA_V_KEY(s->promo.sku, skulen),
				 RD_KAFKA_V_VALUE(buf, len),
				 RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
	free(buf);
	if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
		snprintf(b->err, sizeof(b->err), "produce correction: %s", rd_kafka_err2str(kerr));
		return -1;
	}
	rebuild_event_of(&ev, &fe);
	if (fold_add(b->fold, &fe, err, sizeof(err)) < 0) {
		snprintf(b->err, sizeof(b->err), "%s", err);
		return -1;
	}
	b->corrected++;
	log_warn("oversell_corrected", "sku=%s request_id=%s user_id=%s qty=%lld", s->promo.sku,
		 rid, user, qty);
	printf("corrected sku=%s request_id=%s user_id=%s qty=%lld reason=oversell_correction\n",
	       s->promo.sku, rid, user, qty);
	return 0;
}

/*
 * `correct`: for every SKU the ledger oversells, cancel its most recent
 * unpaid holds on the ledger (CANCELLED, reason oversell_correction, which
 * the order-writer persists like any cancellation) until the stock covers
 * what is left, and fold them in. Payments beyond the stock are reported.
 */
static int rebuild_correct(struct rebuild *b, const struct fold_sku *skus)
{
	char err[512];
	long long now = redisx_time_ms(b->rc, err, sizeof(err));
	const struct fold_req **plan = NULL;
	rd_kafka_t *pk = NULL;
	int failed = 0, rc = -1;

	if (now < 0) {
		snprintf(b->err, sizeof(b->err), "redis TIME: %.400s", err);
		return -1;
	}
	for (size_t i = 0; i < b->npromos; i++) {
		const struct fold_sku *s = &skus[i];
		long long held = s->held, seq = s->seq, over;
		int n;

		if (s->oversold <= 0)
			continue;
		if (pk == NULL) {
			pk = kafka_producer_new(&b->cfg->base.kafka, "flashsale-reconciler-correct",
						FS_TOPIC_LEDGER, correct_dr_cb, NULL, &failed,
						err, sizeof(err));
			if (pk == NULL) {
				snprintf(b->err, sizeof(b->err), "%.400s", err);
				goto out;
			}
		}
		free(plan);
		plan = calloc(s->nholds + 1, sizeof(*plan));
		if (plan == NULL ||
		    (n = fold_plan_correction(b->fold, s, plan, s->nholds, &over)) < 0) {
			snprintf(b->err, sizeof(b->err), "out of memory");
			goto out;
		}
		/* Copy the plan's ids first: folding the events may move records. */
		for (int k = 0; k < n; k++)
			if (rebuild_cancel_one(b, pk, s, plan[k], now, &held, &seq) < 0)
				goto out;
		if (over > 0)
			rebuild_report_paid(b, s, over);
	}
	if (pk != NULL && (kafka_flush(pk, (int)b->cfg->base.kafka.produce_timeout_ms + 1000) < 0 ||
			   failed > 0)) {
		snprintf(b->err, sizeof(b->err), "%d correction events not delivered: nothing "
			 "written to Redis; run correct again (it is idempotent)", failed);
		goto out;
	}
	rc = 0;
out:
	free(plan);
	if (pk != NULL)
		rd_kafka_destroy(pk);
	return rc;
}

/* ---- writing Redis ---- */

/* Append a variadic-length command built in argv[0..n) through the pipe. */
static int pipe_argv(struct rpipe *p, size_t n, const char **argv)
{
	return rpipe_append(p, (int)n, argv, NULL);
}

/*
 * Decided request records (with an outcome o) of the set that the ledger
 * does not know come from steps whose events never reached the ledger
 * (fenced or failed batches): left in place they would answer a replay
 * without deducting. Records with only the gateway's "queued" marker stay.
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
		for (size_t i = 0; i < keys->elements; i++)
			if (redisAppendCommand(b->rc, "HMGET %s o sku", keys->element[i]->str) !=
			    REDIS_OK)
				goto append_failed;
		for (size_t i = 0; i < keys->elements; i++) {
			const char *k = keys->element[i]->str;
			redisReply *h = NULL;
			bool stale;

			if (redisGetReply(b->rc, (void **)&h) != REDIS_OK ||
			    redis_must(b, h, "HMGET") == NULL) {
				freeReplyObject(r);
				return -1;
			}
			stale = h->type == REDIS_REPLY_ARRAY && h->elements == 2 &&
				h->element[0]->type == REDIS_REPLY_STRING &&
				h->element[1]->type == REDIS_REPLY_STRING &&
				rebuild_owns(b, h->element[1]->str) &&
				fold_find(b->fold, k + strlen("fs:req:")) == NULL;
			freeReplyObject(h);
			if (stale) {
				if (redisAppendCommand(b->rc, "DEL %s", k) != REDIS_OK)
					goto append_failed;
				nstale++;
			}
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
		continue;
append_failed:
		freeReplyObject(r);
		snprintf(b->err, sizeof(b->err), "redis append failed");
		return -1;
	} while (strcmp(cursor, "0") != 0);
	return 0;
}

static int rebuild_write_sku(struct rpipe *p, const struct fold_sku *s)
{
	char k_promo[96], k_users[96], k_holds[96];
	char v[9][VAL_LEN];
	const char *del[] = { "DEL", k_promo, k_users, k_holds };
	const char *hset[] = { "HSET", k_promo, "initial", v[0], "remaining", v[1], "held", v[2],
			       "sold", v[3], "limit", v[4], "start_ms", v[5], "end_ms", v[6],
			       "hold_ms", v[7], "seq", v[8] };
	const char *sadd[] = { "SADD", "fs:promos", s->promo.sku };
	char k_cfg[96], c[4][VAL_LEN];
	const char *hset_cfg[] = { "HSET", k_cfg, "k_pct", c[0], "ip_rate_per_s", c[1],
				   "user_rate_per_s", c[2], "sku_rate_per_s", c[3] };
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
	snprintf(v[7], VAL_LEN, "%lld", s->promo.hold_ms);
	snprintf(v[8], VAL_LEN, "%lld", s->seq);
	snprintf(k_cfg, sizeof(k_cfg), "fs:cfg:%s", s->promo.sku);
	for (int j = 0; j < 4; j++)
		snprintf(c[j], VAL_LEN, "%lld", s->promo.cfg[j]);
	/* The limits live in PostgreSQL; the admission count restarts at 0 (adm is
	 * not in the ledger: a lower count only lets more buyers through). */
	if (pipe_argv(p, 4, del) < 0 || pipe_argv(p, sizeof(hset) / sizeof(hset[0]), hset) < 0 ||
	    pipe_argv(p, sizeof(hset_cfg) / sizeof(hset_cfg[0]), hset_cfg) < 0)
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
	char key[FS_ID_MAX + 16], qty[VAL_LEN], dl[VAL_LEN], ts[VAL_LEN], q0[VAL_LEN], q[VAL_LEN];
	const char *del[] = { "DEL", key };
	const char *hset[] = { "HSET", key, "o", fold_word(r->o), "st", fold_word(r->st),
			       "sku", r->sku, "user", r->user, "qty", qty, "dl", dl, "ts", ts,
			       "q0", q0, "q", q };
	const char *expire[] = { "EXPIRE", key, ttl };

	snprintf(key, sizeof(key), "fs:req:%s", r->rid);
	snprintf(qty, sizeof(qty), "%lld", r->qty);
	snprintf(dl, sizeof(dl), "%lld", r->dl);
	snprintf(ts, sizeof(ts), "%lld", r->ts);
	snprintf(q0, sizeof(q0), "%lld", r->q0);
	snprintf(q, sizeof(q), "%lld", r->q);
	if (pipe_argv(p, 2, del) < 0 || pipe_argv(p, sizeof(hset) / sizeof(hset[0]), hset) < 0 ||
	    pipe_argv(p, 3, expire) < 0)
		return -1;
	return 0;
}

/* Records per transaction (rebuild_write_reqs): one tell each. */
#define REBUILD_TELL_BATCH 256

/*
 * The owned requests' records, in transactions that also tell the gateways
 * their ids (fs:st "+ rid rid ...", gateway/known.h). Telling in the same
 * transaction as the write is what lets a gateway trust its set of known
 * ids: subscribed before it, the gateway is told; subscribing after, its
 * sweep finds the records. A tell before or after the write would leave a
 * gateway that subscribes in between, mid-sweep, with neither.
 */
static int rebuild_write_reqs(struct rebuild *b, struct rpipe *p, const char *ttl)
{
	const char *multi[] = { "MULTI" }, *exec[] = { "EXEC" };
	const char *publish[] = { "PUBLISH", "fs:st", NULL };
	size_t n = fold_count(b->fold), i = 0, j;
	char *msg = malloc(1 + REBUILD_TELL_BATCH * (FS_ID_MAX + 2));
	int rc = -1;

	if (msg == NULL) {
		snprintf(p->err, sizeof(p->err), "out of memory");
		return -1;
	}
	publish[2] = msg;
	for (; i < n; i = j) {
		size_t len = 1, taken = 0;

		msg[0] = '+';
		for (j = i; j < n && taken < REBUILD_TELL_BATCH; j++) {
			const struct fold_req *req = fold_get(b->fold, j);

			if (!rebuild_owns(b, req->sku))
				continue;
			len += (size_t)sprintf(msg + len, " %.*s", FS_ID_MAX, req->rid);
			taken++;
		}
		if (taken == 0)
			continue;
		if (pipe_argv(p, 1, multi) < 0 || pipe_argv(p, 3, publish) < 0)
			goto out;
		for (size_t k = i; k < j; k++) {
			const struct fold_req *req = fold_get(b->fold, k);

			if (rebuild_owns(b, req->sku) && rebuild_write_req(p, req, ttl) < 0)
				goto out;
		}
		if (pipe_argv(p, 1, exec) < 0)
			goto out;
	}
	rc = 0;
out:
	free(msg);
	return rc;
}

/* The partitions' watermarks as the fold found them (none: no key). */
static int rebuild_write_wm(struct rebuild *b, struct rpipe *p)
{
	for (int i = 0; i < FS_PARTITIONS; i++) {
		char part[16], wm[VAL_LEN];
		const char *hset[] = { "HSET", "fs:wm", part, wm };
		const char *hdel[] = { "HDEL", "fs:wm", part };
		long long v = fold_watermark(b->fold, i);

		if (!b->in[i])
			continue;
		snprintf(part, sizeof(part), "%d", i);
		snprintf(wm, sizeof(wm), "%lld", v);
		if (v >= 0 ? pipe_argv(p, 4, hset) < 0 : pipe_argv(p, 3, hdel) < 0)
			return -1;
	}
	return 0;
}

/* Redis TIME in microseconds: a new epoch differs from every earlier one. */
static long long rebuild_new_epoch(struct rebuild *b)
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

/*
 * Tell the gateways that Redis was rewritten (fs:st "* rebuilt"): their long
 * polls look again and their promotion caches are read now. Best effort: a
 * gateway that misses it catches up by its own periodic look (the ids of
 * the records were told as they were written: rebuild_write_reqs).
 */
static void rebuild_tell(struct rebuild *b)
{
	redisReply *r = redisCommand(b->rc, "PUBLISH fs:st %s", "* rebuilt");

	if (r == NULL || r->type == REDIS_REPLY_ERROR)
		log_warn("rebuild_tell_failed", "msg=\"gateways will see it at their next look\"");
	if (r != NULL)
		freeReplyObject(r);
}

static int rebuild_write(struct rebuild *b, const struct fold_sku *skus)
{
	struct rpipe p;
	char ttl[VAL_LEN];
	const char *del_promos[] = { "DEL", "fs:promos" };
	/* Restored holds keep their old deadlines: the release loop reads every SKU again. */
	const char *bump_rebuilds[] = { "INCR", "fs:rebuilds" };
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
	if (b->full && pipe_argv(&p, 2, del_promos) < 0)
		goto fail;
	for (size_t i = 0; i < b->npromos; i++)
		if (rebuild_write_sku(&p, &skus[i]) < 0)
			goto fail;
	if (rebuild_write_reqs(b, &p, ttl) < 0)
		goto fail;
	if (rebuild_write_wm(b, &p) < 0 || pipe_argv(&p, 2, bump_rebuilds) < 0 ||
	    rpipe_flush(&p) < 0)
		goto fail;
	if (!b->full)
		return rebuild_unfence(b, false);

	/* Every fence was about the state that is gone. fs:ready goes LAST. */
	r = redis_must(b, redisCommand(b->rc, "DEL fs:fence"), "DEL fs:fence");
	if (r == NULL)
		return -1;
	freeReplyObject(r);
	b->epoch = rebuild_new_epoch(b);
	if (b->epoch < 0)
		return -1;
	r = redis_must(b, redisCommand(b->rc, "SET fs:ready %lld", b->epoch), "SET fs:ready");
	if (r == NULL)
		return -1;
	freeReplyObject(r);
	return 0;
fail:
	snprintf(b->err, sizeof(b->err), "%s", p.err[0] ? p.err : "redis pipeline failed");
	return -1;
}

/* ---- the run ---- */

/*
 * Pick the partitions and put up the fences. 0 to go on, 1 nothing to do,
 * -1 refused or failed.
 */
static int rebuild_choose(struct rebuild *b)
{
	const struct rebuild_opts *opt = b->opt;
	int present = rebuild_state_present(b);
	char err[256];
	long long now;

	if (present < 0)
		return -1;
	if (present == 0) {
		if (opt->mode == REBUILD_REPAIR) {
			snprintf(b->err, sizeof(b->err), "fs:ready is absent: Redis lost its state; "
				 "that is a `rebuild`, not a repair");
			return -1;
		}
		b->full = true;
		for (int p = 0; p < FS_PARTITIONS; p++)
			b->in[p] = true;
		b->nin = FS_PARTITIONS;
		return rebuild_quiesce_full(b);
	}
	if (opt->mode == REBUILD_MISSING) {
		if (opt->if_missing) {
			if (!opt->quiet)
				printf("state present, nothing to do\n");
			return 1;
		}
		snprintf(b->err, sizeof(b->err),
			 "fs:ready is present: Redis holds a live state; rebuilding over it needs "
			 "--force (or --if-missing to accept it)");
		return -1;
	}
	if (opt->mode == REBUILD_REPAIR) {
		if (rebuild_fence_read(b) < 0)
			return -1;
	} else {
		for (int p = 0; p < FS_PARTITIONS; p++)
			b->in[p] = opt->partition < 0 || opt->partition == p;
		now = redisx_time_ms(b->rc, err, sizeof(err));
		if (now < 0) {
			snprintf(b->err, sizeof(b->err), "redis TIME: %s", err);
			return -1;
		}
		if (rebuild_fence_set(b, now) < 0)
			return -1;
	}
	for (int p = 0; p < FS_PARTITIONS; p++)
		b->nin += b->in[p];
	if (b->nin == 0) {
		if (!opt->quiet)
			printf("no fenced partition, nothing to do\n");
		return 1;
	}
	if (rebuild_quiesce_fences(b) < 0)
		return -1;
	return b->nin > 0 ? 0 : 1;
}

static void rebuild_print(const struct rebuild *b, const struct fold_sku *skus, int64_t t0)
{
	const struct fold_stats *st = fold_stats(b->fold);

	if (!b->opt->quiet) {
		for (size_t i = 0; i < b->npromos; i++)
			printf("sku=%s initial=%lld sold=%lld held=%lld remaining=%lld requests=%lld "
			       "seq=%lld%s\n", skus[i].promo.sku, skus[i].promo.stock, skus[i].sold,
			       skus[i].held, skus[i].remaining, skus[i].requests, skus[i].seq,
			       skus[i].oversold > 0 ? " oversold=yes" : "");
		printf("%s partitions=%d skus=%zu requests=%zu events_pg=%zu events_tail=%zu "
		       "duplicates=%zu undecodable=%zu invalid=%zu corrected=%zu epoch=%lld ms=%"
		       PRId64 "\n", mode_names[b->opt->mode], b->nin, b->npromos,
		       fold_count(b->fold), b->events_pg, b->events_tail, st->duplicates,
		       b->undecodable, st->invalid, b->corrected, b->epoch, (mono_us() - t0) / 1000);
		fflush(stdout);
	}
	log_info("rebuilt", "mode=%s partitions=%d skus=%zu requests=%zu corrected=%zu epoch=%lld",
		 mode_names[b->opt->mode], b->nin, b->npromos, fold_count(b->fold), b->corrected,
		 b->epoch);
}

int rebuild_run(const struct rc_config *cfg, const struct rebuild_opts *opt,
		struct rebuild_report *report)
{
	struct rebuild b = { .cfg = cfg, .opt = opt };
	struct fold_sku *skus = NULL;
	bool correct = opt->mode == REBUILD_CORRECT;
	int64_t t0 = mono_us();
	int rc = -1, chosen = -1;

	b.rc = redisx_connect(cfg->redis_address, REDIS_TIMEOUT_MS, b.err, sizeof(b.err));
	if (b.rc == NULL)
		goto out;
	b.pg = pg_connect(cfg->pg_conninfo, b.err, sizeof(b.err));
	if (b.pg == NULL || pg_apply_schema(b.pg, b.err, sizeof(b.err)) < 0)
		goto out;
	chosen = rebuild_choose(&b);
	if (chosen != 0) {
		rc = chosen > 0 ? 0 : -1;
		goto out;
	}
	b.fold = fold_new();
	if (b.fold == NULL) {
		snprintf(b.err, sizeof(b.err), "out of memory");
		goto out;
	}
	if (rebuild_read_pg(&b) < 0)
		goto out;
	log_info("ledger_postgres", "partitions=%d promotions=%zu events=%zu requests=%zu", b.nin,
		 b.npromos, b.events_pg, fold_count(b.fold));
	if (rebuild_read_tail(&b) < 0)
		goto out;
	if (fold_summarize(b.fold, b.promos, b.npromos, correct, &skus, b.err, sizeof(b.err)) < 0) {
		if (strstr(b.err, "oversells") != NULL)
			snprintf(b.err + strlen(b.err), sizeof(b.err) - strlen(b.err),
				 "; nothing was changed. `flashsale-reconciler correct` cancels the "
				 "most recent unpaid holds beyond the stock");
		goto out;
	}
	if (correct) {
		if (rebuild_correct(&b, skus) < 0)
			goto out;
		fold_skus_free(skus, b.npromos);
		skus = NULL;
		if (fold_summarize(b.fold, b.promos, b.npromos, true, &skus, b.err,
				   sizeof(b.err)) < 0)
			goto out;
	}
	/* Another run may have finished meanwhile: do not overwrite its state. */
	if (b.full) {
		if (rebuild_state_present(&b) != 0) {
			snprintf(b.err, sizeof(b.err), "fs:ready appeared during the rebuild: another "
				 "rebuild ran; not writing");
			goto out;
		}
	} else if (rebuild_fences_unchanged(&b) < 0) {
		goto out;
	}
	if (rebuild_write(&b, skus) < 0) {
		/* Half written: the fences (or the missing fs:ready) keep it unsold; rerun. */
		chosen = 1;
		goto out;
	}
	rebuild_tell(&b);
	rebuild_print(&b, skus, t0);
	rc = 0;
out:
	if (rc < 0) {
		char q[600];

		/* Nothing was written: leave everything as it was. */
		if (chosen == 0 && b.rc != NULL && !b.full)
			(void)rebuild_unfence(&b, true);
		log_error("rebuild_failed", "mode=%s msg=\"%s\"", mode_names[opt->mode],
			  log_quote(q, sizeof(q), b.err));
	}
	if (report != NULL) {
		report->partitions = rc == 0 ? b.nin : 0;
		report->skipped = b.skipped;
		snprintf(report->err, sizeof(report->err), "%s", rc == 0 ? "" : b.err);
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
