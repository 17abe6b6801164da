/*
 * test_pop3_parse: POP3 command lines, message numbers, and the RETR/TOP
 * encoding (CRLF, dot-stuffing, the size LIST announces).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "mp_buf.h"
#include "mp_error.h"
#include "pop3_parse.h"

static int parse(const char *text, struct pop3_command *c, char *buf, size_t cap)
{
	const char *err;
	snprintf(buf, cap, "%s", text);
	return pop3_parse(buf, strlen(buf), c, &err);
}

static void test_commands(void **state)
{
	(void)state;
	struct pop3_command c;
	char buf[512];
	assert_int_equal(parse("user alice@example.test", &c, buf, sizeof(buf)), 0);
	assert_int_equal(c.cmd, POP3_USER);
	assert_string_equal(c.arg[0], "alice@example.test");
	assert_int_equal(parse("PASS correct horse  battery", &c, buf, sizeof(buf)), 0);
	assert_int_equal(c.cmd, POP3_PASS);
	assert_string_equal(c.arg[0], "correct horse  battery");
	assert_int_equal(parse("TOP 3 10", &c, buf, sizeof(buf)), 0);
	assert_int_equal(c.cmd, POP3_TOP);
	assert_int_equal(c.nargs, 2);
	assert_string_equal(c.arg[1], "10");
	assert_int_equal(parse("list", &c, buf, sizeof(buf)), 0);
	assert_int_equal(c.nargs, 0);
	assert_int_equal(parse("AUTH PLAIN AGEAYg==", &c, buf, sizeof(buf)), 0);
	assert_int_equal(c.cmd, POP3_AUTH);
	assert_string_equal(c.arg[1], "AGEAYg==");
	assert_int_equal(parse("capa", &c, buf, sizeof(buf)), 0);
	assert_int_equal(c.cmd, POP3_CAPA);
}

static void test_bad_commands(void **state)
{
	(void)state;
	struct pop3_command c;
	char buf[600];
	const char *bad[] = {
		"", "XYZZY", "STAT 1", "RETR", "TOP 1", "LIST 1 2", "USER", "PASS",
		"LIST  1", "LIST 1 ", " STAT", "DELE 1 2 3", "RETRX 1",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(parse(bad[i], &c, buf, sizeof(buf)), MP_EINVAL);
	/* NUL and CR inside the line */
	const char *err;
	char nul[] = "STAT\0x";
	assert_int_equal(pop3_parse(nul, 6, &c, &err), MP_EINVAL);
	char cr[] = "NOOP\rx";
	assert_int_equal(pop3_parse(cr, 6, &c, &err), MP_EINVAL);
	/* 253 octets + CRLF = 255: fine; one more: too long */
	char longl[600];
	memset(longl, 'a', sizeof(longl));
	memcpy(longl, "USER ", 5);
	longl[253] = '\0';
	assert_int_equal(pop3_parse(longl, 253, &c, &err), 0);
	memset(longl, 'a', sizeof(longl));
	memcpy(longl, "USER ", 5);
	longl[254] = '\0';
	assert_int_equal(pop3_parse(longl, 254, &c, &err), MP_EINVAL);
}

static void test_numbers(void **state)
{
	(void)state;
	uint32_t n;
	assert_true(pop3_number("1", false, &n) && n == 1);
	assert_true(pop3_number("2147483647", false, &n) && n == 2147483647u);
	assert_false(pop3_number("2147483648", false, &n));
	assert_false(pop3_number("0", false, &n));
	assert_true(pop3_number("0", true, &n) && n == 0);
	assert_false(pop3_number("01", false, &n));
	assert_false(pop3_number("-1", false, &n));
	assert_false(pop3_number("+1", false, &n));
	assert_false(pop3_number("1x", false, &n));
	assert_false(pop3_number("", false, &n));
	assert_false(pop3_number("99999999999", false, &n));
}

static void check_stuff(const char *msg, int64_t top, const char *want)
{
	struct mp_buf b;
	mp_buf_init(&b, 0);
	assert_int_equal(pop3_stuff(msg, strlen(msg), top, &b), 0);
	assert_int_equal(b.len, strlen(want));
	assert_memory_equal(b.data, want, b.len);
	mp_buf_free(&b);
}

static void test_stuffing(void **state)
{
	(void)state;
	check_stuff("Subject: x\r\n\r\n.hidden\r\n..two\r\n.\r\nend\r\n", -1,
		    "Subject: x\r\n\r\n..hidden\r\n...two\r\n..\r\nend\r\n.\r\n");
	/* bare LF becomes CRLF; a last line without a line end gets one */
	check_stuff("A: b\n\nbody", -1, "A: b\r\n\r\nbody\r\n.\r\n");
	/* TOP: the header, the empty line, n body lines */
	check_stuff("A: b\r\nC: d\r\n\r\n1\r\n2\r\n3\r\n", 2, "A: b\r\nC: d\r\n\r\n1\r\n2\r\n.\r\n");
	check_stuff("A: b\r\n\r\n1\r\n", 0, "A: b\r\n\r\n.\r\n");
	check_stuff("", -1, ".\r\n");
}

static void test_wire_size(void **state)
{
	(void)state;
	/* the size is what RETR sends before the stuffing and the final dot */
	const char *msgs[] = {
		"Subject: x\r\n\r\nbody\r\n", "A: b\n\nbody\n", "A: b\r\n\r\nno end", "x\r",
		"\n\n\n", "a\r\nb\nc",
	};
	for (size_t i = 0; i < sizeof(msgs) / sizeof(msgs[0]); i++) {
		struct mp_buf b;
		mp_buf_init(&b, 0);
		assert_int_equal(pop3_stuff(msgs[i], strlen(msgs[i]), -1, &b), 0);
		/* no line starts with '.', so only the final ".\r\n" is extra */
		assert_int_equal(pop3_wire_size(msgs[i], strlen(msgs[i])), b.len - 3);
		mp_buf_free(&b);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_commands),
		cmocka_unit_test(test_bad_commands),
		cmocka_unit_test(test_numbers),
		cmocka_unit_test(test_stuffing),
		cmocka_unit_test(test_wire_size),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
