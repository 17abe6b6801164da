/*
 * Tests for mp_route against a real etcd that the test starts itself (a
 * data dir in a fresh temporary folder, ports picked free on 127.0.0.1,
 * killed by PID at the end) and two real gRPC "nodes" n1 and n2 served in
 * this process with the MailStore descriptor (NodeInfo answers the node's
 * id, or NOT_LEADER, or slowly; every other method UNIMPLEMENTED).
 *
 * Covers: loading the map, routing a call to the leader, following a
 * leader change through the watch, refreshing a stale map on NOT_LEADER,
 * UNAVAILABLE and a per-attempt timeout, a shard with no leader or with a
 * leader that has no node record, node records added, changed and removed,
 * a cluster whose config appears after the route opened, and many threads
 * calling through repeated failovers.
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
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "mailstore.pb-c.h"
#include "mp_error.h"
#include "mp_etcd.h"
#include "mp_log.h"
#include "mp_route.h"
#include "mp_rpc.h"
#include "mp_shard.h"
#include "mp_shardmap.h"
#include "test_etcd_spawn.h"

#define WAIT_MS 10000        /* any other wait for something to happen */
#define SHORT_BUDGET_MS 700  /* calls that are meant to give up */
#define SLOW_REPLY_MS 800    /* a node in SLOW mode */

static const ProtobufCServiceDescriptor *svc = &merpati__v1__mail_store__descriptor;

/* ------------------------------------------------------------ helpers */

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

/* ------------------------------------------------------ our own etcd */

static struct test_etcd etcd;

/* A port nobody listens on: for addresses that must not answer. */
static int free_port(void)
{
	int port = test_etcd_free_port();

	assert_true(port > 0);
	return port;
}

/* ------------------------------------------------------ the fake nodes */

enum node_mode {
	MODE_ANSWER,      /* NodeInfo answers the node's id */
	MODE_NOT_LEADER,  /* NodeInfo answers NOT_LEADER */
	MODE_FOLLOW,      /* NOT_LEADER unless the node is current_leader */
	MODE_SLOW,        /* answers after SLOW_REPLY_MS */
};

struct fake_node {
	const char *id;
	struct mp_rpc_server *srv;
	char addr[64];
	pthread_mutex_t mu;
	enum node_mode mode;    /* under mu */
	int info_calls;         /* NodeInfo handler runs, under mu */
	int not_leader_answers; /* under mu */
	int other_calls;        /* every other method, under mu */
};

static struct fake_node nodes[2] = {
	{ .id = "n1", .mu = PTHREAD_MUTEX_INITIALIZER },
	{ .id = "n2", .mu = PTHREAD_MUTEX_INITIALIZER },
};

static pthread_mutex_t leader_mu = PTHREAD_MUTEX_INITIALIZER;
static const char *current_leader = "n1"; /* under leader_mu, MODE_FOLLOW */

static void h_node_info(struct mp_rpc_call *call, const ProtobufCMessage *req,
			void *ctx)
{
	struct fake_node *n = ctx;
	Merpati__V1__NodeInfoReply rep = MERPATI__V1__NODE_INFO_REPLY__INIT;
	bool not_leader;
	enum node_mode mode;

	(void)req;
	pthread_mutex_lock(&n->mu);
	n->info_calls++;
	mode = n->mode;
	pthread_mutex_unlock(&n->mu);
	if (mode == MODE_FOLLOW) {
		pthread_mutex_lock(&leader_mu);
		not_leader = strcmp(current_leader, n->id) != 0;
		pthread_mutex_unlock(&leader_mu);
	} else {
		not_leader = mode == MODE_NOT_LEADER;
	}
	if (not_leader) {
		pthread_mutex_lock(&n->mu);
		n->not_leader_answers++;
		pthread_mutex_unlock(&n->mu);
		mp_rpc_reply(call, NULL, MP_ENOTLEADER, "not the leader here");
		return;
	}
	if (mode == MODE_SLOW)
		sleep_ms(SLOW_REPLY_MS); /* bounded; holds one server thread */
	rep.node_id = (char *)n->id;
	mp_rpc_reply(call, &rep.base, 0, NULL);
}

static void h_unimpl(struct mp_rpc_call *call, const ProtobufCMessage *req,
		     void *ctx)
{
	struct fake_node *n = ctx;

	(void)req;
	pthread_mutex_lock(&n->mu);
	n->other_calls++;
	pthread_mutex_unlock(&n->mu);
	mp_rpc_reply(call, NULL, MP_EUNIMPL, "not in this test");
}

static struct mp_rpc_method table[64];
static size_t table_n;

static void table_build(void)
{
	table_n = svc->n_methods;
	for (size_t i = 0; i < table_n && i < 64; i++) {
		table[i].name = svc->methods[i].name;
		table[i].handler = strcmp(table[i].name, "NodeInfo") == 0
				   ? h_node_info : h_unimpl;
		table[i].server_streaming = strcmp(table[i].name, "Watch") == 0;
	}
}

static void node_set_mode(struct fake_node *n, enum node_mode m)
{
	pthread_mutex_lock(&n->mu);
	n->mode = m;
	pthread_mutex_unlock(&n->mu);
}

static int node_counter(struct fake_node *n, const int *field)
{
	pthread_mutex_lock(&n->mu);
	int v = *field;
	pthread_mutex_unlock(&n->mu);
	return v;
}

static void set_current_leader(const char *id)
{
	pthread_mutex_lock(&leader_mu);
	current_leader = id;
	pthread_mutex_unlock(&leader_mu);
}

/* ------------------------------------------------------------ fixture */

static int group_setup(void **state)
{
	struct mp_rpc_server_opts so = { .listen = "127.0.0.1:0", .threads = 2 };

	(void)state;
	if (test_etcd_start(&etcd, "/tmp/mp_route_test.XXXXXX") < 0)
		return -1;

	table_build();
	for (int i = 0; i < 2; i++) {
		char *error = NULL;

		if (mp_rpc_server_start(svc, table, table_n, &nodes[i], &so,
					&nodes[i].srv, &error) < 0) {
			fprintf(stderr, "node %s: %s\n", nodes[i].id, error ? error : "?");
			free(error);
			return -1;
		}
		snprintf(nodes[i].addr, sizeof(nodes[i].addr), "127.0.0.1:%d",
			 mp_rpc_server_port(nodes[i].srv));
	}
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	for (int i = 0; i < 2; i++)
		mp_rpc_server_stop(&nodes[i].srv);
	/* MP_ROUTE_TEST_KEEP=1 keeps the data dir and etcd.log to look at. */
	test_etcd_stop(&etcd, "MP_ROUTE_TEST_KEEP");
	return 0;
}

/* Every test has its own cluster prefix, so tests share nothing in etcd. */
struct cluster {
	struct mp_etcd *e;
	struct mp_route *r;
	int64_t rev_shard0;   /* mod_revision of the first shards/0 */
};

static int64_t put(struct mp_etcd *e, const char *key, const char *val)
{
	int64_t rev = 0;

	assert_int_equal(mp_etcd_put(e, key, val, strlen(val), 0, &rev), 0);
	assert_true(rev > 0);
	return rev;
}

static int64_t put_node(struct mp_etcd *e, const char *id, const char *addr,
			const char *state)
{
	char key[80], val[128];

	snprintf(key, sizeof(key), "nodes/%s", id);
	snprintf(val, sizeof(val), "addr=%s state=%s", addr, state);
	return put(e, key, val);
}

static struct mp_etcd *etcd_client(const char *name)
{
	struct mp_etcd *e = NULL;
	char prefix[64], *error = NULL;

	snprintf(prefix, sizeof(prefix), "/merpati/%s/", name);
	if (mp_etcd_open(etcd.endpoint, prefix, 3000, &e, &error) < 0)
		fail_msg("mp_etcd_open: %s", error ? error : "?");
	return e;
}

static struct mp_route *route_open(struct mp_etcd *e, const struct mp_route_opts *o)
{
	struct mp_route *r = NULL;
	char *error = NULL;
	int ret = mp_route_open(e, o, &r, &error);

	if (ret < 0)
		fail_msg("mp_route_open: %s: %s", mp_strerror(ret), error ? error : "");
	assert_non_null(r);
	return r;
}

/* config shards=4, nodes n1 and n2, shards/0 led by n1; a route on it. */
static void cluster_up(struct cluster *c, const char *name,
		       const struct mp_route_opts *o)
{
	memset(c, 0, sizeof(*c));
	c->e = etcd_client(name);
	put(c->e, "config", "shards=4 rf=2 min_isr=1");
	put_node(c->e, "n1", nodes[0].addr, "active");
	put_node(c->e, "n2", nodes[1].addr, "active");
	c->rev_shard0 = put(c->e, "shards/0", "epoch=1 leader=n1 replicas=n1,n2 isr=n1,n2");
	c->r = route_open(c->e, o);
}

static void cluster_down(struct cluster *c)
{
	mp_route_close(&c->r);
	mp_route_close(&c->r); /* safe twice */
	mp_etcd_close(&c->e);
	for (int i = 0; i < 2; i++)
		node_set_mode(&nodes[i], MODE_ANSWER);
}

static const char *node_info_path(void)
{
	static char path[96];

	assert_non_null(mp_rpc_method_path(svc, "NodeInfo", path, sizeof(path)));
	return path;
}

/* NodeInfo through the route; the answering node's id in id_out. */
static int call_info(struct mp_route *r, uint32_t shard, int64_t budget_ms,
		     char *id_out, size_t id_len, char **error_r)
{
	Merpati__V1__Empty req = MERPATI__V1__EMPTY__INIT;
	ProtobufCMessage *resp = NULL;
	char *error = NULL;
	int ret = mp_route_call(r, shard, node_info_path(), &req.base,
				&merpati__v1__node_info_reply__descriptor,
				budget_ms, &resp, &error);

	if (id_out != NULL)
		id_out[0] = '\0';
	if (ret == 0) {
		const Merpati__V1__NodeInfoReply *rep = (const void *)resp;

		assert_non_null(resp);
		assert_null(error);
		if (id_out != NULL)
			snprintf(id_out, id_len, "%s", rep->node_id);
		protobuf_c_message_free_unpacked(resp, NULL);
	} else {
		assert_null(resp);
	}
	if (error_r != NULL)
		*error_r = error;
	else
		free(error);
	return ret;
}

/* One NodeInfo to an address through the route's channel cache, so that
 * channel is connected before a test depends on what the node answers
 * (a fresh channel may fail fast with UNAVAILABLE while it connects,
 * which the route rightly treats as "try elsewhere"). */
static void warm_channel(struct mp_route *r, const char *addr, const char *want)
{
	Merpati__V1__Empty req = MERPATI__V1__EMPTY__INIT;
	ProtobufCMessage *resp = NULL;
	int ret = MP_EUNAVAIL;

	for (int i = 0; i < 50 && ret != 0; i++) {
		ret = mp_route_call_node(r, addr, node_info_path(), &req.base,
					 &merpati__v1__node_info_reply__descriptor,
					 WAIT_MS, &resp, NULL);
		if (ret != 0)
			sleep_ms(100);
	}
	assert_int_equal(ret, 0);
	assert_string_equal(((Merpati__V1__NodeInfoReply *)resp)->node_id, want);
	protobuf_c_message_free_unpacked(resp, NULL);
}

static void expect_leader_call(struct mp_route *r, uint32_t shard, const char *want)
{
	char id[64], *error = NULL;
	int ret = call_info(r, shard, WAIT_MS, id, sizeof(id), &error);

	if (ret != 0)
		fail_msg("call to shard %u: %s: %s", shard, mp_strerror(ret),
			 error ? error : "");
	assert_string_equal(id, want);
}

static void expect_map_leader(struct mp_route *r, uint32_t shard, const char *id,
			      uint64_t epoch)
{
	char got[MP_NODE_ID_MAX + 1], addr[MP_ADDR_MAX + 1];
	uint64_t e = 0;

	assert_int_equal(mp_shardmap_leader(mp_route_map(r), shard, got, addr, &e), 0);
	assert_string_equal(got, id);
	assert_int_equal(e, epoch);
}

/* -------------------------------------------------------------- tests */

static void test_load_and_call(void **state)
{
	struct cluster c;
	struct mp_shardmap *m;
	char addr[MP_ADDR_MAX + 1];
	const char *err = NULL;
	uint32_t shard = 99;

	(void)state;
	cluster_up(&c, "load", NULL);
	m = mp_route_map(c.r);
	assert_int_equal(m->config.shards, 4);
	assert_int_equal(m->config.rf, 2);
	assert_int_equal(mp_shardmap_node_addr(m, "n1", addr), 0);
	assert_string_equal(addr, nodes[0].addr);
	assert_int_equal(mp_shardmap_node_addr(m, "n2", addr), 0);
	assert_string_equal(addr, nodes[1].addr);
	expect_map_leader(c.r, 0, "n1", 1);
	assert_int_equal(mp_shardmap_leader(m, 1, NULL, NULL, NULL), MP_ENOENT);

	warm_channel(c.r, nodes[0].addr, "n1");
	int before = node_counter(&nodes[0], &nodes[0].info_calls);
	expect_leader_call(c.r, 0, "n1");
	assert_int_equal(node_counter(&nodes[0], &nodes[0].info_calls), before + 1);

	/* user -> shard: normalised, FNV over the shard count. */
	assert_int_equal(mp_route_shard_of(c.r, "Bob@Example.COM", &shard, &err), 0);
	assert_int_equal(shard, mp_shard_of("bob@example.com", 15, 4));
	shard = 99;
	assert_int_equal(mp_route_shard_of(c.r, "no-at-sign", &shard, &err), MP_EINVAL);
	assert_non_null(err);
	assert_int_equal(shard, 99);

	/* Beyond the shard count: refused at once. */
	char *error = NULL;
	assert_int_equal(call_info(c.r, 4, WAIT_MS, NULL, 0, &error), MP_EINVAL);
	assert_non_null(error);
	free(error);

	/* Any other error is the answer: no retry, no waiting. */
	Merpati__V1__DomainRequest dreq = MERPATI__V1__DOMAIN_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;
	char path[96];
	dreq.name = "example.com";
	assert_non_null(mp_rpc_method_path(svc, "GetDomain", path, sizeof(path)));
	int other = node_counter(&nodes[0], &nodes[0].other_calls);
	int64_t t0 = now_ms();
	assert_int_equal(mp_route_call(c.r, 0, path, &dreq.base,
				       &merpati__v1__domain_reply__descriptor, WAIT_MS,
				       &resp, &error),
			 MP_EUNIMPL);
	assert_true(now_ms() - t0 < 2000);
	assert_null(resp);
	assert_non_null(error);
	assert_non_null(strstr(error, "not in this test"));
	free(error);
	assert_int_equal(node_counter(&nodes[0], &nodes[0].other_calls), other + 1);
	cluster_down(&c);
}

static void test_watch_follows_leader(void **state)
{
	struct cluster c;

	(void)state;
	cluster_up(&c, "watch", NULL);
	expect_leader_call(c.r, 0, "n1");

	int64_t rev = put(c.e, "shards/0", "epoch=2 leader=n2 replicas=n2,n1 isr=n2,n1");
	assert_int_equal(mp_route_wait_rev(c.r, rev, WAIT_MS), 0);
	expect_map_leader(c.r, 0, "n2", 2);
	int n1_calls = node_counter(&nodes[0], &nodes[0].info_calls);
	expect_leader_call(c.r, 0, "n2");
	/* Routed by the map: the old leader was not asked. */
	assert_int_equal(node_counter(&nodes[0], &nodes[0].info_calls), n1_calls);

	/* Without waiting on the revision: the map catches up by itself. */
	put(c.e, "shards/0", "epoch=3 leader=n1 replicas=n1,n2 isr=n1");
	int64_t start = now_ms();
	uint64_t epoch = 0;
	while (now_ms() - start < WAIT_MS) {
		if (mp_shardmap_leader(mp_route_map(c.r), 0, NULL, NULL, &epoch) == 0 &&
		    epoch == 3)
			break;
		sleep_ms(10);
	}
	expect_map_leader(c.r, 0, "n1", 3);
	expect_leader_call(c.r, 0, "n1");

	/* A record deleted: no leader. */
	int64_t drev = 0;
	assert_int_equal(mp_etcd_delete(c.e, "shards/0", &drev), 0);
	assert_int_equal(mp_route_wait_rev(c.r, drev, WAIT_MS), 0);
	assert_int_equal(mp_shardmap_get_shard(mp_route_map(c.r), 0, NULL, NULL),
			 MP_ENOENT);
	cluster_down(&c);
}

/* The map is stale (set by hand, as if the watch had not been told yet)
 * while etcd already names n2: the call meets NOT_LEADER at n1, re-reads
 * the shard and succeeds on n2. */
static void test_not_leader_refresh(void **state)
{
	struct cluster c;
	struct mp_shard_rec old;
	const char *why = NULL;
	const char *old_text = "epoch=1 leader=n1 replicas=n1,n2 isr=n1,n2";

	(void)state;
	cluster_up(&c, "notleader", NULL);
	int64_t rev = put(c.e, "shards/0", "epoch=2 leader=n2 replicas=n2,n1 isr=n2,n1");
	assert_int_equal(mp_route_wait_rev(c.r, rev, WAIT_MS), 0);

	warm_channel(c.r, nodes[0].addr, "n1");
	assert_int_equal(mp_shard_rec_parse(old_text, strlen(old_text), &old, &why), 0);
	assert_int_equal(mp_shardmap_set_shard(mp_route_map(c.r), 0, &old, c.rev_shard0), 0);
	expect_map_leader(c.r, 0, "n1", 1);
	node_set_mode(&nodes[0], MODE_NOT_LEADER);
	int nl = node_counter(&nodes[0], &nodes[0].not_leader_answers);

	expect_leader_call(c.r, 0, "n2");
	assert_true(node_counter(&nodes[0], &nodes[0].not_leader_answers) > nl);
	expect_map_leader(c.r, 0, "n2", 2);
	cluster_down(&c);
}

/* Stale map naming a leader at an address where nothing listens
 * (UNAVAILABLE), or one that answers too slowly (per-attempt timeout):
 * both re-read and reach n2. */
static void test_unavailable_and_slow_refresh(void **state)
{
	struct cluster c;
	struct mp_route_opts o = { .attempt_timeout_ms = 200 };
	struct mp_node_rec ghost;
	struct mp_shard_rec stale;
	const char *why = NULL;
	char dead[64];

	(void)state;
	cluster_up(&c, "unavail", &o);
	int64_t rev = put(c.e, "shards/0", "epoch=2 leader=n2 replicas=n2,n1 isr=n2,n1");
	assert_int_equal(mp_route_wait_rev(c.r, rev, WAIT_MS), 0);

	snprintf(dead, sizeof(dead), "addr=127.0.0.1:%d state=active", free_port());
	assert_int_equal(mp_node_rec_parse(dead, strlen(dead), &ghost, &why), 0);
	assert_int_equal(mp_shardmap_set_node(mp_route_map(c.r), "ghost", &ghost), 0);
	const char *t = "epoch=1 leader=ghost replicas=ghost,n2 isr=ghost";
	assert_int_equal(mp_shard_rec_parse(t, strlen(t), &stale, &why), 0);
	assert_int_equal(mp_shardmap_set_shard(mp_route_map(c.r), 0, &stale, c.rev_shard0), 0);
	expect_map_leader(c.r, 0, "ghost", 1);
	expect_leader_call(c.r, 0, "n2");
	expect_map_leader(c.r, 0, "n2", 2);

	/* n1 slow: the 200 ms attempt cap cuts it short (so the call took at
	 * least that), then the re-read sends it to n2. */
	warm_channel(c.r, nodes[0].addr, "n1");
	t = "epoch=1 leader=n1 replicas=n1,n2 isr=n1";
	assert_int_equal(mp_shard_rec_parse(t, strlen(t), &stale, &why), 0);
	assert_int_equal(mp_shardmap_set_shard(mp_route_map(c.r), 0, &stale, c.rev_shard0), 0);
	node_set_mode(&nodes[0], MODE_SLOW);
	int64_t t0 = now_ms();
	expect_leader_call(c.r, 0, "n2");
	int64_t took = now_ms() - t0;
	assert_true(took >= o.attempt_timeout_ms);
	assert_true(took < WAIT_MS);
	/* Let the slow reply finish: it holds one of n1's server threads. */
	sleep_ms(SLOW_REPLY_MS);
	cluster_down(&c);
}

struct delayed_put {
	struct mp_etcd *e;
	const char *key, *val;
	int64_t delay_ms;
	int ret;
};

static void *delayed_put_main(void *arg)
{
	struct delayed_put *d = arg;

	sleep_ms(d->delay_ms);
	d->ret = mp_etcd_put(d->e, d->key, d->val, strlen(d->val), 0, NULL);
	return NULL;
}

static void test_no_leader(void **state)
{
	struct cluster c;
	char *error = NULL, id[64];

	(void)state;
	cluster_up(&c, "noleader", NULL);
	int64_t t0 = now_ms();
	assert_int_equal(call_info(c.r, 2, SHORT_BUDGET_MS, NULL, 0, &error),
			 MP_EUNAVAIL);
	int64_t took = now_ms() - t0;
	/* Not tight: it retried for about its budget and then returned. */
	assert_true(took >= SHORT_BUDGET_MS / 2);
	assert_true(took < SHORT_BUDGET_MS + 5000);
	assert_non_null(error);
	assert_non_null(strstr(error, "shard 2"));
	free(error);

	/* A leader that appears while the call is retrying is found. */
	struct delayed_put d = { c.e, "shards/2",
				 "epoch=1 leader=n2 replicas=n2 isr=n2", 300, -1 };
	pthread_t tid;
	assert_int_equal(pthread_create(&tid, NULL, delayed_put_main, &d), 0);
	int ret = call_info(c.r, 2, WAIT_MS, id, sizeof(id), NULL);
	pthread_join(tid, NULL);
	assert_int_equal(d.ret, 0);
	assert_int_equal(ret, 0);
	assert_string_equal(id, "n2");
	cluster_down(&c);
}

static void test_missing_node(void **state)
{
	struct cluster c;
	char *error = NULL, id[64];

	(void)state;
	cluster_up(&c, "missingnode", NULL);
	int64_t rev = put(c.e, "shards/3", "epoch=1 leader=n9 replicas=n9 isr=n9");
	assert_int_equal(mp_route_wait_rev(c.r, rev, WAIT_MS), 0);
	assert_int_equal(mp_shardmap_get_shard(mp_route_map(c.r), 3, NULL, NULL), 0);
	assert_int_equal(mp_shardmap_leader(mp_route_map(c.r), 3, NULL, NULL, NULL),
			 MP_ENOENT);
	assert_int_equal(call_info(c.r, 3, SHORT_BUDGET_MS, NULL, 0, &error),
			 MP_EUNAVAIL);
	assert_non_null(error);
	free(error);

	/* n9 registers (at n2's address): calls go through. */
	put_node(c.e, "n9", nodes[1].addr, "active");
	assert_int_equal(call_info(c.r, 3, WAIT_MS, id, sizeof(id), NULL), 0);
	assert_string_equal(id, "n2");
	cluster_down(&c);
}

/* Nodes looked up under the map's lock, for the state. */
static int map_node_state(struct mp_route *r, const char *id)
{
	struct mp_shardmap *m = mp_route_map(r);
	int st = -1;

	pthread_mutex_lock(&m->mu);
	for (size_t i = 0; i < m->n_nodes; i++)
		if (strcmp(m->nodes[i].id, id) == 0)
			st = (int)m->nodes[i].rec.state;
	pthread_mutex_unlock(&m->mu);
	return st;
}

static void test_nodes_reflected(void **state)
{
	struct cluster c;
	struct mp_shardmap *m;
	char addr[MP_ADDR_MAX + 1];
	int64_t rev = 0;

	(void)state;
	cluster_up(&c, "nodes", NULL);
	m = mp_route_map(c.r);

	assert_int_equal(mp_etcd_delete(c.e, "nodes/n2", &rev), 0);
	assert_int_equal(mp_route_wait_rev(c.r, rev, WAIT_MS), 0);
	assert_int_equal(mp_shardmap_node_addr(m, "n2", addr), MP_ENOENT);

	rev = put_node(c.e, "n5", "10.1.2.3:7005", "draining");
	assert_int_equal(mp_route_wait_rev(c.r, rev, WAIT_MS), 0);
	assert_int_equal(mp_shardmap_node_addr(m, "n5", addr), 0);
	assert_string_equal(addr, "10.1.2.3:7005");
	assert_int_equal(map_node_state(c.r, "n5"), MP_NODE_DRAINING);

	rev = put_node(c.e, "n5", "10.1.2.3:7006", "active");
	assert_int_equal(mp_route_wait_rev(c.r, rev, WAIT_MS), 0);
	assert_int_equal(mp_shardmap_node_addr(m, "n5", addr), 0);
	assert_string_equal(addr, "10.1.2.3:7006");
	assert_int_equal(map_node_state(c.r, "n5"), MP_NODE_ACTIVE);

	/* An unreadable record names no usable node. */
	rev = put(c.e, "nodes/n5", "addr=10.1.2.3:7006 state=gone");
	assert_int_equal(mp_route_wait_rev(c.r, rev, WAIT_MS), 0);
	assert_int_equal(mp_shardmap_node_addr(m, "n5", addr), MP_ENOENT);

	/* Keys that are not routing, and a bad shard key: ignored. */
	put(c.e, "controller", "id=n1");
	put(c.e, "domains/example.com", "created=1");
	put(c.e, "nodes/bad/id", "addr=1.2.3.4:5 state=active");
	put(c.e, "shards/17", "epoch=1 leader=n1 replicas=n1 isr=n1");
	rev = put(c.e, "shards/01", "epoch=1 leader=n1 replicas=n1 isr=n1");
	assert_int_equal(mp_route_wait_rev(c.r, rev, WAIT_MS), 0);
	assert_int_equal(m->config.shards, 4);
	pthread_mutex_lock(&m->mu);
	assert_int_equal(m->n_nodes, 1);
	pthread_mutex_unlock(&m->mu);
	expect_map_leader(c.r, 0, "n1", 1);

	/* Deleting the config keeps the one in use. */
	assert_int_equal(mp_etcd_delete(c.e, "config", &rev), 0);
	assert_int_equal(mp_route_wait_rev(c.r, rev, WAIT_MS), 0);
	assert_int_equal(m->config.shards, 4);
	put(c.e, "config", "shards=4 rf=2 min_isr=1");

	/* A full refresh drops what etcd does not have. */
	struct mp_node_rec g;
	const char *why = NULL;
	assert_int_equal(mp_node_rec_parse("addr=h:1 state=active", 21, &g, &why), 0);
	assert_int_equal(mp_shardmap_set_node(m, "ghost", &g), 0);
	struct mp_shard_rec s;
	const char *t = "epoch=9 leader=n1 replicas=n1 isr=n1";
	assert_int_equal(mp_shard_rec_parse(t, strlen(t), &s, &why), 0);
	assert_int_equal(mp_shardmap_set_shard(m, 1, &s, 1), 0);
	rev = put_node(c.e, "n2", nodes[1].addr, "active");
	assert_int_equal(mp_route_refresh(c.r), 0);
	assert_int_equal(mp_route_wait_rev(c.r, rev, WAIT_MS), 0);
	assert_int_equal(mp_shardmap_node_addr(m, "ghost", addr), MP_ENOENT);
	assert_int_equal(mp_shardmap_node_addr(m, "n2", addr), 0);
	assert_int_equal(mp_shardmap_get_shard(m, 1, NULL, NULL), MP_ENOENT);
	expect_map_leader(c.r, 0, "n1", 1);
	cluster_down(&c);
}

/* A route opened before the cluster exists fills in when it appears. */
static void test_config_later(void **state)
{
	struct mp_etcd *e = etcd_client("later");
	struct mp_route *r;
	const char *err = NULL;
	char *error = NULL;
	uint32_t shard;

	(void)state;
	r = route_open(e, NULL);
	assert_int_equal(mp_route_map(r)->config.shards, 0);
	assert_int_equal(mp_route_shard_of(r, "a@b.c", &shard, &err), MP_EUNAVAIL);
	assert_int_equal(call_info(r, 0, 300, NULL, 0, &error), MP_EUNAVAIL);
	free(error);

	/* Shard records before the config: placed once it exists. */
	put_node(e, "n1", nodes[0].addr, "active");
	put(e, "shards/0", "epoch=4 leader=n1 replicas=n1 isr=n1");
	int64_t rev = put(e, "config", "shards=2 rf=1 min_isr=1");
	assert_int_equal(mp_route_wait_rev(r, rev, WAIT_MS), 0);
	assert_int_equal(mp_route_map(r)->config.shards, 2);
	expect_map_leader(r, 0, "n1", 4);
	expect_leader_call(r, 0, "n1");
	assert_int_equal(mp_route_shard_of(r, "a@b.c", &shard, &err), 0);
	assert_int_equal(shard, mp_shard_of("a@b.c", 5, 2));

	/* A different shard count later is refused (logged, ignored). */
	rev = put(e, "config", "shards=8 rf=1 min_isr=1");
	assert_int_equal(mp_route_wait_rev(r, rev, WAIT_MS), 0);
	assert_int_equal(mp_route_map(r)->config.shards, 2);
	mp_route_close(&r);
	mp_etcd_close(&e);
}

static void test_call_node(void **state)
{
	struct cluster c;
	Merpati__V1__Empty req = MERPATI__V1__EMPTY__INIT;
	ProtobufCMessage *resp = NULL;
	char *error = NULL, dead[64];

	(void)state;
	cluster_up(&c, "callnode", NULL);
	/* (Retried only while the fresh channel connects.) */
	warm_channel(c.r, nodes[1].addr, "n2");
	assert_int_equal(mp_route_call_node(c.r, nodes[1].addr, node_info_path(),
					    &req.base,
					    &merpati__v1__node_info_reply__descriptor,
					    WAIT_MS, &resp, &error),
			 0);
	assert_non_null(resp);
	assert_null(error);
	assert_string_equal(((Merpati__V1__NodeInfoReply *)resp)->node_id, "n2");
	protobuf_c_message_free_unpacked(resp, NULL);
	/* The map is not involved: n1 is the leader of shard 0, n2 answered. */
	expect_map_leader(c.r, 0, "n1", 1);

	snprintf(dead, sizeof(dead), "127.0.0.1:%d", free_port());
	int ret = mp_route_call_node(c.r, dead, node_info_path(), &req.base,
				     &merpati__v1__node_info_reply__descriptor,
				     1000, &resp, &error);
	assert_true(ret == MP_EUNAVAIL || ret == MP_ETIMEDOUT);
	assert_null(resp);
	free(error);
	cluster_down(&c);
}

/* Many threads call while the leader moves back and forth; every node
 * answers NOT_LEADER unless it is the current leader. Every call must
 * succeed, on whichever node leads when it lands. The leader moves only
 * after more calls than there are threads have succeeded since the last
 * move, so some call runs wholly inside every leadership period however
 * slow the machine (sanitizers). */
#define RACE_THREADS 4
#define RACE_FLIPS 12
#define RACE_MAX_CALLS 2000   /* per thread; the stop flag ends it first */

static struct {
	pthread_mutex_t mu;
	int ok;        /* successful calls, all threads */
	bool stop;
} race = { .mu = PTHREAD_MUTEX_INITIALIZER };

struct racer {
	struct mp_route *r;
	int ok, failed, on[2];
	char last_error[160];
};

static void *racer_main(void *arg)
{
	struct racer *rc = arg;

	for (int i = 0; i < RACE_MAX_CALLS; i++) {
		char id[64], *error = NULL;

		pthread_mutex_lock(&race.mu);
		bool stop = race.stop;
		pthread_mutex_unlock(&race.mu);
		if (stop)
			break;
		int ret = call_info(rc->r, 0, WAIT_MS, id, sizeof(id), &error);
		if (ret == 0) {
			rc->ok++;
			rc->on[strcmp(id, "n1") == 0 ? 0 : 1]++;
			pthread_mutex_lock(&race.mu);
			race.ok++;
			pthread_mutex_unlock(&race.mu);
		} else {
			rc->failed++;
			snprintf(rc->last_error, sizeof(rc->last_error), "%s: %s",
				 mp_strerror(ret), error ? error : "");
		}
		free(error);
		sleep_ms(2);
	}
	return NULL;
}

static int race_ok(void)
{
	pthread_mutex_lock(&race.mu);
	int ok = race.ok;
	pthread_mutex_unlock(&race.mu);
	return ok;
}

static void test_concurrent_failover(void **state)
{
	struct cluster c;
	struct racer rc[RACE_THREADS];
	pthread_t tid[RACE_THREADS];

	(void)state;
	set_current_leader("n1");
	cluster_up(&c, "race", NULL);
	warm_channel(c.r, nodes[0].addr, "n1");
	warm_channel(c.r, nodes[1].addr, "n2");
	node_set_mode(&nodes[0], MODE_FOLLOW);
	node_set_mode(&nodes[1], MODE_FOLLOW);
	race.ok = 0;
	race.stop = false;
	memset(rc, 0, sizeof(rc));
	for (int i = 0; i < RACE_THREADS; i++) {
		rc[i].r = c.r;
		assert_int_equal(pthread_create(&tid[i], NULL, racer_main, &rc[i]), 0);
	}
	int flips = 0;
	for (int f = 0; f < RACE_FLIPS; f++) {
		char val[96];
		const char *to = f % 2 == 0 ? "n2" : "n1";
		const char *from = f % 2 == 0 ? "n1" : "n2";
		int base = race_ok();
		int64_t start = now_ms();

		while (race_ok() <= base + RACE_THREADS && now_ms() - start < WAIT_MS)
			sleep_ms(5);
		if (race_ok() <= base + RACE_THREADS)
			break; /* calls stalled: reported below */
		/* The node learns first, etcd after: calls in between meet
		 * NOT_LEADER, as in a real failover. */
		set_current_leader(to);
		snprintf(val, sizeof(val), "epoch=%d leader=%s replicas=%s,%s isr=%s",
			 f + 2, to, to, from, to);
		put(c.e, "shards/0", val);
		flips++;
	}
	/* A last period on n1 (the last flip went to n1), then stop. */
	int base = race_ok();
	int64_t start = now_ms();
	while (race_ok() <= base + RACE_THREADS && now_ms() - start < WAIT_MS)
		sleep_ms(5);
	pthread_mutex_lock(&race.mu);
	race.stop = true;
	pthread_mutex_unlock(&race.mu);
	for (int i = 0; i < RACE_THREADS; i++)
		pthread_join(tid[i], NULL);

	int ok = 0, on1 = 0, on2 = 0;
	for (int i = 0; i < RACE_THREADS; i++) {
		if (rc[i].failed != 0)
			fail_msg("thread %d: %d calls failed, last %s", i, rc[i].failed,
				 rc[i].last_error);
		ok += rc[i].ok;
		on1 += rc[i].on[0];
		on2 += rc[i].on[1];
	}
	assert_int_equal(flips, RACE_FLIPS);
	assert_int_equal(ok, race_ok());
	assert_true(ok >= (RACE_FLIPS + 1) * (RACE_THREADS + 1));
	assert_true(on1 > 0 && on2 > 0);
	set_current_leader("n1");
	cluster_down(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_load_and_call),
		cmocka_unit_test(test_watch_follows_leader),
		cmocka_unit_test(test_not_leader_refresh),
		cmocka_unit_test(test_unavailable_and_slow_refresh),
		cmocka_unit_test(test_no_leader),
		cmocka_unit_test(test_missing_node),
		cmocka_unit_test(test_nodes_reflected),
		cmocka_unit_test(test_config_later),
		cmocka_unit_test(test_call_node),
		cmocka_unit_test(test_concurrent_failover),
	};
	sigset_t set;
	int ret;

	/* etcd missing must fail the run, not skip it. */
	if (!test_etcd_find(&etcd, true)) {
		fprintf(stderr, "test_mp_route: FAILED: etcd not found in PATH "
			"nor at /usr/bin/etcd; install the etcd-server package\n");
		return 1;
	}
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	/* MP_ROUTE_TEST_DEBUG=1 shows every retry the route makes. */
	mp_log_set_level(getenv("MP_ROUTE_TEST_DEBUG") != NULL ? MP_LOG_DEBUG
							     : MP_LOG_WARN);
	mp_rpc_init();
	ret = cmocka_run_group_tests(tests, group_setup, group_teardown);
	mp_rpc_shutdown();
	return ret;
}
