/*
 * pop3_parse: POP3 command lines (RFC 1939 §3, RFC 2449 §4) and the
 * message transfer encoding (RFC 1939 §3: CRLF line ends, a leading '.'
 * doubled). Pure: no I/O.
 *
 * A command line is a keyword of 3-4 letters (case-insensitive) and up
 * to two arguments separated by single spaces; PASS takes the rest of the
 * line as one argument (passwords may contain spaces); AUTH's second
 * argument is an initial response. At most POP3_LINE_MAX octets with the
 * CRLF (RFC 2449 §4: 255).
 *
 * Never: accept a NUL or a bare CR in a command; accept a message number
 * with a sign, leading zeros beyond one digit, or over 2^31.
 */
#ifndef POP3_PARSE_H
#define POP3_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mp_buf;

#define POP3_LINE_MAX 255

enum pop3_cmd {
	POP3_USER, POP3_PASS, POP3_APOP, POP3_STAT, POP3_LIST, POP3_RETR, POP3_DELE,
	POP3_NOOP, POP3_RSET, POP3_QUIT, POP3_TOP, POP3_UIDL, POP3_CAPA, POP3_AUTH,
	POP3_STLS, POP3_UTF8,
};

struct pop3_command {
	enum pop3_cmd cmd;
	const char *arg[2];   /* point into the line given (NUL-terminated there) */
	size_t nargs;
};

/* line: one command without its line end, len bytes, writable (arguments
 * are NUL-terminated in place). 0, or MP_EINVAL with a static *error_r
 * ("unknown command", "too many arguments", ...). */
int pop3_parse(char *line, size_t len, struct pop3_command *cmd, const char **error_r);

/* A message number or count argument: digits only, 1..2^31-1 (0 allowed
 * when zero_ok, for TOP's line count). */
bool pop3_number(const char *s, bool zero_ok, uint32_t *n_r);

/* The octets RETR sends for a message (lines ended by CRLF; a bare LF
 * counts as CRLF), without the dot-stuffing and the final ".". */
uint64_t pop3_wire_size(const char *msg, size_t len);

/* Append msg to out as RETR/TOP send it: CRLF line ends, a leading '.'
 * doubled, a final CRLF if the message lacks one, then ".\r\n". When
 * top_lines >= 0, only the header, the empty line and that many body lines
 * (RFC 1939 TOP). 0 or MP_ENOMEM. */
int pop3_stuff(const char *msg, size_t len, int64_t top_lines, struct mp_buf *out);

#endif
