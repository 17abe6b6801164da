/*
 * mp_log: one line per event, key=value.
 *
 *   ts=2026-11-22T10:00:00.123Z level=info event=store_open path=/data cfs=3
 *
 * The event is a short snake_case name; the rest is a printf-style list of
 * key=value pairs written by the caller. Values a client controls must be
 * passed through mp_log_quote() so a log line can never be split or forged.
 * Thread-safe: each line is written with one write(2).
 */
#ifndef MP_LOG_H
#define MP_LOG_H

#include <stddef.h>

enum mp_log_level { MP_LOG_DEBUG, MP_LOG_INFO, MP_LOG_WARN, MP_LOG_ERROR };

void mp_log_set_level(enum mp_log_level level);
/* Parses "debug", "info", "warn", "error"; returns MP_EINVAL otherwise. */
int mp_log_parse_level(const char *s, enum mp_log_level *level_r);
/* Prefix added to every line, e.g. "proc=node id=n1" (copied). */
void mp_log_set_prefix(const char *prefix);

void mp_log(enum mp_log_level level, const char *event, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define mp_log_debug(ev, ...) mp_log(MP_LOG_DEBUG, ev, __VA_ARGS__)
#define mp_log_info(ev, ...) mp_log(MP_LOG_INFO, ev, __VA_ARGS__)
#define mp_log_warn(ev, ...) mp_log(MP_LOG_WARN, ev, __VA_ARGS__)
#define mp_log_error(ev, ...) mp_log(MP_LOG_ERROR, ev, __VA_ARGS__)

/* Writes s (len bytes, may hold any byte) as a double-quoted value with
 * escapes into out (size outlen, always NUL-terminated, truncated with "..."
 * if needed). Returns out. */
const char *mp_log_quote(char *out, size_t outlen, const char *s, size_t len);

#endif
