/*
 * bench_util: the small pieces the mp-bench-imap, mp-bench-pop3 and
 * mp-bench-smtp load generators share: a monotonic clock, sleeping, a
 * per-thread PRNG, IPv4 loopback addresses and blocking sends, IMAP
 * quoting, per-command latency samples with their percentiles, the machine
 * header line of a run, and option checks. Plain sockets, no TLS; no
 * globals.
 */
#ifndef MERPATI_BENCH_UTIL_H
#define MERPATI_BENCH_UTIL_H

#include <netinet/in.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Seconds on CLOCK_MONOTONIC. */
double bench_now_s(void);
/* Sleep s seconds (nothing if s <= 0), resumed across EINTR. */
void bench_sleep_s(double s);
/* xorshift64*: the next value of the generator whose state is *st (not 0). */
uint64_t bench_rng_next(uint64_t *st);

/* sa_r := host:port (IPv4 dotted quad). 0, or -1 if host is not one. */
int bench_addr(struct sockaddr_in *sa_r, const char *host, int port);
/* Send all n bytes on a blocking socket (MSG_NOSIGNAL | flags). 0, or -1. */
int bench_send_all(int fd, const char *p, size_t n, int flags);
/* s as an IMAP quoted string (RFC 3501 §4.3: \ and " escaped) into dst,
 * NUL-terminated. 0, or -1 if it does not fit in cap. */
int bench_quote(char *dst, size_t cap, const char *s);

/*
 * Latencies of one command: completions and up to cap samples in ms.
 * Threads add with bench_lat_add; the totals are read after they are done.
 */
struct bench_lat {
	atomic_uint_fast64_t ok, nsamples;
	double *samples;                /* owned; cap */
	size_t cap;
};

/* 0, or -1 if the samples cannot be allocated. */
int bench_lat_init(struct bench_lat *l, size_t cap);
/* Free the samples; safe twice. */
void bench_lat_free(struct bench_lat *l);
/* Count one completion of ms milliseconds. */
void bench_lat_add(struct bench_lat *l, double ms);
/* Sort the samples kept and give their median and 99th percentile (0 if
 * none). Not while threads still add. */
void bench_lat_pct(struct bench_lat *l, double *p50_r, double *p99_r);
/* qsort order of doubles. */
int bench_cmp_d(const void *a, const void *b);

/* "# <tool> mode=<mode>[ label=<label>] date=... machine=... nproc=...
 * host=... loadavg=a,b,c" on stdout; label NULL leaves it out. */
void bench_print_header(const char *tool, const char *mode, const char *label);
/* The "prefill users=... per_user=... appended=..." result line of a
 * prefill run of el seconds, on stdout (flushed). */
void bench_print_prefill(unsigned users, unsigned per_user, uint64_t appended, double el,
			 uint64_t errors);
/* The measuring window after a warm-up that began at tw: prints the
 * "# warmup: <ready> of <clients> ..." line, sets *measuring, sleeps
 * seconds (only if all_started), clears *measuring and sets *stop_flag.
 * Its length in seconds. */
double bench_window(double tw, uint64_t ready, unsigned clients, bool all_started,
		    double seconds, atomic_bool *measuring, atomic_bool *stop_flag);
/* Wait up to grace_s seconds for *finished to reach started; how many are
 * still short of it then. */
uint64_t bench_wait_finished(atomic_uint_fast64_t *finished, unsigned started, double grace_s);
/* "# loadavg_end=a,b,c" on stdout, if the load average can be read. */
void bench_print_loadavg_end(void);

/* *v := s as a decimal number <= max; false (and *v unchanged) if it is
 * not one. */
bool bench_parse_uint(const char *s, unsigned long max, unsigned *v);
/* true if s has no control characters (nor DEL, nor with !space_ok a space). */
bool bench_no_ctl(const char *s, bool space_ok);

#endif
