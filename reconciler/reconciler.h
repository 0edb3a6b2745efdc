/*
 * flashsale-reconciler: releases expired holds through the intents stream
 * (run), restores Redis from the ledger after loss (rebuild) and checks the
 * invariants across Redis and PostgreSQL (audit).
 */
#ifndef RECONCILER_H
#define RECONCILER_H

#include <stdbool.h>

#include "kafka.h"

/* Every key of the reconciler's config table (main.c). */
struct reconciler_cfg {
	struct kafka_cfg kafka;
	char *redis_address;
	char *pg_conninfo;
	char *http_host;
	long long http_port;
	char *log_level;
	long long release_interval_ms;
	long long release_batch;
	long long release_resend_ms;
	long long release_grace_ms;
	bool repair;
	long long record_ttl_s;
	long long rebuild_quiesce_ms;
	long long rebuild_tail_timeout_ms;
	long long audit_grace_ms;
};

#include "fold.h"
#include "pipe.h"
#include "release.h"
#include "rebuild.h"
#include "audit.h"

#endif
