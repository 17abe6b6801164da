/*
 * repl: a node's side of replication (docs/DESIGN.md "Write path with
 * replication"): the Replication gRPC service (followers apply what leaders
 * send; the controller asks positions), the store's replication hook (the
 * leader sends each group to the in-sync followers and shrinks the ISR by
 * CAS when one fails), and a periodic tick that gives the store each
 * shard's role from the shard map and catches lagging replicas up from the
 * log until they can rejoin the ISR.
 *
 * Never: acknowledge a group unless every in-sync member persisted it or was
 * removed from the ISR in etcd first; add a replica to the ISR while a group
 * is in flight; keep serving a shard whose record no longer names us leader.
 */
#ifndef REPL_H
#define REPL_H

#include <stddef.h>
#include <stdint.h>

#include "mp_rpc.h"
#include "mp_shardmap.h"
#include "store.h"

struct mp_etcd;
struct repl;

struct repl_opts {
	const char *node_id;
	struct store *st;           /* borrowed */
	struct mp_etcd *etcd;       /* borrowed */
	struct mp_shardmap *map;    /* borrowed, kept current by a watch */
	int64_t ack_timeout_ms;     /* 0 = 2000 */
	size_t catchup_bytes;       /* per catch-up call; 0 = 1 MiB */
};

int repl_create(const struct repl_opts *o, struct repl **r_r);
void repl_free(struct repl **r);

/* The Replication service's methods (ctx: the struct repl). */
const struct mp_rpc_method *repl_methods(size_t *n_r);
/* The store's replicator (arg: the struct repl). */
void repl_hook(void *arg, const struct store_rec *recs, size_t n, int *result);
/* Roles from the map into the store (every shard first), then takeovers,
 * catch-up of lagging replicas and this node's snapshot pulls. Called every
 * ~100 ms from one thread. */
void repl_tick(struct repl *r);
/* Only the roles (no RPC, quick): before the node registers. A shard this
 * node takes over stays fenced until repl_tick has run for it. Same thread
 * as repl_tick. */
void repl_roles(struct repl *r);
/* Before the store closes: refuses new snapshot requests, ends the ones
 * being sent (their streams fail) and waits for their threads. Safe twice;
 * repl_free calls it too. */
void repl_stop(struct repl *r);

#endif
