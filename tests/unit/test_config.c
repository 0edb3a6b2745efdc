/* Unit tests for common/config.c: precedence, parsing, errors, listing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>
#include <cmocka.h>

#include "config.h"

static char *s_name;
static char *s_host;
static long long i_port;
static long long i_batch;
static bool b_flag;
static char *s_token;

static struct cf_key keys[] = {
	{ "app.name", CF_STR, &s_name, "default-name", 0, 0, "A name" },
	{ "http.host", CF_STR, &s_host, "127.0.0.1", 0, 0, "Host" },
	{ "http.port", CF_INT, &i_port, "8080", 0, 65535, "Port" },
	{ "my-daemon.batch_size", CF_INT, &i_batch, "100", 1, 10000, "Batch" },
	{ "app.flag", CF_BOOL, &b_flag, "false", 0, 0, "A switch" },
	{ "app.token", CF_STR, &s_token, "", 0, 0, "A secret", false, true },
	{ NULL, 0, NULL, NULL, 0, 0, NULL },
};

static struct cf_table table = { .app = "test", .usage = NULL, .keys = keys };

static char tmpdir[] = "/tmp/test_config.XXXXXX";

static int group_setup(void **state)
{
	(void)state;
	return mkdtemp(tmpdir) != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
	char cmd[128];
	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static int test_setup(void **state)
{
	char err[256];
	(void)state;
	assert_int_equal(cf_defaults(&table, err, sizeof(err)), 0);
	return 0;
}

static int test_teardown(void **state)
{
	(void)state;
	cf_free(&table);
	return 0;
}

/* Write text to a file in tmpdir; returns its path (static buffer). */
static const char *write_file(const char *name, const char *text)
{
	static char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(fputs(text, f) >= 0, 1);
	assert_int_equal(fclose(f), 0);
	return path;
}

static void test_defaults(void **state)
{
	(void)state;
	assert_string_equal(s_name, "default-name");
	assert_string_equal(s_host, "127.0.0.1");
	assert_int_equal(i_port, 8080);
	assert_int_equal(i_batch, 100);
	assert_false(b_flag);
}

static void test_precedence(void **state)
{
	char *envp[] = {
		"PATH=/bin",
		"FLASHSALE_HTTP_PORT=9002",
		"FLASHSALE_MY_DAEMON_BATCH_SIZE=300",
		"FLASHSALE_NOT_A_KEY=whatever",	/* ignored: shared environment */
		"HTTP_HOST=ignored",
		NULL,
	};
	const char *path;
	char err[256];
	(void)state;

	path = write_file("prec.ini",
			  "; comment\n"
			  "[http]\n"
			  "port = 9001\n"
			  "host = 10.0.0.1\n"
			  "[my-daemon]\n"
			  "batch_size = 200\n"
			  "[app]\n"
			  "flag = yes\n");
	assert_int_equal(cf_load_file(&table, path, err, sizeof(err)), 0);
	assert_int_equal(i_port, 9001);
	assert_string_equal(s_host, "10.0.0.1");
	assert_int_equal(i_batch, 200);
	assert_true(b_flag);
	assert_string_equal(s_name, "default-name");	/* untouched keys keep defaults */

	assert_int_equal(cf_load_env(&table, envp, err, sizeof(err)), 0);
	assert_int_equal(i_port, 9002);
	assert_int_equal(i_batch, 300);
	assert_string_equal(s_host, "10.0.0.1");

	assert_int_equal(cf_set(&table, "http.port", "9003", err, sizeof(err)), 0);
	assert_int_equal(i_port, 9003);
	assert_int_equal(i_batch, 300);
}

/* cf_parse_args must apply flags after env and file whatever the argv order. */
static void test_parse_args_order(void **state)
{
	const char *path;
	char pathbuf[256];
	int first = -1;
	(void)state;

	cf_free(&table);
	path = write_file("args.ini", "[http]\nport = 7001\nhost = filehost\n[app]\nname = file\n");
	snprintf(pathbuf, sizeof(pathbuf), "%s", path);
	assert_int_equal(setenv("FLASHSALE_HTTP_PORT", "7002", 1), 0);
	assert_int_equal(setenv("FLASHSALE_APP_NAME", "env", 1), 0);
	{
		char *argv[] = {
			"prog", "-s", "http.port=7003", "--set", "app.flag=on",
			"-c", pathbuf, "rest", "more", NULL,
		};

		cf_parse_args(&table, 9, argv, &first);
		assert_string_equal(argv[first], "rest");
		assert_string_equal(argv[first + 1], "more");
	}
	unsetenv("FLASHSALE_HTTP_PORT");
	unsetenv("FLASHSALE_APP_NAME");
	assert_int_equal(i_port, 7003);		/* flag > env > file */
	assert_string_equal(s_name, "env");	/* env > file */
	assert_string_equal(s_host, "filehost");	/* file > default */
	assert_true(b_flag);
	assert_int_equal(i_batch, 100);		/* default */
}

static void test_bounds(void **state)
{
	char err[256];
	(void)state;

	assert_int_equal(cf_set(&table, "http.port", "65535", err, sizeof(err)), 0);
	assert_int_equal(cf_set(&table, "http.port", "0", err, sizeof(err)), 0);
	assert_int_equal(cf_set(&table, "http.port", "65536", err, sizeof(err)), -1);
	assert_non_null(strstr(err, "http.port"));
	assert_int_equal(i_port, 0);	/* a refused value changes nothing */
	assert_int_equal(cf_set(&table, "http.port", "-1", err, sizeof(err)), -1);
	assert_int_equal(cf_set(&table, "my-daemon.batch_size", "0", err, sizeof(err)), -1);
	assert_int_equal(cf_set(&table, "my-daemon.batch_size", "10000", err, sizeof(err)), 0);
	assert_int_equal(cf_set(&table, "my-daemon.batch_size", "10001", err, sizeof(err)), -1);
	assert_int_equal(cf_set(&table, "my-daemon.batch_size", "12abc", err, sizeof(err)), -1);
	assert_int_equal(cf_set(&table, "my-daemon.batch_size", "", err, sizeof(err)), -1);
	assert_int_equal(cf_set(&table, "my-daemon.batch_size",
				"99999999999999999999999", err, sizeof(err)), -1);
	assert_int_equal(i_batch, 10000);
}

static void test_unknown_key(void **state)
{
	char *envp[] = { "FLASHSALE_HTTP_PORT=notanumber", NULL };
	const char *path;
	char err[512];
	(void)state;

	assert_int_equal(cf_set(&table, "http.prot", "1", err, sizeof(err)), -1);
	assert_non_null(strstr(err, "http.prot"));

	path = write_file("typo.ini", "[http]\nport = 1234\n\n[htpp]\nport = 1\n");
	assert_int_equal(cf_load_file(&table, path, err, sizeof(err)), -1);
	/* "file:line: reason" naming the bad key */
	assert_non_null(strstr(err, "typo.ini:5:"));
	assert_non_null(strstr(err, "htpp.port"));

	path = write_file("badval.ini", "[http]\nport = 70000\n");
	assert_int_equal(cf_load_file(&table, path, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "badval.ini:2:"));

	path = write_file("syntax.ini", "[http]\nthis line has no equals sign\n");
	assert_int_equal(cf_load_file(&table, path, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "syntax.ini:2:"));

	assert_int_equal(cf_load_file(&table, "/nonexistent/x.ini", err, sizeof(err)), -1);

	assert_int_equal(cf_load_env(&table, envp, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "FLASHSALE_HTTP_PORT"));
}

/*
 * Found by fuzzing (tests/fuzz/crashes/config/): a later bad key's reason
 * replaced the first's; a syntax error was reported with a later key's
 * reason; inih r55 parsed the tail of a line over 198 bytes as a line, so a
 * long comment could set a key; a two-line secret file was taken whole.
 */
static void test_file_errors_found_by_fuzzing(void **state)
{
	char long_comment[300], text[400], err[512];
	char *envp[] = { NULL, NULL };
	char env[300];
	const char *path;
	(void)state;

	path = write_file("two.ini", "[http]\nport = 70000\nbogus = 1\n");
	assert_int_equal(cf_load_file(&table, path, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "two.ini:2:"));
	assert_non_null(strstr(err, "http.port"));
	assert_null(strstr(err, "bogus"));

	path = write_file("syn.ini", "[app\nname = x\n");
	assert_int_equal(cf_load_file(&table, path, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "syn.ini:1: syntax error"));

	/* inih reads "[ ;app]" as "[" and an inline comment: line 1 is the
	 * syntax error, not line 2's unknown key. */
	path = write_file("inline.ini", "[ ;app]\ntempy = B\n");
	assert_int_equal(cf_load_file(&table, path, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "inline.ini:1: syntax error"));

	memset(long_comment, ' ', sizeof(long_comment));
	long_comment[0] = '#';
	snprintf(text, sizeof(text), "%.*shttp.port = 1\n", 197, long_comment);
	path = write_file("long.ini", text);
	assert_int_equal(cf_load_file(&table, path, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "long.ini:1: line longer than 198 bytes"));
	assert_int_equal(i_port, 8080);
	/* Carriage returns count: inih reads them into its 200 bytes too. */
	snprintf(text, sizeof(text), "%.*s%s\n", 150, long_comment,
		 "\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r"
		 "\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r");
	path = write_file("cr.ini", text);
	assert_int_equal(cf_load_file(&table, path, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "cr.ini:1: line longer"));

	/* A NUL inside a line (inih would read the line up to it). */
	path = write_file("nul.ini", "[http]\nport = 1\n");
	{
		FILE *f = fopen(path, "w");

		assert_non_null(f);
		assert_int_equal(fwrite("[http]\nport\0x = 1\n", 1, 19, f), 19);
		assert_int_equal(fclose(f), 0);
	}
	assert_int_equal(cf_load_file(&table, path, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "nul.ini:2: NUL byte"));

	path = write_file("secret", "first-line\nsecond-line\n");
	snprintf(env, sizeof(env), "FLASHSALE_APP_TOKEN_FILE=%s", path);
	envp[0] = env;
	assert_int_equal(cf_load_env(&table, envp, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "one line"));
	path = write_file("secret", "the-only-line\n");
	assert_int_equal(cf_load_env(&table, envp, err, sizeof(err)), 0);
	assert_string_equal(s_token, "the-only-line");
}

static void test_bool(void **state)
{
	static const char *const yes[] = { "true", "yes", "on", "1", "TRUE", "Yes" };
	static const char *const no[] = { "false", "no", "off", "0", "False", "OFF" };
	static const char *const bad[] = { "", "2", "y", "enabled", "truex" };
	char err[256];
	(void)state;

	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		b_flag = false;
		assert_int_equal(cf_set(&table, "app.flag", yes[i], err, sizeof(err)), 0);
		assert_true(b_flag);
	}
	for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
		b_flag = true;
		assert_int_equal(cf_set(&table, "app.flag", no[i], err, sizeof(err)), 0);
		assert_false(b_flag);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(cf_set(&table, "app.flag", bad[i], err, sizeof(err)), -1);
}

static void test_print(void **state)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f;
	char err[256];
	(void)state;

	assert_int_equal(cf_set(&table, "app.name", "hello world", err, sizeof(err)), 0);
	assert_int_equal(cf_set(&table, "app.flag", "on", err, sizeof(err)), 0);
	f = open_memstream(&text, &len);
	assert_non_null(f);
	cf_print(&table, f);
	assert_int_equal(fclose(f), 0);
	assert_non_null(strstr(text, "app.name = hello world\n"));
	assert_non_null(strstr(text, "http.host = 127.0.0.1\n"));
	assert_non_null(strstr(text, "http.port = 8080\n"));
	assert_non_null(strstr(text, "my-daemon.batch_size = 100\n"));
	assert_non_null(strstr(text, "app.flag = true\n"));
	free(text);
}

/* Run cf_parse_args in a child; return its exit status, stdout in out. */
static int run_child(char **argv, int argc, char *out, size_t outlen)
{
	int fds[2];
	pid_t pid;
	int status;
	size_t got = 0;
	ssize_t n;

	assert_int_equal(pipe(fds), 0);
	fflush(NULL);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int first;

		close(fds[0]);
		dup2(fds[1], STDOUT_FILENO);
		if (freopen("/dev/null", "w", stderr) == NULL)
			_exit(101);
		/* cf_parse_args starts from cf_defaults(): give it a clean table. */
		cf_free(&table);
		cf_parse_args(&table, argc, argv, &first);
		_exit(100);	/* returned normally */
	}
	close(fds[1]);
	while (got + 1 < outlen && (n = read(fds[0], out + got, outlen - 1 - got)) > 0)
		got += (size_t)n;
	out[got] = '\0';
	close(fds[0]);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	return WEXITSTATUS(status);
}

static void test_cli_exits(void **state)
{
	char out[8192];
	char missing[256];
	(void)state;

	snprintf(missing, sizeof(missing), "%s/missing.ini", tmpdir);
	{
		char *argv[] = { "prog", "--bogus", NULL };
		assert_int_equal(run_child(argv, 2, out, sizeof(out)), 2);
	}
	{
		char *argv[] = { "prog", "-s", "noequals", NULL };
		assert_int_equal(run_child(argv, 3, out, sizeof(out)), 2);
	}
	{
		char *argv[] = { "prog", "-s", "http.port=99999", NULL };
		assert_int_equal(run_child(argv, 3, out, sizeof(out)), 2);
	}
	{
		char *argv[] = { "prog", "-s", "no.such=1", NULL };
		assert_int_equal(run_child(argv, 3, out, sizeof(out)), 2);
	}
	{
		char *argv[] = { "prog", "-c", missing, NULL };
		assert_int_equal(run_child(argv, 3, out, sizeof(out)), 2);
	}
	{
		char *argv[] = { "prog", "-c", NULL };
		assert_int_equal(run_child(argv, 2, out, sizeof(out)), 2);
	}
	{
		char *argv[] = { "prog", "-s", "http.port=1", NULL };
		assert_int_equal(run_child(argv, 3, out, sizeof(out)), 100);
	}
	{
		char *argv[] = { "prog", "--print-config", "-s", "http.port=4242", NULL };
		assert_int_equal(run_child(argv, 4, out, sizeof(out)), 0);
		assert_non_null(strstr(out, "http.port = 4242\n"));
		assert_non_null(strstr(out, "app.name = default-name\n"));
	}
	{
		char *argv[] = { "prog", "--help", NULL };
		assert_int_equal(run_child(argv, 2, out, sizeof(out)), 0);
		assert_non_null(strstr(out, "my-daemon.batch_size"));
		assert_non_null(strstr(out, "Batch"));
		assert_non_null(strstr(out, "--print-config"));
	}
	{
		char *argv[] = { "prog", "-V", NULL };
		assert_int_equal(run_child(argv, 2, out, sizeof(out)), 0);
		assert_non_null(strstr(out, "flashsale-test "));
	}
}

static int reload_changes;
static char reload_key[64];

static void on_reload_changed(const char *key, void *arg)
{
	(void)arg;
	reload_changes++;
	snprintf(reload_key, sizeof(reload_key), "%s", key);
}

/* SIGHUP: reloadable keys change, others wait for a restart, bad input changes nothing. */
static void test_reload(void **state)
{
	char err[512], path[256];
	(void)state;

	free(table.sets);       /* left by test_parse_args_order (argv of its stack) */
	table.sets = NULL;
	table.nsets = 0;
	keys[3].reload = true;  /* my-daemon.batch_size */
	snprintf(path, sizeof(path), "%s",
		 write_file("reload.ini", "[my-daemon]\nbatch_size = 200\n[http]\nport = 9000\n"));
	table.path = path;

	reload_changes = 0;
	assert_int_equal(cf_reload(&table, on_reload_changed, NULL, err, sizeof(err)), 0);
	assert_int_equal(i_batch, 200);         /* reloadable: applied */
	assert_int_equal(i_port, 8080);         /* not reloadable: needs a restart */
	assert_int_equal(reload_changes, 1);
	assert_string_equal(reload_key, "my-daemon.batch_size");

	/* Nothing changed: no callback. */
	reload_changes = 0;
	assert_int_equal(cf_reload(&table, on_reload_changed, NULL, err, sizeof(err)), 0);
	assert_int_equal(reload_changes, 0);

	/* A bad file is refused whole: the old configuration stays. */
	write_file("reload.ini", "[my-daemon]\nbatch_size = 300\nbogus = 1\n");
	assert_int_equal(cf_reload(&table, on_reload_changed, NULL, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "bogus"));
	assert_int_equal(i_batch, 200);
	write_file("reload.ini", "[my-daemon]\nbatch_size = 99999\n");
	assert_int_equal(cf_reload(&table, on_reload_changed, NULL, err, sizeof(err)), -1);
	assert_int_equal(i_batch, 200);
	assert_int_equal(reload_changes, 0);

	keys[3].reload = false;
	table.path = NULL;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_defaults, test_setup, test_teardown),
		cmocka_unit_test_setup_teardown(test_precedence, test_setup, test_teardown),
		cmocka_unit_test_setup_teardown(test_parse_args_order, test_setup, test_teardown),
		cmocka_unit_test_setup_teardown(test_bounds, test_setup, test_teardown),
		cmocka_unit_test_setup_teardown(test_unknown_key, test_setup, test_teardown),
		cmocka_unit_test_setup_teardown(test_file_errors_found_by_fuzzing, test_setup,
						test_teardown),
		cmocka_unit_test_setup_teardown(test_bool, test_setup, test_teardown),
		cmocka_unit_test_setup_teardown(test_print, test_setup, test_teardown),
		cmocka_unit_test_setup_teardown(test_cli_exits, test_setup, test_teardown),
		cmocka_unit_test_setup_teardown(test_reload, test_setup, test_teardown),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
