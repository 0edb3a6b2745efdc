/*
 * Buyer tokens for the load generator: an HS256 JWT per request, signed
 * with the secret the gateway verifies (the stack's demo key), the way a
 * shop's login service would issue them.
 */
#ifndef FLASHSALE_BENCH_LOADGEN_TOKEN_H
#define FLASHSALE_BENCH_LOADGEN_TOKEN_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

/*
 * "Bearer <jwt>" for user, valid from now_s for ttl_s, into out (n bytes).
 * -1 when it does not fit or HMAC fails.
 */
int lg_token_header(const char *secret, const char *user, int64_t now_s, unsigned ttl_s,
		    char *out, size_t n) FS_MUSTCHECK;

#endif
