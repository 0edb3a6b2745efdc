#include "known.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "store.h"

#define KNOWN_MIN_SLOTS 4096
#define KNOWN_PREFIX "fs:req:"
#define KNOWN_SWEEP_COUNT "1000"
/*
 * An overflowing set would overflow again at once: sweep again this much
 * later, twice as late after each overflow in a row (a sweep of a million
 * keys, per loop of every gateway, is not free), until a sweep completes.
 */
#define KNOWN_OVERFLOW_PAUSE_US (60 * 1000000LL)
#define KNOWN_OVERFLOW_PAUSE_MAX_US (16 * KNOWN_OVERFLOW_PAUSE_US)

static struct metric m_sweeps = { "gateway_known_sweeps_total",
	"Sweeps of fs:req:* that left a loop's set of known request ids complete", NULL,
	METRIC_COUNTER };
static struct metric m_overflows = { "gateway_known_overflows_total",
	"Times a loop's set of known request ids reached its cap (refusals ask Redis meanwhile)",
	NULL, METRIC_COUNTER };

void known_metrics_register(void)
{
	metrics_register(&m_sweeps);
	metrics_register(&m_overflows);
}

/* FNV-1a, then a 64-bit finalizer so that linear probing sees spread bits; never 0. */
static uint64_t known_hash(const char *s)
{
	uint64_t h = 1469598103934665603ULL;

	for (; *s != '\0'; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	return h == 0 ? 1 : h;
}

int known_init(struct known *k, struct gw_store *store, size_t max)
{
	memset(k, 0, sizeof(*k));
	k->slot = calloc(KNOWN_MIN_SLOTS, sizeof(*k->slot));
	if (k->slot == NULL)
		return -1;
	k->mask = KNOWN_MIN_SLOTS - 1;
	k->max = max;
	k->store = store;
	return 0;
}

void known_free(struct known *k)
{
	free(k->slot);
	k->slot = NULL;
}

static void known_put(uint64_t *slot, size_t mask, uint64_t h)
{
	size_t i = (size_t)h & mask;

	while (slot[i] != 0 && slot[i] != h)
		i = (i + 1) & mask;
	slot[i] = h;
}

/*
 * Too many ids: forget them all, incomplete until a sweep (not before a
 * pause). The pause doubles only when a sweep was tried since the last
 * overflow and overflowed too: the SCANs are what the back-off spares.
 * Tells overflowing the set again between sweeps leave it as it is.
 */
static void known_overflow(struct known *k)
{
	memset(k->slot, 0, (k->mask + 1) * sizeof(*k->slot));
	k->n = 0;
	k->complete = false;
	k->gen++;
	k->overflow_us = mono_us();
	if (k->overflow_pause_us == 0)
		k->overflow_pause_us = KNOWN_OVERFLOW_PAUSE_US;
	else if (k->swept_since_overflow)
		k->overflow_pause_us = 2 * k->overflow_pause_us > KNOWN_OVERFLOW_PAUSE_MAX_US ?
			KNOWN_OVERFLOW_PAUSE_MAX_US : 2 * k->overflow_pause_us;
	k->swept_since_overflow = false;
	metric_add(&m_overflows, 1);
	log_warn("known_ids_overflow", "max=%zu next_sweep_s=%lld msg=\"more request ids on "
		 "record than a loop keeps: refusals ask Redis until the next sweep\"", k->max,
		 (long long)(k->overflow_pause_us / 1000000));
}

void known_note(struct known *k, const char *rid)
{
	uint64_t h = known_hash(rid), *grown;
	size_t i = (size_t)h & k->mask;

	while (k->slot[i] != 0) {
		if (k->slot[i] == h)
			return;
		i = (i + 1) & k->mask;
	}
	if (k->n + 1 > k->max) {
		known_overflow(k);
		return;
	}
	if (2 * (k->n + 1) > k->mask + 1) {
		size_t slots = 2 * (k->mask + 1);

		grown = calloc(slots, sizeof(*grown));
		if (grown == NULL) {
			known_overflow(k);
			return;
		}
		for (size_t j = 0; j <= k->mask; j++)
			if (k->slot[j] != 0)
				known_put(grown, slots - 1, k->slot[j]);
		free(k->slot);
		k->slot = grown;
		k->mask = slots - 1;
	}
	known_put(k->slot, k->mask, h);
	k->n++;
}

void known_note_list(struct known *k, const char *ids)
{
	char rid[FS_ID_MAX + 1];

	while (*ids != '\0') {
		size_t n = strcspn(ids, " ");

		if (n > 0 && n < sizeof(rid)) {
			memcpy(rid, ids, n);
			rid[n] = '\0';
			known_note(k, rid);
		}
		ids += n;
		ids += strspn(ids, " ");
	}
}

bool known_may_exist(const struct known *k, const char *rid, int64_t now_us)
{
	uint64_t h;
	size_t i;

	if (!k->complete || now_us - k->caught_up_us > KNOWN_LAG_US)
		return true;
	h = known_hash(rid);
	for (i = (size_t)h & k->mask; k->slot[i] != 0; i = (i + 1) & k->mask)
		if (k->slot[i] == h)
			return true;
	return false;
}

void known_caught_up(struct known *k, int64_t t)
{
	if (t > k->caught_up_us)
		k->caught_up_us = t;
}

void known_lost(struct known *k, bool still_live)
{
	k->live = still_live;
	k->complete = false;
	k->gen++;
}

void known_live(struct known *k)
{
	known_lost(k, true);
	/* From here every tell arrives; what came before, the sweep finds. */
	known_caught_up(k, mono_us());
	known_sweep(k);
}

static void known_sweep_cb(redisAsyncContext *ac, void *reply, void *privdata);

static int known_scan(struct known *k)
{
	const char *argv[] = { "SCAN", k->cursor, "MATCH", KNOWN_PREFIX "*", "COUNT",
			       KNOWN_SWEEP_COUNT };

	if (gw_store_command_argv(k->store, known_sweep_cb, k, 6, argv, NULL) < 0)
		return -1;
	k->sweeping = true;
	return 0;
}

void known_sweep(struct known *k)
{
	if (k->sweeping || !k->live || k->complete || !gw_store_ready(k->store))
		return;
	if (k->overflow_us != 0 && mono_us() - k->overflow_us < k->overflow_pause_us)
		return;
	k->sweep_gen = k->gen;
	snprintf(k->cursor, sizeof(k->cursor), "0");
	if (known_scan(k) < 0)
		return;
	k->swept_since_overflow = true;
	log_debug("known_sweep_started", "ids=%zu", k->n);
}

/*
 * One SCAN page. A sweep that saw a loss (or an overflow) since it began
 * proves nothing: it starts over, when one is due. A lost connection ends
 * it; the cache tick starts the next.
 */
static void known_sweep_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct known *k = privdata;
	redisReply *r = reply, *keys;
	size_t plen = strlen(KNOWN_PREFIX);

	(void)ac;
	k->sweeping = false;
	if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
	    r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_ARRAY ||
	    r->element[0]->len >= sizeof(k->cursor))
		return;
	if (k->gen != k->sweep_gen) {
		known_sweep(k);
		return;
	}
	keys = r->element[1];
	for (size_t i = 0; i < keys->elements && k->gen == k->sweep_gen; i++) {
		const redisReply *e = keys->element[i];

		if (e->type == REDIS_REPLY_STRING && e->len > plen &&
		    memcmp(e->str, KNOWN_PREFIX, plen) == 0)
			known_note(k, e->str + plen);
	}
	if (k->gen != k->sweep_gen)
		return;                 /* overflowed: known_sweep waits for the pause */
	if (strcmp(r->element[0]->str, "0") == 0) {
		k->complete = k->live;
		if (k->complete) {
			k->overflow_pause_us = 0;
			metric_add(&m_sweeps, 1);
			log_info("known_ids_complete", "ids=%zu", k->n);
		}
		return;
	}
	memcpy(k->cursor, r->element[0]->str, r->element[0]->len + 1);
	(void)known_scan(k);
}
