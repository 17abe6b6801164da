/*
 * test_dsn: builds DSNs and checks them by parsing them back: CRLF only,
 * lines <= 998, the multipart/report structure (boundary, three parts,
 * closing delimiter, boundary absent from the content), the required
 * header and delivery-status fields per message and per recipient, and
 * what of the original comes back for RET=HDRS, RET=FULL, a message too
 * large for FULL and one with over-long lines.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>

#include "dsn.h"
#include "mp_buf.h"
#include "mp_error.h"

/* ------------------------------------------------------------ a parser */

struct field {
	char name[64];
	char *value; /* owned, unfolded */
};

struct fields {
	size_t n;
	struct field f[64];
};

static void fields_free(struct fields *fs)
{
	for (size_t i = 0; i < fs->n; i++)
		free(fs->f[i].value);
	fs->n = 0;
}

/* Parses "Name: value" lines (with folding) of text[0..len) into fs. */
static void parse_fields(const char *text, size_t len, struct fields *fs)
{
	fs->n = 0;
	size_t i = 0;
	while (i < len) {
		const char *eol = memmem(text + i, len - i, "\r\n", 2);
		assert_non_null(eol);
		size_t l = (size_t)(eol - (text + i));
		if (text[i] == ' ' || text[i] == '\t') {
			/* Continuation: unfold (RFC 5322 §2.2.3, drop CRLF). */
			assert_true(fs->n > 0);
			struct field *f = &fs->f[fs->n - 1];
			size_t old = strlen(f->value);
			f->value = realloc(f->value, old + l + 1);
			assert_non_null(f->value);
			memcpy(f->value + old, text + i, l);
			f->value[old + l] = '\0';
		} else {
			const char *colon = memchr(text + i, ':', l);
			assert_non_null(colon);
			assert_true(fs->n < 64);
			struct field *f = &fs->f[fs->n++];
			size_t nl = (size_t)(colon - (text + i));
			assert_true(nl < sizeof(f->name));
			memcpy(f->name, text + i, nl);
			f->name[nl] = '\0';
			const char *v = colon + 1;
			while (v < eol && *v == ' ')
				v++;
			f->value = strndup(v, (size_t)(eol - v));
			assert_non_null(f->value);
		}
		i += l + 2;
	}
}

static const char *get(const struct fields *fs, const char *name)
{
	const char *found = NULL;
	for (size_t i = 0; i < fs->n; i++) {
		if (strcasecmp(fs->f[i].name, name) == 0) {
			assert_null(found); /* never twice */
			found = fs->f[i].value;
		}
	}
	return found;
}

struct part {
	struct fields hdr;
	const char *body;
	size_t len;
};

struct parsed {
	struct fields hdr;
	char boundary[128];
	size_t nparts;
	struct part parts[4];
};

/* Checks the line discipline of the whole message. */
static void check_lines(const char *m, size_t len)
{
	size_t col = 0;
	for (size_t i = 0; i < len; i++) {
		if (m[i] == '\r') {
			assert_true(i + 1 < len && m[i + 1] == '\n');
			i++;
			col = 0;
			continue;
		}
		assert_true(m[i] != '\n'); /* no bare LF */
		assert_true(m[i] != '\0');
		col++;
		assert_true(col <= 998);
	}
	assert_int_equal(col, 0); /* ends with CRLF */
}

static size_t header_end(const char *m, size_t len)
{
	if (len >= 2 && memcmp(m, "\r\n", 2) == 0)
		return 0;
	const char *e = memmem(m, len, "\r\n\r\n", 4);
	assert_non_null(e);
	return (size_t)(e - m) + 2;
}

static void parse_dsn(const char *m, size_t len, struct parsed *p)
{
	check_lines(m, len);
	size_t he = header_end(m, len);
	parse_fields(m, he, &p->hdr);
	const char *ct = get(&p->hdr, "Content-Type");
	assert_non_null(ct);
	assert_non_null(strstr(ct, "multipart/report"));
	assert_non_null(strstr(ct, "report-type=delivery-status"));
	const char *b = strstr(ct, "boundary=\"");
	assert_non_null(b);
	b += strlen("boundary=\"");
	const char *q = strchr(b, '"');
	assert_non_null(q);
	assert_true((size_t)(q - b) < sizeof(p->boundary) && q > b);
	memcpy(p->boundary, b, (size_t)(q - b));
	p->boundary[q - b] = '\0';

	/* Delimiters: CRLF "--" boundary; the first may follow the blank
	 * line after the header directly. */
	char delim[160], close[160];
	snprintf(delim, sizeof(delim), "\r\n--%s\r\n", p->boundary);
	snprintf(close, sizeof(close), "\r\n--%s--\r\n", p->boundary);
	const char *body = m + he + 2;
	size_t blen = len - he - 2;
	const char *first = memmem(body - 2, blen + 2, delim, strlen(delim));
	assert_non_null(first);
	const char *cur = first + strlen(delim);
	p->nparts = 0;
	for (;;) {
		const char *end = m + len;
		const char *next = memmem(cur, (size_t)(end - cur), delim, strlen(delim));
		const char *fin = memmem(cur, (size_t)(end - cur), close, strlen(close));
		assert_non_null(fin);
		const char *stop = next != NULL && next < fin ? next : fin;
		assert_true(p->nparts < 4);
		struct part *pt = &p->parts[p->nparts++];
		size_t plen = (size_t)(stop - cur);
		/* Part header, blank line, content (with its final CRLF). */
		char *tmp = malloc(plen + 2);
		assert_non_null(tmp);
		memcpy(tmp, cur, plen);
		memcpy(tmp + plen, "\r\n", 2);
		size_t phe = header_end(tmp, plen + 2);
		parse_fields(cur, phe, &pt->hdr);
		free(tmp);
		pt->body = cur + phe + 2;
		pt->len = plen >= phe + 2 ? plen - phe - 2 : 0;
		if (stop == fin) {
			assert_true(fin + strlen(close) == end); /* nothing after */
			break;
		}
		cur = next + strlen(delim);
	}
	/* The boundary occurs nowhere inside the parts. */
	for (size_t i = 0; i < p->nparts; i++)
		assert_null(memmem(p->parts[i].body, p->parts[i].len, p->boundary,
				   strlen(p->boundary)));
}

static void parsed_free(struct parsed *p)
{
	fields_free(&p->hdr);
	for (size_t i = 0; i < p->nparts; i++)
		fields_free(&p->parts[i].hdr);
}

/* The delivery-status part as groups of fields. */
struct groups {
	size_t n;
	struct fields g[8];
};

static void parse_groups(const struct part *pt, struct groups *gs)
{
	gs->n = 0;
	size_t i = 0;
	while (i < pt->len) {
		while (i + 1 < pt->len && memcmp(pt->body + i, "\r\n", 2) == 0)
			i += 2;
		if (i >= pt->len)
			break;
		const char *e = memmem(pt->body + i, pt->len - i, "\r\n\r\n", 4);
		size_t gend = e != NULL ? (size_t)(e - pt->body) + 2 : pt->len;
		assert_true(gs->n < 8);
		parse_fields(pt->body + i, gend - i, &gs->g[gs->n++]);
		i = gend;
	}
}

static void groups_free(struct groups *gs)
{
	for (size_t i = 0; i < gs->n; i++)
		fields_free(&gs->g[i]);
}

/* ------------------------------------------------------------ fixtures */

static const char original[] =
	"Return-Path: <alice@example.org>\r\n"
	"From: Alice <alice@example.org>\r\n"
	"To: bob@example.net, carol@example.net\r\n"
	"Subject: lunch\r\n"
	"Message-ID: <1@example.org>\r\n"
	"\r\n"
	"Shall we?\r\n"
	"--=_mp_dsn_0000 looks like a boundary\r\n"
	".\r\n";

static const char original_headers[] =
	"Return-Path: <alice@example.org>\r\n"
	"From: Alice <alice@example.org>\r\n"
	"To: bob@example.net, carol@example.net\r\n"
	"Subject: lunch\r\n"
	"Message-ID: <1@example.org>\r\n";

static struct dsn_rcpt rcpts2[2];

static void make_report(struct dsn_report *r, enum dsn_ret ret)
{
	memset(rcpts2, 0, sizeof(rcpts2));
	rcpts2[0].final_recipient = "bob@example.net";
	rcpts2[0].original_recipient = "rfc822;Bob@Example.NET";
	rcpts2[0].action = DSN_ACTION_FAILED;
	rcpts2[0].status = "5.1.1";
	rcpts2[0].remote_mta = "mx1.example.net";
	rcpts2[0].diag_code = 550;
	rcpts2[0].diag_text = "5.1.1 <bob@example.net>: Recipient address rejected";
	rcpts2[0].last_attempt = 1700000100;
	rcpts2[1].final_recipient = "carol@example.net";
	rcpts2[1].action = DSN_ACTION_FAILED;
	rcpts2[1].status = "5.4.4";
	rcpts2[1].diag_code = 0;
	rcpts2[1].diag_text = "example.net: no mail exchanger has an address";
	memset(r, 0, sizeof(*r));
	r->reporting_mta = "mta.example.org";
	r->sender = "alice@example.org";
	r->envid = "QQ314159";
	r->ret = ret;
	r->arrival = 1700000000;
	r->now = 1700000200;
	r->rcpts = rcpts2;
	r->nrcpts = 2;
}

static void build(const struct dsn_report *r, const char *orig, size_t len, uint64_t size,
		  struct mp_buf *out, int *eightbit)
{
	struct dsn_original o = { orig, len, size };
	const char *err = NULL;
	mp_buf_init(out, 0);
	int ret = dsn_build(r, &o, out, eightbit, &err);
	if (ret != 0)
		fprintf(stderr, "dsn_build: %s\n", err);
	assert_int_equal(ret, 0);
}

/* ------------------------------------------------------------ tests */

static void test_structure_hdrs(void **state)
{
	struct dsn_report r;
	make_report(&r, DSN_RET_HDRS);
	struct mp_buf out;
	int eightbit = -1;
	build(&r, original, strlen(original), strlen(original), &out, &eightbit);
	assert_int_equal(eightbit, 0);

	struct parsed p;
	parse_dsn(out.data, out.len, &p);
	assert_string_equal(get(&p.hdr, "From"),
			    "Mail Delivery System <MAILER-DAEMON@mta.example.org>");
	assert_string_equal(get(&p.hdr, "To"), "<alice@example.org>");
	assert_string_equal(get(&p.hdr, "Subject"), "Undelivered Mail Returned to Sender");
	assert_string_equal(get(&p.hdr, "Date"), "Tue, 14 Nov 2023 22:16:40 +0000");
	assert_string_equal(get(&p.hdr, "Auto-Submitted"), "auto-replied");
	assert_string_equal(get(&p.hdr, "MIME-Version"), "1.0");
	const char *mid = get(&p.hdr, "Message-ID");
	assert_non_null(mid);
	assert_true(mid[0] == '<' && mid[strlen(mid) - 1] == '>');
	assert_non_null(strstr(mid, "@mta.example.org>"));
	assert_int_equal(p.nparts, 3);

	/* 1: human-readable. */
	assert_non_null(strstr(get(&p.parts[0].hdr, "Content-Type"), "text/plain"));
	char *human = strndup(p.parts[0].body, p.parts[0].len);
	assert_non_null(strstr(human, "<bob@example.net>: failed (5.1.1)"));
	assert_non_null(strstr(human, "host mx1.example.net said: 550 5.1.1"));
	assert_non_null(strstr(human, "<carol@example.net>: failed (5.4.4)"));
	assert_non_null(strstr(human, "no mail exchanger has an address"));
	free(human);

	/* 2: delivery-status. */
	assert_string_equal(get(&p.parts[1].hdr, "Content-Type"), "message/delivery-status");
	struct groups gs;
	parse_groups(&p.parts[1], &gs);
	assert_int_equal(gs.n, 3);
	assert_string_equal(get(&gs.g[0], "Reporting-MTA"), "dns; mta.example.org");
	assert_string_equal(get(&gs.g[0], "Original-Envelope-Id"), "QQ314159");
	assert_string_equal(get(&gs.g[0], "Arrival-Date"), "Tue, 14 Nov 2023 22:13:20 +0000");
	assert_string_equal(get(&gs.g[1], "Original-Recipient"), "rfc822; Bob@Example.NET");
	assert_string_equal(get(&gs.g[1], "Final-Recipient"), "rfc822; bob@example.net");
	assert_string_equal(get(&gs.g[1], "Action"), "failed");
	assert_string_equal(get(&gs.g[1], "Status"), "5.1.1");
	assert_string_equal(get(&gs.g[1], "Remote-MTA"), "dns; mx1.example.net");
	assert_string_equal(get(&gs.g[1], "Diagnostic-Code"),
			    "smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected");
	assert_string_equal(get(&gs.g[1], "Last-Attempt-Date"), "Tue, 14 Nov 2023 22:15:00 +0000");
	assert_null(get(&gs.g[1], "Will-Retry-Until"));
	assert_null(get(&gs.g[2], "Original-Recipient"));
	assert_string_equal(get(&gs.g[2], "Final-Recipient"), "rfc822; carol@example.net");
	assert_string_equal(get(&gs.g[2], "Status"), "5.4.4");
	assert_null(get(&gs.g[2], "Remote-MTA"));
	assert_null(get(&gs.g[2], "Diagnostic-Code"));
	groups_free(&gs);

	/* 3: the header only. */
	assert_string_equal(get(&p.parts[2].hdr, "Content-Type"), "text/rfc822-headers");
	assert_int_equal(p.parts[2].len, strlen(original_headers));
	assert_memory_equal(p.parts[2].body, original_headers, strlen(original_headers));
	parsed_free(&p);
	mp_buf_free(&out);

	/* RET not given reads as HDRS. */
	make_report(&r, DSN_RET_UNSPEC);
	r.envid = NULL;
	build(&r, original, strlen(original), strlen(original), &out, &eightbit);
	parse_dsn(out.data, out.len, &p);
	assert_string_equal(get(&p.parts[2].hdr, "Content-Type"), "text/rfc822-headers");
	parse_groups(&p.parts[1], &gs);
	assert_null(get(&gs.g[0], "Original-Envelope-Id"));
	groups_free(&gs);
	parsed_free(&p);
	mp_buf_free(&out);
}

static void test_ret_full(void **state)
{
	struct dsn_report r;
	make_report(&r, DSN_RET_FULL);
	struct mp_buf out;
	int eightbit = -1;
	build(&r, original, strlen(original), strlen(original), &out, &eightbit);
	struct parsed p;
	parse_dsn(out.data, out.len, &p);
	assert_int_equal(p.nparts, 3);
	assert_string_equal(get(&p.parts[2].hdr, "Content-Type"), "message/rfc822");
	assert_int_equal(p.parts[2].len, strlen(original));
	assert_memory_equal(p.parts[2].body, original, strlen(original));
	assert_int_equal(eightbit, 0);
	parsed_free(&p);
	mp_buf_free(&out);

	/* Bare LF and no final newline: made CRLF. */
	const char *lf = "Subject: x\n\nbody\nlast";
	build(&r, lf, strlen(lf), strlen(lf), &out, &eightbit);
	parse_dsn(out.data, out.len, &p);
	assert_string_equal(get(&p.parts[2].hdr, "Content-Type"), "message/rfc822");
	const char *want = "Subject: x\r\n\r\nbody\r\nlast\r\n";
	assert_int_equal(p.parts[2].len, strlen(want));
	assert_memory_equal(p.parts[2].body, want, strlen(want));
	parsed_free(&p);
	mp_buf_free(&out);

	/* 8-bit content: flagged, and the part says 8bit. */
	const char *eight = "Subject: caf\xc3\xa9\r\n\r\nd\xc3\xa9j\xc3\xa0 vu\r\n";
	build(&r, eight, strlen(eight), strlen(eight), &out, &eightbit);
	assert_int_equal(eightbit, 1);
	parse_dsn(out.data, out.len, &p);
	assert_string_equal(get(&p.parts[2].hdr, "Content-Transfer-Encoding"), "8bit");
	assert_string_equal(get(&p.hdr, "Content-Transfer-Encoding"), "8bit");
	parsed_free(&p);
	mp_buf_free(&out);
}

static void test_full_too_big_or_long_lines(void **state)
{
	struct dsn_report r;
	make_report(&r, DSN_RET_FULL);
	/* Larger than DSN_RETURN_LIMIT: only the first octets are given,
	 * and only the header comes back. */
	size_t big = DSN_RETURN_LIMIT + 100;
	struct mp_buf out;
	int eightbit;
	build(&r, original, strlen(original), big, &out, &eightbit);
	struct parsed p;
	parse_dsn(out.data, out.len, &p);
	assert_string_equal(get(&p.parts[2].hdr, "Content-Type"), "text/rfc822-headers");
	assert_memory_equal(p.parts[2].body, original_headers, strlen(original_headers));
	char *human = strndup(p.parts[0].body, p.parts[0].len);
	assert_non_null(strstr(human, "too large"));
	free(human);
	parsed_free(&p);
	mp_buf_free(&out);

	/* A 3000-octet line cannot go into message/rfc822: header only. */
	size_t n = 3000;
	char *msg = malloc(n + 64);
	assert_non_null(msg);
	int k = snprintf(msg, 64, "Subject: long\r\n\r\n");
	memset(msg + k, 'x', n);
	memcpy(msg + k + n, "\r\n", 3);
	size_t mlen = strlen(msg);
	build(&r, msg, mlen, mlen, &out, &eightbit);
	parse_dsn(out.data, out.len, &p);
	assert_string_equal(get(&p.parts[2].hdr, "Content-Type"), "text/rfc822-headers");
	assert_int_equal(p.parts[2].len, strlen("Subject: long\r\n"));
	parsed_free(&p);
	mp_buf_free(&out);

	/* A header line of 3000 octets (RET=HDRS) is cut, never over 998. */
	make_report(&r, DSN_RET_HDRS);
	k = snprintf(msg, 64, "X-Long: ");
	memset(msg + k, 'y', n);
	memcpy(msg + k + n, "\r\n\r\nbody\r\n", 11);
	mlen = strlen(msg);
	build(&r, msg, mlen, mlen, &out, &eightbit);
	parse_dsn(out.data, out.len, &p); /* checks <= 998 */
	assert_int_equal(p.parts[2].len, 998 + 2);
	parsed_free(&p);
	mp_buf_free(&out);
	free(msg);

	/* A header cut off by the prefix: up to its last full line. */
	const char *partial = "A: 1\r\nB: 2\r\nC: thr";
	build(&r, partial, strlen(partial), 100000, &out, &eightbit);
	parse_dsn(out.data, out.len, &p);
	assert_int_equal(p.parts[2].len, strlen("A: 1\r\nB: 2\r\n"));
	assert_memory_equal(p.parts[2].body, "A: 1\r\nB: 2\r\n", p.parts[2].len);
	parsed_free(&p);
	mp_buf_free(&out);
}

static void test_delayed_and_delivered(void **state)
{
	struct dsn_rcpt rc = {
		.final_recipient = "dave@example.com",
		.action = DSN_ACTION_DELAYED,
		.status = "4.4.1",
		.diag_text = "connect to mx.example.com[192.0.2.1]:25: Connection refused",
		.last_attempt = 1700000000,
		.will_retry_until = 1700432000,
	};
	struct dsn_report r = {
		.reporting_mta = "mta.example.org",
		.sender = "alice@example.org",
		.arrival = 1699990000,
		.rcpts = &rc,
		.nrcpts = 1,
	};
	struct mp_buf out;
	int eightbit;
	build(&r, original, strlen(original), strlen(original), &out, &eightbit);
	struct parsed p;
	parse_dsn(out.data, out.len, &p);
	assert_string_equal(get(&p.hdr, "Subject"), "Delayed Mail (still being retried)");
	struct groups gs;
	parse_groups(&p.parts[1], &gs);
	assert_int_equal(gs.n, 2);
	assert_string_equal(get(&gs.g[1], "Action"), "delayed");
	assert_string_equal(get(&gs.g[1], "Status"), "4.4.1");
	assert_string_equal(get(&gs.g[1], "Will-Retry-Until"), "Sun, 19 Nov 2023 22:13:20 +0000");
	groups_free(&gs);
	/* Date: defaults to now, so it is present and well formed. */
	assert_int_equal(strlen(get(&p.hdr, "Date")), strlen("Tue, 14 Nov 2023 22:16:40 +0000"));
	parsed_free(&p);
	mp_buf_free(&out);

	rc.action = DSN_ACTION_RELAYED;
	rc.status = "2.0.0";
	build(&r, original, strlen(original), strlen(original), &out, &eightbit);
	parse_dsn(out.data, out.len, &p);
	assert_string_equal(get(&p.hdr, "Subject"), "Successful Mail Delivery Report");
	parse_groups(&p.parts[1], &gs);
	assert_string_equal(get(&gs.g[1], "Action"), "relayed");
	assert_null(get(&gs.g[1], "Will-Retry-Until"));
	groups_free(&gs);
	parsed_free(&p);
	mp_buf_free(&out);
}

static void test_hostile_text(void **state)
{
	/* A server's text with CR/LF and a 3000-octet word: no forged
	 * fields, folded within 998, the words intact after unfolding up to
	 * the DSN_TEXT_MAX cut. */
	char text[3200];
	int k = snprintf(text, sizeof(text), "bad\r\nAction: delivered\r\n\r\nStatus: 2.0.0 ");
	memset(text + k, 'z', 3000);
	text[k + 3000] = '\0';
	struct dsn_rcpt rc = {
		.final_recipient = "j\xc3\xbcrgen@example.de",
		.original_recipient = "utf-8;j\xc3\xbcrgen+x@example.de",
		.action = DSN_ACTION_FAILED,
		.status = "5.0.0",
		.remote_mta = "mx.example.de",
		.diag_code = 554,
		.diag_text = text,
	};
	struct dsn_report r = {
		.reporting_mta = "mta.example.org",
		.sender = "alice@example.org",
		.ret = DSN_RET_HDRS,
		.rcpts = &rc,
		.nrcpts = 1,
		.now = 1700000000,
	};
	struct mp_buf out;
	int eightbit;
	build(&r, original, strlen(original), strlen(original), &out, &eightbit);
	struct parsed p;
	parse_dsn(out.data, out.len, &p); /* line checks */
	struct groups gs;
	parse_groups(&p.parts[1], &gs);
	assert_int_equal(gs.n, 2);
	assert_string_equal(get(&gs.g[1], "Action"), "failed"); /* get() asserts one */
	assert_string_equal(get(&gs.g[1], "Status"), "5.0.0");
	const char *diag = get(&gs.g[1], "Diagnostic-Code");
	assert_non_null(diag);
	assert_int_equal(strncmp(diag, "smtp; 554 bad Action: delivered Status: 2.0.0 ", 46), 0);
	size_t zs = 0;
	for (const char *c = diag; *c != '\0'; c++)
		zs += *c == 'z';
	/* The text is cut at DSN_TEXT_MAX octets. */
	assert_int_equal(zs, DSN_TEXT_MAX - (size_t)k);
	/* RFC 6533 §3: non-ASCII addresses as utf-8-addr-xtext. */
	assert_string_equal(get(&gs.g[1], "Final-Recipient"), "utf-8; j\\x{FC}rgen@example.de");
	assert_string_equal(get(&gs.g[1], "Original-Recipient"),
			    "utf-8; j\\x{FC}rgen\\x{2B}x@example.de");
	groups_free(&gs);
	parsed_free(&p);
	mp_buf_free(&out);
}

static void test_refusals(void **state)
{
	assert_false(dsn_allowed(""));
	assert_false(dsn_allowed("<>"));
	assert_false(dsn_allowed(NULL));
	assert_true(dsn_allowed("alice@example.org"));

	struct dsn_report r;
	make_report(&r, DSN_RET_HDRS);
	struct dsn_original o = { original, strlen(original), strlen(original) };
	struct mp_buf out;
	mp_buf_init(&out, 0);
	mp_buf_append_str(&out, "keep");
	int eightbit = 7;
	const char *err = NULL;

	r.sender = "";
	assert_int_equal(dsn_build(&r, &o, &out, &eightbit, &err), MP_EINVAL);
	assert_non_null(err);
	assert_int_equal(out.len, 4); /* nothing appended */
	r.sender = "<>";
	assert_int_equal(dsn_build(&r, &o, &out, &eightbit, &err), MP_EINVAL);
	r.sender = "a@b\r\nBcc: x@y";
	assert_int_equal(dsn_build(&r, &o, &out, &eightbit, &err), MP_EINVAL);
	make_report(&r, DSN_RET_HDRS);
	rcpts2[0].status = "5.1";
	assert_int_equal(dsn_build(&r, &o, &out, &eightbit, &err), MP_EINVAL);
	make_report(&r, DSN_RET_HDRS);
	rcpts2[0].status = "3.1.1";
	assert_int_equal(dsn_build(&r, &o, &out, &eightbit, &err), MP_EINVAL);
	make_report(&r, DSN_RET_HDRS);
	rcpts2[0].final_recipient = "x@y\n";
	assert_int_equal(dsn_build(&r, &o, &out, &eightbit, &err), MP_EINVAL);
	make_report(&r, DSN_RET_HDRS);
	r.reporting_mta = "a b";
	assert_int_equal(dsn_build(&r, &o, &out, &eightbit, &err), MP_EINVAL);
	make_report(&r, DSN_RET_HDRS);
	r.nrcpts = 0;
	assert_int_equal(dsn_build(&r, &o, &out, &eightbit, &err), MP_EINVAL);
	assert_int_equal(out.len, 4);
	mp_buf_free(&out);

	/* The output limit: nothing half-written stays. */
	make_report(&r, DSN_RET_HDRS);
	mp_buf_init(&out, 600);
	mp_buf_append_str(&out, "keep");
	assert_int_equal(dsn_build(&r, &o, &out, &eightbit, &err), MP_ENOSPC);
	assert_int_equal(out.len, 4);
	assert_memory_equal(out.data, "keep", 4);
	mp_buf_free(&out);
}

static void test_wanted_and_date(void **state)
{
	/* RFC 3461 §4.1. */
	assert_true(dsn_wanted(0, DSN_ACTION_FAILED));
	assert_true(dsn_wanted(0, DSN_ACTION_DELAYED));
	assert_false(dsn_wanted(0, DSN_ACTION_DELIVERED));
	assert_false(dsn_wanted(DSN_NOTIFY_NEVER, DSN_ACTION_FAILED));
	assert_false(dsn_wanted(DSN_NOTIFY_SUCCESS, DSN_ACTION_FAILED));
	assert_true(dsn_wanted(DSN_NOTIFY_SUCCESS, DSN_ACTION_RELAYED));
	assert_true(dsn_wanted(DSN_NOTIFY_SUCCESS, DSN_ACTION_DELIVERED));
	assert_false(dsn_wanted(DSN_NOTIFY_FAILURE, DSN_ACTION_DELAYED));
	assert_true(dsn_wanted(DSN_NOTIFY_FAILURE | DSN_NOTIFY_DELAY, DSN_ACTION_DELAYED));

	char buf[64];
	assert_string_equal(dsn_format_date(0, buf, sizeof(buf)), "Thu, 01 Jan 1970 00:00:00 +0000");
	assert_string_equal(dsn_format_date(1700000000, buf, sizeof(buf)),
			    "Tue, 14 Nov 2023 22:13:20 +0000");
	assert_string_equal(dsn_format_date(951782400, buf, sizeof(buf)),
			    "Tue, 29 Feb 2000 00:00:00 +0000");
}

static void test_boundaries_differ(void **state)
{
	/* Two DSNs of the same report get different boundaries and IDs. */
	struct dsn_report r;
	make_report(&r, DSN_RET_HDRS);
	struct mp_buf a, b;
	int eightbit;
	build(&r, original, strlen(original), strlen(original), &a, &eightbit);
	build(&r, original, strlen(original), strlen(original), &b, &eightbit);
	struct parsed pa, pb;
	parse_dsn(a.data, a.len, &pa);
	parse_dsn(b.data, b.len, &pb);
	assert_string_not_equal(pa.boundary, pb.boundary);
	assert_string_not_equal(get(&pa.hdr, "Message-ID"), get(&pb.hdr, "Message-ID"));
	parsed_free(&pa);
	parsed_free(&pb);
	mp_buf_free(&a);
	mp_buf_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_structure_hdrs),
		cmocka_unit_test(test_ret_full),
		cmocka_unit_test(test_full_too_big_or_long_lines),
		cmocka_unit_test(test_delayed_and_delivered),
		cmocka_unit_test(test_hostile_text),
		cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_wanted_and_date),
		cmocka_unit_test(test_boundaries_differ),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
