/*
 * Logging: one logfmt line per event on stderr.
 *
 *   ts=2026-11-22T02:10:00.123Z level=info app=gateway event=listening port=8080
 *
 * The caller names the event and passes the rest as a printf format that
 * yields space-separated key=value pairs; free text goes in msg="..." and is
 * the caller's to keep free of double quotes (use log_quote() when it is not).
 * The level macros test the level before anything is formatted.
 */
#ifndef FLASHSALE_COMMON_LOG_H
#define FLASHSALE_COMMON_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include "util.h"

enum log_level {
	LOG_LEVEL_ERROR = 0,
	LOG_LEVEL_WARN = 1,
	LOG_LEVEL_INFO = 2,
	LOG_LEVEL_DEBUG = 3,
};

extern enum log_level log_threshold;

/* The log.level entry of a daemon's config table (reloadable on SIGHUP). */
#define LOG_CF_KEY(var) \
	{ "log.level", CF_STR, &(var), "info", 0, 0, \
	  "Log level: error, warn, info or debug", true }

/* Set the app name printed in every line (a static string). */
void log_init(const char *app);

/* Parse "error", "warn", "info" or "debug"; false if none of those. */
bool log_set_level(const char *name) FS_MUSTCHECK;

void log_write(enum log_level level, const char *event, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/*
 * Copy s into buf (size n) with '"' and '\\' and control characters replaced
 * so that it can stand inside msg="...". Returns buf.
 */
const char *log_quote(char *buf, size_t n, const char *s);

#define log_at(lvl, event, ...) do { \
		if ((lvl) <= log_threshold) \
			log_write((lvl), (event), __VA_ARGS__); \
	} while (0)
#define log_error(event, ...) log_at(LOG_LEVEL_ERROR, event, __VA_ARGS__)
#define log_warn(event, ...) log_at(LOG_LEVEL_WARN, event, __VA_ARGS__)
#define log_info(event, ...) log_at(LOG_LEVEL_INFO, event, __VA_ARGS__)
#define log_debug(event, ...) log_at(LOG_LEVEL_DEBUG, event, __VA_ARGS__)

/* Start-up only: log at error level and exit(1). */
void die(const char *event, const char *fmt, ...)
	__attribute__((format(printf, 2, 3), noreturn));

#endif
