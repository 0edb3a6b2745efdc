#include "redisx.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <hiredis/adapters/libevent.h>

/*
 * Split "unix:/path" or "host:port". Returns 1 for a Unix socket (path in
 * host), 0 for TCP, -1 when malformed.
 */
static int redisx_parse(const char *address, char *host, size_t hostlen, int *port,
			char *err, size_t errlen)
{
	const char *colon;
	char *end;
	long p;

	if (address == NULL || address[0] == '\0') {
		snprintf(err, errlen, "empty redis address");
		return -1;
	}
	if (strncmp(address, "unix:", 5) == 0) {
		if (address[5] == '\0' || strlen(address + 5) >= hostlen) {
			snprintf(err, errlen, "bad redis address '%s'", address);
			return -1;
		}
		snprintf(host, hostlen, "%s", address + 5);
		*port = 0;
		return 1;
	}
	colon = strrchr(address, ':');
	if (colon == NULL || colon == address || (size_t)(colon - address) >= hostlen) {
		snprintf(err, errlen, "bad redis address '%s' (want unix:/path or host:port)",
			 address);
		return -1;
	}
	p = strtol(colon + 1, &end, 10);
	if (colon[1] == '\0' || *end != '\0' || p <= 0 || p > 65535) {
		snprintf(err, errlen, "bad port in redis address '%s'", address);
		return -1;
	}
	memcpy(host, address, (size_t)(colon - address));
	host[colon - address] = '\0';
	/* "[::1]:6379" */
	if (host[0] == '[' && host[strlen(host) - 1] == ']') {
		memmove(host, host + 1, strlen(host));
		host[strlen(host) - 1] = '\0';
	}
	*port = (int)p;
	return 0;
}

/* timeout_ms <= 0: no connect or command timeout. */
redisContext *redisx_connect(const char *address, int timeout_ms,
			     char *err, size_t errlen)
{
	struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
	char host[512];
	int port, kind;
	redisContext *c;

	kind = redisx_parse(address, host, sizeof(host), &port, err, errlen);
	if (kind < 0)
		return NULL;
	/* A zero timeout would make hiredis give up at once: treat it as "none". */
	if (kind == 1)
		c = timeout_ms > 0 ? redisConnectUnixWithTimeout(host, tv) : redisConnectUnix(host);
	else
		c = timeout_ms > 0 ? redisConnectWithTimeout(host, port, tv) : redisConnect(host, port);
	if (c == NULL) {
		snprintf(err, errlen, "redis %s: cannot allocate context", address);
		return NULL;
	}
	if (c->err) {
		snprintf(err, errlen, "redis %s: %s", address, c->errstr);
		redisFree(c);
		return NULL;
	}
	if (timeout_ms > 0 && redisSetTimeout(c, tv) != REDIS_OK) {
		snprintf(err, errlen, "redis %s: cannot set timeout: %s", address, c->errstr);
		redisFree(c);
		return NULL;
	}
	return c;
}

redisAsyncContext *redisx_connect_async(struct event_base *base, const char *address,
					char *err, size_t errlen)
{
	char host[512];
	int port, kind;
	redisAsyncContext *ac;

	kind = redisx_parse(address, host, sizeof(host), &port, err, errlen);
	if (kind < 0)
		return NULL;
	if (kind == 1)
		ac = redisAsyncConnectUnix(host);
	else
		ac = redisAsyncConnect(host, port);
	if (ac == NULL) {
		snprintf(err, errlen, "redis %s: cannot allocate context", address);
		return NULL;
	}
	if (ac->err) {
		snprintf(err, errlen, "redis %s: %s", address, ac->errstr);
		redisAsyncFree(ac);
		return NULL;
	}
	if (redisLibeventAttach(ac, base) != REDIS_OK) {
		snprintf(err, errlen, "redis %s: cannot attach to the event loop", address);
		redisAsyncFree(ac);
		return NULL;
	}
	return ac;
}

int redisx_script_load(redisContext *c, const char *src, char sha[41],
		       char *err, size_t errlen)
{
	redisReply *r = redisCommand(c, "SCRIPT LOAD %s", src);
	int rc = -1;

	if (r == NULL) {
		snprintf(err, errlen, "SCRIPT LOAD: %s", c->errstr[0] ? c->errstr : "no reply");
		return -1;
	}
	if (r->type == REDIS_REPLY_ERROR)
		snprintf(err, errlen, "SCRIPT LOAD: %s", r->str);
	else if (r->type != REDIS_REPLY_STRING || r->len != 40)
		snprintf(err, errlen, "SCRIPT LOAD: unexpected reply type %d", r->type);
	else {
		memcpy(sha, r->str, 40);
		sha[40] = '\0';
		rc = 0;
	}
	freeReplyObject(r);
	return rc;
}

long long redisx_time_ms(redisContext *c, char *err, size_t errlen)
{
	redisReply *r = redisCommand(c, "TIME");
	long long ms = -1;

	if (r == NULL) {
		snprintf(err, errlen, "TIME: %s", c->errstr[0] ? c->errstr : "no reply");
		return -1;
	}
	if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
	    r->element[0]->type == REDIS_REPLY_STRING &&
	    r->element[1]->type == REDIS_REPLY_STRING) {
		long long s = strtoll(r->element[0]->str, NULL, 10);
		long long us = strtoll(r->element[1]->str, NULL, 10);

		ms = s * 1000 + us / 1000;
	} else if (r->type == REDIS_REPLY_ERROR) {
		snprintf(err, errlen, "TIME: %s", r->str);
	} else {
		snprintf(err, errlen, "TIME: unexpected reply type %d", r->type);
	}
	freeReplyObject(r);
	return ms;
}

redisReply *redisx_must(redisContext *c, redisReply *r, const char *what, char *err,
			size_t errlen)
{
	if (r == NULL) {
		snprintf(err, errlen, "redis %s: %s", what, c->errstr[0] ? c->errstr : "no reply");
		return NULL;
	}
	if (r->type == REDIS_REPLY_ERROR) {
		snprintf(err, errlen, "redis %s: %s", what, r->str);
		freeReplyObject(r);
		return NULL;
	}
	return r;
}
