/*
 * fe_tls: every use of OpenSSL's libssl in Merpati (STYLE.md: one folder
 * includes each foreign library). Server side for the frontends' libevent
 * loops, client side for outbound SMTP on blocking sockets.
 *
 * Server: a set of certificate/key pairs read from files; the first is the
 * default, the others are picked by SNI (exact name or "*.domain" wildcard
 * from each certificate's subjectAltName DNS entries, else its CN).
 * TLS 1.2 minimum, no compression, no renegotiation, server cipher order.
 * fe_tls_reload() re-reads every file and swaps the set atomically; a
 * reload that fails keeps the old set and returns the error. Connections
 * already open keep the context they started with (SSL_CTX is refcounted),
 * so a reload never drops a connection.
 *
 * Client: opportunistic by default (no verification, as RFC 3207 §4.1
 * allows for MTA-to-MTA); optional verification against a CA file.
 *
 * Thread-safety: fe_tls_* server calls may run on any loop thread while
 * another thread reloads. Never: log key material; accept SSLv3/TLS 1.0/1.1.
 */
#ifndef FE_TLS_H
#define FE_TLS_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct bufferevent;
struct fe_tls;
struct fe_tls_client;
struct fe_tls_stream;

struct fe_tls_cert {
	const char *cert_file;  /* PEM chain, leaf first */
	const char *key_file;   /* PEM private key */
};

struct fe_tls_conf {
	const struct fe_tls_cert *certs;  /* borrowed; certs[0] is the default */
	size_t ncerts;
	const char *ciphers;       /* TLS 1.2 cipher list; NULL = a modern default */
	const char *ciphersuites;  /* TLS 1.3 suites; NULL = OpenSSL's default */
};

/* Server set. 0, or MP_E* with *error_r (malloc'd; caller frees) naming the
 * file and OpenSSL's reason. The conf is copied. */
int fe_tls_open(const struct fe_tls_conf *conf, struct fe_tls **t_r,
		char **error_r);
/* Re-read the files of the conf given to open. 0 or MP_E* with *error_r;
 * on failure nothing changes. */
int fe_tls_reload(struct fe_tls *t, char **error_r);
void fe_tls_free(struct fe_tls **t);

/* A bufferevent doing the server side of TLS on a freshly accepted socket
 * (implicit TLS, ports 465/993/995). Takes ownership of fd (closed when the
 * bufferevent is freed). NULL on failure (fd is then closed). */
struct bufferevent *fe_tls_bev_accept(struct fe_tls *t, struct event_base *base,
				      int fd);
/* STARTTLS: a TLS filter over an existing plaintext bufferevent, which the
 * new one owns (freed with it). The caller must have emptied the
 * underlying input first (RFC 3207 §4.2: plaintext pipelined after STARTTLS
 * is discarded, never treated as protected). NULL on failure; the
 * underlying bufferevent is then still the caller's. */
struct bufferevent *fe_tls_bev_starttls(struct fe_tls *t,
					struct event_base *base,
					struct bufferevent *underlying);
/* After the handshake: a line for Received: headers and logs, e.g.
 * "version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384 bits=256/256".
 * Writes into buf (always NUL-terminated); 0, or MP_ENOENT when bev
 * does no TLS or has not finished its handshake. */
int fe_tls_bev_describe(struct bufferevent *bev, char *buf, size_t size);
/* The SNI name the client sent, copied into buf ("" if none). */
int fe_tls_bev_sni(struct bufferevent *bev, char *buf, size_t size);

/* ---- client side, blocking sockets with deadlines (outbound SMTP) ---- */

struct fe_tls_client_conf {
	const char *ca_file;  /* NULL: do not verify (opportunistic TLS) */
};
int fe_tls_client_open(const struct fe_tls_client_conf *conf,
		       struct fe_tls_client **c_r, char **error_r);
void fe_tls_client_free(struct fe_tls_client **c);

/* Handshake on a connected blocking or non-blocking socket fd (borrowed:
 * the caller closes it after fe_tls_stream_free). sni may be NULL.
 * deadline_ms is an absolute CLOCK_MONOTONIC time in ms. 0, MP_ETIMEDOUT,
 * or MP_EIO/MP_EPERM (verification failed) with *error_r. */
int fe_tls_client_handshake(struct fe_tls_client *c, int fd, const char *sni,
			    int64_t deadline_ms, struct fe_tls_stream **s_r,
			    char **error_r);
/* Read up to len bytes: >0 bytes read, 0 at clean close, or MP_ETIMEDOUT /
 * MP_EIO. */
long fe_tls_stream_read(struct fe_tls_stream *s, void *buf, size_t len,
			int64_t deadline_ms);
/* Write all len bytes: 0, MP_ETIMEDOUT or MP_EIO. */
int fe_tls_stream_write(struct fe_tls_stream *s, const void *buf, size_t len,
			int64_t deadline_ms);
int fe_tls_stream_describe(struct fe_tls_stream *s, char *buf, size_t size);
/* The peer certificate's subjectAltName DNS names (its CN if it has none),
 * space-separated, into buf (always NUL-terminated, truncated if need be):
 * for logs. 0, or MP_ENOENT when the peer sent no certificate. Verified
 * only when the client has a ca_file. */
int fe_tls_stream_peer_names(struct fe_tls_stream *s, char *buf, size_t size);
/* Sends close_notify (best effort, bounded by 1 s), frees. Safe on NULL. */
void fe_tls_stream_free(struct fe_tls_stream **s);

/* Monotonic clock in ms (for deadlines). */
int64_t fe_tls_now_ms(void);

#endif
