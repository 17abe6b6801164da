/*
 * Tests of imap_text: header block length and field iteration (CRLF and
 * bare LF, folding, malformed lines), get and filter, RFC 2047 decoding
 * (B and Q, charsets, language suffixes, adjacent words, broken words),
 * charset conversion, transfer encodings, folding and the RFC 5256 base
 * subject. Each input is also run from an exact-size heap copy so ASan
 * sees any read past the length. Deterministic: no clock, no randomness.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imap_text.h"
#include "mp_buf.h"
#include "mp_error.h"

static char *heap_copy(const char *s, size_t len)
{
	char *p = malloc(len > 0 ? len : 1);
	assert_non_null(p);
	if (len > 0)
		memcpy(p, s, len);
	return p;
}

/* ------------------------------------------------------------ headers */

static void test_hdr_block_len(void **state)
{
	(void)state;
	static const struct {
		const char *in;
		size_t want;
	} t[] = {
		{ "A: b\r\n\r\nbody", 8 },
		{ "A: b\n\nbody", 6 },
		{ "\r\nbody", 2 },
		{ "\nbody", 1 },
		{ "A: b\r\nC: d", 10 },       /* no empty line: all of it */
		{ "", 0 },
		{ "A: b\r\n  c\r\n\r\n", 13 },
		{ "A: b\r\n \r\nx\r\n\r\n", 14 }, /* a blank-only line is a continuation */
		{ "A: b\r\n\r", 7 },           /* lone CR at the end: not an empty line */
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		size_t len = strlen(t[i].in);
		char *c = heap_copy(t[i].in, len);
		size_t got = imap_hdr_block_len(c, len);
		if (got != t[i].want)
			fail_msg("case %zu: %zu != %zu", i, got, t[i].want);
		free(c);
	}
}

struct collect {
	char out[1024];
	size_t n;
	int stop_after;
};

static int collect_cb(void *ctx, const char *name, size_t name_len, const char *value,
		      size_t value_len)
{
	struct collect *c = ctx;
	int w = snprintf(c->out + strlen(c->out), sizeof(c->out) - strlen(c->out), "[%.*s|%.*s]",
			 (int)name_len, name, (int)value_len, value);
	assert_true(w > 0);
	c->n++;
	if (c->stop_after > 0 && (int)c->n == c->stop_after)
		return 42;
	return 0;
}

static void test_hdr_foreach(void **state)
{
	(void)state;
	const char *h = "From: a@b\r\nSubject: one\r\n two\r\nbogus line\r\n"
			"  stray\r\nX-Empty:\r\nObs-Name : v\nTo: c\r\n\r\nNot: a field\r\n";
	size_t len = strlen(h);
	char *c = heap_copy(h, len);
	struct collect col = { "", 0, 0 };

	assert_int_equal(imap_hdr_foreach(c, len, collect_cb, &col), 0);
	assert_string_equal(col.out, "[From| a@b][Subject| one\r\n two][X-Empty|][Obs-Name| v]"
				     "[To| c]");
	assert_int_equal(col.n, 5);

	/* A callback's non-zero return stops and comes back. */
	struct collect col2 = { "", 0, 2 };
	assert_int_equal(imap_hdr_foreach(c, len, collect_cb, &col2), 42);
	assert_int_equal(col2.n, 2);

	/* No final line end. */
	struct collect col3 = { "", 0, 0 };
	assert_int_equal(imap_hdr_foreach(c, 25, collect_cb, &col3), 0);
	assert_string_equal(col3.out, "[From| a@b][Subject| one]");
	free(c);
}

static void test_hdr_get(void **state)
{
	(void)state;
	const char *h = "Subject:   Hello\r\n\tworld  \r\nsubject: second\r\n"
			"X-A:\r\nFrom: x\n y\n\r\nBody: no\r\n";
	size_t len = imap_hdr_block_len(h, strlen(h));
	char *c = heap_copy(h, len);
	struct mp_buf b;

	mp_buf_init(&b, 0);
	assert_int_equal(imap_hdr_get(c, len, "SUBJECT", &b), 1);
	assert_string_equal(b.data, "Hello\tworld");
	mp_buf_reset(&b);
	assert_int_equal(imap_hdr_get(c, len, "from", &b), 1);
	assert_string_equal(b.data, "x y");
	mp_buf_reset(&b);
	assert_int_equal(imap_hdr_get(c, len, "X-A", &b), 1);
	assert_int_equal(b.len, 0);
	assert_string_equal(b.data, "");
	mp_buf_reset(&b);
	assert_int_equal(imap_hdr_get(c, len, "Body", &b), 0);
	assert_int_equal(imap_hdr_get(c, len, "Subj", &b), 0);
	assert_int_equal(b.len, 0);

	/* Output is appended to what the buffer holds. */
	mp_buf_reset(&b);
	assert_int_equal(mp_buf_append_str(&b, "pre:"), 0);
	assert_int_equal(imap_hdr_get(c, len, "from", &b), 1);
	assert_string_equal(b.data, "pre:x y");
	mp_buf_reset(&b);
	/* Over the caller's limit: the error comes back. */
	struct mp_buf small;
	mp_buf_init(&small, 3);
	assert_int_equal(imap_hdr_get(c, len, "Subject", &small), MP_ENOSPC);
	mp_buf_free(&small);
	mp_buf_free(&b);
	free(c);
}

static void test_hdr_filter(void **state)
{
	(void)state;
	const char *h = "From: a\r\nTo: b\r\n  c\r\nSubject: s\r\nto: d\nX: y";
	size_t len = strlen(h);
	char *c = heap_copy(h, len);
	const char *names[] = { "TO", "x" };
	struct mp_buf b;

	mp_buf_init(&b, 0);
	assert_int_equal(imap_hdr_filter(c, len, names, 2, false, &b), 0);
	assert_string_equal(b.data, "To: b\r\n  c\r\nto: d\nX: y\r\n\r\n");
	mp_buf_reset(&b);
	assert_int_equal(imap_hdr_filter(c, len, names, 2, true, &b), 0);
	assert_string_equal(b.data, "From: a\r\nSubject: s\r\n\r\n");
	mp_buf_reset(&b);
	assert_int_equal(imap_hdr_filter(c, len, names, 0, false, &b), 0);
	assert_string_equal(b.data, "\r\n");
	mp_buf_free(&b);
	free(c);
}

/* ------------------------------------------------------------ RFC 2047 */

static void check_decode(const char *in, const char *want)
{
	size_t len = strlen(in);
	char *c = heap_copy(in, len);
	struct mp_buf b;

	mp_buf_init(&b, 0);
	assert_int_equal(imap_text_decode_header(c, len, &b), 0);
	assert_non_null(b.data);
	if (strcmp(b.data, want) != 0)
		fail_msg("decode(%s) = \"%s\", want \"%s\"", in, b.data, want);
	/* Every prefix decodes without error (and within bounds). */
	for (size_t k = 0; k < len; k++) {
		mp_buf_reset(&b);
		char *p = heap_copy(in, k);
		assert_int_equal(imap_text_decode_header(p, k, &b), 0);
		free(p);
	}
	mp_buf_free(&b);
	free(c);
}

static void test_decode_header(void **state)
{
	(void)state;
	check_decode("plain text", "plain text");
	check_decode("=?UTF-8?B?SGVsbG8gV8O2cmxk?=", "Hello W\xc3\xb6rld");
	check_decode("=?utf-8?b?SGVsbG8=?=", "Hello");
	check_decode("=?ISO-8859-1?Q?Caf=E9_au_lait?=", "Caf\xc3\xa9 au lait");
	check_decode("=?iso-8859-1?q?a?= =?iso-8859-1?q?b?=", "ab");  /* adjacent: blanks go */
	check_decode("=?UTF-8?Q?a?=\r\n =?UTF-8?Q?b?= c", "ab c");
	check_decode("x =?UTF-8?Q?a?= y", "x a y");
	check_decode("=?UTF-8*en?Q?lang?=", "lang");                 /* RFC 2231 language */
	check_decode("=?ISO-8859-15*de-DE?Q?=A4?=", "\xe2\x82\xac"); /* euro sign */
	/* A UTF-8 character split across two B words joins up. */
	check_decode("=?UTF-8?B?w6k=?==?UTF-8?B?w6k=?=", "\xc3\xa9\xc3\xa9");
	check_decode("=?UTF-8?B?ww==?= =?UTF-8?B?qQ==?=", "\xc3\xa9");
	check_decode("=?UTF-8?Q?=C3?=\r\n\t=?utf-8?Q?=A9?=", "\xc3\xa9");
	/* Different charsets next to each other. */
	check_decode("=?ISO-8859-1?Q?=E9?= =?UTF-8?Q?=C3=A9?=", "\xc3\xa9\xc3\xa9");
	/* Broken words stay as written. */
	check_decode("=?UTF-8?X?abc?=", "=?UTF-8?X?abc?=");
	check_decode("=?UTF-8?Q?no end", "=?UTF-8?Q?no end");
	check_decode("=??Q?x?=", "=??Q?x?=");
	check_decode("=?UTF-8?Q?a b?=", "=?UTF-8?Q?a b?=");
	/* Unknown charset: the bytes, made valid UTF-8. */
	check_decode("=?X-NOPE?Q?abc=FF?=", "abc\xef\xbf\xbd");
	/* Raw 8-bit: valid UTF-8 kept, invalid bytes U+FFFD. */
	check_decode("caf\xc3\xa9 \xff!", "caf\xc3\xa9 \xef\xbf\xbd!");
	check_decode("\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"); /* surrogate */
	check_decode("\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd");                 /* overlong */
	/* Empty encoded text; trailing blanks after a word kept. */
	check_decode("=?UTF-8?B?" "?=x", "x");
	check_decode("=?UTF-8?Q?a?=  ", "a  ");
	/* Words glued to text (common in the wild). */
	check_decode("Re:=?UTF-8?Q?=C3=A9t=C3=A9?=", "Re:\xc3\xa9t\xc3\xa9");
	check_decode("", "");
}

static void test_to_utf8(void **state)
{
	(void)state;
	struct mp_buf b;

	mp_buf_init(&b, 0);
	assert_int_equal(imap_text_to_utf8("ISO-8859-1", "\xe9t\xe9", 3, &b), 0);
	assert_string_equal(b.data, "\xc3\xa9t\xc3\xa9");
	mp_buf_reset(&b);
	assert_int_equal(imap_text_to_utf8("windows-1252", "\x80", 1, &b), 0);
	assert_string_equal(b.data, "\xe2\x82\xac");
	mp_buf_reset(&b);
	assert_int_equal(imap_text_to_utf8("koi8-r", "\xf0\xd2\xc9", 3, &b), 0);
	assert_string_equal(b.data, "\xd0\x9f\xd1\x80\xd0\xb8");
	mp_buf_reset(&b);
	/* Fast paths sanitise. */
	assert_int_equal(imap_text_to_utf8("utf-8", "a\xffz", 3, &b), 0);
	assert_string_equal(b.data, "a\xef\xbf\xbdz");
	mp_buf_reset(&b);
	assert_int_equal(imap_text_to_utf8("US-ASCII", "abc", 3, &b), 0);
	assert_string_equal(b.data, "abc");
	mp_buf_reset(&b);
	assert_int_equal(imap_text_to_utf8(NULL, "abc", 3, &b), 0);
	assert_string_equal(b.data, "abc");
	mp_buf_reset(&b);
	/* Invalid input in a real charset: U+FFFD, go on. */
	assert_int_equal(imap_text_to_utf8("SHIFT_JIS", "a\xa0z", 3, &b), 0);
	assert_string_equal(b.data, "a\xef\xbf\xbdz");
	mp_buf_reset(&b);
	/* Truncated multibyte at the end. */
	assert_int_equal(imap_text_to_utf8("UTF-16LE", "a\x00" "b", 3, &b), 0);
	assert_string_equal(b.data, "a\xef\xbf\xbd");
	mp_buf_reset(&b);
	/* Stateful charset with a shift sequence. */
	assert_int_equal(imap_text_to_utf8("ISO-2022-JP", "\x1b$B$\"\x1b(Bx", 9, &b), 0);
	assert_string_equal(b.data, "\xe3\x81\x82x");
	mp_buf_reset(&b);
	/* Long input crosses the conversion chunk. */
	char big[5000];
	memset(big, '\xe9', sizeof(big));
	assert_int_equal(imap_text_to_utf8("latin1", big, sizeof(big), &b), 0);
	assert_int_equal(b.len, 2 * sizeof(big));
	mp_buf_reset(&b);
	/* Unknown or unsafe names. */
	assert_int_equal(imap_text_to_utf8("x-no-such-charset", "a", 1, &b), MP_EUNIMPL);
	assert_int_equal(imap_text_to_utf8("UTF-8//TRANSLIT", "a", 1, &b), MP_EUNIMPL);
	assert_int_equal(imap_text_to_utf8("../../etc/passwd", "a", 1, &b), MP_EUNIMPL);
	assert_int_equal(imap_text_to_utf8("", "a", 1, &b), MP_EUNIMPL);
	assert_int_equal(b.len, 0);
	mp_buf_free(&b);
}

static void check_cte(const char *cte, const char *in, const char *want)
{
	size_t len = strlen(in);
	char *c = heap_copy(in, len);
	struct mp_buf b;

	mp_buf_init(&b, 0);
	assert_int_equal(imap_text_decode_cte(cte, c, len, &b), 0);
	assert_non_null(b.data);
	if (b.len != strlen(want) || memcmp(b.data, want, b.len) != 0)
		fail_msg("cte %s (%s) = \"%s\", want \"%s\"", cte ? cte : "NULL", in, b.data, want);
	mp_buf_free(&b);
	free(c);
}

static void test_decode_cte(void **state)
{
	(void)state;
	check_cte(NULL, "as is=41", "as is=41");
	check_cte("", "x", "x");
	check_cte("7BIT", "x", "x");
	check_cte(" 8bit ", "\xe9", "\xe9");
	check_cte("Binary", "a\r\nb", "a\r\nb");
	check_cte("base64", "SGVsbG8sIFdvcmxkIQ==", "Hello, World!");
	check_cte("BASE64", "SGVs\r\nbG8s\n IFdv cmxk\tIQ==\r\n", "Hello, World!");
	check_cte("base64", "SGVsbG8", "Hello");        /* missing padding */
	check_cte("base64", "S*G!V@s#bG8=", "Hello");   /* junk skipped */
	check_cte("base64", "", "");
	check_cte("quoted-printable", "Caf=E9 =3D ok", "Caf\xe9 = ok");
	check_cte("Quoted-Printable", "soft=\r\nbreak=\nhere", "softbreakhere");
	check_cte("quoted-printable", "trail   \r\nx\t\nend  ", "trail\r\nx\nend");
	check_cte("quoted-printable", "bad=ZZ=4", "bad=ZZ=4");
	check_cte("quoted-printable", "pad= \r\nx", "padx");
	check_cte("quoted-printable", "lower=e9", "lower\xe9");
	check_cte("quoted-printable", "end=", "end");
	check_cte("quoted-printable", "a_b", "a_b");    /* '_' only in RFC 2047 Q */

	struct mp_buf b;
	mp_buf_init(&b, 0);
	assert_int_equal(imap_text_decode_cte("x-uuencode", "a", 1, &b), MP_EUNIMPL);
	assert_int_equal(imap_text_decode_cte("base32", "a", 1, &b), MP_EUNIMPL);
	/* A large base64 body crosses the decoder's chunk. */
	char *big = malloc(40000);
	assert_non_null(big);
	for (size_t i = 0; i < 40000; i += 4)
		memcpy(big + i, "QUJD", 4);
	assert_int_equal(imap_text_decode_cte("base64", big, 40000, &b), 0);
	assert_int_equal(b.len, 30000);
	assert_memory_equal(b.data + 29997, "ABC", 3);
	free(big);
	mp_buf_free(&b);
}

static void check_fold(const char *in, const char *want)
{
	size_t len = strlen(in);
	char *c = heap_copy(in, len);
	struct mp_buf b;

	mp_buf_init(&b, 0);
	assert_int_equal(imap_text_fold(c, len, &b), 0);
	if (strcmp(b.data, want) != 0)
		fail_msg("fold(%s) = \"%s\", want \"%s\"", in, b.data, want);
	mp_buf_free(&b);
	free(c);
}

static void test_fold(void **state)
{
	(void)state;
	check_fold("Hello WORLD", "hello world");
	check_fold("a \t\r\n  b\n", "a b ");
	check_fold("\xc3\x89T\xc3\x89", "\xc3\xa9t\xc3\xa9");            /* ÉTÉ */
	check_fold("\xc3\x9f\xc3\x97", "\xc3\x9f\xc3\x97");              /* ß × unchanged */
	check_fold("\xc4\x80\xc5\x81\xc5\xb8\xc5\xbd", "\xc4\x81\xc5\x82\xc3\xbf\xc5\xbe"); /* Ā Ł Ÿ Ž */
	check_fold("\xc4\xb0", "i");                                      /* İ */
	check_fold("\xce\x91\xce\xa3\xce\xa9\xce\x86\xcf\x82",
		   "\xce\xb1\xcf\x83\xcf\x89\xce\xac\xcf\x83");           /* ΑΣΩΆς */
	check_fold("\xd0\x9f\xd0\xa0\xd0\x98\xd0\x92\xd0\x95\xd0\xa2\xd0\x81",
		   "\xd0\xbf\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82\xd1\x91"); /* ПРИВЕТЁ */
	check_fold("\xd2\x90", "\xd2\x91");                               /* Ґ */
	check_fold("\xef\xbc\xa1", "\xef\xbd\x81");                       /* fullwidth A */
	check_fold("\xe1\xba\xa0", "\xe1\xba\xa1");                       /* Ạ */
	check_fold("\xd4\xb1", "\xd5\xa1");   /* Armenian: from towlower_l (C.UTF-8) */
	check_fold("\xff" "A", "\xef\xbf\xbd" "a");
	check_fold("\xe6\x97\xa5\xe6\x9c\xac", "\xe6\x97\xa5\xe6\x9c\xac");
	check_fold("\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80");
	check_fold("", "");
}

static void test_contains(void **state)
{
	(void)state;
	assert_true(imap_text_contains("hello world", 11, "lo w", 4));
	assert_true(imap_text_contains("hello", 5, "", 0));
	assert_true(imap_text_contains("", 0, "", 0));
	assert_false(imap_text_contains("hello", 5, "hello!", 6));
	assert_false(imap_text_contains("hello", 5, "Hello", 5));   /* inputs are folded */
	assert_true(imap_text_contains("a\0b", 3, "\0b", 2));
	assert_false(imap_text_contains("hel", 3, "lo", 2));
}

static void check_base(const char *in, const char *want)
{
	size_t len = strlen(in);
	char *c = heap_copy(in, len);
	struct mp_buf b;

	mp_buf_init(&b, 0);
	assert_int_equal(imap_text_base_subject(c, len, &b), 0);
	if (strcmp(b.data != NULL ? b.data : "", want) != 0)
		fail_msg("base(%s) = \"%s\", want \"%s\"", in, b.data, want);
	mp_buf_free(&b);
	free(c);
}

static void test_base_subject(void **state)
{
	(void)state;
	check_base("hello", "hello");
	check_base("re: hello", "hello");
	check_base("Re: RE: fwd: Fw: hello", "hello");
	check_base("re[2]: hello", "hello");
	check_base("[list] re: hello", "hello");
	check_base("[list] [x] hello", "hello");
	check_base("[list]", "[list]");              /* blob with nothing after stays */
	check_base("hello (fwd)", "hello");
	check_base("hello (fwd) (FWD)  ", "hello");
	check_base("[fwd: re: hello]", "hello");
	check_base("[fwd: [fwd: hello (fwd)]]", "hello");
	check_base("  re:   hello\t\tthere ", "hello there");
	check_base("re: ", "");
	check_base("", "");
	check_base("reply: x", "reply: x");
	check_base("fwd hello", "fwd hello");
	check_base("re : x", "x");
	check_base("re : [blob]: x", ": x");  /* the blob goes by (4), the colon stays */
	check_base("re [a]: x", "x");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hdr_block_len),
		cmocka_unit_test(test_hdr_foreach),
		cmocka_unit_test(test_hdr_get),
		cmocka_unit_test(test_hdr_filter),
		cmocka_unit_test(test_decode_header),
		cmocka_unit_test(test_to_utf8),
		cmocka_unit_test(test_decode_cte),
		cmocka_unit_test(test_fold),
		cmocka_unit_test(test_contains),
		cmocka_unit_test(test_base_subject),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
