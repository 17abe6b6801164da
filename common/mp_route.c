/*
 * mp_route: the shard map kept current by one etcd watch, and calls to a
 * shard's leader that follow leadership changes (see mp_route.h).
 *
 * Three writers touch the map: the watch thread (events, and full reloads
 * after a compaction or when the config first appears), callers whose call
 * failed (a direct re-read of one shard and its leader's node), and
 * mp_route_refresh. Shard records carry etcd mod_revisions and are only
 * ever replaced by newer ones (mp_shardmap_offer_shard), so a slow direct
 * read never undoes what the watch applied. Node records have no revision
 * in the map; a stale one heals itself, since calling it fails and the
 * failure re-reads it.
 *
 * Never: hold a lock across an etcd or RPC call (except reload_mu, which
 * only orders reloads); sleep past a caller's budget.
 */
#include "mp_route.h"

#include "mp_error.h"
#include "mp_etcd.h"
#include "mp_log.h"
#include "mp_rpc.h"
#include "mp_shard.h"
#include "mp_shardmap.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 1000
/* Retries without sleeping after a refresh that found a new leader: enough
 * for a failover, bounded so two flapping records cannot spin us. */
#define IMMEDIATE_RETRIES 3

struct route_chan {
	char addr[MP_ADDR_MAX + 1];
	struct mp_rpc_channel *ch;   /* owned */
};

struct mp_route {
	struct mp_etcd *e;            /* borrowed */
	struct mp_route_opts o;
	struct mp_shardmap map;
	struct mp_etcd_watch *watch;  /* owned */

	/* Channels live until close: a route talks to a handful of nodes. */
	pthread_mutex_t chan_mu;
	struct route_chan *chans;     /* owned, under chan_mu */
	size_t n_chans, cap_chans;

	pthread_mutex_t reload_mu;    /* one full reload at a time */

	pthread_mutex_t rev_mu;
	pthread_cond_t rev_cond;
	int64_t rev_seen;             /* under rev_mu: the map reflects it */
	bool need_reload;             /* under rev_mu: a reload failed */
};

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int64_t ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static void set_need_reload(struct mp_route *r, bool v)
{
	pthread_mutex_lock(&r->rev_mu);
	r->need_reload = v;
	pthread_mutex_unlock(&r->rev_mu);
}

static bool get_need_reload(struct mp_route *r)
{
	pthread_mutex_lock(&r->rev_mu);
	bool v = r->need_reload;
	pthread_mutex_unlock(&r->rev_mu);
	return v;
}

static void note_rev(struct mp_route *r, int64_t rev)
{
	pthread_mutex_lock(&r->map.mu);
	if (rev > r->map.revision)
		r->map.revision = rev;
	pthread_mutex_unlock(&r->map.mu);
	pthread_mutex_lock(&r->rev_mu);
	if (rev > r->rev_seen) {
		r->rev_seen = rev;
		pthread_cond_broadcast(&r->rev_cond);
	}
	pthread_mutex_unlock(&r->rev_mu);
}

static uint32_t map_nshards(struct mp_route *r)
{
	pthread_mutex_lock(&r->map.mu);
	uint32_t n = r->map.config.shards;
	pthread_mutex_unlock(&r->map.mu);
	return n;
}

static void log_bad(const char *key, const char *why)
{
	char q[128];

	mp_log_warn("route_bad_record", "key=%s err=\"%s\"",
		    mp_log_quote(q, sizeof(q), key, strlen(key)), why);
}

/* ------------------------------------------------ applying records */

/* A config value. 1 when this is the first config the map has seen (the
 * caller must then load shards/, which could not be placed before). */
static int apply_config(struct mp_route *r, const struct mp_etcd_kv *kv)
{
	struct mp_cluster_config c;
	const char *why = NULL;
	bool first = map_nshards(r) == 0;

	if (mp_config_rec_parse((const char *)kv->value, kv->vlen, &c, &why) < 0) {
		log_bad(kv->key, why);
		return 0;
	}
	if (mp_shardmap_set_config(&r->map, &c) < 0) {
		/* The shard count never changes; someone wrote nonsense. */
		log_bad(kv->key, "shard count differs from the one in use");
		return 0;
	}
	return first ? 1 : 0;
}

static const char *node_id_of(const char *key)
{
	if (strncmp(key, "nodes/", 6) != 0 || !mp_node_id_valid(key + 6))
		return NULL;
	return key + 6;
}

static void apply_node(struct mp_route *r, const char *id,
		       const struct mp_etcd_kv *kv)
{
	struct mp_node_rec n;
	const char *why = NULL;

	if (mp_node_rec_parse((const char *)kv->value, kv->vlen, &n, &why) < 0 ||
	    mp_shardmap_set_node(&r->map, id, &n) < 0) {
		/* An unreadable record names no usable node. */
		log_bad(kv->key, why != NULL ? why : "cannot store node");
		mp_shardmap_del_node(&r->map, id);
	}
}

static void apply_shard(struct mp_route *r, uint32_t shard,
			const struct mp_etcd_kv *kv)
{
	struct mp_shard_rec s;
	const char *why = NULL;

	if (mp_shard_rec_parse((const char *)kv->value, kv->vlen, &s, &why) < 0) {
		log_bad(kv->key, why);
		/* No leader we could trust: forget the old one too. */
		(void)mp_shardmap_offer_shard(&r->map, shard, NULL, kv->mod_rev);
		return;
	}
	(void)mp_shardmap_offer_shard(&r->map, shard, &s, kv->mod_rev);
}

/* ---------------------------------------------------- full reload */

/* Read config, nodes/ and shards/ and make the map equal to them. *rev_r:
 * the oldest revision read, so a watch from *rev_r + 1 misses nothing. */
static int route_reload(struct mp_route *r, int64_t *rev_r)
{
	struct mp_etcd_kv *kv = NULL, *kvs = NULL;
	size_t n = 0;
	int64_t rev0 = 0, rev = 0;
	int ret;

	pthread_mutex_lock(&r->reload_mu);
	ret = mp_etcd_get(r->e, "config", &kv, &rev0);
	if (ret == 0) {
		(void)apply_config(r, kv);
		mp_etcd_kvs_free(kv, 1);
	} else if (ret != MP_ENOENT) {
		goto out;
	}

	ret = mp_etcd_range(r->e, "nodes/", &kvs, &n, &rev);
	if (ret < 0)
		goto out;
	for (size_t i = 0; i < n; i++) {
		const char *id = node_id_of(kvs[i].key);

		if (id != NULL)
			apply_node(r, id, &kvs[i]);
	}
	/* Nodes the map knows that etcd no longer has. */
	for (;;) {
		char gone[MP_NODE_ID_MAX + 1] = "";

		pthread_mutex_lock(&r->map.mu);
		for (size_t j = 0; j < r->map.n_nodes && gone[0] == '\0'; j++) {
			bool found = false;

			for (size_t i = 0; i < n && !found; i++) {
				const char *id = node_id_of(kvs[i].key);
				found = id != NULL && strcmp(id, r->map.nodes[j].id) == 0;
			}
			if (!found)
				memcpy(gone, r->map.nodes[j].id, sizeof(gone));
		}
		pthread_mutex_unlock(&r->map.mu);
		if (gone[0] == '\0')
			break;
		mp_shardmap_del_node(&r->map, gone);
	}
	mp_etcd_kvs_free(kvs, n);
	kvs = NULL;
	n = 0;

	uint32_t nshards = map_nshards(r);
	if (nshards > 0) {
		ret = mp_etcd_range(r->e, "shards/", &kvs, &n, &rev);
		if (ret < 0)
			goto out;
		uint8_t *present = calloc(nshards, 1);
		if (present == NULL) {
			ret = MP_ENOMEM;
			goto out;
		}
		for (size_t i = 0; i < n; i++) {
			uint32_t shard;

			if (mp_shard_key_parse(kvs[i].key, nshards, &shard) < 0) {
				log_bad(kvs[i].key, "not a shard key of this cluster");
				continue;
			}
			present[shard] = 1;
			apply_shard(r, shard, &kvs[i]);
		}
		for (uint32_t s = 0; s < nshards; s++)
			if (!present[s])
				(void)mp_shardmap_offer_shard(&r->map, s, NULL, rev);
		free(present);
	}
	if (rev_r != NULL)
		*rev_r = rev0;
	ret = 0;
out:
	mp_etcd_kvs_free(kvs, n);
	pthread_mutex_unlock(&r->reload_mu);
	if (ret == 0)
		note_rev(r, rev0);
	return ret;
}

/* From the watch thread or a caller: on failure, the next event or the
 * next failed call tries again. */
static void reload_or_flag(struct mp_route *r, const char *why)
{
	int ret = route_reload(r, NULL);

	set_need_reload(r, ret < 0);
	if (ret < 0)
		mp_log_warn("route_reload_failed", "why=%s err=%s", why,
			    mp_strerror(ret));
	else
		mp_log_debug("route_reloaded", "why=%s", why);
}

/* ------------------------------------------------------- the watch */

static void route_on_watch(const struct mp_etcd_event *ev, size_t n, int64_t rev,
			   int resync, void *arg)
{
	struct mp_route *r = arg;
	bool reload = resync != 0 || get_need_reload(r);

	for (size_t i = 0; i < n; i++) {
		const struct mp_etcd_kv *kv = &ev[i].kv;
		const char *id;
		uint32_t shard;

		if (strcmp(kv->key, "config") == 0) {
			if (ev[i].type == MP_ETCD_PUT && apply_config(r, kv) == 1)
				reload = true;
			else if (ev[i].type == MP_ETCD_DELETE)
				log_bad(kv->key, "config deleted; keeping the one in use");
		} else if ((id = node_id_of(kv->key)) != NULL) {
			if (ev[i].type == MP_ETCD_PUT)
				apply_node(r, id, kv);
			else
				mp_shardmap_del_node(&r->map, id);
		} else if (strncmp(kv->key, "shards/", 7) == 0) {
			uint32_t nshards = map_nshards(r);

			if (nshards == 0)
				continue; /* placed by the reload the config triggers */
			if (mp_shard_key_parse(kv->key, nshards, &shard) < 0) {
				log_bad(kv->key, "not a shard key of this cluster");
				continue;
			}
			if (ev[i].type == MP_ETCD_PUT)
				apply_shard(r, shard, kv);
			else
				(void)mp_shardmap_offer_shard(&r->map, shard, NULL,
							      kv->mod_rev);
		}
		/* Anything else (controller, domains/, ...) is not routing. */
	}
	if (reload)
		reload_or_flag(r, resync ? "resync" : "watch");
	note_rev(r, rev);
}

/* ------------------------------------------------------- channels */

static int route_channel(struct mp_route *r, const char *addr,
			 struct mp_rpc_channel **ch_r)
{
	int ret = 0;

	pthread_mutex_lock(&r->chan_mu);
	for (size_t i = 0; i < r->n_chans; i++) {
		if (strcmp(r->chans[i].addr, addr) == 0) {
			*ch_r = r->chans[i].ch;
			pthread_mutex_unlock(&r->chan_mu);
			return 0;
		}
	}
	if (strlen(addr) > MP_ADDR_MAX) {
		ret = MP_EINVAL;
	} else if (r->n_chans == r->cap_chans) {
		size_t cap = r->cap_chans == 0 ? 8 : r->cap_chans * 2;
		struct route_chan *c = realloc(r->chans, cap * sizeof(*c));

		if (c == NULL) {
			ret = MP_ENOMEM;
		} else {
			r->chans = c;
			r->cap_chans = cap;
		}
	}
	if (ret == 0) {
		struct route_chan *c = &r->chans[r->n_chans];

		/* Opening a channel does not connect: cheap under the lock. */
		ret = mp_rpc_channel_open(addr, r->o.max_msg, &c->ch);
		if (ret == 0) {
			snprintf(c->addr, sizeof(c->addr), "%s", addr);
			r->n_chans++;
			*ch_r = c->ch;
		}
	}
	pthread_mutex_unlock(&r->chan_mu);
	return ret;
}

/* ----------------------------------------------------- open, close */

int mp_route_open(struct mp_etcd *e, const struct mp_route_opts *o,
		  struct mp_route **r_r, char **error_r)
{
	struct mp_route *r;
	int64_t rev = 0;
	int ret;

	*r_r = NULL;
	if (error_r != NULL)
		*error_r = NULL;
	if (e == NULL)
		return MP_EINVAL;
	r = calloc(1, sizeof(*r));
	if (r == NULL)
		return MP_ENOMEM;
	r->e = e;
	if (o != NULL)
		r->o = *o;
	if (r->o.timeout_ms <= 0)
		r->o.timeout_ms = MP_ROUTE_DEFAULT_TIMEOUT_MS;
	if (r->o.attempt_timeout_ms <= 0)
		r->o.attempt_timeout_ms = MP_ROUTE_ATTEMPT_TIMEOUT_MS;
	if (r->o.max_msg == 0)
		r->o.max_msg = MP_RPC_DEFAULT_MAX_MSG;
	mp_shardmap_init(&r->map);
	pthread_mutex_init(&r->chan_mu, NULL);
	pthread_mutex_init(&r->reload_mu, NULL);
	pthread_mutex_init(&r->rev_mu, NULL);
	pthread_cond_init(&r->rev_cond, NULL);

	ret = route_reload(r, &rev);
	if (ret < 0) {
		if (error_r != NULL &&
		    asprintf(error_r, "cannot read the cluster from etcd: %s",
			     mp_strerror(ret)) < 0)
			*error_r = NULL;
		mp_route_close(&r);
		return ret;
	}
	/* From the oldest revision read + 1: events already reflected are
	 * applied again, which is harmless; none is missed. */
	ret = mp_etcd_watch_start(e, "", rev + 1, route_on_watch, r, &r->watch);
	if (ret < 0) {
		if (error_r != NULL &&
		    asprintf(error_r, "cannot watch the cluster in etcd: %s",
			     mp_strerror(ret)) < 0)
			*error_r = NULL;
		mp_route_close(&r);
		return ret;
	}
	*r_r = r;
	return 0;
}

void mp_route_close(struct mp_route **rp)
{
	struct mp_route *r = rp != NULL ? *rp : NULL;

	if (r == NULL)
		return;
	*rp = NULL;
	/* First: the watch thread uses everything below. */
	mp_etcd_watch_stop(&r->watch);
	for (size_t i = 0; i < r->n_chans; i++)
		mp_rpc_channel_close(&r->chans[i].ch);
	free(r->chans);
	mp_shardmap_free(&r->map);
	pthread_mutex_destroy(&r->chan_mu);
	pthread_mutex_destroy(&r->reload_mu);
	pthread_mutex_destroy(&r->rev_mu);
	pthread_cond_destroy(&r->rev_cond);
	free(r);
}

struct mp_shardmap *mp_route_map(struct mp_route *r)
{
	return &r->map;
}

int mp_route_refresh(struct mp_route *r)
{
	int ret = route_reload(r, NULL);

	set_need_reload(r, ret < 0);
	return ret;
}

int mp_route_wait_rev(struct mp_route *r, int64_t rev, int64_t timeout_ms)
{
	struct timespec ts;
	int ret = 0;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += timeout_ms / 1000;
	ts.tv_nsec += (timeout_ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&r->rev_mu);
	while (r->rev_seen < rev && ret == 0)
		if (pthread_cond_timedwait(&r->rev_cond, &r->rev_mu, &ts) == ETIMEDOUT)
			ret = r->rev_seen < rev ? MP_ETIMEDOUT : 0;
	pthread_mutex_unlock(&r->rev_mu);
	return ret;
}

int mp_route_shard_of(struct mp_route *r, const char *user, uint32_t *shard_r,
		      const char **error_r)
{
	char norm[MP_USER_MAX + 1];
	int ret;

	if (user == NULL) {
		if (error_r != NULL)
			*error_r = "no user";
		return MP_EINVAL;
	}
	/* strnlen: one past the limit is enough to refuse it. */
	ret = mp_user_normalize(user, strnlen(user, MP_USER_MAX + 1), norm,
				sizeof(norm), error_r);
	if (ret < 0)
		return ret;
	uint32_t n = map_nshards(r);
	if (n == 0) {
		if (error_r != NULL)
			*error_r = "the cluster's shard count is not known yet";
		return MP_EUNAVAIL;
	}
	*shard_r = mp_shard_of(norm, strlen(norm), n);
	return 0;
}

/* ------------------------------------------------------- the calls */

/* Re-read one shard's record and its leader's node record from etcd. */
static void refresh_shard(struct mp_route *r, uint32_t shard)
{
	struct mp_etcd_kv *kv = NULL;
	struct mp_shard_rec s;
	char key[sizeof("nodes/") + MP_NODE_ID_MAX];
	int64_t rev = 0;
	int ret;

	if (get_need_reload(r) || map_nshards(r) == 0) {
		reload_or_flag(r, "call");
		return;
	}
	snprintf(key, sizeof(key), "shards/%u", shard);
	ret = mp_etcd_get(r->e, key, &kv, &rev);
	if (ret == 0) {
		apply_shard(r, shard, kv);
		mp_etcd_kvs_free(kv, 1);
	} else if (ret == MP_ENOENT && rev > 0) {
		(void)mp_shardmap_offer_shard(&r->map, shard, NULL, rev);
	} else {
		return; /* etcd trouble: the map stays as it is */
	}
	if (mp_shardmap_get_shard(&r->map, shard, &s, NULL) < 0)
		return;
	snprintf(key, sizeof(key), "nodes/%s", s.leader);
	kv = NULL;
	ret = mp_etcd_get(r->e, key, &kv, NULL);
	if (ret == 0) {
		apply_node(r, s.leader, kv);
		mp_etcd_kvs_free(kv, 1);
	} else if (ret == MP_ENOENT) {
		mp_shardmap_del_node(&r->map, s.leader);
	}
}

static bool retryable(int err, int64_t attempt_ms, int64_t left_ms)
{
	if (err == MP_ENOTLEADER || err == MP_EUNAVAIL)
		return true;
	/* Cut short by our per-attempt cap, not by the caller's budget: a
	 * paused or dying leader; the shard may have moved meanwhile. */
	return err == MP_ETIMEDOUT && attempt_ms < left_ms;
}

/* A write that is retried after a lost answer must be applied once: give
 * a request without a request_id one, the same for every attempt of this
 * call (the leader remembers the answer per id, replicated with the write).
 * The caller's message is not touched: a shallow copy carries the id. */
static const ProtobufCMessage *with_request_id(const ProtobufCMessage *req, void **copy_r,
					       char *id, size_t idlen)
{
	const ProtobufCFieldDescriptor *f =
		protobuf_c_message_descriptor_get_field_by_name(req->descriptor, "request_id");
	*copy_r = NULL;
	if (f == NULL || f->type != PROTOBUF_C_TYPE_STRING)
		return req;
	const char *cur = *(const char *const *)((const char *)req + f->offset);
	if (cur != NULL && *cur != '\0')
		return req;
	unsigned char rnd[16];
	FILE *fp = fopen("/dev/urandom", "rb");
	size_t got = fp ? fread(rnd, 1, sizeof(rnd), fp) : 0;
	if (fp)
		fclose(fp);
	if (got != sizeof(rnd))
		return req;   /* no id: the write is still correct, only not deduplicated */
	for (size_t i = 0; i < sizeof(rnd) && 2 * i + 2 < idlen; i++)
		snprintf(id + 2 * i, 3, "%02x", rnd[i]);
	void *copy = malloc(req->descriptor->sizeof_message);
	if (copy == NULL)
		return req;
	memcpy(copy, req, req->descriptor->sizeof_message);
	*(char **)((char *)copy + f->offset) = id;
	*copy_r = copy;
	return copy;
}

static int route_call(struct mp_route *r, uint32_t shard, const char *path,
		      const ProtobufCMessage *req,
		      const ProtobufCMessageDescriptor *resp_desc, int64_t timeout_ms,
		      ProtobufCMessage **resp_r, char **error_r);

int mp_route_call(struct mp_route *r, uint32_t shard, const char *path,
		  const ProtobufCMessage *req,
		  const ProtobufCMessageDescriptor *resp_desc, int64_t timeout_ms,
		  ProtobufCMessage **resp_r, char **error_r)
{
	char id[40];
	void *copy;
	const ProtobufCMessage *q = with_request_id(req, &copy, id, sizeof(id));
	int ret = route_call(r, shard, path, q, resp_desc, timeout_ms, resp_r, error_r);
	free(copy);
	return ret;
}

static int route_call(struct mp_route *r, uint32_t shard, const char *path,
		      const ProtobufCMessage *req,
		      const ProtobufCMessageDescriptor *resp_desc, int64_t timeout_ms,
		      ProtobufCMessage **resp_r, char **error_r)
{
	int64_t budget = timeout_ms > 0 ? timeout_ms : r->o.timeout_ms;
	int64_t deadline = now_ms() + budget, backoff = BACKOFF_MIN_MS;
	char *msg = NULL;
	int last = MP_EUNAVAIL, immediate = 0, attempts = 0;

	*resp_r = NULL;
	if (error_r != NULL)
		*error_r = NULL;
	uint32_t nshards = map_nshards(r);
	if (nshards != 0 && shard >= nshards) {
		if (error_r != NULL &&
		    asprintf(error_r, "shard %u is beyond the shard count %u",
			     shard, nshards) < 0)
			*error_r = NULL;
		return MP_EINVAL;
	}
	for (;;) {
		char id[MP_NODE_ID_MAX + 1], addr[MP_ADDR_MAX + 1];
		char id2[MP_NODE_ID_MAX + 1], addr2[MP_ADDR_MAX + 1];
		uint64_t epoch = 0, epoch2 = 0;
		int64_t left = deadline - now_ms();
		int ret;

		if (left <= 0)
			break;
		ret = mp_shardmap_leader(&r->map, shard, id, addr, &epoch);
		if (ret == 0) {
			struct mp_rpc_channel *ch;
			int64_t attempt = left < r->o.attempt_timeout_ms
					  ? left : r->o.attempt_timeout_ms;

			ret = route_channel(r, addr, &ch);
			if (ret < 0) {
				free(msg);
				return ret;
			}
			free(msg);
			msg = NULL;
			attempts++;
			ret = mp_rpc_call(ch, path, req, resp_desc, attempt, resp_r, &msg);
			if (ret == 0) {
				free(msg);
				return 0;
			}
			if (!retryable(ret, attempt, left)) {
				if (error_r != NULL)
					*error_r = msg;
				else
					free(msg);
				return ret;
			}
			last = ret;
			mp_log_debug("route_retry", "shard=%u leader=%s epoch=%llu err=%s",
				     shard, id, (unsigned long long)epoch,
				     mp_strerror(ret));
		} else {
			id[0] = addr[0] = '\0';
			last = MP_ENOENT;
			free(msg); /* an older attempt's words no longer apply */
			msg = NULL;
		}

		refresh_shard(r, shard);
		/* A different leader after the re-read: try it at once. */
		if (mp_shardmap_leader(&r->map, shard, id2, addr2, &epoch2) == 0 &&
		    (strcmp(id, id2) != 0 || strcmp(addr, addr2) != 0 ||
		     epoch != epoch2) &&
		    immediate < IMMEDIATE_RETRIES) {
			immediate++;
			continue;
		}
		left = deadline - now_ms();
		if (left <= 0)
			break;
		sleep_ms(backoff < left ? backoff : left);
		backoff = backoff * 2 < BACKOFF_MAX_MS ? backoff * 2 : BACKOFF_MAX_MS;
	}

	/* Budget spent on failures that did nothing, unless the last attempt
	 * itself ran out of time (its outcome unknown). */
	int err = last == MP_ETIMEDOUT ? MP_ETIMEDOUT : MP_EUNAVAIL;
	if (error_r != NULL) {
		const char *what = last == MP_ENOENT ? "no leader known"
				   : mp_strerror(last);
		if (asprintf(error_r, "shard %u: no answer within %lld ms after %d attempts (last: %s%s%s)",
			     shard, (long long)budget, attempts, what,
			     msg != NULL ? ": " : "", msg != NULL ? msg : "") < 0)
			*error_r = NULL;
	}
	free(msg);
	return err;
}

int mp_route_leader_channel(struct mp_route *r, uint32_t shard,
			    struct mp_rpc_channel **ch_r)
{
	char addr[MP_ADDR_MAX + 1];
	uint32_t nshards = map_nshards(r);
	int ret;

	*ch_r = NULL;
	if (nshards != 0 && shard >= nshards)
		return MP_EINVAL;
	ret = mp_shardmap_leader(&r->map, shard, NULL, addr, NULL);
	if (ret < 0)
		return ret;
	return route_channel(r, addr, ch_r);
}

int mp_route_call_node(struct mp_route *r, const char *addr, const char *path,
		       const ProtobufCMessage *req,
		       const ProtobufCMessageDescriptor *resp_desc,
		       int64_t timeout_ms, ProtobufCMessage **resp_r,
		       char **error_r)
{
	struct mp_rpc_channel *ch;
	int ret;

	*resp_r = NULL;
	if (error_r != NULL)
		*error_r = NULL;
	if (addr == NULL)
		return MP_EINVAL;
	ret = route_channel(r, addr, &ch);
	if (ret < 0)
		return ret;
	return mp_rpc_call(ch, path, req, resp_desc,
			   timeout_ms > 0 ? timeout_ms : r->o.timeout_ms, resp_r,
			   error_r);
}
