/*
 * smtp_parse: SMTP server-side parsing (RFC 5321 with SIZE, 8BITMIME,
 * BINARYMIME/CHUNKING, SMTPUTF8, DSN and AUTH): the command-line splitter,
 * the command parser and the incremental DATA decoder.
 *
 * Everything here is pure: bytes in, a result or MP_AGAIN out. It never
 * reads past the length it was given, never allocates (the DATA decoder
 * only appends to the caller's buffer), never keeps global state and never
 * performs I/O. Every length a client controls is checked against a named
 * limit from smtp_parse.h before it is copied into a fixed field.
 *
 * The grammar is RFC 5321 §4.1.2 as written, with the tolerances real
 * clients need and nothing more: trailing white space on a command
 * (§4.1.1), spaces after "FROM:"/"TO:", source routes (accepted and
 * dropped, App. C), lower-case hex in xtext.
 */
#include "smtp_parse.h"

#include <arpa/inet.h>
#include <string.h>
#include <sys/socket.h>

#include "mp_error.h"

static void smtp_set_error(struct smtp_error *err, int code, const char *enhanced,
			   const char *text)
{
	err->code = code;
	err->enhanced = enhanced;
	err->text = text;
}

/* ------------------------------------------------------------ characters */

static int smtp_is_alpha(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int smtp_is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static int smtp_is_alnum(unsigned char c)
{
	return smtp_is_alpha(c) || smtp_is_digit(c);
}

/* RFC 5322 §3.2.3 atext, ASCII part. */
static int smtp_is_atext(unsigned char c)
{
	if (smtp_is_alnum(c))
		return 1;
	switch (c) {
	case '!': case '#': case '$': case '%': case '&': case '\'': case '*':
	case '+': case '-': case '/': case '=': case '?': case '^': case '_':
	case '`': case '{': case '|': case '}': case '~':
		return 1;
	default:
		return 0;
	}
}

static unsigned char smtp_lower(unsigned char c)
{
	return c >= 'A' && c <= 'Z' ? (unsigned char)(c - 'A' + 'a') : c;
}

/* s[0..n) equals the literal lit, ASCII case-insensitively (no locale). */
static int smtp_ieq(const unsigned char *s, size_t n, const char *lit)
{
	size_t l = strlen(lit);
	if (n != l)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (smtp_lower(s[i]) != smtp_lower((unsigned char)lit[i]))
			return 0;
	return 1;
}

/* Length (2..4) of the valid UTF-8 sequence at p[0..n), or 0. Refuses what
 * RFC 3629 forbids (overlong forms, surrogates, above U+10FFFF) and also the
 * C1 controls U+0080..U+009F, which have no business in an address or a
 * parameter (RFC 6531 UTF8-non-ascii). */
static size_t smtp_utf8_len(const unsigned char *p, size_t n)
{
	unsigned char lo = 0x80, hi = 0xBF;
	size_t len;

	if (n == 0)
		return 0;
	if (p[0] >= 0xC2 && p[0] <= 0xDF) {
		len = 2;
		if (p[0] == 0xC2)
			lo = 0xA0; /* C1 controls */
	} else if (p[0] >= 0xE0 && p[0] <= 0xEF) {
		len = 3;
		if (p[0] == 0xE0)
			lo = 0xA0; /* overlong */
		else if (p[0] == 0xED)
			hi = 0x9F; /* surrogates */
	} else if (p[0] >= 0xF0 && p[0] <= 0xF4) {
		len = 4;
		if (p[0] == 0xF0)
			lo = 0x90; /* overlong */
		else if (p[0] == 0xF4)
			hi = 0x8F; /* above U+10FFFF */
	} else {
		return 0;
	}
	if (n < len || p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i < len; i++)
		if (p[i] < 0x80 || p[i] > 0xBF)
			return 0;
	return len;
}

/* Decimal digits to uint64, checked digit by digit: 0, -1 for no digits or
 * a non-digit, -2 for overflow. Leading zeros are allowed (1*DIGIT). */
static int smtp_parse_u64(const unsigned char *s, size_t n, uint64_t *v_r)
{
	uint64_t v = 0;
	if (n == 0)
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (!smtp_is_digit(s[i]))
			return -1;
	}
	for (size_t i = 0; i < n; i++) {
		unsigned d = (unsigned)(s[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -2;
		v = v * 10 + d;
	}
	*v_r = v;
	return 0;
}

static int smtp_hex_value(unsigned char c)
{
	if (smtp_is_digit(c))
		return c - '0';
	c = smtp_lower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* RFC 3461 §4: xtext = *( xchar / hexchar ), xchar being '!'..'~' except
 * '+' and '=', hexchar '+' and two hex digits (upper case per the RFC;
 * lower case accepted, harmless). RFC 6531 §3.3 lets an esmtp-value carry
 * UTF-8, kept as is. A hexchar must decode to printable ASCII (RFC 3461
 * requires it of ENVID and ORCPT), so the result is a safe C string.
 * Writes at most out_size - 1 octets and a NUL. 0 or -1. */
static int smtp_xtext_decode(const unsigned char *s, size_t n, char *out, size_t out_size,
			     size_t *len_r)
{
	size_t o = 0;
	for (size_t i = 0; i < n;) {
		unsigned char c = s[i];
		size_t step = 1;
		if (c == '+') {
			if (n - i < 3)
				return -1;
			int h = smtp_hex_value(s[i + 1]), l = smtp_hex_value(s[i + 2]);
			if (h < 0 || l < 0)
				return -1;
			c = (unsigned char)(h * 16 + l);
			if (c < 0x20 || c > 0x7E)
				return -1;
			step = 3;
		} else if (c >= 0x80) {
			step = smtp_utf8_len(s + i, n - i);
			if (step == 0)
				return -1;
		} else if (c < '!' || c > '~' || c == '=') {
			return -1;
		}
		size_t w = c >= 0x80 ? step : 1;
		if (w >= out_size - o)
			return -1;
		if (c >= 0x80)
			memcpy(out + o, s + i, w);
		else
			out[o] = (char)c;
		o += w;
		i += step;
	}
	out[o] = '\0';
	*len_r = o;
	return 0;
}

/* ------------------------------------------------------------ addresses */

enum smtp_addr_err {
	SMTP_ADDR_OK = 0,
	SMTP_ADDR_E_SYNTAX,
	SMTP_ADDR_E_UTF8,
	SMTP_ADDR_E_LITERAL,
	SMTP_ADDR_E_LABEL_LONG,
	SMTP_ADDR_E_NO_DOMAIN,
	SMTP_ADDR_E_NULL_RCPT,
	SMTP_ADDR_E_LOCAL_LONG,
	SMTP_ADDR_E_DOMAIN_LONG,
	SMTP_ADDR_E_PATH_LONG,
	SMTP_ADDR_E_COUNT
};

enum smtp_role { SMTP_ROLE_SENDER = 0, SMTP_ROLE_RECIPIENT = 1 };

static const char *const smtp_addr_text[SMTP_ADDR_E_COUNT][2] = {
	[SMTP_ADDR_OK] = { "OK", "OK" },
	[SMTP_ADDR_E_SYNTAX] = { "Bad sender address syntax", "Bad recipient address syntax" },
	[SMTP_ADDR_E_UTF8] = { "Invalid UTF-8 in sender address",
			       "Invalid UTF-8 in recipient address" },
	[SMTP_ADDR_E_LITERAL] = { "Bad address literal in sender address",
				  "Bad address literal in recipient address" },
	[SMTP_ADDR_E_LABEL_LONG] = { "Domain label too long in sender address",
				     "Domain label too long in recipient address" },
	[SMTP_ADDR_E_NO_DOMAIN] = { "Sender address needs a domain",
				    "Recipient address needs a domain" },
	[SMTP_ADDR_E_NULL_RCPT] = { "Null sender not allowed here", "Null recipient not allowed" },
	[SMTP_ADDR_E_LOCAL_LONG] = { "Sender local part too long", "Recipient local part too long" },
	[SMTP_ADDR_E_DOMAIN_LONG] = { "Sender domain too long", "Recipient domain too long" },
	[SMTP_ADDR_E_PATH_LONG] = { "Sender path too long", "Recipient path too long" },
};

static void smtp_addr_error(struct smtp_error *err, enum smtp_role role, enum smtp_addr_err e)
{
	/* RFC 3463: X.1.7 bad sender, X.1.3 bad destination mailbox syntax;
	 * RFC 5321 §4.5.3.1.10: 501 also for a path too long. */
	smtp_set_error(err, 501, role == SMTP_ROLE_SENDER ? "5.1.7" : "5.1.3",
		       smtp_addr_text[e][role]);
}

/* A Domain (RFC 5321 §4.1.2: sub-domain *("." sub-domain), sub-domain =
 * Let-dig [Ldh-str]) at the start of s[0..n), extended with U-labels (RFC
 * 6531 §3.3: any valid non-ASCII UTF-8 here; IDNA validity is the server's
 * business). Stops at the first octet that cannot continue it; *len_r is
 * its length. The 63-octet limit is applied to ASCII labels only: a U-label
 * is limited by its A-label form, which we do not compute; the whole domain
 * is still bounded by SMTP_DOMAIN_MAX. */
static enum smtp_addr_err smtp_scan_domain(const unsigned char *s, size_t n, size_t *len_r,
					   unsigned *flags)
{
	size_t i = 0;
	for (;;) {
		size_t start = i;
		int utf8 = 0;
		while (i < n) {
			unsigned char c = s[i];
			if (c >= 0x80) {
				size_t l = smtp_utf8_len(s + i, n - i);
				if (l == 0)
					return SMTP_ADDR_E_UTF8;
				i += l;
				utf8 = 1;
			} else if (smtp_is_alnum(c) || c == '-') {
				i++;
			} else {
				break;
			}
		}
		if (i == start || s[start] == '-' || s[i - 1] == '-')
			return SMTP_ADDR_E_SYNTAX;
		if (!utf8 && i - start > SMTP_LABEL_MAX)
			return SMTP_ADDR_E_LABEL_LONG;
		if (utf8)
			*flags |= SMTP_ADDR_UTF8;
		if (i < n && s[i] == '.') {
			i++;
			continue;
		}
		break;
	}
	*len_r = i;
	return SMTP_ADDR_OK;
}

/* RFC 5321 §4.1.3 IPv4-address-literal: Snum 3("." Snum), Snum 1*3DIGIT
 * of value 0..255. */
static int smtp_ipv4_ok(const unsigned char *s, size_t n)
{
	size_t i = 0;
	for (int part = 0; part < 4; part++) {
		if (part > 0) {
			if (i >= n || s[i] != '.')
				return 0;
			i++;
		}
		unsigned v = 0;
		size_t digits = 0;
		while (i < n && smtp_is_digit(s[i]) && digits < 3) {
			v = v * 10 + (unsigned)(s[i] - '0');
			i++;
			digits++;
		}
		if (digits == 0 || v > 255)
			return 0;
	}
	return i == n;
}

/* An address-literal "[...]" at s[0] == '['. RFC 5321 §4.1.3: IPv4, or
 * "IPv6:" and an IPv6 address (inet_pton covers all IPv6 forms of the
 * grammar); a General-address-literal needs a registered tag and there is
 * none, so it is refused. */
static enum smtp_addr_err smtp_scan_literal(const unsigned char *s, size_t n, size_t *len_r)
{
	size_t i = 1;
	/* dcontent = %d33-90 / %d94-126 */
	while (i < n && s[i] != ']') {
		if (s[i] < 33 || s[i] > 126 || s[i] == '[' || s[i] == '\\')
			return SMTP_ADDR_E_LITERAL;
		i++;
	}
	if (i >= n)
		return SMTP_ADDR_E_LITERAL;
	const unsigned char *c = s + 1;
	size_t clen = i - 1;
	if (clen >= 5 && smtp_ieq(c, 5, "IPv6:")) {
		char tmp[INET6_ADDRSTRLEN + 1];
		unsigned char bin[16];
		if (clen - 5 == 0 || clen - 5 >= sizeof(tmp))
			return SMTP_ADDR_E_LITERAL;
		memcpy(tmp, c + 5, clen - 5);
		tmp[clen - 5] = '\0';
		if (inet_pton(AF_INET6, tmp, bin) != 1)
			return SMTP_ADDR_E_LITERAL;
	} else if (!smtp_ipv4_ok(c, clen)) {
		return SMTP_ADDR_E_LITERAL;
	}
	*len_r = i + 1;
	return SMTP_ADDR_OK;
}

/* Dot-string (RFC 5321 §4.1.2) of atext, ASCII or UTF-8 (RFC 6531 §3.3),
 * at the start of s[0..n); returns its length, 0 if s does not start with
 * an atom or an atom is empty; *utf8 set on non-ASCII; *bad_utf8 set if a
 * high octet is not valid UTF-8. */
static size_t smtp_dot_string_len(const unsigned char *s, size_t n, int *utf8, int *bad_utf8)
{
	size_t i = 0;
	for (;;) {
		size_t start = i;
		while (i < n) {
			if (s[i] >= 0x80) {
				size_t l = smtp_utf8_len(s + i, n - i);
				if (l == 0) {
					*bad_utf8 = 1;
					return 0;
				}
				*utf8 = 1;
				i += l;
			} else if (smtp_is_atext(s[i])) {
				i++;
			} else {
				break;
			}
		}
		if (i == start)
			return 0;
		/* A dot must be followed by another atom. */
		if (i < n && s[i] == '.') {
			i++;
			continue;
		}
		return i;
	}
}

/* A Local-part at the start of s[0..n): Dot-string or Quoted-string. Sets
 * *wire_len_r to its length as sent and, if that is within SMTP_LOCAL_MAX,
 * writes the canonical form to canon (SMTP_LOCAL_MAX + 1 octets) with its
 * length in *canon_len_r. */
static enum smtp_addr_err smtp_scan_local(const unsigned char *s, size_t n, char *canon,
					  size_t *canon_len_r, size_t *wire_len_r,
					  unsigned *flags)
{
	int utf8 = 0, bad = 0;
	*canon_len_r = 0;
	if (n == 0)
		return SMTP_ADDR_E_SYNTAX;
	if (s[0] != '"') {
		size_t l = smtp_dot_string_len(s, n, &utf8, &bad);
		if (bad)
			return SMTP_ADDR_E_UTF8;
		if (l == 0)
			return SMTP_ADDR_E_SYNTAX;
		*wire_len_r = l;
		if (utf8)
			*flags |= SMTP_ADDR_UTF8;
		if (l <= SMTP_LOCAL_MAX) {
			memcpy(canon, s, l);
			*canon_len_r = l;
		}
		return SMTP_ADDR_OK;
	}

	/* Quoted-string: decode the content into dec while it fits (it is
	 * never longer than the wire form, which the caller limits). */
	unsigned char dec[SMTP_LOCAL_MAX];
	size_t d = 0, i = 1;
	for (;;) {
		if (i >= n)
			return SMTP_ADDR_E_SYNTAX;
		unsigned char c = s[i];
		size_t l = 1;
		if (c == '"') {
			i++;
			break;
		}
		if (c == '\\') {
			/* quoted-pairSMTP = %d92 %d32-126 */
			if (i + 1 >= n || s[i + 1] < 32 || s[i + 1] > 126)
				return SMTP_ADDR_E_SYNTAX;
			i++;
			c = s[i];
		} else if (c >= 0x80) {
			l = smtp_utf8_len(s + i, n - i);
			if (l == 0)
				return SMTP_ADDR_E_UTF8;
			utf8 = 1;
		} else if (c < 32 || c > 126) {
			/* qtextSMTP = %d32-33 / %d35-91 / %d93-126 */
			return SMTP_ADDR_E_SYNTAX;
		}
		if (d + l <= sizeof(dec))
			memcpy(dec + d, s + i, l);
		d += l;
		i += l;
	}
	*wire_len_r = i;
	if (utf8)
		*flags |= SMTP_ADDR_UTF8;
	if (i > SMTP_LOCAL_MAX)
		return SMTP_ADDR_OK; /* the caller refuses it once the path parsed */

	/* Canonical form: RFC 5321 §4.1.2 says a quoted-string that is a valid
	 * dot-string SHOULD be sent as the dot-string; otherwise quote, escaping
	 * only '"' and '\', which were escaped on the wire too, so the result is
	 * never longer than what was sent. */
	int u = 0, b = 0;
	if (d > 0 && smtp_dot_string_len(dec, d, &u, &b) == d) {
		memcpy(canon, dec, d);
		*canon_len_r = d;
		return SMTP_ADDR_OK;
	}
	size_t o = 0;
	canon[o++] = '"';
	for (size_t k = 0; k < d; k++) {
		if (dec[k] == '"' || dec[k] == '\\')
			canon[o++] = '\\';
		canon[o++] = (char)dec[k];
	}
	canon[o++] = '"';
	*canon_len_r = o;
	*flags |= SMTP_ADDR_QUOTED;
	return SMTP_ADDR_OK;
}

/* A Path (RFC 5321 §4.1.2: "<" [ A-d-l ":" ] Mailbox ">"), or "<>" for a
 * sender, or "<Postmaster>" for a recipient (§4.5.1), at s[0] == '<'.
 * Syntax is checked over the whole path first, then the length limits. */
static enum smtp_addr_err smtp_scan_path(const unsigned char *s, size_t n, enum smtp_role role,
					 struct smtp_address *a, size_t *len_r)
{
	char canon[SMTP_LOCAL_MAX + 1];
	size_t canon_len, local_len, dom_len = 0, i = 1;
	unsigned flags = 0;
	enum smtp_addr_err e;

	memset(a, 0, sizeof(*a));
	if (i < n && s[i] == '>') {
		if (role == SMTP_ROLE_RECIPIENT)
			return SMTP_ADDR_E_NULL_RCPT;
		a->flags = SMTP_ADDR_NULL;
		*len_r = 2;
		return SMTP_ADDR_OK;
	}
	if (i < n && s[i] == '@') {
		/* RFC 5321 §4.1.1.3 and App. C: a source route must be accepted
		 * and ignored (the mailbox is used as if there were none). */
		for (;;) {
			size_t dl = 0;
			unsigned rf = 0;
			if (i >= n || s[i] != '@')
				return SMTP_ADDR_E_SYNTAX;
			i++;
			e = smtp_scan_domain(s + i, n - i, &dl, &rf);
			if (e != SMTP_ADDR_OK)
				return e;
			i += dl;
			if (i < n && s[i] == ',') {
				i++;
				continue;
			}
			break;
		}
		if (i >= n || s[i] != ':')
			return SMTP_ADDR_E_SYNTAX;
		i++;
		flags |= SMTP_ADDR_ROUTE;
	}

	size_t local_start = i;
	e = smtp_scan_local(s + i, n - i, canon, &canon_len, &local_len, &flags);
	if (e != SMTP_ADDR_OK)
		return e;
	i += local_len;
	if (i < n && s[i] == '>' && role == SMTP_ROLE_RECIPIENT && !(flags & SMTP_ADDR_ROUTE) &&
	    smtp_ieq(s + local_start, local_len, "postmaster")) {
		memcpy(a->addr, s + local_start, local_len);
		a->addr[local_len] = '\0';
		a->local_len = local_len;
		a->flags = SMTP_ADDR_POSTMASTER;
		*len_r = i + 1;
		return SMTP_ADDR_OK;
	}
	if (i >= n || s[i] != '@')
		return i < n && s[i] == '>' ? SMTP_ADDR_E_NO_DOMAIN : SMTP_ADDR_E_SYNTAX;
	i++;
	size_t dom_start = i;
	if (i < n && s[i] == '[') {
		e = smtp_scan_literal(s + i, n - i, &dom_len);
		flags |= SMTP_ADDR_LITERAL;
	} else {
		e = smtp_scan_domain(s + i, n - i, &dom_len, &flags);
	}
	if (e != SMTP_ADDR_OK)
		return e;
	i += dom_len;
	if (i >= n || s[i] != '>')
		return SMTP_ADDR_E_SYNTAX;
	i++;

	/* RFC 5321 §4.5.3.1.1-3 */
	if (local_len > SMTP_LOCAL_MAX)
		return SMTP_ADDR_E_LOCAL_LONG;
	if (dom_len > SMTP_DOMAIN_MAX)
		return SMTP_ADDR_E_DOMAIN_LONG;
	if (i > SMTP_PATH_MAX)
		return SMTP_ADDR_E_PATH_LONG;

	/* canon_len <= local_len, so this fits in the path limit minus "<>". */
	memcpy(a->addr, canon, canon_len);
	a->addr[canon_len] = '@';
	memcpy(a->addr + canon_len + 1, s + dom_start, dom_len);
	a->addr[canon_len + 1 + dom_len] = '\0';
	a->local_len = canon_len;
	a->domain_len = dom_len;
	a->flags = flags;
	*len_r = i;
	return SMTP_ADDR_OK;
}

int smtp_check_utf8(const struct smtp_address *addr, int smtputf8, struct smtp_error *err)
{
	if ((addr->flags & SMTP_ADDR_UTF8) && !smtputf8) {
		smtp_set_error(err, 553, "5.6.7", "Non-ASCII address needs SMTPUTF8");
		return MP_EINVAL;
	}
	return MP_OK;
}

/* ------------------------------------------------------------ lines */

void smtp_line_reader_init(struct smtp_line_reader *r, size_t max_len)
{
	/* A line needs room for at least one octet and CRLF. */
	r->max_len = max_len < 3 ? 3 : max_len;
	r->skipping = 0;
}

int smtp_line_next(struct smtp_line_reader *r, const char *buf, size_t len,
		   struct mp_slice *line_r, size_t *consumed_r, struct smtp_error *err)
{
	line_r->ptr = buf;
	line_r->len = 0;
	*consumed_r = 0;

	if (!r->skipping) {
		size_t scan = len < r->max_len ? len : r->max_len;
		const char *lf = memchr(buf, '\n', scan);
		if (lf != NULL) {
			size_t n = (size_t)(lf - buf);
			size_t content = n > 0 && buf[n - 1] == '\r' ? n - 1 : n;
			*consumed_r = n + 1;
			/* The limit counts a CRLF whichever terminator was used. */
			if (content > r->max_len - 2) {
				smtp_set_error(err, 500, "5.5.6", "Line too long");
				return MP_ETOOBIG;
			}
			line_r->len = content;
			return MP_OK;
		}
		if (len < r->max_len)
			return MP_AGAIN;
		/* max_len octets and no LF: too long whatever follows. */
		r->skipping = 1;
	}

	const char *lf = memchr(buf, '\n', len);
	if (lf == NULL) {
		*consumed_r = len;
		return MP_AGAIN;
	}
	r->skipping = 0;
	*consumed_r = (size_t)(lf - buf) + 1;
	smtp_set_error(err, 500, "5.5.6", "Line too long");
	return MP_ETOOBIG;
}

/* ------------------------------------------------------------ commands */

struct smtp_verb_def {
	const char *name;
	enum smtp_verb verb;
	const char *syntax; /* 501 text for a bad argument */
};

static const struct smtp_verb_def smtp_verbs[] = {
	{ "HELO", SMTP_VERB_HELO, "Syntax: HELO hostname" },
	{ "EHLO", SMTP_VERB_EHLO, "Syntax: EHLO hostname" },
	{ "MAIL", SMTP_VERB_MAIL, "Syntax: MAIL FROM:<address>" },
	{ "RCPT", SMTP_VERB_RCPT, "Syntax: RCPT TO:<address>" },
	{ "DATA", SMTP_VERB_DATA, "Syntax: DATA" },
	{ "BDAT", SMTP_VERB_BDAT, "Syntax: BDAT chunk-size [LAST]" },
	{ "RSET", SMTP_VERB_RSET, "Syntax: RSET" },
	{ "NOOP", SMTP_VERB_NOOP, "Syntax: NOOP [string]" },
	{ "QUIT", SMTP_VERB_QUIT, "Syntax: QUIT" },
	{ "HELP", SMTP_VERB_HELP, "Syntax: HELP [string]" },
	{ "VRFY", SMTP_VERB_VRFY, "Syntax: VRFY string" },
	{ "EXPN", SMTP_VERB_EXPN, "Syntax: EXPN string" },
	{ "STARTTLS", SMTP_VERB_STARTTLS, "Syntax: STARTTLS" },
	{ "AUTH", SMTP_VERB_AUTH, "Syntax: AUTH mechanism [initial-response]" },
};

#define SMTP_NVERBS (sizeof(smtp_verbs) / sizeof(smtp_verbs[0]))

const char *smtp_verb_name(enum smtp_verb verb)
{
	for (size_t i = 0; i < SMTP_NVERBS; i++)
		if (smtp_verbs[i].verb == verb)
			return smtp_verbs[i].name;
	return "UNKNOWN";
}

static const struct smtp_verb_def *smtp_verb_lookup(const unsigned char *s, size_t n)
{
	for (size_t i = 0; i < SMTP_NVERBS; i++)
		if (smtp_ieq(s, n, smtp_verbs[i].name))
			return &smtp_verbs[i];
	return NULL;
}

static int smtp_syntax(struct smtp_error *err, const struct smtp_verb_def *def)
{
	smtp_set_error(err, 501, "5.5.4", def->syntax);
	return MP_EINVAL;
}

static int smtp_bad_param(struct smtp_error *err, const char *text)
{
	smtp_set_error(err, 501, "5.5.4", text);
	return MP_EINVAL;
}

static int smtp_parse_helo(const unsigned char *a, size_t n, const struct smtp_verb_def *def,
			   struct smtp_helo_arg *h, struct smtp_error *err)
{
	size_t dl = 0;
	unsigned flags = 0;
	enum smtp_addr_err e;

	if (n == 0)
		return smtp_syntax(err, def);
	if (a[0] == '[') {
		e = smtp_scan_literal(a, n, &dl);
		flags |= SMTP_ADDR_LITERAL;
		if (e != SMTP_ADDR_OK || dl != n)
			return smtp_bad_param(err, "Invalid address literal");
	} else {
		e = smtp_scan_domain(a, n, &dl, &flags);
		if (e != SMTP_ADDR_OK || dl != n)
			return smtp_bad_param(err, "Invalid domain name");
	}
	if (dl > SMTP_DOMAIN_MAX)
		return smtp_bad_param(err, "Domain name too long");
	h->domain.ptr = (const char *)a;
	h->domain.len = n;
	h->flags = flags;
	return MP_OK;
}

/* ESMTP parameters: which verb, which extension must have been advertised. */
struct smtp_param_def {
	const char *name;
	enum smtp_verb verb;
	unsigned bit; /* SMTP_PARAM_* */
	unsigned ext; /* SMTP_EXT_* */
};

static const struct smtp_param_def smtp_params[] = {
	{ "SIZE", SMTP_VERB_MAIL, SMTP_PARAM_SIZE, SMTP_EXT_SIZE },
	{ "BODY", SMTP_VERB_MAIL, SMTP_PARAM_BODY, SMTP_EXT_8BITMIME | SMTP_EXT_BINARYMIME },
	{ "SMTPUTF8", SMTP_VERB_MAIL, SMTP_PARAM_SMTPUTF8, SMTP_EXT_SMTPUTF8 },
	{ "RET", SMTP_VERB_MAIL, SMTP_PARAM_RET, SMTP_EXT_DSN },
	{ "ENVID", SMTP_VERB_MAIL, SMTP_PARAM_ENVID, SMTP_EXT_DSN },
	{ "AUTH", SMTP_VERB_MAIL, SMTP_PARAM_AUTH, SMTP_EXT_AUTH },
	{ "NOTIFY", SMTP_VERB_RCPT, SMTP_PARAM_NOTIFY, SMTP_EXT_DSN },
	{ "ORCPT", SMTP_VERB_RCPT, SMTP_PARAM_ORCPT, SMTP_EXT_DSN },
};

#define SMTP_NPARAMS (sizeof(smtp_params) / sizeof(smtp_params[0]))

static int smtp_param_mail(const struct smtp_param_def *p, const unsigned char *v, size_t vn,
			   int has_value, unsigned ext, struct smtp_mail_arg *m,
			   struct smtp_error *err)
{
	size_t dl;
	switch (p->bit) {
	case SMTP_PARAM_SIZE: {
		/* RFC 1870 §6: size-value ::= 1*20DIGIT */
		int r = has_value ? smtp_parse_u64(v, vn, &m->size) : -1;
		if (r == -2) {
			smtp_set_error(err, 552, "5.3.4",
				       "Message size exceeds fixed maximum message size");
			return MP_EINVAL;
		}
		if (r != 0)
			return smtp_bad_param(err, "Bad SIZE value");
		return MP_OK;
	}
	case SMTP_PARAM_BODY: {
		/* RFC 6152 §3 and RFC 3030 §3: each value only if its
		 * extension was advertised. */
		unsigned need;
		if (has_value && smtp_ieq(v, vn, "7BIT")) {
			m->body = SMTP_BODY_7BIT;
			need = SMTP_EXT_8BITMIME;
		} else if (has_value && smtp_ieq(v, vn, "8BITMIME")) {
			m->body = SMTP_BODY_8BITMIME;
			need = SMTP_EXT_8BITMIME;
		} else if (has_value && smtp_ieq(v, vn, "BINARYMIME")) {
			m->body = SMTP_BODY_BINARYMIME;
			need = SMTP_EXT_BINARYMIME;
		} else {
			return smtp_bad_param(err, "Bad BODY value");
		}
		if (!(ext & need)) {
			smtp_set_error(err, 555, "5.5.4",
				       need == SMTP_EXT_BINARYMIME ? "BODY=BINARYMIME not supported"
								   : "BODY parameter not supported");
			return MP_EINVAL;
		}
		return MP_OK;
	}
	case SMTP_PARAM_SMTPUTF8:
		/* RFC 6531 §3.4: the parameter has no value. */
		if (has_value)
			return smtp_bad_param(err, "SMTPUTF8 takes no value");
		return MP_OK;
	case SMTP_PARAM_RET:
		/* RFC 3461 §4.3 */
		if (has_value && smtp_ieq(v, vn, "FULL"))
			m->ret = SMTP_RET_FULL;
		else if (has_value && smtp_ieq(v, vn, "HDRS"))
			m->ret = SMTP_RET_HDRS;
		else
			return smtp_bad_param(err, "Bad RET value");
		return MP_OK;
	case SMTP_PARAM_ENVID:
		/* RFC 3461 §4.4: at most 100 characters. */
		if (!has_value)
			return smtp_bad_param(err, "Bad ENVID value");
		if (vn > SMTP_ENVID_MAX)
			return smtp_bad_param(err, "ENVID too long");
		if (smtp_xtext_decode(v, vn, m->envid, sizeof(m->envid), &dl) != 0)
			return smtp_bad_param(err, "Bad ENVID value");
		return MP_OK;
	case SMTP_PARAM_AUTH:
		/* RFC 4954 §5: AUTH=<> or an xtext-encoded mailbox; the server
		 * decides whether to trust it. */
		if (!has_value ||
		    smtp_xtext_decode(v, vn, m->auth, sizeof(m->auth), &dl) != 0)
			return smtp_bad_param(err, "Bad AUTH value");
		return MP_OK;
	default:
		return smtp_bad_param(err, "Bad parameter");
	}
}

/* RFC 3461 §4.1: "NEVER" or a comma list of SUCCESS, FAILURE, DELAY. */
static int smtp_parse_notify(const unsigned char *v, size_t vn, unsigned *notify_r)
{
	unsigned bits = 0;
	size_t i = 0;
	for (;;) {
		size_t start = i;
		while (i < vn && v[i] != ',')
			i++;
		const unsigned char *w = v + start;
		size_t wn = i - start;
		if (smtp_ieq(w, wn, "NEVER"))
			bits |= SMTP_NOTIFY_NEVER;
		else if (smtp_ieq(w, wn, "SUCCESS"))
			bits |= SMTP_NOTIFY_SUCCESS;
		else if (smtp_ieq(w, wn, "FAILURE"))
			bits |= SMTP_NOTIFY_FAILURE;
		else if (smtp_ieq(w, wn, "DELAY"))
			bits |= SMTP_NOTIFY_DELAY;
		else
			return -1;
		if (i == vn)
			break;
		i++; /* the comma; an empty item after it fails above */
	}
	if ((bits & SMTP_NOTIFY_NEVER) && bits != SMTP_NOTIFY_NEVER)
		return -1;
	*notify_r = bits;
	return 0;
}

static int smtp_param_rcpt(const struct smtp_param_def *p, const unsigned char *v, size_t vn,
			   int has_value, struct smtp_rcpt_arg *r, struct smtp_error *err)
{
	switch (p->bit) {
	case SMTP_PARAM_NOTIFY:
		if (!has_value || smtp_parse_notify(v, vn, &r->notify) != 0)
			return smtp_bad_param(err, "Bad NOTIFY value");
		return MP_OK;
	case SMTP_PARAM_ORCPT: {
		/* RFC 3461 §4.2: addr-type ";" xtext, at most 500 characters. */
		size_t t = 0, dl = 0;
		if (!has_value)
			return smtp_bad_param(err, "Bad ORCPT value");
		if (vn > SMTP_ORCPT_MAX)
			return smtp_bad_param(err, "ORCPT too long");
		while (t < vn && v[t] != ';') {
			if (!smtp_is_atext(v[t]))
				return smtp_bad_param(err, "Bad ORCPT value");
			t++;
		}
		if (t == 0 || t == vn || t + 1 == vn)
			return smtp_bad_param(err, "Bad ORCPT value");
		memcpy(r->orcpt, v, t + 1);
		if (smtp_xtext_decode(v + t + 1, vn - t - 1, r->orcpt + t + 1,
				      sizeof(r->orcpt) - t - 1, &dl) != 0)
			return smtp_bad_param(err, "Bad ORCPT value");
		r->orcpt_type_len = t;
		return MP_OK;
	}
	default:
		return smtp_bad_param(err, "Bad parameter");
	}
}

/* esmtp-value (RFC 5321 §4.1.2: %d33-60 / %d62-126, RFC 6531 §3.3: or
 * UTF-8). */
static int smtp_esmtp_value_ok(const unsigned char *v, size_t n)
{
	if (n == 0)
		return 0;
	for (size_t i = 0; i < n;) {
		if (v[i] >= 0x80) {
			size_t l = smtp_utf8_len(v + i, n - i);
			if (l == 0)
				return 0;
			i += l;
			continue;
		}
		if (v[i] < 33 || v[i] > 126 || v[i] == '=')
			return 0;
		i++;
	}
	return 1;
}

/* The parameters after a MAIL or RCPT path: *(SP esmtp-param), each
 * esmtp-keyword ["=" esmtp-value]. s[0..n) is what follows the '>'. */
static int smtp_parse_params(const unsigned char *s, size_t n, unsigned ext,
			     const struct smtp_verb_def *def, struct smtp_command *cmd,
			     struct smtp_error *err)
{
	unsigned *params = cmd->verb == SMTP_VERB_MAIL ? &cmd->u.mail.params : &cmd->u.rcpt.params;
	size_t i = 0;

	if (n > 0 && s[0] != ' ')
		return smtp_syntax(err, def);
	while (i < n) {
		while (i < n && s[i] == ' ')
			i++;
		size_t start = i;
		while (i < n && s[i] != ' ')
			i++;
		const unsigned char *tok = s + start;
		size_t tn = i - start, kn = 0;
		if (tn == 0)
			break; /* cannot happen: trailing spaces were stripped */
		while (kn < tn && tok[kn] != '=')
			kn++;
		/* esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-") */
		if (kn == 0 || !smtp_is_alnum(tok[0]))
			return smtp_bad_param(err, "Bad parameter syntax");
		for (size_t k = 1; k < kn; k++)
			if (!smtp_is_alnum(tok[k]) && tok[k] != '-')
				return smtp_bad_param(err, "Bad parameter syntax");
		int has_value = kn < tn;
		const unsigned char *v = has_value ? tok + kn + 1 : tok + tn;
		size_t vn = has_value ? tn - kn - 1 : 0;
		if (has_value && !smtp_esmtp_value_ok(v, vn))
			return smtp_bad_param(err, "Bad parameter syntax");

		const struct smtp_param_def *p = NULL;
		for (size_t k = 0; k < SMTP_NPARAMS; k++) {
			if (smtp_params[k].verb == cmd->verb && smtp_ieq(tok, kn, smtp_params[k].name)) {
				p = &smtp_params[k];
				break;
			}
		}
		/* RFC 5321 §4.1.1.11, §4.2.2: 555 for a parameter not
		 * recognised or of an extension not advertised. */
		if (p == NULL || (ext & p->ext) == 0) {
			smtp_set_error(err, 555, "5.5.4", "Unsupported parameter");
			return MP_EINVAL;
		}
		if (*params & p->bit)
			return smtp_bad_param(err, "Duplicate parameter");
		int ret = cmd->verb == SMTP_VERB_MAIL
				  ? smtp_param_mail(p, v, vn, has_value, ext, &cmd->u.mail, err)
				  : smtp_param_rcpt(p, v, vn, has_value, &cmd->u.rcpt, err);
		if (ret != MP_OK)
			return ret;
		*params |= p->bit;
	}
	return MP_OK;
}

/* "MAIL FROM:" / "RCPT TO:" [spaces] path [params]. RFC 5321 puts no space
 * after the colon, but "MAIL FROM: <a@b>" is widely sent. */
static int smtp_parse_mail_rcpt(const unsigned char *a, size_t n, unsigned ext,
				const struct smtp_verb_def *def, struct smtp_command *cmd,
				struct smtp_error *err)
{
	int mail = cmd->verb == SMTP_VERB_MAIL;
	const char *kw = mail ? "FROM:" : "TO:";
	size_t kl = strlen(kw), i, plen = 0;
	enum smtp_role role = mail ? SMTP_ROLE_SENDER : SMTP_ROLE_RECIPIENT;
	struct smtp_address *addr = mail ? &cmd->u.mail.from : &cmd->u.rcpt.to;

	if (n < kl || !smtp_ieq(a, kl, kw))
		return smtp_syntax(err, def);
	i = kl;
	while (i < n && a[i] == ' ')
		i++;
	if (i >= n || a[i] != '<')
		return smtp_syntax(err, def);
	enum smtp_addr_err e = smtp_scan_path(a + i, n - i, role, addr, &plen);
	if (e != SMTP_ADDR_OK) {
		smtp_addr_error(err, role, e);
		return MP_EINVAL;
	}
	i += plen;
	return smtp_parse_params(a + i, n - i, ext, def, cmd, err);
}

static int smtp_parse_bdat(const unsigned char *a, size_t n, const struct smtp_verb_def *def,
			   struct smtp_bdat_arg *b, struct smtp_error *err)
{
	size_t i = 0;
	while (i < n && a[i] != ' ')
		i++;
	/* RFC 3030 §2: bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ] */
	int r = smtp_parse_u64(a, i, &b->size);
	if (r == -2) {
		smtp_set_error(err, 552, "5.3.4", "Chunk size too large");
		return MP_EINVAL;
	}
	if (r != 0)
		return smtp_syntax(err, def);
	while (i < n && a[i] == ' ')
		i++;
	b->last = 0;
	if (i < n) {
		if (!smtp_ieq(a + i, n - i, "LAST"))
			return smtp_syntax(err, def);
		b->last = 1;
	}
	return MP_OK;
}

/* RFC 4648 base64 with its padding, as RFC 4954 §4 requires. */
static int smtp_base64_ok(const unsigned char *s, size_t n)
{
	if (n == 0 || n % 4 != 0)
		return 0;
	size_t pad = s[n - 1] == '=' ? (s[n - 2] == '=' ? 2 : 1) : 0;
	for (size_t i = 0; i < n - pad; i++) {
		unsigned char c = s[i];
		if (!smtp_is_alnum(c) && c != '+' && c != '/')
			return 0;
	}
	return 1;
}

static int smtp_parse_auth(const unsigned char *a, size_t n, const struct smtp_verb_def *def,
			   struct smtp_auth_arg *au, struct smtp_error *err)
{
	size_t i = 0;
	/* RFC 4422 §3.1: 1-20 characters of [A-Z0-9-_]; any case accepted,
	 * the server compares case-insensitively. */
	while (i < n && a[i] != ' ') {
		if (!smtp_is_alnum(a[i]) && a[i] != '-' && a[i] != '_')
			return smtp_syntax(err, def);
		i++;
	}
	if (i == 0 || i > 20)
		return smtp_syntax(err, def);
	au->mech.ptr = (const char *)a;
	au->mech.len = i;
	au->initial.ptr = (const char *)a + n;
	au->initial.len = 0;
	au->has_initial = 0;
	while (i < n && a[i] == ' ')
		i++;
	if (i == n)
		return MP_OK;
	const unsigned char *r = a + i;
	size_t rn = n - i;
	if (memchr(r, ' ', rn) != NULL)
		return smtp_syntax(err, def);
	/* RFC 4954 §4: "=" is an empty initial response. */
	if (!(rn == 1 && r[0] == '=') && !smtp_base64_ok(r, rn)) {
		smtp_set_error(err, 501, "5.5.2", "Invalid base64 in initial response");
		return MP_EINVAL;
	}
	au->initial.ptr = (const char *)r;
	au->initial.len = rn;
	au->has_initial = 1;
	return MP_OK;
}

int smtp_parse_command(const char *line, size_t len, unsigned ext, struct smtp_command *cmd,
		       struct smtp_error *err)
{
	const unsigned char *s = (const unsigned char *)line;
	size_t vlen = 0, a;

	memset(cmd, 0, sizeof(*cmd));
	cmd->arg.ptr = line;
	smtp_set_error(err, 0, "", "");

	/* RFC 5321 §4.1.1: tolerate trailing white space. */
	while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
		len--;
	while (vlen < len && s[vlen] != ' ')
		vlen++;
	const struct smtp_verb_def *def = smtp_verb_lookup(s, vlen);
	cmd->verb = def != NULL ? def->verb : SMTP_VERB_UNKNOWN;

	/* RFC 5321 §2.3.8: CR and LF only as the line terminator. A NUL
	 * would cut the line short for any C string code downstream. */
	if (memchr(line, '\0', len) != NULL || memchr(line, '\r', len) != NULL ||
	    memchr(line, '\n', len) != NULL) {
		smtp_set_error(err, 500, "5.5.2", "Invalid character in command");
		return MP_EINVAL;
	}
	if (vlen == 0) {
		smtp_set_error(err, 500, "5.5.2", "Syntax error");
		return MP_EINVAL;
	}
	if (def == NULL) {
		smtp_set_error(err, 500, "5.5.1", "Unknown command");
		return MP_EINVAL;
	}
	a = vlen;
	while (a < len && s[a] == ' ')
		a++;
	cmd->arg.ptr = line + a;
	cmd->arg.len = len - a;
	const unsigned char *arg = s + a;
	size_t an = len - a;

	switch (def->verb) {
	case SMTP_VERB_HELO:
	case SMTP_VERB_EHLO:
		return smtp_parse_helo(arg, an, def, &cmd->u.helo, err);
	case SMTP_VERB_MAIL:
	case SMTP_VERB_RCPT:
		return smtp_parse_mail_rcpt(arg, an, ext, def, cmd, err);
	case SMTP_VERB_BDAT:
		return smtp_parse_bdat(arg, an, def, &cmd->u.bdat, err);
	case SMTP_VERB_AUTH:
		return smtp_parse_auth(arg, an, def, &cmd->u.auth, err);
	case SMTP_VERB_DATA:
	case SMTP_VERB_RSET:
	case SMTP_VERB_QUIT:
	case SMTP_VERB_STARTTLS:
		if (an > 0)
			return smtp_syntax(err, def);
		return MP_OK;
	case SMTP_VERB_NOOP:
	case SMTP_VERB_HELP:
	case SMTP_VERB_VRFY:
	case SMTP_VERB_EXPN:
	case SMTP_VERB_UNKNOWN:
		return MP_OK;
	}
	return MP_OK;
}

/* ------------------------------------------------------------ DATA */

void smtp_data_init(struct smtp_data *d, uint64_t limit)
{
	d->state = SMTP_DATA_LINE_START;
	d->flags = 0;
	d->limit = limit;
	d->size = 0;
	d->line_len = 0;
	d->long_lines = 0;
}

/* Output is always a subsequence of the input (unstuffing only deletes),
 * so it is appended in runs straight from the input: a run is flushed
 * before every octet that is not output. */
struct smtp_data_run {
	const char *in;
	size_t start; /* first octet of the pending run */
	int emitting; /* 0 once an error stopped the output */
	struct mp_buf *out;
};

static int smtp_data_flush(struct smtp_data_run *run, size_t upto)
{
	if (run->emitting && upto > run->start) {
		int ret = mp_buf_append(run->out, run->in + run->start, upto - run->start);
		if (ret != MP_OK)
			return ret;
	}
	run->start = upto;
	return MP_OK;
}

/* Octet i is not output: flush what precedes it, start after it. */
static int smtp_data_skip(struct smtp_data_run *run, size_t i)
{
	int ret = smtp_data_flush(run, i);
	run->start = i + 1;
	return ret;
}

/* An error at octet i: output stops just before it, for good. */
static int smtp_data_fail(struct smtp_data *d, struct smtp_data_run *run, size_t i,
			  unsigned flag)
{
	int ret = smtp_data_flush(run, i);
	d->flags |= flag;
	run->emitting = 0;
	return ret;
}

/* Octet i is message content: count it against the limit. */
static int smtp_data_count(struct smtp_data *d, struct smtp_data_run *run, size_t i)
{
	if (d->size < UINT64_MAX)
		d->size++;
	if (d->size > d->limit && !(d->flags & SMTP_DATA_TOO_BIG))
		return smtp_data_fail(d, run, i, SMTP_DATA_TOO_BIG);
	return MP_OK;
}

int smtp_data_feed(struct smtp_data *d, const char *in, size_t len, struct mp_buf *out,
		   size_t *consumed_r)
{
	const unsigned char *p = (const unsigned char *)in;
	struct smtp_data_run run = { in, 0, !(d->flags & SMTP_DATA_ERRORS), out };
	int ret = MP_OK;

	*consumed_r = 0;
	if (d->state == SMTP_DATA_DONE)
		return MP_OK;

	for (size_t i = 0; i < len; i++) {
		unsigned char c = p[i];

		switch (d->state) {
		case SMTP_DATA_LINE_START:
			if (c == '.') {
				/* RFC 5321 §4.5.2: a leading dot is never data. */
				ret = smtp_data_skip(&run, i);
				d->state = SMTP_DATA_DOT;
				if (ret != MP_OK)
					return ret;
				continue;
			}
			break;
		case SMTP_DATA_DOT:
			if (c == '\r') {
				ret = smtp_data_skip(&run, i);
				d->state = SMTP_DATA_DOT_CR;
				if (ret != MP_OK)
					return ret;
				continue;
			}
			break; /* the dot was stuffing: c is content */
		case SMTP_DATA_DOT_CR:
			if (c == '\n') {
				/* CRLF "." CRLF: the end, and the only one. */
				ret = smtp_data_skip(&run, i);
				if (ret != MP_OK)
					return ret;
				d->state = SMTP_DATA_DONE;
				*consumed_r = i + 1;
				return MP_OK;
			}
			/* "." CR and no LF: the CR is bare. */
			ret = smtp_data_fail(d, &run, i, SMTP_DATA_BARE_CR);
			if (ret != MP_OK)
				return ret;
			break;
		case SMTP_DATA_CR:
			if (c == '\n') {
				ret = smtp_data_count(d, &run, i);
				if (ret != MP_OK)
					return ret;
				/* RFC 5322 §2.1.1 */
				if (d->line_len > SMTP_TEXT_LINE_MAX) {
					d->long_lines++;
					d->flags |= SMTP_DATA_LONG_LINE;
				}
				d->line_len = 0;
				d->state = SMTP_DATA_LINE_START;
				continue;
			}
			ret = smtp_data_fail(d, &run, i, SMTP_DATA_BARE_CR);
			if (ret != MP_OK)
				return ret;
			break;
		case SMTP_DATA_TEXT:
			break;
		case SMTP_DATA_DONE:
			return MP_OK; /* not reached */
		}

		/* c is content in the middle of a line (or starts one). */
		if (c == '\r') {
			ret = smtp_data_count(d, &run, i);
			d->state = SMTP_DATA_CR;
		} else if (c == '\n') {
			/* A bare LF never ends a line here, so "\n.\n" and
			 * "\n.\r\n" cannot end the data (SMTP smuggling). */
			ret = smtp_data_fail(d, &run, i, SMTP_DATA_BARE_LF);
			d->state = SMTP_DATA_TEXT;
		} else {
			if (c == '\0')
				ret = smtp_data_fail(d, &run, i, SMTP_DATA_NUL);
			if (ret == MP_OK)
				ret = smtp_data_count(d, &run, i);
			if (c >= 0x80)
				d->flags |= SMTP_DATA_8BIT;
			d->line_len++;
			d->state = SMTP_DATA_TEXT;
		}
		if (ret != MP_OK)
			return ret;
	}
	ret = smtp_data_flush(&run, len);
	if (ret != MP_OK)
		return ret;
	*consumed_r = len;
	return MP_AGAIN;
}

int smtp_data_result(const struct smtp_data *d, struct smtp_error *err)
{
	if (d->state != SMTP_DATA_DONE)
		return MP_AGAIN;
	if (d->flags & (SMTP_DATA_BARE_CR | SMTP_DATA_BARE_LF)) {
		/* RFC 5321 §2.3.8: CR and LF only as CRLF. */
		smtp_set_error(err, 550, "5.6.11", "Bare CR or LF in message data");
		return MP_EPROTO;
	}
	if (d->flags & SMTP_DATA_NUL) {
		smtp_set_error(err, 554, "5.6.0", "NUL octet in message data");
		return MP_EINVAL;
	}
	if (d->flags & SMTP_DATA_TOO_BIG) {
		smtp_set_error(err, 552, "5.3.4", "Message size exceeds fixed maximum message size");
		return MP_ETOOBIG;
	}
	return MP_OK;
}
