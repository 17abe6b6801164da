/*
 * smtp_client: delivers one message to one destination domain over SMTP
 * (RFC 5321), blocking, with a deadline on every wait. Also the pure SMTP
 * reply parser and the dot-stuffer it uses.
 *
 * smtp_client_deliver() tries the MX hosts and their addresses in order
 * until one gives a session (a 2xx greeting and a 2xx EHLO or HELO); from
 * then on the answers of that server are final for this attempt, even 4xx
 * ones (the queue runner retries later; backup MX hosts are used when the
 * better ones are unreachable or refuse the session). In that session:
 * opportunistic STARTTLS when offered and a TLS client is configured
 * (RFC 3207; EHLO again after it; if the handshake fails the same address
 * is tried once more in plaintext, without STARTTLS, since opportunistic
 * TLS must never make mail undeliverable), SIZE (RFC 1870: a message
 * larger than the server's limit fails permanently without being sent),
 * PIPELINING (RFC 2920: MAIL, every RCPT and DATA in one write), BODY=
 * 8BITMIME (RFC 6152; sent anyway without it and noted in the result),
 * SMTPUTF8 (RFC 6531; without it a message that needs it fails
 * permanently, 5.6.7), DSN parameters (RFC 3461) when the server offers
 * DSN. The body is read once, front to back, through a callback while
 * it is sent (never held whole in memory), dot-stuffed, line endings made
 * CRLF (bare CR and bare LF become CRLF, so no "<LF>.<LF>" style sequence
 * can end the data early at a lenient server) and ended with CRLF ".".
 *
 * Outcome per recipient: delivered, temporary failure (retry later) or
 * permanent failure (bounce). No session anywhere (no address reachable,
 * timeouts, 4xx or 5xx greeting, EHLO and HELO refused) → temporary for
 * all. 5xx to MAIL → permanent for all; 4xx → temporary for all. 421
 * anywhere → temporary for everything not yet final. Lost connection or
 * timeout in a transaction → temporary for everything not yet final.
 *
 * Thread-safety: no shared state; concurrent calls are fine when they do
 * not share a struct smtp_result. The fe_tls_client may be shared (one
 * SSL_CTX, one SSL per handshake). The process must ignore SIGPIPE: TLS
 * writes go through OpenSSL's socket BIO (plaintext writes use
 * MSG_NOSIGNAL). Never: send a line containing CR or LF from a caller's
 * string, read past a limit, or wait without a deadline.
 */
#ifndef SMTP_CLIENT_H
#define SMTP_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "dsn.h"
#include "fe_dns.h"

struct fe_tls_client;

/* ------------------------------------------------------------ reply parser */

#define SMTP_REPLY_LINE_MAX 2048   /* octets per reply line, CRLF included */
#define SMTP_REPLY_LINES_MAX 100   /* lines per reply */
#define SMTP_REPLY_TEXT_MAX 4096   /* text kept per reply (NUL included) */

struct smtp_reply {
	int code;              /* 200..599 */
	char enhanced[12];     /* RFC 3463 "x.y.z" from the first line, or "" */
	size_t nlines;
	size_t text_len;
	int truncated;         /* text did not fit in SMTP_REPLY_TEXT_MAX */
	/* The text of each line (after "NNN-" / "NNN " and, when the first
	 * line had one, an enhanced code), lines joined with '\n',
	 * NUL-terminated. Control octets other than TAB become '?'. */
	char text[SMTP_REPLY_TEXT_MAX];
};

struct smtp_reply_parser {
	int state;             /* 0 between replies, 1 inside one, 2 done */
	struct smtp_reply reply; /* complete after MP_OK */
};

void smtp_reply_parser_init(struct smtp_reply_parser *p);

/* RFC 5321 §4.2 replies: consumes complete lines of data (CRLF; a bare
 * LF is accepted too). Returns
 *   MP_OK      a reply ended: p->reply holds it, *consumed_r counts the
 *              octets up to its last line; the next call starts a new one.
 *   MP_AGAIN   all complete lines consumed (*consumed_r); call again with
 *              the rest of data followed by more input.
 *   MP_EPROTO  a malformed line: not 3 digits 2xx..5xx, a separator other
 *              than '-' / ' ' / end of line, or a code that differs from
 *              the reply's first line (§4.2.1).
 *   MP_ETOOBIG a line over SMTP_REPLY_LINE_MAX (also before its end has
 *              arrived) or more than SMTP_REPLY_LINES_MAX lines.
 * With *error_r (static) on errors, after which the parser is spent.
 * Pure: the same result for any split of the input. */
int smtp_reply_feed(struct smtp_reply_parser *p, const char *data, size_t len,
		    size_t *consumed_r, const char **error_r);

/* ------------------------------------------------------------ dot-stuffing */

/* Message → DATA wire form (RFC 5321 §4.5.2), streaming. */
struct smtp_dotstuff {
	int state;             /* 0 line start, 1 inside a line, 2 after CR */
};
void smtp_dotstuff_init(struct smtp_dotstuff *ds);
/* Writes the wire form of in[0..len) to out, which must hold
 * SMTP_DOTSTUFF_OUT_MAX(len) octets; returns the octets written. */
#define SMTP_DOTSTUFF_OUT_MAX(len) (2 * (len) + 2)
size_t smtp_dotstuff(struct smtp_dotstuff *ds, const char *in, size_t len, char *out);
/* The end: CRLF unless the message ended with one, then ".\r\n"; out
 * holds at least 5 octets. Returns the octets written. */
size_t smtp_dotstuff_end(struct smtp_dotstuff *ds, char *out);

/* ------------------------------------------------------------ delivery */

#define SMTP_CLIENT_MAX_RCPTS 100  /* per delivery: RFC 5321 §4.5.3.1.8's
				    * minimum a server must take; also keeps a
				    * pipelined batch small enough that the
				    * server's replies fit its socket buffer
				    * (RFC 2920 §3.1: no deadlock) */
#define SMTP_CLIENT_MAX_PATH 512   /* octets in an address */
#define SMTP_CLIENT_TEXT_MAX 1024  /* diagnostic text per recipient */

/* Milliseconds; 0 = the RFC 5321 §4.5.3.2 default given. */
struct smtp_client_timeouts {
	int connect_ms;        /* 30 s (not in the RFC; Postfix's default) */
	int greeting_ms;       /* 5 min */
	int ehlo_ms;           /* 5 min (EHLO, HELO) */
	int starttls_ms;       /* 5 min (the reply and the handshake) */
	int mail_ms;           /* 5 min */
	int rcpt_ms;           /* 5 min */
	int data_init_ms;      /* 2 min */
	int data_block_ms;     /* 3 min per block written */
	int data_end_ms;       /* 10 min */
	int quit_ms;           /* 10 s (we do not care about the answer) */
};

struct smtp_client_conf {
	const char *helo_name;           /* borrowed: our name for EHLO/HELO */
	uint16_t port;                   /* 0 = 25 */
	struct fe_tls_client *tls;       /* borrowed; NULL = never STARTTLS */
	struct smtp_client_timeouts timeouts;
	size_t max_addrs;                /* addresses tried per delivery; 0 = 10 */
};

struct smtp_rcpt {
	const char *addr;      /* borrowed: forward-path without <> */
	unsigned notify;       /* DSN_NOTIFY_* bits; 0 = not given */
	const char *orcpt;     /* borrowed: ORCPT decoded, "rfc822;a@b"; NULL */
};

struct smtp_envelope {
	const char *sender;              /* borrowed: reverse-path without <>;
					  * "" = null sender */
	const struct smtp_rcpt *rcpts;   /* borrowed; 1..SMTP_CLIENT_MAX_RCPTS */
	size_t nrcpts;
	int need_8bitmime;               /* the body has 8-bit octets */
	int need_smtputf8;               /* UTF-8 addresses or headers */
	enum dsn_ret ret;                /* RET; UNSPEC = not sent */
	const char *envid;               /* borrowed: ENVID decoded; NULL */
};

/* The message (header and body, as stored), read once during DATA. */
struct smtp_body {
	uint64_t size;                   /* octets, for SIZE= (RFC 1870) */
	/* >0 octets read into buf, 0 at the end, or a negative MP_E*. */
	long (*read)(void *ctx, char *buf, size_t len);
	void *ctx;                       /* borrowed */
};

/* A body from memory: m must live as long as b. */
struct smtp_mem_body {
	const char *data;                /* borrowed */
	size_t len;
	size_t pos;
};
void smtp_body_from_mem(struct smtp_body *b, struct smtp_mem_body *m,
			const char *data, size_t len);

enum smtp_rcpt_status {
	SMTP_RCPT_DELIVERED,
	SMTP_RCPT_TEMPFAIL,    /* keep in the queue, retry later */
	SMTP_RCPT_PERMFAIL,    /* bounce */
};

struct smtp_rcpt_result {
	enum smtp_rcpt_status status;
	int code;              /* the server's reply code; 0 = our own verdict */
	/* RFC 3463 code, class always matching status (a 5xx that we
	 * treat as temporary, e.g. a 554 greeting, reads "4.y.z"): the
	 * server's enhanced code, else one derived from its reply, else
	 * ours. */
	char enhanced[12];
	/* The server's reply text (lines joined with ' ') when code != 0,
	 * else our explanation. ASCII may be mixed with the server's 8-bit. */
	char text[SMTP_CLIENT_TEXT_MAX];
};

struct smtp_result {
	size_t nrcpts;
	struct smtp_rcpt_result *rcpts;  /* owned; in the envelope's order */
	size_t ndelivered, ntempfail, npermfail;
	/* The last server talked to (for DSN Remote-MTA and logs); "" when
	 * none was reached. mx_host is the MX name, or the address literal. */
	char mx_host[FE_DNS_NAME_MAX + 1];
	char mx_addr[64];                /* "192.0.2.1" / "2001:db8::1" */
	size_t attempts;                 /* addresses tried */
	int tls;                         /* the final session was TLS */
	char tls_info[128];              /* fe_tls_stream_describe(), or "" */
	int dsn_offered;                 /* the server took DSN parameters;
					  * if not, recipients with NOTIFY=
					  * SUCCESS need a "relayed" DSN
					  * (RFC 3461 §5.2.2) */
	int eightbit_unannounced;        /* 8-bit sent to a server without
					  * 8BITMIME (RFC 6152 §3 would have
					  * us convert; we do not) */
};

/* Delivers body from env->sender to env->rcpts (all in one domain) at
 * the hosts of mx, finished by deadline_ms (absolute CLOCK_MONOTONIC ms,
 * fe_dns_now_ms(); 0 = only the per-phase timeouts).
 * 0 with *result_r (malloc'd; smtp_result_free) whatever the outcome of
 * the delivery: every recipient has a status there. MP_EINVAL (a bad
 * envelope or conf: CR/LF or control octets in an address, 8-bit without
 * need_smtputf8, too many recipients, bad ENVID/ORCPT/NOTIFY; nothing is
 * sent) or MP_ENOMEM, with *error_r (malloc'd). */
int smtp_client_deliver(const struct smtp_client_conf *conf,
			const struct fe_dns_mx_list *mx,
			const struct smtp_envelope *env,
			const struct smtp_body *body, int64_t deadline_ms,
			struct smtp_result **result_r, char **error_r);

/* The same after an MX lookup of domain on dns (the lookup is bounded by
 * deadline_ms, or by timeouts.connect_ms when deadline_ms is 0); a failed
 * lookup becomes the recipients' result (temporary or permanent per
 * fe_dns_mx(), code 0, with its RFC 3463 code, e.g. 5.1.10 for a null MX,
 * and its message as the text). dns is used by this thread only. */
int smtp_client_deliver_domain(const struct smtp_client_conf *conf,
			       struct fe_dns *dns, const char *domain,
			       const struct smtp_envelope *env,
			       const struct smtp_body *body, int64_t deadline_ms,
			       struct smtp_result **result_r, char **error_r);

void smtp_result_free(struct smtp_result **r);

const char *smtp_rcpt_status_name(enum smtp_rcpt_status s);

#endif
