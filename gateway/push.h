/*
 * The deductor's pushes: a second Redis connection subscribed to two
 * channels deduct.lua publishes on.
 *   fs:chg  a SKU runs out or has units again ("sku remaining held
 *           earliest_deadline_ms changed_ms"). Each one updates the
 *           promotion cache at once, so every gateway refuses a sold-out
 *           SKU, or reopens it, within milliseconds instead of at its next
 *           refresh. After a (re)connect the cache is refreshed: pushes
 *           sent meanwhile are lost.
 *   fs:st   a purchase changed state ("request_id state"): the long polls
 *           waiting on it look now (routes_purchase_moved). While this
 *           subscription is down (live false) they look for themselves,
 *           more often. Also the ids Redis has records of (known.h).
 *   fs:echo:<nonce>  this loop's own: every PUSH_ECHO_MS it publishes its
 *           clock there through its commands connection; the echo back
 *           proves the subscriber has read everything published before
 *           (known.h). A subscriber with no echo back for PUSH_STALL_MS
 *           is dropped and connects again: a socket that died silently
 *           never errors on its own.
 * Event loop thread only.
 */
#ifndef FLASHSALE_GATEWAY_PUSH_H
#define FLASHSALE_GATEWAY_PUSH_H

#include "store.h"
#include "util.h"

struct gateway;
struct board_item;

#define PUSH_ECHO_MS 100
#define PUSH_STALL_MS 3000

struct event;

struct gw_push {
	struct gateway *gw;
	struct gw_store sub;
	bool live;                  /* fs:st subscribed: long polls are woken */
	char echo[48];              /* fs:echo:<nonce>, this loop's */
	struct event *echo_ev;
	int64_t unanswered_us;      /* mono time of the oldest echo not back, 0: none */
};

/* Start-up: connect and subscribe (never blocks). -1 on allocation failure. */
int push_init(struct gw_push *p, struct gateway *gw, const char *address) FS_MUSTCHECK;
void push_close(struct gw_push *p);
void push_free(struct gw_push *p);

/*
 * Parse one fs:chg payload, "sku remaining held earliest_ms [changed_ms
 * [seq]]" (changed_ms, the Redis time of the change, and seq, the SKU's
 * change number, are 0 when absent: deductors of earlier versions). false
 * when malformed. Exposed for the unit test.
 */
bool push_parse(const char *msg, struct board_item *it) FS_MUSTCHECK;


/* Pushes received, by outcome (start-up). */
void push_metrics_register(void);

#endif
