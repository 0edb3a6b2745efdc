#include "admit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/random.h>

#include <event2/event.h>
#include <openssl/sha.h>

#include "array.h"
#include "log.h"
#include "metrics.h"
#include "store.h"

extern const char gw_admit_lua[];
extern const char gw_unadmit_lua[];

#define KEYS_PER_ITEM 3
#define ARGS_PER_ITEM 4
#define ARGS_PER_OP 4
/* Purchases admitted the slow way before a SKU's lease is asked for: a
 * catalogue's one-off purchases never hold budget idle. */
#define LEASE_ASK_AFTER 4
/* After a grant refused, or one too small to last, a SKU's next ask waits
 * this long: near the end of a budget not every turn carries a grant. */
#define LEASE_RETRY_US (100 * 1000)

/* Marks sent again: the wait after a refused call, doubled up to the max. */
#define AGAIN_STEP_MS 100
#define AGAIN_STEP_MAX_MS 5000

static const char *const verdict_names[] = {
	[ADMIT_OK] = "admitted", [ADMIT_KNOWN] = "known", [ADMIT_SOLD_OUT] = "sold_out",
	[ADMIT_CLAIMED] = "claimed", [ADMIT_SKU_RATE] = "sku_rate",
	[ADMIT_UNKNOWN_SKU] = "unknown_sku", [ADMIT_UNAVAILABLE] = "unavailable",
	[ADMIT_INFLIGHT] = "inflight", [ADMIT_NOT_READY] = "not_ready",
};
#define N_VERDICTS (sizeof(verdict_names) / sizeof(verdict_names[0]))

static struct metric m_verdicts[N_VERDICTS];
static char m_verdict_labels[N_VERDICTS][40];
static struct metric m_calls = { "gateway_admission_calls_total",
	"Admission calls to Redis (one per loop turn with purchases)", NULL, METRIC_COUNTER };
static struct metric m_call_latency = { "gateway_admission_call_seconds",
	"Admission calls, from sending to Redis to the reply's callback", NULL, METRIC_HISTOGRAM };
static struct metric m_leased = { "gateway_admission_leased_total",
	"Purchases produced at once under their loop's lease of the SKU's budget", NULL,
	METRIC_COUNTER };
static struct metric m_again = { "gateway_admission_marks_again_total",
	"Marks sent again because their admission call failed", NULL, METRIC_COUNTER };
static struct metric m_again_lost = { "gateway_admission_marks_lost_total",
	"Marks given up: Redis away longer than the marks are sent again, or too many", NULL,
	METRIC_COUNTER };
static struct metric m_grants = { "gateway_admission_lease_units_total",
	"Units of budget leased to this gateway's loops", NULL, METRIC_COUNTER };

const char *admit_verdict_name(enum admit_verdict v)
{
	return (size_t)v < N_VERDICTS ? verdict_names[v] : "unknown";
}

void admit_metrics_register(void)
{
	for (size_t i = 0; i < N_VERDICTS; i++) {
		snprintf(m_verdict_labels[i], sizeof(m_verdict_labels[i]), "verdict=\"%s\"",
			 verdict_names[i]);
		m_verdicts[i].name = "gateway_admissions_total";
		m_verdicts[i].help = "Purchases through admission, by verdict";
		m_verdicts[i].labels = m_verdict_labels[i];
		m_verdicts[i].type = METRIC_COUNTER;
		metrics_register(&m_verdicts[i]);
	}
	metrics_register(&m_calls);
	metrics_register(&m_call_latency);
	metrics_register(&m_leased);
	metrics_register(&m_grants);
	metrics_register(&m_again);
	metrics_register(&m_again_lost);
}

/* One admission call in flight: its purchases, waiting for the reply. */
struct admit_batch {
	struct admission *a;
	struct admit_item *items;
	size_t n, cap;
	struct admit_lease_op *ops; /* grants asked and returns, after the items */
	size_t nops;
	bool retried;               /* EVAL after EVALSHA's NOSCRIPT */
	int64_t sent_us;
};

/*
 * A call's item array goes back to its admission for the next turn: an
 * array of 64 items is some 12 KB, and a fresh one per call made glibc
 * consolidate its fast bins on every call (perf: 3% of the gateway).
 */
static void admit_batch_free(struct admit_batch *b)
{
	if (b->a != NULL && b->a->done != NULL && b->a->spare == NULL && b->items != NULL) {
		b->a->spare = b->items;
		b->a->spare_cap = b->cap;
	} else {
		free(b->items);
	}
	free(b->ops);
	free(b);
}

static struct admit_lease *lease_find(struct admission *a, const char *sku)
{
	for (size_t i = 0; i < a->nleases; i++)
		if (strcmp(a->leases[i].sku, sku) == 0)
			return &a->leases[i];
	return NULL;
}

/* A call goes at the end of this loop turn, with whatever is queued then. */
static void admit_arm(struct admission *a)
{
	if (!a->flush_armed) {
		a->flush_armed = true;
		event_active(a->flush_ev, EV_TIMEOUT, 1);
	}
}

/* Queue a lease operation for the next call; false when out of memory. */
static bool lease_op(struct admission *a, bool grant, const char *sku, const char *id,
		     int64_t units)
{
	struct admit_lease_op *op;

	if (ARRAY_GROW(a->ops, a->ops_cap, a->nops + 1) < 0)
		return false;
	op = &a->ops[a->nops++];
	op->grant = grant;
	snprintf(op->sku, sizeof(op->sku), "%s", sku);
	snprintf(op->id, sizeof(op->id), "%s", id);
	op->units = units;
	admit_arm(a);
	return true;
}

static void lease_ask(struct admission *a, struct admit_lease *l)
{
	char id[ADMIT_LEASE_ID_MAX];

	snprintf(id, sizeof(id), "%s.%llu", a->lease_prefix, ++a->lease_seq);
	l->asked = lease_op(a, true, l->sku, id, a->lease_units);
}

/* The lease held stops being given; Redis gets back what it has left. */
static void lease_give_back(struct admission *a, struct admit_lease *l)
{
	if (l->id[0] != '\0')
		(void)lease_op(a, false, l->sku, l->id, 0);   /* lost: the heal's */
	l->id[0] = '\0';
	l->left = 0;
}

/*
 * The answer to the grants of a call: granted[j] units for ops[j] (NULL:
 * the call failed; a grant may have been made, the heal gives it back).
 */
static void lease_granted(struct admission *a, const struct admit_lease_op *ops, size_t nops,
			  const redisReply *granted)
{
	int64_t now = mono_us();

	for (size_t j = 0; j < nops; j++) {
		struct admit_lease *l;
		int64_t g = 0;

		if (!ops[j].grant)
			continue;
		if (granted != NULL && j < granted->elements &&
		    granted->element[j]->type == REDIS_REPLY_INTEGER)
			g = granted->element[j]->integer;
		l = lease_find(a, ops[j].sku);
		if (l != NULL) {
			/* Whatever came of it (review: an answer after leases were
			 * turned off left asked set, and the SKU never asked again). */
			l->asked = false;
			l->misses = 0;
		}
		if (l == NULL || a->lease_units == 0) {
			if (g > 0)
				(void)lease_op(a, false, ops[j].sku, ops[j].id, 0);
			continue;
		}
		if (g * 2 < a->lease_units)
			l->next_ask_us = now + LEASE_RETRY_US;
		if (g <= 0)
			continue;
		metric_add(&m_grants, (uint64_t)g);
		/* The old one's marks went out before this return: it follows them. */
		lease_give_back(a, l);
		snprintf(l->id, sizeof(l->id), "%s", ops[j].id);
		l->left = g;
		l->granted = g;
		l->expires_us = now + a->lease_ms * 1000;
	}
}

bool admit_lease_take(struct admission *a, const char *sku, int64_t qty, int64_t now_us,
		      char id[ADMIT_LEASE_ID_MAX])
{
	struct admit_lease *l;

	if (a->lease_units <= 0 || !gw_store_ready(a->store))
		return false;
	l = lease_find(a, sku);
	if (l == NULL) {
		if (a->nleases == ADMIT_LEASES_MAX)
			return false;
		l = &a->leases[a->nleases++];
		memset(l, 0, sizeof(*l));
		snprintf(l->sku, sizeof(l->sku), "%s", sku);
	}
	l->seen_us = now_us;
	if (l->id[0] != '\0' && now_us >= l->expires_us)
		lease_give_back(a, l);
	if (l->id[0] != '\0' && l->left >= qty) {
		l->left -= qty;
		strcpy(id, l->id);
		/* Half given: the next one is asked for before this runs out. */
		if (l->left * 2 < l->granted && !l->asked && now_us >= l->next_ask_us)
			lease_ask(a, l);
		metric_add(&m_leased, 1);
		return true;
	}
	if (!l->asked && ++l->misses >= LEASE_ASK_AFTER && now_us >= l->next_ask_us)
		lease_ask(a, l);
	return false;
}

static void marks_again(struct admission *a);

/* Expired leases go back; SKUs no longer bought leave the table; kept marks go again. */
static void lease_sweep_cb(evutil_socket_t fd, short what, void *arg)
{
	struct admission *a = arg;
	int64_t now = mono_us();

	(void)fd;
	(void)what;
	for (size_t i = 0; i < a->nleases; ) {
		struct admit_lease *l = &a->leases[i];

		if (l->id[0] != '\0' && now >= l->expires_us)
			lease_give_back(a, l);
		if (l->id[0] == '\0' && !l->asked && now - l->seen_us > a->lease_ms * 1000) {
			a->leases[i] = a->leases[--a->nleases];
			continue;
		}
		i++;
	}
	marks_again(a);
}

void admit_leases_return(struct admission *a)
{
	a->lease_units = 0;
	for (size_t i = 0; i < a->nleases; i++)
		lease_give_back(a, &a->leases[i]);
}

/* Keep a mark sent again for the next try, unless its time is up. */
static void mark_keep(struct admission *a, const struct admit_item *it)
{
	if (mono_us() >= it->again_until_us || a->nagain >= ADMIT_AGAIN_MAX ||
	    ARRAY_GROW(a->again, a->again_cap, a->nagain + 1) < 0) {
		metric_add(&m_again_lost, 1);
		log_warn("mark_lost", "request_id=%s sku=%s", it->rid, it->sku);
		return;
	}
	a->again[a->nagain++] = *it;
}

static void admit_finish(struct admission *a, const struct admit_item *it,
			 const struct admit_result *r)
{
	if (a->done == NULL)
		return;     /* a call answered after admit_free (Redis freed later) */
	if (it->again_until_us != 0) {
		/* Its purchase was answered on the first try. */
		if (r->verdict == ADMIT_UNAVAILABLE || r->verdict == ADMIT_NOT_READY) {
			/* Once per refused call, not per mark in it. */
			if (mono_us() >= a->again_next_us) {
				a->again_step_ms = a->again_step_ms * 2 > AGAIN_STEP_MAX_MS ?
						   AGAIN_STEP_MAX_MS : a->again_step_ms * 2;
				a->again_next_us = mono_us() + a->again_step_ms * 1000;
			}
			mark_keep(a, it);
		} else {
			a->again_step_ms = AGAIN_STEP_MS;
		}
		return;
	}
	metric_add(&m_verdicts[r->verdict], 1);
	a->done(a->arg, it->opaque, r);
}

static void admit_fail_all(struct admission *a, const struct admit_item *items, size_t n)
{
	struct admit_result r = { .verdict = ADMIT_UNAVAILABLE };

	for (size_t i = 0; i < n; i++)
		admit_finish(a, &items[i], &r);
}

static int admit_send(struct admit_batch *b, bool eval);

/* A bulk or integer reply element as a number. */
static int64_t elem_int(const redisReply *e)
{
	bool ok = true;

	return gw_store_reply_int(e, &ok);
}

static void admit_parse(const redisReply *e, struct admit_result *r)
{
	const char *v;

	memset(r, 0, sizeof(*r));
	r->verdict = ADMIT_UNAVAILABLE;
	if (e == NULL || e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
	    e->element[0]->type != REDIS_REPLY_STRING)
		return;
	v = e->element[0]->str;
	if (strcmp(v, "admitted") == 0) {
		r->verdict = ADMIT_OK;
	} else if (strcmp(v, "known") == 0 && e->element[1]->type == REDIS_REPLY_STRING) {
		r->verdict = ADMIT_KNOWN;
		snprintf(r->state, sizeof(r->state), "%s", e->element[1]->str);
	} else if (strcmp(v, "sold_out") == 0) {
		r->verdict = ADMIT_SOLD_OUT;
		r->retry_after_ms = elem_int(e->element[1]);
		r->may_return = elem_int(e->element[2]) != 0;
	} else if (strcmp(v, "claimed") == 0) {
		r->verdict = ADMIT_CLAIMED;
		r->retry_after_ms = elem_int(e->element[1]);
		r->may_return = true;
	} else if (strcmp(v, "sku_rate") == 0) {
		r->verdict = ADMIT_SKU_RATE;
		r->retry_after_ms = elem_int(e->element[1]);
	} else if (strcmp(v, "inflight") == 0) {
		r->verdict = ADMIT_INFLIGHT;
		r->retry_after_ms = elem_int(e->element[1]);
	} else if (strcmp(v, "unknown_sku") == 0) {
		r->verdict = ADMIT_UNKNOWN_SKU;
	}
}

static void admit_reply_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct admit_batch *b = privdata;
	struct admission *a = b->a;
	redisReply *r = reply;

	(void)ac;
	a->batches_in_flight--;
	metric_observe_us(&m_call_latency, (uint64_t)(mono_us() - b->sent_us));
	if (r != NULL && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0 &&
	    !b->retried) {
		/* Redis restarted or flushed its scripts: send the text once. */
		b->retried = true;
		if (admit_send(b, true) == 0)
			return;
	}
	if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 1 &&
	    r->element[0]->type == REDIS_REPLY_STRING && strcmp(r->element[0]->str, "not_ready") == 0) {
		struct admit_result res = { .verdict = ADMIT_NOT_READY };

		lease_granted(a, b->ops, b->nops, NULL);
		for (size_t i = 0; i < b->n; i++)
			admit_finish(a, &b->items[i], &res);
	} else if (r == NULL || r->type != REDIS_REPLY_ARRAY ||
		   r->elements != b->n + (b->nops > 0) ||
		   (b->nops > 0 && r->element[b->n]->type != REDIS_REPLY_ARRAY)) {
		if (r != NULL && r->type == REDIS_REPLY_ERROR)
			log_warn("admission_failed", "err=\"%s\"", r->str);
		lease_granted(a, b->ops, b->nops, NULL);
		admit_fail_all(a, b->items, b->n);
	} else {
		lease_granted(a, b->ops, b->nops, b->nops > 0 ? r->element[b->n] : NULL);
		for (size_t i = 0; i < b->n; i++) {
			struct admit_result res;

			admit_parse(r->element[i], &res);
			admit_finish(a, &b->items[i], &res);
		}
	}
	admit_batch_free(b);
	/* Marks that waited for this reply go now. */
	if (a->n > 0 || a->nops > 0)
		admit_arm(a);
}

/*
 * EVALSHA (or EVAL) admit.lua over the batch. -1 when it could not be sent:
 * the caller answers every purchase of the batch.
 */
static int admit_send(struct admit_batch *b, bool eval)
{
	static const char *const prefix[KEYS_PER_ITEM] = { "fs:promo:", "fs:cfg:", "fs:req:" };
	struct admission *a = b->a;
	struct resp *r = &a->cmd;
	size_t nkeys = 3 + KEYS_PER_ITEM * b->n;
	const char *script = eval ? gw_admit_lua : a->sha;

	resp_begin(r, 3 + nkeys + 6 + ARGS_PER_ITEM * b->n + ARGS_PER_OP * b->nops);
	resp_arg(r, eval ? "EVAL" : "EVALSHA", eval ? 4 : 7);
	resp_arg(r, script, strlen(script));
	resp_int(r, (long long)nkeys);
	resp_arg(r, "fs:ready", 8);
	resp_arg(r, "fs:adm:all", 10);
	resp_arg(r, "fs:adm:total", 12);
	for (size_t i = 0; i < b->n; i++)
		for (int j = 0; j < KEYS_PER_ITEM; j++)
			resp_arg2(r, prefix[j], j == 2 ? b->items[i].rid : b->items[i].sku);
	resp_int(r, a->record_ttl_s);
	resp_int(r, a->default_k_pct);
	resp_int(r, (long long)b->n);
	resp_int(r, a->global_cap);
	resp_int(r, a->lease_min_free);
	for (size_t i = 0; i < b->n; i++) {
		resp_arg(r, b->items[i].sku, strlen(b->items[i].sku));
		resp_arg(r, b->items[i].rid, strlen(b->items[i].rid));
		resp_int(r, (long long)b->items[i].qty);
		resp_arg(r, b->items[i].lease, strlen(b->items[i].lease));
	}
	resp_int(r, (long long)b->nops);
	for (size_t j = 0; j < b->nops; j++) {
		resp_arg(r, b->ops[j].grant ? "grant" : "return", b->ops[j].grant ? 5 : 6);
		resp_arg(r, b->ops[j].sku, strlen(b->ops[j].sku));
		resp_arg(r, b->ops[j].id, strlen(b->ops[j].id));
		resp_int(r, (long long)b->ops[j].units);
	}
	b->sent_us = mono_us();
	if (r->oom || gw_store_command_resp(a->store, admit_reply_cb, b, r->buf, r->len) < 0)
		return -1;
	a->batches_in_flight++;
	return 0;
}

static void admit_flush(struct admission *a)
{
	struct admit_batch *b;

	if (a->n == 0 && a->nops == 0)
		return;
	metric_add(&m_calls, 1);
	b = calloc(1, sizeof(*b));
	if (b == NULL) {
		admit_fail_all(a, a->items, a->n);
		a->n = 0;
		lease_granted(a, a->ops, a->nops, NULL);
		a->nops = 0;
		return;
	}
	b->a = a;
	b->items = a->items;
	b->n = a->n;
	b->cap = a->cap;
	a->items = NULL;
	a->n = 0;
	a->cap = 0;
	b->ops = a->ops;
	b->nops = a->nops;
	a->ops = NULL;
	a->nops = 0;
	a->ops_cap = 0;
	if (admit_send(b, false) < 0) {
		lease_granted(a, b->ops, b->nops, NULL);
		admit_fail_all(a, b->items, b->n);
		admit_batch_free(b);
	}
}

static void admit_flush_cb(evutil_socket_t fd, short what, void *arg)
{
	struct admission *a = arg;

	(void)fd;
	(void)what;
	a->flush_armed = false;
	admit_flush(a);
}

/* Lease ids differ between the admissions of a process (and, by the random
 * part, between processes). */
static unsigned long admissions;

static unsigned int random_u32(void)
{
	unsigned int v = 0;

	if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != (ssize_t)sizeof(v))
		v = (unsigned int)mono_us() ^ (unsigned int)getpid();
	return v;
}
static const struct timeval sweep_every = { 0, 100 * 1000 };

int admit_init(struct admission *a, struct event_base *base, struct gw_store *store,
	       long long record_ttl_s, long long default_k_pct, long long global_cap,
	       admit_done_cb done, void *arg)
{
	unsigned char md[SHA_DIGEST_LENGTH];

	memset(a, 0, sizeof(*a));
	a->store = store;
	a->record_ttl_s = record_ttl_s;
	a->default_k_pct = default_k_pct;
	a->global_cap = global_cap;
	a->done = done;
	a->arg = arg;
	a->max_batch = 512;
	a->lease_ms = 1000;
	a->lease_min_free = 1000;
	a->again_ms = ADMIT_AGAIN_MS;
	a->again_step_ms = AGAIN_STEP_MS;
	snprintf(a->lease_prefix, sizeof(a->lease_prefix), "~%08x.%lu", random_u32(),
		 __atomic_add_fetch(&admissions, 1, __ATOMIC_RELAXED));
	SHA1((const unsigned char *)gw_admit_lua, strlen(gw_admit_lua), md);
	for (int i = 0; i < SHA_DIGEST_LENGTH; i++)
		snprintf(a->sha + 2 * i, 3, "%02x", md[i]);
	/* Lowest priority: it runs after every request this turn has read. */
	a->flush_ev = event_new(base, -1, 0, admit_flush_cb, a);
	if (a->flush_ev == NULL || event_priority_set(a->flush_ev, 2) < 0)
		return -1;
	a->lease_ev = event_new(base, -1, EV_PERSIST, lease_sweep_cb, a);
	if (a->lease_ev == NULL || event_add(a->lease_ev, &sweep_every) < 0)
		return -1;
	return 0;
}

void admit_free(struct admission *a)
{
	if (a->flush_ev != NULL)
		event_free(a->flush_ev);
	if (a->lease_ev != NULL)
		event_free(a->lease_ev);
	admit_fail_all(a, a->items, a->n);
	if (a->nagain > 0) {
		/* Drained with Redis away: their purchases are in Kafka all the same. */
		metric_add(&m_again_lost, a->nagain);
		log_warn("marks_lost", "count=%zu reason=exit", a->nagain);
	}
	free(a->items);
	free(a->spare);
	free(a->ops);
	free(a->again);
	resp_free(&a->cmd);
	memset(a, 0, sizeof(*a));   /* done = NULL: late replies are dropped */
}

/* s into out (n bytes), cut to fit: snprintf's "%s" without its parsing. */
static void copy_id(char *out, size_t n, const char *s)
{
	size_t len = strnlen(s, n - 1);

	memcpy(out, s, len);
	out[len] = '\0';
}

static struct admit_item item_make(const char *sku, const char *rid, int64_t qty,
				   const char *lease, void *opaque, int64_t again_until_us)
{
	struct admit_item it = { .qty = qty, .opaque = opaque, .again_until_us = again_until_us };

	copy_id(it.sku, sizeof(it.sku), sku);
	copy_id(it.rid, sizeof(it.rid), rid);
	copy_id(it.lease, sizeof(it.lease), lease);
	return it;
}

static void admit_queue(struct admission *a, const char *sku, const char *rid, int64_t qty,
			const char *lease, void *opaque, int64_t again_until_us)
{
	struct admit_item it = item_make(sku, rid, qty, lease, opaque, again_until_us);
	struct admit_result unavailable = { .verdict = ADMIT_UNAVAILABLE };

	if (!gw_store_ready(a->store)) {
		admit_finish(a, &it, &unavailable);
		return;
	}
	if (a->n == 0 && a->cap == 0 && a->spare != NULL) {
		free(a->items);
		a->items = a->spare;
		a->cap = a->spare_cap;
		a->spare = NULL;
		a->spare_cap = 0;
	}
	if (a->n == a->cap) {
		size_t cap = a->cap ? a->cap * 2 : 64;
		struct admit_item *ni = realloc(a->items, cap * sizeof(*ni));

		if (ni == NULL) {
			admit_finish(a, &it, &unavailable);
			return;
		}
		a->items = ni;
		a->cap = cap;
	}
	a->items[a->n++] = it;
	/*
	 * A mark (its purchase is on its way to Kafka already) waits for the
	 * call in flight and goes with the next one, sent when that reply
	 * comes: Redis would answer it after the call in flight anyway, and a
	 * turn's marks were a few per call (bench/run: 5.8 Redis commands per
	 * accepted purchase). A purchase waiting for its admission goes this
	 * turn, and takes the marks queued with it.
	 */
	if (a->n >= a->max_batch)
		admit_flush(a);
	else if (lease[0] == '\0' || a->batches_in_flight == 0)
		admit_arm(a);
}

void admit_submit(struct admission *a, const char *sku, const char *rid, int64_t qty,
		  void *opaque)
{
	admit_queue(a, sku, rid, qty, "", opaque, 0);
}

void admit_mark(struct admission *a, const char *sku, const char *rid, int64_t qty,
		const char *lease, void *opaque)
{
	admit_queue(a, sku, rid, qty, lease, opaque, 0);
}

void admit_mark_again(struct admission *a, const char *sku, const char *rid, int64_t qty,
		      const char *lease)
{
	struct admit_item it = item_make(sku, rid, qty, lease, NULL,
					 mono_us() + a->again_ms * 1000);

	mark_keep(a, &it);
}

/* The marks kept (mark_keep) go with a call, once Redis is there. */
static void marks_again(struct admission *a)
{
	struct admit_item *kept = a->again;
	size_t n = a->nagain;

	if (n == 0 || !gw_store_ready(a->store) || mono_us() < a->again_next_us)
		return;
	a->again = NULL;    /* a mark failing again is kept anew */
	a->nagain = 0;
	a->again_cap = 0;
	for (size_t i = 0; i < n; i++) {
		if (mono_us() >= kept[i].again_until_us) {
			mark_keep(a, &kept[i]);     /* counts it lost */
			continue;
		}
		metric_add(&m_again, 1);
		admit_queue(a, kept[i].sku, kept[i].rid, kept[i].qty, kept[i].lease, NULL,
			    kept[i].again_until_us);
	}
	free(kept);
	admit_arm(a);
}

static void unadmit_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	redisReply *r = reply;

	(void)ac;
	(void)privdata;
	if (r != NULL && r->type == REDIS_REPLY_ERROR)
		log_warn("unadmit_failed", "err=\"%s\"", r->str);
}

void admit_release(struct admission *a, const char *sku, const char *rid)
{
	char kp[FS_ID_MAX + 16], kr[FS_ID_MAX + 16], member[2 * FS_ID_MAX + 2];
	const char *argv[] = { "EVAL", gw_unadmit_lua, "4", kp, kr, "fs:adm:all", "fs:adm:total",
			       member };

	snprintf(kp, sizeof(kp), "fs:promo:%s", sku);
	snprintf(kr, sizeof(kr), "fs:req:%s", rid);
	snprintf(member, sizeof(member), "%s %s", sku, rid);
	if (gw_store_command_argv(a->store, unadmit_cb, NULL, 8, argv, NULL) < 0)
		log_warn("unadmit_failed", "request_id=%s err=\"Redis unavailable\"", rid);
}
