/*
 * dsn: builds delivery status notifications (RFC 3464 message/delivery-
 * status inside an RFC 6522 multipart/report; report-type=delivery-status)
 * for recipients that failed, were delayed (or, on request, delivered or
 * relayed), addressed to the original sender.
 *
 * Pure: descriptions in, one message out in a caller's mp_buf; no I/O, no
 * clock except when the caller leaves a time at 0. The message has CRLF
 * line endings, no line over 998 octets (RFC 5322 §2.1.1) and a boundary
 * that occurs nowhere in its parts. Of the original message it returns at
 * most DSN_RETURN_LIMIT octets: the whole message for RET=FULL when it
 * fits (as message/rfc822), else its header section (text/rfc822-headers),
 * as Postfix's bounce_size_limit does; the human part says which.
 *
 * Never build a DSN for a message whose sender is null (RFC 3461 §6.2,
 * RFC 5321 §6.1: no notification loops): dsn_allowed() says so, and
 * dsn_build() refuses. The DSN itself must be sent with MAIL FROM:<>.
 */
#ifndef DSN_H
#define DSN_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "mp_buf.h"

/* RFC 3461 §4.1 NOTIFY values, as bits. 0 = NOTIFY not given. */
#define DSN_NOTIFY_SUCCESS 0x1u
#define DSN_NOTIFY_FAILURE 0x2u
#define DSN_NOTIFY_DELAY 0x4u
#define DSN_NOTIFY_NEVER 0x8u

#define DSN_RETURN_LIMIT (64 * 1024) /* most original octets put in a DSN */
#define DSN_MAX_RCPTS 1000           /* recipients in one DSN */
#define DSN_TEXT_MAX 2048            /* diagnostic text kept per recipient */

/* RFC 3461 §4.3 RET. */
enum dsn_ret { DSN_RET_UNSPEC, DSN_RET_FULL, DSN_RET_HDRS };

/* RFC 3464 §2.3.3 Action. */
enum dsn_action {
	DSN_ACTION_FAILED,
	DSN_ACTION_DELAYED,
	DSN_ACTION_DELIVERED,
	DSN_ACTION_RELAYED,
	DSN_ACTION_EXPANDED,
};

struct dsn_rcpt {
	const char *final_recipient;    /* borrowed: the address we tried */
	const char *original_recipient; /* borrowed: ORCPT decoded, "rfc822;a@b";
					 * NULL = none */
	enum dsn_action action;
	const char *status;             /* borrowed: RFC 3463 "5.1.1" */
	const char *remote_mta;         /* borrowed: host name; NULL = none */
	int diag_code;                  /* SMTP reply code; 0 = no remote reply */
	const char *diag_text;          /* borrowed: the reply text (or our own
					 * explanation when diag_code is 0) */
	time_t last_attempt;            /* 0 = omit Last-Attempt-Date */
	time_t will_retry_until;        /* delayed only; 0 = omit */
};

struct dsn_report {
	const char *reporting_mta;      /* borrowed: our host name (required) */
	const char *sender;             /* borrowed: the original reverse-path
					 * (the DSN's To:); never "" */
	const char *envid;              /* borrowed: ENVID decoded; NULL = none */
	enum dsn_ret ret;               /* RET; UNSPEC means HDRS */
	time_t arrival;                 /* when we received the message */
	time_t now;                     /* Date:; 0 = time(NULL) */
	const struct dsn_rcpt *rcpts;   /* borrowed; 1..DSN_MAX_RCPTS */
	size_t nrcpts;
};

/* The original message: its first octets and its full size. data must
 * hold min(size, DSN_RETURN_LIMIT) octets or the whole message (len is
 * clamped to size). */
struct dsn_original {
	const char *data;               /* borrowed */
	size_t len;
	uint64_t size;
};

/* 0 if a message from this reverse-path ("" or "<>" is the null sender)
 * must never get a DSN, 1 if it may. */
int dsn_allowed(const char *sender);

/* RFC 3461 §4.1: does a recipient with these NOTIFY bits want a DSN for
 * action? NOTIFY not given (0) means FAILURE and DELAY (the MTA's
 * discretion, §4.1; Postfix does the same). */
int dsn_wanted(unsigned notify, enum dsn_action action);

/* Appends the DSN message to out (an initialised mp_buf; its limit
 * applies). *eightbit_r: 1 if the returned original part holds 8-bit
 * octets, so the DSN must be sent with BODY=8BITMIME (RFC 6152).
 * 0, or MP_EINVAL (null sender, missing or invalid fields: nothing is
 * appended), MP_ENOSPC/MP_ENOMEM, with *error_r (static). */
int dsn_build(const struct dsn_report *r, const struct dsn_original *orig,
	      struct mp_buf *out, int *eightbit_r, const char **error_r);

/* RFC 5322 §3.3 date-time in UTC, "Tue, 03 Mar 2026 10:00:00 +0000",
 * into buf (at least 32 bytes). Returns buf. */
const char *dsn_format_date(time_t t, char *buf, size_t size);

#endif
