/*
 * libFuzzer target: the gateway's request bodies (gateway/request.c). Each
 * input is one HTTP body, given to every parser of client JSON; what a
 * parser accepts must satisfy the rules it promises, and the parsers must
 * agree where they read the same field.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "request.h"
#include "util.h"

#include "fuzz_known.h"

/*
 * max_body given to the parsers: the gateway's default gateway.max_body,
 * so larger inputs test the limit; FS_FUZZ_MAX_BODY (up to the key's bound,
 * 1 MiB) replays or fuzzs larger bodies.
 */
static size_t max_body = 4096;
/* A fixed clock keeps runs reproducible (the promo default start). */
#define FUZZ_NOW_MS 1700000000000LL
/* request_parse_promo's bound on timestamps. */
#define FUZZ_TS_MAX 9000000000000LL

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FAIL(id, detail) fuzz_fail("fuzz_http_body", (id), (detail))

/* On failure a parser names one of the documented codes and a reason. */
static void check_failure(const char *code, const char *err)
{
	if (code == NULL ||
	    (strcmp(code, "body_too_large") != 0 && strcmp(code, "invalid_json") != 0 &&
	     strcmp(code, "invalid_field") != 0))
		FAIL("error_code", code != NULL ? code : "NULL");
	if (err[0] == '\0')
		FAIL("error_reason", "a failure without a reason");
}

/*
 * The body with every raw NUL byte turned into a space, or NULL when it has
 * none. cJSON takes a raw NUL for whitespace between tokens and copies it
 * into strings, where it ends the C string: in a field the gateway reads,
 * "a<NUL>junk" would pass as "a" (the rule request.c enforces for
 * "\u0000"). A space reads the same between tokens and is invalid in every
 * id, so a parser must answer alike for both bodies, or have been cut short.
 */
static char *nul_to_space(const char *body, size_t len)
{
	char *copy;

	if (memchr(body, '\0', len) == NULL)
		return NULL;
	copy = malloc(len);
	if (copy == NULL)
		return NULL;
	for (size_t i = 0; i < len; i++)
		copy[i] = body[i] != '\0' ? body[i] : ' ';
	return copy;
}

static bool purchase_equal(const struct purchase_req *a, const struct purchase_req *b)
{
	return strcmp(a->sku, b->sku) == 0 && strcmp(a->user_id, b->user_id) == 0 &&
	       a->qty == b->qty && a->generated_id == b->generated_id &&
	       (a->generated_id || strcmp(a->request_id, b->request_id) == 0);
}

static bool promo_equal(const struct promo_req *a, const struct promo_req *b)
{
	return strcmp(a->sku, b->sku) == 0 && a->stock == b->stock &&
	       a->per_user_limit == b->per_user_limit && a->start_ms == b->start_ms &&
	       a->end_ms == b->end_ms && a->hold_seconds == b->hold_seconds &&
	       a->start_given == b->start_given;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *env = getenv("FS_FUZZ_MAX_BODY");

	(void)argc;
	(void)argv;
	if (env != NULL && atol(env) > 0)
		max_body = (size_t)atol(env);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct purchase_req pr;
	struct promo_req promo;
	char owner[FS_ID_MAX + 1];
	char err[256];
	const char *code;
	const char *body;
	char *copy, *spaced;
	int rc_purchase, rc_owner, rc_promo;

	/* An exact-size copy, not NUL-terminated: ASan sees any over-read. */
	copy = malloc(size > 0 ? size : 1);
	if (copy == NULL)
		return 0;
	if (size > 0)
		memcpy(copy, data, size);
	body = copy;

	code = NULL;
	err[0] = '\0';
	rc_purchase = request_parse_purchase(body, size, max_body, &pr, &code, err, sizeof(err));
	if (rc_purchase == 0) {
		if (!valid_sku(pr.sku))
			FAIL("purchase_fields", "invalid sku accepted");
		/* user_id is optional: the buyer is the token's. */
		if (pr.user_id[0] != '\0' && !valid_user_id(pr.user_id))
			FAIL("purchase_fields", "invalid user_id accepted");
		if (!valid_request_id(pr.request_id))
			FAIL("purchase_fields", "invalid request_id accepted");
		if (pr.qty < 1 || pr.qty > REQ_INT_MAX)
			FAIL("purchase_fields", "qty out of [1, REQ_INT_MAX]");
		if (pr.generated_id && strlen(pr.request_id) != 26)
			FAIL("purchase_fields", "generated request_id is not 26 characters");
	} else if (rc_purchase == -1) {
		check_failure(code, err);
	} else {
		FAIL("purchase_fields", "returned neither 0 nor -1");
	}

	code = NULL;
	err[0] = '\0';
	rc_owner = request_parse_owner(body, size, max_body, owner, &code, err, sizeof(err));
	if (rc_owner == 0) {
		if (owner[0] != '\0' && !valid_user_id(owner))
			FAIL("owner_fields", "invalid user_id accepted");
	} else if (rc_owner == -1) {
		check_failure(code, err);
		if (owner[0] != '\0')
			FAIL("owner_fields", "user_id left set on failure");
	} else {
		FAIL("owner_fields", "returned neither 0 nor -1");
	}
	/* Both read the optional "user_id" alike: a purchase implies an owner. */
	if (rc_purchase == 0 && (rc_owner != 0 || strcmp(owner, pr.user_id) != 0))
		FAIL("parsers_disagree", "purchase accepted, owner read another user_id");

	code = NULL;
	err[0] = '\0';
	rc_promo = request_parse_promo(body, size, max_body, FUZZ_NOW_MS, &promo, &code, err,
				       sizeof(err));
	if (rc_promo == 0) {
		if (!valid_sku(promo.sku))
			FAIL("promo_fields", "invalid sku accepted");
		if (promo.stock < 0 || promo.stock > REQ_INT_MAX)
			FAIL("promo_fields", "stock out of range");
		if (promo.per_user_limit < 1 || promo.per_user_limit > REQ_INT_MAX)
			FAIL("promo_fields", "per_user_limit out of range");
		if (promo.start_ms < 0 || promo.start_ms > FUZZ_TS_MAX ||
		    (!promo.start_given && promo.start_ms != FUZZ_NOW_MS))
			FAIL("promo_fields", "bad start_ms");
		if (promo.end_ms <= promo.start_ms || promo.end_ms > FUZZ_TS_MAX + 3600000)
			FAIL("promo_fields", "bad end_ms");
		if (promo.hold_seconds < 1 || promo.hold_seconds > 7 * 86400)
			FAIL("promo_fields", "hold_seconds out of range");
		/* A promo's sku is read like a purchase's. */
		if (rc_purchase == 0 && strcmp(promo.sku, pr.sku) != 0)
			FAIL("parsers_disagree", "promo and purchase read another sku");
	} else {
		check_failure(code, err);
	}

	spaced = rc_purchase == 0 || rc_owner == 0 || rc_promo == 0 ? nul_to_space(body, size) :
								      NULL;
	if (spaced != NULL) {
		struct purchase_req pr2;
		struct promo_req promo2;
		char owner2[FS_ID_MAX + 1];

		if (rc_purchase == 0 && (request_parse_purchase(spaced, size, max_body, &pr2, &code,
								err, sizeof(err)) != 0 ||
					 !purchase_equal(&pr, &pr2)))
			FAIL("nul_cut", "purchase: a raw NUL byte changed what was read");
		if (rc_owner == 0 && (request_parse_owner(spaced, size, max_body, owner2, &code,
							  err, sizeof(err)) != 0 ||
				      strcmp(owner, owner2) != 0))
			FAIL("nul_cut", "owner: a raw NUL byte changed what was read");
		if (rc_promo == 0 && (request_parse_promo(spaced, size, max_body, FUZZ_NOW_MS,
							  &promo2, &code, err, sizeof(err)) != 0 ||
				      !promo_equal(&promo, &promo2)))
			FAIL("nul_cut", "promo: a raw NUL byte changed what was read");
		free(spaced);
	}
	free(copy);
	return 0;
}
