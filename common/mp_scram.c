/*
 * mp_scram: SCRAM-SHA-256 stored credentials and libcrypto primitives
 * (see mp_scram.h). Never logs a password or key; wipes what held them.
 */
#include "mp_scram.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "mp_error.h"

#define SCRAM_PREFIX "SCRAM-SHA-256$"
#define SALT_LEN 16

int mp_sha256(const void *data, size_t len, uint8_t out[MP_SHA256_LEN])
{
	unsigned int n = 0;
	if (EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) != 1 ||
	    n != MP_SHA256_LEN)
		return MP_EIO;
	return 0;
}

int mp_hmac_sha256(const void *key, size_t key_len, const void *data,
		   size_t len, uint8_t out[MP_SHA256_LEN])
{
	unsigned int n = 0;
	if (key_len > INT32_MAX)
		return MP_EINVAL;
	if (HMAC(EVP_sha256(), key, (int)key_len, data, len, out, &n) == NULL ||
	    n != MP_SHA256_LEN)
		return MP_EIO;
	return 0;
}

int mp_pbkdf2_sha256(const void *pw, size_t pw_len, const uint8_t *salt,
		     size_t salt_len, uint32_t iter, uint8_t out[MP_SHA256_LEN])
{
	if (pw_len > INT32_MAX || salt_len > INT32_MAX || iter == 0 ||
	    iter > MP_SCRAM_ITER_MAX)
		return MP_EINVAL;
	if (PKCS5_PBKDF2_HMAC(pw, (int)pw_len, salt, (int)salt_len, (int)iter,
			      EVP_sha256(), MP_SHA256_LEN, out) != 1)
		return MP_EIO;
	return 0;
}

int mp_random_bytes(void *buf, size_t len)
{
	if (len > INT32_MAX)
		return MP_EINVAL;
	return RAND_bytes(buf, (int)len) == 1 ? 0 : MP_EIO;
}

int mp_const_eq(const void *a, const void *b, size_t len)
{
	return CRYPTO_memcmp(a, b, len) == 0;
}

void mp_wipe(void *p, size_t len)
{
	if (p != NULL)
		OPENSSL_cleanse(p, len);
}

static const char b64_chars[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t mp_base64_encode(const void *in, size_t len, char *out)
{
	const uint8_t *p = in;
	size_t o = 0;
	for (size_t i = 0; i < len; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16;
		if (i + 1 < len)
			v |= (uint32_t)p[i + 1] << 8;
		if (i + 2 < len)
			v |= p[i + 2];
		out[o++] = b64_chars[(v >> 18) & 63];
		out[o++] = b64_chars[(v >> 12) & 63];
		out[o++] = i + 1 < len ? b64_chars[(v >> 6) & 63] : '=';
		out[o++] = i + 2 < len ? b64_chars[v & 63] : '=';
	}
	out[o] = '\0';
	return o;
}

int mp_base64_digit(unsigned char c, char c62, char c63)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == (unsigned char)c62)
		return 62;
	if (c == (unsigned char)c63)
		return 63;
	return -1;
}

static int b64_val(char c)
{
	return mp_base64_digit((unsigned char)c, '+', '/');
}

int mp_base64_decode(const char *in, size_t len, uint8_t *out, size_t cap,
		     size_t *len_r)
{
	size_t o = 0;
	if (len % 4 != 0)
		return MP_EINVAL;
	for (size_t i = 0; i < len; i += 4) {
		int v[4];
		int pad = 0;
		for (int k = 0; k < 4; k++) {
			char c = in[i + (size_t)k];
			if (c == '=' && i + 4 == len && k >= 2) {
				v[k] = 0;
				pad++;
				continue;
			}
			if (pad > 0)
				return MP_EINVAL;  /* data after '=' */
			v[k] = b64_val(c);
			if (v[k] < 0)
				return MP_EINVAL;
		}
		uint32_t w = ((uint32_t)v[0] << 18) | ((uint32_t)v[1] << 12) |
			     ((uint32_t)v[2] << 6) | (uint32_t)v[3];
		size_t n = 3 - (size_t)pad;
		/* Non-canonical encodings (bits set in the padding) are bad input. */
		if ((pad == 1 && (w & 0xff) != 0) || (pad == 2 && (w & 0xffff) != 0))
			return MP_EINVAL;
		if (o + n > cap)
			return MP_ETOOBIG;
		out[o++] = (uint8_t)(w >> 16);
		if (n > 1)
			out[o++] = (uint8_t)(w >> 8);
		if (n > 2)
			out[o++] = (uint8_t)w;
	}
	*len_r = o;
	return 0;
}

static int scram_keys(const char *password, size_t len, const uint8_t *salt,
		      size_t salt_len, uint32_t iter, struct mp_scram_cred *c)
{
	uint8_t salted[MP_SHA256_LEN], client_key[MP_SHA256_LEN];
	int ret = mp_pbkdf2_sha256(password, len, salt, salt_len, iter, salted);
	if (ret == 0)
		ret = mp_hmac_sha256(salted, sizeof(salted), "Client Key", 10,
				     client_key);
	if (ret == 0)
		ret = mp_sha256(client_key, sizeof(client_key), c->stored_key);
	if (ret == 0)
		ret = mp_hmac_sha256(salted, sizeof(salted), "Server Key", 10,
				     c->server_key);
	mp_wipe(salted, sizeof(salted));
	mp_wipe(client_key, sizeof(client_key));
	return ret;
}

int mp_scram_make(const char *password, size_t len, uint32_t iter,
		  char **out_r)
{
	struct mp_scram_cred c;
	memset(&c, 0, sizeof(c));
	c.iter = iter == 0 ? MP_SCRAM_ITER_DEFAULT : iter;
	c.salt_len = SALT_LEN;
	int ret = mp_random_bytes(c.salt, c.salt_len);
	if (ret == 0)
		ret = scram_keys(password, len, c.salt, c.salt_len, c.iter, &c);
	if (ret != 0) {
		mp_wipe(&c, sizeof(c));  /* may hold one key already */
		return ret;
	}
	char salt64[4 * (SALT_LEN + 2) / 3 + 4];
	char sk64[4 * (MP_SHA256_LEN + 2) / 3 + 4];
	char vk64[4 * (MP_SHA256_LEN + 2) / 3 + 4];
	mp_base64_encode(c.salt, c.salt_len, salt64);
	mp_base64_encode(c.stored_key, MP_SHA256_LEN, sk64);
	mp_base64_encode(c.server_key, MP_SHA256_LEN, vk64);
	mp_wipe(&c, sizeof(c));
	char *out = NULL;
	if (asprintf(&out, SCRAM_PREFIX "%" PRIu32 ":%s$%s:%s",
		     iter == 0 ? (uint32_t)MP_SCRAM_ITER_DEFAULT : iter, salt64,
		     sk64, vk64) < 0)
		out = NULL;
	mp_wipe(sk64, sizeof(sk64));
	mp_wipe(vk64, sizeof(vk64));
	if (out == NULL)
		return MP_ENOMEM;
	*out_r = out;
	return 0;
}

/* Decode the b64 text [p, end) into exactly want bytes (want 0: any length
 * up to cap). */
static int b64_field(const char *p, const char *end, uint8_t *out, size_t cap,
		     size_t want, size_t *len_r)
{
	size_t n = 0;
	if (end < p || mp_base64_decode(p, (size_t)(end - p), out, cap, &n) != 0)
		return MP_EINVAL;
	if ((want != 0 && n != want) || n == 0)
		return MP_EINVAL;
	*len_r = n;
	return 0;
}

int mp_scram_parse(const char *stored, struct mp_scram_cred *cred_r,
		   const char **error_r)
{
	struct mp_scram_cred c;
	memset(&c, 0, sizeof(c));
	size_t plen = strlen(SCRAM_PREFIX);
	if (stored == NULL || strncmp(stored, SCRAM_PREFIX, plen) != 0) {
		*error_r = "not a SCRAM-SHA-256 record";
		return MP_EINVAL;
	}
	const char *p = stored + plen;
	char *colon = NULL;
	errno = 0;
	unsigned long iter = strtoul(p, &colon, 10);
	if (errno != 0 || colon == p || *colon != ':' || iter == 0 ||
	    iter > MP_SCRAM_ITER_MAX || p[0] < '1' || p[0] > '9') {
		*error_r = "bad SCRAM iteration count";
		return MP_EINVAL;
	}
	c.iter = (uint32_t)iter;
	const char *salt = colon + 1;
	const char *dollar = strchr(salt, '$');
	const char *sk = dollar != NULL ? dollar + 1 : NULL;
	const char *colon2 = sk != NULL ? strchr(sk, ':') : NULL;
	size_t n = 0;
	if (dollar == NULL || colon2 == NULL ||
	    b64_field(salt, dollar, c.salt, sizeof(c.salt), 0, &c.salt_len) != 0 ||
	    b64_field(sk, colon2, c.stored_key, MP_SHA256_LEN, MP_SHA256_LEN, &n) != 0 ||
	    b64_field(colon2 + 1, colon2 + 1 + strlen(colon2 + 1), c.server_key,
		      MP_SHA256_LEN, MP_SHA256_LEN, &n) != 0) {
		/* The StoredKey may already be decoded into c. */
		mp_wipe(&c, sizeof(c));
		*error_r = "bad SCRAM record";
		return MP_EINVAL;
	}
	*cred_r = c;
	mp_wipe(&c, sizeof(c));
	return 0;
}
