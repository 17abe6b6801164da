/*
 * mp_buf: a growable byte buffer with a hard limit, and slices.
 *
 * Every byte a peer can make us allocate goes through a buffer whose limit
 * was set by its owner: growing past it fails with MP_ENOSPC and leaves the
 * buffer as it was. A slice {ptr,len} never owns memory and dies when its
 * buffer grows or is consumed.
 */
#ifndef MP_BUF_H
#define MP_BUF_H

#include <stddef.h>
#include <stdint.h>

struct mp_slice {
	const char *ptr; /* borrowed */
	size_t len;
};

struct mp_buf {
	char *data;   /* owned; always NUL-terminated after data[len] when cap>0 */
	size_t len;
	size_t cap;
	size_t limit; /* maximum len; 0 = SIZE_MAX/2 */
	int secret;   /* wipe memory when freed or reallocated */
};

void mp_buf_init(struct mp_buf *b, size_t limit);
void mp_buf_free(struct mp_buf *b);      /* safe twice; wipes if secret */
int mp_buf_reserve(struct mp_buf *b, size_t extra);
int mp_buf_append(struct mp_buf *b, const void *p, size_t n);
int mp_buf_append_str(struct mp_buf *b, const char *s);
int mp_buf_printf(struct mp_buf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
int mp_buf_append_u8(struct mp_buf *b, uint8_t v);
int mp_buf_append_be32(struct mp_buf *b, uint32_t v);
int mp_buf_append_be64(struct mp_buf *b, uint64_t v);
void mp_buf_consume(struct mp_buf *b, size_t n); /* drop n bytes from the front */
void mp_buf_reset(struct mp_buf *b);            /* len = 0, keep memory */
/* Hand the data to the caller (who frees it); the buffer becomes empty. */
char *mp_buf_steal(struct mp_buf *b, size_t *len_r);

static inline struct mp_slice mp_buf_slice(const struct mp_buf *b)
{
	struct mp_slice s = { b->data, b->len };
	return s;
}

uint32_t mp_be32_get(const void *p);
uint64_t mp_be64_get(const void *p);
void mp_be32_put(void *p, uint32_t v);
void mp_be64_put(void *p, uint64_t v);

/* Wipe memory in a way the compiler cannot elide. */
void mp_memwipe(void *p, size_t n);

#endif
