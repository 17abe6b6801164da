/*
 * imap_sess: what the parts of the IMAP server share (imap_server.c, the
 * session core; imap_cmd_mailbox.c; imap_cmd_message.c). Internal to the
 * frontend: nothing outside those files includes it.
 *
 * Threads: a command handler (imap_cmd_fn) runs on a worker with the
 * session to itself (the loop does not touch a busy session); it renders
 * its whole answer with imap_out*, ending with imap_tagged.
 */
#ifndef IMAP_SESS_H
#define IMAP_SESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "fe_server.h"
#include "imap_server.h"
#include "mp_buf.h"

struct imap_command;
struct imap_arg;
struct imap_parser;
struct fe_auth;
struct fe_watch_sub;
struct event;

/* A handler stops after about this much output; the loop sends it and the
 * handler's continuation makes the next batch. */
#define IMAP_BATCH_BYTES (1024 * 1024)
/* Own flag changes remembered per command, not shown again as updates. */
#define IMAP_OWN_MAX 4096

enum imap_state { IMAP_S_NOAUTH, IMAP_S_AUTH, IMAP_S_SELECTED };
enum imap_job_kind { IMAP_JOB_CMD, IMAP_JOB_AUTH, IMAP_JOB_IDLE_SYNC };

struct imap_sess;
typedef void (*imap_cmd_fn)(struct imap_sess *s, const struct imap_command *cmd);

struct imap_own {
	uint32_t uid;
	uint64_t modseq;
};

struct imap_selected {
	bool active;
	bool readonly;             /* EXAMINE */
	char *name;                /* UTF-8 */
	uint32_t uidvalidity;
	uint32_t id;               /* mailbox id (MAILBOXID) */
	uint64_t hms;              /* highest modseq shown to the client */
	uint32_t uidnext_seen;     /* UIDs below this were known at some point */
	uint32_t recent_from;      /* UIDs >= this are \Recent here (0: none) */
	uint32_t *uids;            /* seq n -> uids[n-1], ascending */
	size_t n, cap;
	struct imap_own *own;      /* changes this session made itself */
	size_t nown;
};

struct imap_sess {
	struct fe_conn *c;
	const struct imap_conf *conf;
	struct imap_parser *parser;
	enum imap_state state;
	bool logout;               /* close after the output */
	uint64_t errors;

	char *user;
	uint32_t shard;
	struct fe_watch_sub *wsub;
	uint64_t wgen_seen;

	bool rev2;                 /* ENABLE IMAP4rev2 */
	bool utf8;                 /* names and strings in UTF-8 */
	bool utf8_enabled;         /* ENABLE UTF8=ACCEPT */
	bool condstore;
	bool qresync;
	bool compressed;           /* COMPRESS=DEFLATE is on */

	struct imap_selected sel;
	uint32_t *saved;           /* SEARCHRES $, as UIDs */
	size_t nsaved;

	struct mp_buf out;         /* rendered by the worker, sent by the loop */
	bool out_failed;

	/* the command in flight */
	struct fe_job job;
	enum imap_job_kind job_kind;
	bool busy;
	const struct imap_command *cmd;
	imap_cmd_fn cmd_fn;
	imap_cmd_fn cont;          /* set by a handler to be called again */
	void (*cmd_done)(struct imap_sess *s); /* loop side, after the command */
	bool wait_drain;           /* waiting for the output to drain ... */
	bool drain_resume;         /* ... then read input (else: next batch) */
	struct event *drain_timer;
	bool uid_in_fetch;         /* untagged FETCH carry UID (UID commands) */
	/* continuation state of FETCH/SEARCH batches */
	size_t cur;                /* next index into curv */
	uint32_t *curv;            /* the UIDs the command works on */
	size_t ncurv;
	void *cmd_state;           /* a handler's own, freed by its last batch */
	void (*cmd_state_free)(void *);

	/* authentication */
	struct fe_auth *auth;
	char *auth_tag;
	bool in_auth;
	bool need_lookup;

	/* IDLE */
	bool idling;
	bool idle_syncing;
	char *idle_tag;
	struct event *idle_timer;
	uint64_t idle_unwatched_ms;
};

/* output (any thread that owns the session) */
void imap_out(struct imap_sess *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void imap_out_raw(struct imap_sess *s, const void *p, size_t n);
void imap_tagged(struct imap_sess *s, const char *tag, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void imap_out_string(struct imap_sess *s, const char *p, size_t n);
void imap_out_mailbox(struct imap_sess *s, const char *name);
void imap_out_flags(struct imap_sess *s, char *const *flags, size_t n, bool recent);
void imap_capabilities(struct imap_sess *s);
/* "* seq FETCH ([UID uid ]FLAGS (...)[ MODSEQ (m)])"; modseq 0: none. */
void imap_out_flag_fetch(struct imap_sess *s, uint32_t seq, uint32_t uid, bool with_uid,
			 char *const *flags, size_t n, uint64_t modseq);
void imap_sort_u32(uint32_t *v, size_t n);

/* store calls (worker) */
int imap_call(struct imap_sess *s, const char *method, const ProtobufCMessage *req,
	      const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp_r,
	      char **error_r);
void imap_no_for(struct imap_sess *s, const char *tag, int err, const char *error,
		 const char *what);
char *imap_mailbox_arg(struct imap_sess *s, const char *tag, const struct imap_arg *a);

/* selected mailbox */
void imap_sel_clear(struct imap_sess *s);
uint32_t imap_seq_of(const struct imap_sess *s, uint32_t uid);
int imap_sel_add(struct imap_sess *s, uint32_t uid);
void imap_sel_remove(struct imap_sess *s, uint32_t seq);
void imap_sel_note_own(struct imap_sess *s, uint32_t uid, uint64_t modseq);
bool imap_is_recent(const struct imap_sess *s, uint32_t uid);
uint32_t imap_recent_count(const struct imap_sess *s);
void imap_sync(struct imap_sess *s, bool allow_expunge);

/* commands (worker) */
void imap_cmd_select(struct imap_sess *s, const struct imap_command *cmd);
void imap_cmd_create(struct imap_sess *s, const struct imap_command *cmd);
void imap_cmd_delete(struct imap_sess *s, const struct imap_command *cmd);
void imap_cmd_rename(struct imap_sess *s, const struct imap_command *cmd);
void imap_cmd_subscribe(struct imap_sess *s, const struct imap_command *cmd);
void imap_cmd_list(struct imap_sess *s, const struct imap_command *cmd);
void imap_cmd_status(struct imap_sess *s, const struct imap_command *cmd);
void imap_cmd_append(struct imap_sess *s, const struct imap_command *cmd);
void imap_cmd_quota(struct imap_sess *s, const struct imap_command *cmd);
void imap_cmd_close(struct imap_sess *s, const struct imap_command *cmd);
void imap_cmd_expunge(struct imap_sess *s, const struct imap_command *cmd);
void imap_cmd_fetch(struct imap_sess *s, const struct imap_command *cmd);
void imap_cmd_store(struct imap_sess *s, const struct imap_command *cmd);
void imap_cmd_search(struct imap_sess *s, const struct imap_command *cmd);
void imap_cmd_copy(struct imap_sess *s, const struct imap_command *cmd);

/* SEARCH's matching, shared with SORT and THREAD: the messages of the
 * selected mailbox that prog matches, in UID order, with what sorting
 * needs (the header block when want_header). */
struct imap_search;
struct imap_hit {
	uint32_t uid;
	int64_t internal_date;
	uint64_t size;
	char *hdr;                 /* header block, NUL-terminated (want_header) */
	size_t hdr_len;
};
int imap_search_run(struct imap_sess *s, const struct imap_search *prog, bool want_header,
		    struct imap_hit **hits_r, size_t *n_r, uint64_t *max_modseq_r,
		    char **err_r);
void imap_hits_free(struct imap_hit *h, size_t n);
void imap_cmd_sort(struct imap_sess *s, const struct imap_command *cmd);
void imap_cmd_thread(struct imap_sess *s, const struct imap_command *cmd);

/* A sequence set (or UID set when uid) of the selected mailbox -> the
 * UIDs of existing messages, ascending (malloc'd; *n_r may be 0). '$' is
 * the saved search result. MP_EINVAL for a malformed set. */
int imap_resolve_set(struct imap_sess *s, const struct imap_arg *a, bool uid,
		     uint32_t **uids_r, size_t *n_r);

#endif
