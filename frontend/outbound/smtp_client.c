/*
 * smtp_client: one message to one domain over SMTP, blocking with
 * deadlines (see smtp_client.h for the contract). The pure parts come
 * first (reply parser, dot-stuffer, xtext), then the connection, then the
 * session as an explicit state machine (smtp_client_enter_state logs every
 * transition), then the delivery loop over hosts and addresses.
 *
 * Never: wait without a deadline; write a caller's string that holds CR,
 * LF or other controls; keep more than SMTP_REPLY_LINE_MAX plus one read
 * of unparsed input; act on plaintext that arrived after "220" to
 * STARTTLS (RFC 3207 §4.2: the TLS session starts from nothing); move to
 * another host once a server has answered MAIL FROM (its answers are the
 * result of this attempt).
 */
#include "smtp_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fe_tls.h"
#include "mp_buf.h"
#include "mp_error.h"
#include "mp_log.h"

/* ------------------------------------------------------------ reply parser */

void smtp_reply_parser_init(struct smtp_reply_parser *p)
{
	p->state = 0;
	p->reply.code = 0;
	p->reply.enhanced[0] = '\0';
	p->reply.nlines = 0;
	p->reply.text_len = 0;
	p->reply.truncated = 0;
	p->reply.text[0] = '\0';
}

static int smtp_is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* RFC 3463 §2 / RFC 2034 §4: status-code = class "." subject "." detail,
 * class 2/4/5 (here: the reply's first digit), subject and detail 1*3
 * digits, then SP or the end of the text. Returns the octets to strip
 * (code and one SP), 0 if t does not start with one; copies it to out. */
static size_t smtp_enhanced_parse(const char *t, size_t n, char cls, char out[12])
{
	if (n < 5 || t[0] != cls || t[1] != '.')
		return 0;
	size_t i = 2;
	for (int part = 0; part < 2; part++) {
		size_t start = i;
		while (i < n && i - start < 4 && smtp_is_digit(t[i]))
			i++;
		if (i == start || i - start > 3)
			return 0;
		if (part == 0) {
			if (i >= n || t[i] != '.')
				return 0;
			i++;
		}
	}
	if (i < n && t[i] != ' ')
		return 0;
	if (out != NULL) {
		memcpy(out, t, i);
		out[i] = '\0';
	}
	return i < n ? i + 1 : i;
}

static void smtp_reply_append(struct smtp_reply *r, const char *t, size_t n)
{
	size_t room = SMTP_REPLY_TEXT_MAX - 1 - r->text_len;
	size_t need = n + (r->nlines > 0 ? 1 : 0);
	if (r->truncated)
		return;
	if (need > room) {
		r->truncated = 1;
		return;
	}
	if (r->nlines > 0)
		r->text[r->text_len++] = '\n';
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)t[i];
		r->text[r->text_len++] = (c < 0x20 && c != '\t') || c == 0x7f ? '?' : (char)c;
	}
	r->text[r->text_len] = '\0';
}

/* One line without its line ending. *final_r: the reply's last line. */
static int smtp_reply_line(struct smtp_reply_parser *p, const char *line, size_t n,
			   int *final_r, const char **error_r)
{
	struct smtp_reply *r = &p->reply;
	if (n < 3 || line[0] < '2' || line[0] > '5' || !smtp_is_digit(line[1]) ||
	    !smtp_is_digit(line[2])) {
		*error_r = "malformed reply code";
		return MP_EPROTO;
	}
	if (n > 3 && line[3] != ' ' && line[3] != '-') {
		*error_r = "malformed reply separator";
		return MP_EPROTO;
	}
	int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
	if (r->nlines > 0 && code != r->code) {
		/* RFC 5321 §4.2.1: every line of a multi-line reply carries
		 * the same code. */
		*error_r = "reply code changes within a multi-line reply";
		return MP_EPROTO;
	}
	if (r->nlines >= SMTP_REPLY_LINES_MAX) {
		*error_r = "too many reply lines";
		return MP_ETOOBIG;
	}
	const char *t = n > 4 ? line + 4 : line + n;
	size_t tn = n > 4 ? n - 4 : 0;
	if (r->nlines == 0) {
		r->code = code;
		size_t skip = smtp_enhanced_parse(t, tn, line[0], r->enhanced);
		t += skip;
		tn -= skip;
	} else if (r->enhanced[0] != '\0') {
		/* RFC 2034 §4: each line of the reply repeats the code. */
		size_t skip = smtp_enhanced_parse(t, tn, line[0], NULL);
		t += skip;
		tn -= skip;
	}
	smtp_reply_append(r, t, tn);
	r->nlines++;
	*final_r = n == 3 || line[3] == ' ';
	return 0;
}

int smtp_reply_feed(struct smtp_reply_parser *p, const char *data, size_t len,
		    size_t *consumed_r, const char **error_r)
{
	*consumed_r = 0;
	if (p->state == 2)
		smtp_reply_parser_init(p);
	size_t pos = 0;
	for (;;) { /* each pass consumes one line or returns */
		size_t avail = len - pos;
		size_t scan = avail < SMTP_REPLY_LINE_MAX ? avail : SMTP_REPLY_LINE_MAX;
		const char *lf = scan > 0 ? memchr(data + pos, '\n', scan) : NULL;
		if (lf == NULL) {
			*consumed_r = pos;
			if (avail >= SMTP_REPLY_LINE_MAX) {
				*error_r = "reply line too long";
				return MP_ETOOBIG;
			}
			return MP_AGAIN;
		}
		size_t n = (size_t)(lf - (data + pos));
		size_t total = n + 1;
		/* CRLF; a bare LF too (lenient in what we accept). */
		if (n > 0 && data[pos + n - 1] == '\r')
			n--;
		int final = 0;
		p->state = 1;
		int ret = smtp_reply_line(p, data + pos, n, &final, error_r);
		if (ret != 0) {
			*consumed_r = pos;
			return ret;
		}
		pos += total;
		if (final) {
			p->state = 2;
			*consumed_r = pos;
			return MP_OK;
		}
	}
}

/* ------------------------------------------------------------ dot-stuffing */

void smtp_dotstuff_init(struct smtp_dotstuff *ds)
{
	ds->state = 0;
}

size_t smtp_dotstuff(struct smtp_dotstuff *ds, const char *in, size_t len, char *out)
{
	size_t o = 0;
	for (size_t i = 0; i < len; i++) {
		char c = in[i];
		if (ds->state == 2) {
			/* A CR ends a line whatever follows it: a bare CR becomes
			 * CRLF so that no receiver can see "<CR>.<CR>" or
			 * "<LF>.<LF>" as the end of data (SMTP smuggling). */
			out[o++] = '\r';
			out[o++] = '\n';
			ds->state = 0;
			if (c == '\n')
				continue;
		}
		if (c == '\r') {
			ds->state = 2;
			continue;
		}
		if (c == '\n') {
			out[o++] = '\r';
			out[o++] = '\n';
			ds->state = 0;
			continue;
		}
		/* RFC 5321 §4.5.2: a line starting with "." gets one more. */
		if (ds->state == 0 && c == '.')
			out[o++] = '.';
		out[o++] = c;
		ds->state = 1;
	}
	return o;
}

size_t smtp_dotstuff_end(struct smtp_dotstuff *ds, char *out)
{
	size_t o = 0;
	if (ds->state != 0) {
		out[o++] = '\r';
		out[o++] = '\n';
	}
	out[o++] = '.';
	out[o++] = '\r';
	out[o++] = '\n';
	ds->state = 0;
	return o;
}

/* ------------------------------------------------------------ bodies */

static long smtp_mem_body_read(void *ctx, char *buf, size_t len)
{
	struct smtp_mem_body *m = ctx;
	size_t n = m->len - m->pos;
	if (n > len)
		n = len;
	if (n > (size_t)LONG_MAX)
		n = (size_t)LONG_MAX;
	memcpy(buf, m->data + m->pos, n);
	m->pos += n;
	return (long)n;
}

void smtp_body_from_mem(struct smtp_body *b, struct smtp_mem_body *m, const char *data,
			size_t len)
{
	m->data = data;
	m->len = len;
	m->pos = 0;
	b->size = len;
	b->read = smtp_mem_body_read;
	b->ctx = m;
}

const char *smtp_rcpt_status_name(enum smtp_rcpt_status s)
{
	switch (s) {
	case SMTP_RCPT_DELIVERED:
		return "delivered";
	case SMTP_RCPT_TEMPFAIL:
		return "tempfail";
	case SMTP_RCPT_PERMFAIL:
		return "permfail";
	}
	return "?";
}

/* ------------------------------------------------------------ the session */

#define SMTP_CLIENT_RBUF (SMTP_REPLY_LINE_MAX + 4096)
#define SMTP_CLIENT_CHUNK (16 * 1024)      /* body octets per write */
#define SMTP_CLIENT_CMD_LIMIT (512 * 1024) /* one pipelined batch */
#define SMTP_CLIENT_DEFAULT_PORT 25
#define SMTP_CLIENT_DEFAULT_ADDRS 10
#define SMTP_ENVID_MAX 100                 /* RFC 3461 §4.4 */
#define SMTP_ORCPT_MAX 500                 /* RFC 3461 §4.2 */

enum smtp_client_state {
	SMTP_CS_CONNECT,
	SMTP_CS_GREETING,
	SMTP_CS_EHLO,
	SMTP_CS_HELO,
	SMTP_CS_STARTTLS,
	SMTP_CS_TLS,
	SMTP_CS_MAIL,
	SMTP_CS_RCPT,
	SMTP_CS_DATA,
	SMTP_CS_BODY,
	SMTP_CS_DOT,
	SMTP_CS_QUIT,
	SMTP_CS_DONE,
};

/* For "... while <what>" in messages. */
static const char *const smtp_client_state_what[] = {
	[SMTP_CS_CONNECT] = "connecting",
	[SMTP_CS_GREETING] = "receiving the initial greeting",
	[SMTP_CS_EHLO] = "performing the EHLO handshake",
	[SMTP_CS_HELO] = "performing the HELO handshake",
	[SMTP_CS_STARTTLS] = "sending STARTTLS",
	[SMTP_CS_TLS] = "performing the TLS handshake",
	[SMTP_CS_MAIL] = "sending MAIL FROM",
	[SMTP_CS_RCPT] = "sending RCPT TO",
	[SMTP_CS_DATA] = "sending DATA",
	[SMTP_CS_BODY] = "sending the message body",
	[SMTP_CS_DOT] = "sending the end of data",
	[SMTP_CS_QUIT] = "sending QUIT",
	[SMTP_CS_DONE] = "done",
};

#define SMTP_EXT_STARTTLS 0x01u
#define SMTP_EXT_SIZE 0x02u
#define SMTP_EXT_PIPELINING 0x04u
#define SMTP_EXT_8BITMIME 0x08u
#define SMTP_EXT_SMTPUTF8 0x10u
#define SMTP_EXT_DSN 0x20u
#define SMTP_EXT_ENHANCED 0x40u

enum smtp_rcpt_phase { SMTP_RP_PENDING, SMTP_RP_ACCEPTED, SMTP_RP_FINAL };

/* What one try at an address leads to. */
enum smtp_try {
	SMTP_TRY_NEXT,      /* no session: try the next address */
	SMTP_TRY_TLS_AGAIN, /* TLS handshake failed: same address, plaintext */
	SMTP_TRY_DONE,      /* a transaction happened (or was refused) */
	SMTP_TRY_FATAL,     /* out of memory */
};

struct smtp_session {
	const struct smtp_client_conf *conf;  /* borrowed */
	struct smtp_client_timeouts t;        /* resolved defaults */
	const struct smtp_envelope *env;      /* borrowed */
	const struct smtp_body *body;         /* borrowed */
	int64_t deadline;                     /* 0 = none */
	uint16_t port;
	struct smtp_result *res;              /* borrowed: the caller's */
	enum smtp_client_state state;

	int fd;                               /* owned; -1 when closed */
	struct fe_tls_stream *tls;            /* owned */
	char host[FE_DNS_NAME_MAX + 1];       /* MX name; "" for a literal */
	char addr[64];
	char peer[FE_DNS_NAME_MAX + 80];      /* "host[addr]:port" */
	char rbuf[SMTP_CLIENT_RBUF];          /* unparsed input */
	size_t rlen;
	struct smtp_reply_parser parser;
	const char *io_error;                 /* static: why the last I/O failed */
	int io_errno;

	unsigned ext;                         /* SMTP_EXT_* of the last EHLO */
	uint64_t size_limit;                  /* SIZE value; 0 = none */

	enum smtp_rcpt_phase rphase[SMTP_CLIENT_MAX_RCPTS];

	/* The last session-level failure: every recipient's result when no
	 * address gives a session. */
	int fail_code;
	char fail_enhanced[12];
	char fail_text[SMTP_CLIENT_TEXT_MAX];

	struct mp_buf cmd;                    /* commands being sent */
};

static int64_t smtp_now_ms(void)
{
	return fe_dns_now_ms();
}

static void smtp_client_enter_state(struct smtp_session *s, enum smtp_client_state st)
{
	mp_log_debug("smtp_out_state", "peer=%s from=%s to=%s", s->peer,
		     smtp_client_state_what[s->state], smtp_client_state_what[st]);
	s->state = st;
}

static int64_t smtp_phase_deadline(const struct smtp_session *s, int ms)
{
	int64_t d = smtp_now_ms() + ms;
	if (s->deadline != 0 && s->deadline < d)
		d = s->deadline;
	return d;
}

/* Text for a result: a reply's lines joined with ' '. */
static void smtp_reply_flat(const struct smtp_reply *r, char *out, size_t size)
{
	size_t n = r->text_len < size - 1 ? r->text_len : size - 1;
	for (size_t i = 0; i < n; i++)
		out[i] = r->text[i] == '\n' ? ' ' : r->text[i];
	out[n] = '\0';
}

/* The enhanced code for a result, its class forced to the status's: a 5xx
 * we treat as temporary must not read as permanent in a DSN. */
static void smtp_enhanced_for(enum smtp_rcpt_status st, const char *enh, char out[12])
{
	char cls = st == SMTP_RCPT_DELIVERED ? '2' : st == SMTP_RCPT_TEMPFAIL ? '4' : '5';
	if (enh == NULL || enh[0] == '\0')
		enh = "x.0.0";
	snprintf(out, 12, "%c%s", cls, enh + 1);
}

static void smtp_rcpt_set(struct smtp_session *s, size_t i, enum smtp_rcpt_status st,
			  int code, const char *enh, const char *text)
{
	struct smtp_rcpt_result *rr = &s->res->rcpts[i];
	rr->status = st;
	rr->code = code;
	smtp_enhanced_for(st, enh, rr->enhanced);
	snprintf(rr->text, sizeof(rr->text), "%s", text);
	s->rphase[i] = SMTP_RP_FINAL;
}

static void smtp_rcpt_set_reply(struct smtp_session *s, size_t i, enum smtp_rcpt_status st,
				const struct smtp_reply *r)
{
	char text[SMTP_CLIENT_TEXT_MAX];
	smtp_reply_flat(r, text, sizeof(text));
	smtp_rcpt_set(s, i, st, r->code, r->enhanced, text);
}

static enum smtp_rcpt_status smtp_status_of(int code)
{
	return code >= 500 ? SMTP_RCPT_PERMFAIL :
	       code >= 400 ? SMTP_RCPT_TEMPFAIL : SMTP_RCPT_DELIVERED;
}

/* Every recipient not yet final (pending or accepted) gets this result. */
static void smtp_rcpts_fail_open(struct smtp_session *s, enum smtp_rcpt_status st, int code,
				 const char *enh, const char *text)
{
	for (size_t i = 0; i < s->env->nrcpts; i++)
		if (s->rphase[i] != SMTP_RP_FINAL)
			smtp_rcpt_set(s, i, st, code, enh, text);
}

static void smtp_rcpts_fail_open_reply(struct smtp_session *s, enum smtp_rcpt_status st,
				       const struct smtp_reply *r)
{
	for (size_t i = 0; i < s->env->nrcpts; i++)
		if (s->rphase[i] != SMTP_RP_FINAL)
			smtp_rcpt_set_reply(s, i, st, r);
}

static void smtp_session_fail(struct smtp_session *s, int code, const char *enh,
			      const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void smtp_session_fail(struct smtp_session *s, int code, const char *enh,
			      const char *fmt, ...)
{
	s->fail_code = code;
	snprintf(s->fail_enhanced, sizeof(s->fail_enhanced), "%s", enh);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->fail_text, sizeof(s->fail_text), fmt, ap);
	va_end(ap);
	char q[256];
	mp_log_info("smtp_out_session_fail", "peer=%s code=%d status=%s text=%s", s->peer,
		    code, enh, mp_log_quote(q, sizeof(q), s->fail_text, strlen(s->fail_text)));
}

static void smtp_session_fail_reply(struct smtp_session *s, const struct smtp_reply *r)
{
	char text[SMTP_CLIENT_TEXT_MAX];
	smtp_reply_flat(r, text, sizeof(text));
	smtp_session_fail(s, r->code, r->enhanced[0] ? r->enhanced : "4.0.0",
			  "%s said: %s", s->peer, text);
}

/* Text for an I/O failure in the current state. */
static void smtp_io_text(const struct smtp_session *s, int err, char *out, size_t size)
{
	const char *what = smtp_client_state_what[s->state];
	if (err == MP_ETIMEDOUT)
		snprintf(out, size, "conversation with %s timed out while %s", s->peer, what);
	else if (err == MP_EPROTO)
		snprintf(out, size, "%s sent a malformed reply while %s: %s", s->peer, what,
			 s->io_error != NULL ? s->io_error : "?");
	else
		snprintf(out, size, "lost connection with %s while %s%s%s", s->peer, what,
			 s->io_errno != 0 ? ": " : "",
			 s->io_errno != 0 ? strerror(s->io_errno) : "");
}

/* ------------------------------------------------------------ connection I/O */

static void smtp_conn_close(struct smtp_session *s)
{
	fe_tls_stream_free(&s->tls);
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
	s->rlen = 0;
	smtp_reply_parser_init(&s->parser);
}

/* Waits for events on the socket until deadline: 0, or MP_ETIMEDOUT/EIO. */
static int smtp_conn_wait(struct smtp_session *s, short events, int64_t deadline)
{
	for (;;) { /* bounded by the deadline */
		int64_t left = deadline - smtp_now_ms();
		if (left <= 0)
			return MP_ETIMEDOUT;
		struct pollfd pfd = { s->fd, events, 0 };
		int n = poll(&pfd, 1, left > 60000 ? 60000 : (int)left);
		if (n > 0)
			return 0; /* POLLERR/POLLHUP too: the next call reports it */
		if (n < 0 && errno != EINTR) {
			s->io_errno = errno;
			return MP_EIO;
		}
	}
}

static int smtp_conn_write(struct smtp_session *s, const char *buf, size_t len,
			   int64_t deadline)
{
	s->io_errno = 0;
	if (s->tls != NULL)
		return fe_tls_stream_write(s->tls, buf, len, deadline);
	size_t off = 0;
	while (off < len) { /* each pass writes or waits until the deadline */
		ssize_t n = send(s->fd, buf + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n > 0) {
			off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			int ret = smtp_conn_wait(s, POLLOUT, deadline);
			if (ret != 0)
				return ret;
			continue;
		}
		s->io_errno = n < 0 ? errno : 0;
		return MP_EIO;
	}
	return 0;
}

static long smtp_conn_recv(struct smtp_session *s, char *buf, size_t len, int64_t deadline)
{
	s->io_errno = 0;
	if (s->tls != NULL)
		return fe_tls_stream_read(s->tls, buf, len, deadline);
	for (;;) { /* bounded by the deadline */
		ssize_t n = recv(s->fd, buf, len, MSG_DONTWAIT);
		if (n >= 0)
			return (long)n;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			int ret = smtp_conn_wait(s, POLLIN, deadline);
			if (ret != 0)
				return ret;
			continue;
		}
		s->io_errno = errno;
		return MP_EIO;
	}
}

/* Reads one reply: 0 with *r_r (valid until the next read), or
 * MP_ETIMEDOUT / MP_EIO (also at EOF) / MP_EPROTO. */
static int smtp_read_reply(struct smtp_session *s, int ms, const struct smtp_reply **r_r)
{
	int64_t deadline = smtp_phase_deadline(s, ms);
	s->io_error = NULL;
	for (;;) { /* each pass parses, then reads more or fails */
		size_t consumed = 0;
		const char *err = NULL;
		int ret = smtp_reply_feed(&s->parser, s->rbuf, s->rlen, &consumed, &err);
		memmove(s->rbuf, s->rbuf + consumed, s->rlen - consumed);
		s->rlen -= consumed;
		if (ret == MP_OK) {
			*r_r = &s->parser.reply;
			char q[200];
			mp_log_debug("smtp_out_reply", "peer=%s code=%d text=%s", s->peer,
				     s->parser.reply.code,
				     mp_log_quote(q, sizeof(q), s->parser.reply.text,
						  s->parser.reply.text_len));
			return 0;
		}
		if (ret != MP_AGAIN) {
			s->io_error = err;
			return MP_EPROTO;
		}
		if (s->rlen >= sizeof(s->rbuf)) {
			/* Cannot happen: the parser fails a line longer than
			 * SMTP_REPLY_LINE_MAX first. */
			s->io_error = "input buffer full";
			return MP_EPROTO;
		}
		long n = smtp_conn_recv(s, s->rbuf + s->rlen, sizeof(s->rbuf) - s->rlen, deadline);
		if (n == 0) {
			s->io_errno = 0;
			return MP_EIO;
		}
		if (n < 0)
			return (int)n;
		s->rlen += (size_t)n;
	}
}

/* Sends a command line built in s->cmd. */
static int smtp_send_cmd(struct smtp_session *s, int ms)
{
	int ret = smtp_conn_write(s, s->cmd.data, s->cmd.len, smtp_phase_deadline(s, ms));
	mp_buf_reset(&s->cmd);
	return ret;
}

static int smtp_send_line(struct smtp_session *s, const char *line, int ms)
{
	mp_buf_reset(&s->cmd);
	int ret = mp_buf_printf(&s->cmd, "%s\r\n", line);
	if (ret != 0)
		return ret;
	return smtp_send_cmd(s, ms);
}

/* QUIT, best effort and short (RFC 5321 §4.1.1.10), then close. */
static void smtp_quit_close(struct smtp_session *s)
{
	if (s->fd >= 0) {
		smtp_client_enter_state(s, SMTP_CS_QUIT);
		if (smtp_send_line(s, "QUIT", s->t.quit_ms) == 0) {
			const struct smtp_reply *r = NULL;
			(void)smtp_read_reply(s, s->t.quit_ms, &r);
		}
	}
	smtp_conn_close(s);
}

/* ------------------------------------------------------------ parameters */

/* RFC 3461 §4: xtext, "+" HEXCHAR for octets outside "!".."~" and for
 * "+" and "=". */
static int smtp_append_xtext(struct mp_buf *b, const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
		int ret;
		if (*p < '!' || *p > '~' || *p == '+' || *p == '=')
			ret = mp_buf_printf(b, "+%02X", *p);
		else
			ret = mp_buf_append(b, p, 1);
		if (ret != 0)
			return ret;
	}
	return 0;
}

/* An address we may put between < and >: no controls, no angle brackets,
 * 8-bit only with SMTPUTF8. */
static int smtp_path_ok(const char *a, int utf8, int may_be_empty)
{
	size_t n = strnlen(a, SMTP_CLIENT_MAX_PATH + 1);
	if (n > SMTP_CLIENT_MAX_PATH || (n == 0 && !may_be_empty))
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)a[i];
		if (c < 0x20 || c == 0x7f || c == '<' || c == '>')
			return 0;
		if (c >= 0x80 && !utf8)
			return 0;
	}
	return 1;
}

static int smtp_printable_ok(const char *s, size_t max)
{
	size_t n = strnlen(s, max + 1);
	if (n == 0 || n > max)
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7f)
			return 0;
	return 1;
}

static int smtp_check_input(const struct smtp_client_conf *conf,
			    const struct smtp_envelope *env, const struct smtp_body *body,
			    const char **why_r)
{
	if (conf == NULL || env == NULL || body == NULL || body->read == NULL) {
		*why_r = "missing conf, envelope or body";
		return MP_EINVAL;
	}
	if (conf->helo_name == NULL || !smtp_printable_ok(conf->helo_name, FE_DNS_NAME_MAX) ||
	    strchr(conf->helo_name, ' ') != NULL) {
		*why_r = "bad HELO name";
		return MP_EINVAL;
	}
	if (env->sender == NULL || !smtp_path_ok(env->sender, env->need_smtputf8, 1)) {
		*why_r = "bad sender address";
		return MP_EINVAL;
	}
	if (env->nrcpts == 0 || env->nrcpts > SMTP_CLIENT_MAX_RCPTS || env->rcpts == NULL) {
		*why_r = "no recipients or too many";
		return MP_EINVAL;
	}
	if (env->envid != NULL && !smtp_printable_ok(env->envid, SMTP_ENVID_MAX)) {
		*why_r = "bad ENVID";
		return MP_EINVAL;
	}
	if (env->ret != DSN_RET_UNSPEC && env->ret != DSN_RET_FULL && env->ret != DSN_RET_HDRS) {
		*why_r = "bad RET";
		return MP_EINVAL;
	}
	for (size_t i = 0; i < env->nrcpts; i++) {
		const struct smtp_rcpt *r = &env->rcpts[i];
		if (r->addr == NULL || !smtp_path_ok(r->addr, env->need_smtputf8, 0)) {
			*why_r = "bad recipient address";
			return MP_EINVAL;
		}
		unsigned all = DSN_NOTIFY_SUCCESS | DSN_NOTIFY_FAILURE | DSN_NOTIFY_DELAY;
		if ((r->notify & ~(all | DSN_NOTIFY_NEVER)) != 0 ||
		    ((r->notify & DSN_NOTIFY_NEVER) && (r->notify & all))) {
			/* RFC 3461 §4.1: NEVER stands alone. */
			*why_r = "bad NOTIFY";
			return MP_EINVAL;
		}
		if (r->orcpt != NULL) {
			const char *semi = strchr(r->orcpt, ';');
			if (!smtp_path_ok(r->orcpt, env->need_smtputf8, 0) ||
			    strlen(r->orcpt) > SMTP_ORCPT_MAX || semi == NULL || semi == r->orcpt) {
				*why_r = "bad ORCPT";
				return MP_EINVAL;
			}
			for (const char *p = r->orcpt; p < semi; p++) {
				if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
				      (*p >= '0' && *p <= '9') || *p == '-')) {
					*why_r = "bad ORCPT address type";
					return MP_EINVAL;
				}
			}
		}
	}
	return 0;
}

static int smtp_build_mail(struct smtp_session *s)
{
	const struct smtp_envelope *env = s->env;
	struct mp_buf *b = &s->cmd;
	int ret = mp_buf_printf(b, "MAIL FROM:<%s>", env->sender);
	if (ret == 0 && (s->ext & SMTP_EXT_SIZE))
		ret = mp_buf_printf(b, " SIZE=%llu", (unsigned long long)s->body->size);
	if (ret == 0 && env->need_8bitmime && (s->ext & SMTP_EXT_8BITMIME))
		ret = mp_buf_append_str(b, " BODY=8BITMIME");
	if (ret == 0 && env->need_smtputf8)
		ret = mp_buf_append_str(b, " SMTPUTF8");
	if (ret == 0 && (s->ext & SMTP_EXT_DSN)) {
		if (env->ret == DSN_RET_FULL)
			ret = mp_buf_append_str(b, " RET=FULL");
		else if (env->ret == DSN_RET_HDRS)
			ret = mp_buf_append_str(b, " RET=HDRS");
		if (ret == 0 && env->envid != NULL) {
			ret = mp_buf_append_str(b, " ENVID=");
			if (ret == 0)
				ret = smtp_append_xtext(b, env->envid);
		}
	}
	if (ret == 0)
		ret = mp_buf_append_str(b, "\r\n");
	return ret;
}

static int smtp_build_rcpt(struct smtp_session *s, size_t i)
{
	const struct smtp_rcpt *r = &s->env->rcpts[i];
	struct mp_buf *b = &s->cmd;
	int ret = mp_buf_printf(b, "RCPT TO:<%s>", r->addr);
	if (ret == 0 && (s->ext & SMTP_EXT_DSN) && r->notify != 0) {
		if (r->notify & DSN_NOTIFY_NEVER) {
			ret = mp_buf_append_str(b, " NOTIFY=NEVER");
		} else {
			const char *sep = " NOTIFY=";
			static const struct { unsigned bit; const char *name; } names[] = {
				{ DSN_NOTIFY_SUCCESS, "SUCCESS" },
				{ DSN_NOTIFY_FAILURE, "FAILURE" },
				{ DSN_NOTIFY_DELAY, "DELAY" },
			};
			for (size_t k = 0; k < 3 && ret == 0; k++) {
				if (!(r->notify & names[k].bit))
					continue;
				ret = mp_buf_printf(b, "%s%s", sep, names[k].name);
				sep = ",";
			}
		}
	}
	if (ret == 0 && (s->ext & SMTP_EXT_DSN) && r->orcpt != NULL) {
		/* RFC 3461 §4.2: ORCPT=addr-type ";" xtext. */
		const char *semi = strchr(r->orcpt, ';');
		ret = mp_buf_printf(b, " ORCPT=%.*s;", (int)(semi - r->orcpt), r->orcpt);
		const char *a = semi + 1;
		while (ret == 0 && *a == ' ')
			a++;
		if (ret == 0)
			ret = smtp_append_xtext(b, a);
	}
	if (ret == 0)
		ret = mp_buf_append_str(b, "\r\n");
	return ret;
}

/* RFC 5321 §4.1.1.1 EHLO lines after the first: keyword [params]. */
static void smtp_parse_ehlo(struct smtp_session *s, const struct smtp_reply *r)
{
	s->ext = 0;
	s->size_limit = 0;
	const char *p = memchr(r->text, '\n', r->text_len);
	while (p != NULL) {
		const char *line = p + 1;
		const char *end = memchr(line, '\n', r->text_len - (size_t)(line - r->text));
		size_t n = end != NULL ? (size_t)(end - line) : r->text_len - (size_t)(line - r->text);
		size_t kw = 0;
		while (kw < n && line[kw] != ' ')
			kw++;
		static const struct { const char *name; unsigned bit; } exts[] = {
			{ "STARTTLS", SMTP_EXT_STARTTLS }, { "SIZE", SMTP_EXT_SIZE },
			{ "PIPELINING", SMTP_EXT_PIPELINING }, { "8BITMIME", SMTP_EXT_8BITMIME },
			{ "SMTPUTF8", SMTP_EXT_SMTPUTF8 }, { "DSN", SMTP_EXT_DSN },
			{ "ENHANCEDSTATUSCODES", SMTP_EXT_ENHANCED },
		};
		for (size_t k = 0; k < sizeof(exts) / sizeof(exts[0]); k++) {
			if (strlen(exts[k].name) == kw && strncasecmp(line, exts[k].name, kw) == 0)
				s->ext |= exts[k].bit;
		}
		if (kw == 4 && strncasecmp(line, "SIZE", 4) == 0) {
			/* RFC 1870 §4: "SIZE" [SP number]; 0 or none = no limit.
			 * Overflow-checked digit by digit; a bad value = none. */
			uint64_t v = 0;
			size_t i = kw + 1;
			int ok = i < n;
			for (; i < n && ok; i++) {
				if (!smtp_is_digit(line[i]) || v > (UINT64_MAX - 9) / 10)
					ok = 0;
				else
					v = v * 10 + (uint64_t)(line[i] - '0');
			}
			s->size_limit = ok ? v : 0;
		}
		p = end;
	}
}

/* ------------------------------------------------------------ transaction */

/* An I/O failure inside the transaction: everything open is temporary. */
static enum smtp_try smtp_txn_io_fail(struct smtp_session *s, int err)
{
	if (err == MP_ENOMEM)
		return SMTP_TRY_FATAL;
	char text[SMTP_CLIENT_TEXT_MAX];
	smtp_io_text(s, err, text, sizeof(text));
	smtp_rcpts_fail_open(s, SMTP_RCPT_TEMPFAIL, 0, "4.4.2", text);
	smtp_conn_close(s);
	return SMTP_TRY_DONE;
}

/* 421 (RFC 5321 §3.8): the server is closing; no QUIT. */
static enum smtp_try smtp_txn_421(struct smtp_session *s, const struct smtp_reply *r)
{
	smtp_rcpts_fail_open_reply(s, SMTP_RCPT_TEMPFAIL, r);
	smtp_conn_close(s);
	return SMTP_TRY_DONE;
}

static enum smtp_try smtp_send_body(struct smtp_session *s)
{
	char *in = malloc(SMTP_CLIENT_CHUNK);
	char *out = malloc(SMTP_DOTSTUFF_OUT_MAX(SMTP_CLIENT_CHUNK) + 8);
	if (in == NULL || out == NULL) {
		free(in);
		free(out);
		return SMTP_TRY_FATAL;
	}
	struct smtp_dotstuff ds;
	smtp_dotstuff_init(&ds);
	uint64_t total = 0;
	size_t pending = 0; /* stuffed octets in out, not yet written */
	smtp_client_enter_state(s, SMTP_CS_BODY);
	for (;;) { /* bounded: at most body->size octets are read */
		long n = s->body->read(s->body->ctx, in, SMTP_CLIENT_CHUNK);
		if (n == 0)
			break;
		if (n < 0 || (uint64_t)n > s->body->size - total) {
			char text[SMTP_CLIENT_TEXT_MAX];
			snprintf(text, sizeof(text), "error reading the message: %s",
				 n < 0 ? mp_strerror((int)n) : "longer than its size");
			/* Close without the final dot: the server must not
			 * deliver a message whose data never ended. */
			smtp_rcpts_fail_open(s, SMTP_RCPT_TEMPFAIL, 0, "4.3.0", text);
			smtp_conn_close(s);
			free(in);
			free(out);
			return SMTP_TRY_DONE;
		}
		total += (uint64_t)n;
		/* The previous block goes out only now, so that the last one
		 * and the end of data leave in one write (two small writes
		 * in a row would wait for a delayed ACK under Nagle). */
		if (pending > 0) {
			int ret = smtp_conn_write(s, out, pending,
						  smtp_phase_deadline(s, s->t.data_block_ms));
			if (ret != 0) {
				free(in);
				free(out);
				return smtp_txn_io_fail(s, ret);
			}
		}
		pending = smtp_dotstuff(&ds, in, (size_t)n, out);
	}
	smtp_client_enter_state(s, SMTP_CS_DOT);
	pending += smtp_dotstuff_end(&ds, out + pending);
	int ret = smtp_conn_write(s, out, pending, smtp_phase_deadline(s, s->t.data_block_ms));
	free(in);
	free(out);
	if (ret != 0)
		return smtp_txn_io_fail(s, ret);
	const struct smtp_reply *r = NULL;
	ret = smtp_read_reply(s, s->t.data_end_ms, &r);
	if (ret != 0) {
		/* The server may have taken the message: a retry can make a
		 * duplicate (RFC 1047), which beats losing it. */
		return smtp_txn_io_fail(s, ret);
	}
	if (r->code == 421)
		return smtp_txn_421(s, r);
	if (r->code >= 300 && r->code < 400) {
		s->io_error = "3xx reply to the end of data";
		return smtp_txn_io_fail(s, MP_EPROTO);
	}
	smtp_rcpts_fail_open_reply(s, smtp_status_of(r->code), r);
	smtp_quit_close(s);
	return SMTP_TRY_DONE;
}

static enum smtp_try smtp_transaction(struct smtp_session *s)
{
	const struct smtp_envelope *env = s->env;
	char text[SMTP_CLIENT_TEXT_MAX];

	/* Checks before anything is sent. */
	if ((s->ext & SMTP_EXT_SIZE) && s->size_limit > 0 && s->body->size > s->size_limit) {
		snprintf(text, sizeof(text),
			 "message size %llu exceeds the size limit %llu of %s",
			 (unsigned long long)s->body->size, (unsigned long long)s->size_limit,
			 s->peer);
		smtp_rcpts_fail_open(s, SMTP_RCPT_PERMFAIL, 0, "5.3.4", text);
		smtp_quit_close(s);
		return SMTP_TRY_DONE;
	}
	if (env->need_smtputf8 && !(s->ext & SMTP_EXT_SMTPUTF8)) {
		/* RFC 6531 §3.2: no downgrade here; 5.6.7 per RFC 6531 §3.6. */
		snprintf(text, sizeof(text),
			 "the message needs SMTPUTF8, which %s does not support", s->peer);
		smtp_rcpts_fail_open(s, SMTP_RCPT_PERMFAIL, 0, "5.6.7", text);
		smtp_quit_close(s);
		return SMTP_TRY_DONE;
	}
	if (env->need_8bitmime && !(s->ext & SMTP_EXT_8BITMIME)) {
		/* RFC 6152 §3 would have us convert to 7 bit; like most MTAs we
		 * send it as is (nearly every server takes 8-bit anyway). */
		s->res->eightbit_unannounced = 1;
		mp_log_info("smtp_out_8bit_unannounced", "peer=%s", s->peer);
	}
	s->res->dsn_offered = (s->ext & SMTP_EXT_DSN) != 0;

	int pipelining = (s->ext & SMTP_EXT_PIPELINING) != 0;
	int ret = smtp_build_mail(s);
	if (ret != 0)
		return SMTP_TRY_FATAL;
	if (pipelining) {
		/* RFC 2920 §3.1: MAIL, every RCPT and DATA in one group. */
		for (size_t i = 0; i < env->nrcpts && ret == 0; i++)
			ret = smtp_build_rcpt(s, i);
		if (ret == 0)
			ret = mp_buf_append_str(&s->cmd, "DATA\r\n");
		if (ret != 0)
			return SMTP_TRY_FATAL;
	}
	smtp_client_enter_state(s, SMTP_CS_MAIL);
	ret = smtp_send_cmd(s, s->t.mail_ms);
	if (ret != 0)
		return smtp_txn_io_fail(s, ret);
	const struct smtp_reply *r = NULL;
	ret = smtp_read_reply(s, s->t.mail_ms, &r);
	if (ret != 0)
		return smtp_txn_io_fail(s, ret);
	if (r->code == 421)
		return smtp_txn_421(s, r);
	int mail_ok = r->code >= 200 && r->code < 300;
	if (!mail_ok) {
		/* 5xx: permanent for all; 4xx (or a nonsensical 3xx): temporary. */
		smtp_rcpts_fail_open_reply(s, r->code >= 500 ? SMTP_RCPT_PERMFAIL :
					   SMTP_RCPT_TEMPFAIL, r);
		if (!pipelining) {
			smtp_quit_close(s);
			return SMTP_TRY_DONE;
		}
	}

	size_t naccepted = 0;
	smtp_client_enter_state(s, SMTP_CS_RCPT);
	for (size_t i = 0; i < env->nrcpts; i++) {
		if (!pipelining) {
			ret = smtp_build_rcpt(s, i);
			if (ret != 0)
				return SMTP_TRY_FATAL;
			ret = smtp_send_cmd(s, s->t.rcpt_ms);
			if (ret != 0)
				return smtp_txn_io_fail(s, ret);
		}
		ret = smtp_read_reply(s, s->t.rcpt_ms, &r);
		if (ret != 0)
			return smtp_txn_io_fail(s, ret);
		if (r->code == 421)
			return smtp_txn_421(s, r);
		if (!mail_ok)
			continue; /* the MAIL reply decided already */
		if (r->code >= 200 && r->code < 300) {
			s->rphase[i] = SMTP_RP_ACCEPTED;
			naccepted++;
		} else {
			smtp_rcpt_set_reply(s, i, r->code >= 500 ? SMTP_RCPT_PERMFAIL :
					    SMTP_RCPT_TEMPFAIL, r);
		}
	}

	if (!pipelining) {
		if (naccepted == 0) {
			smtp_quit_close(s);
			return SMTP_TRY_DONE;
		}
		ret = mp_buf_append_str(&s->cmd, "DATA\r\n");
		if (ret != 0)
			return SMTP_TRY_FATAL;
		smtp_client_enter_state(s, SMTP_CS_DATA);
		ret = smtp_send_cmd(s, s->t.data_init_ms);
		if (ret != 0)
			return smtp_txn_io_fail(s, ret);
	} else {
		smtp_client_enter_state(s, SMTP_CS_DATA);
	}
	ret = smtp_read_reply(s, s->t.data_init_ms, &r);
	if (ret != 0)
		return smtp_txn_io_fail(s, ret);
	if (r->code == 421)
		return smtp_txn_421(s, r);
	if (r->code == 354) {
		if (naccepted == 0) {
			/* RFC 2920 §3.1: DATA accepted without a valid recipient:
			 * send just the end of data and ignore what it says. */
			smtp_client_enter_state(s, SMTP_CS_DOT);
			ret = smtp_send_line(s, ".", s->t.data_block_ms);
			if (ret == 0)
				(void)smtp_read_reply(s, s->t.data_end_ms, &r);
			smtp_quit_close(s);
			return SMTP_TRY_DONE;
		}
		return smtp_send_body(s);
	}
	if (naccepted > 0)
		smtp_rcpts_fail_open_reply(s, r->code >= 500 ? SMTP_RCPT_PERMFAIL :
					   SMTP_RCPT_TEMPFAIL, r);
	smtp_quit_close(s);
	return SMTP_TRY_DONE;
}

/* ------------------------------------------------------------ session */

/* EHLO (or HELO after a 5xx when allow_helo): SMTP_TRY_DONE when the
 * server greeted us back, SMTP_TRY_NEXT (connection closed) if not. */
static enum smtp_try smtp_ehlo(struct smtp_session *s, int allow_helo)
{
	const struct smtp_reply *r = NULL;
	char text[SMTP_CLIENT_TEXT_MAX];
	smtp_client_enter_state(s, SMTP_CS_EHLO);
	mp_buf_reset(&s->cmd);
	int ret = mp_buf_printf(&s->cmd, "EHLO %s\r\n", s->conf->helo_name);
	if (ret == 0)
		ret = smtp_send_cmd(s, s->t.ehlo_ms);
	if (ret == 0)
		ret = smtp_read_reply(s, s->t.ehlo_ms, &r);
	if (ret == MP_ENOMEM)
		return SMTP_TRY_FATAL;
	if (ret != 0)
		goto io_fail;
	if (r->code >= 200 && r->code < 300) {
		smtp_parse_ehlo(s, r);
		return SMTP_TRY_DONE;
	}
	if (r->code >= 500 && allow_helo) {
		/* RFC 5321 §3.2: a server that does not know EHLO. */
		smtp_client_enter_state(s, SMTP_CS_HELO);
		mp_buf_reset(&s->cmd);
		ret = mp_buf_printf(&s->cmd, "HELO %s\r\n", s->conf->helo_name);
		if (ret == 0)
			ret = smtp_send_cmd(s, s->t.ehlo_ms);
		if (ret == 0)
			ret = smtp_read_reply(s, s->t.ehlo_ms, &r);
		if (ret == MP_ENOMEM)
			return SMTP_TRY_FATAL;
		if (ret != 0)
			goto io_fail;
		if (r->code >= 200 && r->code < 300) {
			s->ext = 0;
			s->size_limit = 0;
			return SMTP_TRY_DONE;
		}
	}
	smtp_session_fail_reply(s, r);
	if (r->code == 421)
		smtp_conn_close(s);
	else
		smtp_quit_close(s);
	return SMTP_TRY_NEXT;
io_fail:
	smtp_io_text(s, ret, text, sizeof(text));
	smtp_session_fail(s, 0, "4.4.2", "%s", text);
	smtp_conn_close(s);
	return SMTP_TRY_NEXT;
}

static int smtp_connect(struct smtp_session *s, const struct sockaddr_storage *ss,
			socklen_t sslen)
{
	struct sockaddr_storage sa;
	memcpy(&sa, ss, sizeof(sa));
	if (sa.ss_family == AF_INET)
		((struct sockaddr_in *)&sa)->sin_port = htons(s->port);
	else
		((struct sockaddr_in6 *)&sa)->sin6_port = htons(s->port);
	s->io_errno = 0;
	s->fd = socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (s->fd < 0) {
		s->io_errno = errno;
		return MP_EIO;
	}
	int64_t deadline = smtp_phase_deadline(s, s->t.connect_ms);
	if (connect(s->fd, (struct sockaddr *)&sa, sslen) == 0)
		return 0;
	if (errno != EINPROGRESS && errno != EINTR) {
		s->io_errno = errno;
		return MP_EIO;
	}
	int ret = smtp_conn_wait(s, POLLOUT, deadline);
	if (ret != 0)
		return ret;
	int soerr = 0;
	socklen_t len = sizeof(soerr);
	if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0)
		soerr = errno;
	if (soerr != 0) {
		s->io_errno = soerr;
		return MP_EIO;
	}
	return 0;
}

static enum smtp_try smtp_starttls(struct smtp_session *s)
{
	const struct smtp_reply *r = NULL;
	char text[SMTP_CLIENT_TEXT_MAX];
	smtp_client_enter_state(s, SMTP_CS_STARTTLS);
	int ret = smtp_send_line(s, "STARTTLS", s->t.starttls_ms);
	if (ret == 0)
		ret = smtp_read_reply(s, s->t.starttls_ms, &r);
	if (ret == MP_ENOMEM)
		return SMTP_TRY_FATAL;
	if (ret != 0) {
		smtp_io_text(s, ret, text, sizeof(text));
		smtp_session_fail(s, 0, "4.4.2", "%s", text);
		smtp_conn_close(s);
		return SMTP_TRY_NEXT;
	}
	if (r->code == 421) {
		smtp_session_fail_reply(s, r);
		smtp_conn_close(s);
		return SMTP_TRY_NEXT;
	}
	if (r->code != 220) {
		/* RFC 3207 §4: e.g. 454; opportunistic, so go on in plaintext. */
		mp_log_info("smtp_out_starttls_refused", "peer=%s code=%d", s->peer, r->code);
		return SMTP_TRY_DONE;
	}
	if (s->rlen > 0) {
		/* RFC 3207 §4.2: anything the server sent after "220" in
		 * plaintext is an injection attempt; it must not be taken as
		 * a reply inside TLS. */
		mp_log_warn("smtp_out_starttls_injection", "peer=%s bytes=%zu", s->peer, s->rlen);
		s->rlen = 0;
	}
	smtp_client_enter_state(s, SMTP_CS_TLS);
	char *err = NULL;
	ret = fe_tls_client_handshake(s->conf->tls, s->fd, s->host[0] != '\0' ? s->host : NULL,
				      smtp_phase_deadline(s, s->t.starttls_ms), &s->tls, &err);
	if (ret != 0) {
		smtp_session_fail(s, 0, "4.7.5", "TLS handshake with %s failed: %s", s->peer,
				  err != NULL ? err : mp_strerror(ret));
		free(err);
		smtp_conn_close(s);
		return ret == MP_ENOMEM ? SMTP_TRY_FATAL : SMTP_TRY_TLS_AGAIN;
	}
	s->res->tls = 1;
	if (fe_tls_stream_describe(s->tls, s->res->tls_info, sizeof(s->res->tls_info)) != 0)
		s->res->tls_info[0] = '\0';
	mp_log_info("smtp_out_tls", "peer=%s %s", s->peer, s->res->tls_info);
	/* RFC 3207 §4.2: forget what the plaintext EHLO said; ask again. */
	s->ext = 0;
	return smtp_ehlo(s, 0);
}

/* One address: connect, greeting, EHLO, STARTTLS, then the transaction. */
static enum smtp_try smtp_try_addr(struct smtp_session *s, const struct fe_dns_host *h,
				   size_t ai, int allow_tls)
{
	const struct sockaddr_storage *ss = &h->addrs[ai];
	char text[SMTP_CLIENT_TEXT_MAX];
	const void *ip = ss->ss_family == AF_INET ?
		(const void *)&((const struct sockaddr_in *)ss)->sin_addr :
		(const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr;
	if (inet_ntop(ss->ss_family, ip, s->addr, sizeof(s->addr)) == NULL)
		snprintf(s->addr, sizeof(s->addr), "?");
	snprintf(s->host, sizeof(s->host), "%s", h->name);
	if (s->host[0] != '\0')
		snprintf(s->peer, sizeof(s->peer), "%s[%s]:%u", s->host, s->addr, s->port);
	else
		snprintf(s->peer, sizeof(s->peer), "[%s]:%u", s->addr, s->port);
	if (s->host[0] != '\0')
		snprintf(s->res->mx_host, sizeof(s->res->mx_host), "%s", s->host);
	else
		snprintf(s->res->mx_host, sizeof(s->res->mx_host), "[%s%s]",
			 ss->ss_family == AF_INET6 ? "IPv6:" : "", s->addr);
	snprintf(s->res->mx_addr, sizeof(s->res->mx_addr), "%s", s->addr);
	s->res->tls = 0;
	s->res->tls_info[0] = '\0';
	s->ext = 0;
	s->size_limit = 0;
	s->rlen = 0;
	smtp_reply_parser_init(&s->parser);
	s->state = SMTP_CS_CONNECT;

	int ret = smtp_connect(s, ss, h->addrlens[ai]);
	if (ret != 0) {
		const char *why = ret == MP_ETIMEDOUT ? "connection timed out" :
			s->io_errno != 0 ? strerror(s->io_errno) : mp_strerror(ret);
		smtp_session_fail(s, 0, "4.4.1", "connect to %s: %s", s->peer, why);
		smtp_conn_close(s);
		return SMTP_TRY_NEXT;
	}
	smtp_client_enter_state(s, SMTP_CS_GREETING);
	const struct smtp_reply *r = NULL;
	ret = smtp_read_reply(s, s->t.greeting_ms, &r);
	if (ret != 0) {
		smtp_io_text(s, ret, text, sizeof(text));
		smtp_session_fail(s, 0, "4.4.2", "%s", text);
		smtp_conn_close(s);
		return SMTP_TRY_NEXT;
	}
	if (r->code < 200 || r->code >= 300) {
		/* 4xx, or 554 "no SMTP service here" (RFC 5321 §3.1): both
		 * mean "try another host"; like Postfix's default
		 * (smtp_skip_5xx_greeting) never a bounce on its own. */
		smtp_session_fail_reply(s, r);
		if (r->code == 421)
			smtp_conn_close(s);
		else
			smtp_quit_close(s);
		return SMTP_TRY_NEXT;
	}
	enum smtp_try t = smtp_ehlo(s, 1);
	if (t != SMTP_TRY_DONE)
		return t;
	if (allow_tls && s->conf->tls != NULL && (s->ext & SMTP_EXT_STARTTLS)) {
		t = smtp_starttls(s);
		if (t != SMTP_TRY_DONE)
			return t;
	}
	mp_log_info("smtp_out_session", "peer=%s tls=%d pipelining=%d size=%llu dsn=%d",
		    s->peer, s->tls != NULL, (s->ext & SMTP_EXT_PIPELINING) != 0,
		    (unsigned long long)s->size_limit, (s->ext & SMTP_EXT_DSN) != 0);
	return smtp_transaction(s);
}

static void smtp_timeouts_resolve(const struct smtp_client_timeouts *in,
				  struct smtp_client_timeouts *out)
{
#define SMTP_T(f, dflt) out->f = in->f > 0 ? in->f : (dflt)
	SMTP_T(connect_ms, 30 * 1000);
	SMTP_T(greeting_ms, 5 * 60 * 1000);
	SMTP_T(ehlo_ms, 5 * 60 * 1000);
	SMTP_T(starttls_ms, 5 * 60 * 1000);
	SMTP_T(mail_ms, 5 * 60 * 1000);
	SMTP_T(rcpt_ms, 5 * 60 * 1000);
	SMTP_T(data_init_ms, 2 * 60 * 1000);
	SMTP_T(data_block_ms, 3 * 60 * 1000);
	SMTP_T(data_end_ms, 10 * 60 * 1000);
	SMTP_T(quit_ms, 10 * 1000);
#undef SMTP_T
}

static struct smtp_result *smtp_result_new(size_t nrcpts)
{
	struct smtp_result *res = calloc(1, sizeof(*res));
	if (res == NULL)
		return NULL;
	res->rcpts = calloc(nrcpts, sizeof(*res->rcpts));
	if (res->rcpts == NULL) {
		free(res);
		return NULL;
	}
	res->nrcpts = nrcpts;
	return res;
}

static void smtp_result_tally(struct smtp_result *res)
{
	res->ndelivered = res->ntempfail = res->npermfail = 0;
	for (size_t i = 0; i < res->nrcpts; i++) {
		switch (res->rcpts[i].status) {
		case SMTP_RCPT_DELIVERED:
			res->ndelivered++;
			break;
		case SMTP_RCPT_TEMPFAIL:
			res->ntempfail++;
			break;
		case SMTP_RCPT_PERMFAIL:
			res->npermfail++;
			break;
		}
	}
}

void smtp_result_free(struct smtp_result **r)
{
	if (r == NULL || *r == NULL)
		return;
	free((*r)->rcpts);
	free(*r);
	*r = NULL;
}

static void smtp_set_error(char **error_r, const char *msg)
{
	if (error_r != NULL)
		*error_r = strdup(msg);
}

int smtp_client_deliver(const struct smtp_client_conf *conf, const struct fe_dns_mx_list *mx,
			const struct smtp_envelope *env, const struct smtp_body *body,
			int64_t deadline_ms, struct smtp_result **result_r, char **error_r)
{
	*result_r = NULL;
	if (error_r != NULL)
		*error_r = NULL;
	const char *why = NULL;
	int ret = smtp_check_input(conf, env, body, &why);
	if (ret == 0 && mx == NULL) {
		why = "no MX list";
		ret = MP_EINVAL;
	}
	if (ret != 0) {
		smtp_set_error(error_r, why);
		return ret;
	}

	struct smtp_session *s = calloc(1, sizeof(*s));
	struct smtp_result *res = smtp_result_new(env->nrcpts);
	if (s == NULL || res == NULL) {
		free(s);
		smtp_result_free(&res);
		smtp_set_error(error_r, "out of memory");
		return MP_ENOMEM;
	}
	s->conf = conf;
	smtp_timeouts_resolve(&conf->timeouts, &s->t);
	s->env = env;
	s->body = body;
	s->deadline = deadline_ms;
	s->port = conf->port != 0 ? conf->port : SMTP_CLIENT_DEFAULT_PORT;
	s->res = res;
	s->fd = -1;
	mp_buf_init(&s->cmd, SMTP_CLIENT_CMD_LIMIT);
	smtp_reply_parser_init(&s->parser);
	snprintf(s->fail_enhanced, sizeof(s->fail_enhanced), "4.4.1");
	snprintf(s->fail_text, sizeof(s->fail_text), "no address to deliver to");

	size_t max_addrs = conf->max_addrs != 0 ? conf->max_addrs : SMTP_CLIENT_DEFAULT_ADDRS;
	enum smtp_try t = SMTP_TRY_NEXT;
	for (size_t hi = 0; hi < mx->nhosts && hi < FE_DNS_MAX_HOSTS && t == SMTP_TRY_NEXT; hi++) {
		const struct fe_dns_host *h = &mx->hosts[hi];
		for (size_t ai = 0; ai < h->naddrs && ai < FE_DNS_MAX_ADDRS; ai++) {
			if (res->attempts >= max_addrs)
				break;
			if (deadline_ms != 0 && smtp_now_ms() >= deadline_ms) {
				char last[SMTP_CLIENT_TEXT_MAX];
				memcpy(last, s->fail_text, sizeof(last));
				smtp_session_fail(s, 0, "4.4.7",
						  "delivery deadline passed before a session; last: %s",
						  last);
				break;
			}
			res->attempts++;
			t = smtp_try_addr(s, h, ai, 1);
			if (t == SMTP_TRY_TLS_AGAIN) {
				mp_log_info("smtp_out_tls_fallback", "peer=%s", s->peer);
				t = smtp_try_addr(s, h, ai, 0);
				if (t == SMTP_TRY_TLS_AGAIN) /* cannot happen without TLS */
					t = SMTP_TRY_NEXT;
			}
			if (t != SMTP_TRY_NEXT)
				break;
		}
	}
	smtp_conn_close(s);
	mp_buf_free(&s->cmd);
	if (t == SMTP_TRY_FATAL) {
		free(s);
		smtp_result_free(&res);
		smtp_set_error(error_r, "out of memory");
		return MP_ENOMEM;
	}
	if (t != SMTP_TRY_DONE) {
		/* No session anywhere: temporary for all, with the last reason. */
		smtp_rcpts_fail_open(s, SMTP_RCPT_TEMPFAIL, s->fail_code, s->fail_enhanced,
				     s->fail_text);
	}
	/* A transaction always decides every recipient; be safe anyway. */
	smtp_rcpts_fail_open(s, SMTP_RCPT_TEMPFAIL, 0, "4.3.0", "no result");
	smtp_result_tally(res);
	mp_log_info("smtp_out_result", "host=%s addr=%s attempts=%zu delivered=%zu tempfail=%zu "
		    "permfail=%zu tls=%d", res->mx_host, res->mx_addr, res->attempts,
		    res->ndelivered, res->ntempfail, res->npermfail, res->tls);
	free(s);
	*result_r = res;
	return 0;
}

int smtp_client_deliver_domain(const struct smtp_client_conf *conf, struct fe_dns *dns,
			       const char *domain, const struct smtp_envelope *env,
			       const struct smtp_body *body, int64_t deadline_ms,
			       struct smtp_result **result_r, char **error_r)
{
	*result_r = NULL;
	if (error_r != NULL)
		*error_r = NULL;
	const char *why = NULL;
	int ret = smtp_check_input(conf, env, body, &why);
	if (ret != 0) {
		smtp_set_error(error_r, why);
		return ret;
	}
	struct fe_dns_mx_list *mx = NULL;
	char *dns_err = NULL;
	int64_t dns_deadline = deadline_ms != 0 ? deadline_ms :
		fe_dns_now_ms() + (conf->timeouts.connect_ms > 0 ? conf->timeouts.connect_ms :
				   30 * 1000);
	ret = fe_dns_mx(dns, domain, dns_deadline, &mx, &dns_err);
	if (ret == MP_ENOMEM) {
		free(dns_err);
		smtp_set_error(error_r, "out of memory");
		return ret;
	}
	if (ret != 0) {
		struct smtp_result *res = smtp_result_new(env->nrcpts);
		if (res == NULL) {
			free(dns_err);
			smtp_set_error(error_r, "out of memory");
			return MP_ENOMEM;
		}
		enum smtp_rcpt_status st = fe_dns_err_permanent(ret) ? SMTP_RCPT_PERMFAIL :
			SMTP_RCPT_TEMPFAIL;
		const char *enh = fe_dns_last_status(dns);
		for (size_t i = 0; i < env->nrcpts; i++) {
			struct smtp_rcpt_result *rr = &res->rcpts[i];
			rr->status = st;
			rr->code = 0;
			smtp_enhanced_for(st, enh[0] != '\0' ? enh : NULL, rr->enhanced);
			snprintf(rr->text, sizeof(rr->text), "%s",
				 dns_err != NULL ? dns_err : mp_strerror(ret));
		}
		smtp_result_tally(res);
		free(dns_err);
		*result_r = res;
		return 0;
	}
	ret = smtp_client_deliver(conf, mx, env, body, deadline_ms, result_r, error_r);
	fe_dns_mx_list_free(&mx);
	return ret;
}
