/*
 * Configuration tables: defaults < INI file < environment < -s flags.
 *
 * CF_STR targets are owned by the table: cf_defaults() initialises them
 * (it does not free what was there, so targets may start uninitialised),
 * cf_set() replaces (and frees) the previous value, cf_free() releases them.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "flashsale_config.h"
#include "log.h"

#define CF_ENV_PREFIX "FLASHSALE_"
#define CF_SECRET_MAX 8192

static struct cf_key *cf_find(struct cf_table *t, const char *name)
{
	for (struct cf_key *k = t->keys; k->name != NULL; k++) {
		if (strcmp(k->name, name) == 0)
			return k;
	}
	return NULL;
}

static int cf_parse_bool(const char *v, bool *out)
{
	static const char *const yes[] = { "true", "yes", "on", "1" };
	static const char *const no[] = { "false", "no", "off", "0" };

	for (size_t i = 0; i < 4; i++) {
		if (strcasecmp(v, yes[i]) == 0) {
			*out = true;
			return 0;
		}
		if (strcasecmp(v, no[i]) == 0) {
			*out = false;
			return 0;
		}
	}
	return -1;
}

/* Store value into k; on failure leave the target unchanged. */
static int cf_key_set(struct cf_key *k, const char *value, char *err, size_t errlen)
{
	switch (k->type) {
	case CF_STR: {
		char *copy = strdup(value);
		char **target = k->target;

		if (copy == NULL) {
			snprintf(err, errlen, "%s: out of memory", k->name);
			return -1;
		}
		free(*target);
		*target = copy;
		return 0;
	}
	case CF_INT: {
		char *end;
		long long v;

		errno = 0;
		v = strtoll(value, &end, 10);
		while (end != value && isspace((unsigned char)*end))
			end++;
		if (value[0] == '\0' || end == value || *end != '\0' || errno == ERANGE) {
			snprintf(err, errlen, "%s: \"%s\" is not an integer", k->name, value);
			return -1;
		}
		if (v < k->min || v > k->max) {
			snprintf(err, errlen, "%s: %lld is out of bounds [%lld, %lld]",
				 k->name, v, k->min, k->max);
			return -1;
		}
		*(long long *)k->target = v;
		return 0;
	}
	case CF_BOOL: {
		bool b;

		if (cf_parse_bool(value, &b) < 0) {
			snprintf(err, errlen, "%s: \"%s\" is not a boolean "
				 "(true/false, yes/no, on/off, 1/0)", k->name, value);
			return -1;
		}
		*(bool *)k->target = b;
		return 0;
	}
	}
	snprintf(err, errlen, "%s: unknown key type", k->name);
	return -1;
}

int cf_defaults(struct cf_table *t, char *err, size_t errlen)
{
	for (struct cf_key *k = t->keys; k->name != NULL; k++) {
		const char *def = k->def != NULL ? k->def : "";

		if (k->type == CF_STR) {
			char *copy = strdup(def);

			if (copy == NULL) {
				snprintf(err, errlen, "%s: out of memory", k->name);
				return -1;
			}
			*(char **)k->target = copy;
			continue;
		}
		if (k->type == CF_INT && k->def == NULL) {
			*(long long *)k->target = 0;
			continue;
		}
		if (k->type == CF_BOOL && k->def == NULL) {
			*(bool *)k->target = false;
			continue;
		}
		if (cf_key_set(k, def, err, errlen) < 0)
			return -1;
	}
	return 0;
}

int cf_set(struct cf_table *t, const char *key, const char *value,
	   char *err, size_t errlen)
{
	struct cf_key *k = cf_find(t, key);

	if (k == NULL) {
		snprintf(err, errlen, "unknown key \"%s\"", key);
		return -1;
	}
	return cf_key_set(k, value, err, errlen);
}

struct cf_file_ctx {
	struct cf_table *t;
	const char *path;
	int line;	/* lines seen by the handler; inih counts the real ones */
	bool failed;
	char reason[512];
};

static int cf_ini_handler(void *user, const char *section, const char *name,
			  const char *value)
{
	struct cf_file_ctx *ctx = user;
	char key[256];

	if (section[0] != '\0')
		snprintf(key, sizeof(key), "%s.%s", section, name);
	else
		snprintf(key, sizeof(key), "%s", name);
	char reason[sizeof(ctx->reason)];

	if (cf_set(ctx->t, key, value, reason, sizeof(reason)) < 0) {
		/* Keep the first error: inih goes on parsing after a failure. */
		if (ctx->failed)
			return 1;
		memcpy(ctx->reason, reason, sizeof(reason));
		ctx->failed = true;
		return 0;
	}
	return 1;
}

/*
 * inih r55 (Debian 12) reads a line with fgets() into 200 bytes and parses
 * what did not fit as a line of its own: 198 bytes and the newline fit.
 */
#define CF_INI_LINE_MAX 198

/*
 * What inih would get wrong or report vaguely, found before it reads the
 * file: a line over CF_INI_LINE_MAX bytes (inih r55 parses its tail as a
 * line of its own, so a long comment could set a key), a NUL byte, and a
 * line that is
 * neither blank, a comment, a [section] nor key = value (so that a failing
 * line inih reports is always one of ours). 0 when the file cannot be
 * opened: inih says so.
 */
static int cf_prescan(const char *path, char *err, size_t errlen)
{
	FILE *f = fopen(path, "r");
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	int lineno = 0, rc = 0;

	if (f == NULL)
		return 0;
	while (rc == 0 && (n = getline(&line, &cap, f)) >= 0) {
		const char *p = line;

		lineno++;
		if (n > 0 && line[n - 1] == '\n')
			line[--n] = '\0';     /* a '\r' counts: inih reads it too */
		if (memchr(line, '\0', (size_t)n) != NULL) {
			/* inih reads C strings: the rest of the line would vanish. */
			snprintf(err, errlen, "%s:%d: NUL byte", path, lineno);
			rc = -1;
			break;
		}
		if (n > CF_INI_LINE_MAX) {
			snprintf(err, errlen, "%s:%d: line longer than %d bytes", path, lineno,
				 CF_INI_LINE_MAX);
			rc = -1;
			break;
		}
		p += strspn(p, " \t");
		if (lineno == 1 && (uint8_t)p[0] == 0xEF)
			p += strspn(p, "\xEF\xBB\xBF");   /* a UTF-8 BOM, as inih allows */
		if (*p == '\0' || *p == ';' || *p == '#')
			continue;
		if (*p == '[' ? strchr(p, ']') == NULL : strpbrk(p, "=:") == NULL) {
			snprintf(err, errlen, "%s:%d: syntax error", path, lineno);
			rc = -1;
		}
	}
	free(line);
	fclose(f);
	return rc;
}

/* Parse the first `lines` lines of path into ctx; false if unreadable. */
static bool cf_parse_prefix(const char *path, int lines, struct cf_file_ctx *ctx)
{
	FILE *f = fopen(path, "r");
	char *buf = NULL, *line = NULL;
	size_t size = 0, cap = 0;
	FILE *mem;
	ssize_t n;

	if (f == NULL)
		return false;
	mem = open_memstream(&buf, &size);
	if (mem == NULL) {
		fclose(f);
		return false;
	}
	while (lines-- > 0 && (n = getline(&line, &cap, f)) >= 0)
		fwrite(line, 1, (size_t)n, mem);
	free(line);
	fclose(f);
	fclose(mem);
	(void)ini_parse_string(buf, cf_ini_handler, ctx);
	free(buf);
	return true;
}

int cf_load_file(struct cf_table *t, const char *path, char *err, size_t errlen)
{
	struct cf_file_ctx ctx = { .t = t, .path = path };
	int rc;

	if (cf_prescan(path, err, errlen) < 0)
		return -1;
	rc = ini_parse(path, cf_ini_handler, &ctx);

	if (rc == -1) {
		snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
		return -1;
	}
	if (rc == -2) {
		snprintf(err, errlen, "%s: out of memory", path);
		return -1;
	}
	if (rc > 0) {
		/*
		 * inih names the first failing line, a syntax error or a key of
		 * ours; ctx.reason is our first failure, perhaps on a later line
		 * (an inline comment can make "[ ;app]" a syntax error the
		 * prescan cannot see: found by fuzzing). The lines up to rc,
		 * parsed again, tell which.
		 */
		struct cf_file_ctx again = { .t = t, .path = path };

		if (ctx.failed && cf_parse_prefix(path, rc, &again) && again.failed)
			snprintf(err, errlen, "%s:%d: %s", path, rc, again.reason);
		else
			snprintf(err, errlen, "%s:%d: syntax error", path, rc);
		return -1;
	}
	return 0;
}

/* FLASHSALE_ + upper(name) with '.' and '-' turned into '_'. */
static void cf_env_name(const char *key, char *out, size_t n)
{
	size_t o = strlen(CF_ENV_PREFIX);

	if (n <= o) {
		if (n > 0)
			out[0] = '\0';
		return;
	}
	memcpy(out, CF_ENV_PREFIX, o);
	for (; *key != '\0' && o + 1 < n; key++) {
		char c = *key;

		out[o++] = (c == '.' || c == '-') ? '_' : (char)toupper((unsigned char)c);
	}
	out[o] = '\0';
}

/*
 * A secret's file (a credential): its contents up to the first newline,
 * which must be all there is. -1 with the reason in err.
 */
static int cf_read_secret(const char *path, char *out, size_t n, char *err, size_t errlen)
{
	FILE *f = fopen(path, "rb");
	size_t len;

	if (f == NULL) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -1;
	}
	len = fread(out, 1, n, f);
	fclose(f);
	if (len >= n) {
		snprintf(err, errlen, "%s: longer than %zu bytes", path, n - 1);
		return -1;
	}
	out[len] = '\0';
	while (len > 0 && (out[len - 1] == '\n' || out[len - 1] == '\r'))
		out[--len] = '\0';
	/* A NUL or a second line (found by fuzzing): not one line of text. */
	if (strlen(out) != len || strcspn(out, "\r\n") != len) {
		snprintf(err, errlen, "%s: a secret must be one line of text", path);
		return -1;
	}
	return 0;
}

int cf_load_env(struct cf_table *t, char *const *envp, char *err, size_t errlen)
{
	if (envp == NULL)
		return 0;
	for (struct cf_key *k = t->keys; k->name != NULL; k++) {
		char name[256];
		size_t nl;
		const char *value = NULL;

		char secret[CF_SECRET_MAX + 1];
		const char *file = NULL;

		cf_env_name(k->name, name, sizeof(name));
		nl = strlen(name);
		/* The last definition wins, as with getenv() on most libcs. */
		for (char *const *e = envp; *e != NULL; e++) {
			if (strncmp(*e, name, nl) == 0 && (*e)[nl] == '=')
				value = *e + nl + 1;
			else if (k->secret && strncmp(*e, name, nl) == 0 &&
				 strncmp(*e + nl, "_FILE=", 6) == 0)
				file = *e + nl + 6;
		}
		if (value == NULL && file != NULL) {
			if (cf_read_secret(file, secret, sizeof(secret), err, errlen) < 0) {
				char tmp[512];

				snprintf(tmp, sizeof(tmp), "%s", err);
				snprintf(err, errlen, "environment %s_FILE: %s", name, tmp);
				return -1;
			}
			value = secret;
		}
		if (value == NULL)
			continue;
		if (cf_key_set(k, value, err, errlen) < 0) {
			char tmp[512];

			snprintf(tmp, sizeof(tmp), "%s", err);
			snprintf(err, errlen, "environment %s: %s", name, tmp);
			return -1;
		}
	}
	return 0;
}

static const char *cf_type_name(enum cf_type type)
{
	switch (type) {
	case CF_STR:
		return "string";
	case CF_INT:
		return "int";
	case CF_BOOL:
		return "bool";
	}
	return "?";
}

static void cf_usage(const struct cf_table *t, FILE *f)
{
	fprintf(f, "usage: flashsale-%s [options]%s%s\n\n", t->app,
		t->usage != NULL ? " " : "", t->usage != NULL ? t->usage : "");
	fputs("options:\n"
	      "  -c, --config FILE      read settings from an INI file\n"
	      "  -s, --set KEY=VALUE    set one key (repeatable; wins over file and environment)\n"
	      "      --print-config     print the effective configuration and exit\n"
	      "  -h, --help             show this help and exit\n"
	      "  -V, --version          show the version and exit\n\n"
	      "Precedence: defaults < file < environment < -s flags. The environment\n"
	      "variable of key section.name is FLASHSALE_SECTION_NAME ('.' and '-' become '_').\n"
	      "SIGHUP reads them again: keys marked (reload) take effect at once, the others\n"
	      "at the next start; a bad file keeps the running configuration.\n\n"
	      "keys:\n", f);
	/* One line per key: name, type, default, bounds, help. */
	for (const struct cf_key *k = t->keys; k->name != NULL; k++) {
		char bounds[64] = "";

		if (k->type == CF_INT)
			snprintf(bounds, sizeof(bounds), " [%lld..%lld]", k->min, k->max);
		fprintf(f, "  %-28s %-6s default=\"%s\"%s  %s%s\n", k->name, cf_type_name(k->type),
			k->def != NULL ? k->def : "", bounds, k->help != NULL ? k->help : "",
			k->reload ? " (reload)" : "");
	}
}

static void cf_usage_error(const struct cf_table *t, const char *msg)
{
	fprintf(stderr, "flashsale-%s: %s\n", t->app, msg);
	fprintf(stderr, "Try 'flashsale-%s --help'.\n", t->app);
	exit(2);
}

enum { OPT_PRINT_CONFIG = 1000 };

/* defaults < file < environment < flags, from the sources t remembers. */
static int cf_apply_sources(struct cf_table *t, char *err, size_t errlen)
{
	extern char **environ;

	if (cf_defaults(t, err, errlen) < 0 ||
	    (t->path != NULL && cf_load_file(t, t->path, err, errlen) < 0) ||
	    cf_load_env(t, environ, err, errlen) < 0)
		return -1;
	for (size_t i = 0; i < t->nsets; i++) {
		const char *eq = strchr(t->sets[i], '=');
		char key[256];
		size_t kl = (size_t)(eq - t->sets[i]);
		char msg[512];

		if (kl >= sizeof(key)) {
			snprintf(err, errlen, "-s: key too long");
			return -1;
		}
		memcpy(key, t->sets[i], kl);
		key[kl] = '\0';
		if (cf_set(t, key, eq + 1, msg, sizeof(msg)) < 0) {
			snprintf(err, errlen, "-s %s", msg);
			return -1;
		}
	}
	return 0;
}

void cf_parse_args(struct cf_table *t, int argc, char **argv, int *first_arg)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "set", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ "print-config", no_argument, NULL, OPT_PRINT_CONFIG },
		{ NULL, 0, NULL, 0 },
	};
	const char *config_path = NULL;
	char **sets;
	size_t nsets = 0;
	bool print_config = false;
	char err[1024], malloc_name[96];
	int opt;

	/* Flags must win whatever their position, so collect them first. */
	sets = calloc((size_t)argc + 1, sizeof(*sets));
	if (sets == NULL) {
		fprintf(stderr, "flashsale-%s: out of memory\n", t->app);
		exit(1);
	}
	optind = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":c:s:hV", longopts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			config_path = optarg;
			break;
		case 's':
			if (strchr(optarg, '=') == NULL || optarg[0] == '=') {
				snprintf(err, sizeof(err), "-s wants KEY=VALUE, got \"%s\"", optarg);
				free(sets);
				cf_usage_error(t, err);
			}
			sets[nsets++] = optarg;
			break;
		case 'h':
			cf_usage(t, stdout);
			free(sets);
			exit(0);
		case 'V':
			util_malloc_name(malloc_name, sizeof(malloc_name));
			printf("flashsale-%s %s (malloc: %s)\n", t->app, FLASHSALE_VERSION, malloc_name);
			free(sets);
			exit(0);
		case OPT_PRINT_CONFIG:
			print_config = true;
			break;
		case ':':
			snprintf(err, sizeof(err), "option %s needs an argument",
				 argv[optind - 1]);
			free(sets);
			cf_usage_error(t, err);
			break;
		default:
			if (optopt != 0 && optopt != '?')
				snprintf(err, sizeof(err), "unknown option -%c", optopt);
			else
				snprintf(err, sizeof(err), "unknown option %s", argv[optind - 1]);
			free(sets);
			cf_usage_error(t, err);
		}
	}

	free(t->sets);          /* a test may parse twice */
	t->path = config_path;
	t->sets = sets;
	t->nsets = nsets;
	if (cf_apply_sources(t, err, sizeof(err)) < 0)
		cf_usage_error(t, err);
	if (print_config) {
		cf_print(t, stdout);
		fflush(stdout);
		exit(0);
	}
	if (first_arg != NULL)
		*first_arg = optind;
}

void cf_print(const struct cf_table *t, void *stdio_file)
{
	FILE *f = stdio_file;

	for (const struct cf_key *k = t->keys; k->name != NULL; k++) {
		switch (k->type) {
		case CF_STR: {
			const char *v = *(char *const *)k->target;

			if (k->secret && v != NULL && v[0] != '\0')
				v = "<redacted>";
			fprintf(f, "%s = %s\n", k->name, v != NULL ? v : "");
			break;
		}
		case CF_INT:
			fprintf(f, "%s = %lld\n", k->name, *(const long long *)k->target);
			break;
		case CF_BOOL:
			fprintf(f, "%s = %s\n", k->name,
				*(const bool *)k->target ? "true" : "false");
			break;
		}
	}
}

union cf_value {
	char *s;
	long long i;
	bool b;
};

static bool cf_value_equal(const struct cf_key *k, const void *a, const void *b)
{
	switch (k->type) {
	case CF_STR:
		return strcmp(*(char *const *)a, *(char *const *)b) == 0;
	case CF_INT:
		return *(const long long *)a == *(const long long *)b;
	case CF_BOOL:
		return *(const bool *)a == *(const bool *)b;
	}
	return false;
}

int cf_reload(struct cf_table *t, void (*changed)(const char *key, void *arg), void *arg,
	      char *err, size_t errlen)
{
	struct cf_table shadow = *t;
	struct cf_key *keys;
	union cf_value *vals;
	size_t n = 0;
	int rc = -1;

	while (t->keys[n].name != NULL)
		n++;
	keys = calloc(n + 1, sizeof(*keys));
	vals = calloc(n + 1, sizeof(*vals));
	if (keys == NULL || vals == NULL) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	/* Parse into a copy: the live values are not touched until all is good. */
	for (size_t i = 0; i < n; i++) {
		keys[i] = t->keys[i];
		keys[i].target = &vals[i];
	}
	shadow.keys = keys;
	if (cf_apply_sources(&shadow, err, errlen) < 0)
		goto out;
	for (size_t i = 0; i < n; i++) {
		struct cf_key *k = &t->keys[i];

		if (cf_value_equal(k, k->target, &vals[i]))
			continue;
		if (!k->reload) {
			log_warn("config_needs_restart", "key=%s msg=\"changed; applies at restart\"",
				 k->name);
			continue;
		}
		switch (k->type) {
		case CF_STR: {
			char *old = *(char **)k->target;

			*(char **)k->target = vals[i].s;
			vals[i].s = old;        /* freed with the shadow below */
			break;
		}
		case CF_INT:
			*(long long *)k->target = vals[i].i;
			break;
		case CF_BOOL:
			*(bool *)k->target = vals[i].b;
			break;
		}
		if (changed != NULL)
			changed(k->name, arg);
	}
	rc = 0;
out:
	if (keys != NULL && vals != NULL)
		cf_free(&shadow);
	free(keys);
	free(vals);
	return rc;
}

void cf_free(struct cf_table *t)
{
	for (struct cf_key *k = t->keys; k->name != NULL; k++) {
		if (k->type == CF_STR) {
			char **target = k->target;

			free(*target);
			*target = NULL;
		}
	}
}
