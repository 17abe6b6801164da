/*
 * ctl_node: merpatictl's node-level commands: "node info" (also the
 * readiness probe of ./dev: exit 0 exactly when the node answers) and
 * "watch", which prints one line per WatchEvent of a user (from the leader
 * of the user's shard with --etcd). The cluster's node commands (drain,
 * undrain, remove) live in ctl_cluster.c.
 *
 * watch flushes every line at once so a script reading the pipe sees events
 * as they come, and it polls the stream in short waits so --seconds and
 * Ctrl-C end it cleanly. It must never hold the stream open past its
 * limits.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctl.h"
#include "mp_error.h"
#include "mp_rpc.h"

#define CTL_WATCH_POLL_MS 200

int ctl_cmd_node_info(struct ctl *c, char **args, int nargs)
{
	Merpati__V1__Empty req = MERPATI__V1__EMPTY__INIT;
	Merpati__V1__NodeInfoReply *resp = NULL;
	int ret;

	(void)args;
	(void)nargs;
	ret = ctl_call(c, "NodeInfo", &req.base,
		       &merpati__v1__node_info_reply__descriptor,
		       (ProtobufCMessage **)&resp);
	if (ret != CTL_EXIT_OK)
		return ret;
	printf("node_id: %s\n", resp->node_id);
	printf("shard_count: %u\n", resp->shard_count);
	printf("group_commits: %llu\n",
	       (unsigned long long)resp->group_commits);
	printf("mutations: %llu\n", (unsigned long long)resp->mutations);
	printf("epoch: %u\n", resp->epoch);
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return CTL_EXIT_OK;
}

static int64_t ctl_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Mailbox id -> name, refreshed when an unknown id shows up or the list
 * changes. Names only decorate the output: a failed lookup is not an
 * error of the watch. */
struct ctl_mbnames {
	Merpati__V1__ListMailboxesReply *list; /* owned */
	int stale;
};

static const char *ctl_mbname(struct ctl *c, struct ctl_mbnames *names,
			      const char *user, uint32_t id)
{
	Merpati__V1__ListMailboxesRequest req =
		MERPATI__V1__LIST_MAILBOXES_REQUEST__INIT;
	char path[128];
	ProtobufCMessage *resp = NULL;
	char *msg = NULL;
	size_t i;
	int pass;

	for (pass = 0; pass < 2; pass++) {
		if (names->list != NULL && !names->stale) {
			for (i = 0; i < names->list->n_mailboxes; i++) {
				if (names->list->mailboxes[i]->id == id)
					return names->list->mailboxes[i]->name;
			}
			if (pass == 1)
				return NULL;
		}
		if (mp_rpc_method_path(&merpati__v1__mail_store__descriptor,
				       "ListMailboxes", path,
				       sizeof path) == NULL)
			return NULL;
		req.user = (char *)user;
		if (mp_rpc_call(c->ch, path, &req.base,
				&merpati__v1__list_mailboxes_reply__descriptor,
				c->opt.timeout_ms, &resp, &msg) != 0) {
			free(msg);
			return NULL;
		}
		if (names->list != NULL)
			protobuf_c_message_free_unpacked(&names->list->base,
							 NULL);
		names->list = (Merpati__V1__ListMailboxesReply *)resp;
		names->stale = 0;
	}
	return NULL;
}

static void ctl_print_event(struct ctl *c, struct ctl_mbnames *names,
			    const char *user, const Merpati__V1__WatchEvent *ev)
{
	char quoted[2 * CTL_MAILBOX_LEN_MAX + 8];
	const char *name;

	switch (ev->kind) {
	case MERPATI__V1__WATCH_KIND__WATCH_READY:
		printf("ready\n");
		break;
	case MERPATI__V1__WATCH_KIND__WATCH_MAILBOX:
		name = ctl_mbname(c, names, user, ev->mailbox_id);
		printf("mailbox id=%u highestmodseq=%llu%s%s\n",
		       ev->mailbox_id, (unsigned long long)ev->highestmodseq,
		       name != NULL ? " name=" : "",
		       name != NULL ? ctl_fmt_name(name, quoted,
						   sizeof quoted) : "");
		break;
	case MERPATI__V1__WATCH_KIND__WATCH_MAILBOXES:
		names->stale = 1;
		printf("mailboxes\n");
		break;
	case MERPATI__V1__WATCH_KIND__WATCH_OVERFLOW:
		names->stale = 1;
		printf("overflow\n");
		break;
	default:
		printf("event kind=%d mailbox_id=%u highestmodseq=%llu\n",
		       (int)ev->kind, ev->mailbox_id,
		       (unsigned long long)ev->highestmodseq);
		break;
	}
	fflush(stdout);
}

int ctl_cmd_watch(struct ctl *c, char **args, int nargs)
{
	Merpati__V1__WatchRequest req = MERPATI__V1__WATCH_REQUEST__INIT;
	struct ctl_mbnames names = { NULL, 0 };
	struct mp_rpc_stream *st = NULL;
	const char *error;
	char path[128];
	char *msg = NULL;
	uint64_t events = 0;
	int64_t deadline = 0;
	int ret, err;

	(void)nargs;
	if (ctl_check_user(args[0], &error) != 0) {
		ctl_err(c, "bad user \"%s\": %s", args[0], error);
		return CTL_EXIT_INVALID;
	}
	if (mp_rpc_method_path(&merpati__v1__mail_store__descriptor, "Watch",
			       path, sizeof path) == NULL) {
		ctl_err(c, "internal error: Watch is not a MailStore method");
		return CTL_EXIT_ERROR;
	}
	/* The stream goes to one node: with --etcd, the user's shard leader
	 * as the map names it now (a later failover ends the watch). */
	ret = ctl_connect_user(c, args[0]);
	if (ret != CTL_EXIT_OK)
		return ret;
	if (c->opt.seconds > 0)
		deadline = ctl_now_ms() + (int64_t)c->opt.seconds * 1000;
	ctl_set_soft_interrupt(1);

	req.user = args[0];
	/* No deadline on the stream itself: it lives until --count,
	 * --seconds or a signal, checked between short waits below. */
	err = mp_rpc_stream_open(c->ch, path, &req.base,
				 &merpati__v1__watch_event__descriptor, 0, &st,
				 &msg);
	if (err != 0) {
		ret = ctl_rpc_error(c, "Watch", err, msg);
		free(msg);
		ctl_set_soft_interrupt(0);
		return ret;
	}
	ret = CTL_EXIT_OK;
	while (c->opt.count == 0 || events < c->opt.count) {
		ProtobufCMessage *ev = NULL;
		int64_t wait = CTL_WATCH_POLL_MS;

		if (ctl_interrupted())
			break;
		if (deadline != 0) {
			int64_t left = deadline - ctl_now_ms();

			if (left <= 0)
				break;
			if (left < wait)
				wait = left;
		}
		err = mp_rpc_stream_next(st, wait, &ev, &msg);
		if (err == MP_ETIMEDOUT)
			continue;
		if (err == 1) {
			ctl_err(c, "the node ended the watch");
			break;
		}
		if (err != 0) {
			ret = ctl_rpc_error(c, "Watch", err, msg);
			free(msg);
			msg = NULL;
			break;
		}
		ctl_print_event(c, &names, args[0],
				(const Merpati__V1__WatchEvent *)ev);
		protobuf_c_message_free_unpacked(ev, NULL);
		events++;
	}
	mp_rpc_stream_close(&st);
	if (names.list != NULL)
		protobuf_c_message_free_unpacked(&names.list->base, NULL);
	ctl_set_soft_interrupt(0);
	return ret;
}
