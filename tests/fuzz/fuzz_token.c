/*
 * libFuzzer target: buyer tokens (gateway/auth.c), whose HS256 path parses
 * the token itself (base64url, JSON) and checks the MAC with OpenSSL. Input:
 *
 *   byte 0 even   the rest is a bearer token, as the Authorization header
 *                 carries it (up to the first NUL);
 *   byte 0 odd    the rest is "header JSON" NUL "claims JSON": this target
 *                 signs them with the test secret, so that the claims parser
 *                 is reached, not only the signature check.
 *
 * Invariants: a token is accepted only if its third segment is the
 * canonical base64url HMAC-SHA256 of the first two with the secret
 * (`unsigned_accepted`, checked here with OpenSSL's one-shot HMAC); the
 * user of an accepted token is a valid user id and its claims name it
 * (`bad_user`); the second verification (from the cache) says the same as
 * the first (`cache_differs`).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "auth.h"
#include "util.h"

#include "fuzz_known.h"

#define SECRET "fuzz-secret-0123456789abcdef0123"
#define NOW 1800000000LL
#define TOKEN_MAX 4200

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FAIL(id, detail) fuzz_fail("fuzz_token", (id), (detail))

static struct auth a;
static bool ready;

static size_t b64url(const unsigned char *in, size_t n, char *out)
{
	int len = EVP_EncodeBlock((unsigned char *)out, in, (int)n);

	while (len > 0 && out[len - 1] == '=')
		len--;
	for (int i = 0; i < len; i++)
		out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
	out[len] = '\0';
	return (size_t)len;
}

/* header.claims.signature of the two JSON texts; false if it would not fit. */
static bool sign(const char *header, size_t hn, const char *claims, size_t cn, char *out)
{
	unsigned char mac[32];
	unsigned int ml = sizeof(mac);
	size_t k;

	if ((hn + cn) / 3 * 4 + 80 > TOKEN_MAX)
		return false;
	k = b64url((const unsigned char *)header, hn, out);
	out[k++] = '.';
	k += b64url((const unsigned char *)claims, cn, out + k);
	if (HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (unsigned char *)out, k, mac,
		 &ml) == NULL)
		return false;
	out[k++] = '.';
	b64url(mac, ml, out + k);
	return true;
}

/* Is token's third segment the canonical MAC of the first two? */
static bool signed_by_us(const char *token)
{
	const char *d1 = strchr(token, '.'), *d2 = d1 != NULL ? strchr(d1 + 1, '.') : NULL;
	unsigned char mac[32];
	unsigned int ml = sizeof(mac);
	char want[64];

	if (d2 == NULL || strchr(d2 + 1, '.') != NULL)
		return false;
	if (HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (const unsigned char *)token,
		 (size_t)(d2 - token), mac, &ml) == NULL)
		return false;
	b64url(mac, ml, want);
	return strcmp(want, d2 + 1) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char token[TOKEN_MAX + 1];
	char user[FS_ID_MAX + 1], again[FS_ID_MAX + 1], err[256], detail[300];
	int rc, rc2;

	if (!ready) {
		if (auth_init(&a, SECRET, NULL, "shop", "flashsale", 30, err, sizeof(err)) < 0) {
			fprintf(stderr, "fuzz_token: auth_init: %s\n", err);
			abort();
		}
		ready = true;
	}
	if (size < 1)
		return 0;
	if (data[0] % 2 == 0) {
		size_t n = size - 1 < TOKEN_MAX ? size - 1 : TOKEN_MAX;

		memcpy(token, data + 1, n);
		token[n] = '\0';
	} else {
		const char *h = (const char *)data + 1;
		const char *nul = memchr(h, '\0', size - 1);

		if (nul == NULL ||
		    !sign(h, (size_t)(nul - h), nul + 1, size - 1 - (size_t)(nul + 1 - h), token))
			return 0;
	}
	rc = auth_verify(&a, token, NOW, user, err, sizeof(err));
	if (rc < 0 && err[0] == '\0')
		FAIL("no_reason", "a refusal without a reason");
	if (rc == 0) {
		if (!signed_by_us(token))
			FAIL("unsigned_accepted", token);
		if (!valid_user_id(user)) {
			snprintf(detail, sizeof(detail), "user \"%.200s\"", user);
			FAIL("bad_user", detail);
		}
	}
	rc2 = auth_verify(&a, token, NOW, again, err, sizeof(err));
	if (rc2 != rc || (rc == 0 && strcmp(user, again) != 0))
		FAIL("cache_differs", token);
	return 0;
}
