/* bench_util: shared pieces of the mp-bench-* load generators. */
#include "bench_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

double bench_now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void bench_sleep_s(double s)
{
	if (s <= 0)
		return;
	struct timespec ts = { (time_t)s, (long)((s - (double)(time_t)s) * 1e9) };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

uint64_t bench_rng_next(uint64_t *st)
{
	/* xorshift64* */
	uint64_t x = *st;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*st = x;
	return x * 0x2545F4914F6CDD1Dull;
}

int bench_addr(struct sockaddr_in *sa_r, const char *host, int port)
{
	memset(sa_r, 0, sizeof(*sa_r));
	sa_r->sin_family = AF_INET;
	sa_r->sin_port = htons((uint16_t)port);
	return inet_pton(AF_INET, host, &sa_r->sin_addr) == 1 ? 0 : -1;
}

int bench_send_all(int fd, const char *p, size_t n, int flags)
{
	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL | flags);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

int bench_quote(char *dst, size_t cap, const char *s)
{
	size_t k = 0;
	if (cap < 3)
		return -1;
	dst[k++] = '"';
	for (; *s != '\0'; s++) {
		if (k + 4 > cap)
			return -1;
		if (*s == '"' || *s == '\\')
			dst[k++] = '\\';
		dst[k++] = *s;
	}
	dst[k++] = '"';
	dst[k] = '\0';
	return 0;
}

int bench_lat_init(struct bench_lat *l, size_t cap)
{
	atomic_store(&l->ok, 0);
	atomic_store(&l->nsamples, 0);
	l->samples = calloc(cap, sizeof(double));
	l->cap = l->samples != NULL ? cap : 0;
	return l->samples != NULL ? 0 : -1;
}

void bench_lat_free(struct bench_lat *l)
{
	free(l->samples);
	l->samples = NULL;
	l->cap = 0;
}

void bench_lat_add(struct bench_lat *l, double ms)
{
	atomic_fetch_add(&l->ok, 1);
	uint64_t i = atomic_fetch_add(&l->nsamples, 1);
	if (i < l->cap)
		l->samples[i] = ms;
}

int bench_cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

void bench_lat_pct(struct bench_lat *l, double *p50_r, double *p99_r)
{
	uint64_t ns = atomic_load(&l->nsamples);
	if (ns > l->cap)
		ns = l->cap;
	if (ns > 0)
		qsort(l->samples, (size_t)ns, sizeof(double), bench_cmp_d);
	*p50_r = ns ? l->samples[ns / 2] : 0;
	*p99_r = ns ? l->samples[(ns * 99) / 100] : 0;
}

void bench_print_header(const char *tool, const char *mode, const char *label)
{
	struct utsname u;
	double load[3] = { 0, 0, 0 };
	char when[32] = "?";
	time_t t = time(NULL);
	struct tm tm;
	if (gmtime_r(&t, &tm) != NULL)
		strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	if (uname(&u) < 0)
		memset(&u, 0, sizeof(u));
	if (getloadavg(load, 3) != 3)
		load[0] = load[1] = load[2] = -1;
	printf("# %s mode=%s%s%s date=%s machine=%s nproc=%ld host=%s "
	       "loadavg=%.2f,%.2f,%.2f\n",
	       tool, mode, label != NULL ? " label=" : "", label != NULL ? label : "", when,
	       u.machine, sysconf(_SC_NPROCESSORS_ONLN), u.nodename, load[0], load[1], load[2]);
}

void bench_print_prefill(unsigned users, unsigned per_user, uint64_t appended, double el,
			 uint64_t errors)
{
	printf("prefill users=%u per_user=%u appended=%" PRIu64 " seconds=%.1f appends_per_s=%.0f"
	       " errors=%" PRIu64 "\n",
	       users, per_user, appended, el, el > 0 ? (double)appended / el : 0.0, errors);
	fflush(stdout);
}

double bench_window(double tw, uint64_t ready, unsigned clients, bool all_started,
		    double seconds, atomic_bool *measuring, atomic_bool *stop_flag)
{
	double t0 = bench_now_s();
	printf("# warmup: %" PRIu64 " of %u clients logged in after %.2f s\n", ready, clients,
	       t0 - tw);
	atomic_store(measuring, true);
	if (all_started)
		bench_sleep_s(seconds);
	/* The window ends here: what completes later is not counted. */
	atomic_store(measuring, false);
	atomic_store(stop_flag, true);
	return bench_now_s() - t0;
}

uint64_t bench_wait_finished(atomic_uint_fast64_t *finished, unsigned started, double grace_s)
{
	double tg = bench_now_s();
	while (atomic_load(finished) < started && bench_now_s() - tg < grace_s)
		bench_sleep_s(0.02);
	return started - atomic_load(finished);
}

void bench_print_loadavg_end(void)
{
	double load[3];
	if (getloadavg(load, 3) == 3)
		printf("# loadavg_end=%.2f,%.2f,%.2f\n", load[0], load[1], load[2]);
}

bool bench_parse_uint(const char *s, unsigned long max, unsigned *v)
{
	char *end;
	errno = 0;
	unsigned long x = strtoul(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || x > max)
		return false;
	*v = (unsigned)x;
	return true;
}

bool bench_no_ctl(const char *s, bool space_ok)
{
	for (; *s != '\0'; s++)
		if ((unsigned char)*s < 0x20 || (!space_ok && *s == ' ') || *s == 0x7f)
			return false;
	return true;
}
