/*
 * fe_auth: SASL against the cluster's accounts (see fe_auth.h).
 */
#include "fe_auth.h"

#include <stdlib.h>
#include <string.h>

#include "fe_sasl.h"
#include "fe_store.h"
#include "mp_error.h"
#include "mp_password.h"
#include "mp_scram.h"
#include "mp_shard.h"

struct fe_auth {
	struct fe_sasl *sasl;          /* owned */
	enum fe_sasl_status st;
	bool success_data;
	/* lookup results, written by the worker */
	bool looked_up;
	int verify_ret;                /* NEED_PASSWORD: mp_password_verify's answer */
	bool have_cred;                /* NEED_SCRAM */
	struct mp_scram_cred cred;
	char user[512];                /* normalised */
	const char *reason;
};

int fe_auth_start(const char *mech, size_t mech_len, bool plaintext_ok,
		  bool success_data, const char *ir, size_t ir_len,
		  bool has_ir, struct fe_auth **a_r)
{
	enum fe_sasl_mech m;
	const char *err = NULL;
	*a_r = NULL;
	if (fe_sasl_mech_find(mech, mech_len, &m) < 0)
		return MP_EUNIMPL;
	if (fe_sasl_mech_plaintext(m) && !plaintext_ok)
		return MP_EPERM;
	struct fe_auth *a = calloc(1, sizeof(*a));
	if (a == NULL)
		return MP_ENOMEM;
	a->success_data = success_data;
	int ret = fe_sasl_new(mech, mech_len, success_data ? FE_SASL_F_SUCCESS_DATA : 0,
			      &a->sasl, &err);
	if (ret == 0)
		ret = fe_sasl_start(a->sasl, has_ir ? ir : NULL, ir_len, &a->st);
	if (ret < 0) {
		fe_auth_free(&a);
		return ret;
	}
	*a_r = a;
	return 0;
}

static enum fe_auth_status map(struct fe_auth *a, const char **out_r)
{
	*out_r = NULL;
	switch (a->st) {
	case FE_SASL_CHALLENGE:
		*out_r = fe_sasl_challenge(a->sasl);
		return FE_AUTH_CHALLENGE;
	case FE_SASL_NEED_PASSWORD:
	case FE_SASL_NEED_SCRAM:
		return FE_AUTH_NEED_LOOKUP;
	case FE_SASL_SUCCESS:
		*out_r = fe_sasl_success_data(a->sasl);
		return FE_AUTH_OK;
	case FE_SASL_FAILED:
		return FE_AUTH_FAIL;
	case FE_SASL_MALFORMED:
		return FE_AUTH_MALFORMED;
	case FE_SASL_CANCELLED:
		return FE_AUTH_CANCELLED;
	case FE_SASL_TEMPFAIL:
		return FE_AUTH_TEMPFAIL;
	}
	return FE_AUTH_MALFORMED;
}

enum fe_auth_status fe_auth_status(struct fe_auth *a, const char **out_r)
{
	if (a->looked_up) {
		/* Feed the worker's findings to the mechanism. */
		a->looked_up = false;
		int ret;
		if (a->st == FE_SASL_NEED_PASSWORD)
			ret = fe_sasl_password_result(a->sasl, a->verify_ret, &a->st);
		else
			ret = fe_sasl_scram_cred(a->sasl, a->have_cred ? &a->cred : NULL, &a->st);
		mp_wipe(&a->cred, sizeof(a->cred));
		if (ret < 0)
			a->st = FE_SASL_TEMPFAIL;
	}
	return map(a, out_r);
}

void fe_auth_input(struct fe_auth *a, const char *line, size_t len)
{
	if (fe_sasl_step(a->sasl, line, len, &a->st) < 0)
		a->st = FE_SASL_MALFORMED;
}

void fe_auth_job_run(struct fe_auth *a, struct fe_store *store)
{
	const char *given = fe_sasl_user(a->sasl);
	const char *err = NULL;
	char *hash = NULL, *scram = NULL, *error = NULL;
	bool active = false;
	int ret;

	a->looked_up = true;
	a->have_cred = false;
	a->user[0] = '\0';
	if (given == NULL ||
	    mp_user_normalize(given, strlen(given), a->user, sizeof(a->user), &err) < 0) {
		a->user[0] = '\0';
		ret = MP_ENOENT;
	} else {
		ret = fe_store_get_auth(store, a->user, &hash, &scram, &active, &error);
		free(error);
		if (ret == 0 && !active)
			ret = MP_ENOENT;  /* a disabled account fails like a wrong password */
	}
	if (a->st == FE_SASL_NEED_PASSWORD) {
		size_t plen = 0;
		const char *pw = fe_sasl_password(a->sasl, &plen);
		if (ret == 0)
			ret = (pw == NULL || hash[0] == '\0') ? MP_EPERM
							      : mp_password_verify(pw, plen, hash);
		a->verify_ret = ret;
	} else if (ret == 0 && scram[0] != '\0') {
		a->have_cred = mp_scram_parse(scram, &a->cred, &err) == 0;
	} else if (ret < 0 && ret != MP_ENOENT) {
		/* Storage trouble: without credentials the exchange would fail
		 * as "bad password"; make it a temporary failure instead. */
		a->verify_ret = ret;
		a->st = FE_SASL_TEMPFAIL;
		a->looked_up = false;
	}
	if (hash != NULL) {
		mp_wipe(hash, strlen(hash));
		free(hash);
	}
	if (scram != NULL) {
		mp_wipe(scram, strlen(scram));
		free(scram);
	}
}

const char *fe_auth_user(const struct fe_auth *a)
{
	if (a->st == FE_SASL_SUCCESS && a->user[0] != '\0')
		return a->user;
	const char *u = a->sasl != NULL ? fe_sasl_user(a->sasl) : NULL;
	return u != NULL ? u : "";
}

const char *fe_auth_reason(const struct fe_auth *a)
{
	return a->sasl != NULL ? fe_sasl_reason(a->sasl) : "";
}

void fe_auth_free(struct fe_auth **ap)
{
	struct fe_auth *a = *ap;
	if (a == NULL)
		return;
	*ap = NULL;
	fe_sasl_free(&a->sasl);
	mp_wipe(a, sizeof(*a));
	free(a);
}
