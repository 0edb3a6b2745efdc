/*
 * Admission: the funnel's gate in front of Kafka. A purchase that passed the
 * gateway's local filters waits here for the rest of the loop turn; then
 * the whole turn's purchases go to Redis in one script call (admit.lua),
 * which admits each one while the SKU's admitted-but-undecided units stay
 * within k x its remaining units, shared by every gateway. One round trip
 * per loop turn, not per purchase: under a spike a turn holds hundreds.
 *
 * The same call writes each admitted purchase's "queued" marker and answers
 * a request id seen before with its state, so a retry is never admitted
 * twice and never contradicted. admit.lua says how the budget heals.
 *
 * While a SKU's budget is large, the loop holds a lease of it (at most
 * lease_units, for lease_ms): a purchase with a new request id takes a
 * unit of the lease (admit_lease_take), goes to Kafka at once, and its
 * marker is written by the next call (admit_mark; after the call in
 * flight, if any, which it would queue behind in Redis anyway), in
 * parallel with Kafka's acknowledgement instead of before it. Grants and returns ride
 * on the same calls; proto/README.md ("Leases") argues why the budget
 * stays within k x remaining and cannot leak.
 * Event loop thread only.
 */
#ifndef FLASHSALE_GATEWAY_ADMIT_H
#define FLASHSALE_GATEWAY_ADMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "redisx.h"
#include "util.h"

struct event_base;
struct event;
struct gw_store;

enum admit_verdict {
	ADMIT_OK,           /* admitted: produce it */
	ADMIT_KNOWN,        /* seen before: state says what it is */
	ADMIT_SOLD_OUT,     /* nothing left; may_return while units are held */
	ADMIT_CLAIMED,      /* units left, all claimed by purchases on their way */
	ADMIT_SKU_RATE,     /* the SKU's rate across all gateways is used up */
	ADMIT_UNKNOWN_SKU,
	ADMIT_UNAVAILABLE,  /* Redis unreachable or not ready: fail closed */
	ADMIT_INFLIGHT,     /* the global cap of purchases on their way is reached */
	ADMIT_NOT_READY,    /* Redis is there, its state lost (fs:ready absent): rebuild first */
};

struct admit_result {
	enum admit_verdict verdict;
	char state[24];             /* ADMIT_KNOWN: the purchase's state */
	int64_t retry_after_ms;     /* SOLD_OUT, CLAIMED, SKU_RATE: when to try again */
	bool may_return;            /* SOLD_OUT: held units may come back */
};

/* Called once per submitted purchase, on the loop, with what Redis said. */
typedef void (*admit_done_cb)(void *arg, void *opaque, const struct admit_result *r);

/* "~" 8 hex digits "." admission "." sequence: never a buyer's (scoped) id. */
#define ADMIT_LEASE_ID_MAX 48
#define ADMIT_LEASES_MAX 64     /* SKUs one loop holds or asks leases of */

struct admit_item {
	char sku[FS_ID_MAX + 1];
	char rid[FS_ID_MAX + 1];
	char lease[ADMIT_LEASE_ID_MAX];   /* a mark: produced under this lease */
	int64_t qty;
	void *opaque;
	int64_t again_until_us;           /* a mark sent again (admit_mark_again): mono */
};

/* One SKU's lease as this loop sees it. */
struct admit_lease {
	char sku[FS_ID_MAX + 1];
	char id[ADMIT_LEASE_ID_MAX];    /* "": none held */
	int64_t left;                   /* units this loop may still give */
	int64_t granted;                /* units the lease held came with */
	int64_t next_ask_us;            /* mono: no ask before this */
	int64_t expires_us;             /* mono: given no more after this, returned */
	int64_t seen_us;                /* mono: this SKU's last purchase here */
	int misses;                     /* purchases admitted the slow way since */
	bool asked;                     /* a grant is on its way */
};

/* A grant asked or a return, for the next call. */
struct admit_lease_op {
	bool grant;
	char sku[FS_ID_MAX + 1];
	char id[ADMIT_LEASE_ID_MAX];
	int64_t units;
};

struct admission {
	struct gw_store *store;
	struct event *flush_ev;
	struct admit_item *items;   /* this turn's purchases */
	size_t n, cap;
	bool flush_armed;           /* flush_ev is active: a call goes this turn */
	struct admit_item *spare;   /* a finished call's array, for the next turn */
	size_t spare_cap;
	size_t max_batch;
	long long record_ttl_s;
	long long default_k_pct;
	long long global_cap;       /* admitted-but-undecided units over all SKUs, 0: none */
	admit_done_cb done;
	void *arg;
	char sha[41];               /* of admit.lua: EVALSHA, EVAL after NOSCRIPT */
	struct resp cmd;            /* the call being sent, its buffer kept for the next */
	long long batches_in_flight;
	/* leases: lease_units 0 turns them off */
	long long lease_units;      /* asked per grant */
	long long lease_ms;         /* a lease's life here */
	long long lease_min_free;   /* a SKU's smallest free budget leases come from */
	struct admit_lease leases[ADMIT_LEASES_MAX];
	size_t nleases;
	struct admit_lease_op *ops; /* for the next call */
	size_t nops, ops_cap;
	char lease_prefix[24];
	unsigned long long lease_seq;
	struct event *lease_ev;     /* returns expired leases, sends marks again */
	/* marks whose call failed, for a call once Redis is back */
	struct admit_item *again;
	size_t nagain, again_cap;
	long long again_ms;         /* how long a mark is sent again */
	int64_t again_next_us;      /* mono: no resend before (backs off while refused) */
	int64_t again_step_ms;
};

#define ADMIT_AGAIN_MS 60000    /* well within any record's life (gateway.record_ttl_s) */
#define ADMIT_AGAIN_MAX 10000   /* marks one loop keeps sending again */

/* Start-up: -1 on allocation failure. */
int admit_init(struct admission *a, struct event_base *base, struct gw_store *store,
	       long long record_ttl_s, long long default_k_pct, long long global_cap,
	       admit_done_cb done, void *arg) FS_MUSTCHECK;
void admit_free(struct admission *a);

/*
 * Queue one purchase for this loop turn's admission call. done runs later,
 * exactly once (ADMIT_UNAVAILABLE at once if it cannot even be queued).
 */
void admit_submit(struct admission *a, const char *sku, const char *rid, int64_t qty,
		  void *opaque);

/*
 * A unit of this loop's lease of sku for a purchase of a new request id:
 * true with the lease's id in id (the caller produces it now and calls
 * admit_mark), false when there is none to give (admit_submit instead).
 * Asks for a lease, or the next one, on the way.
 */
bool admit_lease_take(struct admission *a, const char *sku, int64_t qty, int64_t now_us,
		      char id[ADMIT_LEASE_ID_MAX]) FS_MUSTCHECK;

/*
 * Record a purchase produced under lease (admit_lease_take) with this
 * turn's call: done runs once, ADMIT_OK when its marker is written,
 * ADMIT_KNOWN when its id had a record already.
 */
void admit_mark(struct admission *a, const char *sku, const char *rid, int64_t qty,
		const char *lease, void *opaque);

/*
 * A mark answered ADMIT_UNAVAILABLE or ADMIT_NOT_READY whose purchase Kafka
 * took: it is sent again, with a call of the loop's once Redis is there
 * (looked at every 100 ms; refused again, the next try waits twice as long,
 * up to 5 s), until Redis records it (or finds the deductor's record), for
 * again_ms at most; done is not called for it. Meanwhile only the gateway
 * that answered the 202 knows the purchase, as far as its memory of recent
 * 202s goes (routes.c, routes_recent_known); after, every gateway finds its
 * marker.
 */
void admit_mark_again(struct admission *a, const char *sku, const char *rid, int64_t qty,
		      const char *lease);

/* Give every lease back (drain, shutdown) and ask for none any more. */
void admit_leases_return(struct admission *a);

/*
 * Kafka definitely refused an admitted purchase: give its place back and
 * drop its marker (unadmit.lua), fire and forget; the reconciler's heal
 * catches what this misses.
 */
void admit_release(struct admission *a, const char *sku, const char *rid);

/* The verdicts' names, for logs and answers. */
const char *admit_verdict_name(enum admit_verdict v);

/* Admission metrics (admitted, refused by verdict, batch sizes); start-up. */
void admit_metrics_register(void);

#endif
