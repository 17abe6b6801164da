#!/usr/bin/env bash
# run_imap_bench.sh: the IMAP benchmark end to end. Starts a deployment of
# 3 storage nodes (RF=3) and one frontend in a temporary directory, creates
# the benchmark users, runs mp-bench-imap's mixed workload at each client
# count and then the idle-connection memory test against the frontend's
# RSS, prints the results and stops what it started (./dev down), also on
# failure or Ctrl-C.
#
#   tools/bench/run_imap_bench.sh [BUILD_DIR]
#
# BUILD_DIR (or $MERPATI_BUILD_DIR; default <repo>/build) is used as it is,
# never rebuilt. Knobs (environment): BENCH_SECONDS (20 per point),
# BENCH_CLIENTS ("10 100"), BENCH_USERS (10), BENCH_PREFILL (200 messages
# per user), BENCH_SIZE (10240), BENCH_IDLE_MS (100), IDLE_CONNS (10000; 0
# skips the test), IDLE_HASH (sha512 or yescrypt, see below), KEEP_DIR=1
# keeps the deployment's directory (logs) after it is stopped.
#
# The idle test logs in IDLE_CONNS times. Users made by `merpatictl user add`
# have yescrypt hashes (tens of ms of CPU per LOGIN, by design), which would
# make opening 10,000 connections on 2 cores take minutes and measure crypt,
# not connections; so by default the idle test's own users (idle1.. in the
# same domain) get an imported SHA512-crypt hash (`user add --hash-stdin`).
# The load test's users keep yescrypt: its LOGIN figures are the real cost.
#
# Never: touch a deployment it did not start, or talk to anything but
# 127.0.0.1.
set -euo pipefail

BENCH_NAME=run_imap_bench
# shellcheck source-path=SCRIPTDIR source=bench_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench_lib.sh"
bench_build "${1:-}"

SECS=${BENCH_SECONDS:-20}
CLIENTS=${BENCH_CLIENTS:-10 100}
NUSERS=${BENCH_USERS:-10}
PREFILL=${BENCH_PREFILL:-200}
SIZE=${BENCH_SIZE:-10240}
IDLE_MS=${BENCH_IDLE_MS:-100}
IDLE_CONNS=${IDLE_CONNS:-10000}
IDLE_HASH=${IDLE_HASH:-sha512}
DOMAIN=bench.test
PASSWORD="bench-$$-password"

BENCH=$BUILD/tools/bench/mp-bench-imap
bench_need_bins "$BENCH"
[[ $IDLE_CONNS =~ ^[0-9]+$ ]] || die "IDLE_CONNS wants a number"
[[ $IDLE_HASH == sha512 || $IDLE_HASH == yescrypt ]] || die "IDLE_HASH: sha512 or yescrypt"

# One descriptor per idle connection on each side (the frontend inherits
# this shell's limit through ./dev up), plus headroom for the rest.
need=$((IDLE_CONNS + 1024))
hard=$(ulimit -Hn)
if [[ $hard != unlimited ]] && ((hard < need)); then
	IDLE_CONNS=$((hard > 2048 ? hard - 1024 : 0))
	echo "run_imap_bench: open files hard limit $hard: IDLE_CONNS lowered to $IDLE_CONNS" >&2
	need=$((IDLE_CONNS + 1024))
fi
soft=$(ulimit -Sn)
if [[ $soft != unlimited ]] && ((soft < need)); then
	ulimit -n "$need"
fi
MAXCONN=$((IDLE_CONNS + 1000))

bench_up mp-imap-bench.XXXXXX "$MAXCONN"
[[ -n ${IMAP_PORT:-} ]] || die "no IMAP port in $DIR/cluster.env"
read -r -a fe_pids <<<"$FRONTEND_PIDS"
FE_PID=${fe_pids[0]}

echo "== creating $NUSERS users in $DOMAIN"
bench_domain_add
bench_add_users u "$NUSERS"
USERS=$BENCH_USER_LIST

for c in $CLIENTS; do
	echo "== load: $c clients, $NUSERS users, ${SECS}s, prefill $PREFILL/user"
	"$BENCH" --port "$IMAP_PORT" --users "$USERS" --password "$PASSWORD" \
		--clients "$c" --seconds "$SECS" --size "$SIZE" --prefill "$PREFILL" \
		--idle-ms "$IDLE_MS" || echo "(mp-bench-imap reported errors: exit $?)"
done

if ((IDLE_CONNS > 0)); then
	echo "== idle: $IDLE_CONNS connections (LOGIN, SELECT INBOX, IDLE), $IDLE_HASH hashes"
	ihash=
	if [[ $IDLE_HASH == sha512 ]]; then
		ihash=$(bench_sha512_hash)
	fi
	bench_add_users idle "$NUSERS" "$ihash"
	IUSERS=$BENCH_USER_LIST
	# A fresh frontend process, so that its RSS holds no heap the load runs
	# left behind (freed memory the idle connections would reuse).
	"$ROOT/dev" restart --dir "$DIR" --frontend 0 >/dev/null
	# shellcheck disable=SC1091
	. "$DIR/cluster.env"
	read -r -a fe_pids <<<"$FRONTEND_PIDS"
	FE_PID=${fe_pids[0]}
	kill -0 "$FE_PID" 2>/dev/null || die "frontend (pid $FE_PID) not running after restart"
	"$BENCH" --port "$IMAP_PORT" --users "$IUSERS" --password "$PASSWORD" \
		--prefill 20 --idle-conns "$IDLE_CONNS" --frontend-pid "$FE_PID" \
		--node-pids "${NODE_PIDS// /,}" --hold 10 ||
		echo "(mp-bench-imap reported failures: exit $?)"
fi
echo "== done; stopping the deployment"
