/*
 * mp_etcd: our etcd v3 client (see mp_etcd.h for the contract). Unary KV and
 * Lease calls go through mp_rpc_call; LeaseKeepAlive and Watch are bidi
 * streams in etcd, of which we only need "send one request, half-close,
 * read": mp_rpc_stream_open does exactly that. A keep-alive reads one answer
 * and cancels; a watch reads until it is stopped or the stream fails, and is
 * then cancelled (etcd does not end a watch stream on half-close).
 *
 * Endpoints: one mp_rpc_channel per endpoint, opened on first use and kept
 * until mp_etcd_close. Every call starts on the endpoint that last worked
 * and moves to the next on UNAVAILABLE, pausing after each full round, until
 * its deadline.
 *
 * Threads: a lease keeper and a watch each own one thread; both sleep on a
 * condition variable so stopping them is prompt, and a watch polls its
 * stream in short waits because mp_rpc_stream_next/close may not be called
 * from two threads at once.
 *
 * Never: block a caller past its deadline; deliver a watch event twice or
 * drop one without telling the callback to resynchronise; return a key with
 * the cluster prefix still on it; log values.
 */
#include "mp_etcd.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "etcd/rpc.pb-c.h"
#include "mp_error.h"
#include "mp_log.h"
#include "mp_rpc.h"

#define ETCD_DEFAULT_TIMEOUT_MS 5000
#define ETCD_MAX_ENDPOINTS 32
/* Pause after every endpoint answered UNAVAILABLE in one round, doubling:
 * a restarting etcd is back within a second or two. */
#define ETCD_RETRY_MIN_MS 50
#define ETCD_RETRY_MAX_MS 500
/* Reconnect backoff of the watch and lease threads. */
#define ETCD_BACKOFF_MIN_MS 100
#define ETCD_BACKOFF_MAX_MS 2000
/* A watch thread looks at its stop flag this often. */
#define ETCD_WATCH_POLL_MS 100
/* Calls made by a keeper thread wait at most this long, so stopping it is
 * prompt even when etcd hangs. */
#define ETCD_KEEPER_CALL_MAX_MS 1000
/* Revoke on stop is best effort: etcd expires the lease anyway. */
#define ETCD_REVOKE_MAX_MS 1000

#define ETCD_PATH_RANGE "/etcdserverpb.KV/Range"
#define ETCD_PATH_PUT "/etcdserverpb.KV/Put"
#define ETCD_PATH_DELETE "/etcdserverpb.KV/DeleteRange"
#define ETCD_PATH_TXN "/etcdserverpb.KV/Txn"
#define ETCD_PATH_GRANT "/etcdserverpb.Lease/LeaseGrant"
#define ETCD_PATH_REVOKE "/etcdserverpb.Lease/LeaseRevoke"
#define ETCD_PATH_KEEPALIVE "/etcdserverpb.Lease/LeaseKeepAlive"
#define ETCD_PATH_WATCH "/etcdserverpb.Watch/Watch"

struct etcd_endpoint {
	char *target;                /* owned: "host:port" */
	struct mp_rpc_channel *ch;   /* owned; opened on first use */
};

/* A stoppable thread: sleeps end early when stop is set. */
struct etcd_thread {
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cond;         /* on CLOCK_MONOTONIC */
	bool stop;                   /* under mu */
	bool running;                /* started and not joined yet */
};

struct mp_etcd {
	char *prefix;                /* owned */
	size_t prefix_len;
	int64_t timeout_ms;
	struct etcd_endpoint *eps;   /* owned array */
	size_t n_eps;
	pthread_mutex_t mu;          /* eps[].ch, cur, leases, watches */
	size_t cur;                  /* the endpoint calls try first */
	struct mp_etcd_lease *leases;   /* borrowed list of running keepers */
	struct mp_etcd_watch *watches;  /* borrowed list of running watches */
};

struct mp_etcd_lease {
	struct mp_etcd *e;           /* borrowed; NULL once mp_etcd_close
				      * stopped this keeper */
	struct mp_etcd_lease *next;  /* in e->leases, under e->mu */
	struct etcd_thread t;
	int64_t req_ttl_s;           /* asked for */
	int64_t ttl_ms;              /* as etcd granted it; keeper thread */
	_Atomic int64_t id;
	mp_etcd_lease_cb on_new;
	void *arg;
};

struct mp_etcd_watch {
	struct mp_etcd *e;           /* borrowed; NULL once detached */
	struct mp_etcd_watch *next;  /* in e->watches, under e->mu */
	struct etcd_thread t;
	ProtobufCBinaryData key;     /* owned: cluster prefix + prefix */
	ProtobufCBinaryData end;     /* owned: range end of key */
	/* Watch thread only: */
	int64_t next_rev;            /* first revision not delivered; 0 = now */
	bool resync;                 /* history was compacted: tell cb when
				      * the watch is re-created */
	mp_etcd_watch_cb cb;
	void *arg;
};

/* ------------------------------------------------------------ helpers */

static int64_t etcd_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void etcd_sleep_ms(int64_t ms)
{
	struct timespec ts;

	if (ms <= 0)
		return;
	ts.tv_sec = ms / 1000;
	ts.tv_nsec = (ms % 1000) * 1000000;
	/* An early wake-up only shortens a pause between retries. */
	(void)nanosleep(&ts, NULL);
}

static int64_t etcd_min64(int64_t a, int64_t b)
{
	return a < b ? a : b;
}

static void etcd_set_error(char **error_r, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void etcd_set_error(char **error_r, const char *fmt, ...)
{
	va_list ap;

	if (error_r == NULL)
		return;
	va_start(ap, fmt);
	if (vasprintf(error_r, fmt, ap) < 0)
		*error_r = NULL;
	va_end(ap);
}

/* ------------------------------------------------------------ threads */

static int etcd_thread_init(struct etcd_thread *t)
{
	pthread_condattr_t ca;

	memset(t, 0, sizeof(*t));
	if (pthread_mutex_init(&t->mu, NULL) != 0)
		return MP_ENOMEM;
	if (pthread_condattr_init(&ca) != 0) {
		pthread_mutex_destroy(&t->mu);
		return MP_ENOMEM;
	}
	if (pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0 ||
	    pthread_cond_init(&t->cond, &ca) != 0) {
		pthread_condattr_destroy(&ca);
		pthread_mutex_destroy(&t->mu);
		return MP_ENOMEM;
	}
	pthread_condattr_destroy(&ca);
	return 0;
}

static void etcd_thread_destroy(struct etcd_thread *t)
{
	pthread_cond_destroy(&t->cond);
	pthread_mutex_destroy(&t->mu);
}

static int etcd_thread_start(struct etcd_thread *t, void *(*fn)(void *),
			     void *arg)
{
	if (pthread_create(&t->thread, NULL, fn, arg) != 0)
		return MP_ENOMEM;
	t->running = true;
	return 0;
}

static bool etcd_thread_stopping(struct etcd_thread *t)
{
	bool stop;

	pthread_mutex_lock(&t->mu);
	stop = t->stop;
	pthread_mutex_unlock(&t->mu);
	return stop;
}

/* Sleeps ms or until told to stop; true when stopping. */
static bool etcd_thread_sleep(struct etcd_thread *t, int64_t ms)
{
	struct timespec ts;
	bool stop;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&t->mu);
	/* Bounded: every turn ends at the same absolute time at the latest. */
	while (!t->stop) {
		if (pthread_cond_timedwait(&t->cond, &t->mu, &ts) != 0)
			break;
	}
	stop = t->stop;
	pthread_mutex_unlock(&t->mu);
	return stop;
}

/* Never from the thread itself: it would join itself. */
static void etcd_thread_stop(struct etcd_thread *t)
{
	pthread_mutex_lock(&t->mu);
	t->stop = true;
	pthread_cond_broadcast(&t->cond);
	pthread_mutex_unlock(&t->mu);
	if (t->running) {
		pthread_join(t->thread, NULL);
		t->running = false;
	}
}

/* ------------------------------------------------------- keys, values */

/* The absolute key: cluster prefix + rel. data is malloc'd (owned by the
 * caller) and NUL-terminated for logs, len excludes the NUL. */
static int etcd_full_key(const struct mp_etcd *e, const char *rel,
			 ProtobufCBinaryData *out)
{
	size_t rl = strlen(rel);
	uint8_t *p = malloc(e->prefix_len + rl + 1);

	if (p == NULL)
		return MP_ENOMEM;
	memcpy(p, e->prefix, e->prefix_len);
	memcpy(p + e->prefix_len, rel, rl);
	p[e->prefix_len + rl] = '\0';
	out->data = p;
	out->len = e->prefix_len + rl;
	return 0;
}

/* etcd's range end for "every key starting with key": key with its last
 * byte below 0xff incremented and the rest dropped; "\0" (every key) when
 * there is no such byte. */
static int etcd_range_end(const ProtobufCBinaryData *key,
			  ProtobufCBinaryData *out)
{
	uint8_t *p = malloc(key->len > 0 ? key->len : 1);
	size_t i;

	if (p == NULL)
		return MP_ENOMEM;
	if (key->len > 0)
		memcpy(p, key->data, key->len);
	for (i = key->len; i > 0; i--) {
		if (p[i - 1] < 0xff) {
			p[i - 1]++;
			out->data = p;
			out->len = i;
			return 0;
		}
	}
	p[0] = '\0';
	out->data = p;
	out->len = 1;
	return 0;
}

/* Key and range end of every key starting with rel. etcd refuses an empty
 * key: with no prefix at all, "\0" to "\0" is its way to say every key. */
static int etcd_prefix_range(const struct mp_etcd *e, const char *rel,
			     ProtobufCBinaryData *key, ProtobufCBinaryData *end)
{
	int ret = etcd_full_key(e, rel, key);

	if (ret < 0)
		return ret;
	if (key->len == 0) {
		key->len = 1; /* the NUL etcd_full_key wrote */
		end->data = calloc(1, 1);
		end->len = 1;
		ret = end->data != NULL ? 0 : MP_ENOMEM;
	} else {
		ret = etcd_range_end(key, end);
	}
	if (ret < 0) {
		free(key->data);
		key->data = NULL;
	}
	return ret;
}

/* A KeyValue from etcd as ours: copies, prefix removed. */
static int etcd_kv_copy(const struct mp_etcd *e, const Mvccpb__KeyValue *src,
			struct mp_etcd_kv *dst)
{
	const uint8_t *k = src->key.data;
	size_t kl = src->key.len;

	memset(dst, 0, sizeof(*dst));
	if (kl >= e->prefix_len && (e->prefix_len == 0 ||
				    memcmp(k, e->prefix, e->prefix_len) == 0)) {
		k += e->prefix_len;
		kl -= e->prefix_len;
	} else {
		/* Only keys under our prefix are ever asked for. */
		return MP_EPROTO;
	}
	dst->key = malloc(kl + 1);
	dst->value = malloc(src->value.len + 1);
	if (dst->key == NULL || dst->value == NULL) {
		free(dst->key);
		free(dst->value);
		memset(dst, 0, sizeof(*dst));
		return MP_ENOMEM;
	}
	if (kl > 0)
		memcpy(dst->key, k, kl);
	dst->key[kl] = '\0';
	if (src->value.len > 0)
		memcpy(dst->value, src->value.data, src->value.len);
	dst->value[src->value.len] = '\0';
	dst->vlen = src->value.len;
	dst->create_rev = src->create_revision;
	dst->mod_rev = src->mod_revision;
	dst->version = src->version;
	dst->lease = src->lease;
	return 0;
}

static void etcd_kv_clear(struct mp_etcd_kv *kv)
{
	free(kv->key);
	free(kv->value);
	memset(kv, 0, sizeof(*kv));
}

void mp_etcd_kvs_free(struct mp_etcd_kv *kvs, size_t n)
{
	size_t i;

	if (kvs == NULL)
		return;
	for (i = 0; i < n; i++)
		etcd_kv_clear(&kvs[i]);
	free(kvs);
}

/* ---------------------------------------------------------- endpoints */

static size_t etcd_endpoint_current(struct mp_etcd *e)
{
	size_t i;

	pthread_mutex_lock(&e->mu);
	i = e->cur;
	pthread_mutex_unlock(&e->mu);
	return i;
}

/* failed did not answer: the endpoint to try next (shared by every call,
 * so one failure moves them all). */
static size_t etcd_endpoint_next(struct mp_etcd *e, size_t failed)
{
	size_t i;
	bool moved = false;

	pthread_mutex_lock(&e->mu);
	if (e->cur == failed && e->n_eps > 1) {
		e->cur = (failed + 1) % e->n_eps;
		moved = true;
	}
	i = e->cur;
	pthread_mutex_unlock(&e->mu);
	if (moved)
		mp_log_info("etcd_failover", "from=%s to=%s",
			    e->eps[failed].target, e->eps[i].target);
	return i;
}

static int etcd_channel(struct mp_etcd *e, size_t idx,
			struct mp_rpc_channel **ch_r)
{
	int ret = 0;

	pthread_mutex_lock(&e->mu);
	if (e->eps[idx].ch == NULL)
		ret = mp_rpc_channel_open(e->eps[idx].target, 0,
					  &e->eps[idx].ch);
	*ch_r = e->eps[idx].ch;
	pthread_mutex_unlock(&e->mu);
	return ret;
}

/* ------------------------------------------------------------- calls */

enum etcd_call_kind {
	ETCD_UNARY,
	ETCD_STREAM_FIRST,  /* a stream of which we want the first answer */
};

static int etcd_attempt(struct mp_rpc_channel *ch, const char *path,
			enum etcd_call_kind kind, const ProtobufCMessage *req,
			const ProtobufCMessageDescriptor *desc,
			int64_t timeout_ms, ProtobufCMessage **resp_r,
			char **error_r)
{
	struct mp_rpc_stream *st;
	int ret;

	if (kind == ETCD_UNARY)
		return mp_rpc_call(ch, path, req, desc, timeout_ms, resp_r,
				   error_r);
	ret = mp_rpc_stream_open(ch, path, req, desc, timeout_ms, &st,
				 error_r);
	if (ret < 0)
		return ret;
	/* The call's own deadline bounds this wait too. */
	ret = mp_rpc_stream_next(st, timeout_ms, resp_r, error_r);
	if (ret == 1) {
		ret = MP_EPROTO;
		etcd_set_error(error_r, "stream ended without an answer");
	}
	/* Cancels: etcd keeps a keep-alive stream open for more requests. */
	mp_rpc_stream_close(&st);
	return ret;
}

/* One request, its answer in *resp_r, trying endpoints in turn until the
 * deadline. */
static int etcd_call(struct mp_etcd *e, const char *path,
		     enum etcd_call_kind kind, const ProtobufCMessage *req,
		     const ProtobufCMessageDescriptor *desc, int64_t timeout_ms,
		     ProtobufCMessage **resp_r)
{
	int64_t deadline = etcd_now_ms() + timeout_ms;
	int64_t pause = ETCD_RETRY_MIN_MS, left;
	size_t idx = etcd_endpoint_current(e), last = idx, tries = 0;
	struct mp_rpc_channel *ch;
	char *error = NULL, quoted[256];
	int ret = MP_ETIMEDOUT;

	*resp_r = NULL;
	/* Bounded: each turn either returns or spends time, and the loop
	 * ends at the deadline. */
	for (;;) {
		left = deadline - etcd_now_ms();
		if (left <= 0)
			break;
		ret = etcd_channel(e, idx, &ch);
		if (ret < 0)
			return ret;
		free(error);
		error = NULL;
		last = idx;
		ret = etcd_attempt(ch, path, kind, req, desc, left, resp_r,
				   &error);
		if (ret != MP_EUNAVAIL)
			break;
		idx = etcd_endpoint_next(e, idx);
		if (++tries % e->n_eps == 0) {
			etcd_sleep_ms(etcd_min64(pause,
						 deadline - etcd_now_ms()));
			pause = etcd_min64(pause * 2, ETCD_RETRY_MAX_MS);
		}
	}
	/* ENOENT and ESTALE are answers, not failures. */
	if (ret < 0 && ret != MP_ENOENT && ret != MP_ESTALE)
		mp_log_warn("etcd_call_failed", "path=%s endpoint=%s err=%s msg=%s",
			    path, e->eps[last].target, mp_strerror(ret),
			    mp_log_quote(quoted, sizeof(quoted),
					 error != NULL ? error : "",
					 error != NULL ? strlen(error) : 0));
	free(error);
	return ret;
}

static int64_t etcd_header_rev(const Etcdserverpb__ResponseHeader *h)
{
	return h != NULL ? h->revision : 0;
}

/* ------------------------------------------------------- open, close */

static int etcd_parse_endpoints(struct mp_etcd *e, const char *endpoints,
				char **error_r)
{
	char *copy = strdup(endpoints), *save = NULL, *tok;
	int ret = 0;

	if (copy == NULL)
		return MP_ENOMEM;
	e->eps = calloc(ETCD_MAX_ENDPOINTS, sizeof(*e->eps));
	if (e->eps == NULL) {
		free(copy);
		return MP_ENOMEM;
	}
	for (tok = strtok_r(copy, ",", &save); tok != NULL;
	     tok = strtok_r(NULL, ",", &save)) {
		size_t len;

		while (*tok == ' ' || *tok == '\t')
			tok++;
		len = strlen(tok);
		while (len > 0 && (tok[len - 1] == ' ' || tok[len - 1] == '\t'))
			tok[--len] = '\0';
		if (len == 0)
			continue;
		/* etcd's own tools write endpoints as URLs. */
		if (strncmp(tok, "http://", 7) == 0) {
			tok += 7;
			len -= 7;
		} else if (strstr(tok, "://") != NULL) {
			etcd_set_error(error_r, "etcd endpoint %s: only plain "
				       "host:port or http:// is supported", tok);
			ret = MP_EINVAL;
			break;
		}
		while (len > 0 && tok[len - 1] == '/')
			tok[--len] = '\0';
		if (len == 0 || strchr(tok, ':') == NULL) {
			etcd_set_error(error_r, "etcd endpoint \"%s\" is not "
				       "host:port", tok);
			ret = MP_EINVAL;
			break;
		}
		if (e->n_eps == ETCD_MAX_ENDPOINTS) {
			etcd_set_error(error_r, "more than %d etcd endpoints",
				       ETCD_MAX_ENDPOINTS);
			ret = MP_EINVAL;
			break;
		}
		e->eps[e->n_eps].target = strdup(tok);
		if (e->eps[e->n_eps].target == NULL) {
			ret = MP_ENOMEM;
			break;
		}
		e->n_eps++;
	}
	if (ret == 0 && e->n_eps == 0) {
		etcd_set_error(error_r, "no etcd endpoint given");
		ret = MP_EINVAL;
	}
	free(copy);
	return ret;
}

static void etcd_free(struct mp_etcd *e)
{
	size_t i;

	if (e->eps != NULL) {
		for (i = 0; i < e->n_eps; i++) {
			mp_rpc_channel_close(&e->eps[i].ch);
			free(e->eps[i].target);
		}
		free(e->eps);
	}
	free(e->prefix);
	pthread_mutex_destroy(&e->mu);
	free(e);
}

int mp_etcd_open(const char *endpoints, const char *prefix, int64_t timeout_ms,
		 struct mp_etcd **e_r, char **error_r)
{
	struct mp_etcd *e;
	int ret;

	if (error_r != NULL)
		*error_r = NULL;
	if (e_r == NULL)
		return MP_EINVAL;
	*e_r = NULL;
	if (endpoints == NULL || prefix == NULL || timeout_ms < 0) {
		etcd_set_error(error_r, "etcd: endpoints and prefix are "
			       "required, timeout must not be negative");
		return MP_EINVAL;
	}
	e = calloc(1, sizeof(*e));
	if (e == NULL)
		return MP_ENOMEM;
	if (pthread_mutex_init(&e->mu, NULL) != 0) {
		free(e);
		return MP_ENOMEM;
	}
	e->timeout_ms = timeout_ms > 0 ? timeout_ms : ETCD_DEFAULT_TIMEOUT_MS;
	e->prefix = strdup(prefix);
	if (e->prefix == NULL) {
		etcd_free(e);
		return MP_ENOMEM;
	}
	e->prefix_len = strlen(prefix);
	ret = etcd_parse_endpoints(e, endpoints, error_r);
	if (ret < 0) {
		etcd_free(e);
		return ret;
	}
	*e_r = e;
	return 0;
}

static int etcd_revoke(struct mp_etcd *e, int64_t id, int64_t timeout_ms);

void mp_etcd_close(struct mp_etcd **ep)
{
	struct mp_etcd *e = *ep;
	struct mp_etcd_lease *l;
	struct mp_etcd_watch *w;

	if (e == NULL)
		return;
	*ep = NULL;
	/* Their owners still hold the handles: stop the threads and detach
	 * them, so a later mp_etcd_*_stop only frees the handle. The lists are
	 * taken out first and the threads joined without e->mu, which they
	 * take themselves. */
	pthread_mutex_lock(&e->mu);
	l = e->leases;
	w = e->watches;
	e->leases = NULL;
	e->watches = NULL;
	pthread_mutex_unlock(&e->mu);
	for (; l != NULL; l = l->next) {
		etcd_thread_stop(&l->t);
		(void)etcd_revoke(e, atomic_load(&l->id),
				  etcd_min64(e->timeout_ms, ETCD_REVOKE_MAX_MS));
		l->e = NULL;
	}
	for (; w != NULL; w = w->next) {
		etcd_thread_stop(&w->t);
		w->e = NULL;
	}
	etcd_free(e);
}

/* --------------------------------------------------------------- KV */

int mp_etcd_get(struct mp_etcd *e, const char *key, struct mp_etcd_kv **kv_r,
		int64_t *rev_r)
{
	Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
	Etcdserverpb__RangeResponse *resp;
	struct mp_etcd_kv *kv;
	int ret;

	if (e == NULL || key == NULL || kv_r == NULL)
		return MP_EINVAL;
	*kv_r = NULL;
	ret = etcd_full_key(e, key, &req.key);
	if (ret < 0)
		return ret;
	ret = etcd_call(e, ETCD_PATH_RANGE, ETCD_UNARY, &req.base,
			&etcdserverpb__range_response__descriptor,
			e->timeout_ms, (ProtobufCMessage **)&resp);
	free(req.key.data);
	if (ret < 0)
		return ret;
	if (rev_r != NULL)
		*rev_r = etcd_header_rev(resp->header);
	if (resp->n_kvs == 0) {
		ret = MP_ENOENT;
	} else {
		kv = calloc(1, sizeof(*kv));
		if (kv == NULL)
			ret = MP_ENOMEM;
		else if ((ret = etcd_kv_copy(e, resp->kvs[0], kv)) < 0)
			free(kv);
		else
			*kv_r = kv;
	}
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return ret;
}

int mp_etcd_range(struct mp_etcd *e, const char *prefix, struct mp_etcd_kv **kvs_r,
		  size_t *n_r, int64_t *rev_r)
{
	Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
	Etcdserverpb__RangeResponse *resp;
	struct mp_etcd_kv *kvs = NULL;
	size_t i;
	int ret;

	if (e == NULL || prefix == NULL || kvs_r == NULL || n_r == NULL)
		return MP_EINVAL;
	*kvs_r = NULL;
	*n_r = 0;
	ret = etcd_prefix_range(e, prefix, &req.key, &req.range_end);
	if (ret < 0)
		return ret;
	/* No sort requested: etcd returns a range in key order already. */
	ret = etcd_call(e, ETCD_PATH_RANGE, ETCD_UNARY, &req.base,
			&etcdserverpb__range_response__descriptor,
			e->timeout_ms, (ProtobufCMessage **)&resp);
	free(req.key.data);
	free(req.range_end.data);
	if (ret < 0)
		return ret;
	if (resp->n_kvs > 0) {
		kvs = calloc(resp->n_kvs, sizeof(*kvs));
		if (kvs == NULL)
			ret = MP_ENOMEM;
	}
	for (i = 0; ret == 0 && i < resp->n_kvs; i++)
		ret = etcd_kv_copy(e, resp->kvs[i], &kvs[i]);
	if (ret < 0) {
		mp_etcd_kvs_free(kvs, resp->n_kvs);
	} else {
		*kvs_r = kvs;
		*n_r = resp->n_kvs;
		if (rev_r != NULL)
			*rev_r = etcd_header_rev(resp->header);
	}
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return ret;
}

int mp_etcd_put(struct mp_etcd *e, const char *key, const void *val, size_t vlen,
		int64_t lease, int64_t *rev_r)
{
	Etcdserverpb__PutRequest req = ETCDSERVERPB__PUT_REQUEST__INIT;
	Etcdserverpb__PutResponse *resp;
	int ret;

	if (e == NULL || key == NULL || (val == NULL && vlen > 0) || lease < 0)
		return MP_EINVAL;
	ret = etcd_full_key(e, key, &req.key);
	if (ret < 0)
		return ret;
	req.value.data = (uint8_t *)(uintptr_t)val;
	req.value.len = vlen;
	req.lease = lease;
	ret = etcd_call(e, ETCD_PATH_PUT, ETCD_UNARY, &req.base,
			&etcdserverpb__put_response__descriptor, e->timeout_ms,
			(ProtobufCMessage **)&resp);
	free(req.key.data);
	if (ret < 0)
		return ret;
	if (rev_r != NULL)
		*rev_r = etcd_header_rev(resp->header);
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return 0;
}

int mp_etcd_delete(struct mp_etcd *e, const char *key, int64_t *rev_r)
{
	Etcdserverpb__DeleteRangeRequest req =
		ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
	Etcdserverpb__DeleteRangeResponse *resp;
	int ret;

	if (e == NULL || key == NULL)
		return MP_EINVAL;
	ret = etcd_full_key(e, key, &req.key);
	if (ret < 0)
		return ret;
	ret = etcd_call(e, ETCD_PATH_DELETE, ETCD_UNARY, &req.base,
			&etcdserverpb__delete_range_response__descriptor,
			e->timeout_ms, (ProtobufCMessage **)&resp);
	free(req.key.data);
	if (ret < 0)
		return ret;
	if (rev_r != NULL)
		*rev_r = etcd_header_rev(resp->header);
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return 0;
}

/* One Txn: if the key's revision compares equal, do op. MP_ESTALE when the
 * compare failed. create: compare the CREATE revision (etcd's test for
 * absence is create_revision == 0), else the MOD revision. */
static int etcd_txn_if(struct mp_etcd *e, const ProtobufCBinaryData *key,
		       bool create, int64_t rev, Etcdserverpb__RequestOp *op,
		       int64_t *rev_r)
{
	Etcdserverpb__Compare cmp = ETCDSERVERPB__COMPARE__INIT;
	Etcdserverpb__Compare *cmps[1] = { &cmp };
	Etcdserverpb__RequestOp *ops[1] = { op };
	Etcdserverpb__TxnRequest req = ETCDSERVERPB__TXN_REQUEST__INIT;
	Etcdserverpb__TxnResponse *resp;
	int ret;

	cmp.result = ETCDSERVERPB__COMPARE__COMPARE_RESULT__EQUAL;
	cmp.key = *key;
	if (create) {
		cmp.target = ETCDSERVERPB__COMPARE__COMPARE_TARGET__CREATE;
		cmp.target_union_case =
			ETCDSERVERPB__COMPARE__TARGET_UNION_CREATE_REVISION;
		cmp.create_revision = 0;
	} else {
		cmp.target = ETCDSERVERPB__COMPARE__COMPARE_TARGET__MOD;
		cmp.target_union_case =
			ETCDSERVERPB__COMPARE__TARGET_UNION_MOD_REVISION;
		cmp.mod_revision = rev;
	}
	req.n_compare = 1;
	req.compare = cmps;
	req.n_success = 1;
	req.success = ops;
	ret = etcd_call(e, ETCD_PATH_TXN, ETCD_UNARY, &req.base,
			&etcdserverpb__txn_response__descriptor, e->timeout_ms,
			(ProtobufCMessage **)&resp);
	if (ret < 0)
		return ret;
	if (!resp->succeeded)
		ret = MP_ESTALE;
	else if (rev_r != NULL)
		*rev_r = etcd_header_rev(resp->header);
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return ret;
}

int mp_etcd_cas(struct mp_etcd *e, const char *key, const void *val, size_t vlen,
		int64_t expect_mod_rev, int64_t lease, int64_t *rev_r)
{
	Etcdserverpb__PutRequest put = ETCDSERVERPB__PUT_REQUEST__INIT;
	Etcdserverpb__RequestOp op = ETCDSERVERPB__REQUEST_OP__INIT;
	int ret;

	if (e == NULL || key == NULL || (val == NULL && vlen > 0) ||
	    expect_mod_rev < 0 || lease < 0)
		return MP_EINVAL;
	ret = etcd_full_key(e, key, &put.key);
	if (ret < 0)
		return ret;
	put.value.data = (uint8_t *)(uintptr_t)val;
	put.value.len = vlen;
	put.lease = lease;
	op.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
	op.request_put = &put;
	ret = etcd_txn_if(e, &put.key, expect_mod_rev == 0, expect_mod_rev,
			  &op, rev_r);
	free(put.key.data);
	return ret;
}

int mp_etcd_cas_delete(struct mp_etcd *e, const char *key, int64_t expect_mod_rev)
{
	Etcdserverpb__DeleteRangeRequest del =
		ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
	Etcdserverpb__RequestOp op = ETCDSERVERPB__REQUEST_OP__INIT;
	int ret;

	/* A key that exists has a mod revision above 0. */
	if (e == NULL || key == NULL || expect_mod_rev <= 0)
		return MP_EINVAL;
	ret = etcd_full_key(e, key, &del.key);
	if (ret < 0)
		return ret;
	op.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE;
	op.request_delete_range = &del;
	ret = etcd_txn_if(e, &del.key, false, expect_mod_rev, &op, NULL);
	free(del.key.data);
	return ret;
}

/* ------------------------------------------------------------ leases */

static int etcd_grant(struct mp_etcd *e, int64_t ttl_s, int64_t timeout_ms,
		      int64_t *id_r, int64_t *ttl_r)
{
	Etcdserverpb__LeaseGrantRequest req =
		ETCDSERVERPB__LEASE_GRANT_REQUEST__INIT;
	Etcdserverpb__LeaseGrantResponse *resp;
	char quoted[256];
	int ret;

	req.ttl = ttl_s;
	ret = etcd_call(e, ETCD_PATH_GRANT, ETCD_UNARY, &req.base,
			&etcdserverpb__lease_grant_response__descriptor,
			timeout_ms, (ProtobufCMessage **)&resp);
	if (ret < 0)
		return ret;
	if ((resp->error != NULL && resp->error[0] != '\0') || resp->id <= 0) {
		mp_log_warn("etcd_lease_grant_failed", "msg=%s",
			    mp_log_quote(quoted, sizeof(quoted),
					 resp->error != NULL ? resp->error : "",
					 resp->error != NULL
						 ? strlen(resp->error) : 0));
		ret = MP_EIO;
	} else {
		*id_r = resp->id;
		if (ttl_r != NULL)
			*ttl_r = resp->ttl > 0 ? resp->ttl : ttl_s;
	}
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return ret;
}

int mp_etcd_lease_grant(struct mp_etcd *e, int64_t ttl_s, int64_t *id_r)
{
	if (e == NULL || ttl_s <= 0 || id_r == NULL)
		return MP_EINVAL;
	return etcd_grant(e, ttl_s, e->timeout_ms, id_r, NULL);
}

static int etcd_revoke(struct mp_etcd *e, int64_t id, int64_t timeout_ms)
{
	Etcdserverpb__LeaseRevokeRequest req =
		ETCDSERVERPB__LEASE_REVOKE_REQUEST__INIT;
	ProtobufCMessage *resp;
	int ret;

	req.id = id;
	ret = etcd_call(e, ETCD_PATH_REVOKE, ETCD_UNARY, &req.base,
			&etcdserverpb__lease_revoke_response__descriptor,
			timeout_ms, &resp);
	if (ret < 0)
		return ret;
	protobuf_c_message_free_unpacked(resp, NULL);
	return 0;
}

int mp_etcd_lease_revoke(struct mp_etcd *e, int64_t id)
{
	if (e == NULL || id <= 0)
		return MP_EINVAL;
	return etcd_revoke(e, id, e->timeout_ms);
}

static int etcd_keepalive(struct mp_etcd *e, int64_t id, int64_t timeout_ms,
			  int64_t *ttl_r)
{
	Etcdserverpb__LeaseKeepAliveRequest req =
		ETCDSERVERPB__LEASE_KEEP_ALIVE_REQUEST__INIT;
	Etcdserverpb__LeaseKeepAliveResponse *resp;
	int ret;

	*ttl_r = 0;
	req.id = id;
	ret = etcd_call(e, ETCD_PATH_KEEPALIVE, ETCD_STREAM_FIRST, &req.base,
			&etcdserverpb__lease_keep_alive_response__descriptor,
			timeout_ms, (ProtobufCMessage **)&resp);
	if (ret < 0)
		return ret;
	/* etcd answers TTL 0 (not an error) for a lease it does not know. */
	if (resp->ttl <= 0)
		ret = MP_ENOENT;
	else
		*ttl_r = resp->ttl;
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return ret;
}

int mp_etcd_lease_keepalive(struct mp_etcd *e, int64_t id, int64_t *ttl_r)
{
	int64_t ttl;
	int ret;

	if (e == NULL || id <= 0)
		return MP_EINVAL;
	ret = etcd_keepalive(e, id, e->timeout_ms, &ttl);
	if (ttl_r != NULL)
		*ttl_r = ttl;
	return ret;
}

static int64_t etcd_keeper_interval(const struct mp_etcd_lease *l)
{
	return l->ttl_ms / 3 > 0 ? l->ttl_ms / 3 : 1;
}

static int64_t etcd_keeper_call_ms(const struct mp_etcd_lease *l)
{
	return etcd_min64(etcd_min64(l->e->timeout_ms, ETCD_KEEPER_CALL_MAX_MS),
			  etcd_keeper_interval(l));
}

/* A new lease, retried with backoff until granted; MP_ECANCELED when told
 * to stop first. */
static int etcd_keeper_regrant(struct mp_etcd_lease *l, int64_t *id_r)
{
	int64_t backoff = ETCD_BACKOFF_MIN_MS, ttl_s = l->req_ttl_s;
	int ret;

	/* Bounded by the stop flag: the keeper's owner decides how long. */
	for (;;) {
		ret = etcd_grant(l->e, l->req_ttl_s,
				 etcd_min64(l->e->timeout_ms,
					    ETCD_KEEPER_CALL_MAX_MS),
				 id_r, &ttl_s);
		if (ret == 0) {
			l->ttl_ms = ttl_s * 1000;
			return 0;
		}
		if (etcd_thread_sleep(&l->t, backoff))
			return MP_ECANCELED;
		backoff = etcd_min64(backoff * 2, ETCD_BACKOFF_MAX_MS);
	}
}

static void *etcd_keeper_main(void *arg)
{
	struct mp_etcd_lease *l = arg;
	int64_t id = atomic_load(&l->id);
	int64_t last_ok = etcd_now_ms(), wait, fail_wait, ttl;
	int ret;

	if (l->on_new != NULL)
		l->on_new(id, l->arg);
	wait = etcd_keeper_interval(l);
	fail_wait = ETCD_BACKOFF_MIN_MS;
	while (!etcd_thread_sleep(&l->t, wait)) {
		ret = etcd_keepalive(l->e, id, etcd_keeper_call_ms(l), &ttl);
		if (ret == 0) {
			last_ok = etcd_now_ms();
			wait = etcd_keeper_interval(l);
			fail_wait = ETCD_BACKOFF_MIN_MS;
			continue;
		}
		if (ret != MP_ENOENT && etcd_now_ms() - last_ok < l->ttl_ms) {
			/* Maybe still alive in etcd: try again soon. */
			wait = etcd_min64(fail_wait, etcd_keeper_interval(l));
			fail_wait = etcd_min64(fail_wait * 2,
					       ETCD_BACKOFF_MAX_MS);
			continue;
		}
		/* Gone, or unreachable past its TTL so presumed gone. The old
		 * lease is not revoked: if it did survive, the owner's keys
		 * move to the new lease as it re-creates them, and revoking
		 * would delete them meanwhile. */
		mp_log_warn("etcd_lease_lost", "lease=%lld reason=%s",
			    (long long)id, ret == MP_ENOENT ? "expired"
							    : "unreachable");
		if (etcd_keeper_regrant(l, &id) < 0)
			break;
		atomic_store(&l->id, id);
		mp_log_info("etcd_lease_regranted", "lease=%lld ttl_ms=%lld",
			    (long long)id, (long long)l->ttl_ms);
		if (l->on_new != NULL)
			l->on_new(id, l->arg);
		last_ok = etcd_now_ms();
		wait = etcd_keeper_interval(l);
		fail_wait = ETCD_BACKOFF_MIN_MS;
	}
	return NULL;
}

int mp_etcd_lease_keep(struct mp_etcd *e, int64_t ttl_s, mp_etcd_lease_cb on_new,
		       void *arg, struct mp_etcd_lease **l_r)
{
	struct mp_etcd_lease *l;
	int64_t id, ttl = ttl_s;
	int ret;

	if (e == NULL || ttl_s <= 0 || l_r == NULL)
		return MP_EINVAL;
	*l_r = NULL;
	/* Granted here, so the caller learns now whether etcd is there and
	 * mp_etcd_lease_id is valid at once. */
	ret = etcd_grant(e, ttl_s, e->timeout_ms, &id, &ttl);
	if (ret < 0)
		return ret;
	l = calloc(1, sizeof(*l));
	if (l == NULL || etcd_thread_init(&l->t) < 0) {
		free(l);
		(void)etcd_revoke(e, id, etcd_min64(e->timeout_ms,
						    ETCD_REVOKE_MAX_MS));
		return MP_ENOMEM;
	}
	l->e = e;
	l->req_ttl_s = ttl_s;
	l->ttl_ms = ttl * 1000;
	atomic_store(&l->id, id);
	l->on_new = on_new;
	l->arg = arg;
	ret = etcd_thread_start(&l->t, etcd_keeper_main, l);
	if (ret < 0) {
		etcd_thread_destroy(&l->t);
		free(l);
		(void)etcd_revoke(e, id, etcd_min64(e->timeout_ms,
						    ETCD_REVOKE_MAX_MS));
		return ret;
	}
	pthread_mutex_lock(&e->mu);
	l->next = e->leases;
	e->leases = l;
	pthread_mutex_unlock(&e->mu);
	*l_r = l;
	return 0;
}

int64_t mp_etcd_lease_id(struct mp_etcd_lease *l)
{
	return l != NULL ? atomic_load(&l->id) : 0;
}

void mp_etcd_lease_stop(struct mp_etcd_lease **lp)
{
	struct mp_etcd_lease *l = *lp, **pp;
	struct mp_etcd *e;

	if (l == NULL)
		return;
	*lp = NULL;
	etcd_thread_stop(&l->t);
	e = l->e;
	if (e != NULL) {
		pthread_mutex_lock(&e->mu);
		for (pp = &e->leases; *pp != NULL; pp = &(*pp)->next) {
			if (*pp == l) {
				*pp = l->next;
				break;
			}
		}
		pthread_mutex_unlock(&e->mu);
		(void)etcd_revoke(e, atomic_load(&l->id),
				  etcd_min64(e->timeout_ms, ETCD_REVOKE_MAX_MS));
	}
	etcd_thread_destroy(&l->t);
	free(l);
}

/* ----------------------------------------------------------- watches */

/* Events of one revision (one etcd transaction) per callback, in order;
 * revisions already delivered are skipped so a resumed watch repeats
 * nothing. */
static int etcd_watch_deliver(struct mp_etcd_watch *w,
			      const Etcdserverpb__WatchResponse *r)
{
	struct mp_etcd_event *evs;
	size_t i = 0, j, k;
	int64_t rev;
	int ret = 0;

	for (k = 0; k < r->n_events; k++)
		if (r->events[k] == NULL || r->events[k]->kv == NULL)
			return MP_EPROTO;
	/* Bounded: i grows by at least one every turn. */
	while (i < r->n_events) {
		rev = r->events[i]->kv->mod_revision;
		j = i + 1;
		while (j < r->n_events && r->events[j]->kv->mod_revision == rev)
			j++;
		if (w->next_rev > 0 && rev < w->next_rev) {
			i = j;
			continue;
		}
		evs = calloc(j - i, sizeof(*evs));
		if (evs == NULL)
			return MP_ENOMEM;
		for (k = 0; ret == 0 && k < j - i; k++) {
			evs[k].type = r->events[i + k]->type ==
						MVCCPB__EVENT__EVENT_TYPE__DELETE
					      ? MP_ETCD_DELETE : MP_ETCD_PUT;
			ret = etcd_kv_copy(w->e, r->events[i + k]->kv,
					   &evs[k].kv);
		}
		/* On failure nothing of this revision is delivered: the
		 * watch reconnects from it. */
		if (ret == 0) {
			w->cb(evs, j - i, rev, 0, w->arg);
			w->next_rev = rev + 1;
		}
		for (k = 0; k < j - i; k++)
			etcd_kv_clear(&evs[k].kv);
		free(evs);
		if (ret < 0)
			return ret;
		i = j;
	}
	return 0;
}

/* One answer on the watch stream. MP_ESTALE: history compacted. */
static int etcd_watch_handle(struct mp_etcd_watch *w,
			     const Etcdserverpb__WatchResponse *r,
			     bool *created_r)
{
	char quoted[256];
	int64_t rev;

	if (r->compact_revision != 0) {
		mp_log_warn("etcd_watch_compacted", "from_rev=%lld "
			    "compact_rev=%lld", (long long)w->next_rev,
			    (long long)r->compact_revision);
		return MP_ESTALE;
	}
	if (r->canceled) {
		const char *why = r->cancel_reason != NULL ? r->cancel_reason : "";

		mp_log_warn("etcd_watch_canceled", "reason=%s",
			    mp_log_quote(quoted, sizeof(quoted), why,
					 strlen(why)));
		return MP_EIO;
	}
	if (r->created) {
		if (r->header == NULL)
			return MP_EPROTO;
		*created_r = true;
		/* etcd watches from header.revision + 1 when asked for "now". */
		rev = r->header->revision;
		if (w->resync) {
			w->resync = false;
			w->next_rev = rev + 1;
			w->cb(NULL, 0, rev, 1, w->arg);
		} else if (w->next_rev == 0) {
			w->next_rev = rev + 1;
		}
	}
	return etcd_watch_deliver(w, r);
}

/* One watch stream on endpoint idx, read until it fails or we stop. */
static int etcd_watch_once(struct mp_etcd_watch *w, size_t idx,
			   bool *created_r)
{
	Etcdserverpb__WatchCreateRequest creq =
		ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
	Etcdserverpb__WatchRequest req = ETCDSERVERPB__WATCH_REQUEST__INIT;
	struct mp_rpc_channel *ch;
	struct mp_rpc_stream *st;
	ProtobufCMessage *msg;
	char *error = NULL, quoted[256];
	int ret;

	creq.key = w->key;
	creq.range_end = w->end;
	creq.start_revision = w->next_rev;
	req.request_union_case =
		ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST;
	req.create_request = &creq;
	ret = etcd_channel(w->e, idx, &ch);
	if (ret < 0)
		return ret;
	/* No deadline: a watch lives until stopped. */
	ret = mp_rpc_stream_open(ch, ETCD_PATH_WATCH, &req.base,
				 &etcdserverpb__watch_response__descriptor, 0,
				 &st, &error);
	/* Polled in short waits: stop is checked between them. */
	while (ret == 0) {
		if (etcd_thread_stopping(&w->t)) {
			ret = MP_ECANCELED;
			break;
		}
		ret = mp_rpc_stream_next(st, ETCD_WATCH_POLL_MS, &msg, &error);
		if (ret == MP_ETIMEDOUT) {
			ret = 0;
			continue;
		}
		if (ret == 1) {
			/* etcd ends a watch stream only when it goes away. */
			ret = MP_EUNAVAIL;
			break;
		}
		if (ret < 0)
			break;
		ret = etcd_watch_handle(w, (Etcdserverpb__WatchResponse *)msg,
					created_r);
		protobuf_c_message_free_unpacked(msg, NULL);
	}
	mp_rpc_stream_close(&st);
	if (ret < 0 && ret != MP_ECANCELED && ret != MP_ESTALE)
		mp_log_warn("etcd_watch_broken", "endpoint=%s err=%s msg=%s "
			    "next_rev=%lld", w->e->eps[idx].target,
			    mp_strerror(ret),
			    mp_log_quote(quoted, sizeof(quoted),
					 error != NULL ? error : "",
					 error != NULL ? strlen(error) : 0),
			    (long long)w->next_rev);
	free(error);
	return ret;
}

static void *etcd_watch_main(void *arg)
{
	struct mp_etcd_watch *w = arg;
	size_t idx = etcd_endpoint_current(w->e);
	int64_t backoff = ETCD_BACKOFF_MIN_MS;
	bool created;
	int ret;

	/* Bounded by the stop flag; every failed turn sleeps. */
	while (!etcd_thread_stopping(&w->t)) {
		created = false;
		ret = etcd_watch_once(w, idx, &created);
		if (etcd_thread_stopping(&w->t))
			break;
		if (created)
			backoff = ETCD_BACKOFF_MIN_MS;
		if (ret == MP_ESTALE) {
			/* Start again from now and tell the callback, once
			 * the new watch exists, to re-read everything. */
			w->resync = true;
			w->next_rev = 0;
		} else if (ret == MP_EUNAVAIL) {
			idx = etcd_endpoint_next(w->e, idx);
		}
		if (etcd_thread_sleep(&w->t, backoff))
			break;
		backoff = etcd_min64(backoff * 2, ETCD_BACKOFF_MAX_MS);
		mp_log_info("etcd_watch_reconnect", "endpoint=%s next_rev=%lld",
			    w->e->eps[idx].target, (long long)w->next_rev);
	}
	return NULL;
}

int mp_etcd_watch_start(struct mp_etcd *e, const char *prefix, int64_t start_rev,
			mp_etcd_watch_cb cb, void *arg, struct mp_etcd_watch **w_r)
{
	struct mp_etcd_watch *w;
	int ret;

	if (e == NULL || prefix == NULL || cb == NULL || start_rev < 0 ||
	    w_r == NULL)
		return MP_EINVAL;
	*w_r = NULL;
	w = calloc(1, sizeof(*w));
	if (w == NULL)
		return MP_ENOMEM;
	ret = etcd_prefix_range(e, prefix, &w->key, &w->end);
	if (ret == 0)
		ret = etcd_thread_init(&w->t);
	if (ret < 0) {
		free(w->key.data);
		free(w->end.data);
		free(w);
		return ret;
	}
	w->e = e;
	w->next_rev = start_rev;
	w->cb = cb;
	w->arg = arg;
	ret = etcd_thread_start(&w->t, etcd_watch_main, w);
	if (ret < 0) {
		etcd_thread_destroy(&w->t);
		free(w->key.data);
		free(w->end.data);
		free(w);
		return ret;
	}
	pthread_mutex_lock(&e->mu);
	w->next = e->watches;
	e->watches = w;
	pthread_mutex_unlock(&e->mu);
	*w_r = w;
	return 0;
}

void mp_etcd_watch_stop(struct mp_etcd_watch **wp)
{
	struct mp_etcd_watch *w = *wp, **pp;

	if (w == NULL)
		return;
	*wp = NULL;
	etcd_thread_stop(&w->t);
	if (w->e != NULL) {
		pthread_mutex_lock(&w->e->mu);
		for (pp = &w->e->watches; *pp != NULL; pp = &(*pp)->next) {
			if (*pp == w) {
				*pp = w->next;
				break;
			}
		}
		pthread_mutex_unlock(&w->e->mu);
	}
	etcd_thread_destroy(&w->t);
	free(w->key.data);
	free(w->end.data);
	free(w);
}
