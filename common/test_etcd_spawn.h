/*
 * test_etcd_spawn: a real etcd (Debian's etcd-server) for tests that need
 * one. Starts it in a fresh temporary folder with client and peer ports
 * picked free on 127.0.0.1, waits (bounded) until it answers, kills it by
 * PID and removes the folder at the end. Test support only: linked by the
 * etcd tests, never by merpati_common or a daemon.
 *
 * Never: talk to anything but 127.0.0.1, wait without a bound, kill a
 * process it did not start.
 */
#ifndef MERPATI_TEST_ETCD_SPAWN_H
#define MERPATI_TEST_ETCD_SPAWN_H

#include <stdbool.h>
#include <sys/types.h>

#define TEST_ETCD_READY_WAIT_MS 30000  /* etcd start, bounded */

struct test_etcd {
	char bin[256];
	char dir[64];         /* mkdtemp folder: data/ and etcd.log */
	int client_port, peer_port;
	pid_t pid;            /* 0: not running */
	char endpoint[64];    /* "127.0.0.1:<client port>" */
};

/* A port nobody listens on right now (bound to port 0, then closed), or -1. */
int test_etcd_free_port(void);

/* Fills t->bin: with search_path, the first etcd in $PATH, else (or when
 * none is there) /usr/bin/etcd. False when no executable was found. */
bool test_etcd_find(struct test_etcd *t, bool search_path);

/* t->bin already found: makes a folder from dir_template (ending in
 * XXXXXX), picks the two ports, starts etcd and waits until a Range
 * answers. 0, or -1 with the reason on stderr. */
int test_etcd_start(struct test_etcd *t, const char *dir_template);

/* Starts etcd again in the same folder on the same ports (after
 * test_etcd_kill) and waits until it answers. 0 or -1. */
int test_etcd_respawn(struct test_etcd *t);

/* kill -9 and reap; nothing when not running. */
void test_etcd_kill(struct test_etcd *t);

/* Kills etcd and removes its folder, unless the environment variable
 * keep_env is set: then the folder (data/, etcd.log) is kept and named. */
void test_etcd_stop(struct test_etcd *t, const char *keep_env);

#endif
