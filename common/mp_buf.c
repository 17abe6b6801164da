/*
 * mp_buf: growable byte buffers with a hard limit, big-endian helpers and
 * memory wiping.
 *
 * The limit is checked before any allocation, so a peer can never make a
 * buffer grow past what its owner allowed; a failed call leaves the buffer
 * exactly as it was. A buffer marked secret is wiped whenever its memory is
 * released (free, regrowth, consume, reset), so a password or key never
 * lingers in freed heap. Never aborts on allocation failure: MP_ENOMEM.
 */
#include "mp_buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mp_error.h"

#define MP_BUF_MIN_CAP 64
#define MP_BUF_LIMIT_MAX (SIZE_MAX / 2)

static size_t mp_buf_limit(const struct mp_buf *b)
{
	return b->limit == 0 || b->limit > MP_BUF_LIMIT_MAX ? MP_BUF_LIMIT_MAX : b->limit;
}

void mp_buf_init(struct mp_buf *b, size_t limit)
{
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
	b->limit = limit;
	b->secret = 0;
}

void mp_buf_free(struct mp_buf *b)
{
	if (b->data != NULL) {
		if (b->secret)
			mp_memwipe(b->data, b->cap);
		free(b->data);
	}
	/* limit and secret stay: the buffer can be used again as it was set up. */
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
}

int mp_buf_reserve(struct mp_buf *b, size_t extra)
{
	size_t lim = mp_buf_limit(b);
	if (b->len > lim || extra > lim - b->len)
		return MP_ENOSPC;
	/* +1 for the NUL kept after the data; no overflow: lim <= SIZE_MAX/2. */
	size_t need = b->len + extra + 1;
	if (need <= b->cap)
		return MP_OK;

	size_t cap = b->cap < MP_BUF_MIN_CAP ? MP_BUF_MIN_CAP : b->cap;
	while (cap < need)
		cap *= 2;
	if (cap > lim + 1)
		cap = lim + 1;

	char *p;
	if (b->secret) {
		/* realloc may free the old block unwiped: copy by hand. */
		p = malloc(cap);
		if (p == NULL)
			return MP_ENOMEM;
		if (b->data != NULL) {
			memcpy(p, b->data, b->len + 1);
			mp_memwipe(b->data, b->cap);
			free(b->data);
		}
	} else {
		p = realloc(b->data, cap);
		if (p == NULL)
			return MP_ENOMEM;
	}
	if (b->data == NULL)
		p[0] = '\0';
	b->data = p;
	b->cap = cap;
	return MP_OK;
}

int mp_buf_append(struct mp_buf *b, const void *p, size_t n)
{
	int ret = mp_buf_reserve(b, n);
	if (ret != MP_OK)
		return ret;
	if (n > 0)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
	return MP_OK;
}

int mp_buf_append_str(struct mp_buf *b, const char *s)
{
	return mp_buf_append(b, s, strlen(s));
}

int mp_buf_printf(struct mp_buf *b, const char *fmt, ...)
{
	va_list ap;

	/* First try in the space we have, then grow once to the exact size. */
	size_t avail = b->cap > b->len ? b->cap - b->len : 0;
	va_start(ap, fmt);
	int r = vsnprintf(avail > 0 ? b->data + b->len : NULL, avail, fmt, ap);
	va_end(ap);
	if (r < 0) {
		if (avail > 0)
			b->data[b->len] = '\0';
		return MP_EINVAL;
	}
	if ((size_t)r < avail) {
		b->len += (size_t)r;
		return MP_OK;
	}
	if (avail > 0)
		b->data[b->len] = '\0'; /* undo the partial output */

	int ret = mp_buf_reserve(b, (size_t)r);
	if (ret != MP_OK)
		return ret;
	va_start(ap, fmt);
	int r2 = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
	va_end(ap);
	if (r2 != r) {
		b->data[b->len] = '\0';
		return MP_EINVAL;
	}
	b->len += (size_t)r;
	return MP_OK;
}

int mp_buf_append_u8(struct mp_buf *b, uint8_t v)
{
	return mp_buf_append(b, &v, 1);
}

int mp_buf_append_be32(struct mp_buf *b, uint32_t v)
{
	unsigned char tmp[4];
	mp_be32_put(tmp, v);
	return mp_buf_append(b, tmp, sizeof(tmp));
}

int mp_buf_append_be64(struct mp_buf *b, uint64_t v)
{
	unsigned char tmp[8];
	mp_be64_put(tmp, v);
	return mp_buf_append(b, tmp, sizeof(tmp));
}

void mp_buf_consume(struct mp_buf *b, size_t n)
{
	if (b->cap == 0)
		return;
	if (n > b->len)
		n = b->len;
	size_t rest = b->len - n;
	memmove(b->data, b->data + n, rest);
	if (b->secret)
		mp_memwipe(b->data + rest, b->len - rest);
	b->len = rest;
	b->data[b->len] = '\0';
}

void mp_buf_reset(struct mp_buf *b)
{
	if (b->cap == 0)
		return;
	if (b->secret)
		mp_memwipe(b->data, b->len);
	b->len = 0;
	b->data[0] = '\0';
}

char *mp_buf_steal(struct mp_buf *b, size_t *len_r)
{
	char *p = b->data;
	size_t len = b->len;

	/* Callers expect a string even from a buffer that never grew. */
	if (p == NULL) {
		p = malloc(1);
		if (p == NULL) {
			if (len_r != NULL)
				*len_r = 0;
			return NULL;
		}
		p[0] = '\0';
		len = 0;
	}
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
	if (len_r != NULL)
		*len_r = len;
	return p;
}

uint32_t mp_be32_get(const void *p)
{
	const unsigned char *c = p;
	return (uint32_t)c[0] << 24 | (uint32_t)c[1] << 16 | (uint32_t)c[2] << 8 | c[3];
}

uint64_t mp_be64_get(const void *p)
{
	const unsigned char *c = p;
	return (uint64_t)mp_be32_get(c) << 32 | mp_be32_get(c + 4);
}

void mp_be32_put(void *p, uint32_t v)
{
	unsigned char *c = p;
	c[0] = (unsigned char)(v >> 24);
	c[1] = (unsigned char)(v >> 16);
	c[2] = (unsigned char)(v >> 8);
	c[3] = (unsigned char)v;
}

void mp_be64_put(void *p, uint64_t v)
{
	unsigned char *c = p;
	mp_be32_put(c, (uint32_t)(v >> 32));
	mp_be32_put(c + 4, (uint32_t)v);
}

void mp_memwipe(void *p, size_t n)
{
	if (p != NULL && n > 0)
		explicit_bzero(p, n);
}
