/*
 * imap_text: text of messages as IMAP SEARCH, SORT and FETCH need it:
 * header fields (find, unfold, filter), RFC 2047 encoded words, charsets
 * to UTF-8 (iconv), Content-Transfer-Encoding decoding (BINARY, body
 * search), and case folding for substring search (i;unicode-casemap as
 * RFC 5051 describes, simplified: code points lowercased with towlower in
 * a UTF-8 locale-free table, no normalisation).
 *
 * Pure functions over bytes the caller owns; output goes to an mp_buf.
 * Bad input is decoded as far as it can be (a broken encoded word stays
 * as written, invalid UTF-8 becomes U+FFFD) and never an error; errors are
 * memory, an unknown charset where asked, or an unknown
 * Content-Transfer-Encoding.
 */
#ifndef IMAP_TEXT_H
#define IMAP_TEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mp_buf;

/* The header block of a message: from data up to and including the first
 * empty line (CRLF CRLF or LF LF), or all of it when there is none. */
size_t imap_hdr_block_len(const char *data, size_t len);

/* Call cb for each field of a header block: name (without the colon) and
 * raw value (after the colon, folding kept, final line end removed).
 * cb returns 0 to go on, anything else stops and is returned. */
typedef int (*imap_hdr_cb)(void *ctx, const char *name, size_t name_len,
			   const char *value, size_t value_len);
int imap_hdr_foreach(const char *hdr, size_t len, imap_hdr_cb cb, void *ctx);

/* The first field named name (case-insensitive), unfolded (CRLF before
 * WSP removed) and trimmed, into out (NUL-terminated). 1 found, 0 not,
 * or MP_ENOMEM. */
int imap_hdr_get(const char *hdr, size_t len, const char *name, struct mp_buf *out);

/* HEADER.FIELDS / HEADER.FIELDS.NOT: the fields whose name is (not) in
 * names, as they were written (folding and line ends kept), then the
 * empty line. */
int imap_hdr_filter(const char *hdr, size_t len, const char *const *names,
		    size_t nnames, bool not, struct mp_buf *out);

/* RFC 2047 (with RFC 2231 language suffixes): decode encoded words of a
 * header value into UTF-8; whitespace between adjacent encoded words
 * dropped; other text kept (invalid UTF-8 -> U+FFFD). */
int imap_text_decode_header(const char *v, size_t len, struct mp_buf *out);

/* Text in charset to UTF-8. MP_EUNIMPL for a charset iconv does not know. */
int imap_text_to_utf8(const char *charset, const char *in, size_t len,
		      struct mp_buf *out);

/* Decode a part's content by its Content-Transfer-Encoding (NULL, "",
 * "7bit", "8bit", "binary": as is; "base64"; "quoted-printable"; case-
 * insensitive). MP_EUNIMPL for any other (IMAP answers UNKNOWN-CTE). */
int imap_text_decode_cte(const char *cte, const char *in, size_t len,
			 struct mp_buf *out);

/* Fold UTF-8 text for comparison: lowercase, each run of whitespace
 * (SP, HTAB, CR, LF) one SP. */
int imap_text_fold(const char *in, size_t len, struct mp_buf *out);

/* Is folded needle in folded haystack? (An empty needle is.) */
bool imap_text_contains(const char *hay, size_t hay_len, const char *needle,
			size_t needle_len);

/* An RFC 5322 date-time (obsolete forms too: two- and three-digit years,
 * zone names, comments, missing seconds or weekday) -> unix seconds in
 * UTC, and the zone as written in minutes east of UTC (zone_min_r may be
 * NULL). MP_EINVAL when it cannot be read. */
int imap_text_parse_date(const char *s, size_t len, int64_t *t_r, int *zone_min_r);

/* Calendar arithmetic shared by the IMAP date parsers (proleptic
 * Gregorian): days from 1970-01-01 to y-m-d (m 1..12); days in a month (0
 * for a bad month); a month's number 1..12 from its English three-letter
 * name, case-insensitive, or 0. */
int64_t imap_days_from_civil(int64_t y, unsigned m, unsigned d);
unsigned imap_days_in_month(int64_t y, unsigned m);
unsigned imap_month_number(const char *s, size_t len);

/* RFC 5256 base subject (strip Re:/Fwd:/[blob]/(fwd) and trailing
 * "(fwd)"), from a decoded, folded subject, into out. */
int imap_text_base_subject(const char *subj, size_t len, struct mp_buf *out);

#endif
