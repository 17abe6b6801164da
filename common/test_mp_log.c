/*
 * Tests of mp_log (and of mp_error, whose names end up in log lines):
 * stderr is pointed at a memfd with dup2 and the lines read back, checking
 * the format, the level filter, the prefix, that control bytes never split
 * a line, that long lines are cut, and that lines from several threads never
 * interleave; mp_log_quote is checked on a table and at every output size.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "mp_error.h"
#include "mp_log.h"

/* ------------------------------------------------------------ capture */

static int saved_stderr = -1;
static int capture_fd = -1;

static void capture_start(void)
{
	capture_fd = memfd_create("test_mp_log", MFD_CLOEXEC);
	assert_true(capture_fd >= 0);
	saved_stderr = dup(STDERR_FILENO);
	assert_true(saved_stderr >= 0);
	assert_true(dup2(capture_fd, STDERR_FILENO) >= 0);
}

/* Restores stderr and returns what was written (caller frees). */
static char *capture_end(size_t *len_r)
{
	assert_true(dup2(saved_stderr, STDERR_FILENO) >= 0);
	close(saved_stderr);
	off_t size = lseek(capture_fd, 0, SEEK_END);
	assert_true(size >= 0);
	char *text = malloc((size_t)size + 1);
	assert_non_null(text);
	ssize_t n = pread(capture_fd, text, (size_t)size, 0);
	assert_int_equal(n, size);
	text[size] = '\0';
	close(capture_fd);
	if (len_r != NULL)
		*len_r = (size_t)size;
	return text;
}

static void assert_matches(const char *text, const char *pattern)
{
	regex_t re;
	assert_int_equal(regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB), 0);
	int r = regexec(&re, text, 0, NULL, 0);
	regfree(&re);
	if (r != 0)
		fail_msg("\"%s\" does not match /%s/", text, pattern);
}

#define TS "ts=[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z"

/* ------------------------------------------------------------ lines */

static void test_format(void **state)
{
	mp_log_set_level(MP_LOG_DEBUG);
	mp_log_set_prefix(NULL);
	capture_start();
	time_t before = time(NULL);
	mp_log_info("store_open", "path=%s cfs=%d", "/data", 3);
	mp_log_debug("tick", "%s", "");
	mp_log_warn("slow", "ms=%u", 250u);
	mp_log_error("boom", "err=%s", mp_strerror(MP_EIO));
	time_t after = time(NULL);
	char *text = capture_end(NULL);

	assert_matches(text, "^" TS " level=info event=store_open path=/data cfs=3\n"
			     TS " level=debug event=tick\n"
			     TS " level=warn event=slow ms=250\n"
			     TS " level=error event=boom err=EIO\n$");

	/* The timestamp is now, in UTC. */
	struct tm tm;
	memset(&tm, 0, sizeof(tm));
	assert_non_null(strptime(text, "ts=%Y-%m-%dT%H:%M:%S", &tm));
	time_t t = timegm(&tm);
	assert_true(t >= before - 1 && t <= after + 1);
	free(text);
}

static void test_level_filter(void **state)
{
	mp_log_set_prefix(NULL);
	mp_log_set_level(MP_LOG_WARN);
	capture_start();
	mp_log_debug("a", "x=1");
	mp_log_info("b", "x=2");
	mp_log_warn("c", "x=3");
	mp_log_error("d", "x=4");
	char *text = capture_end(NULL);
	assert_matches(text, "^" TS " level=warn event=c x=3\n" TS " level=error event=d x=4\n$");
	free(text);

	mp_log_set_level(MP_LOG_ERROR);
	capture_start();
	mp_log_warn("c", "x=3");
	text = capture_end(NULL);
	assert_string_equal(text, "");
	free(text);
	mp_log_set_level(MP_LOG_INFO);

	static const struct {
		const char *in;
		int ret;
		enum mp_log_level want;
	} levels[] = {
		{ "debug", MP_OK, MP_LOG_DEBUG }, { "info", MP_OK, MP_LOG_INFO },
		{ "warn", MP_OK, MP_LOG_WARN }, { "error", MP_OK, MP_LOG_ERROR },
		{ "", MP_EINVAL, 0 }, { "INFO", MP_EINVAL, 0 }, { "warning", MP_EINVAL, 0 },
		{ "info ", MP_EINVAL, 0 }, { "err", MP_EINVAL, 0 },
	};
	for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++) {
		enum mp_log_level l = (enum mp_log_level)99;
		assert_int_equal(mp_log_parse_level(levels[i].in, &l), levels[i].ret);
		if (levels[i].ret == MP_OK)
			assert_int_equal(l, levels[i].want);
		else
			assert_int_equal(l, 99);
	}
	enum mp_log_level l;
	assert_int_equal(mp_log_parse_level(NULL, &l), MP_EINVAL);
}

static void test_prefix(void **state)
{
	mp_log_set_level(MP_LOG_INFO);
	mp_log_set_prefix("proc=node id=n1");
	capture_start();
	mp_log_info("start", "port=%d", 7000);
	mp_log_set_prefix("");
	mp_log_info("stop", "%s", "");
	char *text = capture_end(NULL);
	assert_matches(text, "^" TS " level=info proc=node id=n1 event=start port=7000\n"
			     TS " level=info event=stop\n$");
	free(text);
}

/* A caller that forgot mp_log_quote still cannot split or forge a line. */
static void test_control_bytes(void **state)
{
	mp_log_set_level(MP_LOG_INFO);
	mp_log_set_prefix(NULL);
	capture_start();
	mp_log_info("login", "user=%s", "bob\nts=x level=error event=forged\r\x1b[2J");
	char *text = capture_end(NULL);
	assert_matches(text, "^" TS " level=info event=login "
			     "user=bob\\?ts=x level=error event=forged\\?\\?\\[2J\n$");
	assert_int_equal(strchr(text, '\n') - text + 1, (long)strlen(text));
	free(text);
}

static void test_long_line(void **state)
{
	mp_log_set_level(MP_LOG_INFO);
	mp_log_set_prefix(NULL);
	size_t n = 20000;
	char *big = malloc(n + 1);
	assert_non_null(big);
	memset(big, 'v', n);
	big[n] = '\0';
	capture_start();
	mp_log_info("big", "v=%s", big);
	size_t len;
	char *text = capture_end(&len);
	/* One line, cut to fit PIPE_BUF with its "...\n". */
	assert_int_equal(len, 4095);
	assert_int_equal(text[len - 1], '\n');
	assert_memory_equal(text + len - 4, "...\n", 4);
	assert_ptr_equal(strchr(text, '\n'), text + len - 1);
	assert_matches(text, "^" TS " level=info event=big v=v+\\.\\.\\.\n$");
	free(text);
	free(big);
}

enum { THREADS = 4, LINES = 500 };

static void *log_thread(void *arg)
{
	int id = (int)(intptr_t)arg;
	char pad[600];
	memset(pad, 'a' + id, sizeof(pad) - 1);
	pad[sizeof(pad) - 1] = '\0';
	for (int i = 0; i < LINES; i++)
		mp_log_info("race", "thread=%d i=%d pad=%s", id, i, pad);
	return NULL;
}

/* Lines from several threads come out whole: one write(2) each. */
static void test_threads(void **state)
{
	mp_log_set_level(MP_LOG_INFO);
	mp_log_set_prefix("proc=test");
	capture_start();
	pthread_t t[THREADS];
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&t[i], NULL, log_thread, (void *)(intptr_t)i), 0);
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_join(t[i], NULL), 0);
	char *text = capture_end(NULL);
	mp_log_set_prefix(NULL);

	int seen[THREADS] = { 0 };
	int lines = 0;
	char *save = NULL;
	for (char *line = strtok_r(text, "\n", &save); line != NULL && lines < THREADS * LINES + 1;
	     line = strtok_r(NULL, "\n", &save)) {
		int id, i;
		char *p = strstr(line, " level=info proc=test event=race thread=");
		assert_non_null(p);
		assert_int_equal(sscanf(p, " level=info proc=test event=race thread=%d i=%d", &id, &i), 2);
		assert_true(id >= 0 && id < THREADS);
		assert_int_equal(i, seen[id]); /* in order within a thread */
		seen[id]++;
		char *pad = strstr(p, " pad=");
		assert_non_null(pad);
		assert_int_equal(strlen(pad + 5), 599);
		assert_int_equal(strspn(pad + 5, (char[]){ (char)('a' + id), 0 }), 599);
		lines++;
	}
	assert_int_equal(lines, THREADS * LINES);
	free(text);
}

/* ------------------------------------------------------------ quote */

struct quote_case {
	const char *in;
	size_t len;
	size_t outlen;
	const char *want;
};

static const struct quote_case quote_cases[] = {
	{ "", 0, 64, "\"\"" },
	{ "abc", 3, 64, "\"abc\"" },
	{ "a b=c", 5, 64, "\"a b=c\"" },
	{ "say \"hi\"", 8, 64, "\"say \\\"hi\\\"\"" },
	{ "back\\slash", 10, 64, "\"back\\\\slash\"" },
	{ "nl\nx", 4, 64, "\"nl\\x0ax\"" },
	{ "\r\t\x1b\x7f", 4, 64, "\"\\x0d\\x09\\x1b\\x7f\"" },
	{ "caf\xc3\xa9", 5, 64, "\"caf\\xc3\\xa9\"" },
	{ "\xff", 1, 64, "\"\\xff\"" },
	{ "a\0b", 3, 64, "\"a\\x00b\"" },
	/* Fits exactly: 2 quotes + 3 chars + NUL = 6. */
	{ "abc", 3, 6, "\"abc\"" },
	/* One short: cut with "...". */
	{ "abcd", 4, 6, "\"...\"" },
	{ "abcde", 5, 7, "\"a...\"" },
	{ "abcdefgh", 8, 10, "\"abcd...\"" },
	/* An escape is never split. */
	{ "ab\ncd", 5, 10, "\"ab...\"" },
	{ "ab\ncd", 5, 11, "\"ab\\x0acd\"" },
	{ "ab\ncdef", 7, 12, "\"ab\\x0a...\"" },
	{ "\"\"\"\"", 4, 9, "\"\\\"...\"" },
	/* Too small for "\"...\"": an empty value, never a lone quote. */
	{ "abcd", 4, 5, "\"\"" },
	{ "abcd", 4, 3, "\"\"" },
	{ "abcd", 4, 2, "" },
	{ "abcd", 4, 1, "" },
	{ "", 0, 3, "\"\"" },
};

static void test_quote_table(void **state)
{
	for (size_t i = 0; i < sizeof(quote_cases) / sizeof(quote_cases[0]); i++) {
		const struct quote_case *c = &quote_cases[i];
		char out[64];
		memset(out, 'Z', sizeof(out));
		const char *r = mp_log_quote(out, c->outlen, c->in, c->len);
		assert_ptr_equal(r, out);
		if (strcmp(out, c->want) != 0)
			fail_msg("case %zu: got %s, want %s", i, out, c->want);
		/* Nothing written past outlen. */
		for (size_t j = c->outlen; j < sizeof(out); j++)
			assert_int_equal(out[j], 'Z');
	}
	/* outlen 0 writes nothing at all. */
	char z = 'Z';
	mp_log_quote(&z, 0, "abc", 3);
	assert_int_equal(z, 'Z');
	char out[8];
	assert_string_equal(mp_log_quote(out, sizeof(out), NULL, 5), "\"\"");
}

/* Undo the escapes of a quoted value (no "..."): used to check round trips. */
static size_t unquote(const char *q, size_t qlen, char *out)
{
	size_t n = 0;
	for (size_t i = 1; i + 1 < qlen; i++) {
		if (q[i] == '\\' && q[i + 1] == 'x') {
			unsigned v;
			assert_int_equal(sscanf(q + i + 2, "%2x", &v), 1);
			out[n++] = (char)v;
			i += 3;
		} else if (q[i] == '\\') {
			out[n++] = q[++i];
		} else {
			out[n++] = q[i];
		}
	}
	return n;
}

/* Every byte value, at every output size: always NUL-terminated within
 * outlen, quotes balanced, only printable ASCII, and either the exact
 * value (which unquotes to the input) or a cut one ending in "...\"". */
static void test_quote_every_size(void **state)
{
	char in[256];
	for (int i = 0; i < 256; i++)
		in[i] = (char)i;
	char full[1200];
	mp_log_quote(full, sizeof(full), in, sizeof(in));
	char back[256];
	assert_int_equal(unquote(full, strlen(full), back), 256);
	assert_memory_equal(back, in, 256);

	for (size_t outlen = 1; outlen <= sizeof(full); outlen++) {
		char out[1200];
		memset(out, 'Z', sizeof(out));
		mp_log_quote(out, outlen, in, sizeof(in));
		size_t len = strnlen(out, outlen);
		assert_true(len < outlen);
		for (size_t j = 0; j < len; j++)
			assert_true(out[j] >= 0x20 && out[j] < 0x7f);
		if (len == 0)
			continue;
		assert_true(len >= 2);
		assert_int_equal(out[0], '"');
		assert_int_equal(out[len - 1], '"');
		if (strcmp(out, full) == 0)
			continue;
		if (len == 2)
			continue; /* too small even for "..." */
		assert_true(len >= 5);
		assert_memory_equal(out + len - 4, "...\"", 4);
		/* The cut text is a prefix of the full one, at an escape
		 * boundary. */
		assert_memory_equal(out, full, len - 4);
		/* Cut only when needed, and as late as possible: the next
		 * escape would not have fitted. */
		assert_true(strlen(full) + 1 > outlen);
		size_t p = len - 5; /* escaped bytes kept */
		size_t next = full[1 + p] != '\\' ? 1 : full[2 + p] == 'x' ? 4 : 2;
		assert_true(1 + p + next > outlen - 5);
	}
}

/* ------------------------------------------------------------ mp_error */

static void test_error_names_and_grpc(void **state)
{
	static const struct {
		int err;
		const char *name;
		int grpc;
	} table[] = {
		{ MP_OK, "OK", 0 },
		{ MP_AGAIN, "AGAIN", 13 },
		{ MP_EINVAL, "EINVAL", 3 },
		{ MP_ENOENT, "ENOENT", 5 },
		{ MP_EEXIST, "EEXIST", 6 },
		{ MP_ENOSPC, "ENOSPC", 8 },
		{ MP_EIO, "EIO", 13 },
		{ MP_ENOMEM, "ENOMEM", 8 },
		{ MP_EUNAVAIL, "EUNAVAIL", 14 },
		{ MP_ETIMEDOUT, "ETIMEDOUT", 4 },
		{ MP_ENOTLEADER, "ENOTLEADER", 9 },
		{ MP_ESTALE, "ESTALE", 11 },
		{ MP_ECANCELED, "ECANCELED", 1 },
		{ MP_EPERM, "EPERM", 7 },
		{ MP_ESTATE, "ESTATE", 9 },
		{ MP_ETOOBIG, "ETOOBIG", 8 },
		{ MP_EUNIMPL, "EUNIMPL", 12 },
		{ MP_EPROTO, "EPROTO", 13 },
	};
	/* Where codes share a gRPC code, the documented one comes back. */
	static const struct {
		int err, back;
	} shared[] = {
		{ MP_ENOMEM, MP_ENOSPC }, { MP_ETOOBIG, MP_ENOSPC },
		{ MP_ENOTLEADER, MP_ESTATE }, { MP_EPROTO, MP_EIO }, { MP_AGAIN, MP_EIO },
	};
	size_t n = sizeof(table) / sizeof(table[0]);
	assert_int_equal(n, 18); /* every enum mp_err value, 0 .. -17 */
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(table[i].err, -(int)i);
		assert_string_equal(mp_strerror(table[i].err), table[i].name);
		assert_int_equal(mp_err_to_grpc(table[i].err), table[i].grpc);
		int back = mp_err_from_grpc(table[i].grpc);
		int want = table[i].err;
		for (size_t j = 0; j < sizeof(shared) / sizeof(shared[0]); j++)
			if (shared[j].err == table[i].err)
				want = shared[j].back;
		if (back != want)
			fail_msg("%s -> %d -> %s, want %s", table[i].name, table[i].grpc,
				 mp_strerror(back), mp_strerror(want));
	}
	/* Every gRPC code maps to some MP code that maps back to itself. */
	for (int g = 0; g <= 16; g++) {
		int e = mp_err_from_grpc(g);
		assert_true(e <= 0 && e >= MP_EPROTO);
		assert_int_equal(mp_err_from_grpc(mp_err_to_grpc(e)), e);
	}
	assert_int_equal(mp_err_from_grpc(16), MP_EPERM);   /* UNAUTHENTICATED */
	assert_int_equal(mp_err_from_grpc(10), MP_EUNAVAIL); /* ABORTED */
	assert_int_equal(mp_err_from_grpc(15), MP_EIO);     /* DATA_LOSS */
	assert_int_equal(mp_err_from_grpc(2), MP_EIO);      /* UNKNOWN */
	assert_int_equal(mp_err_from_grpc(17), MP_EIO);
	assert_int_equal(mp_err_from_grpc(-1), MP_EIO);
	/* Codes that are not MP_E* codes. */
	assert_string_equal(mp_strerror(-18), "EUNKNOWN");
	assert_string_equal(mp_strerror(1), "EUNKNOWN");
	assert_string_equal(mp_strerror(-2147483647 - 1), "EUNKNOWN");
	assert_int_equal(mp_err_to_grpc(-18), 2);
	assert_int_equal(mp_err_to_grpc(5), 2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_format),
		cmocka_unit_test(test_level_filter),
		cmocka_unit_test(test_prefix),
		cmocka_unit_test(test_control_bytes),
		cmocka_unit_test(test_long_line),
		cmocka_unit_test(test_threads),
		cmocka_unit_test(test_quote_table),
		cmocka_unit_test(test_quote_every_size),
		cmocka_unit_test(test_error_names_and_grpc),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
