#include "batch.h"

#include <stdlib.h>
#include <string.h>

void batch_init(struct batch *b)
{
	memset(b, 0, sizeof(*b));
}

void batch_free(struct batch *b)
{
	free(b->parts);
	memset(b, 0, sizeof(*b));
}

void batch_reset(struct batch *b)
{
	b->nparts = 0;
}

static struct batch_part *batch_find(const struct batch *b, int32_t partition)
{
	size_t i;

	for (i = 0; i < b->nparts; i++)
		if (b->parts[i].partition == partition)
			return &b->parts[i];
	return NULL;
}

int batch_note(struct batch *b, int32_t partition, int64_t offset)
{
	struct batch_part *p = batch_find(b, partition);

	if (p != NULL) {
		if (offset < p->first)
			p->first = offset;
		if (offset > p->last)
			p->last = offset;
		return 0;
	}
	if (b->nparts == b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 16;
		struct batch_part *np = realloc(b->parts, cap * sizeof(*np));

		if (np == NULL)
			return -1;
		b->parts = np;
		b->cap = cap;
	}
	p = &b->parts[b->nparts++];
	p->partition = partition;
	p->first = offset;
	p->last = offset;
	p->blocked = -1;
	return 0;
}

void batch_block(struct batch *b, int32_t partition, int64_t offset)
{
	struct batch_part *p = batch_find(b, partition);

	if (p == NULL)
		return;
	if (p->blocked < 0 || offset < p->blocked)
		p->blocked = offset;
}

void batch_unblock(struct batch *b)
{
	size_t i;

	for (i = 0; i < b->nparts; i++)
		b->parts[i].blocked = -1;
}

bool batch_is_blocked(const struct batch *b, int32_t partition, int64_t offset)
{
	const struct batch_part *p = batch_find(b, partition);

	return p != NULL && p->blocked >= 0 && offset >= p->blocked;
}

bool batch_any_blocked(const struct batch *b)
{
	size_t i;

	for (i = 0; i < b->nparts; i++)
		if (b->parts[i].blocked >= 0)
			return true;
	return false;
}

void batch_drop(struct batch *b, int32_t partition)
{
	struct batch_part *p = batch_find(b, partition);

	if (p == NULL)
		return;
	*p = b->parts[--b->nparts];
}

bool batch_has(const struct batch *b, int32_t partition)
{
	return batch_find(b, partition) != NULL;
}

size_t batch_store_positions(const struct batch *b, struct batch_pos *out, size_t n)
{
	size_t i, k = 0;

	for (i = 0; i < b->nparts && k < n; i++) {
		const struct batch_part *p = &b->parts[i];

		if (p->blocked < 0) {
			out[k].partition = p->partition;
			out[k++].offset = p->last + 1;
		} else if (p->blocked > p->first) {
			out[k].partition = p->partition;
			out[k++].offset = p->blocked;
		}
	}
	return k;
}

size_t batch_blocked_positions(const struct batch *b, struct batch_pos *out, size_t n)
{
	size_t i, k = 0;

	for (i = 0; i < b->nparts && k < n; i++) {
		if (b->parts[i].blocked < 0)
			continue;
		out[k].partition = b->parts[i].partition;
		out[k++].offset = b->parts[i].blocked;
	}
	return k;
}

size_t batch_first_positions(const struct batch *b, struct batch_pos *out, size_t n)
{
	size_t i, k = 0;

	for (i = 0; i < b->nparts && k < n; i++) {
		out[k].partition = b->parts[i].partition;
		out[k++].offset = b->parts[i].first;
	}
	return k;
}
