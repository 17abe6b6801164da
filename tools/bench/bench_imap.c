/*
 * mp-bench-imap: IMAP load generator. Two modes.
 *
 * Load (default): --clients sessions, each on its own thread with a blocking
 * socket, behave like a busy mail client, spread over --users. A session
 * LOGINs, then runs rounds of
 *     SELECT INBOX
 *     FETCH 1:* (UID FLAGS)                       (the flag resync)
 *     UID FETCH u BODY.PEEK[]   x --fetches       (random messages)
 *     UID STORE u +FLAGS (\Flagged), UID STORE u -FLAGS (\Flagged)
 *     APPEND INBOX (\Seen) {size+}                (LITERAL+, RFC 7888)
 *     UID STORE a +FLAGS.SILENT (\Deleted), UID EXPUNGE a   (RFC 4315; a is
 *                                                 the APPENDUID just got)
 *     IDLE, --idle-ms of waiting, DONE            (RFC 2177)
 * and LOGOUTs and logs in again every --rounds-per-login rounds. It reports
 * per command the completions/s and the p50/p99 latency from sending the
 * command to its tagged OK (IDLE: to the "+", plus DONE to the OK; the wait
 * itself is not latency). The clock starts once every client has logged
 * in (their first LOGINs arrive together and hash passwords together: a
 * warm-up, reported apart). --prefill N first APPENDs to every user's INBOX
 * until it holds N messages, so that repeated runs see the same mailboxes.
 * A reply that does not come within RECV_TIMEOUT_S counts as a timeout (the
 * session reconnects); clients still waiting STOP_GRACE_S after the end are
 * listed with the command they wait for, and their sockets shut down.
 *
 * Idle (--idle-conns N): one thread and epoll open N connections (at most
 * IDLE_INFLIGHT opening at once), LOGIN, SELECT INBOX and IDLE on each, and
 * measure how long that takes. With --frontend-pid it reads the frontend's
 * VmRSS before, after half and after all of them, and reports the KiB each
 * idle connection costs (average, and marginal over the second half), and
 * the frontend's (and the --node-pids') CPU use while they all sit in IDLE
 * for --hold seconds.
 *
 *   mp-bench-imap --port N --users a@d[,b@d...] --password P [--clients 10]
 *                 [--seconds 10] [--size 10240] [--prefill 0] [--fetches 4]
 *                 [--idle-ms 100] [--rounds-per-login 10]
 *   mp-bench-imap --port N --users ... --password P --idle-conns N
 *                 [--frontend-pid PID] [--node-pids P,...] [--hold 5]
 *                 [--seconds 300]
 *
 * Traffic goes only to --host, which must be a loopback address. Responses
 * are read by byte count through literals ({n} then n bytes), untagged lines
 * are looked at only for EXISTS, UIDs and BYE. Never: count a command
 * without its tagged OK; every NO and BAD is counted and reported.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"

#define MAX_CLIENTS 1000
#define MAX_USERS 1000
#define MAX_NODE_PIDS 16
#define MAX_IDLE_CONNS 100000
#define MAX_SAMPLES (1u << 20)     /* latency samples kept per command */
#define MAX_UIDS 16384             /* UIDs a session remembers (a random sample) */
#define MAX_LITERAL (1ull << 31)   /* larger literals in a response: protocol error */
#define MAX_PREFILL 1000000
#define MAX_ERR_PRINTS 20          /* NO/BAD texts shown on stderr */
#define RBUF_LOAD 65536            /* longest response line, load mode */
#define RBUF_IDLE 4096             /* ... idle mode (greeting, SELECT, LOGIN) */
#define CMD_MAX 2048
#define TEXT_MAX 256
#define IDLE_INFLIGHT 100          /* idle mode: connections opening at once */
#define IDLE_SETTLE_S 1.0          /* pause before reading the frontend's RSS */
#define RECV_TIMEOUT_S 30
#define WARMUP_MAX_S 120.0         /* longest wait for every client's first LOGIN */
#define STOP_GRACE_S 2.0           /* then sockets of clients still waiting are shut */

enum cmd { C_LOGIN, C_SELECT, C_FETCH_FLAGS, C_FETCH_BODY, C_STORE, C_APPEND,
	   C_EXPUNGE, C_IDLE, C_N };
static const char *const cmd_name[C_N] = {
	"LOGIN", "SELECT", "FETCH_FLAGS", "FETCH_BODY", "STORE", "APPEND", "EXPUNGE", "IDLE",
};

/* Outcome of one command; RS_FAIL: the connection is unusable. */
enum rstat { RS_OK, RS_NO, RS_BAD, RS_CONT, RS_FAIL };

struct opts {
	const char *host;
	int port;
	unsigned clients;
	double seconds;
	bool seconds_set;
	size_t size;
	char *users[MAX_USERS];
	unsigned nusers;
	const char *password;
	unsigned prefill;
	unsigned fetches;
	unsigned idle_ms;
	unsigned rounds_per_login;
	unsigned idle_conns;
	long frontend_pid;
	long node_pids[MAX_NODE_PIDS];
	unsigned nnode_pids;
	double hold;
};

static struct opts O = {
	.host = "127.0.0.1", .clients = 10, .seconds = 10, .size = 10240, .fetches = 4,
	.idle_ms = 100, .rounds_per_login = 10, .hold = 5,
};

struct cstat {
	struct bench_lat lat;           /* completions and their latencies */
	atomic_uint_fast64_t no, bad;
};
static struct cstat S[C_N];
static atomic_bool measuring;           /* off during --prefill and the warm-up */
static atomic_bool stop_flag;
static atomic_uint_fast64_t n_conn_errors, n_rounds, n_empty_fetches, n_err_prints;
static atomic_uint_fast64_t n_prefilled, n_prefill_errors;
static atomic_uint_fast64_t n_ready;    /* clients past their first LOGIN */
static atomic_uint_fast64_t n_timeouts; /* replies not seen within RECV_TIMEOUT_S */
static atomic_uint_fast64_t n_finished; /* client threads done */

/* ------------------------------------------------------ response reader */

/*
 * Incremental reader of server responses, fed by the caller. It hands out
 * line segments: a line that ends in a literal announcement {n} is one
 * segment, the n literal bytes are skipped by count (never scanned for
 * CRLF), and the line after them continues the same response (first ==
 * false). Bytes live in buf[off, len).
 */
struct rd {
	char *buf;                      /* owned */
	size_t cap, off, len;
	size_t consume;                 /* length of the segment last handed out */
	uint64_t skip;                  /* literal bytes still to skip */
	uint64_t literal_bytes;         /* skipped since the caller reset it */
	bool cont;                      /* the next segment continues a response */
};

struct seg {
	const char *p;                  /* borrowed from rd.buf, valid until rd_next */
	size_t n;                       /* without the CRLF */
	bool first;                     /* first segment of a response */
};

static int rd_init(struct rd *r, size_t cap)
{
	memset(r, 0, sizeof(*r));
	r->buf = malloc(cap);
	if (r->buf == NULL)
		return -1;
	r->cap = cap;
	return 0;
}

static void rd_reset(struct rd *r)
{
	r->off = r->len = r->consume = 0;
	r->skip = r->literal_bytes = 0;
	r->cont = false;
}

/* If the segment ends in {digits} or {digits+}, the literal's size, else -1. */
static int64_t literal_size(const char *p, size_t n)
{
	if (n < 3 || p[n - 1] != '}')
		return -1;
	size_t i = n - 1;
	if (p[i - 1] == '+')
		i--;
	size_t end = i;
	while (i > 0 && p[i - 1] >= '0' && p[i - 1] <= '9')
		i--;
	if (i == 0 || p[i - 1] != '{' || i == end || end - i > 10)
		return -1;
	uint64_t v = 0;
	for (size_t k = i; k < end; k++)
		v = v * 10 + (uint64_t)(p[k] - '0');
	return v > MAX_LITERAL ? -2 : (int64_t)v;
}

/* 1: a segment in *sg; 0: more input needed; -1: protocol error. */
static int rd_next(struct rd *r, struct seg *sg)
{
	r->off += r->consume;
	r->consume = 0;
	if (r->skip > 0) {
		size_t avail = r->len - r->off;
		size_t k = r->skip < avail ? (size_t)r->skip : avail;
		r->off += k;
		r->skip -= k;
		r->literal_bytes += k;
		if (r->skip > 0)
			return 0;
	}
	char *start = r->buf + r->off;
	char *eol = memmem(start, r->len - r->off, "\r\n", 2);
	if (eol == NULL)
		return r->off == 0 && r->len == r->cap ? -1 : 0;
	size_t n = (size_t)(eol - start);
	sg->p = start;
	sg->n = n;
	sg->first = !r->cont;
	r->consume = n + 2;
	int64_t lit = literal_size(start, n);
	if (lit < -1)
		return -1;
	r->cont = lit >= 0;
	r->skip = lit > 0 ? (uint64_t)lit : 0;
	return 1;
}

/* Make room for more input: move the unread bytes to the front. */
static void rd_compact(struct rd *r)
{
	if (r->off == 0)
		return;
	memmove(r->buf, r->buf + r->off, r->len - r->off);
	r->len -= r->off;
	r->off = 0;
}

static bool seg_starts(const struct seg *sg, const char *s)
{
	size_t n = strlen(s);
	return sg->n >= n && strncasecmp(sg->p, s, n) == 0;
}

/* The status of a tagged line "TAG OK ..." (tag_len includes the space);
 * the text after the status word goes to text. */
static enum rstat tagged_status(const struct seg *sg, size_t tag_len, char *text, size_t cap)
{
	const char *p = sg->p + tag_len;
	size_t n = sg->n - tag_len;
	enum rstat st;
	size_t w;
	if (n >= 2 && strncasecmp(p, "OK", 2) == 0) {
		st = RS_OK;
		w = 2;
	} else if (n >= 2 && strncasecmp(p, "NO", 2) == 0) {
		st = RS_NO;
		w = 2;
	} else if (n >= 3 && strncasecmp(p, "BAD", 3) == 0) {
		st = RS_BAD;
		w = 3;
	} else {
		return RS_FAIL;
	}
	if (n > w && p[w] != ' ')
		return RS_FAIL;
	p += w;
	n -= w;
	while (n > 0 && *p == ' ') {
		p++;
		n--;
	}
	if (n >= cap)
		n = cap - 1;
	memcpy(text, p, n);
	text[n] = '\0';
	return st;
}

/* ---------------------------------------------------------- connection */

/* --------------------------------------------------------- load session */

struct sess {
	unsigned idx;
	unsigned user;                  /* index into O.users */
	int fd;
	atomic_int live_fd;             /* fd, for main to shut down at the end */
	_Atomic(const char *) what;     /* the command waiting for its reply */
	struct rd r;
	bool literal_plus;              /* the greeting offered LITERAL+ */
	bool bye;
	unsigned tagno;
	char tag[16];
	size_t tag_len;                 /* with the trailing space */
	char cmd[CMD_MAX];
	char text[TEXT_MAX];            /* of the last tagged response */
	uint64_t rng;
	uint32_t exists;
	bool collect_uids;
	uint32_t *uids;                 /* owned; MAX_UIDS */
	size_t nuids;
	uint64_t uids_seen;
	char *msg;                      /* owned; the APPEND body, O.size bytes */
	size_t msg_len;
	size_t token_off;               /* 16 hex digits rewritten per APPEND */
	uint64_t appended;
	bool flagged;                   /* the next STORE pair starts with -FLAGS */
	bool ready;                     /* logged in once */
};

/* Completions count while measuring; refusals always (warm-up and prefill
 * included: an error is an error). */
static void record(enum cmd k, enum rstat st, double ms, const char *text)
{
	struct cstat *c = &S[k];
	if (st == RS_OK) {
		if (!atomic_load(&measuring))
			return;
		bench_lat_add(&c->lat, ms);
		return;
	}
	if (st == RS_NO)
		atomic_fetch_add(&c->no, 1);
	else if (st == RS_BAD)
		atomic_fetch_add(&c->bad, 1);
	else
		return;
	if (atomic_fetch_add(&n_err_prints, 1) < MAX_ERR_PRINTS)
		fprintf(stderr, "mp-bench-imap: %s: %s %s\n", cmd_name[k],
			st == RS_NO ? "NO" : "BAD", text);
}

static const char *sess_what(struct sess *s)
{
	const char *w = atomic_load(&s->what);
	return w != NULL ? w : "?";
}

static void sess_close(struct sess *s)
{
	atomic_store(&s->live_fd, -1);
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
}

static int sess_fill(struct sess *s)
{
	rd_compact(&s->r);
	if (s->r.len == s->r.cap)
		return -1;
	for (;;) {
		ssize_t n = recv(s->fd, s->r.buf + s->r.len, s->r.cap - s->r.len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			/* SO_RCVTIMEO: the server has not answered in time. */
			atomic_fetch_add(&n_timeouts, 1);
			if (atomic_fetch_add(&n_err_prints, 1) < MAX_ERR_PRINTS)
				fprintf(stderr, "mp-bench-imap: client %u (%s): no reply to %s "
					"within %d s\n", s->idx, O.users[s->user],
					sess_what(s), RECV_TIMEOUT_S);
		}
		if (n <= 0)
			return -1;
		s->r.len += (size_t)n;
		return 0;
	}
}

static void sess_untagged(struct sess *s, const struct seg *sg)
{
	if (seg_starts(sg, "* BYE")) {
		s->bye = true;
		return;
	}
	const char *p = sg->p + 2, *end = sg->p + sg->n;
	uint64_t num = 0;
	const char *q = p;
	while (q < end && *q >= '0' && *q <= '9' && q - p < 10)
		num = num * 10 + (uint64_t)(*q++ - '0');
	if (q == p || q >= end || *q != ' ')
		return;
	q++;
	size_t rest = (size_t)(end - q);
	if (rest == 6 && strncasecmp(q, "EXISTS", 6) == 0) {
		s->exists = (uint32_t)num;
		return;
	}
	if (!s->collect_uids || rest < 7 || strncasecmp(q, "FETCH (", 7) != 0)
		return;
	/* The UID item of this FETCH response: "UID n" after "(" or " ". */
	for (const char *u = q + 6; u + 4 <= end; u++) {
		if ((u[-1] != '(' && u[-1] != ' ') || strncasecmp(u, "UID ", 4) != 0)
			continue;
		uint64_t uid = 0;
		const char *d = u + 4;
		while (d < end && *d >= '0' && *d <= '9' && d - u < 14)
			uid = uid * 10 + (uint64_t)(*d++ - '0');
		if (d == u + 4 || uid == 0 || uid > UINT32_MAX)
			return;
		/* Reservoir sample once the mailbox holds more than MAX_UIDS. */
		s->uids_seen++;
		if (s->nuids < MAX_UIDS) {
			s->uids[s->nuids++] = (uint32_t)uid;
		} else {
			uint64_t j = bench_rng_next(&s->rng) % s->uids_seen;
			if (j < MAX_UIDS)
				s->uids[j] = (uint32_t)uid;
		}
		return;
	}
}

/* Read until the tagged completion of s->tag, or with want_cont until a
 * continuation request. */
static enum rstat sess_wait(struct sess *s, bool want_cont)
{
	for (;;) {
		struct seg sg;
		int r = rd_next(&s->r, &sg);
		if (r < 0)
			return RS_FAIL;
		if (r == 0) {
			if (sess_fill(s) < 0)
				return RS_FAIL;
			continue;
		}
		if (!sg.first)
			continue;
		if (sg.n >= 2 && sg.p[0] == '*' && sg.p[1] == ' ') {
			sess_untagged(s, &sg);
			continue;
		}
		if (sg.n >= 1 && sg.p[0] == '+') {
			if (want_cont)
				return RS_CONT;
			return RS_FAIL;
		}
		if (sg.n >= s->tag_len && memcmp(sg.p, s->tag, s->tag_len) == 0)
			return tagged_status(&sg, s->tag_len, s->text, sizeof(s->text));
		/* Another tag: we never pipeline, so the server is confused. */
		return RS_FAIL;
	}
}

static void next_tag(struct sess *s)
{
	s->tagno++;
	int n = snprintf(s->tag, sizeof(s->tag), "a%u ", s->tagno);
	s->tag_len = (size_t)n;
}

/* Send TAG + the formatted command + CRLF, wait for the completion, record
 * it under k. */
__attribute__((format(printf, 3, 4)))
static enum rstat sess_cmd(struct sess *s, enum cmd k, const char *fmt, ...)
{
	next_tag(s);
	memcpy(s->cmd, s->tag, s->tag_len);
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(s->cmd + s->tag_len, sizeof(s->cmd) - s->tag_len - 2, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(s->cmd) - s->tag_len - 2)
		return RS_FAIL;
	size_t len = s->tag_len + (size_t)n;
	atomic_store(&s->what, cmd_name[k]);
	memcpy(s->cmd + len, "\r\n", 2);
	len += 2;
	s->r.literal_bytes = 0;
	double t0 = bench_now_s();
	if (bench_send_all(s->fd, s->cmd, len, 0) < 0)
		return RS_FAIL;
	enum rstat st = sess_wait(s, false);
	record(k, st, (bench_now_s() - t0) * 1000.0, s->text);
	return st;
}

/* Connect, read the greeting, LOGIN. 0; -1: no connection; -2: LOGIN
 * refused (recorded as such). */
static int sess_login(struct sess *s)
{
	struct sockaddr_in sa;
	if (bench_addr(&sa, O.host, O.port) < 0)
		return -1;
	s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s->fd < 0)
		return -1;
	int one = 1;
	setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	struct timeval tv = { RECV_TIMEOUT_S, 0 };
	setsockopt(s->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(s->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	atomic_store(&s->live_fd, s->fd);
	if (connect(s->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		sess_close(s);
		return -1;
	}
	atomic_store(&s->what, "the greeting");
	rd_reset(&s->r);
	s->bye = false;
	s->exists = 0;
	struct seg sg;
	int r;
	while ((r = rd_next(&s->r, &sg)) == 0)
		if (sess_fill(s) < 0)
			break;
	if (r != 1 || !seg_starts(&sg, "* OK")) {
		if (r == 1 && atomic_fetch_add(&n_err_prints, 1) < MAX_ERR_PRINTS)
			fprintf(stderr, "mp-bench-imap: client %u: greeting: %.*s\n", s->idx,
				(int)(sg.n < 200 ? sg.n : 200), sg.p);
		sess_close(s);
		return -1;
	}
	s->literal_plus = memmem(sg.p, sg.n, "LITERAL+", 8) != NULL;
	char qu[600], qp[600];
	if (bench_quote(qu, sizeof(qu), O.users[s->user]) < 0 ||
	    bench_quote(qp, sizeof(qp), O.password) < 0) {
		sess_close(s);
		return -1;
	}
	enum rstat st = sess_cmd(s, C_LOGIN, "LOGIN %s %s", qu, qp);
	if (st != RS_OK) {
		sess_close(s);
		return st == RS_FAIL ? -1 : -2;
	}
	return 0;
}

static void sess_logout(struct sess *s)
{
	next_tag(s);
	char line[32];
	int n = snprintf(line, sizeof(line), "%sLOGOUT\r\n", s->tag);
	atomic_store(&s->what, "LOGOUT");
	if (bench_send_all(s->fd, line, (size_t)n, 0) == 0)
		(void)sess_wait(s, false);
	sess_close(s);
}

/* A new unique body: the token in the Message-ID changes per APPEND, so the
 * nodes' body deduplication never turns an APPEND into a reference. */
static void sess_new_token(struct sess *s)
{
	static const char hex[] = "0123456789abcdef";
	uint64_t t = ((uint64_t)s->idx << 40) ^ (s->appended++ << 8) ^
		     (bench_rng_next(&s->rng) >> 56);
	for (int i = 15; i >= 0; i--) {
		s->msg[s->token_off + (size_t)i] = hex[t & 15];
		t >>= 4;
	}
}

/* APPEND one message; its UID (from APPENDUID) in *uid_r, 0 if none. */
static enum rstat sess_append(struct sess *s, uint32_t *uid_r)
{
	*uid_r = 0;
	sess_new_token(s);
	next_tag(s);
	char head[128];
	int n = snprintf(head, sizeof(head), "%sAPPEND INBOX (\\Seen) {%zu%s}\r\n", s->tag,
			 s->msg_len, s->literal_plus ? "+" : "");
	double t0 = bench_now_s();
	enum rstat st;
	atomic_store(&s->what, "APPEND");
	if (s->literal_plus) {
		if (bench_send_all(s->fd, head, (size_t)n, MSG_MORE) < 0 ||
		    bench_send_all(s->fd, s->msg, s->msg_len, MSG_MORE) < 0 ||
		    bench_send_all(s->fd, "\r\n", 2, 0) < 0)
			return RS_FAIL;
		st = sess_wait(s, false);
	} else {
		/* RFC 3501 §7.5: wait for the "+" before sending the literal. */
		if (bench_send_all(s->fd, head, (size_t)n, 0) < 0)
			return RS_FAIL;
		st = sess_wait(s, true);
		if (st == RS_CONT) {
			if (bench_send_all(s->fd, s->msg, s->msg_len, MSG_MORE) < 0 ||
			    bench_send_all(s->fd, "\r\n", 2, 0) < 0)
				return RS_FAIL;
			st = sess_wait(s, false);
		}
	}
	record(C_APPEND, st, (bench_now_s() - t0) * 1000.0, s->text);
	if (st == RS_OK) {
		/* RFC 4315 §3: OK [APPENDUID uidvalidity uid] */
		unsigned long v, u;
		const char *a = strstr(s->text, "[APPENDUID ");
		if (a != NULL && sscanf(a + 11, "%lu %lu", &v, &u) == 2 && u > 0 &&
		    u <= UINT32_MAX)
			*uid_r = (uint32_t)u;
	}
	return st;
}

/* IDLE: latency is the time to the "+" plus DONE to the tagged OK. */
static enum rstat sess_idle(struct sess *s)
{
	next_tag(s);
	char line[32];
	int n = snprintf(line, sizeof(line), "%sIDLE\r\n", s->tag);
	atomic_store(&s->what, "IDLE");
	double t0 = bench_now_s();
	if (bench_send_all(s->fd, line, (size_t)n, 0) < 0)
		return RS_FAIL;
	enum rstat st = sess_wait(s, true);
	if (st != RS_CONT) {
		/* A tagged OK without the "+" is a protocol error, not an IDLE. */
		if (st == RS_NO || st == RS_BAD)
			record(C_IDLE, st, 0, s->text);
		return st == RS_OK ? RS_FAIL : st;
	}
	double wait0 = bench_now_s();
	bench_sleep_s(O.idle_ms / 1000.0);
	double wait1 = bench_now_s();
	atomic_store(&s->what, "IDLE's DONE");
	if (bench_send_all(s->fd, "DONE\r\n", 6, 0) < 0)
		return RS_FAIL;
	st = sess_wait(s, false);
	record(C_IDLE, st, (bench_now_s() - t0 - (wait1 - wait0)) * 1000.0, s->text);
	return st;
}

static bool stopped(void)
{
	return atomic_load(&stop_flag);
}

/* One round of the mix. -1: the connection is gone. */
static int sess_round(struct sess *s)
{
#define STEP(x)                                                                         \
	do {                                                                            \
		if ((x) == RS_FAIL)                                                     \
			return -1;                                                      \
		if (stopped())                                                          \
			return 0;                                                       \
	} while (0)
	s->nuids = 0;
	s->uids_seen = 0;
	STEP(sess_cmd(s, C_SELECT, "SELECT INBOX"));
	if (s->exists > 0) {
		s->collect_uids = true;
		enum rstat st = sess_cmd(s, C_FETCH_FLAGS, "FETCH 1:* (UID FLAGS)");
		s->collect_uids = false;
		STEP(st);
	}
	for (unsigned i = 0; i < O.fetches && s->nuids > 0; i++) {
		uint32_t uid = s->uids[bench_rng_next(&s->rng) % s->nuids];
		enum rstat st = sess_cmd(s, C_FETCH_BODY, "UID FETCH %u BODY.PEEK[]", uid);
		if (st == RS_OK && s->r.literal_bytes == 0 && atomic_load(&measuring))
			atomic_fetch_add(&n_empty_fetches, 1); /* expunged meanwhile */
		STEP(st);
	}
	if (s->nuids > 0) {
		uint32_t uid = s->uids[bench_rng_next(&s->rng) % s->nuids];
		STEP(sess_cmd(s, C_STORE, "UID STORE %u %cFLAGS (\\Flagged)", uid,
			      s->flagged ? '-' : '+'));
		STEP(sess_cmd(s, C_STORE, "UID STORE %u %cFLAGS (\\Flagged)", uid,
			      s->flagged ? '+' : '-'));
		s->flagged = !s->flagged;
	}
	uint32_t auid;
	STEP(sess_append(s, &auid));
	if (auid > 0) {
		STEP(sess_cmd(s, C_STORE, "UID STORE %u +FLAGS.SILENT (\\Deleted)", auid));
		STEP(sess_cmd(s, C_EXPUNGE, "UID EXPUNGE %u", auid));
	}
	STEP(sess_idle(s));
#undef STEP
	if (atomic_load(&measuring))
		atomic_fetch_add(&n_rounds, 1);
	return s->bye ? -1 : 0;
}

static int sess_init(struct sess *s, unsigned idx, unsigned user)
{
	memset(s, 0, sizeof(*s));
	s->idx = idx;
	s->user = user;
	s->fd = -1;
	atomic_init(&s->live_fd, -1);
	s->rng = 0x9E3779B97F4A7C15ull ^ ((uint64_t)idx * 0x100000001B3ull) ^
		 (uint64_t)(bench_now_s() * 1e9);
	if (s->rng == 0)
		s->rng = 1;
	if (rd_init(&s->r, RBUF_LOAD) < 0)
		return -1;
	s->uids = malloc(MAX_UIDS * sizeof(*s->uids));
	s->msg = malloc(O.size + 1024);
	if (s->uids == NULL || s->msg == NULL)
		return -1;
	int n = snprintf(s->msg, 1024,
			 "From: Bench <bench@bench.test>\r\n"
			 "To: <%s>\r\n"
			 "Subject: bench message %u\r\n"
			 "Date: Mon, 07 Dec 2026 20:00:00 +0000\r\n"
			 "Message-ID: <0000000000000000.%u@bench.test>\r\n"
			 "MIME-Version: 1.0\r\n"
			 "Content-Type: text/plain; charset=us-ascii\r\n\r\n",
			 O.users[user], idx, idx);
	if (n < 0 || n >= 1024)
		return -1;
	const char *tok = strstr(s->msg, "<0000000000000000.");
	s->token_off = (size_t)(tok - s->msg) + 1;
	size_t len = (size_t)n;
	/* Pseudo-random text in 78-octet lines, so compression flatters nothing. */
	static const char b64[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	while (len + 78 <= O.size) {
		for (int i = 0; i < 76; i++)
			s->msg[len + (size_t)i] = b64[bench_rng_next(&s->rng) & 63];
		memcpy(s->msg + len + 76, "\r\n", 2);
		len += 78;
	}
	s->msg_len = len;
	return 0;
}

static void sess_free(struct sess *s)
{
	sess_close(s);
	free(s->r.buf);
	free(s->uids);
	free(s->msg);
	s->r.buf = NULL;
	s->uids = NULL;
	s->msg = NULL;
}

static void *client_thread(void *arg)
{
	struct sess *s = arg;
	while (!stopped()) {
		int lr = sess_login(s);
		if (lr < 0) {
			if (lr == -1 && !stopped()) {
				atomic_fetch_add(&n_conn_errors, 1);
				if (atomic_fetch_add(&n_err_prints, 1) < MAX_ERR_PRINTS)
					fprintf(stderr, "mp-bench-imap: client %u (%s): no session: "
						"connect failed or no reply to %s\n", s->idx,
						O.users[s->user], sess_what(s));
			}
			bench_sleep_s(0.1);
			continue;
		}
		/* The first session of each client is cut short at random, so the
		 * clients' later LOGINs spread over the run instead of coming in
		 * waves. */
		unsigned rounds = O.rounds_per_login;
		if (!s->ready) {
			s->ready = true;
			atomic_fetch_add(&n_ready, 1);
			rounds = 1 + (unsigned)(bench_rng_next(&s->rng) % O.rounds_per_login);
		}
		int r = 0;
		for (unsigned i = 0; i < rounds && !stopped() && r == 0; i++)
			r = sess_round(s);
		if (r < 0) {
			if (!stopped()) {
				atomic_fetch_add(&n_conn_errors, 1);
				if (atomic_fetch_add(&n_err_prints, 1) < MAX_ERR_PRINTS)
					fprintf(stderr, "mp-bench-imap: client %u (%s): connection "
						"lost waiting for %s%s\n", s->idx,
						O.users[s->user], sess_what(s),
						s->bye ? " (after * BYE)" : "");
			}
			sess_close(s);
			bench_sleep_s(0.1);
			continue;
		}
		sess_logout(s);
	}
	atomic_fetch_add(&n_finished, 1);
	return NULL;
}

/* --prefill: fill one user's INBOX up to O.prefill messages. */
static void *prefill_thread(void *arg)
{
	struct sess *s = arg;
	for (unsigned attempt = 0; attempt < 5; attempt++) {
		if (sess_login(s) < 0) {
			bench_sleep_s(0.2);
			continue;
		}
		if (sess_cmd(s, C_SELECT, "SELECT INBOX") != RS_OK) {
			sess_close(s);
			continue;
		}
		uint32_t have = s->exists;
		bool broken = false;
		while (have < O.prefill) {
			uint32_t uid;
			enum rstat st = sess_append(s, &uid);
			if (st == RS_FAIL) {
				broken = true;
				break;
			}
			if (st == RS_OK) {
				atomic_fetch_add(&n_prefilled, 1);
				have++;
			} else if (atomic_fetch_add(&n_prefill_errors, 1) > 100) {
				break;
			}
		}
		if (broken) {
			sess_close(s);
			continue;
		}
		sess_logout(s);
		return NULL;
	}
	atomic_fetch_add(&n_prefill_errors, 1);
	return NULL;
}

static int run_prefill(void)
{
	unsigned n = O.nusers;
	struct sess *ss = calloc(n, sizeof(*ss));
	pthread_t *th = calloc(n, sizeof(*th));
	if (ss == NULL || th == NULL) {
		free(ss);
		free(th);
		return -1;
	}
	double t0 = bench_now_s();
	unsigned started = 0;
	int ret = 0;
	for (unsigned i = 0; i < n; i++) {
		if (sess_init(&ss[i], MAX_CLIENTS + i, i) < 0 ||
		    pthread_create(&th[i], NULL, prefill_thread, &ss[i]) != 0) {
			sess_free(&ss[i]);
			ret = -1;
			break;
		}
		started++;
	}
	for (unsigned i = 0; i < started; i++) {
		pthread_join(th[i], NULL);
		sess_free(&ss[i]);
	}
	double el = bench_now_s() - t0;
	bench_print_prefill(n, O.prefill, atomic_load(&n_prefilled), el,
			    atomic_load(&n_prefill_errors));
	free(ss);
	free(th);
	return ret < 0 || atomic_load(&n_prefill_errors) > 0 ? -1 : 0;
}

static int run_load(void)
{
	for (int k = 0; k < C_N; k++) {
		if (bench_lat_init(&S[k].lat, MAX_SAMPLES) < 0)
			return 1;
	}
	bench_print_header("mp-bench-imap", "load", NULL);
	if (O.prefill > 0 && run_prefill() < 0)
		fprintf(stderr, "mp-bench-imap: prefill incomplete\n");
	struct sess *ss = calloc(O.clients, sizeof(*ss));
	pthread_t *th = calloc(O.clients, sizeof(*th));
	if (ss == NULL || th == NULL)
		return 1;
	double tw = bench_now_s();
	unsigned started = 0;
	for (unsigned i = 0; i < O.clients; i++) {
		if (sess_init(&ss[i], i, i % O.nusers) < 0 ||
		    pthread_create(&th[i], NULL, client_thread, &ss[i]) != 0) {
			fprintf(stderr, "mp-bench-imap: cannot start client %u\n", i);
			sess_free(&ss[i]);
			break;
		}
		started++;
	}
	/* Warm-up: the clients' first LOGINs all arrive at once and hash their
	 * passwords together; the measurement starts once every client is in. */
	while (started == O.clients && atomic_load(&n_ready) < O.clients &&
	       atomic_load(&S[C_LOGIN].no) + atomic_load(&S[C_LOGIN].bad) == 0 &&
	       bench_now_s() - tw < WARMUP_MAX_S)
		bench_sleep_s(0.05);
	double el = bench_window(tw, atomic_load(&n_ready), O.clients, started == O.clients,
				 O.seconds, &measuring, &stop_flag);
	uint64_t busy = bench_wait_finished(&n_finished, started, STOP_GRACE_S);
	if (busy > 0) {
		/* A client still waiting for a reply after the grace: end it now
		 * rather than after RECV_TIMEOUT_S, and say so. */
		printf("# stop: %" PRIu64 " clients still waiting %.0f s after the end; "
		       "their sockets are shut down\n", busy, STOP_GRACE_S);
		for (unsigned i = 0; i < started; i++) {
			int fd = atomic_load(&ss[i].live_fd);
			if (fd < 0)
				continue;
			printf("# stop: client %u (%s) waiting for %s\n", i, O.users[ss[i].user],
			       sess_what(&ss[i]));
			shutdown(fd, SHUT_RDWR);
		}
	}
	for (unsigned i = 0; i < started; i++) {
		pthread_join(th[i], NULL);
		sess_free(&ss[i]);
	}
	printf("# clients=%u users=%u size=%zu fetches=%u idle_ms=%u rounds_per_login=%u "
	       "seconds=%.1f\n",
	       O.clients, O.nusers, O.size, O.fetches, O.idle_ms, O.rounds_per_login, el);
	uint64_t all = 0, no = 0, bad = 0;
	for (int k = 0; k < C_N; k++) {
		struct cstat *c = &S[k];
		double p50, p99;
		bench_lat_pct(&c->lat, &p50, &p99);
		uint64_t ok = atomic_load(&c->lat.ok);
		all += ok;
		no += atomic_load(&c->no);
		bad += atomic_load(&c->bad);
		printf("result cmd=%s ops=%" PRIu64 " ops_per_s=%.1f p50_ms=%.2f p99_ms=%.2f "
		       "no=%" PRIu64 " bad=%" PRIu64 "\n",
		       cmd_name[k], ok, (double)ok / el, p50, p99, (uint64_t)atomic_load(&c->no),
		       (uint64_t)atomic_load(&c->bad));
	}
	uint64_t cerr = atomic_load(&n_conn_errors);
	uint64_t tmo = atomic_load(&n_timeouts);
	printf("result cmd=ALL ops=%" PRIu64 " ops_per_s=%.1f rounds=%" PRIu64
	       " rounds_per_s=%.1f no=%" PRIu64 " bad=%" PRIu64 " conn_errors=%" PRIu64
	       " timeouts=%" PRIu64 " stuck_at_end=%" PRIu64 " empty_body_fetches=%" PRIu64 "\n",
	       all, (double)all / el, (uint64_t)atomic_load(&n_rounds),
	       (double)atomic_load(&n_rounds) / el, no, bad, cerr, tmo, busy,
	       (uint64_t)atomic_load(&n_empty_fetches));
	bench_print_loadavg_end();
	free(ss);
	free(th);
	for (int k = 0; k < C_N; k++)
		bench_lat_free(&S[k].lat);
	return all > 0 && no == 0 && bad == 0 && cerr == 0 && tmo == 0 && busy == 0 ? 0 : 1;
}

/* ------------------------------------------------------------ idle mode */

enum istate { I_FREE, I_CONNECTING, I_GREETING, I_LOGIN, I_SELECT, I_IDLE_WAIT, I_IDLING,
	      I_DEAD };

struct iconn {
	int fd;
	enum istate st;
	struct rd r;
	double t0;
};

struct idle_run {
	struct iconn *c;                /* owned; O.idle_conns */
	double *open_ms;                /* owned; per connection that reached IDLE */
	unsigned n_open;                /* reached IDLE */
	unsigned n_dead;                /* failed while opening */
	unsigned n_lost;                /* dropped after reaching IDLE */
	unsigned inflight;
	int ep;
	char login[1300];               /* "a1 LOGIN ..." per user, built on demand */
};

/* CPU seconds (user + system) pid has used, -1 if unknown. */
static double read_cpu_s(long pid)
{
	char path[64], line[1024];
	snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return -1;
	char *got = fgets(line, sizeof(line), f);
	fclose(f);
	/* proc(5): fields 14 and 15, utime and stime, counted after the ")"
	 * that ends field 2 (the name may hold spaces and parentheses). */
	const char *p = got != NULL ? strrchr(line, ')') : NULL;
	unsigned long long ut, st;
	if (p == NULL || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
				&ut, &st) != 2)
		return -1;
	long hz = sysconf(_SC_CLK_TCK);
	return hz > 0 ? (double)(ut + st) / (double)hz : -1;
}

/* CPU seconds the --node-pids have used together, -1 if unknown. */
static double nodes_cpu_s(void)
{
	double sum = 0;
	for (unsigned i = 0; i < O.nnode_pids; i++) {
		double c = read_cpu_s(O.node_pids[i]);
		if (c < 0)
			return -1;
		sum += c;
	}
	return sum;
}

/* VmRSS of pid in KiB, -1 if unknown. */
static long read_rss_kib(long pid)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/%ld/status", pid);
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return -1;
	long v = -1;
	while (fgets(line, sizeof(line), f) != NULL)
		if (strncmp(line, "VmRSS:", 6) == 0) {
			v = strtol(line + 6, NULL, 10);
			break;
		}
	fclose(f);
	return v;
}

static void ic_kill(struct idle_run *ir, struct iconn *c)
{
	if (c->st == I_IDLING) {
		ir->n_lost++;
	} else if (c->st == I_FREE) {
		ir->n_dead++;            /* never started: the deadline passed */
	} else if (c->st != I_DEAD) {
		ir->n_dead++;
		ir->inflight--;
	}
	if (c->fd >= 0) {
		epoll_ctl(ir->ep, EPOLL_CTL_DEL, c->fd, NULL);
		close(c->fd);
	}
	c->fd = -1;
	c->st = I_DEAD;
}

static int ic_send(struct iconn *c, const char *s)
{
	/* A few dozen bytes into an empty socket buffer: never EAGAIN in practice,
	 * and if it ever is, the connection counts as failed. */
	size_t n = strlen(s);
	ssize_t w = send(c->fd, s, n, MSG_NOSIGNAL);
	return w == (ssize_t)n ? 0 : -1;
}

static int ic_start(struct idle_run *ir, unsigned i)
{
	struct iconn *c = &ir->c[i];
	struct sockaddr_in sa;
	c->st = I_CONNECTING;
	c->t0 = bench_now_s();
	ir->inflight++;
	if (bench_addr(&sa, O.host, O.port) < 0)
		goto fail;
	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		goto fail;
	int one = 1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno != EINPROGRESS)
		goto fail;
	struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT, .data.u32 = i };
	if (epoll_ctl(ir->ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
		goto fail;
	return 0;
fail:
	if (atomic_fetch_add(&n_err_prints, 1) < MAX_ERR_PRINTS)
		fprintf(stderr, "mp-bench-imap: connection %u: %s\n", i, strerror(errno));
	ic_kill(ir, c);
	return -1;
}

/* One response segment for connection i; -1 kills it. */
static int ic_segment(struct idle_run *ir, unsigned i, const struct seg *sg)
{
	struct iconn *c = &ir->c[i];
	if (!sg->first)
		return 0;
	if (seg_starts(sg, "* BYE"))
		return -1;
	const char *want = c->st == I_LOGIN ? "a1 " : c->st == I_SELECT ? "a2 " : "a3 ";
	char text[TEXT_MAX];
	switch (c->st) {
	case I_GREETING: {
		if (!seg_starts(sg, "* OK"))
			return -1;
		char qu[600], qp[600];
		if (bench_quote(qu, sizeof(qu), O.users[i % O.nusers]) < 0 ||
		    bench_quote(qp, sizeof(qp), O.password) < 0)
			return -1;
		snprintf(ir->login, sizeof(ir->login), "a1 LOGIN %s %s\r\n", qu, qp);
		c->st = I_LOGIN;
		return ic_send(c, ir->login);
	}
	case I_LOGIN:
	case I_SELECT:
		if (sg->n >= 2 && sg->p[0] == '*')
			return 0;
		if (!seg_starts(sg, want))
			return -1;
		enum rstat st = tagged_status(sg, 3, text, sizeof(text));
		if (st != RS_OK) {
			if (atomic_fetch_add(&n_err_prints, 1) < MAX_ERR_PRINTS)
				fprintf(stderr, "mp-bench-imap: idle connection %u: %s: %.*s\n", i,
					c->st == I_LOGIN ? "LOGIN" : "SELECT", (int)sg->n, sg->p);
			return -1;
		}
		if (c->st == I_LOGIN) {
			c->st = I_SELECT;
			return ic_send(c, "a2 SELECT INBOX\r\n");
		}
		c->st = I_IDLE_WAIT;
		return ic_send(c, "a3 IDLE\r\n");
	case I_IDLE_WAIT:
		if (sg->n >= 2 && sg->p[0] == '*')
			return 0;
		if (sg->n < 1 || sg->p[0] != '+')
			return -1;
		c->st = I_IDLING;
		ir->open_ms[ir->n_open++] = (bench_now_s() - c->t0) * 1000.0;
		ir->inflight--;
		return 0;
	case I_IDLING:
		/* Untagged updates are fine; a tagged reply ends the IDLE. */
		return sg->n >= 2 && sg->p[0] == '*' ? 0 : -1;
	default:
		return -1;
	}
}

static void ic_event(struct idle_run *ir, unsigned i, uint32_t events)
{
	struct iconn *c = &ir->c[i];
	if (c->st == I_DEAD || c->st == I_FREE)
		return;
	if (c->st == I_CONNECTING) {
		int err = 0;
		socklen_t el = sizeof(err);
		if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err != 0) {
			if (atomic_fetch_add(&n_err_prints, 1) < MAX_ERR_PRINTS)
				fprintf(stderr, "mp-bench-imap: connect %u: %s\n", i, strerror(err));
			ic_kill(ir, c);
			return;
		}
		if (!(events & (EPOLLOUT | EPOLLIN)))
			return;
		struct epoll_event ev = { .events = EPOLLIN, .data.u32 = i };
		if (epoll_ctl(ir->ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
			ic_kill(ir, c);
			return;
		}
		c->st = I_GREETING;
		if (!(events & EPOLLIN))
			return;
	}
	rd_compact(&c->r);
	if (c->r.len == c->r.cap) {
		ic_kill(ir, c);
		return;
	}
	ssize_t n = recv(c->fd, c->r.buf + c->r.len, c->r.cap - c->r.len, 0);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		ic_kill(ir, c);
		return;
	}
	c->r.len += (size_t)n;
	struct seg sg;
	int r;
	while ((r = rd_next(&c->r, &sg)) == 1)
		if (ic_segment(ir, i, &sg) < 0) {
			ic_kill(ir, c);
			return;
		}
	if (r < 0)
		ic_kill(ir, c);
}

/* Run the loop: start connections [from, to) (IDLE_INFLIGHT at a time) until
 * each is idling or dead, or the deadline passes; then keep serving for
 * linger seconds. */
static void idle_loop(struct idle_run *ir, unsigned from, unsigned to, double deadline,
		      double linger)
{
	unsigned next = from;
	struct epoll_event evs[256];
	for (;;) {
		double now = bench_now_s();
		bool opening = next < to || ir->inflight > 0;
		if (opening && now >= deadline) {
			fprintf(stderr, "mp-bench-imap: deadline passed while opening\n");
			for (unsigned i = from; i < to; i++)
				if (ir->c[i].st != I_IDLING && ir->c[i].st != I_DEAD)
					ic_kill(ir, &ir->c[i]);
			next = to;
			opening = false;
		}
		if (!opening) {
			if (linger <= 0)
				return;
			deadline = now + linger;
			while (bench_now_s() < deadline) {
				int n = epoll_wait(ir->ep, evs, 256, 100);
				for (int k = 0; k < n; k++)
					ic_event(ir, evs[k].data.u32, evs[k].events);
			}
			return;
		}
		while (next < to && ir->inflight < IDLE_INFLIGHT)
			(void)ic_start(ir, next++);
		int n = epoll_wait(ir->ep, evs, 256, 100);
		for (int k = 0; k < n; k++)
			ic_event(ir, evs[k].data.u32, evs[k].events);
	}
}

static int run_idle(void)
{
	struct idle_run ir;
	memset(&ir, 0, sizeof(ir));
	unsigned n = O.idle_conns;
	ir.c = calloc(n, sizeof(*ir.c));
	ir.open_ms = calloc(n, sizeof(*ir.open_ms));
	ir.ep = epoll_create1(EPOLL_CLOEXEC);
	if (ir.c == NULL || ir.open_ms == NULL || ir.ep < 0)
		return 1;
	for (unsigned i = 0; i < n; i++) {
		ir.c[i].fd = -1;
		if (rd_init(&ir.c[i].r, RBUF_IDLE) < 0)
			return 1;
	}
	bench_print_header("mp-bench-imap", "idle", NULL);
	if (O.prefill > 0 && run_prefill() < 0)
		fprintf(stderr, "mp-bench-imap: prefill incomplete\n");
	long pid = O.frontend_pid;
	bench_sleep_s(pid > 0 ? IDLE_SETTLE_S : 0);
	long rss0 = pid > 0 ? read_rss_kib(pid) : -1;
	double t0 = bench_now_s(), deadline = t0 + O.seconds;
	unsigned half = n / 2;
	idle_loop(&ir, 0, half, deadline, pid > 0 ? IDLE_SETTLE_S : 0);
	long rss_half = pid > 0 ? read_rss_kib(pid) : -1;
	unsigned open_half = ir.n_open;
	idle_loop(&ir, half, n, deadline + (pid > 0 ? IDLE_SETTLE_S : 0), 0);
	double el = bench_now_s() - t0 - (pid > 0 ? IDLE_SETTLE_S : 0);
	idle_loop(&ir, n, n, deadline + 1e9, pid > 0 ? IDLE_SETTLE_S : 0);
	long rss1 = pid > 0 ? read_rss_kib(pid) : -1;
	unsigned opened = ir.n_open;
	/* Hold them, then see how many are still idling; what the frontend
	 * spends on connections that do nothing is worth knowing too. */
	double cpu0 = pid > 0 ? read_cpu_s(pid) : -1, th0 = bench_now_s();
	double ncpu0 = O.nnode_pids > 0 ? nodes_cpu_s() : -1;
	idle_loop(&ir, n, n, deadline + 1e9, O.hold);
	double cpu1 = pid > 0 ? read_cpu_s(pid) : -1, th1 = bench_now_s();
	double ncpu1 = O.nnode_pids > 0 ? nodes_cpu_s() : -1;
	long rss_hold = pid > 0 ? read_rss_kib(pid) : -1;
	unsigned alive = 0;
	for (unsigned i = 0; i < n; i++)
		alive += ir.c[i].st == I_IDLING;
	qsort(ir.open_ms, ir.n_open, sizeof(double), bench_cmp_d);
	double p50 = ir.n_open ? ir.open_ms[ir.n_open / 2] : 0;
	double p99 = ir.n_open ? ir.open_ms[((size_t)ir.n_open * 99) / 100] : 0;
	printf("# idle_conns=%u users=%u frontend_pid=%ld hold=%.1f\n", n, O.nusers, pid, O.hold);
	printf("result mode=idle conns=%u opened=%u failed=%u open_s=%.2f conns_per_s=%.0f "
	       "open_p50_ms=%.2f open_p99_ms=%.2f alive_after_hold=%u\n",
	       n, opened, ir.n_dead, el, el > 0 ? opened / el : 0.0, p50, p99, alive);
	if (pid > 0) {
		double avg = opened > 0 && rss0 >= 0 && rss1 >= 0
				     ? (double)(rss1 - rss0) / opened : -1;
		unsigned second = opened - open_half;
		double marg = second > 0 && rss_half >= 0 && rss1 >= 0
				      ? (double)(rss1 - rss_half) / second : -1;
		double cpu = cpu0 >= 0 && cpu1 >= 0 && th1 > th0 ? (cpu1 - cpu0) / (th1 - th0) : -1;
		printf("result mode=idle_rss rss_before_kib=%ld rss_half_kib=%ld rss_after_kib=%ld "
		       "rss_after_hold_kib=%ld kib_per_conn=%.1f marginal_kib_per_conn=%.1f "
		       "frontend_cpu_pct_during_hold=%.1f\n",
		       rss0, rss_half, rss1, rss_hold, avg, marg, cpu >= 0 ? cpu * 100 : -1);
	}
	if (ncpu0 >= 0 && ncpu1 >= 0 && th1 > th0)
		printf("result mode=idle_nodes nodes=%u nodes_cpu_pct_during_hold=%.1f\n",
		       O.nnode_pids, (ncpu1 - ncpu0) / (th1 - th0) * 100);
	bench_print_loadavg_end();
	fflush(stdout);
	for (unsigned i = 0; i < n; i++) {
		if (ir.c[i].fd >= 0)
			close(ir.c[i].fd);
		free(ir.c[i].r.buf);
	}
	close(ir.ep);
	free(ir.c);
	free(ir.open_ms);
	return opened == n && alive == n ? 0 : 1;
}

/* ----------------------------------------------------------------- main */

static void usage(void)
{
	fprintf(stderr,
		"usage: mp-bench-imap --port N --users USER[,USER...] --password P\n"
		"       [--host 127.0.0.1] [--clients 10] [--seconds 10] [--size 10240]\n"
		"       [--prefill N] [--fetches 4] [--idle-ms 100] [--rounds-per-login 10]\n"
		"   or: mp-bench-imap --port N --users ... --password P --idle-conns N\n"
		"       [--frontend-pid PID] [--node-pids PID,...] [--hold 5]\n"
		"       [--seconds 300 (time to open them)]\n");
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "host", 1, NULL, 'h' }, { "port", 1, NULL, 'p' },
		{ "clients", 1, NULL, 'c' }, { "seconds", 1, NULL, 't' },
		{ "size", 1, NULL, 's' }, { "users", 1, NULL, 'u' },
		{ "password", 1, NULL, 'w' }, { "prefill", 1, NULL, 'f' },
		{ "fetches", 1, NULL, 'F' }, { "idle-ms", 1, NULL, 'i' },
		{ "rounds-per-login", 1, NULL, 'R' }, { "idle-conns", 1, NULL, 'I' },
		{ "frontend-pid", 1, NULL, 'P' }, { "hold", 1, NULL, 'H' },
		{ "node-pids", 1, NULL, 'N' },
		{ NULL, 0, NULL, 0 },
	};
	char *userlist = NULL, *nodelist = NULL;
	unsigned port = 0, pid = 0, size = (unsigned)O.size;
	bool ok = true;
	int ch;
	while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (ch) {
		case 'h': O.host = optarg; break;
		case 'p': ok = ok && bench_parse_uint(optarg, 65535, &port); break;
		case 'c': ok = ok && bench_parse_uint(optarg, MAX_CLIENTS, &O.clients); break;
		case 't':
			O.seconds = atof(optarg);
			O.seconds_set = true;
			break;
		case 's': ok = ok && bench_parse_uint(optarg, 64u << 20, &size); break;
		case 'u': userlist = optarg; break;
		case 'w': O.password = optarg; break;
		case 'f': ok = ok && bench_parse_uint(optarg, MAX_PREFILL, &O.prefill); break;
		case 'F': ok = ok && bench_parse_uint(optarg, 1000, &O.fetches); break;
		case 'i': ok = ok && bench_parse_uint(optarg, 600000, &O.idle_ms); break;
		case 'R': ok = ok && bench_parse_uint(optarg, 1000000, &O.rounds_per_login); break;
		case 'I': ok = ok && bench_parse_uint(optarg, MAX_IDLE_CONNS, &O.idle_conns); break;
		case 'P': ok = ok && bench_parse_uint(optarg, 1u << 30, &pid); break;
		case 'H': O.hold = atof(optarg); break;
		case 'N': nodelist = optarg; break;
		default: usage(); return 2;
		}
	}
	O.port = (int)port;
	O.size = size;
	O.frontend_pid = (long)pid;
	if (O.idle_conns > 0 && !O.seconds_set)
		O.seconds = 300;
	if (userlist != NULL) {
		char *save = NULL;
		for (char *t = strtok_r(userlist, ",", &save); t != NULL && O.nusers < MAX_USERS;
		     t = strtok_r(NULL, ",", &save))
			O.users[O.nusers++] = t;
	}
	if (nodelist != NULL) {
		char *save = NULL;
		for (char *t = strtok_r(nodelist, ",", &save); t != NULL && ok;
		     t = strtok_r(NULL, ",", &save)) {
			unsigned v;
			ok = O.nnode_pids < MAX_NODE_PIDS && bench_parse_uint(t, 1u << 30, &v) && v > 0;
			if (ok)
				O.node_pids[O.nnode_pids++] = (long)v;
		}
	}
	bool users_ok = O.nusers > 0;
	for (unsigned i = 0; i < O.nusers; i++)
		users_ok = users_ok && bench_no_ctl(O.users[i], true) && strlen(O.users[i]) < 256;
	if (!ok || optind != argc || O.port == 0 || !users_ok || O.password == NULL ||
	    !bench_no_ctl(O.password, true) || strlen(O.password) >= 256 || O.clients == 0 ||
	    O.seconds <= 0 || O.seconds > 86400 || O.size < 512 || O.rounds_per_login == 0 ||
	    O.hold < 0 || O.hold > 86400) {
		usage();
		return 2;
	}
	if (strncmp(O.host, "127.", 4) != 0) {
		fprintf(stderr, "mp-bench-imap: --host must be a 127.x.x.x address\n");
		return 2;
	}
	struct sockaddr_in sa;
	if (bench_addr(&sa, O.host, O.port) < 0) {
		fprintf(stderr, "mp-bench-imap: --host is not an IPv4 address\n");
		return 2;
	}
	if (O.frontend_pid > 0 && read_rss_kib(O.frontend_pid) < 0) {
		fprintf(stderr, "mp-bench-imap: cannot read /proc/%ld/status\n", O.frontend_pid);
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	return O.idle_conns > 0 ? run_idle() : run_load();
}
