#include "auth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <jwt.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>

#define AUTH_CACHE_SLOTS 16384
#define AUTH_MAX_KEYS 64
#define AUTH_MAX_TOKEN 4096
#define JWKS_MAX_BYTES (1 << 20)

struct auth_key {
	char kid[128];
	jwt_alg_t alg;
	unsigned char *key;     /* HS256: the secret; RS256/ES256: a PEM public key */
	int keylen;
	EVP_MAC_CTX *hmac;      /* HS256: keyed once, re-initialised per token (auth_hs256_ok) */
};

struct auth_cache_entry {
	uint8_t digest[32];     /* SHA-256 of the token: the same bytes, the same verdict */
	char user[FS_ID_MAX + 1];
	int64_t exp;
	bool used;
};

/* ---- keys ---- */

/* base64url without padding (JWK, JWT) -> bytes; -1 when malformed. */
static int b64url_decode(const char *in, unsigned char **out, size_t *outlen)
{
	size_t n = strlen(in), pad = (4 - n % 4) % 4;
	char *b = malloc(n + pad + 1);
	unsigned char *o;
	int len;

	if (b == NULL || pad == 3) {
		free(b);
		return -1;
	}
	for (size_t i = 0; i < n; i++)
		b[i] = in[i] == '-' ? '+' : in[i] == '_' ? '/' : in[i];
	memset(b + n, '=', pad);
	b[n + pad] = '\0';
	o = malloc((n + pad) / 4 * 3 + 1);
	len = o != NULL ? EVP_DecodeBlock(o, (const unsigned char *)b, (int)(n + pad)) : -1;
	free(b);
	if (len < 0 || (size_t)len < pad) {
		free(o);
		return -1;
	}
	*out = o;
	*outlen = (size_t)len - pad;
	return 0;
}

/* A public key built from its parts as PEM (NUL-terminated, malloc'd); NULL on failure. */
static char *pkey_pem(const char *type, OSSL_PARAM_BLD *bld)
{
	OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
	EVP_PKEY *pkey = NULL;
	BIO *bio = NULL;
	char *pem = NULL, *data;
	long len;

	if (params == NULL || ctx == NULL || EVP_PKEY_fromdata_init(ctx) <= 0 ||
	    EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0 ||
	    (bio = BIO_new(BIO_s_mem())) == NULL || PEM_write_bio_PUBKEY(bio, pkey) <= 0)
		goto out;
	len = BIO_get_mem_data(bio, &data);
	if (len > 0 && (pem = malloc((size_t)len + 1)) != NULL) {
		memcpy(pem, data, (size_t)len);
		pem[len] = '\0';
	}
out:
	BIO_free(bio);
	EVP_PKEY_free(pkey);
	EVP_PKEY_CTX_free(ctx);
	OSSL_PARAM_free(params);
	return pem;
}

static const char *jwk_str(const cJSON *k, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(k, name);

	return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* RSA (n, e) -> PEM. */
static char *jwk_rsa(const cJSON *k)
{
	const char *n64 = jwk_str(k, "n"), *e64 = jwk_str(k, "e");
	unsigned char *n = NULL, *e = NULL;
	size_t nl, el;
	BIGNUM *bn = NULL, *be = NULL;
	OSSL_PARAM_BLD *bld = NULL;
	char *pem = NULL;

	if (n64 == NULL || e64 == NULL || b64url_decode(n64, &n, &nl) < 0 ||
	    b64url_decode(e64, &e, &el) < 0)
		goto out;
	bn = BN_bin2bn(n, (int)nl, NULL);
	be = BN_bin2bn(e, (int)el, NULL);
	bld = OSSL_PARAM_BLD_new();
	if (bn == NULL || be == NULL || bld == NULL ||
	    !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) ||
	    !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be))
		goto out;
	pem = pkey_pem("RSA", bld);
out:
	OSSL_PARAM_BLD_free(bld);
	BN_free(bn);
	BN_free(be);
	free(n);
	free(e);
	return pem;
}

/* EC P-256 (x, y) -> PEM. */
static char *jwk_ec(const cJSON *k)
{
	const char *crv = jwk_str(k, "crv"), *x64 = jwk_str(k, "x"), *y64 = jwk_str(k, "y");
	unsigned char *x = NULL, *y = NULL, pub[65];
	size_t xl, yl;
	OSSL_PARAM_BLD *bld = NULL;
	char *pem = NULL;

	if (crv == NULL || strcmp(crv, "P-256") != 0 || x64 == NULL || y64 == NULL ||
	    b64url_decode(x64, &x, &xl) < 0 || b64url_decode(y64, &y, &yl) < 0 ||
	    xl != 32 || yl != 32)
		goto out;
	pub[0] = 0x04;      /* uncompressed point */
	memcpy(pub + 1, x, 32);
	memcpy(pub + 33, y, 32);
	bld = OSSL_PARAM_BLD_new();
	if (bld == NULL ||
	    !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) ||
	    !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pub, sizeof(pub)))
		goto out;
	pem = pkey_pem("EC", bld);
out:
	OSSL_PARAM_BLD_free(bld);
	free(x);
	free(y);
	return pem;
}

static int auth_add(struct auth *a, const char *kid, jwt_alg_t alg, unsigned char *key, int len,
		    char *err, size_t errlen)
{
	struct auth_key *k;

	if (a->nkeys >= AUTH_MAX_KEYS) {
		free(key);
		snprintf(err, errlen, "more than %d keys", AUTH_MAX_KEYS);
		return -1;
	}
	k = &a->keys[a->nkeys++];
	snprintf(k->kid, sizeof(k->kid), "%s", kid != NULL ? kid : "");
	k->alg = alg;
	k->key = key;
	k->keylen = len;
	if (alg == JWT_ALG_HS256) {
		EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
		OSSL_PARAM params[] = {
			OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
			OSSL_PARAM_construct_end(),
		};

		k->hmac = mac != NULL ? EVP_MAC_CTX_new(mac) : NULL;
		EVP_MAC_free(mac);      /* the context keeps its own reference */
		if (k->hmac == NULL || EVP_MAC_init(k->hmac, key, (size_t)len, params) != 1) {
			snprintf(err, errlen, "OpenSSL has no HMAC-SHA256");
			return -1;
		}
	}
	return 0;
}

/*
 * One JWK: kty RSA (RS256), EC P-256 (ES256) or oct (HS256); alg, when
 * given, must agree. Keys marked "use" other than "sig" are skipped.
 */
static int auth_add_jwk(struct auth *a, const cJSON *k, size_t i, char *err, size_t errlen)
{
	const char *kty = jwk_str(k, "kty"), *alg = jwk_str(k, "alg"), *use = jwk_str(k, "use");
	const char *kid = jwk_str(k, "kid"), *want;
	unsigned char *secret;
	size_t sl;
	char *pem;

	if (use != NULL && strcmp(use, "sig") != 0)
		return 0;
	if (kty == NULL) {
		snprintf(err, errlen, "key %zu has no kty", i);
		return -1;
	}
	want = strcmp(kty, "RSA") == 0 ? "RS256" : strcmp(kty, "EC") == 0 ? "ES256" :
	       strcmp(kty, "oct") == 0 ? "HS256" : NULL;
	if (want == NULL || (alg != NULL && strcmp(alg, want) != 0)) {
		snprintf(err, errlen, "key %zu: kty %s alg %s is not one of RS256, ES256, HS256",
			 i, kty, alg != NULL ? alg : "-");
		return -1;
	}
	if (want[0] == 'H') {
		const char *k64 = jwk_str(k, "k");

		if (k64 == NULL || b64url_decode(k64, &secret, &sl) < 0 || sl < 32) {
			snprintf(err, errlen, "key %zu: an HS256 secret of at least 32 bytes is needed",
				 i);
			return -1;
		}
		return auth_add(a, kid, JWT_ALG_HS256, secret, (int)sl, err, errlen);
	}
	pem = want[0] == 'R' ? jwk_rsa(k) : jwk_ec(k);
	if (pem == NULL) {
		snprintf(err, errlen, "key %zu (%s): not a valid %s public key", i,
			 kid != NULL ? kid : "no kid", kty);
		return -1;
	}
	return auth_add(a, kid, want[0] == 'R' ? JWT_ALG_RS256 : JWT_ALG_ES256,
			(unsigned char *)pem, (int)strlen(pem), err, errlen);
}

static int auth_load_jwks(struct auth *a, const char *path, char *err, size_t errlen)
{
	FILE *f = fopen(path, "rb");
	char *text = NULL;
	size_t n;
	cJSON *doc = NULL;
	const cJSON *keys, *k;
	size_t i = 0;
	int rc = -1;

	if (f == NULL) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -1;
	}
	text = malloc(JWKS_MAX_BYTES + 1);
	n = text != NULL ? fread(text, 1, JWKS_MAX_BYTES + 1, f) : 0;
	fclose(f);
	if (text == NULL || n > JWKS_MAX_BYTES) {
		snprintf(err, errlen, "%s: unreadable or larger than %d bytes", path, JWKS_MAX_BYTES);
		goto out;
	}
	text[n] = '\0';
	doc = cJSON_Parse(text);
	keys = cJSON_GetObjectItemCaseSensitive(doc, "keys");
	if (!cJSON_IsArray(keys)) {
		snprintf(err, errlen, "%s: not a JWKS ({\"keys\": [...]})", path);
		goto out;
	}
	cJSON_ArrayForEach(k, keys) {
		if (auth_add_jwk(a, k, i++, err, errlen) < 0)
			goto out;
	}
	rc = 0;
out:
	cJSON_Delete(doc);
	free(text);
	return rc;
}

int auth_init(struct auth *a, const char *hs256_secret, const char *jwks_path,
	      const char *issuer, const char *audience, long long leeway_s,
	      char *err, size_t errlen)
{
	memset(a, 0, sizeof(*a));
	a->keys = calloc(AUTH_MAX_KEYS, sizeof(*a->keys));
	a->cache = calloc(AUTH_CACHE_SLOTS, sizeof(*a->cache));
	if (a->keys == NULL || a->cache == NULL) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	a->cache_mask = AUTH_CACHE_SLOTS - 1;
	a->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
	a->md = EVP_MD_CTX_new();
	if (a->sha256 == NULL || a->md == NULL) {
		snprintf(err, errlen, "OpenSSL has no SHA-256");
		goto fail;
	}
	a->leeway_s = leeway_s;
	a->issuer = issuer != NULL && issuer[0] != '\0' ? strdup(issuer) : NULL;
	a->audience = audience != NULL && audience[0] != '\0' ? strdup(audience) : NULL;
	if (hs256_secret != NULL && hs256_secret[0] != '\0') {
		size_t len = strlen(hs256_secret);
		unsigned char *s = malloc(len);

		if (len < 32) {
			free(s);
			snprintf(err, errlen, "gateway.jwt_secret must be at least 32 bytes");
			goto fail;
		}
		if (s == NULL) {
			snprintf(err, errlen, "out of memory");
			goto fail;
		}
		memcpy(s, hs256_secret, len);
		if (auth_add(a, "", JWT_ALG_HS256, s, (int)len, err, errlen) < 0)
			goto fail;
	}
	if (jwks_path != NULL && jwks_path[0] != '\0' && auth_load_jwks(a, jwks_path, err, errlen) < 0)
		goto fail;
	if (a->nkeys == 0) {
		snprintf(err, errlen, "no key to verify buyer tokens: set gateway.jwt_secret or "
			 "gateway.jwt_jwks_file");
		goto fail;
	}
	return 0;
fail:
	auth_free(a);
	return -1;
}

void auth_free(struct auth *a)
{
	for (size_t i = 0; a->keys != NULL && i < a->nkeys; i++) {
		OPENSSL_cleanse(a->keys[i].key, (size_t)a->keys[i].keylen);
		free(a->keys[i].key);
		EVP_MAC_CTX_free(a->keys[i].hmac);
	}
	EVP_MD_CTX_free(a->md);
	EVP_MD_free(a->sha256);
	free(a->keys);
	free(a->cache);
	free(a->issuer);
	free(a->audience);
	memset(a, 0, sizeof(*a));
}

/* ---- tokens ---- */

/* aud is a string or an array of strings; one of them must be ours. */
static bool auth_aud_ok(const cJSON *aud, const char *want)
{
	const cJSON *it;

	if (cJSON_IsString(aud))
		return strcmp(aud->valuestring, want) == 0;
	if (!cJSON_IsArray(aud))
		return false;
	cJSON_ArrayForEach(it, aud) {
		if (cJSON_IsString(it) && strcmp(it->valuestring, want) == 0)
			return true;
	}
	return false;
}

/*
 * A NumericDate claim (RFC 7519: seconds, maybe fractional) in *out; false
 * when absent, not a number, or beyond any date (no overflow below).
 */
static bool auth_time_claim(const cJSON *claims, const char *name, int64_t *out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(claims, name);

	if (!cJSON_IsNumber(v) || !(v->valuedouble > -1e15 && v->valuedouble < 1e15))
		return false;
	*out = (int64_t)v->valuedouble;
	return true;
}

/* The claims of a verified token. 0 with user filled, -1 with err. */
static int auth_claims(const struct auth *a, const cJSON *claims, int64_t now_s, char *user,
		       int64_t *exp, char *err, size_t errlen)
{
	const cJSON *sub = cJSON_GetObjectItemCaseSensitive(claims, "sub");
	const cJSON *iss = cJSON_GetObjectItemCaseSensitive(claims, "iss");
	bool has_exp, has_nbf;
	int64_t e = 0, nbf = 0;

	has_exp = auth_time_claim(claims, "exp", &e);
	has_nbf = auth_time_claim(claims, "nbf", &nbf);
	if (!has_exp || now_s > e + a->leeway_s) {
		snprintf(err, errlen, has_exp ? "token expired" : "token has no exp");
		return -1;
	}
	if (has_nbf && now_s + a->leeway_s < nbf) {
		snprintf(err, errlen, "token not valid yet (nbf)");
		return -1;
	}
	if (a->issuer != NULL && (!cJSON_IsString(iss) || strcmp(iss->valuestring, a->issuer) != 0)) {
		snprintf(err, errlen, "token issuer is not %s", a->issuer);
		return -1;
	}
	if (a->audience != NULL &&
	    !auth_aud_ok(cJSON_GetObjectItemCaseSensitive(claims, "aud"), a->audience)) {
		snprintf(err, errlen, "token audience is not %s", a->audience);
		return -1;
	}
	if (!cJSON_IsString(sub) || !valid_user_id(sub->valuestring)) {
		snprintf(err, errlen, "token sub is not a valid user id");
		return -1;
	}
	snprintf(user, FS_ID_MAX + 1, "%s", sub->valuestring);
	*exp = e;
	return 0;
}

/* One base64url segment of a token (n bytes at seg) parsed as a JSON object; NULL if not. */
static cJSON *auth_segment_json(const char *seg, size_t n)
{
	char buf[AUTH_MAX_TOKEN + 1];
	unsigned char *json = NULL;
	size_t len;
	cJSON *o;

	if (n == 0 || n > AUTH_MAX_TOKEN)
		return NULL;
	memcpy(buf, seg, n);
	buf[n] = '\0';
	if (b64url_decode(buf, &json, &len) < 0)
		return NULL;
	o = cJSON_ParseWithLength((const char *)json, len);
	free(json);
	if (!cJSON_IsObject(o)) {
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

/*
 * The token's header (its first n bytes): its alg and kid (kid "" when
 * absent, has_kid false). -1 if malformed. The same bytes as the last
 * header parsed give the same answer without parsing (a valid one only).
 */
static int auth_header(struct auth *au, const char *token, size_t n, jwt_alg_t *alg,
		       char *kid, size_t kidlen, bool *has_kid)
{
	cJSON *h;
	const char *a, *k;
	int rc = -1;

	if (n > 0 && n == au->memo_len && memcmp(token, au->memo_seg, n) == 0) {
		*alg = (jwt_alg_t)au->memo_alg;
		*has_kid = au->memo_has_kid;
		snprintf(kid, kidlen, "%s", au->memo_kid);
		au->memo_hits++;
		return 0;
	}
	h = auth_segment_json(token, n);
	a = jwk_str(h, "alg");
	k = jwk_str(h, "kid");
	if (a != NULL) {
		*alg = jwt_str_alg(a);
		*has_kid = k != NULL;
		snprintf(kid, kidlen, "%s", k != NULL ? k : "");
		rc = *alg == JWT_ALG_INVAL ? -1 : 0;
	}
	cJSON_Delete(h);
	if (rc == 0 && n <= sizeof(au->memo_seg) && strlen(kid) < sizeof(au->memo_kid) &&
	    strlen(kid) + 1 < kidlen) {
		memcpy(au->memo_seg, token, n);
		au->memo_len = n;
		au->memo_alg = (int)*alg;
		au->memo_has_kid = *has_kid;
		memcpy(au->memo_kid, kid, strlen(kid) + 1);
	}
	return rc;
}

/*
 * An HS256 signature: HMAC-SHA256 of the signed part (signed_len bytes of
 * token) with k's context, keyed once (auth_add) and re-initialised here
 * without a key, which restores the keyed state in place (a duplicate and
 * its free per token cost about as much as the MAC itself: perf on
 * sold-out refusals). libjwt
 * would re-key HMAC and base64-encode through a BIO for every token. The
 * context is the loop's own: a struct auth is never shared by threads.
 * Like libjwt, the MAC is compared as its base64url text, so only the
 * canonical encoding verifies, and in constant time.
 */
static bool auth_hs256_ok(const struct auth_key *k, const char *token, size_t signed_len,
			  const char *sig)
{
	unsigned char mac[EVP_MAX_MD_SIZE], text[48];
	size_t ml = 0;
	bool ok;

	ok = EVP_MAC_init(k->hmac, NULL, 0, NULL) == 1 &&
	     EVP_MAC_update(k->hmac, (const unsigned char *)token, signed_len) == 1 &&
	     EVP_MAC_final(k->hmac, mac, &ml, sizeof(mac)) == 1 && ml == 32;
	if (!ok || strlen(sig) != 43)
		return false;
	(void)EVP_EncodeBlock(text, mac, 32);   /* 43 characters and one '=' */
	for (int i = 0; i < 43; i++)
		text[i] = text[i] == '+' ? '-' : text[i] == '/' ? '_' : text[i];
	return CRYPTO_memcmp(text, sig, 43) == 0;
}

/*
 * Verify token's signature with one of our keys: the one its kid names,
 * else each key of its algorithm. Its claims (the payload, parsed) once
 * one does; NULL with err when none verifies it.
 */
static cJSON *auth_check_signature(struct auth *a, const char *token, char *err,
				   size_t errlen)
{
	const char *dot1 = strchr(token, '.'), *dot2 = dot1 != NULL ? strchr(dot1 + 1, '.') : NULL;
	char kid[128];
	bool has_kid, ok = false;
	jwt_alg_t alg;
	cJSON *claims;

	if (dot2 == NULL || strchr(dot2 + 1, '.') != NULL ||
	    auth_header(a, token, (size_t)(dot1 - token), &alg, kid, sizeof(kid), &has_kid) < 0) {
		snprintf(err, errlen, "malformed token header");
		return NULL;
	}
	for (size_t i = 0; i < a->nkeys && !ok; i++) {
		const struct auth_key *k = &a->keys[i];
		jwt_t *jwt = NULL;

		/* The token's alg must be its key's: no HMAC with a public key. */
		if (alg == JWT_ALG_NONE || k->alg != alg || (has_kid && strcmp(k->kid, kid) != 0))
			continue;
		if (k->alg == JWT_ALG_HS256) {
			ok = auth_hs256_ok(k, token, (size_t)(dot2 - token), dot2 + 1);
			continue;
		}
		ok = jwt_decode(&jwt, token, k->key, k->keylen) == 0 && jwt_get_alg(jwt) == k->alg;
		jwt_free(jwt);
	}
	if (!ok) {
		snprintf(err, errlen, alg == JWT_ALG_NONE ? "unsigned token" :
			 "no key verifies the token (kid %s)", has_kid ? kid : "none");
		return NULL;
	}
	claims = auth_segment_json(dot1 + 1, (size_t)(dot2 - dot1 - 1));
	if (claims == NULL)
		snprintf(err, errlen, "token payload is not a JSON object");
	return claims;
}

int auth_verify(struct auth *a, const char *token, int64_t now_s, char user[FS_ID_MAX + 1],
		char *err, size_t errlen)
{
	uint8_t digest[32];
	struct auth_cache_entry *c;
	unsigned int dl = sizeof(digest);
	uint64_t slot;
	int64_t exp;
	cJSON *claims;
	int rc;

	if (token == NULL || token[0] == '\0' || strlen(token) > AUTH_MAX_TOKEN) {
		snprintf(err, errlen, "no token or one longer than %d bytes", AUTH_MAX_TOKEN);
		return -1;
	}
	if (EVP_DigestInit_ex2(a->md, a->sha256, NULL) != 1 ||
	    EVP_DigestUpdate(a->md, token, strlen(token)) != 1 ||
	    EVP_DigestFinal_ex(a->md, digest, &dl) != 1) {
		snprintf(err, errlen, "sha256 failed");
		return -1;
	}
	memcpy(&slot, digest, sizeof(slot));
	c = &a->cache[slot & a->cache_mask];
	if (c->used && memcmp(c->digest, digest, sizeof(digest)) == 0 &&
	    now_s <= c->exp + a->leeway_s) {
		a->hits++;
		memcpy(user, c->user, FS_ID_MAX + 1);
		return 0;
	}
	a->misses++;
	claims = auth_check_signature(a, token, err, errlen);
	if (claims == NULL)
		return -1;
	rc = auth_claims(a, claims, now_s, user, &exp, err, errlen);
	cJSON_Delete(claims);
	if (rc < 0)
		return -1;
	memcpy(c->digest, digest, sizeof(digest));
	memcpy(c->user, user, FS_ID_MAX + 1);
	c->exp = exp;
	c->used = true;
	return 0;
}

char *auth_sign(const struct auth *a, const char *user, int64_t now_s, long long ttl_s,
		char *err, size_t errlen)
{
	const struct auth_key *k = NULL;
	jwt_t *jwt = NULL;
	char *tok = NULL, *out = NULL;

	for (size_t i = 0; i < a->nkeys && k == NULL; i++)
		if (a->keys[i].alg == JWT_ALG_HS256)
			k = &a->keys[i];
	if (k == NULL || !valid_user_id(user)) {
		snprintf(err, errlen, k == NULL ? "no HS256 key to sign with" : "invalid user id");
		return NULL;
	}
	if (jwt_new(&jwt) != 0 || jwt_set_alg(jwt, JWT_ALG_HS256, k->key, k->keylen) != 0 ||
	    jwt_add_grant(jwt, "sub", user) != 0 || jwt_add_grant_int(jwt, "iat", now_s) != 0 ||
	    jwt_add_grant_int(jwt, "exp", now_s + ttl_s) != 0 ||
	    (k->kid[0] != '\0' && jwt_add_header(jwt, "kid", k->kid) != 0) ||
	    (a->issuer != NULL && jwt_add_grant(jwt, "iss", a->issuer) != 0) ||
	    (a->audience != NULL && jwt_add_grant(jwt, "aud", a->audience) != 0) ||
	    (tok = jwt_encode_str(jwt)) == NULL) {
		snprintf(err, errlen, "cannot sign a token");
		goto out;
	}
	out = strdup(tok);
out:
	free(tok);
	jwt_free(jwt);
	return out;
}

void auth_scoped_id(struct auth *a, const char *user, const char *client_id, char out[27])
{
	static const char b32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
	uint8_t d[32], ulen[2];
	unsigned int dl = sizeof(d);
	size_t n = strlen(user);
	uint32_t acc = 0;
	int bits = 0, k = 0;

	/* Length-prefixed, so ("ab", "c") and ("a", "bc") differ. */
	ulen[0] = (uint8_t)(n >> 8);
	ulen[1] = (uint8_t)n;
	if (EVP_DigestInit_ex2(a->md, a->sha256, NULL) != 1 ||
	    EVP_DigestUpdate(a->md, ulen, 2) != 1 || EVP_DigestUpdate(a->md, user, n) != 1 ||
	    EVP_DigestUpdate(a->md, client_id, strlen(client_id)) != 1 ||
	    EVP_DigestFinal_ex(a->md, d, &dl) != 1)
		abort();    /* sha256 does not fail on valid input */
	for (int i = 0; k < 26; ) {
		if (bits < 5) {
			acc = (acc << 8) | d[i++];
			bits += 8;
		}
		out[k++] = b32[(acc >> (bits - 5)) & 31];
		bits -= 5;
	}
	out[26] = '\0';
}
