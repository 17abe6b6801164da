/*
 * mp_config: settings from a file and from command-line flags.
 *
 * A daemon describes its settings in a table of struct mp_config_opt; values
 * are written into the caller's struct at the given offsets. Order of
 * precedence: defaults < file (--config FILE) < flags (--key=value or
 * --key value). The file holds "key = value" lines; '#' starts a comment;
 * values may be double-quoted. Every error names the bad key (and file:line).
 * Never accepts an unknown key or a value that does not parse entirely.
 */
#ifndef MP_CONFIG_H
#define MP_CONFIG_H

#include <stddef.h>
#include <stdint.h>

enum mp_config_type {
	MP_CONF_STRING,   /* char * (owned by the struct; freed by mp_config_free) */
	MP_CONF_INT,      /* int64_t, decimal */
	MP_CONF_UINT,     /* uint64_t, decimal */
	MP_CONF_BOOL,     /* bool: true/false/yes/no/on/off/1/0 */
	MP_CONF_SIZE,     /* uint64_t bytes: 123, 10k, 50M, 2G (powers of 1024) */
	MP_CONF_DURATION, /* uint64_t milliseconds: 250ms, 5s, 2m, 1h; bare = ms */
};

struct mp_config_opt {
	const char *name;      /* "listen", "data_dir", ... */
	enum mp_config_type type;
	size_t offset;         /* offsetof(struct your_conf, field) */
	const char *def;       /* default as text, parsed like a value; NULL = unset */
	const char *help;
	uint64_t min, max;     /* for numeric types; both 0 = no bounds */
};

/* Apply every default of opts to conf. Returns 0 or MP_EINVAL with *error_r. */
int mp_config_defaults(const struct mp_config_opt *opts, size_t n, void *conf,
		       char **error_r);

/* Read FILE into conf. *error_r (malloc'd, caller frees) on failure. */
int mp_config_load_file(const struct mp_config_opt *opts, size_t n, void *conf,
			const char *path, char **error_r);

/* Parse "--key=value" / "--key value" flags from argv[1..]. "--config FILE"
 * is applied first wherever it appears, then the flags in order. Arguments
 * that do not start with "--" are left for the caller: their indexes are
 * returned in rest_r (caller frees) with their count in nrest_r. "--help"
 * returns MP_EAGAIN-free special: it prints mp_config_usage to stdout and
 * returns 1. */
int mp_config_parse_args(const struct mp_config_opt *opts, size_t n, void *conf,
			 int argc, char **argv, int **rest_r, int *nrest_r,
			 char **error_r);

/* Set one key from text (used by both the file and the flags). */
int mp_config_set(const struct mp_config_opt *opts, size_t n, void *conf,
		  const char *key, const char *value, char **error_r);

void mp_config_usage(const struct mp_config_opt *opts, size_t n,
		     const char *progname);

/* Free the MP_CONF_STRING fields of conf. */
void mp_config_free(const struct mp_config_opt *opts, size_t n, void *conf);

/* Value parsers, exposed for tests and for other parsers. 0 or MP_EINVAL. */
int mp_parse_size(const char *s, uint64_t *r);
int mp_parse_duration_ms(const char *s, uint64_t *r);
int mp_parse_uint(const char *s, uint64_t *r);
int mp_parse_bool(const char *s, int *r);

#endif
