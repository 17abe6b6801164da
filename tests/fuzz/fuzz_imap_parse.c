/*
 * fuzz_imap_parse: arbitrary bytes through the IMAP command reader of
 * frontend/imap, checked against itself.
 *
 * Input: byte 0 picks the limits (tiny ones reach every limit path) and
 * the output mode, bytes 1-2 seed the chunk sizes, the rest is what a
 * client sends. The reader fed all at once and fed in pseudo-random chunks
 * must give the same transcript (commands rendered as text, continuation
 * requests, errors); every call consumes what it says and makes progress;
 * every command is well formed (tag and name characters, NUL-terminated
 * arguments, NUL only in literal8, depth and argument limits). Every
 * argument is also tried as a FETCH attribute, a mailbox name (modified
 * UTF-7 both ways must round-trip), a date and date-time (format and parse
 * agree), and written as an IMAP string that must read back to the same
 * bytes. Never include outside tests/fuzz.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fuzz_util.h"
#include "imap_parse.h"
#include "mp_buf.h"
#include "mp_error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct imap_parse_limits tiny_limits = {
	.max_line = 24,
	.max_literal = 8,
	.max_append_literal = 20,
	.max_command = 64,
	.max_depth = 3,
	.max_args = 8,
};

static void out(struct mp_buf *o, const void *p, size_t n)
{
	CHECK(mp_buf_append(o, p, n) == MP_OK);
}

/* ------------------------------------------------------------ checks */

static void check_fetch_att(struct imap_parser *p, const struct imap_arg *a)
{
	struct imap_fetch_att att;
	const char *error = NULL;
	int ret = imap_fetch_att_parse(p, a->s, a->len, &att, &error);
	if (ret != MP_OK) {
		CHECK(ret == MP_EINVAL || ret == MP_ENOMEM);
		CHECK(error != NULL);
		return;
	}
	CHECK(att.kind <= IMAP_FA_SAVEDATE);
	CHECK(att.section.nparts <= IMAP_SECTION_MAX_PARTS);
	for (unsigned i = 0; i < att.section.nparts; i++)
		CHECK(att.section.part[i] != 0);
	CHECK(att.section.text <= IMAP_SECT_MIME);
	if (att.section.text == IMAP_SECT_MIME)
		CHECK(att.section.nparts > 0);
	if (att.kind == IMAP_FA_BINARY || att.kind == IMAP_FA_BINARY_SIZE)
		CHECK(att.section.text == IMAP_SECT_NONE);
	bool fields = att.section.text == IMAP_SECT_HEADER_FIELDS ||
		      att.section.text == IMAP_SECT_HEADER_FIELDS_NOT;
	CHECK(fields == (att.section.nfields > 0));
	for (size_t i = 0; i < att.section.nfields; i++) {
		CHECK(att.section.fields[i] != NULL);
		CHECK(att.section.fields[i][0] != '\0');
	}
	if (att.partial) {
		CHECK(att.partial_count > 0);
		CHECK(att.kind == IMAP_FA_BODY_SECTION || att.kind == IMAP_FA_BINARY);
	}
}

static void check_mailbox(const char *s, size_t len)
{
	struct mp_buf d, e, d2;
	mp_buf_init(&d, 0);
	mp_buf_init(&e, 0);
	mp_buf_init(&d2, 0);
	if (imap_mutf7_decode(s, len, false, &d) == MP_OK) {
		CHECK(d.data != NULL && d.data[d.len] == '\0');
		CHECK(memchr(d.data, '\0', d.len) == NULL);
		/* the UTF-8 is valid and encodes back to what decodes the same */
		CHECK(imap_mutf7_encode(d.data, d.len, true, &e) == MP_OK);
		mp_buf_reset(&e);
		CHECK(imap_mutf7_encode(d.data, d.len, false, &e) == MP_OK);
		CHECK(imap_mutf7_decode(e.data, e.len, false, &d2) == MP_OK);
		CHECK(d2.len == d.len && memcmp(d2.data, d.data, d.len) == 0);
	}
	mp_buf_reset(&d);
	if (imap_mutf7_decode(s, len, true, &d) == MP_OK) {
		CHECK(d.len == len && memcmp(d.data, s, len) == 0);
	}
	/* arbitrary bytes as a UTF-8 name */
	mp_buf_reset(&e);
	mp_buf_reset(&d2);
	if (imap_mutf7_encode(s, len, false, &e) == MP_OK) {
		for (size_t i = 0; i < e.len; i++)
			CHECK(e.data[i] >= 0x20 && e.data[i] <= 0x7e);
		CHECK(imap_mutf7_decode(e.data, e.len, false, &d2) == MP_OK);
		CHECK(d2.len == len && memcmp(d2.data, s, len) == 0);
	}
	mp_buf_free(&d);
	mp_buf_free(&e);
	mp_buf_free(&d2);
}

static void check_dates(const char *s, size_t len)
{
	int64_t t, t2;
	char buf[27];
	if (imap_parse_datetime(s, len, &t) == MP_OK) {
		imap_format_datetime(t, buf, sizeof(buf));
		CHECK(strlen(buf) == 26);
		/* years 1900..9999 only: a zone may move t just outside */
		if (t >= -2208988800 && t <= 253402300799)
			CHECK(imap_parse_datetime(buf, 26, &t2) == MP_OK && t2 == t);
		else
			CHECK(t > -2208988800 - 86400 && t < 253402300799 + 86400);
	}
	if (imap_parse_date(s, len, &t) == MP_OK) {
		CHECK(t % 86400 == 0);
		imap_format_datetime(t, buf, sizeof(buf));
		CHECK(strcmp(buf + 11, " 00:00:00 +0000") == 0);
		CHECK(imap_parse_date(buf, 11, &t2) == MP_OK && t2 == t);
	}
}

/* Written as an IMAP string, the bytes read back the same. */
static void check_write(const char *s, size_t len, bool utf8)
{
	if (memchr(s, '\0', len) != NULL)
		return;
	struct mp_buf b;
	mp_buf_init(&b, 0);
	out(&b, "t X ", 4);
	CHECK(imap_write_string(&b, s, len, utf8) == MP_OK);
	out(&b, "\r\n", 2);
	struct imap_parser *p = NULL;
	CHECK(imap_parser_new(NULL, &p) == MP_OK);
	size_t off = 0, used;
	const struct imap_command *cmd = NULL;
	const struct imap_parse_error *err = NULL;
	enum imap_parse_status st;
	do {
		st = imap_parser_feed(p, b.data + off, b.len - off, &used, &cmd, &err);
		off += used;
	} while (st == IMAP_PARSE_CONTINUE);
	CHECK(st == IMAP_PARSE_COMMAND);
	CHECK(off == b.len);
	CHECK(cmd->nargs == 1);
	CHECK(cmd->args[0].type == IMAP_ARG_STRING || cmd->args[0].type == IMAP_ARG_LITERAL);
	CHECK(cmd->args[0].len == len && memcmp(cmd->args[0].s, s, len) == 0);
	imap_parser_free(&p);
	mp_buf_free(&b);
}

static bool tag_char(unsigned char c)
{
	return c > 0x20 && c < 0x7f && strchr("(){%*\"\\+", c) == NULL;
}

static void check_args(struct imap_parser *p, const struct imap_arg *a, size_t n,
		       unsigned depth, const struct imap_parse_limits *lim, size_t *count,
		       bool deep, bool utf8)
{
	CHECK(n == 0 || a != NULL);
	for (size_t i = 0; i < n; i++) {
		(*count)++;
		switch (a[i].type) {
		case IMAP_ARG_LIST:
			CHECK(a[i].s == NULL);
			CHECK(depth + 1 <= lim->max_depth);
			check_args(p, a[i].list, a[i].nlist, depth + 1, lim, count, deep, utf8);
			continue;
		case IMAP_ARG_NIL:
			CHECK(a[i].len == 3 && strncasecmp(a[i].s, "NIL", 3) == 0);
			break;
		case IMAP_ARG_ATOM:
			CHECK(a[i].len > 0);
			for (size_t k = 0; k < a[i].len; k++)
				CHECK((unsigned char)a[i].s[k] >= 0x20 &&
				      (unsigned char)a[i].s[k] < 0x7f);
			break;
		case IMAP_ARG_STRING:
			for (size_t k = 0; k < a[i].len; k++)
				CHECK(a[i].s[k] != '\r' && a[i].s[k] != '\n');
			break;
		case IMAP_ARG_LITERAL:
			break;
		default:
			CHECK(0);
		}
		CHECK(a[i].s != NULL && a[i].s[a[i].len] == '\0');
		if (!a[i].literal8)
			CHECK(memchr(a[i].s, '\0', a[i].len) == NULL);
		else
			CHECK(a[i].type == IMAP_ARG_LITERAL);
		if (!deep)
			continue;
		if (a[i].type == IMAP_ARG_ATOM)
			check_fetch_att(p, &a[i]);
		check_mailbox(a[i].s, a[i].len);
		check_dates(a[i].s, a[i].len);
		check_write(a[i].s, a[i].len, utf8);
	}
}

/* ------------------------------------------------------------ transcript */

static void render_args(struct mp_buf *o, const struct imap_arg *a, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char hdr[48];
		int w = snprintf(hdr, sizeof(hdr), " %d:%zu:", (int)a[i].type, a[i].len);
		out(o, hdr, (size_t)w);
		if (a[i].type == IMAP_ARG_LIST) {
			out(o, "(", 1);
			render_args(o, a[i].list, a[i].nlist);
			out(o, ")", 1);
		} else {
			out(o, a[i].s, a[i].len);
		}
	}
}

static void render(struct mp_buf *o, enum imap_parse_status st, const struct imap_command *cmd,
		   const struct imap_parse_error *err)
{
	char line[64];
	int w;
	switch (st) {
	case IMAP_PARSE_CONTINUE:
		out(o, "+\n", 2);
		return;
	case IMAP_PARSE_COMMAND:
		out(o, "C ", 2);
		out(o, cmd->tag, strlen(cmd->tag));
		out(o, " ", 1);
		out(o, cmd->name, strlen(cmd->name));
		render_args(o, cmd->args, cmd->nargs);
		out(o, "\n", 1);
		return;
	case IMAP_PARSE_ERROR:
	case IMAP_PARSE_FATAL:
		w = snprintf(line, sizeof(line), "%c%d ", st == IMAP_PARSE_ERROR ? 'E' : 'F',
			     (int)err->code);
		out(o, line, (size_t)w);
		if (err->tag != NULL)
			out(o, err->tag, strlen(err->tag));
		out(o, "\n", 1);
		return;
	case IMAP_PARSE_MORE:
		CHECK(0);
	}
}

static void check_event(struct imap_parser *p, enum imap_parse_status st,
			const struct imap_command *cmd, const struct imap_parse_error *err,
			const struct imap_parse_limits *lim, bool deep, bool utf8)
{
	if (st == IMAP_PARSE_COMMAND) {
		CHECK(cmd != NULL && err == NULL);
		size_t tl = strlen(cmd->tag);
		CHECK(tl > 0);
		for (size_t i = 0; i < tl; i++)
			CHECK(tag_char((unsigned char)cmd->tag[i]));
		size_t nl = strlen(cmd->name);
		CHECK(nl > 0);
		for (size_t i = 0; i < nl; i++)
			CHECK(!(cmd->name[i] >= 'a' && cmd->name[i] <= 'z'));
		CHECK(cmd->uid == (strncmp(cmd->name, "UID ", 4) == 0));
		size_t count = 0;
		check_args(p, cmd->args, cmd->nargs, 0, lim, &count, deep, utf8);
		CHECK(count <= lim->max_args);
	} else if (st == IMAP_PARSE_ERROR || st == IMAP_PARSE_FATAL) {
		CHECK(err != NULL && cmd == NULL);
		CHECK(err->code <= IMAP_ERR_NUL);
		CHECK(err->text != NULL);
		if (err->code == IMAP_ERR_NO_TAG)
			CHECK(err->tag == NULL);
		if (err->tag != NULL) {
			CHECK(err->tag[0] != '\0');
			for (const char *t = err->tag; *t != '\0'; t++)
				CHECK(tag_char((unsigned char)*t));
		}
		if (st == IMAP_PARSE_FATAL)
			CHECK(err->code == IMAP_ERR_LITERAL_TOO_BIG ||
			      err->code == IMAP_ERR_TOO_COMPLEX);
	} else {
		CHECK(cmd == NULL && err == NULL);
	}
}

static uint32_t next_rand(uint32_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 17;
	*s ^= *s << 5;
	return *s;
}

/* Feed in chunks (all at once when seed is 0). */
static void run(const char *d, size_t n, const struct imap_parse_limits *lim,
		const struct imap_parse_limits *eff, uint32_t seed, bool deep, bool utf8,
		struct mp_buf *o)
{
	struct imap_parser *p = NULL;
	CHECK(imap_parser_new(lim, &p) == MP_OK);
	size_t off = 0;
	bool fatal = false;
	while (off < n && !fatal) {
		size_t chunk = n - off;
		if (seed != 0) {
			uint32_t r = next_rand(&seed);
			size_t max = (r & 3) == 0 ? 64 : 4;
			size_t c = 1 + (r >> 8) % max;
			if (c < chunk)
				chunk = c;
		}
		/* an exact-size copy: ASan sees any read past the end */
		char *buf = malloc(chunk);
		CHECK(buf != NULL);
		memcpy(buf, d + off, chunk);
		size_t pos = 0;
		for (;;) {
			size_t used = SIZE_MAX;
			const struct imap_command *cmd = NULL;
			const struct imap_parse_error *err = NULL;
			enum imap_parse_status st =
				imap_parser_feed(p, buf + pos, chunk - pos, &used, &cmd, &err);
			CHECK(used <= chunk - pos);
			pos += used;
			if (st == IMAP_PARSE_MORE) {
				CHECK(pos == chunk);
				CHECK(cmd == NULL && err == NULL);
				break;
			}
			check_event(p, st, cmd, err, eff, deep, utf8);
			render(o, st, cmd, err);
			if (st == IMAP_PARSE_FATAL) {
				fatal = true;
				/* and it stays so */
				st = imap_parser_feed(p, buf + pos, chunk - pos, &used, &cmd, &err);
				CHECK(st == IMAP_PARSE_FATAL && used == 0);
				break;
			}
			CHECK(used > 0);
		}
		free(buf);
		off += chunk;
	}
	imap_parser_free(&p);
	CHECK(p == NULL);
}

static void check_read_line(const char *d, size_t n, size_t max)
{
	size_t ll = SIZE_MAX, used = SIZE_MAX;
	int r = imap_read_line(d, n, max, &ll, &used);
	const char *nl = memchr(d, '\n', n);
	if (r == 1) {
		CHECK(nl != NULL && used == (size_t)(nl - d) + 1);
		CHECK(ll <= max && (ll == used - 1 || (ll == used - 2 && d[ll] == '\r')));
	} else if (r == 0) {
		CHECK(n <= max + 1);
		CHECK(nl == NULL);
	} else {
		CHECK(r == -1);
		CHECK(nl == NULL || (size_t)(nl - d) > max);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 3)
		return 0;
	uint8_t flags = data[0];
	uint32_t seed = ((uint32_t)data[1] << 8 | data[2]) + 1;
	const char *d = (const char *)data + 3;
	size_t n = size - 3;

	const struct imap_parse_limits *lim = (flags & 1) ? &tiny_limits : NULL;
	struct imap_parse_limits defaults = {
		.max_line = 8192, .max_literal = 64 * 1024,
		.max_append_literal = 50 * 1024 * 1024, .max_command = 1024 * 1024,
		.max_depth = 32, .max_args = 10000,
	};
	const struct imap_parse_limits *eff = lim != NULL ? lim : &defaults;
	bool utf8 = (flags & 2) != 0;

	struct mp_buf a, b;
	mp_buf_init(&a, 0);
	mp_buf_init(&b, 0);
	run(d, n, lim, eff, 0, true, utf8, &a);
	run(d, n, lim, eff, seed, false, utf8, &b);
	if (a.len != b.len || (a.len > 0 && memcmp(a.data, b.data, a.len) != 0)) {
		fprintf(stderr, "whole:\n%.*s\nchunked:\n%.*s\n", (int)a.len,
			a.data != NULL ? a.data : "", (int)b.len, b.data != NULL ? b.data : "");
		CHECK(0);
	}
	mp_buf_free(&a);
	mp_buf_free(&b);

	/* the raw input as one name, date and string too */
	check_mailbox(d, n);
	check_dates(d, n);
	check_read_line(d, n, (size_t)(flags >> 2));
	if (n <= 2048)
		check_write(d, n, utf8);
	return 0;
}
