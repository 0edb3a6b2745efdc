#include "batch.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void batch_buf_reset(struct batch_buf *b)
{
	b->len = 0;
	if (b->cap > 0)
		b->data[0] = '\0';
}

void batch_buf_free(struct batch_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
}

/* Make room for n more bytes plus the NUL. */
static int batch_buf_reserve(struct batch_buf *b, size_t n)
{
	size_t need = b->len + n + 1;
	size_t cap;
	char *p;

	if (need <= b->cap)
		return 0;
	cap = b->cap > 0 ? b->cap : 256;
	while (cap < need)
		cap *= 2;
	p = realloc(b->data, cap);
	if (p == NULL)
		return -1;
	b->data = p;
	b->cap = cap;
	return 0;
}

int batch_buf_append(struct batch_buf *b, const void *p, size_t n)
{
	if (batch_buf_reserve(b, n) < 0)
		return -1;
	memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
	return 0;
}

static int batch_buf_printf(struct batch_buf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static int batch_buf_printf(struct batch_buf *b, const char *fmt, ...)
{
	char tmp[64];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	/* Only used for numbers: they always fit. */
	if (n < 0 || (size_t)n >= sizeof(tmp))
		return -1;
	return batch_buf_append(b, tmp, (size_t)n);
}

int batch_copy_escape(struct batch_buf *b, const char *s)
{
	const char *p;

	if (s == NULL)
		return 0;
	/* Worst case every byte doubles: one reservation, then plain stores. */
	if (batch_buf_reserve(b, 2 * strlen(s)) < 0)
		return -1;
	for (p = s; *p != '\0'; p++) {
		char esc = 0;

		switch (*p) {
		case '\\': esc = '\\'; break;
		case '\t': esc = 't'; break;
		case '\n': esc = 'n'; break;
		case '\r': esc = 'r'; break;
		default: break;
		}
		if (esc != 0) {
			b->data[b->len++] = '\\';
			b->data[b->len++] = esc;
		} else {
			b->data[b->len++] = *p;
		}
	}
	b->data[b->len] = '\0';
	return 0;
}

static bool batch_empty(const char *s)
{
	return s == NULL || s[0] == '\0';
}

int batch_event_check(const fs_ledger_event *ev, char *err, size_t errlen)
{
	if (ledger_kind_name((int)ev->kind) == NULL) {
		snprintf(err, errlen, "unknown ledger event kind %d", (int)ev->kind);
		return -1;
	}
	if (batch_empty(ev->event_id)) {
		snprintf(err, errlen, "empty event_id");
		return -1;
	}
	if (batch_empty(ev->request_id)) {
		snprintf(err, errlen, "empty request_id");
		return -1;
	}
	if (batch_empty(ev->sku)) {
		snprintf(err, errlen, "empty sku");
		return -1;
	}
	return 0;
}

/* Append a text field and its trailing separator. */
static int batch_field(struct batch_buf *b, const char *s, char sep)
{
	if (batch_copy_escape(b, s) < 0)
		return -1;
	return batch_buf_append(b, &sep, 1);
}

int batch_row_append(struct batch_buf *b, const fs_ledger_event *ev,
		     int32_t partition, int64_t offset, int64_t seq)
{
	const char *kind = ledger_kind_name((int)ev->kind);
	const char *order_state = ledger_kind_order_state((int)ev->kind);
	size_t start = b->len;

	if (kind == NULL)
		return -1;
	if (batch_buf_printf(b, "%" PRId64 "\t", seq) < 0 ||
	    batch_field(b, ev->event_id, '\t') < 0 ||
	    batch_field(b, kind, '\t') < 0 ||
	    batch_field(b, ev->request_id, '\t') < 0 ||
	    batch_field(b, ev->sku, '\t') < 0 ||
	    batch_field(b, ev->user_id, '\t') < 0 ||
	    batch_buf_printf(b, "%" PRIu32 "\t", ev->qty) < 0 ||
	    batch_field(b, ev->state, '\t') < 0 ||
	    batch_field(b, ev->reason, '\t') < 0 ||
	    batch_buf_printf(b, "%" PRId64 "\t%" PRId64 "\t%" PRId64 "\t%" PRId64 "\t",
			     (int64_t)ev->deadline_ms, (int64_t)ev->at_ms,
			     (int64_t)ev->remaining, (int64_t)ev->held) < 0 ||
	    batch_buf_printf(b, "%" PRId64 "\t%" PRId32 "\t%" PRId64 "\t",
			     (int64_t)ev->sold, partition, offset) < 0 ||
	    batch_buf_printf(b, "%" PRId32 "\t%" PRId64 "\t%" PRId64 "\t%s\t",
			     ev->intent_kind != 0 ? ev->intent_partition : -1,
			     ev->intent_kind != 0 ? (int64_t)ev->intent_offset : -1,
			     (int64_t)ev->sku_seq, ev->changed ? "t" : "f") < 0)
		goto fail;
	if (order_state != NULL) {
		if (batch_field(b, order_state, '\n') < 0)
			goto fail;
	} else if (batch_buf_append(b, "\\N\n", 3) < 0) {
		goto fail;
	}
	return 0;
fail:
	/* Never leave half a row behind: the COPY stream must stay well formed. */
	b->len = start;
	if (b->cap > 0)
		b->data[b->len] = '\0';
	return -1;
}

int batch_positions_arrays(const struct offsets_pos *pos, size_t n, struct batch_buf *parts,
			   struct batch_buf *nexts)
{
	batch_buf_reset(parts);
	batch_buf_reset(nexts);
	if (batch_buf_append(parts, "{", 1) < 0 || batch_buf_append(nexts, "{", 1) < 0)
		return -1;
	for (size_t i = 0; i < n; i++) {
		const char *sep = i > 0 ? "," : "";

		if (batch_buf_printf(parts, "%s%" PRId32, sep, pos[i].partition) < 0 ||
		    batch_buf_printf(nexts, "%s%" PRId64, sep, pos[i].offset) < 0)
			return -1;
	}
	if (batch_buf_append(parts, "}", 1) < 0 || batch_buf_append(nexts, "}", 1) < 0)
		return -1;
	return 0;
}
