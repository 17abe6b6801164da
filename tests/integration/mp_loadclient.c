/*
 * mp-loadclient: appends under load to a storage node, then checks after the
 * fact that the node kept what it acknowledged (tests/integration/test_crash.py
 * kills the node with SIGKILL in the middle).
 *
 *   load          T threads append to N users and log every acknowledged
 *                 append ("user uid uidvalidity token") to an ack log.
 *   verify        every acknowledged token is in its mailbox exactly once, at
 *                 the acknowledged uid; uids, modseqs and counts are coherent.
 *   append-after  one more append per user gets a uid above every uid ever
 *                 acknowledged and a modseq above the mailbox's highest.
 *   replicas-agree  every in-sync replica of every shard reports the same
 *                 lsn and data digest (Replication.ShardDigest).
 *
 * With --etcd (a cluster) each call goes through mp_route to the leader of
 * the user's shard and follows failovers within LC_ROUTE_TIMEOUT_MS; an
 * append carries its token as request id, so a retry the route makes after
 * a lost answer is applied once by a leader that deduplicates (a node that
 * does not yet shows up in verify as a token stored twice).
 *
 * It must never log an append as acknowledged unless the node answered OK,
 * and never resend a token: an append whose answer was lost in the crash may
 * have been stored, so a retry carries a new token (a stored-but-unanswered
 * message is then merely an extra, never a duplicate of an acked one).
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "mailstore.pb-c.h"
#include "mp_buf.h"
#include "mp_error.h"
#include "mp_etcd.h"
#include "mp_route.h"
#include "mp_rpc.h"
#include "mp_shardmap.h"
#include "replication.pb-c.h"

#define LC_DOMAIN "load.test"
#define LC_MAILBOX "INBOX"
#define LC_CALL_TIMEOUT_MS 5000
#define LC_RETRY_PAUSE_NS (50 * 1000 * 1000L)
#define LC_BODY_PREFIX 4096     /* enough of a body for its X-Token header */
#define LC_INDEX_PAGE 500
#define LC_MAX_PAGES 100000
#define LC_MAX_THREADS 1024
#define LC_MAX_SIZE (16u * 1024 * 1024)
#define LC_TOKEN_MAX 96
#define LC_ERRORS_SHOWN 10      /* load: first errors go to stderr, then counts */
/* load: at most one fresh channel per this many ns (see lc_reconnect). */
#define LC_REOPEN_NS (100 * 1000 * 1000L)
#define LC_FAILURES_SHOWN 200   /* verify: failure lines printed before "... more" */
/* verify/append-after run right after a restart: a refused connection is
 * retried this many times, 100 ms apart. */
#define LC_UNAVAIL_RETRIES 100
/* --etcd: the budget of one routed call, failovers included. */
#define LC_ROUTE_TIMEOUT_MS 15000
#define LC_ETCD_TIMEOUT_MS 5000
#define LC_DIGEST_TIMEOUT_MS 5000
#define LC_AGREE_PAUSE_NS (200 * 1000 * 1000L)
#define LC_CLUSTER_NAME_MAX 63

/* ----------------------------------------------------------- helpers */

static int64_t lc_now_ns(void)
{
	struct timespec ts;

	(void)clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void lc_sleep_ns(long ns)
{
	struct timespec ts = { ns / 1000000000L, ns % 1000000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static int lc_random64(uint64_t *v_r)
{
	uint8_t *p = (uint8_t *)v_r;
	size_t got = 0;

	while (got < sizeof(*v_r)) {
		ssize_t n = getrandom(p + got, sizeof(*v_r) - got, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return MP_EIO;
		}
		got += (size_t)n;
	}
	return 0;
}

/* Where calls go: one node (ch), or the cluster (route over etcd). */
struct lc_conn {
	const char *node;            /* borrowed; NULL with --etcd */
	struct mp_rpc_channel *ch;   /* owned; NULL with --etcd */
	struct mp_etcd *etcd;        /* owned; --etcd only */
	struct mp_route *route;      /* owned; --etcd only */
};

/* One blocking call by method name. */
static int lc_call(struct mp_rpc_channel *ch, const char *method,
		   const ProtobufCMessage *req,
		   const ProtobufCMessageDescriptor *resp_desc,
		   ProtobufCMessage **resp_r, char **error_r)
{
	char path[128];

	*resp_r = NULL;
	*error_r = NULL;
	if (mp_rpc_method_path(&merpati__v1__mail_store__descriptor, method,
			       path, sizeof(path)) == NULL)
		return MP_EINVAL;
	return mp_rpc_call(ch, path, req, resp_desc, LC_CALL_TIMEOUT_MS,
			   resp_r, error_r);
}

/* One call to the leader of user's shard; mp_route retries NOT_LEADER and
 * UNAVAILABLE (failovers) within LC_ROUTE_TIMEOUT_MS. */
static int lc_call_route(struct mp_route *rt, const char *user,
			 const char *method, const ProtobufCMessage *req,
			 const ProtobufCMessageDescriptor *resp_desc,
			 ProtobufCMessage **resp_r, char **error_r)
{
	const char *why = NULL;
	char path[128];
	uint32_t shard;
	int ret;

	*resp_r = NULL;
	*error_r = NULL;
	if (mp_rpc_method_path(&merpati__v1__mail_store__descriptor, method,
			       path, sizeof(path)) == NULL)
		return MP_EINVAL;
	ret = mp_route_shard_of(rt, user, &shard, &why);
	if (ret < 0) {
		if (why != NULL)
			*error_r = strdup(why);
		return ret;
	}
	return mp_route_call(rt, shard, path, req, resp_desc,
			     LC_ROUTE_TIMEOUT_MS, resp_r, error_r);
}

/* For verify/append-after: a node that was restarted a moment ago may still
 * refuse connections, which is not what is being tested. Only UNAVAILABLE is
 * retried: it means the request did not reach a running node. Through a
 * route, the route does the retrying (and follows a new leader). */
static int lc_call_retry(struct lc_conn *cn, const char *user,
			 const char *method, const ProtobufCMessage *req,
			 const ProtobufCMessageDescriptor *resp_desc,
			 ProtobufCMessage **resp_r, char **error_r)
{
	struct mp_rpc_channel *ch = cn->ch;
	int ret = MP_EUNAVAIL;

	if (cn->route != NULL)
		return lc_call_route(cn->route, user, method, req, resp_desc,
				     resp_r, error_r);
	for (int i = 0; i < LC_UNAVAIL_RETRIES; i++) {
		ret = lc_call(ch, method, req, resp_desc, resp_r, error_r);
		if (ret != MP_EUNAVAIL)
			return ret;
		if (i + 1 < LC_UNAVAIL_RETRIES) {
			free(*error_r);
			*error_r = NULL;
			lc_sleep_ns(100 * 1000 * 1000L);
		}
	}
	return ret;
}

static void lc_free_msg(ProtobufCMessage **m)
{
	if (*m != NULL)
		protobuf_c_message_free_unpacked(*m, NULL);
	*m = NULL;
}

/* A valid RFC 5322 message of about size bytes (CRLF lines) carrying token
 * in an X-Token header. The filler is pseudo-random base64-alphabet text so
 * no two bodies are alike and compression does not flatter the store. */
static int lc_make_body(struct mp_buf *b, size_t size, const char *user,
			const char *token, uint64_t seed)
{
	static const char alphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	char date[64];
	struct tm tm;
	time_t now = time(NULL);
	uint64_t x = seed | 1;
	int ret;

	mp_buf_reset(b);
	if (gmtime_r(&now, &tm) == NULL ||
	    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm) == 0)
		return MP_EINVAL;
	ret = mp_buf_printf(b,
			    "From: Load Client <loadclient@" LC_DOMAIN ">\r\n"
			    "To: <%s>\r\n"
			    "Subject: load %s\r\n"
			    "Date: %s\r\n"
			    "Message-ID: <%s@" LC_DOMAIN ">\r\n"
			    "X-Token: %s\r\n"
			    "MIME-Version: 1.0\r\n"
			    "Content-Type: text/plain; charset=us-ascii\r\n"
			    "Content-Transfer-Encoding: 7bit\r\n"
			    "\r\n",
			    user, token, date, token, token);
	if (ret < 0)
		return ret;
	/* Body lines of 76 characters + CRLF until size is reached; always at
	 * least one line so the body is never empty. */
	do {
		char line[78];
		for (int i = 0; i < 76; i++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			line[i] = alphabet[x & 63];
		}
		line[76] = '\r';
		line[77] = '\n';
		if ((ret = mp_buf_append(b, line, sizeof(line))) < 0)
			return ret;
	} while (b->len + 78 <= size);
	return 0;
}

/* Finds the X-Token header in the header section of data (len bytes) and
 * copies its value into out. 0, or MP_ENOENT. */
static int lc_find_token(const uint8_t *data, size_t len, char *out,
			 size_t outlen)
{
	static const char name[] = "x-token:";
	size_t pos = 0;

	while (pos < len) {
		const uint8_t *eol = memchr(data + pos, '\n', len - pos);
		size_t end = eol == NULL ? len : (size_t)(eol - data);
		size_t line_len = end - pos;

		if (line_len > 0 && data[end - 1] == '\r')
			line_len--;
		if (line_len == 0)
			break;  /* end of the header section */
		if (line_len >= sizeof(name) - 1 &&
		    strncasecmp((const char *)data + pos, name,
				sizeof(name) - 1) == 0) {
			size_t v = pos + sizeof(name) - 1;
			size_t vend = pos + line_len;
			while (v < vend && (data[v] == ' ' || data[v] == '\t'))
				v++;
			while (vend > v && (data[vend - 1] == ' ' ||
					    data[vend - 1] == '\t'))
				vend--;
			if (vend - v == 0 || vend - v >= outlen)
				return MP_ENOENT;
			memcpy(out, data + v, vend - v);
			out[vend - v] = '\0';
			return 0;
		}
		if (eol == NULL)
			break;
		pos = end + 1;
	}
	return MP_ENOENT;
}

/* ------------------------------------------------------------- load */

struct lc_load {
	const char *node;            /* borrowed; NULL with a route */
	struct mp_route *route;      /* borrowed; NULL: one node (ch) */
	/* Shared by the threads (gRPC channels are thread-safe); replaced
	 * under the write lock by lc_reconnect, used under the read lock. */
	struct mp_rpc_channel *ch;   /* owned */
	pthread_rwlock_t ch_lock;
	uint64_t ch_gen;             /* bumped at each replacement */
	int64_t ch_opened_ns;
	int users;
	size_t size;
	uint64_t max_appends;
	int64_t deadline_ns;
	int ack_fd;
	pthread_mutex_t ack_lock;
	atomic_uint_fast64_t acked;
	atomic_uint_fast64_t errors;
	atomic_int errors_shown;
	atomic_int fatal;            /* ack log, getrandom or channel failed */
};

struct lc_worker {
	struct lc_load *load;        /* borrowed */
	int idx;
	pthread_t tid;
};

/* One write(2) per line under the lock: the line is in the kernel before the
 * next append starts, so killing the node (or this client after the
 * summary) loses no ack, and lines of different threads never interleave. */
static int lc_ack_write(struct lc_load *load, const char *line, size_t len)
{
	size_t off = 0;
	int ret = 0;

	if (pthread_mutex_lock(&load->ack_lock) != 0)
		return MP_EIO;
	while (off < len) {
		ssize_t n = write(load->ack_fd, line + off, len - off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			ret = MP_EIO;
			break;
		}
		off += (size_t)n;
	}
	(void)pthread_mutex_unlock(&load->ack_lock);
	return ret;
}

static void lc_load_error(struct lc_load *load, int idx, int err,
			  const char *msg)
{
	atomic_fetch_add(&load->errors, 1);
	if (atomic_fetch_add(&load->errors_shown, 1) < LC_ERRORS_SHOWN)
		fprintf(stderr, "load: thread %d: append failed: %s: %s\n", idx,
			mp_strerror(err), msg == NULL ? "" : msg);
}

/* After a failed call made on channel generation gen, replace that channel
 * by a fresh one (unless another thread already did). The node
 * under test is SIGKILLed and restarted, and a gRPC channel that saw its
 * connection refused waits out its own reconnect backoff (observed: 5 s
 * and more after the node was back) before trying again; a new channel
 * connects at its first call. Not more often than LC_REOPEN_NS. */
static int lc_reconnect(struct lc_load *load, uint64_t gen)
{
	struct mp_rpc_channel *fresh = NULL;
	int ret = 0;

	if (pthread_rwlock_wrlock(&load->ch_lock) != 0)
		return MP_EIO;
	if (load->ch_gen == gen &&
	    lc_now_ns() - load->ch_opened_ns >= LC_REOPEN_NS) {
		ret = mp_rpc_channel_open(load->node, MP_RPC_DEFAULT_MAX_MSG,
					  &fresh);
		if (ret == 0) {
			mp_rpc_channel_close(&load->ch);
			load->ch = fresh;
			load->ch_gen++;
			load->ch_opened_ns = lc_now_ns();
		}
	}
	(void)pthread_rwlock_unlock(&load->ch_lock);
	return ret;
}

static void *lc_load_thread(void *arg)
{
	struct lc_worker *w = arg;
	struct lc_load *load = w->load;
	char user[64];
	struct mp_buf body;
	uint64_t seq = 0;

	snprintf(user, sizeof(user), "load%d@" LC_DOMAIN, w->idx % load->users);
	mp_buf_init(&body, load->size + 4096);
	while (atomic_load(&load->fatal) == 0 &&
	       atomic_load(&load->acked) < load->max_appends &&
	       lc_now_ns() < load->deadline_ns) {
		Merpati__V1__AppendRequest req = MERPATI__V1__APPEND_REQUEST__INIT;
		Merpati__V1__AppendReply *rep;
		ProtobufCMessage *resp;
		char token[LC_TOKEN_MAX], line[256];
		char *error = NULL;
		uint64_t rnd, gen;
		int ret, n;

		/* A fresh token per attempt, retries included (see the top). */
		if (lc_random64(&rnd) < 0) {
			fprintf(stderr, "load: getrandom failed\n");
			atomic_store(&load->fatal, 1);
			break;
		}
		snprintf(token, sizeof(token), "%d-%" PRIu64 "-%016" PRIx64,
			 w->idx, seq++, rnd);
		if ((ret = lc_make_body(&body, load->size, user, token, rnd)) < 0) {
			fprintf(stderr, "load: cannot build a body: %s\n",
				mp_strerror(ret));
			atomic_store(&load->fatal, 1);
			break;
		}
		req.user = user;
		req.mailbox = (char *)LC_MAILBOX;
		req.body.data = (uint8_t *)body.data;
		req.body.len = body.len;
		/* The token is unique per attempt: the request id that lets
		 * the leader apply a retry of the route's once. */
		req.request_id = token;
		if (load->route != NULL) {
			ret = lc_call_route(load->route, user, "Append",
					    &req.base,
					    &merpati__v1__append_reply__descriptor,
					    &resp, &error);
			if (ret < 0) {
				lc_load_error(load, w->idx, ret, error);
				free(error);
				lc_sleep_ns(LC_RETRY_PAUSE_NS);
				continue;
			}
			goto acked;
		}
		if (pthread_rwlock_rdlock(&load->ch_lock) != 0) {
			atomic_store(&load->fatal, 1);
			break;
		}
		gen = load->ch_gen;
		ret = lc_call(load->ch, "Append", &req.base,
			      &merpati__v1__append_reply__descriptor, &resp,
			      &error);
		(void)pthread_rwlock_unlock(&load->ch_lock);
		if (ret < 0) {
			lc_load_error(load, w->idx, ret, error);
			free(error);
			if (lc_reconnect(load, gen) < 0) {
				fprintf(stderr, "load: cannot open a channel\n");
				atomic_store(&load->fatal, 1);
				break;
			}
			lc_sleep_ns(LC_RETRY_PAUSE_NS);
			continue;
		}
	acked:
		rep = (Merpati__V1__AppendReply *)resp;
		n = snprintf(line, sizeof(line), "%s %" PRIu32 " %" PRIu32 " %s\n",
			     user, rep->uid, rep->uidvalidity, token);
		lc_free_msg(&resp);
		if (n < 0 || (size_t)n >= sizeof(line) ||
		    lc_ack_write(load, line, (size_t)n) < 0) {
			fprintf(stderr, "load: cannot write the ack log: %s\n",
				strerror(errno));
			atomic_store(&load->fatal, 1);
			break;
		}
		atomic_fetch_add(&load->acked, 1);
	}
	mp_buf_free(&body);
	return NULL;
}

static int lc_cmd_load(struct lc_conn *cn, int users, int threads,
		       int seconds, uint64_t max_appends, const char *acklog,
		       size_t size)
{
	struct mp_rpc_channel **ch = &cn->ch;
	struct lc_load load;
	struct lc_worker *workers;
	int started = 0, ret = 0;

	memset(&load, 0, sizeof(load));
	load.node = cn->node;
	load.route = cn->route;
	load.users = users;
	load.size = size;
	load.max_appends = max_appends;
	load.deadline_ns = lc_now_ns() + (int64_t)seconds * 1000000000;
	atomic_init(&load.acked, 0);
	atomic_init(&load.errors, 0);
	atomic_init(&load.errors_shown, 0);
	atomic_init(&load.fatal, 0);
	load.ack_fd = open(acklog, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC,
			   0644);
	if (load.ack_fd < 0) {
		fprintf(stderr, "load: %s: %s\n", acklog, strerror(errno));
		return 1;
	}
	if (pthread_mutex_init(&load.ack_lock, NULL) != 0) {
		(void)close(load.ack_fd);
		return 1;
	}
	if (pthread_rwlock_init(&load.ch_lock, NULL) != 0) {
		(void)pthread_mutex_destroy(&load.ack_lock);
		(void)close(load.ack_fd);
		return 1;
	}
	/* The channel moves in here and back out at the end: lc_reconnect
	 * may have replaced it. */
	load.ch = *ch;
	*ch = NULL;
	load.ch_opened_ns = lc_now_ns();
	workers = calloc((size_t)threads, sizeof(*workers));
	if (workers == NULL) {
		ret = 1;
		goto out;
	}
	for (int i = 0; i < threads; i++) {
		workers[i].load = &load;
		workers[i].idx = i;
		if (pthread_create(&workers[i].tid, NULL, lc_load_thread,
				   &workers[i]) != 0) {
			fprintf(stderr, "load: pthread_create failed\n");
			atomic_store(&load.fatal, 1);
			ret = 1;
			break;
		}
		started++;
	}
	for (int i = 0; i < started; i++)
		(void)pthread_join(workers[i].tid, NULL);
	free(workers);
	if (atomic_load(&load.fatal) != 0)
		ret = 1;
	printf("acked=%" PRIuFAST64 " errors=%" PRIuFAST64 "\n",
	       atomic_load(&load.acked), atomic_load(&load.errors));
	(void)fflush(stdout);
	/* Nothing acknowledged at all is a broken setup (no users, no node),
	 * not a crash test result. */
	if (atomic_load(&load.acked) == 0)
		ret = 1;
out:
	*ch = load.ch;
	(void)pthread_rwlock_destroy(&load.ch_lock);
	(void)pthread_mutex_destroy(&load.ack_lock);
	if (close(load.ack_fd) < 0)
		ret = 1;
	return ret;
}

/* ----------------------------------------------------------- ack log */

struct lc_ack {
	char *user;          /* owned */
	char *token;         /* owned */
	char *thread;        /* owned: token up to its first '-' */
	uint32_t uid;
	uint32_t uidvalidity;
	size_t line;         /* 1-based line in the ack log: its order */
};

struct lc_acklog {
	struct lc_ack *a;    /* owned */
	size_t n, cap;
};

static void lc_acklog_free(struct lc_acklog *log)
{
	for (size_t i = 0; i < log->n; i++) {
		free(log->a[i].user);
		free(log->a[i].token);
		free(log->a[i].thread);
	}
	free(log->a);
	log->a = NULL;
	log->n = log->cap = 0;
}

static int lc_parse_u32(const char *s, uint32_t *v_r)
{
	char *end;
	unsigned long long v;

	if (*s < '0' || *s > '9')
		return MP_EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0' || v > UINT32_MAX)
		return MP_EINVAL;
	*v_r = (uint32_t)v;
	return 0;
}

static int lc_acklog_read(const char *path, struct lc_acklog *log)
{
	FILE *f = fopen(path, "re");
	char *line = NULL;
	size_t linecap = 0, lineno = 0;
	ssize_t len;
	int ret = 0;

	memset(log, 0, sizeof(*log));
	if (f == NULL) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		return MP_ENOENT;
	}
	while ((len = getline(&line, &linecap, f)) >= 0) {
		char *fields[5], *save = NULL, *tok, *dash;
		int nf = 0;
		struct lc_ack *a;

		lineno++;
		for (tok = strtok_r(line, " \n", &save); tok != NULL && nf < 5;
		     tok = strtok_r(NULL, " \n", &save))
			fields[nf++] = tok;
		if (nf == 0)
			continue;
		if (nf != 4) {
			fprintf(stderr, "%s:%zu: malformed ack line\n", path,
				lineno);
			ret = MP_EINVAL;
			break;
		}
		if (log->n == log->cap) {
			size_t ncap = log->cap == 0 ? 1024 : log->cap * 2;
			struct lc_ack *na = realloc(log->a, ncap * sizeof(*na));
			if (na == NULL) {
				ret = MP_ENOMEM;
				break;
			}
			log->a = na;
			log->cap = ncap;
		}
		a = &log->a[log->n];
		memset(a, 0, sizeof(*a));
		if (lc_parse_u32(fields[1], &a->uid) < 0 ||
		    lc_parse_u32(fields[2], &a->uidvalidity) < 0 ||
		    (dash = strchr(fields[3], '-')) == NULL ||
		    dash == fields[3]) {
			fprintf(stderr, "%s:%zu: malformed ack line\n", path,
				lineno);
			ret = MP_EINVAL;
			break;
		}
		a->user = strdup(fields[0]);
		a->token = strdup(fields[3]);
		a->thread = strndup(fields[3], (size_t)(dash - fields[3]));
		a->line = lineno;
		log->n++;
		if (a->user == NULL || a->token == NULL || a->thread == NULL) {
			ret = MP_ENOMEM;
			break;
		}
	}
	free(line);
	if (ret == 0 && ferror(f))
		ret = MP_EIO;
	(void)fclose(f);
	if (ret < 0)
		lc_acklog_free(log);
	return ret;
}

/* Sort keys: by user then log order (groups a user's acks, keeps order). */
static int lc_ack_cmp_user(const void *x, const void *y)
{
	const struct lc_ack *a = x, *b = y;
	int c = strcmp(a->user, b->user);

	if (c != 0)
		return c;
	return a->line < b->line ? -1 : a->line > b->line;
}

static int lc_ack_cmp_thread(const void *x, const void *y)
{
	const struct lc_ack *a = *(const struct lc_ack *const *)x;
	const struct lc_ack *b = *(const struct lc_ack *const *)y;
	int c = strcmp(a->thread, b->thread);

	if (c != 0)
		return c;
	return a->line < b->line ? -1 : a->line > b->line;
}

/* ------------------------------------------------------------ verify */

struct lc_msg {
	uint32_t uid;
	uint64_t modseq;
	uint64_t size;
	char token[LC_TOKEN_MAX];  /* "" when the body has no X-Token */
};

struct lc_verify {
	size_t failures;
	size_t users;
	size_t acked;
	size_t present;            /* messages present in the checked mailboxes */
};

static void lc_fail(struct lc_verify *v, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void lc_fail(struct lc_verify *v, const char *fmt, ...)
{
	va_list ap;

	if (v->failures < LC_FAILURES_SHOWN) {
		fputs("FAIL ", stdout);
		va_start(ap, fmt);
		vprintf(fmt, ap);
		va_end(ap);
		fputc('\n', stdout);
	} else if (v->failures == LC_FAILURES_SHOWN) {
		printf("FAIL ... further failures not shown\n");
	}
	v->failures++;
}

static int lc_cmp_u32(const void *x, const void *y)
{
	uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;

	return a < b ? -1 : a > b;
}

static int lc_cmp_u64(const void *x, const void *y)
{
	uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;

	return a < b ? -1 : a > b;
}

static int lc_msg_cmp_token(const void *x, const void *y)
{
	const struct lc_msg *a = x, *b = y;
	int c = strcmp(a->token, b->token);

	if (c != 0)
		return c;
	return a->uid < b->uid ? -1 : a->uid > b->uid;
}

static int lc_status(struct lc_conn *cn, const char *user,
		     Merpati__V1__StatusReply **st_r, struct lc_verify *v)
{
	Merpati__V1__StatusRequest req = MERPATI__V1__STATUS_REQUEST__INIT;
	ProtobufCMessage *resp;
	char *error = NULL;
	int ret;

	req.user = (char *)user;
	req.name = (char *)LC_MAILBOX;
	ret = lc_call_retry(cn, user, "Status", &req.base,
			    &merpati__v1__status_reply__descriptor, &resp,
			    &error);
	if (ret < 0) {
		lc_fail(v, "user=%s Status failed: %s: %s", user,
			mp_strerror(ret), error == NULL ? "" : error);
		free(error);
		return ret;
	}
	*st_r = (Merpati__V1__StatusReply *)resp;
	if ((*st_r)->mailbox == NULL) {
		lc_fail(v, "user=%s Status reply without mailbox", user);
		lc_free_msg(&resp);
		*st_r = NULL;
		return MP_EPROTO;
	}
	return 0;
}

/* Reads the whole INBOX index of user, page by page, and the token of every
 * message. */
static int lc_read_mailbox(struct lc_conn *cn, const char *user,
			   struct lc_msg **msgs_r, size_t *n_r,
			   Merpati__V1__FetchIndexReply *last_r,
			   struct lc_verify *v)
{
	struct lc_msg *msgs = NULL;
	size_t n = 0, cap = 0;
	uint32_t next_uid = 1;
	int ret = 0, pages = 0;
	int more = 1;

	while (more) {
		Merpati__V1__FetchIndexRequest req =
			MERPATI__V1__FETCH_INDEX_REQUEST__INIT;
		Merpati__V1__FetchIndexReply *rep;
		ProtobufCMessage *resp;
		char set[32], *error = NULL;

		if (++pages > LC_MAX_PAGES) {
			lc_fail(v, "user=%s FetchIndex paging did not end", user);
			ret = MP_EPROTO;
			break;
		}
		/* An explicit upper bound rather than '*': "n:*" with n above
		 * the highest uid would mean "*:n" in IMAP. */
		snprintf(set, sizeof(set), "%" PRIu32 ":4294967295", next_uid);
		req.user = (char *)user;
		req.mailbox = (char *)LC_MAILBOX;
		req.uid_set = set;
		req.limit = LC_INDEX_PAGE;
		ret = lc_call_retry(cn, user, "FetchIndex", &req.base,
				    &merpati__v1__fetch_index_reply__descriptor,
				    &resp, &error);
		if (ret < 0) {
			lc_fail(v, "user=%s FetchIndex %s failed: %s: %s", user,
				set, mp_strerror(ret), error == NULL ? "" : error);
			free(error);
			break;
		}
		rep = (Merpati__V1__FetchIndexReply *)resp;
		last_r->uidvalidity = rep->uidvalidity;
		last_r->highestmodseq = rep->highestmodseq;
		last_r->uidnext = rep->uidnext;
		more = rep->more;
		if (more && rep->n_messages == 0) {
			lc_fail(v, "user=%s FetchIndex %s: more=true with no messages",
				user, set);
			ret = MP_EPROTO;
		}
		for (size_t i = 0; ret == 0 && i < rep->n_messages; i++) {
			const Merpati__V1__MessageIndex *mi = rep->messages[i];

			if (mi->uid < next_uid) {
				lc_fail(v, "user=%s FetchIndex %s returned uid %" PRIu32
					" out of order or out of range", user, set,
					mi->uid);
				ret = MP_EPROTO;
				break;
			}
			if (n == cap) {
				size_t ncap = cap == 0 ? 256 : cap * 2;
				struct lc_msg *nm = realloc(msgs, ncap * sizeof(*nm));
				if (nm == NULL) {
					ret = MP_ENOMEM;
					break;
				}
				msgs = nm;
				cap = ncap;
			}
			memset(&msgs[n], 0, sizeof(msgs[n]));
			msgs[n].uid = mi->uid;
			msgs[n].modseq = mi->modseq;
			msgs[n].size = mi->size;
			n++;
			next_uid = mi->uid == UINT32_MAX ? UINT32_MAX : mi->uid + 1;
		}
		lc_free_msg(&resp);
		if (ret < 0)
			break;
	}

	/* The token of each message, from the first bytes of its body. */
	for (size_t i = 0; ret == 0 && i < n; i++) {
		Merpati__V1__FetchBodyRequest req =
			MERPATI__V1__FETCH_BODY_REQUEST__INIT;
		Merpati__V1__FetchBodyReply *rep;
		ProtobufCMessage *resp;
		char *error = NULL;
		int r;

		req.user = (char *)user;
		req.mailbox = (char *)LC_MAILBOX;
		req.uid = msgs[i].uid;
		req.offset = 0;
		req.length = LC_BODY_PREFIX;
		r = lc_call_retry(cn, user, "FetchBody", &req.base,
				  &merpati__v1__fetch_body_reply__descriptor,
				  &resp, &error);
		if (r < 0) {
			lc_fail(v, "user=%s uid=%" PRIu32 " FetchBody failed: %s: %s",
				user, msgs[i].uid, mp_strerror(r),
				error == NULL ? "" : error);
			free(error);
			continue;
		}
		rep = (Merpati__V1__FetchBodyReply *)resp;
		if (rep->total_size != msgs[i].size)
			lc_fail(v, "user=%s uid=%" PRIu32 " body total_size %" PRIu64
				" != index size %" PRIu64, user, msgs[i].uid,
				rep->total_size, msgs[i].size);
		if (rep->data.len > LC_BODY_PREFIX)
			lc_fail(v, "user=%s uid=%" PRIu32 " FetchBody returned %zu"
				" bytes for a %d-byte range", user, msgs[i].uid,
				rep->data.len, LC_BODY_PREFIX);
		if (lc_find_token(rep->data.data, rep->data.len, msgs[i].token,
				  sizeof(msgs[i].token)) < 0)
			msgs[i].token[0] = '\0';
		lc_free_msg(&resp);
	}
	if (ret < 0) {
		free(msgs);
		return ret;
	}
	*msgs_r = msgs;
	*n_r = n;
	return 0;
}

/* Checks one user's mailbox against its acks a[0..na) (log order). */
static void lc_verify_user(struct lc_conn *cn, struct lc_ack *a,
			   size_t na, struct lc_verify *v)
{
	const char *user = a[0].user;
	Merpati__V1__StatusReply *st = NULL;
	Merpati__V1__FetchIndexReply last = MERPATI__V1__FETCH_INDEX_REPLY__INIT;
	struct lc_msg *msgs = NULL, *by_token = NULL;
	const struct lc_ack **by_thread = NULL;
	uint32_t *uids = NULL;
	uint64_t *modseqs = NULL;
	size_t n = 0;
	const Merpati__V1__MailboxInfo *mb;

	v->users++;
	v->acked += na;
	if (lc_status(cn, user, &st, v) < 0)
		return;
	mb = st->mailbox;
	if (lc_read_mailbox(cn, user, &msgs, &n, &last, v) < 0)
		goto out;
	v->present += n;

	/* Counts and the mailbox's numbers agree (no writer runs meanwhile). */
	if (st->messages != n)
		lc_fail(v, "user=%s Status messages=%" PRIu32 " but the index has %zu",
			user, st->messages, n);
	if (last.uidvalidity != mb->uidvalidity || last.uidnext != mb->uidnext ||
	    last.highestmodseq != mb->highestmodseq)
		lc_fail(v, "user=%s Status (uidvalidity=%" PRIu32 " uidnext=%" PRIu32
			" highestmodseq=%" PRIu64 ") and FetchIndex (%" PRIu32
			" %" PRIu32 " %" PRIu64 ") disagree", user, mb->uidvalidity,
			mb->uidnext, mb->highestmodseq, last.uidvalidity,
			last.uidnext, last.highestmodseq);

	/* Uids unique and below uidnext; modseqs distinct and <= highest. */
	uids = calloc(n + 1, sizeof(*uids));
	modseqs = calloc(n + 1, sizeof(*modseqs));
	by_token = calloc(n + 1, sizeof(*by_token));
	by_thread = calloc(na, sizeof(*by_thread));
	if (uids == NULL || modseqs == NULL || by_token == NULL ||
	    by_thread == NULL) {
		lc_fail(v, "user=%s out of memory", user);
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		uids[i] = msgs[i].uid;
		modseqs[i] = msgs[i].modseq;
		if (msgs[i].uid == 0 || msgs[i].uid >= mb->uidnext)
			lc_fail(v, "user=%s uid=%" PRIu32 " not below uidnext=%" PRIu32,
				user, msgs[i].uid, mb->uidnext);
		if (msgs[i].modseq == 0 || msgs[i].modseq > mb->highestmodseq)
			lc_fail(v, "user=%s uid=%" PRIu32 " modseq=%" PRIu64
				" not in 1..highestmodseq=%" PRIu64, user,
				msgs[i].uid, msgs[i].modseq, mb->highestmodseq);
		if (msgs[i].token[0] == '\0')
			lc_fail(v, "user=%s uid=%" PRIu32 " has no X-Token header",
				user, msgs[i].uid);
	}
	qsort(uids, n, sizeof(*uids), lc_cmp_u32);
	qsort(modseqs, n, sizeof(*modseqs), lc_cmp_u64);
	for (size_t i = 1; i < n; i++) {
		if (uids[i] == uids[i - 1])
			lc_fail(v, "user=%s uid=%" PRIu32 " listed twice", user,
				uids[i]);
		if (modseqs[i] == modseqs[i - 1])
			lc_fail(v, "user=%s modseq=%" PRIu64 " held by two messages",
				user, modseqs[i]);
	}

	/* Each token at most once in the mailbox. */
	if (n > 0)
		memcpy(by_token, msgs, n * sizeof(*msgs));
	qsort(by_token, n, sizeof(*by_token), lc_msg_cmp_token);
	for (size_t i = 1; i < n; i++) {
		if (by_token[i].token[0] != '\0' &&
		    strcmp(by_token[i].token, by_token[i - 1].token) == 0)
			lc_fail(v, "user=%s token=%s stored twice (uids %" PRIu32
				" and %" PRIu32 ")", user, by_token[i].token,
				by_token[i - 1].uid, by_token[i].uid);
	}

	/* Every ack: present, at its uid, same uidvalidity. */
	for (size_t i = 0; i < na; i++) {
		struct lc_msg key;
		const struct lc_msg *m;

		if (a[i].uidvalidity != mb->uidvalidity)
			lc_fail(v, "user=%s token=%s acked with uidvalidity=%" PRIu32
				" but the mailbox has %" PRIu32, user, a[i].token,
				a[i].uidvalidity, mb->uidvalidity);
		memset(&key, 0, sizeof(key));
		if (strlen(a[i].token) >= sizeof(key.token)) {
			lc_fail(v, "user=%s token=%s too long", user, a[i].token);
			continue;
		}
		memcpy(key.token, a[i].token, strlen(a[i].token) + 1);
		/* Lowest uid with this token: compare on the token only. */
		m = NULL;
		for (size_t lo = 0, hi = n; lo < hi;) {
			size_t mid = lo + (hi - lo) / 2;
			int c = strcmp(by_token[mid].token, key.token);
			if (c < 0) {
				lo = mid + 1;
			} else {
				if (c == 0)
					m = &by_token[mid];
				hi = mid;
			}
		}
		if (m == NULL)
			lc_fail(v, "user=%s token=%s acked at uid=%" PRIu32
				" (ack log line %zu) is MISSING", user, a[i].token,
				a[i].uid, a[i].line);
		else if (m->uid != a[i].uid)
			lc_fail(v, "user=%s token=%s acked at uid=%" PRIu32
				" but stored at uid=%" PRIu32, user, a[i].token,
				a[i].uid, m->uid);
	}

	/* Per (user, thread), acked uids strictly increase in log order. */
	for (size_t i = 0; i < na; i++)
		by_thread[i] = &a[i];
	qsort(by_thread, na, sizeof(*by_thread), lc_ack_cmp_thread);
	for (size_t i = 1; i < na; i++) {
		if (strcmp(by_thread[i]->thread, by_thread[i - 1]->thread) != 0)
			continue;
		if (by_thread[i]->uid <= by_thread[i - 1]->uid)
			lc_fail(v, "user=%s thread=%s acked uid=%" PRIu32
				" (line %zu) after uid=%" PRIu32 " (line %zu)", user,
				by_thread[i]->thread, by_thread[i]->uid,
				by_thread[i]->line, by_thread[i - 1]->uid,
				by_thread[i - 1]->line);
	}
out:
	free(uids);
	free(modseqs);
	free(by_token);
	free(by_thread);
	free(msgs);
	lc_free_msg((ProtobufCMessage **)&st);
}

static int lc_cmd_verify(struct lc_conn *cn, const char *acklog)
{
	struct lc_acklog log;
	struct lc_verify v;
	int ret;

	memset(&v, 0, sizeof(v));
	if ((ret = lc_acklog_read(acklog, &log)) < 0)
		return 1;
	qsort(log.a, log.n, sizeof(*log.a), lc_ack_cmp_user);
	for (size_t i = 0; i < log.n;) {
		size_t j = i + 1;
		while (j < log.n && strcmp(log.a[j].user, log.a[i].user) == 0)
			j++;
		lc_verify_user(cn, &log.a[i], j - i, &v);
		i = j;
	}
	lc_acklog_free(&log);
	if (v.failures > 0) {
		printf("verify FAILED failures=%zu users=%zu acked=%zu present=%zu\n",
		       v.failures, v.users, v.acked, v.present);
		return 1;
	}
	if (v.acked == 0) {
		printf("verify FAILED: the ack log is empty\n");
		return 1;
	}
	printf("verify ok users=%zu acked=%zu present=%zu\n", v.users, v.acked,
	       v.present);
	return 0;
}

/* ------------------------------------------------------ append-after */

static int lc_cmd_append_after(struct lc_conn *cn, const char *acklog)
{
	struct lc_acklog log;
	struct lc_verify v;
	struct mp_buf body;
	int ret;

	memset(&v, 0, sizeof(v));
	if ((ret = lc_acklog_read(acklog, &log)) < 0)
		return 1;
	mp_buf_init(&body, 64 * 1024);
	qsort(log.a, log.n, sizeof(*log.a), lc_ack_cmp_user);
	for (size_t i = 0; i < log.n;) {
		const char *user = log.a[i].user;
		uint32_t max_uid = 0;
		Merpati__V1__StatusReply *st = NULL;
		Merpati__V1__AppendRequest req = MERPATI__V1__APPEND_REQUEST__INIT;
		Merpati__V1__AppendReply *rep;
		ProtobufCMessage *resp;
		char token[LC_TOKEN_MAX], *error = NULL;
		uint64_t rnd, hms_before;
		uint32_t uidnext_before;
		size_t j = i;

		while (j < log.n && strcmp(log.a[j].user, user) == 0) {
			if (log.a[j].uid > max_uid)
				max_uid = log.a[j].uid;
			j++;
		}
		v.users++;
		if (lc_status(cn, user, &st, &v) < 0)
			goto next;
		hms_before = st->mailbox->highestmodseq;
		uidnext_before = st->mailbox->uidnext;
		lc_free_msg((ProtobufCMessage **)&st);

		if (lc_random64(&rnd) < 0 ||
		    snprintf(token, sizeof(token), "after-0-%016" PRIx64, rnd) < 0 ||
		    lc_make_body(&body, 2048, user, token, rnd) < 0) {
			lc_fail(&v, "user=%s cannot build a body", user);
			goto next;
		}
		req.user = (char *)user;
		req.mailbox = (char *)LC_MAILBOX;
		req.body.data = (uint8_t *)body.data;
		req.body.len = body.len;
		req.request_id = token;
		ret = lc_call_retry(cn, user, "Append", &req.base,
				    &merpati__v1__append_reply__descriptor,
				    &resp, &error);
		if (ret < 0) {
			lc_fail(&v, "user=%s Append failed: %s: %s", user,
				mp_strerror(ret), error == NULL ? "" : error);
			free(error);
			goto next;
		}
		rep = (Merpati__V1__AppendReply *)resp;
		if (rep->uid <= max_uid)
			lc_fail(&v, "user=%s new uid=%" PRIu32 " REUSES an acked uid"
				" (highest acked %" PRIu32 ")", user, rep->uid, max_uid);
		if (rep->uid < uidnext_before)
			lc_fail(&v, "user=%s new uid=%" PRIu32 " below uidnext=%" PRIu32
				" reported before the append", user, rep->uid,
				uidnext_before);
		if (rep->modseq <= hms_before)
			lc_fail(&v, "user=%s new modseq=%" PRIu64 " not above"
				" highestmodseq=%" PRIu64 " before the append", user,
				rep->modseq, hms_before);
		if (rep->uidvalidity != log.a[i].uidvalidity)
			lc_fail(&v, "user=%s uidvalidity=%" PRIu32 " changed from the"
				" acked %" PRIu32, user, rep->uidvalidity,
				log.a[i].uidvalidity);
		printf("user=%s max_acked_uid=%" PRIu32 " new_uid=%" PRIu32
		       " modseq_before=%" PRIu64 " new_modseq=%" PRIu64 "\n",
		       user, max_uid, rep->uid, hms_before, rep->modseq);
		lc_free_msg(&resp);
	next:
		i = j;
	}
	mp_buf_free(&body);
	lc_acklog_free(&log);
	if (v.failures > 0) {
		printf("append-after FAILED failures=%zu users=%zu\n", v.failures,
		       v.users);
		return 1;
	}
	if (v.users == 0) {
		printf("append-after FAILED: the ack log is empty\n");
		return 1;
	}
	printf("append-after ok users=%zu\n", v.users);
	return 0;
}

/* ---------------------------------------------------- replicas-agree */

/* What one in-sync replica said about a shard. */
struct lc_digest {
	char id[MP_NODE_ID_MAX + 1];
	int err;                     /* 0: the fields below are valid */
	char why[160];               /* when err != 0 */
	uint64_t epoch, lsn, keys;
	uint8_t sha[32];
};

/* Asks every ISR member of shard for its digest (as the map says now).
 * 1 when all answered alike, 0 when not (d[0..*n_r) says why). */
static int lc_shard_digests(struct mp_route *rt, uint32_t shard,
			    const char *path, struct lc_digest *d, size_t *n_r,
			    char *why, size_t whylen)
{
	struct mp_shardmap *map = mp_route_map(rt);
	struct mp_shard_rec rec;
	int agree = 1;

	*n_r = 0;
	if (mp_shardmap_get_shard(map, shard, &rec, NULL) < 0) {
		snprintf(why, whylen, "no shard record");
		return 0;
	}
	why[0] = '\0';
	for (size_t i = 0; i < rec.n_isr; i++) {
		Merpati__Repl__V1__ShardDigestRequest req =
			MERPATI__REPL__V1__SHARD_DIGEST_REQUEST__INIT;
		Merpati__Repl__V1__ShardDigestReply *rep = NULL;
		struct lc_digest *x = &d[(*n_r)++];
		char addr[MP_ADDR_MAX + 1], *msg = NULL;

		memset(x, 0, sizeof(*x));
		memcpy(x->id, rec.isr[i], sizeof(x->id));
		if (mp_shardmap_node_addr(map, rec.isr[i], addr) < 0) {
			x->err = MP_ENOENT;
			snprintf(x->why, sizeof(x->why), "no live node record");
			agree = 0;
			continue;
		}
		req.shard = shard;
		x->err = mp_route_call_node(rt, addr, path, &req.base,
					    &merpati__repl__v1__shard_digest_reply__descriptor,
					    LC_DIGEST_TIMEOUT_MS,
					    (ProtobufCMessage **)&rep, &msg);
		if (x->err == 0 && (rep == NULL || rep->sha256.len != 32)) {
			x->err = MP_EPROTO;
			msg = msg != NULL ? msg : strdup("no 32-byte sha256");
		}
		if (x->err < 0) {
			snprintf(x->why, sizeof(x->why), "%s: %s",
				 mp_strerror(x->err), msg == NULL ? "" : msg);
			free(msg);
			if (rep != NULL)
				protobuf_c_message_free_unpacked(&rep->base, NULL);
			agree = 0;
			continue;
		}
		free(msg);
		x->epoch = rep->epoch;
		x->lsn = rep->lsn;
		x->keys = rep->keys;
		memcpy(x->sha, rep->sha256.data, 32);
		protobuf_c_message_free_unpacked(&rep->base, NULL);
		if (x->lsn != d[0].lsn || memcmp(x->sha, d[0].sha, 32) != 0)
			agree = 0;
	}
	if (*n_r > 0 && d[0].err < 0)
		agree = 0;
	return agree;
}

/* One line per member of a shard that did not agree in time. */
static void lc_print_mismatch(uint32_t s, const struct lc_digest *d, size_t n,
			      const char *why)
{
	if (n == 0)
		printf("MISMATCH shard=%" PRIu32 " %s\n", s, why);
	for (size_t i = 0; i < n; i++) {
		if (d[i].err < 0) {
			printf("MISMATCH shard=%" PRIu32 " node=%s error=%s\n", s,
			       d[i].id, d[i].why);
			continue;
		}
		printf("MISMATCH shard=%" PRIu32 " node=%s epoch=%" PRIu64
		       " lsn=%" PRIu64 " keys=%" PRIu64
		       " digest=%02x%02x%02x%02x%02x%02x\n", s, d[i].id,
		       d[i].epoch, d[i].lsn, d[i].keys, d[i].sha[0], d[i].sha[1],
		       d[i].sha[2], d[i].sha[3], d[i].sha[4], d[i].sha[5]);
	}
}

static int lc_cmd_replicas_agree(struct lc_conn *cn, int timeout_s)
{
	struct mp_shardmap *map = mp_route_map(cn->route);
	char path[128];
	uint32_t nshards, bad = 0;

	if (mp_rpc_method_path(&merpati__repl__v1__replication__descriptor,
			       "ShardDigest", path, sizeof(path)) == NULL) {
		fprintf(stderr, "replicas-agree: no ShardDigest method\n");
		return 1;
	}
	pthread_mutex_lock(&map->mu);
	nshards = map->config.shards;
	pthread_mutex_unlock(&map->mu);
	if (nshards == 0) {
		printf("replicas-agree FAILED: the cluster has no shards\n");
		return 1;
	}
	for (uint32_t s = 0; s < nshards; s++) {
		struct lc_digest d[MP_REPLICAS_MAX];
		int64_t deadline = lc_now_ns() + (int64_t)timeout_s * 1000000000;
		char why[64];
		size_t n = 0;

		/* Writes in flight reach the members one after another, and
		 * a follower catching up lags for a while: compare again
		 * (with the map re-read) until they meet or time is up. */
		while (!lc_shard_digests(cn->route, s, path, d, &n, why,
					 sizeof(why))) {
			if (lc_now_ns() >= deadline) {
				lc_print_mismatch(s, d, n, why);
				bad++;
				break;
			}
			lc_sleep_ns(LC_AGREE_PAUSE_NS);
			(void)mp_route_refresh(cn->route);
		}
	}
	if (bad > 0) {
		printf("replicas DISAGREE shards=%" PRIu32 " mismatched=%" PRIu32
		       "\n", nshards, bad);
		return 1;
	}
	printf("replicas agree shards=%" PRIu32 "\n", nshards);
	return 0;
}

/* -------------------------------------------------------------- main */

static void lc_usage(void)
{
	fprintf(stderr,
		"usage: mp-loadclient load TARGET --users N --threads T"
		" --seconds S --max-appends M --acklog FILE [--size BYTES]\n"
		"       mp-loadclient verify TARGET --acklog FILE\n"
		"       mp-loadclient append-after TARGET --acklog FILE\n"
		"       mp-loadclient replicas-agree --etcd ENDPOINTS"
		" [--cluster NAME] [--timeout S]\n"
		"TARGET: --node ADDR, or --etcd ENDPOINTS [--cluster NAME]"
		" (calls go to each user's shard leader)\n");
}

static int lc_parse_num(const char *opt, const char *s, unsigned long long lo,
			unsigned long long hi, unsigned long long *v_r)
{
	char *end;
	unsigned long long v;

	errno = 0;
	if (*s < '0' || *s > '9' || (v = strtoull(s, &end, 10), errno != 0) ||
	    *end != '\0' || v < lo || v > hi) {
		fprintf(stderr, "mp-loadclient: --%s wants a number in %llu..%llu\n",
			opt, lo, hi);
		return MP_EINVAL;
	}
	*v_r = v;
	return 0;
}

/* --etcd: the etcd client on the cluster's prefix and a route over it,
 * with the cluster's config known. 0, or 1 after printing why. */
static int lc_open_cluster(struct lc_conn *cn, const char *etcd,
			   const char *cluster)
{
	struct mp_route_opts o;
	char prefix[128], *error = NULL;
	size_t len = strlen(cluster);
	uint32_t nshards;
	int ret;

	if (len == 0 || len > LC_CLUSTER_NAME_MAX ||
	    strspn(cluster, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
		   "0123456789_.-") != len) {
		fprintf(stderr, "mp-loadclient: bad --cluster name \"%s\"\n",
			cluster);
		return 1;
	}
	snprintf(prefix, sizeof(prefix), "/merpati/%s/", cluster);
	ret = mp_etcd_open(etcd, prefix, LC_ETCD_TIMEOUT_MS, &cn->etcd, &error);
	if (ret < 0) {
		fprintf(stderr, "mp-loadclient: etcd %s: %s: %s\n", etcd,
			mp_strerror(ret), error == NULL ? "" : error);
		free(error);
		cn->etcd = NULL;
		return 1;
	}
	memset(&o, 0, sizeof(o));
	o.timeout_ms = LC_ROUTE_TIMEOUT_MS;
	ret = mp_route_open(cn->etcd, &o, &cn->route, &error);
	if (ret < 0) {
		fprintf(stderr, "mp-loadclient: cluster %s at %s: %s\n", cluster,
			etcd, error == NULL ? mp_strerror(ret) : error);
		free(error);
		cn->route = NULL;
		return 1;
	}
	pthread_mutex_lock(&mp_route_map(cn->route)->mu);
	nshards = mp_route_map(cn->route)->config.shards;
	pthread_mutex_unlock(&mp_route_map(cn->route)->mu);
	if (nshards == 0) {
		fprintf(stderr, "mp-loadclient: etcd %s has no cluster \"%s\" "
			"(no %sconfig)\n", etcd, cluster, prefix);
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "node", required_argument, NULL, 'n' },
		{ "etcd", required_argument, NULL, 'e' },
		{ "cluster", required_argument, NULL, 'c' },
		{ "timeout", required_argument, NULL, 'o' },
		{ "users", required_argument, NULL, 'u' },
		{ "threads", required_argument, NULL, 't' },
		{ "seconds", required_argument, NULL, 's' },
		{ "max-appends", required_argument, NULL, 'm' },
		{ "acklog", required_argument, NULL, 'a' },
		{ "size", required_argument, NULL, 'z' },
		{ NULL, 0, NULL, 0 },
	};
	const char *cmd, *node = NULL, *acklog = NULL, *etcd = NULL;
	const char *cluster = "default";
	unsigned long long users = 0, threads = 0, seconds = 0, max = 0;
	unsigned long long size = 2048, timeout = 20;
	struct lc_conn cn;
	int c, ret, agree;

	memset(&cn, 0, sizeof(cn));
	if (argc < 2) {
		lc_usage();
		return 2;
	}
	cmd = argv[1];
	while ((c = getopt_long(argc - 1, argv + 1, "", opts, NULL)) != -1) {
		switch (c) {
		case 'n': node = optarg; break;
		case 'e': etcd = optarg; break;
		case 'c': cluster = optarg; break;
		case 'a': acklog = optarg; break;
		case 'o':
			if (lc_parse_num("timeout", optarg, 1, 3600, &timeout) < 0)
				return 2;
			break;
		case 'u':
			if (lc_parse_num("users", optarg, 1, 1000000, &users) < 0)
				return 2;
			break;
		case 't':
			if (lc_parse_num("threads", optarg, 1, LC_MAX_THREADS,
					 &threads) < 0)
				return 2;
			break;
		case 's':
			if (lc_parse_num("seconds", optarg, 1, 86400, &seconds) < 0)
				return 2;
			break;
		case 'm':
			if (lc_parse_num("max-appends", optarg, 1, UINT64_MAX / 2,
					 &max) < 0)
				return 2;
			break;
		case 'z':
			if (lc_parse_num("size", optarg, 512, LC_MAX_SIZE, &size) < 0)
				return 2;
			break;
		default:
			lc_usage();
			return 2;
		}
	}
	agree = strcmp(cmd, "replicas-agree") == 0;
	/* Exactly one target; replicas-agree asks every replica, so it
	 * needs the cluster. */
	if (optind + 1 != argc || (node == NULL) == (etcd == NULL) ||
	    (agree ? node != NULL || acklog != NULL : acklog == NULL)) {
		lc_usage();
		return 2;
	}
	if (strcmp(cmd, "load") == 0 &&
	    (users == 0 || threads == 0 || seconds == 0 || max == 0)) {
		lc_usage();
		return 2;
	}
	if (strcmp(cmd, "load") != 0 && strcmp(cmd, "verify") != 0 &&
	    strcmp(cmd, "append-after") != 0 && !agree) {
		lc_usage();
		return 2;
	}

	mp_rpc_init();
	if (etcd != NULL) {
		ret = lc_open_cluster(&cn, etcd, cluster);
		if (ret != 0)
			goto out;
	} else {
		cn.node = node;
		ret = mp_rpc_channel_open(node, MP_RPC_DEFAULT_MAX_MSG, &cn.ch);
		if (ret < 0) {
			fprintf(stderr, "mp-loadclient: cannot open a channel to"
				" %s: %s\n", node, mp_strerror(ret));
			cn.ch = NULL;
			ret = 1;
			goto out;
		}
	}
	if (strcmp(cmd, "load") == 0)
		ret = lc_cmd_load(&cn, (int)users, (int)threads, (int)seconds,
				  max, acklog, (size_t)size);
	else if (strcmp(cmd, "verify") == 0)
		ret = lc_cmd_verify(&cn, acklog);
	else if (strcmp(cmd, "append-after") == 0)
		ret = lc_cmd_append_after(&cn, acklog);
	else
		ret = lc_cmd_replicas_agree(&cn, (int)timeout);
out:
	(void)fflush(stdout);
	/* The route's watch uses the etcd client: route first. */
	mp_route_close(&cn.route);
	mp_etcd_close(&cn.etcd);
	mp_rpc_channel_close(&cn.ch);
	mp_rpc_shutdown();
	return ret;
}
