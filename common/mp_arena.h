/*
 * mp_arena: a region allocator for memory whose lifetime is one request
 * (a reply being built, a parsed command). Everything is freed at once by
 * mp_arena_free; nothing is freed alone. Allocation failure returns NULL.
 */
#ifndef MP_ARENA_H
#define MP_ARENA_H

#include <stddef.h>

struct mp_arena_chunk;

struct mp_arena {
	struct mp_arena_chunk *head; /* owned */
	size_t used;                 /* bytes handed out (for limits) */
};

void mp_arena_init(struct mp_arena *a);
void *mp_arena_alloc(struct mp_arena *a, size_t n);   /* zeroed, aligned 16 */
void *mp_arena_memdup(struct mp_arena *a, const void *p, size_t n);
char *mp_arena_strndup(struct mp_arena *a, const char *s, size_t n);
char *mp_arena_strdup(struct mp_arena *a, const char *s);
void mp_arena_free(struct mp_arena *a);  /* safe twice */

#endif
