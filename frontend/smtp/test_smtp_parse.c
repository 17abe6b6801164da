/*
 * Tests of smtp_parse: tables of good commands (rendered to a string and
 * compared) and bad ones (reply code and enhanced code), every command also
 * parsed from an exact-size heap copy and at every prefix (ASan sees any
 * read past the length), canonical addresses parsed back to themselves,
 * limits at their exact boundaries, the line splitter and the DATA decoder
 * fed at every split point and one byte at a time with the same results,
 * SMTP smuggling inputs, size limits and pipelined bytes after the end
 * marker. Deterministic: no clock, no randomness.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mp_buf.h"
#include "mp_error.h"
#include "smtp_parse.h"

#define ALL_EXT (SMTP_EXT_DEFAULT | SMTP_EXT_BINARYMIME)

/* Parse from a heap copy of exactly len bytes. The copy must outlive the
 * slices in cmd, so the caller frees *copy_r. */
static int parse_copy(const char *line, size_t len, unsigned ext, struct smtp_command *cmd,
		      struct smtp_error *err, char **copy_r)
{
	char *copy = malloc(len > 0 ? len : 1);
	assert_non_null(copy);
	if (len > 0)
		memcpy(copy, line, len);
	*copy_r = copy;
	return smtp_parse_command(copy, len, ext, cmd, err);
}

static void render_addr(char *out, size_t outlen, const struct smtp_address *a)
{
	int w = snprintf(out, outlen, "addr=%s l=%zu d=%zu f=%x", a->addr, a->local_len,
			 a->domain_len, a->flags);
	assert_true(w > 0 && (size_t)w < outlen);
}

/* The parsed command as one string, for comparing with the tables. */
static void render(const struct smtp_command *c, char *out, size_t outlen)
{
	char a[600];
	size_t pos = 0;
	int w = 0;

	out[0] = '\0';
	switch (c->verb) {
	case SMTP_VERB_HELO:
	case SMTP_VERB_EHLO:
		w = snprintf(out, outlen, "domain=%.*s f=%x", (int)c->u.helo.domain.len,
			     c->u.helo.domain.ptr, c->u.helo.flags);
		break;
	case SMTP_VERB_MAIL: {
		const struct smtp_mail_arg *m = &c->u.mail;
		render_addr(a, sizeof(a), &m->from);
		w = snprintf(out, outlen, "%s", a);
		assert_true(w > 0);
		pos = (size_t)w;
		if (m->params & SMTP_PARAM_SIZE)
			pos += (size_t)snprintf(out + pos, outlen - pos, " SIZE=%llu",
						(unsigned long long)m->size);
		if (m->params & SMTP_PARAM_BODY)
			pos += (size_t)snprintf(out + pos, outlen - pos, " BODY=%d", (int)m->body);
		if (m->params & SMTP_PARAM_SMTPUTF8)
			pos += (size_t)snprintf(out + pos, outlen - pos, " SMTPUTF8");
		if (m->params & SMTP_PARAM_RET)
			pos += (size_t)snprintf(out + pos, outlen - pos, " RET=%d", (int)m->ret);
		if (m->params & SMTP_PARAM_ENVID)
			pos += (size_t)snprintf(out + pos, outlen - pos, " ENVID=%s", m->envid);
		if (m->params & SMTP_PARAM_AUTH)
			pos += (size_t)snprintf(out + pos, outlen - pos, " AUTH=%s", m->auth);
		assert_true(pos < outlen);
		/* Fields of parameters not given keep their zero values. */
		if (!(m->params & SMTP_PARAM_SIZE))
			assert_int_equal(m->size, 0);
		if (!(m->params & SMTP_PARAM_BODY))
			assert_int_equal(m->body, SMTP_BODY_NONE);
		return;
	}
	case SMTP_VERB_RCPT: {
		const struct smtp_rcpt_arg *r = &c->u.rcpt;
		render_addr(a, sizeof(a), &r->to);
		w = snprintf(out, outlen, "%s", a);
		assert_true(w > 0);
		pos = (size_t)w;
		if (r->params & SMTP_PARAM_NOTIFY)
			pos += (size_t)snprintf(out + pos, outlen - pos, " NOTIFY=%x", r->notify);
		if (r->params & SMTP_PARAM_ORCPT)
			pos += (size_t)snprintf(out + pos, outlen - pos, " ORCPT=%s t=%zu", r->orcpt,
						r->orcpt_type_len);
		assert_true(pos < outlen);
		return;
	}
	case SMTP_VERB_BDAT:
		w = snprintf(out, outlen, "size=%llu last=%d", (unsigned long long)c->u.bdat.size,
			     c->u.bdat.last);
		break;
	case SMTP_VERB_AUTH:
		if (c->u.auth.has_initial)
			w = snprintf(out, outlen, "mech=%.*s init=%.*s", (int)c->u.auth.mech.len,
				     c->u.auth.mech.ptr, (int)c->u.auth.initial.len,
				     c->u.auth.initial.ptr);
		else
			w = snprintf(out, outlen, "mech=%.*s", (int)c->u.auth.mech.len,
				     c->u.auth.mech.ptr);
		break;
	default:
		w = snprintf(out, outlen, "arg=%.*s", (int)c->arg.len, c->arg.ptr);
		break;
	}
	assert_true(w >= 0 && (size_t)w < outlen);
}

struct good_cmd {
	const char *line;
	unsigned ext;
	enum smtp_verb verb;
	const char *want;
};

static const struct good_cmd good_cmds[] = {
	{ "HELO mail.example.com", ALL_EXT, SMTP_VERB_HELO, "domain=mail.example.com f=0" },
	{ "ehlo [192.0.2.1]", ALL_EXT, SMTP_VERB_EHLO, "domain=[192.0.2.1] f=8" },
	{ "EHLO [IPv6:2001:db8::1]", ALL_EXT, SMTP_VERB_EHLO, "domain=[IPv6:2001:db8::1] f=8" },
	{ "EHLO [ipv6:::ffff:192.0.2.1]", ALL_EXT, SMTP_VERB_EHLO,
	  "domain=[ipv6:::ffff:192.0.2.1] f=8" },
	{ "EHLO [0.0.0.0]", ALL_EXT, SMTP_VERB_EHLO, "domain=[0.0.0.0] f=8" },
	{ "EHLO localhost  \t ", ALL_EXT, SMTP_VERB_EHLO, "domain=localhost f=0" },
	{ "EhLo   x", ALL_EXT, SMTP_VERB_EHLO, "domain=x f=0" },
	{ "EHLO 1.2.3.4", ALL_EXT, SMTP_VERB_EHLO, "domain=1.2.3.4 f=0" },
	{ "EHLO xn--bcher-kva.example", ALL_EXT, SMTP_VERB_EHLO,
	  "domain=xn--bcher-kva.example f=0" },
	{ "EHLO b\xc3\xbc" "cher.example", ALL_EXT, SMTP_VERB_EHLO,
	  "domain=b\xc3\xbc" "cher.example f=4" },

	{ "MAIL FROM:<a@b.example>", 0, SMTP_VERB_MAIL, "addr=a@b.example l=1 d=9 f=0" },
	{ "mail from:<>", 0, SMTP_VERB_MAIL, "addr= l=0 d=0 f=1" },
	{ "MAIL FROM: <a@b.example>", 0, SMTP_VERB_MAIL, "addr=a@b.example l=1 d=9 f=0" },
	{ "MAIL FROM:   <>  ", 0, SMTP_VERB_MAIL, "addr= l=0 d=0 f=1" },
	{ "MAIL FROM:<@r1.example,@r2.example:joe@x.example>", 0, SMTP_VERB_MAIL,
	  "addr=joe@x.example l=3 d=9 f=10" },
	{ "MAIL FROM:<@r1.example:joe@x.example>", 0, SMTP_VERB_MAIL,
	  "addr=joe@x.example l=3 d=9 f=10" },
	{ "MAIL FROM:<\"joe\"@x.example>", 0, SMTP_VERB_MAIL, "addr=joe@x.example l=3 d=9 f=0" },
	{ "MAIL FROM:<\"j.o.e\"@x>", 0, SMTP_VERB_MAIL, "addr=j.o.e@x l=5 d=1 f=0" },
	{ "MAIL FROM:<\"a\\b\"@x>", 0, SMTP_VERB_MAIL, "addr=ab@x l=2 d=1 f=0" },
	{ "MAIL FROM:<\"j o\\\"e\"@x.example>", 0, SMTP_VERB_MAIL,
	  "addr=\"j o\\\"e\"@x.example l=8 d=9 f=20" },
	{ "MAIL FROM:<\"a..b\"@x>", 0, SMTP_VERB_MAIL, "addr=\"a..b\"@x l=6 d=1 f=20" },
	{ "MAIL FROM:<\"\"@x>", 0, SMTP_VERB_MAIL, "addr=\"\"@x l=2 d=1 f=20" },
	{ "MAIL FROM:<\"\\\\\"@x>", 0, SMTP_VERB_MAIL, "addr=\"\\\\\"@x l=4 d=1 f=20" },
	{ "MAIL FROM:<a@[1.2.3.4]>", 0, SMTP_VERB_MAIL, "addr=a@[1.2.3.4] l=1 d=9 f=8" },
	{ "MAIL FROM:<a@[IPv6:::1]>", 0, SMTP_VERB_MAIL, "addr=a@[IPv6:::1] l=1 d=10 f=8" },
	{ "MAIL FROM:<a.b.c+tag@sub.x-y.example>", 0, SMTP_VERB_MAIL,
	  "addr=a.b.c+tag@sub.x-y.example l=9 d=15 f=0" },
	{ "MAIL FROM:<!#$%&'*+-/=?^_`{|}~@x>", 0, SMTP_VERB_MAIL,
	  "addr=!#$%&'*+-/=?^_`{|}~@x l=19 d=1 f=0" },
	{ "MAIL FROM:<Joe@X.Example>", 0, SMTP_VERB_MAIL, "addr=Joe@X.Example l=3 d=9 f=0" },
	{ "MAIL FROM:<a@b> SIZE=1000 BODY=8BITMIME", ALL_EXT, SMTP_VERB_MAIL,
	  "addr=a@b l=1 d=1 f=0 SIZE=1000 BODY=2" },
	{ "MAIL FROM:<a@b> size=18446744073709551615", ALL_EXT, SMTP_VERB_MAIL,
	  "addr=a@b l=1 d=1 f=0 SIZE=18446744073709551615" },
	{ "MAIL FROM:<a@b> SIZE=000000000000000000000000042", ALL_EXT, SMTP_VERB_MAIL,
	  "addr=a@b l=1 d=1 f=0 SIZE=42" },
	{ "MAIL FROM:<a@b> BODY=7bit", ALL_EXT, SMTP_VERB_MAIL, "addr=a@b l=1 d=1 f=0 BODY=1" },
	{ "MAIL FROM:<a@b> BODY=BinaryMIME", ALL_EXT, SMTP_VERB_MAIL,
	  "addr=a@b l=1 d=1 f=0 BODY=3" },
	{ "MAIL FROM:<\xc3\xa9@b> SMTPUTF8", ALL_EXT, SMTP_VERB_MAIL,
	  "addr=\xc3\xa9@b l=2 d=1 f=4 SMTPUTF8" },
	{ "MAIL FROM:<\xf0\x9f\x98\x80@\xe4\xbe\x8b.example> smtputf8", ALL_EXT, SMTP_VERB_MAIL,
	  "addr=\xf0\x9f\x98\x80@\xe4\xbe\x8b.example l=4 d=11 f=4 SMTPUTF8" },
	{ "MAIL FROM:<\"\xc3\xa9 x\"@b>", 0, SMTP_VERB_MAIL,
	  "addr=\"\xc3\xa9 x\"@b l=6 d=1 f=24" },
	{ "MAIL FROM:<a@b> RET=HDRS ENVID=QQ+2B+3Dx", ALL_EXT, SMTP_VERB_MAIL,
	  "addr=a@b l=1 d=1 f=0 RET=2 ENVID=QQ+=x" },
	{ "MAIL FROM:<a@b> ret=full envid=a+2bb", ALL_EXT, SMTP_VERB_MAIL,
	  "addr=a@b l=1 d=1 f=0 RET=1 ENVID=a+b" },
	{ "MAIL FROM:<a@b> AUTH=<>", ALL_EXT, SMTP_VERB_MAIL, "addr=a@b l=1 d=1 f=0 AUTH=<>" },
	{ "MAIL FROM:<a@b> AUTH=e+2Bx@b", ALL_EXT, SMTP_VERB_MAIL,
	  "addr=a@b l=1 d=1 f=0 AUTH=e+x@b" },
	{ "MAIL FROM:<a@b>   SIZE=1   SMTPUTF8  ", ALL_EXT, SMTP_VERB_MAIL,
	  "addr=a@b l=1 d=1 f=0 SIZE=1 SMTPUTF8" },
	{ "MAIL FROM:<a@b> SIZE=5 BODY=8BITMIME SMTPUTF8 RET=FULL ENVID=x AUTH=<>", ALL_EXT,
	  SMTP_VERB_MAIL, "addr=a@b l=1 d=1 f=0 SIZE=5 BODY=2 SMTPUTF8 RET=1 ENVID=x AUTH=<>" },

	{ "RCPT TO:<Postmaster>", 0, SMTP_VERB_RCPT, "addr=Postmaster l=10 d=0 f=2" },
	{ "rcpt to:<POSTMASTER>", 0, SMTP_VERB_RCPT, "addr=POSTMASTER l=10 d=0 f=2" },
	{ "RCPT TO:<postmaster@x.example>", 0, SMTP_VERB_RCPT,
	  "addr=postmaster@x.example l=10 d=9 f=0" },
	{ "RCPT TO: <b@c>", 0, SMTP_VERB_RCPT, "addr=b@c l=1 d=1 f=0" },
	{ "RCPT TO:<@hop:b@c>", 0, SMTP_VERB_RCPT, "addr=b@c l=1 d=1 f=10" },
	{ "RCPT TO:<b@c> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40c", ALL_EXT, SMTP_VERB_RCPT,
	  "addr=b@c l=1 d=1 f=0 NOTIFY=6 ORCPT=rfc822;b@c t=6" },
	{ "RCPT TO:<b@c> NOTIFY=never", ALL_EXT, SMTP_VERB_RCPT,
	  "addr=b@c l=1 d=1 f=0 NOTIFY=1" },
	{ "RCPT TO:<b@c> NOTIFY=delay,Success,failure", ALL_EXT, SMTP_VERB_RCPT,
	  "addr=b@c l=1 d=1 f=0 NOTIFY=e" },
	{ "RCPT TO:<b@c> ORCPT=utf-8;\xc3\xa9+40c", ALL_EXT, SMTP_VERB_RCPT,
	  "addr=b@c l=1 d=1 f=0 ORCPT=utf-8;\xc3\xa9@c t=5" },

	{ "DATA", 0, SMTP_VERB_DATA, "arg=" },
	{ "data  ", 0, SMTP_VERB_DATA, "arg=" },
	{ "RSET", 0, SMTP_VERB_RSET, "arg=" },
	{ "QUIT", 0, SMTP_VERB_QUIT, "arg=" },
	{ "StartTLS", 0, SMTP_VERB_STARTTLS, "arg=" },
	{ "NOOP", 0, SMTP_VERB_NOOP, "arg=" },
	{ "NOOP hello  world ", 0, SMTP_VERB_NOOP, "arg=hello  world" },
	{ "HELP MAIL", 0, SMTP_VERB_HELP, "arg=MAIL" },
	{ "VRFY joe", 0, SMTP_VERB_VRFY, "arg=joe" },
	{ "EXPN list", 0, SMTP_VERB_EXPN, "arg=list" },
	{ "BDAT 0 LAST", 0, SMTP_VERB_BDAT, "size=0 last=1" },
	{ "BDAT 1000", 0, SMTP_VERB_BDAT, "size=1000 last=0" },
	{ "bdat 18446744073709551615  last ", 0, SMTP_VERB_BDAT,
	  "size=18446744073709551615 last=1" },
	{ "AUTH PLAIN", 0, SMTP_VERB_AUTH, "mech=PLAIN" },
	{ "AUTH PLAIN AGpvZQBwdw==", 0, SMTP_VERB_AUTH, "mech=PLAIN init=AGpvZQBwdw==" },
	{ "AUTH LOGIN =", 0, SMTP_VERB_AUTH, "mech=LOGIN init==" },
	{ "auth scram-sha-256 biwsbj1qb2UscixyPWZ5a28=", 0, SMTP_VERB_AUTH,
	  "mech=scram-sha-256 init=biwsbj1qb2UscixyPWZ5a28=" },
};

struct bad_cmd {
	const char *line;
	unsigned ext;
	enum smtp_verb verb;
	int code;
	const char *enhanced;
};

static const struct bad_cmd bad_cmds[] = {
	{ "", 0, SMTP_VERB_UNKNOWN, 500, "5.5.2" },
	{ "   ", 0, SMTP_VERB_UNKNOWN, 500, "5.5.2" },
	{ " NOOP", 0, SMTP_VERB_UNKNOWN, 500, "5.5.2" },
	{ "FOO", 0, SMTP_VERB_UNKNOWN, 500, "5.5.1" },
	{ "MAILFROM:<a@b>", 0, SMTP_VERB_UNKNOWN, 500, "5.5.1" },
	{ "NOOP\tx", 0, SMTP_VERB_UNKNOWN, 500, "5.5.1" },
	{ "NOOP\r", 0, SMTP_VERB_UNKNOWN, 500, "5.5.2" },
	{ "NOOP a\rb", 0, SMTP_VERB_NOOP, 500, "5.5.2" },
	{ "MAIL FROM:<a@b>\r", 0, SMTP_VERB_MAIL, 500, "5.5.2" },
	{ "NOOP a\nb", 0, SMTP_VERB_NOOP, 500, "5.5.2" },

	{ "EHLO", 0, SMTP_VERB_EHLO, 501, "5.5.4" },
	{ "HELO   ", 0, SMTP_VERB_HELO, 501, "5.5.4" },
	{ "EHLO -bad.example", 0, SMTP_VERB_EHLO, 501, "5.5.4" },
	{ "EHLO bad-.example", 0, SMTP_VERB_EHLO, 501, "5.5.4" },
	{ "EHLO a..b", 0, SMTP_VERB_EHLO, 501, "5.5.4" },
	{ "EHLO a.b.", 0, SMTP_VERB_EHLO, 501, "5.5.4" },
	{ "EHLO .a", 0, SMTP_VERB_EHLO, 501, "5.5.4" },
	{ "EHLO a_b", 0, SMTP_VERB_EHLO, 501, "5.5.4" },
	{ "EHLO a b", 0, SMTP_VERB_EHLO, 501, "5.5.4" },
	{ "EHLO [1.2.3.256]", 0, SMTP_VERB_EHLO, 501, "5.5.4" },
	{ "EHLO [1.2.3]", 0, SMTP_VERB_EHLO, 501, "5.5.4" },
	{ "EHLO [1.2.3.4.5]", 0, SMTP_VERB_EHLO, 501, "5.5.4" },
	{ "EHLO [1.2.3.0004]", 0, SMTP_VERB_EHLO, 501, "5.5.4" },
	{ "EHLO [IPv6:zz::1]", 0, SMTP_VERB_EHLO, 501, "5.5.4" },
	{ "EHLO [IPv6:]", 0, SMTP_VERB_EHLO, 501, "5.5.4" },
	{ "EHLO [IPv6:1.2.3.4]", 0, SMTP_VERB_EHLO, 501, "5.5.4" },
	{ "EHLO [tag:foo]", 0, SMTP_VERB_EHLO, 501, "5.5.4" },
	{ "EHLO [1.2.3.4", 0, SMTP_VERB_EHLO, 501, "5.5.4" },
	{ "EHLO [1.2.3.4]x", 0, SMTP_VERB_EHLO, 501, "5.5.4" },
	{ "EHLO []", 0, SMTP_VERB_EHLO, 501, "5.5.4" },
	{ "EHLO \xc0\xaf.example", 0, SMTP_VERB_EHLO, 501, "5.5.4" },     /* overlong */
	{ "EHLO \xe0\x80\xaf.example", 0, SMTP_VERB_EHLO, 501, "5.5.4" }, /* overlong */
	{ "EHLO \xed\xa0\x80.example", 0, SMTP_VERB_EHLO, 501, "5.5.4" }, /* surrogate */
	{ "EHLO \xf4\x90\x80\x80.example", 0, SMTP_VERB_EHLO, 501, "5.5.4" }, /* > U+10FFFF */
	{ "EHLO \xc2\x80x", 0, SMTP_VERB_EHLO, 501, "5.5.4" },            /* C1 control */
	{ "EHLO \xc3", 0, SMTP_VERB_EHLO, 501, "5.5.4" },                 /* truncated */
	{ "EHLO \xff", 0, SMTP_VERB_EHLO, 501, "5.5.4" },

	{ "MAIL", 0, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL TO:<a@b>", 0, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:a@b", 0, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM <a@b>", 0, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:", 0, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:<a@b>x", 0, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:<a@b", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<a>", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<Postmaster>", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<a@>", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<@a>", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<@a:>", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<@a,b:c@d>", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<@:c@d>", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<a..b@c>", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<.a@c>", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<a.@c>", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<a b@c>", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<a(b)@c>", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<\"a\x01\"@c>", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<\"a\\\x01\"@c>", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<\"a\\\xc3\xa9\"@c>", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<\"a@c>", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<\"a\"b@c>", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<a@@b>", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<a@b@c>", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<a@b\xff>", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<\xc3@b>", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<\xed\xbf\xbf@b>", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<a@[1.2.3.4>", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<a@[300.1.1.1]>", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<a@b.>", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<<a@b>>", 0, SMTP_VERB_MAIL, 501, "5.1.7" },
	{ "MAIL FROM:<a@b> FOO=1", ALL_EXT, SMTP_VERB_MAIL, 555, "5.5.4" },
	{ "MAIL FROM:<a@b> NOTIFY=NEVER", ALL_EXT, SMTP_VERB_MAIL, 555, "5.5.4" },
	{ "MAIL FROM:<a@b> SIZE=1", 0, SMTP_VERB_MAIL, 555, "5.5.4" },
	{ "MAIL FROM:<a@b> SIZE=1", SMTP_EXT_DSN, SMTP_VERB_MAIL, 555, "5.5.4" },
	{ "MAIL FROM:<a@b> BODY=BINARYMIME", SMTP_EXT_DEFAULT, SMTP_VERB_MAIL, 555, "5.5.4" },
	{ "MAIL FROM:<a@b> BODY=8BITMIME", SMTP_EXT_BINARYMIME, SMTP_VERB_MAIL, 555, "5.5.4" },
	{ "MAIL FROM:<a@b> SMTPUTF8", SMTP_EXT_DSN, SMTP_VERB_MAIL, 555, "5.5.4" },
	{ "MAIL FROM:<a@b> ENVID=x", SMTP_EXT_SIZE, SMTP_VERB_MAIL, 555, "5.5.4" },
	{ "MAIL FROM:<a@b> AUTH=<>", SMTP_EXT_DSN, SMTP_VERB_MAIL, 555, "5.5.4" },
	{ "MAIL FROM:<a@b> SIZE=1 SIZE=2", ALL_EXT, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:<a@b> size=1 SIZE=1", ALL_EXT, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:<a@b> SIZE=abc", ALL_EXT, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:<a@b> SIZE=-1", ALL_EXT, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:<a@b> SIZE", ALL_EXT, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:<a@b> SIZE=", ALL_EXT, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:<a@b> SIZE=18446744073709551616", ALL_EXT, SMTP_VERB_MAIL, 552, "5.3.4" },
	{ "MAIL FROM:<a@b> SIZE=99999999999999999999999", ALL_EXT, SMTP_VERB_MAIL, 552, "5.3.4" },
	{ "MAIL FROM:<a@b> BODY=9BIT", ALL_EXT, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:<a@b> BODY", ALL_EXT, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:<a@b> SMTPUTF8=yes", ALL_EXT, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:<a@b> RET=NONE", ALL_EXT, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:<a@b> RET", ALL_EXT, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:<a@b> ENVID", ALL_EXT, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:<a@b> ENVID=a+zz", ALL_EXT, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:<a@b> ENVID=a+4", ALL_EXT, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:<a@b> ENVID=a+0A", ALL_EXT, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:<a@b> ENVID=a+00", ALL_EXT, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:<a@b> ENVID=a=b", ALL_EXT, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:<a@b> ENVID=\xc3", ALL_EXT, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:<a@b> ENVID=\x7f", ALL_EXT, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:<a@b> AUTH", ALL_EXT, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:<a@b> AUTH=+", ALL_EXT, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:<a@b> -SIZE=1", ALL_EXT, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:<a@b> SI_ZE=1", ALL_EXT, SMTP_VERB_MAIL, 501, "5.5.4" },
	{ "MAIL FROM:<a@b> =1", ALL_EXT, SMTP_VERB_MAIL, 501, "5.5.4" },

	{ "RCPT", 0, SMTP_VERB_RCPT, 501, "5.5.4" },
	{ "RCPT FROM:<a@b>", 0, SMTP_VERB_RCPT, 501, "5.5.4" },
	{ "RCPT TO:", 0, SMTP_VERB_RCPT, 501, "5.5.4" },
	{ "RCPT TO:<>", 0, SMTP_VERB_RCPT, 501, "5.1.3" },
	{ "RCPT TO:<a>", 0, SMTP_VERB_RCPT, 501, "5.1.3" },
	{ "RCPT TO:<\"Postmaster\">", 0, SMTP_VERB_RCPT, 501, "5.1.3" },
	{ "RCPT TO:<@a:Postmaster>", 0, SMTP_VERB_RCPT, 501, "5.1.3" },
	{ "RCPT TO:<Postmaster> x", 0, SMTP_VERB_RCPT, 555, "5.5.4" },
	{ "RCPT TO:<Postmaster>x", 0, SMTP_VERB_RCPT, 501, "5.5.4" },
	{ "RCPT TO:<a..b@c>", 0, SMTP_VERB_RCPT, 501, "5.1.3" },
	{ "RCPT TO:<a@b> NOTIFY=NEVER,SUCCESS", ALL_EXT, SMTP_VERB_RCPT, 501, "5.5.4" },
	{ "RCPT TO:<a@b> NOTIFY=", ALL_EXT, SMTP_VERB_RCPT, 501, "5.5.4" },
	{ "RCPT TO:<a@b> NOTIFY", ALL_EXT, SMTP_VERB_RCPT, 501, "5.5.4" },
	{ "RCPT TO:<a@b> NOTIFY=SUCCESS,", ALL_EXT, SMTP_VERB_RCPT, 501, "5.5.4" },
	{ "RCPT TO:<a@b> NOTIFY=,SUCCESS", ALL_EXT, SMTP_VERB_RCPT, 501, "5.5.4" },
	{ "RCPT TO:<a@b> NOTIFY=BOGUS", ALL_EXT, SMTP_VERB_RCPT, 501, "5.5.4" },
	{ "RCPT TO:<a@b> NOTIFY=NEVER NOTIFY=NEVER", ALL_EXT, SMTP_VERB_RCPT, 501, "5.5.4" },
	{ "RCPT TO:<a@b> ORCPT=rfc822", ALL_EXT, SMTP_VERB_RCPT, 501, "5.5.4" },
	{ "RCPT TO:<a@b> ORCPT=;a", ALL_EXT, SMTP_VERB_RCPT, 501, "5.5.4" },
	{ "RCPT TO:<a@b> ORCPT=rfc822;", ALL_EXT, SMTP_VERB_RCPT, 501, "5.5.4" },
	{ "RCPT TO:<a@b> ORCPT=rf(c;a", ALL_EXT, SMTP_VERB_RCPT, 501, "5.5.4" },
	{ "RCPT TO:<a@b> ORCPT=rfc822;a+2", ALL_EXT, SMTP_VERB_RCPT, 501, "5.5.4" },
	{ "RCPT TO:<a@b> SIZE=1", ALL_EXT, SMTP_VERB_RCPT, 555, "5.5.4" },
	{ "RCPT TO:<a@b> NOTIFY=NEVER", SMTP_EXT_SIZE, SMTP_VERB_RCPT, 555, "5.5.4" },

	{ "DATA x", 0, SMTP_VERB_DATA, 501, "5.5.4" },
	{ "RSET x", 0, SMTP_VERB_RSET, 501, "5.5.4" },
	{ "QUIT now", 0, SMTP_VERB_QUIT, 501, "5.5.4" },
	{ "STARTTLS x", 0, SMTP_VERB_STARTTLS, 501, "5.5.4" },

	{ "BDAT", 0, SMTP_VERB_BDAT, 501, "5.5.4" },
	{ "BDAT x", 0, SMTP_VERB_BDAT, 501, "5.5.4" },
	{ "BDAT -1", 0, SMTP_VERB_BDAT, 501, "5.5.4" },
	{ "BDAT 1.5", 0, SMTP_VERB_BDAT, 501, "5.5.4" },
	{ "BDAT 10 FIRST", 0, SMTP_VERB_BDAT, 501, "5.5.4" },
	{ "BDAT 10 LAST x", 0, SMTP_VERB_BDAT, 501, "5.5.4" },
	{ "BDAT 18446744073709551616", 0, SMTP_VERB_BDAT, 552, "5.3.4" },

	{ "AUTH", 0, SMTP_VERB_AUTH, 501, "5.5.4" },
	{ "AUTH PL@IN", 0, SMTP_VERB_AUTH, 501, "5.5.4" },
	{ "AUTH ABCDEFGHIJKLMNOPQRSTU", 0, SMTP_VERB_AUTH, 501, "5.5.4" },
	{ "AUTH PLAIN a b", 0, SMTP_VERB_AUTH, 501, "5.5.4" },
	{ "AUTH PLAIN abc", 0, SMTP_VERB_AUTH, 501, "5.5.2" },
	{ "AUTH PLAIN ab=c", 0, SMTP_VERB_AUTH, 501, "5.5.2" },
	{ "AUTH PLAIN ====", 0, SMTP_VERB_AUTH, 501, "5.5.2" },
	{ "AUTH PLAIN a===", 0, SMTP_VERB_AUTH, 501, "5.5.2" },
	{ "AUTH PLAIN ab!c", 0, SMTP_VERB_AUTH, 501, "5.5.2" },
	{ "AUTH PLAIN ==", 0, SMTP_VERB_AUTH, 501, "5.5.2" },
};

/* Every prefix of s parses without reading past its end (ASan) and gives
 * a consistent result. */
static void parse_prefixes(const char *s, size_t len, unsigned ext)
{
	for (size_t k = 0; k < len; k++) {
		struct smtp_command cmd;
		struct smtp_error err;
		char *copy;
		int ret = parse_copy(s, k, ext, &cmd, &err, &copy);
		assert_true(ret == MP_OK || ret == MP_EINVAL);
		if (ret != MP_OK) {
			assert_true(err.code >= 500 && err.code <= 555);
			assert_non_null(err.enhanced);
			assert_non_null(err.text);
			assert_true(err.text[0] != '\0');
		}
		free(copy);
	}
}

/* The canonical address parses back to itself. */
static void check_reparse(const struct smtp_command *cmd)
{
	const struct smtp_address *a =
		cmd->verb == SMTP_VERB_MAIL ? &cmd->u.mail.from : &cmd->u.rcpt.to;
	char line[600];
	struct smtp_command again;
	struct smtp_error err;

	assert_int_equal(strlen(a->addr),
			 a->local_len + (a->domain_len > 0 ? 1 + a->domain_len : 0));
	int n = snprintf(line, sizeof(line), "%s:<%s>",
			 cmd->verb == SMTP_VERB_MAIL ? "MAIL FROM" : "RCPT TO", a->addr);
	assert_true(n > 0 && (size_t)n < sizeof(line));
	assert_int_equal(smtp_parse_command(line, (size_t)n, 0, &again, &err), MP_OK);
	const struct smtp_address *b =
		cmd->verb == SMTP_VERB_MAIL ? &again.u.mail.from : &again.u.rcpt.to;
	assert_string_equal(a->addr, b->addr);
	assert_int_equal(a->local_len, b->local_len);
	assert_int_equal(a->domain_len, b->domain_len);
	/* The route is gone from the canonical form; all else is the same. */
	assert_int_equal(a->flags & ~SMTP_ADDR_ROUTE, b->flags);
}

static void test_good_commands(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(good_cmds) / sizeof(good_cmds[0]); i++) {
		const struct good_cmd *g = &good_cmds[i];
		struct smtp_command cmd;
		struct smtp_error err;
		char got[1200], *copy;
		size_t len = strlen(g->line);

		int ret = parse_copy(g->line, len, g->ext, &cmd, &err, &copy);
		if (ret != MP_OK)
			fail_msg("\"%s\": %d %s %s", g->line, err.code, err.enhanced, err.text);
		assert_int_equal(cmd.verb, g->verb);
		render(&cmd, got, sizeof(got));
		if (strcmp(got, g->want) != 0)
			fail_msg("\"%s\":\n got  %s\n want %s", g->line, got, g->want);
		if (g->verb == SMTP_VERB_MAIL && !(cmd.u.mail.from.flags & SMTP_ADDR_NULL))
			check_reparse(&cmd);
		if (g->verb == SMTP_VERB_RCPT && !(cmd.u.rcpt.to.flags & SMTP_ADDR_POSTMASTER))
			check_reparse(&cmd);
		free(copy);
		parse_prefixes(g->line, len, g->ext);
	}
}

static void test_bad_commands(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(bad_cmds) / sizeof(bad_cmds[0]); i++) {
		const struct bad_cmd *b = &bad_cmds[i];
		struct smtp_command cmd;
		struct smtp_error err;
		char *copy;
		size_t len = strlen(b->line);

		int ret = parse_copy(b->line, len, b->ext, &cmd, &err, &copy);
		if (ret != MP_EINVAL)
			fail_msg("\"%s\" accepted", b->line);
		if (err.code != b->code || strcmp(err.enhanced, b->enhanced) != 0 ||
		    cmd.verb != b->verb)
			fail_msg("\"%s\": got %d %s (%s) verb %d, want %d %s verb %d", b->line,
				 err.code, err.enhanced, err.text, cmd.verb, b->code, b->enhanced,
				 b->verb);
		assert_non_null(err.text);
		assert_true(err.text[0] != '\0');
		free(copy);
		parse_prefixes(b->line, len, b->ext);
	}
}

static void test_nul_in_command(void **state)
{
	(void)state;
	static const char line[] = "NOOP a\0b";
	static const char mail[] = "MAIL FROM:<a\0@b>";
	struct smtp_command cmd;
	struct smtp_error err;

	assert_int_equal(smtp_parse_command(line, sizeof(line) - 1, 0, &cmd, &err), MP_EINVAL);
	assert_int_equal(err.code, 500);
	assert_string_equal(err.enhanced, "5.5.2");
	assert_int_equal(smtp_parse_command(mail, sizeof(mail) - 1, 0, &cmd, &err), MP_EINVAL);
	assert_int_equal(err.code, 500);
	assert_int_equal(cmd.verb, SMTP_VERB_MAIL);
	assert_int_equal(smtp_parse_command("\0", 1, 0, &cmd, &err), MP_EINVAL);
	assert_int_equal(err.code, 500);
	assert_int_equal(cmd.verb, SMTP_VERB_UNKNOWN);
}

/* n characters of c into a static-free buffer the caller owns. */
static void fill(char *out, char c, size_t n)
{
	memset(out, c, n);
	out[n] = '\0';
}

/* A domain of exactly n octets (n >= 1): labels of 62 'a' and a dot, then
 * the rest, so no label is over 63. */
static void make_domain(char *out, size_t n)
{
	size_t pos = 0;
	while (n - pos > 63) {
		memset(out + pos, 'a', 62);
		out[pos + 62] = '.';
		pos += 63;
	}
	memset(out + pos, 'b', n - pos);
	out[n] = '\0';
}

static int parse_str(const char *line, unsigned ext, struct smtp_command *cmd,
		     struct smtp_error *err)
{
	return smtp_parse_command(line, strlen(line), ext, cmd, err);
}

static void expect_err(const char *line, unsigned ext, int code, const char *enhanced,
		       const char *text)
{
	struct smtp_command cmd;
	struct smtp_error err;
	if (parse_str(line, ext, &cmd, &err) != MP_EINVAL)
		fail_msg("accepted (%zu octets): %.60s...", strlen(line), line);
	assert_int_equal(err.code, code);
	assert_string_equal(err.enhanced, enhanced);
	if (text != NULL)
		assert_string_equal(err.text, text);
}

static void test_address_limits(void **state)
{
	(void)state;
	char local[SMTP_LOCAL_MAX + 2], dom[400], line[1200];
	struct smtp_command cmd;
	struct smtp_error err;

	/* Local part: 64 octets fine, 65 not (RFC 5321 §4.5.3.1.1). */
	fill(local, 'l', 64);
	snprintf(line, sizeof(line), "MAIL FROM:<%s@x.example>", local);
	assert_int_equal(parse_str(line, 0, &cmd, &err), MP_OK);
	assert_int_equal(cmd.u.mail.from.local_len, 64);
	fill(local, 'l', 65);
	snprintf(line, sizeof(line), "MAIL FROM:<%s@x.example>", local);
	expect_err(line, 0, 501, "5.1.7", "Sender local part too long");
	snprintf(line, sizeof(line), "RCPT TO:<%s@x.example>", local);
	expect_err(line, 0, 501, "5.1.3", "Recipient local part too long");

	/* A quoted local part counts as sent: 64 with its quotes and
	 * backslashes is fine, 65 is not, even if it unquotes shorter. */
	fill(local, 'q', 62);
	snprintf(line, sizeof(line), "RCPT TO:<\"%s\"@x>", local);
	assert_int_equal(parse_str(line, 0, &cmd, &err), MP_OK);
	assert_int_equal(cmd.u.rcpt.to.local_len, 62);
	fill(local, 'q', 63);
	snprintf(line, sizeof(line), "RCPT TO:<\"%s\"@x>", local);
	expect_err(line, 0, 501, "5.1.3", "Recipient local part too long");
	fill(local, 'q', 60);
	snprintf(line, sizeof(line), "RCPT TO:<\"%s \\\"\"@x>", local); /* 1+60+1+2+1 = 65 */
	expect_err(line, 0, 501, "5.1.3", "Recipient local part too long");
	fill(local, 'q', 60);
	snprintf(line, sizeof(line), "RCPT TO:<\"%s\\\"\"@x>", local); /* 1+60+2+1 = 64 */
	assert_int_equal(parse_str(line, 0, &cmd, &err), MP_OK);
	assert_int_equal(cmd.u.rcpt.to.local_len, 64);
	assert_true(cmd.u.rcpt.to.flags & SMTP_ADDR_QUOTED);

	/* Path: 256 octets with the brackets fine, 257 not. "<" 64 "@" d ">"
	 * is 67 + d octets. */
	fill(local, 'l', 64);
	make_domain(dom, 189);
	snprintf(line, sizeof(line), "MAIL FROM:<%s@%s>", local, dom);
	assert_int_equal(parse_str(line, 0, &cmd, &err), MP_OK);
	assert_int_equal(strlen(cmd.u.mail.from.addr), 254);
	assert_int_equal(cmd.u.mail.from.domain_len, 189);
	make_domain(dom, 190);
	snprintf(line, sizeof(line), "MAIL FROM:<%s@%s>", local, dom);
	expect_err(line, 0, 501, "5.1.7", "Sender path too long");
	snprintf(line, sizeof(line), "RCPT TO:<%s@%s>", local, dom);
	expect_err(line, 0, 501, "5.1.3", "Recipient path too long");
	/* A source route counts in the path. */
	make_domain(dom, 189);
	snprintf(line, sizeof(line), "RCPT TO:<@r:%s@%s>", local, dom);
	expect_err(line, 0, 501, "5.1.3", "Recipient path too long");

	/* Domain: 255 fine, 256 not (§4.5.3.1.2); in a path the path limit
	 * is hit first, so the domain limit shows in EHLO and in the reason. */
	make_domain(dom, 255);
	snprintf(line, sizeof(line), "EHLO %s", dom);
	assert_int_equal(parse_str(line, 0, &cmd, &err), MP_OK);
	assert_int_equal(cmd.u.helo.domain.len, 255);
	make_domain(dom, 256);
	snprintf(line, sizeof(line), "EHLO %s", dom);
	expect_err(line, 0, 501, "5.5.4", "Domain name too long");
	snprintf(line, sizeof(line), "RCPT TO:<a@%s>", dom);
	expect_err(line, 0, 501, "5.1.3", "Recipient domain too long");
	make_domain(dom, 255);
	snprintf(line, sizeof(line), "RCPT TO:<a@%s>", dom);
	expect_err(line, 0, 501, "5.1.3", "Recipient path too long");

	/* Label: 63 fine, 64 not. */
	fill(dom, 'd', 63);
	snprintf(line, sizeof(line), "EHLO %s.example", dom);
	assert_int_equal(parse_str(line, 0, &cmd, &err), MP_OK);
	snprintf(line, sizeof(line), "RCPT TO:<a@%s.example>", dom);
	assert_int_equal(parse_str(line, 0, &cmd, &err), MP_OK);
	fill(dom, 'd', 64);
	snprintf(line, sizeof(line), "EHLO %s.example", dom);
	expect_err(line, 0, 501, "5.5.4", NULL);
	snprintf(line, sizeof(line), "RCPT TO:<a@%s.example>", dom);
	expect_err(line, 0, 501, "5.1.3", "Domain label too long in recipient address");
}

static void test_param_limits(void **state)
{
	(void)state;
	char v[600], line[1200];
	struct smtp_command cmd;
	struct smtp_error err;

	/* ENVID: 100 characters as sent fine, 101 not (RFC 3461 §4.4). */
	fill(v, 'e', 100);
	snprintf(line, sizeof(line), "MAIL FROM:<a@b> ENVID=%s", v);
	assert_int_equal(parse_str(line, ALL_EXT, &cmd, &err), MP_OK);
	assert_string_equal(cmd.u.mail.envid, v);
	fill(v, 'e', 101);
	snprintf(line, sizeof(line), "MAIL FROM:<a@b> ENVID=%s", v);
	expect_err(line, ALL_EXT, 501, "5.5.4", "ENVID too long");
	/* Encoded, 99 characters decode to 33. */
	for (int i = 0; i < 33; i++)
		memcpy(v + 3 * i, "+41", 3);
	v[99] = '\0';
	snprintf(line, sizeof(line), "MAIL FROM:<a@b> ENVID=%s", v);
	assert_int_equal(parse_str(line, ALL_EXT, &cmd, &err), MP_OK);
	assert_int_equal(strlen(cmd.u.mail.envid), 33);

	/* ORCPT: 500 fine, 501 not (RFC 3461 §4.2). */
	memcpy(v, "rfc822;", 7);
	fill(v + 7, 'o', 493);
	snprintf(line, sizeof(line), "RCPT TO:<a@b> ORCPT=%s", v);
	assert_int_equal(parse_str(line, ALL_EXT, &cmd, &err), MP_OK);
	assert_int_equal(strlen(cmd.u.rcpt.orcpt), 500);
	assert_int_equal(cmd.u.rcpt.orcpt_type_len, 6);
	fill(v + 7, 'o', 494);
	snprintf(line, sizeof(line), "RCPT TO:<a@b> ORCPT=%s", v);
	expect_err(line, ALL_EXT, 501, "5.5.4", "ORCPT too long");

	/* AUTH=: 256 decoded fine, 257 not. */
	fill(v, 'x', 256);
	snprintf(line, sizeof(line), "MAIL FROM:<a@b> AUTH=%s", v);
	assert_int_equal(parse_str(line, ALL_EXT, &cmd, &err), MP_OK);
	assert_int_equal(strlen(cmd.u.mail.auth), 256);
	fill(v, 'x', 257);
	snprintf(line, sizeof(line), "MAIL FROM:<a@b> AUTH=%s", v);
	expect_err(line, ALL_EXT, 501, "5.5.4", "Bad AUTH value");

	/* SIZE and BDAT at UINT64_MAX and one above. */
	assert_int_equal(parse_str("BDAT 18446744073709551615", 0, &cmd, &err), MP_OK);
	assert_true(cmd.u.bdat.size == UINT64_MAX);
	expect_err("BDAT 18446744073709551616", 0, 552, "5.3.4", NULL);
	expect_err("BDAT 184467440737095516150", 0, 552, "5.3.4", NULL);

	/* AUTH mechanism: 20 characters fine, 21 not. */
	assert_int_equal(parse_str("AUTH ABCDEFGHIJKLMNOPQRST", 0, &cmd, &err), MP_OK);
	assert_int_equal(cmd.u.auth.mech.len, 20);
}

static void test_utf8_check(void **state)
{
	(void)state;
	struct smtp_command cmd;
	struct smtp_error err;

	assert_int_equal(parse_str("RCPT TO:<\xc3\xa9t\xc3\xa9@b>", 0, &cmd, &err), MP_OK);
	assert_true(cmd.u.rcpt.to.flags & SMTP_ADDR_UTF8);
	assert_int_equal(smtp_check_utf8(&cmd.u.rcpt.to, 1, &err), MP_OK);
	assert_int_equal(smtp_check_utf8(&cmd.u.rcpt.to, 0, &err), MP_EINVAL);
	assert_int_equal(err.code, 553);
	assert_string_equal(err.enhanced, "5.6.7");
	assert_int_equal(parse_str("RCPT TO:<ascii@b>", 0, &cmd, &err), MP_OK);
	assert_int_equal(smtp_check_utf8(&cmd.u.rcpt.to, 0, &err), MP_OK);
	assert_int_equal(parse_str("RCPT TO:<a@\xe4\xbe\x8b.example>", 0, &cmd, &err), MP_OK);
	assert_int_equal(smtp_check_utf8(&cmd.u.rcpt.to, 0, &err), MP_EINVAL);

	assert_string_equal(smtp_verb_name(SMTP_VERB_STARTTLS), "STARTTLS");
	assert_string_equal(smtp_verb_name(SMTP_VERB_UNKNOWN), "UNKNOWN");
	assert_string_equal(smtp_verb_name(SMTP_VERB_MAIL), "MAIL");
}

/* ------------------------------------------------------------ lines */

/* Run the splitter the way a server does: a buffer of at most cap octets,
 * filled by reads of at most step octets (the first read stops at split),
 * events rendered as "line|" or "!|" into out. */
static void run_lines(const char *in, size_t n, size_t max_len, size_t cap, size_t split,
		      size_t step, char *out, size_t outlen)
{
	struct smtp_line_reader r;
	char *buf = malloc(cap);
	size_t len = 0, fed = 0, pos = 0;
	assert_non_null(buf);
	smtp_line_reader_init(&r, max_len);
	out[0] = '\0';

	for (size_t rounds = 0; rounds < 100000; rounds++) {
		size_t room = cap - len, want = n - fed;
		if (want > step)
			want = step;
		if (fed < split && fed + want > split)
			want = split - fed;
		if (want > room)
			want = room;
		memcpy(buf + len, in + fed, want);
		len += want;
		fed += want;

		for (;;) {
			struct mp_slice line;
			struct smtp_error err;
			size_t used = 0;
			int ret = smtp_line_next(&r, buf, len, &line, &used, &err);
			int w = 0;
			if (ret == MP_OK) {
				w = snprintf(out + pos, outlen - pos, "%.*s|", (int)line.len, line.ptr);
			} else if (ret == MP_ETOOBIG) {
				assert_int_equal(err.code, 500);
				assert_string_equal(err.enhanced, "5.5.6");
				w = snprintf(out + pos, outlen - pos, "!|");
			} else {
				assert_int_equal(ret, MP_AGAIN);
			}
			assert_true(w >= 0 && (size_t)w < outlen - pos);
			pos += (size_t)w;
			assert_true(used <= len);
			memmove(buf, buf + used, len - used);
			len -= used;
			if (ret == MP_AGAIN) {
				/* Progress: a full buffer is never left as is. */
				assert_true(len < cap);
				break;
			}
		}
		if (fed == n)
			break;
	}
	assert_int_equal(fed, n);
	free(buf);
}

static void test_lines(void **state)
{
	(void)state;
	/* max_len 16: content up to 14 octets whatever the terminator. */
	static const char in[] = "NOOP\r\n"
				 "HELO a\n"
				 "01234567890123456789\r\n"   /* 20: too long */
				 "QUIT\r\n"
				 "01234567890123\r\n"         /* 14 + CRLF = 16: fine */
				 "012345678901234\r\n"        /* 15: too long */
				 "012345678901234\n"          /* 15: too long */
				 "01234567890123\n"           /* 14 + LF: fine */
				 "A\rB\r\n"                   /* a CR stays in the line */
				 "\r\n"
				 "\n"
				 "0123456789012345678901234567890123456789\n" /* long, LF */
				 "X\r\r\n"
				 "tail-without-end";
	static const char want[] = "NOOP|HELO a|!|QUIT|01234567890123|!|!|01234567890123|"
				   "A\rB|||!|X\r|";
	size_t n = sizeof(in) - 1;
	char got[1024];

	for (size_t cap = 16; cap <= 64; cap += 48) {
		for (size_t split = 0; split <= n; split++) {
			run_lines(in, n, 16, cap, split, n, got, sizeof(got));
			if (strcmp(got, want) != 0)
				fail_msg("cap %zu split %zu: got %s", cap, split, got);
		}
		for (size_t step = 1; step <= 3; step++) {
			run_lines(in, n, 16, cap, 0, step, got, sizeof(got));
			if (strcmp(got, want) != 0)
				fail_msg("cap %zu step %zu: got %s", cap, step, got);
		}
	}

	/* The RFC limit: 510 octets and CRLF fine, 511 not. */
	char big[1100];
	fill(big, 'n', 510);
	memcpy(big + 510, "\r\nQUIT\r\n", 9);
	struct smtp_line_reader r;
	struct mp_slice line;
	struct smtp_error err;
	size_t used;
	smtp_line_reader_init(&r, SMTP_LINE_MAX_RFC);
	assert_int_equal(smtp_line_next(&r, big, strlen(big), &line, &used, &err), MP_OK);
	assert_int_equal(line.len, 510);
	assert_int_equal(used, 512);
	fill(big, 'n', 511);
	memcpy(big + 511, "\r\nQUIT\r\n", 9);
	assert_int_equal(smtp_line_next(&r, big, strlen(big), &line, &used, &err), MP_ETOOBIG);
	assert_int_equal(used, 513);
	assert_int_equal(smtp_line_next(&r, big + used, strlen(big) - used, &line, &used, &err),
			 MP_OK);
	assert_int_equal(line.len, 4);
	/* Nothing buffered: need more, nothing to drop. */
	assert_int_equal(smtp_line_next(&r, big, 0, &line, &used, &err), MP_AGAIN);
	assert_int_equal(used, 0);
}

/* ------------------------------------------------------------ DATA */

struct data_case {
	const char *in;
	size_t in_len; /* 0: strlen */
	uint64_t limit;
	const char *out;
	size_t out_len; /* 0: strlen */
	size_t consumed;
	unsigned flags;
	int result; /* of smtp_data_result */
	int code;
};

#define DLIM UINT64_MAX

static const struct data_case data_cases[] = {
	{ ".\r\n", 0, DLIM, "", 0, 3, 0, MP_OK, 0 },
	{ "a\r\n.\r\n", 0, DLIM, "a\r\n", 0, 6, 0, MP_OK, 0 },
	{ "\r\n.\r\n", 0, DLIM, "\r\n", 0, 5, 0, MP_OK, 0 },
	{ "..a\r\n.\r\n", 0, DLIM, ".a\r\n", 0, 8, 0, MP_OK, 0 },
	{ "a\r\n..\r\n.\r\n", 0, DLIM, "a\r\n.\r\n", 0, 10, 0, MP_OK, 0 },
	{ "a\r\n...\r\n.b\r\n.\r\n", 0, DLIM, "a\r\n..\r\nb\r\n", 0, 15, 0, MP_OK, 0 },
	{ "Subject: x\r\n\r\nbody. \r\n.\r\nQUIT\r\n", 0, DLIM, "Subject: x\r\n\r\nbody. \r\n",
	  0, 25, 0, MP_OK, 0 },
	{ "a\r\n.\r\n.\r\n", 0, DLIM, "a\r\n", 0, 6, 0, MP_OK, 0 },
	{ "caf\xc3\xa9\r\n.\r\n", 0, DLIM, "caf\xc3\xa9\r\n", 0, 10, SMTP_DATA_8BIT, MP_OK, 0 },
	/* SMTP smuggling: none of these fake markers ends the data. */
	{ "a\n.\nb\r\n.\r\n", 0, DLIM, "a", 0, 10, SMTP_DATA_BARE_LF, MP_EPROTO, 550 },
	{ "a\r\n.\nMAIL FROM:<x@y>\r\n.\r\n", 0, DLIM, "a\r\n", 0, 25, SMTP_DATA_BARE_LF,
	  MP_EPROTO, 550 },
	{ "a\n.\r\nRCPT TO:<x@y>\r\n.\r\n", 0, DLIM, "a", 0, 23, SMTP_DATA_BARE_LF, MP_EPROTO,
	  550 },
	{ "a\r.\r\n.\r\n", 0, DLIM, "a\r", 0, 8, SMTP_DATA_BARE_CR, MP_EPROTO, 550 },
	{ "a\r\n.\r.\r\n.\r\n", 0, DLIM, "a\r\n", 0, 11, SMTP_DATA_BARE_CR, MP_EPROTO, 550 },
	{ "a\rb\r\n.\r\n", 0, DLIM, "a\r", 0, 8, SMTP_DATA_BARE_CR, MP_EPROTO, 550 },
	{ "\n\r\n.\r\n", 0, DLIM, "", 0, 6, SMTP_DATA_BARE_LF, MP_EPROTO, 550 },
	{ ".\n.\r\n.\r\n", 0, DLIM, "", 0, 8, SMTP_DATA_BARE_LF, MP_EPROTO, 550 },
	{ "a\r\r\n.\r\n", 0, DLIM, "a\r", 0, 7, SMTP_DATA_BARE_CR, MP_EPROTO, 550 },
	{ "a\n\r\n.\r\n", 0, DLIM, "a", 0, 7, SMTP_DATA_BARE_LF, MP_EPROTO, 550 },
	/* Not finished: all consumed, nothing decided. */
	{ "a\r\n.\n", 0, DLIM, "a\r\n", 0, 5, SMTP_DATA_BARE_LF, MP_AGAIN, 0 },
	{ "a\r\n.\r", 0, DLIM, "a\r\n", 0, 5, 0, MP_AGAIN, 0 },
	{ "", 0, DLIM, "", 0, 0, 0, MP_AGAIN, 0 },
	/* NUL */
	{ "a\0b\r\n.\r\n", 8, DLIM, "a", 0, 8, SMTP_DATA_NUL, MP_EINVAL, 554 },
	{ "\0", 1, DLIM, "", 0, 1, SMTP_DATA_NUL, MP_AGAIN, 0 },
	/* Smuggling wins over NUL and size. */
	{ "\0\n123456\r\n.\r\n", 13, 3, "", 0, 13,
	  SMTP_DATA_NUL | SMTP_DATA_BARE_LF | SMTP_DATA_TOO_BIG, MP_EPROTO, 550 },
	/* Size limit: exact fit, one over. */
	{ "123\r\n.\r\n", 0, 5, "123\r\n", 0, 8, 0, MP_OK, 0 },
	{ "123\r\n.\r\n", 0, 4, "123\r", 0, 8, SMTP_DATA_TOO_BIG, MP_ETOOBIG, 552 },
	{ "123456\r\n.\r\nQUIT\r\n", 0, 5, "12345", 0, 11, SMTP_DATA_TOO_BIG, MP_ETOOBIG, 552 },
	{ "..\r\n.\r\n", 0, 3, ".\r\n", 0, 7, 0, MP_OK, 0 },
	{ ".\r\n", 0, 0, "", 0, 3, 0, MP_OK, 0 },
	{ "a\r\n.\r\n", 0, 0, "", 0, 6, SMTP_DATA_TOO_BIG, MP_ETOOBIG, 552 },
};

struct data_run {
	struct mp_buf out;
	size_t consumed;
	int ret;
	struct smtp_data d;
};

/* Feed in[0..n) in pieces: the first cut at split, then at most step
 * octets a call. Stops at the end marker. */
static void data_feed(const char *in, size_t n, uint64_t limit, size_t split, size_t step,
		      struct data_run *r)
{
	size_t pos = 0;
	mp_buf_init(&r->out, 0);
	smtp_data_init(&r->d, limit);
	r->consumed = 0;
	r->ret = MP_AGAIN;
	for (size_t rounds = 0; rounds <= n + 1; rounds++) {
		size_t piece = n - pos;
		if (piece > step)
			piece = step;
		if (pos < split && pos + piece > split)
			piece = split - pos;
		/* A heap copy of exactly the piece, so ASan sees over-reads. */
		char *copy = malloc(piece > 0 ? piece : 1);
		assert_non_null(copy);
		if (piece > 0)
			memcpy(copy, in + pos, piece);
		size_t used = 0;
		r->ret = smtp_data_feed(&r->d, copy, piece, &r->out, &used);
		free(copy);
		assert_true(used <= piece);
		r->consumed += used;
		pos += piece;
		if (r->ret != MP_AGAIN) {
			assert_int_equal(r->ret, MP_OK);
			break;
		}
		assert_int_equal(used, piece);
		if (pos == n)
			break;
	}
}

static void check_data_case(const struct data_case *c, const struct data_run *r,
			    const char *how)
{
	size_t out_len = c->out_len ? c->out_len : strlen(c->out);
	struct smtp_error err = { 0, NULL, NULL };
	if (r->consumed != c->consumed || r->out.len != out_len ||
	    (out_len > 0 && memcmp(r->out.data, c->out, out_len) != 0) ||
	    (r->d.flags & ~SMTP_DATA_LONG_LINE) != c->flags)
		fail_msg("case \"%.40s\" %s: consumed %zu/%zu out %zu/%zu flags %x/%x", c->in, how,
			 r->consumed, c->consumed, r->out.len, out_len, r->d.flags, c->flags);
	assert_int_equal(r->ret, c->result == MP_AGAIN ? MP_AGAIN : MP_OK);
	int res = smtp_data_result(&r->d, &err);
	assert_int_equal(res, c->result);
	if (c->code != 0) {
		assert_int_equal(err.code, c->code);
		assert_non_null(err.text);
	}
}

static void test_data_cases(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(data_cases) / sizeof(data_cases[0]); i++) {
		const struct data_case *c = &data_cases[i];
		size_t n = c->in_len ? c->in_len : strlen(c->in);
		struct data_run r;
		char how[64];

		data_feed(c->in, n, c->limit, n, n > 0 ? n : 1, &r);
		check_data_case(c, &r, "one shot");
		mp_buf_free(&r.out);
		for (size_t split = 0; split <= n; split++) {
			snprintf(how, sizeof(how), "split %zu", split);
			data_feed(c->in, n, c->limit, split, n > 0 ? n : 1, &r);
			check_data_case(c, &r, how);
			mp_buf_free(&r.out);
		}
		data_feed(c->in, n, c->limit, 0, 1, &r);
		check_data_case(c, &r, "byte by byte");
		mp_buf_free(&r.out);
	}
}

static void test_data_pipelined(void **state)
{
	(void)state;
	static const char in[] = "Hi\r\n.\r\nMAIL FROM:<a@b>\r\n";
	struct smtp_data d;
	struct mp_buf out;
	size_t used;

	mp_buf_init(&out, 0);
	smtp_data_init(&d, 1000);
	assert_int_equal(smtp_data_feed(&d, in, sizeof(in) - 1, &out, &used), MP_OK);
	assert_int_equal(used, 7);
	assert_int_equal(out.len, 4);
	assert_memory_equal(out.data, "Hi\r\n", 4);
	assert_int_equal(d.size, 4);
	/* A finished decoder takes nothing more. */
	assert_int_equal(smtp_data_feed(&d, in + used, sizeof(in) - 1 - used, &out, &used),
			 MP_OK);
	assert_int_equal(used, 0);
	assert_int_equal(out.len, 4);
	mp_buf_free(&out);

	/* Before the end the result is not known. */
	struct smtp_error err;
	smtp_data_init(&d, 10);
	assert_int_equal(smtp_data_result(&d, &err), MP_AGAIN);
}

static void test_data_long_lines(void **state)
{
	(void)state;
	char *in = malloc(4000);
	struct data_run r;
	assert_non_null(in);

	/* 998 octets: fine; 999: reported, not refused. A stuffed dot does not
	 * count: on the wire the line is one octet longer. */
	size_t n = 0;
	memset(in, 'x', 998);
	n = 998;
	memcpy(in + n, "\r\n.", 3);
	n += 3;
	memset(in + n, 'y', 998);
	n += 998;
	memcpy(in + n, "\r\n.\r\n", 5);
	n += 5;
	data_feed(in, n, DLIM, n, n, &r);
	assert_int_equal(r.ret, MP_OK);
	assert_int_equal(r.d.flags, 0);
	assert_int_equal(r.d.long_lines, 0);
	assert_int_equal(r.out.len, n - 4);
	mp_buf_free(&r.out);

	memset(in, 'x', 999);
	n = 999;
	memcpy(in + n, "\r\nshort\r\n", 9);
	n += 9;
	memset(in + n, 'z', 1500);
	n += 1500;
	memcpy(in + n, "\r\n.\r\n", 5);
	n += 5;
	for (size_t split = 990; split < 1020; split++) {
		data_feed(in, n, DLIM, split, n, &r);
		assert_int_equal(r.ret, MP_OK);
		assert_int_equal(r.d.flags, SMTP_DATA_LONG_LINE);
		assert_int_equal(r.d.long_lines, 2);
		struct smtp_error err;
		assert_int_equal(smtp_data_result(&r.d, &err), MP_OK);
		mp_buf_free(&r.out);
	}
	free(in);
}

static void test_data_buffer_error(void **state)
{
	(void)state;
	struct smtp_data d;
	struct mp_buf out;
	size_t used = 99;

	/* The caller's own buffer limit is passed back, not hidden. */
	mp_buf_init(&out, 2);
	smtp_data_init(&d, DLIM);
	assert_int_equal(smtp_data_feed(&d, "abc\r\n.\r\n", 8, &out, &used), MP_ENOSPC);
	mp_buf_free(&out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_good_commands),
		cmocka_unit_test(test_bad_commands),
		cmocka_unit_test(test_nul_in_command),
		cmocka_unit_test(test_address_limits),
		cmocka_unit_test(test_param_limits),
		cmocka_unit_test(test_utf8_check),
		cmocka_unit_test(test_lines),
		cmocka_unit_test(test_data_cases),
		cmocka_unit_test(test_data_pipelined),
		cmocka_unit_test(test_data_long_lines),
		cmocka_unit_test(test_data_buffer_error),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
