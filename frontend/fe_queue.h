/*
 * fe_queue: the outbound queue runner of a frontend.
 *
 * Queue entries live in the cluster (QueueAdd by the SMTP sessions, in the
 * sender's shard), never in a frontend. Every frontend runs `runners`
 * threads; each walks its share of the shards, claims due entries with a
 * lease (QueueClaim: exclusive until the lease ends, so each entry is
 * worked on by one runner at a time in the whole cluster), delivers them
 * per destination domain (fe_dns MX lookup, smtp_client), reports per
 * recipient (QueueUpdate), and bounces failures to the sender with a DSN
 * (RFC 3464). A runner that dies leaves its claims to expire: another
 * frontend takes them over when the lease ends.
 *
 * Retries: exponential backoff from retry_min to retry_max; an entry past
 * its expiry (queue_lifetime, default 5 days) fails its pending recipients
 * with 4.4.7 and bounces them.
 *
 * Never: acknowledge a recipient before the remote server did; lose a
 * bounce (the DSN is stored or queued before the entry is updated: a crash
 * in between may send it twice, never zero times); bounce to the null
 * sender.
 */
#ifndef FE_QUEUE_H
#define FE_QUEUE_H

#include <stdint.h>

struct fe_store;
struct fe_queue;

struct fe_queue_conf {
	const char *owner;         /* unique per process: claims are taken in its name */
	const char *hostname;      /* EHLO name and DSN Reporting-MTA */
	unsigned runners;          /* threads; 0 = no queue running here */
	uint64_t poll_ms;          /* longest sleep between looks at a shard */
	uint64_t lease_ms;         /* claim length: longer than one delivery */
	uint64_t retry_min_ms;     /* first retry after this */
	uint64_t retry_max_ms;     /* backoff cap */
	uint64_t lifetime_ms;      /* expiry of entries that carry none */
	const char *dns_server;    /* "127.0.0.1:5353"; NULL = resolv.conf */
	uint16_t port;             /* remote SMTP port; 0 = 25 */
	uint64_t smtp_timeout_ms;  /* every SMTP phase; 0 = RFC 5321 §4.5.3.2 */
	struct fe_store *store;    /* borrowed */
};

int fe_queue_start(const struct fe_queue_conf *conf, struct fe_queue **q_r,
		   char **error_r);
/* Stops the runners (a delivery in flight finishes first, bounded by its
 * timeouts) and frees. Safe on NULL. */
void fe_queue_stop(struct fe_queue **q);

#endif
