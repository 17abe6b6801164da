/*
 * pop3_parse: see pop3_parse.h.
 */
#include "pop3_parse.h"

#include <string.h>
#include <strings.h>

#include "mp_buf.h"
#include "mp_error.h"

static const struct {
	const char *name;
	enum pop3_cmd cmd;
	unsigned min, max;   /* arguments */
} commands[] = {
	{ "USER", POP3_USER, 1, 1 }, { "PASS", POP3_PASS, 1, 1 }, { "APOP", POP3_APOP, 2, 2 },
	{ "STAT", POP3_STAT, 0, 0 }, { "LIST", POP3_LIST, 0, 1 }, { "RETR", POP3_RETR, 1, 1 },
	{ "DELE", POP3_DELE, 1, 1 }, { "NOOP", POP3_NOOP, 0, 0 }, { "RSET", POP3_RSET, 0, 0 },
	{ "QUIT", POP3_QUIT, 0, 0 }, { "TOP", POP3_TOP, 2, 2 }, { "UIDL", POP3_UIDL, 0, 1 },
	{ "CAPA", POP3_CAPA, 0, 0 }, { "AUTH", POP3_AUTH, 0, 2 }, { "STLS", POP3_STLS, 0, 0 },
	{ "UTF8", POP3_UTF8, 0, 0 },
};

int pop3_parse(char *line, size_t len, struct pop3_command *cmd, const char **error_r)
{
	memset(cmd, 0, sizeof(*cmd));
	if (len + 2 > POP3_LINE_MAX) {
		*error_r = "line too long";
		return MP_EINVAL;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)line[i];
		if (c == '\0' || c == '\r' || c == '\n') {
			*error_r = "invalid character in command";
			return MP_EINVAL;
		}
	}
	line[len] = '\0';
	size_t kw = 0;
	while (kw < len && line[kw] != ' ')
		kw++;
	size_t k;
	for (k = 0; k < sizeof(commands) / sizeof(commands[0]); k++)
		if (strlen(commands[k].name) == kw && strncasecmp(line, commands[k].name, kw) == 0)
			break;
	if (k == sizeof(commands) / sizeof(commands[0])) {
		*error_r = "unknown command";
		return MP_EINVAL;
	}
	cmd->cmd = commands[k].cmd;
	char *p = line + kw;
	if (*p == ' ')
		p++;
	else if (*p != '\0') {
		*error_r = "syntax error";
		return MP_EINVAL;
	}
	if (cmd->cmd == POP3_PASS) {
		/* RFC 1939 §7: the rest of the line, spaces included */
		if (*p == '\0') {
			*error_r = "PASS needs a password";
			return MP_EINVAL;
		}
		cmd->arg[0] = p;
		cmd->nargs = 1;
		return 0;
	}
	while (*p != '\0') {
		if (cmd->nargs == 2 || *p == ' ') {
			*error_r = cmd->nargs == 2 ? "too many arguments" : "syntax error";
			return MP_EINVAL;
		}
		cmd->arg[cmd->nargs++] = p;
		char *sp = strchr(p, ' ');
		if (sp == NULL)
			break;
		*sp = '\0';
		p = sp + 1;
		if (*p == '\0') {
			*error_r = "syntax error";
			return MP_EINVAL;
		}
	}
	if (cmd->nargs < commands[k].min || cmd->nargs > commands[k].max) {
		*error_r = cmd->nargs < commands[k].min ? "missing argument" : "too many arguments";
		return MP_EINVAL;
	}
	return 0;
}

bool pop3_number(const char *s, bool zero_ok, uint32_t *n_r)
{
	if (s == NULL || *s == '\0' || strlen(s) > 10 || (s[0] == '0' && s[1] != '\0'))
		return false;
	uint64_t v = 0;
	for (const char *p = s; *p; p++) {
		if (*p < '0' || *p > '9')
			return false;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	if (v > 0x7fffffff || (v == 0 && !zero_ok))
		return false;
	*n_r = (uint32_t)v;
	return true;
}

uint64_t pop3_wire_size(const char *msg, size_t len)
{
	/* line by line, as pop3_stuff writes them: content without its line
	 * end (LF, or CR LF), then CRLF */
	uint64_t n = 0;
	size_t i = 0;
	while (i < len) {
		const char *nl = memchr(msg + i, '\n', len - i);
		size_t end = nl ? (size_t)(nl - msg) : len;
		size_t stop = end;
		if (stop > i && msg[stop - 1] == '\r')
			stop--;
		n += (stop - i) + 2;
		i = end + 1;
	}
	return n;
}

int pop3_stuff(const char *msg, size_t len, int64_t top_lines, struct mp_buf *out)
{
	if (mp_buf_reserve(out, len + len / 32 + 8) < 0)
		return MP_ENOMEM;
	bool in_body = false;
	int64_t body_lines = 0;
	size_t i = 0;
	while (i < len) {
		const char *nl = memchr(msg + i, '\n', len - i);
		size_t end = nl ? (size_t)(nl - msg) : len;  /* index of the LF, or len */
		size_t stop = end;
		if (stop > i && msg[stop - 1] == '\r')
			stop--;
		if (in_body && top_lines >= 0 && body_lines >= top_lines)
			break;
		bool empty = stop == i;
		int ret = 0;
		if (msg[i] == '.' && !empty)
			ret = mp_buf_append(out, ".", 1);
		if (ret == 0)
			ret = mp_buf_append(out, msg + i, stop - i);
		if (ret == 0)
			ret = mp_buf_append(out, "\r\n", 2);
		if (ret < 0)
			return MP_ENOMEM;
		if (in_body)
			body_lines++;
		else if (empty)
			in_body = true;
		i = end + 1;
	}
	return mp_buf_append(out, ".\r\n", 3) < 0 ? MP_ENOMEM : 0;
}
