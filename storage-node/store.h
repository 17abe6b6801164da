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
	uint64_t log_retain;        /* log records kept per shard */
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

#endif
