/*
 * imap_parse: the IMAP command reader (RFC 3501 §9, RFC 9051 §9), literals
 * of every kind (RFC 7888, RFC 3516), argument helpers, string output,
 * modified UTF-7 mailbox names, dates and FETCH attributes.
 *
 * How the reader works: bytes are collected into a line (up to LF, bounded
 * by max_line); a whole line is then tokenized with the command's state
 * kept between lines (open lists, pending arguments). A line ends either
 * the command or with a literal header "{n}" whose n bytes are copied into
 * the command's arena; then the next line continues the command. So the
 * only incremental states are "collecting a line" and "copying a literal",
 * and any split of the input gives the same result.
 *
 * A failed command is dropped up to its end: when its last line announced a
 * non-synchronising literal, those bytes and the lines after them are
 * skipped too (without storing them) so they are never read as commands.
 *
 * Never: allocate more than the limits allow; accept a NUL outside a
 * literal8; read past the bytes given; keep pointers into caller memory.
 */
#include "imap_parse.h"

#include "imap_text.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mp_arena.h"
#include "mp_buf.h"
#include "mp_error.h"
#include "mp_scram.h"

#define DEF_MAX_LINE 8192
#define DEF_MAX_LITERAL (64 * 1024)
#define DEF_MAX_APPEND_LITERAL (50 * 1024 * 1024)
#define DEF_MAX_COMMAND (1024 * 1024)
#define DEF_MAX_DEPTH 32
#define DEF_MAX_ARGS 10000
/* Limits beyond these are treated as these, so sums cannot overflow. */
#define LIMIT_CAP ((size_t)1 << 40)

/* Enough for "~{" 20 digits "+}" and a CR: the end of a skipped line. */
#define TAIL_MAX 26

#define ERR_NONE (-1)

enum imap_pstate {
	PS_LINE,         /* collecting a line */
	PS_LITERAL,      /* copying literal bytes into the command */
	PS_SKIP_LITERAL, /* discarding the literal of a failed command */
	PS_FATAL,        /* only imap_parser_reset helps */
};

/* What the tokenizer expects next on the line. */
enum imap_expect {
	EXP_SEP,          /* after a token: SP, ')' or end of line */
	EXP_TOKEN,        /* after SP: a token */
	EXP_TOKEN_CLOSE,  /* after '(': a token or ')' */
};

/* Tokenizer results (negative: an error; p->err is set). */
#define TOK_END 1     /* the command is complete */
#define TOK_LITERAL 2 /* the line ended with a literal header */
#define TOK_FAIL (-1)
#define TOK_FATAL (-2)

struct lit_hdr {
	uint64_t n;
	bool too_big; /* more digits than fit: over any limit */
	bool nonsync;
	bool lit8;
};

struct imap_parser {
	struct imap_parse_limits lim; /* defaults filled in */
	struct mp_arena arena;        /* the command being read */
	struct mp_buf line;           /* owned: the line being collected */
	enum imap_pstate state;
	bool done;                    /* COMMAND/ERROR returned: reset first */

	/* line collection */
	int line_err;                 /* ERR_NONE or the error while skipping */
	bool discard;                 /* the line belongs to a failed command */
	char tail[TAIL_MAX];          /* last bytes of a line not stored */
	size_t tail_len;

	/* the command */
	bool have_head;               /* tag and name read */
	const char *tag;              /* arena */
	const char *name;             /* arena */
	bool uid;
	bool append;
	enum imap_expect expect;
	size_t cmd_bytes;
	size_t nargs_total;
	struct imap_arg *vec;         /* owned: arguments not yet in a list */
	size_t nvec, capvec;
	size_t *stack;                /* owned: vec index where each open list starts */
	size_t depth, capstack;

	/* literal being copied or skipped */
	char *lit;                    /* arena */
	uint64_t lit_len, lit_off;
	bool lit8;
	uint64_t skip_left;

	struct imap_command cmd;
	struct imap_parse_error err;
};

/* ------------------------------------------------------------ chars */

static bool is_ctl(unsigned char c)
{
	return c < 0x20 || c == 0x7f;
}

/* RFC 3501 ATOM-CHAR plus resp-specials (']'), i.e. ASTRING-CHAR, plus
 * list-wildcards ('%', '*') which LIST patterns need. */
static bool is_astring_char(unsigned char c)
{
	if (c >= 0x80 || is_ctl(c))
		return false;
	switch (c) {
	case '(': case ')': case '{': case ' ': case '"': case '\\':
		return false;
	default:
		return true;
	}
}

/* RFC 3501 tag: ASTRING-CHAR except '+' (no wildcards either). */
static bool is_tag_char(unsigned char c)
{
	return is_astring_char(c) && c != '+' && c != '%' && c != '*';
}

static bool is_name_char(unsigned char c)
{
	return is_astring_char(c) && c != '[' && c != ']' && c != '%' && c != '*';
}

static char ascii_upper(char c)
{
	return c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c;
}

static bool eq_nocase(const char *s, size_t len, const char *upper)
{
	size_t n = strlen(upper);
	if (len != n)
		return false;
	for (size_t i = 0; i < n; i++)
		if (ascii_upper(s[i]) != upper[i])
			return false;
	return true;
}

static bool prefix_nocase(const char *s, size_t len, const char *upper)
{
	size_t n = strlen(upper);
	if (len < n)
		return false;
	for (size_t i = 0; i < n; i++)
		if (ascii_upper(s[i]) != upper[i])
			return false;
	return true;
}

/* ------------------------------------------------------------ parser */

static size_t lim_or(size_t v, size_t def)
{
	if (v == 0)
		return def;
	return v > LIMIT_CAP ? LIMIT_CAP : v;
}

int imap_parser_new(const struct imap_parse_limits *lim, struct imap_parser **p_r)
{
	struct imap_parse_limits l = { 0 };
	if (lim != NULL)
		l = *lim;
	struct imap_parser *p = calloc(1, sizeof(*p));
	if (p == NULL)
		return MP_ENOMEM;
	p->lim.max_line = lim_or(l.max_line, DEF_MAX_LINE);
	p->lim.max_literal = lim_or(l.max_literal, DEF_MAX_LITERAL);
	p->lim.max_append_literal = lim_or(l.max_append_literal, DEF_MAX_APPEND_LITERAL);
	p->lim.max_command = lim_or(l.max_command, DEF_MAX_COMMAND);
	p->lim.max_depth = l.max_depth == 0 ? DEF_MAX_DEPTH : l.max_depth;
	p->lim.max_args = lim_or(l.max_args, DEF_MAX_ARGS);
	mp_arena_init(&p->arena);
	/* +1: a CR before the LF of a line of exactly max_line bytes. */
	mp_buf_init(&p->line, p->lim.max_line + 1);
	p->line_err = ERR_NONE;
	p->expect = EXP_SEP;
	*p_r = p;
	return MP_OK;
}

void imap_parser_free(struct imap_parser **pp)
{
	struct imap_parser *p = *pp;
	if (p == NULL)
		return;
	mp_arena_free(&p->arena);
	mp_buf_free(&p->line);
	free(p->vec);
	free(p->stack);
	free(p);
	*pp = NULL;
}

/* Forget the command (arena, arguments); line collection state stays. */
static void command_reset(struct imap_parser *p)
{
	mp_arena_free(&p->arena);
	p->have_head = false;
	p->tag = NULL;
	p->name = NULL;
	p->uid = false;
	p->append = false;
	p->expect = EXP_SEP;
	p->cmd_bytes = 0;
	p->nargs_total = 0;
	p->nvec = 0;
	p->depth = 0;
	p->lit = NULL;
	p->lit_len = p->lit_off = 0;
	p->lit8 = false;
	memset(&p->cmd, 0, sizeof(p->cmd));
	memset(&p->err, 0, sizeof(p->err));
}

void imap_parser_reset(struct imap_parser *p)
{
	command_reset(p);
	mp_buf_reset(&p->line);
	p->state = PS_LINE;
	p->done = false;
	p->line_err = ERR_NONE;
	p->discard = false;
	p->tail_len = 0;
	p->skip_left = 0;
}

static void set_err(struct imap_parser *p, enum imap_parse_err code, const char *text)
{
	p->err.code = code;
	p->err.text = text;
	p->err.tag = NULL;
}

static int grow(void **arr, size_t *cap, size_t need, size_t elem, size_t max)
{
	if (need <= *cap)
		return MP_OK;
	if (need > max)
		return MP_ETOOBIG;
	size_t ncap = *cap < 8 ? 8 : *cap;
	while (ncap < need)
		ncap *= 2;
	if (ncap > max)
		ncap = max;
	void *n = realloc(*arr, ncap * elem);
	if (n == NULL)
		return MP_ENOMEM;
	*arr = n;
	*cap = ncap;
	return MP_OK;
}

/* Count one more argument against max_args. */
static int count_arg(struct imap_parser *p)
{
	if (p->nargs_total >= p->lim.max_args) {
		set_err(p, IMAP_ERR_TOO_COMPLEX, "Too many arguments");
		return TOK_FAIL;
	}
	p->nargs_total++;
	return 0;
}

static int push_arg(struct imap_parser *p, const struct imap_arg *a)
{
	/* vec never holds more than max_args + 1 entries (+1: the list
	 * that replaces its elements). */
	int ret = grow((void **)&p->vec, &p->capvec, p->nvec + 1, sizeof(*p->vec),
		       p->lim.max_args + 1);
	if (ret != MP_OK) {
		set_err(p, IMAP_ERR_TOO_COMPLEX, "Out of memory");
		return TOK_FATAL;
	}
	p->vec[p->nvec++] = *a;
	return 0;
}

static int nomem(struct imap_parser *p)
{
	set_err(p, IMAP_ERR_TOO_COMPLEX, "Out of memory");
	return TOK_FATAL;
}

static int syntax(struct imap_parser *p, const char *text)
{
	set_err(p, IMAP_ERR_SYNTAX, text);
	return TOK_FAIL;
}

static int open_list(struct imap_parser *p)
{
	if (p->depth >= p->lim.max_depth) {
		set_err(p, IMAP_ERR_TOO_COMPLEX, "Lists nested too deep");
		return TOK_FAIL;
	}
	int ret = count_arg(p);
	if (ret != 0)
		return ret;
	if (grow((void **)&p->stack, &p->capstack, p->depth + 1, sizeof(*p->stack),
		 p->lim.max_depth) != MP_OK)
		return nomem(p);
	p->stack[p->depth++] = p->nvec;
	return 0;
}

static int close_list(struct imap_parser *p)
{
	if (p->depth == 0)
		return syntax(p, "Unexpected ')'");
	size_t start = p->stack[--p->depth];
	size_t count = p->nvec - start;
	struct imap_arg a = { .type = IMAP_ARG_LIST };
	if (count > 0) {
		a.list = mp_arena_alloc(&p->arena, count * sizeof(*a.list));
		if (a.list == NULL)
			return nomem(p);
		memcpy(a.list, p->vec + start, count * sizeof(*a.list));
	}
	a.nlist = count;
	p->nvec = start;
	return push_arg(p, &a);
}

/* A quoted string at s[*ip] == '"'. RFC 3501 quoted-specials are the only
 * escapes; 8-bit bytes are let through (UTF8=ACCEPT, RFC 9051). */
static int tok_quoted(struct imap_parser *p, const char *s, size_t n, size_t *ip)
{
	size_t i = *ip + 1, start = i, len = 0;
	for (;; i++) {
		if (i >= n)
			return syntax(p, "Unterminated quoted string");
		unsigned char c = (unsigned char)s[i];
		if (c == '"')
			break;
		if (c == '\\') {
			if (i + 1 >= n || (s[i + 1] != '"' && s[i + 1] != '\\'))
				return syntax(p, "Bad escape in quoted string");
			i++;
		} else if (c == '\r') {
			return syntax(p, "CR in quoted string");
		}
		len++;
	}
	size_t end = i;
	int ret = count_arg(p);
	if (ret != 0)
		return ret;
	char *d = mp_arena_alloc(&p->arena, len + 1);
	if (d == NULL)
		return nomem(p);
	size_t o = 0;
	for (size_t j = start; j < end; j++) {
		if (s[j] == '\\')
			j++;
		d[o++] = s[j];
	}
	struct imap_arg a = { .type = IMAP_ARG_STRING, .s = d, .len = o };
	*ip = end + 1;
	return push_arg(p, &a);
}

/* From s[i] == '[' to just after its matching ']'; 0 when unmatched on
 * this line. Quoted strings inside (header field names) are skipped whole. */
static size_t scan_bracket(const char *s, size_t n, size_t i)
{
	size_t depth = 0;
	bool quoted = false;
	for (; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c >= 0x80 || is_ctl(c))
			return 0;
		if (quoted) {
			if (c == '\\' && i + 1 < n)
				i++;
			else if (c == '"')
				quoted = false;
			continue;
		}
		if (c == '"') {
			quoted = true;
		} else if (c == '[') {
			depth++;
		} else if (c == ']') {
			if (--depth == 0)
				return i + 1;
		}
	}
	return 0;
}

static int tok_atom(struct imap_parser *p, const char *s, size_t n, size_t *ip)
{
	size_t i = *ip, start = i;
	if (s[i] == '\\')
		i++; /* a flag: \Seen, \*, \Noselect */
	while (i < n) {
		unsigned char c = (unsigned char)s[i];
		if (c == '[') {
			size_t j = scan_bracket(s, n, i);
			if (j == 0)
				return syntax(p, "Missing ']'");
			i = j;
			continue;
		}
		if (!is_astring_char(c))
			break;
		i++;
	}
	size_t len = i - start;
	if (len == 0 || (len == 1 && s[start] == '\\'))
		return syntax(p, "Bad character");
	int ret = count_arg(p);
	if (ret != 0)
		return ret;
	char *d = mp_arena_strndup(&p->arena, s + start, len);
	if (d == NULL)
		return nomem(p);
	struct imap_arg a = { .type = eq_nocase(d, len, "NIL") ? IMAP_ARG_NIL : IMAP_ARG_ATOM,
			      .s = d, .len = len };
	*ip = i;
	return push_arg(p, &a);
}

/* "{n}", "{n+}", "{n-}", "~{n}"... at s[i]; 0 and *lh, or i when it is
 * not a literal header at all. The header must end the line. */
static int tok_literal(struct imap_parser *p, const char *s, size_t n, size_t i,
		       struct lit_hdr *lh)
{
	memset(lh, 0, sizeof(*lh));
	if (s[i] == '~') {
		lh->lit8 = true;
		i++;
	}
	i++; /* '{' */
	size_t digits = 0;
	uint64_t v = 0;
	/* RFC 7888 §5: checked digit by digit, so no size wraps around. */
	while (i < n && s[i] >= '0' && s[i] <= '9') {
		unsigned d = (unsigned)(s[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			lh->too_big = true;
		else
			v = v * 10 + d;
		digits++;
		i++;
	}
	if (digits == 0)
		return syntax(p, "Bad literal size");
	if (i < n && (s[i] == '+' || s[i] == '-')) {
		lh->nonsync = true;
		i++;
	}
	if (i >= n || s[i] != '}')
		return syntax(p, "Bad literal");
	if (i + 1 != n)
		return syntax(p, "Literal not at the end of the line");
	lh->n = v;
	return 0;
}

/* The tag and command name at the start of the first line. */
static int tok_head(struct imap_parser *p, const char *s, size_t n, size_t *ip)
{
	size_t i = 0;
	while (i < n && is_tag_char((unsigned char)s[i]))
		i++;
	if (i == 0 || (i < n && s[i] != ' ')) {
		set_err(p, IMAP_ERR_NO_TAG, "Missing or invalid tag");
		return TOK_FAIL;
	}
	p->tag = mp_arena_strndup(&p->arena, s, i);
	if (p->tag == NULL)
		return nomem(p);
	if (i == n)
		return syntax(p, "Missing command");
	i++;

	char name[64];
	size_t nl = 0;
	for (int word = 0; word < 2; word++) {
		size_t st = i;
		while (i < n && is_name_char((unsigned char)s[i]))
			i++;
		size_t wl = i - st;
		if (wl == 0 || (i < n && s[i] != ' '))
			return syntax(p, "Bad command name");
		if (nl + wl + 1 >= sizeof(name))
			return syntax(p, "Unknown command");
		for (size_t k = 0; k < wl; k++)
			name[nl + k] = ascii_upper(s[st + k]);
		nl += wl;
		name[nl] = '\0';
		if (word == 0 && strcmp(name, "UID") == 0) {
			/* RFC 3501 §6.4.8: UID prefixes another command. */
			if (i >= n)
				return syntax(p, "UID without a command");
			i++;
			name[nl++] = ' ';
			p->uid = true;
			continue;
		}
		break;
	}
	p->name = mp_arena_strndup(&p->arena, name, nl);
	if (p->name == NULL)
		return nomem(p);
	p->append = strcmp(p->name, "APPEND") == 0;
	p->have_head = true;
	p->expect = EXP_SEP;
	*ip = i;
	return 0;
}

/* Tokenize one whole line (no line end) of the command. */
static int tok_line(struct imap_parser *p, const char *s, size_t n, struct lit_hdr *lh)
{
	size_t i = 0;
	int ret;

	if (!p->have_head) {
		ret = tok_head(p, s, n, &i);
		if (ret != 0)
			return ret;
	}
	while (i < n) {
		unsigned char c = (unsigned char)s[i];
		if (p->expect == EXP_SEP) {
			if (c == ' ') {
				p->expect = EXP_TOKEN;
				i++;
			} else if (c == ')') {
				ret = close_list(p);
				if (ret != 0)
					return ret;
				i++;
			} else {
				return syntax(p, "Expected a space");
			}
			continue;
		}
		if (c == ')' && p->expect == EXP_TOKEN_CLOSE) {
			ret = close_list(p);
			if (ret != 0)
				return ret;
			p->expect = EXP_SEP;
			i++;
			continue;
		}
		if (c == '(') {
			ret = open_list(p);
			if (ret != 0)
				return ret;
			p->expect = EXP_TOKEN_CLOSE;
			i++;
			continue;
		}
		if (c == '"') {
			ret = tok_quoted(p, s, n, &i);
		} else if (c == '{' || (c == '~' && i + 1 < n && s[i + 1] == '{')) {
			ret = tok_literal(p, s, n, i, lh);
			if (ret != 0)
				return ret;
			return TOK_LITERAL;
		} else {
			ret = tok_atom(p, s, n, &i);
		}
		if (ret != 0)
			return ret;
		p->expect = EXP_SEP;
	}
	if (p->expect == EXP_TOKEN)
		return syntax(p, "Trailing space");
	if (p->depth > 0)
		return syntax(p, "Missing ')'");
	return TOK_END;
}

/* ------------------------------------------------------------ feeding */

static void tail_add(struct imap_parser *p, const char *s, size_t n)
{
	if (n >= TAIL_MAX) {
		memcpy(p->tail, s + n - TAIL_MAX, TAIL_MAX);
		p->tail_len = TAIL_MAX;
		return;
	}
	if (p->tail_len + n > TAIL_MAX) {
		size_t drop = p->tail_len + n - TAIL_MAX;
		memmove(p->tail, p->tail + drop, p->tail_len - drop);
		p->tail_len -= drop;
	}
	memcpy(p->tail + p->tail_len, s, n);
	p->tail_len += n;
}

/* Stop storing the line: from now on only its last bytes are kept. */
static void line_start_skip(struct imap_parser *p, int code)
{
	p->line_err = code;
	p->tail_len = 0;
	size_t keep = p->line.len < TAIL_MAX ? p->line.len : TAIL_MAX;
	tail_add(p, p->line.data + p->line.len - keep, keep);
}

/* Bytes of a line before its LF. */
static void line_add(struct imap_parser *p, const char *s, size_t n)
{
	if (p->discard || p->line_err != ERR_NONE) {
		tail_add(p, s, n);
		return;
	}
	const char *z = memchr(s, '\0', n);
	size_t take = z != NULL ? (size_t)(z - s) : n;
	size_t room = p->lim.max_line + 1 - p->line.len;
	if (take > room) {
		/* within the buffer's limit; out of memory only loses the
		 * prefix that the tag of the error reply is taken from */
		(void)mp_buf_append(&p->line, s, room);
		line_start_skip(p, IMAP_ERR_LINE_TOO_LONG);
		tail_add(p, s + room, n - room);
		return;
	}
	if (mp_buf_append(&p->line, s, take) != MP_OK) {
		/* out of memory: drop the line like an over-long one */
		line_start_skip(p, IMAP_ERR_LINE_TOO_LONG);
		tail_add(p, s, n);
		return;
	}
	if (z != NULL) {
		line_start_skip(p, IMAP_ERR_NUL);
		tail_add(p, z, n - take);
	}
}

/* Does s (a line without its LF) end with a non-synchronising literal
 * header? Its size in *n_r; *big_r when it does not even fit 64 bits. */
static bool ends_nonsync_literal(const char *s, size_t n, uint64_t *n_r, bool *big_r)
{
	if (n > 0 && s[n - 1] == '\r')
		n--;
	if (n < 4 || s[n - 1] != '}' || (s[n - 2] != '+' && s[n - 2] != '-'))
		return false;
	size_t end = n - 2, i = end;
	while (i > 0 && s[i - 1] >= '0' && s[i - 1] <= '9')
		i--;
	if (i == end || i == 0 || s[i - 1] != '{')
		return false;
	uint64_t v = 0;
	*big_r = false;
	for (size_t k = i; k < end; k++) {
		unsigned d = (unsigned)(s[k] - '0');
		if (v > (UINT64_MAX - d) / 10)
			*big_r = true;
		else
			v = v * 10 + d;
	}
	*n_r = v;
	return true;
}

static size_t skip_limit(const struct imap_parser *p)
{
	return p->lim.max_literal > p->lim.max_append_literal ? p->lim.max_literal
							      : p->lim.max_append_literal;
}

/* The command failed at a line that ended as (s, n): drop what the client
 * will still send of it. Returns FATAL when that cannot be done. */
static enum imap_parse_status drop_rest(struct imap_parser *p, const char *s, size_t n)
{
	uint64_t lit;
	bool big;
	p->discard = false;
	if (ends_nonsync_literal(s, n, &lit, &big)) {
		/* The client sends the literal without waiting for us. */
		if (big || lit > skip_limit(p)) {
			set_err(p, IMAP_ERR_LITERAL_TOO_BIG, "Literal too big");
			p->state = PS_FATAL;
			return IMAP_PARSE_FATAL;
		}
		p->discard = true;
		p->skip_left = lit;
		if (lit > 0)
			p->state = PS_SKIP_LITERAL;
	}
	/* After a synchronising literal header the client waits for "+",
	 * which it will not get: the command ends here. */
	return IMAP_PARSE_ERROR;
}

/* The tag of a first line that could not be parsed, for the BAD reply. */
static void salvage_tag(struct imap_parser *p, const char *s, size_t n)
{
	if (p->have_head || p->tag != NULL) {
		p->err.tag = p->tag;
		return;
	}
	size_t i = 0;
	while (i < n && is_tag_char((unsigned char)s[i]))
		i++;
	if (i > 0 && i < n && s[i] == ' ')
		p->err.tag = mp_arena_strndup(&p->arena, s, i);
}

static enum imap_parse_status finish_command(struct imap_parser *p)
{
	p->cmd.tag = p->tag;
	p->cmd.name = p->name;
	p->cmd.uid = p->uid;
	p->cmd.nargs = p->nvec;
	p->cmd.args = NULL;
	if (p->nvec > 0) {
		p->cmd.args = mp_arena_alloc(&p->arena, p->nvec * sizeof(*p->cmd.args));
		if (p->cmd.args == NULL) {
			nomem(p);
			p->state = PS_FATAL;
			return IMAP_PARSE_FATAL;
		}
		memcpy(p->cmd.args, p->vec, p->nvec * sizeof(*p->cmd.args));
	}
	return IMAP_PARSE_COMMAND;
}

/* A literal header ended the line: accept it (or not). */
static enum imap_parse_status start_literal(struct imap_parser *p, const struct lit_hdr *lh,
					    const char *s, size_t n)
{
	size_t limit = p->append ? p->lim.max_append_literal : p->lim.max_literal;
	if (lh->too_big || lh->n > limit) {
		set_err(p, IMAP_ERR_LITERAL_TOO_BIG, "Literal too big");
		p->err.tag = p->tag;
		if (lh->nonsync) {
			/* RFC 7888 §4: it is on its way; we cannot skip it safely. */
			p->state = PS_FATAL;
			return IMAP_PARSE_FATAL;
		}
		return IMAP_PARSE_ERROR;
	}
	if (!p->append && lh->n > p->lim.max_command - p->cmd_bytes) {
		set_err(p, IMAP_ERR_TOO_COMPLEX, "Command too big");
		p->err.tag = p->tag;
		return drop_rest(p, s, n);
	}
	if (count_arg(p) != 0) {
		p->err.tag = p->tag;
		return drop_rest(p, s, n);
	}
	/* lh->n <= a limit <= LIMIT_CAP: fits size_t */
	char *buf = mp_arena_alloc(&p->arena, (size_t)lh->n + 1);
	if (buf == NULL) {
		nomem(p);
		p->state = PS_FATAL;
		return IMAP_PARSE_FATAL;
	}
	struct imap_arg a = { .type = IMAP_ARG_LITERAL, .s = buf, .len = (size_t)lh->n,
			      .literal8 = lh->lit8 };
	if (push_arg(p, &a) != 0) {
		p->state = PS_FATAL;
		return IMAP_PARSE_FATAL;
	}
	if (!p->append)
		p->cmd_bytes += (size_t)lh->n;
	p->expect = EXP_SEP;
	p->lit = buf;
	p->lit_len = lh->n;
	p->lit_off = 0;
	p->lit8 = lh->lit8;
	if (lh->n > 0)
		p->state = PS_LITERAL;
	return lh->nonsync ? IMAP_PARSE_MORE : IMAP_PARSE_CONTINUE;
}

/* A whole line has arrived (its LF consumed). */
static enum imap_parse_status line_end(struct imap_parser *p)
{
	enum imap_parse_status st = IMAP_PARSE_MORE;

	if (p->discard || p->line_err != ERR_NONE) {
		bool was_discard = p->discard;
		int code = p->line_err;
		if (!was_discard) {
			set_err(p, (enum imap_parse_err)code,
				code == IMAP_ERR_NUL ? "NUL byte in command" : "Line too long");
			salvage_tag(p, p->line.data != NULL ? p->line.data : "", p->line.len);
		}
		st = drop_rest(p, p->tail, p->tail_len);
		if (was_discard && st == IMAP_PARSE_ERROR)
			st = IMAP_PARSE_MORE; /* reported already */
		goto out;
	}

	const char *s = p->line.data != NULL ? p->line.data : "";
	size_t n = p->line.len;
	if (n > 0 && s[n - 1] == '\r')
		n--;
	if (n > p->lim.max_line) {
		set_err(p, IMAP_ERR_LINE_TOO_LONG, "Line too long");
		salvage_tag(p, s, n);
		st = drop_rest(p, s, n);
		goto out;
	}
	if (n + 2 > p->lim.max_command - p->cmd_bytes) {
		set_err(p, IMAP_ERR_TOO_COMPLEX, "Command too big");
		salvage_tag(p, s, n);
		st = drop_rest(p, s, n);
		goto out;
	}
	p->cmd_bytes += n + 2;

	struct lit_hdr lh;
	int ret = tok_line(p, s, n, &lh);
	if (ret == TOK_END) {
		st = finish_command(p);
	} else if (ret == TOK_LITERAL) {
		st = start_literal(p, &lh, s, n);
	} else if (ret == TOK_FATAL) {
		p->state = PS_FATAL;
		st = IMAP_PARSE_FATAL;
	} else {
		if (p->err.code != IMAP_ERR_NO_TAG)
			salvage_tag(p, s, n);
		st = drop_rest(p, s, n);
	}
out:
	mp_buf_reset(&p->line);
	p->line_err = ERR_NONE;
	p->tail_len = 0;
	return st;
}

enum imap_parse_status imap_parser_feed(struct imap_parser *p, const char *data, size_t len,
					size_t *used_r, const struct imap_command **cmd_r,
					const struct imap_parse_error **err_r)
{
	size_t i = 0;
	enum imap_parse_status st = IMAP_PARSE_MORE;

	*used_r = 0;
	*cmd_r = NULL;
	*err_r = NULL;
	if (p->state == PS_FATAL) {
		p->err.tag = NULL; /* its arena may be gone */
		p->err.name = NULL;
		*err_r = &p->err;
		return IMAP_PARSE_FATAL;
	}
	if (p->done) {
		command_reset(p);
		p->done = false;
	}
	while (i < len && st == IMAP_PARSE_MORE) {
		size_t avail = len - i;
		switch (p->state) {
		case PS_LITERAL: {
			uint64_t left = p->lit_len - p->lit_off;
			size_t n = left < avail ? (size_t)left : avail;
			const char *z = p->lit8 ? NULL : memchr(data + i, '\0', n);
			if (z != NULL) {
				/* RFC 3501 §4.3: only literal8 may carry NUL. */
				size_t before = (size_t)(z - (data + i));
				i += before + 1;
				p->skip_left = left - before - 1;
				p->state = p->skip_left > 0 ? PS_SKIP_LITERAL : PS_LINE;
				p->discard = true;
				set_err(p, IMAP_ERR_NUL, "NUL byte in literal");
				p->err.tag = p->tag;
				st = IMAP_PARSE_ERROR;
				break;
			}
			memcpy(p->lit + p->lit_off, data + i, n);
			p->lit_off += n;
			i += n;
			if (p->lit_off == p->lit_len)
				p->state = PS_LINE;
			break;
		}
		case PS_SKIP_LITERAL: {
			size_t n = p->skip_left < avail ? (size_t)p->skip_left : avail;
			p->skip_left -= n;
			i += n;
			if (p->skip_left == 0)
				p->state = PS_LINE;
			break;
		}
		case PS_LINE: {
			const char *nl = memchr(data + i, '\n', avail);
			size_t n = nl != NULL ? (size_t)(nl - (data + i)) : avail;
			line_add(p, data + i, n);
			i += n;
			if (nl != NULL) {
				i++;
				st = line_end(p);
			}
			break;
		}
		case PS_FATAL:
			st = IMAP_PARSE_FATAL;
			break;
		}
	}
	*used_r = i;
	if (st == IMAP_PARSE_COMMAND) {
		*cmd_r = &p->cmd;
		p->done = true;
	} else if (st == IMAP_PARSE_ERROR) {
		p->err.name = p->name;
		*err_r = &p->err;
		p->done = true;
	} else if (st == IMAP_PARSE_FATAL) {
		p->err.name = p->name;
		*err_r = &p->err;
	}
	return st;
}

/* max counts the line without its CRLF/LF: with len <= max + 1 and no LF
 * yet the line may still fit (its last byte may be the CR), so 0; -1 once
 * max + 2 bytes came without an LF or the line found is longer than max. */
int imap_read_line(const char *data, size_t len, size_t max, size_t *line_len_r,
		   size_t *used_r)
{
	/* A line of max bytes may need max + 2 with its CRLF. */
	size_t look = max <= SIZE_MAX - 2 && len > max + 2 ? max + 2 : len;
	const char *nl = memchr(data, '\n', look);
	if (nl == NULL)
		return look >= max + 2 && max <= SIZE_MAX - 2 ? -1 : 0;
	size_t n = (size_t)(nl - data);
	size_t used = n + 1;
	if (n > 0 && data[n - 1] == '\r')
		n--;
	if (n > max)
		return -1;
	*line_len_r = n;
	*used_r = used;
	return 1;
}

/* ------------------------------------------------------------ arguments */

const char *imap_arg_astring(const struct imap_arg *a)
{
	if (a == NULL)
		return NULL;
	switch (a->type) {
	case IMAP_ARG_ATOM:
	case IMAP_ARG_NIL:
	case IMAP_ARG_STRING:
	case IMAP_ARG_LITERAL:
		if (memchr(a->s, '\0', a->len) != NULL)
			return NULL;
		return a->s;
	default:
		return NULL;
	}
}

const char *imap_arg_nstring(const struct imap_arg *a)
{
	if (a == NULL || a->type == IMAP_ARG_NIL)
		return NULL;
	return imap_arg_astring(a);
}

bool imap_arg_is_atom(const struct imap_arg *a, const char *upper_name)
{
	if (a == NULL || (a->type != IMAP_ARG_ATOM && a->type != IMAP_ARG_NIL))
		return false;
	return eq_nocase(a->s, a->len, upper_name);
}

static bool parse_digits(const char *s, size_t len, uint64_t max, uint64_t *v_r)
{
	uint64_t v = 0;
	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		unsigned d = (unsigned)(s[i] - '0');
		if (v > (max - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*v_r = v;
	return true;
}

bool imap_arg_number(const struct imap_arg *a, uint32_t *n_r)
{
	uint64_t v;
	if (a == NULL || a->type != IMAP_ARG_ATOM || !parse_digits(a->s, a->len, UINT32_MAX, &v))
		return false;
	*n_r = (uint32_t)v;
	return true;
}

bool imap_arg_number64(const struct imap_arg *a, uint64_t *n_r)
{
	uint64_t v;
	if (a == NULL || a->type != IMAP_ARG_ATOM || !parse_digits(a->s, a->len, INT64_MAX, &v))
		return false;
	*n_r = v;
	return true;
}

/* ------------------------------------------------------------ UTF-8 */

/* One code point of valid UTF-8 (RFC 3629: no overlongs, no surrogates,
 * at most U+10FFFF) at s[*ip]; -1 when invalid. */
static int32_t utf8_next(const unsigned char *s, size_t len, size_t *ip)
{
	size_t i = *ip;
	unsigned char c = s[i];
	uint32_t cp, min;
	size_t extra;

	if (c < 0x80) {
		*ip = i + 1;
		return c;
	} else if (c >= 0xc2 && c <= 0xdf) {
		cp = c & 0x1f; extra = 1; min = 0x80;
	} else if (c >= 0xe0 && c <= 0xef) {
		cp = c & 0x0f; extra = 2; min = 0x800;
	} else if (c >= 0xf0 && c <= 0xf4) {
		cp = c & 0x07; extra = 3; min = 0x10000;
	} else {
		return -1;
	}
	if (len - i - 1 < extra)
		return -1;
	for (size_t k = 1; k <= extra; k++) {
		unsigned char cc = s[i + k];
		if ((cc & 0xc0) != 0x80)
			return -1;
		cp = (cp << 6) | (cc & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return -1;
	*ip = i + 1 + extra;
	return (int32_t)cp;
}

static bool utf8_valid(const char *s, size_t len)
{
	size_t i = 0;
	while (i < len)
		if (utf8_next((const unsigned char *)s, len, &i) < 0)
			return false;
	return true;
}

static int utf8_put(struct mp_buf *b, uint32_t cp)
{
	unsigned char o[4];
	size_t n;
	if (cp < 0x80) {
		o[0] = (unsigned char)cp; n = 1;
	} else if (cp < 0x800) {
		o[0] = (unsigned char)(0xc0 | (cp >> 6));
		o[1] = (unsigned char)(0x80 | (cp & 0x3f)); n = 2;
	} else if (cp < 0x10000) {
		o[0] = (unsigned char)(0xe0 | (cp >> 12));
		o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
		o[2] = (unsigned char)(0x80 | (cp & 0x3f)); n = 3;
	} else {
		o[0] = (unsigned char)(0xf0 | (cp >> 18));
		o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
		o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
		o[3] = (unsigned char)(0x80 | (cp & 0x3f)); n = 4;
	}
	return mp_buf_append(b, o, n);
}

/* ------------------------------------------------------------ output */

int imap_write_string(struct mp_buf *b, const char *s, size_t len, bool utf8)
{
	bool literal = len > 1024;
	bool high = false;
	for (size_t i = 0; i < len && !literal; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '\0' || c == '\r' || c == '\n')
			literal = true;
		else if (c >= 0x80)
			high = true;
	}
	if (!literal && high && (!utf8 || !utf8_valid(s, len)))
		literal = true;

	size_t old = b->len;
	int ret;
	if (literal) {
		ret = mp_buf_printf(b, "{%zu}\r\n", len);
		if (ret == MP_OK)
			ret = mp_buf_append(b, s, len);
	} else {
		ret = mp_buf_append(b, "\"", 1);
		size_t st = 0;
		for (size_t i = 0; i < len && ret == MP_OK; i++) {
			if (s[i] != '"' && s[i] != '\\')
				continue;
			ret = mp_buf_append(b, s + st, i - st);
			if (ret == MP_OK)
				ret = mp_buf_append(b, "\\", 1);
			st = i;
		}
		if (ret == MP_OK)
			ret = mp_buf_append(b, s + st, len - st);
		if (ret == MP_OK)
			ret = mp_buf_append(b, "\"", 1);
	}
	if (ret != MP_OK && b->data != NULL) {
		b->len = old;
		b->data[old] = '\0';
	}
	return ret;
}

int imap_write_nstring(struct mp_buf *b, const char *s, size_t len, bool utf8)
{
	if (s == NULL)
		return mp_buf_append(b, "NIL", 3);
	return imap_write_string(b, s, len, utf8);
}

/* ------------------------------------------------------------ mUTF-7 */

static const char mb64_chars[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

static int mb64_value(unsigned char c)
{
	return mp_base64_digit(c, '+', ',');
}

/* One shifted run after '&' up to and including its '-'. */
static int mutf7_run(const char *s, size_t len, size_t *ip, struct mp_buf *b)
{
	size_t i = *ip;
	uint32_t bits = 0, high = 0;
	unsigned nbits = 0, units = 0;
	int ret;

	for (;; i++) {
		if (i >= len)
			return MP_EINVAL; /* no '-' */
		if (s[i] == '-')
			break;
		int v = mb64_value((unsigned char)s[i]);
		if (v < 0)
			return MP_EINVAL;
		bits = (bits << 6) | (uint32_t)v;
		nbits += 6;
		if (nbits < 16)
			continue;
		nbits -= 16;
		uint32_t u = (bits >> nbits) & 0xffff;
		bits &= (1u << nbits) - 1;
		units++;
		if (high != 0) {
			if (u < 0xdc00 || u > 0xdfff)
				return MP_EINVAL;
			ret = utf8_put(b, 0x10000 + ((high - 0xd800) << 10) + (u - 0xdc00));
			high = 0;
		} else if (u >= 0xd800 && u <= 0xdbff) {
			high = u;
			continue;
		} else if (u >= 0xdc00 && u <= 0xdfff) {
			return MP_EINVAL;
		} else if (u == 0 || (u >= 0x20 && u <= 0x7e)) {
			/* RFC 3501 §5.1.3: printable ASCII must stand for itself */
			return MP_EINVAL;
		} else {
			ret = utf8_put(b, u);
		}
		if (ret != MP_OK)
			return ret;
	}
	/* Leftover bits must be the zero padding of the last unit. */
	if (units == 0 || high != 0 || nbits >= 6 || bits != 0)
		return MP_EINVAL;
	*ip = i + 1;
	return MP_OK;
}

int imap_mutf7_decode(const char *s, size_t len, bool utf8_mode, struct mp_buf *b)
{
	size_t old = b->len;
	size_t i = 0;
	int ret = MP_OK;

	/* the buffer is NUL-terminated even for an empty name */
	ret = mp_buf_reserve(b, 0);
	while (ret == MP_OK && i < len) {
		unsigned char c = (unsigned char)s[i];
		if (utf8_mode) {
			size_t st = i;
			int32_t cp = utf8_next((const unsigned char *)s, len, &i);
			if (cp < 0 || cp < 0x20 || cp == 0x7f)
				ret = MP_EINVAL;
			else
				ret = mp_buf_append(b, s + st, i - st);
			continue;
		}
		if (c < 0x20 || c > 0x7e) {
			ret = MP_EINVAL;
		} else if (c != '&') {
			ret = mp_buf_append(b, s + i, 1);
			i++;
		} else if (i + 1 < len && s[i + 1] == '-') {
			ret = mp_buf_append(b, "&", 1);
			i += 2;
		} else {
			i++;
			ret = mutf7_run(s, len, &i, b);
		}
	}
	if (ret != MP_OK) {
		if (b->data != NULL) {
			b->len = old;
			b->data[old] = '\0';
		}
		return ret;
	}
	return MP_OK;
}

struct b64_out {
	uint32_t bits;
	unsigned nbits;
};

static int mutf7_put_unit(struct mp_buf *b, struct b64_out *o, uint32_t u)
{
	o->bits = (o->bits << 16) | u;
	o->nbits += 16;
	while (o->nbits >= 6) {
		o->nbits -= 6;
		int ret = mp_buf_append(b, &mb64_chars[(o->bits >> o->nbits) & 0x3f], 1);
		if (ret != MP_OK)
			return ret;
	}
	o->bits &= (1u << o->nbits) - 1;
	return MP_OK;
}

static int mutf7_flush(struct mp_buf *b, struct b64_out *o)
{
	int ret = MP_OK;
	if (o->nbits > 0)
		ret = mp_buf_append(b, &mb64_chars[(o->bits << (6 - o->nbits)) & 0x3f], 1);
	if (ret == MP_OK)
		ret = mp_buf_append(b, "-", 1);
	o->bits = 0;
	o->nbits = 0;
	return ret;
}

int imap_mutf7_encode(const char *s, size_t len, bool utf8_mode, struct mp_buf *b)
{
	size_t old = b->len;
	size_t i = 0;
	bool shifted = false;
	struct b64_out o = { 0, 0 };
	int ret = mp_buf_reserve(b, 0);

	if (ret == MP_OK && utf8_mode) {
		if (!utf8_valid(s, len) || memchr(s, '\0', len) != NULL)
			ret = MP_EINVAL;
		else
			ret = mp_buf_append(b, s, len);
		i = len;
	}
	while (ret == MP_OK && i < len) {
		int32_t cp = utf8_next((const unsigned char *)s, len, &i);
		if (cp <= 0) {
			ret = MP_EINVAL;
			break;
		}
		if (cp >= 0x20 && cp <= 0x7e) {
			if (shifted) {
				ret = mutf7_flush(b, &o);
				shifted = false;
			}
			if (ret == MP_OK)
				ret = cp == '&' ? mp_buf_append(b, "&-", 2)
						: mp_buf_append(b, s + i - 1, 1);
			continue;
		}
		if (!shifted) {
			ret = mp_buf_append(b, "&", 1);
			shifted = true;
		}
		if (ret != MP_OK)
			break;
		if (cp >= 0x10000) {
			uint32_t v = (uint32_t)cp - 0x10000;
			ret = mutf7_put_unit(b, &o, 0xd800 | (v >> 10));
			if (ret == MP_OK)
				ret = mutf7_put_unit(b, &o, 0xdc00 | (v & 0x3ff));
		} else {
			ret = mutf7_put_unit(b, &o, (uint32_t)cp);
		}
	}
	if (ret == MP_OK && shifted)
		ret = mutf7_flush(b, &o);
	if (ret != MP_OK) {
		if (b->data != NULL) {
			b->len = old;
			b->data[old] = '\0';
		}
		return ret;
	}
	return MP_OK;
}

/* ------------------------------------------------------------ dates */

static const char month_names[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
					 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };

static void civil_from_days(int64_t z, int64_t *y_r, int *m_r, int *d_r)
{
	z += 719468;
	int64_t era = (z >= 0 ? z : z - 146096) / 146097;
	int64_t doe = z - era * 146097;
	int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	int64_t mp = (5 * doy + 2) / 153;
	int d = (int)(doy - (153 * mp + 2) / 5 + 1);
	int m = (int)(mp < 10 ? mp + 3 : mp - 9);
	*y_r = yoe + era * 400 + (m <= 2);
	*m_r = m;
	*d_r = d;
}

static bool num_at(const char *s, size_t n, int *v_r)
{
	int v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (s[i] - '0');
	}
	*v_r = v;
	return true;
}

/* "d-Mon-yyyy" or "dd-Mon-yyyy" (or " d-..." when space_day) at the start
 * of s; the bytes used in *used_r. */
static int parse_day(const char *s, size_t len, bool space_day, int64_t *days_r, size_t *used_r)
{
	size_t dl;
	int d, m = 0, y;
	if (len >= 2 && s[1] == '-')
		dl = 1;
	else if (len >= 3 && s[2] == '-')
		dl = 2;
	else
		return MP_EINVAL;
	if (dl == 2 && s[0] == ' ' && space_day) {
		if (!num_at(s + 1, 1, &d))
			return MP_EINVAL;
	} else if (!num_at(s, dl, &d)) {
		return MP_EINVAL;
	}
	size_t i = dl + 1;
	if (len < i + 8 || s[i + 3] != '-')
		return MP_EINVAL;
	m = (int)imap_month_number(s + i, 3);
	if (m == 0 || !num_at(s + i + 4, 4, &y))
		return MP_EINVAL;
	if (y < 1900 || d < 1 || d > (int)imap_days_in_month(y, (unsigned)m))
		return MP_EINVAL;
	*days_r = imap_days_from_civil(y, (unsigned)m, (unsigned)d);
	*used_r = i + 8;
	return MP_OK;
}

int imap_parse_date(const char *s, size_t len, int64_t *t_r)
{
	int64_t days;
	size_t used;
	int ret = parse_day(s, len, false, &days, &used);
	if (ret != MP_OK || used != len)
		return MP_EINVAL;
	*t_r = days * 86400;
	return MP_OK;
}

int imap_parse_datetime(const char *s, size_t len, int64_t *t_r)
{
	int64_t days;
	size_t used;
	int hh, mm, ss, zh, zm;
	/* RFC 3501: date-time = DQUOTE date-day-fixed "-" date-month "-"
	 * date-year SP time SP zone DQUOTE; the day is 2 characters. */
	if (len != 26 || (s[2] != '-'))
		return MP_EINVAL;
	int ret = parse_day(s, len, true, &days, &used);
	if (ret != MP_OK || used != 11)
		return MP_EINVAL;
	const char *t = s + 11;
	if (t[0] != ' ' || t[3] != ':' || t[6] != ':' || t[9] != ' ' ||
	    (t[10] != '+' && t[10] != '-'))
		return MP_EINVAL;
	if (!num_at(t + 1, 2, &hh) || !num_at(t + 4, 2, &mm) || !num_at(t + 7, 2, &ss) ||
	    !num_at(t + 11, 2, &zh) || !num_at(t + 13, 2, &zm))
		return MP_EINVAL;
	/* ss 60: a leap second (RFC 5322 §3.3) */
	if (hh > 23 || mm > 59 || ss > 60 || zh > 23 || zm > 59)
		return MP_EINVAL;
	int64_t zone = (int64_t)zh * 3600 + zm * 60;
	if (t[10] == '-')
		zone = -zone;
	*t_r = days * 86400 + hh * 3600 + mm * 60 + ss - zone;
	return MP_OK;
}

void imap_format_datetime(int64_t t, char *out, size_t outlen)
{
	/* Clamped to what four year digits can say. */
	const int64_t lo = imap_days_from_civil(0, 1, 1) * 86400;
	const int64_t hi = imap_days_from_civil(9999, 12, 31) * 86400 + 86399;
	if (outlen == 0)
		return;
	if (t < lo)
		t = lo;
	if (t > hi)
		t = hi;
	int64_t days = t / 86400, secs = t % 86400;
	if (secs < 0) {
		secs += 86400;
		days--;
	}
	int64_t y;
	int m, d;
	civil_from_days(days, &y, &m, &d);
	int w = snprintf(out, outlen, "%02d-%s-%04d %02d:%02d:%02d +0000", d, month_names[m - 1],
			 (int)y, (int)(secs / 3600), (int)(secs / 60 % 60), (int)(secs % 60));
	if (w < 0 || (size_t)w >= outlen)
		out[0] = '\0';
}

/* ------------------------------------------------------------ FETCH */

/* A header field name (astring, no literal) at s[*ip]; copied to *out_r
 * when out is non-NULL. */
static bool fa_field(struct mp_arena *arena, const char *s, size_t len, size_t *ip,
		     const char **out_r)
{
	size_t i = *ip, st;
	if (i < len && s[i] == '"') {
		size_t n = 0;
		st = ++i;
		for (;; i++) {
			if (i >= len || s[i] == '\r' || s[i] == '\n')
				return false;
			if (s[i] == '"')
				break;
			if (s[i] == '\\') {
				if (i + 1 >= len || (s[i + 1] != '"' && s[i + 1] != '\\'))
					return false;
				i++;
			}
			n++;
		}
		if (n == 0)
			return false;
		if (out_r != NULL) {
			char *d = mp_arena_alloc(arena, n + 1);
			if (d == NULL)
				return false;
			size_t o = 0;
			for (size_t j = st; j < i; j++) {
				if (s[j] == '\\')
					j++;
				d[o++] = s[j];
			}
			*out_r = d;
		}
		*ip = i + 1;
		return true;
	}
	st = i;
	while (i < len && is_astring_char((unsigned char)s[i]) && s[i] != ']')
		i++;
	if (i == st)
		return false;
	if (out_r != NULL) {
		*out_r = mp_arena_strndup(arena, s + st, i - st);
		if (*out_r == NULL)
			return false;
	}
	*ip = i;
	return true;
}

/* "(" name *(SP name) ")" at s[*ip]; two passes: count, then copy. */
static int fa_header_list(struct imap_parser *p, const char *s, size_t len, size_t *ip,
			  struct imap_section *sec, const char **error_r)
{
	size_t count = 0;
	for (int pass = 0; pass < 2; pass++) {
		size_t i = *ip;
		if (i >= len || s[i] != '(') {
			*error_r = "Expected a header field list";
			return MP_EINVAL;
		}
		i++;
		for (size_t k = 0;; k++) {
			const char **slot = pass == 1 ? &sec->fields[k] : NULL;
			if (!fa_field(&p->arena, s, len, &i, slot)) {
				*error_r = pass == 1 ? "Out of memory" : "Bad header field name";
				return pass == 1 ? MP_ENOMEM : MP_EINVAL;
			}
			if (pass == 0)
				count++;
			if (i < len && s[i] == ' ') {
				i++;
				continue;
			}
			if (i < len && s[i] == ')')
				break;
			*error_r = "Bad header field list";
			return MP_EINVAL;
		}
		if (pass == 0) {
			sec->fields = mp_arena_alloc(&p->arena, count * sizeof(*sec->fields));
			if (sec->fields == NULL) {
				*error_r = "Out of memory";
				return MP_ENOMEM;
			}
			sec->nfields = count;
		} else {
			*ip = i + 1;
		}
	}
	return MP_OK;
}

/* section-spec up to and including ']' (RFC 3501 §9 section). */
static int fa_section(struct imap_parser *p, const char *s, size_t len, size_t *ip,
		      bool binary, struct imap_section *sec, const char **error_r)
{
	size_t i = *ip;
	*error_r = "Bad section";
	/* section-part = nz-number *("." nz-number) */
	while (i < len && s[i] >= '1' && s[i] <= '9') {
		size_t st = i;
		while (i < len && s[i] >= '0' && s[i] <= '9')
			i++;
		uint64_t v;
		if (!parse_digits(s + st, i - st, UINT32_MAX, &v))
			return MP_EINVAL;
		if (sec->nparts >= IMAP_SECTION_MAX_PARTS) {
			*error_r = "Too many section parts";
			return MP_EINVAL;
		}
		sec->part[sec->nparts++] = (uint32_t)v;
		if (i < len && s[i] == '.' && i + 1 < len && s[i + 1] >= '0' && s[i + 1] <= '9')
			i++;
		else
			break;
	}
	if (i < len && s[i] == '0') {
		*error_r = "Section part 0";
		return MP_EINVAL;
	}
	bool need_text = false;
	if (sec->nparts > 0 && i < len && s[i] == '.') {
		i++;
		need_text = true;
	} else if (sec->nparts > 0 && (i >= len || s[i] != ']')) {
		return MP_EINVAL;
	}

	if (i < len && (s[i] != ']' || need_text)) {
		const char *t = s + i;
		size_t tl = len - i;
		size_t used;
		if (prefix_nocase(t, tl, "HEADER.FIELDS.NOT ")) {
			sec->text = IMAP_SECT_HEADER_FIELDS_NOT;
			used = 18;
		} else if (prefix_nocase(t, tl, "HEADER.FIELDS ")) {
			sec->text = IMAP_SECT_HEADER_FIELDS;
			used = 14;
		} else if (prefix_nocase(t, tl, "HEADER]")) {
			sec->text = IMAP_SECT_HEADER;
			used = 6;
		} else if (prefix_nocase(t, tl, "TEXT]")) {
			sec->text = IMAP_SECT_TEXT;
			used = 4;
		} else if (prefix_nocase(t, tl, "MIME]") && sec->nparts > 0) {
			sec->text = IMAP_SECT_MIME;
			used = 4;
		} else {
			return MP_EINVAL;
		}
		i += used;
		if (sec->text == IMAP_SECT_HEADER_FIELDS || sec->text == IMAP_SECT_HEADER_FIELDS_NOT) {
			int ret = fa_header_list(p, s, len, &i, sec, error_r);
			if (ret != MP_OK)
				return ret;
		}
	}
	if (i >= len || s[i] != ']')
		return MP_EINVAL;
	if (binary && sec->text != IMAP_SECT_NONE) {
		*error_r = "BINARY takes only a part number";
		return MP_EINVAL;
	}
	*ip = i + 1;
	return MP_OK;
}

int imap_fetch_att_parse(struct imap_parser *p, const char *s, size_t len,
			 struct imap_fetch_att *att_r, const char **error_r)
{
	static const struct {
		const char *name;
		enum imap_fetch_att_kind kind;
	} simple[] = {
		{ "FLAGS", IMAP_FA_FLAGS },
		{ "INTERNALDATE", IMAP_FA_INTERNALDATE },
		{ "RFC822.SIZE", IMAP_FA_RFC822_SIZE },
		{ "ENVELOPE", IMAP_FA_ENVELOPE },
		{ "BODY", IMAP_FA_BODY },
		{ "BODYSTRUCTURE", IMAP_FA_BODYSTRUCTURE },
		{ "UID", IMAP_FA_UID },
		{ "MODSEQ", IMAP_FA_MODSEQ },
		{ "EMAILID", IMAP_FA_EMAILID },
		{ "THREADID", IMAP_FA_THREADID },
		{ "RFC822", IMAP_FA_RFC822 },
		{ "RFC822.HEADER", IMAP_FA_RFC822_HEADER },
		{ "RFC822.TEXT", IMAP_FA_RFC822_TEXT },
		{ "SAVEDATE", IMAP_FA_SAVEDATE },
	};
	const char *dummy;
	if (error_r == NULL)
		error_r = &dummy;
	memset(att_r, 0, sizeof(*att_r));

	for (size_t k = 0; k < sizeof(simple) / sizeof(simple[0]); k++) {
		if (!eq_nocase(s, len, simple[k].name))
			continue;
		att_r->kind = simple[k].kind;
		/* RFC 3501 §6.4.5: the RFC822 forms are BODY sections. */
		if (att_r->kind == IMAP_FA_RFC822_HEADER) {
			att_r->peek = true;
			att_r->section.text = IMAP_SECT_HEADER;
		} else if (att_r->kind == IMAP_FA_RFC822_TEXT) {
			att_r->section.text = IMAP_SECT_TEXT;
		}
		return MP_OK;
	}

	size_t i;
	bool binary = false, allow_partial = true;
	if (prefix_nocase(s, len, "BODY.PEEK[")) {
		att_r->kind = IMAP_FA_BODY_SECTION;
		att_r->peek = true;
		i = 10;
	} else if (prefix_nocase(s, len, "BODY[")) {
		att_r->kind = IMAP_FA_BODY_SECTION;
		i = 5;
	} else if (prefix_nocase(s, len, "BINARY.PEEK[")) {
		att_r->kind = IMAP_FA_BINARY;
		att_r->peek = true;
		binary = true;
		i = 12;
	} else if (prefix_nocase(s, len, "BINARY.SIZE[")) {
		att_r->kind = IMAP_FA_BINARY_SIZE;
		binary = true;
		allow_partial = false;
		i = 12;
	} else if (prefix_nocase(s, len, "BINARY[")) {
		att_r->kind = IMAP_FA_BINARY;
		binary = true;
		i = 7;
	} else {
		*error_r = "Unknown fetch attribute";
		return MP_EINVAL;
	}
	if (p == NULL) {
		*error_r = "No parser";
		return MP_EINVAL;
	}
	int ret = fa_section(p, s, len, &i, binary, &att_r->section, error_r);
	if (ret != MP_OK)
		return ret;
	if (i == len)
		return MP_OK;
	/* RFC 9051 §9: partial = "<" number64 "." nz-number64 ">" */
	*error_r = "Bad partial";
	if (!allow_partial || s[i] != '<' || s[len - 1] != '>')
		return MP_EINVAL;
	const char *dot = memchr(s + i, '.', len - i);
	if (dot == NULL)
		return MP_EINVAL;
	size_t a0 = i + 1, a1 = (size_t)(dot - s), b1 = len - 1;
	uint64_t start, count;
	if (!parse_digits(s + a0, a1 - a0, INT64_MAX, &start) ||
	    a1 + 1 >= b1 || !parse_digits(s + a1 + 1, b1 - a1 - 1, INT64_MAX, &count) ||
	    count == 0)
		return MP_EINVAL;
	att_r->partial = true;
	att_r->partial_start = start;
	att_r->partial_count = count;
	return MP_OK;
}
