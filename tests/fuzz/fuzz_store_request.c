/*
 * fuzz_store_request: arbitrary MailStore requests into a real store.
 *
 * The first byte picks the method, the rest is unpacked as that method's
 * request message (as the gRPC glue would), and the store must answer every
 * one without crashing, leaking or corrupting itself. A small account with a
 * few messages, an alias and queued entries are set up once so mutations
 * reach deep code. Queue ids cannot be guessed (they are hashes), so a
 * queue request that names no id gets a fresh entry claimed by "fz", and
 * its id (and "fz" as owner when none is given) is put in: updates, retries
 * and deletes then get past the lookup and the owner check.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mailstore.pb-c.h"
#include "store.h"

static struct store *st;

static const ProtobufCMessageDescriptor *req_desc[STORE_OP_COUNT] = {
	[STORE_CREATE_DOMAIN] = &merpati__v1__domain_request__descriptor,
	[STORE_DELETE_DOMAIN] = &merpati__v1__domain_request__descriptor,
	[STORE_GET_DOMAIN] = &merpati__v1__domain_request__descriptor,
	[STORE_LIST_DOMAINS] = &merpati__v1__list_domains_request__descriptor,
	[STORE_CREATE_ACCOUNT] = &merpati__v1__create_account_request__descriptor,
	[STORE_DELETE_ACCOUNT] = &merpati__v1__user_request__descriptor,
	[STORE_GET_ACCOUNT] = &merpati__v1__user_request__descriptor,
	[STORE_LIST_ACCOUNTS] = &merpati__v1__list_accounts_request__descriptor,
	[STORE_SET_PASSWORD] = &merpati__v1__set_password_request__descriptor,
	[STORE_SET_QUOTA] = &merpati__v1__set_quota_request__descriptor,
	[STORE_SET_STATE] = &merpati__v1__set_state_request__descriptor,
	[STORE_CREATE_MAILBOX] = &merpati__v1__create_mailbox_request__descriptor,
	[STORE_DELETE_MAILBOX] = &merpati__v1__mailbox_request__descriptor,
	[STORE_RENAME_MAILBOX] = &merpati__v1__rename_mailbox_request__descriptor,
	[STORE_LIST_MAILBOXES] = &merpati__v1__list_mailboxes_request__descriptor,
	[STORE_SUBSCRIBE] = &merpati__v1__subscribe_request__descriptor,
	[STORE_STATUS] = &merpati__v1__status_request__descriptor,
	[STORE_APPEND] = &merpati__v1__append_request__descriptor,
	[STORE_APPEND_MANY] = &merpati__v1__append_many_request__descriptor,
	[STORE_FETCH_INDEX] = &merpati__v1__fetch_index_request__descriptor,
	[STORE_FETCH_BODY] = &merpati__v1__fetch_body_request__descriptor,
	[STORE_STORE_FLAGS] = &merpati__v1__store_flags_request__descriptor,
	[STORE_COPY] = &merpati__v1__copy_request__descriptor,
	[STORE_MOVE] = &merpati__v1__copy_request__descriptor,
	[STORE_EXPUNGE] = &merpati__v1__expunge_request__descriptor,
	[STORE_CHANGES_SINCE] = &merpati__v1__changes_since_request__descriptor,
	[STORE_NODE_INFO] = &merpati__v1__empty__descriptor,
	[STORE_SET_ALIAS] = &merpati__v1__alias_request__descriptor,
	[STORE_DELETE_ALIAS] = &merpati__v1__alias_request__descriptor,
	[STORE_GET_ALIAS] = &merpati__v1__alias_request__descriptor,
	[STORE_LIST_ALIASES] = &merpati__v1__list_aliases_request__descriptor,
	[STORE_RESOLVE_RECIPIENT] = &merpati__v1__user_request__descriptor,
	[STORE_QUEUE_ADD] = &merpati__v1__queue_add_request__descriptor,
	[STORE_QUEUE_CLAIM] = &merpati__v1__queue_claim_request__descriptor,
	[STORE_QUEUE_UPDATE] = &merpati__v1__queue_update_request__descriptor,
	[STORE_QUEUE_LIST] = &merpati__v1__queue_list_request__descriptor,
	[STORE_QUEUE_GET] = &merpati__v1__queue_id_request__descriptor,
	[STORE_QUEUE_DELETE] = &merpati__v1__queue_id_request__descriptor,
	[STORE_QUEUE_RETRY] = &merpati__v1__queue_id_request__descriptor,
	[STORE_MAILDROP_LOCK] = &merpati__v1__maildrop_lock_request__descriptor,
};

struct wait {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int done;
};

static void done_cb(int err, const char *msg, const ProtobufCMessage *reply, void *arg)
{
	struct wait *w = arg;
	/* Touch the reply as the gRPC glue would: pack it. */
	if (err == 0 && reply != NULL) {
		size_t n = protobuf_c_message_get_packed_size(reply);
		uint8_t *b = malloc(n + 1);
		if (b != NULL)
			protobuf_c_message_pack(reply, b);
		free(b);
	}
	(void)msg;
	pthread_mutex_lock(&w->mu);
	w->done = 1;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

static void run(enum store_op op, const ProtobufCMessage *req)
{
	struct wait w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0 };
	if (store_call(st, op, req, done_cb, &w) < 0)
		return;
	pthread_mutex_lock(&w.mu);
	while (!w.done)
		pthread_cond_wait(&w.cv, &w.mu);
	pthread_mutex_unlock(&w.mu);
}

/* A QueueAdd's answer: the new id, copied out of the reply. */
struct add_wait {
	struct wait w;
	char id[64];
};

static void add_cb(int err, const char *msg, const ProtobufCMessage *reply, void *arg)
{
	struct add_wait *a = arg;
	(void)msg;
	if (err == 0 && reply != NULL) {
		const Merpati__V1__QueueAddReply *r = (const void *)reply;
		snprintf(a->id, sizeof(a->id), "%s", r->id ? r->id : "");
	}
	pthread_mutex_lock(&a->w.mu);
	a->w.done = 1;
	pthread_cond_signal(&a->w.cv);
	pthread_mutex_unlock(&a->w.mu);
}

/* Queue a fresh entry in shard and claim what is due there as "fz"; the
 * entry's id into id (empty when the add failed). */
static void fresh_claimed_entry(uint32_t shard, char *id, size_t idlen)
{
	static unsigned long long n;
	struct add_wait a = { { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0 }, "" };
	Merpati__V1__QueueRcpt r1 = MERPATI__V1__QUEUE_RCPT__INIT;
	Merpati__V1__QueueRcpt r2 = MERPATI__V1__QUEUE_RCPT__INIT;
	Merpati__V1__QueueRcpt *rp[2] = { &r1, &r2 };
	Merpati__V1__QueueEntry e = MERPATI__V1__QUEUE_ENTRY__INIT;
	Merpati__V1__QueueAddRequest q = MERPATI__V1__QUEUE_ADD_REQUEST__INIT;
	char rid[64];
	r1.address = "x@remote.test";
	r2.address = "y@remote.test";
	e.sender = "a@f.test";
	e.rcpts = rp;
	e.n_rcpts = 2;
	snprintf(rid, sizeof(rid), "fz-%llu", n++);
	q.shard = shard;
	q.entry = &e;
	static const char body[] = "Subject: q\r\n\r\nx\r\n";
	q.body.data = (uint8_t *)body;
	q.body.len = sizeof(body) - 1;
	q.request_id = rid;
	id[0] = '\0';
	if (store_call(st, STORE_QUEUE_ADD, &q.base, add_cb, &a) < 0)
		return;
	pthread_mutex_lock(&a.w.mu);
	while (!a.w.done)
		pthread_cond_wait(&a.w.cv, &a.w.mu);
	pthread_mutex_unlock(&a.w.mu);
	Merpati__V1__QueueClaimRequest c = MERPATI__V1__QUEUE_CLAIM_REQUEST__INIT;
	c.shard = shard;
	c.owner = "fz";
	c.lease_ms = 60000;
	run(STORE_QUEUE_CLAIM, &c.base);
	snprintf(id, idlen, "%s", a.id);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static char dir[] = "/tmp/merpati-fuzz-store-XXXXXX";
	char *err = NULL;
	(void)argc;
	(void)argv;
	if (mkdtemp(dir) == NULL)
		abort();
	struct store_opts o = { .data_dir = dir, .node_id = "fuzz", .shards = 4,
				.max_message_size = 1 << 16, .log_retain = 100,
				.max_pending = 100 };
	if (store_open(&o, &st, &err) < 0) {
		fprintf(stderr, "store_open: %s\n", err ? err : "?");
		abort();
	}
	Merpati__V1__DomainRequest d = MERPATI__V1__DOMAIN_REQUEST__INIT;
	d.name = "f.test";
	run(STORE_CREATE_DOMAIN, &d.base);
	Merpati__V1__CreateAccountRequest a = MERPATI__V1__CREATE_ACCOUNT_REQUEST__INIT;
	a.user = "a@f.test";
	run(STORE_CREATE_ACCOUNT, &a.base);
	for (int i = 0; i < 5; i++) {
		Merpati__V1__AppendRequest q = MERPATI__V1__APPEND_REQUEST__INIT;
		char body[64];
		snprintf(body, sizeof(body), "Subject: %d\r\n\r\nx\r\n", i);
		q.user = "a@f.test";
		q.mailbox = "INBOX";
		q.body.data = (uint8_t *)body;
		q.body.len = strlen(body);
		run(STORE_APPEND, &q.base);
	}
	Merpati__V1__AliasRequest al = MERPATI__V1__ALIAS_REQUEST__INIT;
	char *targets[] = { "a@f.test", "far@remote.test" };
	al.alias = "list@f.test";
	al.targets = targets;
	al.n_targets = 2;
	run(STORE_SET_ALIAS, &al.base);
	char id[64];
	for (uint32_t s = 0; s < 4; s++)
		fresh_claimed_entry(s, id, sizeof(id));
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	enum store_op op = (enum store_op)(data[0] % STORE_OP_COUNT);
	ProtobufCMessage *req = protobuf_c_message_unpack(req_desc[op], NULL, size - 1, data + 1);
	if (req == NULL)
		return 0;
	/* Pointers put into the request are taken out again before it is
	 * freed: free_unpacked frees what unpack allocated. */
	char id[64];
	char **id_field = NULL, **owner_field = NULL;
	char *old_id = NULL, *old_owner = NULL;
	bool swapped_id = false, swapped_owner = false;
	uint32_t shard = 0;
	if (op == STORE_QUEUE_UPDATE) {
		Merpati__V1__QueueUpdateRequest *u = (void *)req;
		id_field = &u->id;
		owner_field = &u->owner;
		shard = u->shard;
	} else if (op == STORE_QUEUE_GET || op == STORE_QUEUE_DELETE || op == STORE_QUEUE_RETRY) {
		Merpati__V1__QueueIdRequest *g = (void *)req;
		id_field = &g->id;
		shard = g->shard;
	}
	if (id_field != NULL && (*id_field == NULL || **id_field == '\0')) {
		fresh_claimed_entry(shard % 4, id, sizeof(id));
		old_id = *id_field;
		*id_field = id;
		swapped_id = true;
		if (owner_field != NULL && (*owner_field == NULL || **owner_field == '\0')) {
			old_owner = *owner_field;
			*owner_field = "fz";
			swapped_owner = true;
		}
	}
	run(op, req);
	if (swapped_id)
		*id_field = old_id;
	if (swapped_owner)
		*owner_field = old_owner;
	protobuf_c_message_free_unpacked(req, NULL);
	return 0;
}
