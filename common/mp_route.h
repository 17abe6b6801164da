/*
 * mp_route: how frontends and merpatictl reach a shard's leader
 * (docs/DESIGN.md "Routing"). user -> shard with mp_shard_of over the
 * cluster's shard count; shard -> leader address from an mp_shardmap that
 * one etcd watch keeps current; one cached gRPC channel per address.
 *
 * A call that meets NOT_LEADER, UNAVAILABLE, a per-attempt timeout, or a
 * shard with no known leader re-reads that shard's record and its leader's
 * node record straight from etcd (the watch may lag) and retries with
 * backoff (50 ms doubling to 1 s) until its time budget is spent. Any other
 * error is the answer and returns at once. Retrying a write is safe only
 * because writes carry request ids (DESIGN.md "Routing").
 *
 * The re-reads are bounded by the etcd client's own per-call timeout
 * (mp_etcd_open), not by the call's budget: with etcd unreachable a call
 * can overrun its budget by about that much.
 *
 * Thread-safe: any number of threads may call at once.
 * Never: retry past the caller's budget; call a node the map does not name
 * as the shard's leader (except mp_route_call_node, which is explicit).
 */
#ifndef MP_ROUTE_H
#define MP_ROUTE_H

#include <stddef.h>
#include <stdint.h>
#include <protobuf-c/protobuf-c.h>

struct mp_etcd;
struct mp_shardmap;
struct mp_route;
struct mp_rpc_channel;

#define MP_ROUTE_DEFAULT_TIMEOUT_MS 10000
#define MP_ROUTE_ATTEMPT_TIMEOUT_MS 5000

struct mp_route_opts {
	int64_t timeout_ms;          /* budget of a call given 0; 0 = 10 s */
	int64_t attempt_timeout_ms;  /* cap of one RPC attempt; 0 = 5 s */
	size_t max_msg;              /* channels' max message; 0 = mp_rpc's */
};

/* Reads config, nodes/ and shards/ (keys relative to e's cluster prefix)
 * and starts one watch on the whole prefix from that read's revision + 1.
 * A cluster without a config yet is fine: the map fills in when it
 * appears. e is borrowed and must outlive the route; o may be NULL.
 * MP_E* (etcd unreachable: MP_EUNAVAIL / MP_ETIMEDOUT) with *error_r
 * (malloc'd; caller frees). */
int mp_route_open(struct mp_etcd *e, const struct mp_route_opts *o,
		  struct mp_route **r_r, char **error_r);
/* Stops the watch, closes channels, frees. Safe on NULL; sets *r NULL.
 * No call may be in flight. */
void mp_route_close(struct mp_route **r);

/* The live map (borrowed, owned by the route); read it with the
 * mp_shardmap_* accessors, which copy under its lock. */
struct mp_shardmap *mp_route_map(struct mp_route *r);

/* Shard of a user (normalised with mp_user_normalize first). MP_EINVAL
 * with a static *error_r for a bad address; MP_EUNAVAIL when the cluster
 * config is not known yet. */
int mp_route_shard_of(struct mp_route *r, const char *user, uint32_t *shard_r,
		      const char **error_r);

/* Blocking unary call to the leader of shard (see the top of this file).
 * timeout_ms: the whole budget, retries included (0 = opts.timeout_ms).
 * 0 with *resp_r (free with protobuf_c_message_free_unpacked), or the
 * server's error, or, once the budget is spent on retryable failures,
 * MP_EUNAVAIL (nothing was done) or MP_ETIMEDOUT (the last attempt ran
 * out of time: its outcome is unknown). MP_EINVAL for a shard beyond the
 * shard count. *error_r: malloc'd text or NULL; caller frees. */
int mp_route_call(struct mp_route *r, uint32_t shard, const char *path,
		  const ProtobufCMessage *req,
		  const ProtobufCMessageDescriptor *resp_desc, int64_t timeout_ms,
		  ProtobufCMessage **resp_r, char **error_r);

/* One attempt to an explicit node address ("127.0.0.1:7001"), for
 * node-level commands (NodeInfo, ...). No retry, no refresh. */
int mp_route_call_node(struct mp_route *r, const char *addr, const char *path,
		       const ProtobufCMessage *req,
		       const ProtobufCMessageDescriptor *resp_desc,
		       int64_t timeout_ms, ProtobufCMessage **resp_r,
		       char **error_r);

/* The cached channel to the leader of shard as the map names it now, for
 * callers that run their own asynchronous calls or streams there (the
 * frontend's watches). Reads only the map: no etcd read, no network, never
 * blocks on either, so a caller must follow leader changes itself (e.g.
 * re-check when mp_route_map's revision moves). 0 with *ch_r (borrowed:
 * lives until mp_route_close); MP_ENOENT when the map names no leader with
 * a live node record; MP_EINVAL for a shard beyond the shard count;
 * MP_ENOMEM. */
int mp_route_leader_channel(struct mp_route *r, uint32_t shard,
			    struct mp_rpc_channel **ch_r);

/* Re-read everything from etcd now (drops nodes and shards that are gone).
 * The watch does this itself after a compaction; merpatictl and tests may
 * want it after writes of their own. 0 or the etcd error. */
int mp_route_refresh(struct mp_route *r);

/* Wait until the map reflects etcd revision rev (the watch has applied it),
 * at most timeout_ms. 0 or MP_ETIMEDOUT. For callers that wrote to etcd
 * and must route by what they wrote. */
int mp_route_wait_rev(struct mp_route *r, int64_t rev, int64_t timeout_ms);

#endif
