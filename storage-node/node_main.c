/*
 * merpati-node: a storage node. Opens the store, serves the MailStore API
 * over gRPC, stops cleanly on SIGTERM/SIGINT (stop serving, let the store
 * finish what it acknowledged, close RocksDB).
 *
 * Never: exit on a signal without closing the store; accept an unknown or
 * unparsable setting.
 */
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mailstore.pb-c.h"
#include "mp_config.h"
#include "mp_error.h"
#include "mp_log.h"
#include "mp_rpc.h"
#include "node_cluster.h"
#include "service.h"
#include "store.h"

struct node_conf {
	char *listen;
	char *data_dir;
	char *node_id;
	char *log_level;
	uint64_t shards;
	uint64_t threads;
	uint64_t max_message_size;
	uint64_t log_retain;
	uint64_t max_pending;
	uint64_t block_cache;
	char *etcd;
	char *cluster;
	char *advertise;
	uint64_t rf;
	uint64_t min_isr;
	uint64_t lease_ttl;
	uint64_t ack_timeout;
};

#define O(f) offsetof(struct node_conf, f)
static const struct mp_config_opt opts[] = {
	{ "listen", MP_CONF_STRING, O(listen), "127.0.0.1:7701",
	  "address:port for the MailStore API (port 0: any free port)", 0, 0 },
	{ "data_dir", MP_CONF_STRING, O(data_dir), NULL,
	  "directory of the node's RocksDB (required)", 0, 0 },
	{ "node_id", MP_CONF_STRING, O(node_id), "node1", "this node's name", 0, 0 },
	{ "log_level", MP_CONF_STRING, O(log_level), "info", "debug, info, warn or error", 0, 0 },
	{ "shards", MP_CONF_UINT, O(shards), "64",
	  "shard count; fixed when the data dir is created", 1, 65536 },
	{ "threads", MP_CONF_UINT, O(threads), "8",
	  "gRPC completion-queue threads (a follower applies replicated writes on them)", 1, 64 },
	{ "max_message_size", MP_CONF_SIZE, O(max_message_size), "50M",
	  "largest message body accepted", 1024, 1ull << 30 },
	{ "log_retain", MP_CONF_UINT, O(log_retain), "100000",
	  "replication log records kept per shard below the lsn every in-sync replica has "
	  "(a replica out of sync catches up from the log within this margin, else by "
	  "snapshot; the log never drops what an in-sync replica lacks; 0: no margin)", 0, 0 },
	{ "max_pending", MP_CONF_UINT, O(max_pending), "100000",
	  "queued writes before the node answers UNAVAILABLE", 1, 10000000 },
	{ "block_cache", MP_CONF_SIZE, O(block_cache), "64M", "RocksDB block cache", 0, 0 },
	{ "etcd", MP_CONF_STRING, O(etcd), NULL,
	  "etcd endpoints host:port[,host:port...]; unset: a single node holding every shard", 0, 0 },
	{ "cluster", MP_CONF_STRING, O(cluster), "default",
	  "cluster name: etcd keys live under /merpati/NAME/", 0, 0 },
	{ "advertise", MP_CONF_STRING, O(advertise), NULL,
	  "address other nodes and clients use for this node (default: listen address)", 0, 0 },
	{ "rf", MP_CONF_UINT, O(rf), "3", "replicas per shard (when creating the cluster)", 1, 7 },
	{ "min_isr", MP_CONF_UINT, O(min_isr), "2",
	  "in-sync replicas a write needs (when creating the cluster)", 1, 7 },
	{ "lease_ttl", MP_CONF_DURATION, O(lease_ttl), "3s",
	  "etcd lease of the node's record: how soon a dead node is noticed", 1000, 600000 },
	{ "ack_timeout", MP_CONF_DURATION, O(ack_timeout), "2s",
	  "how long a leader waits for a follower before dropping it from the ISR", 100, 60000 },
};
#define NOPTS (sizeof(opts) / sizeof(*opts))

int main(int argc, char **argv)
{
	struct node_conf conf;
	char *error = NULL;
	int *rest = NULL, nrest = 0;
	int ret;

	memset(&conf, 0, sizeof(conf));
	if (mp_config_defaults(opts, NOPTS, &conf, &error) < 0) {
		fprintf(stderr, "merpati-node: %s\n", error ? error : "bad defaults");
		return 2;
	}
	ret = mp_config_parse_args(opts, NOPTS, &conf, argc, argv, &rest, &nrest, &error);
	if (ret == 1) {
		mp_config_free(opts, NOPTS, &conf);
		return 0;
	}
	if (ret < 0) {
		fprintf(stderr, "merpati-node: %s\n", error ? error : "bad arguments");
		free(error);
		mp_config_free(opts, NOPTS, &conf);
		return 2;
	}
	if (nrest > 0) {
		fprintf(stderr, "merpati-node: unexpected argument '%s'\n", argv[rest[0]]);
		free(rest);
		mp_config_free(opts, NOPTS, &conf);
		return 2;
	}
	free(rest);
	if (conf.data_dir == NULL || *conf.data_dir == '\0') {
		fprintf(stderr, "merpati-node: data_dir is required (--data_dir DIR)\n");
		mp_config_free(opts, NOPTS, &conf);
		return 2;
	}
	enum mp_log_level lvl;
	if (mp_log_parse_level(conf.log_level, &lvl) < 0) {
		fprintf(stderr, "merpati-node: log_level: '%s' is not debug, info, warn or error\n",
			conf.log_level);
		mp_config_free(opts, NOPTS, &conf);
		return 2;
	}
	mp_log_set_level(lvl);
	char prefix[160];
	snprintf(prefix, sizeof(prefix), "proc=node node=%.100s", conf.node_id);
	mp_log_set_prefix(prefix);

	/* gRPC's threads inherit this mask; signals are taken by sigwait. */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
	mp_rpc_init();

	struct store_opts so = {
		.data_dir = conf.data_dir,
		.node_id = conf.node_id,
		.shards = (uint32_t)conf.shards,
		.max_message_size = conf.max_message_size,
		.log_retain = conf.log_retain,
		.max_pending = (uint32_t)conf.max_pending,
		.block_cache = conf.block_cache,
	};
	struct store *st = NULL;
	struct service *svc = NULL;
	struct mp_rpc_server *srv = NULL;
	struct node_cluster *nc = NULL;
	int rc = 1;

	if ((ret = store_open(&so, &st, &error)) < 0) {
		mp_log_error("node_store_open_failed", "error=\"%s\"", error ? error : mp_strerror(ret));
		goto out;
	}
	if ((ret = service_create(st, &svc)) < 0) {
		mp_log_error("node_service_failed", "error=%s", mp_strerror(ret));
		goto out;
	}
	if (conf.etcd != NULL && *conf.etcd != '\0') {
		if (conf.min_isr > conf.rf) {
			mp_log_error("node_bad_config", "error=\"min_isr %llu is above rf %llu\"",
				     (unsigned long long)conf.min_isr, (unsigned long long)conf.rf);
			goto out;
		}
		struct node_cluster_opts co = {
			.etcd = conf.etcd, .cluster = conf.cluster, .node_id = conf.node_id,
			.shards = (uint32_t)conf.shards, .rf = (uint32_t)conf.rf,
			.min_isr = (uint32_t)conf.min_isr,
			.lease_ttl_s = (int64_t)(conf.lease_ttl + 999) / 1000,
			.ack_timeout_ms = (int64_t)conf.ack_timeout,
		};
		if ((ret = node_cluster_create(st, &co, &nc, &error)) < 0) {
			mp_log_error("node_cluster_failed", "etcd=%s error=\"%s\"", conf.etcd,
				     error ? error : mp_strerror(ret));
			goto out;
		}
	}
	struct mp_rpc_service svcs[2];
	size_t nsvcs = 1;
	svcs[0].svc = &merpati__v1__mail_store__descriptor;
	svcs[0].methods = service_methods(&svcs[0].n);
	svcs[0].ctx = svc;
	if (nc != NULL)
		svcs[nsvcs++] = node_cluster_service(nc);
	struct mp_rpc_server_opts ro = {
		.listen = conf.listen,
		.threads = (int)conf.threads,
		/* room for the largest body plus the request's other fields */
		.max_msg = conf.max_message_size + (1u << 20),
	};
	if ((ret = mp_rpc_server_start_multi(svcs, nsvcs, &ro, &srv, &error)) < 0) {
		mp_log_error("node_listen_failed", "listen=%s error=\"%s\"", conf.listen,
			     error ? error : mp_strerror(ret));
		goto out;
	}
	if (nc != NULL) {
		char adv[300];
		if (conf.advertise != NULL && *conf.advertise != '\0') {
			snprintf(adv, sizeof(adv), "%s", conf.advertise);
		} else {
			/* the listen host with the port actually bound */
			const char *colon = strrchr(conf.listen, ':');
			int hl = colon ? (int)(colon - conf.listen) : (int)strlen(conf.listen);
			snprintf(adv, sizeof(adv), "%.*s:%d", hl, conf.listen,
				 mp_rpc_server_port(srv));
		}
		if ((ret = node_cluster_join(nc, adv, &error)) < 0) {
			mp_log_error("node_join_failed", "error=\"%s\"", error ? error : mp_strerror(ret));
			goto out;
		}
	}
	mp_log_info("node_ready", "listen=%s port=%d shards=%llu data_dir=%s", conf.listen,
		    mp_rpc_server_port(srv), (unsigned long long)conf.shards, conf.data_dir);

	for (;;) {
		int sig = 0;
		if (sigwait(&sigs, &sig) != 0)
			continue;
		if (sig == SIGHUP) {
			mp_log_info("node_sighup", "%s", "action=none");
			continue;
		}
		mp_log_info("node_stopping", "signal=%d", sig);
		break;
	}
	rc = 0;
out:
	/* Order: leave the cluster (the controller moves our shards away),
	 * stop serving (waits for answers in flight), then the store (finishes
	 * its queue, which may still replicate), then replication and the
	 * watch streams. */
	node_cluster_leave(nc);
	mp_rpc_server_stop(&srv);
	store_close(&st);
	node_cluster_free(&nc);
	service_free(&svc);
	mp_rpc_shutdown();
	free(error);
	mp_config_free(opts, NOPTS, &conf);
	mp_log_info("node_stopped", "rc=%d", rc);
	return rc;
}
