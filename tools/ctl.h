/*
 * ctl: what the pieces of merpatictl share: parsed options, the connection
 * to one node or, with --etcd, to the cluster (routing through mp_route),
 * argument checks, stdin readers and output helpers.
 *
 * Command handlers return the process exit status (enum ctl_exit), not an
 * MP_E* code: a CLI's result is its exit status, and every error has already
 * been printed on stderr where it happened. Handlers check every argument
 * before they read stdin or talk to the node, so a refused command changes
 * nothing. merpatictl never takes a password or a hash from argv, never
 * prints a stored hash, and wipes every buffer that held a password.
 */
#ifndef CTL_H
#define CTL_H

#include <stddef.h>
#include <stdint.h>
#include <protobuf-c/protobuf-c.h>

#include "mailstore.pb-c.h"

enum ctl_exit {
	CTL_EXIT_OK = 0,
	CTL_EXIT_USAGE = 1,     /* unknown command or option, wrong arity */
	CTL_EXIT_NOTFOUND = 2,
	CTL_EXIT_EXISTS = 3,
	CTL_EXIT_INVALID = 4,   /* a bad value, ours or the node's verdict */
	CTL_EXIT_UNAVAIL = 5,   /* cannot reach the node, timeout, not leader */
	CTL_EXIT_ERROR = 6,     /* any other error, local I/O included */
};

/* Options a command may accept; the global ones are always allowed. */
enum ctl_opt_bit {
	CTL_OPT_QUOTA = 1u << 0,
	CTL_OPT_HASH_STDIN = 1u << 1,
	CTL_OPT_FLAGS = 1u << 2,
	CTL_OPT_COUNT = 1u << 3,
	CTL_OPT_SECONDS = 1u << 4,
	CTL_OPT_PAGE_SIZE = 1u << 5,
	CTL_OPT_JSON = 1u << 6,
	CTL_OPT_SHARD = 1u << 7,
};

struct ctl_opts {
	const char *node;      /* borrowed (argv or environment) */
	const char *etcd;      /* borrowed; non-NULL: route through the cluster */
	const char *cluster;   /* borrowed; the cluster name ("default") */
	int node_given;        /* --node was on the command line */
	int cluster_given;     /* --cluster was on the command line */
	int64_t timeout_ms;
	unsigned seen;         /* enum ctl_opt_bit given on the command line */
	const char *quota;     /* borrowed from argv */
	const char *flags;     /* borrowed from argv */
	uint64_t count;        /* 0 = not given */
	uint64_t seconds;      /* 0 = not given */
	uint32_t page_size;    /* 0 = the node's default */
	uint32_t shard;        /* --shard, when CTL_OPT_SHARD is in seen */
	int hash_stdin;
	int json;
	int verbose;
};

struct mp_rpc_channel;
struct mp_etcd;
struct mp_route;

#define CTL_TARGET_MAX 400

struct ctl {
	struct ctl_opts opt;
	const char *what;              /* "user add", for messages; static */
	struct mp_rpc_channel *ch;     /* owned; opened by the first call */
	int rpc_started;
	struct mp_etcd *etcd;          /* owned; opened by ctl_etcd_open */
	struct mp_route *route;        /* owned; opened by ctl_route_open */
	/* What the last call went to, for messages: the node address or
	 * "n1 (127.0.0.1:7001), leader of shard 5". */
	char target[CTL_TARGET_MAX];
};

/* A flag list parsed from text: pointers into one owned copy. */
struct ctl_flags {
	char **v;      /* owned array; strings point into storage */
	size_t n;
	char *storage; /* owned */
};

#define CTL_FLAGS_MAX 128
#define CTL_FLAG_LEN_MAX 255
#define CTL_MAILBOX_LEN_MAX 1000
#define CTL_USER_LEN_MAX 254
#define CTL_DOMAIN_LEN_MAX 253
#define CTL_BODY_CHUNK (1024u * 1024)
/* Leaves room in one gRPC message for the other fields of AppendRequest. */
#define CTL_BODY_MAX (63u * 1024 * 1024)
#define CTL_PAGES_MAX 1000000
#define CTL_ALIAS_TARGETS_MAX 100
#define CTL_QUEUE_ID_LEN_MAX 32

/* ---------------------------------------------------------- merpatictl.c */

/* Prints "merpatictl: <what>: <fmt...>" on stderr. */
void ctl_err(const struct ctl *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Prints the usage line of c->what and returns CTL_EXIT_USAGE. */
int ctl_usage_error(const struct ctl *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Unary MailStore call by method name. Returns CTL_EXIT_OK with *resp_r
 * (free with protobuf_c_message_free_unpacked), or the exit status after
 * printing the node's message. */
int ctl_call(struct ctl *c, const char *method, const ProtobufCMessage *req,
	     const ProtobufCMessageDescriptor *resp_desc,
	     ProtobufCMessage **resp_r);
/* ctl_call for a method that answers Empty: the reply is freed here. */
int ctl_call_empty(struct ctl *c, const char *method,
		   const ProtobufCMessage *req);
/* Opens the channel (and starts gRPC) if not yet done. Exit status. */
int ctl_connect(struct ctl *c);
/* Starts gRPC if not yet done (mp_rpc_init, once). */
void ctl_rpc_start(struct ctl *c);
/* The node or leader the last call went to, for messages. */
const char *ctl_target(const struct ctl *c);
/* Exit status for an MP_E* code. */
int ctl_exit_for(int err);
/* Prints an RPC error for method and returns its exit status. */
int ctl_rpc_error(struct ctl *c, const char *method, int err, const char *msg);
/* 1 once SIGINT/SIGTERM/SIGHUP arrived while a watch was running. */
int ctl_interrupted(void);
/* Let signals end the process at once (0) or only raise the flag (1). */
void ctl_set_soft_interrupt(int on);

/* ------------------------------------------------------------ ctl_util.c */

/* Lower-cases in place and checks "local@domain". 0 or MP_EINVAL. */
int ctl_check_user(char *user, const char **error_r);
/* Lower-cases in place and checks a domain name. 0 or MP_EINVAL. */
int ctl_check_domain(char *domain, const char **error_r);
int ctl_check_mailbox(const char *name, const char **error_r);
int ctl_check_uidset(const char *s, const char **error_r);
/* One UID (1..4294967295). */
int ctl_parse_uid(const char *s, uint32_t *uid_r);
/* Splits text on ',' and white space, checks each flag and writes system
 * flags in their RFC 3501 spelling. An empty text gives an empty list. */
int ctl_flags_parse(const char *text, struct ctl_flags *f, const char **error_r);
/* Appends the flags of more texts to f (for "msg flags ... FLAGS..."). */
int ctl_flags_parse_many(char **texts, int n, struct ctl_flags *f,
			 const char **error_r);
void ctl_flags_free(struct ctl_flags *f);

/* Reads one line from stdin into buf (size cap, NUL-terminated), without
 * its "\n" or "\r\n". On a terminal it prompts on stderr with echo off.
 * Refuses an empty line, a NUL byte, a longer line than max, or more input
 * after the line. The caller wipes buf. 0 or MP_EINVAL/MP_EIO. */
int ctl_read_line_stdin(const char *prompt, char *buf, size_t cap, size_t max,
			size_t *len_r, const char **error_r);
/* Restores the terminal if a secret read had turned echo off. Safe from the
 * signal thread. */
void ctl_tty_restore(void);
/* Reads all of stdin (at most max bytes) into a malloc'd buffer. */
int ctl_read_all_stdin(size_t max, uint8_t **data_r, size_t *len_r,
		       const char **error_r);

/* Writes all of data to stdout. 0 or MP_EIO. */
int ctl_write_stdout(const void *data, size_t len);

/* "2024-05-01T10:00:00Z" (or "-" for 0) into out. */
const char *ctl_fmt_time(uint64_t unix_s, char *out, size_t outlen);
/* "10M", "1536", "unlimited" (when unlimited_zero and n == 0). */
const char *ctl_fmt_size(uint64_t n, int unlimited_zero, char *out,
			 size_t outlen);
/* The name as is, or double-quoted with \" and \\ when it holds space,
 * quotes, backslashes or control bytes (so a line stays one record). */
const char *ctl_fmt_name(const char *s, char *out, size_t outlen);
/* "yescrypt", "sha512-crypt", ... for a stored hash; never any of its
 * salt or digest. */
const char *ctl_hash_scheme(const char *hash, char *out, size_t outlen);
const char *ctl_state_name(Merpati__V1__AccountState st);
/* "(\Seen \Flagged)" into out. */
const char *ctl_fmt_flags(char **flags, size_t n, char *out, size_t outlen);

/* --------------------------------------------------------- ctl_cluster.c */

/* With --etcd (c->opt.etcd != NULL): the etcd client on the cluster's
 * prefix "/merpati/{cluster}/", and the route over it. Both are opened on
 * first use and closed by ctl_cluster_close. Exit status. */
int ctl_etcd_open(struct ctl *c);
int ctl_route_open(struct ctl *c);
void ctl_cluster_close(struct ctl *c);
/* A MailStore call routed to the leader of the shard it concerns: the
 * user's shard (the request's "user" field), shard 0 for domain methods.
 * Mutations get a fresh request_id so the route's retries are safe.
 * Exit status, as ctl_call. */
int ctl_route_call(struct ctl *c, const char *method, const char *path,
		   const ProtobufCMessage *req,
		   const ProtobufCMessageDescriptor *resp_desc,
		   ProtobufCMessage **resp_r);
/* Points c->ch at the node that serves user: the leader of its shard with
 * --etcd, the --node otherwise (for streams, which mp_route does not
 * carry). Exit status. */
int ctl_connect_user(struct ctl *c, const char *user);
/* "user list" over the cluster: every live node lists the accounts of the
 * shards it leads; merged, deduplicated, sorted. domain may be "". */
int ctl_user_list_cluster(struct ctl *c, const char *domain);
/* The cluster's shard count: the shard map's with --etcd, else the
 * --node's (NodeInfo). Exit status. */
int ctl_shard_count(struct ctl *c, uint32_t *n_r);
/* Routing by shard: mp_route_call to the shard's leader with --etcd, the
 * --node otherwise (ctl_call routes requests with a "shard" field there
 * too; this is for callers that must tell NOT_LEADER apart). 0 with
 * *resp_r, or the MP_E* error with *error_r (malloc'd or NULL). */
int ctl_call_shard_raw(struct ctl *c, const char *method, uint32_t shard,
		       const ProtobufCMessage *req,
		       const ProtobufCMessageDescriptor *resp_desc,
		       ProtobufCMessage **resp_r, char **error_r);

/* ------------------------------------------------- command handlers */

int ctl_cmd_domain_add(struct ctl *c, char **args, int nargs);
int ctl_cmd_domain_list(struct ctl *c, char **args, int nargs);
int ctl_cmd_domain_del(struct ctl *c, char **args, int nargs);

int ctl_cmd_user_add(struct ctl *c, char **args, int nargs);
int ctl_cmd_user_list(struct ctl *c, char **args, int nargs);
int ctl_cmd_user_del(struct ctl *c, char **args, int nargs);
int ctl_cmd_user_passwd(struct ctl *c, char **args, int nargs);
int ctl_cmd_user_show(struct ctl *c, char **args, int nargs);
int ctl_cmd_user_quota(struct ctl *c, char **args, int nargs);
int ctl_cmd_user_disable(struct ctl *c, char **args, int nargs);
int ctl_cmd_user_enable(struct ctl *c, char **args, int nargs);

int ctl_cmd_mailbox_list(struct ctl *c, char **args, int nargs);
int ctl_cmd_mailbox_create(struct ctl *c, char **args, int nargs);
int ctl_cmd_mailbox_rename(struct ctl *c, char **args, int nargs);
int ctl_cmd_mailbox_delete(struct ctl *c, char **args, int nargs);

int ctl_cmd_msg_append(struct ctl *c, char **args, int nargs);
int ctl_cmd_msg_list(struct ctl *c, char **args, int nargs);
int ctl_cmd_msg_fetch(struct ctl *c, char **args, int nargs);
int ctl_cmd_msg_flags(struct ctl *c, char **args, int nargs);
int ctl_cmd_msg_expunge(struct ctl *c, char **args, int nargs);
int ctl_cmd_msg_copy(struct ctl *c, char **args, int nargs);
int ctl_cmd_msg_move(struct ctl *c, char **args, int nargs);

int ctl_cmd_watch(struct ctl *c, char **args, int nargs);
int ctl_cmd_node_info(struct ctl *c, char **args, int nargs);

int ctl_cmd_cluster_status(struct ctl *c, char **args, int nargs);

int ctl_cmd_alias_add(struct ctl *c, char **args, int nargs);
int ctl_cmd_alias_remove(struct ctl *c, char **args, int nargs);
int ctl_cmd_alias_show(struct ctl *c, char **args, int nargs);
int ctl_cmd_alias_list(struct ctl *c, char **args, int nargs);

int ctl_cmd_queue_list(struct ctl *c, char **args, int nargs);
int ctl_cmd_queue_show(struct ctl *c, char **args, int nargs);
int ctl_cmd_queue_retry(struct ctl *c, char **args, int nargs);
int ctl_cmd_queue_delete(struct ctl *c, char **args, int nargs);
int ctl_cmd_node_drain(struct ctl *c, char **args, int nargs);
int ctl_cmd_node_undrain(struct ctl *c, char **args, int nargs);
int ctl_cmd_node_remove(struct ctl *c, char **args, int nargs);

/* Pages of a paged List call kept together, with borrowed pointers to
 * their items for sorting across pages and nodes (user list, alias list). */
struct ctl_pages {
	ProtobufCMessage **pages;  /* owned */
	size_t n_pages, cap_pages;
	const void **v;            /* borrowed from pages */
	size_t n, cap;
};
/* Keeps page (takes it on success) and points at its n items (NULL items
 * are skipped). 0 or MP_ENOMEM (page is still the caller's). */
int ctl_pages_add(struct ctl_pages *l, ProtobufCMessage *page, void *const *items,
		  size_t n);
void ctl_pages_free(struct ctl_pages *l);

#endif
