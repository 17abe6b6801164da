/*
 * imap_cmd_message: IMAP commands on the messages of the selected mailbox
 * (FETCH, STORE, SEARCH, COPY/MOVE, EXPUNGE and their UID forms). Worker
 * threads; see imap_sess.h. FETCH answers from the index (flags, dates,
 * sizes, the ENVELOPE and packed BODYSTRUCTURE made at delivery) and reads
 * a body only for the sections asked for; it runs in batches of about
 * IMAP_BATCH_BYTES of output.
 */
#include "imap_sess.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "imap_mime.h"
#include "imap_parse.h"
#include "imap_search.h"
#include "imap_text.h"
#include "mailstore.pb-c.h"
#include "mp_error.h"
#include "mp_uidset.h"

#define FETCH_BATCH_MSGS 500
#define FETCH_ATTS_MAX 64
#define BODY_READ_MAX (4u * 1024 * 1024)

/* ------------------------------------------------------------ sets */

static int uids_push(uint32_t **v, size_t *n, size_t *cap, uint32_t uid)
{
	if (*n == *cap) {
		size_t nc = *cap ? *cap * 2 : 64;
		uint32_t *nv = realloc(*v, nc * sizeof(*nv));
		if (nv == NULL)
			return MP_ENOMEM;
		*v = nv;
		*cap = nc;
	}
	(*v)[(*n)++] = uid;
	return 0;
}

int imap_resolve_set(struct imap_sess *s, const struct imap_arg *a, bool uid,
		     uint32_t **uids_r, size_t *n_r)
{
	*uids_r = NULL;
	*n_r = 0;
	if (a->type != IMAP_ARG_ATOM)
		return MP_EINVAL;
	uint32_t *v = NULL;
	size_t n = 0, cap = 0;
	if (strcmp(a->s, "$") == 0) {
		for (size_t i = 0; i < s->nsaved; i++)
			if (imap_seq_of(s, s->saved[i]) != 0 && uids_push(&v, &n, &cap, s->saved[i]) < 0) {
				free(v);
				return MP_ENOMEM;
			}
		*uids_r = v;
		*n_r = n;
		return 0;
	}
	struct mp_uidset set;
	const char *perr;
	if (mp_uidset_parse(a->s, a->len, &set, &perr) < 0)
		return MP_EINVAL;
	uint32_t max = uid ? (s->sel.n ? s->sel.uids[s->sel.n - 1] : 0) : (uint32_t)s->sel.n;
	if (!uid && max == 0) {
		/* No message numbers exist, '*' included (RFC 9051 §2.3.1.2). */
		mp_uidset_free(&set);
		return MP_EINVAL;
	}
	if (!uid) {
		/* A message number beyond the mailbox is an error (RFC 9051 §9). */
		for (size_t i = 0; i < set.n; i++) {
			uint32_t hi = set.r[i].hi == MP_UIDSET_STAR ? 0 : set.r[i].hi;
			uint32_t lo = set.r[i].lo == MP_UIDSET_STAR ? 0 : set.r[i].lo;
			if (hi > max || lo > max) {
				mp_uidset_free(&set);
				return MP_EINVAL;
			}
		}
	}
	mp_uidset_resolve(&set, max);
	int ret = 0;
	for (size_t i = 0; i < set.n && ret == 0; i++) {
		uint32_t lo = set.r[i].lo, hi = set.r[i].hi;
		if (uid) {
			/* first index with uid >= lo */
			size_t l = 0, h = s->sel.n;
			while (l < h) {
				size_t m = l + (h - l) / 2;
				if (s->sel.uids[m] < lo)
					l = m + 1;
				else
					h = m;
			}
			for (size_t k = l; k < s->sel.n && s->sel.uids[k] <= hi && ret == 0; k++)
				ret = uids_push(&v, &n, &cap, s->sel.uids[k]);
		} else {
			for (uint64_t q = lo; q <= hi && q >= 1 && q <= s->sel.n && ret == 0; q++)
				ret = uids_push(&v, &n, &cap, s->sel.uids[q - 1]);
		}
	}
	mp_uidset_free(&set);
	if (ret < 0) {
		free(v);
		return ret;
	}
	*uids_r = v;
	*n_r = n;
	return 0;
}

static char *format_uids(const uint32_t *v, size_t n)
{
	char *out = NULL;
	if (n == 0)
		return strdup("");
	if (mp_uidset_format(v, n, &out) < 0)
		return NULL;
	return out;
}

/* --------------------------------------------------------------- FETCH */

struct fetch_state {
	struct imap_fetch_att atts[FETCH_ATTS_MAX];
	size_t natts;
	bool need_structure;
	bool need_body;
	bool set_seen;
	bool want_flags;
	bool want_modseq;
	uint64_t changed_since;
	bool vanished;
};

static void fetch_state_free(void *p)
{
	free(p);
}

static int add_att(struct imap_sess *s, struct fetch_state *f, const char *name, size_t len)
{
	if (f->natts == FETCH_ATTS_MAX)
		return MP_ETOOBIG;
	const char *err;
	if (imap_fetch_att_parse(s->parser, name, len, &f->atts[f->natts], &err) < 0)
		return MP_EINVAL;
	f->natts++;
	return 0;
}

static int add_macro(struct imap_sess *s, struct fetch_state *f, const char *m)
{
	static const char *const fast[] = { "FLAGS", "INTERNALDATE", "RFC822.SIZE" };
	int ret = 0;
	for (size_t i = 0; i < 3 && ret == 0; i++)
		ret = add_att(s, f, fast[i], strlen(fast[i]));
	if (ret == 0 && strcasecmp(m, "FAST") != 0)
		ret = add_att(s, f, "ENVELOPE", 8);
	if (ret == 0 && strcasecmp(m, "FULL") == 0)
		ret = add_att(s, f, "BODY", 4);
	return ret;
}

static int parse_fetch(struct imap_sess *s, const struct imap_command *cmd,
		       struct fetch_state *f)
{
	if (cmd->nargs < 2 || cmd->nargs > 3)
		return MP_EINVAL;
	const struct imap_arg *it = &cmd->args[1];
	int ret = 0;
	if (it->type == IMAP_ARG_ATOM && (strcasecmp(it->s, "ALL") == 0 ||
					  strcasecmp(it->s, "FAST") == 0 ||
					  strcasecmp(it->s, "FULL") == 0)) {
		ret = add_macro(s, f, it->s);
	} else if (it->type == IMAP_ARG_ATOM) {
		ret = add_att(s, f, it->s, it->len);
	} else if (it->type == IMAP_ARG_LIST && it->nlist > 0) {
		for (size_t i = 0; i < it->nlist && ret == 0; i++) {
			if (it->list[i].type != IMAP_ARG_ATOM)
				return MP_EINVAL;
			ret = add_att(s, f, it->list[i].s, it->list[i].len);
		}
	} else {
		return MP_EINVAL;
	}
	if (ret < 0)
		return ret;
	if (cmd->nargs == 3) {
		const struct imap_arg *m = &cmd->args[2];
		if (m->type != IMAP_ARG_LIST)
			return MP_EINVAL;
		for (size_t i = 0; i < m->nlist; i++) {
			if (imap_arg_is_atom(&m->list[i], "CHANGEDSINCE") && i + 1 < m->nlist &&
			    imap_arg_number64(&m->list[i + 1], &f->changed_since)) {
				i++;
				s->condstore = true;
			} else if (imap_arg_is_atom(&m->list[i], "VANISHED") && cmd->uid && s->qresync) {
				f->vanished = true;
			} else {
				return MP_EINVAL;
			}
		}
		if (f->vanished && f->changed_since == 0)
			return MP_EINVAL;
	}
	for (size_t i = 0; i < f->natts; i++) {
		const struct imap_fetch_att *a = &f->atts[i];
		switch (a->kind) {
		case IMAP_FA_ENVELOPE:
		case IMAP_FA_BODY:
		case IMAP_FA_BODYSTRUCTURE:
			f->need_structure = true;
			break;
		case IMAP_FA_RFC822:
		case IMAP_FA_RFC822_TEXT:
			f->need_body = true;
			f->need_structure = true;
			f->set_seen = true;
			break;
		case IMAP_FA_RFC822_HEADER:
		case IMAP_FA_BODY_SECTION:
		case IMAP_FA_BINARY:
		case IMAP_FA_BINARY_SIZE:
			f->need_body = true;
			f->need_structure = true;
			if (!a->peek && a->kind != IMAP_FA_BINARY_SIZE &&
			    a->kind != IMAP_FA_RFC822_HEADER)
				f->set_seen = true;
			break;
		case IMAP_FA_FLAGS:
			f->want_flags = true;
			break;
		case IMAP_FA_MODSEQ:
			f->want_modseq = true;
			break;
		case IMAP_FA_THREADID:
			f->need_body = true; /* from the References of the header */
			break;
		default:
			break;
		}
	}
	if (s->sel.readonly)
		f->set_seen = false;
	if (f->changed_since > 0)
		f->want_modseq = true;
	if (f->set_seen)
		f->want_flags = true;
	if (s->condstore && f->want_flags)
		f->want_modseq = true;
	return 0;
}

/* Read a whole message (FetchBody in chunks). */
static int read_body(struct imap_sess *s, uint32_t uid, uint64_t size, struct mp_buf *b,
		     char **err_r)
{
	uint64_t off = 0;
	for (int i = 0; i < 4096; i++) {
		Merpati__V1__FetchBodyRequest q = MERPATI__V1__FETCH_BODY_REQUEST__INIT;
		q.user = s->user;
		q.mailbox = s->sel.name;
		q.uid = uid;
		q.offset = off;
		q.length = BODY_READ_MAX;
		Merpati__V1__FetchBodyReply *r = NULL;
		int ret = imap_call(s, "FetchBody", &q.base, &merpati__v1__fetch_body_reply__descriptor,
				    (ProtobufCMessage **)&r, err_r);
		if (ret < 0)
			return ret;
		if (off == 0 && mp_buf_reserve(b, r->total_size) < 0) {
			protobuf_c_message_free_unpacked(&r->base, NULL);
			return MP_ENOMEM;
		}
		ret = mp_buf_append(b, r->data.data, r->data.len);
		off += r->data.len;
		uint64_t total = r->total_size;
		bool empty = r->data.len == 0;
		protobuf_c_message_free_unpacked(&r->base, NULL);
		if (ret < 0)
			return ret;
		if (off >= total || empty)
			return 0;
	}
	(void)size;
	return MP_EIO;
}

static void out_literal(struct imap_sess *s, const char *p, size_t n, bool binary)
{
	bool has_nul = binary && memchr(p, '\0', n) != NULL;
	imap_out(s, "%s{%zu}\r\n", has_nul ? "~" : "", n);
	imap_out_raw(s, p, n);
}

static void out_section_name(struct imap_sess *s, const struct imap_fetch_att *a)
{
	const struct imap_section *sec = &a->section;
	imap_out(s, "%s[", a->kind == IMAP_FA_BINARY ? "BINARY"
		 : a->kind == IMAP_FA_BINARY_SIZE ? "BINARY.SIZE" : "BODY");
	for (unsigned i = 0; i < sec->nparts; i++)
		imap_out(s, "%s%u", i ? "." : "", sec->part[i]);
	const char *t = NULL;
	switch (sec->text) {
	case IMAP_SECT_NONE: break;
	case IMAP_SECT_HEADER: t = "HEADER"; break;
	case IMAP_SECT_HEADER_FIELDS: t = "HEADER.FIELDS"; break;
	case IMAP_SECT_HEADER_FIELDS_NOT: t = "HEADER.FIELDS.NOT"; break;
	case IMAP_SECT_TEXT: t = "TEXT"; break;
	case IMAP_SECT_MIME: t = "MIME"; break;
	}
	if (t != NULL)
		imap_out(s, "%s%s", sec->nparts ? "." : "", t);
	if (sec->text == IMAP_SECT_HEADER_FIELDS || sec->text == IMAP_SECT_HEADER_FIELDS_NOT) {
		imap_out(s, " (");
		for (size_t i = 0; i < sec->nfields; i++) {
			const char *f = sec->fields[i];
			bool atom = *f != '\0';
			for (const char *p = f; *p && atom; p++)
				atom = *p > 0x20 && *p < 0x7f && strchr("(){%*\"\\]", *p) == NULL;
			if (i)
				imap_out(s, " ");
			if (atom) {
				/* as Dovecot and Cyrus answer: the name as an atom, upper case */
				for (const char *p = f; *p; p++) {
					char c = *p >= 'a' && *p <= 'z' ? (char)(*p - 32) : *p;
					imap_out_raw(s, &c, 1);
				}
			} else {
				imap_out_string(s, f, strlen(f));
			}
		}
		imap_out(s, ")");
	}
	imap_out(s, "]");
	if (a->partial && a->kind != IMAP_FA_BINARY_SIZE)
		imap_out(s, "<%llu>", (unsigned long long)a->partial_start);
}

/* One BODY[...] / BINARY[...] / BINARY.SIZE[...] item. 0, or MP_EUNIMPL
 * for BINARY of an unknown encoding (the command fails: UNKNOWN-CTE). */
static int out_section(struct imap_sess *s, const struct imap_fetch_att *a,
		       const struct imap_mime *mime, const char *msg, size_t len)
{
	const struct imap_section *sec = &a->section;
	enum imap_mime_sect kind = IMAP_MIME_SECT_BODY;
	switch (sec->text) {
	case IMAP_SECT_HEADER:
	case IMAP_SECT_HEADER_FIELDS:
	case IMAP_SECT_HEADER_FIELDS_NOT:
		kind = IMAP_MIME_SECT_HEADER;
		break;
	case IMAP_SECT_TEXT: kind = IMAP_MIME_SECT_TEXT; break;
	case IMAP_SECT_MIME: kind = IMAP_MIME_SECT_MIME; break;
	case IMAP_SECT_NONE: break;
	}
	struct imap_mime_span sp = { 0 };
	const char *data = "";
	size_t dlen = 0;
	struct mp_buf tmp;
	mp_buf_init(&tmp, 0);
	if (sec->nparts == 0 && kind == IMAP_MIME_SECT_BODY) {
		data = msg;
		dlen = len;
	} else if (imap_mime_section(mime, sec->part, sec->nparts, kind, &sp) == 0 &&
		   sp.off <= len && sp.len <= len - sp.off) {
		data = msg + sp.off;
		dlen = (size_t)sp.len;
	}
	if (sec->text == IMAP_SECT_HEADER_FIELDS || sec->text == IMAP_SECT_HEADER_FIELDS_NOT) {
		if (imap_hdr_filter(data, dlen, sec->fields, sec->nfields,
				    sec->text == IMAP_SECT_HEADER_FIELDS_NOT, &tmp) < 0) {
			mp_buf_free(&tmp);
			return MP_ENOMEM;
		}
		data = (const char *)tmp.data;
		dlen = tmp.len;
	}
	bool binary = a->kind == IMAP_FA_BINARY || a->kind == IMAP_FA_BINARY_SIZE;
	if (binary && sec->nparts > 0) {
		if (sp.is_multipart) {
			mp_buf_free(&tmp);
			return MP_EINVAL;
		}
		struct mp_buf dec;
		mp_buf_init(&dec, 0);
		int ret = imap_text_decode_cte(sp.cte, data, dlen, &dec);
		if (ret < 0) {
			mp_buf_free(&dec);
			mp_buf_free(&tmp);
			return ret;
		}
		mp_buf_free(&tmp);
		tmp = dec;
		data = (const char *)tmp.data;
		dlen = tmp.len;
	}
	out_section_name(s, a);
	if (a->kind == IMAP_FA_BINARY_SIZE) {
		imap_out(s, " %zu", dlen);
	} else {
		if (a->partial) {
			uint64_t st = a->partial_start;
			if (st >= dlen) {
				dlen = 0;
			} else {
				data += st;
				dlen -= (size_t)st;
				if (a->partial_count < dlen)
					dlen = (size_t)a->partial_count;
			}
		}
		imap_out(s, " ");
		out_literal(s, data, dlen, binary);
	}
	mp_buf_free(&tmp);
	return 0;
}

/* RFC 8474 THREADID: the thread's root message as the References (or
 * In-Reply-To) field names it, else the message's own Message-ID, hashed
 * (FNV-1a 64); NIL for a message with none of them. Every reply naming
 * the same root shares it. */
static void out_threadid(struct imap_sess *s, const char *msg, size_t len)
{
	size_t hl = imap_hdr_block_len(msg, len);
	static const char *const fields[] = { "References", "In-Reply-To", "Message-ID" };
	struct mp_buf v;
	mp_buf_init(&v, 0);
	const char *id = NULL;
	size_t idlen = 0;
	for (size_t f = 0; f < 3 && id == NULL; f++) {
		mp_buf_reset(&v);
		if (imap_hdr_get(msg, hl, fields[f], &v) != 1 || v.data == NULL)
			continue;
		const char *lt = memchr(v.data, '<', v.len);
		const char *gt = lt ? memchr(lt, '>', v.len - (size_t)(lt - v.data)) : NULL;
		if (lt != NULL && gt != NULL && gt > lt + 1) {
			id = lt + 1;
			idlen = (size_t)(gt - lt - 1);
		}
	}
	if (id == NULL) {
		imap_out(s, "THREADID NIL");
	} else {
		uint64_t h = 0xcbf29ce484222325ull;
		for (size_t i = 0; i < idlen; i++) {
			h ^= (unsigned char)id[i];
			h *= 0x100000001b3ull;
		}
		imap_out(s, "THREADID (T%016llx)", (unsigned long long)h);
	}
	mp_buf_free(&v);
}

/* One message's FETCH response. 0, or an error that ends the command. */
static int fetch_one(struct imap_sess *s, struct fetch_state *f,
		     const Merpati__V1__MessageIndex *m, char **err_r)
{
	uint32_t seq = imap_seq_of(s, m->uid);
	if (seq == 0)
		return 0;
	struct mp_buf body;
	mp_buf_init(&body, 0);
	struct imap_mime *mime = NULL;
	int ret = 0;
	if (f->need_body) {
		ret = read_body(s, m->uid, m->size, &body, err_r);
		if (ret == MP_ENOENT) {
			mp_buf_free(&body);
			return 0; /* expunged meanwhile: nothing to show */
		}
		if (ret < 0)
			goto out;
	}
	if (f->need_structure) {
		if (m->bodystructure.len > 0 &&
		    imap_mime_unpack(m->bodystructure.data, m->bodystructure.len, &mime) == 0 &&
		    (!f->need_body || imap_mime_size(mime) == body.len)) {
			/* made at delivery */
		} else {
			imap_mime_free(&mime);
			if (!f->need_body) {
				ret = read_body(s, m->uid, m->size, &body, err_r);
				if (ret == MP_ENOENT) {
					ret = 0;
					goto out;
				}
				if (ret < 0)
					goto out;
			}
			if ((ret = imap_mime_parse((const char *)body.data, body.len, NULL, &mime)) < 0)
				goto out;
		}
	}
	size_t line_start = s->out.len;  /* a failed item takes its line back */
	imap_out(s, "* %u FETCH (", seq);
	const char *sp = "";
	bool uid_done = false, flags_done = false, modseq_done = false;
	for (size_t i = 0; i < f->natts && ret == 0; i++) {
		const struct imap_fetch_att *a = &f->atts[i];
		imap_out(s, "%s", sp);
		sp = " ";
		switch (a->kind) {
		case IMAP_FA_UID:
			imap_out(s, "UID %u", m->uid);
			uid_done = true;
			break;
		case IMAP_FA_FLAGS:
			imap_out(s, "FLAGS ");
			imap_out_flags(s, m->flags, m->n_flags, imap_is_recent(s, m->uid));
			flags_done = true;
			break;
		case IMAP_FA_INTERNALDATE: {
			char d[40];
			imap_format_datetime((int64_t)m->internal_date, d, sizeof(d));
			imap_out(s, "INTERNALDATE \"%s\"", d);
			break;
		}
		case IMAP_FA_RFC822_SIZE:
			imap_out(s, "RFC822.SIZE %llu", (unsigned long long)m->size);
			break;
		case IMAP_FA_ENVELOPE:
			imap_out(s, "ENVELOPE ");
			if (m->envelope.len > 0) {
				imap_out_raw(s, m->envelope.data, m->envelope.len);
			} else {
				struct imap_mime *full = NULL;
				struct mp_buf e;
				mp_buf_init(&e, 0);
				if (body.len == 0)
					ret = read_body(s, m->uid, m->size, &body, err_r);
				if (ret == 0)
					ret = imap_mime_parse((const char *)body.data, body.len, NULL, &full);
				if (ret == 0)
					ret = imap_mime_envelope(full, &e);
				if (ret == 0)
					imap_out_raw(s, e.data, e.len);
				mp_buf_free(&e);
				imap_mime_free(&full);
			}
			break;
		case IMAP_FA_BODY:
		case IMAP_FA_BODYSTRUCTURE: {
			struct mp_buf b;
			mp_buf_init(&b, 0);
			ret = imap_mime_body(mime, a->kind == IMAP_FA_BODYSTRUCTURE, &b);
			if (ret == 0)
				imap_out(s, "%s %.*s", a->kind == IMAP_FA_BODY ? "BODY" : "BODYSTRUCTURE",
					 (int)b.len, (const char *)b.data);
			mp_buf_free(&b);
			break;
		}
		case IMAP_FA_MODSEQ:
			imap_out(s, "MODSEQ (%llu)", (unsigned long long)m->modseq);
			modseq_done = true;
			break;
		case IMAP_FA_EMAILID: {
			imap_out(s, "EMAILID (M");
			for (size_t k = 0; k < m->blob_id.len && k < 12; k++)
				imap_out(s, "%02x", m->blob_id.data[k]);
			imap_out(s, ")");
			break;
		}
		case IMAP_FA_THREADID:
			out_threadid(s, (const char *)body.data, body.len);
			break;
		case IMAP_FA_SAVEDATE:
			imap_out(s, "SAVEDATE NIL");
			break;
		case IMAP_FA_RFC822:
			imap_out(s, "RFC822 ");
			out_literal(s, (const char *)body.data, body.len, false);
			break;
		case IMAP_FA_RFC822_HEADER:
		case IMAP_FA_RFC822_TEXT: {
			struct imap_mime_span span = { 0 };
			bool hdr = a->kind == IMAP_FA_RFC822_HEADER;
			if (imap_mime_section(mime, NULL, 0, hdr ? IMAP_MIME_SECT_HEADER
					      : IMAP_MIME_SECT_TEXT, &span) < 0 ||
			    span.off > body.len || span.len > body.len - span.off)
				span.off = span.len = 0;
			imap_out(s, "%s ", hdr ? "RFC822.HEADER" : "RFC822.TEXT");
			out_literal(s, (const char *)body.data + span.off, (size_t)span.len, false);
			break;
		}
		case IMAP_FA_BODY_SECTION:
		case IMAP_FA_BINARY:
		case IMAP_FA_BINARY_SIZE:
			ret = out_section(s, a, mime, (const char *)body.data, body.len);
			break;
		}
	}
	if (ret == 0) {
		if (!uid_done && s->uid_in_fetch)
			imap_out(s, "%sUID %u", sp, m->uid);
		if (!flags_done && f->want_flags) {
			imap_out(s, " FLAGS ");
			imap_out_flags(s, m->flags, m->n_flags, imap_is_recent(s, m->uid));
		}
		if (!modseq_done && f->want_modseq)
			imap_out(s, " MODSEQ (%llu)", (unsigned long long)m->modseq);
		imap_out(s, ")\r\n");
	} else {
		s->out.len = line_start;
	}
out:
	imap_mime_free(&mime);
	mp_buf_free(&body);
	return ret;
}

static void fetch_finish(struct imap_sess *s, const struct imap_command *cmd, int ret,
			 const char *err)
{
	free(s->curv);
	s->curv = NULL;
	s->ncurv = s->cur = 0;
	if (s->cmd_state_free)
		s->cmd_state_free(s->cmd_state);
	s->cmd_state = NULL;
	s->cmd_state_free = NULL;
	if (ret == MP_EUNIMPL)
		imap_tagged(s, cmd->tag, "NO [UNKNOWN-CTE] Unknown Content-Transfer-Encoding");
	else if (ret == MP_EINVAL)
		imap_tagged(s, cmd->tag, "BAD BINARY of a multipart is not allowed");
	else if (ret < 0)
		imap_no_for(s, cmd->tag, ret, err, cmd->name);
	else {
		imap_sync(s, cmd->uid);
		imap_tagged(s, cmd->tag, "OK %s completed", cmd->name);
	}
}

static void fetch_batch(struct imap_sess *s, const struct imap_command *cmd)
{
	struct fetch_state *f = s->cmd_state;
	char *err = NULL;
	int ret = 0;
	while (s->cur < s->ncurv && ret == 0) {
		size_t n = s->ncurv - s->cur;
		if (n > FETCH_BATCH_MSGS)
			n = FETCH_BATCH_MSGS;
		if (f->need_body && n > 16)
			n = 16;
		char *set = format_uids(s->curv + s->cur, n);
		if (set == NULL) {
			ret = MP_ENOMEM;
			break;
		}
		Merpati__V1__FetchIndexRequest q = MERPATI__V1__FETCH_INDEX_REQUEST__INIT;
		q.user = s->user;
		q.mailbox = s->sel.name;
		q.uid_set = set;
		q.limit = (uint32_t)n;
		q.with_structure = f->need_structure;
		q.changed_since = f->changed_since;
		Merpati__V1__FetchIndexReply *r = NULL;
		ret = imap_call(s, "FetchIndex", &q.base, &merpati__v1__fetch_index_reply__descriptor,
				(ProtobufCMessage **)&r, &err);
		free(set);
		if (ret < 0)
			break;
		uint32_t last = s->curv[s->cur + n - 1];
		size_t got = 0;
		for (size_t i = 0; i < r->n_messages && ret == 0; i++) {
			ret = fetch_one(s, f, r->messages[i], &err);
			got = i + 1;
			last = r->messages[i]->uid;
		}
		/* A reply cut short (r->more) goes on after its last UID. */
		size_t adv = n;
		if (r->more && got > 0) {
			adv = 0;
			while (adv < n && s->curv[s->cur + adv] <= last)
				adv++;
		}
		protobuf_c_message_free_unpacked(&r->base, NULL);
		s->cur += adv ? adv : n;
		if (ret == 0 && s->cur < s->ncurv && s->out.len >= IMAP_BATCH_BYTES) {
			s->cont = fetch_batch;
			free(err);
			return;
		}
	}
	fetch_finish(s, cmd, ret, err);
	free(err);
}

void imap_cmd_fetch(struct imap_sess *s, const struct imap_command *cmd)
{
	struct fetch_state *f = calloc(1, sizeof(*f));
	if (f == NULL) {
		imap_tagged(s, cmd->tag, "NO [SERVERBUG] Out of memory");
		return;
	}
	int ret = parse_fetch(s, cmd, f);
	if (ret < 0) {
		free(f);
		imap_tagged(s, cmd->tag, "BAD Invalid FETCH arguments");
		return;
	}
	uint32_t *uids;
	size_t n;
	ret = imap_resolve_set(s, &cmd->args[0], cmd->uid, &uids, &n);
	if (ret < 0) {
		free(f);
		imap_tagged(s, cmd->tag, ret == MP_EINVAL ? "BAD Invalid message set"
			    : "NO [SERVERBUG] Out of memory");
		return;
	}
	if (f->vanished && n > 0) {
		/* RFC 7162 §3.2.6: UIDs of the set expunged since CHANGEDSINCE. */
		Merpati__V1__ChangesSinceRequest q = MERPATI__V1__CHANGES_SINCE_REQUEST__INIT;
		q.user = s->user;
		q.mailbox = s->sel.name;
		q.modseq = f->changed_since;
		q.limit = 10000;
		Merpati__V1__ChangesSinceReply *r = NULL;
		char *err = NULL;
		if (imap_call(s, "ChangesSince", &q.base, &merpati__v1__changes_since_reply__descriptor,
			      (ProtobufCMessage **)&r, &err) == 0) {
			uint32_t *g = NULL;
			size_t ng = 0, cap = 0;
			uint32_t lo = uids[0], hi = uids[n - 1];
			for (size_t i = 0; i < r->n_changes; i++)
				if (r->changes[i]->kind == MERPATI__V1__CHANGE_KIND__CHANGE_EXPUNGE &&
				    r->changes[i]->uid >= lo && r->changes[i]->uid <= hi &&
				    imap_seq_of(s, r->changes[i]->uid) == 0)
					(void)uids_push(&g, &ng, &cap, r->changes[i]->uid);
			imap_sort_u32(g, ng);
			char *set = ng ? format_uids(g, ng) : NULL;
			if (set != NULL)
				imap_out(s, "* VANISHED (EARLIER) %s\r\n", set);
			free(set);
			free(g);
			protobuf_c_message_free_unpacked(&r->base, NULL);
		}
		free(err);
	}
	if (f->set_seen && n > 0) {
		/* RFC 3501 §6.4.5: BODY[...] sets \Seen; the FLAGS come with
		 * the answer, read after this. */
		char *set = format_uids(uids, n);
		if (set != NULL) {
			Merpati__V1__StoreFlagsRequest q = MERPATI__V1__STORE_FLAGS_REQUEST__INIT;
			char *seen = "\\Seen";
			q.user = s->user;
			q.mailbox = s->sel.name;
			q.uid_set = set;
			q.mode = MERPATI__V1__FLAG_MODE__FLAGS_ADD;
			q.flags = &seen;
			q.n_flags = 1;
			Merpati__V1__StoreFlagsReply *r = NULL;
			char *err = NULL;
			if (imap_call(s, "StoreFlags", &q.base, &merpati__v1__store_flags_reply__descriptor,
				      (ProtobufCMessage **)&r, &err) == 0) {
				for (size_t i = 0; i < r->n_updated; i++)
					imap_sel_note_own(s, r->updated[i]->uid, r->updated[i]->modseq);
				protobuf_c_message_free_unpacked(&r->base, NULL);
			}
			free(err);
			free(set);
		}
	}
	s->curv = uids;
	s->ncurv = n;
	s->cur = 0;
	s->cmd_state = f;
	s->cmd_state_free = fetch_state_free;
	fetch_batch(s, cmd);
}

/* --------------------------------------------------------------- STORE */

static int parse_flag_args(const struct imap_arg *args, size_t n, char ***flags_r, size_t *nf_r)
{
	const struct imap_arg *v = args;
	size_t count = n;
	if (n == 1 && args[0].type == IMAP_ARG_LIST) {
		v = args[0].list;
		count = args[0].nlist;
	}
	if (count > 256)
		return MP_EINVAL;
	char **f = calloc(count + 1, sizeof(*f));
	if (f == NULL)
		return MP_ENOMEM;
	static const char *const sys[] = { "\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft" };
	for (size_t i = 0; i < count; i++) {
		if (v[i].type != IMAP_ARG_ATOM || v[i].len == 0 || v[i].len > 200) {
			free(f);
			return MP_EINVAL;
		}
		if (v[i].s[0] == '\\') {
			size_t k;
			for (k = 0; k < 5; k++)
				if (strcasecmp(v[i].s, sys[k]) == 0)
					break;
			if (k == 5) {
				free(f);
				return MP_EINVAL;
			}
			f[i] = (char *)sys[k];
		} else {
			for (size_t c = 0; c < v[i].len; c++) {
				unsigned char ch = (unsigned char)v[i].s[c];
				if (ch <= 0x20 || ch >= 0x7f || strchr("(){%*\"\\]", ch) != NULL) {
					free(f);
					return MP_EINVAL;
				}
			}
			f[i] = (char *)v[i].s;
		}
	}
	*flags_r = f;
	*nf_r = count;
	return 0;
}

void imap_cmd_store(struct imap_sess *s, const struct imap_command *cmd)
{
	size_t i = 1;
	uint64_t unchanged = 0;
	bool has_unchanged = false;
	if (cmd->nargs >= 2 && cmd->args[1].type == IMAP_ARG_LIST) {
		const struct imap_arg *m = &cmd->args[1];
		if (m->nlist != 2 || !imap_arg_is_atom(&m->list[0], "UNCHANGEDSINCE") ||
		    !imap_arg_number64(&m->list[1], &unchanged)) {
			imap_tagged(s, cmd->tag, "BAD Invalid STORE modifier");
			return;
		}
		has_unchanged = true;
		s->condstore = true;
		i = 2;
	}
	if (cmd->nargs < i + 2 || cmd->args[i].type != IMAP_ARG_ATOM) {
		imap_tagged(s, cmd->tag, "BAD STORE set [(UNCHANGEDSINCE n)] item flags");
		return;
	}
	const char *item = cmd->args[i].s;
	Merpati__V1__FlagMode mode;
	if (*item == '+') {
		mode = MERPATI__V1__FLAG_MODE__FLAGS_ADD;
		item++;
	} else if (*item == '-') {
		mode = MERPATI__V1__FLAG_MODE__FLAGS_REMOVE;
		item++;
	} else {
		mode = MERPATI__V1__FLAG_MODE__FLAGS_REPLACE;
	}
	bool silent;
	if (strcasecmp(item, "FLAGS") == 0)
		silent = false;
	else if (strcasecmp(item, "FLAGS.SILENT") == 0)
		silent = true;
	else {
		imap_tagged(s, cmd->tag, "BAD Unknown STORE item");
		return;
	}
	char **flags;
	size_t nflags;
	if (parse_flag_args(&cmd->args[i + 1], cmd->nargs - i - 1, &flags, &nflags) < 0) {
		imap_tagged(s, cmd->tag, "BAD Invalid flags");
		return;
	}
	if (s->sel.readonly) {
		free(flags);
		imap_tagged(s, cmd->tag, "NO [READ-ONLY] Mailbox is read-only");
		return;
	}
	uint32_t *uids;
	size_t n;
	int ret = imap_resolve_set(s, &cmd->args[0], cmd->uid, &uids, &n);
	if (ret < 0) {
		free(flags);
		imap_tagged(s, cmd->tag, "BAD Invalid message set");
		return;
	}
	if (n == 0) {
		free(flags);
		free(uids);
		imap_sync(s, cmd->uid);
		imap_tagged(s, cmd->tag, "OK STORE completed");
		return;
	}
	char *set = format_uids(uids, n);
	Merpati__V1__StoreFlagsRequest q = MERPATI__V1__STORE_FLAGS_REQUEST__INIT;
	q.user = s->user;
	q.mailbox = s->sel.name;
	q.uid_set = set;
	q.mode = mode;
	q.flags = flags;
	q.n_flags = nflags;
	/* UNCHANGEDSINCE 0 fails for every message (RFC 7162 §3.1.3); the
	 * store's 0 means "no condition", so 0 is sent as "modseq < 1". */
	q.unchanged_since = has_unchanged ? (unchanged ? unchanged : 0) : 0;
	Merpati__V1__StoreFlagsReply *r = NULL;
	char *err = NULL;
	if (has_unchanged && unchanged == 0) {
		char *mset = format_uids(uids, n);
		imap_tagged(s, cmd->tag, "OK [MODIFIED %s] Conditional STORE failed",
			    mset ? mset : "");
		free(mset);
		goto out;
	}
	ret = set ? imap_call(s, "StoreFlags", &q.base, &merpati__v1__store_flags_reply__descriptor,
			      (ProtobufCMessage **)&r, &err) : MP_ENOMEM;
	if (ret < 0) {
		imap_no_for(s, cmd->tag, ret, err, "STORE");
		goto out;
	}
	for (size_t k = 0; k < r->n_updated; k++) {
		const Merpati__V1__FlagUpdate *u = r->updated[k];
		imap_sel_note_own(s, u->uid, u->modseq);
		uint32_t seq = imap_seq_of(s, u->uid);
		if (seq == 0)
			continue;
		if (silent && !(s->condstore && has_unchanged))
			continue;
		imap_out_flag_fetch(s, seq, u->uid, cmd->uid, u->flags, u->n_flags,
				    s->condstore ? u->modseq : 0);
	}
	imap_sync(s, cmd->uid);
	if (r->n_modified > 0) {
		uint32_t *mv = malloc(r->n_modified * sizeof(*mv));
		char *mset = NULL;
		if (mv != NULL) {
			size_t nm = 0;
			for (size_t k = 0; k < r->n_modified; k++) {
				uint32_t x = r->modified[k];
				if (!cmd->uid)
					x = imap_seq_of(s, x);
				if (x != 0)
					mv[nm++] = x;
			}
			imap_sort_u32(mv, nm);
			mset = format_uids(mv, nm);
			free(mv);
		}
		imap_tagged(s, cmd->tag, "OK [MODIFIED %s] Conditional STORE failed for some",
			    mset ? mset : "");
		free(mset);
	} else {
		imap_tagged(s, cmd->tag, "OK STORE completed");
	}
	protobuf_c_message_free_unpacked(&r->base, NULL);
out:
	free(err);
	free(set);
	free(uids);
	free(flags);
}

/* ------------------------------------------------------- EXPUNGE, COPY */

/* Show expunged UIDs to the client (EXPUNGE one by one, or VANISHED) and
 * drop them from the session's map. uids ascending. */
static void show_expunged(struct imap_sess *s, const uint32_t *uids, size_t n)
{
	if (n == 0)
		return;
	if (s->qresync) {
		char *set = format_uids(uids, n);
		if (set != NULL)
			imap_out(s, "* VANISHED %s\r\n", set);
		free(set);
	}
	for (size_t i = 0; i < n; i++) {
		uint32_t seq = imap_seq_of(s, uids[i]);
		if (seq == 0)
			continue;
		if (!s->qresync)
			imap_out(s, "* %u EXPUNGE\r\n", seq);
		imap_sel_remove(s, seq);
	}
}

void imap_cmd_expunge(struct imap_sess *s, const struct imap_command *cmd)
{
	if ((cmd->uid && cmd->nargs != 1) || (!cmd->uid && cmd->nargs != 0)) {
		imap_tagged(s, cmd->tag, "BAD %s", cmd->uid ? "UID EXPUNGE set" : "EXPUNGE takes no arguments");
		return;
	}
	if (s->sel.readonly) {
		imap_tagged(s, cmd->tag, "NO [READ-ONLY] Mailbox is read-only");
		return;
	}
	char *set = NULL;
	if (cmd->uid) {
		uint32_t *uids;
		size_t n;
		if (imap_resolve_set(s, &cmd->args[0], true, &uids, &n) < 0) {
			imap_tagged(s, cmd->tag, "BAD Invalid UID set");
			return;
		}
		if (n == 0) {
			free(uids);
			imap_sync(s, true);
			imap_tagged(s, cmd->tag, "OK UID EXPUNGE completed");
			return;
		}
		set = format_uids(uids, n);
		free(uids);
	} else {
		set = strdup("1:*");
	}
	if (set == NULL) {
		imap_tagged(s, cmd->tag, "NO [SERVERBUG] Out of memory");
		return;
	}
	Merpati__V1__ExpungeRequest q = MERPATI__V1__EXPUNGE_REQUEST__INIT;
	q.user = s->user;
	q.mailbox = s->sel.name;
	q.uid_set = set;
	q.only_deleted = true;
	Merpati__V1__ExpungeReply *r = NULL;
	char *err = NULL;
	int ret = imap_call(s, "Expunge", &q.base, &merpati__v1__expunge_reply__descriptor,
			    (ProtobufCMessage **)&r, &err);
	if (ret < 0) {
		imap_no_for(s, cmd->tag, ret, err, cmd->name);
	} else {
		show_expunged(s, r->expunged, r->n_expunged);
		imap_sync(s, true);
		if (s->condstore)
			imap_tagged(s, cmd->tag, "OK [HIGHESTMODSEQ %llu] %s completed",
				    (unsigned long long)s->sel.hms, cmd->name);
		else
			imap_tagged(s, cmd->tag, "OK %s completed", cmd->name);
		protobuf_c_message_free_unpacked(&r->base, NULL);
	}
	free(err);
	free(set);
}

void imap_cmd_copy(struct imap_sess *s, const struct imap_command *cmd)
{
	bool move = strstr(cmd->name, "MOVE") != NULL;
	if (cmd->nargs != 2) {
		imap_tagged(s, cmd->tag, "BAD %s set mailbox", cmd->name);
		return;
	}
	if (move && s->sel.readonly) {
		imap_tagged(s, cmd->tag, "NO [READ-ONLY] Mailbox is read-only");
		return;
	}
	uint32_t *uids;
	size_t n;
	if (imap_resolve_set(s, &cmd->args[0], cmd->uid, &uids, &n) < 0) {
		imap_tagged(s, cmd->tag, "BAD Invalid message set");
		return;
	}
	char *dest = imap_mailbox_arg(s, cmd->tag, &cmd->args[1]);
	if (dest == NULL) {
		free(uids);
		return;
	}
	if (n == 0) {
		free(uids);
		free(dest);
		imap_tagged(s, cmd->tag, "OK %s completed (no messages)", cmd->name);
		return;
	}
	char *set = format_uids(uids, n);
	free(uids);
	Merpati__V1__CopyRequest q = MERPATI__V1__COPY_REQUEST__INIT;
	q.user = s->user;
	q.mailbox = s->sel.name;
	q.uid_set = set;
	q.dest_mailbox = dest;
	Merpati__V1__CopyReply *r = NULL;
	char *err = NULL;
	int ret = set ? imap_call(s, move ? "Move" : "Copy", &q.base,
				  &merpati__v1__copy_reply__descriptor, (ProtobufCMessage **)&r, &err)
		      : MP_ENOMEM;
	if (ret == MP_ENOENT && (err == NULL || strstr(err, "mailbox") != NULL) &&
	    strcmp(dest, s->sel.name) != 0) {
		imap_tagged(s, cmd->tag, "NO [TRYCREATE] Destination mailbox does not exist");
	} else if (ret < 0) {
		imap_no_for(s, cmd->tag, ret, err, cmd->name);
	} else {
		char *src = format_uids(r->src_uids, r->n_src_uids);
		char *dst = format_uids(r->dest_uids, r->n_dest_uids);
		if (move) {
			if (src && dst && r->n_src_uids)
				imap_out(s, "* OK [COPYUID %u %s %s] Moved\r\n", r->dest_uidvalidity,
					 src, dst);
			/* src_uids come in the order of dest_uids; sort a copy. */
			uint32_t *sorted = malloc((r->n_src_uids + 1) * sizeof(*sorted));
			if (sorted != NULL) {
				memcpy(sorted, r->src_uids, r->n_src_uids * sizeof(*sorted));
				imap_sort_u32(sorted, r->n_src_uids);
				show_expunged(s, sorted, r->n_src_uids);
				free(sorted);
			}
			imap_sync(s, true);
			imap_tagged(s, cmd->tag, "OK %s completed", cmd->name);
		} else if (src && dst && r->n_src_uids) {
			imap_sync(s, cmd->uid);
			imap_tagged(s, cmd->tag, "OK [COPYUID %u %s %s] %s completed",
				    r->dest_uidvalidity, src, dst, cmd->name);
		} else {
			imap_sync(s, cmd->uid);
			imap_tagged(s, cmd->tag, "OK %s completed", cmd->name);
		}
		free(src);
		free(dst);
		protobuf_c_message_free_unpacked(&r->base, NULL);
	}
	free(err);
	free(set);
	free(dest);
}

/* -------------------------------------------------------------- SEARCH */

void imap_hits_free(struct imap_hit *h, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(h[i].hdr);
	free(h);
}

int imap_search_run(struct imap_sess *s, const struct imap_search *prog, bool want_header,
		    struct imap_hit **hits_r, size_t *n_r, uint64_t *max_modseq_r,
		    char **err_r)
{
	bool need_msg = imap_search_needs_message(prog);
	struct imap_search_ctx ctx = {
		.max_seq = (uint32_t)s->sel.n,
		.max_uid = s->sel.n ? s->sel.uids[s->sel.n - 1] : 0,
		.saved = s->saved,
		.nsaved = s->nsaved,
		.now = (int64_t)time(NULL),
	};
	struct imap_hit *hits = NULL;
	size_t nhits = 0, cap = 0;
	uint64_t max_modseq = 0;
	uint32_t from = 1;
	int ret = 0;
	*err_r = NULL;
	for (int page = 0; page < 100000 && ret == 0; page++) {
		char set[32];
		snprintf(set, sizeof(set), "%u:*", from);
		Merpati__V1__FetchIndexRequest q = MERPATI__V1__FETCH_INDEX_REQUEST__INIT;
		q.user = s->user;
		q.mailbox = s->sel.name;
		q.uid_set = set;
		q.limit = need_msg || want_header ? 100 : 10000;
		Merpati__V1__FetchIndexReply *r = NULL;
		ret = imap_call(s, "FetchIndex", &q.base, &merpati__v1__fetch_index_reply__descriptor,
				(ProtobufCMessage **)&r, err_r);
		if (ret < 0)
			break;
		uint32_t last = 0;
		for (size_t i = 0; i < r->n_messages && ret == 0; i++) {
			const Merpati__V1__MessageIndex *m = r->messages[i];
			if (m->uid < from)
				continue;
			last = m->uid;
			uint32_t seq = imap_seq_of(s, m->uid);
			if (seq == 0)
				continue; /* not shown to this session yet */
			struct imap_search_msg sm = {
				.seq = seq,
				.uid = m->uid,
				.flags = (const char *const *)m->flags,
				.nflags = m->n_flags,
				.recent = imap_is_recent(s, m->uid),
				.size = m->size,
				.internal_date = (int64_t)m->internal_date,
				.modseq = m->modseq,
			};
			struct mp_buf body;
			mp_buf_init(&body, 0);
			if (need_msg || want_header) {
				char *berr = NULL;
				int br = read_body(s, m->uid, m->size, &body, &berr);
				free(berr);
				if (br == MP_ENOENT) {
					mp_buf_free(&body);
					continue;
				}
				if (br < 0) {
					ret = br;
					mp_buf_free(&body);
					break;
				}
				sm.data = (const char *)body.data;
				sm.len = body.len;
			}
			bool match = false;
			ret = imap_search_match(prog, &ctx, &sm, &match);
			if (ret == 0 && match) {
				if (nhits == cap) {
					size_t nc = cap ? cap * 2 : 64;
					struct imap_hit *nv = realloc(hits, nc * sizeof(*nv));
					if (nv == NULL) {
						ret = MP_ENOMEM;
						mp_buf_free(&body);
						break;
					}
					hits = nv;
					cap = nc;
				}
				struct imap_hit *h = &hits[nhits++];
				memset(h, 0, sizeof(*h));
				h->uid = m->uid;
				h->internal_date = (int64_t)m->internal_date;
				h->size = m->size;
				if (want_header) {
					h->hdr_len = imap_hdr_block_len(body.data, body.len);
					h->hdr = malloc(h->hdr_len + 1);
					if (h->hdr == NULL) {
						ret = MP_ENOMEM;
					} else {
						memcpy(h->hdr, body.data, h->hdr_len);
						h->hdr[h->hdr_len] = '\0';
					}
				}
				if (m->modseq > max_modseq)
					max_modseq = m->modseq;
			}
			mp_buf_free(&body);
		}
		bool more = r->more && last != 0 && last < UINT32_MAX;
		protobuf_c_message_free_unpacked(&r->base, NULL);
		if (!more)
			break;
		from = last + 1;
	}
	if (ret < 0) {
		imap_hits_free(hits, nhits);
		return ret;
	}
	*hits_r = hits;
	*n_r = nhits;
	*max_modseq_r = max_modseq;
	return 0;
}

void imap_cmd_search(struct imap_sess *s, const struct imap_command *cmd)
{
	struct imap_search *prog = NULL;
	struct imap_search_info info;
	char *cerr = NULL;
	int ret = imap_search_compile(cmd->args, cmd->nargs, true, &prog, &info, &cerr);
	if (ret == MP_EUNIMPL) {
		imap_tagged(s, cmd->tag, "NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset");
		free(cerr);
		return;
	}
	if (ret < 0) {
		imap_tagged(s, cmd->tag, "BAD %s", cerr ? cerr : "Invalid search");
		free(cerr);
		return;
	}
	free(cerr);
	if (info.uses_modseq)
		s->condstore = true;
	struct imap_hit *h = NULL;
	size_t nhits = 0;
	uint64_t max_modseq = 0;
	char *err = NULL;
	ret = imap_search_run(s, prog, false, &h, &nhits, &max_modseq, &err);
	imap_search_free(&prog);
	if (ret < 0) {
		imap_no_for(s, cmd->tag, ret, err, cmd->name);
		free(err);
		return;
	}
	free(err);
	/* The numbers to show: UIDs or message sequence numbers. */
	uint32_t *hits = malloc((nhits + 1) * sizeof(*hits));
	uint32_t *shown = malloc((nhits + 1) * sizeof(*shown));
	if (hits == NULL || shown == NULL) {
		free(hits);
		free(shown);
		imap_hits_free(h, nhits);
		imap_tagged(s, cmd->tag, "NO [SERVERBUG] Out of memory");
		return;
	}
	for (size_t i = 0; i < nhits; i++) {
		hits[i] = h[i].uid;
		shown[i] = cmd->uid ? hits[i] : imap_seq_of(s, hits[i]);
	}
	imap_hits_free(h, nhits);
	if (info.ret & IMAP_SEARCH_RET_SAVE) {
		free(s->saved);
		s->saved = hits;
		s->nsaved = nhits;
		hits = NULL;
	}
	if (!info.return_given && s->rev2) {
		/* RFC 9051 §7.3.4: SEARCH answers ESEARCH, as RETURN (ALL). */
		info.return_given = true;
		info.ret = IMAP_SEARCH_RET_ALL;
	}
	if (!info.return_given) {
		imap_out(s, "* SEARCH");
		for (size_t i = 0; i < nhits; i++)
			imap_out(s, " %u", shown[i]);
		if (info.uses_modseq && nhits > 0)
			imap_out(s, " (MODSEQ %llu)", (unsigned long long)max_modseq);
		imap_out(s, "\r\n");
	} else if ((info.ret & ~(unsigned)IMAP_SEARCH_RET_SAVE) != 0 ||
		   !(info.ret & IMAP_SEARCH_RET_SAVE)) {
		imap_out(s, "* ESEARCH (TAG ");
		imap_out_string(s, cmd->tag, strlen(cmd->tag));
		imap_out(s, ")%s", cmd->uid ? " UID" : "");
		if ((info.ret & IMAP_SEARCH_RET_MIN) && nhits)
			imap_out(s, " MIN %u", shown[0]);
		if ((info.ret & IMAP_SEARCH_RET_MAX) && nhits)
			imap_out(s, " MAX %u", shown[nhits - 1]);
		if ((info.ret & IMAP_SEARCH_RET_ALL) && nhits) {
			char *set = format_uids(shown, nhits);
			if (set != NULL)
				imap_out(s, " ALL %s", set);
			free(set);
		}
		if (info.ret & IMAP_SEARCH_RET_COUNT)
			imap_out(s, " COUNT %zu", nhits);
		if (info.uses_modseq && nhits > 0)
			imap_out(s, " MODSEQ %llu", (unsigned long long)max_modseq);
		imap_out(s, "\r\n");
	}
	free(shown);
	free(hits);
	imap_sync(s, cmd->uid);
	imap_tagged(s, cmd->tag, "OK %s completed", cmd->name);
}
