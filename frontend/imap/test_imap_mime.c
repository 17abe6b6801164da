/*
 * Tests of imap_mime: ENVELOPE, BODY and BODYSTRUCTURE of sample messages
 * compared with strings computed by hand from RFC 3501 §7.4.2 (sizes in
 * octets, a part's body ending before the line end that precedes the next
 * delimiter, lines = LFs in the body), the sections of RFC 3501 §6.4.5
 * checked against the bytes they must cover, address lists and RFC 2231
 * parameters in tables, bad mail (broken and missing boundaries, headers
 * without body), the depth and part limits with 1000-deep nesting, and
 * the packed blob: every sample round-trips to the same strings and
 * sections, every truncation and a bad offset are refused, and every
 * single-byte corruption is either refused or still answers inside the
 * message. Each message is parsed from an exact-size heap copy, so ASan
 * sees any read past its end. Deterministic: no clock, no randomness.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imap_mime.h"
#include "mp_buf.h"
#include "mp_error.h"

/* ------------------------------------------------------------ helpers */

struct parsed {
	char *copy;              /* the message, exactly len bytes */
	size_t len;
	struct imap_mime *m;
};

static void parse_lim(struct parsed *p, const char *msg, size_t len,
		      const struct imap_mime_limits *lim)
{
	p->len = len;
	p->copy = malloc(len > 0 ? len : 1);
	assert_non_null(p->copy);
	if (len > 0)
		memcpy(p->copy, msg, len);
	p->m = NULL;
	assert_int_equal(imap_mime_parse(p->copy, len, lim, &p->m), MP_OK);
	assert_non_null(p->m);
	assert_true(imap_mime_size(p->m) == len);
}

static void parse(struct parsed *p, const char *msg)
{
	parse_lim(p, msg, strlen(msg), NULL);
}

static void parsed_free(struct parsed *p)
{
	imap_mime_free(&p->m);
	assert_null(p->m);
	imap_mime_free(&p->m); /* safe twice */
	free(p->copy);
}

static char *body_of(const struct imap_mime *m, bool ext)
{
	struct mp_buf b;
	mp_buf_init(&b, 0);
	assert_int_equal(imap_mime_body(m, ext, &b), MP_OK);
	size_t n;
	char *s = mp_buf_steal(&b, &n);
	assert_non_null(s);
	return s;
}

static void expect_body(const struct imap_mime *m, const char *body, const char *bs)
{
	char *s = body_of(m, false);
	assert_string_equal(s, body);
	free(s);
	s = body_of(m, true);
	assert_string_equal(s, bs);
	free(s);
}

static void expect_envelope(const struct imap_mime *m, const char *env)
{
	struct mp_buf b;
	mp_buf_init(&b, 0);
	assert_int_equal(imap_mime_envelope(m, &b), MP_OK);
	assert_string_equal(b.data, env);
	mp_buf_free(&b);
}

/* "2.1.MIME", "TEXT", "" ... into a part path and a section kind. */
static void sect_parse(const char *spec, uint32_t *parts, unsigned *np,
		       enum imap_mime_sect *sect)
{
	*np = 0;
	*sect = IMAP_MIME_SECT_BODY;
	while (*spec != '\0') {
		if (*spec >= '0' && *spec <= '9') {
			char *end;
			unsigned long v = strtoul(spec, &end, 10);
			assert_true(*np < 32);
			parts[(*np)++] = (uint32_t)v;
			spec = end;
		} else if (strncmp(spec, "HEADER", 6) == 0) {
			*sect = IMAP_MIME_SECT_HEADER;
			spec += 6;
		} else if (strncmp(spec, "TEXT", 4) == 0) {
			*sect = IMAP_MIME_SECT_TEXT;
			spec += 4;
		} else if (strncmp(spec, "MIME", 4) == 0) {
			*sect = IMAP_MIME_SECT_MIME;
			spec += 4;
		} else {
			assert_int_equal(*spec, '.');
			spec++;
		}
	}
}

/* The section's bytes must be exactly want (NULL: MP_ENOENT); cte and
 * is_multipart are checked when cte is not NULL. */
static void expect_sect(const struct parsed *p, const char *spec, const char *want,
			const char *cte, bool multi)
{
	uint32_t parts[32];
	unsigned np;
	enum imap_mime_sect sect;
	struct imap_mime_span sp;

	sect_parse(spec, parts, &np, &sect);
	int ret = imap_mime_section(p->m, parts, np, sect, &sp);
	if (want == NULL) {
		if (ret != MP_ENOENT)
			fail_msg("section [%s]: expected ENOENT, got %d", spec, ret);
		return;
	}
	if (ret != MP_OK)
		fail_msg("section [%s]: %d", spec, ret);
	assert_true(sp.off <= p->len && sp.len <= p->len - sp.off);
	if (sp.len != strlen(want) || memcmp(p->copy + sp.off, want, sp.len) != 0)
		fail_msg("section [%s]: got <%.*s>, want <%s>", spec, (int)sp.len,
			 p->copy + sp.off, want);
	if (cte != NULL) {
		assert_string_equal(sp.cte, cte);
		assert_int_equal(sp.is_multipart, multi);
	}
}

/* Pack, unpack, and compare strings and a grid of sections; then truncate
 * and corrupt the blob. */
static void check_roundtrip(const struct parsed *p)
{
	uint8_t *blob;
	size_t blen;
	struct imap_mime *u = NULL;

	assert_int_equal(imap_mime_pack(p->m, &blob, &blen), MP_OK);
	assert_int_equal(imap_mime_unpack(blob, blen, &u), MP_OK);
	assert_true(imap_mime_size(u) == p->len);
	for (int ext = 0; ext < 2; ext++) {
		char *a = body_of(p->m, ext != 0), *b = body_of(u, ext != 0);
		assert_string_equal(a, b);
		free(a);
		free(b);
	}
	struct mp_buf env;
	mp_buf_init(&env, 0);
	assert_int_equal(imap_mime_envelope(u, &env), MP_ENOENT);
	mp_buf_free(&env);

	uint32_t path[3];
	for (unsigned np = 0; np <= 3; np++) {
		unsigned combos = np == 0 ? 1 : np == 1 ? 5 : np == 2 ? 25 : 125;
		for (unsigned x = 0; x < combos; x++) {
			unsigned v = x;
			for (unsigned k = 0; k < np; k++) {
				path[k] = v % 5;
				v /= 5;
			}
			for (int s = IMAP_MIME_SECT_BODY; s <= IMAP_MIME_SECT_MIME; s++) {
				struct imap_mime_span a, b;
				int ra = imap_mime_section(p->m, path, np, (enum imap_mime_sect)s, &a);
				int rb = imap_mime_section(u, path, np, (enum imap_mime_sect)s, &b);
				assert_int_equal(ra, rb);
				if (ra != MP_OK)
					continue;
				assert_true(a.off == b.off && a.len == b.len);
				assert_string_equal(a.cte, b.cte);
				assert_int_equal(a.is_multipart, b.is_multipart);
			}
		}
	}
	imap_mime_free(&u);

	/* Every truncation is refused. */
	for (size_t cut = 0; cut < blen; cut++) {
		assert_int_equal(imap_mime_unpack(blob, cut, &u), MP_EPROTO);
		assert_null(u);
	}
	/* Every corrupted byte: refused, or sections still inside the size. */
	for (size_t i = 0; i < blen; i++) {
		uint8_t save = blob[i];
		blob[i] ^= 0x41;
		int ret = imap_mime_unpack(blob, blen, &u);
		assert_true(ret == MP_OK || ret == MP_EPROTO);
		if (ret == MP_OK) {
			for (uint32_t n = 0; n < 4; n++) {
				struct imap_mime_span sp;
				for (int s = IMAP_MIME_SECT_BODY; s <= IMAP_MIME_SECT_MIME; s++) {
					if (imap_mime_section(u, &n, n == 0 ? 0 : 1,
							      (enum imap_mime_sect)s, &sp) == MP_OK)
						assert_true(sp.off <= imap_mime_size(u) &&
							    sp.len <= imap_mime_size(u) - sp.off);
				}
			}
			imap_mime_free(&u);
		}
		blob[i] = save;
	}
	free(blob);
}

/* ------------------------------------------------------------ messages */

static const char msg_plain[] =
	"From: \"Joe Q. Public\" <john.q.public@example.com>\r\n"
	"To: Mary Smith <mary@x.test>, jdoe@example.org, Who? <one@y.test>\r\n"
	"Cc: <boss@nil.test>, \"Giant; \\\"Big\\\" Box\" <sysservices@example.net>\r\n"
	"Subject: Saying Hello\r\n"
	"Date: Fri, 21 Nov 1997 09:55:06 -0600\r\n"
	"Message-ID: <1234@local.machine.example>\r\n"
	"\r\n"
	"This is a message just to say hello.\r\n"
	"So, \"Hello\".\r\n";

static void test_plain(void **state)
{
	struct parsed p;
	(void)state;
	parse(&p, msg_plain);
	expect_envelope(p.m,
		"(\"Fri, 21 Nov 1997 09:55:06 -0600\" \"Saying Hello\" "
		"((\"Joe Q. Public\" NIL \"john.q.public\" \"example.com\")) "
		"((\"Joe Q. Public\" NIL \"john.q.public\" \"example.com\")) "
		"((\"Joe Q. Public\" NIL \"john.q.public\" \"example.com\")) "
		"((\"Mary Smith\" NIL \"mary\" \"x.test\")(NIL NIL \"jdoe\" \"example.org\")"
		"(\"Who?\" NIL \"one\" \"y.test\")) "
		"((NIL NIL \"boss\" \"nil.test\")(\"Giant; \\\"Big\\\" Box\" NIL \"sysservices\" "
		"\"example.net\")) NIL NIL \"<1234@local.machine.example>\")");
	/* body: 38 + 14 octets, 2 lines */
	expect_body(p.m, "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 52 2)",
		    "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 52 2 NIL NIL "
		    "NIL NIL)");
	const char *text = strstr(msg_plain, "\r\n\r\n") + 4;
	char *hdr = strndup(msg_plain, (size_t)(text - msg_plain));
	assert_non_null(hdr);
	expect_sect(&p, "", msg_plain, "", false);
	expect_sect(&p, "HEADER", hdr, NULL, false);
	expect_sect(&p, "TEXT", text, NULL, false);
	/* a message that is not multipart has one part, itself */
	expect_sect(&p, "1", text, "7bit", false);
	expect_sect(&p, "1.MIME", hdr, "", false);
	expect_sect(&p, "MIME", NULL, NULL, false);
	expect_sect(&p, "2", NULL, NULL, false);
	expect_sect(&p, "0", NULL, NULL, false);
	expect_sect(&p, "1.1", NULL, NULL, false);
	expect_sect(&p, "1.HEADER", NULL, NULL, false);
	expect_sect(&p, "1.TEXT", NULL, NULL, false);
	free(hdr);
	check_roundtrip(&p);
	parsed_free(&p);
}

static void test_no_header_and_header_only(void **state)
{
	struct parsed p;
	(void)state;

	/* No header: an empty header block (its blank line) and the body. */
	parse(&p, "\r\nbody\r\n");
	expect_envelope(p.m, "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)");
	expect_body(p.m, "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 6 1)",
		    "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 6 1 NIL NIL "
		    "NIL NIL)");
	expect_sect(&p, "HEADER", "\r\n", NULL, false);
	expect_sect(&p, "TEXT", "body\r\n", NULL, false);
	check_roundtrip(&p);
	parsed_free(&p);

	/* Header only, no blank line: no body. */
	static const char hdr_only[] = "Subject: only\r\nContent-Type: text/plain; charset=utf-8\r\n";
	parse(&p, hdr_only);
	expect_envelope(p.m, "(NIL \"only\" NIL NIL NIL NIL NIL NIL NIL NIL)");
	expect_body(p.m, "(\"text\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"7BIT\" 0 0)",
		    "(\"text\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"7BIT\" 0 0 NIL NIL "
		    "NIL NIL)");
	expect_sect(&p, "HEADER", hdr_only, NULL, false);
	expect_sect(&p, "TEXT", "", NULL, false);
	expect_sect(&p, "1", "", "7bit", false);
	check_roundtrip(&p);
	parsed_free(&p);

	/* Not even a line end. */
	parse(&p, "Subject: x");
	expect_sect(&p, "HEADER", "Subject: x", NULL, false);
	expect_sect(&p, "TEXT", "", NULL, false);
	parsed_free(&p);

	/* The empty message. */
	parse_lim(&p, "", 0, NULL);
	expect_body(p.m, "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 0 0)",
		    "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 0 0 NIL NIL "
		    "NIL NIL)");
	expect_sect(&p, "", "", "", false);
	check_roundtrip(&p);
	parsed_free(&p);
}

static const char msg_alt[] =
	"From: a@example.com\r\n"
	"Content-Type: multipart/alternative; boundary=\"b1\"\r\n"
	"\r\n"
	"preamble\r\n"
	"--b1\r\n"
	"Content-Type: text/plain; charset=utf-8\r\n"
	"Content-Transfer-Encoding: quoted-printable\r\n"
	"\r\n"
	"caf=C3=A9\r\n"
	"line 2\r\n"
	"\r\n"
	"--b1\r\n"
	"Content-Type: text/html; charset=\"utf-8\"\r\n"
	"\r\n"
	"<p>caf&eacute;</p>\r\n"
	"--b1--\r\n"
	"epilogue\r\n";

static void test_alternative(void **state)
{
	struct parsed p;
	(void)state;
	parse(&p, msg_alt);
	expect_body(p.m,
		    "((\"text\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"quoted-printable\" 19 2)"
		    "(\"text\" \"html\" (\"charset\" \"utf-8\") NIL NIL \"7BIT\" 18 0) \"alternative\")",
		    "((\"text\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"quoted-printable\" 19 2 "
		    "NIL NIL NIL NIL)(\"text\" \"html\" (\"charset\" \"utf-8\") NIL NIL \"7BIT\" 18 0 "
		    "NIL NIL NIL NIL) \"alternative\" (\"boundary\" \"b1\") NIL NIL NIL)");
	expect_sect(&p, "1", "caf=C3=A9\r\nline 2\r\n", "quoted-printable", false);
	expect_sect(&p, "2", "<p>caf&eacute;</p>", "7bit", false);
	expect_sect(&p, "1.MIME",
		    "Content-Type: text/plain; charset=utf-8\r\n"
		    "Content-Transfer-Encoding: quoted-printable\r\n\r\n", "", false);
	expect_sect(&p, "2.MIME", "Content-Type: text/html; charset=\"utf-8\"\r\n\r\n", NULL,
		    false);
	expect_sect(&p, "TEXT", strstr(msg_alt, "preamble"), NULL, false);
	expect_sect(&p, "", msg_alt, "", true);
	expect_sect(&p, "3", NULL, NULL, false);
	expect_sect(&p, "1.1", NULL, NULL, false);
	check_roundtrip(&p);
	parsed_free(&p);

	/* The same with bare LFs: one octet less per line, same lines. */
	char lf[sizeof(msg_alt)];
	size_t n = 0;
	for (size_t i = 0; msg_alt[i] != '\0'; i++) {
		if (msg_alt[i] != '\r')
			lf[n++] = msg_alt[i];
	}
	lf[n] = '\0';
	parse(&p, lf);
	expect_body(p.m,
		    "((\"text\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"quoted-printable\" 17 2)"
		    "(\"text\" \"html\" (\"charset\" \"utf-8\") NIL NIL \"7BIT\" 18 0) \"alternative\")",
		    "((\"text\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"quoted-printable\" 17 2 "
		    "NIL NIL NIL NIL)(\"text\" \"html\" (\"charset\" \"utf-8\") NIL NIL \"7BIT\" 18 0 "
		    "NIL NIL NIL NIL) \"alternative\" (\"boundary\" \"b1\") NIL NIL NIL)");
	expect_sect(&p, "1", "caf=C3=A9\nline 2\n", "quoted-printable", false);
	check_roundtrip(&p);
	parsed_free(&p);
}

static const char msg_mixed[] =
	"From: a@example.com\r\n"
	"Subject: report\r\n"
	"MIME-Version: 1.0\r\n"
	"Content-Type: multipart/mixed;\r\n boundary=\"==mix==\"\r\n"
	"\r\n"
	"--==mix==\r\n"
	"Content-Type: text/plain; charset=us-ascii\r\n"
	"\r\n"
	"See attached.\r\n"
	"--==mix==\r\n"
	"Content-Type: application/pdf; name=\"report.pdf\"\r\n"
	"Content-Transfer-Encoding: BASE64\r\n"
	"Content-Disposition: attachment; filename=\"report.pdf\";\r\n\tsize=12\r\n"
	"Content-ID: <part2@example.com>\r\n"
	"Content-Description: The report\r\n"
	"Content-Language: en-GB, fr\r\n"
	"Content-Location: report.pdf\r\n"
	"Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\r\n"
	"\r\n"
	"JVBERi0xLjQK\r\n"
	"AAAA\r\n"
	"--==mix==--\r\n";

static void test_mixed_attachment(void **state)
{
	struct parsed p;
	(void)state;
	parse(&p, msg_mixed);
	expect_body(p.m,
		    "((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 13 0)"
		    "(\"application\" \"pdf\" (\"name\" \"report.pdf\") \"<part2@example.com>\" "
		    "\"The report\" \"BASE64\" 18) \"mixed\")",
		    "((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 13 0 NIL NIL "
		    "NIL NIL)(\"application\" \"pdf\" (\"name\" \"report.pdf\") "
		    "\"<part2@example.com>\" \"The report\" \"BASE64\" 18 "
		    "\"Q2hlY2sgSW50ZWdyaXR5IQ==\" (\"attachment\" (\"filename\" \"report.pdf\" "
		    "\"size\" \"12\")) (\"en-GB\" \"fr\") \"report.pdf\") \"mixed\" "
		    "(\"boundary\" \"==mix==\") NIL NIL NIL)");
	expect_sect(&p, "1", "See attached.", "7bit", false);
	expect_sect(&p, "2", "JVBERi0xLjQK\r\nAAAA", "base64", false);
	expect_sect(&p, "2.HEADER", NULL, NULL, false);
	check_roundtrip(&p);
	parsed_free(&p);
}

static const char msg_nested[] =
	"Content-Type: multipart/mixed; boundary=outer\r\n"
	"\r\n"
	"--outer\r\n"
	"Content-Type: multipart/alternative; boundary=inner\r\n"
	"\r\n"
	"--inner\r\n"
	"\r\n"
	"plain\r\n"
	"--inner\r\n"
	"Content-Type: text/html\r\n"
	"\r\n"
	"<b>html</b>\r\n"
	"--inner--\r\n"
	"--outer\r\n"
	"Content-Type: image/png\r\n"
	"Content-Transfer-Encoding: base64\r\n"
	"\r\n"
	"iVBORw0KGgo=\r\n"
	"--outer--\r\n";

static void test_nested_multipart(void **state)
{
	struct parsed p;
	(void)state;
	parse(&p, msg_nested);
	expect_body(p.m,
		    "(((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 5 0)"
		    "(\"text\" \"html\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 11 0) "
		    "\"alternative\")(\"image\" \"png\" NIL NIL NIL \"base64\" 12) \"mixed\")",
		    "(((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 5 0 NIL NIL "
		    "NIL NIL)(\"text\" \"html\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 11 0 "
		    "NIL NIL NIL NIL) \"alternative\" (\"boundary\" \"inner\") NIL NIL NIL)"
		    "(\"image\" \"png\" NIL NIL NIL \"base64\" 12 NIL NIL NIL NIL) \"mixed\" "
		    "(\"boundary\" \"outer\") NIL NIL NIL)");
	expect_sect(&p, "1",
		    "--inner\r\n\r\nplain\r\n--inner\r\nContent-Type: text/html\r\n\r\n"
		    "<b>html</b>\r\n--inner--", "", true);
	expect_sect(&p, "1.MIME", "Content-Type: multipart/alternative; boundary=inner\r\n\r\n",
		    NULL, false);
	expect_sect(&p, "1.1", "plain", "7bit", false);
	expect_sect(&p, "1.1.MIME", "\r\n", NULL, false);
	expect_sect(&p, "1.2", "<b>html</b>", "7bit", false);
	expect_sect(&p, "1.2.MIME", "Content-Type: text/html\r\n\r\n", NULL, false);
	expect_sect(&p, "2", "iVBORw0KGgo=", "base64", false);
	expect_sect(&p, "1.3", NULL, NULL, false);
	expect_sect(&p, "1.1.1", NULL, NULL, false);
	expect_sect(&p, "2.1", NULL, NULL, false);
	expect_sect(&p, "1.HEADER", NULL, NULL, false);
	check_roundtrip(&p);
	parsed_free(&p);
}

static const char msg_rfc822[] =
	"From: outer@example.com\r\n"
	"Subject: fwd\r\n"
	"Content-Type: multipart/mixed; boundary=xyz\r\n"
	"\r\n"
	"--xyz\r\n"
	"Content-Type: text/plain\r\n"
	"\r\n"
	"see below\r\n"
	"\r\n"
	"--xyz\r\n"
	"Content-Type: message/rfc822\r\n"
	"Content-Description: forwarded\r\n"
	"\r\n"
	"From: Inner Sender <inner@example.org>\r\n"
	"To: undisclosed-recipients:;\r\n"
	"Subject: inner subject\r\n"
	"Date: Mon, 7 Dec 2026 10:00:00 +0000\r\n"
	"\r\n"
	"inner body\r\n"
	"second line\r\n"
	"--xyz--\r\n";

static void test_message_rfc822(void **state)
{
	struct parsed p;
	(void)state;
	parse(&p, msg_rfc822);
	expect_envelope(p.m, "(NIL \"fwd\" ((NIL NIL \"outer\" \"example.com\")) "
			     "((NIL NIL \"outer\" \"example.com\")) "
			     "((NIL NIL \"outer\" \"example.com\")) NIL NIL NIL NIL NIL)");
	/* inner header 40+30+24+38+2 = 134, body 23: 157 octets, 6 LFs */
#define INNER_ENV                                                                         \
	"(\"Mon, 7 Dec 2026 10:00:00 +0000\" \"inner subject\" "                          \
	"((\"Inner Sender\" NIL \"inner\" \"example.org\")) "                             \
	"((\"Inner Sender\" NIL \"inner\" \"example.org\")) "                             \
	"((\"Inner Sender\" NIL \"inner\" \"example.org\")) "                             \
	"((NIL NIL \"undisclosed-recipients\" NIL)(NIL NIL NIL NIL)) NIL NIL NIL NIL)"
	expect_body(p.m,
		    "((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 11 1)"
		    "(\"message\" \"rfc822\" NIL NIL \"forwarded\" \"7BIT\" 157 " INNER_ENV
		    " (\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 23 1) 6) "
		    "\"mixed\")",
		    "((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 11 1 NIL NIL "
		    "NIL NIL)(\"message\" \"rfc822\" NIL NIL \"forwarded\" \"7BIT\" 157 " INNER_ENV
		    " (\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 23 1 NIL NIL "
		    "NIL NIL) 6 NIL NIL NIL NIL) \"mixed\" (\"boundary\" \"xyz\") NIL NIL NIL)");
#undef INNER_ENV
	const char *inner = strstr(msg_rfc822, "From: Inner");
	const char *inner_text = strstr(msg_rfc822, "inner body");
	char *inner_all = strndup(inner, 157);
	char *inner_hdr = strndup(inner, (size_t)(inner_text - inner));
	assert_non_null(inner_all);
	assert_non_null(inner_hdr);
	expect_sect(&p, "1", "see below\r\n", "7bit", false);
	expect_sect(&p, "2", inner_all, "", false);
	expect_sect(&p, "2.MIME",
		    "Content-Type: message/rfc822\r\nContent-Description: forwarded\r\n\r\n", NULL,
		    false);
	expect_sect(&p, "2.HEADER", inner_hdr, NULL, false);
	expect_sect(&p, "2.TEXT", "inner body\r\nsecond line", NULL, false);
	/* the message in part 2 is not multipart: 2.1 is its body */
	expect_sect(&p, "2.1", "inner body\r\nsecond line", "7bit", false);
	expect_sect(&p, "2.2", NULL, NULL, false);
	expect_sect(&p, "2.1.1", NULL, NULL, false);
	expect_sect(&p, "2.1.HEADER", NULL, NULL, false);
	expect_sect(&p, "1.HEADER", NULL, NULL, false);
	expect_sect(&p, "1.TEXT", NULL, NULL, false);
	free(inner_all);
	free(inner_hdr);
	check_roundtrip(&p);
	parsed_free(&p);
}

/* Dovecot's sample (test-imap-bodystructure.c), LF line ends: the same
 * structure and line counts; sizes are octets, so each is Dovecot's
 * CRLF-counted size minus its line count (7-1, 412-21, 20-1, 21-1). */
static const char msg_dovecot[] =
	"From: user@domain.org\n"
	"Date: Sat, 24 Mar 2007 23:00:00 +0200\n"
	"Mime-Version: 1.0\n"
	"Content-Type: multipart/mixed; boundary=\"foo\n"
	" bar\"\n"
	"\n"
	"Root MIME prologue\n"
	"\n"
	"--foo bar\n"
	"Content-Type: text/x-myown; charset=us-ascii; foo=\"quoted\\\"string\"\n"
	"Content-ID: <foo@example.com>\n"
	"Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\n"
	"Content-Disposition: inline; foo=bar\n"
	"Content-Description: hellodescription\n"
	"Content-Language: en, fi, se\n"
	"Content-Location: http://example.com/test.txt\n"
	"\n"
	"hello\n"
	"\n"
	"--foo bar\n"
	"Content-Type: message/rfc822\n"
	"\n"
	"From: sub@domain.org\n"
	"To: sub-to1@domain.org, sub-to2@domain.org\n"
	"Date: Sun, 12 Aug 2012 12:34:56 +0300\n"
	"Subject: submsg\n"
	"Content-Type: multipart/alternative; boundary=\"sub1\"\n"
	"\n"
	"Sub MIME prologue\n"
	"--sub1\n"
	"Content-Type: text/html\n"
	"Content-Transfer-Encoding: 8bit\n"
	"\n"
	"<p>Hello world</p>\n"
	"\n"
	"--sub1\n"
	"Content-Type: text/plain\n"
	"Content-Transfer-Encoding: ?invalid\n"
	"\n"
	"Hello another world\n"
	"\n"
	"--sub1--\n"
	"Sub MIME epilogue\n"
	"\n"
	"--foo bar--\n"
	"Root MIME epilogue\n";

static void test_dovecot_sample(void **state)
{
	struct parsed p;
	(void)state;
	parse(&p, msg_dovecot);
#define SUB_ENV                                                                            \
	"(\"Sun, 12 Aug 2012 12:34:56 +0300\" \"submsg\" ((NIL NIL \"sub\" \"domain.org\")) " \
	"((NIL NIL \"sub\" \"domain.org\")) ((NIL NIL \"sub\" \"domain.org\")) "             \
	"((NIL NIL \"sub-to1\" \"domain.org\")(NIL NIL \"sub-to2\" \"domain.org\")) NIL NIL " \
	"NIL NIL)"
	expect_body(p.m,
		    "((\"text\" \"x-myown\" (\"charset\" \"us-ascii\" \"foo\" \"quoted\\\"string\") "
		    "\"<foo@example.com>\" \"hellodescription\" \"7BIT\" 6 1)(\"message\" "
		    "\"rfc822\" NIL NIL NIL \"7BIT\" 391 " SUB_ENV " ((\"text\" \"html\" "
		    "(\"charset\" \"us-ascii\") NIL NIL \"8bit\" 19 1)(\"text\" \"plain\" "
		    "(\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 20 1) \"alternative\") 21) "
		    "\"mixed\")",
		    "((\"text\" \"x-myown\" (\"charset\" \"us-ascii\" \"foo\" \"quoted\\\"string\") "
		    "\"<foo@example.com>\" \"hellodescription\" \"7BIT\" 6 1 "
		    "\"Q2hlY2sgSW50ZWdyaXR5IQ==\" (\"inline\" (\"foo\" \"bar\")) (\"en\" \"fi\" "
		    "\"se\") \"http://example.com/test.txt\")(\"message\" \"rfc822\" NIL NIL NIL "
		    "\"7BIT\" 391 " SUB_ENV " ((\"text\" \"html\" (\"charset\" \"us-ascii\") NIL "
		    "NIL \"8bit\" 19 1 NIL NIL NIL NIL)(\"text\" \"plain\" (\"charset\" "
		    "\"us-ascii\") NIL NIL \"7BIT\" 20 1 NIL NIL NIL NIL) \"alternative\" "
		    "(\"boundary\" \"sub1\") NIL NIL NIL) 21 NIL NIL NIL NIL) \"mixed\" "
		    "(\"boundary\" \"foo bar\") NIL NIL NIL)");
#undef SUB_ENV
	/* the message in part 2 is multipart: 2.1 is its first part */
	expect_sect(&p, "2.1", "<p>Hello world</p>\n", "8bit", false);
	expect_sect(&p, "2.2", "Hello another world\n", "7bit", false);
	expect_sect(&p, "2.2.MIME",
		    "Content-Type: text/plain\nContent-Transfer-Encoding: ?invalid\n\n", NULL, false);
	expect_sect(&p, "2.3", NULL, NULL, false);
	const char *sub = strstr(msg_dovecot, "Sub MIME prologue");
	char *sub_text = strndup(sub, (size_t)(strstr(sub, "\n--foo bar--") - sub));
	assert_non_null(sub_text);
	expect_sect(&p, "2.TEXT", sub_text, NULL, false);
	free(sub_text);
	check_roundtrip(&p);
	parsed_free(&p);
}

static void test_broken_boundaries(void **state)
{
	struct parsed p;
	(void)state;

	/* No delimiter of the boundary anywhere: one empty text part. */
	parse(&p, "Content-Type: multipart/mixed; boundary=abc\r\n\r\n"
		  "--abd\r\nContent-Type: text/plain\r\n\r\ntext\r\n");
	expect_body(p.m,
		    "((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 0 0) "
		    "\"mixed\")",
		    "((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 0 0 NIL NIL "
		    "NIL NIL) \"mixed\" (\"boundary\" \"abc\") NIL NIL NIL)");
	expect_sect(&p, "1", "", "7bit", false);
	expect_sect(&p, "1.MIME", "", NULL, false);
	expect_sect(&p, "TEXT", "--abd\r\nContent-Type: text/plain\r\n\r\ntext\r\n", NULL, false);
	check_roundtrip(&p);
	parsed_free(&p);

	/* A multipart without boundary parameter: one text part. */
	parse(&p, "Content-Type: multipart/mixed\r\n\r\nhello\r\n");
	expect_body(p.m, "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 7 1)",
		    "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 7 1 NIL NIL "
		    "NIL NIL)");
	expect_sect(&p, "1", "hello\r\n", "7bit", false);
	check_roundtrip(&p);
	parsed_free(&p);

	/* No end delimiter: the last part runs to the end. An inner part
	 * without blank line ends at the outer delimiter, with no body. */
	parse(&p, "Content-Type: multipart/mixed; boundary=q\r\n\r\n"
		  "--q\r\nContent-Type: text/plain\r\n\r\none\r\n"
		  "--q\r\nContent-Type: multipart/related; boundary=r\r\n\r\n"
		  "--r\r\nContent-Type: text/plain\r\nno blank line\r\n"
		  "--q\r\nContent-Type: text/plain\r\n\r\ntwo\r\nthree");
	expect_body(p.m,
		    "((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 3 0)"
		    "((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 0 0) "
		    "\"related\")(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 10 "
		    "1) \"mixed\")",
		    "((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 3 0 NIL NIL "
		    "NIL NIL)((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 0 0 NIL "
		    "NIL NIL NIL) \"related\" (\"boundary\" \"r\") NIL NIL NIL)(\"text\" \"plain\" "
		    "(\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 10 1 NIL NIL NIL NIL) \"mixed\" "
		    "(\"boundary\" \"q\") NIL NIL NIL)");
	expect_sect(&p, "1", "one", "7bit", false);
	expect_sect(&p, "2.1.MIME", "Content-Type: text/plain\r\nno blank line\r\n", NULL, false);
	expect_sect(&p, "2.1", "", "7bit", false);
	expect_sect(&p, "3", "two\r\nthree", "7bit", false);
	check_roundtrip(&p);
	parsed_free(&p);

	/* A boundary that is a prefix of another is not taken for it; a
	 * delimiter may have transport padding; a line that only starts with
	 * a delimiter is text. */
	parse(&p, "Content-Type: multipart/mixed; boundary=foo\r\n\r\n"
		  "--foo junk\r\n--foo \t\r\nContent-Type: multipart/mixed; boundary=foobar\r\n\r\n"
		  "--foobar\r\n\r\nin\r\n--foobar--\r\n--foo\r\n\r\nsecond\r\n--foo--");
	expect_body(p.m,
		    "(((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 2 0) "
		    "\"mixed\")(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 6 0) "
		    "\"mixed\")",
		    "(((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 2 0 NIL NIL "
		    "NIL NIL) \"mixed\" (\"boundary\" \"foobar\") NIL NIL NIL)(\"text\" \"plain\" "
		    "(\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 6 0 NIL NIL NIL NIL) \"mixed\" "
		    "(\"boundary\" \"foo\") NIL NIL NIL)");
	expect_sect(&p, "1.1", "in", "7bit", false);
	expect_sect(&p, "2", "second", "7bit", false);
	check_roundtrip(&p);
	parsed_free(&p);

	/* message/rfc822 cut short by the delimiter: part and message agree. */
	parse(&p, "Content-Type: multipart/mixed; boundary=z\n\n--z\n"
		  "Content-Type: message/rfc822\n\nSubject: cut\n\n--z--\n");
	expect_sect(&p, "1.HEADER", "Subject: cut\n\n", NULL, false);
	expect_sect(&p, "1", "Subject: cut\n\n", "", false);
	expect_sect(&p, "1.TEXT", "", NULL, false);
	check_roundtrip(&p);
	parsed_free(&p);

	/* Encoded message/rfc822 cannot be parsed: an opaque part. */
	parse(&p, "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
		  "U3ViamVjdDogeAoK\r\n");
	expect_body(p.m,
		    "(\"application\" \"octet-stream\" NIL NIL NIL \"base64\" 18)",
		    "(\"application\" \"octet-stream\" NIL NIL NIL \"base64\" 18 NIL NIL NIL NIL)");
	expect_sect(&p, "1.HEADER", NULL, NULL, false);
	parsed_free(&p);
}

static void test_8bit_header(void **state)
{
	struct parsed p;
	(void)state;
	parse(&p, "Subject: Gr\xc3\xbc\xc3\x9f" "e\r\n"
		  "From: J\xc3\xb6rg <j@example.de>\r\n"
		  "Content-Type: text/plain; name=\"\xc3\xa9t\xc3\xa9.txt\"\r\n"
		  "\r\nx");
	expect_envelope(p.m, "(NIL {7}\r\nGr\xc3\xbc\xc3\x9f" "e "
			     "(({5}\r\nJ\xc3\xb6rg NIL \"j\" \"example.de\")) "
			     "(({5}\r\nJ\xc3\xb6rg NIL \"j\" \"example.de\")) "
			     "(({5}\r\nJ\xc3\xb6rg NIL \"j\" \"example.de\")) NIL NIL NIL NIL NIL)");
	expect_body(p.m,
		    "(\"text\" \"plain\" (\"name\" {9}\r\n\xc3\xa9t\xc3\xa9.txt \"charset\" "
		    "\"us-ascii\") NIL NIL \"7BIT\" 1 0)",
		    "(\"text\" \"plain\" (\"name\" {9}\r\n\xc3\xa9t\xc3\xa9.txt \"charset\" "
		    "\"us-ascii\") NIL NIL \"7BIT\" 1 0 NIL NIL NIL NIL)");
	check_roundtrip(&p);
	parsed_free(&p);

	/* Folded, with a NUL (sent as an 8-bit byte) and a long value (literal). */
	char big[1200 + 64];
	memcpy(big, "Subject: ", 9);
	memset(big + 9, 'a', 1100);
	memcpy(big + 1109, "\r\n\r\n", 5);
	parse(&p, big);
	struct mp_buf b;
	mp_buf_init(&b, 0);
	assert_int_equal(imap_mime_envelope(p.m, &b), MP_OK);
	assert_true(strncmp(b.data, "(NIL {1100}\r\naaa", 16) == 0);
	mp_buf_free(&b);
	parsed_free(&p);

	static const char folded[] = "Subject: one\r\n two\r\n\tthree\r\nX: \0\r\n\r\n";
	parse_lim(&p, folded, sizeof(folded) - 1, NULL);
	expect_envelope(p.m, "(NIL \"one two\tthree\" NIL NIL NIL NIL NIL NIL NIL NIL)");
	parsed_free(&p);
}

struct addr_case {
	const char *value;
	const char *want;
};

static const struct addr_case addr_cases[] = {
	{ "a@b.c", "((NIL NIL \"a\" \"b.c\"))" },
	{ "\"Doe, John\" <john@doe.test>", "((\"Doe, John\" NIL \"john\" \"doe.test\"))" },
	{ "john@doe.test (John Doe)", "((\"John Doe\" NIL \"john\" \"doe.test\"))" },
	{ "John Q. Public <jqp@x.test>", "((\"John Q. Public\" NIL \"jqp\" \"x.test\"))" },
	{ "A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;",
	  "((NIL NIL \"A Group\" NIL)(\"Ed Jones\" NIL \"c\" \"a.test\")"
	  "(NIL NIL \"joe\" \"where.test\")(\"John\" NIL \"jdoe\" \"one.test\")(NIL NIL NIL NIL))" },
	{ "undisclosed-recipients:;", "((NIL NIL \"undisclosed-recipients\" NIL)(NIL NIL NIL NIL))" },
	{ "a@b.c, g: x@y.z;, d@e.f",
	  "((NIL NIL \"a\" \"b.c\")(NIL NIL \"g\" NIL)(NIL NIL \"x\" \"y.z\")(NIL NIL NIL NIL)"
	  "(NIL NIL \"d\" \"e.f\"))" },
	{ "open: x@y.z", "((NIL NIL \"open\" NIL)(NIL NIL \"x\" \"y.z\")(NIL NIL NIL NIL))" },
	{ "<@route1,@route2:user@host.test>",
	  "((NIL \"@route1,@route2\" \"user\" \"host.test\"))" },
	{ "user", "((NIL NIL \"user\" \"MISSING_DOMAIN\"))" },
	{ "<>", "((NIL NIL \"MISSING_MAILBOX\" \"MISSING_DOMAIN\"))" },
	{ "\"quoted local\"@example.com", "((NIL NIL \"quoted local\" \"example.com\"))" },
	{ "Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>",
	  "((\"Pete\" NIL \"pete\" \"silly.test\"))" },
	{ "=?utf-8?q?J=C3=B6rg?= <j@x.de>", "((\"=?utf-8?q?J=C3=B6rg?=\" NIL \"j\" \"x.de\"))" },
	{ "a@[127.0.0.1]", "((NIL NIL \"a\" \"[127.0.0.1]\"))" },
	{ "a@b.c, , d@e.f", "((NIL NIL \"a\" \"b.c\")(NIL NIL \"d\" \"e.f\"))" },
	{ "", "NIL" },
	{ " (just a comment) ", "NIL" },
	{ "\"back\\\\slash\" <b@s.test>", "((\"back\\\\slash\" NIL \"b\" \"s.test\"))" },
	/* garbage: still a well-formed list */
	{ "<<>>@@,,;;::\"", "((NIL NIL \"MISSING_MAILBOX\" \"MISSING_DOMAIN\")(NIL NIL \"\" NIL)"
			   "(NIL NIL \"MISSING_MAILBOX\" \"MISSING_DOMAIN\")(NIL NIL NIL NIL))" },
};

static void test_addresses(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(addr_cases) / sizeof(addr_cases[0]); i++) {
		const struct addr_case *ac = &addr_cases[i];
		char msg[512], want[1024];
		struct parsed p;
		snprintf(msg, sizeof(msg), "To: %s\r\n\r\n", ac->value);
		snprintf(want, sizeof(want), "(NIL NIL NIL NIL NIL %s NIL NIL NIL NIL)", ac->want);
		parse(&p, msg);
		struct mp_buf b;
		mp_buf_init(&b, 0);
		assert_int_equal(imap_mime_envelope(p.m, &b), MP_OK);
		if (strcmp(b.data, want) != 0)
			fail_msg("To: %s\n got  %s\n want %s", ac->value, b.data, want);
		mp_buf_free(&b);
		parsed_free(&p);
	}
}

static void test_envelope_defaults(void **state)
{
	struct parsed p;
	(void)state;
	/* Sender given; Reply-To present but empty: from (RFC 3501 §7.4.2). */
	parse(&p, "From: a@x.test\r\nSender: s@x.test\r\nReply-To:\r\nBcc: b@x.test\r\n"
		  "In-Reply-To: <p@x.test>\r\nSubject:\r\nsubject: second\r\n\r\n");
	expect_envelope(p.m, "(NIL \"\" ((NIL NIL \"a\" \"x.test\")) ((NIL NIL \"s\" \"x.test\")) "
			     "((NIL NIL \"a\" \"x.test\")) NIL NIL ((NIL NIL \"b\" \"x.test\")) "
			     "\"<p@x.test>\" NIL)");
	parsed_free(&p);

	/* Field names are case-insensitive, space before the colon is old syntax. */
	parse(&p, "FROM : a@x.test\r\nmessage-id:   <m@x>  \r\n\r\n");
	expect_envelope(p.m, "(NIL NIL ((NIL NIL \"a\" \"x.test\")) ((NIL NIL \"a\" \"x.test\")) "
			     "((NIL NIL \"a\" \"x.test\")) NIL NIL NIL NIL \"<m@x>\")");
	parsed_free(&p);
}

static void test_rfc2231(void **state)
{
	struct parsed p;
	(void)state;
	parse(&p, "Content-Type: application/x-stuff;\r\n"
		  " title*0*=us-ascii'en'This%20is%20even%20more%20;\r\n"
		  " title*1*=%2A%2A%2Afun%2A%2A%2A%20;\r\n"
		  " title*2=\"isn't it!\"; name*1=\"file.txt\"; name*0=\"long \";\r\n"
		  " other*=utf-8''%E2%82%AC; CHARSET=\"x\"\r\n"
		  "Content-Disposition: ATTACHMENT; filename*=utf-8''%E2%82%AC%20rates.pdf;\r\n"
		  " (comment) size = 3 ; bad; =x; creation-date=\"a;b\"\r\n"
		  "\r\nx");
	expect_body(p.m,
		    "(\"application\" \"x-stuff\" (\"title*\" \"us-ascii'en'This%20is%20even%20more"
		    "%20%2A%2A%2Afun%2A%2A%2A%20isn%27t%20it!\" \"name\" \"long file.txt\" "
		    "\"other*\" \"utf-8''%E2%82%AC\" \"CHARSET\" \"x\") NIL NIL \"7BIT\" 1)",
		    "(\"application\" \"x-stuff\" (\"title*\" \"us-ascii'en'This%20is%20even%20more"
		    "%20%2A%2A%2Afun%2A%2A%2A%20isn%27t%20it!\" \"name\" \"long file.txt\" "
		    "\"other*\" \"utf-8''%E2%82%AC\" \"CHARSET\" \"x\") NIL NIL \"7BIT\" 1 NIL "
		    "(\"ATTACHMENT\" (\"filename*\" \"utf-8''%E2%82%AC%20rates.pdf\" \"size\" \"3\" "
		    "\"creation-date\" \"a;b\")) NIL NIL)");
	parsed_free(&p);

	/* TEXT/PLAIN as sent, its charset kept, no default added. */
	parse(&p, "Content-Type: TEXT/PLAIN; CHARSET=ISO-8859-1 (comment)\r\n\r\nx\r\n");
	expect_body(p.m, "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"ISO-8859-1\") NIL NIL \"7BIT\" 3 1)",
		    "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"ISO-8859-1\") NIL NIL \"7BIT\" 3 1 NIL NIL "
		    "NIL NIL)");
	parsed_free(&p);

	/* An invalid Content-Type is the default one. */
	parse(&p, "Content-Type: text\r\nContent-Transfer-Encoding: 8BIT\r\n\r\nx");
	expect_body(p.m, "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"8BIT\" 1 0)",
		    "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"8BIT\" 1 0 NIL NIL "
		    "NIL NIL)");
	expect_sect(&p, "1", "x", "8bit", false);
	parsed_free(&p);
}

static void test_digest(void **state)
{
	struct parsed p;
	(void)state;
	/* In multipart/digest a part without Content-Type is message/rfc822. */
	parse(&p, "Content-Type: multipart/digest; boundary=d\r\n\r\n"
		  "--d\r\n\r\nSubject: one\r\n\r\nbody 1\r\n"
		  "--d\r\nContent-Type: text/plain\r\n\r\nnote\r\n--d--\r\n");
	expect_body(p.m,
		    "((\"message\" \"rfc822\" NIL NIL NIL \"7BIT\" 22 (NIL \"one\" NIL NIL NIL NIL "
		    "NIL NIL NIL NIL) (\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" "
		    "6 0) 2)(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 4 0) "
		    "\"digest\")",
		    "((\"message\" \"rfc822\" NIL NIL NIL \"7BIT\" 22 (NIL \"one\" NIL NIL NIL NIL "
		    "NIL NIL NIL NIL) (\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" "
		    "6 0 NIL NIL NIL NIL) 2 NIL NIL NIL NIL)(\"text\" \"plain\" (\"charset\" "
		    "\"us-ascii\") NIL NIL \"7BIT\" 4 0 NIL NIL NIL NIL) \"digest\" (\"boundary\" "
		    "\"d\") NIL NIL NIL)");
	expect_sect(&p, "1.HEADER", "Subject: one\r\n\r\n", NULL, false);
	expect_sect(&p, "1.1", "body 1", "7bit", false);
	check_roundtrip(&p);
	parsed_free(&p);

	/* message/global is a message too (RFC 9051 §7.5.2). */
	parse(&p, "Content-Type: message/global\r\n\r\nSubject: g\r\n\r\nhi\r\n");
	expect_body(p.m,
		    "(\"message\" \"global\" NIL NIL NIL \"7BIT\" 18 (NIL \"g\" NIL NIL NIL NIL NIL "
		    "NIL NIL NIL) (\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 4 "
		    "1) 3)",
		    "(\"message\" \"global\" NIL NIL NIL \"7BIT\" 18 (NIL \"g\" NIL NIL NIL NIL NIL "
		    "NIL NIL NIL) (\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 4 "
		    "1 NIL NIL NIL NIL) 3 NIL NIL NIL NIL)");
	expect_sect(&p, "1", "Subject: g\r\n\r\nhi\r\n", "", false);
	expect_sect(&p, "1.HEADER", "Subject: g\r\n\r\n", NULL, false);
	expect_sect(&p, "1.1", "hi\r\n", "7bit", false);
	parsed_free(&p);
}

static size_t count(const char *hay, const char *needle)
{
	size_t n = 0;
	for (const char *s = strstr(hay, needle); s != NULL; s = strstr(s + 1, needle))
		n++;
	return n;
}

/* depth multiparts nested, then a text leaf. */
static char *deep_multipart(unsigned depth, size_t *len_r)
{
	struct mp_buf b;
	mp_buf_init(&b, 0);
	for (unsigned i = 0; i < depth; i++)
		assert_int_equal(mp_buf_printf(&b, "Content-Type: multipart/mixed; boundary=b%u\r\n"
						   "\r\n--b%u\r\n", i, i), MP_OK);
	assert_int_equal(mp_buf_append_str(&b, "\r\nleaf\r\n"), MP_OK);
	return mp_buf_steal(&b, len_r);
}

static void test_limits_depth(void **state)
{
	struct parsed p;
	size_t len;
	char *msg = deep_multipart(1000, &len);
	(void)state;

	/* Default limit 20: twenty multiparts, then one opaque part. */
	parse_lim(&p, msg, len, NULL);
	char *s = body_of(p.m, true);
	assert_int_equal(count(s, "\"mixed\""), 20);
	assert_int_equal(count(s, "\"application\" \"octet-stream\" NIL NIL NIL \"7BIT\""), 1);
	free(s);
	uint32_t path[32];
	struct imap_mime_span sp;
	for (unsigned i = 0; i < 32; i++)
		path[i] = 1;
	assert_int_equal(imap_mime_section(p.m, path, 20, IMAP_MIME_SECT_BODY, &sp), MP_OK);
	assert_false(sp.is_multipart);
	assert_string_equal(sp.cte, "7bit");
	assert_true(sp.off + sp.len == len);
	assert_int_equal(imap_mime_section(p.m, path, 21, IMAP_MIME_SECT_BODY, &sp), MP_ENOENT);
	check_roundtrip(&p);
	parsed_free(&p);

	/* Limits raised: all 1000 levels, without deep recursion anywhere. */
	struct imap_mime_limits lim = { 2000, 5000 };
	parse_lim(&p, msg, len, &lim);
	s = body_of(p.m, false);
	assert_int_equal(count(s, "\"mixed\""), 1000);
	assert_int_equal(count(s, "\"text\" \"plain\""), 1);
	free(s);
	assert_int_equal(imap_mime_section(p.m, path, 32, IMAP_MIME_SECT_BODY, &sp), MP_OK);
	assert_true(sp.is_multipart);
	uint8_t *blob;
	size_t blen;
	struct imap_mime *u;
	assert_int_equal(imap_mime_pack(p.m, &blob, &blen), MP_OK);
	assert_int_equal(imap_mime_unpack(blob, blen, &u), MP_OK);
	char *a = body_of(p.m, true), *b = body_of(u, true);
	assert_string_equal(a, b);
	free(a);
	free(b);
	free(blob);
	imap_mime_free(&u);
	parsed_free(&p);
	free(msg);

	/* 1000 nested message/rfc822. */
	struct mp_buf mb;
	mp_buf_init(&mb, 0);
	for (unsigned i = 0; i < 1000; i++)
		assert_int_equal(mp_buf_append_str(&mb, "Content-Type: message/rfc822\r\n\r\n"),
				 MP_OK);
	assert_int_equal(mp_buf_append_str(&mb, "Subject: deep\r\n\r\nbody"), MP_OK);
	msg = mp_buf_steal(&mb, &len);
	parse_lim(&p, msg, len, &lim);
	s = body_of(p.m, true);
	assert_int_equal(count(s, "\"message\" \"rfc822\""), 1000);
	assert_non_null(strstr(s, "(NIL \"deep\" NIL"));
	free(s);
	assert_int_equal(imap_mime_section(p.m, path, 32, IMAP_MIME_SECT_HEADER, &sp), MP_OK);
	assert_int_equal(sp.off, 32 * 32);
	parsed_free(&p);
	parse_lim(&p, msg, len, NULL);
	s = body_of(p.m, true);
	assert_int_equal(count(s, "\"message\" \"rfc822\""), 20);
	free(s);
	check_roundtrip(&p);
	parsed_free(&p);
	free(msg);
}

static void test_limits_parts(void **state)
{
	struct parsed p;
	struct mp_buf b;
	size_t len;
	(void)state;

	mp_buf_init(&b, 0);
	assert_int_equal(mp_buf_append_str(&b, "Content-Type: multipart/mixed; boundary=A\r\n\r\n"),
			 MP_OK);
	for (int i = 0; i < 50; i++)
		assert_int_equal(mp_buf_printf(&b, "--A\r\n\r\n%02d\r\n", i), MP_OK);
	assert_int_equal(mp_buf_append_str(&b, "--A--\r\n"), MP_OK);
	char *msg = mp_buf_steal(&b, &len);

	struct imap_mime_limits lim = { 0, 10 };
	parse_lim(&p, msg, len, &lim);
	char *s = body_of(p.m, false);
	/* the message and nine parts; the ninth holds the rest */
	assert_int_equal(count(s, "\"text\" \"plain\""), 9);
	free(s);
	expect_sect(&p, "8", "07", "7bit", false);
	const char *last = strstr(msg, "\r\n\r\n08") + 4;
	char *want = strndup(last, (size_t)(strstr(msg, "\r\n--A--") - last));
	assert_non_null(want);
	expect_sect(&p, "9", want, "7bit", false);
	expect_sect(&p, "10", NULL, NULL, false);
	free(want);
	check_roundtrip(&p);
	parsed_free(&p);

	/* A multipart without parts keeps a slot for its empty part: at the
	 * limit the next delimiter is text (found by the fuzzer). */
	struct imap_mime_limits three = { 0, 3 };
	static const char nested_empty[] =
		"Content-Type: multipart/mixed; boundary=a\r\n\r\n"
		"--a\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
		"--a\r\n\r\nx\r\n--a--\r\n";
	parse_lim(&p, nested_empty, sizeof(nested_empty) - 1, &three);
	expect_body(p.m,
		    "(((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 0 0) "
		    "\"mixed\") \"mixed\")",
		    "(((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 0 0 NIL NIL "
		    "NIL NIL) \"mixed\" (\"boundary\" \"b\") NIL NIL NIL) \"mixed\" (\"boundary\" "
		    "\"a\") NIL NIL NIL)");
	expect_sect(&p, "1", "--a\r\n\r\nx", "", true);
	expect_sect(&p, "2", NULL, NULL, false);
	check_roundtrip(&p);
	parsed_free(&p);

	parse_lim(&p, msg, len, NULL);
	s = body_of(p.m, false);
	assert_int_equal(count(s, "\"text\" \"plain\""), 50);
	free(s);
	expect_sect(&p, "50", "49", "7bit", false);
	parsed_free(&p);
	free(msg);
}

static void test_unpack_rejects(void **state)
{
	struct parsed p;
	uint8_t *blob;
	size_t blen;
	struct imap_mime *u = (struct imap_mime *)&u;
	(void)state;

	assert_int_equal(imap_mime_unpack(NULL, 0, &u), MP_EPROTO);
	assert_null(u);
	assert_int_equal(imap_mime_unpack((const uint8_t *)"MPMS", 4, &u), MP_EPROTO);

	parse(&p, msg_alt);
	assert_int_equal(imap_mime_pack(p.m, &blob, &blen), MP_OK);
	/* version */
	blob[4] = 2;
	assert_int_equal(imap_mime_unpack(blob, blen, &u), MP_EPROTO);
	blob[4] = 1;
	/* a size smaller than the parts it holds */
	uint64_t size = imap_mime_size(p.m);
	blob[15] = (uint8_t)(size - 1);
	assert_int_equal(imap_mime_unpack(blob, blen, &u), MP_EPROTO);
	blob[15] = (uint8_t)size;
	/* a trailing byte */
	uint8_t *longer = malloc(blen + 1);
	assert_non_null(longer);
	memcpy(longer, blob, blen);
	longer[blen] = 0;
	assert_int_equal(imap_mime_unpack(longer, blen + 1, &u), MP_EPROTO);
	free(longer);
	/* the last part's body past the end of the message */
	blob[blen - 8] = 1;
	assert_int_equal(imap_mime_unpack(blob, blen, &u), MP_EPROTO);
	blob[blen - 8] = 0;
	assert_int_equal(imap_mime_unpack(blob, blen, &u), MP_OK);
	imap_mime_free(&u);
	free(blob);
	parsed_free(&p);

	/* The body of the message in part 2 past the end of part 2, though
	 * inside the message: refused too. */
	parse(&p, msg_rfc822);
	assert_int_equal(imap_mime_pack(p.m, &blob, &blen), MP_OK);
	blob[blen - 1] += 5;
	assert_int_equal(imap_mime_unpack(blob, blen, &u), MP_EPROTO);
	blob[blen - 1] -= 5;
	assert_int_equal(imap_mime_unpack(blob, blen, &u), MP_OK);
	imap_mime_free(&u);
	free(blob);
	parsed_free(&p);
}

/* Every prefix of every sample (a message cut anywhere, as by a dropped
 * connection) parses, from an exact-size copy, to strings that survive
 * pack and unpack, with every section inside the prefix. */
static void test_prefixes(void **state)
{
	static const char *const samples[] = { msg_plain, msg_alt, msg_mixed, msg_nested,
					       msg_rfc822, msg_dovecot };
	(void)state;
	for (size_t i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
		size_t full = strlen(samples[i]);
		for (size_t len = 0; len <= full; len++) {
			struct parsed p;
			uint8_t *blob;
			size_t blen;
			struct imap_mime *u;
			parse_lim(&p, samples[i], len, NULL);
			assert_int_equal(imap_mime_pack(p.m, &blob, &blen), MP_OK);
			assert_int_equal(imap_mime_unpack(blob, blen, &u), MP_OK);
			for (int ext = 0; ext < 2; ext++) {
				char *a = body_of(p.m, ext != 0), *b = body_of(u, ext != 0);
				assert_string_equal(a, b);
				free(a);
				free(b);
			}
			for (uint32_t n1 = 0; n1 < 4; n1++) {
				for (uint32_t n2 = 0; n2 < 4; n2++) {
					uint32_t path[2] = { n1, n2 };
					unsigned np = n1 == 0 ? 0 : n2 == 0 ? 1 : 2;
					for (int s = IMAP_MIME_SECT_BODY; s <= IMAP_MIME_SECT_MIME; s++) {
						struct imap_mime_span a, b;
						int ra = imap_mime_section(p.m, path, np,
									   (enum imap_mime_sect)s, &a);
						int rb = imap_mime_section(u, path, np,
									   (enum imap_mime_sect)s, &b);
						assert_int_equal(ra, rb);
						if (ra != MP_OK)
							continue;
						assert_true(a.off == b.off && a.len == b.len);
						assert_true(a.off <= len && a.len <= len - a.off);
					}
				}
			}
			imap_mime_free(&u);
			free(blob);
			parsed_free(&p);
		}
	}
}

/* A To: of 100,000 addresses: the ENVELOPE's list is cut near 256 KiB and
 * stays well formed (balanced parentheses). */
static void test_envelope_address_cap(void **state)
{
	(void)state;
	struct mp_buf msg, env;
	mp_buf_init(&msg, 0);
	mp_buf_init(&env, 0);
	assert_int_equal(mp_buf_append_str(&msg, "To: "), 0);
	for (int i = 0; i < 100000; i++)
		assert_int_equal(mp_buf_printf(&msg, "%su%d@example.test", i ? ", " : "", i), 0);
	assert_int_equal(mp_buf_append_str(&msg, "\r\nSubject: many\r\n\r\nx\r\n"), 0);
	struct imap_mime *m = NULL;
	assert_int_equal(imap_mime_parse(msg.data, msg.len, NULL, &m), 0);
	assert_int_equal(imap_mime_envelope(m, &env), 0);
	assert_true(env.len > 200 * 1024);
	assert_true(env.len < 300 * 1024);
	int depth = 0;
	bool quoted = false;
	for (size_t i = 0; i < env.len; i++) {
		char ch = env.data[i];
		if (ch == '"' && (i == 0 || env.data[i - 1] != '\\'))
			quoted = !quoted;
		else if (!quoted && ch == '(')
			depth++;
		else if (!quoted && ch == ')')
			depth--;
		assert_true(depth >= 0);
	}
	assert_int_equal(depth, 0);
	assert_non_null(strstr(env.data, "\"many\""));
	imap_mime_free(&m);
	mp_buf_free(&msg);
	mp_buf_free(&env);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_plain),
		cmocka_unit_test(test_no_header_and_header_only),
		cmocka_unit_test(test_alternative),
		cmocka_unit_test(test_mixed_attachment),
		cmocka_unit_test(test_nested_multipart),
		cmocka_unit_test(test_message_rfc822),
		cmocka_unit_test(test_dovecot_sample),
		cmocka_unit_test(test_broken_boundaries),
		cmocka_unit_test(test_8bit_header),
		cmocka_unit_test(test_addresses),
		cmocka_unit_test(test_envelope_defaults),
		cmocka_unit_test(test_rfc2231),
		cmocka_unit_test(test_digest),
		cmocka_unit_test(test_limits_depth),
		cmocka_unit_test(test_limits_parts),
		cmocka_unit_test(test_unpack_rejects),
		cmocka_unit_test(test_prefixes),
		cmocka_unit_test(test_envelope_address_cap),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
