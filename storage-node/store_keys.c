/*
 * store_keys: builds keys. Bounded by construction: inputs were checked
 * against MP_USER_MAX and the mailbox name limit before they get here; an
 * overlong key is truncated and asserted in debug builds, never overflowed.
 */
#include "store_keys.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

void sk_bytes(struct sk *k, const void *p, size_t n)
{
	assert(k->len + n <= SK_MAX);
	if (k->len + n > SK_MAX)
		n = SK_MAX - k->len;
	memcpy(k->b + k->len, p, n);
	k->len += n;
}

void sk_str(struct sk *k, const char *s)
{
	sk_bytes(k, s, strlen(s));
}

void sk_user(struct sk *k, const char *user)
{
	sk_bytes(k, user, strlen(user) + 1);
}

void sk_be32(struct sk *k, uint32_t v)
{
	unsigned char b[4] = { v >> 24, v >> 16, v >> 8, v };
	sk_bytes(k, b, 4);
}

void sk_be64(struct sk *k, uint64_t v)
{
	sk_be32(k, (uint32_t)(v >> 32));
	sk_be32(k, (uint32_t)v);
}

void sk_shard(struct sk *k, uint32_t shard)
{
	char b[16];
	int n = snprintf(b, sizeof(b), "s%04x/", shard & 0xffff);
	k->len = 0;
	sk_bytes(k, b, (size_t)n);
}

void sk_prefix(struct sk *k, uint32_t shard, char tag)
{
	char t[2] = { tag, '/' };
	sk_shard(k, shard);
	sk_bytes(k, t, 2);
}

void sk_account(struct sk *k, uint32_t shard, const char *user)
{
	sk_prefix(k, shard, 'u');
	sk_str(k, user);
}

void sk_mailbox_user(struct sk *k, uint32_t shard, const char *user)
{
	sk_prefix(k, shard, 'm');
	sk_user(k, user);
}

void sk_mailbox(struct sk *k, uint32_t shard, const char *user, uint32_t mbid)
{
	sk_mailbox_user(k, shard, user);
	sk_be32(k, mbid);
}

void sk_name_user(struct sk *k, uint32_t shard, const char *user)
{
	sk_prefix(k, shard, 'n');
	sk_user(k, user);
}

void sk_name(struct sk *k, uint32_t shard, const char *user, const char *name)
{
	sk_name_user(k, shard, user);
	sk_str(k, name);
}

void sk_index_mb(struct sk *k, uint32_t shard, const char *user, uint32_t mbid)
{
	sk_prefix(k, shard, 'i');
	sk_user(k, user);
	sk_be32(k, mbid);
}

void sk_index(struct sk *k, uint32_t shard, const char *user, uint32_t mbid, uint32_t uid)
{
	sk_index_mb(k, shard, user, mbid);
	sk_be32(k, uid);
}

void sk_change_mb(struct sk *k, uint32_t shard, const char *user, uint32_t mbid)
{
	sk_prefix(k, shard, 'c');
	sk_user(k, user);
	sk_be32(k, mbid);
}

void sk_change(struct sk *k, uint32_t shard, const char *user, uint32_t mbid,
	       uint64_t modseq, uint32_t uid)
{
	sk_change_mb(k, shard, user, mbid);
	sk_be64(k, modseq);
	sk_be32(k, uid);
}

void sk_ref(struct sk *k, uint32_t shard, const uint8_t sha[32])
{
	sk_prefix(k, shard, 'r');
	sk_bytes(k, sha, 32);
}

void sk_blob(struct sk *k, uint32_t shard, const uint8_t sha[32])
{
	sk_prefix(k, shard, 'b');
	sk_bytes(k, sha, 32);
}

void sk_applied(struct sk *k, uint32_t shard)
{
	sk_shard(k, shard);
	sk_str(k, "L");
}

void sk_domain_prefix(struct sk *k)
{
	sk_prefix(k, 0, 'd');
}

void sk_domain(struct sk *k, const char *domain)
{
	sk_domain_prefix(k);
	sk_str(k, domain);
}

void sk_log(struct sk *k, uint32_t shard, uint64_t lsn)
{
	sk_shard(k, shard);
	sk_be64(k, lsn);
}

void sk_upper(struct sk *upper, const struct sk *prefix)
{
	*upper = *prefix;
	/* Drop trailing 0xff bytes, then increment the last one. A prefix of
	 * only 0xff bytes never occurs (every key starts with 's'). */
	while (upper->len > 0 && (unsigned char)upper->b[upper->len - 1] == 0xff)
		upper->len--;
	if (upper->len > 0)
		upper->b[upper->len - 1] = (char)((unsigned char)upper->b[upper->len - 1] + 1);
}

void sk_alias_prefix(struct sk *k, uint32_t shard)
{
	sk_prefix(k, shard, 'a');
}

void sk_alias(struct sk *k, uint32_t shard, const char *alias)
{
	sk_alias_prefix(k, shard);
	sk_str(k, alias);
}

void sk_queue_due_prefix(struct sk *k, uint32_t shard)
{
	sk_prefix(k, shard, 'q');
}

void sk_queue_due(struct sk *k, uint32_t shard, uint64_t due, const char *id)
{
	sk_queue_due_prefix(k, shard);
	sk_be64(k, due);
	sk_str(k, id);
}

void sk_queue_id_prefix(struct sk *k, uint32_t shard)
{
	sk_prefix(k, shard, 'Q');
}

void sk_queue_id(struct sk *k, uint32_t shard, const char *id)
{
	sk_queue_id_prefix(k, shard);
	sk_str(k, id);
}

void sk_queue_body(struct sk *k, uint32_t shard, const char *id)
{
	sk_shard(k, shard);
	sk_str(k, "qb/");
	sk_str(k, id);
}

void sk_maildrop_lock(struct sk *k, uint32_t shard, const char *user)
{
	sk_prefix(k, shard, 'l');
	sk_str(k, user);
}
