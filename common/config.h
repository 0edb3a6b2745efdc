/*
 * Configuration: one table per daemon, applied in this order, later wins:
 *
 *   defaults  <  INI file (-c/--config)  <  environment  <  flags
 *
 * A key is "section.name" (e.g. "kafka.bootstrap"); in the INI file it is
 * `name = value` under `[section]`; in the environment it is
 * FLASHSALE_SECTION_NAME (upper case, '.' and '-' become '_'; a secret may
 * instead come from the file FLASHSALE_SECTION_NAME_FILE names); on the command
 * line it is `-s section.name=value` (or `--set`). An unknown key in the file
 * or a -s flag is an error (typos must not pass silently); unknown
 * FLASHSALE_* variables are ignored because several daemons share one
 * environment.
 */
#ifndef FLASHSALE_COMMON_CONFIG_H
#define FLASHSALE_COMMON_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include "util.h"

enum cf_type {
	CF_STR,   /* target: char *  (owned by the config, strdup'ed) */
	CF_INT,   /* target: long long, within [min, max] */
	CF_BOOL,  /* target: bool: true/false, yes/no, on/off, 1/0 */
};

struct cf_key {
	const char *name;     /* "section.key" */
	enum cf_type type;
	void *target;
	const char *def;      /* default, as it would be written in the file */
	long long min, max;   /* CF_INT bounds, inclusive */
	const char *help;     /* one line, shown by --help and checked by the doc test */
	bool reload;          /* applied on SIGHUP (cf_reload); else needs a restart */
	/*
	 * A secret (CF_STR): --print-config shows "<redacted>", and the
	 * environment may name a file holding it, FLASHSALE_SECTION_NAME_FILE
	 * (systemd's LoadCredential= puts it in $CREDENTIALS_DIRECTORY).
	 */
	bool secret;
};

struct cf_table {
	const char *app;          /* "gateway", ... */
	const char *usage;        /* extra usage text after the common options, may be NULL */
	struct cf_key *keys;      /* terminated by an entry with name == NULL */
	/* Kept by cf_parse_args for cf_reload: the same sources again. */
	const char *path;         /* -c FILE, or NULL */
	char **sets;              /* -s KEY=VALUE flags (argv strings) */
	size_t nsets;
};

/* Set every key to its default. */
int cf_defaults(struct cf_table *t, char *err, size_t errlen) FS_MUSTCHECK;

/* Set one key from its text form; -1 with a reason on unknown key or bad value. */
int cf_set(struct cf_table *t, const char *key, const char *value,
	   char *err, size_t errlen) FS_MUSTCHECK;

/* Apply an INI file; -1 with "file:line: reason" on the first bad line. */
int cf_load_file(struct cf_table *t, const char *path, char *err, size_t errlen) FS_MUSTCHECK;

/* Apply FLASHSALE_* variables found in envp (NULL-terminated). */
int cf_load_env(struct cf_table *t, char *const *envp, char *err, size_t errlen) FS_MUSTCHECK;

/*
 * The whole start-up sequence for a daemon's main(): defaults, then the file
 * named by -c, then environ, then -s flags. Handles -h/--help (usage on
 * stdout, exit 0), -V/--version (exit 0), --print-config (every key with its
 * effective value, exit 0) and exits 2 with a message on a usage error.
 * On return *first_arg is the index of the first positional argument.
 */
void cf_parse_args(struct cf_table *t, int argc, char **argv, int *first_arg);

/*
 * Read the same sources again (file, environment, flags) into a shadow copy;
 * if any of it is bad, return -1 with the reason and change nothing (the old
 * configuration stays). Otherwise store the keys marked reload and report,
 * through changed(key, arg) for each reloadable key whose value changed, and
 * with a warning log for each other key that changed (it needs a restart).
 * Reloadable targets are written without locks: only keys read by the thread
 * that calls this (the event loop) may be marked reload.
 */
int cf_reload(struct cf_table *t, void (*changed)(const char *key, void *arg), void *arg,
	      char *err, size_t errlen) FS_MUSTCHECK;

/* Write "key = value" for every key to the stream (as an INI-ish listing). */
void cf_print(const struct cf_table *t, void *stdio_file);

/* Free the strings the table owns. */
void cf_free(struct cf_table *t);

#endif
