/*
 * imap_search: SEARCH arguments compiled into a tree of nodes (one arena
 * per program), then evaluated per message.
 *
 * Compile checks everything (syntax, numbers, dates, sets, limits) before
 * it returns a program, so a bad command changes nothing. Matching reads
 * only what the caller gave: the index fields of struct imap_search_msg
 * and, for header/text/SENT* keys, the message bytes; what it derives from
 * the message (decoded body text, decoded header text, the Date: day) is
 * computed once per message and thrown away after it.
 *
 * The body is walked here with a small MIME reader of its own (multipart
 * boundaries, message/rfc822, text parts decoded by their transfer
 * encoding and charset), bounded in depth and parts; it does not use
 * imap_mime, whose job is FETCH's exact structure.
 *
 * Never: recurse deeper than SEARCH_MAX_DEPTH while compiling or
 * SEARCH_MAX_MIME_DEPTH while walking a body; accept more than
 * SEARCH_MAX_KEYS keys; read outside the message given.
 */
#include "imap_search.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imap_parse.h"
#include "imap_text.h"
#include "mp_arena.h"
#include "mp_buf.h"
#include "mp_error.h"

#define SEARCH_MAX_DEPTH 64          /* NOT / OR / ( ) nesting */
#define SEARCH_MAX_KEYS 10000        /* keys in one program */
#define SEARCH_MAX_RANGES 100000     /* ranges in one sequence set */
#define SEARCH_MAX_MIME_DEPTH 16     /* multipart / message nesting in BODY */
#define SEARCH_MAX_MIME_PARTS 500    /* parts looked at in one message */
#define SEARCH_MAX_BOUNDARY 200      /* RFC 2046 says 70; some mailers exceed it */

enum search_kind {
	SK_AND,
	SK_OR,
	SK_NOT,
	SK_ALL,
	SK_FLAG,        /* system flag or keyword: str */
	SK_RECENT,
	SK_LARGER,
	SK_SMALLER,
	SK_BEFORE,      /* internal date, by day (UTC) */
	SK_ON,
	SK_SINCE,
	SK_SENTBEFORE,  /* Date: field, by day as written */
	SK_SENTON,
	SK_SENTSINCE,
	SK_HEADER,      /* str = field name, needle */
	SK_BODY,
	SK_TEXT,
	SK_SEQ,         /* ranges against seq */
	SK_UID,         /* ranges against uid */
	SK_SAVED,       /* $ */
	SK_MODSEQ,
	SK_OLDER,
	SK_YOUNGER,
};

struct search_range {
	uint32_t a, b;   /* 0 = '*' */
};

struct search_node {
	enum search_kind kind;
	struct search_node **kids;    /* arena; AND: nkids, OR: 2, NOT: 1 */
	size_t nkids;
	const char *str;              /* arena, NUL-terminated */
	size_t str_len;
	const char *needle;           /* arena, folded */
	size_t needle_len;
	uint64_t num;
	int64_t day;                  /* days since 1970-01-01 */
	struct search_range *ranges;  /* arena */
	size_t nranges;
};

struct imap_search {
	struct mp_arena arena;        /* owns every node and string */
	struct search_node *root;     /* arena */
	bool needs_message;
};

struct search_compiler {
	struct mp_arena *arena;       /* borrowed: the program's */
	size_t nkeys;
	bool needs_message;
	bool uses_modseq;
	bool uses_saved;
	int err;                      /* MP_EINVAL or MP_ENOMEM once failed */
	char msg[160];
};

/* ------------------------------------------------------------ helpers */

static bool search_ieq(const char *a, size_t alen, const char *b)
{
	size_t blen = strlen(b);
	if (alen != blen)
		return false;
	for (size_t i = 0; i < alen; i++) {
		char x = a[i], y = b[i];
		if (x >= 'a' && x <= 'z')
			x = (char)(x - 32);
		if (y >= 'a' && y <= 'z')
			y = (char)(y - 32);
		if (x != y)
			return false;
	}
	return true;
}

__attribute__((format(printf, 2, 3)))
static int search_fail(struct search_compiler *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(c->msg, sizeof(c->msg), fmt, ap);
	va_end(ap);
	c->err = MP_EINVAL;
	return MP_EINVAL;
}

static int search_nomem(struct search_compiler *c)
{
	snprintf(c->msg, sizeof(c->msg), "out of memory");
	c->err = MP_ENOMEM;
	return MP_ENOMEM;
}

static bool search_is_atom(const struct imap_arg *a)
{
	return a->type == IMAP_ARG_ATOM && a->s != NULL;
}

/* An astring: atom, quoted string or literal (not literal8: RFC 3516
 * allows ~{n} only in APPEND). NIL as a string is the text "NIL". */
static bool search_astring(const struct imap_arg *a, const char **s_r, size_t *len_r)
{
	switch (a->type) {
	case IMAP_ARG_ATOM:
	case IMAP_ARG_STRING:
	case IMAP_ARG_LITERAL:
		if (a->s == NULL || a->literal8)
			return false;
		*s_r = a->s;
		*len_r = a->len;
		return true;
	case IMAP_ARG_NIL:
		*s_r = a->s != NULL ? a->s : "NIL";
		*len_r = a->s != NULL ? a->len : 3;
		return true;
	case IMAP_ARG_LIST:
		break;
	}
	return false;
}

/* RFC 3501 number (or number64): digits only, no overflow past max. */
static bool search_number(const char *s, size_t len, uint64_t max, uint64_t *n_r)
{
	uint64_t v = 0;

	if (len == 0 || len > 20)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		uint64_t d = (uint64_t)(s[i] - '0');
		if (v > (max - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*n_r = v;
	return true;
}

static bool search_arg_number(const struct imap_arg *a, uint64_t max, uint64_t *n_r)
{
	return search_is_atom(a) && search_number(a->s, a->len, max, n_r);
}

/* RFC 3501 date-text "d-Mon-yyyy" / "dd-Mon-yyyy" -> day number. */
static bool search_parse_date(const char *s, size_t len, int64_t *day_r)
{
	size_t i = 0;
	unsigned d = 0;

	while (i < len && i < 2 && s[i] >= '0' && s[i] <= '9')
		d = d * 10 + (unsigned)(s[i++] - '0');
	if (i == 0 || i + 1 + 3 + 1 + 4 != len || s[i] != '-' || s[i + 4] != '-')
		return false;
	unsigned m = imap_month_number(s + i + 1, 3);
	if (m == 0)
		return false;
	int64_t y = 0;
	for (size_t k = i + 5; k < len; k++) {
		if (s[k] < '0' || s[k] > '9')
			return false;
		y = y * 10 + (s[k] - '0');
	}
	if (d < 1 || d > imap_days_in_month(y, m))
		return false;
	*day_r = imap_days_from_civil(y, m, d);
	return true;
}

static int64_t search_day_of(int64_t t)
{
	return t >= 0 ? t / 86400 : -((-(t + 1)) / 86400) - 1;
}

/* ----------------------------------------------------------- compiler */

static struct search_node *search_node_new(struct search_compiler *c, enum search_kind k)
{
	struct search_node *n = mp_arena_alloc(c->arena, sizeof(*n));
	if (n == NULL) {
		search_nomem(c);
		return NULL;
	}
	n->kind = k;
	return n;
}

static struct search_node *search_node_kids(struct search_compiler *c, enum search_kind k,
					    size_t nkids)
{
	struct search_node *n = search_node_new(c, k);
	if (n == NULL)
		return NULL;
	n->kids = mp_arena_alloc(c->arena, nkids * sizeof(*n->kids));
	if (n->kids == NULL) {
		search_nomem(c);
		return NULL;
	}
	n->nkids = nkids;
	return n;
}

static struct search_node *search_flag_node(struct search_compiler *c, const char *flag,
					    size_t len, bool negate)
{
	struct search_node *f = search_node_new(c, SK_FLAG);
	if (f == NULL)
		return NULL;
	f->str = mp_arena_strndup(c->arena, flag, len);
	if (f->str == NULL) {
		search_nomem(c);
		return NULL;
	}
	f->str_len = len;
	if (!negate)
		return f;
	struct search_node *n = search_node_kids(c, SK_NOT, 1);
	if (n == NULL)
		return NULL;
	n->kids[0] = f;
	return n;
}

/* A search string, folded once here so matching only compares bytes. */
static int search_needle(struct search_compiler *c, const struct imap_arg *a,
			 struct search_node *n, const char *key)
{
	const char *s;
	size_t len;
	struct mp_buf b;

	if (!search_astring(a, &s, &len))
		return search_fail(c, "%s needs a string", key);
	mp_buf_init(&b, 0);
	int ret = imap_text_fold(s, len, &b);
	if (ret == MP_OK)
		ret = mp_buf_append(&b, "", 0);
	if (ret != MP_OK) {
		mp_buf_free(&b);
		return search_nomem(c);
	}
	n->needle = mp_arena_memdup(c->arena, b.data, b.len + 1);
	n->needle_len = b.len;
	mp_buf_free(&b);
	if (n->needle == NULL)
		return search_nomem(c);
	return MP_OK;
}

/* sequence-set: (seq-number / seq-range) *("," ...), seq-number = nz-number
 * / "*". One pass to count, one to fill. */
static int search_seqset(struct search_compiler *c, const char *s, size_t len,
			 struct search_node *n)
{
	size_t count = 1;

	for (size_t i = 0; i < len; i++)
		count += s[i] == ',';
	if (count > SEARCH_MAX_RANGES)
		return search_fail(c, "sequence set too long");
	n->ranges = mp_arena_alloc(c->arena, count * sizeof(*n->ranges));
	if (n->ranges == NULL)
		return search_nomem(c);

	size_t i = 0, k = 0;
	while (k < count) {
		uint32_t v[2] = { 0, 0 };
		int parts = 0;
		for (;;) {
			if (i < len && s[i] == '*') {
				v[parts] = 0;
				i++;
			} else {
				size_t st = i;
				while (i < len && s[i] >= '0' && s[i] <= '9')
					i++;
				uint64_t x;
				if (!search_number(s + st, i - st, UINT32_MAX, &x) || x == 0)
					return search_fail(c, "bad sequence set");
				v[parts] = (uint32_t)x;
			}
			parts++;
			if (parts == 1 && i < len && s[i] == ':') {
				i++;
				continue;
			}
			break;
		}
		if (parts == 1)
			v[1] = v[0];
		n->ranges[k].a = v[0];
		n->ranges[k].b = v[1];
		k++;
		if (i < len && s[i] == ',' && k < count) {
			i++;
			continue;
		}
		break;
	}
	if (i != len || k != count)
		return search_fail(c, "bad sequence set");
	n->nranges = count;
	return MP_OK;
}

/* A set atom for a sequence-set key or UID: "$" alone is the saved result. */
static int search_set_node(struct search_compiler *c, const struct imap_arg *a,
			   enum search_kind kind, struct search_node **n_r)
{
	if (!search_is_atom(a))
		return search_fail(c, "sequence set expected");
	if (a->len == 1 && a->s[0] == '$') {
		c->uses_saved = true;
		*n_r = search_node_new(c, SK_SAVED);
		return *n_r != NULL ? MP_OK : c->err;
	}
	struct search_node *n = search_node_new(c, kind);
	if (n == NULL)
		return c->err;
	int ret = search_seqset(c, a->s, a->len, n);
	if (ret != MP_OK)
		return ret;
	*n_r = n;
	return MP_OK;
}

static int search_key(struct search_compiler *c, const struct imap_arg *args, size_t nargs,
		      size_t *i, unsigned depth, struct search_node **n_r);

/* Keys of a list (or the top level) into one AND node. */
static int search_keys(struct search_compiler *c, const struct imap_arg *args, size_t nargs,
		       unsigned depth, struct search_node **n_r)
{
	if (nargs == 0)
		return search_fail(c, "search key expected");
	/* At most nargs keys; the array is sized for that. */
	struct search_node *and = search_node_kids(c, SK_AND, nargs);
	if (and == NULL)
		return c->err;
	size_t i = 0, k = 0;
	while (i < nargs) {
		int ret = search_key(c, args, nargs, &i, depth, &and->kids[k]);
		if (ret != MP_OK)
			return ret;
		k++;
	}
	and->nkids = k;
	*n_r = k == 1 ? and->kids[0] : and;
	return MP_OK;
}

enum search_argk {
	SA_NONE,      /* no argument */
	SA_STRING,    /* header/body string */
	SA_DATE,
	SA_NUMBER64,
	SA_NZNUMBER,  /* OLDER/YOUNGER interval */
	SA_FLAG,      /* keyword */
	SA_FIELD,     /* HEADER field-name string */
};

struct search_keydef {
	const char *name;
	enum search_kind kind;
	enum search_argk arg;
	const char *flag;     /* SK_FLAG: the flag; header keys: field name */
	bool negate;          /* UN... */
};

static const struct search_keydef search_keydefs[] = {
	{ "ALL", SK_ALL, SA_NONE, NULL, false },
	{ "ANSWERED", SK_FLAG, SA_NONE, "\\Answered", false },
	{ "DELETED", SK_FLAG, SA_NONE, "\\Deleted", false },
	{ "DRAFT", SK_FLAG, SA_NONE, "\\Draft", false },
	{ "FLAGGED", SK_FLAG, SA_NONE, "\\Flagged", false },
	{ "SEEN", SK_FLAG, SA_NONE, "\\Seen", false },
	{ "UNANSWERED", SK_FLAG, SA_NONE, "\\Answered", true },
	{ "UNDELETED", SK_FLAG, SA_NONE, "\\Deleted", true },
	{ "UNDRAFT", SK_FLAG, SA_NONE, "\\Draft", true },
	{ "UNFLAGGED", SK_FLAG, SA_NONE, "\\Flagged", true },
	{ "UNSEEN", SK_FLAG, SA_NONE, "\\Seen", true },
	{ "KEYWORD", SK_FLAG, SA_FLAG, NULL, false },
	{ "UNKEYWORD", SK_FLAG, SA_FLAG, NULL, true },
	{ "RECENT", SK_RECENT, SA_NONE, NULL, false },
	{ "OLD", SK_RECENT, SA_NONE, NULL, true },
	{ "LARGER", SK_LARGER, SA_NUMBER64, NULL, false },
	{ "SMALLER", SK_SMALLER, SA_NUMBER64, NULL, false },
	{ "BEFORE", SK_BEFORE, SA_DATE, NULL, false },
	{ "ON", SK_ON, SA_DATE, NULL, false },
	{ "SINCE", SK_SINCE, SA_DATE, NULL, false },
	{ "SENTBEFORE", SK_SENTBEFORE, SA_DATE, NULL, false },
	{ "SENTON", SK_SENTON, SA_DATE, NULL, false },
	{ "SENTSINCE", SK_SENTSINCE, SA_DATE, NULL, false },
	{ "BCC", SK_HEADER, SA_STRING, "Bcc", false },
	{ "CC", SK_HEADER, SA_STRING, "Cc", false },
	{ "FROM", SK_HEADER, SA_STRING, "From", false },
	{ "SUBJECT", SK_HEADER, SA_STRING, "Subject", false },
	{ "TO", SK_HEADER, SA_STRING, "To", false },
	{ "HEADER", SK_HEADER, SA_FIELD, NULL, false },
	{ "BODY", SK_BODY, SA_STRING, NULL, false },
	{ "TEXT", SK_TEXT, SA_STRING, NULL, false },
	{ "OLDER", SK_OLDER, SA_NZNUMBER, NULL, false },
	{ "YOUNGER", SK_YOUNGER, SA_NZNUMBER, NULL, false },
};

static int search_wrap_not(struct search_compiler *c, struct search_node **n)
{
	struct search_node *not = search_node_kids(c, SK_NOT, 1);
	if (not == NULL)
		return c->err;
	not->kids[0] = *n;
	*n = not;
	return MP_OK;
}

/* MODSEQ [entry-name entry-type-req] mod-sequence-valzer (RFC 7162 §3.1.5). */
static int search_modseq(struct search_compiler *c, const struct imap_arg *args, size_t nargs,
			 size_t *i, struct search_node *n)
{
	const char *s;
	size_t len;
	uint64_t v;

	if (*i < nargs && !search_arg_number(&args[*i], INT64_MAX, &v)) {
		/* entry-name is a quoted string such as "/flags/\\seen"; the
		 * index keeps one modseq per message, so the entry only has to
		 * be well formed. */
		if (*i + 2 >= nargs)
			return search_fail(c, "MODSEQ needs a mod-sequence value");
		if (!search_astring(&args[*i], &s, &len) || len == 0)
			return search_fail(c, "MODSEQ: bad entry name");
		const struct imap_arg *t = &args[*i + 1];
		if (!search_is_atom(t) || !(search_ieq(t->s, t->len, "PRIV") ||
					    search_ieq(t->s, t->len, "SHARED") ||
					    search_ieq(t->s, t->len, "ALL")))
			return search_fail(c, "MODSEQ: bad entry type");
		*i += 2;
	}
	if (*i >= nargs || !search_arg_number(&args[*i], INT64_MAX, &v))
		return search_fail(c, "MODSEQ needs a mod-sequence value");
	(*i)++;
	n->num = v;
	c->uses_modseq = true;
	return MP_OK;
}

static int search_key(struct search_compiler *c, const struct imap_arg *args, size_t nargs,
		      size_t *i, unsigned depth, struct search_node **n_r)
{
	const struct imap_arg *a = &args[*i];
	int ret;

	if (depth >= SEARCH_MAX_DEPTH)
		return search_fail(c, "search program nested too deeply");
	if (++c->nkeys > SEARCH_MAX_KEYS)
		return search_fail(c, "too many search keys");
	(*i)++;

	if (a->type == IMAP_ARG_LIST)
		return search_keys(c, a->list, a->nlist, depth + 1, n_r);
	if (!search_is_atom(a) || a->len == 0)
		return search_fail(c, "search key expected");

	char c0 = a->s[0];
	if ((c0 >= '0' && c0 <= '9') || c0 == '*' || c0 == '$')
		return search_set_node(c, a, SK_SEQ, n_r);

	if (search_ieq(a->s, a->len, "NOT")) {
		if (*i >= nargs)
			return search_fail(c, "NOT needs a search key");
		struct search_node *n = search_node_kids(c, SK_NOT, 1);
		if (n == NULL)
			return c->err;
		if ((ret = search_key(c, args, nargs, i, depth + 1, &n->kids[0])) != MP_OK)
			return ret;
		*n_r = n;
		return MP_OK;
	}
	if (search_ieq(a->s, a->len, "OR")) {
		struct search_node *n = search_node_kids(c, SK_OR, 2);
		if (n == NULL)
			return c->err;
		for (int k = 0; k < 2; k++) {
			if (*i >= nargs)
				return search_fail(c, "OR needs two search keys");
			if ((ret = search_key(c, args, nargs, i, depth + 1, &n->kids[k])) != MP_OK)
				return ret;
		}
		*n_r = n;
		return MP_OK;
	}
	if (search_ieq(a->s, a->len, "UID")) {
		if (*i >= nargs)
			return search_fail(c, "UID needs a sequence set");
		return search_set_node(c, &args[(*i)++], SK_UID, n_r);
	}
	if (search_ieq(a->s, a->len, "NEW")) {
		/* RECENT UNSEEN */
		struct search_node *n = search_node_kids(c, SK_AND, 2);
		if (n == NULL || (n->kids[0] = search_node_new(c, SK_RECENT)) == NULL ||
		    (n->kids[1] = search_flag_node(c, "\\Seen", 5, true)) == NULL)
			return c->err;
		*n_r = n;
		return MP_OK;
	}
	if (search_ieq(a->s, a->len, "MODSEQ")) {
		struct search_node *n = search_node_new(c, SK_MODSEQ);
		if (n == NULL)
			return c->err;
		if ((ret = search_modseq(c, args, nargs, i, n)) != MP_OK)
			return ret;
		*n_r = n;
		return MP_OK;
	}

	const struct search_keydef *def = NULL;
	for (size_t k = 0; k < sizeof(search_keydefs) / sizeof(search_keydefs[0]); k++) {
		if (search_ieq(a->s, a->len, search_keydefs[k].name)) {
			def = &search_keydefs[k];
			break;
		}
	}
	if (def == NULL) {
		/* The key goes back in the BAD text only when it is plain ASCII. */
		bool printable = a->len <= 40;
		for (size_t k = 0; k < a->len && printable; k++)
			printable = a->s[k] > ' ' && a->s[k] < 0x7F;
		if (!printable)
			return search_fail(c, "unknown search key");
		return search_fail(c, "unknown search key %.*s", (int)a->len, a->s);
	}

	struct search_node *n = NULL;
	const struct imap_arg *v = NULL;
	if (def->arg != SA_NONE) {
		if (*i >= nargs)
			return search_fail(c, "%s needs an argument", def->name);
		v = &args[(*i)++];
	}
	uint64_t num;
	int64_t day;
	const char *s;
	size_t len;
	switch (def->arg) {
	case SA_NONE:
		if (def->kind == SK_FLAG) {
			n = search_flag_node(c, def->flag, strlen(def->flag), def->negate);
		} else {
			n = search_node_new(c, def->kind);
			if (n != NULL && def->negate && search_wrap_not(c, &n) != MP_OK)
				n = NULL;
		}
		if (n == NULL)
			return c->err;
		break;
	case SA_FLAG:
		if (!search_astring(v, &s, &len) || len == 0)
			return search_fail(c, "%s needs a keyword", def->name);
		if ((n = search_flag_node(c, s, len, def->negate)) == NULL)
			return c->err;
		break;
	case SA_NUMBER64:
		if (!search_arg_number(v, INT64_MAX, &num))
			return search_fail(c, "%s needs a number", def->name);
		if ((n = search_node_new(c, def->kind)) == NULL)
			return c->err;
		n->num = num;
		break;
	case SA_NZNUMBER:
		if (!search_arg_number(v, UINT32_MAX, &num) || num == 0)
			return search_fail(c, "%s needs a non-zero number", def->name);
		if ((n = search_node_new(c, def->kind)) == NULL)
			return c->err;
		n->num = num;
		break;
	case SA_DATE:
		if ((v->type != IMAP_ARG_ATOM && v->type != IMAP_ARG_STRING) || v->s == NULL ||
		    !search_parse_date(v->s, v->len, &day))
			return search_fail(c, "%s needs a date (d-Mon-yyyy)", def->name);
		if ((n = search_node_new(c, def->kind)) == NULL)
			return c->err;
		n->day = day;
		if (def->kind == SK_SENTBEFORE || def->kind == SK_SENTON ||
		    def->kind == SK_SENTSINCE)
			c->needs_message = true;
		break;
	case SA_STRING:
	case SA_FIELD:
		if ((n = search_node_new(c, def->kind)) == NULL)
			return c->err;
		if (def->arg == SA_FIELD) {
			if (!search_astring(v, &s, &len) || len == 0 || memchr(s, ':', len) != NULL)
				return search_fail(c, "HEADER needs a field name");
			if (*i >= nargs)
				return search_fail(c, "HEADER needs a string");
			v = &args[(*i)++];
		} else {
			s = def->flag;
			len = s != NULL ? strlen(s) : 0;
		}
		if (s != NULL) {
			n->str = mp_arena_strndup(c->arena, s, len);
			if (n->str == NULL)
				return search_nomem(c);
			n->str_len = len;
		}
		if ((ret = search_needle(c, v, n, def->name)) != MP_OK)
			return ret;
		c->needs_message = true;
		break;
	}
	*n_r = n;
	return MP_OK;
}

/* RETURN (opts) (RFC 4731 §3.1): MIN MAX ALL COUNT SAVE; () means ALL. */
static int search_return(struct search_compiler *c, const struct imap_arg *l,
			 struct imap_search_info *info)
{
	static const struct {
		const char *name;
		unsigned bit;
	} opts[] = {
		{ "MIN", IMAP_SEARCH_RET_MIN },     { "MAX", IMAP_SEARCH_RET_MAX },
		{ "ALL", IMAP_SEARCH_RET_ALL },     { "COUNT", IMAP_SEARCH_RET_COUNT },
		{ "SAVE", IMAP_SEARCH_RET_SAVE },
	};

	if (l->type != IMAP_ARG_LIST)
		return search_fail(c, "RETURN needs a list of options");
	info->return_given = true;
	for (size_t i = 0; i < l->nlist; i++) {
		const struct imap_arg *o = &l->list[i];
		bool known = false;
		for (size_t k = 0; search_is_atom(o) && k < sizeof(opts) / sizeof(opts[0]); k++) {
			if (search_ieq(o->s, o->len, opts[k].name)) {
				info->ret |= opts[k].bit;
				known = true;
			}
		}
		if (!known)
			return search_fail(c, "unknown RETURN option");
	}
	if (info->ret == 0)
		info->ret = IMAP_SEARCH_RET_ALL;
	return MP_OK;
}

static int search_error_out(int ret, const char *msg, char **error_r)
{
	if (error_r == NULL)
		return ret;
	*error_r = strdup(msg);
	if (*error_r == NULL)
		return MP_ENOMEM;
	return ret;
}

int imap_search_compile(const struct imap_arg *args, size_t nargs, bool allow_return,
			struct imap_search **s_r, struct imap_search_info *info_r,
			char **error_r)
{
	struct imap_search_info info = { false, 0, false, false };
	struct search_compiler c;
	size_t i = 0;
	int ret;

	*s_r = NULL;
	if (error_r != NULL)
		*error_r = NULL;
	struct imap_search *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return search_error_out(MP_ENOMEM, "out of memory", error_r);
	mp_arena_init(&s->arena);
	memset(&c, 0, sizeof(c));
	c.arena = &s->arena;

	if (allow_return && i < nargs && search_is_atom(&args[i]) &&
	    search_ieq(args[i].s, args[i].len, "RETURN")) {
		if (i + 1 >= nargs) {
			ret = search_fail(&c, "RETURN needs a list of options");
			goto fail;
		}
		if ((ret = search_return(&c, &args[i + 1], &info)) != MP_OK)
			goto fail;
		i += 2;
	}
	if (i < nargs && search_is_atom(&args[i]) && search_ieq(args[i].s, args[i].len, "CHARSET")) {
		const char *cs;
		size_t cslen;
		if (i + 1 >= nargs || !search_astring(&args[i + 1], &cs, &cslen)) {
			ret = search_fail(&c, "CHARSET needs a charset name");
			goto fail;
		}
		/* Search strings are folded as UTF-8; US-ASCII is a subset. */
		if (!search_ieq(cs, cslen, "UTF-8") && !search_ieq(cs, cslen, "US-ASCII")) {
			snprintf(c.msg, sizeof(c.msg), "unsupported charset");
			ret = MP_EUNIMPL;
			goto fail;
		}
		i += 2;
	}
	if ((ret = search_keys(&c, args + i, nargs - i, 0, &s->root)) != MP_OK)
		goto fail;
	s->needs_message = c.needs_message;
	info.uses_modseq = c.uses_modseq;
	info.uses_saved = c.uses_saved;
	if (info_r != NULL)
		*info_r = info;
	*s_r = s;
	return MP_OK;
fail:
	mp_arena_free(&s->arena);
	free(s);
	return search_error_out(ret, c.msg, error_r);
}

void imap_search_free(struct imap_search **s)
{
	if (s == NULL || *s == NULL)
		return;
	mp_arena_free(&(*s)->arena);
	free(*s);
	*s = NULL;
}

bool imap_search_needs_message(const struct imap_search *s)
{
	return s != NULL && s->needs_message;
}

/* ------------------------------------------------------------ matching */

/* What one message's matching derives from its bytes, made on first use. */
struct search_mctx {
	const struct imap_search_ctx *ctx;   /* borrowed */
	const struct imap_search_msg *m;     /* borrowed */
	const char *data;                    /* borrowed: the message, or "" */
	size_t len;
	size_t hdr_len;
	bool have_body;
	struct mp_buf body;                  /* folded text of the text parts */
	bool have_htext;
	struct mp_buf htext;                 /* folded decoded header fields */
	bool have_sent;
	bool sent_ok;
	int64_t sent_day;
	unsigned nparts;                     /* MIME parts walked */
	struct mp_buf t1, t2;                /* scratch */
};

/* Decoded "Name: value\n" lines of a header into out (not folded). */
struct search_htext_ctx {
	struct mp_buf *out;
	struct mp_buf *tmp;
};

static int search_htext_cb(void *vctx, const char *name, size_t name_len, const char *value,
			   size_t value_len)
{
	struct search_htext_ctx *h = vctx;
	int ret;

	mp_buf_reset(h->tmp);
	/* Unfold first so encoded words split over lines join up. */
	if ((ret = mp_buf_append(h->tmp, value, value_len)) != MP_OK)
		return ret;
	size_t w = 0;
	for (size_t r = 0; r < h->tmp->len; r++)
		if (h->tmp->data[r] != '\r' && h->tmp->data[r] != '\n')
			h->tmp->data[w++] = h->tmp->data[r];
	h->tmp->len = w;
	if ((ret = mp_buf_append(h->out, name, name_len)) != MP_OK ||
	    (ret = mp_buf_append(h->out, ":", 1)) != MP_OK ||
	    (ret = imap_text_decode_header(h->tmp->data, h->tmp->len, h->out)) != MP_OK)
		return ret;
	return mp_buf_append(h->out, "\n", 1);
}

static int search_header_text(const char *hdr, size_t len, struct mp_buf *out, struct mp_buf *tmp)
{
	struct search_htext_ctx h = { out, tmp };
	return imap_hdr_foreach(hdr, len, search_htext_cb, &h);
}

/* A parameter of a Content-Type value (unfolded): value into out, quotes
 * and backslash escapes removed. 1 found, 0 not, or an error. */
static int search_ct_param(const char *v, size_t len, const char *name, struct mp_buf *out)
{
	size_t i = 0;

	while (i < len) {
		const char *semi = memchr(v + i, ';', len - i);
		if (semi == NULL)
			return 0;
		i = (size_t)(semi - v) + 1;
		while (i < len && (v[i] == ' ' || v[i] == '\t'))
			i++;
		size_t ns = i;
		while (i < len && v[i] != '=' && v[i] != ';' && v[i] != ' ' && v[i] != '\t')
			i++;
		size_t ne = i;
		while (i < len && (v[i] == ' ' || v[i] == '\t'))
			i++;
		if (i >= len || v[i] != '=' || !search_ieq(v + ns, ne - ns, name))
			continue;
		i++;
		while (i < len && (v[i] == ' ' || v[i] == '\t'))
			i++;
		if (i < len && v[i] == '"') {
			i++;
			while (i < len && v[i] != '"') {
				if (v[i] == '\\' && i + 1 < len)
					i++;
				int ret = mp_buf_append(out, v + i, 1);
				if (ret != MP_OK)
					return ret;
				i++;
			}
		} else {
			size_t vs = i;
			while (i < len && v[i] != ';' && v[i] != ' ' && v[i] != '\t')
				i++;
			int ret = mp_buf_append(out, v + vs, i - vs);
			if (ret != MP_OK)
				return ret;
		}
		int ret = mp_buf_append(out, "", 0);
		return ret != MP_OK ? ret : 1;
	}
	return 0;
}

enum search_ctype { SCT_TEXT, SCT_MULTIPART, SCT_MESSAGE, SCT_OTHER };

static int search_body_part(struct search_mctx *mc, const char *data, size_t len,
			    unsigned depth, bool digest_child, struct mp_buf *acc);

/* The parts of a multipart body between "--boundary" lines (RFC 2046 §5.1.1:
 * the line end before a delimiter belongs to the delimiter). */
static int search_multipart(struct search_mctx *mc, const char *body, size_t len,
			    const char *bnd, size_t blen, unsigned depth, bool digest,
			    struct mp_buf *acc)
{
	size_t pos = 0;
	bool in_part = false;
	size_t part_start = 0;
	int ret;

	while (pos < len) {
		size_t ls = pos;
		const char *nl = memchr(body + pos, '\n', len - pos);
		size_t le = nl != NULL ? (size_t)(nl - body) : len;
		pos = nl != NULL ? le + 1 : len;
		if (le - ls < 2 + blen || body[ls] != '-' || body[ls + 1] != '-' ||
		    memcmp(body + ls + 2, bnd, blen) != 0)
			continue;
		size_t k = ls + 2 + blen;
		bool close = k + 2 <= le && body[k] == '-' && body[k + 1] == '-';
		if (close)
			k += 2;
		while (k < le && (body[k] == ' ' || body[k] == '\t' || body[k] == '\r'))
			k++;
		if (k != le)
			continue;   /* a longer boundary, or text after it */
		if (in_part) {
			size_t pe = ls;
			if (pe > part_start && body[pe - 1] == '\n')
				pe--;
			if (pe > part_start && body[pe - 1] == '\r')
				pe--;
			if ((ret = search_body_part(mc, body + part_start, pe - part_start, depth + 1,
						    digest, acc)) != MP_OK)
				return ret;
		}
		if (close)
			return MP_OK;
		in_part = true;
		part_start = pos;
	}
	if (in_part && part_start < len)   /* truncated: no close delimiter */
		return search_body_part(mc, body + part_start, len - part_start, depth + 1, digest,
					acc);
	return MP_OK;
}

/* One MIME entity (header + body): the decoded text of its text parts is
 * appended to acc (UTF-8, not folded). */
static int search_body_part(struct search_mctx *mc, const char *data, size_t len,
			    unsigned depth, bool digest_child, struct mp_buf *acc)
{
	struct mp_buf ct, tmp, dec;
	enum search_ctype type = digest_child ? SCT_MESSAGE : SCT_TEXT;
	bool digest = false;
	int ret = MP_OK;

	if (depth > SEARCH_MAX_MIME_DEPTH || mc->nparts >= SEARCH_MAX_MIME_PARTS)
		return MP_OK;
	mc->nparts++;
	size_t hl = imap_hdr_block_len(data, len);
	const char *body = data + hl;
	size_t blen = len - hl;

	mp_buf_init(&ct, 0);
	mp_buf_init(&tmp, 0);
	mp_buf_init(&dec, 0);
	int found = imap_hdr_get(data, hl, "Content-Type", &ct);
	if (found < 0) {
		ret = found;
		goto out;
	}
	if (found == 1) {
		size_t e = 0;
		while (e < ct.len && ct.data[e] != ';')
			e++;
		const char *t = ct.data;
		const char *slash = memchr(t, '/', e);
		size_t tl = slash != NULL ? (size_t)(slash - t) : e;
		while (tl > 0 && (t[tl - 1] == ' ' || t[tl - 1] == '\t'))
			tl--;
		if (search_ieq(t, tl, "text"))
			type = SCT_TEXT;
		else if (search_ieq(t, tl, "multipart"))
			type = SCT_MULTIPART;
		else if (search_ieq(t, tl, "message") && slash != NULL) {
			const char *st = slash + 1;
			size_t sl = (size_t)(ct.data + e - st);
			while (sl > 0 && (st[sl - 1] == ' ' || st[sl - 1] == '\t'))
				sl--;
			while (sl > 0 && (st[0] == ' ' || st[0] == '\t')) {
				st++;
				sl--;
			}
			type = search_ieq(st, sl, "rfc822") || search_ieq(st, sl, "global")
				       ? SCT_MESSAGE
				       : SCT_OTHER;
		} else {
			type = SCT_OTHER;
		}
		if (type == SCT_MULTIPART && slash != NULL) {
			const char *st = slash + 1;
			size_t sl = (size_t)(ct.data + e - st);
			while (sl > 0 && (st[0] == ' ' || st[0] == '\t')) {
				st++;
				sl--;
			}
			digest = sl >= 6 && search_ieq(st, 6, "digest");
		}
	}

	switch (type) {
	case SCT_MULTIPART: {
		int r = search_ct_param(ct.data, ct.len, "boundary", &tmp);
		if (r < 0) {
			ret = r;
			break;
		}
		if (r == 0 || tmp.len == 0 || tmp.len > SEARCH_MAX_BOUNDARY)
			break;   /* no usable boundary: nothing we can read as text */
		ret = search_multipart(mc, body, blen, tmp.data, tmp.len, depth, digest, acc);
		break;
	}
	case SCT_MESSAGE: {
		/* The encapsulated message's header is text of the body too. */
		size_t ehl = imap_hdr_block_len(body, blen);
		if ((ret = search_header_text(body, ehl, acc, &tmp)) != MP_OK)
			break;
		ret = search_body_part(mc, body, blen, depth + 1, false, acc);
		break;
	}
	case SCT_TEXT: {
		int r = imap_hdr_get(data, hl, "Content-Transfer-Encoding", &tmp);
		if (r < 0) {
			ret = r;
			break;
		}
		ret = imap_text_decode_cte(r == 1 ? tmp.data : NULL, body, blen, &dec);
		if (ret == MP_EUNIMPL) {
			mp_buf_reset(&dec);
			ret = mp_buf_append(&dec, body, blen);
		}
		if (ret != MP_OK)
			break;
		mp_buf_reset(&tmp);
		r = found == 1 ? search_ct_param(ct.data, ct.len, "charset", &tmp) : 0;
		if (r < 0) {
			ret = r;
			break;
		}
		ret = imap_text_to_utf8(r == 1 ? tmp.data : NULL, dec.data != NULL ? dec.data : "",
					dec.len, acc);
		if (ret == MP_EUNIMPL)
			ret = imap_text_to_utf8(NULL, dec.data != NULL ? dec.data : "", dec.len, acc);
		if (ret == MP_OK)
			ret = mp_buf_append(acc, "\n", 1);
		break;
	}
	case SCT_OTHER:
		break;
	}
out:
	mp_buf_free(&ct);
	mp_buf_free(&tmp);
	mp_buf_free(&dec);
	return ret;
}

static int search_get_body(struct search_mctx *mc)
{
	struct mp_buf acc;
	int ret;

	if (mc->have_body)
		return MP_OK;
	mp_buf_init(&acc, 0);
	ret = search_body_part(mc, mc->data, mc->len, 0, false, &acc);
	if (ret == MP_OK)
		ret = imap_text_fold(acc.data != NULL ? acc.data : "", acc.len, &mc->body);
	if (ret == MP_OK)
		ret = mp_buf_append(&mc->body, "", 0);
	mp_buf_free(&acc);
	if (ret == MP_OK)
		mc->have_body = true;
	return ret;
}

static int search_get_htext(struct search_mctx *mc)
{
	struct mp_buf acc;
	int ret;

	if (mc->have_htext)
		return MP_OK;
	mp_buf_init(&acc, 0);
	ret = search_header_text(mc->data, mc->hdr_len, &acc, &mc->t1);
	if (ret == MP_OK)
		ret = imap_text_fold(acc.data != NULL ? acc.data : "", acc.len, &mc->htext);
	if (ret == MP_OK)
		ret = mp_buf_append(&mc->htext, "", 0);
	mp_buf_free(&acc);
	if (ret == MP_OK)
		mc->have_htext = true;
	return ret;
}

/* HEADER name string: any field of that name whose decoded, folded value
 * holds the needle (RFC 3501: an empty string matches any such field). */
struct search_hdr_ctx {
	struct search_mctx *mc;
	const struct search_node *n;
	int error;
};

static int search_hdr_cb(void *vctx, const char *name, size_t name_len, const char *value,
			 size_t value_len)
{
	struct search_hdr_ctx *h = vctx;
	struct search_mctx *mc = h->mc;
	int ret;

	if (!search_ieq(name, name_len, h->n->str))
		return 0;
	if (h->n->needle_len == 0)
		return 1;
	mp_buf_reset(&mc->t1);
	mp_buf_reset(&mc->t2);
	if ((ret = mp_buf_append(&mc->t1, value, value_len)) != MP_OK)
		goto fail;
	size_t w = 0;
	for (size_t r = 0; r < mc->t1.len; r++)
		if (mc->t1.data[r] != '\r' && mc->t1.data[r] != '\n')
			mc->t1.data[w++] = mc->t1.data[r];
	mc->t1.len = w;
	if ((ret = imap_text_decode_header(mc->t1.data, mc->t1.len, &mc->t2)) != MP_OK)
		goto fail;
	mp_buf_reset(&mc->t1);
	if ((ret = imap_text_fold(mc->t2.data != NULL ? mc->t2.data : "", mc->t2.len, &mc->t1)) !=
	    MP_OK)
		goto fail;
	return imap_text_contains(mc->t1.data, mc->t1.len, h->n->needle, h->n->needle_len) ? 1 : 0;
fail:
	h->error = ret;
	return -1;
}

static int search_get_sent(struct search_mctx *mc)
{
	if (mc->have_sent)
		return MP_OK;
	mp_buf_reset(&mc->t1);
	int r = imap_hdr_get(mc->data, mc->hdr_len, "Date", &mc->t1);
	if (r < 0)
		return r;
	int64_t utc;
	int zone;
	mc->sent_ok = r == 1 && imap_text_parse_date(mc->t1.data, mc->t1.len, &utc, &zone) == 0;
	if (mc->sent_ok) {
		/* RFC 3501 SENT*: the date as written, "disregarding time and
		 * timezone": the day in the header's own zone. */
		int64_t local = utc + (int64_t)zone * 60;
		mc->sent_day = local >= 0 ? local / 86400 : -((-local + 86399) / 86400);
	}
	mc->have_sent = true;
	return MP_OK;
}

/* ------------------------------------------------------------ evaluation */

static bool search_in_set(const struct search_node *n, uint32_t v, uint32_t max)
{
	for (size_t i = 0; i < n->nranges; i++) {
		uint32_t a = n->ranges[i].a != 0 ? n->ranges[i].a : max;
		uint32_t b = n->ranges[i].b != 0 ? n->ranges[i].b : max;
		if (a > b) {
			uint32_t t = a;
			a = b;
			b = t;
		}
		if (v >= a && v <= b)
			return true;
	}
	return false;
}

static bool search_in_saved(const struct imap_search_ctx *ctx, uint32_t uid)
{
	size_t lo = 0, hi = ctx->nsaved;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (ctx->saved[mid] == uid)
			return true;
		if (ctx->saved[mid] < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return false;
}

static bool search_has_flag(const struct imap_search_msg *m, const char *flag, size_t len)
{
	for (size_t i = 0; i < m->nflags; i++)
		if (m->flags[i] != NULL && search_ieq(flag, len, m->flags[i]))
			return true;
	return false;
}

/* 1 match, 0 not, or a negative error. */
static int search_eval(const struct search_node *n, struct search_mctx *mc)
{
	const struct imap_search_msg *m = mc->m;
	int r;

	switch (n->kind) {
	case SK_AND:
		for (size_t i = 0; i < n->nkids; i++)
			if ((r = search_eval(n->kids[i], mc)) <= 0)
				return r;
		return 1;
	case SK_OR:
		if ((r = search_eval(n->kids[0], mc)) != 0)
			return r;
		return search_eval(n->kids[1], mc);
	case SK_NOT:
		r = search_eval(n->kids[0], mc);
		return r < 0 ? r : !r;
	case SK_ALL:
		return 1;
	case SK_FLAG:
		return search_has_flag(m, n->str, n->str_len);
	case SK_RECENT:
		return m->recent;
	case SK_LARGER:
		return m->size > n->num;
	case SK_SMALLER:
		return m->size < n->num;
	case SK_BEFORE:
		return search_day_of(m->internal_date) < n->day;
	case SK_ON:
		return search_day_of(m->internal_date) == n->day;
	case SK_SINCE:
		return search_day_of(m->internal_date) >= n->day;
	case SK_SENTBEFORE:
	case SK_SENTON:
	case SK_SENTSINCE:
		if ((r = search_get_sent(mc)) != MP_OK)
			return r;
		if (!mc->sent_ok)
			return 0;
		if (n->kind == SK_SENTBEFORE)
			return mc->sent_day < n->day;
		if (n->kind == SK_SENTON)
			return mc->sent_day == n->day;
		return mc->sent_day >= n->day;
	case SK_HEADER: {
		struct search_hdr_ctx h = { mc, n, 0 };
		r = imap_hdr_foreach(mc->data, mc->hdr_len, search_hdr_cb, &h);
		return r < 0 ? h.error : r;
	}
	case SK_BODY:
		if ((r = search_get_body(mc)) != MP_OK)
			return r;
		return imap_text_contains(mc->body.data, mc->body.len, n->needle, n->needle_len);
	case SK_TEXT:
		if ((r = search_get_htext(mc)) != MP_OK)
			return r;
		if (imap_text_contains(mc->htext.data, mc->htext.len, n->needle, n->needle_len))
			return 1;
		if ((r = search_get_body(mc)) != MP_OK)
			return r;
		return imap_text_contains(mc->body.data, mc->body.len, n->needle, n->needle_len);
	case SK_SEQ:
		return search_in_set(n, m->seq, mc->ctx->max_seq);
	case SK_UID:
		return search_in_set(n, m->uid, mc->ctx->max_uid);
	case SK_SAVED:
		return search_in_saved(mc->ctx, m->uid);
	case SK_MODSEQ:
		return m->modseq >= n->num;
	case SK_OLDER:
		return m->internal_date <= mc->ctx->now - (int64_t)n->num;
	case SK_YOUNGER:
		return m->internal_date > mc->ctx->now - (int64_t)n->num;
	}
	return 0;
}

int imap_search_match(const struct imap_search *s, const struct imap_search_ctx *ctx,
		      const struct imap_search_msg *m, bool *match_r)
{
	struct search_mctx mc;

	*match_r = false;
	memset(&mc, 0, sizeof(mc));
	mc.ctx = ctx;
	mc.m = m;
	mc.data = m->data != NULL ? m->data : "";
	mc.len = m->data != NULL ? m->len : 0;
	mc.hdr_len = imap_hdr_block_len(mc.data, mc.len);
	mp_buf_init(&mc.body, 0);
	mp_buf_init(&mc.htext, 0);
	mp_buf_init(&mc.t1, 0);
	mp_buf_init(&mc.t2, 0);
	int r = search_eval(s->root, &mc);
	mp_buf_free(&mc.body);
	mp_buf_free(&mc.htext);
	mp_buf_free(&mc.t1);
	mp_buf_free(&mc.t2);
	if (r < 0)
		return r == MP_ENOSPC ? MP_ENOMEM : r;
	*match_r = r == 1;
	return MP_OK;
}
