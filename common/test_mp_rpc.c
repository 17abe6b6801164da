/*
 * Tests for mp_rpc: a real gRPC server on 127.0.0.1 with the MailStore
 * service descriptor and a handler table that answers inline, from another
 * thread after a delay, with errors, and with server streams; real clients
 * (blocking, asynchronous, stream reader) against it.
 *
 * Never: talk to anything but 127.0.0.1, wait without a bound.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mailstore.pb-c.h"
#include "mp_error.h"
#include "mp_log.h"
#include "mp_rpc.h"

#define WAIT_MS 10000 /* upper bound of every wait for something to happen */
#define BIG_BODY (10u * 1024 * 1024)
#define N_ASYNC 64
#define SLOW_REPLY_MS 1000
#define FAST_REPLY_MS 50

static const ProtobufCServiceDescriptor *svc =
	&merpati__v1__mail_store__descriptor;

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void deadline_ts(struct timespec *ts, int64_t ms)
{
	clock_gettime(CLOCK_REALTIME, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (ms % 1000) * 1000000;
	if (ts->tv_nsec >= 1000000000) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000;
	}
}

/* ------------------------------------------------ what handlers saw */

static struct {
	pthread_mutex_t mu;
	pthread_cond_t cond;
	int get_calls;          /* GetDomain handler runs */
	int closes;             /* stream on_close runs */
	char peer[128];         /* last GetDomain peer */
	int send_rets[16];      /* Watch "q:" send results */
	int n_send_rets;
	bool delayed_other_thread; /* last delayed reply: not the handler's */
	int handler_errors;     /* checks that failed on a server thread */
	int send_after_close;   /* mp_rpc_stream_send inside on_close */
	int delayed_replies;
} seen = { .mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };

/* -------------------------- a reply thread, as the store's commit thread */

struct pending {
	struct pending *next;
	struct mp_rpc_call *call;
	char *name;          /* owned */
	int64_t due_ms;
	pthread_t handler;
};

static struct {
	pthread_t tid;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	struct pending *head, *tail;
	bool stop;
} worker = { .mu = PTHREAD_MUTEX_INITIALIZER,
	     .cond = PTHREAD_COND_INITIALIZER };

static void *worker_main(void *arg)
{
	(void)arg;
	for (;;) {
		struct pending *p;

		pthread_mutex_lock(&worker.mu);
		while (worker.head == NULL && !worker.stop)
			pthread_cond_wait(&worker.cond, &worker.mu);
		p = worker.head;
		if (p == NULL) {
			pthread_mutex_unlock(&worker.mu);
			return NULL;
		}
		worker.head = p->next;
		if (worker.head == NULL)
			worker.tail = NULL;
		pthread_mutex_unlock(&worker.mu);

		int64_t left = p->due_ms - now_ms();
		if (left > 0) {
			struct timespec ts = { left / 1000,
					       (left % 1000) * 1000000 };
			nanosleep(&ts, NULL);
		}
		Merpati__V1__Domain dom = MERPATI__V1__DOMAIN__INIT;
		Merpati__V1__DomainReply rep = MERPATI__V1__DOMAIN_REPLY__INIT;
		dom.name = p->name;
		rep.domain = &dom;
		pthread_mutex_lock(&seen.mu);
		seen.delayed_other_thread =
			!pthread_equal(p->handler, pthread_self());
		seen.delayed_replies++;
		pthread_mutex_unlock(&seen.mu);
		mp_rpc_reply(p->call, &rep.base, 0, NULL);
		free(p->name);
		free(p);
	}
}

static void worker_start(void)
{
	worker.stop = false;
	assert_int_equal(pthread_create(&worker.tid, NULL, worker_main, NULL),
			 0);
}

static void worker_stop(void)
{
	pthread_mutex_lock(&worker.mu);
	worker.stop = true;
	pthread_cond_broadcast(&worker.cond);
	pthread_mutex_unlock(&worker.mu);
	pthread_join(worker.tid, NULL);
}

/* ------------------------------------------------------------ handlers */

static void h_get_domain(struct mp_rpc_call *call, const ProtobufCMessage *req,
			 void *ctx)
{
	const Merpati__V1__DomainRequest *r = (const void *)req;
	Merpati__V1__Domain dom = MERPATI__V1__DOMAIN__INIT;
	Merpati__V1__DomainReply rep = MERPATI__V1__DOMAIN_REPLY__INIT;

	(void)ctx;
	pthread_mutex_lock(&seen.mu);
	seen.get_calls++;
	snprintf(seen.peer, sizeof(seen.peer), "%s", mp_rpc_call_peer(call));
	pthread_mutex_unlock(&seen.mu);
	dom.name = r->name;
	rep.domain = &dom;
	mp_rpc_reply(call, &rep.base, 0, NULL);
}

/* Answered later by the worker thread, like the store's commit thread. */
static void h_create_domain(struct mp_rpc_call *call,
			    const ProtobufCMessage *req, void *ctx)
{
	const Merpati__V1__DomainRequest *r = (const void *)req;
	struct pending *p = calloc(1, sizeof(*p));

	(void)ctx;
	if (p == NULL || (p->name = strdup(r->name)) == NULL) {
		free(p);
		mp_rpc_reply(call, NULL, MP_ENOMEM, "out of memory");
		return;
	}
	p->call = call;
	p->handler = pthread_self();
	p->due_ms = now_ms() + (strncmp(r->name, "slow:", 5) == 0
				? SLOW_REPLY_MS : FAST_REPLY_MS);
	pthread_mutex_lock(&worker.mu);
	if (worker.tail != NULL)
		worker.tail->next = p;
	else
		worker.head = p;
	worker.tail = p;
	pthread_cond_signal(&worker.cond);
	pthread_mutex_unlock(&worker.mu);
}

static void h_delete_domain(struct mp_rpc_call *call,
			    const ProtobufCMessage *req, void *ctx)
{
	const Merpati__V1__DomainRequest *r = (const void *)req;
	char msg[300];

	(void)ctx;
	snprintf(msg, sizeof(msg), "no such domain: %s", r->name);
	mp_rpc_reply(call, NULL, MP_ENOENT, msg);
}

static void h_list_domains(struct mp_rpc_call *call,
			   const ProtobufCMessage *req, void *ctx)
{
	(void)req;
	(void)ctx;
	mp_rpc_reply(call, NULL, MP_ENOTLEADER, "leader is n2");
}

static void h_set_state(struct mp_rpc_call *call, const ProtobufCMessage *req,
			void *ctx)
{
	(void)req;
	(void)ctx;
	mp_rpc_reply(call, NULL, MP_ESTATE, "account busy");
}

static void h_append(struct mp_rpc_call *call, const ProtobufCMessage *req,
		     void *ctx)
{
	const Merpati__V1__AppendRequest *r = (const void *)req;
	Merpati__V1__AppendReply rep = MERPATI__V1__APPEND_REPLY__INIT;
	uint64_t sum = 0;

	(void)ctx;
	for (size_t i = 0; i < r->body.len; i++)
		sum = sum * 31 + r->body.data[i];
	rep.uid = (uint32_t)r->body.len;
	rep.modseq = sum;
	mp_rpc_reply(call, &rep.base, 0, NULL);
}

static void h_unimpl(struct mp_rpc_call *call, const ProtobufCMessage *req,
		     void *ctx)
{
	(void)req;
	(void)ctx;
	mp_rpc_reply(call, NULL, MP_EUNIMPL, "not in this test");
}

static int watch_send(struct mp_rpc_call *call, uint32_t i);

/* cmocka's asserts must not run on a server thread: count, check later. */
static void handler_error(void)
{
	pthread_mutex_lock(&seen.mu);
	seen.handler_errors++;
	pthread_mutex_unlock(&seen.mu);
}

static void watch_closed(struct mp_rpc_call *call, void *arg)
{
	int ret;

	(void)arg;
	ret = watch_send(call, 99);
	pthread_mutex_lock(&seen.mu);
	seen.send_after_close = ret;
	seen.closes++;
	pthread_cond_broadcast(&seen.cond);
	pthread_mutex_unlock(&seen.mu);
	mp_rpc_stream_release(call);
}

static int watch_send(struct mp_rpc_call *call, uint32_t i)
{
	Merpati__V1__WatchEvent ev = MERPATI__V1__WATCH_EVENT__INIT;

	ev.kind = i == 0 ? MERPATI__V1__WATCH_KIND__WATCH_READY
			 : MERPATI__V1__WATCH_KIND__WATCH_MAILBOX;
	ev.mailbox_id = i;
	ev.highestmodseq = 1000 + i;
	return mp_rpc_stream_send(call, &ev.base);
}

/* The request's user picks the behaviour:
 *   "n:N"    N events (0..N-1), then OK
 *   "q:N"    N sends into a queue of 3 without yielding, then OK
 *   "hold"   one READY event, then open until the client or stop ends it
 *   "fail"   one event, then EPERM "go away"
 *   "reject" no stream: ENOENT "no such user" */
static void h_watch(struct mp_rpc_call *call, const ProtobufCMessage *req,
		    void *ctx)
{
	const Merpati__V1__WatchRequest *r = (const void *)req;
	int n;

	(void)ctx;
	if (strcmp(r->user, "reject") == 0) {
		mp_rpc_reply(call, NULL, MP_ENOENT, "no such user");
		return;
	}
	if (strncmp(r->user, "n:", 2) == 0) {
		n = atoi(r->user + 2);
		mp_rpc_stream_start(call, (size_t)n + 1, watch_closed, NULL);
		for (int i = 0; i < n; i++)
			if (watch_send(call, (uint32_t)i) != 0)
				handler_error();
		mp_rpc_stream_finish(call, 0, NULL);
		/* Still on the call's thread, so not closed yet: finished. */
		if (watch_send(call, 0) != MP_ESTATE)
			handler_error();
		return;
	}
	if (strncmp(r->user, "q:", 2) == 0) {
		n = atoi(r->user + 2);
		mp_rpc_stream_start(call, 3, watch_closed, NULL);
		pthread_mutex_lock(&seen.mu);
		seen.n_send_rets = 0;
		for (int i = 0; i < n && i < 16; i++)
			seen.send_rets[seen.n_send_rets++] =
				watch_send(call, (uint32_t)i);
		pthread_mutex_unlock(&seen.mu);
		mp_rpc_stream_finish(call, 0, NULL);
		return;
	}
	mp_rpc_stream_start(call, 16, watch_closed, NULL);
	if (watch_send(call, 0) != 0)
		handler_error();
	if (strcmp(r->user, "fail") == 0)
		mp_rpc_stream_finish(call, MP_EPERM, "go away");
}

static struct mp_rpc_method table[64];
static size_t table_n;

static void table_build(void)
{
	table_n = svc->n_methods;
	assert_true(table_n <= 64);
	for (size_t i = 0; i < table_n; i++) {
		const char *name = svc->methods[i].name;

		table[i].name = name;
		table[i].server_streaming = 0;
		table[i].handler = h_unimpl;
		if (strcmp(name, "GetDomain") == 0)
			table[i].handler = h_get_domain;
		else if (strcmp(name, "CreateDomain") == 0)
			table[i].handler = h_create_domain;
		else if (strcmp(name, "DeleteDomain") == 0)
			table[i].handler = h_delete_domain;
		else if (strcmp(name, "ListDomains") == 0)
			table[i].handler = h_list_domains;
		else if (strcmp(name, "SetState") == 0)
			table[i].handler = h_set_state;
		else if (strcmp(name, "Append") == 0)
			table[i].handler = h_append;
		else if (strcmp(name, "Watch") == 0) {
			table[i].handler = h_watch;
			table[i].server_streaming = 1;
		}
	}
}

/* -------------------------------------------------------------- fixture */

static struct mp_rpc_server *srv;
static struct mp_rpc_channel *ch;

static int start_server(size_t max_msg, struct mp_rpc_server **srv_r)
{
	struct mp_rpc_server_opts opts = { .listen = "127.0.0.1:0",
					   .threads = 2, .max_msg = max_msg };
	char *error = NULL;
	int ret;

	ret = mp_rpc_server_start(svc, table, table_n, NULL, &opts, srv_r,
				  &error);
	if (ret < 0)
		fprintf(stderr, "server start: %s\n", error ? error : "?");
	free(error);
	return ret;
}

static int open_channel(struct mp_rpc_server *s, size_t max_msg,
			struct mp_rpc_channel **ch_r)
{
	char target[64];

	snprintf(target, sizeof(target), "127.0.0.1:%d", mp_rpc_server_port(s));
	return mp_rpc_channel_open(target, max_msg, ch_r);
}

static int group_setup(void **state)
{
	(void)state;
	mp_log_set_level(MP_LOG_WARN);
	mp_rpc_init();
	table_build();
	worker_start();
	if (start_server(0, &srv) < 0)
		return -1;
	if (mp_rpc_server_port(srv) <= 0)
		return -1;
	return open_channel(srv, 0, &ch) < 0 ? -1 : 0;
}

static int group_teardown(void **state)
{
	(void)state;
	mp_rpc_channel_close(&ch);
	mp_rpc_channel_close(&ch); /* safe twice */
	/* The worker still answers while the server stops: stop waits for
	 * every pending unary reply. */
	mp_rpc_server_stop(&srv);
	mp_rpc_server_stop(&srv);
	worker_stop();
	mp_rpc_shutdown();
	/* Checked last: handlers ran on server threads until stop. */
	pthread_mutex_lock(&seen.mu);
	int errors = seen.handler_errors;
	pthread_mutex_unlock(&seen.mu);
	if (errors != 0) {
		fprintf(stderr, "%d handler checks failed\n", errors);
		return -1;
	}
	return 0;
}

static char path_buf[128];

static const char *path(const char *method)
{
	const char *p = mp_rpc_method_path(svc, method, path_buf,
					   sizeof(path_buf));
	assert_non_null(p);
	return p;
}

/* Blocking call of a DomainRequest method; returns err, fills *name_r. */
static int call_domain(struct mp_rpc_channel *c, const char *method,
		       const char *name, char **name_r, char **error_r)
{
	Merpati__V1__DomainRequest req = MERPATI__V1__DOMAIN_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;
	int ret;

	req.name = (char *)name;
	ret = mp_rpc_call(c, path(method), &req.base,
			  &merpati__v1__domain_reply__descriptor, 5000, &resp,
			  error_r);
	*name_r = NULL;
	if (ret == 0) {
		const Merpati__V1__DomainReply *r = (const void *)resp;

		assert_non_null(r);
		assert_non_null(r->domain);
		*name_r = strdup(r->domain->name);
		protobuf_c_message_free_unpacked(resp, NULL);
	} else {
		assert_null(resp);
	}
	return ret;
}

static void wait_closes(int want)
{
	struct timespec ts;

	deadline_ts(&ts, WAIT_MS);
	pthread_mutex_lock(&seen.mu);
	while (seen.closes < want &&
	       pthread_cond_timedwait(&seen.cond, &seen.mu, &ts) == 0)
		;
	pthread_mutex_unlock(&seen.mu);
}

static int closes_now(void)
{
	int n;

	pthread_mutex_lock(&seen.mu);
	n = seen.closes;
	pthread_mutex_unlock(&seen.mu);
	return n;
}

/* ---------------------------------------------------------------- tests */

static void test_pb_helpers(void **state)
{
	Merpati__V1__DomainRequest req = MERPATI__V1__DOMAIN_REQUEST__INIT;
	static const uint8_t garbage[] = { 0x0a, 0xff, 0x01 };
	ProtobufCMessage *msg = NULL;
	uint8_t *buf = NULL;
	size_t len = 0;

	(void)state;
	req.name = "example.org";
	req.request_id = "r1";
	assert_int_equal(mp_pb_pack(&req.base, &buf, &len), 0);
	assert_true(len > 0);
	assert_int_equal(mp_pb_unpack(&merpati__v1__domain_request__descriptor,
				      buf, len, &msg), 0);
	assert_string_equal(((Merpati__V1__DomainRequest *)msg)->name,
			    "example.org");
	assert_string_equal(((Merpati__V1__DomainRequest *)msg)->request_id,
			    "r1");
	protobuf_c_message_free_unpacked(msg, NULL);
	free(buf);

	/* Empty message: zero bytes, still a valid message. */
	Merpati__V1__Empty empty = MERPATI__V1__EMPTY__INIT;
	assert_int_equal(mp_pb_pack(&empty.base, &buf, &len), 0);
	assert_int_equal(len, 0);
	assert_int_equal(mp_pb_unpack(&merpati__v1__empty__descriptor, buf, len,
				      &msg), 0);
	protobuf_c_message_free_unpacked(msg, NULL);
	free(buf);

	msg = NULL;
	assert_int_equal(mp_pb_unpack(&merpati__v1__domain_request__descriptor,
				      garbage, sizeof(garbage), &msg),
			 MP_EPROTO);
	assert_null(msg);
}

static void test_method_path(void **state)
{
	char out[64];

	(void)state;
	assert_string_equal(mp_rpc_method_path(svc, "Append", out, sizeof(out)),
			    "/merpati.v1.MailStore/Append");
	assert_null(mp_rpc_method_path(svc, "NoSuch", out, sizeof(out)));
	/* Truncation is refused, not returned. */
	assert_null(mp_rpc_method_path(svc, "Append", out, 10));
	assert_true(strncmp(mp_rpc_channel_target(ch), "127.0.0.1:", 10) == 0);
}

static void test_unary_roundtrip(void **state)
{
	char *name = NULL, *error = NULL;

	(void)state;
	assert_int_equal(call_domain(ch, "GetDomain", "example.org", &name,
				     &error), 0);
	assert_string_equal(name, "example.org");
	assert_null(error);
	free(name);
	pthread_mutex_lock(&seen.mu);
	assert_true(strncmp(seen.peer, "ipv4:127.0.0.1:", 15) == 0);
	pthread_mutex_unlock(&seen.mu);

	/* An empty request is a valid message too. */
	assert_int_equal(call_domain(ch, "GetDomain", "", &name, &error), 0);
	assert_string_equal(name, "");
	free(name);
}

static void test_error_mapping(void **state)
{
	char *name = NULL, *error = NULL;

	(void)state;
	assert_int_equal(call_domain(ch, "DeleteDomain", "x.org", &name,
				     &error), MP_ENOENT);
	assert_null(name);
	assert_non_null(error);
	assert_string_equal(error, "no such domain: x.org");
	free(error);

	/* ENOTLEADER survives the trip although it shares
	 * FAILED_PRECONDITION with ESTATE. */
	Merpati__V1__ListDomainsRequest lreq =
		MERPATI__V1__LIST_DOMAINS_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;
	assert_int_equal(mp_rpc_call(ch, path("ListDomains"), &lreq.base,
				     &merpati__v1__list_domains_reply__descriptor,
				     5000, &resp, &error), MP_ENOTLEADER);
	assert_null(resp);
	assert_non_null(error);
	assert_string_equal(error, "leader is n2");
	free(error);

	Merpati__V1__SetStateRequest sreq = MERPATI__V1__SET_STATE_REQUEST__INIT;
	assert_int_equal(mp_rpc_call(ch, path("SetState"), &sreq.base,
				     &merpati__v1__empty__descriptor, 5000,
				     &resp, &error), MP_ESTATE);
	assert_string_equal(error, "account busy");
	free(error);

	Merpati__V1__Empty ereq = MERPATI__V1__EMPTY__INIT;
	assert_int_equal(mp_rpc_call(ch, path("NodeInfo"), &ereq.base,
				     &merpati__v1__node_info_reply__descriptor,
				     5000, &resp, &error), MP_EUNIMPL);
	assert_string_equal(error, "not in this test");
	free(error);

	/* error_r may be NULL. */
	assert_int_equal(mp_rpc_call(ch, path("NodeInfo"), &ereq.base,
				     &merpati__v1__node_info_reply__descriptor,
				     5000, &resp, NULL), MP_EUNIMPL);

	/* A path the server does not know. */
	assert_int_equal(mp_rpc_call(ch, "/merpati.v1.MailStore/Nope",
				     &ereq.base, &merpati__v1__empty__descriptor,
				     5000, &resp, &error), MP_EUNIMPL);
	free(error);
}

static void test_malformed_request(void **state)
{
	/* Field 1 as a varint where DomainRequest has a string. */
	Merpati__V1__WatchEvent bad = MERPATI__V1__WATCH_EVENT__INIT;
	ProtobufCMessage *resp = NULL;
	char *error = NULL;
	int before;

	(void)state;
	bad.kind = MERPATI__V1__WATCH_KIND__WATCH_MAILBOX;
	pthread_mutex_lock(&seen.mu);
	before = seen.get_calls;
	pthread_mutex_unlock(&seen.mu);
	assert_int_equal(mp_rpc_call(ch, path("GetDomain"), &bad.base,
				     &merpati__v1__domain_reply__descriptor,
				     5000, &resp, &error), MP_EINVAL);
	assert_null(resp);
	assert_string_equal(error, "malformed request");
	free(error);
	pthread_mutex_lock(&seen.mu);
	assert_int_equal(seen.get_calls, before);
	pthread_mutex_unlock(&seen.mu);
}

static void test_reply_other_thread(void **state)
{
	char *name = NULL, *error = NULL;
	int64_t t0 = now_ms();

	(void)state;
	pthread_mutex_lock(&seen.mu);
	seen.delayed_other_thread = false;
	pthread_mutex_unlock(&seen.mu);
	assert_int_equal(call_domain(ch, "CreateDomain", "later.org", &name,
				     &error), 0);
	assert_string_equal(name, "later.org");
	free(name);
	assert_true(now_ms() - t0 >= FAST_REPLY_MS - 5);
	pthread_mutex_lock(&seen.mu);
	assert_true(seen.delayed_other_thread);
	pthread_mutex_unlock(&seen.mu);
}

struct async_result {
	pthread_mutex_t *mu;
	pthread_cond_t *cond;
	int *done;
	int err;
	char name[32];
	int runs;
};

static void async_done(int err, const char *error, ProtobufCMessage *resp,
		       void *arg)
{
	struct async_result *r = arg;

	(void)error;
	pthread_mutex_lock(r->mu);
	r->err = err;
	r->runs++;
	if (resp != NULL) {
		const Merpati__V1__DomainReply *d = (const void *)resp;

		if (d->domain != NULL)
			snprintf(r->name, sizeof(r->name), "%s",
				 d->domain->name);
		protobuf_c_message_free_unpacked(resp, NULL);
	}
	(*r->done)++;
	pthread_cond_broadcast(r->cond);
	pthread_mutex_unlock(r->mu);
}

static void test_async_concurrent(void **state)
{
	static struct async_result res[N_ASYNC];
	pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
	pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
	struct mp_rpc_cq *cq = NULL;
	struct timespec ts;
	int done = 0;

	(void)state;
	assert_int_equal(mp_rpc_cq_start(&cq), 0);
	for (int i = 0; i < N_ASYNC; i++) {
		Merpati__V1__DomainRequest req =
			MERPATI__V1__DOMAIN_REQUEST__INIT;
		char name[32];

		memset(&res[i], 0, sizeof(res[i]));
		res[i].mu = &mu;
		res[i].cond = &cond;
		res[i].done = &done;
		res[i].err = 1;
		snprintf(name, sizeof(name), "d%d.org", i);
		req.name = name;
		/* Half inline, half answered later from the worker. */
		assert_int_equal(mp_rpc_call_async(
			ch, cq, path(i % 2 ? "CreateDomain" : "GetDomain"),
			&req.base, &merpati__v1__domain_reply__descriptor, 5000,
			async_done, &res[i]), 0);
	}
	deadline_ts(&ts, WAIT_MS);
	pthread_mutex_lock(&mu);
	while (done < N_ASYNC &&
	       pthread_cond_timedwait(&cond, &mu, &ts) == 0)
		;
	assert_int_equal(done, N_ASYNC);
	pthread_mutex_unlock(&mu);
	for (int i = 0; i < N_ASYNC; i++) {
		char name[32];

		snprintf(name, sizeof(name), "d%d.org", i);
		assert_int_equal(res[i].err, 0);
		assert_int_equal(res[i].runs, 1);
		assert_string_equal(res[i].name, name);
	}
	mp_rpc_cq_stop(&cq);
	assert_null(cq);
	mp_rpc_cq_stop(&cq);
}

static void test_async_cancel_on_stop(void **state)
{
	pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
	pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
	Merpati__V1__DomainRequest req = MERPATI__V1__DOMAIN_REQUEST__INIT;
	struct async_result r;
	struct mp_rpc_cq *cq = NULL;
	int done = 0;
	int64_t t0;

	(void)state;
	memset(&r, 0, sizeof(r));
	r.mu = &mu;
	r.cond = &cond;
	r.done = &done;
	r.err = 1;
	req.name = "slow:cancelled.org";
	assert_int_equal(mp_rpc_cq_start(&cq), 0);
	assert_int_equal(mp_rpc_call_async(ch, cq, path("CreateDomain"),
					   &req.base,
					   &merpati__v1__domain_reply__descriptor,
					   5000, async_done, &r), 0);
	t0 = now_ms();
	mp_rpc_cq_stop(&cq);
	/* The callback ran, with ECANCELED, before stop returned and long
	 * before the server would have answered. */
	assert_int_equal(done, 1);
	assert_int_equal(r.runs, 1);
	assert_int_equal(r.err, MP_ECANCELED);
	assert_true(now_ms() - t0 < SLOW_REPLY_MS);
}

static struct mp_rpc_cq *self_cq;

static void async_done_stop(int err, const char *error,
			    ProtobufCMessage *resp, void *arg)
{
	/* Stopping the queue from its own callback must not deadlock. */
	mp_rpc_cq_stop(&self_cq);
	async_done(err, error, resp, arg);
}

static void test_async_stop_in_callback(void **state)
{
	pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
	pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
	Merpati__V1__DomainRequest req = MERPATI__V1__DOMAIN_REQUEST__INIT;
	struct async_result r[2];
	struct timespec ts;
	int done = 0;

	(void)state;
	memset(r, 0, sizeof(r));
	for (int i = 0; i < 2; i++) {
		r[i].mu = &mu;
		r[i].cond = &cond;
		r[i].done = &done;
		r[i].err = 1;
	}
	assert_int_equal(mp_rpc_cq_start(&self_cq), 0);
	req.name = "slow:never.org";
	assert_int_equal(mp_rpc_call_async(ch, self_cq, path("CreateDomain"),
					   &req.base,
					   &merpati__v1__domain_reply__descriptor,
					   5000, async_done, &r[1]), 0);
	req.name = "now.org";
	assert_int_equal(mp_rpc_call_async(ch, self_cq, path("GetDomain"),
					   &req.base,
					   &merpati__v1__domain_reply__descriptor,
					   5000, async_done_stop, &r[0]), 0);
	deadline_ts(&ts, WAIT_MS);
	pthread_mutex_lock(&mu);
	while (done < 2 && pthread_cond_timedwait(&cond, &mu, &ts) == 0)
		;
	pthread_mutex_unlock(&mu);
	assert_int_equal(done, 2);
	assert_null(self_cq);
	assert_int_equal(r[0].err, 0);
	assert_string_equal(r[0].name, "now.org");
	assert_int_equal(r[1].err, MP_ECANCELED);
	assert_int_equal(r[1].runs, 1);
}

static void test_big_message(void **state)
{
	Merpati__V1__AppendRequest req = MERPATI__V1__APPEND_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;
	char *error = NULL;
	uint64_t sum = 0;
	uint8_t *body;

	(void)state;
	body = malloc(BIG_BODY);
	assert_non_null(body);
	for (size_t i = 0; i < BIG_BODY; i++) {
		body[i] = (uint8_t)(i * 7 + (i >> 13));
		sum = sum * 31 + body[i];
	}
	req.user = "u@example.org";
	req.mailbox = "INBOX";
	req.body.data = body;
	req.body.len = BIG_BODY;
	assert_int_equal(mp_rpc_call(ch, path("Append"), &req.base,
				     &merpati__v1__append_reply__descriptor,
				     30000, &resp, &error), 0);
	assert_null(error);
	assert_int_equal(((Merpati__V1__AppendReply *)resp)->uid, BIG_BODY);
	assert_true(((Merpati__V1__AppendReply *)resp)->modseq == sum);
	protobuf_c_message_free_unpacked(resp, NULL);
	free(body);
}

static void test_too_big(void **state)
{
	Merpati__V1__AppendRequest req = MERPATI__V1__APPEND_REQUEST__INIT;
	struct mp_rpc_server *small = NULL;
	struct mp_rpc_channel *c = NULL;
	ProtobufCMessage *resp = NULL;
	char *error = NULL;
	uint8_t *body;

	(void)state;
	body = calloc(1, 2u << 20);
	assert_non_null(body);
	req.body.data = body;
	req.body.len = 2u << 20;

	/* The server refuses what is over its limit. */
	assert_int_equal(start_server(1u << 20, &small), 0);
	assert_int_equal(open_channel(small, 0, &c), 0);
	assert_int_equal(mp_rpc_call(c, path("Append"), &req.base,
				     &merpati__v1__append_reply__descriptor,
				     10000, &resp, &error), MP_ENOSPC);
	assert_null(resp);
	free(error);
	/* ... and still serves what fits. */
	req.body.len = 1000;
	assert_int_equal(mp_rpc_call(c, path("Append"), &req.base,
				     &merpati__v1__append_reply__descriptor,
				     10000, &resp, &error), 0);
	assert_int_equal(((Merpati__V1__AppendReply *)resp)->uid, 1000);
	protobuf_c_message_free_unpacked(resp, NULL);
	mp_rpc_channel_close(&c);
	mp_rpc_server_stop(&small);
	assert_null(small);

	/* The client refuses to send what is over its own limit. */
	req.body.len = 2u << 20;
	assert_int_equal(open_channel(srv, 1u << 20, &c), 0);
	assert_int_equal(mp_rpc_call(c, path("Append"), &req.base,
				     &merpati__v1__append_reply__descriptor,
				     10000, &resp, &error), MP_ENOSPC);
	free(error);
	mp_rpc_channel_close(&c);
	free(body);
}

static struct mp_rpc_stream *open_watch(struct mp_rpc_channel *c,
					const char *user)
{
	Merpati__V1__WatchRequest req = MERPATI__V1__WATCH_REQUEST__INIT;
	struct mp_rpc_stream *st = NULL;
	char *error = NULL;

	req.user = (char *)user;
	assert_int_equal(mp_rpc_stream_open(c, path("Watch"), &req.base,
					    &merpati__v1__watch_event__descriptor,
					    0, &st, &error), 0);
	assert_null(error);
	assert_non_null(st);
	return st;
}

/* Next event: its mailbox_id, or the stream_next result when not 0. */
static int next_event(struct mp_rpc_stream *st, int64_t wait_ms,
		      char **error_r, uint64_t *modseq_r)
{
	ProtobufCMessage *msg = NULL;
	int ret;

	ret = mp_rpc_stream_next(st, wait_ms, &msg, error_r);
	if (ret != 0) {
		assert_null(msg);
		return ret < 0 ? ret : -1000;
	}
	assert_non_null(msg);
	ret = (int)((Merpati__V1__WatchEvent *)msg)->mailbox_id;
	if (modseq_r != NULL)
		*modseq_r = ((Merpati__V1__WatchEvent *)msg)->highestmodseq;
	protobuf_c_message_free_unpacked(msg, NULL);
	return ret;
}

static void test_stream_in_order(void **state)
{
	struct mp_rpc_stream *st;
	ProtobufCMessage *msg = NULL;
	char *error = NULL;
	uint64_t modseq = 0;
	int closes = closes_now();

	(void)state;
	st = open_watch(ch, "n:100");
	for (int i = 0; i < 100; i++) {
		assert_int_equal(next_event(st, 5000, &error, &modseq), i);
		assert_true(modseq == 1000u + (unsigned)i);
	}
	assert_int_equal(mp_rpc_stream_next(st, 5000, &msg, &error), 1);
	assert_null(msg);
	assert_null(error);
	/* Stays ended. */
	assert_int_equal(mp_rpc_stream_next(st, 5000, &msg, &error), 1);
	mp_rpc_stream_close(&st);
	assert_null(st);
	mp_rpc_stream_close(&st);
	/* A finished stream closes too (the server released it there). */
	wait_closes(closes + 1);
	assert_int_equal(closes_now(), closes + 1);
}

static void test_stream_queue_limit(void **state)
{
	struct mp_rpc_stream *st;
	char *error = NULL;
	int closes = closes_now();

	(void)state;
	st = open_watch(ch, "q:10");
	/* The handler never yields its thread, so nothing leaves the queue
	 * while it sends: the headers are in flight, three messages wait,
	 * the rest is refused. */
	for (int i = 0; i < 3; i++)
		assert_int_equal(next_event(st, 5000, &error, NULL), i);
	assert_int_equal(next_event(st, 5000, &error, NULL), -1000);
	mp_rpc_stream_close(&st);
	pthread_mutex_lock(&seen.mu);
	assert_int_equal(seen.n_send_rets, 10);
	for (int i = 0; i < 10; i++)
		assert_int_equal(seen.send_rets[i], i < 3 ? 0 : MP_ENOSPC);
	pthread_mutex_unlock(&seen.mu);
	wait_closes(closes + 1);
	assert_int_equal(closes_now(), closes + 1);
}

static void test_stream_errors(void **state)
{
	struct mp_rpc_stream *st;
	char *error = NULL;

	(void)state;
	st = open_watch(ch, "fail");
	assert_int_equal(next_event(st, 5000, &error, NULL), 0);
	assert_int_equal(next_event(st, 5000, &error, NULL), MP_EPERM);
	assert_string_equal(error, "go away");
	free(error);
	mp_rpc_stream_close(&st);

	/* Refused before any stream: the status is the first thing read. */
	st = open_watch(ch, "reject");
	assert_int_equal(next_event(st, 5000, &error, NULL), MP_ENOENT);
	assert_string_equal(error, "no such user");
	free(error);
	assert_int_equal(next_event(st, 5000, &error, NULL), MP_ENOENT);
	free(error);
	mp_rpc_stream_close(&st);
}

static void test_stream_client_cancel(void **state)
{
	struct mp_rpc_stream *st;
	char *error = NULL;
	int closes = closes_now();
	int64_t t0;

	(void)state;
	st = open_watch(ch, "hold");
	assert_int_equal(next_event(st, 5000, &error, NULL), 0);
	/* Nothing more comes: the wait ends and the stream stays usable. */
	t0 = now_ms();
	assert_int_equal(next_event(st, 200, &error, NULL), MP_ETIMEDOUT);
	assert_true(now_ms() - t0 >= 150);
	assert_null(error);
	assert_int_equal(closes_now(), closes);
	mp_rpc_stream_close(&st);
	wait_closes(closes + 1);
	assert_int_equal(closes_now(), closes + 1);
	pthread_mutex_lock(&seen.mu);
	assert_int_equal(seen.send_after_close, MP_ECANCELED);
	pthread_mutex_unlock(&seen.mu);
}

static void test_stop_with_live_stream(void **state)
{
	struct mp_rpc_server *s = NULL;
	struct mp_rpc_channel *c = NULL;
	struct mp_rpc_stream *st, *st2;
	char *error = NULL;
	int closes = closes_now();
	int ret;

	(void)state;
	assert_int_equal(start_server(0, &s), 0);
	assert_int_equal(open_channel(s, 0, &c), 0);
	st = open_watch(c, "hold");
	st2 = open_watch(c, "hold");
	assert_int_equal(next_event(st, 5000, &error, NULL), 0);
	assert_int_equal(next_event(st2, 5000, &error, NULL), 0);
	mp_rpc_server_stop(&s);
	assert_null(s);
	/* Both on_close ran before stop returned. */
	assert_int_equal(closes_now(), closes + 2);
	ret = next_event(st, 5000, &error, NULL);
	assert_true(ret < 0 && ret != MP_ETIMEDOUT && ret != -1000);
	free(error);
	mp_rpc_stream_close(&st);
	mp_rpc_stream_close(&st2);
	mp_rpc_channel_close(&c);
}

static void test_missing_method(void **state)
{
	struct mp_rpc_method partial[64];
	struct mp_rpc_server_opts opts = { .listen = "127.0.0.1:0" };
	struct mp_rpc_server *s = NULL;
	char *error = NULL;
	size_t n = 0;

	(void)state;
	for (size_t i = 0; i < table_n; i++)
		if (strcmp(table[i].name, "NodeInfo") != 0)
			partial[n++] = table[i];
	assert_int_equal(n, table_n - 1);
	assert_int_equal(mp_rpc_server_start(svc, partial, n, NULL, &opts, &s,
					     &error), MP_EINVAL);
	assert_null(s);
	assert_non_null(error);
	assert_non_null(strstr(error, "NodeInfo"));
	free(error);

	/* A name the service does not have is refused too. */
	memcpy(partial, table, table_n * sizeof(table[0]));
	partial[table_n] = table[0];
	partial[table_n].name = "Bogus";
	assert_int_equal(mp_rpc_server_start(svc, partial, table_n + 1, NULL,
					     &opts, &s, &error), MP_EINVAL);
	assert_non_null(strstr(error, "Bogus"));
	free(error);
	assert_null(s);
}

static void test_port_in_use(void **state)
{
	struct mp_rpc_server *s = NULL;
	char listen[64];
	struct mp_rpc_server_opts opts = { .listen = listen };
	char *error = NULL;

	(void)state;
	/* SO_REUSEPORT is off: a second server cannot share the port. */
	snprintf(listen, sizeof(listen), "127.0.0.1:%d",
		 mp_rpc_server_port(srv));
	assert_true(mp_rpc_server_start(svc, table, table_n, NULL, &opts, &s,
					&error) < 0);
	assert_null(s);
	assert_non_null(error);
	free(error);
}

static void test_closed_port(void **state)
{
	struct mp_rpc_server *s = NULL;
	struct mp_rpc_channel *c = NULL;
	char *name = NULL, *error = NULL;
	int64_t t0;

	(void)state;
	/* A port that was just ours and is now closed. */
	assert_int_equal(start_server(0, &s), 0);
	assert_int_equal(open_channel(s, 0, &c), 0);
	mp_rpc_server_stop(&s);

	t0 = now_ms();
	assert_int_equal(call_domain(c, "GetDomain", "x.org", &name, &error),
			 MP_EUNAVAIL);
	assert_true(now_ms() - t0 < 3000);
	free(error);

	/* The stream reader sees the same. */
	struct mp_rpc_stream *st = open_watch(c, "hold");
	assert_int_equal(next_event(st, 5000, &error, NULL), MP_EUNAVAIL);
	free(error);
	mp_rpc_stream_close(&st);
	mp_rpc_channel_close(&c);
}

/* ------------------------------------------------ asynchronous streams */

#define AS_MAX_IDS 128
#define N_ASTREAMS 200

struct as_result {
	pthread_mutex_t mu;
	pthread_cond_t cond;
	int ids[AS_MAX_IDS];
	int n_msgs;
	int ends;
	int err;
	char error[64];
	bool msg_after_end;
	bool release_in_end;          /* release the handle from on_end */
	struct mp_rpc_astream *st;    /* the handle, for release_in_end */
};

static void as_init(struct as_result *r)
{
	memset(r, 0, sizeof(*r));
	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->cond, NULL);
	r->err = 1;
}

static void as_destroy(struct as_result *r)
{
	pthread_mutex_destroy(&r->mu);
	pthread_cond_destroy(&r->cond);
}

static void as_msg(ProtobufCMessage *msg, void *arg)
{
	struct as_result *r = arg;
	const Merpati__V1__WatchEvent *ev = (const void *)msg;

	pthread_mutex_lock(&r->mu);
	if (r->ends > 0)
		r->msg_after_end = true;
	if (r->n_msgs < AS_MAX_IDS)
		r->ids[r->n_msgs] = (int)ev->mailbox_id;
	r->n_msgs++;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->mu);
	protobuf_c_message_free_unpacked(msg, NULL);
}

static void as_end(int err, const char *error, void *arg)
{
	struct as_result *r = arg;

	pthread_mutex_lock(&r->mu);
	r->ends++;
	r->err = err;
	snprintf(r->error, sizeof(r->error), "%s", error != NULL ? error : "");
	if (r->release_in_end)
		mp_rpc_astream_release(&r->st);
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->mu);
}

static struct mp_rpc_astream *as_open(struct mp_rpc_channel *c,
				      struct mp_rpc_cq *cq, const char *user,
				      struct as_result *r)
{
	Merpati__V1__WatchRequest req = MERPATI__V1__WATCH_REQUEST__INIT;
	struct mp_rpc_astream *st = NULL;

	req.user = (char *)user;
	assert_int_equal(mp_rpc_astream_open(c, cq, path("Watch"), &req.base,
					     &merpati__v1__watch_event__descriptor,
					     0, as_msg, as_end, r, &st), 0);
	assert_non_null(st);
	return st;
}

/* Waits (bounded) until r has at least msgs messages and ends ends. */
static void as_wait(struct as_result *r, int msgs, int ends)
{
	struct timespec ts;

	deadline_ts(&ts, WAIT_MS);
	pthread_mutex_lock(&r->mu);
	while ((r->n_msgs < msgs || r->ends < ends) &&
	       pthread_cond_timedwait(&r->cond, &r->mu, &ts) == 0)
		;
	pthread_mutex_unlock(&r->mu);
}

static void test_astream_in_order(void **state)
{
	struct mp_rpc_cq *cq = NULL;
	struct mp_rpc_astream *st;
	struct as_result r;
	int closes = closes_now();

	(void)state;
	as_init(&r);
	assert_int_equal(mp_rpc_cq_start(&cq), 0);
	st = as_open(ch, cq, "n:100", &r);
	as_wait(&r, 100, 1);
	pthread_mutex_lock(&r.mu);
	assert_int_equal(r.n_msgs, 100);
	for (int i = 0; i < 100; i++)
		assert_int_equal(r.ids[i], i);
	assert_int_equal(r.ends, 1);
	assert_int_equal(r.err, 0);
	assert_string_equal(r.error, "");
	assert_false(r.msg_after_end);
	pthread_mutex_unlock(&r.mu);
	/* Cancel after the end does nothing; release after it frees. */
	mp_rpc_astream_cancel(st);
	mp_rpc_astream_release(&st);
	assert_null(st);
	mp_rpc_astream_release(&st);
	mp_rpc_cq_stop(&cq);
	assert_int_equal(r.ends, 1);
	wait_closes(closes + 1);
	assert_int_equal(closes_now(), closes + 1);
	as_destroy(&r);
}

static void test_astream_errors(void **state)
{
	struct mp_rpc_cq *cq = NULL;
	struct mp_rpc_astream *st;
	struct as_result r;

	(void)state;
	assert_int_equal(mp_rpc_cq_start(&cq), 0);

	/* One event, then the server's error and its words. */
	as_init(&r);
	st = as_open(ch, cq, "fail", &r);
	/* Released before the end: the stream goes on to its end. */
	mp_rpc_astream_release(&st);
	as_wait(&r, 1, 1);
	pthread_mutex_lock(&r.mu);
	assert_int_equal(r.n_msgs, 1);
	assert_int_equal(r.ids[0], 0);
	assert_int_equal(r.ends, 1);
	assert_int_equal(r.err, MP_EPERM);
	assert_string_equal(r.error, "go away");
	pthread_mutex_unlock(&r.mu);
	as_destroy(&r);

	/* Refused before any message. */
	as_init(&r);
	r.release_in_end = true;
	pthread_mutex_lock(&r.mu);
	r.st = as_open(ch, cq, "reject", &r);
	pthread_mutex_unlock(&r.mu);
	as_wait(&r, 0, 1);
	pthread_mutex_lock(&r.mu);
	assert_int_equal(r.n_msgs, 0);
	assert_int_equal(r.ends, 1);
	assert_int_equal(r.err, MP_ENOENT);
	assert_string_equal(r.error, "no such user");
	assert_null(r.st);
	pthread_mutex_unlock(&r.mu);
	as_destroy(&r);

	/* Invalid arguments run no callback. */
	Merpati__V1__WatchRequest req = MERPATI__V1__WATCH_REQUEST__INIT;
	st = (void *)&r;
	assert_int_equal(mp_rpc_astream_open(ch, cq, path("Watch"), &req.base,
					     &merpati__v1__watch_event__descriptor,
					     0, NULL, as_end, &r, &st),
			 MP_EINVAL);
	assert_null(st);
	mp_rpc_cq_stop(&cq);
}

static void test_astream_cancel(void **state)
{
	struct mp_rpc_cq *cq = NULL;
	struct mp_rpc_astream *st;
	struct as_result r;
	int closes = closes_now();
	int64_t t0;

	(void)state;
	as_init(&r);
	assert_int_equal(mp_rpc_cq_start(&cq), 0);
	st = as_open(ch, cq, "hold", &r);
	as_wait(&r, 1, 0);
	pthread_mutex_lock(&r.mu);
	assert_int_equal(r.n_msgs, 1);
	assert_int_equal(r.ends, 0);
	pthread_mutex_unlock(&r.mu);
	/* The stream stays open: nothing ends it by itself. */
	struct timespec pause = { 0, 200 * 1000000 };
	nanosleep(&pause, NULL);
	pthread_mutex_lock(&r.mu);
	assert_int_equal(r.ends, 0);
	pthread_mutex_unlock(&r.mu);
	assert_int_equal(closes_now(), closes);

	t0 = now_ms();
	mp_rpc_astream_cancel(st);
	mp_rpc_astream_cancel(st); /* twice: nothing more */
	as_wait(&r, 1, 1);
	assert_true(now_ms() - t0 < 2000);
	pthread_mutex_lock(&r.mu);
	assert_int_equal(r.ends, 1);
	assert_int_equal(r.err, MP_ECANCELED);
	assert_int_equal(r.n_msgs, 1);
	pthread_mutex_unlock(&r.mu);
	/* The server saw the client go. */
	wait_closes(closes + 1);
	assert_int_equal(closes_now(), closes + 1);
	mp_rpc_astream_release(&st);
	mp_rpc_cq_stop(&cq);
	assert_int_equal(r.ends, 1);
	as_destroy(&r);
}

static void test_astream_many_and_stop(void **state)
{
	static struct as_result r[N_ASTREAMS];
	static struct mp_rpc_astream *st[N_ASTREAMS];
	struct mp_rpc_cq *cq = NULL;
	int closes = closes_now();

	(void)state;
	assert_int_equal(mp_rpc_cq_start(&cq), 0);
	for (int i = 0; i < N_ASTREAMS; i++) {
		as_init(&r[i]);
		st[i] = as_open(ch, cq, "hold", &r[i]);
	}
	for (int i = 0; i < N_ASTREAMS; i++) {
		as_wait(&r[i], 1, 0);
		pthread_mutex_lock(&r[i].mu);
		assert_int_equal(r[i].n_msgs, 1);
		assert_int_equal(r[i].ends, 0);
		pthread_mutex_unlock(&r[i].mu);
	}
	/* Half released by their owner while still open. */
	for (int i = 0; i < N_ASTREAMS; i += 2)
		mp_rpc_astream_release(&st[i]);
	/* Stopping the queue ends every stream before it returns. */
	mp_rpc_cq_stop(&cq);
	for (int i = 0; i < N_ASTREAMS; i++) {
		pthread_mutex_lock(&r[i].mu);
		assert_int_equal(r[i].ends, 1);
		assert_int_equal(r[i].err, MP_ECANCELED);
		pthread_mutex_unlock(&r[i].mu);
	}
	/* Handles outlive the queue: cancel and release are still safe. */
	for (int i = 1; i < N_ASTREAMS; i += 2) {
		mp_rpc_astream_cancel(st[i]);
		mp_rpc_astream_release(&st[i]);
	}
	wait_closes(closes + N_ASTREAMS);
	assert_int_equal(closes_now(), closes + N_ASTREAMS);
	for (int i = 0; i < N_ASTREAMS; i++)
		as_destroy(&r[i]);
}

static int open_after_stop = 1;

/* Stops its own queue from on_end, then tries to open on it. */
static void as_end_stop(int err, const char *error, void *arg)
{
	struct mp_rpc_cq *q = self_cq;
	Merpati__V1__WatchRequest req = MERPATI__V1__WATCH_REQUEST__INIT;
	struct mp_rpc_astream *st = NULL;
	char p[64];

	mp_rpc_cq_stop(&self_cq);
	req.user = "hold";
	open_after_stop = mp_rpc_astream_open(
		ch, q, mp_rpc_method_path(svc, "Watch", p, sizeof(p)),
		&req.base, &merpati__v1__watch_event__descriptor, 0, as_msg,
		as_end, arg, &st);
	as_end(err, error, arg);
}

static void test_astream_stop_in_callback(void **state)
{
	Merpati__V1__WatchRequest req = MERPATI__V1__WATCH_REQUEST__INIT;
	struct mp_rpc_astream *st[2] = { NULL, NULL };
	struct as_result r[2];

	(void)state;
	as_init(&r[0]);
	as_init(&r[1]);
	assert_int_equal(mp_rpc_cq_start(&self_cq), 0);
	st[1] = as_open(ch, self_cq, "hold", &r[1]);
	as_wait(&r[1], 1, 0);
	req.user = "fail";
	assert_int_equal(mp_rpc_astream_open(ch, self_cq, path("Watch"),
					     &req.base,
					     &merpati__v1__watch_event__descriptor,
					     0, as_msg, as_end_stop, &r[0],
					     &st[0]), 0);
	as_wait(&r[0], 1, 1);
	as_wait(&r[1], 1, 1);
	assert_null(self_cq);
	assert_int_equal(open_after_stop, MP_ECANCELED);
	pthread_mutex_lock(&r[0].mu);
	assert_int_equal(r[0].ends, 1);
	assert_int_equal(r[0].err, MP_EPERM);
	pthread_mutex_unlock(&r[0].mu);
	pthread_mutex_lock(&r[1].mu);
	assert_int_equal(r[1].ends, 1);
	assert_int_equal(r[1].err, MP_ECANCELED);
	pthread_mutex_unlock(&r[1].mu);
	mp_rpc_astream_release(&st[0]);
	mp_rpc_astream_release(&st[1]);
	/* The queue frees itself once its thread is out of the callbacks. */
	struct timespec pause = { 0, 100 * 1000000 };
	nanosleep(&pause, NULL);
	as_destroy(&r[0]);
	as_destroy(&r[1]);
}

static void test_astream_closed_port(void **state)
{
	struct mp_rpc_server *s = NULL;
	struct mp_rpc_channel *c = NULL;
	struct mp_rpc_cq *cq = NULL;
	struct mp_rpc_astream *st;
	struct as_result r;
	int64_t t0;

	(void)state;
	assert_int_equal(start_server(0, &s), 0);
	assert_int_equal(open_channel(s, 0, &c), 0);
	mp_rpc_server_stop(&s);
	assert_int_equal(mp_rpc_cq_start(&cq), 0);
	as_init(&r);
	t0 = now_ms();
	st = as_open(c, cq, "hold", &r);
	as_wait(&r, 0, 1);
	assert_true(now_ms() - t0 < 3000);
	pthread_mutex_lock(&r.mu);
	assert_int_equal(r.ends, 1);
	assert_int_equal(r.err, MP_EUNAVAIL);
	assert_int_equal(r.n_msgs, 0);
	pthread_mutex_unlock(&r.mu);
	mp_rpc_astream_release(&st);
	mp_rpc_cq_stop(&cq);
	mp_rpc_channel_close(&c);
	as_destroy(&r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pb_helpers),
		cmocka_unit_test(test_method_path),
		cmocka_unit_test(test_unary_roundtrip),
		cmocka_unit_test(test_error_mapping),
		cmocka_unit_test(test_malformed_request),
		cmocka_unit_test(test_reply_other_thread),
		cmocka_unit_test(test_async_concurrent),
		cmocka_unit_test(test_async_cancel_on_stop),
		cmocka_unit_test(test_async_stop_in_callback),
		cmocka_unit_test(test_big_message),
		cmocka_unit_test(test_too_big),
		cmocka_unit_test(test_stream_in_order),
		cmocka_unit_test(test_stream_queue_limit),
		cmocka_unit_test(test_stream_errors),
		cmocka_unit_test(test_stream_client_cancel),
		cmocka_unit_test(test_stop_with_live_stream),
		cmocka_unit_test(test_missing_method),
		cmocka_unit_test(test_port_in_use),
		cmocka_unit_test(test_closed_port),
		cmocka_unit_test(test_astream_in_order),
		cmocka_unit_test(test_astream_errors),
		cmocka_unit_test(test_astream_cancel),
		cmocka_unit_test(test_astream_many_and_stop),
		cmocka_unit_test(test_astream_stop_in_callback),
		cmocka_unit_test(test_astream_closed_port),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
