/*
 * fuzz_smtp_reply: arbitrary bytes as an SMTP server's replies into
 * smtp_reply_feed (frontend/outbound/smtp_client.h), and as a message
 * into the DATA dot-stuffer.
 *
 * Reply parser: the whole input at once and the same input in chunks
 * (sizes taken from the input) give the same replies, the same final
 * status and the same leftover; every reply agrees with a naive reading
 * of the lines it consumed (code, line count, separators, enhanced code
 * class, text without controls, limits). Dot-stuffer: two different
 * splits give the same wire bytes, which have only CRLF line endings, no
 * line that is a lone "." before the end, and unstuff back to the input
 * with its line endings made CRLF. Any disagreement aborts.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "mp_error.h"
#include "smtp_client.h"

/* What is compared between the two runs, per reply. */
struct summary {
	int code;
	size_t nlines, text_len;
	int truncated;
	char enhanced[12];
	uint64_t text_hash;
};

struct outcome {
	size_t nreplies, cap;
	struct summary *replies; /* owned */
	int status;              /* MP_AGAIN or the error */
	size_t leftover;
};

static void record(struct outcome *o, const struct smtp_reply *r)
{
	CHECK(o->nreplies < o->cap);
	struct summary *s = &o->replies[o->nreplies++];
	s->code = r->code;
	s->nlines = r->nlines;
	s->text_len = r->text_len;
	s->truncated = r->truncated;
	memcpy(s->enhanced, r->enhanced, sizeof(s->enhanced));
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */
	for (size_t i = 0; i < r->text_len; i++)
		h = (h ^ (unsigned char)r->text[i]) * 1099511628211ULL;
	s->text_hash = h;
}

static void check_reply(const struct smtp_reply *r, const char *raw, size_t n)
{
	/* Naive reading of raw[0..n): lines ended by LF. */
	size_t lines = 0;
	for (size_t i = 0; i < n; i++)
		lines += raw[i] == '\n';
	CHECK(lines == r->nlines);
	CHECK(r->nlines >= 1 && r->nlines <= SMTP_REPLY_LINES_MAX);
	CHECK(n >= 4 && raw[n - 1] == '\n');
	int code = (raw[0] - '0') * 100 + (raw[1] - '0') * 10 + (raw[2] - '0');
	CHECK(r->code == code && code >= 200 && code <= 599);
	size_t start = 0;
	for (size_t l = 0; l < lines; l++) {
		const char *lf = memchr(raw + start, '\n', n - start);
		CHECK(lf != NULL);
		size_t len = (size_t)(lf - (raw + start)) + 1;
		CHECK(len <= SMTP_REPLY_LINE_MAX);
		size_t body = len - 1;
		if (body > 0 && raw[start + body - 1] == '\r')
			body--;
		CHECK(body >= 3);
		CHECK(memcmp(raw + start, raw, 3) == 0);
		int last = l + 1 == lines;
		if (body > 3)
			CHECK(raw[start + 3] == (last ? ' ' : '-'));
		else
			CHECK(last);
		start += len;
	}
	CHECK(start == n);
	if (r->enhanced[0] != '\0') {
		CHECK(r->enhanced[0] == raw[0]);
		CHECK(r->enhanced[1] == '.');
		CHECK(strlen(r->enhanced) >= 5 && strlen(r->enhanced) <= 9);
	}
	CHECK(r->text_len < SMTP_REPLY_TEXT_MAX);
	CHECK(strlen(r->text) == r->text_len);
	size_t newlines = 0;
	for (size_t i = 0; i < r->text_len; i++) {
		unsigned char c = (unsigned char)r->text[i];
		CHECK(c == '\t' || c == '\n' || (c >= 0x20 && c != 0x7f));
		newlines += c == '\n';
	}
	if (!r->truncated)
		CHECK(newlines + 1 == r->nlines);
	else
		CHECK(newlines + 1 < r->nlines || r->nlines == 1);
}

static void run_whole(const char *data, size_t len, struct outcome *o)
{
	struct smtp_reply_parser p;
	smtp_reply_parser_init(&p);
	size_t pos = 0;
	o->nreplies = 0;
	for (;;) {
		size_t consumed = 0;
		const char *err = NULL;
		int ret = smtp_reply_feed(&p, data + pos, len - pos, &consumed, &err);
		CHECK(consumed <= len - pos);
		if (ret == MP_OK) {
			check_reply(&p.reply, data + pos, consumed);
			record(o, &p.reply);
			pos += consumed;
			continue;
		}
		CHECK(ret == MP_AGAIN || ret == MP_EPROTO || ret == MP_ETOOBIG);
		if (ret != MP_AGAIN)
			CHECK(err != NULL);
		o->status = ret;
		o->leftover = len - pos - consumed;
		return;
	}
}

/* Like a client: a buffer of unconsumed input, more appended per read. */
static void run_split(const char *data, size_t len, const uint8_t *sizes, size_t nsizes,
		      struct outcome *o)
{
	struct smtp_reply_parser p;
	smtp_reply_parser_init(&p);
	char *acc = malloc(len + 1);
	CHECK(acc != NULL);
	size_t acc_len = 0, pos = 0, k = 0;
	o->nreplies = 0;
	o->status = MP_AGAIN;
	while (pos < len) {
		size_t chunk = nsizes > 0 ? (size_t)sizes[k++ % nsizes] % 97 + 1 : 1;
		if (chunk > len - pos)
			chunk = len - pos;
		memcpy(acc + acc_len, data + pos, chunk);
		acc_len += chunk;
		pos += chunk;
		for (;;) {
			size_t consumed = 0;
			const char *err = NULL;
			int ret = smtp_reply_feed(&p, acc, acc_len, &consumed, &err);
			memmove(acc, acc + consumed, acc_len - consumed);
			acc_len -= consumed;
			if (ret == MP_OK) {
				record(o, &p.reply);
				continue;
			}
			o->status = ret;
			break;
		}
		if (o->status != MP_AGAIN)
			break;
	}
	o->leftover = acc_len + (len - pos);
	free(acc);
}

static void fuzz_replies(const char *data, size_t len)
{
	/* A reply takes at least 4 octets ("250\n"). */
	struct outcome a = { 0, len / 4 + 1, NULL, 0, 0 }, b = a;
	a.replies = malloc(a.cap * sizeof(*a.replies));
	b.replies = malloc(b.cap * sizeof(*b.replies));
	CHECK(a.replies != NULL && b.replies != NULL);
	run_whole(data, len, &a);
	run_split(data, len, (const uint8_t *)data, len < 16 ? len : 16, &b);
	CHECK(a.status == b.status);
	CHECK(a.nreplies == b.nreplies);
	if (a.status == MP_AGAIN)
		CHECK(a.leftover == b.leftover);
	for (size_t i = 0; i < a.nreplies; i++) {
		const struct summary *x = &a.replies[i], *y = &b.replies[i];
		CHECK(x->code == y->code && x->nlines == y->nlines);
		CHECK(x->text_len == y->text_len && x->truncated == y->truncated);
		CHECK(strcmp(x->enhanced, y->enhanced) == 0);
		CHECK(x->text_hash == y->text_hash);
	}
	free(a.replies);
	free(b.replies);
}

static size_t stuff(const char *data, size_t len, size_t step, char *out)
{
	struct smtp_dotstuff ds;
	smtp_dotstuff_init(&ds);
	size_t o = 0;
	for (size_t pos = 0; pos < len; pos += step) {
		size_t n = len - pos < step ? len - pos : step;
		o += smtp_dotstuff(&ds, data + pos, n, out + o);
	}
	o += smtp_dotstuff_end(&ds, out + o);
	return o;
}

static void fuzz_dotstuff(const char *data, size_t len)
{
	size_t cap = SMTP_DOTSTUFF_OUT_MAX(len) + 8;
	char *a = malloc(cap), *b = malloc(cap), *norm = malloc(2 * len + 3);
	CHECK(a != NULL && b != NULL && norm != NULL);
	size_t na = stuff(data, len, len > 0 ? len : 1, a);
	size_t nb = stuff(data, len, 1 + (len > 0 ? (unsigned char)data[0] % 7 : 0), b);
	CHECK(na == nb && memcmp(a, b, na) == 0);
	CHECK(na <= cap);
	/* Only CRLF line endings; ends with CRLF "." CRLF. */
	CHECK(na >= 3 && memcmp(a + na - 3, ".\r\n", 3) == 0);
	for (size_t i = 0; i < na; i++) {
		if (a[i] == '\r')
			CHECK(i + 1 < na && a[i + 1] == '\n');
		if (a[i] == '\n')
			CHECK(i > 0 && a[i - 1] == '\r');
	}
	/* The input with line endings made CRLF and a final CRLF. */
	size_t nn = 0;
	for (size_t i = 0; i < len; i++) {
		if (data[i] == '\r') {
			if (i + 1 < len && data[i + 1] == '\n')
				i++;
			norm[nn++] = '\r';
			norm[nn++] = '\n';
		} else if (data[i] == '\n') {
			norm[nn++] = '\r';
			norm[nn++] = '\n';
		} else {
			norm[nn++] = data[i];
		}
	}
	if (nn > 0 && !(nn >= 2 && norm[nn - 2] == '\r' && norm[nn - 1] == '\n')) {
		norm[nn++] = '\r';
		norm[nn++] = '\n';
	}
	/* Unstuff line by line until the lone "." line, which must be last. */
	size_t i = 0, u = 0;
	for (;;) {
		const char *crlf = memmem(a + i, na - i, "\r\n", 2);
		CHECK(crlf != NULL);
		size_t l = (size_t)(crlf - (a + i));
		if (l == 1 && a[i] == '.') {
			CHECK(i + 3 == na);
			break;
		}
		size_t skip = 0;
		if (l > 0 && a[i] == '.') {
			CHECK(l >= 2 && a[i + 1] == '.');
			skip = 1;
		}
		CHECK(u + (l - skip) + 2 <= nn);
		CHECK(memcmp(norm + u, a + i + skip, l - skip) == 0);
		u += l - skip;
		CHECK(memcmp(norm + u, "\r\n", 2) == 0);
		u += 2;
		i += l + 2;
	}
	CHECK(u == nn);
	free(a);
	free(b);
	free(norm);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_replies((const char *)data, size);
	fuzz_dotstuff((const char *)data, size);
	return 0;
}
