/*
 * Invariant checks shared by the fuzz targets. A broken invariant aborts,
 * so that libFuzzer keeps the input as a crash, unless its id is listed in
 * the environment variable FS_FUZZ_KNOWN (comma-separated): a finding that
 * is reported and not yet fixed, which a long run should fuzz past rather
 * than stop at. tests/fuzz/README.md lists the ids.
 */
#ifndef FLASHSALE_TESTS_FUZZ_KNOWN_H
#define FLASHSALE_TESTS_FUZZ_KNOWN_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* True if id is in FS_FUZZ_KNOWN. */
static inline bool fuzz_known(const char *id)
{
	const char *list = getenv("FS_FUZZ_KNOWN");
	size_t n = strlen(id);

	while (list != NULL && *list != '\0') {
		const char *comma = strchr(list, ',');
		size_t len = comma != NULL ? (size_t)(comma - list) : strlen(list);

		if (len == n && strncmp(list, id, n) == 0)
			return true;
		list = comma != NULL ? comma + 1 : NULL;
	}
	return false;
}

/* Invariant id broke (detail says how): abort, unless the finding is known. */
static inline void fuzz_fail(const char *target, const char *id, const char *detail)
{
	if (fuzz_known(id))
		return;
	fprintf(stderr, "%s: invariant %s broken: %s\n", target, id, detail);
	abort();
}

#endif
