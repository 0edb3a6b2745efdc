#include "offsets.h"

#include <stdlib.h>
#include <string.h>

#include "array.h"

void offsets_init(struct offsets *b)
{
	memset(b, 0, sizeof(*b));
}

void offsets_free(struct offsets *b)
{
	free(b->parts);
	memset(b, 0, sizeof(*b));
}

void offsets_reset(struct offsets *b)
{
	b->nparts = 0;
}

static struct offsets_part *offsets_find(const struct offsets *b, int32_t partition)
{
	size_t i;

	for (i = 0; i < b->nparts; i++)
		if (b->parts[i].partition == partition)
			return &b->parts[i];
	return NULL;
}

int offsets_note(struct offsets *b, int32_t partition, int64_t offset)
{
	struct offsets_part *p = offsets_find(b, partition);

	if (p != NULL) {
		if (offset < p->first)
			p->first = offset;
		if (offset > p->last)
			p->last = offset;
		return 0;
	}
	if (ARRAY_GROW(b->parts, b->cap, b->nparts + 1) < 0)
		return -1;
	p = &b->parts[b->nparts++];
	p->partition = partition;
	p->first = offset;
	p->last = offset;
	p->blocked = -1;
	return 0;
}

void offsets_block(struct offsets *b, int32_t partition, int64_t offset)
{
	struct offsets_part *p = offsets_find(b, partition);

	if (p == NULL)
		return;
	if (p->blocked < 0 || offset < p->blocked)
		p->blocked = offset;
}

void offsets_unblock(struct offsets *b)
{
	size_t i;

	for (i = 0; i < b->nparts; i++)
		b->parts[i].blocked = -1;
}

bool offsets_is_blocked(const struct offsets *b, int32_t partition, int64_t offset)
{
	const struct offsets_part *p = offsets_find(b, partition);

	return p != NULL && p->blocked >= 0 && offset >= p->blocked;
}

bool offsets_any_blocked(const struct offsets *b)
{
	size_t i;

	for (i = 0; i < b->nparts; i++)
		if (b->parts[i].blocked >= 0)
			return true;
	return false;
}

void offsets_drop(struct offsets *b, int32_t partition)
{
	struct offsets_part *p = offsets_find(b, partition);

	if (p == NULL)
		return;
	*p = b->parts[--b->nparts];
}

bool offsets_has(const struct offsets *b, int32_t partition)
{
	return offsets_find(b, partition) != NULL;
}

size_t offsets_store_positions(const struct offsets *b, struct offsets_pos *out, size_t n)
{
	size_t i, k = 0;

	for (i = 0; i < b->nparts && k < n; i++) {
		const struct offsets_part *p = &b->parts[i];

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

size_t offsets_blocked_positions(const struct offsets *b, struct offsets_pos *out, size_t n)
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

size_t offsets_first_positions(const struct offsets *b, struct offsets_pos *out, size_t n)
{
	size_t i, k = 0;

	for (i = 0; i < b->nparts && k < n; i++) {
		out[k].partition = b->parts[i].partition;
		out[k++].offset = b->parts[i].first;
	}
	return k;
}
