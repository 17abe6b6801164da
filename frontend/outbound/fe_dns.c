/*
 * fe_dns: MX lookup for outbound SMTP on c-ares (see fe_dns.h).
 *
 * Two phases per lookup, each a batch of queries run in parallel on the
 * object's channel and driven with ares_getsock + poll until they all end
 * or the caller's deadline passes: first MX of the domain, then A and
 * AAAA of every MX host kept (or of the domain itself, RFC 5321 §5.1
 * implicit MX). Must never block past the deadline, follow /etc/hosts or
 * search domains (ares_query, not ares_search), or keep more than
 * FE_DNS_MAX_HOSTS hosts and FE_DNS_MAX_ADDRS addresses per host.
 */
#include "fe_dns.h"

#include <ares.h>
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "mp_error.h"
#include "mp_log.h"

#define FE_DNS_DEFAULT_TIMEOUT_MS 2000
#define FE_DNS_DEFAULT_TRIES 2
/* Poll at least this often even when c-ares has no timer (defensive). */
#define FE_DNS_IDLE_POLL_MS 100

struct fe_dns {
	ares_channel ch;          /* owned */
	uint64_t rng;             /* xorshift state: shuffles equal MX prefs */
	const char *last_status;  /* static string */
};

/* One outstanding query; lives in the lookup below. */
struct dns_query {
	struct dns_lookup *lk;    /* borrowed */
	int type;                 /* ns_t_mx, ns_t_a, ns_t_aaaa */
	size_t host;              /* index into lk->hosts (A/AAAA) */
	int done;
	int status;               /* ARES_* */
};

struct dns_host_addrs {
	size_t n4, n6;
	struct in_addr v4[FE_DNS_MAX_ADDRS];
	struct in6_addr v6[FE_DNS_MAX_ADDRS];
};

struct dns_lookup {
	size_t pending;
	int nomem;
	/* phase 1 */
	struct dns_query mxq;
	struct ares_mx_reply *mx;        /* owned (ares_free_data) */
	/* phase 2 */
	size_t nhosts;
	char names[FE_DNS_MAX_HOSTS][FE_DNS_NAME_MAX + 1];
	unsigned prefs[FE_DNS_MAX_HOSTS];
	struct dns_query aq[FE_DNS_MAX_HOSTS], aaaaq[FE_DNS_MAX_HOSTS];
	struct dns_host_addrs addrs[FE_DNS_MAX_HOSTS];
};

static pthread_once_t fe_dns_once = PTHREAD_ONCE_INIT;
static int fe_dns_init_status = ARES_SUCCESS;

static void fe_dns_library_init(void)
{
	/* Not thread-safe in c-ares itself, hence the once. */
	fe_dns_init_status = ares_library_init(ARES_LIB_INIT_ALL);
}

int64_t fe_dns_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void fe_dns_set_error(char **error_r, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void fe_dns_set_error(char **error_r, const char *fmt, ...)
{
	if (error_r == NULL)
		return;
	va_list ap;
	va_start(ap, fmt);
	char *s = NULL;
	if (vasprintf(&s, fmt, ap) < 0)
		s = NULL;
	va_end(ap);
	*error_r = s; /* NULL if even that failed: callers accept it */
}

static uint64_t fe_dns_rand(struct fe_dns *d)
{
	/* xorshift64: only spreads load over equal-preference MX hosts, never
	 * security-relevant. */
	uint64_t x = d->rng;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	d->rng = x;
	return x;
}

int fe_dns_open(const char *server, int timeout_ms, int tries,
		struct fe_dns **d_r, char **error_r)
{
	*d_r = NULL;
	if (error_r != NULL)
		*error_r = NULL;
	if (timeout_ms < 0 || tries < 0) {
		fe_dns_set_error(error_r, "negative timeout or tries");
		return MP_EINVAL;
	}
	if (pthread_once(&fe_dns_once, fe_dns_library_init) != 0 ||
	    fe_dns_init_status != ARES_SUCCESS) {
		fe_dns_set_error(error_r, "ares_library_init: %s",
				 ares_strerror(fe_dns_init_status));
		return MP_EIO;
	}
	struct fe_dns *d = calloc(1, sizeof(*d));
	if (d == NULL) {
		fe_dns_set_error(error_r, "out of memory");
		return MP_ENOMEM;
	}
	if (getrandom(&d->rng, sizeof(d->rng), 0) != (ssize_t)sizeof(d->rng))
		d->rng = (uint64_t)fe_dns_now_ms() ^ (uintptr_t)d;
	if (d->rng == 0)
		d->rng = 0x9e3779b97f4a7c15ULL;
	d->last_status = "";

	struct ares_options opts;
	memset(&opts, 0, sizeof(opts));
	opts.timeout = timeout_ms > 0 ? timeout_ms : FE_DNS_DEFAULT_TIMEOUT_MS;
	opts.tries = tries > 0 ? tries : FE_DNS_DEFAULT_TRIES;
	opts.lookups = (char *)"b"; /* DNS only: never /etc/hosts */
	opts.flags = ARES_FLAG_NOSEARCH;
	int mask = ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_LOOKUPS |
		   ARES_OPT_FLAGS;
	int st = ares_init_options(&d->ch, &opts, mask);
	if (st != ARES_SUCCESS) {
		fe_dns_set_error(error_r, "ares_init_options: %s", ares_strerror(st));
		free(d);
		return st == ARES_ENOMEM ? MP_ENOMEM : MP_EIO;
	}
	if (server != NULL) {
		st = ares_set_servers_ports_csv(d->ch, server);
		if (st != ARES_SUCCESS) {
			fe_dns_set_error(error_r, "resolver address \"%s\": %s", server,
					 ares_strerror(st));
			ares_destroy(d->ch);
			free(d);
			return st == ARES_ENOMEM ? MP_ENOMEM : MP_EINVAL;
		}
	}
	*d_r = d;
	return 0;
}

void fe_dns_free(struct fe_dns **dp)
{
	if (dp == NULL || *dp == NULL)
		return;
	ares_destroy((*dp)->ch);
	free(*dp);
	*dp = NULL;
}

void fe_dns_mx_list_free(struct fe_dns_mx_list **list)
{
	if (list == NULL)
		return;
	free(*list);
	*list = NULL;
}

const char *fe_dns_last_status(const struct fe_dns *d)
{
	return d->last_status;
}

int fe_dns_err_permanent(int err)
{
	return err == MP_ENOENT || err == MP_EINVAL;
}

/* ------------------------------------------------------------ names */

/* A host name as DNS can carry it for mail: LDH labels (plus '_', seen in
 * the wild), 1..63 octets each, 253 in all without the trailing dot. */
static int fe_dns_name_ok(const char *s, size_t len)
{
	if (len > 0 && s[len - 1] == '.')
		len--;
	if (len == 0 || len > 253)
		return 0;
	size_t label = 0;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (c == '.') {
			if (label == 0)
				return 0;
			label = 0;
			continue;
		}
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '-' || c == '_'))
			return 0;
		if (++label > 63)
			return 0;
	}
	return 1;
}

int fe_dns_parse_literal(const char *s, struct sockaddr_storage *ss,
			 socklen_t *len_r)
{
	size_t len = strlen(s);
	if (len < 3 || s[0] != '[' || s[len - 1] != ']' || len > 64)
		return MP_EINVAL;
	char inner[64];
	memcpy(inner, s + 1, len - 2);
	inner[len - 2] = '\0';
	memset(ss, 0, sizeof(*ss));
	/* RFC 5321 §4.1.3: "IPv6:" is a Standardized-tag; tags compare
	 * case-insensitively like the rest of SMTP's keywords. */
	if (strncasecmp(inner, "IPv6:", 5) == 0) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
		if (inet_pton(AF_INET6, inner + 5, &sin6->sin6_addr) != 1)
			return MP_EINVAL;
		sin6->sin6_family = AF_INET6;
		*len_r = sizeof(*sin6);
		return 0;
	}
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	if (inet_pton(AF_INET, inner, &sin->sin_addr) != 1)
		return MP_EINVAL;
	sin->sin_family = AF_INET;
	*len_r = sizeof(*sin);
	return 0;
}

/* ------------------------------------------------------------ c-ares loop */

static int fe_dns_status_temporary(int st)
{
	switch (st) {
	case ARES_SUCCESS:
	case ARES_ENODATA:   /* NOERROR, no records of the type */
	case ARES_ENOTFOUND: /* NXDOMAIN */
	case ARES_EBADNAME:
		return 0;
	default:             /* SERVFAIL, REFUSED, timeouts, refused ports ... */
		return 1;
	}
}

static void fe_dns_host_cb(void *arg, int status, int timeouts,
			   unsigned char *abuf, int alen)
{
	struct dns_query *q = arg;
	struct dns_lookup *lk = q->lk;
	q->done = 1;
	q->status = status;
	lk->pending--;
	if (status != ARES_SUCCESS || abuf == NULL)
		return;
	struct dns_host_addrs *ha = &lk->addrs[q->host];
	int n = FE_DNS_MAX_ADDRS;
	if (q->type == ns_t_a) {
		struct ares_addrttl ttls[FE_DNS_MAX_ADDRS];
		int st = ares_parse_a_reply(abuf, alen, NULL, ttls, &n);
		if (st != ARES_SUCCESS) {
			q->status = st;
			return;
		}
		for (int i = 0; i < n && ha->n4 < FE_DNS_MAX_ADDRS; i++)
			ha->v4[ha->n4++] = ttls[i].ipaddr;
	} else {
		struct ares_addr6ttl ttls[FE_DNS_MAX_ADDRS];
		int st = ares_parse_aaaa_reply(abuf, alen, NULL, ttls, &n);
		if (st != ARES_SUCCESS) {
			q->status = st;
			return;
		}
		for (int i = 0; i < n && ha->n6 < FE_DNS_MAX_ADDRS; i++)
			memcpy(&ha->v6[ha->n6++], &ttls[i].ip6addr, sizeof(ha->v6[0]));
	}
	if (n == 0)
		q->status = ARES_ENODATA;
}

static void fe_dns_mx_cb(void *arg, int status, int timeouts,
			 unsigned char *abuf, int alen)
{
	struct dns_query *q = arg;
	struct dns_lookup *lk = q->lk;
	q->done = 1;
	q->status = status;
	lk->pending--;
	if (status != ARES_SUCCESS || abuf == NULL)
		return;
	int st = ares_parse_mx_reply(abuf, alen, &lk->mx);
	if (st != ARES_SUCCESS) {
		/* An answer of only CNAMEs parses as "no MX": implicit MX. */
		q->status = st;
		lk->mx = NULL;
	}
	if (st == ARES_ENOMEM)
		lk->nomem = 1;
}

/* Runs the channel until every query of lk has ended or deadline_ms.
 * On timeout the queries are cancelled (their callbacks run with
 * ARES_ECANCELLED) and MP_ETIMEDOUT is returned. */
static int fe_dns_wait(struct fe_dns *d, struct dns_lookup *lk, int64_t deadline_ms)
{
	while (lk->pending > 0) {
		int64_t now = fe_dns_now_ms();
		if (now >= deadline_ms) {
			ares_cancel(d->ch);
			return MP_ETIMEDOUT;
		}
		ares_socket_t socks[ARES_GETSOCK_MAXNUM];
		/* ares_getsock's bit macros shift an int by up to 31: test the
		 * bits ourselves on an unsigned copy. */
		unsigned bits = (unsigned)ares_getsock(d->ch, socks, ARES_GETSOCK_MAXNUM);
		struct pollfd pfd[ARES_GETSOCK_MAXNUM];
		nfds_t nfds = 0;
		for (int i = 0; i < ARES_GETSOCK_MAXNUM; i++) {
			short ev = 0;
			if (bits & (1u << i))
				ev |= POLLIN;
			if (bits & (1u << (i + ARES_GETSOCK_MAXNUM)))
				ev |= POLLOUT;
			if (ev == 0)
				continue;
			pfd[nfds].fd = socks[i];
			pfd[nfds].events = ev;
			pfd[nfds].revents = 0;
			nfds++;
		}
		int64_t left = deadline_ms - now;
		struct timeval maxtv = { (time_t)(left / 1000),
					 (suseconds_t)(left % 1000) * 1000 };
		struct timeval tv;
		struct timeval *tvp = ares_timeout(d->ch, &maxtv, &tv);
		int64_t wait_ms = tvp != NULL ?
			(int64_t)tvp->tv_sec * 1000 + (tvp->tv_usec + 999) / 1000 : left;
		if (nfds == 0 && wait_ms > FE_DNS_IDLE_POLL_MS)
			wait_ms = FE_DNS_IDLE_POLL_MS;
		if (wait_ms > left)
			wait_ms = left;
		int n = poll(pfd, nfds, (int)wait_ms);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			ares_cancel(d->ch);
			return MP_EIO;
		}
		if (n == 0) {
			/* Let c-ares retry or time out its queries. */
			ares_process_fd(d->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
			continue;
		}
		for (nfds_t i = 0; i < nfds; i++) {
			short re = pfd[i].revents;
			ares_socket_t rfd = (re & (POLLIN | POLLERR | POLLHUP)) ?
				pfd[i].fd : ARES_SOCKET_BAD;
			ares_socket_t wfd = (re & POLLOUT) ? pfd[i].fd : ARES_SOCKET_BAD;
			if (rfd != ARES_SOCKET_BAD || wfd != ARES_SOCKET_BAD)
				ares_process_fd(d->ch, rfd, wfd);
		}
	}
	return 0;
}

/* ------------------------------------------------------------ the lookup */

static int fe_dns_mx_cmp(const void *a, const void *b)
{
	const struct ares_mx_reply *x = *(const struct ares_mx_reply *const *)a;
	const struct ares_mx_reply *y = *(const struct ares_mx_reply *const *)b;
	return (x->priority > y->priority) - (x->priority < y->priority);
}

static size_t fe_dns_strip_dot(char *out, const char *name)
{
	size_t len = strnlen(name, FE_DNS_NAME_MAX + 1);
	if (len > 0 && name[len - 1] == '.')
		len--;
	if (len > FE_DNS_NAME_MAX)
		len = FE_DNS_NAME_MAX;
	memcpy(out, name, len);
	out[len] = '\0';
	return len;
}

/* Phase 1 result → the host names to resolve, in the order to try.
 * 0, MP_ENOENT for a null MX, MP_ENOMEM. */
static int fe_dns_pick_hosts(struct fe_dns *d, struct dns_lookup *lk)
{
	size_t n = 0, nroot = 0;
	for (struct ares_mx_reply *m = lk->mx; m != NULL; m = m->next) {
		n++;
		if (m->host == NULL || m->host[0] == '\0' || strcmp(m->host, ".") == 0)
			nroot++;
	}
	/* RFC 7505 §3: a null MX is the single record with target "."; we
	 * accept any preference for it since no other reading makes sense.
	 * A "." among other MX records cannot be connected to and is skipped. */
	if (n > 0 && nroot == n)
		return MP_ENOENT;
	struct ares_mx_reply **v = calloc(n, sizeof(*v));
	if (v == NULL)
		return MP_ENOMEM;
	size_t k = 0;
	for (struct ares_mx_reply *m = lk->mx; m != NULL; m = m->next)
		v[k++] = m;
	/* RFC 5321 §5.1: equal preferences MUST be tried in random order.
	 * Shuffle, then sort by preference: qsort's reordering of equal keys
	 * is a fixed permutation of a uniformly random order, still uniform. */
	for (size_t i = n; i > 1; i--) {
		size_t j = (size_t)(fe_dns_rand(d) % i);
		struct ares_mx_reply *t = v[i - 1];
		v[i - 1] = v[j];
		v[j] = t;
	}
	qsort(v, n, sizeof(*v), fe_dns_mx_cmp);
	for (size_t i = 0; i < n && lk->nhosts < FE_DNS_MAX_HOSTS; i++) {
		const char *h = v[i]->host;
		if (h == NULL || h[0] == '\0' || strcmp(h, ".") == 0)
			continue;
		if (!fe_dns_name_ok(h, strlen(h))) {
			mp_log_debug("dns_mx_skip", "reason=bad_name");
			continue;
		}
		char name[FE_DNS_NAME_MAX + 1];
		fe_dns_strip_dot(name, h);
		int dup = 0;
		for (size_t j = 0; j < lk->nhosts && !dup; j++)
			dup = strcasecmp(lk->names[j], name) == 0;
		if (dup)
			continue;
		memcpy(lk->names[lk->nhosts], name, sizeof(name));
		lk->prefs[lk->nhosts] = v[i]->priority;
		lk->nhosts++;
	}
	free(v);
	return 0;
}

static void fe_dns_lookup_free(struct dns_lookup **lkp)
{
	if (*lkp == NULL)
		return;
	if ((*lkp)->mx != NULL)
		ares_free_data((*lkp)->mx);
	free(*lkp);
	*lkp = NULL;
}

static int fe_dns_fail(struct fe_dns *d, int err, const char *status,
		       char **error_r, const char *domain, const char *why)
{
	d->last_status = status;
	fe_dns_set_error(error_r, "%s: %s", domain, why);
	return err;
}

int fe_dns_mx(struct fe_dns *d, const char *domain, int64_t deadline_ms,
	      struct fe_dns_mx_list **list_r, char **error_r)
{
	*list_r = NULL;
	if (error_r != NULL)
		*error_r = NULL;
	d->last_status = "";
	size_t dlen = strnlen(domain, FE_DNS_NAME_MAX + 2);

	struct fe_dns_mx_list *list = calloc(1, sizeof(*list));
	if (list == NULL)
		return fe_dns_fail(d, MP_ENOMEM, "4.3.0", error_r, "", "out of memory");

	if (dlen > 0 && domain[0] == '[') {
		struct fe_dns_host *h = &list->hosts[0];
		if (fe_dns_parse_literal(domain, &h->addrs[0], &h->addrlens[0]) != 0) {
			free(list);
			return fe_dns_fail(d, MP_EINVAL, "5.1.2", error_r, "domain",
					   "invalid address literal");
		}
		h->naddrs = 1;
		list->nhosts = 1;
		list->literal = 1;
		*list_r = list;
		return 0;
	}
	if (dlen > FE_DNS_NAME_MAX || !fe_dns_name_ok(domain, dlen)) {
		free(list);
		return fe_dns_fail(d, MP_EINVAL, "5.1.2", error_r, "domain",
				   "not a valid domain name");
	}
	char name[FE_DNS_NAME_MAX + 1];
	fe_dns_strip_dot(name, domain);

	struct dns_lookup *lk = calloc(1, sizeof(*lk));
	if (lk == NULL) {
		free(list);
		return fe_dns_fail(d, MP_ENOMEM, "4.3.0", error_r, name, "out of memory");
	}

	/* Phase 1: MX. */
	lk->mxq.lk = lk;
	lk->mxq.type = ns_t_mx;
	lk->pending = 1;
	ares_query(d->ch, name, ns_c_in, ns_t_mx, fe_dns_mx_cb, &lk->mxq);
	int ret = fe_dns_wait(d, lk, deadline_ms);
	if (ret == 0 && lk->nomem)
		ret = MP_ENOMEM;
	if (ret != 0) {
		fe_dns_lookup_free(&lk);
		free(list);
		return fe_dns_fail(d, ret, "4.4.3", error_r, name,
				   ret == MP_ETIMEDOUT ? "MX lookup timed out" :
				   "MX lookup failed");
	}
	int st = lk->mxq.status;
	if (st == ARES_ENOTFOUND) {
		fe_dns_lookup_free(&lk);
		free(list);
		return fe_dns_fail(d, MP_ENOENT, "5.1.2", error_r, name,
				   "domain does not exist (NXDOMAIN)");
	}
	if (st == ARES_EBADNAME) {
		fe_dns_lookup_free(&lk);
		free(list);
		return fe_dns_fail(d, MP_EINVAL, "5.1.2", error_r, name,
				   "not a valid domain name");
	}
	if (fe_dns_status_temporary(st)) {
		char why[128];
		snprintf(why, sizeof(why), "MX lookup failed: %s", ares_strerror(st));
		fe_dns_lookup_free(&lk);
		free(list);
		return fe_dns_fail(d, MP_EUNAVAIL, "4.4.3", error_r, name, why);
	}
	if (st == ARES_SUCCESS) {
		ret = fe_dns_pick_hosts(d, lk);
		if (ret == MP_ENOENT) {
			fe_dns_lookup_free(&lk);
			free(list);
			return fe_dns_fail(d, MP_ENOENT, "5.1.10", error_r, name,
					   "domain does not accept mail (null MX, RFC 7505)");
		}
		if (ret != 0) {
			fe_dns_lookup_free(&lk);
			free(list);
			return fe_dns_fail(d, ret, "4.3.0", error_r, name, "out of memory");
		}
		if (lk->nhosts == 0) {
			fe_dns_lookup_free(&lk);
			free(list);
			return fe_dns_fail(d, MP_ENOENT, "5.4.4", error_r, name,
					   "no usable MX host name");
		}
	} else {
		/* RFC 5321 §5.1: no MX records → the domain is its own MX. */
		memcpy(lk->names[0], name, sizeof(name));
		lk->prefs[0] = 0;
		lk->nhosts = 1;
		list->implicit = 1;
	}

	/* Phase 2: A and AAAA of every host, all at once. */
	for (size_t i = 0; i < lk->nhosts; i++) {
		lk->aq[i] = (struct dns_query){ lk, ns_t_a, i, 0, 0 };
		lk->aaaaq[i] = (struct dns_query){ lk, ns_t_aaaa, i, 0, 0 };
	}
	lk->pending = 2 * lk->nhosts;
	for (size_t i = 0; i < lk->nhosts; i++) {
		ares_query(d->ch, lk->names[i], ns_c_in, ns_t_a, fe_dns_host_cb, &lk->aq[i]);
		ares_query(d->ch, lk->names[i], ns_c_in, ns_t_aaaa, fe_dns_host_cb,
			   &lk->aaaaq[i]);
	}
	ret = fe_dns_wait(d, lk, deadline_ms);
	if (ret != 0) {
		fe_dns_lookup_free(&lk);
		free(list);
		return fe_dns_fail(d, ret, "4.4.3", error_r, name,
				   ret == MP_ETIMEDOUT ? "address lookup timed out" :
				   "address lookup failed");
	}

	int temp = 0, nx = 0;
	for (size_t i = 0; i < lk->nhosts; i++) {
		const struct dns_host_addrs *ha = &lk->addrs[i];
		temp |= fe_dns_status_temporary(lk->aq[i].status) ||
			fe_dns_status_temporary(lk->aaaaq[i].status);
		nx |= lk->aq[i].status == ARES_ENOTFOUND;
		if (ha->n4 + ha->n6 == 0)
			continue;
		/* IPv4 first: IPv6 routes are more often broken than absent, and
		 * a broken route costs a whole connect timeout (Postfix's
		 * smtp_address_preference = ipv4 does the same). */
		struct fe_dns_host *h = &list->hosts[list->nhosts++];
		memcpy(h->name, lk->names[i], sizeof(h->name));
		h->pref = lk->prefs[i];
		for (size_t j = 0; j < ha->n4 && h->naddrs < FE_DNS_MAX_ADDRS; j++) {
			struct sockaddr_in *sin = (struct sockaddr_in *)&h->addrs[h->naddrs];
			sin->sin_family = AF_INET;
			sin->sin_addr = ha->v4[j];
			h->addrlens[h->naddrs++] = sizeof(*sin);
		}
		for (size_t j = 0; j < ha->n6 && h->naddrs < FE_DNS_MAX_ADDRS; j++) {
			struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&h->addrs[h->naddrs];
			sin6->sin6_family = AF_INET6;
			sin6->sin6_addr = ha->v6[j];
			h->addrlens[h->naddrs++] = sizeof(*sin6);
		}
	}
	int implicit = list->implicit;
	fe_dns_lookup_free(&lk);
	if (list->nhosts == 0) {
		free(list);
		if (temp)
			return fe_dns_fail(d, MP_EUNAVAIL, "4.4.3", error_r, name,
					   "address lookup of the mail exchangers failed");
		if (implicit && nx)
			return fe_dns_fail(d, MP_ENOENT, "5.1.2", error_r, name,
					   "domain does not exist (NXDOMAIN)");
		return fe_dns_fail(d, MP_ENOENT, "5.4.4", error_r, name,
				   implicit ? "no MX and no address records" :
				   "no mail exchanger has an address");
	}
	*list_r = list;
	return 0;
}
