/*
 * ctl_util: merpatictl's argument checks, stdin readers and output helpers.
 *
 * Checks are local and conservative so a typo never reaches the node; the
 * node checks everything again. Secrets are read with read(2) straight into
 * the caller's buffer (stdio would keep a copy in its own buffer that nobody
 * wipes). Nothing here prints a secret or a hash.
 */
#include <ctype.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"
#include "mp_buf.h"
#include "mp_error.h"
#include "mp_uidset.h"

/* ------------------------------------------------------------ checking */

/* Length of the valid UTF-8 sequence at s (up to end), or 0. Refuses
 * overlong forms, surrogates and code points above U+10FFFF. */
static size_t ctl_utf8_len(const unsigned char *s, const unsigned char *end)
{
	size_t n, i;
	uint32_t cp;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		n = 2;
		cp = s[0] & 0x1f;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		n = 3;
		cp = s[0] & 0x0f;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		n = 4;
		cp = s[0] & 0x07;
	} else {
		return 0;
	}
	if ((size_t)(end - s) < n)
		return 0;
	for (i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
	    cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

static int ctl_utf8_valid(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;
	const unsigned char *end = p + len;

	while (p < end) {
		size_t n = ctl_utf8_len(p, end);

		if (n == 0)
			return 0;
		p += n;
	}
	return 1;
}

static void ctl_ascii_lower(char *s)
{
	for (; *s != '\0'; s++) {
		if (*s >= 'A' && *s <= 'Z')
			*s = (char)(*s - 'A' + 'a');
	}
}

int ctl_check_domain(char *domain, const char **error_r)
{
	size_t len = strlen(domain), label = 0, i;

	if (len == 0) {
		*error_r = "empty domain";
		return MP_EINVAL;
	}
	if (len > CTL_DOMAIN_LEN_MAX) {
		*error_r = "domain longer than 253 bytes";
		return MP_EINVAL;
	}
	if (!ctl_utf8_valid(domain, len)) {
		*error_r = "domain is not valid UTF-8";
		return MP_EINVAL;
	}
	for (i = 0; i <= len; i++) {
		unsigned char ch = (unsigned char)domain[i];

		if (ch == '.' || ch == '\0') {
			if (label == 0) {
				*error_r = "empty label in domain";
				return MP_EINVAL;
			}
			if (label > 63) {
				*error_r = "domain label longer than 63 bytes";
				return MP_EINVAL;
			}
			if (domain[i - 1] == '-' || domain[i - label] == '-') {
				*error_r = "domain label starts or ends with '-'";
				return MP_EINVAL;
			}
			label = 0;
			continue;
		}
		/* Letters, digits, '-' and UTF-8 (internationalised
		 * domains); nothing that could confuse a mail address. */
		if (!(isalnum(ch) && ch < 0x80) && ch != '-' && ch < 0x80) {
			*error_r = "domain holds a character other than "
				   "letters, digits, '-' and '.'";
			return MP_EINVAL;
		}
		label++;
	}
	ctl_ascii_lower(domain);
	return 0;
}

int ctl_check_user(char *user, const char **error_r)
{
	char *at = strchr(user, '@');
	size_t len = strlen(user), i;
	int ret;

	if (at == NULL || strchr(at + 1, '@') != NULL) {
		*error_r = "a user must be local@domain with exactly one '@'";
		return MP_EINVAL;
	}
	if (at == user) {
		*error_r = "empty local part before '@'";
		return MP_EINVAL;
	}
	if (len > CTL_USER_LEN_MAX) {
		*error_r = "user longer than 254 bytes";
		return MP_EINVAL;
	}
	if ((size_t)(at - user) > 64) {
		*error_r = "local part longer than 64 bytes";
		return MP_EINVAL;
	}
	if (!ctl_utf8_valid(user, len)) {
		*error_r = "user is not valid UTF-8";
		return MP_EINVAL;
	}
	for (i = 0; user + i < at; i++) {
		unsigned char ch = (unsigned char)user[i];

		if (ch <= ' ' || ch == 0x7f ||
		    strchr("\"(),:;<>[]\\", ch) != NULL) {
			*error_r = "local part holds a space, control or "
				   "special character";
			return MP_EINVAL;
		}
	}
	ret = ctl_check_domain(at + 1, error_r);
	if (ret != 0)
		return ret;
	ctl_ascii_lower(user);
	return 0;
}

int ctl_check_mailbox(const char *name, const char **error_r)
{
	size_t len = strlen(name), i;

	if (len == 0) {
		*error_r = "empty mailbox name";
		return MP_EINVAL;
	}
	if (len > CTL_MAILBOX_LEN_MAX) {
		*error_r = "mailbox name longer than 1000 bytes";
		return MP_EINVAL;
	}
	if (!ctl_utf8_valid(name, len)) {
		*error_r = "mailbox name is not valid UTF-8";
		return MP_EINVAL;
	}
	for (i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)name[i];

		if (ch < 0x20 || ch == 0x7f) {
			*error_r = "mailbox name holds a control character";
			return MP_EINVAL;
		}
		/* IMAP LIST wildcards could never name it again. */
		if (ch == '*' || ch == '%') {
			*error_r = "mailbox name holds '*' or '%'";
			return MP_EINVAL;
		}
	}
	if (name[0] == '/' || name[len - 1] == '/' ||
	    strstr(name, "//") != NULL) {
		*error_r = "mailbox name has an empty level ('/' at an end "
			   "or \"//\")";
		return MP_EINVAL;
	}
	return 0;
}

int ctl_check_uidset(const char *s, const char **error_r)
{
	struct mp_uidset set = { 0 };
	int ret;

	if (*s == '\0') {
		*error_r = "empty UID set";
		return MP_EINVAL;
	}
	ret = mp_uidset_parse(s, strlen(s), &set, error_r);
	if (ret != 0)
		return ret == MP_ETOOBIG ? MP_EINVAL : ret;
	mp_uidset_free(&set);
	return 0;
}

int ctl_parse_uid(const char *s, uint32_t *uid_r)
{
	uint64_t v = 0;
	size_t i;

	if (*s == '\0' || *s == '0')
		return MP_EINVAL;
	for (i = 0; s[i] != '\0'; i++) {
		if (s[i] < '0' || s[i] > '9')
			return MP_EINVAL;
		v = v * 10 + (uint64_t)(s[i] - '0');
		if (v > UINT32_MAX)
			return MP_EINVAL;
	}
	*uid_r = (uint32_t)v;
	return 0;
}

/* RFC 3501 §9: flag = "\Answered" / "\Flagged" / "\Deleted" / "\Seen" /
 * "\Draft" / flag-keyword / flag-extension; \Recent cannot be stored. */
static const char *const ctl_system_flags[] = {
	"\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft",
};

/* atom-char: any CHAR except atom-specials (RFC 3501 §9). */
static int ctl_atom_char(unsigned char ch)
{
	return ch > 0x20 && ch < 0x7f && strchr("(){%*\"\\]", ch) == NULL;
}

static int ctl_flag_check(char *flag, const char **error_r)
{
	size_t len = strlen(flag), i;

	if (len > CTL_FLAG_LEN_MAX) {
		*error_r = "flag longer than 255 bytes";
		return MP_EINVAL;
	}
	if (flag[0] == '\\') {
		for (i = 0; i < sizeof ctl_system_flags /
			    sizeof ctl_system_flags[0]; i++) {
			if (strcasecmp(flag, ctl_system_flags[i]) == 0) {
				memcpy(flag, ctl_system_flags[i], len);
				return 0;
			}
		}
		*error_r = "unknown system flag (use \\Seen, \\Answered, "
			   "\\Flagged, \\Deleted, \\Draft or a keyword)";
		return MP_EINVAL;
	}
	for (i = 0; i < len; i++) {
		if (!ctl_atom_char((unsigned char)flag[i])) {
			*error_r = "a keyword flag may hold only IMAP atom "
				   "characters";
			return MP_EINVAL;
		}
	}
	return 0;
}

static int ctl_is_sep(char ch)
{
	return ch == ',' || ch == ' ' || ch == '\t';
}

/* Appends the flags found in text to f. */
static int ctl_flags_add_text(const char *text, struct ctl_flags *f,
			      const char **error_r)
{
	size_t tlen = strlen(text), oldlen = 0, i, start;
	char *storage, **v;
	size_t n = f->n;

	/* Re-point the old entries if the storage moves, so copy by
	 * offsets. */
	if (f->storage != NULL) {
		for (i = 0; i < f->n; i++)
			oldlen += strlen(f->v[i]) + 1;
	}
	storage = malloc(oldlen + tlen + 1);
	v = malloc((CTL_FLAGS_MAX + 1) * sizeof *v);
	if (storage == NULL || v == NULL) {
		free(storage);
		free(v);
		*error_r = "out of memory";
		return MP_ENOMEM;
	}
	oldlen = 0;
	for (i = 0; i < f->n; i++) {
		size_t l = strlen(f->v[i]) + 1;

		memcpy(storage + oldlen, f->v[i], l);
		v[i] = storage + oldlen;
		oldlen += l;
	}
	memcpy(storage + oldlen, text, tlen + 1);
	for (i = oldlen; i < oldlen + tlen;) {
		int ret;

		while (i < oldlen + tlen && ctl_is_sep(storage[i]))
			storage[i++] = '\0';
		if (i == oldlen + tlen)
			break;
		start = i;
		while (i < oldlen + tlen && !ctl_is_sep(storage[i]))
			i++;
		if (i < oldlen + tlen)
			storage[i++] = '\0';
		if (n == CTL_FLAGS_MAX) {
			free(storage);
			free(v);
			*error_r = "too many flags";
			return MP_EINVAL;
		}
		ret = ctl_flag_check(storage + start, error_r);
		if (ret != 0) {
			free(storage);
			free(v);
			return ret;
		}
		v[n++] = storage + start;
	}
	free(f->storage);
	free(f->v);
	f->storage = storage;
	f->v = v;
	f->n = n;
	return 0;
}

int ctl_flags_parse(const char *text, struct ctl_flags *f, const char **error_r)
{
	memset(f, 0, sizeof *f);
	return ctl_flags_add_text(text, f, error_r);
}

int ctl_flags_parse_many(char **texts, int n, struct ctl_flags *f,
			 const char **error_r)
{
	int i, ret;

	memset(f, 0, sizeof *f);
	for (i = 0; i < n; i++) {
		ret = ctl_flags_add_text(texts[i], f, error_r);
		if (ret != 0) {
			ctl_flags_free(f);
			return ret;
		}
	}
	return 0;
}

void ctl_flags_free(struct ctl_flags *f)
{
	free(f->v);
	free(f->storage);
	f->v = NULL;
	f->storage = NULL;
	f->n = 0;
}

/* --------------------------------------------------------------- stdin */

static struct termios ctl_tty_saved;
static atomic_int ctl_tty_changed;

void ctl_tty_restore(void)
{
	if (atomic_exchange(&ctl_tty_changed, 0))
		(void)tcsetattr(STDIN_FILENO, TCSAFLUSH, &ctl_tty_saved);
}

static ssize_t ctl_read_retry(int fd, void *buf, size_t len)
{
	ssize_t n;

	do {
		n = read(fd, buf, len);
	} while (n < 0 && errno == EINTR);
	return n;
}

int ctl_read_line_stdin(const char *prompt, char *buf, size_t cap, size_t max,
			size_t *len_r, const char **error_r)
{
	int tty = isatty(STDIN_FILENO);
	size_t len = 0;
	char *nl = NULL;
	ssize_t n;

	/* Room for the line, "\r\n", one byte more to see the overflow. */
	if (cap < max + 4) {
		*error_r = "internal error: line buffer too small";
		return MP_EINVAL;
	}
	if (tty) {
		struct termios t;

		if (tcgetattr(STDIN_FILENO, &ctl_tty_saved) == 0) {
			t = ctl_tty_saved;
			t.c_lflag &= ~(tcflag_t)ECHO;
			t.c_lflag |= ECHONL;
			atomic_store(&ctl_tty_changed, 1);
			if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &t) != 0)
				atomic_store(&ctl_tty_changed, 0);
		}
		fprintf(stderr, "%s", prompt);
		fflush(stderr);
	}
	/* A terminal gives one line per read; a pipe is read to its end so
	 * a second line (a likely mistake) is noticed. */
	while (len < cap - 1) {
		n = ctl_read_retry(STDIN_FILENO, buf + len, cap - 1 - len);
		if (n < 0) {
			ctl_tty_restore();
			*error_r = "reading stdin failed";
			return MP_EIO;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (tty && memchr(buf, '\n', len) != NULL)
			break;
	}
	ctl_tty_restore();
	buf[len] = '\0';
	if (len == cap - 1) {
		*error_r = "input on stdin is too long";
		return MP_EINVAL;
	}
	if (memchr(buf, '\0', len) != NULL) {
		*error_r = "input on stdin holds a NUL byte";
		return MP_EINVAL;
	}
	nl = memchr(buf, '\n', len);
	if (nl != NULL) {
		if ((size_t)(nl - buf) + 1 != len) {
			*error_r = "stdin holds more than one line";
			return MP_EINVAL;
		}
		*nl = '\0';
		len = (size_t)(nl - buf);
		if (len > 0 && buf[len - 1] == '\r')
			buf[--len] = '\0';
	}
	if (len == 0) {
		*error_r = "empty input on stdin";
		return MP_EINVAL;
	}
	if (len > max) {
		*error_r = "input on stdin is too long";
		return MP_EINVAL;
	}
	*len_r = len;
	return 0;
}

int ctl_read_all_stdin(size_t max, uint8_t **data_r, size_t *len_r,
		       const char **error_r)
{
	struct mp_buf b;
	char chunk[65536];
	ssize_t n;
	size_t len;
	int ret;

	mp_buf_init(&b, max);
	for (;;) {
		n = ctl_read_retry(STDIN_FILENO, chunk, sizeof chunk);
		if (n < 0) {
			mp_buf_free(&b);
			*error_r = "reading stdin failed";
			return MP_EIO;
		}
		if (n == 0)
			break;
		ret = mp_buf_append(&b, chunk, (size_t)n);
		if (ret != 0) {
			mp_buf_free(&b);
			*error_r = ret == MP_ENOSPC ?
				"message on stdin is larger than the limit" :
				"out of memory";
			return ret == MP_ENOSPC ? MP_EINVAL : ret;
		}
	}
	if (b.len == 0) {
		mp_buf_free(&b);
		*error_r = "empty message on stdin";
		return MP_EINVAL;
	}
	*data_r = (uint8_t *)mp_buf_steal(&b, &len);
	*len_r = len;
	mp_buf_free(&b);
	if (*data_r == NULL) {
		*error_r = "out of memory";
		return MP_ENOMEM;
	}
	return 0;
}

int ctl_write_stdout(const void *data, size_t len)
{
	if (len == 0)
		return 0;
	if (fwrite(data, 1, len, stdout) != len)
		return MP_EIO;
	return 0;
}

/* -------------------------------------------------------------- output */

const char *ctl_fmt_time(uint64_t unix_s, char *out, size_t outlen)
{
	struct tm tm;
	time_t t = (time_t)unix_s;

	if (unix_s == 0 || (uint64_t)t != unix_s || gmtime_r(&t, &tm) == NULL ||
	    strftime(out, outlen, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(out, outlen, "%s", unix_s == 0 ? "-" : "?");
	return out;
}

const char *ctl_fmt_size(uint64_t n, int unlimited_zero, char *out,
			 size_t outlen)
{
	static const char units[] = "kMGT";
	uint64_t v = n;
	int u = -1;

	if (n == 0 && unlimited_zero) {
		snprintf(out, outlen, "unlimited");
		return out;
	}
	while (v != 0 && v % 1024 == 0 && u < 3) {
		v /= 1024;
		u++;
	}
	if (u < 0)
		snprintf(out, outlen, "%llu", (unsigned long long)n);
	else
		snprintf(out, outlen, "%llu%c", (unsigned long long)v,
			 units[u]);
	return out;
}

const char *ctl_fmt_name(const char *s, char *out, size_t outlen)
{
	size_t i, o = 0;
	int plain = *s != '\0';

	for (i = 0; s[i] != '\0' && plain; i++) {
		unsigned char ch = (unsigned char)s[i];

		if (ch <= ' ' || ch == 0x7f || ch == '"' || ch == '\\')
			plain = 0;
	}
	if (plain) {
		snprintf(out, outlen, "%s", s);
		return out;
	}
	if (outlen < 3) {
		if (outlen > 0)
			out[0] = '\0';
		return out;
	}
	out[o++] = '"';
	for (i = 0; s[i] != '\0' && o + 5 < outlen; i++) {
		unsigned char ch = (unsigned char)s[i];

		if (ch == '"' || ch == '\\') {
			out[o++] = '\\';
			out[o++] = (char)ch;
		} else if (ch < 0x20 || ch == 0x7f) {
			o += (size_t)snprintf(out + o, outlen - o, "\\x%02x",
					      ch);
		} else {
			out[o++] = (char)ch;
		}
	}
	out[o++] = '"';
	out[o] = '\0';
	return out;
}

const char *ctl_hash_scheme(const char *hash, char *out, size_t outlen)
{
	static const struct {
		const char *prefix, *name;
	} schemes[] = {
		{ "$y$", "yescrypt" },
		{ "$gy$", "gost-yescrypt" },
		{ "$7$", "scrypt" },
		{ "$2b$", "bcrypt" },
		{ "$2y$", "bcrypt" },
		{ "$2a$", "bcrypt" },
		{ "$2x$", "bcrypt" },
		{ "$6$", "sha512-crypt" },
		{ "$5$", "sha256-crypt" },
		{ "$sha1$", "sha1-crypt" },
		{ "$md5", "sun-md5-crypt" },
		{ "$1$", "md5-crypt" },
		{ "_", "bsdi-crypt" },
	};
	const char *crypt_part = hash;
	char prefix[40] = "";
	const char *name = NULL;
	size_t i;

	if (hash == NULL || *hash == '\0') {
		snprintf(out, outlen, "none");
		return out;
	}
	if (hash[0] == '{') {
		const char *end = strchr(hash, '}');

		if (end != NULL && (size_t)(end - hash) + 1 < sizeof prefix) {
			memcpy(prefix, hash, (size_t)(end - hash) + 1);
			prefix[end - hash + 1] = '\0';
			crypt_part = end + 1;
		}
	}
	for (i = 0; i < sizeof schemes / sizeof schemes[0]; i++) {
		if (strncmp(crypt_part, schemes[i].prefix,
			    strlen(schemes[i].prefix)) == 0) {
			name = schemes[i].name;
			break;
		}
	}
	if (name == NULL)
		name = strlen(crypt_part) == 13 ? "descrypt" : "unknown";
	if (prefix[0] != '\0')
		snprintf(out, outlen, "%s (stored as %s)", name, prefix);
	else
		snprintf(out, outlen, "%s", name);
	return out;
}

const char *ctl_state_name(Merpati__V1__AccountState st)
{
	switch (st) {
	case MERPATI__V1__ACCOUNT_STATE__ACCOUNT_ACTIVE:
		return "active";
	case MERPATI__V1__ACCOUNT_STATE__ACCOUNT_DISABLED:
		return "disabled";
	default:
		return "unknown";
	}
}

const char *ctl_fmt_flags(char **flags, size_t n, char *out, size_t outlen)
{
	size_t i, o = 0;
	int w;

	w = snprintf(out, outlen, "(");
	o = w > 0 ? (size_t)w : 0;
	for (i = 0; i < n && o < outlen; i++) {
		w = snprintf(out + o, outlen - o, "%s%s", i > 0 ? " " : "",
			     flags[i]);
		if (w < 0)
			break;
		o += (size_t)w;
	}
	if (o < outlen)
		snprintf(out + o, outlen - o, ")");
	return out;
}

int ctl_pages_add(struct ctl_pages *l, ProtobufCMessage *page, void *const *items,
		  size_t n)
{
	size_t i;

	if (l->n_pages == l->cap_pages) {
		size_t cap = l->cap_pages == 0 ? 16 : l->cap_pages * 2;
		void *p = realloc(l->pages, cap * sizeof *l->pages);

		if (p == NULL)
			return MP_ENOMEM;
		l->pages = p;
		l->cap_pages = cap;
	}
	if (l->n + n > l->cap) {
		size_t cap = l->cap == 0 ? 256 : l->cap;
		void *p;

		while (cap < l->n + n)
			cap *= 2;
		p = realloc(l->v, cap * sizeof *l->v);
		if (p == NULL)
			return MP_ENOMEM;
		l->v = p;
		l->cap = cap;
	}
	l->pages[l->n_pages++] = page;
	for (i = 0; i < n; i++) {
		if (items[i] != NULL)
			l->v[l->n++] = items[i];
	}
	return 0;
}

void ctl_pages_free(struct ctl_pages *l)
{
	size_t i;

	for (i = 0; i < l->n_pages; i++)
		protobuf_c_message_free_unpacked(l->pages[i], NULL);
	free(l->pages);
	free(l->v);
	memset(l, 0, sizeof *l);
}
