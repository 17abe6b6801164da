/*
 * dsn: delivery status notifications (see dsn.h). Builds the three parts
 * (human text, message/delivery-status, the returned original) in their
 * own buffers first, then picks a boundary that occurs in none of them and
 * writes the message. Must never: emit a bare CR or LF, a line over 998
 * octets, a field value a recipient's text could split into two fields,
 * or a DSN for the null sender.
 */
#include "dsn.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "mp_error.h"

#define DSN_LINE_MAX 998   /* RFC 5322 §2.1.1, without CRLF */
#define DSN_FOLD_AT 76     /* preferred width of folded fields and text */
#define DSN_NAME_MAX 255
#define DSN_ADDR_MAX 512
#define DSN_BOUNDARY_TRIES 16

int dsn_allowed(const char *sender)
{
	/* RFC 5321 §4.5.5 / RFC 3461 §6.2: never notify the null sender. */
	return sender != NULL && sender[0] != '\0' && strcmp(sender, "<>") != 0;
}

int dsn_wanted(unsigned notify, enum dsn_action action)
{
	if (notify & DSN_NOTIFY_NEVER)
		return 0;
	if (notify == 0)
		notify = DSN_NOTIFY_FAILURE | DSN_NOTIFY_DELAY;
	switch (action) {
	case DSN_ACTION_FAILED:
		return (notify & DSN_NOTIFY_FAILURE) != 0;
	case DSN_ACTION_DELAYED:
		return (notify & DSN_NOTIFY_DELAY) != 0;
	case DSN_ACTION_DELIVERED:
	case DSN_ACTION_RELAYED:
	case DSN_ACTION_EXPANDED:
		return (notify & DSN_NOTIFY_SUCCESS) != 0;
	}
	return 0;
}

const char *dsn_format_date(time_t t, char *buf, size_t size)
{
	/* Our own names: strftime's %a/%b follow the locale. */
	static const char *const days[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
	static const char *const months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
					      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	struct tm tm;
	if (gmtime_r(&t, &tm) == NULL || tm.tm_wday < 0 || tm.tm_wday > 6 || tm.tm_mon < 0 ||
	    tm.tm_mon > 11) {
		snprintf(buf, size, "Thu, 01 Jan 1970 00:00:00 +0000");
		return buf;
	}
	snprintf(buf, size, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday],
		 tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
		 tm.tm_sec);
	return buf;
}

static const char *dsn_action_name(enum dsn_action a)
{
	switch (a) {
	case DSN_ACTION_FAILED:
		return "failed";
	case DSN_ACTION_DELAYED:
		return "delayed";
	case DSN_ACTION_DELIVERED:
		return "delivered";
	case DSN_ACTION_RELAYED:
		return "relayed";
	case DSN_ACTION_EXPANDED:
		return "expanded";
	}
	return NULL;
}

/* ------------------------------------------------------------ checks */

static int dsn_ascii_ok(const char *s, size_t max, int allow_space)
{
	size_t n = strnlen(s, max + 1);
	if (n == 0 || n > max)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c >= 0x7f || (c == ' ' && !allow_space))
			return 0;
	}
	return 1;
}

/* An address: no controls (CR/LF would forge fields), 8-bit allowed. */
static int dsn_addr_ok(const char *s)
{
	size_t n = strnlen(s, DSN_ADDR_MAX + 1);
	if (n == 0 || n > DSN_ADDR_MAX)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c == 0x7f || c == '<' || c == '>')
			return 0;
	}
	return 1;
}

/* RFC 3463 §2: class "." subject "." detail, 1-3 digits each. */
static int dsn_status_ok(const char *s)
{
	if (s == NULL || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
		return 0;
	const char *p = s + 2;
	for (int part = 0; part < 2; part++) {
		size_t n = 0;
		while (p[n] >= '0' && p[n] <= '9')
			n++;
		if (n == 0 || n > 3)
			return 0;
		p += n;
		if (part == 0) {
			if (*p != '.')
				return 0;
			p++;
		}
	}
	return *p == '\0';
}

static int dsn_check(const struct dsn_report *r, const struct dsn_original *orig,
		     const char **error_r)
{
	if (r == NULL || orig == NULL || (orig->data == NULL && orig->len > 0)) {
		*error_r = "missing report or original";
		return MP_EINVAL;
	}
	if (!dsn_allowed(r->sender)) {
		*error_r = "no DSN for the null sender";
		return MP_EINVAL;
	}
	if (!dsn_addr_ok(r->sender)) {
		*error_r = "bad sender address";
		return MP_EINVAL;
	}
	if (r->reporting_mta == NULL || !dsn_ascii_ok(r->reporting_mta, DSN_NAME_MAX, 0)) {
		*error_r = "bad reporting MTA name";
		return MP_EINVAL;
	}
	if (r->envid != NULL && !dsn_ascii_ok(r->envid, 100, 1)) {
		*error_r = "bad ENVID";
		return MP_EINVAL;
	}
	if (r->ret != DSN_RET_UNSPEC && r->ret != DSN_RET_FULL && r->ret != DSN_RET_HDRS) {
		*error_r = "bad RET";
		return MP_EINVAL;
	}
	if (r->rcpts == NULL || r->nrcpts == 0 || r->nrcpts > DSN_MAX_RCPTS) {
		*error_r = "no recipients or too many";
		return MP_EINVAL;
	}
	for (size_t i = 0; i < r->nrcpts; i++) {
		const struct dsn_rcpt *rc = &r->rcpts[i];
		if (rc->final_recipient == NULL || !dsn_addr_ok(rc->final_recipient)) {
			*error_r = "bad final recipient";
			return MP_EINVAL;
		}
		if (rc->original_recipient != NULL &&
		    (!dsn_addr_ok(rc->original_recipient) ||
		     strchr(rc->original_recipient, ';') == NULL)) {
			*error_r = "bad original recipient";
			return MP_EINVAL;
		}
		if (dsn_action_name(rc->action) == NULL) {
			*error_r = "bad action";
			return MP_EINVAL;
		}
		if (!dsn_status_ok(rc->status)) {
			*error_r = "bad status code";
			return MP_EINVAL;
		}
		if (rc->remote_mta != NULL && !dsn_ascii_ok(rc->remote_mta, DSN_NAME_MAX, 0)) {
			*error_r = "bad remote MTA name";
			return MP_EINVAL;
		}
		if (rc->diag_code != 0 && (rc->diag_code < 200 || rc->diag_code > 599)) {
			*error_r = "bad diagnostic code";
			return MP_EINVAL;
		}
	}
	return 0;
}

/* ------------------------------------------------------------ writing */

/* Text for a US-ASCII part or field: printable ASCII kept, TAB, CR and LF
 * become spaces, anything else '?'. */
static char dsn_safe(unsigned char c)
{
	if (c == '\t' || c == '\r' || c == '\n')
		return ' ';
	if (c < 0x20 || c >= 0x7f)
		return '?';
	return (char)c;
}

/* Appends "first" then the words of text, wrapped at spaces near
 * DSN_FOLD_AT columns with "cont" starting each further line, ended by
 * CRLF. space_first: put a space before the first word (after "Name:").
 * A word longer than a line is split hard before DSN_LINE_MAX. For fields
 * cont is " " (RFC 5322 §2.2.3 folding), for the human text an indent. */
static int dsn_wrap(struct mp_buf *b, const char *first, int space_first, const char *cont,
		    const char *text, size_t len)
{
	int ret = mp_buf_append_str(b, first);
	size_t col = strlen(first), cont_len = strlen(cont);
	int need_space = space_first, may_fold = 0;
	size_t i = 0;
	while (ret == 0 && i < len) { /* each pass writes one word */
		while (i < len && dsn_safe((unsigned char)text[i]) == ' ')
			i++;
		if (i >= len)
			break;
		size_t w = 0;
		while (i + w < len && dsn_safe((unsigned char)text[i + w]) != ' ')
			w++;
		if (may_fold && col + 1 + w > DSN_FOLD_AT) {
			ret = mp_buf_printf(b, "\r\n%s", cont);
			col = cont_len;
			need_space = 0;
		}
		if (ret == 0 && need_space) {
			ret = mp_buf_append_str(b, " ");
			col++;
		}
		while (ret == 0 && w > 0) {
			size_t room = DSN_LINE_MAX - col;
			size_t take = w < room ? w : room;
			for (size_t k = 0; k < take && ret == 0; k++) {
				char c = dsn_safe((unsigned char)text[i + k]);
				ret = mp_buf_append(b, &c, 1);
			}
			i += take;
			w -= take;
			col += take;
			if (ret == 0 && w > 0) {
				ret = mp_buf_printf(b, "\r\n%s", cont);
				col = cont_len;
			}
		}
		need_space = 1;
		may_fold = 1;
	}
	if (ret == 0)
		ret = mp_buf_append_str(b, "\r\n");
	return ret;
}

static int dsn_field(struct mp_buf *b, const char *name, const char *value)
{
	char first[64];
	snprintf(first, sizeof(first), "%s:", name);
	return dsn_wrap(b, first, 1, " ", value, strlen(value));
}

/* RFC 6533 §3 utf-8-addr-xtext: QCHAR as is, every other character as
 * "\x{HEX}" of its code point (invalid UTF-8 octets as U+FFFD). */
static int dsn_append_utf8_xtext(struct mp_buf *b, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	int ret = 0;
	while (*p != '\0' && ret == 0) {
		unsigned cp;
		size_t n;
		if (*p < 0x80) {
			cp = *p;
			n = 1;
		} else if ((*p & 0xe0) == 0xc0 && (p[1] & 0xc0) == 0x80) {
			cp = ((unsigned)(*p & 0x1f) << 6) | (p[1] & 0x3f);
			n = 2;
			if (cp < 0x80)
				cp = 0xfffd;
		} else if ((*p & 0xf0) == 0xe0 && (p[1] & 0xc0) == 0x80 && (p[2] & 0xc0) == 0x80) {
			cp = ((unsigned)(*p & 0x0f) << 12) | ((unsigned)(p[1] & 0x3f) << 6) |
			     (p[2] & 0x3f);
			n = 3;
			if (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))
				cp = 0xfffd;
		} else if ((*p & 0xf8) == 0xf0 && (p[1] & 0xc0) == 0x80 &&
			   (p[2] & 0xc0) == 0x80 && (p[3] & 0xc0) == 0x80) {
			cp = ((unsigned)(*p & 0x07) << 18) | ((unsigned)(p[1] & 0x3f) << 12) |
			     ((unsigned)(p[2] & 0x3f) << 6) | (p[3] & 0x3f);
			n = 4;
			if (cp < 0x10000 || cp > 0x10ffff)
				cp = 0xfffd;
		} else {
			cp = 0xfffd;
			n = 1;
		}
		int qchar = cp >= 0x21 && cp <= 0x7e && cp != '+' && cp != '=' && cp != '\\';
		if (qchar) {
			char c = (char)cp;
			ret = mp_buf_append(b, &c, 1);
		} else {
			ret = mp_buf_printf(b, "\\x{%X}", cp);
		}
		p += n;
	}
	return ret;
}

static int dsn_has_8bit(const char *s)
{
	for (; *s != '\0'; s++)
		if ((unsigned char)*s >= 0x80)
			return 1;
	return 0;
}

/* "Name: type; address" (RFC 3464 §2.3.1/§2.3.2). An address with 8-bit
 * octets is written as type utf-8 in utf-8-addr-xtext (RFC 6533 §3). */
static int dsn_addr_field(struct mp_buf *b, const char *name, const char *type,
			  size_t type_len, const char *addr)
{
	struct mp_buf v;
	mp_buf_init(&v, 8 * DSN_ADDR_MAX + 64);
	int ret;
	if (dsn_has_8bit(addr)) {
		ret = mp_buf_append_str(&v, "utf-8; ");
		if (ret == 0)
			ret = dsn_append_utf8_xtext(&v, addr);
	} else {
		ret = mp_buf_printf(&v, "%.*s; %s", (int)type_len, type, addr);
	}
	if (ret == 0)
		ret = dsn_field(b, name, v.data);
	mp_buf_free(&v);
	return ret;
}

/* ------------------------------------------------------------ the parts */

static int dsn_human(const struct dsn_report *r, const char *returned_note, struct mp_buf *b)
{
	size_t nfailed = 0, ndelayed = 0, nok = 0;
	for (size_t i = 0; i < r->nrcpts; i++) {
		if (r->rcpts[i].action == DSN_ACTION_FAILED)
			nfailed++;
		else if (r->rcpts[i].action == DSN_ACTION_DELAYED)
			ndelayed++;
		else
			nok++;
	}
	int ret = mp_buf_printf(b, "This is the mail system at host %s.\r\n\r\n", r->reporting_mta);
	if (ret == 0 && nfailed > 0)
		ret = mp_buf_append_str(b,
			"Your message could not be delivered to one or more recipients.\r\n"
			"The reasons are listed here:\r\n\r\n");
	if (ret == 0 && ndelayed > 0)
		ret = mp_buf_append_str(b,
			"Delivery of your message to one or more recipients has been\r\n"
			"delayed. The mail system will keep trying; you need not send\r\n"
			"it again now. The reasons are listed here:\r\n\r\n");
	if (ret == 0 && nok > 0)
		ret = mp_buf_append_str(b,
			"As you asked, this reports the delivery of your message to the\r\n"
			"recipients listed here:\r\n\r\n");
	for (size_t i = 0; i < r->nrcpts && ret == 0; i++) {
		const struct dsn_rcpt *rc = &r->rcpts[i];
		struct mp_buf line;
		mp_buf_init(&line, DSN_ADDR_MAX + DSN_TEXT_MAX + 512);
		ret = mp_buf_printf(&line, "<%s>: %s (%s)", rc->final_recipient,
				    dsn_action_name(rc->action), rc->status);
		if (ret == 0)
			ret = dsn_wrap(b, "", 0, "    ", line.data, line.len);
		mp_buf_reset(&line);
		const char *text = rc->diag_text != NULL ? rc->diag_text : "";
		size_t tlen = strnlen(text, DSN_TEXT_MAX);
		if (ret == 0 && rc->diag_code != 0)
			ret = mp_buf_printf(&line, "host %s said: %d %.*s",
					    rc->remote_mta != NULL ? rc->remote_mta : "(unknown)",
					    rc->diag_code, (int)tlen, text);
		else if (ret == 0 && tlen > 0)
			ret = mp_buf_printf(&line, "%.*s", (int)tlen, text);
		if (ret == 0 && line.len > 0)
			ret = dsn_wrap(b, "    ", 0, "    ", line.data, line.len);
		if (ret == 0)
			ret = mp_buf_append_str(b, "\r\n");
		mp_buf_free(&line);
	}
	if (ret == 0)
		ret = dsn_wrap(b, "", 0, "", returned_note, strlen(returned_note));
	return ret;
}

static int dsn_status_part(const struct dsn_report *r, struct mp_buf *b)
{
	char date[64];
	int ret = mp_buf_printf(b, "Reporting-MTA: dns; %s\r\n", r->reporting_mta);
	if (ret == 0 && r->envid != NULL)
		ret = dsn_field(b, "Original-Envelope-Id", r->envid);
	if (ret == 0 && r->arrival != 0)
		ret = mp_buf_printf(b, "Arrival-Date: %s\r\n",
				    dsn_format_date(r->arrival, date, sizeof(date)));
	for (size_t i = 0; i < r->nrcpts && ret == 0; i++) {
		const struct dsn_rcpt *rc = &r->rcpts[i];
		/* RFC 3464 §2.1: per-recipient groups after a blank line. */
		ret = mp_buf_append_str(b, "\r\n");
		if (ret == 0 && rc->original_recipient != NULL) {
			const char *semi = strchr(rc->original_recipient, ';');
			const char *a = semi + 1;
			while (*a == ' ')
				a++;
			ret = dsn_addr_field(b, "Original-Recipient", rc->original_recipient,
					     (size_t)(semi - rc->original_recipient), a);
		}
		if (ret == 0)
			ret = dsn_addr_field(b, "Final-Recipient", "rfc822", 6,
					     rc->final_recipient);
		if (ret == 0)
			ret = mp_buf_printf(b, "Action: %s\r\nStatus: %s\r\n",
					    dsn_action_name(rc->action), rc->status);
		if (ret == 0 && rc->remote_mta != NULL)
			ret = mp_buf_printf(b, "Remote-MTA: dns; %s\r\n", rc->remote_mta);
		if (ret == 0 && rc->diag_code != 0) {
			const char *text = rc->diag_text != NULL ? rc->diag_text : "";
			struct mp_buf v;
			mp_buf_init(&v, DSN_TEXT_MAX + 64);
			ret = mp_buf_printf(&v, "smtp; %d %.*s", rc->diag_code,
					    (int)strnlen(text, DSN_TEXT_MAX), text);
			if (ret == 0)
				ret = dsn_field(b, "Diagnostic-Code", v.data);
			mp_buf_free(&v);
		}
		if (ret == 0 && rc->last_attempt != 0)
			ret = mp_buf_printf(b, "Last-Attempt-Date: %s\r\n",
					    dsn_format_date(rc->last_attempt, date, sizeof(date)));
		if (ret == 0 && rc->action == DSN_ACTION_DELAYED && rc->will_retry_until != 0)
			ret = mp_buf_printf(b, "Will-Retry-Until: %s\r\n",
					    dsn_format_date(rc->will_retry_until, date,
							    sizeof(date)));
	}
	return ret;
}

/* Copies in[0..len) with CRLF line endings (bare CR, bare LF → CRLF),
 * lines cut at DSN_LINE_MAX (*cut_r set) and NUL → '?' (*nul_r set),
 * ending with CRLF. *eightbit_r set for octets >= 0x80. */
static int dsn_copy_lines(struct mp_buf *b, const char *in, size_t len, int *cut_r,
			  int *nul_r, int *eightbit_r)
{
	size_t col = 0;
	int ret = 0;
	for (size_t i = 0; i < len && ret == 0; i++) {
		unsigned char c = (unsigned char)in[i];
		if (c == '\r' || c == '\n') {
			if (c == '\r' && i + 1 < len && in[i + 1] == '\n')
				i++;
			ret = mp_buf_append(b, "\r\n", 2);
			col = 0;
			continue;
		}
		if (col >= DSN_LINE_MAX) {
			*cut_r = 1;
			continue;
		}
		if (c == 0) {
			*nul_r = 1;
			c = '?';
		}
		if (c >= 0x80)
			*eightbit_r = 1;
		ret = mp_buf_append(b, &c, 1);
		col++;
	}
	if (ret == 0 && col > 0)
		ret = mp_buf_append(b, "\r\n", 2);
	return ret;
}

/* Length of the header section at the start of data[0..len): up to and
 * including the line ending of the last header line; all of data if it
 * is the whole message and has no body; else up to its last full line. */
static size_t dsn_header_len(const char *data, size_t len, int whole)
{
	size_t line_start = 0;
	for (size_t i = 0; i < len; i++) {
		if (data[i] != '\n')
			continue;
		size_t n = i - line_start;
		if (n > 0 && data[i - 1] == '\r')
			n--;
		if (n == 0)
			return line_start; /* the empty line ends the header */
		line_start = i + 1;
	}
	return whole ? len : line_start;
}

struct dsn_returned {
	struct mp_buf content;
	int full;          /* message/rfc822 (else text/rfc822-headers) */
	int eightbit;
	const char *note;  /* for the human part */
};

static int dsn_make_returned(const struct dsn_report *r, const struct dsn_original *orig,
			     struct dsn_returned *out)
{
	size_t len = orig->len;
	if ((uint64_t)len > orig->size)
		len = (size_t)orig->size;
	int whole = (uint64_t)len >= orig->size;
	int cut = 0, nul = 0, eightbit = 0;
	int ret;
	if (r->ret == DSN_RET_FULL && whole && orig->size <= DSN_RETURN_LIMIT) {
		ret = dsn_copy_lines(&out->content, orig->data, len, &cut, &nul, &eightbit);
		if (ret != 0)
			return ret;
		if (!cut && !nul) {
			out->full = 1;
			out->eightbit = eightbit;
			out->note = "The message is attached below.";
			return 0;
		}
		/* message/rfc822 cannot be re-encoded (RFC 2046 §5.2.1): a
		 * message with over-long lines or NULs returns its header. */
		mp_buf_reset(&out->content);
		cut = nul = eightbit = 0;
		out->note = "The message cannot be returned as it is (lines too long); "
			    "its header is attached below.";
	} else if (r->ret == DSN_RET_FULL) {
		out->note = "The message is too large to be returned; its header is "
			    "attached below.";
	} else {
		out->note = "The header of the message is attached below.";
	}
	size_t hlen = dsn_header_len(orig->data, len, whole);
	ret = dsn_copy_lines(&out->content, orig->data, hlen, &cut, &nul, &eightbit);
	out->full = 0;
	out->eightbit = eightbit;
	return ret;
}

/* ------------------------------------------------------------ assembly */

static void dsn_random_hex(char *out, size_t nbytes)
{
	static atomic_uint_fast64_t fallback;
	unsigned char rnd[32];
	if (nbytes > sizeof(rnd))
		nbytes = sizeof(rnd);
	if (getrandom(rnd, nbytes, 0) != (ssize_t)nbytes) {
		/* Uniqueness, not secrecy, is what a boundary needs. */
		uint64_t x = atomic_fetch_add(&fallback, 1) ^ (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ULL;
		for (size_t i = 0; i < nbytes; i++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			rnd[i] = (unsigned char)x;
		}
	}
	for (size_t i = 0; i < nbytes; i++)
		snprintf(out + 2 * i, 3, "%02x", rnd[i]);
}

static int dsn_contains(const struct mp_buf *b, const char *s)
{
	return b->len > 0 && memmem(b->data, b->len, s, strlen(s)) != NULL;
}

int dsn_build(const struct dsn_report *r, const struct dsn_original *orig, struct mp_buf *out,
	      int *eightbit_r, const char **error_r)
{
	*eightbit_r = 0;
	int ret = dsn_check(r, orig, error_r);
	if (ret != 0)
		return ret;

	struct mp_buf human, status;
	struct dsn_returned returned = { .full = 0, .eightbit = 0, .note = "" };
	mp_buf_init(&human, 0);
	mp_buf_init(&status, 0);
	mp_buf_init(&returned.content, 0);
	ret = dsn_make_returned(r, orig, &returned);
	if (ret == 0)
		ret = dsn_human(r, returned.note, &human);
	if (ret == 0)
		ret = dsn_status_part(r, &status);

	char boundary[80] = "";
	for (int tries = 0; ret == 0 && tries < DSN_BOUNDARY_TRIES; tries++) {
		char hex[49];
		dsn_random_hex(hex, 24);
		snprintf(boundary, sizeof(boundary), "=_mp_dsn_%s", hex);
		/* "=_" never occurs in quoted-printable, and the parts are
		 * checked: the boundary occurs nowhere in the content. */
		if (!dsn_contains(&human, boundary) && !dsn_contains(&status, boundary) &&
		    !dsn_contains(&returned.content, boundary))
			break;
		boundary[0] = '\0';
	}
	if (ret == 0 && boundary[0] == '\0')
		ret = MP_EIO;

	size_t nfailed = 0, ndelayed = 0;
	for (size_t i = 0; i < r->nrcpts; i++) {
		nfailed += r->rcpts[i].action == DSN_ACTION_FAILED;
		ndelayed += r->rcpts[i].action == DSN_ACTION_DELAYED;
	}
	const char *subject = nfailed > 0 ? "Undelivered Mail Returned to Sender" :
			      ndelayed > 0 ? "Delayed Mail (still being retried)" :
			      "Successful Mail Delivery Report";
	int eightbit = returned.eightbit || dsn_has_8bit(r->sender);
	time_t now = r->now != 0 ? r->now : time(NULL);
	char date[64], idhex[33];
	dsn_format_date(now, date, sizeof(date));
	dsn_random_hex(idhex, 16);
	struct tm tm;
	if (gmtime_r(&now, &tm) == NULL)
		memset(&tm, 0, sizeof(tm));

	size_t start = out->len;
	if (ret == 0)
		ret = mp_buf_printf(out,
			"From: Mail Delivery System <MAILER-DAEMON@%s>\r\n"
			"To: <%s>\r\n"
			"Subject: %s\r\n"
			"Date: %s\r\n"
			"Message-ID: <%04d%02d%02d%02d%02d%02d.%s@%s>\r\n"
			"Auto-Submitted: auto-replied\r\n"
			"MIME-Version: 1.0\r\n"
			"Content-Type: multipart/report; report-type=delivery-status;\r\n"
			"\tboundary=\"%s\"\r\n"
			"Content-Transfer-Encoding: %s\r\n"
			"\r\n"
			"This is a MIME-encapsulated message.\r\n"
			"\r\n"
			"--%s\r\n"
			"Content-Description: Notification\r\n"
			"Content-Type: text/plain; charset=us-ascii\r\n"
			"\r\n",
			r->reporting_mta, r->sender, subject, date, tm.tm_year + 1900,
			tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, idhex,
			r->reporting_mta, boundary, eightbit ? "8bit" : "7bit", boundary);
	if (ret == 0)
		ret = mp_buf_append(out, human.data, human.len);
	if (ret == 0)
		ret = mp_buf_printf(out,
			"\r\n--%s\r\n"
			"Content-Description: Delivery report\r\n"
			"Content-Type: message/delivery-status\r\n"
			"\r\n", boundary);
	if (ret == 0)
		ret = mp_buf_append(out, status.data, status.len);
	if (ret == 0)
		ret = mp_buf_printf(out,
			"\r\n--%s\r\n"
			"Content-Description: %s\r\n"
			"Content-Type: %s\r\n"
			"%s"
			"\r\n", boundary,
			returned.full ? "Undelivered message" : "Undelivered message headers",
			returned.full ? "message/rfc822" : "text/rfc822-headers",
			returned.eightbit ? "Content-Transfer-Encoding: 8bit\r\n" : "");
	if (ret == 0)
		ret = mp_buf_append(out, returned.content.data, returned.content.len);
	if (ret == 0)
		ret = mp_buf_printf(out, "\r\n--%s--\r\n", boundary);

	mp_buf_free(&human);
	mp_buf_free(&status);
	mp_buf_free(&returned.content);
	if (ret != 0) {
		/* Nothing half-written stays behind. */
		out->len = start;
		if (out->data != NULL)
			out->data[start] = '\0';
		*error_r = ret == MP_ENOSPC ? "DSN larger than the output limit" :
			   ret == MP_EIO ? "no boundary found" : "out of memory";
		return ret;
	}
	*eightbit_r = eightbit;
	return 0;
}
