/*
 * pop3_server: the POP3 protocol of merpati-frontend (RFC 1939 with RFC
 * 2449 CAPA and response codes, RFC 5034 AUTH, RFC 2595 STLS) as a session
 * state machine on fe_server, over the MailStore API. The maildrop is the
 * user's INBOX.
 *
 * Maildrop semantics in a cluster: after authentication the session takes
 * the user's maildrop lock (MaildropLock, a lease in the user's shard,
 * renewed every third of the lease) and lists INBOX once; that list is the
 * session's for its whole life. DELE only marks; QUIT in the TRANSACTION
 * state (the UPDATE state) renews the lock, expunges the marked messages
 * that are still there, and releases it. A second session for the same
 * user, on any frontend, gets -ERR [IN-USE] while the lock is held; a
 * session that ends without QUIT deletes nothing and gives the lock back
 * at once (or, if its frontend died, when the lease ends).
 *
 * Never: delete before QUIT; delete without holding the lock; send a
 * message other than byte-exact (CRLF line ends, dot-stuffed).
 */
#ifndef POP3_SERVER_H
#define POP3_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include "fe_server.h"

struct fe_store;
struct pop3_releaser;

struct pop3_conf {
	const char *hostname;          /* greeting */
	const char *owner_prefix;      /* this frontend, for lock owners */
	bool allow_plaintext_auth;     /* USER/PASS, PLAIN, LOGIN before TLS */
	uint64_t max_errors;           /* -ERR answers per session; then close */
	uint64_t idle_timeout_ms;      /* RFC 1939 §3: at least 10 minutes */
	uint64_t lock_lease_ms;        /* the maildrop lock's lease */
	struct fe_store *store;        /* borrowed */
	struct pop3_releaser *releaser; /* borrowed: gives locks back after a disconnect */
};

extern const struct fe_proto pop3_proto;

/* A thread that releases the locks of sessions that ended without QUIT
 * (a connection's free() cannot make a cluster call). Stop it after the
 * server: it finishes what is queued, within each call's timeout. */
int pop3_releaser_start(struct fe_store *store, struct pop3_releaser **r_r);
void pop3_releaser_stop(struct pop3_releaser **r);

#endif
