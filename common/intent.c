#include "intent.h"

#include <stdio.h>
#include <string.h>

#include "util.h"

#define INTENT_QTY_MAX 1000000u

/* protobuf-c gives "" for absent strings, but be safe with NULL too. */
static const char *str_or_empty(const char *s)
{
	return s != NULL ? s : "";
}

int intent_validate(const fs_intent *in, const void *key, size_t keylen,
		    char *err, size_t errlen)
{
	const char *user = str_or_empty(in->user_id);
	const char *sku = str_or_empty(in->sku);

	if (in->kind < FLASHSALE__INTENT__KIND__PURCHASE ||
	    in->kind > FLASHSALE__INTENT__KIND__RELEASE) {
		snprintf(err, errlen, "invalid kind %d", (int)in->kind);
		return -1;
	}
	if (!valid_request_id(str_or_empty(in->request_id))) {
		snprintf(err, errlen, "invalid request_id");
		return -1;
	}
	if (!valid_sku(sku)) {
		snprintf(err, errlen, "invalid sku");
		return -1;
	}
	if (key != NULL && (keylen != strlen(sku) || memcmp(key, sku, keylen) != 0)) {
		snprintf(err, errlen, "message key does not equal sku");
		return -1;
	}
	if (in->kind == FLASHSALE__INTENT__KIND__PURCHASE) {
		if (!valid_user_id(user)) {
			snprintf(err, errlen, "invalid user_id");
			return -1;
		}
		if (in->qty < 1 || in->qty > INTENT_QTY_MAX) {
			snprintf(err, errlen, "invalid qty %u", in->qty);
			return -1;
		}
	} else if (user[0] != '\0' && !valid_user_id(user)) {
		snprintf(err, errlen, "invalid user_id");
		return -1;
	}
	if (in->accepted_at_ms < 0) {
		snprintf(err, errlen, "invalid accepted_at_ms %lld", (long long)in->accepted_at_ms);
		return -1;
	}
	return 0;
}

fs_intent *intent_decode(const void *buf, size_t len, const void *key, size_t keylen,
			 char *err, size_t errlen)
{
	fs_intent *in = flashsale__intent__unpack(NULL, len, buf);

	if (in == NULL) {
		snprintf(err, errlen, "cannot decode Intent (%zu bytes)", len);
		return NULL;
	}
	if (intent_validate(in, key, keylen, err, errlen) < 0) {
		flashsale__intent__free_unpacked(in, NULL);
		return NULL;
	}
	return in;
}

void intent_free(fs_intent *in)
{
	if (in != NULL)
		flashsale__intent__free_unpacked(in, NULL);
}

size_t intent_packed_size(const fs_intent *in)
{
	return flashsale__intent__get_packed_size(in);
}

size_t intent_pack(const fs_intent *in, void *out)
{
	return flashsale__intent__pack(in, out);
}

fs_ledger_event *ledger_decode(const void *buf, size_t len, char *err, size_t errlen)
{
	fs_ledger_event *ev = flashsale__ledger_event__unpack(NULL, len, buf);

	if (ev == NULL)
		snprintf(err, errlen, "cannot decode LedgerEvent (%zu bytes)", len);
	return ev;
}

void ledger_free(fs_ledger_event *ev)
{
	if (ev != NULL)
		flashsale__ledger_event__free_unpacked(ev, NULL);
}

const char *intent_kind_name(int kind)
{
	switch (kind) {
	case FLASHSALE__INTENT__KIND__PURCHASE:
		return "purchase";
	case FLASHSALE__INTENT__KIND__PAY:
		return "pay";
	case FLASHSALE__INTENT__KIND__CANCEL:
		return "cancel";
	case FLASHSALE__INTENT__KIND__RELEASE:
		return "release";
	default:
		return "unspecified";
	}
}

const char *ledger_kind_name(int kind)
{
	switch (kind) {
	case FLASHSALE__LEDGER_EVENT__KIND__RESERVED:
		return "reserved";
	case FLASHSALE__LEDGER_EVENT__KIND__PAID:
		return "paid";
	case FLASHSALE__LEDGER_EVENT__KIND__CANCELLED:
		return "cancelled";
	case FLASHSALE__LEDGER_EVENT__KIND__EXPIRED:
		return "expired";
	case FLASHSALE__LEDGER_EVENT__KIND__REFUSED:
		return "refused";
	case FLASHSALE__LEDGER_EVENT__KIND__TRANSITION_REFUSED:
		return "transition_refused";
	default:
		return "unspecified";
	}
}
