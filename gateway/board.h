/*
 * The board: the deductor's latest pushes (fs:chg), shared by every event
 * loop of the process.
 *
 * Each loop has a subscriber of its own (push.h), and on a busy machine
 * one loop may read a push tens of milliseconds after another: it is in
 * the middle of a turn of requests, or waiting for a core. Until then it
 * would still let buyers of a SKU that ran out through to admission, or
 * refuse those of one that has units again. So the first loop to read a
 * push posts it here, and every loop catches up with the board before it
 * filters a purchase: the process knows a SKU ran out as soon as its
 * quickest loop does.
 *
 * A push carries its SKU's change number (deduct.lua, fs:promo seq), and a
 * loop applies a change only when it is newer than the one it has
 * (promo_note_push), so the same push read twice, or an older one read
 * late, changes nothing. The board keeps the last BOARD_RING posts; a loop
 * further behind than that skips to them, and its own subscriber brings
 * the rest, in order. A SKU whose numbers start again lower (its state
 * wiped and loaded anew without the ledger) is not posted until they pass
 * the old ones: its loops learn from their own subscribers and refreshes
 * meanwhile, as before the board.
 *
 * board_post takes a mutex (a push is rare next to requests); board_catch_up
 * is one atomic load when nothing was posted since the loop's cursor.
 */
#ifndef FLASHSALE_GATEWAY_BOARD_H
#define FLASHSALE_GATEWAY_BOARD_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "strmap.h"
#include "util.h"

#define BOARD_RING 1024

/* One fs:chg push (push_parse). */
struct board_item {
	char sku[FS_ID_MAX + 1];
	int64_t remaining, held;
	int64_t earliest_ms;        /* the earliest hold's deadline, 0: none */
	int64_t changed_ms;         /* Redis time of the change, 0: not sent (older deductor) */
	int64_t seq;                /* the SKU's change number, 0: not sent (older deductor) */
};

struct board {
	pthread_mutex_t mu;
	struct strmap seq;          /* sku -> the highest change number posted */
	struct board_item ring[BOARD_RING];
	uint64_t posted;            /* atomic: posts ever; the newest is ring[(posted - 1) % BOARD_RING] */
};

int board_init(struct board *b) FS_MUSTCHECK;
void board_free(struct board *b);

/*
 * Post a push a loop read. true when the board did not have it (this loop
 * read it first): a change with a number the board has seen for its SKU,
 * or one without a number, is not posted. Any thread.
 */
bool board_post(struct board *b, const struct board_item *it) FS_MUSTCHECK;

/*
 * Hand the posts made since *cursor to apply, oldest first (at most the
 * last BOARD_RING), and move *cursor to the newest. apply runs with the
 * board locked: it must not post. A loop's cursor starts at 0.
 */
void board_catch_up(struct board *b, uint64_t *cursor,
		    void (*apply)(void *arg, const struct board_item *it), void *arg);

#endif
