/*
 * imap_cmd_thread: SORT and THREAD (RFC 5256) over SEARCH's matches.
 * SORT keys come from the header block of each match (decoded and folded
 * as RFC 5256 §2.1 says; addresses by their first mailbox, dates by the
 * Date: field in UTC or else the arrival time) with message number as the
 * final key. THREAD=ORDEREDSUBJECT groups by base subject; THREAD=
 * REFERENCES links by Message-ID/References/In-Reply-To (RFC 5256 §2.2 with
 * the subject merge of step 5), bounded in depth and count.
 */
#include "imap_sess.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "imap_parse.h"
#include "imap_search.h"
#include "imap_text.h"
#include "mp_error.h"

#define SORT_KEYS_MAX 16
#define THREAD_DEPTH_MAX 64
#define REFS_MAX 64

enum sort_key {
	SK_ARRIVAL, SK_CC, SK_DATE, SK_FROM, SK_SIZE, SK_SUBJECT, SK_TO,
	SK_DISPLAYFROM, SK_DISPLAYTO,
};

struct sort_crit {
	enum sort_key key;
	bool reverse;
};

struct sort_item {
	uint32_t uid;
	uint32_t seq;
	int64_t arrival;
	int64_t date;        /* sent date in UTC, or arrival */
	uint64_t size;
	char *subject;       /* base subject, folded */
	char *from, *to, *cc;  /* first mailbox, folded */
	char *dfrom, *dto;   /* display name or mailbox, folded */
	/* THREAD=REFERENCES */
	char *msgid;
	char **refs;
	size_t nrefs;
};

static void item_clear(struct sort_item *it)
{
	free(it->subject);
	free(it->from);
	free(it->to);
	free(it->cc);
	free(it->dfrom);
	free(it->dto);
	free(it->msgid);
	for (size_t i = 0; i < it->nrefs; i++)
		free(it->refs[i]);
	free(it->refs);
}

/* The compiled SEARCH program from "charset key..." (SORT/THREAD give the
 * charset without the CHARSET keyword). */
static int compile_tail(struct imap_sess *s, const struct imap_command *cmd, size_t at,
			struct imap_search **prog_r)
{
	if (at + 2 > cmd->nargs) {
		imap_tagged(s, cmd->tag, "BAD %s needs a charset and search criteria", cmd->name);
		return MP_EINVAL;
	}
	size_t n = cmd->nargs - at + 1;
	struct imap_arg *args = calloc(n, sizeof(*args));
	if (args == NULL) {
		imap_tagged(s, cmd->tag, "NO [SERVERBUG] Out of memory");
		return MP_ENOMEM;
	}
	args[0].type = IMAP_ARG_ATOM;
	args[0].s = "CHARSET";
	args[0].len = 7;
	memcpy(args + 1, cmd->args + at, (cmd->nargs - at) * sizeof(*args));
	struct imap_search_info info;
	char *err = NULL;
	int ret = imap_search_compile(args, n, false, prog_r, &info, &err);
	free(args);
	if (ret == MP_EUNIMPL)
		imap_tagged(s, cmd->tag, "NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset");
	else if (ret < 0)
		imap_tagged(s, cmd->tag, "BAD %s", err ? err : "Invalid search criteria");
	free(err);
	return ret;
}

static char *folded(const char *p, size_t n)
{
	struct mp_buf dec, f;
	mp_buf_init(&dec, 0);
	mp_buf_init(&f, 0);
	char *out = NULL;
	if (imap_text_decode_header(p, n, &dec) == 0 &&
	    imap_text_fold(dec.data ? dec.data : "", dec.len, &f) == 0 &&
	    mp_buf_append_u8(&f, 0) == 0)
		out = mp_buf_steal(&f, NULL);
	mp_buf_free(&dec);
	mp_buf_free(&f);
	return out != NULL ? out : strdup("");
}

static char *header(const struct imap_hit *h, const char *name)
{
	struct mp_buf b;
	mp_buf_init(&b, 0);
	char *out = NULL;
	if (h->hdr != NULL && imap_hdr_get(h->hdr, h->hdr_len, name, &b) == 1)
		out = mp_buf_steal(&b, NULL);
	mp_buf_free(&b);
	return out;
}

/* RFC 5256 §3: the addr-mailbox of the first address, and for DISPLAY
 * (RFC 5957) the display name, else the mailbox. */
static void first_address(const char *v, char **mailbox_r, char **display_r)
{
	*mailbox_r = strdup("");
	*display_r = strdup("");
	if (v == NULL)
		return;
	const char *lt = strchr(v, '<');
	const char *start = lt ? lt + 1 : v;
	while (*start == ' ' || *start == '\t')
		start++;
	const char *at = strchr(start, '@');
	const char *end = at ? at : start + strcspn(start, ">, \t");
	char *mb = folded(start, (size_t)(end - start));
	char *disp = NULL;
	if (lt != NULL && lt > v) {
		const char *d = v, *de = lt;
		while (d < de && (*d == ' ' || *d == '"'))
			d++;
		while (de > d && (de[-1] == ' ' || de[-1] == '"'))
			de--;
		if (de > d)
			disp = folded(d, (size_t)(de - d));
	}
	free(*mailbox_r);
	free(*display_r);
	*mailbox_r = mb;
	*display_r = disp != NULL ? disp : strdup(mb ? mb : "");
}

static char *base_subject(const struct imap_hit *h)
{
	char *raw = header(h, "Subject");
	char *f = folded(raw ? raw : "", raw ? strlen(raw) : 0);
	free(raw);
	struct mp_buf b;
	mp_buf_init(&b, 0);
	char *out = NULL;
	if (f != NULL && imap_text_base_subject(f, strlen(f), &b) == 0 &&
	    mp_buf_append_u8(&b, 0) == 0)
		out = mp_buf_steal(&b, NULL);
	mp_buf_free(&b);
	free(f);
	return out != NULL ? out : strdup("");
}

/* "<a@b> <c@d>" -> the ids between angle brackets, at most REFS_MAX. */
static size_t parse_ids(const char *v, char **out, size_t max)
{
	size_t n = 0;
	for (const char *p = v; p != NULL && *p != '\0' && n < max;) {
		const char *lt = strchr(p, '<');
		if (lt == NULL)
			break;
		const char *gt = strchr(lt + 1, '>');
		if (gt == NULL)
			break;
		if (gt > lt + 1 && memchr(lt + 1, '<', (size_t)(gt - lt - 1)) == NULL) {
			out[n] = strndup(lt + 1, (size_t)(gt - lt - 1));
			if (out[n] != NULL)
				n++;
		}
		p = gt + 1;
	}
	return n;
}

static int fill_item(struct imap_sess *s, const struct imap_hit *h, struct sort_item *it,
		     bool refs)
{
	memset(it, 0, sizeof(*it));
	it->uid = h->uid;
	it->seq = imap_seq_of(s, h->uid);
	it->arrival = h->internal_date;
	it->size = h->size;
	char *d = header(h, "Date");
	int64_t t;
	it->date = d != NULL && imap_text_parse_date(d, strlen(d), &t, NULL) == 0 ? t : h->internal_date;
	free(d);
	it->subject = base_subject(h);
	char *v = header(h, "From");
	first_address(v, &it->from, &it->dfrom);
	free(v);
	v = header(h, "To");
	first_address(v, &it->to, &it->dto);
	free(v);
	v = header(h, "Cc");
	char *dummy = NULL;
	first_address(v, &it->cc, &dummy);
	free(dummy);
	free(v);
	if (refs) {
		char *ids[REFS_MAX];
		v = header(h, "Message-ID");
		if (v != NULL && parse_ids(v, ids, 1) == 1)
			it->msgid = ids[0];
		free(v);
		v = header(h, "References");
		size_t n = v ? parse_ids(v, ids, REFS_MAX) : 0;
		free(v);
		if (n == 0) {
			v = header(h, "In-Reply-To");
			n = v ? parse_ids(v, ids, 1) : 0;
			free(v);
		}
		if (n > 0) {
			it->refs = malloc(n * sizeof(char *));
			if (it->refs == NULL) {
				for (size_t i = 0; i < n; i++)
					free(ids[i]);
			} else {
				memcpy(it->refs, ids, n * sizeof(char *));
				it->nrefs = n;
			}
		}
	}
	if (it->subject == NULL || it->from == NULL || it->to == NULL || it->cc == NULL ||
	    it->dfrom == NULL || it->dto == NULL)
		return MP_ENOMEM;
	return 0;
}

/* ------------------------------------------------------------------ SORT */

/* qsort has no context argument; a worker runs one command at a time. */
static __thread const struct sort_crit *t_crit;
static __thread size_t t_ncrit;

static int cmp64(int64_t a, int64_t b)
{
	return a < b ? -1 : a > b;
}

static int item_cmp(const void *pa, const void *pb)
{
	const struct sort_item *a = pa, *b = pb;
	for (size_t i = 0; i < t_ncrit; i++) {
		int c = 0;
		switch (t_crit[i].key) {
		case SK_ARRIVAL: c = cmp64(a->arrival, b->arrival); break;
		case SK_DATE: c = cmp64(a->date, b->date); break;
		case SK_SIZE: c = a->size < b->size ? -1 : a->size > b->size; break;
		case SK_SUBJECT: c = strcmp(a->subject, b->subject); break;
		case SK_FROM: c = strcmp(a->from, b->from); break;
		case SK_TO: c = strcmp(a->to, b->to); break;
		case SK_CC: c = strcmp(a->cc, b->cc); break;
		case SK_DISPLAYFROM: c = strcmp(a->dfrom, b->dfrom); break;
		case SK_DISPLAYTO: c = strcmp(a->dto, b->dto); break;
		}
		if (c != 0)
			return t_crit[i].reverse ? -c : c;
	}
	return a->seq < b->seq ? -1 : a->seq > b->seq;
}

static int parse_criteria(const struct imap_arg *l, struct sort_crit *c, size_t *n_r)
{
	static const struct { const char *n; enum sort_key k; } names[] = {
		{ "ARRIVAL", SK_ARRIVAL }, { "CC", SK_CC }, { "DATE", SK_DATE },
		{ "FROM", SK_FROM }, { "SIZE", SK_SIZE }, { "SUBJECT", SK_SUBJECT },
		{ "TO", SK_TO }, { "DISPLAYFROM", SK_DISPLAYFROM }, { "DISPLAYTO", SK_DISPLAYTO },
	};
	if (l->type != IMAP_ARG_LIST || l->nlist == 0)
		return MP_EINVAL;
	size_t n = 0;
	bool rev = false;
	for (size_t i = 0; i < l->nlist; i++) {
		if (imap_arg_is_atom(&l->list[i], "REVERSE")) {
			if (rev)
				return MP_EINVAL;
			rev = true;
			continue;
		}
		size_t k;
		for (k = 0; k < sizeof(names) / sizeof(names[0]); k++)
			if (imap_arg_is_atom(&l->list[i], names[k].n))
				break;
		if (k == sizeof(names) / sizeof(names[0]) || n == SORT_KEYS_MAX)
			return MP_EINVAL;
		c[n].key = names[k].k;
		c[n].reverse = rev;
		rev = false;
		n++;
	}
	if (rev || n == 0)
		return MP_EINVAL;
	*n_r = n;
	return 0;
}

/* Run the search and fill one item per match. */
static int collect(struct imap_sess *s, const struct imap_command *cmd,
		   const struct imap_search *prog, bool refs, struct sort_item **items_r,
		   size_t *n_r)
{
	struct imap_hit *h = NULL;
	size_t n = 0;
	uint64_t ms;
	char *err = NULL;
	int ret = imap_search_run(s, prog, true, &h, &n, &ms, &err);
	if (ret < 0) {
		imap_no_for(s, cmd->tag, ret, err, cmd->name);
		free(err);
		return ret;
	}
	free(err);
	struct sort_item *items = calloc(n + 1, sizeof(*items));
	if (items == NULL) {
		imap_hits_free(h, n);
		imap_tagged(s, cmd->tag, "NO [SERVERBUG] Out of memory");
		return MP_ENOMEM;
	}
	for (size_t i = 0; i < n && ret == 0; i++)
		ret = fill_item(s, &h[i], &items[i], refs);
	imap_hits_free(h, n);
	if (ret < 0) {
		for (size_t i = 0; i < n; i++)
			item_clear(&items[i]);
		free(items);
		imap_tagged(s, cmd->tag, "NO [SERVERBUG] Out of memory");
		return ret;
	}
	*items_r = items;
	*n_r = n;
	return 0;
}

/* The matches of the search criteria after the charset (argument 1 on). */
static int search_items(struct imap_sess *s, const struct imap_command *cmd, bool refs,
			struct sort_item **items_r, size_t *n_r)
{
	struct imap_search *prog = NULL;
	int ret = compile_tail(s, cmd, 1, &prog);
	if (ret < 0)
		return ret;
	ret = collect(s, cmd, prog, refs, items_r, n_r);
	imap_search_free(&prog);
	return ret;
}

static uint32_t shown(const struct imap_command *cmd, const struct sort_item *it)
{
	return cmd->uid ? it->uid : it->seq;
}

void imap_cmd_sort(struct imap_sess *s, const struct imap_command *cmd)
{
	struct sort_crit crit[SORT_KEYS_MAX];
	size_t ncrit = 0;
	if (cmd->nargs < 3 || parse_criteria(&cmd->args[0], crit, &ncrit) < 0) {
		imap_tagged(s, cmd->tag, "BAD SORT (criteria) charset search-criteria");
		return;
	}
	struct sort_item *items = NULL;
	size_t n = 0;
	if (search_items(s, cmd, false, &items, &n) < 0)
		return;
	t_crit = crit;
	t_ncrit = ncrit;
	qsort(items, n, sizeof(*items), item_cmp);
	imap_out(s, "* SORT");
	for (size_t i = 0; i < n; i++)
		imap_out(s, " %u", shown(cmd, &items[i]));
	imap_out(s, "\r\n");
	for (size_t i = 0; i < n; i++)
		item_clear(&items[i]);
	free(items);
	imap_sync(s, cmd->uid);
	imap_tagged(s, cmd->tag, "OK %s completed", cmd->name);
}

/* ---------------------------------------------------------------- THREAD */

/* A thread tree: node i's children are linked through first/next. */
struct tnode {
	struct sort_item *msg;   /* NULL for a dummy (a referenced id we lack) */
	const char *id;
	int parent, first, next;
	int64_t date;            /* of the message, or its first child's */
};

struct tree {
	struct tnode *v;
	size_t n, cap;
};

static int tree_add(struct tree *t, struct sort_item *msg, const char *id)
{
	if (t->n == t->cap) {
		size_t nc = t->cap ? t->cap * 2 : 64;
		struct tnode *nv = realloc(t->v, nc * sizeof(*nv));
		if (nv == NULL)
			return -1;
		t->v = nv;
		t->cap = nc;
	}
	struct tnode *x = &t->v[t->n];
	memset(x, 0, sizeof(*x));
	x->msg = msg;
	x->id = id;
	x->parent = x->first = x->next = -1;
	x->date = msg ? msg->date : 0;
	return (int)t->n++;
}

static int find_id(const struct tree *t, const char *id)
{
	for (size_t i = 0; i < t->n; i++)
		if (t->v[i].id != NULL && strcmp(t->v[i].id, id) == 0)
			return (int)i;
	return -1;
}

static bool is_ancestor(const struct tree *t, int a, int x)
{
	for (int d = 0; x >= 0 && d < 100000; d++, x = t->v[x].parent)
		if (x == a)
			return true;
	return false;
}

static void link_child(struct tree *t, int parent, int child)
{
	struct tnode *c = &t->v[child];
	if (c->parent >= 0) {
		/* unlink from the old parent */
		int *pp = &t->v[c->parent].first;
		while (*pp >= 0 && *pp != child)
			pp = &t->v[*pp].next;
		if (*pp == child)
			*pp = c->next;
	}
	c->parent = parent;
	c->next = -1;
	int *pp = &t->v[parent].first;
	while (*pp >= 0)
		pp = &t->v[*pp].next;
	*pp = child;
}

static int64_t node_date(struct tree *t, int x, int depth)
{
	if (t->v[x].msg != NULL || depth > THREAD_DEPTH_MAX)
		return t->v[x].date;
	/* RFC 5256 §2.2 step 4: a dummy sorts by its first child's date. */
	int c = t->v[x].first;
	return c >= 0 ? node_date(t, c, depth + 1) : 0;
}

static int sibling_cmp_date(struct tree *t, int a, int b)
{
	int64_t da = node_date(t, a, 0), db = node_date(t, b, 0);
	if (da != db)
		return da < db ? -1 : 1;
	uint32_t sa = t->v[a].msg ? t->v[a].msg->seq : 0, sb = t->v[b].msg ? t->v[b].msg->seq : 0;
	return sa < sb ? -1 : sa > sb;
}

/* Sort the children of every node by date (insertion sort on the lists). */
static void sort_children(struct tree *t, int x, int depth)
{
	if (depth > THREAD_DEPTH_MAX)
		return;
	int sorted = -1;
	for (int c = t->v[x].first; c >= 0;) {
		int next = t->v[c].next;
		sort_children(t, c, depth + 1);
		int *pp = &sorted;
		while (*pp >= 0 && sibling_cmp_date(t, *pp, c) <= 0)
			pp = &t->v[*pp].next;
		t->v[c].next = *pp;
		*pp = c;
		c = next;
	}
	t->v[x].first = sorted;
}

static void out_thread(struct imap_sess *s, const struct imap_command *cmd, struct tree *t,
		       int x, int depth)
{
	/* x and its single-child chain as "a b c", then "(..)(..)" for a fork */
	for (int d = 0; x >= 0 && depth + d < THREAD_DEPTH_MAX * 4; d++) {
		if (t->v[x].msg != NULL) {
			if (d > 0)
				imap_out(s, " ");
			imap_out(s, "%u", shown(cmd, t->v[x].msg));
		}
		int c = t->v[x].first;
		if (c < 0)
			return;
		if (t->v[c].next < 0) {
			x = c;
			continue;
		}
		if (t->v[x].msg != NULL)
			imap_out(s, " ");
		for (; c >= 0; c = t->v[c].next) {
			imap_out(s, "(");
			out_thread(s, cmd, t, c, depth + d + 1);
			imap_out(s, ")");
		}
		return;
	}
}

/* Remove dummies that have no children; promote the children of a dummy
 * (RFC 5256 §2.2 step 3), except a root dummy with several children. */
static void prune(struct tree *t, int root_sentinel)
{
	for (int pass = 0; pass < THREAD_DEPTH_MAX; pass++) {
		bool changed = false;
		for (size_t i = 0; i < t->n; i++) {
			struct tnode *x = &t->v[i];
			if (x->msg != NULL || (int)i == root_sentinel || x->parent == -2)
				continue;
			int p = x->parent;
			if (x->first < 0) {
				if (p >= 0) {
					int *pp = &t->v[p].first;
					while (*pp >= 0 && *pp != (int)i)
						pp = &t->v[*pp].next;
					if (*pp == (int)i)
						*pp = x->next;
				}
				x->parent = -2; /* gone */
				changed = true;
				continue;
			}
			bool root = p == root_sentinel;
			if (root && t->v[x->first].next >= 0)
				continue; /* several children: the dummy stays */
			/* promote the children to p */
			int c = x->first;
			while (c >= 0) {
				int next = t->v[c].next;
				link_child(t, p, c);
				c = next;
			}
			x->first = -1;
			int *pp = &t->v[p].first;
			while (*pp >= 0 && *pp != (int)i)
				pp = &t->v[*pp].next;
			if (*pp == (int)i)
				*pp = x->next;
			x->parent = -2;
			changed = true;
		}
		if (!changed)
			break;
	}
}

static const char *subject_of(struct tree *t, int x)
{
	if (t->v[x].msg != NULL)
		return t->v[x].msg->subject;
	int c = t->v[x].first;
	return c >= 0 && t->v[c].msg != NULL ? t->v[c].msg->subject : "";
}

static void thread_references(struct imap_sess *s, const struct imap_command *cmd,
			      struct sort_item *items, size_t n)
{
	struct tree t = { 0 };
	int root = tree_add(&t, NULL, NULL);
	bool oom = root < 0;
	/* steps 1A-1C: containers for every id, linked along References */
	for (size_t i = 0; i < n && !oom; i++) {
		struct sort_item *m = &items[i];
		int self = m->msgid ? find_id(&t, m->msgid) : -1;
		if (self >= 0 && t.v[self].msg != NULL)
			self = -1; /* a duplicate Message-ID: treat as unique */
		if (self < 0) {
			self = tree_add(&t, m, m->msgid);
			if (self < 0) {
				oom = true;
				break;
			}
		} else {
			t.v[self].msg = m;
			t.v[self].date = m->date;
		}
		int prev = -1;
		for (size_t r = 0; r < m->nrefs && !oom; r++) {
			int c = find_id(&t, m->refs[r]);
			if (c < 0 && (c = tree_add(&t, NULL, m->refs[r])) < 0) {
				oom = true;
				break;
			}
			if (prev >= 0 && t.v[c].parent < 0 && c != prev && !is_ancestor(&t, c, prev))
				link_child(&t, prev, c);
			prev = c;
		}
		if (!oom && prev >= 0 && prev != self && !is_ancestor(&t, self, prev))
			link_child(&t, prev, self);
	}
	/* step 2: the root set */
	for (size_t i = 1; i < t.n && !oom; i++)
		if (t.v[i].parent == -1)
			link_child(&t, root, (int)i);
	if (!oom) {
		prune(&t, root);
		sort_children(&t, root, 0);
		/* step 5: merge roots with the same base subject (a dummy or a
		 * reply joins the other thread). */
		for (int a = t.v[root].first; a >= 0; a = t.v[a].next) {
			const char *sa = subject_of(&t, a);
			if (*sa == '\0')
				continue;
			for (int b = t.v[a].next, bn; b >= 0; b = bn) {
				bn = t.v[b].next;
				if (strcmp(sa, subject_of(&t, b)) != 0)
					continue;
				link_child(&t, a, b);
			}
		}
		sort_children(&t, root, 0);
		imap_out(s, "* THREAD ");
		for (int c = t.v[root].first; c >= 0; c = t.v[c].next) {
			imap_out(s, "(");
			out_thread(s, cmd, &t, c, 0);
			imap_out(s, ")");
		}
		imap_out(s, "\r\n");
	}
	free(t.v);
	if (oom)
		imap_tagged(s, cmd->tag, "NO [SERVERBUG] Out of memory");
	else
		imap_tagged(s, cmd->tag, "OK %s completed", cmd->name);
}

static void thread_orderedsubject(struct imap_sess *s, const struct imap_command *cmd,
				  struct sort_item *items, size_t n)
{
	struct sort_crit crit[2] = { { SK_SUBJECT, false }, { SK_DATE, false } };
	t_crit = crit;
	t_ncrit = 2;
	qsort(items, n, sizeof(*items), item_cmp);
	/* threads: runs of one base subject; ordered by their first date */
	size_t *starts = malloc((n + 1) * sizeof(*starts));
	if (starts == NULL) {
		imap_tagged(s, cmd->tag, "NO [SERVERBUG] Out of memory");
		return;
	}
	size_t nt = 0;
	for (size_t i = 0; i < n; i++)
		if (i == 0 || strcmp(items[i].subject, items[i - 1].subject) != 0)
			starts[nt++] = i;
	starts[nt] = n;
	size_t *order = malloc((nt + 1) * sizeof(*order));
	if (order == NULL) {
		free(starts);
		imap_tagged(s, cmd->tag, "NO [SERVERBUG] Out of memory");
		return;
	}
	for (size_t i = 0; i < nt; i++) {
		size_t j = i;
		while (j > 0) {
			const struct sort_item *a = &items[starts[order[j - 1]]], *b = &items[starts[i]];
			if (a->date < b->date || (a->date == b->date && a->seq <= b->seq))
				break;
			order[j] = order[j - 1];
			j--;
		}
		order[j] = i;
	}
	imap_out(s, "* THREAD ");
	for (size_t k = 0; k < nt; k++) {
		size_t i = order[k], a = starts[i], b = starts[i + 1];
		imap_out(s, "(%u", shown(cmd, &items[a]));
		if (b - a == 2) {
			imap_out(s, " %u", shown(cmd, &items[a + 1]));
		} else if (b - a > 2) {
			imap_out(s, " ");
			for (size_t m = a + 1; m < b; m++)
				imap_out(s, "(%u)", shown(cmd, &items[m]));
		}
		imap_out(s, ")");
	}
	imap_out(s, "\r\n");
	free(order);
	free(starts);
	imap_tagged(s, cmd->tag, "OK %s completed", cmd->name);
}

void imap_cmd_thread(struct imap_sess *s, const struct imap_command *cmd)
{
	bool refs;
	if (cmd->nargs >= 1 && imap_arg_is_atom(&cmd->args[0], "REFERENCES"))
		refs = true;
	else if (cmd->nargs >= 1 && imap_arg_is_atom(&cmd->args[0], "ORDEREDSUBJECT"))
		refs = false;
	else {
		imap_tagged(s, cmd->tag, "BAD THREAD REFERENCES|ORDEREDSUBJECT charset criteria");
		return;
	}
	struct sort_item *items = NULL;
	size_t n = 0;
	if (search_items(s, cmd, refs, &items, &n) < 0)
		return;
	imap_sync(s, cmd->uid);
	if (refs)
		thread_references(s, cmd, items, n);
	else
		thread_orderedsubject(s, cmd, items, n);
	for (size_t i = 0; i < n; i++)
		item_clear(&items[i]);
	free(items);
}
