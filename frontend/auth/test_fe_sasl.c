/*
 * Tests of fe_sasl: mechanism lookup; PLAIN, LOGIN and SCRAM-SHA-256
 * success and failure paths; every class of malformed message; cancel with
 * "*"; the RFC 7677 §3 exchange byte for byte (with and without additional
 * data with success); a SCRAM client written here from the RFC 5802 §3
 * formulas; unknown SCRAM users (plausible, stable server-first, then the
 * same failure as a wrong password); every truncation and every one-byte
 * change of a valid client-final; limits; API misuse.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fe_sasl.h"
#include "mp_error.h"
#include "mp_password.h"
#include "mp_scram.h"

/* ------------------------------------------------------------ helpers */

static char *b64(const void *raw, size_t len)
{
	char *out = malloc(4 * ((len + 2) / 3) + 1);
	assert_non_null(out);
	mp_base64_encode(raw, len, out);
	return out;
}

/* Decode a challenge into a NUL-terminated malloc'd string. */
static char *unb64(const char *text)
{
	size_t len = strlen(text), n = 0;
	uint8_t *out = malloc(len + 1);
	assert_non_null(out);
	assert_int_equal(mp_base64_decode(text, len, out, len, &n), 0);
	out[n] = '\0';
	return (char *)out;
}

static struct fe_sasl *new_session(const char *mech, unsigned flags)
{
	struct fe_sasl *s = NULL;
	const char *err = NULL;
	assert_int_equal(fe_sasl_new(mech, strlen(mech), flags, &s, &err), 0);
	assert_non_null(s);
	return s;
}

/* Start with raw bytes as initial response (encoded here). */
static enum fe_sasl_status start_raw(struct fe_sasl *s, const void *raw, size_t len)
{
	enum fe_sasl_status st = FE_SASL_CHALLENGE;
	char *ir = len == 0 ? NULL : b64(raw, len);
	assert_int_equal(fe_sasl_start(s, ir != NULL ? ir : "=", ir != NULL ? strlen(ir) : 1,
				       &st), 0);
	free(ir);
	return st;
}

static enum fe_sasl_status start_none(struct fe_sasl *s)
{
	enum fe_sasl_status st = FE_SASL_FAILED;
	assert_int_equal(fe_sasl_start(s, NULL, 0, &st), 0);
	return st;
}

static enum fe_sasl_status step_line(struct fe_sasl *s, const char *line)
{
	enum fe_sasl_status st = FE_SASL_CHALLENGE;
	assert_int_equal(fe_sasl_step(s, line, strlen(line), &st), 0);
	return st;
}

static enum fe_sasl_status step_raw(struct fe_sasl *s, const void *raw, size_t len)
{
	char *line = b64(raw, len);
	enum fe_sasl_status st = step_line(s, line);
	free(line);
	return st;
}

static enum fe_sasl_status step_str(struct fe_sasl *s, const char *raw)
{
	return step_raw(s, raw, strlen(raw));
}

static void assert_challenge(struct fe_sasl *s, const char *raw)
{
	char *c = unb64(fe_sasl_challenge(s));
	assert_string_equal(c, raw);
	free(c);
}

/* ------------------------------------------------------------ mechanisms */

static void test_mech_lookup(void **state)
{
	enum fe_sasl_mech m;
	assert_int_equal(fe_sasl_mech_find("PLAIN", 5, &m), 0);
	assert_int_equal(m, FE_SASL_MECH_PLAIN);
	assert_int_equal(fe_sasl_mech_find("plain", 5, &m), 0);
	assert_int_equal(m, FE_SASL_MECH_PLAIN);
	assert_int_equal(fe_sasl_mech_find("LoGiN", 5, &m), 0);
	assert_int_equal(m, FE_SASL_MECH_LOGIN);
	assert_int_equal(fe_sasl_mech_find("scram-sha-256", 13, &m), 0);
	assert_int_equal(m, FE_SASL_MECH_SCRAM_SHA_256);
	/* Only len bytes count. */
	assert_int_equal(fe_sasl_mech_find("PLAINX", 5, &m), 0);

	const char *bad[] = { "", "PLAI", "PLAINX", "SCRAM-SHA-1", "SCRAM-SHA-256-PLUS",
			      "CRAM-MD5", "GSSAPI", "XOAUTH2", "PLAIN ", "P\xc3\xa1IN" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(fe_sasl_mech_find(bad[i], strlen(bad[i]), &m), MP_EUNIMPL);
	assert_int_equal(fe_sasl_mech_find(NULL, 0, &m), MP_EUNIMPL);

	struct fe_sasl *s = NULL;
	const char *err = NULL;
	assert_int_equal(fe_sasl_new("CRAM-MD5", 8, 0, &s, &err), MP_EUNIMPL);
	assert_null(s);
	assert_non_null(err);

	assert_string_equal(fe_sasl_mech_name(FE_SASL_MECH_PLAIN), "PLAIN");
	assert_string_equal(fe_sasl_mech_name(FE_SASL_MECH_LOGIN), "LOGIN");
	assert_string_equal(fe_sasl_mech_name(FE_SASL_MECH_SCRAM_SHA_256), "SCRAM-SHA-256");
	assert_null(fe_sasl_mech_name(FE_SASL_MECH_COUNT));
	assert_true(fe_sasl_mech_plaintext(FE_SASL_MECH_PLAIN));
	assert_true(fe_sasl_mech_plaintext(FE_SASL_MECH_LOGIN));
	assert_false(fe_sasl_mech_plaintext(FE_SASL_MECH_SCRAM_SHA_256));
	assert_string_equal(fe_sasl_status_name(FE_SASL_MALFORMED), "malformed");

	s = new_session("login", 0);
	assert_int_equal(fe_sasl_mech(s), FE_SASL_MECH_LOGIN);
	fe_sasl_free(&s);
	assert_null(s);
	fe_sasl_free(&s);
	fe_sasl_free(NULL);
}

/* ------------------------------------------------------------ PLAIN */

static void test_plain_ir_success(void **state)
{
	struct fe_sasl *s = new_session("PLAIN", 0);
	assert_int_equal(start_raw(s, "\0user\0pencil", 12), FE_SASL_NEED_PASSWORD);
	assert_string_equal(fe_sasl_user(s), "user");
	size_t len = 0;
	assert_string_equal(fe_sasl_password(s, &len), "pencil");
	assert_int_equal(len, 6);
	/* Nothing else is accepted while the caller checks. */
	enum fe_sasl_status st;
	assert_int_equal(fe_sasl_step(s, "", 0, &st), MP_ESTATE);
	assert_int_equal(fe_sasl_password_result(s, 0, &st), 0);
	assert_int_equal(st, FE_SASL_SUCCESS);
	assert_null(fe_sasl_password(s, &len));
	assert_int_equal(len, 0);
	assert_string_equal(fe_sasl_user(s), "user");
	assert_string_equal(fe_sasl_reason(s), "");
	assert_null(fe_sasl_success_data(s));
	assert_int_equal(fe_sasl_password_result(s, 0, &st), MP_ESTATE);
	assert_int_equal(fe_sasl_step(s, "", 0, &st), MP_ESTATE);
	fe_sasl_free(&s);

	/* authzid equal to authcid is no proxying. */
	s = new_session("plain", 0);
	assert_int_equal(start_raw(s, "bob@example.org\0bob@example.org\0s3cr3t pw", 41),
			 FE_SASL_NEED_PASSWORD);
	assert_string_equal(fe_sasl_user(s), "bob@example.org");
	assert_string_equal(fe_sasl_password(s, NULL), "s3cr3t pw");
	fe_sasl_free(&s);

	/* UTF-8 user names are fine. */
	s = new_session("PLAIN", 0);
	assert_int_equal(start_raw(s, "\0j\xc3\xb6rg\0pw", 9), FE_SASL_NEED_PASSWORD);
	assert_string_equal(fe_sasl_user(s), "j\xc3\xb6rg");
	fe_sasl_free(&s);
}

static void test_plain_no_ir(void **state)
{
	struct fe_sasl *s = new_session("PLAIN", 0);
	assert_null(fe_sasl_user(s));
	assert_int_equal(start_none(s), FE_SASL_CHALLENGE);
	assert_string_equal(fe_sasl_challenge(s), "");  /* "334 " / "+ " */
	assert_false(fe_sasl_awaiting_empty(s));
	assert_int_equal(step_raw(s, "\0user\0pencil", 12), FE_SASL_NEED_PASSWORD);
	enum fe_sasl_status st;
	assert_int_equal(fe_sasl_password_result(s, MP_EPERM, &st), 0);
	assert_int_equal(st, FE_SASL_FAILED);
	assert_string_equal(fe_sasl_reason(s), "wrong password");
	assert_null(fe_sasl_password(s, NULL));
	fe_sasl_free(&s);
}

static void test_password_results(void **state)
{
	struct {
		int ret;
		enum fe_sasl_status want;
	} t[] = {
		{ 0, FE_SASL_SUCCESS },
		{ MP_EPERM, FE_SASL_FAILED },
		{ MP_ENOENT, FE_SASL_FAILED },
		{ MP_EINVAL, FE_SASL_FAILED },
		{ MP_EUNAVAIL, FE_SASL_TEMPFAIL },
		{ MP_ETIMEDOUT, FE_SASL_TEMPFAIL },
		{ MP_EIO, FE_SASL_TEMPFAIL },
		{ MP_ENOMEM, FE_SASL_TEMPFAIL },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct fe_sasl *s = new_session("LOGIN", 0);
		assert_int_equal(start_raw(s, "user", 4), FE_SASL_CHALLENGE);
		assert_int_equal(step_str(s, "pw"), FE_SASL_NEED_PASSWORD);
		enum fe_sasl_status st;
		assert_int_equal(fe_sasl_password_result(s, t[i].ret, &st), 0);
		assert_int_equal(st, t[i].want);
		assert_int_equal(t[i].want == FE_SASL_SUCCESS, fe_sasl_reason(s)[0] == '\0');
		fe_sasl_free(&s);
	}
}

struct raw_case {
	const char *raw;
	size_t len;
	enum fe_sasl_status want;
};
#define RC(lit, st) { lit, sizeof(lit) - 1, st }

static void test_plain_table(void **state)
{
	static const struct raw_case t[] = {
		RC("\0user\0pw", FE_SASL_NEED_PASSWORD),
		RC("user\0user\0pw", FE_SASL_NEED_PASSWORD),
		RC("userpw", FE_SASL_MALFORMED),             /* no NUL */
		RC("user\0pw", FE_SASL_MALFORMED),           /* one NUL */
		RC("\0user\0pw\0", FE_SASL_MALFORMED),       /* three NULs */
		RC("\0\0user\0pw", FE_SASL_MALFORMED),
		RC("\0user\0p\0w", FE_SASL_MALFORMED),
		RC("\0\0pw", FE_SASL_MALFORMED),             /* empty authcid */
		RC("\0user\0", FE_SASL_MALFORMED),           /* empty password */
		RC("\0\0", FE_SASL_MALFORMED),
		RC("\0", FE_SASL_MALFORMED),
		RC("\0us\ter\0pw", FE_SASL_MALFORMED),       /* control in name */
		RC("\0us\x7f" "er\0pw", FE_SASL_MALFORMED),  /* DEL */
		RC("\0us\nr\0pw", FE_SASL_MALFORMED),
		RC("\0\xc3\0pw", FE_SASL_MALFORMED),         /* truncated UTF-8 */
		RC("\0\xc0\xaf\0pw", FE_SASL_MALFORMED),     /* overlong */
		RC("\0\xed\xa0\x80\0pw", FE_SASL_MALFORMED), /* surrogate */
		RC("\0\xf4\x90\x80\x80\0pw", FE_SASL_MALFORMED), /* > U+10FFFF */
		RC("\0\xc2\x85\0pw", FE_SASL_MALFORMED),     /* C1 control */
		RC("\0\xff\0pw", FE_SASL_MALFORMED),
		RC("\0\xf0\x9f\x90\xa6\0pw", FE_SASL_NEED_PASSWORD), /* U+1F426 */
		RC("admin\0user\0pw", FE_SASL_FAILED),       /* proxy authorisation */
		RC("use\0user\0pw", FE_SASL_FAILED),
		RC("User\0user\0pw", FE_SASL_FAILED),
		RC("\0user\0 ", FE_SASL_NEED_PASSWORD),      /* a blank is a password */
		RC("\0user\0\xff\xfe", FE_SASL_NEED_PASSWORD), /* bytes, not checked as UTF-8 */
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		for (int ir = 0; ir < 2; ir++) {
			struct fe_sasl *s = new_session("PLAIN", 0);
			enum fe_sasl_status st;
			if (ir) {
				st = start_raw(s, t[i].raw, t[i].len);
			} else {
				assert_int_equal(start_none(s), FE_SASL_CHALLENGE);
				st = step_raw(s, t[i].raw, t[i].len);
			}
			if (st != t[i].want)
				fail_msg("case %zu (ir %d): got %s want %s", i, ir,
					 fe_sasl_status_name(st), fe_sasl_status_name(t[i].want));
			if (st != FE_SASL_NEED_PASSWORD) {
				assert_true(fe_sasl_reason(s)[0] != '\0');
				assert_null(fe_sasl_password(s, NULL));
			}
			fe_sasl_free(&s);
		}
	}
}

/* Reasons are static text: a password never shows up in one. */
static void test_reason_has_no_secret(void **state)
{
	static const struct raw_case t[] = {
		RC("other\0user\0hunter2", FE_SASL_FAILED),
		RC("\0user\0hunter2\0", FE_SASL_MALFORMED),
		RC("\0us\x01r\0hunter2", FE_SASL_MALFORMED),
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct fe_sasl *s = new_session("PLAIN", 0);
		assert_int_equal(start_raw(s, t[i].raw, t[i].len), t[i].want);
		assert_null(strstr(fe_sasl_reason(s), "hunter2"));
		fe_sasl_free(&s);
	}
}

static void test_plain_limits(void **state)
{
	size_t cap = FE_SASL_RESPONSE_MAX + 16;
	char *raw = malloc(cap);
	assert_non_null(raw);

	/* User name: 255 bytes pass, 256 fail without asking storage. */
	for (size_t ulen = FE_SASL_USER_MAX; ulen <= FE_SASL_USER_MAX + 1; ulen++) {
		raw[0] = '\0';
		memset(raw + 1, 'u', ulen);
		raw[1 + ulen] = '\0';
		memcpy(raw + 2 + ulen, "pw", 2);
		struct fe_sasl *s = new_session("PLAIN", 0);
		enum fe_sasl_status st = start_raw(s, raw, ulen + 4);
		assert_int_equal(st, ulen <= FE_SASL_USER_MAX ? FE_SASL_NEED_PASSWORD
							     : FE_SASL_FAILED);
		if (st == FE_SASL_NEED_PASSWORD)
			assert_int_equal(strlen(fe_sasl_user(s)), ulen);
		fe_sasl_free(&s);
	}
	/* Password: MP_PASSWORD_MAX pass, one more fails. */
	for (size_t plen = MP_PASSWORD_MAX; plen <= MP_PASSWORD_MAX + 1; plen++) {
		memcpy(raw, "\0u\0", 3);
		memset(raw + 3, 'p', plen);
		struct fe_sasl *s = new_session("PLAIN", 0);
		enum fe_sasl_status st = start_raw(s, raw, plen + 3);
		assert_int_equal(st, plen <= MP_PASSWORD_MAX ? FE_SASL_NEED_PASSWORD
							     : FE_SASL_FAILED);
		fe_sasl_free(&s);
	}
	/* Response: FE_SASL_RESPONSE_MAX decoded bytes are read (and the
	 * password is then too long), one more byte is malformed. */
	for (size_t n = FE_SASL_RESPONSE_MAX; n <= FE_SASL_RESPONSE_MAX + 1; n++) {
		memcpy(raw, "\0u\0", 3);
		memset(raw + 3, 'p', n - 3);
		struct fe_sasl *s = new_session("PLAIN", 0);
		enum fe_sasl_status st = start_raw(s, raw, n);
		assert_int_equal(st, n <= FE_SASL_RESPONSE_MAX ? FE_SASL_FAILED
							   : FE_SASL_MALFORMED);
		assert_string_equal(fe_sasl_reason(s), n <= FE_SASL_RESPONSE_MAX
							   ? "password too long"
							   : "response too long");
		fe_sasl_free(&s);
	}
	/* A line over FE_SASL_LINE_MAX is refused before decoding. */
	char *line = malloc(FE_SASL_LINE_MAX + 5);
	assert_non_null(line);
	memset(line, 'A', FE_SASL_LINE_MAX + 4);
	line[FE_SASL_LINE_MAX + 4] = '\0';
	struct fe_sasl *s = new_session("PLAIN", 0);
	assert_int_equal(start_none(s), FE_SASL_CHALLENGE);
	assert_int_equal(step_line(s, line), FE_SASL_MALFORMED);
	assert_string_equal(fe_sasl_reason(s), "response too long");
	fe_sasl_free(&s);
	free(line);
	free(raw);
}

/* ------------------------------------------------------------ framing */

static void test_bad_base64(void **state)
{
	const char *lines[] = {
		"A", "AB", "ABC", "ABCDE", "AB=C", "A===", "====", "AB==CDEF",
		"AB\r\n", "AB CD", "ABC=\n", "QUJD\r", " QUJD", "QUJ!", "QUJ=", /* non-canonical */
		"QQ=", "QR==", "-_-_", "=",
	};
	for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
		for (int mech = 0; mech < FE_SASL_MECH_COUNT; mech++) {
			struct fe_sasl *s = new_session(fe_sasl_mech_name(mech), 0);
			assert_int_equal(start_none(s), FE_SASL_CHALLENGE);
			enum fe_sasl_status st = step_line(s, lines[i]);
			if (st != FE_SASL_MALFORMED)
				fail_msg("line '%s' mech %d: %s", lines[i], mech,
					 fe_sasl_status_name(st));
			assert_string_equal(fe_sasl_reason(s), "bad base64");
			fe_sasl_free(&s);

			/* The same as an initial response. */
			if (strcmp(lines[i], "=") == 0)
				continue;
			s = new_session(fe_sasl_mech_name(mech), 0);
			assert_int_equal(fe_sasl_start(s, lines[i], strlen(lines[i]), &st), 0);
			assert_int_equal(st, FE_SASL_MALFORMED);
			fe_sasl_free(&s);
		}
	}
}

static void test_initial_response_forms(void **state)
{
	enum fe_sasl_status st;
	for (int mech = 0; mech < FE_SASL_MECH_COUNT; mech++) {
		/* "=" is an empty initial response: empty is malformed for all
		 * three mechanisms. */
		struct fe_sasl *s = new_session(fe_sasl_mech_name(mech), 0);
		assert_int_equal(fe_sasl_start(s, "=", 1, &st), 0);
		assert_int_equal(st, FE_SASL_MALFORMED);
		fe_sasl_free(&s);
		/* A zero-length initial response must have been sent as "=". */
		s = new_session(fe_sasl_mech_name(mech), 0);
		assert_int_equal(fe_sasl_start(s, "", 0, &st), 0);
		assert_int_equal(st, FE_SASL_MALFORMED);
		fe_sasl_free(&s);
		/* "*" cancels only an answer to a challenge; as an initial
		 * response it is bad base64. */
		s = new_session(fe_sasl_mech_name(mech), 0);
		assert_int_equal(fe_sasl_start(s, "*", 1, &st), 0);
		assert_int_equal(st, FE_SASL_MALFORMED);
		fe_sasl_free(&s);
		/* An empty line after an empty challenge is an empty response. */
		s = new_session(fe_sasl_mech_name(mech), 0);
		assert_int_equal(start_none(s), FE_SASL_CHALLENGE);
		assert_int_equal(step_line(s, ""), FE_SASL_MALFORMED);
		fe_sasl_free(&s);
		/* start twice */
		s = new_session(fe_sasl_mech_name(mech), 0);
		assert_int_equal(start_none(s), FE_SASL_CHALLENGE);
		assert_int_equal(fe_sasl_start(s, NULL, 0, &st), MP_ESTATE);
		fe_sasl_free(&s);
	}
}

/* ------------------------------------------------------------ LOGIN */

static void test_login(void **state)
{
	/* No initial response: "Username:" then "Password:". */
	struct fe_sasl *s = new_session("LOGIN", 0);
	assert_int_equal(start_none(s), FE_SASL_CHALLENGE);
	assert_string_equal(fe_sasl_challenge(s), "VXNlcm5hbWU6");
	assert_int_equal(step_str(s, "alice"), FE_SASL_CHALLENGE);
	assert_string_equal(fe_sasl_challenge(s), "UGFzc3dvcmQ6");
	assert_string_equal(fe_sasl_user(s), "alice");
	assert_null(fe_sasl_password(s, NULL));
	assert_int_equal(step_str(s, "wonderland"), FE_SASL_NEED_PASSWORD);
	size_t len = 0;
	assert_string_equal(fe_sasl_password(s, &len), "wonderland");
	assert_int_equal(len, 10);
	enum fe_sasl_status st;
	assert_int_equal(fe_sasl_password_result(s, 0, &st), 0);
	assert_int_equal(st, FE_SASL_SUCCESS);
	fe_sasl_free(&s);

	/* User name as initial response. */
	s = new_session("login", 0);
	assert_int_equal(start_raw(s, "alice", 5), FE_SASL_CHALLENGE);
	assert_challenge(s, "Password:");
	assert_int_equal(step_str(s, "x"), FE_SASL_NEED_PASSWORD);
	assert_int_equal(fe_sasl_password_result(s, MP_ENOENT, &st), 0);
	assert_int_equal(st, FE_SASL_FAILED);
	assert_string_equal(fe_sasl_reason(s), "no such user");
	fe_sasl_free(&s);

	struct {
		const char *user;
		size_t ulen;
		const char *pw;
		size_t plen;
		enum fe_sasl_status want_user, want_pw;
	} t[] = {
		{ "", 0, NULL, 0, FE_SASL_MALFORMED, 0 },
		{ "a\0b", 3, NULL, 0, FE_SASL_MALFORMED, 0 },
		{ "a\r\nb", 4, NULL, 0, FE_SASL_MALFORMED, 0 },
		{ "\xe2\x82", 2, NULL, 0, FE_SASL_MALFORMED, 0 },
		{ "bob", 3, "", 0, FE_SASL_CHALLENGE, FE_SASL_MALFORMED },
		{ "bob", 3, "p\0w", 3, FE_SASL_CHALLENGE, FE_SASL_MALFORMED },
		{ "bob", 3, "\0", 1, FE_SASL_CHALLENGE, FE_SASL_MALFORMED },
		{ "bob", 3, "p w\t", 4, FE_SASL_CHALLENGE, FE_SASL_NEED_PASSWORD },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		s = new_session("LOGIN", 0);
		assert_int_equal(start_none(s), FE_SASL_CHALLENGE);
		assert_int_equal(step_raw(s, t[i].user, t[i].ulen), t[i].want_user);
		if (t[i].want_user == FE_SASL_CHALLENGE)
			assert_int_equal(step_raw(s, t[i].pw, t[i].plen), t[i].want_pw);
		fe_sasl_free(&s);
	}

	/* Limits, as for PLAIN. */
	char big[MP_PASSWORD_MAX + 2];
	memset(big, 'x', sizeof(big));
	s = new_session("LOGIN", 0);
	assert_int_equal(start_raw(s, big, FE_SASL_USER_MAX), FE_SASL_CHALLENGE);
	assert_int_equal(step_raw(s, big, MP_PASSWORD_MAX), FE_SASL_NEED_PASSWORD);
	fe_sasl_free(&s);
	s = new_session("LOGIN", 0);
	assert_int_equal(start_raw(s, big, FE_SASL_USER_MAX + 1), FE_SASL_FAILED);
	fe_sasl_free(&s);
	s = new_session("LOGIN", 0);
	assert_int_equal(start_raw(s, "u", 1), FE_SASL_CHALLENGE);
	assert_int_equal(step_raw(s, big, MP_PASSWORD_MAX + 1), FE_SASL_FAILED);
	assert_string_equal(fe_sasl_reason(s), "password too long");
	fe_sasl_free(&s);
}

/* ------------------------------------------------------------ cancel */

static void test_cancel(void **state)
{
	enum fe_sasl_status st;
	/* PLAIN after its empty challenge. */
	struct fe_sasl *s = new_session("PLAIN", 0);
	assert_int_equal(start_none(s), FE_SASL_CHALLENGE);
	assert_int_equal(step_line(s, "*"), FE_SASL_CANCELLED);
	assert_string_equal(fe_sasl_reason(s), "client cancelled");
	assert_int_equal(fe_sasl_step(s, "*", 1, &st), MP_ESTATE);
	fe_sasl_free(&s);
	/* LOGIN at both prompts. */
	s = new_session("LOGIN", 0);
	assert_int_equal(start_none(s), FE_SASL_CHALLENGE);
	assert_int_equal(step_line(s, "*"), FE_SASL_CANCELLED);
	fe_sasl_free(&s);
	s = new_session("LOGIN", 0);
	assert_int_equal(start_none(s), FE_SASL_CHALLENGE);
	assert_int_equal(step_str(s, "u"), FE_SASL_CHALLENGE);
	assert_int_equal(step_line(s, "*"), FE_SASL_CANCELLED);
	assert_null(fe_sasl_password(s, NULL));
	fe_sasl_free(&s);
	/* SCRAM before client-first, after server-first, after server-final. */
	s = new_session("SCRAM-SHA-256", 0);
	assert_int_equal(start_none(s), FE_SASL_CHALLENGE);
	assert_int_equal(step_line(s, "*"), FE_SASL_CANCELLED);
	fe_sasl_free(&s);
	s = new_session("SCRAM-SHA-256", 0);
	assert_int_equal(start_raw(s, "n,,n=u,r=abc", 12), FE_SASL_NEED_SCRAM);
	assert_int_equal(fe_sasl_scram_cred(s, NULL, &st), 0);
	assert_int_equal(st, FE_SASL_CHALLENGE);
	assert_int_equal(step_line(s, "*"), FE_SASL_CANCELLED);
	fe_sasl_free(&s);
	/* "**" or " *" are not a cancel, but bad base64. */
	s = new_session("PLAIN", 0);
	assert_int_equal(start_none(s), FE_SASL_CHALLENGE);
	assert_int_equal(step_line(s, "**"), FE_SASL_MALFORMED);
	fe_sasl_free(&s);
	s = new_session("PLAIN", 0);
	assert_int_equal(start_none(s), FE_SASL_CHALLENGE);
	assert_int_equal(step_line(s, "* "), FE_SASL_MALFORMED);
	fe_sasl_free(&s);
}

/* ------------------------------------------------------------ SCRAM */

/* RFC 7677 §3. */
#define RFC_PASSWORD "pencil"
#define RFC_SALT "W22ZaJ0SNY7soEsUEjb6gQ=="
#define RFC_CFIRST "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
#define RFC_SNONCE "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
#define RFC_SFIRST "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0," \
		   "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
#define RFC_CFINAL "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0," \
		   "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
#define RFC_SFINAL "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

/* Stored credentials for password and salt (base64) as mp_scram_make
 * would derive them, computed here from the RFC 5802 §3 formulas. */
static void derive_cred(const char *password, const uint8_t *salt, size_t salt_len,
			uint32_t iter, struct mp_scram_cred *c)
{
	uint8_t salted[MP_SHA256_LEN], ckey[MP_SHA256_LEN];
	memset(c, 0, sizeof(*c));
	assert_true(salt_len <= MP_SCRAM_SALT_MAX);
	memcpy(c->salt, salt, salt_len);
	c->salt_len = salt_len;
	c->iter = iter;
	assert_int_equal(mp_pbkdf2_sha256(password, strlen(password), salt, salt_len, iter,
					  salted), 0);
	assert_int_equal(mp_hmac_sha256(salted, sizeof(salted), "Client Key", 10, ckey), 0);
	assert_int_equal(mp_sha256(ckey, sizeof(ckey), c->stored_key), 0);
	assert_int_equal(mp_hmac_sha256(salted, sizeof(salted), "Server Key", 10,
					c->server_key), 0);
}

/* Derived once: the mutation test runs the exchange hundreds of times. */
static void rfc_cred(struct mp_scram_cred *c)
{
	static struct mp_scram_cred cache;
	static int cached;
	if (!cached) {
		uint8_t salt[32];
		size_t n = 0;
		assert_int_equal(mp_base64_decode(RFC_SALT, strlen(RFC_SALT), salt,
						  sizeof(salt), &n), 0);
		derive_cred(RFC_PASSWORD, salt, n, 4096, &cache);
		cached = 1;
	}
	*c = cache;
}

/* The RFC exchange up to server-first. */
static struct fe_sasl *rfc_to_server_first(unsigned flags, int ir)
{
	struct mp_scram_cred cred;
	rfc_cred(&cred);
	struct fe_sasl *s = new_session("SCRAM-SHA-256", flags);
	assert_int_equal(fe_sasl_test_set_nonce(s, RFC_SNONCE, strlen(RFC_SNONCE)), 0);
	if (ir) {
		assert_int_equal(start_raw(s, RFC_CFIRST, strlen(RFC_CFIRST)), FE_SASL_NEED_SCRAM);
	} else {
		assert_int_equal(start_none(s), FE_SASL_CHALLENGE);
		assert_string_equal(fe_sasl_challenge(s), "");
		assert_int_equal(step_str(s, RFC_CFIRST), FE_SASL_NEED_SCRAM);
	}
	assert_string_equal(fe_sasl_user(s), "user");
	assert_null(fe_sasl_password(s, NULL));
	enum fe_sasl_status st;
	assert_int_equal(fe_sasl_scram_cred(s, &cred, &st), 0);
	assert_int_equal(st, FE_SASL_CHALLENGE);
	assert_challenge(s, RFC_SFIRST);
	assert_int_equal(fe_sasl_test_set_nonce(s, "x", 1), MP_ESTATE);
	return s;
}

static void test_scram_rfc7677(void **state)
{
	/* Round trip ending in an empty response (RFC 5802 §5). */
	struct fe_sasl *s = rfc_to_server_first(0, 1);
	assert_int_equal(step_str(s, RFC_CFINAL), FE_SASL_CHALLENGE);
	assert_challenge(s, RFC_SFINAL);
	assert_true(fe_sasl_awaiting_empty(s));
	assert_null(fe_sasl_success_data(s));
	assert_int_equal(step_line(s, ""), FE_SASL_SUCCESS);
	assert_false(fe_sasl_awaiting_empty(s));
	assert_string_equal(fe_sasl_user(s), "user");
	assert_string_equal(fe_sasl_reason(s), "");
	fe_sasl_free(&s);

	/* Additional data with success. */
	s = rfc_to_server_first(FE_SASL_F_SUCCESS_DATA, 0);
	assert_int_equal(step_str(s, RFC_CFINAL), FE_SASL_SUCCESS);
	assert_false(fe_sasl_awaiting_empty(s));
	char *data = unb64(fe_sasl_success_data(s));
	assert_string_equal(data, RFC_SFINAL);
	free(data);
	enum fe_sasl_status st;
	assert_int_equal(fe_sasl_step(s, "", 0, &st), MP_ESTATE);
	fe_sasl_free(&s);

	/* The final empty response is all that is accepted. */
	s = rfc_to_server_first(0, 1);
	assert_int_equal(step_str(s, RFC_CFINAL), FE_SASL_CHALLENGE);
	assert_int_equal(step_line(s, "AA=="), FE_SASL_MALFORMED);
	fe_sasl_free(&s);
	s = rfc_to_server_first(0, 1);
	assert_int_equal(step_str(s, RFC_CFINAL), FE_SASL_CHALLENGE);
	assert_int_equal(step_line(s, "*"), FE_SASL_CANCELLED);  /* client rejected v= */
	fe_sasl_free(&s);
	s = rfc_to_server_first(0, 1);
	assert_int_equal(step_str(s, RFC_CFINAL), FE_SASL_CHALLENGE);
	assert_int_equal(step_line(s, "="), FE_SASL_MALFORMED);
	fe_sasl_free(&s);

	/* Wrong password (stored keys of another one): same failure class. */
	struct mp_scram_cred other;
	uint8_t salt[32];
	size_t n = 0;
	assert_int_equal(mp_base64_decode(RFC_SALT, strlen(RFC_SALT), salt, sizeof(salt), &n), 0);
	derive_cred("pencil2", salt, n, 4096, &other);
	s = new_session("SCRAM-SHA-256", 0);
	assert_int_equal(fe_sasl_test_set_nonce(s, RFC_SNONCE, strlen(RFC_SNONCE)), 0);
	assert_int_equal(start_raw(s, RFC_CFIRST, strlen(RFC_CFIRST)), FE_SASL_NEED_SCRAM);
	assert_int_equal(fe_sasl_scram_cred(s, &other, &st), 0);
	assert_challenge(s, RFC_SFIRST);  /* the same salt, so the same message */
	assert_int_equal(step_str(s, RFC_CFINAL), FE_SASL_FAILED);
	assert_string_equal(fe_sasl_reason(s), "wrong password (SCRAM proof mismatch)");
	fe_sasl_free(&s);
}

/* A SCRAM client from RFC 5802 §3: the client-final message for password,
 * given the bare client-first, the gs2 header and the server-first; the
 * expected server-final in *sfinal_r. Both malloc'd. */
static char *client_final(const char *password, const char *gs2, const char *bare,
			  const char *sfirst, const char *ext, char **sfinal_r)
{
	const char *r = strstr(sfirst, "r=");
	const char *sp = strstr(sfirst, ",s=");
	const char *ip = strstr(sfirst, ",i=");
	assert_true(r == sfirst && sp != NULL && ip != NULL && ip > sp);
	uint8_t salt[MP_SCRAM_SALT_MAX];
	size_t salt_len = 0;
	assert_int_equal(mp_base64_decode(sp + 3, (size_t)(ip - sp - 3), salt, sizeof(salt),
					  &salt_len), 0);
	uint32_t iter = (uint32_t)strtoul(ip + 3, NULL, 10);
	assert_true(iter > 0);

	uint8_t salted[MP_SHA256_LEN], ckey[MP_SHA256_LEN], stored[MP_SHA256_LEN];
	uint8_t skey[MP_SHA256_LEN], csig[MP_SHA256_LEN], ssig[MP_SHA256_LEN];
	assert_int_equal(mp_pbkdf2_sha256(password, strlen(password), salt, salt_len, iter,
					  salted), 0);
	assert_int_equal(mp_hmac_sha256(salted, 32, "Client Key", 10, ckey), 0);
	assert_int_equal(mp_sha256(ckey, 32, stored), 0);
	assert_int_equal(mp_hmac_sha256(salted, 32, "Server Key", 10, skey), 0);

	char *cb = b64(gs2, strlen(gs2));
	size_t nlen = (size_t)(sp - (r + 2));
	char *wp = NULL;
	assert_true(asprintf(&wp, "c=%s,r=%.*s%s", cb, (int)nlen, r + 2, ext) > 0);
	char *am = NULL;
	assert_true(asprintf(&am, "%s,%s,%s", bare, sfirst, wp) > 0);
	assert_int_equal(mp_hmac_sha256(stored, 32, am, strlen(am), csig), 0);
	assert_int_equal(mp_hmac_sha256(skey, 32, am, strlen(am), ssig), 0);
	uint8_t proof[MP_SHA256_LEN];
	for (int i = 0; i < MP_SHA256_LEN; i++)
		proof[i] = ckey[i] ^ csig[i];
	char *p64 = b64(proof, sizeof(proof));
	char *v64 = b64(ssig, sizeof(ssig));
	char *out = NULL;
	assert_true(asprintf(&out, "%s,p=%s", wp, p64) > 0);
	assert_true(asprintf(sfinal_r, "v=%s", v64) > 0);
	free(cb);
	free(wp);
	free(am);
	free(p64);
	free(v64);
	return out;
}

/* fe_sasl_reason of the last scram_run, for the log-side checks. */
static char last_reason[128];

/* A whole exchange; returns the final status. cred NULL: unknown user. */
static enum fe_sasl_status scram_run(const char *cfirst, const char *password,
				     const struct mp_scram_cred *cred, const char *ext,
				     const char *want_user)
{
	struct fe_sasl *s = new_session("SCRAM-SHA-256", FE_SASL_F_SUCCESS_DATA);
	enum fe_sasl_status st = start_raw(s, cfirst, strlen(cfirst));
	if (st != FE_SASL_NEED_SCRAM) {
		fe_sasl_free(&s);
		return st;
	}
	if (want_user != NULL)
		assert_string_equal(fe_sasl_user(s), want_user);
	assert_int_equal(fe_sasl_scram_cred(s, cred, &st), 0);
	assert_int_equal(st, FE_SASL_CHALLENGE);
	char *sfirst = unb64(fe_sasl_challenge(s));
	/* The gs2 header is everything up to the second ','. */
	const char *c1 = strchr(cfirst, ',');
	const char *c2 = strchr(c1 + 1, ',');
	char gs2[1024];
	assert_true((size_t)(c2 + 1 - cfirst) < sizeof(gs2));
	memcpy(gs2, cfirst, (size_t)(c2 + 1 - cfirst));
	gs2[c2 + 1 - cfirst] = '\0';
	char *sfinal = NULL;
	char *cfinal = client_final(password, gs2, c2 + 1, sfirst, ext, &sfinal);
	st = step_str(s, cfinal);
	if (st == FE_SASL_SUCCESS) {
		char *data = unb64(fe_sasl_success_data(s));
		assert_string_equal(data, sfinal);
		free(data);
	}
	snprintf(last_reason, sizeof(last_reason), "%s", fe_sasl_reason(s));
	free(sfirst);
	free(sfinal);
	free(cfinal);
	fe_sasl_free(&s);
	return st;
}

static void test_scram_client(void **state)
{
	struct mp_scram_cred cred;
	const uint8_t salt[] = "0123456789abcdef";
	derive_cred("p\xc3\xa4ss word", salt, 16, 4096, &cred);

	assert_int_equal(scram_run("n,,n=alice,r=nonce1", "p\xc3\xa4ss word", &cred, "",
				   "alice"), FE_SASL_SUCCESS);
	assert_int_equal(scram_run("y,,n=alice,r=nonce1", "p\xc3\xa4ss word", &cred, "",
				   "alice"), FE_SASL_SUCCESS);
	assert_int_equal(scram_run("n,a=alice,n=alice,r=n", "p\xc3\xa4ss word", &cred, "",
				   "alice"), FE_SASL_SUCCESS);
	/* Escapes in the name: "a,b=c". */
	assert_int_equal(scram_run("n,a=a=2Cb=3Dc,n=a=2Cb=3Dc,r=n", "p\xc3\xa4ss word", &cred,
				   "", "a,b=c"), FE_SASL_SUCCESS);
	/* Optional extensions are ignored in both client messages. */
	assert_int_equal(scram_run("n,,n=alice,r=abc,x=1,y=a=b", "p\xc3\xa4ss word", &cred,
				   ",z=ext", "alice"), FE_SASL_SUCCESS);
	/* Every printable nonce character. */
	char cf[256];
	size_t o = (size_t)snprintf(cf, sizeof(cf), "n,,n=alice,r=");
	for (int c = 0x21; c <= 0x7e; c++)
		if (c != ',')
			cf[o++] = (char)c;
	cf[o] = '\0';
	assert_int_equal(scram_run(cf, "p\xc3\xa4ss word", &cred, "", "alice"),
			 FE_SASL_SUCCESS);

	assert_int_equal(scram_run("n,,n=alice,r=nonce1", "pass word", &cred, "", "alice"),
			 FE_SASL_FAILED);
	assert_int_equal(scram_run("n,,n=alice,r=nonce1", "", &cred, "", "alice"),
			 FE_SASL_FAILED);
	/* m= in client-final. */
	assert_int_equal(scram_run("n,,n=alice,r=nonce1", "p\xc3\xa4ss word", &cred, ",m=x",
				   "alice"), FE_SASL_MALFORMED);
	assert_int_equal(scram_run("n,,n=alice,r=nonce1", "p\xc3\xa4ss word", &cred, ",9=x",
				   "alice"), FE_SASL_MALFORMED);
	assert_int_equal(scram_run("n,,n=alice,r=nonce1", "p\xc3\xa4ss word", &cred, ",x=",
				   "alice"), FE_SASL_MALFORMED);
	/* Other iteration counts and salt sizes. */
	derive_cred("pw", salt, 1, 1, &cred);
	assert_int_equal(scram_run("n,,n=bob,r=q", "pw", &cred, "", "bob"), FE_SASL_SUCCESS);
	uint8_t bigsalt[MP_SCRAM_SALT_MAX];
	memset(bigsalt, 7, sizeof(bigsalt));
	derive_cred("pw", bigsalt, sizeof(bigsalt), 5000, &cred);
	assert_int_equal(scram_run("n,,n=bob,r=q", "pw", &cred, "", "bob"), FE_SASL_SUCCESS);

	/* Bad cred from the caller is refused without a state change. */
	struct fe_sasl *s = new_session("SCRAM-SHA-256", 0);
	enum fe_sasl_status st;
	assert_int_equal(start_raw(s, "n,,n=bob,r=q", 12), FE_SASL_NEED_SCRAM);
	cred.iter = 0;
	assert_int_equal(fe_sasl_scram_cred(s, &cred, &st), MP_EINVAL);
	cred.iter = 4096;
	cred.salt_len = 0;
	assert_int_equal(fe_sasl_scram_cred(s, &cred, &st), MP_EINVAL);
	cred.salt_len = MP_SCRAM_SALT_MAX + 1;
	assert_int_equal(fe_sasl_scram_cred(s, &cred, &st), MP_EINVAL);
	cred.salt_len = 16;
	assert_int_equal(fe_sasl_scram_cred(s, &cred, &st), 0);
	assert_int_equal(st, FE_SASL_CHALLENGE);
	assert_int_equal(fe_sasl_scram_cred(s, &cred, &st), MP_ESTATE);
	fe_sasl_free(&s);
}

/* Parse the server-first of an unknown user. */
static void server_first_parts(const char *sfirst, const char *cnonce, char *salt64,
			       size_t cap, unsigned long *iter_r)
{
	assert_int_equal(strncmp(sfirst, "r=", 2), 0);
	assert_int_equal(strncmp(sfirst + 2, cnonce, strlen(cnonce)), 0);
	const char *sp = strstr(sfirst, ",s=");
	const char *ip = strstr(sfirst, ",i=");
	assert_non_null(sp);
	assert_non_null(ip);
	/* Server nonce: 32 printable characters after the client's. */
	size_t snlen = (size_t)(sp - sfirst) - 2 - strlen(cnonce);
	assert_int_equal(snlen, 32);
	for (size_t i = 0; i < snlen; i++) {
		char c = sfirst[2 + strlen(cnonce) + i];
		assert_true(c >= 0x21 && c <= 0x7e && c != ',');
	}
	size_t sl = (size_t)(ip - sp - 3);
	assert_true(sl < cap);
	memcpy(salt64, sp + 3, sl);
	salt64[sl] = '\0';
	*iter_r = strtoul(ip + 3, NULL, 10);
}

static void test_scram_unknown_user(void **state)
{
	/* Like a real user made by mp_scram_make: 16-byte salt, 4096 rounds. */
	char salt_a[128], salt_a2[128], salt_b[128];
	unsigned long iter = 0;
	char *sfirst[3];
	const char *users[3] = { "n,,n=ghost,r=c1", "n,,n=ghost,r=c2", "n,,n=phantom,r=c1" };
	char *salts[3] = { salt_a, salt_a2, salt_b };
	for (int i = 0; i < 3; i++) {
		struct fe_sasl *s = new_session("SCRAM-SHA-256", 0);
		assert_int_equal(start_raw(s, users[i], strlen(users[i])), FE_SASL_NEED_SCRAM);
		enum fe_sasl_status st;
		assert_int_equal(fe_sasl_scram_cred(s, NULL, &st), 0);
		assert_int_equal(st, FE_SASL_CHALLENGE);
		sfirst[i] = unb64(fe_sasl_challenge(s));
		server_first_parts(sfirst[i], i == 1 ? "c2" : "c1", salts[i], 128, &iter);
		assert_int_equal(iter, MP_SCRAM_ITER_DEFAULT);
		uint8_t raw[64];
		size_t n = 0;
		assert_int_equal(mp_base64_decode(salts[i], strlen(salts[i]), raw, sizeof(raw), &n), 0);
		assert_int_equal(n, 16);
		fe_sasl_free(&s);
	}
	/* Stable per user (as a stored salt would be), different between users,
	 * and fresh server nonces every time. */
	assert_string_equal(salt_a, salt_a2);
	assert_string_not_equal(salt_a, salt_b);
	assert_int_not_equal(strncmp(sfirst[0] + 4, sfirst[1] + 4, 32), 0);
	for (int i = 0; i < 3; i++)
		free(sfirst[i]);

	/* The end: the same status as a wrong password, even with a proof
	 * computed correctly from the fake salt. */
	assert_int_equal(scram_run("n,,n=ghost,r=c1", "anything", NULL, "", "ghost"),
			 FE_SASL_FAILED);
	/* Only the log tells them apart. */
	assert_string_equal(last_reason, "no such user or no SCRAM credentials");
	struct mp_scram_cred cred;
	derive_cred("right", (const uint8_t *)"saltsaltsaltsalt", 16, 4096, &cred);
	assert_int_equal(scram_run("n,,n=real,r=c1", "wrong", &cred, "", "real"),
			 FE_SASL_FAILED);
	assert_string_equal(last_reason, "wrong password (SCRAM proof mismatch)");
	assert_int_equal(scram_run("n,,n=real,r=c1", "right", &cred, "", "real"),
			 FE_SASL_SUCCESS);
	assert_string_equal(last_reason, "");
	/* Malformed client-final is malformed for both. */
	struct fe_sasl *s = new_session("SCRAM-SHA-256", 0);
	enum fe_sasl_status st;
	assert_int_equal(start_raw(s, "n,,n=ghost,r=c1", 15), FE_SASL_NEED_SCRAM);
	assert_int_equal(fe_sasl_scram_cred(s, NULL, &st), 0);
	assert_int_equal(step_str(s, "c=biws,r=c1"), FE_SASL_MALFORMED);
	fe_sasl_free(&s);
}

static void test_scram_fake_secret(void **state)
{
	const char key[] = "a cluster-wide secret for fake salts";
	assert_int_equal(fe_sasl_set_fake_secret(key, 5), MP_EINVAL);
	assert_int_equal(fe_sasl_set_fake_secret(NULL, 40), MP_EINVAL);
	assert_int_equal(fe_sasl_set_fake_secret(key, strlen(key)), 0);

	/* Documented derivation: HMAC(SHA-256(key), "salt" NUL user), 16 bytes. */
	uint8_t k[MP_SHA256_LEN], mac[MP_SHA256_LEN];
	assert_int_equal(mp_sha256(key, strlen(key), k), 0);
	assert_int_equal(mp_hmac_sha256(k, sizeof(k), "salt\0ghost", 10, mac), 0);
	char want[64];
	mp_base64_encode(mac, 16, want);

	struct fe_sasl *s = new_session("SCRAM-SHA-256", 0);
	assert_int_equal(start_raw(s, "n,,n=ghost,r=c1", 15), FE_SASL_NEED_SCRAM);
	enum fe_sasl_status st;
	assert_int_equal(fe_sasl_scram_cred(s, NULL, &st), 0);
	char *sfirst = unb64(fe_sasl_challenge(s));
	char salt64[128];
	unsigned long iter;
	server_first_parts(sfirst, "c1", salt64, sizeof(salt64), &iter);
	assert_string_equal(salt64, want);
	free(sfirst);
	fe_sasl_free(&s);
}

static void test_scram_first_table(void **state)
{
	static const struct raw_case t[] = {
		RC("n,,n=user,r=abc", FE_SASL_NEED_SCRAM),
		RC("y,,n=user,r=abc", FE_SASL_NEED_SCRAM),
		RC("n,a=user,n=user,r=abc", FE_SASL_NEED_SCRAM),
		RC("n,,n=user,r=abc,e=x", FE_SASL_NEED_SCRAM),
		RC("n,,n=us=3Der,r=abc", FE_SASL_NEED_SCRAM),
		RC("p=tls-unique,,n=user,r=abc", FE_SASL_MALFORMED), /* no -PLUS */
		RC("p,,n=user,r=abc", FE_SASL_MALFORMED),
		RC("x,,n=user,r=abc", FE_SASL_MALFORMED),
		RC("N,,n=user,r=abc", FE_SASL_MALFORMED),
		RC("n", FE_SASL_MALFORMED),
		RC("n,", FE_SASL_MALFORMED),
		RC("n,,", FE_SASL_MALFORMED),
		RC("n,n=user,r=abc", FE_SASL_MALFORMED),       /* no second ',' */
		RC("nn,,n=user,r=abc", FE_SASL_MALFORMED),
		RC("n,b=user,n=user,r=abc", FE_SASL_MALFORMED),
		RC("n,a=,n=user,r=abc", FE_SASL_MALFORMED),     /* empty authzid */
		RC("n,a=bob,n=user,r=abc", FE_SASL_FAILED),     /* proxying */
		RC("n,a=User,n=user,r=abc", FE_SASL_FAILED),
		RC("n,,m=ext,n=user,r=abc", FE_SASL_MALFORMED), /* reserved-mext */
		RC("n,,n=user,r=abc,m=x", FE_SASL_MALFORMED),
		RC("n,,r=abc,n=user", FE_SASL_MALFORMED),
		RC("n,,n=user", FE_SASL_MALFORMED),
		RC("n,,n=user,", FE_SASL_MALFORMED),
		RC("n,,n=user,r=", FE_SASL_MALFORMED),
		RC("n,,n=user,r", FE_SASL_MALFORMED),
		RC("n,,n=user,x=abc", FE_SASL_MALFORMED),
		RC("n,,n=,r=abc", FE_SASL_MALFORMED),
		RC("n,,n,r=abc", FE_SASL_MALFORMED),
		RC("n,,n=us=er,r=abc", FE_SASL_MALFORMED),     /* bare '=' */
		RC("n,,n=us=2c,r=abc", FE_SASL_MALFORMED),     /* lower-case escape */
		RC("n,,n=us=2,r=abc", FE_SASL_MALFORMED),
		RC("n,,n=us=", FE_SASL_MALFORMED),
		RC("n,,n=us\0er,r=abc", FE_SASL_MALFORMED),
		RC("n,,n=us\ter,r=abc", FE_SASL_MALFORMED),
		RC("n,,n=\xc3\x28,r=abc", FE_SASL_MALFORMED),
		RC("n,,n=user,r=a b", FE_SASL_MALFORMED),      /* not printable */
		RC("n,,n=user,r=a\x7f", FE_SASL_MALFORMED),
		RC("n,,n=user,r=\xc3\xa9", FE_SASL_MALFORMED),
		RC("n,,n=user,r=abc,", FE_SASL_MALFORMED),
		RC("n,,n=user,r=abc,,", FE_SASL_MALFORMED),
		RC("n,,n=user,r=abc,x", FE_SASL_MALFORMED),
		RC("n,,n=user,r=abc,x=", FE_SASL_MALFORMED),
		RC("n,,n=user,r=abc,1=x", FE_SASL_MALFORMED),
		RC("n,,n=user,r=abc,x=a\0b", FE_SASL_MALFORMED),
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct fe_sasl *s = new_session("SCRAM-SHA-256", 0);
		enum fe_sasl_status st = start_raw(s, t[i].raw, t[i].len);
		if (st != t[i].want)
			fail_msg("case %zu '%s': got %s want %s (%s)", i, t[i].raw,
				 fe_sasl_status_name(st), fe_sasl_status_name(t[i].want),
				 fe_sasl_reason(s));
		assert_int_equal(fe_sasl_reason(s)[0] == '\0', st == FE_SASL_NEED_SCRAM);
		fe_sasl_free(&s);
	}
	/* The log says why "p=" was refused. */
	struct fe_sasl *sp = new_session("SCRAM-SHA-256", 0);
	assert_int_equal(start_raw(sp, "p=tls-unique,,n=u,r=x", 21), FE_SASL_MALFORMED);
	assert_string_equal(fe_sasl_reason(sp), "SCRAM: channel binding not supported");
	fe_sasl_free(&sp);

	/* User name length after unescaping: 255 ok, 256 fails; an escaped
	 * name of 255 bytes is 765 on the wire and still fine. */
	char msg[2048];
	for (size_t ulen = FE_SASL_USER_MAX; ulen <= FE_SASL_USER_MAX + 1; ulen++) {
		for (int esc = 0; esc < 2; esc++) {
			size_t o = (size_t)snprintf(msg, sizeof(msg), "n,a=");
			for (size_t k = 0; k < ulen; k++)
				o += (size_t)snprintf(msg + o, sizeof(msg) - o, "%s",
						      esc ? "=2C" : "u");
			o += (size_t)snprintf(msg + o, sizeof(msg) - o, ",n=");
			for (size_t k = 0; k < ulen; k++)
				o += (size_t)snprintf(msg + o, sizeof(msg) - o, "%s",
						      esc ? "=2C" : "u");
			o += (size_t)snprintf(msg + o, sizeof(msg) - o, ",r=x");
			assert_true(o < sizeof(msg));
			struct fe_sasl *s = new_session("SCRAM-SHA-256", 0);
			enum fe_sasl_status st = start_raw(s, msg, o);
			assert_int_equal(st, ulen <= FE_SASL_USER_MAX ? FE_SASL_NEED_SCRAM
								     : FE_SASL_FAILED);
			if (st == FE_SASL_NEED_SCRAM) {
				assert_int_equal(strlen(fe_sasl_user(s)), ulen);
				assert_int_equal(fe_sasl_scram_cred(s, NULL, &st), 0);
				assert_int_equal(st, FE_SASL_CHALLENGE);
			}
			fe_sasl_free(&s);
		}
	}
}

static void test_scram_final_table(void **state)
{
	const char *nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
	const char *proof = "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
	struct {
		const char *tmpl;  /* {N}: the nonce, {P}: the RFC's proof attribute */
		enum fe_sasl_status want;
	} t[] = {
		{ "c=biws,r={N},{P}", FE_SASL_CHALLENGE },
		{ "c=biws,r={N},x=ext,{P}", FE_SASL_FAILED },  /* AuthMessage differs */
		{ "c=eSws,r={N},{P}", FE_SASL_MALFORMED },     /* "y,," after "n,," */
		{ "c=biwsAA==,r={N},{P}", FE_SASL_MALFORMED },
		{ "c=bi,r={N},{P}", FE_SASL_MALFORMED },
		{ "c=,r={N},{P}", FE_SASL_MALFORMED },
		{ "c=biws,r={N}X,{P}", FE_SASL_MALFORMED },    /* nonce mismatch */
		{ "c=biws,r=rOprNGfwEbeRWgbNEkqO,{P}", FE_SASL_MALFORMED },
		{ "c=biws,r=,{P}", FE_SASL_MALFORMED },
		{ "c=biws,{P}", FE_SASL_MALFORMED },
		{ "r={N},c=biws,{P}", FE_SASL_MALFORMED },
		{ "c=biws,r={N}", FE_SASL_MALFORMED },          /* no proof */
		{ "c=biws,r={N},", FE_SASL_MALFORMED },
		{ "c=biws,r={N},{P},x=y", FE_SASL_MALFORMED }, /* proof not last */
		{ "c=biws,r={N},m=y,{P}", FE_SASL_MALFORMED },
		{ "c=biws,r={N},p=", FE_SASL_MALFORMED },
		{ "c=biws,r={N},p=AAAA", FE_SASL_MALFORMED },   /* not 32 bytes */
		{ "c=biws,r={N},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ", FE_SASL_MALFORMED },
		{ "c=biws,r={N},p=eHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=", FE_SASL_FAILED },
		{ "c=biws,r={N},{P},{P}", FE_SASL_MALFORMED },
		{ "", FE_SASL_MALFORMED },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		char msg[512];
		size_t n = 0;
		for (const char *p = t[i].tmpl; *p != '\0';) {
			const char *ins = NULL;
			if (strncmp(p, "{N}", 3) == 0)
				ins = nonce;
			else if (strncmp(p, "{P}", 3) == 0)
				ins = proof;
			if (ins != NULL) {
				assert_true(n + strlen(ins) < sizeof(msg));
				memcpy(msg + n, ins, strlen(ins));
				n += strlen(ins);
				p += 3;
			} else {
				assert_true(n + 1 < sizeof(msg));
				msg[n++] = *p++;
			}
		}
		msg[n] = '\0';
		struct fe_sasl *s = rfc_to_server_first(0, 1);
		enum fe_sasl_status st = step_raw(s, msg, n);
		if (st != t[i].want)
			fail_msg("case %zu '%s': got %s want %s (%s)", i, msg,
				 fe_sasl_status_name(st), fe_sasl_status_name(t[i].want),
				 fe_sasl_reason(s));
		fe_sasl_free(&s);
	}
}

/* Every proper prefix and every one-byte change of the RFC client-final is
 * refused, and never succeeds. */
static void test_scram_final_mutations(void **state)
{
	const char *good = RFC_CFINAL;
	size_t len = strlen(good);
	char msg[256];
	for (size_t cut = 0; cut < len; cut++) {
		struct fe_sasl *s = rfc_to_server_first(FE_SASL_F_SUCCESS_DATA, 1);
		enum fe_sasl_status st = step_raw(s, good, cut);
		assert_true(st == FE_SASL_MALFORMED || st == FE_SASL_FAILED);
		assert_null(fe_sasl_success_data(s));
		fe_sasl_free(&s);
	}
	static const char subst[] = { 'A', '=', ',', '\0', 'z', '+' };
	for (size_t pos = 0; pos < len; pos++) {
		for (size_t k = 0; k < sizeof(subst); k++) {
			if (good[pos] == subst[k])
				continue;
			memcpy(msg, good, len);
			msg[pos] = subst[k];
			struct fe_sasl *s = rfc_to_server_first(FE_SASL_F_SUCCESS_DATA, 1);
			enum fe_sasl_status st = step_raw(s, msg, len);
			if (st != FE_SASL_MALFORMED && st != FE_SASL_FAILED)
				fail_msg("pos %zu subst %d: %s", pos, subst[k],
					 fe_sasl_status_name(st));
			fe_sasl_free(&s);
		}
	}
}

static void test_misuse(void **state)
{
	enum fe_sasl_status st;
	struct fe_sasl *s = new_session("PLAIN", 0);
	assert_int_equal(fe_sasl_step(s, "", 0, &st), MP_ESTATE);         /* not started */
	assert_int_equal(fe_sasl_password_result(s, 0, &st), MP_ESTATE);
	assert_int_equal(fe_sasl_scram_cred(s, NULL, &st), MP_ESTATE);
	assert_int_equal(start_none(s), FE_SASL_CHALLENGE);
	assert_int_equal(fe_sasl_password_result(s, 0, &st), MP_ESTATE);
	assert_int_equal(fe_sasl_scram_cred(s, NULL, &st), MP_ESTATE);
	assert_int_equal(fe_sasl_step(s, NULL, 3, &st), MP_ESTATE);
	fe_sasl_free(&s);

	s = new_session("SCRAM-SHA-256", 0);
	assert_int_equal(fe_sasl_test_set_nonce(s, "", 0), MP_EINVAL);
	assert_int_equal(fe_sasl_test_set_nonce(s, "a,b", 3), MP_EINVAL);
	assert_int_equal(fe_sasl_test_set_nonce(s, "a b", 3), MP_EINVAL);
	char longn[FE_SASL_TEST_NONCE_MAX + 2];
	memset(longn, 'n', sizeof(longn));
	assert_int_equal(fe_sasl_test_set_nonce(s, longn, sizeof(longn)), MP_EINVAL);
	assert_int_equal(fe_sasl_test_set_nonce(s, longn, FE_SASL_TEST_NONCE_MAX), 0);
	assert_int_equal(start_raw(s, "n,,n=u,r=x", 10), FE_SASL_NEED_SCRAM);
	assert_int_equal(fe_sasl_step(s, "", 0, &st), MP_ESTATE);  /* waiting for cred */
	assert_int_equal(fe_sasl_password_result(s, 0, &st), MP_ESTATE);
	assert_int_equal(fe_sasl_scram_cred(s, NULL, &st), 0);
	char *sf = unb64(fe_sasl_challenge(s));
	assert_int_equal(strncmp(sf + 3, longn, FE_SASL_TEST_NONCE_MAX), 0);
	free(sf);
	fe_sasl_free(&s);
	fe_sasl_free(&s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mech_lookup),
		cmocka_unit_test(test_plain_ir_success),
		cmocka_unit_test(test_plain_no_ir),
		cmocka_unit_test(test_password_results),
		cmocka_unit_test(test_plain_table),
		cmocka_unit_test(test_reason_has_no_secret),
		cmocka_unit_test(test_plain_limits),
		cmocka_unit_test(test_bad_base64),
		cmocka_unit_test(test_initial_response_forms),
		cmocka_unit_test(test_login),
		cmocka_unit_test(test_cancel),
		cmocka_unit_test(test_scram_rfc7677),
		cmocka_unit_test(test_scram_client),
		cmocka_unit_test(test_scram_unknown_user),
		cmocka_unit_test(test_scram_fake_secret),
		cmocka_unit_test(test_scram_first_table),
		cmocka_unit_test(test_scram_final_table),
		cmocka_unit_test(test_scram_final_mutations),
		cmocka_unit_test(test_misuse),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
