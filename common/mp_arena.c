/*
 * mp_arena: chunked region allocator. Large requests get a chunk of their
 * own so a big body does not waste a chunk's tail. Never frees a single
 * allocation; never returns memory that is not zeroed.
 */
#include "mp_arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ARENA_CHUNK 8192

struct mp_arena_chunk {
	struct mp_arena_chunk *next;
	size_t cap, off;
	_Alignas(16) unsigned char data[];
};

void mp_arena_init(struct mp_arena *a)
{
	a->head = NULL;
	a->used = 0;
}

void *mp_arena_alloc(struct mp_arena *a, size_t n)
{
	size_t need = (n + 15) & ~(size_t)15;
	struct mp_arena_chunk *c = a->head;

	if (need < n)
		return NULL;
	if (c == NULL || c->cap - c->off < need) {
		size_t cap = need > ARENA_CHUNK / 2 ? need : ARENA_CHUNK;
		if (cap > SIZE_MAX - sizeof(*c))
			return NULL;
		c = calloc(1, sizeof(*c) + cap);
		if (c == NULL)
			return NULL;
		c->cap = cap;
		if (need > ARENA_CHUNK / 2 && a->head != NULL) {
			/* keep the partly used chunk in front for small allocations */
			c->next = a->head->next;
			a->head->next = c;
		} else {
			c->next = a->head;
			a->head = c;
		}
	}
	void *p = c->data + c->off;
	c->off += need;
	a->used += n;
	return p;
}

void *mp_arena_memdup(struct mp_arena *a, const void *p, size_t n)
{
	void *r = mp_arena_alloc(a, n + 1); /* +1: NUL for callers that print */
	if (r != NULL && n > 0)
		memcpy(r, p, n);
	return r;
}

char *mp_arena_strndup(struct mp_arena *a, const char *s, size_t n)
{
	return mp_arena_memdup(a, s, n);
}

char *mp_arena_strdup(struct mp_arena *a, const char *s)
{
	return mp_arena_memdup(a, s, strlen(s));
}

void mp_arena_free(struct mp_arena *a)
{
	struct mp_arena_chunk *c = a->head, *next;

	for (; c != NULL; c = next) {
		next = c->next;
		free(c);
	}
	a->head = NULL;
	a->used = 0;
}
