/*
 * fe_watch: one MailStore Watch stream per watched user per frontend,
 * shared by every session of that user on this frontend (IMAP IDLE and
 * the untagged updates of a selected mailbox; POP3 does not watch).
 *
 * A session subscribes with the user's address and then, from its own
 * event loop, compares fe_watch_gen() with the generation it last acted
 * on: a higher one means "something of this user may have changed; ask
 * ChangesSince". The generation goes up for every WatchEvent of the user,
 * and also when the stream had to be re-opened (leader change, node
 * restart, overflow), since events may have been missed then. Sessions
 * poll the generation from a timer on their loop (an atomic load), so no
 * event ever crosses into a loop thread and no connection is ever touched
 * from the watch thread.
 *
 * The watch thread owns every stream: it opens one when a user gets a
 * first subscriber, re-opens it (on the shard's current leader, found
 * through mp_route, with backoff 100 ms doubling to 2 s) when it ends,
 * and closes it when the last subscriber leaves.
 *
 * Thread-safe: subscribe/unsubscribe/gen from any thread, never blocking
 * on the network. Never: call a session or a connection; block a caller.
 */
#ifndef FE_WATCH_H
#define FE_WATCH_H

#include <stdbool.h>
#include <stdint.h>

struct mp_route;
struct fe_watch;
struct fe_watch_sub;

/* route is borrowed and must outlive the watch. 0 or MP_E*. */
int fe_watch_start(struct mp_route *route, struct fe_watch **w_r, char **error_r);
/* Closes every stream, joins the thread. Subscriptions still held are
 * freed by their holders' fe_watch_unsubscribe before this (the caller
 * stops the sessions first). Safe on NULL. */
void fe_watch_stop(struct fe_watch **w);

/* user: a normalised address. NULL when out of memory, or for a NULL
 * watch or an empty or over-long user. */
struct fe_watch_sub *fe_watch_subscribe(struct fe_watch *w, const char *user);
void fe_watch_unsubscribe(struct fe_watch_sub **s);

/* Starts at 1 when the stream first delivers WATCH_READY (0 before: not
 * watching yet, changes may be missed: poll instead); increases on every
 * event and re-open. */
uint64_t fe_watch_gen(const struct fe_watch_sub *s);

/* Streams open now (for tests and stats). */
unsigned fe_watch_streams(struct fe_watch *w);

#endif
