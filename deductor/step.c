#include "step.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flashsale.pb-c.h"

/* The script's reply: {'ok', ev, state, reason, user, qty, deadline, now,
 * remaining, held, sold, initial, epoch, changed, sku_seq}. */
#define STEP_REPLY_LEN 15

static const char *const event_names[] = {
	[FLASHSALE__LEDGER_EVENT__KIND__RESERVED] = "reserved",
	[FLASHSALE__LEDGER_EVENT__KIND__PAID] = "paid",
	[FLASHSALE__LEDGER_EVENT__KIND__CANCELLED] = "cancelled",
	[FLASHSALE__LEDGER_EVENT__KIND__EXPIRED] = "expired",
	[FLASHSALE__LEDGER_EVENT__KIND__REFUSED] = "refused",
	[FLASHSALE__LEDGER_EVENT__KIND__TRANSITION_REFUSED] = "transition_refused",
};

#define N_EVENT_NAMES (sizeof(event_names) / sizeof(event_names[0]))

int step_event_kind(const char *word)
{
	size_t i;

	for (i = 1; i < N_EVENT_NAMES; i++)
		if (event_names[i] != NULL && strcmp(event_names[i], word) == 0)
			return (int)i;
	return 0;
}

const char *step_event_name(int kind)
{
	if (kind > 0 && (size_t)kind < N_EVENT_NAMES && event_names[kind] != NULL)
		return event_names[kind];
	return "unknown";
}

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
	    (out->event_kind = step_event_kind(word)) == 0) {
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
		step_fail(out, "deduct.lua: malformed reply for ", step_event_name(kind));
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
