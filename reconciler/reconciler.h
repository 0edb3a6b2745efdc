/*
 * flashsale-reconciler: releases expired holds through the intents stream
 * (run), restores Redis from the ledger after loss (rebuild) and checks the
 * invariants across Redis and PostgreSQL (audit).
 */
#ifndef FLASHSALE_RECONCILER_H
#define FLASHSALE_RECONCILER_H

#include <stdbool.h>

#include "daemon.h"
#include "kafka.h"

/* Every key of the reconciler's config table (main.c). */
struct rc_config {
	struct daemon_cfg base;
	char *redis_address;
	char *pg_conninfo;
	long long release_interval_ms;
	long long release_batch;
	long long release_resend_ms;
	long long release_grace_ms;
	long long release_full_scan_ms;
	bool repair;
	long long record_ttl_s;
	long long rebuild_quiesce_ms;
	long long rebuild_tail_timeout_ms;
	long long audit_grace_ms;
	long long admission_heal_ms;
};

#include "fold.h"
#include "pipe.h"
#include "scan.h"
#include "release.h"
#include "rebuild.h"
#include "audit.h"

#endif
