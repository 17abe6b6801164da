/*
 * store: RocksDB, the commit thread and the single write path.
 *
 * Mutations queue here; the commit thread takes as many as it can into a
 * group (never two that touch the same user or domain: see ops_prepare),
 * runs each against the DB plus the group's overlay, and writes the group as
 * one synced WriteBatch: each mutation's operations followed by its log
 * record s{shard}/{epoch}/{lsn}, and the shard's applied (epoch, lsn). Only
 * then are callers answered and watchers notified.
 *
 * Must never: answer before the sync; keep an lsn a failed write used; let a
 * failed mutation's operations into the batch.
 */
#include "store_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/evp.h>

#include "mp_buf.h"
#include "mp_log.h"

struct undo {
	uint8_t cf;
	const char *key; /* borrowed */
	size_t klen;
	struct op *prev;
};

struct pm {
	struct pm *next;
	struct store *st;  /* borrowed */
	enum store_op op;
	const ProtobufCMessage *req; /* borrowed until cb ran */
	store_done_cb cb;
	void *arg;
	char **keys;       /* arena */
	size_t nkeys;
	uint32_t shard;
	struct mp_arena arena;
	struct opvec ops;
	struct undo *undo; /* owned */
	size_t nundo, capundo;
	struct event *ev;  /* owned */
	size_t nev, capev;
	int err;
	const char *errmsg;
	ProtobufCMessage *reply;
	uint64_t lsn;
	const char *request_id;   /* borrowed from req; NULL when none */
	bool noop;                /* a retried write answered from memory */
	/* leader: the packed log record (arena) */
	uint8_t *rec;
	size_t rec_len;
	uint64_t rec_epoch;
	bool skip_write;          /* replication fenced it */
	int err_after_write;      /* answer this error even though written */
	/* follower: replicated records to apply */
	bool apply;
	uint64_t apply_epoch;
	const ProtobufCBinaryData *recs; /* borrowed until cb */
	size_t n_recs;
	store_apply_cb apply_cb;
	/* exclusive job */
	store_exclusive_fn excl_fn;
};

static const char *cf_names[CF_COUNT] = { "meta", "blob", "log" };

/* ------------------------------------------------------------ helpers */

const char *arena_errf(struct mp_arena *a, const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	const char *r = mp_arena_strdup(a, buf);
	return r ? r : "out of memory";
}

const char *pm_errf(struct pm *pm, const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	const char *r = mp_arena_strdup(&pm->arena, buf);
	return r ? r : "out of memory";
}

struct mp_arena *pm_arena(struct pm *pm)
{
	return &pm->arena;
}

static void *arena_pb_alloc(void *data, size_t size)
{
	return mp_arena_alloc(data, size);
}

static void arena_pb_free(void *data, void *ptr)
{
	(void)data;
	(void)ptr; /* freed with the arena */
}

ProtobufCAllocator *arena_allocator(struct mp_arena *a, ProtobufCAllocator *al)
{
	al->alloc = arena_pb_alloc;
	al->free = arena_pb_free;
	al->allocator_data = a;
	return al;
}

static uint64_t hash_key(int cf, const char *k, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL ^ (uint64_t)cf;
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)k[i];
		h *= 0x100000001b3ULL;
	}
	return h | 1; /* 0 marks an empty slot */
}

/* ------------------------------------------------------------ overlay */

static struct ovl_entry *ovl_find(struct overlay *o, int cf, const char *k,
				  size_t n, uint64_t h)
{
	if (o->cap == 0)
		return NULL;
	size_t mask = o->cap - 1;
	for (size_t i = h & mask;; i = (i + 1) & mask) {
		struct ovl_entry *e = &o->e[i];
		if (e->hash == 0)
			return e;
		if (e->hash == h && e->cf == cf && e->klen == n &&
		    memcmp(e->key, k, n) == 0)
			return e;
	}
}

static int ovl_grow(struct overlay *o)
{
	size_t ncap = o->cap ? o->cap * 2 : 1024;
	struct ovl_entry *ne = calloc(ncap, sizeof(*ne));
	if (ne == NULL)
		return MP_ENOMEM;
	struct overlay no = { ne, ncap, 0 };
	for (size_t i = 0; i < o->cap; i++) {
		struct ovl_entry *e = &o->e[i];
		if (e->hash == 0)
			continue;
		struct ovl_entry *d = ovl_find(&no, e->cf, e->key, e->klen, e->hash);
		*d = *e;
		no.n++;
	}
	free(o->e);
	*o = no;
	return 0;
}

static void ovl_reset(struct overlay *o)
{
	if (o->cap > 65536) {
		free(o->e);
		o->e = NULL;
		o->cap = 0;
	} else if (o->cap) {
		memset(o->e, 0, o->cap * sizeof(*o->e));
	}
	o->n = 0;
}

/* Point the overlay at op for its key, remembering what was there so a
 * failed mutation can be taken back. */
static int ovl_set(struct store *st, struct pm *pm, struct op *op)
{
	struct overlay *o = &st->ovl;
	if ((o->n + 1) * 2 > o->cap) {
		int r = ovl_grow(o);
		if (r < 0)
			return r;
	}
	if (pm->nundo == pm->capundo) {
		size_t nc = pm->capundo ? pm->capundo * 2 : 16;
		struct undo *nu = realloc(pm->undo, nc * sizeof(*nu));
		if (nu == NULL)
			return MP_ENOMEM;
		pm->undo = nu;
		pm->capundo = nc;
	}
	uint64_t h = hash_key(op->cf, op->key, op->klen);
	struct ovl_entry *e = ovl_find(o, op->cf, op->key, op->klen, h);
	if (e->hash == 0) {
		e->hash = h;
		e->cf = op->cf;
		e->key = op->key;
		e->klen = op->klen;
		e->op = NULL;
		o->n++;
	}
	pm->undo[pm->nundo++] = (struct undo){ op->cf, e->key, e->klen, e->op };
	e->op = op;
	return 0;
}

static void ovl_rollback(struct store *st, struct pm *pm)
{
	for (size_t i = pm->nundo; i-- > 0;) {
		struct undo *u = &pm->undo[i];
		uint64_t h = hash_key(u->cf, u->key, u->klen);
		struct ovl_entry *e = ovl_find(&st->ovl, u->cf, u->key, u->klen, h);
		if (e != NULL && e->hash != 0)
			e->op = u->prev;
	}
	pm->nundo = 0;
}

/* ------------------------------------------------------------ reads */

int rd_get(struct rd *r, int cf, const struct sk *k, char **val_r, size_t *len_r)
{
	if (r->pm != NULL) {
		uint64_t h = hash_key(cf, k->b, k->len);
		struct ovl_entry *e = ovl_find(&r->st->ovl, cf, k->b, k->len, h);
		if (e != NULL && e->hash != 0 && e->op != NULL) {
			if (e->op->kind == OP_DEL)
				return MP_ENOENT;
			*val_r = e->op->val;
			*len_r = e->op->vlen;
			return 0;
		}
	}
	char *err = NULL;
	size_t vlen = 0;
	char *v = rocksdb_get_cf(r->st->db, r->ro, r->st->cf[cf], k->b, k->len,
				 &vlen, &err);
	if (err != NULL) {
		mp_log_error("store_get_failed", "error=\"%s\"", err);
		rocksdb_free(err);
		return MP_EIO;
	}
	if (v == NULL)
		return MP_ENOENT;
	char *c = mp_arena_memdup(r->arena, v, vlen);
	rocksdb_free(v);
	if (c == NULL)
		return MP_ENOMEM;
	*val_r = c;
	*len_r = vlen;
	return 0;
}

int rd_unpack(struct rd *r, const ProtobufCMessageDescriptor *d, const char *v,
	      size_t len, void *msg_r)
{
	ProtobufCAllocator al;
	ProtobufCMessage *m = protobuf_c_message_unpack(d, arena_allocator(r->arena, &al),
							len, (const uint8_t *)v);
	if (m == NULL) {
		mp_log_error("store_corrupt_record", "type=%s len=%zu", d->name, len);
		return MP_EIO;
	}
	*(ProtobufCMessage **)msg_r = m;
	return 0;
}

int rd_get_msg(struct rd *r, const struct sk *k, const ProtobufCMessageDescriptor *d,
	       void *msg_r)
{
	char *v;
	size_t len;
	int ret = rd_get(r, CF_META, k, &v, &len);
	if (ret < 0)
		return ret;
	return rd_unpack(r, d, v, len, msg_r);
}

void it_open(struct rd *r, int cf, const struct sk *from, const struct sk *upper,
	     struct it *it)
{
	it->lower = *from;
	if (upper != NULL)
		it->upper = *upper;
	else
		sk_upper(&it->upper, from);
	it->ro = rocksdb_readoptions_create();
	/* Mutations iterate the committed state (store_int.h says why the
	 * overlay is not needed there); reads iterate their snapshot. */
	if (r->snap != NULL)
		rocksdb_readoptions_set_snapshot(it->ro, r->snap);
	rocksdb_readoptions_set_iterate_upper_bound(it->ro, it->upper.b, it->upper.len);
	it->it = rocksdb_create_iterator_cf(r->st->db, it->ro, r->st->cf[cf]);
	rocksdb_iter_seek(it->it, it->lower.b, it->lower.len);
}

bool it_valid(struct it *it)
{
	return rocksdb_iter_valid(it->it) != 0;
}

void it_next(struct it *it)
{
	rocksdb_iter_next(it->it);
}

const char *it_key(struct it *it, size_t *len)
{
	return rocksdb_iter_key(it->it, len);
}

const char *it_val(struct it *it, size_t *len)
{
	return rocksdb_iter_value(it->it, len);
}

int it_close(struct it *it)
{
	int ret = 0;
	if (it->it != NULL) {
		char *err = NULL;
		rocksdb_iter_get_error(it->it, &err);
		if (err != NULL) {
			mp_log_error("store_iter_failed", "error=\"%s\"", err);
			rocksdb_free(err);
			ret = MP_EIO;
		}
		rocksdb_iter_destroy(it->it);
		it->it = NULL;
	}
	if (it->ro != NULL) {
		rocksdb_readoptions_destroy(it->ro);
		it->ro = NULL;
	}
	return ret;
}

/* ------------------------------------------------------------ txn ops */

/* Ops are boxed (the vector holds pointers) because the overlay keeps
 * pointers to them while the vector grows. */
static int txn_add(struct pm *pm, int cf, int kind, const char *k, size_t klen,
		   const void *v, size_t vlen, char *owned_v)
{
	if (pm->ops.n == pm->ops.cap) {
		size_t nc = pm->ops.cap ? pm->ops.cap * 2 : 8;
		struct op **nv = realloc(pm->ops.v, nc * sizeof(*nv));
		if (nv == NULL) {
			free(owned_v);
			return MP_ENOMEM;
		}
		pm->ops.v = nv;
		pm->ops.cap = nc;
	}
	struct op *box = calloc(1, sizeof(*box));
	if (box == NULL) {
		free(owned_v);
		return MP_ENOMEM;
	}
	box->cf = (uint8_t)cf;
	box->kind = (uint8_t)kind;
	box->key = malloc(klen ? klen : 1);
	box->val = owned_v;
	if (owned_v == NULL && v != NULL)
		box->val = malloc(vlen ? vlen : 1);
	if (box->key == NULL || (v != NULL && box->val == NULL)) {
		free(box->key);
		free(box->val);
		free(box);
		return MP_ENOMEM;
	}
	memcpy(box->key, k, klen);
	box->klen = klen;
	if (owned_v == NULL && v != NULL && vlen > 0)
		memcpy(box->val, v, vlen);
	box->vlen = vlen;
	pm->ops.v[pm->ops.n++] = box;
	pm->ops.bytes += klen + vlen;
	return 0;
}

static struct op *op_at(struct pm *pm, size_t i)
{
	return pm->ops.v[i];
}

static void ops_free(struct pm *pm)
{
	for (size_t i = 0; i < pm->ops.n; i++) {
		struct op *b = op_at(pm, i);
		free(b->key);
		free(b->val);
		free(b);
	}
	free(pm->ops.v);
	memset(&pm->ops, 0, sizeof(pm->ops));
}

static int txn_last_overlay(struct pm *pm)
{
	return ovl_set(pm->st, pm, op_at(pm, pm->ops.n - 1));
}

int txn_put_raw(struct pm *pm, int cf, const struct sk *k, const void *v, size_t vlen)
{
	int r = txn_add(pm, cf, OP_PUT, k->b, k->len, v, vlen, NULL);
	return r < 0 ? r : txn_last_overlay(pm);
}

int txn_put_msg(struct pm *pm, const struct sk *k, const ProtobufCMessage *m)
{
	size_t n = protobuf_c_message_get_packed_size(m);
	uint8_t *buf = malloc(n ? n : 1);
	if (buf == NULL)
		return MP_ENOMEM;
	protobuf_c_message_pack(m, buf);
	int r = txn_add(pm, CF_META, OP_PUT, k->b, k->len, NULL, n, (char *)buf);
	return r < 0 ? r : txn_last_overlay(pm);
}

int txn_del(struct pm *pm, int cf, const struct sk *k)
{
	int r = txn_add(pm, cf, OP_DEL, k->b, k->len, NULL, 0, NULL);
	return r < 0 ? r : txn_last_overlay(pm);
}

int txn_del_prefix(struct pm *pm, int cf, const struct sk *prefix)
{
	struct sk up;
	sk_upper(&up, prefix);
	return txn_add(pm, cf, OP_RANGE, prefix->b, prefix->len, up.b, up.len, NULL);
}

int txn_event(struct pm *pm, const char *user, int kind, uint32_t mbid, uint64_t modseq)
{
	for (size_t i = 0; i < pm->nev; i++) {
		struct event *e = &pm->ev[i];
		if (e->kind == kind && e->mbid == mbid && strcmp(e->user, user) == 0) {
			if (modseq > e->modseq)
				e->modseq = modseq;
			return 0;
		}
	}
	if (pm->nev == pm->capev) {
		size_t nc = pm->capev ? pm->capev * 2 : 4;
		struct event *ne = realloc(pm->ev, nc * sizeof(*ne));
		if (ne == NULL)
			return MP_ENOMEM;
		pm->ev = ne;
		pm->capev = nc;
	}
	const char *u = mp_arena_strdup(&pm->arena, user);
	if (u == NULL)
		return MP_ENOMEM;
	pm->ev[pm->nev++] = (struct event){ u, kind, mbid, modseq };
	return 0;
}

/* ------------------------------------------------------------ pm */

static void pm_free(struct pm *pm)
{
	ops_free(pm);
	free(pm->undo);
	free(pm->ev);
	mp_arena_free(&pm->arena);
	free(pm);
}

static void pm_finish(struct pm *pm)
{
	if (pm->excl_fn != NULL) {
		/* ran already */
	} else if (pm->apply) {
		struct store *st = pm->st;
		pm->apply_cb(pm->err, pm->errmsg, st->epoch[pm->shard], st->lsn[pm->shard],
			     pm->arg);
	} else {
		pm->cb(pm->err, pm->errmsg, pm->err == 0 ? pm->reply : NULL, pm->arg);
	}
	pm_free(pm);
}

/* ------------------------------------------------------------ commit */

struct keyset {
	const char **k; /* borrowed from the pms' arenas */
	size_t cap, n;
};

static int keyset_has(const struct keyset *s, const char *k)
{
	if (s->cap == 0)
		return 0;
	uint64_t h = hash_key(0, k, strlen(k));
	for (size_t i = h & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
		if (s->k[i] == NULL)
			return 0;
		if (strcmp(s->k[i], k) == 0)
			return 1;
	}
}

static int keyset_add(struct keyset *s, const char *k)
{
	if ((s->n + 1) * 2 > s->cap) {
		size_t nc = s->cap ? s->cap * 2 : 256;
		const char **nk = calloc(nc, sizeof(*nk));
		if (nk == NULL)
			return MP_ENOMEM;
		struct keyset ns = { nk, nc, 0 };
		for (size_t i = 0; i < s->cap; i++)
			if (s->k[i] != NULL)
				keyset_add(&ns, s->k[i]);
		free(s->k);
		*s = ns;
	}
	uint64_t h = hash_key(0, k, strlen(k));
	for (size_t i = h & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
		if (s->k[i] == NULL) {
			s->k[i] = k;
			s->n++;
			return 0;
		}
		if (strcmp(s->k[i], k) == 0)
			return 0;
	}
}

static void keyset_clear(struct keyset *s)
{
	if (s->cap)
		memset(s->k, 0, s->cap * sizeof(*s->k));
	s->n = 0;
}

static int pm_conflicts(const struct pm *pm, const struct keyset *taken,
			const struct keyset *blocked)
{
	for (size_t i = 0; i < pm->nkeys; i++)
		if (keyset_has(taken, pm->keys[i]) || keyset_has(blocked, pm->keys[i]))
			return 1;
	return 0;
}

static int log_record_op(struct pm *pm, Merpati__Rec__Op **ops_r)
{
	for (size_t i = 0; i < pm->ops.n; i++) {
		struct op *o = op_at(pm, i);
		Merpati__Rec__Op *m = mp_arena_alloc(&pm->arena, sizeof(*m));
		if (m == NULL)
			return MP_ENOMEM;
		merpati__rec__op__init(m);
		m->cf = o->cf;
		m->del = o->kind != OP_PUT;
		m->range = o->kind == OP_RANGE;
		m->key.data = (uint8_t *)o->key;
		m->key.len = o->klen;
		m->value.data = (uint8_t *)o->val;
		m->value.len = o->val ? o->vlen : 0;
		ops_r[i] = m;
	}
	return 0;
}

/* Pack pm's log record (shard, epoch, lsn, ops) into pm->rec. */
static int pack_record(struct store *st, struct pm *pm)
{
	Merpati__Rec__LogRecord lr = MERPATI__REC__LOG_RECORD__INIT;
	lr.shard = pm->shard;
	lr.epoch = st->epoch[pm->shard];
	lr.lsn = pm->lsn;
	lr.request_id = (char *)(pm->request_id ? pm->request_id : "");
	lr.n_ops = pm->ops.n;
	lr.ops = mp_arena_alloc(&pm->arena, (pm->ops.n + 1) * sizeof(*lr.ops));
	if (lr.ops == NULL || log_record_op(pm, lr.ops) < 0)
		return MP_ENOMEM;
	size_t n = merpati__rec__log_record__get_packed_size(&lr);
	uint8_t *buf = mp_arena_alloc(&pm->arena, n ? n : 1);
	if (buf == NULL)
		return MP_ENOMEM;
	merpati__rec__log_record__pack(&lr, buf);
	pm->rec = buf;
	pm->rec_len = n;
	pm->rec_epoch = lr.epoch;
	return 0;
}

static void batch_ops(struct store *st, rocksdb_writebatch_t *wb, int cf_i, int kind,
		      const char *k, size_t kl, const char *v, size_t vl)
{
	rocksdb_column_family_handle_t *cf = st->cf[cf_i];
	if (kind == OP_PUT)
		rocksdb_writebatch_put_cf(wb, cf, k, kl, v, vl);
	else if (kind == OP_DEL)
		rocksdb_writebatch_delete_cf(wb, cf, k, kl);
	else
		rocksdb_writebatch_delete_range_cf(wb, cf, k, kl, v, vl);
}

static void batch_log(struct store *st, rocksdb_writebatch_t *wb, uint32_t shard,
		      uint64_t lsn, const uint8_t *rec, size_t len)
{
	struct sk k;
	sk_log(&k, shard, lsn);
	rocksdb_writebatch_put_cf(wb, st->cf[CF_LOG], k.b, k.len, (const char *)rec, len);
}

/* Append pm's operations and its log record to wb. */
static void batch_add(struct store *st, rocksdb_writebatch_t *wb, struct pm *pm)
{
	for (size_t i = 0; i < pm->ops.n; i++) {
		struct op *o = op_at(pm, i);
		batch_ops(st, wb, o->cf, o->kind, o->key, o->klen, o->val, o->vlen);
	}
	batch_log(st, wb, pm->shard, pm->lsn, pm->rec, pm->rec_len);
}

/* Apply replicated records (a follower's pm) to wb: each record's ops and
 * the record itself, in order. Records at or below the shard's lsn are
 * duplicates of what we have and are skipped; a gap is refused. Checks
 * everything before adding anything. */
static int batch_apply(struct store *st, rocksdb_writebatch_t *wb, struct pm *pm)
{
	uint32_t shard = pm->shard;
	uint64_t next = st->lsn[shard] + 1;
	Merpati__Rec__LogRecord **lr = mp_arena_alloc(&pm->arena,
						      (pm->n_recs + 1) * sizeof(*lr));
	ProtobufCAllocator al;
	if (lr == NULL)
		return MP_ENOMEM;
	if (pm->apply_epoch < st->epoch[shard]) {
		pm->errmsg = pm_errf(pm, "fenced: epoch %llu is below the shard's %llu",
				     (unsigned long long)pm->apply_epoch,
				     (unsigned long long)st->epoch[shard]);
		return MP_ESTATE;
	}
	pthread_mutex_lock(&st->role_mu);
	int role = st->role[shard];
	pthread_mutex_unlock(&st->role_mu);
	if (role == STORE_ROLE_LEADER) {
		pm->errmsg = "this node leads the shard";
		return MP_ESTATE;
	}
	for (size_t i = 0; i < pm->n_recs; i++) {
		lr[i] = merpati__rec__log_record__unpack(arena_allocator(&pm->arena, &al),
							 pm->recs[i].len, pm->recs[i].data);
		if (lr[i] == NULL || lr[i]->shard != shard || lr[i]->epoch > pm->apply_epoch) {
			pm->errmsg = "malformed replicated record";
			return MP_EINVAL;
		}
		if (lr[i]->lsn >= next && lr[i]->lsn != next) {
			pm->errmsg = pm_errf(pm, "gap: record lsn %llu, expected %llu",
					     (unsigned long long)lr[i]->lsn,
					     (unsigned long long)next);
			return MP_ESTALE;
		}
		if (lr[i]->lsn == next) {
			next++;
		} else {
			/* A record we hold already: the same one (a resend) or
			 * one a deposed leader wrote at that lsn and nobody
			 * acknowledged. Applied state cannot be rolled back, so
			 * a different epoch is refused: this replica needs a
			 * snapshot and must not count as in sync. */
			uint64_t have;
			int er = store_log_epoch(st, shard, lr[i]->lsn, &have);
			if (er == 0 && have != lr[i]->epoch) {
				pm->errmsg = pm_errf(pm, "diverged: lsn %llu has epoch %llu here, %llu "
						     "from the leader", (unsigned long long)lr[i]->lsn,
						     (unsigned long long)have,
						     (unsigned long long)lr[i]->epoch);
				return MP_ESTALE;
			}
		}
		for (size_t j = 0; j < lr[i]->n_ops; j++) {
			Merpati__Rec__Op *o = lr[i]->ops[j];
			struct sk pre;
			sk_shard(&pre, shard);
			if (o->cf >= CF_COUNT || o->key.len < pre.len ||
			    memcmp(o->key.data, pre.b, pre.len) != 0 || (o->range && !o->del)) {
				pm->errmsg = "replicated op outside its shard";
				return MP_EINVAL;
			}
		}
	}
	uint64_t at = st->lsn[shard];
	for (size_t i = 0; i < pm->n_recs; i++) {
		if (lr[i]->lsn <= at)
			continue;
		for (size_t j = 0; j < lr[i]->n_ops; j++) {
			Merpati__Rec__Op *o = lr[i]->ops[j];
			int kind = !o->del ? OP_PUT : o->range ? OP_RANGE : OP_DEL;
			batch_ops(st, wb, (int)o->cf, kind, (const char *)o->key.data, o->key.len,
				  (const char *)o->value.data, o->value.len);
		}
		batch_log(st, wb, shard, lr[i]->lsn, pm->recs[i].data, pm->recs[i].len);
		at = lr[i]->lsn;
	}
	pm->lsn = at;
	return 0;
}

static void batch_applied(struct store *st, rocksdb_writebatch_t *wb, uint32_t shard)
{
	struct sk k;
	char v[16];
	sk_applied(&k, shard);
	mp_be64_put(v, st->epoch[shard]);
	mp_be64_put(v + 8, st->lsn[shard]);
	rocksdb_writebatch_put_cf(wb, st->cf[CF_META], k.b, k.len, v, sizeof(v));
	/* Trim the log (DESIGN.md "Log trimming"): never past a record some
	 * in-sync member lacks (it would need a snapshot, or, on a follower
	 * that becomes leader, could not be caught up), and keep log_retain
	 * records below that so a replica that drops out for a while catches
	 * up from the log. The record at the in-sync lsn itself stays: the
	 * leader compares a replica's last record with its own there. */
	uint64_t point = st->lsn[shard];
	pthread_mutex_lock(&st->role_mu);
	if (st->cluster && st->in_sync[shard] < point)
		point = st->in_sync[shard];
	pthread_mutex_unlock(&st->role_mu);
	uint64_t below = point > st->o.log_retain ? point - st->o.log_retain : 0;
	if (below >= st->trimmed[shard] + LOG_TRIM_STEP) {
		struct sk from, to;
		sk_log(&from, shard, 0);
		sk_log(&to, shard, below);
		rocksdb_writebatch_delete_range_cf(wb, st->cf[CF_LOG], from.b, from.len,
						   to.b, to.len);
		st->trimmed[shard] = below;
	}
}

/* Under role_mu. A stale leader's word never overrides a newer one's. */
static void in_sync_set_locked(struct store *st, uint32_t shard, uint64_t epoch, uint64_t lsn)
{
	if (epoch < st->role_epoch[shard] || epoch < st->in_sync_epoch[shard])
		return;
	st->in_sync_epoch[shard] = epoch;
	st->in_sync[shard] = lsn;
}

void store_set_in_sync_lsn(struct store *st, uint32_t shard, uint64_t epoch, uint64_t lsn)
{
	if (shard >= st->o.shards)
		return;
	pthread_mutex_lock(&st->role_mu);
	in_sync_set_locked(st, shard, epoch, lsn);
	pthread_mutex_unlock(&st->role_mu);
}

uint64_t store_get_in_sync_lsn(struct store *st, uint32_t shard)
{
	if (shard >= st->o.shards)
		return 0;
	pthread_mutex_lock(&st->role_mu);
	uint64_t v = st->in_sync[shard];
	pthread_mutex_unlock(&st->role_mu);
	return v;
}

static int role_check(struct store *st, uint32_t shard, const char **msg_r,
		      struct mp_arena *a)
{
	pthread_mutex_lock(&st->role_mu);
	bool cluster = st->cluster;
	int role = st->role[shard];
	char leader[STORE_NODE_ID_MAX + 1];
	memcpy(leader, st->leader[shard], sizeof(leader));
	pthread_mutex_unlock(&st->role_mu);
	if (!cluster || role == STORE_ROLE_LEADER)
		return 0;
	*msg_r = arena_errf(a, "shard %u is led by %s", shard, leader[0] ? leader : "(unknown)");
	return MP_ENOTLEADER;
}

/* Replicate the group's records before the local write. Records are
 * handed over sorted by (shard, lsn); a shard's records share a result. */
static void replicate_group(struct store *st, struct pm **group, size_t n)
{
	struct store_rec *recs = calloc(n + 1, sizeof(*recs));
	int *res = calloc(n + 1, sizeof(*res));
	struct pm **sorted = calloc(n + 1, sizeof(*sorted));
	size_t m = 0;
	if (recs == NULL || res == NULL || sorted == NULL) {
		for (size_t i = 0; i < n; i++)
			if (group[i]->err == 0 && !group[i]->apply) {
				group[i]->err = MP_ENOMEM;
				group[i]->errmsg = "out of memory";
			}
		goto out;
	}
	for (size_t i = 0; i < n; i++)
		if (group[i]->err == 0 && !group[i]->apply && !group[i]->noop)
			sorted[m++] = group[i];
	/* insertion sort by (shard, lsn): groups are small */
	for (size_t i = 1; i < m; i++)
		for (size_t j = i; j > 0 && (sorted[j - 1]->shard > sorted[j]->shard ||
					     (sorted[j - 1]->shard == sorted[j]->shard &&
					      sorted[j - 1]->lsn > sorted[j]->lsn)); j--) {
			struct pm *t = sorted[j];
			sorted[j] = sorted[j - 1];
			sorted[j - 1] = t;
		}
	for (size_t i = 0; i < m; i++)
		recs[i] = (struct store_rec){ sorted[i]->shard, sorted[i]->rec_epoch,
					      sorted[i]->lsn, sorted[i]->rec, sorted[i]->rec_len };
	if (m > 0)
		st->replicate(st->replicate_arg, recs, m, res);
	/* Every in-sync member holds what it answered OK for: the shard's
	 * in-sync lsn moves to its last such record (sorted: the last one
	 * seen). UNDER_MIN may leave a member in the ISR without them (etcd
	 * could not be told), so it moves nothing. */
	pthread_mutex_lock(&st->role_mu);
	for (size_t i = 0; i < m; i++)
		if (res[i] == STORE_REPL_OK)
			in_sync_set_locked(st, recs[i].shard, recs[i].epoch, recs[i].lsn);
	pthread_mutex_unlock(&st->role_mu);
	for (size_t i = 0; i < m; i++) {
		struct pm *pm = sorted[i];
		if (res[i] == STORE_REPL_FENCED) {
			pm->err = MP_ENOTLEADER;
			pm->errmsg = pm_errf(pm, "shard %u: this node is no longer its leader", pm->shard);
			pm->skip_write = true;
		} else if (res[i] == STORE_REPL_REFUSED) {
			pm->err = MP_EUNAVAIL;
			pm->errmsg = pm_errf(pm, "shard %u has fewer in-sync replicas than min_isr; "
					     "nothing was written", pm->shard);
			pm->skip_write = true;
		} else if (res[i] == STORE_REPL_UNDER_MIN) {
			/* Kafka's NOT_ENOUGH_REPLICAS_AFTER_APPEND: the in-sync
			 * members that remain have it, so it is written here
			 * too, but not acknowledged as safe. */
			pm->err_after_write = MP_EUNAVAIL;
		}
	}
out:
	free(recs);
	free(res);
	free(sorted);
}

static void run_group(struct store *st, struct pm **group, size_t n)
{
	uint64_t *saved = NULL, *saved_epoch = NULL;
	bool *touched = NULL, *locked = NULL;
	rocksdb_writebatch_t *wb = NULL;
	size_t ok = 0;
	int fail = 0;

	ovl_reset(&st->ovl);
	saved = malloc(st->o.shards * sizeof(*saved));
	saved_epoch = malloc(st->o.shards * sizeof(*saved_epoch));
	touched = calloc(st->o.shards, sizeof(*touched));
	locked = calloc(st->o.shards, sizeof(*locked));
	if (saved == NULL || touched == NULL || saved_epoch == NULL || locked == NULL) {
		fail = MP_ENOMEM;
		goto out;
	}

	wb = rocksdb_writebatch_create();
	for (size_t i = 0; i < n; i++) {
		struct pm *pm = group[i];
		struct rd r = { st, &pm->arena, st->ro_latest, NULL, pm };
		if (st->broken) {
			pm->err = MP_EUNAVAIL;
			pm->errmsg = "the store refuses writes after a failed write; restart the node";
			continue;
		}
		if ((pm->err = role_check(st, pm->shard, &pm->errmsg, &pm->arena)) < 0)
			continue;
		if (!locked[pm->shard]) {
			/* The shard's counters are ours until the group ends;
			 * adopt the epoch the shard map gave since. */
			pthread_mutex_lock(&st->shard_mu[pm->shard]);
			locked[pm->shard] = true;
			pthread_mutex_lock(&st->role_mu);
			if (st->role_epoch[pm->shard] > st->epoch[pm->shard])
				st->epoch[pm->shard] = st->role_epoch[pm->shard];
			pthread_mutex_unlock(&st->role_mu);
			saved[pm->shard] = st->lsn[pm->shard];
			saved_epoch[pm->shard] = st->epoch[pm->shard];
		}
		pm->request_id = ops_request_id(pm->req);
		if (pm->request_id != NULL) {
			/* A retried write: answer what the first attempt
			 * answered, change nothing. */
			int dr = ops_dedup_lookup(&r, pm->shard, pm->op, pm->request_id, &pm->reply);
			if (dr == 0) {
				pm->noop = true;
				ok++;
				continue;
			}
			if (dr != MP_ENOENT) {
				pm->err = dr;
				continue;
			}
		}
		pm->err = ops_mutate(&r, pm->op, pm->req, &pm->reply, &pm->errmsg);
		if (pm->err == 0 && pm->request_id != NULL)
			pm->err = ops_dedup_remember(&r, pm->shard, pm->request_id, pm->reply);
		if (pm->err < 0) {
			ovl_rollback(st, pm);
			ops_free(pm);
			pm->nev = 0;
			continue;
		}
		pm->lsn = ++st->lsn[pm->shard];
		if ((pm->err = pack_record(st, pm)) < 0) {
			/* lsn stays used: later mutations got higher ones */
			fail = pm->err;
			goto out;
		}
		touched[pm->shard] = true;
		ok++;
	}
	if (ok == 0)
		goto out;
	if (st->replicate != NULL) {
		replicate_group(st, group, n);
	} else {
		/* No followers: this node is the whole in-sync set. */
		pthread_mutex_lock(&st->role_mu);
		for (uint32_t s = 0; s < st->o.shards; s++)
			if (touched[s])
				in_sync_set_locked(st, s, st->epoch[s], st->lsn[s]);
		pthread_mutex_unlock(&st->role_mu);
	}

	/* Mutations that replication fenced are not written; the lsns they
	 * used are taken back only if nothing after them in the shard is
	 * written (the shard's leadership is gone anyway). */
	ok = 0;
	for (size_t i = 0; i < n; i++) {
		struct pm *pm = group[i];
		if (pm->err == 0 && !pm->skip_write && !pm->noop) {
			batch_add(st, wb, pm);
			ok++;
		} else if (pm->err == 0 && pm->noop) {
			ok++;
		} else if (pm->skip_write && st->lsn[pm->shard] >= pm->lsn) {
			st->lsn[pm->shard] = pm->lsn - 1;
		}
	}
	for (uint32_t s = 0; s < st->o.shards && fail == 0; s++)
		if (touched[s])
			batch_applied(st, wb, s);
	if (ok > 0 && fail == 0) {
		char *err = NULL;
		pthread_mutex_lock(&st->mu);
		bool inject = st->fail_writes > 0;
		if (inject)
			st->fail_writes--;
		pthread_mutex_unlock(&st->mu);
		if (inject) {
			fail = MP_EIO;
			mp_log_warn("store_write_injected_failure", "mutations=%zu", ok);
		} else {
			rocksdb_write(st->db, st->wo_sync, wb, &err);
			if (err != NULL) {
				mp_log_error("store_write_failed", "mutations=%zu error=\"%s\"",
					     ok, err);
				rocksdb_free(err);
				fail = MP_EIO;
				/* RocksDB stops accepting writes after a failed WAL
				 * write; so do we, rather than guess what is on disk. */
				st->broken = true;
			}
		}
	}
out:
	if (fail < 0) {
		for (uint32_t sh = 0; locked != NULL && sh < st->o.shards; sh++)
			if (locked[sh]) {
				st->lsn[sh] = saved[sh];
				st->epoch[sh] = saved_epoch[sh];
			}
		for (size_t i = 0; i < n; i++) {
			if (group[i]->err == 0) {
				group[i]->err = fail;
				group[i]->errmsg = fail == MP_ENOMEM ? "out of memory"
								    : "storage write failed; nothing was changed";
			}
		}
	}
	for (uint32_t sh = 0; locked != NULL && sh < st->o.shards; sh++)
		if (locked[sh])
			pthread_mutex_unlock(&st->shard_mu[sh]);
	if (wb != NULL)
		rocksdb_writebatch_destroy(wb);
	ovl_reset(&st->ovl);

	pthread_mutex_lock(&st->mu);
	st->stats.mutations += fail < 0 ? 0 : ok;
	if (ok > 0 && fail == 0)
		st->stats.groups++;
	pthread_mutex_unlock(&st->mu);

	for (size_t i = 0; i < n; i++) {
		struct pm *pm = group[i];
		if (pm->err == 0 && pm->err_after_write < 0) {
			pm->err = pm->err_after_write;
			pm->errmsg = "written, but fewer than min_isr replicas have it";
		}
		if (pm->err == 0 && st->notify != NULL)
			for (size_t e = 0; e < pm->nev; e++)
				st->notify(pm->ev[e].user, pm->ev[e].kind, pm->ev[e].mbid,
					   pm->ev[e].modseq, st->notify_arg);
		pm_finish(pm);
	}
	free(saved);
	free(saved_epoch);
	free(touched);
	free(locked);
}

static void *commit_thread(void *arg)
{
	struct store *st = arg;
	struct pm **group = calloc(GROUP_MAX_MUTATIONS, sizeof(*group));
	struct keyset taken = { 0 }, blocked = { 0 };

	if (group == NULL) {
		mp_log_error("store_commit_thread_oom", "%s", "");
		abort();
	}
	pthread_mutex_lock(&st->mu);
	for (;;) {
		while (st->q_head == NULL && !st->closing)
			pthread_cond_wait(&st->cv, &st->mu);
		if (st->q_head == NULL && st->closing)
			break;

		/* Take what does not conflict, in queue order; a mutation on a
		 * user already in the group (or behind a deferred one on that
		 * user) waits for the next group, so per-user order holds. */
		size_t n = 0;
		size_t bytes = 0;
		struct pm **pp = &st->q_head, *prev = NULL;
		keyset_clear(&taken);
		keyset_clear(&blocked);
		while (*pp != NULL && n < GROUP_MAX_MUTATIONS && bytes < GROUP_MAX_BYTES) {
			struct pm *pm = *pp;
			if (pm->excl_fn != NULL && n > 0)
				break; /* runs alone, after this group */
			if (pm_conflicts(pm, &taken, &blocked)) {
				for (size_t i = 0; i < pm->nkeys; i++)
					keyset_add(&blocked, pm->keys[i]);
				st->stats.deferred++;
				prev = pm;
				pp = &pm->next;
				continue;
			}
			for (size_t i = 0; i < pm->nkeys; i++)
				keyset_add(&taken, pm->keys[i]);
			*pp = pm->next;
			if (st->q_tail == pm)
				st->q_tail = prev;
			pm->next = NULL;
			st->q_len--;
			group[n++] = pm;
			if (pm->excl_fn != NULL)
				break;
			if (pm->op == STORE_APPEND)
				bytes += ((const Merpati__V1__AppendRequest *)pm->req)->body.len;
			else if (pm->op == STORE_APPEND_MANY)
				bytes += ((const Merpati__V1__AppendManyRequest *)pm->req)->body.len;
			else if (pm->op == STORE_QUEUE_ADD)
				bytes += ((const Merpati__V1__QueueAddRequest *)pm->req)->body.len;
		}
		pthread_mutex_unlock(&st->mu);
		if (n == 1 && group[0]->excl_fn != NULL) {
			group[0]->excl_fn(group[0]->arg, st->lsn);
			pm_free(group[0]);
		} else {
			run_group(st, group, n);
		}
		pthread_mutex_lock(&st->mu);
	}
	pthread_mutex_unlock(&st->mu);
	free(taken.k);
	free(blocked.k);
	free(group);
	return NULL;
}

/* Queue pm for the commit thread, or free it and refuse (closing, or the
 * queue is full when limited). */
static int queue_push(struct store *st, struct pm *pm, bool limited)
{
	pthread_mutex_lock(&st->mu);
	if (st->closing || (limited && st->q_len >= st->o.max_pending)) {
		bool closing = st->closing;
		pthread_mutex_unlock(&st->mu);
		pm_free(pm);
		mp_log_warn("store_queue_refused", "closing=%d", closing);
		return MP_EUNAVAIL;
	}
	if (st->q_tail)
		st->q_tail->next = pm;
	else
		st->q_head = pm;
	st->q_tail = pm;
	st->q_len++;
	pthread_cond_signal(&st->cv);
	pthread_mutex_unlock(&st->mu);
	return 0;
}

int store_call(struct store *st, enum store_op op, const ProtobufCMessage *req,
	       store_done_cb cb, void *arg)
{
	if ((unsigned)op >= STORE_OP_COUNT)
		return MP_EINVAL;

	pthread_mutex_lock(&st->role_mu);
	bool cluster = st->cluster;
	pthread_mutex_unlock(&st->role_mu);
	/* In a cluster only the shard's leader answers; listing accounts
	 * answers for the shards this node leads. Domains live on shard 0. */
	if (cluster && op != STORE_NODE_INFO && op != STORE_LIST_ACCOUNTS) {
		struct mp_arena ca;
		const char *msg = NULL;
		char **keys;
		size_t nkeys;
		uint32_t shard = 0;
		int err = 0;
		mp_arena_init(&ca);
		if (op != STORE_GET_DOMAIN && op != STORE_LIST_DOMAINS)
			err = ops_prepare(st, op, req, &ca, &keys, &nkeys, &shard, &msg);
		if (err == 0)
			err = role_check(st, shard, &msg, &ca);
		if (err < 0) {
			cb(err, msg, NULL, arg);
			mp_arena_free(&ca);
			return 0;
		}
		mp_arena_free(&ca);
	}
	if (!ops_is_mutation(op, req)) {
		struct mp_arena a;
		ProtobufCMessage *reply = NULL;
		const char *msg = NULL;
		mp_arena_init(&a);
		const rocksdb_snapshot_t *snap = rocksdb_create_snapshot(st->db);
		rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
		rocksdb_readoptions_set_snapshot(ro, snap);
		struct rd r = { st, &a, ro, snap, NULL };
		int err = ops_read(&r, op, req, &reply, &msg);
		rocksdb_readoptions_destroy(ro);
		rocksdb_release_snapshot(st->db, snap);
		cb(err, msg, err == 0 ? reply : NULL, arg);
		mp_arena_free(&a);
		return 0;
	}

	struct pm *pm = calloc(1, sizeof(*pm));
	if (pm == NULL)
		return MP_ENOMEM;
	mp_arena_init(&pm->arena);
	pm->st = st;
	pm->op = op;
	pm->req = req;
	pm->cb = cb;
	pm->arg = arg;
	const char *msg = NULL;
	int err = ops_prepare(st, op, req, &pm->arena, &pm->keys, &pm->nkeys,
			      &pm->shard, &msg);
	if (err < 0) {
		/* A refused request is answered, not dropped. */
		cb(err, msg, NULL, arg);
		pm_free(pm);
		return 0;
	}
	return queue_push(st, pm, true);
}

/* ------------------------------------------------------------ open/close */

static int mkdir_p(const char *path)
{
	char tmp[4096];
	size_t n = strlen(path);
	if (n == 0 || n >= sizeof(tmp))
		return MP_EINVAL;
	memcpy(tmp, path, n + 1);
	for (char *p = tmp + 1; *p; p++) {
		if (*p == '/') {
			*p = '\0';
			if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
				return MP_EIO;
			*p = '/';
		}
	}
	if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
		return MP_EIO;
	return 0;
}

static int load_lsns(struct store *st, char **error_r)
{
	for (uint32_t s = 0; s < st->o.shards; s++) {
		struct sk k;
		char *err = NULL;
		size_t len = 0;
		sk_applied(&k, s);
		char *v = rocksdb_get_cf(st->db, st->ro_latest, st->cf[CF_META], k.b,
					 k.len, &len, &err);
		if (err != NULL) {
			if (asprintf(error_r, "reading shard %u state: %s", s, err) < 0)
				*error_r = NULL;
			rocksdb_free(err);
			return MP_EIO;
		}
		if (v == NULL) {
			st->lsn[s] = 0;
			st->epoch[s] = 1;
			continue;
		}
		if (len != 16) {
			rocksdb_free(v);
			if (asprintf(error_r, "shard %u state record is corrupt", s) < 0)
				*error_r = NULL;
			return MP_EIO;
		}
		st->epoch[s] = mp_be64_get(v);
		st->lsn[s] = mp_be64_get(v + 8);
		st->trimmed[s] = st->lsn[s] > st->o.log_retain ? st->lsn[s] - st->o.log_retain : 0;
		rocksdb_free(v);
	}
	return 0;
}

/* The shard count is fixed at creation: a node opened with another count
 * would put users on the wrong shards. Kept in the meta CF. */
static int check_shard_count(struct store *st, char **error_r)
{
	static const char key[] = "node/shards";
	char *err = NULL;
	size_t len = 0;
	char *v = rocksdb_get_cf(st->db, st->ro_latest, st->cf[CF_META], key,
				 sizeof(key) - 1, &len, &err);
	if (err != NULL) {
		if (asprintf(error_r, "reading node/shards: %s", err) < 0)
			*error_r = NULL;
		rocksdb_free(err);
		return MP_EIO;
	}
	if (v != NULL) {
		uint32_t have = len == 4 ? (uint32_t)(mp_be32_get(v)) : 0;
		rocksdb_free(v);
		if (have != st->o.shards) {
			if (asprintf(error_r,
				     "data dir was created with %u shards; shards=%u given",
				     have, st->o.shards) < 0)
				*error_r = NULL;
			return MP_EINVAL;
		}
		return 0;
	}
	char b[4];
	b[0] = (char)(st->o.shards >> 24);
	b[1] = (char)(st->o.shards >> 16);
	b[2] = (char)(st->o.shards >> 8);
	b[3] = (char)st->o.shards;
	rocksdb_put_cf(st->db, st->wo_sync, st->cf[CF_META], key, sizeof(key) - 1,
		       b, 4, &err);
	if (err != NULL) {
		if (asprintf(error_r, "writing node/shards: %s", err) < 0)
			*error_r = NULL;
		rocksdb_free(err);
		return MP_EIO;
	}
	return 0;
}

int store_open(const struct store_opts *opts, struct store **st_r, char **error_r)
{
	struct store *st = calloc(1, sizeof(*st));
	char *err = NULL;
	int ret;

	*error_r = NULL;
	if (st == NULL)
		return MP_ENOMEM;
	st->o = *opts;
	if (st->o.shards == 0 || st->o.shards > 65536) {
		free(st);
		*error_r = strdup("shards must be 1 to 65536");
		return MP_EINVAL;
	}
	if (st->o.max_pending == 0)
		st->o.max_pending = 100000;
	st->data_dir = strdup(opts->data_dir);
	st->node_id = strdup(opts->node_id ? opts->node_id : "node");
	st->lsn = calloc(st->o.shards, sizeof(*st->lsn));
	st->epoch = calloc(st->o.shards, sizeof(*st->epoch));
	st->trimmed = calloc(st->o.shards, sizeof(*st->trimmed));
	st->in_sync = calloc(st->o.shards, sizeof(*st->in_sync));
	st->in_sync_epoch = calloc(st->o.shards, sizeof(*st->in_sync_epoch));
	st->role = calloc(st->o.shards, sizeof(*st->role));
	st->role_epoch = calloc(st->o.shards, sizeof(*st->role_epoch));
	st->shard_mu = calloc(st->o.shards, sizeof(*st->shard_mu));
	st->leader = calloc(st->o.shards, sizeof(*st->leader));
	if (st->data_dir == NULL || st->node_id == NULL || st->lsn == NULL ||
	    st->epoch == NULL || st->trimmed == NULL || st->role == NULL || st->leader == NULL ||
	    st->role_epoch == NULL || st->shard_mu == NULL || st->in_sync == NULL ||
	    st->in_sync_epoch == NULL) {
		ret = MP_ENOMEM;
		goto fail;
	}
	st->o.data_dir = st->data_dir;
	st->o.node_id = st->node_id;
	pthread_mutex_init(&st->mu, NULL);
	pthread_mutex_init(&st->role_mu, NULL);
	for (uint32_t s = 0; s < st->o.shards; s++)
		pthread_mutex_init(&st->shard_mu[s], NULL);
	st->shard_mu_init = true;
	pthread_cond_init(&st->cv, NULL);

	if (mkdir_p(st->data_dir) < 0) {
		if (asprintf(error_r, "cannot create data_dir %s: %s", st->data_dir,
			     strerror(errno)) < 0)
			*error_r = NULL;
		ret = MP_EIO;
		goto fail;
	}

	st->opts = rocksdb_options_create();
	rocksdb_options_set_create_if_missing(st->opts, 1);
	rocksdb_options_set_create_missing_column_families(st->opts, 1);
	rocksdb_options_increase_parallelism(st->opts, 2);
	rocksdb_options_set_max_background_jobs(st->opts, 2);
	rocksdb_options_set_bytes_per_sync(st->opts, 1 << 20);
	st->cache = rocksdb_cache_create_lru(opts->block_cache ? opts->block_cache
							       : 64u << 20);
	st->bbto = rocksdb_block_based_options_create();
	rocksdb_block_based_options_set_block_cache(st->bbto, st->cache);

	for (int i = 0; i < CF_COUNT; i++) {
		rocksdb_options_t *o = rocksdb_options_create_copy(st->opts);
		rocksdb_options_set_block_based_table_factory(o, st->bbto);
		rocksdb_options_set_compression(o, rocksdb_lz4_compression);
		if (i == CF_BLOB || i == CF_LOG) {
			/* Bodies go to blob files, zstd-compressed, so
			 * compaction of the small keys does not rewrite them. */
			rocksdb_options_set_enable_blob_files(o, 1);
			rocksdb_options_set_min_blob_size(o, 4096);
			rocksdb_options_set_blob_compression_type(o, rocksdb_zstd_compression);
			rocksdb_options_set_enable_blob_gc(o, 1);
		}
		st->cf_opts[i] = o;
	}

	const rocksdb_options_t *cfo[CF_COUNT + 1];
	const char *names[CF_COUNT + 1];
	rocksdb_column_family_handle_t *handles[CF_COUNT + 1];
	/* RocksDB requires "default" to be opened too; nothing is kept in it. */
	names[0] = "default";
	cfo[0] = st->opts;
	for (int i = 0; i < CF_COUNT; i++) {
		names[i + 1] = cf_names[i];
		cfo[i + 1] = st->cf_opts[i];
	}
	st->db = rocksdb_open_column_families(st->opts, st->data_dir, CF_COUNT + 1,
					      names, cfo, handles, &err);
	if (err != NULL) {
		if (asprintf(error_r, "opening RocksDB at %s: %s", st->data_dir, err) < 0)
			*error_r = NULL;
		rocksdb_free(err);
		st->db = NULL;
		ret = MP_EIO;
		goto fail;
	}
	rocksdb_column_family_handle_destroy(handles[0]);
	for (int i = 0; i < CF_COUNT; i++)
		st->cf[i] = handles[i + 1];

	st->wo_sync = rocksdb_writeoptions_create();
	rocksdb_writeoptions_set_sync(st->wo_sync, 1);
	st->ro_latest = rocksdb_readoptions_create();

	ret = check_shard_count(st, error_r);
	if (ret < 0)
		goto fail;
	ret = load_lsns(st, error_r);
	if (ret < 0)
		goto fail;

	if (pthread_create(&st->thread, NULL, commit_thread, st) != 0) {
		*error_r = strdup("cannot start the commit thread");
		ret = MP_ENOMEM;
		goto fail;
	}
	st->thread_started = true;
	uint64_t total = 0;
	for (uint32_t s = 0; s < st->o.shards; s++)
		total += st->lsn[s];
	mp_log_info("store_open", "path=%s shards=%u lsn_total=%llu", st->data_dir,
		    st->o.shards, (unsigned long long)total);
	*st_r = st;
	return 0;
fail:
	store_close(&st);
	return ret;
}

void store_close(struct store **stp)
{
	struct store *st = *stp;
	if (st == NULL)
		return;
	*stp = NULL;
	if (st->thread_started) {
		pthread_mutex_lock(&st->mu);
		st->closing = true;
		pthread_cond_broadcast(&st->cv);
		pthread_mutex_unlock(&st->mu);
		pthread_join(st->thread, NULL);
	}
	for (int i = 0; i < CF_COUNT; i++)
		if (st->cf[i] != NULL)
			rocksdb_column_family_handle_destroy(st->cf[i]);
	if (st->db != NULL)
		rocksdb_close(st->db);
	for (int i = 0; i < CF_COUNT; i++)
		if (st->cf_opts[i] != NULL)
			rocksdb_options_destroy(st->cf_opts[i]);
	if (st->opts)
		rocksdb_options_destroy(st->opts);
	if (st->bbto)
		rocksdb_block_based_options_destroy(st->bbto);
	if (st->cache)
		rocksdb_cache_destroy(st->cache);
	if (st->wo_sync)
		rocksdb_writeoptions_destroy(st->wo_sync);
	if (st->ro_latest)
		rocksdb_readoptions_destroy(st->ro_latest);
	free(st->ovl.e);
	free(st->lsn);
	free(st->epoch);
	free(st->trimmed);
	free(st->in_sync);
	free(st->in_sync_epoch);
	free(st->role);
	free(st->role_epoch);
	if (st->shard_mu_init)
		for (uint32_t s = 0; s < st->o.shards; s++)
			pthread_mutex_destroy(&st->shard_mu[s]);
	free(st->shard_mu);
	free(st->leader);
	free(st->data_dir);
	free(st->node_id);
	pthread_mutex_destroy(&st->mu);
	pthread_mutex_destroy(&st->role_mu);
	pthread_cond_destroy(&st->cv);
	free(st);
}

void store_set_notify(struct store *st, store_notify_cb cb, void *arg)
{
	st->notify = cb;
	st->notify_arg = arg;
}

void store_get_stats(struct store *st, struct store_stats *s)
{
	pthread_mutex_lock(&st->mu);
	*s = st->stats;
	pthread_mutex_unlock(&st->mu);
}

void store_debug_fail_writes(struct store *st, int n)
{
	pthread_mutex_lock(&st->mu);
	st->fail_writes = n;
	pthread_mutex_unlock(&st->mu);
}

uint32_t store_shard_count(const struct store *st)
{
	return st->o.shards;
}

int64_t store_debug_refcount(struct store *st, uint32_t shard, const uint8_t sha[32])
{
	struct sk rk, bk;
	char *err = NULL;
	size_t rl = 0, bl = 0;
	sk_ref(&rk, shard, sha);
	sk_blob(&bk, shard, sha);
	char *r = rocksdb_get_cf(st->db, st->ro_latest, st->cf[CF_META], rk.b, rk.len, &rl, &err);
	if (err) {
		rocksdb_free(err);
		return MP_EIO;
	}
	char *b = rocksdb_get_cf(st->db, st->ro_latest, st->cf[CF_BLOB], bk.b, bk.len, &bl, &err);
	if (err) {
		rocksdb_free(err);
		rocksdb_free(r);
		return MP_EIO;
	}
	int64_t ret;
	if ((r == NULL) != (b == NULL) || (r != NULL && rl != 8))
		ret = MP_EIO;
	else
		ret = r == NULL ? -1 : (int64_t)mp_be64_get(r);
	rocksdb_free(r);
	rocksdb_free(b);
	return ret;
}


/* ------------------------------------------------------------ cluster */

void store_set_cluster(struct store *st, bool on)
{
	pthread_mutex_lock(&st->role_mu);
	st->cluster = on;
	pthread_mutex_unlock(&st->role_mu);
}

void store_set_role(struct store *st, uint32_t shard, enum store_role role,
		    uint64_t epoch, const char *leader_id)
{
	if (shard >= st->o.shards)
		return;
	pthread_mutex_lock(&st->role_mu);
	st->role[shard] = (uint8_t)role;
	if (epoch > st->role_epoch[shard])
		st->role_epoch[shard] = epoch;
	snprintf(st->leader[shard], sizeof(st->leader[shard]), "%s",
		 leader_id ? leader_id : "");
	pthread_mutex_unlock(&st->role_mu);
}

void store_get_pos(struct store *st, uint32_t shard, enum store_role *role_r,
		   uint64_t *epoch_r, uint64_t *lsn_r)
{
	struct sk k;
	char *err = NULL;
	size_t len = 0;
	*epoch_r = 0;
	*lsn_r = 0;
	pthread_mutex_lock(&st->role_mu);
	*role_r = st->role[shard];
	uint64_t re = st->role_epoch[shard];
	pthread_mutex_unlock(&st->role_mu);
	/* From disk: the commit thread's counters may be ahead of what is
	 * durable while a group is being written. */
	sk_applied(&k, shard);
	char *v = rocksdb_get_cf(st->db, st->ro_latest, st->cf[CF_META], k.b, k.len, &len, &err);
	if (err != NULL) {
		rocksdb_free(err);
	} else if (v != NULL && len == 16) {
		*epoch_r = mp_be64_get(v);
		*lsn_r = mp_be64_get(v + 8);
	}
	rocksdb_free(v);
	if (re > *epoch_r)
		*epoch_r = re;
}

void store_set_replicator(struct store *st, store_replicate_fn fn, void *arg)
{
	st->replicate = fn;
	st->replicate_arg = arg;
}

int store_apply(struct store *st, uint32_t shard, uint64_t epoch,
		const ProtobufCBinaryData *recs, size_t n, store_apply_cb cb, void *arg)
{
	if (shard >= st->o.shards || n == 0)
		return MP_EINVAL;
	struct pm *pm = calloc(1, sizeof(*pm));
	if (pm == NULL)
		return MP_ENOMEM;
	mp_arena_init(&pm->arena);
	pm->st = st;
	pm->apply = true;
	pm->shard = shard;
	pm->apply_epoch = epoch;
	pm->recs = recs;
	pm->n_recs = n;
	pm->apply_cb = cb;
	pm->arg = arg;

	/* Applied here, on the caller's thread, not through the commit
	 * queue: a leader's commit thread waits for its followers, and a
	 * follower's commit thread may be waiting for this node; queueing
	 * replicated records behind local groups would deadlock two nodes
	 * that lead shards for each other. Concurrent synced writes are
	 * grouped by RocksDB itself. The shard's lock orders applies and
	 * keeps the commit thread off the shard's counters meanwhile. */
	pthread_mutex_lock(&st->shard_mu[shard]);
	pthread_mutex_lock(&st->role_mu);
	if (st->role_epoch[shard] > st->epoch[shard])
		st->epoch[shard] = st->role_epoch[shard];
	pthread_mutex_unlock(&st->role_mu);
	uint64_t old_lsn = st->lsn[shard], old_epoch = st->epoch[shard];
	rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
	pm->err = st->broken ? MP_EUNAVAIL : batch_apply(st, wb, pm);
	if (pm->err == 0 && pm->lsn > old_lsn) {
		if (pm->apply_epoch > st->epoch[shard])
			st->epoch[shard] = pm->apply_epoch;
		st->lsn[shard] = pm->lsn;
		batch_applied(st, wb, shard);
		char *err = NULL;
		rocksdb_write(st->db, st->wo_sync, wb, &err);
		if (err != NULL) {
			mp_log_error("store_apply_write_failed", "shard=%u error=\"%s\"", shard, err);
			rocksdb_free(err);
			st->broken = true;
			st->lsn[shard] = old_lsn;
			st->epoch[shard] = old_epoch;
			pm->err = MP_EIO;
			pm->errmsg = "storage write failed";
		}
	}
	uint64_t e = st->epoch[shard], l = st->lsn[shard];
	pthread_mutex_unlock(&st->shard_mu[shard]);
	rocksdb_writebatch_destroy(wb);
	if (pm->err == 0) {
		pthread_mutex_lock(&st->mu);
		st->stats.mutations += pm->n_recs;
		st->stats.groups++;
		pthread_mutex_unlock(&st->mu);
	}
	cb(pm->err, pm->errmsg, e, l, arg);
	pm->apply_cb = NULL;
	pm->apply = false;
	pm_free(pm);
	return 0;
}

int store_run_exclusive(struct store *st, store_exclusive_fn fn, void *arg)
{
	struct pm *pm = calloc(1, sizeof(*pm));
	if (pm == NULL)
		return MP_ENOMEM;
	mp_arena_init(&pm->arena);
	pm->st = st;
	pm->excl_fn = fn;
	pm->arg = arg;
	return queue_push(st, pm, false);
}

void store_log_free(struct store_log *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->recs[i].data);
	free(l->recs);
	l->recs = NULL;
	l->n = 0;
}

int store_read_log(struct store *st, uint32_t shard, uint64_t from_lsn,
		   size_t max_bytes, struct store_log *out)
{
	struct sk from, pre;
	struct it it;
	struct mp_arena a;
	struct rd r;
	size_t bytes = 0, cap = 0;
	int ret = 0;

	out->recs = NULL;
	out->n = 0;
	mp_arena_init(&a);
	r = (struct rd){ st, &a, st->ro_latest, NULL, NULL };
	sk_shard(&pre, shard);
	sk_log(&from, shard, from_lsn);
	struct sk up;
	sk_upper(&up, &pre);
	it_open(&r, CF_LOG, &from, &up, &it);
	uint64_t expect = from_lsn;
	for (; it_valid(&it) && (out->n == 0 || bytes < max_bytes); it_next(&it)) {
		size_t kl, vl;
		const char *k = it_key(&it, &kl);
		const char *v = it_val(&it, &vl);
		if (kl != pre.len + 8) {
			ret = MP_EIO;
			break;
		}
		uint64_t lsn = mp_be64_get(k + pre.len);
		if (lsn != expect) {
			ret = out->n == 0 ? MP_ESTALE : 0;
			break;
		}
		if (out->n == cap) {
			size_t nc = cap ? cap * 2 : 16;
			ProtobufCBinaryData *nr = realloc(out->recs, nc * sizeof(*nr));
			if (nr == NULL) {
				ret = MP_ENOMEM;
				break;
			}
			out->recs = nr;
			cap = nc;
		}
		uint8_t *c = malloc(vl ? vl : 1);
		if (c == NULL) {
			ret = MP_ENOMEM;
			break;
		}
		memcpy(c, v, vl);
		out->recs[out->n].data = c;
		out->recs[out->n].len = vl;
		out->n++;
		bytes += vl;
		expect++;
	}
	int cr = it_close(&it);
	if (ret == 0)
		ret = cr;
	if (ret == 0 && out->n == 0)
		ret = MP_ESTALE;
	if (ret < 0)
		store_log_free(out);
	mp_arena_free(&a);
	return ret;
}

int store_log_epoch(struct store *st, uint32_t shard, uint64_t lsn, uint64_t *epoch_r)
{
	struct sk k;
	char *err = NULL;
	size_t len = 0;
	sk_log(&k, shard, lsn);
	char *v = rocksdb_get_cf(st->db, st->ro_latest, st->cf[CF_LOG], k.b, k.len, &len, &err);
	if (err != NULL) {
		rocksdb_free(err);
		return MP_EIO;
	}
	if (v == NULL)
		return MP_ENOENT;
	Merpati__Rec__LogRecord *lr =
		merpati__rec__log_record__unpack(NULL, len, (const uint8_t *)v);
	rocksdb_free(v);
	if (lr == NULL)
		return MP_EIO;
	*epoch_r = lr->epoch;
	merpati__rec__log_record__free_unpacked(lr, NULL);
	return 0;
}

int store_shard_digest(struct store *st, uint32_t shard, uint8_t sha[32],
		       uint64_t *keys_r, uint64_t *epoch_r, uint64_t *lsn_r)
{
	struct mp_arena a;
	struct sk pre, applied;
	int ret = 0;
	unsigned int outl = 0;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(md);
		return MP_ENOMEM;
	}
	mp_arena_init(&a);
	const rocksdb_snapshot_t *snap = rocksdb_create_snapshot(st->db);
	rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
	rocksdb_readoptions_set_snapshot(ro, snap);
	struct rd r = { st, &a, ro, snap, NULL };
	*keys_r = 0;
	*epoch_r = 0;
	*lsn_r = 0;
	sk_shard(&pre, shard);
	sk_applied(&applied, shard);
	for (int cf = CF_META; cf <= CF_BLOB && ret == 0; cf++) {
		struct it it;
		it_open(&r, cf, &pre, NULL, &it);
		for (; it_valid(&it); it_next(&it)) {
			size_t kl, vl;
			const char *k = it_key(&it, &kl);
			const char *v = it_val(&it, &vl);
			if (cf == CF_META && kl == applied.len && memcmp(k, applied.b, kl) == 0) {
				if (vl == 16) {
					*epoch_r = mp_be64_get(v);
					*lsn_r = mp_be64_get(v + 8);
				}
				continue;
			}
			uint8_t lens[17];
			lens[0] = (uint8_t)cf;
			mp_be64_put(lens + 1, kl);
			mp_be64_put(lens + 9, vl);
			EVP_DigestUpdate(md, lens, sizeof(lens));
			EVP_DigestUpdate(md, k, kl);
			EVP_DigestUpdate(md, v, vl);
			(*keys_r)++;
		}
		ret = it_close(&it);
	}
	if (ret == 0 && EVP_DigestFinal_ex(md, sha, &outl) != 1)
		ret = MP_EIO;
	EVP_MD_CTX_free(md);
	rocksdb_readoptions_destroy(ro);
	rocksdb_release_snapshot(st->db, snap);
	mp_arena_free(&a);
	return ret;
}

/* ------------------------------------------------------------ snapshots */

int store_snapshot_read(struct store *st, uint32_t shard, store_snapshot_emit emit,
			void *arg, uint64_t *epoch_r, uint64_t *lsn_r)
{
	struct mp_arena a;
	struct sk pre, applied;
	int ret = 0;
	if (shard >= st->o.shards)
		return MP_EINVAL;
	mp_arena_init(&a);
	const rocksdb_snapshot_t *snap = rocksdb_create_snapshot(st->db);
	rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
	rocksdb_readoptions_set_snapshot(ro, snap);
	struct rd r = { st, &a, ro, snap, NULL };
	*epoch_r = 0;
	*lsn_r = 0;
	sk_shard(&pre, shard);
	sk_applied(&applied, shard);
	char *v;
	size_t vl;
	if (rd_get(&r, CF_META, &applied, &v, &vl) == 0 && vl == 16) {
		*epoch_r = mp_be64_get(v);
		*lsn_r = mp_be64_get(v + 8);
	}
	for (int cf = CF_META; cf <= CF_BLOB && ret == 0; cf++) {
		struct it it;
		it_open(&r, cf, &pre, NULL, &it);
		for (; it_valid(&it) && ret == 0; it_next(&it)) {
			size_t kl, l;
			const char *k = it_key(&it, &kl);
			const char *val = it_val(&it, &l);
			if (cf == CF_META && kl == applied.len && memcmp(k, applied.b, kl) == 0)
				continue;
			ret = emit(arg, cf, k, kl, val, l);
		}
		int cr = it_close(&it);
		if (ret == 0)
			ret = cr;
	}
	if (ret == 0 && *lsn_r > 0) {
		/* the record at the position: a follower's history check needs it */
		struct sk lk;
		sk_log(&lk, shard, *lsn_r);
		if (rd_get(&r, CF_LOG, &lk, &v, &vl) == 0)
			ret = emit(arg, CF_LOG, lk.b, lk.len, v, vl);
	}
	rocksdb_readoptions_destroy(ro);
	rocksdb_release_snapshot(st->db, snap);
	mp_arena_free(&a);
	return ret;
}

static int snap_write(struct store *st, rocksdb_writebatch_t *wb)
{
	char *err = NULL;
	rocksdb_write(st->db, st->wo_sync, wb, &err);
	rocksdb_writebatch_destroy(wb);
	if (err != NULL) {
		mp_log_error("store_snapshot_write_failed", "error=\"%s\"", err);
		rocksdb_free(err);
		st->broken = true;
		return MP_EIO;
	}
	return 0;
}

static int snap_lock(struct store *st, uint32_t shard)
{
	if (shard >= st->o.shards)
		return MP_EINVAL;
	pthread_mutex_lock(&st->shard_mu[shard]);
	pthread_mutex_lock(&st->role_mu);
	int role = st->role[shard];
	pthread_mutex_unlock(&st->role_mu);
	if (role == STORE_ROLE_LEADER || st->broken) {
		pthread_mutex_unlock(&st->shard_mu[shard]);
		return st->broken ? MP_EUNAVAIL : MP_ESTATE;
	}
	return 0;
}

int store_snapshot_begin(struct store *st, uint32_t shard)
{
	int ret = snap_lock(st, shard);
	if (ret < 0)
		return ret;
	struct sk pre, up;
	sk_shard(&pre, shard);
	sk_upper(&up, &pre);
	rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
	for (int cf = 0; cf < CF_COUNT; cf++)
		rocksdb_writebatch_delete_range_cf(wb, st->cf[cf], pre.b, pre.len, up.b, up.len);
	ret = snap_write(st, wb);
	if (ret == 0) {
		st->lsn[shard] = 0;
		st->trimmed[shard] = 0;
	}
	pthread_mutex_unlock(&st->shard_mu[shard]);
	mp_log_info("store_snapshot_begin", "shard=%u ret=%d", shard, ret);
	return ret;
}

int store_snapshot_put(struct store *st, uint32_t shard, const int *cf,
		       const ProtobufCBinaryData *keys, const ProtobufCBinaryData *vals,
		       size_t n)
{
	struct sk pre;
	sk_shard(&pre, shard);
	for (size_t i = 0; i < n; i++)
		if (cf[i] < 0 || cf[i] >= CF_COUNT || keys[i].len < pre.len ||
		    memcmp(keys[i].data, pre.b, pre.len) != 0)
			return MP_EINVAL;
	int ret = snap_lock(st, shard);
	if (ret < 0)
		return ret;
	rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
	for (size_t i = 0; i < n; i++)
		rocksdb_writebatch_put_cf(wb, st->cf[cf[i]], (const char *)keys[i].data,
					  keys[i].len, (const char *)vals[i].data, vals[i].len);
	ret = snap_write(st, wb);
	pthread_mutex_unlock(&st->shard_mu[shard]);
	return ret;
}

int store_snapshot_end(struct store *st, uint32_t shard, uint64_t epoch, uint64_t lsn)
{
	int ret = snap_lock(st, shard);
	if (ret < 0)
		return ret;
	if (epoch > st->epoch[shard])
		st->epoch[shard] = epoch;
	uint64_t old = st->lsn[shard];
	st->lsn[shard] = lsn;
	st->trimmed[shard] = lsn;
	rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
	batch_applied(st, wb, shard);
	ret = snap_write(st, wb);
	if (ret < 0)
		st->lsn[shard] = old;
	pthread_mutex_unlock(&st->shard_mu[shard]);
	mp_log_info("store_snapshot_installed", "shard=%u epoch=%llu lsn=%llu ret=%d", shard,
		    (unsigned long long)epoch, (unsigned long long)lsn, ret);
	return ret;
}
