/*
 * Tests for mp_shardmap: tables of valid and invalid records of each kind
 * (config, nodes/{id}, shards/{n}), format -> parse round trips, every
 * sample parsed from every prefix out of an exactly sized heap copy (so the
 * sanitizer build catches any read past len), formatting into every too
 * small buffer, the shard key parser, and the locked map.
 *
 * Never: depend on anything outside this process.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mp_error.h"
#include "mp_shardmap.h"

enum kind { K_CONFIG, K_NODE, K_SHARD };

/* Any of the three records, parsed. */
union rec {
	struct mp_cluster_config c;
	struct mp_node_rec n;
	struct mp_shard_rec s;
};

static int parse_kind(enum kind k, const char *s, size_t len, union rec *r,
		      const char **error_r)
{
	memset(r, 0, sizeof(*r));
	switch (k) {
	case K_CONFIG:
		return mp_config_rec_parse(s, len, &r->c, error_r);
	case K_NODE:
		return mp_node_rec_parse(s, len, &r->n, error_r);
	case K_SHARD:
		return mp_shard_rec_parse(s, len, &r->s, error_r);
	}
	return MP_EINVAL;
}

static int format_kind(enum kind k, const union rec *r, char *out, size_t outlen)
{
	switch (k) {
	case K_CONFIG:
		return mp_config_rec_format(&r->c, out, outlen);
	case K_NODE:
		return mp_node_rec_format(&r->n, out, outlen);
	case K_SHARD:
		return mp_shard_rec_format(&r->s, out, outlen);
	}
	return MP_EINVAL;
}

static size_t kind_size(enum kind k)
{
	return k == K_CONFIG ? sizeof(struct mp_cluster_config)
	       : k == K_NODE ? sizeof(struct mp_node_rec)
			     : sizeof(struct mp_shard_rec);
}

/* Parsers zero their output first, so equal records are equal bytewise. */
static bool rec_equal(enum kind k, const union rec *a, const union rec *b)
{
	return memcmp(a, b, kind_size(k)) == 0;
}

/* Parse from an exactly sized heap copy: a read past len is an ASan error. */
static int parse_exact(enum kind k, const char *s, size_t len, union rec *r,
		       const char **error_r)
{
	char *copy = malloc(len > 0 ? len : 1);
	int ret;

	assert_non_null(copy);
	memcpy(copy, s, len);
	ret = parse_kind(k, copy, len, r, error_r);
	free(copy);
	return ret;
}

/* ------------------------------------------------------------ samples */

struct sample {
	enum kind kind;
	const char *text;
	bool canonical; /* format writes exactly this text back */
};

#define ID63 "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_"
#define ID63B "bbcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_"
#define ID63C "cbcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_"
#define ID63D "dbcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_"
#define ID63E "ebcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_"
#define ID63F "fbcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_"
#define ID63G "gbcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_"
#define ID64 ID63 "x"
#define SEVEN63 ID63 "," ID63B "," ID63C "," ID63D "," ID63E "," ID63F "," ID63G

static const struct sample valid[] = {
	{ K_CONFIG, "shards=64 rf=3 min_isr=2", true },
	{ K_CONFIG, "shards=1 rf=1 min_isr=1", true },
	{ K_CONFIG, "shards=65536 rf=7 min_isr=7", true },
	{ K_CONFIG, "shards=10 rf=3 min_isr=3", true },
	{ K_CONFIG, "min_isr=2 rf=3 shards=64", false },
	{ K_CONFIG, "rf=2 shards=1000 min_isr=1", false },

	{ K_NODE, "addr=127.0.0.1:7001 state=active", true },
	{ K_NODE, "addr=node-1.example.com:65535 state=draining", true },
	{ K_NODE, "addr=[::1]:7001 state=active", true },
	{ K_NODE, "addr=[2001:db8::1.2.3.4]:1 state=draining", true },
	{ K_NODE, "addr=h:1 state=active", true },
	{ K_NODE, "state=draining addr=10.0.0.7:70", false },

	{ K_SHARD, "epoch=7 leader=n2 replicas=n2,n1,n3 isr=n2,n1", true },
	{ K_SHARD, "epoch=1 leader=a replicas=a isr=a", true },
	{ K_SHARD, "epoch=18446744073709551615 leader=x replicas=x,y isr=y,x", true },
	{ K_SHARD, "epoch=10 leader=node_1.a-b replicas=node_1.a-b,N2 isr=node_1.a-b", true },
	{ K_SHARD, "epoch=3 leader=a replicas=a,b,c,d,e,f,g isr=g,f,e,d,c,b,a", true },
	{ K_SHARD, "epoch=2 leader=" ID63 " replicas=" SEVEN63 " isr=" SEVEN63, true },
	{ K_SHARD, "isr=n1 replicas=n1,n2 epoch=5 leader=n1", false },
	{ K_SHARD, "leader=n1 epoch=5 isr=n1,n2 replicas=n1,n2", false },
};

struct bad {
	enum kind kind;
	const char *text;
	const char *why; /* a fragment of the expected message */
};

static const struct bad invalid[] = {
	/* structure, shared by every kind */
	{ K_CONFIG, "", "empty" },
	{ K_CONFIG, " shards=64 rf=3 min_isr=2", "leading or trailing space" },
	{ K_CONFIG, "shards=64 rf=3 min_isr=2 ", "leading or trailing space" },
	{ K_CONFIG, "shards=64  rf=3 min_isr=2", "exactly one space" },
	{ K_CONFIG, "shards=64   rf=3 min_isr=2", "exactly one space" },
	{ K_CONFIG, "shards=64\trf=3 min_isr=2", "control" },
	{ K_CONFIG, "shards=64 rf=3 min_isr=2\n", "control" },
	{ K_CONFIG, "shards=64 rf=3\r min_isr=2", "control" },
	{ K_CONFIG, "shards=64 rf=3 min_isr=2\xc3\xa9", "non-ASCII" },
	{ K_CONFIG, "shards=64 rf=3 min_isr=2 zone=a", "unknown key" },
	{ K_CONFIG, "SHARDS=64 rf=3 min_isr=2", "unknown key" },
	{ K_CONFIG, "shards=64 rf=3 min_isr=2 shards=64", "duplicate key" },
	{ K_CONFIG, "shards=64 rf=3 rf=3", "duplicate key" },
	{ K_CONFIG, "shards=64 rf=3", "missing key" },
	{ K_CONFIG, "rf=3 min_isr=2", "missing key" },
	{ K_CONFIG, "shards=64 rf=3 min_isr", "key=value" },
	{ K_CONFIG, "shards=64 =3 min_isr=2", "key=value" },
	{ K_CONFIG, "shards= rf=3 min_isr=2", "empty value" },
	/* numbers */
	{ K_CONFIG, "shards=064 rf=3 min_isr=2", "leading zero" },
	{ K_CONFIG, "shards=00 rf=3 min_isr=2", "leading zero" },
	{ K_CONFIG, "shards=0 rf=3 min_isr=2", "shards must be" },
	{ K_CONFIG, "shards=65537 rf=3 min_isr=2", "shards must be" },
	{ K_CONFIG, "shards=4294967360 rf=3 min_isr=2", "shards must be" },
	{ K_CONFIG, "shards=18446744073709551616 rf=3 min_isr=2", "shards must be" },
	{ K_CONFIG, "shards=99999999999999999999999999 rf=3 min_isr=2", "shards must be" },
	{ K_CONFIG, "shards=-1 rf=3 min_isr=2", "decimal" },
	{ K_CONFIG, "shards=+1 rf=3 min_isr=2", "decimal" },
	{ K_CONFIG, "shards=1e3 rf=3 min_isr=2", "decimal" },
	{ K_CONFIG, "shards=0x40 rf=3 min_isr=2", "decimal" },
	{ K_CONFIG, "shards=64 rf=0 min_isr=1", "rf must be" },
	{ K_CONFIG, "shards=64 rf=8 min_isr=2", "rf must be" },
	{ K_CONFIG, "shards=64 rf=3 min_isr=4", "min_isr must be" },
	{ K_CONFIG, "shards=64 rf=3 min_isr=0", "min_isr must be" },
	{ K_CONFIG, "shards=64 rf=3 min_isr=2=2", "decimal" },

	{ K_NODE, "addr=127.0.0.1 state=active", "host:port" },
	{ K_NODE, "addr=127.0.0.1:0 state=active", "port" },
	{ K_NODE, "addr=127.0.0.1:65536 state=active", "port" },
	{ K_NODE, "addr=127.0.0.1:07001 state=active", "leading zero" },
	{ K_NODE, "addr=127.0.0.1: state=active", "decimal" },
	{ K_NODE, "addr=:7001 state=active", "empty host" },
	{ K_NODE, "addr=[]:7001 state=active", "IPv6" },
	{ K_NODE, "addr=[zz]:7001 state=active", "IPv6" },
	{ K_NODE, "addr=[::1:7001 state=active", "IPv6" },
	{ K_NODE, "addr=::1:7001 state=active", "host may hold" },
	{ K_NODE, "addr=a_b:7001 state=active", "host may hold" },
	{ K_NODE, "addr=a/b:7001 state=active", "host may hold" },
	{ K_NODE, "addr=a=b:7001 state=active", "host may hold" },
	{ K_NODE, "addr=h:1 state=Active", "state must be" },
	{ K_NODE, "addr=h:1 state=dead", "state must be" },
	{ K_NODE, "addr=h:1 state=", "empty value" },
	{ K_NODE, "addr=h:1 state=active state=draining", "duplicate key" },
	{ K_NODE, "addr=h:1 state=active zone=a", "unknown key" },
	{ K_NODE, "addr=h:1", "missing key" },
	{ K_NODE, "state=active", "missing key" },
	{ K_NODE, "addr=h:1 ", "leading or trailing space" },

	{ K_SHARD, "epoch=0 leader=n1 replicas=n1 isr=n1", "epoch must be" },
	{ K_SHARD, "epoch=01 leader=n1 replicas=n1 isr=n1", "leading zero" },
	{ K_SHARD, "epoch=18446744073709551616 leader=n1 replicas=n1 isr=n1", "epoch must be" },
	{ K_SHARD, "epoch=99999999999999999999 leader=n1 replicas=n1 isr=n1", "epoch must be" },
	{ K_SHARD, "epoch=-1 leader=n1 replicas=n1 isr=n1", "decimal" },
	{ K_SHARD, "epoch=7 leader=n1 replicas=n2,n1 isr=n1,n2", "first of replicas" },
	{ K_SHARD, "epoch=7 leader=n3 replicas=n2,n1 isr=n2", "first of replicas" },
	{ K_SHARD, "epoch=7 leader=n2 replicas=n2,n1,n3 isr=n2,n4", "subset" },
	{ K_SHARD, "epoch=7 leader=n2 replicas=n2,n1,n3 isr=n1", "contain the leader" },
	{ K_SHARD, "epoch=7 leader=a replicas=a,b,c,d,e,f,g,h isr=a", "more than 7" },
	{ K_SHARD, "epoch=7 leader=a replicas=a,b isr=a,b,a,b,a,b,a,b", "more than 7" },
	{ K_SHARD, "epoch=7 leader=n2 replicas=n2,n1,n1 isr=n2", "twice in replicas" },
	{ K_SHARD, "epoch=7 leader=n2 replicas=n2,n1 isr=n2,n2", "twice in isr" },
	{ K_SHARD, "epoch=7 leader=n2 replicas=n2,,n1 isr=n2", "empty node id" },
	{ K_SHARD, "epoch=7 leader=n2 replicas=n2,n1, isr=n2", "empty node id" },
	{ K_SHARD, "epoch=7 leader=n2 replicas=,n2 isr=n2", "empty node id" },
	{ K_SHARD, "epoch=7 leader=n2 replicas=n2 isr=n2,", "empty node id" },
	{ K_SHARD, "epoch=7 leader=n/2 replicas=n/2 isr=n/2", "leader must be" },
	{ K_SHARD, "epoch=7 leader=n2 replicas=n2,n:1 isr=n2", "node id must be" },
	{ K_SHARD, "epoch=7 leader=" ID64 " replicas=" ID64 " isr=" ID64, "leader must be" },
	{ K_SHARD, "epoch=7 leader=n2 replicas=n2," ID64 " isr=n2", "node id must be" },
	{ K_SHARD, "epoch=7 leader=n2 replicas=n2,n1", "missing key" },
	{ K_SHARD, "epoch=7 leader=n2 replicas=n2 isr=n2 term=1", "unknown key" },
	{ K_SHARD, "epoch=7 epoch=7 leader=n2 replicas=n2 isr=n2", "duplicate key" },
	{ K_SHARD, "epoch=7 leader=n2 replicas=n2 isr=", "empty value" },
	{ K_SHARD, "epoch=7 leader=n2 replicas=n2  isr=n2", "exactly one space" },
	{ K_SHARD, "epoch=7 leader=n2 replicas=n2 isr=n2 ", "leading or trailing space" },
};

static void test_valid_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
		const struct sample *v = &valid[i];
		union rec a, b;
		char buf[MP_SHARDREC_MAX_LEN + 1];
		const char *err = NULL;
		int len;

		if (parse_exact(v->kind, v->text, strlen(v->text), &a, &err) != 0)
			fail_msg("valid sample %zu rejected (%s): %s", i, err, v->text);
		len = format_kind(v->kind, &a, buf, sizeof(buf));
		assert_true(len > 0);
		assert_int_equal((size_t)len, strlen(buf));
		if (v->canonical)
			assert_string_equal(buf, v->text);
		else
			assert_int_equal((size_t)len, strlen(v->text));
		assert_int_equal(parse_exact(v->kind, buf, (size_t)len, &b, &err), 0);
		assert_true(rec_equal(v->kind, &a, &b));

		/* Every too-small buffer: MP_ENOSPC, never a cut record. */
		for (size_t outlen = 0; outlen <= (size_t)len; outlen++) {
			char *small = malloc(outlen > 0 ? outlen : 1);

			assert_non_null(small);
			assert_int_equal(format_kind(v->kind, &a, small, outlen),
					 MP_ENOSPC);
			free(small);
		}
		char *exact = malloc((size_t)len + 1);
		assert_non_null(exact);
		assert_int_equal(format_kind(v->kind, &a, exact, (size_t)len + 1), len);
		assert_string_equal(exact, buf);
		free(exact);
	}
}

static void test_invalid_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
		const struct bad *b = &invalid[i];
		union rec r, before;
		const char *err = NULL;
		int ret;

		/* A failed parse changes nothing. */
		memset(&r, 0xa5, sizeof(r));
		before = r;
		switch (b->kind) {
		case K_CONFIG:
			ret = mp_config_rec_parse(b->text, strlen(b->text), &r.c, &err);
			break;
		case K_NODE:
			ret = mp_node_rec_parse(b->text, strlen(b->text), &r.n, &err);
			break;
		default:
			ret = mp_shard_rec_parse(b->text, strlen(b->text), &r.s, &err);
			break;
		}
		if (ret != MP_EINVAL)
			fail_msg("invalid sample %zu accepted: %s", i, b->text);
		assert_non_null(err);
		if (strstr(err, b->why) == NULL)
			fail_msg("sample %zu (%s): message \"%s\", want \"%s\"", i,
				 b->text, err, b->why);
		assert_memory_equal(&r, &before, sizeof(r));
		/* error_r may be NULL. */
		assert_int_equal(parse_exact(b->kind, b->text, strlen(b->text), &r,
					     NULL),
				 MP_EINVAL);
	}
}

/* The length limit comes before anything else; 1024 bytes are allowed. */
static void test_too_long(void **state)
{
	char buf[MP_SHARDREC_MAX_LEN + 2];
	union rec r;
	const char *err = NULL;

	(void)state;
	memset(buf, 'a', sizeof(buf));
	memcpy(buf, "shards=", 7);
	assert_int_equal(parse_exact(K_CONFIG, buf, MP_SHARDREC_MAX_LEN + 1, &r, &err),
			 MP_EINVAL);
	assert_non_null(strstr(err, "longer"));
	assert_int_equal(parse_exact(K_CONFIG, buf, MP_SHARDREC_MAX_LEN, &r, &err),
			 MP_EINVAL);
	assert_null(strstr(err, "longer"));

	/* A shard record padded to exactly 1024 bytes by leading zeros... no:
	 * leading zeros are refused. Use the largest valid record instead and
	 * check it is under the limit, so every valid record fits. */
	struct mp_shard_rec s;
	memset(&s, 0, sizeof(s));
	s.epoch = UINT64_MAX;
	s.n_replicas = s.n_isr = MP_REPLICAS_MAX;
	for (size_t i = 0; i < MP_REPLICAS_MAX; i++) {
		memset(s.replicas[i], 'a' + (int)i, MP_NODE_ID_MAX);
		memset(s.isr[i], 'a' + (int)i, MP_NODE_ID_MAX);
	}
	memcpy(s.leader, s.replicas[0], sizeof(s.leader));
	char out[MP_SHARDREC_MAX_LEN + 1];
	int len = mp_shard_rec_format(&s, out, sizeof(out));
	assert_true(len > 0 && len <= MP_SHARDREC_MAX_LEN);
	assert_int_equal(parse_exact(K_SHARD, out, (size_t)len, &r, &err), 0);
	assert_memory_equal(&r.s, &s, sizeof(s));
}

/* Every prefix of every sample: it fails, or it is a record that round
 * trips; for a canonical sample a prefix that parses must format back to
 * exactly itself, which shows the parser read nothing past len. (A prefix
 * can be valid and different: "isr=n2" is a prefix of "isr=n2,n1".) */
static void check_prefixes(enum kind k, const char *text, bool canonical)
{
	size_t len = strlen(text);

	for (size_t n = 0; n <= len; n++) {
		union rec a, b, full;
		char buf[MP_SHARDREC_MAX_LEN + 1];
		const char *err = NULL;
		int ret = parse_exact(k, text, n, &a, &err);

		if (ret != 0) {
			assert_int_equal(ret, MP_EINVAL);
			assert_non_null(err);
			continue;
		}
		int fl = format_kind(k, &a, buf, sizeof(buf));
		assert_true(fl > 0);
		assert_int_equal(parse_exact(k, buf, (size_t)fl, &b, &err), 0);
		assert_true(rec_equal(k, &a, &b));
		if (canonical) {
			assert_int_equal((size_t)fl, n);
			assert_memory_equal(buf, text, n);
		}
		if (n == len) {
			assert_int_equal(parse_exact(k, text, len, &full, &err), 0);
			assert_true(rec_equal(k, &a, &full));
		}
	}
}

static void test_prefixes(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(valid) / sizeof(valid[0]); i++)
		check_prefixes(valid[i].kind, valid[i].text, valid[i].canonical);
	for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++)
		check_prefixes(invalid[i].kind, invalid[i].text, false);
}

/* One sample, every byte replaced by every value: never a crash, and any
 * accepted mutant round-trips. */
static void test_mutations(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
		const struct sample *v = &valid[i];
		size_t len = strlen(v->text);

		if (len > 64)
			continue;
		char *m = malloc(len);
		assert_non_null(m);
		for (size_t pos = 0; pos < len; pos++) {
			for (int c = 0; c < 256; c++) {
				union rec a, b;
				char buf[MP_SHARDREC_MAX_LEN + 1];
				const char *err = NULL;

				memcpy(m, v->text, len);
				m[pos] = (char)c;
				if (parse_kind(v->kind, m, len, &a, &err) != 0) {
					assert_non_null(err);
					continue;
				}
				int fl = format_kind(v->kind, &a, buf, sizeof(buf));
				assert_true(fl > 0);
				assert_int_equal(parse_kind(v->kind, buf, (size_t)fl, &b,
							    &err), 0);
				assert_true(rec_equal(v->kind, &a, &b));
			}
		}
		free(m);
	}
}

/* Formatting refuses what parsing would refuse. */
static void test_format_invalid(void **state)
{
	char buf[MP_SHARDREC_MAX_LEN + 1];
	const char *err = NULL;

	(void)state;
	struct mp_cluster_config c = { 64, 3, 4 };
	assert_int_equal(mp_config_rec_format(&c, buf, sizeof(buf)), MP_EINVAL);
	c = (struct mp_cluster_config){ 0, 3, 2 };
	assert_int_equal(mp_config_rec_format(&c, buf, sizeof(buf)), MP_EINVAL);
	c = (struct mp_cluster_config){ 65537, 3, 2 };
	assert_int_equal(mp_config_rec_format(&c, buf, sizeof(buf)), MP_EINVAL);

	struct mp_node_rec n;
	memset(&n, 0, sizeof(n));
	snprintf(n.addr, sizeof(n.addr), "h:1");
	n.state = (enum mp_node_state)7;
	assert_int_equal(mp_node_rec_format(&n, buf, sizeof(buf)), MP_EINVAL);
	n.state = MP_NODE_ACTIVE;
	snprintf(n.addr, sizeof(n.addr), "h 1:2");
	assert_int_equal(mp_node_rec_format(&n, buf, sizeof(buf)), MP_EINVAL);
	memset(n.addr, 'a', sizeof(n.addr)); /* no NUL at all */
	assert_int_equal(mp_node_rec_format(&n, buf, sizeof(buf)), MP_EINVAL);

	struct mp_shard_rec s;
	memset(&s, 0, sizeof(s));
	assert_int_equal(mp_shard_rec_check(&s, &err), MP_EINVAL); /* epoch 0 */
	s.epoch = 1;
	snprintf(s.leader, sizeof(s.leader), "n1");
	snprintf(s.replicas[0], sizeof(s.replicas[0]), "n1");
	snprintf(s.isr[0], sizeof(s.isr[0]), "n1");
	assert_int_equal(mp_shard_rec_check(&s, &err), MP_EINVAL); /* n_* 0 */
	s.n_replicas = s.n_isr = 1;
	assert_int_equal(mp_shard_rec_check(&s, &err), 0);
	assert_true(mp_shard_rec_format(&s, buf, sizeof(buf)) > 0);
	assert_string_equal(buf, "epoch=1 leader=n1 replicas=n1 isr=n1");
	s.n_replicas = MP_REPLICAS_MAX + 1;
	assert_int_equal(mp_shard_rec_format(&s, buf, sizeof(buf)), MP_EINVAL);
	s.n_replicas = 1;
	memset(s.leader, 'a', sizeof(s.leader)); /* no NUL */
	assert_int_equal(mp_shard_rec_check(&s, &err), MP_EINVAL);
	snprintf(s.leader, sizeof(s.leader), "n1");
	memset(s.isr[0], 'b', sizeof(s.isr[0]));
	assert_int_equal(mp_shard_rec_check(&s, &err), MP_EINVAL);
	snprintf(s.isr[0], sizeof(s.isr[0]), "n1");
	snprintf(s.replicas[1], sizeof(s.replicas[1]), "n2");
	snprintf(s.isr[1], sizeof(s.isr[1]), "n2");
	s.n_replicas = s.n_isr = 2;
	assert_int_equal(mp_shard_rec_check(&s, &err), 0);
	assert_int_equal(mp_shard_rec_has_replica(&s, "n2"), 1);
	assert_int_equal(mp_shard_rec_has_replica(&s, "n3"), 0);
	assert_int_equal(mp_shard_rec_in_isr(&s, "n2"), 1);
	s.n_isr = 1;
	assert_int_equal(mp_shard_rec_in_isr(&s, "n2"), 0);
	assert_int_equal(mp_shard_rec_in_isr(&s, NULL), 0);
}

static void test_node_id_valid(void **state)
{
	(void)state;
	assert_int_equal(mp_node_id_valid("n1"), 1);
	assert_int_equal(mp_node_id_valid("A_b.c-9"), 1);
	assert_int_equal(mp_node_id_valid(ID63), 1);
	assert_int_equal(mp_node_id_valid(ID64), 0);
	assert_int_equal(mp_node_id_valid(""), 0);
	assert_int_equal(mp_node_id_valid("n 1"), 0);
	assert_int_equal(mp_node_id_valid("n/1"), 0);
	assert_int_equal(mp_node_id_valid("n,1"), 0);
	assert_int_equal(mp_node_id_valid("n=1"), 0);
	assert_int_equal(mp_node_id_valid("n\xc3\xa9"), 0);
	assert_int_equal(mp_node_id_valid(NULL), 0);
}

static void test_shard_key(void **state)
{
	uint32_t s = 99;

	(void)state;
	assert_int_equal(mp_shard_key_parse("shards/0", 64, &s), 0);
	assert_int_equal(s, 0);
	assert_int_equal(mp_shard_key_parse("shards/17", 64, &s), 0);
	assert_int_equal(s, 17);
	assert_int_equal(mp_shard_key_parse("shards/63", 64, &s), 0);
	assert_int_equal(s, 63);
	assert_int_equal(mp_shard_key_parse("shards/65535", 65536, &s), 0);
	assert_int_equal(s, 65535);
	s = 99;
	static const char *const bad[] = {
		"shards/64", "shards/017", "shards/00", "shards/", "shards",
		"shards/1x", "shards/-1", "shards/+1", "shards/ 1", "shards/1 ",
		"shard/1", "Shards/1", "/shards/1", "shards//1", "shards/1/",
		"shards/99999999999999999999999999", "shards/4294967296",
		"nodes/1", "",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (mp_shard_key_parse(bad[i], 64, &s) != MP_EINVAL)
			fail_msg("key accepted: \"%s\"", bad[i]);
		assert_int_equal(s, 99);
	}
	assert_int_equal(mp_shard_key_parse("shards/0", 0, &s), MP_EINVAL);
	assert_int_equal(mp_shard_key_parse(NULL, 64, &s), MP_EINVAL);
	assert_int_equal(mp_shard_key_parse("shards/0", 1, &s), 0);
	assert_int_equal(mp_shard_key_parse("shards/1", 1, &s), MP_EINVAL);
}

/* -------------------------------------------------------------- map */

static struct mp_shard_rec shard_rec(uint64_t epoch, const char *leader,
				     const char *other)
{
	struct mp_shard_rec r;

	memset(&r, 0, sizeof(r));
	r.epoch = epoch;
	snprintf(r.leader, sizeof(r.leader), "%s", leader);
	snprintf(r.replicas[0], sizeof(r.replicas[0]), "%s", leader);
	snprintf(r.isr[0], sizeof(r.isr[0]), "%s", leader);
	r.n_replicas = r.n_isr = 1;
	if (other != NULL) {
		snprintf(r.replicas[1], sizeof(r.replicas[1]), "%s", other);
		r.n_replicas = 2;
	}
	return r;
}

static struct mp_node_rec node_rec(const char *addr, enum mp_node_state st)
{
	struct mp_node_rec n;

	memset(&n, 0, sizeof(n));
	snprintf(n.addr, sizeof(n.addr), "%s", addr);
	n.state = st;
	return n;
}

static void test_map_config(void **state)
{
	struct mp_shardmap m;
	struct mp_shard_rec r = shard_rec(1, "n1", NULL);

	(void)state;
	mp_shardmap_init(&m);
	/* Nothing is known before the config. */
	assert_int_equal(mp_shardmap_set_shard(&m, 0, &r, 5), MP_EINVAL);
	assert_int_equal(mp_shardmap_offer_shard(&m, 0, &r, 5), MP_EINVAL);
	assert_int_equal(mp_shardmap_get_shard(&m, 0, NULL, NULL), MP_ENOENT);
	assert_int_equal(mp_shardmap_leader(&m, 0, NULL, NULL, NULL), MP_ENOENT);
	mp_shardmap_clear_shard(&m, 0); /* harmless */

	struct mp_cluster_config c = { 8, 3, 4 };
	assert_int_equal(mp_shardmap_set_config(&m, &c), MP_EINVAL);
	assert_int_equal(m.config.shards, 0);
	c = (struct mp_cluster_config){ 8, 3, 2 };
	assert_int_equal(mp_shardmap_set_config(&m, &c), 0);
	assert_int_equal(m.config.shards, 8);
	c.min_isr = 1;
	assert_int_equal(mp_shardmap_set_config(&m, &c), 0);
	assert_int_equal(m.config.min_isr, 1);
	c.shards = 16;
	assert_int_equal(mp_shardmap_set_config(&m, &c), MP_EINVAL);
	assert_int_equal(m.config.shards, 8);
	mp_shardmap_free(&m);
}

static void test_map_shards_nodes(void **state)
{
	struct mp_shardmap m;
	struct mp_cluster_config c = { 4, 2, 1 };
	struct mp_shard_rec r = shard_rec(3, "n1", "n2"), got;
	struct mp_node_rec n1 = node_rec("127.0.0.1:7001", MP_NODE_ACTIVE);
	struct mp_node_rec n2 = node_rec("127.0.0.1:7002", MP_NODE_DRAINING);
	char id[MP_NODE_ID_MAX + 1], addr[MP_ADDR_MAX + 1];
	uint64_t epoch = 0;
	int64_t rev = 0;

	(void)state;
	mp_shardmap_init(&m);
	assert_int_equal(mp_shardmap_set_config(&m, &c), 0);

	assert_int_equal(mp_shardmap_set_shard(&m, 4, &r, 10), MP_EINVAL);
	assert_int_equal(mp_shardmap_set_shard(&m, 0, &r, 0), MP_EINVAL);
	struct mp_shard_rec bad = r;
	snprintf(bad.leader, sizeof(bad.leader), "n2");
	assert_int_equal(mp_shardmap_set_shard(&m, 0, &bad, 10), MP_EINVAL);
	assert_int_equal(mp_shardmap_get_shard(&m, 0, &got, &rev), MP_ENOENT);

	assert_int_equal(mp_shardmap_set_shard(&m, 0, &r, 10), 0);
	assert_int_equal(mp_shardmap_get_shard(&m, 0, &got, &rev), 0);
	assert_memory_equal(&got, &r, sizeof(r));
	assert_int_equal(rev, 10);
	/* A shard whose leader has no node record has no leader to call. */
	assert_int_equal(mp_shardmap_leader(&m, 0, id, addr, &epoch), MP_ENOENT);

	assert_int_equal(mp_shardmap_set_node(&m, "n/1", &n1), MP_EINVAL);
	struct mp_node_rec badn = node_rec("nope", MP_NODE_ACTIVE);
	assert_int_equal(mp_shardmap_set_node(&m, "n1", &badn), MP_EINVAL);
	assert_int_equal(mp_shardmap_node_addr(&m, "n1", addr), MP_ENOENT);
	assert_int_equal(mp_shardmap_set_node(&m, "n1", &n1), 0);
	assert_int_equal(mp_shardmap_set_node(&m, "n2", &n2), 0);
	assert_int_equal(mp_shardmap_leader(&m, 0, id, addr, &epoch), 0);
	assert_string_equal(id, "n1");
	assert_string_equal(addr, "127.0.0.1:7001");
	assert_int_equal(epoch, 3);
	assert_int_equal(mp_shardmap_leader(&m, 1, id, addr, &epoch), MP_ENOENT);
	assert_int_equal(mp_shardmap_leader(&m, 99, id, addr, &epoch), MP_ENOENT);

	/* Replacing a node's record keeps one entry. */
	n1 = node_rec("[::1]:8001", MP_NODE_ACTIVE);
	assert_int_equal(mp_shardmap_set_node(&m, "n1", &n1), 0);
	assert_int_equal(m.n_nodes, 2);
	assert_int_equal(mp_shardmap_leader(&m, 0, NULL, addr, NULL), 0);
	assert_string_equal(addr, "[::1]:8001");

	/* Leader changes with a new epoch. */
	struct mp_shard_rec r2 = shard_rec(4, "n2", "n1");
	assert_int_equal(mp_shardmap_set_shard(&m, 0, &r2, 11), 0);
	assert_int_equal(mp_shardmap_leader(&m, 0, id, addr, &epoch), 0);
	assert_string_equal(id, "n2");
	assert_string_equal(addr, "127.0.0.1:7002");
	assert_int_equal(epoch, 4);

	mp_shardmap_del_node(&m, "n2");
	mp_shardmap_del_node(&m, "n2"); /* twice: nothing */
	mp_shardmap_del_node(&m, NULL);
	assert_int_equal(m.n_nodes, 1);
	assert_int_equal(mp_shardmap_leader(&m, 0, id, addr, &epoch), MP_ENOENT);
	assert_int_equal(mp_shardmap_node_addr(&m, "n2", addr), MP_ENOENT);
	assert_int_equal(mp_shardmap_node_addr(&m, "n1", addr), 0);

	mp_shardmap_clear_shard(&m, 0);
	assert_int_equal(mp_shardmap_get_shard(&m, 0, &got, &rev), MP_ENOENT);
	mp_shardmap_clear_shard(&m, 77); /* out of range: nothing */
	mp_shardmap_free(&m);
}

static void test_map_offer(void **state)
{
	struct mp_shardmap m;
	struct mp_cluster_config c = { 2, 2, 1 };
	struct mp_shard_rec a = shard_rec(1, "n1", NULL), b = shard_rec(2, "n2", NULL);
	struct mp_shard_rec got;
	int64_t rev;

	(void)state;
	mp_shardmap_init(&m);
	assert_int_equal(mp_shardmap_set_config(&m, &c), 0);
	assert_int_equal(mp_shardmap_offer_shard(&m, 0, &a, 10), 1);
	/* Older and equal revisions do not replace. */
	assert_int_equal(mp_shardmap_offer_shard(&m, 0, &b, 9), 0);
	assert_int_equal(mp_shardmap_offer_shard(&m, 0, &b, 10), 0);
	assert_int_equal(mp_shardmap_get_shard(&m, 0, &got, &rev), 0);
	assert_int_equal(got.epoch, 1);
	assert_int_equal(mp_shardmap_offer_shard(&m, 0, &b, 12), 1);
	assert_int_equal(mp_shardmap_get_shard(&m, 0, &got, &rev), 0);
	assert_int_equal(got.epoch, 2);
	assert_int_equal(rev, 12);
	/* "Absent at revision 11": our record (12) is newer, keep it. */
	assert_int_equal(mp_shardmap_offer_shard(&m, 0, NULL, 11), 0);
	assert_int_equal(mp_shardmap_get_shard(&m, 0, NULL, NULL), 0);
	/* Absent at 13: deleted since. */
	assert_int_equal(mp_shardmap_offer_shard(&m, 0, NULL, 13), 1);
	assert_int_equal(mp_shardmap_get_shard(&m, 0, NULL, NULL), MP_ENOENT);
	assert_int_equal(mp_shardmap_offer_shard(&m, 0, NULL, 14), 0);
	assert_int_equal(mp_shardmap_offer_shard(&m, 2, &a, 20), MP_EINVAL);
	assert_int_equal(mp_shardmap_offer_shard(&m, 0, &a, 0), MP_EINVAL);
	/* set_shard is unconditional (a caller may force an older view). */
	assert_int_equal(mp_shardmap_set_shard(&m, 1, &b, 30), 0);
	assert_int_equal(mp_shardmap_set_shard(&m, 1, &a, 5), 0);
	assert_int_equal(mp_shardmap_get_shard(&m, 1, &got, &rev), 0);
	assert_int_equal(got.epoch, 1);
	assert_int_equal(rev, 5);
	mp_shardmap_free(&m);
}

static void test_map_many_nodes(void **state)
{
	struct mp_shardmap m;
	char id[16], addr[MP_ADDR_MAX + 1], want[32];

	(void)state;
	mp_shardmap_init(&m);
	for (int i = 0; i < 100; i++) {
		snprintf(id, sizeof(id), "n%d", i);
		snprintf(want, sizeof(want), "10.0.0.1:%d", 1000 + i);
		struct mp_node_rec n = node_rec(want, MP_NODE_ACTIVE);
		assert_int_equal(mp_shardmap_set_node(&m, id, &n), 0);
	}
	assert_int_equal(m.n_nodes, 100);
	for (int i = 0; i < 100; i += 2) {
		snprintf(id, sizeof(id), "n%d", i);
		mp_shardmap_del_node(&m, id);
	}
	assert_int_equal(m.n_nodes, 50);
	for (int i = 0; i < 100; i++) {
		snprintf(id, sizeof(id), "n%d", i);
		int ret = mp_shardmap_node_addr(&m, id, addr);
		if (i % 2 == 0) {
			assert_int_equal(ret, MP_ENOENT);
		} else {
			assert_int_equal(ret, 0);
			snprintf(want, sizeof(want), "10.0.0.1:%d", 1000 + i);
			assert_string_equal(addr, want);
		}
	}
	mp_shardmap_free(&m);
}

/* Writers and readers at once: readers only ever see whole records. */
struct race {
	struct mp_shardmap *m;
	int errors;
};

static void *race_writer(void *arg)
{
	struct race *r = arg;

	for (int i = 0; i < 20000; i++) {
		char addr[32];
		snprintf(addr, sizeof(addr), "127.0.0.1:%d", 1 + i % 2);
		struct mp_node_rec n = node_rec(addr, MP_NODE_ACTIVE);
		struct mp_shard_rec s = shard_rec((uint64_t)i + 1, i % 2 ? "a" : "b",
						  NULL);
		if (mp_shardmap_set_node(r->m, i % 2 ? "a" : "b", &n) != 0 ||
		    mp_shardmap_set_shard(r->m, 0, &s, i + 1) != 0)
			r->errors++;
		if (i % 3 == 0)
			mp_shardmap_del_node(r->m, i % 2 ? "b" : "a");
	}
	return NULL;
}

static void *race_reader(void *arg)
{
	struct race *r = arg;

	for (int i = 0; i < 20000; i++) {
		char id[MP_NODE_ID_MAX + 1], addr[MP_ADDR_MAX + 1];
		uint64_t epoch;
		struct mp_shard_rec s;

		if (mp_shardmap_leader(r->m, 0, id, addr, &epoch) == 0) {
			/* Node a always has port 2, b port 1. */
			if (strcmp(addr, strcmp(id, "a") == 0 ? "127.0.0.1:2"
							       : "127.0.0.1:1") != 0)
				r->errors++;
		}
		if (mp_shardmap_get_shard(r->m, 0, &s, NULL) == 0 &&
		    mp_shard_rec_check(&s, NULL) != 0)
			r->errors++;
	}
	return NULL;
}

static void test_map_threads(void **state)
{
	struct mp_shardmap m;
	struct mp_cluster_config c = { 1, 1, 1 };
	struct race w = { &m, 0 }, rd = { &m, 0 };
	pthread_t tw, tr;

	(void)state;
	mp_shardmap_init(&m);
	assert_int_equal(mp_shardmap_set_config(&m, &c), 0);
	assert_int_equal(pthread_create(&tw, NULL, race_writer, &w), 0);
	assert_int_equal(pthread_create(&tr, NULL, race_reader, &rd), 0);
	pthread_join(tw, NULL);
	pthread_join(tr, NULL);
	assert_int_equal(w.errors, 0);
	assert_int_equal(rd.errors, 0);
	mp_shardmap_free(&m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_table),
		cmocka_unit_test(test_invalid_table),
		cmocka_unit_test(test_too_long),
		cmocka_unit_test(test_prefixes),
		cmocka_unit_test(test_mutations),
		cmocka_unit_test(test_format_invalid),
		cmocka_unit_test(test_node_id_valid),
		cmocka_unit_test(test_shard_key),
		cmocka_unit_test(test_map_config),
		cmocka_unit_test(test_map_shards_nodes),
		cmocka_unit_test(test_map_offer),
		cmocka_unit_test(test_map_many_nodes),
		cmocka_unit_test(test_map_threads),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
