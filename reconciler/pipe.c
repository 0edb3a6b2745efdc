/* Chunked Redis pipelines (see pipe.h). */
#include <stdio.h>
#include <string.h>

#include "reconciler.h"

void rpipe_init(struct rpipe *p, redisContext *c, size_t chunk)
{
	memset(p, 0, sizeof(*p));
	p->c = c;
	p->chunk = chunk ? chunk : 1000;
}

static void rpipe_fail(struct rpipe *p, const char *what, const char *detail)
{
	if (!p->failed)
		snprintf(p->err, sizeof(p->err), "%s: %s", what, detail);
	p->failed = 1;
}

int rpipe_flush(struct rpipe *p)
{
	while (p->pending > 0) {
		redisReply *r = NULL;

		if (redisGetReply(p->c, (void **)&r) != REDIS_OK || r == NULL) {
			rpipe_fail(p, "redis", p->c->errstr[0] ? p->c->errstr : "connection lost");
			/* The connection is unusable: the rest will never come. */
			p->pending = 0;
			return -1;
		}
		if (r->type == REDIS_REPLY_ERROR)
			rpipe_fail(p, "redis command", r->str);
		/* EXEC: its commands' errors are inside (nothing else here answers arrays). */
		for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++)
			if (r->element[i]->type == REDIS_REPLY_ERROR)
				rpipe_fail(p, "redis command", r->element[i]->str);
		freeReplyObject(r);
		p->pending--;
		p->sent++;
	}
	return p->failed ? -1 : 0;
}

int rpipe_append(struct rpipe *p, int argc, const char **argv, const size_t *argvlen)
{
	if (p->failed)
		return -1;
	if (redisAppendCommandArgv(p->c, argc, argv, argvlen) != REDIS_OK) {
		rpipe_fail(p, "redis append", p->c->errstr[0] ? p->c->errstr : "out of memory");
		return -1;
	}
	p->pending++;
	if (p->pending >= p->chunk)
		return rpipe_flush(p);
	return 0;
}
