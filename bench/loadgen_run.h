/*
 * The load generator's run: N simulated buyers of a flash sale driven
 * through the gateway's HTTP API from one libevent loop over a pool of
 * keep-alive connections.
 */
#ifndef FLASHSALE_LOADGEN_RUN_H
#define FLASHSALE_LOADGEN_RUN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loadgen_stats.h"

struct lg_config {
	const char *url;		/* http://host[:port][/prefix] */
	const char *host_header;	/* NULL: host[:port] of url */
	uint32_t buyers;
	uint32_t users;			/* distinct user ids */
	char **skus;
	size_t nskus;
	uint32_t qty_max;
	uint32_t ramp_ms;		/* arrivals spread evenly over this */
	uint32_t concurrency;		/* connections = requests in flight */
	double dup_ratio;
	uint32_t retries;		/* per call, on 503 or transport error */
	uint32_t poll_ms;
	bool wait_final;
	uint32_t final_timeout_s;	/* per buyer, from its 202 */
	double pay_ratio;
	double cancel_ratio;
	uint64_t seed;
	const char *run_id;		/* request id prefix */
	const char *user_prefix;
	uint32_t timeout_ms;		/* per HTTP request */
	bool progress;
};

struct lg_sku_stats {
	uint64_t buyers;
	uint64_t accepted;
	uint64_t paid;
};

struct lg_result {
	uint64_t buyers;

	/* requests, by kind */
	uint64_t sent;
	uint64_t sent_purchase;		/* first sends, one per buyer */
	uint64_t sent_duplicate;	/* deliberate second sends */
	uint64_t sent_retry;		/* retries of any call after 503 / error */
	uint64_t sent_poll;
	uint64_t sent_pay;
	uint64_t sent_cancel;
	uint64_t responses;		/* any HTTP answer (status != 0) */
	uint64_t status[600];		/* answers by HTTP status; [0] = transport error */

	/* purchase outcomes, one per buyer */
	uint64_t accepted;		/* buyers with a 202 */
	uint64_t refused;		/* buyers without a 202 but with an answer */
	struct lg_counts refused_by;	/* reason -> buyers */
	uint64_t purchase_failed;	/* buyers with no answer after retries */
	uint64_t duplicate_mismatch;	/* second answer differed from first */
	uint64_t retries_exhausted;

	/* after acceptance */
	struct lg_counts final_by;	/* final state -> buyers */
	uint64_t final;
	uint64_t paid;
	uint64_t cancelled;
	uint64_t expired;
	uint64_t unfinished;
	uint64_t not_waited;		/* accepted, --no-wait-final */
	uint64_t plan_pay;
	uint64_t plan_cancel;
	uint64_t plan_expire;
	uint64_t pay_accepted;
	uint64_t cancel_accepted;
	uint64_t action_refused;	/* pay/cancel answered 4xx other than not_reserved_yet */
	uint64_t not_reserved_yet;
	uint64_t poll_unknown;		/* 404 unknown_request while polling */

	uint64_t http_errors;		/* transport errors and unexpected answers */

	struct lg_samples purchase_lat;	/* scheduled start -> purchase answer */
	struct lg_samples request_lat;	/* send -> answer, every request */
	struct lg_samples final_lat;	/* scheduled start -> final state seen */

	int64_t run_us;			/* whole run */
	int64_t first_to_done_us;	/* first request -> last buyer done */
	bool interrupted;		/* SIGINT/SIGTERM */

	struct lg_sku_stats *per_sku;	/* indexed like config skus */
};

/*
 * Run the whole scenario and fill `res` (zeroed by the caller). Returns -1
 * with err set only when the run could not start (bad URL, no memory);
 * an unreachable gateway is a completed run with res->responses == 0.
 */
int lg_run(const struct lg_config *cf, struct lg_result *res,
	char *err, size_t errlen) __attribute__((warn_unused_result));

void lg_result_free(struct lg_result *res);

#endif
