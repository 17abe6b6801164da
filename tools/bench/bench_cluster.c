/*
 * mp-bench-cluster: append throughput and latency through the routing
 * library against a running cluster (any replication factor), and the
 * failover probe.
 *
 *   mp-bench-cluster load --etcd EP [--cluster NAME] [--callers 64]
 *                         [--seconds 10] [--size 10240] [--label TEXT]
 *     N callers, each appending to its own user (created first), for S
 *     seconds; prints "result label=... callers=N ops_per_s=... p50_ms=...
 *     p99_ms=... errors=...".
 *
 *   mp-bench-cluster probe --etcd EP [--cluster NAME] --user U --seconds S
 *     one caller appending to U as fast as it can; prints the longest gap
 *     between two acknowledged appends ("result probe max_gap_ms=..."),
 *     which is the failover time when a leader is killed during the run.
 *
 * Bounded by time; talks only to the addresses in the cluster's map.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mailstore.pb-c.h"
#include "mp_error.h"
#include "mp_etcd.h"
#include "mp_route.h"
#include "mp_rpc.h"

#define DOMAIN "bench.test"
#define MAX_CALLERS 256

struct opts {
	const char *etcd, *cluster, *label, *user;
	int callers, seconds;
	size_t size;
};

struct caller {
	pthread_t tid;
	int idx;
	struct mp_route *route;
	const struct opts *o;
	int64_t deadline_ns;
	int64_t *lat;
	size_t n, cap;
	uint64_t errors;
	int64_t max_gap_ns;
};

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static char path_append[128], path_domain[128], path_account[128];

static int routed(struct mp_route *r, const char *user, const char *path,
		  const ProtobufCMessage *req, const ProtobufCMessageDescriptor *d,
		  int64_t timeout_ms, char **error_r)
{
	uint32_t shard = 0;
	const char *e;
	ProtobufCMessage *resp = NULL;
	if (user != NULL && mp_route_shard_of(r, user, &shard, &e) < 0)
		return MP_EINVAL;
	int ret = mp_route_call(r, shard, path, req, d, timeout_ms, &resp, error_r);
	if (resp != NULL)
		protobuf_c_message_free_unpacked(resp, NULL);
	return ret;
}

static void *caller_main(void *arg)
{
	struct caller *c = arg;
	char user[64];
	char *body = malloc(c->o->size + 64);
	int64_t last_ack = 0;
	if (body == NULL)
		return NULL;
	if (c->o->user != NULL)
		snprintf(user, sizeof(user), "%s", c->o->user);
	else
		snprintf(user, sizeof(user), "bench%d@" DOMAIN, c->idx);
	int h = snprintf(body, c->o->size, "Subject: bench\r\nX-Caller: %d\r\n\r\n", c->idx);
	memset(body + h, 'x', c->o->size - (size_t)h);
	for (uint64_t seq = 0; now_ns() < c->deadline_ns; seq++) {
		Merpati__V1__AppendRequest q = MERPATI__V1__APPEND_REQUEST__INIT;
		char *error = NULL;
		snprintf(body + h, 24, "%020" PRIu64, seq);
		body[h + 20] = 'x';
		q.user = user;
		q.mailbox = (char *)"INBOX";
		q.body.data = (uint8_t *)body;
		q.body.len = c->o->size;
		int64_t t0 = now_ns();
		int ret = routed(c->route, user, path_append, &q.base,
				 &merpati__v1__append_reply__descriptor, 15000, &error);
		int64_t t1 = now_ns();
		free(error);
		if (ret < 0) {
			c->errors++;
			continue;
		}
		if (last_ack != 0 && t1 - last_ack > c->max_gap_ns)
			c->max_gap_ns = t1 - last_ack;
		last_ack = t1;
		if (c->n == c->cap) {
			size_t nc = c->cap ? c->cap * 2 : 4096;
			int64_t *nl = realloc(c->lat, nc * sizeof(*nl));
			if (nl == NULL)
				break;
			c->lat = nl;
			c->cap = nc;
		}
		c->lat[c->n++] = t1 - t0;
	}
	free(body);
	return NULL;
}

static int cmp64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return x < y ? -1 : x > y;
}

static int setup(struct mp_route *r, const struct opts *o)
{
	Merpati__V1__DomainRequest d = MERPATI__V1__DOMAIN_REQUEST__INIT;
	char *error = NULL;
	d.name = (char *)DOMAIN;
	int ret = routed(r, NULL, path_domain, &d.base, &merpati__v1__domain_reply__descriptor,
			 15000, &error);
	free(error);
	if (ret < 0 && ret != MP_EEXIST) {
		fprintf(stderr, "bench: CreateDomain: %s\n", mp_strerror(ret));
		return ret;
	}
	for (int i = 0; i < o->callers; i++) {
		Merpati__V1__CreateAccountRequest a = MERPATI__V1__CREATE_ACCOUNT_REQUEST__INIT;
		char user[64];
		snprintf(user, sizeof(user), "bench%d@" DOMAIN, i);
		a.user = user;
		a.password_hash = (char *)"";
		error = NULL;
		ret = routed(r, user, path_account, &a.base,
			     &merpati__v1__account_reply__descriptor, 15000, &error);
		free(error);
		if (ret < 0 && ret != MP_EEXIST) {
			fprintf(stderr, "bench: CreateAccount %s: %s\n", user, mp_strerror(ret));
			return ret;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct opts o = { NULL, "default", "cluster", NULL, 64, 10, 10240 };
	if (argc < 2) {
		fprintf(stderr, "usage: mp-bench-cluster load|probe --etcd EP [...]\n");
		return 2;
	}
	bool probe = strcmp(argv[1], "probe") == 0;
	if (!probe && strcmp(argv[1], "load") != 0) {
		fprintf(stderr, "bench: unknown mode %s\n", argv[1]);
		return 2;
	}
	for (int i = 2; i + 1 < argc; i += 2) {
		const char *k = argv[i], *v = argv[i + 1];
		if (strcmp(k, "--etcd") == 0) o.etcd = v;
		else if (strcmp(k, "--cluster") == 0) o.cluster = v;
		else if (strcmp(k, "--label") == 0) o.label = v;
		else if (strcmp(k, "--user") == 0) o.user = v;
		else if (strcmp(k, "--callers") == 0) o.callers = atoi(v);
		else if (strcmp(k, "--seconds") == 0) o.seconds = atoi(v);
		else if (strcmp(k, "--size") == 0) o.size = (size_t)atol(v);
		else {
			fprintf(stderr, "bench: unknown option %s\n", k);
			return 2;
		}
	}
	if (probe)
		o.callers = 1;
	if (o.etcd == NULL || o.callers < 1 || o.callers > MAX_CALLERS || o.seconds < 1 ||
	    o.seconds > 3600 || o.size < 256 || o.size > (16u << 20) || (probe && o.user == NULL)) {
		fprintf(stderr, "bench: need --etcd; callers 1..%d, seconds 1..3600, "
			"size 256..16M; probe needs --user\n", MAX_CALLERS);
		return 2;
	}
	mp_rpc_init();
	mp_rpc_method_path(&merpati__v1__mail_store__descriptor, "Append", path_append,
			   sizeof(path_append));
	mp_rpc_method_path(&merpati__v1__mail_store__descriptor, "CreateDomain", path_domain,
			   sizeof(path_domain));
	mp_rpc_method_path(&merpati__v1__mail_store__descriptor, "CreateAccount", path_account,
			   sizeof(path_account));
	char prefix[300], *error = NULL;
	struct mp_etcd *e = NULL;
	struct mp_route *r = NULL;
	int rc = 1;
	snprintf(prefix, sizeof(prefix), "/merpati/%s/", o.cluster);
	if (mp_etcd_open(o.etcd, prefix, 5000, &e, &error) < 0 ||
	    mp_route_open(e, NULL, &r, &error) < 0) {
		fprintf(stderr, "bench: %s\n", error ? error : "cannot reach etcd");
		goto out;
	}
	if (!probe && setup(r, &o) < 0)
		goto out;
	struct caller *cs = calloc((size_t)o.callers, sizeof(*cs));
	if (cs == NULL)
		goto out;
	int64_t start = now_ns();
	for (int i = 0; i < o.callers; i++) {
		cs[i].idx = i;
		cs[i].route = r;
		cs[i].o = &o;
		cs[i].deadline_ns = start + (int64_t)o.seconds * 1000000000;
		if (pthread_create(&cs[i].tid, NULL, caller_main, &cs[i]) != 0)
			cs[i].tid = 0;
	}
	size_t total = 0;
	uint64_t errors = 0;
	int64_t max_gap = 0;
	for (int i = 0; i < o.callers; i++) {
		if (cs[i].tid)
			pthread_join(cs[i].tid, NULL);
		total += cs[i].n;
		errors += cs[i].errors;
		if (cs[i].max_gap_ns > max_gap)
			max_gap = cs[i].max_gap_ns;
	}
	double secs = (double)(now_ns() - start) / 1e9;
	int64_t *all = calloc(total + 1, sizeof(*all));
	size_t k = 0;
	for (int i = 0; i < o.callers && all != NULL; i++) {
		memcpy(all + k, cs[i].lat, cs[i].n * sizeof(*all));
		k += cs[i].n;
		free(cs[i].lat);
	}
	if (all != NULL && total > 0) {
		qsort(all, total, sizeof(*all), cmp64);
		if (probe)
			printf("result probe acked=%zu errors=%" PRIu64 " max_gap_ms=%.0f\n", total,
			       errors, (double)max_gap / 1e6);
		else
			printf("result label=%s callers=%d ops_per_s=%.0f p50_ms=%.2f p99_ms=%.2f "
			       "ops=%zu errors=%" PRIu64 "\n",
			       o.label, o.callers, (double)total / secs,
			       (double)all[total / 2] / 1e6, (double)all[total * 99 / 100] / 1e6,
			       total, errors);
		rc = 0;
	} else {
		printf("result label=%s callers=%d ops=0 errors=%" PRIu64 "\n", o.label,
		       o.callers, errors);
	}
	free(all);
	free(cs);
out:
	free(error);
	mp_route_close(&r);
	mp_etcd_close(&e);
	mp_rpc_shutdown();
	return rc;
}
