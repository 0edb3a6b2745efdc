/*
 * flashsale-reconciler: `run` (the release daemon: libevent loop for
 * signals, /healthz and /metrics on the main thread, the release loop on a
 * worker thread), `rebuild` and `audit` (one-shot, blocking CLIs).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


#include "config.h"
#include "daemon.h"
#include "log.h"
#include "pg.h"
#include "redisx.h"
#include "reconciler.h"

static struct rc_config cfg;

static struct cf_key keys[] = {
	DAEMON_CF_KEYS(cfg.base, "9103"),
	REDIS_CF_KEYS(cfg.redis_address),
	PG_CF_KEYS(cfg.pg_conninfo),
	{ "reconciler.release_interval_ms", CF_INT, &cfg.release_interval_ms, "250", 10, 60000,
	  "How often the release loop looks for holds past their deadline" },
	{ "reconciler.release_batch", CF_INT, &cfg.release_batch, "1000", 1, 100000,
	  "Most due holds per SKU released in one round" },
	{ "reconciler.release_resend_ms", CF_INT, &cfg.release_resend_ms, "30000", 1000, 3600000,
	  "Wait before sending a hold's RELEASE again while it is still held" },
	RECORD_TTL_CF_KEY("reconciler.record_ttl_s", cfg.record_ttl_s),
	{ "reconciler.release_grace_ms", CF_INT, &cfg.release_grace_ms, "7000", 0, 3600000,
	  "A hold is released this long after its deadline, so that every PAY the gateways "
	  "accepted before the deadline is ahead of the RELEASE on the partition; must exceed "
	  "the gateways' kafka.produce_timeout_ms" },
	{ "reconciler.release_full_scan_ms", CF_INT, &cfg.release_full_scan_ms, "10000", 0, 3600000,
	  "Every SKU is read at least this often; in between, a round skips a SKU until its "
	  "earliest hold (or the earliest a new hold can be) is due. Below "
	  "reconciler.release_interval_ms: every SKU every round" },
	{ "reconciler.rebuild_quiesce_ms", CF_INT, &cfg.rebuild_quiesce_ms, "12000", 0, 600000,
	  "rebuild, repair: wait after the state is fenced for in-flight deductor batches; must "
	  "exceed twice the deductors' kafka.produce_timeout_ms plus 1 s" },
	{ "reconciler.admission_heal_ms", CF_INT, &cfg.admission_heal_ms, "30000", 1000, 3600000,
	  "run: a purchase admitted this long ago (gateway/admit.lua) that no deductor has "
	  "decided gives its place in the admission budget back (its gateway died before "
	  "Kafka took it); a later decision does not give it twice" },
	{ "reconciler.repair", CF_BOOL, &cfg.repair, "true", 0, 0,
	  "run: repair the partitions the deductor fenced (Redis older than the ledger) "
	  "from PostgreSQL and the ledger, and lift their fences" },
	{ "reconciler.rebuild_tail_timeout_ms", CF_INT, &cfg.rebuild_tail_timeout_ms, "30000",
	  1000, 3600000,
	  "rebuild: fail when the ledger tail makes no progress for this long" },
	{ "reconciler.audit_grace_ms", CF_INT, &cfg.audit_grace_ms, "30000", 0, 86400000,
	  "audit: a hold this long past its deadline and still held counts as stuck" },
	{ NULL, 0, NULL, NULL, 0, 0, NULL },
};

static struct cf_table table = {
	.app = "reconciler",
	.usage = "[run | rebuild [--force] [--if-missing] [--partition P] | repair [--partition P] |\n"
		 "        correct [--partition P] | audit [--wait-drain SECONDS]]",
	.keys = keys,
};

static int cmd_run(void)
{
	struct release *release;
	char err[512];
	bool drained;

	release_metrics_register();
	release = release_start(&cfg, err, sizeof(err));
	if (release == NULL)
		die("startup_failed", "what=release msg=\"%s\"", err);
	log_info("started", "redis=%s bootstrap=%s http_port=%lld interval_ms=%lld",
		 cfg.redis_address, cfg.base.kafka.bootstrap, cfg.base.http_port, cfg.release_interval_ms);
	drained = daemon_run_worker(release_thread(release), release_health, release,
				    cfg.base.http_host, (int)cfg.base.http_port, &table);
	release_free(release);
	log_info("stopped", "clean=%s", drained ? "true" : "false");
	return drained ? 0 : 1;
}

static void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void usage_error(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "flashsale-reconciler: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nusage: flashsale-reconciler [options] %s\n"
		"Try 'flashsale-reconciler --help'.\n", table.usage);
	cf_free(&table);
	exit(2);
}

/*
 * rebuild [--force] [--if-missing], repair, correct; each with [--partition P].
 * mode is the command's; --force turns rebuild into REBUILD_FORCE.
 */
static int cmd_rebuild(const char *name, enum rebuild_mode mode, int argc, char **argv)
{
	struct rebuild_opts opt = { .mode = mode, .partition = -1 };
	bool force = false;

	for (int i = 0; i < argc; i++) {
		const char *v = NULL;
		char *end;

		if (mode == REBUILD_MISSING && strcmp(argv[i], "--force") == 0) {
			force = true;
			continue;
		}
		if (mode == REBUILD_MISSING && strcmp(argv[i], "--if-missing") == 0) {
			opt.if_missing = true;
			continue;
		}
		if (strcmp(argv[i], "--partition") == 0) {
			if (i + 1 >= argc)
				usage_error("%s: --partition needs a number", name);
			v = argv[++i];
		} else if (strncmp(argv[i], "--partition=", 12) == 0) {
			v = argv[i] + 12;
		} else {
			usage_error("%s: unexpected argument %s", name, argv[i]);
		}
		opt.partition = (int)strtol(v, &end, 10);
		if (*v == '\0' || *end != '\0' || opt.partition < 0 || opt.partition >= FS_PARTITIONS)
			usage_error("%s: --partition wants 0..%d, got %s", name, FS_PARTITIONS - 1, v);
	}
	if (force && opt.if_missing)
		usage_error("rebuild: %s and --if-missing contradict each other", "--force");
	if (force)
		opt.mode = REBUILD_FORCE;
	if (opt.mode == REBUILD_MISSING && opt.partition >= 0)
		usage_error("rebuild: --partition needs --force (a lost state is rebuilt whole)%s", "");
	return rebuild_run(&cfg, &opt, NULL) == 0 ? 0 : 1;
}

static int cmd_audit(int argc, char **argv)
{
	long long violations = 0;
	long wait_s = 0;

	for (int i = 0; i < argc; i++) {
		const char *v = NULL;
		char *end;

		if (strcmp(argv[i], "--wait-drain") == 0) {
			if (i + 1 >= argc)
				usage_error("audit: %s needs SECONDS", argv[i]);
			v = argv[++i];
		} else if (strncmp(argv[i], "--wait-drain=", 13) == 0) {
			v = argv[i] + 13;
		} else {
			usage_error("audit: unexpected argument %s", argv[i]);
		}
		wait_s = strtol(v, &end, 10);
		if (*v == '\0' || *end != '\0' || wait_s < 0 || wait_s > 86400)
			usage_error("audit: --wait-drain wants 0..86400 seconds, got %s", v);
	}
	if (audit_run(&cfg, (int)wait_s, &violations) < 0)
		return 1;
	return violations > 0 ? 1 : 0;
}

int main(int argc, char **argv)
{
	char **cmdv;
	int cmdc, first_arg, rc;
	const char *name;

	daemon_init(&table, &cfg.base, argc, argv, &first_arg);
	cmdv = argv + first_arg;
	cmdc = argc - first_arg;
	name = cmdc > 0 ? cmdv[0] : "run";
	if (strcmp(name, "run") == 0) {
		if (cmdc > 1)
			usage_error("run: unexpected argument %s", cmdv[1]);
		rc = cmd_run();
	} else if (strcmp(name, "rebuild") == 0) {
		rc = cmd_rebuild(name, REBUILD_MISSING, cmdc - 1, cmdv + 1);
	} else if (strcmp(name, "repair") == 0) {
		rc = cmd_rebuild(name, REBUILD_REPAIR, cmdc - 1, cmdv + 1);
	} else if (strcmp(name, "correct") == 0) {
		rc = cmd_rebuild(name, REBUILD_CORRECT, cmdc - 1, cmdv + 1);
	} else if (strcmp(name, "audit") == 0) {
		rc = cmd_audit(cmdc - 1, cmdv + 1);
	} else {
		usage_error("unknown command %s", name);
	}
	cf_free(&table);
	return rc;
}
