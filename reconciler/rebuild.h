/*
 * `rebuild`: restore every promotion's Redis state after Redis was lost,
 * from PostgreSQL's ledger_events (a prefix of the ledger, up to
 * ledger_offsets) plus the ledger tail read from Kafka, then set a new epoch
 * in fs:ready so that the deductor sells again (and redoes any batch that
 * straddled the loss: its epoch fence sees the new value).
 */
#ifndef RECONCILER_REBUILD_H
#define RECONCILER_REBUILD_H

#include <stdbool.h>

struct reconciler_cfg;

struct rebuild_opts {
	bool force;        /* rebuild over present state (DEL fs:ready first) */
	bool if_missing;   /* present state: nothing to do, success */
};

/*
 * Blocking, one-shot. Prints one line per SKU and a summary on stdout.
 * 0 on success (or nothing to do), -1 with the reason logged.
 */
int rebuild_run(const struct reconciler_cfg *cfg, const struct rebuild_opts *opt)
	__attribute__((warn_unused_result));

#endif
