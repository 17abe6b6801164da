/*
 * test_store: the store's semantics and invariants, through store_call,
 * against a real RocksDB in a temporary directory: accounts, mailboxes,
 * messages, flags with UNCHANGEDSINCE, copy/move/expunge, body reference
 * counts, change feed, restart persistence (UIDs never reused), injected
 * write failures (nothing changes), validation errors, concurrent writers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mailstore.pb-c.h"
#include "mp_error.h"
#include "mp_shard.h"
#include "store.h"

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
		protobuf_c_message_pack(reply, r->packed);
	}
	r->done = 1;
	pthread_cond_signal(&r->cv);
	pthread_mutex_unlock(&r->mu);
}

static char last_msg[512];

/* Run one call and wait; returns err; *rep_r unpacked (caller frees). */
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

static struct store *open_store(uint32_t shards)
{
	struct store_opts o = {
		.data_dir = dir, .node_id = "t", .shards = shards,
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
	snprintf(dir, sizeof(dir), "/tmp/merpati-test-store-XXXXXX");
	assert_non_null(mkdtemp(dir));
	*state = open_store(1);
	return 0;
}

static int teardown(void **state)
{
	struct store *st = *state;
	char cmd[300];
	store_close(&st);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	assert_int_equal(system(cmd), 0);
	return 0;
}

static void mk_domain(struct store *st, const char *name)
{
	Merpati__V1__DomainRequest q = MERPATI__V1__DOMAIN_REQUEST__INIT;
	q.name = (char *)name;
	assert_int_equal(call(st, STORE_CREATE_DOMAIN, &q, NULL, NULL), 0);
}

static void mk_user(struct store *st, const char *user)
{
	Merpati__V1__CreateAccountRequest q = MERPATI__V1__CREATE_ACCOUNT_REQUEST__INIT;
	q.user = (char *)user;
	q.password_hash = "$y$j9T$salt$hash";
	assert_int_equal(call(st, STORE_CREATE_ACCOUNT, &q, NULL, NULL), 0);
}

static int append(struct store *st, const char *user, const char *mb, const char *body,
		  char **flags, size_t nflags, uint32_t *uid_r, uint64_t *modseq_r)
{
	Merpati__V1__AppendRequest q = MERPATI__V1__APPEND_REQUEST__INIT;
	Merpati__V1__AppendReply *rep = NULL;
	q.user = (char *)user;
	q.mailbox = (char *)mb;
	q.body.data = (uint8_t *)body;
	q.body.len = strlen(body);
	q.flags = flags;
	q.n_flags = nflags;
	int r = call(st, STORE_APPEND, &q, &merpati__v1__append_reply__descriptor, &rep);
	if (r == 0) {
		if (uid_r)
			*uid_r = rep->uid;
		if (modseq_r)
			*modseq_r = rep->modseq;
		FREE(rep);
	}
	return r;
}

static Merpati__V1__StatusReply *status(struct store *st, const char *user, const char *mb)
{
	Merpati__V1__StatusRequest q = MERPATI__V1__STATUS_REQUEST__INIT;
	Merpati__V1__StatusReply *rep = NULL;
	q.user = (char *)user;
	q.name = (char *)mb;
	assert_int_equal(call(st, STORE_STATUS, &q, &merpati__v1__status_reply__descriptor, &rep), 0);
	return rep;
}

static Merpati__V1__FetchIndexReply *fetch(struct store *st, const char *user,
					   const char *mb, const char *set)
{
	Merpati__V1__FetchIndexRequest q = MERPATI__V1__FETCH_INDEX_REQUEST__INIT;
	Merpati__V1__FetchIndexReply *rep = NULL;
	q.user = (char *)user;
	q.mailbox = (char *)mb;
	q.uid_set = (char *)set;
	assert_int_equal(call(st, STORE_FETCH_INDEX, &q,
			      &merpati__v1__fetch_index_reply__descriptor, &rep), 0);
	return rep;
}

static int64_t refcount(struct store *st, const char *body)
{
	uint8_t sha[32];
	SHA256((const uint8_t *)body, strlen(body), sha);
	return store_debug_refcount(st, 0, sha);
}

static int expunge(struct store *st, const char *user, const char *mb, const char *set)
{
	Merpati__V1__ExpungeRequest q = MERPATI__V1__EXPUNGE_REQUEST__INIT;
	q.user = (char *)user;
	q.mailbox = (char *)mb;
	q.uid_set = (char *)set;
	return call(st, STORE_EXPUNGE, &q, NULL, NULL);
}

/* ------------------------------------------------------------ tests */

static void test_account_defaults(void **state)
{
	struct store *st = *state;
	mk_domain(st, "Example.Test");
	mk_user(st, "Alice@Example.TEST");

	Merpati__V1__ListMailboxesRequest q = MERPATI__V1__LIST_MAILBOXES_REQUEST__INIT;
	Merpati__V1__ListMailboxesReply *rep = NULL;
	q.user = "alice@example.test";
	assert_int_equal(call(st, STORE_LIST_MAILBOXES, &q,
			      &merpati__v1__list_mailboxes_reply__descriptor, &rep), 0);
	assert_int_equal(rep->n_mailboxes, 6);
	const char *want[][2] = { { "INBOX", "" }, { "Drafts", "\\Drafts" }, { "Sent", "\\Sent" },
				  { "Trash", "\\Trash" }, { "Junk", "\\Junk" },
				  { "Archive", "\\Archive" } };
	for (size_t i = 0; i < 6; i++) {
		int found = 0;
		for (size_t j = 0; j < rep->n_mailboxes; j++)
			if (strcmp(rep->mailboxes[j]->name, want[i][0]) == 0) {
				assert_string_equal(rep->mailboxes[j]->special_use, want[i][1]);
				assert_true(rep->mailboxes[j]->subscribed);
				found = 1;
			}
		assert_true(found);
	}
	/* uidvalidity differs between mailboxes of a user */
	for (size_t i = 1; i < rep->n_mailboxes; i++)
		assert_int_not_equal(rep->mailboxes[i]->uidvalidity, rep->mailboxes[0]->uidvalidity);
	FREE(rep);

	/* duplicates, unknown domain, bad names */
	Merpati__V1__CreateAccountRequest c = MERPATI__V1__CREATE_ACCOUNT_REQUEST__INIT;
	c.user = "alice@example.test";
	assert_int_equal(call(st, STORE_CREATE_ACCOUNT, &c, NULL, NULL), MP_EEXIST);
	c.user = "bob@nowhere.test";
	assert_int_equal(call(st, STORE_CREATE_ACCOUNT, &c, NULL, NULL), MP_ENOENT);
	c.user = "bo\x01@example.test";
	assert_int_equal(call(st, STORE_CREATE_ACCOUNT, &c, NULL, NULL), MP_EINVAL);
	c.user = "no-at-sign";
	assert_int_equal(call(st, STORE_CREATE_ACCOUNT, &c, NULL, NULL), MP_EINVAL);

	Merpati__V1__UserRequest g = MERPATI__V1__USER_REQUEST__INIT;
	Merpati__V1__AccountReply *ar = NULL;
	g.user = "ALICE@example.test";
	assert_int_equal(call(st, STORE_GET_ACCOUNT, &g, &merpati__v1__account_reply__descriptor, &ar), 0);
	assert_string_equal(ar->account->user, "alice@example.test");
	assert_string_equal(ar->account->password_hash, "$y$j9T$salt$hash");
	FREE(ar);

	/* a domain with accounts cannot be deleted */
	Merpati__V1__DomainRequest d = MERPATI__V1__DOMAIN_REQUEST__INIT;
	d.name = "example.test";
	assert_int_equal(call(st, STORE_DELETE_DOMAIN, &d, NULL, NULL), MP_ESTATE);
	assert_int_equal(call(st, STORE_DELETE_ACCOUNT, &g, NULL, NULL), 0);
	assert_int_equal(call(st, STORE_GET_ACCOUNT, &g, NULL, NULL), MP_ENOENT);
	assert_int_equal(call(st, STORE_DELETE_DOMAIN, &d, NULL, NULL), 0);
	assert_int_equal(call(st, STORE_GET_DOMAIN, &d, NULL, NULL), MP_ENOENT);
}

static void test_append_fetch_flags(void **state)
{
	struct store *st = *state;
	mk_domain(st, "example.test");
	mk_user(st, "a@example.test");
	char *seen[] = { "\\seen", "$Label1" };
	uint32_t u1 = 0, u2 = 0, u3 = 0;
	uint64_t m1 = 0, m2 = 0, m3 = 0;
	assert_int_equal(append(st, "a@example.test", "INBOX", "Subject: one\r\n\r\nbody1\r\n",
				NULL, 0, &u1, &m1), 0);
	assert_int_equal(append(st, "a@example.test", "inbox", "Subject: two\r\n\r\nbody2\r\n",
				seen, 2, &u2, &m2), 0);
	assert_int_equal(append(st, "a@example.test", NULL, "Subject: three\r\n\r\nb3\r\n",
				NULL, 0, &u3, &m3), 0);
	assert_true(u1 < u2 && u2 < u3);
	assert_true(m1 < m2 && m2 < m3);

	Merpati__V1__StatusReply *s = status(st, "a@example.test", "INBOX");
	assert_int_equal(s->messages, 3);
	assert_int_equal(s->unseen, 2);
	assert_int_equal(s->recent, 3);
	assert_int_equal(s->first_unseen_uid, u1);
	assert_int_equal(s->mailbox->uidnext, u3 + 1);
	FREE(s);

	Merpati__V1__FetchIndexReply *f = fetch(st, "a@example.test", "INBOX", "1:*");
	assert_int_equal(f->n_messages, 3);
	assert_int_equal(f->messages[1]->uid, u2);
	assert_int_equal(f->messages[1]->n_flags, 2);
	assert_string_equal(f->messages[1]->flags[0], "\\Seen"); /* canonical case */
	assert_int_equal(f->messages[1]->size, strlen("Subject: two\r\n\r\nbody2\r\n"));
	FREE(f);
	/* "*" is the highest uid even when n > it (RFC 3501 §9) */
	f = fetch(st, "a@example.test", "INBOX", "100:*");
	assert_int_equal(f->n_messages, 1);
	assert_int_equal(f->messages[0]->uid, u3);
	FREE(f);

	/* body and a byte range */
	Merpati__V1__FetchBodyRequest b = MERPATI__V1__FETCH_BODY_REQUEST__INIT;
	Merpati__V1__FetchBodyReply *br = NULL;
	b.user = "a@example.test";
	b.mailbox = "INBOX";
	b.uid = u2;
	b.offset = 9;
	b.length = 3;
	assert_int_equal(call(st, STORE_FETCH_BODY, &b, &merpati__v1__fetch_body_reply__descriptor, &br), 0);
	assert_int_equal(br->data.len, 3);
	assert_memory_equal(br->data.data, "two", 3);
	assert_int_equal(br->total_size, strlen("Subject: two\r\n\r\nbody2\r\n"));
	FREE(br);
	b.uid = 999;
	assert_int_equal(call(st, STORE_FETCH_BODY, &b, NULL, NULL), MP_ENOENT);

	/* STORE: add, remove, replace; UNCHANGEDSINCE */
	Merpati__V1__StoreFlagsRequest q = MERPATI__V1__STORE_FLAGS_REQUEST__INIT;
	Merpati__V1__StoreFlagsReply *sr = NULL;
	char *fl[] = { "\\Flagged", "\\Seen" };
	q.user = "a@example.test";
	q.mailbox = "INBOX";
	q.uid_set = "1:*";
	q.mode = MERPATI__V1__FLAG_MODE__FLAGS_ADD;
	q.flags = fl;
	q.n_flags = 2;
	assert_int_equal(call(st, STORE_STORE_FLAGS, &q, &merpati__v1__store_flags_reply__descriptor, &sr), 0);
	assert_int_equal(sr->n_updated, 3);
	assert_int_equal(sr->n_modified, 0);
	uint64_t ms = sr->highestmodseq;
	assert_true(ms > m3);
	FREE(sr);
	s = status(st, "a@example.test", "INBOX");
	assert_int_equal(s->unseen, 0);
	assert_int_equal(s->first_unseen_uid, 0);
	FREE(s);

	/* unchanged_since below the messages' modseq: nothing changes */
	q.mode = MERPATI__V1__FLAG_MODE__FLAGS_REMOVE;
	q.unchanged_since = m3;
	assert_int_equal(call(st, STORE_STORE_FLAGS, &q, &merpati__v1__store_flags_reply__descriptor, &sr), 0);
	assert_int_equal(sr->n_modified, 3);
	assert_int_equal(sr->n_updated, 0);
	assert_int_equal(sr->highestmodseq, ms);
	FREE(sr);
	q.unchanged_since = ms;
	q.uid_set = "1";
	char *fl2[] = { "\\Seen" };
	q.flags = fl2;
	q.n_flags = 1;
	assert_int_equal(call(st, STORE_STORE_FLAGS, &q, &merpati__v1__store_flags_reply__descriptor, &sr), 0);
	assert_int_equal(sr->n_updated, 1);
	assert_int_equal(sr->updated[0]->n_flags, 1);
	assert_string_equal(sr->updated[0]->flags[0], "\\Flagged");
	assert_true(sr->highestmodseq > ms);
	FREE(sr);

	/* bad input changes nothing */
	q.unchanged_since = 0;
	q.uid_set = "1:x";
	assert_int_equal(call(st, STORE_STORE_FLAGS, &q, NULL, NULL), MP_EINVAL);
	q.uid_set = "0";
	assert_int_equal(call(st, STORE_STORE_FLAGS, &q, NULL, NULL), MP_EINVAL);
	char *bad[] = { "\\Recent" };
	q.uid_set = "1";
	q.flags = bad;
	assert_int_equal(call(st, STORE_STORE_FLAGS, &q, NULL, NULL), MP_EINVAL);
	char *bad2[] = { "a b" };
	q.flags = bad2;
	assert_int_equal(call(st, STORE_STORE_FLAGS, &q, NULL, NULL), MP_EINVAL);
	q.mailbox = "Nope";
	q.flags = fl2;
	assert_int_equal(call(st, STORE_STORE_FLAGS, &q, NULL, NULL), MP_ENOENT);

	/* changes since: one entry per uid, its latest */
	Merpati__V1__ChangesSinceRequest c = MERPATI__V1__CHANGES_SINCE_REQUEST__INIT;
	Merpati__V1__ChangesSinceReply *cr = NULL;
	c.user = "a@example.test";
	c.mailbox = "INBOX";
	c.modseq = m1;
	assert_int_equal(call(st, STORE_CHANGES_SINCE, &c, &merpati__v1__changes_since_reply__descriptor, &cr), 0);
	assert_int_equal(cr->n_changes, 3);
	for (size_t i = 1; i < cr->n_changes; i++)
		assert_true(cr->changes[i]->modseq >= cr->changes[i - 1]->modseq); /* one modseq per operation */
	FREE(cr);
	c.modseq = 1u << 30;
	assert_int_equal(call(st, STORE_CHANGES_SINCE, &c, NULL, NULL), MP_ESTALE);

	/* limits: empty body, body over max_message_size */
	assert_int_equal(append(st, "a@example.test", "INBOX", "", NULL, 0, NULL, NULL), MP_EINVAL);
	char *big = malloc((1 << 20) + 2);
	memset(big, 'x', (1 << 20) + 1);
	big[(1 << 20) + 1] = '\0';
	assert_int_equal(append(st, "a@example.test", "INBOX", big, NULL, 0, NULL, NULL), MP_ENOSPC);
	free(big);
	s = status(st, "a@example.test", "INBOX");
	assert_int_equal(s->messages, 3);
	FREE(s);
}

static void test_refcount_copy_move_expunge(void **state)
{
	struct store *st = *state;
	const char *body = "Subject: shared\r\n\r\nsame body\r\n";
	mk_domain(st, "example.test");
	mk_user(st, "a@example.test");
	mk_user(st, "b@example.test");
	uint32_t ua1, ua2, ub;
	assert_int_equal(append(st, "a@example.test", "INBOX", body, NULL, 0, &ua1, NULL), 0);
	assert_int_equal(append(st, "a@example.test", "INBOX", body, NULL, 0, &ua2, NULL), 0);
	assert_int_equal(append(st, "b@example.test", "INBOX", body, NULL, 0, &ub, NULL), 0);
	assert_int_equal(refcount(st, body), 3);

	/* copy adds a reference, move does not */
	Merpati__V1__CopyRequest c = MERPATI__V1__COPY_REQUEST__INIT;
	Merpati__V1__CopyReply *cr = NULL;
	c.user = "a@example.test";
	c.mailbox = "INBOX";
	c.uid_set = "1:*";
	c.dest_mailbox = "Archive";
	assert_int_equal(call(st, STORE_COPY, &c, &merpati__v1__copy_reply__descriptor, &cr), 0);
	assert_int_equal(cr->n_src_uids, 2);
	assert_int_equal(cr->n_dest_uids, 2);
	assert_int_equal(cr->dest_uids[0], 1);
	assert_int_equal(cr->dest_uids[1], 2);
	FREE(cr);
	assert_int_equal(refcount(st, body), 5);
	c.mailbox = "Archive";
	c.dest_mailbox = "Trash";
	c.uid_set = "2";
	assert_int_equal(call(st, STORE_MOVE, &c, &merpati__v1__copy_reply__descriptor, &cr), 0);
	assert_int_equal(cr->n_dest_uids, 1);
	FREE(cr);
	assert_int_equal(refcount(st, body), 5);
	Merpati__V1__StatusReply *s = status(st, "a@example.test", "Archive");
	assert_int_equal(s->messages, 1);
	assert_int_equal(s->mailbox->uidnext, 3);
	FREE(s);

	Merpati__V1__UserRequest g = MERPATI__V1__USER_REQUEST__INIT;
	Merpati__V1__AccountReply *ar = NULL;
	g.user = "a@example.test";
	assert_int_equal(call(st, STORE_GET_ACCOUNT, &g, &merpati__v1__account_reply__descriptor, &ar), 0);
	assert_int_equal(ar->account->messages, 4);
	assert_int_equal(ar->account->used_bytes, 4 * strlen(body));
	FREE(ar);

	/* expunge everything of a: body remains for b */
	assert_int_equal(expunge(st, "a@example.test", "INBOX", "1:*"), 0);
	assert_int_equal(expunge(st, "a@example.test", "Archive", "1:*"), 0);
	assert_int_equal(refcount(st, body), 2);
	Merpati__V1__MailboxRequest dm = MERPATI__V1__MAILBOX_REQUEST__INIT;
	dm.user = "a@example.test";
	dm.name = "Trash";
	assert_int_equal(call(st, STORE_DELETE_MAILBOX, &dm, NULL, NULL), 0);
	assert_int_equal(refcount(st, body), 1);
	dm.name = "INBOX";
	assert_int_equal(call(st, STORE_DELETE_MAILBOX, &dm, NULL, NULL), MP_EPERM);
	assert_int_equal(call(st, STORE_GET_ACCOUNT, &g, &merpati__v1__account_reply__descriptor, &ar), 0);
	assert_int_equal(ar->account->messages, 0);
	assert_int_equal(ar->account->used_bytes, 0);
	FREE(ar);
	/* the last reference: the body goes with it */
	g.user = "b@example.test";
	assert_int_equal(call(st, STORE_DELETE_ACCOUNT, &g, NULL, NULL), 0);
	assert_int_equal(refcount(st, body), -1);

	/* uids are not reused after expunge */
	uint32_t u;
	assert_int_equal(append(st, "a@example.test", "INBOX", body, NULL, 0, &u, NULL), 0);
	assert_true(u > ua2);
	(void)ua1;
	(void)ub;
}

static void test_append_many(void **state)
{
	struct store *st = *state;
	const char *body = "Subject: many\r\n\r\nx\r\n";
	mk_domain(st, "example.test");
	mk_user(st, "a@example.test");
	mk_user(st, "b@example.test");
	Merpati__V1__Delivery d1 = MERPATI__V1__DELIVERY__INIT, d2 = MERPATI__V1__DELIVERY__INIT,
			      d3 = MERPATI__V1__DELIVERY__INIT, d4 = MERPATI__V1__DELIVERY__INIT;
	d1.user = "a@example.test";
	d2.user = "b@example.test";
	d2.mailbox = "Junk";
	d3.user = "ghost@example.test";
	d4.user = "a@example.test"; /* twice to the same user: two messages */
	Merpati__V1__Delivery *ds[] = { &d1, &d2, &d3, &d4 };
	Merpati__V1__AppendManyRequest q = MERPATI__V1__APPEND_MANY_REQUEST__INIT;
	Merpati__V1__AppendManyReply *rep = NULL;
	q.deliveries = ds;
	q.n_deliveries = 4;
	q.body.data = (uint8_t *)body;
	q.body.len = strlen(body);
	assert_int_equal(call(st, STORE_APPEND_MANY, &q, &merpati__v1__append_many_reply__descriptor, &rep), 0);
	assert_int_equal(rep->n_results, 4);
	assert_int_equal(rep->results[0]->code, 0);
	assert_int_equal(rep->results[1]->code, 0);
	assert_int_equal(rep->results[2]->code, 5 /* NOT_FOUND */);
	assert_int_equal(rep->results[3]->code, 0);
	assert_int_equal(rep->results[0]->uid, 1);
	assert_int_equal(rep->results[3]->uid, 2);
	FREE(rep);
	assert_int_equal(refcount(st, body), 3);
	Merpati__V1__StatusReply *s = status(st, "a@example.test", "INBOX");
	assert_int_equal(s->messages, 2);
	FREE(s);
}

static void test_mailbox_names_rename(void **state)
{
	struct store *st = *state;
	mk_domain(st, "example.test");
	mk_user(st, "a@example.test");
	Merpati__V1__CreateMailboxRequest c = MERPATI__V1__CREATE_MAILBOX_REQUEST__INIT;
	c.user = "a@example.test";
	const char *good[] = { "a", "a/b", "a/b/c", "Ünïcødé", "x y" };
	for (size_t i = 0; i < sizeof(good) / sizeof(*good); i++) {
		c.name = (char *)good[i];
		assert_int_equal(call(st, STORE_CREATE_MAILBOX, &c, NULL, NULL), 0);
	}
	const char *bad[] = { "", "/a", "a/", "a//b", "a/../b", ".", "a\tb", "a*", "b%",
			      "\xff\xfe", "\xc0\xaf" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
		c.name = (char *)bad[i];
		assert_int_equal(call(st, STORE_CREATE_MAILBOX, &c, NULL, NULL), MP_EINVAL);
	}
	char longname[300];
	memset(longname, 'n', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	c.name = longname;
	assert_int_equal(call(st, STORE_CREATE_MAILBOX, &c, NULL, NULL), MP_EINVAL);
	c.name = "inbox";
	assert_int_equal(call(st, STORE_CREATE_MAILBOX, &c, NULL, NULL), MP_EEXIST);

	uint32_t u;
	assert_int_equal(append(st, "a@example.test", "a/b", "Subject: x\r\n\r\ny\r\n", NULL, 0, &u, NULL), 0);
	Merpati__V1__RenameMailboxRequest r = MERPATI__V1__RENAME_MAILBOX_REQUEST__INIT;
	r.user = "a@example.test";
	r.name = "a";
	r.new_name = "z";
	assert_int_equal(call(st, STORE_RENAME_MAILBOX, &r, NULL, NULL), 0);
	Merpati__V1__StatusReply *s = status(st, "a@example.test", "z/b");
	assert_int_equal(s->messages, 1);
	FREE(s);
	Merpati__V1__StatusRequest sq = MERPATI__V1__STATUS_REQUEST__INIT;
	sq.user = "a@example.test";
	sq.name = "a/b";
	assert_int_equal(call(st, STORE_STATUS, &sq, NULL, NULL), MP_ENOENT);
	r.name = "z";
	r.new_name = "z/b/q";
	assert_int_equal(call(st, STORE_RENAME_MAILBOX, &r, NULL, NULL), MP_EINVAL);
	r.new_name = "Sent";
	assert_int_equal(call(st, STORE_RENAME_MAILBOX, &r, NULL, NULL), MP_EEXIST);
}

static void test_restart_and_faults(void **state)
{
	struct store *st = *state;
	mk_domain(st, "example.test");
	mk_user(st, "a@example.test");
	uint32_t u = 0, last = 0;
	uint64_t m = 0, lastm = 0;
	for (int i = 0; i < 20; i++) {
		char body[64];
		snprintf(body, sizeof(body), "Subject: %d\r\n\r\nx\r\n", i);
		assert_int_equal(append(st, "a@example.test", "INBOX", body, NULL, 0, &u, &m), 0);
		assert_true(u > last);
		assert_true(m > lastm);
		last = u, lastm = m;
	}
	assert_int_equal(expunge(st, "a@example.test", "INBOX", "15:*"), 0);

	/* an injected write failure: the caller gets EIO, nothing changed */
	store_debug_fail_writes(st, 1);
	assert_int_equal(append(st, "a@example.test", "INBOX", "Subject: lost\r\n\r\nx\r\n",
				NULL, 0, NULL, NULL), MP_EIO);
	Merpati__V1__StatusReply *s = status(st, "a@example.test", "INBOX");
	assert_int_equal(s->messages, 14);
	assert_int_equal(s->mailbox->uidnext, last + 1);
	uint64_t hm = s->mailbox->highestmodseq;
	FREE(s);

	/* restart: uidnext and modseq survive; the expunged uids stay used */
	store_close(&st);
	st = open_store(1);
	*state = st;
	s = status(st, "a@example.test", "INBOX");
	assert_int_equal(s->messages, 14);
	assert_int_equal(s->mailbox->uidnext, last + 1);
	assert_int_equal(s->mailbox->highestmodseq, hm);
	FREE(s);
	assert_int_equal(append(st, "a@example.test", "INBOX", "Subject: after\r\n\r\nx\r\n",
				NULL, 0, &u, &m), 0);
	assert_int_equal(u, last + 1);
	assert_true(m > hm);

	/* a shard count that differs from the data dir's is refused */
	store_close(&st);
	struct store_opts o = { .data_dir = dir, .node_id = "t", .shards = 8,
				.max_message_size = 1 << 20 };
	char *err = NULL;
	assert_int_equal(store_open(&o, &st, &err), MP_EINVAL);
	assert_non_null(err);
	free(err);
	st = open_store(1);
	*state = st;
}

/* A deleted and re-created account never sees an old uidvalidity again. */
static void test_uidvalidity_never_repeats(void **state)
{
	struct store *st = *state;
	mk_domain(st, "example.test");
	uint32_t prev = 0;
	for (int i = 0; i < 3; i++) {
		mk_user(st, "r@example.test");
		Merpati__V1__StatusReply *s = status(st, "r@example.test", "INBOX");
		assert_true(s->mailbox->uidvalidity > prev);
		prev = s->mailbox->uidvalidity;
		FREE(s);
		s = status(st, "r@example.test", "Archive");
		assert_true(s->mailbox->uidvalidity > prev);
		prev = s->mailbox->uidvalidity;
		FREE(s);
		Merpati__V1__UserRequest g = MERPATI__V1__USER_REQUEST__INIT;
		g.user = "r@example.test";
		assert_int_equal(call(st, STORE_DELETE_ACCOUNT, &g, NULL, NULL), 0);
	}
}

/* A write retried with the same request id is applied once and gets the
 * first answer again. */
static void test_request_id_dedup(void **state)
{
	struct store *st = *state;
	mk_domain(st, "example.test");
	mk_user(st, "a@example.test");
	Merpati__V1__AppendRequest q = MERPATI__V1__APPEND_REQUEST__INIT;
	Merpati__V1__AppendReply *r1 = NULL, *r2 = NULL, *r3 = NULL;
	const char *body = "Subject: once\r\n\r\nx\r\n";
	q.user = "a@example.test";
	q.mailbox = "INBOX";
	q.body.data = (uint8_t *)body;
	q.body.len = strlen(body);
	q.request_id = "req-1";
	assert_int_equal(call(st, STORE_APPEND, &q, &merpati__v1__append_reply__descriptor, &r1), 0);
	assert_int_equal(call(st, STORE_APPEND, &q, &merpati__v1__append_reply__descriptor, &r2), 0);
	assert_int_equal(r1->uid, r2->uid);
	assert_int_equal(r1->modseq, r2->modseq);
	q.request_id = "req-2";
	assert_int_equal(call(st, STORE_APPEND, &q, &merpati__v1__append_reply__descriptor, &r3), 0);
	assert_int_equal(r3->uid, r1->uid + 1);
	Merpati__V1__StatusReply *s = status(st, "a@example.test", "INBOX");
	assert_int_equal(s->messages, 2);
	assert_int_equal(refcount(st, body), 2);
	FREE(s);
	FREE(r1);
	FREE(r2);
	FREE(r3);
	/* also across a restart (the id is stored with the write) */
	store_close(&st);
	st = open_store(1);
	*state = st;
	q.request_id = "req-1";
	assert_int_equal(call(st, STORE_APPEND, &q, &merpati__v1__append_reply__descriptor, &r1), 0);
	assert_int_equal(r1->uid, 1);
	FREE(r1);
	s = status(st, "a@example.test", "INBOX");
	assert_int_equal(s->messages, 2);
	FREE(s);
}

struct writer {
	struct store *st;
	int id;
	uint32_t uids[50];
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	char user[64];
	snprintf(user, sizeof(user), "w%d@example.test", w->id % 4);
	for (int i = 0; i < 50; i++) {
		char body[64];
		snprintf(body, sizeof(body), "Subject: %d-%d\r\n\r\nx\r\n", w->id, i);
		if (append(w->st, user, "INBOX", body, NULL, 0, &w->uids[i], NULL) != 0)
			w->uids[i] = 0;
	}
	return NULL;
}

static void test_concurrent_writers(void **state)
{
	struct store *st = *state;
	mk_domain(st, "example.test");
	for (int i = 0; i < 4; i++) {
		char user[64];
		snprintf(user, sizeof(user), "w%d@example.test", i);
		mk_user(st, user);
	}
	struct writer w[8];
	pthread_t t[8];
	for (int i = 0; i < 8; i++) {
		w[i].st = st;
		w[i].id = i;
		assert_int_equal(pthread_create(&t[i], NULL, writer_main, &w[i]), 0);
	}
	for (int i = 0; i < 8; i++)
		pthread_join(t[i], NULL);
	/* per user: 100 appends from two writers, uids 1..100 each used once */
	for (int u = 0; u < 4; u++) {
		int seen[101] = { 0 };
		for (int i = 0; i < 8; i++) {
			if (i % 4 != u)
				continue;
			for (int j = 0; j < 50; j++) {
				assert_true(w[i].uids[j] >= 1 && w[i].uids[j] <= 100);
				if (j > 0)
					assert_true(w[i].uids[j] > w[i].uids[j - 1]);
				seen[w[i].uids[j]]++;
			}
		}
		for (int k = 1; k <= 100; k++)
			assert_int_equal(seen[k], 1);
	}
	struct store_stats stats;
	store_get_stats(st, &stats);
	assert_true(stats.mutations >= 400 + 5);
	assert_true(stats.groups <= stats.mutations);
}

/* ---------------------------------------------------------- cluster */

static char dir2[256];
static struct store *follower;

struct apply_wait {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int done, err;
	uint64_t epoch, lsn;
};

static void apply_cb(int err, const char *msg, uint64_t epoch, uint64_t lsn, void *arg)
{
	struct apply_wait *w = arg;
	(void)msg;
	pthread_mutex_lock(&w->mu);
	w->err = err;
	w->epoch = epoch;
	w->lsn = lsn;
	w->done = 1;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

static int apply_sync(struct store *st, uint32_t shard, uint64_t epoch,
		      const ProtobufCBinaryData *recs, size_t n, uint64_t *lsn_r)
{
	struct apply_wait w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0 };
	int r = store_apply(st, shard, epoch, recs, n, apply_cb, &w);
	if (r < 0)
		return r;
	pthread_mutex_lock(&w.mu);
	while (!w.done)
		pthread_cond_wait(&w.cv, &w.mu);
	pthread_mutex_unlock(&w.mu);
	if (lsn_r)
		*lsn_r = w.lsn;
	return w.err;
}

static int repl_calls;
static int repl_result = STORE_REPL_OK;

/* The leader's hook: ship each shard's records to the follower store. */
static void replicate_to_follower(void *arg, const struct store_rec *recs, size_t n, int *res)
{
	(void)arg;
	repl_calls++;
	for (size_t i = 0; i < n;) {
		size_t j = i;
		ProtobufCBinaryData b[64];
		size_t m = 0;
		while (j < n && recs[j].shard == recs[i].shard && m < 64) {
			b[m].data = (uint8_t *)recs[j].data;
			b[m].len = recs[j].len;
			m++, j++;
		}
		int r = apply_sync(follower, recs[i].shard, recs[i].epoch, b, m, NULL);
		for (size_t k = i; k < j; k++)
			res[k] = r == 0 ? repl_result : STORE_REPL_FENCED;
		i = j;
	}
}

static struct store *open_retain(const char *d, uint64_t retain)
{
	struct store_opts o = { .data_dir = d, .node_id = "t", .shards = 1,
				.max_message_size = 1 << 20, .log_retain = retain,
				.max_pending = 1000 };
	struct store *st = NULL;
	char *err = NULL;
	assert_int_equal(store_open(&o, &st, &err), 0);
	free(err);
	return st;
}

static struct store *open_dir(const char *d)
{
	return open_retain(d, 1000);
}

static void test_cluster_replication(void **state)
{
	struct store *st = *state;
	snprintf(dir2, sizeof(dir2), "/tmp/merpati-test-store2-XXXXXX");
	assert_non_null(mkdtemp(dir2));
	follower = open_dir(dir2);

	/* cluster mode: a shard this node does not lead answers NOT_LEADER */
	store_set_cluster(st, true);
	store_set_role(st, 0, STORE_ROLE_FOLLOWER, 1, "other");
	Merpati__V1__DomainRequest d = MERPATI__V1__DOMAIN_REQUEST__INIT;
	d.name = "example.test";
	assert_int_equal(call(st, STORE_CREATE_DOMAIN, &d, NULL, NULL), MP_ENOTLEADER);
	assert_non_null(strstr(last_msg, "other"));
	assert_int_equal(call(st, STORE_GET_DOMAIN, &d, NULL, NULL), MP_ENOTLEADER);

	store_set_role(st, 0, STORE_ROLE_LEADER, 2, "me");
	store_set_cluster(follower, true);
	store_set_role(follower, 0, STORE_ROLE_FOLLOWER, 2, "me");
	store_set_replicator(st, replicate_to_follower, NULL);
	mk_domain(st, "example.test");
	mk_user(st, "a@example.test");
	uint32_t uid = 0;
	for (int i = 0; i < 5; i++)
		assert_int_equal(append(st, "a@example.test", "INBOX", "Subject: r\r\n\r\nx\r\n",
					NULL, 0, &uid, NULL), 0);
	assert_true(repl_calls >= 7);

	enum store_role role;
	uint64_t le, ll, fe, fl;
	store_get_pos(st, 0, &role, &le, &ll);
	assert_int_equal(role, STORE_ROLE_LEADER);
	store_get_pos(follower, 0, &role, &fe, &fl);
	assert_int_equal(role, STORE_ROLE_FOLLOWER);
	assert_int_equal(ll, fl);
	assert_int_equal(le, 2);
	assert_int_equal(fe, 2);
	uint64_t ep;
	assert_int_equal(store_log_epoch(follower, 0, fl, &ep), 0);
	assert_int_equal(ep, 2);

	/* fencing: a batch from an older epoch changes nothing */
	struct store_log log;
	assert_int_equal(store_read_log(st, 0, 1, 1 << 20, &log), 0);
	assert_int_equal(log.n, ll);
	store_set_role(follower, 0, STORE_ROLE_FOLLOWER, 3, "new");
	assert_int_equal(apply_sync(follower, 0, 2, log.recs, 1, NULL), MP_ESTATE);
	/* duplicates are skipped, a gap is refused */
	uint64_t at;
	assert_int_equal(apply_sync(follower, 0, 3, log.recs, log.n, &at), 0);
	assert_int_equal(at, ll);
	store_log_free(&log);

	/* a fenced leader writes nothing and answers NOT_LEADER */
	repl_result = STORE_REPL_OK;
	store_set_role(follower, 0, STORE_ROLE_FOLLOWER, 5, "newer");
	assert_int_equal(append(st, "a@example.test", "INBOX", "Subject: f\r\n\r\nx\r\n",
				NULL, 0, NULL, NULL), MP_ENOTLEADER);
	store_get_pos(st, 0, &role, &le, &at);
	assert_int_equal(at, ll);

	/* a fresh replica catches up from the leader's log, then leads */
	char dir3[256];
	snprintf(dir3, sizeof(dir3), "/tmp/merpati-test-store3-XXXXXX");
	assert_non_null(mkdtemp(dir3));
	struct store *c = open_dir(dir3);
	assert_int_equal(store_read_log(st, 0, 1, 100, &log), 0);
	assert_true(log.n >= 1);
	ProtobufCBinaryData *rest = log.recs + 1;
	assert_int_equal(apply_sync(c, 0, 2, rest, log.n - 1 > 0 ? log.n - 1 : 1, NULL),
			 log.n > 1 ? MP_ESTALE : MP_ESTALE); /* starts at lsn 2: a gap */
	store_log_free(&log);
	for (uint64_t from = 1; from <= ll;) {
		assert_int_equal(store_read_log(st, 0, from, 100, &log), 0);
		assert_int_equal(apply_sync(c, 0, 2, log.recs, log.n, &at), 0);
		from += log.n;
		store_log_free(&log);
	}
	assert_int_equal(at, ll);
	assert_int_equal(store_read_log(st, 0, ll + 1, 100, &log), MP_ESTALE);
	store_set_cluster(c, true);
	store_set_role(c, 0, STORE_ROLE_LEADER, 6, "c");
	Merpati__V1__StatusReply *s = status(c, "a@example.test", "INBOX");
	assert_int_equal(s->messages, 5);
	assert_int_equal(s->mailbox->uidnext, uid + 1);
	FREE(s);
	uint32_t u2;
	assert_int_equal(append(c, "a@example.test", "INBOX", "Subject: c\r\n\r\nx\r\n",
				NULL, 0, &u2, NULL), 0);
	assert_int_equal(u2, uid + 1);
	store_close(&c);
	store_close(&follower);
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s' '%s'", dir2, dir3);
	assert_int_equal(system(cmd), 0);
}

struct snap_copy {
	struct store *dst;
	int err;
};

static int snap_copy_emit(void *arg, int cf, const char *k, size_t kl, const char *v, size_t vl)
{
	struct snap_copy *c = arg;
	ProtobufCBinaryData key = { kl, (uint8_t *)k }, val = { vl, (uint8_t *)v };
	c->err = store_snapshot_put(c->dst, 0, &cf, &key, &val, 1);
	return c->err;
}

/* A shard copied by snapshot is the same shard: same digest, same
 * position, and the copy can lead it. */
static void test_snapshot_copy(void **state)
{
	struct store *st = *state;
	mk_domain(st, "example.test");
	mk_user(st, "a@example.test");
	for (int i = 0; i < 5; i++)
		assert_int_equal(append(st, "a@example.test", "INBOX", "Subject: s\r\n\r\nx\r\n",
					NULL, 0, NULL, NULL), 0);
	snprintf(dir2, sizeof(dir2), "/tmp/merpati-test-store4-XXXXXX");
	assert_non_null(mkdtemp(dir2));
	struct store *b = open_dir(dir2);
	/* b holds something else first: the snapshot replaces it */
	mk_domain(b, "other.test");
	assert_int_equal(store_snapshot_begin(b, 0), 0);
	struct snap_copy c = { b, 0 };
	uint64_t epoch, lsn;
	assert_int_equal(store_snapshot_read(st, 0, snap_copy_emit, &c, &epoch, &lsn), 0);
	assert_int_equal(store_snapshot_end(b, 0, epoch, lsn), 0);
	uint8_t d1[32], d2[32];
	uint64_t k1, k2, e1, e2, l1, l2;
	assert_int_equal(store_shard_digest(st, 0, d1, &k1, &e1, &l1), 0);
	assert_int_equal(store_shard_digest(b, 0, d2, &k2, &e2, &l2), 0);
	assert_int_equal(k1, k2);
	assert_memory_equal(d1, d2, 32);
	assert_int_equal(l1, l2);
	uint64_t ep;
	assert_int_equal(store_log_epoch(b, 0, lsn, &ep), 0);
	/* the copy refuses a snapshot while it leads */
	store_set_cluster(b, true);
	store_set_role(b, 0, STORE_ROLE_LEADER, 2, "b");
	assert_int_equal(store_snapshot_begin(b, 0), MP_ESTATE);
	uint32_t uid = 0;
	assert_int_equal(append(b, "a@example.test", "INBOX", "Subject: t\r\n\r\nx\r\n",
				NULL, 0, &uid, NULL), 0);
	assert_int_equal(uid, 6);
	Merpati__V1__DomainRequest d = MERPATI__V1__DOMAIN_REQUEST__INIT;
	d.name = "other.test";
	assert_int_equal(call(b, STORE_GET_DOMAIN, &d, NULL, NULL), MP_ENOENT);
	store_close(&b);
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir2);
	assert_int_equal(system(cmd), 0);
}

/* ------------------------------------------------------------ log trimming */

#define RETAIN 16

/* Many independent mutations at once (one record each; they share groups
 * of up to GROUP_MAX_MUTATIONS). Counts answers by kind. */
struct burst {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int done, ok, unavail, other;
};

static void burst_cb(int err, const char *errmsg, const ProtobufCMessage *reply, void *arg)
{
	struct burst *b = arg;
	(void)errmsg;
	(void)reply;
	pthread_mutex_lock(&b->mu);
	b->done++;
	if (err == 0)
		b->ok++;
	else if (err == MP_EUNAVAIL)
		b->unavail++;
	else
		b->other++;
	pthread_cond_signal(&b->cv);
	pthread_mutex_unlock(&b->mu);
}

static void burst(struct store *st, const char *prefix, int n, int *ok_r, int *unavail_r)
{
	struct burst b = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0 };
	Merpati__V1__DomainRequest *q = calloc((size_t)n, sizeof(*q));
	char (*names)[32] = calloc((size_t)n, sizeof(*names));
	assert_non_null(q);
	assert_non_null(names);
	int queued = 0;
	for (int i = 0; i < n; i++) {
		merpati__v1__domain_request__init(&q[i]);
		snprintf(names[i], sizeof(names[i]), "%s%d.test", prefix, i);
		q[i].name = names[i];
		if (store_call(st, STORE_CREATE_DOMAIN, &q[i].base, burst_cb, &b) == 0)
			queued++;
	}
	pthread_mutex_lock(&b.mu);
	while (b.done < queued)
		pthread_cond_wait(&b.cv, &b.mu);
	pthread_mutex_unlock(&b.mu);
	assert_int_equal(queued, n);
	assert_int_equal(b.other, 0);
	*ok_r = b.ok;
	*unavail_r = b.unavail;
	free(q);
	free(names);
}

static bool log_has(struct store *st, uint64_t lsn)
{
	uint64_t ep;
	return store_log_epoch(st, 0, lsn, &ep) == 0;
}

/* Every record of [lo, hi] is in st's log. */
static void assert_log_holds(struct store *st, uint64_t lo, uint64_t hi)
{
	for (uint64_t l = lo; l <= hi; l++)
		if (!log_has(st, l)) {
			fprintf(stderr, "log lacks lsn %llu (want %llu..%llu)\n",
				(unsigned long long)l, (unsigned long long)lo,
				(unsigned long long)hi);
			fail();
		}
}

static uint64_t pos_lsn(struct store *st)
{
	enum store_role role;
	uint64_t e, l;
	store_get_pos(st, 0, &role, &e, &l);
	return l;
}

static struct store *fol_a, *fol_b;
static bool fol_b_down;

/* Ship records of shard 0 to follower f as repl.c does: the leader's
 * in-sync lsn first, then the records; on a gap the missing ones from the
 * leader's log. 0 when f holds up to last. */
static int ship(struct store *leader, struct store *f, uint64_t epoch,
		const ProtobufCBinaryData *b, size_t m, uint64_t first, uint64_t last)
{
	uint64_t at = 0;
	store_set_in_sync_lsn(f, 0, epoch, store_get_in_sync_lsn(leader, 0));
	int r = apply_sync(f, 0, epoch, b, m, &at);
	for (int round = 0; r == MP_ESTALE && at + 1 < first && round < 100; round++) {
		struct store_log log;
		if (store_read_log(leader, 0, at + 1, 1 << 20, &log) < 0)
			return MP_ESTALE;  /* the log does not reach back: a snapshot */
		r = apply_sync(f, 0, epoch, log.recs, log.n, &at);
		store_log_free(&log);
		if (r == 0)
			r = apply_sync(f, 0, epoch, b, m, &at);
	}
	return r == 0 && at >= last ? 0 : -1;
}

/* The leader's hook with two in-sync followers A and B. While B is
 * "down" it stays in the ISR without the records (as when the leader
 * cannot reach etcd to drop it): UNDER_MIN, written but not acknowledged. */
static void trim_hook(void *arg, const struct store_rec *recs, size_t n, int *res)
{
	struct store *leader = arg;
	ProtobufCBinaryData *b = calloc(n, sizeof(*b));
	for (size_t i = 0; b != NULL && i < n; i++) {
		b[i].data = (uint8_t *)recs[i].data;
		b[i].len = recs[i].len;
	}
	bool a_ok = b != NULL &&
		    ship(leader, fol_a, recs[0].epoch, b, n, recs[0].lsn, recs[n - 1].lsn) == 0;
	bool b_ok = b != NULL && !fol_b_down &&
		    ship(leader, fol_b, recs[0].epoch, b, n, recs[0].lsn, recs[n - 1].lsn) == 0;
	for (size_t i = 0; i < n; i++)
		res[i] = !a_ok ? STORE_REPL_FENCED : b_ok ? STORE_REPL_OK : STORE_REPL_UNDER_MIN;
	free(b);
}

/* One node, no cluster: the log keeps the last log_retain records. */
static void test_log_trim_single_node(void **state)
{
	struct store *st = *state;
	store_close(&st);
	*state = st = open_retain(dir, RETAIN);
	int ok, unavail;
	burst(st, "s", 300, &ok, &unavail);
	assert_int_equal(ok, 300);
	mk_domain(st, "tick.test");
	uint64_t l = pos_lsn(st);
	assert_int_equal(l, 301);
	assert_false(log_has(st, 1));
	assert_log_holds(st, l - RETAIN, l);
}

/* Cluster: the leader's log, and its followers', are trimmed once every
 * in-sync member has the records, never past a member that is in the ISR
 * but behind, and log_retain records are kept below that point. */
static void test_log_trim_in_sync(void **state)
{
	struct store *st = *state;
	char da[256], db[256], cmd[600];
	int ok, unavail;
	store_close(&st);
	*state = st = open_retain(dir, RETAIN);
	snprintf(da, sizeof(da), "/tmp/merpati-test-trima-XXXXXX");
	snprintf(db, sizeof(db), "/tmp/merpati-test-trimb-XXXXXX");
	assert_non_null(mkdtemp(da));
	assert_non_null(mkdtemp(db));
	fol_a = open_retain(da, RETAIN);
	fol_b = open_retain(db, RETAIN);
	fol_b_down = false;
	store_set_cluster(st, true);
	store_set_cluster(fol_a, true);
	store_set_cluster(fol_b, true);
	store_set_role(st, 0, STORE_ROLE_LEADER, 2, "L");
	store_set_role(fol_a, 0, STORE_ROLE_FOLLOWER, 2, "L");
	store_set_role(fol_b, 0, STORE_ROLE_FOLLOWER, 2, "L");
	store_set_replicator(st, trim_hook, st);

	/* Everyone acknowledges: trimmed everywhere, log_retain kept. */
	burst(st, "a", 400, &ok, &unavail);
	assert_int_equal(ok, 400);
	mk_domain(st, "tick1.test");  /* followers learn the last in-sync lsn */
	uint64_t l1 = pos_lsn(st);
	assert_int_equal(l1, 401);
	assert_int_equal(store_get_in_sync_lsn(st, 0), l1);
	assert_int_equal(pos_lsn(fol_a), l1);
	assert_int_equal(pos_lsn(fol_b), l1);
	struct store *all[3] = { st, fol_a, fol_b };
	for (int i = 0; i < 3; i++) {
		assert_false(log_has(all[i], 1));
		assert_log_holds(all[i], l1 - RETAIN, l1);
	}

	/* B stays in the ISR but gets nothing: writes are not acknowledged,
	 * and no log is trimmed past B's position (count-based trimming would
	 * have dropped everything below l2 - RETAIN, far above it). */
	fol_b_down = true;
	uint64_t bl = pos_lsn(fol_b);
	burst(st, "b", 600, &ok, &unavail);
	assert_int_equal(unavail, 600);
	uint64_t l2 = pos_lsn(st);
	assert_int_equal(l2, bl + 600);
	assert_int_equal(store_get_in_sync_lsn(st, 0), bl);
	assert_int_equal(pos_lsn(fol_a), l2);
	assert_int_equal(pos_lsn(fol_b), bl);
	assert_log_holds(st, bl - RETAIN, l2);
	assert_log_holds(fol_a, bl - RETAIN, l2);
	/* a stale leader's word does not move a follower's in-sync lsn */
	assert_int_equal(store_get_in_sync_lsn(fol_a, 0), bl);
	store_set_in_sync_lsn(fol_a, 0, 1, l2);
	assert_int_equal(store_get_in_sync_lsn(fol_a, 0), bl);

	/* B is back: caught up from the leader's log (which still reaches
	 * it), then everything is trimmed past where B was. */
	fol_b_down = false;
	mk_domain(st, "tick2.test");
	uint64_t l3 = pos_lsn(st);
	assert_int_equal(pos_lsn(fol_b), l3);
	assert_int_equal(store_get_in_sync_lsn(st, 0), l3);
	burst(st, "c", 300, &ok, &unavail);
	assert_int_equal(ok, 300);
	mk_domain(st, "tick3.test");
	uint64_t l4 = pos_lsn(st);
	uint8_t d[3][32];
	uint64_t keys[3], ep, lsn;
	for (int i = 0; i < 3; i++) {
		assert_int_equal(pos_lsn(all[i]), l4);
		assert_false(log_has(all[i], bl));
		assert_log_holds(all[i], l4 - RETAIN, l4);
		assert_int_equal(store_shard_digest(all[i], 0, d[i], &keys[i], &ep, &lsn), 0);
		assert_memory_equal(d[i], d[0], 32);
		assert_int_equal(keys[i], keys[0]);
	}
	store_close(&fol_a);
	store_close(&fol_b);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s' '%s'", da, db);
	assert_int_equal(system(cmd), 0);
}

/* IMAP EXPUNGE: only_deleted removes exactly the \\Deleted messages of the
 * set, decided with the removal. */
static void test_expunge_only_deleted(void **state)
{
	struct store *st = *state;
	mk_domain(st, "example.test");
	mk_user(st, "a@example.test");
	for (int i = 0; i < 6; i++) {
		char body[64];
		snprintf(body, sizeof(body), "Subject: %d\r\n\r\nx\r\n", i);
		assert_int_equal(append(st, "a@example.test", "INBOX", body, NULL, 0, NULL, NULL), 0);
	}
	Merpati__V1__StoreFlagsRequest q = MERPATI__V1__STORE_FLAGS_REQUEST__INIT;
	char *del = "\\Deleted";
	q.user = "a@example.test";
	q.mailbox = "INBOX";
	q.uid_set = "2,4:5";
	q.mode = MERPATI__V1__FLAG_MODE__FLAGS_ADD;
	q.flags = &del;
	q.n_flags = 1;
	assert_int_equal(call(st, STORE_STORE_FLAGS, &q, NULL, NULL), 0);

	Merpati__V1__ExpungeRequest e = MERPATI__V1__EXPUNGE_REQUEST__INIT;
	Merpati__V1__ExpungeReply *er = NULL;
	e.user = "a@example.test";
	e.mailbox = "INBOX";
	e.uid_set = "1:4";
	e.only_deleted = true;
	assert_int_equal(call(st, STORE_EXPUNGE, &e, &merpati__v1__expunge_reply__descriptor, &er), 0);
	assert_int_equal(er->n_expunged, 2);
	assert_int_equal(er->expunged[0], 2);
	assert_int_equal(er->expunged[1], 4);
	FREE(er);
	e.uid_set = "1:*";
	assert_int_equal(call(st, STORE_EXPUNGE, &e, &merpati__v1__expunge_reply__descriptor, &er), 0);
	assert_int_equal(er->n_expunged, 1);
	assert_int_equal(er->expunged[0], 5);
	FREE(er);
	Merpati__V1__StatusReply *s = status(st, "a@example.test", "INBOX");
	assert_int_equal(s->messages, 3);
	FREE(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_account_defaults, setup, teardown),
		cmocka_unit_test_setup_teardown(test_append_fetch_flags, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refcount_copy_move_expunge, setup, teardown),
		cmocka_unit_test_setup_teardown(test_append_many, setup, teardown),
		cmocka_unit_test_setup_teardown(test_mailbox_names_rename, setup, teardown),
		cmocka_unit_test_setup_teardown(test_restart_and_faults, setup, teardown),
		cmocka_unit_test_setup_teardown(test_concurrent_writers, setup, teardown),
		cmocka_unit_test_setup_teardown(test_uidvalidity_never_repeats, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cluster_replication, setup, teardown),
		cmocka_unit_test_setup_teardown(test_request_id_dedup, setup, teardown),
		cmocka_unit_test_setup_teardown(test_snapshot_copy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_log_trim_single_node, setup, teardown),
		cmocka_unit_test_setup_teardown(test_log_trim_in_sync, setup, teardown),
		cmocka_unit_test_setup_teardown(test_expunge_only_deleted, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
