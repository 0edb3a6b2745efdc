#include "store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "log.h"

#define GW_STORE_BACKOFF_MIN_MS 100
#define GW_STORE_BACKOFF_MAX_MS 5000

static void gw_store_connect(struct gw_store *s);

static void gw_store_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	gw_store_connect(arg);
}

static void gw_store_schedule_retry(struct gw_store *s)
{
	struct timeval tv;

	if (s->stopping)
		return;
	tv.tv_sec = s->backoff_ms / 1000;
	tv.tv_usec = (s->backoff_ms % 1000) * 1000;
	evtimer_add(s->retry_ev, &tv);
	s->backoff_ms *= 2;
	if (s->backoff_ms > GW_STORE_BACKOFF_MAX_MS)
		s->backoff_ms = GW_STORE_BACKOFF_MAX_MS;
}

/* hiredis frees the context after a failed connect: forget it. */
static void gw_store_on_connect(const redisAsyncContext *ac, int status)
{
	struct gw_store *s = ac->data;

	if (status != REDIS_OK) {
		log_warn("redis_connect_failed", "address=%s err=\"%s\" retry_ms=%d",
			 s->address, ac->errstr, s->backoff_ms);
		s->ac = NULL;
		s->connected = false;
		gw_store_schedule_retry(s);
		return;
	}
	s->connected = true;
	s->backoff_ms = GW_STORE_BACKOFF_MIN_MS;
	s->connects++;
	log_info("redis_connected", "address=%s connects=%lld", s->address, s->connects);
	if (s->on_connect != NULL)
		s->on_connect(s->on_connect_arg);
}

/* Called only for a context that had connected; hiredis frees it afterwards. */
static void gw_store_on_disconnect(const redisAsyncContext *ac, int status)
{
	struct gw_store *s = ac->data;

	if (status != REDIS_OK)
		log_warn("redis_disconnected", "address=%s err=\"%s\"", s->address, ac->errstr);
	else
		log_info("redis_disconnected", "address=%s", s->address);
	s->ac = NULL;
	s->connected = false;
	gw_store_schedule_retry(s);
}

static void gw_store_connect(struct gw_store *s)
{
	char err[256];
	redisAsyncContext *ac;

	if (s->stopping || s->ac != NULL)
		return;
	ac = redisx_connect_async(s->base, s->address, s->priority, err, sizeof(err));
	if (ac == NULL) {
		log_warn("redis_connect_failed", "address=%s err=\"%s\" retry_ms=%d",
			 s->address, err, s->backoff_ms);
		gw_store_schedule_retry(s);
		return;
	}
	ac->data = s;
	redisAsyncSetConnectCallback(ac, gw_store_on_connect);
	redisAsyncSetDisconnectCallback(ac, gw_store_on_disconnect);
	s->ac = ac;
	s->connected = false;
}

int gw_store_init(struct gw_store *s, struct event_base *base, const char *address,
		  int priority)
{
	memset(s, 0, sizeof(*s));
	s->base = base;
	s->address = address;
	s->backoff_ms = GW_STORE_BACKOFF_MIN_MS;
	s->priority = priority;
	s->retry_ev = evtimer_new(base, gw_store_retry_cb, s);
	if (s->retry_ev == NULL)
		return -1;
	gw_store_connect(s);
	return 0;
}

int gw_store_command_argv(struct gw_store *s, redisCallbackFn *fn, void *privdata,
			  int argc, const char **argv, const size_t *argvlen)
{
	if (!gw_store_ready(s))
		return -1;
	if (redisAsyncCommandArgv(s->ac, fn, privdata, argc, argv, argvlen) != REDIS_OK)
		return -1;
	return 0;
}

int gw_store_command_resp(struct gw_store *s, redisCallbackFn *fn, void *privdata,
			  const char *cmd, size_t len)
{
	if (!gw_store_ready(s))
		return -1;
	if (redisAsyncFormattedCommand(s->ac, fn, privdata, cmd, len) != REDIS_OK)
		return -1;
	return 0;
}

int64_t gw_store_reply_int(const redisReply *r, bool *ok)
{
	char *end;
	long long v;

	if (r == NULL)
		goto bad;
	if (r->type == REDIS_REPLY_INTEGER)
		return r->integer;
	if (r->type != REDIS_REPLY_STRING || r->len == 0)
		goto bad;
	v = strtoll(r->str, &end, 10);
	if (*end != '\0')
		goto bad;
	return v;
bad:
	*ok = false;
	return 0;
}

void gw_store_reset(struct gw_store *s)
{
	redisAsyncContext *ac = s->ac;

	if (ac == NULL)
		return;
	log_error("redis_stalled", "address=%s msg=\"no reply in time; reconnecting\"", s->address);
	s->ac = NULL;
	s->connected = false;
	redisAsyncFree(ac);
	gw_store_schedule_retry(s);
}

void gw_store_close(struct gw_store *s)
{
	s->stopping = true;
	if (s->retry_ev != NULL)
		evtimer_del(s->retry_ev);
	if (s->ac != NULL && s->connected)
		redisAsyncDisconnect(s->ac);
}

void gw_store_free(struct gw_store *s)
{
	s->stopping = true;
	if (s->ac != NULL) {
		redisAsyncContext *ac = s->ac;

		s->ac = NULL;
		redisAsyncFree(ac);
	}
	if (s->retry_ev != NULL) {
		event_free(s->retry_ev);
		s->retry_ev = NULL;
	}
}
