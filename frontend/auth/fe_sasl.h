/*
 * fe_sasl: the server side of SASL (RFC 4422) for every protocol of
 * merpati-frontend (SMTP AUTH, IMAP AUTHENTICATE, POP3 AUTH): PLAIN
 * (RFC 4616), LOGIN (draft-murchison-sasl-login), SCRAM-SHA-256 (RFC 5802,
 * RFC 7677) without channel binding (no -PLUS is offered).
 *
 * A pure state machine: base64 lines in, base64 challenges and requests to
 * the caller out. It never does I/O, never blocks, never reads storage and
 * never logs; the caller looks accounts up and runs mp_password_verify on a
 * worker, then feeds the result back. It never puts a password into a
 * reason string, and wipes every buffer that held a password or a key.
 *
 * Typical use (SMTP: "AUTH <mech> [initial-response]"):
 *
 *   fe_sasl_new(mech, len, flags, &s, &err)   MP_EUNIMPL -> 504 5.5.4
 *   fe_sasl_start(s, ir_or_NULL, ir_len, &st)
 *   loop on st:
 *     FE_SASL_CHALLENGE      send "334 " + fe_sasl_challenge(s); read a line;
 *                            fe_sasl_step(s, line, len, &st)
 *     FE_SASL_NEED_PASSWORD  look up fe_sasl_user(s), mp_password_verify(
 *                            fe_sasl_password(s), hash) on a worker;
 *                            fe_sasl_password_result(s, ret, &st)
 *     FE_SASL_NEED_SCRAM     look up fe_sasl_user(s), mp_scram_parse its
 *                            record; fe_sasl_scram_cred(s, &cred or NULL, &st)
 *     FE_SASL_SUCCESS        235 2.7.0 / OK; a session made with
 *                            FE_SASL_F_SUCCESS_DATA also has
 *                            fe_sasl_success_data(s) to send with it
 *     FE_SASL_FAILED         535 5.7.8 / NO [AUTHENTICATIONFAILED]
 *     FE_SASL_MALFORMED      501 5.5.2 / BAD
 *     FE_SASL_CANCELLED      501 5.0.0 / BAD (client sent "*")
 *     FE_SASL_TEMPFAIL       454 4.7.0 / NO [UNAVAILABLE]
 *   log fe_sasl_reason(s) on anything but success; fe_sasl_free(&s).
 *
 * A session belongs to one connection (one thread); sessions on different
 * threads are independent.
 */
#ifndef FE_SASL_H
#define FE_SASL_H

#include <stddef.h>
#include <stdint.h>

#include "mp_scram.h"

/* Limits. A response is bounded before it is decoded. */
#define FE_SASL_RESPONSE_MAX 8192  /* decoded bytes of one client response */
#define FE_SASL_LINE_MAX (4 * ((FE_SASL_RESPONSE_MAX + 2) / 3))  /* its base64 */
#define FE_SASL_USER_MAX 255       /* bytes of a user name (authcid) */
#define FE_SASL_MECH_NAME_MAX 20   /* RFC 4422 §3.1 */
#define FE_SASL_TEST_NONCE_MAX 64

enum fe_sasl_mech {
	FE_SASL_MECH_PLAIN,
	FE_SASL_MECH_LOGIN,
	FE_SASL_MECH_SCRAM_SHA_256,
	FE_SASL_MECH_COUNT
};

enum fe_sasl_status {
	FE_SASL_CHALLENGE,      /* send fe_sasl_challenge(), then fe_sasl_step() */
	FE_SASL_NEED_PASSWORD,  /* verify the password, then fe_sasl_password_result() */
	FE_SASL_NEED_SCRAM,     /* look the user up, then fe_sasl_scram_cred() */
	FE_SASL_SUCCESS,        /* authenticated as fe_sasl_user() */
	FE_SASL_FAILED,         /* bad credentials (535 5.7.8 / NO) */
	FE_SASL_MALFORMED,      /* malformed exchange (501 / BAD) */
	FE_SASL_CANCELLED,      /* client answered "*" (501 / BAD) */
	FE_SASL_TEMPFAIL,       /* our failure: try again later (454 4.7.0 / NO) */
};

/* Flags for fe_sasl_new. */
/* The protocol carries "additional data with success" in its success reply
 * (RFC 4422 §3.6). Without this flag, SCRAM's server-final message goes out
 * as one more FE_SASL_CHALLENGE which the client must answer with an empty
 * response (RFC 5802 §5); fe_sasl_awaiting_empty() is then true. */
#define FE_SASL_F_SUCCESS_DATA (1u << 0)

struct fe_sasl;

/* Mechanism by name (case-insensitive, len bytes, no NUL needed).
 * 0, or MP_EUNIMPL for a mechanism we do not have. */
int fe_sasl_mech_find(const char *name, size_t len, enum fe_sasl_mech *mech_r);
/* Upper-case name for EHLO/CAPABILITY ("PLAIN", ...); NULL if out of range. */
const char *fe_sasl_mech_name(enum fe_sasl_mech mech);
/* 1 when the mechanism sends the password in clear: offer it only on a TLS
 * connection (RFC 4954 §4: 538 5.7.11 otherwise). */
int fe_sasl_mech_plaintext(enum fe_sasl_mech mech);
/* Short stable name of a status, for logs. */
const char *fe_sasl_status_name(enum fe_sasl_status status);

/* A session for mechanism name (len bytes). 0, MP_EUNIMPL for an unknown
 * mechanism (504 / NO), MP_ENOMEM; *error_r static. */
int fe_sasl_new(const char *name, size_t len, unsigned flags,
		struct fe_sasl **s_r, const char **error_r);
/* Wipes every secret. Safe on NULL and twice. */
void fe_sasl_free(struct fe_sasl **s);

/* Begin. ir is the initial response exactly as the client sent it (base64;
 * "=" means an empty one, RFC 4954 §4 / RFC 4959 §3), or NULL when it sent
 * none. 0 with *status_r, or MP_ESTATE when already started. */
int fe_sasl_start(struct fe_sasl *s, const char *ir, size_t len,
		  enum fe_sasl_status *status_r);
/* One response line from the client (base64, CRLF stripped; "*" cancels;
 * an empty line is an empty response). 0 with *status_r, or MP_ESTATE when
 * the session is not waiting for a response (a caller bug). */
int fe_sasl_step(struct fe_sasl *s, const char *line, size_t len,
		 enum fe_sasl_status *status_r);

/* After FE_SASL_NEED_PASSWORD: what mp_password_verify returned for the
 * user's hash, or the lookup's error: 0 -> SUCCESS; MP_EPERM (wrong
 * password), MP_ENOENT (no such user), MP_EINVAL (unusable hash) -> FAILED;
 * anything else (unavailable, timeout, ...) -> TEMPFAIL. The password is
 * wiped here. 0 with *status_r, or MP_ESTATE. */
int fe_sasl_password_result(struct fe_sasl *s, int verify_ret,
			    enum fe_sasl_status *status_r);
/* After FE_SASL_NEED_SCRAM: the user's credentials, or NULL when there is no
 * such user or it has no SCRAM record. With NULL the exchange goes on with
 * a salt and iteration count derived from the user name and a secret, so
 * the server-first message does not reveal that the user is unknown; it
 * then fails after client-final exactly like a wrong password. cred is
 * copied. 0 with *status_r (CHALLENGE or TEMPFAIL), MP_ESTATE, or MP_EINVAL
 * for a cred no mp_scram_parse would return. */
int fe_sasl_scram_cred(struct fe_sasl *s, const struct mp_scram_cred *cred,
		       enum fe_sasl_status *status_r);

/* After FE_SASL_CHALLENGE: the base64 text to send ("" for an empty
 * challenge). Valid until the next call on s. */
const char *fe_sasl_challenge(const struct fe_sasl *s);
/* 1 when the current challenge is SCRAM's server-final message and only an
 * empty response (or "*") is acceptable. */
int fe_sasl_awaiting_empty(const struct fe_sasl *s);
/* After FE_SASL_SUCCESS with FE_SASL_F_SUCCESS_DATA: base64 additional data
 * for the success reply (SCRAM's "v=..."), or NULL when there is none. */
const char *fe_sasl_success_data(const struct fe_sasl *s);
/* The authentication identity once parsed (NUL-terminated, at most
 * FE_SASL_USER_MAX bytes, valid UTF-8 without control characters), else
 * NULL. Stays available after failure, for logs. */
const char *fe_sasl_user(const struct fe_sasl *s);
/* During FE_SASL_NEED_PASSWORD: the password (NUL-terminated, holds no NUL,
 * at most MP_PASSWORD_MAX bytes), else NULL. Borrowed: a worker reading it
 * must finish before fe_sasl_password_result or fe_sasl_free. */
const char *fe_sasl_password(const struct fe_sasl *s, size_t *len_r);
/* Why the session failed (static text for logs, never a password or user
 * input); "" while nothing went wrong. */
const char *fe_sasl_reason(const struct fe_sasl *s);
enum fe_sasl_mech fe_sasl_mech(const struct fe_sasl *s);

/* Secret from which unknown users' fake SCRAM salts are derived (hashed,
 * any length >= 16). Optional: without it each process draws a random one
 * at first use, and then two frontends give an unknown user different
 * salts. Set the same configured secret on every frontend to avoid that.
 * 0 or MP_EINVAL. Thread-safe. */
int fe_sasl_set_fake_secret(const void *key, size_t len);

/* Test hook: use nonce (printable, 1..FE_SASL_TEST_NONCE_MAX bytes, no ',')
 * as the SCRAM server nonce instead of a random one, to reproduce the
 * RFC 7677 §3 exchange. Only before the server-first message. 0, MP_EINVAL
 * or MP_ESTATE. Never call it outside tests. */
int fe_sasl_test_set_nonce(struct fe_sasl *s, const char *nonce, size_t len);

#endif
