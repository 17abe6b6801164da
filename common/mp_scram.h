/*
 * mp_scram: SCRAM-SHA-256 credentials (RFC 5802, RFC 7677) and the few
 * libcrypto primitives SASL needs. This is the only place outside
 * frontend/tls that includes OpenSSL headers: merpatictl derives the stored
 * keys when a password is set, the frontend verifies proofs with them.
 *
 * Stored form (RFC 5803): "SCRAM-SHA-256$<iter>:<salt b64>$<StoredKey b64>:<ServerKey b64>".
 * The password itself is never stored and never logged; buffers that held
 * it or the salted password are wiped.
 */
#ifndef MP_SCRAM_H
#define MP_SCRAM_H

#include <stddef.h>
#include <stdint.h>

#define MP_SCRAM_ITER_DEFAULT 4096   /* RFC 7677 §4 minimum */
#define MP_SCRAM_ITER_MAX 1000000    /* refuse stored records beyond this */
#define MP_SCRAM_SALT_MAX 64
#define MP_SHA256_LEN 32

struct mp_scram_cred {
	uint32_t iter;
	uint8_t salt[MP_SCRAM_SALT_MAX];
	size_t salt_len;
	uint8_t stored_key[MP_SHA256_LEN];
	uint8_t server_key[MP_SHA256_LEN];
};

/* Derive a stored record for password (len bytes; should already be
 * SASLprep'd by the caller or plain ASCII) with a fresh 16-byte random salt.
 * iter 0 = MP_SCRAM_ITER_DEFAULT. *out_r malloc'd. 0 or MP_E*. */
int mp_scram_make(const char *password, size_t len, uint32_t iter,
		  char **out_r);
/* Parse a stored record. 0 or MP_EINVAL with a static *error_r. */
int mp_scram_parse(const char *stored, struct mp_scram_cred *cred_r,
		   const char **error_r);

/* Primitives (libcrypto). 0 or MP_EIO. */
int mp_sha256(const void *data, size_t len, uint8_t out[MP_SHA256_LEN]);
int mp_hmac_sha256(const void *key, size_t key_len, const void *data,
		   size_t len, uint8_t out[MP_SHA256_LEN]);
int mp_pbkdf2_sha256(const void *pw, size_t pw_len, const uint8_t *salt,
		     size_t salt_len, uint32_t iter, uint8_t out[MP_SHA256_LEN]);
int mp_random_bytes(void *buf, size_t len);
/* Constant-time comparison: 1 when equal. */
int mp_const_eq(const void *a, const void *b, size_t len);
/* Wipe memory the compiler may not optimise away. */
void mp_wipe(void *p, size_t len);

/* Base64 (RFC 4648, with padding). encode: writes NUL-terminated text into
 * out (needs 4*ceil(len/3)+1 bytes); returns its length. decode: strict
 * (no whitespace, padding required); returns 0 with *len_r, MP_EINVAL for
 * bad input, MP_ETOOBIG when out (cap bytes) is too small. */
size_t mp_base64_encode(const void *in, size_t len, char *out);
/* The value 0..63 of one base64 digit, with c62/c63 as the last two
 * digits ('+' '/' in RFC 4648, '+' ',' in IMAP's modified UTF-7), or -1. */
int mp_base64_digit(unsigned char c, char c62, char c63);
int mp_base64_decode(const char *in, size_t len, uint8_t *out, size_t cap,
		     size_t *len_r);

#endif
