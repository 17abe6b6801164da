/*
 * mp_shard: which shard a user lives on, and the checks of names every
 * layer agrees on (users, domains). Stable forever: changing the hash moves
 * every user, so it is FNV-1a 64 of the lowercased address, mod the shard
 * count fixed when the cluster was created.
 */
#ifndef MP_SHARD_H
#define MP_SHARD_H

#include <stddef.h>
#include <stdint.h>

#define MP_USER_MAX 254
#define MP_DOMAIN_MAX 253

uint32_t mp_shard_of(const char *user, size_t len, uint32_t nshards);

/* Lowercase and check an address "local@domain" into out (size outlen,
 * at least MP_USER_MAX + 1). 0 or MP_EINVAL with a static *error_r. */
int mp_user_normalize(const char *in, size_t len, char *out, size_t outlen,
		      const char **error_r);
/* Same for a domain name (LDH labels, no trailing dot). */
int mp_domain_normalize(const char *in, size_t len, char *out, size_t outlen,
			const char **error_r);
/* The domain part of a normalised address (pointer into user). */
const char *mp_user_domain(const char *user);

#endif
