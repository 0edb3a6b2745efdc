/*
 * The promotion cache: every refresh_ms the gateway reads Redis TIME, the
 * set of SKUs and the promotion hashes of a slice of them (pipelined), and
 * updates its sorted table in place (a new table when the set changed),
 * plus the offset between its clock and the Redis clock. Filters read
 * the table without any I/O. Counters may be up to one refresh stale: the
 * cache only turns away what is certainly hopeless, the deductor decides.
 * If Redis is away the table keeps its last content and ages; past
 * cache_max_age_ms purchases are refused with 503.
 */
#ifndef FLASHSALE_GATEWAY_PROMO_H
#define FLASHSALE_GATEWAY_PROMO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "metrics.h"
#include "util.h"

struct gateway;
struct event;
struct promo_refresh;
struct redisReply;
struct board_item;

struct promo {
	char sku[FS_ID_MAX + 1];
	int64_t initial, remaining, held, sold, limit, start_ms, end_ms, hold_ms;
	int64_t earliest_ms;        /* the earliest hold's deadline (Redis clock), 0: none */
	int64_t noted_ms;           /* Redis time counters were pushed (promo_note_counts) */
	int64_t push_seq;           /* the highest change number (fs:promo seq) read or pushed */
	/* Its limits (fs:cfg:<sku>, the admin API); 0: the gateway's defaults. */
	int64_t k_pct, ip_rate_per_s, user_rate_per_s, sku_rate_per_s;
	int64_t added_us;           /* mono time an admin call added it locally, else 0 */
};

/* TIME round trips the Redis clock's offset is chosen from (promo_clock_sample). */
#define PROMO_CLOCK_SAMPLES 16
/* Two clocks drift apart by well under this over PROMO_CLOCK_SAMPLES refreshes. */
#define PROMO_CLOCK_DRIFT_US 2000

struct promo_clock_sample {
	int64_t rtt_us, offset_us;
};

struct promo_cache {
	struct promo *items;        /* sorted by sku */
	size_t n;
	int64_t clock_offset_ms;    /* Redis clock - local wall clock */
	struct promo_clock_sample clock[PROMO_CLOCK_SAMPLES];  /* the latest, a ring */
	size_t clock_n;             /* samples taken, ever */
	bool state_lost;            /* last refresh found fs:ready absent */
	int64_t refreshed_us;       /* mono time of the last complete refresh, 0 = never */
	int64_t refreshed_redis_ms; /* Redis time at which that refresh began */
	struct event *timer;
	struct event *catchup_ev;   /* the next slice of a catch-up, at once */
	struct promo_refresh *cur;  /* the refresh under way, if any */
	uint64_t skus_sum;          /* promo_sku_hash summed over items: the set's digest */
	long long refresh_ms;
	long long max_age_ms;
	uint64_t slice;             /* refreshes begun: which slice of a large catalogue is read */
	uint64_t catchup;           /* slices still to read back to back (promo_refresh_now) */
};

/*
 * SKUs whose hashes one refresh reads at most, beyond new ones. Reading
 * 10,000 SKUs' hashes (30,000 pipelined commands) stalled a loop for about
 * 100 ms every refresh_ms; a catalogue that large is read a slice per
 * refresh, each SKU once every ceil(SKUs / PROMO_SLICE_SKUS) refreshes.
 * Pushes (fs:chg) carry what cannot wait: running out and coming back. A
 * catch-up (promo_refresh_now) reads the slices back to back, so that it
 * never stalls a loop longer than one slice does either.
 */
#define PROMO_SLICE_SKUS 1000

/* Age of the cache, set by the refresh timer; routes_metrics_register registers it. */
extern struct metric gw_m_cache_age;

/* Start the refresh timer (first refresh after refresh_ms). Start-up only. */
int promo_init(struct gateway *gw) FS_MUSTCHECK;
void promo_free(struct gateway *gw);

/*
 * One TIME round trip of rtt_us (monotonic), answered at local wall-clock
 * recv_us with Redis saying redis_us. Sets clock_offset_ms to the offset
 * of the sample with the shortest round trip among the last
 * PROMO_CLOCK_SAMPLES (NTP's clock filter; 8 s at the default refresh_ms).
 * A reply that waited behind other commands, an fsync or a busy core says
 * little of when it was made: under a sale's load single samples put the
 * Redis clock up to 50 ms either side of the host's own, on one host
 * (bench/run scaling, 1,000,000 x 10,000). A sample that cannot agree
 * with the best one (their ranges, offset +- rtt / 2, do not meet) means a
 * clock stepped: the older samples are dropped and it is taken at once.
 */
void promo_clock_sample(struct promo_cache *c, int64_t rtt_us, int64_t recv_us,
			int64_t redis_us);

/* A refresh item whose promotion hash did not parse: the SKU is dropped. */
#define PROMO_HASH_BAD (-2)

/* Binary search; NULL when the SKU is unknown. */
const struct promo *promo_find(const struct promo_cache *c, const char *sku);

/* Age of the content in ms (INT64_MAX when never refreshed). */
int64_t promo_age_ms(const struct promo_cache *c);

/* True when the content is young enough to filter purchases with. */
bool promo_fresh(const struct promo_cache *c);

/* "upcoming", "active", "sold_out" or "ended" at now (Redis clock, ms). */
const char *promo_status(const struct promo *p, int64_t now);

/* Insert or replace one entry (sorted insert). -1 on allocation failure. */
int promo_put(struct promo_cache *c, const struct promo *p) FS_MUSTCHECK;

/*
 * Fill p's counters from 8 replies (HMGET of a promotion hash): initial
 * remaining held sold limit start_ms end_ms hold_ms. false when one is not
 * an integer.
 */
bool promo_from_replies(struct promo *p, struct redisReply **e) FS_MUSTCHECK;

/*
 * The deductor refused a one-unit purchase of sku as sold out at at_ms
 * (Redis clock): nothing was left then. If that is newer than the table,
 * flag it now, so the spike behind it is turned away here rather than
 * queued, until the next refresh says otherwise (a hold that expires or is
 * cancelled brings units back). Older refusals are ignored: polling an old
 * result must not hide units that came back.
 */
void promo_note_sold_out(struct promo_cache *c, const char *sku, int64_t at_ms);

/*
 * Fresh counters of sku, pushed by the deductor (fs:chg) or learnt from an
 * admission: they win over any refresh that began before now, so a push is
 * never undone by an older read. Unknown SKUs are ignored.
 */
void promo_note_counts(struct promo_cache *c, const char *sku, int64_t remaining, int64_t held,
		       int64_t earliest_ms, const char *via);

/*
 * A push (fs:chg) this loop read, or caught up from the board (board.h):
 * applied as promo_note_counts when its change number is above the
 * highest its SKU has (read by a refresh or pushed before); a push
 * without one always is. false when it was old news or the SKU unknown.
 */
bool promo_note_push(struct promo_cache *c, const struct board_item *it, const char *via) FS_MUSTCHECK;

/*
 * Apply what other loops of the process read first (board.h) to this
 * loop's cache: before a purchase is filtered. Event loop thread.
 */
void promo_catch_up(struct gateway *gw);

/* Pushes applied from the board (promo_catch_up); push.c registers it. */
extern struct metric gw_m_board_applied;

/*
 * Read every SKU again now, a slice after another (a reconnect may have
 * missed pushes, an admin call changed a promotion); if a refresh runs,
 * the catch-up starts when it ends.
 */
void promo_refresh_now(struct gateway *gw);

/*
 * Whether the refresh numbered slice reads sku's hashes when the set holds
 * members SKUs: always for a full refresh (the first), a catalogue of at
 * most PROMO_SLICE_SKUS and a SKU c does not know; otherwise when the
 * SKU's hash falls in this refresh's slice.
 */
bool promo_slice_reads(const struct promo_cache *c, const char *sku, size_t members,
		       uint64_t slice, bool full);

/* FNV-1a of a SKU: its slice, and its part of the set's digest. */
uint64_t promo_sku_hash(const char *sku);

/*
 * Whether n SKUs whose promo_sku_hash values add up to sum (mod 2^64) are
 * the table's own SKUs. A digest: a set that changed but kept its size and
 * its sum is a 2^-64 accident, and SKUs are only ever added to the set.
 */
bool promo_same_set(const struct promo_cache *c, size_t n, uint64_t sum);

/*
 * A sliced refresh of the table's own set (promo_same_set), read at
 * redis_ms, applied in place: the table a rebuild would make, without
 * building one. Per item: read counters replace the cached ones unless a
 * push newer than redis_ms set them (noted_ms); a missing hash (initial
 * -1) keeps the cached entry; a bad one (PROMO_HASH_BAD) drops the SKU; a
 * SKU the table does not have is inserted. -1 when an insert failed for
 * memory (that SKU is read again at its next refresh).
 */
int promo_apply_slice(struct promo_cache *c, const struct promo *items, size_t n,
		      int64_t redis_ms) FS_MUSTCHECK;

/*
 * A refresh's items, compacted in place: an item whose hash was missing
 * (initial == -1: not loaded yet, or Redis lost its state between the
 * refresh's SMEMBERS and its HMGET, as a FLUSHALL does) keeps the cached
 * entry of its SKU if c has one, else is dropped; one whose hash was bad
 * (PROMO_HASH_BAD) is dropped. Returns the items kept.
 */
size_t promo_keep_known(const struct promo_cache *c, struct promo *items, size_t n);
/* The other event loops refresh theirs now (an admin change on this one). */
void promo_refresh_others(struct gateway *gw);

#endif
