/*
 * Hot keys: the purchase attempts each SKU gets, per second, at this
 * gateway. Every second the top GW_HOT_TOP SKUs go to /metrics
 * (gateway_hot_sku_requests_per_second{rank,sku}) and a SKU that crosses
 * gateway.hot_sku_threshold gets a log line (and another when it falls
 * back), so an operator sees where a spike lands. Event loop thread only.
 */
#ifndef FLASHSALE_GATEWAY_HOTKEY_H
#define FLASHSALE_GATEWAY_HOTKEY_H

#include <pthread.h>

#include "metrics.h"
#include "strmap.h"
#include "util.h"

#define GW_HOT_TOP 5

struct event_base;
struct event;

struct hotkeys {
	pthread_mutex_t mu;          /* every event loop notes into the one window */
	struct strmap cur;           /* sku -> attempts this second */
	struct strmap hot;           /* skus above the threshold, for the falling edge */
	struct event *tick;
	long long threshold;         /* attempts per second; 0: no log lines */
	struct metric top[GW_HOT_TOP];
	char labels[GW_HOT_TOP][FS_ID_MAX + 32];
};

/* Start the one-second tick and register the metrics (start-up). */
int hotkeys_init(struct hotkeys *h, struct event_base *base, long long threshold) FS_MUSTCHECK;
void hotkeys_free(struct hotkeys *h);

/* One purchase attempt of a known SKU. */
void hotkeys_note(struct hotkeys *h, const char *sku);

/*
 * The window's end: publish the top SKUs and the threshold crossings, then
 * start a new window. The tick calls it; exposed for the unit test.
 */
void hotkeys_roll(struct hotkeys *h);

#endif
