/*
 * Logging: each line is formatted completely in a local buffer and written
 * with a single write(2), so lines from different threads never interleave
 * (stderr writes below PIPE_BUF are atomic on pipes; on files O_APPEND-like
 * semantics of a single write keep them whole).
 */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

enum log_level log_threshold = LOG_LEVEL_INFO;

static const char *log_app = "flashsale";

static const char *const level_names[] = {
	[LOG_LEVEL_ERROR] = "error",
	[LOG_LEVEL_WARN] = "warn",
	[LOG_LEVEL_INFO] = "info",
	[LOG_LEVEL_DEBUG] = "debug",
};

#define LOG_LINE_MAX 4096

void log_init(const char *app)
{
	if (app != NULL && app[0] != '\0')
		log_app = app;
}

bool log_set_level(const char *name)
{
	if (name == NULL)
		return false;
	for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
		if (strcasecmp(name, level_names[i]) == 0) {
			log_threshold = (enum log_level)i;
			return true;
		}
	}
	if (strcasecmp(name, "warning") == 0) {
		log_threshold = LOG_LEVEL_WARN;
		return true;
	}
	return false;
}

static void write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		buf += n;
		len -= (size_t)n;
	}
}

/* fmt comes from the levelled macros, checked there (format attribute). */
static void log_vwrite(enum log_level level, const char *event, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));

static void log_vwrite(enum log_level level, const char *event, const char *fmt, va_list ap)
{
	char line[LOG_LINE_MAX];
	struct timespec ts;
	struct tm tm;
	size_t len;
	int n;

	if ((unsigned)level > LOG_LEVEL_DEBUG)
		level = LOG_LEVEL_DEBUG;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = snprintf(line, sizeof(line),
		     "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s app=%s event=%s",
		     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
		     tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L,
		     level_names[level], log_app, event ? event : "unknown");
	if (n < 0)
		return;
	len = (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1;
	if (fmt != NULL && fmt[0] != '\0' && len < sizeof(line) - 2) {
		line[len++] = ' ';
		line[len] = '\0';
		n = vsnprintf(line + len, sizeof(line) - len, fmt, ap);
		if (n > 0)
			len += (size_t)n < sizeof(line) - len ? (size_t)n : sizeof(line) - len - 1;
		else if (n == 0)
			len--;	/* drop the separator: nothing followed */
	}
	/* Room for the newline: truncate if the line was too long. */
	if (len > sizeof(line) - 2)
		len = sizeof(line) - 2;
	line[len++] = '\n';
	write_all(STDERR_FILENO, line, len);
}

void log_write(enum log_level level, const char *event, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vwrite(level, event, fmt, ap);
	va_end(ap);
}

const char *log_quote(char *buf, size_t n, const char *s)
{
	size_t o = 0;

	if (n == 0)
		return buf;
	if (s == NULL)
		s = "";
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;
		char tmp[5];
		size_t tl;

		if (c == '"' || c == '\\') {
			tmp[0] = '\\';
			tmp[1] = (char)c;
			tl = 2;
		} else if (c == '\n') {
			memcpy(tmp, "\\n", 2);
			tl = 2;
		} else if (c == '\t') {
			memcpy(tmp, "\\t", 2);
			tl = 2;
		} else if (c == '\r') {
			memcpy(tmp, "\\r", 2);
			tl = 2;
		} else if (c < 0x20 || c == 0x7f) {
			tmp[0] = '?';
			tl = 1;
		} else {
			tmp[0] = (char)c;
			tl = 1;
		}
		if (o + tl >= n)
			break;
		memcpy(buf + o, tmp, tl);
		o += tl;
	}
	buf[o] = '\0';
	return buf;
}

void die(const char *event, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vwrite(LOG_LEVEL_ERROR, event, fmt, ap);
	va_end(ap);
	exit(1);
}
