/*
 * imap_mime: one pass over a message that yields its IMAP ENVELOPE, BODY
 * and BODYSTRUCTURE strings (RFC 3501 §7.4.2, RFC 9051 §7.5.2) and a part
 * table with byte offsets, so FETCH never parses a body again.
 *
 * The parse is a loop over lines with an explicit stack of the active
 * multipart boundaries, not recursion: a message nested a thousand deep
 * costs heap, never C stack. The part tree is kept as indices (parent,
 * first child, next sibling) in pre-order, and every walk over it (writing
 * BODYSTRUCTURE, resolving a section) is iterative too.
 *
 * Conventions follow Dovecot where RFC 3501 leaves room: type, subtype and
 * parameters as sent; a text part without a charset gets ("charset"
 * "us-ascii"); a missing Content-Type is "text" "plain"; a multipart
 * without boundary is a text part; a multipart in which no delimiter is
 * found has one empty text part; a part's body ends before the line end
 * that precedes the next delimiter line; the line count is the number of
 * LFs in the body. Sizes are in octets of the message as stored, so BODY[n]
 * sends exactly the size BODYSTRUCTURE announced.
 *
 * Never: fail on bad mail (only on memory); recurse on message input; trust
 * a packed blob (imap_mime_unpack checks every length, offset and link).
 */
#include "imap_mime.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imap_parse.h"
#include "mp_buf.h"
#include "mp_error.h"

#define MIME_NONE UINT32_MAX
#define MIME_DEFAULT_DEPTH 20
#define MIME_DEFAULT_PARTS 1000
#define MIME_CTE_MAX 31          /* longer Content-Transfer-Encoding: invalid */
#define MIME_BOUNDARY_MAX 255    /* RFC 2046 §5.1.1 says 70; be lenient */
#define MIME_MAX_PARAMS 128      /* parameters kept per header; the rest ignored */
#define MIME_MAX_LANGS 64
/* An ENVELOPE address list stops growing here (the addresses after it are
 * left out), so a header of millions of addresses cannot make an index
 * entry of many megabytes. */
#define MIME_ADDRS_MAX (256 * 1024)

/* Packed blob: "MPMS", version, then big-endian fields (see imap_mime_pack). */
#define MIME_PACK_MAGIC "MPMS"
#define MIME_PACK_VERSION 1
#define MIME_PACK_HDR_LEN 28
#define MIME_PACK_PART_MIN 30    /* a part record without its cte bytes */
#define MIME_PACK_MAX_PARTS 1000000

enum mime_kind {
	MIME_KIND_LEAF = 0,
	MIME_KIND_MULTIPART = 1,
	MIME_KIND_MESSAGE = 2,   /* message/rfc822 or message/global: one child */
};

#define MIME_PF_SYNTHETIC 0x01   /* the empty part of a multipart without parts */
#define MIME_PF_ALL 0x01

struct mime_part {
	uint64_t hdr_off;        /* the MIME header, blank line included */
	uint64_t hdr_len;
	uint64_t body_len;       /* the body starts at hdr_off + hdr_len */
	uint32_t parent;
	uint32_t first_child;
	uint32_t next;
	uint8_t kind;            /* enum mime_kind */
	uint8_t flags;
	char cte[MIME_CTE_MAX + 1]; /* lowercased, "7bit" when absent; "" if not a leaf */
};

struct imap_mime {
	uint64_t size;
	struct mime_part *parts; /* owned; pre-order, parts[0] is the message */
	uint32_t nparts;
	char *body;              /* owned: BODY */
	size_t body_len;
	char *bs;                /* owned: BODYSTRUCTURE */
	size_t bs_len;
	char *env;               /* owned: ENVELOPE; NULL after unpack */
	size_t env_len;
};

/* ---------------------------------------------------------------- strings */

static bool mime_is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

static char mime_lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

static bool mime_eqi(const char *a, size_t alen, const char *b)
{
	size_t blen = strlen(b);
	if (alen != blen)
		return false;
	for (size_t i = 0; i < alen; i++) {
		if (mime_lower(a[i]) != mime_lower(b[i]))
			return false;
	}
	return true;
}

static bool mime_eqi2(const char *a, size_t alen, const char *b, size_t blen)
{
	if (alen != blen)
		return false;
	for (size_t i = 0; i < alen; i++) {
		if (mime_lower(a[i]) != mime_lower(b[i]))
			return false;
	}
	return true;
}

/* An IMAP string (imap_parse.h): quoted, or a literal when it has CR, LF,
 * NUL or 8-bit bytes or is long. Never UTF-8 quoted: the strings are made
 * once and stored, then sent to clients with and without UTF8=ACCEPT. */
static int mime_write_string(struct mp_buf *b, const char *s, size_t len)
{
	return imap_write_string(b, s, len, false);
}

static int mime_write_cstr(struct mp_buf *b, const char *s)
{
	return mime_write_string(b, s, strlen(s));
}

/* ------------------------------------------------------- header fields */

enum mime_hf {
	HF_CONTENT_TYPE,
	HF_CTE,
	HF_CONTENT_ID,
	HF_CONTENT_DESC,
	HF_CONTENT_DISP,
	HF_CONTENT_LANG,
	HF_CONTENT_LOC,
	HF_CONTENT_MD5,
	HF_DATE,
	HF_SUBJECT,
	HF_FROM,
	HF_SENDER,
	HF_REPLY_TO,
	HF_TO,
	HF_CC,
	HF_BCC,
	HF_IN_REPLY_TO,
	HF_MESSAGE_ID,
	HF_COUNT
};

static const char *const mime_hf_names[HF_COUNT] = {
	"content-type", "content-transfer-encoding", "content-id",
	"content-description", "content-disposition", "content-language",
	"content-location", "content-md5", "date", "subject", "from", "sender",
	"reply-to", "to", "cc", "bcc", "in-reply-to", "message-id",
};

struct mime_hfield {
	bool set;
	size_t off;              /* raw value after the colon ... */
	size_t end;              /* ... through its last continuation line */
};

struct mime_param {
	const char *name;        /* borrowed from the unfolded value */
	size_t name_len;         /* without the RFC 2231 suffix */
	size_t full_len;         /* with it */
	size_t voff, vlen;       /* value in ctx->pv */
	int section;             /* RFC 2231 *n, or -1 */
	bool ext;                /* RFC 2231 trailing '*' */
	bool used;
};

struct mime_boundary {
	uint32_t part;
	size_t off;              /* the boundary in ctx->bnd */
	size_t len;
};

/* Parse-time facts about a part that the packed table does not need. */
struct mime_pinfo {
	uint32_t last_child;
	uint32_t depth;          /* containers above it */
	uint32_t nchildren;
	uint64_t body_lf;        /* LFs in the message before the body */
	uint64_t lines;
	size_t a_off, a_len;     /* in strs: fields before the size / multipart subtype */
	size_t x_off, x_len;     /* in strs: extension data, with its leading space */
	size_t e_off, e_len;     /* in strs: envelope, for a message's top entity */
	bool text;               /* write a line count */
	bool digest;             /* multipart/digest: children default to message/rfc822 */
};

struct mime_ctx {
	const char *msg;         /* borrowed */
	size_t len;
	unsigned max_depth;
	unsigned max_parts;
	struct imap_mime *m;
	uint32_t cap;
	struct mime_pinfo *pi;   /* owned, parallel to m->parts */
	struct mime_boundary *stack; /* owned */
	unsigned nstack, stack_cap;
	uint32_t reserved;       /* open multiparts without a part yet: each will
				  * get one (a real or an empty one), so each
				  * keeps a slot under max_parts */
	size_t pos;              /* current line start */
	uint64_t lineno;         /* LFs before pos */
	struct mime_hfield hf[HF_COUNT];
	struct mime_param params[MIME_MAX_PARAMS];
	size_t nparams;
	struct mp_buf strs;      /* rendered pieces of every part */
	struct mp_buf val;       /* one unfolded header value */
	struct mp_buf pv;        /* parameter values, unquoted */
	struct mp_buf tmp;
	struct mp_buf tok;       /* address tokenizer: one quoted string */
	struct mp_buf bnd;       /* the active boundaries, a stack like ctx->stack */
	struct mp_buf phrase, local, domain, route, comment, from, addr;
};

static size_t mime_line_end(const struct mime_ctx *c, size_t pos)
{
	const char *lf = memchr(c->msg + pos, '\n', c->len - pos);
	return lf == NULL ? c->len : (size_t)(lf - c->msg) + 1;
}

static void mime_advance(struct mime_ctx *c, size_t le)
{
	if (le > c->pos && c->msg[le - 1] == '\n')
		c->lineno++;
	c->pos = le;
}

/* Is the line at pos a delimiter line of an active boundary? RFC 2046
 * §5.1.1: "--" boundary, then "--" for the close delimiter, then only
 * transport padding up to the line end (after a close delimiter anything
 * is let through). So "--b21" is not a delimiter of "b2". When two
 * boundaries match, the innermost wins. */
static int mime_match_boundary(const struct mime_ctx *c, size_t pos, bool *close_r)
{
	size_t avail = c->len - pos;

	if (c->nstack == 0 || avail < 2 || c->msg[pos] != '-' || c->msg[pos + 1] != '-')
		return -1;
	for (unsigned k = c->nstack; k-- > 0;) {
		const struct mime_boundary *b = &c->stack[k];
		if (avail - 2 < b->len || memcmp(c->msg + pos + 2, c->bnd.data + b->off, b->len) != 0)
			continue;
		size_t i = pos + 2 + b->len;
		if (c->len - i >= 2 && c->msg[i] == '-' && c->msg[i + 1] == '-') {
			*close_r = true;
			return (int)k;
		}
		while (i < c->len && mime_is_wsp(c->msg[i]))
			i++;
		if (i == c->len || c->msg[i] == '\n' ||
		    (c->msg[i] == '\r' && (i + 1 == c->len || c->msg[i + 1] == '\n'))) {
			*close_r = false;
			return (int)k;
		}
	}
	return -1;
}

/* Copy a raw header value without its line ends, NULs made 8-bit, trimmed. */
static int mime_unfold(struct mime_ctx *c, const struct mime_hfield *f)
{
	mp_buf_reset(&c->val);
	int ret = mp_buf_reserve(&c->val, f->end - f->off);
	if (ret != MP_OK)
		return ret;
	for (size_t i = f->off; i < f->end; i++) {
		char ch = c->msg[i];
		if (ch == '\r' || ch == '\n')
			continue;
		c->val.data[c->val.len++] = ch == '\0' ? (char)0x80 : ch;
	}
	size_t s = 0, e = c->val.len;
	while (s < e && mime_is_wsp(c->val.data[s]))
		s++;
	while (e > s && mime_is_wsp(c->val.data[e - 1]))
		e--;
	if (s > 0)
		memmove(c->val.data, c->val.data + s, e - s);
	c->val.len = e - s;
	c->val.data[c->val.len] = '\0';
	return MP_OK;
}

/* Read a header block from c->pos: up to and including the blank line, or
 * up to a delimiter line of an active boundary, or to the end. */
static void mime_read_header(struct mime_ctx *c, uint32_t idx)
{
	struct mime_part *p = &c->m->parts[idx];
	int cur = -1;

	memset(c->hf, 0, sizeof(c->hf));
	p->hdr_off = c->pos;
	while (c->pos < c->len) {
		size_t ls = c->pos, le = mime_line_end(c, ls);
		bool close;

		if (c->msg[ls] == '\n' || (c->msg[ls] == '\r' && ls + 1 < c->len &&
					   c->msg[ls + 1] == '\n')) {
			mime_advance(c, le);
			break;
		}
		if (mime_match_boundary(c, ls, &close) >= 0)
			break;
		if (mime_is_wsp(c->msg[ls])) {
			if (cur >= 0)
				c->hf[cur].end = le;
		} else {
			const char *colon = memchr(c->msg + ls, ':', le - ls);
			cur = -1;
			if (colon != NULL) {
				size_t ne = (size_t)(colon - c->msg);
				while (ne > ls && mime_is_wsp(c->msg[ne - 1]))
					ne--;
				for (int h = 0; h < HF_COUNT; h++) {
					if (!c->hf[h].set &&
					    mime_eqi(c->msg + ls, ne - ls, mime_hf_names[h])) {
						c->hf[h].set = true;
						c->hf[h].off = (size_t)(colon - c->msg) + 1;
						c->hf[h].end = le;
						cur = h;
						break;
					}
				}
			}
		}
		mime_advance(c, le);
	}
	p->hdr_len = c->pos - p->hdr_off;
	c->pi[idx].body_lf = c->lineno;
}

/* ------------------------------------------------ RFC 2045 tokenizing */

struct mime_lex {
	const char *s;           /* borrowed */
	size_t len;
	size_t pos;
};

/* ch is one of set (strchr would also find the terminating NUL). */
static bool mime_in(const char *set, char ch)
{
	return ch != '\0' && strchr(set, ch) != NULL;
}

static bool mime_is_tspecial(char ch)
{
	return mime_in("()<>@,;:\\\"/[]?=", ch);
}

/* RFC 2045 token characters; 8-bit bytes are let through (seen in the wild
 * in unquoted file names). */
static bool mime_is_token(char ch)
{
	unsigned char u = (unsigned char)ch;
	return u > 0x20 && u != 0x7f && !mime_is_tspecial(ch);
}

static void mime_skip_cfws(struct mime_lex *lx)
{
	while (lx->pos < lx->len) {
		char ch = lx->s[lx->pos];
		if (mime_is_wsp(ch) || ch == '\r' || ch == '\n') {
			lx->pos++;
		} else if (ch == '(') {
			size_t depth = 0;
			while (lx->pos < lx->len) {
				ch = lx->s[lx->pos++];
				if (ch == '\\' && lx->pos < lx->len)
					lx->pos++;
				else if (ch == '(')
					depth++;
				else if (ch == ')' && --depth == 0)
					break;
			}
		} else {
			break;
		}
	}
}

static bool mime_lex_token(struct mime_lex *lx, const char **t_r, size_t *len_r)
{
	size_t s = lx->pos;
	while (lx->pos < lx->len && mime_is_token(lx->s[lx->pos]))
		lx->pos++;
	*t_r = lx->s + s;
	*len_r = lx->pos - s;
	return lx->pos > s;
}

/* A quoted string at lx->pos (which is '"'), unescaped into out. */
static int mime_lex_quoted(struct mime_lex *lx, struct mp_buf *out)
{
	lx->pos++;
	while (lx->pos < lx->len) {
		char ch = lx->s[lx->pos++];
		if (ch == '"')
			return MP_OK;
		if (ch == '\\' && lx->pos < lx->len)
			ch = lx->s[lx->pos++];
		int ret = mp_buf_append(out, &ch, 1);
		if (ret != MP_OK)
			return ret;
	}
	return MP_OK;
}

static void mime_skip_to_semicolon(struct mime_lex *lx)
{
	bool quoted = false;
	while (lx->pos < lx->len) {
		char ch = lx->s[lx->pos];
		if (!quoted && ch == ';')
			return;
		if (ch == '"')
			quoted = !quoted;
		else if (ch == '\\' && quoted)
			lx->pos++;
		lx->pos++;
	}
	if (lx->pos > lx->len)
		lx->pos = lx->len;
}

/* Parameters ";" name "=" value, into c->params (names borrowed from the
 * lexer's string, values unquoted into c->pv). */
static int mime_parse_params(struct mime_ctx *c, struct mime_lex *lx)
{
	c->nparams = 0;
	mp_buf_reset(&c->pv);
	mime_skip_to_semicolon(lx);
	while (lx->pos < lx->len) {
		const char *name, *v;
		size_t nlen, vlen;
		int ret;

		lx->pos++; /* ';' */
		mime_skip_cfws(lx);
		if (!mime_lex_token(lx, &name, &nlen))
			goto junk;
		mime_skip_cfws(lx);
		if (lx->pos >= lx->len || lx->s[lx->pos] != '=')
			goto junk;
		lx->pos++;
		mime_skip_cfws(lx);

		size_t voff = c->pv.len;
		if (lx->pos < lx->len && lx->s[lx->pos] == '"') {
			ret = mime_lex_quoted(lx, &c->pv);
		} else if (mime_lex_token(lx, &v, &vlen)) {
			ret = mp_buf_append(&c->pv, v, vlen);
		} else {
			goto junk;
		}
		if (ret != MP_OK)
			return ret;
		if (c->nparams < MIME_MAX_PARAMS) {
			struct mime_param *pm = &c->params[c->nparams++];
			pm->name = name;
			pm->full_len = nlen;
			pm->voff = voff;
			pm->vlen = c->pv.len - voff;
			pm->section = -1;
			pm->ext = false;
			pm->used = false;
			/* RFC 2231: name*, name*0, name*0* */
			if (nlen > 1 && name[nlen - 1] == '*') {
				pm->ext = true;
				nlen--;
			}
			size_t d = nlen;
			while (d > 0 && name[d - 1] >= '0' && name[d - 1] <= '9')
				d--;
			if (d < nlen && d > 1 && name[d - 1] == '*' && nlen - d <= 4 &&
			    (nlen - d == 1 || name[d] != '0')) {
				int sec = 0;
				for (size_t i = d; i < nlen; i++)
					sec = sec * 10 + (name[i] - '0');
				pm->section = sec;
				nlen = d - 1;
			} else if (pm->ext) {
				/* name*=charset'lang'value: kept whole */
				nlen++;
				pm->ext = false;
			}
			pm->name_len = nlen;
		}
	junk:
		mime_skip_to_semicolon(lx);
	}
	return MP_OK;
}

static bool mime_attr_char(unsigned char u)
{
	return u > 0x20 && u < 0x7f && !mime_is_tspecial((char)u) && u != '*' &&
	       u != '\'' && u != '%';
}

/* One parameter value merged from RFC 2231 continuations into c->tmp.
 * *ext_r: the merged value is in the extended (charset'lang'%xx) form. */
static int mime_merge_param(struct mime_ctx *c, size_t first, bool *ext_r)
{
	const struct mime_param *p0 = &c->params[first];
	size_t seg[MIME_MAX_PARAMS];
	size_t nseg = 0;
	bool any_ext = false;

	for (int sec = 0; nseg < MIME_MAX_PARAMS; sec++) {
		size_t found = SIZE_MAX;
		for (size_t i = first; i < c->nparams; i++) {
			const struct mime_param *q = &c->params[i];
			if (!q->used && q->section == sec &&
			    mime_eqi2(q->name, q->name_len, p0->name, p0->name_len)) {
				found = i;
				break;
			}
		}
		if (found == SIZE_MAX)
			break;
		seg[nseg++] = found;
		c->params[found].used = true;
		any_ext = any_ext || c->params[found].ext;
	}
	mp_buf_reset(&c->tmp);
	for (size_t k = 0; k < nseg; k++) {
		const struct mime_param *q = &c->params[seg[k]];
		const char *v = c->pv.data + q->voff;
		int ret = MP_OK;
		if (!any_ext || q->ext) {
			ret = mp_buf_append(&c->tmp, v, q->vlen);
		} else {
			/* A plain segment inside an extended value: percent-encode
			 * it, so the merged value stays one valid ext-value. */
			if (k == 0)
				ret = mp_buf_append(&c->tmp, "''", 2);
			for (size_t i = 0; i < q->vlen && ret == MP_OK; i++) {
				unsigned char u = (unsigned char)v[i];
				if (mime_attr_char(u))
					ret = mp_buf_append(&c->tmp, v + i, 1);
				else
					ret = mp_buf_printf(&c->tmp, "%%%02X", u);
			}
		}
		if (ret != MP_OK)
			return ret;
	}
	*ext_r = any_ext;
	return MP_OK;
}

/* The parsed parameters as an IMAP list into out, or NIL. */
static int mime_render_params(struct mime_ctx *c, struct mp_buf *out, bool default_charset)
{
	size_t n = 0;
	bool charset = false;
	int ret = MP_OK;

	for (size_t i = 0; i < c->nparams && ret == MP_OK; i++) {
		struct mime_param *p = &c->params[i];
		if (p->used)
			continue;
		ret = mp_buf_append(out, n == 0 ? "(" : " ", 1);
		if (ret != MP_OK)
			break;
		n++;
		if (p->section < 0) {
			p->used = true;
			if (mime_eqi(p->name, p->name_len, "charset"))
				charset = true;
			ret = mime_write_string(out, p->name, p->name_len);
			if (ret == MP_OK)
				ret = mp_buf_append(out, " ", 1);
			if (ret == MP_OK)
				ret = mime_write_string(out, c->pv.data + p->voff, p->vlen);
			continue;
		}
		bool ext = false;
		ret = mime_merge_param(c, i, &ext);
		if (ret != MP_OK)
			break;
		if (!p->used) {
			/* continuations without a *0: keep this one as sent */
			p->used = true;
			ret = mime_write_string(out, p->name, p->full_len);
			if (ret == MP_OK)
				ret = mp_buf_append(out, " ", 1);
			if (ret == MP_OK)
				ret = mime_write_string(out, c->pv.data + p->voff, p->vlen);
			continue;
		}
		if (mime_eqi(p->name, p->name_len, "charset"))
			charset = true;
		/* name (+ '*') then the merged value, which is in c->tmp */
		size_t nl = p->name_len;
		ret = mp_buf_reserve(&c->tmp, nl + 1);
		if (ret != MP_OK)
			break;
		size_t vlen = c->tmp.len;
		ret = mp_buf_append(&c->tmp, p->name, nl);
		if (ret == MP_OK && ext)
			ret = mp_buf_append(&c->tmp, "*", 1);
		if (ret == MP_OK)
			ret = mime_write_string(out, c->tmp.data + vlen, c->tmp.len - vlen);
		if (ret == MP_OK)
			ret = mp_buf_append(out, " ", 1);
		if (ret == MP_OK)
			ret = mime_write_string(out, c->tmp.data, vlen);
	}
	if (ret != MP_OK)
		return ret;
	if (default_charset && !charset) {
		ret = mp_buf_append_str(out, n == 0 ? "(\"charset\" \"us-ascii\")"
						    : " \"charset\" \"us-ascii\")");
	} else if (n == 0) {
		ret = mp_buf_append(out, "NIL", 3);
	} else {
		ret = mp_buf_append(out, ")", 1);
	}
	return ret;
}

/* --------------------------------------------------------- addresses */

enum mime_atok {
	AT_END,
	AT_WORD,     /* atom or quoted string (unquoted in c->tok) */
	AT_DLIT,     /* [domain literal] */
	AT_SPECIAL,  /* one of <>@,:;. */
};

struct mime_alex {
	const char *s;           /* borrowed: the unfolded value */
	size_t len;
	size_t pos;
	const char *t;           /* the token (WORD points into c->tok when quoted) */
	size_t tlen;
	char special;
	bool ws_before;
};

/* Next address token; comments are skipped and the last one kept in
 * c->comment (a display name for "user@host (Name)"). */
static int mime_alex_next(struct mime_ctx *c, struct mime_alex *lx, enum mime_atok *t_r)
{
	lx->ws_before = false;
	for (;;) {
		if (lx->pos >= lx->len) {
			*t_r = AT_END;
			return MP_OK;
		}
		char ch = lx->s[lx->pos];
		if (mime_is_wsp(ch)) {
			lx->ws_before = true;
			lx->pos++;
		} else if (ch == '(') {
			size_t depth = 0;
			mp_buf_reset(&c->comment);
			while (lx->pos < lx->len) {
				ch = lx->s[lx->pos++];
				if (ch == '\\' && lx->pos < lx->len)
					ch = lx->s[lx->pos++];
				else if (ch == '(' && depth++ == 0)
					continue;
				else if (ch == ')' && --depth == 0)
					break;
				int ret = mp_buf_append(&c->comment, &ch, 1);
				if (ret != MP_OK)
					return ret;
			}
			lx->ws_before = true;
		} else if (ch == ')' || ch == ']' || ch == '\\') {
			lx->pos++; /* stray: dropped */
		} else {
			break;
		}
	}
	char ch = lx->s[lx->pos];
	if (ch == '"') {
		struct mime_lex q = { lx->s, lx->len, lx->pos };
		mp_buf_reset(&c->tok);
		int ret = mime_lex_quoted(&q, &c->tok);
		if (ret != MP_OK)
			return ret;
		lx->pos = q.pos;
		lx->t = c->tok.data != NULL ? c->tok.data : "";
		lx->tlen = c->tok.len;
		*t_r = AT_WORD;
	} else if (ch == '[') {
		size_t s = lx->pos;
		const char *e = memchr(lx->s + s, ']', lx->len - s);
		lx->pos = e == NULL ? lx->len : (size_t)(e - lx->s) + 1;
		lx->t = lx->s + s;
		lx->tlen = lx->pos - s;
		*t_r = AT_DLIT;
	} else if (mime_in("<>@,:;.", ch)) {
		lx->special = ch;
		lx->t = lx->s + lx->pos;
		lx->tlen = 1;
		lx->pos++;
		*t_r = AT_SPECIAL;
	} else {
		size_t s = lx->pos;
		while (lx->pos < lx->len) {
			ch = lx->s[lx->pos];
			if (mime_is_wsp(ch) || mime_in("<>@,:;.()\"[]\\", ch))
				break;
			lx->pos++;
		}
		lx->t = lx->s + s;
		lx->tlen = lx->pos - s;
		*t_r = AT_WORD;
	}
	return MP_OK;
}

/* (name adl mailbox host) into c->addr. */
static int mime_emit_addr(struct mime_ctx *c, const struct mp_buf *name, const struct mp_buf *adl,
			  const struct mp_buf *mbox, const struct mp_buf *host)
{
	struct mp_buf *o = &c->addr;
	if (o->len > MIME_ADDRS_MAX)
		return MP_OK;
	int ret = mp_buf_append(o, "(", 1);
	if (ret == MP_OK)
		ret = name != NULL ? mime_write_string(o, name->data, name->len)
				   : mp_buf_append(o, "NIL", 3);
	if (ret == MP_OK)
		ret = mp_buf_append(o, " ", 1);
	if (ret == MP_OK)
		ret = adl != NULL && adl->len > 0 ? mime_write_string(o, adl->data, adl->len)
						  : mp_buf_append(o, "NIL", 3);
	if (ret == MP_OK)
		ret = mp_buf_append(o, " ", 1);
	if (ret == MP_OK)
		ret = mbox->len > 0 ? mime_write_string(o, mbox->data, mbox->len)
				    : mime_write_cstr(o, "MISSING_MAILBOX");
	if (ret == MP_OK)
		ret = mp_buf_append(o, " ", 1);
	if (ret == MP_OK)
		ret = host->len > 0 ? mime_write_string(o, host->data, host->len)
				    : mime_write_cstr(o, "MISSING_DOMAIN");
	if (ret == MP_OK)
		ret = mp_buf_append(o, ")", 1);
	return ret;
}

static int mime_emit_group(struct mime_ctx *c, const struct mp_buf *name)
{
	if (c->addr.len > MIME_ADDRS_MAX)
		return MP_OK;
	if (name == NULL)
		return mp_buf_append_str(&c->addr, "(NIL NIL NIL NIL)");
	int ret = mp_buf_append_str(&c->addr, "(NIL NIL ");
	if (ret == MP_OK)
		ret = mime_write_string(&c->addr, name->data != NULL ? name->data : "", name->len);
	if (ret == MP_OK)
		ret = mp_buf_append_str(&c->addr, " NIL)");
	return ret;
}

/* Domain tokens (atoms, dots, literals) until a terminator in stop. */
static int mime_read_domain(struct mime_ctx *c, struct mime_alex *lx, enum mime_atok *t,
			    const char *stop)
{
	int ret;
	for (;;) {
		ret = mime_alex_next(c, lx, t);
		if (ret != MP_OK || *t == AT_END)
			return ret;
		if (*t == AT_SPECIAL && mime_in(stop, lx->special))
			return MP_OK;
		if (*t == AT_WORD || *t == AT_DLIT || (*t == AT_SPECIAL && lx->special == '.')) {
			ret = mp_buf_append(&c->domain, lx->t, lx->tlen);
			if (ret != MP_OK)
				return ret;
		}
	}
}

/* An address list (RFC 5322 §3.4, leniently) as "((...)(...))" or NIL,
 * into c->addr (reset first). The value is in c->val. */
static int mime_render_addrs(struct mime_ctx *c, const struct mime_hfield *f)
{
	struct mime_alex lx;
	enum mime_atok t;
	bool in_group = false;
	int ret;

	mp_buf_reset(&c->addr);
	if (!f->set)
		return mp_buf_append(&c->addr, "NIL", 3);
	ret = mime_unfold(c, f);
	if (ret != MP_OK)
		return ret;
	ret = mp_buf_append(&c->addr, "(", 1);
	if (ret != MP_OK)
		return ret;
	memset(&lx, 0, sizeof(lx));
	lx.s = c->val.data;
	lx.len = c->val.len;
	t = AT_WORD;
	while (t != AT_END) {
		size_t nwords = 0;
		mp_buf_reset(&c->phrase);
		mp_buf_reset(&c->local);
		mp_buf_reset(&c->domain);
		mp_buf_reset(&c->route);
		mp_buf_reset(&c->comment);
		/* the phrase, or the local part of an addr-spec */
		for (;;) {
			ret = mime_alex_next(c, &lx, &t);
			if (ret != MP_OK)
				return ret;
			if (t == AT_WORD || t == AT_DLIT ||
			    (t == AT_SPECIAL && lx.special == '.')) {
				bool dot = t == AT_SPECIAL;
				if (c->phrase.len > 0 && lx.ws_before && !dot)
					ret = mp_buf_append(&c->phrase, " ", 1);
				if (ret == MP_OK)
					ret = mp_buf_append(&c->phrase, lx.t, lx.tlen);
				if (ret == MP_OK)
					ret = mp_buf_append(&c->local, lx.t, lx.tlen);
				if (ret != MP_OK)
					return ret;
				if (!dot)
					nwords++;
				continue;
			}
			if (t == AT_SPECIAL && lx.special == '>')
				continue;
			break;
		}
		const struct mp_buf *cname = c->comment.len > 0 ? &c->comment : NULL;
		if (t == AT_SPECIAL && lx.special == '<') {
			/* name-addr: [route:] local @ domain > */
			bool have_name = nwords > 0;
			struct mp_buf *lp = &c->tmp;
			mp_buf_reset(lp);
			for (;;) {
				ret = mime_alex_next(c, &lx, &t);
				if (ret != MP_OK)
					return ret;
				if (t == AT_END || (t == AT_SPECIAL && (lx.special == '>' ||
									lx.special == '@')))
					break;
				if (t == AT_SPECIAL && lx.special != '.')
					continue;
				ret = mp_buf_append(lp, lx.t, lx.tlen);
				if (ret != MP_OK)
					return ret;
			}
			if (t == AT_SPECIAL && lx.special == '@' && lp->len == 0 &&
			    c->route.len == 0) {
				/* "<@a,@b:user@host>": the route begins with '@' */
				ret = mp_buf_append(lp, "@", 1);
				for (;;) {
					if (ret != MP_OK)
						return ret;
					ret = mime_alex_next(c, &lx, &t);
					if (ret != MP_OK)
						return ret;
					if (t == AT_END || (t == AT_SPECIAL && (lx.special == ':' ||
										lx.special == '>')))
						break;
					ret = mp_buf_append(lp, lx.t, lx.tlen);
				}
				if (t == AT_SPECIAL && lx.special == ':') {
					ret = mp_buf_append(&c->route, lp->data, lp->len);
					mp_buf_reset(lp);
					for (;;) {
						if (ret != MP_OK)
							return ret;
						ret = mime_alex_next(c, &lx, &t);
						if (ret != MP_OK)
							return ret;
						if (t == AT_END ||
						    (t == AT_SPECIAL && (lx.special == '>' ||
									 lx.special == '@')))
							break;
						if (t != AT_SPECIAL || lx.special == '.')
							ret = mp_buf_append(lp, lx.t, lx.tlen);
					}
				} else {
					/* "<@host>": no local part */
					ret = mp_buf_append(&c->domain, lp->data + 1, lp->len - 1);
					mp_buf_reset(lp);
					if (ret != MP_OK)
						return ret;
				}
			}
			if (t == AT_SPECIAL && lx.special == '@') {
				ret = mime_read_domain(c, &lx, &t, ">,;");
				if (ret != MP_OK)
					return ret;
			}
			/* the local part moves to c->local for the writer */
			mp_buf_reset(&c->local);
			ret = mp_buf_append(&c->local, lp->data != NULL ? lp->data : "", lp->len);
			if (ret != MP_OK)
				return ret;
			/* skip what follows '>' up to the next separator */
			while (t != AT_END && !(t == AT_SPECIAL && (lx.special == ',' ||
								   lx.special == ';'))) {
				ret = mime_alex_next(c, &lx, &t);
				if (ret != MP_OK)
					return ret;
			}
			cname = c->comment.len > 0 ? &c->comment : NULL;
			ret = mime_emit_addr(c, have_name ? &c->phrase : cname, &c->route, &c->local,
					     &c->domain);
		} else if (t == AT_SPECIAL && lx.special == '@') {
			/* addr-spec: what was read is the local part */
			ret = mime_read_domain(c, &lx, &t, ",;<");
			if (ret != MP_OK)
				return ret;
			while (t == AT_SPECIAL && lx.special == '<') {
				ret = mime_read_domain(c, &lx, &t, ",;");
				if (ret != MP_OK)
					return ret;
			}
			cname = c->comment.len > 0 ? &c->comment : NULL;
			ret = mime_emit_addr(c, cname, NULL, &c->local, &c->domain);
		} else if (t == AT_SPECIAL && lx.special == ':') {
			if (!in_group) {
				in_group = true;
				ret = mime_emit_group(c, &c->phrase);
			}
		} else if (nwords > 0) {
			/* a bare word: a mailbox without domain */
			ret = mime_emit_addr(c, cname, NULL, &c->phrase, &c->domain);
		}
		if (ret != MP_OK)
			return ret;
		if (t == AT_SPECIAL && lx.special == ';' && in_group) {
			in_group = false;
			ret = mime_emit_group(c, NULL);
			if (ret != MP_OK)
				return ret;
		}
	}
	if (in_group) {
		ret = mime_emit_group(c, NULL);
		if (ret != MP_OK)
			return ret;
	}
	if (c->addr.len == 1) {
		mp_buf_reset(&c->addr);
		return mp_buf_append(&c->addr, "NIL", 3);
	}
	return mp_buf_append(&c->addr, ")", 1);
}

static int mime_render_nfield(struct mime_ctx *c, const struct mime_hfield *f, struct mp_buf *out)
{
	if (!f->set)
		return mp_buf_append(out, "NIL", 3);
	int ret = mime_unfold(c, f);
	if (ret != MP_OK)
		return ret;
	return mime_write_string(out, c->val.data != NULL ? c->val.data : "", c->val.len);
}

/* The envelope of the header just read, appended to c->strs. */
static int mime_render_envelope(struct mime_ctx *c, uint32_t idx)
{
	struct mp_buf *o = &c->strs;
	size_t start = o->len;
	int ret;

	ret = mp_buf_append(o, "(", 1);
	if (ret == MP_OK)
		ret = mime_render_nfield(c, &c->hf[HF_DATE], o);
	if (ret == MP_OK)
		ret = mp_buf_append(o, " ", 1);
	if (ret == MP_OK)
		ret = mime_render_nfield(c, &c->hf[HF_SUBJECT], o);
	if (ret == MP_OK)
		ret = mime_render_addrs(c, &c->hf[HF_FROM]);
	if (ret == MP_OK) {
		mp_buf_reset(&c->from);
		ret = mp_buf_append(&c->from, c->addr.data, c->addr.len);
	}
	if (ret == MP_OK)
		ret = mp_buf_append(o, " ", 1);
	if (ret == MP_OK)
		ret = mp_buf_append(o, c->from.data, c->from.len);
	/* RFC 3501 §7.4.2: sender and reply-to absent or empty: from. */
	static const enum mime_hf deflt[2] = { HF_SENDER, HF_REPLY_TO };
	for (int i = 0; i < 2 && ret == MP_OK; i++) {
		ret = mime_render_addrs(c, &c->hf[deflt[i]]);
		if (ret == MP_OK)
			ret = mp_buf_append(o, " ", 1);
		if (ret != MP_OK)
			break;
		if (strcmp(c->addr.data, "NIL") == 0)
			ret = mp_buf_append(o, c->from.data, c->from.len);
		else
			ret = mp_buf_append(o, c->addr.data, c->addr.len);
	}
	static const enum mime_hf lists[3] = { HF_TO, HF_CC, HF_BCC };
	for (int i = 0; i < 3 && ret == MP_OK; i++) {
		ret = mime_render_addrs(c, &c->hf[lists[i]]);
		if (ret == MP_OK)
			ret = mp_buf_append(o, " ", 1);
		if (ret == MP_OK)
			ret = mp_buf_append(o, c->addr.data, c->addr.len);
	}
	if (ret == MP_OK)
		ret = mp_buf_append(o, " ", 1);
	if (ret == MP_OK)
		ret = mime_render_nfield(c, &c->hf[HF_IN_REPLY_TO], o);
	if (ret == MP_OK)
		ret = mp_buf_append(o, " ", 1);
	if (ret == MP_OK)
		ret = mime_render_nfield(c, &c->hf[HF_MESSAGE_ID], o);
	if (ret == MP_OK)
		ret = mp_buf_append(o, ")", 1);
	if (ret != MP_OK)
		return ret;
	c->pi[idx].e_off = start;
	c->pi[idx].e_len = o->len - start;
	return MP_OK;
}

/* ------------------------------------------------------ part setup */

static int mime_new_part(struct mime_ctx *c, uint32_t parent, uint32_t *idx_r)
{
	struct imap_mime *m = c->m;
	if (m->nparts == c->cap) {
		uint32_t ncap = c->cap == 0 ? 8 : c->cap * 2;
		if (ncap > c->max_parts)
			ncap = c->max_parts;
		if (ncap <= c->cap)
			return MP_ENOMEM; /* callers check the limit first */
		struct mime_part *np = realloc(m->parts, ncap * sizeof(*np));
		if (np == NULL)
			return MP_ENOMEM;
		m->parts = np;
		struct mime_pinfo *npi = realloc(c->pi, ncap * sizeof(*npi));
		if (npi == NULL)
			return MP_ENOMEM;
		c->pi = npi;
		c->cap = ncap;
	}
	uint32_t idx = m->nparts++;
	struct mime_part *p = &m->parts[idx];
	memset(p, 0, sizeof(*p));
	memset(&c->pi[idx], 0, sizeof(c->pi[idx]));
	p->parent = parent;
	p->first_child = MIME_NONE;
	p->next = MIME_NONE;
	p->kind = MIME_KIND_LEAF;
	p->hdr_off = c->pos;
	c->pi[idx].last_child = MIME_NONE;
	if (parent != MIME_NONE) {
		struct mime_pinfo *ppi = &c->pi[parent];
		c->pi[idx].depth = ppi->depth + 1;
		if (m->parts[parent].kind == MIME_KIND_MULTIPART && ppi->nchildren == 0)
			c->reserved--;
		if (ppi->last_child == MIME_NONE)
			m->parts[parent].first_child = idx;
		else
			m->parts[ppi->last_child].next = idx;
		ppi->last_child = idx;
		ppi->nchildren++;
	}
	*idx_r = idx;
	return MP_OK;
}

static int mime_push_boundary(struct mime_ctx *c, uint32_t part, const char *b, size_t len)
{
	if (c->nstack == c->stack_cap) {
		unsigned ncap = c->stack_cap == 0 ? 8 : c->stack_cap * 2;
		struct mime_boundary *ns = realloc(c->stack, ncap * sizeof(*ns));
		if (ns == NULL)
			return MP_ENOMEM;
		c->stack = ns;
		c->stack_cap = ncap;
	}
	struct mime_boundary *e = &c->stack[c->nstack];
	e->part = part;
	e->off = c->bnd.len;
	e->len = len;
	int ret = mp_buf_append(&c->bnd, b, len);
	if (ret != MP_OK)
		return ret;
	c->nstack++;
	return MP_OK;
}

static void mime_pop_boundaries(struct mime_ctx *c, unsigned keep)
{
	if (keep < c->nstack) {
		c->bnd.len = c->stack[keep].off;
		c->nstack = keep;
	}
}

/* The single-valued fields that follow the parameters:
 * body-fld-id SP body-fld-desc SP body-fld-enc. */
static int mime_render_id_desc_enc(struct mime_ctx *c, struct mp_buf *o, const char *cte,
				   size_t cte_len)
{
	int ret = mp_buf_append(o, " ", 1);
	if (ret == MP_OK)
		ret = mime_render_nfield(c, &c->hf[HF_CONTENT_ID], o);
	if (ret == MP_OK)
		ret = mp_buf_append(o, " ", 1);
	if (ret == MP_OK)
		ret = mime_render_nfield(c, &c->hf[HF_CONTENT_DESC], o);
	if (ret == MP_OK)
		ret = mp_buf_append(o, " ", 1);
	if (ret == MP_OK)
		ret = cte_len > 0 ? mime_write_string(o, cte, cte_len)
				  : mp_buf_append_str(o, "\"7BIT\"");
	return ret;
}

/* body-fld-dsp SP body-fld-lang SP body-fld-loc */
static int mime_render_dsp_lang_loc(struct mime_ctx *c, struct mp_buf *o)
{
	int ret = MP_OK;
	const struct mime_hfield *f = &c->hf[HF_CONTENT_DISP];
	const char *t;
	size_t tlen;

	if (f->set) {
		ret = mime_unfold(c, f);
		if (ret != MP_OK)
			return ret;
	}
	struct mime_lex lx = { c->val.data, f->set ? c->val.len : 0, 0 };
	mime_skip_cfws(&lx);
	if (f->set && mime_lex_token(&lx, &t, &tlen)) {
		ret = mp_buf_append(o, "(", 1);
		if (ret == MP_OK)
			ret = mime_write_string(o, t, tlen);
		if (ret == MP_OK)
			ret = mp_buf_append(o, " ", 1);
		if (ret == MP_OK)
			ret = mime_parse_params(c, &lx);
		if (ret == MP_OK)
			ret = mime_render_params(c, o, false);
		if (ret == MP_OK)
			ret = mp_buf_append(o, ")", 1);
	} else {
		ret = mp_buf_append(o, "NIL", 3);
	}

	f = &c->hf[HF_CONTENT_LANG];
	if (ret == MP_OK)
		ret = mp_buf_append(o, " ", 1);
	if (ret == MP_OK && f->set)
		ret = mime_unfold(c, f);
	if (ret != MP_OK)
		return ret;
	size_t nlang = 0;
	lx.s = c->val.data;
	lx.len = f->set ? c->val.len : 0;
	lx.pos = 0;
	while (lx.pos < lx.len && nlang < MIME_MAX_LANGS) {
		mime_skip_cfws(&lx);
		if (mime_lex_token(&lx, &t, &tlen)) {
			ret = mp_buf_append(o, nlang == 0 ? "(" : " ", 1);
			if (ret == MP_OK)
				ret = mime_write_string(o, t, tlen);
			if (ret != MP_OK)
				return ret;
			nlang++;
		}
		mime_skip_cfws(&lx);
		while (lx.pos < lx.len && lx.s[lx.pos] != ',')
			lx.pos++;
		if (lx.pos < lx.len)
			lx.pos++;
	}
	ret = mp_buf_append_str(o, nlang == 0 ? "NIL" : ")");
	if (ret == MP_OK)
		ret = mp_buf_append(o, " ", 1);
	if (ret == MP_OK)
		ret = mime_render_nfield(c, &c->hf[HF_CONTENT_LOC], o);
	return ret;
}

/* Decide what the part whose header was just read is, and render its
 * fields. *child_r: the part is a message whose top entity must be read
 * next (MIME_NONE otherwise). */
static int mime_setup_part(struct mime_ctx *c, uint32_t idx, uint32_t *child_r)
{
	struct mime_part *p = &c->m->parts[idx];
	struct mime_pinfo *pi = &c->pi[idx];
	struct mp_buf *o = &c->strs;
	const char *type = NULL, *sub = NULL, *cte = NULL;
	size_t tlen = 0, slen = 0, cte_len = 0;
	struct mime_lex lx = { NULL, 0, 0 };
	int ret;

	*child_r = MIME_NONE;
	/* A message's top entity carries its envelope. */
	if (idx == 0 || c->m->parts[p->parent].kind == MIME_KIND_MESSAGE) {
		ret = mime_render_envelope(c, idx);
		if (ret != MP_OK)
			return ret;
	}

	/* Content-Transfer-Encoding: one token, or the default. Kept as sent
	 * for BODYSTRUCTURE, lowercased for sections (BINARY). */
	char cte_sent[MIME_CTE_MAX + 1];
	snprintf(p->cte, sizeof(p->cte), "7bit");
	if (c->hf[HF_CTE].set) {
		ret = mime_unfold(c, &c->hf[HF_CTE]);
		if (ret != MP_OK)
			return ret;
		struct mime_lex cl = { c->val.data, c->val.len, 0 };
		const char *t;
		size_t n;
		mime_skip_cfws(&cl);
		bool ascii = mime_lex_token(&cl, &t, &n) && n <= MIME_CTE_MAX;
		for (size_t i = 0; ascii && i < n; i++)
			ascii = (unsigned char)t[i] < 0x80;
		if (ascii) {
			for (size_t i = 0; i < n; i++)
				p->cte[i] = mime_lower(t[i]);
			p->cte[n] = '\0';
			memcpy(cte_sent, t, n);
			cte_sent[n] = '\0';
			cte = cte_sent;
			cte_len = n;
		}
	}
	bool binary_cte = cte_len == 0 || strcmp(p->cte, "7bit") == 0 ||
			  strcmp(p->cte, "8bit") == 0 || strcmp(p->cte, "binary") == 0;

	/* Content-Type: type "/" subtype *(";" parameter) */
	bool have_type = false;
	if (c->hf[HF_CONTENT_TYPE].set) {
		ret = mime_unfold(c, &c->hf[HF_CONTENT_TYPE]);
		if (ret != MP_OK)
			return ret;
		lx.s = c->val.data;
		lx.len = c->val.len;
		mime_skip_cfws(&lx);
		if (mime_lex_token(&lx, &type, &tlen)) {
			mime_skip_cfws(&lx);
			if (lx.pos < lx.len && lx.s[lx.pos] == '/') {
				lx.pos++;
				mime_skip_cfws(&lx);
				have_type = mime_lex_token(&lx, &sub, &slen);
			}
		}
	}
	c->nparams = 0;
	if (have_type) {
		ret = mime_parse_params(c, &lx);
		if (ret != MP_OK)
			return ret;
	}

	bool digest_default = !have_type && p->parent != MIME_NONE &&
			      c->pi[p->parent].digest;
	bool room = pi->depth + 1 <= c->max_depth &&
		    (uint64_t)c->m->nparts + c->reserved < c->max_parts;
	bool is_multi = have_type && mime_eqi(type, tlen, "multipart");
	bool is_msg = (have_type && mime_eqi(type, tlen, "message") &&
		       (mime_eqi(sub, slen, "rfc822") || mime_eqi(sub, slen, "global"))) ||
		      digest_default;

	if (is_multi) {
		const struct mime_param *bp = NULL;
		for (size_t i = 0; i < c->nparams; i++) {
			if (c->params[i].section < 0 &&
			    mime_eqi(c->params[i].name, c->params[i].name_len, "boundary")) {
				bp = &c->params[i];
				break;
			}
		}
		if (bp == NULL || bp->vlen == 0 || bp->vlen > MIME_BOUNDARY_MAX) {
			/* no usable boundary: one text part */
			have_type = false;
			c->nparams = 0;
		} else if (room) {
			p->kind = MIME_KIND_MULTIPART;
			p->cte[0] = '\0';
			c->reserved++;
			pi->digest = mime_eqi(sub, slen, "digest");
			ret = mime_push_boundary(c, idx, c->pv.data + bp->voff, bp->vlen);
			if (ret != MP_OK)
				return ret;
			pi->a_off = o->len;
			ret = mime_write_string(o, sub, slen);
			if (ret != MP_OK)
				return ret;
			pi->a_len = o->len - pi->a_off;
			pi->x_off = o->len;
			ret = mp_buf_append(o, " ", 1);
			if (ret == MP_OK)
				ret = mime_render_params(c, o, false);
			if (ret == MP_OK)
				ret = mp_buf_append(o, " ", 1);
			if (ret == MP_OK)
				ret = mime_render_dsp_lang_loc(c, o);
			if (ret != MP_OK)
				return ret;
			pi->x_len = o->len - pi->x_off;
			return MP_OK;
		}
	}

	/* single part: body-type-basic, -text or -msg */
	bool opaque = (is_multi && have_type) || (is_msg && (!room || !binary_cte));
	pi->a_off = o->len;
	if (opaque) {
		ret = mp_buf_append_str(o, "\"application\" \"octet-stream\" NIL");
	} else if (!have_type && !digest_default) {
		pi->text = true;
		ret = mp_buf_append_str(o, "\"text\" \"plain\" ");
		if (ret == MP_OK)
			ret = mime_render_params(c, o, true);
	} else if (digest_default) {
		ret = mp_buf_append_str(o, "\"message\" \"rfc822\" NIL");
	} else {
		pi->text = mime_eqi(type, tlen, "text");
		ret = mime_write_string(o, type, tlen);
		if (ret == MP_OK)
			ret = mp_buf_append(o, " ", 1);
		if (ret == MP_OK)
			ret = mime_write_string(o, sub, slen);
		if (ret == MP_OK)
			ret = mp_buf_append(o, " ", 1);
		if (ret == MP_OK)
			ret = mime_render_params(c, o, pi->text);
	}
	if (ret == MP_OK)
		ret = mime_render_id_desc_enc(c, o, cte, cte_len);
	if (ret != MP_OK)
		return ret;
	pi->a_len = o->len - pi->a_off;
	pi->x_off = o->len;
	ret = mp_buf_append(o, " ", 1);
	if (ret == MP_OK)
		ret = mime_render_nfield(c, &c->hf[HF_CONTENT_MD5], o);
	if (ret == MP_OK)
		ret = mp_buf_append(o, " ", 1);
	if (ret == MP_OK)
		ret = mime_render_dsp_lang_loc(c, o);
	if (ret != MP_OK)
		return ret;
	pi->x_len = o->len - pi->x_off;

	if (is_msg && !opaque) {
		p->kind = MIME_KIND_MESSAGE;
		p->cte[0] = '\0';
		pi->text = false;
		return mime_new_part(c, idx, child_r);
	}
	return MP_OK;
}

/* ------------------------------------------------------------ the parse */

/* End the open parts from cur up to (not including) stop at e, which has
 * lf_e LFs before it. A part never ends before its body starts nor before
 * the child closed just before it, so every child lies inside its parent
 * even in mail where a delimiter cuts a header short. A multipart left
 * without parts gets an empty one. */
static int mime_close(struct mime_ctx *c, uint32_t cur, uint32_t stop, size_t e, uint64_t lf_e)
{
	uint64_t floor = 0, floor_lf = 0;

	for (uint32_t p = cur; p != stop && p != MIME_NONE; p = c->m->parts[p].parent) {
		struct mime_part *mp = &c->m->parts[p];
		struct mime_pinfo *pi = &c->pi[p];
		uint64_t body_off = mp->hdr_off + mp->hdr_len;
		uint64_t end = e, lf = lf_e;
		if (end < body_off) {
			end = body_off;
			lf = pi->body_lf;
		}
		if (end < floor) {
			end = floor;
			lf = floor_lf;
		}
		mp->body_len = end - body_off;
		pi->lines = lf - pi->body_lf;
		floor = end;
		floor_lf = lf;
		if (mp->kind == MIME_KIND_MULTIPART && pi->nchildren == 0) {
			uint32_t child;
			size_t save = c->pos;
			c->pos = (size_t)(body_off + mp->body_len);
			int ret = mime_new_part(c, p, &child);
			c->pos = save;
			if (ret != MP_OK)
				return ret;
			struct mime_part *cp = &c->m->parts[child];
			cp->flags |= MIME_PF_SYNTHETIC;
			snprintf(cp->cte, sizeof(cp->cte), "7bit");
			c->pi[child].text = true;
			c->pi[child].a_off = c->strs.len;
			ret = mp_buf_append_str(&c->strs, "\"text\" \"plain\" (\"charset\" "
							  "\"us-ascii\") NIL NIL \"7BIT\"");
			if (ret != MP_OK)
				return ret;
			c->pi[child].a_len = c->strs.len - c->pi[child].a_off;
			c->pi[child].x_off = c->strs.len;
			ret = mp_buf_append_str(&c->strs, " NIL NIL NIL NIL");
			if (ret != MP_OK)
				return ret;
			c->pi[child].x_len = c->strs.len - c->pi[child].x_off;
		}
	}
	return MP_OK;
}

static int mime_parse_all(struct mime_ctx *c)
{
	uint32_t cur;
	int ret = mime_new_part(c, MIME_NONE, &cur);
	bool header = true;

	/* Each turn reads a header or one body line: bounded by the message. */
	while (ret == MP_OK) {
		if (header) {
			uint32_t child;
			mime_read_header(c, cur);
			ret = mime_setup_part(c, cur, &child);
			if (ret != MP_OK)
				break;
			if (child != MIME_NONE) {
				cur = child;
				c->m->parts[cur].hdr_off = c->pos;
				continue;
			}
			header = false;
			continue;
		}
		if (c->pos >= c->len) {
			ret = mime_close(c, cur, MIME_NONE, c->len, c->lineno);
			break;
		}
		size_t ls = c->pos, le = mime_line_end(c, ls);
		bool close = false;
		int k = mime_match_boundary(c, ls, &close);
		if (k >= 0 && !close) {
			/* over the part limit the delimiter is text; a first part
			 * uses the slot its multipart kept */
			uint64_t used = (uint64_t)c->m->nparts + c->reserved;
			if (c->pi[c->stack[k].part].nchildren == 0)
				used--;
			if (used >= c->max_parts)
				k = -1;
		}
		if (k < 0) {
			mime_advance(c, le);
			continue;
		}
		/* RFC 2046 §5.1.1: the line end before a delimiter is part of it. */
		size_t e = ls;
		uint64_t lf_e = c->lineno;
		if (e > 0 && c->msg[e - 1] == '\n') {
			e--;
			lf_e--;
			if (e > 0 && c->msg[e - 1] == '\r')
				e--;
		}
		uint32_t mp = c->stack[k].part;
		ret = mime_close(c, cur, mp, e, lf_e);
		if (ret != MP_OK)
			break;
		mime_advance(c, le);
		if (close) {
			/* the epilogue: still the multipart's body, no more parts */
			mime_pop_boundaries(c, (unsigned)k);
			cur = mp;
			continue;
		}
		mime_pop_boundaries(c, (unsigned)k + 1);
		ret = mime_new_part(c, mp, &cur);
		header = true;
	}
	return ret;
}

/* BODY and BODYSTRUCTURE from the rendered pieces, walking the tree
 * without recursion. */
static int mime_assemble(struct mime_ctx *c)
{
	const struct imap_mime *m = c->m;
	struct mp_buf out[2];
	int ret = MP_OK;
	uint32_t p = 0;
	char num[64];

	mp_buf_init(&out[0], 0);
	mp_buf_init(&out[1], 0);
	for (;;) {
		const struct mime_part *mp = &m->parts[p];
		const struct mime_pinfo *pi = &c->pi[p];
		const char *a = c->strs.data + pi->a_off;
		const char *x = c->strs.data + pi->x_off;
		for (int ext = 0; ext < 2 && ret == MP_OK; ext++) {
			struct mp_buf *o = &out[ext];
			ret = mp_buf_append(o, "(", 1);
			if (ret != MP_OK || mp->kind == MIME_KIND_MULTIPART)
				continue;
			ret = mp_buf_append(o, a, pi->a_len);
			snprintf(num, sizeof(num), " %llu", (unsigned long long)mp->body_len);
			if (ret == MP_OK)
				ret = mp_buf_append_str(o, num);
			if (ret != MP_OK)
				break;
			if (mp->kind == MIME_KIND_MESSAGE) {
				const struct mime_pinfo *ci = &c->pi[mp->first_child];
				ret = mp_buf_append(o, " ", 1);
				if (ret == MP_OK)
					ret = mp_buf_append(o, c->strs.data + ci->e_off, ci->e_len);
				if (ret == MP_OK)
					ret = mp_buf_append(o, " ", 1);
				continue;
			}
			if (pi->text) {
				snprintf(num, sizeof(num), " %llu", (unsigned long long)pi->lines);
				ret = mp_buf_append_str(o, num);
			}
			if (ret == MP_OK && ext)
				ret = mp_buf_append(o, x, pi->x_len);
			if (ret == MP_OK)
				ret = mp_buf_append(o, ")", 1);
		}
		if (ret != MP_OK)
			break;
		if (mp->kind != MIME_KIND_LEAF) {
			p = mp->first_child;
			continue;
		}
		/* p is complete: go to its next sibling, closing finished parents */
		bool done = false;
		for (;;) {
			if (p == 0) {
				done = true;
				break;
			}
			if (m->parts[p].next != MIME_NONE) {
				p = m->parts[p].next;
				break;
			}
			p = m->parts[p].parent;
			mp = &m->parts[p];
			pi = &c->pi[p];
			for (int ext = 0; ext < 2 && ret == MP_OK; ext++) {
				struct mp_buf *o = &out[ext];
				if (mp->kind == MIME_KIND_MULTIPART) {
					ret = mp_buf_append(o, " ", 1);
					if (ret == MP_OK)
						ret = mp_buf_append(o, c->strs.data + pi->a_off,
								    pi->a_len);
				} else {
					snprintf(num, sizeof(num), " %llu",
						 (unsigned long long)pi->lines);
					ret = mp_buf_append_str(o, num);
				}
				if (ret == MP_OK && ext)
					ret = mp_buf_append(o, c->strs.data + pi->x_off, pi->x_len);
				if (ret == MP_OK)
					ret = mp_buf_append(o, ")", 1);
			}
			if (ret != MP_OK)
				break;
		}
		if (done || ret != MP_OK)
			break;
	}
	if (ret == MP_OK) {
		struct imap_mime *mm = c->m;
		mm->body = mp_buf_steal(&out[0], &mm->body_len);
		mm->bs = mp_buf_steal(&out[1], &mm->bs_len);
		const struct mime_pinfo *ri = &c->pi[0];
		mm->env = malloc(ri->e_len + 1);
		if (mm->body == NULL || mm->bs == NULL || mm->env == NULL) {
			ret = MP_ENOMEM;
		} else {
			memcpy(mm->env, c->strs.data + ri->e_off, ri->e_len);
			mm->env[ri->e_len] = '\0';
			mm->env_len = ri->e_len;
		}
	}
	mp_buf_free(&out[0]);
	mp_buf_free(&out[1]);
	return ret;
}

static void mime_ctx_free(struct mime_ctx *c)
{
	struct mp_buf *bufs[] = { &c->strs, &c->val, &c->pv, &c->tmp, &c->tok, &c->bnd, &c->phrase,
				  &c->local, &c->domain, &c->route, &c->comment, &c->from,
				  &c->addr };
	for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
		mp_buf_free(bufs[i]);
	free(c->pi);
	free(c->stack);
}

int imap_mime_parse(const char *msg, size_t len, const struct imap_mime_limits *lim,
		    struct imap_mime **m_r)
{
	struct mime_ctx *c;
	int ret;

	*m_r = NULL;
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		return MP_ENOMEM;
	c->m = calloc(1, sizeof(*c->m));
	if (c->m == NULL) {
		free(c);
		return MP_ENOMEM;
	}
	c->msg = len > 0 ? msg : "";
	c->len = len;
	c->max_depth = lim != NULL && lim->max_depth != 0 ? lim->max_depth : MIME_DEFAULT_DEPTH;
	c->max_parts = lim != NULL && lim->max_parts != 0 ? lim->max_parts : MIME_DEFAULT_PARTS;
	if (c->max_parts > MIME_PACK_MAX_PARTS)
		c->max_parts = MIME_PACK_MAX_PARTS;
	if (c->max_parts < 2)
		c->max_parts = 2; /* a message/rfc822 or multipart needs room for one part */
	struct mp_buf *bufs[] = { &c->strs, &c->val, &c->pv, &c->tmp, &c->tok, &c->bnd, &c->phrase,
				  &c->local, &c->domain, &c->route, &c->comment, &c->from,
				  &c->addr };
	ret = MP_OK;
	for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++) {
		mp_buf_init(bufs[i], 0);
		/* allocated from the start, so data is never NULL (offsets into
		 * an empty buffer stay defined) */
		if (ret == MP_OK)
			ret = mp_buf_reserve(bufs[i], 64);
	}
	c->m->size = len;

	if (ret == MP_OK)
		ret = mime_parse_all(c);
	if (ret == MP_OK)
		ret = mime_assemble(c);
	if (ret == MP_OK) {
		*m_r = c->m;
		c->m = NULL;
	} else {
		imap_mime_free(&c->m);
		ret = MP_ENOMEM;
	}
	mime_ctx_free(c);
	free(c);
	return ret;
}

void imap_mime_free(struct imap_mime **m)
{
	if (m == NULL || *m == NULL)
		return;
	free((*m)->parts);
	free((*m)->body);
	free((*m)->bs);
	free((*m)->env);
	free(*m);
	*m = NULL;
}

int imap_mime_envelope(const struct imap_mime *m, struct mp_buf *out)
{
	if (m->env == NULL)
		return MP_ENOENT;
	return mp_buf_append(out, m->env, m->env_len);
}

int imap_mime_body(const struct imap_mime *m, bool extended, struct mp_buf *out)
{
	return extended ? mp_buf_append(out, m->bs, m->bs_len)
			: mp_buf_append(out, m->body, m->body_len);
}

uint64_t imap_mime_size(const struct imap_mime *m)
{
	return m->size;
}

/* ------------------------------------------------------------ sections */

static uint32_t mime_nth_child(const struct imap_mime *m, uint32_t p, uint32_t n)
{
	uint32_t c = m->parts[p].first_child;
	for (uint32_t i = 1; i < n && c != MIME_NONE; i++)
		c = m->parts[c].next;
	return c;
}

int imap_mime_section(const struct imap_mime *m, const uint32_t *parts, unsigned nparts,
		      enum imap_mime_sect sect, struct imap_mime_span *span_r)
{
	const struct mime_part *p;
	uint32_t e = 0, pi = 0;

	memset(span_r, 0, sizeof(*span_r));
	span_r->cte = "";
	if (nparts == 0) {
		p = &m->parts[0];
		switch (sect) {
		case IMAP_MIME_SECT_BODY:
			span_r->off = 0;
			span_r->len = m->size;
			span_r->is_multipart = p->kind == MIME_KIND_MULTIPART;
			return MP_OK;
		case IMAP_MIME_SECT_HEADER:
			span_r->off = p->hdr_off;
			span_r->len = p->hdr_len;
			return MP_OK;
		case IMAP_MIME_SECT_TEXT:
			span_r->off = p->hdr_off + p->hdr_len;
			span_r->len = p->body_len;
			return MP_OK;
		default:
			return MP_ENOENT;
		}
	}
	/* RFC 3501 §6.4.5: a number picks a part of a multipart; a message
	 * that is not multipart has one part, 1, itself; inside a
	 * message/rfc822 part the numbers go on in the message it holds. */
	for (unsigned i = 0; i < nparts; i++) {
		uint32_t n = parts[i];
		if (n == 0)
			return MP_ENOENT;
		if (m->parts[e].kind == MIME_KIND_MULTIPART) {
			pi = mime_nth_child(m, e, n);
			if (pi == MIME_NONE)
				return MP_ENOENT;
		} else {
			if (n != 1)
				return MP_ENOENT;
			pi = e;
		}
		if (i + 1 < nparts) {
			if (m->parts[pi].kind == MIME_KIND_MESSAGE)
				e = m->parts[pi].first_child;
			else if (m->parts[pi].kind == MIME_KIND_MULTIPART)
				e = pi;
			else
				return MP_ENOENT;
		}
	}
	p = &m->parts[pi];
	switch (sect) {
	case IMAP_MIME_SECT_BODY:
		span_r->off = p->hdr_off + p->hdr_len;
		span_r->len = p->body_len;
		span_r->cte = p->kind == MIME_KIND_LEAF ? p->cte : "";
		span_r->is_multipart = p->kind == MIME_KIND_MULTIPART;
		return MP_OK;
	case IMAP_MIME_SECT_MIME:
		span_r->off = p->hdr_off;
		span_r->len = p->hdr_len;
		return MP_OK;
	case IMAP_MIME_SECT_HEADER:
	case IMAP_MIME_SECT_TEXT:
		if (p->kind != MIME_KIND_MESSAGE)
			return MP_ENOENT;
		p = &m->parts[p->first_child];
		if (sect == IMAP_MIME_SECT_HEADER) {
			span_r->off = p->hdr_off;
			span_r->len = p->hdr_len;
		} else {
			span_r->off = p->hdr_off + p->hdr_len;
			span_r->len = p->body_len;
		}
		return MP_OK;
	}
	return MP_ENOENT;
}

/* -------------------------------------------------------- pack / unpack */

/*
 * Blob, all integers big-endian:
 *   "MPMS" u8 version(1) u8 0 u16 0
 *   u64 message size   u32 nparts   u32 body_len   u32 bs_len
 *   BODY bytes, BODYSTRUCTURE bytes
 *   nparts times: u32 parent (0xffffffff for part 0, else < its index)
 *                 u8 kind  u8 flags  u8 cte_len  cte bytes
 *                 u64 hdr_off  u64 hdr_len  u64 body_len
 * and nothing after. Parts are in pre-order; children follow their parent
 * in order, so the tree is rebuilt from the parent links alone.
 */
int imap_mime_pack(const struct imap_mime *m, uint8_t **out_r, size_t *len_r)
{
	struct mp_buf b;
	int ret;

	*out_r = NULL;
	*len_r = 0;
	if (m->body_len > UINT32_MAX || m->bs_len > UINT32_MAX)
		return MP_ETOOBIG;
	mp_buf_init(&b, 0);
	ret = mp_buf_append(&b, MIME_PACK_MAGIC, 4);
	if (ret == MP_OK)
		ret = mp_buf_append_u8(&b, MIME_PACK_VERSION);
	if (ret == MP_OK)
		ret = mp_buf_append(&b, "\0\0\0", 3);
	if (ret == MP_OK)
		ret = mp_buf_append_be64(&b, m->size);
	if (ret == MP_OK)
		ret = mp_buf_append_be32(&b, m->nparts);
	if (ret == MP_OK)
		ret = mp_buf_append_be32(&b, (uint32_t)m->body_len);
	if (ret == MP_OK)
		ret = mp_buf_append_be32(&b, (uint32_t)m->bs_len);
	if (ret == MP_OK)
		ret = mp_buf_append(&b, m->body, m->body_len);
	if (ret == MP_OK)
		ret = mp_buf_append(&b, m->bs, m->bs_len);
	for (uint32_t i = 0; i < m->nparts && ret == MP_OK; i++) {
		const struct mime_part *p = &m->parts[i];
		size_t cl = strlen(p->cte);
		ret = mp_buf_append_be32(&b, p->parent);
		if (ret == MP_OK)
			ret = mp_buf_append_u8(&b, p->kind);
		if (ret == MP_OK)
			ret = mp_buf_append_u8(&b, p->flags);
		if (ret == MP_OK)
			ret = mp_buf_append_u8(&b, (uint8_t)cl);
		if (ret == MP_OK)
			ret = mp_buf_append(&b, p->cte, cl);
		if (ret == MP_OK)
			ret = mp_buf_append_be64(&b, p->hdr_off);
		if (ret == MP_OK)
			ret = mp_buf_append_be64(&b, p->hdr_len);
		if (ret == MP_OK)
			ret = mp_buf_append_be64(&b, p->body_len);
	}
	if (ret != MP_OK) {
		mp_buf_free(&b);
		return ret == MP_ENOSPC ? MP_ETOOBIG : ret;
	}
	*out_r = (uint8_t *)mp_buf_steal(&b, len_r);
	if (*out_r == NULL)
		return MP_ENOMEM;
	return MP_OK;
}

static char *mime_dup(const uint8_t *p, size_t n)
{
	char *s = malloc(n + 1);
	if (s != NULL) {
		memcpy(s, p, n);
		s[n] = '\0';
	}
	return s;
}

/* Every link and span of an unpacked table, before anyone uses it. */
static int mime_check_tree(struct imap_mime *m)
{
	uint32_t *nchild = calloc(m->nparts, sizeof(*nchild));
	uint32_t *last = malloc(m->nparts * sizeof(*last));
	int ret = MP_OK;

	if (nchild == NULL || last == NULL) {
		free(nchild);
		free(last);
		return MP_ENOMEM;
	}
	for (uint32_t i = 0; i < m->nparts; i++) {
		struct mime_part *p = &m->parts[i];
		uint64_t body_off = p->hdr_off + p->hdr_len;
		last[i] = MIME_NONE;
		p->first_child = MIME_NONE;
		p->next = MIME_NONE;
		if (i == 0) {
			if (p->parent != MIME_NONE || p->hdr_off != 0 ||
			    body_off + p->body_len != m->size) {
				ret = MP_EPROTO;
				break;
			}
			continue;
		}
		if (p->parent >= i) {
			ret = MP_EPROTO;
			break;
		}
		struct mime_part *pp = &m->parts[p->parent];
		uint64_t pb = pp->hdr_off + pp->hdr_len;
		uint64_t lo = pb;
		if (last[p->parent] != MIME_NONE) {
			const struct mime_part *s = &m->parts[last[p->parent]];
			lo = s->hdr_off + s->hdr_len + s->body_len;
		}
		if (pp->kind == MIME_KIND_LEAF || p->hdr_off < lo ||
		    body_off + p->body_len > pb + pp->body_len ||
		    (pp->kind == MIME_KIND_MESSAGE && nchild[p->parent] > 0)) {
			ret = MP_EPROTO;
			break;
		}
		if (last[p->parent] == MIME_NONE)
			pp->first_child = i;
		else
			m->parts[last[p->parent]].next = i;
		last[p->parent] = i;
		nchild[p->parent]++;
	}
	for (uint32_t i = 0; i < m->nparts && ret == MP_OK; i++) {
		if ((m->parts[i].kind == MIME_KIND_LEAF) != (nchild[i] == 0))
			ret = MP_EPROTO;
	}
	free(nchild);
	free(last);
	return ret;
}

int imap_mime_unpack(const uint8_t *data, size_t len, struct imap_mime **m_r)
{
	struct imap_mime *m;
	size_t pos;
	int ret = MP_EPROTO;

	*m_r = NULL;
	if (data == NULL || len < MIME_PACK_HDR_LEN || memcmp(data, MIME_PACK_MAGIC, 4) != 0 ||
	    data[4] != MIME_PACK_VERSION || data[5] != 0 || data[6] != 0 || data[7] != 0)
		return MP_EPROTO;
	uint64_t size = mp_be64_get(data + 8);
	uint32_t nparts = mp_be32_get(data + 16);
	uint32_t body_len = mp_be32_get(data + 20);
	uint32_t bs_len = mp_be32_get(data + 24);
	pos = MIME_PACK_HDR_LEN;
	if (nparts == 0 || nparts > MIME_PACK_MAX_PARTS || body_len == 0 || bs_len == 0 ||
	    body_len > len - pos || bs_len > len - pos - body_len)
		return MP_EPROTO;
	if ((uint64_t)nparts * MIME_PACK_PART_MIN > len - pos - body_len - bs_len)
		return MP_EPROTO;

	m = calloc(1, sizeof(*m));
	if (m == NULL)
		return MP_ENOMEM;
	m->size = size;
	m->body = mime_dup(data + pos, body_len);
	m->body_len = body_len;
	pos += body_len;
	m->bs = mime_dup(data + pos, bs_len);
	m->bs_len = bs_len;
	pos += bs_len;
	m->parts = calloc(nparts, sizeof(*m->parts));
	if (m->body == NULL || m->bs == NULL || m->parts == NULL) {
		ret = MP_ENOMEM;
		goto fail;
	}
	m->nparts = nparts;
	for (uint32_t i = 0; i < nparts; i++) {
		struct mime_part *p = &m->parts[i];
		if (len - pos < MIME_PACK_PART_MIN)
			goto fail;
		p->parent = mp_be32_get(data + pos);
		p->kind = data[pos + 4];
		p->flags = data[pos + 5];
		uint8_t cl = data[pos + 6];
		pos += 7;
		if (p->kind > MIME_KIND_MESSAGE || (p->flags & ~MIME_PF_ALL) != 0 ||
		    cl > MIME_CTE_MAX || len - pos < (size_t)cl + 24)
			goto fail;
		for (uint8_t k = 0; k < cl; k++) {
			char ch = (char)data[pos + k];
			if (!mime_is_token(ch) || ch != mime_lower(ch) || (unsigned char)ch >= 0x80)
				goto fail;
			p->cte[k] = ch;
		}
		p->cte[cl] = '\0';
		if ((p->kind == MIME_KIND_LEAF) != (cl > 0))
			goto fail;
		pos += cl;
		p->hdr_off = mp_be64_get(data + pos);
		p->hdr_len = mp_be64_get(data + pos + 8);
		p->body_len = mp_be64_get(data + pos + 16);
		pos += 24;
		if (p->hdr_off > size || p->hdr_len > size - p->hdr_off ||
		    p->body_len > size - p->hdr_off - p->hdr_len)
			goto fail;
	}
	if (pos != len)
		goto fail;
	ret = mime_check_tree(m);
	if (ret != MP_OK)
		goto fail;
	*m_r = m;
	return MP_OK;
fail:
	imap_mime_free(&m);
	return ret;
}
