/*
 * test_fe_dns: fe_dns against a real dnsmasq started as a child process on
 * 127.0.0.1 (a free port), killed by PID at the end. Checks MX order and
 * randomisation of equal preferences, implicit MX, null MX, NXDOMAIN,
 * SERVFAIL, the host/address limits, address literals, and that a dead or
 * silent resolver gives a temporary failure within the deadline.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "fe_dns.h"
#include "mp_error.h"

static pid_t dnsmasq_pid = -1;
static int dnsmasq_port;
static char dns_server[64];

/* A UDP port on 127.0.0.1 that was free a moment ago (and, with
 * keep_fd_r, a socket still bound to it that never answers). */
static int free_udp_port(int *keep_fd_r)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	struct sockaddr_in sin = { .sin_family = AF_INET };
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	socklen_t len = sizeof(sin);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
	if (keep_fd_r != NULL)
		*keep_fd_r = fd;
	else
		close(fd);
	return ntohs(sin.sin_port);
}

static pid_t start_dnsmasq(int port)
{
	char portarg[32], pidarg[64];
	snprintf(portarg, sizeof(portarg), "--port=%d", port);
	snprintf(pidarg, sizeof(pidarg), "--pid-file=/tmp/test_fe_dns.%d.pid", (int)getpid());
	/* --server=/servfail.test/127.0.0.1#1: forwards to a port where
	 * nothing listens, so dnsmasq answers SERVFAIL/REFUSED for it. */
	char servfail[64];
	snprintf(servfail, sizeof(servfail), "--server=/servfail.test/127.0.0.1#%d",
		 free_udp_port(NULL));
	const char *argv[] = {
		"dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
		"--no-resolv", "--no-hosts", "--listen-address=127.0.0.1",
		"--bind-interfaces", portarg, pidarg, "--user=root",
		"--local=/test/", servfail,
		/* a.test: 10 mx1, 20 mx2 and mx3 (equal), 30 mx4 */
		"--mx-host=a.test,mx1.a.test,10", "--mx-host=a.test,mx2.a.test,20",
		"--mx-host=a.test,mx3.a.test,20", "--mx-host=a.test,mx4.a.test,30",
		"--host-record=mx1.a.test,127.0.0.2",
		"--host-record=mx2.a.test,127.0.0.3,::3",
		"--host-record=mx3.a.test,127.0.0.4",
		"--host-record=mx4.a.test,127.0.0.5",
		/* implicit MX */
		"--host-record=implicit.test,127.0.0.6",
		/* null MX, RFC 7505 */
		"--mx-host=null.test,.,0",
		/* an MX whose host does not exist, and one that does */
		"--mx-host=half.test,ghost.half.test,5", "--mx-host=half.test,mx1.a.test,50",
		"--mx-host=noaddr.test,ghost.noaddr.test,10",
		/* a name with neither MX nor addresses */
		"--txt-record=empty.test,nothing",
		/* twelve MX hosts; keep 10 */
		"--mx-host=many.test,m01.a.test,1", "--mx-host=many.test,m02.a.test,2",
		"--mx-host=many.test,m03.a.test,3", "--mx-host=many.test,m04.a.test,4",
		"--mx-host=many.test,m05.a.test,5", "--mx-host=many.test,m06.a.test,6",
		"--mx-host=many.test,m07.a.test,7", "--mx-host=many.test,m08.a.test,8",
		"--mx-host=many.test,m09.a.test,9", "--mx-host=many.test,m10.a.test,10",
		"--mx-host=many.test,m11.a.test,11", "--mx-host=many.test,m12.a.test,12",
		"--host-record=m01.a.test,127.0.1.1", "--host-record=m02.a.test,127.0.1.2",
		"--host-record=m03.a.test,127.0.1.3", "--host-record=m04.a.test,127.0.1.4",
		"--host-record=m05.a.test,127.0.1.5", "--host-record=m06.a.test,127.0.1.6",
		"--host-record=m07.a.test,127.0.1.7", "--host-record=m08.a.test,127.0.1.8",
		"--host-record=m09.a.test,127.0.1.9", "--host-record=m10.a.test,127.0.1.10",
		"--host-record=m11.a.test,127.0.1.11", "--host-record=m12.a.test,127.0.1.12",
		/* twelve addresses on one host; keep 10 */
		"--mx-host=wide.test,wide.a.test,1",
		"--host-record=wide.a.test,127.0.2.1", "--host-record=wide.a.test,127.0.2.2",
		"--host-record=wide.a.test,127.0.2.3", "--host-record=wide.a.test,127.0.2.4",
		"--host-record=wide.a.test,127.0.2.5", "--host-record=wide.a.test,127.0.2.6",
		"--host-record=wide.a.test,127.0.2.7", "--host-record=wide.a.test,127.0.2.8",
		"--host-record=wide.a.test,127.0.2.9", "--host-record=wide.a.test,127.0.2.10",
		"--host-record=wide.a.test,127.0.2.11", "--host-record=wide.a.test,127.0.2.12",
		NULL,
	};
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int devnull = open("/dev/null", O_RDWR);
		if (devnull >= 0) {
			dup2(devnull, 0);
			dup2(devnull, 1);
		}
		execvp("dnsmasq", (char *const *)argv);
		_exit(127);
	}
	return pid;
}

static void stop_dnsmasq(void)
{
	if (dnsmasq_pid > 0) {
		kill(dnsmasq_pid, SIGTERM);
		int status;
		for (int i = 0; i < 50; i++) {
			if (waitpid(dnsmasq_pid, &status, WNOHANG) == dnsmasq_pid) {
				dnsmasq_pid = -1;
				break;
			}
			usleep(100 * 1000);
		}
		if (dnsmasq_pid > 0) {
			kill(dnsmasq_pid, SIGKILL);
			waitpid(dnsmasq_pid, &status, 0);
			dnsmasq_pid = -1;
		}
	}
	char pidfile[64];
	snprintf(pidfile, sizeof(pidfile), "/tmp/test_fe_dns.%d.pid", (int)getpid());
	unlink(pidfile);
}

static int setup_dnsmasq(void **state)
{
	/* The port can be taken between our probe and dnsmasq's bind: retry
	 * on a fresh port when dnsmasq exits early. */
	for (int attempt = 0; attempt < 5; attempt++) {
		dnsmasq_port = free_udp_port(NULL);
		snprintf(dns_server, sizeof(dns_server), "127.0.0.1:%d", dnsmasq_port);
		dnsmasq_pid = start_dnsmasq(dnsmasq_port);
		struct fe_dns *d = NULL;
		char *err = NULL;
		if (fe_dns_open(dns_server, 200, 1, &d, &err) != 0) {
			fprintf(stderr, "fe_dns_open: %s\n", err ? err : "?");
			free(err);
			return -1;
		}
		/* Ready once it answers; at most 10 s. */
		for (int i = 0; i < 50; i++) {
			int status;
			if (waitpid(dnsmasq_pid, &status, WNOHANG) == dnsmasq_pid) {
				dnsmasq_pid = -1;
				break;
			}
			struct fe_dns_mx_list *l = NULL;
			int ret = fe_dns_mx(d, "implicit.test", fe_dns_now_ms() + 200, &l, &err);
			free(err);
			err = NULL;
			fe_dns_mx_list_free(&l);
			if (ret == 0) {
				fe_dns_free(&d);
				return 0;
			}
			usleep(100 * 1000);
		}
		fe_dns_free(&d);
		stop_dnsmasq();
	}
	fprintf(stderr, "dnsmasq did not start\n");
	return -1;
}

static int teardown_dnsmasq(void **state)
{
	stop_dnsmasq();
	return 0;
}

static struct fe_dns *open_dns(void)
{
	struct fe_dns *d = NULL;
	char *err = NULL;
	int ret = fe_dns_open(dns_server, 1000, 2, &d, &err);
	if (ret != 0)
		fprintf(stderr, "fe_dns_open: %s\n", err);
	assert_int_equal(ret, 0);
	assert_null(err);
	return d;
}

static const char *addr_str(const struct fe_dns_host *h, size_t i, char *buf, size_t size)
{
	const struct sockaddr_storage *ss = &h->addrs[i];
	if (ss->ss_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, buf, size);
	else
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, buf, size);
	return buf;
}

/* Looks domain up; returns the error (0 on success, list in *l). */
static int lookup(struct fe_dns *d, const char *domain, struct fe_dns_mx_list **l,
		  int64_t timeout_ms)
{
	char *err = NULL;
	int ret = fe_dns_mx(d, domain, fe_dns_now_ms() + timeout_ms, l, &err);
	if (ret == 0) {
		assert_null(err);
		assert_non_null(*l);
	} else {
		assert_null(*l);
		assert_non_null(err);
		if (getenv("TEST_VERBOSE") != NULL)
			fprintf(stderr, "  %s: %s (%s)\n", domain, err, mp_strerror(ret));
		free(err);
	}
	return ret;
}

static void test_mx_order(void **state)
{
	struct fe_dns *d = open_dns();
	int seen23 = 0, seen32 = 0;
	char buf[64];
	/* Equal preferences come in random order: over 64 lookups both orders
	 * of mx2/mx3 must show up (the chance of not seeing one is 2^-63). */
	for (int i = 0; i < 64 && !(seen23 && seen32); i++) {
		struct fe_dns_mx_list *l = NULL;
		assert_int_equal(lookup(d, "a.test", &l, 5000), 0);
		assert_int_equal(l->nhosts, 4);
		assert_false(l->implicit);
		assert_false(l->literal);
		assert_string_equal(l->hosts[0].name, "mx1.a.test");
		assert_int_equal(l->hosts[0].pref, 10);
		assert_int_equal(l->hosts[0].naddrs, 1);
		assert_string_equal(addr_str(&l->hosts[0], 0, buf, sizeof(buf)), "127.0.0.2");
		assert_int_equal(l->hosts[1].pref, 20);
		assert_int_equal(l->hosts[2].pref, 20);
		assert_string_equal(l->hosts[3].name, "mx4.a.test");
		assert_int_equal(l->hosts[3].pref, 30);
		const struct fe_dns_host *mx2 = NULL;
		if (strcmp(l->hosts[1].name, "mx2.a.test") == 0) {
			assert_string_equal(l->hosts[2].name, "mx3.a.test");
			seen23 = 1;
			mx2 = &l->hosts[1];
		} else {
			assert_string_equal(l->hosts[1].name, "mx3.a.test");
			assert_string_equal(l->hosts[2].name, "mx2.a.test");
			seen32 = 1;
			mx2 = &l->hosts[2];
		}
		/* A then AAAA. */
		assert_int_equal(mx2->naddrs, 2);
		assert_int_equal(mx2->addrs[0].ss_family, AF_INET);
		assert_string_equal(addr_str(mx2, 0, buf, sizeof(buf)), "127.0.0.3");
		assert_int_equal(mx2->addrs[1].ss_family, AF_INET6);
		assert_string_equal(addr_str(mx2, 1, buf, sizeof(buf)), "::3");
		assert_int_equal(mx2->addrlens[1], sizeof(struct sockaddr_in6));
		fe_dns_mx_list_free(&l);
		fe_dns_mx_list_free(&l); /* safe twice */
	}
	assert_true(seen23);
	assert_true(seen32);
	assert_string_equal(fe_dns_last_status(d), "");
	fe_dns_free(&d);
	fe_dns_free(&d);
}

static void test_implicit_mx(void **state)
{
	struct fe_dns *d = open_dns();
	struct fe_dns_mx_list *l = NULL;
	char buf[64];
	/* A trailing dot is accepted and dropped. */
	assert_int_equal(lookup(d, "implicit.test.", &l, 5000), 0);
	assert_true(l->implicit);
	assert_int_equal(l->nhosts, 1);
	assert_string_equal(l->hosts[0].name, "implicit.test");
	assert_int_equal(l->hosts[0].naddrs, 1);
	assert_string_equal(addr_str(&l->hosts[0], 0, buf, sizeof(buf)), "127.0.0.6");
	fe_dns_mx_list_free(&l);

	/* Exists (TXT), but neither MX nor A/AAAA: permanent. */
	int ret = lookup(d, "empty.test", &l, 5000);
	assert_int_equal(ret, MP_ENOENT);
	assert_true(fe_dns_err_permanent(ret));
	assert_string_equal(fe_dns_last_status(d), "5.4.4");
	fe_dns_free(&d);
}

static void test_null_mx(void **state)
{
	struct fe_dns *d = open_dns();
	struct fe_dns_mx_list *l = NULL;
	int ret = lookup(d, "null.test", &l, 5000);
	assert_int_equal(ret, MP_ENOENT);
	assert_true(fe_dns_err_permanent(ret));
	assert_string_equal(fe_dns_last_status(d), "5.1.10");
	fe_dns_free(&d);
}

static void test_nxdomain(void **state)
{
	struct fe_dns *d = open_dns();
	struct fe_dns_mx_list *l = NULL;
	int ret = lookup(d, "nosuch.test", &l, 5000);
	assert_int_equal(ret, MP_ENOENT);
	assert_true(fe_dns_err_permanent(ret));
	assert_string_equal(fe_dns_last_status(d), "5.1.2");

	/* The only MX host does not exist: nothing to route to, permanent. */
	ret = lookup(d, "noaddr.test", &l, 5000);
	assert_int_equal(ret, MP_ENOENT);
	assert_string_equal(fe_dns_last_status(d), "5.4.4");

	/* One MX host does not exist: the other one is used. */
	assert_int_equal(lookup(d, "half.test", &l, 5000), 0);
	assert_int_equal(l->nhosts, 1);
	assert_string_equal(l->hosts[0].name, "mx1.a.test");
	assert_int_equal(l->hosts[0].pref, 50);
	fe_dns_mx_list_free(&l);
	fe_dns_free(&d);
}

/* A resolver that answers every query with SERVFAIL, in a thread; it
 * stops after *stop is set or 10 s. */
struct servfail_srv {
	int fd;
	volatile int stop;
	int answered;
};

static void *servfail_main(void *arg)
{
	struct servfail_srv *s = arg;
	int64_t end = fe_dns_now_ms() + 10000;
	while (!s->stop && fe_dns_now_ms() < end) {
		struct pollfd pfd = { s->fd, POLLIN, 0 };
		if (poll(&pfd, 1, 50) <= 0)
			continue;
		unsigned char q[512];
		struct sockaddr_storage from;
		socklen_t flen = sizeof(from);
		ssize_t n = recvfrom(s->fd, q, sizeof(q), 0, (struct sockaddr *)&from, &flen);
		if (n < 12)
			continue;
		/* The query with QR set and RCODE 2 (SERVFAIL), RFC 1035 §4.1.1. */
		q[2] |= 0x80;
		q[3] = (unsigned char)((q[3] & 0xf0) | 2);
		sendto(s->fd, q, (size_t)n, 0, (struct sockaddr *)&from, flen);
		s->answered++;
	}
	return NULL;
}

static void test_servfail(void **state)
{
	struct servfail_srv srv = { -1, 0, 0 };
	char server[64];
	snprintf(server, sizeof(server), "127.0.0.1:%d", free_udp_port(&srv.fd));
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, servfail_main, &srv), 0);
	struct fe_dns *d = NULL;
	char *err = NULL;
	assert_int_equal(fe_dns_open(server, 1000, 2, &d, &err), 0);
	struct fe_dns_mx_list *l = NULL;
	int64_t start = fe_dns_now_ms();
	int ret = lookup(d, "a.test", &l, 5000);
	srv.stop = 1;
	assert_int_equal(pthread_join(th, NULL), 0);
	close(srv.fd);
	assert_int_equal(ret, MP_EUNAVAIL);
	assert_true(srv.answered >= 1);
	assert_false(fe_dns_err_permanent(ret));
	assert_string_equal(fe_dns_last_status(d), "4.4.3");
	assert_true(fe_dns_now_ms() - start <= 5000 + 1000);
	fe_dns_free(&d);

	/* dnsmasq forwarding to a dead upstream: temporary as well. */
	d = open_dns();
	ret = lookup(d, "x.servfail.test", &l, 20000);
	assert_true(ret == MP_EUNAVAIL || ret == MP_ETIMEDOUT);
	assert_false(fe_dns_err_permanent(ret));
	assert_string_equal(fe_dns_last_status(d), "4.4.3");
	fe_dns_free(&d);
}

static void test_limits(void **state)
{
	struct fe_dns *d = open_dns();
	struct fe_dns_mx_list *l = NULL;
	char buf[64];
	assert_int_equal(lookup(d, "many.test", &l, 5000), 0);
	assert_int_equal(l->nhosts, FE_DNS_MAX_HOSTS);
	for (size_t i = 0; i < l->nhosts; i++) {
		char want[32];
		snprintf(want, sizeof(want), "m%02zu.a.test", i + 1);
		assert_string_equal(l->hosts[i].name, want);
		assert_int_equal(l->hosts[i].pref, i + 1);
		snprintf(want, sizeof(want), "127.0.1.%zu", i + 1);
		assert_string_equal(addr_str(&l->hosts[i], 0, buf, sizeof(buf)), want);
	}
	fe_dns_mx_list_free(&l);

	assert_int_equal(lookup(d, "wide.test", &l, 5000), 0);
	assert_int_equal(l->nhosts, 1);
	assert_int_equal(l->hosts[0].naddrs, FE_DNS_MAX_ADDRS);
	for (size_t i = 0; i < l->hosts[0].naddrs; i++) {
		addr_str(&l->hosts[0], i, buf, sizeof(buf));
		assert_int_equal(strncmp(buf, "127.0.2.", 8), 0);
	}
	fe_dns_mx_list_free(&l);
	fe_dns_free(&d);
}

static void test_literal_and_names(void **state)
{
	struct fe_dns *d = open_dns();
	struct fe_dns_mx_list *l = NULL;
	char buf[64];
	assert_int_equal(lookup(d, "[127.0.0.1]", &l, 5000), 0);
	assert_true(l->literal);
	assert_int_equal(l->nhosts, 1);
	assert_int_equal(l->hosts[0].naddrs, 1);
	assert_string_equal(addr_str(&l->hosts[0], 0, buf, sizeof(buf)), "127.0.0.1");
	fe_dns_mx_list_free(&l);

	assert_int_equal(lookup(d, "[IPv6:::1]", &l, 5000), 0);
	assert_int_equal(l->hosts[0].addrs[0].ss_family, AF_INET6);
	assert_string_equal(addr_str(&l->hosts[0], 0, buf, sizeof(buf)), "::1");
	fe_dns_mx_list_free(&l);
	assert_int_equal(lookup(d, "[ipv6:::1]", &l, 5000), 0);
	fe_dns_mx_list_free(&l);

	const char *bad[] = { "[127.0.0.1", "[300.0.0.1]", "[::1]", "[IPv6:zz]", "[]",
			      "", ".", "a..b", "-\r\n", "a b.test", "caf\xc3\xa9.test",
			      "x.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int ret = lookup(d, bad[i], &l, 5000);
		assert_int_equal(ret, MP_EINVAL);
		assert_true(fe_dns_err_permanent(ret));
		assert_string_equal(fe_dns_last_status(d), "5.1.2");
	}
	char longname[300];
	memset(longname, 'a', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	for (size_t i = 50; i < sizeof(longname) - 1; i += 50)
		longname[i] = '.';
	assert_int_equal(lookup(d, longname, &l, 5000), MP_EINVAL);
	fe_dns_free(&d);
}

static void test_dead_resolver(void **state)
{
	/* Nothing listens on the port: the UDP query is refused (or times out);
	 * either way temporary, and bounded. */
	char server[64];
	snprintf(server, sizeof(server), "127.0.0.1:%d", free_udp_port(NULL));
	struct fe_dns *d = NULL;
	char *err = NULL;
	assert_int_equal(fe_dns_open(server, 300, 2, &d, &err), 0);
	struct fe_dns_mx_list *l = NULL;
	int64_t start = fe_dns_now_ms();
	int ret = lookup(d, "a.test", &l, 10000);
	assert_true(ret == MP_EUNAVAIL || ret == MP_ETIMEDOUT);
	assert_false(fe_dns_err_permanent(ret));
	assert_string_equal(fe_dns_last_status(d), "4.4.3");
	assert_true(fe_dns_now_ms() - start <= 10000 + 1000);
	fe_dns_free(&d);

	/* A socket that never answers: c-ares gives up after its tries. */
	int silent = -1;
	snprintf(server, sizeof(server), "127.0.0.1:%d", free_udp_port(&silent));
	assert_int_equal(fe_dns_open(server, 200, 2, &d, &err), 0);
	start = fe_dns_now_ms();
	ret = lookup(d, "a.test", &l, 10000);
	assert_int_equal(ret, MP_EUNAVAIL);
	assert_true(fe_dns_now_ms() - start <= 10000 + 1000);

	/* The caller's deadline comes before c-ares gives up. */
	fe_dns_free(&d);
	assert_int_equal(fe_dns_open(server, 5000, 3, &d, &err), 0);
	start = fe_dns_now_ms();
	ret = lookup(d, "a.test", &l, 300);
	assert_int_equal(ret, MP_ETIMEDOUT);
	assert_false(fe_dns_err_permanent(ret));
	assert_true(fe_dns_now_ms() - start <= 300 + 1000);
	/* A deadline already past. */
	ret = lookup(d, "a.test", &l, -1);
	assert_int_equal(ret, MP_ETIMEDOUT);
	/* The channel still works afterwards (cancelled queries are gone). */
	ret = lookup(d, "[127.0.0.1]", &l, 100);
	assert_int_equal(ret, 0);
	fe_dns_mx_list_free(&l);
	fe_dns_free(&d);
	close(silent);
}

static void test_open_errors(void **state)
{
	struct fe_dns *d = NULL;
	char *err = NULL;
	assert_int_equal(fe_dns_open("not an address", 100, 1, &d, &err), MP_EINVAL);
	assert_null(d);
	assert_non_null(err);
	free(err);
	err = NULL;
	assert_int_equal(fe_dns_open(NULL, -1, 1, &d, &err), MP_EINVAL);
	free(err);
	err = NULL;
	/* NULL: the system's resolv.conf (no lookup made here). */
	assert_int_equal(fe_dns_open(NULL, 0, 0, &d, &err), 0);
	assert_non_null(d);
	fe_dns_free(&d);
	assert_null(d);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mx_order),
		cmocka_unit_test(test_implicit_mx),
		cmocka_unit_test(test_null_mx),
		cmocka_unit_test(test_nxdomain),
		cmocka_unit_test(test_servfail),
		cmocka_unit_test(test_limits),
		cmocka_unit_test(test_literal_and_names),
		cmocka_unit_test(test_dead_resolver),
		cmocka_unit_test(test_open_errors),
	};
	return cmocka_run_group_tests(tests, setup_dnsmasq, teardown_dnsmasq);
}
