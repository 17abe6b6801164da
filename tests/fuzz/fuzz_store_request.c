/*
 * fuzz_store_request: arbitrary MailStore requests into a real store.
 *
 * The first byte picks the method, the rest is unpacked as that method's
 * request message (as the gRPC glue would), and the store must answer every
 * one without crashing, leaking or corrupting itself. A small account with a
 * few messages is set up once so mutations reach deep code.
 */
#include <pthread.h>
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
	run(op, req);
	protobuf_c_message_free_unpacked(req, NULL);
	return 0;
}
