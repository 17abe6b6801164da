#!/usr/bin/env bash
# run_pop3_bench.sh: the POP3 benchmark end to end. Starts a deployment of
# 3 storage nodes (RF=3) and one frontend (plaintext auth allowed) in a
# temporary directory, creates one user per client, runs mp-bench-pop3's
# session workload (USER/PASS, UIDL, RETR x10, QUIT; no DELE) at each
# client count for each password-hash variant, prints the results and
# stops what it started (./dev down), also on failure or Ctrl-C.
#
#   tools/bench/run_pop3_bench.sh [BUILD_DIR]
#
# BUILD_DIR (or $MERPATI_BUILD_DIR; default <repo>/build) is used as it is,
# never rebuilt. Knobs (environment): BENCH_SECONDS (15 per point),
# BENCH_CLIENTS ("10 100"), BENCH_PREFILL (20 messages per user),
# BENCH_SIZE (10240), BENCH_RETRS (10), BENCH_HASHES ("sha512 yescrypt"),
# KEEP_DIR=1 keeps the deployment's directory (logs) after it is stopped.
#
# The cluster allows one POP3 session per maildrop at a time (a second one
# gets -ERR [IN-USE]), so client i always uses user i: the largest client
# count decides how many users are made. Every session logs in, and a
# yescrypt hash (what `merpatictl user add` makes) costs tens of ms of CPU
# per login by design, which then dominates the session; so each hash
# variant has its own users: sha512 -> u1..uN with an imported SHA512-crypt
# hash (`user add --hash-stdin`), yescrypt -> yu1..yuN made the normal way.
# Results are labelled hash=sha512 / hash=yescrypt.
#
# Never: touch a deployment it did not start, or talk to anything but
# 127.0.0.1.
set -euo pipefail

BENCH_NAME=run_pop3_bench
# shellcheck source-path=SCRIPTDIR source=bench_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench_lib.sh"
bench_build "${1:-}"

SECS=${BENCH_SECONDS:-15}
CLIENTS=${BENCH_CLIENTS:-10 100}
PREFILL=${BENCH_PREFILL:-20}
SIZE=${BENCH_SIZE:-10240}
RETRS=${BENCH_RETRS:-10}
HASHES=${BENCH_HASHES:-sha512 yescrypt}
DOMAIN=bench.test
PASSWORD="bench-$$-password"

BENCH=$BUILD/tools/bench/mp-bench-pop3
bench_need_bins "$BENCH"
NUSERS=0
for c in $CLIENTS; do
	[[ $c =~ ^[1-9][0-9]*$ ]] || die "BENCH_CLIENTS wants numbers"
	((c > NUSERS)) && NUSERS=$c
done
for h in $HASHES; do
	[[ $h == sha512 || $h == yescrypt ]] || die "BENCH_HASHES: sha512 and/or yescrypt"
done
MAXCONN=$((NUSERS + 1000))

bench_up mp-pop3-bench.XXXXXX "$MAXCONN"
[[ -n ${POP3_PORT:-} ]] || die "no POP3 port in $DIR/cluster.env"
[[ -n ${IMAP_PORT:-} ]] || die "no IMAP port in $DIR/cluster.env (needed for the prefill)"

bench_domain_add

for h in $HASHES; do
	if [[ $h == sha512 ]]; then
		prefix=u
		hash=$(bench_sha512_hash)
	else
		prefix=yu
		hash=
	fi
	echo "== creating $NUSERS users ${prefix}1..${prefix}$NUSERS in $DOMAIN ($h hashes)"
	t0=$SECONDS
	bench_add_users "$prefix" "$NUSERS" "$hash"
	echo "   ($((SECONDS - t0)) s)"
	USERS=$BENCH_USER_LIST
	for c in $CLIENTS; do
		echo "== load: hash=$h, $c clients (one user each), ${SECS}s, prefill $PREFILL/user, $RETRS RETR/session"
		"$BENCH" --port "$POP3_PORT" --imap-port "$IMAP_PORT" --users "$USERS" \
			--password "$PASSWORD" --clients "$c" --seconds "$SECS" --size "$SIZE" \
			--prefill "$PREFILL" --retrs "$RETRS" --label "hash=$h" ||
			echo "(mp-bench-pop3 reported errors: exit $?)"
	done
done
echo "== done; stopping the deployment"
