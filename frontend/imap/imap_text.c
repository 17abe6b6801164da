/*
 * imap_text: header fields, RFC 2047 encoded words, charsets, transfer
 * encodings and case folding, as SEARCH, SORT and FETCH need them.
 *
 * Every function appends to the mp_buf it is given (it never resets it),
 * so a caller may build one string from several calls; a fresh buffer
 * gives exactly the result. Inputs are bytes with a length, never trusted
 * to be NUL-terminated or valid UTF-8. Bad input decodes as far as it can;
 * the only errors are memory (MP_ENOMEM, or MP_ENOSPC from the caller's
 * buffer limit) and, where the API says so, MP_EUNIMPL.
 *
 * Never: call setlocale (the process is threaded; towlower_l with a
 * private C.UTF-8 locale object is used for code points outside the
 * built-in table); loop without a bound; read past len.
 */
#include "imap_text.h"

#include <errno.h>
#include <iconv.h>
#include <locale.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <wctype.h>

#include "mp_buf.h"
#include "mp_error.h"
#include "mp_scram.h"

/* Longest charset name we hand to iconv_open (RFC 2978 names are <= 40). */
#define TEXT_MAX_CHARSET 64

static bool text_is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

static char text_ascii_lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c + ('a' - 'A')) : c;
}

static bool text_ieq(const char *a, size_t alen, const char *b, size_t blen)
{
	if (alen != blen)
		return false;
	for (size_t i = 0; i < alen; i++)
		if (text_ascii_lower(a[i]) != text_ascii_lower(b[i]))
			return false;
	return true;
}

/* ------------------------------------------------------------- UTF-8 */

/* Decode one code point at s[0..len). *n_r: bytes used (>= 1). Returns the
 * code point, or U+FFFD for an invalid, overlong, surrogate or truncated
 * sequence (then *n_r is 1: resynchronise on the next byte). */
static uint32_t text_utf8_next(const unsigned char *s, size_t len, size_t *n_r)
{
	unsigned char c = s[0];
	uint32_t cp, min;
	size_t n;

	*n_r = 1;
	if (c < 0x80)
		return c;
	if (c >= 0xC2 && c <= 0xDF) {
		n = 2;
		cp = c & 0x1F;
		min = 0x80;
	} else if (c >= 0xE0 && c <= 0xEF) {
		n = 3;
		cp = c & 0x0F;
		min = 0x800;
	} else if (c >= 0xF0 && c <= 0xF4) {
		n = 4;
		cp = c & 0x07;
		min = 0x10000;
	} else {
		return 0xFFFD;
	}
	if (len < n)
		return 0xFFFD;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xC0) != 0x80)
			return 0xFFFD;
		cp = (cp << 6) | (s[i] & 0x3F);
	}
	if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
		return 0xFFFD;
	*n_r = n;
	return cp;
}

static size_t text_utf8_encode(uint32_t cp, char out[4])
{
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (char)(0xC0 | (cp >> 6));
		out[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (char)(0xE0 | (cp >> 12));
		out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		out[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	out[0] = (char)(0xF0 | (cp >> 18));
	out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
	out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
	out[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

/* Append bytes as valid UTF-8: valid runs copied, each bad byte U+FFFD. */
static int text_append_sanitized(struct mp_buf *out, const char *in, size_t len)
{
	const unsigned char *s = (const unsigned char *)in;
	size_t i = 0, run = 0;
	int ret;

	while (i < len) {
		size_t n;
		uint32_t cp = text_utf8_next(s + i, len - i, &n);
		if (cp == 0xFFFD && n == 1) {   /* a real U+FFFD uses 3 bytes */
			if (i > run && (ret = mp_buf_append(out, in + run, i - run)) != MP_OK)
				return ret;
			if ((ret = mp_buf_append(out, "\xEF\xBF\xBD", 3)) != MP_OK)
				return ret;
			i++;
			run = i;
			continue;
		}
		i += n;
	}
	if (len > run)
		return mp_buf_append(out, in + run, len - run);
	return mp_buf_append(out, "", 0);
}

/* ------------------------------------------------------------ headers */

struct text_field {
	const char *name;
	size_t name_len;
	const char *value;  /* after the colon, up to the last line's end */
	size_t value_len;
	const char *raw;    /* the whole field with its final line end */
	size_t raw_len;
};

/* One line from pos: content [pos, *end_r) without the line end, next line
 * at *next_r. */
static void text_line(const char *s, size_t len, size_t pos, size_t *end_r, size_t *next_r)
{
	const char *nl = memchr(s + pos, '\n', len - pos);
	size_t e = nl != NULL ? (size_t)(nl - s) : len;
	*next_r = nl != NULL ? e + 1 : len;
	if (e > pos && s[e - 1] == '\r')
		e--;
	*end_r = e;
}

/* The next field from *pos; 1 with *f, 0 at the end of the header. Lines
 * without a colon and stray continuation lines are skipped. */
static int text_field_next(const char *hdr, size_t len, size_t *pos, struct text_field *f)
{
	while (*pos < len) {
		size_t ls = *pos, le, next;
		text_line(hdr, len, ls, &le, &next);
		if (le == ls) {
			*pos = len;   /* the empty line ends the header */
			return 0;
		}
		*pos = next;
		if (text_is_wsp(hdr[ls]))
			continue;
		const char *colon = memchr(hdr + ls, ':', le - ls);
		if (colon == NULL)
			continue;
		size_t nl = (size_t)(colon - (hdr + ls));
		while (nl > 0 && text_is_wsp(hdr[ls + nl - 1]))
			nl--;   /* obsolete "Subject :" (RFC 5322 §4.5) */
		size_t vend = le;
		while (*pos < len && text_is_wsp(hdr[*pos])) {
			text_line(hdr, len, *pos, &le, &next);
			vend = le;
			*pos = next;
		}
		f->name = hdr + ls;
		f->name_len = nl;
		f->value = colon + 1;
		f->value_len = vend - (size_t)(colon + 1 - hdr);
		f->raw = hdr + ls;
		f->raw_len = *pos - ls;
		return 1;
	}
	return 0;
}

size_t imap_hdr_block_len(const char *data, size_t len)
{
	size_t pos = 0;

	while (pos < len) {
		size_t le, next;
		text_line(data, len, pos, &le, &next);
		if (le == pos && next > pos && data[next - 1] == '\n')
			return next;
		pos = next;
	}
	return len;
}

int imap_hdr_foreach(const char *hdr, size_t len, imap_hdr_cb cb, void *ctx)
{
	struct text_field f;
	size_t pos = 0;

	while (text_field_next(hdr, len, &pos, &f) == 1) {
		int r = cb(ctx, f.name, f.name_len, f.value, f.value_len);
		if (r != 0)
			return r;
	}
	return 0;
}

/* Append a raw value unfolded (CR and LF dropped) and trimmed. */
static int text_append_unfolded(struct mp_buf *out, const char *v, size_t len)
{
	size_t a = 0, b = len;
	int ret;

	while (a < b && (text_is_wsp(v[a]) || v[a] == '\r' || v[a] == '\n'))
		a++;
	while (b > a && (text_is_wsp(v[b - 1]) || v[b - 1] == '\r' || v[b - 1] == '\n'))
		b--;
	if ((ret = mp_buf_reserve(out, b - a)) != MP_OK)
		return ret;
	size_t run = a;
	for (size_t i = a; i < b; i++) {
		if (v[i] != '\r' && v[i] != '\n')
			continue;
		if (i > run && (ret = mp_buf_append(out, v + run, i - run)) != MP_OK)
			return ret;
		run = i + 1;
	}
	return mp_buf_append(out, v + run, b - run);
}

int imap_hdr_get(const char *hdr, size_t len, const char *name, struct mp_buf *out)
{
	struct text_field f;
	size_t pos = 0, nlen = strlen(name);

	while (text_field_next(hdr, len, &pos, &f) == 1) {
		if (!text_ieq(f.name, f.name_len, name, nlen))
			continue;
		int ret = text_append_unfolded(out, f.value, f.value_len);
		return ret != MP_OK ? ret : 1;
	}
	return 0;
}

int imap_hdr_filter(const char *hdr, size_t len, const char *const *names,
		    size_t nnames, bool not, struct mp_buf *out)
{
	struct text_field f;
	size_t pos = 0;
	int ret;

	while (text_field_next(hdr, len, &pos, &f) == 1) {
		bool listed = false;
		for (size_t i = 0; i < nnames && !listed; i++)
			listed = text_ieq(f.name, f.name_len, names[i], strlen(names[i]));
		if (listed == not)
			continue;
		if ((ret = mp_buf_append(out, f.raw, f.raw_len)) != MP_OK)
			return ret;
		/* The last field of a header without an end: end it here. */
		if (f.raw[f.raw_len - 1] != '\n' && (ret = mp_buf_append(out, "\r\n", 2)) != MP_OK)
			return ret;
	}
	return mp_buf_append(out, "\r\n", 2);
}

/* ---------------------------------------------------------- charsets */

static bool text_is_utf8_name(const char *cs, size_t len)
{
	static const char *const names[] = { "utf-8", "utf8", "us-ascii", "ascii",
					     "ansi_x3.4-1968", "us" };
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (text_ieq(cs, len, names[i], strlen(names[i])))
			return true;
	return false;
}

/* A name we are willing to give iconv_open: letters, digits and - _ . :
 * ( ) +; no '/', so no "//TRANSLIT" suffixes or paths. */
static bool text_charset_ok(const char *cs, size_t len)
{
	if (len == 0 || len > TEXT_MAX_CHARSET)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = cs[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_' || c == '.' || c == ':' || c == '(' || c == ')' ||
		      c == '+'))
			return false;
	}
	return true;
}

static int text_to_utf8_n(const char *charset, size_t cslen, const char *in, size_t len,
			  struct mp_buf *out)
{
	char name[TEXT_MAX_CHARSET + 1];
	char tmp[1024];
	int ret = MP_OK;

	if (text_is_utf8_name(charset, cslen))
		return text_append_sanitized(out, in, len);
	if (!text_charset_ok(charset, cslen))
		return MP_EUNIMPL;
	memcpy(name, charset, cslen);
	name[cslen] = '\0';
	iconv_t cd = iconv_open("UTF-8", name);
	if (cd == (iconv_t)-1)
		return MP_EUNIMPL;

	char *ip = (char *)(uintptr_t)in;   /* iconv's prototype is not const */
	size_t ileft = len;
	/* Each round consumes input or makes output (1 KiB holds any one
	 * character), so at most 2*len+2 rounds; the bound is a guard. */
	for (size_t rounds = 0; rounds <= 2 * len + 2; rounds++) {
		char *op = tmp;
		size_t oleft = sizeof(tmp);
		size_t r = ileft > 0 ? iconv(cd, &ip, &ileft, &op, &oleft)
				     : iconv(cd, NULL, NULL, &op, &oleft);
		int err = r == (size_t)-1 ? errno : 0;
		if (op > tmp && (ret = mp_buf_append(out, tmp, (size_t)(op - tmp))) != MP_OK)
			break;
		if (err == E2BIG)
			continue;
		if (err == EILSEQ && ileft > 0) {
			if ((ret = mp_buf_append(out, "\xEF\xBF\xBD", 3)) != MP_OK)
				break;
			ip++;
			ileft--;
			continue;
		}
		if (err != 0) {   /* EINVAL: truncated sequence at the end */
			ret = mp_buf_append(out, "\xEF\xBF\xBD", 3);
			break;
		}
		if (ileft == 0 && r != (size_t)-1 && op == tmp)
			break;   /* shift state flushed too */
	}
	iconv_close(cd);
	if (ret == MP_OK)
		ret = mp_buf_append(out, "", 0);
	return ret;
}

int imap_text_to_utf8(const char *charset, const char *in, size_t len, struct mp_buf *out)
{
	if (charset == NULL)
		return text_append_sanitized(out, in, len);
	return text_to_utf8_n(charset, strlen(charset), in, len, out);
}

/* ----------------------------------------------- transfer encodings */

static int text_b64_val(unsigned char c)
{
	return mp_base64_digit(c, '+', '/');
}

static int text_hex_val(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Base64, skipping anything outside the alphabet (line breaks, spaces,
 * junk) and stopping at the first '='. */
static int text_b64_decode(const char *in, size_t len, struct mp_buf *out)
{
	unsigned char tmp[768];
	size_t n = 0;
	uint32_t acc = 0;
	unsigned bits = 0;
	int ret;

	for (size_t i = 0; i < len && in[i] != '='; i++) {
		int v = text_b64_val((unsigned char)in[i]);
		if (v < 0)
			continue;
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			tmp[n++] = (unsigned char)(acc >> bits);
			acc &= (1u << bits) - 1;
		}
		if (n == sizeof(tmp)) {
			if ((ret = mp_buf_append(out, tmp, n)) != MP_OK)
				return ret;
			n = 0;
		}
	}
	return mp_buf_append(out, tmp, n);
}

/* Quoted-printable (RFC 2045 §6.7): =XX, soft line breaks "=" CRLF (also
 * with trailing blanks or a bare LF), trailing blanks of a line dropped; a
 * malformed '=' stays as written. q: the RFC 2047 Q form ('_' is SP). */
static int text_qp_decode(const char *in, size_t len, bool q, struct mp_buf *out)
{
	int ret = mp_buf_reserve(out, len);
	size_t i = 0;

	if (ret != MP_OK)
		return ret;
	while (i < len) {
		char c = in[i];
		if (c == '=') {
			int h = i + 2 < len ? text_hex_val(in[i + 1]) : -1;
			int l = h >= 0 ? text_hex_val(in[i + 2]) : -1;
			if (h >= 0 && l >= 0) {
				char b = (char)(h * 16 + l);
				if ((ret = mp_buf_append(out, &b, 1)) != MP_OK)
					return ret;
				i += 3;
				continue;
			}
			size_t j = i + 1;
			while (j < len && text_is_wsp(in[j]))
				j++;
			if (j < len && in[j] == '\r' && j + 1 < len && in[j + 1] == '\n') {
				i = j + 2;
				continue;
			}
			if (j < len && in[j] == '\n') {
				i = j + 1;
				continue;
			}
			if (j == len) {   /* "=" at the very end: a soft break */
				i = len;
				continue;
			}
		} else if (text_is_wsp(c)) {
			size_t j = i;
			while (j < len && text_is_wsp(in[j]))
				j++;
			if (j == len || in[j] == '\n' || (in[j] == '\r' && j + 1 < len && in[j + 1] == '\n')) {
				i = j;   /* trailing blanks added in transport */
				continue;
			}
			if ((ret = mp_buf_append(out, in + i, j - i)) != MP_OK)
				return ret;
			i = j;
			continue;
		} else if (c == '_' && q) {
			c = ' ';
		}
		if ((ret = mp_buf_append(out, &c, 1)) != MP_OK)
			return ret;
		i++;
	}
	return mp_buf_append(out, "", 0);
}

int imap_text_decode_cte(const char *cte, const char *in, size_t len, struct mp_buf *out)
{
	size_t a = 0, b = cte != NULL ? strlen(cte) : 0;

	while (a < b && (text_is_wsp(cte[a]) || cte[a] == '\r' || cte[a] == '\n'))
		a++;
	while (b > a && (text_is_wsp(cte[b - 1]) || cte[b - 1] == '\r' || cte[b - 1] == '\n'))
		b--;
	const char *c = cte != NULL ? cte + a : "";
	size_t n = b - a;
	if (n == 0 || text_ieq(c, n, "7bit", 4) || text_ieq(c, n, "8bit", 4) ||
	    text_ieq(c, n, "binary", 6))
		return mp_buf_append(out, in, len);
	if (text_ieq(c, n, "base64", 6))
		return text_b64_decode(in, len, out);
	if (text_ieq(c, n, "quoted-printable", 16))
		return text_qp_decode(in, len, false, out);
	return MP_EUNIMPL;
}

/* -------------------------------------------------- RFC 2047 words */

struct text_ew {
	const char *charset;   /* without an RFC 2231 "*lang" suffix */
	size_t charset_len;
	char enc;              /* 'B' or 'Q' */
	const char *text;
	size_t text_len;
	size_t total;          /* bytes from "=?" through "?=" */
};

/* An encoded word at s ("=?" known): 1 with *ew, 0 when it is not one. */
static int text_ew_parse(const char *s, size_t len, struct text_ew *ew)
{
	size_t i = 2;

	while (i < len && s[i] != '?') {
		unsigned char c = (unsigned char)s[i];
		if (c <= ' ' || c >= 0x7F || i - 2 > TEXT_MAX_CHARSET * 2)
			return 0;
		i++;
	}
	if (i == 2 || i + 3 > len || s[i] != '?')
		return 0;
	ew->charset = s + 2;
	ew->charset_len = i - 2;
	const char *star = memchr(ew->charset, '*', ew->charset_len);
	if (star != NULL)
		ew->charset_len = (size_t)(star - ew->charset);
	if (ew->charset_len == 0)
		return 0;
	char e = (char)(s[i + 1] & ~0x20);
	if ((e != 'B' && e != 'Q') || s[i + 2] != '?')
		return 0;
	ew->enc = e;
	i += 3;
	size_t t = i;
	while (i < len && s[i] != '?') {
		unsigned char c = (unsigned char)s[i];
		if (c <= ' ' || c == 0x7F)
			return 0;
		i++;
	}
	if (i + 1 >= len || s[i + 1] != '=')
		return 0;
	ew->text = s + t;
	ew->text_len = i - t;
	ew->total = i + 2;
	return 1;
}

struct text_pending {
	struct mp_buf bytes;   /* decoded, not yet converted */
	const char *charset;   /* borrowed from the input */
	size_t charset_len;
};

static int text_pending_flush(struct text_pending *p, struct mp_buf *out)
{
	int ret = MP_OK;

	if (p->charset == NULL)
		return MP_OK;
	if (p->bytes.len > 0) {
		ret = text_to_utf8_n(p->charset, p->charset_len, p->bytes.data, p->bytes.len, out);
		if (ret == MP_EUNIMPL)
			ret = text_append_sanitized(out, p->bytes.data, p->bytes.len);
	}
	mp_buf_reset(&p->bytes);
	p->charset = NULL;
	return ret;
}

int imap_text_decode_header(const char *v, size_t len, struct mp_buf *out)
{
	struct text_pending p;
	const char *ws = NULL;   /* blanks after an encoded word, held back */
	size_t ws_len = 0;
	bool prev_ew = false;
	size_t i = 0;
	int ret = MP_OK;

	mp_buf_init(&p.bytes, 0);
	p.charset = NULL;
	p.charset_len = 0;
	while (i < len && ret == MP_OK) {
		struct text_ew ew;
		if (v[i] == '=' && i + 1 < len && v[i + 1] == '?' &&
		    text_ew_parse(v + i, len - i, &ew) == 1) {
			/* RFC 2047 §6.2: blanks between adjacent encoded words go;
			 * bytes of words in one charset are converted together so a
			 * character split across two words survives. */
			if (p.charset != NULL &&
			    !text_ieq(p.charset, p.charset_len, ew.charset, ew.charset_len))
				ret = text_pending_flush(&p, out);
			if (ret != MP_OK)
				break;
			p.charset = ew.charset;
			p.charset_len = ew.charset_len;
			ret = ew.enc == 'B' ? text_b64_decode(ew.text, ew.text_len, &p.bytes)
					    : text_qp_decode(ew.text, ew.text_len, true, &p.bytes);
			ws = NULL;
			ws_len = 0;
			prev_ew = true;
			i += ew.total;
			continue;
		}
		size_t j = i;
		if (text_is_wsp(v[i]) || v[i] == '\r' || v[i] == '\n') {
			while (j < len && (text_is_wsp(v[j]) || v[j] == '\r' || v[j] == '\n'))
				j++;
			if (prev_ew) {
				ws = v + i;
				ws_len = j - i;
				i = j;
				continue;
			}
		} else {
			j++;
			while (j < len && !text_is_wsp(v[j]) && v[j] != '\r' && v[j] != '\n' &&
			       !(v[j] == '=' && j + 1 < len && v[j + 1] == '?'))
				j++;
		}
		if ((ret = text_pending_flush(&p, out)) != MP_OK)
			break;
		if (ws != NULL && (ret = mp_buf_append(out, ws, ws_len)) != MP_OK)
			break;
		ws = NULL;
		ws_len = 0;
		prev_ew = false;
		ret = text_append_sanitized(out, v + i, j - i);
		i = j;
	}
	if (ret == MP_OK)
		ret = text_pending_flush(&p, out);
	if (ret == MP_OK && ws != NULL)
		ret = mp_buf_append(out, ws, ws_len);
	if (ret == MP_OK)
		ret = mp_buf_append(out, "", 0);
	mp_buf_free(&p.bytes);
	return ret;
}

/* ------------------------------------------------------------ folding */

static pthread_once_t text_locale_once = PTHREAD_ONCE_INIT;
static locale_t text_locale = (locale_t)0;

static void text_locale_init(void)
{
	/* C.UTF-8 is built into glibc >= 2.35; without it only the table. */
	text_locale = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
}

/* Lowercase one code point: a table for the scripts most mail is in,
 * then towlower_l for the rest. */
static uint32_t text_lower(uint32_t c)
{
	if (c < 0x80)
		return c >= 'A' && c <= 'Z' ? c + 32 : c;
	if (c >= 0xC0 && c <= 0xDE && c != 0xD7)
		return c + 32;
	if (c < 0x100)
		return c;
	if (c <= 0x17F) {   /* Latin Extended-A */
		if (c == 0x130)
			return 'i';
		if (c == 0x178)
			return 0xFF;
		if (c == 0x17F)
			return 's';
		if ((c < 0x138 || (c >= 0x14A && c <= 0x177)) && (c & 1) == 0)
			return c + 1;
		if (((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) && (c & 1) == 1)
			return c + 1;
		return c;
	}
	if (c >= 0x370 && c <= 0x3FF) {   /* Greek */
		if (c == 0x386)
			return 0x3AC;
		if (c >= 0x388 && c <= 0x38A)
			return c + 37;
		if (c == 0x38C)
			return 0x3CC;
		if (c == 0x38E || c == 0x38F)
			return c + 63;
		if (c >= 0x391 && c <= 0x3AB && c != 0x3A2)
			return c + 32;
		if (c == 0x3C2)
			return 0x3C3;   /* final sigma folds with sigma */
		if (c >= 0x3D8 && c <= 0x3EF && (c & 1) == 0)
			return c + 1;
		return c;
	}
	if (c >= 0x400 && c <= 0x52F) {   /* Cyrillic and its supplement */
		if (c <= 0x40F)
			return c + 80;
		if (c <= 0x42F)
			return c + 32;
		if (c >= 0x460 && c <= 0x481 && (c & 1) == 0)
			return c + 1;
		if (c >= 0x48A && c <= 0x4BF && (c & 1) == 0)
			return c + 1;
		if (c == 0x4C0)
			return 0x4CF;
		if (c >= 0x4C1 && c <= 0x4CE && (c & 1) == 1)
			return c + 1;
		if (c >= 0x4D0 && (c & 1) == 0)
			return c + 1;
		return c;
	}
	if (c >= 0x1E00 && c <= 0x1EFF) {   /* Latin Extended Additional */
		if ((c <= 0x1E95 || c >= 0x1EA0) && (c & 1) == 0)
			return c + 1;
		return c;
	}
	if (c >= 0xFF21 && c <= 0xFF3A)     /* fullwidth A-Z */
		return c + 32;
	if (pthread_once(&text_locale_once, text_locale_init) == 0 && text_locale != (locale_t)0) {
		wint_t l = towlower_l((wint_t)c, text_locale);
		if (l <= 0x10FFFF && !(l >= 0xD800 && l <= 0xDFFF))
			return (uint32_t)l;
	}
	return c;
}

int imap_text_fold(const char *in, size_t len, struct mp_buf *out)
{
	const unsigned char *s = (const unsigned char *)in;
	char tmp[512];
	size_t n = 0, i = 0;
	int ret = mp_buf_reserve(out, len);

	if (ret != MP_OK)
		return ret;
	while (i < len) {
		if (n + 4 > sizeof(tmp)) {
			if ((ret = mp_buf_append(out, tmp, n)) != MP_OK)
				return ret;
			n = 0;
		}
		unsigned char c = s[i];
		if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
			while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n'))
				i++;
			tmp[n++] = ' ';
			continue;
		}
		if (c < 0x80) {
			tmp[n++] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
			i++;
			continue;
		}
		size_t used;
		uint32_t cp = text_utf8_next(s + i, len - i, &used);
		i += used;
		n += text_utf8_encode(text_lower(cp), tmp + n);
	}
	return mp_buf_append(out, tmp, n);
}

bool imap_text_contains(const char *hay, size_t hay_len, const char *needle, size_t needle_len)
{
	if (needle_len == 0)
		return true;
	if (needle_len > hay_len)
		return false;
	return memmem(hay, hay_len, needle, needle_len) != NULL;
}

/* ------------------------------------------------- RFC 5256 subject */

/* subj-blob = "[" *BLOBCHAR "]" *WSP at s: its length, or 0. */
static size_t text_subj_blob(const char *s, size_t len)
{
	if (len == 0 || s[0] != '[')
		return 0;
	size_t i = 1;
	while (i < len && s[i] != '[' && s[i] != ']')
		i++;
	if (i >= len || s[i] != ']')
		return 0;
	i++;
	while (i < len && text_is_wsp(s[i]))
		i++;
	return i;
}

/* subj-leader's subj-refwd part, with the blobs before it: *subj-blob
 * ("re" / "fw" ["d"]) *WSP [subj-blob] ":" at s: its length, or 0. */
static size_t text_subj_refwd(const char *s, size_t len)
{
	size_t i = 0, b;

	while ((b = text_subj_blob(s + i, len - i)) > 0)
		i += b;
	if (i + 2 <= len && text_ascii_lower(s[i]) == 'r' && text_ascii_lower(s[i + 1]) == 'e') {
		i += 2;
	} else if (i + 2 <= len && text_ascii_lower(s[i]) == 'f' &&
		   text_ascii_lower(s[i + 1]) == 'w') {
		i += 2;
		if (i < len && text_ascii_lower(s[i]) == 'd')
			i++;
	} else {
		return 0;
	}
	while (i < len && text_is_wsp(s[i]))
		i++;
	i += text_subj_blob(s + i, len - i);
	if (i < len && s[i] == ':')
		return i + 1;
	return 0;
}

int imap_text_base_subject(const char *subj, size_t len, struct mp_buf *out)
{
	struct mp_buf w;
	int ret;

	/* RFC 5256 §2.1 (1): blanks and line ends collapse to one SP. */
	mp_buf_init(&w, 0);
	if ((ret = mp_buf_reserve(&w, len)) != MP_OK)
		return ret;
	for (size_t i = 0; i < len; i++) {
		char c = subj[i];
		if (c == '\t' || c == '\r' || c == '\n')
			c = ' ';
		if (c == ' ' && w.len > 0 && w.data[w.len - 1] == ' ')
			continue;
		w.data[w.len++] = c;
	}
	w.data[w.len] = '\0';

	const char *s = w.data;
	size_t n = w.len;
	/* Every round of each loop removes at least one byte, or ends. */
	for (size_t outer = 0; outer <= len + 1; outer++) {
		/* (2) trailing "(fwd)" and blanks */
		for (;;) {
			if (n > 0 && s[n - 1] == ' ')
				n--;
			else if (n >= 5 && text_ieq(s + n - 5, 5, "(fwd)", 5))
				n -= 5;
			else
				break;
		}
		/* (3) leaders, (4) a leading blob, until neither applies */
		bool changed = true;
		while (changed) {
			changed = false;
			size_t r;
			if (n > 0 && s[0] == ' ') {
				s++;
				n--;
				changed = true;
			} else if ((r = text_subj_refwd(s, n)) > 0) {
				s += r;
				n -= r;
				changed = true;
			}
			size_t b = text_subj_blob(s, n);
			if (b > 0 && b < n) {
				s += b;
				n -= b;
				changed = true;
			}
		}
		/* (5) "[fwd: ... ]" */
		if (n >= 6 && text_ieq(s, 5, "[fwd:", 5) && s[n - 1] == ']') {
			s += 5;
			n -= 6;
			continue;
		}
		break;
	}
	ret = mp_buf_append(out, s, n);
	mp_buf_free(&w);
	return ret;
}

/* ------------------------------------------------------------- dates */

int64_t imap_days_from_civil(int64_t y, unsigned m, unsigned d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	int64_t yoe = y - era * 400;
	int64_t mp = (m + 9) % 12;
	int64_t doy = (153 * mp + 2) / 5 + d - 1;
	int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

unsigned imap_days_in_month(int64_t y, unsigned m)
{
	static const unsigned dm[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
	if (m < 1 || m > 12)
		return 0;
	if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
		return 29;
	return dm[m - 1];
}


unsigned imap_month_number(const char *s, size_t len)
{
	static const char *const names[12] = { "JAN", "FEB", "MAR", "APR", "MAY", "JUN",
					       "JUL", "AUG", "SEP", "OCT", "NOV", "DEC" };
	for (unsigned i = 0; i < 12; i++)
		if (text_ieq(s, len, names[i], 3))
			return i + 1;
	return 0;
}

#define TEXT_MAX_COMMENT_DEPTH 8   /* nested comments in a Date: field */


struct text_dp {
	const char *s;
	size_t len, i;
};

/* Skip CFWS: blanks, line ends, (nested (comments)). false on an
 * unterminated or too deep comment. */
static bool text_dp_cfws(struct text_dp *p)
{
	while (p->i < p->len) {
		char ch = p->s[p->i];
		if (ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n') {
			p->i++;
			continue;
		}
		if (ch != '(')
			return true;
		unsigned depth = 0;
		while (p->i < p->len) {
			ch = p->s[p->i++];
			if (ch == '\\' && p->i < p->len) {
				p->i++;
			} else if (ch == '(') {
				if (++depth > TEXT_MAX_COMMENT_DEPTH)
					return false;
			} else if (ch == ')') {
				if (--depth == 0)
					break;
			}
		}
		if (depth != 0)
			return false;
	}
	return true;
}

static size_t text_dp_digits(struct text_dp *p, unsigned max_digits, int64_t *v_r)
{
	size_t n = 0;
	int64_t v = 0;
	while (p->i < p->len && p->s[p->i] >= '0' && p->s[p->i] <= '9' && n < max_digits) {
		v = v * 10 + (p->s[p->i] - '0');
		p->i++;
		n++;
	}
	*v_r = v;
	return n;
}

static size_t text_dp_alpha(struct text_dp *p)
{
	size_t st = p->i;
	while (p->i < p->len && ((p->s[p->i] >= 'a' && p->s[p->i] <= 'z') ||
				 (p->s[p->i] >= 'A' && p->s[p->i] <= 'Z')))
		p->i++;
	return p->i - st;
}

/* Obsolete zone names (RFC 5322 §4.3): minutes east of UTC; military
 * letters and anything else unknown mean -0000 (no zone information). */
static int text_zone_name(const char *s, size_t len)
{
	static const struct { const char *n; int min; } zones[] = {
		{ "UT", 0 }, { "GMT", 0 }, { "EST", -300 }, { "EDT", -240 },
		{ "CST", -360 }, { "CDT", -300 }, { "MST", -420 }, { "MDT", -360 },
		{ "PST", -480 }, { "PDT", -420 },
	};
	for (size_t k = 0; k < sizeof(zones) / sizeof(zones[0]); k++)
		if (text_ieq(s, len, zones[k].n, strlen(zones[k].n)))
			return zones[k].min;
	return 0;
}

int imap_text_parse_date(const char *s, size_t len, int64_t *t_r, int *zone_min_r)
{
	struct text_dp p = { s, len, 0 };
	int64_t d, y, hh, mm, ss = 0;
	size_t n;

	if (!text_dp_cfws(&p))
		return MP_EINVAL;
	size_t st = p.i;
	if (text_dp_alpha(&p) > 0) {   /* day-of-week */
		static const char *const days[] = { "MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN" };
		bool ok = false;
		for (size_t k = 0; k < 7 && !ok; k++)
			ok = text_ieq(s + st, p.i - st, days[k], 3);
		if (!ok || !text_dp_cfws(&p))
			return MP_EINVAL;
		if (p.i < len && s[p.i] == ',')
			p.i++;
		if (!text_dp_cfws(&p))
			return MP_EINVAL;
	}
	if (text_dp_digits(&p, 2, &d) == 0 || !text_dp_cfws(&p))
		return MP_EINVAL;
	st = p.i;
	if (text_dp_alpha(&p) != 3)
		return MP_EINVAL;
	unsigned m = imap_month_number(s + st, 3);
	if (m == 0 || !text_dp_cfws(&p))
		return MP_EINVAL;
	n = text_dp_digits(&p, 9, &y);
	if (n < 2)
		return MP_EINVAL;
	if (n == 2)
		y += y < 50 ? 2000 : 1900;
	else if (n == 3)
		y += 1900;
	if (!text_dp_cfws(&p))
		return MP_EINVAL;
	if (text_dp_digits(&p, 2, &hh) == 0 || !text_dp_cfws(&p) || p.i >= len ||
	    s[p.i] != ':')
		return MP_EINVAL;
	p.i++;
	if (!text_dp_cfws(&p) || text_dp_digits(&p, 2, &mm) == 0 || !text_dp_cfws(&p))
		return MP_EINVAL;
	if (p.i < len && s[p.i] == ':') {
		p.i++;
		if (!text_dp_cfws(&p) || text_dp_digits(&p, 2, &ss) == 0 || !text_dp_cfws(&p))
			return MP_EINVAL;
	}
	if (hh > 23 || mm > 59 || ss > 60)
		return MP_EINVAL;
	int zone = 0;
	if (p.i < len && (s[p.i] == '+' || s[p.i] == '-')) {
		int64_t z;
		bool neg = s[p.i] == '-';
		p.i++;
		if (text_dp_digits(&p, 4, &z) != 4 || z % 100 > 59)
			return MP_EINVAL;
		zone = (int)(z / 100 * 60 + z % 100) * (neg ? -1 : 1);
	} else {
		st = p.i;
		if (text_dp_alpha(&p) == 0)
			return MP_EINVAL;
		zone = text_zone_name(s + st, p.i - st);
	}
	if (d < 1 || y > 9999 || (unsigned)d > imap_days_in_month(y, m))
		return MP_EINVAL;
	int64_t t = imap_days_from_civil(y, m, (unsigned)d) * 86400 + hh * 3600 + mm * 60 + ss;
	*t_r = t - (int64_t)zone * 60;
	if (zone_min_r != NULL)
		*zone_min_r = zone;
	return 0;
}
