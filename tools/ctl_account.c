/*
 * ctl_account: merpatictl's domain and user commands.
 *
 * Passwords come only from stdin and are hashed here (yescrypt through
 * mp_password) so the node never sees one; a SCRAM-SHA-256 record (RFC
 * 5803, through mp_scram) is derived from the same password so SASL
 * SCRAM logins work; the buffer that held a password is wiped before
 * anything else happens. An imported hash (--hash-stdin) is checked with
 * mp_password_check_hash and stored as given, without a SCRAM record (the
 * node then clears any old one). A stored hash or SCRAM record is never
 * printed: "user show" names the hash's scheme and SCRAM's iterations
 * only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"
#include "mp_buf.h"
#include "mp_config.h"
#include "mp_error.h"
#include "mp_password.h"
#include "mp_scram.h"

#define CTL_SECRET_CAP (MP_PASSWORD_MAX + 8)

/* ------------------------------------------------------------- domains */

static int ctl_domain_arg(struct ctl *c, char *domain)
{
	const char *error;

	if (ctl_check_domain(domain, &error) != 0) {
		ctl_err(c, "bad domain \"%s\": %s", domain, error);
		return CTL_EXIT_INVALID;
	}
	return CTL_EXIT_OK;
}

/* Moves the paging cursor after to last, the final key of a page that said
 * "more". A page that does not move forward would loop for ever: last
 * must differ from the cursor, and with ordered also sort after it.
 * CTL_EXIT_OK, or CTL_EXIT_ERROR after a message. */
static int ctl_page_advance(struct ctl *c, const char *method,
			    const char *last, int ordered, char *after,
			    size_t after_size)
{
	int cmp = last != NULL ? strcmp(last, after) : 0;

	if (last == NULL || cmp == 0 || (ordered && cmp < 0) ||
	    strlen(last) >= after_size) {
		ctl_err(c, "%s: the node's paging did not advance", method);
		return CTL_EXIT_ERROR;
	}
	snprintf(after, after_size, "%s", last);
	return CTL_EXIT_OK;
}

int ctl_cmd_domain_add(struct ctl *c, char **args, int nargs)
{
	Merpati__V1__DomainRequest req = MERPATI__V1__DOMAIN_REQUEST__INIT;
	Merpati__V1__DomainReply *resp = NULL;
	char *name = args[0];
	int ret;

	(void)nargs;
	ret = ctl_domain_arg(c, name);
	if (ret != CTL_EXIT_OK)
		return ret;
	req.name = name;
	ret = ctl_call(c, "CreateDomain", &req.base,
		       &merpati__v1__domain_reply__descriptor,
		       (ProtobufCMessage **)&resp);
	if (ret != CTL_EXIT_OK)
		return ret;
	printf("created domain %s\n", name);
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return CTL_EXIT_OK;
}

int ctl_cmd_domain_list(struct ctl *c, char **args, int nargs)
{
	Merpati__V1__ListDomainsRequest req =
		MERPATI__V1__LIST_DOMAINS_REQUEST__INIT;
	char after[CTL_DOMAIN_LEN_MAX + 1] = "";
	char when[32];
	int pages, ret;

	(void)args;
	(void)nargs;
	req.limit = c->opt.page_size;
	for (pages = 0; pages < CTL_PAGES_MAX; pages++) {
		Merpati__V1__ListDomainsReply *resp = NULL;
		size_t i;
		const char *last;
		int more;

		req.after = after;
		ret = ctl_call(c, "ListDomains", &req.base,
			       &merpati__v1__list_domains_reply__descriptor,
			       (ProtobufCMessage **)&resp);
		if (ret != CTL_EXIT_OK)
			return ret;
		for (i = 0; i < resp->n_domains; i++) {
			const Merpati__V1__Domain *d = resp->domains[i];

			printf("%s created=%s\n", d->name,
			       ctl_fmt_time(d->created, when, sizeof when));
		}
		more = resp->more;
		last = resp->n_domains > 0 ?
		       resp->domains[resp->n_domains - 1]->name : NULL;
		if (more)
			ret = ctl_page_advance(c, "ListDomains", last, 1, after,
					       sizeof after);
		protobuf_c_message_free_unpacked(&resp->base, NULL);
		if (ret != CTL_EXIT_OK || !more)
			return ret;
	}
	ctl_err(c, "ListDomains: too many pages");
	return CTL_EXIT_ERROR;
}

int ctl_cmd_domain_del(struct ctl *c, char **args, int nargs)
{
	Merpati__V1__DomainRequest req = MERPATI__V1__DOMAIN_REQUEST__INIT;
	char *name = args[0];
	int ret;

	(void)nargs;
	ret = ctl_domain_arg(c, name);
	if (ret != CTL_EXIT_OK)
		return ret;
	req.name = name;
	ret = ctl_call_empty(c, "DeleteDomain", &req.base);
	if (ret != CTL_EXIT_OK)
		return ret;
	printf("deleted domain %s\n", name);
	return CTL_EXIT_OK;
}

/* --------------------------------------------------------------- users */

static int ctl_user_arg(struct ctl *c, char *user)
{
	const char *error;

	if (ctl_check_user(user, &error) != 0) {
		ctl_err(c, "bad user \"%s\": %s", user, error);
		return CTL_EXIT_INVALID;
	}
	return CTL_EXIT_OK;
}

/* The hash to store, from stdin: a new password hashed here, or with
 * --hash-stdin an existing hash checked and kept. *hash_r is malloc'd;
 * so is *scram_r, the SCRAM record of a new password (NULL for an imported
 * hash). */
static int ctl_hash_from_stdin(struct ctl *c, char **hash_r, char **scram_r)
{
	char secret[CTL_SECRET_CAP];
	const char *error = NULL;
	size_t len = 0;
	int err, ret = CTL_EXIT_OK;

	*hash_r = NULL;
	*scram_r = NULL;
	if (c->opt.hash_stdin) {
		err = ctl_read_line_stdin("Hash: ", secret, sizeof secret,
					  MP_HASH_MAX, &len, &error);
		if (err == 0) {
			err = mp_password_check_hash(secret, hash_r, &error);
			if (err != 0)
				*hash_r = NULL;
		}
		if (err != 0) {
			ctl_err(c, "refusing the hash on stdin: %s",
				error != NULL ? error : mp_strerror(err));
			ret = ctl_exit_for(err);
		}
		mp_memwipe(secret, sizeof secret);
		return ret;
	}

	err = ctl_read_line_stdin("Password: ", secret, sizeof secret,
				  MP_PASSWORD_MAX, &len, &error);
	if (err == 0 && isatty(STDIN_FILENO)) {
		/* Typed blind: ask again so a typo does not lock the user
		 * out. */
		char again[CTL_SECRET_CAP];
		size_t len2 = 0;

		err = ctl_read_line_stdin("Retype password: ", again,
					  sizeof again, MP_PASSWORD_MAX, &len2,
					  &error);
		if (err == 0 && (len2 != len || memcmp(again, secret, len) != 0)) {
			err = MP_EINVAL;
			error = "the passwords do not match";
		}
		mp_memwipe(again, sizeof again);
	}
	if (err != 0) {
		mp_memwipe(secret, sizeof secret);
		ctl_err(c, "refusing the password on stdin: %s", error);
		return ctl_exit_for(err);
	}
	err = mp_password_hash(secret, len, hash_r);
	if (err != 0) {
		mp_memwipe(secret, sizeof secret);
		*hash_r = NULL;
		ctl_err(c, "hashing the password failed: %s", mp_strerror(err));
		return CTL_EXIT_ERROR;
	}
	/* RFC 7677 §4: at least 4096 iterations (mp_scram's default). */
	err = mp_scram_make(secret, len, 0, scram_r);
	mp_memwipe(secret, sizeof secret);
	if (err != 0) {
		*scram_r = NULL;
		mp_memwipe(*hash_r, strlen(*hash_r));
		free(*hash_r);
		*hash_r = NULL;
		ctl_err(c, "deriving the SCRAM-SHA-256 keys failed: %s",
			mp_strerror(err));
		return CTL_EXIT_ERROR;
	}
	return CTL_EXIT_OK;
}

static void ctl_hash_free(char **hash)
{
	if (*hash != NULL) {
		mp_memwipe(*hash, strlen(*hash));
		free(*hash);
		*hash = NULL;
	}
}

static int ctl_parse_quota(struct ctl *c, const char *text, uint64_t *r)
{
	if (mp_parse_size(text, r) != 0) {
		ctl_err(c, "bad size \"%s\": expected bytes or a number with "
			"k, M, G (0 = unlimited)", text);
		return CTL_EXIT_INVALID;
	}
	return CTL_EXIT_OK;
}

int ctl_cmd_user_add(struct ctl *c, char **args, int nargs)
{
	Merpati__V1__CreateAccountRequest req =
		MERPATI__V1__CREATE_ACCOUNT_REQUEST__INIT;
	Merpati__V1__AccountReply *resp = NULL;
	char *hash = NULL, *scram = NULL;
	uint64_t quota = 0;
	int ret;

	(void)nargs;
	ret = ctl_user_arg(c, args[0]);
	if (ret != CTL_EXIT_OK)
		return ret;
	if (c->opt.quota != NULL) {
		ret = ctl_parse_quota(c, c->opt.quota, &quota);
		if (ret != CTL_EXIT_OK)
			return ret;
	}
	ret = ctl_hash_from_stdin(c, &hash, &scram);
	if (ret != CTL_EXIT_OK)
		return ret;
	req.user = args[0];
	req.password_hash = hash;
	req.scram_sha256 = scram != NULL ? scram : (char *)"";
	req.quota_bytes = quota;
	ret = ctl_call(c, "CreateAccount", &req.base,
		       &merpati__v1__account_reply__descriptor,
		       (ProtobufCMessage **)&resp);
	ctl_hash_free(&hash);
	ctl_hash_free(&scram);
	if (ret != CTL_EXIT_OK)
		return ret;
	if (resp->account != NULL)
		printf("created user %s shard=%u\n", resp->account->user,
		       resp->account->shard);
	else
		printf("created user %s\n", args[0]);
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return CTL_EXIT_OK;
}

int ctl_cmd_user_list(struct ctl *c, char **args, int nargs)
{
	Merpati__V1__ListAccountsRequest req =
		MERPATI__V1__LIST_ACCOUNTS_REQUEST__INIT;
	char after[CTL_USER_LEN_MAX + 1] = "";
	char quota[32];
	int pages, ret;

	req.domain = (char *)"";
	if (nargs == 1) {
		ret = ctl_domain_arg(c, args[0]);
		if (ret != CTL_EXIT_OK)
			return ret;
		req.domain = args[0];
	}
	if (c->opt.etcd != NULL)
		return ctl_user_list_cluster(c, req.domain);
	req.limit = c->opt.page_size;
	for (pages = 0; pages < CTL_PAGES_MAX; pages++) {
		Merpati__V1__ListAccountsReply *resp = NULL;
		size_t i;
		const char *last;
		int more;

		req.after = after;
		ret = ctl_call(c, "ListAccounts", &req.base,
			       &merpati__v1__list_accounts_reply__descriptor,
			       (ProtobufCMessage **)&resp);
		if (ret != CTL_EXIT_OK)
			return ret;
		for (i = 0; i < resp->n_accounts; i++) {
			const Merpati__V1__Account *a = resp->accounts[i];

			printf("%s state=%s quota=%s used=%llu messages=%llu "
			       "shard=%u\n", a->user, ctl_state_name(a->state),
			       ctl_fmt_size(a->quota_bytes, 1, quota,
					    sizeof quota),
			       (unsigned long long)a->used_bytes,
			       (unsigned long long)a->messages, a->shard);
		}
		more = resp->more;
		last = resp->n_accounts > 0 ?
		       resp->accounts[resp->n_accounts - 1]->user : NULL;
		if (more)
			ret = ctl_page_advance(c, "ListAccounts", last, 0, after,
					       sizeof after);
		protobuf_c_message_free_unpacked(&resp->base, NULL);
		if (ret != CTL_EXIT_OK || !more)
			return ret;
	}
	ctl_err(c, "ListAccounts: too many pages");
	return CTL_EXIT_ERROR;
}

int ctl_cmd_user_del(struct ctl *c, char **args, int nargs)
{
	Merpati__V1__UserRequest req = MERPATI__V1__USER_REQUEST__INIT;
	int ret;

	(void)nargs;
	ret = ctl_user_arg(c, args[0]);
	if (ret != CTL_EXIT_OK)
		return ret;
	req.user = args[0];
	ret = ctl_call_empty(c, "DeleteAccount", &req.base);
	if (ret != CTL_EXIT_OK)
		return ret;
	printf("deleted user %s\n", args[0]);
	return CTL_EXIT_OK;
}

int ctl_cmd_user_passwd(struct ctl *c, char **args, int nargs)
{
	Merpati__V1__SetPasswordRequest req =
		MERPATI__V1__SET_PASSWORD_REQUEST__INIT;
	char *hash = NULL, *scram = NULL;
	int ret;

	(void)nargs;
	ret = ctl_user_arg(c, args[0]);
	if (ret != CTL_EXIT_OK)
		return ret;
	ret = ctl_hash_from_stdin(c, &hash, &scram);
	if (ret != CTL_EXIT_OK)
		return ret;
	req.user = args[0];
	req.password_hash = hash;
	req.scram_sha256 = scram != NULL ? scram : (char *)"";
	ret = ctl_call_empty(c, "SetPassword", &req.base);
	ctl_hash_free(&hash);
	ctl_hash_free(&scram);
	if (ret != CTL_EXIT_OK)
		return ret;
	printf("password of %s changed\n", args[0]);
	return CTL_EXIT_OK;
}

int ctl_cmd_user_show(struct ctl *c, char **args, int nargs)
{
	Merpati__V1__UserRequest req = MERPATI__V1__USER_REQUEST__INIT;
	Merpati__V1__AccountReply *resp = NULL;
	const Merpati__V1__Account *a;
	char quota[32], when[32], scheme[80];
	int ret;

	(void)nargs;
	ret = ctl_user_arg(c, args[0]);
	if (ret != CTL_EXIT_OK)
		return ret;
	req.user = args[0];
	ret = ctl_call(c, "GetAccount", &req.base,
		       &merpati__v1__account_reply__descriptor,
		       (ProtobufCMessage **)&resp);
	if (ret != CTL_EXIT_OK)
		return ret;
	a = resp->account;
	if (a == NULL) {
		protobuf_c_message_free_unpacked(&resp->base, NULL);
		ctl_err(c, "GetAccount: the node sent no account");
		return CTL_EXIT_ERROR;
	}
	printf("user: %s\n", a->user);
	printf("state: %s\n", ctl_state_name(a->state));
	if (a->quota_bytes == 0)
		printf("quota: unlimited\n");
	else
		printf("quota: %s (%llu bytes)\n",
		       ctl_fmt_size(a->quota_bytes, 0, quota, sizeof quota),
		       (unsigned long long)a->quota_bytes);
	printf("used: %llu bytes\n", (unsigned long long)a->used_bytes);
	printf("messages: %llu\n", (unsigned long long)a->messages);
	printf("shard: %u\n", a->shard);
	printf("created: %s\n", ctl_fmt_time(a->created, when, sizeof when));
	/* Only the scheme: salt and digest stay with the node. */
	printf("hash: %s\n", ctl_hash_scheme(a->password_hash, scheme,
					     sizeof scheme));
	/* Whether SCRAM logins work, and the cost; never the keys. */
	if (a->scram_sha256 != NULL && *a->scram_sha256 != '\0') {
		struct mp_scram_cred cred;
		const char *error = NULL;

		if (mp_scram_parse(a->scram_sha256, &cred, &error) == 0)
			printf("scram: SCRAM-SHA-256 iterations=%u\n",
			       cred.iter);
		else
			printf("scram: unreadable record\n");
		mp_wipe(&cred, sizeof cred);
		mp_memwipe(a->scram_sha256, strlen(a->scram_sha256));
	} else {
		printf("scram: none\n");
	}
	if (a->password_hash != NULL)
		mp_memwipe(a->password_hash, strlen(a->password_hash));
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return CTL_EXIT_OK;
}

int ctl_cmd_user_quota(struct ctl *c, char **args, int nargs)
{
	Merpati__V1__SetQuotaRequest req = MERPATI__V1__SET_QUOTA_REQUEST__INIT;
	uint64_t quota;
	char text[32];
	int ret;

	(void)nargs;
	ret = ctl_user_arg(c, args[0]);
	if (ret != CTL_EXIT_OK)
		return ret;
	ret = ctl_parse_quota(c, args[1], &quota);
	if (ret != CTL_EXIT_OK)
		return ret;
	req.user = args[0];
	req.quota_bytes = quota;
	ret = ctl_call_empty(c, "SetQuota", &req.base);
	if (ret != CTL_EXIT_OK)
		return ret;
	printf("quota of %s set to %s\n", args[0],
	       ctl_fmt_size(quota, 1, text, sizeof text));
	return CTL_EXIT_OK;
}

static int ctl_set_state(struct ctl *c, char *user,
			 Merpati__V1__AccountState st)
{
	Merpati__V1__SetStateRequest req = MERPATI__V1__SET_STATE_REQUEST__INIT;
	int ret;

	ret = ctl_user_arg(c, user);
	if (ret != CTL_EXIT_OK)
		return ret;
	req.user = user;
	req.state = st;
	ret = ctl_call_empty(c, "SetState", &req.base);
	if (ret != CTL_EXIT_OK)
		return ret;
	printf("user %s is %s\n", user, ctl_state_name(st));
	return CTL_EXIT_OK;
}

int ctl_cmd_user_disable(struct ctl *c, char **args, int nargs)
{
	(void)nargs;
	return ctl_set_state(c, args[0],
			     MERPATI__V1__ACCOUNT_STATE__ACCOUNT_DISABLED);
}

int ctl_cmd_user_enable(struct ctl *c, char **args, int nargs)
{
	(void)nargs;
	return ctl_set_state(c, args[0],
			     MERPATI__V1__ACCOUNT_STATE__ACCOUNT_ACTIVE);
}
