/*
 * fe_tls: OpenSSL for the frontends. Server side builds one SSL_CTX per
 * certificate, picks one by SNI and hands libevent an SSL for each accepted
 * or STARTTLS connection; client side runs TLS over a borrowed socket with
 * poll() deadlines for outbound SMTP.
 *
 * Lifetimes (the subtle part): a "set" is the array of contexts built from
 * one reading of the files. The set hangs off its default context (ctx 0)
 * as ex_data, and owns references to the other contexts; ctx 0 owns the
 * set. struct fe_tls holds one reference to the current ctx 0. Every SSL
 * made from ctx 0 holds a reference to it for its whole life (as its
 * session_ctx even after SNI switched it with SSL_set_SSL_CTX), so the set
 * that the SNI callback reads lives as long as any connection that may
 * still run a handshake with it, and a reload only drops our reference.
 *
 * Never: log or expose key material; accept TLS < 1.2 on the server; leave
 * errors on a thread's OpenSSL error queue (libevent reads that queue to
 * decide whether a connection failed, so a stale entry would fail an
 * unrelated connection on the same loop thread).
 */
#include "fe_tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/buffer.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "mp_error.h"

#define FE_TLS_MAX_CERTS 1024       /* certificates in one server set */
#define FE_TLS_MAX_NAMES 4096       /* names taken from one certificate */
#define FE_TLS_NAME_MAX 253         /* RFC 1035 §2.3.4, text form */
#define FE_TLS_ERR_MAX 4            /* OpenSSL errors quoted in a message */
#define FE_TLS_SHUTDOWN_MS 1000     /* bound on close_notify at stream free */
#define FE_TLS_IO_CHUNK (1 << 30)   /* one SSL_read_ex/SSL_write_ex at most */

/* Mozilla "intermediate" TLS 1.2 list: forward secrecy and AEAD only. */
#define FE_TLS_DEFAULT_CIPHERS \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:" \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

/* Same value on every context of a set, so SSL_set_SSL_CTX keeps session
 * resumption consistent after an SNI switch. */
static const unsigned char fe_tls_sid_ctx[] = "merpati";

struct fe_tls_entry {
	SSL_CTX *ctx;   /* owned for entries 1..n-1; entry 0's ctx owns the set */
	char **names;   /* owned; lowercase DNS names or patterns "*.domain" */
	size_t nnames;
};

struct fe_tls_set {
	struct fe_tls_entry *e;  /* owned */
	size_t n;
};

struct fe_tls {
	pthread_mutex_t lock;      /* guards cur */
	SSL_CTX *cur;              /* owned reference; the current set hangs off it */
	struct fe_tls_cert *certs; /* owned, and the strings in it */
	size_t ncerts;
	char *ciphers;             /* owned; NULL = default */
	char *ciphersuites;        /* owned; NULL = OpenSSL's */
};

struct fe_tls_client {
	SSL_CTX *ctx;  /* owned */
	bool verify;
};

struct fe_tls_stream {
	SSL *ssl;       /* owned */
	int fd;         /* borrowed */
	int fd_flags;   /* the fd's flags before we made it non-blocking */
	bool broken;    /* a fatal error happened: no close_notify */
};

/* ---- errors ---- */

/* Appends to out (size, *len used so far), truncating; stays NUL-terminated. */
static void fe_tls_append(char *out, size_t size, size_t *len, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void fe_tls_append(char *out, size_t size, size_t *len, const char *fmt, ...)
{
	va_list ap;

	if (*len + 1 >= size)
		return;
	va_start(ap, fmt);
	int n = vsnprintf(out + *len, size - *len, fmt, ap);
	va_end(ap);
	if (n < 0)
		out[*len] = '\0';
	else if ((size_t)n >= size - *len)
		*len = size - 1;
	else
		*len += (size_t)n;
}

/* "<prefix>: <OpenSSL errors>" into a new string, draining the queue. */
static char *fe_tls_errmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *fe_tls_errmsg(const char *fmt, ...)
{
	char out[1024];
	size_t len;
	va_list ap;

	va_start(ap, fmt);
	int n = vsnprintf(out, sizeof(out), fmt, ap);
	va_end(ap);
	len = n < 0 ? 0 : (size_t)n < sizeof(out) ? (size_t)n : sizeof(out) - 1;
	out[len] = '\0';

	unsigned long e;
	const char *data;
	int flags, count = 0;
	while ((e = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0) {
		if (count++ >= FE_TLS_ERR_MAX)
			continue;  /* keep draining */
		char sysbuf[128];
		const char *lib = ERR_lib_error_string(e);
		const char *reason;
		if (ERR_SYSTEM_ERROR(e)) {
			lib = "system";
			reason = strerror_r((int)ERR_GET_REASON(e), sysbuf, sizeof(sysbuf));
		} else {
			reason = ERR_reason_error_string(e);
		}
		if (reason == NULL) {
			snprintf(sysbuf, sizeof(sysbuf), "error %lx", e);
			reason = sysbuf;
		}
		fe_tls_append(out, sizeof(out), &len, "%s", count == 1 ? ": " : "; ");
		if (lib != NULL)
			fe_tls_append(out, sizeof(out), &len, "%s: ", lib);
		fe_tls_append(out, sizeof(out), &len, "%s", reason);
		if ((flags & ERR_TXT_STRING) != 0 && data != NULL && data[0] != '\0')
			fe_tls_append(out, sizeof(out), &len, " (%s)", data);
	}
	if (count == 0)
		fe_tls_append(out, sizeof(out), &len, ": unknown error");
	return strdup(out);
}

static void fe_tls_set_error(char **error_r, char *msg)
{
	if (error_r != NULL)
		*error_r = msg;
	else
		free(msg);
}

static void fe_tls_fail(char **error_r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* An error that is not OpenSSL's: the message as given. */
static void fe_tls_fail(char **error_r, const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	fe_tls_set_error(error_r, strdup(buf));
}

/* ---- names ---- */

static void fe_tls_names_free(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

/* Appends a lowercase copy of (p, len) unless it is empty, too long or holds
 * a NUL (a certificate may; such a name can match nothing we compare). */
static int fe_tls_names_add(char ***names, size_t *n, const unsigned char *p, size_t len)
{
	if (len == 0 || len > FE_TLS_NAME_MAX || memchr(p, '\0', len) != NULL)
		return 0;
	if (*n >= FE_TLS_MAX_NAMES)
		return 0;
	char **nv = realloc(*names, (*n + 1) * sizeof(*nv));
	if (nv == NULL)
		return MP_ENOMEM;
	*names = nv;
	char *s = malloc(len + 1);
	if (s == NULL)
		return MP_ENOMEM;
	for (size_t i = 0; i < len; i++)
		s[i] = (p[i] >= 'A' && p[i] <= 'Z') ? (char)(p[i] - 'A' + 'a') : (char)p[i];
	s[len] = '\0';
	nv[(*n)++] = s;
	return 0;
}

/* The DNS names of x's subjectAltName, or its CN when it has none
 * (RFC 6125 §6.4.4: the CN only counts without DNS SANs). */
static int fe_tls_cert_names(X509 *x, char ***names_r, size_t *n_r)
{
	char **names = NULL;
	size_t n = 0;
	int ret = 0;

	GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	if (gens != NULL) {
		int count = sk_GENERAL_NAME_num(gens);
		for (int i = 0; i < count && ret == 0; i++) {
			const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
			if (g->type != GEN_DNS)
				continue;
			ret = fe_tls_names_add(&names, &n, ASN1_STRING_get0_data(g->d.dNSName),
					       (size_t)ASN1_STRING_length(g->d.dNSName));
		}
		GENERAL_NAMES_free(gens);
	}
	if (ret == 0 && n == 0) {
		X509_NAME *subj = X509_get_subject_name(x);
		int idx = subj != NULL ? X509_NAME_get_index_by_NID(subj, NID_commonName, -1) : -1;
		if (idx >= 0) {
			unsigned char *cn = NULL;
			int len = ASN1_STRING_to_UTF8(&cn, X509_NAME_ENTRY_get_data(
							      X509_NAME_get_entry(subj, idx)));
			if (len > 0)
				ret = fe_tls_names_add(&names, &n, cn, (size_t)len);
			OPENSSL_free(cn);
		}
	}
	ERR_clear_error();
	if (ret != 0) {
		fe_tls_names_free(names, n);
		return ret;
	}
	*names_r = names;
	*n_r = n;
	return 0;
}

/* host against one certificate name: exact, or "*.rest" standing for
 * exactly one non-empty leftmost label (RFC 6125 §6.4.3), both ignoring
 * case. */
static bool fe_tls_name_match(const char *pattern, const char *host, bool wildcard)
{
	if (!wildcard)
		return strcasecmp(pattern, host) == 0;
	if (pattern[0] != '*' || pattern[1] != '.' || pattern[2] == '\0')
		return false;
	const char *dot = strchr(host, '.');
	if (dot == NULL || dot == host)
		return false;
	return strcasecmp(dot + 1, pattern + 2) == 0;
}

/* The entry for an SNI name: first an exact match in any certificate,
 * then a wildcard match, else the default (0). */
static size_t fe_tls_set_find(const struct fe_tls_set *set, const char *sni)
{
	char host[FE_TLS_NAME_MAX + 2];
	size_t len = strnlen(sni, sizeof(host));

	if (len == 0 || len >= sizeof(host))
		return 0;
	memcpy(host, sni, len);
	host[len] = '\0';
	if (host[len - 1] == '.')  /* an absolute name means the same host */
		host[len - 1] = '\0';
	if (host[0] == '\0')
		return 0;
	for (int pass = 0; pass < 2; pass++) {
		for (size_t i = 0; i < set->n; i++) {
			for (size_t j = 0; j < set->e[i].nnames; j++) {
				if (fe_tls_name_match(set->e[i].names[j], host, pass == 1))
					return i;
			}
		}
	}
	return 0;
}

/* Space-separated names into buf, truncated, always NUL-terminated. */
static void fe_tls_names_join(char **names, size_t n, char *buf, size_t size)
{
	size_t off = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < n; i++) {
		int w = snprintf(buf + off, size - off, "%s%s", i > 0 ? " " : "", names[i]);
		if (w < 0 || (size_t)w >= size - off)
			return;
		off += (size_t)w;
	}
}

/* ---- server set ---- */

static pthread_once_t fe_tls_once = PTHREAD_ONCE_INIT;
static int fe_tls_set_idx = -1;

static void fe_tls_set_free(struct fe_tls_set *set)
{
	if (set == NULL)
		return;
	for (size_t i = 0; i < set->n; i++) {
		if (i > 0)
			SSL_CTX_free(set->e[i].ctx);
		fe_tls_names_free(set->e[i].names, set->e[i].nnames);
	}
	free(set->e);
	free(set);
}

/* ex_data free callback: runs when ctx 0's last reference goes. */
static void fe_tls_set_exfree(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx,
			      long argl, void *argp)
{
	fe_tls_set_free(ptr);
}

static void fe_tls_init_once(void)
{
	fe_tls_set_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, fe_tls_set_exfree);
}

static int fe_tls_sni_cb(SSL *ssl, int *alert, void *arg)
{
	const struct fe_tls_set *set = arg;
	const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);

	if (set == NULL || name == NULL)
		return SSL_TLSEXT_ERR_OK;
	/* Called again for a second ClientHello after HelloRetryRequest: the
	 * same name gives the same context, and SSL_set_SSL_CTX to the
	 * context already in use does nothing. */
	if (SSL_set_SSL_CTX(ssl, set->e[fe_tls_set_find(set, name)].ctx) == NULL) {
		*alert = SSL_AD_INTERNAL_ERROR;
		return SSL_TLSEXT_ERR_ALERT_FATAL;
	}
	return SSL_TLSEXT_ERR_OK;
}

/* OpenSSL's default asks for a key's passphrase on the terminal: a daemon
 * (or a reload) would hang. Encrypted keys are refused instead. */
static int fe_tls_no_passphrase(char *buf, int size, int rwflag, void *arg)
{
	return 0;
}

static SSL_CTX *fe_tls_ctx_new(const struct fe_tls *t, const struct fe_tls_cert *cert,
			       char **error_r)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (ctx == NULL) {
		fe_tls_set_error(error_r, fe_tls_errmsg("SSL_CTX_new"));
		return NULL;
	}
	/* No SSLv3/TLS 1.0/1.1 (RFC 8996). No compression (CRIME). No
	 * renegotiation (a client-triggered CPU sink, and the TLS 1.2 splice
	 * attacks). Our cipher order, not the client's. A peer dropping TCP
	 * without close_notify is an ordinary end of a mail session (mail
	 * protocols frame their own data), not a truncation attack: OpenSSL 3
	 * would otherwise report it as an error, which libevent's
	 * allow_dirty_shutdown does not recognise. */
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
		fe_tls_set_error(error_r, fe_tls_errmsg("minimum TLS version"));
		goto fail;
	}
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
				 SSL_OP_CIPHER_SERVER_PREFERENCE |
				 SSL_OP_IGNORE_UNEXPECTED_EOF);
	/* Idle IMAP connections are many; give their buffers back. */
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	const char *ciphers = t->ciphers != NULL ? t->ciphers : FE_TLS_DEFAULT_CIPHERS;
	if (SSL_CTX_set_cipher_list(ctx, ciphers) != 1) {
		fe_tls_set_error(error_r, fe_tls_errmsg("ciphers \"%s\"", ciphers));
		goto fail;
	}
	if (t->ciphersuites != NULL && SSL_CTX_set_ciphersuites(ctx, t->ciphersuites) != 1) {
		fe_tls_set_error(error_r, fe_tls_errmsg("ciphersuites \"%s\"", t->ciphersuites));
		goto fail;
	}
	if (SSL_CTX_set_session_id_context(ctx, fe_tls_sid_ctx, sizeof(fe_tls_sid_ctx) - 1) != 1) {
		fe_tls_set_error(error_r, fe_tls_errmsg("session id context"));
		goto fail;
	}
	SSL_CTX_set_default_passwd_cb(ctx, fe_tls_no_passphrase);
	if (SSL_CTX_use_certificate_chain_file(ctx, cert->cert_file) != 1) {
		fe_tls_set_error(error_r, fe_tls_errmsg("certificate %s", cert->cert_file));
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, cert->key_file, SSL_FILETYPE_PEM) != 1) {
		fe_tls_set_error(error_r, fe_tls_errmsg("key %s (for %s)", cert->key_file,
							cert->cert_file));
		goto fail;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		fe_tls_set_error(error_r, fe_tls_errmsg("key %s does not match certificate %s",
							cert->key_file, cert->cert_file));
		goto fail;
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	ERR_clear_error();
	return NULL;
}

/* Reads every file of t's conf into a new set; returns its ctx 0 (one
 * reference, which owns the set), or NULL with *error_r. */
static SSL_CTX *fe_tls_set_build(const struct fe_tls *t, char **error_r)
{
	struct fe_tls_set *set = calloc(1, sizeof(*set));
	if (set == NULL) {
		fe_tls_fail(error_r, "out of memory");
		return NULL;
	}
	set->e = calloc(t->ncerts, sizeof(*set->e));
	if (set->e == NULL) {
		free(set);
		fe_tls_fail(error_r, "out of memory");
		return NULL;
	}
	for (size_t i = 0; i < t->ncerts; i++) {
		set->e[i].ctx = fe_tls_ctx_new(t, &t->certs[i], error_r);
		if (set->e[i].ctx == NULL)
			goto fail;
		set->n = i + 1;
		X509 *leaf = SSL_CTX_get0_certificate(set->e[i].ctx);
		if (leaf == NULL) {
			fe_tls_fail(error_r, "certificate %s: no certificate", t->certs[i].cert_file);
			goto fail;
		}
		if (fe_tls_cert_names(leaf, &set->e[i].names, &set->e[i].nnames) != 0) {
			fe_tls_fail(error_r, "out of memory");
			goto fail;
		}
	}

	SSL_CTX *ctx0 = set->e[0].ctx;
	if (fe_tls_set_idx < 0 || SSL_CTX_set_ex_data(ctx0, fe_tls_set_idx, set) != 1) {
		fe_tls_set_error(error_r, fe_tls_errmsg("SSL_CTX_set_ex_data"));
		goto fail;
	}
	/* From here on ctx0 owns the set. */
	SSL_CTX_set_tlsext_servername_callback(ctx0, fe_tls_sni_cb);
	SSL_CTX_set_tlsext_servername_arg(ctx0, set);
	return ctx0;
fail:
	if (set->n > 0)
		SSL_CTX_free(set->e[0].ctx);  /* set_free skips entry 0's */
	fe_tls_set_free(set);
	ERR_clear_error();
	return NULL;
}

static void fe_tls_conf_free(struct fe_tls *t)
{
	for (size_t i = 0; i < t->ncerts; i++) {
		free((char *)t->certs[i].cert_file);
		free((char *)t->certs[i].key_file);
	}
	free(t->certs);
	free(t->ciphers);
	free(t->ciphersuites);
}

int fe_tls_open(const struct fe_tls_conf *conf, struct fe_tls **t_r, char **error_r)
{
	if (error_r != NULL)
		*error_r = NULL;
	*t_r = NULL;
	if (conf == NULL || conf->certs == NULL || conf->ncerts == 0) {
		fe_tls_fail(error_r, "no certificate configured");
		return MP_EINVAL;
	}
	if (conf->ncerts > FE_TLS_MAX_CERTS) {
		fe_tls_fail(error_r, "%zu certificates, at most %d", conf->ncerts,
			    FE_TLS_MAX_CERTS);
		return MP_ETOOBIG;
	}
	for (size_t i = 0; i < conf->ncerts; i++) {
		const struct fe_tls_cert *c = &conf->certs[i];
		if (c->cert_file == NULL || c->cert_file[0] == '\0' ||
		    c->key_file == NULL || c->key_file[0] == '\0') {
			fe_tls_fail(error_r, "certificate %zu: needs both a cert file and a key file", i);
			return MP_EINVAL;
		}
	}
	if (pthread_once(&fe_tls_once, fe_tls_init_once) != 0 || fe_tls_set_idx < 0) {
		fe_tls_fail(error_r, "cannot register OpenSSL ex_data");
		return MP_EIO;
	}

	struct fe_tls *t = calloc(1, sizeof(*t));
	if (t == NULL)
		goto nomem;
	t->certs = calloc(conf->ncerts, sizeof(*t->certs));
	if (t->certs == NULL) {
		free(t);
		goto nomem;
	}
	t->ncerts = conf->ncerts;
	bool ok = true;
	for (size_t i = 0; i < conf->ncerts; i++) {
		t->certs[i].cert_file = strdup(conf->certs[i].cert_file);
		t->certs[i].key_file = strdup(conf->certs[i].key_file);
		ok = ok && t->certs[i].cert_file != NULL && t->certs[i].key_file != NULL;
	}
	if (conf->ciphers != NULL)
		ok = ok && (t->ciphers = strdup(conf->ciphers)) != NULL;
	if (conf->ciphersuites != NULL)
		ok = ok && (t->ciphersuites = strdup(conf->ciphersuites)) != NULL;
	if (!ok) {
		fe_tls_conf_free(t);
		free(t);
		goto nomem;
	}
	if (pthread_mutex_init(&t->lock, NULL) != 0) {
		fe_tls_conf_free(t);
		free(t);
		fe_tls_fail(error_r, "pthread_mutex_init failed");
		return MP_EIO;
	}
	t->cur = fe_tls_set_build(t, error_r);
	if (t->cur == NULL) {
		fe_tls_free(&t);
		return MP_EINVAL;
	}
	*t_r = t;
	return 0;
nomem:
	fe_tls_fail(error_r, "out of memory");
	return MP_ENOMEM;
}

int fe_tls_reload(struct fe_tls *t, char **error_r)
{
	if (error_r != NULL)
		*error_r = NULL;
	/* Build outside the lock: reading files and keys is slow, and
	 * handshakes on the loop threads keep using the old set meanwhile. */
	SSL_CTX *fresh = fe_tls_set_build(t, error_r);
	if (fresh == NULL)
		return MP_EINVAL;
	if (pthread_mutex_lock(&t->lock) != 0) {
		SSL_CTX_free(fresh);
		fe_tls_fail(error_r, "pthread_mutex_lock failed");
		return MP_EIO;
	}
	SSL_CTX *old = t->cur;
	t->cur = fresh;
	(void)pthread_mutex_unlock(&t->lock);  /* cannot fail: we hold it */
	/* Connections still using the old set keep it alive (see the top). */
	SSL_CTX_free(old);
	return 0;
}

void fe_tls_free(struct fe_tls **tp)
{
	struct fe_tls *t = *tp;

	if (t == NULL)
		return;
	*tp = NULL;
	SSL_CTX_free(t->cur);
	(void)pthread_mutex_destroy(&t->lock);  /* nobody holds it any more */
	fe_tls_conf_free(t);
	free(t);
}

/* An SSL on the current set's default context. */
static SSL *fe_tls_ssl_new(struct fe_tls *t)
{
	if (pthread_mutex_lock(&t->lock) != 0)
		return NULL;
	SSL_CTX *ctx = t->cur;
	int ok = SSL_CTX_up_ref(ctx);
	(void)pthread_mutex_unlock(&t->lock);
	if (ok != 1)
		return NULL;
	/* SSL_new takes its own reference; ours only bridged the gap during
	 * which a reload might drop t's. */
	SSL *ssl = SSL_new(ctx);
	SSL_CTX_free(ctx);
	return ssl;
}

/* ---- libevent glue ---- */

struct bufferevent *fe_tls_bev_accept(struct fe_tls *t, struct event_base *base, int fd)
{
	ERR_clear_error();
	SSL *ssl = fe_tls_ssl_new(t);
	if (ssl == NULL) {
		ERR_clear_error();
		close(fd);
		return NULL;
	}
	/* The fd is given with bufferevent_setfd below, not here: when
	 * bufferevent_openssl_socket_new fails, libevent 2.1 may or may not
	 * have closed the fd it was given, depending on where it failed; with
	 * no fd yet, the fd is certainly still ours. (The SSL may then leak
	 * if libevent failed before taking it: only on malloc failure.) */
	struct bufferevent *bev = bufferevent_openssl_socket_new(
		base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
		BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (bev == NULL) {
		ERR_clear_error();
		close(fd);
		return NULL;
	}
	if (bufferevent_setfd(bev, fd) != 0) {
		/* libevent closes the fd at free only if it got as far as
		 * giving it to the SSL. */
		bool libevent_closes = SSL_get_fd(ssl) == fd;
		bufferevent_free(bev);
		if (!libevent_closes)
			close(fd);
		ERR_clear_error();
		return NULL;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return bev;
}

struct bufferevent *fe_tls_bev_starttls(struct fe_tls *t, struct event_base *base,
					struct bufferevent *underlying)
{
	/* RFC 3207 §4.2, §6: nothing received before the handshake may count
	 * as protected. Bytes a client pipelined after STARTTLS would be fed
	 * to the TLS layer as a ClientHello and fail the handshake at best;
	 * drop them (the caller should already have). */
	struct evbuffer *in = bufferevent_get_input(underlying);
	size_t pending = evbuffer_get_length(in);
	if (pending > 0 && evbuffer_drain(in, pending) != 0)
		return NULL;

	ERR_clear_error();
	SSL *ssl = fe_tls_ssl_new(t);
	if (ssl == NULL) {
		ERR_clear_error();
		return NULL;
	}
	/* On failure libevent 2.1 has not yet taken the underlying bufferevent
	 * (it takes it only once nothing can fail any more), so it stays the
	 * caller's; the SSL may leak on malloc failure, as above. */
	struct bufferevent *bev = bufferevent_openssl_filter_new(
		base, underlying, ssl, BUFFEREVENT_SSL_ACCEPTING,
		BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (bev == NULL) {
		ERR_clear_error();
		return NULL;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return bev;
}

static int fe_tls_describe_ssl(SSL *ssl, char *buf, size_t size)
{
	if (size == 0)
		return MP_EINVAL;
	buf[0] = '\0';
	if (ssl == NULL || !SSL_is_init_finished(ssl))
		return MP_ENOENT;
	const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
	if (c == NULL)
		return MP_ENOENT;
	int alg_bits = 0;
	int bits = SSL_CIPHER_get_bits(c, &alg_bits);
	snprintf(buf, size, "version=%s cipher=%s bits=%d/%d", SSL_get_version(ssl),
		 SSL_CIPHER_get_name(c), bits, alg_bits);
	return 0;
}

int fe_tls_bev_describe(struct bufferevent *bev, char *buf, size_t size)
{
	return fe_tls_describe_ssl(bev != NULL ? bufferevent_openssl_get_ssl(bev) : NULL,
				   buf, size);
}

int fe_tls_bev_sni(struct bufferevent *bev, char *buf, size_t size)
{
	if (size == 0)
		return MP_EINVAL;
	buf[0] = '\0';
	SSL *ssl = bev != NULL ? bufferevent_openssl_get_ssl(bev) : NULL;
	if (ssl == NULL)
		return MP_ENOENT;
	const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
	if (name != NULL)
		snprintf(buf, size, "%s", name);
	return 0;
}

/* ---- client side ---- */

int64_t fe_tls_now_ms(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
		return 0;  /* cannot fail for CLOCK_MONOTONIC on Linux */
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int fe_tls_client_open(const struct fe_tls_client_conf *conf, struct fe_tls_client **c_r,
		       char **error_r)
{
	if (error_r != NULL)
		*error_r = NULL;
	*c_r = NULL;
	struct fe_tls_client *c = calloc(1, sizeof(*c));
	if (c == NULL) {
		fe_tls_fail(error_r, "out of memory");
		return MP_ENOMEM;
	}
	ERR_clear_error();
	c->ctx = SSL_CTX_new(TLS_client_method());
	if (c->ctx == NULL) {
		fe_tls_set_error(error_r, fe_tls_errmsg("SSL_CTX_new"));
		free(c);
		return MP_EIO;
	}
	if (SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION) != 1) {
		fe_tls_set_error(error_r, fe_tls_errmsg("minimum TLS version"));
		fe_tls_client_free(&c);
		return MP_EIO;
	}
	SSL_CTX_set_options(c->ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
	if (conf != NULL && conf->ca_file != NULL) {
		if (SSL_CTX_load_verify_locations(c->ctx, conf->ca_file, NULL) != 1) {
			fe_tls_set_error(error_r, fe_tls_errmsg("CA file %s", conf->ca_file));
			fe_tls_client_free(&c);
			ERR_clear_error();
			return MP_EINVAL;
		}
		SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
		c->verify = true;
	} else {
		/* RFC 3207 §4.1: opportunistic TLS between MTAs, unverified,
		 * still beats plaintext against passive listeners. */
		SSL_CTX_set_verify(c->ctx, SSL_VERIFY_NONE, NULL);
	}
	*c_r = c;
	return 0;
}

void fe_tls_client_free(struct fe_tls_client **cp)
{
	struct fe_tls_client *c = *cp;

	if (c == NULL)
		return;
	*cp = NULL;
	SSL_CTX_free(c->ctx);
	free(c);
}

/* Waits until fd has events or deadline_ms passes: 0, MP_ETIMEDOUT, MP_EIO. */
static int fe_tls_wait(int fd, short events, int64_t deadline_ms)
{
	for (;;) {  /* each pass either returns or waits; bounded by the deadline */
		int64_t left = deadline_ms - fe_tls_now_ms();
		if (left <= 0)
			return MP_ETIMEDOUT;
		struct pollfd pfd = { .fd = fd, .events = events };
		int r = poll(&pfd, 1, left > INT_MAX ? INT_MAX : (int)left);
		if (r > 0)
			return 0;  /* also on POLLERR/POLLHUP: OpenSSL reports it */
		if (r < 0 && errno != EINTR)
			return MP_EIO;
	}
}

/* After a failed SSL call: wait if OpenSSL wants I/O (0), else the error. */
static int fe_tls_retry(struct fe_tls_stream *s, int r, int64_t deadline_ms)
{
	int e = SSL_get_error(s->ssl, r);

	if (e == SSL_ERROR_WANT_READ)
		return fe_tls_wait(s->fd, POLLIN, deadline_ms);
	if (e == SSL_ERROR_WANT_WRITE)
		return fe_tls_wait(s->fd, POLLOUT, deadline_ms);
	return e == SSL_ERROR_ZERO_RETURN ? MP_ENOENT : MP_EIO;
}

static bool fe_tls_is_ip(const char *s)
{
	unsigned char addr[16];

	return inet_pton(AF_INET, s, addr) == 1 || inet_pton(AF_INET6, s, addr) == 1;
}

static void fe_tls_restore_fd(const struct fe_tls_stream *s)
{
	if ((s->fd_flags & O_NONBLOCK) == 0) {
		/* Best effort: the caller only closes the fd after this. */
		(void)fcntl(s->fd, F_SETFL, s->fd_flags);
	}
}

static void fe_tls_stream_drop(struct fe_tls_stream *s)
{
	SSL_free(s->ssl);
	fe_tls_restore_fd(s);
	free(s);
	ERR_clear_error();
}

int fe_tls_client_handshake(struct fe_tls_client *c, int fd, const char *sni,
			    int64_t deadline_ms, struct fe_tls_stream **s_r, char **error_r)
{
	if (error_r != NULL)
		*error_r = NULL;
	*s_r = NULL;
	if (c == NULL || fd < 0) {
		fe_tls_fail(error_r, "no client or no socket");
		return MP_EINVAL;
	}
	if (sni != NULL && sni[0] == '\0')
		sni = NULL;
	if (c->verify && sni == NULL) {
		/* A chain check without a name proves nothing about the peer. */
		fe_tls_fail(error_r, "certificate verification needs a host name");
		return MP_EINVAL;
	}
	bool is_ip = sni != NULL && fe_tls_is_ip(sni);

	struct fe_tls_stream *s = calloc(1, sizeof(*s));
	if (s == NULL) {
		fe_tls_fail(error_r, "out of memory");
		return MP_ENOMEM;
	}
	s->fd = fd;
	s->fd_flags = fcntl(fd, F_GETFL);
	if (s->fd_flags < 0) {
		fe_tls_fail(error_r, "fcntl: %s", strerror(errno));
		free(s);
		return MP_EIO;
	}
	if ((s->fd_flags & O_NONBLOCK) == 0 &&
	    fcntl(fd, F_SETFL, s->fd_flags | O_NONBLOCK) != 0) {
		fe_tls_fail(error_r, "fcntl: %s", strerror(errno));
		free(s);
		return MP_EIO;
	}
	ERR_clear_error();
	s->ssl = SSL_new(c->ctx);
	if (s->ssl == NULL || SSL_set_fd(s->ssl, fd) != 1) {
		fe_tls_set_error(error_r, fe_tls_errmsg("SSL_new"));
		fe_tls_stream_drop(s);
		return MP_EIO;
	}
	/* RFC 6066 §3: SNI carries host names only, never address literals. */
	if (sni != NULL && !is_ip && SSL_set_tlsext_host_name(s->ssl, sni) != 1) {
		fe_tls_set_error(error_r, fe_tls_errmsg("SNI name"));
		fe_tls_stream_drop(s);
		return MP_EINVAL;
	}
	if (c->verify) {
		int ok;
		if (is_ip) {
			ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s->ssl), sni);
		} else {
			SSL_set_hostflags(s->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
			ok = SSL_set1_host(s->ssl, sni);
		}
		if (ok != 1) {
			fe_tls_set_error(error_r, fe_tls_errmsg("verification name"));
			fe_tls_stream_drop(s);
			return MP_EINVAL;
		}
	}
	SSL_set_connect_state(s->ssl);

	for (;;) {  /* bounded by the deadline: see fe_tls_wait */
		ERR_clear_error();
		errno = 0;
		int r = SSL_connect(s->ssl);
		if (r == 1)
			break;
		int e = SSL_get_error(s->ssl, r);
		int saved_errno = errno;
		int ret = fe_tls_retry(s, r, deadline_ms);
		if (ret == 0)
			continue;
		if (ret == MP_ETIMEDOUT) {
			fe_tls_fail(error_r, "TLS handshake timed out");
		} else if (c->verify && SSL_get_verify_result(s->ssl) != X509_V_OK) {
			long v = SSL_get_verify_result(s->ssl);
			fe_tls_fail(error_r, "certificate verification failed for %s: %s", sni,
				    X509_verify_cert_error_string(v));
			ret = MP_EPERM;
		} else if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
			fe_tls_fail(error_r, "TLS handshake: %s",
				    saved_errno != 0 ? strerror(saved_errno) :
				    "connection closed by peer");
			ret = MP_EIO;
		} else {
			fe_tls_set_error(error_r, fe_tls_errmsg("TLS handshake"));
			ret = MP_EIO;
		}
		s->broken = true;
		fe_tls_stream_drop(s);
		return ret;
	}
	*s_r = s;
	return 0;
}

long fe_tls_stream_read(struct fe_tls_stream *s, void *buf, size_t len, int64_t deadline_ms)
{
	if (s == NULL || len == 0)
		return MP_EINVAL;
	if (s->broken)
		return MP_EIO;
	if (len > FE_TLS_IO_CHUNK)
		len = FE_TLS_IO_CHUNK;
	for (;;) {  /* bounded by the deadline */
		size_t n = 0;
		ERR_clear_error();
		int r = SSL_read_ex(s->ssl, buf, len, &n);
		if (r == 1)
			return (long)n;
		int ret = fe_tls_retry(s, r, deadline_ms);
		if (ret == 0)
			continue;
		if (ret == MP_ENOENT)
			return 0;  /* close_notify */
		/* A drop without close_notify lands here as MP_EIO: the caller
		 * cannot tell it from a truncation. */
		if (ret != MP_ETIMEDOUT)
			s->broken = true;
		ERR_clear_error();
		return ret;
	}
}

int fe_tls_stream_write(struct fe_tls_stream *s, const void *buf, size_t len,
			int64_t deadline_ms)
{
	const unsigned char *p = buf;
	size_t off = 0;

	if (s == NULL)
		return MP_EINVAL;
	if (s->broken)
		return MP_EIO;
	while (off < len) {  /* each pass writes a chunk or waits (deadline) */
		/* A retry after WANT_WRITE must pass the same buffer and length,
		 * which this computation does as long as off is unchanged. */
		size_t chunk = len - off > FE_TLS_IO_CHUNK ? FE_TLS_IO_CHUNK : len - off;
		size_t n = 0;
		ERR_clear_error();
		int r = SSL_write_ex(s->ssl, p + off, chunk, &n);
		if (r == 1) {
			off += n;
			continue;
		}
		int ret = fe_tls_retry(s, r, deadline_ms);
		if (ret == 0)
			continue;
		/* Part of a record may be out: the stream cannot continue. */
		s->broken = true;
		ERR_clear_error();
		return ret == MP_ETIMEDOUT ? MP_ETIMEDOUT : MP_EIO;
	}
	return 0;
}

int fe_tls_stream_describe(struct fe_tls_stream *s, char *buf, size_t size)
{
	return fe_tls_describe_ssl(s != NULL ? s->ssl : NULL, buf, size);
}

int fe_tls_stream_peer_names(struct fe_tls_stream *s, char *buf, size_t size)
{
	if (size == 0)
		return MP_EINVAL;
	buf[0] = '\0';
	X509 *peer = s != NULL ? SSL_get0_peer_certificate(s->ssl) : NULL;
	if (peer == NULL)
		return MP_ENOENT;
	char **names = NULL;
	size_t n = 0;
	if (fe_tls_cert_names(peer, &names, &n) != 0)
		return MP_ENOMEM;
	fe_tls_names_join(names, n, buf, size);
	fe_tls_names_free(names, n);
	return 0;
}

void fe_tls_stream_free(struct fe_tls_stream **sp)
{
	struct fe_tls_stream *s = *sp;

	if (s == NULL)
		return;
	*sp = NULL;
	if (!s->broken && SSL_is_init_finished(s->ssl)) {
		/* Our close_notify only (RFC 8446 §6.1 lets us close without
		 * waiting for the peer's); bounded so a stuck peer cannot hold
		 * the caller. */
		int64_t deadline = fe_tls_now_ms() + FE_TLS_SHUTDOWN_MS;
		for (;;) {
			ERR_clear_error();
			int r = SSL_shutdown(s->ssl);
			if (r >= 0 || fe_tls_retry(s, r, deadline) != 0)
				break;
		}
	}
	fe_tls_stream_drop(s);
}
