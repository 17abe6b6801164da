/*
 * ctl_cluster: merpatictl against a cluster (--etcd): MailStore calls
 * routed to the leader of their shard through mp_route, "user list" over
 * every node, "cluster status" (the records in etcd and each replica's lag
 * from Replication.ShardState) and the operator's keys: drain/{id} and the
 * removal of a node that holds nothing any more.
 *
 * The shard records belong to the controller and the leaders: this file
 * never writes shards/ or config, and removes nodes/{id} only when no shard
 * record lists the node. It never prints a partial "user list" as if it
 * were whole: a node that does not answer fails the command.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "ctl.h"
#include "mp_error.h"
#include "mp_etcd.h"
#include "mp_route.h"
#include "mp_rpc.h"
#include "mp_shardmap.h"
#include "replication.pb-c.h"

/* etcd answers in milliseconds; a longer wait means it is gone. */
#define CTL_ETCD_CALL_MS 5000
/* ShardState from one node for "cluster status": a paused node must not
 * hold the report up for the whole --timeout. */
#define CTL_STATE_MS 3000
#define CTL_LEADER_WAIT_STEP_MS 200
#define CTL_SHARDS_LISTED 8      /* node remove: shards named in the refusal */
#define CTL_DRAIN_VALUE "requested"

static int64_t ctl_min64(int64_t a, int64_t b)
{
	return a < b ? a : b;
}

static void ctl_sleep_ms(int64_t ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static int64_t ctl_mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------ etcd and the route */

int ctl_etcd_open(struct ctl *c)
{
	char prefix[128];
	char *error = NULL;
	int err;

	if (c->etcd != NULL)
		return CTL_EXIT_OK;
	ctl_rpc_start(c);
	/* The name was checked against [A-Za-z0-9_.-]{1,63}: it fits. */
	snprintf(prefix, sizeof prefix, "/merpati/%s/", c->opt.cluster);
	snprintf(c->target, sizeof c->target, "etcd %s", c->opt.etcd);
	err = mp_etcd_open(c->opt.etcd, prefix,
			   ctl_min64(c->opt.timeout_ms, CTL_ETCD_CALL_MS),
			   &c->etcd, &error);
	if (err != 0) {
		ctl_err(c, "cannot use etcd at %s: %s%s%s", c->opt.etcd,
			mp_strerror(err), error != NULL ? ": " : "",
			error != NULL ? error : "");
		free(error);
		c->etcd = NULL;
		return err == MP_EINVAL ? CTL_EXIT_INVALID : CTL_EXIT_UNAVAIL;
	}
	return CTL_EXIT_OK;
}

/* The map's shard count; 0 while the cluster has no config. */
static uint32_t ctl_map_shards(struct ctl *c)
{
	struct mp_shardmap *m = mp_route_map(c->route);
	uint32_t n;

	pthread_mutex_lock(&m->mu);
	n = m->config.shards;
	pthread_mutex_unlock(&m->mu);
	return n;
}

int ctl_route_open(struct ctl *c)
{
	struct mp_route_opts o;
	char *error = NULL;
	int err, ret;

	if (c->route != NULL)
		return CTL_EXIT_OK;
	ret = ctl_etcd_open(c);
	if (ret != CTL_EXIT_OK)
		return ret;
	memset(&o, 0, sizeof o);
	o.timeout_ms = c->opt.timeout_ms;
	o.attempt_timeout_ms = ctl_min64(c->opt.timeout_ms,
					 MP_ROUTE_ATTEMPT_TIMEOUT_MS);
	o.max_msg = MP_RPC_DEFAULT_MAX_MSG;
	err = mp_route_open(c->etcd, &o, &c->route, &error);
	if (err != 0) {
		ctl_err(c, "cluster \"%s\" at etcd %s: %s", c->opt.cluster,
			c->opt.etcd, error != NULL ? error : mp_strerror(err));
		free(error);
		c->route = NULL;
		return ctl_exit_for(err) == CTL_EXIT_ERROR ? CTL_EXIT_ERROR :
		       CTL_EXIT_UNAVAIL;
	}
	if (ctl_map_shards(c) == 0) {
		ctl_err(c, "etcd at %s has no cluster \"%s\" (no key "
			"/merpati/%s/config): wrong --cluster, or no node has "
			"started yet", c->opt.etcd, c->opt.cluster,
			c->opt.cluster);
		return CTL_EXIT_UNAVAIL;
	}
	return CTL_EXIT_OK;
}

void ctl_cluster_close(struct ctl *c)
{
	mp_route_close(&c->route);
	mp_etcd_close(&c->etcd);
}

/* --------------------------------------------------------- routed calls */

static const char *const ctl_domain_methods[] = {
	"CreateDomain", "DeleteDomain", "GetDomain", "ListDomains",
};

/* The string field name of a request, or NULL (no such field). */
static const ProtobufCFieldDescriptor *
ctl_string_field(const ProtobufCMessage *m, const char *name)
{
	const ProtobufCFieldDescriptor *f =
		protobuf_c_message_descriptor_get_field_by_name(m->descriptor,
								name);

	if (f == NULL || f->type != PROTOBUF_C_TYPE_STRING ||
	    f->label == PROTOBUF_C_LABEL_REPEATED)
		return NULL;
	return f;
}

static const char *ctl_string_value(const ProtobufCMessage *m,
				    const ProtobufCFieldDescriptor *f)
{
	return *(char *const *)(const void *)((const char *)m + f->offset);
}

/* Which shard a MailStore request belongs to. Domains live on shard 0
 * (docs/DESIGN.md "etcd keys": until they move to etcd); the queue's and
 * ListAliases' requests name their shard; alias requests name the alias
 * address; everything else names its user. Exit status. */
static int ctl_route_shard(struct ctl *c, const char *method,
			   const ProtobufCMessage *req, uint32_t *shard_r)
{
	const ProtobufCFieldDescriptor *f;
	const char *user, *error = NULL;
	size_t i;
	int err;

	for (i = 0; i < sizeof ctl_domain_methods /
		    sizeof ctl_domain_methods[0]; i++) {
		if (strcmp(method, ctl_domain_methods[i]) == 0) {
			*shard_r = 0;
			return CTL_EXIT_OK;
		}
	}
	f = protobuf_c_message_descriptor_get_field_by_name(req->descriptor,
							    "shard");
	if (f != NULL && f->type == PROTOBUF_C_TYPE_UINT32 &&
	    f->label != PROTOBUF_C_LABEL_REPEATED) {
		*shard_r = *(const uint32_t *)(const void *)
			   ((const char *)req + f->offset);
		return CTL_EXIT_OK;
	}
	f = ctl_string_field(req, "alias");
	if (f == NULL)
		f = ctl_string_field(req, "user");
	user = f != NULL ? ctl_string_value(req, f) : NULL;
	if (user == NULL || *user == '\0') {
		ctl_err(c, "internal error: %s names no user to route by",
			method);
		return CTL_EXIT_ERROR;
	}
	err = mp_route_shard_of(c->route, user, shard_r, &error);
	if (err != 0) {
		ctl_err(c, "cannot route %s for \"%s\": %s", method, user,
			error != NULL ? error : mp_strerror(err));
		return ctl_exit_for(err);
	}
	return CTL_EXIT_OK;
}

/* "ctl-" and 32 hex digits of getrandom. */
static int ctl_request_id(char *out, size_t outlen)
{
	static const char hex[] = "0123456789abcdef";
	uint8_t rnd[16];
	size_t got = 0, i;

	if (outlen < 4 + 2 * sizeof rnd + 1)
		return MP_EINVAL;
	while (got < sizeof rnd) {
		ssize_t n = getrandom(rnd + got, sizeof rnd - got, 0);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return MP_EIO;
		}
		got += (size_t)n;
	}
	memcpy(out, "ctl-", 4);
	for (i = 0; i < sizeof rnd; i++) {
		out[4 + 2 * i] = hex[rnd[i] >> 4];
		out[5 + 2 * i] = hex[rnd[i] & 15];
	}
	out[4 + 2 * sizeof rnd] = '\0';
	return 0;
}

/* mp_route retries a call that may have been applied (a timed-out
 * attempt): a request id lets the leader apply it once. The caller's
 * request is const, so the id goes into a shallow copy (*copy_r, malloc'd,
 * its pointers borrowed from req: free() it, never free_unpacked). NULL
 * when the request has no request_id field or already has one. */
static int ctl_with_request_id(const ProtobufCMessage *req, char *rid,
			       size_t ridlen, ProtobufCMessage **copy_r)
{
	const ProtobufCFieldDescriptor *f = ctl_string_field(req, "request_id");
	const char *cur;
	void *copy;
	int err;

	*copy_r = NULL;
	if (f == NULL)
		return 0;
	cur = ctl_string_value(req, f);
	if (cur != NULL && *cur != '\0')
		return 0;
	err = ctl_request_id(rid, ridlen);
	if (err != 0)
		return err;
	copy = malloc(req->descriptor->sizeof_message);
	if (copy == NULL)
		return MP_ENOMEM;
	memcpy(copy, req, req->descriptor->sizeof_message);
	*(char **)(void *)((char *)copy + f->offset) = rid;
	*copy_r = copy;
	return 0;
}

/* c->target: the shard and, when the map knows it, its leader. */
static void ctl_set_leader_target(struct ctl *c, uint32_t shard)
{
	char id[MP_NODE_ID_MAX + 1], addr[MP_ADDR_MAX + 1];

	if (mp_shardmap_leader(mp_route_map(c->route), shard, id, addr,
			       NULL) == 0)
		snprintf(c->target, sizeof c->target,
			 "%s (%s), leader of shard %u", id, addr, shard);
	else
		snprintf(c->target, sizeof c->target,
			 "the leader of shard %u (none known)", shard);
}

int ctl_route_call(struct ctl *c, const char *method, const char *path,
		   const ProtobufCMessage *req,
		   const ProtobufCMessageDescriptor *resp_desc,
		   ProtobufCMessage **resp_r)
{
	ProtobufCMessage *copy = NULL;
	char rid[64];
	char *msg = NULL;
	uint32_t shard = 0;
	int err, ret;

	*resp_r = NULL;
	ret = ctl_route_open(c);
	if (ret != CTL_EXIT_OK)
		return ret;
	ret = ctl_route_shard(c, method, req, &shard);
	if (ret != CTL_EXIT_OK)
		return ret;
	err = ctl_with_request_id(req, rid, sizeof rid, &copy);
	if (err != 0) {
		ctl_err(c, "cannot make a request id: %s", mp_strerror(err));
		return CTL_EXIT_ERROR;
	}
	err = mp_route_call(c->route, shard, path, copy != NULL ? copy : req,
			    resp_desc, c->opt.timeout_ms, resp_r, &msg);
	free(copy);
	ctl_set_leader_target(c, shard);
	if (err != 0) {
		*resp_r = NULL;
		ret = ctl_rpc_error(c, method, err, msg);
		free(msg);
		return ret;
	}
	free(msg);
	if (*resp_r == NULL) {
		ctl_err(c, "%s: the node sent no reply", method);
		return CTL_EXIT_ERROR;
	}
	return CTL_EXIT_OK;
}

int ctl_call_shard_raw(struct ctl *c, const char *method, uint32_t shard,
		       const ProtobufCMessage *req,
		       const ProtobufCMessageDescriptor *resp_desc,
		       ProtobufCMessage **resp_r, char **error_r)
{
	ProtobufCMessage *copy = NULL;
	char path[128], rid[64];
	int err;

	*resp_r = NULL;
	*error_r = NULL;
	if (mp_rpc_method_path(&merpati__v1__mail_store__descriptor, method,
			       path, sizeof path) == NULL)
		return MP_EINVAL;
	if (c->opt.etcd == NULL) {
		if (ctl_connect(c) != CTL_EXIT_OK)
			return MP_EUNAVAIL;
		err = mp_rpc_call(c->ch, path, req, resp_desc,
				  c->opt.timeout_ms, resp_r, error_r);
	} else {
		if (ctl_route_open(c) != CTL_EXIT_OK)
			return MP_EUNAVAIL;
		err = ctl_with_request_id(req, rid, sizeof rid, &copy);
		if (err != 0)
			return err;
		err = mp_route_call(c->route, shard, path,
				    copy != NULL ? copy : req, resp_desc,
				    c->opt.timeout_ms, resp_r, error_r);
		free(copy);
		ctl_set_leader_target(c, shard);
	}
	if (err == 0 && *resp_r == NULL)
		err = MP_EPROTO;
	if (err != 0 && *resp_r != NULL) {
		protobuf_c_message_free_unpacked(*resp_r, NULL);
		*resp_r = NULL;
	}
	return err;
}

int ctl_shard_count(struct ctl *c, uint32_t *n_r)
{
	Merpati__V1__Empty req = MERPATI__V1__EMPTY__INIT;
	Merpati__V1__NodeInfoReply *resp = NULL;
	int ret;

	*n_r = 0;
	if (c->opt.etcd != NULL) {
		ret = ctl_route_open(c);
		if (ret != CTL_EXIT_OK)
			return ret;
		*n_r = ctl_map_shards(c);
		return CTL_EXIT_OK;
	}
	ret = ctl_call(c, "NodeInfo", &req.base,
		       &merpati__v1__node_info_reply__descriptor,
		       (ProtobufCMessage **)&resp);
	if (ret != CTL_EXIT_OK)
		return ret;
	*n_r = resp->shard_count;
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	if (*n_r == 0) {
		ctl_err(c, "NodeInfo: %s has no shards", ctl_target(c));
		return CTL_EXIT_ERROR;
	}
	return CTL_EXIT_OK;
}

int ctl_connect_user(struct ctl *c, const char *user)
{
	char id[MP_NODE_ID_MAX + 1], addr[MP_ADDR_MAX + 1];
	const char *error = NULL;
	int64_t deadline;
	uint32_t shard;
	int err, ret;

	if (c->opt.etcd == NULL)
		return ctl_connect(c);
	if (c->ch != NULL)
		return CTL_EXIT_OK;
	ret = ctl_route_open(c);
	if (ret != CTL_EXIT_OK)
		return ret;
	err = mp_route_shard_of(c->route, user, &shard, &error);
	if (err != 0) {
		ctl_err(c, "cannot route \"%s\": %s", user,
			error != NULL ? error : mp_strerror(err));
		return ctl_exit_for(err);
	}
	/* A shard between leaders (failover) gets one soon: wait for it
	 * within the command's timeout, re-reading etcd. */
	deadline = ctl_mono_ms() + c->opt.timeout_ms;
	while (mp_shardmap_leader(mp_route_map(c->route), shard, id, addr,
				  NULL) != 0) {
		int64_t left = deadline - ctl_mono_ms();

		if (left <= 0) {
			ctl_err(c, "shard %u of %s has no live leader", shard,
				user);
			return CTL_EXIT_UNAVAIL;
		}
		(void)mp_route_refresh(c->route);
		ctl_sleep_ms(ctl_min64(left, CTL_LEADER_WAIT_STEP_MS));
	}
	snprintf(c->target, sizeof c->target, "%s (%s), leader of shard %u",
		 id, addr, shard);
	err = mp_rpc_channel_open(addr, MP_RPC_DEFAULT_MAX_MSG, &c->ch);
	if (err != 0) {
		ctl_err(c, "cannot open a channel to %s: %s", c->target,
			mp_strerror(err));
		c->ch = NULL;
		return CTL_EXIT_UNAVAIL;
	}
	return CTL_EXIT_OK;
}

/* ------------------------------------------------- live nodes of a map */

struct ctl_node_addr {
	char id[MP_NODE_ID_MAX + 1];
	char addr[MP_ADDR_MAX + 1];
};

/* Copies the live nodes of the route's map (malloc'd array). */
static int ctl_map_nodes(struct ctl *c, struct ctl_node_addr **v_r,
			 size_t *n_r)
{
	struct mp_shardmap *m = mp_route_map(c->route);
	struct ctl_node_addr *v;
	size_t i, n;

	*v_r = NULL;
	*n_r = 0;
	pthread_mutex_lock(&m->mu);
	n = m->n_nodes;
	v = calloc(n + 1, sizeof *v);
	if (v == NULL) {
		pthread_mutex_unlock(&m->mu);
		return MP_ENOMEM;
	}
	for (i = 0; i < n; i++) {
		snprintf(v[i].id, sizeof v[i].id, "%s", m->nodes[i].id);
		snprintf(v[i].addr, sizeof v[i].addr, "%s",
			 m->nodes[i].rec.addr);
	}
	pthread_mutex_unlock(&m->mu);
	*v_r = v;
	*n_r = n;
	return 0;
}

/* ------------------------------------------------------------ user list */

static int ctl_acct_cmp(const void *x, const void *y)
{
	const Merpati__V1__Account *a = *(const Merpati__V1__Account *const *)x;
	const Merpati__V1__Account *b = *(const Merpati__V1__Account *const *)y;

	return strcmp(a->user, b->user);
}

/* Every page of one node's ListAccounts. Exit status. */
static int ctl_list_node(struct ctl *c, const struct ctl_node_addr *node,
			 const char *path, const char *domain,
			 struct ctl_pages *l)
{
	Merpati__V1__ListAccountsRequest req =
		MERPATI__V1__LIST_ACCOUNTS_REQUEST__INIT;
	char after[CTL_USER_LEN_MAX + 1] = "";
	int pages;

	req.domain = (char *)domain;
	req.limit = c->opt.page_size;
	snprintf(c->target, sizeof c->target, "%s (%s)", node->id, node->addr);
	for (pages = 0; pages < CTL_PAGES_MAX; pages++) {
		Merpati__V1__ListAccountsReply *resp = NULL;
		const char *last;
		char *msg = NULL;
		int err, more;

		req.after = after;
		err = mp_route_call_node(c->route, node->addr, path, &req.base,
					 &merpati__v1__list_accounts_reply__descriptor,
					 c->opt.timeout_ms,
					 (ProtobufCMessage **)&resp, &msg);
		if (err != 0) {
			int ret = ctl_rpc_error(c, "ListAccounts", err, msg);

			free(msg);
			return ret;
		}
		free(msg);
		if (resp == NULL) {
			ctl_err(c, "ListAccounts: %s sent no reply", c->target);
			return CTL_EXIT_ERROR;
		}
		more = resp->more;
		last = resp->n_accounts > 0 ?
		       resp->accounts[resp->n_accounts - 1]->user : NULL;
		if (more && (last == NULL || strcmp(last, after) == 0 ||
			     strlen(last) >= sizeof after)) {
			protobuf_c_message_free_unpacked(&resp->base, NULL);
			ctl_err(c, "ListAccounts: the paging of %s did not "
				"advance", c->target);
			return CTL_EXIT_ERROR;
		}
		if (more)
			snprintf(after, sizeof after, "%s", last);
		err = ctl_pages_add(l, &resp->base, (void *const *)resp->accounts,
				    resp->n_accounts);
		if (err != 0) {
			protobuf_c_message_free_unpacked(&resp->base, NULL);
			ctl_err(c, "out of memory");
			return CTL_EXIT_ERROR;
		}
		if (!more)
			return CTL_EXIT_OK;
	}
	ctl_err(c, "ListAccounts: too many pages from %s", c->target);
	return CTL_EXIT_ERROR;
}

int ctl_user_list_cluster(struct ctl *c, const char *domain)
{
	struct ctl_pages l;
	struct ctl_node_addr *nodes = NULL;
	char path[128], quota[32];
	size_t n_nodes = 0, i;
	int err, ret;

	memset(&l, 0, sizeof l);
	ret = ctl_route_open(c);
	if (ret != CTL_EXIT_OK)
		return ret;
	if (mp_rpc_method_path(&merpati__v1__mail_store__descriptor,
			       "ListAccounts", path, sizeof path) == NULL) {
		ctl_err(c, "internal error: no ListAccounts method");
		return CTL_EXIT_ERROR;
	}
	err = ctl_map_nodes(c, &nodes, &n_nodes);
	if (err != 0) {
		ctl_err(c, "out of memory");
		return CTL_EXIT_ERROR;
	}
	if (n_nodes == 0) {
		free(nodes);
		ctl_err(c, "cluster \"%s\" has no live node", c->opt.cluster);
		return CTL_EXIT_UNAVAIL;
	}
	/* Each node lists the shards it leads; a node that cannot answer
	 * leaves a hole, so the whole list fails rather than look complete. */
	for (i = 0; i < n_nodes; i++) {
		ret = ctl_list_node(c, &nodes[i], path, domain, &l);
		if (ret != CTL_EXIT_OK)
			break;
	}
	free(nodes);
	if (ret != CTL_EXIT_OK) {
		ctl_pages_free(&l);
		return ret;
	}
	if (l.n > 0) /* l.v is NULL then: qsort's argument must not be */
		qsort(l.v, l.n, sizeof *l.v, ctl_acct_cmp);
	for (i = 0; i < l.n; i++) {
		const Merpati__V1__Account *a = l.v[i];
		const Merpati__V1__Account *prev = i > 0 ? l.v[i - 1] : NULL;

		/* A shard changing leader while we asked may be listed by its
		 * old and its new leader. */
		if (prev != NULL && strcmp(a->user, prev->user) == 0)
			continue;
		printf("%s state=%s quota=%s used=%llu messages=%llu shard=%u\n",
		       a->user, ctl_state_name(a->state),
		       ctl_fmt_size(a->quota_bytes, 1, quota, sizeof quota),
		       (unsigned long long)a->used_bytes,
		       (unsigned long long)a->messages, a->shard);
	}
	ctl_pages_free(&l);
	return CTL_EXIT_OK;
}

/* ------------------------------------------------------ cluster records */

struct cs_node {
	char id[MP_NODE_ID_MAX + 1];
	int live;                    /* nodes/{id} exists */
	struct mp_node_rec rec;      /* when live */
	int drain;                   /* drain/{id} exists */
	char drain_value[64];
	uint32_t leads, holds;
	/* Positions by shard from ShardState; NULL: not asked or no answer. */
	uint64_t *lsn;               /* owned, nshards entries */
	uint8_t *has_pos;            /* owned, nshards entries */
	char *state_err;             /* owned: why ShardState failed */
};

struct cs_shard {
	int present;                 /* a valid record */
	const char *bad;             /* static: why the record is invalid */
	struct mp_shard_rec rec;
	int64_t mod_rev;
};

struct cs_view {
	int has_config;
	struct mp_cluster_config config;
	char controller[MP_NODE_ID_MAX + 1];  /* "" when none */
	char controller_raw[MP_SHARDREC_MAX_LEN + 1];
	struct cs_node *nodes;       /* owned */
	size_t n_nodes, cap_nodes;
	struct cs_shard *shards;     /* owned, config.shards entries */
	size_t bad;                  /* invalid records seen */
	int64_t rev;                 /* the highest revision read */
};

static void cs_view_free(struct cs_view *v)
{
	size_t i;

	for (i = 0; i < v->n_nodes; i++) {
		free(v->nodes[i].lsn);
		free(v->nodes[i].has_pos);
		free(v->nodes[i].state_err);
	}
	free(v->nodes);
	free(v->shards);
	memset(v, 0, sizeof *v);
}

/* The node with this id, added when missing (NULL: out of memory). */
static struct cs_node *cs_node_get(struct cs_view *v, const char *id)
{
	struct cs_node *n;
	size_t i;

	for (i = 0; i < v->n_nodes; i++) {
		if (strcmp(v->nodes[i].id, id) == 0)
			return &v->nodes[i];
	}
	if (strlen(id) > MP_NODE_ID_MAX)
		return NULL;
	if (v->n_nodes == v->cap_nodes) {
		size_t cap = v->cap_nodes == 0 ? 8 : v->cap_nodes * 2;
		void *p = realloc(v->nodes, cap * sizeof *v->nodes);

		if (p == NULL)
			return NULL;
		v->nodes = p;
		v->cap_nodes = cap;
	}
	n = &v->nodes[v->n_nodes++];
	memset(n, 0, sizeof *n);
	memcpy(n->id, id, strlen(id) + 1);
	return n;
}

static int cs_node_cmp(const void *x, const void *y)
{
	const struct cs_node *a = x, *b = y;

	return strcmp(a->id, b->id);
}

static void cs_bad(struct ctl *c, struct cs_view *v, const char *key,
		   const char *why)
{
	v->bad++;
	ctl_err(c, "invalid record %s in etcd: %s", key, why);
}

static void cs_note_rev(struct cs_view *v, int64_t rev)
{
	if (rev > v->rev)
		v->rev = rev;
}

/* "id=n2" -> n2 (the controller key's value). */
static int cs_parse_controller(const struct mp_etcd_kv *kv, char *id_out)
{
	const char *val = (const char *)kv->value;

	if (kv->vlen < 4 || kv->vlen > 3 + MP_NODE_ID_MAX ||
	    memcmp(val, "id=", 3) != 0 || strlen(val) != kv->vlen ||
	    !mp_node_id_valid(val + 3))
		return MP_EINVAL;
	memcpy(id_out, val + 3, kv->vlen - 3 + 1);
	return 0;
}

/* Reads config, controller, nodes/, drain/ and shards/ (one read each, so
 * not one revision: good enough for a report; the checks of node remove
 * read shards/ again right before acting). Exit status; with no config the
 * cluster does not exist: CTL_EXIT_NOTFOUND. */
static int cs_load(struct ctl *c, struct cs_view *v)
{
	struct mp_etcd_kv *kv = NULL, *kvs = NULL;
	const char *why = NULL;
	size_t n = 0, i;
	int64_t rev = 0;
	int err, ret = CTL_EXIT_OK;

	memset(v, 0, sizeof *v);
	ret = ctl_etcd_open(c);
	if (ret != CTL_EXIT_OK)
		return ret;

	err = mp_etcd_get(c->etcd, "config", &kv, &rev);
	if (err == MP_ENOENT) {
		ctl_err(c, "etcd at %s has no cluster \"%s\" (no key "
			"/merpati/%s/config): wrong --cluster, or no node has "
			"started yet", c->opt.etcd, c->opt.cluster,
			c->opt.cluster);
		return CTL_EXIT_NOTFOUND;
	}
	if (err != 0)
		goto etcd_failed;
	cs_note_rev(v, rev);
	err = mp_config_rec_parse((const char *)kv->value, kv->vlen, &v->config,
				  &why);
	mp_etcd_kvs_free(kv, 1);
	kv = NULL;
	if (err != 0) {
		ctl_err(c, "invalid record config in etcd: %s", why);
		return CTL_EXIT_ERROR;
	}
	v->has_config = 1;
	v->shards = calloc(v->config.shards, sizeof *v->shards);
	if (v->shards == NULL)
		goto nomem;

	err = mp_etcd_get(c->etcd, "controller", &kv, &rev);
	if (err == 0) {
		cs_note_rev(v, rev);
		snprintf(v->controller_raw, sizeof v->controller_raw, "%s",
			 (const char *)kv->value);
		if (cs_parse_controller(kv, v->controller) != 0)
			cs_bad(c, v, "controller", "expected id=NODE");
		mp_etcd_kvs_free(kv, 1);
		kv = NULL;
	} else if (err != MP_ENOENT) {
		goto etcd_failed;
	}

	err = mp_etcd_range(c->etcd, "nodes/", &kvs, &n, &rev);
	if (err != 0)
		goto etcd_failed;
	cs_note_rev(v, rev);
	for (i = 0; i < n; i++) {
		const char *id = kvs[i].key + strlen("nodes/");
		struct mp_node_rec rec;
		struct cs_node *node;

		if (!mp_node_id_valid(id)) {
			cs_bad(c, v, kvs[i].key, "not a node id");
			continue;
		}
		if (mp_node_rec_parse((const char *)kvs[i].value, kvs[i].vlen,
				      &rec, &why) != 0) {
			cs_bad(c, v, kvs[i].key, why);
			continue;
		}
		node = cs_node_get(v, id);
		if (node == NULL)
			goto nomem_kvs;
		node->live = 1;
		node->rec = rec;
	}
	mp_etcd_kvs_free(kvs, n);
	kvs = NULL;

	err = mp_etcd_range(c->etcd, "drain/", &kvs, &n, &rev);
	if (err != 0)
		goto etcd_failed;
	cs_note_rev(v, rev);
	for (i = 0; i < n; i++) {
		const char *id = kvs[i].key + strlen("drain/");
		struct cs_node *node;

		if (!mp_node_id_valid(id)) {
			cs_bad(c, v, kvs[i].key, "not a node id");
			continue;
		}
		node = cs_node_get(v, id);
		if (node == NULL)
			goto nomem_kvs;
		node->drain = 1;
		snprintf(node->drain_value, sizeof node->drain_value, "%s",
			 (const char *)kvs[i].value);
	}
	mp_etcd_kvs_free(kvs, n);
	kvs = NULL;

	err = mp_etcd_range(c->etcd, "shards/", &kvs, &n, &rev);
	if (err != 0)
		goto etcd_failed;
	cs_note_rev(v, rev);
	for (i = 0; i < n; i++) {
		struct cs_shard *s;
		uint32_t shard;
		size_t k;

		if (mp_shard_key_parse(kvs[i].key, v->config.shards,
				       &shard) != 0) {
			cs_bad(c, v, kvs[i].key, "not a shard of the config");
			continue;
		}
		s = &v->shards[shard];
		if (mp_shard_rec_parse((const char *)kvs[i].value, kvs[i].vlen,
				       &s->rec, &why) != 0) {
			s->bad = why;
			cs_bad(c, v, kvs[i].key, why);
			continue;
		}
		s->present = 1;
		s->mod_rev = kvs[i].mod_rev;
		for (k = 0; k < s->rec.n_replicas; k++) {
			struct cs_node *node = cs_node_get(v, s->rec.replicas[k]);

			if (node == NULL)
				goto nomem_kvs;
			node->holds++;
			if (k == 0)
				node->leads++;
		}
	}
	mp_etcd_kvs_free(kvs, n);
	kvs = NULL;
	if (v->n_nodes > 0)
		qsort(v->nodes, v->n_nodes, sizeof *v->nodes, cs_node_cmp);
	return CTL_EXIT_OK;

etcd_failed:
	if (ctl_exit_for(err) == CTL_EXIT_UNAVAIL)
		ctl_err(c, "cannot reach etcd at %s (%s)", c->opt.etcd,
			mp_strerror(err));
	else
		ctl_err(c, "reading cluster \"%s\" from etcd at %s failed: "
			"%s", c->opt.cluster, c->opt.etcd, mp_strerror(err));
	cs_view_free(v);
	return ctl_exit_for(err) == CTL_EXIT_ERROR ? CTL_EXIT_ERROR :
	       CTL_EXIT_UNAVAIL;
nomem_kvs:
	mp_etcd_kvs_free(kvs, n);
nomem:
	ctl_err(c, "out of memory");
	cs_view_free(v);
	return CTL_EXIT_ERROR;
}

/* ShardState from every live node: the applied lsn of every shard it
 * holds. A node that does not answer keeps lsn NULL and says why. */
static void cs_ask_positions(struct ctl *c, struct cs_view *v)
{
	Merpati__Repl__V1__ShardStateRequest req =
		MERPATI__REPL__V1__SHARD_STATE_REQUEST__INIT;
	char path[128];
	size_t i, k;

	if (mp_rpc_method_path(&merpati__repl__v1__replication__descriptor,
			       "ShardState", path, sizeof path) == NULL)
		return;
	for (i = 0; i < v->n_nodes; i++) {
		struct cs_node *node = &v->nodes[i];
		Merpati__Repl__V1__ShardStateReply *rep = NULL;
		struct mp_rpc_channel *ch = NULL;
		char *msg = NULL;
		int err;

		if (!node->live)
			continue;
		err = mp_rpc_channel_open(node->rec.addr,
					  MP_RPC_DEFAULT_MAX_MSG, &ch);
		if (err == 0)
			err = mp_rpc_call(ch, path, &req.base,
					  &merpati__repl__v1__shard_state_reply__descriptor,
					  ctl_min64(c->opt.timeout_ms,
						    CTL_STATE_MS),
					  (ProtobufCMessage **)&rep, &msg);
		mp_rpc_channel_close(&ch);
		if (err == 0 && rep == NULL)
			err = MP_EPROTO;
		if (err != 0) {
			if (asprintf(&node->state_err, "%s%s%s",
				     mp_strerror(err), msg != NULL ? ": " : "",
				     msg != NULL ? msg : "") < 0)
				node->state_err = NULL;
			free(msg);
			continue;
		}
		free(msg);
		node->lsn = calloc(v->config.shards, sizeof *node->lsn);
		node->has_pos = calloc(v->config.shards, 1);
		if (node->lsn == NULL || node->has_pos == NULL) {
			free(node->lsn);
			free(node->has_pos);
			node->lsn = NULL;
			node->has_pos = NULL;
		} else {
			for (k = 0; k < rep->n_pos; k++) {
				const Merpati__Repl__V1__ShardPos *p =
					rep->pos[k];

				if (p->shard < v->config.shards) {
					node->lsn[p->shard] = p->lsn;
					node->has_pos[p->shard] = 1;
				}
			}
		}
		protobuf_c_message_free_unpacked(&rep->base, NULL);
	}
}

static const struct cs_node *cs_find(const struct cs_view *v, const char *id)
{
	size_t i;

	for (i = 0; i < v->n_nodes; i++) {
		if (strcmp(v->nodes[i].id, id) == 0)
			return &v->nodes[i];
	}
	return NULL;
}

/* 1 with *lsn_r when node id answered ShardState with a position for
 * shard; 0 when it is unknown, did not answer or had none. */
static int cs_pos(const struct cs_view *v, const char *id, uint32_t shard,
		  uint64_t *lsn_r)
{
	const struct cs_node *n = cs_find(v, id);

	if (n == NULL || n->lsn == NULL || !n->has_pos[shard])
		return 0;
	*lsn_r = n->lsn[shard];
	return 1;
}

/* A replica's lag behind its leader, as text: a number (lsns), "down" (no
 * node record), "noanswer" (ShardState failed), "?" (the leader's position
 * is unknown). *num_r set when it is a number. */
static const char *cs_lag(const struct cs_view *v, uint32_t shard,
			  const char *leader, const char *id, char *buf,
			  size_t buflen, int64_t *num_r, int *is_num_r)
{
	const struct cs_node *r = cs_find(v, id);
	uint64_t leader_lsn;

	*is_num_r = 0;
	if (r == NULL || !r->live)
		return "down";
	if (r->lsn == NULL)
		return "noanswer";
	if (!r->has_pos[shard] || !cs_pos(v, leader, shard, &leader_lsn))
		return "?";
	*num_r = (int64_t)(leader_lsn - r->lsn[shard]);
	*is_num_r = 1;
	snprintf(buf, buflen, "%" PRId64, *num_r);
	return buf;
}

static const char *cs_state_name(const struct cs_node *n)
{
	if (!n->live)
		return "down";
	return n->rec.state == MP_NODE_DRAINING ? "draining" : "active";
}

/* ---------------------------------------------------------- status: text */

static void cs_print_list(const char (*ids)[MP_NODE_ID_MAX + 1], size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		printf("%s%s", i > 0 ? "," : "", ids[i]);
}

static void cs_print_text(struct ctl *c, const struct cs_view *v)
{
	char buf[32];
	size_t i, k;
	uint32_t s;

	printf("cluster %s etcd=%s revision=%" PRId64 "\n", c->opt.cluster,
	       c->opt.etcd, v->rev);
	printf("config shards=%u rf=%u min_isr=%u\n", v->config.shards,
	       v->config.rf, v->config.min_isr);
	printf("controller %s\n", v->controller[0] != '\0' ? v->controller :
	       "none");
	for (i = 0; i < v->n_nodes; i++) {
		const struct cs_node *n = &v->nodes[i];

		printf("node %s addr=%s state=%s drain=%s leads=%u holds=%u\n",
		       n->id, n->live ? n->rec.addr : "-", cs_state_name(n),
		       n->drain ? (n->drain_value[0] != '\0' ?
				   n->drain_value : "requested") : "no",
		       n->leads, n->holds);
	}
	for (s = 0; s < v->config.shards; s++) {
		const struct cs_shard *sh = &v->shards[s];
		uint64_t lsn;

		if (!sh->present) {
			printf("shard %u %s\n", s, sh->bad != NULL ?
			       "invalid-record" : "no-record");
			continue;
		}
		printf("shard %u epoch=%" PRIu64 " leader=%s replicas=", s,
		       sh->rec.epoch, sh->rec.leader);
		cs_print_list(sh->rec.replicas,
			      sh->rec.n_replicas);
		printf(" isr=");
		cs_print_list(sh->rec.isr,
			      sh->rec.n_isr);
		if (cs_pos(v, sh->rec.leader, s, &lsn))
			printf(" lsn=%" PRIu64, lsn);
		else
			printf(" lsn=?");
		printf(" lag=");
		for (k = 0; k < sh->rec.n_replicas; k++) {
			int64_t num;
			int is_num;

			printf("%s%s:%s", k > 0 ? "," : "", sh->rec.replicas[k],
			       cs_lag(v, s, sh->rec.leader, sh->rec.replicas[k],
				      buf, sizeof buf, &num, &is_num));
		}
		printf("\n");
	}
}

/* ---------------------------------------------------------- status: JSON */

/* Strings here are node ids, addresses, the cluster name and etcd
 * endpoints, all checked to printable ASCII; escaping is a safety net. */
static void cs_json_str(const char *s)
{
	putchar('"');
	for (; *s != '\0'; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '"' || ch == '\\')
			printf("\\%c", ch);
		else if (ch < 0x20 || ch == 0x7f)
			printf("\\u%04x", ch);
		else
			putchar(ch);
	}
	putchar('"');
}

static void cs_json_list(const char (*ids)[MP_NODE_ID_MAX + 1], size_t n)
{
	size_t i;

	putchar('[');
	for (i = 0; i < n; i++) {
		if (i > 0)
			putchar(',');
		cs_json_str(ids[i]);
	}
	putchar(']');
}

static void cs_print_json(struct ctl *c, const struct cs_view *v)
{
	char buf[32];
	size_t i, k;
	uint32_t s;

	printf("{\"cluster\":");
	cs_json_str(c->opt.cluster);
	printf(",\"etcd\":");
	cs_json_str(c->opt.etcd);
	printf(",\"revision\":%" PRId64 ",\"config\":{\"shards\":%u,"
	       "\"rf\":%u,\"min_isr\":%u},\"controller\":", v->rev,
	       v->config.shards, v->config.rf, v->config.min_isr);
	if (v->controller[0] != '\0')
		cs_json_str(v->controller);
	else
		printf("null");
	printf(",\"nodes\":[");
	for (i = 0; i < v->n_nodes; i++) {
		const struct cs_node *n = &v->nodes[i];

		printf("%s{\"id\":", i > 0 ? "," : "");
		cs_json_str(n->id);
		printf(",\"addr\":");
		if (n->live)
			cs_json_str(n->rec.addr);
		else
			printf("null");
		printf(",\"state\":\"%s\",\"drain\":", cs_state_name(n));
		if (n->drain)
			cs_json_str(n->drain_value[0] != '\0' ?
				    n->drain_value : "requested");
		else
			printf("null");
		printf(",\"leads\":%u,\"holds\":%u,\"answered\":%s}",
		       n->leads, n->holds, n->lsn != NULL ? "true" : "false");
	}
	printf("],\"shards\":[");
	for (s = 0; s < v->config.shards; s++) {
		const struct cs_shard *sh = &v->shards[s];
		uint64_t lsn;

		printf("%s{\"shard\":%u", s > 0 ? "," : "", s);
		if (!sh->present) {
			printf(",\"record\":\"%s\"}", sh->bad != NULL ?
			       "invalid" : "none");
			continue;
		}
		printf(",\"epoch\":%" PRIu64 ",\"leader\":", sh->rec.epoch);
		cs_json_str(sh->rec.leader);
		printf(",\"replicas\":");
		cs_json_list(sh->rec.replicas,
			     sh->rec.n_replicas);
		printf(",\"isr\":");
		cs_json_list(sh->rec.isr,
			     sh->rec.n_isr);
		if (cs_pos(v, sh->rec.leader, s, &lsn))
			printf(",\"lsn\":%" PRIu64, lsn);
		else
			printf(",\"lsn\":null");
		printf(",\"lag\":{");
		for (k = 0; k < sh->rec.n_replicas; k++) {
			const char *t;
			int64_t num = 0;
			int is_num;

			t = cs_lag(v, s, sh->rec.leader, sh->rec.replicas[k],
				   buf, sizeof buf, &num, &is_num);
			printf("%s", k > 0 ? "," : "");
			cs_json_str(sh->rec.replicas[k]);
			putchar(':');
			if (is_num)
				printf("%" PRId64, num);
			else
				cs_json_str(t);
		}
		printf("}}");
	}
	printf("]}\n");
}

int ctl_cmd_cluster_status(struct ctl *c, char **args, int nargs)
{
	struct cs_view v;
	size_t i;
	int ret;

	(void)args;
	(void)nargs;
	ret = cs_load(c, &v);
	if (ret != CTL_EXIT_OK)
		return ret;
	cs_ask_positions(c, &v);
	for (i = 0; i < v.n_nodes; i++) {
		if (v.nodes[i].live && v.nodes[i].lsn == NULL)
			ctl_err(c, "node %s (%s) did not say where its shards "
				"are: %s", v.nodes[i].id, v.nodes[i].rec.addr,
				v.nodes[i].state_err != NULL ?
				v.nodes[i].state_err : "out of memory");
	}
	if (c->opt.json)
		cs_print_json(c, &v);
	else
		cs_print_text(c, &v);
	/* Everything readable was shown; an invalid record is still a fault
	 * an operator must not miss in a script's exit status. */
	ret = v.bad > 0 ? CTL_EXIT_ERROR : CTL_EXIT_OK;
	cs_view_free(&v);
	return ret;
}

/* ------------------------------------------------------- drain, remove */

static int ctl_node_id_arg(struct ctl *c, const char *id)
{
	if (!mp_node_id_valid(id)) {
		ctl_err(c, "bad node id \"%s\": expected 1..%d of A-Z a-z 0-9 "
			"_ . -", id, MP_NODE_ID_MAX);
		return CTL_EXIT_INVALID;
	}
	return CTL_EXIT_OK;
}

static int ctl_etcd_failed(struct ctl *c, const char *what, int err)
{
	ctl_err(c, "%s in etcd at %s failed: %s%s", what, c->opt.etcd,
		mp_strerror(err), ctl_exit_for(err) == CTL_EXIT_UNAVAIL ?
		" (cannot reach etcd)" : "");
	return ctl_exit_for(err) == CTL_EXIT_ERROR ? CTL_EXIT_ERROR :
	       CTL_EXIT_UNAVAIL;
}

int ctl_cmd_node_drain(struct ctl *c, char **args, int nargs)
{
	const char *id = args[0];
	const struct cs_node *n;
	struct cs_view v;
	char key[sizeof "drain/" + MP_NODE_ID_MAX];
	size_t others = 0, i;
	uint32_t rf;
	int err, ret;

	(void)nargs;
	ret = ctl_node_id_arg(c, id);
	if (ret != CTL_EXIT_OK)
		return ret;
	ret = cs_load(c, &v);
	if (ret != CTL_EXIT_OK)
		return ret;
	n = cs_find(&v, id);
	if (n == NULL || (!n->live && n->holds == 0 && !n->drain)) {
		cs_view_free(&v);
		ctl_err(c, "no node %s in cluster \"%s\"", id, c->opt.cluster);
		return CTL_EXIT_NOTFOUND;
	}
	for (i = 0; i < v.n_nodes; i++) {
		if (v.nodes[i].live && !v.nodes[i].drain &&
		    v.nodes[i].rec.state == MP_NODE_ACTIVE &&
		    strcmp(v.nodes[i].id, id) != 0)
			others++;
	}
	rf = v.config.rf;
	snprintf(key, sizeof key, "drain/%s", id);
	err = mp_etcd_put(c->etcd, key, CTL_DRAIN_VALUE,
			  strlen(CTL_DRAIN_VALUE), 0, NULL);
	if (err != 0) {
		cs_view_free(&v);
		return ctl_etcd_failed(c, "writing the drain request", err);
	}
	printf("drain of %s requested: the controller moves its %u shard "
	       "replicas (%u led) to other nodes; follow with 'merpatictl "
	       "cluster status'\n", id, n->holds, n->leads);
	if (others < rf)
		ctl_err(c, "warning: only %zu other active nodes for rf=%u: "
			"%s can hand over its leaderships but keeps replicas "
			"until more nodes join", others, rf, id);
	cs_view_free(&v);
	return CTL_EXIT_OK;
}

int ctl_cmd_node_undrain(struct ctl *c, char **args, int nargs)
{
	const char *id = args[0];
	struct mp_etcd_kv *kv = NULL;
	char key[sizeof "drain/" + MP_NODE_ID_MAX];
	int err, ret;

	(void)nargs;
	ret = ctl_node_id_arg(c, id);
	if (ret != CTL_EXIT_OK)
		return ret;
	ret = ctl_etcd_open(c);
	if (ret != CTL_EXIT_OK)
		return ret;
	snprintf(key, sizeof key, "drain/%s", id);
	err = mp_etcd_get(c->etcd, key, &kv, NULL);
	if (err == MP_ENOENT) {
		ctl_err(c, "node %s is not being drained (no key "
			"/merpati/%s/%s)", id, c->opt.cluster, key);
		return CTL_EXIT_NOTFOUND;
	}
	if (err != 0)
		return ctl_etcd_failed(c, "reading the drain request", err);
	mp_etcd_kvs_free(kv, 1);
	err = mp_etcd_delete(c->etcd, key, NULL);
	if (err != 0)
		return ctl_etcd_failed(c, "deleting the drain request", err);
	printf("drain of %s cancelled: it may receive shards again\n", id);
	return CTL_EXIT_OK;
}

int ctl_cmd_node_remove(struct ctl *c, char **args, int nargs)
{
	const char *id = args[0];
	const struct cs_node *n;
	struct cs_view v;
	char key[sizeof "nodes/" + MP_NODE_ID_MAX];
	int was_live, err, ret;

	(void)nargs;
	ret = ctl_node_id_arg(c, id);
	if (ret != CTL_EXIT_OK)
		return ret;
	ret = cs_load(c, &v);
	if (ret != CTL_EXIT_OK)
		return ret;
	n = cs_find(&v, id);
	if (n == NULL) {
		cs_view_free(&v);
		ctl_err(c, "no node %s in cluster \"%s\"", id, c->opt.cluster);
		return CTL_EXIT_NOTFOUND;
	}
	if (n->holds > 0) {
		char list[CTL_SHARDS_LISTED * 12 + 8];
		size_t len = 0, shown = 0;
		uint32_t s;

		list[0] = '\0';
		for (s = 0; s < v.config.shards && shown < CTL_SHARDS_LISTED;
		     s++) {
			int w;

			if (!v.shards[s].present ||
			    !mp_shard_rec_has_replica(&v.shards[s].rec, id))
				continue;
			w = snprintf(list + len, sizeof list - len, "%s%u",
				     shown > 0 ? "," : "", s);
			if (w < 0 || (size_t)w >= sizeof list - len)
				break;
			len += (size_t)w;
			shown++;
		}
		ctl_err(c, "refusing: node %s still holds %u shard replicas "
			"(shards %s%s); drain it first ('merpatictl node drain "
			"%s') and wait until 'merpatictl cluster status' shows "
			"holds=0", id, n->holds, list,
			n->holds > shown ? ",..." : "", id);
		cs_view_free(&v);
		return CTL_EXIT_ERROR;
	}
	if (v.bad > 0) {
		/* An unreadable shard record might name this node. */
		cs_view_free(&v);
		ctl_err(c, "refusing: invalid records in etcd, cannot tell "
			"whether %s still holds shards", id);
		return CTL_EXIT_ERROR;
	}
	was_live = n->live;
	cs_view_free(&v);

	/* The node record first: with drain/ gone first, the controller
	 * could see a live node that takes shards again. */
	snprintf(key, sizeof key, "nodes/%s", id);
	err = mp_etcd_delete(c->etcd, key, NULL);
	if (err != 0)
		return ctl_etcd_failed(c, "deleting the node record", err);
	snprintf(key, sizeof key, "drain/%s", id);
	err = mp_etcd_delete(c->etcd, key, NULL);
	if (err != 0)
		return ctl_etcd_failed(c, "deleting the drain request", err);
	printf("removed node %s from cluster \"%s\"%s\n", id, c->opt.cluster,
	       was_live ? "; it was still registered: stop its process "
	       "(it registers again if etcd ever loses its lease)" : "");
	return CTL_EXIT_OK;
}
