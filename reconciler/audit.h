/*
 * `audit`: check the invariants of DEVELOPERS.md across Redis and
 * PostgreSQL and print one line per SKU plus a verdict line.
 */
#ifndef FLASHSALE_RECONCILER_AUDIT_H
#define FLASHSALE_RECONCILER_AUDIT_H

#include "util.h"

struct rc_config;

/*
 * Compare the stores; with wait_drain_s > 0 repeat every 250 ms until Redis
 * and PostgreSQL agree on held and sold everywhere (the pipeline drained) or
 * the time is up, then report. 0 when the audit ran (*violations says how
 * many it found), -1 when it could not run (reason logged).
 */
int audit_run(const struct rc_config *cfg, int wait_drain_s, long long *violations)
	FS_MUSTCHECK;

#endif
