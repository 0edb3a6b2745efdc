#include "intent.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

#define INTENT_QTY_MAX 1000000u

/* protobuf-c gives "" for absent strings, but be safe with NULL too. */
static const char *str_or_empty(const char *s)
{
	return s != NULL ? s : "";
}

/* At most max characters, each in set (the empty string passes). */
static bool short_text(const char *s, size_t max, const char *set)
{
	size_t n = strlen(s);

	return n <= max && strspn(s, set) == n;
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
	/* Without the key a producer's partitioner scatters one SKU's stream. */
	if (key == NULL || keylen != strlen(sku) || memcmp(key, sku, keylen) != 0) {
		snprintf(err, errlen, key == NULL ? "message has no key (the key must be the sku)" :
			 "message key does not equal sku");
		return -1;
	}
	if (in->kind == FLASHSALE__INTENT__KIND__PURCHASE &&
	    (in->qty < 1 || in->qty > INTENT_QTY_MAX)) {
		snprintf(err, errlen, "invalid qty %u", in->qty);
		return -1;
	}
	/* The buyer of a purchase, the owner who pays or cancels: deduct.lua
	 * checks it against the purchase. A release (the reconciler's) has none. */
	if (in->kind == FLASHSALE__INTENT__KIND__RELEASE ? user[0] != '\0' && !valid_user_id(user) :
	    !valid_user_id(user)) {
		snprintf(err, errlen, "invalid user_id");
		return -1;
	}
	if (!short_text(str_or_empty(in->client_ip), FS_CLIENT_IP_MAX, "0123456789abcdefABCDEF.:")) {
		snprintf(err, errlen, "invalid client_ip (at most %d characters of an IP address)",
			 FS_CLIENT_IP_MAX);
		return -1;
	}
	if (!short_text(str_or_empty(in->source), FS_SOURCE_MAX,
			"abcdefghijklmnopqrstuvwxyz0123456789_-")) {
		snprintf(err, errlen, "invalid source (at most %d characters of [a-z0-9_-])",
			 FS_SOURCE_MAX);
		return -1;
	}
	/* Only the reconciler returns units on its own; its RELEASE is also
	 * refused before the deadline by deduct.lua. */
	if (in->kind == FLASHSALE__INTENT__KIND__RELEASE &&
	    strcmp(str_or_empty(in->source), "reconciler") != 0) {
		snprintf(err, errlen, "RELEASE from source \"%s\" (only the reconciler releases)",
			 str_or_empty(in->source));
		return -1;
	}
	if (in->accepted_at_ms < 0 || in->sent_at_ms < 0) {
		snprintf(err, errlen, "invalid accepted_at_ms or sent_at_ms");
		return -1;
	}
	return 0;
}

/* A base-128 varint at *p (below end); false when cut short or over 10 bytes. */
static bool wire_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
	*v = 0;
	for (int shift = 0; shift < 70 && *p < end; shift += 7) {
		uint8_t b = *(*p)++;

		*v |= (uint64_t)(b & 0x7f) << shift;
		if ((b & 0x80) == 0)
			return true;
	}
	return false;
}

/*
 * What protobuf-c lets through and C strings would silently change: a NUL
 * inside a string field (protobuf-c's C string ends there, so
 * "req-1\0other" would act as "req-1") and field number 0 written as an
 * overlong tag (protobuf-c rejects it only in one byte). The walk covers the
 * top level only: Intent has no nested messages. Malformed framing is left
 * to protobuf-c's own refusal.
 */
static int intent_wire_check(const uint8_t *p, size_t len, char *err, size_t errlen)
{
	const uint8_t *end = p + len;

	while (p < end) {
		uint64_t tag, n;

		if (!wire_varint(&p, end, &tag))
			return 0;
		if ((tag >> 3) == 0) {
			snprintf(err, errlen, "field number 0");
			return -1;
		}
		switch (tag & 7) {
		case 0:
			if (!wire_varint(&p, end, &n))
				return 0;
			break;
		case 1:
			p += 8 <= end - p ? 8 : end - p;
			break;
		case 5:
			p += 4 <= end - p ? 4 : end - p;
			break;
		case 2:
			if (!wire_varint(&p, end, &n) || n > (uint64_t)(end - p))
				return 0;
			if (memchr(p, 0, (size_t)n) != NULL) {
				snprintf(err, errlen, "NUL byte in field %llu",
					 (unsigned long long)(tag >> 3));
				return -1;
			}
			p += n;
			break;
		default:
			return 0;
		}
	}
	return 0;
}

fs_intent *intent_decode(const void *buf, size_t len, const void *key, size_t keylen,
			 char *err, size_t errlen)
{
	fs_intent *in;

	/* Checked before decoding: a huge message costs nothing more. */
	if (len > FS_INTENT_MAX_BYTES) {
		snprintf(err, errlen, "intent of %zu bytes, the limit is %d", len, FS_INTENT_MAX_BYTES);
		return NULL;
	}
	if (intent_wire_check(buf, len, err, errlen) < 0)
		return NULL;
	in = flashsale__intent__unpack(NULL, len, buf);
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

void ledger_event_set(fs_ledger_event *ev, const struct ledger_fields *f)
{
	flashsale__ledger_event__init(ev);
	ev->kind = (Flashsale__LedgerEvent__Kind)f->kind;
	ev->event_id = (char *)str_or_empty(f->event_id);
	ev->request_id = (char *)str_or_empty(f->request_id);
	ev->sku = (char *)str_or_empty(f->sku);
	ev->user_id = (char *)str_or_empty(f->user_id);
	ev->state = (char *)str_or_empty(f->state);
	ev->reason = (char *)str_or_empty(f->reason);
	ev->qty = f->qty;
	ev->deadline_ms = f->deadline_ms;
	ev->at_ms = f->at_ms;
	ev->remaining = f->remaining;
	ev->held = f->held;
	ev->sold = f->sold;
	ev->initial = f->initial;
	ev->intent_kind = (Flashsale__Intent__Kind)f->intent_kind;
	ev->intent_partition = f->intent_partition;
	ev->intent_offset = f->intent_offset;
	ev->epoch = f->epoch;
	ev->sku_seq = f->sku_seq;
	ev->changed = f->changed;
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

static const struct {
	const char *name;
	const char *order_state;
} ledger_kinds[] = {
	[FLASHSALE__LEDGER_EVENT__KIND__RESERVED] = { "reserved", "held" },
	[FLASHSALE__LEDGER_EVENT__KIND__PAID] = { "paid", "paid" },
	[FLASHSALE__LEDGER_EVENT__KIND__CANCELLED] = { "cancelled", "cancelled" },
	[FLASHSALE__LEDGER_EVENT__KIND__EXPIRED] = { "expired", "expired" },
	[FLASHSALE__LEDGER_EVENT__KIND__REFUSED] = { "refused", NULL },
	[FLASHSALE__LEDGER_EVENT__KIND__TRANSITION_REFUSED] = { "transition_refused", NULL },
};

#define N_LEDGER_KINDS (sizeof(ledger_kinds) / sizeof(ledger_kinds[0]))

const char *ledger_kind_name(int kind)
{
	return kind > 0 && (size_t)kind < N_LEDGER_KINDS ? ledger_kinds[kind].name : NULL;
}

int ledger_kind_parse(const char *name)
{
	for (size_t k = 1; name != NULL && k < N_LEDGER_KINDS; k++)
		if (ledger_kinds[k].name != NULL && strcmp(ledger_kinds[k].name, name) == 0)
			return (int)k;
	return 0;
}

const char *ledger_kind_order_state(int kind)
{
	return kind > 0 && (size_t)kind < N_LEDGER_KINDS ? ledger_kinds[kind].order_state : NULL;
}

bool ledger_kind_terminal(int kind)
{
	return kind == FLASHSALE__LEDGER_EVENT__KIND__PAID ||
	       kind == FLASHSALE__LEDGER_EVENT__KIND__CANCELLED ||
	       kind == FLASHSALE__LEDGER_EVENT__KIND__EXPIRED;
}
