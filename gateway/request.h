/*
 * Request bodies: pure parsing and validation of the JSON the API accepts,
 * with no I/O, so that every rule is unit-tested. On failure the functions
 * return -1, set *code to a short error code ("body_too_large" (413),
 * "invalid_json", "invalid_field" (400)) and put a human reason naming the
 * field in err.
 */
#ifndef FLASHSALE_GATEWAY_REQUEST_H
#define FLASHSALE_GATEWAY_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* Largest qty / stock / limit accepted: fits the wire (uint32) and PostgreSQL (integer). */
#define REQ_INT_MAX 2147483647LL

struct purchase_req {
	char sku[FS_ID_MAX + 1];
	char user_id[FS_ID_MAX + 1];
	char request_id[FS_ID_MAX + 1];
	long long qty;
	bool generated_id;       /* request_id was absent and made here */
};

struct promo_req {
	char sku[FS_ID_MAX + 1];
	long long stock;
	long long per_user_limit;
	long long start_ms;
	long long end_ms;
	long long hold_seconds;
	bool start_given;        /* start_ms was in the body (else now_ms) */
};

/* A promotion's funnel limits (POST /admin/promotions/{sku}/limits); 0 = the default. */
struct limits_req {
	long long k_pct;            /* admission: undecided units <= k_pct% x remaining */
	long long ip_rate_per_s;
	long long user_rate_per_s;
	long long sku_rate_per_s;   /* across every gateway */
	bool given[4];              /* in the order above: present in the body */
};

#define LIMITS_FIELDS { "k_pct", "ip_rate_per_s", "user_rate_per_s", "sku_rate_per_s" }

/*
 * Parse POST /v1/purchases: {"sku", "qty", "user_id"?, "request_id"?}.
 * body need not be NUL-terminated. user_id is "" when absent (the buyer is
 * the token's sub; a body user_id is only checked against it);
 * request_id is generated when absent. A key given twice is invalid_json.
 */
int request_parse_purchase(const char *body, size_t len, size_t max_body,
			   struct purchase_req *out, const char **code,
			   char *err, size_t errlen) FS_MUSTCHECK;

/*
 * Parse the body of POST /v1/purchases/{id}/pay and /cancel: empty, or
 * {"user_id"?}; user_id is "" when absent. The owner is the token's sub;
 * a body user_id must name the same buyer.
 */
int request_parse_owner(const char *body, size_t len, size_t max_body,
			char user_id[FS_ID_MAX + 1], const char **code,
			char *err, size_t errlen) FS_MUSTCHECK;

/*
 * Parse POST /admin/promotions. now is the default start (ms); the default
 * end is start + 1 h, the default hold 1200 s.
 */
int request_parse_promo(const char *body, size_t len, size_t max_body, int64_t now,
			struct promo_req *out, const char **code,
			char *err, size_t errlen) FS_MUSTCHECK;

/*
 * Parse POST /admin/promotions/{sku}/limits: any of k_pct (0, or 100..100000),
 * ip_rate_per_s, user_rate_per_s, sku_rate_per_s (0..1000000), at least one;
 * 0 means the gateway's default. Unknown members are refused (a typo must
 * not be a silent no-op).
 */
int request_parse_limits(const char *body, size_t len, size_t max_body, struct limits_req *out,
			 const char **code, char *err, size_t errlen) FS_MUSTCHECK;

#endif
