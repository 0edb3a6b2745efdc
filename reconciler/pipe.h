/*
 * Pipelined Redis writes in chunks: append commands, and every `chunk`
 * commands (and at the end) read the replies back, keeping the first error.
 * One round trip per chunk instead of one per command.
 */
#ifndef FLASHSALE_RECONCILER_PIPE_H
#define FLASHSALE_RECONCILER_PIPE_H

#include <stddef.h>
#include <hiredis/hiredis.h>
#include "util.h"

struct rpipe {
	redisContext *c;
	size_t chunk;             /* replies read back every chunk commands */
	size_t pending;           /* appended, reply not read yet */
	size_t sent;              /* commands whose reply was read */
	char err[256];            /* first error */
	int failed;
};

void rpipe_init(struct rpipe *p, redisContext *c, size_t chunk);

/* Append one command (argv form). -1 once anything failed (see p->err). */
int rpipe_append(struct rpipe *p, int argc, const char **argv, const size_t *argvlen)
	FS_MUSTCHECK;

/* Read every pending reply. -1 if any command or the connection failed. */
int rpipe_flush(struct rpipe *p) FS_MUSTCHECK;

#endif
