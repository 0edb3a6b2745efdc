#include "gateway.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "log.h"

/*
 * One refresh: TIME, GET fs:ready and SMEMBERS (or SCARD, promo_count_cb),
 * then the hashes of a slice of the SKUs, all pipelined.
 */
struct promo_refresh {
	struct gateway *gw;
	int64_t start_us;           /* mono, to keep admin additions made meanwhile */
	int pending;                /* replies still expected */
	bool failed;
	bool have_time;
	int64_t redis_ms;           /* Redis TIME when this refresh began */
	int64_t redis_us, recv_wall_us, rtt_us;
	bool state_lost;            /* fs:ready absent: Redis lost, not yet rebuilt */
	struct promo *items;
	bool *kept;                 /* per item: not read, the cached entry stays */
	bool full;                  /* every SKU is read */
	bool in_place;              /* the set is the table's: items are the slice (promo_apply_slice) */
	uint64_t slice;
	size_t n, next;             /* next: which item the next HMGET reply fills */
	size_t next_cfg, next_holds; /* the same for the fs:cfg and fs:holds replies */
	size_t cap;
};

struct metric gw_m_cache_age = {
	.name = "gateway_promo_cache_age_ms",
	.help = "Age of the promotion cache in ms (-1 before the first refresh)",
	.type = METRIC_GAUGE,
};

void gateway_note_health(struct gateway *gw)
{
	bool ok = gw_store_ready(&gw->store) && promo_fresh(&gw->promo) && !producer_fatal(&gw->sh->prod);

	__atomic_store_n(&gw->serving, ok, __ATOMIC_RELAXED);
}

int64_t gateway_now_ms(const struct gateway *gw)
{
	return now_ms() + gw->promo.clock_offset_ms;
}

/* The kept sample with the shortest round trip, NULL when none is kept. */
static const struct promo_clock_sample *promo_clock_best(const struct promo_cache *c)
{
	const struct promo_clock_sample *best = NULL;
	size_t n = c->clock_n < PROMO_CLOCK_SAMPLES ? c->clock_n : PROMO_CLOCK_SAMPLES;

	for (size_t i = 0; i < n; i++)
		if (best == NULL || c->clock[i].rtt_us < best->rtt_us)
			best = &c->clock[i];
	return best;
}

void promo_clock_sample(struct promo_cache *c, int64_t rtt_us, int64_t recv_us,
			int64_t redis_us)
{
	const struct promo_clock_sample *best = promo_clock_best(c);
	struct promo_clock_sample s;
	int64_t apart;

	/* Redis stamped its reply somewhere in the round trip: the true offset
	 * is within rtt / 2 of the midpoint's. */
	s.rtt_us = rtt_us < 0 ? 0 : rtt_us;
	s.offset_us = redis_us - (recv_us - s.rtt_us / 2);
	/*
	 * Two samples whose ranges do not meet cannot both hold: a clock
	 * stepped (or Redis moved to another host) since the best was taken.
	 * Older samples are off by the step; start again from this one.
	 */
	apart = best != NULL ? s.offset_us - best->offset_us : 0;
	if (best != NULL && (apart < 0 ? -apart : apart) >
	    (s.rtt_us + best->rtt_us) / 2 + PROMO_CLOCK_DRIFT_US)
		c->clock_n = 0;
	/* The oldest goes, which may have been the best: choose again. */
	c->clock[c->clock_n++ % PROMO_CLOCK_SAMPLES] = s;
	best = promo_clock_best(c);
	/* Rounded to the nearest ms, either side of zero. */
	c->clock_offset_ms = (best->offset_us + (best->offset_us < 0 ? -500 : 500)) / 1000;
}

static int promo_cmp(const void *a, const void *b)
{
	return strcmp(((const struct promo *)a)->sku, ((const struct promo *)b)->sku);
}

const struct promo *promo_find(const struct promo_cache *c, const char *sku)
{
	struct promo key;

	if (c->n == 0 || strlen(sku) > FS_ID_MAX)
		return NULL;
	strcpy(key.sku, sku);
	return bsearch(&key, c->items, c->n, sizeof(*c->items), promo_cmp);
}

int64_t promo_age_ms(const struct promo_cache *c)
{
	if (c->refreshed_us == 0)
		return INT64_MAX;
	return (mono_us() - c->refreshed_us) / 1000;
}

bool promo_fresh(const struct promo_cache *c)
{
	return promo_age_ms(c) <= c->max_age_ms;
}

const char *promo_status(const struct promo *p, int64_t now)
{
	if (now >= p->end_ms)
		return "ended";
	if (now < p->start_ms)
		return "upcoming";
	if (p->remaining <= 0)
		return "sold_out";
	return "active";
}

/* FNV-1a: a SKU's slice, the same in every loop and across restarts. */
uint64_t promo_sku_hash(const char *s)
{
	uint64_t h = 1469598103934665603ULL;

	for (; *s != '\0'; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h;
}

static uint64_t promo_slices(size_t members)
{
	return (members + PROMO_SLICE_SKUS - 1) / PROMO_SLICE_SKUS;
}

static bool promo_in_slice(uint64_t hash, uint64_t slices, uint64_t slice)
{
	return slices <= 1 || hash % slices == slice % slices;
}

bool promo_same_set(const struct promo_cache *c, size_t n, uint64_t sum)
{
	return n == c->n && sum == c->skus_sum;
}

int promo_put(struct promo_cache *c, const struct promo *p)
{
	struct promo *found = (struct promo *)promo_find(c, p->sku);
	struct promo *items;
	size_t i;

	if (found != NULL) {
		*found = *p;
		return 0;
	}
	items = realloc(c->items, (c->n + 1) * sizeof(*items));
	if (items == NULL)
		return -1;
	c->items = items;
	for (i = c->n; i > 0 && strcmp(items[i - 1].sku, p->sku) > 0; i--)
		items[i] = items[i - 1];
	items[i] = *p;
	c->n++;
	c->skus_sum += promo_sku_hash(p->sku);
	return 0;
}

void promo_note_sold_out(struct promo_cache *c, const char *sku, int64_t at_ms)
{
	struct promo *p;

	/* Older than what the table was read at: the table already knows better. */
	if (at_ms <= c->refreshed_redis_ms)
		return;
	p = (struct promo *)promo_find(c, sku);
	if (p != NULL)
		p->remaining = 0;
}

/*
 * The moment this gateway learns a SKU ran out (or has units again), on the
 * Redis clock: bench/run measures the funnel's reaction from it (the last
 * unit's deduction, in the ledger, to this line).
 */
static void promo_learned(const struct promo_cache *c, const char *sku, int64_t before,
			  int64_t after, const char *via)
{
	if ((before > 0) == (after > 0))
		return;
	log_info(after > 0 ? "units_back_seen" : "sold_out_seen",
		 "sku=%s at_ms=%" PRId64 " via=%s remaining=%" PRId64, sku,
		 now_ms() + c->clock_offset_ms, via, after);
}

void promo_note_counts(struct promo_cache *c, const char *sku, int64_t remaining, int64_t held,
		       int64_t earliest_ms, const char *via)
{
	struct promo *p = (struct promo *)promo_find(c, sku);

	if (p == NULL)
		return;
	promo_learned(c, sku, p->remaining, remaining, via);
	p->remaining = remaining;
	p->held = held;
	p->earliest_ms = earliest_ms;
	p->noted_ms = now_ms() + c->clock_offset_ms;
}

bool promo_note_push(struct promo_cache *c, const struct board_item *it, const char *via)
{
	struct promo *p = (struct promo *)promo_find(c, it->sku);

	if (p == NULL || (it->seq > 0 && it->seq <= p->push_seq))
		return false;
	promo_note_counts(c, it->sku, it->remaining, it->held, it->earliest_ms, via);
	if (it->seq > p->push_seq)
		p->push_seq = it->seq;
	return true;
}

struct metric gw_m_board_applied = { "gateway_push_board_applied_total",
	"Pushes a loop applied from the board, before its own subscriber read them", NULL,
	METRIC_COUNTER };

static void promo_apply_posted(void *arg, const struct board_item *it)
{
	struct gateway *gw = arg;

	if (promo_note_push(&gw->promo, it, "board"))
		metric_add(&gw_m_board_applied, 1);
}

void promo_catch_up(struct gateway *gw)
{
	board_catch_up(&gw->sh->board, &gw->board_cursor, promo_apply_posted, gw);
}

bool promo_from_replies(struct promo *p, redisReply **e)
{
	bool ok = true;

	p->initial = gw_store_reply_int(e[0], &ok);
	p->remaining = gw_store_reply_int(e[1], &ok);
	p->held = gw_store_reply_int(e[2], &ok);
	p->sold = gw_store_reply_int(e[3], &ok);
	p->limit = gw_store_reply_int(e[4], &ok);
	p->start_ms = gw_store_reply_int(e[5], &ok);
	p->end_ms = gw_store_reply_int(e[6], &ok);
	p->hold_ms = gw_store_reply_int(e[7], &ok);
	return ok;
}

/*
 * p was just read at redis_ms, old is what the cache held: a push that came
 * after the read knows better (its counters stay); otherwise the read wins.
 */
static void promo_merge_read(const struct promo_cache *c, struct promo *p,
			     const struct promo *old, int64_t redis_ms)
{
	/*
	 * The read's change number is the truth at redis_ms: a push at or
	 * below it is older, however late it was read, and must not undo the
	 * read. Without numbers, or when the read's went down (a state wiped
	 * and loaded again), time decides.
	 */
	if ((p->push_seq > 0 && p->push_seq >= old->push_seq) || old->noted_ms <= redis_ms) {
		promo_learned(c, p->sku, old->remaining, p->remaining, "refresh");
		return;
	}
	p->push_seq = old->push_seq;
	p->remaining = old->remaining;
	p->held = old->held;
	p->earliest_ms = old->earliest_ms;
	p->noted_ms = old->noted_ms;
}

int promo_apply_slice(struct promo_cache *c, const struct promo *items, size_t n,
		      int64_t redis_ms)
{
	int rc = 0;

	for (size_t i = 0; i < n; i++) {
		const struct promo *it = &items[i];
		struct promo *p = (struct promo *)promo_find(c, it->sku);
		struct promo old;

		if (p == NULL) {
			/* Added since the set was read (an admin call): as a rebuild would. */
			if (it->initial >= 0 && promo_put(c, it) < 0)
				rc = -1;
			continue;
		}
		if (it->initial == -1)
			continue;       /* its hash was gone: keep what is cached */
		if (it->initial == PROMO_HASH_BAD) {
			c->skus_sum -= promo_sku_hash(p->sku);
			memmove(p, p + 1, (size_t)(c->items + c->n - (p + 1)) * sizeof(*p));
			c->n--;
			continue;
		}
		old = *p;
		*p = *it;
		promo_merge_read(c, p, &old, redis_ms);
	}
	return rc;
}

/*
 * A new table from a refresh's items (each SKU of the set: read, or kept from
 * the cache), with what happened since the refresh began carried over: newer
 * pushes and admin additions.
 */
static void promo_rebuild(struct promo_cache *c, struct promo_refresh *r)
{
	struct promo *old = c->items;
	size_t oldn = c->n, n;

	n = promo_keep_known(c, r->items, r->n);
	qsort(r->items, n, sizeof(*r->items), promo_cmp);
	c->items = r->items;
	c->n = n;
	r->items = NULL;
	c->skus_sum = 0;
	for (size_t i = 0; i < n; i++)
		c->skus_sum += promo_sku_hash(c->items[i].sku);
	for (size_t i = 0; i < oldn; i++) {
		struct promo *p = (struct promo *)promo_find(c, old[i].sku);

		if (p != NULL)
			promo_merge_read(c, p, &old[i], r->redis_ms);
	}
	/* An admin call may have added a SKU after this refresh read the set. */
	for (size_t i = 0; i < oldn; i++)
		if (old[i].added_us > r->start_us && promo_find(c, old[i].sku) == NULL &&
		    promo_put(c, &old[i]) < 0)
			log_warn("promo_cache_oom", "sku=%s", old[i].sku);
	free(old);
}

/* The last reply arrived: into the table with it, unless something failed. */
static void promo_refresh_done(struct promo_refresh *r)
{
	struct gateway *gw = r->gw;
	struct promo_cache *c = &gw->promo;

	c->cur = NULL;
	if (r->failed || !r->have_time) {
		log_debug("promo_refresh_failed", "age_ms=%" PRId64, promo_age_ms(c));
		free(r->items);
		free(r->kept);
		free(r);
		return;
	}
	if (r->state_lost) {
		/*
		 * Redis was lost and is being rebuilt: the promotions still
		 * exist. Keep the last table so buyers keep queueing (the
		 * deductor waits for the rebuild) instead of hearing
		 * unknown_sku.
		 */
		if (!c->state_lost)
			log_warn("promo_state_lost", "msg=\"fs:ready absent; keeping cached promotions\" skus=%zu", c->n);
		c->state_lost = true;
		free(r->items);
		free(r->kept);
		promo_clock_sample(c, r->rtt_us, r->recv_wall_us, r->redis_us);
		c->refreshed_us = mono_us();
		c->refreshed_redis_ms = r->redis_ms;
		free(r);
		return;
	}
	if (c->state_lost)
		log_info("promo_state_back", "skus=%zu", r->n);
	c->state_lost = false;
	if (!r->in_place)
		promo_rebuild(c, r);
	else if (promo_apply_slice(c, r->items, r->n, r->redis_ms) < 0)
		log_warn("promo_cache_oom", "skus=%zu", r->n);
	free(r->items);
	promo_clock_sample(c, r->rtt_us, r->recv_wall_us, r->redis_us);
	c->refreshed_us = mono_us();
	c->refreshed_redis_ms = r->redis_ms;
	gateway_note_health(r->gw);
	free(r->kept);
	free(r);
	/*
	 * A catch-up's next slice now, not at the next tick; one asked for
	 * after this refresh read the set starts now too.
	 */
	if (c->catchup == UINT64_MAX || (c->catchup > 0 && --c->catchup > 0))
		event_active(c->catchup_ev, EV_TIMEOUT, 1);
}

static void promo_reply_done(struct promo_refresh *r)
{
	if (--r->pending == 0)
		promo_refresh_done(r);
}

/*
 * The item the next reply of a kind fills (*idx: that kind's position):
 * replies come in command order, and kept items were sent none.
 */
static struct promo *promo_next_read(struct promo_refresh *r, size_t *idx)
{
	while (*idx < r->n && r->kept[*idx])
		(*idx)++;
	return &r->items[(*idx)++];
}

static void promo_time_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct promo_refresh *r = privdata;
	redisReply *rep = reply;
	bool ok = true;

	if (rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2) {
		r->failed = true;
	} else {
		int64_t sec = gw_store_reply_int(rep->element[0], &ok);
		int64_t usec = gw_store_reply_int(rep->element[1], &ok);

		if (ok) {
			r->redis_ms = sec * 1000 + usec / 1000;
			r->redis_us = sec * 1000000 + usec;
			r->recv_wall_us = now_us();
			/* On the monotonic clock: a step of the wall clock meanwhile
			 * must not make a round trip look short. */
			r->rtt_us = mono_us() - r->start_us;
			r->have_time = true;
		} else {
			r->failed = true;
		}
	}
	promo_reply_done(r);
}

/* HMGET fs:cfg:<sku> k_pct ip_rate_per_s user_rate_per_s sku_rate_per_s */
static void promo_cfg_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct promo_refresh *r = privdata;
	redisReply *rep = reply;
	struct promo *p = promo_next_read(r, &r->next_cfg);
	bool ok = true;

	if (rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements != 4) {
		r->failed = true;
	} else {
		int64_t *f[4] = { &p->k_pct, &p->ip_rate_per_s, &p->user_rate_per_s,
				  &p->sku_rate_per_s };

		for (int i = 0; i < 4; i++) {
			ok = true;
			*f[i] = rep->element[i]->type == REDIS_REPLY_NIL ? 0 :
				gw_store_reply_int(rep->element[i], &ok);
			if (!ok || *f[i] < 0)
				*f[i] = 0;
		}
	}
	promo_reply_done(r);
}

/* ZRANGE fs:holds:<sku> 0 0 WITHSCORES: the earliest hold's deadline. */
static void promo_holds_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct promo_refresh *r = privdata;
	redisReply *rep = reply;
	struct promo *p = promo_next_read(r, &r->next_holds);
	bool ok = true;

	if (rep == NULL || rep->type != REDIS_REPLY_ARRAY)
		r->failed = true;
	else if (rep->elements == 2)
		p->earliest_ms = gw_store_reply_int(rep->element[1], &ok);
	promo_reply_done(r);
}

static void promo_hmget_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct promo_refresh *r = privdata;
	redisReply *rep = reply;
	struct promo *p = promo_next_read(r, &r->next);
	bool ok = true;

	if (rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements != 9) {
		r->failed = true;
	} else if (rep->element[0]->type == REDIS_REPLY_NIL) {
		p->initial = -1;      /* in the set but no hash (see promo_refresh_done) */
	} else if (!promo_from_replies(p, rep->element)) {
		log_warn("promo_bad_hash", "sku=%s", p->sku);
		p->initial = PROMO_HASH_BAD;
	} else if (rep->element[8]->type != REDIS_REPLY_NIL) {
		/* seq is absent until the SKU's first change: 0 then. */
		p->push_seq = gw_store_reply_int(rep->element[8], &ok);
		if (!ok)
			p->push_seq = 0;
	}
	promo_reply_done(r);
}

static void promo_ready_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct promo_refresh *r = privdata;
	redisReply *rep = reply;

	if (rep == NULL || rep->type == REDIS_REPLY_ERROR)
		r->failed = true;
	else if (rep->type == REDIS_REPLY_NIL)
		r->state_lost = true;
	promo_reply_done(r);
}

/*
 * Ask for one SKU's promotion hash, limits and earliest hold, for the item
 * r->items[r->n - 1]; each command sent is one reply more to wait for.
 * false (r->failed set) when the store refused a command.
 */
static bool promo_read_sku(struct promo_refresh *r, const char *sku)
{
	struct gateway *gw = r->gw;
	char key[FS_ID_MAX + 16], cfg[FS_ID_MAX + 16], holds[FS_ID_MAX + 16];
	const char *argv[11] = { "HMGET", key, "initial", "remaining", "held", "sold",
				 "limit", "start_ms", "end_ms", "hold_ms", "seq" };
	const char *cfg_argv[6] = { "HMGET", cfg, "k_pct", "ip_rate_per_s", "user_rate_per_s",
				    "sku_rate_per_s" };
	const char *holds_argv[5] = { "ZRANGE", holds, "0", "0", "WITHSCORES" };

	snprintf(key, sizeof(key), "fs:promo:%s", sku);
	snprintf(cfg, sizeof(cfg), "fs:cfg:%s", sku);
	snprintf(holds, sizeof(holds), "fs:holds:%s", sku);
	if (gw_store_command_argv(&gw->store, promo_hmget_cb, r, 11, argv, NULL) < 0)
		goto fail;
	r->pending++;
	if (gw_store_command_argv(&gw->store, promo_cfg_cb, r, 6, cfg_argv, NULL) < 0)
		goto fail;
	r->pending++;
	if (gw_store_command_argv(&gw->store, promo_holds_cb, r, 5, holds_argv, NULL) < 0)
		goto fail;
	r->pending++;
	return true;
fail:
	r->failed = true;
	return false;
}

/*
 * The set of SKUs arrived: ask for the hashes of this refresh's slice (every
 * SKU on a full refresh, plus any the cache does not know). A set the
 * table already holds (promo_same_set) is the common case of a large
 * catalogue: then only the slice's items are made, and the table is updated
 * in place at the end. Building a new table of 10,000 SKUs (a lookup, three
 * key strings and a copy per SKU, then a sort) took 17-20 ms of a loop's
 * time twice a second, and a push that came meanwhile waited for it.
 */
static void promo_members_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct promo_refresh *r = privdata;
	struct gateway *gw = r->gw;
	struct promo_cache *c = &gw->promo;
	redisReply *rep = reply;
	uint64_t sum = 0, slices;
	size_t valid = 0, in_slice = 0, cap;

	if (rep == NULL || rep->type != REDIS_REPLY_ARRAY) {
		r->failed = true;
		promo_reply_done(r);
		return;
	}
	slices = promo_slices(rep->elements);
	if (c->catchup == UINT64_MAX)
		c->catchup = slices;
	for (size_t i = 0; i < rep->elements; i++) {
		const redisReply *e = rep->element[i];
		uint64_t h;

		if (e->type != REDIS_REPLY_STRING || !valid_sku(e->str))
			continue;
		h = promo_sku_hash(e->str);
		sum += h;
		valid++;
		in_slice += promo_in_slice(h, slices, r->slice);
	}
	r->in_place = !r->full && !c->state_lost && promo_same_set(c, valid, sum);
	cap = r->in_place ? in_slice : rep->elements;
	r->items = calloc(cap ? cap : 1, sizeof(*r->items));
	r->kept = calloc(cap ? cap : 1, sizeof(*r->kept));
	if (r->items == NULL || r->kept == NULL) {
		r->failed = true;
		promo_reply_done(r);
		return;
	}
	for (size_t i = 0; i < rep->elements && r->n < cap; i++) {
		const redisReply *e = rep->element[i];
		bool read;

		if (e->type != REDIS_REPLY_STRING || !valid_sku(e->str))
			continue;
		if (r->in_place)
			read = promo_in_slice(promo_sku_hash(e->str), slices, r->slice);
		else
			read = promo_slice_reads(c, e->str, rep->elements, r->slice, r->full);
		if (!read && r->in_place)
			continue;
		strcpy(r->items[r->n].sku, e->str);
		r->n++;
		if (!read) {
			/* Not this refresh's slice: promo_keep_known keeps the cached entry. */
			r->kept[r->n - 1] = true;
			r->items[r->n - 1].initial = -1;
			continue;
		}
		if (!promo_read_sku(r, e->str))
			break;
	}
	promo_reply_done(r);
}

/*
 * SCARD fs:promos, on a refresh of a large catalogue between two full
 * reads of the set. Members are only ever added (promo_load.lua, the
 * rebuild), so a count equal to the table's is the table's set: the slice
 * is read from the table's own SKUs. Otherwise the set is read now.
 * SMEMBERS of 10,000 SKUs held Redis 2-9 ms a call mid-sale (slowlog), and
 * every loop of every gateway asked twice a second.
 */
static void promo_count_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct promo_refresh *r = privdata;
	struct gateway *gw = r->gw;
	struct promo_cache *c = &gw->promo;
	redisReply *rep = reply;
	const char *members_argv[] = { "SMEMBERS", "fs:promos" };
	uint64_t slices = promo_slices(c->n);
	size_t in_slice = 0;

	(void)ac;
	if (rep == NULL || rep->type != REDIS_REPLY_INTEGER) {
		r->failed = true;
	} else if (rep->integer != (long long)c->n || c->state_lost) {
		if (gw_store_command_argv(&gw->store, promo_members_cb, r, 2, members_argv, NULL) == 0)
			r->pending++;
		else
			r->failed = true;
	} else {
		for (size_t i = 0; i < c->n; i++)
			in_slice += promo_in_slice(promo_sku_hash(c->items[i].sku), slices, r->slice);
		r->in_place = true;
		r->items = calloc(in_slice ? in_slice : 1, sizeof(*r->items));
		r->kept = calloc(in_slice ? in_slice : 1, sizeof(*r->kept));
		if (r->items == NULL || r->kept == NULL)
			r->failed = true;
		for (size_t i = 0; !r->failed && i < c->n && r->n < in_slice; i++) {
			const char *sku = c->items[i].sku;

			if (!promo_in_slice(promo_sku_hash(sku), slices, r->slice))
				continue;
			strcpy(r->items[r->n++].sku, sku);
			if (!promo_read_sku(r, sku))
				break;
		}
	}
	promo_reply_done(r);
}

static void promo_tick(evutil_socket_t fd, short what, void *arg);

size_t promo_keep_known(const struct promo_cache *c, struct promo *items, size_t n)
{
	size_t kept = 0;

	for (size_t i = 0; i < n; i++) {
		struct promo *p = &items[i];
		const struct promo *known;

		if (p->sku[0] == '\0' || p->initial == PROMO_HASH_BAD)
			continue;
		if (p->initial == -1) {
			known = promo_find(c, p->sku);
			if (known == NULL)
				continue;
			*p = *known;
		}
		items[kept++] = *p;
	}
	return kept;
}

void promo_refresh_now(struct gateway *gw)
{
	/* Counted down by every refresh that ends well; members_cb sets the count. */
	gw->promo.catchup = UINT64_MAX;
	promo_tick(-1, 0, gw);
}

bool promo_slice_reads(const struct promo_cache *c, const char *sku, size_t members,
		       uint64_t slice, bool full)
{
	if (full || promo_find(c, sku) == NULL)
		return true;
	return promo_in_slice(promo_sku_hash(sku), promo_slices(members), slice);
}

void promo_refresh_others(struct gateway *gw)
{
	for (struct gateway *l = gw->loop0; l != NULL; l = l->next) {
		if (l != gw && l->wake_refresh != NULL)
			event_active(l->wake_refresh, EV_TIMEOUT, 0);
	}
}

static void promo_tick(evutil_socket_t fd, short what, void *arg)
{
	struct gateway *gw = arg;
	struct promo_cache *c = &gw->promo;
	struct promo_refresh *r;
	const char *time_argv[] = { "TIME" };
	const char *members_argv[] = { "SMEMBERS", "fs:promos" };
	const char *count_argv[] = { "SCARD", "fs:promos" };
	const char *ready_argv[] = { "GET", "fs:ready" };

	metric_set(&gw_m_cache_age, c->refreshed_us ? promo_age_ms(c) : -1);
	gateway_note_health(gw);
	/* A sweep of the known ids that a lost connection cut short starts again. */
	known_sweep(&gw->known);
	/*
	 * One refresh at a time: a slow Redis must not pile them up. One that
	 * has waited past cache_max_age_ms means a Redis that stopped
	 * answering without closing the socket (paused, black-holed): hiredis
	 * has no command timeout, so drop the connection; every pending
	 * callback, this refresh's included, then runs with a NULL reply.
	 */
	if (c->cur != NULL && (mono_us() - c->cur->start_us) / 1000 > c->max_age_ms)
		gw_store_reset(&gw->store);
	if (c->cur != NULL || !gw_store_ready(&gw->store))
		return;
	r = calloc(1, sizeof(*r));
	if (r == NULL)
		return;
	/* The first reads everything: a loop serves from a whole table. */
	r->full = c->refreshed_us == 0;
	r->slice = c->slice++;
	r->gw = gw;
	r->start_us = mono_us();
	if (gw_store_command_argv(&gw->store, promo_time_cb, r, 1, time_argv, NULL) < 0) {
		free(r);
		return;
	}
	/* From here the replies own r (they arrive, or come back NULL on a loss). */
	r->pending = 1;
	c->cur = r;
	if (gw_store_command_argv(&gw->store, promo_ready_cb, r, 2, ready_argv, NULL) == 0)
		r->pending++;
	else
		r->failed = true;
	/*
	 * A large catalogue's set is read once per round of its slices; in
	 * between its count says whether it moved (promo_count_cb).
	 */
	if (!r->full && c->catchup == 0 && !c->state_lost && c->n > PROMO_SLICE_SKUS &&
	    r->slice % promo_slices(c->n) != 0) {
		if (gw_store_command_argv(&gw->store, promo_count_cb, r, 2, count_argv, NULL) == 0)
			r->pending++;
		else
			r->failed = true;
		return;
	}
	if (gw_store_command_argv(&gw->store, promo_members_cb, r, 2, members_argv, NULL) == 0)
		r->pending++;
	else
		r->failed = true;
}

int promo_init(struct gateway *gw)
{
	struct promo_cache *c = &gw->promo;
	struct timeval tv;

	memset(c, 0, sizeof(*c));
	c->refresh_ms = gw->cfg.refresh_ms;
	c->max_age_ms = gw->cfg.cache_max_age_ms;
	c->timer = event_new(gw->base, -1, EV_PERSIST, promo_tick, gw);
	/*
	 * Not the timer: activating a persistent timer reschedules it from its
	 * due time, so each slice of a catch-up put the next tick another
	 * refresh_ms away (10,000 admin calls pushed it out of sight, and the
	 * cache went stale under a sale: 122,489 refusals in bench/run).
	 */
	c->catchup_ev = event_new(gw->base, -1, 0, promo_tick, gw);
	if (c->timer == NULL || c->catchup_ev == NULL)
		return -1;
	tv.tv_sec = c->refresh_ms / 1000;
	tv.tv_usec = (c->refresh_ms % 1000) * 1000;
	if (event_add(c->timer, &tv) < 0)
		return -1;
	return 0;
}

void promo_free(struct gateway *gw)
{
	struct promo_cache *c = &gw->promo;

	if (c->timer != NULL) {
		event_free(c->timer);
		c->timer = NULL;
	}
	if (c->catchup_ev != NULL) {
		event_free(c->catchup_ev);
		c->catchup_ev = NULL;
	}
	free(c->items);
	c->items = NULL;
	c->n = 0;
}
