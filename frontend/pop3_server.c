/*
 * pop3_server: POP3 sessions (see pop3_server.h). Commands are read one
 * line at a time and handled in order; a command that needs the cluster
 * (the authentication lookup, the login's lock and list, RETR/TOP, the
 * QUIT update) pauses input and runs as a job, so pipelined commands
 * (RFC 2449 PIPELINING) are answered in order.
 */
#include "pop3_server.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "fe_auth.h"
#include "fe_store.h"
#include "mailstore.pb-c.h"
#include "mp_buf.h"
#include "mp_error.h"
#include "mp_log.h"
#include "mp_scram.h"
#include "mp_uidset.h"
#include "pop3_parse.h"

#define AUTH_LINE_MAX 16384       /* a SASL response line */
#define LIST_PAGE 10000
#define MAILDROP_MAX 1000000      /* messages listed at login */
#define PATH(m) "/merpati.v1.MailStore/" m

enum pop3_state { P_AUTH, P_TRANS, P_DONE };

enum pop3_job_kind { J_SASL, J_LOGIN, J_RETR, J_QUIT };

struct pop3_msg {
	uint32_t uid;
	uint64_t size;
	bool deleted;
};

struct pop3_sess {
	struct fe_conn *c;
	const struct pop3_conf *conf;
	enum pop3_state state;
	uint64_t errors;
	bool closing;
	bool busy;

	char *user_arg;            /* USER's argument */
	struct fe_auth *auth;
	bool in_auth;              /* reading SASL response lines */
	bool skipping;             /* dropping the rest of an over-long line */
	char *user;                /* authenticated, normalised */
	uint32_t shard;

	char owner[160];           /* lock owner: frontend + session */
	bool locked;
	bool lock_lost;
	struct event *renew_timer;
	struct fe_job renew_job;
	bool renewing;
	int renew_result;          /* 1 held, 0 lost, <0 error */

	uint32_t uidvalidity;
	struct pop3_msg *msgs;
	size_t nmsgs;

	/* the job in flight */
	struct fe_job job;
	enum pop3_job_kind kind;
	uint32_t arg_msg;          /* RETR/TOP: message number */
	int64_t arg_lines;         /* TOP: lines, else -1 */
	int result;
	char *result_text;         /* a one-line answer made by the job */
	struct mp_buf out;         /* a RETR/TOP answer made by the job */
};

/* ----------------------------------------------------------- releaser */

struct release_item {
	struct release_item *next;
	char *user;
	char owner[160];
};

struct pop3_releaser {
	struct fe_store *store;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct release_item *head;
	bool stop;
};

static int lock_call(struct fe_store *st, const char *user, const char *owner,
		     uint64_t lease_ms, bool release, bool *granted_r, char **error_r)
{
	uint32_t shard;
	int ret = fe_store_shard_of(st, user, &shard);
	if (ret < 0)
		return ret;
	Merpati__V1__MaildropLockRequest q = MERPATI__V1__MAILDROP_LOCK_REQUEST__INIT;
	q.user = (char *)user;
	q.owner = (char *)owner;
	q.lease_ms = lease_ms;
	q.release = release;
	ProtobufCMessage *resp = NULL;
	ret = fe_store_call(st, shard, PATH("MaildropLock"), &q.base,
			    &merpati__v1__maildrop_lock_reply__descriptor, &resp, error_r);
	if (ret < 0)
		return ret;
	*granted_r = ((Merpati__V1__MaildropLockReply *)resp)->granted;
	protobuf_c_message_free_unpacked(resp, NULL);
	return 0;
}

static void *releaser_main(void *arg)
{
	struct pop3_releaser *r = arg;
	pthread_mutex_lock(&r->mu);
	for (;;) {
		while (r->head == NULL && !r->stop)
			pthread_cond_wait(&r->cv, &r->mu);
		struct release_item *it = r->head;
		if (it == NULL)
			break;
		r->head = it->next;
		pthread_mutex_unlock(&r->mu);
		bool granted = false;
		char *err = NULL;
		int ret = lock_call(r->store, it->user, it->owner, 0, true, &granted, &err);
		if (ret < 0)
			mp_log_warn("pop3_unlock_failed", "user=%s error=\"%s\"", it->user,
				    err ? err : mp_strerror(ret));
		free(err);
		free(it->user);
		free(it);
		pthread_mutex_lock(&r->mu);
	}
	pthread_mutex_unlock(&r->mu);
	return NULL;
}

int pop3_releaser_start(struct fe_store *store, struct pop3_releaser **r_r)
{
	struct pop3_releaser *r = calloc(1, sizeof(*r));
	if (r == NULL)
		return MP_ENOMEM;
	r->store = store;
	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->cv, NULL);
	if (pthread_create(&r->thread, NULL, releaser_main, r) != 0) {
		pthread_mutex_destroy(&r->mu);
		pthread_cond_destroy(&r->cv);
		free(r);
		return MP_ENOMEM;
	}
	*r_r = r;
	return 0;
}

void pop3_releaser_stop(struct pop3_releaser **rp)
{
	struct pop3_releaser *r = *rp;
	if (r == NULL)
		return;
	pthread_mutex_lock(&r->mu);
	r->stop = true;
	pthread_cond_signal(&r->cv);
	pthread_mutex_unlock(&r->mu);
	pthread_join(r->thread, NULL);
	pthread_mutex_destroy(&r->mu);
	pthread_cond_destroy(&r->cv);
	free(r);
	*rp = NULL;
}

/* Queue a release (any thread). Out of memory: the lease ends it. */
static void release_later(struct pop3_releaser *r, const char *user, const char *owner)
{
	if (r == NULL)
		return;
	struct release_item *it = calloc(1, sizeof(*it));
	if (it == NULL || (it->user = strdup(user)) == NULL) {
		free(it);
		return;
	}
	snprintf(it->owner, sizeof(it->owner), "%s", owner);
	pthread_mutex_lock(&r->mu);
	it->next = r->head;
	r->head = it;
	pthread_cond_signal(&r->cv);
	pthread_mutex_unlock(&r->mu);
}

/* ------------------------------------------------------------ output */

static void reply(struct pop3_sess *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void reply(struct pop3_sess *s, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf) - 2, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(buf) - 3)
		n = (int)sizeof(buf) - 3;
	memcpy(buf + n, "\r\n", 2);
	if (fe_conn_write(s->c, buf, (size_t)n + 2) < 0)
		fe_conn_close(s->c);
}

static void err_reply(struct pop3_sess *s, const char *text)
{
	reply(s, "-ERR %s", text);
	s->errors++;
}

static void close_with(struct pop3_sess *s, const char *line)
{
	reply(s, "%s", line);
	s->closing = true;
	fe_conn_close_flush(s->c);
}

/* ------------------------------------------------------------- jobs */

static void sess_process(struct pop3_sess *s);
static void job_done(struct fe_job *j);
static void job_run(struct fe_job *j);

static void submit(struct pop3_sess *s, enum pop3_job_kind kind)
{
	s->kind = kind;
	s->busy = true;
	s->result = 0;
	free(s->result_text);
	s->result_text = NULL;
	s->job.run = job_run;
	s->job.done = job_done;
	fe_conn_pause(s->c);
	fe_conn_submit(s->c, &s->job);
}

static void set_text(struct pop3_sess *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void set_text(struct pop3_sess *s, const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	free(s->result_text);
	s->result_text = strdup(buf);
}

/* The login: the lock, then INBOX's list (worker). */
static void run_login(struct pop3_sess *s)
{
	free(s->msgs);  /* what an earlier, failed login listed */
	s->msgs = NULL;
	s->nmsgs = 0;
	bool granted = false;
	char *err = NULL;
	int ret = lock_call(s->conf->store, s->user, s->owner, s->conf->lock_lease_ms, false,
			    &granted, &err);
	if (ret < 0)
		mp_log_warn("pop3_lock_failed", "user=%s error=\"%s\"", s->user,
			    err ? err : mp_strerror(ret));
	free(err);
	err = NULL;
	if (ret < 0) {
		set_text(s, "-ERR [SYS/TEMP] Maildrop unavailable, try again later");
		s->result = ret;
		return;
	}
	if (!granted) {
		set_text(s, "-ERR [IN-USE] Maildrop is in use by another session");
		s->result = MP_EPERM;
		return;
	}
	s->locked = true;
	uint32_t from = 1;
	for (int page = 0; page < 1000; page++) {
		char set[32];
		snprintf(set, sizeof(set), "%u:*", from);
		Merpati__V1__FetchIndexRequest q = MERPATI__V1__FETCH_INDEX_REQUEST__INIT;
		q.user = s->user;
		q.mailbox = "INBOX";
		q.uid_set = set;
		q.limit = LIST_PAGE;
		ProtobufCMessage *resp = NULL;
		ret = fe_store_call(s->conf->store, s->shard, PATH("FetchIndex"), &q.base,
				    &merpati__v1__fetch_index_reply__descriptor, &resp, &err);
		if (ret < 0)
			mp_log_warn("pop3_list_failed", "user=%s error=\"%s\"", s->user,
				    err ? err : mp_strerror(ret));
		free(err);
		err = NULL;
		if (ret < 0)
			break;
		Merpati__V1__FetchIndexReply *r = (Merpati__V1__FetchIndexReply *)resp;
		s->uidvalidity = r->uidvalidity;
		uint32_t last = 0;
		for (size_t i = 0; i < r->n_messages && ret == 0; i++) {
			const Merpati__V1__MessageIndex *m = r->messages[i];
			if (m->uid < from)
				continue;
			last = m->uid;
			if (s->nmsgs == MAILDROP_MAX)
				break; /* the rest waits for a later session */
			struct pop3_msg *v = realloc(s->msgs, (s->nmsgs + 1) * sizeof(*v));
			if (v == NULL) {
				ret = MP_ENOMEM;
				break;
			}
			s->msgs = v;
			s->msgs[s->nmsgs].uid = m->uid;
			s->msgs[s->nmsgs].size = m->size;
			s->msgs[s->nmsgs].deleted = false;
			s->nmsgs++;
		}
		bool more = r->more && last != 0 && s->nmsgs < MAILDROP_MAX;
		protobuf_c_message_free_unpacked(resp, NULL);
		if (!more || ret < 0)
			break;
		from = last + 1;
	}
	if (ret < 0) {
		set_text(s, "-ERR [SYS/TEMP] Maildrop unavailable, try again later");
		s->result = ret;
		return;
	}
	uint64_t total = 0;
	for (size_t i = 0; i < s->nmsgs; i++)
		total += s->msgs[i].size;
	set_text(s, "+OK Maildrop locked and ready, %zu messages (%llu octets)", s->nmsgs,
		 (unsigned long long)total);
}

static int read_message(struct pop3_sess *s, uint32_t uid, struct mp_buf *b, char **err_r)
{
	uint64_t off = 0;
	for (int i = 0; i < 4096; i++) {
		Merpati__V1__FetchBodyRequest q = MERPATI__V1__FETCH_BODY_REQUEST__INIT;
		q.user = s->user;
		q.mailbox = "INBOX";
		q.uid = uid;
		q.offset = off;
		q.length = 4u << 20;
		ProtobufCMessage *resp = NULL;
		int ret = fe_store_call(s->conf->store, s->shard, PATH("FetchBody"), &q.base,
					&merpati__v1__fetch_body_reply__descriptor, &resp, err_r);
		if (ret < 0)
			return ret;
		Merpati__V1__FetchBodyReply *r = (Merpati__V1__FetchBodyReply *)resp;
		ret = mp_buf_append(b, r->data.data, r->data.len);
		off += r->data.len;
		bool end = off >= r->total_size || r->data.len == 0;
		protobuf_c_message_free_unpacked(resp, NULL);
		if (ret < 0)
			return ret;
		if (end)
			return 0;
	}
	return MP_EIO;
}

static void run_retr(struct pop3_sess *s)
{
	struct pop3_msg *m = &s->msgs[s->arg_msg - 1];
	struct mp_buf body;
	mp_buf_init(&body, 0);
	char *err = NULL;
	int ret = read_message(s, m->uid, &body, &err);
	free(err);
	if (ret == MP_ENOENT) {
		set_text(s, "-ERR Message %u was deleted by another client", s->arg_msg);
		s->result = ret;
	} else if (ret < 0) {
		set_text(s, "-ERR [SYS/TEMP] Cannot read message %u, try again later", s->arg_msg);
		s->result = ret;
	} else {
		mp_buf_reset(&s->out);
		int r = s->arg_lines < 0
			? mp_buf_printf(&s->out, "+OK %llu octets\r\n",
					(unsigned long long)pop3_wire_size(body.data, body.len))
			: mp_buf_append_str(&s->out, "+OK Top of message follows\r\n");
		if (r == 0)
			r = pop3_stuff(body.data, body.len, s->arg_lines, &s->out);
		if (r < 0) {
			mp_buf_reset(&s->out);
			set_text(s, "-ERR [SYS/TEMP] Out of memory");
			s->result = r;
		}
	}
	mp_buf_free(&body);
}

/* UPDATE (RFC 1939 §6): still ours? then expunge what DELE marked. */
static void run_quit(struct pop3_sess *s)
{
	bool granted = false;
	char *err = NULL;
	int ret = lock_call(s->conf->store, s->user, s->owner, s->conf->lock_lease_ms, false,
			    &granted, &err);
	free(err);
	err = NULL;
	if (ret == 0 && !granted) {
		s->locked = false;
		set_text(s, "-ERR [IN-USE] Lost the maildrop lock; nothing was deleted");
		return;
	}
	if (ret < 0) {
		set_text(s, "-ERR [SYS/TEMP] Maildrop unavailable; nothing was deleted");
		return;
	}
	size_t ndel = 0;
	uint32_t *uids = malloc((s->nmsgs + 1) * sizeof(*uids));
	if (uids == NULL) {
		set_text(s, "-ERR [SYS/TEMP] Out of memory; nothing was deleted");
		return;
	}
	for (size_t i = 0; i < s->nmsgs; i++)
		if (s->msgs[i].deleted)
			uids[ndel++] = s->msgs[i].uid;
	if (ndel > 0) {
		char *set = NULL;
		ret = mp_uidset_format(uids, ndel, &set);
		if (ret == 0) {
			Merpati__V1__ExpungeRequest q = MERPATI__V1__EXPUNGE_REQUEST__INIT;
			q.user = s->user;
			q.mailbox = "INBOX";
			q.uid_set = set;
			ProtobufCMessage *resp = NULL;
			ret = fe_store_call(s->conf->store, s->shard, PATH("Expunge"), &q.base,
					    &merpati__v1__expunge_reply__descriptor, &resp, &err);
			free(err);
			if (resp != NULL)
				protobuf_c_message_free_unpacked(resp, NULL);
		}
		free(set);
	}
	free(uids);
	if (ret < 0) {
		set_text(s, "-ERR [SYS/TEMP] Some deleted messages were not removed");
		return;
	}
	err = NULL;
	if (lock_call(s->conf->store, s->user, s->owner, 0, true, &granted, &err) == 0)
		s->locked = false;
	free(err);
	set_text(s, "+OK %s POP3 server signing off (%zu messages deleted)", s->conf->hostname,
		 ndel);
}

static void job_run(struct fe_job *j)
{
	struct pop3_sess *s = (struct pop3_sess *)((char *)j - offsetof(struct pop3_sess, job));
	switch (s->kind) {
	case J_SASL:
		fe_auth_job_run(s->auth, s->conf->store);
		break;
	case J_LOGIN:
		run_login(s);
		break;
	case J_RETR:
		run_retr(s);
		break;
	case J_QUIT:
		run_quit(s);
		break;
	}
}

static void auth_continue(struct pop3_sess *s);
static void renew_arm(struct pop3_sess *s);

static void job_done(struct fe_job *j)
{
	struct pop3_sess *s = (struct pop3_sess *)((char *)j - offsetof(struct pop3_sess, job));
	s->busy = false;
	if (fe_conn_closed(s->c))
		return;
	switch (s->kind) {
	case J_SASL:
		auth_continue(s);
		break;
	case J_LOGIN:
		reply(s, "%s", s->result_text ? s->result_text : "-ERR [SYS/TEMP] Try again later");
		if (s->result == 0) {
			s->state = P_TRANS;
			renew_arm(s);
			mp_log_info("pop3_login", "conn=%s user=%s messages=%zu", fe_conn_id(s->c),
				    s->user, s->nmsgs);
		} else {
			if (s->locked) {
				/* locked, but the list failed: give the lock back */
				release_later(s->conf->releaser, s->user, s->owner);
				s->locked = false;
			}
			free(s->user);
			s->user = NULL;
			s->errors++;
		}
		break;
	case J_RETR:
		if (s->result == 0) {
			size_t len = 0;
			char *data = mp_buf_steal(&s->out, &len);
			if (data == NULL || fe_conn_write_take(s->c, data, len) < 0)
				fe_conn_close(s->c);
		} else {
			reply(s, "%s", s->result_text ? s->result_text : "-ERR [SYS/TEMP] Failed");
			s->errors++;
		}
		break;
	case J_QUIT:
		close_with(s, s->result_text ? s->result_text : "-ERR [SYS/TEMP] Update failed");
		return;
	}
	fe_conn_resume(s->c);
	fe_conn_kick(s->c);
}

/* ------------------------------------------------------------ the lock */

static void renew_run(struct fe_job *j)
{
	struct pop3_sess *s = (struct pop3_sess *)((char *)j - offsetof(struct pop3_sess, renew_job));
	bool granted = false;
	char *err = NULL;
	int ret = lock_call(s->conf->store, s->user, s->owner, s->conf->lock_lease_ms, false,
			    &granted, &err);
	free(err);
	s->renew_result = ret < 0 ? ret : granted ? 1 : 0;
}

static void renew_done(struct fe_job *j)
{
	struct pop3_sess *s = (struct pop3_sess *)((char *)j - offsetof(struct pop3_sess, renew_job));
	s->renewing = false;
	if (fe_conn_closed(s->c))
		return;
	if (s->renew_result == 0) {
		/* Another session has it now: this one must not delete anything. */
		s->lock_lost = true;
		s->locked = false;
		if (!s->busy)
			close_with(s, "-ERR [IN-USE] Lost the maildrop lock");
		return;
	}
	renew_arm(s);
}

static void renew_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct pop3_sess *s = arg;
	if (fe_conn_closed(s->c) || s->state != P_TRANS || s->renewing)
		return;
	s->renewing = true;
	s->renew_job.run = renew_run;
	s->renew_job.done = renew_done;
	fe_conn_submit(s->c, &s->renew_job);
}

static void renew_arm(struct pop3_sess *s)
{
	uint64_t ms = s->conf->lock_lease_ms / 3;
	if (ms < 100)
		ms = 100;
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
	if (s->renew_timer == NULL)
		s->renew_timer = evtimer_new(fe_conn_base(s->c), renew_tick, s);
	if (s->renew_timer != NULL)
		evtimer_add(s->renew_timer, &tv);
}

/* ------------------------------------------------------------- AUTH */

static void auth_done(struct pop3_sess *s, bool ok)
{
	s->in_auth = false;
	if (!ok) {
		fe_auth_free(&s->auth);
		return;
	}
	s->user = strdup(fe_auth_user(s->auth));
	fe_auth_free(&s->auth);
	if (s->user == NULL || fe_store_shard_of(s->conf->store, s->user, &s->shard) < 0) {
		free(s->user);
		s->user = NULL;
		reply(s, "-ERR [SYS/TEMP] Try again later");
		return;
	}
	submit(s, J_LOGIN);
}

static void auth_continue(struct pop3_sess *s)
{
	const char *out = NULL;
	char ipq[64];
	switch (fe_auth_status(s->auth, &out)) {
	case FE_AUTH_CHALLENGE:
		s->in_auth = true;
		reply(s, "+ %s", out ? out : "");
		return;
	case FE_AUTH_NEED_LOOKUP:
		s->in_auth = true;
		submit(s, J_SASL);
		return;
	case FE_AUTH_OK:
		auth_done(s, true);
		return;
	case FE_AUTH_TEMPFAIL:
		reply(s, "-ERR [SYS/TEMP] Temporary authentication failure");
		auth_done(s, false);
		return;
	case FE_AUTH_MALFORMED:
	case FE_AUTH_CANCELLED:
		err_reply(s, "Authentication cancelled or malformed");
		auth_done(s, false);
		return;
	case FE_AUTH_FAIL:
		mp_log_info("pop3_auth_failed", "conn=%s ip=%s reason=%s", fe_conn_id(s->c),
			    mp_log_quote(ipq, sizeof(ipq), fe_conn_peer_ip(s->c),
					 strlen(fe_conn_peer_ip(s->c))),
			    fe_auth_reason(s->auth));
		err_reply(s, "[AUTH] Authentication failed");
		auth_done(s, false);
		return;
	}
}

static bool plaintext_ok(const struct pop3_sess *s)
{
	return fe_conn_tls_active(s->c) || s->conf->allow_plaintext_auth;
}

static void start_auth(struct pop3_sess *s, const char *mech, const char *ir, size_t ir_len,
		       bool has_ir)
{
	int ret = fe_auth_start(mech, strlen(mech), plaintext_ok(s), false, ir, ir_len, has_ir,
				&s->auth);
	if (ret == MP_EPERM) {
		err_reply(s, "[AUTH] Use STLS first");
		return;
	}
	if (ret < 0) {
		err_reply(s, "Unsupported authentication mechanism");
		return;
	}
	auth_continue(s);
}

static void cmd_pass(struct pop3_sess *s, const char *pass)
{
	if (s->user_arg == NULL) {
		err_reply(s, "USER first");
		return;
	}
	size_t ul = strlen(s->user_arg), pl = strlen(pass);
	char raw[600];
	if (ul + pl + 2 > sizeof(raw)) {
		err_reply(s, "[AUTH] Authentication failed");
		return;
	}
	raw[0] = '\0';
	memcpy(raw + 1, s->user_arg, ul);
	raw[1 + ul] = '\0';
	memcpy(raw + 2 + ul, pass, pl);
	char b64[810];
	size_t bl = mp_base64_encode(raw, ul + pl + 2, b64);
	mp_memwipe(raw, sizeof(raw));
	free(s->user_arg);
	s->user_arg = NULL;
	start_auth(s, "PLAIN", b64, bl, true);
	mp_memwipe(b64, sizeof(b64));
}

/* ---------------------------------------------------------- commands */

static void cmd_capa(struct pop3_sess *s)
{
	reply(s, "+OK Capability list follows");
	reply(s, "TOP");
	reply(s, "UIDL");
	reply(s, "RESP-CODES");
	reply(s, "AUTH-RESP-CODE");
	reply(s, "PIPELINING");
	reply(s, "EXPIRE NEVER");
	reply(s, "LOGIN-DELAY 0");
	reply(s, "IMPLEMENTATION Merpati");
	if (s->state == P_AUTH) {
		if (plaintext_ok(s)) {
			reply(s, "USER");
			reply(s, "SASL PLAIN LOGIN SCRAM-SHA-256");
		} else {
			reply(s, "SASL SCRAM-SHA-256");
		}
		if (!fe_conn_tls_active(s->c) && fe_conn_tls_offered(s->c))
			reply(s, "STLS");
	}
	reply(s, ".");
}

/* A message number that names a listed, not deleted message, or NULL
 * after answering -ERR. */
static struct pop3_msg *msg_arg(struct pop3_sess *s, const char *arg, uint32_t *n_r)
{
	uint32_t n;
	if (!pop3_number(arg, false, &n) || n > s->nmsgs) {
		err_reply(s, "No such message");
		return NULL;
	}
	if (s->msgs[n - 1].deleted) {
		err_reply(s, "Message is deleted");
		return NULL;
	}
	*n_r = n;
	return &s->msgs[n - 1];
}

static void cmd_list(struct pop3_sess *s, const struct pop3_command *cmd, bool uidl)
{
	uint32_t n;
	if (cmd->nargs == 1) {
		struct pop3_msg *m = msg_arg(s, cmd->arg[0], &n);
		if (m == NULL)
			return;
		if (uidl)
			reply(s, "+OK %u %u.%u", n, s->uidvalidity, m->uid);
		else
			reply(s, "+OK %u %llu", n, (unsigned long long)m->size);
		return;
	}
	reply(s, "+OK %s", uidl ? "Unique-ID listing follows" : "Scan listing follows");
	for (size_t i = 0; i < s->nmsgs; i++) {
		if (s->msgs[i].deleted)
			continue;
		if (uidl)
			reply(s, "%zu %u.%u", i + 1, s->uidvalidity, s->msgs[i].uid);
		else
			reply(s, "%zu %llu", i + 1, (unsigned long long)s->msgs[i].size);
	}
	reply(s, ".");
}

static void cmd_stat(struct pop3_sess *s)
{
	size_t n = 0;
	uint64_t total = 0;
	for (size_t i = 0; i < s->nmsgs; i++)
		if (!s->msgs[i].deleted) {
			n++;
			total += s->msgs[i].size;
		}
	reply(s, "+OK %zu %llu", n, (unsigned long long)total);
}

static void cmd_stls(struct pop3_sess *s)
{
	if (fe_conn_tls_active(s->c)) {
		err_reply(s, "TLS is already active");
		return;
	}
	if (!fe_conn_tls_offered(s->c)) {
		err_reply(s, "TLS is not available");
		return;
	}
	reply(s, "+OK Begin TLS negotiation");
	free(s->user_arg);
	s->user_arg = NULL;
	if (fe_conn_starttls(s->c) < 0)
		fe_conn_close(s->c);
}

static void dispatch_auth_state(struct pop3_sess *s, const struct pop3_command *cmd)
{
	switch (cmd->cmd) {
	case POP3_USER:
		if (!plaintext_ok(s)) {
			err_reply(s, "[AUTH] USER/PASS need STLS first");
			return;
		}
		free(s->user_arg);
		s->user_arg = strdup(cmd->arg[0]);
		reply(s, "+OK Send PASS");
		return;
	case POP3_PASS:
		cmd_pass(s, cmd->arg[0]);
		return;
	case POP3_AUTH:
		if (cmd->nargs == 0) {
			/* the mechanism list, as many clients ask (pre-RFC 5034) */
			reply(s, "+OK Mechanisms follow");
			if (plaintext_ok(s)) {
				reply(s, "PLAIN");
				reply(s, "LOGIN");
			}
			reply(s, "SCRAM-SHA-256");
			reply(s, ".");
			return;
		}
		{
			const char *ir = cmd->nargs == 2 ? cmd->arg[1] : NULL;
			size_t ir_len = ir ? strlen(ir) : 0;
			if (ir != NULL && strcmp(ir, "=") == 0)
				ir_len = 0; /* RFC 5034 §4: empty initial response */
			start_auth(s, cmd->arg[0], ir, ir_len, ir != NULL);
		}
		return;
	case POP3_APOP:
		err_reply(s, "APOP is not supported");
		return;
	case POP3_STLS:
		cmd_stls(s);
		return;
	default:
		err_reply(s, "Authenticate first");
		return;
	}
}

static void dispatch_trans_state(struct pop3_sess *s, const struct pop3_command *cmd)
{
	uint32_t n;
	struct pop3_msg *m;
	switch (cmd->cmd) {
	case POP3_STAT:
		cmd_stat(s);
		return;
	case POP3_LIST:
		cmd_list(s, cmd, false);
		return;
	case POP3_UIDL:
		cmd_list(s, cmd, true);
		return;
	case POP3_RETR:
	case POP3_TOP:
		if ((m = msg_arg(s, cmd->arg[0], &n)) == NULL)
			return;
		s->arg_msg = n;
		s->arg_lines = -1;
		if (cmd->cmd == POP3_TOP) {
			uint32_t lines;
			if (!pop3_number(cmd->arg[1], true, &lines)) {
				err_reply(s, "Invalid line count");
				return;
			}
			s->arg_lines = lines;
		}
		submit(s, J_RETR);
		return;
	case POP3_DELE:
		if ((m = msg_arg(s, cmd->arg[0], &n)) == NULL)
			return;
		m->deleted = true;
		reply(s, "+OK Message %u deleted", n);
		return;
	case POP3_NOOP:
		reply(s, "+OK");
		return;
	case POP3_RSET:
		for (size_t i = 0; i < s->nmsgs; i++)
			s->msgs[i].deleted = false;
		cmd_stat(s);
		return;
	case POP3_QUIT:
		submit(s, J_QUIT);
		return;
	default:
		err_reply(s, "Not in the TRANSACTION state");
		return;
	}
}

static void dispatch(struct pop3_sess *s, char *line, size_t len)
{
	struct pop3_command cmd;
	const char *perr = NULL;
	if (pop3_parse(line, len, &cmd, &perr) < 0) {
		err_reply(s, perr);
		return;
	}
	if (cmd.cmd == POP3_CAPA) {
		cmd_capa(s);
		return;
	}
	if (cmd.cmd == POP3_QUIT && s->state == P_AUTH) {
		close_with(s, "+OK Bye");
		return;
	}
	if (s->state == P_AUTH)
		dispatch_auth_state(s, &cmd);
	else
		dispatch_trans_state(s, &cmd);
}

static void sess_process(struct pop3_sess *s)
{
	struct evbuffer *in = fe_conn_input(s->c);
	for (int rounds = 0; rounds < 64; rounds++) {
		if (s->busy || s->closing || fe_conn_closed(s->c))
			return;
		if (s->lock_lost) {
			close_with(s, "-ERR [IN-USE] Lost the maildrop lock");
			return;
		}
		if (s->errors >= s->conf->max_errors) {
			close_with(s, "-ERR Too many errors");
			return;
		}
		size_t max = s->in_auth ? AUTH_LINE_MAX : POP3_LINE_MAX;
		size_t avail = evbuffer_get_length(in);
		if (avail == 0)
			return;
		size_t look = avail < max + 2 ? avail : max + 2;
		const char *data = (const char *)evbuffer_pullup(in, (ev_ssize_t)look);
		if (data == NULL)
			return;
		const char *nl = memchr(data, '\n', look);
		if (s->skipping) {
			/* the rest of an over-long line: dropped up to its end */
			size_t drop = nl ? (size_t)(nl - data) + 1 : look;
			evbuffer_drain(in, drop);
			if (nl != NULL)
				s->skipping = false;
			continue;
		}
		if (nl == NULL) {
			if (look < max + 2)
				return; /* wait for the rest of the line */
			/* RFC 2449 §4: -ERR, and the next command starts after
			 * this line's end */
			evbuffer_drain(in, look);
			s->skipping = true;
			err_reply(s, "Line too long");
			continue;
		}
		size_t used = (size_t)(nl - data) + 1;
		size_t ll = used - 1;
		if (ll > 0 && data[ll - 1] == '\r')
			ll--;
		char *line = malloc(ll + 1);
		if (line == NULL) {
			fe_conn_close(s->c);
			return;
		}
		memcpy(line, data, ll);
		line[ll] = '\0';
		evbuffer_drain(in, used);
		if (s->in_auth) {
			fe_auth_input(s->auth, line, ll);
			auth_continue(s);
		} else {
			dispatch(s, line, ll);
		}
		mp_memwipe(line, ll);
		free(line);
	}
	fe_conn_kick(s->c);
}

/* ---------------------------------------------------------- fe_proto */

static atomic_uint_fast64_t session_seq;

static void *pop3_open(struct fe_conn *c, void *ctx)
{
	const struct pop3_conf *conf = ctx;
	struct pop3_sess *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return NULL;
	s->c = c;
	s->conf = conf;
	s->state = P_AUTH;
	mp_buf_init(&s->out, 0);
	snprintf(s->owner, sizeof(s->owner), "%s:%llu", conf->owner_prefix,
		 (unsigned long long)atomic_fetch_add(&session_seq, 1));
	fe_conn_set_idle_timeout(c, conf->idle_timeout_ms);
	if (fe_server_stopping(fe_conn_server(c))) {
		close_with(s, "-ERR [SYS/TEMP] Server shutting down");
		return s;
	}
	reply(s, "+OK %s Merpati POP3 ready", conf->hostname);
	return s;
}

static void pop3_on_input(void *arg)
{
	sess_process(arg);
}

static void pop3_on_timeout(void *arg, bool total)
{
	struct pop3_sess *s = arg;
	/* RFC 1939 §3: an autologout timer ends the session without UPDATE */
	close_with(s, total ? "-ERR Session time limit reached"
			    : "-ERR Autologout; idle for too long");
}

static void pop3_on_shutdown(void *arg)
{
	struct pop3_sess *s = arg;
	if (s->busy && s->kind == J_QUIT)
		return; /* the update finishes and says goodbye */
	close_with(s, "-ERR [SYS/TEMP] Server shutting down");
}

static void pop3_free(void *arg)
{
	struct pop3_sess *s = arg;
	if (s->locked && s->user != NULL)
		release_later(s->conf->releaser, s->user, s->owner);
	if (s->renew_timer != NULL)
		event_free(s->renew_timer);
	fe_auth_free(&s->auth);
	free(s->user_arg);
	free(s->user);
	free(s->msgs);
	free(s->result_text);
	mp_buf_free(&s->out);
	free(s);
}

const struct fe_proto pop3_proto = {
	.name = "pop3",
	.busy = "-ERR [SYS/TEMP] Too many connections, try again later\r\n",
	.open = pop3_open,
	.on_input = pop3_on_input,
	.on_timeout = pop3_on_timeout,
	.on_shutdown = pop3_on_shutdown,
	.free = pop3_free,
};
