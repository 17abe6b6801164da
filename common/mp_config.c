/*
 * mp_config: typed settings from defaults, a "key = value" file and
 * "--key=value" flags, written into the caller's struct.
 *
 * Every source is checked entirely before anything is stored: a file or a
 * command line with one bad entry leaves the struct as it was, and the error
 * names the key and where it came from (file:line or "command line"). Never
 * accepts an unknown key, a key given twice in one file, or a value with
 * trailing garbage; never truncates a number. Key and value text from the
 * file is quoted (mp_log_quote) in error messages, so an error is always one
 * printable line.
 *
 * File syntax, one setting per line:
 *   # comment                  ('#' outside quotes starts a comment)
 *   key = value                (spaces and tabs around key and value ignored)
 *   key = "quoted # value"     (\" and \\ are the only escapes)
 * Keys are [A-Za-z0-9_.-]+. CRLF line ends are accepted; other control
 * characters (NUL included) are not.
 *
 * Flags: "--key=value" or "--key value"; a BOOL flag alone ("--tls") means
 * true and takes the next word only when it is a boolean ("--tls off"). A
 * flag given twice: the last wins. "--" ends the flags. "--help" anywhere
 * before "--" wins over every error, so a broken command line can still ask
 * for help. "--config" may appear once.
 *
 * Bounds (min, max) apply to INT, UINT, SIZE and DURATION; both 0 means none,
 * and max 0 alone means "no upper bound" (a range [min, 0] would be empty).
 * For INT, min and max hold int64_t values cast to uint64_t.
 *
 * The caller's struct must start zeroed: storing a string frees the one it
 * replaces, so every MP_CONF_STRING field must be NULL or ours.
 */
#include "mp_config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "mp_error.h"
#include "mp_log.h"

/* A config file is written by an operator, but it is still input: bound it. */
#define MP_CONFIG_FILE_MAX (1024 * 1024)
/* Room for a quoted key or value in an error message. */
#define MP_CONFIG_QUOTE_MAX 160

/* A value that parsed and passed its bounds, ready to be stored. */
struct mp_config_value {
	const struct mp_config_opt *opt; /* borrowed */
	union {
		char *s; /* owned until stored */
		int64_t i;
		uint64_t u;
		bool b;
	} v;
};

/* ------------------------------------------------------------ errors */

static void mp_config_error(char **error_r, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void mp_config_error(char **error_r, const char *fmt, ...)
{
	if (error_r == NULL)
		return;
	va_list ap;
	va_start(ap, fmt);
	char *msg = NULL;
	if (vasprintf(&msg, fmt, ap) < 0)
		msg = NULL; /* out of memory: the return code still says why */
	va_end(ap);
	*error_r = msg;
}

static const char *mp_config_q(char *out, const char *s)
{
	return mp_log_quote(out, MP_CONFIG_QUOTE_MAX, s, s != NULL ? strlen(s) : 0);
}

/* ------------------------------------------------------------ value parsers */

/* Leading decimal digits of s into *r, overflow checked digit by digit.
 * Returns the number of digits (0 = none or overflow). */
static size_t mp_parse_digits(const char *s, uint64_t *r)
{
	uint64_t v = 0;
	size_t i = 0;
	for (; s[i] >= '0' && s[i] <= '9'; i++) {
		unsigned d = (unsigned)(s[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return 0;
		v = v * 10 + d;
	}
	*r = v;
	return i;
}

int mp_parse_uint(const char *s, uint64_t *r)
{
	uint64_t v;
	if (s == NULL)
		return MP_EINVAL;
	size_t n = mp_parse_digits(s, &v);
	if (n == 0 || s[n] != '\0')
		return MP_EINVAL;
	*r = v;
	return MP_OK;
}

static int mp_parse_int(const char *s, int64_t *r)
{
	uint64_t v;
	int neg = 0;
	if (s == NULL)
		return MP_EINVAL;
	if (*s == '-') {
		neg = 1;
		s++;
	}
	if (mp_parse_uint(s, &v) != MP_OK)
		return MP_EINVAL;
	if (neg) {
		if (v > (uint64_t)INT64_MAX + 1)
			return MP_EINVAL;
		*r = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
	} else {
		if (v > (uint64_t)INT64_MAX)
			return MP_EINVAL;
		*r = (int64_t)v;
	}
	return MP_OK;
}

int mp_parse_size(const char *s, uint64_t *r)
{
	uint64_t v;
	unsigned shift;
	if (s == NULL)
		return MP_EINVAL;
	size_t n = mp_parse_digits(s, &v);
	if (n == 0)
		return MP_EINVAL;
	const char *unit = s + n;
	if (unit[0] == '\0') {
		shift = 0;
	} else if (unit[1] != '\0') {
		return MP_EINVAL;
	} else {
		switch (unit[0]) {
		case 'k': case 'K': shift = 10; break;
		case 'm': case 'M': shift = 20; break;
		case 'g': case 'G': shift = 30; break;
		case 't': case 'T': shift = 40; break;
		default: return MP_EINVAL;
		}
	}
	if (v > (UINT64_MAX >> shift))
		return MP_EINVAL;
	*r = v << shift;
	return MP_OK;
}

int mp_parse_duration_ms(const char *s, uint64_t *r)
{
	static const struct {
		const char *unit;
		uint64_t ms;
	} units[] = {
		{ "", 1 }, { "ms", 1 }, { "s", 1000 }, { "m", 60 * 1000 },
		{ "h", 60 * 60 * 1000 }, { "d", 24 * 60 * 60 * 1000 },
	};
	uint64_t v;
	if (s == NULL)
		return MP_EINVAL;
	size_t n = mp_parse_digits(s, &v);
	if (n == 0)
		return MP_EINVAL;
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (strcmp(s + n, units[i].unit) == 0) {
			if (v > UINT64_MAX / units[i].ms)
				return MP_EINVAL;
			*r = v * units[i].ms;
			return MP_OK;
		}
	}
	return MP_EINVAL;
}

int mp_parse_bool(const char *s, int *r)
{
	static const char *const yes[] = { "true", "yes", "on", "1" };
	static const char *const no[] = { "false", "no", "off", "0" };
	if (s == NULL)
		return MP_EINVAL;
	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		if (strcasecmp(s, yes[i]) == 0) {
			*r = 1;
			return MP_OK;
		}
		if (strcasecmp(s, no[i]) == 0) {
			*r = 0;
			return MP_OK;
		}
	}
	return MP_EINVAL;
}

/* ------------------------------------------------------------ options */

static const char *mp_config_type_name(enum mp_config_type type)
{
	switch (type) {
	case MP_CONF_STRING: return "string";
	case MP_CONF_INT: return "integer";
	case MP_CONF_UINT: return "unsigned integer";
	case MP_CONF_BOOL: return "boolean";
	case MP_CONF_SIZE: return "size";
	case MP_CONF_DURATION: return "duration";
	}
	return "?";
}

static const struct mp_config_opt *mp_config_find(const struct mp_config_opt *opts,
						  size_t n, const char *key, size_t keylen)
{
	for (size_t i = 0; i < n; i++) {
		if (strlen(opts[i].name) == keylen && memcmp(opts[i].name, key, keylen) == 0)
			return &opts[i];
	}
	return NULL;
}

static void mp_config_value_clear(struct mp_config_value *cv)
{
	if (cv->opt != NULL && cv->opt->type == MP_CONF_STRING) {
		free(cv->v.s);
		cv->v.s = NULL;
	}
	cv->opt = NULL;
}

static int mp_config_check_bounds(const struct mp_config_opt *opt,
				  const struct mp_config_value *cv,
				  const char *where, const char *value, char **error_r)
{
	char qk[MP_CONFIG_QUOTE_MAX], qv[MP_CONFIG_QUOTE_MAX];

	if (opt->min == 0 && opt->max == 0)
		return MP_OK;
	if (opt->type == MP_CONF_INT) {
		int64_t min = (int64_t)opt->min, max = (int64_t)opt->max;
		if (cv->v.i >= min && (opt->max == 0 || cv->v.i <= max))
			return MP_OK;
		char upper[32] = "inf";
		if (opt->max != 0)
			snprintf(upper, sizeof(upper), "%" PRId64, max);
		mp_config_error(error_r, "%soption %s: %s is outside [%" PRId64 ", %s]",
				where, mp_config_q(qk, opt->name), mp_config_q(qv, value),
				min, upper);
		return MP_EINVAL;
	}
	const char *unit = opt->type == MP_CONF_SIZE ? " bytes"
			 : opt->type == MP_CONF_DURATION ? " ms" : "";
	if (cv->v.u < opt->min) {
		mp_config_error(error_r, "%soption %s: %s is below the minimum %" PRIu64 "%s",
				where, mp_config_q(qk, opt->name), mp_config_q(qv, value),
				opt->min, unit);
		return MP_EINVAL;
	}
	if (opt->max != 0 && cv->v.u > opt->max) {
		mp_config_error(error_r, "%soption %s: %s is above the maximum %" PRIu64 "%s",
				where, mp_config_q(qk, opt->name), mp_config_q(qv, value),
				opt->max, unit);
		return MP_EINVAL;
	}
	return MP_OK;
}

/* Parse value for opt into *cv without touching the conf struct. */
static int mp_config_parse_value(const struct mp_config_opt *opt, const char *value,
				 const char *where, struct mp_config_value *cv,
				 char **error_r)
{
	char qk[MP_CONFIG_QUOTE_MAX], qv[MP_CONFIG_QUOTE_MAX];
	int ret, b = 0;

	memset(cv, 0, sizeof(*cv));
	switch (opt->type) {
	case MP_CONF_STRING:
		cv->v.s = strdup(value);
		if (cv->v.s == NULL) {
			mp_config_error(error_r, "%soption %s: out of memory", where,
					mp_config_q(qk, opt->name));
			return MP_ENOMEM;
		}
		cv->opt = opt;
		return MP_OK;
	case MP_CONF_INT:
		ret = mp_parse_int(value, &cv->v.i);
		break;
	case MP_CONF_UINT:
		ret = mp_parse_uint(value, &cv->v.u);
		break;
	case MP_CONF_BOOL:
		ret = mp_parse_bool(value, &b);
		cv->v.b = b != 0;
		break;
	case MP_CONF_SIZE:
		ret = mp_parse_size(value, &cv->v.u);
		break;
	case MP_CONF_DURATION:
		ret = mp_parse_duration_ms(value, &cv->v.u);
		break;
	default:
		mp_config_error(error_r, "%soption %s: unknown type %d", where,
				mp_config_q(qk, opt->name), (int)opt->type);
		return MP_EINVAL;
	}
	if (ret != MP_OK) {
		static const char *const hints[] = {
			[MP_CONF_STRING] = "",
			[MP_CONF_INT] = " (decimal, optional '-')",
			[MP_CONF_UINT] = " (decimal)",
			[MP_CONF_BOOL] = " (true/false, yes/no, on/off, 1/0)",
			[MP_CONF_SIZE] = " (bytes, or with k/M/G/T)",
			[MP_CONF_DURATION] = " (ms, or with ms/s/m/h/d)",
		};
		mp_config_error(error_r, "%soption %s: %s is not a valid %s%s", where,
				mp_config_q(qk, opt->name), mp_config_q(qv, value),
				mp_config_type_name(opt->type), hints[opt->type]);
		return MP_EINVAL;
	}
	ret = mp_config_check_bounds(opt, cv, where, value, error_r);
	if (ret != MP_OK)
		return ret;
	cv->opt = opt;
	return MP_OK;
}

/* Store a checked value; cannot fail. Takes ownership of a string. */
static void mp_config_store(void *conf, struct mp_config_value *cv)
{
	char *field = (char *)conf + cv->opt->offset;

	switch (cv->opt->type) {
	case MP_CONF_STRING: {
		char **sp = (char **)(void *)field;
		free(*sp);
		*sp = cv->v.s;
		cv->v.s = NULL;
		break;
	}
	case MP_CONF_INT:
		memcpy(field, &cv->v.i, sizeof(int64_t));
		break;
	case MP_CONF_UINT:
	case MP_CONF_SIZE:
	case MP_CONF_DURATION:
		memcpy(field, &cv->v.u, sizeof(uint64_t));
		break;
	case MP_CONF_BOOL:
		memcpy(field, &cv->v.b, sizeof(bool));
		break;
	}
	cv->opt = NULL;
}

int mp_config_set(const struct mp_config_opt *opts, size_t n, void *conf,
		  const char *key, const char *value, char **error_r)
{
	char qk[MP_CONFIG_QUOTE_MAX];
	struct mp_config_value cv;

	if (error_r != NULL)
		*error_r = NULL;
	if (key == NULL || value == NULL) {
		mp_config_error(error_r, "option without key or value");
		return MP_EINVAL;
	}
	const struct mp_config_opt *opt = mp_config_find(opts, n, key, strlen(key));
	if (opt == NULL) {
		mp_config_error(error_r, "unknown option %s", mp_config_q(qk, key));
		return MP_EINVAL;
	}
	int ret = mp_config_parse_value(opt, value, "", &cv, error_r);
	if (ret != MP_OK)
		return ret;
	mp_config_store(conf, &cv);
	return MP_OK;
}

int mp_config_defaults(const struct mp_config_opt *opts, size_t n, void *conf,
		       char **error_r)
{
	if (error_r != NULL)
		*error_r = NULL;
	struct mp_config_value *cvs = calloc(n > 0 ? n : 1, sizeof(*cvs));
	if (cvs == NULL) {
		mp_config_error(error_r, "out of memory");
		return MP_ENOMEM;
	}
	int ret = MP_OK;
	for (size_t i = 0; i < n && ret == MP_OK; i++) {
		if (opts[i].def != NULL)
			ret = mp_config_parse_value(&opts[i], opts[i].def, "default: ",
						    &cvs[i], error_r);
	}
	for (size_t i = 0; i < n; i++) {
		if (ret == MP_OK && cvs[i].opt != NULL)
			mp_config_store(conf, &cvs[i]);
		else
			mp_config_value_clear(&cvs[i]);
	}
	free(cvs);
	return ret;
}

void mp_config_free(const struct mp_config_opt *opts, size_t n, void *conf)
{
	for (size_t i = 0; i < n; i++) {
		if (opts[i].type == MP_CONF_STRING) {
			char **sp = (char **)(void *)((char *)conf + opts[i].offset);
			free(*sp);
			*sp = NULL;
		}
	}
}

/* ------------------------------------------------------------ file */

static int mp_config_is_key_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
}

static int mp_config_is_space(char c)
{
	return c == ' ' || c == '\t';
}

/* Parse one line (no '\n'; len bytes) into *cv, or leave cv->opt NULL for a
 * blank or comment line. seen[] holds the line number of each option seen. */
static int mp_config_parse_line(const struct mp_config_opt *opts, size_t n,
				const char *where, const char *line, size_t len,
				unsigned *seen, unsigned lineno,
				struct mp_config_value *cv, char **error_r)
{
	size_t i = 0;

	memset(cv, 0, sizeof(*cv));
	if (len > 0 && line[len - 1] == '\r')
		len--;
	for (size_t j = 0; j < len; j++) {
		unsigned char c = (unsigned char)line[j];
		if ((c < 0x20 && c != '\t') || c == 0x7f) {
			mp_config_error(error_r, "%scontrol character 0x%02x", where, c);
			return MP_EINVAL;
		}
	}

	while (i < len && mp_config_is_space(line[i]))
		i++;
	if (i == len || line[i] == '#')
		return MP_OK;

	size_t key_start = i;
	while (i < len && mp_config_is_key_char(line[i]))
		i++;
	size_t key_len = i - key_start;
	if (key_len == 0) {
		mp_config_error(error_r, "%sexpected \"key = value\"", where);
		return MP_EINVAL;
	}
	char key[MP_CONFIG_QUOTE_MAX];
	mp_log_quote(key, sizeof(key), line + key_start, key_len);

	while (i < len && mp_config_is_space(line[i]))
		i++;
	if (i == len || line[i] != '=') {
		mp_config_error(error_r, "%sexpected \"=\" after %s", where, key);
		return MP_EINVAL;
	}
	i++;
	while (i < len && mp_config_is_space(line[i]))
		i++;

	const struct mp_config_opt *opt = mp_config_find(opts, n, line + key_start, key_len);
	if (opt == NULL) {
		mp_config_error(error_r, "%sunknown option %s", where, key);
		return MP_EINVAL;
	}
	size_t idx = (size_t)(opt - opts);
	if (seen[idx] != 0) {
		mp_config_error(error_r, "%soption %s given twice (first on line %u)",
				where, key, seen[idx]);
		return MP_EINVAL;
	}

	/* The value is never longer than the rest of the line. */
	char *value = malloc(len - i + 1);
	if (value == NULL) {
		mp_config_error(error_r, "%sout of memory", where);
		return MP_ENOMEM;
	}
	size_t vlen = 0;
	if (i < len && line[i] == '"') {
		int closed = 0;
		for (i++; i < len; i++) {
			char c = line[i];
			if (c == '"') {
				closed = 1;
				i++;
				break;
			}
			if (c == '\\') {
				if (i + 1 == len || (line[i + 1] != '"' && line[i + 1] != '\\')) {
					mp_config_error(error_r, "%soption %s: bad escape in quoted value "
							"(only \\\" and \\\\)", where, key);
					free(value);
					return MP_EINVAL;
				}
				c = line[++i];
			}
			value[vlen++] = c;
		}
		if (!closed) {
			mp_config_error(error_r, "%soption %s: missing closing quote", where, key);
			free(value);
			return MP_EINVAL;
		}
		while (i < len && mp_config_is_space(line[i]))
			i++;
		if (i < len && line[i] != '#') {
			mp_config_error(error_r, "%soption %s: text after the closing quote",
					where, key);
			free(value);
			return MP_EINVAL;
		}
	} else {
		for (; i < len && line[i] != '#'; i++) {
			if (line[i] == '"') {
				mp_config_error(error_r, "%soption %s: stray quote in value "
						"(quote the whole value)", where, key);
				free(value);
				return MP_EINVAL;
			}
			value[vlen++] = line[i];
		}
		while (vlen > 0 && mp_config_is_space(value[vlen - 1]))
			vlen--;
	}
	/* No NUL can be inside: control characters were refused above. */
	value[vlen] = '\0';

	int ret = mp_config_parse_value(opt, value, where, cv, error_r);
	free(value);
	if (ret != MP_OK)
		return ret;
	seen[idx] = lineno;
	return MP_OK;
}

/* A path as errors show it: plain when it is plain, which is the common case,
 * quoted when it holds anything that could confuse a reader or a log. */
static const char *mp_config_show_path(char *qp, const char *path)
{
	for (const char *p = path; *p != '\0'; p++) {
		if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f ||
		    *p == '"' || *p == '\\')
			return mp_config_q(qp, path);
	}
	if (strlen(path) >= MP_CONFIG_QUOTE_MAX)
		return mp_config_q(qp, path); /* cut it */
	return path;
}

/* Parse a whole file body; stores nothing unless every line is good. */
static int mp_config_parse_buffer(const struct mp_config_opt *opts, size_t n, void *conf,
				  const char *path, const char *data, size_t size,
				  char **error_r)
{
	/* Duplicates are refused, so at most one value per option. */
	struct mp_config_value *cvs = calloc(n > 0 ? n : 1, sizeof(*cvs));
	unsigned *seen = calloc(n > 0 ? n : 1, sizeof(*seen));
	int ret = MP_OK;

	if (cvs == NULL || seen == NULL) {
		mp_config_error(error_r, "%s: out of memory", path);
		ret = MP_ENOMEM;
		goto out;
	}

	char qp[MP_CONFIG_QUOTE_MAX];
	const char *shown_path = mp_config_show_path(qp, path);

	size_t pos = 0;
	unsigned lineno = 0;
	while (pos < size) {
		const char *nl = memchr(data + pos, '\n', size - pos);
		size_t len = nl != NULL ? (size_t)(nl - (data + pos)) : size - pos;
		lineno++;

		char where[MP_CONFIG_QUOTE_MAX + 32];
		snprintf(where, sizeof(where), "%s:%u: ", shown_path, lineno);

		struct mp_config_value cv;
		ret = mp_config_parse_line(opts, n, where, data + pos, len, seen, lineno,
					   &cv, error_r);
		if (ret != MP_OK)
			goto out;
		if (cv.opt != NULL)
			cvs[cv.opt - opts] = cv;
		pos += len + (nl != NULL ? 1 : 0);
	}

	for (size_t i = 0; i < n; i++) {
		if (cvs[i].opt != NULL)
			mp_config_store(conf, &cvs[i]);
	}
out:
	if (cvs != NULL) {
		for (size_t i = 0; i < n; i++)
			mp_config_value_clear(&cvs[i]);
	}
	free(cvs);
	free(seen);
	return ret;
}

int mp_config_load_file(const struct mp_config_opt *opts, size_t n, void *conf,
			const char *path, char **error_r)
{
	char qp[MP_CONFIG_QUOTE_MAX];

	if (error_r != NULL)
		*error_r = NULL;
	if (path == NULL) {
		mp_config_error(error_r, "no config file named");
		return MP_EINVAL;
	}
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		mp_config_error(error_r, "%s: %s", mp_config_show_path(qp, path), strerror(e));
		return e == ENOENT ? MP_ENOENT : e == EACCES ? MP_EPERM : MP_EIO;
	}

	/* Read up to the limit plus one byte, to tell "too large" from "fits". */
	size_t cap = 4096, size = 0;
	char *data = malloc(cap);
	int ret = MP_OK;
	if (data == NULL) {
		mp_config_error(error_r, "%s: out of memory", mp_config_show_path(qp, path));
		close(fd);
		return MP_ENOMEM;
	}
	for (;;) {
		if (size == cap) {
			if (cap > MP_CONFIG_FILE_MAX) {
				mp_config_error(error_r, "%s: larger than %d bytes",
						mp_config_show_path(qp, path), MP_CONFIG_FILE_MAX);
				ret = MP_ETOOBIG;
				break;
			}
			size_t ncap = cap * 2;
			if (ncap > MP_CONFIG_FILE_MAX + 1)
				ncap = MP_CONFIG_FILE_MAX + 1;
			char *p = realloc(data, ncap);
			if (p == NULL) {
				mp_config_error(error_r, "%s: out of memory", mp_config_show_path(qp, path));
				ret = MP_ENOMEM;
				break;
			}
			data = p;
			cap = ncap;
		}
		ssize_t r = read(fd, data + size, cap - size);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			mp_config_error(error_r, "%s: %s", mp_config_show_path(qp, path), strerror(errno));
			ret = MP_EIO;
			break;
		}
		if (r == 0)
			break;
		size += (size_t)r;
	}
	close(fd);
	if (ret == MP_OK)
		ret = mp_config_parse_buffer(opts, n, conf, path, data, size, error_r);
	free(data);
	return ret;
}

/* ------------------------------------------------------------ flags */

void mp_config_usage(const struct mp_config_opt *opts, size_t n, const char *progname)
{
	printf("usage: %s [--config FILE] [--help] [--key=value | --key value ...]\n",
	       progname != NULL ? progname : "merpati");
	printf("  %-22s read settings from FILE (flags override it)\n", "--config FILE");
	printf("  %-22s show this help\n", "--help");
	for (size_t i = 0; i < n; i++) {
		const struct mp_config_opt *o = &opts[i];
		char left[64];
		static const char *const metavar[] = {
			[MP_CONF_STRING] = "STRING", [MP_CONF_INT] = "INT",
			[MP_CONF_UINT] = "UINT", [MP_CONF_BOOL] = "BOOL",
			[MP_CONF_SIZE] = "SIZE", [MP_CONF_DURATION] = "DURATION",
		};
		snprintf(left, sizeof(left), "--%s=%s", o->name,
			 (unsigned)o->type <= MP_CONF_DURATION ? metavar[o->type] : "?");
		printf("  %-22s %s", left, o->help != NULL ? o->help : "");
		if (o->type != MP_CONF_STRING && o->type != MP_CONF_BOOL &&
		    (o->min != 0 || o->max != 0)) {
			if (o->type == MP_CONF_INT)
				printf(" [%" PRId64 "..", (int64_t)o->min);
			else
				printf(" [%" PRIu64 "..", o->min);
			if (o->max == 0)
				printf("]");
			else if (o->type == MP_CONF_INT)
				printf("%" PRId64 "]", (int64_t)o->max);
			else
				printf("%" PRIu64 "]", o->max);
		}
		if (o->def != NULL)
			printf(" (default: %s)", o->def);
		printf("\n");
	}
	printf("sizes: 123, 10k, 50M, 2G, 1T; durations: 250ms, 5s, 2m, 1h, 1d (bare = ms)\n");
}

int mp_config_parse_args(const struct mp_config_opt *opts, size_t n, void *conf,
			 int argc, char **argv, int **rest_r, int *nrest_r,
			 char **error_r)
{
	const char *where = "command line: ";
	char qk[MP_CONFIG_QUOTE_MAX];
	const char *config_path = NULL;
	struct mp_config_value *cvs = NULL;
	size_t ncvs = 0;
	int *rest = NULL;
	int nrest = 0;
	int ret = MP_OK;

	if (error_r != NULL)
		*error_r = NULL;
	if (rest_r != NULL)
		*rest_r = NULL;
	if (nrest_r != NULL)
		*nrest_r = 0;
	if (argc < 1 || argv == NULL)
		return MP_OK;

	/* --help wins over any error, so a broken command line can still ask
	 * for help. "--" ends the flags. */
	for (int i = 1; i < argc && argv[i] != NULL; i++) {
		if (strcmp(argv[i], "--") == 0)
			break;
		if (strcmp(argv[i], "--help") == 0) {
			mp_config_usage(opts, n, argv[0]);
			fflush(stdout);
			return 1;
		}
	}

	cvs = calloc((size_t)argc, sizeof(*cvs));
	rest = calloc((size_t)argc, sizeof(*rest));
	if (cvs == NULL || rest == NULL) {
		mp_config_error(error_r, "out of memory");
		ret = MP_ENOMEM;
		goto out;
	}

	/* First check every flag, storing nothing. */
	int only_rest = 0;
	for (int i = 1; i < argc && argv[i] != NULL; i++) {
		const char *arg = argv[i];
		if (only_rest || strncmp(arg, "--", 2) != 0) {
			if (rest_r == NULL) {
				mp_config_error(error_r, "%sunexpected argument %s", where,
						mp_config_q(qk, arg));
				ret = MP_EINVAL;
				goto out;
			}
			rest[nrest++] = i;
			continue;
		}
		if (arg[2] == '\0') {
			only_rest = 1;
			continue;
		}
		const char *name = arg + 2;
		const char *eq = strchr(name, '=');
		size_t name_len = eq != NULL ? (size_t)(eq - name) : strlen(name);
		const char *value = eq != NULL ? eq + 1 : NULL;

		char qn[MP_CONFIG_QUOTE_MAX];
		mp_log_quote(qn, sizeof(qn), name, name_len);
		int is_config = name_len == 6 && memcmp(name, "config", 6) == 0;
		const struct mp_config_opt *opt = NULL;
		if (!is_config) {
			opt = mp_config_find(opts, n, name, name_len);
			if (opt == NULL) {
				mp_config_error(error_r, "%sunknown option %s", where, qn);
				ret = MP_EINVAL;
				goto out;
			}
		}
		if (value == NULL) {
			int b;
			if (opt != NULL && opt->type == MP_CONF_BOOL) {
				/* "--flag" alone means true; "--flag no" is taken
				 * only when the next word is a boolean. */
				if (i + 1 < argc && argv[i + 1] != NULL &&
				    mp_parse_bool(argv[i + 1], &b) == MP_OK)
					value = argv[++i];
				else
					value = "true";
			} else if (i + 1 < argc && argv[i + 1] != NULL) {
				value = argv[++i];
			} else {
				mp_config_error(error_r, "%soption %s needs a value", where, qn);
				ret = MP_EINVAL;
				goto out;
			}
		}
		if (is_config) {
			if (config_path != NULL) {
				mp_config_error(error_r, "%s--config given twice", where);
				ret = MP_EINVAL;
				goto out;
			}
			config_path = value;
			continue;
		}
		ret = mp_config_parse_value(opt, value, where, &cvs[ncvs], error_r);
		if (ret != MP_OK)
			goto out;
		ncvs++;
	}

	/* The file is all-or-nothing by itself; flags are already checked. */
	if (config_path != NULL) {
		ret = mp_config_load_file(opts, n, conf, config_path, error_r);
		if (ret != MP_OK)
			goto out;
	}
	for (size_t i = 0; i < ncvs; i++)
		mp_config_store(conf, &cvs[i]);

	if (rest_r != NULL) {
		*rest_r = rest;
		rest = NULL;
	}
	if (nrest_r != NULL)
		*nrest_r = nrest;
out:
	if (cvs != NULL) {
		for (size_t i = 0; i < ncvs; i++)
			mp_config_value_clear(&cvs[i]);
	}
	free(cvs);
	free(rest);
	return ret;
}
