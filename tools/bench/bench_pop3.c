/*
 * mp-bench-pop3: POP3 load generator (plain sockets, no TLS).
 *
 * --clients sessions, each on its own thread with a blocking socket and its
 * OWN user (the cluster allows one POP3 session per maildrop; a second one
 * gets -ERR [IN-USE]), so --users must name at least --clients users. Each
 * client runs, over and over, one whole POP3 session:
 *     connect, greeting
 *     USER u, PASS p                  (timed together as USER/PASS)
 *     UIDL                            (multi-line: the message numbers)
 *     RETR n   x --retrs              (random numbers among those listed)
 *     QUIT                            (no DELE: the maildrop stays full)
 * It reports sessions/s and the p50/p99 session latency (connect to QUIT's
 * +OK), and per command the completions/s and p50/p99 latency (sending the
 * command to the end of its reply). The clock starts once every client has
 * got through its first PASS (the first logins arrive together and hash
 * passwords together: a warm-up, reported apart). Only sessions that end
 * inside the window count.
 *
 * --prefill N first fills every user's INBOX to N messages of --size octets
 * through IMAP APPEND on --imap-port (LOGIN, SELECT for EXISTS, APPEND with
 * a synchronizing literal), so that repeated runs see the same maildrops.
 * The prefilled messages have lines starting with "." to exercise
 * dot-stuffing.
 *
 *   mp-bench-pop3 --port N --users a@d[,b@d...] --password P [--clients 10]
 *                 [--seconds 10] [--retrs 10] [--imap-port N --prefill 20]
 *                 [--size 10240] [--label TEXT]
 *
 * Multi-line replies (RFC 1939 §3) are read up to the line ".", with one
 * leading "." removed from every other line that starts with one; RETR's
 * unstuffed octets (CRLFs included) must equal the count in its
 * "+OK n octets", else it is an error. Never: count a command without its
 * +OK; every -ERR is counted and its text printed (up to MAX_ERR_PRINTS).
 * Traffic goes only to --host, which must be a loopback address.
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
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"

#define MAX_CLIENTS 1000
#define MAX_USERS 1000
#define MAX_SAMPLES (1u << 20)     /* latency samples kept per command */
#define MAX_MSGS 100000            /* UIDL lines a session keeps */
#define MAX_PREFILL 100000
#define MAX_RETRS 1000
#define MAX_ERR_PRINTS 20          /* -ERR texts shown on stderr */
#define RBUF 65536                 /* longest reply line */
#define CMD_MAX 1024
#define TEXT_MAX 256
#define RECV_TIMEOUT_S 30
#define WARMUP_MAX_S 120.0         /* longest wait for every client's first login */
#define STOP_GRACE_S 2.0           /* then sockets of clients still waiting are shut */

enum cmd { C_USERPASS, C_UIDL, C_RETR, C_QUIT, C_SESSION, C_N };
static const char *const cmd_name[C_N] = { "USER/PASS", "UIDL", "RETR", "QUIT", "SESSION" };

/* Outcome of one command; RS_FAIL: the connection is unusable. */
enum rstat { RS_OK, RS_ERR, RS_FAIL };

struct opts {
	const char *host;
	int port;
	int imap_port;
	unsigned clients;
	double seconds;
	size_t size;
	char *users[MAX_USERS];
	unsigned nusers;
	const char *password;
	unsigned prefill;
	unsigned retrs;
	const char *label;
};

static struct opts O = {
	.host = "127.0.0.1", .clients = 10, .seconds = 10, .size = 10240, .retrs = 10,
	.label = "-",
};

struct cstat {
	struct bench_lat lat;           /* completions and their latencies */
	atomic_uint_fast64_t err;
};
static struct cstat S[C_N];
static atomic_bool measuring;           /* off during --prefill and the warm-up */
static atomic_bool stop_flag;
static atomic_uint_fast64_t n_conn_errors, n_err_prints, n_size_mismatch, n_empty_drops;
static atomic_uint_fast64_t n_retr_octets;
static atomic_uint_fast64_t n_prefilled, n_prefill_errors;
static atomic_uint_fast64_t n_ready;    /* clients past their first PASS */
static atomic_uint_fast64_t n_timeouts; /* replies not seen within RECV_TIMEOUT_S */
static atomic_uint_fast64_t n_finished; /* client threads done */

static bool stopped(void)
{
	return atomic_load(&stop_flag);
}

static void err_print(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void err_print(const char *fmt, ...)
{
	if (atomic_fetch_add(&n_err_prints, 1) >= MAX_ERR_PRINTS)
		return;
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	fprintf(stderr, "mp-bench-pop3: %s\n", line);
}

/* ---------------------------------------------------------- connection */

/*
 * One blocking connection and its line reader. Bytes live in
 * rbuf[off, len); a line handed out by conn_line stays valid until the
 * next call.
 */
struct conn {
	unsigned idx;
	const char *user;               /* borrowed from O.users */
	int fd;
	atomic_int live_fd;             /* fd, for main to shut down at the end */
	_Atomic(const char *) what;     /* the command waiting for its reply */
	char *rbuf;                     /* owned; RBUF */
	size_t off, len, consume;
	char cmd[CMD_MAX];
	char text[TEXT_MAX];            /* of the last status line */
};

static const char *conn_what(struct conn *c)
{
	const char *w = atomic_load(&c->what);
	return w != NULL ? w : "?";
}

static void conn_close(struct conn *c)
{
	atomic_store(&c->live_fd, -1);
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

static int conn_fill(struct conn *c)
{
	if (c->off > 0) {
		memmove(c->rbuf, c->rbuf + c->off, c->len - c->off);
		c->len -= c->off;
		c->off = 0;
	}
	if (c->len == RBUF)
		return -1;                      /* a line longer than RBUF */
	for (;;) {
		ssize_t n = recv(c->fd, c->rbuf + c->len, RBUF - c->len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			/* SO_RCVTIMEO: the server has not answered in time. */
			atomic_fetch_add(&n_timeouts, 1);
			err_print("client %u (%s): no reply to %s within %d s", c->idx, c->user,
				  conn_what(c), RECV_TIMEOUT_S);
		}
		if (n <= 0)
			return -1;
		c->len += (size_t)n;
		return 0;
	}
}

/* The next line without its CRLF in *p, *n. 0, or -1: connection gone. */
static int conn_line(struct conn *c, const char **p, size_t *n)
{
	c->off += c->consume;
	c->consume = 0;
	for (;;) {
		char *start = c->rbuf + c->off;
		char *eol = memmem(start, c->len - c->off, "\r\n", 2);
		if (eol != NULL) {
			*p = start;
			*n = (size_t)(eol - start);
			c->consume = *n + 2;
			return 0;
		}
		if (conn_fill(c) < 0)
			return -1;
	}
}

static int conn_open(struct conn *c, int port)
{
	struct sockaddr_in sa;
	if (bench_addr(&sa, O.host, port) < 0)
		return -1;
	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return -1;
	int one = 1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	struct timeval tv = { RECV_TIMEOUT_S, 0 };
	setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	atomic_store(&c->live_fd, c->fd);
	c->off = c->len = c->consume = 0;
	if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		conn_close(c);
		return -1;
	}
	return 0;
}

/* Format a command + CRLF into c->cmd and send it. */
__attribute__((format(printf, 2, 3)))
static int conn_send(struct conn *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(c->cmd, sizeof(c->cmd) - 2, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(c->cmd) - 2)
		return -1;
	memcpy(c->cmd + n, "\r\n", 2);
	return bench_send_all(c->fd, c->cmd, (size_t)n + 2, 0);
}

static void keep_text(struct conn *c, const char *p, size_t n)
{
	if (n >= sizeof(c->text))
		n = sizeof(c->text) - 1;
	memcpy(c->text, p, n);
	c->text[n] = '\0';
}

/* ------------------------------------------------------------ POP3 */

/* Read one status line: RS_OK for "+OK", RS_ERR for "-ERR" (its text in
 * c->text), RS_FAIL for anything else or no line. */
static enum rstat pop3_status(struct conn *c)
{
	const char *p;
	size_t n;
	if (conn_line(c, &p, &n) < 0)
		return RS_FAIL;
	keep_text(c, p, n);
	if (n >= 3 && memcmp(p, "+OK", 3) == 0 && (n == 3 || p[3] == ' '))
		return RS_OK;
	if (n >= 4 && memcmp(p, "-ERR", 4) == 0 && (n == 4 || p[4] == ' '))
		return RS_ERR;
	return RS_FAIL;
}

/*
 * The body of a multi-line reply (RFC 1939 §3), up to the "." line. Each
 * line is handed to fn (if not NULL) after dot-unstuffing; *octets_r gets
 * the unstuffed size with a CRLF per line. -1: connection gone.
 */
static int pop3_multiline(struct conn *c, void (*fn)(void *, const char *, size_t), void *arg,
			  uint64_t *octets_r)
{
	uint64_t octets = 0;
	for (;;) {
		const char *p;
		size_t n;
		if (conn_line(c, &p, &n) < 0)
			return -1;
		if (n == 1 && p[0] == '.')
			break;
		if (n > 0 && p[0] == '.') {
			p++;
			n--;
		}
		octets += n + 2;
		if (fn != NULL)
			fn(arg, p, n);
	}
	if (octets_r != NULL)
		*octets_r = octets;
	return 0;
}

/* Completions count while measuring; -ERR always (warm-up and prefill
 * included: an error is an error). */
static void record(struct conn *c, enum cmd k, enum rstat st, double ms)
{
	struct cstat *cs = &S[k];
	if (st == RS_OK) {
		if (!atomic_load(&measuring))
			return;
		bench_lat_add(&cs->lat, ms);
		return;
	}
	if (st != RS_ERR)
		return;
	atomic_fetch_add(&cs->err, 1);
	err_print("client %u (%s): %s: %s", c->idx, c->user, cmd_name[k], c->text);
}

struct sess {
	struct conn c;
	uint64_t rng;
	uint32_t *msgs;                 /* owned; MAX_MSGS message numbers from UIDL */
	size_t nmsgs;
	bool ready;                     /* logged in once */
};

static void uidl_line(void *arg, const char *p, size_t n)
{
	struct sess *s = arg;
	uint64_t v = 0;
	size_t i = 0;
	while (i < n && i < 10 && p[i] >= '0' && p[i] <= '9')
		v = v * 10 + (uint64_t)(p[i++] - '0');
	if (i == 0 || i >= n || p[i] != ' ' || v == 0 || v > UINT32_MAX || s->nmsgs >= MAX_MSGS)
		return;
	s->msgs[s->nmsgs++] = (uint32_t)v;
}

/* "+OK n octets": n, or -1 if the line does not say. */
static int64_t announced_octets(const char *t)
{
	if (strncmp(t, "+OK ", 4) != 0)
		return -1;
	const char *p = t + 4;
	uint64_t v = 0;
	int d = 0;
	for (; *p >= '0' && *p <= '9' && d < 15; p++, d++)
		v = v * 10 + (uint64_t)(*p - '0');
	return d > 0 && (*p == ' ' || *p == '\0') ? (int64_t)v : -1;
}

/*
 * One whole session. 0: done (QUIT answered); 1: ended early by an -ERR
 * (recorded); -1: the connection failed.
 */
static int sess_run(struct sess *s)
{
	struct conn *c = &s->c;
	double ts = bench_now_s();
	atomic_store(&c->what, "connect");
	if (conn_open(c, O.port) < 0)
		return -1;
	atomic_store(&c->what, "the greeting");
	enum rstat st = pop3_status(c);
	if (st != RS_OK) {
		err_print("client %u: greeting: %s", c->idx, c->text);
		return -1;
	}

	atomic_store(&c->what, cmd_name[C_USERPASS]);
	double t0 = bench_now_s();
	if (conn_send(c, "USER %s", c->user) < 0)
		return -1;
	st = pop3_status(c);
	if (st == RS_OK) {
		if (conn_send(c, "PASS %s", O.password) < 0)
			return -1;
		st = pop3_status(c);
	}
	record(c, C_USERPASS, st, (bench_now_s() - t0) * 1000.0);
	if (st != RS_OK)
		return st == RS_ERR ? 1 : -1;
	if (!s->ready) {
		s->ready = true;
		atomic_fetch_add(&n_ready, 1);
	}

	atomic_store(&c->what, cmd_name[C_UIDL]);
	t0 = bench_now_s();
	if (conn_send(c, "UIDL") < 0)
		return -1;
	st = pop3_status(c);
	s->nmsgs = 0;
	if (st == RS_OK && pop3_multiline(c, uidl_line, s, NULL) < 0)
		return -1;
	record(c, C_UIDL, st, (bench_now_s() - t0) * 1000.0);
	if (st != RS_OK)
		return st == RS_ERR ? 1 : -1;
	if (s->nmsgs == 0 && atomic_load(&measuring))
		atomic_fetch_add(&n_empty_drops, 1);

	for (unsigned i = 0; i < O.retrs && s->nmsgs > 0 && !stopped(); i++) {
		uint32_t m = s->msgs[bench_rng_next(&s->rng) % s->nmsgs];
		atomic_store(&c->what, cmd_name[C_RETR]);
		t0 = bench_now_s();
		if (conn_send(c, "RETR %u", m) < 0)
			return -1;
		st = pop3_status(c);
		if (st == RS_OK) {
			int64_t want = announced_octets(c->text);
			uint64_t got;
			if (pop3_multiline(c, NULL, NULL, &got) < 0)
				return -1;
			if (want < 0 || (uint64_t)want != got) {
				/* Counted as an error of RETR, with the reason as text. */
				snprintf(c->text, sizeof(c->text),
					 "message %u: announced %" PRId64 " octets, got %" PRIu64, m,
					 want, got);
				atomic_fetch_add(&n_size_mismatch, 1);
				st = RS_ERR;
			} else if (atomic_load(&measuring)) {
				atomic_fetch_add(&n_retr_octets, got);
			}
		}
		record(c, C_RETR, st, (bench_now_s() - t0) * 1000.0);
		if (st == RS_FAIL)
			return -1;
	}

	atomic_store(&c->what, cmd_name[C_QUIT]);
	t0 = bench_now_s();
	if (conn_send(c, "QUIT") < 0)
		return -1;
	st = pop3_status(c);
	double t1 = bench_now_s();
	record(c, C_QUIT, st, (t1 - t0) * 1000.0);
	conn_close(c);
	if (st != RS_OK)
		return st == RS_ERR ? 1 : -1;
	record(c, C_SESSION, RS_OK, (t1 - ts) * 1000.0);
	return 0;
}

static void *client_thread(void *arg)
{
	struct sess *s = arg;
	while (!stopped()) {
		int r = sess_run(s);
		if (r < 0 && !stopped()) {
			atomic_fetch_add(&n_conn_errors, 1);
			err_print("client %u (%s): connection lost waiting for %s", s->c.idx,
				  s->c.user, conn_what(&s->c));
		}
		conn_close(&s->c);
		if (r != 0)
			bench_sleep_s(0.1);
	}
	atomic_fetch_add(&n_finished, 1);
	return NULL;
}

/* ------------------------------------------------------- IMAP prefill */

/* Read IMAP lines until the one tagged "tag " (no literals expected in
 * these replies). RS_OK for OK, RS_ERR for NO/BAD; *exists_r (if not
 * NULL) gets the last "* n EXISTS". With want_cont a "+" line returns
 * RS_OK. */
static enum rstat imap_wait(struct conn *c, const char *tag, bool want_cont, uint32_t *exists_r)
{
	size_t tl = strlen(tag);
	for (;;) {
		const char *p;
		size_t n;
		if (conn_line(c, &p, &n) < 0)
			return RS_FAIL;
		if (n >= 1 && p[0] == '+')
			return want_cont ? RS_OK : RS_FAIL;
		if (n >= 2 && p[0] == '*' && p[1] == ' ') {
			uint64_t v = 0;
			size_t i = 2;
			while (i < n && i < 12 && p[i] >= '0' && p[i] <= '9')
				v = v * 10 + (uint64_t)(p[i++] - '0');
			if (exists_r != NULL && i > 2 && n - i == 7 &&
			    strncasecmp(p + i, " EXISTS", 7) == 0)
				*exists_r = (uint32_t)v;
			continue;
		}
		if (n > tl && memcmp(p, tag, tl) == 0 && p[tl] == ' ') {
			keep_text(c, p, n);
			return n >= tl + 3 && strncasecmp(p + tl + 1, "OK", 2) == 0 ? RS_OK : RS_ERR;
		}
		return RS_FAIL;
	}
}

/* A message of about O.size octets for user; *len_r its length. Pseudo-
 * random text in 78-octet lines; every 8th line starts with "." (so that
 * RETR has to dot-stuff). NULL if out of memory. */
static char *make_msg(const char *user, unsigned seq, uint64_t *rng, size_t *len_r)
{
	char *m = malloc(O.size + 1024);
	if (m == NULL)
		return NULL;
	int n = snprintf(m, 1024,
			 "From: Bench <bench@bench.test>\r\n"
			 "To: <%s>\r\n"
			 "Subject: pop3 bench message %u\r\n"
			 "Date: Mon, 07 Dec 2026 20:00:00 +0000\r\n"
			 "Message-ID: <%016" PRIx64 ".%u@bench.test>\r\n"
			 "MIME-Version: 1.0\r\n"
			 "Content-Type: text/plain; charset=us-ascii\r\n\r\n",
			 user, seq, bench_rng_next(rng), seq);
	if (n < 0 || n >= 1024) {
		free(m);
		return NULL;
	}
	static const char b64[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t len = (size_t)n;
	for (unsigned line = 0; len + 78 <= O.size; line++) {
		for (int i = 0; i < 76; i++)
			m[len + (size_t)i] = b64[bench_rng_next(rng) & 63];
		if (line % 8 == 3)
			m[len] = '.';
		memcpy(m + len + 76, "\r\n", 2);
		len += 78;
	}
	*len_r = len;
	return m;
}

/* Fill one user's INBOX up to O.prefill messages. 0 or -1. */
static int prefill_user(struct sess *s)
{
	struct conn *c = &s->c;
	char qu[600], qp[600];
	if (bench_quote(qu, sizeof(qu), c->user) < 0 ||
	    bench_quote(qp, sizeof(qp), O.password) < 0)
		return -1;
	if (conn_open(c, O.imap_port) < 0)
		return -1;
	const char *p;
	size_t n;
	if (conn_line(c, &p, &n) < 0 || n < 4 || strncasecmp(p, "* OK", 4) != 0)
		goto fail;
	uint32_t have = 0;
	if (conn_send(c, "p1 LOGIN %s %s", qu, qp) < 0 || imap_wait(c, "p1", false, NULL) != RS_OK)
		goto fail;
	if (conn_send(c, "p2 SELECT INBOX") < 0 || imap_wait(c, "p2", false, &have) != RS_OK)
		goto fail;
	for (unsigned k = 0; have < O.prefill && k < 2 * O.prefill + 10; k++) {
		size_t len;
		char *m = make_msg(c->user, have + 1, &s->rng, &len);
		if (m == NULL)
			goto fail;
		int r = conn_send(c, "p3 APPEND INBOX {%zu}", len);
		enum rstat st = r < 0 ? RS_FAIL : imap_wait(c, "p3", true, NULL);
		if (st == RS_OK)
			st = bench_send_all(c->fd, m, len, 0) < 0 ||
					     bench_send_all(c->fd, "\r\n", 2, 0) < 0
				     ? RS_FAIL
				     : imap_wait(c, "p3", false, NULL);
		free(m);
		if (st == RS_FAIL)
			goto fail;
		if (st == RS_ERR) {
			atomic_fetch_add(&n_prefill_errors, 1);
			err_print("prefill %s: APPEND: %s", c->user, c->text);
			continue;
		}
		atomic_fetch_add(&n_prefilled, 1);
		have++;
	}
	if (conn_send(c, "p4 LOGOUT") == 0)
		(void)imap_wait(c, "p4", false, NULL);
	conn_close(c);
	return have >= O.prefill ? 0 : -1;
fail:
	err_print("prefill %s: failed (%s)", c->user, c->text);
	conn_close(c);
	return -1;
}

static void *prefill_thread(void *arg)
{
	struct sess *s = arg;
	for (unsigned attempt = 0; attempt < 3; attempt++) {
		if (prefill_user(s) == 0)
			return NULL;
		bench_sleep_s(0.2);
	}
	atomic_fetch_add(&n_prefill_errors, 1);
	return NULL;
}

/* ---------------------------------------------------------------- run */

static int sess_init(struct sess *s, unsigned idx, const char *user)
{
	memset(s, 0, sizeof(*s));
	s->c.idx = idx;
	s->c.user = user;
	s->c.fd = -1;
	atomic_init(&s->c.live_fd, -1);
	s->rng = 0x9E3779B97F4A7C15ull ^ ((uint64_t)idx * 0x100000001B3ull) ^
		 (uint64_t)(bench_now_s() * 1e9);
	if (s->rng == 0)
		s->rng = 1;
	s->c.rbuf = malloc(RBUF);
	s->msgs = malloc(MAX_MSGS * sizeof(*s->msgs));
	return s->c.rbuf == NULL || s->msgs == NULL ? -1 : 0;
}

static void sess_free(struct sess *s)
{
	conn_close(&s->c);
	free(s->c.rbuf);
	free(s->msgs);
	s->c.rbuf = NULL;
	s->msgs = NULL;
}

/* Start fn on n sessions (users[0..n)), wait for them; -1 if not all ran. */
static int run_threads(struct sess *ss, pthread_t *th, unsigned n, void *(*fn)(void *),
		       unsigned *started_r)
{
	unsigned started = 0;
	for (unsigned i = 0; i < n; i++) {
		if (sess_init(&ss[i], i, O.users[i]) < 0 ||
		    pthread_create(&th[i], NULL, fn, &ss[i]) != 0) {
			fprintf(stderr, "mp-bench-pop3: cannot start client %u\n", i);
			sess_free(&ss[i]);
			break;
		}
		started++;
	}
	*started_r = started;
	return started == n ? 0 : -1;
}

static int run_prefill(void)
{
	unsigned n = O.clients;           /* only the users the clients use */
	struct sess *ss = calloc(n, sizeof(*ss));
	pthread_t *th = calloc(n, sizeof(*th));
	if (ss == NULL || th == NULL) {
		free(ss);
		free(th);
		return -1;
	}
	double t0 = bench_now_s();
	unsigned started;
	int ret = run_threads(ss, th, n, prefill_thread, &started);
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
	bench_print_header("mp-bench-pop3", "load", O.label);
	if (O.prefill > 0 && run_prefill() < 0)
		fprintf(stderr, "mp-bench-pop3: prefill incomplete\n");
	struct sess *ss = calloc(O.clients, sizeof(*ss));
	pthread_t *th = calloc(O.clients, sizeof(*th));
	if (ss == NULL || th == NULL)
		return 1;
	double tw = bench_now_s();
	unsigned started;
	run_threads(ss, th, O.clients, client_thread, &started);
	/* Warm-up: the clients' first logins all arrive at once and hash their
	 * passwords together; the measurement starts once every client is in. */
	while (started == O.clients && atomic_load(&n_ready) < O.clients &&
	       atomic_load(&S[C_USERPASS].err) == 0 && bench_now_s() - tw < WARMUP_MAX_S)
		bench_sleep_s(0.05);
	double el = bench_window(tw, atomic_load(&n_ready), O.clients, started == O.clients,
				 O.seconds, &measuring, &stop_flag);
	uint64_t busy = bench_wait_finished(&n_finished, started, STOP_GRACE_S);
	if (busy > 0) {
		printf("# stop: %" PRIu64 " clients still busy %.0f s after the end; "
		       "their sockets are shut down\n", busy, STOP_GRACE_S);
		for (unsigned i = 0; i < started; i++) {
			int fd = atomic_load(&ss[i].c.live_fd);
			if (fd < 0)
				continue;
			printf("# stop: client %u (%s) waiting for %s\n", i, ss[i].c.user,
			       conn_what(&ss[i].c));
			shutdown(fd, SHUT_RDWR);
		}
	}
	for (unsigned i = 0; i < started; i++) {
		pthread_join(th[i], NULL);
		sess_free(&ss[i]);
	}
	printf("# clients=%u users=%u size=%zu retrs=%u seconds=%.1f\n", O.clients, O.clients,
	       O.size, O.retrs, el);
	uint64_t errs = 0;
	for (int k = 0; k < C_N; k++) {
		struct cstat *cs = &S[k];
		double p50, p99;
		bench_lat_pct(&cs->lat, &p50, &p99);
		uint64_t ok = atomic_load(&cs->lat.ok);
		errs += atomic_load(&cs->err);
		printf("result label=%s clients=%u cmd=%s ops=%" PRIu64 " ops_per_s=%.1f "
		       "p50_ms=%.2f p99_ms=%.2f err=%" PRIu64 "\n",
		       O.label, O.clients, cmd_name[k], ok, (double)ok / el, p50, p99,
		       (uint64_t)atomic_load(&cs->err));
	}
	uint64_t sessions = atomic_load(&S[C_SESSION].lat.ok);
	uint64_t cerr = atomic_load(&n_conn_errors);
	uint64_t tmo = atomic_load(&n_timeouts);
	uint64_t mism = atomic_load(&n_size_mismatch);
	printf("result label=%s clients=%u cmd=ALL sessions=%" PRIu64 " sessions_per_s=%.1f "
	       "retr_mib_per_s=%.2f err=%" PRIu64 " size_mismatch=%" PRIu64 " conn_errors=%" PRIu64
	       " timeouts=%" PRIu64 " stuck_at_end=%" PRIu64 " empty_maildrops=%" PRIu64 "\n",
	       O.label, O.clients, sessions, (double)sessions / el,
	       (double)atomic_load(&n_retr_octets) / el / (1024.0 * 1024.0), errs, mism, cerr, tmo,
	       busy, (uint64_t)atomic_load(&n_empty_drops));
	bench_print_loadavg_end();
	free(ss);
	free(th);
	for (int k = 0; k < C_N; k++)
		bench_lat_free(&S[k].lat);
	return sessions > 0 && errs == 0 && cerr == 0 && tmo == 0 && busy == 0 ? 0 : 1;
}

/* ----------------------------------------------------------------- main */

static void usage(void)
{
	fprintf(stderr,
		"usage: mp-bench-pop3 --port N --users USER[,USER...] --password P\n"
		"       [--host 127.0.0.1] [--clients 10] [--seconds 10] [--retrs 10]\n"
		"       [--imap-port N --prefill N] [--size 10240] [--label TEXT]\n"
		"       (one user per client: --users names at least --clients users)\n");
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "host", 1, NULL, 'h' }, { "port", 1, NULL, 'p' },
		{ "imap-port", 1, NULL, 'm' }, { "clients", 1, NULL, 'c' },
		{ "seconds", 1, NULL, 't' }, { "size", 1, NULL, 's' },
		{ "users", 1, NULL, 'u' }, { "password", 1, NULL, 'w' },
		{ "prefill", 1, NULL, 'f' }, { "retrs", 1, NULL, 'r' },
		{ "label", 1, NULL, 'l' },
		{ NULL, 0, NULL, 0 },
	};
	char *userlist = NULL;
	unsigned port = 0, iport = 0, size = (unsigned)O.size;
	bool ok = true;
	int ch;
	while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (ch) {
		case 'h': O.host = optarg; break;
		case 'p': ok = ok && bench_parse_uint(optarg, 65535, &port); break;
		case 'm': ok = ok && bench_parse_uint(optarg, 65535, &iport); break;
		case 'c': ok = ok && bench_parse_uint(optarg, MAX_CLIENTS, &O.clients); break;
		case 't': O.seconds = atof(optarg); break;
		case 's': ok = ok && bench_parse_uint(optarg, 64u << 20, &size); break;
		case 'u': userlist = optarg; break;
		case 'w': O.password = optarg; break;
		case 'f': ok = ok && bench_parse_uint(optarg, MAX_PREFILL, &O.prefill); break;
		case 'r': ok = ok && bench_parse_uint(optarg, MAX_RETRS, &O.retrs); break;
		case 'l': O.label = optarg; break;
		default: usage(); return 2;
		}
	}
	O.port = (int)port;
	O.imap_port = (int)iport;
	O.size = size;
	if (userlist != NULL) {
		char *save = NULL;
		for (char *t = strtok_r(userlist, ",", &save); t != NULL && O.nusers < MAX_USERS;
		     t = strtok_r(NULL, ",", &save))
			O.users[O.nusers++] = t;
	}
	bool users_ok = O.nusers > 0;
	for (unsigned i = 0; i < O.nusers; i++)
		users_ok = users_ok && bench_no_ctl(O.users[i], false) && strlen(O.users[i]) < 256;
	if (!ok || optind != argc || O.port == 0 || !users_ok || O.password == NULL ||
	    O.password[0] == '\0' || !bench_no_ctl(O.password, false) ||
	    strlen(O.password) >= 256 || O.clients == 0 || O.seconds <= 0 || O.seconds > 86400 ||
	    O.size < 512 || (O.prefill > 0 && O.imap_port == 0) || !bench_no_ctl(O.label, false)) {
		usage();
		return 2;
	}
	if (O.nusers < O.clients) {
		fprintf(stderr, "mp-bench-pop3: %u clients need %u users (one POP3 session per "
			"maildrop), got %u\n", O.clients, O.clients, O.nusers);
		return 2;
	}
	if (strncmp(O.host, "127.", 4) != 0) {
		fprintf(stderr, "mp-bench-pop3: --host must be a 127.x.x.x address\n");
		return 2;
	}
	struct in_addr a;
	if (inet_pton(AF_INET, O.host, &a) != 1) {
		fprintf(stderr, "mp-bench-pop3: --host is not an IPv4 address\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	return run_load();
}
