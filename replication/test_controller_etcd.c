/*
 * Tests for the running controller (ctl_start ... ctl_stop) against a real
 * etcd the test starts itself (data dir in a fresh temporary folder, ports
 * picked free on 127.0.0.1, killed by PID at the end), with fake nodes
 * serving the Replication API's ShardState so the leader-election path is
 * exercised over gRPC. Covers: exactly one controller elected; takeover
 * after the leader's lease is revoked; a new lease via ctl_set_lease; the
 * key released on stop; 64 shard records created; a dead leader replaced
 * by the in-sync node reporting the highest lsn; a drain/{id} key moving
 * leadership away.
 *
 * The controller's shard map is normally kept current by the node's watch;
 * here the test refreshes it from etcd (map_refresh) while it waits.
 *
 * etcd missing is a failure, not a skip. Never: talk to anything but
 * 127.0.0.1, wait without a bound, kill a process this test did not start.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "controller.h"
#include "mp_error.h"
#include "mp_etcd.h"
#include "mp_log.h"
#include "mp_rpc.h"
#include "mp_shardmap.h"
#include "replication.pb-c.h"
#include "test_etcd_spawn.h"

#define WAIT_MS 15000        /* any other wait for something to happen */
#define LEASE_TTL_S 60       /* outlives the test: only revoking ends one */
#define INTERVAL_MS 100

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

/* ------------------------------------------------- fake storage nodes */

/* Answers ShardState with a fixed lsn for every shard asked. */
struct fake_node {
	char id[16];
	_Atomic uint64_t lsn;
	atomic_int calls;
	struct mp_rpc_server *srv;
	char addr[32];
};

static struct fake_node fakes[3];

/* Every method but ShardState and Snapshot: not served by a fake. */
static void fake_unimplemented(struct mp_rpc_call *call, const ProtobufCMessage *req,
			       void *ctx)
{
	(void)req;
	(void)ctx;
	mp_rpc_reply(call, NULL, MP_EUNIMPL, "fake node");
}

static void fake_shard_state(struct mp_rpc_call *call, const ProtobufCMessage *req,
			     void *ctx)
{
	const Merpati__Repl__V1__ShardStateRequest *r =
		(const Merpati__Repl__V1__ShardStateRequest *)req;
	Merpati__Repl__V1__ShardStateReply rep = MERPATI__REPL__V1__SHARD_STATE_REPLY__INIT;
	Merpati__Repl__V1__ShardPos *pos, **ptrs;
	struct fake_node *f = ctx;

	atomic_fetch_add(&f->calls, 1);
	pos = calloc(r->n_shards + 1, sizeof(*pos));
	ptrs = calloc(r->n_shards + 1, sizeof(*ptrs));
	if (pos == NULL || ptrs == NULL) {
		free(pos);
		free(ptrs);
		mp_rpc_reply(call, NULL, MP_ENOMEM, NULL);
		return;
	}
	for (size_t i = 0; i < r->n_shards; i++) {
		Merpati__Repl__V1__ShardPos init = MERPATI__REPL__V1__SHARD_POS__INIT;

		pos[i] = init;
		pos[i].shard = r->shards[i];
		pos[i].epoch = 1;
		pos[i].lsn = atomic_load(&f->lsn);
		pos[i].role = 1;
		ptrs[i] = &pos[i];
	}
	rep.node_id = f->id;
	rep.n_pos = r->n_shards;
	rep.pos = ptrs;
	mp_rpc_reply(call, &rep.base, 0, NULL);
	free(pos);
	free(ptrs);
}

static void fake_snapshot_closed(struct mp_rpc_call *call, void *arg)
{
	(void)arg;
	mp_rpc_stream_release(call);
}

static void fake_snapshot(struct mp_rpc_call *call, const ProtobufCMessage *req, void *ctx)
{
	(void)req;
	(void)ctx;
	mp_rpc_stream_start(call, 1, fake_snapshot_closed, NULL);
	mp_rpc_stream_finish(call, MP_EUNIMPL, "fake node");
}

static void fakes_start(void)
{
	const ProtobufCServiceDescriptor *svc = &merpati__repl__v1__replication__descriptor;
	struct mp_rpc_server_opts opts = { .listen = "127.0.0.1:0", .threads = 1 };
	struct mp_rpc_method *methods = calloc(svc->n_methods, sizeof(*methods));

	/* The server wants a handler for every method of the service: built
	 * from the descriptor, so a method added to the proto needs nothing
	 * here unless it streams. */
	assert_non_null(methods);
	for (unsigned i = 0; i < svc->n_methods; i++) {
		methods[i].name = svc->methods[i].name;
		methods[i].handler = fake_unimplemented;
		if (strcmp(methods[i].name, "ShardState") == 0) {
			methods[i].handler = fake_shard_state;
		} else if (strcmp(methods[i].name, "Snapshot") == 0) {
			methods[i].handler = fake_snapshot;
			methods[i].server_streaming = 1;
		}
	}
	for (int i = 0; i < 3; i++) {
		struct fake_node *f = &fakes[i];
		char *error = NULL;

		snprintf(f->id, sizeof(f->id), "n%d", i + 1);
		atomic_store(&f->lsn, 0);
		atomic_store(&f->calls, 0);
		if (mp_rpc_server_start(svc, methods, svc->n_methods, f, &opts, &f->srv,
					&error) != 0)
			fail_msg("fake node: %s", error ? error : "?");
		snprintf(f->addr, sizeof(f->addr), "127.0.0.1:%d", mp_rpc_server_port(f->srv));
	}
	free(methods);
}

static void fakes_stop(void)
{
	for (int i = 0; i < 3; i++)
		mp_rpc_server_stop(&fakes[i].srv);
}

/* ------------------------------------------------------------ setup */

static int group_setup(void **state)
{
	(void)state;
	if (!test_etcd_find(&etcd, false)) {
		print_error("etcd not found at /usr/bin/etcd: install the etcd-server package\n");
		return -1;
	}
	return test_etcd_start(&etcd, "/tmp/mp_ctl_test.XXXXXX");
}

static int group_teardown(void **state)
{
	(void)state;
	test_etcd_stop(&etcd, "MP_ETCD_TEST_KEEP");
	return 0;
}

static struct mp_etcd *open_client(const char *prefix)
{
	struct mp_etcd *e = NULL;
	char *error = NULL;

	assert_int_equal(mp_etcd_open(etcd.endpoint, prefix, 3000, &e, &error), 0);
	assert_null(error);
	return e;
}

static void put_str(struct mp_etcd *e, const char *key, const char *val)
{
	assert_int_equal(mp_etcd_put(e, key, val, strlen(val), 0, NULL), 0);
}

/* The controller key's value and lease; false when absent. */
static bool controller_key(struct mp_etcd *e, char *val, size_t vallen, int64_t *lease_r)
{
	struct mp_etcd_kv *kv = NULL;
	int ret = mp_etcd_get(e, "controller", &kv, NULL);

	if (ret == MP_ENOENT)
		return false;
	assert_int_equal(ret, 0);
	snprintf(val, vallen, "%s", (const char *)kv->value);
	*lease_r = kv->lease;
	mp_etcd_kvs_free(kv, 1);
	return true;
}

/* What the node's watch would do: bring the map up to etcd (config, nodes,
 * shards; nodes gone from etcd leave the map). */
static void map_refresh(struct mp_etcd *e, struct mp_shardmap *m)
{
	struct mp_etcd_kv *kvs = NULL;
	size_t n = 0;
	char gone[8][MP_NODE_ID_MAX + 1];
	size_t n_gone = 0;

	assert_int_equal(mp_etcd_range(e, "", &kvs, &n, NULL), 0);
	for (size_t i = 0; i < n; i++) {
		const char *k = kvs[i].key, *v = (const char *)kvs[i].value;

		if (strcmp(k, "config") == 0) {
			struct mp_cluster_config c;

			assert_int_equal(mp_config_rec_parse(v, kvs[i].vlen, &c, NULL), 0);
			assert_int_equal(mp_shardmap_set_config(m, &c), 0);
		}
	}
	for (size_t i = 0; i < n; i++) {
		const char *k = kvs[i].key, *v = (const char *)kvs[i].value;
		uint32_t shard;

		if (strncmp(k, "nodes/", 6) == 0) {
			struct mp_node_rec nr;

			assert_int_equal(mp_node_rec_parse(v, kvs[i].vlen, &nr, NULL), 0);
			assert_int_equal(mp_shardmap_set_node(m, k + 6, &nr), 0);
		} else if (strncmp(k, "shards/", 7) == 0) {
			struct mp_shard_rec sr;

			assert_int_equal(mp_shard_key_parse(k, m->config.shards, &shard), 0);
			assert_int_equal(mp_shard_rec_parse(v, kvs[i].vlen, &sr, NULL), 0);
			assert_true(mp_shardmap_offer_shard(m, shard, &sr, kvs[i].mod_rev) >= 0);
		}
	}
	pthread_mutex_lock(&m->mu);
	for (size_t j = 0; j < m->n_nodes && n_gone < 8; j++) {
		bool found = false;
		char key[80];

		snprintf(key, sizeof(key), "nodes/%s", m->nodes[j].id);
		for (size_t i = 0; i < n && !found; i++)
			found = strcmp(kvs[i].key, key) == 0;
		if (!found)
			snprintf(gone[n_gone++], sizeof(gone[0]), "%s", m->nodes[j].id);
	}
	pthread_mutex_unlock(&m->mu);
	for (size_t j = 0; j < n_gone; j++)
		mp_shardmap_del_node(m, gone[j]);
	mp_etcd_kvs_free(kvs, n);
}

/* The shard records in etcd (parsed), 0 where absent. How many exist. */
static size_t read_shards(struct mp_etcd *e, struct mp_shard_rec *recs, bool *has,
			  uint32_t nshards)
{
	struct mp_etcd_kv *kvs = NULL;
	size_t n = 0, found = 0;

	memset(has, 0, nshards * sizeof(*has));
	assert_int_equal(mp_etcd_range(e, "shards/", &kvs, &n, NULL), 0);
	for (size_t i = 0; i < n; i++) {
		uint32_t shard;
		const char *err = NULL;

		assert_int_equal(mp_shard_key_parse(kvs[i].key, nshards, &shard), 0);
		if (mp_shard_rec_parse((const char *)kvs[i].value, kvs[i].vlen, &recs[shard],
				       &err) != 0)
			fail_msg("shard %u: %s", shard, err);
		has[shard] = true;
		found++;
	}
	mp_etcd_kvs_free(kvs, n);
	return found;
}

/* ------------------------------------------------------------ tests */

static void test_election(void **state)
{
	struct mp_etcd *e1 = open_client("/merpati/el/"), *e2 = open_client("/merpati/el/");
	struct mp_shardmap m1, m2;
	struct ctl *c1 = NULL, *c2 = NULL, *winner, *loser;
	int64_t l1 = 0, l2 = 0, l3 = 0, lease, start;
	const char *winner_id, *loser_id;
	char val[80], want[80];
	bool one = false;

	(void)state;
	mp_shardmap_init(&m1);
	mp_shardmap_init(&m2);
	assert_int_equal(mp_etcd_lease_grant(e1, LEASE_TTL_S, &l1), 0);
	assert_int_equal(mp_etcd_lease_grant(e2, LEASE_TTL_S, &l2), 0);

	/* Bad options are refused. */
	{
		struct ctl_opts bad = { .etcd = e1, .map = &m1, .node_id = "bad id" };

		assert_int_equal(ctl_start(&bad, &c1), MP_EINVAL);
		assert_null(c1);
	}
	{
		struct ctl_opts o1 = { .etcd = e1, .map = &m1, .node_id = "a",
				       .lease_id = l1, .interval_ms = INTERVAL_MS };
		struct ctl_opts o2 = { .etcd = e2, .map = &m2, .node_id = "b",
				       .lease_id = l2, .interval_ms = INTERVAL_MS };

		assert_int_equal(ctl_start(&o1, &c1), 0);
		assert_int_equal(ctl_start(&o2, &c2), 0);
	}

	/* Exactly one wins, and the key says who with whose lease. */
	for (start = now_ms(); now_ms() - start < WAIT_MS && !one; sleep_ms(50))
		one = ctl_is_leader(c1) != ctl_is_leader(c2);
	assert_true(one);
	winner = ctl_is_leader(c1) ? c1 : c2;
	loser = winner == c1 ? c2 : c1;
	winner_id = winner == c1 ? "a" : "b";
	loser_id = winner == c1 ? "b" : "a";
	assert_true(controller_key(e1, val, sizeof(val), &lease));
	snprintf(want, sizeof(want), "id=%s", winner_id);
	assert_string_equal(val, want);
	assert_true(lease == (winner == c1 ? l1 : l2));
	/* And it stays that way (several rounds of both). */
	for (int i = 0; i < 10; i++) {
		sleep_ms(INTERVAL_MS);
		assert_true(ctl_is_leader(winner));
		assert_false(ctl_is_leader(loser));
	}

	/* The winner's lease goes: the other takes over. */
	assert_int_equal(mp_etcd_lease_revoke(e1, winner == c1 ? l1 : l2), 0);
	one = false;
	for (start = now_ms(); now_ms() - start < WAIT_MS && !one; sleep_ms(50))
		one = ctl_is_leader(loser) && !ctl_is_leader(winner);
	assert_true(one);
	assert_true(controller_key(e1, val, sizeof(val), &lease));
	snprintf(want, sizeof(want), "id=%s", loser_id);
	assert_string_equal(val, want);
	assert_true(lease == (loser == c1 ? l1 : l2));

	/* The deposed one gets a new lease: it campaigns, but the key is
	 * held, so it stays a follower. */
	assert_int_equal(mp_etcd_lease_grant(e1, LEASE_TTL_S, &l3), 0);
	ctl_set_lease(winner, l3);
	for (int i = 0; i < 10; i++) {
		sleep_ms(INTERVAL_MS);
		assert_false(ctl_is_leader(winner));
		assert_true(ctl_is_leader(loser));
	}

	/* Stopping the leader releases the key at once (its lease still has
	 * most of a minute to live): the other takes over with the new lease. */
	ctl_stop(&loser);
	assert_null(loser);
	ctl_stop(&loser);   /* safe twice */
	one = false;
	for (start = now_ms(); now_ms() - start < WAIT_MS && !one; sleep_ms(50))
		one = ctl_is_leader(winner);
	assert_true(one);
	assert_true(controller_key(e1, val, sizeof(val), &lease));
	snprintf(want, sizeof(want), "id=%s", winner_id);
	assert_string_equal(val, want);
	assert_true(lease == l3);

	/* Stop is prompt even with a long interval. */
	{
		struct ctl_opts o = { .etcd = e2, .map = &m2, .node_id = "c",
				      .lease_id = l3, .interval_ms = 60000 };
		struct ctl *c = NULL;

		assert_int_equal(ctl_start(&o, &c), 0);
		sleep_ms(200);
		start = now_ms();
		ctl_stop(&c);
		assert_true(now_ms() - start < 5000);
	}

	ctl_stop(&winner);
	(void)mp_etcd_lease_revoke(e1, l3);
	mp_shardmap_free(&m1);
	mp_shardmap_free(&m2);
	mp_etcd_close(&e1);
	mp_etcd_close(&e2);
}

static size_t count_led_by(const struct mp_shard_rec *recs, const bool *has, uint32_t n,
			   const char *id)
{
	size_t c = 0;

	for (uint32_t s = 0; s < n; s++)
		c += has[s] && strcmp(recs[s].leader, id) == 0;
	return c;
}

static void test_placement(void **state)
{
	struct mp_etcd *e = open_client("/merpati/pl/"), *ce = open_client("/merpati/pl/");
	struct mp_shard_rec *recs = calloc(64, sizeof(*recs)), *before = calloc(64, sizeof(*before));
	bool has[64], had[64];
	struct mp_shardmap m;
	struct ctl *c = NULL;
	int64_t lease = 0, start;
	size_t found = 0, led3;
	char val[128];
	bool done = false;

	(void)state;
	assert_non_null(recs);
	assert_non_null(before);
	fakes_start();
	mp_shardmap_init(&m);
	put_str(e, "config", "shards=64 rf=3 min_isr=2");
	for (int i = 0; i < 3; i++) {
		char key[64];

		snprintf(key, sizeof(key), "nodes/%.15s", fakes[i].id);
		snprintf(val, sizeof(val), "addr=%.31s state=active", fakes[i].addr);
		put_str(e, key, val);
	}
	map_refresh(e, &m);
	assert_int_equal(mp_etcd_lease_grant(e, LEASE_TTL_S, &lease), 0);
	{
		struct ctl_opts o = { .etcd = ce, .map = &m, .node_id = "n1",
				      .lease_id = lease, .interval_ms = INTERVAL_MS };

		assert_int_equal(ctl_start(&o, &c), 0);
	}

	/* 64 records, every node on every shard, leaders spread. */
	for (start = now_ms(); now_ms() - start < WAIT_MS && found < 64; sleep_ms(50)) {
		map_refresh(e, &m);
		found = read_shards(e, recs, has, 64);
	}
	assert_int_equal(found, 64);
	assert_true(ctl_is_leader(c));
	for (uint32_t s = 0; s < 64; s++) {
		assert_true(recs[s].epoch == 1);
		assert_int_equal(recs[s].n_replicas, 3);
		assert_int_equal(recs[s].n_isr, 3);
	}
	for (int i = 0; i < 3; i++) {
		size_t led = count_led_by(recs, has, 64, fakes[i].id);

		assert_true(led >= 21 && led <= 22);
	}
	/* The controller put its own writes into the map. */
	for (uint32_t s = 0; s < 64; s++) {
		struct mp_shard_rec r;
		int64_t rev = 0;

		assert_int_equal(mp_shardmap_get_shard(&m, s, &r, &rev), 0);
		assert_true(rev > 0);
		assert_memory_equal(&r, &recs[s], sizeof(r));
	}
	/* Settled: nothing more is written. */
	for (int i = 0; i < 5; i++) {
		map_refresh(e, &m);
		sleep_ms(INTERVAL_MS);
	}
	{
		struct mp_shard_rec *again = calloc(64, sizeof(*again));
		bool has2[64];

		assert_non_null(again);
		assert_int_equal(read_shards(e, again, has2, 64), 64);
		assert_memory_equal(again, recs, 64 * sizeof(*again));
		free(again);
	}
	assert_int_equal(atomic_load(&fakes[0].calls) + atomic_load(&fakes[1].calls), 0);

	/* n3 dies (its nodes/ record goes): every shard it led goes to the
	 * in-sync node reporting the highest lsn, n2, with epoch 2; n3
	 * leaves the ISR but stays a replica. */
	memcpy(before, recs, 64 * sizeof(*recs));
	memcpy(had, has, sizeof(had));
	led3 = count_led_by(recs, has, 64, "n3");
	atomic_store(&fakes[0].lsn, 5);
	atomic_store(&fakes[1].lsn, 9);
	assert_int_equal(mp_etcd_delete(e, "nodes/n3", NULL), 0);
	mp_rpc_server_stop(&fakes[2].srv);
	for (start = now_ms(); now_ms() - start < WAIT_MS && !done; sleep_ms(50)) {
		map_refresh(e, &m);
		(void)read_shards(e, recs, has, 64);
		done = count_led_by(recs, has, 64, "n3") == 0;
	}
	assert_true(done);
	assert_true(atomic_load(&fakes[0].calls) > 0);
	assert_true(atomic_load(&fakes[1].calls) > 0);
	for (uint32_t s = 0; s < 64; s++) {
		if (strcmp(before[s].leader, "n3") != 0) {
			/* Untouched: n1 and n2 already hold it, nowhere to add. */
			assert_memory_equal(&recs[s], &before[s], sizeof(recs[s]));
			continue;
		}
		assert_string_equal(recs[s].leader, "n2");
		assert_true(recs[s].epoch == 2);
		assert_true(mp_shard_rec_has_replica(&recs[s], "n3"));
		assert_false(mp_shard_rec_in_isr(&recs[s], "n3"));
	}
	assert_int_equal(count_led_by(recs, has, 64, "n2"),
			 count_led_by(before, had, 64, "n2") + led3);

	/* drain/n1: every shard n1 leads is handed to n2 (n3 is dead), n1
	 * staying in the ISR; n1 still holds its copies (nowhere to move
	 * them). */
	memcpy(before, recs, 64 * sizeof(*recs));
	put_str(e, "drain/n1", "");
	done = false;
	for (start = now_ms(); now_ms() - start < WAIT_MS && !done; sleep_ms(50)) {
		map_refresh(e, &m);
		(void)read_shards(e, recs, has, 64);
		done = count_led_by(recs, has, 64, "n1") == 0;
	}
	assert_true(done);
	for (uint32_t s = 0; s < 64; s++) {
		assert_string_equal(recs[s].leader, "n2");
		assert_true(mp_shard_rec_in_isr(&recs[s], "n1"));
		if (strcmp(before[s].leader, "n1") == 0)
			assert_true(recs[s].epoch == before[s].epoch + 1);
	}

	ctl_stop(&c);
	assert_false(controller_key(e, val, sizeof(val), &start));
	(void)mp_etcd_lease_revoke(e, lease);
	fakes_stop();
	mp_shardmap_free(&m);
	mp_etcd_close(&ce);
	mp_etcd_close(&e);
	free(recs);
	free(before);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_election),
		cmocka_unit_test(test_placement),
	};
	sigset_t block;

	/* As the daemons do: gRPC threads inherit a mask without these. */
	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &block, NULL);
	mp_log_set_level(MP_LOG_WARN);
	mp_rpc_init();
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
