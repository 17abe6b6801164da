/*
 * test_etcd_spawn: starts, restarts and kills a real etcd for tests (see
 * test_etcd_spawn.h). Errors go to stderr and come back as -1; the tests
 * decide whether that is an assertion or a failed group setup.
 *
 * Never: talk to anything but 127.0.0.1, wait without a bound, kill a
 * process it did not start.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mp_error.h"
#include "mp_etcd.h"
#include "test_etcd_spawn.h"

#define PROBE_INTERVAL_NS 100000000L  /* 100 ms between readiness probes */

int test_etcd_free_port(void)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

	if (fd < 0)
		return -1;
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&a, &len) == 0)
		port = ntohs(a.sin_port);
	close(fd);
	return port;
}

bool test_etcd_find(struct test_etcd *t, bool search_path)
{
	const char *path = search_path ? getenv("PATH") : NULL;
	char *copy, *save = NULL, *dir;
	bool found = false;

	if (path != NULL && (copy = strdup(path)) != NULL) {
		for (dir = strtok_r(copy, ":", &save); dir != NULL && !found;
		     dir = strtok_r(NULL, ":", &save)) {
			snprintf(t->bin, sizeof(t->bin), "%s/etcd", dir);
			found = access(t->bin, X_OK) == 0;
		}
		free(copy);
	}
	if (!found) {
		snprintf(t->bin, sizeof(t->bin), "/usr/bin/etcd");
		found = access(t->bin, X_OK) == 0;
	}
	return found;
}

static int test_etcd_spawn(struct test_etcd *t)
{
	char data[128], logf[128], client[64], peer[64], cluster[96];
	pid_t pid;

	snprintf(data, sizeof(data), "%s/data", t->dir);
	snprintf(logf, sizeof(logf), "%s/etcd.log", t->dir);
	snprintf(client, sizeof(client), "http://127.0.0.1:%d", t->client_port);
	snprintf(peer, sizeof(peer), "http://127.0.0.1:%d", t->peer_port);
	snprintf(cluster, sizeof(cluster), "default=%s", peer);
	pid = fork();
	if (pid < 0) {
		fprintf(stderr, "fork for etcd: %s\n", strerror(errno));
		return -1;
	}
	if (pid == 0) {
		/* Only async-signal-safe calls until exec. etcd dies with us
		 * if the test crashes. */
		sigset_t none;
		int fd;

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		/* The mask survives exec (tests block SIGINT/SIGTERM):
		 * give etcd its signals back. */
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		fd = open(logf, O_WRONLY | O_CREAT | O_APPEND, 0600);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
			close(fd);
		}
		execl(t->bin, t->bin, "--name", "default",
		      "--data-dir", data,
		      "--listen-client-urls", client,
		      "--advertise-client-urls", client,
		      "--listen-peer-urls", peer,
		      "--initial-advertise-peer-urls", peer,
		      "--initial-cluster", cluster,
		      (char *)NULL);
		_exit(127);
	}
	t->pid = pid;
	return 0;
}

static int64_t test_etcd_elapsed_ms(const struct timespec *since)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (int64_t)(now.tv_sec - since->tv_sec) * 1000 +
	       (now.tv_nsec - since->tv_nsec) / 1000000;
}

/* Until a Range answers (a missing key is an answer); bounded. */
static int test_etcd_wait_ready(struct test_etcd *t)
{
	struct mp_etcd *e = NULL;
	struct mp_etcd_kv *kv = NULL;
	struct timespec start;
	int ret = MP_EUNAVAIL, status;

	clock_gettime(CLOCK_MONOTONIC, &start);
	if (mp_etcd_open(t->endpoint, "/ready/", 500, &e, NULL) != 0)
		return -1;
	while (test_etcd_elapsed_ms(&start) < TEST_ETCD_READY_WAIT_MS) {
		struct timespec pause = { 0, PROBE_INTERVAL_NS };

		ret = mp_etcd_get(e, "probe", &kv, NULL);
		if (ret == 0 || ret == MP_ENOENT)
			break;
		if (waitpid(t->pid, &status, WNOHANG) == t->pid) {
			fprintf(stderr, "etcd exited early; see %s/etcd.log\n",
				t->dir);
			t->pid = 0;
			break;
		}
		while (nanosleep(&pause, &pause) != 0 && errno == EINTR)
			;
	}
	mp_etcd_kvs_free(kv, 1);
	mp_etcd_close(&e);
	if (ret != 0 && ret != MP_ENOENT) {
		fprintf(stderr, "etcd not ready after %d ms (%s); see %s/etcd.log\n",
			TEST_ETCD_READY_WAIT_MS, mp_strerror(ret), t->dir);
		return -1;
	}
	return 0;
}

int test_etcd_start(struct test_etcd *t, const char *dir_template)
{
	snprintf(t->dir, sizeof(t->dir), "%s", dir_template);
	if (mkdtemp(t->dir) == NULL) {
		fprintf(stderr, "mkdtemp %s: %s\n", dir_template, strerror(errno));
		t->dir[0] = '\0';
		return -1;
	}
	t->client_port = test_etcd_free_port();
	do {
		t->peer_port = test_etcd_free_port();
	} while (t->peer_port == t->client_port && t->peer_port > 0);
	if (t->client_port <= 0 || t->peer_port <= 0) {
		fprintf(stderr, "no free port on 127.0.0.1\n");
		return -1;
	}
	snprintf(t->endpoint, sizeof(t->endpoint), "127.0.0.1:%d", t->client_port);
	return test_etcd_respawn(t);
}

int test_etcd_respawn(struct test_etcd *t)
{
	if (test_etcd_spawn(t) < 0)
		return -1;
	return test_etcd_wait_ready(t);
}

void test_etcd_kill(struct test_etcd *t)
{
	int status;

	if (t->pid <= 0)
		return;
	kill(t->pid, SIGKILL);
	/* Bounded: SIGKILL cannot be caught. */
	while (waitpid(t->pid, &status, 0) < 0 && errno == EINTR)
		;
	t->pid = 0;
}

static int test_etcd_rm_entry(const char *path, const struct stat *sb, int flag,
			      struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(path);
}

void test_etcd_stop(struct test_etcd *t, const char *keep_env)
{
	test_etcd_kill(t);
	if (t->dir[0] == '\0')
		return;
	if (keep_env != NULL && getenv(keep_env) != NULL)
		fprintf(stderr, "kept %s\n", t->dir);
	else
		(void)nftw(t->dir, test_etcd_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}
