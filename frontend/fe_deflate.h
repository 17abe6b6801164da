/*
 * fe_deflate: COMPRESS=DEFLATE (RFC 4978) as a libevent filter over a
 * connection's bufferevent: raw deflate (no zlib header, windowBits -15)
 * both ways, the output flushed (Z_SYNC_FLUSH) whenever the session has
 * written, so a reply never waits in the compressor.
 *
 * Limits: inflated input is produced at most FE_DEFLATE_CHUNK at a time
 * and only while the session's input buffer is below its high-water mark
 * (a compression bomb fills nothing faster than the session reads).
 */
#ifndef FE_DEFLATE_H
#define FE_DEFLATE_H

struct bufferevent;
struct event_base;

#define FE_DEFLATE_CHUNK 16384

/* A filter bufferevent over under (which it then owns: freeing the filter
 * frees under). NULL when zlib or libevent fail. */
struct bufferevent *fe_deflate_bev(struct event_base *base, struct bufferevent *under);

#endif
