/*
 * mp_etcd: our etcd v3 client (etcd 3.4's gRPC API through mp_rpc and the
 * protobuf-c messages generated from proto/etcd/), the only code that knows
 * etcd's wire format.
 *
 * Every key is relative to a cluster prefix given at open ("/merpati/c1/"):
 * callers say "nodes/n1", the client sends "/merpati/c1/nodes/n1" and strips
 * the prefix from keys it returns. Endpoints are a comma-separated list; a
 * call that fails with UNAVAILABLE moves to the next endpoint and retries
 * within its deadline. Leases are kept alive by a keeper thread that
 * re-grants a lease etcd has forgotten (restart past its TTL) and tells the
 * owner so it can re-create its leased keys. Watches run on their own thread,
 * reconnect, and resume from the last revision seen + 1; if that revision
 * was compacted the callback is told to resynchronise (re-read everything).
 *
 * Never: block a caller past its deadline; drop a watch event silently.
 */
#ifndef MP_ETCD_H
#define MP_ETCD_H

#include <stddef.h>
#include <stdint.h>

struct mp_etcd;

struct mp_etcd_kv {
	char *key;          /* owned; prefix removed; NUL-terminated */
	uint8_t *value;     /* owned; NUL-terminated for convenience */
	size_t vlen;
	int64_t create_rev, mod_rev, version, lease;
};

/* endpoints: "127.0.0.1:2379,127.0.0.1:22379"; prefix: "/merpati/default/".
 * timeout_ms: default per-call deadline (0 = 5000). Does not connect yet. */
int mp_etcd_open(const char *endpoints, const char *prefix, int64_t timeout_ms,
		 struct mp_etcd **e_r, char **error_r);
void mp_etcd_close(struct mp_etcd **e);   /* stops keepers and watches first */

void mp_etcd_kvs_free(struct mp_etcd_kv *kvs, size_t n);

/* Get one key. 0 with *kv_r (caller frees with mp_etcd_kvs_free(kv, 1)), or
 * MP_ENOENT. *rev_r (may be NULL): the store's revision of the answer. */
int mp_etcd_get(struct mp_etcd *e, const char *key, struct mp_etcd_kv **kv_r,
		int64_t *rev_r);
/* Every key starting with prefix (relative), sorted by key. */
int mp_etcd_range(struct mp_etcd *e, const char *prefix, struct mp_etcd_kv **kvs_r,
		  size_t *n_r, int64_t *rev_r);
int mp_etcd_put(struct mp_etcd *e, const char *key, const void *val, size_t vlen,
		int64_t lease, int64_t *rev_r);
/* 0 even when the key did not exist. */
int mp_etcd_delete(struct mp_etcd *e, const char *key, int64_t *rev_r);

/* Compare-and-swap in one Txn: put when the key's mod_revision equals
 * expect_mod_rev (0: the key must not exist, compared on CREATE revision 0
 * as etcd requires). MP_ESTALE when the compare failed (nothing written).
 * *rev_r: the revision of the write (the new mod_revision of the key). */
int mp_etcd_cas(struct mp_etcd *e, const char *key, const void *val, size_t vlen,
		int64_t expect_mod_rev, int64_t lease, int64_t *rev_r);
/* Delete when mod_revision equals expect_mod_rev; MP_ESTALE otherwise. */
int mp_etcd_cas_delete(struct mp_etcd *e, const char *key, int64_t expect_mod_rev);

/* Leases. */
int mp_etcd_lease_grant(struct mp_etcd *e, int64_t ttl_s, int64_t *id_r);
int mp_etcd_lease_revoke(struct mp_etcd *e, int64_t id);
/* One keep-alive; *ttl_r the remaining TTL (0 or MP_ENOENT: lease is gone). */
int mp_etcd_lease_keepalive(struct mp_etcd *e, int64_t id, int64_t *ttl_r);

/* A lease kept alive every ttl/3 by a thread. When etcd has lost it (or was
 * unreachable longer than its TTL) a new lease is granted and on_new runs on
 * the keeper thread with the new id: the owner re-creates its keys. on_new
 * also runs once at start with the first id. */
struct mp_etcd_lease;
typedef void (*mp_etcd_lease_cb)(int64_t lease_id, void *arg);
int mp_etcd_lease_keep(struct mp_etcd *e, int64_t ttl_s, mp_etcd_lease_cb on_new,
		       void *arg, struct mp_etcd_lease **l_r);
int64_t mp_etcd_lease_id(struct mp_etcd_lease *l);
/* Stops the thread and revokes the lease (best effort). Safe on NULL. */
void mp_etcd_lease_stop(struct mp_etcd_lease **l);

/* Watch a prefix from start_rev (0 = now). Events run on the watch's thread
 * in revision order. resync = 1 means events may have been missed (history
 * compacted): re-read the prefix; then ev is NULL and n is 0. */
enum mp_etcd_ev_type { MP_ETCD_PUT = 0, MP_ETCD_DELETE = 1 };
struct mp_etcd_event {
	enum mp_etcd_ev_type type;
	struct mp_etcd_kv kv;   /* borrowed for the callback's duration */
};
struct mp_etcd_watch;
typedef void (*mp_etcd_watch_cb)(const struct mp_etcd_event *ev, size_t n,
				 int64_t rev, int resync, void *arg);
int mp_etcd_watch_start(struct mp_etcd *e, const char *prefix, int64_t start_rev,
			mp_etcd_watch_cb cb, void *arg, struct mp_etcd_watch **w_r);
/* Stops (cancels the call), joins the thread. Safe on NULL. */
void mp_etcd_watch_stop(struct mp_etcd_watch **w);

#endif
