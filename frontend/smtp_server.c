/*
 * smtp_server: SMTP sessions (see smtp_server.h).
 *
 * Input is handled in order, one command at a time, so pipelined commands
 * (RFC 2920) get their replies in order: a command that needs the cluster
 * (RCPT lookup, AUTH check, storing the message) pauses the session, runs
 * as a job on a worker, and the session resumes with the rest of the input
 * when the job's reply is written.
 *
 * Never: write a reply for a command before the replies of the commands
 * before it; act on a command that failed validation; touch the session
 * from a worker thread (jobs copy what they need and write only their own
 * result fields).
 */
#include "smtp_server.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/buffer.h>

#include "fe_auth.h"
#include "fe_store.h"
#include "mailstore.pb-c.h"
#include "mp_buf.h"
#include "mp_error.h"
#include "mp_log.h"
#include "mp_shard.h"
#include "mp_scram.h"
#include "smtp_parse.h"

#define SMTP_LINE_MAX 2048           /* commands with ESMTP parameters */
#define SMTP_AUTH_LINE_MAX 12288     /* an AUTH response line (base64) */
#define SMTP_HEADER_ROOM 2048        /* Return-Path: + Received: */
#define SMTP_ALIAS_DEPTH 4           /* alias → alias → ... */
#define SMTP_EXPAND_MAX 1000         /* final addresses of one RCPT */

enum smtp_state {
	SMTP_S_INIT,     /* before EHLO/HELO */
	SMTP_S_READY,    /* greeted; no transaction */
	SMTP_S_MAIL,     /* MAIL accepted, no recipient yet */
	SMTP_S_RCPT,     /* at least one recipient */
	SMTP_S_DATA,     /* receiving DATA */
	SMTP_S_BDAT,     /* receiving a BDAT chunk */
	SMTP_S_AUTH,     /* in a SASL exchange */
	SMTP_S_WAIT,     /* a job is in flight */
	SMTP_S_QUIT,     /* closing */
};

static const char *const state_names[] = {
	"init", "ready", "mail", "rcpt", "data", "bdat", "auth", "wait", "quit",
};

/* One RCPT: where its copies go. */
struct smtp_rcpt {
	char *addr;      /* owned: forward-path as given */
	char *orcpt;     /* owned or NULL: RFC 3461 ORCPT */
	uint32_t notify; /* RFC 3461 bits as in QueueRcpt.notify */
	char **local;    /* owned: normalised local users to store for */
	size_t nlocal;
	char **remote;   /* owned: addresses for the outbound queue */
	size_t nremote;
};

enum smtp_job_kind { JOB_RCPT, JOB_MAIL, JOB_STORE, JOB_AUTH };

struct smtp_sess;

struct smtp_job {
	struct fe_job job;
	struct smtp_sess *s;
	enum smtp_job_kind kind;
	/* inputs (owned by the session, read-only while the job runs) */
	const char *addr;
	bool submission;
	const char *auth_user;
	/* results (written by the worker only) */
	int code;                 /* SMTP reply code, 0 = ok */
	char text[256];           /* reply text with enhanced code */
	struct smtp_rcpt rcpt;    /* JOB_RCPT: the expansion */
};

struct smtp_sess {
	struct fe_conn *c;                 /* borrowed */
	const struct smtp_conf *conf;      /* borrowed */
	enum smtp_state state;
	enum smtp_state resume_state;      /* after WAIT */
	bool esmtp;
	bool shutdown;                     /* finish the transaction, then 421 */
	char helo[256];
	char *auth_user;                   /* owned; NULL until AUTH */
	uint64_t errors, commands;

	/* the transaction */
	bool has_mail;
	char *mail_from;                   /* owned; "" for <> */
	bool smtputf8, body_8bit, ret_full;
	char envid[128];
	uint64_t size_decl;
	struct smtp_rcpt *rcpts;           /* owned */
	size_t nrcpt, rcpt_cap;
	struct mp_buf body;                /* Return-Path + Received + message */
	struct smtp_data dec;
	bool chunking;                     /* BDAT used in this transaction */
	uint64_t bdat_left;
	bool bdat_last, bdat_bad;          /* bad: reply 503 after the chunk */
	int bdat_err;                      /* 552 after the last chunk */
	char qid[20];
	size_t hdr_len;                    /* trace headers at the body's start */
	size_t rp_len;                     /* the Return-Path: line among them */
	enum smtp_state bdat_prev;         /* state to return to after a bad chunk */

	struct fe_auth *auth;              /* owned during AUTH */
	struct smtp_line_reader lines;
	struct smtp_job job;               /* one in flight at most */
};

/* ------------------------------------------------------------ replies */

static void sess_enter(struct smtp_sess *s, enum smtp_state st)
{
	if (s->state != st)
		mp_log_debug("smtp_state", "conn=%s from=%s to=%s", fe_conn_id(s->c),
			     state_names[s->state], state_names[st]);
	s->state = st;
}

/* Queue one reply line (CRLF added). A client that does not read its
 * replies fills the output limit and is dropped. */
static void reply(struct smtp_sess *s, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void reply(struct smtp_sess *s, const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line) - 2, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 3)
		n = (int)sizeof(line) - 3;
	line[n++] = '\r';
	line[n++] = '\n';
	if (fe_conn_write(s->c, line, (size_t)n) < 0) {
		mp_log_warn("smtp_output_full", "conn=%s", fe_conn_id(s->c));
		fe_conn_close(s->c);
	}
}

static void close_with(struct smtp_sess *s, const char *text)
{
	reply(s, "%s", text);
	sess_enter(s, SMTP_S_QUIT);
	fe_conn_close_flush(s->c);
}

/* A 5xx for a client mistake; too many end the session (STYLE.md limits). */
static void client_error(struct smtp_sess *s, const char *text)
{
	reply(s, "%s", text);
	if (++s->errors >= s->conf->max_errors)
		close_with(s, "421 4.7.0 Too many errors, closing connection");
}

static void client_error_parse(struct smtp_sess *s, const struct smtp_error *e)
{
	char text[300];
	snprintf(text, sizeof(text), "%d %s %s", e->code, e->enhanced, e->text);
	client_error(s, text);
}

/* RFC 3461 NOTIFY from the parser's bits to QueueRcpt.notify's. */
static uint32_t notify_bits(unsigned n)
{
	uint32_t r = 0;
	if (n & SMTP_NOTIFY_SUCCESS)
		r |= 1;
	if (n & SMTP_NOTIFY_FAILURE)
		r |= 2;
	if (n & SMTP_NOTIFY_DELAY)
		r |= 4;
	if (n & SMTP_NOTIFY_NEVER)
		r |= 8;
	return r;
}

/* --------------------------------------------------------- transaction */

static void rcpt_clear(struct smtp_rcpt *r)
{
	free(r->addr);
	free(r->orcpt);
	for (size_t i = 0; i < r->nlocal; i++)
		free(r->local[i]);
	for (size_t i = 0; i < r->nremote; i++)
		free(r->remote[i]);
	free(r->local);
	free(r->remote);
	memset(r, 0, sizeof(*r));
}

static void txn_reset(struct smtp_sess *s)
{
	free(s->mail_from);
	s->mail_from = NULL;
	s->has_mail = false;
	s->smtputf8 = s->body_8bit = s->ret_full = false;
	s->envid[0] = '\0';
	s->size_decl = 0;
	for (size_t i = 0; i < s->nrcpt; i++)
		rcpt_clear(&s->rcpts[i]);
	s->nrcpt = 0;
	mp_buf_free(&s->body);
	s->chunking = false;
	s->bdat_left = 0;
	s->bdat_last = s->bdat_bad = false;
	s->bdat_err = 0;
	s->qid[0] = '\0';
}

static void new_qid(struct smtp_sess *s)
{
	uint8_t r[8];
	if (mp_random_bytes(r, sizeof(r)) != 0) {
		/* Only a log correlator: a clock value does. */
		uint64_t t = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)s;
		memcpy(r, &t, sizeof(r));
	}
	for (size_t i = 0; i < sizeof(r); i++)
		snprintf(s->qid + 2 * i, 3, "%02X", r[i]);
}

/* Protocol name for Received: (RFC 3848, RFC 6531 §3.7.3). */
static const char *with_proto(struct smtp_sess *s)
{
	bool tls = fe_conn_tls_active(s->c), auth = s->auth_user != NULL;
	if (s->smtputf8)
		return tls ? (auth ? "UTF8SMTPSA" : "UTF8SMTPS") : (auth ? "UTF8SMTPA" : "UTF8SMTP");
	if (!s->esmtp)
		return "SMTP";
	return tls ? (auth ? "ESMTPSA" : "ESMTPS") : (auth ? "ESMTPA" : "ESMTP");
}

/* Start the stored body: trace headers first (RFC 5321 §4.4). */
static int body_begin(struct smtp_sess *s)
{
	char date[64];
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
	mp_buf_init(&s->body, (size_t)s->conf->max_message_size + SMTP_HEADER_ROOM);
	int ret = mp_buf_printf(&s->body, "Return-Path: <%s>\r\n", s->mail_from);
	s->rp_len = s->body.len;
	if (ret == 0)
		ret = mp_buf_printf(&s->body, "Received: from %s ([%s])\r\n\tby %s (Merpati) with %s id %s",
				    s->helo, fe_conn_peer_ip(s->c), s->conf->hostname,
				    with_proto(s), s->qid);
	const char *tls = fe_conn_tls_info(s->c);
	if (ret == 0 && tls[0] != '\0')
		ret = mp_buf_printf(&s->body, "\r\n\t(%s)", tls);
	if (ret == 0 && s->nrcpt == 1)
		ret = mp_buf_printf(&s->body, "\r\n\tfor <%s>", s->rcpts[0].addr);
	if (ret == 0)
		ret = mp_buf_printf(&s->body, "; %s\r\n", date);
	s->hdr_len = s->body.len;
	return ret;
}

/* ----------------------------------------------------------------- jobs */

static void job_done(struct fe_job *j);
static void job_run(struct fe_job *j);

static void submit(struct smtp_sess *s, enum smtp_job_kind kind)
{
	struct smtp_job *j = &s->job;
	j->s = s;
	j->kind = kind;
	j->code = 0;
	j->text[0] = '\0';
	j->submission = s->conf->submission;
	j->auth_user = s->auth_user;
	j->job.run = job_run;
	j->job.done = job_done;
	s->resume_state = s->state;
	sess_enter(s, SMTP_S_WAIT);
	fe_conn_pause(s->c);
	fe_conn_submit(s->c, &j->job);
}

static void set_result(struct smtp_job *j, int code, const char *text)
{
	j->code = code;
	snprintf(j->text, sizeof(j->text), "%d %s", code, text);
}

static int list_add(char ***v, size_t *n, const char *a)
{
	for (size_t i = 0; i < *n; i++)
		if (strcmp((*v)[i], a) == 0)
			return 0;  /* one copy per address */
	if (*n >= SMTP_EXPAND_MAX)
		return MP_ETOOBIG;
	char **nv = realloc(*v, (*n + 1) * sizeof(char *));
	if (nv == NULL)
		return MP_ENOMEM;
	*v = nv;
	if ((nv[*n] = strdup(a)) == NULL)
		return MP_ENOMEM;
	(*n)++;
	return 0;
}

/* The domain part of a normalised address. */
static const char *domain_of(const char *addr)
{
	const char *at = strrchr(addr, '@');
	return at != NULL ? at + 1 : "";
}

/* Expand addr into r->local / r->remote. Returns 0, or an SMTP code with
 * j->text set. top: addr is what the client gave (refusals differ). */
static int expand(struct smtp_job *j, struct smtp_rcpt *r, const char *addr,
		  unsigned depth, bool top)
{
	struct fe_store *st = j->s->conf->store;
	char norm[512];
	const char *err = NULL;
	char *error = NULL;
	if (mp_user_normalize(addr, strlen(addr), norm, sizeof(norm), &err) < 0) {
		if (top) {
			set_result(j, 501, "5.1.3 Bad recipient address syntax");
			return 501;
		}
		return 0;  /* a bad stored target: skip it, as a missing one */
	}
	bool local = false;
	int ret = fe_store_domain_is_local(st, domain_of(norm), &local, &error);
	if (ret < 0) {
		mp_log_warn("smtp_lookup_failed", "what=domain error=\"%s\"",
			    error != NULL ? error : mp_strerror(ret));
		free(error);
		set_result(j, 451, "4.3.0 Temporary lookup failure, try again later");
		return 451;
	}
	if (!local) {
		if (top && !j->submission) {
			set_result(j, 554, "5.7.1 Relay access denied");
			return 554;
		}
		/* submission, or forwarding by an alias: the outbound queue */
		ret = list_add(&r->remote, &r->nremote, norm);
		goto added;
	}
	struct fe_rcpt_info info;
	ret = fe_store_resolve(st, norm, &info, &error);
	if (ret < 0) {
		mp_log_warn("smtp_lookup_failed", "what=recipient error=\"%s\"",
			    error != NULL ? error : mp_strerror(ret));
		free(error);
		set_result(j, 451, "4.3.0 Temporary lookup failure, try again later");
		return 451;
	}
	switch (info.kind) {
	case FE_RCPT_ACCOUNT:
		ret = list_add(&r->local, &r->nlocal, norm);
		break;
	case FE_RCPT_DISABLED:
		if (top) {
			fe_rcpt_info_clear(&info);
			set_result(j, 550, "5.2.1 Mailbox disabled");
			return 550;
		}
		break;
	case FE_RCPT_ALIAS:
		if (depth >= SMTP_ALIAS_DEPTH) {
			mp_log_warn("smtp_alias_too_deep", "alias=%s", norm);
			break;
		}
		for (size_t i = 0; i < info.ntargets && ret == 0; i++) {
			int r2 = expand(j, r, info.targets[i], depth + 1, false);
			if (r2 != 0) {
				fe_rcpt_info_clear(&info);
				return r2;
			}
		}
		break;
	case FE_RCPT_NONE:
		if (top) {
			fe_rcpt_info_clear(&info);
			set_result(j, 550, "5.1.1 User unknown");
			return 550;
		}
		break;
	}
	fe_rcpt_info_clear(&info);
added:
	if (ret == MP_ETOOBIG) {
		set_result(j, 452, "4.5.3 Too many recipients after alias expansion");
		return 452;
	}
	if (ret < 0) {
		set_result(j, 451, "4.3.0 Temporary failure, try again later");
		return 451;
	}
	return 0;
}

static void run_rcpt(struct smtp_job *j)
{
	if (expand(j, &j->rcpt, j->addr, 0, true) != 0)
		return;
	if (j->rcpt.nlocal == 0 && j->rcpt.nremote == 0) {
		/* an alias whose every target is gone */
		set_result(j, 550, "5.1.1 User unknown");
		return;
	}
	set_result(j, 250, "2.1.5 Ok");
	j->code = 0;
}

/* Submission: MAIL FROM must be the user or an alias that names it. */
static void run_mail(struct smtp_job *j)
{
	char norm[512];
	const char *err = NULL;
	char *error = NULL;
	if (mp_user_normalize(j->addr, strlen(j->addr), norm, sizeof(norm), &err) < 0) {
		set_result(j, 553, "5.7.1 Sender address rejected: not owned by user");
		return;
	}
	struct fe_rcpt_info info;
	int ret = fe_store_resolve(j->s->conf->store, norm, &info, &error);
	if (ret < 0) {
		mp_log_warn("smtp_lookup_failed", "what=sender error=\"%s\"",
			    error != NULL ? error : mp_strerror(ret));
		free(error);
		set_result(j, 451, "4.3.0 Temporary lookup failure, try again later");
		return;
	}
	bool ok = false;
	if (info.kind == FE_RCPT_ALIAS)
		for (size_t i = 0; i < info.ntargets; i++)
			if (strcmp(info.targets[i], j->auth_user) == 0)
				ok = true;
	fe_rcpt_info_clear(&info);
	if (!ok)
		set_result(j, 553, "5.7.1 Sender address rejected: not owned by user");
}

/* Store the message: every local user's copy (one AppendMany per shard),
 * then the remote recipients as one queue entry. */
static int store_local(struct smtp_job *j, char **users, size_t n,
		       const struct fe_msg_meta *meta)
{
	struct smtp_sess *s = j->s;
	struct fe_store *st = s->conf->store;
	uint32_t *shards = calloc(n, sizeof(*shards));
	bool *done = calloc(n, sizeof(*done));
	const char **group = calloc(n, sizeof(*group));
	int *results = calloc(n, sizeof(*results));
	int ret = 0;
	if (shards == NULL || done == NULL || group == NULL || results == NULL) {
		ret = MP_ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n && ret == 0; i++)
		ret = fe_store_shard_of(st, users[i], &shards[i]);
	for (size_t i = 0; i < n && ret == 0; i++) {
		if (done[i])
			continue;
		size_t g = 0;
		for (size_t k = i; k < n; k++) {
			if (!done[k] && shards[k] == shards[i]) {
				group[g++] = users[k];
				done[k] = true;
			}
		}
		char *error = NULL;
		ret = fe_store_append_many(st, shards[i], group, g, NULL,
					   s->body.data, s->body.len, meta, results, &error);
		if (ret < 0)
			mp_log_warn("smtp_store_failed", "conn=%s id=%s shard=%u error=\"%s\"",
				    fe_conn_id(s->c), s->qid, shards[i],
				    error != NULL ? error : mp_strerror(ret));
		free(error);
		for (size_t k = 0; k < g && ret == 0; k++) {
			if (results[k] != 0) {
				mp_log_warn("smtp_store_refused", "conn=%s id=%s user=%s error=%s",
					    fe_conn_id(s->c), s->qid, group[k],
					    mp_strerror(results[k]));
				ret = results[k];
			}
		}
	}
out:
	free(shards);
	free(done);
	free(group);
	free(results);
	return ret;
}

static int store_remote(struct smtp_job *j, size_t nremote)
{
	struct smtp_sess *s = j->s;
	struct fe_store *st = s->conf->store;
	Merpati__V1__QueueRcpt *qr = calloc(nremote, sizeof(*qr));
	Merpati__V1__QueueRcpt **qp = calloc(nremote, sizeof(*qp));
	int ret = 0;
	if (qr == NULL || qp == NULL) {
		ret = MP_ENOMEM;
		goto out;
	}
	size_t k = 0;
	for (size_t i = 0; i < s->nrcpt; i++) {
		for (size_t r = 0; r < s->rcpts[i].nremote && k < nremote; r++, k++) {
			Merpati__V1__QueueRcpt init = MERPATI__V1__QUEUE_RCPT__INIT;
			qr[k] = init;
			qr[k].address = s->rcpts[i].remote[r];
			qr[k].notify = s->rcpts[i].notify;
			qr[k].orcpt = s->rcpts[i].orcpt != NULL ? s->rcpts[i].orcpt : (char *)"";
			qp[k] = &qr[k];
		}
	}
	/* The queue entry lives in the sender's shard: the submitter's, or
	 * for forwarding the first recipient's. */
	const char *owner = s->auth_user != NULL ? s->auth_user : s->rcpts[0].addr;
	char norm[512];
	const char *err = NULL;
	uint32_t shard = 0;
	if (mp_user_normalize(owner, strlen(owner), norm, sizeof(norm), &err) < 0 ||
	    fe_store_shard_of(st, norm, &shard) < 0) {
		ret = MP_EINVAL;
		goto out;
	}
	Merpati__V1__QueueEntry e = MERPATI__V1__QUEUE_ENTRY__INIT;
	e.sender = s->mail_from;
	e.n_rcpts = k;
	e.rcpts = qp;
	e.envid = s->envid;
	e.ret_full = s->ret_full;
	e.from_user = s->auth_user != NULL ? s->auth_user : (char *)"";
	if (s->conf->queue_lifetime_ms != 0) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		e.expires_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000 +
			       s->conf->queue_lifetime_ms;
	}
	char *error = NULL;
	char *id = NULL;
	/* RFC 5321 §4.4: Return-Path is added at final delivery; a relayed
	 * message must not carry ours. Received: stays. */
	ret = fe_store_queue_add(st, shard, &e, s->body.data + s->rp_len,
				 s->body.len - s->rp_len, &id, &error);
	if (ret < 0)
		mp_log_warn("smtp_queue_failed", "conn=%s id=%s error=\"%s\"", fe_conn_id(s->c),
			    s->qid, error != NULL ? error : mp_strerror(ret));
	else
		mp_log_info("smtp_queued", "conn=%s id=%s queue_id=%s rcpts=%zu", fe_conn_id(s->c),
			    s->qid, id, k);
	free(error);
	free(id);
out:
	free(qr);
	free(qp);
	return ret;
}

static void run_store(struct smtp_job *j)
{
	struct smtp_sess *s = j->s;
	char **users = NULL;
	size_t n = 0, nremote = 0;
	int ret = 0;
	for (size_t i = 0; i < s->nrcpt && ret == 0; i++) {
		for (size_t k = 0; k < s->rcpts[i].nlocal && ret == 0; k++)
			ret = list_add(&users, &n, s->rcpts[i].local[k]);
		nremote += s->rcpts[i].nremote;
	}
	/* Parsed once for every local copy (and the Sent copy). */
	struct fe_msg_meta meta = { 0 };
	if (ret == 0 && (n > 0 || s->conf->sent_copy))
		ret = fe_msg_meta_make(s->body.data, s->body.len, &meta);
	if (ret == 0 && n > 0)
		ret = store_local(j, users, n, &meta);
	if (ret == 0 && nremote > 0)
		ret = store_remote(j, nremote);
	for (size_t i = 0; i < n; i++)
		free(users[i]);
	free(users);
	if (ret == 0 && s->conf->sent_copy && s->auth_user != NULL) {
		/* A missing Sent copy loses nothing the sender asked us to
		 * deliver: log it, do not fail the message. */
		uint32_t shard = 0;
		int res = 0;
		char *error = NULL;
		const char *u = s->auth_user;
		if (fe_store_shard_of(s->conf->store, u, &shard) < 0 ||
		    fe_store_append_many(s->conf->store, shard, &u, 1, "Sent", s->body.data,
					 s->body.len, &meta, &res, &error) < 0 || res != 0)
			mp_log_warn("smtp_sent_copy_failed", "conn=%s id=%s error=\"%s\"",
				    fe_conn_id(s->c), s->qid, error != NULL ? error : "refused");
		free(error);
	}
	fe_msg_meta_clear(&meta);
	if (ret == 0) {
		snprintf(j->text, sizeof(j->text), "250 2.0.0 Ok: queued as %s", s->qid);
		j->code = 0;
	} else if (ret == MP_ENOSPC) {
		set_result(j, 452, "4.2.2 Mailbox full, try again later");
	} else {
		set_result(j, 451, "4.3.0 Temporary storage failure, try again later");
	}
}

static void run_auth(struct smtp_job *j)
{
	fe_auth_job_run(j->s->auth, j->s->conf->store);
}

static void job_run(struct fe_job *fj)
{
	struct smtp_job *j = (struct smtp_job *)fj;
	switch (j->kind) {
	case JOB_RCPT:
		run_rcpt(j);
		break;
	case JOB_MAIL:
		run_mail(j);
		break;
	case JOB_STORE:
		run_store(j);
		break;
	case JOB_AUTH:
		run_auth(j);
		break;
	}
}

static void sess_process(struct smtp_sess *s);
static void auth_continue(struct smtp_sess *s);

static void job_done(struct fe_job *fj)
{
	struct smtp_job *j = (struct smtp_job *)fj;
	struct smtp_sess *s = j->s;
	if (fe_conn_closed(s->c)) {
		if (j->kind == JOB_RCPT)
			rcpt_clear(&j->rcpt);
		return;
	}
	sess_enter(s, s->resume_state);
	switch (j->kind) {
	case JOB_RCPT:
		if (j->code == 0) {
			s->rcpts[s->nrcpt++] = j->rcpt;  /* moves the expansion */
			memset(&j->rcpt, 0, sizeof(j->rcpt));
			sess_enter(s, SMTP_S_RCPT);
			reply(s, "250 2.1.5 Ok");
		} else {
			rcpt_clear(&j->rcpt);
			if (j->code >= 500)
				client_error(s, j->text);
			else
				reply(s, "%s", j->text);
		}
		break;
	case JOB_MAIL:
		if (j->code == 0) {
			s->has_mail = true;
			sess_enter(s, SMTP_S_MAIL);
			reply(s, "250 2.1.0 Ok");
		} else {
			free(s->mail_from);
			s->mail_from = NULL;
			reply(s, "%s", j->text);
		}
		break;
	case JOB_STORE:
		mp_log_info("smtp_message", "conn=%s id=%s from=<%s> rcpts=%zu size=%zu result=%d",
			    fe_conn_id(s->c), s->qid, s->mail_from, s->nrcpt, s->body.len,
			    j->code == 0 ? 250 : j->code);
		reply(s, "%s", j->text);
		txn_reset(s);
		sess_enter(s, SMTP_S_READY);
		break;
	case JOB_AUTH:
		auth_continue(s);
		break;
	}
	if (fe_conn_closed(s->c))
		return;
	if (s->shutdown && s->state != SMTP_S_AUTH && s->state != SMTP_S_WAIT) {
		close_with(s, "421 4.3.2 Service shutting down, closing connection");
		return;
	}
	if (s->state != SMTP_S_WAIT)
		fe_conn_resume(s->c);
}

/* ------------------------------------------------------------- commands */

static bool need_ehlo(struct smtp_sess *s)
{
	if (s->state == SMTP_S_INIT) {
		client_error(s, "503 5.5.1 Error: send HELO/EHLO first");
		return true;
	}
	return false;
}

static void cmd_helo(struct smtp_sess *s, const struct smtp_command *cmd, bool ehlo)
{
	snprintf(s->helo, sizeof(s->helo), "%.*s", (int)cmd->u.helo.domain.len,
		 cmd->u.helo.domain.ptr);
	txn_reset(s);
	s->esmtp = ehlo;
	sess_enter(s, SMTP_S_READY);
	if (!ehlo) {
		reply(s, "250 %s", s->conf->hostname);
		return;
	}
	reply(s, "250-%s Hello %s [%s]", s->conf->hostname, s->helo, fe_conn_peer_ip(s->c));
	reply(s, "250-PIPELINING");
	reply(s, "250-SIZE %" PRIu64, s->conf->max_message_size);
	reply(s, "250-8BITMIME");
	reply(s, "250-ENHANCEDSTATUSCODES");
	if (fe_conn_tls_offered(s->c) && !fe_conn_tls_active(s->c))
		reply(s, "250-STARTTLS");
	if (s->conf->submission && s->auth_user == NULL) {
		bool plain = fe_conn_tls_active(s->c) || s->conf->allow_plaintext_auth;
		reply(s, "250-AUTH %s", plain ? "PLAIN LOGIN SCRAM-SHA-256" : "SCRAM-SHA-256");
	}
	reply(s, "250-SMTPUTF8");
	reply(s, "250-CHUNKING");
	reply(s, "250 DSN");
}

static void cmd_mail(struct smtp_sess *s, const struct smtp_command *cmd)
{
	if (need_ehlo(s))
		return;
	if (s->has_mail) {
		client_error(s, "503 5.5.1 Error: nested MAIL command");
		return;
	}
	if (s->conf->submission && s->auth_user == NULL) {
		client_error(s, "530 5.7.0 Authentication required");
		return;
	}
	const struct smtp_mail_arg *m = &cmd->u.mail;
	struct smtp_error perr;
	bool utf8 = (m->params & SMTP_PARAM_SMTPUTF8) != 0;
	if (m->size > s->conf->max_message_size) {
		reply(s, "552 5.3.4 Message size exceeds fixed limit");
		return;
	}
	if (smtp_check_utf8(&m->from, utf8, &perr) < 0) {
		client_error_parse(s, &perr);
		return;
	}
	if (s->conf->submission && (m->from.flags & SMTP_ADDR_NULL)) {
		client_error(s, "553 5.7.1 Null sender not allowed for submission");
		return;
	}
	if (fe_server_stopping(fe_conn_server(s->c))) {
		reply(s, "421 4.3.2 Service shutting down");
		return;
	}
	s->mail_from = strdup(m->from.addr);
	if (s->mail_from == NULL) {
		reply(s, "451 4.3.0 Out of memory");
		return;
	}
	s->smtputf8 = utf8;
	s->body_8bit = m->body == SMTP_BODY_8BITMIME;
	s->ret_full = m->ret == SMTP_RET_FULL;
	s->size_decl = m->size;
	snprintf(s->envid, sizeof(s->envid), "%s", m->envid);
	new_qid(s);
	if (s->conf->submission) {
		char norm[512];
		const char *err = NULL;
		if (mp_user_normalize(s->mail_from, strlen(s->mail_from), norm, sizeof(norm),
				      &err) == 0 && strcmp(norm, s->auth_user) == 0) {
			s->has_mail = true;
			sess_enter(s, SMTP_S_MAIL);
			reply(s, "250 2.1.0 Ok");
			return;
		}
		s->job.addr = s->mail_from;
		submit(s, JOB_MAIL);
		return;
	}
	s->has_mail = true;
	sess_enter(s, SMTP_S_MAIL);
	reply(s, "250 2.1.0 Ok");
}

static void cmd_rcpt(struct smtp_sess *s, const struct smtp_command *cmd)
{
	if (need_ehlo(s))
		return;
	if (!s->has_mail) {
		client_error(s, "503 5.5.1 Error: need MAIL command");
		return;
	}
	const struct smtp_rcpt_arg *r = &cmd->u.rcpt;
	struct smtp_error perr;
	if (s->nrcpt >= s->conf->max_recipients) {
		reply(s, "452 4.5.3 Too many recipients");
		return;
	}
	if (smtp_check_utf8(&r->to, s->smtputf8, &perr) < 0) {
		client_error_parse(s, &perr);
		return;
	}
	if (s->nrcpt == s->rcpt_cap) {
		size_t nc = s->rcpt_cap == 0 ? 8 : s->rcpt_cap * 2;
		struct smtp_rcpt *nr = realloc(s->rcpts, nc * sizeof(*nr));
		if (nr == NULL) {
			reply(s, "451 4.3.0 Out of memory");
			return;
		}
		s->rcpts = nr;
		s->rcpt_cap = nc;
	}
	struct smtp_rcpt *slot = &s->rcpts[s->nrcpt];
	memset(slot, 0, sizeof(*slot));
	const char *addr = r->to.addr;
	size_t alen = strlen(addr);
	if (r->to.flags & SMTP_ADDR_POSTMASTER) {
		if (s->conf->postmaster == NULL || s->conf->postmaster[0] == '\0') {
			client_error(s, "550 5.1.1 User unknown");
			return;
		}
		addr = s->conf->postmaster;
		alen = strlen(addr);
	}
	/* The job fills the expansion; address and DSN fields are set here. */
	char *a = strndup(addr, alen);
	char *orcpt = r->orcpt[0] != '\0' ? strdup(r->orcpt) : NULL;
	if (a == NULL || (r->orcpt[0] != '\0' && orcpt == NULL)) {
		free(a);
		free(orcpt);
		reply(s, "451 4.3.0 Out of memory");
		return;
	}
	memset(&s->job.rcpt, 0, sizeof(s->job.rcpt));
	s->job.rcpt.addr = a;
	s->job.rcpt.orcpt = orcpt;
	s->job.rcpt.notify = notify_bits(r->notify);
	s->job.addr = a;
	submit(s, JOB_RCPT);
}

static void cmd_data(struct smtp_sess *s)
{
	if (need_ehlo(s))
		return;
	if (!s->has_mail) {
		client_error(s, "503 5.5.1 Error: need MAIL command");
		return;
	}
	if (s->nrcpt == 0) {
		client_error(s, "554 5.5.1 Error: no valid recipients");
		return;
	}
	if (s->chunking) {
		client_error(s, "503 5.5.1 Error: DATA after BDAT");
		return;
	}
	if (body_begin(s) < 0) {
		reply(s, "451 4.3.0 Out of memory");
		return;
	}
	smtp_data_init(&s->dec, s->conf->max_message_size);
	sess_enter(s, SMTP_S_DATA);
	reply(s, "354 End data with <CR><LF>.<CR><LF>");
}

/* The end of DATA: every error was found while reading to the end marker,
 * so the session is in sync whatever the reply. */
static void data_end(struct smtp_sess *s)
{
	struct smtp_error e;
	int err = smtp_data_result(&s->dec, &e);
	sess_enter(s, SMTP_S_RCPT);
	if (err != 0) {
		mp_log_info("smtp_data_refused", "conn=%s id=%s reason=\"%s\"",
			    fe_conn_id(s->c), s->qid, e.text);
		reply(s, "%d %s %s", e.code, e.enhanced, e.text);
		txn_reset(s);
		sess_enter(s, SMTP_S_READY);
		return;
	}
	submit(s, JOB_STORE);
}

static void cmd_bdat(struct smtp_sess *s, const struct smtp_command *cmd)
{
	s->bdat_left = cmd->u.bdat.size;
	s->bdat_last = cmd->u.bdat.last;
	s->bdat_bad = false;
	s->bdat_prev = s->state;
	/* RFC 3030 §2: the chunk is read whatever the reply will be. */
	if (s->state == SMTP_S_INIT || !s->has_mail || s->nrcpt == 0) {
		s->bdat_bad = true;
	} else if (!s->chunking) {
		s->chunking = true;
		if (body_begin(s) < 0)
			s->bdat_err = 451;
	}
	sess_enter(s, SMTP_S_BDAT);
}

static void bdat_end(struct smtp_sess *s)
{
	if (s->bdat_bad) {
		sess_enter(s, s->bdat_prev);
		if (s->bdat_prev == SMTP_S_INIT) {
			client_error(s, "503 5.5.1 Error: send HELO/EHLO first");
			return;
		}
		client_error(s, s->has_mail ? "554 5.5.1 Error: no valid recipients"
					    : "503 5.5.1 Error: need MAIL command");
		return;
	}
	sess_enter(s, SMTP_S_RCPT);
	if (s->bdat_err != 0) {
		/* Over the size limit: refuse now, the transaction is over. */
		reply(s, s->bdat_err == 552 ? "552 5.3.4 Message size exceeds fixed limit"
					    : "451 4.3.0 Out of memory");
		txn_reset(s);
		sess_enter(s, SMTP_S_READY);
		return;
	}
	if (!s->bdat_last) {
		reply(s, "250 2.0.0 Ok: %zu octets received", s->body.len);
		return;
	}
	submit(s, JOB_STORE);
}

/* Consume BDAT chunk bytes from the input. */
static void bdat_feed(struct smtp_sess *s, struct evbuffer *in)
{
	while (s->bdat_left > 0) {
		struct evbuffer_iovec v;
		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
			return;
		size_t n = v.iov_len < s->bdat_left ? v.iov_len : (size_t)s->bdat_left;
		if (!s->bdat_bad && s->bdat_err == 0) {
			if (s->body.len - s->hdr_len + n > s->conf->max_message_size ||
			    mp_buf_append(&s->body, v.iov_base, n) < 0)
				s->bdat_err = 552;
		}
		evbuffer_drain(in, n);
		s->bdat_left -= n;
	}
	bdat_end(s);
}

static void cmd_starttls(struct smtp_sess *s)
{
	if (fe_conn_tls_active(s->c)) {
		client_error(s, "503 5.5.1 Error: TLS already active");
		return;
	}
	if (!fe_conn_tls_offered(s->c)) {
		client_error(s, "502 5.5.1 Error: STARTTLS not available");
		return;
	}
	if (s->has_mail) {
		client_error(s, "503 5.5.1 Error: STARTTLS inside a transaction");
		return;
	}
	reply(s, "220 2.0.0 Ready to start TLS");
	if (fe_conn_starttls(s->c) < 0) {
		mp_log_warn("smtp_starttls_failed", "conn=%s", fe_conn_id(s->c));
		fe_conn_close(s->c);
		return;
	}
	/* RFC 3207 §4.2: forget everything learnt before TLS. */
	txn_reset(s);
	s->helo[0] = '\0';
	s->esmtp = false;
	free(s->auth_user);
	s->auth_user = NULL;
	sess_enter(s, SMTP_S_INIT);
}

/* ------------------------------------------------------------------ AUTH */

static void auth_finish(struct smtp_sess *s, bool ok)
{
	if (ok) {
		s->auth_user = strdup(fe_auth_user(s->auth));
		if (s->auth_user == NULL) {
			reply(s, "454 4.7.0 Temporary authentication failure");
			ok = false;
		} else {
			mp_log_info("smtp_auth_ok", "conn=%s ip=%s user=%s", fe_conn_id(s->c),
				    fe_conn_peer_ip(s->c), s->auth_user);
			reply(s, "235 2.7.0 Authentication successful");
		}
	}
	fe_auth_free(&s->auth);
	sess_enter(s, SMTP_S_READY);
}

/* Act on the SASL module's last answer. */
static void auth_continue(struct smtp_sess *s)
{
	const char *out = NULL;
	char ipq[64];
	enum fe_auth_status st = fe_auth_status(s->auth, &out);
	switch (st) {
	case FE_AUTH_CHALLENGE:
		sess_enter(s, SMTP_S_AUTH);
		reply(s, "334 %s", out);
		return;
	case FE_AUTH_NEED_LOOKUP:
		sess_enter(s, SMTP_S_AUTH);
		submit(s, JOB_AUTH);
		return;
	case FE_AUTH_OK:
		auth_finish(s, true);
		return;
	case FE_AUTH_TEMPFAIL:
		reply(s, "454 4.7.0 Temporary authentication failure");
		auth_finish(s, false);
		return;
	case FE_AUTH_MALFORMED:
		auth_finish(s, false);
		client_error(s, "501 5.5.2 Malformed authentication exchange");
		return;
	case FE_AUTH_CANCELLED:
		auth_finish(s, false);
		client_error(s, "501 5.0.0 Authentication cancelled");
		return;
	case FE_AUTH_FAIL:
		mp_log_info("smtp_auth_failed", "conn=%s ip=%s reason=%s", fe_conn_id(s->c),
			    mp_log_quote(ipq, sizeof(ipq), fe_conn_peer_ip(s->c),
					 strlen(fe_conn_peer_ip(s->c))),
			    fe_auth_reason(s->auth));
		auth_finish(s, false);
		client_error(s, "535 5.7.8 Authentication credentials invalid");
		return;
	}
}

static void cmd_auth(struct smtp_sess *s, const struct smtp_command *cmd)
{
	if (need_ehlo(s))
		return;
	if (!s->conf->submission) {
		client_error(s, "503 5.5.1 Error: authentication not enabled");
		return;
	}
	if (s->auth_user != NULL) {
		client_error(s, "503 5.5.1 Error: already authenticated");
		return;
	}
	if (s->has_mail) {
		client_error(s, "503 5.5.1 Error: AUTH inside a transaction");
		return;
	}
	const struct smtp_auth_arg *a = &cmd->u.auth;
	bool plain_ok = fe_conn_tls_active(s->c) || s->conf->allow_plaintext_auth;
	int ret = fe_auth_start(a->mech.ptr, a->mech.len, plain_ok, false, a->initial.ptr,
				a->initial.len, a->has_initial != 0, &s->auth);
	if (ret == MP_EPERM) {
		client_error(s, "538 5.7.11 Encryption required for requested authentication mechanism");
		return;
	}
	if (ret < 0) {
		client_error(s, "504 5.5.4 Unrecognized authentication type");
		return;
	}
	auth_continue(s);
}

/* A line from the client during AUTH: a SASL response. */
static void auth_line(struct smtp_sess *s, const char *line, size_t len)
{
	fe_auth_input(s->auth, line, len);
	auth_continue(s);
}

/* -------------------------------------------------------------- dispatch */

static void dispatch(struct smtp_sess *s, const char *line, size_t len)
{
	struct smtp_command cmd;
	struct smtp_error err;
	if (++s->commands > s->conf->max_commands) {
		close_with(s, "421 4.7.0 Too many commands, closing connection");
		return;
	}
	unsigned ext = s->esmtp ? SMTP_EXT_DEFAULT : 0;
	if (smtp_parse_command(line, len, ext, &cmd, &err) < 0) {
		if (cmd.verb == SMTP_VERB_BDAT) {
			/* The chunk's length is unknown: no way to resync. */
			reply(s, "%d %s %s", err.code, err.enhanced, err.text);
			close_with(s, "421 4.5.0 Cannot continue after a bad BDAT, closing connection");
			return;
		}
		client_error_parse(s, &err);
		return;
	}
	switch (cmd.verb) {
	case SMTP_VERB_HELO:
		cmd_helo(s, &cmd, false);
		break;
	case SMTP_VERB_EHLO:
		cmd_helo(s, &cmd, true);
		break;
	case SMTP_VERB_MAIL:
		cmd_mail(s, &cmd);
		break;
	case SMTP_VERB_RCPT:
		cmd_rcpt(s, &cmd);
		break;
	case SMTP_VERB_DATA:
		cmd_data(s);
		break;
	case SMTP_VERB_BDAT:
		cmd_bdat(s, &cmd);
		break;
	case SMTP_VERB_RSET:
		txn_reset(s);
		if (s->state != SMTP_S_INIT)
			sess_enter(s, SMTP_S_READY);
		reply(s, "250 2.0.0 Ok");
		break;
	case SMTP_VERB_NOOP:
		reply(s, "250 2.0.0 Ok");
		break;
	case SMTP_VERB_QUIT:
		close_with(s, "221 2.0.0 Bye");
		break;
	case SMTP_VERB_HELP:
		reply(s, "214 2.0.0 See RFC 5321; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT STARTTLS AUTH");
		break;
	case SMTP_VERB_VRFY:
		reply(s, "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery");
		break;
	case SMTP_VERB_EXPN:
		reply(s, "502 5.5.1 Error: EXPN not available");
		break;
	case SMTP_VERB_STARTTLS:
		cmd_starttls(s);
		break;
	case SMTP_VERB_AUTH:
		cmd_auth(s, &cmd);
		break;
	default:
		client_error(s, "500 5.5.2 Error: command not recognized");
		break;
	}
}

static void sess_process(struct smtp_sess *s)
{
	/* Bounded per call so one client cannot hog the loop; the rest of
	 * its input runs from the kick event. */
	for (unsigned rounds = 0; rounds < 1000; rounds++) {
		if (fe_conn_closed(s->c) || s->state == SMTP_S_WAIT || s->state == SMTP_S_QUIT)
			return;
		if (s->shutdown && s->state != SMTP_S_DATA && s->state != SMTP_S_BDAT) {
			close_with(s, "421 4.3.2 Service shutting down, closing connection");
			return;
		}
		struct evbuffer *in = fe_conn_input(s->c);
		size_t avail = evbuffer_get_length(in);
		if (s->state == SMTP_S_BDAT) {
			if (s->bdat_left > 0 && avail == 0)
				return;
			bdat_feed(s, in);
			continue;
		}
		if (avail == 0)
			return;
		if (s->state == SMTP_S_DATA) {
			struct evbuffer_iovec v;
			if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
				return;
			size_t used = 0;
			int r = smtp_data_feed(&s->dec, v.iov_base, v.iov_len, &s->body, &used);
			if (r < 0 && r != MP_AGAIN) {
				/* only the body buffer's own failure: out of memory */
				reply(s, "451 4.3.0 Out of memory");
				fe_conn_close_flush(s->c);
				return;
			}
			evbuffer_drain(in, used);
			if (r == MP_OK)
				data_end(s);
			continue;
		}
		s->lines.max_len = s->state == SMTP_S_AUTH ? SMTP_AUTH_LINE_MAX : SMTP_LINE_MAX;
		size_t look = avail < s->lines.max_len ? avail : s->lines.max_len;
		const char *p = (const char *)evbuffer_pullup(in, (ssize_t)look);
		if (p == NULL)
			return;
		struct mp_slice ln;
		struct smtp_error lerr;
		size_t used = 0;
		int r = smtp_line_next(&s->lines, p, look, &ln, &used, &lerr);
		if (r == MP_AGAIN) {
			evbuffer_drain(in, used);  /* non-zero while skipping a long line */
			if (used == 0)
				return;  /* wait for the rest of the line */
			continue;
		}
		if (r != MP_OK) {
			/* RFC 5321 §4.5.3.1.4: too long; skipped through its LF. */
			evbuffer_drain(in, used);
			if (s->state == SMTP_S_AUTH) {
				fe_auth_free(&s->auth);
				sess_enter(s, SMTP_S_READY);
			}
			client_error_parse(s, &lerr);
			continue;
		}
		size_t line_len = ln.len;
		/* Copy out: the handlers may consume the input (STARTTLS). */
		char line[SMTP_AUTH_LINE_MAX + 1];
		memcpy(line, ln.ptr, line_len);
		line[line_len] = '\0';
		evbuffer_drain(in, used);
		if (s->state == SMTP_S_AUTH)
			auth_line(s, line, line_len);
		else
			dispatch(s, line, line_len);
	}
	fe_conn_kick(s->c);
}

/* ------------------------------------------------------------ fe_proto */

static void *smtp_open(struct fe_conn *c, void *ctx)
{
	const struct smtp_conf *conf = ctx;
	struct smtp_sess *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return NULL;
	s->c = c;
	s->conf = conf;
	s->state = SMTP_S_INIT;
	smtp_line_reader_init(&s->lines, SMTP_LINE_MAX);
	fe_conn_set_idle_timeout(c, conf->idle_timeout_ms);
	if (fe_server_stopping(fe_conn_server(c))) {
		reply(s, "421 4.3.2 %s Service shutting down", conf->hostname);
		fe_conn_close_flush(c);
		return s;
	}
	reply(s, "220 %s ESMTP Merpati", conf->hostname);
	return s;
}

static void smtp_on_input(void *arg)
{
	sess_process(arg);
}

static void smtp_on_timeout(void *arg, bool total)
{
	struct smtp_sess *s = arg;
	reply(s, total ? "421 4.4.2 %s Error: session time limit exceeded"
		       : "421 4.4.2 %s Error: timeout exceeded", s->conf->hostname);
	sess_enter(s, SMTP_S_QUIT);
}

static void smtp_on_shutdown(void *arg)
{
	struct smtp_sess *s = arg;
	s->shutdown = true;
	/* A message being received or stored is finished first; job_done
	 * and the DATA path say goodbye after it. */
	if (s->state == SMTP_S_WAIT || s->state == SMTP_S_DATA || s->state == SMTP_S_BDAT)
		return;
	close_with(s, "421 4.3.2 Service shutting down, closing connection");
}

static void smtp_free(void *arg)
{
	struct smtp_sess *s = arg;
	txn_reset(s);
	free(s->rcpts);
	free(s->auth_user);
	fe_auth_free(&s->auth);
	rcpt_clear(&s->job.rcpt);
	free(s);
}

const struct fe_proto smtp_proto = {
	.name = "smtp",
	.busy = "421 4.7.0 Too many connections, try again later\r\n",
	.open = smtp_open,
	.on_input = smtp_on_input,
	.on_timeout = smtp_on_timeout,
	.on_shutdown = smtp_on_shutdown,
	.free = smtp_free,
};
