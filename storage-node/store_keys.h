/*
 * store_keys: the key layout of a node's RocksDB (DESIGN.md "Data on a
 * node"). Every key of shard N starts with "s%04x/" so a shard is a prefix;
 * a user name is followed by a NUL so "bob" never prefixes "bobby"; numbers
 * are big-endian so keys sort numerically.
 *
 *   meta s{shard}/u/{user}                          AccountRec
 *   meta s{shard}/m/{user}\0{mbid be32}             MailboxRec
 *   meta s{shard}/n/{user}\0{name}                  mbid be32
 *   meta s{shard}/i/{user}\0{mbid be32}{uid be32}   IndexRec
 *   meta s{shard}/c/{user}\0{mbid be32}{modseq be64}{uid be32}  ChangeRec
 *   meta s{shard}/r/{sha256}                        refcount be64
 *   meta s{shard}/L                                 applied epoch be64, lsn be64
 *   meta s{shard}/V                                 last uidvalidity given, be32
 *   meta s{shard}/x/{request id}                    time be64 + packed reply (retries)
 *   meta s{shard}/X/{time be64}{request id}         expiry index of x/
 *   meta s{shard}/a/{alias}                         AliasRec
 *   meta s{shard}/q/{due be64}{queue id}            QueueRec (due-time index)
 *   meta s{shard}/Q/{queue id}                      due be64 (index by id)
 *   meta s{shard}/l/{user}                          maildrop lock: until be64 + owner
 *   meta s0000/d/{domain}                           DomainRec
 *   blob s{shard}/b/{sha256}                        body
 *   blob s{shard}/qb/{queue id}                     queued message's body
 *   log  s{shard}/{lsn be64}                        LogRecord (epoch inside)
 *
 * The log key holds only the lsn (DESIGN.md says {epoch}/{lsn}): lsn alone
 * orders a shard's log, and a leader must find the record at any lsn to
 * compare its epoch with a follower's (divergence check).
 *
 * Queue ids are "{shard}.{16 hex}" (fixed alphabet, at most 26 bytes), so
 * q/ keys sort by due time, then id. A queued body is not shared (no
 * reference count): it dies with its entry.
 *
 * The maildrop lock (RFC 1939 §8, one POP3 session per account) is one key
 * per account, present only while some session holds or held it: until_ms
 * (the leader's clock) then the owner's bytes, no record type, since it is
 * read and written whole on every acquire.
 *
 * The reference count lives in meta beside the body rather than inside the
 * blob value (DESIGN.md says "body + reference count"): changing a count
 * must not rewrite a 50 MB body.
 */
#ifndef STORE_KEYS_H
#define STORE_KEYS_H

#include <stddef.h>
#include <stdint.h>

#define SK_MAX 600  /* longest key: prefix + user (254) + name (255) + numbers */

struct sk {
	char b[SK_MAX];
	size_t len;
};

void sk_prefix(struct sk *k, uint32_t shard, char tag);   /* "s0001/u/" */
void sk_str(struct sk *k, const char *s);                  /* bytes, no NUL */
void sk_user(struct sk *k, const char *user);              /* user + NUL */
void sk_be32(struct sk *k, uint32_t v);
void sk_be64(struct sk *k, uint64_t v);
void sk_bytes(struct sk *k, const void *p, size_t n);

void sk_account(struct sk *k, uint32_t shard, const char *user);
void sk_mailbox(struct sk *k, uint32_t shard, const char *user, uint32_t mbid);
void sk_mailbox_user(struct sk *k, uint32_t shard, const char *user); /* prefix */
void sk_name(struct sk *k, uint32_t shard, const char *user, const char *name);
void sk_name_user(struct sk *k, uint32_t shard, const char *user);    /* prefix */
void sk_index(struct sk *k, uint32_t shard, const char *user, uint32_t mbid, uint32_t uid);
void sk_index_mb(struct sk *k, uint32_t shard, const char *user, uint32_t mbid); /* prefix */
void sk_change(struct sk *k, uint32_t shard, const char *user, uint32_t mbid,
	       uint64_t modseq, uint32_t uid);
void sk_change_mb(struct sk *k, uint32_t shard, const char *user, uint32_t mbid);
void sk_ref(struct sk *k, uint32_t shard, const uint8_t sha[32]);
void sk_blob(struct sk *k, uint32_t shard, const uint8_t sha[32]);
void sk_applied(struct sk *k, uint32_t shard);
void sk_domain(struct sk *k, const char *domain);
void sk_domain_prefix(struct sk *k);
void sk_log(struct sk *k, uint32_t shard, uint64_t lsn);
void sk_alias(struct sk *k, uint32_t shard, const char *alias);
void sk_alias_prefix(struct sk *k, uint32_t shard);
void sk_queue_due(struct sk *k, uint32_t shard, uint64_t due, const char *id);
void sk_queue_due_prefix(struct sk *k, uint32_t shard);
void sk_queue_id(struct sk *k, uint32_t shard, const char *id);
void sk_queue_id_prefix(struct sk *k, uint32_t shard);
void sk_queue_body(struct sk *k, uint32_t shard, const char *id);
void sk_maildrop_lock(struct sk *k, uint32_t shard, const char *user);
void sk_shard(struct sk *k, uint32_t shard);  /* "s0001/" */

/* The first key after every key that starts with prefix (for upper bounds
 * and range deletes): prefix with its last byte incremented. */
void sk_upper(struct sk *upper, const struct sk *prefix);

#endif
