/*
 * Restoring Redis from the ledger: PostgreSQL's ledger_events (a prefix of
 * the ledger, up to ledger_offsets) plus the ledger tail read from Kafka,
 * folded (fold.h) into exactly the state the deductor's steps left.
 *
 * The unit of work is a set of intents partitions (a SKU's keys, intents
 * and ledger events all belong to kafka_partition_of(sku)):
 *   - after Redis was lost (fs:ready absent) every partition is rebuilt and
 *     fs:ready is set last, with a new epoch;
 *   - otherwise the partitions are fenced (fs:fence[p], which deduct.lua
 *     honours), the fold is written over them, and their fences are lifted.
 *     The deductor fences a partition itself when Redis went back in time;
 *     `reconciler run` repairs those fences automatically.
 * Nothing is deleted before the fold is known to be writable: a run that
 * cannot finish lifts only the fences it set itself and says why, and
 * fs:ready is never deleted.
 */
#ifndef FLASHSALE_RECONCILER_REBUILD_H
#define FLASHSALE_RECONCILER_REBUILD_H

#include <stdbool.h>

#include "util.h"

struct rc_config;

enum rebuild_mode {
	REBUILD_MISSING,   /* `rebuild`: only when fs:ready is absent */
	REBUILD_FORCE,     /* `rebuild --force`: over a live state, behind fences */
	REBUILD_REPAIR,    /* `repair`: the partitions the deductor fenced */
	REBUILD_CORRECT,   /* `correct`: as FORCE, cancelling unpaid holds beyond the stock */
};

struct rebuild_opts {
	enum rebuild_mode mode;
	bool if_missing;   /* MISSING over a present state: nothing to do, success */
	int partition;     /* only this partition (-1: all, or every fenced one) */
	bool no_wait;      /* REPAIR: skip fences younger than rebuild_quiesce_ms, never sleep */
	bool quiet;        /* no per-SKU lines on stdout (the daemon) */
};

/* What a run did, for the daemon's health and metrics. */
struct rebuild_report {
	int partitions;    /* partitions written */
	int skipped;       /* fences not old enough yet (no_wait) */
	char err[512];     /* why it failed */
};

/*
 * Blocking, one-shot. Prints one line per SKU and a summary on stdout
 * unless quiet. 0 on success (or nothing to do), -1 with the reason logged
 * and in report->err (report may be NULL).
 */
int rebuild_run(const struct rc_config *cfg, const struct rebuild_opts *opt,
		struct rebuild_report *report) FS_MUSTCHECK;

#endif
