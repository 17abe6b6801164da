/*
 * mp_password: make and check password hashes with libxcrypt.
 *
 * New hashes are yescrypt ("$y$", libxcrypt's default cost). Stored hashes
 * may carry a Dovecot scheme prefix ({SHA512-CRYPT}$6$...); the prefix must
 * agree with the crypt(3) method under it, and a hash without a prefix must
 * be in the modular "$id$..." form, so a plain-text password stored without a
 * scheme is never mistaken for a traditional DES hash. {CRYPT} accepts any
 * method libxcrypt supports, DES included.
 *
 * Never logs a password, never keeps one: the NUL-terminated copy crypt_r
 * needs and the crypt_data work area are wiped before they are freed. A
 * password holding a NUL byte is refused rather than cut at the NUL.
 * Matching compares the whole CRYPT_OUTPUT_SIZE area in constant time.
 * Hashing is slow by design (tens of milliseconds): call it from a worker
 * thread, never from an event loop.
 */
#include "mp_password.h"

#include <crypt.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mp_buf.h"
#include "mp_error.h"

#define MP_PASSWORD_NEW_PREFIX "$y$"

/* libxcrypt refuses passphrases of CRYPT_MAX_PASSPHRASE_SIZE (512) bytes or
 * more, so that, not MP_PASSWORD_MAX, is the real limit on what can be
 * hashed or matched. */
#if defined(CRYPT_MAX_PASSPHRASE_SIZE) && CRYPT_MAX_PASSPHRASE_SIZE - 1 < MP_PASSWORD_MAX
#define MP_PASSWORD_LIMIT (CRYPT_MAX_PASSPHRASE_SIZE - 1)
#else
#define MP_PASSWORD_LIMIT MP_PASSWORD_MAX
#endif

struct mp_password_scheme {
	const char *name;
	/* crypt(3) prefixes allowed under this scheme; none listed = any. */
	const char *prefixes[4];
};

static const struct mp_password_scheme mp_password_schemes[] = {
	{ "CRYPT", { NULL } },
	{ "SHA512-CRYPT", { "$6$", NULL } },
	{ "SHA256-CRYPT", { "$5$", NULL } },
	{ "BLF-CRYPT", { "$2y$", "$2b$", "$2a$", NULL } },
	{ "MD5-CRYPT", { "$1$", NULL } },
	{ "YESCRYPT", { "$y$", NULL } },
};

/* Schemes that store the password itself: refused on import. */
static const char *const mp_password_plain_schemes[] = {
	"PLAIN", "CLEAR", "CLEARTEXT", "PLAIN-TRUNC",
};

#define MP_NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* A stored hash split into its parts. */
struct mp_password_parsed {
	const struct mp_password_scheme *scheme; /* borrowed; NULL = no prefix */
	const char *crypt;                       /* borrowed; the crypt(3) string */
};

static int mp_password_parse(const char *hash, struct mp_password_parsed *p,
			     const char **error_r)
{
	const char *msg = NULL;

	p->scheme = NULL;
	p->crypt = hash;
	if (hash == NULL) {
		msg = "no hash";
		goto fail;
	}
	if (hash[0] == '{') {
		const char *end = memchr(hash, '}', strnlen(hash, 64));
		if (end == NULL) {
			msg = "unterminated {SCHEME} prefix";
			goto fail;
		}
		const char *name = hash + 1;
		size_t name_len = (size_t)(end - name);
		for (size_t i = 0; i < MP_NELEM(mp_password_plain_schemes); i++) {
			if (strlen(mp_password_plain_schemes[i]) == name_len &&
			    strncasecmp(name, mp_password_plain_schemes[i], name_len) == 0) {
				msg = "plain-text password schemes are refused";
				goto fail;
			}
		}
		for (size_t i = 0; i < MP_NELEM(mp_password_schemes); i++) {
			if (strlen(mp_password_schemes[i].name) == name_len &&
			    strncasecmp(name, mp_password_schemes[i].name, name_len) == 0) {
				p->scheme = &mp_password_schemes[i];
				break;
			}
		}
		if (p->scheme == NULL) {
			msg = "unknown password scheme";
			goto fail;
		}
		p->crypt = end + 1;
	}

	const char *c = p->crypt;
	size_t len = strnlen(c, CRYPT_OUTPUT_SIZE);
	if (len == 0) {
		msg = "empty hash";
		goto fail;
	}
	if (len >= CRYPT_OUTPUT_SIZE || (size_t)(c - hash) + len >= MP_HASH_MAX) {
		msg = "hash too long";
		goto fail;
	}
	for (size_t i = 0; i < len; i++) {
		if ((unsigned char)c[i] <= 0x20 || (unsigned char)c[i] >= 0x7f) {
			msg = "hash holds a space or a non-printable byte";
			goto fail;
		}
	}
	if (p->scheme != NULL && p->scheme->prefixes[0] != NULL) {
		int ok = 0;
		for (size_t i = 0; i < MP_NELEM(p->scheme->prefixes) && p->scheme->prefixes[i]; i++) {
			const char *pre = p->scheme->prefixes[i];
			if (strncmp(c, pre, strlen(pre)) == 0)
				ok = 1;
		}
		if (!ok) {
			msg = "hash does not match its {SCHEME} prefix";
			goto fail;
		}
	} else if (p->scheme == NULL && c[0] != '$') {
		msg = "hash without {SCHEME} is not a $id$ crypt string";
		goto fail;
	}
#ifdef CRYPT_CHECKSALT_AVAILABLE
	/* LEGACY methods (MD5, DES, SHA-256 on Debian) still verify; only what
	 * libxcrypt cannot or will not compute is refused. */
	int cs = crypt_checksalt(c);
	if (cs != CRYPT_SALT_OK && cs != CRYPT_SALT_METHOD_LEGACY) {
		msg = "hash method not supported by libxcrypt";
		goto fail;
	}
#endif
	return MP_OK;
fail:
	if (error_r != NULL)
		*error_r = msg;
	return MP_EINVAL;
}

/* A NUL-terminated copy of the password for crypt_r (out holds
 * MP_PASSWORD_MAX + 1 bytes); MP_EINVAL when it holds a NUL (crypt would
 * silently cut it there) or is over MP_PASSWORD_LIMIT. */
static int mp_password_copy(char *out, const char *password, size_t len)
{
	if (len > MP_PASSWORD_LIMIT || (len > 0 && password == NULL))
		return MP_EINVAL;
	if (len > 0 && memchr(password, '\0', len) != NULL)
		return MP_EINVAL;
	if (len > 0)
		memcpy(out, password, len);
	out[len] = '\0';
	return MP_OK;
}

/* crypt_r into a fresh work area; the output is copied into out (zero-filled
 * to CRYPT_OUTPUT_SIZE, so it can be compared whole) and the area wiped. */
static int mp_password_crypt(const char *pw, const char *setting,
			     char out[CRYPT_OUTPUT_SIZE])
{
	struct crypt_data *cd = calloc(1, sizeof(*cd));
	if (cd == NULL)
		return MP_ENOMEM;
	int ret = MP_OK;
	errno = 0;
	const char *h = crypt_r(pw, setting, cd);
	memset(out, 0, CRYPT_OUTPUT_SIZE);
	if (h == NULL || h[0] == '*') {
		/* libxcrypt's failure tokens start with '*' ("*0", "*1"). */
		ret = errno == ENOMEM ? MP_ENOMEM : MP_EINVAL;
	} else {
		size_t hl = strnlen(h, CRYPT_OUTPUT_SIZE - 1);
		memcpy(out, h, hl);
	}
	mp_memwipe(cd, sizeof(*cd));
	free(cd);
	return ret;
}

int mp_password_hash(const char *password, size_t len, char **hash_r)
{
	char pw[MP_PASSWORD_MAX + 1];
	char salt[CRYPT_GENSALT_OUTPUT_SIZE];
	char out[CRYPT_OUTPUT_SIZE];

	*hash_r = NULL;
	int ret = mp_password_copy(pw, password, len);
	if (ret != MP_OK)
		return len > MP_PASSWORD_LIMIT ? MP_ETOOBIG : ret;

	/* count 0: libxcrypt's default cost; NULL rbytes: it reads the
	 * kernel's random source itself. */
	if (crypt_gensalt_rn(MP_PASSWORD_NEW_PREFIX, 0, NULL, 0, salt, sizeof(salt)) == NULL) {
		ret = errno == ENOMEM ? MP_ENOMEM : MP_EIO;
		goto out;
	}
	ret = mp_password_crypt(pw, salt, out);
	if (ret != MP_OK) {
		if (ret == MP_EINVAL)
			ret = MP_EIO; /* our own salt was refused: not the caller's fault */
		goto out;
	}
	*hash_r = strdup(out);
	if (*hash_r == NULL)
		ret = MP_ENOMEM;
out:
	mp_memwipe(pw, sizeof(pw));
	mp_memwipe(out, sizeof(out));
	return ret;
}

int mp_password_check_hash(const char *hash, char **norm_r, const char **error_r)
{
	struct mp_password_parsed p;
	char out[CRYPT_OUTPUT_SIZE];

	if (norm_r != NULL)
		*norm_r = NULL;
	int ret = mp_password_parse(hash, &p, error_r);
	if (ret != MP_OK)
		return ret;

	/* A setting alone ("$6$salt") passes the checks above but can never
	 * match: hashing anything with it must give a string of the same
	 * length as the stored one. This costs one hash computation. */
	ret = mp_password_crypt("", p.crypt, out);
	if (ret == MP_ENOMEM) {
		if (error_r != NULL)
			*error_r = "out of memory";
		return ret;
	}
	if (ret != MP_OK || strlen(out) != strlen(p.crypt)) {
		if (error_r != NULL)
			*error_r = "malformed or incomplete hash";
		return MP_EINVAL;
	}

	if (norm_r != NULL) {
		char *norm = strdup(hash);
		if (norm == NULL) {
			if (error_r != NULL)
				*error_r = "out of memory";
			return MP_ENOMEM;
		}
		/* Upper-case the scheme name only; the crypt string is
		 * case-sensitive. */
		for (char *q = norm; p.scheme != NULL && *q != '}'; q++) {
			if (*q >= 'a' && *q <= 'z')
				*q = (char)(*q - 'a' + 'A');
		}
		*norm_r = norm;
	}
	return MP_OK;
}

int mp_password_verify(const char *password, size_t len, const char *hash)
{
	struct mp_password_parsed p;
	char pw[MP_PASSWORD_MAX + 1];
	char out[CRYPT_OUTPUT_SIZE];
	char want[CRYPT_OUTPUT_SIZE];

	int ret = mp_password_parse(hash, &p, NULL);
	if (ret != MP_OK)
		return MP_EINVAL;
	/* A password we could not have hashed cannot match. */
	if (mp_password_copy(pw, password, len) != MP_OK)
		return MP_EPERM;

	ret = mp_password_crypt(pw, p.crypt, out);
	mp_memwipe(pw, sizeof(pw));
	if (ret != MP_OK)
		goto out;

	memset(want, 0, sizeof(want));
	memcpy(want, p.crypt, strlen(p.crypt)); /* < CRYPT_OUTPUT_SIZE: parsed */
	/* The output's length depends on the method only, never on the
	 * password: a mismatch means the stored hash is malformed. */
	if (strlen(out) != strlen(want)) {
		ret = MP_EINVAL;
		goto out;
	}
	volatile unsigned char diff = 0;
	for (size_t i = 0; i < CRYPT_OUTPUT_SIZE; i++)
		diff |= (unsigned char)(out[i] ^ want[i]);
	ret = diff == 0 ? MP_OK : MP_EPERM;
out:
	mp_memwipe(out, sizeof(out));
	return ret;
}
