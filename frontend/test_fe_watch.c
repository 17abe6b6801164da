/*
 * Tests for fe_watch against a real etcd that the test starts itself (a
 * fresh temporary folder, ports picked free on 127.0.0.1, killed by PID at
 * the end) holding a hand-written shard map, and two fake storage nodes n1
 * and n2 served in this process with the MailStore descriptor: Watch sends
 * READY and keeps the stream, the test sends events into it or ends it as
 * a node does on overflow; every other method is UNIMPLEMENTED.
 *
 * Covers: the generation reaching 1 on READY and rising on events, one
 * stream shared by a user's subscribers, re-open (and a higher generation)
 * after the node ends the stream, following a leader change, retrying
 * with backoff while the leader is unreachable, closing on the last
 * unsubscribe, and many users at once.
 *
 * etcd missing is a failure, not a skip: the project installs etcd-server.
 * Never: talk to anything but 127.0.0.1, wait without a bound, kill a
 * process this test did not start.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fe_watch.h"
#include "mailstore.pb-c.h"
#include "mp_error.h"
#include "mp_etcd.h"
#include "mp_log.h"
#include "mp_route.h"
#include "mp_rpc.h"
#include "test_etcd_spawn.h"

#define WAIT_MS 10000     /* upper bound of every wait for something */
#define N_USERS 300
#define NSHARDS 4

static const ProtobufCServiceDescriptor *svc =
	&merpati__v1__mail_store__descriptor;

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int64_t ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* ------------------------------------------------------ the fake nodes */

#define MAX_WATCHERS 1024

struct watcher {
	struct mp_rpc_call *call;
	char user[128];
	bool live;
};

struct fake_node {
	const char *id;
	struct mp_rpc_server *srv;
	char addr[64];
	pthread_mutex_t mu;
	struct watcher w[MAX_WATCHERS]; /* under mu */
	int opened;                     /* Watch calls taken, under mu */
	int closed;                     /* on_close runs, under mu */
};

static struct fake_node nodes[2] = {
	{ .id = "n1", .mu = PTHREAD_MUTEX_INITIALIZER },
	{ .id = "n2", .mu = PTHREAD_MUTEX_INITIALIZER },
};

static int send_event(struct mp_rpc_call *call, int kind, uint32_t mbid)
{
	Merpati__V1__WatchEvent ev = MERPATI__V1__WATCH_EVENT__INIT;

	ev.kind = kind;
	ev.mailbox_id = mbid;
	ev.highestmodseq = 100 + mbid;
	return mp_rpc_stream_send(call, &ev.base);
}

static void node_watch_closed(struct mp_rpc_call *call, void *arg)
{
	struct fake_node *n = arg;

	pthread_mutex_lock(&n->mu);
	for (int i = 0; i < MAX_WATCHERS; i++) {
		if (n->w[i].live && n->w[i].call == call) {
			n->w[i].live = false;
			n->w[i].call = NULL;
		}
	}
	n->closed++;
	pthread_mutex_unlock(&n->mu);
	mp_rpc_stream_release(call);
}

/* Runs on a server thread: no cmocka asserts here. */
static void h_watch(struct mp_rpc_call *call, const ProtobufCMessage *req,
		    void *ctx)
{
	const Merpati__V1__WatchRequest *r = (const void *)req;
	struct fake_node *n = ctx;
	int slot = -1;

	/* on_close runs on this call's thread, so not before we return. */
	mp_rpc_stream_start(call, 64, node_watch_closed, n);
	pthread_mutex_lock(&n->mu);
	n->opened++;
	for (int i = 0; i < MAX_WATCHERS && slot < 0; i++)
		if (!n->w[i].live)
			slot = i;
	if (slot < 0 || r->user == NULL) {
		pthread_mutex_unlock(&n->mu);
		mp_rpc_stream_finish(call, MP_EUNAVAIL, "too many watchers");
		return;
	}
	n->w[slot].live = true;
	n->w[slot].call = call;
	snprintf(n->w[slot].user, sizeof(n->w[slot].user), "%s", r->user);
	(void)send_event(call, MERPATI__V1__WATCH_KIND__WATCH_READY, 0);
	pthread_mutex_unlock(&n->mu);
}

static void h_unimpl(struct mp_rpc_call *call, const ProtobufCMessage *req,
		     void *ctx)
{
	(void)req;
	(void)ctx;
	mp_rpc_reply(call, NULL, MP_EUNIMPL, "not in this test");
}

static struct mp_rpc_method table[64];
static size_t table_n;

static void table_build(void)
{
	table_n = svc->n_methods;
	for (size_t i = 0; i < table_n && i < 64; i++) {
		bool watch = strcmp(svc->methods[i].name, "Watch") == 0;

		table[i].name = svc->methods[i].name;
		table[i].handler = watch ? h_watch : h_unimpl;
		table[i].server_streaming = watch;
	}
}

/* Live streams of user on n (user NULL: all). */
static int node_watchers(struct fake_node *n, const char *user)
{
	int c = 0;

	pthread_mutex_lock(&n->mu);
	for (int i = 0; i < MAX_WATCHERS; i++)
		if (n->w[i].live &&
		    (user == NULL || strcmp(n->w[i].user, user) == 0))
			c++;
	pthread_mutex_unlock(&n->mu);
	return c;
}

static int node_opened(struct fake_node *n)
{
	pthread_mutex_lock(&n->mu);
	int v = n->opened;
	pthread_mutex_unlock(&n->mu);
	return v;
}

/* An event to every live stream of user on n; how many got it. */
static int node_notify(struct fake_node *n, const char *user, uint32_t mbid)
{
	int c = 0;

	pthread_mutex_lock(&n->mu);
	for (int i = 0; i < MAX_WATCHERS; i++)
		if (n->w[i].live && strcmp(n->w[i].user, user) == 0 &&
		    send_event(n->w[i].call,
			       MERPATI__V1__WATCH_KIND__WATCH_MAILBOX,
			       mbid) == 0)
			c++;
	pthread_mutex_unlock(&n->mu);
	return c;
}

/* What a node does when a watcher's queue overflows. */
static int node_kill(struct fake_node *n, const char *user)
{
	int c = 0;

	pthread_mutex_lock(&n->mu);
	for (int i = 0; i < MAX_WATCHERS; i++) {
		if (n->w[i].live && strcmp(n->w[i].user, user) == 0) {
			mp_rpc_stream_finish(n->w[i].call, MP_EUNAVAIL,
					     "watch queue overflow; watch again");
			c++;
		}
	}
	pthread_mutex_unlock(&n->mu);
	return c;
}

/* ------------------------------------------------------------ fixture */

static struct test_etcd etcd;
static struct mp_etcd *e;
static struct mp_route *route;

static int64_t put(const char *key, const char *val)
{
	int64_t rev = 0;

	assert_int_equal(mp_etcd_put(e, key, val, strlen(val), 0, &rev), 0);
	return rev;
}

/* Every shard led by id; waits until the route has seen it. */
static void set_leader(const char *id)
{
	char key[32], val[128];
	int64_t rev = 0;

	for (int s = 0; s < NSHARDS; s++) {
		snprintf(key, sizeof(key), "shards/%d", s);
		snprintf(val, sizeof(val),
			 "epoch=%lld leader=%s replicas=%s,%s isr=%s",
			 (long long)now_ms(), id, id,
			 strcmp(id, "n1") == 0 ? "n2" : "n1", id);
		rev = put(key, val);
	}
	assert_int_equal(mp_route_wait_rev(route, rev, WAIT_MS), 0);
}

static int group_setup(void **state)
{
	struct mp_rpc_server_opts so = { .listen = "127.0.0.1:0", .threads = 2 };
	char val[128], *error = NULL;

	(void)state;
	if (test_etcd_start(&etcd, "/tmp/fe_watch_test.XXXXXX") < 0)
		return -1;
	table_build();
	for (int i = 0; i < 2; i++) {
		if (mp_rpc_server_start(svc, table, table_n, &nodes[i], &so,
					&nodes[i].srv, &error) < 0) {
			fprintf(stderr, "node %s: %s\n", nodes[i].id,
				error ? error : "?");
			free(error);
			return -1;
		}
		snprintf(nodes[i].addr, sizeof(nodes[i].addr), "127.0.0.1:%d",
			 mp_rpc_server_port(nodes[i].srv));
	}
	if (mp_etcd_open(etcd.endpoint, "/merpati/fewatch/", 3000, &e,
			 &error) < 0) {
		fprintf(stderr, "etcd: %s\n", error ? error : "?");
		free(error);
		return -1;
	}
	snprintf(val, sizeof(val), "shards=%d rf=2 min_isr=1", NSHARDS);
	if (mp_etcd_put(e, "config", val, strlen(val), 0, NULL) < 0)
		return -1;
	for (int i = 0; i < 2; i++) {
		char key[32];

		snprintf(key, sizeof(key), "nodes/%s", nodes[i].id);
		snprintf(val, sizeof(val), "addr=%s state=active",
			 nodes[i].addr);
		if (mp_etcd_put(e, key, val, strlen(val), 0, NULL) < 0)
			return -1;
	}
	for (int s = 0; s < NSHARDS; s++) {
		char key[32];
		const char *rec = "epoch=1 leader=n1 replicas=n1,n2 isr=n1,n2";

		snprintf(key, sizeof(key), "shards/%d", s);
		if (mp_etcd_put(e, key, rec, strlen(rec), 0, NULL) < 0)
			return -1;
	}
	if (mp_route_open(e, NULL, &route, &error) < 0) {
		fprintf(stderr, "route: %s\n", error ? error : "?");
		free(error);
		return -1;
	}
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	mp_route_close(&route);
	mp_etcd_close(&e);
	for (int i = 0; i < 2; i++)
		mp_rpc_server_stop(&nodes[i].srv);
	test_etcd_stop(&etcd, "FE_WATCH_TEST_KEEP");
	return 0;
}

/* Each test starts with n1 leading everything and a watch of its own. */
static int test_setup(void **state)
{
	struct fe_watch *w = NULL;
	char *error = NULL;

	set_leader("n1");
	if (fe_watch_start(route, &w, &error) < 0) {
		fprintf(stderr, "fe_watch_start: %s\n", error ? error : "?");
		free(error);
		return -1;
	}
	*state = w;
	return 0;
}

static int test_teardown(void **state)
{
	struct fe_watch *w = *state;

	fe_watch_stop(&w);
	fe_watch_stop(&w); /* safe twice */
	return 0;
}

/* Waits (bounded) until the generation is above min; returns it. */
static uint64_t wait_gen_above(const struct fe_watch_sub *s, uint64_t min)
{
	int64_t end = now_ms() + WAIT_MS;
	uint64_t g;

	while ((g = fe_watch_gen(s)) <= min && now_ms() < end)
		sleep_ms(5);
	return g;
}

static void wait_streams(struct fe_watch *w, unsigned want)
{
	int64_t end = now_ms() + WAIT_MS;

	while (fe_watch_streams(w) != want && now_ms() < end)
		sleep_ms(5);
	assert_int_equal(fe_watch_streams(w), want);
}

static void wait_watchers(struct fake_node *n, const char *user, int want)
{
	int64_t end = now_ms() + WAIT_MS;

	while (node_watchers(n, user) != want && now_ms() < end)
		sleep_ms(5);
	assert_int_equal(node_watchers(n, user), want);
}

/* ---------------------------------------------------------------- tests */

static void test_ready_events_shared(void **state)
{
	struct fe_watch *w = *state;
	const char *u = "alice@example.org";
	struct fe_watch_sub *a, *b;
	uint64_t g, g2;

	a = fe_watch_subscribe(w, u);
	assert_non_null(a);
	g = wait_gen_above(a, 0);
	assert_int_equal(g, 1);
	assert_int_equal(fe_watch_streams(w), 1);
	wait_watchers(&nodes[0], u, 1);

	/* A second session of the same user shares the stream. */
	b = fe_watch_subscribe(w, u);
	assert_non_null(b);
	assert_int_equal(fe_watch_gen(b), fe_watch_gen(a));
	sleep_ms(100);
	assert_int_equal(fe_watch_streams(w), 1);
	assert_int_equal(node_watchers(&nodes[0], u), 1);

	/* Every event raises it. */
	for (uint32_t i = 1; i <= 3; i++) {
		assert_int_equal(node_notify(&nodes[0], u, i), 1);
		g2 = wait_gen_above(a, g);
		assert_true(g2 > g);
		g = g2;
	}
	int64_t end = now_ms() + WAIT_MS;
	while (fe_watch_gen(a) < 4 && now_ms() < end)
		sleep_ms(5);
	assert_int_equal(fe_watch_gen(a), 4);
	assert_int_equal(fe_watch_gen(b), 4);
	/* Another user's events are not ours. */
	struct fe_watch_sub *c = fe_watch_subscribe(w, "bob@example.org");
	assert_non_null(c);
	assert_int_equal(wait_gen_above(c, 0), 1);
	assert_int_equal(node_notify(&nodes[0], "bob@example.org", 9), 1);
	assert_int_equal(wait_gen_above(c, 1), 2);
	assert_int_equal(fe_watch_gen(a), 4);

	/* One subscriber leaving keeps the stream; the last closes it. */
	fe_watch_unsubscribe(&a);
	assert_null(a);
	fe_watch_unsubscribe(&a); /* safe twice */
	sleep_ms(100);
	assert_int_equal(fe_watch_streams(w), 2);
	fe_watch_unsubscribe(&b);
	fe_watch_unsubscribe(&c);
	wait_streams(w, 0);
	wait_watchers(&nodes[0], NULL, 0);
}

static void test_reopen_after_node_ends(void **state)
{
	struct fe_watch *w = *state;
	const char *u = "carol@example.org";
	struct fe_watch_sub *s;
	uint64_t g;
	int opened = node_opened(&nodes[0]);

	s = fe_watch_subscribe(w, u);
	assert_non_null(s);
	assert_int_equal(wait_gen_above(s, 0), 1);
	assert_int_equal(node_opened(&nodes[0]), opened + 1);

	/* The node drops the stream (overflow): the end and the new READY
	 * each raise the generation, and a new stream is open. */
	for (int round = 0; round < 3; round++) {
		g = fe_watch_gen(s);
		assert_int_equal(node_kill(&nodes[0], u), 1);
		int64_t end = now_ms() + WAIT_MS;
		while ((fe_watch_gen(s) < g + 2 ||
			node_watchers(&nodes[0], u) != 1) && now_ms() < end)
			sleep_ms(5);
		assert_true(fe_watch_gen(s) >= g + 2);
		assert_int_equal(node_watchers(&nodes[0], u), 1);
		assert_int_equal(node_opened(&nodes[0]), opened + 2 + round);
		assert_int_equal(fe_watch_streams(w), 1);
	}
	/* Events still arrive on the new stream. */
	g = fe_watch_gen(s);
	assert_int_equal(node_notify(&nodes[0], u, 5), 1);
	assert_true(wait_gen_above(s, g) > g);

	fe_watch_unsubscribe(&s);
	wait_streams(w, 0);
	wait_watchers(&nodes[0], u, 0);
}

static void test_follows_leader(void **state)
{
	struct fe_watch *w = *state;
	const char *u = "dave@example.org";
	struct fe_watch_sub *s;
	uint64_t g;

	s = fe_watch_subscribe(w, u);
	assert_non_null(s);
	assert_int_equal(wait_gen_above(s, 0), 1);
	wait_watchers(&nodes[0], u, 1);

	/* The old leader's stream stays open on its side, but the watch
	 * moves to the new leader by itself. */
	g = fe_watch_gen(s);
	set_leader("n2");
	wait_watchers(&nodes[1], u, 1);
	wait_watchers(&nodes[0], u, 0);
	assert_true(wait_gen_above(s, g + 1) >= g + 2);
	g = fe_watch_gen(s);
	assert_int_equal(node_notify(&nodes[1], u, 1), 1);
	assert_true(wait_gen_above(s, g) > g);
	assert_int_equal(fe_watch_streams(w), 1);

	fe_watch_unsubscribe(&s);
	wait_streams(w, 0);
	wait_watchers(&nodes[1], u, 0);
}

static void test_unreachable_leader(void **state)
{
	struct fe_watch *w = *state;
	const char *u = "erin@example.org";
	struct fe_watch_sub *s;
	char val[128];
	int port = test_etcd_free_port();
	int64_t rev;

	/* n3 is nobody: every open fails at once and is retried. */
	assert_true(port > 0);
	snprintf(val, sizeof(val), "addr=127.0.0.1:%d state=active", port);
	put("nodes/n3", val);
	set_leader("n3");
	s = fe_watch_subscribe(w, u);
	assert_non_null(s);
	sleep_ms(1500);
	assert_int_equal(fe_watch_gen(s), 0);

	/* The map names a live leader again: the retry finds it within the
	 * backoff's ceiling (2 s) plus the leader check. */
	int64_t t0 = now_ms();
	set_leader("n1");
	assert_int_equal(wait_gen_above(s, 0), 1);
	assert_true(now_ms() - t0 < 6000);
	wait_watchers(&nodes[0], u, 1);
	assert_int_equal(fe_watch_streams(w), 1);

	fe_watch_unsubscribe(&s);
	wait_streams(w, 0);
	wait_watchers(&nodes[0], u, 0);
	assert_int_equal(mp_etcd_delete(e, "nodes/n3", &rev), 0);
	assert_int_equal(mp_route_wait_rev(route, rev, WAIT_MS), 0);
}

static void test_many_users(void **state)
{
	static struct fe_watch_sub *subs[N_USERS];
	struct fe_watch *w = *state;
	char user[64];

	for (int i = 0; i < N_USERS; i++) {
		snprintf(user, sizeof(user), "user%d@example.org", i);
		subs[i] = fe_watch_subscribe(w, user);
		assert_non_null(subs[i]);
	}
	wait_streams(w, N_USERS);
	for (int i = 0; i < N_USERS; i++)
		assert_int_equal(wait_gen_above(subs[i], 0), 1);
	wait_watchers(&nodes[0], NULL, N_USERS);

	/* Half leave; the rest keep theirs. */
	for (int i = 0; i < N_USERS; i += 2)
		fe_watch_unsubscribe(&subs[i]);
	wait_streams(w, N_USERS / 2);
	wait_watchers(&nodes[0], NULL, N_USERS / 2);
	snprintf(user, sizeof(user), "user%d@example.org", 1);
	assert_int_equal(node_notify(&nodes[0], user, 1), 1);
	assert_int_equal(wait_gen_above(subs[1], 1), 2);
	for (int i = 1; i < N_USERS; i += 2)
		fe_watch_unsubscribe(&subs[i]);
	wait_streams(w, 0);
	wait_watchers(&nodes[0], NULL, 0);
}

static void test_stop_with_streams(void **state)
{
	struct fe_watch *w = *state;
	struct fe_watch_sub *s;

	/* Unsubscribed right before stop: the stream may still be open. */
	s = fe_watch_subscribe(w, "frank@example.org");
	assert_non_null(s);
	assert_int_equal(wait_gen_above(s, 0), 1);
	fe_watch_unsubscribe(&s);
	fe_watch_stop(&w);
	*state = NULL;
	assert_null(w);
	wait_watchers(&nodes[0], NULL, 0);

	/* Bad input. */
	assert_null(fe_watch_subscribe(NULL, "x@example.org"));
	assert_int_equal(fe_watch_streams(NULL), 0);
	assert_int_equal(fe_watch_gen(NULL), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_ready_events_shared,
						test_setup, test_teardown),
		cmocka_unit_test_setup_teardown(test_reopen_after_node_ends,
						test_setup, test_teardown),
		cmocka_unit_test_setup_teardown(test_follows_leader,
						test_setup, test_teardown),
		cmocka_unit_test_setup_teardown(test_unreachable_leader,
						test_setup, test_teardown),
		cmocka_unit_test_setup_teardown(test_many_users,
						test_setup, test_teardown),
		cmocka_unit_test_setup_teardown(test_stop_with_streams,
						test_setup, test_teardown),
	};
	int ret;

	if (!test_etcd_find(&etcd, true)) {
		fprintf(stderr, "test_fe_watch: FAILED: etcd not found in PATH "
			"nor at /usr/bin/etcd; install the etcd-server package\n");
		return 1;
	}
	mp_log_set_level(MP_LOG_WARN);
	mp_rpc_init();
	ret = cmocka_run_group_tests(tests, group_setup, group_teardown);
	mp_rpc_shutdown();
	return ret;
}
