/*
 * Tests for mp_etcd against a real etcd (Debian's etcd-server) that the
 * test starts itself: a data dir in a fresh temporary folder, client and
 * peer ports picked free on 127.0.0.1, killed by PID at the end. Covers
 * KV with prefix stripping, CAS, leases and the keeper, watches (order,
 * prefix, resync after compaction), endpoint failover, and kill -9 plus a
 * restart of etcd under a running watch and lease keeper.
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

#include "etcd/rpc.pb-c.h"
#include "mp_error.h"
#include "mp_etcd.h"
#include "mp_log.h"
#include "mp_rpc.h"
#include "test_etcd_spawn.h"

#define WAIT_MS 10000        /* any other wait for something to happen */
#define MAX_SEEN 64

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

/* ------------------------------------------------------ our own etcd */

static struct test_etcd etcd;

static int group_setup(void **state)
{
	(void)state;
	if (!test_etcd_find(&etcd, true)) {
		print_error("etcd not found in PATH nor at /usr/bin/etcd: "
			    "install the etcd-server package\n");
		return -1;
	}
	return test_etcd_start(&etcd, "/tmp/mp_etcd_test.XXXXXX");
}

static int group_teardown(void **state)
{
	(void)state;
	/* MP_ETCD_TEST_KEEP=1 keeps the data dir and etcd.log to look at. */
	test_etcd_stop(&etcd, "MP_ETCD_TEST_KEEP");
	return 0;
}

static struct mp_etcd *open_client(const char *prefix)
{
	struct mp_etcd *e = NULL;
	char *error = NULL;

	assert_int_equal(mp_etcd_open(etcd.endpoint, prefix, 3000, &e, &error),
			 0);
	assert_null(error);
	assert_non_null(e);
	return e;
}

/* ------------------------------------------------ what callbacks saw */

struct seen_ev {
	int type;            /* MP_ETCD_PUT / MP_ETCD_DELETE; -1: resync */
	char key[64];
	char value[64];
	int64_t rev;
	int64_t mod_rev;
	size_t group;        /* events in the same callback */
};

static struct {
	pthread_mutex_t mu;
	pthread_cond_t cond;
	struct seen_ev ev[MAX_SEEN];
	size_t n;
	bool overflow;
	int bad;             /* checks that failed on the watch thread */
	int64_t lease_ids[16];
	size_t n_leases;
} seen = { .mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };

static void seen_reset(void)
{
	pthread_mutex_lock(&seen.mu);
	seen.n = 0;
	seen.overflow = false;
	seen.bad = 0;
	seen.n_leases = 0;
	pthread_mutex_unlock(&seen.mu);
}

static void on_watch(const struct mp_etcd_event *ev, size_t n, int64_t rev,
		     int resync, void *arg)
{
	size_t i;

	(void)arg;
	pthread_mutex_lock(&seen.mu);
	if (resync) {
		if (ev != NULL || n != 0)
			seen.bad++;
		if (seen.n < MAX_SEEN) {
			memset(&seen.ev[seen.n], 0, sizeof(seen.ev[0]));
			seen.ev[seen.n].type = -1;
			seen.ev[seen.n].rev = rev;
			seen.n++;
		} else {
			seen.overflow = true;
		}
	}
	for (i = 0; !resync && i < n; i++) {
		struct seen_ev *s;

		if (seen.n == MAX_SEEN) {
			seen.overflow = true;
			break;
		}
		s = &seen.ev[seen.n++];
		s->type = (int)ev[i].type;
		snprintf(s->key, sizeof(s->key), "%s", ev[i].kv.key);
		snprintf(s->value, sizeof(s->value), "%s",
			 (const char *)ev[i].kv.value);
		s->rev = rev;
		s->mod_rev = ev[i].kv.mod_rev;
		s->group = n;
		if (ev[i].kv.mod_rev != rev)
			seen.bad++;
	}
	pthread_cond_broadcast(&seen.cond);
	pthread_mutex_unlock(&seen.mu);
}

static void on_lease(int64_t id, void *arg)
{
	(void)arg;
	pthread_mutex_lock(&seen.mu);
	if (seen.n_leases < 16)
		seen.lease_ids[seen.n_leases++] = id;
	pthread_cond_broadcast(&seen.cond);
	pthread_mutex_unlock(&seen.mu);
}

/* Waits until at least n events (or n lease ids when leases) were seen. */
static bool seen_wait(size_t n, bool leases, int64_t ms)
{
	struct timespec ts;
	bool ok;

	deadline_ts(&ts, ms);
	pthread_mutex_lock(&seen.mu);
	/* Bounded by the absolute deadline. */
	while ((leases ? seen.n_leases : seen.n) < n) {
		if (pthread_cond_timedwait(&seen.cond, &seen.mu, &ts) != 0)
			break;
	}
	ok = (leases ? seen.n_leases : seen.n) >= n;
	pthread_mutex_unlock(&seen.mu);
	return ok;
}

static void check_event(size_t i, int type, const char *key,
			const char *value, int64_t rev)
{
	pthread_mutex_lock(&seen.mu);
	assert_true(i < seen.n);
	assert_int_equal(seen.ev[i].type, type);
	if (key != NULL)
		assert_string_equal(seen.ev[i].key, key);
	if (value != NULL)
		assert_string_equal(seen.ev[i].value, value);
	if (rev > 0)
		assert_int_equal(seen.ev[i].rev, rev);
	pthread_mutex_unlock(&seen.mu);
}

/* --------------------------------------------------------------- KV */

static void test_open_errors(void **state)
{
	struct mp_etcd *e = NULL;
	char *error = NULL;

	(void)state;
	assert_int_equal(mp_etcd_open("", "/p/", 0, &e, &error), MP_EINVAL);
	assert_null(e);
	assert_non_null(error);
	free(error);
	error = NULL;
	assert_int_equal(mp_etcd_open("https://127.0.0.1:1", "/p/", 0, &e,
				      &error), MP_EINVAL);
	assert_non_null(error);
	free(error);
	error = NULL;
	assert_int_equal(mp_etcd_open("nocolon", "/p/", 0, &e, &error),
			 MP_EINVAL);
	free(error);
	assert_int_equal(mp_etcd_open(etcd.endpoint, NULL, 0, &e, NULL),
			 MP_EINVAL);
	/* URL form and spaces are accepted. */
	char eps[128];

	snprintf(eps, sizeof(eps), " http://%s/ ", etcd.endpoint);
	assert_int_equal(mp_etcd_open(eps, "/p/", 0, &e, NULL), 0);
	assert_int_equal(mp_etcd_put(e, "k", "v", 1, 0, NULL), 0);
	mp_etcd_close(&e);
	assert_null(e);
	mp_etcd_close(&e);
}

static void test_kv(void **state)
{
	struct mp_etcd *e = open_client("/t-kv/c1/");
	struct mp_etcd *other = open_client("/t-kv/c1x/");
	struct mp_etcd *root = open_client("");
	struct mp_etcd_kv *kv = NULL, *kvs = NULL;
	size_t n = 0, i;
	int64_t r1, r2, r3, rev, rdel;
	static const uint8_t bin[] = { 'a', 0, 'b', 0xff };

	(void)state;
	assert_int_equal(mp_etcd_put(e, "nodes/n1", "one", 3, 0, &r1), 0);
	assert_int_equal(mp_etcd_put(e, "nodes/n2", bin, sizeof(bin), 0, &r2), 0);
	assert_int_equal(mp_etcd_put(e, "shards/s1", "s", 1, 0, &r3), 0);
	assert_int_equal(mp_etcd_put(e, "empty", NULL, 0, 0, NULL), 0);
	/* A sibling prefix sharing our prefix's first bytes. */
	assert_int_equal(mp_etcd_put(other, "nodes/n9", "x", 1, 0, NULL), 0);
	assert_true(r1 > 0 && r2 > r1 && r3 > r2);

	assert_int_equal(mp_etcd_get(e, "nodes/n1", &kv, &rev), 0);
	assert_string_equal(kv->key, "nodes/n1");
	assert_int_equal(kv->vlen, 3);
	assert_string_equal((char *)kv->value, "one");
	assert_int_equal(kv->mod_rev, r1);
	assert_int_equal(kv->create_rev, r1);
	assert_int_equal(kv->version, 1);
	assert_int_equal(kv->lease, 0);
	assert_true(rev >= r3);
	mp_etcd_kvs_free(kv, 1);
	kv = NULL;

	assert_int_equal(mp_etcd_get(e, "nodes/n2", &kv, NULL), 0);
	assert_int_equal(kv->vlen, sizeof(bin));
	assert_memory_equal(kv->value, bin, sizeof(bin));
	assert_int_equal(kv->value[kv->vlen], 0);
	mp_etcd_kvs_free(kv, 1);
	kv = NULL;

	assert_int_equal(mp_etcd_get(e, "empty", &kv, NULL), 0);
	assert_int_equal(kv->vlen, 0);
	assert_string_equal((char *)kv->value, "");
	mp_etcd_kvs_free(kv, 1);
	kv = NULL;

	assert_int_equal(mp_etcd_get(e, "nodes/none", &kv, &rev), MP_ENOENT);
	assert_null(kv);
	assert_true(rev >= r3);
	/* The key exists only under the full name. */
	assert_int_equal(mp_etcd_get(root, "/t-kv/c1/nodes/n1", &kv, NULL), 0);
	assert_string_equal(kv->key, "/t-kv/c1/nodes/n1");
	mp_etcd_kvs_free(kv, 1);
	kv = NULL;

	/* Range: sorted, prefix stripped, nothing from the sibling. */
	assert_int_equal(mp_etcd_range(e, "nodes/", &kvs, &n, &rev), 0);
	assert_int_equal(n, 2);
	assert_string_equal(kvs[0].key, "nodes/n1");
	assert_string_equal(kvs[1].key, "nodes/n2");
	assert_int_equal(kvs[1].mod_rev, r2);
	mp_etcd_kvs_free(kvs, n);
	assert_int_equal(mp_etcd_range(e, "", &kvs, &n, NULL), 0);
	assert_int_equal(n, 4);
	assert_string_equal(kvs[0].key, "empty");
	assert_string_equal(kvs[1].key, "nodes/n1");
	assert_string_equal(kvs[2].key, "nodes/n2");
	assert_string_equal(kvs[3].key, "shards/s1");
	mp_etcd_kvs_free(kvs, n);
	assert_int_equal(mp_etcd_range(e, "nothing/", &kvs, &n, NULL), 0);
	assert_int_equal(n, 0);
	assert_null(kvs);
	/* The sibling sees only its own key. */
	assert_int_equal(mp_etcd_range(other, "", &kvs, &n, NULL), 0);
	assert_int_equal(n, 1);
	assert_string_equal(kvs[0].key, "nodes/n9");
	mp_etcd_kvs_free(kvs, n);

	/* No prefix at all: every key in etcd. */
	assert_int_equal(mp_etcd_range(root, "", &kvs, &n, NULL), 0);
	assert_true(n >= 5);
	for (i = 0; i < n; i++)
		if (strcmp(kvs[i].key, "/t-kv/c1/nodes/n2") == 0)
			break;
	assert_true(i < n);
	mp_etcd_kvs_free(kvs, n);

	/* Overwrite bumps version and mod_rev, keeps create_rev. */
	assert_int_equal(mp_etcd_put(e, "nodes/n1", "uno", 3, 0, &rev), 0);
	assert_int_equal(mp_etcd_get(e, "nodes/n1", &kv, NULL), 0);
	assert_int_equal(kv->version, 2);
	assert_int_equal(kv->create_rev, r1);
	assert_int_equal(kv->mod_rev, rev);
	mp_etcd_kvs_free(kv, 1);
	kv = NULL;

	assert_int_equal(mp_etcd_delete(e, "nodes/n1", &rdel), 0);
	assert_true(rdel > rev);
	assert_int_equal(mp_etcd_get(e, "nodes/n1", &kv, NULL), MP_ENOENT);
	assert_int_equal(mp_etcd_delete(e, "nodes/n1", NULL), 0);
	assert_int_equal(mp_etcd_range(e, "nodes/", &kvs, &n, NULL), 0);
	assert_int_equal(n, 1);
	mp_etcd_kvs_free(kvs, n);

	assert_int_equal(mp_etcd_put(e, NULL, "x", 1, 0, NULL), MP_EINVAL);
	assert_int_equal(mp_etcd_put(e, "k", NULL, 1, 0, NULL), MP_EINVAL);
	mp_etcd_kvs_free(NULL, 0);
	mp_etcd_close(&e);
	mp_etcd_close(&other);
	mp_etcd_close(&root);
}

static void test_cas(void **state)
{
	struct mp_etcd *e = open_client("/t-cas/");
	struct mp_etcd_kv *kv = NULL;
	int64_t r1 = 0, r2 = 0, r = 0;

	(void)state;
	/* Create: succeeds once. */
	assert_int_equal(mp_etcd_cas(e, "shard/1", "a", 1, 0, 0, &r1), 0);
	assert_true(r1 > 0);
	r = -5;
	assert_int_equal(mp_etcd_cas(e, "shard/1", "b", 1, 0, 0, &r), MP_ESTALE);
	assert_int_equal(r, -5);
	assert_int_equal(mp_etcd_get(e, "shard/1", &kv, NULL), 0);
	assert_string_equal((char *)kv->value, "a");
	assert_int_equal(kv->mod_rev, r1);
	mp_etcd_kvs_free(kv, 1);
	kv = NULL;

	/* Swap on the right mod revision; the wrong one changes nothing. */
	assert_int_equal(mp_etcd_cas(e, "shard/1", "c", 1, r1, 0, &r2), 0);
	assert_true(r2 > r1);
	assert_int_equal(mp_etcd_cas(e, "shard/1", "d", 1, r1, 0, NULL),
			 MP_ESTALE);
	assert_int_equal(mp_etcd_cas(e, "shard/1", "d", 1, r2 + 100, 0, NULL),
			 MP_ESTALE);
	assert_int_equal(mp_etcd_get(e, "shard/1", &kv, NULL), 0);
	assert_string_equal((char *)kv->value, "c");
	assert_int_equal(kv->mod_rev, r2);
	mp_etcd_kvs_free(kv, 1);
	kv = NULL;
	/* A missing key fails a compare on a real revision. */
	assert_int_equal(mp_etcd_cas(e, "shard/none", "x", 1, r2, 0, NULL),
			 MP_ESTALE);
	assert_int_equal(mp_etcd_get(e, "shard/none", &kv, NULL), MP_ENOENT);

	/* cas_delete. */
	assert_int_equal(mp_etcd_cas_delete(e, "shard/1", r1), MP_ESTALE);
	assert_int_equal(mp_etcd_get(e, "shard/1", &kv, NULL), 0);
	mp_etcd_kvs_free(kv, 1);
	kv = NULL;
	assert_int_equal(mp_etcd_cas_delete(e, "shard/1", r2), 0);
	assert_int_equal(mp_etcd_get(e, "shard/1", &kv, NULL), MP_ENOENT);
	assert_int_equal(mp_etcd_cas_delete(e, "shard/1", r2), MP_ESTALE);
	assert_int_equal(mp_etcd_cas_delete(e, "shard/1", 0), MP_EINVAL);
	assert_int_equal(mp_etcd_cas(e, "shard/1", "x", 1, -1, 0, NULL),
			 MP_EINVAL);
	/* After delete the key can be created again. */
	assert_int_equal(mp_etcd_cas(e, "shard/1", "e", 1, 0, 0, &r), 0);
	assert_true(r > r2);
	mp_etcd_close(&e);
}

static void test_lease(void **state)
{
	struct mp_etcd *e = open_client("/t-lease/");
	struct mp_etcd_kv *kv = NULL;
	int64_t id = 0, ttl = 0, r = 0;

	(void)state;
	assert_int_equal(mp_etcd_lease_grant(e, 10, &id), 0);
	assert_true(id > 0);
	assert_int_equal(mp_etcd_put(e, "nodes/n1", "up", 2, id, NULL), 0);
	assert_int_equal(mp_etcd_cas(e, "nodes/n2", "up", 2, 0, id, &r), 0);
	assert_int_equal(mp_etcd_get(e, "nodes/n1", &kv, NULL), 0);
	assert_int_equal(kv->lease, id);
	mp_etcd_kvs_free(kv, 1);
	kv = NULL;
	assert_int_equal(mp_etcd_get(e, "nodes/n2", &kv, NULL), 0);
	assert_int_equal(kv->lease, id);
	mp_etcd_kvs_free(kv, 1);
	kv = NULL;
	assert_int_equal(mp_etcd_lease_keepalive(e, id, &ttl), 0);
	assert_true(ttl > 0 && ttl <= 10);
	/* An unknown lease cannot carry a key. */
	assert_int_not_equal(mp_etcd_put(e, "nodes/n3", "x", 1, id + 12345,
					 NULL), 0);

	assert_int_equal(mp_etcd_lease_revoke(e, id), 0);
	assert_int_equal(mp_etcd_get(e, "nodes/n1", &kv, NULL), MP_ENOENT);
	assert_int_equal(mp_etcd_get(e, "nodes/n2", &kv, NULL), MP_ENOENT);
	ttl = 99;
	assert_int_equal(mp_etcd_lease_keepalive(e, id, &ttl), MP_ENOENT);
	assert_int_equal(ttl, 0);
	assert_int_equal(mp_etcd_lease_revoke(e, id), MP_ENOENT);
	assert_int_equal(mp_etcd_lease_grant(e, 0, &id), MP_EINVAL);
	mp_etcd_close(&e);
}

static void test_lease_keeper(void **state)
{
	struct mp_etcd *e = open_client("/t-keeper/");
	struct mp_etcd_lease *l = NULL;
	struct mp_etcd_kv *kv = NULL;
	int64_t id, t0;

	(void)state;
	seen_reset();
	assert_int_equal(mp_etcd_lease_keep(e, 2, on_lease, NULL, &l), 0);
	id = mp_etcd_lease_id(l);
	assert_true(id > 0);
	/* on_new runs once at start with the first id. */
	assert_true(seen_wait(1, true, WAIT_MS));
	pthread_mutex_lock(&seen.mu);
	assert_int_equal(seen.lease_ids[0], id);
	pthread_mutex_unlock(&seen.mu);
	assert_int_equal(mp_etcd_put(e, "nodes/me", "x", 1, id, NULL), 0);

	/* 5 s is 2.5 TTLs: the key survives only if kept alive. */
	sleep_ms(5000);
	assert_int_equal(mp_etcd_get(e, "nodes/me", &kv, NULL), 0);
	assert_int_equal(kv->lease, id);
	mp_etcd_kvs_free(kv, 1);
	kv = NULL;
	assert_int_equal(mp_etcd_lease_id(l), id);
	pthread_mutex_lock(&seen.mu);
	assert_int_equal(seen.n_leases, 1);
	pthread_mutex_unlock(&seen.mu);

	/* Stop is prompt and revokes: the key goes at once. */
	t0 = now_ms();
	mp_etcd_lease_stop(&l);
	assert_true(now_ms() - t0 < 1500);
	assert_null(l);
	mp_etcd_lease_stop(&l);
	assert_int_equal(mp_etcd_get(e, "nodes/me", &kv, NULL), MP_ENOENT);
	assert_int_equal(mp_etcd_lease_id(NULL), 0);

	/* A lease the keeper loses is replaced and on_new told. */
	seen_reset();
	assert_int_equal(mp_etcd_lease_keep(e, 2, on_lease, NULL, &l), 0);
	id = mp_etcd_lease_id(l);
	assert_true(seen_wait(1, true, WAIT_MS));
	assert_int_equal(mp_etcd_lease_revoke(e, id), 0);
	assert_true(seen_wait(2, true, WAIT_MS));
	pthread_mutex_lock(&seen.mu);
	assert_int_not_equal(seen.lease_ids[1], id);
	assert_int_equal(seen.lease_ids[1], mp_etcd_lease_id(l));
	pthread_mutex_unlock(&seen.mu);
	assert_int_equal(mp_etcd_put(e, "nodes/me", "x", 1, mp_etcd_lease_id(l),
				     NULL), 0);
	mp_etcd_lease_stop(&l);
	mp_etcd_close(&e);
}

/* ----------------------------------------------------------- watches */

static void test_watch(void **state)
{
	struct mp_etcd *e = open_client("/t-watch/");
	struct mp_etcd_watch *w = NULL;
	int64_t r0, r1, r2, r3, r4, t0;

	(void)state;
	seen_reset();
	/* From a known revision: nothing after r0 can be missed however
	 * long the watch takes to be created. */
	assert_int_equal(mp_etcd_put(e, "w/old", "0", 1, 0, &r0), 0);
	assert_int_equal(mp_etcd_watch_start(e, "w/", r0 + 1, on_watch, NULL,
					     &w), 0);
	assert_int_equal(mp_etcd_put(e, "w/a", "1", 1, 0, &r1), 0);
	assert_int_equal(mp_etcd_put(e, "wx", "no", 2, 0, NULL), 0);
	assert_int_equal(mp_etcd_put(e, "x/w/a", "no", 2, 0, NULL), 0);
	assert_int_equal(mp_etcd_put(e, "w/b", "2", 1, 0, &r2), 0);
	assert_int_equal(mp_etcd_delete(e, "w/a", &r3), 0);
	assert_int_equal(mp_etcd_delete(e, "w/nothing", NULL), 0);
	assert_int_equal(mp_etcd_put(e, "w/a", "3", 1, 0, &r4), 0);

	assert_true(seen_wait(4, false, WAIT_MS));
	sleep_ms(300); /* anything extra would show up now */
	pthread_mutex_lock(&seen.mu);
	assert_int_equal(seen.n, 4);
	assert_int_equal(seen.bad, 0);
	pthread_mutex_unlock(&seen.mu);
	check_event(0, MP_ETCD_PUT, "w/a", "1", r1);
	check_event(1, MP_ETCD_PUT, "w/b", "2", r2);
	check_event(2, MP_ETCD_DELETE, "w/a", NULL, r3);
	check_event(3, MP_ETCD_PUT, "w/a", "3", r4);

	t0 = now_ms();
	mp_etcd_watch_stop(&w);
	assert_true(now_ms() - t0 < 1000);
	assert_null(w);
	mp_etcd_watch_stop(&w);

	/* From an earlier revision: history is replayed in order. */
	seen_reset();
	assert_int_equal(mp_etcd_watch_start(e, "w/", r2, on_watch, NULL, &w),
			 0);
	assert_true(seen_wait(3, false, WAIT_MS));
	check_event(0, MP_ETCD_PUT, "w/b", "2", r2);
	check_event(1, MP_ETCD_DELETE, "w/a", NULL, r3);
	check_event(2, MP_ETCD_PUT, "w/a", "3", r4);
	mp_etcd_watch_stop(&w);

	/* From now (0): once a put shows up, later ones follow in order. */
	seen_reset();
	assert_int_equal(mp_etcd_watch_start(e, "w/", 0, on_watch, NULL, &w),
			 0);
	t0 = now_ms();
	/* Bounded: the watch exists within a few polls. */
	while (!seen_wait(1, false, 50) && now_ms() - t0 < WAIT_MS)
		assert_int_equal(mp_etcd_put(e, "w/probe", "p", 1, 0, NULL), 0);
	assert_true(seen_wait(1, false, 0));
	sleep_ms(200); /* probes still in flight land before the reset */
	pthread_mutex_lock(&seen.mu);
	seen.n = 0;
	pthread_mutex_unlock(&seen.mu);
	assert_int_equal(mp_etcd_put(e, "w/c", "4", 1, 0, &r1), 0);
	assert_true(seen_wait(1, false, WAIT_MS));
	check_event(0, MP_ETCD_PUT, "w/c", "4", r1);
	mp_etcd_watch_stop(&w);

	assert_int_equal(mp_etcd_watch_start(e, "w/", -1, on_watch, NULL, &w),
			 MP_EINVAL);
	assert_int_equal(mp_etcd_watch_start(e, "w/", 0, NULL, NULL, &w),
			 MP_EINVAL);
	mp_etcd_close(&e);
}

/* Several keys in one Txn are one revision: one callback. */
static void test_watch_txn_group(void **state)
{
	struct mp_etcd *e = open_client("/t-group/");
	struct mp_etcd_watch *w = NULL;
	int64_t r0, id;

	(void)state;
	seen_reset();
	assert_int_equal(mp_etcd_lease_grant(e, 30, &id), 0);
	assert_int_equal(mp_etcd_put(e, "g/a", "1", 1, id, NULL), 0);
	assert_int_equal(mp_etcd_put(e, "g/b", "2", 1, id, &r0), 0);
	assert_int_equal(mp_etcd_watch_start(e, "g/", r0 + 1, on_watch, NULL,
					     &w), 0);
	/* Revoking deletes both keys in one revision. */
	assert_int_equal(mp_etcd_lease_revoke(e, id), 0);
	assert_true(seen_wait(2, false, WAIT_MS));
	pthread_mutex_lock(&seen.mu);
	assert_int_equal(seen.ev[0].type, MP_ETCD_DELETE);
	assert_int_equal(seen.ev[1].type, MP_ETCD_DELETE);
	assert_int_equal(seen.ev[0].group, 2);
	assert_int_equal(seen.ev[0].rev, seen.ev[1].rev);
	assert_int_equal(seen.bad, 0);
	pthread_mutex_unlock(&seen.mu);
	mp_etcd_watch_stop(&w);
	mp_etcd_close(&e);
}

/* Compacts etcd's history up to rev, straight through gRPC. */
static void compact(int64_t rev)
{
	Etcdserverpb__CompactionRequest req =
		ETCDSERVERPB__COMPACTION_REQUEST__INIT;
	struct mp_rpc_channel *ch = NULL;
	ProtobufCMessage *resp = NULL;
	char *error = NULL;

	req.revision = rev;
	req.physical = 1;
	assert_int_equal(mp_rpc_channel_open(etcd.endpoint, 0, &ch), 0);
	assert_int_equal(mp_rpc_call(ch, "/etcdserverpb.KV/Compact", &req.base,
				     &etcdserverpb__compaction_response__descriptor,
				     5000, &resp, &error), 0);
	free(error);
	protobuf_c_message_free_unpacked(resp, NULL);
	mp_rpc_channel_close(&ch);
}

static void test_watch_resync(void **state)
{
	struct mp_etcd *e = open_client("/t-resync/");
	struct mp_etcd_watch *w = NULL;
	int64_t r1, r2, r3;
	size_t i;

	(void)state;
	seen_reset();
	assert_int_equal(mp_etcd_put(e, "c/a", "1", 1, 0, &r1), 0);
	assert_int_equal(mp_etcd_put(e, "c/b", "2", 1, 0, &r2), 0);
	compact(r2);
	/* r1 is gone from history: the callback must be told to re-read. */
	assert_int_equal(mp_etcd_watch_start(e, "c/", r1, on_watch, NULL, &w),
				     0);
	assert_true(seen_wait(1, false, WAIT_MS));
	pthread_mutex_lock(&seen.mu);
	assert_int_equal(seen.ev[0].type, -1);
	assert_true(seen.ev[0].rev >= r2);
	assert_int_equal(seen.bad, 0);
	pthread_mutex_unlock(&seen.mu);
	/* Then the watch goes on from the resync point. */
	assert_int_equal(mp_etcd_put(e, "c/c", "3", 1, 0, &r3), 0);
	assert_true(seen_wait(2, false, WAIT_MS));
	sleep_ms(300);
	pthread_mutex_lock(&seen.mu);
	assert_int_equal(seen.n, 2);
	for (i = 1; i < seen.n; i++)
		assert_int_not_equal(seen.ev[i].type, -1);
	pthread_mutex_unlock(&seen.mu);
	check_event(1, MP_ETCD_PUT, "c/c", "3", r3);
	mp_etcd_watch_stop(&w);
	mp_etcd_close(&e);
}

/* ---------------------------------------------------------- failover */

static void test_failover(void **state)
{
	struct mp_etcd *e = NULL;
	struct mp_etcd_kv *kv = NULL;
	struct mp_etcd_watch *w = NULL;
	char eps[160];
	int64_t r1, ttl, id, t0;
	int dead = test_etcd_free_port();

	(void)state;
	assert_true(dead > 0);
	seen_reset();
	snprintf(eps, sizeof(eps), "127.0.0.1:%d,%s", dead, etcd.endpoint);
	assert_int_equal(mp_etcd_open(eps, "/t-failover/", 3000, &e, NULL), 0);
	assert_int_equal(mp_etcd_put(e, "k", "v", 1, 0, &r1), 0);
	assert_int_equal(mp_etcd_get(e, "k", &kv, NULL), 0);
	assert_string_equal((char *)kv->value, "v");
	mp_etcd_kvs_free(kv, 1);
	assert_int_equal(mp_etcd_lease_grant(e, 5, &id), 0);
	assert_int_equal(mp_etcd_lease_keepalive(e, id, &ttl), 0);
	assert_int_equal(mp_etcd_lease_revoke(e, id), 0);
	mp_etcd_close(&e);

	/* The same for a watch and a keep-alive stream started fresh on the
	 * dead endpoint. */
	assert_int_equal(mp_etcd_open(eps, "/t-failover/", 3000, &e, NULL), 0);
	assert_int_equal(mp_etcd_watch_start(e, "", r1, on_watch, NULL, &w), 0);
	assert_true(seen_wait(1, false, WAIT_MS));
	check_event(0, MP_ETCD_PUT, "k", "v", r1);
	mp_etcd_watch_stop(&w);
	assert_int_equal(mp_etcd_lease_grant(e, 5, &id), 0);
	mp_etcd_close(&e);
	assert_int_equal(mp_etcd_open(eps, "/t-failover/", 3000, &e, NULL), 0);
	assert_int_equal(mp_etcd_lease_keepalive(e, id, &ttl), 0);
	mp_etcd_close(&e);

	/* Nothing reachable: the call fails by its deadline, not later. */
	snprintf(eps, sizeof(eps), "127.0.0.1:%d", dead);
	assert_int_equal(mp_etcd_open(eps, "/t-failover/", 700, &e, NULL), 0);
	t0 = now_ms();
	assert_int_equal(mp_etcd_put(e, "k", "v", 1, 0, NULL), MP_EUNAVAIL);
	assert_true(now_ms() - t0 >= 600);
	assert_true(now_ms() - t0 < 2000);
	mp_etcd_close(&e);
}

/* close with a keeper and a watch still running stops both; their
 * handles stay safe to stop afterwards. */
static void test_close_with_running(void **state)
{
	struct mp_etcd *e = open_client("/t-close/");
	struct mp_etcd *check = open_client("/t-close/");
	struct mp_etcd_lease *l = NULL;
	struct mp_etcd_watch *w = NULL;
	struct mp_etcd_kv *kv = NULL;
	int64_t t0;

	(void)state;
	seen_reset();
	assert_int_equal(mp_etcd_lease_keep(e, 5, NULL, NULL, &l), 0);
	assert_int_equal(mp_etcd_put(e, "k", "v", 1, mp_etcd_lease_id(l), NULL),
			 0);
	assert_int_equal(mp_etcd_watch_start(e, "", 0, on_watch, NULL, &w), 0);
	sleep_ms(200);
	t0 = now_ms();
	mp_etcd_close(&e);
	assert_true(now_ms() - t0 < 2000);
	/* The lease was revoked on close. */
	assert_int_equal(mp_etcd_get(check, "k", &kv, NULL), MP_ENOENT);
	assert_true(mp_etcd_lease_id(l) > 0);
	mp_etcd_lease_stop(&l);
	mp_etcd_watch_stop(&w);
	mp_etcd_close(&check);
}

/* ------------------------------------------------- etcd kill/restart */

static struct {
	pthread_mutex_t mu;
	int64_t ids[16];
	size_t n;
} long_lease = { .mu = PTHREAD_MUTEX_INITIALIZER };

static void on_long_lease(int64_t id, void *arg)
{
	(void)arg;
	pthread_mutex_lock(&long_lease.mu);
	if (long_lease.n < 16)
		long_lease.ids[long_lease.n++] = id;
	pthread_mutex_unlock(&long_lease.mu);
}

/* MP_ETCD_TEST_RESTARTS=n repeats the kill/restart cycle n times (1..8). */
static int restart_rounds(void)
{
	const char *v = getenv("MP_ETCD_TEST_RESTARTS");
	int n = v != NULL ? atoi(v) : 1;

	return n < 1 ? 1 : n > 8 ? 8 : n;
}

static void test_etcd_restart(void **state)
{
	struct mp_etcd *e = open_client("/t-restart/");
	struct mp_etcd_watch *w = NULL;
	struct mp_etcd_lease *l = NULL, *ll = NULL;
	struct mp_etcd_kv *kv = NULL;
	int64_t r0, r1, r2, id, lid, new_id, t0;
	char key[32];
	size_t i, k, rounds = (size_t)restart_rounds();

	(void)state;
	seen_reset();
	assert_int_equal(mp_etcd_put(e, "base", "0", 1, 0, &r0), 0);
	assert_int_equal(mp_etcd_watch_start(e, "r/", r0 + 1, on_watch, NULL,
					     &w), 0);
	assert_int_equal(mp_etcd_lease_keep(e, 2, on_lease, NULL, &l), 0);
	id = mp_etcd_lease_id(l);
	assert_true(seen_wait(1, true, WAIT_MS));
	/* A lease whose TTL outlasts the outage: it must survive as is. */
	assert_int_equal(mp_etcd_lease_keep(e, 20, on_long_lease, NULL, &ll),
			 0);
	lid = mp_etcd_lease_id(ll);
	assert_int_equal(mp_etcd_put(e, "held", "x", 1, lid, NULL), 0);

	for (k = 1; k <= rounds; k++) {
		snprintf(key, sizeof(key), "r/%zu", 2 * k - 1);
		assert_int_equal(mp_etcd_put(e, key, "before", 6, 0, &r1), 0);
		assert_true(seen_wait(2 * k - 1, false, WAIT_MS));
		check_event(2 * k - 2, MP_ETCD_PUT, key, "before", r1);

		test_etcd_kill(&etcd);
		t0 = now_ms();
		/* Down for longer than the 2 s TTL before etcd even starts,
		 * so the keeper must give the short lease up. */
		sleep_ms(2500);
		assert_int_equal(test_etcd_respawn(&etcd), 0);
		print_message("etcd back %lld ms after kill -9\n",
			      (long long)(now_ms() - t0));

		/* The watch resumes: the put after the restart arrives, and
		 * nothing arrives twice. */
		snprintf(key, sizeof(key), "r/%zu", 2 * k);
		assert_int_equal(mp_etcd_put(e, key, "after", 5, 0, &r2), 0);
		assert_true(r2 > r1);
		assert_true(seen_wait(2 * k, false, WAIT_MS));
		sleep_ms(500); /* a repeated event would show up now */
		pthread_mutex_lock(&seen.mu);
		assert_int_equal(seen.n, 2 * k);
		assert_int_equal(seen.bad, 0);
		pthread_mutex_unlock(&seen.mu);
		check_event(2 * k - 1, MP_ETCD_PUT, key, "after", r2);

		/* The short lease was replaced and the owner told. */
		assert_true(seen_wait(k + 1, true, WAIT_MS));
		new_id = mp_etcd_lease_id(l);
		assert_int_not_equal(new_id, id);
		pthread_mutex_lock(&seen.mu);
		assert_int_equal(seen.lease_ids[seen.n_leases - 1], new_id);
		for (i = 0; i + 1 < seen.n_leases; i++)
			assert_int_not_equal(seen.lease_ids[i], new_id);
		pthread_mutex_unlock(&seen.mu);
		assert_int_equal(mp_etcd_put(e, "mine", "x", 1, new_id, NULL), 0);
		assert_int_equal(mp_etcd_get(e, "mine", &kv, NULL), 0);
		assert_int_equal(kv->lease, new_id);
		mp_etcd_kvs_free(kv, 1);
		kv = NULL;
		id = new_id;

		/* The long lease survived the restart, kept by the same id. */
		sleep_ms(1000);
		assert_int_equal(mp_etcd_lease_id(ll), lid);
		pthread_mutex_lock(&long_lease.mu);
		assert_int_equal(long_lease.n, 1);
		assert_int_equal(long_lease.ids[0], lid);
		pthread_mutex_unlock(&long_lease.mu);
		assert_int_equal(mp_etcd_get(e, "held", &kv, NULL), 0);
		assert_int_equal(kv->lease, lid);
		mp_etcd_kvs_free(kv, 1);
		kv = NULL;
	}

	t0 = now_ms();
	mp_etcd_watch_stop(&w);
	mp_etcd_lease_stop(&l);
	mp_etcd_lease_stop(&ll);
	assert_true(now_ms() - t0 < 3000);
	mp_etcd_close(&e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_open_errors),
		cmocka_unit_test(test_kv),
		cmocka_unit_test(test_cas),
		cmocka_unit_test(test_lease),
		cmocka_unit_test(test_lease_keeper),
		cmocka_unit_test(test_watch),
		cmocka_unit_test(test_watch_txn_group),
		cmocka_unit_test(test_watch_resync),
		cmocka_unit_test(test_failover),
		cmocka_unit_test(test_close_with_running),
		cmocka_unit_test(test_etcd_restart),
	};
	sigset_t set;
	int ret;

	/* etcd missing must fail the run, not skip it. */
	if (!test_etcd_find(&etcd, true)) {
		fprintf(stderr, "test_mp_etcd: FAILED: etcd not found in PATH "
			"nor at /usr/bin/etcd; install the etcd-server "
			"package\n");
		return 1;
	}
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	mp_log_set_level(MP_LOG_WARN);
	mp_rpc_init();
	ret = cmocka_run_group_tests(tests, group_setup, group_teardown);
	mp_rpc_shutdown();
	return ret;
}
