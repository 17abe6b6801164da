/*
 * imap_parse: the IMAP command reader of merpati-frontend (RFC 3501 §9,
 * RFC 9051 §9, RFC 7888 LITERAL+/LITERAL-, RFC 3516 literal8). Pure: no
 * I/O, no allocation outside the parser's own arena; input comes as bytes
 * the session has received, output is a command as a tree of arguments.
 *
 * A command is read whole, literals included, before the session sees it:
 *   tag SP name [SP args] CRLF
 * where an argument is an atom, a quoted string, a literal ({n}, {n+},
 * {n-}, ~{n}), NIL, or a parenthesised list of arguments. Brackets inside
 * an atom are kept with the atom up to the matching ']' (spaces and
 * parentheses included), so a fetch attribute such as
 * BODY.PEEK[HEADER.FIELDS (From To)]<0.100> is one atom: the FETCH code
 * parses it with imap_fetch_att_parse.
 *
 * Synchronising literals: when the parser has read "{n}\r\n" and n is
 * within the limit it returns IMAP_PARSE_CONTINUE once; the session writes
 * "+ OK\r\n" and keeps feeding. Over the limit it returns IMAP_PARSE_ERROR
 * with IMAP_ERR_LITERAL_TOO_BIG before the client sends a byte of it (the
 * client must not send a literal that got no continuation), and the rest
 * of that line is dropped. A non-synchronising literal over the limit
 * cannot be refused before it arrives: IMAP_PARSE_FATAL (say BYE, close).
 *
 * Limits (struct imap_parse_limits): line length (each line of the
 * command between literals), literal size (APPEND's literals have their
 * own, larger limit), nesting depth, number of arguments, total bytes of a
 * command excluding APPEND literals.
 *
 * Never: allocate without bound; accept a NUL outside a literal8; read past
 * the bytes given.
 */
#ifndef IMAP_PARSE_H
#define IMAP_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mp_buf;

enum imap_arg_type {
	IMAP_ARG_ATOM,     /* also numbers, sequence sets, flags (\Seen), BODY[...]<...> */
	IMAP_ARG_STRING,   /* a quoted string, unescaped */
	IMAP_ARG_LITERAL,  /* {n} / {n+} / {n-} / ~{n} */
	IMAP_ARG_NIL,      /* the atom NIL (case-insensitive) */
	IMAP_ARG_LIST,     /* ( ... ) */
};

struct imap_arg {
	enum imap_arg_type type;
	/* ATOM/STRING/LITERAL: the bytes, NUL-terminated after len (a literal
	 * may contain NULs only when literal8); LIST: NULL. */
	const char *s;
	size_t len;
	bool literal8;            /* ~{n} */
	struct imap_arg *list;    /* LIST: the elements */
	size_t nlist;
};

struct imap_command {
	const char *tag;          /* as sent */
	const char *name;         /* uppercased: "FETCH"; "UID FETCH" for UID commands */
	bool uid;                 /* the command had the UID prefix */
	struct imap_arg *args;    /* the arguments after the name */
	size_t nargs;
};

struct imap_parse_limits {
	size_t max_line;          /* bytes per line (between literals); 0 = 8192 */
	size_t max_literal;       /* bytes of one literal; 0 = 64 KiB */
	size_t max_append_literal; /* bytes of one APPEND literal; 0 = 50 MiB */
	size_t max_command;       /* bytes of a command, APPEND literals excluded; 0 = 1 MiB */
	unsigned max_depth;       /* list nesting; 0 = 32 */
	size_t max_args;          /* arguments in all (every list element counts); 0 = 10000 */
};

enum imap_parse_status {
	IMAP_PARSE_MORE,      /* all input consumed; give more */
	IMAP_PARSE_CONTINUE,  /* send "+ OK" (sync literal accepted), then feed more */
	IMAP_PARSE_COMMAND,   /* *cmd_r is a whole command (valid until the next feed/reset) */
	IMAP_PARSE_ERROR,     /* one bad command; *err_r says; the parser is ready for the next */
	IMAP_PARSE_FATAL,     /* cannot resynchronise: say BYE and close */
};

enum imap_parse_err {
	IMAP_ERR_SYNTAX,            /* BAD */
	IMAP_ERR_NO_TAG,            /* BAD with tag "*" */
	IMAP_ERR_LINE_TOO_LONG,     /* BAD */
	IMAP_ERR_LITERAL_TOO_BIG,   /* NO [TOOBIG] (APPEND) / BAD */
	IMAP_ERR_TOO_COMPLEX,       /* depth, args, command size: BAD */
	IMAP_ERR_NUL,               /* NUL byte: BAD */
};

struct imap_parse_error {
	enum imap_parse_err code;
	const char *tag;          /* the tag if one was read, else NULL */
	const char *text;         /* static, human readable */
	const char *name;         /* the command name if read ("APPEND": LITERAL_TOO_BIG
				   * is NO [TOOBIG]), else NULL */
};

struct imap_parser;

int imap_parser_new(const struct imap_parse_limits *lim, struct imap_parser **p_r);
void imap_parser_free(struct imap_parser **p);

/* Feed bytes. *used_r: how many of data were consumed (the rest stays with
 * the caller: after COMMAND, ERROR or CONTINUE there may be more to feed
 * right away). Pipelined commands come out one per call. */
enum imap_parse_status imap_parser_feed(struct imap_parser *p, const char *data,
					size_t len, size_t *used_r,
					const struct imap_command **cmd_r,
					const struct imap_parse_error **err_r);

/* Forget the command in progress (after STARTTLS, or when the session
 * switches to reading raw lines). */
void imap_parser_reset(struct imap_parser *p);

/* Raw lines (AUTHENTICATE responses, IDLE's DONE): find one CRLF- or
 * LF-terminated line in data. 1 with *line_len_r (without the line end)
 * and *used_r (with it); 0 when no whole line is there yet (and len <
 * max); -1 when more than max bytes come without a line end. */
int imap_read_line(const char *data, size_t len, size_t max, size_t *line_len_r,
		   size_t *used_r);

/* ---- argument helpers ---- */

/* An astring (atom, quoted or literal) as a NUL-terminated string; NULL for
 * other types or a string with a NUL in it. */
const char *imap_arg_astring(const struct imap_arg *a);
/* Like astring but NIL also gives NULL: nstring. */
const char *imap_arg_nstring(const struct imap_arg *a);
bool imap_arg_is_atom(const struct imap_arg *a, const char *upper_name);
/* A number (RFC 3501 number: digits, at most 2^32-1 / 2^63-1). */
bool imap_arg_number(const struct imap_arg *a, uint32_t *n_r);
bool imap_arg_number64(const struct imap_arg *a, uint64_t *n_r);

/* ---- output ---- */

/* Append s as an IMAP string: an atom-safe string as quoted "..." (never
 * a bare atom, so clients never mistake it for NIL), one with CR, LF, NUL
 * or 8-bit bytes (unless utf8 is true) or over 1024 bytes as a literal. */
int imap_write_string(struct mp_buf *b, const char *s, size_t len, bool utf8);
/* NIL for NULL, else imap_write_string. */
int imap_write_nstring(struct mp_buf *b, const char *s, size_t len, bool utf8);

/* ---- mailbox names (RFC 3501 §5.1.3 modified UTF-7) ---- */

/* Decode a name as sent by a client into UTF-8 into b (NUL-terminated).
 * utf8_mode: the client enabled IMAP4rev2/UTF8=ACCEPT, the name is UTF-8
 * already (checked for valid UTF-8; '&' still decoded when it starts a
 * valid mUTF-7 sequence is NOT done: in UTF-8 mode '&' is literal).
 * MP_EINVAL for malformed mUTF-7 or invalid UTF-8. */
int imap_mutf7_decode(const char *s, size_t len, bool utf8_mode, struct mp_buf *b);
/* Encode a UTF-8 name for a client (mUTF-7 unless utf8_mode). */
int imap_mutf7_encode(const char *s, size_t len, bool utf8_mode, struct mp_buf *b);

/* ---- dates ---- */

/* date-time "dd-Mon-yyyy hh:mm:ss +zzzz" (day may be " d") -> unix seconds.
 * MP_EINVAL when malformed or out of range. */
int imap_parse_datetime(const char *s, size_t len, int64_t *t_r);
/* date "d-Mon-yyyy" / "dd-Mon-yyyy" -> unix seconds of 00:00:00 UTC that day. */
int imap_parse_date(const char *s, size_t len, int64_t *t_r);
/* unix seconds -> "dd-Mon-yyyy hh:mm:ss +0000" (quoted by the caller), in out (>= 27 bytes). */
void imap_format_datetime(int64_t t, char *out, size_t outlen);

/* ---- fetch attributes ---- */

enum imap_section_text {
	IMAP_SECT_NONE,                /* BODY[] or BODY[1.2] (the part's body) */
	IMAP_SECT_HEADER,
	IMAP_SECT_HEADER_FIELDS,
	IMAP_SECT_HEADER_FIELDS_NOT,
	IMAP_SECT_TEXT,
	IMAP_SECT_MIME,
};

#define IMAP_SECTION_MAX_PARTS 32

struct imap_section {
	uint32_t part[IMAP_SECTION_MAX_PARTS];  /* "1.2.3" -> {1,2,3} */
	unsigned nparts;
	enum imap_section_text text;
	const char **fields;           /* HEADER.FIELDS(.NOT): names as sent (arena) */
	size_t nfields;
};

enum imap_fetch_att_kind {
	IMAP_FA_FLAGS, IMAP_FA_INTERNALDATE, IMAP_FA_RFC822_SIZE, IMAP_FA_ENVELOPE,
	IMAP_FA_BODY,             /* BODY (non-extensible bodystructure) */
	IMAP_FA_BODYSTRUCTURE,
	IMAP_FA_UID, IMAP_FA_MODSEQ, IMAP_FA_EMAILID, IMAP_FA_THREADID,
	IMAP_FA_RFC822,           /* = BODY[] */
	IMAP_FA_RFC822_HEADER,    /* = BODY.PEEK[HEADER] */
	IMAP_FA_RFC822_TEXT,      /* = BODY[TEXT] */
	IMAP_FA_BODY_SECTION,     /* BODY[...] / BODY.PEEK[...] */
	IMAP_FA_BINARY,           /* BINARY[...] / BINARY.PEEK[...] */
	IMAP_FA_BINARY_SIZE,      /* BINARY.SIZE[...] */
	IMAP_FA_SAVEDATE,         /* RFC 8514: NIL is fine */
};

struct imap_fetch_att {
	enum imap_fetch_att_kind kind;
	bool peek;                 /* .PEEK: do not set \Seen */
	struct imap_section section;  /* BODY_SECTION, BINARY, BINARY_SIZE */
	bool partial;              /* <start.count> given */
	uint64_t partial_start;
	uint64_t partial_count;
};

/* One attribute atom (e.g. "body.peek[1.2.mime]<0.512>", case-insensitive).
 * Arena strings of the section (field names) are allocated from p's
 * current command, so the result is valid as long as the command.
 * MP_EINVAL with a static *error_r when malformed (BINARY with a text
 * part other than none, part 0, too many parts, bad partial...). */
int imap_fetch_att_parse(struct imap_parser *p, const char *s, size_t len,
			 struct imap_fetch_att *att_r, const char **error_r);

#endif
