#include "request.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "util.h"

/* Our bodies have a handful of members; the admin one has six. */
#define REQ_MAX_MEMBERS 32

/* Parse the body as one JSON object; NULL (code/err set) otherwise. */
static cJSON *req_object(const char *body, size_t len, size_t max_body,
			 const char **code, char *err, size_t errlen)
{
	cJSON *root;
	size_t n;

	if (len > max_body) {
		*code = "body_too_large";
		snprintf(err, errlen, "body is %zu bytes, the limit is %zu", len, max_body);
		return NULL;
	}
	if (body == NULL || len == 0) {
		*code = "invalid_json";
		snprintf(err, errlen, "empty body: a JSON object is expected");
		return NULL;
	}
	/* cJSON_ParseWithLength does not need a NUL; require_null_terminated
	 * is not available with a length, so trailing garbage is checked via end. */
	{
		const char *end = NULL;

		root = cJSON_ParseWithLengthOpts(body, len, &end, false);
		if (root != NULL && end != NULL) {
			while (end < body + len && (*end == ' ' || *end == '\t' ||
						    *end == '\r' || *end == '\n'))
				end++;
			/* Only whitespace may follow: not even a NUL and junk after it. */
			if (end < body + len) {
				cJSON_Delete(root);
				root = NULL;
			}
		}
	}
	if (root == NULL) {
		*code = "invalid_json";
		snprintf(err, errlen, "body is not valid JSON");
		return NULL;
	}
	/* cJSON makes C strings, which end at a NUL: "a\u0000b", or a raw NUL
	 * inside a string (which cJSON takes, found by fuzzing), would be "a". */
	if (memmem(body, len, "\\u0000", 6) != NULL || memchr(body, 0, len) != NULL) {
		cJSON_Delete(root);
		*code = "invalid_json";
		snprintf(err, errlen, "strings must not contain NUL characters");
		return NULL;
	}
	if (!cJSON_IsObject(root)) {
		cJSON_Delete(root);
		*code = "invalid_json";
		snprintf(err, errlen, "body must be a JSON object");
		return NULL;
	}
	/*
	 * cJSON keeps every member and finds the first: a proxy in front that
	 * takes the last would read another request. Ambiguity is refused. The
	 * pairwise check is bounded by REQ_MAX_MEMBERS (a 1 MB body of 10^5
	 * members took 24 s before: found by fuzzing).
	 */
	n = 0;
	for (const cJSON *a = root->child; a != NULL; a = a->next)
		n++;
	if (n > REQ_MAX_MEMBERS) {
		*code = "invalid_json";
		snprintf(err, errlen, "%zu members, at most %d are expected", n, REQ_MAX_MEMBERS);
		cJSON_Delete(root);
		return NULL;
	}
	for (const cJSON *a = root->child; a != NULL; a = a->next)
		for (const cJSON *b = a->next; b != NULL; b = b->next)
			if (strcmp(a->string, b->string) == 0) {
				*code = "invalid_json";
				snprintf(err, errlen, "duplicate key %.64s", a->string);
				cJSON_Delete(root);
				return NULL;
			}
	return root;
}

/*
 * Copy string field name into out (FS_ID_MAX + 1) if valid by check.
 * 1 = copied, 0 = absent (only when optional), -1 = invalid.
 */
static int req_id_field(const cJSON *root, const char *name, bool (*check)(const char *),
			bool optional, char *out, const char **code, char *err, size_t errlen)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, name);

	*code = "invalid_field";
	if (it == NULL || cJSON_IsNull(it)) {
		if (optional)
			return 0;
		snprintf(err, errlen, "%s is required", name);
		return -1;
	}
	if (!cJSON_IsString(it) || it->valuestring == NULL) {
		snprintf(err, errlen, "%s must be a string", name);
		return -1;
	}
	if (!check(it->valuestring)) {
		snprintf(err, errlen, "%s must be 1..%d characters of the allowed set", name, FS_ID_MAX);
		return -1;
	}
	memcpy(out, it->valuestring, strlen(it->valuestring) + 1);
	return 1;
}

/*
 * Integer field in [min, max]: a JSON number with no fractional part
 * (1 and 1.0 are the same number to JSON; 1.5 and "1" are not integers).
 * 1 = set, 0 = absent and optional, -1 = invalid.
 */
static int req_int_field(const cJSON *root, const char *name, long long min, long long max,
			 bool optional, long long *out, const char **code, char *err, size_t errlen)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, name);
	double d;

	*code = "invalid_field";
	if (it == NULL || cJSON_IsNull(it)) {
		if (optional)
			return 0;
		snprintf(err, errlen, "%s is required", name);
		return -1;
	}
	if (!cJSON_IsNumber(it)) {
		snprintf(err, errlen, "%s must be an integer number", name);
		return -1;
	}
	d = it->valuedouble;
	if (!isfinite(d) || d != floor(d)) {
		snprintf(err, errlen, "%s must be an integer number", name);
		return -1;
	}
	if (d < (double)min || d > (double)max) {
		snprintf(err, errlen, "%s must be between %lld and %lld", name, min, max);
		return -1;
	}
	*out = (long long)d;
	return 1;
}

int request_parse_purchase(const char *body, size_t len, size_t max_body,
			   struct purchase_req *out, const char **code,
			   char *err, size_t errlen)
{
	cJSON *root;
	int rc = -1, r;

	memset(out, 0, sizeof(*out));
	root = req_object(body, len, max_body, code, err, errlen);
	if (root == NULL)
		return -1;
	if (req_id_field(root, "sku", valid_sku, false, out->sku, code, err, errlen) < 0 ||
	    req_id_field(root, "user_id", valid_user_id, true, out->user_id, code, err, errlen) < 0 ||
	    req_int_field(root, "qty", 1, REQ_INT_MAX, false, &out->qty, code, err, errlen) < 0)
		goto out;
	r = req_id_field(root, "request_id", valid_request_id, true, out->request_id,
			 code, err, errlen);
	if (r < 0)
		goto out;
	if (r == 0) {
		request_id_new(out->request_id);
		out->generated_id = true;
	}
	rc = 0;
out:
	cJSON_Delete(root);
	return rc;
}

int request_parse_owner(const char *body, size_t len, size_t max_body,
			char user_id[FS_ID_MAX + 1], const char **code,
			char *err, size_t errlen)
{
	cJSON *root;
	int rc;

	user_id[0] = '\0';
	if (len == 0)
		return 0;   /* the buyer is the token's; nothing to check against */
	root = req_object(body, len, max_body, code, err, errlen);
	if (root == NULL)
		return -1;
	rc = req_id_field(root, "user_id", valid_user_id, true, user_id, code, err, errlen);
	cJSON_Delete(root);
	return rc < 0 ? -1 : 0;
}

int request_parse_promo(const char *body, size_t len, size_t max_body, int64_t now,
			struct promo_req *out, const char **code,
			char *err, size_t errlen)
{
	/* ms timestamps up to year ~2255: far beyond any sale, far below 2^53. */
	const long long ts_max = 9000000000000LL;
	cJSON *root;
	int rc = -1, r;

	memset(out, 0, sizeof(*out));
	root = req_object(body, len, max_body, code, err, errlen);
	if (root == NULL)
		return -1;
	if (req_id_field(root, "sku", valid_sku, false, out->sku, code, err, errlen) < 0 ||
	    req_int_field(root, "stock", 0, REQ_INT_MAX, false, &out->stock, code, err, errlen) < 0 ||
	    req_int_field(root, "per_user_limit", 1, REQ_INT_MAX, false, &out->per_user_limit,
			  code, err, errlen) < 0)
		goto out;
	r = req_int_field(root, "start_ms", 0, ts_max, true, &out->start_ms, code, err, errlen);
	if (r < 0)
		goto out;
	out->start_given = r == 1;
	if (r == 0)
		out->start_ms = now;
	r = req_int_field(root, "end_ms", 0, ts_max, true, &out->end_ms, code, err, errlen);
	if (r < 0)
		goto out;
	if (r == 0)
		out->end_ms = out->start_ms + 3600000;
	if (out->end_ms <= out->start_ms) {
		*code = "invalid_field";
		snprintf(err, errlen, "end_ms must be greater than start_ms");
		goto out;
	}
	/* A hold longer than a week is a mistake, not a policy. */
	r = req_int_field(root, "hold_seconds", 1, 7 * 86400, true, &out->hold_seconds,
			  code, err, errlen);
	if (r < 0)
		goto out;
	if (r == 0)
		out->hold_seconds = 1200;
	rc = 0;
out:
	cJSON_Delete(root);
	return rc;
}

int request_parse_limits(const char *body, size_t len, size_t max_body, struct limits_req *out,
			 const char **code, char *err, size_t errlen)
{
	static const char *const names[4] = LIMITS_FIELDS;
	long long *fields[4] = { &out->k_pct, &out->ip_rate_per_s, &out->user_rate_per_s,
				 &out->sku_rate_per_s };
	cJSON *root;
	int rc = -1, any = 0;

	memset(out, 0, sizeof(*out));
	root = req_object(body, len, max_body, code, err, errlen);
	if (root == NULL)
		return -1;
	for (const cJSON *m = root->child; m != NULL; m = m->next) {
		bool known = false;

		for (int i = 0; i < 4; i++)
			known |= strcmp(m->string, names[i]) == 0;
		if (!known) {
			*code = "invalid_field";
			snprintf(err, errlen, "unknown field %.64s (known: k_pct, ip_rate_per_s, "
				 "user_rate_per_s, sku_rate_per_s)", m->string);
			goto out;
		}
	}
	for (int i = 0; i < 4; i++) {
		int r = req_int_field(root, names[i], 0, i == 0 ? 100000 : 1000000, true, fields[i],
				      code, err, errlen);

		if (r < 0)
			goto out;
		out->given[i] = r == 1;
		any += r;
	}
	if (out->given[0] && out->k_pct != 0 && out->k_pct < 100) {
		*code = "invalid_field";
		snprintf(err, errlen, "k_pct must be 0 (the default) or 100..100000: below 100 "
			 "the funnel could refuse buyers while units are unclaimed");
		goto out;
	}
	if (any == 0) {
		*code = "invalid_field";
		snprintf(err, errlen, "no limit given");
		goto out;
	}
	rc = 0;
out:
	cJSON_Delete(root);
	return rc;
}
