/*
 * fuzz_smtp_parse: arbitrary bytes through the SMTP parsers of
 * frontend/smtp, checked against themselves.
 *
 * Lines: the splitter over the whole input at once and through a server-
 * sized buffer fed at two split points must give the same transcript (two
 * line limits). Commands: every line is parsed; errors carry a sane reply,
 * accepted addresses are within the limits, consistent, and their canonical
 * form parses back to itself; decoded parameters are printable; what parses
 * with no extensions parses the same with all of them. DATA: the decoder
 * fed in three pieces (two split points from the input) must match a
 * one-shot decode and a naive reference of RFC 5321 §4.5.2 (where the
 * data ends, which flags hold, the unstuffed text of a clean message); a
 * size limit only truncates the output.
 * Never include outside tests/fuzz.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "mp_buf.h"
#include "mp_error.h"
#include "smtp_parse.h"

#define ALL_EXT (SMTP_EXT_DEFAULT | SMTP_EXT_BINARYMIME)

/* ------------------------------------------------------------ commands */

static void check_printable(const char *s, size_t max)
{
	size_t n = strlen(s);
	CHECK(n <= max);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		CHECK(c >= 0x20 && c != 0x7F);
	}
}

static void check_address(const struct smtp_address *a, enum smtp_verb verb)
{
	size_t n = strlen(a->addr);
	CHECK(a->local_len <= SMTP_LOCAL_MAX);
	CHECK(a->domain_len <= SMTP_DOMAIN_MAX);
	CHECK(n <= SMTP_PATH_MAX - 2);
	if (a->flags & SMTP_ADDR_NULL) {
		CHECK(verb == SMTP_VERB_MAIL);
		CHECK(n == 0 && a->flags == SMTP_ADDR_NULL);
		return;
	}
	if (a->flags & SMTP_ADDR_POSTMASTER) {
		CHECK(verb == SMTP_VERB_RCPT);
		CHECK(n == 10 && a->local_len == 10 && a->domain_len == 0);
		CHECK(strncasecmp(a->addr, "postmaster", 10) == 0);
		return;
	}
	CHECK(a->local_len >= 1 && a->domain_len >= 1);
	CHECK(n == a->local_len + 1 + a->domain_len);
	CHECK(a->addr[a->local_len] == '@');
	CHECK(((a->flags & SMTP_ADDR_LITERAL) != 0) == (a->addr[a->local_len + 1] == '['));
	CHECK(((a->flags & SMTP_ADDR_QUOTED) != 0) == (a->addr[0] == '"'));

	/* The canonical form is a fixed point. */
	char line[SMTP_PATH_MAX + 32];
	int w = snprintf(line, sizeof(line), "%s:<%s>",
			 verb == SMTP_VERB_MAIL ? "MAIL FROM" : "RCPT TO", a->addr);
	CHECK(w > 0 && (size_t)w < sizeof(line));
	struct smtp_command again;
	struct smtp_error err;
	int ret = smtp_parse_command(line, (size_t)w, 0, &again, &err);
	if (ret != MP_OK) {
		fprintf(stderr, "canonical \"%s\" refused: %d %s %s\n", a->addr, err.code,
			err.enhanced, err.text);
		abort();
	}
	const struct smtp_address *b = verb == SMTP_VERB_MAIL ? &again.u.mail.from : &again.u.rcpt.to;
	CHECK(strcmp(a->addr, b->addr) == 0);
	CHECK(a->local_len == b->local_len && a->domain_len == b->domain_len);
	CHECK((a->flags & ~SMTP_ADDR_ROUTE) == b->flags);
}

static void check_command(const char *line, size_t len)
{
	struct smtp_command cmd, cmd0;
	struct smtp_error err, err0;
	int ret = smtp_parse_command(line, len, ALL_EXT, &cmd, &err);

	CHECK(ret == MP_OK || ret == MP_EINVAL);
	if (ret != MP_OK) {
		CHECK(err.code >= 500 && err.code <= 555);
		CHECK(err.enhanced != NULL && err.enhanced[0] == '5');
		CHECK(err.text != NULL && err.text[0] != '\0');
	} else {
		CHECK(cmd.verb != SMTP_VERB_UNKNOWN);
		CHECK(memchr(line, '\0', len) == NULL);
		CHECK(memchr(line, '\r', len) == NULL);
		CHECK(memchr(line, '\n', len) == NULL);
		CHECK(cmd.arg.ptr >= line && cmd.arg.ptr + cmd.arg.len <= line + len);
		switch (cmd.verb) {
		case SMTP_VERB_HELO:
		case SMTP_VERB_EHLO:
			CHECK(cmd.u.helo.domain.len >= 1 &&
			      cmd.u.helo.domain.len <= SMTP_DOMAIN_MAX);
			break;
		case SMTP_VERB_MAIL:
			check_address(&cmd.u.mail.from, SMTP_VERB_MAIL);
			if (cmd.u.mail.params & SMTP_PARAM_ENVID)
				check_printable(cmd.u.mail.envid, SMTP_ENVID_MAX);
			if (cmd.u.mail.params & SMTP_PARAM_AUTH)
				check_printable(cmd.u.mail.auth, SMTP_AUTH_PARAM_MAX);
			break;
		case SMTP_VERB_RCPT:
			check_address(&cmd.u.rcpt.to, SMTP_VERB_RCPT);
			if (cmd.u.rcpt.params & SMTP_PARAM_ORCPT) {
				check_printable(cmd.u.rcpt.orcpt, SMTP_ORCPT_MAX);
				CHECK(cmd.u.rcpt.orcpt_type_len >= 1);
				CHECK(cmd.u.rcpt.orcpt[cmd.u.rcpt.orcpt_type_len] == ';');
			}
			if (cmd.u.rcpt.params & SMTP_PARAM_NOTIFY) {
				unsigned nb = cmd.u.rcpt.notify;
				CHECK(nb != 0 && nb < 16);
				CHECK(!(nb & SMTP_NOTIFY_NEVER) || nb == SMTP_NOTIFY_NEVER);
			}
			break;
		case SMTP_VERB_AUTH:
			CHECK(cmd.u.auth.mech.len >= 1 && cmd.u.auth.mech.len <= 20);
			CHECK(!cmd.u.auth.has_initial || cmd.u.auth.initial.len >= 1);
			break;
		case SMTP_VERB_DATA:
		case SMTP_VERB_RSET:
		case SMTP_VERB_QUIT:
		case SMTP_VERB_STARTTLS:
			CHECK(cmd.arg.len == 0);
			break;
		default:
			break;
		}
	}

	/* Fewer extensions can only refuse more. */
	int ret0 = smtp_parse_command(line, len, 0, &cmd0, &err0);
	CHECK(cmd0.verb == cmd.verb);
	if (ret0 == MP_OK) {
		CHECK(ret == MP_OK);
		if (cmd.verb == SMTP_VERB_MAIL) {
			CHECK(cmd0.u.mail.params == 0 && cmd.u.mail.params == 0);
			CHECK(strcmp(cmd0.u.mail.from.addr, cmd.u.mail.from.addr) == 0);
		}
	}
}

/* ------------------------------------------------------------ lines */

/* The splitter's events as a byte transcript: 'L' len line, or 'T'. The
 * buffer holds at most cap octets; reads stop at the split points. */
static void run_lines(const uint8_t *in, size_t n, size_t max_len, size_t cap, size_t s1,
		      size_t s2, int parse, struct mp_buf *tr)
{
	struct smtp_line_reader r;
	char *buf = malloc(cap > 0 ? cap : 1);
	size_t len = 0, fed = 0;
	CHECK(buf != NULL);
	smtp_line_reader_init(&r, max_len);

	for (size_t rounds = 0; rounds < 4 * n + 8; rounds++) {
		size_t want = n - fed, room = cap - len;
		if (fed < s1 && fed + want > s1)
			want = s1 - fed;
		else if (fed < s2 && fed + want > s2)
			want = s2 - fed;
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
			CHECK(used <= len);
			if (ret == MP_OK) {
				uint64_t l = line.len;
				CHECK(line.ptr == buf && line.len + 1 <= used);
				CHECK(line.len + 2 <= r.max_len);
				CHECK(memchr(line.ptr, '\n', line.len) == NULL);
				CHECK(mp_buf_append(tr, "L", 1) == MP_OK);
				CHECK(mp_buf_append(tr, &l, sizeof(l)) == MP_OK);
				CHECK(mp_buf_append(tr, line.ptr, line.len) == MP_OK);
				if (parse) {
					/* An exact-size copy, so ASan sees over-reads. */
					char *copy = malloc(line.len > 0 ? line.len : 1);
					CHECK(copy != NULL);
					memcpy(copy, line.ptr, line.len);
					check_command(copy, line.len);
					free(copy);
				}
			} else if (ret == MP_ETOOBIG) {
				CHECK(err.code == 500 && strcmp(err.enhanced, "5.5.6") == 0);
				CHECK(used >= 1 && buf[used - 1] == '\n');
				CHECK(mp_buf_append(tr, "T", 1) == MP_OK);
			} else {
				CHECK(ret == MP_AGAIN);
			}
			memmove(buf, buf + used, len - used);
			len -= used;
			if (ret == MP_AGAIN) {
				CHECK(len < cap); /* a full buffer always makes progress */
				break;
			}
		}
		if (fed == n)
			break;
	}
	CHECK(fed == n);
	free(buf);
}

static void check_lines(const uint8_t *data, size_t size, size_t max_len, size_t s1, size_t s2,
			int parse)
{
	struct mp_buf a, b;
	mp_buf_init(&a, 0);
	mp_buf_init(&b, 0);
	size_t big = size > max_len ? size : max_len;
	run_lines(data, size, max_len, big, size, size, parse, &a);
	run_lines(data, size, max_len, max_len, s1, s2, 0, &b);
	CHECK(a.len == b.len);
	CHECK(a.len == 0 || memcmp(a.data, b.data, a.len) == 0);
	mp_buf_free(&a);
	mp_buf_free(&b);
}

/* ------------------------------------------------------------ DATA */

struct data_out {
	struct smtp_data d;
	struct mp_buf out;
	size_t consumed;
	int ret, result;
};

static void run_data(const uint8_t *in, size_t n, uint64_t limit, size_t s1, size_t s2,
		     struct data_out *o)
{
	size_t cuts[3] = { s1, s2, n }, pos = 0;
	smtp_data_init(&o->d, limit);
	mp_buf_init(&o->out, 0);
	o->consumed = 0;
	o->ret = MP_AGAIN;
	for (int k = 0; k < 3 && o->ret == MP_AGAIN; k++) {
		size_t piece = cuts[k] - pos, used = 0;
		o->ret = smtp_data_feed(&o->d, (const char *)in + pos, piece, &o->out, &used);
		CHECK(o->ret == MP_OK || o->ret == MP_AGAIN);
		CHECK(used <= piece);
		if (o->ret == MP_AGAIN)
			CHECK(used == piece);
		o->consumed += used;
		pos = cuts[k];
	}
	struct smtp_error err;
	o->result = smtp_data_result(&o->d, &err);
	if (o->ret == MP_AGAIN)
		CHECK(o->result == MP_AGAIN && o->consumed == n);
	else
		CHECK(o->result != MP_AGAIN);
}

static void same_data(const struct data_out *x, const struct data_out *y)
{
	CHECK(x->ret == y->ret && x->result == y->result && x->consumed == y->consumed);
	CHECK(x->d.flags == y->d.flags && x->d.size == y->d.size);
	CHECK(x->d.long_lines == y->d.long_lines && x->d.state == y->d.state);
	CHECK(x->out.len == y->out.len);
	CHECK(x->out.len == 0 || memcmp(x->out.data, y->out.data, x->out.len) == 0);
}

/* A reference reading of RFC 5321 §4.5.2 for the whole input: the data
 * ends at the first ".\r\n" that starts the input or follows "\r\n";
 * the flags are facts about the octets up to there; a clean message is its
 * CRLF lines with one leading dot removed from each. */
static void check_reference(const uint8_t *in, size_t n, const struct data_out *o)
{
	size_t end = 0;
	if (n >= 3 && memcmp(in, ".\r\n", 3) == 0) {
		end = 3;
	} else {
		for (size_t p = 0; p + 5 <= n; p++) {
			if (memcmp(in + p, "\r\n.\r\n", 5) == 0) {
				end = p + 5;
				break;
			}
		}
	}
	if (end == 0) {
		CHECK(o->ret == MP_AGAIN && o->consumed == n);
		return;
	}
	CHECK(o->ret == MP_OK && o->consumed == end);

	unsigned flags = 0;
	for (size_t i = 0; i < end; i++) {
		if (in[i] == '\r' && in[i + 1] != '\n')
			flags |= SMTP_DATA_BARE_CR;
		if (in[i] == '\n' && (i == 0 || in[i - 1] != '\r'))
			flags |= SMTP_DATA_BARE_LF;
		if (in[i] == 0)
			flags |= SMTP_DATA_NUL;
		if (in[i] >= 0x80)
			flags |= SMTP_DATA_8BIT;
	}
	CHECK((o->d.flags & ~SMTP_DATA_LONG_LINE) == flags);
	if (flags & SMTP_DATA_ERRORS)
		return;

	struct mp_buf w;
	mp_buf_init(&w, 0);
	size_t start = 0;
	uint64_t long_lines = 0;
	while (start < end) {
		const uint8_t *lf = memchr(in + start, '\n', end - start);
		CHECK(lf != NULL);
		size_t stop = (size_t)(lf - in) + 1; /* after the CRLF */
		if (stop == end)
			break; /* the "." line */
		size_t skip = in[start] == '.' ? 1 : 0;
		if (stop - start - skip - 2 > SMTP_TEXT_LINE_MAX)
			long_lines++;
		CHECK(mp_buf_append(&w, in + start + skip, stop - start - skip) == MP_OK);
		start = stop;
	}
	CHECK(w.len == o->out.len);
	CHECK(w.len == 0 || memcmp(w.data, o->out.data, w.len) == 0);
	CHECK(o->d.long_lines == long_lines);
	CHECK(((o->d.flags & SMTP_DATA_LONG_LINE) != 0) == (long_lines > 0));
	mp_buf_free(&w);
}

static void check_data(const uint8_t *data, size_t size, size_t s1, size_t s2, uint64_t small)
{
	struct data_out one, split, lim;

	run_data(data, size, UINT64_MAX, size, size, &one);
	run_data(data, size, UINT64_MAX, s1, s2, &split);
	same_data(&one, &split);
	CHECK(!(one.d.flags & SMTP_DATA_TOO_BIG));
	if (!(one.d.flags & SMTP_DATA_ERRORS))
		CHECK(one.out.len == one.d.size);
	check_reference(data, size, &one);
	mp_buf_free(&split.out);

	/* A limit truncates the output and adds TOO_BIG, nothing else. */
	run_data(data, size, small, s1, s2, &lim);
	CHECK(lim.consumed == one.consumed && lim.ret == one.ret && lim.d.size == one.d.size);
	CHECK((lim.d.flags & ~SMTP_DATA_TOO_BIG) == one.d.flags);
	CHECK(((lim.d.flags & SMTP_DATA_TOO_BIG) != 0) == (one.d.size > small));
	size_t want = one.out.len < small ? one.out.len : (size_t)small;
	CHECK(lim.out.len == want);
	CHECK(want == 0 || memcmp(lim.out.data, one.out.data, want) == 0);
	mp_buf_free(&lim.out);
	mp_buf_free(&one.out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* Split points and a small limit from the input itself, so the
	 * fuzzer explores them too. */
	size_t s1 = 0, s2 = 0;
	uint64_t small = 0;
	if (size >= 3) {
		s1 = ((size_t)data[0] | (size_t)data[1] << 8) % (size + 1);
		s2 = s1 + (size_t)data[2] * 7 % (size - s1 + 1);
		small = (uint64_t)(data[size - 1] % 128);
	}

	check_lines(data, size, SMTP_LINE_MAX_RFC, s1, s2, 1);
	check_lines(data, size, 16, s1, s2, 0);
	check_data(data, size, s1, s2, small);
	return 0;
}
