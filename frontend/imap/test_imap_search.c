/*
 * Tests of imap_search: every search key of RFC 3501/9051 §6.4.4, MODSEQ,
 * OLDER/YOUNGER, sequence sets with '*' and '$', NOT/OR nesting, RETURN
 * and CHARSET, and the errors (missing arguments, unknown keys, bad
 * numbers, dates and sets, nesting and key limits, BADCHARSET), matched
 * against fixed messages: encoded-word headers, a base64 latin-1 body, a
 * multipart with quoted-printable, base64 HTML, an attachment and an
 * attached message. Arguments come from a tiny test-only tokenizer that
 * builds struct imap_arg trees the way the IMAP parser does. Deterministic.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imap_parse.h"
#include "imap_search.h"
#include "mp_error.h"

/* ------------------------------------------------------------ tokenizer */

/* Everything the tokenizer allocates, freed by tk_free_all after a test. */
static void *tk_allocs[4096];
static size_t tk_nallocs;

static void *tk_alloc(size_t n)
{
	assert_true(tk_nallocs < sizeof(tk_allocs) / sizeof(tk_allocs[0]));
	void *p = calloc(1, n > 0 ? n : 1);
	assert_non_null(p);
	tk_allocs[tk_nallocs++] = p;
	return p;
}

static void tk_free_all(void)
{
	for (size_t i = 0; i < tk_nallocs; i++)
		free(tk_allocs[i]);
	tk_nallocs = 0;
}

/* Arguments of s up to close (')' or NUL): atoms, "quoted" (with \
 * escapes), {n}CRLF literals, NIL and (lists). */
static struct imap_arg *tk_parse(const char **sp, size_t *n_r, char close)
{
	const char *s = *sp;
	size_t cap = strlen(s) + 1, n = 0;
	struct imap_arg *v = tk_alloc(cap * sizeof(*v));

	for (;;) {
		while (*s == ' ')
			s++;
		if (*s == close) {
			if (close != '\0')
				s++;
			break;
		}
		assert_true(*s != '\0' && *s != ')');
		struct imap_arg *a = &v[n++];
		if (*s == '(') {
			s++;
			a->type = IMAP_ARG_LIST;
			a->list = tk_parse(&s, &a->nlist, ')');
		} else if (*s == '"') {
			char *o = tk_alloc(strlen(s) + 1);
			size_t k = 0;
			s++;
			while (*s != '"') {
				assert_true(*s != '\0');
				if (*s == '\\')
					s++;
				o[k++] = *s++;
			}
			s++;
			a->type = IMAP_ARG_STRING;
			a->s = o;
			a->len = k;
		} else if (*s == '{') {
			char *end;
			unsigned long len = strtoul(s + 1, &end, 10);
			assert_true(end[0] == '}' && end[1] == '\r' && end[2] == '\n');
			s = end + 3;
			assert_true(strlen(s) >= len);
			char *o = tk_alloc(len + 1);
			memcpy(o, s, len);
			s += len;
			a->type = IMAP_ARG_LITERAL;
			a->s = o;
			a->len = len;
		} else {
			const char *st = s;
			while (*s != '\0' && *s != ' ' && *s != '(' && *s != ')' && *s != '"')
				s++;
			char *o = tk_alloc((size_t)(s - st) + 1);
			memcpy(o, st, (size_t)(s - st));
			a->type = (s - st == 3 && strncasecmp(st, "NIL", 3) == 0) ? IMAP_ARG_NIL
										  : IMAP_ARG_ATOM;
			a->s = o;
			a->len = (size_t)(s - st);
		}
	}
	*sp = s;
	*n_r = n;
	return v;
}

static struct imap_arg *tk(const char *s, size_t *n_r)
{
	return tk_parse(&s, n_r, '\0');
}

/* ------------------------------------------------------------ messages */

static const char msg1[] =
	"Date: Mon, 7 Dec 2026 23:30:00 -0800\r\n"
	"From: \"Alice Example\" <alice@example.com>\r\n"
	"To: bob@example.org,\r\n"
	"  \"Zed\" <zed@example.org>\r\n"
	"Cc: carol@example.net\r\n"
	"Bcc: dave@example.com\r\n"
	"Subject: =?UTF-8?B?SGVsbG8gV8O2cmxk?=\r\n"
	"X-Custom: Foo   Bar\r\n"
	"X-Empty:\r\n"
	"Message-ID: <1@x>\r\n"
	"\r\n"
	"Hello Bob,\r\n"
	"This is the BODY text.\r\n";

static const char msg2[] =
	"Date: 1 Jan 98 10:00 GMT\r\n"
	"From: =?ISO-8859-1?Q?Andr=E9?= <andre@example.fr>\r\n"
	"Subject: =?ISO-8859-1?Q?Caf=E9_cr=E8me?= and\r\n"
	" =?ISO-8859-1?Q?_more?=\r\n"
	"MIME-Version: 1.0\r\n"
	"Content-Type: text/plain; charset=\"iso-8859-1\"\r\n"
	"Content-Transfer-Encoding: BASE64\r\n"
	"\r\n"
	"TGUgY2Fm6SBlc3Qg\r\n"
	"dHLocyBib24uDQrHYSB2YT8NCg==\r\n";

static const char msg3[] =
	"Date: yesterday afternoon\r\n"
	"From: list@example.com\r\n"
	"Subject: [list] multipart\r\n"
	"Content-Type: multipart/mixed; boundary=\"outer b\"\r\n"
	"\r\n"
	"preamble: not a part (preamblemarker)\r\n"
	"--outer b\r\n"
	"Content-Type: multipart/alternative;\r\n"
	"\tboundary=inner\r\n"
	"\r\n"
	"--inner\r\n"
	"Content-Type: text/plain; charset=utf-8\r\n"
	"Content-Transfer-Encoding: quoted-printable\r\n"
	"\r\n"
	"Soft=\r\n"
	"broken w=C3=B6rd and an equals =3D sign\r\n"
	"--inner\r\n"
	"Content-Type: text/html; charset=UTF-8\r\n"
	"Content-Transfer-Encoding: base64\r\n"
	"\r\n"
	"PHA+R3LDvMOfZSBhdXMgS8O2bG4g4oCUIEhUTUwgcGFydDwvcD4NCg==\r\n"
	"--inner--\r\n"
	"--outer b\r\n"
	"Content-Type: application/octet-stream\r\n"
	"Content-Transfer-Encoding: base64\r\n"
	"\r\n"
	"c2VjcmV0d29yZCBpbiBhbiBhdHRhY2htZW50\r\n"
	"--outer bx\r\n"
	"not a delimiter line, still the attachment\r\n"
	"--outer b\r\n"
	"Content-Type: message/rfc822\r\n"
	"\r\n"
	"Subject: =?UTF-8?Q?inner_subj=C3=A9ct?=\r\n"
	"\r\n"
	"nested message body\r\n"
	"--outer b--\r\n"
	"epilogue (epiloguemarker)\r\n";

/* Header only: no empty line, no Date. */
static const char msg4[] = "From: nobody@example.com\r\nSubject: short";

struct tmsg {
	const char *data;
	size_t len;
	uint32_t seq, uid;
	const char *flags[4];
	size_t nflags;
	bool recent;
	uint64_t size;
	int64_t internal_date;
	uint64_t modseq;
};

/* 2026-12-08 07:30:00 UTC (Dec 7 23:30 -0800) */
#define T_MSG1 1796715000
/* 1998-01-01 10:00:00 UTC */
#define T_MSG2 883648800
#define T_NOW 1796800000

static const struct tmsg tmsgs[] = {
	{ msg1, sizeof(msg1) - 1, 1, 10, { "\\Seen", "\\Answered", "$Label1" }, 3, false,
	  sizeof(msg1) - 1, T_MSG1, 100 },
	{ msg2, sizeof(msg2) - 1, 2, 20, { "\\Flagged", "\\Draft" }, 2, true, 4000, T_MSG2, 200 },
	{ msg3, sizeof(msg3) - 1, 3, 30, { "\\Deleted", "\\Seen" }, 2, true, 100000,
	  T_NOW - 100, 300 },
	{ msg4, sizeof(msg4) - 1, 4, 40, { NULL }, 0, false, 40, T_NOW - 86400 * 2, 400 },
};
#define NMSGS (sizeof(tmsgs) / sizeof(tmsgs[0]))

static const uint32_t saved_uids[] = { 20, 40 };

static const struct imap_search_ctx tctx = { 4, 40, saved_uids, 2, T_NOW };

static void to_msg(const struct tmsg *t, struct imap_search_msg *m, bool with_data)
{
	m->seq = t->seq;
	m->uid = t->uid;
	m->flags = t->flags;
	m->nflags = t->nflags;
	m->recent = t->recent;
	m->size = t->size;
	m->internal_date = t->internal_date;
	m->modseq = t->modseq;
	m->data = with_data ? t->data : NULL;
	m->len = with_data ? t->len : 0;
}

/* Compile q and return which test messages match, as "1 3". */
static void run_ctx(const char *q, const struct imap_search_ctx *ctx, char *out, size_t outlen)
{
	size_t n;
	struct imap_arg *args = tk(q, &n);
	struct imap_search *s = NULL;
	struct imap_search_info info;
	char *err = NULL;

	int ret = imap_search_compile(args, n, true, &s, &info, &err);
	if (ret != 0)
		fail_msg("compile(%s) = %d: %s", q, ret, err != NULL ? err : "?");
	assert_null(err);
	assert_non_null(s);
	out[0] = '\0';
	for (size_t i = 0; i < NMSGS; i++) {
		struct imap_search_msg m;
		/* Give the message only when asked, as the session does. */
		to_msg(&tmsgs[i], &m, imap_search_needs_message(s));
		bool match = false;
		assert_int_equal(imap_search_match(s, ctx, &m, &match), 0);
		if (match) {
			size_t l = strlen(out);
			snprintf(out + l, outlen - l, "%s%u", l > 0 ? " " : "", m.seq);
		}
	}
	imap_search_free(&s);
	assert_null(s);
	imap_search_free(&s);
	tk_free_all();
}

static void check(const char *q, const char *want)
{
	char got[64];
	run_ctx(q, &tctx, got, sizeof(got));
	if (strcmp(got, want) != 0)
		fail_msg("SEARCH %s -> \"%s\", want \"%s\"", q, got, want);
}

static void check_err(const char *q, int want)
{
	size_t n;
	struct imap_arg *args = tk(q, &n);
	struct imap_search *s = (struct imap_search *)&n;   /* must be reset */
	struct imap_search_info info;
	char *err = NULL;

	int ret = imap_search_compile(args, n, true, &s, &info, &err);
	if (ret != want)
		fail_msg("compile(%s) = %d, want %d", q, ret, want);
	assert_null(s);
	assert_non_null(err);
	assert_true(strlen(err) > 0);
	free(err);
	tk_free_all();
}

/* ------------------------------------------------------------ tests */

static void test_flags(void **state)
{
	(void)state;
	check("ALL", "1 2 3 4");
	check("all", "1 2 3 4");
	check("ANSWERED", "1");
	check("UNANSWERED", "2 3 4");
	check("DELETED", "3");
	check("UNDELETED", "1 2 4");
	check("DRAFT", "2");
	check("UNDRAFT", "1 3 4");
	check("FLAGGED", "2");
	check("UNFLAGGED", "1 3 4");
	check("SEEN", "1 3");
	check("UNSEEN", "2 4");
	check("KEYWORD $label1", "1");
	check("KEYWORD \"$Label1\"", "1");
	check("UNKEYWORD $Label1", "2 3 4");
	check("KEYWORD $Nope", "");
	check("RECENT", "2 3");
	check("OLD", "1 4");
	check("NEW", "2");
}

static void test_sizes_dates(void **state)
{
	(void)state;
	check("LARGER 4000", "3");
	check("LARGER 39", "1 2 3 4");
	check("SMALLER 4000", "1 4");
	check("SMALLER 41", "4");
	check("LARGER 9223372036854775807", "");
	/* Internal dates, by UTC day: msg1 is 8-Dec-2026 in UTC. */
	check("ON 8-Dec-2026", "1");
	check("ON 7-Dec-2026", "4");
	check("BEFORE 8-Dec-2026", "2 4");
	check("SINCE 8-Dec-2026", "1 3");
	check("SINCE \"1-Jan-1998\"", "1 2 3 4");
	check("BEFORE 01-jan-1998", "");
	check("ON 1-JAN-1998", "2");
	/* Date: as written, in its own zone (RFC 3501). */
	check("SENTON 7-Dec-2026", "1");
	check("SENTON 8-Dec-2026", "");
	check("SENTBEFORE 8-Dec-2026", "1 2");
	check("SENTBEFORE 7-Dec-2026", "2");
	check("SENTSINCE 7-Dec-2026", "1");
	check("SENTON 1-Jan-1998", "2");       /* "98" is 1998 */
	check("SENTSINCE 1-Jan-1900", "1 2");  /* 3: unparseable, 4: no Date */
	check("NOT SENTSINCE 1-Jan-1900", "3 4");
	/* OLDER/YOUNGER (RFC 5032): seconds before ctx.now. */
	check("YOUNGER 200", "3");
	check("YOUNGER 100", "");
	check("OLDER 100", "1 2 3 4");
	check("OLDER 101", "1 2 4");
	check("YOUNGER 172800", "1 3");
	check("YOUNGER 172801", "1 3 4");
	check("OLDER 172800 YOUNGER 4000000", "4");
}

static void test_headers(void **state)
{
	(void)state;
	check("FROM alice", "1");
	check("FROM \"ALICE EXAMPLE\"", "1");
	check("FROM example", "1 2 3 4");
	check("FROM \"andr\xc3\xa9\"", "2");        /* encoded word, decoded */
	check("FROM \"ANDR\xc3\x89\"", "2");        /* folded both sides */
	check("TO bob", "1");
	check("TO zed@example.org", "1");           /* second line of a folded field */
	check("TO \"org, \\\"zed\"", "1");          /* unfolded: CRLF + blanks gone */
	check("CC carol", "1");
	check("BCC dave", "1");
	check("BCC carol", "");
	check("SUBJECT \"hello w\xc3\xb6rld\"", "1");
	check("SUBJECT \"HELLO W\xc3\x96RLD\"", "1");
	check("SUBJECT SGVsbG8", "");               /* not the raw encoded text */
	check("SUBJECT \"caf\xc3\xa9 cr\xc3\xa8me and  more\"", "2");
	check("SUBJECT \"[list]\"", "3");
	check("SUBJECT short", "4");
	check("SUBJECT {5}\r\nhello", "1");         /* literal */
	check("SUBJECT \"\"", "1 2 3 4");
	check("HEADER X-Custom \"foo bar\"", "1");  /* blanks folded to one */
	check("HEADER x-custom foo", "1");
	check("HEADER X-Custom \"\"", "1");         /* any message with the field */
	check("HEADER X-Empty \"\"", "1");
	check("HEADER X-Empty x", "");
	check("HEADER Content-Type \"\"", "2 3");
	check("HEADER Message-ID \"<1@x>\"", "1");
	check("HEADER X-Missing \"\"", "");
	check("HEADER \"Subject\" nested", "");     /* the inner message is not the header */
	check("FROM NIL", "");
}

static void test_body_text(void **state)
{
	(void)state;
	check("BODY bob", "1");
	check("BODY \"body text\"", "1");
	check("BODY alice", "");                    /* header is not body */
	check("TEXT alice", "1");
	check("TEXT \"hello w\xc3\xb6rld\"", "1");   /* decoded subject in TEXT */
	check("TEXT bob", "1");
	/* base64 latin-1 body, decoded and converted. */
	check("BODY \"caf\xc3\xa9 est tr\xc3\xa8s\"", "2");
	check("BODY \"\xc3\xa7""a va\"", "2");
	check("BODY TGUg", "");
	/* multipart: QP soft break, base64 HTML, nested message. */
	check("BODY \"softbroken w\xc3\xb6rd\"", "3");
	check("BODY \"equals = sign\"", "3");
	check("BODY \"gr\xc3\xbc\xc3\x9f" "e aus k\xc3\xb6ln\"", "3");
	check("BODY \"GR\xc3\x9c\xc3\x9f" "E\"", "3");
	check("BODY \"html part\"", "3");
	check("BODY \"nested message body\"", "3");
	check("BODY \"inner subj\xc3\xa9" "ct\"", "3");
	check("BODY secretword", "");               /* not a text part */
	check("BODY preamblemarker", "");
	check("BODY epiloguemarker", "");
	check("BODY \"not a delimiter\"", "");      /* inside the attachment */
	check("TEXT multipart", "3");
	check("BODY \"\"", "1 2 3 4");
	check("TEXT nobody", "4");
	check("BODY nobody", "");
}

static void test_sets(void **state)
{
	(void)state;
	check("1", "1");
	check("2:3", "2 3");
	check("3:2", "2 3");
	check("*", "4");
	check("*:3", "3 4");
	check("1,3", "1 3");
	check("1,3:*", "1 3 4");
	check("5:7", "");
	check("4:9", "4");
	check("4294967295", "");
	check("UID 10", "1");
	check("UID 20:30", "2 3");
	check("UID *", "4");
	check("UID 35:*", "4");
	check("UID 50:*", "4");                     /* unordered: 40:50 */
	check("UID 1:15,31:39", "1");
	check("$", "2 4");
	check("UID $", "2 4");
	check("NOT $", "1 3");
	check("uid 1:* 2:3", "2 3");

	/* An empty mailbox: '*' is 0 and matches nothing real. */
	struct imap_search_ctx empty = tctx;
	char got[64];
	empty.max_seq = 0;
	empty.max_uid = 0;
	empty.nsaved = 0;
	run_ctx("*", &empty, got, sizeof(got));
	assert_string_equal(got, "");
	run_ctx("$", &empty, got, sizeof(got));
	assert_string_equal(got, "");
	run_ctx("2:*", &empty, got, sizeof(got));
	assert_string_equal(got, "1 2");            /* 0:2 */
}

static void test_modseq(void **state)
{
	(void)state;
	check("MODSEQ 200", "2 3 4");
	check("MODSEQ 0", "1 2 3 4");
	check("MODSEQ 401", "");
	check("MODSEQ \"/flags/\\\\seen\" all 300", "3 4");
	check("MODSEQ \"/flags/$label1\" PRIV 300", "3 4");
	check("MODSEQ \"/flags/\\\\draft\" shared 1", "1 2 3 4");

	size_t n;
	struct imap_arg *args = tk("MODSEQ 5 $ FROM x", &n);
	struct imap_search *s = NULL;
	struct imap_search_info info;
	char *err = NULL;
	assert_int_equal(imap_search_compile(args, n, false, &s, &info, &err), 0);
	assert_true(info.uses_modseq);
	assert_true(info.uses_saved);
	assert_false(info.return_given);
	assert_int_equal(info.ret, 0);
	assert_true(imap_search_needs_message(s));
	imap_search_free(&s);
	tk_free_all();
}

static void test_not_or(void **state)
{
	(void)state;
	check("NOT SEEN", "2 4");
	check("NOT NOT SEEN", "1 3");
	check("OR SEEN FLAGGED", "1 2 3");
	check("OR (SEEN DELETED) 4", "3 4");
	check("NOT OR SEEN FLAGGED", "4");
	check("OR NOT SEEN NOT RECENT", "1 2 4");
	check("OR OR 1 2 OR 3 4", "1 2 3 4");
	check("OR 1 OR 2 OR 3 NOT ALL", "1 2 3");
	check("(SEEN)", "1 3");
	check("((SEEN) (NOT DELETED))", "1");
	check("SEEN UNDELETED", "1");
	check("NOT (SEEN UNDELETED)", "2 3 4");
	check("OR (FROM alice SUBJECT hello) (BODY caf\xc3\xa9)", "1 2");
	check("NOT BODY bob", "2 3 4");
	check("OR NOT 1 NOT 2", "1 2 3 4");
	check("not (or 1 2)", "3 4");

	/* Depth 63 is fine, 64 is not. */
	char q[300];
	size_t k = 0;
	for (int i = 0; i < 63; i++)
		k += (size_t)snprintf(q + k, sizeof(q) - k, "(");
	k += (size_t)snprintf(q + k, sizeof(q) - k, "SEEN");
	for (int i = 0; i < 63; i++)
		k += (size_t)snprintf(q + k, sizeof(q) - k, ")");
	check(q, "1 3");
	k = 0;
	for (int i = 0; i < 32; i++)
		k += (size_t)snprintf(q + k, sizeof(q) - k, "NOT ");
	k += (size_t)snprintf(q + k, sizeof(q) - k, "SEEN");
	check(q, "1 3");
}

static void test_return_charset(void **state)
{
	(void)state;
	static const struct {
		const char *q;
		bool allow;
		bool given;
		unsigned ret;
	} t[] = {
		{ "ALL", true, false, 0 },
		{ "RETURN () ALL", true, true, IMAP_SEARCH_RET_ALL },
		{ "RETURN (MIN MAX) 1:*", true, true, IMAP_SEARCH_RET_MIN | IMAP_SEARCH_RET_MAX },
		{ "return (count save all) SEEN", true, true,
		  IMAP_SEARCH_RET_COUNT | IMAP_SEARCH_RET_SAVE | IMAP_SEARCH_RET_ALL },
		{ "RETURN (MIN) CHARSET UTF-8 SEEN", true, true, IMAP_SEARCH_RET_MIN },
		{ "CHARSET us-ascii SEEN", true, false, 0 },
		{ "CHARSET \"utf-8\" SEEN", false, false, 0 },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		size_t n;
		struct imap_arg *args = tk(t[i].q, &n);
		struct imap_search *s = NULL;
		struct imap_search_info info;
		char *err = NULL;
		if (imap_search_compile(args, n, t[i].allow, &s, &info, &err) != 0)
			fail_msg("%s: %s", t[i].q, err);
		assert_int_equal(info.return_given, t[i].given);
		assert_int_equal(info.ret, t[i].ret);
		assert_false(info.uses_modseq);
		assert_false(info.uses_saved);
		assert_false(imap_search_needs_message(s));
		imap_search_free(&s);
		tk_free_all();
	}
	check("RETURN () CHARSET UTF-8 SUBJECT \"w\xc3\xb6rld\"", "1");

	/* BADCHARSET */
	check_err("CHARSET ISO-8859-1 SEEN", MP_EUNIMPL);
	check_err("RETURN (ALL) CHARSET KOI8-R SEEN", MP_EUNIMPL);
	check_err("CHARSET \"UTF-16\" SUBJECT x", MP_EUNIMPL);

	/* RETURN without ESEARCH is an unknown key. */
	size_t n;
	struct imap_arg *args = tk("RETURN (MIN) ALL", &n);
	struct imap_search *s = NULL;
	struct imap_search_info info;
	char *err = NULL;
	assert_int_equal(imap_search_compile(args, n, false, &s, &info, &err), MP_EINVAL);
	assert_null(s);
	assert_non_null(err);
	free(err);
	tk_free_all();
}

static void test_errors(void **state)
{
	(void)state;
	static const char *const bad[] = {
		"",                          /* no key at all */
		"FOO",                       /* unknown key */
		"SEEN FOO",
		"RETURN (MIN)",              /* no key after RETURN */
		"RETURN",
		"RETURN MIN ALL",            /* not a list */
		"RETURN (MIN PARTIAL) ALL",  /* unknown option */
		"RETURN ((MIN)) ALL",
		"CHARSET",
		"CHARSET (UTF-8) ALL",
		"CHARSET UTF-8",
		"ALL CHARSET UTF-8",         /* CHARSET only first */
		"RETURN (ALL) RETURN (ALL) ALL",
		"NOT",
		"OR SEEN",
		"OR",
		"()",
		"FROM",
		"FROM (a)",
		"SUBJECT",
		"HEADER",
		"HEADER X-Custom",
		"HEADER \"\" x",
		"HEADER \"a:b\" x",
		"HEADER (a) x",
		"BODY",
		"TEXT",
		"KEYWORD",
		"KEYWORD \"\"",
		"UNKEYWORD",
		"LARGER",
		"LARGER x",
		"LARGER -1",
		"LARGER 1.5",
		"SMALLER 9223372036854775808",
		"SMALLER 99999999999999999999999",
		"BEFORE",
		"BEFORE 32-Jan-2020",
		"BEFORE 29-Feb-2021",
		"ON 1-Foo-2020",
		"ON 1-Jan-20",
		"ON 2020-01-01",
		"SINCE 001-Jan-2020",
		"SINCE {10}\r\n1-Jan-2020",  /* dates are atoms or quoted */
		"SENTON",
		"SENTBEFORE x",
		"SENTSINCE 1-Jan-2020x",
		"UID",
		"UID x",
		"UID (1)",
		"UID 0",
		"UID 1:",
		"UID :1",
		"UID 1,,2",
		"UID 1,",
		"UID 1:2:3",
		"UID $,1",
		"UID 4294967296",
		"0",
		"1:0",
		"*:",
		"1-2",
		"$$",
		"MODSEQ",
		"MODSEQ x",
		"MODSEQ -1",
		"MODSEQ 9223372036854775808",
		"MODSEQ \"/flags/\\\\seen\" all",
		"MODSEQ \"/flags/\\\\seen\" any 5",
		"MODSEQ \"/flags/\\\\seen\" 5",
		"OLDER",
		"OLDER 0",
		"YOUNGER x",
		"YOUNGER 4294967296",
		"\"SEEN\"",                  /* a key is an atom */
		"NIL",
		"SEEN (ALL ())",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		check_err(bad[i], MP_EINVAL);
	/* The BAD text names a plain unknown key, and only a plain one. */
	struct imap_arg u = { IMAP_ARG_ATOM, "FOOBAR", 6, false, NULL, 0 };
	struct imap_search *us = NULL;
	char *uerr = NULL;
	assert_int_equal(imap_search_compile(&u, 1, true, &us, NULL, &uerr), MP_EINVAL);
	assert_non_null(strstr(uerr, "FOOBAR"));
	free(uerr);
	u.s = "FOO\xff";
	u.len = 4;
	assert_int_equal(imap_search_compile(&u, 1, true, &us, NULL, &uerr), MP_EINVAL);
	assert_null(strchr(uerr, '\xff'));
	free(uerr);
	/* literal8 is no search string */
	struct imap_arg a[2] = {
		{ IMAP_ARG_ATOM, "BODY", 4, false, NULL, 0 },
		{ IMAP_ARG_LITERAL, "x", 1, true, NULL, 0 },
	};
	struct imap_search *s = NULL;
	char *err = NULL;
	assert_int_equal(imap_search_compile(a, 2, true, &s, NULL, &err), MP_EINVAL);
	free(err);
	/* A list with nothing in it, built by hand. */
	struct imap_arg l[1] = { { IMAP_ARG_LIST, NULL, 0, false, NULL, 0 } };
	err = NULL;
	assert_int_equal(imap_search_compile(l, 1, true, &s, NULL, &err), MP_EINVAL);
	assert_null(s);
	free(err);
}

static void test_limits(void **state)
{
	(void)state;
	/* 64 levels of nesting: too deep. */
	char q[400];
	size_t k = 0;
	for (int i = 0; i < 64; i++)
		k += (size_t)snprintf(q + k, sizeof(q) - k, "(");
	k += (size_t)snprintf(q + k, sizeof(q) - k, "SEEN");
	for (int i = 0; i < 64; i++)
		k += (size_t)snprintf(q + k, sizeof(q) - k, ")");
	check_err(q, MP_EINVAL);
	k = 0;
	for (int i = 0; i < 64; i++)
		k += (size_t)snprintf(q + k, sizeof(q) - k, "NOT ");
	k += (size_t)snprintf(q + k, sizeof(q) - k, "SEEN");
	check_err(q, MP_EINVAL);

	/* 10000 keys are fine, 10001 are not: built by hand. */
	size_t nk = 10001;
	struct imap_arg *a = calloc(nk, sizeof(*a));
	assert_non_null(a);
	for (size_t i = 0; i < nk; i++) {
		a[i].type = IMAP_ARG_ATOM;
		a[i].s = "SEEN";
		a[i].len = 4;
	}
	struct imap_search *s = NULL;
	char *err = NULL;
	assert_int_equal(imap_search_compile(a, nk - 1, true, &s, NULL, &err), 0);
	struct imap_search_msg m;
	bool match = false;
	to_msg(&tmsgs[0], &m, false);
	assert_int_equal(imap_search_match(s, &tctx, &m, &match), 0);
	assert_true(match);
	imap_search_free(&s);
	assert_int_equal(imap_search_compile(a, nk, true, &s, NULL, &err), MP_EINVAL);
	assert_null(s);
	assert_non_null(err);
	free(err);
	/* A list counts as a key too: 9999 SEEN in a list plus the list. */
	struct imap_arg lst = { IMAP_ARG_LIST, NULL, 0, false, a, 10000 };
	err = NULL;
	assert_int_equal(imap_search_compile(&lst, 1, true, &s, NULL, &err), MP_EINVAL);
	free(err);
	lst.nlist = 9999;
	assert_int_equal(imap_search_compile(&lst, 1, true, &s, NULL, &err), 0);
	imap_search_free(&s);
	free(a);

	/* A long sequence set: 20000 times "7," then "3". */
	size_t sl = 2 * 20000 + 1;
	char *set = malloc(sl + 1);
	assert_non_null(set);
	for (size_t i = 0; i < 20000; i++)
		memcpy(set + 2 * i, "7,", 2);
	set[sl - 1] = '3';
	set[sl] = '\0';
	struct imap_arg sa = { IMAP_ARG_ATOM, set, strlen(set), false, NULL, 0 };
	err = NULL;
	assert_int_equal(imap_search_compile(&sa, 1, true, &s, NULL, &err), 0);
	to_msg(&tmsgs[2], &m, false);
	assert_int_equal(imap_search_match(s, &tctx, &m, &match), 0);
	assert_true(match);
	to_msg(&tmsgs[0], &m, false);
	assert_int_equal(imap_search_match(s, &tctx, &m, &match), 0);
	assert_false(match);
	imap_search_free(&s);
	free(set);
}

/* Matching without the message (data NULL) for keys that need it is
 * harmless: the message is empty. */
static void test_needs_message(void **state)
{
	(void)state;
	static const struct {
		const char *q;
		bool needs;
	} t[] = {
		{ "ALL", false },          { "SEEN 1:* UID 5", false }, { "LARGER 5", false },
		{ "SINCE 1-Jan-2000", false }, { "SENTON 1-Jan-2000", true },
		{ "FROM x", true },        { "HEADER a b", true },      { "BODY x", true },
		{ "TEXT x", true },        { "NOT OR SEEN SUBJECT x", true },
		{ "MODSEQ 1 OLDER 5 YOUNGER 5", false },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		size_t n;
		struct imap_arg *args = tk(t[i].q, &n);
		struct imap_search *s = NULL;
		char *err = NULL;
		assert_int_equal(imap_search_compile(args, n, true, &s, NULL, &err), 0);
		if (imap_search_needs_message(s) != t[i].needs)
			fail_msg("%s", t[i].q);
		struct imap_search_msg m;
		bool match = true;
		to_msg(&tmsgs[0], &m, false);
		assert_int_equal(imap_search_match(s, &tctx, &m, &match), 0);
		imap_search_free(&s);
		tk_free_all();
	}
	assert_false(imap_search_needs_message(NULL));
}

/* Odd MIME: no boundary, missing close delimiter, bare LF line ends,
 * unknown CTE and charset, and parts nested past the limit. */
static void test_mime_edges(void **state)
{
	(void)state;
	static const struct {
		const char *msg;
		const char *needle;
		bool want;
	} t[] = {
		{ "Content-Type: multipart/mixed\r\n\r\nabc\r\n", "abc", false },
		{ "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\n"
		  "lf only\n--b--\n", "lf only", true },
		{ "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\ntruncated part",
		  "truncated part", true },
		{ "Content-Transfer-Encoding: x-weird\r\n\r\nraw text", "raw text", true },
		{ "Content-Type: text/plain; charset=x-unknown\r\n\r\nstill text", "still text", true },
		{ "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
		  "////", "\xef\xbf\xbd", true },
		{ "Content-Type: image/png\r\n\r\npixels", "pixels", false },
		{ "Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: in digest\r\n"
		  "\r\ndigest body\r\n--d--\r\n", "digest body", true },
		/* a digest's parts are messages: their header is body text too */
		{ "Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\n"
		  "Subject: =?UTF-8?Q?in_digest?=\r\n\r\ndigest body\r\n--d--\r\n", "in digest", true },
		/* a part's own MIME header is not body text */
		{ "Content-Type: multipart/mixed; boundary=d\r\n\r\n--d\r\nSubject: in mixed\r\n"
		  "\r\nmixed body\r\n--d--\r\n", "in mixed", false },
		{ "Content-Type: TEXT/PLAIN ; CHARSET = \"ISO-8859-1\"\r\n\r\n\xe9t\xe9",
		  "\xc3\xa9t\xc3\xa9", true },
		{ "no header at all", "", true },
		{ "", "x", false },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		char q[128];
		snprintf(q, sizeof(q), "BODY \"%s\"", t[i].needle);
		size_t n;
		struct imap_arg *args = tk(q, &n);
		struct imap_search *s = NULL;
		char *err = NULL;
		assert_int_equal(imap_search_compile(args, n, true, &s, NULL, &err), 0);
		struct imap_search_msg m;
		to_msg(&tmsgs[0], &m, false);
		size_t len = strlen(t[i].msg);
		char *copy = malloc(len + 1);
		assert_non_null(copy);
		memcpy(copy, t[i].msg, len);
		m.data = copy;
		m.len = len;
		bool match = !t[i].want;
		assert_int_equal(imap_search_match(s, &tctx, &m, &match), 0);
		if (match != t[i].want)
			fail_msg("case %zu", i);
		free(copy);
		imap_search_free(&s);
		tk_free_all();
	}

	/* 40 nested multiparts: the walk stops at its depth limit, without
	 * error, and the text beyond it is not searched. */
	size_t cap = 40 * 80 + 200;
	char *deep = malloc(cap);
	assert_non_null(deep);
	size_t k = 0;
	for (int i = 0; i < 40; i++)
		k += (size_t)snprintf(deep + k, cap - k,
				      "Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n",
				      i, i);
	k += (size_t)snprintf(deep + k, cap - k, "\r\ndeepest\r\n");
	size_t n;
	struct imap_arg *args = tk("BODY deepest", &n);
	struct imap_search *s = NULL;
	char *err = NULL;
	assert_int_equal(imap_search_compile(args, n, true, &s, NULL, &err), 0);
	struct imap_search_msg m;
	to_msg(&tmsgs[0], &m, false);
	m.data = deep;
	m.len = k;
	bool match = true;
	assert_int_equal(imap_search_match(s, &tctx, &m, &match), 0);
	assert_false(match);
	imap_search_free(&s);
	tk_free_all();
	free(deep);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_flags),
		cmocka_unit_test(test_sizes_dates),
		cmocka_unit_test(test_headers),
		cmocka_unit_test(test_body_text),
		cmocka_unit_test(test_sets),
		cmocka_unit_test(test_modseq),
		cmocka_unit_test(test_not_or),
		cmocka_unit_test(test_return_charset),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_limits),
		cmocka_unit_test(test_needs_message),
		cmocka_unit_test(test_mime_edges),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
