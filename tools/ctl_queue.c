/*
 * ctl_queue: merpatictl's alias commands (alias add/remove/show/list) and
 * the outbound queue's (queue list/show/retry/delete).
 *
 * An alias lives in the shard of its address, so add/remove/show route
 * like a user. Listings walk every shard: with --etcd each shard's page
 * goes to its leader; with --node a shard the node does not lead is
 * skipped (another node lists it), as "user list" does. A queue id is
 * "SHARD.HEX" and routes by the shard it names; it is checked here before
 * any call. Queue commands only look and nudge: they never claim an entry
 * and never send a bounce.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "mp_error.h"

#define CTL_QUEUE_HEX 16
/* A reply text or note (at most 1000 bytes) quoted: \xNN at worst. */
#define CTL_QUEUE_TEXT_BUF (4 * 1000 + 8)

/* ------------------------------------------------------------- helpers */

/* The shards a listing walks: the --shard given, else all of them. */
static int ctl_shard_range(struct ctl *c, uint32_t *first_r, uint32_t *end_r)
{
	uint32_t n;
	int ret;

	if (c->opt.seen & CTL_OPT_SHARD) {
		*first_r = c->opt.shard;
		*end_r = c->opt.shard + 1;
		return CTL_EXIT_OK;
	}
	ret = ctl_shard_count(c, &n);
	if (ret != CTL_EXIT_OK)
		return ret;
	*first_r = 0;
	*end_r = n;
	return CTL_EXIT_OK;
}

/* One page of a per-shard listing. 1: the shard is another node's (--node
 * without --shard: skipped); 0 with *resp_r; else an exit status (after a
 * message) as a negative number. */
static int ctl_shard_page(struct ctl *c, const char *method, uint32_t shard,
			  const ProtobufCMessage *req,
			  const ProtobufCMessageDescriptor *desc,
			  ProtobufCMessage **resp_r)
{
	char *msg = NULL;
	int err;

	err = ctl_call_shard_raw(c, method, shard, req, desc, resp_r, &msg);
	if (err == MP_ENOTLEADER && c->opt.etcd == NULL &&
	    !(c->opt.seen & CTL_OPT_SHARD)) {
		free(msg);
		return 1;
	}
	if (err != 0) {
		int ret = ctl_rpc_error(c, method, err, msg);

		free(msg);
		return -ret;
	}
	free(msg);
	return 0;
}

/* "5.0123456789abcdef" -> shard 5; lowercases the hex in place. */
static int ctl_queue_id_arg(struct ctl *c, char *id, uint32_t *shard_r)
{
	char *dot = strchr(id, '.');
	size_t digits = dot != NULL ? (size_t)(dot - id) : 0;
	uint64_t shard = 0;
	size_t i;

	if (dot == NULL || digits == 0 || digits > 10 ||
	    strlen(dot + 1) != CTL_QUEUE_HEX)
		goto bad;
	for (i = 0; i < digits; i++) {
		if (id[i] < '0' || id[i] > '9' || (i == 0 && id[i] == '0' &&
						   digits > 1))
			goto bad;
		shard = shard * 10 + (uint64_t)(id[i] - '0');
	}
	if (shard > UINT32_MAX)
		goto bad;
	for (i = 1; dot[i] != '\0'; i++) {
		char ch = dot[i];

		if (ch >= 'A' && ch <= 'F')
			dot[i] = (char)(ch - 'A' + 'a');
		else if (!((ch >= '0' && ch <= '9') ||
			   (ch >= 'a' && ch <= 'f')))
			goto bad;
	}
	*shard_r = (uint32_t)shard;
	return CTL_EXIT_OK;
bad:
	ctl_err(c, "bad queue id \"%s\": expected SHARD.%d-HEX-DIGITS (as "
		"'queue list' prints)", id, CTL_QUEUE_HEX);
	return CTL_EXIT_INVALID;
}

static int ctl_address_arg(struct ctl *c, const char *what, char *addr)
{
	const char *error;

	if (ctl_check_user(addr, &error) != 0) {
		ctl_err(c, "bad %s \"%s\": %s", what, addr, error);
		return CTL_EXIT_INVALID;
	}
	return CTL_EXIT_OK;
}

/* "a@x,b@y" (addresses hold no ','). */
static void ctl_print_targets(char **t, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		printf("%s%s", i > 0 ? "," : "", t[i]);
}

/* ------------------------------------------------------------- aliases */

int ctl_cmd_alias_add(struct ctl *c, char **args, int nargs)
{
	Merpati__V1__AliasRequest req = MERPATI__V1__ALIAS_REQUEST__INIT;
	Merpati__V1__AliasReply *resp = NULL;
	int i, ret;

	ret = ctl_address_arg(c, "alias", args[0]);
	for (i = 1; i < nargs && ret == CTL_EXIT_OK; i++) {
		ret = ctl_address_arg(c, "target", args[i]);
		if (ret == CTL_EXIT_OK && strcmp(args[i], args[0]) == 0) {
			ctl_err(c, "%s cannot be its own target", args[0]);
			ret = CTL_EXIT_INVALID;
		}
	}
	if (ret != CTL_EXIT_OK)
		return ret;
	req.alias = args[0];
	req.targets = args + 1;
	req.n_targets = (size_t)(nargs - 1);
	ret = ctl_call(c, "SetAlias", &req.base,
		       &merpati__v1__alias_reply__descriptor,
		       (ProtobufCMessage **)&resp);
	if (ret != CTL_EXIT_OK)
		return ret;
	printf("set alias %s targets=", resp->alias);
	ctl_print_targets(resp->targets, resp->n_targets);
	printf(" shard=%u\n", resp->shard);
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return CTL_EXIT_OK;
}

int ctl_cmd_alias_remove(struct ctl *c, char **args, int nargs)
{
	Merpati__V1__AliasRequest req = MERPATI__V1__ALIAS_REQUEST__INIT;
	int ret;

	(void)nargs;
	ret = ctl_address_arg(c, "alias", args[0]);
	if (ret != CTL_EXIT_OK)
		return ret;
	req.alias = args[0];
	ret = ctl_call_empty(c, "DeleteAlias", &req.base);
	if (ret != CTL_EXIT_OK)
		return ret;
	printf("removed alias %s\n", args[0]);
	return CTL_EXIT_OK;
}

int ctl_cmd_alias_show(struct ctl *c, char **args, int nargs)
{
	Merpati__V1__AliasRequest req = MERPATI__V1__ALIAS_REQUEST__INIT;
	Merpati__V1__AliasReply *resp = NULL;
	char when[32];
	size_t i;
	int ret;

	(void)nargs;
	ret = ctl_address_arg(c, "alias", args[0]);
	if (ret != CTL_EXIT_OK)
		return ret;
	req.alias = args[0];
	ret = ctl_call(c, "GetAlias", &req.base,
		       &merpati__v1__alias_reply__descriptor,
		       (ProtobufCMessage **)&resp);
	if (ret != CTL_EXIT_OK)
		return ret;
	printf("alias: %s\n", resp->alias);
	printf("shard: %u\n", resp->shard);
	printf("updated: %s\n", ctl_fmt_time(resp->updated, when, sizeof when));
	printf("targets: %zu\n", resp->n_targets);
	for (i = 0; i < resp->n_targets; i++)
		printf("target: %s\n", resp->targets[i]);
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return CTL_EXIT_OK;
}

static int ctl_alias_cmp(const void *x, const void *y)
{
	const Merpati__V1__AliasReply *a =
		*(const Merpati__V1__AliasReply *const *)x;
	const Merpati__V1__AliasReply *b =
		*(const Merpati__V1__AliasReply *const *)y;

	return strcmp(a->alias, b->alias);
}

/* Every page of one shard's aliases. Exit status. */
static int ctl_alias_list_shard(struct ctl *c, uint32_t shard,
				const char *domain, struct ctl_pages *l)
{
	Merpati__V1__ListAliasesRequest req =
		MERPATI__V1__LIST_ALIASES_REQUEST__INIT;
	char after[CTL_USER_LEN_MAX + 1] = "";
	int pages;

	req.shard = shard;
	req.domain = (char *)domain;
	req.limit = c->opt.page_size;
	for (pages = 0; pages < CTL_PAGES_MAX; pages++) {
		Merpati__V1__ListAliasesReply *resp = NULL;
		const char *last;
		int more, r;

		req.after = after;
		r = ctl_shard_page(c, "ListAliases", shard, &req.base,
				   &merpati__v1__list_aliases_reply__descriptor,
				   (ProtobufCMessage **)&resp);
		if (r == 1)
			return CTL_EXIT_OK;
		if (r < 0)
			return -r;
		more = resp->more;
		last = resp->n_aliases > 0 ?
		       resp->aliases[resp->n_aliases - 1]->alias : NULL;
		if (more && (last == NULL || strcmp(last, after) <= 0 ||
			     strlen(last) >= sizeof after)) {
			protobuf_c_message_free_unpacked(&resp->base, NULL);
			ctl_err(c, "ListAliases: the paging of shard %u did "
				"not advance", shard);
			return CTL_EXIT_ERROR;
		}
		if (more)
			snprintf(after, sizeof after, "%s", last);
		if (ctl_pages_add(l, &resp->base, (void *const *)resp->aliases,
				  resp->n_aliases) != 0) {
			protobuf_c_message_free_unpacked(&resp->base, NULL);
			ctl_err(c, "out of memory");
			return CTL_EXIT_ERROR;
		}
		if (!more)
			return CTL_EXIT_OK;
	}
	ctl_err(c, "ListAliases: too many pages from shard %u", shard);
	return CTL_EXIT_ERROR;
}

int ctl_cmd_alias_list(struct ctl *c, char **args, int nargs)
{
	struct ctl_pages l;
	const char *domain = "", *error;
	uint32_t shard, first, end;
	size_t i;
	int ret;

	if (nargs == 1) {
		if (ctl_check_domain(args[0], &error) != 0) {
			ctl_err(c, "bad domain \"%s\": %s", args[0], error);
			return CTL_EXIT_INVALID;
		}
		domain = args[0];
	}
	ret = ctl_shard_range(c, &first, &end);
	if (ret != CTL_EXIT_OK)
		return ret;
	memset(&l, 0, sizeof l);
	for (shard = first; shard < end && ret == CTL_EXIT_OK; shard++)
		ret = ctl_alias_list_shard(c, shard, domain, &l);
	if (ret != CTL_EXIT_OK) {
		ctl_pages_free(&l);
		return ret;
	}
	if (l.n > 0)
		qsort(l.v, l.n, sizeof *l.v, ctl_alias_cmp);
	for (i = 0; i < l.n; i++) {
		const Merpati__V1__AliasReply *a = l.v[i];
		const Merpati__V1__AliasReply *prev = i > 0 ? l.v[i - 1] : NULL;

		/* A shard that changed leader while we asked may be
		 * listed twice. */
		if (prev != NULL && strcmp(a->alias, prev->alias) == 0)
			continue;
		printf("%s targets=", a->alias);
		ctl_print_targets(a->targets, a->n_targets);
		printf(" shard=%u\n", a->shard);
	}
	ctl_pages_free(&l);
	return CTL_EXIT_OK;
}

/* --------------------------------------------------------------- queue */

static const char *ctl_rcpt_state(Merpati__V1__QueueRcptState st)
{
	switch (st) {
	case MERPATI__V1__QUEUE_RCPT_STATE__RCPT_PENDING: return "pending";
	case MERPATI__V1__QUEUE_RCPT_STATE__RCPT_DELIVERED: return "delivered";
	case MERPATI__V1__QUEUE_RCPT_STATE__RCPT_FAILED: return "failed";
	default: return "unknown";
	}
}

/* RFC 3461 §4.1 NOTIFY words of the bit mask, or "-" when none given. */
static const char *ctl_notify(uint32_t bits, char *out, size_t outlen)
{
	static const char *const names[] = { "SUCCESS", "FAILURE", "DELAY",
					     "NEVER" };
	size_t used = 0, i;

	out[0] = '\0';
	if (bits == 0)
		return "-";
	for (i = 0; i < 4; i++) {
		if (bits & (1u << i)) {
			int n = snprintf(out + used, outlen - used, "%s%s",
					 used > 0 ? "," : "", names[i]);

			if (n < 0 || (size_t)n >= outlen - used)
				break;
			used += (size_t)n;
		}
	}
	return out;
}

static const char *ctl_ms_time(uint64_t ms, char *out, size_t outlen)
{
	return ctl_fmt_time(ms / 1000, out, outlen);
}

static void ctl_queue_line(const Merpati__V1__QueueEntry *e)
{
	char due[32], until[32], err[CTL_QUEUE_TEXT_BUF];
	size_t pending = 0, i;

	for (i = 0; i < e->n_rcpts; i++) {
		if (e->rcpts[i]->state ==
		    MERPATI__V1__QUEUE_RCPT_STATE__RCPT_PENDING)
			pending++;
	}
	printf("%s due=%s attempts=%u pending=%zu/%zu size=%llu from=<%s>",
	       e->id, ctl_ms_time(e->due_ms, due, sizeof due), e->attempts,
	       pending, e->n_rcpts, (unsigned long long)e->size, e->sender);
	if (e->claimed_by != NULL && *e->claimed_by != '\0')
		printf(" claimed_by=%s until=%s", e->claimed_by,
		       ctl_ms_time(e->claim_until_ms, until, sizeof until));
	if (e->last_error != NULL && *e->last_error != '\0')
		printf(" error=%s",
		       ctl_fmt_name(e->last_error, err, sizeof err));
	printf("\n");
}

/* Every page of one shard's queue, printed as it comes. Exit status. */
static int ctl_queue_list_shard(struct ctl *c, uint32_t shard)
{
	Merpati__V1__QueueListRequest req =
		MERPATI__V1__QUEUE_LIST_REQUEST__INIT;
	char after[CTL_QUEUE_ID_LEN_MAX + 1] = "";
	int pages;

	req.shard = shard;
	req.limit = c->opt.page_size;
	for (pages = 0; pages < CTL_PAGES_MAX; pages++) {
		Merpati__V1__QueueListReply *resp = NULL;
		const char *last;
		size_t i;
		int more, r;

		req.after = after;
		r = ctl_shard_page(c, "QueueList", shard, &req.base,
				   &merpati__v1__queue_list_reply__descriptor,
				   (ProtobufCMessage **)&resp);
		if (r == 1)
			return CTL_EXIT_OK;
		if (r < 0)
			return -r;
		for (i = 0; i < resp->n_entries; i++)
			ctl_queue_line(resp->entries[i]);
		more = resp->more;
		last = resp->n_entries > 0 ?
		       resp->entries[resp->n_entries - 1]->id : NULL;
		if (more && (last == NULL || strcmp(last, after) <= 0 ||
			     strlen(last) >= sizeof after)) {
			protobuf_c_message_free_unpacked(&resp->base, NULL);
			ctl_err(c, "QueueList: the paging of shard %u did not "
				"advance", shard);
			return CTL_EXIT_ERROR;
		}
		if (more)
			snprintf(after, sizeof after, "%s", last);
		protobuf_c_message_free_unpacked(&resp->base, NULL);
		if (!more)
			return CTL_EXIT_OK;
	}
	ctl_err(c, "QueueList: too many pages from shard %u", shard);
	return CTL_EXIT_ERROR;
}

int ctl_cmd_queue_list(struct ctl *c, char **args, int nargs)
{
	uint32_t shard, first, end;
	int ret;

	(void)args;
	(void)nargs;
	ret = ctl_shard_range(c, &first, &end);
	for (shard = first; shard < end && ret == CTL_EXIT_OK; shard++)
		ret = ctl_queue_list_shard(c, shard);
	return ret;
}

int ctl_cmd_queue_show(struct ctl *c, char **args, int nargs)
{
	Merpati__V1__QueueIdRequest req = MERPATI__V1__QUEUE_ID_REQUEST__INIT;
	Merpati__V1__QueuedMessage *resp = NULL;
	const Merpati__V1__QueueEntry *e;
	char t[32], notify[64], text[CTL_QUEUE_TEXT_BUF];
	uint32_t shard;
	size_t i;
	int ret;

	(void)nargs;
	ret = ctl_queue_id_arg(c, args[0], &shard);
	if (ret != CTL_EXIT_OK)
		return ret;
	req.shard = shard;
	req.id = args[0];
	ret = ctl_call(c, "QueueGet", &req.base,
		       &merpati__v1__queued_message__descriptor,
		       (ProtobufCMessage **)&resp);
	if (ret != CTL_EXIT_OK)
		return ret;
	e = resp->entry;
	if (e == NULL) {
		protobuf_c_message_free_unpacked(&resp->base, NULL);
		ctl_err(c, "QueueGet: the node sent no entry");
		return CTL_EXIT_ERROR;
	}
	printf("id: %s\n", e->id);
	printf("shard: %u\n", shard);
	printf("sender: <%s>\n", e->sender);
	printf("from_user: %s\n", *e->from_user ? e->from_user : "-");
	printf("created: %s\n", ctl_ms_time(e->created_ms, t, sizeof t));
	printf("due: %s\n", ctl_ms_time(e->due_ms, t, sizeof t));
	printf("expires: %s\n", ctl_ms_time(e->expires_ms, t, sizeof t));
	printf("attempts: %u\n", e->attempts);
	printf("claimed_by: %s\n", *e->claimed_by ? e->claimed_by : "-");
	printf("claim_until: %s\n",
	       ctl_ms_time(e->claim_until_ms, t, sizeof t));
	printf("size: %llu bytes\n", (unsigned long long)e->size);
	printf("envid: %s\n", *e->envid ? e->envid : "-");
	printf("ret: %s\n", e->ret_full ? "full" : "hdrs");
	printf("last_error: %s\n", *e->last_error ?
	       ctl_fmt_name(e->last_error, text, sizeof text) : "-");
	for (i = 0; i < e->n_rcpts; i++) {
		const Merpati__V1__QueueRcpt *r = e->rcpts[i];

		printf("rcpt: %s state=%s code=%u notify=%s orcpt=%s",
		       r->address, ctl_rcpt_state(r->state), r->last_code,
		       ctl_notify(r->notify, notify, sizeof notify),
		       *r->orcpt ? r->orcpt : "-");
		if (*r->last_text)
			printf(" text=%s", ctl_fmt_name(r->last_text, text,
							sizeof text));
		printf("\n");
	}
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return CTL_EXIT_OK;
}

/* Prints "<before><id><after>" when done. */
static int ctl_queue_id_cmd(struct ctl *c, const char *method, char *id,
			    const char *before, const char *after)
{
	Merpati__V1__QueueIdRequest req = MERPATI__V1__QUEUE_ID_REQUEST__INIT;
	uint32_t shard;
	int ret;

	ret = ctl_queue_id_arg(c, id, &shard);
	if (ret != CTL_EXIT_OK)
		return ret;
	req.shard = shard;
	req.id = id;
	ret = ctl_call_empty(c, method, &req.base);
	if (ret != CTL_EXIT_OK)
		return ret;
	printf("%s%s%s\n", before, id, after);
	return CTL_EXIT_OK;
}

int ctl_cmd_queue_retry(struct ctl *c, char **args, int nargs)
{
	(void)nargs;
	return ctl_queue_id_cmd(c, "QueueRetry", args[0], "queue entry ",
				" is due now");
}

int ctl_cmd_queue_delete(struct ctl *c, char **args, int nargs)
{
	(void)nargs;
	return ctl_queue_id_cmd(c, "QueueDelete", args[0],
				"deleted queue entry ", "");
}
