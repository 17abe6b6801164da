/*
 * fuzz_repl_apply: replicated records from a peer into a real store.
 *
 * The input is unpacked as a Replication ShardRecords message (what a
 * leader sends a follower) and handed to store_apply, which must refuse
 * anything malformed, out of its shard, fenced or with a gap, and apply
 * the rest, without crashing or leaking. A few valid records are applied
 * once at start so duplicates and divergence checks are reached.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "records.pb-c.h"
#include "replication.pb-c.h"
#include "store.h"

static struct store *st;

static void done(int err, const char *msg, uint64_t epoch, uint64_t lsn, void *arg)
{
	(void)err;
	(void)msg;
	(void)epoch;
	(void)lsn;
	(void)arg;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static char dir[] = "/tmp/merpati-fuzz-repl-XXXXXX";
	char *err = NULL;
	(void)argc;
	(void)argv;
	if (mkdtemp(dir) == NULL)
		abort();
	struct store_opts o = { .data_dir = dir, .node_id = "fuzz", .shards = 2,
				.max_message_size = 1 << 16, .log_retain = 100,
				.max_pending = 100 };
	if (store_open(&o, &st, &err) < 0) {
		fprintf(stderr, "store_open: %s\n", err ? err : "?");
		abort();
	}
	store_set_cluster(st, true);
	store_set_role(st, 0, STORE_ROLE_FOLLOWER, 1, "leader");
	store_set_role(st, 1, STORE_ROLE_FOLLOWER, 1, "leader");
	/* three valid records for shard 0 */
	for (uint64_t lsn = 1; lsn <= 3; lsn++) {
		Merpati__Rec__Op op = MERPATI__REC__OP__INIT;
		Merpati__Rec__Op *ops[1] = { &op };
		Merpati__Rec__LogRecord lr = MERPATI__REC__LOG_RECORD__INIT;
		char key[32];
		snprintf(key, sizeof(key), "s0000/u/f%llu@f.test", (unsigned long long)lsn);
		op.key.data = (uint8_t *)key;
		op.key.len = strlen(key);
		op.value.data = (uint8_t *)"v";
		op.value.len = 1;
		lr.shard = 0;
		lr.epoch = 1;
		lr.lsn = lsn;
		lr.ops = ops;
		lr.n_ops = 1;
		uint8_t buf[256];
		size_t n = merpati__rec__log_record__pack(&lr, buf);
		ProtobufCBinaryData b = { n, buf };
		if (store_apply(st, 0, 1, &b, 1, done, NULL) < 0)
			abort();
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	Merpati__Repl__V1__ShardRecords *sr =
		merpati__repl__v1__shard_records__unpack(NULL, size, data);
	if (sr == NULL)
		return 0;
	/* store_apply is synchronous: done has run when it returns */
	if (sr->n_records > 0 && sr->n_records <= 64)
		(void)store_apply(st, sr->shard % 4, sr->epoch, sr->records, sr->n_records,
				  done, NULL);
	merpati__repl__v1__shard_records__free_unpacked(sr, NULL);
	return 0;
}
