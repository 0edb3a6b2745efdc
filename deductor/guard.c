#include "guard.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/*
 * guard_verify's comparison, the same rule as deduct.lua's (which runs it on
 * every step): a partition whose fs:wm is below the ledger's floor is fenced.
 * KEYS fs:ready fs:wm fs:fence; ARGV partition, floor pairs. Returns the
 * fenced partitions and their reasons as pairs (nothing while the state is
 * missing: that is not_ready, the rebuild's business).
 */
static const char verify_lua[] =
	"if redis.call('EXISTS', KEYS[1]) == 0 then return {} end\n"
	"local t = redis.call('TIME')\n"
	"local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
	"local out = {}\n"
	"for i = 1, #ARGV, 2 do\n"
	"  local p, floor = ARGV[i], tonumber(ARGV[i + 1])\n"
	"  local f = redis.call('HGET', KEYS[3], p)\n"
	"  if not f then\n"
	"    local wm = tonumber(redis.call('HGET', KEYS[2], p)) or -1\n"
	"    if wm < floor then\n"
	"      f = string.format('reason=watermark partition=%s redis=%d ledger=%d at_ms=%d',\n"
	"                        p, wm, floor, now)\n"
	"      redis.call('HSET', KEYS[3], p, f)\n"
	"    end\n"
	"  end\n"
	"  if f then out[#out + 1] = p; out[#out + 1] = f end\n"
	"end\n"
	"return out\n";

int guard_init(struct dd_guard *g, size_t seq_max)
{
	memset(g, 0, sizeof(*g));
	for (int p = 0; p < FS_PARTITIONS; p++)
		g->wm[p] = -1;
	strmap_init(&g->seq);
	g->seq_max = seq_max;
	return pthread_mutex_init(&g->mu, NULL) == 0 ? 0 : -1;
}

void guard_free(struct dd_guard *g)
{
	strmap_free(&g->seq);
	pthread_mutex_destroy(&g->mu);
}

void guard_args(const struct dd_guard *g, const fs_intent *in, int32_t partition,
		int64_t offset, struct step_args *out)
{
	out->partition = partition;
	out->offset = offset;
	out->min_wm = partition >= 0 && partition < FS_PARTITIONS ? g->wm[partition] : -1;
	out->min_seq = strmap_get(&g->seq, in->sku, 0);
}

int guard_learn(struct dd_guard *g, const char *sku, int64_t intent_partition,
		int64_t intent_offset, int64_t sku_seq)
{
	if (intent_partition >= 0 && intent_partition < FS_PARTITIONS &&
	    intent_offset > g->wm[intent_partition])
		g->wm[intent_partition] = intent_offset;
	if (sku_seq <= 0 || sku == NULL || sku[0] == '\0')
		return 0;
	/*
	 * A bounded memory: past seq_max SKUs start over. Forgetting a floor
	 * only weakens the second check until the SKU's next event; the
	 * watermark check still stands.
	 */
	if (strmap_count(&g->seq) >= g->seq_max && strmap_get(&g->seq, sku, -1) < 0)
		strmap_clear(&g->seq);
	return strmap_put_max(&g->seq, sku, sku_seq);
}

void guard_assigned(struct dd_guard *g, const rd_kafka_topic_partition_list_t *parts)
{
	for (int i = 0; i < parts->cnt; i++) {
		int32_t p = parts->elems[i].partition;

		if (p >= 0 && p < FS_PARTITIONS) {
			g->owned[p] = true;
			g->probed[p] = false;
		}
	}
}

void guard_revoked(struct dd_guard *g, const rd_kafka_topic_partition_list_t *parts)
{
	for (int i = 0; i < parts->cnt; i++) {
		int32_t p = parts->elems[i].partition;

		if (p >= 0 && p < FS_PARTITIONS) {
			g->owned[p] = false;
			g->probed[p] = false;
			(void)guard_note_clear(g, p);
		}
	}
}

bool guard_needs_probe(const struct dd_guard *g)
{
	for (int p = 0; p < FS_PARTITIONS; p++)
		if (g->owned[p] && !g->probed[p])
			return true;
	return false;
}

/* One ledger event read back: learn from it (an undecodable one teaches nothing). */
static int guard_probe_msg(void *arg, const rd_kafka_message_t *m)
{
	struct dd_guard *g = arg;
	fs_ledger_event *ev;
	char err[128];
	int rc;

	ev = ledger_decode(m->payload, m->len, err, sizeof(err));
	if (ev == NULL)
		return 0;
	/* Replays teach nothing: fs:wm counts changing steps only. */
	rc = !ev->changed ? 0 : guard_learn(g, ev->sku, ev->intent_kind != 0 ?
					    ev->intent_partition : -1,
					    ev->intent_offset, ev->sku_seq);
	ledger_free(ev);
	return rc;
}

int guard_probe(struct dd_guard *g, rd_kafka_t *reader, long long events,
		long long timeout_ms, char *err, size_t errlen)
{
	struct kafka_range r[FS_PARTITIONS];
	size_t n = 0;

	for (int p = 0; p < FS_PARTITIONS; p++) {
		int64_t lo, hi;
		rd_kafka_resp_err_t kerr;

		if (!g->owned[p] || g->probed[p])
			continue;
		kerr = kafka_watermarks(reader, FS_TOPIC_LEDGER, p, &lo, &hi, (int)timeout_ms);
		if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
			snprintf(err, errlen, "watermarks of %s[%d]: %s", FS_TOPIC_LEDGER, p,
				 rd_kafka_err2str(kerr));
			return -1;
		}
		r[n].partition = p;
		r[n].from = hi - events > lo ? hi - events : lo;
		r[n].to = hi;
		n++;
	}
	if (kafka_read_ranges(reader, FS_TOPIC_LEDGER, r, n, timeout_ms, guard_probe_msg, g,
			      err, errlen) < 0)
		return -1;
	for (size_t i = 0; i < n; i++) {
		g->probed[r[i].partition] = true;
		log_info("partition_probed", "partition=%d ledger_from=%" PRId64 " ledger_to=%"
			 PRId64 " floor=%" PRId64, (int)r[i].partition, r[i].from, r[i].to,
			 g->wm[r[i].partition]);
	}
	return 0;
}

int guard_verify(struct dd_guard *g, redisContext *c, char *err, size_t errlen)
{
	const char *argv[6 + 2 * FS_PARTITIONS];
	char nums[2 * FS_PARTITIONS][24];
	bool fenced[FS_PARTITIONS] = { false };
	redisReply *r;
	int argc = 6, checked = 0;

	argv[0] = "EVAL";
	argv[1] = verify_lua;
	argv[2] = "3";
	argv[3] = "fs:ready";
	argv[4] = "fs:wm";
	argv[5] = "fs:fence";
	for (int p = 0; p < FS_PARTITIONS; p++) {
		if (!g->owned[p] || !g->probed[p])
			continue;
		snprintf(nums[2 * checked], sizeof(nums[0]), "%d", p);
		snprintf(nums[2 * checked + 1], sizeof(nums[0]), "%" PRId64, g->wm[p]);
		argv[argc++] = nums[2 * checked];
		argv[argc++] = nums[2 * checked + 1];
		checked++;
	}
	if (checked == 0)
		return 0;
	r = redisCommandArgv(c, argc, argv, NULL);
	if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
		snprintf(err, errlen, "verify: %s", r == NULL ? c->errstr :
			 r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
		if (r != NULL)
			freeReplyObject(r);
		return -1;
	}
	for (size_t i = 0; i + 1 < r->elements; i += 2) {
		int p = atoi(r->element[i]->str);

		if (p < 0 || p >= FS_PARTITIONS || r->element[i + 1]->type != REDIS_REPLY_STRING)
			continue;
		fenced[p] = true;
		if (guard_note_fenced(g, p, "", r->element[i + 1]->str))
			log_error("partition_fenced", "partition=%d found=verify why=\"%s\"", p,
				  r->element[i + 1]->str);
	}
	freeReplyObject(r);
	for (int p = 0; p < FS_PARTITIONS; p++)
		if (g->owned[p] && g->probed[p] && !fenced[p] && guard_note_clear(g, p))
			log_info("partition_unfenced", "partition=%d found=verify", p);
	return 0;
}

bool guard_note_fenced(struct dd_guard *g, int32_t partition, const char *sku, const char *why)
{
	struct guard_fence *f;
	bool first;

	if (partition < 0 || partition >= FS_PARTITIONS)
		return false;
	pthread_mutex_lock(&g->mu);
	f = &g->fence[partition];
	first = f->since_ms == 0;
	if (first) {
		f->since_ms = now_ms();
		g->nfenced++;
	}
	snprintf(f->why, sizeof(f->why), "%s", why);
	if (sku[0] != '\0' || first)
		snprintf(f->sku, sizeof(f->sku), "%s", sku);
	pthread_mutex_unlock(&g->mu);
	return first;
}

bool guard_note_clear(struct dd_guard *g, int32_t partition)
{
	bool was;

	if (partition < 0 || partition >= FS_PARTITIONS)
		return false;
	pthread_mutex_lock(&g->mu);
	was = g->fence[partition].since_ms != 0;
	if (was) {
		memset(&g->fence[partition], 0, sizeof(g->fence[partition]));
		g->nfenced--;
	}
	pthread_mutex_unlock(&g->mu);
	return was;
}

int guard_fenced_count(struct dd_guard *g)
{
	int n;

	pthread_mutex_lock(&g->mu);
	n = g->nfenced;
	pthread_mutex_unlock(&g->mu);
	return n;
}

/* Copy s into a JSON string body: quotes and backslashes escaped, controls dropped. */
static void json_text(char *out, size_t n, const char *s)
{
	size_t k = 0;

	for (; *s != '\0' && k + 3 < n; s++) {
		unsigned char c = (unsigned char)*s;

		if (c < 0x20)
			continue;
		if (c == '"' || c == '\\')
			out[k++] = '\\';
		out[k++] = (char)c;
	}
	out[k] = '\0';
}

void guard_fences_json(struct dd_guard *g, char *out, size_t n)
{
	size_t len = 0;
	int w;

	if (n == 0)
		return;
	out[0] = '\0';
	w = snprintf(out, n, "[");
	len = w > 0 && (size_t)w < n ? (size_t)w : 0;
	pthread_mutex_lock(&g->mu);
	for (int p = 0; p < FS_PARTITIONS; p++) {
		const struct guard_fence *f = &g->fence[p];
		char why[2 * GUARD_WHY_MAX], sku[2 * FS_ID_MAX + 2];

		if (f->since_ms == 0)
			continue;
		json_text(why, sizeof(why), f->why);
		json_text(sku, sizeof(sku), f->sku);
		w = snprintf(out + len, n - len,
			     "%s{\"partition\":%d,\"sku\":\"%s\",\"since_ms\":%" PRId64 ",\"why\":\"%s\"}",
			     len > 1 ? "," : "", p, sku, f->since_ms, why);
		if (w < 0 || (size_t)w >= n - len)
			break;
		len += (size_t)w;
	}
	pthread_mutex_unlock(&g->mu);
	if (len + 2 <= n) {
		out[len++] = ']';
		out[len] = '\0';
	} else {
		snprintf(out, n, "[]");
	}
}
