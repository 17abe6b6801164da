/*
 * Tests of imap_parse: a table of inputs, each with the transcript it must
 * give (commands rendered as text, continuation requests, errors with
 * their tags), fed whole, split at every position, split at every pair of
 * positions (small inputs) and one byte at a time; limits at their exact
 * boundaries; raw lines; argument helpers; string output read back by the
 * parser; modified UTF-7 both ways (RFC 3501 §5.1.3 examples); dates; and
 * FETCH attributes. Deterministic: no clock, no randomness.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mp_buf.h"
#include "mp_error.h"
#include "imap_parse.h"

/* ------------------------------------------------------------ transcripts */

static const struct imap_parse_limits small_limits = {
	.max_line = 40,
	.max_literal = 10,
	.max_append_literal = 30,
	.max_command = 120,
	.max_depth = 3,
	.max_args = 12,
};

static const char *err_name(enum imap_parse_err e)
{
	switch (e) {
	case IMAP_ERR_SYNTAX: return "SYNTAX";
	case IMAP_ERR_NO_TAG: return "NO_TAG";
	case IMAP_ERR_LINE_TOO_LONG: return "LONG";
	case IMAP_ERR_LITERAL_TOO_BIG: return "BIG";
	case IMAP_ERR_TOO_COMPLEX: return "COMPLEX";
	case IMAP_ERR_NUL: return "NUL";
	}
	return "?";
}

static void put_bytes(struct mp_buf *o, const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c >= 0x7f)
			assert_int_equal(mp_buf_printf(o, "\\x%02x", c), MP_OK);
		else
			assert_int_equal(mp_buf_append(o, &s[i], 1), MP_OK);
	}
}

static void render_args(struct mp_buf *o, const struct imap_arg *a, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			assert_int_equal(mp_buf_append(o, " ", 1), MP_OK);
		switch (a[i].type) {
		case IMAP_ARG_ATOM:
			put_bytes(o, a[i].s, a[i].len);
			break;
		case IMAP_ARG_NIL:
			assert_int_equal(a[i].len, 3);
			assert_int_equal(mp_buf_append_str(o, "NIL"), MP_OK);
			break;
		case IMAP_ARG_STRING:
			assert_int_equal(mp_buf_append(o, "\"", 1), MP_OK);
			put_bytes(o, a[i].s, a[i].len);
			assert_int_equal(mp_buf_append(o, "\"", 1), MP_OK);
			break;
		case IMAP_ARG_LITERAL:
			assert_int_equal(mp_buf_printf(o, "%s{%zu}", a[i].literal8 ? "~" : "",
						       a[i].len), MP_OK);
			put_bytes(o, a[i].s, a[i].len);
			break;
		case IMAP_ARG_LIST:
			assert_null(a[i].s);
			assert_int_equal(mp_buf_append(o, "(", 1), MP_OK);
			render_args(o, a[i].list, a[i].nlist);
			assert_int_equal(mp_buf_append(o, ")", 1), MP_OK);
			break;
		}
		if (a[i].type != IMAP_ARG_LIST) {
			assert_non_null(a[i].s);
			assert_int_equal(a[i].s[a[i].len], '\0');
			if (!a[i].literal8)
				assert_null(memchr(a[i].s, '\0', a[i].len));
		}
	}
}

static void render_event(struct mp_buf *o, enum imap_parse_status st,
			 const struct imap_command *cmd, const struct imap_parse_error *err)
{
	if (o->len > 0)
		assert_int_equal(mp_buf_append(o, "\n", 1), MP_OK);
	switch (st) {
	case IMAP_PARSE_CONTINUE:
		assert_int_equal(mp_buf_append(o, "+", 1), MP_OK);
		break;
	case IMAP_PARSE_COMMAND:
		assert_non_null(cmd);
		assert_null(err);
		assert_int_equal(cmd->uid, strncmp(cmd->name, "UID ", 4) == 0);
		assert_int_equal(mp_buf_printf(o, "C %s %s", cmd->tag, cmd->name), MP_OK);
		if (cmd->nargs > 0) {
			assert_int_equal(mp_buf_append(o, " ", 1), MP_OK);
			render_args(o, cmd->args, cmd->nargs);
		}
		break;
	case IMAP_PARSE_ERROR:
		assert_non_null(err);
		assert_null(cmd);
		assert_non_null(err->text);
		assert_int_equal(mp_buf_printf(o, "E:%s:%s", err_name(err->code),
					       err->tag != NULL ? err->tag : "-"), MP_OK);
		break;
	case IMAP_PARSE_FATAL:
		assert_non_null(err);
		assert_int_equal(mp_buf_printf(o, "F:%s", err_name(err->code)), MP_OK);
		break;
	case IMAP_PARSE_MORE:
		fail();
	}
}

/* Feed data cut at cuts[0..ncuts) (ascending) into a new parser; the
 * transcript into o. */
static void run_cuts(const struct imap_parse_limits *lim, const char *data, size_t len,
		     const size_t *cuts, size_t ncuts, struct mp_buf *o)
{
	struct imap_parser *p = NULL;
	assert_int_equal(imap_parser_new(lim, &p), MP_OK);
	size_t start = 0;
	bool fatal = false;
	for (size_t c = 0; c <= ncuts && !fatal; c++) {
		size_t end = c < ncuts ? cuts[c] : len;
		/* an exact-size heap copy: ASan sees any read past the end */
		size_t n = end - start;
		char *chunk = malloc(n > 0 ? n : 1);
		assert_non_null(chunk);
		memcpy(chunk, data + start, n);
		size_t off = 0;
		for (;;) {
			size_t used = 99;
			const struct imap_command *cmd = (void *)1;
			const struct imap_parse_error *err = (void *)1;
			enum imap_parse_status st =
				imap_parser_feed(p, chunk + off, n - off, &used, &cmd, &err);
			assert_true(used <= n - off);
			off += used;
			if (st == IMAP_PARSE_MORE) {
				assert_int_equal(off, n);
				assert_null(cmd);
				assert_null(err);
				break;
			}
			render_event(o, st, cmd, err);
			if (st == IMAP_PARSE_FATAL) {
				fatal = true;
				break;
			}
			assert_true(used > 0); /* progress */
		}
		free(chunk);
		start = end;
	}
	imap_parser_free(&p);
	assert_null(p);
	imap_parser_free(&p);
}

static void expect_all_splits(const struct imap_parse_limits *lim, const char *data,
			      size_t len, const char *want)
{
	struct mp_buf o;
	mp_buf_init(&o, 0);

	run_cuts(lim, data, len, NULL, 0, &o);
	if (strcmp(o.data != NULL ? o.data : "", want) != 0)
		fail_msg("input \"%.*s\"\n got: %s\nwant: %s", (int)len, data,
			 o.data != NULL ? o.data : "", want);
	mp_buf_free(&o);

	for (size_t c = 0; c <= len; c++) {
		run_cuts(lim, data, len, &c, 1, &o);
		if (strcmp(o.data != NULL ? o.data : "", want) != 0)
			fail_msg("input \"%.*s\" cut at %zu\n got: %s\nwant: %s", (int)len, data,
				 c, o.data, want);
		mp_buf_free(&o);
	}
	if (len <= 64) {
		for (size_t c1 = 0; c1 <= len; c1++)
			for (size_t c2 = c1; c2 <= len; c2++) {
				size_t cuts[2] = { c1, c2 };
				run_cuts(lim, data, len, cuts, 2, &o);
				if (strcmp(o.data != NULL ? o.data : "", want) != 0)
					fail_msg("input \"%.*s\" cut at %zu,%zu\n got: %s", (int)len,
						 data, c1, c2, o.data);
				mp_buf_free(&o);
			}
	}
	/* one byte at a time */
	size_t *cuts = malloc((len + 1) * sizeof(*cuts));
	assert_non_null(cuts);
	for (size_t c = 0; c < len; c++)
		cuts[c] = c + 1;
	run_cuts(lim, data, len, cuts, len, &o);
	free(cuts);
	if (strcmp(o.data != NULL ? o.data : "", want) != 0)
		fail_msg("input \"%.*s\" byte by byte\n got: %s\nwant: %s", (int)len, data,
			 o.data, want);
	mp_buf_free(&o);
}

struct feed_case {
	const char *in;
	size_t len;
	bool small;
	const char *want;
};

#define IN(s) s, sizeof(s) - 1

static const struct feed_case feed_cases[] = {
	/* good commands */
	{ IN("a1 NOOP\r\n"), false, "C a1 NOOP" },
	{ IN("a1 noop\r\n"), false, "C a1 NOOP" },
	{ IN("a1 NOOP\n"), false, "C a1 NOOP" },
	{ IN("a.b] Capability\r\n"), false, "C a.b] CAPABILITY" },
	{ IN("a2 LOGIN joe \"se\\\"cr\\\\et\"\r\n"), false, "C a2 LOGIN joe \"se\"cr\\et\"" },
	{ IN("a2 LOGIN \"\" \"\"\r\n"), false, "C a2 LOGIN \"\" \"\"" },
	{ IN("a3 uid fetch 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From To)]<0.100>)\r\n"), false,
	  "C a3 UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From To)]<0.100>)" },
	{ IN("a3 FETCH 1 BODY[HEADER.FIELDS (\"X]\" \"(\")]\r\n"), false,
	  "C a3 FETCH 1 BODY[HEADER.FIELDS (\"X]\" \"(\")]" },
	{ IN("a3 FETCH 1 (BODY[1.2.MIME] BINARY[1]<5.6>)\r\n"), false,
	  "C a3 FETCH 1 (BODY[1.2.MIME] BINARY[1]<5.6>)" },
	{ IN("a NOOP\r\nb NOOP\r\nc LOGOUT\r\n"), false, "C a NOOP\nC b NOOP\nC c LOGOUT" },
	{ IN("a LOGIN {3}\r\njoe {2}\r\npw\r\n"), false, "+\n+\nC a LOGIN {3}joe {2}pw" },
	{ IN("a LOGIN {3+}\r\njoe {2-}\r\npw\r\nb NOOP\r\n"), false,
	  "C a LOGIN {3}joe {2}pw\nC b NOOP" },
	{ IN("a LOGIN {0}\r\n {0+}\r\n\r\n"), false, "+\nC a LOGIN {0} {0}" },
	{ IN("a LOGIN {4}\r\n\r\n\r\n {1}\r\n}\r\n"), false,
	  "+\n+\nC a LOGIN {4}\\x0d\\x0a\\x0d\\x0a {1}}" },
	{ IN("a APPEND INBOX ~{3}\r\na\0b\r\n"), false, "+\nC a APPEND INBOX ~{3}a\\x00b" },
	{ IN("a APPEND INBOX ~{3+}\r\n\0\0\0\r\n"), false,
	  "C a APPEND INBOX ~{3}\\x00\\x00\\x00" },
	{ IN("a APPEND INBOX (\\Seen) \" 7-Feb-1994 21:52:25 -0800\" {5}\r\nhello\r\n"), false,
	  "+\nC a APPEND INBOX (\\Seen) \" 7-Feb-1994 21:52:25 -0800\" {5}hello" },
	{ IN("a APPEND INBOX {1+}\r\nx {1+}\r\ny\r\n"), false, "C a APPEND INBOX {1}x {1}y" },
	{ IN("a X (a (b (c)) ()) NIL nil (NIL)\r\n"), false, "C a X (a (b (c)) ()) NIL NIL (NIL)" },
	{ IN("a X (a {1+}\r\nb) ({1}\r\nc)\r\n"), false, "+\nC a X (a {1}b) ({1}c)" },
	{ IN("a LIST \"\" *\r\n"), false, "C a LIST \"\" *" },
	{ IN("a LIST \"\" %/foo*\r\n"), false, "C a LIST \"\" %/foo*" },
	{ IN("a STORE 1:2,5 +FLAGS.SILENT (\\Seen \\* $Junk)\r\n"), false,
	  "C a STORE 1:2,5 +FLAGS.SILENT (\\Seen \\* $Junk)" },
	{ IN("a SELECT \"caf\xc3\xa9\"\r\n"), false, "C a SELECT \"caf\\xc3\\xa9\"" },
	{ IN("a SELECT foo]\r\n"), false, "C a SELECT foo]" },
	{ IN("a uid  \r\nb NOOP\r\n"), false, "E:SYNTAX:a\nC b NOOP" },
	{ IN("a UID store 1 FLAGS ()\r\n"), false, "C a UID STORE 1 FLAGS ()" },
	{ IN("a ID (\"name\" \"x\" \"version\" NIL)\r\n"), false,
	  "C a ID (\"name\" \"x\" \"version\" NIL)" },

	/* errors, and the parser is ready for the next command */
	{ IN("\r\na NOOP\r\n"), false, "E:NO_TAG:-\nC a NOOP" },
	{ IN("+a NOOP\r\na NOOP\r\n"), false, "E:NO_TAG:-\nC a NOOP" },
	{ IN("a(b NOOP\r\n"), false, "E:NO_TAG:-" },
	{ IN(" NOOP\r\n"), false, "E:NO_TAG:-" },
	{ IN("* NOOP\r\n"), false, "E:NO_TAG:-" },
	{ IN("a\r\n"), false, "E:SYNTAX:a" },
	{ IN("a  NOOP\r\n"), false, "E:SYNTAX:a" },
	{ IN("a NOOP \r\n"), false, "E:SYNTAX:a" },
	{ IN("a X  b\r\n"), false, "E:SYNTAX:a" },
	{ IN("a X (a\r\n"), false, "E:SYNTAX:a" },
	{ IN("a X a)\r\n"), false, "E:SYNTAX:a" },
	{ IN("a X ( a)\r\n"), false, "E:SYNTAX:a" },
	{ IN("a X (a )\r\n"), false, "E:SYNTAX:a" },
	{ IN("a X (a)b\r\n"), false, "E:SYNTAX:a" },
	{ IN("a X \"abc\r\n"), false, "E:SYNTAX:a" },
	{ IN("a X \"a\\b\"\r\n"), false, "E:SYNTAX:a" },
	{ IN("a X \"a\"b\r\n"), false, "E:SYNTAX:a" },
	{ IN("a X {3}x\r\n"), false, "E:SYNTAX:a" },
	{ IN("a X {}\r\n"), false, "E:SYNTAX:a" },
	{ IN("a X {3a}\r\n"), false, "E:SYNTAX:a" },
	{ IN("a X {3++}\r\n"), false, "E:SYNTAX:a" },
	{ IN("a X abc{3}\r\n"), false, "E:SYNTAX:a" },
	{ IN("a X ~{3\r\n"), false, "E:SYNTAX:a" },
	{ IN("a X a\\b\r\n"), false, "E:SYNTAX:a" },
	{ IN("a X \\\r\n"), false, "E:SYNTAX:a" },
	{ IN("a UID\r\n"), false, "E:SYNTAX:a" },
	{ IN("a X BODY[1\r\n"), false, "E:SYNTAX:a" },
	{ IN("a X \xff\r\n"), false, "E:SYNTAX:a" },
	{ IN("a X a\rb\r\nb NOOP\r\n"), false, "E:SYNTAX:a\nC b NOOP" },
	{ IN("a X \"a\rb\"\r\n"), false, "E:SYNTAX:a" },
	{ IN("a X\tb\r\n"), false, "E:SYNTAX:a" },
	{ IN("a X a\0b\r\nb NOOP\r\n"), false, "E:NUL:a\nC b NOOP" },
	{ IN("\0a NOOP\r\nb NOOP\r\n"), false, "E:NUL:-\nC b NOOP" },
	{ IN("a X \"\0\"\r\n"), false, "E:NUL:a" },
	{ IN("a X {3+}\r\na\0b\r\nb NOOP\r\n"), false, "E:NUL:a\nC b NOOP" },
	{ IN("a X {3}\r\nab\0 c\r\nb NOOP\r\n"), false, "+\nE:NUL:a\nC b NOOP" },
	{ IN("a X {1}\r\n\0 {2+}\r\nzz\r\nb NOOP\r\n"), false, "+\nE:NUL:a\nC b NOOP" },
	/* a failed line that announced a non-synchronising literal: the
	 * literal and what follows it are skipped, not read as commands */
	{ IN("a X ( {3+}\r\nabc)\r\nb NOOP\r\n"), false, "E:SYNTAX:a\nC b NOOP" },
	{ IN("a X ( {5+}\r\nc BAD {2+}\r\nxx\r\nb NOOP\r\n"), false,
	  "E:SYNTAX:a\nC b NOOP" },
	{ IN("a X ( ~{3+}\r\n\0\0\0)\r\nb NOOP\r\n"), false, "E:SYNTAX:a\nC b NOOP" },
	{ IN("a X ( {0+}\r\nb NOOP\r\nc NOOP\r\n"), false, "E:SYNTAX:a\nC c NOOP" },
	/* ...but after a synchronising one the client waits, so nothing is */
	{ IN("a X ( {3}\r\nb NOOP\r\n"), false, "E:SYNTAX:a\nC b NOOP" },

	/* limits (small_limits) */
	{ IN("a X 123456789012345678901234567890123456\r\nb NOOP\r\n"), true,
	  "C a X 123456789012345678901234567890123456\nC b NOOP" },
	{ IN("a X 1234567890123456789012345678901234567\r\nb NOOP\r\n"), true,
	  "E:LONG:a\nC b NOOP" },
	{ IN("a X 1234567890123456789012345678901234567\nb NOOP\r\n"), true,
	  "E:LONG:a\nC b NOOP" },
	{ IN("a X 123456789012345678901234567890123456789012345\r\nb NOOP\r\n"), true,
	  "E:LONG:a\nC b NOOP" },
	{ IN("a X 123456789012345678901234567890123456789012 {3+}\r\nabc\r\nb NOOP\r\n"), true,
	  "E:LONG:a\nC b NOOP" },
	{ IN("a X {1+}\r\nx 123456789012345678901234567890123456789012\r\nb NOOP\r\n"), true,
	  "E:LONG:a\nC b NOOP" },
	{ IN("123456789012345678901234567890123456789012345\r\nb NOOP\r\n"), true,
	  "E:LONG:-\nC b NOOP" },
	{ IN("a X {10}\r\n0123456789\r\n"), true, "+\nC a X {10}0123456789" },
	{ IN("a X {11}\r\nb NOOP\r\n"), true, "E:BIG:a\nC b NOOP" },
	{ IN("a X (x {99999999999999999999999}\r\nb NOOP\r\n"), true, "E:BIG:a\nC b NOOP" },
	{ IN("a X {10+}\r\n0123456789\r\n"), true, "C a X {10}0123456789" },
	{ IN("a X {11+}\r\n01234567890\r\n"), true, "F:BIG" },
	{ IN("a X ( {99999999999999999999999+}\r\n"), true, "F:BIG" },
	{ IN("a APPEND x {30+}\r\n012345678901234567890123456789\r\n"), true,
	  "C a APPEND x {30}012345678901234567890123456789" },
	{ IN("a APPEND x {31}\r\nb NOOP\r\n"), true, "E:BIG:a\nC b NOOP" },
	{ IN("a APPEND x {31+}\r\n"), true, "F:BIG" },
	{ IN("a X (((a)))\r\n"), true, "C a X (((a)))" },
	{ IN("a X ((((a))))\r\nb NOOP\r\n"), true, "E:COMPLEX:a\nC b NOOP" },
	{ IN("a X 1 2 3 4 5 6 7 8 9 a b c\r\n"), true, "C a X 1 2 3 4 5 6 7 8 9 a b c" },
	{ IN("a X 1 2 3 4 5 6 7 8 9 a b c d\r\nb NOOP\r\n"), true, "E:COMPLEX:a\nC b NOOP" },
	{ IN("a X (1 2 3 4 5 6 7 8 9 a b)\r\n"), true, "C a X (1 2 3 4 5 6 7 8 9 a b)" },
	{ IN("a X (1 2 3 4 5 6 7 8 9 a b c)\r\n"), true, "E:COMPLEX:a" },
	{ IN("a X 1 2 3 4 5 6 7 8 9 a b c {1+}\r\nz\r\nb NOOP\r\n"), true,
	  "E:COMPLEX:a\nC b NOOP" },
};

static void test_feed_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(feed_cases) / sizeof(feed_cases[0]); i++) {
		const struct feed_case *c = &feed_cases[i];
		expect_all_splits(c->small ? &small_limits : NULL, c->in, c->len, c->want);
	}
}

/* max_command: lines (with CRLF) and literals count; APPEND's do not. */
static void test_command_size(void **state)
{
	(void)state;
	char in[512], want[512];
	/* "a X {10+}" 11 + 10, then " {10+}" 8 + 10 each: 21 + 18k */
	for (int k = 0; k <= 7; k++) {
		size_t n = (size_t)snprintf(in, sizeof(in), "a X {10+}\r\n0123456789");
		size_t w = (size_t)snprintf(want, sizeof(want), "C a X {10}0123456789");
		for (int j = 0; j < k; j++) {
			n += (size_t)snprintf(in + n, sizeof(in) - n, " {10+}\r\n0123456789");
			w += (size_t)snprintf(want + w, sizeof(want) - w, " {10}0123456789");
		}
		n += (size_t)snprintf(in + n, sizeof(in) - n, "\r\nb NOOP\r\n");
		snprintf(want + w, sizeof(want) - w, "\nC b NOOP");
		/* 21 + 18 * 5 + 2 = 113 <= 120; one more literal is over */
		expect_all_splits(&small_limits, in, n, k <= 5 ? want : "E:COMPLEX:a\nC b NOOP");
	}
	/* APPEND literals do not count: 4 * 30 bytes */
	size_t n = (size_t)snprintf(in, sizeof(in), "a APPEND x");
	for (int j = 0; j < 4; j++)
		n += (size_t)snprintf(in + n, sizeof(in) - n,
				      " {30+}\r\n012345678901234567890123456789");
	n += (size_t)snprintf(in + n, sizeof(in) - n, "\r\n");
	struct mp_buf o;
	mp_buf_init(&o, 0);
	run_cuts(&small_limits, in, n, NULL, 0, &o);
	assert_true(strncmp(o.data, "C a APPEND x {30}", 17) == 0);
	mp_buf_free(&o);
}

/* A large APPEND with default limits, in big and tiny chunks. */
static void test_big_append(void **state)
{
	(void)state;
	const size_t lit = 200000;
	char head[64];
	int hl = snprintf(head, sizeof(head), "A1 APPEND INBOX {%zu}\r\n", lit);
	size_t len = (size_t)hl + lit + 2;
	char *in = malloc(len);
	assert_non_null(in);
	memcpy(in, head, (size_t)hl);
	for (size_t i = 0; i < lit; i++)
		in[(size_t)hl + i] = (char)('a' + i % 26);
	memcpy(in + hl + lit, "\r\n", 2);

	size_t steps[] = { 1, 7, 4096, len };
	for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
		struct imap_parser *p = NULL;
		assert_int_equal(imap_parser_new(NULL, &p), MP_OK);
		size_t off = 0;
		int conts = 0, cmds = 0;
		while (off < len) {
			size_t n = len - off < steps[s] ? len - off : steps[s];
			size_t done = 0;
			while (done < n) {
				size_t used;
				const struct imap_command *cmd;
				const struct imap_parse_error *err;
				enum imap_parse_status st =
					imap_parser_feed(p, in + off + done, n - done, &used, &cmd, &err);
				done += used;
				if (st == IMAP_PARSE_CONTINUE) {
					conts++;
				} else if (st == IMAP_PARSE_COMMAND) {
					cmds++;
					assert_string_equal(cmd->name, "APPEND");
					assert_int_equal(cmd->nargs, 2);
					assert_int_equal(cmd->args[1].type, IMAP_ARG_LITERAL);
					assert_int_equal(cmd->args[1].len, lit);
					assert_memory_equal(cmd->args[1].s, in + hl, lit);
				} else {
					assert_int_equal(st, IMAP_PARSE_MORE);
				}
			}
			off += n;
		}
		assert_int_equal(conts, 1);
		assert_int_equal(cmds, 1);
		imap_parser_free(&p);
	}
	free(in);
}

static enum imap_parse_status feed1(struct imap_parser *p, const char *s, size_t *used_r,
				    const struct imap_command **cmd_r,
				    const struct imap_parse_error **err_r)
{
	return imap_parser_feed(p, s, strlen(s), used_r, cmd_r, err_r);
}

static void test_pipelined_used(void **state)
{
	(void)state;
	struct imap_parser *p = NULL;
	const struct imap_command *cmd;
	const struct imap_parse_error *err;
	size_t used;
	assert_int_equal(imap_parser_new(NULL, &p), MP_OK);
	const char *in = "a NOOP\r\nbb SELECT INBOX\r\nc";
	assert_int_equal(feed1(p, in, &used, &cmd, &err), IMAP_PARSE_COMMAND);
	assert_int_equal(used, 8);
	assert_string_equal(cmd->tag, "a");
	assert_int_equal(cmd->nargs, 0);
	assert_int_equal(feed1(p, in + 8, &used, &cmd, &err), IMAP_PARSE_COMMAND);
	assert_int_equal(used, 17);
	assert_string_equal(cmd->tag, "bb");
	assert_string_equal(imap_arg_astring(&cmd->args[0]), "INBOX");
	assert_int_equal(feed1(p, in + 25, &used, &cmd, &err), IMAP_PARSE_MORE);
	assert_int_equal(used, 1);
	/* reset forgets the half-read "c" */
	imap_parser_reset(p);
	assert_int_equal(feed1(p, "d NOOP\r\n", &used, &cmd, &err), IMAP_PARSE_COMMAND);
	assert_string_equal(cmd->tag, "d");
	/* reset in the middle of a literal */
	assert_int_equal(feed1(p, "e LOGIN {10}\r\nab", &used, &cmd, &err), IMAP_PARSE_CONTINUE);
	assert_int_equal(used, 14);
	imap_parser_reset(p);
	assert_int_equal(feed1(p, "f NOOP\r\n", &used, &cmd, &err), IMAP_PARSE_COMMAND);
	assert_string_equal(cmd->tag, "f");
	/* FATAL sticks until reset */
	assert_int_equal(feed1(p, "g X {999999999+}\r\n", &used, &cmd, &err), IMAP_PARSE_FATAL);
	assert_int_equal(err->code, IMAP_ERR_LITERAL_TOO_BIG);
	assert_int_equal(feed1(p, "h NOOP\r\n", &used, &cmd, &err), IMAP_PARSE_FATAL);
	assert_int_equal(used, 0);
	imap_parser_reset(p);
	assert_int_equal(feed1(p, "h NOOP\r\n", &used, &cmd, &err), IMAP_PARSE_COMMAND);
	/* the error names the command when it was read: APPEND's
	 * LITERAL_TOO_BIG becomes NO [TOOBIG] */
	assert_int_equal(feed1(p, "i APPEND x {99999999999}\r\n", &used, &cmd, &err),
			 IMAP_PARSE_ERROR);
	assert_int_equal(err->code, IMAP_ERR_LITERAL_TOO_BIG);
	assert_string_equal(err->tag, "i");
	assert_string_equal(err->name, "APPEND");
	assert_int_equal(feed1(p, "j uid  x\r\n", &used, &cmd, &err), IMAP_PARSE_ERROR);
	assert_int_equal(err->code, IMAP_ERR_SYNTAX);
	assert_string_equal(err->tag, "j");
	assert_null(err->name);
	assert_int_equal(feed1(p, "k X (\r\n", &used, &cmd, &err), IMAP_PARSE_ERROR);
	assert_string_equal(err->name, "X");
	/* no bytes: nothing happens */
	assert_int_equal(imap_parser_feed(p, "", 0, &used, &cmd, &err), IMAP_PARSE_MORE);
	assert_int_equal(used, 0);
	imap_parser_free(&p);
}

/* ------------------------------------------------------------ raw lines */

static void test_read_line(void **state)
{
	(void)state;
	size_t ll = 99, used = 99;
	assert_int_equal(imap_read_line("DONE\r\nx", 7, 10, &ll, &used), 1);
	assert_int_equal(ll, 4);
	assert_int_equal(used, 6);
	assert_int_equal(imap_read_line("DONE\nx", 6, 10, &ll, &used), 1);
	assert_int_equal(ll, 4);
	assert_int_equal(used, 5);
	assert_int_equal(imap_read_line("\r\n", 2, 10, &ll, &used), 1);
	assert_int_equal(ll, 0);
	assert_int_equal(used, 2);
	assert_int_equal(imap_read_line("DON", 3, 10, &ll, &used), 0);
	assert_int_equal(imap_read_line("", 0, 10, &ll, &used), 0);
	/* max 4: "DONE\r\n" fits, "DONE!\r\n" does not */
	assert_int_equal(imap_read_line("DONE\r\n", 6, 4, &ll, &used), 1);
	assert_int_equal(imap_read_line("DONE\r", 5, 4, &ll, &used), 0);
	assert_int_equal(imap_read_line("DONE!\r\n", 7, 4, &ll, &used), -1);
	assert_int_equal(imap_read_line("DONE!\n", 6, 4, &ll, &used), -1);
	assert_int_equal(imap_read_line("DONE!\r", 6, 4, &ll, &used), -1);
	assert_int_equal(imap_read_line("DONE!", 5, 4, &ll, &used), 0);
}

/* ------------------------------------------------------------ arguments */

static const struct imap_command *parse_one(struct imap_parser *p, const char *s, size_t len)
{
	const struct imap_command *cmd = NULL;
	const struct imap_parse_error *err;
	size_t off = 0, used;
	enum imap_parse_status st;
	do {
		st = imap_parser_feed(p, s + off, len - off, &used, &cmd, &err);
		off += used;
	} while (st == IMAP_PARSE_CONTINUE);
	assert_int_equal(st, IMAP_PARSE_COMMAND);
	assert_int_equal(off, len);
	return cmd;
}

static void test_arg_helpers(void **state)
{
	(void)state;
	struct imap_parser *p = NULL;
	assert_int_equal(imap_parser_new(NULL, &p), MP_OK);
	static const char in[] = "a X 0 4294967295 4294967296 9223372036854775807 "
				 "9223372036854775808 01 1a \"5\" NiL () {2+}\r\nxy ~{3+}\r\na\0b\r\n";
	const struct imap_command *c = parse_one(p, in, sizeof(in) - 1);
	assert_int_equal(c->nargs, 12);
	uint32_t n32;
	uint64_t n64;
	assert_true(imap_arg_number(&c->args[0], &n32));
	assert_int_equal(n32, 0);
	assert_true(imap_arg_number(&c->args[1], &n32));
	assert_int_equal(n32, 4294967295u);
	assert_false(imap_arg_number(&c->args[2], &n32));
	assert_true(imap_arg_number64(&c->args[2], &n64));
	assert_int_equal(n64, 4294967296ull);
	assert_true(imap_arg_number64(&c->args[3], &n64));
	assert_int_equal(n64, 9223372036854775807ull);
	assert_false(imap_arg_number64(&c->args[4], &n64));
	assert_true(imap_arg_number(&c->args[5], &n32));
	assert_int_equal(n32, 1);
	assert_false(imap_arg_number(&c->args[6], &n32));
	assert_false(imap_arg_number(&c->args[7], &n32)); /* a string is no number */
	assert_false(imap_arg_number(&c->args[9], &n32));

	assert_string_equal(imap_arg_astring(&c->args[6]), "1a");
	assert_string_equal(imap_arg_astring(&c->args[7]), "5");
	assert_string_equal(imap_arg_astring(&c->args[8]), "NiL"); /* a mailbox named NIL */
	assert_null(imap_arg_nstring(&c->args[8]));
	assert_string_equal(imap_arg_nstring(&c->args[7]), "5");
	assert_null(imap_arg_astring(&c->args[9]));
	assert_string_equal(imap_arg_astring(&c->args[10]), "xy");
	assert_null(imap_arg_astring(&c->args[11])); /* NUL inside */
	assert_true(c->args[11].literal8);
	assert_int_equal(c->args[11].len, 3);
	assert_null(imap_arg_astring(NULL));

	assert_true(imap_arg_is_atom(&c->args[6], "1A"));
	assert_true(imap_arg_is_atom(&c->args[8], "NIL"));
	assert_false(imap_arg_is_atom(&c->args[7], "5"));
	assert_false(imap_arg_is_atom(&c->args[6], "1"));
	assert_false(imap_arg_is_atom(&c->args[9], ""));
	imap_parser_free(&p);
}

/* ------------------------------------------------------------ output */

static void expect_written(const char *s, size_t len, bool utf8, const char *want, size_t wlen)
{
	struct mp_buf b;
	mp_buf_init(&b, 0);
	assert_int_equal(mp_buf_append_str(&b, "x "), MP_OK);
	assert_int_equal(imap_write_string(&b, s, len, utf8), MP_OK);
	assert_int_equal(b.len, wlen + 2);
	assert_memory_equal(b.data + 2, want, wlen);

	/* and the parser reads it back as the same bytes */
	if (memchr(s, '\0', len) == NULL) {
		struct mp_buf in;
		mp_buf_init(&in, 0);
		assert_int_equal(mp_buf_append_str(&in, "a X "), MP_OK);
		assert_int_equal(mp_buf_append(&in, b.data + 2, b.len - 2), MP_OK);
		assert_int_equal(mp_buf_append_str(&in, "\r\n"), MP_OK);
		struct imap_parser *p = NULL;
		assert_int_equal(imap_parser_new(NULL, &p), MP_OK);
		const struct imap_command *c = parse_one(p, in.data, in.len);
		assert_int_equal(c->nargs, 1);
		assert_true(c->args[0].type == IMAP_ARG_STRING || c->args[0].type == IMAP_ARG_LITERAL);
		assert_int_equal(c->args[0].len, len);
		assert_memory_equal(c->args[0].s, s, len);
		imap_parser_free(&p);
		mp_buf_free(&in);
	}
	mp_buf_free(&b);
}

#define W(s, u, w) expect_written(s, sizeof(s) - 1, u, w, sizeof(w) - 1)

static void test_write_string(void **state)
{
	(void)state;
	W("abc", false, "\"abc\"");
	W("", false, "\"\"");
	W("NIL", false, "\"NIL\"");
	W("a\"b\\", false, "\"a\\\"b\\\\\"");
	W("a b(c)", false, "\"a b(c)\"");
	W("a\r\nb", false, "{4}\r\na\r\nb");
	W("a\nb", true, "{3}\r\na\nb");
	W("a\0b", false, "{3}\r\na\0b");
	W("caf\xc3\xa9", false, "{5}\r\ncaf\xc3\xa9");
	W("caf\xc3\xa9", true, "\"caf\xc3\xa9\"");
	W("caf\xc3", true, "{4}\r\ncaf\xc3");

	char big[1025];
	memset(big, 'x', sizeof(big));
	struct mp_buf b;
	mp_buf_init(&b, 0);
	assert_int_equal(imap_write_string(&b, big, 1024, false), MP_OK);
	assert_int_equal(b.len, 1026);
	assert_int_equal(b.data[0], '"');
	mp_buf_reset(&b);
	assert_int_equal(imap_write_string(&b, big, 1025, false), MP_OK);
	assert_int_equal(b.len, 1025 + 8);
	assert_memory_equal(b.data, "{1025}\r\n", 8);
	mp_buf_reset(&b);
	assert_int_equal(imap_write_nstring(&b, NULL, 0, false), MP_OK);
	assert_int_equal(imap_write_nstring(&b, "x", 1, false), MP_OK);
	assert_string_equal(b.data, "NIL\"x\"");
	mp_buf_free(&b);

	/* over the buffer's limit: an error and the buffer as it was */
	mp_buf_init(&b, 8);
	assert_int_equal(mp_buf_append_str(&b, "ab"), MP_OK);
	assert_int_equal(imap_write_string(&b, "0123456789", 10, false), MP_ENOSPC);
	assert_int_equal(b.len, 2);
	assert_string_equal(b.data, "ab");
	mp_buf_free(&b);
}

/* ------------------------------------------------------------ mUTF-7 */

struct mutf7_case {
	const char *mutf7;
	const char *utf8;
};

static const struct mutf7_case mutf7_good[] = {
	{ "", "" },
	{ "INBOX", "INBOX" },
	{ "&-", "&" },
	{ "a&-b&-", "a&b&" },
	{ "&Jjo-", "\xe2\x98\xba" },
	{ "&AMk-", "\xc3\x89" },
	{ "Caf&AOk-", "Caf\xc3\xa9" },
	/* RFC 3501 §5.1.3 */
	{ "~peter/mail/&U,BTFw-/&ZeVnLIqe-", "~peter/mail/\xe5\x8f\xb0\xe5\x8c\x97/"
					     "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e" },
	{ "Hi Mom -&Jjo--!", "Hi Mom -\xe2\x98\xba-!" },
	{ "&2D3eAA-", "\xf0\x9f\x98\x80" },
	{ "&2D3eANg93gE-", "\xf0\x9f\x98\x80\xf0\x9f\x98\x81" },
	{ "&AAE-", "\x01" },
	{ "&AH8-", "\x7f" },
	{ "&AMkAyQDJ-x", "\xc3\x89\xc3\x89\xc3\x89x" },
};

static const char *const mutf7_bad[] = {
	"&", "&Jjo", "&Jjo-&", "&AGE-", "&ACY-", "&ACA-", "&A-", "&Jj-", "&Jjp-", "&2D0-",
	"&3gA-", "&2D3YPQ-", "&AAA-", "&!-", "&Jjo/-", "a\x01", "a\x7f", "caf\xc3\xa9", "\t",
	"&AMkA-",
};

static void test_mutf7(void **state)
{
	(void)state;
	struct mp_buf b;
	mp_buf_init(&b, 0);
	for (size_t i = 0; i < sizeof(mutf7_good) / sizeof(mutf7_good[0]); i++) {
		const struct mutf7_case *c = &mutf7_good[i];
		mp_buf_reset(&b);
		int ret = imap_mutf7_decode(c->mutf7, strlen(c->mutf7), false, &b);
		if (ret != MP_OK)
			fail_msg("decode \"%s\": %d", c->mutf7, ret);
		assert_non_null(b.data);
		assert_string_equal(b.data, c->utf8);
		mp_buf_reset(&b);
		assert_int_equal(imap_mutf7_encode(c->utf8, strlen(c->utf8), false, &b), MP_OK);
		assert_string_equal(b.data != NULL ? b.data : "", c->mutf7);
		/* UTF-8 mode: names pass as they are */
		mp_buf_reset(&b);
		assert_int_equal(imap_mutf7_encode(c->utf8, strlen(c->utf8), true, &b), MP_OK);
		assert_string_equal(b.data != NULL ? b.data : "", c->utf8);
		if (strchr(c->utf8, 0x01) == NULL && strchr(c->utf8, 0x7f) == NULL) {
			mp_buf_reset(&b);
			assert_int_equal(imap_mutf7_decode(c->utf8, strlen(c->utf8), true, &b), MP_OK);
			assert_string_equal(b.data, c->utf8);
		}
	}
	for (size_t i = 0; i < sizeof(mutf7_bad) / sizeof(mutf7_bad[0]); i++) {
		mp_buf_reset(&b);
		assert_int_equal(mp_buf_append_str(&b, "keep"), MP_OK);
		if (imap_mutf7_decode(mutf7_bad[i], strlen(mutf7_bad[i]), false, &b) != MP_EINVAL)
			fail_msg("decoded bad \"%s\"", mutf7_bad[i]);
		assert_string_equal(b.data, "keep");
	}
	/* UTF-8 mode: '&' is literal, UTF-8 must be valid */
	mp_buf_reset(&b);
	assert_int_equal(imap_mutf7_decode("&Jjo-", 5, true, &b), MP_OK);
	assert_string_equal(b.data, "&Jjo-");
	static const char *const bad8[] = { "\xc3", "\xc0\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80",
					    "\xe2\x98", "a\x01", "\x80" };
	for (size_t i = 0; i < sizeof(bad8) / sizeof(bad8[0]); i++) {
		mp_buf_reset(&b);
		assert_int_equal(imap_mutf7_decode(bad8[i], strlen(bad8[i]), true, &b), MP_EINVAL);
		assert_int_equal(b.len, 0);
		if (bad8[i][0] != 'a') {
			assert_int_equal(imap_mutf7_encode(bad8[i], strlen(bad8[i]), false, &b),
					 MP_EINVAL);
			assert_int_equal(imap_mutf7_encode(bad8[i], strlen(bad8[i]), true, &b),
					 MP_EINVAL);
		}
	}
	mp_buf_reset(&b);
	assert_int_equal(imap_mutf7_encode("a\0b", 3, false, &b), MP_EINVAL);
	assert_int_equal(imap_mutf7_decode("a\0b", 3, true, &b), MP_EINVAL);
	mp_buf_free(&b);

	/* every BMP character (outside surrogates and printable ASCII)
	 * encodes and decodes back */
	struct mp_buf e, d;
	mp_buf_init(&e, 0);
	mp_buf_init(&d, 0);
	for (uint32_t cp = 1; cp < 0x110000; cp += (cp < 0x800 ? 1 : 97)) {
		if (cp >= 0xd800 && cp <= 0xdfff)
			continue;
		char u[8];
		size_t n;
		if (cp < 0x80) {
			u[0] = (char)cp; n = 1;
		} else if (cp < 0x800) {
			u[0] = (char)(0xc0 | (cp >> 6)); u[1] = (char)(0x80 | (cp & 0x3f)); n = 2;
		} else if (cp < 0x10000) {
			u[0] = (char)(0xe0 | (cp >> 12)); u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
			u[2] = (char)(0x80 | (cp & 0x3f)); n = 3;
		} else {
			u[0] = (char)(0xf0 | (cp >> 18)); u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
			u[2] = (char)(0x80 | ((cp >> 6) & 0x3f)); u[3] = (char)(0x80 | (cp & 0x3f));
			n = 4;
		}
		memcpy(u + n, "x&", 2);
		n += 2;
		mp_buf_reset(&e);
		mp_buf_reset(&d);
		assert_int_equal(imap_mutf7_encode(u, n, false, &e), MP_OK);
		for (size_t k = 0; k < e.len; k++)
			assert_true(e.data[k] >= 0x20 && e.data[k] <= 0x7e);
		assert_int_equal(imap_mutf7_decode(e.data, e.len, false, &d), MP_OK);
		assert_int_equal(d.len, n);
		assert_memory_equal(d.data, u, n);
	}
	mp_buf_free(&e);
	mp_buf_free(&d);
}

/* ------------------------------------------------------------ dates */

static void test_dates(void **state)
{
	(void)state;
	int64_t t = 0;
#define DT(s) imap_parse_datetime(s, strlen(s), &t)
	assert_int_equal(DT("17-Jul-1996 02:44:25 -0700"), MP_OK);
	assert_int_equal(t, 837596665);
	assert_int_equal(DT("17-jul-1996 09:44:25 +0000"), MP_OK);
	assert_int_equal(t, 837596665);
	assert_int_equal(DT(" 7-Jul-1996 09:44:25 +0000"), MP_OK);
	assert_int_equal(t, 837596665 - 10 * 86400);
	assert_int_equal(DT("07-Jul-1996 09:44:25 +0000"), MP_OK);
	assert_int_equal(t, 837596665 - 10 * 86400);
	assert_int_equal(DT("29-Feb-2000 00:00:00 +0000"), MP_OK);
	assert_int_equal(t, 951782400);
	assert_int_equal(DT("01-Jan-1970 00:00:00 +0100"), MP_OK);
	assert_int_equal(t, -3600);
	assert_int_equal(DT("31-Dec-9999 23:59:59 +0000"), MP_OK);
	assert_int_equal(t, 253402300799);
	assert_int_equal(DT("01-Jan-1900 00:00:00 +0000"), MP_OK);
	assert_int_equal(t, -2208988800);
	assert_int_equal(DT("30-Jun-2015 23:59:60 +0000"), MP_OK);
	static const char *const bad[] = {
		"", "7-Jul-1996 02:44:25 -0700", "32-Jul-1996 02:44:25 -0700",
		"00-Jul-1996 02:44:25 -0700", "29-Feb-2001 00:00:00 +0000",
		"29-Feb-1900 00:00:00 +0000", "17-Jux-1996 02:44:25 -0700",
		"17-Jul-1996 24:00:00 +0000", "17-Jul-1996 02:60:00 +0000",
		"17-Jul-1996 02:44:61 +0000", "17-Jul-1996 02:44:25 0700",
		"17-Jul-1996 02:44:25 +2400", "17-Jul-1996 02:44:25 +0060",
		"17-Jul-1996 02:44:25 -070", "17-Jul-1996 02:44:25 -07000",
		"17-Jul-96 02:44:25 -0700", "17-Jul-1899 02:44:25 -0700",
		"17-Jul-1996T02:44:25 -0700", "17-Jul-1996 2:44:25 -0700 ",
		"1x-Jul-1996 02:44:25 -0700", "17 Jul 1996 02:44:25 -0700",
		"17-Jul-1996 02:44:25 -07:0",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (DT(bad[i]) != MP_EINVAL)
			fail_msg("accepted date-time \"%s\"", bad[i]);
#undef DT

#define D(s) imap_parse_date(s, strlen(s), &t)
	assert_int_equal(D("1-Feb-1994"), MP_OK);
	assert_int_equal(t, 760060800);
	assert_int_equal(D("01-feb-1994"), MP_OK);
	assert_int_equal(t, 760060800);
	assert_int_equal(D("29-Feb-2000"), MP_OK);
	assert_int_equal(t, 951782400);
	static const char *const badd[] = { "", "1-Feb-94", "001-Feb-1994", " 1-Feb-1994",
					    "1-Feb-1994 ", "30-Feb-2000", "1-Fe-1994", "1-Feb-199x",
					    "a-Feb-1994", "1/Feb/1994" };
	for (size_t i = 0; i < sizeof(badd) / sizeof(badd[0]); i++)
		if (D(badd[i]) != MP_EINVAL)
			fail_msg("accepted date \"%s\"", badd[i]);
#undef D

	char out[27];
	imap_format_datetime(0, out, sizeof(out));
	assert_string_equal(out, "01-Jan-1970 00:00:00 +0000");
	imap_format_datetime(837596665, out, sizeof(out));
	assert_string_equal(out, "17-Jul-1996 09:44:25 +0000");
	imap_format_datetime(-1, out, sizeof(out));
	assert_string_equal(out, "31-Dec-1969 23:59:59 +0000");
	imap_format_datetime(INT64_MAX, out, sizeof(out));
	assert_string_equal(out, "31-Dec-9999 23:59:59 +0000");
	imap_format_datetime(INT64_MIN, out, sizeof(out));
	assert_string_equal(out, "01-Jan-0000 00:00:00 +0000");
	char small[26];
	imap_format_datetime(0, small, sizeof(small));
	assert_string_equal(small, "");
	/* format and parse agree */
	for (int64_t x = -2208988800; x < 253402300799; x += 12345678901) {
		imap_format_datetime(x, out, sizeof(out));
		assert_int_equal(imap_parse_datetime(out, strlen(out), &t), MP_OK);
		assert_int_equal(t, x);
	}
}

/* ------------------------------------------------------------ FETCH */

static void render_att(const struct imap_fetch_att *a, char *out, size_t outlen)
{
	int w = snprintf(out, outlen, "k=%d", (int)a->kind);
	size_t pos = (size_t)w;
	if (a->peek)
		pos += (size_t)snprintf(out + pos, outlen - pos, " peek");
	if (a->section.nparts > 0) {
		pos += (size_t)snprintf(out + pos, outlen - pos, " part=");
		for (unsigned i = 0; i < a->section.nparts; i++)
			pos += (size_t)snprintf(out + pos, outlen - pos, "%s%u", i ? "." : "",
						a->section.part[i]);
	}
	if (a->section.text != IMAP_SECT_NONE)
		pos += (size_t)snprintf(out + pos, outlen - pos, " t=%d", (int)a->section.text);
	for (size_t i = 0; i < a->section.nfields; i++)
		pos += (size_t)snprintf(out + pos, outlen - pos, "%s%s", i ? "," : " f=",
					a->section.fields[i]);
	if (a->partial)
		pos += (size_t)snprintf(out + pos, outlen - pos, " <%llu.%llu>",
					(unsigned long long)a->partial_start,
					(unsigned long long)a->partial_count);
	assert_true(pos < outlen);
}

struct fa_case {
	const char *in;
	const char *want;
};

static const struct fa_case fa_good[] = {
	{ "FLAGS", "k=0" },
	{ "internaldate", "k=1" },
	{ "RFC822.SIZE", "k=2" },
	{ "Envelope", "k=3" },
	{ "BODY", "k=4" },
	{ "BODYSTRUCTURE", "k=5" },
	{ "UID", "k=6" },
	{ "MODSEQ", "k=7" },
	{ "EMAILID", "k=8" },
	{ "THREADID", "k=9" },
	{ "RFC822", "k=10" },
	{ "RFC822.HEADER", "k=11 peek t=1" },
	{ "rfc822.text", "k=12 t=4" },
	{ "SAVEDATE", "k=16" },
	{ "BODY[]", "k=13" },
	{ "body.peek[]", "k=13 peek" },
	{ "BODY[HEADER]", "k=13 t=1" },
	{ "BODY[TEXT]<0.100>", "k=13 t=4 <0.100>" },
	{ "BODY[1]", "k=13 part=1" },
	{ "BODY[1.2.3]", "k=13 part=1.2.3" },
	{ "BODY.PEEK[1.2.mime]<0.512>", "k=13 peek part=1.2 t=5 <0.512>" },
	{ "BODY[2.HEADER]", "k=13 part=2 t=1" },
	{ "BODY[10.TEXT]", "k=13 part=10 t=4" },
	{ "BODY[HEADER.FIELDS (From To)]", "k=13 t=2 f=From,To" },
	{ "BODY.PEEK[HEADER.FIELDS.NOT (Subject \"X-A b\" \"q\\\"\")]",
	  "k=13 peek t=3 f=Subject,X-A b,q\"" },
	{ "BODY[1.HEADER.FIELDS (References)]<9223372036854775807.9223372036854775807>",
	  "k=13 part=1 t=2 f=References <9223372036854775807.9223372036854775807>" },
	{ "BODY[4294967295]", "k=13 part=4294967295" },
	{ "BINARY[]", "k=14" },
	{ "BINARY[1.2]<0.10>", "k=14 part=1.2 <0.10>" },
	{ "binary.peek[3]", "k=14 peek part=3" },
	{ "BINARY.SIZE[1]", "k=15 part=1" },
	{ "BINARY.SIZE[]", "k=15" },
	{ "BODY[1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.17.18.19.20.21.22.23.24.25.26.27.28.29.30."
	  "31.32]",
	  "k=13 part=1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.17.18.19.20.21.22.23.24.25.26.27.28."
	  "29.30.31.32" },
};

static const char *const fa_bad[] = {
	"", "FLAG", "FLAGSX", "ALL", "FAST", "FULL", "BODY[", "BODY]", "BODY[]x", "BODY[0]",
	"BODY[1.0]", "BODY[01]", "BODY[1.]", "BODY[.1]", "BODY[1..2]", "BODY[MIME]",
	"BODY[HEADER.FIELDS]", "BODY[HEADER.FIELDS ()]", "BODY[HEADER.FIELDS (a ]",
	"BODY[HEADER.FIELDS (a  b)]", "BODY[HEADER.FIELDS(a)]", "BODY[HEADER.FIELDS (\"\")]",
	"BODY[HEADER.FIELDS ( a)]", "BODY[TEXT", "BODY[TEXT]]", "BODY[1.TEXT.MIME]",
	"BODY[HEADERX]", "BODY[4294967296]", "BODY[]<>", "BODY[]<0>", "BODY[]<0.0>",
	"BODY[]<.1>", "BODY[]<1.>", "BODY[]<a.1>", "BODY[]<0.1", "BODY[]<0.1>x",
	"BODY[]<9223372036854775808.1>", "BODY[]<0.1.2>", "BODY.PEEK", "BODY.PEEK[",
	"BINARY[HEADER]", "BINARY[1.TEXT]", "BINARY[1.MIME]", "BINARY.SIZE[1]<0.1>",
	"BINARY.PEEK[TEXT]", "BINARY", "BINARY.SIZE",
	"BODY[1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.17.18.19.20.21.22.23.24.25.26.27.28.29.30."
	"31.32.33]",
};

static void test_fetch_att(void **state)
{
	(void)state;
	struct imap_parser *p = NULL;
	assert_int_equal(imap_parser_new(NULL, &p), MP_OK);
	char out[512];
	for (size_t i = 0; i < sizeof(fa_good) / sizeof(fa_good[0]); i++) {
		struct imap_fetch_att a;
		const char *error = NULL;
		int ret = imap_fetch_att_parse(p, fa_good[i].in, strlen(fa_good[i].in), &a, &error);
		if (ret != MP_OK)
			fail_msg("\"%s\": %s", fa_good[i].in, error);
		render_att(&a, out, sizeof(out));
		if (strcmp(out, fa_good[i].want) != 0)
			fail_msg("\"%s\": got %s want %s", fa_good[i].in, out, fa_good[i].want);
	}
	for (size_t i = 0; i < sizeof(fa_bad) / sizeof(fa_bad[0]); i++) {
		struct imap_fetch_att a;
		const char *error = NULL;
		if (imap_fetch_att_parse(p, fa_bad[i], strlen(fa_bad[i]), &a, &error) != MP_EINVAL)
			fail_msg("accepted \"%s\"", fa_bad[i]);
		assert_non_null(error);
	}

	/* attributes as the reader hands them over */
	static const char in[] = "a FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (From \"To\")]<0.10>)\r\n";
	const struct imap_command *c = parse_one(p, in, sizeof(in) - 1);
	assert_int_equal(c->nargs, 2);
	assert_int_equal(c->args[1].type, IMAP_ARG_LIST);
	assert_int_equal(c->args[1].nlist, 2);
	const struct imap_arg *l = c->args[1].list;
	struct imap_fetch_att a;
	const char *error;
	assert_int_equal(imap_fetch_att_parse(p, l[0].s, l[0].len, &a, &error), MP_OK);
	assert_int_equal(a.kind, IMAP_FA_UID);
	assert_int_equal(imap_fetch_att_parse(p, l[1].s, l[1].len, &a, &error), MP_OK);
	render_att(&a, out, sizeof(out));
	assert_string_equal(out, "k=13 peek t=2 f=From,To <0.10>");
	imap_parser_free(&p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_feed_table),
		cmocka_unit_test(test_command_size),
		cmocka_unit_test(test_big_append),
		cmocka_unit_test(test_pipelined_used),
		cmocka_unit_test(test_read_line),
		cmocka_unit_test(test_arg_helpers),
		cmocka_unit_test(test_write_string),
		cmocka_unit_test(test_mutf7),
		cmocka_unit_test(test_dates),
		cmocka_unit_test(test_fetch_att),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
