/*
 * fuzz_imap_search: SEARCH programs and the message-text helpers.
 *
 * The first byte picks a mode:
 *   even: the rest, up to the first NUL, is a SEARCH argument line read by
 *         a tiny tokenizer of this file (atoms, "quoted", {n} literals,
 *         NIL, nested lists) into struct imap_arg trees; the program is
 *         compiled and, when it compiles, matched against fixed messages
 *         and against the bytes after the NUL as a message of their own.
 *   odd:  the rest goes through every imap_text function: header block
 *         and fields, get/filter, RFC 2047 decoding, charsets, transfer
 *         encodings, folding, base subject.
 * Checked: compile gives a program xor an error text; matching never
 * fails; decoded and folded text is valid UTF-8; folding is idempotent;
 * header helpers stay inside their input.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "imap_parse.h"
#include "imap_search.h"
#include "imap_text.h"
#include "mp_buf.h"
#include "mp_error.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

#define TK_MAX_ALLOCS 4096
#define TK_MAX_DEPTH 100   /* past the compiler's 64, to reach its limit */

struct tk {
	const char *s;
	size_t len, i;
	void *allocs[TK_MAX_ALLOCS];
	size_t nallocs;
};

static void *tk_alloc(struct tk *t, size_t n)
{
	if (t->nallocs >= TK_MAX_ALLOCS)
		return NULL;
	void *p = calloc(1, n > 0 ? n : 1);
	CHECK(p != NULL);
	t->allocs[t->nallocs++] = p;
	return p;
}

static void tk_free(struct tk *t)
{
	for (size_t i = 0; i < t->nallocs; i++)
		free(t->allocs[i]);
	t->nallocs = 0;
}

static char *tk_strdup(struct tk *t, const char *s, size_t len)
{
	char *p = tk_alloc(t, len + 1);
	if (p != NULL && len > 0)
		memcpy(p, s, len);
	return p;
}

/* Arguments until ')' (inside a list) or the end; false when the input
 * is not an argument line (the parser would have said BAD). */
static bool tk_list(struct tk *t, unsigned depth, struct imap_arg **v_r, size_t *n_r)
{
	size_t cap = 8, n = 0;
	struct imap_arg *v = tk_alloc(t, cap * sizeof(*v));

	if (v == NULL || depth > TK_MAX_DEPTH)
		return false;
	for (;;) {
		while (t->i < t->len && t->s[t->i] == ' ')
			t->i++;
		if (t->i >= t->len) {
			if (depth > 0)
				return false;
			break;
		}
		char c = t->s[t->i];
		if (c == ')') {
			if (depth == 0)
				return false;
			t->i++;
			break;
		}
		if (n == cap) {
			struct imap_arg *nv = tk_alloc(t, 2 * cap * sizeof(*v));
			if (nv == NULL)
				return false;
			memcpy(nv, v, n * sizeof(*v));
			v = nv;
			cap *= 2;
		}
		struct imap_arg *a = &v[n++];
		if (c == '(') {
			t->i++;
			a->type = IMAP_ARG_LIST;
			if (!tk_list(t, depth + 1, &a->list, &a->nlist))
				return false;
		} else if (c == '"') {
			char *o = tk_alloc(t, t->len - t->i);
			size_t k = 0;
			if (o == NULL)
				return false;
			t->i++;
			while (t->i < t->len && t->s[t->i] != '"') {
				if (t->s[t->i] == '\\' && t->i + 1 < t->len)
					t->i++;
				o[k++] = t->s[t->i++];
			}
			if (t->i >= t->len)
				return false;
			t->i++;
			a->type = IMAP_ARG_STRING;
			a->s = o;
			a->len = k;
		} else if (c == '{' || (c == '~' && t->i + 1 < t->len && t->s[t->i + 1] == '{')) {
			bool l8 = c == '~';
			size_t len = 0;
			t->i += l8 ? 2 : 1;
			while (t->i < t->len && t->s[t->i] >= '0' && t->s[t->i] <= '9' && len < 100000)
				len = len * 10 + (size_t)(t->s[t->i++] - '0');
			if (t->i >= t->len || t->s[t->i] != '}')
				return false;
			t->i++;
			if (t->i + 1 < t->len && t->s[t->i] == '\r' && t->s[t->i + 1] == '\n')
				t->i += 2;
			if (len > t->len - t->i)
				return false;
			a->type = IMAP_ARG_LITERAL;
			a->literal8 = l8;
			a->s = tk_strdup(t, t->s + t->i, len);
			a->len = len;
			if (a->s == NULL)
				return false;
			t->i += len;
		} else {
			size_t st = t->i;
			while (t->i < t->len && t->s[t->i] != ' ' && t->s[t->i] != '(' &&
			       t->s[t->i] != ')' && t->s[t->i] != '"')
				t->i++;
			size_t l = t->i - st;
			a->type = l == 3 && strncasecmp(t->s + st, "NIL", 3) == 0 ? IMAP_ARG_NIL
										   : IMAP_ARG_ATOM;
			a->s = tk_strdup(t, t->s + st, l);
			a->len = l;
			if (a->s == NULL)
				return false;
		}
	}
	*v_r = v;
	*n_r = n;
	return true;
}

static const char fz_msg1[] =
	"Date: Mon, 7 Dec 2026 23:30:00 -0800\r\n"
	"From: \"Alice\" <alice@example.com>\r\n"
	"To: bob@example.org\r\n"
	"Subject: =?UTF-8?B?SGVsbG8gV8O2cmxk?=\r\n"
	"\r\n"
	"Hello Bob\r\n";

static const char fz_msg2[] =
	"Date: 1 Jan 98 10:00 GMT\r\n"
	"Subject: =?ISO-8859-1?Q?Caf=E9?=\r\n"
	"Content-Type: multipart/mixed; boundary=b\r\n"
	"\r\n"
	"--b\r\n"
	"Content-Type: text/plain; charset=iso-8859-1\r\n"
	"Content-Transfer-Encoding: base64\r\n"
	"\r\n"
	"TGUgY2Fm6Q==\r\n"
	"--b\r\n"
	"Content-Type: text/html\r\n"
	"Content-Transfer-Encoding: quoted-printable\r\n"
	"\r\n"
	"<b>x=3Dy</b>=\r\n"
	"--b--\r\n";

static bool fz_valid_utf8(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0;
	while (i < len) {
		unsigned char c = p[i];
		size_t k;
		uint32_t cp, min;
		if (c < 0x80) {
			i++;
			continue;
		} else if ((c & 0xE0) == 0xC0) {
			k = 2;
			cp = c & 0x1F;
			min = 0x80;
		} else if ((c & 0xF0) == 0xE0) {
			k = 3;
			cp = c & 0x0F;
			min = 0x800;
		} else if ((c & 0xF8) == 0xF0) {
			k = 4;
			cp = c & 0x07;
			min = 0x10000;
		} else {
			return false;
		}
		if (len - i < k)
			return false;
		for (size_t j = 1; j < k; j++) {
			if ((p[i + j] & 0xC0) != 0x80)
				return false;
			cp = (cp << 6) | (p[i + j] & 0x3F);
		}
		if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
			return false;
		i += k;
	}
	return true;
}

static void fz_search(const char *s, size_t len, bool allow_return)
{
	const char *nul = memchr(s, '\0', len);
	size_t plen = nul != NULL ? (size_t)(nul - s) : len;
	struct tk *t = calloc(1, sizeof(*t));
	struct imap_arg *args = NULL;
	size_t nargs = 0;

	CHECK(t != NULL);
	t->s = s;
	t->len = plen;
	if (tk_list(t, 0, &args, &nargs)) {
		struct imap_search *prog = NULL;
		struct imap_search_info info;
		char *err = NULL;
		int ret = imap_search_compile(args, nargs, allow_return, &prog, &info, &err);
		if (ret == MP_OK) {
			CHECK(prog != NULL && err == NULL);
			CHECK(allow_return || !info.return_given);
			CHECK(!info.return_given || info.ret != 0);
			static const uint32_t saved[] = { 2, 5, 7 };
			struct imap_search_ctx ctx = { 9, 12, saved, 3, 1796800000 };
			const char *flags[] = { "\\Seen", "$Label1" };
			struct imap_search_msg m = { 0 };
			const char *msgs[3] = { fz_msg1, fz_msg2, nul != NULL ? nul + 1 : "" };
			size_t lens[3] = { sizeof(fz_msg1) - 1, sizeof(fz_msg2) - 1,
					   nul != NULL ? len - plen - 1 : 0 };
			for (uint32_t k = 0; k < 3; k++) {
				m.seq = k + 1;
				m.uid = 2 * k + 5;
				m.flags = flags;
				m.nflags = k;
				m.recent = k == 1;
				m.size = lens[k];
				m.internal_date = 1796715000 - 86400 * (int64_t)k;
				m.modseq = 10 * k;
				m.data = imap_search_needs_message(prog) ? msgs[k] : NULL;
				m.len = m.data != NULL ? lens[k] : 0;
				bool match = false;
				CHECK(imap_search_match(prog, &ctx, &m, &match) == MP_OK);
			}
			imap_search_free(&prog);
			CHECK(prog == NULL);
		} else {
			CHECK(ret == MP_EINVAL || ret == MP_EUNIMPL);
			CHECK(prog == NULL && err != NULL);
			free(err);
		}
	}
	tk_free(t);
	free(t);
}

static int fz_field_cb(void *ctx, const char *name, size_t name_len, const char *value,
		       size_t value_len)
{
	const struct mp_slice *in = ctx;
	CHECK(name >= in->ptr && name + name_len <= in->ptr + in->len);
	CHECK(value >= in->ptr && value + value_len <= in->ptr + in->len);
	return 0;
}

static void fz_text(const char *s, size_t len, unsigned sel)
{
	struct mp_buf a, b;
	mp_buf_init(&a, 0);
	mp_buf_init(&b, 0);

	size_t hl = imap_hdr_block_len(s, len);
	CHECK(hl <= len);
	struct mp_slice in = { s, len };
	CHECK(imap_hdr_foreach(s, hl, fz_field_cb, &in) == 0);
	int r = imap_hdr_get(s, hl, "subject", &a);
	CHECK(r == 0 || r == 1);
	mp_buf_reset(&a);
	const char *names[] = { "From", "subject", "" };
	CHECK(imap_hdr_filter(s, hl, names, 3, (sel & 2) != 0, &a) == MP_OK);
	CHECK(a.len >= 2);
	mp_buf_reset(&a);

	CHECK(imap_text_decode_header(s, len, &a) == MP_OK);
	CHECK(fz_valid_utf8(a.data, a.len));
	mp_buf_reset(&b);
	CHECK(imap_text_fold(a.data, a.len, &b) == MP_OK);
	CHECK(fz_valid_utf8(b.data, b.len));
	/* Folding folded text changes nothing. */
	struct mp_buf c;
	mp_buf_init(&c, 0);
	CHECK(imap_text_fold(b.data, b.len, &c) == MP_OK);
	CHECK(c.len == b.len && memcmp(c.data, b.data, b.len) == 0);
	mp_buf_reset(&c);
	CHECK(imap_text_base_subject(b.data, b.len, &c) == MP_OK);
	CHECK(c.len <= b.len);
	CHECK(imap_text_contains(b.data, b.len, c.data, c.len));
	mp_buf_free(&c);

	mp_buf_reset(&a);
	CHECK(imap_text_fold(s, len, &a) == MP_OK);
	CHECK(fz_valid_utf8(a.data, a.len));

	static const char *const ctes[] = { "base64", "quoted-printable", "7bit", NULL };
	const char *cte = ctes[sel % 4];
	mp_buf_reset(&a);
	CHECK(imap_text_decode_cte(cte, s, len, &a) == MP_OK);
	CHECK(a.len <= len);
	CHECK(imap_text_decode_cte("x-bogus", s, len, &a) == MP_EUNIMPL);

	static const char *const charsets[] = { "utf-8", "iso-8859-1", "shift_jis", "utf-16",
						"iso-2022-jp", "koi8-r", "gb18030", "x-none" };
	mp_buf_reset(&b);
	r = imap_text_to_utf8(charsets[(sel >> 2) % 8], s, len, &b);
	CHECK(r == MP_OK || r == MP_EUNIMPL);
	if (r == MP_OK)
		CHECK(fz_valid_utf8(b.data, b.len));
	mp_buf_free(&a);
	mp_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
	if (n < 1 || n > 65536)
		return 0;
	const char *s = (const char *)d + 1;
	if ((d[0] & 1) == 0)
		fz_search(s, n - 1, (d[0] & 2) == 0);
	else
		fz_text(s, n - 1, d[0] >> 1);
	return 0;
}
