/*
 * mp_shardmap: the one-line etcd records of the cluster (config, nodes/{id},
 * shards/{n}) parsed and formatted, and the locked in-memory shard map.
 *
 * The parsers see bytes written by any process or operator with etcd
 * access, so they are strict and bounded: they work on (pointer, length),
 * never past len, allocate nothing, and fill their output only once the
 * whole record has been checked. Formatting runs the same checks first, so
 * what we write is always something we would read back.
 *
 * Never: hand out pointers into the map (readers copy under the lock);
 * hold the map's lock while calling anything that can block.
 */
#include "mp_shardmap.h"

#include "mp_error.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONFIG_SHARDS_MAX 65536u
#define PORT_MAX 65535u

/* A piece of the record; never NUL-terminated, never owns memory. */
struct slice {
	const char *p;
	size_t len;
};

static void set_error(const char **error_r, const char *msg)
{
	if (error_r != NULL)
		*error_r = msg;
}

static bool slice_eq(struct slice s, const char *lit)
{
	size_t n = strlen(lit);

	return s.len == n && memcmp(s.p, lit, n) == 0;
}

/* --------------------------------------------------------- the words */

/*
 * Split a record into its words and hand back the value of every key in
 * keys[] (each exactly once). Every structural rule of the text form is
 * checked here so the per-kind parsers only read values.
 */
static int rec_scan(const char *s, size_t len, const char *const *keys,
		    size_t nkeys, struct slice *vals, const char **error_r)
{
	unsigned seen = 0;
	size_t i = 0;

	if (len == 0) {
		set_error(error_r, "record is empty");
		return MP_EINVAL;
	}
	if (len > MP_SHARDREC_MAX_LEN) {
		set_error(error_r, "record longer than 1024 bytes");
		return MP_EINVAL;
	}
	if (s[0] == ' ' || s[len - 1] == ' ') {
		set_error(error_r, "record has a leading or trailing space");
		return MP_EINVAL;
	}
	while (i < len) {
		size_t start = i, eq = len;

		for (; i < len && s[i] != ' '; i++) {
			unsigned char c = (unsigned char)s[i];

			/* Only printable ASCII: a tab, newline or NUL in a
			 * record would let an operator's eye and the parser
			 * disagree about what it says. */
			if (c < 0x21 || c > 0x7e) {
				set_error(error_r, "record holds a control or non-ASCII byte");
				return MP_EINVAL;
			}
			if (c == '=' && eq == len)
				eq = i;
		}
		if (i == start) {
			set_error(error_r, "words must be separated by exactly one space");
			return MP_EINVAL;
		}
		if (eq == len || eq == start) {
			set_error(error_r, "word is not key=value");
			return MP_EINVAL;
		}
		struct slice key = { s + start, eq - start };
		size_t k;

		for (k = 0; k < nkeys; k++)
			if (slice_eq(key, keys[k]))
				break;
		if (k == nkeys) {
			set_error(error_r, "unknown key");
			return MP_EINVAL;
		}
		if (seen & (1u << k)) {
			set_error(error_r, "duplicate key");
			return MP_EINVAL;
		}
		if (eq + 1 == i) {
			set_error(error_r, "empty value");
			return MP_EINVAL;
		}
		seen |= 1u << k;
		vals[k].p = s + eq + 1;
		vals[k].len = i - eq - 1;
		if (i < len)
			i++; /* the one space; a second one is an empty word */
	}
	if (seen != (1u << nkeys) - 1) {
		set_error(error_r, "missing key");
		return MP_EINVAL;
	}
	return 0;
}

/* A canonical decimal in [min, max]: "0" or [1-9][0-9]*, overflow-checked
 * digit by digit. */
static int parse_u64(struct slice v, uint64_t min, uint64_t max, uint64_t *v_r,
		     const char *range_msg, const char **error_r)
{
	uint64_t n = 0;

	for (size_t i = 0; i < v.len; i++) {
		if (v.p[i] < '0' || v.p[i] > '9') {
			set_error(error_r, "not a decimal number");
			return MP_EINVAL;
		}
	}
	if (v.len == 0) {
		set_error(error_r, "not a decimal number");
		return MP_EINVAL;
	}
	if (v.len > 1 && v.p[0] == '0') {
		set_error(error_r, "number has a leading zero");
		return MP_EINVAL;
	}
	for (size_t i = 0; i < v.len; i++) {
		uint64_t d = (uint64_t)(v.p[i] - '0');

		if (d > max || n > (max - d) / 10) {
			set_error(error_r, range_msg);
			return MP_EINVAL;
		}
		n = n * 10 + d;
	}
	if (n < min) {
		set_error(error_r, range_msg);
		return MP_EINVAL;
	}
	*v_r = n;
	return 0;
}

static bool node_id_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
}

static bool node_id_slice_valid(struct slice id)
{
	if (id.len == 0 || id.len > MP_NODE_ID_MAX)
		return false;
	for (size_t i = 0; i < id.len; i++)
		if (!node_id_char(id.p[i]))
			return false;
	return true;
}

int mp_node_id_valid(const char *id)
{
	if (id == NULL)
		return 0;
	struct slice s = { id, strnlen(id, MP_NODE_ID_MAX + 1) };
	return node_id_slice_valid(s) ? 1 : 0;
}

static void slice_copy(char *out, struct slice s)
{
	memcpy(out, s.p, s.len);
	out[s.len] = '\0';
}

/* "a,b,c" into ids[]; duplicates are found by mp_shard_rec_check. */
static int parse_id_list(struct slice v, char ids[][MP_NODE_ID_MAX + 1],
			 size_t *n_r, const char **error_r)
{
	size_t n = 0, start = 0;

	for (size_t i = 0; i <= v.len; i++) {
		if (i < v.len && v.p[i] != ',')
			continue;
		struct slice id = { v.p + start, i - start };

		if (!node_id_slice_valid(id)) {
			set_error(error_r, id.len == 0
				  ? "empty node id in a list"
				  : "node id must be 1 to 63 of [A-Za-z0-9_.-]");
			return MP_EINVAL;
		}
		if (n == MP_REPLICAS_MAX) {
			set_error(error_r, "more than 7 nodes in a list");
			return MP_EINVAL;
		}
		slice_copy(ids[n++], id);
		start = i + 1;
	}
	*n_r = n;
	return 0;
}

/* host:port as documented in the header. */
static int addr_check(struct slice v, const char **error_r)
{
	const char *colon = NULL;
	uint64_t port;

	if (v.len == 0 || v.len > MP_ADDR_MAX) {
		set_error(error_r, "addr must be 1 to 255 bytes");
		return MP_EINVAL;
	}
	for (size_t i = v.len; i > 0; i--) {
		if (v.p[i - 1] == ':') {
			colon = v.p + i - 1;
			break;
		}
	}
	if (colon == NULL) {
		set_error(error_r, "addr must be host:port");
		return MP_EINVAL;
	}
	struct slice host = { v.p, (size_t)(colon - v.p) };
	struct slice ps = { colon + 1, v.len - host.len - 1 };

	if (host.len == 0) {
		set_error(error_r, "addr has an empty host");
		return MP_EINVAL;
	}
	if (host.p[0] == '[') {
		if (host.len < 3 || host.p[host.len - 1] != ']') {
			set_error(error_r, "addr has a bad IPv6 literal");
			return MP_EINVAL;
		}
		for (size_t i = 1; i + 1 < host.len; i++) {
			char c = host.p[i];

			if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
			      (c >= 'A' && c <= 'F') || c == ':' || c == '.')) {
				set_error(error_r, "addr has a bad IPv6 literal");
				return MP_EINVAL;
			}
		}
	} else {
		for (size_t i = 0; i < host.len; i++) {
			char c = host.p[i];

			if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			      (c >= '0' && c <= '9') || c == '.' || c == '-')) {
				set_error(error_r, "addr host may hold only [A-Za-z0-9.-]");
				return MP_EINVAL;
			}
		}
	}
	return parse_u64(ps, 1, PORT_MAX, &port, "addr port must be 1..65535",
			 error_r);
}

/* ------------------------------------------------------------ config */

static int config_check(const struct mp_cluster_config *c, const char **error_r)
{
	if (c->shards < 1 || c->shards > CONFIG_SHARDS_MAX) {
		set_error(error_r, "shards must be 1..65536");
		return MP_EINVAL;
	}
	if (c->rf < 1 || c->rf > MP_REPLICAS_MAX) {
		set_error(error_r, "rf must be 1..7");
		return MP_EINVAL;
	}
	if (c->min_isr < 1 || c->min_isr > c->rf) {
		set_error(error_r, "min_isr must be 1..rf");
		return MP_EINVAL;
	}
	return 0;
}

int mp_config_rec_parse(const char *s, size_t len, struct mp_cluster_config *c,
			const char **error_r)
{
	static const char *const keys[] = { "shards", "rf", "min_isr" };
	struct slice v[3];
	uint64_t shards, rf, min_isr;
	int ret;

	if ((ret = rec_scan(s, len, keys, 3, v, error_r)) < 0)
		return ret;
	if ((ret = parse_u64(v[0], 1, CONFIG_SHARDS_MAX, &shards,
			     "shards must be 1..65536", error_r)) < 0 ||
	    (ret = parse_u64(v[1], 1, MP_REPLICAS_MAX, &rf, "rf must be 1..7",
			     error_r)) < 0 ||
	    (ret = parse_u64(v[2], 1, rf, &min_isr, "min_isr must be 1..rf",
			     error_r)) < 0)
		return ret;
	memset(c, 0, sizeof(*c));
	c->shards = (uint32_t)shards;
	c->rf = (uint32_t)rf;
	c->min_isr = (uint32_t)min_isr;
	return 0;
}

/* snprintf's result as our return value. */
static int format_result(int n, size_t outlen)
{
	if (n < 0)
		return MP_EINVAL;
	if ((size_t)n >= outlen)
		return MP_ENOSPC;
	return n;
}

int mp_config_rec_format(const struct mp_cluster_config *c, char *out, size_t outlen)
{
	if (config_check(c, NULL) < 0)
		return MP_EINVAL;
	if (outlen == 0)
		return MP_ENOSPC;
	return format_result(snprintf(out, outlen, "shards=%u rf=%u min_isr=%u",
				      c->shards, c->rf, c->min_isr),
			     outlen);
}

/* -------------------------------------------------------------- node */

static int node_state_parse(struct slice v, enum mp_node_state *st_r,
			    const char **error_r)
{
	if (slice_eq(v, "active"))
		*st_r = MP_NODE_ACTIVE;
	else if (slice_eq(v, "draining"))
		*st_r = MP_NODE_DRAINING;
	else {
		set_error(error_r, "state must be active or draining");
		return MP_EINVAL;
	}
	return 0;
}

int mp_node_rec_parse(const char *s, size_t len, struct mp_node_rec *n,
		      const char **error_r)
{
	static const char *const keys[] = { "addr", "state" };
	struct slice v[2];
	enum mp_node_state st;
	int ret;

	if ((ret = rec_scan(s, len, keys, 2, v, error_r)) < 0 ||
	    (ret = addr_check(v[0], error_r)) < 0 ||
	    (ret = node_state_parse(v[1], &st, error_r)) < 0)
		return ret;
	memset(n, 0, sizeof(*n));
	slice_copy(n->addr, v[0]);
	n->state = st;
	return 0;
}

static int node_rec_check(const struct mp_node_rec *n)
{
	struct slice a = { n->addr, strnlen(n->addr, sizeof(n->addr)) };

	if (a.len == sizeof(n->addr) || addr_check(a, NULL) < 0)
		return MP_EINVAL;
	if (n->state != MP_NODE_ACTIVE && n->state != MP_NODE_DRAINING)
		return MP_EINVAL;
	return 0;
}

int mp_node_rec_format(const struct mp_node_rec *n, char *out, size_t outlen)
{
	if (node_rec_check(n) < 0)
		return MP_EINVAL;
	if (outlen == 0)
		return MP_ENOSPC;
	return format_result(snprintf(out, outlen, "addr=%s state=%s", n->addr,
				      n->state == MP_NODE_ACTIVE ? "active"
								 : "draining"),
			     outlen);
}

/* ------------------------------------------------------------- shard */

static int id_list_check(const char ids[][MP_NODE_ID_MAX + 1], size_t n,
			 const char *dup_msg, const char **error_r)
{
	if (n < 1 || n > MP_REPLICAS_MAX) {
		set_error(error_r, "a node list must hold 1 to 7 nodes");
		return MP_EINVAL;
	}
	for (size_t i = 0; i < n; i++) {
		/* The arrays come from callers too: find the NUL before
		 * treating an entry as a string. */
		if (memchr(ids[i], '\0', MP_NODE_ID_MAX + 1) == NULL ||
		    !mp_node_id_valid(ids[i])) {
			set_error(error_r, "node id must be 1 to 63 of [A-Za-z0-9_.-]");
			return MP_EINVAL;
		}
		for (size_t j = 0; j < i; j++) {
			if (strcmp(ids[i], ids[j]) == 0) {
				set_error(error_r, dup_msg);
				return MP_EINVAL;
			}
		}
	}
	return 0;
}

static bool id_in(const char ids[][MP_NODE_ID_MAX + 1], size_t n, const char *id)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(ids[i], id) == 0)
			return true;
	return false;
}

int mp_shard_rec_check(const struct mp_shard_rec *r, const char **error_r)
{
	int ret;

	if (r->epoch < 1) {
		set_error(error_r, "epoch must be 1 or more");
		return MP_EINVAL;
	}
	if (memchr(r->leader, '\0', sizeof(r->leader)) == NULL ||
	    !mp_node_id_valid(r->leader)) {
		set_error(error_r, "leader must be a node id of 1 to 63 of [A-Za-z0-9_.-]");
		return MP_EINVAL;
	}
	if ((ret = id_list_check(r->replicas, r->n_replicas,
				 "a node appears twice in replicas", error_r)) < 0 ||
	    (ret = id_list_check(r->isr, r->n_isr, "a node appears twice in isr",
				 error_r)) < 0)
		return ret;
	if (strcmp(r->leader, r->replicas[0]) != 0) {
		set_error(error_r, "leader is not the first of replicas");
		return MP_EINVAL;
	}
	for (size_t i = 0; i < r->n_isr; i++) {
		if (!id_in(r->replicas, r->n_replicas, r->isr[i])) {
			set_error(error_r, "isr is not a subset of replicas");
			return MP_EINVAL;
		}
	}
	if (!id_in(r->isr, r->n_isr, r->leader)) {
		set_error(error_r, "isr does not contain the leader");
		return MP_EINVAL;
	}
	return 0;
}

int mp_shard_rec_parse(const char *s, size_t len, struct mp_shard_rec *r,
		       const char **error_r)
{
	static const char *const keys[] = { "epoch", "leader", "replicas", "isr" };
	struct slice v[4];
	struct mp_shard_rec t;
	int ret;

	/* Parsed into t first: a failed parse leaves *r as it was. */
	memset(&t, 0, sizeof(t));
	if ((ret = rec_scan(s, len, keys, 4, v, error_r)) < 0 ||
	    (ret = parse_u64(v[0], 1, UINT64_MAX, &t.epoch,
			     "epoch must be 1..18446744073709551615", error_r)) < 0)
		return ret;
	if (!node_id_slice_valid(v[1])) {
		set_error(error_r, "leader must be a node id of 1 to 63 of [A-Za-z0-9_.-]");
		return MP_EINVAL;
	}
	slice_copy(t.leader, v[1]);
	if ((ret = parse_id_list(v[2], t.replicas, &t.n_replicas, error_r)) < 0 ||
	    (ret = parse_id_list(v[3], t.isr, &t.n_isr, error_r)) < 0 ||
	    (ret = mp_shard_rec_check(&t, error_r)) < 0)
		return ret;
	*r = t;
	return 0;
}

/* Appends to a fixed buffer; remembers when it ran out. */
struct writer {
	char *p;
	size_t cap, len;
	bool full;
};

static void w_str(struct writer *w, const char *s)
{
	size_t n = strlen(s);

	if (w->full || n >= w->cap - w->len) {
		w->full = true;
		return;
	}
	memcpy(w->p + w->len, s, n);
	w->len += n;
	w->p[w->len] = '\0';
}

static void w_list(struct writer *w, const char ids[][MP_NODE_ID_MAX + 1], size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			w_str(w, ",");
		w_str(w, ids[i]);
	}
}

int mp_shard_rec_format(const struct mp_shard_rec *r, char *out, size_t outlen)
{
	struct writer w = { out, outlen, 0, false };
	char num[32];

	if (mp_shard_rec_check(r, NULL) < 0)
		return MP_EINVAL;
	if (outlen == 0)
		return MP_ENOSPC;
	out[0] = '\0';
	snprintf(num, sizeof(num), "%llu", (unsigned long long)r->epoch);
	w_str(&w, "epoch=");
	w_str(&w, num);
	w_str(&w, " leader=");
	w_str(&w, r->leader);
	w_str(&w, " replicas=");
	w_list(&w, r->replicas, r->n_replicas);
	w_str(&w, " isr=");
	w_list(&w, r->isr, r->n_isr);
	if (w.full) {
		out[0] = '\0';
		return MP_ENOSPC;
	}
	return (int)w.len;
}

int mp_shard_rec_has_replica(const struct mp_shard_rec *r, const char *id)
{
	size_t n = r->n_replicas < MP_REPLICAS_MAX ? r->n_replicas : MP_REPLICAS_MAX;

	return id != NULL && id_in(r->replicas, n, id) ? 1 : 0;
}

int mp_shard_rec_in_isr(const struct mp_shard_rec *r, const char *id)
{
	size_t n = r->n_isr < MP_REPLICAS_MAX ? r->n_isr : MP_REPLICAS_MAX;

	return id != NULL && id_in(r->isr, n, id) ? 1 : 0;
}

int mp_shard_key_parse(const char *key, uint32_t nshards, uint32_t *shard_r)
{
	static const char prefix[] = "shards/";
	const size_t pl = sizeof(prefix) - 1;
	uint64_t n;

	if (key == NULL || nshards == 0 || strncmp(key, prefix, pl) != 0)
		return MP_EINVAL;
	/* strnlen: bound the scan of a key handed to us from etcd. */
	struct slice v = { key + pl, strnlen(key + pl, 16) };

	if (v.len == 16 || parse_u64(v, 0, (uint64_t)nshards - 1, &n, "", NULL) < 0)
		return MP_EINVAL;
	*shard_r = (uint32_t)n;
	return 0;
}

/* -------------------------------------------------------------- map */

void mp_shardmap_init(struct mp_shardmap *m)
{
	memset(m, 0, sizeof(*m));
	/* Default attributes: glibc's init cannot fail then. */
	pthread_mutex_init(&m->mu, NULL);
}

void mp_shardmap_free(struct mp_shardmap *m)
{
	if (m == NULL)
		return;
	free(m->shards);
	free(m->shard_mod_rev);
	free(m->nodes);
	pthread_mutex_destroy(&m->mu);
	memset(m, 0, sizeof(*m));
}

int mp_shardmap_set_config(struct mp_shardmap *m, const struct mp_cluster_config *c)
{
	int ret = 0;

	if (config_check(c, NULL) < 0)
		return MP_EINVAL;
	pthread_mutex_lock(&m->mu);
	if (m->config.shards == 0) {
		struct mp_shard_rec *s = calloc(c->shards, sizeof(*s));
		int64_t *rev = calloc(c->shards, sizeof(*rev));

		if (s == NULL || rev == NULL) {
			free(s);
			free(rev);
			ret = MP_ENOMEM;
		} else {
			m->shards = s;
			m->shard_mod_rev = rev;
			m->config = *c;
		}
	} else if (m->config.shards != c->shards) {
		/* The shard count is fixed at creation: every user's shard
		 * depends on it. */
		ret = MP_EINVAL;
	} else {
		m->config = *c;
	}
	pthread_mutex_unlock(&m->mu);
	return ret;
}

int mp_shardmap_set_shard(struct mp_shardmap *m, uint32_t shard,
			  const struct mp_shard_rec *r, int64_t mod_rev)
{
	int ret = 0;

	if (mod_rev < 1 || mp_shard_rec_check(r, NULL) < 0)
		return MP_EINVAL;
	pthread_mutex_lock(&m->mu);
	if (shard >= m->config.shards) {
		ret = MP_EINVAL;
	} else {
		m->shards[shard] = *r;
		m->shard_mod_rev[shard] = mod_rev;
	}
	pthread_mutex_unlock(&m->mu);
	return ret;
}

int mp_shardmap_offer_shard(struct mp_shardmap *m, uint32_t shard,
			    const struct mp_shard_rec *r, int64_t mod_rev)
{
	int ret = 0;

	if (mod_rev < 1 || (r != NULL && mp_shard_rec_check(r, NULL) < 0))
		return MP_EINVAL;
	pthread_mutex_lock(&m->mu);
	if (shard >= m->config.shards) {
		ret = MP_EINVAL;
	} else if (r != NULL) {
		if (m->shard_mod_rev[shard] < mod_rev) {
			m->shards[shard] = *r;
			m->shard_mod_rev[shard] = mod_rev;
			ret = 1;
		}
	} else if (m->shard_mod_rev[shard] != 0 &&
		   m->shard_mod_rev[shard] <= mod_rev) {
		/* Absent at revision mod_rev: a record we hold that was
		 * written at or before it has been deleted since. */
		memset(&m->shards[shard], 0, sizeof(m->shards[shard]));
		m->shard_mod_rev[shard] = 0;
		ret = 1;
	}
	pthread_mutex_unlock(&m->mu);
	return ret;
}

void mp_shardmap_clear_shard(struct mp_shardmap *m, uint32_t shard)
{
	pthread_mutex_lock(&m->mu);
	if (shard < m->config.shards) {
		memset(&m->shards[shard], 0, sizeof(m->shards[shard]));
		m->shard_mod_rev[shard] = 0;
	}
	pthread_mutex_unlock(&m->mu);
}

/* Index of a node, or n_nodes. Under the lock. */
static size_t node_find(const struct mp_shardmap *m, const char *id)
{
	size_t i;

	for (i = 0; i < m->n_nodes; i++)
		if (strcmp(m->nodes[i].id, id) == 0)
			break;
	return i;
}

int mp_shardmap_set_node(struct mp_shardmap *m, const char *id,
			 const struct mp_node_rec *n)
{
	int ret = 0;

	if (!mp_node_id_valid(id) || node_rec_check(n) < 0)
		return MP_EINVAL;
	pthread_mutex_lock(&m->mu);
	size_t i = node_find(m, id);

	if (i == m->n_nodes && m->n_nodes == m->cap_nodes) {
		size_t cap = m->cap_nodes == 0 ? 8 : m->cap_nodes * 2;
		struct mp_shardmap_node *nodes = NULL;

		if (cap <= SIZE_MAX / sizeof(*nodes))
			nodes = realloc(m->nodes, cap * sizeof(*nodes));
		if (nodes == NULL) {
			ret = MP_ENOMEM;
		} else {
			m->nodes = nodes;
			m->cap_nodes = cap;
		}
	}
	if (ret == 0) {
		if (i == m->n_nodes) {
			memset(&m->nodes[i], 0, sizeof(m->nodes[i]));
			snprintf(m->nodes[i].id, sizeof(m->nodes[i].id), "%s", id);
			m->n_nodes++;
		}
		m->nodes[i].rec = *n;
	}
	pthread_mutex_unlock(&m->mu);
	return ret;
}

void mp_shardmap_del_node(struct mp_shardmap *m, const char *id)
{
	if (id == NULL)
		return;
	pthread_mutex_lock(&m->mu);
	size_t i = node_find(m, id);

	if (i < m->n_nodes) {
		memmove(&m->nodes[i], &m->nodes[i + 1],
			(m->n_nodes - i - 1) * sizeof(m->nodes[0]));
		m->n_nodes--;
	}
	pthread_mutex_unlock(&m->mu);
}

int mp_shardmap_leader(struct mp_shardmap *m, uint32_t shard, char *id_out,
		       char *addr_out, uint64_t *epoch_r)
{
	int ret = MP_ENOENT;

	pthread_mutex_lock(&m->mu);
	if (shard < m->config.shards && m->shard_mod_rev[shard] != 0) {
		const struct mp_shard_rec *r = &m->shards[shard];
		size_t i = node_find(m, r->leader);

		if (i < m->n_nodes) {
			if (id_out != NULL)
				memcpy(id_out, r->leader, sizeof(r->leader));
			if (addr_out != NULL)
				memcpy(addr_out, m->nodes[i].rec.addr,
				       sizeof(m->nodes[i].rec.addr));
			if (epoch_r != NULL)
				*epoch_r = r->epoch;
			ret = 0;
		}
	}
	pthread_mutex_unlock(&m->mu);
	return ret;
}

int mp_shardmap_get_shard(struct mp_shardmap *m, uint32_t shard,
			  struct mp_shard_rec *r, int64_t *mod_rev_r)
{
	int ret = MP_ENOENT;

	pthread_mutex_lock(&m->mu);
	if (shard < m->config.shards && m->shard_mod_rev[shard] != 0) {
		if (r != NULL)
			*r = m->shards[shard];
		if (mod_rev_r != NULL)
			*mod_rev_r = m->shard_mod_rev[shard];
		ret = 0;
	}
	pthread_mutex_unlock(&m->mu);
	return ret;
}

int mp_shardmap_node_addr(struct mp_shardmap *m, const char *id, char *addr_out)
{
	int ret = MP_ENOENT;

	if (id == NULL)
		return MP_ENOENT;
	pthread_mutex_lock(&m->mu);
	size_t i = node_find(m, id);

	if (i < m->n_nodes) {
		if (addr_out != NULL)
			memcpy(addr_out, m->nodes[i].rec.addr,
			       sizeof(m->nodes[i].rec.addr));
		ret = 0;
	}
	pthread_mutex_unlock(&m->mu);
	return ret;
}
