/*
 * fuzz_imap_mime: arbitrary bytes as a message into imap_mime_parse, and
 * the same bytes as a packed blob into imap_mime_unpack.
 *
 * For every input: the parse succeeds (bad mail is never an error); the
 * ENVELOPE, BODY and BODYSTRUCTURE strings are well-formed IMAP (quoted
 * strings and literals closed, parentheses balanced, nothing after the
 * last one); every section answered lies inside the message; pack then
 * unpack gives the same BODY, BODYSTRUCTURE, size and the same answer for
 * every section path probed; an unpacked random blob never yields a span
 * outside the size it names. The first input byte picks tight or default
 * limits, so the depth and part limits are reached too. Any disagreement
 * aborts, which libFuzzer reports as a crash.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "imap_mime.h"
#include "mp_buf.h"
#include "mp_error.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

/* One parenthesised IMAP value: strings, literals, NIL, numbers. */
static void check_imap_list(const char *s, size_t len)
{
	size_t i = 0;
	int depth = 0;
	bool value = false; /* the last thing was a value, so a space may follow */

	CHECK(len > 0 && s[0] == '(');
	while (i < len) {
		char c = s[i];
		if (c != ' ' && c != ')')
			CHECK(!value || (c == '(' && s[i - 1] == ')'));
		if (c == '(') {
			depth++;
			i++;
			value = false;
			continue;
		} else if (c == ')') {
			CHECK(depth > 0);
			depth--;
			i++;
			if (depth == 0)
				break;
		} else if (c == '"') {
			i++;
			while (i < len && s[i] != '"') {
				CHECK(s[i] != '\r' && s[i] != '\n' && s[i] != '\0');
				CHECK((unsigned char)s[i] < 0x80);
				if (s[i] == '\\') {
					i++;
					CHECK(i < len && (s[i] == '"' || s[i] == '\\'));
				}
				i++;
			}
			CHECK(i < len);
			i++;
		} else if (c == '{') {
			size_t n = 0;
			i++;
			while (i < len && s[i] >= '0' && s[i] <= '9') {
				CHECK(n < ((size_t)1 << 40));
				n = n * 10 + (size_t)(s[i] - '0');
				i++;
			}
			CHECK(len - i >= 3 && s[i] == '}' && s[i + 1] == '\r' && s[i + 2] == '\n');
			i += 3;
			CHECK(n <= len - i);
			i += n;
		} else if (c == ' ') {
			CHECK(value);
			i++;
			value = false;
			continue;
		} else if (c >= '0' && c <= '9') {
			while (i < len && s[i] >= '0' && s[i] <= '9')
				i++;
		} else {
			CHECK(len - i >= 3 && memcmp(s + i, "NIL", 3) == 0);
			i += 3;
		}
		value = true;
	}
	CHECK(depth == 0 && i == len);
}

struct answer {
	int ret;
	struct imap_mime_span span;
};

static void probe(const struct imap_mime *m, const uint32_t *path, unsigned np,
		  enum imap_mime_sect sect, struct answer *a)
{
	memset(a, 0, sizeof(*a));
	a->ret = imap_mime_section(m, path, np, sect, &a->span);
	CHECK(a->ret == MP_OK || a->ret == MP_ENOENT);
	if (a->ret == MP_OK) {
		uint64_t size = imap_mime_size(m);
		CHECK(a->span.off <= size && a->span.len <= size - a->span.off);
		CHECK(a->span.cte != NULL && strlen(a->span.cte) < 32);
	}
}

/* Every path of up to three numbers in 0..4 (and a deep one), each with
 * every section kind. fn is called with both answers when m2 is given. */
static void probe_all(const struct imap_mime *m, const struct imap_mime *m2)
{
	uint32_t path[32];
	for (unsigned np = 0; np <= 3; np++) {
		unsigned combos = 1;
		for (unsigned k = 0; k < np; k++)
			combos *= 5;
		for (unsigned x = 0; x < combos; x++) {
			unsigned v = x;
			for (unsigned k = 0; k < np; k++) {
				path[k] = v % 5;
				v /= 5;
			}
			for (int s = IMAP_MIME_SECT_BODY; s <= IMAP_MIME_SECT_MIME; s++) {
				struct answer a, b;
				probe(m, path, np, (enum imap_mime_sect)s, &a);
				if (m2 == NULL)
					continue;
				probe(m2, path, np, (enum imap_mime_sect)s, &b);
				CHECK(a.ret == b.ret);
				if (a.ret != MP_OK)
					continue;
				CHECK(a.span.off == b.span.off && a.span.len == b.span.len);
				CHECK(strcmp(a.span.cte, b.span.cte) == 0);
				CHECK(a.span.is_multipart == b.span.is_multipart);
			}
		}
	}
	for (unsigned k = 0; k < 32; k++)
		path[k] = 1;
	struct answer a;
	probe(m, path, 32, IMAP_MIME_SECT_BODY, &a);
	probe(m, path, 32, IMAP_MIME_SECT_HEADER, &a);
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
	struct imap_mime_limits lim = { 0, 0 };
	struct imap_mime *m = NULL, *u = NULL;
	struct mp_buf a, b;
	uint8_t *blob = NULL;
	size_t blen = 0;

	if (n > 0 && (d[0] & 1) != 0) {
		lim.max_depth = 1 + (d[0] >> 1) % 4;
		lim.max_parts = 2 + (d[0] >> 3) % 8;
	}
	CHECK(imap_mime_parse((const char *)d, n, &lim, &m) == MP_OK);
	CHECK(imap_mime_size(m) == n);

	mp_buf_init(&a, 0);
	mp_buf_init(&b, 0);
	CHECK(imap_mime_envelope(m, &a) == MP_OK);
	check_imap_list(a.data, a.len);
	mp_buf_reset(&a);
	CHECK(imap_mime_body(m, false, &a) == MP_OK);
	check_imap_list(a.data, a.len);
	mp_buf_reset(&a);
	CHECK(imap_mime_body(m, true, &a) == MP_OK);
	check_imap_list(a.data, a.len);
	mp_buf_reset(&a);

	CHECK(imap_mime_pack(m, &blob, &blen) == MP_OK);
	CHECK(imap_mime_unpack(blob, blen, &u) == MP_OK);
	CHECK(imap_mime_size(u) == n);
	CHECK(imap_mime_envelope(u, &a) == MP_ENOENT);
	for (int ext = 0; ext < 2; ext++) {
		mp_buf_reset(&a);
		mp_buf_reset(&b);
		CHECK(imap_mime_body(m, ext != 0, &a) == MP_OK);
		CHECK(imap_mime_body(u, ext != 0, &b) == MP_OK);
		CHECK(a.len == b.len && memcmp(a.data, b.data, a.len) == 0);
	}
	probe_all(m, u);

	/* A truncated or flipped blob is refused or still safe. */
	if (blen > 0) {
		struct imap_mime *t = NULL;
		size_t cut = n % blen;
		if (imap_mime_unpack(blob, cut, &t) == MP_OK) {
			probe_all(t, NULL);
			imap_mime_free(&t);
		}
		blob[n % blen] ^= (uint8_t)(1u << (n % 8));
		if (imap_mime_unpack(blob, blen, &t) == MP_OK) {
			probe_all(t, NULL);
			imap_mime_free(&t);
		}
	}
	imap_mime_free(&u);
	imap_mime_free(&m);
	imap_mime_free(&m); /* safe twice */
	free(blob);

	/* The input itself as a blob. */
	int ret = imap_mime_unpack(d, n, &u);
	CHECK(ret == MP_OK || ret == MP_EPROTO);
	if (ret == MP_OK) {
		mp_buf_reset(&a);
		CHECK(imap_mime_body(u, true, &a) == MP_OK);
		probe_all(u, NULL);
		imap_mime_free(&u);
	}
	mp_buf_free(&a);
	mp_buf_free(&b);
	return 0;
}
