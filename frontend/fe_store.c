/*
 * fe_store: the frontend's blocking calls into the storage cluster (see
 * fe_store.h). Runs on worker threads only.
 *
 * Never: answer "not local" for a domain because etcd or a node was
 * unreachable (that is MP_EUNAVAIL: a temporary SMTP failure, never a
 * permanent refusal); keep a password hash after the call returns.
 */
#include "fe_store.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "imap_mime.h"
#include "mailstore.pb-c.h"
#include "mp_buf.h"
#include "mp_error.h"
#include "mp_route.h"
#include "mp_shard.h"
#include "mp_shardmap.h"

#define DOMAIN_BUCKETS 256
#define DOMAIN_CACHE_MAX 10000
#define PATH(m) "/merpati.v1.MailStore/" m

struct dom_entry {
	struct dom_entry *next;
	int64_t expires_ms;
	bool local;
	char name[];
};

struct fe_store {
	struct mp_route *route;  /* borrowed */
	struct fe_store_conf conf;
	pthread_mutex_t mu;      /* guards the domain cache */
	struct dom_entry *dom[DOMAIN_BUCKETS];
	size_t ndom;
};

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static size_t dom_hash(const char *s)
{
	uint64_t h = 1469598103934665603ull;
	for (; *s != '\0'; s++)
		h = (h ^ (uint8_t)*s) * 1099511628211ull;
	return (size_t)(h % DOMAIN_BUCKETS);
}

static void dom_clear(struct fe_store *s)
{
	for (size_t b = 0; b < DOMAIN_BUCKETS; b++) {
		while (s->dom[b] != NULL) {
			struct dom_entry *e = s->dom[b];
			s->dom[b] = e->next;
			free(e);
		}
	}
	s->ndom = 0;
}

int fe_store_open(struct mp_route *route, const struct fe_store_conf *conf,
		  struct fe_store **s_r)
{
	struct fe_store *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return MP_ENOMEM;
	s->route = route;
	if (conf != NULL)
		s->conf = *conf;
	if (s->conf.domain_ttl_ms == 0)
		s->conf.domain_ttl_ms = 60000;
	if (s->conf.domain_neg_ttl_ms == 0)
		s->conf.domain_neg_ttl_ms = 10000;
	pthread_mutex_init(&s->mu, NULL);
	*s_r = s;
	return 0;
}

void fe_store_free(struct fe_store **sp)
{
	struct fe_store *s = *sp;
	if (s == NULL)
		return;
	*sp = NULL;
	dom_clear(s);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

static int call(struct fe_store *s, uint32_t shard, const char *path,
		const ProtobufCMessage *req, const ProtobufCMessageDescriptor *rd,
		ProtobufCMessage **resp_r, char **error_r)
{
	return mp_route_call(s->route, shard, path, req, rd, s->conf.call_timeout_ms,
			     resp_r, error_r);
}

int fe_store_domain_is_local(struct fe_store *s, const char *domain,
			     bool *local_r, char **error_r)
{
	size_t b = dom_hash(domain);
	int64_t now = now_ms();
	pthread_mutex_lock(&s->mu);
	for (struct dom_entry *e = s->dom[b]; e != NULL; e = e->next) {
		if (strcmp(e->name, domain) == 0 && e->expires_ms > now) {
			*local_r = e->local;
			pthread_mutex_unlock(&s->mu);
			return 0;
		}
	}
	pthread_mutex_unlock(&s->mu);

	/* Domains live on shard 0 (docs/DESIGN.md). */
	Merpati__V1__DomainRequest q = MERPATI__V1__DOMAIN_REQUEST__INIT;
	q.name = (char *)domain;
	ProtobufCMessage *resp = NULL;
	int ret = call(s, 0, PATH("GetDomain"), &q.base,
		       &merpati__v1__domain_reply__descriptor, &resp, error_r);
	bool local;
	if (ret == 0) {
		local = true;
		protobuf_c_message_free_unpacked(resp, NULL);
	} else if (ret == MP_ENOENT || ret == MP_EINVAL) {
		local = false;  /* no such domain, or not a domain at all */
		free(*error_r);
		*error_r = NULL;
	} else {
		return ret;
	}

	size_t nlen = strlen(domain);
	struct dom_entry *e = malloc(sizeof(*e) + nlen + 1);
	if (e != NULL) {
		memcpy(e->name, domain, nlen + 1);
		e->local = local;
		e->expires_ms = now + (int64_t)(local ? s->conf.domain_ttl_ms
						      : s->conf.domain_neg_ttl_ms);
		pthread_mutex_lock(&s->mu);
		if (s->ndom >= DOMAIN_CACHE_MAX)
			dom_clear(s);  /* crude but bounded; lookups refill it */
		/* Drop a stale entry of the same name first. */
		struct dom_entry **pp = &s->dom[b];
		while (*pp != NULL) {
			if (strcmp((*pp)->name, domain) == 0) {
				struct dom_entry *old = *pp;
				*pp = old->next;
				free(old);
				s->ndom--;
			} else {
				pp = &(*pp)->next;
			}
		}
		e->next = s->dom[b];
		s->dom[b] = e;
		s->ndom++;
		pthread_mutex_unlock(&s->mu);
	}
	*local_r = local;
	return 0;
}

void fe_rcpt_info_clear(struct fe_rcpt_info *i)
{
	for (size_t k = 0; k < i->ntargets; k++)
		free(i->targets[k]);
	free(i->targets);
	memset(i, 0, sizeof(*i));
}

int fe_store_shard_of(struct fe_store *s, const char *user, uint32_t *shard_r)
{
	const char *err = NULL;
	return mp_route_shard_of(s->route, user, shard_r, &err);
}

int fe_store_resolve(struct fe_store *s, const char *user,
		     struct fe_rcpt_info *info_r, char **error_r)
{
	uint32_t shard = 0;
	memset(info_r, 0, sizeof(*info_r));
	int ret = fe_store_shard_of(s, user, &shard);
	if (ret < 0)
		return ret;
	Merpati__V1__UserRequest q = MERPATI__V1__USER_REQUEST__INIT;
	q.user = (char *)user;
	ProtobufCMessage *resp = NULL;
	ret = call(s, shard, PATH("ResolveRecipient"), &q.base,
		   &merpati__v1__resolve_reply__descriptor, &resp, error_r);
	if (ret == MP_ENOENT) {  /* e.g. the domain went away meanwhile */
		free(*error_r);
		*error_r = NULL;
		info_r->kind = FE_RCPT_NONE;
		return 0;
	}
	if (ret < 0)
		return ret;
	Merpati__V1__ResolveReply *r = (Merpati__V1__ResolveReply *)resp;
	switch (r->kind) {
	case MERPATI__V1__RESOLVE_KIND__RESOLVE_ACCOUNT:
		info_r->kind = r->state == MERPATI__V1__ACCOUNT_STATE__ACCOUNT_ACTIVE
				       ? FE_RCPT_ACCOUNT
				       : FE_RCPT_DISABLED;
		break;
	case MERPATI__V1__RESOLVE_KIND__RESOLVE_ALIAS:
		info_r->kind = FE_RCPT_ALIAS;
		info_r->targets = calloc(r->n_targets + 1, sizeof(char *));
		if (info_r->targets == NULL) {
			ret = MP_ENOMEM;
			break;
		}
		for (size_t k = 0; k < r->n_targets; k++) {
			info_r->targets[k] = strdup(r->targets[k]);
			if (info_r->targets[k] == NULL) {
				ret = MP_ENOMEM;
				break;
			}
			info_r->ntargets++;
		}
		break;
	default:
		info_r->kind = FE_RCPT_NONE;
		break;
	}
	protobuf_c_message_free_unpacked(resp, NULL);
	if (ret < 0)
		fe_rcpt_info_clear(info_r);
	return ret;
}

int fe_store_get_auth(struct fe_store *s, const char *user, char **hash_r,
		      char **scram_r, bool *active_r, char **error_r)
{
	uint32_t shard = 0;
	*hash_r = *scram_r = NULL;
	int ret = fe_store_shard_of(s, user, &shard);
	if (ret < 0)
		return ret;
	Merpati__V1__UserRequest q = MERPATI__V1__USER_REQUEST__INIT;
	q.user = (char *)user;
	ProtobufCMessage *resp = NULL;
	ret = call(s, shard, PATH("GetAccount"), &q.base,
		   &merpati__v1__account_reply__descriptor, &resp, error_r);
	if (ret < 0)
		return ret;
	Merpati__V1__AccountReply *r = (Merpati__V1__AccountReply *)resp;
	if (r->account == NULL) {
		protobuf_c_message_free_unpacked(resp, NULL);
		return MP_ENOENT;
	}
	*hash_r = strdup(r->account->password_hash != NULL ? r->account->password_hash : "");
	*scram_r = strdup(r->account->scram_sha256 != NULL ? r->account->scram_sha256 : "");
	*active_r = r->account->state == MERPATI__V1__ACCOUNT_STATE__ACCOUNT_ACTIVE;
	if (r->account->password_hash != NULL)
		mp_memwipe(r->account->password_hash, strlen(r->account->password_hash));
	protobuf_c_message_free_unpacked(resp, NULL);
	if (*hash_r == NULL || *scram_r == NULL) {
		free(*hash_r);
		free(*scram_r);
		*hash_r = *scram_r = NULL;
		return MP_ENOMEM;
	}
	return 0;
}

int fe_msg_meta_make(const void *body, size_t len, struct fe_msg_meta *m)
{
	memset(m, 0, sizeof(*m));
	struct imap_mime *mime = NULL;
	struct mp_buf env;
	mp_buf_init(&env, 0);
	int ret = imap_mime_parse(body, len, NULL, &mime);
	if (ret == 0)
		ret = imap_mime_envelope(mime, &env);
	if (ret == 0)
		ret = imap_mime_pack(mime, &m->bodystructure, &m->bodystructure_len);
	imap_mime_free(&mime);
	if (ret < 0) {
		mp_buf_free(&env);
		fe_msg_meta_clear(m);
		return ret;
	}
	m->envelope = mp_buf_steal(&env, &m->envelope_len);
	mp_buf_free(&env);
	return 0;
}

void fe_msg_meta_clear(struct fe_msg_meta *m)
{
	free(m->envelope);
	free(m->bodystructure);
	memset(m, 0, sizeof(*m));
}

int fe_store_append_many(struct fe_store *s, uint32_t shard,
			 const char *const *users, size_t n, const char *mailbox,
			 const void *body, size_t len, const struct fe_msg_meta *meta,
			 int *results, char **error_r)
{
	Merpati__V1__Delivery *dv = calloc(n, sizeof(*dv));
	Merpati__V1__Delivery **dp = calloc(n, sizeof(*dp));
	if (dv == NULL || dp == NULL) {
		free(dv);
		free(dp);
		return MP_ENOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		Merpati__V1__Delivery init = MERPATI__V1__DELIVERY__INIT;
		dv[i] = init;
		dv[i].user = (char *)users[i];
		dv[i].mailbox = (char *)(mailbox != NULL ? mailbox : "");
		dp[i] = &dv[i];
		results[i] = MP_EIO;
	}
	Merpati__V1__AppendManyRequest q = MERPATI__V1__APPEND_MANY_REQUEST__INIT;
	q.n_deliveries = n;
	q.deliveries = dp;
	q.body.data = (uint8_t *)body;
	q.body.len = len;
	if (meta != NULL) {
		q.envelope.data = (uint8_t *)meta->envelope;
		q.envelope.len = meta->envelope_len;
		q.bodystructure.data = meta->bodystructure;
		q.bodystructure.len = meta->bodystructure_len;
	}
	ProtobufCMessage *resp = NULL;
	int ret = call(s, shard, PATH("AppendMany"), &q.base,
		       &merpati__v1__append_many_reply__descriptor, &resp, error_r);
	free(dv);
	free(dp);
	if (ret < 0)
		return ret;
	Merpati__V1__AppendManyReply *r = (Merpati__V1__AppendManyReply *)resp;
	for (size_t i = 0; i < n && i < r->n_results; i++)
		results[i] = r->results[i]->code == 0
				     ? 0
				     : mp_err_from_grpc((int)r->results[i]->code);
	protobuf_c_message_free_unpacked(resp, NULL);
	return 0;
}

int fe_store_queue_add(struct fe_store *s, uint32_t shard,
		       const struct Merpati__V1__QueueEntry *entry,
		       const void *body, size_t len, char **id_r,
		       char **error_r)
{
	Merpati__V1__QueueAddRequest q = MERPATI__V1__QUEUE_ADD_REQUEST__INIT;
	q.shard = shard;
	q.entry = (Merpati__V1__QueueEntry *)entry;
	q.body.data = (uint8_t *)body;
	q.body.len = len;
	ProtobufCMessage *resp = NULL;
	*id_r = NULL;
	int ret = call(s, shard, PATH("QueueAdd"), &q.base,
		       &merpati__v1__queue_add_reply__descriptor, &resp, error_r);
	if (ret < 0)
		return ret;
	Merpati__V1__QueueAddReply *r = (Merpati__V1__QueueAddReply *)resp;
	*id_r = strdup(r->id != NULL ? r->id : "");
	protobuf_c_message_free_unpacked(resp, NULL);
	return *id_r != NULL ? 0 : MP_ENOMEM;
}

uint32_t fe_store_shard_count(struct fe_store *s)
{
	struct mp_shardmap *m = mp_route_map(s->route);
	pthread_mutex_lock(&m->mu);
	uint32_t n = m->config.shards;
	pthread_mutex_unlock(&m->mu);
	return n;
}

int fe_store_call(struct fe_store *s, uint32_t shard, const char *path,
		  const ProtobufCMessage *req,
		  const ProtobufCMessageDescriptor *resp_desc,
		  ProtobufCMessage **resp_r, char **error_r)
{
	return call(s, shard, path, req, resp_desc, resp_r, error_r);
}
