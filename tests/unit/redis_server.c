#include "redis_server.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char dir[64];
static char sock[128];
static pid_t server_pid;
static redisContext *rc;

void test_redis_stop(void)
{
	char path[160];

	if (rc != NULL) {
		redisFree(rc);
		rc = NULL;
	}
	if (server_pid > 0) {
		kill(server_pid, SIGKILL);
		waitpid(server_pid, NULL, 0);
		server_pid = 0;
	}
	if (dir[0] != '\0') {
		unlink(sock);
		snprintf(path, sizeof(path), "%s/redis.log", dir);
		unlink(path);
		rmdir(dir);
		dir[0] = '\0';
	}
}

const char *test_redis_socket(void)
{
	return sock;
}

redisContext *test_redis_subscribe(const char *channel)
{
	redisContext *c = redisConnectUnix(sock);
	redisReply *r = NULL;

	if (c == NULL || c->err != 0 || redisSetTimeout(c, (struct timeval){ 5, 0 }) != REDIS_OK ||
	    (r = redisCommand(c, "SUBSCRIBE %s", channel)) == NULL ||
	    r->type != REDIS_REPLY_ARRAY) {
		if (r != NULL)
			freeReplyObject(r);
		if (c != NULL)
			redisFree(c);
		return NULL;
	}
	freeReplyObject(r);
	return c;
}

redisContext *test_redis_start(const char *server)
{
	snprintf(dir, sizeof(dir), "/tmp/fs-unit-redis-XXXXXX");
	if (mkdtemp(dir) == NULL) {
		dir[0] = '\0';
		fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
		return NULL;
	}
	atexit(test_redis_stop);
	snprintf(sock, sizeof(sock), "%s/r.sock", dir);
	server_pid = fork();
	if (server_pid < 0)
		return NULL;
	if (server_pid == 0) {
		char logfile[160];

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		snprintf(logfile, sizeof(logfile), "%s/redis.log", dir);
		execl(server, server, "--port", "0", "--unixsocket", sock, "--save", "",
		      "--appendonly", "no", "--dir", dir, "--logfile", logfile, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 500; i++) {
		struct timespec ts = { 0, 10 * 1000 * 1000 };

		rc = redisConnectUnix(sock);
		if (rc != NULL && rc->err == 0)
			return rc;
		if (rc != NULL)
			redisFree(rc);
		rc = NULL;
		if (waitpid(server_pid, NULL, WNOHANG) == server_pid) {
			server_pid = 0;
			fprintf(stderr, "redis-server %s exited at start-up\n", server);
			return NULL;
		}
		nanosleep(&ts, NULL);
	}
	fprintf(stderr, "redis-server did not open %s\n", sock);
	return NULL;
}

redisContext *test_rc;

int test_redis_group_setup(void **state)
{
	(void)state;
	test_rc = test_redis_start(getenv("REDIS_SERVER"));
	return test_rc != NULL ? 0 : -1;
}

int test_redis_group_teardown(void **state)
{
	(void)state;
	test_redis_stop();
	test_rc = NULL;
	return 0;
}
