/*
 * controller: the placement controller (controller.h, docs/DESIGN.md
 * "Cluster"). ctl_plan is a pure function from a snapshot (map, live nodes,
 * drain requests, reported positions) to at most one new record per shard;
 * the ctl thread campaigns for the leased "controller" key and, while it
 * holds it, snapshots the map, asks positions only when a shard's leader is
 * gone, plans, and writes each record by CAS.
 *
 * Never: write a shard record without CAS on what the map last saw; pick a
 * leader outside the ISR; drop a replica unless rf live non-draining in-sync
 * members remain without it (dead ones excepted: they count for nothing);
 * let a plan depend on the order nodes were listed in (ties go by node id).
 */
#include "controller.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mp_error.h"
#include "mp_etcd.h"
#include "mp_log.h"
#include "mp_rpc.h"
#include "replication.pb-c.h"

#define CTL_DEFAULT_INTERVAL_MS 200
#define CTL_MAX_ACTIONS 256          /* per round; the rest next round */
#define CTL_STATE_TIMEOUT_MS 1000    /* ShardState per node */
#define CTL_KEY "controller"
#define CTL_NONE ((size_t)-1)

/* ============================================================ planning */

struct plan {
	const struct ctl_input *in;
	uint32_t *load;                 /* owned: replicas per live node */
	uint32_t *lead;                 /* owned: leaderships per live node */
	const struct ctl_pos **pos;     /* owned array, borrowed elements: by (shard, node) */
	size_t *order;                  /* owned: scratch, n_nodes entries */
	struct ctl_action *out;         /* borrowed */
	size_t n_out, max;
};

/* Index of a live node, or CTL_NONE. Linear: clusters are small. */
static size_t plan_node(const struct plan *p, const char *id)
{
	for (size_t i = 0; i < p->in->n_nodes; i++)
		if (strcmp(p->in->nodes[i].id, id) == 0)
			return i;
	return CTL_NONE;
}

static bool plan_live(const struct plan *p, const char *id)
{
	return plan_node(p, id) != CTL_NONE;
}

/* Live and not being drained: may receive replicas and leaderships. */
static bool plan_eligible(const struct plan *p, const char *id)
{
	size_t i = plan_node(p, id);

	return i != CTL_NONE && !p->in->nodes[i].draining;
}

static bool ids_has(const char ids[][MP_NODE_ID_MAX + 1], size_t n, const char *id)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(ids[i], id) == 0)
			return true;
	return false;
}

static size_t rec_count_eligible(const struct plan *p, const struct mp_shard_rec *r)
{
	size_t n = 0;

	for (size_t i = 0; i < r->n_replicas; i++)
		if (plan_eligible(p, r->replicas[i]))
			n++;
	return n;
}

static size_t rec_count_isr_eligible(const struct plan *p, const struct mp_shard_rec *r)
{
	size_t n = 0;

	for (size_t i = 0; i < r->n_isr; i++)
		if (plan_eligible(p, r->isr[i]))
			n++;
	return n;
}

/* Add (sign 1) or take back (sign -1) a record's replicas and leadership
 * from the counters the plan's choices are based on. */
static void plan_account(struct plan *p, const struct mp_shard_rec *r, int sign)
{
	size_t k;

	for (size_t i = 0; i < r->n_replicas; i++) {
		if ((k = plan_node(p, r->replicas[i])) != CTL_NONE)
			p->load[k] += (uint32_t)sign;
	}
	if ((k = plan_node(p, r->leader)) != CTL_NONE)
		p->lead[k] += (uint32_t)sign;
}

static int pos_cmp(const void *a, const void *b)
{
	const struct ctl_pos *x = *(const struct ctl_pos *const *)a;
	const struct ctl_pos *y = *(const struct ctl_pos *const *)b;

	if (x->shard != y->shard)
		return x->shard < y->shard ? -1 : 1;
	return strcmp(x->node, y->node);
}

/* The highest lsn a node reported for a shard; false when it reported
 * nothing (several reports of one node: the highest counts). */
static bool plan_lsn(const struct plan *p, uint32_t shard, const char *node,
		     uint64_t *lsn_r)
{
	size_t lo = 0, hi = p->in->n_pos;
	bool found = false;

	while (lo < hi) {   /* first entry >= (shard, node) */
		size_t mid = lo + (hi - lo) / 2;
		const struct ctl_pos *q = p->pos[mid];

		if (q->shard < shard || (q->shard == shard && strcmp(q->node, node) < 0))
			lo = mid + 1;
		else
			hi = mid;
	}
	*lsn_r = 0;
	for (; lo < p->in->n_pos && p->pos[lo]->shard == shard &&
	       strcmp(p->pos[lo]->node, node) == 0; lo++) {
		if (!found || p->pos[lo]->lsn > *lsn_r)
			*lsn_r = p->pos[lo]->lsn;
		found = true;
	}
	return found;
}

/* Leader preference: highest reported lsn (a node that reported beats one
 * that did not at the same lsn), then fewest leaderships, then id. */
static bool leader_better(const struct plan *p, uint32_t shard, size_t a, size_t b)
{
	uint64_t la, lb;
	bool ka = plan_lsn(p, shard, p->in->nodes[a].id, &la);
	bool kb = plan_lsn(p, shard, p->in->nodes[b].id, &lb);

	if (la != lb)
		return la > lb;
	if (ka != kb)
		return ka;
	if (p->lead[a] != p->lead[b])
		return p->lead[a] < p->lead[b];
	return strcmp(p->in->nodes[a].id, p->in->nodes[b].id) < 0;
}

/* Replica placement preference: fewest replicas, then fewest
 * leaderships, then id. */
static bool place_better(const struct plan *p, size_t a, size_t b)
{
	if (p->load[a] != p->load[b])
		return p->load[a] < p->load[b];
	if (p->lead[a] != p->lead[b])
		return p->lead[a] < p->lead[b];
	return strcmp(p->in->nodes[a].id, p->in->nodes[b].id) < 0;
}

/* The best eligible node not among ids, or CTL_NONE. */
static size_t pick_new_replica(const struct plan *p,
			       const char ids[][MP_NODE_ID_MAX + 1], size_t n_ids)
{
	size_t best = CTL_NONE;

	for (size_t i = 0; i < p->in->n_nodes; i++) {
		if (p->in->nodes[i].draining || ids_has(ids, n_ids, p->in->nodes[i].id))
			continue;
		if (best == CTL_NONE || place_better(p, i, best))
			best = i;
	}
	return best;
}

/* Records the action if its record is valid; accounts for it so the
 * following choices see it. */
static bool plan_emit(struct plan *p, enum ctl_action_kind kind, uint32_t shard,
		      const struct mp_shard_rec *old, const struct mp_shard_rec *rec,
		      const char *why)
{
	struct ctl_action *a;

	if (p->n_out >= p->max || mp_shard_rec_check(rec, NULL) < 0)
		return false;
	a = &p->out[p->n_out++];
	memset(a, 0, sizeof(*a));
	a->kind = kind;
	a->shard = shard;
	a->rec = *rec;
	a->why = why;
	if (old != NULL)
		plan_account(p, old, -1);
	plan_account(p, rec, 1);
	return true;
}

/* Ids in records and inputs are at most MP_NODE_ID_MAX bytes (checked by
 * whoever filled them); strnlen keeps a bad one from overrunning. */
static void rec_copy_id(char *dst, const char *src)
{
	size_t n = strnlen(src, MP_NODE_ID_MAX);

	memcpy(dst, src, n);
	dst[n] = '\0';
}

/* old with leader moved to the node `to` (already an ISR member): `to`
 * first in replicas and isr, the others in their order; the old leader
 * leaves the ISR when drop_old. Epoch + 1 (0 on overflow: check refuses). */
static void rec_new_leader(const struct mp_shard_rec *old, const char *to,
			   bool drop_old, struct mp_shard_rec *r)
{
	memset(r, 0, sizeof(*r));
	r->epoch = old->epoch + 1;
	rec_copy_id(r->leader, to);
	rec_copy_id(r->replicas[r->n_replicas++], to);
	for (size_t i = 0; i < old->n_replicas && r->n_replicas < MP_REPLICAS_MAX; i++)
		if (strcmp(old->replicas[i], to) != 0)
			rec_copy_id(r->replicas[r->n_replicas++], old->replicas[i]);
	rec_copy_id(r->isr[r->n_isr++], to);
	for (size_t i = 0; i < old->n_isr && r->n_isr < MP_REPLICAS_MAX; i++) {
		if (strcmp(old->isr[i], to) == 0 ||
		    (drop_old && strcmp(old->isr[i], old->leader) == 0))
			continue;
		rec_copy_id(r->isr[r->n_isr++], old->isr[i]);
	}
}

/* old without the replica id (and out of the ISR). */
static void rec_without(const struct mp_shard_rec *old, const char *id,
			struct mp_shard_rec *r)
{
	memset(r, 0, sizeof(*r));
	r->epoch = old->epoch;
	rec_copy_id(r->leader, old->leader);
	for (size_t i = 0; i < old->n_replicas; i++)
		if (strcmp(old->replicas[i], id) != 0)
			rec_copy_id(r->replicas[r->n_replicas++], old->replicas[i]);
	for (size_t i = 0; i < old->n_isr; i++)
		if (strcmp(old->isr[i], id) != 0)
			rec_copy_id(r->isr[r->n_isr++], old->isr[i]);
}

/* Rule 1. */
static void rule_create(struct plan *p, uint32_t shard)
{
	char chosen[MP_REPLICAS_MAX][MP_NODE_ID_MAX + 1];
	size_t idx[MP_REPLICAS_MAX], n = 0, leader = 0;
	struct mp_shard_rec r;

	while (n < p->in->config.rf && n < MP_REPLICAS_MAX) {
		size_t k = pick_new_replica(p, chosen, n);

		if (k == CTL_NONE)
			break;
		idx[n] = k;
		rec_copy_id(chosen[n++], p->in->nodes[k].id);
	}
	if (n == 0)
		return;   /* no node can take it: the shard waits */
	for (size_t i = 1; i < n; i++) {
		size_t a = idx[i], b = idx[leader];

		if (p->lead[a] < p->lead[b] ||
		    (p->lead[a] == p->lead[b] &&
		     strcmp(p->in->nodes[a].id, p->in->nodes[b].id) < 0))
			leader = i;
	}
	memset(&r, 0, sizeof(r));
	r.epoch = 1;
	rec_copy_id(r.leader, chosen[leader]);
	rec_copy_id(r.replicas[r.n_replicas++], chosen[leader]);
	for (size_t i = 0; i < n; i++)
		if (i != leader)
			rec_copy_id(r.replicas[r.n_replicas++], chosen[i]);
	memcpy(r.isr, r.replicas, sizeof(r.isr));
	r.n_isr = r.n_replicas;
	(void)plan_emit(p, CTL_CREATE, shard, NULL, &r, "create");
}

/* Best ISR member to lead instead of the current leader (never it):
 * any live one (rule 2) or live non-draining ones only (rule 3). */
static size_t pick_leader(const struct plan *p, uint32_t shard,
			  const struct mp_shard_rec *old, bool eligible_only)
{
	size_t best = CTL_NONE;

	for (size_t i = 0; i < old->n_isr; i++) {
		size_t k = plan_node(p, old->isr[i]);

		if (k == CTL_NONE || strcmp(old->isr[i], old->leader) == 0 ||
		    (eligible_only && p->in->nodes[k].draining))
			continue;
		if (best == CTL_NONE || leader_better(p, shard, k, best))
			best = k;
	}
	return best;
}

/* A replica to drop so that replicas come back to rf (rule 5): dead ones
 * first, then draining ones, then the most loaded live in-sync one; ties by
 * id. Never the leader, never a live replica still catching up (it is the
 * copy being made), and only while at least rf live non-draining ISR
 * members remain after the drop (copy-then-switch). */
struct victim {
	const char *id;     /* borrowed */
	int cls;            /* 0 dead, 1 draining, 2 live in sync */
	uint32_t load;
};

static bool victim_better(const struct victim *a, const struct victim *b)
{
	if (a->cls != b->cls)
		return a->cls < b->cls;
	if (a->cls == 2 && a->load != b->load)
		return a->load > b->load;
	return strcmp(a->id, b->id) < 0;
}

static bool pick_victim(const struct plan *p, const struct mp_shard_rec *old,
			char *victim)
{
	size_t rf = p->in->config.rf, isr_ok = rec_count_isr_eligible(p, old);
	struct victim best = { NULL, 3, 0 }, v;

	if (isr_ok < rf)
		return false;
	for (size_t i = 1; i < old->n_replicas; i++) {   /* [0] is the leader */
		size_t k = plan_node(p, old->replicas[i]);

		v.id = old->replicas[i];
		v.load = 0;
		if (k == CTL_NONE) {
			v.cls = 0;
		} else if (p->in->nodes[k].draining) {
			v.cls = 1;
		} else {
			if (!ids_has(old->isr, old->n_isr, v.id) || isr_ok < rf + 1)
				continue;
			v.cls = 2;
			v.load = p->load[k];
		}
		if (best.id == NULL || victim_better(&v, &best))
			best = v;
	}
	if (best.id == NULL)
		return false;
	rec_copy_id(victim, best.id);
	return true;
}

/* Rule 4: not enough copies on nodes that will stay. */
static bool rule_add(struct plan *p, uint32_t shard, const struct mp_shard_rec *old)
{
	struct mp_shard_rec r;
	size_t k;

	if (rec_count_eligible(p, old) >= p->in->config.rf ||
	    (k = pick_new_replica(p, old->replicas, old->n_replicas)) == CTL_NONE)
		return false;
	r = *old;
	if (old->n_replicas >= MP_REPLICAS_MAX) {
		/* Full: make room by forgetting a dead replica, which takes
		 * nothing live out of the ISR. */
		size_t d;

		for (d = 1; d < old->n_replicas; d++)
			if (!plan_live(p, old->replicas[d]))
				break;
		if (d == old->n_replicas)
			return false;
		rec_without(old, old->replicas[d], &r);
	}
	rec_copy_id(r.replicas[r.n_replicas++], p->in->nodes[k].id);
	return plan_emit(p, CTL_UPDATE, shard, old, &r, "replica_add");
}

/* Rule 5: back to rf once the new copies are in sync. */
static void rule_drop(struct plan *p, uint32_t shard, const struct mp_shard_rec *old)
{
	struct mp_shard_rec r;
	char victim[MP_NODE_ID_MAX + 1];

	if (old->n_replicas > p->in->config.rf && pick_victim(p, old, victim)) {
		rec_without(old, victim, &r);
		(void)plan_emit(p, CTL_UPDATE, shard, old, &r, "replica_drop");
	}
}

/* Rules 2 to 5 for an existing record. */
static void rule_existing(struct plan *p, uint32_t shard)
{
	const struct mp_shard_rec *old = &p->in->shards[shard];
	size_t leader = plan_node(p, old->leader), k;
	struct mp_shard_rec r;

	/* 2: leader gone. */
	if (leader == CTL_NONE) {
		if ((k = pick_leader(p, shard, old, false)) == CTL_NONE)
			return;   /* no live in-sync member: wait for one */
		rec_new_leader(old, p->in->nodes[k].id, true, &r);
		(void)plan_emit(p, CTL_UPDATE, shard, old, &r, "leader_lost");
		return;
	}
	/* 3: leader draining, hand over while it still serves. */
	if (p->in->nodes[leader].draining &&
	    (k = pick_leader(p, shard, old, true)) != CTL_NONE) {
		rec_new_leader(old, p->in->nodes[k].id, false, &r);
		(void)plan_emit(p, CTL_UPDATE, shard, old, &r, "leader_drain");
		return;
	}
	/* 4, then 5. */
	if (!rule_add(p, shard, old))
		rule_drop(p, shard, old);
}

/* A shard that is where it should be: every replica live, not draining and
 * in sync, no more than rf of them. */
static bool plan_settled(const struct plan *p, uint32_t shard)
{
	const struct mp_shard_rec *r = &p->in->shards[shard];

	if (!p->in->has_shard[shard] || r->n_replicas > p->in->config.rf ||
	    r->n_isr != r->n_replicas)
		return false;
	for (size_t i = 0; i < r->n_replicas; i++)
		if (!plan_eligible(p, r->replicas[i]))
			return false;
	return true;
}

/* Donor order for rule 6: most replicas first, ties by id. */
static bool donor_before(const struct plan *p, size_t a, size_t b)
{
	if (p->load[a] != p->load[b])
		return p->load[a] > p->load[b];
	return strcmp(p->in->nodes[a].id, p->in->nodes[b].id) < 0;
}

/* Rule 6: one move from the most loaded node towards an underloaded one. */
static void rule_balance(struct plan *p)
{
	const struct ctl_input *in = p->in;
	uint64_t total = 0, n = 0;
	size_t low = CTL_NONE, n_donors = 0;

	for (uint32_t s = 0; s < in->config.shards; s++)
		if (!plan_settled(p, s))
			return;
	for (size_t i = 0; i < in->n_nodes; i++) {
		if (in->nodes[i].draining)
			continue;
		total += p->load[i];
		n++;
		if (low == CTL_NONE || place_better(p, i, low))
			low = i;
	}
	/* load < average - 1, in integers: load * n + n < total. */
	if (n < 2 || (uint64_t)p->load[low] * n + n >= total)
		return;
	/* Donors sorted (insertion: the node count is small). */
	for (size_t i = 0; i < in->n_nodes; i++) {
		size_t j;

		if (in->nodes[i].draining || i == low)
			continue;
		for (j = n_donors; j > 0 && donor_before(p, i, p->order[j - 1]); j--)
			p->order[j] = p->order[j - 1];
		p->order[j] = i;
		n_donors++;
	}
	/* The first donor with a shard it holds but does not lead (a leader
	 * is never dropped) and that low does not hold. */
	for (size_t d = 0; d < n_donors; d++) {
		const char *donor = in->nodes[p->order[d]].id;

		if (p->load[p->order[d]] <= p->load[low] + 1)
			return;   /* moving would not make things more even */
		for (uint32_t s = 0; s < in->config.shards; s++) {
			const struct mp_shard_rec *old = &in->shards[s];
			struct mp_shard_rec r;

			if (strcmp(old->leader, donor) == 0 ||
			    !ids_has(old->replicas, old->n_replicas, donor) ||
			    ids_has(old->replicas, old->n_replicas, in->nodes[low].id) ||
			    old->n_replicas >= MP_REPLICAS_MAX)
				continue;
			r = *old;
			rec_copy_id(r.replicas[r.n_replicas++], in->nodes[low].id);
			if (plan_emit(p, CTL_UPDATE, s, old, &r, "balance"))
				return;
		}
	}
}

/* Rule 7: leaders spread evenly. When every shard is settled and a node
 * leads more than one shard above another, hand one of its leaderships to
 * an in-sync replica that leads fewer (epoch + 1; the old leader stays in
 * the ISR as a follower). One move per round. */
static void rule_balance_leaders(struct plan *p)
{
	const struct ctl_input *in = p->in;
	size_t hi = CTL_NONE, lo = CTL_NONE;

	for (uint32_t s = 0; s < in->config.shards; s++)
		if (!plan_settled(p, s))
			return;
	for (size_t i = 0; i < in->n_nodes; i++) {
		if (in->nodes[i].draining)
			continue;
		if (hi == CTL_NONE || p->lead[i] > p->lead[hi] ||
		    (p->lead[i] == p->lead[hi] && strcmp(in->nodes[i].id, in->nodes[hi].id) < 0))
			hi = i;
		if (lo == CTL_NONE || p->lead[i] < p->lead[lo] ||
		    (p->lead[i] == p->lead[lo] && strcmp(in->nodes[i].id, in->nodes[lo].id) < 0))
			lo = i;
	}
	if (hi == CTL_NONE || lo == CTL_NONE || p->lead[hi] <= p->lead[lo] + 1)
		return;
	for (uint32_t s = 0; s < in->config.shards; s++) {
		const struct mp_shard_rec *old = &in->shards[s];
		struct mp_shard_rec r;

		if (strcmp(old->leader, in->nodes[hi].id) != 0 ||
		    !ids_has(old->isr, old->n_isr, in->nodes[lo].id))
			continue;
		rec_new_leader(old, in->nodes[lo].id, false, &r);
		if (plan_emit(p, CTL_UPDATE, s, old, &r, "balance_leaders"))
			return;
	}
}

size_t ctl_plan(const struct ctl_input *in, struct ctl_action *out, size_t max)
{
	struct plan p;
	size_t n;

	if (in == NULL || out == NULL || max == 0 || in->config.shards == 0 ||
	    in->config.rf == 0 || (in->n_nodes > 0 && in->nodes == NULL) ||
	    in->shards == NULL || in->has_shard == NULL ||
	    (in->n_pos > 0 && in->pos == NULL))
		return 0;
	memset(&p, 0, sizeof(p));
	p.in = in;
	p.out = out;
	p.max = max;
	p.load = calloc(in->n_nodes + 1, sizeof(*p.load));
	p.lead = calloc(in->n_nodes + 1, sizeof(*p.lead));
	p.pos = calloc(in->n_pos + 1, sizeof(*p.pos));
	p.order = calloc(in->n_nodes + 1, sizeof(*p.order));
	if (p.load == NULL || p.lead == NULL || p.pos == NULL || p.order == NULL) {
		/* Nothing planned is always safe: the next round retries. */
		n = 0;
		goto out;
	}
	for (size_t i = 0; i < in->n_pos; i++)
		p.pos[i] = &in->pos[i];
	qsort(p.pos, in->n_pos, sizeof(*p.pos), pos_cmp);
	for (uint32_t s = 0; s < in->config.shards; s++)
		if (in->has_shard[s])
			plan_account(&p, &in->shards[s], 1);

	for (uint32_t s = 0; s < in->config.shards && p.n_out < max; s++) {
		if (!in->has_shard[s])
			rule_create(&p, s);
		else
			rule_existing(&p, s);
	}
	if (p.n_out == 0)
		rule_balance(&p);
	if (p.n_out == 0)
		rule_balance_leaders(&p);
	n = p.n_out;
out:
	free(p.load);
	free(p.lead);
	free(p.pos);
	free(p.order);
	return n;
}

/* ============================================================ running */

struct ctl_chan {
	char addr[MP_ADDR_MAX + 1];
	struct mp_rpc_channel *ch;   /* owned */
	bool used;                   /* asked this round */
};

struct ctl {
	struct mp_etcd *etcd;        /* borrowed */
	struct mp_shardmap *map;     /* borrowed */
	char node_id[MP_NODE_ID_MAX + 1];
	int64_t interval_ms;
	pthread_t thread;

	pthread_mutex_t mu;
	pthread_cond_t cond;         /* CLOCK_MONOTONIC */
	bool stop;                   /* under mu */
	bool kick;                   /* under mu: run a round now */
	bool leader;                 /* under mu */
	int64_t lease_id;            /* under mu */

	/* The controller thread's own (ctl_stop reads them after the join). */
	int64_t held_rev;            /* mod_revision of our controller key; 0 none */
	int campaign_err;            /* last logged failures, to log changes only */
	int round_err;
	struct ctl_chan *chans;      /* owned */
	size_t n_chans, cap_chans;
	/* Snapshot of a round, reused. */
	struct mp_shard_rec *shards; /* owned, n_shards */
	int64_t *mod_revs;           /* owned */
	bool *has;                   /* owned */
	bool *need;                  /* owned: shard's leader is gone */
	uint32_t n_shards;
	struct ctl_action actions[CTL_MAX_ACTIONS];
};

static void ctl_log_err(int *last, const char *event, int err, const char *what)
{
	/* Once per change of trouble: a down etcd must not flood the log. */
	if (err == *last)
		return;
	*last = err;
	mp_log_warn(event, "what=%s err=%s", what, mp_strerror(err));
}

/* Try to hold the "controller" key with our lease; true when it is ours. */
static bool ctl_campaign(struct ctl *c, int64_t lease)
{
	char val[4 + MP_NODE_ID_MAX + 1];
	struct mp_etcd_kv *kv = NULL;
	int64_t rev = 0;
	int len, ret;
	bool mine;

	c->held_rev = 0;
	if (lease == 0)
		return false;   /* an unleased key would outlive us */
	len = snprintf(val, sizeof(val), "id=%s", c->node_id);
	ret = mp_etcd_cas(c->etcd, CTL_KEY, val, (size_t)len, 0, lease, &rev);
	if (ret == 0) {
		c->held_rev = rev;
		c->campaign_err = 0;
		return true;
	}
	if (ret != MP_ESTALE) {
		ctl_log_err(&c->campaign_err, "ctl_campaign_failed", ret, "cas");
		return false;
	}
	ret = mp_etcd_get(c->etcd, CTL_KEY, &kv, NULL);
	if (ret == MP_ENOENT)
		return false;   /* expired in between: next round */
	if (ret < 0) {
		ctl_log_err(&c->campaign_err, "ctl_campaign_failed", ret, "get");
		return false;
	}
	c->campaign_err = 0;
	mine = kv->lease == lease && kv->vlen == (size_t)len &&
	       memcmp(kv->value, val, (size_t)len) == 0;
	if (mine)
		c->held_rev = kv->mod_rev;
	mp_etcd_kvs_free(kv, 1);
	return mine;
}

static struct mp_rpc_channel *ctl_channel(struct ctl *c, const char *addr)
{
	struct ctl_chan *t;

	for (size_t i = 0; i < c->n_chans; i++) {
		if (strcmp(c->chans[i].addr, addr) == 0) {
			c->chans[i].used = true;
			return c->chans[i].ch;
		}
	}
	if (c->n_chans == c->cap_chans) {
		size_t cap = c->cap_chans ? c->cap_chans * 2 : 8;

		if ((t = realloc(c->chans, cap * sizeof(*t))) == NULL)
			return NULL;
		c->chans = t;
		c->cap_chans = cap;
	}
	t = &c->chans[c->n_chans];
	memset(t, 0, sizeof(*t));
	snprintf(t->addr, sizeof(t->addr), "%s", addr);
	if (mp_rpc_channel_open(addr, 0, &t->ch) < 0)
		return NULL;
	t->used = true;
	c->n_chans++;
	return t->ch;
}

/* Close channels to addresses no live node has any more. */
static void ctl_channels_prune(struct ctl *c)
{
	size_t j = 0;

	for (size_t i = 0; i < c->n_chans; i++) {
		if (c->chans[i].used) {
			c->chans[i].used = false;
			c->chans[j++] = c->chans[i];
		} else {
			mp_rpc_channel_close(&c->chans[i].ch);
		}
	}
	c->n_chans = j;
}

/* Ask one node where it is in the shards that need a leader; appends to
 * pos (room for n_need more). */
static void ctl_ask_node(struct ctl *c, const struct mp_shardmap_node *node,
			 const uint32_t *need, size_t n_need, struct ctl_pos *pos,
			 size_t *n_pos)
{
	Merpati__Repl__V1__ShardStateRequest req = MERPATI__REPL__V1__SHARD_STATE_REQUEST__INIT;
	Merpati__Repl__V1__ShardStateReply *rep;
	ProtobufCMessage *resp = NULL;
	struct mp_rpc_channel *ch;
	char path[128], *error = NULL;
	size_t added = 0;
	int ret;

	if (mp_rpc_method_path(&merpati__repl__v1__replication__descriptor, "ShardState",
			       path, sizeof(path)) == NULL ||
	    (ch = ctl_channel(c, node->rec.addr)) == NULL)
		return;
	req.n_shards = n_need;
	req.shards = (uint32_t *)need;
	ret = mp_rpc_call(ch, path, &req.base, &merpati__repl__v1__shard_state_reply__descriptor,
			  CTL_STATE_TIMEOUT_MS, &resp, &error);
	if (ret < 0) {
		char q[128];

		mp_log_info("ctl_shard_state_failed", "node=%s err=%s error=%s", node->id,
			    mp_strerror(ret),
			    mp_log_quote(q, sizeof(q), error ? error : "", error ? strlen(error) : 0));
		free(error);
		return;
	}
	free(error);
	rep = (Merpati__Repl__V1__ShardStateReply *)resp;
	/* An address can be reused by another node: trust only the node we
	 * meant to ask. */
	if (rep->node_id == NULL || strcmp(rep->node_id, node->id) != 0) {
		mp_log_warn("ctl_shard_state_wrong_node", "node=%s addr=%s", node->id,
			    node->rec.addr);
	} else {
		for (size_t i = 0; i < rep->n_pos && added < n_need; i++) {
			const Merpati__Repl__V1__ShardPos *sp = rep->pos[i];
			struct ctl_pos *q;

			if (sp->shard >= c->n_shards || !c->need[sp->shard])
				continue;
			q = &pos[(*n_pos)++];
			memset(q, 0, sizeof(*q));
			snprintf(q->node, sizeof(q->node), "%s", node->id);
			q->shard = sp->shard;
			q->epoch = sp->epoch;
			q->lsn = sp->lsn;
			added++;
		}
	}
	protobuf_c_message_free_unpacked(resp, NULL);
}

static bool ctl_stopping(struct ctl *c)
{
	bool stop;

	pthread_mutex_lock(&c->mu);
	stop = c->stop;
	pthread_mutex_unlock(&c->mu);
	return stop;
}

static int ctl_apply(struct ctl *c, const struct ctl_action *a)
{
	char key[32], text[MP_SHARDREC_MAX_LEN], q[MP_SHARDREC_MAX_LEN + 16];
	int64_t expect = a->kind == CTL_CREATE ? 0 : c->mod_revs[a->shard], rev = 0;
	int len, ret;

	if ((len = mp_shard_rec_format(&a->rec, text, sizeof(text))) < 0) {
		mp_log_error("ctl_bad_record", "shard=%u err=%s", a->shard, mp_strerror(len));
		return 0;
	}
	snprintf(key, sizeof(key), "shards/%u", a->shard);
	ret = mp_etcd_cas(c->etcd, key, text, (size_t)len, expect, 0, &rev);
	if (ret == MP_ESTALE) {
		/* Someone (a leader changing its ISR) wrote first; the watch
		 * brings the new record and the next round replans. */
		mp_log_debug("ctl_shard_stale", "shard=%u why=%s", a->shard, a->why);
		return 0;
	}
	if (ret < 0)
		return ret;
	/* offer, not set: the watch may already hold something newer. */
	if ((ret = mp_shardmap_offer_shard(c->map, a->shard, &a->rec, rev)) < 0)
		mp_log_error("ctl_map_update_failed", "shard=%u err=%s", a->shard,
			     mp_strerror(ret));
	mp_log_info("ctl_shard_change", "shard=%u why=%s record=%s", a->shard, a->why,
		    mp_log_quote(q, sizeof(q), text, (size_t)len));
	return 0;
}

/* One reconcile round as the elected controller. */
static void ctl_reconcile(struct ctl *c)
{
	struct mp_shardmap_node *nodes = NULL;
	struct ctl_node *cn = NULL;
	struct ctl_pos *pos = NULL;
	struct mp_etcd_kv *drains = NULL;
	uint32_t *need_list = NULL;
	size_t n_nodes = 0, n_drains = 0, n_need = 0, n_pos = 0, n_act;
	struct mp_cluster_config cfg;
	struct ctl_input in;
	int ret;

	/* Drain requests first: the snapshot below is then at least as new. */
	ret = mp_etcd_range(c->etcd, "drain/", &drains, &n_drains, NULL);
	if (ret < 0) {
		ctl_log_err(&c->round_err, "ctl_round_failed", ret, "range_drain");
		return;
	}

	pthread_mutex_lock(&c->map->mu);
	cfg = c->map->config;
	if (cfg.shards == 0) {
		pthread_mutex_unlock(&c->map->mu);
		goto out;   /* no config yet */
	}
	if (c->n_shards != cfg.shards) {
		/* The count is fixed at creation; this runs once. */
		free(c->shards);
		free(c->mod_revs);
		free(c->has);
		free(c->need);
		c->n_shards = 0;
		c->shards = calloc(cfg.shards, sizeof(*c->shards));
		c->mod_revs = calloc(cfg.shards, sizeof(*c->mod_revs));
		c->has = calloc(cfg.shards, sizeof(*c->has));
		c->need = calloc(cfg.shards, sizeof(*c->need));
		if (c->shards == NULL || c->mod_revs == NULL || c->has == NULL ||
		    c->need == NULL) {
			pthread_mutex_unlock(&c->map->mu);
			ctl_log_err(&c->round_err, "ctl_round_failed", MP_ENOMEM, "alloc");
			goto out;
		}
		c->n_shards = cfg.shards;
	}
	memcpy(c->shards, c->map->shards, cfg.shards * sizeof(*c->shards));
	memcpy(c->mod_revs, c->map->shard_mod_rev, cfg.shards * sizeof(*c->mod_revs));
	n_nodes = c->map->n_nodes;
	nodes = calloc(n_nodes + 1, sizeof(*nodes));
	if (nodes != NULL && n_nodes > 0)
		memcpy(nodes, c->map->nodes, n_nodes * sizeof(*nodes));
	pthread_mutex_unlock(&c->map->mu);
	cn = calloc(n_nodes + 1, sizeof(*cn));
	if (nodes == NULL || cn == NULL) {
		ctl_log_err(&c->round_err, "ctl_round_failed", MP_ENOMEM, "alloc");
		goto out;
	}

	for (size_t i = 0; i < n_nodes; i++) {
		snprintf(cn[i].id, sizeof(cn[i].id), "%s", nodes[i].id);
		cn[i].draining = nodes[i].rec.state == MP_NODE_DRAINING;
		for (size_t d = 0; d < n_drains && !cn[i].draining; d++)
			cn[i].draining = strcmp(drains[d].key + strlen("drain/"), nodes[i].id) == 0;
	}
	for (uint32_t s = 0; s < cfg.shards; s++) {
		const struct mp_shard_rec *r = &c->shards[s];
		bool live = false, isr_live = false;

		c->has[s] = c->mod_revs[s] != 0;
		for (size_t i = 0; c->has[s] && i < n_nodes; i++) {
			live = live || strcmp(nodes[i].id, r->leader) == 0;
			isr_live = isr_live || mp_shard_rec_in_isr(r, nodes[i].id);
		}
		/* Positions of a shard that has to wait for an ISR member
		 * anyway would be asked for nothing, every round. */
		c->need[s] = c->has[s] && !live && isr_live;
		n_need += c->need[s];
	}

	/* Positions matter only for choosing a new leader (rule 2). */
	if (n_need > 0 && n_nodes > 0) {
		size_t k = 0;

		need_list = calloc(n_need, sizeof(*need_list));
		pos = calloc(n_need * n_nodes, sizeof(*pos));
		if (need_list == NULL || pos == NULL) {
			ctl_log_err(&c->round_err, "ctl_round_failed", MP_ENOMEM, "alloc");
			goto out;
		}
		for (uint32_t s = 0; s < cfg.shards; s++)
			if (c->need[s])
				need_list[k++] = s;
		for (size_t i = 0; i < n_nodes && !ctl_stopping(c); i++)
			ctl_ask_node(c, &nodes[i], need_list, n_need, pos, &n_pos);
		ctl_channels_prune(c);
	}

	memset(&in, 0, sizeof(in));
	in.config = cfg;
	in.nodes = cn;
	in.n_nodes = n_nodes;
	in.shards = c->shards;
	in.has_shard = c->has;
	in.pos = pos;
	in.n_pos = n_pos;
	n_act = ctl_plan(&in, c->actions, CTL_MAX_ACTIONS);
	for (size_t i = 0; i < n_act && !ctl_stopping(c); i++) {
		if ((ret = ctl_apply(c, &c->actions[i])) < 0) {
			ctl_log_err(&c->round_err, "ctl_round_failed", ret, "cas_shard");
			goto out;
		}
	}
	c->round_err = 0;
out:
	mp_etcd_kvs_free(drains, n_drains);
	free(nodes);
	free(cn);
	free(pos);
	free(need_list);
}

static void ctl_round(struct ctl *c)
{
	int64_t lease;
	bool mine, was;

	pthread_mutex_lock(&c->mu);
	lease = c->lease_id;
	was = c->leader;
	pthread_mutex_unlock(&c->mu);

	mine = ctl_campaign(c, lease);

	pthread_mutex_lock(&c->mu);
	/* A lease change while campaigning: that result is about the old one. */
	if (c->lease_id != lease)
		mine = false;
	c->leader = mine;
	pthread_mutex_unlock(&c->mu);
	if (mine != was) {
		if (mine)
			mp_log_info("ctl_elected", "node=%s lease=%lld", c->node_id,
				    (long long)lease);
		else
			mp_log_info("ctl_deposed", "node=%s", c->node_id);
	}
	if (mine)
		ctl_reconcile(c);
}

static void *ctl_thread(void *arg)
{
	struct ctl *c = arg;
	struct timespec until;

	pthread_mutex_lock(&c->mu);
	while (!c->stop) {
		c->kick = false;
		pthread_mutex_unlock(&c->mu);
		ctl_round(c);
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_sec += c->interval_ms / 1000;
		until.tv_nsec += (c->interval_ms % 1000) * 1000000;
		if (until.tv_nsec >= 1000000000) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000;
		}
		pthread_mutex_lock(&c->mu);
		while (!c->stop && !c->kick &&
		       pthread_cond_timedwait(&c->cond, &c->mu, &until) != ETIMEDOUT)
			;
	}
	pthread_mutex_unlock(&c->mu);
	return NULL;
}

int ctl_start(const struct ctl_opts *o, struct ctl **c_r)
{
	pthread_condattr_t ca;
	struct ctl *c;
	int ret;

	*c_r = NULL;
	if (o == NULL || o->etcd == NULL || o->map == NULL || !mp_node_id_valid(o->node_id) ||
	    o->interval_ms < 0)
		return MP_EINVAL;
	if ((c = calloc(1, sizeof(*c))) == NULL)
		return MP_ENOMEM;
	c->etcd = o->etcd;
	c->map = o->map;
	snprintf(c->node_id, sizeof(c->node_id), "%s", o->node_id);
	c->interval_ms = o->interval_ms > 0 ? o->interval_ms : CTL_DEFAULT_INTERVAL_MS;
	c->lease_id = o->lease_id;
	if (pthread_mutex_init(&c->mu, NULL) != 0) {
		free(c);
		return MP_ENOMEM;
	}
	if (pthread_condattr_init(&ca) != 0) {
		pthread_mutex_destroy(&c->mu);
		free(c);
		return MP_ENOMEM;
	}
	ret = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
	      pthread_cond_init(&c->cond, &ca) == 0 ? 0 : MP_ENOMEM;
	pthread_condattr_destroy(&ca);
	if (ret < 0) {
		pthread_mutex_destroy(&c->mu);
		free(c);
		return ret;
	}
	if (pthread_create(&c->thread, NULL, ctl_thread, c) != 0) {
		pthread_cond_destroy(&c->cond);
		pthread_mutex_destroy(&c->mu);
		free(c);
		return MP_ENOMEM;
	}
	*c_r = c;
	return 0;
}

void ctl_set_lease(struct ctl *c, int64_t lease_id)
{
	if (c == NULL)
		return;
	pthread_mutex_lock(&c->mu);
	if (c->lease_id != lease_id) {
		c->lease_id = lease_id;
		/* The key we held went with the old lease. */
		c->leader = false;
		c->kick = true;
		pthread_cond_signal(&c->cond);
	}
	pthread_mutex_unlock(&c->mu);
}

bool ctl_is_leader(struct ctl *c)
{
	bool leader;

	if (c == NULL)
		return false;
	pthread_mutex_lock(&c->mu);
	leader = c->leader;
	pthread_mutex_unlock(&c->mu);
	return leader;
}

void ctl_stop(struct ctl **cp)
{
	struct ctl *c = cp != NULL ? *cp : NULL;
	int ret;

	if (c == NULL)
		return;
	*cp = NULL;
	pthread_mutex_lock(&c->mu);
	c->stop = true;
	pthread_cond_signal(&c->cond);
	pthread_mutex_unlock(&c->mu);
	(void)pthread_join(c->thread, NULL);
	/* Hand over now rather than when our lease runs out; only the key
	 * we created (its mod_revision) is deleted. */
	if (c->held_rev > 0) {
		ret = mp_etcd_cas_delete(c->etcd, CTL_KEY, c->held_rev);
		if (ret < 0 && ret != MP_ESTALE)
			mp_log_warn("ctl_release_failed", "err=%s", mp_strerror(ret));
	}
	for (size_t i = 0; i < c->n_chans; i++)
		mp_rpc_channel_close(&c->chans[i].ch);
	free(c->chans);
	free(c->shards);
	free(c->mod_revs);
	free(c->has);
	free(c->need);
	pthread_cond_destroy(&c->cond);
	pthread_mutex_destroy(&c->mu);
	free(c);
}
