/*
 * repl: the leader's replication hook, the follower's Replication service,
 * and the tick that keeps roles and lagging replicas current.
 *
 * Leader, per group (store commit thread, under r->mu): for each shard of
 * the group, check the shard map still names us leader at the records'
 * epoch (else FENCED) and that the ISR is at least min_isr (else REFUSED);
 * send one Replicate call per follower node with the records of every shard
 * it is in sync for, all calls in flight at once with the ack timeout as
 * their deadline; a follower that answers with a gap is caught up from the
 * log within the same deadline; a follower that fails is removed from the
 * ISR by CAS on the shard record before the group may be acknowledged.
 *
 * Every Replicate call carries the shard's in-sync lsn (commit_lsn): the
 * follower's store trims its log by it (DESIGN.md "Log trimming").
 *
 * The tick sets every shard's role from the map first, then does the slow
 * work: takeovers, catching replicas out of the ISR up from the log (they
 * rejoin on the commit thread, store_run_exclusive, when their last lsn
 * equals the shard's, so no group can be in flight without them), and
 * this node's own snapshot pulls. Snapshots are sent from a thread each.
 *
 * Never: answer OK for a shard whose ISR member neither persisted the
 * records nor left the ISR in etcd; block a server thread waiting for its
 * own stream to drain.
 */
#include "repl.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mp_error.h"
#include "mp_etcd.h"
#include "mp_log.h"
#include "replication.pb-c.h"
#include "records.pb-c.h"

#define MAX_CHANNELS 64
#define GRPC_FAILED_PRECONDITION 9
#define GRPC_OUT_OF_RANGE 11

struct chan {
	char addr[MP_ADDR_MAX + 1];
	struct mp_rpc_channel *ch; /* owned */
};

struct repl {
	char node_id[MP_NODE_ID_MAX + 1];
	struct store *st;
	struct mp_etcd *etcd;
	struct mp_shardmap *map;
	int64_t ack_timeout_ms;
	size_t catchup_bytes;
	struct mp_rpc_cq *cq;       /* owned */
	pthread_mutex_t mu;         /* one group or one ISR change at a time */
	pthread_mutex_t ch_mu;
	struct chan chans[MAX_CHANNELS];
	size_t n_chans;
	char path_replicate[128];
	char path_state[128];
	time_t last_warn;
	/* a join queued on the commit thread, per shard (tick thread sets,
	 * commit thread clears) */
	pthread_mutex_t join_mu;
	uint8_t *join_pending;      /* owned, per shard */
	time_t *checked;            /* owned, per shard: last follower_check (tick thread) */
	uint8_t *work;              /* owned, per shard: enum tick_work (tick thread) */
	uint64_t *work_epoch;       /* owned, per shard: the epoch the work is for */
	uint32_t nshards;
	/* snapshots being sent, each on its own thread (snap_main) */
	pthread_mutex_t snap_mu;
	pthread_cond_t snap_cv;
	int snap_workers;
	bool snap_stop;             /* repl_stop ran: refuse new ones, end the rest */
};

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct mp_rpc_channel *chan_get(struct repl *r, const char *addr)
{
	struct mp_rpc_channel *ch = NULL;
	pthread_mutex_lock(&r->ch_mu);
	for (size_t i = 0; i < r->n_chans; i++)
		if (strcmp(r->chans[i].addr, addr) == 0)
			ch = r->chans[i].ch;
	if (ch == NULL && r->n_chans < MAX_CHANNELS &&
	    mp_rpc_channel_open(addr, 0, &ch) == 0) {
		snprintf(r->chans[r->n_chans].addr, sizeof(r->chans[0].addr), "%s", addr);
		r->chans[r->n_chans++].ch = ch;
	}
	pthread_mutex_unlock(&r->ch_mu);
	return ch;
}

/* ------------------------------------------------------------ ISR edits */

static int reread_shard(struct repl *r, uint32_t shard)
{
	char key[32];
	struct mp_etcd_kv *kv = NULL;
	struct mp_shard_rec rec;
	const char *e;
	snprintf(key, sizeof(key), "shards/%u", shard);
	int ret = mp_etcd_get(r->etcd, key, &kv, NULL);
	if (ret == MP_ENOENT) {
		mp_shardmap_clear_shard(r->map, shard);
		return ret;
	}
	if (ret < 0)
		return ret;
	ret = mp_shard_rec_parse((const char *)kv->value, kv->vlen, &rec, &e);
	if (ret == 0)
		ret = mp_shardmap_set_shard(r->map, shard, &rec, kv->mod_rev);
	mp_etcd_kvs_free(kv, 1);
	return ret;
}

/* Replace the ISR of a shard we lead (remove: drop ids; add: add one), by
 * CAS. 0 with the new record in *out, MP_ENOTLEADER when the record no
 * longer names us leader at epoch, other MP_E* when etcd cannot be
 * reached. */
static int isr_edit(struct repl *r, uint32_t shard, uint64_t epoch, const bool *drop,
		    const char *add, struct mp_shard_rec *out)
{
	for (int attempt = 0; attempt < 4; attempt++) {
		struct mp_shard_rec rec, nrec;
		int64_t mod;
		if (mp_shardmap_get_shard(r->map, shard, &rec, &mod) < 0 ||
		    strcmp(rec.leader, r->node_id) != 0 || rec.epoch != epoch)
			return MP_ENOTLEADER;
		nrec = rec;
		nrec.n_isr = 0;
		for (size_t i = 0; i < rec.n_isr; i++) {
			bool d = false;
			if (drop != NULL)
				for (size_t j = 0; j < rec.n_replicas; j++)
					if (drop[j] && strcmp(rec.replicas[j], rec.isr[i]) == 0)
						d = true;
			if (!d)
				memcpy(nrec.isr[nrec.n_isr++], rec.isr[i], sizeof(rec.isr[i]));
		}
		if (add != NULL && !mp_shard_rec_in_isr(&nrec, add) &&
		    mp_shard_rec_has_replica(&nrec, add) && nrec.n_isr < MP_REPLICAS_MAX)
			snprintf(nrec.isr[nrec.n_isr++], sizeof(nrec.isr[0]), "%s", add);
		if (nrec.n_isr == rec.n_isr) {
			/* nothing to change (already in or already out) */
			*out = nrec;
			return 0;
		}
		char text[MP_SHARDREC_MAX_LEN + 1];
		const char *e;
		if (mp_shard_rec_check(&nrec, &e) < 0)
			return MP_EINVAL;
		int len = mp_shard_rec_format(&nrec, text, sizeof(text));
		if (len < 0)
			return len;
		char key[32];
		int64_t rev;
		snprintf(key, sizeof(key), "shards/%u", shard);
		int ret = mp_etcd_cas(r->etcd, key, text, (size_t)len, mod, 0, &rev);
		if (ret == 0) {
			mp_shardmap_set_shard(r->map, shard, &nrec, rev);
			mp_log_info("repl_isr_change", "shard=%u epoch=%llu record=\"%s\"", shard,
				    (unsigned long long)epoch, text);
			*out = nrec;
			return 0;
		}
		if (ret != MP_ESTALE)
			return ret;
		if ((ret = reread_shard(r, shard)) < 0 && ret != MP_ENOENT)
			return ret;
	}
	return MP_ENOTLEADER;
}

/* ------------------------------------------------------------ sending */

struct run {            /* the records of one shard in this group */
	size_t first, n;
	uint32_t shard;
	uint64_t epoch;
	struct mp_shard_rec rec;
	int result;         /* enum store_repl_result */
	bool send;
	bool failed[MP_REPLICAS_MAX];   /* by replica index */
	bool fenced;
};

struct peer {           /* one follower node of this group */
	char id[MP_NODE_ID_MAX + 1];
	char addr[MP_ADDR_MAX + 1];
	size_t runs[256];   /* indexes into runs, in the request's order */
	size_t n_runs;
	int err;
	Merpati__Repl__V1__ReplicateReply *reply;
	struct wait *w;
};

struct wait {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	size_t pending;
};

static void peer_done(int err, const char *error, ProtobufCMessage *resp, void *arg)
{
	struct peer *p = arg;
	p->err = err;
	p->reply = (Merpati__Repl__V1__ReplicateReply *)resp;
	if (err < 0)
		mp_log_warn("repl_send_failed", "peer=%s error=\"%s\"", p->id, error ? error : "");
	pthread_mutex_lock(&p->w->mu);
	p->w->pending--;
	pthread_cond_signal(&p->w->cv);
	pthread_mutex_unlock(&p->w->mu);
}

static int replica_index(const struct mp_shard_rec *rec, const char *id)
{
	for (size_t i = 0; i < rec->n_replicas; i++)
		if (strcmp(rec->replicas[i], id) == 0)
			return (int)i;
	return -1;
}

/* Does the replica's log agree with ours at its last lsn? A replica that
 * holds a record we do not (written by a deposed leader, never
 * acknowledged) must be re-seeded, never counted in sync. */
static bool same_history(struct repl *r, uint32_t shard, uint64_t lsn, uint64_t epoch)
{
	uint64_t mine;
	if (lsn == 0)
		return true;
	if (store_log_epoch(r->st, shard, lsn, &mine) < 0)
		return false; /* trimmed or absent: cannot tell, so no */
	return mine == epoch;
}

/* Blocking: records [from, to) of shard from the log, then extra. */
static int send_catchup(struct repl *r, const char *addr, uint32_t shard, uint64_t epoch,
			uint64_t from, const struct store_rec *extra, size_t n_extra,
			int64_t timeout_ms, Merpati__Repl__V1__ShardAck *ack_out)
{
	struct store_log log = { 0 };
	int ret = 0;
	size_t n_log = 0;
	if (n_extra > 0 && from < extra[0].lsn) {
		ret = store_read_log(r->st, shard, from, r->catchup_bytes, &log);
		if (ret < 0)
			return ret;
		/* only what precedes the group's records */
		n_log = log.n;
		if (from + n_log > extra[0].lsn)
			n_log = (size_t)(extra[0].lsn - from);
		if (from + n_log != extra[0].lsn) {
			store_log_free(&log);
			return MP_AGAIN; /* too far behind for one call */
		}
	}
	ProtobufCBinaryData *recs = calloc(n_log + n_extra + 1, sizeof(*recs));
	if (recs == NULL) {
		store_log_free(&log);
		return MP_ENOMEM;
	}
	for (size_t i = 0; i < n_log; i++)
		recs[i] = log.recs[i];
	for (size_t i = 0; i < n_extra; i++) {
		recs[n_log + i].data = (uint8_t *)extra[i].data;
		recs[n_log + i].len = extra[i].len;
	}
	Merpati__Repl__V1__ShardRecords sr = MERPATI__REPL__V1__SHARD_RECORDS__INIT;
	Merpati__Repl__V1__ShardRecords *srp = &sr;
	Merpati__Repl__V1__ReplicateRequest q = MERPATI__REPL__V1__REPLICATE_REQUEST__INIT;
	sr.shard = shard;
	sr.epoch = epoch;
	sr.records = recs;
	sr.n_records = n_log + n_extra;
	sr.commit_lsn = store_get_in_sync_lsn(r->st, shard);
	q.leader_id = r->node_id;
	q.shards = &srp;
	q.n_shards = 1;
	ProtobufCMessage *resp = NULL;
	char *error = NULL;
	struct mp_rpc_channel *ch = chan_get(r, addr);
	ret = ch == NULL ? MP_EUNAVAIL
			 : mp_rpc_call(ch, r->path_replicate, &q.base,
				       &merpati__repl__v1__replicate_reply__descriptor,
				       timeout_ms > 0 ? timeout_ms : 1, &resp, &error);
	free(error);
	free(recs);
	store_log_free(&log);
	if (ret < 0)
		return ret;
	Merpati__Repl__V1__ReplicateReply *rep = (void *)resp;
	if (rep->n_acks != 1) {
		protobuf_c_message_free_unpacked(resp, NULL);
		return MP_EPROTO;
	}
	ack_out->code = rep->acks[0]->code;
	ack_out->epoch = rep->acks[0]->epoch;
	ack_out->last_lsn = rep->acks[0]->last_lsn;
	ack_out->last_epoch = rep->acks[0]->last_epoch;
	protobuf_c_message_free_unpacked(resp, NULL);
	return 0;
}

void repl_hook(void *arg, const struct store_rec *recs, size_t n, int *result)
{
	struct repl *r = arg;
	struct run *runs = calloc(n, sizeof(*runs));
	struct peer *peers = calloc(MP_REPLICAS_MAX * 8, sizeof(*peers));
	size_t n_runs = 0, n_peers = 0, max_peers = MP_REPLICAS_MAX * 8;
	struct wait w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0 };
	int64_t deadline = now_ms() + r->ack_timeout_ms;

	if (runs == NULL || peers == NULL) {
		for (size_t i = 0; i < n; i++)
			result[i] = STORE_REPL_REFUSED;
		free(runs);
		free(peers);
		return;
	}
	pthread_mutex_lock(&r->mu);
	uint32_t min_isr;
	pthread_mutex_lock(&r->map->mu);
	min_isr = r->map->config.min_isr ? r->map->config.min_isr : 1;
	pthread_mutex_unlock(&r->map->mu);

	/* Runs of one shard; decide who gets them. */
	for (size_t i = 0; i < n;) {
		struct run *ru = &runs[n_runs++];
		ru->first = i;
		ru->shard = recs[i].shard;
		ru->epoch = recs[i].epoch;
		while (i < n && recs[i].shard == ru->shard)
			i++;
		ru->n = i - ru->first;
		int64_t mod;
		if (mp_shardmap_get_shard(r->map, ru->shard, &ru->rec, &mod) < 0 ||
		    strcmp(ru->rec.leader, r->node_id) != 0 || ru->rec.epoch != ru->epoch) {
			ru->result = STORE_REPL_FENCED;
			continue;
		}
		if (ru->rec.n_isr < min_isr) {
			ru->result = STORE_REPL_REFUSED;
			continue;
		}
		ru->send = true;
		for (size_t k = 0; k < ru->rec.n_isr; k++) {
			const char *id = ru->rec.isr[k];
			if (strcmp(id, r->node_id) == 0)
				continue;
			size_t p;
			for (p = 0; p < n_peers; p++)
				if (strcmp(peers[p].id, id) == 0)
					break;
			if (p == n_peers) {
				if (n_peers == max_peers) {
					ru->failed[replica_index(&ru->rec, id)] = true;
					continue;
				}
				snprintf(peers[p].id, sizeof(peers[p].id), "%s", id);
				if (mp_shardmap_node_addr(r->map, id, peers[p].addr) < 0)
					peers[p].addr[0] = '\0';
				peers[p].w = &w;
				n_peers++;
			}
			if (peers[p].n_runs < sizeof(peers[p].runs) / sizeof(peers[p].runs[0]))
				peers[p].runs[peers[p].n_runs++] = (size_t)(ru - runs);
			else
				ru->failed[replica_index(&ru->rec, id)] = true;
		}
	}

	/* Send to every follower at once. */
	for (size_t p = 0; p < n_peers; p++) {
		struct peer *pe = &peers[p];
		Merpati__Repl__V1__ShardRecords *srs = calloc(pe->n_runs, sizeof(*srs));
		Merpati__Repl__V1__ShardRecords **srp = calloc(pe->n_runs, sizeof(*srp));
		ProtobufCBinaryData *bins = calloc(n, sizeof(*bins));
		Merpati__Repl__V1__ReplicateRequest q = MERPATI__REPL__V1__REPLICATE_REQUEST__INIT;
		struct mp_rpc_channel *ch = pe->addr[0] ? chan_get(r, pe->addr) : NULL;
		pe->err = MP_EUNAVAIL;
		if (srs != NULL && srp != NULL && bins != NULL && ch != NULL) {
			size_t b = 0;
			for (size_t k = 0; k < pe->n_runs; k++) {
				struct run *ru = &runs[pe->runs[k]];
				merpati__repl__v1__shard_records__init(&srs[k]);
				srs[k].shard = ru->shard;
				srs[k].epoch = ru->epoch;
				/* what every in-sync member held before this
				 * group: the follower trims its log by it */
				srs[k].commit_lsn = store_get_in_sync_lsn(r->st, ru->shard);
				srs[k].records = &bins[b];
				srs[k].n_records = ru->n;
				for (size_t j = 0; j < ru->n; j++, b++) {
					bins[b].data = (uint8_t *)recs[ru->first + j].data;
					bins[b].len = recs[ru->first + j].len;
				}
				srp[k] = &srs[k];
			}
			q.leader_id = r->node_id;
			q.shards = srp;
			q.n_shards = pe->n_runs;
			pthread_mutex_lock(&w.mu);
			w.pending++;
			pthread_mutex_unlock(&w.mu);
			if (mp_rpc_call_async(ch, r->cq, r->path_replicate, &q.base,
					      &merpati__repl__v1__replicate_reply__descriptor,
					      r->ack_timeout_ms, peer_done, pe) < 0) {
				pthread_mutex_lock(&w.mu);
				w.pending--;
				pthread_mutex_unlock(&w.mu);
				pe->err = MP_EUNAVAIL;
			}
		}
		free(srs);
		free(srp);
		free(bins);
	}
	/* Every started call completes by its deadline. */
	pthread_mutex_lock(&w.mu);
	while (w.pending > 0)
		pthread_cond_wait(&w.cv, &w.mu);
	pthread_mutex_unlock(&w.mu);

	/* Who has what. */
	for (size_t p = 0; p < n_peers; p++) {
		struct peer *pe = &peers[p];
		for (size_t k = 0; k < pe->n_runs; k++) {
			struct run *ru = &runs[pe->runs[k]];
			int idx = replica_index(&ru->rec, pe->id);
			uint64_t last = recs[ru->first + ru->n - 1].lsn;
			Merpati__Repl__V1__ShardAck ack = MERPATI__REPL__V1__SHARD_ACK__INIT;
			bool have = false;
			if (pe->err == 0 && pe->reply != NULL && k < pe->reply->n_acks) {
				ack = *pe->reply->acks[k];
				have = true;
			}
			if (have && ack.code == 0 && ack.last_lsn >= last)
				continue;
			if (have && ack.code == GRPC_FAILED_PRECONDITION && ack.epoch > ru->epoch) {
				ru->fenced = true;
				continue;
			}
			if (have && ack.code == GRPC_OUT_OF_RANGE && ack.last_lsn < recs[ru->first].lsn &&
			    same_history(r, ru->shard, ack.last_lsn, ack.last_epoch)) {
				/* Behind: send the missing records and these. */
				Merpati__Repl__V1__ShardAck a2 = MERPATI__REPL__V1__SHARD_ACK__INIT;
				int ret = send_catchup(r, pe->addr, ru->shard, ru->epoch, ack.last_lsn + 1,
						       &recs[ru->first], ru->n, deadline - now_ms(), &a2);
				if (ret == 0 && a2.code == 0 && a2.last_lsn >= last)
					continue;
			}
			if (idx >= 0)
				ru->failed[idx] = true;
		}
		if (pe->reply != NULL)
			protobuf_c_message_free_unpacked(&pe->reply->base, NULL);
	}

	/* Shrink the ISR where a follower failed, before anything is acked. */
	for (size_t i = 0; i < n_runs; i++) {
		struct run *ru = &runs[i];
		if (!ru->send)
			continue;
		if (ru->fenced) {
			ru->result = STORE_REPL_FENCED;
			continue;
		}
		bool any = false;
		for (size_t k = 0; k < ru->rec.n_replicas; k++)
			any |= ru->failed[k];
		if (!any) {
			ru->result = STORE_REPL_OK;
			continue;
		}
		struct mp_shard_rec nrec;
		int ret = isr_edit(r, ru->shard, ru->epoch, ru->failed, NULL, &nrec);
		if (ret == MP_ENOTLEADER)
			ru->result = STORE_REPL_FENCED;
		else if (ret < 0)
			/* etcd unreachable: the failed follower stays in the ISR
			 * without these records, so they cannot be acked; they
			 * are written here (we are still the leader) and the
			 * follower is caught up by the next group. */
			ru->result = STORE_REPL_UNDER_MIN;
		else
			ru->result = nrec.n_isr >= min_isr ? STORE_REPL_OK : STORE_REPL_UNDER_MIN;
	}
	pthread_mutex_unlock(&r->mu);

	for (size_t i = 0; i < n_runs; i++)
		for (size_t j = 0; j < runs[i].n; j++)
			result[runs[i].first + j] = runs[i].result;
	free(runs);
	free(peers);
}

/* ------------------------------------------------------------ service */

struct rep_call {
	struct mp_rpc_call *call;
	pthread_mutex_t mu;
	size_t pending;
	Merpati__Repl__V1__ReplicateReply reply;
	Merpati__Repl__V1__ShardAck *acks;      /* owned */
	Merpati__Repl__V1__ShardAck **ackp;     /* owned */
	char **errors;                          /* owned strings */
	struct rep_slot *slots;                 /* owned */
};

struct rep_slot {
	struct rep_call *rc;
	struct repl *r;
	size_t i;
};

static void rep_call_finish(struct rep_call *rc)
{
	mp_rpc_reply(rc->call, &rc->reply.base, 0, NULL);
	for (size_t i = 0; i < rc->reply.n_acks; i++)
		free(rc->errors[i]);
	free(rc->errors);
	free(rc->acks);
	free(rc->ackp);
	free(rc->slots);
	pthread_mutex_destroy(&rc->mu);
	free(rc);
}

static void apply_done(int err, const char *msg, uint64_t epoch, uint64_t last, void *arg)
{
	struct rep_slot *s = arg;
	struct rep_call *rc = s->rc;
	Merpati__Repl__V1__ShardAck *a = &rc->acks[s->i];
	a->code = (uint32_t)mp_err_to_grpc(err);
	a->epoch = epoch;
	a->last_lsn = last;
	if (last > 0 && store_log_epoch(s->r->st, a->shard, last, &a->last_epoch) < 0)
		a->last_epoch = 0;
	if (err < 0 && msg != NULL) {
		rc->errors[s->i] = strdup(msg);
		a->error = rc->errors[s->i] ? rc->errors[s->i] : (char *)"";
	}
	pthread_mutex_lock(&rc->mu);
	bool last_one = --rc->pending == 0;
	pthread_mutex_unlock(&rc->mu);
	if (last_one)
		rep_call_finish(rc);
}

static void h_replicate(struct mp_rpc_call *call, const ProtobufCMessage *req, void *ctx)
{
	struct repl *r = ctx;
	const Merpati__Repl__V1__ReplicateRequest *q = (const void *)req;
	struct rep_call *rc = calloc(1, sizeof(*rc));
	size_t n = q->n_shards;
	if (rc == NULL) {
		mp_rpc_reply(call, NULL, MP_ENOMEM, "out of memory");
		return;
	}
	rc->call = call;
	pthread_mutex_init(&rc->mu, NULL);
	merpati__repl__v1__replicate_reply__init(&rc->reply);
	rc->acks = calloc(n + 1, sizeof(*rc->acks));
	rc->ackp = calloc(n + 1, sizeof(*rc->ackp));
	rc->errors = calloc(n + 1, sizeof(*rc->errors));
	rc->slots = calloc(n + 1, sizeof(*rc->slots));
	if (rc->acks == NULL || rc->ackp == NULL || rc->errors == NULL || rc->slots == NULL) {
		free(rc->acks);
		free(rc->ackp);
		free(rc->errors);
		free(rc->slots);
		free(rc);
		mp_rpc_reply(call, NULL, MP_ENOMEM, "out of memory");
		return;
	}
	rc->reply.acks = rc->ackp;
	rc->reply.n_acks = n;
	rc->pending = 1; /* held until every apply is queued */
	uint32_t nshards = store_shard_count(r->st);
	for (size_t i = 0; i < n; i++) {
		const Merpati__Repl__V1__ShardRecords *sr = q->shards[i];
		Merpati__Repl__V1__ShardAck *a = &rc->acks[i];
		merpati__repl__v1__shard_ack__init(a);
		rc->ackp[i] = a;
		a->shard = sr->shard;
		if (sr->shard >= nshards) {
			a->code = (uint32_t)mp_err_to_grpc(MP_EINVAL);
			a->error = (char *)"no such shard";
			continue;
		}
		/* Before the apply, so its write trims by it; the store
		 * ignores it from an epoch older than the shard's. */
		store_set_in_sync_lsn(r->st, sr->shard, sr->epoch, sr->commit_lsn);
		if (sr->n_records == 0) {
			enum store_role role;
			store_get_pos(r->st, sr->shard, &role, &a->epoch, &a->last_lsn);
			if (a->last_lsn > 0 &&
			    store_log_epoch(r->st, sr->shard, a->last_lsn, &a->last_epoch) < 0)
				a->last_epoch = 0;
			continue;
		}
		rc->slots[i].rc = rc;
		rc->slots[i].r = r;
		rc->slots[i].i = i;
		pthread_mutex_lock(&rc->mu);
		rc->pending++;
		pthread_mutex_unlock(&rc->mu);
		int ret = store_apply(r->st, sr->shard, sr->epoch, sr->records, sr->n_records,
				      apply_done, &rc->slots[i]);
		if (ret < 0) {
			pthread_mutex_lock(&rc->mu);
			rc->pending--;
			pthread_mutex_unlock(&rc->mu);
			a->code = (uint32_t)mp_err_to_grpc(ret);
			a->error = (char *)"node busy";
		}
	}
	pthread_mutex_lock(&rc->mu);
	bool last_one = --rc->pending == 0;
	pthread_mutex_unlock(&rc->mu);
	if (last_one)
		rep_call_finish(rc);
}

static void h_shard_state(struct mp_rpc_call *call, const ProtobufCMessage *req, void *ctx)
{
	struct repl *r = ctx;
	const Merpati__Repl__V1__ShardStateRequest *q = (const void *)req;
	uint32_t nshards = store_shard_count(r->st);
	size_t n = q->n_shards ? q->n_shards : nshards;
	Merpati__Repl__V1__ShardStateReply rep = MERPATI__REPL__V1__SHARD_STATE_REPLY__INIT;
	Merpati__Repl__V1__ShardPos *pos = calloc(n + 1, sizeof(*pos));
	Merpati__Repl__V1__ShardPos **pp = calloc(n + 1, sizeof(*pp));
	if (pos == NULL || pp == NULL) {
		free(pos);
		free(pp);
		mp_rpc_reply(call, NULL, MP_ENOMEM, "out of memory");
		return;
	}
	rep.node_id = r->node_id;
	for (size_t i = 0; i < n; i++) {
		uint32_t s = q->n_shards ? q->shards[i] : (uint32_t)i;
		enum store_role role = STORE_ROLE_NONE;
		merpati__repl__v1__shard_pos__init(&pos[rep.n_pos]);
		if (s >= nshards)
			continue;
		pos[rep.n_pos].shard = s;
		store_get_pos(r->st, s, &role, &pos[rep.n_pos].epoch, &pos[rep.n_pos].lsn);
		pos[rep.n_pos].role = role;
		pp[rep.n_pos] = &pos[rep.n_pos];
		rep.n_pos++;
	}
	rep.pos = pp;
	mp_rpc_reply(call, &rep.base, 0, NULL);
	free(pos);
	free(pp);
}

/* Leader: stream a shard's snapshot in chunks of about SNAP_CHUNK bytes,
 * on a thread of its own (snap_main): the stream's send completions come
 * back on the completion queue of the server thread that took the call, so
 * a handler that waited there for room in the send queue would wait for
 * itself (a snapshot of more than max_queue chunks never got through). */
#define SNAP_CHUNK (1u << 20)
#define SNAP_KVS_MAX 4096
#define SNAP_QUEUE 4
#define SNAP_WORKERS_MAX 8

struct snap_out {
	struct repl *r;
	struct mp_rpc_call *call;
	uint32_t shard;
	char follower[MP_NODE_ID_MAX + 1];
	Merpati__Repl__V1__SnapshotKV kv[SNAP_KVS_MAX];
	Merpati__Repl__V1__SnapshotKV *kvp[SNAP_KVS_MAX];
	uint8_t *buf;        /* owned: copies of keys and values of this chunk */
	size_t used, cap, n;
	uint64_t epoch, lsn;
	bool first;
};

static bool snap_stopping(struct repl *r)
{
	pthread_mutex_lock(&r->snap_mu);
	bool stop = r->snap_stop;
	pthread_mutex_unlock(&r->snap_mu);
	return stop;
}

static int snap_flush(struct snap_out *o, bool last)
{
	Merpati__Repl__V1__SnapshotChunk ch = MERPATI__REPL__V1__SNAPSHOT_CHUNK__INIT;
	ch.kvs = o->kvp;
	ch.n_kvs = o->n;
	ch.last = last;
	ch.epoch = o->epoch;
	ch.lsn = o->lsn;
	/* The send queue is bounded: wait for room (the stream is the flow
	 * control), at most a minute per chunk. */
	for (int tries = 0; tries < 6000; tries++) {
		if (snap_stopping(o->r))
			return MP_ECANCELED;
		int ret = mp_rpc_stream_send(o->call, &ch.base);
		if (ret != MP_ENOSPC) {
			o->n = 0;
			o->used = 0;
			return ret;
		}
		struct timespec ts = { 0, 10 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	return MP_ETIMEDOUT;
}

static int snap_emit(void *arg, int cf, const char *key, size_t klen, const char *val,
		     size_t vlen)
{
	struct snap_out *o = arg;
	if (o->n == SNAP_KVS_MAX || (o->n > 0 && o->used + klen + vlen > o->cap)) {
		int ret = snap_flush(o, false);
		if (ret < 0)
			return ret;
	}
	if (klen + vlen > o->cap) {
		uint8_t *nb = realloc(o->buf, klen + vlen);
		if (nb == NULL)
			return MP_ENOMEM;
		o->buf = nb;
		o->cap = klen + vlen;
	}
	Merpati__Repl__V1__SnapshotKV *kv = &o->kv[o->n];
	merpati__repl__v1__snapshot_kv__init(kv);
	memcpy(o->buf + o->used, key, klen);
	kv->key.data = o->buf + o->used;
	kv->key.len = klen;
	o->used += klen;
	memcpy(o->buf + o->used, val, vlen);
	kv->value.data = o->buf + o->used;
	kv->value.len = vlen;
	o->used += vlen;
	kv->cf = (uint32_t)cf;
	o->kvp[o->n++] = kv;
	return 0;
}

static void *snap_main(void *arg)
{
	struct snap_out *o = arg;
	struct repl *r = o->r;
	/* The position comes with the last chunk: it is known only after the
	 * read, from the same RocksDB snapshot as the keys. */
	uint64_t epoch = 0, lsn = 0;
	int ret = store_snapshot_read(r->st, o->shard, snap_emit, o, &epoch, &lsn);
	o->epoch = epoch;
	o->lsn = lsn;
	if (ret == 0)
		ret = snap_flush(o, true);
	mp_log_info("repl_snapshot_sent", "shard=%u to=%s epoch=%llu lsn=%llu ret=%s", o->shard,
		    o->follower, (unsigned long long)epoch, (unsigned long long)lsn,
		    mp_strerror(ret));
	mp_rpc_stream_finish(o->call, ret, ret < 0 ? "snapshot failed" : NULL);
	mp_rpc_stream_release(o->call);
	free(o->buf);
	free(o);
	pthread_mutex_lock(&r->snap_mu);
	r->snap_workers--;
	pthread_cond_broadcast(&r->snap_cv);
	pthread_mutex_unlock(&r->snap_mu);
	return NULL;
}

static void h_snapshot(struct mp_rpc_call *call, const ProtobufCMessage *req, void *ctx)
{
	struct repl *r = ctx;
	const Merpati__Repl__V1__SnapshotRequest *q = (const void *)req;
	struct snap_out *o = calloc(1, sizeof(*o));
	const char *why = NULL;
	int err = 0;
	mp_rpc_stream_start(call, SNAP_QUEUE, NULL, NULL);
	if (o == NULL || (o->buf = malloc(SNAP_CHUNK)) == NULL) {
		err = MP_ENOMEM;
		why = "out of memory";
	} else if (q->shard >= store_shard_count(r->st)) {
		err = MP_EINVAL;
		why = "no such shard";
	}
	if (err == 0) {
		o->r = r;
		o->call = call;
		o->cap = SNAP_CHUNK;
		o->shard = q->shard;
		snprintf(o->follower, sizeof(o->follower), "%s",
			 q->follower_id != NULL ? q->follower_id : "");
		pthread_mutex_lock(&r->snap_mu);
		if (r->snap_stop || r->snap_workers >= SNAP_WORKERS_MAX) {
			err = MP_EUNAVAIL;
			why = r->snap_stop ? "node stopping" : "too many snapshots in progress";
		} else {
			pthread_attr_t at;
			pthread_t t;
			pthread_attr_init(&at);
			pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
			if (pthread_create(&t, &at, snap_main, o) == 0) {
				r->snap_workers++;
			} else {
				err = MP_ENOMEM;
				why = "cannot start a thread";
			}
			pthread_attr_destroy(&at);
		}
		pthread_mutex_unlock(&r->snap_mu);
		if (err == 0)
			return; /* snap_main owns o and the call now */
	}
	mp_rpc_stream_finish(call, err, why);
	mp_rpc_stream_release(call);
	if (o != NULL)
		free(o->buf);
	free(o);
}

static void h_shard_digest(struct mp_rpc_call *call, const ProtobufCMessage *req, void *ctx)
{
	struct repl *r = ctx;
	const Merpati__Repl__V1__ShardDigestRequest *q = (const void *)req;
	Merpati__Repl__V1__ShardDigestReply rep = MERPATI__REPL__V1__SHARD_DIGEST_REPLY__INIT;
	uint8_t sha[32];
	if (q->shard >= store_shard_count(r->st)) {
		mp_rpc_reply(call, NULL, MP_EINVAL, "no such shard");
		return;
	}
	int ret = store_shard_digest(r->st, q->shard, sha, &rep.keys, &rep.epoch, &rep.lsn);
	if (ret < 0) {
		mp_rpc_reply(call, NULL, ret, "digest failed");
		return;
	}
	rep.sha256.data = sha;
	rep.sha256.len = sizeof(sha);
	mp_rpc_reply(call, &rep.base, 0, NULL);
}

static void h_read_log(struct mp_rpc_call *call, const ProtobufCMessage *req, void *ctx)
{
	struct repl *r = ctx;
	const Merpati__Repl__V1__ReadLogRequest *q = (const void *)req;
	Merpati__Repl__V1__ReadLogReply rep = MERPATI__REPL__V1__READ_LOG_REPLY__INIT;
	struct store_log log;
	enum store_role role;
	uint64_t epoch;
	if (q->shard >= store_shard_count(r->st)) {
		mp_rpc_reply(call, NULL, MP_EINVAL, "no such shard");
		return;
	}
	store_get_pos(r->st, q->shard, &role, &epoch, &rep.last_lsn);
	size_t max = q->max_bytes ? q->max_bytes : (1u << 20);
	if (max > (8u << 20))
		max = 8u << 20;
	int ret = q->from_lsn > rep.last_lsn ? MP_ESTALE
					     : store_read_log(r->st, q->shard, q->from_lsn, max, &log);
	if (ret < 0) {
		if (ret == MP_ESTALE && q->from_lsn > rep.last_lsn)
			mp_rpc_reply(call, &rep.base, 0, NULL);   /* nothing newer */
		else
			mp_rpc_reply(call, NULL, ret, "log does not reach back that far");
		return;
	}
	rep.records = log.recs;
	rep.n_records = log.n;
	mp_rpc_reply(call, &rep.base, 0, NULL);
	store_log_free(&log);
}

static const struct mp_rpc_method methods[] = {
	{ "ReadLog", h_read_log, 0 },
	{ "ShardDigest", h_shard_digest, 0 },
	{ "Replicate", h_replicate, 0 },
	{ "ShardState", h_shard_state, 0 },
	{ "Snapshot", h_snapshot, 1 },
};

const struct mp_rpc_method *repl_methods(size_t *n_r)
{
	*n_r = sizeof(methods) / sizeof(*methods);
	return methods;
}

/* ------------------------------------------------------------ tick */

struct join {
	struct repl *r;
	uint32_t shard;
	uint64_t epoch;
	uint64_t lsn;          /* the replica's last lsn */
	char id[MP_NODE_ID_MAX + 1];
};

/* On the commit thread: no group in flight. */
static void join_exclusive(void *arg, const uint64_t *lsn)
{
	struct join *j = arg;
	struct repl *r = j->r;
	pthread_mutex_lock(&r->join_mu);
	r->join_pending[j->shard] = 0;
	pthread_mutex_unlock(&r->join_mu);
	if (lsn[j->shard] == j->lsn) {
		struct mp_shard_rec nrec;
		pthread_mutex_lock(&r->mu);
		int ret = isr_edit(r, j->shard, j->epoch, NULL, j->id, &nrec);
		pthread_mutex_unlock(&r->mu);
		if (ret < 0)
			mp_log_warn("repl_join_failed", "shard=%u replica=%s error=%s", j->shard,
				    j->id, mp_strerror(ret));
	}
	free(j);
}

static void warn_snapshot(struct repl *r, uint32_t shard, const char *id, const char *why)
{
	time_t now = time(NULL);
	if (now - r->last_warn < 10)
		return;
	r->last_warn = now;
	mp_log_warn("repl_replica_needs_snapshot", "shard=%u replica=%s why=\"%s\"", shard, id, why);
}

/* Follower: replace our copy of a shard with the leader's. */
static int pull_snapshot(struct repl *r, uint32_t shard, const char *addr)
{
	char path[128];
	struct mp_rpc_stream *stream = NULL;
	char *error = NULL;
	struct mp_rpc_channel *ch = chan_get(r, addr);
	Merpati__Repl__V1__SnapshotRequest q = MERPATI__REPL__V1__SNAPSHOT_REQUEST__INIT;
	q.shard = shard;
	q.follower_id = r->node_id;
	if (ch == NULL || mp_rpc_method_path(&merpati__repl__v1__replication__descriptor,
					     "Snapshot", path, sizeof(path)) == NULL)
		return MP_EUNAVAIL;
	int ret = mp_rpc_stream_open(ch, path, &q.base,
				     &merpati__repl__v1__snapshot_chunk__descriptor,
				     10 * 60 * 1000, &stream, &error);
	free(error);
	error = NULL;
	if (ret < 0)
		return ret;
	if ((ret = store_snapshot_begin(r->st, shard)) < 0) {
		mp_rpc_stream_close(&stream);
		return ret;
	}
	bool done = false;
	size_t keys = 0;
	while (!done) {
		ProtobufCMessage *m = NULL;
		ret = mp_rpc_stream_next(stream, 60000, &m, &error);
		free(error);
		error = NULL;
		if (ret != 0) {
			if (ret == 1)
				ret = MP_EPROTO; /* ended without its last chunk */
			break;
		}
		Merpati__Repl__V1__SnapshotChunk *c = (void *)m;
		int *cfs = calloc(c->n_kvs + 1, sizeof(*cfs));
		ProtobufCBinaryData *ks = calloc(c->n_kvs + 1, sizeof(*ks));
		ProtobufCBinaryData *vs = calloc(c->n_kvs + 1, sizeof(*vs));
		if (cfs == NULL || ks == NULL || vs == NULL) {
			ret = MP_ENOMEM;
		} else {
			for (size_t i = 0; i < c->n_kvs; i++) {
				cfs[i] = (int)c->kvs[i]->cf;
				ks[i] = c->kvs[i]->key;
				vs[i] = c->kvs[i]->value;
			}
			ret = c->n_kvs ? store_snapshot_put(r->st, shard, cfs, ks, vs, c->n_kvs) : 0;
			keys += c->n_kvs;
		}
		free(cfs);
		free(ks);
		free(vs);
		if (ret == 0 && c->last) {
			ret = store_snapshot_end(r->st, shard, c->epoch, c->lsn);
			done = true;
		}
		protobuf_c_message_free_unpacked(m, NULL);
		if (ret < 0)
			break;
	}
	mp_rpc_stream_close(&stream);
	mp_log_info("repl_snapshot_pulled", "shard=%u from=%s keys=%zu ret=%s", shard, addr,
		    keys, mp_strerror(ret));
	return ret;
}

/* Follower of a shard, not in sync: can the leader's log still bring us
 * level (it reaches back to our lsn and agrees with our last record)? If
 * not, pull a snapshot. */
static void follower_check(struct repl *r, uint32_t shard, const struct mp_shard_rec *rec)
{
	char addr[MP_ADDR_MAX + 1], path[128];
	time_t now = time(NULL);
	if (now - r->checked[shard] < 2)
		return;
	r->checked[shard] = now;
	if (mp_shardmap_node_addr(r->map, rec->leader, addr) < 0 ||
	    mp_rpc_method_path(&merpati__repl__v1__replication__descriptor, "ReadLog", path,
			       sizeof(path)) == NULL)
		return;
	enum store_role role;
	uint64_t ep, lsn;
	store_get_pos(r->st, shard, &role, &ep, &lsn);
	Merpati__Repl__V1__ReadLogRequest q = MERPATI__REPL__V1__READ_LOG_REQUEST__INIT;
	q.shard = shard;
	q.from_lsn = lsn > 0 ? lsn : 1;
	q.max_bytes = 1;
	ProtobufCMessage *resp = NULL;
	char *error = NULL;
	struct mp_rpc_channel *ch = chan_get(r, addr);
	int ret = ch == NULL ? MP_EUNAVAIL
			     : mp_rpc_call(ch, path, &q.base,
					   &merpati__repl__v1__read_log_reply__descriptor, 2000,
					   &resp, &error);
	free(error);
	bool need = false;
	if (ret == MP_ESTALE) {
		need = true;  /* the leader's log no longer reaches back to us */
	} else if (ret == 0) {
		Merpati__Repl__V1__ReadLogReply *rep = (void *)resp;
		if (lsn > rep->last_lsn) {
			need = true;  /* we hold records the leader does not */
		} else if (lsn > 0 && rep->n_records > 0) {
			Merpati__Rec__LogRecord *lr = merpati__rec__log_record__unpack(
				NULL, rep->records[0].len, rep->records[0].data);
			uint64_t mine;
			if (lr != NULL && lr->lsn == lsn &&
			    (store_log_epoch(r->st, shard, lsn, &mine) < 0 || mine != lr->epoch))
				need = true;  /* our last record is not the leader's */
			if (lr != NULL)
				merpati__rec__log_record__free_unpacked(lr, NULL);
		}
		protobuf_c_message_free_unpacked(resp, NULL);
	}
	if (need)
		(void)pull_snapshot(r, shard, addr);
}

/* Bring one out-of-sync replica closer; ask it to join when level. */
static void catch_up(struct repl *r, uint32_t shard, const struct mp_shard_rec *rec,
		     const char *id)
{
	char addr[MP_ADDR_MAX + 1];
	Merpati__Repl__V1__ShardAck ack = MERPATI__REPL__V1__SHARD_ACK__INIT;
	enum store_role role;
	uint64_t my_epoch, my_lsn;

	if (mp_shardmap_node_addr(r->map, id, addr) < 0)
		return; /* not alive */
	for (int round = 0; round < 8; round++) {
		if (send_catchup(r, addr, shard, rec->epoch, 0, NULL, 0, 1000, &ack) < 0)
			return;
		if (ack.code == GRPC_FAILED_PRECONDITION)
			return;
		store_get_pos(r->st, shard, &role, &my_epoch, &my_lsn);
		if (ack.last_lsn > my_lsn) {
			warn_snapshot(r, shard, id, "replica is ahead of the leader");
			return;
		}
		if (!same_history(r, shard, ack.last_lsn, ack.last_epoch)) {
			warn_snapshot(r, shard, id, "replica's log diverged from the leader's");
			return;
		}
		if (ack.last_lsn == my_lsn) {
			pthread_mutex_lock(&r->join_mu);
			bool pending = r->join_pending[shard];
			r->join_pending[shard] = 1;
			pthread_mutex_unlock(&r->join_mu);
			if (pending)
				return;
			struct join *j = calloc(1, sizeof(*j));
			if (j == NULL)
				return;
			j->r = r;
			j->shard = shard;
			j->epoch = rec->epoch;
			j->lsn = my_lsn;
			snprintf(j->id, sizeof(j->id), "%s", id);
			if (store_run_exclusive(r->st, join_exclusive, j) < 0) {
				free(j);
				pthread_mutex_lock(&r->join_mu);
				r->join_pending[shard] = 0;
				pthread_mutex_unlock(&r->join_mu);
			}
			return;
		}
		struct store_log log;
		int ret = store_read_log(r->st, shard, ack.last_lsn + 1, r->catchup_bytes, &log);
		if (ret == MP_ESTALE) {
			warn_snapshot(r, shard, id, "the log no longer reaches back to the replica");
			return;
		}
		if (ret < 0)
			return;
		struct store_rec *sr = calloc(log.n, sizeof(*sr));
		if (sr == NULL) {
			store_log_free(&log);
			return;
		}
		for (size_t i = 0; i < log.n; i++) {
			sr[i].shard = shard;
			sr[i].lsn = ack.last_lsn + 1 + i;
			sr[i].data = log.recs[i].data;
			sr[i].len = log.recs[i].len;
		}
		ret = send_catchup(r, addr, shard, rec->epoch, sr[0].lsn, sr, log.n, 5000, &ack);
		free(sr);
		store_log_free(&log);
		if (ret < 0 || ack.code != 0)
			return;
	}
}

static void take_done(int err, const char *msg, uint64_t epoch, uint64_t last, void *arg)
{
	(void)msg;
	(void)epoch;
	(void)last;
	*(int *)arg = err;
}

/* A new leader may be behind an in-sync follower: the deposed leader's
 * last group can have reached some followers and not us. Those records
 * were never acknowledged, but they are in a replica's state now and
 * cannot be undone there, so the new leader adopts them (Raft's "longest
 * log" among the in-sync set) before it serves. */
static void take_longest_log(struct repl *r, uint32_t shard, const struct mp_shard_rec *rec)
{
	char path[128];
	if (mp_rpc_method_path(&merpati__repl__v1__replication__descriptor, "ReadLog", path,
			       sizeof(path)) == NULL)
		return;
	for (size_t i = 0; i < rec->n_isr; i++) {
		char addr[MP_ADDR_MAX + 1];
		if (strcmp(rec->isr[i], r->node_id) == 0 ||
		    mp_shardmap_node_addr(r->map, rec->isr[i], addr) < 0)
			continue;
		for (int round = 0; round < 16; round++) {
			enum store_role role;
			uint64_t ep, lsn;
			store_get_pos(r->st, shard, &role, &ep, &lsn);
			Merpati__Repl__V1__ReadLogRequest q = MERPATI__REPL__V1__READ_LOG_REQUEST__INIT;
			q.shard = shard;
			q.from_lsn = lsn + 1;
			ProtobufCMessage *resp = NULL;
			char *error = NULL;
			struct mp_rpc_channel *ch = chan_get(r, addr);
			int ret = ch == NULL ? MP_EUNAVAIL
					     : mp_rpc_call(ch, path, &q.base,
							   &merpati__repl__v1__read_log_reply__descriptor,
							   1000, &resp, &error);
			free(error);
			if (ret < 0)
				break;
			Merpati__Repl__V1__ReadLogReply *rep = (void *)resp;
			if (rep->n_records == 0) {
				protobuf_c_message_free_unpacked(resp, NULL);
				break;
			}
			struct apply_wait_s { int err; } aw = { 0 };
			ret = store_apply(r->st, shard, rec->epoch, rep->records, rep->n_records,
					  take_done, &aw);
			mp_log_info("repl_took_records", "shard=%u from=%s records=%zu err=%s",
				    shard, rec->isr[i], rep->n_records,
				    mp_strerror(ret < 0 ? ret : aw.err));
			protobuf_c_message_free_unpacked(resp, NULL);
			if (ret < 0 || aw.err < 0)
				break;
		}
	}
}

enum tick_work { TW_NONE, TW_TAKEOVER, TW_LEAD, TW_CHECK };

/* The shard's record, and whether it still names us in the way pass 1
 * saw (leader at that epoch, or a follower out of the ISR). */
static bool tick_still(struct repl *r, uint32_t s, enum tick_work w, uint64_t epoch,
		       struct mp_shard_rec *rec)
{
	int64_t mod;
	if (mp_shardmap_get_shard(r->map, s, rec, &mod) < 0 || rec->epoch != epoch)
		return false;
	if (w == TW_CHECK)
		return strcmp(rec->leader, r->node_id) != 0 &&
		       mp_shard_rec_has_replica(rec, r->node_id) &&
		       !mp_shard_rec_in_isr(rec, r->node_id);
	return strcmp(rec->leader, r->node_id) == 0;
}

/* Every shard's role from the map, and what each needs done (r->work).
 * 0, or MP_EUNAVAIL when the map is not loaded (or has another shard count). */
static int tick_roles(struct repl *r)
{
	uint32_t nshards;
	pthread_mutex_lock(&r->map->mu);
	nshards = r->map->config.shards;
	pthread_mutex_unlock(&r->map->mu);
	if (nshards == 0 || nshards != store_shard_count(r->st) || nshards != r->nshards)
		return MP_EUNAVAIL;
	for (uint32_t s = 0; s < nshards; s++) {
		struct mp_shard_rec rec;
		int64_t mod;
		r->work[s] = TW_NONE;
		if (mp_shardmap_get_shard(r->map, s, &rec, &mod) < 0) {
			store_set_role(r->st, s, STORE_ROLE_NONE, 0, "");
			continue;
		}
		r->work_epoch[s] = rec.epoch;
		enum store_role role = strcmp(rec.leader, r->node_id) == 0 ? STORE_ROLE_LEADER
				       : mp_shard_rec_has_replica(&rec, r->node_id) ? STORE_ROLE_FOLLOWER
				       : STORE_ROLE_NONE;
		if (role == STORE_ROLE_LEADER) {
			enum store_role have;
			uint64_t ep, lsn;
			store_get_pos(r->st, s, &have, &ep, &lsn);
			if (have != STORE_ROLE_LEADER || ep < rec.epoch) {
				/* Taking over: fence the old epoch now; serve
				 * after take_longest_log (below). */
				store_set_role(r->st, s, STORE_ROLE_FOLLOWER, rec.epoch, rec.leader);
				r->work[s] = TW_TAKEOVER;
				continue;
			}
			r->work[s] = TW_LEAD;
		} else if (role == STORE_ROLE_FOLLOWER && !mp_shard_rec_in_isr(&rec, r->node_id)) {
			r->work[s] = TW_CHECK;
		}
		store_set_role(r->st, s, role, rec.epoch, rec.leader);
	}
	return 0;
}

void repl_roles(struct repl *r)
{
	(void)tick_roles(r);
}

/* Roles first, for every shard, then the slow work (RPCs to other nodes,
 * snapshots), so a node that lost a shard stops serving it at the next
 * tick however long another shard's catch-up or snapshot takes. */
void repl_tick(struct repl *r)
{
	uint32_t nshards = r->nshards;
	if (tick_roles(r) < 0)
		return;
	/* Take whatever an in-sync replica holds beyond us, then lead. */
	for (uint32_t s = 0; s < nshards; s++) {
		struct mp_shard_rec rec;
		if (r->work[s] != TW_TAKEOVER)
			continue;
		r->work[s] = TW_NONE;
		if (!tick_still(r, s, TW_TAKEOVER, r->work_epoch[s], &rec))
			continue;  /* changed meanwhile: the next tick decides */
		take_longest_log(r, s, &rec);
		store_set_role(r->st, s, STORE_ROLE_LEADER, rec.epoch, rec.leader);
		r->work[s] = TW_LEAD;
	}
	/* Lagging replicas of the shards we lead, then our own lag. */
	for (uint32_t s = 0; s < nshards; s++) {
		struct mp_shard_rec rec;
		if (r->work[s] != TW_LEAD || !tick_still(r, s, TW_LEAD, r->work_epoch[s], &rec))
			continue;
		for (size_t i = 0; i < rec.n_replicas; i++)
			if (strcmp(rec.replicas[i], r->node_id) != 0 &&
			    !mp_shard_rec_in_isr(&rec, rec.replicas[i]))
				catch_up(r, s, &rec, rec.replicas[i]);
	}
	for (uint32_t s = 0; s < nshards; s++) {
		struct mp_shard_rec rec;
		if (r->work[s] == TW_CHECK && tick_still(r, s, TW_CHECK, r->work_epoch[s], &rec))
			follower_check(r, s, &rec);
	}
}

/* ------------------------------------------------------------ life */

int repl_create(const struct repl_opts *o, struct repl **r_r)
{
	struct repl *r = calloc(1, sizeof(*r));
	if (r == NULL)
		return MP_ENOMEM;
	snprintf(r->node_id, sizeof(r->node_id), "%s", o->node_id);
	r->st = o->st;
	r->etcd = o->etcd;
	r->map = o->map;
	r->ack_timeout_ms = o->ack_timeout_ms > 0 ? o->ack_timeout_ms : 2000;
	r->catchup_bytes = o->catchup_bytes > 0 ? o->catchup_bytes : (1u << 20);
	pthread_mutex_init(&r->mu, NULL);
	pthread_mutex_init(&r->ch_mu, NULL);
	pthread_mutex_init(&r->join_mu, NULL);
	pthread_mutex_init(&r->snap_mu, NULL);
	pthread_cond_init(&r->snap_cv, NULL);
	r->nshards = store_shard_count(o->st);
	r->join_pending = calloc(r->nshards + 1, 1);
	r->checked = calloc(r->nshards + 1, sizeof(*r->checked));
	r->work = calloc(r->nshards + 1, sizeof(*r->work));
	r->work_epoch = calloc(r->nshards + 1, sizeof(*r->work_epoch));
	if (r->join_pending == NULL || r->checked == NULL || r->work == NULL ||
	    r->work_epoch == NULL) {
		repl_free(&r);
		return MP_ENOMEM;
	}
	if (mp_rpc_method_path(&merpati__repl__v1__replication__descriptor, "Replicate",
			       r->path_replicate, sizeof(r->path_replicate)) == NULL ||
	    mp_rpc_method_path(&merpati__repl__v1__replication__descriptor, "ShardState",
			       r->path_state, sizeof(r->path_state)) == NULL ||
	    mp_rpc_cq_start(&r->cq) < 0) {
		repl_free(&r);
		return MP_ENOMEM;
	}
	*r_r = r;
	return 0;
}

void repl_stop(struct repl *r)
{
	if (r == NULL)
		return;
	pthread_mutex_lock(&r->snap_mu);
	r->snap_stop = true;
	while (r->snap_workers > 0)
		pthread_cond_wait(&r->snap_cv, &r->snap_mu);
	pthread_mutex_unlock(&r->snap_mu);
}

void repl_free(struct repl **rp)
{
	struct repl *r = *rp;
	if (r == NULL)
		return;
	*rp = NULL;
	repl_stop(r);
	mp_rpc_cq_stop(&r->cq);
	for (size_t i = 0; i < r->n_chans; i++)
		mp_rpc_channel_close(&r->chans[i].ch);
	pthread_mutex_destroy(&r->mu);
	pthread_mutex_destroy(&r->ch_mu);
	pthread_mutex_destroy(&r->join_mu);
	pthread_mutex_destroy(&r->snap_mu);
	pthread_cond_destroy(&r->snap_cv);
	free(r->join_pending);
	free(r->checked);
	free(r->work);
	free(r->work_epoch);
	free(r);
}
