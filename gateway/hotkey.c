#include "hotkey.h"

#include <stdio.h>
#include <string.h>

#include <event2/event.h>

#include "log.h"

void hotkeys_note(struct hotkeys *h, const char *sku)
{
	int64_t n;
	int rc;

	pthread_mutex_lock(&h->mu);
	rc = strmap_add(&h->cur, sku, 1, &n);
	pthread_mutex_unlock(&h->mu);
	if (rc < 0)
		log_debug("hotkey_oom", "sku=%s", sku);
}

void hotkeys_roll(struct hotkeys *h)
{
	const struct strmap_slot *best[GW_HOT_TOP] = { NULL };

	pthread_mutex_lock(&h->mu);
	for (size_t i = 0; h->cur.slot != NULL && i <= h->cur.mask; i++) {
		const struct strmap_slot *s = &h->cur.slot[i];
		int pos = GW_HOT_TOP;

		if (s->key == NULL)
			continue;
		/* Its place in the sorted top list, if any; those below move down. */
		while (pos > 0 && (best[pos - 1] == NULL || best[pos - 1]->value < s->value))
			pos--;
		if (pos < GW_HOT_TOP) {
			memmove(&best[pos + 1], &best[pos],
				(size_t)(GW_HOT_TOP - 1 - pos) * sizeof(best[0]));
			best[pos] = s;
		}
		if (h->threshold > 0 && s->value >= h->threshold &&
		    strmap_get(&h->hot, s->key, 0) == 0) {
			log_warn("hot_sku", "sku=%s requests_per_s=%lld threshold=%lld", s->key,
				 (long long)s->value, h->threshold);
			if (strmap_put_max(&h->hot, s->key, 1) < 0)
				log_debug("hotkey_oom", "sku=%s", s->key);
		}
	}
	for (int j = 0; j < GW_HOT_TOP; j++) {
		if (best[j] != NULL)
			snprintf(h->labels[j], sizeof(h->labels[j]), "rank=\"%d\",sku=\"%s\"", j + 1,
				 best[j]->key);
		else
			snprintf(h->labels[j], sizeof(h->labels[j]), "rank=\"%d\",sku=\"\"", j + 1);
		metric_set(&h->top[j], best[j] != NULL ? best[j]->value : 0);
	}
	/* The falling edge: hot SKUs now below the threshold. */
	for (size_t i = 0; h->hot.slot != NULL && i <= h->hot.mask; i++) {
		struct strmap_slot *s = &h->hot.slot[i];
		int64_t left;

		if (s->key == NULL || strmap_get(&h->cur, s->key, 0) >= h->threshold)
			continue;
		log_info("hot_sku_cooled", "sku=%s requests_per_s=%lld", s->key,
			 (long long)strmap_get(&h->cur, s->key, 0));
		if (strmap_add(&h->hot, s->key, -s->value, &left) < 0)
			log_debug("hotkey_oom", "sku=%s", s->key);
		i--;    /* the removal may have moved a later key here */
	}
	strmap_clear(&h->cur);
	pthread_mutex_unlock(&h->mu);
}

static void hotkeys_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	hotkeys_roll(arg);
}

int hotkeys_init(struct hotkeys *h, struct event_base *base, long long threshold)
{
	struct timeval tv = { 1, 0 };

	memset(h, 0, sizeof(*h));
	if (pthread_mutex_init(&h->mu, NULL) != 0)
		return -1;
	strmap_init(&h->cur);
	strmap_init(&h->hot);
	h->threshold = threshold;
	for (int j = 0; j < GW_HOT_TOP; j++) {
		snprintf(h->labels[j], sizeof(h->labels[j]), "rank=\"%d\",sku=\"\"", j + 1);
		h->top[j].name = "gateway_hot_sku_requests_per_second";
		h->top[j].help = "Purchase attempts per second of the busiest SKUs at this gateway";
		h->top[j].labels = h->labels[j];
		h->top[j].type = METRIC_GAUGE;
		metrics_register(&h->top[j]);
	}
	if (base == NULL)
		return 0;      /* the unit test rolls by hand */
	h->tick = event_new(base, -1, EV_PERSIST, hotkeys_tick, h);
	if (h->tick == NULL || event_add(h->tick, &tv) < 0)
		return -1;
	return 0;
}

void hotkeys_free(struct hotkeys *h)
{
	if (h->tick != NULL)
		event_free(h->tick);
	strmap_free(&h->cur);
	strmap_free(&h->hot);
	pthread_mutex_destroy(&h->mu);
	h->tick = NULL;
}
