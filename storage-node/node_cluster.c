/*
 * node_cluster: etcd membership, map, replication and controller glue for
 * merpati-node. See node_cluster.h.
 */
#include "node_cluster.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "controller.h"
#include "mp_error.h"
#include "mp_etcd.h"
#include "mp_log.h"
#include "mp_route.h"
#include "mp_shardmap.h"
#include "repl.h"
#include "replication.pb-c.h"

#define TICK_MS 100

struct node_cluster {
	struct store *st;             /* borrowed */
	struct node_cluster_opts o;
	char *node_id, *advertise;    /* owned copies */
	struct mp_etcd *etcd;         /* owned */
	struct mp_route *route;       /* owned: the live map */
	struct repl *repl;            /* owned */
	struct ctl *ctl;              /* owned */
	struct mp_etcd_lease *lease;  /* owned */
	pthread_t tick;
	bool tick_started;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool stopping;
};

__attribute__((format(printf, 2, 0)))
static int set_err(char **error_r, const char *fmt, const char *a, const char *b)
{
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
	if (asprintf(error_r, fmt, a, b) < 0)
		*error_r = NULL;
#pragma GCC diagnostic pop
	return MP_EINVAL;
}

/* The first node creates the config; every node checks it matches. */
static int ensure_config(struct node_cluster *nc, char **error_r)
{
	struct mp_cluster_config want = { nc->o.shards, nc->o.rf, nc->o.min_isr }, have;
	char text[256];
	const char *e;
	int len = mp_config_rec_format(&want, text, sizeof(text));
	if (len < 0)
		return set_err(error_r, "bad cluster settings%s%s", "", "");
	for (int attempt = 0; attempt < 3; attempt++) {
		int ret = mp_etcd_cas(nc->etcd, "config", text, (size_t)len, 0, 0, NULL);
		if (ret == 0) {
			mp_log_info("cluster_created", "config=\"%s\"", text);
			return 0;
		}
		if (ret != MP_ESTALE) {
			if (asprintf(error_r, "etcd %s: %s", nc->o.etcd, mp_strerror(ret)) < 0)
				*error_r = NULL;
			return ret;
		}
		struct mp_etcd_kv *kv = NULL;
		ret = mp_etcd_get(nc->etcd, "config", &kv, NULL);
		if (ret == MP_ENOENT)
			continue;
		if (ret < 0)
			return ret;
		ret = mp_config_rec_parse((const char *)kv->value, kv->vlen, &have, &e);
		mp_etcd_kvs_free(kv, 1);
		if (ret < 0)
			return set_err(error_r, "cluster config in etcd is invalid: %s%s", e, "");
		if (have.shards != want.shards) {
			char a[32], b[32];
			snprintf(a, sizeof(a), "%u", have.shards);
			snprintf(b, sizeof(b), "%u", want.shards);
			return set_err(error_r, "the cluster has %s shards; this node was given %s",
				       a, b);
		}
		return 0;
	}
	return set_err(error_r, "cannot create or read the cluster config%s%s", "", "");
}

int node_cluster_create(struct store *st, const struct node_cluster_opts *o,
			struct node_cluster **nc_r, char **error_r)
{
	struct node_cluster *nc = calloc(1, sizeof(*nc));
	char prefix[300];
	int ret;

	*error_r = NULL;
	if (nc == NULL)
		return MP_ENOMEM;
	nc->st = st;
	nc->o = *o;
	nc->node_id = strdup(o->node_id);
	pthread_mutex_init(&nc->mu, NULL);
	pthread_cond_init(&nc->cv, NULL);
	if (nc->node_id == NULL) {
		ret = MP_ENOMEM;
		goto fail;
	}
	if (!mp_node_id_valid(o->node_id)) {
		ret = set_err(error_r, "node_id '%s' is not a valid node id ([A-Za-z0-9_.-], "
			      "at most 63)%s", o->node_id, "");
		goto fail;
	}
	snprintf(prefix, sizeof(prefix), "/merpati/%s/", o->cluster);
	if ((ret = mp_etcd_open(o->etcd, prefix, 5000, &nc->etcd, error_r)) < 0)
		goto fail;
	if ((ret = ensure_config(nc, error_r)) < 0)
		goto fail;
	if ((ret = mp_route_open(nc->etcd, NULL, &nc->route, error_r)) < 0)
		goto fail;
	struct repl_opts ro = {
		.node_id = o->node_id, .st = st, .etcd = nc->etcd,
		.map = mp_route_map(nc->route), .ack_timeout_ms = o->ack_timeout_ms,
	};
	if ((ret = repl_create(&ro, &nc->repl)) < 0)
		goto fail;
	store_set_cluster(st, true);
	store_set_replicator(st, repl_hook, nc->repl);
	*nc_r = nc;
	return 0;
fail:
	node_cluster_free(&nc);
	return ret;
}

struct mp_rpc_service node_cluster_service(struct node_cluster *nc)
{
	struct mp_rpc_service s;
	s.svc = &merpati__repl__v1__replication__descriptor;
	s.methods = repl_methods(&s.n);
	s.ctx = nc->repl;
	return s;
}

/* (Re)create nodes/{id} under a lease: at start and whenever etcd lost
 * the lease. */
static void on_lease(int64_t lease, void *arg)
{
	struct node_cluster *nc = arg;
	struct mp_node_rec rec;
	char text[MP_ADDR_MAX + 64], key[MP_NODE_ID_MAX + 16];
	memset(&rec, 0, sizeof(rec));
	snprintf(rec.addr, sizeof(rec.addr), "%s", nc->advertise);
	rec.state = MP_NODE_ACTIVE;
	int len = mp_node_rec_format(&rec, text, sizeof(text));
	snprintf(key, sizeof(key), "nodes/%s", nc->node_id);
	int ret = len < 0 ? len : mp_etcd_put(nc->etcd, key, text, (size_t)len, lease, NULL);
	if (ret < 0)
		mp_log_error("node_register_failed", "lease=%lld error=%s", (long long)lease,
			     mp_strerror(ret));
	else
		mp_log_info("node_registered", "lease=%lld record=\"%s\"", (long long)lease, text);
	pthread_mutex_lock(&nc->mu);
	if (nc->ctl != NULL)
		ctl_set_lease(nc->ctl, lease);
	pthread_mutex_unlock(&nc->mu);
}

static void *tick_main(void *arg)
{
	struct node_cluster *nc = arg;
	pthread_mutex_lock(&nc->mu);
	while (!nc->stopping) {
		pthread_mutex_unlock(&nc->mu);
		repl_tick(nc->repl);
		pthread_mutex_lock(&nc->mu);
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += TICK_MS * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		if (!nc->stopping)
			pthread_cond_timedwait(&nc->cv, &nc->mu, &ts);
	}
	pthread_mutex_unlock(&nc->mu);
	return NULL;
}

int node_cluster_join(struct node_cluster *nc, const char *advertise, char **error_r)
{
	int ret;
	*error_r = NULL;
	if ((nc->advertise = strdup(advertise)) == NULL)
		return MP_ENOMEM;
	/* Roles first, so the node answers for its shards as soon as the map
	 * names it (the slow work, a snapshot pull maybe, waits for the tick
	 * thread: it must not hold up registering). */
	repl_roles(nc->repl);
	if ((ret = mp_etcd_lease_keep(nc->etcd, nc->o.lease_ttl_s, on_lease, nc, &nc->lease)) < 0) {
		if (asprintf(error_r, "cannot register in etcd: %s", mp_strerror(ret)) < 0)
			*error_r = NULL;
		return ret;
	}
	struct ctl_opts co = {
		.etcd = nc->etcd, .map = mp_route_map(nc->route), .node_id = nc->node_id,
		.lease_id = mp_etcd_lease_id(nc->lease),
	};
	struct ctl *c = NULL;
	if ((ret = ctl_start(&co, &c)) < 0) {
		if (asprintf(error_r, "cannot start the controller: %s", mp_strerror(ret)) < 0)
			*error_r = NULL;
		return ret;
	}
	pthread_mutex_lock(&nc->mu);
	nc->ctl = c;
	pthread_mutex_unlock(&nc->mu);
	if (pthread_create(&nc->tick, NULL, tick_main, nc) != 0) {
		*error_r = strdup("cannot start the cluster tick thread");
		return MP_ENOMEM;
	}
	nc->tick_started = true;
	return 0;
}

void node_cluster_leave(struct node_cluster *nc)
{
	if (nc == NULL)
		return;
	pthread_mutex_lock(&nc->mu);
	nc->stopping = true;
	pthread_cond_broadcast(&nc->cv);
	pthread_mutex_unlock(&nc->mu);
	if (nc->tick_started) {
		pthread_join(nc->tick, NULL);
		nc->tick_started = false;
	}
	struct ctl *c;
	pthread_mutex_lock(&nc->mu);
	c = nc->ctl;
	nc->ctl = NULL;
	pthread_mutex_unlock(&nc->mu);
	ctl_stop(&c);
	/* Snapshot streams read the store from their own threads: ended
	 * here, before the store closes. */
	repl_stop(nc->repl);
	mp_etcd_lease_stop(&nc->lease);
}

void node_cluster_free(struct node_cluster **ncp)
{
	struct node_cluster *nc = *ncp;
	if (nc == NULL)
		return;
	*ncp = NULL;
	node_cluster_leave(nc);
	repl_free(&nc->repl);
	mp_route_close(&nc->route);
	mp_etcd_close(&nc->etcd);
	free(nc->node_id);
	free(nc->advertise);
	pthread_mutex_destroy(&nc->mu);
	pthread_cond_destroy(&nc->cv);
	free(nc);
}
