/*
 * fuzz_sasl: arbitrary client messages into the fe_sasl state machine,
 * with fixed accounts: "user" / "pencil" (password hash check simulated,
 * SCRAM record derived once) and no other user.
 *
 * Input: byte 0 picks the mechanism and options (bits 0-1 mechanism,
 * 2 initial response, 3 FE_SASL_F_SUCCESS_DATA, 4 lines as they are rather
 * than base64-encoded here, 5-7 what the simulated password check returns
 * when the password is wrong); the rest is split at '\n' into client
 * messages. A message "!final" is replaced by the correct SCRAM
 * client-final for the exchange so far, so the success paths are reached.
 *
 * Checks: every call returns 0 or MP_ESTATE as documented; challenges are
 * valid base64; the user name and password obey their limits; success only
 * for the right password (PLAIN/LOGIN) or a proof made from it (SCRAM),
 * never for an unknown user; failures carry a reason; a finished session
 * accepts nothing more. ASan/LSan catch leaks and overruns.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fe_sasl.h"
#include "fuzz_util.h"
#include "mp_error.h"
#include "mp_password.h"
#include "mp_scram.h"

#define FZ_USER "user"
#define FZ_PASSWORD "pencil"
#define FZ_MAX_MSGS 64
/* gs2 header of a valid name: "n,a=" + 3 escaped bytes per byte + "," */
#define SCRAM_GS2_LIMIT (4 + 3 * FE_SASL_USER_MAX + 1)

static struct mp_scram_cred fz_cred;
static int fz_cred_ready;

/* The account's record, made once (iteration count 1: the server never
 * runs PBKDF2, only our client helper does). */
static void fz_init(void)
{
	if (fz_cred_ready)
		return;
	uint8_t salted[MP_SHA256_LEN], ckey[MP_SHA256_LEN];
	memcpy(fz_cred.salt, "fuzz-salt-16byte", 16);
	fz_cred.salt_len = 16;
	fz_cred.iter = 1;
	CHECK(mp_pbkdf2_sha256(FZ_PASSWORD, strlen(FZ_PASSWORD), fz_cred.salt, 16, 1,
			       salted) == 0);
	CHECK(mp_hmac_sha256(salted, 32, "Client Key", 10, ckey) == 0);
	CHECK(mp_sha256(ckey, 32, fz_cred.stored_key) == 0);
	CHECK(mp_hmac_sha256(salted, 32, "Server Key", 10, fz_cred.server_key) == 0);
	fz_cred_ready = 1;
}

/* Decode a challenge; it must be valid base64. Returns malloc'd text. */
static char *fz_unb64(const char *text, size_t *len_r)
{
	size_t len = strlen(text), n = 0;
	uint8_t *out = malloc(len + 1);
	CHECK(out != NULL);
	CHECK(mp_base64_decode(text, len, out, len, &n) == 0);
	out[n] = '\0';
	*len_r = n;
	return (char *)out;
}

/* The right client-final for client-first cfirst (raw) and server-first
 * sfirst, with password FZ_PASSWORD against fz_cred's salt and count.
 * NULL when the exchange cannot be completed that way. */
static char *fz_client_final(const char *cfirst, size_t cf_len, const char *sfirst,
			     size_t *len_r)
{
	const char *c1 = memchr(cfirst, ',', cf_len);
	const char *c2 = c1 != NULL ? memchr(c1 + 1, ',', cf_len - (size_t)(c1 + 1 - cfirst)) : NULL;
	const char *sp = strstr(sfirst, ",s=");
	if (c2 == NULL || sp == NULL || strncmp(sfirst, "r=", 2) != 0)
		return NULL;
	size_t gs2_len = (size_t)(c2 + 1 - cfirst);
	char cb[4 * ((SCRAM_GS2_LIMIT + 2) / 3) + 1];
	if (gs2_len > SCRAM_GS2_LIMIT)
		return NULL;
	mp_base64_encode(cfirst, gs2_len, cb);

	uint8_t salted[32], ckey[32], csig[32], proof[32];
	CHECK(mp_pbkdf2_sha256(FZ_PASSWORD, strlen(FZ_PASSWORD), fz_cred.salt,
			       fz_cred.salt_len, fz_cred.iter, salted) == 0);
	CHECK(mp_hmac_sha256(salted, 32, "Client Key", 10, ckey) == 0);

	size_t nonce_len = (size_t)(sp - sfirst) - 2;
	size_t wp_cap = 2 + strlen(cb) + 3 + nonce_len + 1;
	char *wp = malloc(wp_cap);
	CHECK(wp != NULL);
	int wl = snprintf(wp, wp_cap, "c=%s,r=%.*s", cb, (int)nonce_len, sfirst + 2);
	CHECK(wl > 0 && (size_t)wl < wp_cap);
	size_t bare_len = cf_len - gs2_len, sf_len = strlen(sfirst);
	size_t am_len = bare_len + 1 + sf_len + 1 + (size_t)wl;
	char *am = malloc(am_len);
	CHECK(am != NULL);
	memcpy(am, cfirst + gs2_len, bare_len);
	am[bare_len] = ',';
	memcpy(am + bare_len + 1, sfirst, sf_len);
	am[bare_len + 1 + sf_len] = ',';
	memcpy(am + bare_len + 2 + sf_len, wp, (size_t)wl);
	CHECK(mp_sha256(ckey, 32, salted) == 0);  /* salted now holds StoredKey */
	CHECK(mp_hmac_sha256(salted, 32, am, am_len, csig) == 0);
	for (int i = 0; i < 32; i++)
		proof[i] = ckey[i] ^ csig[i];
	char p64[45];
	mp_base64_encode(proof, 32, p64);
	size_t out_cap = (size_t)wl + 3 + strlen(p64) + 1;
	char *out = malloc(out_cap);
	CHECK(out != NULL);
	int ol = snprintf(out, out_cap, "%s,p=%s", wp, p64);
	CHECK(ol > 0 && (size_t)ol < out_cap);
	free(wp);
	free(am);
	*len_r = (size_t)ol;
	return out;
}

static void fz_check_session(struct fe_sasl *s, enum fe_sasl_status st)
{
	const char *u = fe_sasl_user(s);
	if (u != NULL)
		CHECK(strlen(u) >= 1 && strlen(u) <= FE_SASL_USER_MAX);
	size_t plen = 99;
	const char *pw = fe_sasl_password(s, &plen);
	if (st == FE_SASL_NEED_PASSWORD) {
		CHECK(pw != NULL && u != NULL);
		CHECK(plen >= 1 && plen <= MP_PASSWORD_MAX && strlen(pw) == plen);
	} else {
		CHECK(pw == NULL && plen == 0);
	}
	if (st == FE_SASL_CHALLENGE) {
		size_t n = 0;
		free(fz_unb64(fe_sasl_challenge(s), &n));
	}
	int failed = st == FE_SASL_FAILED || st == FE_SASL_MALFORMED ||
		     st == FE_SASL_CANCELLED || st == FE_SASL_TEMPFAIL;
	CHECK(failed == (fe_sasl_reason(s)[0] != '\0'));
	CHECK(strstr(fe_sasl_reason(s), FZ_PASSWORD) == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	fz_init();
	uint8_t opt = data[0];
	enum fe_sasl_mech mech = (opt & 3) == 3 ? FE_SASL_MECH_SCRAM_SHA_256
						: (enum fe_sasl_mech)(opt & 3);
	int use_ir = (opt >> 2) & 1, raw_lines = (opt >> 4) & 1;
	unsigned flags = (opt >> 3) & 1 ? FE_SASL_F_SUCCESS_DATA : 0;
	static const int wrong_ret[8] = { MP_EPERM, MP_ENOENT, MP_EINVAL, MP_EUNAVAIL,
					  MP_EIO, MP_EPERM, MP_ETIMEDOUT, MP_EPERM };
	int wrong = wrong_ret[opt >> 5];

	const char *name = fe_sasl_mech_name(mech);
	struct fe_sasl *s = NULL;
	const char *err = NULL;
	CHECK(fe_sasl_new(name, strlen(name), flags, &s, &err) == 0);

	const char *p = (const char *)data + 1;
	size_t left = size - 1;
	char *cfirst = NULL;   /* last client message sent raw, for "!final" */
	size_t cf_len = 0;
	int started = 0, known_user = 0, right_password = 0, proof_made = 0;
	enum fe_sasl_status st = FE_SASL_CHALLENGE;

	for (int msgs = 0; msgs < FZ_MAX_MSGS; msgs++) {
		/* Act on what the session wants from us first. */
		if (started && st == FE_SASL_NEED_PASSWORD) {
			size_t plen = 0;
			const char *pw = fe_sasl_password(s, &plen);
			right_password = strcmp(fe_sasl_user(s), FZ_USER) == 0 &&
					 plen == strlen(FZ_PASSWORD) &&
					 memcmp(pw, FZ_PASSWORD, plen) == 0;
			CHECK(fe_sasl_password_result(s, right_password ? 0 : wrong, &st) == 0);
			fz_check_session(s, st);
			continue;
		}
		if (started && st == FE_SASL_NEED_SCRAM) {
			known_user = strcmp(fe_sasl_user(s), FZ_USER) == 0;
			CHECK(fe_sasl_scram_cred(s, known_user ? &fz_cred : NULL, &st) == 0);
			CHECK(st == FE_SASL_CHALLENGE);
			fz_check_session(s, st);
			continue;
		}
		if (started && st != FE_SASL_CHALLENGE)
			break;
		if (left == 0 && started)
			break;

		/* Next message: up to '\n'. */
		const char *nl = memchr(p, '\n', left);
		size_t mlen = nl != NULL ? (size_t)(nl - p) : left;
		const char *msg = p;
		p += mlen + (nl != NULL);
		left -= mlen + (nl != NULL);

		char *made = NULL;
		if (mlen == 6 && memcmp(msg, "!final", 6) == 0 && cfirst != NULL &&
		    started && mech == FE_SASL_MECH_SCRAM_SHA_256) {
			size_t sl = 0;
			char *sfirst = fz_unb64(fe_sasl_challenge(s), &sl);
			made = fz_client_final(cfirst, cf_len, sfirst, &mlen);
			free(sfirst);
			if (made != NULL) {
				msg = made;
				proof_made = 1;
			}
		}

		char *line = NULL;
		size_t line_len = mlen;
		if (raw_lines) {
			line = malloc(mlen + 1);
			CHECK(line != NULL);
			memcpy(line, msg, mlen);
		} else {
			line = malloc(4 * ((mlen + 2) / 3) + 1);
			CHECK(line != NULL);
			line_len = mp_base64_encode(msg, mlen, line);
		}
		if (!raw_lines && !made) {
			free(cfirst);
			cfirst = malloc(mlen + 1);
			CHECK(cfirst != NULL);
			memcpy(cfirst, msg, mlen);
			cf_len = mlen;
		}

		int ret;
		if (!started) {
			started = 1;
			if (use_ir && !(line_len == 0 && !raw_lines)) {
				ret = fe_sasl_start(s, line, line_len, &st);
			} else {
				ret = fe_sasl_start(s, NULL, 0, &st);
				if (ret == 0 && st == FE_SASL_CHALLENGE)
					ret = fe_sasl_step(s, line, line_len, &st);
			}
		} else {
			ret = fe_sasl_step(s, line, line_len, &st);
		}
		CHECK(ret == 0);
		free(line);
		free(made);
		fz_check_session(s, st);
	}

	if (st == FE_SASL_SUCCESS) {
		if (mech == FE_SASL_MECH_SCRAM_SHA_256) {
			CHECK(known_user && proof_made);
			CHECK((fe_sasl_success_data(s) != NULL) == ((flags & FE_SASL_F_SUCCESS_DATA) != 0));
		} else {
			CHECK(right_password);
			CHECK(fe_sasl_success_data(s) == NULL);
		}
		CHECK(strcmp(fe_sasl_user(s), FZ_USER) == 0);
	}
	if (st != FE_SASL_CHALLENGE && st != FE_SASL_NEED_PASSWORD && st != FE_SASL_NEED_SCRAM) {
		enum fe_sasl_status st2;
		CHECK(fe_sasl_step(s, "", 0, &st2) == MP_ESTATE);
		CHECK(fe_sasl_password_result(s, 0, &st2) == MP_ESTATE);
		CHECK(fe_sasl_scram_cred(s, NULL, &st2) == MP_ESTATE);
	}
	free(cfirst);
	fe_sasl_free(&s);
	CHECK(s == NULL);
	return 0;
}
