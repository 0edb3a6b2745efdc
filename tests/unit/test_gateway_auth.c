/*
 * Buyer identity (gateway/auth.h): tokens signed with HS256 secrets and with
 * RS256 / ES256 keys of a JWKS file (generated here with OpenSSL), their
 * claims, key rotation by kid, and the attacks a verifier must refuse.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jwt.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include "gateway.h"

#define SECRET "0123456789abcdef0123456789abcdef"
#define SECRET2 "fedcba9876543210fedcba9876543210"
#define NOW 1800000000LL

/* A token over claims with key/alg (libjwt signs; kid may be NULL). */
static char *make_token(jwt_alg_t alg, const unsigned char *key, int keylen, const char *kid,
			const char *sub, long exp, long nbf, const char *iss, const char *aud)
{
	jwt_t *jwt = NULL;
	char *t, *out;

	assert_int_equal(jwt_new(&jwt), 0);
	assert_int_equal(jwt_set_alg(jwt, alg, key, keylen), 0);
	if (kid != NULL)
		assert_int_equal(jwt_add_header(jwt, "kid", kid), 0);
	if (sub != NULL)
		assert_int_equal(jwt_add_grant(jwt, "sub", sub), 0);
	if (exp != 0)
		assert_int_equal(jwt_add_grant_int(jwt, "exp", exp), 0);
	if (nbf != 0)
		assert_int_equal(jwt_add_grant_int(jwt, "nbf", nbf), 0);
	if (iss != NULL)
		assert_int_equal(jwt_add_grant(jwt, "iss", iss), 0);
	if (aud != NULL)
		assert_int_equal(jwt_add_grant(jwt, "aud", aud), 0);
	t = jwt_encode_str(jwt);
	assert_non_null(t);
	out = strdup(t);
	free(t);
	jwt_free(jwt);
	return out;
}

static char *hs(const char *secret, const char *kid, const char *sub, long exp)
{
	return make_token(JWT_ALG_HS256, (const unsigned char *)secret, (int)strlen(secret), kid,
			  sub, exp, 0, NULL, NULL);
}

static int verify(struct auth *a, const char *tok, char *user)
{
	char err[256] = "";
	int rc = auth_verify(a, tok, NOW, user, err, sizeof(err));

	if (rc < 0)
		assert_true(err[0] != '\0');
	return rc;
}

static void test_hs256(void **state)
{
	struct auth a;
	char err[256], user[FS_ID_MAX + 1], *t;

	(void)state;
	assert_int_equal(auth_init(&a, SECRET, NULL, "", "", 30, err, sizeof(err)), 0);
	t = hs(SECRET, NULL, "alice", NOW + 60);
	assert_int_equal(verify(&a, t, user), 0);
	assert_string_equal(user, "alice");
	/* The cache answers the same token again, and only it. */
	assert_int_equal(verify(&a, t, user), 0);
	assert_int_equal(a.hits, 1);
	free(t);

	t = hs(SECRET2, NULL, "alice", NOW + 60);       /* wrong secret */
	assert_int_equal(verify(&a, t, user), -1);
	free(t);
	t = hs(SECRET, NULL, "alice", NOW - 31);        /* expired beyond the leeway */
	assert_int_equal(verify(&a, t, user), -1);
	free(t);
	t = hs(SECRET, NULL, "alice", NOW - 29);        /* within it */
	assert_int_equal(verify(&a, t, user), 0);
	free(t);
	t = hs(SECRET, NULL, "alice", 0);               /* no exp */
	assert_int_equal(verify(&a, t, user), -1);
	free(t);
	t = make_token(JWT_ALG_HS256, (const unsigned char *)SECRET, 32, NULL, "alice",
		       NOW + 60, NOW + 31, NULL, NULL);  /* not yet valid */
	assert_int_equal(verify(&a, t, user), -1);
	free(t);
	t = hs(SECRET, NULL, "bad user", NOW + 60);     /* sub must be a user id */
	assert_int_equal(verify(&a, t, user), -1);
	free(t);
	t = hs(SECRET, NULL, NULL, NOW + 60);           /* no sub */
	assert_int_equal(verify(&a, t, user), -1);
	free(t);
	assert_int_equal(verify(&a, "not.a.token", user), -1);
	assert_int_equal(verify(&a, "", user), -1);
	/* An unsigned token ("alg":"none") is never accepted. */
	assert_int_equal(verify(&a, "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0."
			 "eyJzdWIiOiJhbGljZSIsImV4cCI6MTgwMDAwMDA2MH0.", user), -1);
	auth_free(&a);
	/* Short secrets and no keys at all are refused at start-up. */
	assert_int_equal(auth_init(&a, "short", NULL, "", "", 30, err, sizeof(err)), -1);
	assert_int_equal(auth_init(&a, "", NULL, "", "", 30, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "no key"));
}

static void test_issuer_audience_and_sign(void **state)
{
	struct auth a;
	char err[256], user[FS_ID_MAX + 1], *t;

	(void)state;
	assert_int_equal(auth_init(&a, SECRET, NULL, "shop", "flashsale", 0, err, sizeof(err)), 0);
	t = make_token(JWT_ALG_HS256, (const unsigned char *)SECRET, 32, NULL, "bob", NOW + 60, 0,
		       "shop", "flashsale");
	assert_int_equal(verify(&a, t, user), 0);
	free(t);
	t = make_token(JWT_ALG_HS256, (const unsigned char *)SECRET, 32, NULL, "bob", NOW + 60, 0,
		       "other", "flashsale");
	assert_int_equal(verify(&a, t, user), -1);
	free(t);
	t = make_token(JWT_ALG_HS256, (const unsigned char *)SECRET, 32, NULL, "bob", NOW + 60, 0,
		       "shop", NULL);
	assert_int_equal(verify(&a, t, user), -1);
	free(t);
	/* auth_sign makes what auth_verify takes, iss and aud included. */
	t = auth_sign(&a, "carol", NOW, 60, err, sizeof(err));
	assert_non_null(t);
	assert_int_equal(verify(&a, t, user), 0);
	assert_string_equal(user, "carol");
	free(t);
	auth_free(&a);
}

/* base64url without padding, for the JWKS this test writes. */
static void b64url(const unsigned char *in, size_t n, char *out)
{
	int len = EVP_EncodeBlock((unsigned char *)out, in, (int)n);

	while (len > 0 && out[len - 1] == '=')
		len--;
	out[len] = '\0';
	for (char *p = out; *p; p++)
		*p = *p == '+' ? '-' : *p == '/' ? '_' : *p;
}

static char *private_pem(EVP_PKEY *k)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *data, *pem;
	long len;

	assert_int_equal(PEM_write_bio_PrivateKey(bio, k, NULL, NULL, 0, NULL, NULL), 1);
	len = BIO_get_mem_data(bio, &data);
	pem = strndup(data, (size_t)len);
	BIO_free(bio);
	return pem;
}

static char *public_pem(EVP_PKEY *k)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *data, *pem;
	long len;

	assert_int_equal(PEM_write_bio_PUBKEY(bio, k), 1);
	len = BIO_get_mem_data(bio, &data);
	pem = strndup(data, (size_t)len);
	BIO_free(bio);
	return pem;
}

static void bn_b64(EVP_PKEY *k, const char *name, char *out)
{
	BIGNUM *bn = NULL;
	unsigned char buf[600];
	int n;

	assert_int_equal(EVP_PKEY_get_bn_param(k, name, &bn), 1);
	n = BN_bn2bin(bn, buf);
	b64url(buf, (size_t)n, out);
	BN_free(bn);
}

/*
 * A JWKS with an RSA key, an EC key and an HS256 key (rotation: the token's
 * kid picks one), and the algorithm-confusion attack: an HS256 token
 * "signed" with the RSA public key as its secret.
 */
static void test_jwks(void **state)
{
	EVP_PKEY *rsa = EVP_RSA_gen(2048), *ec = EVP_EC_gen("P-256");
	char n[600], e[16], x[64], y[64], k[64], path[] = "/tmp/fs-jwks-XXXXXX";
	char err[256], user[FS_ID_MAX + 1], *rsa_priv, *ec_priv, *t, *pub;
	unsigned char pt[65];
	size_t ptl = 0;
	struct auth a;
	FILE *f;
	int fd;

	(void)state;
	assert_non_null(rsa);
	assert_non_null(ec);
	bn_b64(rsa, OSSL_PKEY_PARAM_RSA_N, n);
	bn_b64(rsa, OSSL_PKEY_PARAM_RSA_E, e);
	assert_int_equal(EVP_PKEY_get_octet_string_param(ec, OSSL_PKEY_PARAM_PUB_KEY, pt,
							 sizeof(pt), &ptl), 1);
	assert_int_equal(ptl, 65);
	b64url(pt + 1, 32, x);
	b64url(pt + 33, 32, y);
	b64url((const unsigned char *)SECRET2, 32, k);
	fd = mkstemp(path);
	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	fprintf(f, "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"r1\",\"alg\":\"RS256\",\"use\":\"sig\","
		"\"n\":\"%s\",\"e\":\"%s\"},{\"kty\":\"EC\",\"kid\":\"e1\",\"crv\":\"P-256\","
		"\"x\":\"%s\",\"y\":\"%s\"},{\"kty\":\"oct\",\"kid\":\"h2\",\"k\":\"%s\"},"
		"{\"kty\":\"RSA\",\"use\":\"enc\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}", n, e, x, y, k);
	fclose(f);
	assert_int_equal(auth_init(&a, SECRET, path, "", "", 30, err, sizeof(err)), 0);
	assert_int_equal(a.nkeys, 4);

	rsa_priv = private_pem(rsa);
	ec_priv = private_pem(ec);
	t = make_token(JWT_ALG_RS256, (unsigned char *)rsa_priv, (int)strlen(rsa_priv), "r1",
		       "dave", NOW + 60, 0, NULL, NULL);
	assert_int_equal(verify(&a, t, user), 0);
	assert_string_equal(user, "dave");
	free(t);
	t = make_token(JWT_ALG_ES256, (unsigned char *)ec_priv, (int)strlen(ec_priv), "e1",
		       "erin", NOW + 60, 0, NULL, NULL);
	assert_int_equal(verify(&a, t, user), 0);
	assert_string_equal(user, "erin");
	free(t);
	/* A kid naming another key than the one that signed: refused. */
	t = make_token(JWT_ALG_ES256, (unsigned char *)ec_priv, (int)strlen(ec_priv), "r1",
		       "erin", NOW + 60, 0, NULL, NULL);
	assert_int_equal(verify(&a, t, user), -1);
	free(t);
	/* Rotation: the old secret (no kid) and the new one (kid h2) both work. */
	t = hs(SECRET2, "h2", "frank", NOW + 60);
	assert_int_equal(verify(&a, t, user), 0);
	free(t);
	t = hs(SECRET, NULL, "frank", NOW + 60);
	assert_int_equal(verify(&a, t, user), 0);
	free(t);
	/* Algorithm confusion: the RSA public key (PEM) used as an HMAC secret. */
	pub = public_pem(rsa);
	t = make_token(JWT_ALG_HS256, (unsigned char *)pub, (int)strlen(pub), "r1", "mallory",
		       NOW + 60, 0, NULL, NULL);
	assert_int_equal(verify(&a, t, user), -1);
	free(t);
	t = make_token(JWT_ALG_HS256, (unsigned char *)pub, (int)strlen(pub), NULL, "mallory",
		       NOW + 60, 0, NULL, NULL);
	assert_int_equal(verify(&a, t, user), -1);
	free(t);
	auth_free(&a);
	free(pub);
	free(rsa_priv);
	free(ec_priv);
	EVP_PKEY_free(rsa);
	EVP_PKEY_free(ec);

	/* A JWKS with a broken key is refused whole. */
	f = fopen(path, "w");
	fprintf(f, "{\"keys\":[{\"kty\":\"EC\",\"kid\":\"e1\",\"crv\":\"P-384\",\"x\":\"AA\","
		"\"y\":\"AA\"}]}");
	fclose(f);
	assert_int_equal(auth_init(&a, "", path, "", "", 30, err, sizeof(err)), -1);
	unlink(path);
}

/* A token of raw header and claims JSON, HMAC-SHA256 signed with secret by OpenSSL. */
static char *hs_raw(const char *secret, const char *header, const char *claims)
{
	char h[512], c[512], *t = malloc(2048);
	unsigned char mac[32];
	unsigned int ml = sizeof(mac);

	b64url((const unsigned char *)header, strlen(header), h);
	b64url((const unsigned char *)claims, strlen(claims), c);
	snprintf(t, 2048, "%s.%s", h, c);
	assert_non_null(HMAC(EVP_sha256(), secret, (int)strlen(secret), (unsigned char *)t,
			     strlen(t), mac, &ml));
	strcat(t, ".");
	b64url(mac, ml, t + strlen(t));
	return t;
}

/*
 * HS256 is checked by the gateway's own use of OpenSSL's HMAC, not by
 * libjwt: the edges a verifier of its own must get right.
 */
/* Sign header and claims with SECRET (hs_raw), verify, free: auth_verify's answer. */
static int verify_raw(struct auth *a, const char *header, const char *claims, char *user)
{
	char *t = hs_raw(SECRET, header, claims);
	int rc = verify(a, t, user);

	free(t);
	return rc;
}

static void test_hs256_edges(void **state)
{
	struct auth a;
	char err[256], user[FS_ID_MAX + 1], claims[256], *t, *dot;
	const char *hdr = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
	size_t n;

	(void)state;
	assert_int_equal(auth_init(&a, SECRET, NULL, "", "", 30, err, sizeof(err)), 0);
	snprintf(claims, sizeof(claims), "{\"sub\":\"alice\",\"exp\":%lld}", NOW + 60);
	t = hs_raw(SECRET, hdr, claims);
	assert_int_equal(verify(&a, t, user), 0);
	assert_string_equal(user, "alice");
	/* The last character of a 32-byte MAC carries 2 unused bits: a token
	 * whose signature differs only there is not the token that was signed. */
	n = strlen(t);
	{
		static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
					  "0123456789-_";
		size_t at = (size_t)(strchr(b64, t[n - 1]) - b64);

		assert_int_equal(at & 3, 0);            /* canonical: the two bits are 0 */
		t[n - 1] = b64[at | 1];
	}
	assert_int_equal(verify(&a, t, user), -1);
	t[n - 1] = '\0';                            /* a shorter signature */
	assert_int_equal(verify(&a, t, user), -1);
	free(t);

	/* Claims swapped under a valid signature. */
	t = hs_raw(SECRET, hdr, claims);
	{
		char forged[2048], body[512];

		snprintf(body, sizeof(body), "{\"sub\":\"mallory\",\"exp\":%lld}", NOW + 60);
		dot = strchr(t, '.');
		*dot = '\0';
		snprintf(forged, sizeof(forged), "%s.", t);
		b64url((const unsigned char *)body, strlen(body), forged + strlen(forged));
		strcat(forged, strrchr(dot + 1, '.'));
		assert_int_equal(verify(&a, forged, user), -1);
		strcat(forged, ".x");                   /* and four segments */
		assert_int_equal(verify(&a, forged, user), -1);
	}
	free(t);

	/* Signed, but not claims we take: not an object, exp not a date. */
	static const char *const bad[] = {
		"[1,2]", "\"alice\"", "{\"sub\":\"alice\",\"exp\":\"1900000000\"}",
		"{\"sub\":\"alice\",\"exp\":1e300}", "{\"sub\":\"alice\",\"exp\":-1e300}",
		"{\"sub\":7,\"exp\":1900000000}", "{\"sub\":\"alice\",\"exp\":1900000000",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		t = hs_raw(SECRET, hdr, bad[i]);
		assert_int_equal(verify(&a, t, user), -1);
		free(t);
	}
	/* A fractional NumericDate is a date (RFC 7519). */
	snprintf(claims, sizeof(claims), "{\"sub\":\"alice\",\"exp\":%lld.5}", NOW + 60);
	assert_int_equal(verify_raw(&a, hdr, claims, user), 0);
	/* The header decides the algorithm: HS512 or none with our secret's MAC is refused. */
	assert_int_equal(verify_raw(&a, "{\"alg\":\"HS512\"}", claims, user), -1);
	assert_int_equal(verify_raw(&a, "{\"alg\":\"none\"}", claims, user), -1);
	auth_free(&a);
}

/*
 * One HMAC context per key serves token after token (auth_hs256_ok
 * re-initialises it): each verdict is the token's own, whatever the tokens
 * before it were, valid, forged or cut short. Distinct tokens, so the cache
 * answers none of them.
 */
static void test_hs256_context_reused(void **state)
{
	struct auth a;
	char err[256], user[FS_ID_MAX + 1], sub[32], *t, *bad;
	uint64_t calls = 0;

	(void)state;
	assert_int_equal(auth_init(&a, SECRET, NULL, "", "", 30, err, sizeof(err)), 0);
	for (int i = 0; i < 50; i++) {
		snprintf(sub, sizeof(sub), "buyer-%d", i);
		t = hs(SECRET, NULL, sub, NOW + 60 + i);
		assert_int_equal(verify(&a, t, user), 0);
		assert_string_equal(user, sub);
		bad = hs(SECRET2, NULL, sub, NOW + 61 + i);     /* another secret */
		assert_int_equal(verify(&a, bad, user), -1);
		free(bad);
		t[strlen(t) - 5] = '\0';                        /* cut short */
		assert_int_equal(verify(&a, t, user), -1);
		free(t);
		calls += 3;
	}
	assert_int_equal(a.hits, 0);
	assert_int_equal(a.misses, calls);
	auth_free(&a);
}

/*
 * The header memo (auth.h): a header byte for byte the last one parsed is
 * not parsed again, and any other header is judged on its own bytes, so a
 * valid header remembered never lends its alg or kid to another token.
 */
static void test_header_memo(void **state)
{
	struct auth a;
	char err[256], user[FS_ID_MAX + 1], claims[256];
	const char *hdr = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
	size_t memo;

	(void)state;
	assert_int_equal(auth_init(&a, SECRET, NULL, "", "", 30, err, sizeof(err)), 0);
	assert_int_equal(a.memo_len, 0);
	snprintf(claims, sizeof(claims), "{\"sub\":\"alice\",\"exp\":%lld}", NOW + 60);
	assert_int_equal(verify_raw(&a, hdr, claims, user), 0);
	memo = a.memo_len;
	assert_true(memo > 0);
	/* Another buyer, the same header: remembered, and the claims are the token's own. */
	snprintf(claims, sizeof(claims), "{\"sub\":\"bob\",\"exp\":%lld}", NOW + 60);
	assert_int_equal(verify_raw(&a, hdr, claims, user), 0);
	assert_string_equal(user, "bob");
	assert_int_equal(a.memo_hits, 1);
	/* Other headers, with our MAC: judged on their own bytes. First one of
	 * the remembered header's length (the memo still holds it). */
	assert_int_equal(strlen("{\"alg\":\"HS384\",\"typ\":\"JWT\"}"), strlen(hdr));
	assert_int_equal(verify_raw(&a, "{\"alg\":\"HS384\",\"typ\":\"JWT\"}", claims, user), -1);
	assert_int_equal(verify_raw(&a, "{\"alg\":\"none\",\"typ\":\"JWT\"}", claims, user), -1);
	assert_int_equal(verify_raw(&a, "{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"other\"}",
				    claims, user), -1);
	assert_int_equal(verify_raw(&a, "{\"alg\":\"HS256\",", claims, user), -1);   /* not JSON */
	/* And the first header still verifies, as itself. */
	snprintf(claims, sizeof(claims), "{\"sub\":\"carol\",\"exp\":%lld}", NOW + 60);
	assert_int_equal(verify_raw(&a, hdr, claims, user), 0);
	assert_string_equal(user, "carol");
	assert_int_equal(a.memo_len, memo);
	assert_int_equal(a.memo_hits, 1);
	auth_free(&a);
}

/* A buyer's own request id becomes one no other buyer can name. */
static void test_scoped_ids(void **state)
{
	struct auth au;
	char a[27], b[27], c[27], d[27], err[256];

	(void)state;
	assert_int_equal(auth_init(&au, SECRET, NULL, "", "", 30, err, sizeof(err)), 0);
	auth_scoped_id(&au, "alice", "checkout-1", a);
	auth_scoped_id(&au, "alice", "checkout-1", b);
	auth_scoped_id(&au, "mallory", "checkout-1", c);
	auth_scoped_id(&au, "alicec", "heckout-1", d);
	assert_string_equal(a, b);
	assert_string_not_equal(a, c);
	assert_string_not_equal(a, d);
	assert_true(valid_request_id(a));
	assert_int_equal(strlen(a), 26);
	/* Pinned: PostgreSQL and Redis hold these ids, and deploy/stack.py
	 * scoped_id() computes the same for the tests. */
	assert_string_equal(a, "CX0JY8KRPBCWV2QJPCQZNFC19V");
	auth_free(&au);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hs256),
		cmocka_unit_test(test_hs256_edges),
		cmocka_unit_test(test_hs256_context_reused),
		cmocka_unit_test(test_header_memo),
		cmocka_unit_test(test_issuer_audience_and_sign),
		cmocka_unit_test(test_jwks),
		cmocka_unit_test(test_scoped_ids),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
