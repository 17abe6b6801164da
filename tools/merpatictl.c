/*
 * merpatictl: the admin CLI over the MailStore gRPC API of the storage
 * nodes, and over the cluster's records in etcd.
 *
 *   merpatictl [--node HOST:PORT] [--timeout SECONDS] COMMAND ARGS...
 *   merpatictl --etcd ENDPOINTS [--cluster NAME] COMMAND ARGS...
 *
 * Without --etcd every call goes to the one --node. With --etcd (or
 * $MERPATI_ETCD when no --node is given) each MailStore call goes to the
 * leader of the shard it concerns (ctl_cluster.c), and the cluster
 * commands (cluster status, node drain/undrain/remove) read and write the
 * cluster's keys in etcd; node info still talks to the one --node.
 *
 * This file holds the entry point: option parsing, the command table, the
 * signal thread, the node connection and the error -> exit status mapping.
 * The commands live in ctl_account.c, ctl_mail.c, ctl_node.c,
 * ctl_cluster.c and ctl_queue.c (aliases and the outbound queue).
 *
 * Exit status: 0 ok, 1 usage, 2 not found, 3 already exists, 4 invalid
 * argument, 5 node unavailable, 6 any other error. Errors go to stderr with
 * the node's own message. It must never accept a password on the command
 * line, print a password hash, or call the node before every argument of a
 * command has been checked.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"
#include "mp_config.h"
#include "mp_error.h"
#include "mp_log.h"
#include "mp_rpc.h"

#define CTL_DEFAULT_TIMEOUT_S 30
#define CTL_MAX_TIMEOUT_S 86400
#define CTL_MAX_ARGS 128     /* alias add: 2 words, the alias, 100 targets */
#define CTL_ENDPOINTS_MAX 1024
#define CTL_CLUSTER_NAME_MAX 63

/* What a command talks to, which decides the options it needs. */
enum ctl_kind {
	CTL_KIND_STORE = 0,   /* MailStore: --node, or routed with --etcd */
	CTL_KIND_NODE,        /* one node, always --node */
	CTL_KIND_CLUSTER,     /* etcd only: needs --etcd */
};

struct ctl_command {
	const char *group;     /* "user" */
	const char *verb;      /* "add"; NULL for one-word commands */
	int (*run)(struct ctl *c, char **args, int nargs);
	int min_args, max_args; /* max -1: no limit */
	unsigned opts;         /* enum ctl_opt_bit accepted */
	const char *usage;     /* NULL: an alias left out of the listing */
	enum ctl_kind kind;
};

static const struct ctl_command ctl_commands[] = {
	{ "domain", "add", ctl_cmd_domain_add, 1, 1, 0, "domain add NAME",
	  CTL_KIND_STORE },
	{ "domain", "list", ctl_cmd_domain_list, 0, 0, CTL_OPT_PAGE_SIZE,
	  "domain list [--page-size N]",
	  CTL_KIND_STORE },
	{ "domain", "del", ctl_cmd_domain_del, 1, 1, 0,
	  "domain del NAME            (the domain must have no accounts)",
	  CTL_KIND_STORE },
	{ "domain", "delete", ctl_cmd_domain_del, 1, 1, 0, NULL,
	  CTL_KIND_STORE },

	{ "user", "add", ctl_cmd_user_add, 1, 1,
	  CTL_OPT_QUOTA | CTL_OPT_HASH_STDIN,
	  "user add USER [--quota SIZE] [--hash-stdin]   (password on stdin)",
	  CTL_KIND_STORE },
	{ "user", "list", ctl_cmd_user_list, 0, 1, CTL_OPT_PAGE_SIZE,
	  "user list [DOMAIN] [--page-size N]",
	  CTL_KIND_STORE },
	{ "user", "del", ctl_cmd_user_del, 1, 1, 0, "user del USER",
	  CTL_KIND_STORE },
	{ "user", "delete", ctl_cmd_user_del, 1, 1, 0, NULL,
	  CTL_KIND_STORE },
	{ "user", "passwd", ctl_cmd_user_passwd, 1, 1, CTL_OPT_HASH_STDIN,
	  "user passwd USER [--hash-stdin]              (password on stdin)",
	  CTL_KIND_STORE },
	{ "user", "show", ctl_cmd_user_show, 1, 1, 0, "user show USER",
	  CTL_KIND_STORE },
	{ "user", "quota", ctl_cmd_user_quota, 2, 2, 0,
	  "user quota USER SIZE       (10M, 1G, ...; 0 = unlimited)",
	  CTL_KIND_STORE },
	{ "user", "disable", ctl_cmd_user_disable, 1, 1, 0, "user disable USER",
	  CTL_KIND_STORE },
	{ "user", "enable", ctl_cmd_user_enable, 1, 1, 0, "user enable USER",
	  CTL_KIND_STORE },

	{ "mailbox", "list", ctl_cmd_mailbox_list, 1, 1, 0, "mailbox list USER",
	  CTL_KIND_STORE },
	{ "mailbox", "create", ctl_cmd_mailbox_create, 2, 2, 0,
	  "mailbox create USER NAME",
	  CTL_KIND_STORE },
	{ "mailbox", "rename", ctl_cmd_mailbox_rename, 3, 3, 0,
	  "mailbox rename USER OLD NEW",
	  CTL_KIND_STORE },
	{ "mailbox", "delete", ctl_cmd_mailbox_delete, 2, 2, 0,
	  "mailbox delete USER NAME",
	  CTL_KIND_STORE },
	{ "mailbox", "del", ctl_cmd_mailbox_delete, 2, 2, 0, NULL,
	  CTL_KIND_STORE },

	{ "msg", "append", ctl_cmd_msg_append, 2, 2, CTL_OPT_FLAGS,
	  "msg append USER MAILBOX [--flags '\\Seen,\\Flagged']   (body on stdin)",
	  CTL_KIND_STORE },
	{ "msg", "list", ctl_cmd_msg_list, 2, 3, CTL_OPT_PAGE_SIZE,
	  "msg list USER MAILBOX [UIDSET] [--page-size N]",
	  CTL_KIND_STORE },
	{ "msg", "fetch", ctl_cmd_msg_fetch, 3, 3, 0,
	  "msg fetch USER MAILBOX UID            (body to stdout)",
	  CTL_KIND_STORE },
	{ "msg", "flags", ctl_cmd_msg_flags, 4, -1, 0,
	  "msg flags USER MAILBOX UIDSET add|remove|replace FLAGS...",
	  CTL_KIND_STORE },
	{ "msg", "expunge", ctl_cmd_msg_expunge, 3, 3, 0,
	  "msg expunge USER MAILBOX UIDSET",
	  CTL_KIND_STORE },
	{ "msg", "copy", ctl_cmd_msg_copy, 4, 4, 0,
	  "msg copy USER MAILBOX UIDSET DEST",
	  CTL_KIND_STORE },
	{ "msg", "move", ctl_cmd_msg_move, 4, 4, 0,
	  "msg move USER MAILBOX UIDSET DEST",
	  CTL_KIND_STORE },

	{ "watch", NULL, ctl_cmd_watch, 1, 1, CTL_OPT_COUNT | CTL_OPT_SECONDS,
	  "watch USER [--count N] [--seconds S]",
	  CTL_KIND_STORE },
	{ "node", "info", ctl_cmd_node_info, 0, 0, 0,
	  "node info                  (the --node, also with --etcd)",
	  CTL_KIND_NODE },
	{ "node", "drain", ctl_cmd_node_drain, 1, 1, 0,
	  "node drain ID              (--etcd: move its shards away)",
	  CTL_KIND_CLUSTER },
	{ "node", "undrain", ctl_cmd_node_undrain, 1, 1, 0,
	  "node undrain ID            (--etcd: cancel a drain)",
	  CTL_KIND_CLUSTER },
	{ "node", "remove", ctl_cmd_node_remove, 1, 1, 0,
	  "node remove ID             (--etcd: once it holds no shard)",
	  CTL_KIND_CLUSTER },
	{ "cluster", "status", ctl_cmd_cluster_status, 0, 0, CTL_OPT_JSON,
	  "cluster status [--json]    (--etcd)", CTL_KIND_CLUSTER },

	{ "alias", "add", ctl_cmd_alias_add, 2, CTL_ALIAS_TARGETS_MAX + 1, 0,
	  "alias add ALIAS TARGET...  (create or replace; targets may be remote)",
	  CTL_KIND_STORE },
	{ "alias", "remove", ctl_cmd_alias_remove, 1, 1, 0,
	  "alias remove ALIAS", CTL_KIND_STORE },
	{ "alias", "del", ctl_cmd_alias_remove, 1, 1, 0, NULL, CTL_KIND_STORE },
	{ "alias", "show", ctl_cmd_alias_show, 1, 1, 0, "alias show ALIAS",
	  CTL_KIND_STORE },
	{ "alias", "list", ctl_cmd_alias_list, 0, 1, CTL_OPT_PAGE_SIZE,
	  "alias list [DOMAIN] [--page-size N]", CTL_KIND_STORE },

	{ "queue", "list", ctl_cmd_queue_list, 0, 0,
	  CTL_OPT_SHARD | CTL_OPT_PAGE_SIZE,
	  "queue list [--shard N] [--page-size N]   (outbound queue; all shards "
	  "by default)", CTL_KIND_STORE },
	{ "queue", "show", ctl_cmd_queue_show, 1, 1, 0, "queue show ID",
	  CTL_KIND_STORE },
	{ "queue", "retry", ctl_cmd_queue_retry, 1, 1, 0,
	  "queue retry ID             (due now; a runner's claim is dropped)",
	  CTL_KIND_STORE },
	{ "queue", "delete", ctl_cmd_queue_delete, 1, 1, 0,
	  "queue delete ID            (no bounce is sent)", CTL_KIND_STORE },
	{ "queue", "del", ctl_cmd_queue_delete, 1, 1, 0, NULL, CTL_KIND_STORE },
};

static void ctl_print_usage(FILE *out)
{
	size_t i;

	fprintf(out,
		"usage: merpatictl [--node HOST:PORT | --etcd ENDPOINTS "
		"[--cluster NAME]]\n"
		"                  [--timeout SECONDS] [--verbose] COMMAND "
		"[ARGS...]\n"
		"\n"
		"  --node HOST:PORT   storage node to talk to (default: "
		"$MERPATI_NODE)\n"
		"  --etcd ENDPOINTS   the cluster's etcd, HOST:PORT[,...] "
		"(default: $MERPATI_ETCD\n"
		"                     unless --node is given): each call goes "
		"to the leader\n"
		"                     of its shard; node info still uses "
		"--node\n"
		"  --cluster NAME     cluster in etcd (default: "
		"$MERPATI_CLUSTER or \"default\")\n"
		"  --timeout SECONDS  deadline of each call, retries included "
		"(default %d)\n"
		"\n"
		"commands:\n", CTL_DEFAULT_TIMEOUT_S);
	for (i = 0; i < sizeof ctl_commands / sizeof ctl_commands[0]; i++) {
		if (ctl_commands[i].usage != NULL)
			fprintf(out, "  %s\n", ctl_commands[i].usage);
	}
	fprintf(out, "  help\n"
		"\n"
		"USER and ALIAS are local@domain. UIDSET is an IMAP sequence "
		"set over UIDs\n(\"1:5,7,9:*\"). ID is an outbound queue "
		"entry's id (\"5.0123456789abcdef\").\n"
		"Passwords and hashes are read from stdin, never from the "
		"command line.\n"
		"exit status: 0 ok, 1 usage, 2 not found, 3 already exists, "
		"4 invalid argument,\n"
		"             5 node or etcd unavailable, 6 other error "
		"(node remove: still\n"
		"             holds shards)\n");
}

/* ------------------------------------------------------------ messages */

static const struct ctl_command *ctl_current;

void ctl_err(const struct ctl *c, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (c != NULL && c->what != NULL)
		fprintf(stderr, "merpatictl: %s: %s\n", c->what, msg);
	else
		fprintf(stderr, "merpatictl: %s\n", msg);
}

int ctl_usage_error(const struct ctl *c, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	ctl_err(c, "%s", msg);
	if (ctl_current != NULL && ctl_current->usage != NULL)
		fprintf(stderr, "usage: merpatictl %s\n", ctl_current->usage);
	else
		fprintf(stderr, "run 'merpatictl help' for the list of "
			"commands\n");
	return CTL_EXIT_USAGE;
}

int ctl_exit_for(int err)
{
	switch (err) {
	case MP_OK:
		return CTL_EXIT_OK;
	case MP_ENOENT:
		return CTL_EXIT_NOTFOUND;
	case MP_EEXIST:
		return CTL_EXIT_EXISTS;
	case MP_EINVAL:
	case MP_ETOOBIG:
		return CTL_EXIT_INVALID;
	case MP_EUNAVAIL:
	case MP_ETIMEDOUT:
	case MP_ECANCELED:
	case MP_ENOTLEADER:
		/* All mean "this node cannot do it now": try again or
		 * elsewhere. */
		return CTL_EXIT_UNAVAIL;
	default:
		return CTL_EXIT_ERROR;
	}
}

static const char *ctl_err_words(int err)
{
	switch (err) {
	case MP_ENOENT: return "not found";
	case MP_EEXIST: return "already exists";
	case MP_EINVAL: return "invalid argument";
	case MP_ETOOBIG: return "too big";
	case MP_ENOSPC: return "over quota or a limit";
	case MP_EIO: return "storage error";
	case MP_ENOMEM: return "out of memory";
	case MP_EUNAVAIL: return "node unavailable";
	case MP_ETIMEDOUT: return "timed out";
	case MP_ENOTLEADER: return "node is not the shard's leader";
	case MP_ESTALE: return "stale";
	case MP_ECANCELED: return "cancelled";
	case MP_EPERM: return "not allowed";
	case MP_ESTATE: return "not possible in this state";
	case MP_EUNIMPL: return "not implemented by the node";
	case MP_EPROTO: return "protocol error";
	default: return "error";
	}
}

int ctl_rpc_error(struct ctl *c, const char *method, int err, const char *msg)
{
	const char *name = mp_strerror(err);

	if (name == NULL)
		name = "?";
	if (ctl_exit_for(err) == CTL_EXIT_UNAVAIL) {
		ctl_err(c, "%s on %s: %s (%s)%s%s", method,
			ctl_target(c), ctl_err_words(err), name,
			msg != NULL && *msg != '\0' ? ": " : "",
			msg != NULL ? msg : "");
	} else {
		ctl_err(c, "%s: %s (%s)%s%s", method, ctl_err_words(err), name,
			msg != NULL && *msg != '\0' ? ": " : "",
			msg != NULL ? msg : "");
	}
	return ctl_exit_for(err);
}

/* ------------------------------------------------------------- signals */

static atomic_int ctl_soft_interrupt;
static atomic_int ctl_got_signal;

int ctl_interrupted(void)
{
	return atomic_load(&ctl_got_signal) != 0;
}

void ctl_set_soft_interrupt(int on)
{
	atomic_store(&ctl_soft_interrupt, on);
}

/* gRPC wants SIGINT/SIGTERM blocked in its threads (mp_rpc.h); this thread
 * takes them instead. Outside a watch a signal ends the process at once:
 * nothing a blocking call has half done needs undoing on our side (the node
 * applies a call fully or not at all). */
static void *ctl_signal_thread(void *arg)
{
	sigset_t *set = arg;
	int sig;

	for (;;) {
		if (sigwait(set, &sig) != 0)
			continue;
		if (atomic_load(&ctl_soft_interrupt) &&
		    !atomic_load(&ctl_got_signal)) {
			atomic_store(&ctl_got_signal, sig);
			continue;
		}
		ctl_tty_restore();
		_exit(128 + sig);
	}
	return NULL;
}

static int ctl_signals_start(void)
{
	static sigset_t set;
	pthread_t th;
	int ret;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	ret = pthread_sigmask(SIG_BLOCK, &set, NULL);
	if (ret != 0)
		return -ret;
	ret = pthread_create(&th, NULL, ctl_signal_thread, &set);
	if (ret != 0)
		return -ret;
	ret = pthread_detach(th);
	return ret != 0 ? -ret : 0;
}

/* --------------------------------------------------------------- calls */

void ctl_rpc_start(struct ctl *c)
{
	if (!c->rpc_started) {
		mp_rpc_init();
		c->rpc_started = 1;
	}
}

const char *ctl_target(const struct ctl *c)
{
	if (c->target[0] != '\0')
		return c->target;
	if (c->opt.node != NULL)
		return c->opt.node;
	return "?";
}

int ctl_connect(struct ctl *c)
{
	int err;

	if (c->ch != NULL)
		return CTL_EXIT_OK;
	ctl_rpc_start(c);
	snprintf(c->target, sizeof c->target, "node %s", c->opt.node);
	err = mp_rpc_channel_open(c->opt.node, MP_RPC_DEFAULT_MAX_MSG, &c->ch);
	if (err != 0) {
		ctl_err(c, "cannot open a channel to %s: %s", c->opt.node,
			mp_strerror(err));
		/* A channel that cannot even be made means a bad target or
		 * no resources; either way the node is not reachable. */
		return err == MP_EINVAL ? CTL_EXIT_INVALID : CTL_EXIT_UNAVAIL;
	}
	return CTL_EXIT_OK;
}

int ctl_call(struct ctl *c, const char *method, const ProtobufCMessage *req,
	     const ProtobufCMessageDescriptor *resp_desc,
	     ProtobufCMessage **resp_r)
{
	char path[128];
	char *msg = NULL;
	int err, ret;

	*resp_r = NULL;
	if (mp_rpc_method_path(&merpati__v1__mail_store__descriptor, method,
			       path, sizeof path) == NULL) {
		ctl_err(c, "internal error: %s is not a MailStore method",
			method);
		return CTL_EXIT_ERROR;
	}
	if (c->opt.etcd != NULL)
		return ctl_route_call(c, method, path, req, resp_desc, resp_r);
	ret = ctl_connect(c);
	if (ret != CTL_EXIT_OK)
		return ret;
	err = mp_rpc_call(c->ch, path, req, resp_desc, c->opt.timeout_ms,
			  resp_r, &msg);
	if (err != 0) {
		*resp_r = NULL;
		ret = ctl_rpc_error(c, method, err, msg);
		free(msg);
		return ret;
	}
	if (*resp_r == NULL) {
		ctl_err(c, "%s: the node sent no reply", method);
		return CTL_EXIT_ERROR;
	}
	return CTL_EXIT_OK;
}

int ctl_call_empty(struct ctl *c, const char *method,
		   const ProtobufCMessage *req)
{
	ProtobufCMessage *resp = NULL;
	int ret;

	ret = ctl_call(c, method, req, &merpati__v1__empty__descriptor, &resp);
	if (ret == CTL_EXIT_OK)
		protobuf_c_message_free_unpacked(resp, NULL);
	return ret;
}

/* ------------------------------------------------------------- options */

struct ctl_optdef {
	const char *name;
	int has_value;
	unsigned bit;      /* 0: global option */
};

static const struct ctl_optdef ctl_optdefs[] = {
	{ "node", 1, 0 },
	{ "etcd", 1, 0 },
	{ "cluster", 1, 0 },
	{ "timeout", 1, 0 },
	{ "verbose", 0, 0 },
	{ "help", 0, 0 },
	{ "quota", 1, CTL_OPT_QUOTA },
	{ "hash-stdin", 0, CTL_OPT_HASH_STDIN },
	{ "flags", 1, CTL_OPT_FLAGS },
	{ "count", 1, CTL_OPT_COUNT },
	{ "seconds", 1, CTL_OPT_SECONDS },
	{ "page-size", 1, CTL_OPT_PAGE_SIZE },
	{ "json", 0, CTL_OPT_JSON },
	{ "shard", 1, CTL_OPT_SHARD },
};

/* Parses a whole number within [min, max]; 0 or MP_EINVAL. */
static int ctl_parse_bounded(const char *s, uint64_t min, uint64_t max,
			     uint64_t *r)
{
	uint64_t v;

	if (mp_parse_uint(s, &v) != 0 || v < min || v > max)
		return MP_EINVAL;
	*r = v;
	return 0;
}

/* HOST:PORT or [V6]:PORT with a port of 1..65535. */
static int ctl_check_node(const char *node)
{
	const char *colon = strrchr(node, ':');
	uint64_t port;
	size_t i;

	if (colon == NULL || colon == node)
		return MP_EINVAL;
	for (i = 0; node + i < colon; i++) {
		unsigned char ch = (unsigned char)node[i];

		if (ch <= ' ' || ch == 0x7f || ch == '/')
			return MP_EINVAL;
	}
	if (node[0] == '[' && colon[-1] != ']')
		return MP_EINVAL;
	return ctl_parse_bounded(colon + 1, 1, 65535, &port);
}

/* Sets one option. Exit status. */
static int ctl_set_opt(struct ctl *c, const struct ctl_optdef *d,
		       const char *value)
{
	uint64_t v;

	if (d->bit != 0)
		c->opt.seen |= d->bit;
	if (strcmp(d->name, "node") == 0) {
		c->opt.node = value;
		c->opt.node_given = 1;
	} else if (strcmp(d->name, "etcd") == 0) {
		c->opt.etcd = value;
	} else if (strcmp(d->name, "cluster") == 0) {
		c->opt.cluster = value;
		c->opt.cluster_given = 1;
	} else if (strcmp(d->name, "json") == 0) {
		c->opt.json = 1;
	} else if (strcmp(d->name, "timeout") == 0) {
		if (ctl_parse_bounded(value, 1, CTL_MAX_TIMEOUT_S, &v) != 0) {
			ctl_err(NULL, "--timeout: expected whole seconds "
				"1..%d, got \"%s\"", CTL_MAX_TIMEOUT_S, value);
			return CTL_EXIT_INVALID;
		}
		c->opt.timeout_ms = (int64_t)v * 1000;
	} else if (strcmp(d->name, "verbose") == 0) {
		c->opt.verbose = 1;
	} else if (strcmp(d->name, "quota") == 0) {
		c->opt.quota = value;
	} else if (strcmp(d->name, "hash-stdin") == 0) {
		c->opt.hash_stdin = 1;
	} else if (strcmp(d->name, "flags") == 0) {
		c->opt.flags = value;
	} else if (strcmp(d->name, "count") == 0) {
		if (ctl_parse_bounded(value, 1, UINT32_MAX, &v) != 0) {
			ctl_err(NULL, "--count: expected a number >= 1, got "
				"\"%s\"", value);
			return CTL_EXIT_INVALID;
		}
		c->opt.count = v;
	} else if (strcmp(d->name, "seconds") == 0) {
		if (ctl_parse_bounded(value, 1, CTL_MAX_TIMEOUT_S * 365ull,
				      &v) != 0) {
			ctl_err(NULL, "--seconds: expected a number >= 1, got "
				"\"%s\"", value);
			return CTL_EXIT_INVALID;
		}
		c->opt.seconds = v;
	} else if (strcmp(d->name, "shard") == 0) {
		/* The node checks it against the shard count. */
		if (ctl_parse_bounded(value, 0, UINT32_MAX - 1, &v) != 0) {
			ctl_err(NULL, "--shard: expected a shard number, got "
				"\"%s\"", value);
			return CTL_EXIT_INVALID;
		}
		c->opt.shard = (uint32_t)v;
	} else if (strcmp(d->name, "page-size") == 0) {
		if (ctl_parse_bounded(value, 1, 100000, &v) != 0) {
			ctl_err(NULL, "--page-size: expected 1..100000, got "
				"\"%s\"", value);
			return CTL_EXIT_INVALID;
		}
		c->opt.page_size = (uint32_t)v;
	}
	return CTL_EXIT_OK;
}

/* Splits argv into options (anywhere; "--" ends them) and positional
 * words. *help_r is set for --help / -h. Exit status. */
static int ctl_parse_argv(struct ctl *c, int argc, char **argv, char **pos,
			  int *npos_r, int *help_r)
{
	int i, npos = 0, only_pos = 0;

	for (i = 1; i < argc; i++) {
		const char *a = argv[i];
		const struct ctl_optdef *d = NULL;
		const char *eq, *value = NULL;
		size_t namelen, k;
		int ret;

		if (!only_pos && strcmp(a, "--") == 0) {
			only_pos = 1;
			continue;
		}
		if (!only_pos && strcmp(a, "-h") == 0) {
			*help_r = 1;
			continue;
		}
		if (only_pos || strncmp(a, "--", 2) != 0) {
			if (npos == CTL_MAX_ARGS) {
				ctl_err(NULL, "too many arguments");
				return CTL_EXIT_USAGE;
			}
			pos[npos++] = argv[i];
			continue;
		}
		eq = strchr(a + 2, '=');
		namelen = eq != NULL ? (size_t)(eq - (a + 2)) : strlen(a + 2);
		for (k = 0; k < sizeof ctl_optdefs / sizeof ctl_optdefs[0];
		     k++) {
			if (strlen(ctl_optdefs[k].name) == namelen &&
			    memcmp(ctl_optdefs[k].name, a + 2, namelen) == 0) {
				d = &ctl_optdefs[k];
				break;
			}
		}
		if (d == NULL) {
			ctl_err(NULL, "unknown option %s (see 'merpatictl "
				"help')", a);
			return CTL_EXIT_USAGE;
		}
		if (strcmp(d->name, "help") == 0) {
			*help_r = 1;
			continue;
		}
		if (d->has_value) {
			if (eq != NULL) {
				value = eq + 1;
			} else if (i + 1 < argc) {
				value = argv[++i];
			} else {
				ctl_err(NULL, "option --%s needs a value",
					d->name);
				return CTL_EXIT_USAGE;
			}
		} else if (eq != NULL) {
			ctl_err(NULL, "option --%s takes no value", d->name);
			return CTL_EXIT_USAGE;
		}
		ret = ctl_set_opt(c, d, value);
		if (ret != CTL_EXIT_OK)
			return ret;
	}
	*npos_r = npos;
	return CTL_EXIT_OK;
}

static const struct ctl_command *ctl_find(char **pos, int npos, int *used_r)
{
	size_t i;

	for (i = 0; i < sizeof ctl_commands / sizeof ctl_commands[0]; i++) {
		const struct ctl_command *cmd = &ctl_commands[i];

		if (strcmp(cmd->group, pos[0]) != 0)
			continue;
		if (cmd->verb == NULL) {
			*used_r = 1;
			return cmd;
		}
		if (npos >= 2 && strcmp(cmd->verb, pos[1]) == 0) {
			*used_r = 2;
			return cmd;
		}
	}
	return NULL;
}

static int ctl_group_known(const char *group)
{
	size_t i;

	for (i = 0; i < sizeof ctl_commands / sizeof ctl_commands[0]; i++) {
		if (strcmp(ctl_commands[i].group, group) == 0)
			return 1;
	}
	return 0;
}

static void ctl_print_group_usage(const char *group)
{
	size_t i;

	fprintf(stderr, "usage:\n");
	for (i = 0; i < sizeof ctl_commands / sizeof ctl_commands[0]; i++) {
		if (strcmp(ctl_commands[i].group, group) == 0 &&
		    ctl_commands[i].usage != NULL)
			fprintf(stderr, "  merpatictl %s\n",
				ctl_commands[i].usage);
	}
}

/* Endpoints: HOST:PORT[,HOST:PORT...], each checked as a node address. */
static int ctl_check_endpoints(const char *s)
{
	char one[CTL_ENDPOINTS_MAX + 1];
	size_t len = strlen(s), start = 0;

	if (len == 0 || len > CTL_ENDPOINTS_MAX)
		return MP_EINVAL;
	while (start <= len) {
		const char *comma = strchr(s + start, ',');
		size_t end = comma != NULL ? (size_t)(comma - s) : len;

		if (end == start)
			return MP_EINVAL;
		memcpy(one, s + start, end - start);
		one[end - start] = '\0';
		if (ctl_check_node(one) != 0)
			return MP_EINVAL;
		start = end + 1;
	}
	return 0;
}

/* A cluster name becomes part of every etcd key ("/merpati/NAME/"): the
 * node id alphabet, so it can never reach outside its prefix. */
static int ctl_check_cluster_name(const char *s)
{
	size_t len = strlen(s), i;

	if (len == 0 || len > CTL_CLUSTER_NAME_MAX)
		return MP_EINVAL;
	for (i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)s[i];

		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' ||
		      ch == '-'))
			return MP_EINVAL;
	}
	return strcmp(s, ".") == 0 || strcmp(s, "..") == 0 ? MP_EINVAL : 0;
}

static const char *ctl_env(const char *name)
{
	const char *v = getenv(name);

	return v != NULL && *v != '\0' ? v : NULL;
}

/* Decides what the command talks to: --node / $MERPATI_NODE, or the
 * cluster through --etcd / $MERPATI_ETCD. An --etcd on the command line
 * always routes (--node then only serves node info); $MERPATI_ETCD routes
 * unless --node was given, so "--node X" keeps meaning that node. Exit
 * status. */
static int ctl_resolve_targets(struct ctl *c, const struct ctl_command *cmd)
{
	if (c->opt.etcd == NULL && !c->opt.node_given)
		c->opt.etcd = ctl_env("MERPATI_ETCD");
	if (c->opt.cluster == NULL)
		c->opt.cluster = ctl_env("MERPATI_CLUSTER");
	if (c->opt.cluster == NULL)
		c->opt.cluster = "default";
	if (c->opt.node == NULL)
		c->opt.node = ctl_env("MERPATI_NODE");

	if (c->opt.cluster_given && c->opt.etcd == NULL)
		return ctl_usage_error(c, "--cluster needs --etcd ENDPOINTS "
				       "(or MERPATI_ETCD)");
	if (cmd->kind == CTL_KIND_CLUSTER && c->opt.etcd == NULL)
		return ctl_usage_error(c, "this command needs the cluster's "
				       "etcd: use --etcd HOST:PORT[,...] or "
				       "set MERPATI_ETCD");
	if (c->opt.etcd != NULL) {
		if (ctl_check_endpoints(c->opt.etcd) != 0) {
			ctl_err(c, "bad etcd endpoints \"%s\": expected "
				"HOST:PORT[,HOST:PORT...]", c->opt.etcd);
			return CTL_EXIT_INVALID;
		}
		if (ctl_check_cluster_name(c->opt.cluster) != 0) {
			ctl_err(c, "bad cluster name \"%s\": expected 1..%d "
				"of A-Z a-z 0-9 _ . -", c->opt.cluster,
				CTL_CLUSTER_NAME_MAX);
			return CTL_EXIT_INVALID;
		}
	}
	if (cmd->kind == CTL_KIND_NODE) {
		/* One node's own numbers: routing has no say. */
		c->opt.etcd = NULL;
	}
	if (cmd->kind == CTL_KIND_CLUSTER ||
	    (cmd->kind == CTL_KIND_STORE && c->opt.etcd != NULL))
		return CTL_EXIT_OK;

	if (c->opt.node == NULL)
		return ctl_usage_error(c, "no node given: use --node HOST:PORT "
				       "or set MERPATI_NODE%s",
				       cmd->kind == CTL_KIND_NODE ?
				       " (also with --etcd: this command asks "
				       "one node)" : " (or --etcd ENDPOINTS)");
	if (ctl_check_node(c->opt.node) != 0) {
		ctl_err(c, "bad node address \"%s\": expected HOST:PORT",
			c->opt.node);
		return CTL_EXIT_INVALID;
	}
	return CTL_EXIT_OK;
}

static int ctl_run(struct ctl *c, int argc, char **argv)
{
	char *pos[CTL_MAX_ARGS];
	const struct ctl_command *cmd;
	char what[64];
	int npos = 0, used = 0, help = 0, ret;
	unsigned extra;

	ret = ctl_parse_argv(c, argc, argv, pos, &npos, &help);
	if (ret != CTL_EXIT_OK)
		return ret;
	if (npos == 0 || strcmp(pos[0], "help") == 0) {
		if (npos == 0 && !help) {
			ctl_print_usage(stderr);
			return CTL_EXIT_USAGE;
		}
		ctl_print_usage(stdout);
		return CTL_EXIT_OK;
	}
	cmd = ctl_find(pos, npos, &used);
	if (cmd == NULL) {
		if (!ctl_group_known(pos[0])) {
			ctl_err(NULL, "unknown command \"%s\" (see "
				"'merpatictl help')", pos[0]);
			return CTL_EXIT_USAGE;
		}
		if (npos < 2)
			ctl_err(NULL, "%s: missing subcommand", pos[0]);
		else
			ctl_err(NULL, "%s: unknown subcommand \"%s\"",
				pos[0], pos[1]);
		ctl_print_group_usage(pos[0]);
		return CTL_EXIT_USAGE;
	}
	ctl_current = cmd;
	if (cmd->verb != NULL)
		snprintf(what, sizeof what, "%s %s", cmd->group, cmd->verb);
	else
		snprintf(what, sizeof what, "%s", cmd->group);
	c->what = what;
	if (help) {
		printf("usage: merpatictl %s\n",
		       cmd->usage != NULL ? cmd->usage : what);
		return CTL_EXIT_OK;
	}

	extra = c->opt.seen & ~cmd->opts;
	if (extra != 0) {
		size_t k;

		for (k = 0; k < sizeof ctl_optdefs / sizeof ctl_optdefs[0];
		     k++) {
			if (ctl_optdefs[k].bit & extra)
				break;
		}
		ret = ctl_usage_error(c, "option --%s does not apply here",
				      k < sizeof ctl_optdefs /
				      sizeof ctl_optdefs[0] ?
				      ctl_optdefs[k].name : "?");
		c->what = NULL;
		return ret;
	}
	npos -= used;
	if (npos < cmd->min_args ||
	    (cmd->max_args >= 0 && npos > cmd->max_args)) {
		ret = ctl_usage_error(c, "%s arguments",
				      npos < cmd->min_args ? "missing" :
				      "too many");
		c->what = NULL;
		return ret;
	}

	ret = ctl_resolve_targets(c, cmd);
	if (ret != CTL_EXIT_OK) {
		c->what = NULL;
		return ret;
	}

	ret = cmd->run(c, pos + used, npos);
	c->what = NULL;
	return ret;
}

int main(int argc, char **argv)
{
	struct ctl c;
	int ret, err;

	memset(&c, 0, sizeof c);
	c.opt.timeout_ms = (int64_t)CTL_DEFAULT_TIMEOUT_S * 1000;

	err = ctl_signals_start();
	if (err != 0) {
		fprintf(stderr, "merpatictl: cannot set up signals: %s\n",
			strerror(-err));
		return CTL_EXIT_ERROR;
	}
	mp_log_set_prefix("proc=merpatictl");
	mp_log_set_level(MP_LOG_ERROR);
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0)
			break;
		if (strcmp(argv[i], "--verbose") == 0)
			mp_log_set_level(MP_LOG_DEBUG);
	}

	ret = ctl_run(&c, argc, argv);

	/* The route's watch and channels before the client they use, all
	 * before gRPC shuts down. */
	ctl_cluster_close(&c);
	mp_rpc_channel_close(&c.ch);
	if (c.rpc_started)
		mp_rpc_shutdown();
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "merpatictl: writing to stdout failed: %s\n",
			strerror(errno));
		if (ret == CTL_EXIT_OK)
			ret = CTL_EXIT_ERROR;
	}
	return ret;
}
