/*
 * Tests of fe_tls over 127.0.0.1: a libevent server thread (implicit TLS
 * through fe_tls_bev_accept, STARTTLS through fe_tls_bev_starttls) that
 * echoes lines and answers "INFO" with its describe/SNI strings, against
 * fe_tls's own client and, for what that client cannot be (TLS 1.1 only,
 * weak ciphers, dropping TCP without close_notify), raw OpenSSL clients.
 * Certificates come from deploy/local/testca.py in a temporary directory:
 *   a/  localhost                       (the default certificate)
 *   b/  other.test, *.wild.test         (picked by SNI; another CA)
 *   c/  reloaded.test                   (swapped in by reload)
 * Every wait is bounded by a count and a generous deadline; nothing asserts
 * how long anything took.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/ssl.h>

#include "fe_tls.h"
#include "mp_error.h"

#define IO_MS 30000          /* generous deadline for anything that should work */
#define WAIT_STEPS 3000      /* polls of the server's counters, 10 ms apart */
#define CONCURRENT_ROUNDS 40

/* cmocka's asserts longjmp into the main thread: off it, abort instead. */
#define CHECK(x) do { if (!(x)) { fprintf(stderr, "%s:%d: check failed: %s\n", \
	__FILE__, __LINE__, #x); abort(); } } while (0)

static char tmpdir[256];
static char path_a_cert[512], path_a_key[512], path_a_ca[512];
static char path_b_cert[512], path_b_key[512], path_b_ca[512];
static char path_c_cert[512], path_c_key[512];

/* ---- helpers: files, processes ---- */

static void path_join(char *out, size_t size, const char *dir, const char *name)
{
	int n = snprintf(out, size, "%s/%s", dir, name);
	assert_true(n > 0 && (size_t)n < size);
}

static void run_testca(const char *sub, const char *const *names, size_t nnames)
{
	char dir[512], script[512];
	path_join(dir, sizeof(dir), tmpdir, sub);
	path_join(script, sizeof(script), MERPATI_SOURCE_DIR, "deploy/local/testca.py");
	const char *py = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
	const char *argv[8];
	size_t argc = 0;
	argv[argc++] = py;
	argv[argc++] = script;
	argv[argc++] = dir;
	for (size_t i = 0; i < nnames; i++)
		argv[argc++] = names[i];
	argv[argc] = NULL;
	assert_true(argc < 8);

	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int devnull = open("/dev/null", O_WRONLY);
		if (devnull >= 0)
			dup2(devnull, STDOUT_FILENO);
		execvp(py, (char *const *)argv);
		_exit(127);
	}
	int status = 0;
	pid_t w;
	do {
		w = waitpid(pid, &status, 0);
	} while (w < 0 && errno == EINTR);
	assert_int_equal(w, pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
}

static void copy_file(const char *from, const char *to)
{
	char tmp[600];
	snprintf(tmp, sizeof(tmp), "%s.tmp", to);
	FILE *in = fopen(from, "rb");
	assert_non_null(in);
	FILE *out = fopen(tmp, "wb");
	assert_non_null(out);
	char buf[4096];
	size_t n;
	while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
		assert_int_equal(fwrite(buf, 1, n, out), n);
	assert_int_equal(fclose(in), 0);
	assert_int_equal(fclose(out), 0);
	/* rename: a reload never reads half a file */
	assert_int_equal(rename(tmp, to), 0);
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(fputs(text, f) >= 0, 1);
	assert_int_equal(fclose(f), 0);
}

static void rm_rf(const char *dir)
{
	pid_t pid = fork();
	if (pid == 0) {
		execlp("rm", "rm", "-rf", dir, (char *)NULL);
		_exit(127);
	}
	if (pid > 0) {
		int status;
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
	}
}

static int group_setup(void **state)
{
	signal(SIGPIPE, SIG_IGN);
	assert_int_equal(evthread_use_pthreads(), 0);
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_fe_tls.XXXXXX");
	assert_non_null(mkdtemp(tmpdir));

	const char *a[] = { "localhost" };
	const char *b[] = { "other.test", "*.wild.test" };
	const char *c[] = { "reloaded.test" };
	run_testca("a", a, 1);
	run_testca("b", b, 2);
	run_testca("c", c, 1);
	/* Idempotent: a second run keeps the files. */
	struct stat st1, st2;
	char ac[512];
	path_join(ac, sizeof(ac), tmpdir, "a/cert.pem");
	assert_int_equal(stat(ac, &st1), 0);
	run_testca("a", a, 1);
	assert_int_equal(stat(ac, &st2), 0);
	assert_int_equal(st1.st_ino, st2.st_ino);

	path_join(path_a_cert, sizeof(path_a_cert), tmpdir, "a/cert.pem");
	path_join(path_a_key, sizeof(path_a_key), tmpdir, "a/key.pem");
	path_join(path_a_ca, sizeof(path_a_ca), tmpdir, "a/ca.pem");
	path_join(path_b_cert, sizeof(path_b_cert), tmpdir, "b/cert.pem");
	path_join(path_b_key, sizeof(path_b_key), tmpdir, "b/key.pem");
	path_join(path_b_ca, sizeof(path_b_ca), tmpdir, "b/ca.pem");
	path_join(path_c_cert, sizeof(path_c_cert), tmpdir, "c/cert.pem");
	path_join(path_c_key, sizeof(path_c_key), tmpdir, "c/key.pem");
	char live[512];
	path_join(live, sizeof(live), tmpdir, "live");
	assert_int_equal(mkdir(live, 0700), 0);
	*state = NULL;
	return 0;
}

static int group_teardown(void **state)
{
	if (tmpdir[0] != '\0')
		rm_rf(tmpdir);
	return 0;
}

/* ---- the libevent server ---- */

struct conn;

struct srv {
	struct event_base *base;        /* owned */
	struct evconnlistener *tls_l;   /* owned */
	struct evconnlistener *plain_l; /* owned */
	struct fe_tls *t;               /* owned */
	int tls_port, plain_port;
	pthread_t thread;
	struct conn *conns;             /* owned list; loop thread only */

	pthread_mutex_t lock;           /* guards the counters */
	int n_connected, n_eof, n_error, n_accept_fail;
	int n_describe_early;           /* describe before handshake said ENOENT */
};

struct conn {
	struct srv *srv;          /* borrowed */
	struct bufferevent *bev;  /* owned */
	struct conn *next, *prev;
};

static void srv_count(struct srv *s, int *counter)
{
	pthread_mutex_lock(&s->lock);
	(*counter)++;
	pthread_mutex_unlock(&s->lock);
}

static int srv_get(struct srv *s, int *counter)
{
	pthread_mutex_lock(&s->lock);
	int v = *counter;
	pthread_mutex_unlock(&s->lock);
	return v;
}

/* Waits (bounded) until *counter reaches at least want; returns its value. */
static int srv_wait(struct srv *s, int *counter, int want)
{
	int v = srv_get(s, counter);
	for (int i = 0; i < WAIT_STEPS && v < want; i++) {
		struct timespec ts = { 0, 10 * 1000 * 1000 };
		nanosleep(&ts, NULL);
		v = srv_get(s, counter);
	}
	return v;
}

static struct conn *conn_add(struct srv *s, struct bufferevent *bev)
{
	struct conn *c = calloc(1, sizeof(*c));
	CHECK(c != NULL);
	c->srv = s;
	c->bev = bev;
	c->next = s->conns;
	if (s->conns != NULL)
		s->conns->prev = c;
	s->conns = c;
	return c;
}

static void conn_free(struct conn *c)
{
	struct srv *s = c->srv;
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	bufferevent_free(c->bev);
	free(c);
}

static void tls_read_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	struct evbuffer *out = bufferevent_get_output(bev);
	char *line;
	size_t n;

	while ((line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF)) != NULL) {
		if (strcmp(line, "INFO") == 0) {
			char d[256], sni[256];
			int r1 = fe_tls_bev_describe(bev, d, sizeof(d));
			int r2 = fe_tls_bev_sni(bev, sni, sizeof(sni));
			evbuffer_add_printf(out, "%d %s sni=%s %d\n", r1, d, sni, r2);
		} else if (strcmp(line, "OPTS") == 0) {
			/* what the server's SSL was configured with */
			SSL *ssl = bufferevent_openssl_get_ssl(bev);
			uint64_t o = SSL_get_options(ssl);
			evbuffer_add_printf(out, "min=%lx nocomp=%d noreneg=%d serverpref=%d\n",
					    (unsigned long)SSL_get_min_proto_version(ssl),
					    (o & SSL_OP_NO_COMPRESSION) != 0,
					    (o & SSL_OP_NO_RENEGOTIATION) != 0,
					    (o & SSL_OP_CIPHER_SERVER_PREFERENCE) != 0);
		} else if (strcmp(line, "CLOSE") == 0) {
			/* close_notify, then drop: the client must read 0 */
			SSL *ssl = bufferevent_openssl_get_ssl(bev);
			(void)SSL_shutdown(ssl);
			ERR_clear_error();
			free(line);
			conn_free(c);
			return;
		} else if (strcmp(line, "DROP") == 0) {
			free(line);
			conn_free(c);
			return;
		} else {
			evbuffer_add_printf(out, "%s\n", line);
		}
		free(line);
	}
}

static void tls_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;
	struct srv *s = c->srv;

	if (what & BEV_EVENT_CONNECTED) {
		srv_count(s, &s->n_connected);
		return;
	}
	if (what & BEV_EVENT_EOF)
		srv_count(s, &s->n_eof);
	else if (what & BEV_EVENT_ERROR)
		srv_count(s, &s->n_error);
	ERR_clear_error();
	conn_free(c);
}

static void tls_accept_cb(struct evconnlistener *l, evutil_socket_t fd,
			  struct sockaddr *sa, int salen, void *arg)
{
	struct srv *s = arg;
	struct bufferevent *bev = fe_tls_bev_accept(s->t, s->base, fd);
	if (bev == NULL) {
		srv_count(s, &s->n_accept_fail);
		return;
	}
	char d[128];
	if (fe_tls_bev_describe(bev, d, sizeof(d)) == MP_ENOENT && d[0] == '\0')
		srv_count(s, &s->n_describe_early);
	struct conn *c = conn_add(s, bev);
	bufferevent_setcb(bev, tls_read_cb, NULL, tls_event_cb, c);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
}

static void plain_read_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	struct srv *s = c->srv;
	struct evbuffer *in = bufferevent_get_input(bev);
	char *line;
	size_t n;

	while ((line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF)) != NULL) {
		if (strcmp(line, "STARTTLS") != 0) {
			evbuffer_add_printf(bufferevent_get_output(bev), "plain %s\n", line);
			free(line);
			continue;
		}
		free(line);
		char d[128];
		if (fe_tls_bev_describe(bev, d, sizeof(d)) == MP_ENOENT)
			srv_count(s, &s->n_describe_early);
		evbuffer_add_printf(bufferevent_get_output(bev), "220 go\n");
		/* Deliberately not draining the rest of the input: that is
		 * fe_tls_bev_starttls's job too. */
		struct bufferevent *tls = fe_tls_bev_starttls(s->t, s->base, bev);
		if (tls == NULL) {
			srv_count(s, &s->n_accept_fail);
			conn_free(c);
			return;
		}
		c->bev = tls;  /* owns bev now */
		bufferevent_setcb(tls, tls_read_cb, NULL, tls_event_cb, c);
		bufferevent_enable(tls, EV_READ | EV_WRITE);
		return;
	}
}

static void plain_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;
	struct srv *s = c->srv;

	if (what & BEV_EVENT_EOF)
		srv_count(s, &s->n_eof);
	else if (what & BEV_EVENT_ERROR)
		srv_count(s, &s->n_error);
	conn_free(c);
}

static void plain_accept_cb(struct evconnlistener *l, evutil_socket_t fd,
			    struct sockaddr *sa, int salen, void *arg)
{
	struct srv *s = arg;
	struct bufferevent *bev = bufferevent_socket_new(s->base, fd,
		BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	CHECK(bev != NULL);
	struct conn *c = conn_add(s, bev);
	bufferevent_setcb(bev, plain_read_cb, NULL, plain_event_cb, c);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
}

static struct evconnlistener *srv_listen(struct srv *s, evconnlistener_cb cb, int *port_r)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	struct evconnlistener *l = evconnlistener_new_bind(
		s->base, cb, s, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 16,
		(struct sockaddr *)&sin, sizeof(sin));
	assert_non_null(l);
	socklen_t len = sizeof(sin);
	assert_int_equal(getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&sin, &len), 0);
	*port_r = ntohs(sin.sin_port);
	return l;
}

static void *srv_main(void *arg)
{
	struct srv *s = arg;
	event_base_dispatch(s->base);
	while (s->conns != NULL)
		conn_free(s->conns);
	/* libevent 2.1 finishes a bufferevent_free (SSL_free, close) in a
	 * finalizer run by the loop, which event_base_free does not do. */
	event_base_loop(s->base, EVLOOP_NONBLOCK);
	return NULL;
}

static struct srv *srv_start(const struct fe_tls_cert *certs, size_t ncerts)
{
	struct srv *s = calloc(1, sizeof(*s));
	assert_non_null(s);
	assert_int_equal(pthread_mutex_init(&s->lock, NULL), 0);
	struct fe_tls_conf conf = { .certs = certs, .ncerts = ncerts };
	char *err = NULL;
	int ret = fe_tls_open(&conf, &s->t, &err);
	if (ret != 0)
		fprintf(stderr, "fe_tls_open: %s\n", err);
	assert_int_equal(ret, 0);
	assert_null(err);
	s->base = event_base_new();
	assert_non_null(s->base);
	s->tls_l = srv_listen(s, tls_accept_cb, &s->tls_port);
	s->plain_l = srv_listen(s, plain_accept_cb, &s->plain_port);
	assert_int_equal(pthread_create(&s->thread, NULL, srv_main, s), 0);
	return s;
}

static void srv_stop(struct srv **sp)
{
	struct srv *s = *sp;
	*sp = NULL;
	assert_int_equal(event_base_loopbreak(s->base), 0);
	assert_int_equal(pthread_join(s->thread, NULL), 0);
	evconnlistener_free(s->tls_l);
	evconnlistener_free(s->plain_l);
	event_base_free(s->base);
	fe_tls_free(&s->t);
	fe_tls_free(&s->t);  /* safe twice */
	pthread_mutex_destroy(&s->lock);
	free(s);
}

static struct srv *srv_default(void)
{
	struct fe_tls_cert certs[] = {
		{ path_a_cert, path_a_key },
		{ path_b_cert, path_b_key },
	};
	return srv_start(certs, 2);
}

/* ---- client helpers ---- */

static int tcp_connect(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	struct timeval tv = { 10, 0 };  /* bounds the raw OpenSSL clients */
	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)), 0);
	return fd;
}

struct cli {
	int fd;
	struct fe_tls_stream *s;
	char buf[128 * 1024];  /* holds test_roundtrip's 100 KB line */
	size_t len;
};

static int cli_open(struct fe_tls_client *client, int port, const char *sni,
		    struct cli *c, char **err_r)
{
	memset(c, 0, sizeof(*c));
	c->fd = tcp_connect(port);
	int ret = fe_tls_client_handshake(client, c->fd, sni, fe_tls_now_ms() + IO_MS,
					  &c->s, err_r);
	if (ret != 0) {
		assert_null(c->s);
		assert_non_null(*err_r);
		close(c->fd);
		c->fd = -1;
	} else {
		assert_non_null(c->s);
	}
	return ret;
}

static void cli_close(struct cli *c)
{
	fe_tls_stream_free(&c->s);
	fe_tls_stream_free(&c->s);  /* safe twice */
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

/* One line (without "\n") into out; returns 0 or what the read returned. */
static long cli_read_line(struct cli *c, char *out, size_t size, int64_t deadline)
{
	for (int i = 0; i < 10000; i++) {
		char *nl = memchr(c->buf, '\n', c->len);
		if (nl != NULL) {
			size_t n = (size_t)(nl - c->buf);
			assert_true(n < size);
			memcpy(out, c->buf, n);
			out[n] = '\0';
			memmove(c->buf, nl + 1, c->len - n - 1);
			c->len -= n + 1;
			return 0;
		}
		assert_true(c->len < sizeof(c->buf));
		long r = fe_tls_stream_read(c->s, c->buf + c->len, sizeof(c->buf) - c->len,
					    deadline);
		if (r <= 0)
			return r == 0 ? -1000 : r;
		c->len += (size_t)r;
	}
	fail_msg("no line after 10000 reads");
	return MP_EIO;
}

static void cli_say(struct cli *c, const char *line, char *reply, size_t size)
{
	char buf[512];
	int n = snprintf(buf, sizeof(buf), "%s\n", line);
	assert_int_equal(fe_tls_stream_write(c->s, buf, (size_t)n, fe_tls_now_ms() + IO_MS), 0);
	assert_int_equal(cli_read_line(c, reply, size, fe_tls_now_ms() + IO_MS), 0);
}

static void cli_echo(struct cli *c, const char *line)
{
	char reply[512];
	cli_say(c, line, reply, sizeof(reply));
	assert_string_equal(reply, line);
}

static struct fe_tls_client *client_new(const char *ca_file)
{
	struct fe_tls_client_conf conf = { .ca_file = ca_file };
	struct fe_tls_client *client = NULL;
	char *err = NULL;
	int ret = fe_tls_client_open(&conf, &client, &err);
	if (ret != 0)
		fprintf(stderr, "fe_tls_client_open: %s\n", err);
	assert_int_equal(ret, 0);
	assert_null(err);
	return client;
}

static void cli_peer(struct cli *c, char *names, size_t size)
{
	assert_int_equal(fe_tls_stream_peer_names(c->s, names, size), 0);
}

/* Raw OpenSSL client: 1 if the handshake succeeded. */
static int raw_connect(int port, int min_v, int max_v, const char *ciphers,
		       SSL_CTX **ctx_r, SSL **ssl_r, int *fd_r)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	assert_non_null(ctx);
	SSL_CTX_set_security_level(ctx, 0);  /* let it offer TLS 1.1 at all */
	assert_int_equal(SSL_CTX_set_min_proto_version(ctx, min_v), 1);
	assert_int_equal(SSL_CTX_set_max_proto_version(ctx, max_v), 1);
	if (ciphers != NULL)
		assert_int_equal(SSL_CTX_set_cipher_list(ctx, ciphers), 1);
	int fd = tcp_connect(port);
	SSL *ssl = SSL_new(ctx);
	assert_non_null(ssl);
	assert_int_equal(SSL_set_fd(ssl, fd), 1);
	int r = SSL_connect(ssl);
	ERR_clear_error();
	*ctx_r = ctx;
	*ssl_r = ssl;
	*fd_r = fd;
	return r == 1;
}

static void raw_close(SSL_CTX *ctx, SSL *ssl, int fd, bool notify)
{
	if (notify)
		(void)SSL_shutdown(ssl);
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	close(fd);
	ERR_clear_error();
}

static void raw_say(SSL *ssl, const char *line, char *reply, size_t size)
{
	char buf[256];
	int n = snprintf(buf, sizeof(buf), "%s\n", line);
	assert_int_equal(SSL_write(ssl, buf, n), n);
	size_t len = 0;
	for (int i = 0; i < 1000; i++) {
		assert_true(len + 1 < size);
		int r = SSL_read(ssl, reply + len, (int)(size - 1 - len));
		assert_true(r > 0);
		len += (size_t)r;
		reply[len] = '\0';
		char *nl = strchr(reply, '\n');
		if (nl != NULL) {
			*nl = '\0';
			return;
		}
	}
	fail_msg("no reply line");
}

/* ---- tests ---- */

static void test_open_errors(void **state)
{
	struct fe_tls *t = NULL;
	char *err = NULL;
	char missing[512];
	path_join(missing, sizeof(missing), tmpdir, "nope.pem");

	struct fe_tls_conf conf = { .certs = NULL, .ncerts = 0 };
	assert_int_equal(fe_tls_open(&conf, &t, &err), MP_EINVAL);
	assert_null(t);
	assert_non_null(err);
	free(err);
	err = NULL;

	struct fe_tls_cert bad_cert[] = { { missing, path_a_key } };
	conf = (struct fe_tls_conf){ .certs = bad_cert, .ncerts = 1 };
	assert_int_equal(fe_tls_open(&conf, &t, &err), MP_EINVAL);
	assert_null(t);
	assert_non_null(err);
	assert_non_null(strstr(err, missing));
	assert_non_null(strstr(err, "No such file"));
	free(err);
	err = NULL;

	/* b's key with a's certificate: the check must catch it, naming both */
	struct fe_tls_cert mismatch[] = { { path_a_cert, path_a_key }, { path_a_cert, path_b_key } };
	conf = (struct fe_tls_conf){ .certs = mismatch, .ncerts = 2 };
	assert_int_equal(fe_tls_open(&conf, &t, &err), MP_EINVAL);
	assert_null(t);
	assert_non_null(err);
	assert_non_null(strstr(err, path_b_key));
	assert_non_null(strstr(err, path_a_cert));
	free(err);
	err = NULL;

	/* A key of another type than the certificate's (RSA key, EC
	 * certificate): OpenSSL loads it into another slot, and only the
	 * explicit check notices the certificate has no key. */
	char rsa_key[512];
	path_join(rsa_key, sizeof(rsa_key), tmpdir, "rsa.key");
	EVP_PKEY *pk = EVP_RSA_gen(2048);
	assert_non_null(pk);
	FILE *f = fopen(rsa_key, "w");
	assert_non_null(f);
	assert_int_equal(PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL), 1);
	assert_int_equal(fclose(f), 0);
	EVP_PKEY_free(pk);
	struct fe_tls_cert other_type[] = { { path_a_cert, rsa_key } };
	conf = (struct fe_tls_conf){ .certs = other_type, .ncerts = 1 };
	assert_int_equal(fe_tls_open(&conf, &t, &err), MP_EINVAL);
	assert_null(t);
	assert_non_null(err);
	assert_non_null(strstr(err, "does not match"));
	assert_non_null(strstr(err, rsa_key));
	free(err);
	err = NULL;

	/* A passphrase-protected key is refused, never prompted for. */
	char enc_key[512];
	path_join(enc_key, sizeof(enc_key), tmpdir, "enc.key");
	FILE *kf = fopen(path_a_key, "r");
	assert_non_null(kf);
	pk = PEM_read_PrivateKey(kf, NULL, NULL, NULL);
	assert_non_null(pk);
	assert_int_equal(fclose(kf), 0);
	f = fopen(enc_key, "w");
	assert_non_null(f);
	assert_int_equal(PEM_write_PrivateKey(f, pk, EVP_aes_256_cbc(), NULL, 0, NULL,
					      (void *)"secret"), 1);
	assert_int_equal(fclose(f), 0);
	EVP_PKEY_free(pk);
	struct fe_tls_cert encrypted[] = { { path_a_cert, enc_key } };
	conf = (struct fe_tls_conf){ .certs = encrypted, .ncerts = 1 };
	assert_int_equal(fe_tls_open(&conf, &t, &err), MP_EINVAL);
	assert_null(t);
	assert_non_null(strstr(err, enc_key));
	free(err);
	err = NULL;

	struct fe_tls_cert good[] = { { path_a_cert, path_a_key } };
	conf = (struct fe_tls_conf){ .certs = good, .ncerts = 1, .ciphers = "NO-SUCH-CIPHER" };
	assert_int_equal(fe_tls_open(&conf, &t, &err), MP_EINVAL);
	assert_non_null(err);
	assert_non_null(strstr(err, "NO-SUCH-CIPHER"));
	free(err);
	err = NULL;

	struct fe_tls_cert empty[] = { { path_a_cert, "" } };
	conf = (struct fe_tls_conf){ .certs = empty, .ncerts = 1 };
	assert_int_equal(fe_tls_open(&conf, &t, &err), MP_EINVAL);
	assert_non_null(err);
	free(err);
	err = NULL;

	conf = (struct fe_tls_conf){ .certs = good, .ncerts = 1,
				     .ciphersuites = "TLS_AES_128_GCM_SHA256" };
	assert_int_equal(fe_tls_open(&conf, &t, &err), 0);
	assert_null(err);
	assert_non_null(t);
	fe_tls_free(&t);
	assert_null(t);
	fe_tls_free(&t);

	struct fe_tls_client *client = NULL;
	struct fe_tls_client_conf cconf = { .ca_file = missing };
	assert_int_equal(fe_tls_client_open(&cconf, &client, &err), MP_EINVAL);
	assert_null(client);
	assert_non_null(err);
	assert_non_null(strstr(err, missing));
	free(err);
	fe_tls_client_free(&client);
}

static void test_describe_without_tls(void **state)
{
	struct event_base *base = event_base_new();
	assert_non_null(base);
	char buf[64];

	struct bufferevent *plain = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
	assert_non_null(plain);
	memset(buf, 'x', sizeof(buf));
	assert_int_equal(fe_tls_bev_describe(plain, buf, sizeof(buf)), MP_ENOENT);
	assert_string_equal(buf, "");
	memset(buf, 'x', sizeof(buf));
	assert_int_equal(fe_tls_bev_sni(plain, buf, sizeof(buf)), MP_ENOENT);
	assert_string_equal(buf, "");
	bufferevent_free(plain);

	/* A TLS bufferevent before any handshake. */
	struct fe_tls_cert certs[] = { { path_a_cert, path_a_key } };
	struct fe_tls_conf conf = { .certs = certs, .ncerts = 1 };
	struct fe_tls *t = NULL;
	char *err = NULL;
	assert_int_equal(fe_tls_open(&conf, &t, &err), 0);
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	struct bufferevent *bev = fe_tls_bev_accept(t, base, sv[0]);
	assert_non_null(bev);
	memset(buf, 'x', sizeof(buf));
	assert_int_equal(fe_tls_bev_describe(bev, buf, sizeof(buf)), MP_ENOENT);
	assert_string_equal(buf, "");
	bufferevent_free(bev);
	/* libevent 2.1 finishes freeing (and closes sv[0]) from the loop */
	assert_true(event_base_loop(base, EVLOOP_NONBLOCK) >= 0);
	struct pollfd pfd = { .fd = sv[1], .events = POLLIN };
	assert_int_equal(poll(&pfd, 1, IO_MS), 1);
	char c;
	assert_int_equal(read(sv[1], &c, 1), 0);
	close(sv[1]);

	struct fe_tls_stream *none = NULL;
	assert_int_equal(fe_tls_stream_describe(none, buf, sizeof(buf)), MP_ENOENT);
	assert_int_equal(fe_tls_stream_peer_names(none, buf, sizeof(buf)), MP_ENOENT);
	fe_tls_stream_free(&none);

	fe_tls_free(&t);
	event_base_free(base);
}

static void test_roundtrip(void **state)
{
	struct srv *s = srv_default();
	struct fe_tls_client *client = client_new(NULL);
	struct cli c;
	char *err = NULL;
	char buf[512];

	assert_int_equal(cli_open(client, s->tls_port, "localhost", &c, &err), 0);
	assert_null(err);
	cli_echo(&c, "hello");
	cli_echo(&c, "a second line, longer, with spaces");
	/* a large write, several records */
	static char big[100000];
	memset(big, 'z', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\n';
	assert_int_equal(fe_tls_stream_write(c.s, big, sizeof(big), fe_tls_now_ms() + IO_MS), 0);
	static char back[sizeof(big)];
	assert_int_equal(cli_read_line(&c, back, sizeof(back), fe_tls_now_ms() + IO_MS), 0);
	assert_int_equal(strlen(back), sizeof(big) - 1);
	assert_int_equal(back[0], 'z');

	assert_int_equal(fe_tls_stream_describe(c.s, buf, sizeof(buf)), 0);
	assert_true(strncmp(buf, "version=TLSv1.3 cipher=", 23) == 0);
	assert_non_null(strstr(buf, " bits="));
	/* truncation keeps a NUL */
	char tiny[8];
	assert_int_equal(fe_tls_stream_describe(c.s, tiny, sizeof(tiny)), 0);
	assert_int_equal(strlen(tiny), 7);

	cli_say(&c, "INFO", buf, sizeof(buf));
	assert_true(strncmp(buf, "0 version=TLSv1.3 cipher=TLS_", 29) == 0);
	assert_true(strstr(buf, " bits=128/128") != NULL || strstr(buf, " bits=256/256") != NULL);
	assert_non_null(strstr(buf, " sni=localhost 0"));
	cli_peer(&c, buf, sizeof(buf));
	assert_string_equal(buf, "localhost");
	cli_close(&c);

	/* no SNI: default certificate, empty SNI on the server */
	assert_int_equal(cli_open(client, s->tls_port, NULL, &c, &err), 0);
	cli_say(&c, "INFO", buf, sizeof(buf));
	assert_non_null(strstr(buf, " sni= 0"));
	cli_peer(&c, buf, sizeof(buf));
	assert_string_equal(buf, "localhost");
	cli_close(&c);

	/* Two handshakes, two closes with close_notify: EOF, never errors. */
	assert_int_equal(srv_wait(s, &s->n_eof, 2), 2);
	assert_int_equal(srv_get(s, &s->n_connected), 2);
	assert_int_equal(srv_get(s, &s->n_error), 0);
	assert_int_equal(srv_get(s, &s->n_describe_early), 2);
	assert_int_equal(srv_get(s, &s->n_accept_fail), 0);

	fe_tls_client_free(&client);
	fe_tls_client_free(&client);
	srv_stop(&s);
}

static void expect_peer(struct fe_tls_client *client, int port, const char *sni,
			const char *names)
{
	struct cli c;
	char *err = NULL;
	char buf[512];
	assert_int_equal(cli_open(client, port, sni, &c, &err), 0);
	cli_peer(&c, buf, sizeof(buf));
	assert_string_equal(buf, names);
	cli_echo(&c, "x");
	cli_close(&c);
}

static void test_sni(void **state)
{
	struct srv *s = srv_default();
	struct fe_tls_client *client = client_new(NULL);
	const char *a = "localhost";
	const char *b = "localhost other.test *.wild.test";

	expect_peer(client, s->tls_port, "other.test", b);
	expect_peer(client, s->tls_port, "OTHER.Test", b);
	expect_peer(client, s->tls_port, "other.test.", b);
	expect_peer(client, s->tls_port, "mx.wild.test", b);
	expect_peer(client, s->tls_port, "MX.Wild.TEST", b);
	/* the wildcard stands for one label, not zero or two */
	expect_peer(client, s->tls_port, "a.b.wild.test", a);
	expect_peer(client, s->tls_port, "wild.test", a);
	/* both certificates name localhost: the first wins */
	expect_peer(client, s->tls_port, "localhost", a);
	expect_peer(client, s->tls_port, "unknown.test", a);
	/* an address literal sends no SNI (RFC 6066 §3) */
	expect_peer(client, s->tls_port, "127.0.0.1", a);

	struct cli c;
	char *err = NULL;
	char buf[256];
	assert_int_equal(cli_open(client, s->tls_port, "Other.Test", &c, &err), 0);
	cli_say(&c, "INFO", buf, sizeof(buf));
	assert_non_null(strstr(buf, " sni=Other.Test 0"));
	cli_close(&c);

	fe_tls_client_free(&client);
	srv_stop(&s);
}

static void test_protocol_floor(void **state)
{
	struct srv *s = srv_default();
	SSL_CTX *ctx;
	SSL *ssl;
	int fd;
	char buf[256];

	/* What the SSL was configured with: the TLS 1.1 refusals below would
	 * also come from OpenSSL 3's default security level alone. */
	struct fe_tls_client *client = client_new(NULL);
	struct cli c;
	char *err = NULL;
	assert_int_equal(cli_open(client, s->tls_port, "other.test", &c, &err), 0);
	cli_say(&c, "OPTS", buf, sizeof(buf));
	char want[128];
	snprintf(want, sizeof(want), "min=%x nocomp=1 noreneg=1 serverpref=1", TLS1_2_VERSION);
	assert_string_equal(buf, want);
	cli_close(&c);
	fe_tls_client_free(&client);

	/* Our order, not the client's: it prefers ChaCha20, we AES-GCM. */
	assert_int_equal(raw_connect(s->tls_port, TLS1_2_VERSION, TLS1_2_VERSION,
				     "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256",
				     &ctx, &ssl, &fd), 1);
	raw_say(ssl, "INFO", buf, sizeof(buf));
	assert_true(strncmp(buf, "0 version=TLSv1.2 cipher=ECDHE-ECDSA-AES128-GCM-SHA256 "
			    "bits=128/128", 63) == 0);
	raw_close(ctx, ssl, fd, true);

	/* Control: the raw client works when it may use TLS 1.2. */
	assert_int_equal(raw_connect(s->tls_port, TLS1_1_VERSION, TLS1_2_VERSION, NULL,
				     &ctx, &ssl, &fd), 1);
	raw_say(ssl, "INFO", buf, sizeof(buf));
	assert_true(strncmp(buf, "0 version=TLSv1.2 cipher=ECDHE-", 31) == 0);
	raw_say(ssl, "ping", buf, sizeof(buf));
	assert_string_equal(buf, "ping");
	raw_close(ctx, ssl, fd, true);

	/* TLS 1.1 only: refused. */
	assert_int_equal(raw_connect(s->tls_port, TLS1_1_VERSION, TLS1_1_VERSION, NULL,
				     &ctx, &ssl, &fd), 0);
	raw_close(ctx, ssl, fd, false);
	/* TLS 1.0 only: refused. */
	assert_int_equal(raw_connect(s->tls_port, TLS1_VERSION, TLS1_VERSION, NULL,
				     &ctx, &ssl, &fd), 0);
	raw_close(ctx, ssl, fd, false);
	/* TLS 1.2 without forward secrecy: refused by the cipher list. */
	assert_int_equal(raw_connect(s->tls_port, TLS1_2_VERSION, TLS1_2_VERSION,
				     "AES128-SHA:AES256-GCM-SHA384", &ctx, &ssl, &fd), 0);
	raw_close(ctx, ssl, fd, false);

	assert_int_equal(srv_wait(s, &s->n_error, 3), 3);
	srv_stop(&s);
}

static void test_dirty_close(void **state)
{
	struct srv *s = srv_default();
	SSL_CTX *ctx;
	SSL *ssl;
	int fd;
	char buf[64];

	/* A client that drops TCP without close_notify: EOF, not an error. */
	assert_int_equal(raw_connect(s->tls_port, TLS1_2_VERSION, 0, NULL, &ctx, &ssl, &fd), 1);
	raw_say(ssl, "one", buf, sizeof(buf));
	raw_close(ctx, ssl, fd, false);
	assert_int_equal(srv_wait(s, &s->n_eof, 1), 1);
	assert_int_equal(srv_get(s, &s->n_error), 0);

	/* The server closes: with close_notify the client reads 0, without
	 * it MP_EIO. */
	struct fe_tls_client *client = client_new(NULL);
	struct cli c;
	char *err = NULL;
	assert_int_equal(cli_open(client, s->tls_port, "localhost", &c, &err), 0);
	cli_echo(&c, "two");
	assert_int_equal(fe_tls_stream_write(c.s, "CLOSE\n", 6, fe_tls_now_ms() + IO_MS), 0);
	assert_int_equal(fe_tls_stream_read(c.s, buf, sizeof(buf), fe_tls_now_ms() + IO_MS), 0);
	cli_close(&c);

	assert_int_equal(cli_open(client, s->tls_port, "localhost", &c, &err), 0);
	cli_echo(&c, "three");
	assert_int_equal(fe_tls_stream_write(c.s, "DROP\n", 5, fe_tls_now_ms() + IO_MS), 0);
	assert_int_equal(fe_tls_stream_read(c.s, buf, sizeof(buf), fe_tls_now_ms() + IO_MS),
			 MP_EIO);
	/* a broken stream stays broken */
	assert_int_equal(fe_tls_stream_write(c.s, "x\n", 2, fe_tls_now_ms() + IO_MS), MP_EIO);
	cli_close(&c);

	fe_tls_client_free(&client);
	srv_stop(&s);
}

/* Reads one plaintext line from fd (byte by byte, so nothing after it is
 * consumed: the TLS handshake follows). */
static void plain_read_line(int fd, char *out, size_t size)
{
	size_t len = 0;
	for (;;) {
		assert_true(len + 1 < size);
		char ch;
		ssize_t r = read(fd, &ch, 1);
		assert_int_equal(r, 1);
		if (ch == '\n')
			break;
		out[len++] = ch;
	}
	out[len] = '\0';
}

static void test_starttls(void **state)
{
	struct srv *s = srv_default();
	struct fe_tls_client *client = client_new(path_a_ca);
	char buf[256];
	char *err = NULL;

	for (int inject = 0; inject < 2; inject++) {
		int fd = tcp_connect(s->plain_port);
		const char *hello = "hello\n";
		assert_int_equal(write(fd, hello, strlen(hello)), (ssize_t)strlen(hello));
		plain_read_line(fd, buf, sizeof(buf));
		assert_string_equal(buf, "plain hello");
		/* RFC 3207 §4.2: what was pipelined after STARTTLS in
		 * plaintext must not survive into the TLS session. */
		const char *cmd = inject ? "STARTTLS\r\nINJECT\r\n" : "STARTTLS\r\n";
		assert_int_equal(write(fd, cmd, strlen(cmd)), (ssize_t)strlen(cmd));
		plain_read_line(fd, buf, sizeof(buf));
		assert_string_equal(buf, "220 go");

		struct cli c = { .fd = fd };
		assert_int_equal(fe_tls_client_handshake(client, fd, "localhost",
							 fe_tls_now_ms() + IO_MS, &c.s, &err), 0);
		assert_null(err);
		cli_echo(&c, "secret");  /* first line back is ours, not INJECT */
		cli_say(&c, "INFO", buf, sizeof(buf));
		assert_true(strncmp(buf, "0 version=TLSv1.3 cipher=", 25) == 0);
		assert_non_null(strstr(buf, " sni=localhost 0"));
		cli_close(&c);
	}
	/* SNI works on the STARTTLS path too */
	struct fe_tls_client *plain_client = client_new(NULL);
	int fd = tcp_connect(s->plain_port);
	assert_int_equal(write(fd, "STARTTLS\n", 9), 9);
	plain_read_line(fd, buf, sizeof(buf));
	assert_string_equal(buf, "220 go");
	struct cli c = { .fd = fd };
	assert_int_equal(fe_tls_client_handshake(plain_client, fd, "x.wild.test",
						 fe_tls_now_ms() + IO_MS, &c.s, &err), 0);
	cli_peer(&c, buf, sizeof(buf));
	assert_string_equal(buf, "localhost other.test *.wild.test");
	cli_echo(&c, "again");
	cli_close(&c);

	assert_int_equal(srv_wait(s, &s->n_eof, 3), 3);
	assert_int_equal(srv_get(s, &s->n_error), 0);
	assert_int_equal(srv_get(s, &s->n_accept_fail), 0);
	assert_int_equal(srv_get(s, &s->n_describe_early), 3);
	fe_tls_client_free(&plain_client);
	fe_tls_client_free(&client);
	srv_stop(&s);
}

static void test_reload(void **state)
{
	char live_cert[512], live_key[512];
	path_join(live_cert, sizeof(live_cert), tmpdir, "live/cert.pem");
	path_join(live_key, sizeof(live_key), tmpdir, "live/key.pem");
	copy_file(path_a_cert, live_cert);
	copy_file(path_a_key, live_key);
	struct fe_tls_cert certs[] = {
		{ live_cert, live_key },
		{ path_b_cert, path_b_key },
	};
	struct srv *s = srv_start(certs, 2);
	struct fe_tls_client *client = client_new(NULL);
	struct cli c1, c2, c3;
	char *err = NULL;
	char buf[256];

	assert_int_equal(cli_open(client, s->tls_port, "localhost", &c1, &err), 0);
	cli_peer(&c1, buf, sizeof(buf));
	assert_string_equal(buf, "localhost");
	cli_echo(&c1, "before");

	copy_file(path_c_cert, live_cert);
	copy_file(path_c_key, live_key);
	assert_int_equal(fe_tls_reload(s->t, &err), 0);
	assert_null(err);

	assert_int_equal(cli_open(client, s->tls_port, "localhost", &c2, &err), 0);
	cli_peer(&c2, buf, sizeof(buf));
	assert_string_equal(buf, "localhost reloaded.test");
	/* SNI still reaches the other certificate of the new set */
	expect_peer(client, s->tls_port, "other.test", "localhost other.test *.wild.test");
	/* The connection from before the reload keeps working, then goes
	 * (dropping the last reference to the old set). */
	cli_echo(&c1, "after");
	cli_close(&c1);

	/* A key that does not match: reload fails, the set stays. */
	copy_file(path_a_key, live_key);
	assert_int_equal(fe_tls_reload(s->t, &err), MP_EINVAL);
	assert_non_null(err);
	assert_non_null(strstr(err, live_key));
	free(err);
	err = NULL;
	/* A key file that is no key. */
	write_file(live_key, "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n");
	assert_int_equal(fe_tls_reload(s->t, &err), MP_EINVAL);
	assert_non_null(err);
	assert_non_null(strstr(err, live_key));
	free(err);
	err = NULL;
	/* No certificate file. */
	assert_int_equal(unlink(live_cert), 0);
	assert_int_equal(fe_tls_reload(s->t, &err), MP_EINVAL);
	assert_non_null(strstr(err, live_cert));
	free(err);
	err = NULL;

	assert_int_equal(cli_open(client, s->tls_port, "localhost", &c3, &err), 0);
	cli_peer(&c3, buf, sizeof(buf));
	assert_string_equal(buf, "localhost reloaded.test");
	cli_echo(&c3, "still");
	cli_echo(&c2, "still too");
	cli_close(&c2);
	cli_close(&c3);

	/* Repair and reload back to a. */
	copy_file(path_a_cert, live_cert);
	copy_file(path_a_key, live_key);
	assert_int_equal(fe_tls_reload(s->t, &err), 0);
	expect_peer(client, s->tls_port, "localhost", "localhost");

	assert_int_equal(srv_get(s, &s->n_error), 0);
	fe_tls_client_free(&client);
	srv_stop(&s);
}

struct hammer {
	int port;
	int ok;  /* rounds that did handshake, echo and close */
};

/* One round without cmocka (this runs off the main thread): 1 if ok. */
static int hammer_round(struct fe_tls_client *client, int port, const char *sni)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0;
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	struct fe_tls_stream *st = NULL;
	char *err = NULL;
	int ok = 0;
	int64_t deadline = fe_tls_now_ms() + IO_MS;
	if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0 ||
	    fe_tls_client_handshake(client, fd, sni, deadline, &st, &err) != 0) {
		fprintf(stderr, "hammer: %s\n", err != NULL ? err : strerror(errno));
		goto out;
	}
	if (fe_tls_stream_write(st, "hammer\n", 7, deadline) != 0)
		goto out;
	char buf[16];
	size_t len = 0;
	for (int i = 0; i < 100 && len < 7; i++) {
		long r = fe_tls_stream_read(st, buf + len, sizeof(buf) - len, deadline);
		if (r <= 0)
			goto out;
		len += (size_t)r;
	}
	ok = len == 7 && memcmp(buf, "hammer\n", 7) == 0;
out:
	free(err);
	fe_tls_stream_free(&st);
	close(fd);
	return ok;
}

static void *hammer_main(void *arg)
{
	struct hammer *h = arg;
	struct fe_tls_client *client = NULL;
	struct fe_tls_client_conf conf = { .ca_file = NULL };
	char *err = NULL;
	if (fe_tls_client_open(&conf, &client, &err) != 0) {
		free(err);
		return NULL;
	}
	static const char *const names[] = { "localhost", "other.test", "mx.wild.test", NULL };
	for (int i = 0; i < CONCURRENT_ROUNDS; i++)
		h->ok += hammer_round(client, h->port, names[i % 4]);
	fe_tls_client_free(&client);
	return NULL;
}

/* Handshakes on the loop thread while this thread reloads: every one
 * succeeds, and ASan sees no freed context used. */
static void test_reload_concurrent(void **state)
{
	struct srv *s = srv_default();
	struct hammer h[2] = { { .port = s->tls_port }, { .port = s->tls_port } };
	pthread_t th[2];
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&th[i], NULL, hammer_main, &h[i]), 0);
	for (int i = 0; i < CONCURRENT_ROUNDS; i++) {
		char *err = NULL;
		assert_int_equal(fe_tls_reload(s->t, &err), 0);
		assert_null(err);
	}
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_join(th[i], NULL), 0);
	assert_int_equal(h[0].ok, CONCURRENT_ROUNDS);
	assert_int_equal(h[1].ok, CONCURRENT_ROUNDS);
	assert_int_equal(srv_get(s, &s->n_error), 0);
	srv_stop(&s);
}

static void test_verify(void **state)
{
	struct srv *s = srv_default();
	struct fe_tls_client *client = client_new(path_a_ca);
	struct cli c;
	char *err = NULL;

	assert_int_equal(cli_open(client, s->tls_port, "localhost", &c, &err), 0);
	assert_null(err);
	cli_echo(&c, "verified");
	cli_close(&c);

	/* The certificate's IP entry, checked as an address. */
	assert_int_equal(cli_open(client, s->tls_port, "127.0.0.1", &c, &err), 0);
	cli_close(&c);

	/* Right CA, wrong name. */
	assert_int_equal(cli_open(client, s->tls_port, "wrong.test", &c, &err), MP_EPERM);
	assert_non_null(strstr(err, "hostname mismatch"));
	free(err);
	err = NULL;
	assert_int_equal(cli_open(client, s->tls_port, "::2", &c, &err), MP_EPERM);
	free(err);
	err = NULL;

	/* Name in the certificate, but another CA signed it. */
	assert_int_equal(cli_open(client, s->tls_port, "other.test", &c, &err), MP_EPERM);
	assert_non_null(strstr(err, "other.test"));
	free(err);
	err = NULL;

	/* Verification without a name is refused up front. */
	assert_int_equal(cli_open(client, s->tls_port, NULL, &c, &err), MP_EINVAL);
	free(err);
	err = NULL;
	fe_tls_client_free(&client);

	/* With b's CA, other.test verifies. */
	client = client_new(path_b_ca);
	assert_int_equal(cli_open(client, s->tls_port, "other.test", &c, &err), 0);
	cli_echo(&c, "b");
	cli_close(&c);
	fe_tls_client_free(&client);
	srv_stop(&s);
}

static void test_timeouts(void **state)
{
	/* A listener that never accepts: the kernel completes the TCP
	 * handshake, nobody ever answers the ClientHello. */
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(l >= 0);
	struct sockaddr_in sin = { .sin_family = AF_INET };
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(l, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(listen(l, 4), 0);
	socklen_t len = sizeof(sin);
	assert_int_equal(getsockname(l, (struct sockaddr *)&sin, &len), 0);

	struct fe_tls_client *client = client_new(NULL);
	int fd = tcp_connect(ntohs(sin.sin_port));
	struct fe_tls_stream *st = NULL;
	char *err = NULL;
	assert_int_equal(fe_tls_client_handshake(client, fd, "localhost", fe_tls_now_ms() + 200,
						 &st, &err), MP_ETIMEDOUT);
	assert_null(st);
	assert_non_null(err);
	free(err);
	err = NULL;
	/* the fd got its blocking mode back */
	assert_int_equal(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
	close(fd);
	close(l);

	/* After the handshake: a read with nothing coming times out and the
	 * stream still works. */
	struct srv *s = srv_default();
	struct cli c;
	assert_int_equal(cli_open(client, s->tls_port, "localhost", &c, &err), 0);
	char buf[16];
	assert_int_equal(fe_tls_stream_read(c.s, buf, sizeof(buf), fe_tls_now_ms() + 100),
			 MP_ETIMEDOUT);
	/* a deadline already past */
	assert_int_equal(fe_tls_stream_read(c.s, buf, sizeof(buf), fe_tls_now_ms() - 1),
			 MP_ETIMEDOUT);
	cli_echo(&c, "alive");
	cli_close(&c);

	fe_tls_client_free(&client);
	srv_stop(&s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_open_errors),
		cmocka_unit_test(test_describe_without_tls),
		cmocka_unit_test(test_roundtrip),
		cmocka_unit_test(test_sni),
		cmocka_unit_test(test_protocol_floor),
		cmocka_unit_test(test_dirty_close),
		cmocka_unit_test(test_starttls),
		cmocka_unit_test(test_reload),
		cmocka_unit_test(test_reload_concurrent),
		cmocka_unit_test(test_verify),
		cmocka_unit_test(test_timeouts),
	};
	/* FE_TLS_TEST=test_sni runs only the tests matching that pattern */
	const char *filter = getenv("FE_TLS_TEST");
	if (filter != NULL)
		cmocka_set_test_filter(filter);
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
