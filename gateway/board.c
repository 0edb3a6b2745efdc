#include "board.h"

#include <string.h>

int board_init(struct board *b)
{
	memset(b, 0, sizeof(*b));
	strmap_init(&b->seq);
	return pthread_mutex_init(&b->mu, NULL) == 0 ? 0 : -1;
}

void board_free(struct board *b)
{
	strmap_free(&b->seq);
	pthread_mutex_destroy(&b->mu);
}

bool board_post(struct board *b, const struct board_item *it)
{
	bool first = false;

	if (it->seq <= 0)
		return false;
	pthread_mutex_lock(&b->mu);
	/* Out of memory: not posted; the other loops' own subscribers bring it. */
	if (strmap_get(&b->seq, it->sku, 0) < it->seq && strmap_put_max(&b->seq, it->sku, it->seq) == 0) {
		b->ring[b->posted % BOARD_RING] = *it;
		__atomic_store_n(&b->posted, b->posted + 1, __ATOMIC_RELEASE);
		first = true;
	}
	pthread_mutex_unlock(&b->mu);
	return first;
}

void board_catch_up(struct board *b, uint64_t *cursor,
		    void (*apply)(void *arg, const struct board_item *it), void *arg)
{
	uint64_t from = *cursor, end;

	if (__atomic_load_n(&b->posted, __ATOMIC_ACQUIRE) == from)
		return;
	pthread_mutex_lock(&b->mu);
	end = b->posted;
	if (end - from > BOARD_RING)
		from = end - BOARD_RING;
	for (uint64_t i = from; i < end; i++)
		apply(arg, &b->ring[i % BOARD_RING]);
	*cursor = end;
	pthread_mutex_unlock(&b->mu);
}
