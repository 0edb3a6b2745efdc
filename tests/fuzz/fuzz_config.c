/*
 * libFuzzer target: configuration files (common/config.c through inih). The
 * input is an INI file, read from a memfd through /proc/self/fd so no disk
 * is touched; its lines are then also given as an environment. Checks:
 *
 *   - every accepted value is within its key's type and bounds;
 *   - an error names a line of the file, and the same error comes back
 *     when only the lines up to that one are parsed (the first bad line
 *     is reported, with its own reason);
 *   - text that inih cut off a long line never changes the configuration;
 *   - cf_print()'s listing redacts the secret and, loaded again, gives the
 *     same values;
 *   - a secret read from a file (FLASHSALE_..._FILE) is one line.
 *
 * Every string the table owns is freed at the end of each run.
 */
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"

#include "fuzz_known.h"

/*
 * inih as Debian builds it (INI_MAX_LINE 200, no realloc) reads a line in
 * pieces of at most this many bytes and parses each piece as a line.
 */
#define FUZZ_INI_PIECE 199

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FAIL(id, detail) fuzz_fail("fuzz_config", (id), (detail))

/* One key of each type, plus the edges: no default, the widest bounds, a secret. */
struct fuzz_values {
	char *name;
	char *empty; /* CF_STR without a default */
	char *token; /* CF_STR secret: may come from a _FILE */
	long long port;
	long long wide; /* CF_INT over the whole long long range */
	long long neg;  /* CF_INT with negative bounds */
	bool flag;
	bool off; /* CF_BOOL without a default, reloadable */
};

/* The keys, each with where its value goes in struct fuzz_values. */
static const struct {
	struct cf_key key;
	size_t off;
} fuzz_keys[] = {
	{ { .name = "app.name", .type = CF_STR, .def = "default-name" },
	  offsetof(struct fuzz_values, name) },
	{ { .name = "app.empty", .type = CF_STR }, offsetof(struct fuzz_values, empty) },
	{ { .name = "app.token", .type = CF_STR, .secret = true },
	  offsetof(struct fuzz_values, token) },
	{ { .name = "http.port", .type = CF_INT, .def = "8080", .min = 0, .max = 65535 },
	  offsetof(struct fuzz_values, port) },
	{ { .name = "my-daemon.wide",
	    .type = CF_INT,
	    .def = "-1",
	    .min = LLONG_MIN,
	    .max = LLONG_MAX },
	  offsetof(struct fuzz_values, wide) },
	{ { .name = "my-daemon.neg", .type = CF_INT, .def = "-1000", .min = -1000, .max = -1 },
	  offsetof(struct fuzz_values, neg) },
	{ { .name = "app.flag", .type = CF_BOOL, .def = "true" },
	  offsetof(struct fuzz_values, flag) },
	{ { .name = "x.off", .type = CF_BOOL, .reload = true }, offsetof(struct fuzz_values, off) },
};

#define FUZZ_NKEYS (sizeof(fuzz_keys) / sizeof(fuzz_keys[0]))

/* A table and the values it fills, so that several can live at once. */
struct fuzz_table {
	struct fuzz_values v;
	struct cf_key keys[FUZZ_NKEYS + 1];
	struct cf_table t;
};

/* The INI file and a secret's file, in memory. */
static int ini_fd = -1, secret_fd = -1;
static char ini_path[64], secret_path[64];

static int memfd_path(const char *name, char *path, size_t n)
{
	int fd = memfd_create(name, MFD_CLOEXEC);

	if (fd < 0) {
		perror("fuzz_config: memfd_create");
		abort();
	}
	snprintf(path, n, "/proc/self/fd/%d", fd);
	return fd;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	ini_fd = memfd_path("fuzz_config.ini", ini_path, sizeof(ini_path));
	secret_fd = memfd_path("fuzz_config.secret", secret_path, sizeof(secret_path));
	return 0;
}

static void table_init(struct fuzz_table *ft)
{
	char err[512];

	memset(ft, 0, sizeof(*ft));
	for (size_t i = 0; i < FUZZ_NKEYS; i++) {
		ft->keys[i] = fuzz_keys[i].key;
		ft->keys[i].target = (char *)&ft->v + fuzz_keys[i].off;
	}
	ft->t.app = "fuzz";
	ft->t.keys = ft->keys;
	if (cf_defaults(&ft->t, err, sizeof(err)) < 0)
		FAIL("defaults", err);
}

/* The memfd holds exactly these bytes. */
static void file_write(int fd, const void *buf, size_t len)
{
	if (ftruncate(fd, 0) < 0 || (len > 0 && pwrite(fd, buf, len, 0) != (ssize_t)len)) {
		perror("fuzz_config: memfd");
		abort();
	}
}

static int ini_load(struct fuzz_table *ft, const void *buf, size_t len, char *err, size_t errlen)
{
	file_write(ini_fd, buf, len);
	err[0] = '\0';
	return cf_load_file(&ft->t, ini_path, err, errlen);
}

static bool values_equal(const struct fuzz_values *a, const struct fuzz_values *b)
{
	return strcmp(a->name, b->name) == 0 && strcmp(a->empty, b->empty) == 0 &&
	       strcmp(a->token, b->token) == 0 && a->port == b->port && a->wide == b->wide &&
	       a->neg == b->neg && a->flag == b->flag && a->off == b->off;
}

static void check_values(const struct fuzz_table *ft)
{
	const struct fuzz_values *v = &ft->v;

	if (v->name == NULL || v->empty == NULL || v->token == NULL)
		FAIL("bounds", "a string key is NULL");
	if (v->port < 0 || v->port > 65535)
		FAIL("bounds", "http.port out of [0, 65535]");
	if (v->neg < -1000 || v->neg > -1)
		FAIL("bounds", "my-daemon.neg out of [-1000, -1]");
}

/*
 * Lines of p as fgets() returns them when none is longer than a piece: one
 * per '\n', plus an unterminated last one. *longest includes the '\n'.
 */
static size_t count_lines(const uint8_t *p, size_t n, size_t *longest)
{
	size_t lines = 0, start = 0;

	*longest = 0;
	for (size_t i = 0; i < n; i++) {
		if (p[i] == '\n' || i + 1 == n) {
			if (i + 1 - start > *longest)
				*longest = i + 1 - start;
			lines++;
			start = i + 1;
		}
	}
	return lines;
}

/* Length of the first `lines` lines of p, newlines included. */
static size_t prefix_len(const uint8_t *p, size_t n, size_t lines)
{
	size_t i;

	for (i = 0; i < n && lines > 0; i++) {
		if (p[i] == '\n')
			lines--;
	}
	return i;
}

/* The line number in "path:N: reason", 0 if there is none. */
static long error_line(const char *err)
{
	size_t pl = strlen(ini_path);

	if (strncmp(err, ini_path, pl) != 0 || err[pl] != ':')
		return 0;
	return strtol(err + pl + 1, NULL, 10);
}

/*
 * A failed load: the error must name a line of the file, and parsing only
 * the lines up to it must fail with the very same message.
 */
static void check_error(const uint8_t *data, size_t size, const char *err)
{
	struct fuzz_table ft;
	char again[1024];
	size_t longest, lines = count_lines(data, size, &longest);
	long line = error_line(err);

	if (line <= 0)
		FAIL("error_line", err);
	if ((size_t)line > lines)
		FAIL("long_lines", "the error names a line past the end of the file");
	/* Lines inih splits would not line up with ours. */
	if (longest > FUZZ_INI_PIECE || line <= 0 || (size_t)line > lines)
		return;
	table_init(&ft);
	if (ini_load(&ft, data, prefix_len(data, size, (size_t)line), again, sizeof(again)) == 0 ||
	    strcmp(err, again) != 0)
		FAIL("error_attribution", "the error is not the first bad line's own");
	cf_free(&ft.t);
}

/*
 * A successful load of a file with lines longer than inih reads at once:
 * the same file with those lines cut to what inih parses as the line must
 * load to the same values (the rest was parsed as lines of its own).
 */
static void check_long_lines(const uint8_t *data, size_t size, const struct fuzz_table *loaded)
{
	struct fuzz_table ft;
	uint8_t *cut;
	size_t o = 0, start = 0, longest;
	char err[1024];

	(void)count_lines(data, size, &longest);
	if (longest <= FUZZ_INI_PIECE)
		return;
	cut = malloc(size + 1);
	if (cut == NULL)
		return;
	for (size_t i = 0; i <= size; i++) {
		if (i < size && data[i] != '\n')
			continue;
		/* Line [start, i): keep its first piece and the newline. */
		for (size_t j = start; j < i && j - start < FUZZ_INI_PIECE; j++)
			cut[o++] = data[j];
		if (i < size)
			cut[o++] = '\n';
		start = i + 1;
	}
	table_init(&ft);
	if (ini_load(&ft, cut, o, err, sizeof(err)) < 0 || !values_equal(&ft.v, &loaded->v))
		FAIL("long_lines", "the tail of a long line changed the configuration");
	cf_free(&ft.t);
	free(cut);
}

/* A string cf_print writes so that inih reads it back as is. */
static bool plain_string(const char *s)
{
	size_t n = strlen(s);

	return n < 100 && strchr(s, ';') == NULL && strpbrk(s, "\r\n\t\v\f ") != s &&
	       (n == 0 || strchr(" \t\r\v\f", s[n - 1]) == NULL);
}

/*
 * cf_print's listing shows a secret as "<redacted>" and, loaded into a
 * fresh table, gives the same values for every other key.
 */
static void check_print(const struct fuzz_table *ft)
{
	struct fuzz_table back;
	char *text = NULL;
	size_t len = 0;
	char err[1024];
	FILE *f = open_memstream(&text, &len);

	if (f == NULL)
		return;
	cf_print(&ft->t, f);
	if (fclose(f) != 0) {
		free(text);
		return;
	}
	if (strstr(text, ft->v.token[0] != '\0' ? "\napp.token = <redacted>\n" :
						  "\napp.token = \n") == NULL)
		FAIL("print_secret", "cf_print shows a secret");
	table_init(&back);
	if (ini_load(&back, text, len, err, sizeof(err)) < 0) {
		if (plain_string(ft->v.name) && plain_string(ft->v.empty))
			FAIL("print_round_trip", err);
	} else {
		if (back.v.port != ft->v.port || back.v.wide != ft->v.wide ||
		    back.v.neg != ft->v.neg || back.v.flag != ft->v.flag || back.v.off != ft->v.off)
			FAIL("print_round_trip", "an int or bool changed through cf_print");
		if (plain_string(ft->v.name) && plain_string(ft->v.empty) &&
		    (strcmp(back.v.name, ft->v.name) != 0 ||
		     strcmp(back.v.empty, ft->v.empty) != 0))
			FAIL("print_round_trip", "a string changed through cf_print");
	}
	cf_free(&back.t);
	free(text);
}

/*
 * The input's lines as an environment. A FLASHSALE_..._FILE variable names
 * a secret's file: whatever it says, it is pointed at a memfd holding the
 * input itself, so the fuzzer writes the secret and no other file is read.
 */
static void check_env(const uint8_t *data, size_t size, struct fuzz_table *ft)
{
	char *buf = malloc(size + 1);
	char **envp = calloc(size + 2, sizeof(*envp));
	char **owned = calloc(size + 2, sizeof(*owned));
	size_t n = 0, nowned = 0;
	char err[1024];

	if (buf == NULL || envp == NULL || owned == NULL)
		goto out;
	memcpy(buf, data, size);
	buf[size] = '\0';
	for (char *line = buf, *nl; line != NULL; line = nl != NULL ? nl + 1 : NULL) {
		char *file;

		nl = strchr(line, '\n');
		if (nl != NULL)
			*nl = '\0';
		file = strstr(line, "_FILE=");
		if (file != NULL) {
			int len = (int)(file - line) + 6;

			if (asprintf(&owned[nowned], "%.*s%s", len, line, secret_path) < 0)
				goto out;
			line = owned[nowned++];
		}
		envp[n++] = line;
	}
	if (nowned > 0)
		file_write(secret_fd, data, size);
	if (cf_load_env(&ft->t, envp, err, sizeof(err)) == 0) {
		check_values(ft);
		/* cf_read_secret: the file's first line, "which must be all there is". */
		if (strchr(ft->v.token, '\n') != NULL)
			FAIL("secret_lines", "a secret of several lines was accepted");
	} else if (strncmp(err, "environment FLASHSALE_", 22) != 0) {
		FAIL("env_error", err);
	}
out:
	for (size_t i = 0; owned != NULL && i < nowned; i++)
		free(owned[i]);
	free(owned);
	free(envp);
	free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_table ft;
	char err[1024];

	table_init(&ft);
	if (ini_load(&ft, data, size, err, sizeof(err)) == 0) {
		check_values(&ft);
		check_long_lines(data, size, &ft);
		check_print(&ft);
	} else {
		check_error(data, size, err);
	}
	check_env(data, size, &ft);
	cf_free(&ft.t);
	if (ft.v.name != NULL || ft.v.empty != NULL || ft.v.token != NULL)
		FAIL("free", "cf_free left a string behind");
	return 0;
}
