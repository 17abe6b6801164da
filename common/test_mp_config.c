/*
 * Tests of mp_config: table tests of the value parsers, of config file
 * bodies (good ones with the values they give, bad ones with the error
 * naming file:line and the key), of command lines; every file sample also
 * read through a pipe split at every byte and byte by byte, with CRLF line
 * ends, and as flags; every prefix of every sample either loads or fails
 * leaving the struct untouched. Files are memfds: nothing is written to disk.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "mp_config.h"
#include "mp_error.h"

struct tconf {
	char *listen;      /* owned */
	char *data_dir;    /* owned */
	int64_t offset;
	uint64_t port;
	bool verbose;
	uint64_t max_size;
	uint64_t timeout_ms;
	uint64_t workers;
	bool tls;
};

static const struct mp_config_opt topts[] = {
	{ "listen", MP_CONF_STRING, offsetof(struct tconf, listen), "127.0.0.1:7000",
	  "address to listen on", 0, 0 },
	{ "data_dir", MP_CONF_STRING, offsetof(struct tconf, data_dir), NULL,
	  "where data lives", 0, 0 },
	{ "offset", MP_CONF_INT, offsetof(struct tconf, offset), "-5",
	  "a signed number", (uint64_t)(int64_t)-100, 100 },
	{ "port", MP_CONF_UINT, offsetof(struct tconf, port), "7000",
	  "TCP port", 1, 65535 },
	{ "verbose", MP_CONF_BOOL, offsetof(struct tconf, verbose), "false",
	  "say more", 0, 0 },
	{ "max_size", MP_CONF_SIZE, offsetof(struct tconf, max_size), "50M",
	  "largest message", 1024, 1ull << 40 },
	{ "timeout", MP_CONF_DURATION, offsetof(struct tconf, timeout_ms), "5s",
	  "idle timeout", 0, 0 },
	{ "workers", MP_CONF_UINT, offsetof(struct tconf, workers), "4",
	  "worker threads", 1, 0 },
	{ "tls", MP_CONF_BOOL, offsetof(struct tconf, tls), NULL, "use TLS", 0, 0 },
};
#define NOPTS (sizeof(topts) / sizeof(topts[0]))

#define DEFAULTS "listen=127.0.0.1:7000 data_dir=(null) offset=-5 port=7000 " \
		 "verbose=0 max_size=52428800 timeout=5000 workers=4 tls=0"

static void summary(const struct tconf *c, char *out, size_t outlen)
{
	snprintf(out, outlen,
		 "listen=%s data_dir=%s offset=%" PRId64 " port=%" PRIu64 " verbose=%d "
		 "max_size=%" PRIu64 " timeout=%" PRIu64 " workers=%" PRIu64 " tls=%d",
		 c->listen != NULL ? c->listen : "(null)",
		 c->data_dir != NULL ? c->data_dir : "(null)", c->offset, c->port,
		 (int)c->verbose, c->max_size, c->timeout_ms, c->workers, (int)c->tls);
}

static void conf_init(struct tconf *c)
{
	char *err = NULL;
	memset(c, 0, sizeof(*c));
	int ret = mp_config_defaults(topts, NOPTS, c, &err);
	if (ret != MP_OK)
		fail_msg("defaults: %s", err);
	assert_null(err);
}

/* ------------------------------------------------------------ parsers */

struct num_case {
	const char *in;
	int ret;
	uint64_t want;
};

static const struct num_case uint_cases[] = {
	{ "0", MP_OK, 0 }, { "1", MP_OK, 1 }, { "007", MP_OK, 7 },
	{ "18446744073709551615", MP_OK, UINT64_MAX },
	{ "18446744073709551616", MP_EINVAL, 0 },
	{ "99999999999999999999", MP_EINVAL, 0 },
	{ "", MP_EINVAL, 0 }, { "-1", MP_EINVAL, 0 }, { "+1", MP_EINVAL, 0 },
	{ " 1", MP_EINVAL, 0 }, { "1 ", MP_EINVAL, 0 }, { "1x", MP_EINVAL, 0 },
	{ "0x10", MP_EINVAL, 0 }, { "1.5", MP_EINVAL, 0 },
};

static const struct num_case size_cases[] = {
	{ "0", MP_OK, 0 }, { "123", MP_OK, 123 }, { "10k", MP_OK, 10240 },
	{ "10K", MP_OK, 10240 }, { "50M", MP_OK, 50ull << 20 }, { "50m", MP_OK, 50ull << 20 },
	{ "2G", MP_OK, 2ull << 30 }, { "3T", MP_OK, 3ull << 40 },
	{ "16777215T", MP_OK, 16777215ull << 40 },
	{ "16777216T", MP_EINVAL, 0 }, /* 2^64 */
	{ "18446744073709551615", MP_OK, UINT64_MAX },
	{ "18446744073709551616", MP_EINVAL, 0 },
	{ "", MP_EINVAL, 0 }, { "k", MP_EINVAL, 0 }, { "10kb", MP_EINVAL, 0 },
	{ "10KiB", MP_EINVAL, 0 }, { "10 k", MP_EINVAL, 0 }, { "10P", MP_EINVAL, 0 },
	{ "-1k", MP_EINVAL, 0 }, { "1.5M", MP_EINVAL, 0 },
};

static const struct num_case duration_cases[] = {
	{ "0", MP_OK, 0 }, { "250", MP_OK, 250 }, { "250ms", MP_OK, 250 },
	{ "5s", MP_OK, 5000 }, { "2m", MP_OK, 120000 }, { "1h", MP_OK, 3600000 },
	{ "1d", MP_OK, 86400000 },
	{ "18446744073709551615ms", MP_OK, UINT64_MAX },
	{ "18446744073709552s", MP_EINVAL, 0 }, /* overflows when scaled */
	{ "", MP_EINVAL, 0 }, { "s", MP_EINVAL, 0 }, { "5S", MP_EINVAL, 0 },
	{ "5 s", MP_EINVAL, 0 }, { "5sec", MP_EINVAL, 0 }, { "1h30m", MP_EINVAL, 0 },
	{ "-5s", MP_EINVAL, 0 }, { "5mss", MP_EINVAL, 0 },
};

static void run_num_cases(const char *what, const struct num_case *cases, size_t n,
			  int (*fn)(const char *, uint64_t *))
{
	for (size_t i = 0; i < n; i++) {
		uint64_t v = 0xdeadbeef;
		int ret = fn(cases[i].in, &v);
		if (ret != cases[i].ret)
			fail_msg("%s(\"%s\"): got %d, want %d", what, cases[i].in, ret, cases[i].ret);
		if (ret == MP_OK && v != cases[i].want)
			fail_msg("%s(\"%s\"): got %" PRIu64 ", want %" PRIu64, what,
				 cases[i].in, v, cases[i].want);
		if (ret != MP_OK)
			assert_true(v == 0xdeadbeef); /* untouched on failure */
	}
	uint64_t v;
	assert_int_equal(fn(NULL, &v), MP_EINVAL);
}

static void test_value_parsers(void **state)
{
	run_num_cases("uint", uint_cases, sizeof(uint_cases) / sizeof(uint_cases[0]), mp_parse_uint);
	run_num_cases("size", size_cases, sizeof(size_cases) / sizeof(size_cases[0]), mp_parse_size);
	run_num_cases("duration", duration_cases,
		      sizeof(duration_cases) / sizeof(duration_cases[0]), mp_parse_duration_ms);

	static const struct {
		const char *in;
		int ret, want;
	} bools[] = {
		{ "true", MP_OK, 1 }, { "yes", MP_OK, 1 }, { "on", MP_OK, 1 }, { "1", MP_OK, 1 },
		{ "TRUE", MP_OK, 1 }, { "Yes", MP_OK, 1 },
		{ "false", MP_OK, 0 }, { "no", MP_OK, 0 }, { "off", MP_OK, 0 }, { "0", MP_OK, 0 },
		{ "OFF", MP_OK, 0 },
		{ "", MP_EINVAL, 0 }, { "2", MP_EINVAL, 0 }, { "y", MP_EINVAL, 0 },
		{ "truee", MP_EINVAL, 0 }, { " true", MP_EINVAL, 0 }, { "01", MP_EINVAL, 0 },
	};
	for (size_t i = 0; i < sizeof(bools) / sizeof(bools[0]); i++) {
		int v = 42;
		int ret = mp_parse_bool(bools[i].in, &v);
		if (ret != bools[i].ret)
			fail_msg("bool(\"%s\"): got %d", bools[i].in, ret);
		assert_int_equal(v, ret == MP_OK ? bools[i].want : 42);
	}
	int b;
	assert_int_equal(mp_parse_bool(NULL, &b), MP_EINVAL);
}

/* INT has no public parser: test it through mp_config_set. */
static void test_set(void **state)
{
	static const struct {
		const char *key, *value;
		int ret;
		const char *err_part;
	} cases[] = {
		{ "offset", "-100", MP_OK, NULL },
		{ "offset", "100", MP_OK, NULL },
		{ "offset", "0", MP_OK, NULL },
		{ "offset", "-101", MP_EINVAL, "outside [-100, 100]" },
		{ "offset", "101", MP_EINVAL, "outside [-100, 100]" },
		{ "offset", "-9223372036854775809", MP_EINVAL, "not a valid integer" },
		{ "offset", "--1", MP_EINVAL, "not a valid integer" },
		{ "offset", "-", MP_EINVAL, "not a valid integer" },
		{ "port", "0", MP_EINVAL, "below the minimum 1" },
		{ "port", "65535", MP_OK, NULL },
		{ "port", "65536", MP_EINVAL, "above the maximum 65535" },
		{ "port", "http", MP_EINVAL, "\"http\" is not a valid unsigned integer" },
		{ "max_size", "1023", MP_EINVAL, "below the minimum 1024 bytes" },
		{ "max_size", "1k", MP_OK, NULL },
		{ "max_size", "1T", MP_OK, NULL },
		{ "max_size", "1025G", MP_EINVAL, "above the maximum" },
		{ "workers", "18446744073709551615", MP_OK, NULL }, /* min only */
		{ "workers", "0", MP_EINVAL, "below the minimum" },
		{ "verbose", "maybe", MP_EINVAL, "not a valid boolean" },
		{ "timeout", "5 s", MP_EINVAL, "not a valid duration" },
		{ "nope", "1", MP_EINVAL, "unknown option \"nope\"" },
		{ "Port", "1", MP_EINVAL, "unknown option \"Port\"" },
		{ "port\n", "1", MP_EINVAL, "unknown option \"port\\x0a\"" },
		{ "listen", "", MP_OK, NULL },
		{ "listen", "[::1]:993", MP_OK, NULL },
	};
	struct tconf c;
	conf_init(&c);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *err = (char *)1;
		char before[512], after[512];
		summary(&c, before, sizeof(before));
		int ret = mp_config_set(topts, NOPTS, &c, cases[i].key, cases[i].value, &err);
		if (ret != cases[i].ret)
			fail_msg("set %s=%s: got %d (%s)", cases[i].key, cases[i].value, ret,
				 ret != MP_OK ? err : "");
		summary(&c, after, sizeof(after));
		if (ret == MP_OK) {
			assert_null(err);
		} else {
			assert_non_null(err);
			if (strstr(err, cases[i].err_part) == NULL)
				fail_msg("set %s=%s: \"%s\" lacks \"%s\"", cases[i].key,
					 cases[i].value, err, cases[i].err_part);
			/* A failed set changes nothing. */
			assert_string_equal(before, after);
			free(err);
		}
	}
	assert_string_equal(c.listen, "[::1]:993");
	assert_int_equal(c.offset, 0); /* the last good value */
	assert_int_equal(c.port, 65535);
	assert_true(c.workers == UINT64_MAX);
	mp_config_free(topts, NOPTS, &c);
	assert_null(c.listen);
	mp_config_free(topts, NOPTS, &c); /* safe twice */
}

static void test_defaults(void **state)
{
	struct tconf c;
	char s[512];
	conf_init(&c);
	summary(&c, s, sizeof(s));
	assert_string_equal(s, DEFAULTS);
	mp_config_free(topts, NOPTS, &c);

	/* A bad default is reported and nothing is applied. */
	static const struct mp_config_opt bad[] = {
		{ "a", MP_CONF_UINT, offsetof(struct tconf, port), "12", "", 0, 0 },
		{ "b", MP_CONF_SIZE, offsetof(struct tconf, max_size), "12Q", "", 0, 0 },
	};
	memset(&c, 0, sizeof(c));
	char *err = NULL;
	assert_int_equal(mp_config_defaults(bad, 2, &c, &err), MP_EINVAL);
	assert_non_null(err);
	assert_non_null(strstr(err, "\"b\""));
	assert_int_equal(c.port, 0);
	free(err);
}

/* ------------------------------------------------------------ files */

static int memfd_with(const char *body, size_t len, char *path, size_t pathlen)
{
	int fd = memfd_create("test_mp_config", MFD_CLOEXEC);
	assert_true(fd >= 0);
	size_t off = 0;
	while (off < len) {
		ssize_t w = write(fd, body + off, len - off);
		assert_true(w > 0);
		off += (size_t)w;
	}
	snprintf(path, pathlen, "/proc/self/fd/%d", fd);
	return fd;
}

/* Load body into a fresh defaults struct; returns the code, fills summary
 * or error. */
static int load_body(const char *body, size_t len, char *out, size_t outlen, char *path_r,
		     size_t pathlen)
{
	struct tconf c;
	char path[64], before[512];
	conf_init(&c);
	summary(&c, before, sizeof(before));
	int fd = memfd_with(body, len, path, sizeof(path));
	char *err = NULL;
	int ret = mp_config_load_file(topts, NOPTS, &c, path, &err);
	if (ret == MP_OK) {
		assert_null(err);
		summary(&c, out, outlen);
	} else {
		assert_non_null(err);
		snprintf(out, outlen, "%s", err);
		free(err);
		/* All or nothing: a bad file leaves the struct as it was. */
		char after[512];
		summary(&c, after, sizeof(after));
		assert_string_equal(before, after);
	}
	if (path_r != NULL)
		snprintf(path_r, pathlen, "%s", path);
	mp_config_free(topts, NOPTS, &c);
	close(fd);
	return ret;
}

struct file_case {
	const char *body;
	const char *want;     /* summary, or for an error the text after "path:" */
};

static const struct file_case good_files[] = {
	{ "", DEFAULTS },
	{ "\n\n\n", DEFAULTS },
	{ "# only a comment\n", DEFAULTS },
	{ "   # indented comment\n\t\n", DEFAULTS },
	{ "port = 993\n",
	  "listen=127.0.0.1:7000 data_dir=(null) offset=-5 port=993 verbose=0 "
	  "max_size=52428800 timeout=5000 workers=4 tls=0" },
	{ "port=993",
	  "listen=127.0.0.1:7000 data_dir=(null) offset=-5 port=993 verbose=0 "
	  "max_size=52428800 timeout=5000 workers=4 tls=0" },
	{ "  port\t=\t993  # the IMAPS port\n",
	  "listen=127.0.0.1:7000 data_dir=(null) offset=-5 port=993 verbose=0 "
	  "max_size=52428800 timeout=5000 workers=4 tls=0" },
	{ "listen = 0.0.0.0:143\ndata_dir = /var/lib/merpati\noffset = -7\nport = 143\n"
	  "verbose = yes\nmax_size = 2G\ntimeout = 2m\nworkers = 16\ntls = on\n",
	  "listen=0.0.0.0:143 data_dir=/var/lib/merpati offset=-7 port=143 verbose=1 "
	  "max_size=2147483648 timeout=120000 workers=16 tls=1" },
	{ "data_dir = \"/path with # and spaces\"  # comment\n",
	  "listen=127.0.0.1:7000 data_dir=/path with # and spaces offset=-5 port=7000 "
	  "verbose=0 max_size=52428800 timeout=5000 workers=4 tls=0" },
	{ "data_dir = \"a \\\"quoted\\\" \\\\ word\"\n",
	  "listen=127.0.0.1:7000 data_dir=a \"quoted\" \\ word offset=-5 port=7000 "
	  "verbose=0 max_size=52428800 timeout=5000 workers=4 tls=0" },
	{ "data_dir = \"\"\nlisten =\n",
	  "listen= data_dir= offset=-5 port=7000 verbose=0 max_size=52428800 "
	  "timeout=5000 workers=4 tls=0" },
	{ "data_dir = a b  c \n",
	  "listen=127.0.0.1:7000 data_dir=a b  c offset=-5 port=7000 verbose=0 "
	  "max_size=52428800 timeout=5000 workers=4 tls=0" },
	{ "data_dir = caf\xc3\xa9\n",
	  "listen=127.0.0.1:7000 data_dir=caf\xc3\xa9 offset=-5 port=7000 verbose=0 "
	  "max_size=52428800 timeout=5000 workers=4 tls=0" },
	{ "timeout = 250\nmax_size = 1024\noffset = 100\n",
	  "listen=127.0.0.1:7000 data_dir=(null) offset=100 port=7000 verbose=0 "
	  "max_size=1024 timeout=250 workers=4 tls=0" },
};

struct bad_case {
	const char *body;
	int ret;
	const char *want; /* expected error after "<path>:" */
};

static const struct bad_case bad_files[] = {
	{ "nope = 1\n", MP_EINVAL, "1: unknown option \"nope\"" },
	{ "port = 993\nbogus_key = x\n", MP_EINVAL, "2: unknown option \"bogus_key\"" },
	{ "port = 993\nport = 994\n", MP_EINVAL, "2: option \"port\" given twice (first on line 1)" },
	{ "port = http\n", MP_EINVAL,
	  "1: option \"port\": \"http\" is not a valid unsigned integer (decimal)" },
	{ "\n\nport = 70000\n", MP_EINVAL, "3: option \"port\": \"70000\" is above the maximum 65535" },
	{ "port = 0\n", MP_EINVAL, "1: option \"port\": \"0\" is below the minimum 1" },
	{ "port 993\n", MP_EINVAL, "1: expected \"=\" after \"port\"" },
	{ "port\n", MP_EINVAL, "1: expected \"=\" after \"port\"" },
	{ "= 993\n", MP_EINVAL, "1: expected \"key = value\"" },
	{ "[section]\n", MP_EINVAL, "1: expected \"key = value\"" },
	{ "port = 993 x\n", MP_EINVAL, "1: option \"port\": \"993 x\" is not a valid unsigned integer (decimal)" },
	{ "port = 99 3\n", MP_EINVAL, "1: option \"port\": \"99 3\" is not a valid unsigned integer (decimal)" },
	{ "port =\n", MP_EINVAL, "1: option \"port\": \"\" is not a valid unsigned integer (decimal)" },
	{ "verbose = maybe\n", MP_EINVAL,
	  "1: option \"verbose\": \"maybe\" is not a valid boolean (true/false, yes/no, on/off, 1/0)" },
	{ "max_size = 50MB\n", MP_EINVAL,
	  "1: option \"max_size\": \"50MB\" is not a valid size (bytes, or with k/M/G/T)" },
	{ "timeout = 5 s\n", MP_EINVAL,
	  "1: option \"timeout\": \"5 s\" is not a valid duration (ms, or with ms/s/m/h/d)" },
	{ "offset = -101\n", MP_EINVAL, "1: option \"offset\": \"-101\" is outside [-100, 100]" },
	{ "data_dir = \"unterminated\n", MP_EINVAL, "1: option \"data_dir\": missing closing quote" },
	{ "data_dir = \"a\" b\n", MP_EINVAL, "1: option \"data_dir\": text after the closing quote" },
	{ "data_dir = \"a\\n\"\n", MP_EINVAL, "1: option \"data_dir\": bad escape in quoted value (only \\\" and \\\\)" },
	{ "data_dir = a\"b\n", MP_EINVAL, "1: option \"data_dir\": stray quote in value (quote the whole value)" },
	{ "data_dir = a\x01" "b\n", MP_EINVAL, "1: control character 0x01" },
	{ "data_dir = a\x7f\n", MP_EINVAL, "1: control character 0x7f" },
	{ "data_dir = a\rb\n", MP_EINVAL, "1: control character 0x0d" },
	{ "po\xc3\xa9rt = 1\n", MP_EINVAL, "1: expected \"=\" after \"po\"" },
	{ "p\x1b[2Jort = 1\n", MP_EINVAL, "1: control character 0x1b" },
	/* A valid line before a bad one is not applied (checked in load_body). */
	{ "port = 143\nverbose = yes\nworkers = 0\n", MP_EINVAL,
	  "3: option \"workers\": \"0\" is below the minimum 1" },
};

static void check_bad(const char *body, size_t len, const struct bad_case *c)
{
	char out[512], path[64], want[600];
	int ret = load_body(body, len, out, sizeof(out), path, sizeof(path));
	if (ret != c->ret)
		fail_msg("\"%s\": got %d (%s), want %d", c->body, ret, out, c->ret);
	snprintf(want, sizeof(want), "%s:%s", path, c->want);
	if (strcmp(out, want) != 0)
		fail_msg("got  \"%s\"\nwant \"%s\"", out, want);
}

static void test_file_table(void **state)
{
	for (size_t i = 0; i < sizeof(good_files) / sizeof(good_files[0]); i++) {
		char out[512];
		int ret = load_body(good_files[i].body, strlen(good_files[i].body), out,
				    sizeof(out), NULL, 0);
		if (ret != MP_OK)
			fail_msg("\"%s\": %s", good_files[i].body, out);
		assert_string_equal(out, good_files[i].want);
	}
	for (size_t i = 0; i < sizeof(bad_files) / sizeof(bad_files[0]); i++)
		check_bad(bad_files[i].body, strlen(bad_files[i].body), &bad_files[i]);

	/* A NUL byte in the file is refused, not read as the end. */
	static const char nul_body[] = "port = 99\0" "3\n";
	static const struct bad_case nul_case = { nul_body, MP_EINVAL, "1: control character 0x00" };
	check_bad(nul_body, sizeof(nul_body) - 1, &nul_case);
}

/* Every file sample with CRLF line ends gives the same result. */
static void test_file_crlf(void **state)
{
	for (size_t i = 0; i < sizeof(good_files) / sizeof(good_files[0]); i++) {
		const char *b = good_files[i].body;
		char crlf[1024], out[512];
		size_t pos = 0;
		for (size_t j = 0; b[j] != '\0'; j++) {
			if (b[j] == '\n')
				crlf[pos++] = '\r';
			crlf[pos++] = b[j];
		}
		int ret = load_body(crlf, pos, out, sizeof(out), NULL, 0);
		if (ret != MP_OK)
			fail_msg("crlf \"%s\": %s", b, out);
		assert_string_equal(out, good_files[i].want);
	}
}

/* Every prefix of every sample loads or fails cleanly (load_body checks
 * that a failure leaves the struct unchanged); a prefix cut at a line end
 * of a good sample always loads. */
static void test_file_prefixes(void **state)
{
	for (size_t i = 0; i < sizeof(good_files) / sizeof(good_files[0]); i++) {
		const char *b = good_files[i].body;
		size_t len = strlen(b);
		for (size_t k = 0; k <= len; k++) {
			char out[512];
			int ret = load_body(b, k, out, sizeof(out), NULL, 0);
			if (ret != MP_OK)
				assert_int_equal(ret, MP_EINVAL);
			if (k == len || (k > 0 && b[k - 1] == '\n'))
				assert_int_equal(ret, MP_OK);
		}
	}
	for (size_t i = 0; i < sizeof(bad_files) / sizeof(bad_files[0]); i++) {
		const char *b = bad_files[i].body;
		size_t len = strlen(b);
		for (size_t k = 0; k <= len; k++) {
			char out[512];
			int ret = load_body(b, k, out, sizeof(out), NULL, 0);
			assert_true(ret == MP_OK || ret == MP_EINVAL);
		}
	}
}

/* ------------------------------------------------------------ pipe splits */

struct pipe_writer {
	int fd;          /* owned: write end, closed when done */
	const char *body; /* borrowed */
	size_t len;
	size_t split;    /* first chunk size; 0 = one byte at a time */
};

/* Wait (bounded by count and time) until the reader has drained the pipe,
 * so the next write arrives in a separate read(2). */
static void pipe_wait_drained(int fd)
{
	struct timespec start, now;
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (int i = 0; i < 1000000; i++) {
		int avail = 0;
		if (ioctl(fd, FIONREAD, &avail) != 0 || avail == 0)
			return;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec - start.tv_sec > 5)
			return;
		sched_yield();
	}
}

static void *pipe_writer_main(void *arg)
{
	struct pipe_writer *w = arg;
	size_t off = 0;
	while (off < w->len) {
		size_t n = w->split == 0 ? 1 : (off == 0 ? w->split : w->len - off);
		if (n > w->len - off)
			n = w->len - off;
		ssize_t r = write(w->fd, w->body + off, n);
		if (r <= 0)
			break; /* reader gone: the test will see the error */
		off += (size_t)r;
		pipe_wait_drained(w->fd);
	}
	close(w->fd);
	return NULL;
}

static int load_via_pipe(const char *body, size_t len, size_t split, char *out, size_t outlen)
{
	int p[2];
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	struct pipe_writer w = { p[1], body, len, split };
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, pipe_writer_main, &w), 0);

	struct tconf c;
	char path[64];
	conf_init(&c);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", p[0]);
	char *err = NULL;
	int ret = mp_config_load_file(topts, NOPTS, &c, path, &err);
	if (ret == MP_OK) {
		summary(&c, out, outlen);
	} else {
		/* Replace the pipe's path by "F" so callers can compare. */
		const char *colon = err != NULL ? strchr(err + strlen("/proc/self/fd/"), ':') : NULL;
		snprintf(out, outlen, "F%s", colon != NULL ? colon : "?");
		free(err);
	}
	/* Drain whatever the reader left, so the writer can finish. */
	char sink[256];
	while (read(p[0], sink, sizeof(sink)) > 0)
		;
	assert_int_equal(pthread_join(t, NULL), 0);
	close(p[0]);
	mp_config_free(topts, NOPTS, &c);
	return ret;
}

/* Every sample read through a pipe, split at every byte and byte by byte:
 * the reader must reassemble partial reads exactly. */
static void test_file_pipe_splits(void **state)
{
	for (size_t i = 0; i < sizeof(good_files) / sizeof(good_files[0]); i++) {
		const char *b = good_files[i].body;
		size_t len = strlen(b);
		for (size_t k = 0; k <= len; k++) {
			char out[512];
			int ret = load_via_pipe(b, len, k, out, sizeof(out));
			if (ret != MP_OK)
				fail_msg("\"%s\" split %zu: %s", b, k, out);
			assert_string_equal(out, good_files[i].want);
		}
	}
	for (size_t i = 0; i < sizeof(bad_files) / sizeof(bad_files[0]); i++) {
		const char *b = bad_files[i].body;
		size_t len = strlen(b);
		char want[600];
		snprintf(want, sizeof(want), "F:%s", bad_files[i].want);
		for (size_t k = 0; k <= len; k += (k == 0 ? 1 : 3)) {
			char out[512];
			int ret = load_via_pipe(b, len, k, out, sizeof(out));
			assert_int_equal(ret, bad_files[i].ret);
			assert_string_equal(out, want);
		}
	}
}

static void test_file_errors(void **state)
{
	struct tconf c;
	char *err = NULL;
	conf_init(&c);

	assert_int_equal(mp_config_load_file(topts, NOPTS, &c, "/nonexistent/merpati.conf", &err),
			 MP_ENOENT);
	assert_non_null(err);
	assert_non_null(strstr(err, "/nonexistent/merpati.conf"));
	free(err);

	assert_int_equal(mp_config_load_file(topts, NOPTS, &c, "/", &err), MP_EIO);
	assert_non_null(err);
	free(err);

	/* Over the size limit (1 MiB): refused before parsing. */
	size_t big = 1024 * 1024 + 1;
	char *body = malloc(big);
	assert_non_null(body);
	memset(body, '#', big);
	char path[64];
	int fd = memfd_with(body, big, path, sizeof(path));
	assert_int_equal(mp_config_load_file(topts, NOPTS, &c, path, &err), MP_ETOOBIG);
	assert_non_null(strstr(err, "larger than"));
	free(err);
	close(fd);
	/* Exactly 1 MiB of comment is fine. */
	fd = memfd_with(body, big - 1, path, sizeof(path));
	assert_int_equal(mp_config_load_file(topts, NOPTS, &c, path, &err), MP_OK);
	close(fd);
	free(body);

	mp_config_free(topts, NOPTS, &c);
}

/* ------------------------------------------------------------ flags */

struct args_case {
	const char *argv[10];
	int ret;
	const char *want;        /* summary, or error text */
	const char *rest;        /* expected rest indexes, "1,3" */
};

static const struct args_case args_cases[] = {
	{ { "prog", NULL }, MP_OK, DEFAULTS, "" },
	{ { "prog", "--port=993", NULL }, MP_OK,
	  "listen=127.0.0.1:7000 data_dir=(null) offset=-5 port=993 verbose=0 "
	  "max_size=52428800 timeout=5000 workers=4 tls=0", "" },
	{ { "prog", "--port", "993", "--listen", "[::]:143", NULL }, MP_OK,
	  "listen=[::]:143 data_dir=(null) offset=-5 port=993 verbose=0 "
	  "max_size=52428800 timeout=5000 workers=4 tls=0", "" },
	{ { "prog", "--verbose", "file1", NULL }, MP_OK,
	  "listen=127.0.0.1:7000 data_dir=(null) offset=-5 port=7000 verbose=1 "
	  "max_size=52428800 timeout=5000 workers=4 tls=0", "2" },
	{ { "prog", "--verbose", "no", "--tls", NULL }, MP_OK,
	  "listen=127.0.0.1:7000 data_dir=(null) offset=-5 port=7000 verbose=0 "
	  "max_size=52428800 timeout=5000 workers=4 tls=1", "" },
	{ { "prog", "a", "--port=1", "b", "--", "--port=2", "-x", NULL }, MP_OK,
	  "listen=127.0.0.1:7000 data_dir=(null) offset=-5 port=1 verbose=0 "
	  "max_size=52428800 timeout=5000 workers=4 tls=0", "1,3,5,6" },
	{ { "prog", "--port=1", "--port=2", NULL }, MP_OK,
	  "listen=127.0.0.1:7000 data_dir=(null) offset=-5 port=2 verbose=0 "
	  "max_size=52428800 timeout=5000 workers=4 tls=0", "" },
	{ { "prog", "--offset=-3", "--data_dir=", NULL }, MP_OK,
	  "listen=127.0.0.1:7000 data_dir= offset=-3 port=7000 verbose=0 "
	  "max_size=52428800 timeout=5000 workers=4 tls=0", "" },
	{ { "prog", "--nope=1", NULL }, MP_EINVAL, "command line: unknown option \"nope\"", NULL },
	{ { "prog", "--port", NULL }, MP_EINVAL, "command line: option \"port\" needs a value", NULL },
	{ { "prog", "--port=x", NULL }, MP_EINVAL,
	  "command line: option \"port\": \"x\" is not a valid unsigned integer (decimal)", NULL },
	{ { "prog", "--port=1", "--workers=0", NULL }, MP_EINVAL,
	  "command line: option \"workers\": \"0\" is below the minimum 1", NULL },
	{ { "prog", "--config", NULL }, MP_EINVAL, "command line: option \"config\" needs a value",
	  NULL },
};

static void test_args_table(void **state)
{
	for (size_t i = 0; i < sizeof(args_cases) / sizeof(args_cases[0]); i++) {
		const struct args_case *ac = &args_cases[i];
		int argc = 0;
		char *argv[12];
		while (ac->argv[argc] != NULL) {
			argv[argc] = (char *)ac->argv[argc];
			argc++;
		}
		argv[argc] = NULL;
		struct tconf c;
		char before[512], out[512];
		conf_init(&c);
		summary(&c, before, sizeof(before));
		int *rest = (int *)1, nrest = -1;
		char *err = NULL;
		int ret = mp_config_parse_args(topts, NOPTS, &c, argc, argv, &rest, &nrest, &err);
		if (ret != ac->ret)
			fail_msg("case %zu: got %d (%s)", i, ret, err != NULL ? err : "");
		if (ret == MP_OK) {
			assert_null(err);
			summary(&c, out, sizeof(out));
			assert_string_equal(out, ac->want);
			char r[64] = "";
			size_t pos = 0;
			for (int j = 0; j < nrest; j++)
				pos += (size_t)snprintf(r + pos, sizeof(r) - pos, "%s%d", j ? "," : "", rest[j]);
			assert_string_equal(r, ac->rest);
			free(rest);
		} else {
			assert_non_null(err);
			assert_string_equal(err, ac->want);
			free(err);
			assert_null(rest);
			assert_int_equal(nrest, 0);
			summary(&c, out, sizeof(out));
			assert_string_equal(out, before); /* nothing applied */
		}
		mp_config_free(topts, NOPTS, &c);
	}

	/* Without rest_r, a positional argument is an error. */
	struct tconf c;
	conf_init(&c);
	char *argv[] = { "prog", "stray", NULL };
	char *err = NULL;
	assert_int_equal(mp_config_parse_args(topts, NOPTS, &c, 2, argv, NULL, NULL, &err), MP_EINVAL);
	assert_string_equal(err, "command line: unexpected argument \"stray\"");
	free(err);
	mp_config_free(topts, NOPTS, &c);
}

/* Each good file sample given as flags gives the same struct; "--config"
 * loads the file first wherever it appears, then the flags win. */
static void test_args_match_file(void **state)
{
	static const char *const flags[] = {
		"--listen=0.0.0.0:143", "--data_dir", "/var/lib/merpati", "--offset=-7",
		"--port", "143", "--verbose=yes", "--max_size=2G", "--timeout", "2m",
		"--workers=16", "--tls",
	};
	char *argv[16];
	int argc = 0;
	argv[argc++] = "prog";
	for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
		argv[argc++] = (char *)flags[i];
	argv[argc] = NULL;

	struct tconf c;
	char out[512];
	conf_init(&c);
	char *err = NULL;
	int *rest = NULL, nrest = 0;
	assert_int_equal(mp_config_parse_args(topts, NOPTS, &c, argc, argv, &rest, &nrest, &err), MP_OK);
	summary(&c, out, sizeof(out));
	assert_string_equal(out, good_files[7].want);
	assert_int_equal(nrest, 0);
	free(rest);
	mp_config_free(topts, NOPTS, &c);

	/* File + flags: the flag after and the flag before --config both win. */
	char path[64];
	const char *body = "port = 1\nworkers = 2\ntimeout = 3s\n";
	int fd = memfd_with(body, strlen(body), path, sizeof(path));
	char *argv2[] = { "prog", "--workers=9", "--config", path, "--port=5", NULL };
	conf_init(&c);
	assert_int_equal(mp_config_parse_args(topts, NOPTS, &c, 5, argv2, &rest, &nrest, &err), MP_OK);
	assert_int_equal(c.port, 5);
	assert_int_equal(c.workers, 9);
	assert_int_equal(c.timeout_ms, 3000);
	free(rest);
	mp_config_free(topts, NOPTS, &c);

	/* A bad file: its error, and no flag applied either. */
	char *argv3[] = { "prog", "--port=5", "--config=/nonexistent/x.conf", NULL };
	conf_init(&c);
	assert_int_equal(mp_config_parse_args(topts, NOPTS, &c, 3, argv3, &rest, &nrest, &err),
			 MP_ENOENT);
	assert_non_null(strstr(err, "/nonexistent/x.conf"));
	free(err);
	assert_int_equal(c.port, 7000);
	mp_config_free(topts, NOPTS, &c);

	char *argv4[] = { "prog", "--config", path, "--config", path, NULL };
	conf_init(&c);
	assert_int_equal(mp_config_parse_args(topts, NOPTS, &c, 5, argv4, &rest, &nrest, &err),
			 MP_EINVAL);
	assert_non_null(strstr(err, "twice"));
	free(err);
	mp_config_free(topts, NOPTS, &c);
	close(fd);
}

static void test_help(void **state)
{
	fflush(stdout);
	int saved = dup(STDOUT_FILENO);
	assert_true(saved >= 0);
	int fd = memfd_create("help", MFD_CLOEXEC);
	assert_true(fd >= 0);
	assert_true(dup2(fd, STDOUT_FILENO) >= 0);

	struct tconf c;
	conf_init(&c);
	/* --help wins even over a bad flag before it. */
	char *argv[] = { "merpati-node", "--nope", "--help", NULL };
	char *err = NULL;
	int *rest = NULL, nrest = 0;
	int ret = mp_config_parse_args(topts, NOPTS, &c, 3, argv, &rest, &nrest, &err);
	fflush(stdout);
	assert_true(dup2(saved, STDOUT_FILENO) >= 0);
	close(saved);
	assert_int_equal(ret, 1);
	assert_null(err);
	assert_null(rest);

	char text[4096];
	ssize_t n = pread(fd, text, sizeof(text) - 1, 0);
	close(fd);
	assert_true(n > 0);
	text[n] = '\0';
	assert_non_null(strstr(text, "usage: merpati-node"));
	assert_non_null(strstr(text, "--port=UINT"));
	assert_non_null(strstr(text, "--max_size=SIZE"));
	assert_non_null(strstr(text, "TCP port [1..65535] (default: 7000)"));
	assert_non_null(strstr(text, "a signed number [-100..100] (default: -5)"));
	assert_non_null(strstr(text, "worker threads [1..] (default: 4)"));
	assert_non_null(strstr(text, "--config FILE"));
	mp_config_free(topts, NOPTS, &c);

	/* "--help" after "--" is an argument like any other. */
	char *argv2[] = { "prog", "--", "--help", NULL };
	conf_init(&c);
	assert_int_equal(mp_config_parse_args(topts, NOPTS, &c, 3, argv2, &rest, &nrest, &err), MP_OK);
	assert_int_equal(nrest, 1);
	assert_int_equal(rest[0], 2);
	free(rest);
	mp_config_free(topts, NOPTS, &c);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_value_parsers),
		cmocka_unit_test(test_set),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_file_table),
		cmocka_unit_test(test_file_crlf),
		cmocka_unit_test(test_file_prefixes),
		cmocka_unit_test(test_file_pipe_splits),
		cmocka_unit_test(test_file_errors),
		cmocka_unit_test(test_args_table),
		cmocka_unit_test(test_args_match_file),
		cmocka_unit_test(test_help),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
