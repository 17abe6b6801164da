/*
 * store: a storage node's mail store on RocksDB.
 *
 * One RocksDB per node, column families meta, blob (blob files, zstd) and
 * log; every key of a shard under "s%04x/" (layout in store_keys.h and
 * DESIGN.md). Implements the semantics of the MailStore API: the request and
 * reply types are the protobuf-c messages of proto/mailstore.proto.
 *
 * The write path: every mutation runs on the one commit thread, reads through
 * an overlay of the writes not yet committed, and emits operations; the
 * mutations of a group are written as ONE WriteBatch with sync, each with a
 * log record (epoch, lsn) of its shard in the same batch — the single path
 * that replication ships and recovery replays. Only after the sync does any
 * caller get an answer, and only then are the writes visible to readers
 * (RocksDB publishes a synced batch after its WAL sync). A mutation that fails
 * validation emits nothing.
 *
 * Reads run on the caller's thread against a snapshot.
 *
 * Never: answer a write before it is durable; reuse a UID within a
 * uidvalidity; let a modseq or uidnext go back.
 */
#ifndef STORE_H
#define STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <protobuf-c/protobuf-c.h>

#include "mp_arena.h"

struct store;

struct store_opts {
	const char *data_dir;
	const char *node_id;
	uint32_t shards;            /* fixed when the data dir is created */
	uint64_t max_message_size;  /* bytes */
	uint64_t log_retain;        /* log records kept below the in-sync lsn */
	uint32_t max_pending;       /* queued mutations before UNAVAILABLE */
	uint64_t block_cache;       /* bytes */
};

/* Every MailStore method the store serves. */
enum store_op {
	STORE_CREATE_DOMAIN, STORE_DELETE_DOMAIN, STORE_GET_DOMAIN, STORE_LIST_DOMAINS,
	STORE_CREATE_ACCOUNT, STORE_DELETE_ACCOUNT, STORE_GET_ACCOUNT, STORE_LIST_ACCOUNTS,
	STORE_SET_PASSWORD, STORE_SET_QUOTA, STORE_SET_STATE,
	STORE_CREATE_MAILBOX, STORE_DELETE_MAILBOX, STORE_RENAME_MAILBOX,
	STORE_LIST_MAILBOXES, STORE_SUBSCRIBE, STORE_STATUS,
	STORE_APPEND, STORE_APPEND_MANY, STORE_FETCH_INDEX, STORE_FETCH_BODY,
	STORE_STORE_FLAGS, STORE_COPY, STORE_MOVE, STORE_EXPUNGE,
	STORE_CHANGES_SINCE, STORE_NODE_INFO,
	/* Aliases (shard of the alias address) and the outbound queue (the
	 * shard named in the request). Appended so older values keep their
	 * numbers (the store_request fuzz corpus picks ops by number). */
	STORE_SET_ALIAS, STORE_DELETE_ALIAS, STORE_GET_ALIAS, STORE_LIST_ALIASES,
	STORE_RESOLVE_RECIPIENT,
	STORE_QUEUE_ADD, STORE_QUEUE_CLAIM, STORE_QUEUE_UPDATE, STORE_QUEUE_LIST,
	STORE_QUEUE_GET, STORE_QUEUE_DELETE, STORE_QUEUE_RETRY,
	/* The POP3 maildrop lock (the account's shard). */
	STORE_MAILDROP_LOCK,
	STORE_OP_COUNT
};

/* The answer to one call. reply lives in arena (freed by the store right
 * after the callback returns); errmsg is for people. err is 0 or MP_E*. */
typedef void (*store_done_cb)(int err, const char *errmsg,
			      const ProtobufCMessage *reply, void *arg);

int store_open(const struct store_opts *opts, struct store **st_r,
	       char **error_r);
/* Finishes queued mutations, stops the commit thread, closes. Safe twice. */
void store_close(struct store **st);

/* Run one MailStore call. Reads complete before this returns (cb runs on
 * the caller's thread); mutations are queued and cb runs on the commit
 * thread after the group is durable. req is borrowed until cb has run.
 * Returns 0 when cb will run (or has run), or MP_E* when it never will
 * (unknown op, queue full: MP_EUNAVAIL, store closing). */
int store_call(struct store *st, enum store_op op, const ProtobufCMessage *req,
	       store_done_cb cb, void *arg);

/* Change notifications, delivered on the commit thread after each durable
 * group: one call per (user, mailbox) changed. kind is a
 * merpati.v1.WatchKind value. The hook must not block. */
typedef void (*store_notify_cb)(const char *user, int kind, uint32_t mailbox_id,
				uint64_t highestmodseq, void *arg);
void store_set_notify(struct store *st, store_notify_cb cb, void *arg);

struct store_stats {
	uint64_t groups, mutations, deferred;
};
void store_get_stats(struct store *st, struct store_stats *s);

/* Fault injection for tests: the next n group writes fail as if the disk
 * had refused them. */
void store_debug_fail_writes(struct store *st, int n);
/* Tests: reference count of a body (by sha256) in a shard; -1 if absent
 * (and the body must be gone too: MP_EIO if the two disagree). */
int64_t store_debug_refcount(struct store *st, uint32_t shard,
			     const uint8_t sha[32]);
uint32_t store_shard_count(const struct store *st);

/* ------------------------------------------------------------ cluster
 * Used by replication/: roles, the replication hook on the leader's write
 * path, applying replicated records on a follower, reading the log. */

#define STORE_NODE_ID_MAX 63

enum store_role { STORE_ROLE_NONE = 0, STORE_ROLE_FOLLOWER = 1, STORE_ROLE_LEADER = 2 };

/* In cluster mode a shard serves MailStore calls only while this node
 * leads it (MP_ENOTLEADER otherwise, naming the leader). Off: one node
 * holds and leads every shard. */
void store_set_cluster(struct store *st, bool on);
/* The shard's role and epoch as the shard map says; epochs only grow. */
void store_set_role(struct store *st, uint32_t shard, enum store_role role,
		    uint64_t epoch, const char *leader_id);
/* Where a shard is: role, epoch, last applied lsn (committed to disk). */
void store_get_pos(struct store *st, uint32_t shard, enum store_role *role_r,
		   uint64_t *epoch_r, uint64_t *lsn_r);

/* A record of the leader's current group, packed merpati.rec.LogRecord. */
struct store_rec {
	uint32_t shard;
	uint64_t epoch;
	uint64_t lsn;
	const uint8_t *data;
	size_t len;
};
enum store_repl_result {
	STORE_REPL_OK = 0,        /* every in-sync member persisted it */
	STORE_REPL_FENCED = 1,    /* this node is not the leader any more: do not write */
	STORE_REPL_UNDER_MIN = 2, /* persisted by fewer than min_isr: write, answer an error */
	STORE_REPL_REFUSED = 3,   /* not sent (in-sync set below min_isr): do not write */
};
/* Called on the commit thread with the group's records sorted by (shard,
 * lsn), before the local write; blocks until it can fill result[i] (an enum
 * store_repl_result) for every record. Records of one shard share a result. */
typedef void (*store_replicate_fn)(void *arg, const struct store_rec *recs, size_t n,
				   int *result);
void store_set_replicator(struct store *st, store_replicate_fn fn, void *arg);

/* Follower: apply packed LogRecords of one shard, in lsn order, through the
 * commit queue (group commit). cb runs after the write is durable with the
 * shard's epoch and last lsn. Errors: MP_ESTATE fenced (epoch below the
 * shard's, or this node leads it), MP_ESTALE a gap (last_lsn says where the
 * shard is), MP_EINVAL a malformed record. Records at or below the last lsn
 * are skipped as duplicates. recs are borrowed until cb has run. */
typedef void (*store_apply_cb)(int err, const char *errmsg, uint64_t epoch,
			       uint64_t last_lsn, void *arg);
int store_apply(struct store *st, uint32_t shard, uint64_t epoch,
		const ProtobufCBinaryData *recs, size_t n, store_apply_cb cb, void *arg);

/* Run fn on the commit thread between groups: no group is being computed,
 * replicated or written while it runs, and lsn[shard] is every shard's last
 * written lsn. For decisions that must not race a write (adding a replica
 * to the in-sync set). fn may block briefly. 0, or MP_EUNAVAIL if closing. */
typedef void (*store_exclusive_fn)(void *arg, const uint64_t *lsn);
int store_run_exclusive(struct store *st, store_exclusive_fn fn, void *arg);

/* Leader: packed records of a shard from from_lsn on, at most max_bytes
 * (at least one record). Each record malloc'd; free with store_log_free.
 * MP_ESTALE when from_lsn is no longer in the log (trimmed). */
struct store_log {
	ProtobufCBinaryData *recs;
	size_t n;
};
int store_read_log(struct store *st, uint32_t shard, uint64_t from_lsn,
		   size_t max_bytes, struct store_log *out);
void store_log_free(struct store_log *l);
/* Snapshot transfer. Leader: every meta and blob key of the shard (the
 * applied position left out) and the log record at the snapshot's lsn,
 * from one RocksDB snapshot, to emit (stop on a negative return); the
 * snapshot's position in *epoch_r, *lsn_r. */
typedef int (*store_snapshot_emit)(void *arg, int cf, const char *key, size_t klen,
				   const char *val, size_t vlen);
int store_snapshot_read(struct store *st, uint32_t shard, store_snapshot_emit emit,
			void *arg, uint64_t *epoch_r, uint64_t *lsn_r);
/* Follower: begin wipes the shard and its position (a crash before end
 * leaves lsn 0, so the next attempt starts over), put adds keys (cf 0..2),
 * end sets the position. Each is one synced write under the shard's lock;
 * refused (MP_ESTATE) while this node leads the shard. */
int store_snapshot_begin(struct store *st, uint32_t shard);
int store_snapshot_put(struct store *st, uint32_t shard, const int *cf,
		       const ProtobufCBinaryData *keys, const ProtobufCBinaryData *vals,
		       size_t n);
int store_snapshot_end(struct store *st, uint32_t shard, uint64_t epoch, uint64_t lsn);

/* SHA-256 over the shard's meta and blob keys and values (a snapshot;
 * the applied-position key left out), its key count and its position. */
int store_shard_digest(struct store *st, uint32_t shard, uint8_t sha[32],
		       uint64_t *keys_r, uint64_t *epoch_r, uint64_t *lsn_r);
/* The epoch of the record at lsn; MP_ENOENT when the log does not hold it. */
int store_log_epoch(struct store *st, uint32_t shard, uint64_t lsn, uint64_t *epoch_r);

/* Log trimming (docs/DESIGN.md "Log trimming"). A shard's in-sync lsn is
 * the highest lsn every in-sync member holds; records more than log_retain
 * below min(in-sync lsn, own lsn) are deleted (256 or more at a time,
 * with the next write). The leader's store advances it itself after each
 * group every in-sync member persisted (STORE_REPL_OK; without a
 * replicator: every group); a follower is told it by its leader with set,
 * which ignores an epoch older than the shard's role epoch or than the one
 * that set it last. 0 (unknown, after a restart) trims nothing. Outside
 * cluster mode the own lsn is the in-sync lsn. */
void store_set_in_sync_lsn(struct store *st, uint32_t shard, uint64_t epoch, uint64_t lsn);
uint64_t store_get_in_sync_lsn(struct store *st, uint32_t shard);

#endif
