/*
 * smtp_parse: the pure server-side parsers of SMTP (RFC 5321) and the
 * extensions merpati-frontend speaks: a command-line splitter, a command
 * parser and an incremental DATA decoder.
 *
 * Bytes in, a result out: no I/O, no globals, no allocation (except what the
 * DATA decoder appends to the caller's mp_buf), every length bounded. Errors
 * come back as an SMTP reply triple (code, RFC 3463 enhanced code, short
 * text) that the server sends as is. This module never decides policy (who
 * may relay, which SIZE is too big, whether SMTPUTF8 was negotiated for a
 * recipient): it reports, the session state machine decides.
 */
#ifndef SMTP_PARSE_H
#define SMTP_PARSE_H

#include <stddef.h>
#include <stdint.h>

#include "mp_buf.h"

/* RFC 5321 §4.5.3.1: limits on the parts of an address. PATH counts the
 * whole path as sent, angle brackets and any source route included. */
#define SMTP_LOCAL_MAX 64
#define SMTP_DOMAIN_MAX 255
#define SMTP_PATH_MAX 256
#define SMTP_LABEL_MAX 63
/* RFC 5321 §4.5.3.1.4: 512 octets with CRLF; servers pass more for ESMTP
 * parameters (SMTP_LINE_MAX_ESMTP is the suggested value). */
#define SMTP_LINE_MAX_RFC 512
#define SMTP_LINE_MAX_ESMTP 2048
/* RFC 5322 §2.1.1: a message line holds at most 998 octets before CRLF. */
#define SMTP_TEXT_LINE_MAX 998
#define SMTP_ENVID_MAX 100      /* RFC 3461 §4.4, encoded length */
#define SMTP_ORCPT_MAX 500      /* RFC 3461 §4.2, encoded length */
#define SMTP_AUTH_PARAM_MAX 256 /* RFC 4954 §5 AUTH=, decoded length */

/* A reply to send: "<code> <enhanced> <text>". Strings are static. */
struct smtp_error {
	int code;             /* e.g. 501 */
	const char *enhanced; /* e.g. "5.5.4" */
	const char *text;     /* e.g. "Syntax: MAIL FROM:<address>" */
};

/* ------------------------------------------------------------ lines */

/* Splits the command stream into lines. Commands end with CRLF; a bare LF
 * also ends one (as Postfix accepts). A CR elsewhere stays in the line and
 * smtp_parse_command refuses it. */
struct smtp_line_reader {
	size_t max_len; /* longest line, terminator included (RFC: 512) */
	int skipping;   /* discarding the rest of an over-long line */
};

void smtp_line_reader_init(struct smtp_line_reader *r, size_t max_len);

/* Find the next line in buf[0..len). Returns
 *   MP_OK:      *line_r is the line without its terminator (a slice of buf);
 *               drop *consumed_r bytes (terminator included) afterwards.
 *   MP_AGAIN:   no complete line yet; drop *consumed_r bytes (non-zero only
 *               while an over-long line is being discarded) and call again
 *               with more input. Keep up to max_len bytes buffered.
 *   MP_ETOOBIG: an over-long line has now been skipped through its LF; drop
 *               *consumed_r bytes and answer *err (500 5.5.6). Replying only
 *               now keeps replies in order for pipelining clients.
 * Any split of the input gives the same lines and results. */
int smtp_line_next(struct smtp_line_reader *r, const char *buf, size_t len,
		   struct mp_slice *line_r, size_t *consumed_r, struct smtp_error *err);

/* ------------------------------------------------------------ commands */

enum smtp_verb {
	SMTP_VERB_UNKNOWN = 0,
	SMTP_VERB_HELO,
	SMTP_VERB_EHLO,
	SMTP_VERB_MAIL,
	SMTP_VERB_RCPT,
	SMTP_VERB_DATA,
	SMTP_VERB_BDAT,
	SMTP_VERB_RSET,
	SMTP_VERB_NOOP,
	SMTP_VERB_QUIT,
	SMTP_VERB_HELP,
	SMTP_VERB_VRFY,
	SMTP_VERB_EXPN,
	SMTP_VERB_STARTTLS,
	SMTP_VERB_AUTH,
};

/* Upper-case name of a verb, "UNKNOWN" for SMTP_VERB_UNKNOWN. */
const char *smtp_verb_name(enum smtp_verb verb);

/* Extensions the server advertised in its EHLO reply. A MAIL/RCPT
 * parameter of an extension not in the mask is refused with 555 5.5.4, as
 * an unknown one is (after HELO pass 0: no parameter is valid). */
#define SMTP_EXT_SIZE (1u << 0)       /* RFC 1870: SIZE= */
#define SMTP_EXT_8BITMIME (1u << 1)   /* RFC 6152: BODY=7BIT|8BITMIME */
#define SMTP_EXT_BINARYMIME (1u << 2) /* RFC 3030: BODY=BINARYMIME */
#define SMTP_EXT_SMTPUTF8 (1u << 3)   /* RFC 6531: SMTPUTF8 */
#define SMTP_EXT_DSN (1u << 4)        /* RFC 3461: RET, ENVID, NOTIFY, ORCPT */
#define SMTP_EXT_AUTH (1u << 5)       /* RFC 4954 §5: AUTH= */
#define SMTP_EXT_DEFAULT (SMTP_EXT_SIZE | SMTP_EXT_8BITMIME | SMTP_EXT_SMTPUTF8 | \
			  SMTP_EXT_DSN | SMTP_EXT_AUTH)

/* struct smtp_address flags */
#define SMTP_ADDR_NULL (1u << 0)       /* the null reverse-path <> */
#define SMTP_ADDR_POSTMASTER (1u << 1) /* RCPT TO:<Postmaster>, no domain */
#define SMTP_ADDR_UTF8 (1u << 2)       /* non-ASCII local part or domain */
#define SMTP_ADDR_LITERAL (1u << 3)    /* domain is an address literal [...] */
#define SMTP_ADDR_ROUTE (1u << 4)      /* a source route was given (dropped) */
#define SMTP_ADDR_QUOTED (1u << 5)     /* canonical local part is quoted */

/* A mailbox in canonical form: "local@domain". A quoted local part whose
 * content is a plain dot-string is unquoted (RFC 5321 §4.1.2 SHOULD), any
 * other keeps its quotes with only '"' and '\' escaped. The domain is as
 * sent (case kept; a literal keeps its brackets). Lengths checked against
 * the SMTP_*_MAX limits as sent on the wire. */
struct smtp_address {
	char addr[SMTP_PATH_MAX + 1]; /* NUL-terminated; "" for <> */
	size_t local_len;             /* addr[0 .. local_len) */
	size_t domain_len;            /* after the '@'; 0 for <> and <Postmaster> */
	unsigned flags;               /* SMTP_ADDR_* */
};

/* Which ESMTP parameters were given (each at most once). */
#define SMTP_PARAM_SIZE (1u << 0)
#define SMTP_PARAM_BODY (1u << 1)
#define SMTP_PARAM_SMTPUTF8 (1u << 2)
#define SMTP_PARAM_RET (1u << 3)
#define SMTP_PARAM_ENVID (1u << 4)
#define SMTP_PARAM_AUTH (1u << 5)
#define SMTP_PARAM_NOTIFY (1u << 6)
#define SMTP_PARAM_ORCPT (1u << 7)

enum smtp_body { SMTP_BODY_NONE = 0, SMTP_BODY_7BIT, SMTP_BODY_8BITMIME, SMTP_BODY_BINARYMIME };
enum smtp_ret { SMTP_RET_NONE = 0, SMTP_RET_FULL, SMTP_RET_HDRS };

/* RFC 3461 §4.1 NOTIFY bits; NEVER is never combined with the others. */
#define SMTP_NOTIFY_NEVER (1u << 0)
#define SMTP_NOTIFY_SUCCESS (1u << 1)
#define SMTP_NOTIFY_FAILURE (1u << 2)
#define SMTP_NOTIFY_DELAY (1u << 3)

struct smtp_helo_arg {
	struct mp_slice domain; /* borrowed from the line; a literal keeps [] */
	unsigned flags;         /* SMTP_ADDR_LITERAL, SMTP_ADDR_UTF8 */
};

struct smtp_mail_arg {
	struct smtp_address from;
	unsigned params;     /* SMTP_PARAM_* given */
	uint64_t size;       /* SIZE=, 0 if not given */
	enum smtp_body body; /* BODY= */
	enum smtp_ret ret;   /* RET= */
	char envid[SMTP_ENVID_MAX + 1];     /* ENVID=, xtext decoded */
	char auth[SMTP_AUTH_PARAM_MAX + 1]; /* AUTH=, decoded: "<>" or a mailbox */
};

struct smtp_rcpt_arg {
	struct smtp_address to;
	unsigned params; /* SMTP_PARAM_* given */
	unsigned notify; /* SMTP_NOTIFY_* bits, 0 if not given */
	/* ORCPT= as "addr-type;address" with the address xtext decoded. */
	char orcpt[SMTP_ORCPT_MAX + 1];
	size_t orcpt_type_len; /* orcpt[0 .. orcpt_type_len) is the addr-type */
};

struct smtp_bdat_arg {
	uint64_t size; /* chunk octets that follow the command line */
	int last;
};

struct smtp_auth_arg {
	struct mp_slice mech;    /* borrowed: the SASL mechanism, case as sent */
	struct mp_slice initial; /* borrowed: initial response as sent ("=" = empty) */
	int has_initial;
};

/* A parsed command. Slices point into the line passed to
 * smtp_parse_command and die with it. */
struct smtp_command {
	enum smtp_verb verb;
	/* Everything after the verb and its spaces, trailing SP/HTAB removed
	 * (RFC 5321 §4.1.1 asks servers to tolerate trailing white space);
	 * the argument of VRFY, EXPN, HELP and NOOP. Borrowed. */
	struct mp_slice arg;
	union {
		struct smtp_helo_arg helo; /* HELO, EHLO */
		struct smtp_mail_arg mail; /* MAIL */
		struct smtp_rcpt_arg rcpt; /* RCPT */
		struct smtp_bdat_arg bdat; /* BDAT */
		struct smtp_auth_arg auth; /* AUTH */
	} u;
};

/* Parse one command line (without its terminator, as smtp_line_next gives
 * it). ext is the SMTP_EXT_* mask advertised to this client. Returns MP_OK,
 * or MP_EINVAL with the reply in *err; on error only cmd->verb is
 * meaningful (SMTP_VERB_UNKNOWN for an unknown verb: 500 5.5.1). A line
 * holding NUL, CR or LF is refused with 500 5.5.2. For BDAT, an error means
 * the chunk length is unknown, so the server cannot resynchronise: it
 * should answer and close the connection. */
int smtp_parse_command(const char *line, size_t len, unsigned ext, struct smtp_command *cmd,
		       struct smtp_error *err);

/* RFC 6531 §3.4: a non-ASCII address in a transaction without SMTPUTF8.
 * Returns MP_OK if the address may be used, or MP_EINVAL with 553 5.6.7. */
int smtp_check_utf8(const struct smtp_address *addr, int smtputf8, struct smtp_error *err);

/* ------------------------------------------------------------ DATA */

enum smtp_data_state {
	SMTP_DATA_LINE_START, /* after CRLF (or at the start of the data) */
	SMTP_DATA_TEXT,       /* inside a line */
	SMTP_DATA_CR,         /* after a CR inside a line */
	SMTP_DATA_DOT,        /* after a '.' at the start of a line */
	SMTP_DATA_DOT_CR,     /* after "." CR at the start of a line */
	SMTP_DATA_DONE,       /* CRLF "." CRLF seen */
};

/* struct smtp_data flags. The first two are facts for the server; the
 * others are errors: output stops at the first of them, but the decoder
 * keeps reading to the end marker so the session stays in sync. */
#define SMTP_DATA_8BIT (1u << 0)      /* some octet has the high bit set */
#define SMTP_DATA_LONG_LINE (1u << 1) /* some line over 998 octets */
#define SMTP_DATA_BARE_CR (1u << 2)   /* CR not followed by LF */
#define SMTP_DATA_BARE_LF (1u << 3)   /* LF not preceded by CR */
#define SMTP_DATA_NUL (1u << 4)       /* NUL octet */
#define SMTP_DATA_TOO_BIG (1u << 5)   /* over the size limit */
#define SMTP_DATA_ERRORS (SMTP_DATA_BARE_CR | SMTP_DATA_BARE_LF | SMTP_DATA_NUL | \
			  SMTP_DATA_TOO_BIG)

/* Decoder of the DATA stream (RFC 5321 §4.1.4, §4.5.2). The only end
 * marker is CRLF "." CRLF (the data may also start with "." CRLF): a bare
 * LF or CR never ends it ("\n.\n", "\r\n.\n", "\n.\r\n" are data, and an
 * error), which defeats SMTP smuggling. */
struct smtp_data {
	enum smtp_data_state state;
	unsigned flags;      /* SMTP_DATA_* */
	uint64_t limit;      /* most unstuffed octets accepted */
	uint64_t size;       /* unstuffed octets so far, also past an error */
	uint64_t line_len;   /* octets of the current line so far */
	uint64_t long_lines; /* lines over SMTP_TEXT_LINE_MAX */
};

void smtp_data_init(struct smtp_data *d, uint64_t limit);

/* Feed in[0..len). Appends the dot-unstuffed message (CRLFs kept; the end
 * marker not) to out, until the first error. Returns MP_AGAIN when all
 * input was used and the end marker is still to come (*consumed_r = len),
 * or MP_OK once the end marker was read: *consumed_r counts the input up to
 * and including it; what follows belongs to the next command. Feeding a
 * finished decoder returns MP_OK and consumes nothing. Any split of the
 * input gives the same output, flags and consumed total. An mp_buf failure
 * (MP_ENOMEM, or MP_ENOSPC from out's own limit) is returned as is and
 * leaves the decoder unusable. Drain out between calls to stream. */
int smtp_data_feed(struct smtp_data *d, const char *in, size_t len, struct mp_buf *out,
		   size_t *consumed_r);

/* The verdict on a finished message: MP_OK (accept), MP_AGAIN (not finished
 * yet), or with *err set: MP_EPROTO for bare CR/LF (550 5.6.11),
 * MP_EINVAL for NUL (554 5.6.0), MP_ETOOBIG over the limit (552 5.3.4), in
 * that order when several apply. Long lines are only reported in flags and
 * long_lines: the server decides. */
int smtp_data_result(const struct smtp_data *d, struct smtp_error *err);

#endif
