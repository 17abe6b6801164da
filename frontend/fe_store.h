/*
 * fe_store: what the frontend asks of the storage cluster, as blocking
 * calls for worker threads (fe_job run functions), over common/mp_route.
 *
 * Domain lookups are cached (positive and negative answers, short TTLs):
 * every RCPT needs one and domains change rarely. Nothing else is cached:
 * accounts, aliases and mail always come from the shard's leader.
 *
 * Thread-safe. Never: run on an event loop; cache an account or password.
 */
#ifndef FE_STORE_H
#define FE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

struct mp_route;
struct fe_store;

struct fe_store_conf {
	uint64_t domain_ttl_ms;      /* cache of "domain is ours"; 0 = 60 s */
	uint64_t domain_neg_ttl_ms;  /* cache of "not ours"; 0 = 10 s */
	int64_t call_timeout_ms;     /* budget of one routed call; 0 = route's */
};

int fe_store_open(struct mp_route *route, const struct fe_store_conf *conf,
		  struct fe_store **s_r);
void fe_store_free(struct fe_store **s);

/* domain: lowercased. 0 with *local_r, or MP_EUNAVAIL/MP_ETIMEDOUT. */
int fe_store_domain_is_local(struct fe_store *s, const char *domain,
			     bool *local_r, char **error_r);

enum fe_rcpt_kind {
	FE_RCPT_NONE,      /* no such user or alias */
	FE_RCPT_ACCOUNT,   /* an active account */
	FE_RCPT_DISABLED,  /* an account that is disabled */
	FE_RCPT_ALIAS,     /* an alias: deliver to its targets */
};

struct fe_rcpt_info {
	enum fe_rcpt_kind kind;
	char **targets;  /* owned, for FE_RCPT_ALIAS */
	size_t ntargets;
};
void fe_rcpt_info_clear(struct fe_rcpt_info *i);

/* user: normalised address. 0 with *info_r filled, or MP_E*. */
int fe_store_resolve(struct fe_store *s, const char *user,
		     struct fe_rcpt_info *info_r, char **error_r);

/* The account's password hash and SCRAM record (either may come back "");
 * MP_ENOENT when there is no such account. Caller frees both. */
int fe_store_get_auth(struct fe_store *s, const char *user, char **hash_r,
		      char **scram_r, bool *active_r, char **error_r);

/* Shard of a normalised user. */
int fe_store_shard_of(struct fe_store *s, const char *user, uint32_t *shard_r);

/* What IMAP needs of a message, made once when it is stored (RFC 3501
 * ENVELOPE and the packed BODYSTRUCTURE of frontend/imap/imap_mime), so
 * no FETCH parses the body again. */
struct fe_msg_meta {
	char *envelope;          /* owned */
	size_t envelope_len;
	uint8_t *bodystructure;  /* owned */
	size_t bodystructure_len;
};
/* Parse body; 0 or MP_ENOMEM (bad mail still parses). */
int fe_msg_meta_make(const void *body, size_t len, struct fe_msg_meta *m);
void fe_msg_meta_clear(struct fe_msg_meta *m);

/* One body to n users of one shard (AppendMany): stored once, one index
 * entry each, all or nothing per user. mailbox NULL = INBOX. meta: the
 * parsed form stored with it (NULL: none; IMAP then parses on FETCH).
 * results[i] is 0 or the MP_E* of users[i]. The call's own error
 * (nothing stored, or outcome unknown after a timeout) is the return
 * value. */
int fe_store_append_many(struct fe_store *s, uint32_t shard,
			 const char *const *users, size_t n, const char *mailbox,
			 const void *body, size_t len, const struct fe_msg_meta *meta,
			 int *results, char **error_r);

struct Merpati__V1__QueueEntry;

/* Put a message for remote recipients into the outbound queue of shard
 * (QueueAdd). entry is borrowed. *id_r malloc'd. */
int fe_store_queue_add(struct fe_store *s, uint32_t shard,
		       const struct Merpati__V1__QueueEntry *entry,
		       const void *body, size_t len, char **id_r,
		       char **error_r);

/* Shards of the cluster (0 while its config is not known yet). */
uint32_t fe_store_shard_count(struct fe_store *s);

/* A routed MailStore call to shard's leader (path "/merpati.v1.MailStore/X"),
 * for callers with requests of their own (the queue runner). */
int fe_store_call(struct fe_store *s, uint32_t shard, const char *path,
		  const ProtobufCMessage *req,
		  const ProtobufCMessageDescriptor *resp_desc,
		  ProtobufCMessage **resp_r, char **error_r);

#endif
