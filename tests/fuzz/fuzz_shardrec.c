/*
 * fuzz_shardrec: arbitrary bytes into the three etcd record parsers of
 * mp_shardmap (config, nodes/{id}, shards/{n}) and the shard key parser.
 *
 * For every input and every kind: a rejected record comes with a message
 * and leaves the output untouched; an accepted one passes the record's own
 * checks, formats within MP_SHARDREC_MAX_LEN, parses back to the same
 * struct, and formats back to the same text. Any disagreement aborts,
 * which libFuzzer reports as a crash.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "mp_error.h"
#include "mp_shardmap.h"

union rec {
	struct mp_cluster_config c;
	struct mp_node_rec n;
	struct mp_shard_rec s;
};

enum kind { K_CONFIG, K_NODE, K_SHARD, K_COUNT };

static int parse(enum kind k, const char *s, size_t len, union rec *r,
		 const char **error_r)
{
	switch (k) {
	case K_CONFIG:
		return mp_config_rec_parse(s, len, &r->c, error_r);
	case K_NODE:
		return mp_node_rec_parse(s, len, &r->n, error_r);
	default:
		return mp_shard_rec_parse(s, len, &r->s, error_r);
	}
}

static int format(enum kind k, const union rec *r, char *out, size_t outlen)
{
	switch (k) {
	case K_CONFIG:
		return mp_config_rec_format(&r->c, out, outlen);
	case K_NODE:
		return mp_node_rec_format(&r->n, out, outlen);
	default:
		return mp_shard_rec_format(&r->s, out, outlen);
	}
}

static size_t size_of(enum kind k)
{
	return k == K_CONFIG ? sizeof(struct mp_cluster_config)
	       : k == K_NODE ? sizeof(struct mp_node_rec)
			     : sizeof(struct mp_shard_rec);
}

static void check_kind(enum kind k, const char *s, size_t len)
{
	union rec r, back, canary;
	char text[MP_SHARDREC_MAX_LEN + 1], text2[MP_SHARDREC_MAX_LEN + 1];
	const char *err = NULL;

	memset(&r, 0x5a, sizeof(r));
	canary = r;
	int ret = parse(k, s, len, &r, &err);
	if (ret != 0) {
		CHECK(ret == MP_EINVAL);
		CHECK(err != NULL);
		CHECK(memcmp(&r, &canary, sizeof(r)) == 0);
		return;
	}
	CHECK(len <= MP_SHARDREC_MAX_LEN);
	if (k == K_SHARD)
		CHECK(mp_shard_rec_check(&r.s, NULL) == 0);

	int n = format(k, &r, text, sizeof(text));
	CHECK(n > 0 && n <= MP_SHARDREC_MAX_LEN);
	CHECK((size_t)n == strlen(text));
	/* The same number of bytes: only the order of words may differ. */
	CHECK((size_t)n == len);

	memset(&back, 0, sizeof(back));
	CHECK(parse(k, text, (size_t)n, &back, &err) == 0);
	CHECK(memcmp(&r, &back, size_of(k)) == 0);
	CHECK(format(k, &back, text2, sizeof(text2)) == n);
	CHECK(memcmp(text, text2, (size_t)n) == 0);
	/* One byte short of room is MP_ENOSPC, never a cut record. */
	CHECK(format(k, &r, text2, (size_t)n) == MP_ENOSPC);

	if (k == K_SHARD) {
		for (size_t i = 0; i < r.s.n_replicas; i++)
			CHECK(mp_shard_rec_has_replica(&r.s, r.s.replicas[i]) == 1);
		for (size_t i = 0; i < r.s.n_isr; i++)
			CHECK(mp_shard_rec_in_isr(&r.s, r.s.isr[i]) == 1);
		CHECK(mp_shard_rec_in_isr(&r.s, r.s.leader) == 1);
	}
}

/* The input as an etcd key: accepted only as "shards/" + a canonical
 * decimal below the count, and then it formats back to itself. */
static void check_key(const char *s, size_t len)
{
	char key[64], back[64];
	uint32_t shard = 0;

	if (len >= sizeof(key))
		return;
	memcpy(key, s, len);
	key[len] = '\0';
	static const uint32_t counts[] = { 1, 64, 65536 };
	for (size_t i = 0; i < 3; i++) {
		if (mp_shard_key_parse(key, counts[i], &shard) != 0)
			continue;
		CHECK(shard < counts[i]);
		snprintf(back, sizeof(back), "shards/%u", shard);
		CHECK(strcmp(back, key) == 0);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* An exact-size copy so ASan sees any read past the end. */
	char *s = malloc(size > 0 ? size : 1);

	CHECK(s != NULL);
	memcpy(s, data, size);
	for (int k = 0; k < K_COUNT; k++)
		check_kind((enum kind)k, s, size);
	check_key(s, size);
	free(s);
	return 0;
}
