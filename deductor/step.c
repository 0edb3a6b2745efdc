#include "step.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flashsale.pb-c.h"
#include "log.h"
#include "redisx.h"

/* The script's reply: {'ok', ev, state, reason, user, qty, deadline, now,
 * remaining, held, sold, initial, epoch, changed, sku_seq}. */
#define STEP_REPLY_LEN 15

void step_cmd_build(struct step_cmd *cmd, const char *sha, const fs_intent *in,
		    const struct step_args *a, const struct step_params *prm)
{
	const char *user = in->user_id != NULL ? in->user_id : "";
	int i;

	snprintf(cmd->promo, sizeof(cmd->promo), "fs:promo:%s", in->sku);
	snprintf(cmd->users, sizeof(cmd->users), "fs:users:%s", in->sku);
	snprintf(cmd->holds, sizeof(cmd->holds), "fs:holds:%s", in->sku);
	snprintf(cmd->req, sizeof(cmd->req), "fs:req:%s", in->request_id);
	snprintf(cmd->qty, sizeof(cmd->qty), "%u", (unsigned)in->qty);
	snprintf(cmd->ttl, sizeof(cmd->ttl), "%lld", prm->record_ttl_s);
	snprintf(cmd->partition, sizeof(cmd->partition), "%" PRId32, a->partition);
	snprintf(cmd->offset, sizeof(cmd->offset), "%" PRId64, a->offset);
	snprintf(cmd->min_wm, sizeof(cmd->min_wm), "%" PRId64, a->min_wm);
	snprintf(cmd->min_seq, sizeof(cmd->min_seq), "%" PRId64, a->min_seq);
	snprintf(cmd->accepted_at, sizeof(cmd->accepted_at), "%" PRId64,
		 (int64_t)in->accepted_at_ms);
	snprintf(cmd->lag, sizeof(cmd->lag), "%lld", prm->pay_max_lag_ms);

	cmd->argv[0] = "EVALSHA";
	cmd->argv[1] = sha;
	cmd->argv[2] = "7";
	cmd->argv[3] = "fs:ready";
	cmd->argv[4] = cmd->promo;
	cmd->argv[5] = cmd->users;
	cmd->argv[6] = cmd->holds;
	cmd->argv[7] = cmd->req;
	cmd->argv[8] = "fs:wm";
	cmd->argv[9] = "fs:fence";
	cmd->argv[10] = intent_kind_name(in->kind);
	cmd->argv[11] = in->request_id;
	cmd->argv[12] = in->sku;
	cmd->argv[13] = user;
	cmd->argv[14] = cmd->qty;
	cmd->argv[15] = cmd->ttl;
	cmd->argv[16] = cmd->partition;
	cmd->argv[17] = cmd->offset;
	cmd->argv[18] = cmd->min_wm;
	cmd->argv[19] = cmd->min_seq;
	cmd->argv[20] = cmd->accepted_at;
	cmd->argv[21] = cmd->lag;
	for (i = 0; i < STEP_ARGC; i++)
		cmd->argvlen[i] = strlen(cmd->argv[i]);
}

bool step_reply_noscript(const redisReply *r)
{
	return r != NULL && r->type == REDIS_REPLY_ERROR && r->str != NULL &&
	       strncmp(r->str, "NOSCRIPT", 8) == 0;
}

bool step_reply_transient(const redisReply *r)
{
	static const char *const words[] = {
		"OOM", "READONLY", "BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN",
		"NOREPLICAS", "CLUSTERDOWN", "MISCONF",
	};

	if (r == NULL || r->type != REDIS_REPLY_ERROR || r->str == NULL)
		return false;
	for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
		size_t n = strlen(words[i]);

		if (strncmp(r->str, words[i], n) == 0 && (r->str[n] == ' ' || r->str[n] == '\0'))
			return true;
	}
	return false;
}

static bool reply_int(const redisReply *e, int64_t *out)
{
	char *end;
	long long v;

	if (e->type == REDIS_REPLY_INTEGER) {
		*out = e->integer;
		return true;
	}
	if (e->type != REDIS_REPLY_STRING || e->len == 0)
		return false;
	errno = 0;
	v = strtoll(e->str, &end, 10);
	if (errno != 0 || *end != '\0')
		return false;
	*out = v;
	return true;
}

static bool reply_word(const redisReply *e, char *out, size_t n)
{
	if (e->type != REDIS_REPLY_STRING && e->type != REDIS_REPLY_STATUS)
		return false;
	if ((size_t)e->len >= n)
		return false;
	memcpy(out, e->str, e->len);
	out[e->len] = '\0';
	return true;
}

/* error = what + detail */
static void step_fail(struct step_result *out, const char *what, const char *detail)
{
	out->status = STEP_FAILED;
	snprintf(out->error, sizeof(out->error), "%s%s", what, detail);
}

void step_parse(const redisReply *r, struct step_result *out)
{
	char word[STEP_WORD_MAX];
	int64_t qty, changed;

	memset(out, 0, sizeof(*out));
	if (r == NULL) {
		step_fail(out, "", "no reply");
		return;
	}
	if (r->type == REDIS_REPLY_ERROR) {
		step_fail(out, "", r->str != NULL ? r->str : "error reply");
		return;
	}
	if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
	    !reply_word(r->element[0], word, sizeof(word))) {
		step_fail(out, "", "deduct.lua: malformed reply");
		return;
	}
	if (strcmp(word, "not_ready") == 0) {
		out->status = STEP_NOT_READY;
		return;
	}
	if (strcmp(word, "fenced") == 0) {
		out->status = STEP_FENCED;
		if (r->elements == 2 && r->element[1]->type == REDIS_REPLY_STRING)
			snprintf(out->error, sizeof(out->error), "%s", r->element[1]->str);
		else
			snprintf(out->error, sizeof(out->error), "fenced");
		return;
	}
	if (strcmp(word, "ok") != 0) {
		step_fail(out, "deduct.lua: unexpected answer ", word);
		return;
	}
	if (r->elements != STEP_REPLY_LEN) {
		step_fail(out, "", "deduct.lua: reply of the wrong length");
		return;
	}
	if (!reply_word(r->element[1], word, sizeof(word)) ||
	    (out->event_kind = ledger_kind_parse(word)) == 0) {
		step_fail(out, "", "deduct.lua: unknown event kind");
		return;
	}
	if (!reply_word(r->element[2], out->state, sizeof(out->state)) ||
	    !reply_word(r->element[3], out->reason, sizeof(out->reason)) ||
	    !reply_word(r->element[4], out->user_id, sizeof(out->user_id)) ||
	    !reply_int(r->element[5], &qty) ||
	    !reply_int(r->element[6], &out->deadline_ms) ||
	    !reply_int(r->element[7], &out->at_ms) ||
	    !reply_int(r->element[8], &out->remaining) ||
	    !reply_int(r->element[9], &out->held) ||
	    !reply_int(r->element[10], &out->sold) ||
	    !reply_int(r->element[11], &out->initial) ||
	    !reply_int(r->element[12], &out->epoch) ||
	    !reply_int(r->element[13], &changed) ||
	    !reply_int(r->element[14], &out->sku_seq) ||
	    qty < 0 || qty > UINT32_MAX) {
		int kind = out->event_kind;

		memset(out, 0, sizeof(*out));
		step_fail(out, "deduct.lua: malformed reply for ", ledger_kind_name(kind));
		return;
	}
	out->qty = (uint32_t)qty;
	out->changed = changed != 0;
	out->status = STEP_OK;
}

int step_run(redisContext *c, const char *sha, const struct step_params *prm,
	     fs_intent *const *intents, const struct step_args *args,
	     struct step_result *results, size_t n, char *err, size_t errlen)
{
	struct step_cmd cmd;
	bool noscript = false, busy = false;
	size_t i;

	for (i = 0; i < n; i++) {
		results[i].status = STEP_PENDING;
		if (intents[i] == NULL)
			continue;
		step_cmd_build(&cmd, sha, intents[i], &args[i], prm);
		/* hiredis copies the arguments into its output buffer. */
		if (redisAppendCommandArgv(c, STEP_ARGC, cmd.argv, cmd.argvlen) != REDIS_OK) {
			snprintf(err, errlen, "redis append: %s", c->errstr);
			return STEP_RUN_IO;
		}
	}
	for (i = 0; i < n; i++) {
		void *reply = NULL;

		if (intents[i] == NULL)
			continue;
		if (redisGetReply(c, &reply) != REDIS_OK || reply == NULL) {
			snprintf(err, errlen, "redis: %s", c->errstr[0] ? c->errstr : "no reply");
			return STEP_RUN_IO;
		}
		if (step_reply_noscript(reply)) {
			noscript = true;
		} else if (step_reply_transient(reply)) {
			if (!busy)
				snprintf(err, errlen, "%s", ((redisReply *)reply)->str);
			busy = true;
		} else {
			step_parse(reply, &results[i]);
		}
		freeReplyObject(reply);
	}
	if (busy)
		return STEP_RUN_BUSY;
	if (noscript) {
		snprintf(err, errlen, "NOSCRIPT");
		return STEP_RUN_NOSCRIPT;
	}
	return STEP_RUN_OK;
}

#define STEP_REDIS_TIMEOUT_MS 5000
#define STEP_BACKOFF_MAX_MS 5000

void step_conn_init(struct step_conn *sc, const char *address, long long first_backoff_ms)
{
	memset(sc, 0, sizeof(*sc));
	sc->address = address;
	sc->first_backoff_ms = first_backoff_ms;
}

void step_conn_drop(struct step_conn *sc)
{
	if (sc->c != NULL)
		redisFree(sc->c);
	sc->c = NULL;
	__atomic_store_n(&sc->up, 0, __ATOMIC_RELAXED);
}

int step_conn_ensure(struct step_conn *sc)
{
	char err[512], q[512];
	int64_t now;

	if (sc->c != NULL)
		return 0;
	now = mono_us();
	if (now < sc->next_connect_us)
		return -1;
	sc->c = redisx_connect(sc->address, STEP_REDIS_TIMEOUT_MS, err, sizeof(err));
	if (sc->c != NULL && redisx_script_load(sc->c, fs_deduct_lua, sc->sha, err,
						sizeof(err)) == 0) {
		__atomic_store_n(&sc->up, 1, __ATOMIC_RELAXED);
		sc->fresh = true;
		sc->backoff_ms = 0;
		log_info("redis_connected", "address=%s sha=%s", sc->address, sc->sha);
		return 0;
	}
	step_conn_drop(sc);
	sc->backoff_ms = sc->backoff_ms <= 0 ? sc->first_backoff_ms : sc->backoff_ms * 2;
	if (sc->backoff_ms > STEP_BACKOFF_MAX_MS)
		sc->backoff_ms = STEP_BACKOFF_MAX_MS;
	sc->next_connect_us = now + sc->backoff_ms * 1000;
	log_warn("redis_connect_failed", "backoff_ms=%" PRId64 " msg=\"%s\"", sc->backoff_ms,
		 log_quote(q, sizeof(q), err));
	return -1;
}

int step_conn_run(struct step_conn *sc, const struct step_params *prm,
		  fs_intent *const *intents, const struct step_args *args,
		  struct step_result *results, size_t n)
{
	char err[512], q[512];
	int rc;

	if (step_conn_ensure(sc) < 0)
		return -1;
	rc = step_run(sc->c, sc->sha, prm, intents, args, results, n, err, sizeof(err));
	if (rc == STEP_RUN_NOSCRIPT) {
		log_info("redis_noscript", "msg=\"reloading deduct.lua\"");
		if (redisx_script_load(sc->c, fs_deduct_lua, sc->sha, err, sizeof(err)) == 0)
			rc = step_run(sc->c, sc->sha, prm, intents, args, results, n, err,
				      sizeof(err));
	}
	if (rc == STEP_RUN_OK)
		return 0;
	log_warn("redis_error", "items=%zu msg=\"%s\"", n, log_quote(q, sizeof(q), err));
	/* A refusal (OOM, READONLY...) comes over a healthy connection. */
	if (rc != STEP_RUN_BUSY)
		step_conn_drop(sc);
	return -1;
}

int step_conn_epoch(struct step_conn *sc, bool *present, int64_t *epoch)
{
	redisReply *r;
	char q[512];

	if (step_conn_ensure(sc) < 0)
		return -1;
	r = redisCommand(sc->c, "GET fs:ready");
	if (r != NULL && (r->type == REDIS_REPLY_NIL || r->type == REDIS_REPLY_STRING)) {
		*present = r->type == REDIS_REPLY_STRING;
		*epoch = *present ? strtoll(r->str, NULL, 10) : 0;
		freeReplyObject(r);
		return 0;
	}
	log_warn("redis_error", "cmd=GET msg=\"%s\"",
		 log_quote(q, sizeof(q), r != NULL && r->type == REDIS_REPLY_ERROR ? r->str :
			   sc->c->errstr));
	if (r != NULL)
		freeReplyObject(r);
	step_conn_drop(sc);
	return -1;
}
