/*
 * imap_search: IMAP SEARCH (RFC 3501 §6.4.4, RFC 9051 §6.4.4) compiled
 * from the parsed arguments once, then matched against each message of the
 * selected mailbox. ESEARCH result options (RFC 4731: RETURN (MIN MAX ALL
 * COUNT SAVE)), CONDSTORE's MODSEQ key (RFC 7162 §3.1.5), CHARSET UTF-8 /
 * US-ASCII, every search key of both revisions, and $ (RFC 5182 SEARCHRES,
 * the saved result).
 *
 * Matching runs on a worker thread (it may need message bodies); the
 * session supplies per message what the index holds and, when the program
 * needs it (imap_search_needs_message), the whole message.
 *
 * String keys match case-insensitively on decoded text: header keys
 * (FROM, TO, CC, BCC, SUBJECT, HEADER) on the RFC 2047-decoded field
 * values; BODY on the decoded text parts; TEXT on the header and body.
 */
#ifndef IMAP_SEARCH_H
#define IMAP_SEARCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct imap_arg;
struct imap_search;

/* RETURN options (ESEARCH); none set and return_given false = plain SEARCH. */
enum {
	IMAP_SEARCH_RET_MIN = 1,
	IMAP_SEARCH_RET_MAX = 2,
	IMAP_SEARCH_RET_ALL = 4,
	IMAP_SEARCH_RET_COUNT = 8,
	IMAP_SEARCH_RET_SAVE = 16,
};

struct imap_search_info {
	bool return_given;   /* RETURN (...) was given: answer ESEARCH */
	unsigned ret;        /* IMAP_SEARCH_RET_*; RETURN () means ALL */
	bool uses_modseq;    /* a MODSEQ key: answer with (MODSEQ n) */
	bool uses_saved;     /* $ appears */
};

/* args: everything after SEARCH (or UID SEARCH): [RETURN (...)] [CHARSET
 * x] key... allow_return: the server advertises ESEARCH.
 * MP_EINVAL (BAD) with *error_r; MP_EUNIMPL for an unknown charset (the
 * session answers NO [BADCHARSET (UTF-8 US-ASCII)]). *error_r malloc'd. */
int imap_search_compile(const struct imap_arg *args, size_t nargs, bool allow_return,
			struct imap_search **s_r, struct imap_search_info *info_r,
			char **error_r);
void imap_search_free(struct imap_search **s);

/* Does matching need the message itself (header or text keys, SENT*)? */
bool imap_search_needs_message(const struct imap_search *s);

struct imap_search_ctx {
	uint32_t max_seq;          /* messages in the mailbox (for '*') */
	uint32_t max_uid;          /* highest UID (for UID '*') */
	const uint32_t *saved;     /* the $ result, as UIDs, ascending */
	size_t nsaved;
	int64_t now;               /* unix seconds: OLDER/YOUNGER (RFC 5032) */
};

struct imap_search_msg {
	uint32_t seq;
	uint32_t uid;
	const char *const *flags;  /* system flags with backslash, keywords */
	size_t nflags;
	bool recent;
	uint64_t size;
	int64_t internal_date;     /* unix seconds */
	uint64_t modseq;
	const char *data;          /* the message when needed, else NULL */
	size_t len;
};

/* 0 with *match_r, or MP_ENOMEM. */
int imap_search_match(const struct imap_search *s, const struct imap_search_ctx *ctx,
		      const struct imap_search_msg *m, bool *match_r);

#endif
