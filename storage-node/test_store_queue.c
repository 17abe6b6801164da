/*
 * test_store_queue: aliases, recipient resolution, SCRAM records on
 * accounts and the outbound queue, through store_call against a real
 * RocksDB in a temporary directory: the alias rules and the account/alias
 * exclusion, ResolveRecipient, queue add/claim/update/lease expiry/
 * delete/retry, owner checks, request-id deduplication of QueueAdd and
 * QueueClaim, not-leader refusal, and that shard snapshots, digests and
 * replication carry the new keys; the POP3 maildrop lock (grant, refusal,
 * renewal, release, lease expiry, limits, retries, durability, deletion
 * with its account, replication).
 *
 * Lease expiry is tested with 1 ms leases and a bounded wait until the
 * node's clock has passed the lease's end; no test asserts a duration.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mailstore.pb-c.h"
#include "mp_error.h"
#include "mp_scram.h"
#include "mp_shard.h"
#include "store.h"

#define SHARDS 4
#define WAIT_MS 5000 /* bound of every wait for the clock to pass a lease */

/* ------------------------------------------------------------ harness */

struct result {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int done;
	int err;
	char msg[512];
	uint8_t *packed;
	size_t len;
};

static void done_cb(int err, const char *errmsg, const ProtobufCMessage *reply, void *arg)
{
	struct result *r = arg;
	pthread_mutex_lock(&r->mu);
	r->err = err;
	snprintf(r->msg, sizeof(r->msg), "%s", errmsg ? errmsg : "");
	if (err == 0 && reply != NULL) {
		r->len = protobuf_c_message_get_packed_size(reply);
		r->packed = malloc(r->len + 1);
		if (r->packed != NULL)
			protobuf_c_message_pack(reply, r->packed);
	}
	r->done = 1;
	pthread_cond_signal(&r->cv);
	pthread_mutex_unlock(&r->mu);
}

static char last_msg[512];

/* One call, waited for; *rep_r unpacked (caller frees) when d is given. */
static int call(struct store *st, enum store_op op, const void *req,
		const ProtobufCMessageDescriptor *d, void *rep_r)
{
	struct result r;
	memset(&r, 0, sizeof(r));
	pthread_mutex_init(&r.mu, NULL);
	pthread_cond_init(&r.cv, NULL);
	int ret = store_call(st, op, req, done_cb, &r);
	if (ret < 0)
		return ret;
	pthread_mutex_lock(&r.mu);
	while (!r.done)
		pthread_cond_wait(&r.cv, &r.mu);
	pthread_mutex_unlock(&r.mu);
	memcpy(last_msg, r.msg, sizeof(last_msg));
	if (r.err == 0 && rep_r != NULL && d != NULL) {
		assert_non_null(r.packed);
		ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, r.len, r.packed);
		assert_non_null(m);
		*(ProtobufCMessage **)rep_r = m;
	}
	free(r.packed);
	pthread_mutex_destroy(&r.mu);
	pthread_cond_destroy(&r.cv);
	return r.err;
}

#define FREE(m) protobuf_c_message_free_unpacked(&(m)->base, NULL)

static char dir[256];

static struct store *open_dir(const char *d)
{
	struct store_opts o = {
		.data_dir = d, .node_id = "t", .shards = SHARDS,
		.max_message_size = 1 << 20, .log_retain = 1000, .max_pending = 1000,
	};
	struct store *st = NULL;
	char *err = NULL;
	int r = store_open(&o, &st, &err);
	if (r < 0)
		fprintf(stderr, "store_open: %s\n", err ? err : "?");
	free(err);
	assert_int_equal(r, 0);
	return st;
}

static int setup(void **state)
{
	snprintf(dir, sizeof(dir), "/tmp/merpati-test-queue-XXXXXX");
	assert_non_null(mkdtemp(dir));
	*state = open_dir(dir);
	return 0;
}

static void rm_dir(const char *d)
{
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d);
	assert_int_equal(system(cmd), 0);
}

static int teardown(void **state)
{
	struct store *st = *state;
	store_close(&st);
	rm_dir(dir);
	return 0;
}

static uint64_t wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* Returns once the wall clock (the node's) is past t; bounded. */
static void wait_past(uint64_t t)
{
	for (int i = 0; i < WAIT_MS && wall_ms() <= t; i++)
		sleep_ms(1);
	assert_true(wall_ms() > t);
}

static void mk_domain(struct store *st, const char *name)
{
	Merpati__V1__DomainRequest q = MERPATI__V1__DOMAIN_REQUEST__INIT;
	q.name = (char *)name;
	assert_int_equal(call(st, STORE_CREATE_DOMAIN, &q, NULL, NULL), 0);
}

static int mk_user(struct store *st, const char *user)
{
	Merpati__V1__CreateAccountRequest q = MERPATI__V1__CREATE_ACCOUNT_REQUEST__INIT;
	q.user = (char *)user;
	q.password_hash = "$y$j9T$salt$hash";
	return call(st, STORE_CREATE_ACCOUNT, &q, NULL, NULL);
}

static int set_alias(struct store *st, const char *alias, const char **targets, size_t n,
		     Merpati__V1__AliasReply **rep_r)
{
	Merpati__V1__AliasRequest q = MERPATI__V1__ALIAS_REQUEST__INIT;
	q.alias = (char *)alias;
	q.targets = (char **)targets;
	q.n_targets = n;
	return call(st, STORE_SET_ALIAS, &q, &merpati__v1__alias_reply__descriptor, rep_r);
}

static int alias_op(struct store *st, enum store_op op, const char *alias,
		    Merpati__V1__AliasReply **rep_r)
{
	Merpati__V1__AliasRequest q = MERPATI__V1__ALIAS_REQUEST__INIT;
	q.alias = (char *)alias;
	return call(st, op, &q, rep_r ? &merpati__v1__alias_reply__descriptor : NULL, rep_r);
}

static Merpati__V1__ResolveReply *resolve(struct store *st, const char *user)
{
	Merpati__V1__UserRequest q = MERPATI__V1__USER_REQUEST__INIT;
	Merpati__V1__ResolveReply *rep = NULL;
	q.user = (char *)user;
	assert_int_equal(call(st, STORE_RESOLVE_RECIPIENT, &q,
			      &merpati__v1__resolve_reply__descriptor, &rep), 0);
	return rep;
}

static uint32_t shard_of(const char *user)
{
	return mp_shard_of(user, strlen(user), SHARDS);
}

/* A queue entry to fill: sender, n recipients (all pending). */
struct qentry {
	Merpati__V1__QueueEntry e;
	Merpati__V1__QueueRcpt r[4];
	Merpati__V1__QueueRcpt *rp[4];
};

static void qentry_init(struct qentry *q, const char *sender, size_t n)
{
	static const char *rcpts[] = { "x@remote.test", "Y@Remote.Test", "z@remote.test",
				       "w@remote.test" };
	merpati__v1__queue_entry__init(&q->e);
	q->e.sender = (char *)sender;
	for (size_t i = 0; i < n && i < 4; i++) {
		merpati__v1__queue_rcpt__init(&q->r[i]);
		q->r[i].address = (char *)rcpts[i];
		q->rp[i] = &q->r[i];
	}
	q->e.rcpts = q->rp;
	q->e.n_rcpts = n;
}

static int queue_add(struct store *st, uint32_t shard, const Merpati__V1__QueueEntry *e,
		     const char *body, const char *rid, char *id_out, size_t idlen)
{
	Merpati__V1__QueueAddRequest q = MERPATI__V1__QUEUE_ADD_REQUEST__INIT;
	Merpati__V1__QueueAddReply *rep = NULL;
	q.shard = shard;
	q.entry = (Merpati__V1__QueueEntry *)e;
	q.body.data = (uint8_t *)body;
	q.body.len = strlen(body);
	q.request_id = (char *)(rid ? rid : "");
	int r = call(st, STORE_QUEUE_ADD, &q, &merpati__v1__queue_add_reply__descriptor, &rep);
	if (r == 0) {
		if (id_out != NULL)
			snprintf(id_out, idlen, "%s", rep->id);
		FREE(rep);
	}
	return r;
}

static int claim(struct store *st, uint32_t shard, const char *owner, uint64_t lease_ms,
		 uint32_t limit, const char *rid, Merpati__V1__QueueClaimReply **rep_r)
{
	Merpati__V1__QueueClaimRequest q = MERPATI__V1__QUEUE_CLAIM_REQUEST__INIT;
	q.shard = shard;
	q.owner = (char *)owner;
	q.lease_ms = lease_ms;
	q.limit = limit;
	q.request_id = (char *)(rid ? rid : "");
	return call(st, STORE_QUEUE_CLAIM, &q, &merpati__v1__queue_claim_reply__descriptor,
		    rep_r);
}

static int update(struct store *st, uint32_t shard, const char *id, const char *owner,
		  const uint32_t *idx, const int *states, size_t n, uint64_t next_due,
		  Merpati__V1__QueueUpdateReply **rep_r)
{
	Merpati__V1__QueueUpdateRequest q = MERPATI__V1__QUEUE_UPDATE_REQUEST__INIT;
	Merpati__V1__RcptUpdate u[4], *up[4];
	assert_true(n <= 4);
	for (size_t i = 0; i < n; i++) {
		merpati__v1__rcpt_update__init(&u[i]);
		u[i].index = idx[i];
		u[i].state = states[i];
		u[i].code = states[i] == MERPATI__V1__QUEUE_RCPT_STATE__RCPT_DELIVERED ? 250 : 451;
		u[i].text = states[i] == MERPATI__V1__QUEUE_RCPT_STATE__RCPT_DELIVERED
				    ? "2.0.0 ok" : "4.4.1 try later";
		up[i] = &u[i];
	}
	q.shard = shard;
	q.id = (char *)id;
	q.owner = (char *)owner;
	q.rcpts = up;
	q.n_rcpts = n;
	q.next_due_ms = next_due;
	q.last_error = "connection refused";
	return call(st, STORE_QUEUE_UPDATE, &q,
		    rep_r ? &merpati__v1__queue_update_reply__descriptor : NULL, rep_r);
}

static int queue_id_op(struct store *st, enum store_op op, uint32_t shard, const char *id,
		       bool with_body, Merpati__V1__QueuedMessage **rep_r)
{
	Merpati__V1__QueueIdRequest q = MERPATI__V1__QUEUE_ID_REQUEST__INIT;
	q.shard = shard;
	q.id = (char *)id;
	q.with_body = with_body;
	return call(st, op, &q, rep_r ? &merpati__v1__queued_message__descriptor : NULL, rep_r);
}

static Merpati__V1__QueueListReply *queue_list(struct store *st, uint32_t shard,
					       const char *after, uint32_t limit)
{
	Merpati__V1__QueueListRequest q = MERPATI__V1__QUEUE_LIST_REQUEST__INIT;
	Merpati__V1__QueueListReply *rep = NULL;
	q.shard = shard;
	q.after = (char *)(after ? after : "");
	q.limit = limit;
	assert_int_equal(call(st, STORE_QUEUE_LIST, &q,
			      &merpati__v1__queue_list_reply__descriptor, &rep), 0);
	return rep;
}

static void digest(struct store *st, uint32_t shard, uint8_t sha[32], uint64_t *keys)
{
	uint64_t e, l;
	assert_int_equal(store_shard_digest(st, shard, sha, keys, &e, &l), 0);
}

/* ------------------------------------------------------------ aliases */

static void test_alias_rules(void **state)
{
	struct store *st = *state;
	const char *t1[] = { "Bob@Example.Test", "carol@elsewhere.test", "bob@example.test" };
	Merpati__V1__AliasReply *rep = NULL;

	/* the alias's domain must exist */
	assert_int_equal(set_alias(st, "team@example.test", t1, 1, NULL), MP_ENOENT);
	assert_non_null(strstr(last_msg, "no such domain"));
	mk_domain(st, "example.test");
	/* 1..100 valid targets, not the alias itself */
	assert_int_equal(set_alias(st, "team@example.test", t1, 0, NULL), MP_EINVAL);
	const char *many[101];
	for (int i = 0; i < 101; i++)
		many[i] = "x@example.test";
	assert_int_equal(set_alias(st, "team@example.test", many, 101, NULL), MP_EINVAL);
	const char *bad[] = { "bob@example.test", "not an address" };
	assert_int_equal(set_alias(st, "team@example.test", bad, 2, NULL), MP_EINVAL);
	assert_non_null(strstr(last_msg, "target 2"));
	const char *self[] = { "TEAM@example.test" };
	assert_int_equal(set_alias(st, "team@example.test", self, 1, NULL), MP_EINVAL);
	assert_int_equal(set_alias(st, "not-an-address", t1, 1, NULL), MP_EINVAL);
	/* nothing was stored by the refusals */
	assert_int_equal(alias_op(st, STORE_GET_ALIAS, "team@example.test", NULL), MP_ENOENT);

	/* normalised, duplicates dropped, remote targets kept */
	assert_int_equal(set_alias(st, "Team@Example.Test", t1, 3, &rep), 0);
	assert_string_equal(rep->alias, "team@example.test");
	assert_int_equal(rep->n_targets, 2);
	assert_string_equal(rep->targets[0], "bob@example.test");
	assert_string_equal(rep->targets[1], "carol@elsewhere.test");
	assert_int_equal(rep->shard, shard_of("team@example.test"));
	assert_true(rep->updated > 0);
	FREE(rep);
	assert_int_equal(alias_op(st, STORE_GET_ALIAS, "TEAM@example.test", &rep), 0);
	assert_int_equal(rep->n_targets, 2);
	FREE(rep);
	/* replace */
	const char *t2[] = { "dave@example.test" };
	assert_int_equal(set_alias(st, "team@example.test", t2, 1, NULL), 0);
	assert_int_equal(alias_op(st, STORE_GET_ALIAS, "team@example.test", &rep), 0);
	assert_int_equal(rep->n_targets, 1);
	assert_string_equal(rep->targets[0], "dave@example.test");
	FREE(rep);

	/* an address is an account or an alias, never both */
	assert_int_equal(mk_user(st, "team@example.test"), MP_EEXIST);
	assert_non_null(strstr(last_msg, "alias"));
	assert_int_equal(mk_user(st, "alice@example.test"), 0);
	assert_int_equal(set_alias(st, "alice@example.test", t2, 1, NULL), MP_EEXIST);
	assert_non_null(strstr(last_msg, "account"));

	/* a domain with an alias (and no account) cannot be deleted */
	mk_domain(st, "other.test");
	assert_int_equal(set_alias(st, "postmaster@other.test", t2, 1, NULL), 0);
	Merpati__V1__DomainRequest d = MERPATI__V1__DOMAIN_REQUEST__INIT;
	d.name = "other.test";
	assert_int_equal(call(st, STORE_DELETE_DOMAIN, &d, NULL, NULL), MP_ESTATE);
	assert_int_equal(alias_op(st, STORE_DELETE_ALIAS, "postmaster@other.test", NULL), 0);
	assert_int_equal(call(st, STORE_DELETE_DOMAIN, &d, NULL, NULL), 0);

	/* delete, then the address is free for an account */
	assert_int_equal(alias_op(st, STORE_DELETE_ALIAS, "team@example.test", NULL), 0);
	assert_int_equal(alias_op(st, STORE_DELETE_ALIAS, "team@example.test", NULL), MP_ENOENT);
	assert_int_equal(alias_op(st, STORE_GET_ALIAS, "team@example.test", NULL), MP_ENOENT);
	assert_int_equal(mk_user(st, "team@example.test"), 0);
}

static void test_alias_list(void **state)
{
	struct store *st = *state;
	const char *t[] = { "dest@example.test" };
	char name[64];
	int per_shard[SHARDS] = { 0 };
	mk_domain(st, "example.test");
	mk_domain(st, "b.test");
	for (int i = 0; i < 20; i++) {
		snprintf(name, sizeof(name), "a%02d@%s", i, i % 4 == 0 ? "b.test" : "example.test");
		assert_int_equal(set_alias(st, name, t, 1, NULL), 0);
		if (i % 4 != 0)
			per_shard[shard_of(name)]++;
	}
	/* shard by shard, one alias per page, domain filtered */
	int total = 0;
	for (uint32_t s = 0; s < SHARDS; s++) {
		char after[300] = "";
		int seen = 0;
		for (int page = 0; page < 50; page++) {
			Merpati__V1__ListAliasesRequest q = MERPATI__V1__LIST_ALIASES_REQUEST__INIT;
			Merpati__V1__ListAliasesReply *rep = NULL;
			q.shard = s;
			q.domain = "Example.Test";
			q.after = after;
			q.limit = 1;
			assert_int_equal(call(st, STORE_LIST_ALIASES, &q,
					      &merpati__v1__list_aliases_reply__descriptor,
					      &rep), 0);
			assert_true(rep->n_aliases <= 1);
			for (size_t i = 0; i < rep->n_aliases; i++) {
				assert_non_null(strstr(rep->aliases[i]->alias, "@example.test"));
				assert_int_equal(shard_of(rep->aliases[i]->alias), s);
				assert_true(strcmp(rep->aliases[i]->alias, after) > 0);
				snprintf(after, sizeof(after), "%s", rep->aliases[i]->alias);
				seen++;
			}
			bool more = rep->more;
			FREE(rep);
			if (!more)
				break;
		}
		assert_int_equal(seen, per_shard[s]);
		total += seen;
	}
	assert_int_equal(total, 15);
	Merpati__V1__ListAliasesRequest q = MERPATI__V1__LIST_ALIASES_REQUEST__INIT;
	q.shard = SHARDS;
	assert_int_equal(call(st, STORE_LIST_ALIASES, &q, NULL, NULL), MP_EINVAL);
}

static void test_resolve(void **state)
{
	struct store *st = *state;
	mk_domain(st, "example.test");
	assert_int_equal(mk_user(st, "alice@example.test"), 0);
	const char *t[] = { "alice@example.test", "far@remote.test" };
	assert_int_equal(set_alias(st, "all@example.test", t, 2, NULL), 0);

	Merpati__V1__ResolveReply *r = resolve(st, "Alice@Example.Test");
	assert_int_equal(r->kind, MERPATI__V1__RESOLVE_KIND__RESOLVE_ACCOUNT);
	assert_int_equal(r->state, MERPATI__V1__ACCOUNT_STATE__ACCOUNT_ACTIVE);
	assert_string_equal(r->user, "alice@example.test");
	assert_int_equal(r->shard, shard_of("alice@example.test"));
	assert_int_equal(r->n_targets, 0);
	FREE(r);

	Merpati__V1__SetStateRequest ss = MERPATI__V1__SET_STATE_REQUEST__INIT;
	ss.user = "alice@example.test";
	ss.state = MERPATI__V1__ACCOUNT_STATE__ACCOUNT_DISABLED;
	assert_int_equal(call(st, STORE_SET_STATE, &ss, NULL, NULL), 0);
	r = resolve(st, "alice@example.test");
	assert_int_equal(r->kind, MERPATI__V1__RESOLVE_KIND__RESOLVE_ACCOUNT);
	assert_int_equal(r->state, MERPATI__V1__ACCOUNT_STATE__ACCOUNT_DISABLED);
	FREE(r);

	r = resolve(st, "all@example.test");
	assert_int_equal(r->kind, MERPATI__V1__RESOLVE_KIND__RESOLVE_ALIAS);
	assert_int_equal(r->n_targets, 2);
	assert_string_equal(r->targets[1], "far@remote.test");
	FREE(r);

	r = resolve(st, "nobody@example.test");
	assert_int_equal(r->kind, MERPATI__V1__RESOLVE_KIND__RESOLVE_NONE);
	FREE(r);
	/* an unknown domain is simply nothing here */
	r = resolve(st, "x@unknown.test");
	assert_int_equal(r->kind, MERPATI__V1__RESOLVE_KIND__RESOLVE_NONE);
	FREE(r);

	Merpati__V1__UserRequest q = MERPATI__V1__USER_REQUEST__INIT;
	q.user = "no at sign";
	assert_int_equal(call(st, STORE_RESOLVE_RECIPIENT, &q, NULL, NULL), MP_EINVAL);
}

/* ------------------------------------------------------------ SCRAM */

static Merpati__V1__Account *get_account(struct store *st, const char *user,
					 Merpati__V1__AccountReply **rep_r)
{
	Merpati__V1__UserRequest q = MERPATI__V1__USER_REQUEST__INIT;
	q.user = (char *)user;
	assert_int_equal(call(st, STORE_GET_ACCOUNT, &q,
			      &merpati__v1__account_reply__descriptor, rep_r), 0);
	return (*rep_r)->account;
}

static void test_scram(void **state)
{
	struct store *st = *state;
	char *rec1 = NULL, *rec2 = NULL;
	Merpati__V1__AccountReply *rep = NULL;
	mk_domain(st, "example.test");
	assert_int_equal(mp_scram_make("secret", 6, 0, &rec1), 0);
	assert_int_equal(mp_scram_make("other", 5, 0, &rec2), 0);

	Merpati__V1__CreateAccountRequest c = MERPATI__V1__CREATE_ACCOUNT_REQUEST__INIT;
	c.user = "s@example.test";
	c.password_hash = "$y$j9T$salt$hash";
	c.scram_sha256 = "SCRAM-SHA-256$4096:bm90YmFzZTY0!$x:y";
	assert_int_equal(call(st, STORE_CREATE_ACCOUNT, &c, NULL, NULL), MP_EINVAL);
	assert_non_null(strstr(last_msg, "SCRAM"));
	c.scram_sha256 = rec1;
	assert_int_equal(call(st, STORE_CREATE_ACCOUNT, &c, NULL, NULL), 0);
	Merpati__V1__Account *a = get_account(st, "s@example.test", &rep);
	assert_string_equal(a->scram_sha256, rec1);
	FREE(rep);

	/* listing leaves secrets out */
	Merpati__V1__ListAccountsRequest l = MERPATI__V1__LIST_ACCOUNTS_REQUEST__INIT;
	Merpati__V1__ListAccountsReply *lr = NULL;
	assert_int_equal(call(st, STORE_LIST_ACCOUNTS, &l,
			      &merpati__v1__list_accounts_reply__descriptor, &lr), 0);
	assert_int_equal(lr->n_accounts, 1);
	assert_string_equal(lr->accounts[0]->scram_sha256, "");
	assert_string_equal(lr->accounts[0]->password_hash, "");
	FREE(lr);

	Merpati__V1__SetPasswordRequest p = MERPATI__V1__SET_PASSWORD_REQUEST__INIT;
	p.user = "s@example.test";
	p.password_hash = "$y$j9T$salt2$hash2";
	p.scram_sha256 = "garbage";
	assert_int_equal(call(st, STORE_SET_PASSWORD, &p, NULL, NULL), MP_EINVAL);
	a = get_account(st, "s@example.test", &rep);
	assert_string_equal(a->scram_sha256, rec1); /* refused: unchanged */
	FREE(rep);
	p.scram_sha256 = rec2;
	assert_int_equal(call(st, STORE_SET_PASSWORD, &p, NULL, NULL), 0);
	a = get_account(st, "s@example.test", &rep);
	assert_string_equal(a->scram_sha256, rec2);
	assert_string_equal(a->password_hash, "$y$j9T$salt2$hash2");
	FREE(rep);
	/* a new password without SCRAM clears the old record */
	p.scram_sha256 = "";
	assert_int_equal(call(st, STORE_SET_PASSWORD, &p, NULL, NULL), 0);
	a = get_account(st, "s@example.test", &rep);
	assert_string_equal(a->scram_sha256, "");
	FREE(rep);
	free(rec1);
	free(rec2);
}

/* ------------------------------------------------------------ queue */

static void test_queue_add_get_list(void **state)
{
	struct store *st = *state;
	struct qentry q;
	char id[64], id2[64];
	uint8_t d0[32], d1[32];
	uint64_t k0, k1;
	digest(st, 2, d0, &k0);

	/* refusals change nothing */
	qentry_init(&q, "sender@example.test", 2);
	assert_int_equal(queue_add(st, SHARDS, &q.e, "body", NULL, NULL, 0), MP_EINVAL);
	assert_int_equal(queue_add(st, 2, &q.e, "", NULL, NULL, 0), MP_EINVAL);
	assert_int_equal(queue_add(st, 2, NULL, "body", NULL, NULL, 0), MP_EINVAL);
	qentry_init(&q, "sender@example.test", 0);
	assert_int_equal(queue_add(st, 2, &q.e, "body", NULL, NULL, 0), MP_EINVAL);
	qentry_init(&q, "bad sender", 1);
	assert_int_equal(queue_add(st, 2, &q.e, "body", NULL, NULL, 0), MP_EINVAL);
	qentry_init(&q, "", 1);
	q.r[0].notify = 8 | 2; /* NEVER is alone */
	assert_int_equal(queue_add(st, 2, &q.e, "body", NULL, NULL, 0), MP_EINVAL);
	qentry_init(&q, "", 1);
	q.r[0].state = MERPATI__V1__QUEUE_RCPT_STATE__RCPT_DELIVERED;
	assert_int_equal(queue_add(st, 2, &q.e, "body", NULL, NULL, 0), MP_EINVAL);
	assert_non_null(strstr(last_msg, "pending"));
	qentry_init(&q, "", 1);
	q.e.envid = "has space";
	assert_int_equal(queue_add(st, 2, &q.e, "body", NULL, NULL, 0), MP_EINVAL);
	digest(st, 2, d1, &k1);
	assert_int_equal(k0, k1);
	assert_memory_equal(d0, d1, 32);

	/* a null sender, DSN fields kept, case of addresses kept */
	qentry_init(&q, "", 2);
	q.e.envid = "ENV123";
	q.e.ret_full = true;
	q.e.from_user = "Sub@Example.Test";
	q.e.id = "ignored";
	q.e.attempts = 7;
	q.e.claimed_by = "ignored";
	q.r[0].notify = 2 | 4;
	q.r[0].orcpt = "rfc822;x@remote.test";
	uint64_t before = wall_ms();
	assert_int_equal(queue_add(st, 2, &q.e, "Subject: q\r\n\r\nbody\r\n", NULL, id,
				   sizeof(id)), 0);
	assert_int_equal(strlen(id), 2 + 16);
	assert_int_equal(strncmp(id, "2.", 2), 0);
	Merpati__V1__QueuedMessage *m = NULL;
	assert_int_equal(queue_id_op(st, STORE_QUEUE_GET, 2, id, true, &m), 0);
	assert_string_equal(m->entry->id, id);
	assert_string_equal(m->entry->sender, "");
	assert_int_equal(m->entry->n_rcpts, 2);
	assert_string_equal(m->entry->rcpts[1]->address, "Y@Remote.Test");
	assert_int_equal(m->entry->rcpts[0]->notify, 6);
	assert_string_equal(m->entry->rcpts[0]->orcpt, "rfc822;x@remote.test");
	assert_int_equal(m->entry->rcpts[0]->state, MERPATI__V1__QUEUE_RCPT_STATE__RCPT_PENDING);
	assert_string_equal(m->entry->envid, "ENV123");
	assert_true(m->entry->ret_full);
	assert_string_equal(m->entry->from_user, "sub@example.test");
	assert_int_equal(m->entry->attempts, 0);
	assert_string_equal(m->entry->claimed_by, "");
	assert_true(m->entry->created_ms >= before);
	assert_int_equal(m->entry->due_ms, m->entry->created_ms);
	assert_int_equal(m->entry->size, strlen("Subject: q\r\n\r\nbody\r\n"));
	assert_int_equal(m->body.len, m->entry->size);
	assert_memory_equal(m->body.data, "Subject: q\r\n\r\nbody\r\n", m->body.len);
	FREE(m);
	assert_int_equal(queue_id_op(st, STORE_QUEUE_GET, 2, id, false, &m), 0);
	assert_int_equal(m->body.len, 0);
	FREE(m);

	/* ids are checked: format and shard */
	assert_int_equal(queue_id_op(st, STORE_QUEUE_GET, 1, id, false, NULL), MP_EINVAL);
	assert_int_equal(queue_id_op(st, STORE_QUEUE_GET, 2, "2.xyz", false, NULL), MP_EINVAL);
	assert_int_equal(queue_id_op(st, STORE_QUEUE_GET, 2, "2.0123456789ABCDEF", false, NULL),
			 MP_EINVAL);
	assert_int_equal(queue_id_op(st, STORE_QUEUE_GET, 2, "2.0123456789abcdef", false, NULL),
			 MP_ENOENT);

	/* list: by id, paged, no bodies */
	qentry_init(&q, "s@example.test", 1);
	q.e.due_ms = wall_ms() + 3600 * 1000;
	assert_int_equal(queue_add(st, 2, &q.e, "second", NULL, id2, sizeof(id2)), 0);
	assert_string_not_equal(id, id2);
	Merpati__V1__QueueListReply *l = queue_list(st, 2, NULL, 0);
	assert_int_equal(l->n_entries, 2);
	assert_false(l->more);
	assert_true(strcmp(l->entries[0]->id, l->entries[1]->id) < 0);
	FREE(l);
	l = queue_list(st, 2, NULL, 1);
	assert_int_equal(l->n_entries, 1);
	assert_true(l->more);
	char first[64];
	snprintf(first, sizeof(first), "%s", l->entries[0]->id);
	FREE(l);
	l = queue_list(st, 2, first, 1);
	assert_int_equal(l->n_entries, 1);
	assert_false(l->more);
	assert_true(strcmp(l->entries[0]->id, first) > 0);
	FREE(l);
	l = queue_list(st, 1, NULL, 0);
	assert_int_equal(l->n_entries, 0);
	FREE(l);
	Merpati__V1__QueueListRequest lq = MERPATI__V1__QUEUE_LIST_REQUEST__INIT;
	lq.shard = SHARDS;
	assert_int_equal(call(st, STORE_QUEUE_LIST, &lq, NULL, NULL), MP_EINVAL);
}

static void test_queue_claim_update(void **state)
{
	struct store *st = *state;
	struct qentry q;
	char ids[3][64];
	uint8_t d0[32], d1[32];
	uint64_t k0, k1;
	digest(st, 1, d0, &k0);
	for (int i = 0; i < 3; i++) {
		char body[32];
		qentry_init(&q, "s@example.test", 2);
		q.e.due_ms = wall_ms() - 1000 + (uint64_t)i; /* due, in this order */
		snprintf(body, sizeof(body), "body %d", i);
		assert_int_equal(queue_add(st, 1, &q.e, body, NULL, ids[i], sizeof(ids[i])), 0);
	}
	/* a future entry is not claimed */
	qentry_init(&q, "s@example.test", 1);
	uint64_t future = wall_ms() + 3600 * 1000;
	q.e.due_ms = future;
	char fid[64];
	assert_int_equal(queue_add(st, 1, &q.e, "later", NULL, fid, sizeof(fid)), 0);

	Merpati__V1__QueueClaimReply *c = NULL;
	assert_int_equal(claim(st, 1, "", 0, 0, NULL, &c), MP_EINVAL);
	assert_int_equal(claim(st, 1, "r1", 100ull * 86400000, 0, NULL, &c), MP_EINVAL);
	assert_int_equal(claim(st, 1, "r1", 60000, 2, NULL, &c), 0);
	assert_int_equal(c->n_entries, 2);
	for (int i = 0; i < 2; i++) {
		char body[32];
		snprintf(body, sizeof(body), "body %d", i);
		assert_string_equal(c->entries[i]->entry->id, ids[i]);
		assert_string_equal(c->entries[i]->entry->claimed_by, "r1");
		assert_int_equal(c->entries[i]->entry->attempts, 1);
		assert_int_equal(c->entries[i]->entry->claim_until_ms, c->now_ms + 60000);
		assert_int_equal(c->entries[i]->entry->due_ms, c->now_ms + 60000);
		assert_int_equal(c->entries[i]->body.len, strlen(body));
		assert_memory_equal(c->entries[i]->body.data, body, strlen(body));
	}
	/* the third is still due: next_due says so */
	assert_true(c->next_due_ms > 0 && c->next_due_ms <= c->now_ms);
	FREE(c);
	assert_int_equal(claim(st, 1, "r2", 60000, 0, NULL, &c), 0);
	assert_int_equal(c->n_entries, 1);
	assert_string_equal(c->entries[0]->entry->id, ids[2]);
	uint64_t until2 = c->entries[0]->entry->claim_until_ms;
	FREE(c);
	/* nothing due now; the earliest left is a claim's lease end */
	assert_int_equal(claim(st, 1, "r3", 60000, 0, NULL, &c), 0);
	assert_int_equal(c->n_entries, 0);
	assert_true(c->next_due_ms > c->now_ms && c->next_due_ms <= until2);
	FREE(c);

	/* only the claim's owner may report */
	uint32_t idx[2] = { 0, 1 };
	int delivered[2] = { MERPATI__V1__QUEUE_RCPT_STATE__RCPT_DELIVERED,
			     MERPATI__V1__QUEUE_RCPT_STATE__RCPT_DELIVERED };
	int mixed[2] = { MERPATI__V1__QUEUE_RCPT_STATE__RCPT_DELIVERED,
			 MERPATI__V1__QUEUE_RCPT_STATE__RCPT_PENDING };
	assert_int_equal(update(st, 1, ids[0], "r2", idx, delivered, 2, 0, NULL), MP_ESTATE);
	assert_non_null(strstr(last_msg, "claimed by r1"));
	uint32_t badidx[1] = { 2 };
	assert_int_equal(update(st, 1, ids[0], "r1", badidx, delivered, 1, 0, NULL), MP_EINVAL);
	assert_int_equal(update(st, 1, "1.0000000000000000", "r1", idx, delivered, 2, 0, NULL),
			 MP_ENOENT);

	/* partly done: due again later, unclaimed, results kept */
	Merpati__V1__QueueUpdateReply *u = NULL;
	uint64_t next = wall_ms() + 600000;
	assert_int_equal(update(st, 1, ids[0], "r1", idx, mixed, 2, next, &u), 0);
	assert_false(u->deleted);
	assert_int_equal(u->pending, 1);
	FREE(u);
	Merpati__V1__QueuedMessage *m = NULL;
	assert_int_equal(queue_id_op(st, STORE_QUEUE_GET, 1, ids[0], false, &m), 0);
	assert_int_equal(m->entry->due_ms, next);
	assert_string_equal(m->entry->claimed_by, "");
	assert_int_equal(m->entry->claim_until_ms, 0);
	assert_int_equal(m->entry->rcpts[0]->state,
			 MERPATI__V1__QUEUE_RCPT_STATE__RCPT_DELIVERED);
	assert_int_equal(m->entry->rcpts[0]->last_code, 250);
	assert_string_equal(m->entry->rcpts[0]->last_text, "2.0.0 ok");
	assert_int_equal(m->entry->rcpts[1]->last_code, 451);
	assert_string_equal(m->entry->last_error, "connection refused");
	FREE(m);
	/* its claim is gone: a second report is refused */
	assert_int_equal(update(st, 1, ids[0], "r1", idx, delivered, 2, 0, NULL), MP_ESTATE);
	assert_non_null(strstr(last_msg, "not claimed"));

	/* all done: entry and body deleted */
	assert_int_equal(update(st, 1, ids[1], "r1", idx, delivered, 2, 0, &u), 0);
	assert_true(u->deleted);
	assert_int_equal(u->pending, 0);
	FREE(u);
	assert_int_equal(queue_id_op(st, STORE_QUEUE_GET, 1, ids[1], false, NULL), MP_ENOENT);
	int failed[2] = { MERPATI__V1__QUEUE_RCPT_STATE__RCPT_FAILED,
			  MERPATI__V1__QUEUE_RCPT_STATE__RCPT_DELIVERED };
	assert_int_equal(update(st, 1, ids[2], "r2", idx, failed, 2, 0, &u), 0);
	assert_true(u->deleted);
	FREE(u);
	/* an update with no recipient results: due again at once */
	assert_int_equal(queue_id_op(st, STORE_QUEUE_RETRY, 1, ids[0], false, NULL), 0);
	assert_int_equal(claim(st, 1, "r4", 60000, 0, NULL, &c), 0);
	assert_int_equal(c->n_entries, 1);
	assert_int_equal(c->entries[0]->entry->attempts, 2);
	FREE(c);
	assert_int_equal(update(st, 1, ids[0], "r4", NULL, NULL, 0, 0, &u), 0);
	assert_false(u->deleted);
	FREE(u);
	assert_int_equal(queue_id_op(st, STORE_QUEUE_DELETE, 1, ids[0], false, NULL), 0);
	assert_int_equal(queue_id_op(st, STORE_QUEUE_DELETE, 1, fid, false, NULL), 0);
	/* every key the queue wrote is gone with its entries */
	digest(st, 1, d1, &k1);
	assert_int_equal(k0, k1);
	assert_memory_equal(d0, d1, 32);
}

static void test_queue_lease_expiry(void **state)
{
	struct store *st = *state;
	struct qentry q;
	char id[64];
	qentry_init(&q, "s@example.test", 1);
	assert_int_equal(queue_add(st, 3, &q.e, "lease", NULL, id, sizeof(id)), 0);
	Merpati__V1__QueueClaimReply *c = NULL;
	assert_int_equal(claim(st, 3, "dead-runner", 1, 0, NULL, &c), 0);
	assert_int_equal(c->n_entries, 1);
	uint64_t until = c->entries[0]->entry->claim_until_ms;
	FREE(c);
	wait_past(until);
	/* the runner's late report is refused... */
	uint32_t idx[1] = { 0 };
	int done[1] = { MERPATI__V1__QUEUE_RCPT_STATE__RCPT_DELIVERED };
	assert_int_equal(update(st, 3, id, "dead-runner", idx, done, 1, 0, NULL), MP_ESTATE);
	assert_non_null(strstr(last_msg, "expired"));
	/* ...and another runner takes the entry over */
	assert_int_equal(claim(st, 3, "r2", 60000, 0, NULL, &c), 0);
	assert_int_equal(c->n_entries, 1);
	assert_string_equal(c->entries[0]->entry->id, id);
	assert_string_equal(c->entries[0]->entry->claimed_by, "r2");
	assert_int_equal(c->entries[0]->entry->attempts, 2);
	FREE(c);
	assert_int_equal(update(st, 3, id, "dead-runner", idx, done, 1, 0, NULL), MP_ESTATE);
	assert_non_null(strstr(last_msg, "claimed by r2"));
	Merpati__V1__QueueUpdateReply *u = NULL;
	assert_int_equal(update(st, 3, id, "r2", idx, done, 1, 0, &u), 0);
	assert_true(u->deleted);
	FREE(u);
}

static void test_queue_delete_retry(void **state)
{
	struct store *st = *state;
	struct qentry q;
	char id[64];
	qentry_init(&q, "s@example.test", 1);
	q.e.due_ms = wall_ms() + 3600 * 1000;
	assert_int_equal(queue_add(st, 0, &q.e, "retry me", NULL, id, sizeof(id)), 0);
	Merpati__V1__QueueClaimReply *c = NULL;
	assert_int_equal(claim(st, 0, "r1", 60000, 0, NULL, &c), 0);
	assert_int_equal(c->n_entries, 0);
	assert_int_equal(c->next_due_ms, q.e.due_ms);
	FREE(c);
	/* retry: due now */
	assert_int_equal(queue_id_op(st, STORE_QUEUE_RETRY, 0, id, false, NULL), 0);
	assert_int_equal(claim(st, 0, "r1", 60000, 0, NULL, &c), 0);
	assert_int_equal(c->n_entries, 1);
	FREE(c);
	/* retry of a claimed entry takes the claim away */
	assert_int_equal(queue_id_op(st, STORE_QUEUE_RETRY, 0, id, false, NULL), 0);
	uint32_t idx[1] = { 0 };
	int done[1] = { MERPATI__V1__QUEUE_RCPT_STATE__RCPT_DELIVERED };
	assert_int_equal(update(st, 0, id, "r1", idx, done, 1, 0, NULL), MP_ESTATE);
	Merpati__V1__QueuedMessage *m = NULL;
	assert_int_equal(queue_id_op(st, STORE_QUEUE_GET, 0, id, false, &m), 0);
	assert_string_equal(m->entry->claimed_by, "");
	assert_true(m->entry->due_ms <= wall_ms());
	FREE(m);
	/* delete, even while claimed */
	assert_int_equal(claim(st, 0, "r2", 60000, 0, NULL, &c), 0);
	assert_int_equal(c->n_entries, 1);
	FREE(c);
	assert_int_equal(queue_id_op(st, STORE_QUEUE_DELETE, 0, id, false, NULL), 0);
	assert_int_equal(queue_id_op(st, STORE_QUEUE_DELETE, 0, id, false, NULL), MP_ENOENT);
	assert_int_equal(queue_id_op(st, STORE_QUEUE_RETRY, 0, id, false, NULL), MP_ENOENT);
	assert_int_equal(update(st, 0, id, "r2", idx, done, 1, 0, NULL), MP_ENOENT);
	assert_int_equal(queue_id_op(st, STORE_QUEUE_DELETE, 0, "zz", false, NULL), MP_EINVAL);
	assert_int_equal(queue_id_op(st, STORE_QUEUE_DELETE, SHARDS, id, false, NULL), MP_EINVAL);
	assert_int_equal(claim(st, 0, "r2", 60000, 0, NULL, &c), 0);
	assert_int_equal(c->n_entries, 0);
	assert_int_equal(c->next_due_ms, 0);
	FREE(c);
}

/* A retried QueueAdd makes one entry; a retried QueueClaim answers the same
 * entries (with their bodies) and claims nothing more. */
static void test_queue_dedup(void **state)
{
	struct store *st = *state;
	struct qentry q;
	char id1[64], id2[64], id3[64];
	qentry_init(&q, "s@example.test", 1);
	assert_int_equal(queue_add(st, 2, &q.e, "once", "add-1", id1, sizeof(id1)), 0);
	assert_int_equal(queue_add(st, 2, &q.e, "once", "add-1", id2, sizeof(id2)), 0);
	assert_string_equal(id1, id2);
	assert_int_equal(queue_add(st, 2, &q.e, "twice", "add-2", id3, sizeof(id3)), 0);
	assert_string_not_equal(id1, id3);
	Merpati__V1__QueueListReply *l = queue_list(st, 2, NULL, 0);
	assert_int_equal(l->n_entries, 2);
	FREE(l);

	Merpati__V1__QueueClaimReply *c1 = NULL, *c2 = NULL, *c3 = NULL;
	assert_int_equal(claim(st, 2, "r1", 60000, 0, "claim-1", &c1), 0);
	assert_int_equal(c1->n_entries, 2);
	assert_int_equal(claim(st, 2, "r1", 60000, 0, "claim-1", &c2), 0);
	assert_int_equal(c2->n_entries, 2);
	for (int i = 0; i < 2; i++) {
		assert_string_equal(c1->entries[i]->entry->id, c2->entries[i]->entry->id);
		assert_int_equal(c2->entries[i]->entry->attempts, 1);
		assert_int_equal(c1->entries[i]->body.len, c2->entries[i]->body.len);
		assert_true(c2->entries[i]->body.len > 0);
		assert_memory_equal(c1->entries[i]->body.data, c2->entries[i]->body.data,
				    c1->entries[i]->body.len);
	}
	assert_int_equal(c1->now_ms, c2->now_ms);
	FREE(c1);
	FREE(c2);
	/* nothing was claimed twice */
	Merpati__V1__QueuedMessage *m = NULL;
	assert_int_equal(queue_id_op(st, STORE_QUEUE_GET, 2, id1, false, &m), 0);
	assert_int_equal(m->entry->attempts, 1);
	FREE(m);

	/* a retried claim leaves out an entry deleted since */
	assert_int_equal(queue_id_op(st, STORE_QUEUE_DELETE, 2, id1, false, NULL), 0);
	assert_int_equal(claim(st, 2, "r1", 60000, 0, "claim-1", &c3), 0);
	assert_int_equal(c3->n_entries, 1);
	assert_string_equal(c3->entries[0]->entry->id, id3);
	assert_memory_equal(c3->entries[0]->body.data, "twice", 5);
	FREE(c3);

	/* across a restart too (the request id is stored with the write) */
	store_close(&st);
	st = open_dir(dir);
	*state = st;
	assert_int_equal(queue_add(st, 2, &q.e, "twice", "add-2", id2, sizeof(id2)), 0);
	assert_string_equal(id2, id3);
	l = queue_list(st, 2, NULL, 0);
	assert_int_equal(l->n_entries, 1);
	FREE(l);
}

/* ---------------------------------------------------------- cluster */

static void test_queue_not_leader(void **state)
{
	struct store *st = *state;
	struct qentry q;
	store_set_cluster(st, true);
	for (uint32_t s = 0; s < SHARDS; s++)
		store_set_role(st, s, s == 1 ? STORE_ROLE_LEADER : STORE_ROLE_FOLLOWER, 2,
			       s == 1 ? "t" : "other");
	qentry_init(&q, "s@example.test", 1);
	assert_int_equal(queue_add(st, 0, &q.e, "x", NULL, NULL, 0), MP_ENOTLEADER);
	assert_non_null(strstr(last_msg, "other"));
	assert_int_equal(queue_add(st, 1, &q.e, "x", NULL, NULL, 0), 0);
	Merpati__V1__QueueListRequest lq = MERPATI__V1__QUEUE_LIST_REQUEST__INIT;
	lq.shard = 0;
	assert_int_equal(call(st, STORE_QUEUE_LIST, &lq, NULL, NULL), MP_ENOTLEADER);
	assert_int_equal(queue_id_op(st, STORE_QUEUE_GET, 0, "0.0123456789abcdef", false, NULL),
			 MP_ENOTLEADER);
	Merpati__V1__QueueClaimReply *c = NULL;
	assert_int_equal(claim(st, 0, "r", 0, 0, NULL, &c), MP_ENOTLEADER);
	assert_int_equal(claim(st, 1, "r", 0, 0, NULL, &c), 0);
	assert_int_equal(c->n_entries, 1);
	FREE(c);
	/* aliases and resolution: the leader of the address's shard */
	const char *addr = NULL;
	static const char *cands[] = { "a@example.test", "b@example.test", "c@example.test",
				       "d@example.test", "e@example.test", "f@example.test",
				       "g@example.test", "h@example.test" };
	for (size_t i = 0; i < 8 && addr == NULL; i++)
		if (shard_of(cands[i]) != 1)
			addr = cands[i];
	assert_non_null(addr);
	assert_int_equal(alias_op(st, STORE_GET_ALIAS, addr, NULL), MP_ENOTLEADER);
	Merpati__V1__UserRequest u = MERPATI__V1__USER_REQUEST__INIT;
	u.user = (char *)addr;
	assert_int_equal(call(st, STORE_RESOLVE_RECIPIENT, &u, NULL, NULL), MP_ENOTLEADER);
	Merpati__V1__ListAliasesRequest la = MERPATI__V1__LIST_ALIASES_REQUEST__INIT;
	la.shard = shard_of(addr);
	assert_int_equal(call(st, STORE_LIST_ALIASES, &la, NULL, NULL), MP_ENOTLEADER);
}

static struct store *follower;

struct apply_wait {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int done, err;
};

static void apply_cb(int err, const char *msg, uint64_t epoch, uint64_t lsn, void *arg)
{
	struct apply_wait *w = arg;
	(void)msg;
	(void)epoch;
	(void)lsn;
	pthread_mutex_lock(&w->mu);
	w->err = err;
	w->done = 1;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

/* The leader's hook: each record applied on the follower store. */
static void replicate(void *arg, const struct store_rec *recs, size_t n, int *res)
{
	(void)arg;
	for (size_t i = 0; i < n; i++) {
		struct apply_wait w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0 };
		ProtobufCBinaryData b = { recs[i].len, (uint8_t *)recs[i].data };
		int r = store_apply(follower, recs[i].shard, recs[i].epoch, &b, 1, apply_cb, &w);
		if (r == 0) {
			pthread_mutex_lock(&w.mu);
			while (!w.done)
				pthread_cond_wait(&w.cv, &w.mu);
			pthread_mutex_unlock(&w.mu);
			r = w.err;
		}
		res[i] = r == 0 ? STORE_REPL_OK : STORE_REPL_FENCED;
	}
}

struct snap_copy {
	struct store *dst;
	uint32_t shard;
	int err;
};

static int snap_copy_emit(void *arg, int cf, const char *k, size_t kl, const char *v, size_t vl)
{
	struct snap_copy *c = arg;
	ProtobufCBinaryData key = { kl, (uint8_t *)k }, val = { vl, (uint8_t *)v };
	c->err = store_snapshot_put(c->dst, c->shard, &cf, &key, &val, 1);
	return c->err;
}

/* Replicated records and shard snapshots carry aliases, queue entries and
 * queued bodies: the follower and the snapshot copy have the same digest,
 * and the copy, once leader, serves the queue. */
static void test_replication_and_snapshot(void **state)
{
	struct store *st = *state;
	char dir2[256], dir3[256];
	struct qentry q;
	char id[64];
	uint32_t s = shard_of("team@example.test");

	snprintf(dir2, sizeof(dir2), "/tmp/merpati-test-queue2-XXXXXX");
	assert_non_null(mkdtemp(dir2));
	follower = open_dir(dir2);
	store_set_cluster(st, true);
	store_set_cluster(follower, true);
	for (uint32_t i = 0; i < SHARDS; i++) {
		store_set_role(st, i, STORE_ROLE_LEADER, 2, "t");
		store_set_role(follower, i, STORE_ROLE_FOLLOWER, 2, "t");
	}
	store_set_replicator(st, replicate, NULL);

	mk_domain(st, "example.test");
	const char *t[] = { "x@remote.test" };
	assert_int_equal(set_alias(st, "team@example.test", t, 1, NULL), 0);
	qentry_init(&q, "s@example.test", 2);
	assert_int_equal(queue_add(st, s, &q.e, "replicated body", "rep-1", id, sizeof(id)), 0);
	uint8_t before[32];
	uint64_t kb;
	digest(st, s, before, &kb);
	Merpati__V1__QueueClaimReply *c = NULL;
	assert_int_equal(claim(st, s, "r1", 60000, 0, NULL, &c), 0);
	assert_int_equal(c->n_entries, 1);
	FREE(c);

	uint8_t d1[32], d2[32];
	uint64_t k1, k2;
	digest(st, s, d1, &k1);
	digest(follower, s, d2, &k2);
	assert_int_equal(k1, k2);
	assert_memory_equal(d1, d2, 32);
	/* the digest covers the queue: the claim changed it */
	assert_memory_not_equal(before, d1, 32);

	/* a snapshot copy of the shard is the same shard */
	snprintf(dir3, sizeof(dir3), "/tmp/merpati-test-queue3-XXXXXX");
	assert_non_null(mkdtemp(dir3));
	struct store *b = open_dir(dir3);
	assert_int_equal(store_snapshot_begin(b, s), 0);
	struct snap_copy sc = { b, s, 0 };
	uint64_t epoch, lsn;
	assert_int_equal(store_snapshot_read(st, s, snap_copy_emit, &sc, &epoch, &lsn), 0);
	assert_int_equal(store_snapshot_end(b, s, epoch, lsn), 0);
	digest(b, s, d2, &k2);
	assert_int_equal(k1, k2);
	assert_memory_equal(d1, d2, 32);
	store_set_cluster(b, true);
	store_set_role(b, s, STORE_ROLE_LEADER, 3, "b");
	Merpati__V1__QueuedMessage *m = NULL;
	assert_int_equal(queue_id_op(b, STORE_QUEUE_GET, s, id, true, &m), 0);
	assert_string_equal(m->entry->claimed_by, "r1");
	assert_int_equal(m->body.len, strlen("replicated body"));
	FREE(m);
	Merpati__V1__AliasReply *ar = NULL;
	assert_int_equal(alias_op(b, STORE_GET_ALIAS, "team@example.test", &ar), 0);
	assert_string_equal(ar->targets[0], "x@remote.test");
	FREE(ar);
	/* the retried add is known to the copy as well */
	char id2[64];
	assert_int_equal(queue_add(b, s, &q.e, "replicated body", "rep-1", id2, sizeof(id2)), 0);
	assert_string_equal(id, id2);
	uint32_t idx[2] = { 0, 1 };
	int done[2] = { MERPATI__V1__QUEUE_RCPT_STATE__RCPT_DELIVERED,
			MERPATI__V1__QUEUE_RCPT_STATE__RCPT_FAILED };
	assert_int_equal(update(b, s, id, "r1", idx, done, 2, 0, NULL), 0);
	assert_int_equal(queue_id_op(b, STORE_QUEUE_GET, s, id, false, NULL), MP_ENOENT);

	store_close(&b);
	store_close(&follower);
	rm_dir(dir2);
	rm_dir(dir3);
}

/* ---------------------------------------------------- maildrop lock */

/* One MaildropLock call; *rep_r unpacked when rep_r is given. */
static int lock_call(struct store *st, const char *user, const char *owner, uint64_t lease_ms,
		     bool release, const char *rid, Merpati__V1__MaildropLockReply **rep_r)
{
	Merpati__V1__MaildropLockRequest q = MERPATI__V1__MAILDROP_LOCK_REQUEST__INIT;
	q.user = (char *)user;
	q.owner = (char *)owner;
	q.lease_ms = lease_ms;
	q.release = release;
	q.request_id = (char *)(rid ? rid : "");
	return call(st, STORE_MAILDROP_LOCK, &q,
		    rep_r ? &merpati__v1__maildrop_lock_reply__descriptor : NULL, rep_r);
}

/* An acquire that must be refused, naming holder. */
static void lock_refused(struct store *st, const char *user, const char *owner,
			 const char *holder, uint64_t until)
{
	Merpati__V1__MaildropLockReply *l = NULL;
	assert_int_equal(lock_call(st, user, owner, 0, false, NULL, &l), 0);
	assert_false(l->granted);
	assert_string_equal(l->holder, holder);
	if (until != 0)
		assert_int_equal(l->until_ms, until);
	FREE(l);
}

/* An acquire that must be granted; the end of its lease. */
static uint64_t lock_granted(struct store *st, const char *user, const char *owner,
			     uint64_t lease_ms)
{
	Merpati__V1__MaildropLockReply *l = NULL;
	uint64_t t0 = wall_ms();
	assert_int_equal(lock_call(st, user, owner, lease_ms, false, NULL, &l), 0);
	assert_true(l->granted);
	assert_string_equal(l->holder, "");
	uint64_t lease = lease_ms ? lease_ms : 60000;
	assert_true(l->until_ms >= t0 + lease);
	assert_true(l->until_ms <= wall_ms() + lease);
	uint64_t until = l->until_ms;
	FREE(l);
	return until;
}

static void lock_release(struct store *st, const char *user, const char *owner)
{
	Merpati__V1__MaildropLockReply *l = NULL;
	assert_int_equal(lock_call(st, user, owner, 0, true, NULL, &l), 0);
	assert_true(l->granted);
	FREE(l);
}

/* Grant, refusal naming the holder (and writing nothing), renewal,
 * releases by a stranger and by the holder; the user is normalised. */
static void test_lock_grant_renew_release(void **state)
{
	struct store *st = *state;
	const char *u = "pop@example.test";
	uint32_t s = shard_of(u);
	uint8_t d0[32], d1[32];
	uint64_t k0, k1;
	mk_domain(st, "example.test");
	assert_int_equal(mk_user(st, u), 0);

	uint64_t until = lock_granted(st, u, "fe1:sess-1", 0);
	digest(st, s, d0, &k0);
	lock_refused(st, u, "fe2:sess-9", "fe1:sess-1", until);
	lock_refused(st, "POP@Example.TEST", "fe2:sess-9", "fe1:sess-1", until);
	digest(st, s, d1, &k1);
	assert_int_equal(k0, k1);
	assert_memory_equal(d0, d1, 32);

	/* renewal by the holder moves the end of the lease */
	wait_past(until - 60000 + 2);
	uint64_t until2 = lock_granted(st, "Pop@Example.Test", "fe1:sess-1", 120000);
	assert_true(until2 > until);
	lock_refused(st, u, "fe2:sess-9", "fe1:sess-1", until2);

	/* a stranger's release changes nothing */
	digest(st, s, d0, &k0);
	lock_release(st, u, "fe2:sess-9");
	digest(st, s, d1, &k1);
	assert_memory_equal(d0, d1, 32);
	lock_refused(st, u, "fe2:sess-9", "fe1:sess-1", until2);

	/* the holder's release frees it, and the key is gone */
	lock_release(st, u, "fe1:sess-1");
	digest(st, s, d1, &k1);
	assert_int_equal(k1, k0 - 1);
	lock_granted(st, u, "fe2:sess-9", 0);
	lock_refused(st, u, "fe1:sess-1", "fe2:sess-9", 0);
	/* releasing twice is harmless */
	lock_release(st, u, "fe2:sess-9");
	lock_release(st, u, "fe2:sess-9");
	lock_granted(st, u, "fe1:sess-1", 0);
}

/* A holder that never comes back loses the lock when its lease ends. */
static void test_lock_expiry(void **state)
{
	struct store *st = *state;
	const char *u = "pop@example.test";
	mk_domain(st, "example.test");
	assert_int_equal(mk_user(st, u), 0);
	uint64_t until = lock_granted(st, u, "dead-frontend", 50);
	lock_refused(st, u, "other", "dead-frontend", until);
	sleep_ms(100);
	wait_past(until);
	lock_granted(st, u, "other", 0);
	lock_refused(st, u, "dead-frontend", "other", 0);
}

/* Refusals: bad owner, lease, user; an account that does not exist. */
static void test_lock_invalid(void **state)
{
	struct store *st = *state;
	const char *u = "pop@example.test";
	uint8_t d0[32], d1[32];
	uint64_t k0, k1;
	char longer[130];
	mk_domain(st, "example.test");
	assert_int_equal(mk_user(st, u), 0);
	digest(st, shard_of(u), d0, &k0);

	assert_int_equal(lock_call(st, "nobody@example.test", "s", 0, false, NULL, NULL),
			 MP_ENOENT);
	assert_int_equal(lock_call(st, "nobody@example.test", "s", 0, true, NULL, NULL),
			 MP_ENOENT);
	assert_int_equal(lock_call(st, "not an address", "s", 0, false, NULL, NULL), MP_EINVAL);
	assert_int_equal(lock_call(st, NULL, "s", 0, false, NULL, NULL), MP_EINVAL);
	assert_int_equal(lock_call(st, u, "", 0, false, NULL, NULL), MP_EINVAL);
	assert_int_equal(lock_call(st, u, NULL, 0, false, NULL, NULL), MP_EINVAL);
	assert_int_equal(lock_call(st, u, "", 0, true, NULL, NULL), MP_EINVAL);
	assert_int_equal(lock_call(st, u, "a\tb", 0, false, NULL, NULL), MP_EINVAL);
	assert_int_equal(lock_call(st, u, "a\x7f", 0, false, NULL, NULL), MP_EINVAL);
	assert_int_equal(lock_call(st, u, "sess\r\n", 0, false, NULL, NULL), MP_EINVAL);
	assert_int_equal(lock_call(st, u, "a b", 0, false, NULL, NULL), MP_EINVAL);
	assert_int_equal(lock_call(st, u, "caf\xc3\xa9", 0, false, NULL, NULL), MP_EINVAL);
	memset(longer, 'x', 129);
	longer[129] = '\0';
	assert_int_equal(lock_call(st, u, longer, 0, false, NULL, NULL), MP_EINVAL);
	assert_int_equal(lock_call(st, u, "s", 3600001, false, NULL, NULL), MP_EINVAL);
	assert_int_equal(lock_call(st, u, "s", UINT64_MAX, false, NULL, NULL), MP_EINVAL);
	digest(st, shard_of(u), d1, &k1);
	assert_int_equal(k0, k1);
	assert_memory_equal(d0, d1, 32);

	/* the limits themselves are accepted */
	longer[128] = '\0';
	lock_granted(st, u, longer, 3600000);
	lock_refused(st, u, "s", longer, 0);
}

/* A retried call answers what the first attempt answered. */
static void test_lock_dedup(void **state)
{
	struct store *st = *state;
	const char *u = "pop@example.test";
	Merpati__V1__MaildropLockReply *a = NULL, *b = NULL;
	mk_domain(st, "example.test");
	assert_int_equal(mk_user(st, u), 0);

	assert_int_equal(lock_call(st, u, "s1", 0, false, "lk-1", &a), 0);
	assert_true(a->granted);
	wait_past(a->until_ms - 60000 + 2);
	assert_int_equal(lock_call(st, u, "s1", 0, false, "lk-1", &b), 0);
	assert_true(b->granted);
	assert_int_equal(a->until_ms, b->until_ms);  /* not renewed again */
	FREE(a);
	FREE(b);

	/* a refusal is remembered as a refusal, even once the lock is free */
	assert_int_equal(lock_call(st, u, "s2", 0, false, "lk-2", &a), 0);
	assert_false(a->granted);
	assert_string_equal(a->holder, "s1");
	lock_release(st, u, "s1");
	assert_int_equal(lock_call(st, u, "s2", 0, false, "lk-2", &b), 0);
	assert_false(b->granted);
	assert_string_equal(b->holder, "s1");
	assert_int_equal(a->until_ms, b->until_ms);
	FREE(a);
	FREE(b);
	/* ... and a fresh request takes it */
	lock_granted(st, u, "s2", 0);

	/* a retried release does not release a lock taken since */
	assert_int_equal(lock_call(st, u, "s2", 0, true, "lk-3", NULL), 0);
	lock_granted(st, u, "s3", 0);
	assert_int_equal(lock_call(st, u, "s2", 0, true, "lk-3", &a), 0);
	assert_true(a->granted);
	FREE(a);
	lock_refused(st, u, "s2", "s3", 0);
}

/* The lock is durable, and goes with its account. */
static void test_lock_reopen_and_delete(void **state)
{
	struct store *st = *state;
	const char *u = "pop@example.test";
	mk_domain(st, "example.test");
	assert_int_equal(mk_user(st, u), 0);
	uint64_t until = lock_granted(st, u, "s1", 0);
	store_close(&st);
	st = open_dir(dir);
	*state = st;
	lock_refused(st, u, "s2", "s1", until);

	uint8_t d0[32];
	uint64_t k0, k1;
	digest(st, shard_of(u), d0, &k0);
	Merpati__V1__UserRequest dq = MERPATI__V1__USER_REQUEST__INIT;
	dq.user = (char *)u;
	assert_int_equal(call(st, STORE_DELETE_ACCOUNT, &dq, NULL, NULL), 0);
	assert_int_equal(lock_call(st, u, "s2", 0, false, NULL, NULL), MP_ENOENT);
	assert_int_equal(mk_user(st, u), 0);
	lock_granted(st, u, "s2", 0);
	/* nothing of the old account is left but what a new one has */
	digest(st, shard_of(u), d0, &k1);
	assert_int_equal(k0, k1);
}

/* The lock travels with replication and shard snapshots; a new leader
 * (the snapshot copy) refuses a second session. */
static void test_lock_replication(void **state)
{
	struct store *st = *state;
	char dir2[256], dir3[256];
	const char *u = "pop@example.test";
	uint32_t s = shard_of(u);

	snprintf(dir2, sizeof(dir2), "/tmp/merpati-test-lock2-XXXXXX");
	assert_non_null(mkdtemp(dir2));
	follower = open_dir(dir2);
	store_set_cluster(st, true);
	store_set_cluster(follower, true);
	for (uint32_t i = 0; i < SHARDS; i++) {
		store_set_role(st, i, STORE_ROLE_LEADER, 2, "t");
		store_set_role(follower, i, STORE_ROLE_FOLLOWER, 2, "t");
	}
	store_set_replicator(st, replicate, NULL);
	mk_domain(st, "example.test");
	assert_int_equal(mk_user(st, u), 0);

	uint8_t before[32], d1[32], d2[32];
	uint64_t kb, k1, k2;
	digest(st, s, before, &kb);
	uint64_t until = lock_granted(st, u, "fe1:s", 0);
	digest(st, s, d1, &k1);
	digest(follower, s, d2, &k2);
	assert_int_equal(k1, kb + 1);
	assert_int_equal(k1, k2);
	assert_memory_equal(d1, d2, 32);
	/* the follower does not serve it */
	assert_int_equal(lock_call(follower, u, "x", 0, false, NULL, NULL), MP_ENOTLEADER);

	snprintf(dir3, sizeof(dir3), "/tmp/merpati-test-lock3-XXXXXX");
	assert_non_null(mkdtemp(dir3));
	struct store *b = open_dir(dir3);
	assert_int_equal(store_snapshot_begin(b, s), 0);
	struct snap_copy sc = { b, s, 0 };
	uint64_t epoch, lsn;
	assert_int_equal(store_snapshot_read(st, s, snap_copy_emit, &sc, &epoch, &lsn), 0);
	assert_int_equal(store_snapshot_end(b, s, epoch, lsn), 0);
	digest(b, s, d2, &k2);
	assert_int_equal(k1, k2);
	assert_memory_equal(d1, d2, 32);
	store_set_cluster(b, true);
	store_set_role(b, s, STORE_ROLE_LEADER, 3, "b");
	lock_refused(b, u, "fe2:s", "fe1:s", until);

	/* a release on the leader reaches the follower */
	lock_release(st, u, "fe1:s");
	digest(st, s, d1, &k1);
	digest(follower, s, d2, &k2);
	assert_int_equal(k1, kb);
	assert_int_equal(k1, k2);
	assert_memory_equal(d1, d2, 32);
	assert_memory_equal(before, d1, 32);

	store_close(&b);
	store_close(&follower);
	rm_dir(dir2);
	rm_dir(dir3);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_alias_rules, setup, teardown),
		cmocka_unit_test_setup_teardown(test_alias_list, setup, teardown),
		cmocka_unit_test_setup_teardown(test_resolve, setup, teardown),
		cmocka_unit_test_setup_teardown(test_scram, setup, teardown),
		cmocka_unit_test_setup_teardown(test_queue_add_get_list, setup, teardown),
		cmocka_unit_test_setup_teardown(test_queue_claim_update, setup, teardown),
		cmocka_unit_test_setup_teardown(test_queue_lease_expiry, setup, teardown),
		cmocka_unit_test_setup_teardown(test_queue_delete_retry, setup, teardown),
		cmocka_unit_test_setup_teardown(test_queue_dedup, setup, teardown),
		cmocka_unit_test_setup_teardown(test_queue_not_leader, setup, teardown),
		cmocka_unit_test_setup_teardown(test_replication_and_snapshot, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lock_grant_renew_release, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lock_expiry, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lock_invalid, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lock_dedup, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lock_reopen_and_delete, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lock_replication, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
