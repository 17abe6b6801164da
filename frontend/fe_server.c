/*
 * fe_server: event loops, listeners, connections and the worker pool of
 * merpati-frontend (see fe_server.h).
 *
 * Lifetimes: a connection belongs to the loop that accepted it. Closing it
 * frees the bufferevent at once (the socket closes) but the struct and the
 * protocol session stay until no job is in flight and the current callback
 * chain has returned (the "reap" event), so no callback ever runs on freed
 * memory.
 *
 * Never: call into a connection from a thread other than its loop's; block
 * a loop; keep accepting after a stop began.
 */
#include "fe_server.h"

#include "fe_deflate.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>

#include "fe_tls.h"
#include "mp_error.h"
#include "mp_log.h"

#define FE_MAX_LISTENERS 16
#define FE_MAX_LOOPS 64
#define FE_IP_BUCKETS 1024
/* Input read ahead of the protocol: libevent stops reading from a socket
 * whose input buffer holds this much (a client pipelining while its
 * session waits for a job cannot make us buffer more). */
#define FE_INPUT_HIGH_WATER (256u * 1024u)

struct fe_listener {
	struct fe_listener_conf conf;  /* addr owned (strdup) */
	int fd;                         /* owned; each loop watches a dup */
};

struct fe_loop_listener {
	struct fe_loop *loop;         /* borrowed */
	struct fe_listener *lis;      /* borrowed */
	struct evconnlistener *evl;   /* owned */
};

struct fe_loop {
	struct fe_server *srv;         /* borrowed */
	unsigned index;
	struct event_base *base;       /* owned */
	struct event *wake;            /* owned */
	pthread_t thread;
	bool started;

	pthread_mutex_t mu;            /* guards the fields below */
	struct fe_job *done_head, *done_tail;
	bool want_shutdown, want_quit;

	/* loop thread only */
	bool shut, quitting;
	struct fe_loop_listener ll[FE_MAX_LISTENERS];
	size_t nll;
	struct fe_conn *conns;         /* list of live connections */
};

struct fe_ip_count {
	struct fe_ip_count *next;
	uint64_t n;
	char ip[INET6_ADDRSTRLEN];
};

struct fe_server {
	struct fe_server_conf conf;
	struct fe_loop loops[FE_MAX_LOOPS];
	unsigned nloops;
	struct fe_listener lis[FE_MAX_LISTENERS];
	size_t nlis;

	pthread_t *workers;            /* owned */
	unsigned nworkers;
	pthread_mutex_t wmu;
	pthread_cond_t wcond;
	struct fe_job *whead, *wtail;
	bool wstop;

	pthread_mutex_t ipmu;
	struct fe_ip_count *ipb[FE_IP_BUCKETS];

	atomic_uint_fast64_t nconns;
	atomic_uint_fast64_t next_id;
	atomic_bool stopping;
	bool started;
};

struct fe_conn {
	struct fe_loop *loop;          /* borrowed */
	struct fe_listener *lis;       /* borrowed */
	struct bufferevent *bev;       /* owned; NULL once closed */
	void *sess;                    /* owned by the protocol */
	struct event *idle_ev, *total_ev, *reap_ev, *kick_ev, *flush_ev;  /* owned */
	bool compressed;               /* COMPRESS=DEFLATE filter on top */
	struct fe_conn *prev, *next;
	uint64_t idle_ms;
	unsigned jobs;
	bool closed, flushing, paused, tls, counted;
	char peer_ip[INET6_ADDRSTRLEN];
	uint16_t peer_port;
	char id[24];
	char tls_info[192];
};

static void conn_reap_cb(evutil_socket_t fd, short what, void *arg);
static void conn_kick_cb(evutil_socket_t fd, short what, void *arg);

/* ------------------------------------------------------------ helpers */

static uint64_t ip_hash(const char *ip)
{
	uint64_t h = 1469598103934665603ull;
	for (; *ip != '\0'; ip++)
		h = (h ^ (uint8_t)*ip) * 1099511628211ull;
	return h;
}

/* Count a connection from ip; false when over the per-IP limit. */
static bool ip_take(struct fe_server *s, const char *ip)
{
	bool ok = true;
	size_t b = ip_hash(ip) % FE_IP_BUCKETS;
	pthread_mutex_lock(&s->ipmu);
	struct fe_ip_count *e = s->ipb[b];
	while (e != NULL && strcmp(e->ip, ip) != 0)
		e = e->next;
	if (e == NULL) {
		e = calloc(1, sizeof(*e));
		if (e == NULL) {
			ok = false;
		} else {
			snprintf(e->ip, sizeof(e->ip), "%s", ip);
			e->next = s->ipb[b];
			s->ipb[b] = e;
		}
	}
	if (ok && s->conf.max_per_ip != 0 && e->n >= s->conf.max_per_ip)
		ok = false;
	if (ok)
		e->n++;
	pthread_mutex_unlock(&s->ipmu);
	return ok;
}

static void ip_release(struct fe_server *s, const char *ip)
{
	size_t b = ip_hash(ip) % FE_IP_BUCKETS;
	pthread_mutex_lock(&s->ipmu);
	struct fe_ip_count **pp = &s->ipb[b];
	while (*pp != NULL && strcmp((*pp)->ip, ip) != 0)
		pp = &(*pp)->next;
	if (*pp != NULL && --(*pp)->n == 0) {
		struct fe_ip_count *e = *pp;
		*pp = e->next;
		free(e);
	}
	pthread_mutex_unlock(&s->ipmu);
}

/* "host:port", "[v6]:port" → sockaddr. */
static int parse_addr(const char *addr, struct sockaddr_storage *ss,
		      socklen_t *len_r, const char **error_r)
{
	char host[128];
	const char *port;
	memset(ss, 0, sizeof(*ss));
	if (addr[0] == '[') {
		const char *end = strchr(addr, ']');
		if (end == NULL || end[1] != ':' || (size_t)(end - addr - 1) >= sizeof(host)) {
			*error_r = "bad address: expected [v6]:port";
			return MP_EINVAL;
		}
		memcpy(host, addr + 1, (size_t)(end - addr - 1));
		host[end - addr - 1] = '\0';
		port = end + 2;
	} else {
		const char *colon = strrchr(addr, ':');
		if (colon == NULL || (size_t)(colon - addr) >= sizeof(host)) {
			*error_r = "bad address: expected host:port";
			return MP_EINVAL;
		}
		memcpy(host, addr, (size_t)(colon - addr));
		host[colon - addr] = '\0';
		port = colon + 1;
	}
	char *end = NULL;
	errno = 0;
	unsigned long p = strtoul(port, &end, 10);
	if (errno != 0 || end == port || *end != '\0' || p > 65535) {
		*error_r = "bad port";
		return MP_EINVAL;
	}
	struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons((uint16_t)p);
		*len_r = sizeof(*in4);
	} else if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)p);
		*len_r = sizeof(*in6);
	} else {
		*error_r = "bad address: host must be an IPv4 or IPv6 literal";
		return MP_EINVAL;
	}
	return 0;
}

/* ------------------------------------------------------------ workers */

static void *worker_main(void *arg)
{
	struct fe_server *s = arg;
	for (;;) {
		pthread_mutex_lock(&s->wmu);
		while (s->whead == NULL && !s->wstop)
			pthread_cond_wait(&s->wcond, &s->wmu);
		struct fe_job *j = s->whead;
		if (j == NULL) {  /* stopping and drained */
			pthread_mutex_unlock(&s->wmu);
			return NULL;
		}
		s->whead = j->next;
		if (s->whead == NULL)
			s->wtail = NULL;
		pthread_mutex_unlock(&s->wmu);

		j->run(j);

		struct fe_loop *l = j->conn->loop;
		j->next = NULL;
		pthread_mutex_lock(&l->mu);
		if (l->done_tail != NULL)
			l->done_tail->next = j;
		else
			l->done_head = j;
		l->done_tail = j;
		pthread_mutex_unlock(&l->mu);
		event_active(l->wake, EV_READ, 0);
	}
}

void fe_conn_submit(struct fe_conn *c, struct fe_job *j)
{
	struct fe_server *s = c->loop->srv;
	j->conn = c;
	j->next = NULL;
	c->jobs++;
	pthread_mutex_lock(&s->wmu);
	if (s->wtail != NULL)
		s->wtail->next = j;
	else
		s->whead = j;
	s->wtail = j;
	pthread_cond_signal(&s->wcond);
	pthread_mutex_unlock(&s->wmu);
}

/* -------------------------------------------------------- connections */

static void conn_free(struct fe_conn *c)
{
	struct fe_loop *l = c->loop;
	if (c->sess != NULL && c->lis->conf.proto->free != NULL)
		c->lis->conf.proto->free(c->sess);
	c->sess = NULL;
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		l->conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	if (c->idle_ev != NULL)
		event_free(c->idle_ev);
	if (c->total_ev != NULL)
		event_free(c->total_ev);
	if (c->reap_ev != NULL)
		event_free(c->reap_ev);
	if (c->kick_ev != NULL)
		event_free(c->kick_ev);
	if (c->flush_ev != NULL)
		event_free(c->flush_ev);
	free(c);
	if (l->quitting && l->conns == NULL)
		event_base_loopexit(l->base, NULL);
}

void fe_conn_close(struct fe_conn *c)
{
	if (c->closed)
		return;
	c->closed = true;
	if (c->bev != NULL) {
		bufferevent_free(c->bev);
		c->bev = NULL;
	}
	event_del(c->idle_ev);
	if (c->total_ev != NULL)
		event_del(c->total_ev);
	if (c->flush_ev != NULL)
		event_del(c->flush_ev);
	if (c->counted) {
		atomic_fetch_sub(&c->loop->srv->nconns, 1);
		ip_release(c->loop->srv, c->peer_ip);
		c->counted = false;
	}
	mp_log_debug("conn_closed", "conn=%s", c->id);
	/* Freed from the reap event, after the callback chain that closed us
	 * has returned, and only when no job is in flight. */
	event_active(c->reap_ev, EV_READ, 0);
}

static void conn_reap_cb(evutil_socket_t fd, short what, void *arg)
{
	struct fe_conn *c = arg;
	(void)fd;
	(void)what;
	if (c->closed && c->jobs == 0)
		conn_free(c);
}

static void conn_kick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct fe_conn *c = arg;
	(void)fd;
	(void)what;
	if (!c->closed && !c->paused && !c->flushing &&
	    evbuffer_get_length(bufferevent_get_input(c->bev)) > 0)
		c->lis->conf.proto->on_input(c->sess);
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
	struct fe_conn *c = arg;
	(void)bev;
	if (c->closed)
		return;
	if (c->flushing) {  /* closing: input is ignored */
		evbuffer_drain(bufferevent_get_input(c->bev),
			       evbuffer_get_length(bufferevent_get_input(c->bev)));
		return;
	}
	if (c->idle_ms != 0) {
		struct timeval tv = { (time_t)(c->idle_ms / 1000),
				      (suseconds_t)(c->idle_ms % 1000) * 1000 };
		event_add(c->idle_ev, &tv);
	}
	if (!c->paused)
		c->lis->conf.proto->on_input(c->sess);
}

/* Output not yet on the socket: a STARTTLS filter holds encrypted bytes
 * in the plaintext bufferevent beneath it. */
static size_t conn_pending(struct fe_conn *c)
{
	size_t n = evbuffer_get_length(bufferevent_get_output(c->bev));
	struct bufferevent *under = bufferevent_get_underlying(c->bev);
	if (under != NULL)
		n += evbuffer_get_length(bufferevent_get_output(under));
	return n;
}

/* Close once everything is on the socket. The filter's write callback
 * fires when its own buffer drains, not the one beneath: look again
 * shortly while bytes are left there. */
static void conn_flush_check(struct fe_conn *c)
{
	if (c->closed || !c->flushing)
		return;
	if (conn_pending(c) == 0) {
		fe_conn_close(c);
		return;
	}
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
		struct timeval tv = { 0, 20000 };
		event_add(c->flush_ev, &tv);
	}
}

static void conn_flush_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	conn_flush_check(arg);
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	conn_flush_check(arg);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct fe_conn *c = arg;
	(void)bev;
	if (c->closed)
		return;
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
		mp_log_debug("conn_eof", "conn=%s what=0x%x", c->id, (unsigned)what);
		fe_conn_close(c);
	}
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg, bool total)
{
	struct fe_conn *c = arg;
	(void)fd;
	(void)what;
	if (c->closed)
		return;
	if (c->flushing) {  /* the client did not take its last replies */
		fe_conn_close(c);
		return;
	}
	mp_log_info("conn_timeout", "conn=%s ip=%s total=%d", c->id, c->peer_ip, total);
	if (!c->flushing && c->lis->conf.proto->on_timeout != NULL)
		c->lis->conf.proto->on_timeout(c->sess, total);
	if (!c->flushing)
		fe_conn_close_flush(c);
}

static void conn_idle_cb(evutil_socket_t fd, short what, void *arg)
{
	conn_timer_cb(fd, what, arg, false);
}

static void conn_total_cb(evutil_socket_t fd, short what, void *arg)
{
	conn_timer_cb(fd, what, arg, true);
}

static void conn_setup_bev(struct fe_conn *c)
{
	bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
	bufferevent_setwatermark(c->bev, EV_READ, 0, FE_INPUT_HIGH_WATER);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

static void accept_cb(struct evconnlistener *evl, evutil_socket_t fd,
		      struct sockaddr *sa, int salen, void *arg)
{
	struct fe_loop_listener *ll = arg;
	struct fe_loop *l = ll->loop;
	struct fe_server *s = l->srv;
	char ip[INET6_ADDRSTRLEN] = "?";
	uint16_t port = 0;
	(void)evl;
	(void)salen;

	if (sa->sa_family == AF_INET) {
		struct sockaddr_in *in4 = (struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &in4->sin_addr, ip, sizeof(ip));
		port = ntohs(in4->sin_port);
	} else if (sa->sa_family == AF_INET6) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
		port = ntohs(in6->sin6_port);
	}
	if (atomic_load(&s->stopping) || l->shut) {
		evutil_closesocket(fd);
		return;
	}
	uint64_t n = atomic_fetch_add(&s->nconns, 1) + 1;
	bool over_total = s->conf.max_connections != 0 && n > s->conf.max_connections;
	bool ip_ok = !over_total && ip_take(s, ip);
	if (over_total || !ip_ok) {
		atomic_fetch_sub(&s->nconns, 1);
		mp_log_warn("conn_refused", "ip=%s listener=%s reason=%s", ip,
			    ll->lis->conf.addr, over_total ? "max_connections" : "max_per_ip");
		/* A best-effort one-line refusal on plaintext listeners; the
		 * socket is non-blocking, so this never waits. */
		const char *busy = ll->lis->conf.proto->busy;
		if (ll->lis->conf.tls == FE_TLS_NONE && busy != NULL) {
			ssize_t w = send(fd, busy, strlen(busy), MSG_NOSIGNAL | MSG_DONTWAIT);
			(void)w;
		}
		evutil_closesocket(fd);
		return;
	}

	/* Replies are small and often written a few at a time (pipelining):
	 * without this, Nagle's algorithm meets the client's delayed ACK and
	 * each exchange waits ~40 ms. */
	int one = 1;
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
		mp_log_debug("conn_nodelay_failed", "ip=%s", ip);
	struct fe_conn *c = calloc(1, sizeof(*c));
	if (c == NULL) {
		atomic_fetch_sub(&s->nconns, 1);
		ip_release(s, ip);
		evutil_closesocket(fd);
		return;
	}
	c->counted = true;
	c->loop = l;
	c->lis = ll->lis;
	c->peer_port = port;
	snprintf(c->peer_ip, sizeof(c->peer_ip), "%s", ip);
	snprintf(c->id, sizeof(c->id), "%u.%llu", l->index,
		 (unsigned long long)atomic_fetch_add(&s->next_id, 1));
	c->idle_ms = s->conf.idle_timeout_ms;
	c->idle_ev = evtimer_new(l->base, conn_idle_cb, c);
	c->reap_ev = event_new(l->base, -1, 0, conn_reap_cb, c);
	c->kick_ev = event_new(l->base, -1, 0, conn_kick_cb, c);
	c->flush_ev = evtimer_new(l->base, conn_flush_cb, c);
	if (s->conf.session_timeout_ms != 0)
		c->total_ev = evtimer_new(l->base, conn_total_cb, c);
	if (ll->lis->conf.tls == FE_TLS_IMPLICIT) {
		c->bev = fe_tls_bev_accept(s->conf.tls, l->base, fd);  /* owns fd */
		c->tls = true;
	} else {
		c->bev = bufferevent_socket_new(l->base, fd,
						BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
		if (c->bev == NULL)
			evutil_closesocket(fd);
	}
	/* Link first, so conn_free's unlink is right on every path. */
	c->next = l->conns;
	if (l->conns != NULL)
		l->conns->prev = c;
	l->conns = c;
	if (c->bev == NULL || c->idle_ev == NULL || c->reap_ev == NULL ||
	    c->kick_ev == NULL || c->flush_ev == NULL || (s->conf.session_timeout_ms != 0 && c->total_ev == NULL)) {
		mp_log_error("conn_setup_failed", "ip=%s", ip);
		if (c->reap_ev == NULL) {  /* cannot defer: nothing else ran yet */
			if (c->bev != NULL)
				bufferevent_free(c->bev);
			atomic_fetch_sub(&s->nconns, 1);
			ip_release(s, ip);
			c->counted = false;
			c->bev = NULL;
			conn_free(c);
		} else {
			fe_conn_close(c);
		}
		return;
	}
	conn_setup_bev(c);
	if (c->total_ev != NULL) {
		struct timeval tv = { (time_t)(s->conf.session_timeout_ms / 1000),
				      (suseconds_t)(s->conf.session_timeout_ms % 1000) * 1000 };
		event_add(c->total_ev, &tv);
	}
	fe_conn_set_idle_timeout(c, c->idle_ms);
	mp_log_debug("conn_open", "conn=%s ip=%s port=%u listener=%s", c->id, ip,
		     (unsigned)port, ll->lis->conf.addr);
	c->sess = ll->lis->conf.proto->open(c, ll->lis->conf.proto_ctx);
	if (c->sess == NULL)
		fe_conn_close(c);
}

struct evbuffer *fe_conn_input(struct fe_conn *c)
{
	return bufferevent_get_input(c->bev);
}

int fe_conn_write(struct fe_conn *c, const void *data, size_t len)
{
	if (c->closed)
		return MP_ESTATE;
	struct evbuffer *out = bufferevent_get_output(c->bev);
	uint64_t max = c->loop->srv->conf.max_output;
	if (max != 0 && evbuffer_get_length(out) + len > max)
		return MP_ENOSPC;
	return evbuffer_add(out, data, len) == 0 ? 0 : MP_ENOMEM;
}

static void free_taken(const void *data, size_t len, void *arg)
{
	(void)data;
	(void)len;
	free(arg);
}

int fe_conn_write_take(struct fe_conn *c, char *data, size_t len)
{
	if (c->closed) {
		free(data);
		return MP_ESTATE;
	}
	struct evbuffer *out = bufferevent_get_output(c->bev);
	if (evbuffer_add_reference(out, data, len, free_taken, data) != 0) {
		free(data);
		return MP_ENOMEM;
	}
	return 0;
}

int fe_conn_printf(struct fe_conn *c, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		return MP_EINVAL;
	if ((size_t)n >= sizeof(buf))
		n = (int)sizeof(buf) - 1;  /* replies are short; truncation is a bug */
	return fe_conn_write(c, buf, (size_t)n);
}

size_t fe_conn_output_len(struct fe_conn *c)
{
	return c->closed ? 0 : evbuffer_get_length(bufferevent_get_output(c->bev));
}

void fe_conn_pause(struct fe_conn *c)
{
	c->paused = true;
}

void fe_conn_resume(struct fe_conn *c)
{
	if (!c->paused)
		return;
	c->paused = false;
	/* Input that arrived while paused raised no new read event: run the
	 * protocol again from the event loop, not from inside our caller. */
	if (!c->closed)
		event_active(c->kick_ev, EV_READ, 0);
}

void fe_conn_kick(struct fe_conn *c)
{
	if (!c->closed)
		event_active(c->kick_ev, EV_READ, 0);
}

void fe_conn_close_flush(struct fe_conn *c)
{
	if (c->closed || c->flushing)
		return;
	c->flushing = true;
	/* A client that never reads cannot keep us: bound the flush. */
	struct timeval tv = { 10, 0 };
	bufferevent_set_timeouts(c->bev, NULL, &tv);
	event_del(c->idle_ev);
	event_add(c->idle_ev, &tv);
	conn_flush_check(c);
}

bool fe_conn_closed(const struct fe_conn *c)
{
	return c->closed || c->flushing;
}

void fe_conn_set_idle_timeout(struct fe_conn *c, uint64_t ms)
{
	c->idle_ms = ms;
	if (c->closed)
		return;
	if (ms == 0) {
		event_del(c->idle_ev);
		return;
	}
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
	event_add(c->idle_ev, &tv);
}

int fe_conn_starttls(struct fe_conn *c)
{
	struct fe_server *s = c->loop->srv;
	if (s->conf.tls == NULL)
		return MP_EUNAVAIL;
	if (c->closed || c->tls)
		return MP_ESTATE;
	struct evbuffer *in = bufferevent_get_input(c->bev);
	evbuffer_drain(in, evbuffer_get_length(in));
	struct bufferevent *tb = fe_tls_bev_starttls(s->conf.tls, c->loop->base, c->bev);
	if (tb == NULL)
		return MP_EIO;
	c->bev = tb;  /* owns the plaintext one now */
	c->tls = true;
	c->tls_info[0] = '\0';
	conn_setup_bev(c);
	return 0;
}

int fe_conn_compress(struct fe_conn *c)
{
	if (c->closed || c->bev == NULL || c->compressed)
		return MP_ESTATE;
	struct bufferevent *f = fe_deflate_bev(c->loop->base, c->bev);
	if (f == NULL)
		return MP_ENOMEM;
	c->bev = f;  /* owns the one below now */
	c->compressed = true;
	conn_setup_bev(c);
	return 0;
}

bool fe_conn_tls_active(const struct fe_conn *c)
{
	return c->tls;
}

void fe_conn_no_session_limit(struct fe_conn *c)
{
	if (c->total_ev != NULL)
		event_del(c->total_ev);
}

struct event_base *fe_conn_base(struct fe_conn *c)
{
	return c->loop->base;
}

bool fe_conn_tls_offered(const struct fe_conn *c)
{
	return c->loop->srv->conf.tls != NULL;
}

const char *fe_conn_tls_info(struct fe_conn *c)
{
	if (c->tls && c->tls_info[0] == '\0' && c->bev != NULL &&
	    fe_tls_bev_describe(c->bev, c->tls_info, sizeof(c->tls_info)) != 0)
		c->tls_info[0] = '\0';
	return c->tls_info;
}

const char *fe_conn_peer_ip(const struct fe_conn *c)
{
	return c->peer_ip;
}

uint16_t fe_conn_peer_port(const struct fe_conn *c)
{
	return c->peer_port;
}

const char *fe_conn_id(const struct fe_conn *c)
{
	return c->id;
}

struct fe_server *fe_conn_server(struct fe_conn *c)
{
	return c->loop->srv;
}

bool fe_server_stopping(const struct fe_server *s)
{
	return atomic_load(&s->stopping);
}

uint64_t fe_server_connections(struct fe_server *s)
{
	return atomic_load(&s->nconns);
}

/* ---------------------------------------------------------------- loops */

static void loop_wake_cb(evutil_socket_t fd, short what, void *arg)
{
	struct fe_loop *l = arg;
	(void)fd;
	(void)what;
	pthread_mutex_lock(&l->mu);
	struct fe_job *j = l->done_head;
	l->done_head = l->done_tail = NULL;
	bool shutdown = l->want_shutdown && !l->shut;
	bool quit = l->want_quit && !l->quitting;
	pthread_mutex_unlock(&l->mu);

	while (j != NULL) {
		struct fe_job *next = j->next;
		struct fe_conn *c = j->conn;
		j->done(j);  /* may close c; c stays allocated until jobs == 0 */
		c->jobs--;
		if (c->closed && c->jobs == 0)
			event_active(c->reap_ev, EV_READ, 0);
		j = next;
	}
	if (shutdown) {
		l->shut = true;
		for (size_t i = 0; i < l->nll; i++) {
			if (l->ll[i].evl != NULL)
				evconnlistener_free(l->ll[i].evl);
			l->ll[i].evl = NULL;
		}
		for (struct fe_conn *c = l->conns; c != NULL; c = c->next) {
			if (!c->closed && !c->flushing &&
			    c->lis->conf.proto->on_shutdown != NULL)
				c->lis->conf.proto->on_shutdown(c->sess);
		}
	}
	if (quit) {
		l->quitting = true;
		for (struct fe_conn *c = l->conns; c != NULL; c = c->next)
			fe_conn_close(c);
		if (l->conns == NULL)
			event_base_loopexit(l->base, NULL);
	}
}

static void *loop_main(void *arg)
{
	struct fe_loop *l = arg;
	char prefix[32];
	snprintf(prefix, sizeof(prefix), "fe-loop-%u", l->index);
	pthread_setname_np(pthread_self(), prefix);
	event_base_dispatch(l->base);
	return NULL;
}

static void loop_post(struct fe_loop *l, bool shutdown, bool quit)
{
	pthread_mutex_lock(&l->mu);
	if (shutdown)
		l->want_shutdown = true;
	if (quit)
		l->want_quit = true;
	pthread_mutex_unlock(&l->mu);
	event_active(l->wake, EV_READ, 0);
}

static pthread_once_t evthread_once = PTHREAD_ONCE_INIT;
static int evthread_rc;

static void evthread_init(void)
{
	evthread_rc = evthread_use_pthreads();
}

int fe_server_create(const struct fe_server_conf *conf, struct fe_server **s_r,
		     char **error_r)
{
	*s_r = NULL;
	struct fe_server *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return MP_ENOMEM;
	s->conf = *conf;
	s->nloops = conf->loops == 0 ? 1 : conf->loops;
	if (s->nloops > FE_MAX_LOOPS)
		s->nloops = FE_MAX_LOOPS;
	s->nworkers = conf->workers == 0 ? 4 : conf->workers;
	pthread_mutex_init(&s->wmu, NULL);
	pthread_cond_init(&s->wcond, NULL);
	pthread_mutex_init(&s->ipmu, NULL);
	/* libevent's locking, so workers may event_active() a loop's wake. */
	pthread_once(&evthread_once, evthread_init);
	if (evthread_rc != 0) {
		*error_r = strdup("libevent: no pthreads support");
		free(s);
		return MP_EIO;
	}
	for (unsigned i = 0; i < s->nloops; i++) {
		struct fe_loop *l = &s->loops[i];
		l->srv = s;
		l->index = i;
		pthread_mutex_init(&l->mu, NULL);
		l->base = event_base_new();
		l->wake = l->base != NULL ? event_new(l->base, -1, EV_PERSIST, loop_wake_cb, l) : NULL;
		if (l->base == NULL || l->wake == NULL) {
			*error_r = strdup("libevent: cannot create an event base");
			s->nloops = i + 1;
			fe_server_free(&s);
			return MP_ENOMEM;
		}
	}
	*s_r = s;
	return 0;
}

int fe_server_listen(struct fe_server *s, const struct fe_listener_conf *lc,
		     int *port_r, char **error_r)
{
	const char *err = NULL;
	struct sockaddr_storage ss;
	socklen_t sl = 0;
	if (s->nlis >= FE_MAX_LISTENERS) {
		*error_r = strdup("too many listeners");
		return MP_ETOOBIG;
	}
	if (lc->tls == FE_TLS_IMPLICIT && s->conf.tls == NULL) {
		if (asprintf(error_r, "%s: implicit TLS needs a certificate (tls_cert)",
			     lc->addr) < 0)
			*error_r = NULL;
		return MP_EINVAL;
	}
	if (parse_addr(lc->addr, &ss, &sl, &err) < 0) {
		if (asprintf(error_r, "%s: %s", lc->addr, err) < 0)
			*error_r = NULL;
		return MP_EINVAL;
	}
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    (ss.ss_family == AF_INET6 &&
	     setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0) ||
	    bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, 1024) < 0) {
		int e = errno;
		if (fd >= 0)
			close(fd);
		if (asprintf(error_r, "%s: %s", lc->addr, strerror(e)) < 0)
			*error_r = NULL;
		return MP_EIO;
	}
	struct fe_listener *lis = &s->lis[s->nlis];
	lis->conf = *lc;
	lis->conf.addr = strdup(lc->addr);
	lis->fd = fd;
	if (lis->conf.addr == NULL) {
		close(fd);
		return MP_ENOMEM;
	}
	s->nlis++;
	if (port_r != NULL) {
		struct sockaddr_storage b;
		socklen_t bl = sizeof(b);
		*port_r = 0;
		if (getsockname(fd, (struct sockaddr *)&b, &bl) == 0)
			*port_r = b.ss_family == AF_INET
					  ? ntohs(((struct sockaddr_in *)&b)->sin_port)
					  : ntohs(((struct sockaddr_in6 *)&b)->sin6_port);
	}
	/* Every loop watches its own dup of the socket; the kernel gives each
	 * connection to one accept(). */
	for (unsigned i = 0; i < s->nloops; i++) {
		struct fe_loop *l = &s->loops[i];
		struct fe_loop_listener *ll = &l->ll[l->nll];
		int dfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
		ll->loop = l;
		ll->lis = lis;
		ll->evl = dfd < 0 ? NULL
				  : evconnlistener_new(l->base, accept_cb, ll,
						       LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
						       -1, dfd);
		if (ll->evl == NULL) {
			if (dfd >= 0)
				close(dfd);
			*error_r = strdup("libevent: cannot watch a listening socket");
			return MP_EIO;
		}
		l->nll++;
	}
	mp_log_info("fe_listening", "addr=%s proto=%s tls=%s", lc->addr, lc->proto->name,
		    lc->tls == FE_TLS_IMPLICIT ? "implicit" : "starttls");
	return 0;
}

int fe_server_start(struct fe_server *s, char **error_r)
{
	s->workers = calloc(s->nworkers, sizeof(*s->workers));
	if (s->workers == NULL)
		return MP_ENOMEM;
	for (unsigned i = 0; i < s->nworkers; i++) {
		if (pthread_create(&s->workers[i], NULL, worker_main, s) != 0) {
			s->nworkers = i;
			*error_r = strdup("cannot start worker threads");
			return MP_EIO;
		}
	}
	for (unsigned i = 0; i < s->nloops; i++) {
		struct fe_loop *l = &s->loops[i];
		/* The wake event stays pending forever so the loop never runs
		 * out of events; it fires only through event_active(). */
		struct timeval far = { 365 * 24 * 3600, 0 };
		if (event_add(l->wake, &far) != 0 ||
		    pthread_create(&l->thread, NULL, loop_main, l) != 0) {
			*error_r = strdup("cannot start event loop threads");
			return MP_EIO;
		}
		l->started = true;
	}
	s->started = true;
	return 0;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void fe_server_stop(struct fe_server *s, uint64_t deadline_ms)
{
	if (s == NULL || !s->started)
		return;
	atomic_store(&s->stopping, true);
	for (unsigned i = 0; i < s->nloops; i++)
		loop_post(&s->loops[i], true, false);
	int64_t end = now_ms() + (int64_t)deadline_ms;
	while (fe_server_connections(s) > 0 && now_ms() < end) {
		struct timespec ts = { 0, 50 * 1000000 };
		nanosleep(&ts, NULL);
	}
	uint64_t left = fe_server_connections(s);
	if (left > 0)
		mp_log_warn("fe_stop_deadline", "connections_dropped=%llu",
			    (unsigned long long)left);
	for (unsigned i = 0; i < s->nloops; i++)
		loop_post(&s->loops[i], false, true);
	for (unsigned i = 0; i < s->nloops; i++) {
		if (s->loops[i].started)
			pthread_join(s->loops[i].thread, NULL);
		s->loops[i].started = false;
	}
	pthread_mutex_lock(&s->wmu);
	s->wstop = true;
	pthread_cond_broadcast(&s->wcond);
	pthread_mutex_unlock(&s->wmu);
	for (unsigned i = 0; i < s->nworkers; i++)
		pthread_join(s->workers[i], NULL);
	s->nworkers = 0;
	s->started = false;
}

void fe_server_free(struct fe_server **sp)
{
	struct fe_server *s = *sp;
	if (s == NULL)
		return;
	*sp = NULL;
	fe_server_stop(s, 0);
	for (unsigned i = 0; i < s->nloops; i++) {
		struct fe_loop *l = &s->loops[i];
		for (size_t k = 0; k < l->nll; k++)
			if (l->ll[k].evl != NULL)
				evconnlistener_free(l->ll[k].evl);
		/* Connections left only if the loops never ran. */
		while (l->conns != NULL) {
			struct fe_conn *c = l->conns;
			c->jobs = 0;
			fe_conn_close(c);
			conn_free(c);
		}
		if (l->wake != NULL)
			event_free(l->wake);
		/* libevent 2.1 finishes freeing bufferevents (fd close, SSL
		 * free) inside the loop: run it once more. */
		if (l->base != NULL) {
			event_base_loop(l->base, EVLOOP_NONBLOCK);
			event_base_free(l->base);
		}
		pthread_mutex_destroy(&l->mu);
	}
	for (size_t i = 0; i < s->nlis; i++) {
		close(s->lis[i].fd);
		free((char *)s->lis[i].conf.addr);
	}
	for (size_t b = 0; b < FE_IP_BUCKETS; b++) {
		while (s->ipb[b] != NULL) {
			struct fe_ip_count *e = s->ipb[b];
			s->ipb[b] = e->next;
			free(e);
		}
	}
	free(s->workers);
	pthread_mutex_destroy(&s->wmu);
	pthread_cond_destroy(&s->wcond);
	pthread_mutex_destroy(&s->ipmu);
	free(s);
}
