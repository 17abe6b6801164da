/*
 * mp_uidset: IMAP sequence-sets over UIDs (RFC 3501 §9 "sequence-set";
 * RFC 9051 §9), e.g. "1:5,7,9:*".
 *
 * Parsing is pure and bounded: at most MP_UIDSET_MAX_LEN bytes of input and
 * MP_UIDSET_MAX_RANGES ranges; numbers are nz-number (1..4294967295),
 * checked digit by digit for overflow. '*' is kept symbolic (stored as
 * UINT32_MAX) and resolved against the mailbox's highest UID with
 * mp_uidset_resolve. Ranges are normalised: lo <= hi, sorted, merged.
 */
#ifndef MP_UIDSET_H
#define MP_UIDSET_H

#include <stddef.h>
#include <stdint.h>

#define MP_UIDSET_MAX_LEN 65536
#define MP_UIDSET_MAX_RANGES 4096
#define MP_UIDSET_STAR UINT32_MAX

struct mp_uid_range {
	uint32_t lo, hi; /* inclusive */
};

struct mp_uidset {
	struct mp_uid_range *r; /* owned */
	size_t n;
	int has_star;
};

/* Parse s (len bytes; not NUL-terminated necessarily). 0, or MP_EINVAL with
 * a static message in *error_r, or MP_ETOOBIG over the limits. On failure
 * set is empty and needs no free. */
int mp_uidset_parse(const char *s, size_t len, struct mp_uidset *set,
		    const char **error_r);

/* Replace '*' by max_uid (RFC 3501: "*" is the largest number in use; if the
 * mailbox is empty, "*" is... treated as max_uid = 0 so "n:*" means "*:n" =>
 * ranges above every UID match nothing). Re-sorts and merges. */
void mp_uidset_resolve(struct mp_uidset *set, uint32_t max_uid);

int mp_uidset_contains(const struct mp_uidset *set, uint32_t uid);
/* Number of UIDs covered (saturates at UINT64_MAX, not needed in practice). */
uint64_t mp_uidset_count(const struct mp_uidset *set);
/* Build from a sorted list of uids; prints compact "1:3,5" form into a
 * malloc'd string (*out_r). */
int mp_uidset_format(const uint32_t *uids, size_t n, char **out_r);
void mp_uidset_free(struct mp_uidset *set);

#endif
