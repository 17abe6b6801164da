/*
 * node_cluster: a storage node's membership in a cluster (docs/DESIGN.md
 * "Cluster"): the cluster config in etcd (created by the first node, checked
 * by the others), the node's leased record nodes/{id}, the live shard map
 * (routing library's watch), replication (repl) and the placement
 * controller, and the tick that drives them.
 *
 * Never: serve a shard before the map names this node its leader; keep the
 * node record alive after the node stops serving.
 */
#ifndef NODE_CLUSTER_H
#define NODE_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

#include "mp_rpc.h"
#include "store.h"

struct node_cluster;

struct node_cluster_opts {
	const char *etcd;        /* endpoints */
	const char *cluster;     /* name: keys under /merpati/{cluster}/ */
	const char *node_id;
	uint32_t shards, rf, min_isr;
	int64_t lease_ttl_s;
	int64_t ack_timeout_ms;
};

/* Connects to etcd, creates or checks the config, loads the map, prepares
 * replication (store's hook set, cluster mode on). Does not register the
 * node yet: call node_cluster_join once the RPC server serves. */
int node_cluster_create(struct store *st, const struct node_cluster_opts *o,
			struct node_cluster **nc_r, char **error_r);
/* The Replication service for mp_rpc_server_start_multi. */
struct mp_rpc_service node_cluster_service(struct node_cluster *nc);
/* Registers nodes/{id} under a kept lease, starts the controller and the
 * tick. */
int node_cluster_join(struct node_cluster *nc, const char *advertise, char **error_r);
/* Stops the tick and the controller, revokes the lease (the node leaves
 * the map), all before the store closes. */
void node_cluster_leave(struct node_cluster *nc);
/* After the store is closed. Safe on NULL. */
void node_cluster_free(struct node_cluster **nc);

#endif
