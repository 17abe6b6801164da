/*
 * store_int: what store.c (RocksDB, commit thread, overlay) shares with
 * store_ops.c (the MailStore semantics). Not for use outside storage-node.
 */
#ifndef STORE_INT_H
#define STORE_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <rocksdb/c.h>

#include "mp_arena.h"
#include "mp_error.h"
#include "store.h"
#include "store_keys.h"
#include "mailstore.pb-c.h"
#include "records.pb-c.h"

enum { CF_META = 0, CF_BLOB = 1, CF_LOG = 2, CF_COUNT = 3 };
enum op_kind { OP_PUT, OP_DEL, OP_RANGE };

#define MAILBOX_NAME_MAX 255
#define MAILBOX_DEPTH_MAX 32
#define MAILBOXES_MAX 10000      /* per user */
#define FLAGS_MAX 128            /* per message */
#define FLAG_LEN_MAX 64
#define LIST_DEFAULT 1000
#define LIST_MAX 10000
#define BODY_CHUNK_MAX (4u * 1024 * 1024)
#define GROUP_MAX_MUTATIONS 256
#define GROUP_MAX_BYTES (64u * 1024 * 1024)
/* The log is trimmed when at least this many records can go: one RocksDB
 * range tombstone per step, not per group (many tombstones slow reads). */
#define LOG_TRIM_STEP 256

struct op {
	uint8_t cf;
	uint8_t kind;   /* enum op_kind */
	char *key;      /* owned */
	size_t klen;
	char *val;      /* owned; for OP_RANGE the end key */
	size_t vlen;
};

struct opvec {
	struct op **v;  /* owned, each op boxed and owned */
	size_t n, cap;
	size_t bytes;
};

struct ovl_entry {
	uint64_t hash;
	struct op *op;  /* borrowed from a mutation's opvec; NULL = not overlaid */
	uint8_t cf;
	const char *key; /* borrowed (the first op that used the slot) */
	size_t klen;
};

/* Writes of the current group not yet committed, for point reads. Range
 * deletes are not visible here: they are only used on a user's own keys,
 * which no other mutation of the group touches, and a mutation never reads
 * what it has range-deleted. */
struct overlay {
	struct ovl_entry *e; /* owned */
	size_t cap, n;
};

struct event {
	const char *user; /* arena */
	int kind;
	uint32_t mbid;
	uint64_t modseq;
};

struct pm;  /* a pending mutation (store.c) */

/* A reader: a snapshot for reads, or the commit thread's view (DB plus the
 * group's overlay) for mutations. */
struct rd {
	struct store *st;
	struct mp_arena *arena;
	rocksdb_readoptions_t *ro;   /* borrowed */
	const rocksdb_snapshot_t *snap; /* borrowed; NULL in mutations */
	struct pm *pm;               /* non-NULL inside a mutation */
};

struct store {
	rocksdb_t *db;
	rocksdb_column_family_handle_t *cf[CF_COUNT];
	rocksdb_options_t *opts;
	rocksdb_options_t *cf_opts[CF_COUNT];
	rocksdb_block_based_table_options_t *bbto;
	rocksdb_cache_t *cache;
	rocksdb_writeoptions_t *wo_sync;
	rocksdb_readoptions_t *ro_latest;
	struct store_opts o;
	char *data_dir;   /* owned */
	char *node_id;    /* owned */
	uint64_t *epoch;  /* owned, per shard: current epoch (commit thread) */
	uint64_t *lsn;    /* owned, per shard: last lsn written (commit thread) */
	uint64_t *trimmed;/* owned, per shard: log trimmed below this lsn */
	/* Per shard (role_mu): the highest lsn every in-sync member holds, as
	 * the leader knows it, and the epoch that said so. Log trimming keeps
	 * log_retain records below it (store.c, batch_applied). */
	uint64_t *in_sync;      /* owned */
	uint64_t *in_sync_epoch;/* owned */
	bool cluster;     /* only led shards serve the API */
	pthread_mutex_t role_mu;
	uint8_t *role;    /* owned, per shard: enum store_role (role_mu) */
	uint64_t *role_epoch; /* owned, per shard: epoch of the role (role_mu) */
	/* Per shard: held by whoever changes the shard's lsn/epoch counters
	 * (the commit thread for a group, a follower's apply). */
	pthread_mutex_t *shard_mu; /* owned */
	bool shard_mu_init;
	char (*leader)[STORE_NODE_ID_MAX + 1]; /* owned, per shard (role_mu) */
	store_replicate_fn replicate;
	void *replicate_arg;

	pthread_t thread;
	bool thread_started;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct pm *q_head, *q_tail;  /* queue, guarded by mu */
	uint32_t q_len;
	bool closing;
	int fail_writes;             /* guarded by mu */
	bool broken;                 /* a write failed: refuse writes (commit thread) */

	store_notify_cb notify;
	void *notify_arg;

	struct overlay ovl;          /* commit thread only */
	struct store_stats stats;    /* guarded by mu */
};

/* ---- store.c, for store_ops.c */
int rd_get(struct rd *r, int cf, const struct sk *k, char **val_r, size_t *len_r);
int rd_unpack(struct rd *r, const ProtobufCMessageDescriptor *d, const char *v,
	      size_t len, void *msg_r);
int rd_get_msg(struct rd *r, const struct sk *k, const ProtobufCMessageDescriptor *d,
	       void *msg_r);
/* Iterator over [prefix, sk_upper(prefix)) or [from, upper). */
struct it {
	rocksdb_iterator_t *it;
	rocksdb_readoptions_t *ro;
	struct sk lower, upper;
};
void it_open(struct rd *r, int cf, const struct sk *from, const struct sk *upper,
	     struct it *it);
bool it_valid(struct it *it);
void it_next(struct it *it);
const char *it_key(struct it *it, size_t *len);
const char *it_val(struct it *it, size_t *len);
int it_close(struct it *it);  /* MP_EIO if the iteration failed */

int txn_put_raw(struct pm *pm, int cf, const struct sk *k, const void *v, size_t vlen);
int txn_put_msg(struct pm *pm, const struct sk *k, const ProtobufCMessage *m);
int txn_del(struct pm *pm, int cf, const struct sk *k);
int txn_del_prefix(struct pm *pm, int cf, const struct sk *prefix);
int txn_event(struct pm *pm, const char *user, int kind, uint32_t mbid, uint64_t modseq);
struct mp_arena *pm_arena(struct pm *pm);
const char *pm_errf(struct pm *pm, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
const char *arena_errf(struct mp_arena *a, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
ProtobufCAllocator *arena_allocator(struct mp_arena *a, ProtobufCAllocator *al);

/* ---- store_ops.c, for store.c */
/* Conflict keys and shard of a mutation, computed on the caller's thread.
 * 0, or MP_E* with a message: the request is refused without queueing. */
int ops_prepare(struct store *st, enum store_op op, const ProtobufCMessage *req,
		struct mp_arena *a, char ***keys_r, size_t *nkeys_r,
		uint32_t *shard_r, const char **errmsg_r);
bool ops_is_mutation(enum store_op op, const ProtobufCMessage *req);
int ops_mutate(struct rd *r, enum store_op op, const ProtobufCMessage *req,
	       ProtobufCMessage **reply_r, const char **errmsg_r);
int ops_read(struct rd *r, enum store_op op, const ProtobufCMessage *req,
	     ProtobufCMessage **reply_r, const char **errmsg_r);
/* Idempotent retries: the request's request_id (NULL when empty), the reply
 * a write with that id got (MP_ENOENT when none is remembered), and
 * remembering a reply (with expiry of old ones) inside the mutation. */
const char *ops_request_id(const ProtobufCMessage *req);
int ops_dedup_lookup(struct rd *r, uint32_t shard, enum store_op op, const char *rid,
		     ProtobufCMessage **reply_r);
int ops_dedup_remember(struct rd *r, uint32_t shard, const char *rid,
		       const ProtobufCMessage *reply);

#endif
