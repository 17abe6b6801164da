/*
 * imap_server: the IMAP protocol of merpati-frontend (RFC 3501 IMAP4rev1
 * and RFC 9051 IMAP4rev2, with the extensions listed in CAPABILITY) as a
 * session state machine on fe_server, over the MailStore API.
 *
 * A command is read whole by frontend/imap/imap_parse (literals included),
 * then executed on a worker thread (struct fe_job): the handler makes the
 * blocking cluster calls and renders the whole answer into the session's
 * output buffer; done() hands the buffer to the connection on the loop and
 * reads the next command. While a command runs the loop never touches the
 * session (input is paused), so the handler owns the session without
 * locks. Long answers (FETCH of many bodies) are made in batches: the
 * handler stops after about IMAP_BATCH_BYTES, the loop sends that, and the
 * next batch runs when the output has drained.
 *
 * The selected mailbox is the session's map of message sequence numbers
 * to UIDs plus the highest modseq it has shown the client. Changes made
 * by other sessions (any frontend) come from ChangesSince and are shown as
 * untagged EXISTS, EXPUNGE/VANISHED and FETCH FLAGS where RFC 3501 §7.4.1
 * allows (EXPUNGE never during FETCH, STORE or SEARCH). IDLE learns of
 * changes from fe_watch (one MailStore Watch per user per frontend).
 *
 * Never: parse input outside imap_parse; touch a connection from a worker;
 * let a client name a mailbox outside its own account.
 */
#ifndef IMAP_SERVER_H
#define IMAP_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include "fe_server.h"

struct fe_store;
struct fe_watch;

struct imap_conf {
	const char *hostname;          /* greeting */
	bool allow_plaintext_auth;     /* LOGIN and PLAIN before TLS */
	uint64_t max_message_size;     /* APPENDLIMIT */
	uint64_t max_errors;           /* BAD answers per session; then BYE */
	uint64_t idle_timeout_ms;      /* RFC 3501 §5.4: at least 30 min */
	struct fe_store *store;        /* borrowed */
	struct fe_watch *watch;        /* borrowed; NULL: IDLE polls */
};

/* The protocol table entry; proto_ctx is a struct imap_conf *. */
extern const struct fe_proto imap_proto;

#endif
