/*
 * mp_shardmap: the cluster's records in etcd (docs/DESIGN.md "Cluster"):
 * their one-line "key=value ..." text form, parsed strictly and formatted,
 * and an in-memory shard map that routing, nodes and merpatictl share.
 *
 *   config      shards=64 rf=3 min_isr=2
 *   nodes/{id}  addr=127.0.0.1:7001 state=active
 *   shards/{n}  epoch=7 leader=n2 replicas=n2,n1,n3 isr=n2,n1
 *
 * Parsing is pure and bounded (MP_SHARDREC_MAX_LEN bytes, MP_REPLICAS_MAX
 * replicas, node ids of [A-Za-z0-9_.-]{1,MP_NODE_ID_MAX}); unknown keys,
 * duplicates, missing keys, an isr that is not a subset of replicas or does
 * not contain the leader, a leader not first in replicas: all MP_EINVAL
 * with a static message.
 *
 * The text form, exactly (anything else is MP_EINVAL):
 * - words "key=value" separated by exactly one space, no leading or
 *   trailing space, no other whitespace (no tab, CR or newline), no NUL;
 * - every key of the kind exactly once, in any order (format writes the
 *   order shown above);
 * - numbers are canonical decimals: "0" or [1-9][0-9]*, no sign, no leading
 *   zeros, checked digit by digit against their range (no overflow);
 *   ranges: shards 1..65536, rf 1..MP_REPLICAS_MAX, min_isr 1..rf,
 *   epoch 1..2^64-1;
 * - addr is host:port, at most MP_ADDR_MAX bytes: host a name or IPv4 of
 *   [A-Za-z0-9.-]+ or a bracketed IPv6 literal [[0-9A-Fa-f:.]+], port a
 *   canonical decimal 1..65535;
 *   state is active or draining;
 * - replicas and isr are comma-separated node ids, no empty element, no
 *   duplicate, 1..MP_REPLICAS_MAX of them; isr in any order.
 * Parsers fill their output only on success (a failed parse changes
 * nothing), zeroing it first so two equal records compare equal bytewise.
 *
 * Never: accept a record that format would not write back equivalently;
 * read past len; allocate while parsing.
 */
#ifndef MP_SHARDMAP_H
#define MP_SHARDMAP_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define MP_SHARDREC_MAX_LEN 1024
#define MP_REPLICAS_MAX 7
#define MP_NODE_ID_MAX 63
#define MP_ADDR_MAX 255

struct mp_cluster_config {
	uint32_t shards;     /* 1..65536 */
	uint32_t rf;         /* 1..MP_REPLICAS_MAX */
	uint32_t min_isr;    /* 1..rf */
};

enum mp_node_state { MP_NODE_ACTIVE = 0, MP_NODE_DRAINING = 1 };

struct mp_node_rec {
	char addr[MP_ADDR_MAX + 1];
	enum mp_node_state state;
};

struct mp_shard_rec {
	uint64_t epoch;                              /* >= 1 */
	char leader[MP_NODE_ID_MAX + 1];             /* == replicas[0] */
	char replicas[MP_REPLICAS_MAX][MP_NODE_ID_MAX + 1];
	size_t n_replicas;                           /* >= 1 */
	char isr[MP_REPLICAS_MAX][MP_NODE_ID_MAX + 1];
	size_t n_isr;                                /* >= 1, contains leader */
};

/* Parsers: 0, or MP_EINVAL with a static *error_r (error_r may be NULL). */
int mp_config_rec_parse(const char *s, size_t len, struct mp_cluster_config *c,
			const char **error_r);
/* Formatters write the text into out (size outlen, NUL-terminated); return
 * its length (without the NUL), MP_ENOSPC when it does not fit, or
 * MP_EINVAL when the record itself is not valid (nothing parse would
 * accept is ever written). */
int mp_config_rec_format(const struct mp_cluster_config *c, char *out, size_t outlen);

int mp_node_rec_parse(const char *s, size_t len, struct mp_node_rec *n,
		      const char **error_r);
int mp_node_rec_format(const struct mp_node_rec *n, char *out, size_t outlen);

int mp_shard_rec_parse(const char *s, size_t len, struct mp_shard_rec *r,
		       const char **error_r);
int mp_shard_rec_format(const struct mp_shard_rec *r, char *out, size_t outlen);
/* Validates the invariants listed above (used by parse and before format). */
int mp_shard_rec_check(const struct mp_shard_rec *r, const char **error_r);
/* Booleans: 1 or 0. */
int mp_node_id_valid(const char *id);
int mp_shard_rec_has_replica(const struct mp_shard_rec *r, const char *id);
int mp_shard_rec_in_isr(const struct mp_shard_rec *r, const char *id);

/* "shards/17" -> 17. MP_EINVAL unless the key is exactly that form with a
 * canonical decimal (no leading zeros) below nshards (so always when
 * nshards is 0). *shard_r is set only on success. */
int mp_shard_key_parse(const char *key, uint32_t nshards, uint32_t *shard_r);

/* A shard map: config, nodes and shard records with their etcd
 * mod_revisions, guarded by its own lock. Readers copy what they need
 * under the lock (mp_shardmap_leader) rather than hold pointers. */
struct mp_shardmap_node {
	char id[MP_NODE_ID_MAX + 1];
	struct mp_node_rec rec;
};

struct mp_shardmap {
	pthread_mutex_t mu;
	struct mp_cluster_config config;  /* shards == 0: unknown yet */
	struct mp_shard_rec *shards;      /* owned, config.shards entries */
	int64_t *shard_mod_rev;           /* owned; 0 = no record */
	struct mp_shardmap_node *nodes;   /* owned */
	size_t n_nodes, cap_nodes;
	int64_t revision;                 /* etcd revision the map reflects */
};

/* free releases everything and destroys the lock: call it once per init. */
void mp_shardmap_init(struct mp_shardmap *m);
void mp_shardmap_free(struct mp_shardmap *m);
/* Set the config (allocates the shard table on first call; a different
 * shard count later is MP_EINVAL). MP_EINVAL for out-of-range values,
 * MP_ENOMEM. */
int mp_shardmap_set_config(struct mp_shardmap *m, const struct mp_cluster_config *c);
/* Unconditional: MP_EINVAL when the shard is out of range (or the config
 * is unknown), the record fails mp_shard_rec_check, or mod_rev < 1. */
int mp_shardmap_set_shard(struct mp_shardmap *m, uint32_t shard,
			  const struct mp_shard_rec *r, int64_t mod_rev);
/* What etcd answered about a shard: r with its mod_rev, or r == NULL for
 * "no record at revision mod_rev". Applied only when the map does not
 * already hold a newer record, because a direct read can race the watch
 * that applied something later. 1 when the map changed, 0 when not,
 * MP_EINVAL as set_shard. (Added for mp_route's refresh.) */
int mp_shardmap_offer_shard(struct mp_shardmap *m, uint32_t shard,
			    const struct mp_shard_rec *r, int64_t mod_rev);
void mp_shardmap_clear_shard(struct mp_shardmap *m, uint32_t shard);
/* Insert or replace. MP_EINVAL for a bad id or record, MP_ENOMEM. */
int mp_shardmap_set_node(struct mp_shardmap *m, const char *id,
			 const struct mp_node_rec *n);
void mp_shardmap_del_node(struct mp_shardmap *m, const char *id);
/* Copy the leader's id, address and epoch of a shard (outputs may be NULL;
 * id_out holds MP_NODE_ID_MAX + 1, addr_out MP_ADDR_MAX + 1). MP_ENOENT
 * when the shard has no record (or is out of range, or the config is
 * unknown) or its leader has no live node record. */
int mp_shardmap_leader(struct mp_shardmap *m, uint32_t shard, char *id_out,
		       char *addr_out, uint64_t *epoch_r);
/* Copy a shard's record and mod_revision. MP_ENOENT when none. */
int mp_shardmap_get_shard(struct mp_shardmap *m, uint32_t shard,
			  struct mp_shard_rec *r, int64_t *mod_rev_r);
/* Address of a live node; MP_ENOENT when unknown. */
int mp_shardmap_node_addr(struct mp_shardmap *m, const char *id, char *addr_out);

#endif
