/*
 * fe_server: the machinery every protocol of merpati-frontend runs on.
 *
 * One libevent loop per thread (STYLE.md "Concurrency"); each listening
 * socket is watched by every loop and the kernel hands an accepted
 * connection to one of them, which owns it for its whole life. A
 * connection is a protocol state machine (struct fe_proto) over one
 * bufferevent, with TLS from frontend/tls underneath when asked.
 *
 * Blocking work (routed gRPC calls to the storage cluster, crypt) never runs
 * on a loop: it goes to a worker pool as a struct fe_job, and its done()
 * runs back on the loop that owns the connection. A connection with jobs in
 * flight is kept alive (not freed) until they have come back, so done()
 * never sees freed memory; it checks fe_conn_closed() before writing.
 *
 * Limits: connections in all and per client IP, output buffered per
 * connection (reading pauses while a client does not read its replies),
 * idle and total session time.
 *
 * Never: block a loop; touch a connection from another loop's thread;
 * free a connection with a job in flight.
 */
#ifndef FE_SERVER_H
#define FE_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct evbuffer;
struct event_base;
struct bufferevent;
struct fe_server;
struct fe_loop;
struct fe_conn;
struct fe_tls;
struct mp_route;

enum fe_tls_mode {
	FE_TLS_NONE,      /* plaintext; STARTTLS if the protocol offers it */
	FE_TLS_IMPLICIT,  /* TLS from the first byte (465, 993, 995) */
};

/* What a protocol implements. All callbacks run on the connection's loop. */
struct fe_proto {
	const char *name;  /* "smtp", "submission", ... for logs */
	/* The line sent (plaintext listeners only) to a connection refused by
	 * a connection limit, CRLF included; NULL: close silently. */
	const char *busy;
	/* A new connection: allocate the session, send the greeting. Return
	 * NULL to refuse (the connection is closed). */
	void *(*open)(struct fe_conn *c, void *proto_ctx);
	/* New input is in fe_conn_input(c). */
	void (*on_input)(void *sess);
	/* The idle or session timer fired: say goodbye (the core closes after
	 * the output is flushed). total is true for the session limit. */
	void (*on_timeout)(void *sess, bool total);
	/* The server is shutting down: finish or abort politely. Called once;
	 * the session calls fe_conn_close_flush() when it is done. */
	void (*on_shutdown)(void *sess);
	/* The connection is gone (peer closed, error, or close requested) and
	 * no job is in flight: free the session. */
	void (*free)(void *sess);
};

struct fe_listener_conf {
	const char *addr;              /* "127.0.0.1:2525", "[::1]:587" */
	enum fe_tls_mode tls;
	const struct fe_proto *proto;  /* borrowed, static */
	void *proto_ctx;               /* borrowed; passed to proto->open */
};

struct fe_server_conf {
	unsigned loops;                /* event loop threads (0 = 1) */
	unsigned workers;              /* blocking-call worker threads */
	uint64_t max_connections;      /* in all */
	uint64_t max_per_ip;           /* per client address */
	uint64_t max_output;           /* bytes of replies queued per connection */
	uint64_t idle_timeout_ms;      /* default per connection; protocols change it */
	uint64_t session_timeout_ms;   /* whole connection; 0 = none */
	struct fe_tls *tls;            /* borrowed; NULL: no TLS */
};

int fe_server_create(const struct fe_server_conf *conf, struct fe_server **s_r,
		     char **error_r);
/* Bind (now, so errors show at start-up) and watch on every loop. The conf
 * is copied. 0 or MP_E* with *error_r. The bound port goes to *port_r
 * (may be NULL) — useful with port 0. */
int fe_server_listen(struct fe_server *s, const struct fe_listener_conf *l,
		     int *port_r, char **error_r);
/* Start the loop threads. */
int fe_server_start(struct fe_server *s, char **error_r);
/* Graceful stop: close listeners, ask every session to finish
 * (proto->on_shutdown), wait up to deadline_ms for them, then drop what is
 * left, stop loops and workers. Blocks the caller. */
void fe_server_stop(struct fe_server *s, uint64_t deadline_ms);
void fe_server_free(struct fe_server **s);
/* Connections open now (all loops). */
uint64_t fe_server_connections(struct fe_server *s);

/* ---- connections (call only on the connection's loop) ---- */

struct evbuffer *fe_conn_input(struct fe_conn *c);
/* Queue output. 0, or MP_ENOSPC when more than max_output is queued (the
 * caller should close: the client does not read). */
int fe_conn_write(struct fe_conn *c, const void *data, size_t len);
/* Queue a malloc'd buffer without copying it, and without the max_output
 * check: for a session that makes its answers in bounded batches and waits
 * for fe_conn_output_len to drop before the next (an IMAP FETCH, a POP3
 * RETR). Takes data (freed when sent or on error). 0, MP_ESTATE, MP_ENOMEM. */
int fe_conn_write_take(struct fe_conn *c, char *data, size_t len);
int fe_conn_printf(struct fe_conn *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Bytes of output not yet sent. */
size_t fe_conn_output_len(struct fe_conn *c);
/* Stop reading input until resumed (a session waiting for a job keeps
 * pipelined input in the buffer rather than processing it). */
void fe_conn_pause(struct fe_conn *c);
void fe_conn_resume(struct fe_conn *c);
/* Run the protocol's on_input again from the loop (a session that
 * stopped after a bounded amount of work with input left). */
void fe_conn_kick(struct fe_conn *c);
/* Flush output, then close. Input after this is ignored. */
void fe_conn_close_flush(struct fe_conn *c);
/* Close now (output dropped). */
void fe_conn_close(struct fe_conn *c);
bool fe_conn_closed(const struct fe_conn *c);
void fe_conn_set_idle_timeout(struct fe_conn *c, uint64_t ms);
/* Lift the session time limit for this connection (IMAP: a client stays
 * connected for days; its idle timeout still applies). */
void fe_conn_no_session_limit(struct fe_conn *c);

/* STARTTLS: the caller has written its "go ahead" reply; discard unread
 * plaintext input (RFC 3207 §4.2 / RFC 2595 §3.1: never treat it as
 * protected), flush, and start the server side of TLS. 0, or MP_EUNAVAIL
 * when the server has no TLS, or MP_EIO. */
int fe_conn_starttls(struct fe_conn *c);
bool fe_conn_tls_active(const struct fe_conn *c);
/* COMPRESS=DEFLATE (RFC 4978): everything written so far goes out as is,
 * everything after (both ways) is raw deflate. 0, MP_ESTATE (already on),
 * MP_ENOMEM. */
int fe_conn_compress(struct fe_conn *c);
/* "version=TLSv1.3 cipher=... bits=256/256", or "" without TLS. */
const char *fe_conn_tls_info(struct fe_conn *c);
bool fe_conn_tls_offered(const struct fe_conn *c);  /* server has TLS */
/* The connection's event loop, for timers of its own (freed by the
 * session before its free() returns). */
struct event_base *fe_conn_base(struct fe_conn *c);

const char *fe_conn_peer_ip(const struct fe_conn *c);   /* "127.0.0.1" */
uint16_t fe_conn_peer_port(const struct fe_conn *c);
const char *fe_conn_id(const struct fe_conn *c);        /* for logs */
struct fe_server *fe_conn_server(struct fe_conn *c);
bool fe_server_stopping(const struct fe_server *s);

/* ---- jobs: blocking work on the worker pool ---- */

struct fe_job {
	void (*run)(struct fe_job *j);   /* on a worker thread */
	void (*done)(struct fe_job *j);  /* back on the connection's loop */
	struct fe_conn *conn;            /* borrowed; set by fe_conn_submit */
	struct fe_job *next;             /* internal */
};

/* Run j->run on a worker, then j->done on c's loop. c stays allocated
 * until done has returned. The job is the caller's memory (usually part
 * of the session) and must live until done. */
void fe_conn_submit(struct fe_conn *c, struct fe_job *j);

#endif
