/*
 * fe_auth: SASL authentication against the cluster's accounts, shared by
 * every protocol. Wraps frontend/auth/fe_sasl (the pure mechanism state
 * machines) with the lookup that needs storage and crypt: the session runs
 * fe_auth_job_run on a worker (fe_job), then asks fe_auth_status again on
 * its loop.
 *
 * The authenticated name is the account's normalised address.
 * Never: run a lookup or crypt on a loop; tell a client whether a user
 * exists; log a password.
 */
#ifndef FE_AUTH_H
#define FE_AUTH_H

#include <stdbool.h>
#include <stddef.h>

struct fe_store;
struct fe_auth;

enum fe_auth_status {
	FE_AUTH_CHALLENGE,    /* send the text of *out_r (base64) */
	FE_AUTH_NEED_LOOKUP,  /* run fe_auth_job_run on a worker, then ask again */
	FE_AUTH_OK,           /* authenticated as fe_auth_user() */
	FE_AUTH_FAIL,         /* bad credentials */
	FE_AUTH_MALFORMED,    /* broken exchange */
	FE_AUTH_CANCELLED,    /* client sent "*" */
	FE_AUTH_TEMPFAIL,     /* storage unavailable: try later */
};

/* mech/ir as the client sent them (ir base64; has_ir false when none).
 * plaintext_ok: PLAIN/LOGIN allowed (TLS active, or configured).
 * success_data: the protocol can carry data with its success reply (IMAP);
 * SMTP cannot, so SCRAM's last message is one more challenge.
 * 0, MP_EUNIMPL (unknown mechanism), MP_EPERM (plaintext mechanism without
 * TLS), MP_ENOMEM. */
int fe_auth_start(const char *mech, size_t mech_len, bool plaintext_ok,
		  bool success_data, const char *ir, size_t ir_len,
		  bool has_ir, struct fe_auth **a_r);
/* Where the exchange stands; *out_r: the challenge (CHALLENGE) or the
 * success data (OK, may be NULL). */
enum fe_auth_status fe_auth_status(struct fe_auth *a, const char **out_r);
/* A response line from the client (CRLF stripped). */
void fe_auth_input(struct fe_auth *a, const char *line, size_t len);
/* On a worker, after FE_AUTH_NEED_LOOKUP. */
void fe_auth_job_run(struct fe_auth *a, struct fe_store *store);
/* The normalised user after FE_AUTH_OK (borrowed), else the name as given
 * or "". */
const char *fe_auth_user(const struct fe_auth *a);
const char *fe_auth_reason(const struct fe_auth *a);
void fe_auth_free(struct fe_auth **a);

#endif
