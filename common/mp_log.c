/*
 * mp_log: key=value event lines on stderr.
 *
 *   ts=2026-11-22T10:00:00.123Z level=info proc=node event=store_open path=/data
 *
 * Each line is built in a buffer on the stack and written with one write(2)
 * under a mutex, so lines from our threads never interleave whatever stderr
 * is (a memfd or a file without O_APPEND would otherwise race on the file
 * position). A whole line, "\n" included, is at most PIPE_BUF bytes, so on a
 * pipe shared with other processes (journald, a supervisor) it stays atomic
 * too. Never allocates, never splits a line: a longer line is cut and ends in
 * "...", and any control byte that reaches a line (a caller forgot
 * mp_log_quote) is replaced by '?' so no one can forge a second line.
 */
#include "mp_log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mp_error.h"

/* PIPE_BUF (4096 on Linux) less the "...\n" a cut line ends with. */
#define MP_LOG_LINE_MAX (4096 - 4)
#define MP_LOG_PREFIX_MAX 256

static int mp_log_min_level = MP_LOG_INFO;
static pthread_mutex_t mp_log_prefix_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t mp_log_write_lock = PTHREAD_MUTEX_INITIALIZER;
static char mp_log_prefix[MP_LOG_PREFIX_MAX]; /* "" = none */

static const char *const mp_log_level_names[] = {
	[MP_LOG_DEBUG] = "debug",
	[MP_LOG_INFO] = "info",
	[MP_LOG_WARN] = "warn",
	[MP_LOG_ERROR] = "error",
};

void mp_log_set_level(enum mp_log_level level)
{
	__atomic_store_n(&mp_log_min_level, (int)level, __ATOMIC_RELAXED);
}

int mp_log_parse_level(const char *s, enum mp_log_level *level_r)
{
	if (s == NULL)
		return MP_EINVAL;
	for (size_t i = 0; i < sizeof(mp_log_level_names) / sizeof(mp_log_level_names[0]); i++) {
		if (strcmp(s, mp_log_level_names[i]) == 0) {
			*level_r = (enum mp_log_level)i;
			return MP_OK;
		}
	}
	return MP_EINVAL;
}

void mp_log_set_prefix(const char *prefix)
{
	pthread_mutex_lock(&mp_log_prefix_lock);
	/* Longer prefixes are cut: it is set by our own code, never by a peer. */
	snprintf(mp_log_prefix, sizeof(mp_log_prefix), "%s", prefix != NULL ? prefix : "");
	pthread_mutex_unlock(&mp_log_prefix_lock);
}

static void mp_log_write_all(const char *p, size_t n)
{
	/* One write(2) in practice; the loop only covers a signal or a short
	 * write on a full pipe, where nothing better can be done. */
	int tries = 0;
	while (n > 0 && tries++ < 8) {
		ssize_t w = write(STDERR_FILENO, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		p += w;
		n -= (size_t)w;
	}
}

/* Appends to line[*pos] within cap bytes (keeping one for the NUL); marks
 * *cut when it had to stop early. */
static void mp_log_vappend(char *line, size_t cap, size_t *pos, int *cut,
			   const char *fmt, va_list ap) __attribute__((format(printf, 5, 0)));
static void mp_log_vappend(char *line, size_t cap, size_t *pos, int *cut,
			   const char *fmt, va_list ap)
{
	if (*pos >= cap - 1) {
		*cut = 1;
		return;
	}
	int r = vsnprintf(line + *pos, cap - *pos, fmt, ap);
	if (r < 0) {
		line[*pos] = '\0';
		return;
	}
	if ((size_t)r >= cap - *pos) {
		*cut = 1;
		*pos = cap - 1;
	} else {
		*pos += (size_t)r;
	}
}

static void mp_log_append(char *line, size_t cap, size_t *pos, int *cut,
			  const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void mp_log_append(char *line, size_t cap, size_t *pos, int *cut,
			  const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	mp_log_vappend(line, cap, pos, cut, fmt, ap);
	va_end(ap);
}

void mp_log(enum mp_log_level level, const char *event, const char *fmt, ...)
{
	if ((int)level < __atomic_load_n(&mp_log_min_level, __ATOMIC_RELAXED))
		return;
	if ((unsigned)level > MP_LOG_ERROR)
		level = MP_LOG_ERROR;

	/* +4: room for "...\n" after the cap, so a cut line still ends well. */
	char line[MP_LOG_LINE_MAX + 4];
	const size_t cap = MP_LOG_LINE_MAX;
	size_t pos = 0;
	int cut = 0;

	struct timespec ts;
	struct tm tm;
	if (clock_gettime(CLOCK_REALTIME, &ts) != 0 || gmtime_r(&ts.tv_sec, &tm) == NULL) {
		memset(&tm, 0, sizeof(tm));
		ts.tv_nsec = 0;
	}
	mp_log_append(line, cap, &pos, &cut,
		      "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s ",
		      tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		      tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L,
		      mp_log_level_names[level]);

	pthread_mutex_lock(&mp_log_prefix_lock);
	if (mp_log_prefix[0] != '\0')
		mp_log_append(line, cap, &pos, &cut, "%s ", mp_log_prefix);
	pthread_mutex_unlock(&mp_log_prefix_lock);

	mp_log_append(line, cap, &pos, &cut, "event=%s", event != NULL ? event : "-");

	if (fmt != NULL && fmt[0] != '\0') {
		size_t mark = pos;
		mp_log_append(line, cap, &pos, &cut, " ");
		va_list ap;
		va_start(ap, fmt);
		mp_log_vappend(line, cap, &pos, &cut, fmt, ap);
		va_end(ap);
		/* ("%s", "") adds nothing: no trailing space either. */
		if (pos == mark + 1 && !cut) {
			pos = mark;
			line[pos] = '\0';
		}
	}

	/* Defence in depth: the caller should have quoted peer data, but a
	 * newline or escape sequence must never reach the log raw. */
	for (size_t i = 0; i < pos; i++) {
		unsigned char c = (unsigned char)line[i];
		if (c < 0x20 || c == 0x7f)
			line[i] = '?';
	}
	if (cut) {
		memcpy(line + pos, "...", 3);
		pos += 3;
	}
	line[pos++] = '\n';
	pthread_mutex_lock(&mp_log_write_lock);
	mp_log_write_all(line, pos);
	pthread_mutex_unlock(&mp_log_write_lock);
}

static size_t mp_log_escape(unsigned char c, char esc[4])
{
	static const char hex[] = "0123456789abcdef";

	if (c == '"' || c == '\\') {
		esc[0] = '\\';
		esc[1] = (char)c;
		return 2;
	}
	if (c < 0x20 || c >= 0x7f) {
		esc[0] = '\\';
		esc[1] = 'x';
		esc[2] = hex[c >> 4];
		esc[3] = hex[c & 0xf];
		return 4;
	}
	esc[0] = (char)c;
	return 1;
}

const char *mp_log_quote(char *out, size_t outlen, const char *s, size_t len)
{
	char esc[4];

	if (outlen == 0)
		return out;
	if (s == NULL)
		len = 0;

	size_t need = 3; /* quotes and NUL */
	for (size_t i = 0; i < len && need <= outlen; i++)
		need += mp_log_escape((unsigned char)s[i], esc);
	int cut = need > outlen;
	if (cut && outlen < 6) {
		/* Too small even for "\"...\"": give an empty value (or nothing)
		 * rather than an unbalanced quote. */
		if (outlen >= 3) {
			memcpy(out, "\"\"", 3);
		} else {
			out[0] = '\0';
		}
		return out;
	}

	/* When cutting, keep room for "...", the closing quote and the NUL. */
	size_t room = cut ? outlen - 5 : outlen - 2;
	size_t pos = 0;
	out[pos++] = '"';
	for (size_t i = 0; i < len; i++) {
		size_t n = mp_log_escape((unsigned char)s[i], esc);
		if (pos + n > room)
			break; /* never split an escape sequence */
		memcpy(out + pos, esc, n);
		pos += n;
	}
	if (cut) {
		memcpy(out + pos, "...", 3);
		pos += 3;
	}
	out[pos++] = '"';
	out[pos] = '\0';
	return out;
}
