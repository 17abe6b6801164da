/*
 * imap_mime: a message parsed once (at delivery or APPEND) into what IMAP
 * FETCH needs, so FETCH never parses a body again (RFC 3501 §7.4.2, RFC
 * 9051 §7.5.2):
 *   - ENVELOPE, as the IMAP string to send (stored in MessageIndex.envelope);
 *   - BODY and BODYSTRUCTURE, and the byte offsets of every part's header,
 *     body and MIME header, packed into one blob (MessageIndex.bodystructure)
 *     by imap_mime_pack and read back with imap_mime_unpack.
 *
 * RFC 5322 headers (folded lines, CRLF or bare LF line ends), MIME (RFC
 * 2045/2046): Content-Type with parameters (RFC 2231 continuations and
 * charsets kept as sent, as IMAP shows them), multipart boundaries at any
 * depth, message/rfc822 and message/global parts with their own envelope
 * and structure. Text in headers is sent raw (encoded words stay encoded,
 * as RFC 3501 wants); non-ASCII raw bytes are sent as literals by the
 * writer.
 *
 * Bad mail never fails the parse: a multipart without its boundary is one
 * text part, a missing blank line means no body, limits (depth, parts)
 * turn the rest into an opaque part. Only memory or a broken packed blob
 * is an error.
 *
 * Never: copy the message; trust a packed blob (unpack checks every offset
 * against the message size it names).
 */
#ifndef IMAP_MIME_H
#define IMAP_MIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mp_buf;
struct imap_mime;

struct imap_mime_limits {
	unsigned max_depth;   /* nesting of multiparts and message/rfc822; 0 = 20 */
	unsigned max_parts;   /* parts in all; 0 = 1000 */
};

/* 0 or MP_ENOMEM. msg is not kept. */
int imap_mime_parse(const char *msg, size_t len, const struct imap_mime_limits *lim,
		    struct imap_mime **m_r);
void imap_mime_free(struct imap_mime **m);

/* The top-level ENVELOPE, "(date subject from sender reply-to to cc bcc
 * in-reply-to message-id)" per RFC 3501 §7.4.2 (sender and reply-to
 * default to from). Appended to out. */
int imap_mime_envelope(const struct imap_mime *m, struct mp_buf *out);
/* BODY (extended false) or BODYSTRUCTURE (extended true) of the message. */
int imap_mime_body(const struct imap_mime *m, bool extended, struct mp_buf *out);

/* Everything but the envelope, for MessageIndex.bodystructure: BODY and
 * BODYSTRUCTURE strings and the part table with offsets. */
int imap_mime_pack(const struct imap_mime *m, uint8_t **out_r, size_t *len_r);
/* MP_EPROTO for a blob that is not one of ours or names offsets beyond
 * its message size. The result answers imap_mime_body and
 * imap_mime_section but not imap_mime_envelope (not packed). */
int imap_mime_unpack(const uint8_t *data, size_t len, struct imap_mime **m_r);

/* Size of the message the parse or the blob describes. */
uint64_t imap_mime_size(const struct imap_mime *m);

enum imap_mime_sect {
	IMAP_MIME_SECT_BODY,    /* BODY[] (nparts 0) or BODY[1.2]: the part's content */
	IMAP_MIME_SECT_HEADER,  /* [HEADER], [n.HEADER] of a message/rfc822 part; with
				 * HEADER.FIELDS the caller filters this span */
	IMAP_MIME_SECT_TEXT,    /* [TEXT], [n.TEXT] of a message/rfc822 part */
	IMAP_MIME_SECT_MIME,    /* [n.MIME]: the MIME header of part n (nparts >= 1) */
};

struct imap_mime_span {
	uint64_t off;          /* into the message */
	uint64_t len;
	/* For BODY of a leaf part: its Content-Transfer-Encoding, lowercased
	 * ("7bit" when absent), for BINARY; "" for multipart / message parts. */
	const char *cte;
	bool is_multipart;     /* BINARY of a multipart is refused by the caller */
};

/* Locate a section (RFC 3501 §6.4.5: part numbers as in struct
 * imap_section). A non-multipart message has one part, 1; the parts of a
 * message/rfc822 part are numbered inside it (BODY[2.1] is the first part
 * of the message in part 2); [n.HEADER]/[n.TEXT] need part n to be
 * message/rfc822. MP_ENOENT when there is no such section (the caller
 * answers an empty string, as other servers do). */
int imap_mime_section(const struct imap_mime *m, const uint32_t *parts,
		      unsigned nparts, enum imap_mime_sect sect,
		      struct imap_mime_span *span_r);

#endif
