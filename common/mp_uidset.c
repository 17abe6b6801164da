/*
 * mp_uidset: parse, resolve, test and format IMAP sequence-sets of UIDs.
 *
 * RFC 9051 §9 (same as RFC 3501 §9):
 *   sequence-set = (seq-number / seq-range) ["," sequence-set]
 *   seq-range    = seq-number ":" seq-number
 *   seq-number   = nz-number / "*"
 *   nz-number    = digit-nz *DIGIT     ; so no 0 and no leading zero
 * The parser is pure (bytes in, ranges out; no I/O, no globals), reads no
 * byte past len, allocates only after the range count is known to be within
 * MP_UIDSET_MAX_RANGES, and checks each number for overflow digit by digit.
 * It never accepts whitespace, an empty element or a trailing comma.
 *
 * Normal form of a parsed set: each range has lo <= hi and the ranges are
 * sorted by lo. Ranges that do not reach '*' are merged (no overlap, no
 * adjacency). Ranges that reach '*' ("n:*") are kept apart from the others,
 * because their meaning depends on the mailbox: RFC 9051 §9 says "n:*" with n
 * above the highest UID means "*:n". Of several such ranges only the ones with
 * the lowest and highest n are kept: each resolves to the span between n and
 * the highest UID, so together they resolve to exactly what all of them
 * would (a bare "*" adds nothing to any "n:*"). After mp_uidset_resolve every range is merged and has_star
 * is 0.
 *
 * '*' is stored as UINT32_MAX, as the header says; a literal 4294967295 is
 * therefore read as '*' when the same set also holds a '*' (Dovecot does the
 * same). In a set without '*', 4294967295 is just a number and resolve leaves
 * it alone.
 */
#include "mp_uidset.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "mp_buf.h"
#include "mp_error.h"

enum mp_uidset_state {
	MP_UIDSET_ELEM,        /* expecting the first seq-number of an element */
	MP_UIDSET_FIRST_NUM,   /* inside the first number */
	MP_UIDSET_FIRST_STAR,  /* after a first '*' */
	MP_UIDSET_SECOND,      /* after ':', expecting a seq-number */
	MP_UIDSET_SECOND_NUM,  /* inside the second number */
	MP_UIDSET_SECOND_STAR, /* after a second '*' */
};

static int mp_uid_range_cmp(const void *a, const void *b)
{
	const struct mp_uid_range *x = a, *y = b;
	if (x->lo != y->lo)
		return x->lo < y->lo ? -1 : 1;
	if (x->hi != y->hi)
		return x->hi < y->hi ? -1 : 1;
	return 0;
}

/* Sort r[0..n) and merge overlapping or adjacent ranges; returns the new n. */
static size_t mp_uidset_merge(struct mp_uid_range *r, size_t n)
{
	if (n == 0)
		return 0;
	qsort(r, n, sizeof(*r), mp_uid_range_cmp);
	size_t out = 0;
	for (size_t i = 1; i < n; i++) {
		/* hi == UINT32_MAX covers everything after it; hi + 1 cannot
		 * overflow in the second test because of the first. */
		if (r[out].hi == UINT32_MAX || r[i].lo <= r[out].hi + 1) {
			if (r[i].hi > r[out].hi)
				r[out].hi = r[i].hi;
		} else {
			r[++out] = r[i];
		}
	}
	return out + 1;
}

/* Bring a freshly parsed set (lo <= hi already) to the normal form above. */
static void mp_uidset_normalise(struct mp_uidset *set)
{
	if (!set->has_star) {
		set->n = mp_uidset_merge(set->r, set->n);
		return;
	}
	/* Keep the concrete ranges and, of the star ranges, only the lowest
	 * and the highest start. A bare "*" ([*,*]) means {max_uid}, which
	 * every "n:*" already covers, so it counts for the lowest start only
	 * (where it stands when it is the only one). */
	size_t nconcrete = 0;
	uint32_t star_lo_min = MP_UIDSET_STAR, star_lo_max = 0;
	int have_max = 0;
	for (size_t i = 0; i < set->n; i++) {
		if (set->r[i].hi != MP_UIDSET_STAR) {
			set->r[nconcrete++] = set->r[i];
			continue;
		}
		uint32_t lo = set->r[i].lo;
		if (lo < star_lo_min)
			star_lo_min = lo;
		if (lo != MP_UIDSET_STAR && (!have_max || lo > star_lo_max)) {
			star_lo_max = lo;
			have_max = 1;
		}
	}
	size_t n = mp_uidset_merge(set->r, nconcrete);
	/* has_star guarantees at least one star range, and n <= nconcrete
	 * leaves room for two: the original array held them all. */
	set->r[n++] = (struct mp_uid_range){ star_lo_min, MP_UIDSET_STAR };
	if (have_max && star_lo_max != star_lo_min)
		set->r[n++] = (struct mp_uid_range){ star_lo_max, MP_UIDSET_STAR };
	qsort(set->r, n, sizeof(*set->r), mp_uid_range_cmp);
	set->n = n;
}

static void mp_uidset_add(struct mp_uidset *set, uint32_t a, uint32_t b)
{
	struct mp_uid_range *r = &set->r[set->n++];
	r->lo = a < b ? a : b;
	r->hi = a < b ? b : a;
}

/* Add digit c to *v; 0, or MP_EINVAL when the number passes 4294967295. */
static int mp_uidset_digit(uint32_t *v, char c)
{
	uint32_t d = (uint32_t)(c - '0');
	if (*v > (UINT32_MAX - d) / 10)
		return MP_EINVAL;
	*v = *v * 10 + d;
	return MP_OK;
}

/* Check the first digit of a number at s[i]; '0' is never valid there. */
static int mp_uidset_first_digit(const char *s, size_t len, size_t i, const char **msg_r)
{
	if (s[i] == '0') {
		*msg_r = i + 1 < len && s[i + 1] >= '0' && s[i + 1] <= '9'
			 ? "number with a leading zero" : "0 is not a valid UID";
		return MP_EINVAL;
	}
	return MP_OK;
}

static int mp_uidset_is_digit(char c)
{
	return c >= '0' && c <= '9';
}

int mp_uidset_parse(const char *s, size_t len, struct mp_uidset *set,
		    const char **error_r)
{
	const char *msg = NULL;
	int ret = MP_EINVAL;

	set->r = NULL;
	set->n = 0;
	set->has_star = 0;

	if (len == 0 || s == NULL) {
		msg = "empty sequence set";
		goto fail;
	}
	if (len > MP_UIDSET_MAX_LEN) {
		msg = "sequence set too long";
		ret = MP_ETOOBIG;
		goto fail;
	}
	/* Every element is followed by ',' or the end: count before allocating. */
	size_t nelem = 1;
	for (size_t i = 0; i < len; i++) {
		if (s[i] == ',')
			nelem++;
	}
	if (nelem > MP_UIDSET_MAX_RANGES) {
		msg = "too many ranges in sequence set";
		ret = MP_ETOOBIG;
		goto fail;
	}
	set->r = malloc(nelem * sizeof(*set->r));
	if (set->r == NULL) {
		msg = "out of memory";
		ret = MP_ENOMEM;
		goto fail;
	}

	enum mp_uidset_state state = MP_UIDSET_ELEM;
	uint32_t first = 0, second = 0;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		switch (state) {
		case MP_UIDSET_ELEM:
		case MP_UIDSET_SECOND: {
			int is_first = state == MP_UIDSET_ELEM;
			uint32_t *v = is_first ? &first : &second;
			if (mp_uidset_is_digit(c)) {
				if (mp_uidset_first_digit(s, len, i, &msg) != MP_OK)
					goto fail;
				*v = (uint32_t)(c - '0');
				state = is_first ? MP_UIDSET_FIRST_NUM : MP_UIDSET_SECOND_NUM;
			} else if (c == '*') {
				*v = MP_UIDSET_STAR;
				set->has_star = 1;
				state = is_first ? MP_UIDSET_FIRST_STAR : MP_UIDSET_SECOND_STAR;
			} else if (c == ',') {
				msg = is_first ? "empty element in sequence set"
					       : "missing number after ':'";
				goto fail;
			} else if (c == ':') {
				msg = is_first ? "missing number before ':'" : "\"::\" in sequence set";
				goto fail;
			} else {
				msg = "invalid character in sequence set";
				goto fail;
			}
			break;
		}
		case MP_UIDSET_FIRST_NUM:
		case MP_UIDSET_SECOND_NUM:
			if (mp_uidset_is_digit(c)) {
				uint32_t *v = state == MP_UIDSET_FIRST_NUM ? &first : &second;
				if (mp_uidset_digit(v, c) != MP_OK) {
					msg = "number too large for a UID";
					goto fail;
				}
				break;
			}
			/* A number ends the way a star does. */
			__attribute__((fallthrough));
		case MP_UIDSET_FIRST_STAR:
		case MP_UIDSET_SECOND_STAR: {
			int in_first = state == MP_UIDSET_FIRST_NUM || state == MP_UIDSET_FIRST_STAR;
			if (c == ',') {
				mp_uidset_add(set, first, in_first ? first : second);
				state = MP_UIDSET_ELEM;
			} else if (c == ':' && in_first) {
				state = MP_UIDSET_SECOND;
			} else if (c == ':') {
				msg = "range with more than two numbers";
				goto fail;
			} else if (c == '*' || mp_uidset_is_digit(c)) {
				msg = "'*' must stand alone";
				goto fail;
			} else {
				msg = "invalid character in sequence set";
				goto fail;
			}
			break;
		}
		}
	}
	switch (state) {
	case MP_UIDSET_ELEM:
		msg = "sequence set ends with ','";
		goto fail;
	case MP_UIDSET_SECOND:
		msg = "missing number after ':'";
		goto fail;
	case MP_UIDSET_FIRST_NUM:
	case MP_UIDSET_FIRST_STAR:
		mp_uidset_add(set, first, first);
		break;
	case MP_UIDSET_SECOND_NUM:
	case MP_UIDSET_SECOND_STAR:
		mp_uidset_add(set, first, second);
		break;
	}
	mp_uidset_normalise(set);
	return MP_OK;

fail:
	free(set->r);
	set->r = NULL;
	set->n = 0;
	set->has_star = 0;
	if (error_r != NULL)
		*error_r = msg;
	return ret;
}

void mp_uidset_resolve(struct mp_uidset *set, uint32_t max_uid)
{
	if (!set->has_star)
		return;
	size_t out = 0;
	for (size_t i = 0; i < set->n; i++) {
		uint32_t lo = set->r[i].lo, hi = set->r[i].hi;
		if (lo == MP_UIDSET_STAR)
			lo = max_uid;
		if (hi == MP_UIDSET_STAR)
			hi = max_uid;
		if (lo > hi) {
			/* RFC 9051 §9: "n:*" with n above every UID is "*:n". */
			uint32_t t = lo;
			lo = hi;
			hi = t;
		}
		/* An empty mailbox has no '*': "*" matches nothing, and "n:*"
		 * is "1:n" (0 is not a UID). */
		if (lo == 0)
			lo = 1;
		if (hi == 0)
			continue;
		set->r[out].lo = lo;
		set->r[out].hi = hi;
		out++;
	}
	set->n = mp_uidset_merge(set->r, out);
	set->has_star = 0;
}

int mp_uidset_contains(const struct mp_uidset *set, uint32_t uid)
{
	if (set->has_star) {
		/* Unresolved: '*' ranges may overlap the others. */
		for (size_t i = 0; i < set->n; i++) {
			if (uid >= set->r[i].lo && uid <= set->r[i].hi)
				return 1;
		}
		return 0;
	}
	/* Disjoint and sorted: binary search for the last range with lo <= uid. */
	size_t lo = 0, hi = set->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (set->r[mid].lo <= uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo > 0 && uid <= set->r[lo - 1].hi;
}

uint64_t mp_uidset_count(const struct mp_uidset *set)
{
	/* Ranges are sorted by lo but may overlap before resolve: count the
	 * union, not the sum. */
	uint64_t count = 0;
	uint64_t next = 0; /* first uid not yet counted */
	for (size_t i = 0; i < set->n; i++) {
		uint64_t lo = set->r[i].lo, hi = set->r[i].hi;
		if (lo < next)
			lo = next;
		if (hi >= lo) {
			count += hi - lo + 1;
			next = hi + 1;
		}
	}
	return count;
}

int mp_uidset_format(const uint32_t *uids, size_t n, char **out_r)
{
	struct mp_buf b;
	int ret = MP_OK;

	*out_r = NULL;
	for (size_t i = 0; i < n; i++) {
		if (uids[i] == 0 || (i > 0 && uids[i] < uids[i - 1]))
			return MP_EINVAL;
	}
	mp_buf_init(&b, 0);
	size_t i = 0;
	while (i < n && ret == MP_OK) {
		uint32_t lo = uids[i], hi = lo;
		/* Duplicates are tolerated; hi + 1 is checked before it wraps. */
		while (i + 1 < n && (uids[i + 1] == hi || (hi != UINT32_MAX && uids[i + 1] == hi + 1))) {
			hi = uids[++i];
		}
		i++;
		if (b.len > 0)
			ret = mp_buf_append_u8(&b, ',');
		if (ret == MP_OK)
			ret = lo == hi ? mp_buf_printf(&b, "%" PRIu32, lo)
				       : mp_buf_printf(&b, "%" PRIu32 ":%" PRIu32, lo, hi);
	}
	if (ret != MP_OK) {
		mp_buf_free(&b);
		return ret;
	}
	*out_r = mp_buf_steal(&b, NULL);
	return *out_r != NULL ? MP_OK : MP_ENOMEM;
}

void mp_uidset_free(struct mp_uidset *set)
{
	free(set->r);
	set->r = NULL;
	set->n = 0;
	set->has_star = 0;
}
