#include "loadgen_token.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>

/* base64url without padding of n bytes, appended at out; returns its length. */
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

/*
 * HMAC-SHA256 keyed once per secret and duplicated per token: OpenSSL 3's
 * one-shot HMAC() fetches the digest and keys it on every call, several
 * microseconds a request that the generator takes from the cores it
 * shares with the gateway. One thread (the generator's loop) only.
 */
static int hs256(const char *secret, const unsigned char *in, size_t n, unsigned char mac[32])
{
	static EVP_MAC_CTX *keyed;
	static char *keyed_secret;
	EVP_MAC_CTX *c;
	size_t ml = 0;
	int ok;

	if (keyed == NULL || strcmp(keyed_secret, secret) != 0) {
		EVP_MAC *m = EVP_MAC_fetch(NULL, "HMAC", NULL);
		OSSL_PARAM params[] = {
			OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
			OSSL_PARAM_construct_end(),
		};

		EVP_MAC_CTX_free(keyed);
		free(keyed_secret);
		keyed = m != NULL ? EVP_MAC_CTX_new(m) : NULL;
		EVP_MAC_free(m);
		keyed_secret = strdup(secret);
		if (keyed == NULL || keyed_secret == NULL ||
		    EVP_MAC_init(keyed, (const unsigned char *)secret, strlen(secret), params) != 1) {
			EVP_MAC_CTX_free(keyed);
			keyed = NULL;
			return -1;
		}
	}
	c = EVP_MAC_CTX_dup(keyed);
	ok = c != NULL && EVP_MAC_update(c, in, n) == 1 && EVP_MAC_final(c, mac, &ml, 32) == 1 &&
	     ml == 32;
	EVP_MAC_CTX_free(c);
	return ok ? 0 : -1;
}

int lg_token_header(const char *secret, const char *user, int64_t now_s, unsigned ttl_s,
		    char *out, size_t n)
{
	/* {"alg":"HS256","typ":"JWT"} */
	static const char head[] = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";
	char claims[256], b64[400];
	unsigned char mac[32];
	size_t k;
	int cl;

	cl = snprintf(claims, sizeof(claims), "{\"sub\":\"%s\",\"iat\":%lld,\"exp\":%lld}", user,
		      (long long)now_s, (long long)now_s + ttl_s);
	if (cl < 0 || (size_t)cl >= sizeof(claims))
		return -1;
	k = (size_t)snprintf(out, n, "Bearer %s.", head);
	if (k >= n || k + (size_t)cl * 2 + 64 >= n)
		return -1;
	k += b64url((const unsigned char *)claims, (size_t)cl, out + k);
	/* The signing input is everything after "Bearer ". */
	if (hs256(secret, (const unsigned char *)out + 7, k - 7, mac) < 0)
		return -1;
	b64url(mac, sizeof(mac), b64);
	if (k + 1 + strlen(b64) + 1 > n)
		return -1;
	out[k++] = '.';
	memcpy(out + k, b64, strlen(b64) + 1);
	return 0;
}
