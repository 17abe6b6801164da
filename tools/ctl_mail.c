/*
 * ctl_mail: merpatictl's mailbox and message commands.
 *
 * Bodies go in whole from stdin (bounded by CTL_BODY_MAX) and come out in
 * FetchBody ranges of CTL_BODY_CHUNK bytes, written to stdout byte for byte:
 * nothing here may translate line ends or stop at a NUL. Listings page
 * through the node's replies and stop if a page does not move forward.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "mp_buf.h"
#include "mp_error.h"
#include "mp_uidset.h"

/* Checks USER (lower-cased in place) and, if not NULL, mailbox names. */
static int ctl_mail_args(struct ctl *c, char *user, const char *mbox1,
			 const char *mbox2)
{
	const char *mboxes[2] = { mbox1, mbox2 };
	char shown[2 * CTL_MAILBOX_LEN_MAX + 8];
	const char *error;
	size_t i;

	if (ctl_check_user(user, &error) != 0) {
		ctl_err(c, "bad user %s: %s",
			ctl_fmt_name(user, shown, sizeof shown), error);
		return CTL_EXIT_INVALID;
	}
	for (i = 0; i < 2; i++) {
		if (mboxes[i] != NULL &&
		    ctl_check_mailbox(mboxes[i], &error) != 0) {
			ctl_err(c, "bad mailbox name %s: %s",
				ctl_fmt_name(mboxes[i], shown, sizeof shown),
				error);
			return CTL_EXIT_INVALID;
		}
	}
	return CTL_EXIT_OK;
}

static int ctl_uidset_arg(struct ctl *c, const char *set)
{
	const char *error = NULL;

	if (ctl_check_uidset(set, &error) != 0) {
		ctl_err(c, "bad UID set \"%s\": %s", set,
			error != NULL ? error : "not a sequence set");
		return CTL_EXIT_INVALID;
	}
	return CTL_EXIT_OK;
}

/* Prints "a,b,c" for a list of UIDs. */
static void ctl_print_uids(const uint32_t *uids, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		printf("%s%u", i > 0 ? "," : "", uids[i]);
}

/* ----------------------------------------------------------- mailboxes */

int ctl_cmd_mailbox_list(struct ctl *c, char **args, int nargs)
{
	Merpati__V1__ListMailboxesRequest req =
		MERPATI__V1__LIST_MAILBOXES_REQUEST__INIT;
	Merpati__V1__ListMailboxesReply *resp = NULL;
	char name[2 * CTL_MAILBOX_LEN_MAX + 8];
	size_t i;
	int ret;

	(void)nargs;
	ret = ctl_mail_args(c, args[0], NULL, NULL);
	if (ret != CTL_EXIT_OK)
		return ret;
	req.user = args[0];
	ret = ctl_call(c, "ListMailboxes", &req.base,
		       &merpati__v1__list_mailboxes_reply__descriptor,
		       (ProtobufCMessage **)&resp);
	if (ret != CTL_EXIT_OK)
		return ret;
	for (i = 0; i < resp->n_mailboxes; i++) {
		const Merpati__V1__MailboxInfo *mb = resp->mailboxes[i];
		Merpati__V1__StatusRequest sreq =
			MERPATI__V1__STATUS_REQUEST__INIT;
		Merpati__V1__StatusReply *st = NULL;
		const Merpati__V1__MailboxInfo *info = mb;

		sreq.user = args[0];
		sreq.name = mb->name;
		ret = ctl_call(c, "Status", &sreq.base,
			       &merpati__v1__status_reply__descriptor,
			       (ProtobufCMessage **)&st);
		if (ret == CTL_EXIT_NOTFOUND)
			continue;  /* deleted since the listing */
		if (ret != CTL_EXIT_OK) {
			protobuf_c_message_free_unpacked(&resp->base, NULL);
			return ret;
		}
		/* Status is newer than the listing. */
		if (st->mailbox != NULL)
			info = st->mailbox;
		printf("%s special-use=%s subscribed=%s messages=%u unseen=%u "
		       "uidnext=%u uidvalidity=%u highestmodseq=%llu\n",
		       ctl_fmt_name(mb->name, name, sizeof name),
		       mb->special_use != NULL && mb->special_use[0] != '\0' ?
		       mb->special_use : "-",
		       mb->subscribed ? "yes" : "no", st->messages, st->unseen,
		       info->uidnext, info->uidvalidity,
		       (unsigned long long)info->highestmodseq);
		protobuf_c_message_free_unpacked(&st->base, NULL);
	}
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return CTL_EXIT_OK;
}

int ctl_cmd_mailbox_create(struct ctl *c, char **args, int nargs)
{
	Merpati__V1__CreateMailboxRequest req =
		MERPATI__V1__CREATE_MAILBOX_REQUEST__INIT;
	Merpati__V1__MailboxReply *resp = NULL;
	char name[2 * CTL_MAILBOX_LEN_MAX + 8];
	int ret;

	(void)nargs;
	ret = ctl_mail_args(c, args[0], args[1], NULL);
	if (ret != CTL_EXIT_OK)
		return ret;
	req.user = args[0];
	req.name = args[1];
	ret = ctl_call(c, "CreateMailbox", &req.base,
		       &merpati__v1__mailbox_reply__descriptor,
		       (ProtobufCMessage **)&resp);
	if (ret != CTL_EXIT_OK)
		return ret;
	if (resp->mailbox != NULL)
		printf("created mailbox %s id=%u uidvalidity=%u\n",
		       ctl_fmt_name(resp->mailbox->name, name, sizeof name),
		       resp->mailbox->id, resp->mailbox->uidvalidity);
	else
		printf("created mailbox %s\n",
		       ctl_fmt_name(args[1], name, sizeof name));
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return CTL_EXIT_OK;
}

int ctl_cmd_mailbox_rename(struct ctl *c, char **args, int nargs)
{
	Merpati__V1__RenameMailboxRequest req =
		MERPATI__V1__RENAME_MAILBOX_REQUEST__INIT;
	char from[2 * CTL_MAILBOX_LEN_MAX + 8], to[2 * CTL_MAILBOX_LEN_MAX + 8];
	int ret;

	(void)nargs;
	ret = ctl_mail_args(c, args[0], args[1], args[2]);
	if (ret != CTL_EXIT_OK)
		return ret;
	req.user = args[0];
	req.name = args[1];
	req.new_name = args[2];
	ret = ctl_call_empty(c, "RenameMailbox", &req.base);
	if (ret != CTL_EXIT_OK)
		return ret;
	printf("renamed mailbox %s to %s\n",
	       ctl_fmt_name(args[1], from, sizeof from),
	       ctl_fmt_name(args[2], to, sizeof to));
	return CTL_EXIT_OK;
}

int ctl_cmd_mailbox_delete(struct ctl *c, char **args, int nargs)
{
	Merpati__V1__MailboxRequest req = MERPATI__V1__MAILBOX_REQUEST__INIT;
	char name[2 * CTL_MAILBOX_LEN_MAX + 8];
	int ret;

	(void)nargs;
	ret = ctl_mail_args(c, args[0], args[1], NULL);
	if (ret != CTL_EXIT_OK)
		return ret;
	req.user = args[0];
	req.name = args[1];
	ret = ctl_call_empty(c, "DeleteMailbox", &req.base);
	if (ret != CTL_EXIT_OK)
		return ret;
	printf("deleted mailbox %s\n", ctl_fmt_name(args[1], name, sizeof name));
	return CTL_EXIT_OK;
}

/* ------------------------------------------------------------ messages */

int ctl_cmd_msg_append(struct ctl *c, char **args, int nargs)
{
	Merpati__V1__AppendRequest req = MERPATI__V1__APPEND_REQUEST__INIT;
	Merpati__V1__AppendReply *resp = NULL;
	struct ctl_flags flags = { 0 };
	const char *error = NULL;
	uint8_t *body = NULL;
	size_t len = 0;
	int ret, err;

	(void)nargs;
	ret = ctl_mail_args(c, args[0], args[1], NULL);
	if (ret != CTL_EXIT_OK)
		return ret;
	if (c->opt.flags != NULL &&
	    ctl_flags_parse(c->opt.flags, &flags, &error) != 0) {
		ctl_err(c, "bad --flags \"%s\": %s", c->opt.flags, error);
		return CTL_EXIT_INVALID;
	}
	err = ctl_read_all_stdin(CTL_BODY_MAX, &body, &len, &error);
	if (err != 0) {
		ctl_flags_free(&flags);
		ctl_err(c, "%s", error);
		return ctl_exit_for(err);
	}
	req.user = args[0];
	req.mailbox = args[1];
	req.body.data = body;
	req.body.len = len;
	req.flags = flags.v;
	req.n_flags = flags.n;
	ret = ctl_call(c, "Append", &req.base,
		       &merpati__v1__append_reply__descriptor,
		       (ProtobufCMessage **)&resp);
	free(body);
	ctl_flags_free(&flags);
	if (ret != CTL_EXIT_OK)
		return ret;
	printf("uid=%u uidvalidity=%u\n", resp->uid, resp->uidvalidity);
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return CTL_EXIT_OK;
}

/* The part of set above UID last, as sequence-set text in *out_r
 * (malloc'd), or NULL when nothing of it is left. 0 or MP_ENOMEM. */
static int ctl_uidset_after(const struct mp_uidset *set, uint32_t last,
			    char **out_r)
{
	struct mp_buf b;
	size_t i, len;
	int err = 0;

	*out_r = NULL;
	if (last >= MP_UIDSET_STAR - 1)
		return 0;
	mp_buf_init(&b, 0);
	for (i = 0; i < set->n && err == 0; i++) {
		uint32_t lo = set->r[i].lo, hi = set->r[i].hi;
		const char *sep = b.len > 0 ? "," : "";

		if (hi != MP_UIDSET_STAR && hi <= last)
			continue;
		if (lo != MP_UIDSET_STAR && lo <= last)
			lo = last + 1;
		if (lo == MP_UIDSET_STAR)
			err = mp_buf_printf(&b, "%s*", sep);
		else if (hi == MP_UIDSET_STAR)
			err = mp_buf_printf(&b, "%s%u:*", sep, lo);
		else if (lo == hi)
			err = mp_buf_printf(&b, "%s%u", sep, lo);
		else
			err = mp_buf_printf(&b, "%s%u:%u", sep, lo, hi);
	}
	if (err == 0 && b.len > 0) {
		*out_r = mp_buf_steal(&b, &len);
		if (*out_r == NULL)
			err = MP_ENOMEM;
	}
	mp_buf_free(&b);
	return err;
}

int ctl_cmd_msg_list(struct ctl *c, char **args, int nargs)
{
	Merpati__V1__FetchIndexRequest req =
		MERPATI__V1__FETCH_INDEX_REQUEST__INIT;
	struct mp_uidset set = { 0 };
	const char *error = NULL;
	const char *text = nargs == 3 ? args[2] : "1:*";
	char *page_set = NULL;
	char flags[4096], when[32];
	uint32_t last = 0;
	int pages, ret, any = 0;

	ret = ctl_mail_args(c, args[0], args[1], NULL);
	if (ret != CTL_EXIT_OK)
		return ret;
	ret = ctl_uidset_arg(c, text);
	if (ret != CTL_EXIT_OK)
		return ret;
	if (mp_uidset_parse(text, strlen(text), &set, &error) != 0) {
		ctl_err(c, "bad UID set \"%s\"", text);
		return CTL_EXIT_INVALID;
	}
	req.user = args[0];
	req.mailbox = args[1];
	req.limit = c->opt.page_size;
	ret = CTL_EXIT_OK;
	for (pages = 0; pages < CTL_PAGES_MAX; pages++) {
		Merpati__V1__FetchIndexReply *resp = NULL;
		uint32_t page_last = last;
		size_t i;
		int more;

		req.uid_set = page_set != NULL ? page_set : (char *)text;
		ret = ctl_call(c, "FetchIndex", &req.base,
			       &merpati__v1__fetch_index_reply__descriptor,
			       (ProtobufCMessage **)&resp);
		if (ret != CTL_EXIT_OK)
			break;
		for (i = 0; i < resp->n_messages; i++) {
			const Merpati__V1__MessageIndex *m = resp->messages[i];

			/* "n:*" may reach back below n (RFC 3501 §6.4.8)
			 * and so repeat a message of an earlier page. */
			if (any && m->uid <= last)
				continue;
			printf("uid=%u flags=%s size=%llu modseq=%llu "
			       "date=%s\n", m->uid,
			       ctl_fmt_flags(m->flags, m->n_flags, flags,
					     sizeof flags),
			       (unsigned long long)m->size,
			       (unsigned long long)m->modseq,
			       ctl_fmt_time(m->internal_date, when,
					    sizeof when));
			if (m->uid > page_last)
				page_last = m->uid;
		}
		more = resp->more;
		protobuf_c_message_free_unpacked(&resp->base, NULL);
		if (!more)
			break;
		if (page_last == last && any) {
			ctl_err(c, "FetchIndex: the node's paging did not "
				"advance");
			ret = CTL_EXIT_ERROR;
			break;
		}
		if (page_last == 0) {
			ctl_err(c, "FetchIndex: the node said more but sent "
				"no message");
			ret = CTL_EXIT_ERROR;
			break;
		}
		any = 1;
		last = page_last;
		free(page_set);
		if (ctl_uidset_after(&set, last, &page_set) != 0) {
			ctl_err(c, "out of memory");
			ret = CTL_EXIT_ERROR;
			break;
		}
		if (page_set == NULL)
			break;
	}
	if (pages == CTL_PAGES_MAX) {
		ctl_err(c, "FetchIndex: too many pages");
		ret = CTL_EXIT_ERROR;
	}
	free(page_set);
	mp_uidset_free(&set);
	return ret;
}

int ctl_cmd_msg_fetch(struct ctl *c, char **args, int nargs)
{
	Merpati__V1__FetchBodyRequest req = MERPATI__V1__FETCH_BODY_REQUEST__INIT;
	uint64_t offset = 0, total = 0;
	uint32_t uid;
	int ret, first = 1;

	(void)nargs;
	ret = ctl_mail_args(c, args[0], args[1], NULL);
	if (ret != CTL_EXIT_OK)
		return ret;
	if (ctl_parse_uid(args[2], &uid) != 0) {
		ctl_err(c, "bad UID \"%s\": expected 1..4294967295", args[2]);
		return CTL_EXIT_INVALID;
	}
	req.user = args[0];
	req.mailbox = args[1];
	req.uid = uid;
	while (first || offset < total) {
		Merpati__V1__FetchBodyReply *resp = NULL;

		req.offset = offset;
		req.length = CTL_BODY_CHUNK;
		ret = ctl_call(c, "FetchBody", &req.base,
			       &merpati__v1__fetch_body_reply__descriptor,
			       (ProtobufCMessage **)&resp);
		if (ret != CTL_EXIT_OK)
			return ret;
		if (first)
			total = resp->total_size;
		first = 0;
		/* A body never changes; a range that does not fit it, or
		 * does not move forward, is the node's error. */
		if (resp->total_size != total ||
		    resp->data.len > total - offset ||
		    resp->data.len > CTL_BODY_CHUNK ||
		    (resp->data.len == 0 && offset < total)) {
			protobuf_c_message_free_unpacked(&resp->base, NULL);
			ctl_err(c, "FetchBody: inconsistent range from the node "
				"at offset %llu of %llu",
				(unsigned long long)offset,
				(unsigned long long)total);
			return CTL_EXIT_ERROR;
		}
		if (ctl_write_stdout(resp->data.data, resp->data.len) != 0) {
			protobuf_c_message_free_unpacked(&resp->base, NULL);
			ctl_err(c, "writing the body to stdout failed");
			return CTL_EXIT_ERROR;
		}
		offset += resp->data.len;
		protobuf_c_message_free_unpacked(&resp->base, NULL);
	}
	return CTL_EXIT_OK;
}

int ctl_cmd_msg_flags(struct ctl *c, char **args, int nargs)
{
	Merpati__V1__StoreFlagsRequest req =
		MERPATI__V1__STORE_FLAGS_REQUEST__INIT;
	Merpati__V1__StoreFlagsReply *resp = NULL;
	struct ctl_flags flags = { 0 };
	const char *error = NULL;
	char text[4096];
	size_t i;
	int ret;

	ret = ctl_mail_args(c, args[0], args[1], NULL);
	if (ret != CTL_EXIT_OK)
		return ret;
	ret = ctl_uidset_arg(c, args[2]);
	if (ret != CTL_EXIT_OK)
		return ret;
	if (strcmp(args[3], "add") == 0)
		req.mode = MERPATI__V1__FLAG_MODE__FLAGS_ADD;
	else if (strcmp(args[3], "remove") == 0)
		req.mode = MERPATI__V1__FLAG_MODE__FLAGS_REMOVE;
	else if (strcmp(args[3], "replace") == 0)
		req.mode = MERPATI__V1__FLAG_MODE__FLAGS_REPLACE;
	else
		return ctl_usage_error(c, "mode must be add, remove or "
				       "replace, not \"%s\"", args[3]);
	if (ctl_flags_parse_many(args + 4, nargs - 4, &flags, &error) != 0) {
		ctl_err(c, "bad flags: %s", error);
		return CTL_EXIT_INVALID;
	}
	if (flags.n == 0 && req.mode != MERPATI__V1__FLAG_MODE__FLAGS_REPLACE) {
		ctl_flags_free(&flags);
		return ctl_usage_error(c, "%s needs at least one flag",
				       args[3]);
	}
	req.user = args[0];
	req.mailbox = args[1];
	req.uid_set = args[2];
	req.flags = flags.v;
	req.n_flags = flags.n;
	ret = ctl_call(c, "StoreFlags", &req.base,
		       &merpati__v1__store_flags_reply__descriptor,
		       (ProtobufCMessage **)&resp);
	ctl_flags_free(&flags);
	if (ret != CTL_EXIT_OK)
		return ret;
	for (i = 0; i < resp->n_updated; i++) {
		const Merpati__V1__FlagUpdate *u = resp->updated[i];

		printf("uid=%u flags=%s modseq=%llu\n", u->uid,
		       ctl_fmt_flags(u->flags, u->n_flags, text, sizeof text),
		       (unsigned long long)u->modseq);
	}
	for (i = 0; i < resp->n_modified; i++)
		printf("uid=%u not-changed\n", resp->modified[i]);
	printf("highestmodseq=%llu\n", (unsigned long long)resp->highestmodseq);
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return CTL_EXIT_OK;
}

int ctl_cmd_msg_expunge(struct ctl *c, char **args, int nargs)
{
	Merpati__V1__ExpungeRequest req = MERPATI__V1__EXPUNGE_REQUEST__INIT;
	Merpati__V1__ExpungeReply *resp = NULL;
	int ret;

	(void)nargs;
	ret = ctl_mail_args(c, args[0], args[1], NULL);
	if (ret != CTL_EXIT_OK)
		return ret;
	ret = ctl_uidset_arg(c, args[2]);
	if (ret != CTL_EXIT_OK)
		return ret;
	req.user = args[0];
	req.mailbox = args[1];
	req.uid_set = args[2];
	ret = ctl_call(c, "Expunge", &req.base,
		       &merpati__v1__expunge_reply__descriptor,
		       (ProtobufCMessage **)&resp);
	if (ret != CTL_EXIT_OK)
		return ret;
	printf("expunged=");
	ctl_print_uids(resp->expunged, resp->n_expunged);
	printf(" highestmodseq=%llu\n",
	       (unsigned long long)resp->highestmodseq);
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return CTL_EXIT_OK;
}

static int ctl_copy_or_move(struct ctl *c, char **args, const char *method)
{
	Merpati__V1__CopyRequest req = MERPATI__V1__COPY_REQUEST__INIT;
	Merpati__V1__CopyReply *resp = NULL;
	int ret;

	ret = ctl_mail_args(c, args[0], args[1], args[3]);
	if (ret != CTL_EXIT_OK)
		return ret;
	ret = ctl_uidset_arg(c, args[2]);
	if (ret != CTL_EXIT_OK)
		return ret;
	req.user = args[0];
	req.mailbox = args[1];
	req.uid_set = args[2];
	req.dest_mailbox = args[3];
	ret = ctl_call(c, method, &req.base,
		       &merpati__v1__copy_reply__descriptor,
		       (ProtobufCMessage **)&resp);
	if (ret != CTL_EXIT_OK)
		return ret;
	/* The same pairs as IMAP's COPYUID (RFC 4315 §3). */
	printf("uidvalidity=%u src=", resp->dest_uidvalidity);
	ctl_print_uids(resp->src_uids, resp->n_src_uids);
	printf(" dest=");
	ctl_print_uids(resp->dest_uids, resp->n_dest_uids);
	printf("\n");
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return CTL_EXIT_OK;
}

int ctl_cmd_msg_copy(struct ctl *c, char **args, int nargs)
{
	(void)nargs;
	return ctl_copy_or_move(c, args, "Copy");
}

int ctl_cmd_msg_move(struct ctl *c, char **args, int nargs)
{
	(void)nargs;
	return ctl_copy_or_move(c, args, "Move");
}
