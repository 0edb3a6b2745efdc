/*
 * The Redis step: one EVALSHA of deduct.lua per intent, pipelined per batch.
 * Building the command and parsing its reply are pure so that they can be
 * tested without a server; step_run does the I/O.
 */
#ifndef FLASHSALE_DEDUCTOR_STEP_H
#define FLASHSALE_DEDUCTOR_STEP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <hiredis/hiredis.h>

#include "intent.h"
#include "util.h"

/* deductor/deduct.lua, embedded at build time. */
extern const char fs_deduct_lua[];

/*
 * EVALSHA sha 7 k1..k7 kind rid sku user qty ttl partition offset min_wm
 * min_seq accepted_at_ms pay_max_lag_ms
 */
#define STEP_ARGC 22

/* Where an intent sits and what the ledger says Redis must already hold. */
struct step_args {
	int32_t partition;      /* of the intents topic */
	int64_t offset;
	int64_t min_wm;         /* highest offset of the partition seen on the ledger, -1 none */
	int64_t min_seq;        /* highest sku_seq of the SKU seen on the ledger, 0 none */
};

/* Settings every step of a run shares. */
struct step_params {
	long long record_ttl_s;     /* deductor.record_ttl_s */
	long long pay_max_lag_ms;   /* deductor.pay_max_lag_ms */
};

struct step_cmd {
	const char *argv[STEP_ARGC];
	size_t argvlen[STEP_ARGC];
	char promo[16 + FS_ID_MAX];
	char users[16 + FS_ID_MAX];
	char holds[16 + FS_ID_MAX];
	char req[16 + FS_ID_MAX];
	char qty[16];
	char ttl[24];
	char partition[16];
	char offset[24];
	char min_wm[24];
	char min_seq[24];
	char accepted_at[24];
	char lag[24];
};

enum step_status {
	STEP_PENDING = 0,   /* not run (yet) */
	STEP_OK,            /* the step answered an event */
	STEP_NOT_READY,     /* fs:ready absent: Redis state lost, nothing applied */
	STEP_FENCED,        /* the partition is fenced (Redis older than the ledger): error says why */
	STEP_FAILED,        /* the script failed for this intent: error holds why */
};

#define STEP_WORD_MAX 32

struct step_result {
	enum step_status status;
	int event_kind;                 /* FLASHSALE__LEDGER_EVENT__KIND__* */
	char state[STEP_WORD_MAX];
	char reason[STEP_WORD_MAX];
	char user_id[FS_ID_MAX + 1];
	uint32_t qty;
	int64_t deadline_ms;
	int64_t at_ms;
	int64_t remaining, held, sold, initial;
	int64_t epoch;
	int64_t sku_seq;
	bool changed;
	char error[256];
};

/*
 * Fill cmd with the EVALSHA of the intent (validated: ids are short and
 * plain). The argv points into cmd and into the intent's strings, which must
 * outlive the command's use.
 */
void step_cmd_build(struct step_cmd *cmd, const char *sha, const fs_intent *in,
		    const struct step_args *a, const struct step_params *prm);

/* True when the reply says the script is not in Redis' cache. */
bool step_reply_noscript(const redisReply *r);

/*
 * Turn one EVALSHA reply into a result. A script error reply or a malformed
 * reply gives status STEP_FAILED with the text in error; never -1 on a
 * reply, so the call cannot fail.
 */
void step_parse(const redisReply *r, struct step_result *out);

/*
 * An error reply that says "not now" rather than "this intent is bad" (OOM
 * under noeviction, READONLY after a failover, BUSY, LOADING, ...): the
 * batch must be retried, never dead-lettered, or an accepted purchase would
 * be dropped.
 */
bool step_reply_transient(const redisReply *r);


enum step_run_status {
	STEP_RUN_OK = 0,
	STEP_RUN_NOSCRIPT = 1, /* load the script and run the batch again */
	STEP_RUN_BUSY = 2,     /* Redis refused for now (OOM, READONLY, ...): back off, redo */
	STEP_RUN_IO = -1,      /* connection lost or timed out: reconnect and redo */
};

/*
 * Run the step for every non-NULL intents[i] (at args[i]) in one pipeline
 * and fill results[i] (results of NULL intents are left STEP_PENDING).
 * Every reply is read even after a NOSCRIPT so that the connection stays in
 * step.
 */
int step_run(redisContext *c, const char *sha, const struct step_params *prm,
	     fs_intent *const *intents, const struct step_args *args,
	     struct step_result *results, size_t n, char *err, size_t errlen) FS_MUSTCHECK;

/*
 * The deductor's one Redis connection, with deduct.lua loaded: connected
 * lazily, at most one attempt per backoff period (so a dead Redis costs the
 * worker no time), dropped after an I/O error.
 */
struct step_conn {
	const char *address;
	long long first_backoff_ms;
	redisContext *c;            /* NULL while disconnected */
	char sha[41];
	int up;                     /* atomic: for health */
	bool fresh;                 /* connected since the caller last cleared it */
	int64_t next_connect_us;
	int64_t backoff_ms;
};

void step_conn_init(struct step_conn *sc, const char *address, long long first_backoff_ms);
void step_conn_drop(struct step_conn *sc);

/* A connection (one attempt when due): 0, or -1 while Redis is unreachable. */
int step_conn_ensure(struct step_conn *sc) FS_MUSTCHECK;

/*
 * step_run over the connection, redone at once after a NOSCRIPT (Redis
 * restarted or SCRIPT FLUSH). -1 on any other failure (dropping the
 * connection unless Redis refused for now): the caller retries later.
 */
int step_conn_run(struct step_conn *sc, const struct step_params *prm,
		  fs_intent *const *intents, const struct step_args *args,
		  struct step_result *results, size_t n) FS_MUSTCHECK;

/* GET fs:ready: 0 with *present and *epoch, -1 on a Redis error (dropped). */
int step_conn_epoch(struct step_conn *sc, bool *present, int64_t *epoch) FS_MUSTCHECK;

#endif
