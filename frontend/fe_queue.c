/*
 * fe_queue: the outbound queue runner (see fe_queue.h).
 *
 * Each runner thread owns its fe_dns (c-ares channels are per thread) and
 * walks the shards s with s % runners == its index, looking at a shard
 * again when its earliest entry is due or after poll_ms at the latest.
 *
 * Never: deliver an entry without holding its claim; update an entry whose
 * bounce could not be stored.
 */
#include "fe_queue.h"

#include <ctype.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "dsn.h"
#include "fe_dns.h"
#include "fe_store.h"
#include "fe_tls.h"
#include "mailstore.pb-c.h"
#include "mp_buf.h"
#include "mp_error.h"
#include "mp_log.h"
#include "mp_shard.h"
#include "smtp_client.h"

#define PATH(m) "/merpati.v1.MailStore/" m
#define CLAIM_LIMIT 8
#define DELIVERY_BUDGET_MS (30 * 60 * 1000)  /* one domain's attempt, at most */

struct fe_queue;

struct runner {
	struct fe_queue *q;      /* borrowed */
	unsigned index;
	pthread_t thread;
	bool started;
	struct fe_dns *dns;      /* owned: one per thread */
	int64_t *next_check;     /* owned: per shard, monotonic ms */
	uint32_t nshards;
};

struct fe_queue {
	struct fe_queue_conf conf;   /* strings copied below */
	char *owner, *hostname, *dns_server;  /* owned */
	struct fe_tls_client *tls;   /* owned; opportunistic STARTTLS */
	struct runner *runners;      /* owned */
	pthread_mutex_t mu;
	pthread_cond_t cond;
	bool stop;
};

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static bool stopping(struct fe_queue *q)
{
	pthread_mutex_lock(&q->mu);
	bool s = q->stop;
	pthread_mutex_unlock(&q->mu);
	return s;
}

/* Sleep until mono time `until` or stop. */
static void nap(struct fe_queue *q, int64_t until)
{
	struct timespec ts;
	int64_t wait = until - mono_ms();
	if (wait <= 0)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += wait / 1000;
	ts.tv_nsec += (wait % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&q->mu);
	if (!q->stop)
		pthread_cond_timedwait(&q->cond, &q->mu, &ts);
	pthread_mutex_unlock(&q->mu);
}

static const char *domain_of(const char *addr)
{
	const char *at = strrchr(addr, '@');
	return at != NULL ? at + 1 : "";
}

static bool has_8bit(const void *p, size_t len)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < len; i++)
		if (b[i] & 0x80)
			return true;
	return false;
}

/* The results of one attempt at an entry, per recipient index. */
struct outcome {
	bool tried;
	Merpati__V1__QueueRcptState state;  /* PENDING = deferred */
	int code;
	char status[12];                     /* RFC 3463 */
	char text[SMTP_CLIENT_TEXT_MAX];
	char mta[FE_DNS_NAME_MAX + 1];
};

/* Deliver the pending recipients of domain dom (case-insensitive). */
static void deliver_domain(struct runner *r, const Merpati__V1__QueueEntry *e,
			   const ProtobufCBinaryData *body, const char *dom,
			   struct outcome *out)
{
	struct fe_queue *q = r->q;
	size_t idx[SMTP_CLIENT_MAX_RCPTS];
	struct smtp_rcpt rc[SMTP_CLIENT_MAX_RCPTS];
	size_t n = 0;
	bool utf8 = has_8bit(e->sender, strlen(e->sender));
	for (size_t i = 0; i < e->n_rcpts && n < SMTP_CLIENT_MAX_RCPTS; i++) {
		Merpati__V1__QueueRcpt *qr = e->rcpts[i];
		if (qr->state != MERPATI__V1__QUEUE_RCPT_STATE__RCPT_PENDING || out[i].tried ||
		    strcasecmp(domain_of(qr->address), dom) != 0)
			continue;
		idx[n] = i;
		rc[n].addr = qr->address;
		rc[n].notify = qr->notify;
		rc[n].orcpt = qr->orcpt != NULL && qr->orcpt[0] != '\0' ? qr->orcpt : NULL;
		utf8 = utf8 || has_8bit(qr->address, strlen(qr->address));
		out[i].tried = true;
		n++;
	}
	if (n == 0)
		return;
	struct smtp_envelope env = {
		.sender = e->sender,
		.rcpts = rc,
		.nrcpts = n,
		.need_8bitmime = has_8bit(body->data, body->len),
		.need_smtputf8 = utf8,
		.ret = e->ret_full ? DSN_RET_FULL : DSN_RET_UNSPEC,
		.envid = e->envid != NULL && e->envid[0] != '\0' ? e->envid : NULL,
	};
	struct smtp_client_conf cc = {
		.helo_name = q->hostname,
		.port = q->conf.port,
		.tls = q->tls,
	};
	if (q->conf.smtp_timeout_ms != 0) {
		int t = (int)q->conf.smtp_timeout_ms;
		cc.timeouts = (struct smtp_client_timeouts){ t, t, t, t, t, t, t, t, t, t };
	}
	struct smtp_mem_body mb;
	struct smtp_body sb;
	smtp_body_from_mem(&sb, &mb, (const char *)body->data, body->len);
	struct smtp_result *res = NULL;
	char *error = NULL;
	int ret = smtp_client_deliver_domain(&cc, r->dns, dom, &env, &sb,
					     fe_dns_now_ms() + DELIVERY_BUDGET_MS, &res, &error);
	for (size_t k = 0; k < n; k++) {
		struct outcome *o = &out[idx[k]];
		if (ret < 0 || res == NULL || k >= res->nrcpts) {
			/* A message we cannot even send (bad envelope): bounce. */
			o->state = MERPATI__V1__QUEUE_RCPT_STATE__RCPT_FAILED;
			o->code = 0;
			snprintf(o->status, sizeof(o->status), "5.5.0");
			snprintf(o->text, sizeof(o->text), "%s",
				 error != NULL ? error : mp_strerror(ret));
			continue;
		}
		const struct smtp_rcpt_result *rr = &res->rcpts[k];
		o->state = rr->status == SMTP_RCPT_DELIVERED
				   ? MERPATI__V1__QUEUE_RCPT_STATE__RCPT_DELIVERED
			   : rr->status == SMTP_RCPT_PERMFAIL
				   ? MERPATI__V1__QUEUE_RCPT_STATE__RCPT_FAILED
				   : MERPATI__V1__QUEUE_RCPT_STATE__RCPT_PENDING;
		o->code = rr->code;
		snprintf(o->status, sizeof(o->status), "%s", rr->enhanced);
		snprintf(o->text, sizeof(o->text), "%s", rr->text);
		snprintf(o->mta, sizeof(o->mta), "%s", res->mx_host);
	}
	mp_log_info("queue_attempt", "id=%s domain=%s rcpts=%zu delivered=%zu tempfail=%zu "
		    "permfail=%zu mx=%s tls=%d", e->id, dom, n, res ? res->ndelivered : 0,
		    res ? res->ntempfail : 0, res ? res->npermfail : n,
		    res ? res->mx_host : "", res ? res->tls : 0);
	smtp_result_free(&res);
	free(error);
}

/* Put a bounce where the sender reads it: a local account's INBOX, or the
 * queue (null sender) for a remote one. 0 or MP_E*. */
static int send_dsn(struct runner *r, uint32_t shard, const char *to,
		    const struct mp_buf *msg)
{
	struct fe_store *st = r->q->conf.store;
	char norm[512];
	const char *err = NULL;
	char *error = NULL;
	bool local = false;
	int ret = mp_user_normalize(to, strlen(to), norm, sizeof(norm), &err);
	if (ret < 0)
		return 0;  /* an unusable sender: nobody to tell */
	ret = fe_store_domain_is_local(st, domain_of(norm), &local, &error);
	free(error);
	error = NULL;
	if (ret < 0)
		return ret;
	if (local) {
		struct fe_rcpt_info info;
		ret = fe_store_resolve(st, norm, &info, &error);
		free(error);
		error = NULL;
		if (ret < 0)
			return ret;
		bool account = info.kind == FE_RCPT_ACCOUNT;
		fe_rcpt_info_clear(&info);
		if (!account) {
			mp_log_warn("queue_dsn_dropped", "to=%s reason=no_such_local_account", norm);
			return 0;
		}
		/* Final delivery here: the trace header a delivering MTA adds
		 * (RFC 5321 §4.4), with the DSN's null sender. */
		struct mp_buf full;
		uint32_t ushard = 0;
		int res = 0;
		const char *u = norm;
		mp_buf_init(&full, 0);
		ret = mp_buf_append_str(&full, "Return-Path: <>\r\n");
		if (ret == 0)
			ret = mp_buf_append(&full, msg->data, msg->len);
		if (ret == 0)
			ret = fe_store_shard_of(st, norm, &ushard);
		struct fe_msg_meta meta = { 0 };
		if (ret == 0)
			ret = fe_msg_meta_make(full.data, full.len, &meta);
		if (ret == 0)
			ret = fe_store_append_many(st, ushard, &u, 1, NULL, full.data, full.len,
						   &meta, &res, &error);
		fe_msg_meta_clear(&meta);
		mp_buf_free(&full);
		free(error);
		return ret < 0 ? ret : res;
	}
	Merpati__V1__QueueRcpt qr = MERPATI__V1__QUEUE_RCPT__INIT;
	Merpati__V1__QueueRcpt *qp = &qr;
	qr.address = (char *)to;
	qr.orcpt = (char *)"";
	Merpati__V1__QueueEntry e = MERPATI__V1__QUEUE_ENTRY__INIT;
	e.sender = (char *)"";  /* RFC 3461 §6.2: DSNs go out with a null sender */
	e.n_rcpts = 1;
	e.rcpts = &qp;
	e.envid = (char *)"";
	e.from_user = (char *)"";
	e.expires_ms = wall_ms() + r->q->conf.lifetime_ms;
	char *id = NULL;
	ret = fe_store_queue_add(st, shard, &e, msg->data, msg->len, &id, &error);
	free(error);
	free(id);
	return ret;
}

/* Bounce the recipients that failed in this attempt. 0 when the DSN is
 * stored (or none was due). */
static int bounce(struct runner *r, uint32_t shard, const Merpati__V1__QueueEntry *e,
		  const ProtobufCBinaryData *body, const struct outcome *out, bool expired)
{
	if (!dsn_allowed(e->sender))
		return 0;
	struct dsn_rcpt *dr = calloc(e->n_rcpts, sizeof(*dr));
	if (dr == NULL)
		return MP_ENOMEM;
	size_t n = 0;
	time_t now = time(NULL);
	for (size_t i = 0; i < e->n_rcpts; i++) {
		const struct outcome *o = &out[i];
		if (o->state != MERPATI__V1__QUEUE_RCPT_STATE__RCPT_FAILED ||
		    !dsn_wanted(e->rcpts[i]->notify, DSN_ACTION_FAILED))
			continue;
		if (!o->tried && !expired)
			continue;
		dr[n].final_recipient = e->rcpts[i]->address;
		dr[n].original_recipient = e->rcpts[i]->orcpt != NULL &&
						   e->rcpts[i]->orcpt[0] != '\0'
					       ? e->rcpts[i]->orcpt
					       : NULL;
		dr[n].action = DSN_ACTION_FAILED;
		dr[n].status = o->status[0] != '\0' ? o->status : "5.0.0";
		dr[n].remote_mta = o->mta[0] != '\0' ? o->mta : NULL;
		dr[n].diag_code = o->code;
		dr[n].diag_text = o->text;
		dr[n].last_attempt = now;
		n++;
	}
	int ret = 0;
	if (n > 0) {
		struct dsn_report rep = {
			.reporting_mta = r->q->hostname,
			.sender = e->sender,
			.envid = e->envid != NULL && e->envid[0] != '\0' ? e->envid : NULL,
			.ret = e->ret_full ? DSN_RET_FULL : DSN_RET_HDRS,
			.arrival = (time_t)(e->created_ms / 1000),
			.now = now,
			.rcpts = dr,
			.nrcpts = n,
		};
		struct dsn_original orig = {
			.data = (const char *)body->data, .len = body->len, .size = body->len,
		};
		struct mp_buf msg;
		const char *err = NULL;
		int eight = 0;
		mp_buf_init(&msg, 0);
		ret = dsn_build(&rep, &orig, &msg, &eight, &err);
		if (ret == 0)
			ret = send_dsn(r, shard, e->sender, &msg);
		mp_log_info("queue_bounce", "id=%s to=%s rcpts=%zu result=%s", e->id, e->sender,
			    n, ret == 0 ? "ok" : mp_strerror(ret));
		mp_buf_free(&msg);
	}
	free(dr);
	return ret;
}

static uint64_t backoff_ms(const struct fe_queue *q, uint32_t attempts)
{
	uint64_t d = q->conf.retry_min_ms;
	for (uint32_t i = 1; i < attempts && d < q->conf.retry_max_ms; i++)
		d *= 2;
	return d < q->conf.retry_max_ms ? d : q->conf.retry_max_ms;
}

static void work_entry(struct runner *r, uint32_t shard, const Merpati__V1__QueuedMessage *m)
{
	struct fe_queue *q = r->q;
	const Merpati__V1__QueueEntry *e = m->entry;
	if (e == NULL || e->n_rcpts == 0)
		return;
	struct outcome *out = calloc(e->n_rcpts, sizeof(*out));
	if (out == NULL)
		return;  /* the claim expires; someone retries */
	for (size_t i = 0; i < e->n_rcpts; i++)
		out[i].state = MERPATI__V1__QUEUE_RCPT_STATE__RCPT_PENDING;

	/* One delivery per destination domain, in the order recipients came. */
	for (size_t i = 0; i < e->n_rcpts && !stopping(q); i++) {
		const Merpati__V1__QueueRcpt *qr = e->rcpts[i];
		if (qr->state == MERPATI__V1__QUEUE_RCPT_STATE__RCPT_PENDING && !out[i].tried) {
			char dom[FE_DNS_NAME_MAX + 1];
			snprintf(dom, sizeof(dom), "%s", domain_of(qr->address));
			deliver_domain(r, e, &m->body, dom, out);
		}
	}
	uint64_t now = wall_ms();
	uint64_t expires = e->expires_ms != 0 ? e->expires_ms : e->created_ms + q->conf.lifetime_ms;
	bool expired = now >= expires;
	size_t nup = 0;
	Merpati__V1__RcptUpdate *ups = calloc(e->n_rcpts, sizeof(*ups));
	Merpati__V1__RcptUpdate **upp = calloc(e->n_rcpts, sizeof(*upp));
	if (ups == NULL || upp == NULL)
		goto out;
	for (size_t i = 0; i < e->n_rcpts; i++) {
		struct outcome *o = &out[i];
		if (e->rcpts[i]->state != MERPATI__V1__QUEUE_RCPT_STATE__RCPT_PENDING)
			continue;
		if (expired && o->state == MERPATI__V1__QUEUE_RCPT_STATE__RCPT_PENDING) {
			/* RFC 3463 4.4.7: delivery time expired. */
			o->state = MERPATI__V1__QUEUE_RCPT_STATE__RCPT_FAILED;
			snprintf(o->status, sizeof(o->status), "4.4.7");
			if (!o->tried)
				snprintf(o->text, sizeof(o->text),
					 "message expired in the queue: %s",
					 e->rcpts[i]->last_text != NULL ? e->rcpts[i]->last_text : "");
			o->tried = true;
		}
		if (!o->tried)
			continue;
		Merpati__V1__RcptUpdate init = MERPATI__V1__RCPT_UPDATE__INIT;
		ups[nup] = init;
		ups[nup].index = (uint32_t)i;
		ups[nup].state = o->state;
		ups[nup].code = o->code > 0 && o->code < 1000 ? (uint32_t)o->code : 0;
		ups[nup].text = o->text;
		upp[nup] = &ups[nup];
		nup++;
	}
	/* The bounce first: if it cannot be stored, leave the entry as it
	 * was (its claim expires and the attempt is repeated). */
	if (bounce(r, shard, e, &m->body, out, expired) != 0) {
		mp_log_warn("queue_bounce_failed", "id=%s", e->id);
		goto out;
	}
	Merpati__V1__QueueUpdateRequest u = MERPATI__V1__QUEUE_UPDATE_REQUEST__INIT;
	u.shard = shard;
	u.id = e->id;
	u.owner = q->owner;
	u.n_rcpts = nup;
	u.rcpts = upp;
	u.next_due_ms = now + backoff_ms(q, e->attempts);
	char last[256];
	snprintf(last, sizeof(last), "attempt %u", e->attempts);
	u.last_error = last;
	ProtobufCMessage *resp = NULL;
	char *error = NULL;
	int ret = fe_store_call(q->conf.store, shard, PATH("QueueUpdate"), &u.base,
				&merpati__v1__queue_update_reply__descriptor, &resp, &error);
	if (ret < 0) {
		mp_log_warn("queue_update_failed", "id=%s error=\"%s\"", e->id,
			    error != NULL ? error : mp_strerror(ret));
	} else {
		Merpati__V1__QueueUpdateReply *ur = (Merpati__V1__QueueUpdateReply *)resp;
		mp_log_info("queue_updated", "id=%s pending=%u deleted=%d", e->id, ur->pending,
			    ur->deleted);
		protobuf_c_message_free_unpacked(resp, NULL);
	}
	free(error);
out:
	free(ups);
	free(upp);
	free(out);
}

/* Claim and work one shard. Returns the mono time to look at it again. */
static int64_t run_shard(struct runner *r, uint32_t shard)
{
	struct fe_queue *q = r->q;
	int64_t now = mono_ms();
	Merpati__V1__QueueClaimRequest c = MERPATI__V1__QUEUE_CLAIM_REQUEST__INIT;
	c.shard = shard;
	c.owner = q->owner;
	c.lease_ms = q->conf.lease_ms;
	c.limit = CLAIM_LIMIT;
	ProtobufCMessage *resp = NULL;
	char *error = NULL;
	int ret = fe_store_call(q->conf.store, shard, PATH("QueueClaim"), &c.base,
				&merpati__v1__queue_claim_reply__descriptor, &resp, &error);
	if (ret < 0) {
		mp_log_debug("queue_claim_failed", "shard=%u error=\"%s\"", shard,
			     error != NULL ? error : mp_strerror(ret));
		free(error);
		return now + (int64_t)q->conf.poll_ms;
	}
	free(error);
	Merpati__V1__QueueClaimReply *cr = (Merpati__V1__QueueClaimReply *)resp;
	for (size_t i = 0; i < cr->n_entries && !stopping(q); i++)
		work_entry(r, shard, cr->entries[i]);
	int64_t next = now + (int64_t)q->conf.poll_ms;
	if (cr->n_entries >= CLAIM_LIMIT) {
		next = mono_ms();  /* more may be due */
	} else if (cr->next_due_ms != 0) {
		int64_t in = (int64_t)cr->next_due_ms - (int64_t)cr->now_ms;
		if (in < 0)
			in = 0;
		if (now + in < next)
			next = now + in;
	}
	protobuf_c_message_free_unpacked(resp, NULL);
	return next;
}

static void *runner_main(void *arg)
{
	struct runner *r = arg;
	struct fe_queue *q = r->q;
	unsigned nrun = q->conf.runners;
	while (!stopping(q)) {
		uint32_t n = fe_store_shard_count(q->conf.store);
		if (n == 0) {
			nap(q, mono_ms() + (int64_t)q->conf.poll_ms);
			continue;
		}
		if (n != r->nshards) {
			int64_t *nc = calloc(n, sizeof(*nc));
			if (nc == NULL) {
				nap(q, mono_ms() + (int64_t)q->conf.poll_ms);
				continue;
			}
			free(r->next_check);
			r->next_check = nc;
			r->nshards = n;
		}
		int64_t soonest = mono_ms() + (int64_t)q->conf.poll_ms;
		for (uint32_t s = r->index; s < n && !stopping(q); s += nrun) {
			if (r->next_check[s] <= mono_ms())
				r->next_check[s] = run_shard(r, s);
			if (r->next_check[s] < soonest)
				soonest = r->next_check[s];
		}
		nap(q, soonest);
	}
	return NULL;
}

int fe_queue_start(const struct fe_queue_conf *conf, struct fe_queue **q_r,
		   char **error_r)
{
	*q_r = NULL;
	if (conf->runners == 0)
		return 0;
	struct fe_queue *q = calloc(1, sizeof(*q));
	if (q == NULL)
		return MP_ENOMEM;
	q->conf = *conf;
	q->owner = strdup(conf->owner);
	q->hostname = strdup(conf->hostname);
	q->dns_server = conf->dns_server != NULL && conf->dns_server[0] != '\0'
				? strdup(conf->dns_server)
				: NULL;
	q->runners = calloc(conf->runners, sizeof(*q->runners));
	pthread_mutex_init(&q->mu, NULL);
	pthread_cond_init(&q->cond, NULL);
	if (q->owner == NULL || q->hostname == NULL || q->runners == NULL ||
	    (conf->dns_server != NULL && conf->dns_server[0] != '\0' && q->dns_server == NULL)) {
		fe_queue_stop(&q);
		return MP_ENOMEM;
	}
	if (q->conf.poll_ms == 0)
		q->conf.poll_ms = 1000;
	if (q->conf.lease_ms == 0)
		q->conf.lease_ms = 15 * 60 * 1000;
	if (q->conf.retry_min_ms == 0)
		q->conf.retry_min_ms = 60 * 1000;
	if (q->conf.retry_max_ms < q->conf.retry_min_ms)
		q->conf.retry_max_ms = q->conf.retry_min_ms;
	if (q->conf.lifetime_ms == 0)
		q->conf.lifetime_ms = 5ull * 24 * 3600 * 1000;
	struct fe_tls_client_conf tc = { .ca_file = NULL };
	int ret = fe_tls_client_open(&tc, &q->tls, error_r);
	for (unsigned i = 0; ret == 0 && i < conf->runners; i++) {
		struct runner *r = &q->runners[i];
		r->q = q;
		r->index = i;
		ret = fe_dns_open(q->dns_server, 0, 0, &r->dns, error_r);
		if (ret == 0 && pthread_create(&r->thread, NULL, runner_main, r) != 0)
			ret = MP_EIO;
		if (ret == 0)
			r->started = true;
	}
	if (ret < 0) {
		fe_queue_stop(&q);
		return ret;
	}
	mp_log_info("queue_started", "runners=%u owner=%s dns=%s port=%u", conf->runners,
		    q->owner, q->dns_server != NULL ? q->dns_server : "system",
		    (unsigned)(conf->port != 0 ? conf->port : 25));
	*q_r = q;
	return 0;
}

void fe_queue_stop(struct fe_queue **qp)
{
	struct fe_queue *q = *qp;
	if (q == NULL)
		return;
	*qp = NULL;
	pthread_mutex_lock(&q->mu);
	q->stop = true;
	pthread_cond_broadcast(&q->cond);
	pthread_mutex_unlock(&q->mu);
	for (unsigned i = 0; q->runners != NULL && i < q->conf.runners; i++) {
		struct runner *r = &q->runners[i];
		if (r->started)
			pthread_join(r->thread, NULL);
		fe_dns_free(&r->dns);
		free(r->next_check);
	}
	fe_tls_client_free(&q->tls);
	free(q->runners);
	free(q->owner);
	free(q->hostname);
	free(q->dns_server);
	pthread_mutex_destroy(&q->mu);
	pthread_cond_destroy(&q->cond);
	free(q);
}
