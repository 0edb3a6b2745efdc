/*
 * Step result -> LedgerEvent. The event's strings point into the intent, the
 * result and the struct ledger_out, so all three must outlive the event.
 */
#ifndef FLASHSALE_DEDUCTOR_LEDGER_H
#define FLASHSALE_DEDUCTOR_LEDGER_H

#include <stddef.h>
#include <stdint.h>

#include "intent.h"
#include "step.h"
#include "util.h"

/* "<request_id>:<kind>:<reason>" at most */
#define LEDGER_EVENT_ID_MAX (FS_ID_MAX + 2 * STEP_WORD_MAX + 3)

struct ledger_out {
	fs_ledger_event ev;
	char event_id[LEDGER_EVENT_ID_MAX];
};

/*
 * Write the event id: "<rid>:<kind>" or, for refused and
 * transition_refused, "<rid>:<kind>:<reason>". Deterministic, so a replayed
 * intent yields the same id and consumers can deduplicate on it. -1 when it
 * does not fit.
 */
int ledger_event_id(char *out, size_t n, const char *request_id, int event_kind,
		    const char *reason) FS_MUSTCHECK;

/*
 * Build the event for an STEP_OK result of intent `in`, which was at
 * (partition, offset) on the intents topic. -1 with a reason in err when
 * the result is not OK.
 */
int ledger_build(struct ledger_out *out, const fs_intent *in, const struct step_result *res,
		 int32_t partition, int64_t offset, char *err, size_t errlen)
	FS_MUSTCHECK;

#endif
