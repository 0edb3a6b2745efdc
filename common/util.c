#include "util.h"

#include <dlfcn.h>
#include <errno.h>
#include <gnu/libc-version.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

void util_malloc_name(char *out, size_t n)
{
	/* Looked up, not linked: the daemons that do not link jemalloc stay free of it. */
	int (*mallctl)(const char *, void *, size_t *, void *, size_t);
	const char *version = NULL;
	size_t len = sizeof(version);

	*(void **)&mallctl = dlsym(RTLD_DEFAULT, "mallctl");
	if (mallctl != NULL && mallctl("version", &version, &len, NULL, 0) == 0 && version != NULL)
		snprintf(out, n, "jemalloc %s", version);
	else if (dlsym(RTLD_DEFAULT, "__asan_init") != NULL)
		snprintf(out, n, "asan");
	else
		snprintf(out, n, "glibc %s", gnu_get_libc_version());
}

int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* 1..FS_ID_MAX characters, each alphanumeric or in extra. */
static bool valid_id(const char *s, const char *extra)
{
	size_t i;

	if (s == NULL)
		return false;
	for (i = 0; s[i] != '\0'; i++) {
		char c = s[i];

		if (i >= FS_ID_MAX)
			return false;
		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
			continue;
		if (strchr(extra, c) == NULL)
			return false;
	}
	return i >= 1;
}

bool valid_request_id(const char *s)
{
	return valid_id(s, "_-");
}

bool valid_sku(const char *s)
{
	return valid_id(s, "._:-");
}

bool valid_user_id(const char *s)
{
	return valid_id(s, "._:@-");
}

static void random_bytes(unsigned char *buf, size_t len)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = getrandom(buf + got, len - got, 0);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		got += (size_t)n;
	}
	if (got < len) {
		/* getrandom cannot really fail here; keep ids unique-ish anyway. */
		struct timespec ts;
		uint64_t x;

		clock_gettime(CLOCK_MONOTONIC, &ts);
		x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ (uint64_t)getpid() << 48;
		for (; got < len; got++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			buf[got] = (unsigned char)x;
		}
	}
}

size_t fmt_i64(char out[21], int64_t v)
{
	char tmp[20];
	uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
	size_t n = 0, len = 0;

	do {
		tmp[n++] = (char)('0' + u % 10);
		u /= 10;
	} while (u != 0);
	if (v < 0)
		out[len++] = '-';
	while (n > 0)
		out[len++] = tmp[--n];
	out[len] = '\0';
	return len;
}

/*
 * ULID layout: 48-bit ms timestamp (10 chars) then 80 random bits (16 chars),
 * Crockford base32, so ids sort by creation time.
 */
void request_id_new(char out[27])
{
	static const char alphabet[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
	unsigned char bytes[16];
	uint64_t t = (uint64_t)now_ms() & 0xFFFFFFFFFFFFULL;
	int bit, i;

	for (i = 0; i < 6; i++)
		bytes[i] = (unsigned char)(t >> (8 * (5 - i)));
	random_bytes(bytes + 6, 10);
	/* 128 bits -> 26 chars of 5 bits; the first char holds the top 3 bits. */
	for (i = 0; i < 26; i++) {
		unsigned v = 0;
		int first = i == 0 ? 0 : 3 + (i - 1) * 5;
		int width = i == 0 ? 3 : 5;

		for (bit = 0; bit < width; bit++) {
			int b = first + bit;

			v = (v << 1) | ((bytes[b / 8] >> (7 - b % 8)) & 1u);
		}
		out[i] = alphabet[v];
	}
	out[26] = '\0';
}

/* Write text plus a newline to path through path.tmp + rename, so a reader
 * polling for the file never sees it half written. */
int util_write_atomic(const char *path, const char *text, char *err, size_t errlen)
{
	char tmp[4096];
	FILE *f;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
		snprintf(err, errlen, "path too long");
		return -1;
	}
	f = fopen(tmp, "w");
	if (f == NULL) {
		snprintf(err, errlen, "open of the temporary file: %s", strerror(errno));
		return -1;
	}
	if (fprintf(f, "%s\n", text) < 0 || fflush(f) != 0 || fsync(fileno(f)) != 0) {
		snprintf(err, errlen, "write of the temporary file: %s", strerror(errno));
		fclose(f);
		unlink(tmp);
		return -1;
	}
	if (fclose(f) != 0) {
		snprintf(err, errlen, "close of the temporary file: %s", strerror(errno));
		unlink(tmp);
		return -1;
	}
	if (rename(tmp, path) != 0) {
		snprintf(err, errlen, "rename of the temporary file: %s", strerror(errno));
		unlink(tmp);
		return -1;
	}
	return 0;
}

int util_listen_tcp(const char *host, long port, bool reuseport, char *err, size_t errlen)
{
	struct addrinfo hints, *ai = NULL;
	char service[16];
	int fd, rc, on = 1;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	snprintf(service, sizeof(service), "%ld", port);
	rc = getaddrinfo(host, service, &hints, &ai);
	if (rc != 0) {
		snprintf(err, errlen, "%s", gai_strerror(rc));
		return -1;
	}
	fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) < 0 ||
	    (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) < 0) ||
	    bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, SOMAXCONN) < 0) {
		snprintf(err, errlen, "%s", strerror(errno));
		if (fd >= 0)
			close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	return fd;
}

int util_bound_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return -1;
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return -1;
}
