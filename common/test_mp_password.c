/*
 * Tests of mp_password: yescrypt hash and verify, wrong passwords, passwords
 * holding NUL or over the limit, imported hashes of every accepted scheme
 * (made here with libxcrypt's crypt_r, the way Dovecot's doveadm pw makes
 * them), the scheme/method agreement, plain-text schemes and garbage.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <crypt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mp_error.h"
#include "mp_password.h"

/* crypt(3) of password with a fresh setting for prefix (count 0 = default;
 * small counts keep bcrypt fast), optionally with a {SCHEME} in front. */
static char *make_hash(const char *scheme, const char *prefix, unsigned long count,
		       const char *password)
{
	char setting[CRYPT_GENSALT_OUTPUT_SIZE];
	struct crypt_data cd;
	memset(&cd, 0, sizeof(cd));
	assert_non_null(crypt_gensalt_rn(prefix, count, NULL, 0, setting, sizeof(setting)));
	const char *h = crypt_r(password, setting, &cd);
	assert_non_null(h);
	assert_true(h[0] != '*');
	char *out = NULL;
	assert_true(asprintf(&out, "%s%s", scheme != NULL ? scheme : "", h) > 0);
	return out;
}

static void test_hash_verify(void **state)
{
	char *h1 = NULL, *h2 = NULL;
	assert_int_equal(mp_password_hash("correct horse", 13, &h1), MP_OK);
	assert_non_null(h1);
	assert_int_equal(strncmp(h1, "$y$", 3), 0);
	assert_int_equal(mp_password_verify("correct horse", 13, h1), MP_OK);
	assert_int_equal(mp_password_verify("correct horsf", 13, h1), MP_EPERM);
	assert_int_equal(mp_password_verify("correct hors", 12, h1), MP_EPERM);
	assert_int_equal(mp_password_verify("correct horse ", 14, h1), MP_EPERM);
	assert_int_equal(mp_password_verify("", 0, h1), MP_EPERM);
	/* len counts, not the NUL: a longer buffer checks only len bytes. */
	assert_int_equal(mp_password_verify("correct horse battery", 13, h1), MP_OK);

	/* A fresh salt every time. */
	assert_int_equal(mp_password_hash("correct horse", 13, &h2), MP_OK);
	assert_string_not_equal(h1, h2);
	assert_int_equal(mp_password_verify("correct horse", 13, h2), MP_OK);

	/* Our own hashes pass the import check, and stay as they are. */
	char *norm = NULL;
	const char *err = NULL;
	assert_int_equal(mp_password_check_hash(h1, &norm, &err), MP_OK);
	assert_string_equal(norm, h1);
	free(norm);
	/* ... also under {YESCRYPT} and {CRYPT}. */
	char *y = NULL;
	assert_true(asprintf(&y, "{yescrypt}%s", h1) > 0);
	assert_int_equal(mp_password_check_hash(y, &norm, &err), MP_OK);
	assert_int_equal(strncmp(norm, "{YESCRYPT}$y$", 13), 0);
	assert_string_equal(norm + 10, h1);
	assert_int_equal(mp_password_verify("correct horse", 13, y), MP_OK);
	assert_int_equal(mp_password_verify("wrong", 5, y), MP_EPERM);
	free(norm);
	free(y);
	free(h1);
	free(h2);

	/* Empty passwords hash too (policy is not this module's job). */
	assert_int_equal(mp_password_hash("", 0, &h1), MP_OK);
	assert_int_equal(mp_password_verify("", 0, h1), MP_OK);
	assert_int_equal(mp_password_verify("x", 1, h1), MP_EPERM);
	free(h1);
}

static void test_nul_and_limits(void **state)
{
	char *h = (char *)1;
	/* A NUL inside the password would cut it for crypt: refused. */
	assert_int_equal(mp_password_hash("abc\0def", 7, &h), MP_EINVAL);
	assert_null(h);
	assert_int_equal(mp_password_hash("abc", 3, &h), MP_OK);
	assert_int_equal(mp_password_verify("abc\0def", 7, h), MP_EPERM);
	assert_int_equal(mp_password_verify("abc\0", 4, h), MP_EPERM);
	assert_int_equal(mp_password_verify("abc", 3, h), MP_OK);
	free(h);

	/* libxcrypt takes at most 511 bytes (CRYPT_MAX_PASSPHRASE_SIZE - 1),
	 * which is below MP_PASSWORD_MAX: that is the real limit. */
	const size_t limit = CRYPT_MAX_PASSPHRASE_SIZE - 1;
	assert_true(limit <= MP_PASSWORD_MAX);
	char *big = malloc(MP_PASSWORD_MAX + 2);
	assert_non_null(big);
	memset(big, 'p', MP_PASSWORD_MAX + 2);
	assert_int_equal(mp_password_hash(big, MP_PASSWORD_MAX + 1, &h), MP_ETOOBIG);
	assert_null(h);
	assert_int_equal(mp_password_hash(big, limit + 1, &h), MP_ETOOBIG);
	assert_null(h);
	assert_int_equal(mp_password_hash(big, limit, &h), MP_OK);
	assert_int_equal(mp_password_verify(big, limit, h), MP_OK);
	assert_int_equal(mp_password_verify(big, limit + 1, h), MP_EPERM);
	assert_int_equal(mp_password_verify(big, MP_PASSWORD_MAX + 1, h), MP_EPERM);
	big[limit - 1] = 'q';
	assert_int_equal(mp_password_verify(big, limit, h), MP_EPERM);
	free(h);
	free(big);
}

struct scheme_case {
	const char *scheme;   /* as stored, e.g. "{sha512-crypt}" */
	const char *norm;     /* scheme as normalised */
	const char *prefix;   /* crypt_gensalt prefix */
	unsigned long count;
};

static const struct scheme_case scheme_cases[] = {
	{ "{SHA512-CRYPT}", "{SHA512-CRYPT}", "$6$", 1000 },
	{ "{sha512-crypt}", "{SHA512-CRYPT}", "$6$", 1000 },
	{ "{SHA256-CRYPT}", "{SHA256-CRYPT}", "$5$", 1000 },
	{ "{BLF-CRYPT}", "{BLF-CRYPT}", "$2y$", 4 },
	{ "{BLF-CRYPT}", "{BLF-CRYPT}", "$2b$", 4 },
	{ "{Blf-Crypt}", "{BLF-CRYPT}", "$2a$", 4 },
	{ "{MD5-CRYPT}", "{MD5-CRYPT}", "$1$", 0 },
	{ "{YESCRYPT}", "{YESCRYPT}", "$y$", 0 },
	{ "{CRYPT}", "{CRYPT}", "$6$", 1000 },
	{ "{CRYPT}", "{CRYPT}", "$y$", 0 },
	{ "{CRYPT}", "{CRYPT}", "$2y$", 4 },
	{ "{CRYPT}", "{CRYPT}", "", 0 },      /* traditional DES: only under {CRYPT} */
	{ "", "", "$6$", 1000 },
	{ "", "", "$5$", 1000 },
	{ "", "", "$1$", 0 },
	{ "", "", "$2y$", 4 },
	{ "", "", "$y$", 0 },
};

static void test_imported_schemes(void **state)
{
	for (size_t i = 0; i < sizeof(scheme_cases) / sizeof(scheme_cases[0]); i++) {
		const struct scheme_case *c = &scheme_cases[i];
		/* DES reads only 8 characters: keep the password short. */
		const char *pw = c->prefix[0] == '\0' ? "s3cret" : "s3cret pass phrase";
		char *h = make_hash(c->scheme, c->prefix, c->count, pw);
		char *norm = NULL;
		const char *err = NULL;
		int ret = mp_password_check_hash(h, &norm, &err);
		if (ret != MP_OK)
			fail_msg("%s: %s", h, err);
		assert_int_equal(strncmp(norm, c->norm, strlen(c->norm)), 0);
		assert_string_equal(norm + strlen(c->norm), h + strlen(c->scheme));
		assert_int_equal(mp_password_verify(pw, strlen(pw), h), MP_OK);
		assert_int_equal(mp_password_verify(pw, strlen(pw), norm), MP_OK);
		assert_int_equal(mp_password_verify("s3creT", 6, h), MP_EPERM);
		assert_int_equal(mp_password_verify("", 0, h), MP_EPERM);
		/* norm_r may be NULL. */
		assert_int_equal(mp_password_check_hash(h, NULL, &err), MP_OK);
		free(norm);
		free(h);
	}
}

struct bad_case {
	const char *hash;
	const char *err_part;
};

static void check_bad(const char *hash, const char *err_part)
{
	char *norm = (char *)1;
	const char *err = NULL;
	int ret = mp_password_check_hash(hash, &norm, &err);
	if (ret != MP_EINVAL)
		fail_msg("\"%s\": accepted (%d)", hash != NULL ? hash : "(null)", ret);
	assert_null(norm);
	assert_non_null(err);
	if (strstr(err, err_part) == NULL)
		fail_msg("\"%s\": \"%s\" lacks \"%s\"", hash, err, err_part);
	assert_int_equal(mp_password_verify("password", 8, hash), MP_EINVAL);
}

static void test_refused(void **state)
{
	static const struct bad_case cases[] = {
		{ "{PLAIN}password", "plain-text" },
		{ "{plain}password", "plain-text" },
		{ "{CLEAR}password", "plain-text" },
		{ "{CLEARTEXT}password", "plain-text" },
		{ "{PLAIN-TRUNC}8-password", "plain-text" },
		{ "{SSHA}abcdef", "unknown password scheme" },
		{ "{SHA512-CRYPT-X}$6$a$b", "unknown password scheme" },
		{ "{}$6$abc$def", "unknown password scheme" },
		{ "{SHA512-CRYPT$6$abc", "unterminated" },
		{ "", "empty hash" },
		{ "{CRYPT}", "empty hash" },
		{ "password", "not a $id$ crypt string" },
		{ "abJnggxhB/yWI", "not a $id$ crypt string" }, /* DES needs {CRYPT} */
		{ "$6$abc$def ghi", "space or a non-printable" },
		{ "$6$abc$def\n", "space or a non-printable" },
		{ "$6$abc$d\xc3\xa9" "f", "space or a non-printable" },
		{ "{SHA512-CRYPT}$1$abc$def", "does not match its {SCHEME}" },
		{ "{BLF-CRYPT}$6$abc$def", "does not match its {SCHEME}" },
		{ "{MD5-CRYPT}$y$j9T$abc$def", "does not match its {SCHEME}" },
		{ "{YESCRYPT}$6$abc$def", "does not match its {SCHEME}" },
		{ "$99$abc$def", "not supported" },
		{ "*0", "not a $id$ crypt string" },
		{ "{CRYPT}*0", "not supported" },
		{ "{CRYPT}!locked", "not supported" },
		/* A setting without its hash, or a cut hash: can never match. */
		{ "$6$saltsalt", "malformed or incomplete" },
		{ "$6$saltsalt$", "malformed or incomplete" },
		{ "$y$j9T$F5Jx5fExrKuPp53xLKQ..1", "malformed or incomplete" },
		{ "{CRYPT}garbage", "malformed or incomplete" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		check_bad(cases[i].hash, cases[i].err_part);

	/* A real hash cut short, or with a byte added, is refused. */
	char *h = make_hash(NULL, "$6$", 1000, "pw");
	size_t len = strlen(h);
	h[len - 1] = '\0';
	check_bad(h, "malformed or incomplete");
	char *longer = NULL;
	h[len - 1] = 'x';
	assert_true(asprintf(&longer, "%sA", h) > 0);
	check_bad(longer, "malformed or incomplete");
	free(longer);
	free(h);

	/* Over the length limits. */
	char big[MP_HASH_MAX + 64];
	memcpy(big, "$6$", 3);
	memset(big + 3, 'a', sizeof(big) - 4);
	big[sizeof(big) - 1] = '\0';
	check_bad(big, "too long");
	char *norm = (char *)1;
	const char *err = NULL;
	assert_int_equal(mp_password_check_hash(NULL, &norm, &err), MP_EINVAL);
	assert_int_equal(mp_password_verify("pw", 2, NULL), MP_EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hash_verify),
		cmocka_unit_test(test_nul_and_limits),
		cmocka_unit_test(test_imported_schemes),
		cmocka_unit_test(test_refused),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
