/*
 * fe_dns: MX lookup for outbound SMTP, on c-ares (the only file in Merpati
 * that includes <ares.h>).
 *
 * fe_dns_mx() turns a destination domain into the ordered list of hosts
 * and addresses to try (RFC 5321 §5.1): MX records sorted by preference,
 * equal preferences in random order, each host resolved to its A then
 * AAAA addresses; no MX records means the domain itself is the one host
 * (implicit MX); a null MX (RFC 7505) or NXDOMAIN is a permanent failure.
 * An address literal ("[192.0.2.1]", "[IPv6:2001:db8::1]") needs no DNS.
 *
 * Calls block, but never past the caller's deadline (c-ares is driven with
 * ares_getsock + poll). Thread-safety: one fe_dns per thread; an object
 * must not be used by two threads at once (a c-ares 1.18 channel is not
 * thread-safe). Never: read /etc/hosts, apply search domains, or return an
 * address that did not come from DNS or the literal.
 */
#ifndef FE_DNS_H
#define FE_DNS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define FE_DNS_MAX_HOSTS 10     /* MX hosts kept (the most preferred) */
#define FE_DNS_MAX_ADDRS 10     /* addresses kept per host */
#define FE_DNS_NAME_MAX 255     /* a domain name in text, without NUL */

struct fe_dns;

struct fe_dns_host {
	char name[FE_DNS_NAME_MAX + 1]; /* MX host name ("" for a literal) */
	unsigned pref;                  /* MX preference; 0 if implicit/literal */
	size_t naddrs;
	struct sockaddr_storage addrs[FE_DNS_MAX_ADDRS]; /* port 0 */
	socklen_t addrlens[FE_DNS_MAX_ADDRS];
};

struct fe_dns_mx_list {
	size_t nhosts;                  /* >= 1 on success */
	int implicit;                   /* no MX records: the domain itself */
	int literal;                    /* the domain was an address literal */
	struct fe_dns_host hosts[FE_DNS_MAX_HOSTS];
};

/* server: "127.0.0.1", "127.0.0.1:5353", "[::1]:5353"; NULL reads the
 * system's /etc/resolv.conf. timeout_ms per try (0 = 2000), tries (0 = 2).
 * 0, or MP_EINVAL/MP_ENOMEM/MP_EIO with *error_r (malloc'd; caller frees). */
int fe_dns_open(const char *server, int timeout_ms, int tries,
		struct fe_dns **d_r, char **error_r);
void fe_dns_free(struct fe_dns **d);

/* MX lookup of domain (ASCII: A-labels, optional trailing dot), finished
 * by deadline_ms (absolute CLOCK_MONOTONIC ms; see fe_dns_now_ms()).
 * On 0, *list_r is malloc'd (fe_dns_mx_list_free) and holds at least one
 * host with at least one address, most preferred first.
 * Errors, with *error_r (malloc'd) for logs and DSNs:
 *   permanent (bounce the recipients):
 *     MP_ENOENT   NXDOMAIN, null MX (RFC 7505), no MX and no A/AAAA,
 *                 or no MX host has an address and none failed temporarily
 *     MP_EINVAL   the domain is not a valid name or address literal
 *   temporary (retry later):
 *     MP_EUNAVAIL SERVFAIL, REFUSED, no answer after all tries, ...
 *     MP_ETIMEDOUT the caller's deadline passed
 *     MP_ENOMEM
 * fe_dns_err_permanent() tells them apart. */
int fe_dns_mx(struct fe_dns *d, const char *domain, int64_t deadline_ms,
	      struct fe_dns_mx_list **list_r, char **error_r);
void fe_dns_mx_list_free(struct fe_dns_mx_list **list);

/* 1 for the errors above that mean "bounce", 0 for "retry later". */
int fe_dns_err_permanent(int err);
/* The RFC 3463 enhanced status code for the last failed fe_dns_mx() on d,
 * for the recipients' DSN: "5.1.2" (NXDOMAIN, bad name), "5.1.10" (null
 * MX, RFC 7505 §4.2), "5.4.4" (no address to route to), "4.4.3"
 * (temporary: DNS server failure or timeout); "" after a success. */
const char *fe_dns_last_status(const struct fe_dns *d);

/* Parses an RFC 5321 §4.1.3 address literal ("[192.0.2.1]" or
 * "[IPv6:2001:db8::1]") into ss (port 0). 0, or MP_EINVAL if s is not one. */
int fe_dns_parse_literal(const char *s, struct sockaddr_storage *ss,
			 socklen_t *len_r);

/* CLOCK_MONOTONIC in ms, the clock of every deadline here. */
int64_t fe_dns_now_ms(void);

#endif
