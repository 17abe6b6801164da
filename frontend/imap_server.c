/*
 * imap_server: IMAP sessions (see imap_server.h). This file holds the
 * session core: input, dispatch, the worker hand-off, authentication,
 * IDLE and the untagged updates of the selected mailbox. The commands are
 * in imap_cmd_mailbox.c (mailboxes) and imap_cmd_message.c (messages),
 * sharing imap_sess.h.
 */
#include "imap_sess.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "fe_auth.h"
#include "fe_store.h"
#include "fe_watch.h"
#include "imap_parse.h"
#include "mailstore.pb-c.h"
#include "mp_error.h"
#include "mp_log.h"
#include "mp_scram.h"
#include "mp_shard.h"
#include "mp_uidset.h"

#define IDLE_POLL_MS 250          /* how often an IDLE session looks at its watch */
#define IDLE_UNWATCHED_MS 2000    /* ... and asks ChangesSince when not watched */
#define AUTH_LINE_MAX 16384
#define DRAIN_POLL_MS 5           /* a batched answer checks its output this often */

/* ------------------------------------------------------------ output */

void imap_out(struct imap_sess *s, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char small[512];
	int n = vsnprintf(small, sizeof(small), fmt, ap);
	va_end(ap);
	if (n < 0) {
		s->out_failed = true;
		return;
	}
	if ((size_t)n < sizeof(small)) {
		if (mp_buf_append(&s->out, small, (size_t)n) < 0)
			s->out_failed = true;
		return;
	}
	char *big = malloc((size_t)n + 1);
	if (big == NULL) {
		s->out_failed = true;
		return;
	}
	va_start(ap, fmt);
	vsnprintf(big, (size_t)n + 1, fmt, ap);
	va_end(ap);
	if (mp_buf_append(&s->out, big, (size_t)n) < 0)
		s->out_failed = true;
	free(big);
}

void imap_out_raw(struct imap_sess *s, const void *p, size_t n)
{
	if (mp_buf_append(&s->out, p, n) < 0)
		s->out_failed = true;
}

void imap_tagged(struct imap_sess *s, const char *tag, const char *fmt, ...)
{
	char text[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	imap_out(s, "%s %s\r\n", tag, text);
}

void imap_out_string(struct imap_sess *s, const char *p, size_t n)
{
	if (imap_write_string(&s->out, p, n, s->utf8) < 0)
		s->out_failed = true;
}

void imap_out_mailbox(struct imap_sess *s, const char *name)
{
	struct mp_buf b;
	mp_buf_init(&b, 0);
	if (imap_mutf7_encode(name, strlen(name), s->utf8, &b) < 0) {
		s->out_failed = true;
	} else {
		imap_out_string(s, (const char *)b.data, b.len);
	}
	mp_buf_free(&b);
}

/* Hand what the worker rendered to the connection (loop thread). */
static void flush_out(struct imap_sess *s)
{
	if (s->out.len == 0)
		return;
	/* Bounded by the batching (about IMAP_BATCH_BYTES, plus one message). */
	size_t len = 0;
	char *data = mp_buf_steal(&s->out, &len);
	if (data == NULL || fe_conn_write_take(s->c, data, len) < 0)
		fe_conn_close(s->c);
}

/* --------------------------------------------------------- store calls */

int imap_call(struct imap_sess *s, const char *method, const ProtobufCMessage *req,
	      const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp_r,
	      char **error_r)
{
	char path[96];
	snprintf(path, sizeof(path), "/merpati.v1.MailStore/%s", method);
	*resp_r = NULL;
	*error_r = NULL;
	return fe_store_call(s->conf->store, s->shard, path, req, desc, resp_r, error_r);
}

/* The NO answer for a failed call. */
void imap_no_for(struct imap_sess *s, const char *tag, int err, const char *error,
		 const char *what)
{
	const char *code;
	switch (err) {
	case MP_ENOENT: code = "[NONEXISTENT] "; break;
	case MP_EEXIST: code = "[ALREADYEXISTS] "; break;
	case MP_ENOSPC: code = "[OVERQUOTA] "; break;
	case MP_ETOOBIG: code = "[LIMIT] "; break;
	case MP_EPERM: code = "[NOPERM] "; break;
	case MP_EINVAL: code = "[CANNOT] "; break;
	case MP_EUNAVAIL:
	case MP_ETIMEDOUT:
	case MP_ENOTLEADER: code = "[UNAVAILABLE] "; break;
	default: code = "[SERVERBUG] "; break;
	}
	char clean[200];
	size_t j = 0;
	for (const char *p = error ? error : mp_strerror(err); *p && j + 1 < sizeof(clean); p++)
		clean[j++] = (*p >= 0x20 && *p < 0x7f) ? *p : ' ';
	clean[j] = '\0';
	if (err == MP_EUNAVAIL || err == MP_ETIMEDOUT || err == MP_EIO)
		mp_log_warn("imap_store_error", "conn=%s user=%s what=%s error=\"%s\"",
			    fe_conn_id(s->c), s->user ? s->user : "", what, clean);
	imap_tagged(s, tag, "NO %s%s: %s", code, what, clean);
}

/* ----------------------------------------------------- mailbox names */

/* A client's mailbox argument -> UTF-8 name for the store (malloc'd), or
 * NULL after answering NO/BAD. */
char *imap_mailbox_arg(struct imap_sess *s, const char *tag, const struct imap_arg *a)
{
	const char *raw = imap_arg_astring(a);
	if (raw == NULL) {
		imap_tagged(s, tag, "BAD Mailbox name expected");
		return NULL;
	}
	struct mp_buf b;
	mp_buf_init(&b, 0);
	if (imap_mutf7_decode(raw, strlen(raw), s->utf8, &b) < 0 ||
	    mp_buf_append_u8(&b, 0) < 0) {
		mp_buf_free(&b);
		imap_tagged(s, tag, "NO [CANNOT] Invalid mailbox name encoding");
		return NULL;
	}
	char *name = mp_buf_steal(&b, NULL);
	mp_buf_free(&b);
	if (name == NULL) {
		imap_tagged(s, tag, "NO [SERVERBUG] Out of memory");
		return NULL;
	}
	/* INBOX is case-insensitive, alone or as the first level. */
	if (strncasecmp(name, "INBOX", 5) == 0 && (name[5] == '\0' || name[5] == '/'))
		memcpy(name, "INBOX", 5);
	/* A trailing delimiter names the same mailbox (CREATE foo/). */
	size_t n = strlen(name);
	if (n > 1 && name[n - 1] == '/')
		name[n - 1] = '\0';
	return name;
}

/* ------------------------------------------------------ selected state */

void imap_sel_clear(struct imap_sess *s)
{
	free(s->sel.name);
	free(s->sel.uids);
	free(s->sel.own);
	memset(&s->sel, 0, sizeof(s->sel));
}

uint32_t imap_seq_of(const struct imap_sess *s, uint32_t uid)
{
	size_t lo = 0, hi = s->sel.n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (s->sel.uids[mid] < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < s->sel.n && s->sel.uids[lo] == uid ? (uint32_t)lo + 1 : 0;
}

int imap_sel_add(struct imap_sess *s, uint32_t uid)
{
	if (s->sel.n > 0 && s->sel.uids[s->sel.n - 1] >= uid) {
		if (imap_seq_of(s, uid) != 0)
			return 0;
	}
	if (s->sel.n == s->sel.cap) {
		size_t cap = s->sel.cap ? s->sel.cap * 2 : 64;
		uint32_t *u = realloc(s->sel.uids, cap * sizeof(*u));
		if (u == NULL)
			return MP_ENOMEM;
		s->sel.uids = u;
		s->sel.cap = cap;
	}
	size_t at = s->sel.n;
	while (at > 0 && s->sel.uids[at - 1] > uid)
		at--;
	memmove(s->sel.uids + at + 1, s->sel.uids + at, (s->sel.n - at) * sizeof(uint32_t));
	s->sel.uids[at] = uid;
	s->sel.n++;
	return 0;
}

void imap_sel_remove(struct imap_sess *s, uint32_t seq)
{
	memmove(s->sel.uids + seq - 1, s->sel.uids + seq, (s->sel.n - seq) * sizeof(uint32_t));
	s->sel.n--;
}

void imap_sel_note_own(struct imap_sess *s, uint32_t uid, uint64_t modseq)
{
	if (s->sel.nown >= IMAP_OWN_MAX)
		return; /* a duplicate untagged FETCH is harmless */
	if (s->sel.own == NULL) {
		s->sel.own = calloc(IMAP_OWN_MAX, sizeof(*s->sel.own));
		if (s->sel.own == NULL)
			return;
	}
	s->sel.own[s->sel.nown].uid = uid;
	s->sel.own[s->sel.nown].modseq = modseq;
	s->sel.nown++;
}

static bool own_change(const struct imap_sess *s, uint32_t uid, uint64_t modseq)
{
	for (size_t i = 0; i < s->sel.nown; i++)
		if (s->sel.own[i].uid == uid && s->sel.own[i].modseq == modseq)
			return true;
	return false;
}

void imap_out_flags(struct imap_sess *s, char *const *flags, size_t n, bool recent)
{
	imap_out_raw(s, "(", 1);
	bool first = true;
	for (size_t i = 0; i < n; i++) {
		if (!first)
			imap_out_raw(s, " ", 1);
		imap_out_raw(s, flags[i], strlen(flags[i]));
		first = false;
	}
	if (recent && !s->rev2)
		imap_out(s, "%s\\Recent", first ? "" : " ");
	imap_out_raw(s, ")", 1);
}

void imap_out_flag_fetch(struct imap_sess *s, uint32_t seq, uint32_t uid, bool with_uid,
			 char *const *flags, size_t n, uint64_t modseq)
{
	imap_out(s, "* %u FETCH (", seq);
	if (with_uid)
		imap_out(s, "UID %u ", uid);
	imap_out(s, "FLAGS ");
	imap_out_flags(s, flags, n, imap_is_recent(s, uid));
	if (modseq != 0)
		imap_out(s, " MODSEQ (%llu)", (unsigned long long)modseq);
	imap_out(s, ")\r\n");
}

static int u32_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

void imap_sort_u32(uint32_t *v, size_t n)
{
	if (n > 1)
		qsort(v, n, sizeof(*v), u32_cmp);
}

bool imap_is_recent(const struct imap_sess *s, uint32_t uid)
{
	return !s->sel.readonly && s->sel.recent_from != 0 && uid >= s->sel.recent_from;
}

/* Show what changed in the selected mailbox since the session last
 * looked: new messages (EXISTS), flag changes (FETCH), and, when
 * allow_expunge, expunged messages (EXPUNGE or VANISHED). Worker thread.
 * Failures are not the command's: the updates come at the next chance. */
void imap_sync(struct imap_sess *s, bool allow_expunge)
{
	if (!s->sel.active)
		return;
	uint32_t old_n = (uint32_t)s->sel.n;
	bool added = false;
	uint32_t *vanished = NULL;
	size_t nvanished = 0;
	for (int page = 0; page < 100; page++) {
		Merpati__V1__ChangesSinceRequest q = MERPATI__V1__CHANGES_SINCE_REQUEST__INIT;
		q.user = s->user;
		q.mailbox = s->sel.name;
		q.modseq = s->sel.hms;
		q.limit = 5000;
		Merpati__V1__ChangesSinceReply *r = NULL;
		char *err = NULL;
		int ret = imap_call(s, "ChangesSince", &q.base,
				    &merpati__v1__changes_since_reply__descriptor,
				    (ProtobufCMessage **)&r, &err);
		free(err);
		if (ret < 0) {
			if (ret == MP_ENOENT) {
				/* The mailbox is gone (deleted or renamed elsewhere). */
				imap_out(s, "* BYE Selected mailbox was deleted\r\n");
				s->logout = true;
			}
			break;
		}
		if (r->uidvalidity != s->sel.uidvalidity) {
			imap_out(s, "* BYE Mailbox UIDVALIDITY changed\r\n");
			s->logout = true;
			protobuf_c_message_free_unpacked(&r->base, NULL);
			break;
		}
		uint64_t last = s->sel.hms;
		bool stop = false;
		for (size_t i = 0; i < r->n_changes && !stop; i++) {
			const Merpati__V1__Change *ch = r->changes[i];
			uint32_t seq = imap_seq_of(s, ch->uid);
			switch (ch->kind) {
			case MERPATI__V1__CHANGE_KIND__CHANGE_EXPUNGE:
				if (seq == 0)
					break;
				if (!allow_expunge) {
					stop = true; /* show it (and all after it) later */
					continue;
				}
				if (s->qresync) {
					uint32_t *v = realloc(vanished, (nvanished + 1) * sizeof(*v));
					if (v == NULL) {
						stop = true;
						continue;
					}
					vanished = v;
					vanished[nvanished++] = ch->uid;
				} else {
					imap_out(s, "* %u EXPUNGE\r\n", seq);
				}
				imap_sel_remove(s, seq);
				if (old_n >= seq)
					old_n--;
				break;
			case MERPATI__V1__CHANGE_KIND__CHANGE_APPEND:
			case MERPATI__V1__CHANGE_KIND__CHANGE_FLAGS:
				if (seq == 0) {
					if (ch->uid < s->sel.uidnext_seen)
						break; /* appended and expunged before we looked */
					if (imap_sel_add(s, ch->uid) < 0) {
						stop = true;
						continue;
					}
					if (ch->uid >= s->sel.uidnext_seen)
						s->sel.uidnext_seen = ch->uid + 1;
					added = true;
					break;
				}
				if (own_change(s, ch->uid, ch->modseq))
					break;
				imap_out_flag_fetch(s, seq, ch->uid, s->uid_in_fetch, ch->flags,
						    ch->n_flags, s->condstore ? ch->modseq : 0);
				break;
			default:
				break;
			}
			if (!stop)
				last = ch->modseq;
		}
		bool more = r->more && !stop;
		if (!more && !stop && r->highestmodseq > last)
			last = r->highestmodseq;
		s->sel.hms = last;
		protobuf_c_message_free_unpacked(&r->base, NULL);
		if (!more)
			break;
	}
	if (nvanished > 0) {
		char *set = NULL;
		if (mp_uidset_format(vanished, nvanished, &set) == 0) {
			imap_out(s, "* VANISHED %s\r\n", set);
			free(set);
		}
	}
	free(vanished);
	if (added || s->sel.n != old_n) {
		if (added)
			imap_out(s, "* %zu EXISTS\r\n", s->sel.n);
		if (added && !s->rev2 && !s->sel.readonly)
			imap_out(s, "* %u RECENT\r\n", imap_recent_count(s));
	}
	s->sel.nown = 0;
}

uint32_t imap_recent_count(const struct imap_sess *s)
{
	if (s->sel.readonly || s->sel.recent_from == 0)
		return 0;
	uint32_t n = 0;
	for (size_t i = s->sel.n; i > 0 && s->sel.uids[i - 1] >= s->sel.recent_from; i--)
		n++;
	return n;
}

/* ------------------------------------------------------------ commands */

static void cmd_capability(struct imap_sess *s, const struct imap_command *cmd)
{
	imap_out(s, "* ");
	imap_capabilities(s);
	imap_out(s, "\r\n");
	imap_tagged(s, cmd->tag, "OK CAPABILITY completed");
}

void imap_capabilities(struct imap_sess *s)
{
	imap_out(s, "CAPABILITY IMAP4rev1 IMAP4rev2");
	bool tls = fe_conn_tls_active(s->c);
	if (s->state == IMAP_S_NOAUTH) {
		if (!tls && fe_conn_tls_offered(s->c))
			imap_out(s, " STARTTLS");
		bool plain_ok = tls || s->conf->allow_plaintext_auth;
		if (plain_ok)
			imap_out(s, " AUTH=PLAIN AUTH=LOGIN");
		else
			imap_out(s, " LOGINDISABLED");
		imap_out(s, " AUTH=SCRAM-SHA-256 SASL-IR");
	}
	imap_out(s, " ID ENABLE IDLE LITERAL+ NAMESPACE UNSELECT UIDPLUS MOVE CHILDREN"
		    " SPECIAL-USE CREATE-SPECIAL-USE LIST-EXTENDED LIST-STATUS ESEARCH"
		    " SEARCHRES SORT SORT=DISPLAY THREAD=ORDEREDSUBJECT THREAD=REFERENCES"
		    " CONDSTORE QRESYNC STATUS=SIZE BINARY OBJECTID QUOTA"
		    " QUOTA=RES-STORAGE UTF8=ACCEPT MULTIAPPEND APPENDLIMIT=%llu",
		 (unsigned long long)s->conf->max_message_size);
	if (s->state != IMAP_S_NOAUTH && !s->compressed)
		imap_out(s, " COMPRESS=DEFLATE");
}

static void cmd_noop(struct imap_sess *s, const struct imap_command *cmd)
{
	imap_sync(s, true);
	imap_tagged(s, cmd->tag, "OK %s completed", cmd->name);
}

static void cmd_logout(struct imap_sess *s, const struct imap_command *cmd)
{
	imap_out(s, "* BYE Logging out\r\n");
	imap_tagged(s, cmd->tag, "OK LOGOUT completed");
	s->logout = true;
}

static void cmd_id(struct imap_sess *s, const struct imap_command *cmd)
{
	if (cmd->nargs != 1 || (cmd->args[0].type != IMAP_ARG_NIL &&
				cmd->args[0].type != IMAP_ARG_LIST)) {
		imap_tagged(s, cmd->tag, "BAD ID takes a parameter list or NIL");
		return;
	}
	imap_out(s, "* ID (\"name\" \"Merpati\" \"vendor\" \"Merpati\")\r\n");
	imap_tagged(s, cmd->tag, "OK ID completed");
}

static void cmd_enable(struct imap_sess *s, const struct imap_command *cmd)
{
	if (cmd->nargs == 0) {
		imap_tagged(s, cmd->tag, "BAD ENABLE needs capabilities");
		return;
	}
	char enabled[200] = "";
	for (size_t i = 0; i < cmd->nargs; i++) {
		const struct imap_arg *a = &cmd->args[i];
		if (a->type != IMAP_ARG_ATOM) {
			imap_tagged(s, cmd->tag, "BAD ENABLE takes atoms");
			return;
		}
		const char *cap = NULL;
		if (strcasecmp(a->s, "CONDSTORE") == 0 && !s->condstore) {
			s->condstore = true;
			cap = "CONDSTORE";
		} else if (strcasecmp(a->s, "QRESYNC") == 0 && !s->qresync) {
			s->qresync = true;
			s->condstore = true;
			cap = "QRESYNC";
		} else if (strcasecmp(a->s, "IMAP4rev2") == 0 && !s->rev2) {
			s->rev2 = true;
			s->utf8 = true;
			cap = "IMAP4rev2";
		} else if (strcasecmp(a->s, "UTF8=ACCEPT") == 0 && !s->utf8_enabled) {
			s->utf8 = true;
			s->utf8_enabled = true;
			cap = "UTF8=ACCEPT";
		}
		size_t used = strlen(enabled);
		if (cap != NULL && used + strlen(cap) + 2 < sizeof(enabled))
			snprintf(enabled + used, sizeof(enabled) - used, " %s", cap);
	}
	imap_out(s, "* ENABLED%s\r\n", enabled);
	imap_tagged(s, cmd->tag, "OK ENABLE completed");
}

static void cmd_namespace(struct imap_sess *s, const struct imap_command *cmd)
{
	imap_out(s, "* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n");
	imap_tagged(s, cmd->tag, "OK NAMESPACE completed");
}

/* ------------------------------------------------------------------ auth */

static void auth_continue(struct imap_sess *s);

static void login_done(struct imap_sess *s, bool ok)
{
	if (ok) {
		const char *u = fe_auth_user(s->auth);
		s->user = strdup(u);
		uint32_t shard = 0;
		if (s->user == NULL ||
		    fe_store_shard_of(s->conf->store, s->user, &shard) < 0) {
			free(s->user);
			s->user = NULL;
			imap_tagged(s, s->auth_tag, "NO [UNAVAILABLE] Try again later");
			goto out;
		}
		s->shard = shard;
		s->state = IMAP_S_AUTH;
		if (s->conf->watch != NULL)
			s->wsub = fe_watch_subscribe(s->conf->watch, s->user);
		mp_log_info("imap_login", "conn=%s ip=%s user=%s", fe_conn_id(s->c),
			    fe_conn_peer_ip(s->c), s->user);
		imap_out(s, "%s OK [", s->auth_tag);
		imap_capabilities(s);
		imap_out(s, "] Logged in\r\n");
	}
out:
	fe_auth_free(&s->auth);
	free(s->auth_tag);
	s->auth_tag = NULL;
	s->in_auth = false;
}

static void auth_fail(struct imap_sess *s, const char *resp)
{
	char ipq[64];
	const char *ip = fe_conn_peer_ip(s->c);
	mp_log_info("imap_auth_failed", "conn=%s ip=%s reason=%s", fe_conn_id(s->c),
		    mp_log_quote(ipq, sizeof(ipq), ip, strlen(ip)),
		    s->auth ? fe_auth_reason(s->auth) : "");
	imap_tagged(s, s->auth_tag, "%s", resp);
	login_done(s, false);
	s->errors++;
}

/* Loop thread (or worker after a lookup, with output flushed by done). */
static void auth_continue(struct imap_sess *s)
{
	const char *out = NULL;
	switch (fe_auth_status(s->auth, &out)) {
	case FE_AUTH_CHALLENGE:
		imap_out(s, "+ %s\r\n", out ? out : "");
		s->in_auth = true;
		return;
	case FE_AUTH_NEED_LOOKUP:
		s->in_auth = true;
		s->need_lookup = true;
		return;
	case FE_AUTH_OK:
		login_done(s, true);
		return;
	case FE_AUTH_TEMPFAIL:
		imap_tagged(s, s->auth_tag, "NO [UNAVAILABLE] Temporary authentication failure");
		login_done(s, false);
		return;
	case FE_AUTH_MALFORMED:
		auth_fail(s, "BAD Malformed authentication exchange");
		return;
	case FE_AUTH_CANCELLED:
		imap_tagged(s, s->auth_tag, "BAD Authentication cancelled");
		login_done(s, false);
		return;
	case FE_AUTH_FAIL:
		auth_fail(s, "NO [AUTHENTICATIONFAILED] Authentication failed");
		return;
	}
}

static bool auth_begin(struct imap_sess *s, const struct imap_command *cmd, const char *mech,
		       const char *ir, size_t ir_len, bool has_ir)
{
	bool plain_ok = fe_conn_tls_active(s->c) || s->conf->allow_plaintext_auth;
	int ret = fe_auth_start(mech, strlen(mech), plain_ok, false, ir, ir_len, has_ir,
				&s->auth);
	if (ret == MP_EPERM) {
		imap_tagged(s, cmd->tag, "NO [PRIVACYREQUIRED] Use STARTTLS first");
		return false;
	}
	if (ret < 0) {
		imap_tagged(s, cmd->tag, "NO Unsupported authentication mechanism");
		return false;
	}
	s->auth_tag = strdup(cmd->tag);
	if (s->auth_tag == NULL) {
		fe_auth_free(&s->auth);
		imap_tagged(s, cmd->tag, "NO [SERVERBUG] Out of memory");
		return false;
	}
	return true;
}

static void cmd_authenticate(struct imap_sess *s, const struct imap_command *cmd)
{
	if (cmd->nargs < 1 || cmd->nargs > 2 || cmd->args[0].type != IMAP_ARG_ATOM) {
		imap_tagged(s, cmd->tag, "BAD AUTHENTICATE mechanism [initial-response]");
		return;
	}
	const char *ir = NULL;
	size_t ir_len = 0;
	if (cmd->nargs == 2) {
		if (cmd->args[1].type != IMAP_ARG_ATOM) {
			imap_tagged(s, cmd->tag, "BAD Initial response must be base64 or =");
			return;
		}
		ir = cmd->args[1].s;
		ir_len = cmd->args[1].len;
		if (ir_len == 1 && ir[0] == '=')
			ir_len = 0; /* RFC 4959: empty initial response */
	}
	if (auth_begin(s, cmd, cmd->args[0].s, ir, ir_len, cmd->nargs == 2))
		auth_continue(s);
}

static void cmd_login(struct imap_sess *s, const struct imap_command *cmd)
{
	const char *u = cmd->nargs == 2 ? imap_arg_astring(&cmd->args[0]) : NULL;
	const char *p = cmd->nargs == 2 ? imap_arg_astring(&cmd->args[1]) : NULL;
	if (u == NULL || p == NULL) {
		imap_tagged(s, cmd->tag, "BAD LOGIN user password");
		return;
	}
	if (!fe_conn_tls_active(s->c) && !s->conf->allow_plaintext_auth) {
		imap_tagged(s, cmd->tag, "NO [PRIVACYREQUIRED] LOGIN is disabled before STARTTLS");
		return;
	}
	/* LOGIN is PLAIN without the base64: one code path checks both. */
	size_t ul = strlen(u), pl = strlen(p);
	if (ul > 512 || pl > 1024) {
		imap_tagged(s, cmd->tag, "NO [AUTHENTICATIONFAILED] Authentication failed");
		return;
	}
	char raw[1540];
	raw[0] = '\0';
	memcpy(raw + 1, u, ul);
	raw[1 + ul] = '\0';
	memcpy(raw + 2 + ul, p, pl);
	size_t rl = 2 + ul + pl;
	char b64[2100]; /* 4/3 of raw, and a NUL */
	size_t bl = mp_base64_encode(raw, rl, b64);
	mp_memwipe(raw, sizeof(raw));
	if (auth_begin(s, cmd, "PLAIN", b64, bl, true))
		auth_continue(s);
	mp_memwipe(b64, sizeof(b64));
}

/* --------------------------------------------------------------- table */

static void cmd_starttls(struct imap_sess *s, const struct imap_command *cmd);
static void cmd_compress(struct imap_sess *s, const struct imap_command *cmd);
static void idle_start(struct imap_sess *s, const struct imap_command *cmd);

enum {
	ST_NOAUTH = 1, ST_AUTH = 2, ST_SELECTED = 4,
	ST_ANY = ST_NOAUTH | ST_AUTH | ST_SELECTED,
	ST_LOGGED = ST_AUTH | ST_SELECTED,
};

struct cmd_def {
	const char *name;
	imap_cmd_fn fn;
	unsigned states;
	bool on_loop;   /* runs on the loop: touches the connection, or starts SASL */
};

static const struct cmd_def commands[] = {
	{ "CAPABILITY", cmd_capability, ST_ANY, false },
	{ "NOOP", cmd_noop, ST_ANY, false },
	{ "LOGOUT", cmd_logout, ST_ANY, false },
	{ "ID", cmd_id, ST_ANY, false },
	{ "AUTHENTICATE", cmd_authenticate, ST_NOAUTH, true },
	{ "LOGIN", cmd_login, ST_NOAUTH, true },
	{ "STARTTLS", cmd_starttls, ST_NOAUTH, true },
	{ "COMPRESS", cmd_compress, ST_LOGGED, true },
	{ "IDLE", idle_start, ST_LOGGED, true },
	{ "ENABLE", cmd_enable, ST_LOGGED, false },
	{ "NAMESPACE", cmd_namespace, ST_LOGGED, false },
	{ "SELECT", imap_cmd_select, ST_LOGGED, false },
	{ "EXAMINE", imap_cmd_select, ST_LOGGED, false },
	{ "CREATE", imap_cmd_create, ST_LOGGED, false },
	{ "DELETE", imap_cmd_delete, ST_LOGGED, false },
	{ "RENAME", imap_cmd_rename, ST_LOGGED, false },
	{ "SUBSCRIBE", imap_cmd_subscribe, ST_LOGGED, false },
	{ "UNSUBSCRIBE", imap_cmd_subscribe, ST_LOGGED, false },
	{ "LIST", imap_cmd_list, ST_LOGGED, false },
	{ "LSUB", imap_cmd_list, ST_LOGGED, false },
	{ "STATUS", imap_cmd_status, ST_LOGGED, false },
	{ "APPEND", imap_cmd_append, ST_LOGGED, false },
	{ "GETQUOTAROOT", imap_cmd_quota, ST_LOGGED, false },
	{ "GETQUOTA", imap_cmd_quota, ST_LOGGED, false },
	{ "CHECK", cmd_noop, ST_SELECTED, false },
	{ "CLOSE", imap_cmd_close, ST_SELECTED, false },
	{ "UNSELECT", imap_cmd_close, ST_SELECTED, false },
	{ "EXPUNGE", imap_cmd_expunge, ST_SELECTED, false },
	{ "UID EXPUNGE", imap_cmd_expunge, ST_SELECTED, false },
	{ "FETCH", imap_cmd_fetch, ST_SELECTED, false },
	{ "UID FETCH", imap_cmd_fetch, ST_SELECTED, false },
	{ "STORE", imap_cmd_store, ST_SELECTED, false },
	{ "UID STORE", imap_cmd_store, ST_SELECTED, false },
	{ "SEARCH", imap_cmd_search, ST_SELECTED, false },
	{ "UID SEARCH", imap_cmd_search, ST_SELECTED, false },
	{ "COPY", imap_cmd_copy, ST_SELECTED, false },
	{ "UID COPY", imap_cmd_copy, ST_SELECTED, false },
	{ "MOVE", imap_cmd_copy, ST_SELECTED, false },
	{ "UID MOVE", imap_cmd_copy, ST_SELECTED, false },
	{ "SORT", imap_cmd_sort, ST_SELECTED, false },
	{ "UID SORT", imap_cmd_sort, ST_SELECTED, false },
	{ "THREAD", imap_cmd_thread, ST_SELECTED, false },
	{ "UID THREAD", imap_cmd_thread, ST_SELECTED, false },
};

static const struct cmd_def *find_cmd(const char *name)
{
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	return NULL;
}

static unsigned state_bit(const struct imap_sess *s)
{
	switch (s->state) {
	case IMAP_S_NOAUTH: return ST_NOAUTH;
	case IMAP_S_AUTH: return ST_AUTH;
	default: return ST_SELECTED;
	}
}

/* ------------------------------------------------------ worker hand-off */

static void sess_process(struct imap_sess *s);
static void drain_arm(struct imap_sess *s);

static void job_run(struct fe_job *j)
{
	struct imap_sess *s = (struct imap_sess *)((char *)j - offsetof(struct imap_sess, job));
	switch (s->job_kind) {
	case IMAP_JOB_CMD:
		if (s->cont != NULL) {
			imap_cmd_fn fn = s->cont;
			s->cont = NULL;
			fn(s, s->cmd);
		} else {
			s->cmd_fn(s, s->cmd);
		}
		break;
	case IMAP_JOB_AUTH:
		fe_auth_job_run(s->auth, s->conf->store);
		break;
	case IMAP_JOB_IDLE_SYNC:
		imap_sync(s, true);
		break;
	}
}

static void job_done(struct fe_job *j)
{
	struct imap_sess *s = (struct imap_sess *)((char *)j - offsetof(struct imap_sess, job));
	s->busy = false;
	if (fe_conn_closed(s->c))
		return;
	if (s->job_kind == IMAP_JOB_AUTH) {
		s->need_lookup = false;
		auth_continue(s);
	}
	if (s->out_failed) {
		mp_buf_reset(&s->out);
		s->out_failed = false;
		imap_out(s, "* BYE [SERVERBUG] Out of memory\r\n");
		s->logout = true;
	}
	flush_out(s);
	if (s->logout) {
		fe_conn_close_flush(s->c);
		return;
	}
	if (s->job_kind == IMAP_JOB_IDLE_SYNC) {
		s->idle_syncing = false;
		/* DONE may have come while the sync ran: read it now. */
		fe_conn_kick(s->c);
		return;
	}
	if (s->cont != NULL) {
		/* The next batch once the client has read most of this one. */
		if (fe_conn_output_len(s->c) > IMAP_BATCH_BYTES) {
			s->wait_drain = true;
			drain_arm(s);
			return;
		}
		s->busy = true;
		fe_conn_submit(s->c, &s->job);
		return;
	}
	if (s->cmd_done != NULL) {
		void (*fn)(struct imap_sess *) = s->cmd_done;
		s->cmd_done = NULL;
		fn(s);
	}
	if (fe_conn_output_len(s->c) > IMAP_BATCH_BYTES) {
		/* A client that pipelines without reading waits here: the next
		 * command runs once most of this answer is out. */
		s->wait_drain = true;
		s->drain_resume = true;
		drain_arm(s);
		return;
	}
	fe_conn_resume(s->c);
	fe_conn_kick(s->c);
}

static void drain_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct imap_sess *s = arg;
	if (!s->wait_drain || fe_conn_closed(s->c))
		return;
	if (fe_conn_output_len(s->c) > IMAP_BATCH_BYTES / 4) {
		drain_arm(s);
		return;
	}
	s->wait_drain = false;
	if (s->drain_resume) {
		s->drain_resume = false;
		fe_conn_resume(s->c);
		fe_conn_kick(s->c);
		return;
	}
	s->busy = true;
	fe_conn_submit(s->c, &s->job);
}

static void drain_arm(struct imap_sess *s)
{
	struct timeval tv = { 0, DRAIN_POLL_MS * 1000 };
	if (s->drain_timer == NULL)
		s->drain_timer = evtimer_new(fe_conn_base(s->c), drain_tick, s);
	if (s->drain_timer == NULL) {
		fe_conn_close(s->c);
		return;
	}
	evtimer_add(s->drain_timer, &tv);
}

static void submit(struct imap_sess *s, enum imap_job_kind kind)
{
	s->job_kind = kind;
	s->busy = true;
	s->job.run = job_run;
	s->job.done = job_done;
	fe_conn_pause(s->c);
	fe_conn_submit(s->c, &s->job);
}

/* ----------------------------------------------------------------- IDLE */

static void idle_tick(evutil_socket_t fd, short what, void *arg);

static void idle_arm(struct imap_sess *s)
{
	struct timeval tv = { 0, IDLE_POLL_MS * 1000 };
	if (s->idle_timer == NULL)
		s->idle_timer = evtimer_new(fe_conn_base(s->c), idle_tick, s);
	if (s->idle_timer != NULL)
		evtimer_add(s->idle_timer, &tv);
}

static void idle_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct imap_sess *s = arg;
	if (!s->idling || fe_conn_closed(s->c))
		return;
	if (!s->idle_syncing && !s->busy) {
		bool due = false;
		uint64_t gen = s->wsub ? fe_watch_gen(s->wsub) : 0;
		if (gen != 0) {
			due = gen != s->wgen_seen;
			s->wgen_seen = gen;
		} else {
			s->idle_unwatched_ms += IDLE_POLL_MS;
			due = s->idle_unwatched_ms >= IDLE_UNWATCHED_MS;
		}
		if (due) {
			s->idle_unwatched_ms = 0;
			s->idle_syncing = true;
			s->job_kind = IMAP_JOB_IDLE_SYNC;
			s->busy = true;
			s->job.run = job_run;
			s->job.done = job_done;
			fe_conn_submit(s->c, &s->job);
		}
	}
	idle_arm(s);
}

static void idle_start(struct imap_sess *s, const struct imap_command *cmd)
{
	if (cmd->nargs != 0) {
		imap_tagged(s, cmd->tag, "BAD IDLE takes no arguments");
		return;
	}
	s->idle_tag = strdup(cmd->tag);
	if (s->idle_tag == NULL) {
		imap_tagged(s, cmd->tag, "NO [SERVERBUG] Out of memory");
		return;
	}
	s->idling = true;
	s->wgen_seen = s->wsub ? fe_watch_gen(s->wsub) : 0;
	s->idle_unwatched_ms = 0;
	imap_out(s, "+ idling\r\n");
	idle_arm(s);
	/* Whatever changed before IDLE began is shown at once. */
	s->idle_syncing = true;
	s->job_kind = IMAP_JOB_IDLE_SYNC;
	s->busy = true;
	s->job.run = job_run;
	s->job.done = job_done;
	fe_conn_submit(s->c, &s->job);
}

static void idle_line(struct imap_sess *s, const char *line, size_t len)
{
	if (len == 4 && strncasecmp(line, "DONE", 4) == 0) {
		s->idling = false;
		if (s->idle_timer != NULL)
			evtimer_del(s->idle_timer);
		imap_tagged(s, s->idle_tag, "OK IDLE terminated");
	} else {
		s->idling = false;
		if (s->idle_timer != NULL)
			evtimer_del(s->idle_timer);
		imap_tagged(s, s->idle_tag, "BAD Expected DONE");
		s->errors++;
	}
	free(s->idle_tag);
	s->idle_tag = NULL;
}

/* ---------------------------------------------------------- STARTTLS */

static void cmd_starttls(struct imap_sess *s, const struct imap_command *cmd)
{
	if (fe_conn_tls_active(s->c)) {
		imap_tagged(s, cmd->tag, "BAD TLS is already active");
		return;
	}
	if (!fe_conn_tls_offered(s->c)) {
		imap_tagged(s, cmd->tag, "NO TLS is not available");
		return;
	}
	imap_tagged(s, cmd->tag, "OK Begin TLS negotiation now");
	flush_out(s);
	imap_parser_reset(s->parser);
	if (fe_conn_starttls(s->c) < 0)
		fe_conn_close(s->c);
}

/* ----------------------------------------------------------- COMPRESS */

static void cmd_compress(struct imap_sess *s, const struct imap_command *cmd)
{
	if (cmd->nargs != 1 || !imap_arg_is_atom(&cmd->args[0], "DEFLATE")) {
		imap_tagged(s, cmd->tag, "BAD COMPRESS DEFLATE");
		return;
	}
	if (s->compressed) {
		imap_tagged(s, cmd->tag, "NO [COMPRESSIONACTIVE] Already compressing");
		return;
	}
	imap_tagged(s, cmd->tag, "OK DEFLATE active");
	flush_out(s);
	if (fe_conn_compress(s->c) < 0) {
		fe_conn_close(s->c);
		return;
	}
	s->compressed = true;
}

/* ------------------------------------------------------------- dispatch */

static void bad(struct imap_sess *s, const char *tag, const char *text)
{
	imap_tagged(s, tag ? tag : "*", "BAD %s", text);
	s->errors++;
}

static void dispatch(struct imap_sess *s, const struct imap_command *cmd)
{
	const struct cmd_def *d = find_cmd(cmd->name);
	if (d == NULL) {
		bad(s, cmd->tag, "Unknown command");
		return;
	}
	if (!(d->states & state_bit(s))) {
		bad(s, cmd->tag, s->state == IMAP_S_NOAUTH ? "Log in first"
			: s->state == IMAP_S_AUTH ? "No mailbox selected"
			: "Not allowed after authentication");
		return;
	}
	if (d->on_loop) {
		d->fn(s, cmd);
		if (s->need_lookup)
			submit(s, IMAP_JOB_AUTH);
		return;
	}
	s->cmd = cmd;
	s->cmd_fn = d->fn;
	s->cont = NULL;
	s->uid_in_fetch = cmd->uid;
	submit(s, IMAP_JOB_CMD);
}

static void sess_process(struct imap_sess *s)
{
	struct evbuffer *in = fe_conn_input(s->c);
	for (int rounds = 0; rounds < 64; rounds++) {
		if (s->busy || s->logout || fe_conn_closed(s->c) || s->wait_drain)
			break;
		if (s->errors >= s->conf->max_errors) {
			imap_out(s, "* BYE Too many errors\r\n");
			s->logout = true;
			break;
		}
		size_t avail = evbuffer_get_length(in);
		if (avail == 0)
			break;
		size_t look = avail < 65536 ? avail : 65536;
		const char *data = (const char *)evbuffer_pullup(in, (ev_ssize_t)look);
		if (data == NULL)
			break;
		if (s->in_auth || s->idling) {
			size_t ll, used;
			int r = imap_read_line(data, look, AUTH_LINE_MAX, &ll, &used);
			if (r == 0)
				break;
			if (r < 0) {
				imap_out(s, "* BYE Line too long\r\n");
				s->logout = true;
				break;
			}
			char *line = malloc(ll + 1);
			if (line == NULL) {
				s->logout = true;
				break;
			}
			memcpy(line, data, ll);
			line[ll] = '\0';
			evbuffer_drain(in, used);
			if (s->idling) {
				idle_line(s, line, ll);
			} else {
				fe_auth_input(s->auth, line, ll);
				auth_continue(s);
				if (s->need_lookup)
					submit(s, IMAP_JOB_AUTH);
			}
			mp_memwipe(line, ll);
			free(line);
			continue;
		}
		size_t used = 0;
		const struct imap_command *cmd = NULL;
		const struct imap_parse_error *err = NULL;
		enum imap_parse_status st = imap_parser_feed(s->parser, data, look, &used, &cmd, &err);
		evbuffer_drain(in, used);
		switch (st) {
		case IMAP_PARSE_MORE:
			if (used == 0)
				goto out;
			break;
		case IMAP_PARSE_CONTINUE:
			imap_out(s, "+ OK\r\n");
			break;
		case IMAP_PARSE_COMMAND:
			dispatch(s, cmd);
			break;
		case IMAP_PARSE_ERROR:
			if (err->code == IMAP_ERR_LITERAL_TOO_BIG && err->tag != NULL &&
			    err->name != NULL && strcmp(err->name, "APPEND") == 0) {
				imap_tagged(s, err->tag, "NO [TOOBIG] %s", err->text);
				s->errors++;
			} else {
				bad(s, err->tag, err->text);
			}
			break;
		case IMAP_PARSE_FATAL:
			imap_out(s, "* BYE %s\r\n", err && err->text ? err->text : "Protocol error");
			s->logout = true;
			break;
		}
	}
out:
	if (!s->busy)
		flush_out(s);
	if (s->logout && !s->busy)
		fe_conn_close_flush(s->c);
}

/* ------------------------------------------------------------ fe_proto */

static void *imap_open(struct fe_conn *c, void *ctx)
{
	const struct imap_conf *conf = ctx;
	struct imap_sess *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return NULL;
	s->c = c;
	s->conf = conf;
	s->state = IMAP_S_NOAUTH;
	mp_buf_init(&s->out, 0);
	struct imap_parse_limits lim = {
		.max_append_literal = conf->max_message_size,
	};
	if (imap_parser_new(&lim, &s->parser) < 0) {
		free(s);
		return NULL;
	}
	fe_conn_set_idle_timeout(c, conf->idle_timeout_ms);
	fe_conn_no_session_limit(c);
	if (fe_server_stopping(fe_conn_server(c))) {
		imap_out(s, "* BYE Server shutting down\r\n");
		flush_out(s);
		fe_conn_close_flush(c);
		return s;
	}
	imap_out(s, "* OK [");
	imap_capabilities(s);
	imap_out(s, "] %s Merpati IMAP ready\r\n", conf->hostname);
	flush_out(s);
	return s;
}

static void imap_on_input(void *arg)
{
	sess_process(arg);
}

/* Say goodbye and close once the output is out (after the command in
 * flight, if any: job_done closes then). */
static void bye(struct imap_sess *s, const char *line)
{
	imap_out(s, "%s", line);
	s->logout = true;
	if (!s->busy) {
		flush_out(s);
		fe_conn_close_flush(s->c);
	}
}

static void imap_on_timeout(void *arg, bool total)
{
	bye(arg, total ? "* BYE Session time limit reached\r\n"
		       : "* BYE Autologout; idle for too long\r\n");
}

static void imap_on_shutdown(void *arg)
{
	bye(arg, "* BYE Server shutting down\r\n");
}

static void imap_free(void *arg)
{
	struct imap_sess *s = arg;
	if (s->idle_timer != NULL)
		event_free(s->idle_timer);
	if (s->drain_timer != NULL)
		event_free(s->drain_timer);
	if (s->cmd_state_free != NULL)
		s->cmd_state_free(s->cmd_state);
	free(s->curv);
	fe_watch_unsubscribe(&s->wsub);
	imap_sel_clear(s);
	imap_parser_free(&s->parser);
	fe_auth_free(&s->auth);
	free(s->auth_tag);
	free(s->idle_tag);
	free(s->user);
	free(s->saved);
	mp_buf_free(&s->out);
	free(s);
}

const struct fe_proto imap_proto = {
	.name = "imap",
	.busy = "* BYE [UNAVAILABLE] Too many connections, try again later\r\n",
	.open = imap_open,
	.on_input = imap_on_input,
	.on_timeout = imap_on_timeout,
	.on_shutdown = imap_on_shutdown,
	.free = imap_free,
};
