#include "ledger.h"

#include <stdio.h>
#include <string.h>

#include "flashsale.pb-c.h"

int ledger_event_id(char *out, size_t n, const char *request_id, int event_kind,
		    const char *reason)
{
	const char *kind = ledger_kind_name(event_kind);
	int len;

	if (kind == NULL)
		return -1;
	if (event_kind == FLASHSALE__LEDGER_EVENT__KIND__REFUSED ||
	    event_kind == FLASHSALE__LEDGER_EVENT__KIND__TRANSITION_REFUSED)
		len = snprintf(out, n, "%s:%s:%s", request_id, kind, reason ? reason : "");
	else
		len = snprintf(out, n, "%s:%s", request_id, kind);
	return (len < 0 || (size_t)len >= n) ? -1 : 0;
}

int ledger_build(struct ledger_out *out, const fs_intent *in, const struct step_result *res,
		 int32_t partition, int64_t offset, char *err, size_t errlen)
{
	fs_ledger_event *ev = &out->ev;

	if (res->status != STEP_OK) {
		snprintf(err, errlen, "no event for a step that did not answer ok");
		return -1;
	}
	if (ledger_event_id(out->event_id, sizeof(out->event_id), in->request_id,
			    res->event_kind, res->reason) < 0) {
		snprintf(err, errlen, "event id too long");
		return -1;
	}
	ledger_event_set(ev, &(struct ledger_fields){
		.kind = res->event_kind, .event_id = out->event_id,
		.request_id = in->request_id, .sku = in->sku,
		/* The purchase's buyer as Redis recorded it; a pay/cancel/release
		 * may come without one. */
		.user_id = res->user_id[0] != '\0' ? res->user_id : in->user_id,
		.qty = res->qty, .state = res->state, .reason = res->reason,
		.deadline_ms = res->deadline_ms, .at_ms = res->at_ms,
		.remaining = res->remaining, .held = res->held, .sold = res->sold,
		.initial = res->initial, .intent_kind = in->kind,
		.intent_partition = partition, .intent_offset = offset,
		.epoch = res->epoch, .sku_seq = res->sku_seq, .changed = res->changed,
	});
	return 0;
}
