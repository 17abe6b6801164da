/*
 * fe_watch: the frontend's watch hub (see fe_watch.h).
 *
 * One entry per watched user, in a hash table under one mutex. The watch
 * thread alone opens, cancels and re-opens streams and frees entries;
 * subscribe and unsubscribe only change an entry's subscriber count, put
 * it on the thread's "dirty" list and signal. Streams are asynchronous
 * (mp_rpc_astream) on one completion queue of our own: its thread only
 * bumps generations (on_msg, atomics, no lock) and hands ended streams
 * back to the watch thread (on_end, under the mutex). So thousands of
 * users cost no thread each, and nothing here ever waits on the network.
 *
 * The watch thread sleeps on a condition variable until it is signalled,
 * a re-open's backoff is due, or the once-a-second leader check: when the
 * shard map's revision moved, every open stream whose shard now has
 * another leader is cancelled and re-opened there at once (the old leader
 * stays silent about writes it no longer takes, so its stream must not be
 * trusted even while it stays open).
 *
 * Never: block subscribe/unsubscribe on the network or on the watch
 * thread's work; call into a session; free an entry while a stream or a
 * subscriber still points to it.
 */
#include "fe_watch.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mailstore.pb-c.h"
#include "mp_error.h"
#include "mp_log.h"
#include "mp_route.h"
#include "mp_rpc.h"
#include "mp_shard.h"
#include "mp_shardmap.h"

#define WATCH_PATH "/merpati.v1.MailStore/Watch"
#define WATCH_BUCKETS 4096           /* power of two */
#define WATCH_BACKOFF_MIN_MS 100
#define WATCH_BACKOFF_MAX_MS 2000
#define WATCH_LEADER_CHECK_MS 1000
#define WATCH_NEVER INT64_MAX

struct watch_entry {
	struct watch_entry *hnext;          /* hash chain; w->mu */
	struct watch_entry *dnext;          /* dirty list; w->mu */
	struct watch_entry *wprev, *wnext;  /* waiting list; w->mu */
	struct fe_watch *w;                 /* borrowed */
	_Atomic uint64_t gen;
	atomic_bool ready;                  /* st delivered WATCH_READY */
	/* Under w->mu. */
	unsigned refs;                      /* subscribers */
	bool dirty, waiting;
	struct mp_rpc_astream *st;          /* owned handle; NULL: none */
	struct mp_rpc_channel *ch;          /* borrowed (route): st's node */
	uint32_t shard;                     /* st's shard */
	bool ended;                         /* st's on_end has run */
	bool cancelled;                     /* we cancelled st */
	bool reopen_now;                    /* ... and want it back at once */
	int64_t retry_at;                   /* no stream: open then */
	int64_t backoff_ms;                 /* next failure's wait */
	char user[];                        /* owned: normalised address */
};

struct fe_watch_sub {
	struct watch_entry *e;              /* counted in e->refs */
};

struct fe_watch {
	struct mp_route *route;             /* borrowed */
	struct mp_rpc_cq *cq;               /* owned */
	pthread_t thread;
	bool thread_started;
	atomic_uint streams;                /* opened, on_end not yet run */

	pthread_mutex_t mu;
	pthread_cond_t cond;                /* CLOCK_MONOTONIC */
	bool stop;                          /* under mu */
	struct watch_entry *buckets[WATCH_BUCKETS]; /* owned; under mu */
	size_t n_entries;                   /* under mu */
	struct watch_entry *dirty;          /* under mu */
	struct watch_entry *waiting;        /* under mu */
	/* Watch thread only. */
	int64_t next_retry;                 /* earliest retry_at in waiting */
	int64_t next_check;                 /* next leader check */
	int64_t checked_rev;                /* map revision of the last one */
};

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static size_t user_bucket(const char *user)
{
	uint64_t h = 1469598103934665603ull;

	for (; *user != '\0'; user++)
		h = (h ^ (uint8_t)*user) * 1099511628211ull;
	return (size_t)(h & (WATCH_BUCKETS - 1));
}

/* ------------------------------------------------------ lists (w->mu) */

static void mark_dirty(struct fe_watch *w, struct watch_entry *e)
{
	if (e->dirty)
		return;
	e->dirty = true;
	e->dnext = w->dirty;
	w->dirty = e;
	pthread_cond_signal(&w->cond);
}

static void waiting_add(struct fe_watch *w, struct watch_entry *e)
{
	if (!e->waiting) {
		e->waiting = true;
		e->wprev = NULL;
		e->wnext = w->waiting;
		if (e->wnext != NULL)
			e->wnext->wprev = e;
		w->waiting = e;
	}
	if (e->retry_at < w->next_retry)
		w->next_retry = e->retry_at;
}

static void waiting_del(struct fe_watch *w, struct watch_entry *e)
{
	if (!e->waiting)
		return;
	if (e->wprev != NULL)
		e->wprev->wnext = e->wnext;
	else
		w->waiting = e->wnext;
	if (e->wnext != NULL)
		e->wnext->wprev = e->wprev;
	e->waiting = false;
	e->wprev = e->wnext = NULL;
}

static struct watch_entry *entry_find(struct fe_watch *w, const char *user,
				      size_t b)
{
	for (struct watch_entry *e = w->buckets[b]; e != NULL; e = e->hnext)
		if (strcmp(e->user, user) == 0)
			return e;
	return NULL;
}

static void entry_unhash_free(struct fe_watch *w, struct watch_entry *e)
{
	struct watch_entry **pp = &w->buckets[user_bucket(e->user)];

	while (*pp != NULL && *pp != e)
		pp = &(*pp)->hnext;
	if (*pp == e)
		*pp = e->hnext;
	w->n_entries--;
	free(e);
}

/* ------------------------------------ stream callbacks (queue thread) */

static void watch_on_msg(ProtobufCMessage *msg, void *arg)
{
	struct watch_entry *e = arg;
	const Merpati__V1__WatchEvent *ev = (const void *)msg;

	/* The first READY takes the generation from 0 to 1: before it, no
	 * stream was ever known to be watching. */
	if (ev->kind == MERPATI__V1__WATCH_KIND__WATCH_READY)
		atomic_store(&e->ready, true);
	atomic_fetch_add(&e->gen, 1);
	protobuf_c_message_free_unpacked(msg, NULL);
}

static void watch_on_end(int err, const char *error, void *arg)
{
	struct watch_entry *e = arg;
	struct fe_watch *w = e->w;

	/* Events may be missed until the re-open's READY: say so now, so
	 * sessions resynchronise rather than trust a dead stream. Only this
	 * thread (on_msg, on_end) changes gen, so load-then-add is exact. */
	if (atomic_load(&e->gen) > 0)
		atomic_fetch_add(&e->gen, 1);
	atomic_fetch_sub(&w->streams, 1);
	if (err != MP_ECANCELED)
		mp_log_debug("watch_stream_ended", "err=%s msg=\"%s\"",
			     err == 0 ? "OK" : mp_strerror(err),
			     error != NULL ? error : "");
	pthread_mutex_lock(&w->mu);
	e->ended = true;
	mark_dirty(w, e);
	pthread_mutex_unlock(&w->mu);
}

/* ---------------------------------------------- the watch thread's work */

static void schedule_retry(struct fe_watch *w, struct watch_entry *e,
			   int64_t now, int64_t delay)
{
	e->retry_at = now + delay;
	waiting_add(w, e);
}

/* A failure's wait: the current backoff, which then doubles. */
static int64_t next_backoff(struct watch_entry *e)
{
	int64_t d = e->backoff_ms;

	e->backoff_ms = d * 2 < WATCH_BACKOFF_MAX_MS ? d * 2
						      : WATCH_BACKOFF_MAX_MS;
	return d;
}

/* w->mu held; nothing here waits on the network (opening a channel or a
 * stream only starts things). */
static void entry_open(struct fe_watch *w, struct watch_entry *e, int64_t now)
{
	Merpati__V1__WatchRequest req = MERPATI__V1__WATCH_REQUEST__INIT;
	struct mp_rpc_channel *ch = NULL;
	const char *why = NULL;
	uint32_t shard = 0;
	int ret;

	ret = mp_route_shard_of(w->route, e->user, &shard, &why);
	if (ret == 0)
		ret = mp_route_leader_channel(w->route, shard, &ch);
	if (ret == 0) {
		req.user = e->user;
		atomic_store(&e->ready, false);
		ret = mp_rpc_astream_open(ch, w->cq, WATCH_PATH, &req.base,
					  &merpati__v1__watch_event__descriptor,
					  0, watch_on_msg, watch_on_end, e,
					  &e->st);
	}
	if (ret < 0) {
		int64_t d = next_backoff(e);

		mp_log_debug("watch_open_failed", "err=%s why=\"%s\" retry_ms=%lld",
			     mp_strerror(ret), why != NULL ? why : "",
			     (long long)d);
		schedule_retry(w, e, now, d);
		return;
	}
	atomic_fetch_add(&w->streams, 1);
	e->ch = ch;
	e->shard = shard;
	e->ended = e->cancelled = e->reopen_now = false;
}

static void entry_cancel(struct watch_entry *e, bool reopen_now)
{
	if (e->cancelled)
		return;
	e->cancelled = true;
	e->reopen_now = reopen_now;
	mp_rpc_astream_cancel(e->st);
}

/* Bring one entry in line with its subscribers and its stream. w->mu. */
static void entry_step(struct fe_watch *w, struct watch_entry *e, int64_t now)
{
	if (e->st != NULL) {
		if (!e->ended) {
			if (e->refs == 0)
				entry_cancel(e, true);
			return; /* on_end will bring it back here */
		}
		/* The stream is over (its generation bump is done). */
		bool worked = atomic_load(&e->ready);
		int64_t d;

		mp_rpc_astream_release(&e->st);
		e->ch = NULL;
		if (e->reopen_now) {
			/* Ended by us (leader moved, or unsubscribed and
			 * subscribed again meanwhile): back at once. */
			e->backoff_ms = WATCH_BACKOFF_MIN_MS;
			d = 0;
		} else {
			/* A stream that was watching ended: a new trouble,
			 * so the backoff starts over. */
			if (worked)
				e->backoff_ms = WATCH_BACKOFF_MIN_MS;
			d = next_backoff(e);
		}
		e->ended = e->cancelled = e->reopen_now = false;
		e->retry_at = now + d;
	}
	if (e->refs == 0) {
		waiting_del(w, e);
		entry_unhash_free(w, e);
		return;
	}
	if (e->retry_at <= now) {
		waiting_del(w, e);
		entry_open(w, e, now);
	} else {
		waiting_add(w, e);
	}
}

static void process_dirty(struct fe_watch *w, int64_t now)
{
	/* Bounded: each entry is on the list at most once, and entries
	 * dirtied while we work (on_end, subscribe) wait for the next turn. */
	struct watch_entry *list = w->dirty;

	w->dirty = NULL;
	while (list != NULL) {
		struct watch_entry *e = list;

		list = e->dnext;
		e->dnext = NULL;
		e->dirty = false;
		entry_step(w, e, now);
	}
}

static void process_waiting(struct fe_watch *w, int64_t now)
{
	struct watch_entry *e, *next;

	if (now < w->next_retry)
		return;
	w->next_retry = WATCH_NEVER;
	for (e = w->waiting; e != NULL; e = next) {
		next = e->wnext;
		if (e->retry_at <= now) {
			waiting_del(w, e);
			entry_open(w, e, now);
		} else if (e->retry_at < w->next_retry) {
			w->next_retry = e->retry_at;
		}
	}
	/* entry_open may have put entries back with later times. */
	for (e = w->waiting; e != NULL; e = e->wnext)
		if (e->retry_at < w->next_retry)
			w->next_retry = e->retry_at;
}

/* Follow leader changes: only when the map moved since the last look. */
static void check_leaders(struct fe_watch *w)
{
	struct mp_shardmap *m = mp_route_map(w->route);
	int64_t rev;
	unsigned moved = 0;

	pthread_mutex_lock(&m->mu);
	rev = m->revision;
	pthread_mutex_unlock(&m->mu);
	if (rev == w->checked_rev)
		return;
	w->checked_rev = rev;
	for (size_t b = 0; b < WATCH_BUCKETS; b++) {
		for (struct watch_entry *e = w->buckets[b]; e != NULL;
		     e = e->hnext) {
			struct mp_rpc_channel *ch = NULL;
			int ret;

			if (e->st == NULL || e->ended || e->cancelled)
				continue;
			ret = mp_route_leader_channel(w->route, e->shard, &ch);
			if (ret == 0 && ch == e->ch)
				continue;
			/* A new leader: there at once. None known: the
			 * usual backoff until the map names one. */
			entry_cancel(e, ret == 0);
			moved++;
		}
	}
	if (moved > 0)
		mp_log_info("watch_leaders_moved", "streams=%u rev=%lld", moved,
			    (long long)rev);
}

static void *watch_main(void *arg)
{
	struct fe_watch *w = arg;

	pthread_mutex_lock(&w->mu);
	while (!w->stop) {
		int64_t now = now_ms(), wake;
		struct timespec ts;

		process_dirty(w, now);
		process_waiting(w, now);
		if (now >= w->next_check) {
			check_leaders(w);
			w->next_check = now + WATCH_LEADER_CHECK_MS;
		}
		if (w->dirty != NULL)
			continue;
		wake = w->next_retry < w->next_check ? w->next_retry
						     : w->next_check;
		ts.tv_sec = wake / 1000;
		ts.tv_nsec = (long)(wake % 1000) * 1000000;
		(void)pthread_cond_timedwait(&w->cond, &w->mu, &ts);
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

/* ------------------------------------------------------------- the API */

static void watch_free(struct fe_watch *w)
{
	size_t held = 0;

	for (size_t b = 0; b < WATCH_BUCKETS; b++) {
		while (w->buckets[b] != NULL) {
			struct watch_entry *e = w->buckets[b];

			w->buckets[b] = e->hnext;
			held += e->refs;
			/* The queue is stopped: every on_end has run. */
			mp_rpc_astream_release(&e->st);
			free(e);
		}
	}
	if (held > 0)
		mp_log_warn("watch_stop_with_subscribers", "subs=%zu", held);
	pthread_cond_destroy(&w->cond);
	pthread_mutex_destroy(&w->mu);
	free(w);
}

int fe_watch_start(struct mp_route *route, struct fe_watch **w_r,
		   char **error_r)
{
	struct fe_watch *w;
	pthread_condattr_t ca;
	int ret;

	*w_r = NULL;
	if (error_r != NULL)
		*error_r = NULL;
	if (route == NULL)
		return MP_EINVAL;
	w = calloc(1, sizeof(*w));
	if (w == NULL)
		return MP_ENOMEM;
	w->route = route;
	w->next_retry = WATCH_NEVER;
	w->checked_rev = -1;
	atomic_init(&w->streams, 0);
	pthread_mutex_init(&w->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&w->cond, &ca);
	pthread_condattr_destroy(&ca);
	ret = mp_rpc_cq_start(&w->cq);
	if (ret < 0) {
		if (error_r != NULL)
			*error_r = strdup("cannot start the watch completion queue");
		watch_free(w);
		return ret;
	}
	if (pthread_create(&w->thread, NULL, watch_main, w) != 0) {
		if (error_r != NULL)
			*error_r = strdup("cannot start the watch thread");
		mp_rpc_cq_stop(&w->cq);
		watch_free(w);
		return MP_ENOMEM;
	}
	w->thread_started = true;
	*w_r = w;
	return 0;
}

void fe_watch_stop(struct fe_watch **wp)
{
	struct fe_watch *w = wp != NULL ? *wp : NULL;

	if (w == NULL)
		return;
	*wp = NULL;
	pthread_mutex_lock(&w->mu);
	w->stop = true;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->mu);
	if (w->thread_started)
		pthread_join(w->thread, NULL);
	/* Cancels every stream and runs every on_end (which still takes
	 * w->mu) before it returns. */
	mp_rpc_cq_stop(&w->cq);
	watch_free(w);
}

struct fe_watch_sub *fe_watch_subscribe(struct fe_watch *w, const char *user)
{
	struct fe_watch_sub *s;
	struct watch_entry *e;
	size_t len, b;

	if (w == NULL || user == NULL)
		return NULL;
	/* Normalised addresses fit; anything longer is not one. */
	len = strnlen(user, MP_USER_MAX + 1);
	if (len == 0 || len > MP_USER_MAX)
		return NULL;
	s = malloc(sizeof(*s));
	if (s == NULL)
		return NULL;
	b = user_bucket(user);
	pthread_mutex_lock(&w->mu);
	e = entry_find(w, user, b);
	if (e == NULL) {
		e = calloc(1, sizeof(*e) + len + 1);
		if (e == NULL) {
			pthread_mutex_unlock(&w->mu);
			free(s);
			return NULL;
		}
		e->w = w;
		atomic_init(&e->gen, 0);
		atomic_init(&e->ready, false);
		e->backoff_ms = WATCH_BACKOFF_MIN_MS;
		memcpy(e->user, user, len + 1);
		e->hnext = w->buckets[b];
		w->buckets[b] = e;
		w->n_entries++;
	}
	e->refs++;
	mark_dirty(w, e);
	pthread_mutex_unlock(&w->mu);
	s->e = e;
	return s;
}

void fe_watch_unsubscribe(struct fe_watch_sub **sp)
{
	struct fe_watch_sub *s = sp != NULL ? *sp : NULL;
	struct fe_watch *w;

	if (s == NULL)
		return;
	*sp = NULL;
	w = s->e->w;
	pthread_mutex_lock(&w->mu);
	if (--s->e->refs == 0)
		mark_dirty(w, s->e);
	pthread_mutex_unlock(&w->mu);
	free(s);
}

uint64_t fe_watch_gen(const struct fe_watch_sub *s)
{
	return s != NULL ? atomic_load(&s->e->gen) : 0;
}

unsigned fe_watch_streams(struct fe_watch *w)
{
	return w != NULL ? atomic_load(&w->streams) : 0;
}
