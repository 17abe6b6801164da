/*
 * Tests of mp_uidset: table tests of valid and invalid sequence-sets with
 * their normal form, every sample parsed from an exact-size heap copy and
 * from every prefix (ASan sees any read past len), every split at a comma
 * (the union of the halves equals the whole), boundaries and limits,
 * resolve/contains/count against a brute-force model, and format round
 * trips. Never depends on wall-clock time or randomness from outside: the
 * model test uses a fixed seed and a bounded count.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mp_error.h"
#include "mp_uidset.h"

/* The ranges as "lo:hi,lo,..." with '*' for MP_UIDSET_STAR (only while the
 * set is unresolved), for comparing against the tables. */
static void render(const struct mp_uidset *set, char *out, size_t outlen)
{
	size_t pos = 0;
	out[0] = '\0';
	for (size_t i = 0; i < set->n && pos < outlen; i++) {
		char lo[16], hi[16];
		const struct mp_uid_range *r = &set->r[i];
		if (set->has_star && r->lo == MP_UIDSET_STAR)
			snprintf(lo, sizeof(lo), "*");
		else
			snprintf(lo, sizeof(lo), "%" PRIu32, r->lo);
		if (set->has_star && r->hi == MP_UIDSET_STAR)
			snprintf(hi, sizeof(hi), "*");
		else
			snprintf(hi, sizeof(hi), "%" PRIu32, r->hi);
		int w = r->lo == r->hi ? snprintf(out + pos, outlen - pos, "%s%s", i ? "," : "", lo)
				       : snprintf(out + pos, outlen - pos, "%s%s:%s", i ? "," : "", lo, hi);
		assert_true(w > 0);
		pos += (size_t)w;
	}
	assert_true(pos < outlen);
}

/* Parse from a heap copy of exactly len bytes, no NUL after it. */
static int parse_exact(const char *s, size_t len, struct mp_uidset *set, const char **err)
{
	char *copy = malloc(len > 0 ? len : 1);
	assert_non_null(copy);
	if (len > 0)
		memcpy(copy, s, len);
	int ret = mp_uidset_parse(copy, len, set, err);
	free(copy);
	return ret;
}

/* The normal form documented in mp_uidset.c. */
static void check_invariants(const struct mp_uidset *set)
{
	for (size_t i = 0; i < set->n; i++) {
		assert_true(set->r[i].lo >= 1);
		assert_true(set->r[i].lo <= set->r[i].hi);
		if (i > 0)
			assert_true(set->r[i - 1].lo <= set->r[i].lo);
	}
	if (!set->has_star) {
		for (size_t i = 1; i < set->n; i++) {
			/* disjoint and not adjacent */
			assert_true(set->r[i - 1].hi < UINT32_MAX);
			assert_true(set->r[i - 1].hi + 1 < set->r[i].lo);
		}
	} else {
		size_t nstar = 0;
		uint32_t prev_hi = 0;
		int have_prev = 0;
		for (size_t i = 0; i < set->n; i++) {
			if (set->r[i].hi == MP_UIDSET_STAR) {
				nstar++;
				continue;
			}
			if (have_prev)
				assert_true(prev_hi + 1 < set->r[i].lo);
			prev_hi = set->r[i].hi;
			have_prev = 1;
		}
		assert_true(nstar >= 1 && nstar <= 2);
	}
}

/* ------------------------------------------------------------ tables */

struct valid_case {
	const char *in;
	const char *norm; /* render() of the parsed set */
	int has_star;
};

static const struct valid_case valid_cases[] = {
	{ "1", "1", 0 },
	{ "5", "5", 0 },
	{ "10", "10", 0 },
	{ "1:5", "1:5", 0 },
	{ "5:1", "1:5", 0 },
	{ "3:3", "3", 0 },
	{ "1,2,3", "1:3", 0 },
	{ "3,2,1", "1:3", 0 },
	{ "1,3", "1,3", 0 },
	{ "1:5,7,9:11", "1:5,7,9:11", 0 },
	{ "9:11,7,1:5", "1:5,7,9:11", 0 },
	{ "1:5,6:10", "1:10", 0 },
	{ "1:5,3:8", "1:8", 0 },
	{ "1:5,2:3", "1:5", 0 },
	{ "1,1,1", "1", 0 },
	{ "10:1,20:15", "1:10,15:20", 0 },
	{ "100,99,98,200", "98:100,200", 0 },
	{ "4294967295", "4294967295", 0 },
	{ "4294967294:4294967295", "4294967294:4294967295", 0 },
	{ "1:4294967295", "1:4294967295", 0 },
	{ "4294967295:1", "1:4294967295", 0 },
	{ "4294967295,1", "1,4294967295", 0 },
	{ "1:4294967295,5:6", "1:4294967295", 0 },
	{ "123456789", "123456789", 0 },
	{ "*", "*", 1 },
	{ "*:*", "*", 1 },
	{ "1:*", "1:*", 1 },
	{ "*:1", "1:*", 1 },
	{ "5:*", "5:*", 1 },
	{ "1:5,9:*", "1:5,9:*", 1 },
	{ "9:*,1:5", "1:5,9:*", 1 },
	/* '*' ranges are kept apart from the others (their meaning depends on
	 * the mailbox) and reduced to the lowest and highest start. */
	{ "1:10,5:*", "1:10,5:*", 1 },
	{ "3:*,7:*", "3:*,7:*", 1 },
	{ "3:*,7:*,5:*", "3:*,7:*", 1 },
	{ "*,3:*", "3:*", 1 },              /* "*" adds nothing to "3:*" */
	{ "3:*,*,12:*", "3:*,12:*", 1 },    /* found by fuzz_uidset */
	{ "*,*", "*", 1 },
	{ "*,1", "1,*", 1 },
	{ "1,2,*,4,5", "1:2,4:5,*", 1 },
	{ "2,1:*", "1:*,2", 1 },
	/* With a '*' in the set, 4294967295 reads as '*' (documented). */
	{ "4294967295,*", "*", 1 },
};

struct invalid_case {
	const char *in;
	size_t len; /* 0: strlen(in) */
	int ret;
	const char *msg_part;
};

static const struct invalid_case invalid_cases[] = {
	{ "", 0, MP_EINVAL, "empty" },
	{ "0", 0, MP_EINVAL, "0 is not" },
	{ "0:5", 0, MP_EINVAL, "0 is not" },
	{ "5:0", 0, MP_EINVAL, "0 is not" },
	{ "1,0", 0, MP_EINVAL, "0 is not" },
	{ "01", 0, MP_EINVAL, "leading zero" },
	{ "1:05", 0, MP_EINVAL, "leading zero" },
	{ "007", 0, MP_EINVAL, "leading zero" },
	{ "4294967296", 0, MP_EINVAL, "too large" },
	{ "4294967300", 0, MP_EINVAL, "too large" },
	{ "1:4294967296", 0, MP_EINVAL, "too large" },
	{ "99999999999999999999999", 0, MP_EINVAL, "too large" },
	{ "18446744073709551617", 0, MP_EINVAL, "too large" },
	{ ",", 0, MP_EINVAL, "empty element" },
	{ ",1", 0, MP_EINVAL, "empty element" },
	{ "1,", 0, MP_EINVAL, "ends with" },
	{ "1,,2", 0, MP_EINVAL, "empty element" },
	{ ":", 0, MP_EINVAL, "before ':'" },
	{ ":5", 0, MP_EINVAL, "before ':'" },
	{ "5:", 0, MP_EINVAL, "after ':'" },
	{ "5:,6", 0, MP_EINVAL, "after ':'" },
	{ "1::2", 0, MP_EINVAL, "::" },
	{ "1:2:3", 0, MP_EINVAL, "more than two" },
	{ "*:*:*", 0, MP_EINVAL, "more than two" },
	{ "**", 0, MP_EINVAL, "stand alone" },
	{ "*5", 0, MP_EINVAL, "stand alone" },
	{ "5*", 0, MP_EINVAL, "stand alone" },
	{ "1:*5", 0, MP_EINVAL, "stand alone" },
	{ " 1", 0, MP_EINVAL, "invalid character" },
	{ "1 ", 0, MP_EINVAL, "invalid character" },
	{ "1, 2", 0, MP_EINVAL, "invalid character" },
	{ "1\t", 0, MP_EINVAL, "invalid character" },
	{ "1\r\n", 0, MP_EINVAL, "invalid character" },
	{ "-1", 0, MP_EINVAL, "invalid character" },
	{ "+1", 0, MP_EINVAL, "invalid character" },
	{ "1-5", 0, MP_EINVAL, "invalid character" },
	{ "a", 0, MP_EINVAL, "invalid character" },
	{ "1;2", 0, MP_EINVAL, "invalid character" },
	{ "$", 0, MP_EINVAL, "invalid character" },
	{ "1\xff", 0, MP_EINVAL, "invalid character" },
	{ "\xd9\xa1", 0, MP_EINVAL, "invalid character" }, /* Arabic-Indic one */
	{ "1\0" "2", 3, MP_EINVAL, "invalid character" },
	{ "\0", 1, MP_EINVAL, "invalid character" },
};

static void test_valid_table(void **state)
{
	for (size_t i = 0; i < sizeof(valid_cases) / sizeof(valid_cases[0]); i++) {
		const struct valid_case *c = &valid_cases[i];
		struct mp_uidset set;
		const char *err = NULL;
		char out[256];
		int ret = parse_exact(c->in, strlen(c->in), &set, &err);
		if (ret != MP_OK)
			fail_msg("\"%s\": %d %s", c->in, ret, err);
		render(&set, out, sizeof(out));
		if (strcmp(out, c->norm) != 0)
			fail_msg("\"%s\": got \"%s\", want \"%s\"", c->in, out, c->norm);
		assert_int_equal(set.has_star, c->has_star);
		check_invariants(&set);
		mp_uidset_free(&set);
		mp_uidset_free(&set); /* safe twice */
		assert_null(set.r);
	}
}

static void test_invalid_table(void **state)
{
	for (size_t i = 0; i < sizeof(invalid_cases) / sizeof(invalid_cases[0]); i++) {
		const struct invalid_case *c = &invalid_cases[i];
		size_t len = c->len != 0 ? c->len : strlen(c->in);
		struct mp_uidset set;
		const char *err = NULL;
		memset(&set, 0xa5, sizeof(set)); /* parse must not trust it */
		int ret = parse_exact(c->in, len, &set, &err);
		if (ret != c->ret)
			fail_msg("case %zu: got %d, want %d", i, ret, c->ret);
		assert_non_null(err);
		if (strstr(err, c->msg_part) == NULL)
			fail_msg("case %zu: message \"%s\" lacks \"%s\"", i, err, c->msg_part);
		/* On failure the set is empty and needs no free. */
		assert_null(set.r);
		assert_int_equal(set.n, 0);
		assert_int_equal(set.has_star, 0);
	}
}

/* The parser reads only len bytes: anything after them changes nothing. */
static void test_respects_len(void **state)
{
	for (size_t i = 0; i < sizeof(valid_cases) / sizeof(valid_cases[0]); i++) {
		const struct valid_case *c = &valid_cases[i];
		char buf[128];
		size_t len = strlen(c->in);
		snprintf(buf, sizeof(buf), "%s,0:x junk", c->in);
		struct mp_uidset set;
		const char *err = NULL;
		assert_int_equal(mp_uidset_parse(buf, len, &set, &err), MP_OK);
		char out[256];
		render(&set, out, sizeof(out));
		assert_string_equal(out, c->norm);
		mp_uidset_free(&set);
	}
}

/* Every prefix of every sample parses to a result in normal form or to a
 * clean error; ASan checks the exact-size copies are not over-read. */
static void test_every_prefix(void **state)
{
	const char *extra[] = { "1:5,7,9:*", "4294967295:4294967294,3", "12,34:56,*:7" };
	for (size_t i = 0; i < sizeof(valid_cases) / sizeof(valid_cases[0]) + 3; i++) {
		const char *s = i < sizeof(valid_cases) / sizeof(valid_cases[0])
				? valid_cases[i].in
				: extra[i - sizeof(valid_cases) / sizeof(valid_cases[0])];
		size_t len = strlen(s);
		for (size_t k = 0; k <= len; k++) {
			struct mp_uidset set;
			const char *err = NULL;
			int ret = parse_exact(s, k, &set, &err);
			if (ret == MP_OK) {
				assert_true(set.n >= 1);
				check_invariants(&set);
				mp_uidset_free(&set);
			} else {
				assert_int_equal(ret, MP_EINVAL);
				assert_non_null(err);
				assert_null(set.r);
			}
			/* A prefix that ends at a digit or '*' must parse. */
			if (k > 0 && (s[k - 1] == '*' || (s[k - 1] >= '0' && s[k - 1] <= '9')) &&
			    !(s[k - 1] == '0' && (k == 1 || s[k - 2] < '0' || s[k - 2] > '9')))
				assert_int_equal(ret, MP_OK);
		}
	}
}

static void resolve_render(const char *in, size_t len, uint32_t max, char *out, size_t outlen)
{
	struct mp_uidset set;
	const char *err = NULL;
	assert_int_equal(parse_exact(in, len, &set, &err), MP_OK);
	mp_uidset_resolve(&set, max);
	assert_int_equal(set.has_star, 0);
	check_invariants(&set);
	render(&set, out, outlen);
	mp_uidset_free(&set);
}

/* Splitting a sample at any comma and joining the halves gives the same
 * set, for several mailbox sizes. */
static void test_split_at_commas(void **state)
{
	static const uint32_t maxes[] = { 0, 1, 3, 6, 10, 100, 4294967295u };
	for (size_t i = 0; i < sizeof(valid_cases) / sizeof(valid_cases[0]); i++) {
		const char *s = valid_cases[i].in;
		size_t len = strlen(s);
		/* Halves of "4294967295,*" differ from the whole on purpose:
		 * only with a '*' in the set is 4294967295 read as '*'. */
		if (strstr(s, "4294967295") != NULL && strchr(s, '*') != NULL)
			continue;
		for (size_t k = 0; k < len; k++) {
			if (s[k] != ',')
				continue;
			for (size_t m = 0; m < sizeof(maxes) / sizeof(maxes[0]); m++) {
				char whole[256], a[256], b[256], joined[600], again[256];
				resolve_render(s, len, maxes[m], whole, sizeof(whole));
				resolve_render(s, k, maxes[m], a, sizeof(a));
				resolve_render(s + k + 1, len - k - 1, maxes[m], b, sizeof(b));
				/* An empty half ("*" on an empty mailbox) adds nothing. */
				snprintf(joined, sizeof(joined), "%s%s%s", a, a[0] && b[0] ? "," : "", b);
				if (joined[0] == '\0') {
					assert_string_equal(whole, "");
					continue;
				}
				resolve_render(joined, strlen(joined), maxes[m], again, sizeof(again));
				if (strcmp(again, whole) != 0)
					fail_msg("\"%s\" split at %zu, max %" PRIu32 ": \"%s\" vs \"%s\"",
						 s, k, maxes[m], again, whole);
			}
		}
	}
}

static void test_boundaries(void **state)
{
	struct mp_uidset set;
	const char *err = NULL;

	assert_int_equal(parse_exact("4294967295", 10, &set, &err), MP_OK);
	assert_int_equal(set.n, 1);
	assert_int_equal(set.r[0].lo, 4294967295u);
	assert_int_equal(set.r[0].hi, 4294967295u);
	assert_int_equal(set.has_star, 0);
	/* No '*': resolve leaves the literal number alone. */
	mp_uidset_resolve(&set, 10);
	assert_int_equal(set.n, 1);
	assert_int_equal(set.r[0].lo, 4294967295u);
	assert_false(mp_uidset_contains(&set, 10));
	assert_true(mp_uidset_contains(&set, 4294967295u));
	mp_uidset_free(&set);

	assert_int_equal(parse_exact("4294967296", 10, &set, &err), MP_EINVAL);
	assert_int_equal(parse_exact("42949672950", 11, &set, &err), MP_EINVAL);
	assert_int_equal(parse_exact("429496729", 9, &set, &err), MP_OK);
	assert_int_equal(set.r[0].lo, 429496729u);
	mp_uidset_free(&set);
	assert_int_equal(parse_exact("1", 1, &set, &err), MP_OK);
	assert_int_equal(set.r[0].lo, 1);
	mp_uidset_free(&set);
	assert_int_equal(parse_exact("4294967294:4294967295", 21, &set, &err), MP_OK);
	assert_int_equal(mp_uidset_count(&set), 2);
	mp_uidset_free(&set);
	assert_int_equal(parse_exact("1:4294967295", 12, &set, &err), MP_OK);
	assert_true(mp_uidset_count(&set) == 4294967295ull);
	mp_uidset_free(&set);
}

static void test_limits(void **state)
{
	struct mp_uidset set;
	const char *err = NULL;
	char *buf = malloc(MP_UIDSET_MAX_LEN + 2);
	assert_non_null(buf);

	/* Exactly MP_UIDSET_MAX_RANGES ranges: "1,3,5,..." */
	size_t pos = 0;
	for (uint32_t i = 0; i < MP_UIDSET_MAX_RANGES; i++)
		pos += (size_t)snprintf(buf + pos, MP_UIDSET_MAX_LEN + 2 - pos, "%s%" PRIu32,
					i ? "," : "", 2 * i + 1);
	assert_true(pos <= MP_UIDSET_MAX_LEN);
	assert_int_equal(parse_exact(buf, pos, &set, &err), MP_OK);
	assert_int_equal(set.n, MP_UIDSET_MAX_RANGES);
	assert_true(mp_uidset_count(&set) == MP_UIDSET_MAX_RANGES);
	assert_true(mp_uidset_contains(&set, 2 * (MP_UIDSET_MAX_RANGES - 1) + 1));
	assert_false(mp_uidset_contains(&set, 2 * MP_UIDSET_MAX_RANGES));
	mp_uidset_free(&set);

	/* One more range is too many, even though the text is short. */
	pos += (size_t)snprintf(buf + pos, MP_UIDSET_MAX_LEN + 2 - pos, ",99999");
	assert_int_equal(parse_exact(buf, pos, &set, &err), MP_ETOOBIG);
	assert_null(set.r);
	assert_non_null(strstr(err, "too many"));

	/* Exactly MP_UIDSET_MAX_LEN bytes is fine. Elements of 22 bytes keep
	 * the range count (2979) under its own limit. */
	pos = 0;
	size_t nr = 0;
	while (pos + 22 <= MP_UIDSET_MAX_LEN - 20) {
		memcpy(buf + pos, "4294967295:4294967295,", 22);
		pos += 22;
		nr++;
	}
	assert_int_equal(MP_UIDSET_MAX_LEN - pos, 20);
	memcpy(buf + pos, "4294967295:429496729", 20);
	pos += 20;
	assert_int_equal(pos, MP_UIDSET_MAX_LEN);
	assert_true(nr + 1 <= MP_UIDSET_MAX_RANGES);
	assert_int_equal(parse_exact(buf, pos, &set, &err), MP_OK);
	/* The last element, 429496729:4294967295, covers all the others. */
	assert_int_equal(set.n, 1);
	assert_int_equal(set.r[0].lo, 429496729u);
	assert_int_equal(set.r[0].hi, 4294967295u);
	mp_uidset_free(&set);

	/* One byte more is too long (and would be valid but for that). */
	buf[pos] = '5';
	assert_int_equal(parse_exact(buf, MP_UIDSET_MAX_LEN + 1, &set, &err), MP_ETOOBIG);
	assert_null(set.r);
	assert_non_null(strstr(err, "too long"));
	free(buf);
}

struct resolve_case {
	const char *in;
	uint32_t max;
	const char *want;
};

static const struct resolve_case resolve_cases[] = {
	{ "*", 10, "10" },
	{ "*", 1, "1" },
	{ "*", 0, "" },           /* empty mailbox: '*' matches nothing */
	{ "*:*", 0, "" },
	{ "1:*", 10, "1:10" },
	{ "5:*", 3, "3:5" },      /* RFC 9051 §9: n:* with n > max is max:n */
	{ "*:5", 3, "3:5" },
	{ "5:*", 0, "1:5" },
	{ "5:*", 5, "5" },
	{ "3:*,7:*", 5, "3:7" },
	{ "3:*,7:*", 10, "3:10" },
	{ "3:*,7:*", 2, "2:7" },
	{ "3:*,*,12:*", 7, "3:12" },
	{ "*,12:*", 7, "7:12" },
	{ "1:10,5:*", 3, "1:10" },
	{ "1:10,50:*", 20, "1:10,20:50" },
	{ "1:2,*", 10, "1:2,10" },
	{ "1:2,*", 3, "1:3" },
	{ "1:2,*", 2, "1:2" },
	{ "1:2,*", 0, "1:2" },
	{ "1,5,*", 4294967295u, "1,5,4294967295" },
	{ "1:5", 2, "1:5" },      /* no '*': nothing to resolve */
	{ "4294967295", 3, "4294967295" },
};

static void test_resolve(void **state)
{
	for (size_t i = 0; i < sizeof(resolve_cases) / sizeof(resolve_cases[0]); i++) {
		const struct resolve_case *c = &resolve_cases[i];
		char out[256];
		resolve_render(c->in, strlen(c->in), c->max, out, sizeof(out));
		if (strcmp(out, c->want) != 0)
			fail_msg("\"%s\" max %" PRIu32 ": got \"%s\", want \"%s\"",
				 c->in, c->max, out, c->want);
	}
	/* Resolving an already resolved set changes nothing. */
	struct mp_uidset set;
	const char *err;
	assert_int_equal(parse_exact("2:*", 3, &set, &err), MP_OK);
	mp_uidset_resolve(&set, 7);
	mp_uidset_resolve(&set, 100);
	assert_int_equal(set.n, 1);
	assert_int_equal(set.r[0].lo, 2);
	assert_int_equal(set.r[0].hi, 7);
	mp_uidset_free(&set);
}

static void test_contains_count(void **state)
{
	struct mp_uidset set;
	const char *err;

	assert_int_equal(parse_exact("1:5,7,9:11", 10, &set, &err), MP_OK);
	static const uint32_t in[] = { 1, 2, 5, 7, 9, 10, 11 };
	static const uint32_t out[] = { 0, 6, 8, 12, 100, 4294967295u };
	for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); i++)
		assert_true(mp_uidset_contains(&set, in[i]));
	for (size_t i = 0; i < sizeof(out) / sizeof(out[0]); i++)
		assert_false(mp_uidset_contains(&set, out[i]));
	assert_int_equal(mp_uidset_count(&set), 9);
	mp_uidset_free(&set);

	/* Unresolved, overlapping '*' ranges: the union is counted once. */
	assert_int_equal(parse_exact("1:10,5:*", 8, &set, &err), MP_OK);
	assert_true(mp_uidset_contains(&set, 7));
	assert_true(mp_uidset_contains(&set, 4294967295u));
	assert_true(mp_uidset_count(&set) == 4294967295ull);
	mp_uidset_free(&set);

	/* An empty (failed or freed) set contains nothing. */
	assert_int_equal(parse_exact("", 0, &set, &err), MP_EINVAL);
	assert_false(mp_uidset_contains(&set, 1));
	assert_int_equal(mp_uidset_count(&set), 0);
}

/* A tiny deterministic PRNG: same cases on every run. */
static uint32_t rng_state = 12345;
static uint32_t rng(uint32_t n)
{
	rng_state = rng_state * 1103515245u + 12345u;
	return (rng_state >> 8) % n;
}

/* Random sets over small numbers, checked against a bitmap of what RFC 9051
 * says each element matches once '*' is the mailbox's highest UID. */
static void test_model(void **state)
{
	enum { MAXV = 40, ROUNDS = 3000 };
	for (int round = 0; round < ROUNDS; round++) {
		char s[256];
		size_t pos = 0;
		uint32_t max = rng(MAXV + 1);
		unsigned char want[MAXV * 2 + 2] = { 0 };
		int nelem = 1 + (int)rng(6);
		for (int e = 0; e < nelem; e++) {
			/* '*' one time in four, so sets with several '*' are common. */
			int star_a = rng(4) == 0, star_b = rng(4) == 0;
			uint32_t a = 1 + rng(MAXV), b = 1 + rng(MAXV);
			int range = rng(2);
			uint32_t va = star_a ? max : a, vb = range ? (star_b ? max : b) : va;
			char ta[16], tb[16];
			snprintf(ta, sizeof(ta), star_a ? "*" : "%" PRIu32, a);
			snprintf(tb, sizeof(tb), star_b ? "*" : "%" PRIu32, b);
			pos += (size_t)snprintf(s + pos, sizeof(s) - pos, "%s%s%s%s",
						e ? "," : "", ta, range ? ":" : "", range ? tb : "");
			uint32_t lo = va < vb ? va : vb, hi = va < vb ? vb : va;
			for (uint32_t u = lo; u <= hi; u++)
				if (u != 0)
					want[u] = 1;
		}
		struct mp_uidset set;
		const char *err = NULL;
		int ret = parse_exact(s, pos, &set, &err);
		if (ret != MP_OK)
			fail_msg("\"%s\": %s", s, err);
		check_invariants(&set);
		mp_uidset_resolve(&set, max);
		check_invariants(&set);
		uint64_t count = 0;
		for (uint32_t u = 0; u < sizeof(want); u++) {
			count += want[u];
			if (mp_uidset_contains(&set, u) != want[u])
				fail_msg("\"%s\" max %" PRIu32 ": uid %" PRIu32 " wrong", s, max, u);
		}
		assert_true(mp_uidset_count(&set) == count);
		mp_uidset_free(&set);
	}
}

struct format_case {
	uint32_t uids[12];
	size_t n;
	const char *want;
};

static const struct format_case format_cases[] = {
	{ { 0 }, 0, "" },
	{ { 1 }, 1, "1" },
	{ { 1, 2, 3 }, 3, "1:3" },
	{ { 1, 2, 3, 5 }, 4, "1:3,5" },
	{ { 1, 3, 5 }, 3, "1,3,5" },
	{ { 1, 1, 2, 2, 4 }, 5, "1:2,4" },
	{ { 7, 8, 10, 11, 12, 20 }, 6, "7:8,10:12,20" },
	{ { 4294967294u, 4294967295u }, 2, "4294967294:4294967295" },
	{ { 4294967295u, 4294967295u }, 2, "4294967295" },
};

static void test_format(void **state)
{
	for (size_t i = 0; i < sizeof(format_cases) / sizeof(format_cases[0]); i++) {
		const struct format_case *c = &format_cases[i];
		char *out = NULL;
		assert_int_equal(mp_uidset_format(c->uids, c->n, &out), MP_OK);
		assert_non_null(out);
		assert_string_equal(out, c->want);
		if (c->n > 0) {
			/* Round trip: the formatted set parses to itself. */
			struct mp_uidset set;
			const char *err;
			char back[256];
			assert_int_equal(parse_exact(out, strlen(out), &set, &err), MP_OK);
			render(&set, back, sizeof(back));
			assert_string_equal(back, c->want);
			mp_uidset_free(&set);
		}
		free(out);
	}

	/* Unsorted input and UID 0 are refused. */
	char *out = (char *)1;
	static const uint32_t unsorted[] = { 3, 2 };
	static const uint32_t zero[] = { 0, 1 };
	assert_int_equal(mp_uidset_format(unsorted, 2, &out), MP_EINVAL);
	assert_null(out);
	assert_int_equal(mp_uidset_format(zero, 2, &out), MP_EINVAL);
	assert_null(out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_table),
		cmocka_unit_test(test_invalid_table),
		cmocka_unit_test(test_respects_len),
		cmocka_unit_test(test_every_prefix),
		cmocka_unit_test(test_split_at_commas),
		cmocka_unit_test(test_boundaries),
		cmocka_unit_test(test_limits),
		cmocka_unit_test(test_resolve),
		cmocka_unit_test(test_contains_count),
		cmocka_unit_test(test_model),
		cmocka_unit_test(test_format),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
