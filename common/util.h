/* Small things every daemon needs: clocks, identifiers, validation. */
#ifndef FLASHSALE_COMMON_UTIL_H
#define FLASHSALE_COMMON_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FS_ID_MAX 64   /* longest request_id, sku or user_id */

/* A result the caller must look at (0/-1, bool, or a pointer that may be NULL). */
#define FS_MUSTCHECK __attribute__((warn_unused_result))

/* Wall clock in ms since the epoch (informational only: deadlines use Redis TIME). */
int64_t now_ms(void);
/* The same in microseconds. */
int64_t now_us(void);
/* Monotonic clock in microseconds, for latencies and timeouts. */
int64_t mono_us(void);

/* 1..64 chars of [A-Za-z0-9_-] */
bool valid_request_id(const char *s);
/* 1..64 chars of [A-Za-z0-9._:-] */
bool valid_sku(const char *s);
/* 1..64 chars of [A-Za-z0-9._:@-] */
bool valid_user_id(const char *s);

/*
 * v in decimal at out, NUL-terminated (at most 20 characters and the NUL);
 * returns its length. For the per-request hot paths, where snprintf's
 * format parsing cost more than the number.
 */
size_t fmt_i64(char out[21], int64_t v);

/* Write a new random request id (26 chars, Crockford base32, time-ordered) + NUL. */
void request_id_new(char out[27]);

/*
 * The malloc this process runs on, as found at run time (the link or an
 * LD_PRELOAD): "jemalloc 5.3.0-0-g54eaed1d8b56b1aa528be3bdd1877e59c56fa90c",
 * "asan" or "glibc 2.36". For --version and the start-up log line.
 */
void util_malloc_name(char *out, size_t n);

/*
 * Replace path with text plus a newline, through path.tmp, fsync and rename,
 * so that a reader polling for the file (a port or a bootstrap list) never
 * sees it half written. 0, or -1 with the reason in err.
 */
int util_write_atomic(const char *path, const char *text, char *err, size_t errlen)
	FS_MUSTCHECK;

/*
 * A non-blocking, close-on-exec TCP socket listening on host:port (port 0:
 * the kernel picks one; see util_bound_port). reuseport: SO_REUSEPORT, so
 * that several event loops each listen on the same port and the kernel
 * spreads new connections over them by address (one shared socket would
 * let whichever loop wakes first take a whole burst); a port another
 * program holds without it still fails the bind. The fd, or -1 with the
 * reason in err.
 */
int util_listen_tcp(const char *host, long port, bool reuseport, char *err, size_t errlen)
	FS_MUSTCHECK;

/* The local port of a bound socket, or -1. */
int util_bound_port(int fd);

#endif
