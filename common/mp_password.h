/*
 * mp_password: password hashes as accounts store them.
 *
 * New hashes are yescrypt ("$y$...") made with libxcrypt crypt_r and a salt
 * from crypt_gensalt_rn (which reads the kernel's random source). Stored
 * hashes may carry a Dovecot-style scheme prefix: {CRYPT}, {SHA512-CRYPT},
 * {SHA256-CRYPT}, {BLF-CRYPT}, {MD5-CRYPT}, {YESCRYPT}; all are crypt(3)
 * strings underneath and are verified by crypt_r. Plain-text schemes
 * ({PLAIN}, {CLEAR}) are refused on import. Comparison is constant time.
 * Never logs or keeps a password: buffers holding one are wiped.
 */
#ifndef MP_PASSWORD_H
#define MP_PASSWORD_H

#include <stddef.h>

#define MP_PASSWORD_MAX 511  /* libxcrypt refuses 512 bytes and more */
#define MP_HASH_MAX 512

/* Hash password (len bytes) into a malloc'd string. 0 or MP_E*. */
int mp_password_hash(const char *password, size_t len, char **hash_r);

/* Check an imported hash: known scheme prefix (or none) and a crypt(3)
 * prefix libxcrypt supports. Returns 0 or MP_EINVAL with *error_r. Writes the
 * normalised form (prefix kept as given, upper-cased) into *norm_r. */
int mp_password_check_hash(const char *hash, char **norm_r, const char **error_r);

/* 0 when password matches hash, MP_EPERM when not, MP_EINVAL for a hash that
 * cannot be used. */
int mp_password_verify(const char *password, size_t len, const char *hash);

#endif
