/*
 * mp-bench-append: how close does Append through the MailStore API come to
 * the disk's own group-committed write rate?
 *
 * In one run, for 1, 8 and 64 concurrent callers (threads making blocking
 * calls): (a) Append of --size byte messages to a running node, each caller
 * to its own user; (b) the same number of threads writing values of the same
 * size straight into a scratch RocksDB at --data-dir with sync=1, which
 * RocksDB group-commits. It prints a table, the ratio API/direct per
 * concurrency and "result ..." lines for scripts.
 *
 * It must never open the node's own data directory for writing (RocksDB's
 * LOCK refuses while the node runs) and never delete a directory it did not
 * create or find empty. This is the one tool that includes <rocksdb/c.h>:
 * the direct baseline is the point of the measurement.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <rocksdb/c.h>

#include "mailstore.pb-c.h"
#include "mp_buf.h"
#include "mp_error.h"
#include "mp_password.h"
#include "mp_rpc.h"

#define BA_DOMAIN "bench.test"
#define BA_MAX_CALLERS 256
#define BA_MAX_LEVELS 8
#define BA_CALL_TIMEOUT_MS 10000
#define BA_TOKEN_LEN 16          /* hex digits rewritten in each body */
/* Pause before each measurement so the previous one's memtable flushes and
 * compactions (the node's or the scratch DB's) mostly run on their own time. */
#define BA_SETTLE_S 2

/* ----------------------------------------------------------- helpers */

static int64_t ba_now_ns(void)
{
	struct timespec ts;

	(void)clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int ba_call(struct mp_rpc_channel *ch, const char *method,
		   const ProtobufCMessage *req,
		   const ProtobufCMessageDescriptor *resp_desc,
		   ProtobufCMessage **resp_r, char **error_r)
{
	char path[128];

	*resp_r = NULL;
	*error_r = NULL;
	if (mp_rpc_method_path(&merpati__v1__mail_store__descriptor, method,
			       path, sizeof(path)) == NULL)
		return MP_EINVAL;
	return mp_rpc_call(ch, path, req, resp_desc, BA_CALL_TIMEOUT_MS,
			   resp_r, error_r);
}

static void ba_free_msg(ProtobufCMessage **m)
{
	if (*m != NULL)
		protobuf_c_message_free_unpacked(*m, NULL);
	*m = NULL;
}

/* A valid RFC 5322 message of exactly size bytes whose X-Token value (16
 * hex digits at *token_off_r) the caller rewrites before every write: a
 * unique body each time, so the store's per-shard body deduplication never
 * turns a write into a reference-count bump. The text is pseudo-random
 * base64 alphabet (like an attachment), so compression flatters neither
 * side. */
static int ba_make_body(struct mp_buf *b, size_t size, const char *user,
			uint64_t seed, size_t *token_off_r)
{
	static const char alphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	const char *tok;
	uint64_t x = seed | 1;
	int ret;

	mp_buf_reset(b);
	ret = mp_buf_printf(b,
			    "From: Bench <bench@" BA_DOMAIN ">\r\n"
			    "To: <%s>\r\n"
			    "Subject: bench\r\n"
			    "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
			    "Message-ID: <bench-%016" PRIx64 "@" BA_DOMAIN ">\r\n"
			    "X-Token: 0000000000000000\r\n"
			    "MIME-Version: 1.0\r\n"
			    "Content-Type: text/plain; charset=us-ascii\r\n"
			    "\r\n",
			    user, seed);
	if (ret < 0)
		return ret;
	if (b->len + 2 > size)
		return MP_EINVAL;
	/* Full 78-byte lines while at least one more fits after them, then
	 * one last shorter line ending in CRLF: exactly size bytes. */
	while (b->len < size) {
		size_t room = size - b->len;
		size_t n = room >= 2 * 78 ? 78 : room >= 80 ? room - 78 : room;
		char line[78];

		for (size_t i = 0; i + 2 < n; i++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			line[i] = alphabet[x & 63];
		}
		line[n - 2] = '\r';
		line[n - 1] = '\n';
		if ((ret = mp_buf_append(b, line, n)) < 0)
			return ret;
	}
	tok = strstr(b->data, "X-Token: ");
	if (tok == NULL)
		return MP_EINVAL;
	*token_off_r = (size_t)(tok - b->data) + strlen("X-Token: ");
	return 0;
}

static void ba_set_token(char *p, uint64_t v)
{
	static const char hex[] = "0123456789abcdef";

	for (int i = BA_TOKEN_LEN - 1; i >= 0; i--) {
		p[i] = hex[v & 15];
		v >>= 4;
	}
}

static int ba_cmp_i64(const void *x, const void *y)
{
	int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;

	return a < b ? -1 : a > b;
}

/* ------------------------------------------------------- a measurement */

enum ba_mode { BA_API, BA_DIRECT };

struct ba_run {
	enum ba_mode mode;
	int callers;
	size_t size;
	int64_t start_ns, deadline_ns;
	uint64_t nonce;              /* keeps direct keys unique across runs */
	struct mp_rpc_channel *ch;   /* borrowed; API mode */
	rocksdb_t *db;               /* borrowed; direct mode */
	rocksdb_writeoptions_t *wo;  /* borrowed; direct mode */
	pthread_barrier_t go;
	atomic_int errors_shown;
};

struct ba_caller {
	struct ba_run *run;          /* borrowed */
	int idx;
	pthread_t tid;
	int64_t *lat;                /* owned: latency of each op, ns */
	size_t n_lat, cap_lat;
	uint64_t errors;
	int64_t end_ns;              /* when its last op finished */
	int failed;                  /* could not even start */
};

struct ba_result {
	double ops_per_s, mb_per_s, p50_ms, p99_ms;
	uint64_t ops, errors;
};

static int ba_record(struct ba_caller *c, int64_t ns)
{
	if (c->n_lat == c->cap_lat) {
		size_t ncap = c->cap_lat == 0 ? 4096 : c->cap_lat * 2;
		int64_t *n = realloc(c->lat, ncap * sizeof(*n));
		if (n == NULL)
			return MP_ENOMEM;
		c->lat = n;
		c->cap_lat = ncap;
	}
	c->lat[c->n_lat++] = ns;
	return 0;
}

static void ba_error(struct ba_caller *c, const char *what, const char *msg)
{
	c->errors++;
	if (atomic_fetch_add(&c->run->errors_shown, 1) < 5)
		fprintf(stderr, "bench: caller %d: %s: %s\n", c->idx, what,
			msg == NULL ? "" : msg);
}

static void *ba_caller_thread(void *arg)
{
	struct ba_caller *c = arg;
	struct ba_run *run = c->run;
	struct mp_buf body;
	char user[64], key[96];
	size_t token_off = 0;
	uint64_t seq = 0;
	int ret;

	snprintf(user, sizeof(user), "bench%d@" BA_DOMAIN, c->idx);
	mp_buf_init(&body, run->size + 1024);
	ret = ba_make_body(&body, run->size, user,
			   run->nonce ^ ((uint64_t)c->idx << 32), &token_off);
	if (ret < 0)
		c->failed = 1;
	/* Every caller waits at the barrier even when it failed, or the others
	 * would wait forever. */
	(void)pthread_barrier_wait(&run->go);
	while (!c->failed && ba_now_ns() < run->deadline_ns) {
		int64_t t0;
		uint64_t token = run->nonce + ((uint64_t)c->idx << 40) + seq;
		int n;

		ba_set_token(body.data + token_off, token);
		t0 = ba_now_ns();
		if (run->mode == BA_API) {
			Merpati__V1__AppendRequest req =
				MERPATI__V1__APPEND_REQUEST__INIT;
			ProtobufCMessage *resp;
			char *error = NULL;

			req.user = user;
			req.mailbox = (char *)"INBOX";
			req.body.data = (uint8_t *)body.data;
			req.body.len = body.len;
			ret = ba_call(run->ch, "Append", &req.base,
				      &merpati__v1__append_reply__descriptor,
				      &resp, &error);
			ba_free_msg(&resp);
			if (ret < 0) {
				ba_error(c, mp_strerror(ret), error);
				free(error);
				seq++;
				continue;
			}
		} else {
			char *err = NULL;

			n = snprintf(key, sizeof(key),
				     "bench/%016" PRIx64 "/%d/%03d/%016" PRIx64,
				     run->nonce, run->callers, c->idx, seq);
			if (n < 0 || (size_t)n >= sizeof(key)) {
				c->failed = 1;
				break;
			}
			rocksdb_put(run->db, run->wo, key, (size_t)n, body.data,
				    body.len, &err);
			if (err != NULL) {
				ba_error(c, "rocksdb_put", err);
				rocksdb_free(err);
				seq++;
				continue;
			}
		}
		seq++;
		if (ba_record(c, ba_now_ns() - t0) < 0) {
			c->failed = 1;
			break;
		}
	}
	c->end_ns = ba_now_ns();
	mp_buf_free(&body);
	return NULL;
}

static int ba_measure(struct ba_run *run, int seconds, struct ba_result *res)
{
	struct ba_caller *callers;
	int64_t *all = NULL, end = 0;
	size_t total = 0;
	int started = 0, ret = 0;

	memset(res, 0, sizeof(*res));
	callers = calloc((size_t)run->callers, sizeof(*callers));
	if (callers == NULL)
		return MP_ENOMEM;
	atomic_init(&run->errors_shown, 0);
	/* The callers plus this thread, which starts the clock once all of
	 * them are ready. */
	if (pthread_barrier_init(&run->go, NULL, (unsigned)run->callers + 1) != 0) {
		free(callers);
		return MP_ENOMEM;
	}
	run->deadline_ns = INT64_MAX;
	for (int i = 0; i < run->callers; i++) {
		callers[i].run = run;
		callers[i].idx = i;
		if (pthread_create(&callers[i].tid, NULL, ba_caller_thread,
				   &callers[i]) != 0)
			break;
		started++;
	}
	if (started < run->callers) {
		/* Cannot reach the barrier count: a thread could not be made.
		 * The started ones are stuck at the barrier; there is no clean
		 * way out, so give up the whole process. */
		fprintf(stderr, "bench: pthread_create failed\n");
		exit(1);
	}
	run->start_ns = ba_now_ns();
	run->deadline_ns = run->start_ns + (int64_t)seconds * 1000000000;
	(void)pthread_barrier_wait(&run->go);
	for (int i = 0; i < started; i++)
		(void)pthread_join(callers[i].tid, NULL);
	(void)pthread_barrier_destroy(&run->go);

	for (int i = 0; i < started; i++) {
		total += callers[i].n_lat;
		res->errors += callers[i].errors;
		if (callers[i].end_ns > end)
			end = callers[i].end_ns;
		if (callers[i].failed)
			ret = MP_ENOMEM;
	}
	if (total > 0 && (all = malloc(total * sizeof(*all))) == NULL)
		ret = MP_ENOMEM;
	if (all != NULL) {
		size_t k = 0;
		for (int i = 0; i < started; i++) {
			memcpy(all + k, callers[i].lat,
			       callers[i].n_lat * sizeof(*all));
			k += callers[i].n_lat;
		}
		qsort(all, total, sizeof(*all), ba_cmp_i64);
		res->p50_ms = (double)all[(total - 1) / 2] / 1e6;
		res->p99_ms = (double)all[(total * 99 + 99) / 100 - 1] / 1e6;
	}
	res->ops = total;
	if (end > run->start_ns) {
		double secs = (double)(end - run->start_ns) / 1e9;
		res->ops_per_s = (double)total / secs;
		res->mb_per_s = (double)total * (double)run->size / secs / 1e6;
	}
	free(all);
	for (int i = 0; i < started; i++)
		free(callers[i].lat);
	free(callers);
	return ret;
}

/* --------------------------------------------------------- API setup */

static int ba_ignore_exists(const char *what, int ret, char *error)
{
	if (ret < 0 && ret != MP_EEXIST) {
		fprintf(stderr, "bench: %s: %s: %s\n", what, mp_strerror(ret),
			error == NULL ? "" : error);
		free(error);
		return ret;
	}
	free(error);
	return 0;
}

/* Domain, one account per caller (a real yescrypt hash of a password nobody
 * uses, so no node can refuse its shape) and its INBOX, all idempotent. */
static int ba_setup_api(struct mp_rpc_channel *ch, int max_callers)
{
	Merpati__V1__DomainRequest dreq = MERPATI__V1__DOMAIN_REQUEST__INIT;
	ProtobufCMessage *resp;
	char *error = NULL, *hash = NULL;
	static const char pw[] = "merpati-bench-not-a-login";
	int ret;

	dreq.name = (char *)BA_DOMAIN;
	ret = ba_call(ch, "CreateDomain", &dreq.base,
		      &merpati__v1__domain_reply__descriptor, &resp, &error);
	ba_free_msg(&resp);
	if ((ret = ba_ignore_exists("CreateDomain " BA_DOMAIN, ret, error)) < 0)
		return ret;
	if ((ret = mp_password_hash(pw, sizeof(pw) - 1, &hash)) < 0) {
		fprintf(stderr, "bench: cannot hash a password: %s\n",
			mp_strerror(ret));
		return ret;
	}
	for (int i = 0; i < max_callers && ret == 0; i++) {
		Merpati__V1__CreateAccountRequest areq =
			MERPATI__V1__CREATE_ACCOUNT_REQUEST__INIT;
		Merpati__V1__CreateMailboxRequest mreq =
			MERPATI__V1__CREATE_MAILBOX_REQUEST__INIT;
		char user[64], what[96];

		snprintf(user, sizeof(user), "bench%d@" BA_DOMAIN, i);
		areq.user = user;
		areq.password_hash = hash;
		ret = ba_call(ch, "CreateAccount", &areq.base,
			      &merpati__v1__account_reply__descriptor, &resp,
			      &error);
		ba_free_msg(&resp);
		snprintf(what, sizeof(what), "CreateAccount %s", user);
		if ((ret = ba_ignore_exists(what, ret, error)) < 0)
			break;
		/* Accounts are expected to come with an INBOX; creating it
		 * anyway costs nothing and makes the bench independent of
		 * that. */
		mreq.user = user;
		mreq.name = (char *)"INBOX";
		ret = ba_call(ch, "CreateMailbox", &mreq.base,
			      &merpati__v1__mailbox_reply__descriptor, &resp,
			      &error);
		ba_free_msg(&resp);
		snprintf(what, sizeof(what), "CreateMailbox %s INBOX", user);
		ret = ba_ignore_exists(what, ret, error);
	}
	mp_memwipe(hash, strlen(hash));
	free(hash);
	return ret;
}

/* Group commits and mutations so far, to show how many appends one WAL sync
 * carried. 0, or an error when the node does not say (not fatal). */
static int ba_node_info(struct mp_rpc_channel *ch, uint64_t *commits_r,
			uint64_t *mutations_r)
{
	Merpati__V1__Empty req = MERPATI__V1__EMPTY__INIT;
	ProtobufCMessage *resp;
	char *error = NULL;
	int ret;

	ret = ba_call(ch, "NodeInfo", &req.base,
		      &merpati__v1__node_info_reply__descriptor, &resp, &error);
	free(error);
	if (ret < 0)
		return ret;
	*commits_r = ((Merpati__V1__NodeInfoReply *)resp)->group_commits;
	*mutations_r = ((Merpati__V1__NodeInfoReply *)resp)->mutations;
	ba_free_msg(&resp);
	return 0;
}

/* ------------------------------------------------------ direct setup */

/* 1 when path does not exist or is an empty directory: then the bench owns
 * it and removes the database afterwards. */
static int ba_dir_is_ours(const char *path)
{
	struct stat st;
	DIR *d;
	struct dirent *de;
	int empty = 1;

	if (stat(path, &st) < 0)
		return errno == ENOENT;
	if (!S_ISDIR(st.st_mode) || (d = opendir(path)) == NULL)
		return 0;
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
			empty = 0;
			break;
		}
	}
	(void)closedir(d);
	return empty;
}

/* ------------------------------------------------------------- main */

static void ba_usage(void)
{
	fprintf(stderr,
		"usage: mp-bench-append --node ADDR --data-dir DIR [--seconds S]"
		" [--size BYTES] [--callers 1,8,64]\n"
		"  DIR: a scratch directory for the direct RocksDB baseline (not"
		" the node's)\n");
}

static int ba_parse_levels(const char *s, int *levels, int *n_r)
{
	char *dup = strdup(s), *save = NULL, *tok;
	int n = 0, ret = 0;

	if (dup == NULL)
		return MP_ENOMEM;
	for (tok = strtok_r(dup, ",", &save); tok != NULL;
	     tok = strtok_r(NULL, ",", &save)) {
		char *end;
		long v = strtol(tok, &end, 10);
		if (*end != '\0' || v < 1 || v > BA_MAX_CALLERS ||
		    n == BA_MAX_LEVELS) {
			ret = MP_EINVAL;
			break;
		}
		levels[n++] = (int)v;
	}
	free(dup);
	if (ret == 0 && n == 0)
		ret = MP_EINVAL;
	*n_r = n;
	return ret;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "node", required_argument, NULL, 'n' },
		{ "data-dir", required_argument, NULL, 'd' },
		{ "seconds", required_argument, NULL, 's' },
		{ "size", required_argument, NULL, 'z' },
		{ "callers", required_argument, NULL, 'c' },
		{ NULL, 0, NULL, 0 },
	};
	const char *node = NULL, *dir = NULL;
	int levels[BA_MAX_LEVELS] = { 1, 8, 64 }, n_levels = 3, max_callers = 0;
	long seconds = 10, size = 10240;
	struct ba_result api[BA_MAX_LEVELS], direct[BA_MAX_LEVELS];
	struct mp_rpc_channel *ch = NULL;
	rocksdb_options_t *dbo = NULL;
	rocksdb_writeoptions_t *wo = NULL;
	rocksdb_t *db = NULL;
	uint64_t nonce, commits0 = 0, mutations0 = 0, commits1, mutations1;
	struct utsname un;
	char *err = NULL, when[32];
	time_t now = time(NULL);
	struct tm tm;
	double load[3];
	int c, ret, ours, made_dir = 0, failed = 0, have_info;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		char *end;

		switch (c) {
		case 'n': node = optarg; break;
		case 'd': dir = optarg; break;
		case 's':
			seconds = strtol(optarg, &end, 10);
			if (*end != '\0' || seconds < 1 || seconds > 3600) {
				fprintf(stderr, "bench: --seconds wants 1..3600\n");
				return 2;
			}
			break;
		case 'z':
			size = strtol(optarg, &end, 10);
			if (*end != '\0' || size < 1024 || size > 16 * 1024 * 1024) {
				fprintf(stderr, "bench: --size wants 1024..16777216\n");
				return 2;
			}
			break;
		case 'c':
			if (ba_parse_levels(optarg, levels, &n_levels) < 0) {
				fprintf(stderr, "bench: --callers wants a list of"
					" 1..%d, at most %d values\n",
					BA_MAX_CALLERS, BA_MAX_LEVELS);
				return 2;
			}
			break;
		default:
			ba_usage();
			return 2;
		}
	}
	if (optind != argc || node == NULL || dir == NULL) {
		ba_usage();
		return 2;
	}
	for (int i = 0; i < n_levels; i++)
		if (levels[i] > max_callers)
			max_callers = levels[i];
	if (getrandom(&nonce, sizeof(nonce), 0) != (ssize_t)sizeof(nonce)) {
		fprintf(stderr, "bench: getrandom failed\n");
		return 1;
	}

	/* The scratch database first: refusing a bad --data-dir costs nothing
	 * on the node. */
	ours = ba_dir_is_ours(dir);
	if (mkdir(dir, 0755) == 0)
		made_dir = 1;
	else if (errno != EEXIST) {
		fprintf(stderr, "bench: mkdir %s: %s\n", dir, strerror(errno));
		return 1;
	}
	if (!ours) {
		char current[4096];
		struct stat st;

		/* A non-empty directory is used only if it already holds a
		 * RocksDB (an earlier bench's): never scatter files elsewhere. */
		snprintf(current, sizeof(current), "%s/CURRENT", dir);
		if (stat(current, &st) < 0) {
			fprintf(stderr, "bench: %s is neither empty nor a RocksDB"
				" directory\n", dir);
			return 1;
		}
	}
	dbo = rocksdb_options_create();
	rocksdb_options_set_create_if_missing(dbo, 1);
	wo = rocksdb_writeoptions_create();
	rocksdb_writeoptions_set_sync(wo, 1);
	db = rocksdb_open(dbo, dir, &err);
	if (err != NULL) {
		fprintf(stderr, "bench: cannot open RocksDB at %s: %s\n", dir, err);
		rocksdb_free(err);
		rocksdb_writeoptions_destroy(wo);
		rocksdb_options_destroy(dbo);
		if (made_dir)
			(void)rmdir(dir);
		return 1;
	}

	mp_rpc_init();
	if ((ret = mp_rpc_channel_open(node, MP_RPC_DEFAULT_MAX_MSG, &ch)) < 0) {
		fprintf(stderr, "bench: cannot open a channel to %s: %s\n", node,
			mp_strerror(ret));
		failed = 1;
		goto out;
	}
	if (ba_setup_api(ch, max_callers) < 0) {
		failed = 1;
		goto out;
	}

	if (uname(&un) < 0)
		snprintf(un.machine, sizeof(un.machine), "unknown");
	if (gmtime_r(&now, &tm) == NULL ||
	    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(when, sizeof(when), "unknown");
	/* The load average says whether something else shared the machine:
	 * the figures mean little if it did. */
	if (getloadavg(load, 3) != 3)
		load[0] = load[1] = load[2] = -1;
	printf("# mp-bench-append date=%s machine=%s nproc=%ld size=%ld"
	       " seconds=%ld node=%s loadavg=%.2f,%.2f,%.2f\n", when,
	       un.machine, sysconf(_SC_NPROCESSORS_ONLN), size, seconds, node,
	       load[0], load[1], load[2]);
	(void)fflush(stdout);

	/* API then direct at each concurrency, so both see the machine in
	 * about the same state (page cache, the node's compactions). */
	for (int i = 0; i < n_levels; i++) {
		struct ba_run run;

		memset(&run, 0, sizeof(run));
		run.callers = levels[i];
		run.size = (size_t)size;
		run.nonce = nonce + ((uint64_t)i << 56);
		run.ch = ch;
		run.db = db;
		run.wo = wo;

		(void)sleep(BA_SETTLE_S);
		have_info = ba_node_info(ch, &commits0, &mutations0) == 0;
		run.mode = BA_API;
		if (ba_measure(&run, (int)seconds, &api[i]) < 0)
			failed = 1;
		if (have_info && ba_node_info(ch, &commits1, &mutations1) == 0 &&
		    commits1 > commits0)
			printf("# api callers=%d group_commits=%" PRIu64
			       " mutations=%" PRIu64 " per_commit=%.1f\n",
			       levels[i], commits1 - commits0,
			       mutations1 - mutations0,
			       (double)(mutations1 - mutations0) /
			       (double)(commits1 - commits0));
		printf("result mode=api callers=%d ops_per_s=%.0f mb_per_s=%.1f"
		       " p50_ms=%.3f p99_ms=%.3f ops=%" PRIu64 " errors=%" PRIu64
		       "\n", levels[i], api[i].ops_per_s, api[i].mb_per_s,
		       api[i].p50_ms, api[i].p99_ms, api[i].ops, api[i].errors);
		(void)fflush(stdout);

		(void)sleep(BA_SETTLE_S);
		run.mode = BA_DIRECT;
		if (ba_measure(&run, (int)seconds, &direct[i]) < 0)
			failed = 1;
		printf("result mode=direct callers=%d ops_per_s=%.0f mb_per_s=%.1f"
		       " p50_ms=%.3f p99_ms=%.3f ops=%" PRIu64 " errors=%" PRIu64
		       "\n", levels[i], direct[i].ops_per_s, direct[i].mb_per_s,
		       direct[i].p50_ms, direct[i].p99_ms, direct[i].ops,
		       direct[i].errors);
		printf("result mode=ratio callers=%d api_over_direct=%.3f\n",
		       levels[i], direct[i].ops_per_s > 0 ?
		       api[i].ops_per_s / direct[i].ops_per_s : 0.0);
		(void)fflush(stdout);
		if (api[i].errors > 0 || direct[i].errors > 0 || api[i].ops == 0 ||
		    direct[i].ops == 0)
			failed = 1;
	}

	printf("\n%-8s %-7s %10s %8s %9s %9s %7s\n", "callers", "mode", "ops/s",
	       "MB/s", "p50 ms", "p99 ms", "errors");
	for (int i = 0; i < n_levels; i++) {
		printf("%-8d %-7s %10.0f %8.1f %9.3f %9.3f %7" PRIu64 "\n",
		       levels[i], "api", api[i].ops_per_s, api[i].mb_per_s,
		       api[i].p50_ms, api[i].p99_ms, api[i].errors);
		printf("%-8d %-7s %10.0f %8.1f %9.3f %9.3f %7" PRIu64 "\n",
		       levels[i], "direct", direct[i].ops_per_s,
		       direct[i].mb_per_s, direct[i].p50_ms, direct[i].p99_ms,
		       direct[i].errors);
	}
	printf("\n%-8s %s\n", "callers", "api/direct");
	for (int i = 0; i < n_levels; i++)
		printf("%-8d %.2f\n", levels[i], direct[i].ops_per_s > 0 ?
		       api[i].ops_per_s / direct[i].ops_per_s : 0.0);
out:
	mp_rpc_channel_close(&ch);
	mp_rpc_shutdown();
	rocksdb_close(db);
	if (ours) {
		rocksdb_destroy_db(dbo, dir, &err);
		if (err != NULL) {
			fprintf(stderr, "bench: cannot remove %s: %s\n", dir, err);
			rocksdb_free(err);
		}
		if (made_dir)
			(void)rmdir(dir);
	}
	rocksdb_writeoptions_destroy(wo);
	rocksdb_options_destroy(dbo);
	return failed ? 1 : 0;
}
