/*
 * The ledger fold (see fold.h for the rules). Records live in one growing
 * array, their strings in an arena, and an open-addressing table maps
 * request ids to records, so a million requests cost about 100 bytes each.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fold.h"

/* Index 0 means "none"; 1..4 are hold states, 5.. refusal outcomes. */
static const char *const fold_words[] = {
	"", "reserved", "paid", "cancelled", "expired",
	"sold_out", "limit_reached", "not_started", "ended", "unknown_sku", "qty_invalid",
};
#define W_NONE 0
#define W_RESERVED 1
#define W_PAID 2
#define W_CANCELLED 3
#define W_EXPIRED 4
#define W_FIRST_REFUSAL 5
#define W_COUNT (sizeof(fold_words) / sizeof(fold_words[0]))


/* Strings are never freed one by one: an arena of large chunks. */
struct arena_chunk {
	struct arena_chunk *next;
	size_t used, size;
	char data[];
};

#define ARENA_CHUNK (256 * 1024)

/* Open addressing, linear probing; idx1 is the entry index + 1 (0 = empty). */
struct htab_slot {
	uint32_t hash;
	uint32_t idx1;
};

struct htab {
	struct htab_slot *slot;
	size_t mask;
	size_t n;
};

struct fold {
	struct fold_req *reqs;
	size_t nreqs, capreqs;
	struct htab byrid;
	struct arena_chunk *arena;
	struct fold_stats stats;
	long long wm[FS_PARTITIONS];    /* -1: no changing event */
	struct strmap seq;              /* sku -> highest sku_seq */
};

static uint32_t hash_str(const char *s, uint32_t h)
{
	/* FNV-1a: short ids, good enough spread, no dependency. */
	if (h == 0)
		h = 2166136261u;
	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 16777619u;
	}
	return h;
}

static char *arena_strdup(struct arena_chunk **head, const char *s)
{
	size_t len = strlen(s) + 1;
	struct arena_chunk *c = *head;

	if (c == NULL || c->size - c->used < len) {
		size_t size = len > ARENA_CHUNK ? len : ARENA_CHUNK;

		c = malloc(sizeof(*c) + size);
		if (c == NULL)
			return NULL;
		c->next = *head;
		c->used = 0;
		c->size = size;
		*head = c;
	}
	memcpy(c->data + c->used, s, len);
	c->used += len;
	return c->data + c->used - len;
}

static void arena_free(struct arena_chunk *c)
{
	while (c != NULL) {
		struct arena_chunk *next = c->next;

		free(c);
		c = next;
	}
}

typedef bool (*htab_eq_fn)(const void *ctx, uint32_t idx, const void *key);

static int htab_init(struct htab *h, size_t cap)
{
	size_t n = 16;

	while (n < cap * 2)
		n <<= 1;
	h->slot = calloc(n, sizeof(*h->slot));
	if (h->slot == NULL)
		return -1;
	h->mask = n - 1;
	h->n = 0;
	return 0;
}

/* The slot holding key, or the empty slot where it would go. */
static struct htab_slot *htab_lookup(const struct htab *h, uint32_t hash,
				     htab_eq_fn eq, const void *ctx, const void *key)
{
	size_t i = hash & h->mask;

	for (;;) {
		struct htab_slot *s = &h->slot[i];

		if (s->idx1 == 0)
			return s;
		if (s->hash == hash && eq(ctx, s->idx1 - 1, key))
			return s;
		i = (i + 1) & h->mask;
	}
}

/* Fill an empty slot found by htab_lookup; grows at half load. */
static int htab_insert(struct htab *h, struct htab_slot *s, uint32_t hash, uint32_t idx)
{
	s->hash = hash;
	s->idx1 = idx + 1;
	h->n++;
	if (h->n * 2 > h->mask + 1) {
		size_t n = (h->mask + 1) * 2;
		struct htab_slot *ns = calloc(n, sizeof(*ns));

		if (ns == NULL)
			return -1;
		for (size_t i = 0; i <= h->mask; i++) {
			size_t j;

			if (h->slot[i].idx1 == 0)
				continue;
			j = h->slot[i].hash & (n - 1);
			while (ns[j].idx1 != 0)
				j = (j + 1) & (n - 1);
			ns[j] = h->slot[i];
		}
		free(h->slot);
		h->slot = ns;
		h->mask = n - 1;
	}
	return 0;
}

static uint8_t word_index(const char *s)
{
	if (s == NULL || *s == '\0')
		return W_NONE;
	for (size_t i = 1; i < W_COUNT; i++)
		if (strcmp(fold_words[i], s) == 0)
			return (uint8_t)i;
	return W_NONE;
}

const char *fold_word(uint8_t idx)
{
	return idx < W_COUNT ? fold_words[idx] : "";
}

struct fold *fold_new(void)
{
	struct fold *f = calloc(1, sizeof(*f));

	if (f == NULL)
		return NULL;
	if (htab_init(&f->byrid, 1024) < 0) {
		free(f);
		return NULL;
	}
	for (int p = 0; p < FS_PARTITIONS; p++)
		f->wm[p] = -1;
	strmap_init(&f->seq);
	return f;
}

void fold_free(struct fold *f)
{
	if (f == NULL)
		return;
	free(f->reqs);
	free(f->byrid.slot);
	arena_free(f->arena);
	strmap_free(&f->seq);
	free(f);
}

static bool req_eq(const void *ctx, uint32_t idx, const void *key)
{
	const struct fold *f = ctx;

	return strcmp(f->reqs[idx].rid, key) == 0;
}

const struct fold_req *fold_find(const struct fold *f, const char *rid)
{
	const struct htab_slot *s = htab_lookup(&f->byrid, hash_str(rid, 0), req_eq, f, rid);

	return s->idx1 ? &f->reqs[s->idx1 - 1] : NULL;
}

/* A new record for ev (which has a request id and a SKU); NULL when out of memory. */
static struct fold_req *req_create(struct fold *f, struct htab_slot *slot, uint32_t hash,
				   const struct fold_event *ev)
{
	struct fold_req *r;

	if (f->nreqs == UINT32_MAX - 1)
		return NULL;
	if (f->nreqs == f->capreqs) {
		size_t cap = f->capreqs ? f->capreqs * 2 : 1024;
		struct fold_req *nr = realloc(f->reqs, cap * sizeof(*nr));

		if (nr == NULL)
			return NULL;
		f->reqs = nr;
		f->capreqs = cap;
	}
	r = &f->reqs[f->nreqs];
	memset(r, 0, sizeof(*r));
	r->rid = arena_strdup(&f->arena, ev->request_id);
	r->sku = arena_strdup(&f->arena, ev->sku);
	r->user = arena_strdup(&f->arena, ev->user_id ? ev->user_id : "");
	if (r->rid == NULL || r->sku == NULL || r->user == NULL)
		return NULL;
	/* The slot was found before the record existed: insert after filling. */
	if (htab_insert(&f->byrid, slot, hash, (uint32_t)f->nreqs) < 0)
		return NULL;
	f->nreqs++;
	return r;
}

static void req_fill(struct fold_req *r, const struct fold_event *ev, uint8_t o, long long dl)
{
	r->o = o;
	r->qty = ev->qty;
	r->dl = dl;
	r->ts = ev->at_ms;
	r->q0 = ev->sku_seq;
	r->q = ev->sku_seq;
}

static int fold_invalid(struct fold *f, char *err, size_t errlen, const char *why,
			const struct fold_event *ev)
{
	f->stats.invalid++;
	snprintf(err, errlen, "%s (request_id=%s kind=%d)", why,
		 ev->request_id ? ev->request_id : "", ev->kind);
	return 0;
}

int fold_add(struct fold *f, const struct fold_event *ev, char *err, size_t errlen)
{
	struct htab_slot *slot;
	struct fold_req *r;
	uint32_t hash;
	uint8_t outcome = W_NONE, bit;

	f->stats.events++;
	if (ev->kind < FOLD_RESERVED || ev->kind > FOLD_TRANSITION_REFUSED)
		return fold_invalid(f, err, errlen, "unknown event kind", ev);
	/* Before any early return: duplicates and refusals count here too. */
	if (ev->changed && ev->intent_partition >= 0 && ev->intent_partition < FS_PARTITIONS &&
	    ev->intent_offset > f->wm[ev->intent_partition])
		f->wm[ev->intent_partition] = ev->intent_offset;
	if (ev->sku_seq > 0 && ev->sku != NULL && ev->sku[0] != '\0' &&
	    strmap_put_max(&f->seq, ev->sku, ev->sku_seq) < 0) {
		snprintf(err, errlen, "out of memory folding %zu requests", f->nreqs);
		return -1;
	}
	if (ev->kind == FOLD_TRANSITION_REFUSED) {
		/* Nothing moved: the record it names is unchanged. */
		f->stats.ignored++;
		return 0;
	}
	if (ev->request_id == NULL || *ev->request_id == '\0' ||
	    ev->sku == NULL || *ev->sku == '\0')
		return fold_invalid(f, err, errlen, "event without request id or sku", ev);
	if (ev->kind == FOLD_REFUSED) {
		outcome = word_index(ev->reason && *ev->reason ? ev->reason : ev->state);
		if (outcome < W_FIRST_REFUSAL)
			return fold_invalid(f, err, errlen, "refusal with unknown reason", ev);
	}

	hash = hash_str(ev->request_id, 0);
	slot = htab_lookup(&f->byrid, hash, req_eq, f, ev->request_id);
	if (slot->idx1 == 0) {
		r = req_create(f, slot, hash, ev);
		if (r == NULL) {
			snprintf(err, errlen, "out of memory folding %zu requests", f->nreqs);
			return -1;
		}
	} else {
		r = &f->reqs[slot->idx1 - 1];
	}

	bit = (uint8_t)(1u << ev->kind);
	if ((r->seen & bit) && (ev->kind != FOLD_REFUSED || r->o == outcome)) {
		f->stats.duplicates++;
		return 0;
	}
	r->seen |= bit;

	switch (ev->kind) {
	case FOLD_RESERVED:
		if (r->o != W_NONE)
			break;          /* first outcome wins */
		req_fill(r, ev, W_RESERVED, ev->deadline_ms);
		if (r->st == W_NONE)
			r->st = W_RESERVED;
		f->stats.applied++;
		return 1;
	case FOLD_REFUSED:
		if (r->o != W_NONE)
			break;
		req_fill(r, ev, outcome, 0);
		r->st = outcome;
		f->stats.applied++;
		return 1;
	default:
		/*
		 * PAID, CANCELLED, EXPIRED end a hold. Without a RESERVED
		 * before it (not expected: the ledger is complete) the event
		 * still carries the hold's user, qty and deadline.
		 */
		if (r->o == W_NONE)
			req_fill(r, ev, W_RESERVED, ev->deadline_ms);
		else if (r->o != W_RESERVED)
			break;          /* a refused purchase has no hold to end */
		if (r->st != W_NONE && r->st != W_RESERVED)
			break;          /* the first terminal state wins */
		r->st = (uint8_t)(ev->kind == FOLD_PAID ? W_PAID :
				  ev->kind == FOLD_CANCELLED ? W_CANCELLED : W_EXPIRED);
		r->ts = ev->at_ms;
		r->q = ev->sku_seq;
		f->stats.applied++;
		return 1;
	}
	f->stats.ignored++;
	return 0;
}

long long fold_watermark(const struct fold *f, int partition)
{
	return partition >= 0 && partition < FS_PARTITIONS ? f->wm[partition] : -1;
}

const struct fold_stats *fold_stats(const struct fold *f)
{
	return &f->stats;
}

size_t fold_count(const struct fold *f)
{
	return f->nreqs;
}

const struct fold_req *fold_get(const struct fold *f, size_t i)
{
	return i < f->nreqs ? &f->reqs[i] : NULL;
}

/* Summarize's lookup tables: promotions by SKU, users by (SKU, user). */
struct user_acc {
	uint32_t sku;
	const char *user;
	long long qty;
};

struct user_key {
	uint32_t sku;
	const char *user;
};

static bool promo_eq(const void *ctx, uint32_t idx, const void *key)
{
	const struct fold_promo *p = ctx;

	return strcmp(p[idx].sku, key) == 0;
}

static bool user_eq(const void *ctx, uint32_t idx, const void *key)
{
	const struct user_acc *u = ctx;
	const struct user_key *k = key;

	return u[idx].sku == k->sku && strcmp(u[idx].user, k->user) == 0;
}

void fold_skus_free(struct fold_sku *s, size_t n)
{
	if (s == NULL)
		return;
	for (size_t i = 0; i < n; i++) {
		free(s[i].users);
		free(s[i].holds);
	}
	free(s);
}

int fold_summarize(const struct fold *f, const struct fold_promo *promos, size_t npromos,
		   bool allow_oversold, struct fold_sku **out, char *err, size_t errlen)
{
	struct htab bysku = { 0 }, byuser = { 0 };
	struct user_acc *acc = NULL;
	size_t nacc = 0, capacc = 0;
	struct fold_sku *s;
	uint32_t *skuof = NULL;   /* record -> promotion index + 1 */
	int rc = -1;

	*out = NULL;
	s = calloc(npromos ? npromos : 1, sizeof(*s));
	skuof = calloc(f->nreqs ? f->nreqs : 1, sizeof(*skuof));
	if (s == NULL || skuof == NULL || htab_init(&bysku, npromos) < 0 ||
	    htab_init(&byuser, 1024) < 0)
		goto oom;

	for (size_t i = 0; i < npromos; i++) {
		uint32_t h = hash_str(promos[i].sku, 0);
		struct htab_slot *slot = htab_lookup(&bysku, h, promo_eq, promos, promos[i].sku);

		s[i].promo = promos[i];
		if (slot->idx1 != 0)
			continue;       /* duplicate promotion row: the first one counts */
		if (htab_insert(&bysku, slot, h, (uint32_t)i) < 0)
			goto oom;
	}

	for (size_t i = 0; i < f->nreqs; i++) {
		const struct fold_req *r = &f->reqs[i];
		const struct htab_slot *slot = htab_lookup(&bysku, hash_str(r->sku, 0),
							   promo_eq, promos, r->sku);
		struct fold_sku *k;
		struct user_key uk;
		struct htab_slot *us;
		uint32_t uh;

		if (slot->idx1 == 0)
			continue;       /* refusals of unknown SKUs: records only */
		skuof[i] = slot->idx1;
		k = &s[slot->idx1 - 1];
		k->requests++;
		if (r->st == W_RESERVED) {
			k->held += r->qty;
			k->nholds++;
		} else if (r->st == W_PAID) {
			k->sold += r->qty;
		} else {
			continue;
		}
		uk.sku = slot->idx1 - 1;
		uk.user = r->user;
		uh = hash_str(r->user, uk.sku * 2654435761u + 1);
		us = htab_lookup(&byuser, uh, user_eq, acc, &uk);
		if (us->idx1 != 0) {
			acc[us->idx1 - 1].qty += r->qty;
			continue;
		}
		if (nacc == capacc) {
			size_t cap = capacc ? capacc * 2 : 1024;
			struct user_acc *na = realloc(acc, cap * sizeof(*na));

			if (na == NULL)
				goto oom;
			acc = na;
			capacc = cap;
		}
		acc[nacc].sku = uk.sku;
		acc[nacc].user = r->user;
		acc[nacc].qty = r->qty;
		if (htab_insert(&byuser, us, uh, (uint32_t)nacc) < 0)
			goto oom;
		nacc++;
		s[uk.sku].nusers++;
	}

	for (size_t i = 0; i < npromos; i++) {
		s[i].remaining = s[i].promo.stock - s[i].held - s[i].sold;
		s[i].seq = strmap_get(&f->seq, s[i].promo.sku, 0);
		if (s[i].remaining < 0 && !allow_oversold) {
			snprintf(err, errlen, "ledger oversells sku=%s: stock=%lld held=%lld sold=%lld",
				 s[i].promo.sku, s[i].promo.stock, s[i].held, s[i].sold);
			goto out;
		}
		if (s[i].remaining < 0) {
			s[i].oversold = -s[i].remaining;
			s[i].remaining = 0;
		}
		if (s[i].nusers && (s[i].users = calloc(s[i].nusers, sizeof(*s[i].users))) == NULL)
			goto oom;
		if (s[i].nholds && (s[i].holds = calloc(s[i].nholds, sizeof(*s[i].holds))) == NULL)
			goto oom;
		s[i].nusers = 0;
		s[i].nholds = 0;
	}
	for (size_t i = 0; i < nacc; i++) {
		struct fold_sku *k = &s[acc[i].sku];

		k->users[k->nusers].user = acc[i].user;
		k->users[k->nusers].qty = acc[i].qty;
		k->nusers++;
	}
	for (size_t i = 0; i < f->nreqs; i++) {
		struct fold_sku *k;

		if (skuof[i] == 0 || f->reqs[i].st != W_RESERVED)
			continue;
		k = &s[skuof[i] - 1];
		k->holds[k->nholds].rid = f->reqs[i].rid;
		k->holds[k->nholds].dl = f->reqs[i].dl;
		k->nholds++;
	}
	*out = s;
	s = NULL;
	rc = 0;
	goto out;
oom:
	snprintf(err, errlen, "out of memory summarizing %zu requests", f->nreqs);
out:
	fold_skus_free(s, npromos);
	free(skuof);
	free(acc);
	free(bysku.slot);
	free(byuser.slot);
	return rc;
}

/* Most recent hold first: latest deadline, then request id (deterministic). */
static int hold_cmp_recent(const void *a, const void *b)
{
	const struct fold_hold *x = a, *y = b;

	if (x->dl != y->dl)
		return x->dl > y->dl ? -1 : 1;
	return strcmp(y->rid, x->rid);
}

int fold_plan_correction(const struct fold *f, const struct fold_sku *s,
			 const struct fold_req **out, size_t n, long long *paid_over)
{
	long long excess = s->held + s->sold - s->promo.stock;
	struct fold_hold *h;
	size_t k = 0;

	*paid_over = 0;
	if (excess <= 0)
		return 0;
	h = malloc((s->nholds ? s->nholds : 1) * sizeof(*h));
	if (h == NULL)
		return -1;
	memcpy(h, s->holds, s->nholds * sizeof(*h));
	qsort(h, s->nholds, sizeof(*h), hold_cmp_recent);
	for (size_t i = 0; i < s->nholds && excess > 0 && k < n; i++) {
		const struct fold_req *r = fold_find(f, h[i].rid);

		if (r == NULL || r->st != W_RESERVED)
			continue;
		out[k++] = r;
		excess -= r->qty;
	}
	free(h);
	/* Holds cancelled beyond the excess are fine: a hold is whole. What
	 * remains is sold beyond the stock. */
	*paid_over = excess > 0 ? excess : 0;
	return (int)k;
}
