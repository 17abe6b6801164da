/*
 * controller: the placement controller (docs/DESIGN.md "Cluster"). One node
 * at a time, elected by CAS-creating the leased etcd key "controller". It
 * alone creates shard records, changes leaders (epoch + 1), and adds and
 * removes replicas, always by CAS on the record's mod_revision and always
 * copy-then-switch, so a shard never has fewer in-sync replicas than before
 * because of a move.
 *
 * The decisions are a pure function (ctl_plan) of a snapshot of the map,
 * the nodes' reported positions and the drain requests, so they are unit
 * tested without etcd; ctl_start runs the election and applies the plan.
 *
 * Never: write a shard record without CAS; pick a leader outside the ISR;
 * remove a replica before its replacement is in the ISR.
 */
#ifndef CONTROLLER_H
#define CONTROLLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mp_shardmap.h"

struct mp_etcd;

/* ------------------------------------------------------------ planning */

/* What the plan knows of one live node. */
struct ctl_node {
	char id[MP_NODE_ID_MAX + 1];
	bool draining;            /* nodes/{id} state=draining or drain/{id} set */
};

/* A node's reported position in a shard (from Replication.ShardState). */
struct ctl_pos {
	char node[MP_NODE_ID_MAX + 1];
	uint32_t shard;
	uint64_t epoch;
	uint64_t lsn;
};

struct ctl_input {
	struct mp_cluster_config config;
	const struct ctl_node *nodes;     /* live nodes (have a nodes/ record) */
	size_t n_nodes;
	const struct mp_shard_rec *shards; /* config.shards entries */
	const bool *has_shard;             /* false: no record yet */
	const struct ctl_pos *pos;         /* may be empty */
	size_t n_pos;
};

enum ctl_action_kind {
	CTL_CREATE,        /* write a new record (CAS on absence) */
	CTL_UPDATE,        /* replace the record (CAS on mod_revision) */
};

struct ctl_action {
	enum ctl_action_kind kind;
	uint32_t shard;
	struct mp_shard_rec rec;   /* the new record */
	const char *why;           /* static text for the log */
};

/* Decide what to change now. Writes at most max actions; returns how many.
 * Rules (in order, per shard):
 *  1. no record: replicas = the rf least-loaded live non-draining nodes
 *     (fewer if there are fewer nodes), leader the one leading fewest
 *     shards, isr = replicas, epoch 1;
 *  2. leader not live: new leader = the live ISR member with the highest
 *     reported lsn (ties: fewest leaderships, then id); none live: nothing
 *     (the shard waits); epoch + 1; the dead leader leaves the ISR but stays
 *     in replicas (it may come back);
 *  3. leader draining and another live non-draining ISR member exists:
 *     hand leadership to it (epoch + 1);
 *  4. fewer than rf live non-draining replicas: add the least-loaded live
 *     non-draining node that is not a replica (not in the ISR: the leader
 *     catches it up and adds it);
 *  5. more replicas than rf and at least rf live non-draining ISR members:
 *     drop one replica that is dead or draining, never the leader;
 *  6. balance: when a live node holds fewer than (average - 1) replicas and
 *     no shard is mid-move, add it to one shard of the most loaded node
 *     (rule 5 then removes the extra replica once it is in sync), one shard
 *     at a time.
 *  7. leaders: when all shards are settled and a node leads two or more
 *     shards more than another, move one leadership to that node where it
 *     is in the ISR (the old leader stays in the ISR).
 * Leader changes (2, 3, 7) bump the epoch; replica changes (4, 5, 6) keep it. */
size_t ctl_plan(const struct ctl_input *in, struct ctl_action *out, size_t max);

/* ------------------------------------------------------------ running */

struct ctl;
struct ctl_opts {
	struct mp_etcd *etcd;       /* borrowed */
	struct mp_shardmap *map;    /* borrowed: kept current by the node's watch */
	const char *node_id;
	int64_t lease_id;           /* the node's lease: the election key uses it */
	int64_t interval_ms;        /* reconcile period; 0 = 200 */
};
int ctl_start(const struct ctl_opts *o, struct ctl **c_r);
/* The node's lease changed (etcd lost it): campaign again with this one. */
void ctl_set_lease(struct ctl *c, int64_t lease_id);
bool ctl_is_leader(struct ctl *c);
void ctl_stop(struct ctl **c);

#endif
