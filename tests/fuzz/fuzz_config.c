/*
 * fuzz_config: arbitrary bytes as a config file body, through the real
 * mp_config_load_file (the body is written to a memfd and loaded by its
 * /proc/self/fd path), plus the value parsers against strtoull.
 *
 * Checks: success or a printable one-line error naming the file and line; a
 * failed load leaves the struct exactly at its defaults; every loaded value
 * is within its option's bounds; numbers agree with a reference parse.
 * Any disagreement aborts, which libFuzzer reports as a crash.
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz_util.h"
#include "mp_config.h"
#include "mp_error.h"

struct fconf {
	char *listen;      /* owned */
	char *data_dir;    /* owned */
	int64_t offset;
	uint64_t port;
	bool verbose;
	uint64_t max_size;
	uint64_t timeout_ms;
	uint64_t workers;
};

static const struct mp_config_opt fopts[] = {
	{ "listen", MP_CONF_STRING, offsetof(struct fconf, listen), "127.0.0.1:7000", "", 0, 0 },
	{ "data_dir", MP_CONF_STRING, offsetof(struct fconf, data_dir), NULL, "", 0, 0 },
	{ "offset", MP_CONF_INT, offsetof(struct fconf, offset), "-5", "",
	  (uint64_t)(int64_t)-100, 100 },
	{ "port", MP_CONF_UINT, offsetof(struct fconf, port), "7000", "", 1, 65535 },
	{ "verbose", MP_CONF_BOOL, offsetof(struct fconf, verbose), "false", "", 0, 0 },
	{ "max_size", MP_CONF_SIZE, offsetof(struct fconf, max_size), "50M", "", 1024, 1ull << 40 },
	{ "timeout", MP_CONF_DURATION, offsetof(struct fconf, timeout_ms), "5s", "", 0, 0 },
	{ "workers", MP_CONF_UINT, offsetof(struct fconf, workers), "4", "", 1, 0 },
};
#define NOPTS (sizeof(fopts) / sizeof(fopts[0]))

static int memfd = -1;
static char memfd_path[64];

static void conf_defaults(struct fconf *c)
{
	char *err = NULL;
	memset(c, 0, sizeof(*c));
	CHECK(mp_config_defaults(fopts, NOPTS, c, &err) == MP_OK);
}

static int conf_equal(const struct fconf *a, const struct fconf *b)
{
	return strcmp(a->listen != NULL ? a->listen : "-", b->listen != NULL ? b->listen : "-") == 0 &&
	       (a->data_dir == NULL) == (b->data_dir == NULL) &&
	       (a->data_dir == NULL || strcmp(a->data_dir, b->data_dir) == 0) &&
	       a->offset == b->offset && a->port == b->port && a->verbose == b->verbose &&
	       a->max_size == b->max_size && a->timeout_ms == b->timeout_ms &&
	       a->workers == b->workers;
}

/* The value parsers agree with strtoull on plain decimal numbers. */
static void check_value_parsers(const uint8_t *data, size_t size)
{
	char s[64];
	size_t n = size < sizeof(s) - 1 ? size : sizeof(s) - 1;
	memcpy(s, data, n);
	s[n] = '\0';
	n = strlen(s); /* the parsers see a C string: up to the first NUL */

	int all_digits = n > 0;
	for (size_t i = 0; i < n; i++)
		all_digits &= s[i] >= '0' && s[i] <= '9';
	uint64_t ref = 0;
	int ref_ok = 0;
	if (all_digits) {
		errno = 0;
		ref = strtoull(s, NULL, 10);
		ref_ok = errno == 0;
	}

	uint64_t v = 0;
	int ret = mp_parse_uint(s, &v);
	CHECK((ret == MP_OK) == ref_ok);
	if (ret == MP_OK)
		CHECK(v == ref);
	/* A bare number is bytes and milliseconds. */
	ret = mp_parse_size(s, &v);
	if (ref_ok)
		CHECK(ret == MP_OK && v == ref);
	ret = mp_parse_duration_ms(s, &v);
	if (ref_ok)
		CHECK(ret == MP_OK && v == ref);
	int b = -1;
	ret = mp_parse_bool(s, &b);
	CHECK(ret != MP_OK || b == 0 || b == 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (memfd < 0) {
		memfd = memfd_create("fuzz_config", MFD_CLOEXEC);
		CHECK(memfd >= 0);
		snprintf(memfd_path, sizeof(memfd_path), "/proc/self/fd/%d", memfd);
	}
	CHECK(ftruncate(memfd, 0) == 0);
	size_t off = 0;
	while (off < size) {
		ssize_t w = pwrite(memfd, data + off, size - off, (off_t)off);
		CHECK(w > 0);
		off += (size_t)w;
	}

	struct fconf c, defaults;
	conf_defaults(&c);
	conf_defaults(&defaults);
	char *err = NULL;
	int ret = mp_config_load_file(fopts, NOPTS, &c, memfd_path, &err);
	if (ret == MP_OK) {
		CHECK(err == NULL);
		CHECK(c.port >= 1 && c.port <= 65535);
		CHECK(c.offset >= -100 && c.offset <= 100);
		CHECK(c.max_size >= 1024 && c.max_size <= (1ull << 40));
		CHECK(c.workers >= 1);
		CHECK(c.listen != NULL);
	} else {
		CHECK(ret == MP_EINVAL || ret == MP_ETOOBIG);
		/* The message names the file and a line, and is one line. */
		CHECK(err != NULL);
		CHECK(strncmp(err, memfd_path, strlen(memfd_path)) == 0);
		CHECK(err[strlen(memfd_path)] == ':');
		if (ret == MP_EINVAL)
			CHECK(err[strlen(memfd_path) + 1] >= '1' && err[strlen(memfd_path) + 1] <= '9');
		/* Peer bytes are quoted: the message is printable ASCII. */
		for (const char *p = err; *p != '\0'; p++)
			CHECK(*p >= 0x20 && *p < 0x7f);
		/* All or nothing. */
		CHECK(conf_equal(&c, &defaults));
		free(err);
	}
	mp_config_free(fopts, NOPTS, &c);
	mp_config_free(fopts, NOPTS, &defaults);

	check_value_parsers(data, size);
	return 0;
}
