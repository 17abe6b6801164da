/*
 * mp-bench-smtp: SMTP load generator. Many concurrent sessions, each on its
 * own thread with a blocking socket, send messages back to back: EHLO once,
 * then per message one pipelined write of MAIL, RCPT (xN) and DATA (RFC
 * 2920), the body and the final dot, and wait for the final reply. Reports
 * messages/s accepted and the p50/p99 latency from the final dot to its 250
 * (the time the server needs to store and replicate), plus refusals.
 *
 *   mp-bench-smtp --port 2525 --to user@dom[,user2@dom...] [--sessions 10]
 *                 [--seconds 10] [--size 10240] [--rcpts 1]
 *
 * Traffic goes only to --host, which must be a loopback address. Never:
 * count a message without its 250.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"

#define MAX_SESSIONS 1000
#define MAX_TO 64
#define MAX_SAMPLES (1u << 22)

struct opts {
	const char *host;
	int port;
	unsigned sessions;
	double seconds;
	size_t size;
	unsigned rcpts;
	char *to[MAX_TO];
	unsigned nto;
	const char *from;
};

static struct opts O = {
	.host = "127.0.0.1", .sessions = 10, .seconds = 10, .size = 10240, .rcpts = 1,
	.from = "bench@remote.test",
};
static atomic_uint_fast64_t n_ok, n_refused, n_errors;
static atomic_bool stop_flag;
static double *samples;            /* latencies in ms */
static atomic_uint_fast64_t nsamples;
static char *body;                 /* the message, dot-stuffing free */
static size_t body_len;

struct conn {
	int fd;
	char buf[8192];
	size_t len;
};

static int conn_open(struct conn *c)
{
	struct sockaddr_in sa;
	if (bench_addr(&sa, O.host, O.port) < 0)
		return -1;
	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return -1;
	int one = 1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	struct timeval tv = { 60, 0 };
	setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(c->fd);
		c->fd = -1;
		return -1;
	}
	c->len = 0;
	return 0;
}

static int send_all(struct conn *c, const char *p, size_t n)
{
	return bench_send_all(c->fd, p, n, 0);
}

/* Read one whole reply; its code, or -1. */
static int reply(struct conn *c)
{
	for (;;) {
		char *eol;
		while ((eol = memmem(c->buf, c->len, "\r\n", 2)) != NULL) {
			size_t ll = (size_t)(eol - c->buf);
			int code = ll >= 3 ? atoi(c->buf) : -1;
			bool last = ll < 4 || c->buf[3] != '-';
			memmove(c->buf, eol + 2, c->len - ll - 2);
			c->len -= ll + 2;
			if (last)
				return code;
		}
		if (c->len == sizeof(c->buf))
			return -1;
		ssize_t r = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		c->len += (size_t)r;
	}
}

static void *session(void *arg)
{
	unsigned idx = (unsigned)(uintptr_t)arg;
	struct conn c;
	char cmd[8192];
	uint64_t seq = 0;
	while (!atomic_load(&stop_flag)) {
		c.fd = -1;
		if (conn_open(&c) < 0 || reply(&c) != 220 ||
		    send_all(&c, "EHLO bench.test\r\n", 17) < 0 || reply(&c) != 250) {
			atomic_fetch_add(&n_errors, 1);
			if (c.fd >= 0)
				close(c.fd);
			struct timespec ts = { 0, 100 * 1000000 };
			nanosleep(&ts, NULL);
			continue;
		}
		while (!atomic_load(&stop_flag)) {
			int n = snprintf(cmd, sizeof(cmd), "MAIL FROM:<%s> SIZE=%zu\r\n", O.from,
					 body_len);
			for (unsigned r = 0; r < O.rcpts; r++)
				n += snprintf(cmd + n, sizeof(cmd) - (size_t)n, "RCPT TO:<%s>\r\n",
					      O.to[(idx + seq + r) % O.nto]);
			n += snprintf(cmd + n, sizeof(cmd) - (size_t)n, "DATA\r\n");
			seq++;
			if (send_all(&c, cmd, (size_t)n) < 0)
				break;
			bool good = reply(&c) == 250;
			for (unsigned r = 0; r < O.rcpts; r++)
				good = reply(&c) == 250 && good;
			int d = reply(&c);
			if (d != 354) {
				atomic_fetch_add(&n_refused, 1);
				if (d < 0 || send_all(&c, "RSET\r\n", 6) < 0 || reply(&c) < 0)
					break;
				continue;
			}
			if (send_all(&c, body, body_len) < 0)
				break;
			double t0 = bench_now_s();
			if (send_all(&c, ".\r\n", 3) < 0)
				break;
			int code = reply(&c);
			double ms = (bench_now_s() - t0) * 1000.0;
			if (code < 0)
				break;
			if (code == 250 && good) {
				atomic_fetch_add(&n_ok, 1);
				uint64_t i = atomic_fetch_add(&nsamples, 1);
				if (i < MAX_SAMPLES)
					samples[i] = ms;
			} else {
				atomic_fetch_add(&n_refused, 1);
			}
		}
		close(c.fd);
		if (!atomic_load(&stop_flag))
			atomic_fetch_add(&n_errors, 1);
	}
	return NULL;
}

static void usage(void)
{
	fprintf(stderr, "usage: mp-bench-smtp --port N --to ADDR[,ADDR...] [--host 127.0.0.1]\n"
			"       [--sessions 10] [--seconds 10] [--size 10240] [--rcpts 1]\n"
			"       [--from ADDR]\n");
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "host", 1, NULL, 'h' }, { "port", 1, NULL, 'p' }, { "sessions", 1, NULL, 'c' },
		{ "seconds", 1, NULL, 't' }, { "size", 1, NULL, 's' }, { "rcpts", 1, NULL, 'r' },
		{ "to", 1, NULL, 'o' }, { "from", 1, NULL, 'f' }, { NULL, 0, NULL, 0 },
	};
	char *tolist = NULL;
	int ch;
	while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (ch) {
		case 'h': O.host = optarg; break;
		case 'p': O.port = atoi(optarg); break;
		case 'c': O.sessions = (unsigned)atoi(optarg); break;
		case 't': O.seconds = atof(optarg); break;
		case 's': O.size = (size_t)strtoull(optarg, NULL, 10); break;
		case 'r': O.rcpts = (unsigned)atoi(optarg); break;
		case 'o': tolist = optarg; break;
		case 'f': O.from = optarg; break;
		default: usage(); return 2;
		}
	}
	if (tolist != NULL) {
		char *save = NULL;
		for (char *t = strtok_r(tolist, ",", &save); t != NULL && O.nto < MAX_TO;
		     t = strtok_r(NULL, ",", &save))
			O.to[O.nto++] = t;
	}
	if (O.port <= 0 || O.port > 65535 || O.nto == 0 || O.sessions == 0 ||
	    O.sessions > MAX_SESSIONS || O.rcpts == 0 || O.rcpts > 100 || O.seconds <= 0 ||
	    O.size < 64 || O.size > (64u << 20)) {
		usage();
		return 2;
	}
	if (strncmp(O.host, "127.", 4) != 0) {
		fprintf(stderr, "mp-bench-smtp: --host must be a 127.x.x.x address\n");
		return 2;
	}
	/* A plain text body of --size bytes in 78-octet lines, no leading dots. */
	body = malloc(O.size + 128);
	samples = calloc(MAX_SAMPLES, sizeof(*samples));
	if (body == NULL || samples == NULL)
		return 1;
	body_len = (size_t)snprintf(body, 128, "Subject: bench\r\nFrom: <%s>\r\n\r\n", O.from);
	while (body_len + 80 <= O.size) {
		memset(body + body_len, 'x', 76);
		memcpy(body + body_len + 76, "\r\n", 2);
		body_len += 78;
	}
	pthread_t th[MAX_SESSIONS];
	double t0 = bench_now_s();
	for (unsigned i = 0; i < O.sessions; i++)
		if (pthread_create(&th[i], NULL, session, (void *)(uintptr_t)i) != 0)
			return 1;
	struct timespec ts = { (time_t)O.seconds,
			       (long)((O.seconds - (double)(time_t)O.seconds) * 1e9) };
	nanosleep(&ts, NULL);
	atomic_store(&stop_flag, true);
	for (unsigned i = 0; i < O.sessions; i++)
		pthread_join(th[i], NULL);
	double el = bench_now_s() - t0;
	uint64_t ns = atomic_load(&nsamples);
	if (ns > MAX_SAMPLES)
		ns = MAX_SAMPLES;
	qsort(samples, ns, sizeof(*samples), bench_cmp_d);
	double p50 = ns ? samples[ns / 2] : 0, p99 = ns ? samples[(ns * 99) / 100] : 0;
	struct utsname u;
	uname(&u);
	printf("mp-bench-smtp sessions=%u size=%zu rcpts=%u seconds=%.1f host=%s\n", O.sessions,
	       body_len, O.rcpts, el, u.nodename);
	printf("result messages=%" PRIu64 " msgs_per_s=%.0f p50_ms=%.2f p99_ms=%.2f "
	       "refused=%" PRIu64 " errors=%" PRIu64 "\n",
	       (uint64_t)atomic_load(&n_ok), (double)atomic_load(&n_ok) / el, p50, p99,
	       (uint64_t)atomic_load(&n_refused), (uint64_t)atomic_load(&n_errors));
	free(body);
	free(samples);
	return atomic_load(&n_ok) > 0 ? 0 : 1;
}
