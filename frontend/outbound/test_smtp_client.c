/*
 * test_smtp_client: the reply parser and the dot-stuffer (tables, every
 * input split at every byte), then whole deliveries against small scripted
 * SMTP servers, each a libevent loop in its own thread on 127.0.0.x that
 * answers from a script and records what it received: PIPELINING (the
 * server holds its MAIL reply until DATA arrives, so only a pipelining
 * client gets through without the hold expiring), no PIPELINING, mixed
 * recipient replies, 421 greeting with fallback to the next MX, 5xx MAIL,
 * 421 mid-transaction, 552 after the data, SIZE and SMTPUTF8 refusals,
 * HELO fallback, dot-stuffing on the wire, timeouts (a silent server, a
 * server silent after the data), STARTTLS with fe_tls on the server side,
 * STARTTLS whose handshake fails (plaintext retry), 454 to STARTTLS, DNS
 * failures through smtp_client_deliver_domain, and bad envelopes.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "fe_dns.h"
#include "fe_tls.h"
#include "mp_buf.h"
#include "mp_error.h"
#include "smtp_client.h"

/* ------------------------------------------------------------ parser tables */

struct reply_case {
	const char *in;
	int ret;
	int code;
	const char *enhanced;
	const char *text;
	size_t nlines;
	size_t consumed; /* for MP_OK; 0 = the whole input */
};

static const struct reply_case reply_cases[] = {
	{ "250 ok\r\n", MP_OK, 250, "", "ok", 1, 0 },
	{ "250-a\r\n250-b\r\n250 c\r\n", MP_OK, 250, "", "a\nb\nc", 3, 0 },
	{ "550-5.1.1 first\r\n550 5.1.1 second\r\n", MP_OK, 550, "5.1.1", "first\nsecond", 2, 0 },
	{ "550-5.1.1 first\r\n550 second\r\n", MP_OK, 550, "5.1.1", "first\nsecond", 2, 0 },
	{ "250\r\n", MP_OK, 250, "", "", 1, 0 },
	{ "250-\r\n250 \r\n", MP_OK, 250, "", "\n", 2, 0 },
	{ "250 ok\n", MP_OK, 250, "", "ok", 1, 0 },
	{ "421 4.3.2 bye\r\nextra", MP_OK, 421, "4.3.2", "bye", 1, 15 },
	{ "250 a\r\n251 b\r\n", MP_OK, 250, "", "a", 1, 7 },
	{ "250 5.1.1 class differs\r\n", MP_OK, 250, "", "5.1.1 class differs", 1, 0 },
	{ "550 5.1.1\r\n", MP_OK, 550, "5.1.1", "", 1, 0 },
	{ "550 5.1.1234 x\r\n", MP_OK, 550, "", "5.1.1234 x", 1, 0 },
	{ "550 5.1.1x\r\n", MP_OK, 550, "", "5.1.1x", 1, 0 },
	{ "452 4.5.3 Too many\r\n", MP_OK, 452, "4.5.3", "Too many", 1, 0 },
	{ "250 a\x01\x7f\tb\r\n", MP_OK, 250, "", "a??\tb", 1, 0 },
	{ "250 a\rb\r\n", MP_OK, 250, "", "a?b", 1, 0 },
	{ "250 caf\xc3\xa9\r\n", MP_OK, 250, "", "caf\xc3\xa9", 1, 0 },
	{ "250-a\r\n251 b\r\n", MP_EPROTO, 0, NULL, NULL, 0, 0 },
	{ "2500 x\r\n", MP_EPROTO, 0, NULL, NULL, 0, 0 },
	{ "25 x\r\n", MP_EPROTO, 0, NULL, NULL, 0, 0 },
	{ "150 x\r\n", MP_EPROTO, 0, NULL, NULL, 0, 0 },
	{ "650 x\r\n", MP_EPROTO, 0, NULL, NULL, 0, 0 },
	{ "2a0 x\r\n", MP_EPROTO, 0, NULL, NULL, 0, 0 },
	{ "\r\n", MP_EPROTO, 0, NULL, NULL, 0, 0 },
	{ "250-a\r\n", MP_AGAIN, 0, NULL, NULL, 0, 0 },
	{ "250 partial", MP_AGAIN, 0, NULL, NULL, 0, 0 },
	{ "", MP_AGAIN, 0, NULL, NULL, 0, 0 },
};

struct reply_outcome {
	int ret;
	size_t consumed;
	struct smtp_reply reply;
};

/* Feeds in[0..k) then in[k..len) like a client (unconsumed input kept),
 * until the first reply or error. */
static void feed_split(const char *in, size_t len, size_t k, struct reply_outcome *o)
{
	struct smtp_reply_parser p;
	smtp_reply_parser_init(&p);
	char *acc = malloc(len + 1);
	assert_non_null(acc);
	size_t acc_len = 0, total = 0;
	size_t cuts[2] = { k, len };
	size_t pos = 0;
	o->ret = MP_AGAIN;
	for (int step = 0; step < 2 && o->ret == MP_AGAIN; step++) {
		memcpy(acc + acc_len, in + pos, cuts[step] - pos);
		acc_len += cuts[step] - pos;
		pos = cuts[step];
		size_t consumed = 0;
		const char *err = NULL;
		o->ret = smtp_reply_feed(&p, acc, acc_len, &consumed, &err);
		assert_true(consumed <= acc_len);
		if (o->ret != MP_OK && o->ret != MP_AGAIN)
			assert_non_null(err);
		memmove(acc, acc + consumed, acc_len - consumed);
		acc_len -= consumed;
		total += consumed;
	}
	o->consumed = total;
	o->reply = p.reply;
	free(acc);
}

static void check_reply_case(const char *in, size_t len, int ret, int code, const char *enh,
			     const char *text, size_t nlines, size_t consumed)
{
	for (size_t k = 0; k <= len; k++) {
		struct reply_outcome o;
		feed_split(in, len, k, &o);
		if (o.ret != ret)
			fprintf(stderr, "input \"%s\" split at %zu: %d, want %d\n", in, k, o.ret, ret);
		assert_int_equal(o.ret, ret);
		if (ret != MP_OK)
			continue;
		assert_int_equal(o.reply.code, code);
		assert_string_equal(o.reply.enhanced, enh);
		assert_string_equal(o.reply.text, text);
		assert_int_equal(o.reply.text_len, strlen(text));
		assert_int_equal(o.reply.nlines, nlines);
		assert_int_equal(o.consumed, consumed != 0 ? consumed : len);
	}
}

static void test_reply_parser(void **state)
{
	for (size_t i = 0; i < sizeof(reply_cases) / sizeof(reply_cases[0]); i++) {
		const struct reply_case *c = &reply_cases[i];
		check_reply_case(c->in, strlen(c->in), c->ret, c->code, c->enhanced, c->text,
				 c->nlines, c->consumed);
	}

	/* Line length: 2048 octets with CRLF pass, 2049 do not (also before
	 * the line ends). */
	char *buf = malloc(200 * 1024);
	assert_non_null(buf);
	memset(buf, 'x', SMTP_REPLY_LINE_MAX);
	memcpy(buf, "250 ", 4);
	memcpy(buf + SMTP_REPLY_LINE_MAX - 2, "\r\n", 2);
	struct reply_outcome o;
	feed_split(buf, SMTP_REPLY_LINE_MAX, SMTP_REPLY_LINE_MAX / 2, &o);
	assert_int_equal(o.ret, MP_OK);
	assert_int_equal(o.reply.text_len, SMTP_REPLY_LINE_MAX - 6);
	memset(buf, 'x', SMTP_REPLY_LINE_MAX + 1);
	memcpy(buf, "250 ", 4);
	memcpy(buf + SMTP_REPLY_LINE_MAX - 1, "\r\n", 2);
	feed_split(buf, SMTP_REPLY_LINE_MAX + 1, 100, &o);
	assert_int_equal(o.ret, MP_ETOOBIG);
	feed_split(buf, SMTP_REPLY_LINE_MAX, 100, &o); /* no LF yet, already too long */
	assert_int_equal(o.ret, MP_ETOOBIG);
	feed_split(buf, SMTP_REPLY_LINE_MAX - 1, 100, &o); /* could still end */
	assert_int_equal(o.ret, MP_AGAIN);

	/* Lines: 100 pass, 101 do not. */
	size_t n = 0;
	for (int i = 0; i < SMTP_REPLY_LINES_MAX - 1; i++)
		n += (size_t)snprintf(buf + n, 32, "250-line%d\r\n", i);
	n += (size_t)snprintf(buf + n, 32, "250 last\r\n");
	feed_split(buf, n, 7, &o);
	assert_int_equal(o.ret, MP_OK);
	assert_int_equal(o.reply.nlines, SMTP_REPLY_LINES_MAX);
	assert_false(o.reply.truncated);
	n = 0;
	for (int i = 0; i < SMTP_REPLY_LINES_MAX; i++)
		n += (size_t)snprintf(buf + n, 32, "250-line%d\r\n", i);
	n += (size_t)snprintf(buf + n, 32, "250 last\r\n");
	feed_split(buf, n, 7, &o);
	assert_int_equal(o.ret, MP_ETOOBIG);

	/* Text beyond SMTP_REPLY_TEXT_MAX is cut, flagged, lines still counted. */
	n = 0;
	for (int i = 0; i < 10; i++) {
		memcpy(buf + n, "250-", 4);
		memset(buf + n + 4, 'a' + i, 1000);
		memcpy(buf + n + 1004, "\r\n", 2);
		n += 1006;
	}
	n += (size_t)snprintf(buf + n, 32, "250 end\r\n");
	feed_split(buf, n, n / 3, &o);
	assert_int_equal(o.ret, MP_OK);
	assert_int_equal(o.reply.nlines, 11);
	assert_true(o.reply.truncated);
	assert_true(o.reply.text_len < SMTP_REPLY_TEXT_MAX);
	assert_int_equal(strlen(o.reply.text), o.reply.text_len);
	free(buf);

	/* Two replies in one buffer, then the next call starts afresh. */
	const char *two = "250 one\r\n550 5.0.0 two\r\n";
	struct smtp_reply_parser p;
	smtp_reply_parser_init(&p);
	size_t consumed;
	const char *err;
	assert_int_equal(smtp_reply_feed(&p, two, strlen(two), &consumed, &err), MP_OK);
	assert_int_equal(p.reply.code, 250);
	assert_int_equal(consumed, 9);
	assert_int_equal(smtp_reply_feed(&p, two + 9, strlen(two) - 9, &consumed, &err), MP_OK);
	assert_int_equal(p.reply.code, 550);
	assert_string_equal(p.reply.text, "two");
}

struct stuff_case {
	const char *in;
	const char *wire;
};

static const struct stuff_case stuff_cases[] = {
	{ "", ".\r\n" },
	{ "a", "a\r\n.\r\n" },
	{ "a\r\n", "a\r\n.\r\n" },
	{ ".", "..\r\n.\r\n" },
	{ ".\r\n", "..\r\n.\r\n" },
	{ "a\r\n.\r\nb\r\n", "a\r\n..\r\nb\r\n.\r\n" },
	{ "..x\r\n", "...x\r\n.\r\n" },
	{ "a.b\r\n.", "a.b\r\n..\r\n.\r\n" },
	/* bare LF and bare CR become CRLF: no "<LF>.<LF>" reaches the wire */
	{ "a\n.\nb", "a\r\n..\r\nb\r\n.\r\n" },
	{ "a\r.\rb", "a\r\n..\r\nb\r\n.\r\n" },
	{ "a\r\r\n", "a\r\n\r\n.\r\n" },
	{ "a\n\r\n.", "a\r\n\r\n..\r\n.\r\n" },
	{ "x\r", "x\r\n.\r\n" },
	{ "\r\n\r\n", "\r\n\r\n.\r\n" },
};

static size_t stuff_split(const char *in, size_t len, size_t k, char *out)
{
	struct smtp_dotstuff ds;
	smtp_dotstuff_init(&ds);
	size_t o = smtp_dotstuff(&ds, in, k, out);
	o += smtp_dotstuff(&ds, in + k, len - k, out + o);
	o += smtp_dotstuff_end(&ds, out + o);
	return o;
}

static void test_dotstuff(void **state)
{
	for (size_t i = 0; i < sizeof(stuff_cases) / sizeof(stuff_cases[0]); i++) {
		const struct stuff_case *c = &stuff_cases[i];
		size_t len = strlen(c->in);
		for (size_t k = 0; k <= len; k++) {
			char out[128];
			assert_true(SMTP_DOTSTUFF_OUT_MAX(len) + 5 <= sizeof(out));
			size_t n = stuff_split(c->in, len, k, out);
			out[n] = '\0';
			if (strcmp(out, c->wire) != 0)
				fprintf(stderr, "case %zu split %zu\n", i, k);
			assert_string_equal(out, c->wire);
		}
	}
	/* The worst case fits SMTP_DOTSTUFF_OUT_MAX: a CR carried over, then
	 * "." at each line start. */
	struct smtp_dotstuff ds;
	smtp_dotstuff_init(&ds);
	char out[64];
	assert_int_equal(smtp_dotstuff(&ds, "x\r", 2, out), 1);
	size_t n = smtp_dotstuff(&ds, ".\r.\r.", 5, out);
	assert_true(n <= SMTP_DOTSTUFF_OUT_MAX(5));
	out[n] = '\0';
	assert_string_equal(out, "\r\n..\r\n..\r\n..");
}

/* ------------------------------------------------------------ scripted server */

#define REPLY_CLOSE "!close"   /* close the connection instead of replying */
#define REPLY_SILENT "!silent" /* never reply */
#define SRV_MAX_CMDS 64
#define SRV_MAX_CONNS 4
#define SRV_HOLD_MS 3000       /* how long a held MAIL reply waits for DATA */
#define SRV_LIFETIME_S 30      /* safety: a server thread ends after this */

struct srv;

struct sconn {
	struct srv *srv;                  /* borrowed */
	struct bufferevent *bev;          /* owned */
	int in_data;
	int rcpt_i;
	int tls;
	int closing;
	struct evbuffer *held;            /* owned: replies held until DATA */
	struct event *hold_timer;         /* owned */
};

struct srv {
	/* The script; NULL replies take the defaults. */
	const char *greeting;
	const char *ehlo;                 /* to EHLO in plaintext */
	const char *ehlo_tls;             /* to EHLO inside TLS */
	const char *helo;
	const char *mail;
	const char *rcpt[8];
	const char *data;
	const char *dot;
	const char *starttls;
	int silent;                       /* accept and never write */
	int tls_break;                    /* after 220 to STARTTLS, no TLS */
	int hold_mail;                    /* hold MAIL/RCPT replies until DATA */
	int max_conns;                    /* exit after this many (0 = 1) */
	struct fe_tls *tls;               /* borrowed */
	const char *bind_addr;            /* NULL = 127.0.0.1 */
	int port;                         /* 0 = any */

	/* Running. */
	int fd;
	struct event_base *base;
	struct evconnlistener *listener;
	pthread_t th;
	struct sconn *conns[SRV_MAX_CONNS];
	int nconns, nclosed;

	/* What happened; read after srv_join(). */
	int ncmds;
	char *cmds[SRV_MAX_CMDS];         /* owned */
	struct mp_buf data_seen;          /* DATA lines with CRLF */
	int data_complete;                /* "." received */
	int held_until_data;              /* a held MAIL reply went out at DATA */
	int hold_expired;                 /* ... or when the hold timed out */
	int early_input;                  /* input waiting behind an unheld MAIL */
	int tls_sessions;                 /* EHLO received inside TLS */
};

static void sconn_free(struct sconn *c)
{
	struct srv *s = c->srv;
	for (int i = 0; i < SRV_MAX_CONNS; i++)
		if (s->conns[i] == c)
			s->conns[i] = NULL;
	if (c->hold_timer != NULL)
		event_free(c->hold_timer);
	if (c->held != NULL)
		evbuffer_free(c->held);
	if (c->bev != NULL)
		bufferevent_free(c->bev);
	free(c);
	s->nclosed++;
	if (s->nclosed >= (s->max_conns > 0 ? s->max_conns : 1))
		event_base_loopexit(s->base, NULL);
}

static void sconn_reply(struct sconn *c, const char *text)
{
	if (strcmp(text, REPLY_SILENT) == 0)
		return;
	if (strcmp(text, REPLY_CLOSE) == 0) {
		c->closing = 1; /* freed by sconn_read, nothing to flush */
		return;
	}
	if (c->held != NULL && evbuffer_get_length(c->held) > 0) {
		evbuffer_add(c->held, text, strlen(text));
		return;
	}
	bufferevent_write(c->bev, text, strlen(text));
	if (strncmp(text, "421", 3) == 0)
		c->closing = 1; /* RFC 5321 §3.8: close after 421 */
}

static void sconn_flush_held(struct sconn *c)
{
	if (c->held != NULL && evbuffer_get_length(c->held) > 0)
		bufferevent_write_buffer(c->bev, c->held);
	if (c->hold_timer != NULL)
		event_del(c->hold_timer);
}

static void sconn_hold_expired(evutil_socket_t fd, short what, void *arg)
{
	struct sconn *c = arg;
	c->srv->hold_expired = 1;
	sconn_flush_held(c);
}

static void sconn_read(struct bufferevent *bev, void *arg);
static void sconn_write(struct bufferevent *bev, void *arg);
static void sconn_event(struct bufferevent *bev, short what, void *arg);

/* Handles one command line; returns 1 if the connection is closing or
 * was switched to TLS (stop reading from the old input). */
static int sconn_command(struct sconn *c, const char *line)
{
	struct srv *s = c->srv;
	if (s->ncmds < SRV_MAX_CMDS) {
		s->cmds[s->ncmds] = strdup(line);
		assert_non_null(s->cmds[s->ncmds]);
		s->ncmds++;
	}
	if (strncasecmp(line, "EHLO", 4) == 0) {
		if (c->tls)
			s->tls_sessions++;
		sconn_reply(c, c->tls ? (s->ehlo_tls ? s->ehlo_tls : "250 test.example\r\n") :
			    (s->ehlo ? s->ehlo : "250 test.example\r\n"));
	} else if (strncasecmp(line, "HELO", 4) == 0) {
		sconn_reply(c, s->helo ? s->helo : "250 test.example\r\n");
	} else if (strncasecmp(line, "MAIL", 4) == 0) {
		c->rcpt_i = 0;
		const char *r = s->mail ? s->mail : "250 2.1.0 Ok\r\n";
		if (s->hold_mail && strcmp(r, REPLY_CLOSE) != 0) {
			/* RFC 2920: a pipelining client sends RCPT and DATA
			 * without waiting; hold the reply until DATA shows. */
			evbuffer_add(c->held, r, strlen(r));
			struct timeval tv = { SRV_HOLD_MS / 1000, (SRV_HOLD_MS % 1000) * 1000 };
			event_add(c->hold_timer, &tv);
		} else {
			if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0)
				s->early_input = 1;
			sconn_reply(c, r);
		}
	} else if (strncasecmp(line, "RCPT", 4) == 0) {
		const char *r = c->rcpt_i < 8 && s->rcpt[c->rcpt_i] ? s->rcpt[c->rcpt_i] :
			"250 2.1.5 Ok\r\n";
		c->rcpt_i++;
		sconn_reply(c, r);
	} else if (strncasecmp(line, "DATA", 4) == 0) {
		if (c->held != NULL && evbuffer_get_length(c->held) > 0) {
			s->held_until_data = 1;
			sconn_flush_held(c);
		}
		const char *r = s->data ? s->data : "354 End data with <CR><LF>.<CR><LF>\r\n";
		if (strncmp(r, "354", 3) == 0)
			c->in_data = 1;
		sconn_reply(c, r);
	} else if (strncasecmp(line, "STARTTLS", 8) == 0) {
		const char *r = s->starttls ? s->starttls : "220 2.0.0 Ready to start TLS\r\n";
		sconn_reply(c, r);
		if (strncmp(r, "220", 3) != 0 || c->closing)
			return c->closing;
		if (s->tls_break || s->tls == NULL) {
			bufferevent_write(c->bev, "this is not TLS\r\n", 17);
			c->closing = 1;
			return 1;
		}
		struct bufferevent *tb = fe_tls_bev_starttls(s->tls, s->base, c->bev);
		assert_non_null(tb);
		c->bev = tb;
		c->tls = 1;
		bufferevent_setcb(tb, sconn_read, sconn_write, sconn_event, c);
		bufferevent_enable(tb, EV_READ | EV_WRITE);
		return 1;
	} else if (strncasecmp(line, "QUIT", 4) == 0) {
		sconn_reply(c, "221 2.0.0 Bye\r\n");
		c->closing = 1;
	} else if (strncasecmp(line, "RSET", 4) == 0 || strncasecmp(line, "NOOP", 4) == 0) {
		sconn_reply(c, "250 2.0.0 Ok\r\n");
	} else {
		sconn_reply(c, "500 5.5.2 Error: command not recognized\r\n");
	}
	return c->closing;
}

static void sconn_read(struct bufferevent *bev, void *arg)
{
	struct sconn *c = arg;
	struct srv *s = c->srv;
	struct evbuffer *in = bufferevent_get_input(bev);
	for (int guard = 0; guard < 100000 && !c->closing; guard++) {
		size_t n = 0;
		char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF_STRICT);
		if (line == NULL)
			break;
		if (c->in_data) {
			if (strcmp(line, ".") == 0) {
				c->in_data = 0;
				s->data_complete = 1;
				sconn_reply(c, s->dot ? s->dot : "250 2.0.0 Ok: queued as T1\r\n");
			} else {
				assert_int_equal(mp_buf_append(&s->data_seen, line, n), 0);
				assert_int_equal(mp_buf_append(&s->data_seen, "\r\n", 2), 0);
			}
			free(line);
			continue;
		}
		int stop = sconn_command(c, line);
		free(line);
		if (stop)
			break; /* closing or switched to TLS */
	}
	if (c->closing && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
		sconn_free(c);
}

static void sconn_write(struct bufferevent *bev, void *arg)
{
	struct sconn *c = arg;
	if (c->closing && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
		sconn_free(c);
}

static void sconn_event(struct bufferevent *bev, short what, void *arg)
{
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		sconn_free(arg);
}

static void srv_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
		       int salen, void *arg)
{
	struct srv *s = arg;
	struct sconn *c = calloc(1, sizeof(*c));
	assert_non_null(c);
	c->srv = s;
	c->held = evbuffer_new();
	c->hold_timer = evtimer_new(s->base, sconn_hold_expired, c);
	c->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
	assert_true(c->held != NULL && c->hold_timer != NULL && c->bev != NULL);
	for (int i = 0; i < SRV_MAX_CONNS; i++) {
		if (s->conns[i] == NULL) {
			s->conns[i] = c;
			break;
		}
	}
	s->nconns++;
	bufferevent_setcb(c->bev, sconn_read, sconn_write, sconn_event, c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	if (!s->silent)
		sconn_reply(c, s->greeting ? s->greeting : "220 test.example ESMTP\r\n");
}

static void *srv_main(void *arg)
{
	struct srv *s = arg;
	struct timeval life = { SRV_LIFETIME_S, 0 };
	event_base_loopexit(s->base, &life);
	event_base_dispatch(s->base);
	return NULL;
}

static void srv_start(struct srv *s)
{
	s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(s->fd >= 0);
	int one = 1;
	setsockopt(s->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)s->port) };
	assert_int_equal(inet_pton(AF_INET, s->bind_addr ? s->bind_addr : "127.0.0.1",
				   &sin.sin_addr), 1);
	assert_int_equal(bind(s->fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(listen(s->fd, 16), 0);
	socklen_t len = sizeof(sin);
	assert_int_equal(getsockname(s->fd, (struct sockaddr *)&sin, &len), 0);
	s->port = ntohs(sin.sin_port);
	assert_int_equal(evutil_make_socket_nonblocking(s->fd), 0);
	mp_buf_init(&s->data_seen, 0);
	s->base = event_base_new();
	assert_non_null(s->base);
	s->listener = evconnlistener_new(s->base, srv_accept, s, LEV_OPT_CLOSE_ON_FREE, -1, s->fd);
	assert_non_null(s->listener);
	assert_int_equal(pthread_create(&s->th, NULL, srv_main, s), 0);
}

static void srv_join(struct srv *s)
{
	assert_int_equal(pthread_join(s->th, NULL), 0);
	for (int i = 0; i < SRV_MAX_CONNS; i++)
		if (s->conns[i] != NULL)
			sconn_free(s->conns[i]);
	evconnlistener_free(s->listener);
	event_base_free(s->base);
}

static void srv_free(struct srv *s)
{
	for (int i = 0; i < s->ncmds; i++)
		free(s->cmds[i]);
	mp_buf_free(&s->data_seen);
}

/* The i-th recorded command, asserting it exists. */
static const char *srv_cmd(const struct srv *s, int i)
{
	if (i >= s->ncmds)
		fail_msg("command %d missing (server saw %d)", i, s->ncmds);
	return s->cmds[i];
}

static int srv_count(const struct srv *s, const char *prefix)
{
	int n = 0;
	for (int i = 0; i < s->ncmds; i++)
		n += strncasecmp(s->cmds[i], prefix, strlen(prefix)) == 0;
	return n;
}

/* ------------------------------------------------------------ client side */

static char tmpdir[256];
static char cert_path[512], key_path[512], ca_path[512];
static struct fe_tls *server_tls;
static struct fe_tls_client *client_tls;

static void mx_add(struct fe_dns_mx_list *mx, const char *name, const char *ip)
{
	struct fe_dns_host *h = NULL;
	for (size_t i = 0; i < mx->nhosts; i++)
		if (strcmp(mx->hosts[i].name, name) == 0)
			h = &mx->hosts[i];
	if (h == NULL) {
		assert_true(mx->nhosts < FE_DNS_MAX_HOSTS);
		h = &mx->hosts[mx->nhosts++];
		snprintf(h->name, sizeof(h->name), "%s", name);
	}
	struct sockaddr_in *sin = (struct sockaddr_in *)&h->addrs[h->naddrs];
	memset(sin, 0, sizeof(h->addrs[0]));
	sin->sin_family = AF_INET;
	assert_int_equal(inet_pton(AF_INET, ip, &sin->sin_addr), 1);
	h->addrlens[h->naddrs++] = sizeof(*sin);
}

static void conf_init(struct smtp_client_conf *conf, int port)
{
	memset(conf, 0, sizeof(*conf));
	conf->helo_name = "client.test";
	conf->port = (uint16_t)port;
	/* Short, but never the thing a passing test depends on. */
	struct smtp_client_timeouts t = { 5000, 5000, 5000, 5000, 5000, 5000, 5000, 5000, 5000, 2000 };
	conf->timeouts = t;
}

static const char body_text[] =
	"From: alice@example.org\r\n"
	"Subject: test\r\n"
	"\r\n"
	"Hello.\r\n"
	".leading dot\r\n"
	"..two dots\r\n"
	".\r\n"
	"bare\nlf and no final newline";

static const char body_wire[] =
	"From: alice@example.org\r\n"
	"Subject: test\r\n"
	"\r\n"
	"Hello.\r\n"
	"..leading dot\r\n"
	"...two dots\r\n"
	"..\r\n"
	"bare\r\n"
	"lf and no final newline\r\n";

static struct smtp_rcpt rcpts3[3] = {
	{ "bob@example.net", DSN_NOTIFY_SUCCESS | DSN_NOTIFY_FAILURE, "rfc822;bob+x@example.net" },
	{ "carol@example.net", DSN_NOTIFY_NEVER, NULL },
	{ "dave@example.net", 0, NULL },
};

static void env_init(struct smtp_envelope *env, size_t nrcpts)
{
	memset(env, 0, sizeof(*env));
	env->sender = "alice@example.org";
	env->rcpts = rcpts3;
	env->nrcpts = nrcpts;
}

/* Runs one delivery of body_text against the server(s); returns the result. */
static struct smtp_result *run(const struct smtp_client_conf *conf,
			       const struct fe_dns_mx_list *mx, const struct smtp_envelope *env,
			       const char *text, size_t len)
{
	struct smtp_body body;
	struct smtp_mem_body mem;
	smtp_body_from_mem(&body, &mem, text, len);
	struct smtp_result *res = NULL;
	char *err = NULL;
	int ret = smtp_client_deliver(conf, mx, env, &body, 0, &res, &err);
	if (ret != 0)
		fprintf(stderr, "smtp_client_deliver: %s\n", err);
	assert_int_equal(ret, 0);
	assert_null(err);
	assert_non_null(res);
	assert_int_equal(res->nrcpts, env->nrcpts);
	assert_int_equal(res->ndelivered + res->ntempfail + res->npermfail, env->nrcpts);
	for (size_t i = 0; i < res->nrcpts; i++) {
		const struct smtp_rcpt_result *rr = &res->rcpts[i];
		char cls = rr->status == SMTP_RCPT_DELIVERED ? '2' :
			   rr->status == SMTP_RCPT_TEMPFAIL ? '4' : '5';
		assert_int_equal(rr->enhanced[0], cls);
		if (getenv("TEST_VERBOSE") != NULL)
			fprintf(stderr, "  rcpt %zu: %s %d %s %s\n", i,
				smtp_rcpt_status_name(rr->status), rr->code, rr->enhanced, rr->text);
	}
	return res;
}

static struct smtp_result *run1(struct srv *s, const struct smtp_envelope *env)
{
	struct smtp_client_conf conf;
	conf_init(&conf, s->port);
	struct fe_dns_mx_list mx = { 0 };
	mx_add(&mx, "mx.test", "127.0.0.1");
	return run(&conf, &mx, env, body_text, strlen(body_text));
}

static void assert_rcpt(const struct smtp_result *res, size_t i, enum smtp_rcpt_status st,
			int code, const char *enh, const char *text_part)
{
	const struct smtp_rcpt_result *rr = &res->rcpts[i];
	if (rr->status != st || rr->code != code)
		fprintf(stderr, "rcpt %zu: %s %d %s %s\n", i, smtp_rcpt_status_name(rr->status),
			rr->code, rr->enhanced, rr->text);
	assert_int_equal(rr->status, st);
	assert_int_equal(rr->code, code);
	if (enh != NULL)
		assert_string_equal(rr->enhanced, enh);
	if (text_part != NULL && strstr(rr->text, text_part) == NULL)
		fail_msg("rcpt %zu text \"%s\" lacks \"%s\"", i, rr->text, text_part);
}

/* ------------------------------------------------------------ deliveries */

static void test_pipelining(void **state)
{
	struct srv s = {
		.ehlo = "250-test.example\r\n250-PIPELINING\r\n250-SIZE 100000\r\n"
			"250-8BITMIME\r\n250-DSN\r\n250 ENHANCEDSTATUSCODES\r\n",
		.hold_mail = 1,
	};
	srv_start(&s);
	struct smtp_envelope env;
	env_init(&env, 3);
	env.need_8bitmime = 1;
	env.ret = DSN_RET_HDRS;
	env.envid = "id+1=x";
	struct smtp_result *res = run1(&s, &env);
	srv_join(&s);

	for (size_t i = 0; i < 3; i++)
		assert_rcpt(res, i, SMTP_RCPT_DELIVERED, 250, "2.0.0", "Ok: queued as T1");
	assert_int_equal(res->ndelivered, 3);
	assert_string_equal(res->mx_host, "mx.test");
	assert_string_equal(res->mx_addr, "127.0.0.1");
	assert_int_equal(res->attempts, 1);
	assert_true(res->dsn_offered);
	assert_false(res->tls);
	assert_false(res->eightbit_unannounced);
	/* Pipelined: the held MAIL reply went out because DATA arrived. */
	assert_true(s.held_until_data);
	assert_false(s.hold_expired);
	assert_string_equal(srv_cmd(&s, 0), "EHLO client.test");
	char want[128];
	snprintf(want, sizeof(want),
		 "MAIL FROM:<alice@example.org> SIZE=%zu BODY=8BITMIME RET=HDRS ENVID=id+2B1+3Dx",
		 strlen(body_text));
	assert_string_equal(srv_cmd(&s, 1), want);
	assert_string_equal(srv_cmd(&s, 2),
			    "RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE "
			    "ORCPT=rfc822;bob+2Bx@example.net");
	assert_string_equal(srv_cmd(&s, 3), "RCPT TO:<carol@example.net> NOTIFY=NEVER");
	assert_string_equal(srv_cmd(&s, 4), "RCPT TO:<dave@example.net>");
	assert_string_equal(srv_cmd(&s, 5), "DATA");
	assert_string_equal(srv_cmd(&s, 6), "QUIT");
	assert_int_equal(s.ncmds, 7);
	/* Dot-stuffed on the wire, line endings made CRLF, ended. */
	assert_true(s.data_complete);
	assert_int_equal(s.data_seen.len, strlen(body_wire));
	assert_memory_equal(s.data_seen.data, body_wire, strlen(body_wire));
	smtp_result_free(&res);
	smtp_result_free(&res);
	srv_free(&s);
}

static void test_no_pipelining(void **state)
{
	/* No PIPELINING, no DSN, no SIZE, no 8BITMIME. */
	struct srv s = { .ehlo = "250-test.example\r\n250 HELP\r\n" };
	srv_start(&s);
	struct smtp_envelope env;
	env_init(&env, 2);
	env.need_8bitmime = 1;
	env.ret = DSN_RET_FULL;
	env.envid = "x";
	struct smtp_result *res = run1(&s, &env);
	srv_join(&s);
	assert_rcpt(res, 0, SMTP_RCPT_DELIVERED, 250, "2.0.0", NULL);
	assert_rcpt(res, 1, SMTP_RCPT_DELIVERED, 250, "2.0.0", NULL);
	assert_false(s.early_input);
	assert_false(res->dsn_offered);
	assert_true(res->eightbit_unannounced);
	assert_string_equal(srv_cmd(&s, 1), "MAIL FROM:<alice@example.org>");
	assert_string_equal(srv_cmd(&s, 2), "RCPT TO:<bob@example.net>");
	assert_string_equal(srv_cmd(&s, 3), "RCPT TO:<carol@example.net>");
	assert_string_equal(srv_cmd(&s, 4), "DATA");
	assert_memory_equal(s.data_seen.data, body_wire, strlen(body_wire));
	smtp_result_free(&res);
	srv_free(&s);
}

static void test_mixed_rcpts(void **state)
{
	for (int pipelining = 0; pipelining < 2; pipelining++) {
		struct srv s = {
			.ehlo = pipelining ? "250-test.example\r\n250 PIPELINING\r\n" :
					     "250 test.example\r\n",
			.rcpt = { "250 2.1.5 Ok\r\n", "450 4.2.1 Mailbox busy\r\n",
				  "550-5.1.1 No such\r\n550 5.1.1 user here\r\n" },
		};
		srv_start(&s);
		struct smtp_envelope env;
		env_init(&env, 3);
		struct smtp_result *res = run1(&s, &env);
		srv_join(&s);
		assert_rcpt(res, 0, SMTP_RCPT_DELIVERED, 250, "2.0.0", NULL);
		assert_rcpt(res, 1, SMTP_RCPT_TEMPFAIL, 450, "4.2.1", "Mailbox busy");
		assert_rcpt(res, 2, SMTP_RCPT_PERMFAIL, 550, "5.1.1", "No such user here");
		assert_int_equal(res->ndelivered, 1);
		assert_int_equal(res->ntempfail, 1);
		assert_int_equal(res->npermfail, 1);
		assert_int_equal(srv_count(&s, "DATA"), 1);
		assert_true(s.data_complete);
		smtp_result_free(&res);
		srv_free(&s);
	}

	/* No recipient accepted: no DATA without pipelining; with it, DATA
	 * is refused (or, if a server took it, only "." is sent). */
	for (int pipelining = 0; pipelining < 2; pipelining++) {
		struct srv s = {
			.ehlo = pipelining ? "250-test.example\r\n250 PIPELINING\r\n" :
					     "250 test.example\r\n",
			.rcpt = { "550 5.1.1 no\r\n" },
			.data = pipelining ? "354 go ahead anyway\r\n" : NULL,
		};
		srv_start(&s);
		struct smtp_envelope env;
		env_init(&env, 1);
		struct smtp_result *res = run1(&s, &env);
		srv_join(&s);
		assert_rcpt(res, 0, SMTP_RCPT_PERMFAIL, 550, "5.1.1", NULL);
		assert_int_equal(srv_count(&s, "DATA"), pipelining);
		assert_int_equal(s.data_seen.len, 0); /* no message data */
		assert_int_equal(s.data_complete, pipelining);
		smtp_result_free(&res);
		srv_free(&s);
	}
}

static void test_greeting_421_next_mx(void **state)
{
	/* mx1 (127.0.0.1) greets with 421, mx2 (127.0.0.2, same port) works. */
	struct srv a = { .greeting = "421 4.3.2 Too busy\r\n" };
	srv_start(&a);
	struct srv b = { .bind_addr = "127.0.0.2", .port = a.port };
	srv_start(&b);
	struct smtp_client_conf conf;
	conf_init(&conf, a.port);
	struct fe_dns_mx_list mx = { 0 };
	mx_add(&mx, "mx1.test", "127.0.0.1");
	mx_add(&mx, "mx2.test", "127.0.0.2");
	struct smtp_envelope env;
	env_init(&env, 1);
	struct smtp_result *res = run(&conf, &mx, &env, body_text, strlen(body_text));
	srv_join(&a);
	srv_join(&b);
	assert_rcpt(res, 0, SMTP_RCPT_DELIVERED, 250, NULL, NULL);
	assert_int_equal(res->attempts, 2);
	assert_string_equal(res->mx_host, "mx2.test");
	assert_int_equal(a.ncmds, 0);
	assert_true(b.data_complete);
	smtp_result_free(&res);
	srv_free(&a);
	srv_free(&b);

	/* Only the 421 host: temporary for all, with its reply. */
	struct srv c = { .greeting = "421 4.3.2 Too busy\r\n" };
	srv_start(&c);
	env_init(&env, 2);
	res = run1(&c, &env);
	srv_join(&c);
	assert_rcpt(res, 0, SMTP_RCPT_TEMPFAIL, 421, "4.3.2", "Too busy");
	assert_rcpt(res, 1, SMTP_RCPT_TEMPFAIL, 421, "4.3.2", "Too busy");
	smtp_result_free(&res);
	srv_free(&c);

	/* 554 greeting: not a session; temporary (never a bounce on its own),
	 * the class of the status made 4. */
	struct srv d = { .greeting = "554 5.7.1 No SMTP service here\r\n" };
	srv_start(&d);
	env_init(&env, 1);
	res = run1(&d, &env);
	srv_join(&d);
	assert_rcpt(res, 0, SMTP_RCPT_TEMPFAIL, 554, "4.7.1", "No SMTP service");
	assert_string_equal(srv_cmd(&d, 0), "QUIT");
	smtp_result_free(&res);
	srv_free(&d);
}

static void test_mail_refused_and_421(void **state)
{
	for (int pipelining = 0; pipelining < 2; pipelining++) {
		struct srv s = {
			.ehlo = pipelining ? "250-test.example\r\n250 PIPELINING\r\n" :
					     "250 test.example\r\n",
			.mail = "550 5.7.1 Sender rejected\r\n",
			.rcpt = { "503 5.5.1 need MAIL\r\n", "503 5.5.1 need MAIL\r\n" },
			.data = "503 5.5.1 need RCPT\r\n",
		};
		srv_start(&s);
		struct smtp_envelope env;
		env_init(&env, 2);
		struct smtp_result *res = run1(&s, &env);
		srv_join(&s);
		assert_rcpt(res, 0, SMTP_RCPT_PERMFAIL, 550, "5.7.1", "Sender rejected");
		assert_rcpt(res, 1, SMTP_RCPT_PERMFAIL, 550, "5.7.1", "Sender rejected");
		assert_int_equal(srv_count(&s, "RCPT"), pipelining ? 2 : 0);
		assert_false(s.data_complete);
		smtp_result_free(&res);
		srv_free(&s);
	}

	/* 451 to MAIL: temporary for all. */
	struct srv t = { .mail = "451 4.3.0 Try later\r\n" };
	srv_start(&t);
	struct smtp_envelope env;
	env_init(&env, 2);
	struct smtp_result *res = run1(&t, &env);
	srv_join(&t);
	assert_rcpt(res, 0, SMTP_RCPT_TEMPFAIL, 451, "4.3.0", NULL);
	assert_rcpt(res, 1, SMTP_RCPT_TEMPFAIL, 451, "4.3.0", NULL);
	smtp_result_free(&res);
	srv_free(&t);

	/* 421 at the second RCPT: it and everything open are temporary, the
	 * first (already refused) keeps its 550. */
	struct srv u = { .rcpt = { "550 5.1.1 unknown\r\n", "421 4.4.2 Closing\r\n" } };
	srv_start(&u);
	env_init(&env, 3);
	res = run1(&u, &env);
	srv_join(&u);
	assert_rcpt(res, 0, SMTP_RCPT_PERMFAIL, 550, "5.1.1", NULL);
	assert_rcpt(res, 1, SMTP_RCPT_TEMPFAIL, 421, "4.4.2", "Closing");
	assert_rcpt(res, 2, SMTP_RCPT_TEMPFAIL, 421, "4.4.2", "Closing");
	assert_int_equal(srv_count(&u, "RCPT"), 2);
	assert_int_equal(srv_count(&u, "QUIT"), 0); /* no QUIT after 421 */
	smtp_result_free(&res);
	srv_free(&u);

	/* Connection dropped after MAIL: temporary for all. */
	struct srv v = { .mail = REPLY_CLOSE };
	srv_start(&v);
	env_init(&env, 1);
	res = run1(&v, &env);
	srv_join(&v);
	assert_rcpt(res, 0, SMTP_RCPT_TEMPFAIL, 0, "4.4.2", "lost connection");
	smtp_result_free(&res);
	srv_free(&v);
}

static void test_after_data(void **state)
{
	struct srv s = { .dot = "552 5.3.4 Message too big\r\n" };
	srv_start(&s);
	struct smtp_envelope env;
	env_init(&env, 2);
	struct smtp_result *res = run1(&s, &env);
	srv_join(&s);
	assert_rcpt(res, 0, SMTP_RCPT_PERMFAIL, 552, "5.3.4", "Message too big");
	assert_rcpt(res, 1, SMTP_RCPT_PERMFAIL, 552, "5.3.4", "Message too big");
	assert_true(s.data_complete);
	smtp_result_free(&res);
	srv_free(&s);

	/* 554 to DATA itself: permanent; 451 after the dot: temporary. */
	struct srv t = { .data = "554 5.5.0 No thanks\r\n" };
	srv_start(&t);
	env_init(&env, 1);
	res = run1(&t, &env);
	srv_join(&t);
	assert_rcpt(res, 0, SMTP_RCPT_PERMFAIL, 554, "5.5.0", NULL);
	assert_false(t.data_complete);
	smtp_result_free(&res);
	srv_free(&t);

	struct srv u = { .dot = "451 4.3.0 Queue full\r\n" };
	srv_start(&u);
	res = run1(&u, &env);
	srv_join(&u);
	assert_rcpt(res, 0, SMTP_RCPT_TEMPFAIL, 451, "4.3.0", NULL);
	smtp_result_free(&res);
	srv_free(&u);
}

static void test_size_and_utf8(void **state)
{
	/* SIZE 100 announced, message larger: refused before MAIL. */
	struct srv s = { .ehlo = "250-test.example\r\n250 SIZE 100\r\n" };
	srv_start(&s);
	struct smtp_envelope env;
	env_init(&env, 2);
	struct smtp_result *res = run1(&s, &env);
	srv_join(&s);
	assert_rcpt(res, 0, SMTP_RCPT_PERMFAIL, 0, "5.3.4", "exceeds the size limit 100");
	assert_rcpt(res, 1, SMTP_RCPT_PERMFAIL, 0, "5.3.4", NULL);
	assert_int_equal(srv_count(&s, "MAIL"), 0);
	assert_int_equal(srv_count(&s, "QUIT"), 1);
	smtp_result_free(&res);
	srv_free(&s);

	/* SMTPUTF8 needed, not offered: 5.6.7 for all, nothing sent. */
	static struct smtp_rcpt utf8_rcpt[1] = { { "j\xc3\xbcrgen@example.de", 0, NULL } };
	struct srv t = { .ehlo = "250-test.example\r\n250 8BITMIME\r\n" };
	srv_start(&t);
	env_init(&env, 1);
	env.rcpts = utf8_rcpt;
	env.need_smtputf8 = 1;
	env.need_8bitmime = 1;
	res = run1(&t, &env);
	srv_join(&t);
	assert_rcpt(res, 0, SMTP_RCPT_PERMFAIL, 0, "5.6.7", "SMTPUTF8");
	assert_int_equal(srv_count(&t, "MAIL"), 0);
	smtp_result_free(&res);
	srv_free(&t);

	/* ... and offered: the parameters go out. */
	struct srv u = { .ehlo = "250-test.example\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n" };
	srv_start(&u);
	res = run1(&u, &env);
	srv_join(&u);
	assert_rcpt(res, 0, SMTP_RCPT_DELIVERED, 250, NULL, NULL);
	assert_string_equal(srv_cmd(&u, 1), "MAIL FROM:<alice@example.org> BODY=8BITMIME SMTPUTF8");
	assert_string_equal(srv_cmd(&u, 2), "RCPT TO:<j\xc3\xbcrgen@example.de>");
	smtp_result_free(&res);
	srv_free(&u);
}

static void test_helo_fallback(void **state)
{
	struct srv s = { .ehlo = "502 5.5.1 EHLO not implemented\r\n" };
	srv_start(&s);
	struct smtp_envelope env;
	env_init(&env, 1);
	struct smtp_result *res = run1(&s, &env);
	srv_join(&s);
	assert_rcpt(res, 0, SMTP_RCPT_DELIVERED, 250, NULL, NULL);
	assert_string_equal(srv_cmd(&s, 0), "EHLO client.test");
	assert_string_equal(srv_cmd(&s, 1), "HELO client.test");
	assert_string_equal(srv_cmd(&s, 2), "MAIL FROM:<alice@example.org>");
	smtp_result_free(&res);
	srv_free(&s);

	/* HELO refused too: no session, temporary. */
	struct srv t = { .ehlo = "500 5.5.1 no\r\n", .helo = "550 5.7.1 go away\r\n" };
	srv_start(&t);
	res = run1(&t, &env);
	srv_join(&t);
	assert_rcpt(res, 0, SMTP_RCPT_TEMPFAIL, 550, "4.7.1", "go away");
	smtp_result_free(&res);
	srv_free(&t);
}

static void test_timeouts(void **state)
{
	/* Never a greeting. */
	struct srv s = { .silent = 1 };
	srv_start(&s);
	struct smtp_client_conf conf;
	conf_init(&conf, s.port);
	conf.timeouts.greeting_ms = 300;
	struct fe_dns_mx_list mx = { 0 };
	mx_add(&mx, "mx.test", "127.0.0.1");
	struct smtp_envelope env;
	env_init(&env, 2);
	struct smtp_result *res = run(&conf, &mx, &env, body_text, strlen(body_text));
	srv_join(&s);
	assert_rcpt(res, 0, SMTP_RCPT_TEMPFAIL, 0, "4.4.2",
		    "timed out while receiving the initial greeting");
	assert_rcpt(res, 1, SMTP_RCPT_TEMPFAIL, 0, "4.4.2", NULL);
	smtp_result_free(&res);
	srv_free(&s);

	/* Silent after the data: the final-dot timeout. */
	struct srv t = { .dot = REPLY_SILENT };
	srv_start(&t);
	conf_init(&conf, t.port);
	conf.timeouts.data_end_ms = 300;
	res = run(&conf, &mx, &env, body_text, strlen(body_text));
	srv_join(&t);
	assert_true(t.data_complete);
	assert_rcpt(res, 0, SMTP_RCPT_TEMPFAIL, 0, "4.4.2", "timed out while sending the end of data");
	smtp_result_free(&res);
	srv_free(&t);

	/* Silent after RCPT. */
	struct srv u = { .rcpt = { "250 ok\r\n", REPLY_SILENT } };
	srv_start(&u);
	conf_init(&conf, u.port);
	conf.timeouts.rcpt_ms = 300;
	res = run(&conf, &mx, &env, body_text, strlen(body_text));
	srv_join(&u);
	assert_rcpt(res, 0, SMTP_RCPT_TEMPFAIL, 0, "4.4.2", "timed out while sending RCPT TO");
	assert_rcpt(res, 1, SMTP_RCPT_TEMPFAIL, 0, "4.4.2", NULL);
	smtp_result_free(&res);
	srv_free(&u);

	/* The overall deadline, already past: no attempt at all. */
	struct smtp_body body;
	struct smtp_mem_body mem;
	smtp_body_from_mem(&body, &mem, body_text, strlen(body_text));
	char *err = NULL;
	assert_int_equal(smtp_client_deliver(&conf, &mx, &env, &body, fe_dns_now_ms() - 1, &res,
					     &err), 0);
	assert_int_equal(res->attempts, 0);
	assert_rcpt(res, 0, SMTP_RCPT_TEMPFAIL, 0, "4.4.7", "deadline");
	smtp_result_free(&res);
}

static void test_connect_refused(void **state)
{
	/* A port with nothing listening (bound, never listened on). */
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	struct sockaddr_in sin = { .sin_family = AF_INET };
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	socklen_t len = sizeof(sin);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
	struct smtp_client_conf conf;
	conf_init(&conf, ntohs(sin.sin_port));
	struct fe_dns_mx_list mx = { 0 };
	mx_add(&mx, "mx1.test", "127.0.0.1");
	mx_add(&mx, "mx1.test", "127.0.0.1");
	mx_add(&mx, "mx2.test", "127.0.0.1");
	struct smtp_envelope env;
	env_init(&env, 1);
	struct smtp_result *res = run(&conf, &mx, &env, body_text, strlen(body_text));
	assert_rcpt(res, 0, SMTP_RCPT_TEMPFAIL, 0, "4.4.1", "Connection refused");
	assert_int_equal(res->attempts, 3);
	smtp_result_free(&res);
	/* max_addrs bounds the attempts. */
	conf.max_addrs = 2;
	res = run(&conf, &mx, &env, body_text, strlen(body_text));
	assert_int_equal(res->attempts, 2);
	smtp_result_free(&res);
	close(fd);
}

static void test_large_body(void **state)
{
	/* Many blocks: stuffing across block edges, and the wire form equal
	 * to the message with its leading dots doubled. */
	struct mp_buf msg, wire;
	mp_buf_init(&msg, 0);
	mp_buf_init(&wire, 0);
	for (int i = 0; i < 20000; i++) {
		const char *dot = i % 7 == 0 ? "." : "";
		assert_int_equal(mp_buf_printf(&msg, "%sline %d of the body\r\n", dot, i), 0);
		assert_int_equal(mp_buf_printf(&wire, "%s%sline %d of the body\r\n", dot, dot, i),
				 0);
	}
	struct srv s = { .ehlo = "250-test.example\r\n250 SIZE 10000000\r\n" };
	srv_start(&s);
	struct smtp_client_conf conf;
	conf_init(&conf, s.port);
	struct fe_dns_mx_list mx = { 0 };
	mx_add(&mx, "mx.test", "127.0.0.1");
	struct smtp_envelope env;
	env_init(&env, 1);
	struct smtp_result *res = run(&conf, &mx, &env, msg.data, msg.len);
	srv_join(&s);
	assert_rcpt(res, 0, SMTP_RCPT_DELIVERED, 250, NULL, NULL);
	assert_true(s.data_complete);
	assert_int_equal(s.data_seen.len, wire.len);
	assert_memory_equal(s.data_seen.data, wire.data, wire.len);
	char want[64];
	snprintf(want, sizeof(want), "MAIL FROM:<alice@example.org> SIZE=%zu", msg.len);
	assert_string_equal(srv_cmd(&s, 1), want);
	smtp_result_free(&res);
	srv_free(&s);
	mp_buf_free(&msg);
	mp_buf_free(&wire);
}

static long failing_read(void *ctx, char *buf, size_t len)
{
	int *calls = ctx;
	if ((*calls)++ == 0) {
		memcpy(buf, "Subject: x\r\n\r\npartial", 21);
		return 21;
	}
	return MP_EIO;
}

static void test_body_read_error(void **state)
{
	struct srv s = { 0 };
	srv_start(&s);
	struct smtp_client_conf conf;
	conf_init(&conf, s.port);
	struct fe_dns_mx_list mx = { 0 };
	mx_add(&mx, "mx.test", "127.0.0.1");
	struct smtp_envelope env;
	env_init(&env, 1);
	int calls = 0;
	struct smtp_body body = { 1000, failing_read, &calls };
	struct smtp_result *res = NULL;
	char *err = NULL;
	assert_int_equal(smtp_client_deliver(&conf, &mx, &env, &body, 0, &res, &err), 0);
	srv_join(&s);
	assert_rcpt(res, 0, SMTP_RCPT_TEMPFAIL, 0, "4.3.0", "error reading the message");
	assert_false(s.data_complete); /* never ended with "." */
	smtp_result_free(&res);
	srv_free(&s);
}

static void test_starttls(void **state)
{
	struct srv s = {
		.ehlo = "250-test.example\r\n250-STARTTLS\r\n250 PIPELINING\r\n",
		.ehlo_tls = "250-test.example\r\n250-PIPELINING\r\n250 DSN\r\n",
		.tls = server_tls,
		.hold_mail = 1,
	};
	srv_start(&s);
	struct smtp_client_conf conf;
	conf_init(&conf, s.port);
	conf.tls = client_tls;
	struct fe_dns_mx_list mx = { 0 };
	mx_add(&mx, "localhost", "127.0.0.1");
	struct smtp_envelope env;
	env_init(&env, 2);
	struct smtp_result *res = run(&conf, &mx, &env, body_text, strlen(body_text));
	srv_join(&s);
	assert_rcpt(res, 0, SMTP_RCPT_DELIVERED, 250, NULL, NULL);
	assert_rcpt(res, 1, SMTP_RCPT_DELIVERED, 250, NULL, NULL);
	assert_true(res->tls);
	assert_non_null(strstr(res->tls_info, "TLSv1."));
	assert_int_equal(s.tls_sessions, 1);
	assert_true(res->dsn_offered); /* from the EHLO inside TLS */
	assert_string_equal(srv_cmd(&s, 0), "EHLO client.test");
	assert_string_equal(srv_cmd(&s, 1), "STARTTLS");
	assert_string_equal(srv_cmd(&s, 2), "EHLO client.test");
	assert_int_equal(strncmp(srv_cmd(&s, 3), "MAIL FROM:", 10), 0);
	assert_true(s.held_until_data);
	assert_memory_equal(s.data_seen.data, body_wire, strlen(body_wire));
	smtp_result_free(&res);
	srv_free(&s);

	/* RFC 3207 §4.2: plaintext the server sends after "220" (here in the
	 * same write) is discarded, never read as the reply to the EHLO
	 * inside TLS; that reply offers DSN, the injected one does not. */
	struct srv v = {
		.ehlo = "250-test.example\r\n250 STARTTLS\r\n",
		.starttls = "220 2.0.0 Ready\r\n250 injected\r\n",
		.ehlo_tls = "250-test.example\r\n250 DSN\r\n",
		.tls = server_tls,
	};
	srv_start(&v);
	conf_init(&conf, v.port);
	conf.tls = client_tls;
	res = run(&conf, &mx, &env, body_text, strlen(body_text));
	srv_join(&v);
	assert_int_equal(res->ndelivered, 2);
	assert_true(res->tls);
	assert_true(res->dsn_offered);
	assert_int_equal(v.nconns, 1);
	smtp_result_free(&res);
	srv_free(&v);

	/* Without a TLS client configured: no STARTTLS at all. */
	struct srv t = { .ehlo = "250-test.example\r\n250 STARTTLS\r\n", .tls = server_tls };
	srv_start(&t);
	conf_init(&conf, t.port);
	res = run(&conf, &mx, &env, body_text, strlen(body_text));
	srv_join(&t);
	assert_int_equal(res->ndelivered, 2);
	assert_int_equal(srv_count(&t, "STARTTLS"), 0);
	smtp_result_free(&res);
	srv_free(&t);
}

static void test_starttls_fallback(void **state)
{
	/* 220 to STARTTLS, then no TLS: the handshake fails and the same
	 * address is tried once more in plaintext, without STARTTLS. */
	struct srv s = {
		.ehlo = "250-test.example\r\n250 STARTTLS\r\n",
		.tls_break = 1,
		.max_conns = 2,
	};
	srv_start(&s);
	struct smtp_client_conf conf;
	conf_init(&conf, s.port);
	conf.tls = client_tls;
	struct fe_dns_mx_list mx = { 0 };
	mx_add(&mx, "localhost", "127.0.0.1");
	struct smtp_envelope env;
	env_init(&env, 1);
	struct smtp_result *res = run(&conf, &mx, &env, body_text, strlen(body_text));
	srv_join(&s);
	assert_rcpt(res, 0, SMTP_RCPT_DELIVERED, 250, NULL, NULL);
	assert_false(res->tls);
	assert_int_equal(res->attempts, 1);
	assert_int_equal(s.nconns, 2);
	assert_int_equal(srv_count(&s, "STARTTLS"), 1);
	assert_int_equal(srv_count(&s, "EHLO"), 2);
	assert_true(s.data_complete);
	smtp_result_free(&res);
	srv_free(&s);

	/* 454 to STARTTLS: go on in plaintext on the same connection. */
	struct srv t = {
		.ehlo = "250-test.example\r\n250 STARTTLS\r\n",
		.starttls = "454 4.7.0 TLS not available\r\n",
	};
	srv_start(&t);
	conf_init(&conf, t.port);
	conf.tls = client_tls;
	res = run(&conf, &mx, &env, body_text, strlen(body_text));
	srv_join(&t);
	assert_rcpt(res, 0, SMTP_RCPT_DELIVERED, 250, NULL, NULL);
	assert_false(res->tls);
	assert_int_equal(t.nconns, 1);
	assert_string_equal(srv_cmd(&t, 1), "STARTTLS");
	assert_int_equal(strncmp(srv_cmd(&t, 2), "MAIL FROM:", 10), 0);
	smtp_result_free(&res);
	srv_free(&t);
}

static void test_deliver_domain(void **state)
{
	struct fe_dns *dns = NULL;
	char *err = NULL;
	/* A resolver port where nothing answers: only literals and bad names
	 * are used here, plus one lookup that must fail temporarily. */
	int ufd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	assert_true(ufd >= 0);
	struct sockaddr_in sin = { .sin_family = AF_INET };
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(ufd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	socklen_t len = sizeof(sin);
	assert_int_equal(getsockname(ufd, (struct sockaddr *)&sin, &len), 0);
	char server[64];
	snprintf(server, sizeof(server), "127.0.0.1:%d", ntohs(sin.sin_port));
	assert_int_equal(fe_dns_open(server, 200, 1, &dns, &err), 0);

	struct srv s = { 0 };
	srv_start(&s);
	struct smtp_client_conf conf;
	conf_init(&conf, s.port);
	struct smtp_envelope env;
	env_init(&env, 1);
	struct smtp_body body;
	struct smtp_mem_body mem;
	smtp_body_from_mem(&body, &mem, body_text, strlen(body_text));
	struct smtp_result *res = NULL;
	assert_int_equal(smtp_client_deliver_domain(&conf, dns, "[127.0.0.1]", &env, &body,
						    fe_dns_now_ms() + 20000, &res, &err), 0);
	srv_join(&s);
	assert_rcpt(res, 0, SMTP_RCPT_DELIVERED, 250, NULL, NULL);
	assert_string_equal(res->mx_host, "[127.0.0.1]");
	smtp_result_free(&res);
	srv_free(&s);

	assert_int_equal(smtp_client_deliver_domain(&conf, dns, "a..b", &env, &body,
						    fe_dns_now_ms() + 5000, &res, &err), 0);
	assert_rcpt(res, 0, SMTP_RCPT_PERMFAIL, 0, "5.1.2", NULL);
	smtp_result_free(&res);
	assert_int_equal(smtp_client_deliver_domain(&conf, dns, "example.test", &env, &body,
						    fe_dns_now_ms() + 5000, &res, &err), 0);
	assert_rcpt(res, 0, SMTP_RCPT_TEMPFAIL, 0, "4.4.3", NULL);
	smtp_result_free(&res);
	fe_dns_free(&dns);
	close(ufd);
}

static void test_bad_envelopes(void **state)
{
	struct smtp_client_conf conf;
	conf_init(&conf, 1);
	struct fe_dns_mx_list mx = { 0 };
	mx_add(&mx, "mx.test", "127.0.0.1");
	struct smtp_body body;
	struct smtp_mem_body mem;
	smtp_body_from_mem(&body, &mem, "x", 1);
	struct smtp_envelope env;
	struct smtp_result *res = NULL;
	char *err = NULL;

	struct smtp_rcpt bad[] = {
		{ "a@b\r\nRCPT TO:<evil@x>", 0, NULL },
		{ "", 0, NULL },
		{ "a>b@c", 0, NULL },
		{ "j\xc3\xbcrgen@x", 0, NULL },            /* 8-bit without SMTPUTF8 */
		{ "a@b", DSN_NOTIFY_NEVER | DSN_NOTIFY_SUCCESS, NULL },
		{ "a@b", 0x40, NULL },
		{ "a@b", 0, "noseparator" },
		{ "a@b", 0, ";a@b" },
		{ "a@b", 0, "rfc 822;a@b" },
		{ "a@b", 0, "rfc822;a@b\r\n" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		env_init(&env, 1);
		env.rcpts = &bad[i];
		assert_int_equal(smtp_client_deliver(&conf, &mx, &env, &body, 0, &res, &err),
				 MP_EINVAL);
		assert_null(res);
		assert_non_null(err);
		free(err);
		err = NULL;
	}
	env_init(&env, 1);
	env.sender = "a@b\n";
	assert_int_equal(smtp_client_deliver(&conf, &mx, &env, &body, 0, &res, &err), MP_EINVAL);
	free(err);
	env_init(&env, 1);
	env.envid = "has space";
	assert_int_equal(smtp_client_deliver(&conf, &mx, &env, &body, 0, &res, &err), MP_OK);
	smtp_result_free(&res); /* printable with a space is fine (xtext) */
	env.envid = "ctl\x01";
	assert_int_equal(smtp_client_deliver(&conf, &mx, &env, &body, 0, &res, &err), MP_EINVAL);
	free(err);
	env_init(&env, 0);
	assert_int_equal(smtp_client_deliver(&conf, &mx, &env, &body, 0, &res, &err), MP_EINVAL);
	free(err);
	env_init(&env, SMTP_CLIENT_MAX_RCPTS + 1);
	assert_int_equal(smtp_client_deliver(&conf, &mx, &env, &body, 0, &res, &err), MP_EINVAL);
	free(err);
	env_init(&env, 1);
	conf.helo_name = "two words";
	assert_int_equal(smtp_client_deliver(&conf, &mx, &env, &body, 0, &res, &err), MP_EINVAL);
	free(err);
	assert_null(res);
}

/* ------------------------------------------------------------ setup */

static void run_testca(const char *dir)
{
	char script[512];
	snprintf(script, sizeof(script), "%s/deploy/local/testca.py", MERPATI_SOURCE_DIR);
	const char *py = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
	const char *argv[] = { py, script, dir, "localhost", NULL };
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int devnull = open("/dev/null", O_WRONLY);
		if (devnull >= 0)
			dup2(devnull, STDOUT_FILENO);
		execvp(py, (char *const *)argv);
		_exit(127);
	}
	int status = 0;
	pid_t w;
	do {
		w = waitpid(pid, &status, 0);
	} while (w < 0 && errno == EINTR);
	assert_int_equal(w, pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
}

static int setup(void **state)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_smtp_client.XXXXXX");
	if (mkdtemp(tmpdir) == NULL)
		return -1;
	run_testca(tmpdir);
	snprintf(cert_path, sizeof(cert_path), "%s/cert.pem", tmpdir);
	snprintf(key_path, sizeof(key_path), "%s/key.pem", tmpdir);
	snprintf(ca_path, sizeof(ca_path), "%s/ca.pem", tmpdir);
	struct fe_tls_cert cert = { cert_path, key_path };
	struct fe_tls_conf tconf = { &cert, 1, NULL, NULL };
	char *err = NULL;
	if (fe_tls_open(&tconf, &server_tls, &err) != 0) {
		fprintf(stderr, "fe_tls_open: %s\n", err);
		free(err);
		return -1;
	}
	struct fe_tls_client_conf cconf = { NULL };
	if (fe_tls_client_open(&cconf, &client_tls, &err) != 0) {
		fprintf(stderr, "fe_tls_client_open: %s\n", err);
		free(err);
		return -1;
	}
	return 0;
}

static int teardown(void **state)
{
	fe_tls_free(&server_tls);
	fe_tls_client_free(&client_tls);
	const char *files[] = { "cert.pem", "key.pem", "ca.pem", "ca.key", ".testca.lock" };
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		char p[600];
		snprintf(p, sizeof(p), "%s/%s", tmpdir, files[i]);
		unlink(p);
	}
	rmdir(tmpdir);
	return 0;
}

int main(void)
{
	/* TLS writes go through OpenSSL's socket BIO (see smtp_client.h). */
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reply_parser),
		cmocka_unit_test(test_dotstuff),
		cmocka_unit_test(test_pipelining),
		cmocka_unit_test(test_no_pipelining),
		cmocka_unit_test(test_mixed_rcpts),
		cmocka_unit_test(test_greeting_421_next_mx),
		cmocka_unit_test(test_mail_refused_and_421),
		cmocka_unit_test(test_after_data),
		cmocka_unit_test(test_size_and_utf8),
		cmocka_unit_test(test_helo_fallback),
		cmocka_unit_test(test_timeouts),
		cmocka_unit_test(test_connect_refused),
		cmocka_unit_test(test_large_body),
		cmocka_unit_test(test_body_read_error),
		cmocka_unit_test(test_starttls),
		cmocka_unit_test(test_starttls_fallback),
		cmocka_unit_test(test_deliver_domain),
		cmocka_unit_test(test_bad_envelopes),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
