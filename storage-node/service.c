/*
 * service: MailStore methods -> store_call, and Watch.
 *
 * Answers travel back from whichever thread the store completes on (a
 * server thread for reads, the commit thread for writes). Watch streams are
 * kept in a registry; the store's notify hook (commit thread) sends events
 * to the user's streams. A stream that closes only raises a flag (its close
 * callback may run on a gRPC thread holding the call's lock), and closed
 * streams are swept under the registry lock later: lock order is always
 * registry, then call.
 *
 * Errors map to gRPC codes in one place (mp_rpc_reply through
 * common/mp_error.h): e.g. a queue update by a runner whose claim is gone
 * (MP_ESTATE) is FAILED_PRECONDITION, a shard this node does not lead
 * (MP_ENOTLEADER) the usual not-leader status.
 *
 * Never: block a gRPC thread on a write; send to a stream after release.
 */
#include "service.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "mailstore.pb-c.h"
#include "mp_error.h"
#include "mp_log.h"
#include "mp_shard.h"

#define WATCH_QUEUE 256
#define WATCHERS_MAX 100000

struct watcher {
	struct watcher *next;
	struct mp_rpc_call *call; /* owned reference until released */
	char user[MP_USER_MAX + 1];
	atomic_bool closed;
};

struct service {
	struct store *st;        /* borrowed */
	pthread_mutex_t mu;
	struct watcher *watchers; /* owned list, guarded by mu */
	size_t nwatchers;
};

static void reply_cb(int err, const char *errmsg, const ProtobufCMessage *reply,
		     void *arg)
{
	mp_rpc_reply(arg, reply, err, errmsg);
}

static void dispatch(struct mp_rpc_call *call, const ProtobufCMessage *req,
		     struct service *svc, enum store_op op)
{
	int err = store_call(svc->st, op, req, reply_cb, call);
	if (err < 0)
		mp_rpc_reply(call, NULL, err,
			     err == MP_EUNAVAIL ? "node is busy or shutting down; retry"
						: "request refused");
}

#define HANDLER(fn, OP)                                                          \
	static void fn(struct mp_rpc_call *call, const ProtobufCMessage *req,   \
		       void *ctx)                                                \
	{                                                                        \
		dispatch(call, req, ctx, OP);                                    \
	}

HANDLER(h_create_domain, STORE_CREATE_DOMAIN)
HANDLER(h_delete_domain, STORE_DELETE_DOMAIN)
HANDLER(h_get_domain, STORE_GET_DOMAIN)
HANDLER(h_list_domains, STORE_LIST_DOMAINS)
HANDLER(h_create_account, STORE_CREATE_ACCOUNT)
HANDLER(h_delete_account, STORE_DELETE_ACCOUNT)
HANDLER(h_get_account, STORE_GET_ACCOUNT)
HANDLER(h_list_accounts, STORE_LIST_ACCOUNTS)
HANDLER(h_set_password, STORE_SET_PASSWORD)
HANDLER(h_set_quota, STORE_SET_QUOTA)
HANDLER(h_set_state, STORE_SET_STATE)
HANDLER(h_create_mailbox, STORE_CREATE_MAILBOX)
HANDLER(h_delete_mailbox, STORE_DELETE_MAILBOX)
HANDLER(h_rename_mailbox, STORE_RENAME_MAILBOX)
HANDLER(h_list_mailboxes, STORE_LIST_MAILBOXES)
HANDLER(h_subscribe, STORE_SUBSCRIBE)
HANDLER(h_status, STORE_STATUS)
HANDLER(h_append, STORE_APPEND)
HANDLER(h_append_many, STORE_APPEND_MANY)
HANDLER(h_fetch_index, STORE_FETCH_INDEX)
HANDLER(h_fetch_body, STORE_FETCH_BODY)
HANDLER(h_store_flags, STORE_STORE_FLAGS)
HANDLER(h_copy, STORE_COPY)
HANDLER(h_move, STORE_MOVE)
HANDLER(h_expunge, STORE_EXPUNGE)
HANDLER(h_changes_since, STORE_CHANGES_SINCE)
HANDLER(h_node_info, STORE_NODE_INFO)
HANDLER(h_set_alias, STORE_SET_ALIAS)
HANDLER(h_delete_alias, STORE_DELETE_ALIAS)
HANDLER(h_get_alias, STORE_GET_ALIAS)
HANDLER(h_list_aliases, STORE_LIST_ALIASES)
HANDLER(h_resolve_recipient, STORE_RESOLVE_RECIPIENT)
HANDLER(h_queue_add, STORE_QUEUE_ADD)
HANDLER(h_queue_claim, STORE_QUEUE_CLAIM)
HANDLER(h_queue_update, STORE_QUEUE_UPDATE)
HANDLER(h_queue_list, STORE_QUEUE_LIST)
HANDLER(h_queue_get, STORE_QUEUE_GET)
HANDLER(h_queue_delete, STORE_QUEUE_DELETE)
HANDLER(h_queue_retry, STORE_QUEUE_RETRY)
HANDLER(h_maildrop_lock, STORE_MAILDROP_LOCK)

/* ------------------------------------------------------------ watch */

static void watch_closed(struct mp_rpc_call *call, void *arg)
{
	struct watcher *w = arg;
	(void)call;
	atomic_store(&w->closed, true);
}

/* Release closed streams. Caller holds svc->mu. */
static void sweep(struct service *svc, bool all)
{
	struct watcher **pp = &svc->watchers;
	while (*pp != NULL) {
		struct watcher *w = *pp;
		if (all || atomic_load(&w->closed)) {
			*pp = w->next;
			if (all && !atomic_load(&w->closed))
				mp_rpc_stream_finish(w->call, MP_EUNAVAIL, "node shutting down");
			mp_rpc_stream_release(w->call);
			free(w);
			svc->nwatchers--;
		} else {
			pp = &w->next;
		}
	}
}

static void send_event(struct watcher *w, int kind, uint32_t mbid, uint64_t modseq)
{
	Merpati__V1__WatchEvent ev = MERPATI__V1__WATCH_EVENT__INIT;
	ev.kind = kind;
	ev.mailbox_id = mbid;
	ev.highestmodseq = modseq;
	int r = mp_rpc_stream_send(w->call, &ev.base);
	if (r == MP_ENOSPC) {
		/* The client reads too slowly; end its stream so it
		 * re-watches and resynchronises rather than miss events. */
		mp_rpc_stream_finish(w->call, MP_EUNAVAIL, "watch queue overflow; watch again");
		atomic_store(&w->closed, true);
	}
}

static void h_watch(struct mp_rpc_call *call, const ProtobufCMessage *req, void *ctx)
{
	struct service *svc = ctx;
	const Merpati__V1__WatchRequest *q = (const void *)req;
	char user[MP_USER_MAX + 1];
	const char *e;

	if (q->user == NULL ||
	    mp_user_normalize(q->user, strlen(q->user), user, sizeof(user), &e) < 0) {
		mp_rpc_stream_start(call, 1, NULL, NULL);
		mp_rpc_stream_finish(call, MP_EINVAL, "invalid user");
		mp_rpc_stream_release(call);
		return;
	}
	struct watcher *w = calloc(1, sizeof(*w));
	if (w == NULL) {
		mp_rpc_stream_start(call, 1, NULL, NULL);
		mp_rpc_stream_finish(call, MP_ENOMEM, "out of memory");
		mp_rpc_stream_release(call);
		return;
	}
	memcpy(w->user, user, strlen(user) + 1);
	w->call = call;
	atomic_init(&w->closed, false);

	pthread_mutex_lock(&svc->mu);
	sweep(svc, false);
	if (svc->nwatchers >= WATCHERS_MAX) {
		pthread_mutex_unlock(&svc->mu);
		free(w);
		mp_rpc_stream_start(call, 1, NULL, NULL);
		mp_rpc_stream_finish(call, MP_EUNAVAIL, "too many watchers on this node");
		mp_rpc_stream_release(call);
		return;
	}
	mp_rpc_stream_start(call, WATCH_QUEUE, watch_closed, w);
	w->next = svc->watchers;
	svc->watchers = w;
	svc->nwatchers++;
	send_event(w, MERPATI__V1__WATCH_KIND__WATCH_READY, 0, 0);
	pthread_mutex_unlock(&svc->mu);
}

static void notify(const char *user, int kind, uint32_t mbid, uint64_t modseq, void *arg)
{
	struct service *svc = arg;
	pthread_mutex_lock(&svc->mu);
	sweep(svc, false);
	for (struct watcher *w = svc->watchers; w != NULL; w = w->next)
		if (!atomic_load(&w->closed) && strcmp(w->user, user) == 0)
			send_event(w, kind, mbid, modseq);
	pthread_mutex_unlock(&svc->mu);
}

/* ------------------------------------------------------------ table */

static const struct mp_rpc_method methods[] = {
	{ "CreateDomain", h_create_domain, 0 },
	{ "DeleteDomain", h_delete_domain, 0 },
	{ "GetDomain", h_get_domain, 0 },
	{ "ListDomains", h_list_domains, 0 },
	{ "CreateAccount", h_create_account, 0 },
	{ "DeleteAccount", h_delete_account, 0 },
	{ "GetAccount", h_get_account, 0 },
	{ "ListAccounts", h_list_accounts, 0 },
	{ "SetPassword", h_set_password, 0 },
	{ "SetQuota", h_set_quota, 0 },
	{ "SetState", h_set_state, 0 },
	{ "CreateMailbox", h_create_mailbox, 0 },
	{ "DeleteMailbox", h_delete_mailbox, 0 },
	{ "RenameMailbox", h_rename_mailbox, 0 },
	{ "ListMailboxes", h_list_mailboxes, 0 },
	{ "Subscribe", h_subscribe, 0 },
	{ "Status", h_status, 0 },
	{ "Append", h_append, 0 },
	{ "AppendMany", h_append_many, 0 },
	{ "FetchIndex", h_fetch_index, 0 },
	{ "FetchBody", h_fetch_body, 0 },
	{ "StoreFlags", h_store_flags, 0 },
	{ "Copy", h_copy, 0 },
	{ "Move", h_move, 0 },
	{ "Expunge", h_expunge, 0 },
	{ "ChangesSince", h_changes_since, 0 },
	{ "Watch", h_watch, 1 },
	{ "NodeInfo", h_node_info, 0 },
	{ "SetAlias", h_set_alias, 0 },
	{ "DeleteAlias", h_delete_alias, 0 },
	{ "GetAlias", h_get_alias, 0 },
	{ "ListAliases", h_list_aliases, 0 },
	{ "ResolveRecipient", h_resolve_recipient, 0 },
	{ "QueueAdd", h_queue_add, 0 },
	{ "QueueClaim", h_queue_claim, 0 },
	{ "QueueUpdate", h_queue_update, 0 },
	{ "QueueList", h_queue_list, 0 },
	{ "QueueGet", h_queue_get, 0 },
	{ "QueueDelete", h_queue_delete, 0 },
	{ "QueueRetry", h_queue_retry, 0 },
	{ "MaildropLock", h_maildrop_lock, 0 },
};

const struct mp_rpc_method *service_methods(size_t *n_r)
{
	*n_r = sizeof(methods) / sizeof(*methods);
	return methods;
}

int service_create(struct store *st, struct service **svc_r)
{
	struct service *svc = calloc(1, sizeof(*svc));
	if (svc == NULL)
		return MP_ENOMEM;
	svc->st = st;
	pthread_mutex_init(&svc->mu, NULL);
	store_set_notify(st, notify, svc);
	*svc_r = svc;
	return 0;
}

void service_free(struct service **svcp)
{
	struct service *svc = *svcp;
	if (svc == NULL)
		return;
	*svcp = NULL;
	pthread_mutex_lock(&svc->mu);
	sweep(svc, true);
	pthread_mutex_unlock(&svc->mu);
	pthread_mutex_destroy(&svc->mu);
	free(svc);
}
