/*
 * Buyer identity: every buyer route carries `Authorization: Bearer <JWT>`
 * and the buyer is the token's `sub`. Signatures are checked by OpenSSL:
 * HS256 with its HMAC directly (a crowd of distinct buyers makes this the
 * gateway's hottest check), RS256 and ES256 through libjwt. The keys are
 * ours to choose:
 *   - HS256 shared secrets (gateway.jwt_secret, and "oct" keys of the JWKS);
 *   - RS256 and ES256 public keys from a JWKS file (gateway.jwt_jwks_file).
 * A token names its key by `kid` (several keys at once, so keys rotate);
 * without a kid every key of its algorithm is tried. The token's `alg`
 * must be its key's: a public key is never used as an HMAC secret, and
 * `none` is never accepted. `exp` is required, `nbf` honoured, both with a
 * leeway; `iss` and `aud` are checked when configured.
 *
 * A small cache of verified tokens (by SHA-256 of the token) spares a
 * buyer's polls a signature check each; an entry never outlives its `exp`.
 */
#ifndef FLASHSALE_GATEWAY_AUTH_H
#define FLASHSALE_GATEWAY_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

struct auth_key;
struct auth_cache_entry;
struct evp_md_st;
struct evp_md_ctx_st;

struct auth {
	struct auth_key *keys;
	size_t nkeys;
	char *issuer;                    /* NULL: not checked */
	char *audience;                  /* NULL: not checked */
	long long leeway_s;
	struct auth_cache_entry *cache;  /* direct-mapped, cache_mask + 1 entries */
	size_t cache_mask;
	uint64_t hits, misses;
	struct evp_md_st *sha256;        /* fetched once: the cache's digest */
	struct evp_md_ctx_st *md;        /* its context, reused token after token */
	/*
	 * The last header segment parsed, byte for byte, and what it said: an
	 * issuer's tokens share one header, and parsing it (base64url, JSON)
	 * was a quarter of a cache miss.
	 */
	char memo_seg[256];
	size_t memo_len;                 /* 0: none */
	int memo_alg;                    /* jwt_alg_t */
	bool memo_has_kid;
	char memo_kid[128];
	uint64_t memo_hits;              /* headers answered from the memo */
};

/*
 * Load the keys: hs256_secret (may be NULL or "") and the JWKS file at
 * jwks_path (may be NULL or ""). At least one key is needed. issuer and
 * audience ("" = not checked) are copied. -1 with the reason in err.
 */
int auth_init(struct auth *a, const char *hs256_secret, const char *jwks_path,
	      const char *issuer, const char *audience, long long leeway_s,
	      char *err, size_t errlen) FS_MUSTCHECK;
void auth_free(struct auth *a);

/*
 * Verify a bearer token at now_s (seconds since the epoch) and put its
 * sub in user. -1 with the reason in err (for logs: clients get less).
 */
int auth_verify(struct auth *a, const char *token, int64_t now_s, char user[FS_ID_MAX + 1],
		char *err, size_t errlen) FS_MUSTCHECK;

/*
 * A token for user valid from now_s for ttl_s, signed with the first HS256
 * key (development: `flashsale-gateway token`, the demo, the tests).
 * Malloc'd; NULL with the reason in err.
 */
char *auth_sign(const struct auth *a, const char *user, int64_t now_s, long long ttl_s,
		char *err, size_t errlen) FS_MUSTCHECK;

/*
 * The request id the pipeline uses for a buyer's own id: scoped to the
 * buyer, so two buyers' ids never collide and nobody can claim another's.
 * 26 characters of Crockford base32 (a valid request id) from SHA-256 of
 * the user and the id, with a's digest context (the loop's own).
 */
void auth_scoped_id(struct auth *a, const char *user, const char *client_id, char out[27]);

#endif
