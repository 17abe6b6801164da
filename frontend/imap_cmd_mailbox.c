/*
 * imap_cmd_mailbox: IMAP commands on mailboxes (SELECT/EXAMINE, CREATE,
 * DELETE, RENAME, SUBSCRIBE/UNSUBSCRIBE, LIST/LSUB with LIST-EXTENDED and
 * LIST-STATUS, STATUS, APPEND with MULTIAPPEND, GETQUOTA(ROOT), CLOSE and
 * UNSELECT). Worker threads; see imap_sess.h.
 */
#include "imap_sess.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "imap_mime.h"
#include "imap_parse.h"
#include "mailstore.pb-c.h"
#include "mp_error.h"
#include "mp_uidset.h"

#define LIST_PATTERNS_MAX 64
#define APPEND_MESSAGES_MAX 1000

static const char *const system_flags[] = {
	"\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft",
};

/* ---------------------------------------------------------------- SELECT */

struct qresync_arg {
	bool given;
	uint32_t uidvalidity;
	uint64_t modseq;
	const char *known;  /* known-uids or NULL */
};

static int parse_select_params(struct imap_sess *s, const struct imap_command *cmd,
			       bool *condstore_r, struct qresync_arg *qr)
{
	*condstore_r = false;
	memset(qr, 0, sizeof(*qr));
	if (cmd->nargs == 1)
		return 0;
	if (cmd->nargs != 2 || cmd->args[1].type != IMAP_ARG_LIST)
		return MP_EINVAL;
	const struct imap_arg *l = &cmd->args[1];
	for (size_t i = 0; i < l->nlist; i++) {
		const struct imap_arg *a = &l->list[i];
		if (imap_arg_is_atom(a, "CONDSTORE")) {
			*condstore_r = true;
		} else if (imap_arg_is_atom(a, "QRESYNC") && i + 1 < l->nlist &&
			   l->list[i + 1].type == IMAP_ARG_LIST) {
			if (!s->qresync)
				return MP_EINVAL; /* RFC 7162 §3.2.5: ENABLE QRESYNC first */
			const struct imap_arg *p = &l->list[++i];
			if (p->nlist < 2 || !imap_arg_number(&p->list[0], &qr->uidvalidity) ||
			    !imap_arg_number64(&p->list[1], &qr->modseq))
				return MP_EINVAL;
			if (p->nlist >= 3 && p->list[2].type == IMAP_ARG_ATOM)
				qr->known = p->list[2].s;
			qr->given = true;
		} else {
			return MP_EINVAL;
		}
	}
	return 0;
}

/* Load the UIDs of the selected mailbox (all pages) into s->sel. */
static int load_uids(struct imap_sess *s, uint64_t *hms_r, uint32_t *first_unseen_r,
		     char **err_r)
{
	uint32_t from = 1;
	*hms_r = 0;
	*first_unseen_r = 0;
	for (int page = 0; page < 100000; page++) {
		char set[32];
		snprintf(set, sizeof(set), "%u:*", from);
		Merpati__V1__FetchIndexRequest q = MERPATI__V1__FETCH_INDEX_REQUEST__INIT;
		q.user = s->user;
		q.mailbox = s->sel.name;
		q.uid_set = set;
		q.limit = 10000;
		Merpati__V1__FetchIndexReply *r = NULL;
		int ret = imap_call(s, "FetchIndex", &q.base,
				    &merpati__v1__fetch_index_reply__descriptor,
				    (ProtobufCMessage **)&r, err_r);
		if (ret < 0)
			return ret;
		if (page == 0) {
			*hms_r = r->highestmodseq;
			s->sel.uidvalidity = r->uidvalidity;
			s->sel.uidnext_seen = r->uidnext;
		}
		uint32_t last = 0;
		for (size_t i = 0; i < r->n_messages; i++) {
			const Merpati__V1__MessageIndex *m = r->messages[i];
			if (m->uid < from)
				continue; /* "n:*" with n above every UID gives the last */
			if ((ret = imap_sel_add(s, m->uid)) < 0) {
				protobuf_c_message_free_unpacked(&r->base, NULL);
				return ret;
			}
			bool seen = false;
			for (size_t f = 0; f < m->n_flags; f++)
				if (strcasecmp(m->flags[f], "\\Seen") == 0)
					seen = true;
			if (!seen && *first_unseen_r == 0)
				*first_unseen_r = imap_seq_of(s, m->uid);
			last = m->uid;
		}
		bool more = r->more && last != 0 && last < UINT32_MAX;
		protobuf_c_message_free_unpacked(&r->base, NULL);
		if (!more)
			return 0;
		from = last + 1;
	}
	return 0;
}

/* RFC 7162 §3.2.5.1: VANISHED (EARLIER) and FETCH for what changed since
 * the client's modseq. */
static void qresync_report(struct imap_sess *s, const struct qresync_arg *qr)
{
	struct mp_uidset known = { 0 };
	const char *perr;
	bool have_known = qr->known != NULL &&
			  mp_uidset_parse(qr->known, strlen(qr->known), &known, &perr) == 0;
	if (have_known)
		mp_uidset_resolve(&known, s->sel.uidnext_seen);
	uint32_t *gone = NULL;
	size_t ngone = 0;
	uint64_t cursor = qr->modseq;
	for (int page = 0; page < 1000; page++) {
		Merpati__V1__ChangesSinceRequest q = MERPATI__V1__CHANGES_SINCE_REQUEST__INIT;
		q.user = s->user;
		q.mailbox = s->sel.name;
		q.modseq = cursor;
		q.limit = 5000;
		Merpati__V1__ChangesSinceReply *r = NULL;
		char *err = NULL;
		int ret = imap_call(s, "ChangesSince", &q.base,
				    &merpati__v1__changes_since_reply__descriptor,
				    (ProtobufCMessage **)&r, &err);
		free(err);
		if (ret < 0)
			break;
		for (size_t i = 0; i < r->n_changes; i++) {
			const Merpati__V1__Change *ch = r->changes[i];
			cursor = ch->modseq;
			if (ch->modseq > s->sel.hms)
				continue; /* later than our snapshot: comes as an update */
			if (ch->kind == MERPATI__V1__CHANGE_KIND__CHANGE_EXPUNGE) {
				if (have_known && !mp_uidset_contains(&known, ch->uid))
					continue;
				uint32_t *g = realloc(gone, (ngone + 1) * sizeof(*g));
				if (g == NULL)
					continue;
				gone = g;
				gone[ngone++] = ch->uid;
				continue;
			}
			uint32_t seq = imap_seq_of(s, ch->uid);
			if (seq != 0)
				imap_out_flag_fetch(s, seq, ch->uid, true, ch->flags, ch->n_flags,
						    ch->modseq);
		}
		bool more = r->more;
		protobuf_c_message_free_unpacked(&r->base, NULL);
		if (!more)
			break;
	}
	if (ngone > 0) {
		/* ChangesSince is by modseq; VANISHED wants UIDs in order. */
		imap_sort_u32(gone, ngone);
		char *set = NULL;
		if (mp_uidset_format(gone, ngone, &set) == 0) {
			imap_out(s, "* VANISHED (EARLIER) %s\r\n", set);
			free(set);
		}
	}
	free(gone);
	mp_uidset_free(&known);
}

void imap_cmd_select(struct imap_sess *s, const struct imap_command *cmd)
{
	bool examine = strcmp(cmd->name, "EXAMINE") == 0;
	if (cmd->nargs < 1) {
		imap_tagged(s, cmd->tag, "BAD %s mailbox", cmd->name);
		return;
	}
	bool condstore;
	struct qresync_arg qr;
	if (parse_select_params(s, cmd, &condstore, &qr) < 0) {
		imap_tagged(s, cmd->tag, "BAD Invalid %s parameters", cmd->name);
		return;
	}
	char *name = imap_mailbox_arg(s, cmd->tag, &cmd->args[0]);
	if (name == NULL)
		return;
	if (s->sel.active) {
		imap_sel_clear(s);
		s->state = IMAP_S_AUTH;
		if (s->qresync || s->rev2)
			imap_out(s, "* OK [CLOSED] Previous mailbox closed\r\n");
	}
	if (condstore)
		s->condstore = true;
	Merpati__V1__StatusRequest q = MERPATI__V1__STATUS_REQUEST__INIT;
	q.user = s->user;
	q.name = name;
	q.claim_recent = !examine && !s->rev2;
	Merpati__V1__StatusReply *st = NULL;
	char *err = NULL;
	int ret = imap_call(s, "Status", &q.base, &merpati__v1__status_reply__descriptor,
			    (ProtobufCMessage **)&st, &err);
	if (ret < 0) {
		imap_no_for(s, cmd->tag, ret, err, examine ? "EXAMINE" : "SELECT");
		free(err);
		free(name);
		return;
	}
	s->sel.name = name;
	s->sel.readonly = examine;
	s->sel.id = st->mailbox ? st->mailbox->id : 0;
	uint32_t recent = st->recent;
	protobuf_c_message_free_unpacked(&st->base, NULL);
	uint64_t hms;
	uint32_t first_unseen;
	if ((ret = load_uids(s, &hms, &first_unseen, &err)) < 0) {
		imap_no_for(s, cmd->tag, ret, err, examine ? "EXAMINE" : "SELECT");
		free(err);
		imap_sel_clear(s);
		return;
	}
	s->sel.active = true;
	s->sel.hms = hms;
	if (!examine) {
		if (recent > 0 && recent <= s->sel.n)
			s->sel.recent_from = s->sel.uids[s->sel.n - recent];
		else
			s->sel.recent_from = s->sel.uidnext_seen ? s->sel.uidnext_seen : 1;
	}
	s->state = IMAP_S_SELECTED;
	imap_out(s, "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n");
	if (examine)
		imap_out(s, "* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n");
	else
		imap_out(s, "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen "
			    "\\Draft \\*)] Flags permitted\r\n");
	imap_out(s, "* %zu EXISTS\r\n", s->sel.n);
	if (!s->rev2) {
		imap_out(s, "* %u RECENT\r\n", imap_recent_count(s));
		if (first_unseen != 0)
			imap_out(s, "* OK [UNSEEN %u] First unseen\r\n", first_unseen);
	}
	imap_out(s, "* OK [UIDVALIDITY %u] UIDs valid\r\n", s->sel.uidvalidity);
	imap_out(s, "* OK [UIDNEXT %u] Predicted next UID\r\n", s->sel.uidnext_seen);
	imap_out(s, "* OK [HIGHESTMODSEQ %llu] Highest\r\n", (unsigned long long)hms);
	imap_out(s, "* OK [MAILBOXID (F%08x%08x)] Ok\r\n", s->sel.id, s->sel.uidvalidity);
	if (qr.given && qr.uidvalidity == s->sel.uidvalidity)
		qresync_report(s, &qr);
	imap_tagged(s, cmd->tag, "OK [%s] %s completed", examine ? "READ-ONLY" : "READ-WRITE",
		    cmd->name);
}

void imap_cmd_close(struct imap_sess *s, const struct imap_command *cmd)
{
	if (cmd->nargs != 0) {
		imap_tagged(s, cmd->tag, "BAD %s takes no arguments", cmd->name);
		return;
	}
	if (strcmp(cmd->name, "CLOSE") == 0 && !s->sel.readonly) {
		/* RFC 3501 §6.4.2: expunge silently. */
		Merpati__V1__ExpungeRequest q = MERPATI__V1__EXPUNGE_REQUEST__INIT;
		q.user = s->user;
		q.mailbox = s->sel.name;
		q.uid_set = "1:*";
		q.only_deleted = true;
		Merpati__V1__ExpungeReply *r = NULL;
		char *err = NULL;
		int ret = imap_call(s, "Expunge", &q.base, &merpati__v1__expunge_reply__descriptor,
				    (ProtobufCMessage **)&r, &err);
		free(err);
		if (r != NULL)
			protobuf_c_message_free_unpacked(&r->base, NULL);
		(void)ret; /* CLOSE always deselects (RFC 3501 §6.4.2) */
	}
	imap_sel_clear(s);
	s->state = IMAP_S_AUTH;
	imap_tagged(s, cmd->tag, "OK %s completed", cmd->name);
}

/* ----------------------------------------------- CREATE DELETE RENAME */

void imap_cmd_create(struct imap_sess *s, const struct imap_command *cmd)
{
	if (cmd->nargs < 1 || cmd->nargs > 2) {
		imap_tagged(s, cmd->tag, "BAD CREATE mailbox [(USE (attr))]");
		return;
	}
	const char *use = NULL;
	if (cmd->nargs == 2) {
		/* RFC 6154 §3: CREATE name (USE (\Sent)) */
		const struct imap_arg *l = &cmd->args[1];
		if (l->type != IMAP_ARG_LIST || l->nlist != 2 ||
		    !imap_arg_is_atom(&l->list[0], "USE") || l->list[1].type != IMAP_ARG_LIST ||
		    l->list[1].nlist > 1) {
			imap_tagged(s, cmd->tag, "BAD Invalid CREATE parameters");
			return;
		}
		if (l->list[1].nlist == 1) {
			use = l->list[1].list[0].s;
			if (l->list[1].list[0].type != IMAP_ARG_ATOM || use == NULL) {
				imap_tagged(s, cmd->tag, "BAD Invalid USE attribute");
				return;
			}
		}
	}
	char *name = imap_mailbox_arg(s, cmd->tag, &cmd->args[0]);
	if (name == NULL)
		return;
	if (strcmp(name, "INBOX") == 0) {
		imap_tagged(s, cmd->tag, "NO [ALREADYEXISTS] INBOX always exists");
		free(name);
		return;
	}
	Merpati__V1__CreateMailboxRequest q = MERPATI__V1__CREATE_MAILBOX_REQUEST__INIT;
	q.user = s->user;
	q.name = name;
	q.special_use = (char *)(use ? use : "");
	Merpati__V1__MailboxReply *r = NULL;
	char *err = NULL;
	int ret = imap_call(s, "CreateMailbox", &q.base, &merpati__v1__mailbox_reply__descriptor,
			    (ProtobufCMessage **)&r, &err);
	if (ret < 0) {
		if (use != NULL && ret == MP_EINVAL)
			imap_tagged(s, cmd->tag, "NO [USEATTR] %s", err ? err : "Invalid USE");
		else
			imap_no_for(s, cmd->tag, ret, err, "CREATE");
	} else {
		imap_tagged(s, cmd->tag, "OK [MAILBOXID (F%08x%08x)] CREATE completed",
			    r->mailbox ? r->mailbox->id : 0, r->mailbox ? r->mailbox->uidvalidity : 0);
		protobuf_c_message_free_unpacked(&r->base, NULL);
	}
	free(err);
	free(name);
}

static void simple_call(struct imap_sess *s, const struct imap_command *cmd,
			const char *method, const ProtobufCMessage *req, const char *what)
{
	ProtobufCMessage *r = NULL;
	char *err = NULL;
	int ret = imap_call(s, method, req, &merpati__v1__empty__descriptor, &r, &err);
	if (ret < 0)
		imap_no_for(s, cmd->tag, ret, err, what);
	else
		imap_tagged(s, cmd->tag, "OK %s completed", what);
	if (r != NULL)
		protobuf_c_message_free_unpacked(r, NULL);
	free(err);
}

void imap_cmd_delete(struct imap_sess *s, const struct imap_command *cmd)
{
	if (cmd->nargs != 1) {
		imap_tagged(s, cmd->tag, "BAD DELETE mailbox");
		return;
	}
	char *name = imap_mailbox_arg(s, cmd->tag, &cmd->args[0]);
	if (name == NULL)
		return;
	if (strcmp(name, "INBOX") == 0) {
		imap_tagged(s, cmd->tag, "NO [CANNOT] INBOX cannot be deleted");
		free(name);
		return;
	}
	Merpati__V1__MailboxRequest q = MERPATI__V1__MAILBOX_REQUEST__INIT;
	q.user = s->user;
	q.name = name;
	simple_call(s, cmd, "DeleteMailbox", &q.base, "DELETE");
	free(name);
}

/* RFC 3501 §6.3.5: renaming INBOX moves its messages to a new mailbox of
 * that name and leaves INBOX empty. Two writes (create, then move): a
 * failure in between leaves the new mailbox empty and INBOX untouched. */
static void rename_inbox(struct imap_sess *s, const struct imap_command *cmd, const char *to)
{
	Merpati__V1__CreateMailboxRequest cq = MERPATI__V1__CREATE_MAILBOX_REQUEST__INIT;
	cq.user = s->user;
	cq.name = (char *)to;
	cq.special_use = "";
	Merpati__V1__MailboxReply *cr = NULL;
	char *err = NULL;
	int ret = imap_call(s, "CreateMailbox", &cq.base, &merpati__v1__mailbox_reply__descriptor,
			    (ProtobufCMessage **)&cr, &err);
	if (cr != NULL)
		protobuf_c_message_free_unpacked(&cr->base, NULL);
	if (ret < 0) {
		imap_no_for(s, cmd->tag, ret, err, "RENAME");
		free(err);
		return;
	}
	free(err);
	err = NULL;
	Merpati__V1__StatusRequest sq = MERPATI__V1__STATUS_REQUEST__INIT;
	sq.user = s->user;
	sq.name = "INBOX";
	Merpati__V1__StatusReply *sr = NULL;
	ret = imap_call(s, "Status", &sq.base, &merpati__v1__status_reply__descriptor,
			(ProtobufCMessage **)&sr, &err);
	uint32_t messages = ret == 0 ? sr->messages : 0;
	if (sr != NULL)
		protobuf_c_message_free_unpacked(&sr->base, NULL);
	if (ret == 0 && messages > 0) {
		free(err);
		err = NULL;
		Merpati__V1__CopyRequest mq = MERPATI__V1__COPY_REQUEST__INIT;
		mq.user = s->user;
		mq.mailbox = "INBOX";
		mq.uid_set = "1:*";
		mq.dest_mailbox = (char *)to;
		Merpati__V1__CopyReply *mr = NULL;
		ret = imap_call(s, "Move", &mq.base, &merpati__v1__copy_reply__descriptor,
				(ProtobufCMessage **)&mr, &err);
		if (mr != NULL)
			protobuf_c_message_free_unpacked(&mr->base, NULL);
	}
	if (ret < 0)
		imap_no_for(s, cmd->tag, ret, err, "RENAME");
	else {
		imap_sync(s, true);
		imap_tagged(s, cmd->tag, "OK RENAME completed");
	}
	free(err);
}

void imap_cmd_rename(struct imap_sess *s, const struct imap_command *cmd)
{
	if (cmd->nargs != 2) {
		imap_tagged(s, cmd->tag, "BAD RENAME old new");
		return;
	}
	char *from = imap_mailbox_arg(s, cmd->tag, &cmd->args[0]);
	if (from == NULL)
		return;
	char *to = imap_mailbox_arg(s, cmd->tag, &cmd->args[1]);
	if (to == NULL) {
		free(from);
		return;
	}
	if (strcmp(from, "INBOX") == 0) {
		rename_inbox(s, cmd, to);
		free(from);
		free(to);
		return;
	}
	Merpati__V1__RenameMailboxRequest q = MERPATI__V1__RENAME_MAILBOX_REQUEST__INIT;
	q.user = s->user;
	q.name = from;
	q.new_name = to;
	simple_call(s, cmd, "RenameMailbox", &q.base, "RENAME");
	free(from);
	free(to);
}

void imap_cmd_subscribe(struct imap_sess *s, const struct imap_command *cmd)
{
	if (cmd->nargs != 1) {
		imap_tagged(s, cmd->tag, "BAD %s mailbox", cmd->name);
		return;
	}
	char *name = imap_mailbox_arg(s, cmd->tag, &cmd->args[0]);
	if (name == NULL)
		return;
	Merpati__V1__SubscribeRequest q = MERPATI__V1__SUBSCRIBE_REQUEST__INIT;
	q.user = s->user;
	q.name = name;
	q.subscribed = strcmp(cmd->name, "SUBSCRIBE") == 0;
	simple_call(s, cmd, "Subscribe", &q.base, cmd->name);
	free(name);
}

/* ------------------------------------------------------------- STATUS */

enum {
	SI_MESSAGES = 1, SI_RECENT = 2, SI_UIDNEXT = 4, SI_UIDVALIDITY = 8, SI_UNSEEN = 16,
	SI_SIZE = 32, SI_HIGHESTMODSEQ = 64, SI_DELETED = 128, SI_MAILBOXID = 256,
	SI_APPENDLIMIT = 512,
};

static int parse_status_items(const struct imap_arg *l, unsigned *items_r)
{
	static const struct { const char *n; unsigned bit; } names[] = {
		{ "MESSAGES", SI_MESSAGES }, { "RECENT", SI_RECENT }, { "UIDNEXT", SI_UIDNEXT },
		{ "UIDVALIDITY", SI_UIDVALIDITY }, { "UNSEEN", SI_UNSEEN }, { "SIZE", SI_SIZE },
		{ "HIGHESTMODSEQ", SI_HIGHESTMODSEQ }, { "DELETED", SI_DELETED },
		{ "MAILBOXID", SI_MAILBOXID }, { "APPENDLIMIT", SI_APPENDLIMIT },
	};
	if (l->type != IMAP_ARG_LIST || l->nlist == 0)
		return MP_EINVAL;
	unsigned items = 0;
	for (size_t i = 0; i < l->nlist; i++) {
		size_t k;
		for (k = 0; k < sizeof(names) / sizeof(names[0]); k++)
			if (imap_arg_is_atom(&l->list[i], names[k].n))
				break;
		if (k == sizeof(names) / sizeof(names[0]))
			return MP_EINVAL;
		items |= names[k].bit;
	}
	*items_r = items;
	return 0;
}

/* \Deleted messages of a mailbox (STATUS DELETED), from the index. */
static int count_deleted(struct imap_sess *s, const char *name, uint32_t *n_r)
{
	uint32_t from = 1, n = 0;
	for (int page = 0; page < 100000; page++) {
		char set[32];
		snprintf(set, sizeof(set), "%u:*", from);
		Merpati__V1__FetchIndexRequest q = MERPATI__V1__FETCH_INDEX_REQUEST__INIT;
		q.user = s->user;
		q.mailbox = (char *)name;
		q.uid_set = set;
		q.limit = 10000;
		Merpati__V1__FetchIndexReply *r = NULL;
		char *err = NULL;
		int ret = imap_call(s, "FetchIndex", &q.base,
				    &merpati__v1__fetch_index_reply__descriptor,
				    (ProtobufCMessage **)&r, &err);
		free(err);
		if (ret < 0)
			return ret;
		uint32_t last = 0;
		for (size_t i = 0; i < r->n_messages; i++) {
			if (r->messages[i]->uid < from)
				continue;
			last = r->messages[i]->uid;
			for (size_t f = 0; f < r->messages[i]->n_flags; f++)
				if (strcasecmp(r->messages[i]->flags[f], "\\Deleted") == 0)
					n++;
		}
		bool more = r->more && last != 0 && last < UINT32_MAX;
		protobuf_c_message_free_unpacked(&r->base, NULL);
		if (!more)
			break;
		from = last + 1;
	}
	*n_r = n;
	return 0;
}

/* "* STATUS name (items)"; 0 or the store's error (nothing written). */
static int status_line(struct imap_sess *s, const char *name, unsigned items, char **err_r)
{
	Merpati__V1__StatusRequest q = MERPATI__V1__STATUS_REQUEST__INIT;
	q.user = s->user;
	q.name = (char *)name;
	Merpati__V1__StatusReply *r = NULL;
	int ret = imap_call(s, "Status", &q.base, &merpati__v1__status_reply__descriptor,
			    (ProtobufCMessage **)&r, err_r);
	if (ret < 0)
		return ret;
	uint32_t deleted = 0;
	if ((items & SI_DELETED) && (ret = count_deleted(s, name, &deleted)) < 0) {
		protobuf_c_message_free_unpacked(&r->base, NULL);
		return ret;
	}
	const Merpati__V1__MailboxInfo *mb = r->mailbox;
	imap_out(s, "* STATUS ");
	imap_out_mailbox(s, name);
	imap_out(s, " (");
	const char *sp = "";
	if (items & SI_MESSAGES) {
		imap_out(s, "%sMESSAGES %u", sp, r->messages);
		sp = " ";
	}
	if (items & SI_RECENT) {
		imap_out(s, "%sRECENT %u", sp, r->recent);
		sp = " ";
	}
	if (items & SI_UIDNEXT) {
		imap_out(s, "%sUIDNEXT %u", sp, mb ? mb->uidnext : 0);
		sp = " ";
	}
	if (items & SI_UIDVALIDITY) {
		imap_out(s, "%sUIDVALIDITY %u", sp, mb ? mb->uidvalidity : 0);
		sp = " ";
	}
	if (items & SI_UNSEEN) {
		imap_out(s, "%sUNSEEN %u", sp, r->unseen);
		sp = " ";
	}
	if (items & SI_SIZE) {
		imap_out(s, "%sSIZE %llu", sp, (unsigned long long)r->size);
		sp = " ";
	}
	if (items & SI_HIGHESTMODSEQ) {
		imap_out(s, "%sHIGHESTMODSEQ %llu", sp,
			 (unsigned long long)(mb ? mb->highestmodseq : 0));
		sp = " ";
	}
	if (items & SI_DELETED) {
		imap_out(s, "%sDELETED %u", sp, deleted);
		sp = " ";
	}
	if (items & SI_MAILBOXID) {
		imap_out(s, "%sMAILBOXID (F%08x%08x)", sp, mb ? mb->id : 0,
			 mb ? mb->uidvalidity : 0);
		sp = " ";
	}
	if (items & SI_APPENDLIMIT)
		imap_out(s, "%sAPPENDLIMIT %llu", sp,
			 (unsigned long long)s->conf->max_message_size);
	imap_out(s, ")\r\n");
	protobuf_c_message_free_unpacked(&r->base, NULL);
	return 0;
}

void imap_cmd_status(struct imap_sess *s, const struct imap_command *cmd)
{
	unsigned items;
	if (cmd->nargs != 2 || parse_status_items(&cmd->args[1], &items) < 0) {
		imap_tagged(s, cmd->tag, "BAD STATUS mailbox (items)");
		return;
	}
	char *name = imap_mailbox_arg(s, cmd->tag, &cmd->args[0]);
	if (name == NULL)
		return;
	char *err = NULL;
	int ret = status_line(s, name, items, &err);
	if (ret < 0)
		imap_no_for(s, cmd->tag, ret, err, "STATUS");
	else
		imap_tagged(s, cmd->tag, "OK STATUS completed");
	free(err);
	free(name);
}

/* --------------------------------------------------------------- LIST */

/* RFC 3501 §6.3.8: '*' matches anything, '%' anything but the delimiter. */
static bool list_match(const char *pat, const char *name, int depth)
{
	if (depth > 64)
		return false;
	for (;;) {
		if (*pat == '\0')
			return *name == '\0';
		if (*pat == '*' || *pat == '%') {
			bool any = *pat == '*';
			pat++;
			for (const char *n = name;; n++) {
				if (list_match(pat, n, depth + 1))
					return true;
				if (*n == '\0' || (!any && *n == '/'))
					return false;
			}
		}
		if (*pat != *name)
			return false;
		pat++;
		name++;
	}
}

/* Does some child of name match (RECURSIVEMATCH, and parents shown for %)? */
struct list_entry {
	char *name;
	const char *special;
	bool subscribed;
	bool exists;
	bool has_children;
	bool child_subscribed;
};

struct list_opts {
	bool sel_subscribed, sel_special, sel_recursive, sel_remote;
	bool ret_subscribed, ret_children, ret_special;
	unsigned ret_status;
	bool lsub;
	bool extended;
};

static int add_entry(struct list_entry **v, size_t *n, size_t *cap, const char *name,
		     struct list_entry **e_r)
{
	for (size_t i = 0; i < *n; i++)
		if (strcmp((*v)[i].name, name) == 0) {
			*e_r = &(*v)[i];
			return 0;
		}
	if (*n == *cap) {
		size_t nc = *cap ? *cap * 2 : 32;
		struct list_entry *nv = realloc(*v, nc * sizeof(*nv));
		if (nv == NULL)
			return MP_ENOMEM;
		*v = nv;
		*cap = nc;
	}
	struct list_entry *e = &(*v)[(*n)++];
	memset(e, 0, sizeof(*e));
	e->name = strdup(name);
	if (e->name == NULL) {
		(*n)--;
		return MP_ENOMEM;
	}
	*e_r = e;
	return 0;
}

/* A subscribed descendant of name that no pattern matches? */
static bool hidden_subscribed_child(const struct list_entry *v, size_t n, const char *name,
				    char *const *pats, size_t npats)
{
	size_t nl = strlen(name);
	for (size_t i = 0; i < n; i++) {
		if (!v[i].subscribed || strncmp(v[i].name, name, nl) != 0 || v[i].name[nl] != '/')
			continue;
		bool matched = false;
		for (size_t p = 0; p < npats && !matched; p++)
			matched = list_match(pats[p], v[i].name, 0);
		if (!matched)
			return true;
	}
	return false;
}

static int parse_list_opts(const struct imap_command *cmd, struct list_opts *o,
			   size_t *first_r, size_t *end_r)
{
	memset(o, 0, sizeof(*o));
	o->lsub = strcmp(cmd->name, "LSUB") == 0;
	size_t i = 0, end = cmd->nargs;
	if (!o->lsub && i < end && cmd->args[i].type == IMAP_ARG_LIST) {
		o->extended = true;
		const struct imap_arg *l = &cmd->args[i++];
		for (size_t k = 0; k < l->nlist; k++) {
			const struct imap_arg *a = &l->list[k];
			if (imap_arg_is_atom(a, "SUBSCRIBED"))
				o->sel_subscribed = true;
			else if (imap_arg_is_atom(a, "SPECIAL-USE"))
				o->sel_special = true;
			else if (imap_arg_is_atom(a, "RECURSIVEMATCH"))
				o->sel_recursive = true;
			else if (imap_arg_is_atom(a, "REMOTE"))
				o->sel_remote = true;
			else
				return MP_EINVAL;
		}
		if (o->sel_recursive && !o->sel_subscribed)
			return MP_EINVAL; /* RFC 5258 §3 */
	}
	if (!o->lsub && end >= 2 && cmd->args[end - 2].type == IMAP_ARG_ATOM &&
	    imap_arg_is_atom(&cmd->args[end - 2], "RETURN") &&
	    cmd->args[end - 1].type == IMAP_ARG_LIST) {
		o->extended = true;
		const struct imap_arg *l = &cmd->args[end - 1];
		for (size_t k = 0; k < l->nlist; k++) {
			const struct imap_arg *a = &l->list[k];
			if (imap_arg_is_atom(a, "SUBSCRIBED")) {
				o->ret_subscribed = true;
			} else if (imap_arg_is_atom(a, "CHILDREN")) {
				o->ret_children = true;
			} else if (imap_arg_is_atom(a, "SPECIAL-USE")) {
				o->ret_special = true;
			} else if (imap_arg_is_atom(a, "STATUS") && k + 1 < l->nlist) {
				if (parse_status_items(&l->list[++k], &o->ret_status) < 0)
					return MP_EINVAL;
			} else {
				return MP_EINVAL;
			}
		}
		end -= 2;
	}
	if (end - i != 2)
		return MP_EINVAL;
	*first_r = i;
	*end_r = end;
	return 0;
}

static int collect_patterns(struct imap_sess *s, const struct imap_arg *ref,
			    const struct imap_arg *pats, char **out, size_t *n_r)
{
	const char *r = imap_arg_astring(ref);
	if (r == NULL)
		return MP_EINVAL;
	const struct imap_arg *list = pats;
	size_t np = 1;
	if (pats->type == IMAP_ARG_LIST) {
		list = pats->list;
		np = pats->nlist;
	}
	if (np == 0 || np > LIST_PATTERNS_MAX)
		return MP_EINVAL;
	size_t n = 0;
	for (size_t i = 0; i < np; i++) {
		const char *p = imap_arg_astring(&list[i]);
		if (p == NULL)
			goto fail;
		struct mp_buf b;
		mp_buf_init(&b, 0);
		int ret = mp_buf_append_str(&b, r);
		if (ret == 0 && *r != '\0' && r[strlen(r) - 1] != '/' && *p != '\0' && *p != '/')
			ret = 0; /* RFC 3501: reference and name are simply joined */
		if (ret == 0 && *r != '\0' && *p == '/' && r[strlen(r) - 1] == '/')
			p++;
		if (ret == 0)
			ret = mp_buf_append_str(&b, p);
		struct mp_buf d;
		mp_buf_init(&d, 0);
		if (ret == 0)
			ret = imap_mutf7_decode((const char *)b.data, b.len, s->utf8, &d);
		if (ret == 0)
			ret = mp_buf_append_u8(&d, 0);
		mp_buf_free(&b);
		if (ret < 0) {
			mp_buf_free(&d);
			goto fail;
		}
		char *pat = mp_buf_steal(&d, NULL);
		mp_buf_free(&d);
		if (pat == NULL)
			goto fail;
		if (strncasecmp(pat, "INBOX", 5) == 0 && (pat[5] == '\0' || pat[5] == '/'))
			memcpy(pat, "INBOX", 5);
		out[n++] = pat;
	}
	*n_r = n;
	return 0;
fail:
	for (size_t i = 0; i < n; i++)
		free(out[i]);
	return MP_EINVAL;
}

void imap_cmd_list(struct imap_sess *s, const struct imap_command *cmd)
{
	struct list_opts o;
	size_t first, end;
	if (parse_list_opts(cmd, &o, &first, &end) < 0) {
		imap_tagged(s, cmd->tag, "BAD %s [(selection)] reference pattern [RETURN (options)]",
			    cmd->name);
		return;
	}
	char *pats[LIST_PATTERNS_MAX];
	size_t npats = 0;
	if (collect_patterns(s, &cmd->args[first], &cmd->args[first + 1], pats, &npats) < 0) {
		imap_tagged(s, cmd->tag, "BAD Invalid reference or pattern");
		return;
	}
	/* LIST "" "": the delimiter and root. */
	if (npats == 1 && pats[0][0] == '\0' && !o.extended) {
		free(pats[0]);
		imap_out(s, "* %s (\\Noselect) \"/\" \"\"\r\n", o.lsub ? "LSUB" : "LIST");
		imap_tagged(s, cmd->tag, "OK %s completed", cmd->name);
		return;
	}
	Merpati__V1__ListMailboxesRequest q = MERPATI__V1__LIST_MAILBOXES_REQUEST__INIT;
	q.user = s->user;
	Merpati__V1__ListMailboxesReply *r = NULL;
	char *err = NULL;
	int ret = imap_call(s, "ListMailboxes", &q.base,
			    &merpati__v1__list_mailboxes_reply__descriptor,
			    (ProtobufCMessage **)&r, &err);
	if (ret < 0) {
		imap_no_for(s, cmd->tag, ret, err, cmd->name);
		free(err);
		for (size_t i = 0; i < npats; i++)
			free(pats[i]);
		return;
	}
	/* Every mailbox, plus the parents implied by hierarchy names. */
	struct list_entry *v = NULL;
	size_t n = 0, cap = 0;
	for (size_t i = 0; i < r->n_mailboxes && ret == 0; i++) {
		const Merpati__V1__MailboxInfo *m = r->mailboxes[i];
		struct list_entry *e;
		if ((ret = add_entry(&v, &n, &cap, m->name, &e)) < 0)
			break;
		e->exists = true;
		e->subscribed = m->subscribed;
		e->special = m->special_use && *m->special_use ? m->special_use : NULL;
		char *copy = strdup(m->name);
		if (copy == NULL) {
			ret = MP_ENOMEM;
			break;
		}
		bool sub = m->subscribed;
		for (char *slash = strrchr(copy, '/'); slash != NULL; slash = strrchr(copy, '/')) {
			*slash = '\0';
			struct list_entry *p;
			if ((ret = add_entry(&v, &n, &cap, copy, &p)) < 0)
				break;
			p->has_children = true;
			if (sub)
				p->child_subscribed = true;
		}
		free(copy);
	}
	/* add_entry may move entries: special-use pointers stay valid (they
	 * point into r), so only names need no fixing. */
	for (size_t i = 0; i < n && ret == 0; i++) {
		struct list_entry *e = &v[i];
		bool match = false;
		for (size_t p = 0; p < npats && !match; p++)
			match = list_match(pats[p], e->name, 0);
		if (!match)
			continue;
		bool subscribed_sel = o.lsub || o.sel_subscribed;
		bool child_info = false;
		if (subscribed_sel && !e->subscribed) {
			if (!e->child_subscribed)
				continue;
			/* RFC 5258 RECURSIVEMATCH: shown with CHILDINFO. LSUB (RFC
			 * 3501 §6.3.9): shown \Noselect only when no subscribed
			 * child matches the pattern itself (the '%' case). */
			if (o.lsub && !hidden_subscribed_child(v, n, e->name, pats, npats))
				continue;
			if (!o.lsub && !o.sel_recursive)
				continue;
			child_info = true;
		}
		if (o.sel_special && e->special == NULL)
			continue;
		if (!e->exists && !e->has_children)
			continue;
		if (!e->exists && !subscribed_sel) {
			/* A parent only implied by its children: %-matches show it. */
		}
		const char *sp = "";
		imap_out(s, "* %s (", o.lsub ? "LSUB" : "LIST");
		if (o.lsub && !e->subscribed) {
			imap_out(s, "\\Noselect"); /* shown for a subscribed child */
			sp = " ";
		} else if (!e->exists) {
			imap_out(s, "%s", o.lsub ? "\\Noselect" : (o.extended || s->rev2)
				 ? "\\NonExistent" : "\\Noselect");
			sp = " ";
		}
		if (!o.lsub) {
			imap_out(s, "%s%s", sp, e->has_children ? "\\HasChildren" : "\\HasNoChildren");
			sp = " ";
		}
		if ((o.ret_subscribed || o.sel_subscribed || (s->rev2 && !o.lsub)) && e->subscribed &&
		    !o.lsub) {
			imap_out(s, "%s\\Subscribed", sp);
			sp = " ";
		}
		if (e->special != NULL && !o.lsub) {
			imap_out(s, "%s%s", sp, e->special);
			sp = " ";
		}
		imap_out(s, ") \"/\" ");
		imap_out_mailbox(s, e->name);
		if (child_info && o.sel_recursive && !o.lsub)
			imap_out(s, " (\"CHILDINFO\" (\"SUBSCRIBED\"))");
		imap_out(s, "\r\n");
		if (o.ret_status && e->exists) {
			char *serr = NULL;
			(void)status_line(s, e->name, o.ret_status, &serr);
			free(serr);
		}
	}
	if (ret < 0)
		imap_no_for(s, cmd->tag, ret, NULL, cmd->name);
	else
		imap_tagged(s, cmd->tag, "OK %s completed", cmd->name);
	for (size_t i = 0; i < n; i++)
		free(v[i].name);
	free(v);
	for (size_t i = 0; i < npats; i++)
		free(pats[i]);
	protobuf_c_message_free_unpacked(&r->base, NULL);
	free(err);
}

/* -------------------------------------------------------------- APPEND */

static int check_flags(const struct imap_arg *l, char ***flags_r, size_t *n_r)
{
	*flags_r = NULL;
	*n_r = 0;
	if (l->type != IMAP_ARG_LIST)
		return MP_EINVAL;
	if (l->nlist > 256)
		return MP_EINVAL;
	char **f = calloc(l->nlist + 1, sizeof(*f));
	if (f == NULL)
		return MP_ENOMEM;
	for (size_t i = 0; i < l->nlist; i++) {
		const struct imap_arg *a = &l->list[i];
		if (a->type != IMAP_ARG_ATOM || a->len == 0 || a->len > 200) {
			free(f);
			return MP_EINVAL;
		}
		if (a->s[0] == '\\') {
			size_t k;
			for (k = 0; k < sizeof(system_flags) / sizeof(system_flags[0]); k++)
				if (strcasecmp(a->s, system_flags[k]) == 0)
					break;
			if (k == sizeof(system_flags) / sizeof(system_flags[0])) {
				free(f);
				return MP_EINVAL; /* \Recent and unknown system flags */
			}
			f[i] = (char *)system_flags[k];
		} else {
			for (size_t c = 0; c < a->len; c++) {
				unsigned char ch = (unsigned char)a->s[c];
				if (ch <= 0x20 || ch >= 0x7f || strchr("(){%*\"\\]", ch) != NULL) {
					free(f);
					return MP_EINVAL;
				}
			}
			f[i] = (char *)a->s;
		}
	}
	*flags_r = f;
	*n_r = l->nlist;
	return 0;
}

struct parsed_message {
	char **flags;
	size_t nflags;
	int64_t date;
	const struct imap_arg *lit;
};

void imap_cmd_append(struct imap_sess *s, const struct imap_command *cmd)
{
	if (cmd->nargs < 2) {
		imap_tagged(s, cmd->tag, "BAD APPEND mailbox [(flags)] [date-time] literal");
		return;
	}
	struct parsed_message msgs[APPEND_MESSAGES_MAX];
	size_t nmsgs = 0;
	size_t i = 1;
	int bad = 0;
	while (i < cmd->nargs && !bad) {
		if (nmsgs == APPEND_MESSAGES_MAX) {
			bad = 1;
			break;
		}
		struct parsed_message *m = &msgs[nmsgs];
		memset(m, 0, sizeof(*m));
		if (cmd->args[i].type == IMAP_ARG_LIST) {
			if (check_flags(&cmd->args[i], &m->flags, &m->nflags) < 0) {
				bad = 2;
				break;
			}
			i++;
		}
		if (i < cmd->nargs && cmd->args[i].type == IMAP_ARG_STRING) {
			if (imap_parse_datetime(cmd->args[i].s, cmd->args[i].len, &m->date) < 0) {
				bad = 3;
				free(m->flags);
				break;
			}
			i++;
		}
		if (i >= cmd->nargs || cmd->args[i].type != IMAP_ARG_LITERAL) {
			bad = 1;
			free(m->flags);
			break;
		}
		m->lit = &cmd->args[i++];
		nmsgs++;
	}
	if (bad) {
		for (size_t k = 0; k < nmsgs; k++)
			free(msgs[k].flags);
		imap_tagged(s, cmd->tag, "BAD %s", bad == 2 ? "Invalid flags"
			    : bad == 3 ? "Invalid date-time" : "APPEND mailbox [(flags)] [date-time] literal");
		return;
	}
	char *name = imap_mailbox_arg(s, cmd->tag, &cmd->args[0]);
	if (name == NULL) {
		for (size_t k = 0; k < nmsgs; k++)
			free(msgs[k].flags);
		return;
	}
	uint32_t *uids = calloc(nmsgs, sizeof(*uids));
	uint32_t uidvalidity = 0;
	int ret = uids ? 0 : MP_ENOMEM;
	char *err = NULL;
	size_t done = 0;
	for (size_t k = 0; k < nmsgs && ret == 0; k++) {
		const struct imap_arg *lit = msgs[k].lit;
		if (lit->len == 0) {
			ret = MP_EINVAL;
			err = strdup("empty message");
			break;
		}
		struct imap_mime *mime = NULL;
		struct mp_buf env;
		mp_buf_init(&env, 0);
		uint8_t *bs = NULL;
		size_t bs_len = 0;
		ret = imap_mime_parse(lit->s, lit->len, NULL, &mime);
		if (ret == 0)
			ret = imap_mime_envelope(mime, &env);
		if (ret == 0)
			ret = imap_mime_pack(mime, &bs, &bs_len);
		imap_mime_free(&mime);
		if (ret == 0) {
			Merpati__V1__AppendRequest q = MERPATI__V1__APPEND_REQUEST__INIT;
			q.user = s->user;
			q.mailbox = name;
			q.body.data = (uint8_t *)lit->s;
			q.body.len = lit->len;
			q.flags = msgs[k].flags;
			q.n_flags = msgs[k].nflags;
			q.internal_date = msgs[k].date > 0 ? (uint64_t)msgs[k].date : 0;
			q.envelope.data = (uint8_t *)env.data;
			q.envelope.len = env.len;
			q.bodystructure.data = bs;
			q.bodystructure.len = bs_len;
			Merpati__V1__AppendReply *r = NULL;
			ret = imap_call(s, "Append", &q.base, &merpati__v1__append_reply__descriptor,
					(ProtobufCMessage **)&r, &err);
			if (ret == 0) {
				uids[k] = r->uid;
				uidvalidity = r->uidvalidity;
				done++;
				protobuf_c_message_free_unpacked(&r->base, NULL);
			}
		}
		mp_buf_free(&env);
		free(bs);
	}
	if (ret < 0 && done > 0) {
		/* RFC 3502: MULTIAPPEND is all or nothing; take back what went in. */
		char *set = NULL;
		if (mp_uidset_format(uids, done, &set) == 0) {
			Merpati__V1__ExpungeRequest eq = MERPATI__V1__EXPUNGE_REQUEST__INIT;
			eq.user = s->user;
			eq.mailbox = name;
			eq.uid_set = set;
			Merpati__V1__ExpungeReply *er = NULL;
			char *eerr = NULL;
			if (imap_call(s, "Expunge", &eq.base, &merpati__v1__expunge_reply__descriptor,
				      (ProtobufCMessage **)&er, &eerr) == 0)
				protobuf_c_message_free_unpacked(&er->base, NULL);
			free(eerr);
			free(set);
		}
	}
	if (ret == MP_ENOENT) {
		imap_tagged(s, cmd->tag, "NO [TRYCREATE] Mailbox does not exist");
	} else if (ret == MP_ETOOBIG) {
		imap_tagged(s, cmd->tag, "NO [TOOBIG] Message too large");
	} else if (ret < 0) {
		imap_no_for(s, cmd->tag, ret, err, "APPEND");
	} else {
		char *set = NULL;
		if (mp_uidset_format(uids, nmsgs, &set) < 0)
			set = NULL;
		imap_sync(s, true);
		imap_tagged(s, cmd->tag, "OK [APPENDUID %u %s] APPEND completed", uidvalidity,
			    set ? set : "0");
		free(set);
	}
	free(err);
	free(uids);
	free(name);
	for (size_t k = 0; k < nmsgs; k++)
		free(msgs[k].flags);
}

/* ---------------------------------------------------------------- QUOTA */

void imap_cmd_quota(struct imap_sess *s, const struct imap_command *cmd)
{
	bool root = strcmp(cmd->name, "GETQUOTAROOT") == 0;
	const char *arg = cmd->nargs == 1 ? imap_arg_astring(&cmd->args[0]) : NULL;
	if (arg == NULL) {
		imap_tagged(s, cmd->tag, "BAD %s %s", cmd->name, root ? "mailbox" : "root");
		return;
	}
	if (!root && *arg != '\0') {
		imap_tagged(s, cmd->tag, "NO [NONEXISTENT] No such quota root");
		return;
	}
	Merpati__V1__UserRequest q = MERPATI__V1__USER_REQUEST__INIT;
	q.user = s->user;
	Merpati__V1__AccountReply *r = NULL;
	char *err = NULL;
	int ret = imap_call(s, "GetAccount", &q.base, &merpati__v1__account_reply__descriptor,
			    (ProtobufCMessage **)&r, &err);
	if (ret < 0 || r->account == NULL) {
		imap_no_for(s, cmd->tag, ret < 0 ? ret : MP_EIO, err, cmd->name);
		free(err);
		if (r != NULL)
			protobuf_c_message_free_unpacked(&r->base, NULL);
		return;
	}
	uint64_t limit = r->account->quota_bytes, used = r->account->used_bytes;
	protobuf_c_message_free_unpacked(&r->base, NULL);
	if (root) {
		char *name = imap_mailbox_arg(s, cmd->tag, &cmd->args[0]);
		if (name == NULL)
			return;
		imap_out(s, "* QUOTAROOT ");
		imap_out_mailbox(s, name);
		imap_out(s, "%s\r\n", limit ? " \"\"" : "");
		free(name);
	} else if (limit == 0) {
		imap_tagged(s, cmd->tag, "NO [NONEXISTENT] No quota");
		return;
	}
	if (limit)
		imap_out(s, "* QUOTA \"\" (STORAGE %llu %llu)\r\n",
			 (unsigned long long)((used + 1023) / 1024),
			 (unsigned long long)(limit / 1024));
	imap_tagged(s, cmd->tag, "OK %s completed", cmd->name);
}
