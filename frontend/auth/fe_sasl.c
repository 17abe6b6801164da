/*
 * fe_sasl: server-side SASL state machine (see fe_sasl.h) for PLAIN, LOGIN
 * and SCRAM-SHA-256.
 *
 * Pure: bytes in, status out; no I/O, no logging, no storage, no blocking.
 * It must never put a password (or anything a client sent) into a reason
 * string, never tell an unknown SCRAM user from a wrong password before the
 * client-final message, and never leave a password or key in freed memory.
 */
#include "fe_sasl.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mp_error.h"
#include "mp_password.h"

/* States between calls. The caller sees them only through the status. */
enum sasl_state {
	SASL_S_NEW,          /* made, fe_sasl_start not called */
	SASL_S_PLAIN,        /* waiting for the PLAIN message */
	SASL_S_LOGIN_USER,   /* sent "Username:" */
	SASL_S_LOGIN_PASS,   /* sent "Password:" */
	SASL_S_SCRAM_FIRST,  /* waiting for client-first */
	SASL_S_SCRAM_CRED,   /* caller is looking the user up */
	SASL_S_SCRAM_FINAL,  /* sent server-first, waiting for client-final */
	SASL_S_SCRAM_ACK,    /* sent server-final, waiting for an empty response */
	SASL_S_PASSWORD,     /* caller is checking the password */
	SASL_S_DONE,         /* terminal: success or failure */
};

#define SCRAM_NONCE_RAW 24   /* random bytes; 32 base64 chars */
#define SCRAM_FAKE_SALT 16   /* as mp_scram_make */
/* "n,a=" + escaped authzid (at most 3 bytes per byte of a valid name) + "," */
#define SCRAM_GS2_MAX (4 + 3 * FE_SASL_USER_MAX + 1)
#define B64_LEN(n) (4 * (((n) + 2) / 3))

struct fe_sasl {
	enum fe_sasl_mech mech;
	enum sasl_state state;
	enum fe_sasl_status status;  /* last status reported */
	unsigned flags;
	const char *reason;          /* static */

	char *challenge;             /* owned: base64, NUL-terminated */
	char *success_data;          /* owned: base64, NUL-terminated */
	char user[FE_SASL_USER_MAX + 1];
	size_t user_len;             /* 0: not known yet */
	char *password;              /* owned, wiped; NUL-terminated */
	size_t password_len;

	/* SCRAM */
	char gs2[SCRAM_GS2_MAX + 1]; /* gs2 header as the client sent it */
	size_t gs2_len;
	char *first_bare;            /* owned: client-first-message-bare */
	size_t first_bare_len;
	char *server_first;          /* owned */
	size_t server_first_len;
	char *nonce;                 /* owned: client nonce + server nonce */
	size_t nonce_len;
	size_t cnonce_len;
	char test_nonce[FE_SASL_TEST_NONCE_MAX + 1];
	size_t test_nonce_len;
	struct mp_scram_cred cred;   /* wiped */
	int cred_known;              /* 0: fake credentials of an unknown user */
};

static const char *const mech_names[FE_SASL_MECH_COUNT] = {
	[FE_SASL_MECH_PLAIN] = "PLAIN",
	[FE_SASL_MECH_LOGIN] = "LOGIN",
	[FE_SASL_MECH_SCRAM_SHA_256] = "SCRAM-SHA-256",
};

/* ------------------------------------------------------------ small helpers */

static char sasl_upper(char c)
{
	return c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c;
}

int fe_sasl_mech_find(const char *name, size_t len, enum fe_sasl_mech *mech_r)
{
	if (name == NULL || len == 0 || len > FE_SASL_MECH_NAME_MAX)
		return MP_EUNIMPL;
	for (int m = 0; m < FE_SASL_MECH_COUNT; m++) {
		const char *n = mech_names[m];
		if (strlen(n) != len)
			continue;
		size_t i = 0;
		while (i < len && sasl_upper(name[i]) == n[i])
			i++;
		if (i == len) {
			*mech_r = (enum fe_sasl_mech)m;
			return 0;
		}
	}
	return MP_EUNIMPL;
}

const char *fe_sasl_mech_name(enum fe_sasl_mech mech)
{
	if ((int)mech < 0 || mech >= FE_SASL_MECH_COUNT)
		return NULL;
	return mech_names[mech];
}

int fe_sasl_mech_plaintext(enum fe_sasl_mech mech)
{
	return mech == FE_SASL_MECH_PLAIN || mech == FE_SASL_MECH_LOGIN;
}

const char *fe_sasl_status_name(enum fe_sasl_status status)
{
	switch (status) {
	case FE_SASL_CHALLENGE:
		return "challenge";
	case FE_SASL_NEED_PASSWORD:
		return "need-password";
	case FE_SASL_NEED_SCRAM:
		return "need-scram";
	case FE_SASL_SUCCESS:
		return "success";
	case FE_SASL_FAILED:
		return "failed";
	case FE_SASL_MALFORMED:
		return "malformed";
	case FE_SASL_CANCELLED:
		return "cancelled";
	case FE_SASL_TEMPFAIL:
		return "tempfail";
	}
	return "?";
}

/* A user name we are willing to look up: valid UTF-8 (no overlongs,
 * surrogates or code points past U+10FFFF) without C0/C1 controls or DEL,
 * which SASLprep prohibits (RFC 4013 §5, RFC 3454 C.2) and which would
 * otherwise reach logs and lookups. */
static int sasl_name_ok(const uint8_t *p, size_t n)
{
	size_t i = 0;
	while (i < n) {
		uint8_t c = p[i];
		if (c < 0x80) {
			if (c < 0x20 || c == 0x7f)
				return 0;
			i++;
			continue;
		}
		size_t k;
		uint32_t cp, min;
		if ((c & 0xe0) == 0xc0) {
			k = 1;
			cp = c & 0x1fu;
			min = 0x80;
		} else if ((c & 0xf0) == 0xe0) {
			k = 2;
			cp = c & 0x0fu;
			min = 0x800;
		} else if ((c & 0xf8) == 0xf0) {
			k = 3;
			cp = c & 0x07u;
			min = 0x10000;
		} else {
			return 0;
		}
		if (n - i <= k)
			return 0;
		for (size_t j = 1; j <= k; j++) {
			if ((p[i + j] & 0xc0) != 0x80)
				return 0;
			cp = (cp << 6) | (p[i + j] & 0x3fu);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) ||
		    cp < 0xa0)
			return 0;
		i += k + 1;
	}
	return 1;
}

static void sasl_free_secret(char **p, size_t len)
{
	if (*p != NULL) {
		mp_wipe(*p, len);
		free(*p);
		*p = NULL;
	}
}

/* The one place the state changes. No logging here (the module does no
 * I/O); the caller logs the statuses it receives. */
static void sasl_enter_state(struct fe_sasl *s, enum sasl_state state)
{
	s->state = state;
}

/* Terminal status: drop every secret at once, so a finished session holds
 * nothing worth stealing even if the caller keeps it around. */
static void sasl_finish(struct fe_sasl *s, enum fe_sasl_status status,
			const char *reason)
{
	s->status = status;
	s->reason = reason != NULL ? reason : "";
	sasl_free_secret(&s->password, s->password_len);
	s->password_len = 0;
	mp_wipe(&s->cred, sizeof(s->cred));
	if (status != FE_SASL_SUCCESS) {
		free(s->success_data);
		s->success_data = NULL;
	}
	free(s->challenge);
	s->challenge = NULL;
	sasl_enter_state(s, SASL_S_DONE);
}

/* Send the raw bytes (len) as the next challenge, base64-encoded. */
static void sasl_challenge(struct fe_sasl *s, const void *raw, size_t len,
			   enum sasl_state next)
{
	char *c = malloc(B64_LEN(len) + 1);
	if (c == NULL) {
		sasl_finish(s, FE_SASL_TEMPFAIL, "out of memory");
		return;
	}
	mp_base64_encode(raw, len, c);
	free(s->challenge);
	s->challenge = c;
	s->status = FE_SASL_CHALLENGE;
	sasl_enter_state(s, next);
}

/* Decode one client response into *msg_r (malloc'd, NUL-terminated; the
 * caller wipes and frees it). 0, or -1 after finishing the session as
 * CANCELLED, MALFORMED or TEMPFAIL. initial: ir semantics ("=" is empty;
 * "*" is not a cancel, RFC 4954 §4 defines that only as an answer to a
 * challenge). */
static int sasl_decode(struct fe_sasl *s, const char *line, size_t len,
		       int initial, uint8_t **msg_r, size_t *n_r)
{
	if (initial && len == 1 && line[0] == '=')
		len = 0;
	else if (initial && len == 0) {
		/* RFC 4954 §4: an empty initial response is sent as "=". */
		sasl_finish(s, FE_SASL_MALFORMED, "empty initial response not sent as '='");
		return -1;
	} else if (!initial && len == 1 && line[0] == '*') {
		sasl_finish(s, FE_SASL_CANCELLED, "client cancelled");
		return -1;
	}
	if (len > FE_SASL_LINE_MAX) {
		sasl_finish(s, FE_SASL_MALFORMED, "response too long");
		return -1;
	}
	size_t cap = len / 4 * 3;
	uint8_t *buf = malloc(cap + 1);
	if (buf == NULL) {
		sasl_finish(s, FE_SASL_TEMPFAIL, "out of memory");
		return -1;
	}
	size_t n = 0;
	if (mp_base64_decode(line, len, buf, cap, &n) != 0) {
		mp_wipe(buf, cap + 1);
		free(buf);
		sasl_finish(s, FE_SASL_MALFORMED, "bad base64");
		return -1;
	}
	if (n > FE_SASL_RESPONSE_MAX) {
		mp_wipe(buf, cap + 1);
		free(buf);
		sasl_finish(s, FE_SASL_MALFORMED, "response too long");
		return -1;
	}
	buf[n] = '\0';
	*msg_r = buf;
	*n_r = n;
	return 0;
}

static void sasl_set_user(struct fe_sasl *s, const void *user, size_t len)
{
	memcpy(s->user, user, len);
	s->user[len] = '\0';
	s->user_len = len;
}

/* Keep the password and ask the caller to check it. */
static void sasl_need_password(struct fe_sasl *s, const uint8_t *pw, size_t len)
{
	char *p = malloc(len + 1);
	if (p == NULL) {
		sasl_finish(s, FE_SASL_TEMPFAIL, "out of memory");
		return;
	}
	memcpy(p, pw, len);
	p[len] = '\0';
	sasl_free_secret(&s->password, s->password_len);
	s->password = p;
	s->password_len = len;
	s->status = FE_SASL_NEED_PASSWORD;
	sasl_enter_state(s, SASL_S_PASSWORD);
}

/* ------------------------------------------------------------ PLAIN */

/* RFC 4616 §2: message = [authzid] UTF8NUL authcid UTF8NUL passwd. */
static void sasl_plain(struct fe_sasl *s, const uint8_t *m, size_t n)
{
	const uint8_t *nul1 = memchr(m, '\0', n);
	const uint8_t *nul2 = nul1 != NULL ? memchr(nul1 + 1, '\0', n - (size_t)(nul1 + 1 - m)) : NULL;
	if (nul2 == NULL ||
	    memchr(nul2 + 1, '\0', n - (size_t)(nul2 + 1 - m)) != NULL) {
		sasl_finish(s, FE_SASL_MALFORMED, "PLAIN: not authzid NUL authcid NUL password");
		return;
	}
	const uint8_t *authzid = m, *authcid = nul1 + 1, *pw = nul2 + 1;
	size_t zlen = (size_t)(nul1 - m), clen = (size_t)(nul2 - authcid);
	size_t plen = n - (size_t)(pw - m);
	if (clen == 0 || plen == 0) {
		sasl_finish(s, FE_SASL_MALFORMED, "PLAIN: empty user name or password");
		return;
	}
	if (clen > FE_SASL_USER_MAX) {
		sasl_finish(s, FE_SASL_FAILED, "user name too long");
		return;
	}
	if (!sasl_name_ok(authcid, clen)) {
		sasl_finish(s, FE_SASL_MALFORMED, "bad user name");
		return;
	}
	sasl_set_user(s, authcid, clen);
	/* RFC 4616 §2: an authzid other than the authcid asks to act as someone
	 * else; we do no proxy authorisation, so that is a failed login. */
	if (zlen != 0 && (zlen != clen || memcmp(authzid, authcid, clen) != 0)) {
		sasl_finish(s, FE_SASL_FAILED, "authorisation identity differs from user");
		return;
	}
	if (plen > MP_PASSWORD_MAX) {
		sasl_finish(s, FE_SASL_FAILED, "password too long");
		return;
	}
	sasl_need_password(s, pw, plen);
}

/* ------------------------------------------------------------ LOGIN */

static const char login_user_prompt[] = "Username:";
static const char login_pass_prompt[] = "Password:";

static void sasl_login_user(struct fe_sasl *s, const uint8_t *m, size_t n)
{
	if (n == 0) {
		sasl_finish(s, FE_SASL_MALFORMED, "LOGIN: empty user name");
		return;
	}
	if (n > FE_SASL_USER_MAX) {
		sasl_finish(s, FE_SASL_FAILED, "user name too long");
		return;
	}
	if (!sasl_name_ok(m, n)) {
		sasl_finish(s, FE_SASL_MALFORMED, "bad user name");
		return;
	}
	sasl_set_user(s, m, n);
	sasl_challenge(s, login_pass_prompt, strlen(login_pass_prompt),
		       SASL_S_LOGIN_PASS);
}

static void sasl_login_pass(struct fe_sasl *s, const uint8_t *m, size_t n)
{
	if (n == 0) {
		sasl_finish(s, FE_SASL_MALFORMED, "LOGIN: empty password");
		return;
	}
	/* crypt(3) would stop at a NUL and check a shorter password. */
	if (memchr(m, '\0', n) != NULL) {
		sasl_finish(s, FE_SASL_MALFORMED, "LOGIN: NUL in password");
		return;
	}
	if (n > MP_PASSWORD_MAX) {
		sasl_finish(s, FE_SASL_FAILED, "password too long");
		return;
	}
	sasl_need_password(s, m, n);
}

/* ------------------------------------------------------------ SCRAM parsing */

/* RFC 5802 §7: printable = %x21-2B / %x2D-7E (no ','). */
static int scram_printable(char c)
{
	return (c >= 0x21 && c <= 0x7e) && c != ',';
}

static int scram_alpha(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int scram_at(const char *m, size_t n, size_t i, const char *attr)
{
	return i <= n && n - i >= 2 && m[i] == attr[0] && m[i + 1] == '=';
}

/* saslname at m[*i..) up to ',' or the end (RFC 5802 §5.1): "=2C" is ',',
 * "=3D" is '=', any other '=' or a NUL is an error. Writes at most cap
 * bytes to out; *len_r is the whole unescaped length (may exceed cap).
 * NULL, or the reason it is malformed. */
static const char *scram_saslname(const char *m, size_t n, size_t *i,
				  char *out, size_t cap, size_t *len_r)
{
	size_t j = *i, o = 0;
	while (j < n && m[j] != ',') {
		char c = m[j];
		if (c == '\0')
			return "SCRAM: NUL in name";
		if (c == '=') {
			if (n - j >= 3 && m[j + 1] == '2' && m[j + 2] == 'C')
				c = ',';
			else if (n - j >= 3 && m[j + 1] == '3' && m[j + 2] == 'D')
				c = '=';
			else
				return "SCRAM: bad '=' escape in name";
			j += 3;
		} else {
			j++;
		}
		if (o < cap)
			out[o] = c;
		o++;
	}
	if (o == 0)
		return "SCRAM: empty name";
	*i = j;
	*len_r = o;
	return NULL;
}

/* One optional extension attr-val at m[*i..) (RFC 5802 §7): ALPHA "="
 * 1*value-char, up to ',' or the end. "m" is the reserved mandatory
 * extension, which §5.1 says MUST make authentication fail. */
static const char *scram_ext(const char *m, size_t n, size_t *i)
{
	size_t j = *i;
	if (n - j < 2 || !scram_alpha(m[j]) || m[j + 1] != '=')
		return "SCRAM: bad attribute";
	if (m[j] == 'm')
		return "SCRAM: mandatory extension not supported";
	j += 2;
	size_t start = j;
	while (j < n && m[j] != ',') {
		if (m[j] == '\0')
			return "SCRAM: NUL in extension";
		j++;
	}
	if (j == start)
		return "SCRAM: empty extension value";
	*i = j;
	return NULL;
}

struct scram_first {
	size_t gs2_len;          /* gs2 header is m[0..gs2_len) */
	char user[FE_SASL_USER_MAX];
	size_t user_len;         /* may exceed FE_SASL_USER_MAX */
	char authzid[FE_SASL_USER_MAX];
	size_t authzid_len;      /* 0: none */
	size_t cnonce_off, cnonce_len;
};

/* client-first-message (RFC 5802 §7):
 *   gs2-header = gs2-cbind-flag "," [ "a=" saslname ] ","
 *   bare = [reserved-mext ","] "n=" saslname "," "r=" c-nonce ["," extensions]
 * NULL, or the reason it is malformed. */
static const char *scram_parse_first(const char *m, size_t n, struct scram_first *f)
{
	size_t i = 0;
	const char *err;
	memset(f, 0, sizeof(*f));
	if (n == 0)
		return "SCRAM: empty client-first message";
	/* §6: we offer no -PLUS, so a client asking for binding ("p=") is
	 * refused; "y" (client could bind, thinks we cannot) is right. */
	if (m[0] == 'p')
		return "SCRAM: channel binding not supported";
	if ((m[0] != 'n' && m[0] != 'y') || n < 2 || m[1] != ',')
		return "SCRAM: bad gs2 header";
	i = 2;
	if (scram_at(m, n, i, "a")) {
		i += 2;
		err = scram_saslname(m, n, &i, f->authzid, sizeof(f->authzid),
				     &f->authzid_len);
		if (err != NULL)
			return err;
	}
	if (i >= n || m[i] != ',')
		return "SCRAM: bad gs2 header";
	i++;
	f->gs2_len = i;
	if (scram_at(m, n, i, "m"))
		return "SCRAM: mandatory extension not supported";
	if (!scram_at(m, n, i, "n"))
		return "SCRAM: missing user name";
	i += 2;
	err = scram_saslname(m, n, &i, f->user, sizeof(f->user), &f->user_len);
	if (err != NULL)
		return err;
	if (i >= n || m[i] != ',' || !scram_at(m, n, i + 1, "r"))
		return "SCRAM: missing nonce";
	i += 3;
	f->cnonce_off = i;
	while (i < n && m[i] != ',') {
		if (!scram_printable(m[i]))
			return "SCRAM: bad nonce character";
		i++;
	}
	f->cnonce_len = i - f->cnonce_off;
	if (f->cnonce_len == 0)
		return "SCRAM: empty nonce";
	while (i < n) {
		i++;  /* the ',' the previous field stopped at */
		err = scram_ext(m, n, &i);
		if (err != NULL)
			return err;
	}
	return NULL;
}

static void sasl_scram_first(struct fe_sasl *s, const uint8_t *um, size_t n)
{
	const char *m = (const char *)um;
	struct scram_first f;
	const char *err = scram_parse_first(m, n, &f);
	if (err != NULL) {
		sasl_finish(s, FE_SASL_MALFORMED, err);
		return;
	}
	if (f.user_len > FE_SASL_USER_MAX) {
		sasl_finish(s, FE_SASL_FAILED, "user name too long");
		return;
	}
	if (!sasl_name_ok((const uint8_t *)f.user, f.user_len)) {
		sasl_finish(s, FE_SASL_MALFORMED, "bad user name");
		return;
	}
	sasl_set_user(s, f.user, f.user_len);
	/* §5.1 a=: we do no proxy authorisation. Failing here reveals nothing
	 * about the user, since it does not depend on the account. */
	if (f.authzid_len != 0 &&
	    (f.authzid_len != f.user_len || memcmp(f.authzid, f.user, f.user_len) != 0)) {
		sasl_finish(s, FE_SASL_FAILED, "authorisation identity differs from user");
		return;
	}
	/* A valid authzid is at most 255 bytes, 3 escaped bytes each. */
	if (f.gs2_len > SCRAM_GS2_MAX) {
		sasl_finish(s, FE_SASL_FAILED, "authorisation identity differs from user");
		return;
	}
	size_t bare_len = n - f.gs2_len;
	char *bare = malloc(bare_len + 1);
	char *nonce = malloc(f.cnonce_len + FE_SASL_TEST_NONCE_MAX + B64_LEN(SCRAM_NONCE_RAW) + 1);
	if (bare == NULL || nonce == NULL) {
		free(bare);
		free(nonce);
		sasl_finish(s, FE_SASL_TEMPFAIL, "out of memory");
		return;
	}
	memcpy(s->gs2, m, f.gs2_len);
	s->gs2[f.gs2_len] = '\0';
	s->gs2_len = f.gs2_len;
	memcpy(bare, m + f.gs2_len, bare_len);
	bare[bare_len] = '\0';
	free(s->first_bare);
	s->first_bare = bare;
	s->first_bare_len = bare_len;
	memcpy(nonce, m + f.cnonce_off, f.cnonce_len);
	free(s->nonce);
	s->nonce = nonce;
	s->cnonce_len = f.cnonce_len;
	s->nonce_len = f.cnonce_len;
	s->status = FE_SASL_NEED_SCRAM;
	sasl_enter_state(s, SASL_S_SCRAM_CRED);
}

/* ------------------------------------------------------------ SCRAM unknown users */

static pthread_mutex_t fake_lock = PTHREAD_MUTEX_INITIALIZER;
static uint8_t fake_secret[MP_SHA256_LEN];  /* guarded by fake_lock */
static int fake_secret_set;                 /* guarded by fake_lock */

int fe_sasl_set_fake_secret(const void *key, size_t len)
{
	uint8_t h[MP_SHA256_LEN];
	if (key == NULL || len < 16 || mp_sha256(key, len, h) != 0)
		return MP_EINVAL;
	pthread_mutex_lock(&fake_lock);
	memcpy(fake_secret, h, sizeof(h));
	fake_secret_set = 1;
	pthread_mutex_unlock(&fake_lock);
	mp_wipe(h, sizeof(h));
	return 0;
}

/* A copy of the secret, drawn at random on first use. 0 or MP_EIO. */
static int sasl_fake_secret(uint8_t out[MP_SHA256_LEN])
{
	int ret = 0;
	pthread_mutex_lock(&fake_lock);
	if (!fake_secret_set) {
		ret = mp_random_bytes(fake_secret, sizeof(fake_secret));
		fake_secret_set = ret == 0;
	}
	if (ret == 0)
		memcpy(out, fake_secret, MP_SHA256_LEN);
	pthread_mutex_unlock(&fake_lock);
	return ret;
}

/* HMAC(secret, label NUL user): the same for one user on every attempt,
 * so repeated probes see a stable salt, as they would for a real user. */
static int sasl_fake_derive(const uint8_t secret[MP_SHA256_LEN], const char *label,
			    const char *user, size_t user_len, uint8_t out[MP_SHA256_LEN])
{
	uint8_t in[16 + FE_SASL_USER_MAX];
	size_t ll = strlen(label) + 1;  /* with its NUL, so labels cannot collide */
	memcpy(in, label, ll);
	memcpy(in + ll, user, user_len);
	return mp_hmac_sha256(secret, MP_SHA256_LEN, in, ll + user_len, out);
}

static int sasl_fake_cred(const char *user, size_t user_len, struct mp_scram_cred *c)
{
	uint8_t secret[MP_SHA256_LEN], salt[MP_SHA256_LEN];
	memset(c, 0, sizeof(*c));
	int ret = sasl_fake_secret(secret);
	if (ret == 0)
		ret = sasl_fake_derive(secret, "salt", user, user_len, salt);
	if (ret == 0)
		ret = sasl_fake_derive(secret, "stored", user, user_len, c->stored_key);
	if (ret == 0)
		ret = sasl_fake_derive(secret, "server", user, user_len, c->server_key);
	memcpy(c->salt, salt, SCRAM_FAKE_SALT);
	c->salt_len = SCRAM_FAKE_SALT;
	c->iter = MP_SCRAM_ITER_DEFAULT;  /* what mp_scram_make writes */
	mp_wipe(secret, sizeof(secret));
	mp_wipe(salt, sizeof(salt));
	return ret;
}

/* ------------------------------------------------------------ SCRAM server-first */

int fe_sasl_scram_cred(struct fe_sasl *s, const struct mp_scram_cred *cred,
		       enum fe_sasl_status *status_r)
{
	if (s == NULL || s->state != SASL_S_SCRAM_CRED)
		return MP_ESTATE;
	if (cred != NULL && (cred->iter == 0 || cred->iter > MP_SCRAM_ITER_MAX ||
			     cred->salt_len == 0 || cred->salt_len > MP_SCRAM_SALT_MAX))
		return MP_EINVAL;

	if (cred != NULL) {
		s->cred = *cred;
		s->cred_known = 1;
	} else {
		s->cred_known = 0;
		if (sasl_fake_cred(s->user, s->user_len, &s->cred) != 0) {
			sasl_finish(s, FE_SASL_TEMPFAIL, "random source failed");
			*status_r = s->status;
			return 0;
		}
	}

	/* Server nonce: printable base64 of random bytes (never ','). */
	char *snonce = s->nonce + s->cnonce_len;
	size_t snonce_len;
	if (s->test_nonce_len > 0) {
		memcpy(snonce, s->test_nonce, s->test_nonce_len);
		snonce_len = s->test_nonce_len;
	} else {
		uint8_t raw[SCRAM_NONCE_RAW];
		if (mp_random_bytes(raw, sizeof(raw)) != 0) {
			sasl_finish(s, FE_SASL_TEMPFAIL, "random source failed");
			*status_r = s->status;
			return 0;
		}
		snonce_len = mp_base64_encode(raw, sizeof(raw), snonce);
	}
	s->nonce_len = s->cnonce_len + snonce_len;
	s->nonce[s->nonce_len] = '\0';

	/* server-first-message = "r=" nonce ",s=" salt ",i=" iteration-count */
	char salt64[B64_LEN(MP_SCRAM_SALT_MAX) + 1];
	size_t salt64_len = mp_base64_encode(s->cred.salt, s->cred.salt_len, salt64);
	char iter[16];
	int il = snprintf(iter, sizeof(iter), "%u", (unsigned)s->cred.iter);
	size_t cap = 2 + s->nonce_len + 3 + salt64_len + 3 + sizeof(iter) + 1;
	char *sf = il > 0 ? malloc(cap) : NULL;
	if (sf == NULL) {
		free(sf);
		sasl_finish(s, FE_SASL_TEMPFAIL, "out of memory");
		*status_r = s->status;
		return 0;
	}
	int len = snprintf(sf, cap, "r=%s,s=%s,i=%s", s->nonce, salt64, iter);
	if (len < 0 || (size_t)len >= cap) {
		free(sf);
		sasl_finish(s, FE_SASL_TEMPFAIL, "server-first message overflow");
		*status_r = s->status;
		return 0;
	}
	free(s->server_first);
	s->server_first = sf;
	s->server_first_len = (size_t)len;
	sasl_challenge(s, sf, (size_t)len, SASL_S_SCRAM_FINAL);
	*status_r = s->status;
	return 0;
}

/* ------------------------------------------------------------ SCRAM final */

/* client-final-message (RFC 5802 §7):
 *   "c=" base64 "," "r=" nonce ["," extensions] "," "p=" base64
 * Checks everything but the proof; *wp_len_r is the length of
 * client-final-message-without-proof. NULL or the reason. */
static const char *scram_parse_final(const struct fe_sasl *s, const char *m, size_t n,
				     size_t *wp_len_r, uint8_t proof[MP_SHA256_LEN])
{
	size_t i = 0, start;
	if (!scram_at(m, n, 0, "c"))
		return "SCRAM: missing channel binding";
	i = 2;
	start = i;
	while (i < n && m[i] != ',')
		i++;
	/* c= is base64 of the gs2 header (no binding data for "n"/"y"),
	 * and must be exactly what the client sent first (§5.1). */
	uint8_t cb[SCRAM_GS2_MAX];
	size_t cb_len = 0;
	int ret = mp_base64_decode(m + start, i - start, cb, s->gs2_len, &cb_len);
	if (ret == MP_EINVAL)
		return "SCRAM: bad channel binding";
	if (ret != 0 || cb_len != s->gs2_len || memcmp(cb, s->gs2, cb_len) != 0)
		return "SCRAM: channel binding mismatch";
	if (i >= n || m[i] != ',' || !scram_at(m, n, i + 1, "r"))
		return "SCRAM: missing nonce";
	i += 3;
	start = i;
	while (i < n && m[i] != ',')
		i++;
	if (i - start != s->nonce_len || memcmp(m + start, s->nonce, s->nonce_len) != 0)
		return "SCRAM: nonce mismatch";
	while (i < n) {
		size_t comma = i++;
		if (scram_at(m, n, i, "p")) {
			i += 2;
			start = i;
			while (i < n && m[i] != ',')
				i++;
			if (i != n)
				return "SCRAM: proof is not the last attribute";
			size_t plen = 0;
			if (mp_base64_decode(m + start, i - start, proof, MP_SHA256_LEN,
					     &plen) != 0 || plen != MP_SHA256_LEN)
				return "SCRAM: bad proof";
			*wp_len_r = comma;
			return NULL;
		}
		const char *err = scram_ext(m, n, &i);
		if (err != NULL)
			return err;
	}
	return "SCRAM: missing proof";
}

static void sasl_scram_final(struct fe_sasl *s, const uint8_t *um, size_t n)
{
	const char *m = (const char *)um;
	uint8_t proof[MP_SHA256_LEN];
	size_t wp_len = 0;
	const char *err = scram_parse_final(s, m, n, &wp_len, proof);
	if (err != NULL) {
		mp_wipe(proof, sizeof(proof));
		sasl_finish(s, FE_SASL_MALFORMED, err);
		return;
	}

	/* AuthMessage = client-first-message-bare "," server-first-message ","
	 *               client-final-message-without-proof   (§3) */
	size_t am_len = s->first_bare_len + 1 + s->server_first_len + 1 + wp_len;
	char *am = malloc(am_len);
	if (am == NULL) {
		mp_wipe(proof, sizeof(proof));
		sasl_finish(s, FE_SASL_TEMPFAIL, "out of memory");
		return;
	}
	size_t o = 0;
	memcpy(am + o, s->first_bare, s->first_bare_len);
	o += s->first_bare_len;
	am[o++] = ',';
	memcpy(am + o, s->server_first, s->server_first_len);
	o += s->server_first_len;
	am[o++] = ',';
	memcpy(am + o, m, wp_len);

	/* ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage);
	 * valid when H(ClientKey) == StoredKey. The same work is done for
	 * unknown users (fake keys), so timing does not tell them apart. */
	uint8_t csig[MP_SHA256_LEN], ckey[MP_SHA256_LEN], hkey[MP_SHA256_LEN];
	uint8_t ssig[MP_SHA256_LEN];
	int ret = mp_hmac_sha256(s->cred.stored_key, MP_SHA256_LEN, am, am_len, csig);
	if (ret == 0) {
		for (size_t k = 0; k < MP_SHA256_LEN; k++)
			ckey[k] = proof[k] ^ csig[k];
		ret = mp_sha256(ckey, sizeof(ckey), hkey);
	}
	if (ret == 0)
		ret = mp_hmac_sha256(s->cred.server_key, MP_SHA256_LEN, am, am_len, ssig);
	int match = ret == 0 && mp_const_eq(hkey, s->cred.stored_key, MP_SHA256_LEN);
	mp_wipe(am, am_len);
	free(am);
	mp_wipe(proof, sizeof(proof));
	mp_wipe(csig, sizeof(csig));
	mp_wipe(ckey, sizeof(ckey));
	mp_wipe(hkey, sizeof(hkey));
	if (ret != 0) {
		mp_wipe(ssig, sizeof(ssig));
		sasl_finish(s, FE_SASL_TEMPFAIL, "crypto failure");
		return;
	}
	if (!s->cred_known) {
		mp_wipe(ssig, sizeof(ssig));
		sasl_finish(s, FE_SASL_FAILED, "no such user or no SCRAM credentials");
		return;
	}
	if (!match) {
		mp_wipe(ssig, sizeof(ssig));
		sasl_finish(s, FE_SASL_FAILED, "wrong password (SCRAM proof mismatch)");
		return;
	}

	/* server-final-message = "v=" base64(ServerSignature) */
	char final[2 + B64_LEN(MP_SHA256_LEN) + 1];
	final[0] = 'v';
	final[1] = '=';
	size_t flen = 2 + mp_base64_encode(ssig, sizeof(ssig), final + 2);
	mp_wipe(ssig, sizeof(ssig));
	if (s->flags & FE_SASL_F_SUCCESS_DATA) {
		char *data = malloc(B64_LEN(flen) + 1);
		if (data == NULL) {
			sasl_finish(s, FE_SASL_TEMPFAIL, "out of memory");
			return;
		}
		mp_base64_encode(final, flen, data);
		free(s->success_data);
		s->success_data = data;
		sasl_finish(s, FE_SASL_SUCCESS, NULL);
		return;
	}
	/* RFC 4422 §3.6 / RFC 5802 §5: without additional data with success,
	 * server-final is a challenge and the client answers it empty. */
	sasl_challenge(s, final, flen, SASL_S_SCRAM_ACK);
}

static void sasl_scram_ack(struct fe_sasl *s, size_t n)
{
	if (n != 0) {
		sasl_finish(s, FE_SASL_MALFORMED, "SCRAM: response to server-final not empty");
		return;
	}
	sasl_finish(s, FE_SASL_SUCCESS, NULL);
}

/* ------------------------------------------------------------ public */

int fe_sasl_new(const char *name, size_t len, unsigned flags,
		struct fe_sasl **s_r, const char **error_r)
{
	enum fe_sasl_mech mech;
	if (fe_sasl_mech_find(name, len, &mech) != 0) {
		*error_r = "unknown SASL mechanism";
		return MP_EUNIMPL;
	}
	struct fe_sasl *s = calloc(1, sizeof(*s));
	if (s == NULL) {
		*error_r = "out of memory";
		return MP_ENOMEM;
	}
	s->mech = mech;
	s->flags = flags;
	s->reason = "";
	s->status = FE_SASL_CHALLENGE;
	sasl_enter_state(s, SASL_S_NEW);
	*s_r = s;
	return 0;
}

void fe_sasl_free(struct fe_sasl **sp)
{
	if (sp == NULL || *sp == NULL)
		return;
	struct fe_sasl *s = *sp;
	sasl_free_secret(&s->password, s->password_len);
	free(s->challenge);
	free(s->success_data);
	free(s->first_bare);
	free(s->server_first);
	free(s->nonce);
	mp_wipe(s, sizeof(*s));
	free(s);
	*sp = NULL;
}

/* Feed one decoded response to the handler of the current state. */
static void sasl_dispatch(struct fe_sasl *s, const uint8_t *m, size_t n)
{
	switch (s->state) {
	case SASL_S_PLAIN:
		sasl_plain(s, m, n);
		break;
	case SASL_S_LOGIN_USER:
		sasl_login_user(s, m, n);
		break;
	case SASL_S_LOGIN_PASS:
		sasl_login_pass(s, m, n);
		break;
	case SASL_S_SCRAM_FIRST:
		sasl_scram_first(s, m, n);
		break;
	case SASL_S_SCRAM_FINAL:
		sasl_scram_final(s, m, n);
		break;
	case SASL_S_SCRAM_ACK:
		sasl_scram_ack(s, n);
		break;
	default:
		/* Callers check the state first. */
		sasl_finish(s, FE_SASL_TEMPFAIL, "internal state error");
		break;
	}
}

static void sasl_feed(struct fe_sasl *s, const char *line, size_t len, int initial)
{
	uint8_t *m = NULL;
	size_t n = 0;
	if (sasl_decode(s, line, len, initial, &m, &n) != 0)
		return;
	sasl_dispatch(s, m, n);
	mp_wipe(m, n);
	free(m);
}

int fe_sasl_start(struct fe_sasl *s, const char *ir, size_t len,
		  enum fe_sasl_status *status_r)
{
	if (s == NULL || s->state != SASL_S_NEW)
		return MP_ESTATE;
	switch (s->mech) {
	case FE_SASL_MECH_PLAIN:
		sasl_enter_state(s, SASL_S_PLAIN);
		break;
	case FE_SASL_MECH_LOGIN:
		sasl_enter_state(s, SASL_S_LOGIN_USER);
		break;
	default:
		sasl_enter_state(s, SASL_S_SCRAM_FIRST);
		break;
	}
	if (ir != NULL) {
		/* The initial response answers the (empty or "Username:")
		 * first challenge (RFC 4422 §3.3). */
		sasl_feed(s, ir, len, 1);
	} else if (s->mech == FE_SASL_MECH_LOGIN) {
		sasl_challenge(s, login_user_prompt, strlen(login_user_prompt),
			       SASL_S_LOGIN_USER);
	} else {
		sasl_challenge(s, "", 0, s->state);
	}
	*status_r = s->status;
	return 0;
}

int fe_sasl_step(struct fe_sasl *s, const char *line, size_t len,
		 enum fe_sasl_status *status_r)
{
	if (s == NULL || s->status != FE_SASL_CHALLENGE || s->state == SASL_S_NEW ||
	    s->state == SASL_S_DONE || (line == NULL && len != 0))
		return MP_ESTATE;
	sasl_feed(s, line != NULL ? line : "", len, 0);
	*status_r = s->status;
	return 0;
}

int fe_sasl_password_result(struct fe_sasl *s, int verify_ret,
			    enum fe_sasl_status *status_r)
{
	if (s == NULL || s->state != SASL_S_PASSWORD)
		return MP_ESTATE;
	switch (verify_ret) {
	case 0:
		sasl_finish(s, FE_SASL_SUCCESS, NULL);
		break;
	case MP_EPERM:
		sasl_finish(s, FE_SASL_FAILED, "wrong password");
		break;
	case MP_ENOENT:
		sasl_finish(s, FE_SASL_FAILED, "no such user");
		break;
	case MP_EINVAL:
		sasl_finish(s, FE_SASL_FAILED, "unusable password hash");
		break;
	default:
		sasl_finish(s, FE_SASL_TEMPFAIL, "password check failed");
		break;
	}
	*status_r = s->status;
	return 0;
}

const char *fe_sasl_challenge(const struct fe_sasl *s)
{
	return s->status == FE_SASL_CHALLENGE && s->challenge != NULL ? s->challenge : "";
}

int fe_sasl_awaiting_empty(const struct fe_sasl *s)
{
	return s->state == SASL_S_SCRAM_ACK;
}

const char *fe_sasl_success_data(const struct fe_sasl *s)
{
	return s->status == FE_SASL_SUCCESS ? s->success_data : NULL;
}

const char *fe_sasl_user(const struct fe_sasl *s)
{
	return s->user_len > 0 ? s->user : NULL;
}

const char *fe_sasl_password(const struct fe_sasl *s, size_t *len_r)
{
	if (s->state != SASL_S_PASSWORD || s->password == NULL) {
		if (len_r != NULL)
			*len_r = 0;
		return NULL;
	}
	if (len_r != NULL)
		*len_r = s->password_len;
	return s->password;
}

const char *fe_sasl_reason(const struct fe_sasl *s)
{
	return s->reason;
}

enum fe_sasl_mech fe_sasl_mech(const struct fe_sasl *s)
{
	return s->mech;
}

int fe_sasl_test_set_nonce(struct fe_sasl *s, const char *nonce, size_t len)
{
	if (s == NULL || (s->state != SASL_S_NEW && s->state != SASL_S_SCRAM_FIRST &&
			  s->state != SASL_S_SCRAM_CRED))
		return MP_ESTATE;
	if (nonce == NULL || len == 0 || len > FE_SASL_TEST_NONCE_MAX)
		return MP_EINVAL;
	for (size_t i = 0; i < len; i++)
		if (!scram_printable(nonce[i]))
			return MP_EINVAL;
	memcpy(s->test_nonce, nonce, len);
	s->test_nonce[len] = '\0';
	s->test_nonce_len = len;
	return 0;
}
