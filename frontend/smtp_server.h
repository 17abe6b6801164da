/*
 * smtp_server: the SMTP protocol of merpati-frontend (RFC 5321 with
 * PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES, STARTTLS, SMTPUTF8,
 * CHUNKING, DSN, AUTH) as a session state machine on fe_server.
 *
 * One protocol, two roles: "smtp" (port 25: mail for the cluster's own
 * domains only, never a relay) and "submission" (587/465: AUTH first; the
 * envelope sender must be the user or one of its aliases; mail for other
 * domains goes to the outbound queue).
 *
 * The 250 after DATA/BDAT is sent only after every local recipient's copy
 * is stored and replicated (AppendMany on each recipient shard's leader)
 * and every remote recipient is in the durable queue. If any of that
 * fails the whole message gets a temporary failure (4xx): the client
 * retries, and a retry may duplicate a copy that did get stored — never
 * lose one.
 *
 * Never: accept mail for a foreign domain without authentication; answer
 * 250 before storage said so; parse input outside smtp_parse.
 */
#ifndef SMTP_SERVER_H
#define SMTP_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include "fe_server.h"

struct fe_store;

struct smtp_conf {
	const char *hostname;          /* banner, Received:, EHLO reply */
	bool submission;               /* AUTH required; relay to the queue */
	bool allow_plaintext_auth;     /* PLAIN/LOGIN before TLS */
	uint64_t max_message_size;     /* SIZE; 552 above it */
	uint64_t max_recipients;       /* per message; 452 above */
	uint64_t max_errors;           /* per session; then 421 and close */
	uint64_t max_commands;         /* per session; then 421 and close */
	uint64_t idle_timeout_ms;      /* RFC 5321 §4.5.3.2.7: 5 min */
	const char *postmaster;        /* target of RCPT TO:<Postmaster>, or NULL */
	bool sent_copy;                /* submission: also store in the user's "Sent" */
	uint64_t queue_lifetime_ms;    /* expiry stamped on queue entries */
	struct fe_store *store;        /* borrowed */
};

/* The protocol table entry for fe_listener_conf.proto; proto_ctx is a
 * struct smtp_conf * that outlives the server. */
extern const struct fe_proto smtp_proto;

#endif
