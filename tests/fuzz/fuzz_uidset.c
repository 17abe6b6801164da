/*
 * fuzz_uidset: arbitrary bytes into mp_uidset_parse, checked against a
 * naive reference parser of the RFC 9051 §9 grammar.
 *
 * For every input: the parser and the reference agree on accept/reject
 * (and on MP_ETOOBIG for the limits); a failure leaves an empty set; an
 * accepted set is in normal form; after mp_uidset_resolve with several
 * mailbox sizes, contains() agrees with the reference for probe UIDs around
 * every edge, count() with the ranges, and format() round-trips. Any
 * disagreement aborts, which libFuzzer reports as a crash.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "mp_error.h"
#include "mp_uidset.h"

/* ------------------------------------------------------------ reference */

struct ref_elem {
	uint32_t a, b;
	int star_a, star_b;
};

/* Straightforward reading of the grammar; returns MP_OK, MP_EINVAL or
 * MP_ETOOBIG like the real parser, with the elements in *elems_r. */
static int ref_parse(const char *s, size_t len, struct ref_elem **elems_r, size_t *n_r)
{
	*elems_r = NULL;
	*n_r = 0;
	if (len == 0)
		return MP_EINVAL;
	if (len > MP_UIDSET_MAX_LEN)
		return MP_ETOOBIG;
	size_t n = 1;
	for (size_t i = 0; i < len; i++)
		n += s[i] == ',';
	if (n > MP_UIDSET_MAX_RANGES)
		return MP_ETOOBIG;
	struct ref_elem *e = calloc(n, sizeof(*e));
	CHECK(e != NULL);

	size_t start = 0, k = 0;
	for (size_t i = 0; i <= len; i++) {
		if (i < len && s[i] != ',')
			continue;
		/* element s[start..i) */
		const char *el = s + start;
		size_t el_len = i - start;
		const char *colon = memchr(el, ':', el_len);
		size_t parts = colon == NULL ? 1 : 2;
		const char *p[2] = { el, colon != NULL ? colon + 1 : NULL };
		size_t pl[2] = { colon != NULL ? (size_t)(colon - el) : el_len,
				 colon != NULL ? el_len - (size_t)(colon - el) - 1 : 0 };
		for (size_t j = 0; j < parts; j++) {
			uint64_t v = 0;
			int star = 0;
			if (pl[j] == 1 && p[j][0] == '*') {
				star = 1;
			} else {
				if (pl[j] == 0 || pl[j] > 10 || p[j][0] < '1' || p[j][0] > '9')
					goto bad;
				for (size_t d = 0; d < pl[j]; d++) {
					if (p[j][d] < '0' || p[j][d] > '9')
						goto bad;
					v = v * 10 + (uint64_t)(p[j][d] - '0');
				}
				if (v > UINT32_MAX)
					goto bad;
			}
			if (j == 0) {
				e[k].a = (uint32_t)v;
				e[k].star_a = star;
			}
			e[k].b = (uint32_t)v;
			e[k].star_b = star;
		}
		k++;
		start = i + 1;
	}
	*elems_r = e;
	*n_r = k;
	return MP_OK;
bad:
	free(e);
	return MP_EINVAL;
}

/* Does the reference set match uid in a mailbox whose highest UID is max? */
static int ref_contains(const struct ref_elem *e, size_t n, int has_star, uint32_t max,
			uint32_t uid)
{
	if (uid == 0)
		return 0;
	for (size_t i = 0; i < n; i++) {
		/* Documented: with a '*' in the set, 4294967295 reads as '*'. */
		int sa = e[i].star_a || (has_star && e[i].a == UINT32_MAX);
		int sb = e[i].star_b || (has_star && e[i].b == UINT32_MAX);
		uint32_t a = sa ? max : e[i].a, b = sb ? max : e[i].b;
		uint32_t lo = a < b ? a : b, hi = a < b ? b : a;
		if (uid >= lo && uid <= hi)
			return 1;
	}
	return 0;
}

/* ------------------------------------------------------------ checks */

static void check_normal_form(const struct mp_uidset *set)
{
	size_t nstar = 0;
	int have_prev = 0;
	uint32_t prev_hi = 0;
	for (size_t i = 0; i < set->n; i++) {
		CHECK(set->r[i].lo >= 1);
		CHECK(set->r[i].lo <= set->r[i].hi);
		if (i > 0)
			CHECK(set->r[i - 1].lo <= set->r[i].lo);
		if (set->has_star && set->r[i].hi == MP_UIDSET_STAR) {
			nstar++;
			continue;
		}
		if (have_prev)
			CHECK(prev_hi < UINT32_MAX && prev_hi + 1 < set->r[i].lo);
		prev_hi = set->r[i].hi;
		have_prev = 1;
	}
	CHECK(set->has_star ? nstar >= 1 && nstar <= 2 : nstar == 0);
}

static void check_resolved(const struct mp_uidset *orig, const struct ref_elem *e, size_t n,
			   uint32_t max)
{
	struct mp_uidset set = { NULL, orig->n, orig->has_star };
	set.r = malloc((orig->n > 0 ? orig->n : 1) * sizeof(*set.r));
	CHECK(set.r != NULL);
	memcpy(set.r, orig->r, orig->n * sizeof(*set.r));
	mp_uidset_resolve(&set, max);
	CHECK(set.has_star == 0);
	check_normal_form(&set);

	/* Probe the edges of every range, of the reference and of max. */
	uint32_t probes[16];
	size_t np = 0;
	probes[np++] = 0;
	probes[np++] = 1;
	probes[np++] = 2;
	probes[np++] = max;
	probes[np++] = max - 1;
	probes[np++] = max + 1;
	probes[np++] = UINT32_MAX;
	probes[np++] = UINT32_MAX - 1;
	for (size_t i = 0; i < np; i++)
		CHECK(mp_uidset_contains(&set, probes[i]) ==
		      ref_contains(e, n, orig->has_star, max, probes[i]));
	size_t limit = n < 64 ? n : 64;
	for (size_t i = 0; i < limit; i++) {
		uint32_t edge[6] = { e[i].a, e[i].a - 1, e[i].a + 1, e[i].b, e[i].b - 1, e[i].b + 1 };
		for (size_t j = 0; j < 6; j++)
			CHECK(mp_uidset_contains(&set, edge[j]) ==
			      ref_contains(e, n, orig->has_star, max, edge[j]));
	}
	limit = set.n < 64 ? set.n : 64;
	for (size_t i = 0; i < limit; i++) {
		uint32_t edge[4] = { set.r[i].lo, set.r[i].lo - 1, set.r[i].hi, set.r[i].hi + 1 };
		for (size_t j = 0; j < 4; j++)
			CHECK(mp_uidset_contains(&set, edge[j]) ==
			      ref_contains(e, n, orig->has_star, max, edge[j]));
	}

	uint64_t sum = 0;
	for (size_t i = 0; i < set.n; i++)
		sum += (uint64_t)set.r[i].hi - set.r[i].lo + 1;
	CHECK(mp_uidset_count(&set) == sum);

	/* Small sets: enumerate, format, parse back, compare. */
	if (sum > 0 && sum <= 2000) {
		uint32_t *uids = malloc(sum * sizeof(*uids));
		CHECK(uids != NULL);
		size_t k = 0;
		for (size_t i = 0; i < set.n; i++)
			for (uint64_t u = set.r[i].lo; u <= set.r[i].hi; u++)
				uids[k++] = (uint32_t)u;
		char *text = NULL;
		CHECK(mp_uidset_format(uids, k, &text) == MP_OK);
		struct mp_uidset back;
		const char *err = NULL;
		CHECK(mp_uidset_parse(text, strlen(text), &back, &err) == MP_OK);
		CHECK(back.has_star == 0); /* format never writes '*' */
		CHECK(back.n == set.n);
		CHECK(memcmp(back.r, set.r, set.n * sizeof(*set.r)) == 0);
		mp_uidset_free(&back);
		free(text);
		free(uids);
	}
	mp_uidset_free(&set);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *s = (const char *)data;
	struct mp_uidset set;
	const char *err = NULL;
	int ret = mp_uidset_parse(s, size, &set, &err);

	struct ref_elem *e = NULL;
	size_t n = 0;
	int want = ref_parse(s, size, &e, &n);
	if (ret != want) {
		fprintf(stderr, "parser %d (%s), reference %d\n", ret, err ? err : "", want);
		abort();
	}
	if (ret != MP_OK) {
		CHECK(err != NULL);
		CHECK(set.r == NULL && set.n == 0 && set.has_star == 0);
		return 0;
	}
	CHECK(set.n >= 1);
	check_normal_form(&set);
	int has_star = 0;
	for (size_t i = 0; i < n; i++)
		has_star |= e[i].star_a | e[i].star_b;
	CHECK(set.has_star == has_star);

	/* Mailbox sizes: empty, tiny, from the input, around the edges. */
	uint32_t maxes[6] = { 0, 1, 7, (uint32_t)size * 3, UINT32_MAX, 0 };
	maxes[5] = n > 0 ? e[0].a : 0;
	for (size_t i = 0; i < 6; i++)
		check_resolved(&set, e, n, maxes[i]);

	mp_uidset_free(&set);
	free(e);
	return 0;
}
