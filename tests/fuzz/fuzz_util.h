/*
 * fuzz_util: what the libFuzzer targets share. CHECK aborts with the
 * failed condition, file and line, which libFuzzer reports as a crash
 * (assert() would vanish under NDEBUG). Never include outside tests/fuzz.
 */
#ifndef MERPATI_FUZZ_UTIL_H
#define MERPATI_FUZZ_UTIL_H

#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond)                                                                 \
	do {                                                                        \
		if (!(cond)) {                                                      \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__,        \
				__LINE__, #cond);                                   \
			abort();                                                    \
		}                                                                   \
	} while (0)

#endif
