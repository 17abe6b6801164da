/*
 * fe_deflate: see fe_deflate.h.
 */
#include "fe_deflate.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <zlib.h>

struct deflate_ctx {
	z_stream in;   /* inflate: client -> server */
	z_stream out;  /* deflate: server -> client */
	bool in_ok, out_ok;
};

static void ctx_free(void *p)
{
	struct deflate_ctx *d = p;
	if (d == NULL)
		return;
	if (d->in_ok)
		inflateEnd(&d->in);
	if (d->out_ok)
		deflateEnd(&d->out);
	free(d);
}

/* Run one zlib stream over everything in src into dst. */
static enum bufferevent_filter_result run(z_stream *z, bool inflating, struct evbuffer *src,
					  struct evbuffer *dst, ev_ssize_t limit, int flush_mode)
{
	unsigned char outbuf[FE_DEFLATE_CHUNK];
	size_t produced = 0;
	for (int rounds = 0; rounds < 4096; rounds++) {
		size_t avail = evbuffer_get_length(src);
		unsigned char *inp = NULL;
		size_t take = 0;
		if (avail > 0) {
			struct evbuffer_iovec v;
			if (evbuffer_peek(src, -1, NULL, &v, 1) < 1)
				return BEV_ERROR;
			inp = v.iov_base;
			take = v.iov_len;
		}
		z->next_in = inp;
		z->avail_in = (uInt)take;
		z->next_out = outbuf;
		z->avail_out = sizeof(outbuf);
		int zr;
		if (inflating)
			zr = inflate(z, Z_SYNC_FLUSH);
		else
			zr = deflate(z, avail > take ? Z_NO_FLUSH : flush_mode);
		if (zr == Z_STREAM_ERROR || zr == Z_DATA_ERROR || zr == Z_MEM_ERROR ||
		    zr == Z_NEED_DICT)
			return BEV_ERROR;
		size_t used = take - z->avail_in;
		size_t made = sizeof(outbuf) - z->avail_out;
		if (used > 0)
			evbuffer_drain(src, used);
		if (made > 0 && evbuffer_add(dst, outbuf, made) != 0)
			return BEV_ERROR;
		produced += made;
		if (inflating && zr == Z_STREAM_END)
			return BEV_ERROR; /* RFC 4978: the stream never ends */
		bool more_in = evbuffer_get_length(src) > 0;
		bool out_full = z->avail_out == 0;
		if (!more_in && !out_full)
			break;
		if (limit >= 0 && produced >= (size_t)limit)
			break;
		if (used == 0 && made == 0 && !out_full)
			break;
	}
	return produced > 0 ? BEV_OK : BEV_NEED_MORE;
}

static enum bufferevent_filter_result in_filter(struct evbuffer *src, struct evbuffer *dst,
						ev_ssize_t limit, enum bufferevent_flush_mode mode,
						void *ctx)
{
	(void)mode;
	struct deflate_ctx *d = ctx;
	return run(&d->in, true, src, dst, limit, Z_SYNC_FLUSH);
}

static enum bufferevent_filter_result out_filter(struct evbuffer *src, struct evbuffer *dst,
						 ev_ssize_t limit, enum bufferevent_flush_mode mode,
						 void *ctx)
{
	(void)mode;
	(void)limit;
	struct deflate_ctx *d = ctx;
	if (evbuffer_get_length(src) == 0)
		return BEV_NEED_MORE;
	return run(&d->out, false, src, dst, -1, Z_SYNC_FLUSH);
}

struct bufferevent *fe_deflate_bev(struct event_base *base, struct bufferevent *under)
{
	(void)base;
	struct deflate_ctx *d = calloc(1, sizeof(*d));
	if (d == NULL)
		return NULL;
	if (inflateInit2(&d->in, -15) != Z_OK) {
		free(d);
		return NULL;
	}
	d->in_ok = true;
	if (deflateInit2(&d->out, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -15, 8,
			 Z_DEFAULT_STRATEGY) != Z_OK) {
		ctx_free(d);
		return NULL;
	}
	d->out_ok = true;
	struct bufferevent *f = bufferevent_filter_new(under, in_filter, out_filter,
						       BEV_OPT_CLOSE_ON_FREE, ctx_free, d);
	if (f == NULL)
		ctx_free(d);
	return f;
}
