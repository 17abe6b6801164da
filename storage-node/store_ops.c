/*
 * store_ops: the semantics of every MailStore call on top of store.c's
 * readers and transactions.
 *
 * Each mutation checks everything first and only then emits writes, so a
 * refused request changes nothing (and a failure midway is taken back by
 * store.c anyway). Numbers clients rely on: uidnext and highestmodseq only
 * grow; a new mailbox gets a uidvalidity above every one the user had;
 * a body's reference count is the number of index entries pointing at it
 * within the shard, and the body is deleted with its last reference.
 *
 * An address is an account or an alias, never both: both live under the
 * address's shard and conflict key, and each creation checks the other in
 * the same mutation. Outbound queue entries move in time through their due
 * key (s{shard}/q/{due}{id}); a claim moves the key to the lease's end, so
 * an entry whose runner died is simply due again. A POP3 maildrop lock
 * (s{shard}/l/{user}) is a lease the same way: it needs no sweeper.
 *
 * Never: trust a name, flag or uid set from the request without checking it;
 * read from a user's keys after range-deleting them in the same mutation;
 * let a queue mutation iterate keys another mutation of its group wrote
 * (queue mutations of a shard other than QueueAdd share one conflict key).
 */
#include "store_int.h"

#include <errno.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "mp_buf.h"
#include "mp_log.h"
#include "mp_scram.h"
#include "mp_shard.h"
#include "mp_uidset.h"

#define SHA_LEN 32

typedef Merpati__Rec__AccountRec AccountRec;
typedef Merpati__Rec__MailboxRec MailboxRec;
typedef Merpati__Rec__IndexRec IndexRec;
typedef Merpati__Rec__AliasRec AliasRec;
typedef Merpati__Rec__QueueRec QueueRec;
typedef Merpati__Rec__QueueRcptRec QueueRcptRec;

static const struct {
	const char *name, *special;
} default_mailboxes[] = {
	{ "INBOX", "" },      { "Drafts", "\\Drafts" }, { "Sent", "\\Sent" },
	{ "Trash", "\\Trash" }, { "Junk", "\\Junk" },   { "Archive", "\\Archive" },
};

static const char *special_uses[] = {
	"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash",
};

static const char *system_flags[] = {
	"\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft",
};

#define ALLOC(a, T) ((T *)mp_arena_alloc((a), sizeof(T)))
#define RID_MAX 128          /* longest request id remembered */

static uint64_t now_s(void)
{
	return (uint64_t)time(NULL);
}

/* ------------------------------------------------------------ checks */

static int norm_user(struct mp_arena *a, const char *in, char **out_r,
		     const char **err_r)
{
	char buf[MP_USER_MAX + 1];
	const char *e;
	if (in == NULL || mp_user_normalize(in, strlen(in), buf, sizeof(buf), &e) < 0) {
		*err_r = arena_errf(a, "invalid user: %s", in ? e : "missing");
		return MP_EINVAL;
	}
	*out_r = mp_arena_strdup(a, buf);
	return *out_r ? 0 : MP_ENOMEM;
}

static int norm_domain(struct mp_arena *a, const char *in, char **out_r,
		       const char **err_r)
{
	char buf[MP_DOMAIN_MAX + 1];
	const char *e;
	if (in == NULL || mp_domain_normalize(in, strlen(in), buf, sizeof(buf), &e) < 0) {
		*err_r = arena_errf(a, "invalid domain: %s", in ? e : "missing");
		return MP_EINVAL;
	}
	*out_r = mp_arena_strdup(a, buf);
	return *out_r ? 0 : MP_ENOMEM;
}

/* Valid UTF-8 without overlongs or surrogates. */
static bool utf8_valid(const unsigned char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		unsigned char c = s[i];
		size_t len;
		uint32_t cp;
		if (c < 0x80) {
			i++;
			continue;
		} else if ((c & 0xe0) == 0xc0) {
			len = 2, cp = c & 0x1f;
		} else if ((c & 0xf0) == 0xe0) {
			len = 3, cp = c & 0x0f;
		} else if ((c & 0xf8) == 0xf0) {
			len = 4, cp = c & 0x07;
		} else {
			return false;
		}
		if (i + len > n)
			return false;
		for (size_t j = 1; j < len; j++) {
			if ((s[i + j] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (s[i + j] & 0x3f);
		}
		if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) ||
		    (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += len;
	}
	return true;
}

/* A mailbox name: UTF-8, '/'-separated non-empty components, no control
 * characters, no IMAP wildcards, no "." or ".." components, at most
 * MAILBOX_NAME_MAX bytes and MAILBOX_DEPTH_MAX levels. "INBOX" in any case
 * (alone or as the first component) becomes "INBOX". */
static int norm_mailbox(struct mp_arena *a, const char *in, char **out_r,
			const char **err_r)
{
	if (in == NULL || *in == '\0') {
		*err_r = "mailbox name is empty";
		return MP_EINVAL;
	}
	size_t n = strlen(in);
	if (n > MAILBOX_NAME_MAX) {
		*err_r = arena_errf(a, "mailbox name longer than %d bytes", MAILBOX_NAME_MAX);
		return MP_EINVAL;
	}
	if (!utf8_valid((const unsigned char *)in, n)) {
		*err_r = "mailbox name is not valid UTF-8";
		return MP_EINVAL;
	}
	int depth = 1;
	size_t comp = 0;
	for (size_t i = 0; i <= n; i++) {
		unsigned char c = i < n ? (unsigned char)in[i] : '/';
		if (c < 0x20 || c == 0x7f) {
			*err_r = "mailbox name contains a control character";
			return MP_EINVAL;
		}
		if (c == '*' || c == '%') {
			*err_r = "mailbox name contains '*' or '%'";
			return MP_EINVAL;
		}
		if (c == '/') {
			const char *cs = in + i - comp;
			if (comp == 0) {
				*err_r = "mailbox name has an empty level (leading, trailing or double '/')";
				return MP_EINVAL;
			}
			if ((comp == 1 && cs[0] == '.') ||
			    (comp == 2 && cs[0] == '.' && cs[1] == '.')) {
				*err_r = "mailbox name has a '.' or '..' level";
				return MP_EINVAL;
			}
			if (i < n && ++depth > MAILBOX_DEPTH_MAX) {
				*err_r = "mailbox name has too many levels";
				return MP_EINVAL;
			}
			comp = 0;
		} else {
			comp++;
		}
	}
	char *out = mp_arena_strndup(a, in, n);
	if (out == NULL)
		return MP_ENOMEM;
	if (strncasecmp(out, "INBOX", 5) == 0 && (out[5] == '\0' || out[5] == '/'))
		memcpy(out, "INBOX", 5);
	*out_r = out;
	return 0;
}

static bool is_atom_char(unsigned char c)
{
	/* RFC 3501 §9 ATOM-CHAR, without resp-specials for flag-keyword */
	return c > 0x20 && c < 0x7f && c != '(' && c != ')' && c != '{' &&
	       c != '%' && c != '*' && c != '"' && c != '\\' && c != ']';
}

/* Check and canonicalise a flag list: system flags get their canonical
 * case, keywords are atoms, duplicates (case-insensitive) dropped. \Recent
 * cannot be stored (RFC 3501 §2.3.2). */
static int norm_flags(struct mp_arena *a, char **in, size_t n, char ***out_r,
		      size_t *nout_r, const char **err_r)
{
	if (n > FLAGS_MAX) {
		*err_r = arena_errf(a, "more than %d flags", FLAGS_MAX);
		return MP_EINVAL;
	}
	char **out = mp_arena_alloc(a, (n + 1) * sizeof(*out));
	size_t m = 0;
	if (out == NULL)
		return MP_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		const char *f = in[i];
		size_t len = strlen(f);
		if (len == 0 || len > FLAG_LEN_MAX) {
			*err_r = "flag is empty or too long";
			return MP_EINVAL;
		}
		const char *canon = NULL;
		if (f[0] == '\\') {
			for (size_t j = 0; j < sizeof(system_flags) / sizeof(*system_flags); j++)
				if (strcasecmp(f, system_flags[j]) == 0)
					canon = system_flags[j];
			if (canon == NULL) {
				*err_r = arena_errf(a, "not a storable system flag: %.64s", f);
				return MP_EINVAL;
			}
		} else {
			for (size_t j = 0; j < len; j++)
				if (!is_atom_char((unsigned char)f[j])) {
					*err_r = "flag keyword contains a character not allowed in an atom";
					return MP_EINVAL;
				}
			canon = f;
		}
		bool dup = false;
		for (size_t j = 0; j < m; j++)
			if (strcasecmp(out[j], canon) == 0)
				dup = true;
		if (!dup && (out[m++] = mp_arena_strdup(a, canon)) == NULL)
			return MP_ENOMEM;
	}
	*out_r = out;
	*nout_r = m;
	return 0;
}

static bool has_flag(char **flags, size_t n, const char *f)
{
	for (size_t i = 0; i < n; i++)
		if (strcasecmp(flags[i], f) == 0)
			return true;
	return false;
}

static int check_uidset(struct mp_arena *a, const char *s, struct mp_uidset *set,
			const char **err_r)
{
	const char *e = NULL;
	if (s == NULL || *s == '\0') {
		*err_r = "uid set is empty";
		return MP_EINVAL;
	}
	int r = mp_uidset_parse(s, strlen(s), set, &e);
	if (r < 0) {
		*err_r = arena_errf(a, "bad uid set: %s", e ? e : "invalid");
		return MP_EINVAL;
	}
	return 0;
}

/* ------------------------------------------------------------ records */

static int load_account(struct rd *r, uint32_t shard, const char *user,
			AccountRec **acct_r, const char **err_r)
{
	struct sk k;
	sk_account(&k, shard, user);
	int ret = rd_get_msg(r, &k, &merpati__rec__account_rec__descriptor, acct_r);
	if (ret == MP_ENOENT)
		*err_r = arena_errf(r->arena, "no such user: %s", user);
	return ret;
}

static int lookup_mailbox(struct rd *r, uint32_t shard, const char *user,
			  const char *name, MailboxRec **mb_r, const char **err_r)
{
	struct sk k;
	char *v;
	size_t len;
	sk_name(&k, shard, user, name);
	int ret = rd_get(r, CF_META, &k, &v, &len);
	if (ret == MP_ENOENT) {
		*err_r = arena_errf(r->arena, "no such mailbox: %s", name);
		return ret;
	}
	if (ret < 0)
		return ret;
	if (len != 4)
		return MP_EIO;
	sk_mailbox(&k, shard, user, mp_be32_get(v));
	ret = rd_get_msg(r, &k, &merpati__rec__mailbox_rec__descriptor, mb_r);
	if (ret == MP_ENOENT) {
		mp_log_error("store_dangling_name", "mailbox_id=%u", mp_be32_get(v));
		return MP_EIO;
	}
	return ret;
}

static int save_account(struct pm *pm, uint32_t shard, const AccountRec *a)
{
	struct sk k;
	sk_account(&k, shard, a->user);
	return txn_put_msg(pm, &k, &a->base);
}

static int save_mailbox(struct pm *pm, uint32_t shard, const char *user,
			const MailboxRec *mb)
{
	struct sk k;
	sk_mailbox(&k, shard, user, mb->id);
	return txn_put_msg(pm, &k, &mb->base);
}

static int put_name(struct pm *pm, uint32_t shard, const char *user,
		    const char *name, uint32_t id)
{
	struct sk k;
	char v[4];
	sk_name(&k, shard, user, name);
	mp_be32_put(v, id);
	return txn_put_raw(pm, CF_META, &k, v, 4);
}

static int del_name(struct pm *pm, uint32_t shard, const char *user, const char *name)
{
	struct sk k;
	sk_name(&k, shard, user, name);
	return txn_del(pm, CF_META, &k);
}

/* Reference counts: +delta on the body sha in shard; at 0 the body and its
 * count are deleted. A new body (count 0 -> n) stores data. */
static int ref_change(struct rd *r, uint32_t shard, const uint8_t *sha,
		      int64_t delta, const void *body, size_t blen)
{
	struct sk rk, bk;
	char *v;
	size_t len;
	uint64_t count = 0;
	sk_ref(&rk, shard, sha);
	sk_blob(&bk, shard, sha);
	int ret = rd_get(r, CF_META, &rk, &v, &len);
	if (ret == 0) {
		if (len != 8)
			return MP_EIO;
		count = mp_be64_get(v);
	} else if (ret != MP_ENOENT) {
		return ret;
	}
	if (delta < 0 && count < (uint64_t)-delta) {
		mp_log_error("store_refcount_underflow", "count=%llu delta=%lld",
			     (unsigned long long)count, (long long)delta);
		return MP_EIO;
	}
	uint64_t ncount = count + (uint64_t)delta;
	if (ncount == 0) {
		if ((ret = txn_del(r->pm, CF_META, &rk)) < 0)
			return ret;
		return txn_del(r->pm, CF_BLOB, &bk);
	}
	if (count == 0) {
		if (body == NULL)
			return MP_EIO;
		if ((ret = txn_put_raw(r->pm, CF_BLOB, &bk, body, blen)) < 0)
			return ret;
	}
	char c[8];
	mp_be64_put(c, ncount);
	return txn_put_raw(r->pm, CF_META, &rk, c, 8);
}

static int put_change(struct pm *pm, uint32_t shard, const char *user, uint32_t mbid,
		      uint64_t old_modseq, uint64_t modseq, uint32_t uid, int kind)
{
	struct sk k;
	int ret;
	if (old_modseq != 0) {
		sk_change(&k, shard, user, mbid, old_modseq, uid);
		if ((ret = txn_del(pm, CF_META, &k)) < 0)
			return ret;
	}
	Merpati__Rec__ChangeRec c = MERPATI__REC__CHANGE_REC__INIT;
	c.uid = uid;
	c.kind = (uint32_t)kind;
	sk_change(&k, shard, user, mbid, modseq, uid);
	return txn_put_msg(pm, &k, &c.base);
}

static int new_mailbox(struct rd *r, uint32_t shard, AccountRec *acct,
		       const char *name, const char *special, MailboxRec **mb_r)
{
	MailboxRec *mb = ALLOC(r->arena, MailboxRec);
	if (mb == NULL)
		return MP_ENOMEM;
	merpati__rec__mailbox_rec__init(mb);
	if (acct->next_mailbox_id == 0)
		acct->next_mailbox_id = 1;
	mb->id = acct->next_mailbox_id++;
	/* uidvalidity: above every value this user has had and every value
	 * handed out in the shard (kept at s{shard}/V), so a deleted and
	 * re-created account or mailbox never repeats one (RFC 3501 §2.3.1.1),
	 * and near the clock. The shard key is shared by users: the group's
	 * overlay serialises it. */
	struct sk vk;
	char *vv;
	size_t vl;
	uint32_t last = acct->last_uidvalidity;
	sk_shard(&vk, shard);
	sk_str(&vk, "V");
	int gr = rd_get(r, CF_META, &vk, &vv, &vl);
	if (gr == 0 && vl == 4 && mp_be32_get(vv) > last)
		last = mp_be32_get(vv);
	else if (gr < 0 && gr != MP_ENOENT)
		return gr;
	uint32_t uv = (uint32_t)now_s();
	if (uv <= last)
		uv = last + 1;
	acct->last_uidvalidity = uv;
	char vb[4];
	mp_be32_put(vb, uv);
	int pr = txn_put_raw(r->pm, CF_META, &vk, vb, 4);
	if (pr < 0)
		return pr;
	mb->uidvalidity = uv;
	mb->uidnext = 1;
	mb->highestmodseq = 1;
	mb->recent_uid = 1;
	mb->subscribed = true;
	mb->name = (char *)name;
	mb->special_use = (char *)special;
	int ret = save_mailbox(r->pm, shard, acct->user, mb);
	if (ret == 0)
		ret = put_name(r->pm, shard, acct->user, name, mb->id);
	if (ret == 0)
		ret = txn_event(r->pm, acct->user, MERPATI__V1__WATCH_KIND__WATCH_MAILBOXES,
				mb->id, 0);
	*mb_r = mb;
	return ret;
}

static int max_uid(struct rd *r, uint32_t shard, const char *user, uint32_t mbid,
		   uint32_t *uid_r)
{
	struct sk pre, up;
	sk_index_mb(&pre, shard, user, mbid);
	sk_upper(&up, &pre);
	struct it it;
	it_open(r, CF_META, &pre, &up, &it);
	rocksdb_iter_seek_for_prev(it.it, up.b, up.len);
	*uid_r = 0;
	if (it_valid(&it)) {
		size_t kl;
		const char *k = it_key(&it, &kl);
		if (kl == pre.len + 4 && memcmp(k, pre.b, pre.len) == 0)
			*uid_r = mp_be32_get(k + pre.len);
	}
	return it_close(&it);
}

/* The messages of a uid set that exist, with their index records. */
struct msgs {
	uint32_t *uid;
	IndexRec **rec;
	size_t n;
};

static int scan_uids(struct rd *r, uint32_t shard, const char *user, uint32_t mbid,
		     struct mp_uidset *set, uint64_t changed_since, size_t limit,
		     struct msgs *out, bool *more_r)
{
	uint32_t top;
	int ret = max_uid(r, shard, user, mbid, &top);
	if (ret < 0)
		return ret;
	mp_uidset_resolve(set, top);
	size_t cap = 64;
	out->n = 0;
	out->uid = mp_arena_alloc(r->arena, cap * sizeof(*out->uid));
	out->rec = mp_arena_alloc(r->arena, cap * sizeof(*out->rec));
	if (out->uid == NULL || out->rec == NULL)
		return MP_ENOMEM;
	if (more_r)
		*more_r = false;
	for (size_t i = 0; i < set->n && ret == 0; i++) {
		struct mp_uid_range rg = set->r[i];
		if (rg.lo == 0 || rg.lo > top)
			continue;
		if (rg.hi > top)
			rg.hi = top;
		struct sk from, to;
		sk_index(&from, shard, user, mbid, rg.lo);
		if (rg.hi == UINT32_MAX) {
			sk_index_mb(&to, shard, user, mbid);
			struct sk tmp = to;
			sk_upper(&to, &tmp);
		} else {
			sk_index(&to, shard, user, mbid, rg.hi + 1);
		}
		struct it it;
		it_open(r, CF_META, &from, &to, &it);
		for (; it_valid(&it); it_next(&it)) {
			size_t kl, vl;
			const char *k = it_key(&it, &kl);
			const char *v = it_val(&it, &vl);
			IndexRec *rec;
			if (kl < 4) {
				ret = MP_EIO;
				break;
			}
			if ((ret = rd_unpack(r, &merpati__rec__index_rec__descriptor,
					     v, vl, &rec)) < 0)
				break;
			if (changed_since && rec->modseq <= changed_since)
				continue;
			if (limit && out->n == limit) {
				if (more_r)
					*more_r = true;
				break;
			}
			if (out->n == cap) {
				size_t nc = cap * 2;
				uint32_t *nu = mp_arena_alloc(r->arena, nc * sizeof(*nu));
				IndexRec **nr = mp_arena_alloc(r->arena, nc * sizeof(*nr));
				if (nu == NULL || nr == NULL) {
					ret = MP_ENOMEM;
					break;
				}
				memcpy(nu, out->uid, cap * sizeof(*nu));
				memcpy(nr, out->rec, cap * sizeof(*nr));
				out->uid = nu, out->rec = nr, cap = nc;
			}
			out->uid[out->n] = mp_be32_get(k + kl - 4);
			out->rec[out->n] = rec;
			out->n++;
		}
		int cr = it_close(&it);
		if (ret == 0)
			ret = cr;
		if (more_r && *more_r)
			break;
	}
	return ret;
}

/* ------------------------------------------------------------ prepare */

static const char *ukey(struct mp_arena *a, const char *user)
{
	char buf[MP_USER_MAX + 1];
	const char *e;
	if (user == NULL || mp_user_normalize(user, strlen(user), buf, sizeof(buf), &e) < 0)
		return NULL;
	return mp_arena_strdup(a, buf);
}

static const char *dkey(struct mp_arena *a, const char *domain)
{
	char buf[MP_DOMAIN_MAX + 8];
	const char *e;
	size_t n;
	if (domain == NULL)
		return NULL;
	n = strlen(domain);
	memcpy(buf, "domain:", 7);
	if (n > MP_DOMAIN_MAX ||
	    mp_domain_normalize(domain, n, buf + 7, sizeof(buf) - 7, &e) < 0)
		return NULL;
	return mp_arena_strdup(a, buf);
}

bool ops_is_mutation(enum store_op op, const ProtobufCMessage *req)
{
	switch (op) {
	case STORE_GET_DOMAIN: case STORE_LIST_DOMAINS: case STORE_GET_ACCOUNT:
	case STORE_LIST_ACCOUNTS: case STORE_LIST_MAILBOXES: case STORE_FETCH_INDEX:
	case STORE_FETCH_BODY: case STORE_CHANGES_SINCE: case STORE_NODE_INFO:
	case STORE_GET_ALIAS: case STORE_LIST_ALIASES: case STORE_RESOLVE_RECIPIENT:
	case STORE_QUEUE_LIST: case STORE_QUEUE_GET:
		return false;
	case STORE_STATUS:
		return ((const Merpati__V1__StatusRequest *)req)->claim_recent;
	default:
		return true;
	}
}

/* The user field of every request type that has one is field 1, a string;
 * read it through the descriptor rather than a cast per type. */
static const char *req_user(const ProtobufCMessage *req)
{
	const ProtobufCFieldDescriptor *f =
		protobuf_c_message_descriptor_get_field_by_name(req->descriptor, "user");
	if (f == NULL || f->type != PROTOBUF_C_TYPE_STRING)
		return NULL;
	return *(const char *const *)((const char *)req + f->offset);
}

/* The shard named by a queue or alias-listing request (field "shard"). */
static uint32_t req_shard(const ProtobufCMessage *req)
{
	const ProtobufCFieldDescriptor *f =
		protobuf_c_message_descriptor_get_field_by_name(req->descriptor, "shard");
	if (f == NULL || f->type != PROTOBUF_C_TYPE_UINT32)
		return 0;
	return *(const uint32_t *)(const void *)((const char *)req + f->offset);
}

static bool is_queue_op(enum store_op op)
{
	return op >= STORE_QUEUE_ADD && op <= STORE_QUEUE_RETRY;
}

int ops_prepare(struct store *st, enum store_op op, const ProtobufCMessage *req,
		struct mp_arena *a, char ***keys_r, size_t *nkeys_r,
		uint32_t *shard_r, const char **errmsg_r)
{
	char **keys;
	*shard_r = 0;
	if (is_queue_op(op) || op == STORE_LIST_ALIASES) {
		uint32_t shard = req_shard(req);
		if (shard >= st->o.shards) {
			*errmsg_r = arena_errf(a, "shard %u does not exist (the cluster has %u)",
					       shard, st->o.shards);
			return MP_EINVAL;
		}
		*shard_r = shard;
		keys = mp_arena_alloc(a, sizeof(*keys));
		if (keys == NULL)
			return MP_ENOMEM;
		*keys_r = keys;
		*nkeys_r = 0;
		/* Claims, updates, deletes and retries of a shard's queue read
		 * its due index by iteration, which does not see the group's
		 * uncommitted writes: one per group. QueueAdd writes only new
		 * keys (its id is checked by a point read, which does see
		 * them), so adds run side by side. */
		if (op != STORE_QUEUE_ADD && ops_is_mutation(op, req)) {
			if ((keys[0] = (char *)arena_errf(a, "queue:%u", shard)) == NULL)
				return MP_ENOMEM;
			*nkeys_r = 1;
		}
		return 0;
	}
	switch (op) {
	case STORE_SET_ALIAS:
	case STORE_DELETE_ALIAS:
	case STORE_GET_ALIAS: {
		/* The alias's address is its conflict key, as a user's: an
		 * account and an alias of one address never share a group. */
		const Merpati__V1__AliasRequest *r = (const void *)req;
		const char *u = ukey(a, r->alias);
		if (u == NULL) {
			*errmsg_r = arena_errf(a, "invalid alias: %.300s",
					       r->alias ? r->alias : "(none)");
			return MP_EINVAL;
		}
		*shard_r = mp_shard_of(u, strlen(u), st->o.shards);
		keys = mp_arena_alloc(a, 2 * sizeof(*keys));
		if (keys == NULL)
			return MP_ENOMEM;
		keys[0] = (char *)u;
		*nkeys_r = 1;
		if (op == STORE_SET_ALIAS) {
			/* against DeleteDomain, as CreateAccount */
			if ((keys[1] = (char *)dkey(a, mp_user_domain(u))) == NULL) {
				*errmsg_r = "invalid domain in alias";
				return MP_EINVAL;
			}
			*nkeys_r = 2;
		}
		*keys_r = keys;
		return 0;
	}
	case STORE_CREATE_DOMAIN:
	case STORE_DELETE_DOMAIN: {
		const Merpati__V1__DomainRequest *r = (const void *)req;
		keys = mp_arena_alloc(a, sizeof(*keys));
		if (keys == NULL)
			return MP_ENOMEM;
		if ((keys[0] = (char *)dkey(a, r->name)) == NULL) {
			*errmsg_r = "invalid domain name";
			return MP_EINVAL;
		}
		*keys_r = keys, *nkeys_r = 1;
		return 0;
	}
	case STORE_APPEND_MANY: {
		const Merpati__V1__AppendManyRequest *r = (const void *)req;
		if (r->n_deliveries == 0 || r->n_deliveries > 10000) {
			*errmsg_r = "AppendMany needs 1 to 10000 deliveries";
			return MP_EINVAL;
		}
		keys = mp_arena_alloc(a, r->n_deliveries * sizeof(*keys));
		if (keys == NULL)
			return MP_ENOMEM;
		for (size_t i = 0; i < r->n_deliveries; i++) {
			const char *u = ukey(a, r->deliveries[i]->user);
			if (u == NULL) {
				*errmsg_r = arena_errf(a, "delivery %zu: invalid user", i);
				return MP_EINVAL;
			}
			uint32_t s = mp_shard_of(u, strlen(u), st->o.shards);
			if (i == 0) {
				*shard_r = s;
			} else if (s != *shard_r) {
				*errmsg_r = arena_errf(a, "delivery %zu: user %s is on shard %u, "
						       "not %u: one call per shard", i, u, s,
						       *shard_r);
				return MP_EINVAL;
			}
			keys[i] = (char *)u;
		}
		*keys_r = keys, *nkeys_r = r->n_deliveries;
		return 0;
	}
	default:
		break;
	}
	const char *u = ukey(a, req_user(req));
	if (u == NULL) {
		*errmsg_r = arena_errf(a, "invalid user: %.300s",
				       req_user(req) ? req_user(req) : "(none)");
		return MP_EINVAL;
	}
	*shard_r = mp_shard_of(u, strlen(u), st->o.shards);
	keys = mp_arena_alloc(a, 2 * sizeof(*keys));
	if (keys == NULL)
		return MP_ENOMEM;
	keys[0] = (char *)u;
	*nkeys_r = 1;
	if (op == STORE_CREATE_ACCOUNT || op == STORE_DELETE_ACCOUNT) {
		keys[1] = (char *)dkey(a, mp_user_domain(u));
		if (keys[1] == NULL) {
			*errmsg_r = "invalid domain in user";
			return MP_EINVAL;
		}
		*nkeys_r = 2;
	}
	*keys_r = keys;
	return 0;
}

/* ------------------------------------------------------------ domains */

static int m_create_domain(struct rd *r, const Merpati__V1__DomainRequest *q,
			   ProtobufCMessage **rep_r, const char **err_r)
{
	char *name;
	struct sk k;
	char *v;
	size_t len;
	int ret = norm_domain(r->arena, q->name, &name, err_r);
	if (ret < 0)
		return ret;
	sk_domain(&k, name);
	ret = rd_get(r, CF_META, &k, &v, &len);
	if (ret == 0) {
		*err_r = arena_errf(r->arena, "domain exists: %s", name);
		return MP_EEXIST;
	}
	if (ret != MP_ENOENT)
		return ret;
	Merpati__Rec__DomainRec d = MERPATI__REC__DOMAIN_REC__INIT;
	d.name = name;
	d.created = now_s();
	if ((ret = txn_put_msg(r->pm, &k, &d.base)) < 0)
		return ret;
	Merpati__V1__DomainReply *rep = ALLOC(r->arena, Merpati__V1__DomainReply);
	Merpati__V1__Domain *dom = ALLOC(r->arena, Merpati__V1__Domain);
	if (rep == NULL || dom == NULL)
		return MP_ENOMEM;
	merpati__v1__domain_reply__init(rep);
	merpati__v1__domain__init(dom);
	dom->name = name;
	dom->created = d.created;
	rep->domain = dom;
	*rep_r = &rep->base;
	return 0;
}

/* Does any account or alias of the domain exist on this node? A scan of
 * every shard's accounts and aliases: domains are deleted rarely. */
static int domain_has_accounts(struct rd *r, const char *domain, bool *has_r)
{
	size_t dl = strlen(domain);
	*has_r = false;
	for (uint32_t i = 0; i < 2 * r->st->o.shards && !*has_r; i++) {
		uint32_t s = i / 2;
		struct sk pre;
		struct it it;
		sk_prefix(&pre, s, i % 2 == 0 ? 'u' : 'a');
		it_open(r, CF_META, &pre, NULL, &it);
		for (; it_valid(&it); it_next(&it)) {
			size_t kl;
			const char *k = it_key(&it, &kl);
			if (kl > pre.len + dl + 1 && k[kl - dl - 1] == '@' &&
			    memcmp(k + kl - dl, domain, dl) == 0) {
				*has_r = true;
				break;
			}
		}
		int ret = it_close(&it);
		if (ret < 0)
			return ret;
	}
	return 0;
}

static int m_delete_domain(struct rd *r, const Merpati__V1__DomainRequest *q,
			   ProtobufCMessage **rep_r, const char **err_r)
{
	char *name;
	struct sk k;
	char *v;
	size_t len;
	bool has;
	int ret = norm_domain(r->arena, q->name, &name, err_r);
	if (ret < 0)
		return ret;
	sk_domain(&k, name);
	ret = rd_get(r, CF_META, &k, &v, &len);
	if (ret == MP_ENOENT) {
		*err_r = arena_errf(r->arena, "no such domain: %s", name);
		return ret;
	}
	if (ret < 0)
		return ret;
	if ((ret = domain_has_accounts(r, name, &has)) < 0)
		return ret;
	if (has) {
		*err_r = arena_errf(r->arena, "domain %s still has accounts or aliases; "
				    "delete them first", name);
		return MP_ESTATE;
	}
	if ((ret = txn_del(r->pm, CF_META, &k)) < 0)
		return ret;
	Merpati__V1__Empty *rep = ALLOC(r->arena, Merpati__V1__Empty);
	if (rep == NULL)
		return MP_ENOMEM;
	merpati__v1__empty__init(rep);
	*rep_r = &rep->base;
	return 0;
}

static int r_get_domain(struct rd *r, const Merpati__V1__DomainRequest *q,
			ProtobufCMessage **rep_r, const char **err_r)
{
	char *name;
	struct sk k;
	Merpati__Rec__DomainRec *d;
	int ret = norm_domain(r->arena, q->name, &name, err_r);
	if (ret < 0)
		return ret;
	sk_domain(&k, name);
	ret = rd_get_msg(r, &k, &merpati__rec__domain_rec__descriptor, &d);
	if (ret == MP_ENOENT)
		*err_r = arena_errf(r->arena, "no such domain: %s", name);
	if (ret < 0)
		return ret;
	Merpati__V1__DomainReply *rep = ALLOC(r->arena, Merpati__V1__DomainReply);
	Merpati__V1__Domain *dom = ALLOC(r->arena, Merpati__V1__Domain);
	if (rep == NULL || dom == NULL)
		return MP_ENOMEM;
	merpati__v1__domain_reply__init(rep);
	merpati__v1__domain__init(dom);
	dom->name = d->name;
	dom->created = d->created;
	rep->domain = dom;
	*rep_r = &rep->base;
	return 0;
}

static uint32_t clamp_limit(uint32_t l)
{
	return l == 0 ? LIST_DEFAULT : l > LIST_MAX ? LIST_MAX : l;
}

static int r_list_domains(struct rd *r, const Merpati__V1__ListDomainsRequest *q,
			  ProtobufCMessage **rep_r, const char **err_r)
{
	uint32_t limit = clamp_limit(q->limit);
	struct sk pre, from;
	struct it it;
	Merpati__V1__ListDomainsReply *rep = ALLOC(r->arena, Merpati__V1__ListDomainsReply);
	if (rep == NULL)
		return MP_ENOMEM;
	merpati__v1__list_domains_reply__init(rep);
	rep->domains = mp_arena_alloc(r->arena, (limit + 1) * sizeof(*rep->domains));
	if (rep->domains == NULL)
		return MP_ENOMEM;
	sk_domain_prefix(&pre);
	from = pre;
	if (q->after && *q->after) {
		if (strlen(q->after) > MP_DOMAIN_MAX) {
			*err_r = "after is too long";
			return MP_EINVAL;
		}
		sk_str(&from, q->after);
		sk_bytes(&from, "", 1); /* strictly after */
	}
	struct sk up;
	sk_upper(&up, &pre);
	it_open(r, CF_META, &from, &up, &it);
	for (; it_valid(&it); it_next(&it)) {
		size_t vl;
		const char *v = it_val(&it, &vl);
		Merpati__Rec__DomainRec *d;
		if (rep->n_domains == limit) {
			rep->more = true;
			break;
		}
		if (rd_unpack(r, &merpati__rec__domain_rec__descriptor, v, vl, &d) < 0)
			break;
		Merpati__V1__Domain *dom = ALLOC(r->arena, Merpati__V1__Domain);
		if (dom == NULL)
			break;
		merpati__v1__domain__init(dom);
		dom->name = d->name;
		dom->created = d->created;
		rep->domains[rep->n_domains++] = dom;
	}
	int ret = it_close(&it);
	if (ret < 0)
		return ret;
	*rep_r = &rep->base;
	return 0;
}

/* ------------------------------------------------------------ accounts */

/* The domain of a normalised address must exist (its record on this node,
 * shard 0's keys, until domains move to etcd). */
static int check_local_domain(struct rd *r, const char *user, const char **err_r)
{
	struct sk k;
	char *v;
	size_t len;
	sk_domain(&k, mp_user_domain(user));
	int ret = rd_get(r, CF_META, &k, &v, &len);
	if (ret == MP_ENOENT)
		*err_r = arena_errf(r->arena, "no such domain: %s", mp_user_domain(user));
	return ret;
}

static int check_hash(struct mp_arena *a, const char *h, const char **err_r)
{
	size_t n = h ? strlen(h) : 0;
	if (n > 512) {
		*err_r = "password hash longer than 512 bytes";
		return MP_EINVAL;
	}
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)h[i] <= 0x20 || (unsigned char)h[i] == 0x7f) {
			*err_r = "password hash contains a space or control character";
			return MP_EINVAL;
		}
	(void)a;
	return 0;
}

#define SCRAM_RECORD_MAX 512

/* An RFC 5803 SCRAM-SHA-256 record, or empty (none). */
static int check_scram(struct mp_arena *a, const char *s, const char **err_r)
{
	struct mp_scram_cred cred;
	const char *e = NULL;
	if (s == NULL || *s == '\0')
		return 0;
	if (strlen(s) > SCRAM_RECORD_MAX) {
		*err_r = arena_errf(a, "SCRAM record longer than %d bytes", SCRAM_RECORD_MAX);
		return MP_EINVAL;
	}
	if (mp_scram_parse(s, &cred, &e) < 0) {
		*err_r = arena_errf(a, "bad SCRAM-SHA-256 record: %s", e ? e : "invalid");
		return MP_EINVAL;
	}
	mp_wipe(&cred, sizeof(cred));
	return 0;
}

static Merpati__V1__Account *account_msg(struct mp_arena *a, const AccountRec *ar,
					 uint32_t shard, bool with_hash)
{
	Merpati__V1__Account *m = ALLOC(a, Merpati__V1__Account);
	if (m == NULL)
		return NULL;
	merpati__v1__account__init(m);
	m->user = ar->user;
	m->password_hash = with_hash ? ar->password_hash : (char *)"";
	m->scram_sha256 = with_hash && ar->scram_sha256 ? ar->scram_sha256 : (char *)"";
	m->quota_bytes = ar->quota_bytes;
	m->state = ar->state;
	m->used_bytes = ar->used_bytes;
	m->messages = ar->messages;
	m->created = ar->created;
	m->shard = shard;
	return m;
}

static int m_create_account(struct rd *r, uint32_t shard,
			    const Merpati__V1__CreateAccountRequest *q,
			    ProtobufCMessage **rep_r, const char **err_r)
{
	char *user;
	struct sk k;
	char *v;
	size_t len;
	AccountRec *ex;
	int ret = norm_user(r->arena, q->user, &user, err_r);
	if (ret < 0 || (ret = check_hash(r->arena, q->password_hash, err_r)) < 0 ||
	    (ret = check_scram(r->arena, q->scram_sha256, err_r)) < 0 ||
	    (ret = check_local_domain(r, user, err_r)) < 0)
		return ret;
	ret = load_account(r, shard, user, &ex, err_r);
	if (ret == 0) {
		*err_r = arena_errf(r->arena, "user exists: %s", user);
		return MP_EEXIST;
	}
	if (ret != MP_ENOENT)
		return ret;
	/* An address is an account or an alias, never both: SetAlias shares
	 * the address's conflict key, so this read is not racing one. */
	sk_alias(&k, shard, user);
	ret = rd_get(r, CF_META, &k, &v, &len);
	if (ret == 0) {
		*err_r = arena_errf(r->arena, "%s is an alias; remove the alias first", user);
		return MP_EEXIST;
	}
	if (ret != MP_ENOENT)
		return ret;
	AccountRec *a = ALLOC(r->arena, AccountRec);
	if (a == NULL)
		return MP_ENOMEM;
	merpati__rec__account_rec__init(a);
	a->user = user;
	a->password_hash = q->password_hash ? q->password_hash : (char *)"";
	a->scram_sha256 = q->scram_sha256 ? q->scram_sha256 : (char *)"";
	a->quota_bytes = q->quota_bytes;
	a->created = now_s();
	a->next_mailbox_id = 1;
	for (size_t i = 0; i < sizeof(default_mailboxes) / sizeof(*default_mailboxes); i++) {
		MailboxRec *mb;
		ret = new_mailbox(r, shard, a, default_mailboxes[i].name,
				  default_mailboxes[i].special, &mb);
		if (ret < 0)
			return ret;
	}
	if ((ret = save_account(r->pm, shard, a)) < 0)
		return ret;
	Merpati__V1__AccountReply *rep = ALLOC(r->arena, Merpati__V1__AccountReply);
	if (rep == NULL)
		return MP_ENOMEM;
	merpati__v1__account_reply__init(rep);
	if ((rep->account = account_msg(r->arena, a, shard, false)) == NULL)
		return MP_ENOMEM;
	*rep_r = &rep->base;
	return 0;
}

static ProtobufCMessage *empty_reply(struct mp_arena *a)
{
	Merpati__V1__Empty *rep = ALLOC(a, Merpati__V1__Empty);
	if (rep == NULL)
		return NULL;
	merpati__v1__empty__init(rep);
	return &rep->base;
}

/* Delete every message of a mailbox: dereference bodies, drop index and
 * change feed. Returns bytes and messages removed. */
static int purge_mailbox(struct rd *r, uint32_t shard, const char *user,
			 uint32_t mbid, uint64_t *bytes_r, uint64_t *msgs_r)
{
	struct sk pre;
	struct it it;
	int ret = 0;
	*bytes_r = 0;
	*msgs_r = 0;
	sk_index_mb(&pre, shard, user, mbid);
	it_open(r, CF_META, &pre, NULL, &it);
	for (; it_valid(&it) && ret == 0; it_next(&it)) {
		size_t vl;
		const char *v = it_val(&it, &vl);
		IndexRec *rec;
		if ((ret = rd_unpack(r, &merpati__rec__index_rec__descriptor, v, vl, &rec)) < 0)
			break;
		if (rec->blob_id.len != SHA_LEN) {
			ret = MP_EIO;
			break;
		}
		ret = ref_change(r, shard, rec->blob_id.data, -1, NULL, 0);
		*bytes_r += rec->size;
		(*msgs_r)++;
	}
	int cr = it_close(&it);
	if (ret == 0)
		ret = cr;
	if (ret < 0)
		return ret;
	if ((ret = txn_del_prefix(r->pm, CF_META, &pre)) < 0)
		return ret;
	sk_change_mb(&pre, shard, user, mbid);
	return txn_del_prefix(r->pm, CF_META, &pre);
}

static int m_delete_account(struct rd *r, uint32_t shard, const Merpati__V1__UserRequest *q,
			    ProtobufCMessage **rep_r, const char **err_r)
{
	char *user;
	AccountRec *a;
	int ret = norm_user(r->arena, q->user, &user, err_r);
	if (ret < 0 || (ret = load_account(r, shard, user, &a, err_r)) < 0)
		return ret;
	/* Every mailbox: purge its messages (scans of committed state, before
	 * any range delete of this user's keys). */
	struct sk pre;
	struct it it;
	uint32_t *ids = NULL;
	size_t n = 0, cap = 0;
	sk_mailbox_user(&pre, shard, user);
	it_open(r, CF_META, &pre, NULL, &it);
	for (; it_valid(&it); it_next(&it)) {
		size_t kl;
		const char *k = it_key(&it, &kl);
		if (n == cap) {
			size_t nc = cap ? cap * 2 : 16;
			uint32_t *ni = mp_arena_alloc(r->arena, nc * sizeof(*ni));
			if (ni == NULL) {
				ret = MP_ENOMEM;
				break;
			}
			if (n)
				memcpy(ni, ids, n * sizeof(*ni));
			ids = ni, cap = nc;
		}
		ids[n++] = mp_be32_get(k + kl - 4);
	}
	int cr = it_close(&it);
	if (ret == 0)
		ret = cr;
	for (size_t i = 0; i < n && ret == 0; i++) {
		uint64_t b, m;
		ret = purge_mailbox(r, shard, user, ids[i], &b, &m);
	}
	if (ret < 0)
		return ret;
	if ((ret = txn_del_prefix(r->pm, CF_META, &pre)) < 0)
		return ret;
	sk_name_user(&pre, shard, user);
	if ((ret = txn_del_prefix(r->pm, CF_META, &pre)) < 0)
		return ret;
	/* A POP3 session's lock would outlive the account and hold a new
	 * account of the same name out until its lease ended. */
	sk_maildrop_lock(&pre, shard, user);
	if ((ret = txn_del(r->pm, CF_META, &pre)) < 0)
		return ret;
	sk_account(&pre, shard, user);
	if ((ret = txn_del(r->pm, CF_META, &pre)) < 0)
		return ret;
	if ((ret = txn_event(r->pm, user, MERPATI__V1__WATCH_KIND__WATCH_OVERFLOW, 0, 0)) < 0)
		return ret;
	*rep_r = empty_reply(r->arena);
	return *rep_r ? 0 : MP_ENOMEM;
}

static int r_get_account(struct rd *r, const Merpati__V1__UserRequest *q,
			 ProtobufCMessage **rep_r, const char **err_r)
{
	char *user;
	AccountRec *a;
	int ret = norm_user(r->arena, q->user, &user, err_r);
	if (ret < 0)
		return ret;
	uint32_t shard = mp_shard_of(user, strlen(user), r->st->o.shards);
	if ((ret = load_account(r, shard, user, &a, err_r)) < 0)
		return ret;
	Merpati__V1__AccountReply *rep = ALLOC(r->arena, Merpati__V1__AccountReply);
	if (rep == NULL)
		return MP_ENOMEM;
	merpati__v1__account_reply__init(rep);
	if ((rep->account = account_msg(r->arena, a, shard, true)) == NULL)
		return MP_ENOMEM;
	*rep_r = &rep->base;
	return 0;
}

/* Accounts are listed shard by shard, users in key order within a shard;
 * "after" names the last user of the previous page. */
static int r_list_accounts(struct rd *r, const Merpati__V1__ListAccountsRequest *q,
			   ProtobufCMessage **rep_r, const char **err_r)
{
	uint32_t limit = clamp_limit(q->limit);
	uint32_t first = 0;
	char *after = NULL, *domain = NULL;
	int ret;
	if (q->after && *q->after) {
		if ((ret = norm_user(r->arena, q->after, &after, err_r)) < 0)
			return ret;
		first = mp_shard_of(after, strlen(after), r->st->o.shards);
	}
	if (q->domain && *q->domain &&
	    (ret = norm_domain(r->arena, q->domain, &domain, err_r)) < 0)
		return ret;
	Merpati__V1__ListAccountsReply *rep = ALLOC(r->arena, Merpati__V1__ListAccountsReply);
	if (rep == NULL)
		return MP_ENOMEM;
	merpati__v1__list_accounts_reply__init(rep);
	rep->accounts = mp_arena_alloc(r->arena, (limit + 1) * sizeof(*rep->accounts));
	if (rep->accounts == NULL)
		return MP_ENOMEM;
	size_t dl = domain ? strlen(domain) : 0;
	ret = 0;
	for (uint32_t s = first; s < r->st->o.shards && ret == 0 && !rep->more; s++) {
		struct sk pre, from, up;
		struct it it;
		enum store_role role;
		pthread_mutex_lock(&r->st->role_mu);
		role = r->st->cluster ? r->st->role[s] : STORE_ROLE_LEADER;
		pthread_mutex_unlock(&r->st->role_mu);
		if (role != STORE_ROLE_LEADER)
			continue;
		sk_prefix(&pre, s, 'u');
		sk_upper(&up, &pre);
		from = pre;
		if (after != NULL && s == first) {
			sk_str(&from, after);
			sk_bytes(&from, "", 1);
		}
		it_open(r, CF_META, &from, &up, &it);
		for (; it_valid(&it); it_next(&it)) {
			size_t kl, vl;
			const char *k = it_key(&it, &kl);
			const char *v = it_val(&it, &vl);
			AccountRec *a;
			if (domain && !(kl > pre.len + dl + 1 && k[kl - dl - 1] == '@' &&
					memcmp(k + kl - dl, domain, dl) == 0))
				continue;
			if (rep->n_accounts == limit) {
				rep->more = true;
				break;
			}
			if ((ret = rd_unpack(r, &merpati__rec__account_rec__descriptor, v, vl, &a)) < 0)
				break;
			Merpati__V1__Account *m = account_msg(r->arena, a, s, false);
			if (m == NULL) {
				ret = MP_ENOMEM;
				break;
			}
			rep->accounts[rep->n_accounts++] = m;
		}
		int cr = it_close(&it);
		if (ret == 0)
			ret = cr;
	}
	if (ret < 0)
		return ret;
	*rep_r = &rep->base;
	return 0;
}

static int m_account_set(struct rd *r, uint32_t shard, enum store_op op,
			 const ProtobufCMessage *req, ProtobufCMessage **rep_r,
			 const char **err_r)
{
	char *user;
	AccountRec *a;
	int ret = norm_user(r->arena, req_user(req), &user, err_r);
	if (ret < 0 || (ret = load_account(r, shard, user, &a, err_r)) < 0)
		return ret;
	if (op == STORE_SET_PASSWORD) {
		const Merpati__V1__SetPasswordRequest *q = (const void *)req;
		if ((ret = check_hash(r->arena, q->password_hash, err_r)) < 0 ||
		    (ret = check_scram(r->arena, q->scram_sha256, err_r)) < 0)
			return ret;
		a->password_hash = q->password_hash ? q->password_hash : (char *)"";
		/* A SCRAM record derived from the old password would still
		 * let it in: without a new one, none. */
		a->scram_sha256 = q->scram_sha256 ? q->scram_sha256 : (char *)"";
	} else if (op == STORE_SET_QUOTA) {
		a->quota_bytes = ((const Merpati__V1__SetQuotaRequest *)req)->quota_bytes;
	} else {
		const Merpati__V1__SetStateRequest *q = (const void *)req;
		if (q->state != MERPATI__V1__ACCOUNT_STATE__ACCOUNT_ACTIVE &&
		    q->state != MERPATI__V1__ACCOUNT_STATE__ACCOUNT_DISABLED) {
			*err_r = "unknown account state";
			return MP_EINVAL;
		}
		a->state = q->state;
	}
	if ((ret = save_account(r->pm, shard, a)) < 0)
		return ret;
	*rep_r = empty_reply(r->arena);
	return *rep_r ? 0 : MP_ENOMEM;
}

/* ------------------------------------------------------------ mailboxes */

static bool special_ok(const char *s)
{
	if (s == NULL || *s == '\0')
		return true;
	for (size_t i = 0; i < sizeof(special_uses) / sizeof(*special_uses); i++)
		if (strcmp(s, special_uses[i]) == 0)
			return true;
	return false;
}

static int count_mailboxes(struct rd *r, uint32_t shard, const char *user, size_t *n_r)
{
	struct sk pre;
	struct it it;
	*n_r = 0;
	sk_mailbox_user(&pre, shard, user);
	it_open(r, CF_META, &pre, NULL, &it);
	for (; it_valid(&it); it_next(&it))
		(*n_r)++;
	return it_close(&it);
}

static int m_create_mailbox(struct rd *r, uint32_t shard,
			    const Merpati__V1__CreateMailboxRequest *q,
			    ProtobufCMessage **rep_r, const char **err_r)
{
	char *user, *name;
	AccountRec *a;
	MailboxRec *mb;
	size_t n;
	int ret = norm_user(r->arena, q->user, &user, err_r);
	if (ret < 0 || (ret = norm_mailbox(r->arena, q->name, &name, err_r)) < 0)
		return ret;
	if (!special_ok(q->special_use)) {
		*err_r = "unknown special-use attribute";
		return MP_EINVAL;
	}
	if ((ret = load_account(r, shard, user, &a, err_r)) < 0)
		return ret;
	ret = lookup_mailbox(r, shard, user, name, &mb, err_r);
	if (ret == 0) {
		*err_r = arena_errf(r->arena, "mailbox exists: %s", name);
		return MP_EEXIST;
	}
	if (ret != MP_ENOENT)
		return ret;
	if ((ret = count_mailboxes(r, shard, user, &n)) < 0)
		return ret;
	if (n >= MAILBOXES_MAX) {
		*err_r = arena_errf(r->arena, "user has %d mailboxes, the limit", MAILBOXES_MAX);
		return MP_ENOSPC;
	}
	const char *special = q->special_use ? q->special_use : "";
	if ((ret = new_mailbox(r, shard, a, name, (char *)special, &mb)) < 0)
		return ret;
	if ((ret = save_account(r->pm, shard, a)) < 0)
		return ret;
	Merpati__V1__MailboxReply *rep = ALLOC(r->arena, Merpati__V1__MailboxReply);
	Merpati__V1__MailboxInfo *info = ALLOC(r->arena, Merpati__V1__MailboxInfo);
	if (rep == NULL || info == NULL)
		return MP_ENOMEM;
	merpati__v1__mailbox_reply__init(rep);
	merpati__v1__mailbox_info__init(info);
	info->name = mb->name;
	info->id = mb->id;
	info->special_use = mb->special_use;
	info->subscribed = mb->subscribed;
	info->uidvalidity = mb->uidvalidity;
	info->uidnext = mb->uidnext;
	info->highestmodseq = mb->highestmodseq;
	rep->mailbox = info;
	*rep_r = &rep->base;
	return 0;
}

static int m_delete_mailbox(struct rd *r, uint32_t shard, const Merpati__V1__MailboxRequest *q,
			    ProtobufCMessage **rep_r, const char **err_r)
{
	char *user, *name;
	AccountRec *a;
	MailboxRec *mb;
	uint64_t bytes, msgs;
	int ret = norm_user(r->arena, q->user, &user, err_r);
	if (ret < 0 || (ret = norm_mailbox(r->arena, q->name, &name, err_r)) < 0)
		return ret;
	if (strcmp(name, "INBOX") == 0) {
		*err_r = "INBOX cannot be deleted";
		return MP_EPERM;
	}
	if ((ret = load_account(r, shard, user, &a, err_r)) < 0 ||
	    (ret = lookup_mailbox(r, shard, user, name, &mb, err_r)) < 0)
		return ret;
	if ((ret = purge_mailbox(r, shard, user, mb->id, &bytes, &msgs)) < 0)
		return ret;
	a->used_bytes = a->used_bytes >= bytes ? a->used_bytes - bytes : 0;
	a->messages = a->messages >= msgs ? a->messages - msgs : 0;
	struct sk k;
	sk_mailbox(&k, shard, user, mb->id);
	if ((ret = txn_del(r->pm, CF_META, &k)) < 0 ||
	    (ret = del_name(r->pm, shard, user, name)) < 0 ||
	    (ret = save_account(r->pm, shard, a)) < 0 ||
	    (ret = txn_event(r->pm, user, MERPATI__V1__WATCH_KIND__WATCH_MAILBOXES, mb->id, 0)) < 0)
		return ret;
	*rep_r = empty_reply(r->arena);
	return *rep_r ? 0 : MP_ENOMEM;
}

struct mb_list {
	MailboxRec **mb;
	size_t n;
};

static int list_mailboxes(struct rd *r, uint32_t shard, const char *user, struct mb_list *l)
{
	struct sk pre;
	struct it it;
	size_t cap = 16;
	int ret = 0;
	l->n = 0;
	l->mb = mp_arena_alloc(r->arena, cap * sizeof(*l->mb));
	if (l->mb == NULL)
		return MP_ENOMEM;
	sk_mailbox_user(&pre, shard, user);
	it_open(r, CF_META, &pre, NULL, &it);
	for (; it_valid(&it); it_next(&it)) {
		size_t vl;
		const char *v = it_val(&it, &vl);
		MailboxRec *mb;
		if ((ret = rd_unpack(r, &merpati__rec__mailbox_rec__descriptor, v, vl, &mb)) < 0)
			break;
		if (l->n == cap) {
			MailboxRec **nm = mp_arena_alloc(r->arena, cap * 2 * sizeof(*nm));
			if (nm == NULL) {
				ret = MP_ENOMEM;
				break;
			}
			memcpy(nm, l->mb, cap * sizeof(*nm));
			l->mb = nm;
			cap *= 2;
		}
		l->mb[l->n++] = mb;
	}
	int cr = it_close(&it);
	return ret < 0 ? ret : cr;
}

static int m_rename_mailbox(struct rd *r, uint32_t shard,
			    const Merpati__V1__RenameMailboxRequest *q,
			    ProtobufCMessage **rep_r, const char **err_r)
{
	char *user, *from, *to;
	AccountRec *a;
	MailboxRec *mb;
	struct mb_list l;
	int ret = norm_user(r->arena, q->user, &user, err_r);
	if (ret < 0 || (ret = norm_mailbox(r->arena, q->name, &from, err_r)) < 0 ||
	    (ret = norm_mailbox(r->arena, q->new_name, &to, err_r)) < 0)
		return ret;
	if (strcmp(from, "INBOX") == 0) {
		/* RFC 3501 §6.3.5 moves INBOX's messages to the new mailbox;
		 * not implemented yet (README "Not done yet"). */
		*err_r = "renaming INBOX is not supported";
		return MP_EUNIMPL;
	}
	size_t fl = strlen(from);
	if (strncmp(to, from, fl) == 0 && (to[fl] == '\0' || to[fl] == '/')) {
		*err_r = "cannot rename a mailbox to itself or below itself";
		return MP_EINVAL;
	}
	if (strcmp(to, "INBOX") == 0 || strncmp(to, "INBOX/", 6) == 0) {
		if (strcmp(to, "INBOX") == 0) {
			*err_r = "mailbox exists: INBOX";
			return MP_EEXIST;
		}
	}
	if ((ret = load_account(r, shard, user, &a, err_r)) < 0 ||
	    (ret = lookup_mailbox(r, shard, user, from, &mb, err_r)) < 0)
		return ret;
	if ((ret = list_mailboxes(r, shard, user, &l)) < 0)
		return ret;
	/* Check every new name first, then rename. */
	size_t tl = strlen(to);
	char **newnames = mp_arena_alloc(r->arena, (l.n + 1) * sizeof(*newnames));
	if (newnames == NULL)
		return MP_ENOMEM;
	for (size_t i = 0; i < l.n; i++) {
		const char *n = l.mb[i]->name;
		newnames[i] = NULL;
		if (!(strncmp(n, from, fl) == 0 && (n[fl] == '\0' || n[fl] == '/')))
			continue;
		size_t nl = tl + strlen(n + fl);
		if (nl > MAILBOX_NAME_MAX) {
			*err_r = arena_errf(r->arena, "renamed name of %s would be too long", n);
			return MP_EINVAL;
		}
		char *nn = mp_arena_alloc(r->arena, nl + 1);
		if (nn == NULL)
			return MP_ENOMEM;
		memcpy(nn, to, tl);
		memcpy(nn + tl, n + fl, strlen(n + fl) + 1);
		char *check;
		if ((ret = norm_mailbox(r->arena, nn, &check, err_r)) < 0)
			return ret;
		for (size_t j = 0; j < l.n; j++)
			if (strcmp(l.mb[j]->name, check) == 0) {
				*err_r = arena_errf(r->arena, "mailbox exists: %s", check);
				return MP_EEXIST;
			}
		newnames[i] = check;
	}
	for (size_t i = 0; i < l.n; i++) {
		if (newnames[i] == NULL)
			continue;
		if ((ret = del_name(r->pm, shard, user, l.mb[i]->name)) < 0)
			return ret;
		l.mb[i]->name = newnames[i];
		if ((ret = put_name(r->pm, shard, user, newnames[i], l.mb[i]->id)) < 0 ||
		    (ret = save_mailbox(r->pm, shard, user, l.mb[i])) < 0)
			return ret;
	}
	if ((ret = txn_event(r->pm, user, MERPATI__V1__WATCH_KIND__WATCH_MAILBOXES, mb->id, 0)) < 0)
		return ret;
	*rep_r = empty_reply(r->arena);
	return *rep_r ? 0 : MP_ENOMEM;
}

static Merpati__V1__MailboxInfo *mb_info(struct mp_arena *a, const MailboxRec *mb)
{
	Merpati__V1__MailboxInfo *info = ALLOC(a, Merpati__V1__MailboxInfo);
	if (info == NULL)
		return NULL;
	merpati__v1__mailbox_info__init(info);
	info->name = mb->name;
	info->id = mb->id;
	info->special_use = mb->special_use;
	info->subscribed = mb->subscribed;
	info->uidvalidity = mb->uidvalidity;
	info->uidnext = mb->uidnext;
	info->highestmodseq = mb->highestmodseq;
	return info;
}

static int r_list_mailboxes(struct rd *r, const Merpati__V1__ListMailboxesRequest *q,
			    ProtobufCMessage **rep_r, const char **err_r)
{
	char *user;
	AccountRec *a;
	struct mb_list l;
	int ret = norm_user(r->arena, q->user, &user, err_r);
	if (ret < 0)
		return ret;
	uint32_t shard = mp_shard_of(user, strlen(user), r->st->o.shards);
	if ((ret = load_account(r, shard, user, &a, err_r)) < 0 ||
	    (ret = list_mailboxes(r, shard, user, &l)) < 0)
		return ret;
	Merpati__V1__ListMailboxesReply *rep = ALLOC(r->arena, Merpati__V1__ListMailboxesReply);
	if (rep == NULL)
		return MP_ENOMEM;
	merpati__v1__list_mailboxes_reply__init(rep);
	rep->mailboxes = mp_arena_alloc(r->arena, (l.n + 1) * sizeof(*rep->mailboxes));
	if (rep->mailboxes == NULL)
		return MP_ENOMEM;
	for (size_t i = 0; i < l.n; i++) {
		Merpati__V1__MailboxInfo *info = mb_info(r->arena, l.mb[i]);
		if (info == NULL)
			return MP_ENOMEM;
		size_t nl = strlen(l.mb[i]->name);
		for (size_t j = 0; j < l.n; j++)
			if (strncmp(l.mb[j]->name, l.mb[i]->name, nl) == 0 &&
			    l.mb[j]->name[nl] == '/')
				info->has_children = true;
		rep->mailboxes[rep->n_mailboxes++] = info;
	}
	*rep_r = &rep->base;
	return 0;
}

static int m_subscribe(struct rd *r, uint32_t shard, const Merpati__V1__SubscribeRequest *q,
		       ProtobufCMessage **rep_r, const char **err_r)
{
	char *user, *name;
	MailboxRec *mb;
	int ret = norm_user(r->arena, q->user, &user, err_r);
	if (ret < 0 || (ret = norm_mailbox(r->arena, q->name, &name, err_r)) < 0 ||
	    (ret = lookup_mailbox(r, shard, user, name, &mb, err_r)) < 0)
		return ret;
	mb->subscribed = q->subscribed;
	if ((ret = save_mailbox(r->pm, shard, user, mb)) < 0 ||
	    (ret = txn_event(r->pm, user, MERPATI__V1__WATCH_KIND__WATCH_MAILBOXES, mb->id, 0)) < 0)
		return ret;
	*rep_r = empty_reply(r->arena);
	return *rep_r ? 0 : MP_ENOMEM;
}

/* Status: counters kept in the mailbox record; \Recent and the first unseen
 * uid come from a scan of the index above recent_uid / from the start. */
static int status(struct rd *r, uint32_t shard, const Merpati__V1__StatusRequest *q,
		  ProtobufCMessage **rep_r, const char **err_r)
{
	char *user, *name;
	MailboxRec *mb;
	int ret = norm_user(r->arena, q->user, &user, err_r);
	if (ret < 0 || (ret = norm_mailbox(r->arena, q->name, &name, err_r)) < 0 ||
	    (ret = lookup_mailbox(r, shard, user, name, &mb, err_r)) < 0)
		return ret;
	Merpati__V1__StatusReply *rep = ALLOC(r->arena, Merpati__V1__StatusReply);
	if (rep == NULL)
		return MP_ENOMEM;
	merpati__v1__status_reply__init(rep);
	struct sk from, pre;
	struct it it;
	uint32_t recent = 0;
	sk_index_mb(&pre, shard, user, mb->id);
	sk_index(&from, shard, user, mb->id, mb->recent_uid ? mb->recent_uid : 1);
	struct sk up;
	sk_upper(&up, &pre);
	it_open(r, CF_META, &from, &up, &it);
	for (; it_valid(&it); it_next(&it))
		recent++;
	if ((ret = it_close(&it)) < 0)
		return ret;
	if (mb->unseen > 0) {
		it_open(r, CF_META, &pre, NULL, &it);
		for (; it_valid(&it); it_next(&it)) {
			size_t kl, vl;
			const char *k = it_key(&it, &kl);
			const char *v = it_val(&it, &vl);
			IndexRec *rec;
			if ((ret = rd_unpack(r, &merpati__rec__index_rec__descriptor, v, vl, &rec)) < 0)
				break;
			if (!has_flag(rec->flags, rec->n_flags, "\\Seen")) {
				rep->first_unseen_uid = mp_be32_get(k + kl - 4);
				break;
			}
		}
		int cr = it_close(&it);
		if (ret == 0)
			ret = cr;
		if (ret < 0)
			return ret;
	}
	if (q->claim_recent && r->pm != NULL && mb->recent_uid != mb->uidnext) {
		mb->recent_uid = mb->uidnext;
		if ((ret = save_mailbox(r->pm, shard, user, mb)) < 0)
			return ret;
	}
	if ((rep->mailbox = mb_info(r->arena, mb)) == NULL)
		return MP_ENOMEM;
	rep->messages = mb->messages;
	rep->recent = recent;
	rep->unseen = mb->unseen;
	rep->size = mb->size;
	*rep_r = &rep->base;
	return 0;
}

/* ------------------------------------------------------------ messages */

static uint64_t next_modseq(MailboxRec *mb)
{
	return ++mb->highestmodseq;
}

/* One new message in a mailbox: index entry, change record, counters. The
 * body's reference is taken by the caller. */
static int add_message(struct rd *r, uint32_t shard, const char *user, AccountRec *a,
		       MailboxRec *mb, IndexRec *tmpl, uint32_t *uid_r)
{
	if (mb->uidnext == UINT32_MAX) {
		/* RFC 3501 §2.3.1.1: the mailbox would need a new uidvalidity. */
		return MP_ENOSPC;
	}
	IndexRec rec = *tmpl;
	uint32_t uid = mb->uidnext++;
	rec.modseq = next_modseq(mb);
	struct sk k;
	sk_index(&k, shard, user, mb->id, uid);
	int ret = txn_put_msg(r->pm, &k, &rec.base);
	if (ret == 0)
		ret = put_change(r->pm, shard, user, mb->id, 0, rec.modseq, uid,
				 MERPATI__V1__CHANGE_KIND__CHANGE_APPEND);
	if (ret < 0)
		return ret;
	mb->messages++;
	mb->size += rec.size;
	if (!has_flag(rec.flags, rec.n_flags, "\\Seen"))
		mb->unseen++;
	a->messages++;
	a->used_bytes += rec.size;
	*uid_r = uid;
	return txn_event(r->pm, user, MERPATI__V1__WATCH_KIND__WATCH_MAILBOX, mb->id,
			 mb->highestmodseq);
}

/* The index record of a new message (its modseq is set by add_message). */
static void index_template(IndexRec *t, char **flags, size_t nflags, size_t size,
			   uint64_t internal_date, uint8_t *sha, ProtobufCBinaryData envelope,
			   ProtobufCBinaryData bodystructure)
{
	merpati__rec__index_rec__init(t);
	t->flags = flags;
	t->n_flags = nflags;
	t->size = size;
	t->internal_date = internal_date ? internal_date : now_s();
	t->blob_id.data = sha;
	t->blob_id.len = SHA_LEN;
	t->envelope = envelope;
	t->bodystructure = bodystructure;
}

static int check_body(struct rd *r, ProtobufCBinaryData body, const char **err_r)
{
	if (body.len == 0) {
		*err_r = "message body is empty";
		return MP_EINVAL;
	}
	if (body.len > r->st->o.max_message_size) {
		*err_r = arena_errf(r->arena, "message of %zu bytes is over the limit of %llu",
				    body.len, (unsigned long long)r->st->o.max_message_size);
		return MP_ENOSPC;
	}
	return 0;
}

static int over_quota(const AccountRec *a, uint64_t add)
{
	return a->quota_bytes != 0 && a->used_bytes + add > a->quota_bytes;
}

static int m_append(struct rd *r, uint32_t shard, const Merpati__V1__AppendRequest *q,
		    ProtobufCMessage **rep_r, const char **err_r)
{
	char *user, *name;
	char **flags;
	size_t nflags;
	AccountRec *a;
	MailboxRec *mb;
	uint8_t sha[SHA_LEN];
	int ret = norm_user(r->arena, q->user, &user, err_r);
	if (ret < 0 ||
	    (ret = norm_mailbox(r->arena, q->mailbox && *q->mailbox ? q->mailbox : "INBOX",
				&name, err_r)) < 0 ||
	    (ret = norm_flags(r->arena, q->flags, q->n_flags, &flags, &nflags, err_r)) < 0 ||
	    (ret = check_body(r, q->body, err_r)) < 0)
		return ret;
	if ((ret = load_account(r, shard, user, &a, err_r)) < 0 ||
	    (ret = lookup_mailbox(r, shard, user, name, &mb, err_r)) < 0)
		return ret;
	if (over_quota(a, q->body.len)) {
		*err_r = arena_errf(r->arena, "over quota: %s", user);
		return MP_ENOSPC;
	}
	SHA256(q->body.data, q->body.len, sha);
	IndexRec tmpl;
	index_template(&tmpl, flags, nflags, q->body.len, q->internal_date, sha,
		       q->envelope, q->bodystructure);
	uint32_t uid;
	if ((ret = ref_change(r, shard, sha, 1, q->body.data, q->body.len)) < 0)
		return ret;
	ret = add_message(r, shard, user, a, mb, &tmpl, &uid);
	if (ret == MP_ENOSPC)
		*err_r = "mailbox has used every UID";
	if (ret < 0 || (ret = save_mailbox(r->pm, shard, user, mb)) < 0 ||
	    (ret = save_account(r->pm, shard, a)) < 0)
		return ret;
	Merpati__V1__AppendReply *rep = ALLOC(r->arena, Merpati__V1__AppendReply);
	if (rep == NULL)
		return MP_ENOMEM;
	merpati__v1__append_reply__init(rep);
	rep->uid = uid;
	rep->uidvalidity = mb->uidvalidity;
	rep->modseq = mb->highestmodseq;
	rep->mailbox_id = mb->id;
	*rep_r = &rep->base;
	return 0;
}

/* One body, many users of one shard. A delivery that cannot be made (no
 * such user or mailbox, over quota, disabled) is reported in its result
 * and the others go ahead; all that succeed are written in one batch. */
static int m_append_many(struct rd *r, uint32_t shard, const Merpati__V1__AppendManyRequest *q,
			 ProtobufCMessage **rep_r, const char **err_r)
{
	uint8_t sha[SHA_LEN];
	int ret = check_body(r, q->body, err_r);
	if (ret < 0)
		return ret;
	Merpati__V1__AppendManyReply *rep = ALLOC(r->arena, Merpati__V1__AppendManyReply);
	if (rep == NULL)
		return MP_ENOMEM;
	merpati__v1__append_many_reply__init(rep);
	rep->results = mp_arena_alloc(r->arena, q->n_deliveries * sizeof(*rep->results));
	if (rep->results == NULL)
		return MP_ENOMEM;
	SHA256(q->body.data, q->body.len, sha);
	size_t stored = 0;
	for (size_t i = 0; i < q->n_deliveries; i++) {
		const Merpati__V1__Delivery *d = q->deliveries[i];
		Merpati__V1__DeliveryResult *res = ALLOC(r->arena, Merpati__V1__DeliveryResult);
		if (res == NULL)
			return MP_ENOMEM;
		merpati__v1__delivery_result__init(res);
		rep->results[rep->n_results++] = res;
		res->user = d->user;
		char *user, *name;
		char **flags;
		size_t nflags;
		AccountRec *a;
		MailboxRec *mb;
		const char *e = NULL;
		int dr = norm_user(r->arena, d->user, &user, &e);
		if (dr == 0)
			dr = norm_mailbox(r->arena, d->mailbox && *d->mailbox ? d->mailbox : "INBOX",
					  &name, &e);
		if (dr == 0)
			dr = norm_flags(r->arena, d->flags, d->n_flags, &flags, &nflags, &e);
		if (dr == 0)
			dr = load_account(r, shard, user, &a, &e);
		if (dr == 0)
			dr = lookup_mailbox(r, shard, user, name, &mb, &e);
		if (dr == 0 && over_quota(a, q->body.len)) {
			dr = MP_ENOSPC;
			e = arena_errf(r->arena, "over quota: %s", user);
		}
		if (dr == 0) {
			IndexRec tmpl;
			index_template(&tmpl, flags, nflags, q->body.len, q->internal_date, sha,
				       q->envelope, q->bodystructure);
			dr = add_message(r, shard, user, a, mb, &tmpl, &res->uid);
			if (dr == MP_ENOSPC)
				e = "mailbox has used every UID";
			else if (dr < 0)
				return dr; /* storage trouble: the whole call fails */
		}
		if (dr == 0) {
			/* Records are re-read through the overlay by the next
			 * delivery to the same user, so save now. */
			if ((ret = save_mailbox(r->pm, shard, user, mb)) < 0 ||
			    (ret = save_account(r->pm, shard, a)) < 0)
				return ret;
			res->uidvalidity = mb->uidvalidity;
			stored++;
		} else {
			if (dr == MP_EIO || dr == MP_ENOMEM)
				return dr;
			res->code = (uint32_t)mp_err_to_grpc(dr);
			res->error = (char *)(e ? e : mp_strerror(dr));
		}
	}
	if (stored > 0 &&
	    (ret = ref_change(r, shard, sha, (int64_t)stored, q->body.data, q->body.len)) < 0)
		return ret;
	*rep_r = &rep->base;
	return 0;
}

static int open_mailbox(struct rd *r, uint32_t shard, const char *quser,
			const char *qname, char **user_r, MailboxRec **mb_r,
			const char **err_r)
{
	char *name;
	int ret = norm_user(r->arena, quser, user_r, err_r);
	if (ret < 0 ||
	    (ret = norm_mailbox(r->arena, qname && *qname ? qname : "INBOX", &name, err_r)) < 0)
		return ret;
	return lookup_mailbox(r, shard, *user_r, name, mb_r, err_r);
}

static uint32_t user_shard(struct rd *r, const char *quser)
{
	char buf[MP_USER_MAX + 1];
	const char *e;
	if (quser == NULL || mp_user_normalize(quser, strlen(quser), buf, sizeof(buf), &e) < 0)
		return 0;
	return mp_shard_of(buf, strlen(buf), r->st->o.shards);
}

static int r_fetch_index(struct rd *r, const Merpati__V1__FetchIndexRequest *q,
			 ProtobufCMessage **rep_r, const char **err_r)
{
	char *user;
	MailboxRec *mb;
	struct mp_uidset set;
	struct msgs m;
	bool more;
	uint32_t shard = user_shard(r, q->user);
	int ret = open_mailbox(r, shard, q->user, q->mailbox, &user, &mb, err_r);
	if (ret < 0 || (ret = check_uidset(r->arena, q->uid_set, &set, err_r)) < 0)
		return ret;
	ret = scan_uids(r, shard, user, mb->id, &set, q->changed_since,
			clamp_limit(q->limit), &m, &more);
	mp_uidset_free(&set);
	if (ret < 0)
		return ret;
	Merpati__V1__FetchIndexReply *rep = ALLOC(r->arena, Merpati__V1__FetchIndexReply);
	if (rep == NULL)
		return MP_ENOMEM;
	merpati__v1__fetch_index_reply__init(rep);
	rep->uidvalidity = mb->uidvalidity;
	rep->highestmodseq = mb->highestmodseq;
	rep->uidnext = mb->uidnext;
	rep->more = more;
	rep->messages = mp_arena_alloc(r->arena, (m.n + 1) * sizeof(*rep->messages));
	if (rep->messages == NULL)
		return MP_ENOMEM;
	for (size_t i = 0; i < m.n; i++) {
		Merpati__V1__MessageIndex *mi = ALLOC(r->arena, Merpati__V1__MessageIndex);
		if (mi == NULL)
			return MP_ENOMEM;
		merpati__v1__message_index__init(mi);
		mi->uid = m.uid[i];
		mi->flags = m.rec[i]->flags;
		mi->n_flags = m.rec[i]->n_flags;
		mi->modseq = m.rec[i]->modseq;
		mi->size = m.rec[i]->size;
		mi->internal_date = m.rec[i]->internal_date;
		mi->blob_id = m.rec[i]->blob_id;
		if (q->with_structure) {
			mi->envelope = m.rec[i]->envelope;
			mi->bodystructure = m.rec[i]->bodystructure;
		}
		rep->messages[rep->n_messages++] = mi;
	}
	*rep_r = &rep->base;
	return 0;
}

static int r_fetch_body(struct rd *r, const Merpati__V1__FetchBodyRequest *q,
			ProtobufCMessage **rep_r, const char **err_r)
{
	char *user;
	MailboxRec *mb;
	IndexRec *rec;
	struct sk k;
	char *v;
	size_t len;
	uint32_t shard = user_shard(r, q->user);
	int ret = open_mailbox(r, shard, q->user, q->mailbox, &user, &mb, err_r);
	if (ret < 0)
		return ret;
	if (q->uid == 0) {
		*err_r = "uid 0 does not exist";
		return MP_EINVAL;
	}
	sk_index(&k, shard, user, mb->id, q->uid);
	ret = rd_get_msg(r, &k, &merpati__rec__index_rec__descriptor, &rec);
	if (ret == MP_ENOENT)
		*err_r = arena_errf(r->arena, "no message with uid %u", q->uid);
	if (ret < 0)
		return ret;
	if (rec->blob_id.len != SHA_LEN)
		return MP_EIO;
	sk_blob(&k, shard, rec->blob_id.data);
	ret = rd_get(r, CF_BLOB, &k, &v, &len);
	if (ret == MP_ENOENT) {
		mp_log_error("store_missing_body", "uid=%u", q->uid);
		return MP_EIO;
	}
	if (ret < 0)
		return ret;
	if (q->offset > len) {
		*err_r = "offset is past the end of the message";
		return MP_ESTALE;
	}
	uint64_t n = len - q->offset;
	if (q->length != 0 && q->length < n)
		n = q->length;
	if (n > BODY_CHUNK_MAX)
		n = BODY_CHUNK_MAX;
	Merpati__V1__FetchBodyReply *rep = ALLOC(r->arena, Merpati__V1__FetchBodyReply);
	if (rep == NULL)
		return MP_ENOMEM;
	merpati__v1__fetch_body_reply__init(rep);
	rep->data.data = (uint8_t *)v + q->offset;
	rep->data.len = n;
	rep->total_size = len;
	*rep_r = &rep->base;
	return 0;
}

static int m_store_flags(struct rd *r, uint32_t shard, const Merpati__V1__StoreFlagsRequest *q,
			 ProtobufCMessage **rep_r, const char **err_r)
{
	char *user;
	MailboxRec *mb;
	struct mp_uidset set;
	struct msgs m;
	char **flags;
	size_t nflags;
	int ret = open_mailbox(r, shard, q->user, q->mailbox, &user, &mb, err_r);
	if (ret < 0 ||
	    (ret = norm_flags(r->arena, q->flags, q->n_flags, &flags, &nflags, err_r)) < 0)
		return ret;
	if (q->mode != MERPATI__V1__FLAG_MODE__FLAGS_ADD &&
	    q->mode != MERPATI__V1__FLAG_MODE__FLAGS_REMOVE &&
	    q->mode != MERPATI__V1__FLAG_MODE__FLAGS_REPLACE) {
		*err_r = "unknown flag mode";
		return MP_EINVAL;
	}
	if ((ret = check_uidset(r->arena, q->uid_set, &set, err_r)) < 0)
		return ret;
	ret = scan_uids(r, shard, user, mb->id, &set, 0, 0, &m, NULL);
	mp_uidset_free(&set);
	if (ret < 0)
		return ret;
	Merpati__V1__StoreFlagsReply *rep = ALLOC(r->arena, Merpati__V1__StoreFlagsReply);
	if (rep == NULL)
		return MP_ENOMEM;
	merpati__v1__store_flags_reply__init(rep);
	rep->updated = mp_arena_alloc(r->arena, (m.n + 1) * sizeof(*rep->updated));
	rep->modified = mp_arena_alloc(r->arena, (m.n + 1) * sizeof(*rep->modified));
	if (rep->updated == NULL || rep->modified == NULL)
		return MP_ENOMEM;
	uint64_t modseq = 0;
	for (size_t i = 0; i < m.n; i++) {
		IndexRec *rec = m.rec[i];
		/* RFC 7162 §3.1.3: a message changed since the client's
		 * modseq is left alone and reported. */
		if (q->unchanged_since && rec->modseq > q->unchanged_since) {
			rep->modified[rep->n_modified++] = m.uid[i];
			continue;
		}
		char **nf = mp_arena_alloc(r->arena, (rec->n_flags + nflags + 1) * sizeof(*nf));
		size_t nn = 0;
		if (nf == NULL)
			return MP_ENOMEM;
		if (q->mode != MERPATI__V1__FLAG_MODE__FLAGS_REPLACE)
			for (size_t j = 0; j < rec->n_flags; j++)
				if (q->mode != MERPATI__V1__FLAG_MODE__FLAGS_REMOVE ||
				    !has_flag(flags, nflags, rec->flags[j]))
					nf[nn++] = rec->flags[j];
		if (q->mode != MERPATI__V1__FLAG_MODE__FLAGS_REMOVE)
			for (size_t j = 0; j < nflags; j++)
				if (!has_flag(nf, nn, flags[j]))
					nf[nn++] = flags[j];
		bool changed = nn != rec->n_flags;
		for (size_t j = 0; j < nn && !changed; j++)
			if (!has_flag(rec->flags, rec->n_flags, nf[j]))
				changed = true;
		if (changed) {
			bool was_seen = has_flag(rec->flags, rec->n_flags, "\\Seen");
			bool is_seen = has_flag(nf, nn, "\\Seen");
			if (modseq == 0)
				modseq = next_modseq(mb);
			uint64_t old = rec->modseq;
			rec->flags = nf;
			rec->n_flags = nn;
			rec->modseq = modseq;
			struct sk k;
			sk_index(&k, shard, user, mb->id, m.uid[i]);
			if ((ret = txn_put_msg(r->pm, &k, &rec->base)) < 0 ||
			    (ret = put_change(r->pm, shard, user, mb->id, old, modseq, m.uid[i],
					      MERPATI__V1__CHANGE_KIND__CHANGE_FLAGS)) < 0)
				return ret;
			if (was_seen && !is_seen)
				mb->unseen++;
			else if (!was_seen && is_seen && mb->unseen > 0)
				mb->unseen--;
		}
		Merpati__V1__FlagUpdate *u = ALLOC(r->arena, Merpati__V1__FlagUpdate);
		if (u == NULL)
			return MP_ENOMEM;
		merpati__v1__flag_update__init(u);
		u->uid = m.uid[i];
		u->flags = rec->flags;
		u->n_flags = rec->n_flags;
		u->modseq = rec->modseq;
		rep->updated[rep->n_updated++] = u;
	}
	if (modseq != 0) {
		if ((ret = save_mailbox(r->pm, shard, user, mb)) < 0 ||
		    (ret = txn_event(r->pm, user, MERPATI__V1__WATCH_KIND__WATCH_MAILBOX, mb->id,
				     mb->highestmodseq)) < 0)
			return ret;
	}
	rep->highestmodseq = mb->highestmodseq;
	*rep_r = &rep->base;
	return 0;
}

/* Remove messages (already scanned) from a mailbox: index, change
 * tombstone, counters; body references dropped when drop_refs. */
static int remove_messages(struct rd *r, uint32_t shard, const char *user, AccountRec *a,
			   MailboxRec *mb, struct msgs *m, bool drop_refs)
{
	if (m->n == 0)
		return 0;
	uint64_t modseq = next_modseq(mb);
	int ret;
	for (size_t i = 0; i < m->n; i++) {
		IndexRec *rec = m->rec[i];
		struct sk k;
		sk_index(&k, shard, user, mb->id, m->uid[i]);
		if ((ret = txn_del(r->pm, CF_META, &k)) < 0 ||
		    (ret = put_change(r->pm, shard, user, mb->id, rec->modseq, modseq, m->uid[i],
				      MERPATI__V1__CHANGE_KIND__CHANGE_EXPUNGE)) < 0)
			return ret;
		if (drop_refs) {
			if (rec->blob_id.len != SHA_LEN)
				return MP_EIO;
			if ((ret = ref_change(r, shard, rec->blob_id.data, -1, NULL, 0)) < 0)
				return ret;
			a->used_bytes = a->used_bytes >= rec->size ? a->used_bytes - rec->size : 0;
			if (a->messages > 0)
				a->messages--;
		}
		if (mb->messages > 0)
			mb->messages--;
		mb->size = mb->size >= rec->size ? mb->size - rec->size : 0;
		if (!has_flag(rec->flags, rec->n_flags, "\\Seen") && mb->unseen > 0)
			mb->unseen--;
	}
	return txn_event(r->pm, user, MERPATI__V1__WATCH_KIND__WATCH_MAILBOX, mb->id,
			 mb->highestmodseq);
}

static int m_expunge(struct rd *r, uint32_t shard, const Merpati__V1__ExpungeRequest *q,
		     ProtobufCMessage **rep_r, const char **err_r)
{
	char *user;
	AccountRec *a;
	MailboxRec *mb;
	struct mp_uidset set;
	struct msgs m;
	int ret = open_mailbox(r, shard, q->user, q->mailbox, &user, &mb, err_r);
	if (ret < 0 || (ret = check_uidset(r->arena, q->uid_set, &set, err_r)) < 0)
		return ret;
	ret = scan_uids(r, shard, user, mb->id, &set, 0, 0, &m, NULL);
	mp_uidset_free(&set);
	if (ret < 0 || (ret = load_account(r, shard, user, &a, err_r)) < 0)
		return ret;
	if (q->only_deleted) {
		size_t keep = 0;
		for (size_t i = 0; i < m.n; i++) {
			if (!has_flag(m.rec[i]->flags, m.rec[i]->n_flags, "\\Deleted"))
				continue;
			m.uid[keep] = m.uid[i];
			m.rec[keep] = m.rec[i];
			keep++;
		}
		m.n = keep;
	}
	if ((ret = remove_messages(r, shard, user, a, mb, &m, true)) < 0)
		return ret;
	if (m.n > 0 && ((ret = save_mailbox(r->pm, shard, user, mb)) < 0 ||
			(ret = save_account(r->pm, shard, a)) < 0))
		return ret;
	Merpati__V1__ExpungeReply *rep = ALLOC(r->arena, Merpati__V1__ExpungeReply);
	if (rep == NULL)
		return MP_ENOMEM;
	merpati__v1__expunge_reply__init(rep);
	rep->expunged = m.uid;
	rep->n_expunged = m.n;
	rep->highestmodseq = mb->highestmodseq;
	*rep_r = &rep->base;
	return 0;
}

static int m_copy(struct rd *r, uint32_t shard, const Merpati__V1__CopyRequest *q, bool move,
		  ProtobufCMessage **rep_r, const char **err_r)
{
	char *user, *dname;
	AccountRec *a;
	MailboxRec *src, *dst;
	struct mp_uidset set;
	struct msgs m;
	int ret = open_mailbox(r, shard, q->user, q->mailbox, &user, &src, err_r);
	if (ret < 0 || (ret = norm_mailbox(r->arena, q->dest_mailbox, &dname, err_r)) < 0 ||
	    (ret = lookup_mailbox(r, shard, user, dname, &dst, err_r)) < 0 ||
	    (ret = check_uidset(r->arena, q->uid_set, &set, err_r)) < 0)
		return ret;
	if (src->id == dst->id) {
		mp_uidset_free(&set);
		*err_r = "source and destination are the same mailbox";
		return MP_EINVAL;
	}
	ret = scan_uids(r, shard, user, src->id, &set, 0, 0, &m, NULL);
	mp_uidset_free(&set);
	if (ret < 0 || (ret = load_account(r, shard, user, &a, err_r)) < 0)
		return ret;
	uint64_t add = 0;
	for (size_t i = 0; i < m.n; i++)
		add += m.rec[i]->size;
	if (!move && over_quota(a, add)) {
		*err_r = arena_errf(r->arena, "over quota: %s", user);
		return MP_ENOSPC;
	}
	if ((uint64_t)dst->uidnext + m.n >= UINT32_MAX) {
		*err_r = "destination mailbox has used every UID";
		return MP_ENOSPC;
	}
	Merpati__V1__CopyReply *rep = ALLOC(r->arena, Merpati__V1__CopyReply);
	if (rep == NULL)
		return MP_ENOMEM;
	merpati__v1__copy_reply__init(rep);
	rep->src_uids = m.uid;
	rep->n_src_uids = m.n;
	rep->dest_uids = mp_arena_alloc(r->arena, (m.n + 1) * sizeof(uint32_t));
	if (rep->dest_uids == NULL)
		return MP_ENOMEM;
	for (size_t i = 0; i < m.n; i++) {
		IndexRec *rec = m.rec[i];
		if (rec->blob_id.len != SHA_LEN)
			return MP_EIO;
		/* RFC 3501 §6.4.7: flags are kept; a copy is \Recent in its
		 * new mailbox (through recent_uid). */
		if (!move && (ret = ref_change(r, shard, rec->blob_id.data, 1, NULL, 0)) < 0)
			return ret;
		uint64_t msgs = a->messages, used = a->used_bytes;
		if ((ret = add_message(r, shard, user, a, dst, rec, &rep->dest_uids[i])) < 0)
			return ret;
		if (move) {
			a->messages = msgs;
			a->used_bytes = used;
		}
	}
	rep->n_dest_uids = m.n;
	rep->dest_uidvalidity = dst->uidvalidity;
	if (move && (ret = remove_messages(r, shard, user, a, src, &m, false)) < 0)
		return ret;
	if ((ret = save_mailbox(r->pm, shard, user, dst)) < 0 ||
	    (move && (ret = save_mailbox(r->pm, shard, user, src)) < 0) ||
	    (ret = save_account(r->pm, shard, a)) < 0)
		return ret;
	*rep_r = &rep->base;
	return 0;
}

static int r_changes_since(struct rd *r, const Merpati__V1__ChangesSinceRequest *q,
			   ProtobufCMessage **rep_r, const char **err_r)
{
	char *user;
	MailboxRec *mb;
	uint32_t shard = user_shard(r, q->user);
	int ret = open_mailbox(r, shard, q->user, q->mailbox, &user, &mb, err_r);
	if (ret < 0)
		return ret;
	if (q->modseq > mb->highestmodseq) {
		*err_r = arena_errf(r->arena, "modseq %llu is above the mailbox's highest %llu",
				    (unsigned long long)q->modseq,
				    (unsigned long long)mb->highestmodseq);
		return MP_ESTALE;
	}
	uint32_t limit = clamp_limit(q->limit);
	Merpati__V1__ChangesSinceReply *rep = ALLOC(r->arena, Merpati__V1__ChangesSinceReply);
	if (rep == NULL)
		return MP_ENOMEM;
	merpati__v1__changes_since_reply__init(rep);
	rep->uidvalidity = mb->uidvalidity;
	rep->highestmodseq = mb->highestmodseq;
	rep->changes = mp_arena_alloc(r->arena, (limit + 1) * sizeof(*rep->changes));
	if (rep->changes == NULL)
		return MP_ENOMEM;
	struct sk from, pre, up;
	struct it it;
	sk_change_mb(&pre, shard, user, mb->id);
	sk_upper(&up, &pre);
	from = pre;
	sk_be64(&from, q->modseq + 1);
	it_open(r, CF_META, &from, &up, &it);
	for (; it_valid(&it); it_next(&it)) {
		size_t kl, vl;
		const char *k = it_key(&it, &kl);
		const char *v = it_val(&it, &vl);
		Merpati__Rec__ChangeRec *c;
		if (rep->n_changes == limit) {
			rep->more = true;
			break;
		}
		if (kl != pre.len + 12 ||
		    (ret = rd_unpack(r, &merpati__rec__change_rec__descriptor, v, vl, &c)) < 0) {
			ret = MP_EIO;
			break;
		}
		Merpati__V1__Change *ch = ALLOC(r->arena, Merpati__V1__Change);
		if (ch == NULL) {
			ret = MP_ENOMEM;
			break;
		}
		merpati__v1__change__init(ch);
		ch->uid = c->uid;
		ch->modseq = mp_be64_get(k + pre.len);
		ch->kind = c->kind;
		if (c->kind != MERPATI__V1__CHANGE_KIND__CHANGE_EXPUNGE) {
			struct sk ik;
			IndexRec *rec;
			sk_index(&ik, shard, user, mb->id, c->uid);
			if (rd_get_msg(r, &ik, &merpati__rec__index_rec__descriptor, &rec) == 0) {
				ch->flags = rec->flags;
				ch->n_flags = rec->n_flags;
			}
		}
		rep->changes[rep->n_changes++] = ch;
	}
	int cr = it_close(&it);
	if (ret == 0)
		ret = cr;
	if (ret < 0)
		return ret;
	*rep_r = &rep->base;
	return 0;
}

static int r_node_info(struct rd *r, ProtobufCMessage **rep_r)
{
	struct store *st = r->st;
	struct store_stats stats;
	Merpati__V1__NodeInfoReply *rep = ALLOC(r->arena, Merpati__V1__NodeInfoReply);
	if (rep == NULL)
		return MP_ENOMEM;
	merpati__v1__node_info_reply__init(rep);
	store_get_stats(st, &stats);
	rep->node_id = st->node_id;
	rep->shard_count = st->o.shards;
	rep->group_commits = stats.groups;
	rep->mutations = stats.mutations;
	rep->shard_lsn = mp_arena_alloc(r->arena, st->o.shards * sizeof(uint64_t));
	if (rep->shard_lsn == NULL)
		return MP_ENOMEM;
	/* From the snapshot, not the commit thread's counters. */
	for (uint32_t s = 0; s < st->o.shards; s++) {
		struct sk k;
		char *v;
		size_t len;
		sk_applied(&k, s);
		int ret = rd_get(r, CF_META, &k, &v, &len);
		if (ret == 0 && len == 16) {
			rep->shard_lsn[s] = mp_be64_get(v + 8);
			if (mp_be64_get(v) > rep->epoch)
				rep->epoch = (uint32_t)mp_be64_get(v);
		}
		else if (ret != MP_ENOENT && ret != 0)
			return ret;
	}
	rep->n_shard_lsn = st->o.shards;
	*rep_r = &rep->base;
	return 0;
}

/* ------------------------------------------------------------ aliases */

#define ALIAS_TARGETS_MAX 100

static int load_alias(struct rd *r, uint32_t shard, const char *alias, AliasRec **rec_r,
		      const char **err_r)
{
	struct sk k;
	sk_alias(&k, shard, alias);
	int ret = rd_get_msg(r, &k, &merpati__rec__alias_rec__descriptor, rec_r);
	if (ret == MP_ENOENT)
		*err_r = arena_errf(r->arena, "no such alias: %s", alias);
	return ret;
}

static Merpati__V1__AliasReply *alias_msg(struct mp_arena *a, const AliasRec *rec,
					  uint32_t shard)
{
	Merpati__V1__AliasReply *m = ALLOC(a, Merpati__V1__AliasReply);
	if (m == NULL)
		return NULL;
	merpati__v1__alias_reply__init(m);
	m->alias = rec->alias;
	m->targets = rec->targets;
	m->n_targets = rec->n_targets;
	m->updated = rec->updated;
	m->shard = shard;
	return m;
}

/* Create or replace. Checks: the alias is a valid address of an existing
 * domain and not an account; 1..ALIAS_TARGETS_MAX valid targets, none the
 * alias itself. Targets may be anywhere (forwarding); they are normalised
 * and duplicates dropped. */
static int m_set_alias(struct rd *r, uint32_t shard, const Merpati__V1__AliasRequest *q,
		       ProtobufCMessage **rep_r, const char **err_r)
{
	char *alias;
	AccountRec *acct;
	int ret = norm_user(r->arena, q->alias, &alias, err_r);
	if (ret < 0)
		return ret;
	if (q->n_targets == 0 || q->n_targets > ALIAS_TARGETS_MAX) {
		*err_r = arena_errf(r->arena, "an alias needs 1 to %d targets", ALIAS_TARGETS_MAX);
		return MP_EINVAL;
	}
	char **targets = mp_arena_alloc(r->arena, q->n_targets * sizeof(*targets));
	size_t n = 0;
	if (targets == NULL)
		return MP_ENOMEM;
	for (size_t i = 0; i < q->n_targets; i++) {
		char *t;
		const char *e = NULL;
		if (norm_user(r->arena, q->targets[i], &t, &e) < 0) {
			*err_r = arena_errf(r->arena, "target %zu: %s", i + 1, e ? e : "invalid");
			return MP_EINVAL;
		}
		if (strcmp(t, alias) == 0) {
			*err_r = arena_errf(r->arena, "%s cannot be its own target", alias);
			return MP_EINVAL;
		}
		bool dup = false;
		for (size_t j = 0; j < n && !dup; j++)
			dup = strcmp(targets[j], t) == 0;
		if (!dup)
			targets[n++] = t;
	}
	if ((ret = check_local_domain(r, alias, err_r)) < 0)
		return ret;
	ret = load_account(r, shard, alias, &acct, err_r);
	if (ret == 0) {
		*err_r = arena_errf(r->arena, "%s is an account, not an alias", alias);
		return MP_EEXIST;
	}
	if (ret != MP_ENOENT)
		return ret;
	AliasRec rec = MERPATI__REC__ALIAS_REC__INIT;
	struct sk k;
	rec.alias = alias;
	rec.targets = targets;
	rec.n_targets = n;
	rec.updated = now_s();
	sk_alias(&k, shard, alias);
	if ((ret = txn_put_msg(r->pm, &k, &rec.base)) < 0)
		return ret;
	Merpati__V1__AliasReply *rep = alias_msg(r->arena, &rec, shard);
	if (rep == NULL)
		return MP_ENOMEM;
	*rep_r = &rep->base;
	return 0;
}

static int m_delete_alias(struct rd *r, uint32_t shard, const Merpati__V1__AliasRequest *q,
			  ProtobufCMessage **rep_r, const char **err_r)
{
	char *alias;
	AliasRec *rec;
	struct sk k;
	int ret = norm_user(r->arena, q->alias, &alias, err_r);
	if (ret < 0 || (ret = load_alias(r, shard, alias, &rec, err_r)) < 0)
		return ret;
	sk_alias(&k, shard, alias);
	if ((ret = txn_del(r->pm, CF_META, &k)) < 0)
		return ret;
	*rep_r = empty_reply(r->arena);
	return *rep_r ? 0 : MP_ENOMEM;
}

static int r_get_alias(struct rd *r, const Merpati__V1__AliasRequest *q,
		       ProtobufCMessage **rep_r, const char **err_r)
{
	char *alias;
	AliasRec *rec;
	int ret = norm_user(r->arena, q->alias, &alias, err_r);
	if (ret < 0)
		return ret;
	uint32_t shard = mp_shard_of(alias, strlen(alias), r->st->o.shards);
	if ((ret = load_alias(r, shard, alias, &rec, err_r)) < 0)
		return ret;
	Merpati__V1__AliasReply *rep = alias_msg(r->arena, rec, shard);
	if (rep == NULL)
		return MP_ENOMEM;
	*rep_r = &rep->base;
	return 0;
}

static int check_shard(struct rd *r, uint32_t shard, const char **err_r)
{
	if (shard >= r->st->o.shards) {
		*err_r = arena_errf(r->arena, "shard %u does not exist (the cluster has %u)",
				    shard, r->st->o.shards);
		return MP_EINVAL;
	}
	return 0;
}

/* The aliases of one shard in key order; "after" names the last alias of
 * the previous page. */
static int r_list_aliases(struct rd *r, const Merpati__V1__ListAliasesRequest *q,
			  ProtobufCMessage **rep_r, const char **err_r)
{
	uint32_t limit = clamp_limit(q->limit);
	char *domain = NULL;
	int ret;
	if ((ret = check_shard(r, q->shard, err_r)) < 0)
		return ret;
	if (q->domain && *q->domain &&
	    (ret = norm_domain(r->arena, q->domain, &domain, err_r)) < 0)
		return ret;
	if (q->after && strlen(q->after) > MP_USER_MAX) {
		*err_r = "after is too long";
		return MP_EINVAL;
	}
	Merpati__V1__ListAliasesReply *rep = ALLOC(r->arena, Merpati__V1__ListAliasesReply);
	if (rep == NULL)
		return MP_ENOMEM;
	merpati__v1__list_aliases_reply__init(rep);
	rep->aliases = mp_arena_alloc(r->arena, (limit + 1) * sizeof(*rep->aliases));
	if (rep->aliases == NULL)
		return MP_ENOMEM;
	size_t dl = domain ? strlen(domain) : 0;
	struct sk pre, from, up;
	struct it it;
	sk_alias_prefix(&pre, q->shard);
	sk_upper(&up, &pre);
	from = pre;
	if (q->after && *q->after) {
		sk_str(&from, q->after);
		sk_bytes(&from, "", 1); /* strictly after */
	}
	ret = 0;
	it_open(r, CF_META, &from, &up, &it);
	for (; it_valid(&it); it_next(&it)) {
		size_t kl, vl;
		const char *k = it_key(&it, &kl);
		const char *v = it_val(&it, &vl);
		AliasRec *rec;
		if (domain && !(kl > pre.len + dl + 1 && k[kl - dl - 1] == '@' &&
				memcmp(k + kl - dl, domain, dl) == 0))
			continue;
		if (rep->n_aliases == limit) {
			rep->more = true;
			break;
		}
		if ((ret = rd_unpack(r, &merpati__rec__alias_rec__descriptor, v, vl, &rec)) < 0)
			break;
		Merpati__V1__AliasReply *m = alias_msg(r->arena, rec, q->shard);
		if (m == NULL) {
			ret = MP_ENOMEM;
			break;
		}
		rep->aliases[rep->n_aliases++] = m;
	}
	int cr = it_close(&it);
	if (ret == 0)
		ret = cr;
	if (ret < 0)
		return ret;
	*rep_r = &rep->base;
	return 0;
}

/* For every RCPT TO: account (with its state), alias (its targets, not
 * expanded) or nothing, from one snapshot of the address's shard. */
static int r_resolve(struct rd *r, const Merpati__V1__UserRequest *q,
		     ProtobufCMessage **rep_r, const char **err_r)
{
	char *user;
	AccountRec *acct;
	AliasRec *alias;
	const char *e = NULL;
	int ret = norm_user(r->arena, q->user, &user, err_r);
	if (ret < 0)
		return ret;
	uint32_t shard = mp_shard_of(user, strlen(user), r->st->o.shards);
	Merpati__V1__ResolveReply *rep = ALLOC(r->arena, Merpati__V1__ResolveReply);
	if (rep == NULL)
		return MP_ENOMEM;
	merpati__v1__resolve_reply__init(rep);
	rep->user = user;
	rep->shard = shard;
	ret = load_account(r, shard, user, &acct, &e);
	if (ret == 0) {
		rep->kind = MERPATI__V1__RESOLVE_KIND__RESOLVE_ACCOUNT;
		rep->state = acct->state;
	} else if (ret == MP_ENOENT) {
		ret = load_alias(r, shard, user, &alias, &e);
		if (ret == 0) {
			rep->kind = MERPATI__V1__RESOLVE_KIND__RESOLVE_ALIAS;
			rep->targets = alias->targets;
			rep->n_targets = alias->n_targets;
		} else if (ret == MP_ENOENT) {
			rep->kind = MERPATI__V1__RESOLVE_KIND__RESOLVE_NONE;
			ret = 0;
		}
	}
	if (ret < 0)
		return ret;
	*rep_r = &rep->base;
	return 0;
}

/* ------------------------------------------------------------ queue */

#define QUEUE_ID_HEX 16
#define QUEUE_ID_MAX 32           /* "4294967295." + 16 hex fits */
#define QUEUE_RCPTS_MAX 1000
#define QUEUE_TEXT_MAX 1000       /* reply texts, last_error */
#define QUEUE_ENVID_MAX 100       /* RFC 3461 §4.4 */
#define QUEUE_ORCPT_MAX 500       /* RFC 3461 §4.2: 500 characters */
#define QUEUE_OWNER_MAX 128
#define QUEUE_LEASE_DEFAULT_MS 300000u
#define QUEUE_LEASE_MAX_MS 86400000u
#define QUEUE_CLAIM_DEFAULT 100
#define QUEUE_CLAIM_MAX 1000
#define QUEUE_CLAIM_BYTES_DEFAULT (16u * 1024 * 1024)
#define QUEUE_NOTIFY_ALL 15u      /* SUCCESS 1, FAILURE 2, DELAY 4, NEVER 8 */
#define QUEUE_NOTIFY_NEVER 8u
#define QUEUE_CODE_MAX 999
#define QUEUE_ID_TRIES 4
/* A list page stops here: an entry may hold 1000 recipients with their
 * reply texts, so a count alone does not bound the reply. */
#define QUEUE_LIST_BYTES (4u * 1024 * 1024)

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Printable ASCII without space, 1..max bytes (owners, ENVID, ORCPT). */
static int check_token(struct mp_arena *a, const char *s, size_t max, bool may_be_empty,
		       const char *what, const char **err_r)
{
	size_t n = s ? strlen(s) : 0;
	if ((n == 0 && !may_be_empty) || n > max) {
		*err_r = arena_errf(a, "%s must be %d to %zu bytes", what, may_be_empty ? 0 : 1,
				    max);
		return MP_EINVAL;
	}
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f) {
			*err_r = arena_errf(a, "%s holds a byte that is not printable ASCII", what);
			return MP_EINVAL;
		}
	return 0;
}

/* Free text for people (reply texts, notes): UTF-8, at most max bytes. */
static int check_text(struct mp_arena *a, const char *s, size_t max, const char *what,
		      const char **err_r)
{
	size_t n = s ? strlen(s) : 0;
	if (n > max) {
		*err_r = arena_errf(a, "%s is longer than %zu bytes", what, max);
		return MP_EINVAL;
	}
	if (!utf8_valid((const unsigned char *)(s ? s : ""), n)) {
		*err_r = arena_errf(a, "%s is not valid UTF-8", what);
		return MP_EINVAL;
	}
	return 0;
}

/* An envelope address as the frontend gives it: checked like a user
 * (mp_user_normalize's rules) but stored with its case, since a remote
 * local part may be case-sensitive (RFC 5321 §2.4). */
static int check_envelope_addr(struct mp_arena *a, const char *s, const char *what,
			       const char **err_r)
{
	char buf[MP_USER_MAX + 1];
	const char *e = NULL;
	if (s == NULL || mp_user_normalize(s, strlen(s), buf, sizeof(buf), &e) < 0) {
		*err_r = arena_errf(a, "%s: %s", what, s ? e : "missing");
		return MP_EINVAL;
	}
	return 0;
}

static bool rcpt_state_ok(uint32_t st)
{
	return st == MERPATI__V1__QUEUE_RCPT_STATE__RCPT_PENDING ||
	       st == MERPATI__V1__QUEUE_RCPT_STATE__RCPT_DELIVERED ||
	       st == MERPATI__V1__QUEUE_RCPT_STATE__RCPT_FAILED;
}

/* "{shard}.{16 lowercase hex}" of exactly this shard. */
static int check_queue_id(struct mp_arena *a, const char *id, uint32_t shard,
			  const char **err_r)
{
	char want[16];
	size_t n = id ? strlen(id) : 0;
	int wl = snprintf(want, sizeof(want), "%u.", shard);
	const char *dot = id ? strchr(id, '.') : NULL;
	if (dot == NULL || n > QUEUE_ID_MAX || n != (size_t)(dot - id) + 1 + QUEUE_ID_HEX) {
		*err_r = arena_errf(a, "bad queue id \"%.40s\": expected SHARD.%d-HEX-DIGITS",
				    id ? id : "", QUEUE_ID_HEX);
		return MP_EINVAL;
	}
	for (const char *p = dot + 1; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))) {
			*err_r = arena_errf(a, "bad queue id \"%s\": not lowercase hex", id);
			return MP_EINVAL;
		}
	if ((size_t)(dot - id) + 1 != (size_t)wl || memcmp(id, want, (size_t)wl) != 0) {
		*err_r = arena_errf(a, "queue id %s is not of shard %u", id, shard);
		return MP_EINVAL;
	}
	return 0;
}

/* A new id: from the request id when there is one (a retry after the node
 * forgot the request still finds its entry), else random. */
static int make_queue_id(struct mp_arena *a, uint32_t shard, const char *rid, int attempt,
			 char **id_r)
{
	uint8_t h[SHA_LEN];
	if (rid != NULL && attempt == 0) {
		/* rid was checked by ops_request_id: at most RID_MAX bytes */
		static const char tag[] = "merpati-queue-id:";
		char in[sizeof(tag) + RID_MAX];
		size_t rl = strlen(rid);
		if (rl > RID_MAX)
			return MP_EINVAL;
		memcpy(in, tag, sizeof(tag) - 1);
		memcpy(in + sizeof(tag) - 1, rid, rl);
		SHA256((const uint8_t *)in, sizeof(tag) - 1 + rl, h);
	} else {
		size_t got = 0;
		while (got < 8) {
			ssize_t n = getrandom(h + got, 8 - got, 0);
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0)
				return MP_EIO;
			got += (size_t)n;
		}
	}
	char *id = mp_arena_alloc(a, QUEUE_ID_MAX + 1);
	if (id == NULL)
		return MP_ENOMEM;
	snprintf(id, QUEUE_ID_MAX + 1, "%u.%016llx", shard,
		 (unsigned long long)mp_be64_get(h));
	*id_r = id;
	return 0;
}

/* The entry with this id and the due time its key is stored under. */
static int queue_load(struct rd *r, uint32_t shard, const char *id, QueueRec **rec_r,
		      uint64_t *due_r, const char **err_r)
{
	struct sk k;
	char *v;
	size_t len;
	sk_queue_id(&k, shard, id);
	int ret = rd_get(r, CF_META, &k, &v, &len);
	if (ret == MP_ENOENT) {
		*err_r = arena_errf(r->arena, "no such queue entry: %s", id);
		return ret;
	}
	if (ret < 0)
		return ret;
	if (len != 8)
		return MP_EIO;
	*due_r = mp_be64_get(v);
	sk_queue_due(&k, shard, *due_r, id);
	ret = rd_get_msg(r, &k, &merpati__rec__queue_rec__descriptor, rec_r);
	if (ret == MP_ENOENT) {
		mp_log_error("store_queue_dangling_id", "id=%s", id);
		return MP_EIO;
	}
	return ret;
}

/* Write rec under its due_ms, moving it from old_due (UINT64_MAX: new). */
static int queue_save(struct pm *pm, uint32_t shard, const QueueRec *rec, uint64_t old_due)
{
	struct sk k;
	char v[8];
	int ret;
	if (old_due != UINT64_MAX && old_due != rec->due_ms) {
		sk_queue_due(&k, shard, old_due, rec->id);
		if ((ret = txn_del(pm, CF_META, &k)) < 0)
			return ret;
	}
	sk_queue_due(&k, shard, rec->due_ms, rec->id);
	if ((ret = txn_put_msg(pm, &k, &rec->base)) < 0)
		return ret;
	if (old_due == rec->due_ms)
		return 0;
	sk_queue_id(&k, shard, rec->id);
	mp_be64_put(v, rec->due_ms);
	return txn_put_raw(pm, CF_META, &k, v, 8);
}

static int queue_remove(struct pm *pm, uint32_t shard, const char *id, uint64_t due)
{
	struct sk k;
	int ret;
	sk_queue_due(&k, shard, due, id);
	if ((ret = txn_del(pm, CF_META, &k)) < 0)
		return ret;
	sk_queue_id(&k, shard, id);
	if ((ret = txn_del(pm, CF_META, &k)) < 0)
		return ret;
	sk_queue_body(&k, shard, id);
	return txn_del(pm, CF_BLOB, &k);
}

static int queue_body(struct rd *r, uint32_t shard, const char *id, ProtobufCBinaryData *b)
{
	struct sk k;
	char *v;
	size_t len;
	sk_queue_body(&k, shard, id);
	int ret = rd_get(r, CF_BLOB, &k, &v, &len);
	if (ret == MP_ENOENT) {
		mp_log_error("store_queue_missing_body", "id=%s", id);
		return MP_EIO;
	}
	if (ret < 0)
		return ret;
	b->data = (uint8_t *)v;
	b->len = len;
	return 0;
}

static Merpati__V1__QueueEntry *queue_entry_msg(struct mp_arena *a, const QueueRec *rec)
{
	Merpati__V1__QueueEntry *m = ALLOC(a, Merpati__V1__QueueEntry);
	if (m == NULL)
		return NULL;
	merpati__v1__queue_entry__init(m);
	m->rcpts = mp_arena_alloc(a, (rec->n_rcpts + 1) * sizeof(*m->rcpts));
	if (m->rcpts == NULL)
		return NULL;
	for (size_t i = 0; i < rec->n_rcpts; i++) {
		const QueueRcptRec *rr = rec->rcpts[i];
		Merpati__V1__QueueRcpt *qr = ALLOC(a, Merpati__V1__QueueRcpt);
		if (qr == NULL)
			return NULL;
		merpati__v1__queue_rcpt__init(qr);
		qr->address = rr->address;
		qr->state = (Merpati__V1__QueueRcptState)rr->state;
		qr->last_code = rr->last_code;
		qr->last_text = rr->last_text;
		qr->notify = rr->notify;
		qr->orcpt = rr->orcpt;
		m->rcpts[m->n_rcpts++] = qr;
	}
	m->id = rec->id;
	m->sender = rec->sender;
	m->created_ms = rec->created_ms;
	m->due_ms = rec->due_ms;
	m->expires_ms = rec->expires_ms;
	m->attempts = rec->attempts;
	m->claimed_by = rec->claimed_by;
	m->claim_until_ms = rec->claim_until_ms;
	m->envid = rec->envid;
	m->ret_full = rec->ret_full;
	m->size = rec->size;
	m->last_error = rec->last_error;
	m->from_user = rec->from_user;
	return m;
}

static int check_queue_entry(struct mp_arena *a, const Merpati__V1__QueueEntry *e,
			     const char **err_r)
{
	int ret;
	size_t pending = 0;
	if (e == NULL) {
		*err_r = "the queue entry is missing";
		return MP_EINVAL;
	}
	if (e->sender && *e->sender &&
	    (ret = check_envelope_addr(a, e->sender, "sender", err_r)) < 0)
		return ret;
	if (e->n_rcpts == 0 || e->n_rcpts > QUEUE_RCPTS_MAX) {
		*err_r = arena_errf(a, "a queue entry needs 1 to %d recipients", QUEUE_RCPTS_MAX);
		return MP_EINVAL;
	}
	for (size_t i = 0; i < e->n_rcpts; i++) {
		const Merpati__V1__QueueRcpt *rc = e->rcpts[i];
		const char *what = arena_errf(a, "recipient %zu", i + 1);
		if ((ret = check_envelope_addr(a, rc->address, what, err_r)) < 0 ||
		    (ret = check_text(a, rc->last_text, QUEUE_TEXT_MAX, what, err_r)) < 0 ||
		    (ret = check_token(a, rc->orcpt, QUEUE_ORCPT_MAX, true, "ORCPT", err_r)) < 0)
			return ret;
		if (!rcpt_state_ok((uint32_t)rc->state) || rc->last_code > QUEUE_CODE_MAX) {
			*err_r = arena_errf(a, "recipient %zu: unknown state or reply code", i + 1);
			return MP_EINVAL;
		}
		/* RFC 3461 §4.1: NEVER stands alone. */
		if ((rc->notify & ~QUEUE_NOTIFY_ALL) != 0 ||
		    ((rc->notify & QUEUE_NOTIFY_NEVER) && rc->notify != QUEUE_NOTIFY_NEVER)) {
			*err_r = arena_errf(a, "recipient %zu: bad NOTIFY bits %u", i + 1,
					    rc->notify);
			return MP_EINVAL;
		}
		if (rc->state == MERPATI__V1__QUEUE_RCPT_STATE__RCPT_PENDING)
			pending++;
	}
	if (pending == 0) {
		*err_r = "no recipient is pending: nothing to deliver";
		return MP_EINVAL;
	}
	if (e->from_user && *e->from_user &&
	    (ret = check_envelope_addr(a, e->from_user, "from_user", err_r)) < 0)
		return ret;
	return check_token(a, e->envid, QUEUE_ENVID_MAX, true, "ENVID", err_r);
}

static int m_queue_add(struct rd *r, uint32_t shard, const Merpati__V1__QueueAddRequest *q,
		       ProtobufCMessage **rep_r, const char **err_r)
{
	const Merpati__V1__QueueEntry *e = q->entry;
	int ret;
	if ((ret = check_shard(r, shard, err_r)) < 0 ||
	    (ret = check_queue_entry(r->arena, e, err_r)) < 0 ||
	    (ret = check_body(r, q->body, err_r)) < 0)
		return ret;
	uint64_t now = now_ms();
	const char *rid = ops_request_id(&q->base);
	char *id = NULL;
	struct sk k;
	char *v;
	size_t len;
	Merpati__V1__QueueAddReply *rep = ALLOC(r->arena, Merpati__V1__QueueAddReply);
	if (rep == NULL)
		return MP_ENOMEM;
	merpati__v1__queue_add_reply__init(rep);
	for (int attempt = 0; attempt < QUEUE_ID_TRIES; attempt++) {
		if ((ret = make_queue_id(r->arena, shard, rid, attempt, &id)) < 0)
			return ret;
		sk_queue_id(&k, shard, id);
		ret = rd_get(r, CF_META, &k, &v, &len);
		if (ret == MP_ENOENT)
			break;
		if (ret < 0)
			return ret;
		if (rid != NULL && attempt == 0) {
			/* The same request, retried after its reply was
			 * forgotten: its entry is already queued. */
			rep->id = id;
			*rep_r = &rep->base;
			return 0;
		}
		id = NULL;
	}
	if (id == NULL) {
		*err_r = "could not find a free queue id";
		return MP_EIO;
	}
	QueueRec rec = MERPATI__REC__QUEUE_REC__INIT;
	rec.rcpts = mp_arena_alloc(r->arena, e->n_rcpts * sizeof(*rec.rcpts));
	if (rec.rcpts == NULL)
		return MP_ENOMEM;
	for (size_t i = 0; i < e->n_rcpts; i++) {
		const Merpati__V1__QueueRcpt *rc = e->rcpts[i];
		QueueRcptRec *rr = ALLOC(r->arena, QueueRcptRec);
		if (rr == NULL)
			return MP_ENOMEM;
		merpati__rec__queue_rcpt_rec__init(rr);
		rr->address = rc->address;
		rr->state = (uint32_t)rc->state;
		rr->last_code = rc->last_code;
		rr->last_text = rc->last_text ? rc->last_text : (char *)"";
		rr->notify = rc->notify;
		rr->orcpt = rc->orcpt ? rc->orcpt : (char *)"";
		rec.rcpts[rec.n_rcpts++] = rr;
	}
	rec.id = id;
	rec.sender = e->sender ? e->sender : (char *)"";
	rec.created_ms = now;
	rec.due_ms = e->due_ms ? e->due_ms : now;
	rec.expires_ms = e->expires_ms;
	rec.claimed_by = "";
	rec.envid = e->envid ? e->envid : (char *)"";
	rec.ret_full = e->ret_full;
	rec.size = q->body.len;
	rec.last_error = "";
	rec.from_user = e->from_user ? e->from_user : (char *)"";
	if (*rec.from_user && (ret = norm_user(r->arena, e->from_user, &rec.from_user, err_r)) < 0)
		return ret;
	sk_queue_body(&k, shard, id);
	if ((ret = txn_put_raw(r->pm, CF_BLOB, &k, q->body.data, q->body.len)) < 0 ||
	    (ret = queue_save(r->pm, shard, &rec, UINT64_MAX)) < 0)
		return ret;
	rep->id = id;
	*rep_r = &rep->base;
	return 0;
}

/* Takes due entries in due order (the iterator reads the committed state;
 * the keys this claim writes are all in the future, and no other claim of
 * the shard is in the group: they share its conflict key). */
static int m_queue_claim(struct rd *r, uint32_t shard, const Merpati__V1__QueueClaimRequest *q,
			 ProtobufCMessage **rep_r, const char **err_r)
{
	int ret;
	if ((ret = check_shard(r, shard, err_r)) < 0 ||
	    (ret = check_token(r->arena, q->owner, QUEUE_OWNER_MAX, false, "owner", err_r)) < 0)
		return ret;
	if (q->lease_ms > QUEUE_LEASE_MAX_MS) {
		*err_r = arena_errf(r->arena, "lease_ms above %u", QUEUE_LEASE_MAX_MS);
		return MP_EINVAL;
	}
	uint64_t lease = q->lease_ms ? q->lease_ms : QUEUE_LEASE_DEFAULT_MS;
	uint32_t limit = q->limit == 0 ? QUEUE_CLAIM_DEFAULT
				       : q->limit > QUEUE_CLAIM_MAX ? QUEUE_CLAIM_MAX : q->limit;
	uint64_t cap = r->st->o.max_message_size;
	uint64_t max_bytes = q->max_bytes ? q->max_bytes : QUEUE_CLAIM_BYTES_DEFAULT;
	if (max_bytes > cap)
		max_bytes = cap;
	uint64_t now = now_ms(), until = now + lease, total = 0;
	Merpati__V1__QueueClaimReply *rep = ALLOC(r->arena, Merpati__V1__QueueClaimReply);
	if (rep == NULL)
		return MP_ENOMEM;
	merpati__v1__queue_claim_reply__init(rep);
	rep->now_ms = now;
	rep->entries = mp_arena_alloc(r->arena, limit * sizeof(*rep->entries));
	if (rep->entries == NULL)
		return MP_ENOMEM;
	struct sk pre;
	struct it it;
	sk_queue_due_prefix(&pre, shard);
	it_open(r, CF_META, &pre, NULL, &it);
	for (; it_valid(&it); it_next(&it)) {
		size_t kl, vl;
		const char *k = it_key(&it, &kl);
		const char *v = it_val(&it, &vl);
		QueueRec *rec;
		if (kl <= pre.len + 8) {
			ret = MP_EIO;
			break;
		}
		uint64_t due = mp_be64_get(k + pre.len);
		if (due > now || rep->n_entries == limit) {
			rep->next_due_ms = due;
			break;
		}
		if ((ret = rd_unpack(r, &merpati__rec__queue_rec__descriptor, v, vl, &rec)) < 0)
			break;
		Merpati__V1__QueuedMessage *qm = ALLOC(r->arena, Merpati__V1__QueuedMessage);
		if (qm == NULL) {
			ret = MP_ENOMEM;
			break;
		}
		merpati__v1__queued_message__init(qm);
		if ((ret = queue_body(r, shard, rec->id, &qm->body)) < 0)
			break;
		uint64_t size = vl + qm->body.len;
		if (rep->n_entries > 0 && total + size > max_bytes) {
			rep->next_due_ms = due;
			break;
		}
		total += size;
		rec->claimed_by = (char *)q->owner;
		rec->claim_until_ms = until;
		rec->due_ms = until;
		rec->attempts++;
		if ((ret = queue_save(r->pm, shard, rec, due)) < 0)
			break;
		if ((qm->entry = queue_entry_msg(r->arena, rec)) == NULL) {
			ret = MP_ENOMEM;
			break;
		}
		rep->entries[rep->n_entries++] = qm;
	}
	int cr = it_close(&it);
	if (ret == 0)
		ret = cr;
	if (ret < 0)
		return ret;
	*rep_r = &rep->base;
	return 0;
}

static int m_queue_update(struct rd *r, uint32_t shard, const Merpati__V1__QueueUpdateRequest *q,
			  ProtobufCMessage **rep_r, const char **err_r)
{
	QueueRec *rec;
	uint64_t due;
	int ret;
	if ((ret = check_shard(r, shard, err_r)) < 0 ||
	    (ret = check_queue_id(r->arena, q->id, shard, err_r)) < 0 ||
	    (ret = check_token(r->arena, q->owner, QUEUE_OWNER_MAX, false, "owner", err_r)) < 0 ||
	    (ret = check_text(r->arena, q->last_error, QUEUE_TEXT_MAX, "last_error", err_r)) < 0 ||
	    (ret = queue_load(r, shard, q->id, &rec, &due, err_r)) < 0)
		return ret;
	uint64_t now = now_ms();
	/* Only the runner holding a live claim may report: after the lease
	 * another runner may have the entry (and would deliver it again). */
	if (rec->claimed_by == NULL || strcmp(rec->claimed_by, q->owner) != 0) {
		*err_r = rec->claimed_by && *rec->claimed_by
				 ? arena_errf(r->arena, "queue entry %s is claimed by %s, not %s",
					      q->id, rec->claimed_by, q->owner)
				 : arena_errf(r->arena, "queue entry %s is not claimed "
					      "(its lease ended or it was retried)", q->id);
		return MP_ESTATE;
	}
	if (rec->claim_until_ms <= now) {
		*err_r = arena_errf(r->arena,
				    "the claim of %s on queue entry %s expired %llu ms ago",
				    q->owner, q->id,
				    (unsigned long long)(now - rec->claim_until_ms));
		return MP_ESTATE;
	}
	for (size_t i = 0; i < q->n_rcpts; i++) {
		const Merpati__V1__RcptUpdate *u = q->rcpts[i];
		if (u->index >= rec->n_rcpts) {
			*err_r = arena_errf(r->arena, "recipient index %u: the entry has %zu",
					    u->index, rec->n_rcpts);
			return MP_EINVAL;
		}
		if (!rcpt_state_ok((uint32_t)u->state) || u->code > QUEUE_CODE_MAX) {
			*err_r = arena_errf(r->arena,
					    "recipient index %u: unknown state or reply code",
					    u->index);
			return MP_EINVAL;
		}
		if ((ret = check_text(r->arena, u->text, QUEUE_TEXT_MAX, "reply text", err_r)) < 0)
			return ret;
	}
	for (size_t i = 0; i < q->n_rcpts; i++) {
		const Merpati__V1__RcptUpdate *u = q->rcpts[i];
		QueueRcptRec *rr = rec->rcpts[u->index];
		rr->state = (uint32_t)u->state;
		rr->last_code = u->code;
		rr->last_text = u->text ? u->text : (char *)"";
	}
	Merpati__V1__QueueUpdateReply *rep = ALLOC(r->arena, Merpati__V1__QueueUpdateReply);
	if (rep == NULL)
		return MP_ENOMEM;
	merpati__v1__queue_update_reply__init(rep);
	for (size_t i = 0; i < rec->n_rcpts; i++)
		if (rec->rcpts[i]->state == MERPATI__V1__QUEUE_RCPT_STATE__RCPT_PENDING)
			rep->pending++;
	if (rep->pending == 0) {
		rep->deleted = true;
		ret = queue_remove(r->pm, shard, rec->id, due);
	} else {
		rec->last_error = q->last_error ? q->last_error : (char *)"";
		rec->claimed_by = "";
		rec->claim_until_ms = 0;
		rec->due_ms = q->next_due_ms ? q->next_due_ms : now;
		ret = queue_save(r->pm, shard, rec, due);
	}
	if (ret < 0)
		return ret;
	*rep_r = &rep->base;
	return 0;
}

/* QueueDelete (retry false) and QueueRetry (retry true). */
static int m_queue_id_op(struct rd *r, uint32_t shard, const Merpati__V1__QueueIdRequest *q,
			 bool retry, ProtobufCMessage **rep_r, const char **err_r)
{
	QueueRec *rec;
	uint64_t due;
	int ret;
	if ((ret = check_shard(r, shard, err_r)) < 0 ||
	    (ret = check_queue_id(r->arena, q->id, shard, err_r)) < 0 ||
	    (ret = queue_load(r, shard, q->id, &rec, &due, err_r)) < 0)
		return ret;
	if (retry) {
		/* A runner still working on it loses its claim (its update
		 * is refused); the entry is due for anyone now. */
		rec->claimed_by = "";
		rec->claim_until_ms = 0;
		rec->due_ms = now_ms();
		ret = queue_save(r->pm, shard, rec, due);
	} else {
		ret = queue_remove(r->pm, shard, rec->id, due);
	}
	if (ret < 0)
		return ret;
	*rep_r = empty_reply(r->arena);
	return *rep_r ? 0 : MP_ENOMEM;
}

static int r_queue_get(struct rd *r, const Merpati__V1__QueueIdRequest *q,
		       ProtobufCMessage **rep_r, const char **err_r)
{
	QueueRec *rec;
	uint64_t due;
	int ret;
	if ((ret = check_shard(r, q->shard, err_r)) < 0 ||
	    (ret = check_queue_id(r->arena, q->id, q->shard, err_r)) < 0 ||
	    (ret = queue_load(r, q->shard, q->id, &rec, &due, err_r)) < 0)
		return ret;
	Merpati__V1__QueuedMessage *rep = ALLOC(r->arena, Merpati__V1__QueuedMessage);
	if (rep == NULL)
		return MP_ENOMEM;
	merpati__v1__queued_message__init(rep);
	if ((rep->entry = queue_entry_msg(r->arena, rec)) == NULL)
		return MP_ENOMEM;
	if (q->with_body && (ret = queue_body(r, q->shard, rec->id, &rep->body)) < 0)
		return ret;
	*rep_r = &rep->base;
	return 0;
}

/* Entries of a shard by id (ids do not move; due times do). */
static int r_queue_list(struct rd *r, const Merpati__V1__QueueListRequest *q,
			ProtobufCMessage **rep_r, const char **err_r)
{
	uint32_t limit = clamp_limit(q->limit);
	size_t bytes = 0;
	int ret;
	if ((ret = check_shard(r, q->shard, err_r)) < 0)
		return ret;
	if (q->after && strlen(q->after) > QUEUE_ID_MAX) {
		*err_r = "after is too long";
		return MP_EINVAL;
	}
	Merpati__V1__QueueListReply *rep = ALLOC(r->arena, Merpati__V1__QueueListReply);
	if (rep == NULL)
		return MP_ENOMEM;
	merpati__v1__queue_list_reply__init(rep);
	rep->entries = mp_arena_alloc(r->arena, (limit + 1) * sizeof(*rep->entries));
	if (rep->entries == NULL)
		return MP_ENOMEM;
	struct sk pre, from, up;
	struct it it;
	sk_queue_id_prefix(&pre, q->shard);
	sk_upper(&up, &pre);
	from = pre;
	if (q->after && *q->after) {
		sk_str(&from, q->after);
		sk_bytes(&from, "", 1); /* strictly after */
	}
	it_open(r, CF_META, &from, &up, &it);
	for (; it_valid(&it); it_next(&it)) {
		size_t kl, vl;
		const char *k = it_key(&it, &kl);
		const char *v = it_val(&it, &vl);
		QueueRec *rec;
		struct sk dk;
		if (rep->n_entries == limit || bytes > QUEUE_LIST_BYTES) {
			rep->more = true;
			break;
		}
		if (vl != 8 || kl <= pre.len || kl - pre.len > QUEUE_ID_MAX) {
			ret = MP_EIO;
			break;
		}
		char id[QUEUE_ID_MAX + 1];
		memcpy(id, k + pre.len, kl - pre.len);
		id[kl - pre.len] = '\0';
		sk_queue_due(&dk, q->shard, mp_be64_get(v), id);
		if ((ret = rd_get_msg(r, &dk, &merpati__rec__queue_rec__descriptor, &rec)) < 0) {
			if (ret == MP_ENOENT) {
				mp_log_error("store_queue_dangling_id", "id=%s", id);
				ret = MP_EIO;
			}
			break;
		}
		if ((rep->entries[rep->n_entries] = queue_entry_msg(r->arena, rec)) == NULL) {
			ret = MP_ENOMEM;
			break;
		}
		rep->n_entries++;
		bytes += protobuf_c_message_get_packed_size(&rec->base);
	}
	int cr = it_close(&it);
	if (ret == 0)
		ret = cr;
	if (ret < 0)
		return ret;
	*rep_r = &rep->base;
	return 0;
}

/* ------------------------------------------------------------ maildrop lock */

/* RFC 1939 §8: a POP3 session locks its maildrop, and no other session may
 * open it meanwhile, whichever frontend it is on. The lock is a lease on the
 * leader's clock (as a queue claim), so a frontend that dies without QUIT
 * holds it only until the lease ends. One key per account; lock calls of an
 * account share its conflict key, so each reads the one before it. */

#define LOCK_OWNER_MAX 128
#define LOCK_LEASE_DEFAULT_MS 60000u
#define LOCK_LEASE_MAX_MS 3600000u

/* The lock's value: until_ms be64, then the owner's bytes. */
static int lock_load(struct rd *r, uint32_t shard, const char *user, uint64_t *until_r,
		     char **owner_r)
{
	struct sk k;
	char *v;
	size_t len;
	sk_maildrop_lock(&k, shard, user);
	int ret = rd_get(r, CF_META, &k, &v, &len);
	if (ret < 0)
		return ret;
	if (len <= 8 || len > 8 + LOCK_OWNER_MAX) {
		mp_log_error("store_bad_maildrop_lock", "len=%zu", len);
		return MP_EIO;
	}
	char *owner = mp_arena_alloc(r->arena, len - 8 + 1);
	if (owner == NULL)
		return MP_ENOMEM;
	memcpy(owner, v + 8, len - 8);
	owner[len - 8] = '\0';
	*until_r = mp_be64_get(v);
	*owner_r = owner;
	return 0;
}

static int m_maildrop_lock(struct rd *r, uint32_t shard,
			   const Merpati__V1__MaildropLockRequest *q, ProtobufCMessage **rep_r,
			   const char **err_r)
{
	char *user, *holder = NULL;
	AccountRec *acct;
	uint64_t until = 0;
	int ret;
	if ((ret = norm_user(r->arena, q->user, &user, err_r)) < 0 ||
	    (ret = check_token(r->arena, q->owner, LOCK_OWNER_MAX, false, "owner", err_r)) < 0)
		return ret;
	if (q->lease_ms > LOCK_LEASE_MAX_MS) {
		*err_r = arena_errf(r->arena, "lease_ms above %u", LOCK_LEASE_MAX_MS);
		return MP_EINVAL;
	}
	if ((ret = load_account(r, shard, user, &acct, err_r)) < 0)
		return ret;
	ret = lock_load(r, shard, user, &until, &holder);
	if (ret < 0 && ret != MP_ENOENT)
		return ret;
	bool held = ret == 0;
	bool mine = held && strcmp(holder, q->owner) == 0;
	uint64_t now = now_ms();
	Merpati__V1__MaildropLockReply *rep = ALLOC(r->arena, Merpati__V1__MaildropLockReply);
	if (rep == NULL)
		return MP_ENOMEM;
	merpati__v1__maildrop_lock_reply__init(rep);
	struct sk k;
	sk_maildrop_lock(&k, shard, user);
	if (q->release) {
		/* Only the holder's release counts; anyone else's (a session
		 * whose lease another has taken since) changes nothing. */
		if (mine && (ret = txn_del(r->pm, CF_META, &k)) < 0)
			return ret;
		rep->granted = true;
		*rep_r = &rep->base;
		return 0;
	}
	if (held && !mine && until > now) {
		/* Refused: the lock stays as it is, nothing is written. */
		rep->holder = holder;
		rep->until_ms = until;
		*rep_r = &rep->base;
		return 0;
	}
	uint64_t lease = q->lease_ms ? q->lease_ms : LOCK_LEASE_DEFAULT_MS;
	size_t olen = strlen(q->owner);
	uint8_t *v = mp_arena_alloc(r->arena, 8 + olen);
	if (v == NULL)
		return MP_ENOMEM;
	mp_be64_put(v, now + lease);
	memcpy(v + 8, q->owner, olen);
	if ((ret = txn_put_raw(r->pm, CF_META, &k, v, 8 + olen)) < 0)
		return ret;
	rep->granted = true;
	rep->until_ms = now + lease;
	*rep_r = &rep->base;
	return 0;
}

/* ------------------------------------------------------------ dispatch */

int ops_mutate(struct rd *r, enum store_op op, const ProtobufCMessage *req,
	       ProtobufCMessage **rep, const char **err)
{
	uint32_t shard = 0;
	if (is_queue_op(op))
		shard = req_shard(req);
	else if (op == STORE_SET_ALIAS || op == STORE_DELETE_ALIAS)
		shard = user_shard(r, ((const Merpati__V1__AliasRequest *)req)->alias);
	else if (op != STORE_CREATE_DOMAIN && op != STORE_DELETE_DOMAIN && op != STORE_APPEND_MANY)
		shard = user_shard(r, req_user(req));
	else if (op == STORE_APPEND_MANY)
		shard = user_shard(r, ((const Merpati__V1__AppendManyRequest *)req)
					      ->deliveries[0]->user);
	switch (op) {
	case STORE_CREATE_DOMAIN: return m_create_domain(r, (const void *)req, rep, err);
	case STORE_DELETE_DOMAIN: return m_delete_domain(r, (const void *)req, rep, err);
	case STORE_CREATE_ACCOUNT: return m_create_account(r, shard, (const void *)req, rep, err);
	case STORE_DELETE_ACCOUNT: return m_delete_account(r, shard, (const void *)req, rep, err);
	case STORE_SET_PASSWORD:
	case STORE_SET_QUOTA:
	case STORE_SET_STATE: return m_account_set(r, shard, op, req, rep, err);
	case STORE_CREATE_MAILBOX: return m_create_mailbox(r, shard, (const void *)req, rep, err);
	case STORE_DELETE_MAILBOX: return m_delete_mailbox(r, shard, (const void *)req, rep, err);
	case STORE_RENAME_MAILBOX: return m_rename_mailbox(r, shard, (const void *)req, rep, err);
	case STORE_SUBSCRIBE: return m_subscribe(r, shard, (const void *)req, rep, err);
	case STORE_STATUS: return status(r, shard, (const void *)req, rep, err);
	case STORE_APPEND: return m_append(r, shard, (const void *)req, rep, err);
	case STORE_APPEND_MANY: return m_append_many(r, shard, (const void *)req, rep, err);
	case STORE_STORE_FLAGS: return m_store_flags(r, shard, (const void *)req, rep, err);
	case STORE_COPY: return m_copy(r, shard, (const void *)req, false, rep, err);
	case STORE_MOVE: return m_copy(r, shard, (const void *)req, true, rep, err);
	case STORE_EXPUNGE: return m_expunge(r, shard, (const void *)req, rep, err);
	case STORE_SET_ALIAS: return m_set_alias(r, shard, (const void *)req, rep, err);
	case STORE_DELETE_ALIAS: return m_delete_alias(r, shard, (const void *)req, rep, err);
	case STORE_QUEUE_ADD: return m_queue_add(r, shard, (const void *)req, rep, err);
	case STORE_QUEUE_CLAIM: return m_queue_claim(r, shard, (const void *)req, rep, err);
	case STORE_QUEUE_UPDATE: return m_queue_update(r, shard, (const void *)req, rep, err);
	case STORE_QUEUE_DELETE:
		return m_queue_id_op(r, shard, (const void *)req, false, rep, err);
	case STORE_QUEUE_RETRY:
		return m_queue_id_op(r, shard, (const void *)req, true, rep, err);
	case STORE_MAILDROP_LOCK: return m_maildrop_lock(r, shard, (const void *)req, rep, err);
	default:
		*err = "not a mutation";
		return MP_EINVAL;
	}
}

int ops_read(struct rd *r, enum store_op op, const ProtobufCMessage *req,
	     ProtobufCMessage **rep, const char **err)
{
	switch (op) {
	case STORE_GET_DOMAIN: return r_get_domain(r, (const void *)req, rep, err);
	case STORE_LIST_DOMAINS: return r_list_domains(r, (const void *)req, rep, err);
	case STORE_GET_ACCOUNT: return r_get_account(r, (const void *)req, rep, err);
	case STORE_LIST_ACCOUNTS: return r_list_accounts(r, (const void *)req, rep, err);
	case STORE_LIST_MAILBOXES: return r_list_mailboxes(r, (const void *)req, rep, err);
	case STORE_STATUS:
		return status(r, user_shard(r, req_user(req)), (const void *)req, rep, err);
	case STORE_FETCH_INDEX: return r_fetch_index(r, (const void *)req, rep, err);
	case STORE_FETCH_BODY: return r_fetch_body(r, (const void *)req, rep, err);
	case STORE_CHANGES_SINCE: return r_changes_since(r, (const void *)req, rep, err);
	case STORE_NODE_INFO: return r_node_info(r, rep);
	case STORE_GET_ALIAS: return r_get_alias(r, (const void *)req, rep, err);
	case STORE_LIST_ALIASES: return r_list_aliases(r, (const void *)req, rep, err);
	case STORE_RESOLVE_RECIPIENT: return r_resolve(r, (const void *)req, rep, err);
	case STORE_QUEUE_LIST: return r_queue_list(r, (const void *)req, rep, err);
	case STORE_QUEUE_GET: return r_queue_get(r, (const void *)req, rep, err);
	default:
		*err = "not a read";
		return MP_EINVAL;
	}
}

/* ------------------------------------------------------------ retries */

#define RID_KEEP_S 600       /* a retry comes within minutes, not hours */
#define RID_EXPIRE_BATCH 64  /* old ids deleted per write */

const char *ops_request_id(const ProtobufCMessage *req)
{
	const ProtobufCFieldDescriptor *f =
		protobuf_c_message_descriptor_get_field_by_name(req->descriptor, "request_id");
	if (f == NULL || f->type != PROTOBUF_C_TYPE_STRING)
		return NULL;
	const char *rid = *(const char *const *)((const char *)req + f->offset);
	if (rid == NULL || *rid == '\0' || strlen(rid) > RID_MAX)
		return NULL;
	for (const char *p = rid; *p; p++)
		if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
			return NULL;
	return rid;
}

static const ProtobufCMessageDescriptor *reply_desc(enum store_op op)
{
	switch (op) {
	case STORE_CREATE_DOMAIN: return &merpati__v1__domain_reply__descriptor;
	case STORE_CREATE_ACCOUNT: return &merpati__v1__account_reply__descriptor;
	case STORE_CREATE_MAILBOX: return &merpati__v1__mailbox_reply__descriptor;
	case STORE_STATUS: return &merpati__v1__status_reply__descriptor;
	case STORE_APPEND: return &merpati__v1__append_reply__descriptor;
	case STORE_APPEND_MANY: return &merpati__v1__append_many_reply__descriptor;
	case STORE_STORE_FLAGS: return &merpati__v1__store_flags_reply__descriptor;
	case STORE_COPY:
	case STORE_MOVE: return &merpati__v1__copy_reply__descriptor;
	case STORE_EXPUNGE: return &merpati__v1__expunge_reply__descriptor;
	case STORE_SET_ALIAS: return &merpati__v1__alias_reply__descriptor;
	case STORE_QUEUE_ADD: return &merpati__v1__queue_add_reply__descriptor;
	case STORE_QUEUE_CLAIM: return &merpati__v1__queue_claim_reply__descriptor;
	case STORE_QUEUE_UPDATE: return &merpati__v1__queue_update_reply__descriptor;
	case STORE_MAILDROP_LOCK: return &merpati__v1__maildrop_lock_reply__descriptor;
	default: return &merpati__v1__empty__descriptor;
	}
}

/* A claim is remembered without its bodies (they can be megabytes, and
 * they are in the blob family anyway): a copy of the reply with empty
 * bodies, its pointers borrowed. */
static const ProtobufCMessage *claim_strip(struct mp_arena *a,
					   const Merpati__V1__QueueClaimReply *rep)
{
	Merpati__V1__QueueClaimReply *c = ALLOC(a, Merpati__V1__QueueClaimReply);
	if (c == NULL)
		return NULL;
	*c = *rep;
	c->entries = mp_arena_alloc(a, (rep->n_entries + 1) * sizeof(*c->entries));
	if (c->entries == NULL)
		return NULL;
	for (size_t i = 0; i < rep->n_entries; i++) {
		Merpati__V1__QueuedMessage *m = ALLOC(a, Merpati__V1__QueuedMessage);
		if (m == NULL)
			return NULL;
		*m = *rep->entries[i];
		m->body.data = NULL;
		m->body.len = 0;
		c->entries[i] = m;
	}
	return &c->base;
}

/* A retried claim answers the same entries with their bodies read again;
 * an entry deleted since (an operator's QueueDelete) is left out. */
static int claim_refill(struct rd *r, uint32_t shard, Merpati__V1__QueueClaimReply *rep)
{
	size_t n = 0;
	for (size_t i = 0; i < rep->n_entries; i++) {
		Merpati__V1__QueuedMessage *m = rep->entries[i];
		struct sk k;
		char *v;
		size_t len;
		if (m->entry == NULL || m->entry->id == NULL)
			return MP_EIO;
		sk_queue_body(&k, shard, m->entry->id);
		int ret = rd_get(r, CF_BLOB, &k, &v, &len);
		if (ret == MP_ENOENT)
			continue;
		if (ret < 0)
			return ret;
		m->body.data = (uint8_t *)v;
		m->body.len = len;
		rep->entries[n++] = m;
	}
	rep->n_entries = n;
	return 0;
}

static void sk_rid(struct sk *k, uint32_t shard, const char *rid)
{
	sk_prefix(k, shard, 'x');
	sk_str(k, rid);
}

int ops_dedup_lookup(struct rd *r, uint32_t shard, enum store_op op, const char *rid,
		     ProtobufCMessage **reply_r)
{
	struct sk k;
	char *v;
	size_t len;
	sk_rid(&k, shard, rid);
	int ret = rd_get(r, CF_META, &k, &v, &len);
	if (ret < 0)
		return ret;
	if (len < 8)
		return MP_EIO;
	if ((ret = rd_unpack(r, reply_desc(op), v + 8, len - 8, reply_r)) < 0)
		return ret;
	if (op == STORE_QUEUE_CLAIM)
		return claim_refill(r, shard, (Merpati__V1__QueueClaimReply *)*reply_r);
	return 0;
}

int ops_dedup_remember(struct rd *r, uint32_t shard, const char *rid,
		       const ProtobufCMessage *reply)
{
	struct sk k, ek, pre, cut;
	uint64_t now = now_s();
	if (reply->descriptor == &merpati__v1__queue_claim_reply__descriptor &&
	    (reply = claim_strip(r->arena, (const void *)reply)) == NULL)
		return MP_ENOMEM;
	size_t n = protobuf_c_message_get_packed_size(reply);
	uint8_t *buf = mp_arena_alloc(r->arena, n + 8);
	if (buf == NULL)
		return MP_ENOMEM;
	mp_be64_put(buf, now);
	protobuf_c_message_pack(reply, buf + 8);
	sk_rid(&k, shard, rid);
	int ret = txn_put_raw(r->pm, CF_META, &k, buf, n + 8);
	if (ret < 0)
		return ret;
	/* expiry index: X/{time}{rid} */
	sk_prefix(&ek, shard, 'X');
	sk_be64(&ek, now);
	sk_str(&ek, rid);
	if ((ret = txn_put_raw(r->pm, CF_META, &ek, "", 0)) < 0)
		return ret;
	/* Forget a few ids older than RID_KEEP_S (committed state; a second
	 * delete of the same key by another mutation is harmless). */
	sk_prefix(&pre, shard, 'X');
	cut = pre;
	sk_be64(&cut, now > RID_KEEP_S ? now - RID_KEEP_S : 0);
	struct it it;
	int done = 0;
	it_open(r, CF_META, &pre, &cut, &it);
	for (; it_valid(&it) && done < RID_EXPIRE_BATCH && ret == 0; it_next(&it), done++) {
		size_t kl;
		const char *key = it_key(&it, &kl);
		struct sk old, xk;
		if (kl <= pre.len + 8)
			continue;
		old.len = 0;
		sk_bytes(&old, key, kl);
		sk_prefix(&xk, shard, 'x');
		sk_bytes(&xk, key + pre.len + 8, kl - pre.len - 8);
		if ((ret = txn_del(r->pm, CF_META, &old)) == 0)
			ret = txn_del(r->pm, CF_META, &xk);
	}
	int cr = it_close(&it);
	return ret < 0 ? ret : cr;
}
