/*
 * merpati-frontend: the stateless protocol server. Reads its settings,
 * joins the cluster's routing through etcd, opens TLS and the listeners,
 * and serves until SIGTERM/SIGINT (graceful: stop accepting, let
 * transactions in flight finish within shutdown_timeout). SIGHUP reloads
 * the TLS certificates without dropping a connection.
 *
 * Never: start with an unparsable setting; serve plaintext AUTH PLAIN/LOGIN
 * unless allow_plaintext_auth says so.
 */
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fe_queue.h"
#include "fe_server.h"
#include "fe_store.h"
#include "fe_tls.h"
#include "mp_config.h"
#include "mp_error.h"
#include "mp_etcd.h"
#include "mp_log.h"
#include "mp_route.h"
#include "mp_rpc.h"
#include "mp_scram.h"
#include "smtp_server.h"
#include "imap_server.h"
#include "pop3_server.h"
#include "fe_watch.h"

#define FE_MAX_CERTS 16

struct fe_conf {
	char *etcd;
	char *cluster;
	char *hostname;
	char *log_level;
	uint64_t loops;
	uint64_t workers;
	char *smtp_listen;
	char *submission_listen;
	char *submissions_listen;
	char *imap_listen;
	char *imaps_listen;
	uint64_t imap_idle_timeout;
	char *pop3_listen;
	char *pop3s_listen;
	uint64_t pop3_idle_timeout;
	uint64_t pop3_lock_lease;
	char *tls_cert;
	char *tls_key;
	char *tls_sni;
	bool allow_plaintext_auth;
	uint64_t max_message_size;
	uint64_t max_recipients;
	uint64_t max_errors;
	uint64_t max_commands;
	uint64_t idle_timeout;
	uint64_t session_timeout;
	uint64_t max_connections;
	uint64_t max_connections_per_ip;
	uint64_t max_output;
	uint64_t shutdown_timeout;
	char *postmaster;
	bool sent_copy;
	uint64_t queue_lifetime;
	uint64_t call_timeout;
	uint64_t queue_runners;
	uint64_t queue_poll;
	uint64_t queue_lease;
	uint64_t queue_retry_min;
	uint64_t queue_retry_max;
	char *dns_server;
	uint64_t outbound_port;
	uint64_t outbound_timeout;
};

#define O(f) offsetof(struct fe_conf, f)
static const struct mp_config_opt opts[] = {
	{ "etcd", MP_CONF_STRING, O(etcd), NULL,
	  "etcd endpoints host:port[,host:port...] (required)", 0, 0 },
	{ "cluster", MP_CONF_STRING, O(cluster), "default",
	  "cluster name: etcd keys live under /merpati/NAME/", 0, 0 },
	{ "hostname", MP_CONF_STRING, O(hostname), NULL,
	  "name in greetings and Received: headers (default: the host name)", 0, 0 },
	{ "log_level", MP_CONF_STRING, O(log_level), "info", "debug, info, warn or error", 0, 0 },
	{ "loops", MP_CONF_UINT, O(loops), "0", "event loop threads (0: one per CPU)", 0, 64 },
	{ "workers", MP_CONF_UINT, O(workers), "64",
	  "threads for blocking work (cluster calls, password checks)", 1, 1024 },
	{ "smtp_listen", MP_CONF_STRING, O(smtp_listen), "",
	  "addresses for inbound SMTP (port 25 role), comma-separated", 0, 0 },
	{ "submission_listen", MP_CONF_STRING, O(submission_listen), "",
	  "addresses for submission with STARTTLS (port 587 role)", 0, 0 },
	{ "submissions_listen", MP_CONF_STRING, O(submissions_listen), "",
	  "addresses for submission over implicit TLS (port 465 role)", 0, 0 },
	{ "imap_listen", MP_CONF_STRING, O(imap_listen), "",
	  "addresses for IMAP with STARTTLS (port 143 role)", 0, 0 },
	{ "imaps_listen", MP_CONF_STRING, O(imaps_listen), "",
	  "addresses for IMAP over implicit TLS (port 993 role)", 0, 0 },
	{ "imap_idle_timeout", MP_CONF_DURATION, O(imap_idle_timeout), "30m",
	  "time an IMAP client may stay silent (RFC 9051 §5.4: at least 30 min)", 1000,
	  86400000 },
	{ "pop3_listen", MP_CONF_STRING, O(pop3_listen), "",
	  "addresses for POP3 with STLS (port 110 role)", 0, 0 },
	{ "pop3s_listen", MP_CONF_STRING, O(pop3s_listen), "",
	  "addresses for POP3 over implicit TLS (port 995 role)", 0, 0 },
	{ "pop3_idle_timeout", MP_CONF_DURATION, O(pop3_idle_timeout), "10m",
	  "time a POP3 client may stay silent (RFC 1939 §3: at least 10 min)", 1000,
	  86400000 },
	{ "pop3_lock_lease", MP_CONF_DURATION, O(pop3_lock_lease), "60s",
	  "lease of a POP3 session's maildrop lock (renewed; how long a dead "
	  "frontend's lock lasts)", 1000, 3600000 },
	{ "tls_cert", MP_CONF_STRING, O(tls_cert), NULL,
	  "PEM certificate chain of the default TLS certificate", 0, 0 },
	{ "tls_key", MP_CONF_STRING, O(tls_key), NULL, "PEM key of tls_cert", 0, 0 },
	{ "tls_sni", MP_CONF_STRING, O(tls_sni), "",
	  "more certificates chosen by SNI: cert.pem:key.pem[,cert.pem:key.pem...]", 0, 0 },
	{ "allow_plaintext_auth", MP_CONF_BOOL, O(allow_plaintext_auth), "false",
	  "offer AUTH PLAIN/LOGIN without TLS (tests only)", 0, 0 },
	{ "max_message_size", MP_CONF_SIZE, O(max_message_size), "40M",
	  "largest message accepted (SIZE); must fit the nodes' max_message_size", 1024,
	  1ull << 30 },
	{ "max_recipients", MP_CONF_UINT, O(max_recipients), "100",
	  "recipients per message (RFC 5321 §4.5.3.1.8 minimum: 100)", 1, 100000 },
	{ "max_errors", MP_CONF_UINT, O(max_errors), "10",
	  "client errors before a session is closed", 1, 10000 },
	{ "max_commands", MP_CONF_UINT, O(max_commands), "10000",
	  "commands per session", 10, 10000000 },
	{ "idle_timeout", MP_CONF_DURATION, O(idle_timeout), "5m",
	  "time a client may stay silent (RFC 5321 §4.5.3.2.7)", 100, 86400000 },
	{ "session_timeout", MP_CONF_DURATION, O(session_timeout), "1h",
	  "longest session (0: none)", 0, 0 },
	{ "max_connections", MP_CONF_UINT, O(max_connections), "10000",
	  "connections in all", 1, 10000000 },
	{ "max_connections_per_ip", MP_CONF_UINT, O(max_connections_per_ip), "100",
	  "connections from one client address", 1, 10000000 },
	{ "max_output", MP_CONF_SIZE, O(max_output), "1M",
	  "replies queued for a client that does not read them", 4096, 1ull << 30 },
	{ "shutdown_timeout", MP_CONF_DURATION, O(shutdown_timeout), "30s",
	  "on SIGTERM, how long transactions in flight may take", 0, 3600000 },
	{ "postmaster", MP_CONF_STRING, O(postmaster), "",
	  "address RCPT TO:<Postmaster> goes to (RFC 5321 §4.5.1)", 0, 0 },
	{ "sent_copy", MP_CONF_BOOL, O(sent_copy), "false",
	  "submission: also store each message in the sender's \"Sent\" mailbox", 0, 0 },
	{ "queue_lifetime", MP_CONF_DURATION, O(queue_lifetime), "5d",
	  "how long outbound mail is retried before it bounces", 60000, 0 },
	{ "call_timeout", MP_CONF_DURATION, O(call_timeout), "10s",
	  "budget of one call to the storage cluster, retries included", 100, 600000 },
	{ "queue_runners", MP_CONF_UINT, O(queue_runners), "2",
	  "outbound queue runner threads (0: this frontend delivers nothing out)", 0, 64 },
	{ "queue_poll", MP_CONF_DURATION, O(queue_poll), "5s",
	  "longest wait before a runner looks at a shard's queue again", 50, 600000 },
	{ "queue_lease", MP_CONF_DURATION, O(queue_lease), "15m",
	  "how long a runner's claim on an entry lasts (longer than a delivery)", 1000, 86400000 },
	{ "queue_retry_min", MP_CONF_DURATION, O(queue_retry_min), "1m",
	  "first retry of a deferred recipient; doubles up to queue_retry_max", 100, 0 },
	{ "queue_retry_max", MP_CONF_DURATION, O(queue_retry_max), "1h",
	  "longest wait between retries", 100, 0 },
	{ "dns_server", MP_CONF_STRING, O(dns_server), "",
	  "resolver for MX lookups, ip[:port] (default: /etc/resolv.conf)", 0, 0 },
	{ "outbound_port", MP_CONF_UINT, O(outbound_port), "25",
	  "port of remote SMTP servers (tests use others)", 1, 65535 },
	{ "outbound_timeout", MP_CONF_DURATION, O(outbound_timeout), "0",
	  "every outbound SMTP phase (0: the RFC 5321 §4.5.3.2 values)", 0, 3600000 },
};
#define NOPTS (sizeof(opts) / sizeof(*opts))

/* Split a comma-separated list in place into at most max items. */
static size_t split_list(char *s, char **items, size_t max)
{
	size_t n = 0;
	char *save = NULL;
	for (char *t = strtok_r(s, ",", &save); t != NULL && n < max;
	     t = strtok_r(NULL, ",", &save)) {
		while (*t == ' ')
			t++;
		size_t len = strlen(t);
		while (len > 0 && t[len - 1] == ' ')
			t[--len] = '\0';
		if (*t != '\0')
			items[n++] = t;
	}
	return n;
}

static int add_listeners(struct fe_server *srv, const char *list, enum fe_tls_mode tls,
			 const struct fe_proto *proto, void *ctx, const char *role)
{
	char *copy = strdup(list);
	char *items[16];
	if (copy == NULL)
		return MP_ENOMEM;
	size_t n = split_list(copy, items, 16);
	int ret = 0;
	for (size_t i = 0; i < n && ret == 0; i++) {
		struct fe_listener_conf lc = {
			.addr = items[i], .tls = tls, .proto = proto, .proto_ctx = ctx,
		};
		char *error = NULL;
		int port = 0;
		ret = fe_server_listen(srv, &lc, &port, &error);
		if (ret < 0)
			mp_log_error("fe_listen_failed", "addr=%s error=\"%s\"", items[i],
				     error != NULL ? error : mp_strerror(ret));
		else
			mp_log_info("fe_listener", "addr=%s port=%d role=%s", items[i], port, role);
		free(error);
	}
	free(copy);
	return ret;
}

static int open_tls(struct fe_conf *conf, struct fe_tls **tls_r)
{
	struct fe_tls_cert certs[FE_MAX_CERTS];
	char *sni = NULL;
	size_t n = 0;
	*tls_r = NULL;
	if (conf->tls_cert == NULL || *conf->tls_cert == '\0')
		return 0;
	if (conf->tls_key == NULL || *conf->tls_key == '\0') {
		mp_log_error("fe_bad_config", "error=\"tls_cert needs tls_key\"");
		return MP_EINVAL;
	}
	certs[n].cert_file = conf->tls_cert;
	certs[n].key_file = conf->tls_key;
	n++;
	if (conf->tls_sni != NULL && *conf->tls_sni != '\0') {
		char *items[FE_MAX_CERTS];
		sni = strdup(conf->tls_sni);
		if (sni == NULL)
			return MP_ENOMEM;
		size_t k = split_list(sni, items, FE_MAX_CERTS - 1);
		for (size_t i = 0; i < k; i++) {
			char *colon = strchr(items[i], ':');
			if (colon == NULL) {
				mp_log_error("fe_bad_config", "error=\"tls_sni: expected cert:key\"");
				free(sni);
				return MP_EINVAL;
			}
			*colon = '\0';
			certs[n].cert_file = items[i];
			certs[n].key_file = colon + 1;
			n++;
		}
	}
	struct fe_tls_conf tc = { .certs = certs, .ncerts = n };
	char *error = NULL;
	int ret = fe_tls_open(&tc, tls_r, &error);
	if (ret < 0)
		mp_log_error("fe_tls_failed", "error=\"%s\"", error != NULL ? error : mp_strerror(ret));
	free(error);
	free(sni);  /* fe_tls_open copied the conf */
	return ret;
}

int main(int argc, char **argv)
{
	struct fe_conf conf;
	char *error = NULL;
	int *rest = NULL, nrest = 0;
	int ret;

	memset(&conf, 0, sizeof(conf));
	if (mp_config_defaults(opts, NOPTS, &conf, &error) < 0) {
		fprintf(stderr, "merpati-frontend: %s\n", error ? error : "bad defaults");
		return 2;
	}
	ret = mp_config_parse_args(opts, NOPTS, &conf, argc, argv, &rest, &nrest, &error);
	if (ret == 1) {
		mp_config_free(opts, NOPTS, &conf);
		return 0;
	}
	if (ret < 0 || nrest > 0) {
		fprintf(stderr, "merpati-frontend: %s\n",
			error != NULL ? error : "unexpected argument");
		free(error);
		free(rest);
		mp_config_free(opts, NOPTS, &conf);
		return 2;
	}
	free(rest);
	enum mp_log_level lvl;
	if (conf.etcd == NULL || *conf.etcd == '\0' ||
	    mp_log_parse_level(conf.log_level, &lvl) < 0) {
		fprintf(stderr, "merpati-frontend: --etcd is required and log_level must be "
				"debug, info, warn or error\n");
		mp_config_free(opts, NOPTS, &conf);
		return 2;
	}
	mp_log_set_level(lvl);
	char host[256];
	if (conf.hostname == NULL || *conf.hostname == '\0') {
		if (gethostname(host, sizeof(host)) != 0)
			snprintf(host, sizeof(host), "localhost");
		host[sizeof(host) - 1] = '\0';
	} else {
		snprintf(host, sizeof(host), "%s", conf.hostname);
	}
	char prefix[300];
	snprintf(prefix, sizeof(prefix), "proc=frontend host=%s pid=%d", host, (int)getpid());
	mp_log_set_prefix(prefix);

	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
	mp_rpc_init();

	struct mp_etcd *etcd = NULL;
	struct mp_route *route = NULL;
	struct fe_store *store = NULL;
	struct fe_tls *tls = NULL;
	struct fe_server *srv = NULL;
	struct fe_queue *queue = NULL;
	struct fe_watch *watch = NULL;
	struct pop3_releaser *releaser = NULL;
	int rc = 1;
	char eprefix[128];
	snprintf(eprefix, sizeof(eprefix), "/merpati/%s/", conf.cluster);
	if ((ret = mp_etcd_open(conf.etcd, eprefix, 5000, &etcd, &error)) < 0) {
		mp_log_error("fe_etcd_failed", "etcd=%s error=\"%s\"", conf.etcd,
			     error != NULL ? error : mp_strerror(ret));
		goto out;
	}
	struct mp_route_opts ro = {
		.timeout_ms = (int64_t)conf.call_timeout,
		/* a whole message plus the request's other fields */
		.max_msg = conf.max_message_size + (4u << 20),
	};
	if ((ret = mp_route_open(etcd, &ro, &route, &error)) < 0) {
		mp_log_error("fe_route_failed", "error=\"%s\"", error != NULL ? error : mp_strerror(ret));
		goto out;
	}
	struct fe_store_conf stc = { .call_timeout_ms = (int64_t)conf.call_timeout };
	if ((ret = fe_store_open(route, &stc, &store)) < 0)
		goto out;
	if (open_tls(&conf, &tls) < 0)
		goto out;

	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	struct fe_server_conf sc = {
		.loops = conf.loops != 0 ? (unsigned)conf.loops : (unsigned)(ncpu > 0 ? ncpu : 1),
		.workers = (unsigned)conf.workers,
		.max_connections = conf.max_connections,
		.max_per_ip = conf.max_connections_per_ip,
		.max_output = conf.max_output,
		.idle_timeout_ms = conf.idle_timeout,
		.session_timeout_ms = conf.session_timeout,
		.tls = tls,
	};
	if ((ret = fe_server_create(&sc, &srv, &error)) < 0) {
		mp_log_error("fe_server_failed", "error=\"%s\"", error != NULL ? error : mp_strerror(ret));
		goto out;
	}
	struct smtp_conf smtp = {
		.hostname = host,
		.submission = false,
		.allow_plaintext_auth = conf.allow_plaintext_auth,
		.max_message_size = conf.max_message_size,
		.max_recipients = conf.max_recipients,
		.max_errors = conf.max_errors,
		.max_commands = conf.max_commands,
		.idle_timeout_ms = conf.idle_timeout,
		.postmaster = conf.postmaster,
		.sent_copy = conf.sent_copy,
		.queue_lifetime_ms = conf.queue_lifetime,
		.store = store,
	};
	struct smtp_conf subm = smtp;
	subm.submission = true;
	if ((ret = fe_watch_start(route, &watch, &error)) < 0) {
		mp_log_error("fe_watch_failed", "error=\"%s\"", error != NULL ? error : mp_strerror(ret));
		goto out;
	}
	struct imap_conf imap = {
		.hostname = host,
		.allow_plaintext_auth = conf.allow_plaintext_auth,
		.max_message_size = conf.max_message_size,
		.max_errors = conf.max_errors,
		.idle_timeout_ms = conf.imap_idle_timeout,
		.store = store,
		.watch = watch,
	};
	if (add_listeners(srv, conf.smtp_listen, FE_TLS_NONE, &smtp_proto, &smtp, "smtp") < 0 ||
	    add_listeners(srv, conf.submission_listen, FE_TLS_NONE, &smtp_proto, &subm,
			  "submission") < 0 ||
	    add_listeners(srv, conf.submissions_listen, FE_TLS_IMPLICIT, &smtp_proto, &subm,
			  "submissions") < 0 ||
	    add_listeners(srv, conf.imap_listen, FE_TLS_NONE, &imap_proto, &imap, "imap") < 0 ||
	    add_listeners(srv, conf.imaps_listen, FE_TLS_IMPLICIT, &imap_proto, &imap,
			  "imaps") < 0)
		goto out;
	if ((ret = pop3_releaser_start(store, &releaser)) < 0)
		goto out;
	/* This process, for queue claims and maildrop locks. */
	uint8_t rnd[6];
	char owner[400];
	if (mp_random_bytes(rnd, sizeof(rnd)) != 0)
		memset(rnd, 0, sizeof(rnd));
	snprintf(owner, sizeof(owner), "%.64s:%d:%02x%02x%02x%02x%02x%02x", host, (int)getpid(),
		 rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5]);
	struct pop3_conf pop3 = {
		.hostname = host,
		.owner_prefix = owner,
		.allow_plaintext_auth = conf.allow_plaintext_auth,
		.max_errors = conf.max_errors,
		.idle_timeout_ms = conf.pop3_idle_timeout,
		.lock_lease_ms = conf.pop3_lock_lease,
		.store = store,
		.releaser = releaser,
	};
	if (add_listeners(srv, conf.pop3_listen, FE_TLS_NONE, &pop3_proto, &pop3, "pop3") < 0 ||
	    add_listeners(srv, conf.pop3s_listen, FE_TLS_IMPLICIT, &pop3_proto, &pop3,
			  "pop3s") < 0)
		goto out;
	if ((ret = fe_server_start(srv, &error)) < 0) {
		mp_log_error("fe_start_failed", "error=\"%s\"", error != NULL ? error : mp_strerror(ret));
		goto out;
	}
	struct fe_queue_conf qc = {
		.owner = owner,
		.hostname = host,
		.runners = (unsigned)conf.queue_runners,
		.poll_ms = conf.queue_poll,
		.lease_ms = conf.queue_lease,
		.retry_min_ms = conf.queue_retry_min,
		.retry_max_ms = conf.queue_retry_max,
		.lifetime_ms = conf.queue_lifetime,
		.dns_server = conf.dns_server,
		.port = (uint16_t)conf.outbound_port,
		.smtp_timeout_ms = conf.outbound_timeout,
		.store = store,
	};
	if ((ret = fe_queue_start(&qc, &queue, &error)) < 0) {
		mp_log_error("fe_queue_failed", "error=\"%s\"", error != NULL ? error : mp_strerror(ret));
		goto out;
	}
	mp_log_info("fe_ready", "loops=%u workers=%u tls=%s", sc.loops, sc.workers,
		    tls != NULL ? "yes" : "no");

	for (;;) {
		int sig = 0;
		if (sigwait(&sigs, &sig) != 0)
			continue;
		if (sig == SIGHUP) {
			if (tls == NULL) {
				mp_log_info("fe_sighup", "%s", "action=none");
				continue;
			}
			char *rerr = NULL;
			int r = fe_tls_reload(tls, &rerr);
			if (r < 0)
				mp_log_error("fe_tls_reload_failed", "error=\"%s\"",
					     rerr != NULL ? rerr : mp_strerror(r));
			else
				mp_log_info("fe_tls_reloaded", "%s", "certs=ok");
			free(rerr);
			continue;
		}
		mp_log_info("fe_stopping", "signal=%d connections=%llu", sig,
			    (unsigned long long)fe_server_connections(srv));
		break;
	}
	fe_server_stop(srv, conf.shutdown_timeout);
	rc = 0;
out:
	fe_queue_stop(&queue);
	fe_server_free(&srv);
	pop3_releaser_stop(&releaser);
	fe_watch_stop(&watch);
	fe_tls_free(&tls);
	fe_store_free(&store);
	mp_route_close(&route);
	mp_etcd_close(&etcd);
	mp_rpc_shutdown();
	free(error);
	mp_config_free(opts, NOPTS, &conf);
	mp_log_info("fe_stopped", "rc=%d", rc);
	return rc;
}
