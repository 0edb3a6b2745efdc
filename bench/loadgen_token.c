#include "loadgen_token.h"

#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

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

int lg_token_header(const char *secret, const char *user, int64_t now_s, unsigned ttl_s,
		    char *out, size_t n)
{
	/* {"alg":"HS256","typ":"JWT"} */
	static const char head[] = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";
	char claims[256], b64[400];
	unsigned char mac[32];
	unsigned int maclen = sizeof(mac);
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
	if (HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)out + 7,
		 k - 7, mac, &maclen) == NULL)
		return -1;
	b64url(mac, maclen, b64);
	if (k + 1 + strlen(b64) + 1 > n)
		return -1;
	out[k++] = '.';
	memcpy(out + k, b64, strlen(b64) + 1);
	return 0;
}
