/*
 * Tests for ctl_plan (controller.h), the pure placement function: tables of
 * one-round scenarios (each rule, its preconditions and tie-breaks), a
 * randomized check that no plan ever writes an invalid record or a leader
 * outside the ISR, and simulations that apply the plan round after round
 * (with the shard leaders' ISR changes simulated) until nothing changes:
 * a new node, a drained node, a dead node. Every simulated step asserts
 * copy-then-switch: a shard never loses live in-sync members below
 * min(rf, live nodes).
 *
 * Never: depend on etcd or the network (test_controller_etcd.c does).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controller.h"
#include "mp_shardmap.h"

#define MAXN 16
#define MAXS 64
#define MAXPOS 32
#define MAXACT 256
#define SIM_ROUNDS 5000

/* ------------------------------------------------------------ a cluster */

/* A node id into a MP_NODE_ID_MAX + 1 array (test ids are short). */
static void set_id(char *dst, const char *src)
{
	size_t n = strnlen(src, MP_NODE_ID_MAX);

	memcpy(dst, src, n);
	dst[n] = '\0';
}

struct sim_node {
	char id[MP_NODE_ID_MAX + 1];
	bool live, draining;
};

struct sim {
	struct mp_cluster_config cfg;
	struct sim_node nodes[MAXN];
	size_t n_nodes;
	struct mp_shard_rec shards[MAXS];
	bool has[MAXS];
	struct ctl_pos pos[MAXPOS];
	size_t n_pos;
	/* input built from the above */
	struct ctl_node in_nodes[MAXN];
	struct ctl_input in;
	struct ctl_action act[MAXACT];
};

static void sim_init(struct sim *s, uint32_t shards, uint32_t rf)
{
	memset(s, 0, sizeof(*s));
	assert_true(shards <= MAXS);
	s->cfg.shards = shards;
	s->cfg.rf = rf;
	s->cfg.min_isr = rf > 1 ? 2 : 1;
}

static struct sim_node *sim_node(struct sim *s, const char *id)
{
	for (size_t i = 0; i < s->n_nodes; i++)
		if (strcmp(s->nodes[i].id, id) == 0)
			return &s->nodes[i];
	return NULL;
}

static void sim_add_node(struct sim *s, const char *id, bool live, bool draining)
{
	struct sim_node *n;

	assert_null(sim_node(s, id));
	assert_true(s->n_nodes < MAXN);
	n = &s->nodes[s->n_nodes++];
	set_id(n->id, id);
	n->live = live;
	n->draining = draining;
}

/* "n1 n2:d n3:x": live nodes, :d draining, :x known but dead. */
static void sim_nodes(struct sim *s, const char *spec)
{
	char buf[256], *save = NULL, *w;

	snprintf(buf, sizeof(buf), "%s", spec);
	for (w = strtok_r(buf, " ", &save); w != NULL; w = strtok_r(NULL, " ", &save)) {
		char *colon = strchr(w, ':');
		bool draining = false, live = true;

		if (colon != NULL) {
			*colon = '\0';
			draining = colon[1] == 'd';
			live = colon[1] != 'x';
		}
		sim_add_node(s, w, live, draining);
	}
}

static void sim_set_rec(struct sim *s, uint32_t shard, const char *text)
{
	const char *err = NULL;

	assert_true(shard < s->cfg.shards);
	if (text == NULL) {
		s->has[shard] = false;
		memset(&s->shards[shard], 0, sizeof(s->shards[shard]));
		return;
	}
	if (mp_shard_rec_parse(text, strlen(text), &s->shards[shard], &err) != 0)
		fail_msg("bad record in test \"%s\": %s", text, err);
	s->has[shard] = true;
}

/* "n2/0=10 n3/0=12": node/shard=lsn */
static void sim_pos(struct sim *s, const char *spec)
{
	char buf[256], *save = NULL, *w;

	if (spec == NULL)
		return;
	snprintf(buf, sizeof(buf), "%s", spec);
	for (w = strtok_r(buf, " ", &save); w != NULL; w = strtok_r(NULL, " ", &save)) {
		struct ctl_pos *p;
		char *slash = strchr(w, '/'), *eq = strchr(w, '=');

		assert_non_null(slash);
		assert_non_null(eq);
		assert_true(s->n_pos < MAXPOS);
		p = &s->pos[s->n_pos++];
		memset(p, 0, sizeof(*p));
		*slash = '\0';
		set_id(p->node, w);
		p->shard = (uint32_t)strtoul(slash + 1, NULL, 10);
		p->lsn = strtoull(eq + 1, NULL, 10);
		p->epoch = 1;
	}
}

/* The input from the live nodes, listed in the order given by perm (NULL:
 * as added). */
static void sim_input(struct sim *s, const size_t *perm)
{
	size_t n = 0;

	for (size_t k = 0; k < s->n_nodes; k++) {
		const struct sim_node *sn = &s->nodes[perm != NULL ? perm[k] : k];

		if (!sn->live)
			continue;
		memset(&s->in_nodes[n], 0, sizeof(s->in_nodes[n]));
		set_id(s->in_nodes[n].id, sn->id);
		s->in_nodes[n].draining = sn->draining;
		n++;
	}
	memset(&s->in, 0, sizeof(s->in));
	s->in.config = s->cfg;
	s->in.nodes = s->in_nodes;
	s->in.n_nodes = n;
	s->in.shards = s->shards;
	s->in.has_shard = s->has;
	s->in.pos = s->pos;
	s->in.n_pos = s->n_pos;
}

static size_t sim_plan(struct sim *s)
{
	sim_input(s, NULL);
	return ctl_plan(&s->in, s->act, MAXACT);
}

static bool node_live(struct sim *s, const char *id)
{
	struct sim_node *n = sim_node(s, id);

	return n != NULL && n->live;
}

static size_t n_live_nodes(struct sim *s)
{
	size_t n = 0;

	for (size_t i = 0; i < s->n_nodes; i++)
		n += s->nodes[i].live;
	return n;
}

static size_t live_isr(struct sim *s, const struct mp_shard_rec *r)
{
	size_t n = 0;

	for (size_t i = 0; i < r->n_isr; i++)
		n += node_live(s, r->isr[i]);
	return n;
}

static void rec_text(const struct mp_shard_rec *r, char *out, size_t outlen)
{
	int ret = mp_shard_rec_format(r, out, outlen);

	if (ret < 0)
		fail_msg("action record does not format: %d", ret);
}

/* What every action must satisfy whatever the scenario. */
static void check_action(struct sim *s, const struct ctl_action *a)
{
	const struct mp_shard_rec *old = &s->shards[a->shard];
	const char *err = NULL;

	assert_true(a->shard < s->cfg.shards);
	if (mp_shard_rec_check(&a->rec, &err) != 0)
		fail_msg("invalid record for shard %u: %s", a->shard, err);
	assert_non_null(a->why);
	assert_true(a->rec.n_replicas <= MP_REPLICAS_MAX);
	if (!s->has[a->shard]) {
		assert_int_equal(a->kind, CTL_CREATE);
		assert_true(a->rec.epoch == 1);
		assert_int_equal(a->rec.n_isr, a->rec.n_replicas);
		for (size_t i = 0; i < a->rec.n_replicas; i++) {
			struct sim_node *n = sim_node(s, a->rec.replicas[i]);

			assert_non_null(n);
			assert_true(n->live && !n->draining);
		}
		return;
	}
	assert_int_equal(a->kind, CTL_UPDATE);
	if (strcmp(a->rec.leader, old->leader) != 0) {
		/* Never a leader outside the ISR; the epoch fences the old one. */
		assert_true(mp_shard_rec_in_isr(old, a->rec.leader));
		assert_true(node_live(s, a->rec.leader));
		assert_true(a->rec.epoch == old->epoch + 1);
	} else {
		assert_true(a->rec.epoch == old->epoch);
	}
	/* The ISR only loses members (leaders add them, not the controller). */
	for (size_t i = 0; i < a->rec.n_isr; i++)
		assert_true(mp_shard_rec_in_isr(old, a->rec.isr[i]));
	/* Never a dead or draining node added. */
	for (size_t i = 0; i < a->rec.n_replicas; i++) {
		if (!mp_shard_rec_has_replica(old, a->rec.replicas[i])) {
			struct sim_node *n = sim_node(s, a->rec.replicas[i]);

			assert_non_null(n);
			assert_true(n->live && !n->draining);
		}
	}
}

/* Apply one round's actions, checking copy-then-switch. */
static void sim_apply(struct sim *s, size_t n_act)
{
	size_t floor = n_live_nodes(s) < s->cfg.rf ? n_live_nodes(s) : s->cfg.rf;
	bool seen[MAXS] = { false };

	for (size_t i = 0; i < n_act; i++) {
		const struct ctl_action *a = &s->act[i];
		size_t before = s->has[a->shard] ? live_isr(s, &s->shards[a->shard]) : 0, after;

		check_action(s, a);
		assert_false(seen[a->shard]);   /* one change per shard per round */
		seen[a->shard] = true;
		after = live_isr(s, &a->rec);
		if (after < before && after < floor)
			fail_msg("shard %u: live ISR %zu -> %zu (floor %zu) by %s", a->shard,
				 before, after, floor, a->why);
		s->shards[a->shard] = a->rec;
		s->has[a->shard] = true;
	}
}

/* The shard leaders' side: a live leader drops dead followers from the
 * ISR and adds live replicas that caught up (all of them, at once).
 * Returns how many records changed. */
static size_t sim_leaders(struct sim *s)
{
	size_t changed = 0;

	for (uint32_t sh = 0; sh < s->cfg.shards; sh++) {
		struct mp_shard_rec *r = &s->shards[sh], n;

		if (!s->has[sh] || !node_live(s, r->leader))
			continue;
		n = *r;
		memset(n.isr, 0, sizeof(n.isr));
		n.n_isr = 0;
		for (size_t i = 0; i < r->n_replicas; i++)
			if (node_live(s, r->replicas[i]))
				set_id(n.isr[n.n_isr++], r->replicas[i]);
		if (n.n_isr != r->n_isr || memcmp(n.isr, r->isr, sizeof(n.isr)) != 0) {
			assert_int_equal(mp_shard_rec_check(&n, NULL), 0);
			*r = n;
			changed++;
		}
	}
	return changed;
}

/* Plan, apply, let leaders catch up; until nothing changes. Returns the
 * number of rounds. */
static size_t sim_converge(struct sim *s)
{
	for (size_t round = 0; round < SIM_ROUNDS; round++) {
		size_t n = sim_plan(s);

		sim_apply(s, n);
		if (sim_leaders(s) + n == 0)
			return round;
	}
	fail_msg("no convergence in %d rounds", SIM_ROUNDS);
	return 0;
}

static void counts(struct sim *s, const char *id, size_t *replicas_r, size_t *leads_r)
{
	*replicas_r = 0;
	*leads_r = 0;
	for (uint32_t sh = 0; sh < s->cfg.shards; sh++) {
		if (!s->has[sh])
			continue;
		*replicas_r += (size_t)mp_shard_rec_has_replica(&s->shards[sh], id);
		*leads_r += strcmp(s->shards[sh].leader, id) == 0;
	}
}

/* Every shard: min(rf, eligible nodes) replicas, all live, not draining,
 * in the ISR. */
static void check_settled(struct sim *s)
{
	size_t eligible = 0, want;

	for (size_t i = 0; i < s->n_nodes; i++)
		eligible += s->nodes[i].live && !s->nodes[i].draining;
	want = eligible < s->cfg.rf ? eligible : s->cfg.rf;
	for (uint32_t sh = 0; sh < s->cfg.shards; sh++) {
		const struct mp_shard_rec *r = &s->shards[sh];

		assert_true(s->has[sh]);
		assert_int_equal(r->n_replicas, want);
		assert_int_equal(r->n_isr, r->n_replicas);
		for (size_t i = 0; i < r->n_replicas; i++) {
			struct sim_node *n = sim_node(s, r->replicas[i]);

			assert_non_null(n);
			assert_true(n->live && !n->draining);
		}
	}
}

/* ------------------------------------------------------- one-round tables */

struct expect_act {
	uint32_t shard;
	enum ctl_action_kind kind;
	const char *rec;
	const char *why;
};

struct scenario {
	const char *name;
	uint32_t shards, rf;
	const char *nodes;
	const char *recs[3];
	const char *pos;
	size_t n_expect;
	struct expect_act expect[3];
};

static const struct scenario scenarios[] = {
	{ "leader dead: highest lsn in the ISR wins",
	  1, 3, "n2 n3", { "epoch=4 leader=n1 replicas=n1,n2,n3 isr=n1,n2,n3" },
	  "n2/0=10 n3/0=12", 1,
	  { { 0, CTL_UPDATE, "epoch=5 leader=n3 replicas=n3,n1,n2 isr=n3,n2", "leader_lost" } } },
	{ "leader dead: lsn tie goes by id",
	  1, 3, "n3 n2", { "epoch=4 leader=n1 replicas=n1,n2,n3 isr=n1,n2,n3" },
	  "n3/0=12 n2/0=12", 1,
	  { { 0, CTL_UPDATE, "epoch=5 leader=n2 replicas=n2,n1,n3 isr=n2,n3", "leader_lost" } } },
	{ "leader dead: a node that reported beats one that did not",
	  1, 3, "n2 n3", { "epoch=4 leader=n1 replicas=n1,n2,n3 isr=n1,n2,n3" },
	  "n3/0=0", 1,
	  { { 0, CTL_UPDATE, "epoch=5 leader=n3 replicas=n3,n1,n2 isr=n3,n2", "leader_lost" } } },
	{ "leader dead: lsn tie goes to the node leading fewest",
	  2, 3, "n2 n3 n4",
	  { "epoch=1 leader=n1 replicas=n1,n2,n3 isr=n1,n2,n3",
	    "epoch=1 leader=n2 replicas=n2,n3,n4 isr=n2,n3,n4" },
	  NULL, 1,
	  { { 0, CTL_UPDATE, "epoch=2 leader=n3 replicas=n3,n1,n2 isr=n3,n2", "leader_lost" } } },
	{ "leader dead: a higher lsn outside the ISR does not count",
	  1, 3, "n2 n3", { "epoch=4 leader=n1 replicas=n1,n2,n3 isr=n1,n2" },
	  "n2/0=5 n3/0=100", 1,
	  { { 0, CTL_UPDATE, "epoch=5 leader=n2 replicas=n2,n1,n3 isr=n2", "leader_lost" } } },
	{ "leader dead: a draining ISR member still beats no leader",
	  1, 3, "n2:d", { "epoch=1 leader=n1 replicas=n1,n2,n3 isr=n1,n2" },
	  NULL, 1,
	  { { 0, CTL_UPDATE, "epoch=2 leader=n2 replicas=n2,n1,n3 isr=n2", "leader_lost" } } },
	{ "leader dead, no live ISR member: the shard waits",
	  1, 3, "n2 n3 n4", { "epoch=4 leader=n1 replicas=n1,n2,n3 isr=n1" },
	  "n2/0=10 n3/0=12", 0, { { 0 } } },
	{ "draining leader hands over, keeps its place in the ISR",
	  1, 3, "n1:d n2 n3", { "epoch=3 leader=n1 replicas=n1,n2,n3 isr=n1,n2,n3" },
	  NULL, 1,
	  { { 0, CTL_UPDATE, "epoch=4 leader=n2 replicas=n2,n1,n3 isr=n2,n1,n3", "leader_drain" } } },
	{ "draining leader, nobody in sync to take over: a copy is added first",
	  1, 3, "n1:d n2 n3 n4", { "epoch=3 leader=n1 replicas=n1,n2,n3 isr=n1" },
	  NULL, 1,
	  { { 0, CTL_UPDATE, "epoch=3 leader=n1 replicas=n1,n2,n3,n4 isr=n1", "replica_add" } } },
	{ "draining leader: never handed to another draining node",
	  1, 3, "n1:d n2:d n3 n4", { "epoch=3 leader=n1 replicas=n1,n2,n3 isr=n1,n2" },
	  NULL, 1,
	  { { 0, CTL_UPDATE, "epoch=3 leader=n1 replicas=n1,n2,n3,n4 isr=n1,n2", "replica_add" } } },
	{ "replica added when a node died (not in the ISR)",
	  1, 3, "n1 n2 n4", { "epoch=2 leader=n1 replicas=n1,n2,n3 isr=n1,n2" },
	  NULL, 1,
	  { { 0, CTL_UPDATE, "epoch=2 leader=n1 replicas=n1,n2,n3,n4 isr=n1,n2", "replica_add" } } },
	{ "replica added: never to a node already holding the shard (n1 is least loaded)",
	  3, 3, "n1 n2 n3 n4",
	  { "epoch=1 leader=n1 replicas=n1,n2,n9 isr=n1,n2",
	    "epoch=1 leader=n2 replicas=n2,n3,n4 isr=n2,n3,n4",
	    "epoch=1 leader=n3 replicas=n3,n4,n2 isr=n3,n4,n2" },
	  NULL, 1,
	  { { 0, CTL_UPDATE, "epoch=1 leader=n1 replicas=n1,n2,n9,n4 isr=n1,n2", "replica_add" } } },
	{ "replica add: no candidate, nothing",
	  1, 3, "n1 n2", { "epoch=2 leader=n1 replicas=n1,n2,n3 isr=n1,n2" },
	  NULL, 0, { { 0 } } },
	{ "extra replica kept while its replacement catches up",
	  1, 3, "n1 n2 n4", { "epoch=2 leader=n1 replicas=n1,n2,n3,n4 isr=n1,n2" },
	  NULL, 0, { { 0 } } },
	{ "extra replica dropped once rf live ISR members exist",
	  1, 3, "n1 n2 n4", { "epoch=2 leader=n1 replicas=n1,n2,n3,n4 isr=n1,n2,n4" },
	  NULL, 1,
	  { { 0, CTL_UPDATE, "epoch=2 leader=n1 replicas=n1,n2,n4 isr=n1,n2,n4", "replica_drop" } } },
	{ "extra replica: dead before draining",
	  1, 3, "n1 n2 n3:d n5",
	  { "epoch=2 leader=n1 replicas=n1,n2,n3,n4,n5 isr=n1,n2,n3,n4,n5" },
	  NULL, 1,
	  { { 0, CTL_UPDATE, "epoch=2 leader=n1 replicas=n1,n2,n3,n5 isr=n1,n2,n3,n5", "replica_drop" } } },
	{ "extra replica: draining before live",
	  1, 3, "n1 n2 n3:d n5",
	  { "epoch=2 leader=n1 replicas=n1,n2,n3,n5 isr=n1,n2,n3,n5" },
	  NULL, 1,
	  { { 0, CTL_UPDATE, "epoch=2 leader=n1 replicas=n1,n2,n5 isr=n1,n2,n5", "replica_drop" } } },
	{ "extra replica: a live one only while rf others stay in sync",
	  1, 3, "n1 n2 n3 n4", { "epoch=2 leader=n1 replicas=n1,n2,n3,n4 isr=n1,n2,n3" },
	  NULL, 0, { { 0 } } },
	{ "extra replica: never one still catching up (n0 first by id)",
	  1, 3, "n0 n1 n2 n3 n4",
	  { "epoch=2 leader=n1 replicas=n1,n2,n3,n4,n0 isr=n1,n2,n3,n4" },
	  NULL, 1,
	  { { 0, CTL_UPDATE, "epoch=2 leader=n1 replicas=n1,n3,n4,n0 isr=n1,n3,n4", "replica_drop" } } },
	{ "extra replica: never the leader, even the most loaded",
	  2, 3, "n1 n2 n3 n4",
	  { "epoch=2 leader=n1 replicas=n1,n2,n3,n4 isr=n1,n2,n3,n4",
	    "epoch=1 leader=n1 replicas=n1 isr=n1" },
	  NULL, 2,
	  { { 0, CTL_UPDATE, "epoch=2 leader=n1 replicas=n1,n3,n4 isr=n1,n3,n4", "replica_drop" },
	    { 1, CTL_UPDATE, "epoch=1 leader=n1 replicas=n1,n2 isr=n1", "replica_add" } } },
	{ "extra replica: the most loaded live one goes",
	  2, 3, "n1 n2 n3 n4",
	  { "epoch=2 leader=n1 replicas=n1,n2,n3,n4 isr=n1,n2,n3,n4",
	    "epoch=1 leader=n4 replicas=n4,n2,n3 isr=n4,n2,n3" },
	  NULL, 1,
	  { { 0, CTL_UPDATE, "epoch=2 leader=n1 replicas=n1,n3,n4 isr=n1,n3,n4", "replica_drop" } } },
	{ "full replica list: a dead one makes room",
	  1, 7, "n1 n2 n3 n4 n5 n6 n8",
	  { "epoch=1 leader=n1 replicas=n1,n2,n3,n4,n5,n6,n7 isr=n1,n2,n3,n4,n5,n6" },
	  NULL, 1,
	  { { 0, CTL_UPDATE, "epoch=1 leader=n1 replicas=n1,n2,n3,n4,n5,n6,n8 isr=n1,n2,n3,n4,n5,n6",
	      "replica_add" } } },
	{ "create: draining nodes get nothing",
	  1, 3, "n1 n2:d n3 n4", { NULL }, NULL, 1,
	  { { 0, CTL_CREATE, "epoch=1 leader=n1 replicas=n1,n3,n4 isr=n1,n3,n4", "create" } } },
	{ "create: fewer nodes than rf",
	  1, 3, "n2 n1", { NULL }, NULL, 1,
	  { { 0, CTL_CREATE, "epoch=1 leader=n1 replicas=n1,n2 isr=n1,n2", "create" } } },
	{ "create: no node, nothing",
	  1, 3, "", { NULL }, NULL, 0, { { 0 } } },
	{ "create: only draining nodes, nothing",
	  1, 3, "n1:d", { NULL }, NULL, 0, { { 0 } } },
	{ "settled shard: nothing",
	  1, 3, "n1 n2 n3", { "epoch=9 leader=n2 replicas=n2,n1,n3 isr=n1,n2,n3" },
	  NULL, 0, { { 0 } } },
};

static void test_scenarios(void **state)
{
	(void)state;
	for (size_t t = 0; t < sizeof(scenarios) / sizeof(scenarios[0]); t++) {
		const struct scenario *sc = &scenarios[t];
		struct sim *s = calloc(1, sizeof(*s));
		size_t n;

		assert_non_null(s);
		print_message("scenario: %s\n", sc->name);
		sim_init(s, sc->shards, sc->rf);
		sim_nodes(s, sc->nodes);
		for (uint32_t sh = 0; sh < sc->shards; sh++)
			sim_set_rec(s, sh, sc->recs[sh]);
		sim_pos(s, sc->pos);
		n = sim_plan(s);
		if (n != sc->n_expect)
			fail_msg("%s: %zu actions, expected %zu (first: %s)", sc->name, n,
				 sc->n_expect, n > 0 ? s->act[0].why : "-");
		for (size_t i = 0; i < n; i++) {
			const struct expect_act *e = &sc->expect[i];
			char got[MP_SHARDREC_MAX_LEN];

			check_action(s, &s->act[i]);
			rec_text(&s->act[i].rec, got, sizeof(got));
			if (s->act[i].shard != e->shard || s->act[i].kind != e->kind ||
			    strcmp(got, e->rec) != 0 || strcmp(s->act[i].why, e->why) != 0)
				fail_msg("%s: action %zu: shard %u %s \"%s\", expected shard %u %s \"%s\"",
					 sc->name, i, s->act[i].shard, s->act[i].why, got,
					 e->shard, e->why, e->rec);
		}
		free(s);
	}
}

/* ------------------------------------------------------------ placement */

static void assert_spread(struct sim *s, const char *what, size_t (*pick)(size_t, size_t))
{
	size_t lo = SIZE_MAX, hi = 0;

	for (size_t i = 0; i < s->n_nodes; i++) {
		size_t rep, lead, v;

		if (!s->nodes[i].live || s->nodes[i].draining)
			continue;
		counts(s, s->nodes[i].id, &rep, &lead);
		v = pick(rep, lead);
		lo = v < lo ? v : lo;
		hi = v > hi ? v : hi;
	}
	if (hi - lo > 1)
		fail_msg("%s spread %zu..%zu", what, lo, hi);
}

static size_t pick_rep(size_t rep, size_t lead)
{
	(void)lead;
	return rep;
}

static size_t pick_lead(size_t rep, size_t lead)
{
	(void)rep;
	return lead;
}

static void test_empty_cluster(void **state)
{
	static const char *const ids[] = { "n1", "n2", "n3", "n4" };

	(void)state;
	for (size_t nn = 1; nn <= 4; nn++) {
		struct sim *s = calloc(1, sizeof(*s));
		size_t n, total = 0;

		assert_non_null(s);
		sim_init(s, 64, 3);
		for (size_t i = 0; i < nn; i++)
			sim_add_node(s, ids[i], true, false);
		n = sim_plan(s);
		assert_int_equal(n, 64);
		for (size_t i = 0; i < n; i++) {
			assert_int_equal(s->act[i].shard, i);
			assert_int_equal(s->act[i].kind, CTL_CREATE);
			assert_int_equal(s->act[i].rec.n_replicas, nn < 3 ? nn : 3);
		}
		sim_apply(s, n);
		for (size_t i = 0; i < nn; i++) {
			size_t rep, lead;

			counts(s, ids[i], &rep, &lead);
			total += rep;
		}
		assert_int_equal(total, 64 * (nn < 3 ? nn : 3));
		assert_spread(s, "replicas", pick_rep);
		assert_spread(s, "leaders", pick_lead);
		/* Created records are settled: the next round does nothing. */
		assert_int_equal(sim_plan(s), 0);
		free(s);
	}
}

static void test_max_actions(void **state)
{
	struct sim *s = calloc(1, sizeof(*s));
	size_t n;

	(void)state;
	assert_non_null(s);
	sim_init(s, 64, 3);
	sim_nodes(s, "n1 n2 n3");
	sim_input(s, NULL);
	n = ctl_plan(&s->in, s->act, 5);
	assert_int_equal(n, 5);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(s->act[i].shard, i);
	assert_int_equal(ctl_plan(&s->in, s->act, 0), 0);
	assert_int_equal(ctl_plan(NULL, s->act, 5), 0);
	free(s);
}

/* The listing order of nodes never changes the plan. */
static void test_deterministic(void **state)
{
	struct sim *s = calloc(1, sizeof(*s));
	struct ctl_action *first = calloc(MAXACT, sizeof(*first));
	size_t perm[MAXN], n0, n;
	uint32_t seed = 12345;

	(void)state;
	assert_non_null(s);
	assert_non_null(first);
	sim_init(s, 64, 3);
	sim_nodes(s, "a b c d e f g");
	sim_input(s, NULL);
	n0 = ctl_plan(&s->in, first, MAXACT);
	assert_int_equal(n0, 64);
	for (int round = 0; round < 20; round++) {
		for (size_t i = 0; i < s->n_nodes; i++)
			perm[i] = i;
		for (size_t i = s->n_nodes - 1; i > 0; i--) {
			size_t j, t;

			seed = seed * 1103515245u + 12345u;
			j = (seed >> 16) % (i + 1);
			t = perm[i];
			perm[i] = perm[j];
			perm[j] = t;
		}
		sim_input(s, perm);
		n = ctl_plan(&s->in, s->act, MAXACT);
		assert_int_equal(n, n0);
		for (size_t i = 0; i < n; i++) {
			assert_int_equal(s->act[i].shard, first[i].shard);
			assert_memory_equal(&s->act[i].rec, &first[i].rec, sizeof(first[i].rec));
		}
	}
	free(first);
	free(s);
}

/* A full 3-node cluster; then n4 joins: one move, to a shard of the most
 * loaded node (every node holds every shard: n1 by id), n4 not in sync. */
static void test_join_first_move(void **state)
{
	struct sim *s = calloc(1, sizeof(*s));
	const struct ctl_action *a;
	const struct mp_shard_rec *old;
	size_t n;

	(void)state;
	assert_non_null(s);
	sim_init(s, 64, 3);
	sim_nodes(s, "n1 n2 n3");
	sim_apply(s, sim_plan(s));
	sim_add_node(s, "n4", true, false);
	n = sim_plan(s);
	assert_int_equal(n, 1);
	a = &s->act[0];
	old = &s->shards[a->shard];
	check_action(s, a);
	assert_string_equal(a->why, "balance");
	assert_int_equal(a->rec.n_replicas, old->n_replicas + 1);
	assert_string_equal(a->rec.replicas[old->n_replicas], "n4");
	assert_false(mp_shard_rec_in_isr(&a->rec, "n4"));
	assert_true(mp_shard_rec_has_replica(old, "n1"));
	assert_string_not_equal(old->leader, "n1");
	/* While that move is in flight, no other one starts. */
	sim_apply(s, n);
	assert_int_equal(sim_plan(s), 0);
	free(s);
}

/* ----------------------------------------------------------- simulations */

static void test_sim_join(void **state)
{
	struct sim *s = calloc(1, sizeof(*s));
	static const char *const ids[] = { "n1", "n2", "n3", "n4" };

	(void)state;
	assert_non_null(s);
	sim_init(s, 64, 3);
	sim_nodes(s, "n1 n2 n3");
	sim_converge(s);
	check_settled(s);
	sim_add_node(s, "n4", true, false);
	sim_converge(s);
	check_settled(s);
	for (size_t i = 0; i < 4; i++) {
		size_t rep, lead;

		counts(s, ids[i], &rep, &lead);
		print_message("%s: %zu replicas, %zu leaderships\n", ids[i], rep, lead);
		assert_true(rep >= 64 * 3 / 4 - 2 && rep <= 64 * 3 / 4 + 2);
		/* rule 7: the new node leads its share too */
		assert_true(lead >= 64 / 4 - 1 && lead <= 64 / 4 + 1);
	}
	free(s);
}

static void test_sim_drain(void **state)
{
	struct sim *s = calloc(1, sizeof(*s));
	size_t rep, lead;

	(void)state;
	assert_non_null(s);
	sim_init(s, 64, 3);
	sim_nodes(s, "n1 n2 n3 n4");
	sim_converge(s);
	check_settled(s);
	sim_node(s, "n2")->draining = true;
	sim_converge(s);
	check_settled(s);
	counts(s, "n2", &rep, &lead);
	assert_int_equal(rep, 0);
	assert_int_equal(lead, 0);
	/* The drained node leaves; nothing else to do. */
	sim_node(s, "n2")->live = false;
	assert_int_equal(sim_plan(s), 0);
	free(s);
}

static void test_sim_node_dies(void **state)
{
	struct sim *s = calloc(1, sizeof(*s));
	static const char *const ids[] = { "n1", "n2", "n4", "n5" };
	size_t rep, lead;

	(void)state;
	assert_non_null(s);
	sim_init(s, 64, 3);
	sim_nodes(s, "n1 n2 n3 n4 n5");
	sim_converge(s);
	check_settled(s);
	sim_node(s, "n3")->live = false;
	sim_converge(s);
	check_settled(s);
	counts(s, "n3", &rep, &lead);
	assert_int_equal(rep, 0);
	assert_int_equal(lead, 0);
	for (size_t i = 0; i < 4; i++) {
		counts(s, ids[i], &rep, &lead);
		assert_true(rep >= 48 - 2 && rep <= 48 + 2);
	}
	/* It comes back empty-handed: balance fills it again. */
	sim_node(s, "n3")->live = true;
	sim_converge(s);
	check_settled(s);
	counts(s, "n3", &rep, &lead);
	assert_true(rep >= 64 * 3 / 5 - 2);
	free(s);
}

/* Two of three nodes die at once, then come back one by one. */
static void test_sim_double_failure(void **state)
{
	struct sim *s = calloc(1, sizeof(*s));

	(void)state;
	assert_non_null(s);
	sim_init(s, 16, 3);
	sim_nodes(s, "n1 n2 n3");
	sim_converge(s);
	sim_node(s, "n1")->live = false;
	sim_node(s, "n2")->live = false;
	sim_converge(s);
	for (uint32_t sh = 0; sh < 16; sh++)
		assert_string_equal(s->shards[sh].leader, "n3");
	sim_node(s, "n1")->live = true;
	sim_converge(s);
	sim_node(s, "n2")->live = true;
	sim_converge(s);
	check_settled(s);
	free(s);
}

/* --------------------------------------------------------- random states */

static uint32_t rnd_state = 2463534242u;

static uint32_t rnd(uint32_t n)
{
	rnd_state ^= rnd_state << 13;
	rnd_state ^= rnd_state >> 17;
	rnd_state ^= rnd_state << 5;
	return rnd_state % n;
}

/* Whatever the state, every action is valid and safe (check_action and
 * the copy-then-switch floor in sim_apply). */
static void test_random_states(void **state)
{
	static const char *const ids[] = { "n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8" };
	struct sim *s = calloc(1, sizeof(*s));

	(void)state;
	assert_non_null(s);
	for (int iter = 0; iter < 3000; iter++) {
		uint32_t rf = 1 + rnd(5), nodes = 1 + rnd(8);

		sim_init(s, 1 + rnd(MAXS), rf);
		for (uint32_t i = 0; i < nodes; i++)
			sim_add_node(s, ids[i], rnd(4) != 0, rnd(5) == 0);
		for (uint32_t sh = 0; sh < s->cfg.shards; sh++) {
			struct mp_shard_rec *r = &s->shards[sh];
			uint32_t nr;

			if (rnd(6) == 0)
				continue;
			memset(r, 0, sizeof(*r));
			r->epoch = 1 + rnd(10);
			nr = 1 + rnd(nodes < MP_REPLICAS_MAX ? nodes : MP_REPLICAS_MAX);
			/* nr distinct nodes, from a random start */
			for (uint32_t k = 0, start = rnd(nodes); k < nr; k++)
				set_id(r->replicas[r->n_replicas++], ids[(start + k) % nodes]);
			set_id(r->leader, r->replicas[0]);
			set_id(r->isr[r->n_isr++], r->leader);
			for (uint32_t k = 1; k < nr; k++)
				if (rnd(2))
					set_id(r->isr[r->n_isr++], r->replicas[k]);
			assert_int_equal(mp_shard_rec_check(r, NULL), 0);
			s->has[sh] = true;
		}
		for (uint32_t k = rnd(MAXPOS); k > 0; k--) {
			struct ctl_pos *p = &s->pos[s->n_pos++];

			set_id(p->node, ids[rnd(nodes)]);
			p->shard = rnd(s->cfg.shards);
			p->lsn = rnd(100);
		}
		/* A few rounds from there. */
		for (int round = 0; round < 4; round++) {
			size_t n = sim_plan(s);

			sim_apply(s, n);
			(void)sim_leaders(s);
		}
	}
	free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_scenarios),
		cmocka_unit_test(test_empty_cluster),
		cmocka_unit_test(test_max_actions),
		cmocka_unit_test(test_deterministic),
		cmocka_unit_test(test_join_first_move),
		cmocka_unit_test(test_sim_join),
		cmocka_unit_test(test_sim_drain),
		cmocka_unit_test(test_sim_node_dies),
		cmocka_unit_test(test_sim_double_failure),
		cmocka_unit_test(test_random_states),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
