/*
 * mp_shard: user -> shard, and name checks. Pure functions, no allocation.
 * Must never change the hash: every stored user would move.
 */
#include "mp_shard.h"
#include "mp_error.h"

#include <string.h>

uint32_t mp_shard_of(const char *user, size_t len, uint32_t nshards)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)user[i];
		if (c >= 'A' && c <= 'Z')
			c = (unsigned char)(c - 'A' + 'a');
		h ^= c;
		h *= 0x100000001b3ULL;
	}
	return nshards == 0 ? 0 : (uint32_t)(h % nshards);
}

static int domain_check(const char *d, size_t len, const char **error_r)
{
	size_t label = 0;

	if (len == 0 || len > MP_DOMAIN_MAX) {
		*error_r = "domain must be 1 to 253 characters";
		return MP_EINVAL;
	}
	for (size_t i = 0; i < len; i++) {
		char c = d[i];
		if (c == '.') {
			if (label == 0 || d[i - 1] == '-') {
				*error_r = "domain has an empty label or a label ending in '-'";
				return MP_EINVAL;
			}
			label = 0;
			continue;
		}
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) {
			*error_r = "domain may hold only letters, digits, '-' and '.'";
			return MP_EINVAL;
		}
		if (c == '-' && label == 0) {
			*error_r = "domain label starts with '-'";
			return MP_EINVAL;
		}
		if (++label > 63) {
			*error_r = "domain label longer than 63 characters";
			return MP_EINVAL;
		}
	}
	if (label == 0 || d[len - 1] == '-') {
		*error_r = "domain ends with an empty label or '-'";
		return MP_EINVAL;
	}
	return 0;
}

static void lower_copy(char *out, const char *in, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		char c = in[i];
		out[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
	}
	out[len] = '\0';
}

int mp_domain_normalize(const char *in, size_t len, char *out, size_t outlen,
			const char **error_r)
{
	if (len + 1 > outlen || len > MP_DOMAIN_MAX) {
		*error_r = "domain too long";
		return MP_EINVAL;
	}
	lower_copy(out, in, len);
	return domain_check(out, len, error_r);
}

int mp_user_normalize(const char *in, size_t len, char *out, size_t outlen,
		      const char **error_r)
{
	const char *at = NULL;

	if (len == 0 || len > MP_USER_MAX || len + 1 > outlen) {
		*error_r = "user must be 1 to 254 characters";
		return MP_EINVAL;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)in[i];
		/* Control characters, space, and characters that would let a
		 * name escape a key or a path are never part of an address we
		 * accept, even where RFC 5321 quoting would allow them. */
		if (c <= 0x20 || c == 0x7f || c == '/' || c == '\\' || c == '"' ||
		    c == '(' || c == ')' || c == ',' || c == ';' || c == ':' ||
		    c == '<' || c == '>' || c == '[' || c == ']') {
			*error_r = "user contains a character not allowed in an address";
			return MP_EINVAL;
		}
		if (c == '@') {
			if (at != NULL) {
				*error_r = "user has more than one '@'";
				return MP_EINVAL;
			}
			at = in + i;
		}
	}
	if (at == NULL || at == in || (size_t)(at - in) > 64) {
		*error_r = "user must be local@domain with a local part of 1 to 64 characters";
		return MP_EINVAL;
	}
	lower_copy(out, in, len);
	size_t lp = (size_t)(at - in);
	if (out[0] == '.' || out[lp - 1] == '.' || memmem(out, lp, "..", 2) != NULL) {
		*error_r = "local part has a leading, trailing or double '.'";
		return MP_EINVAL;
	}
	return domain_check(out + lp + 1, len - lp - 1, error_r);
}

const char *mp_user_domain(const char *user)
{
	const char *at = strchr(user, '@');
	return at ? at + 1 : user + strlen(user);
}
