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

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${1:-${MERPATI_BUILD_DIR:-$ROOT/build}}
BUILD=$(cd "$BUILD" && pwd)
export MERPATI_BUILD_DIR=$BUILD

SECS=${BENCH_SECONDS:-15}
CLIENTS=${BENCH_CLIENTS:-10 100}
PREFILL=${BENCH_PREFILL:-20}
SIZE=${BENCH_SIZE:-10240}
RETRS=${BENCH_RETRS:-10}
HASHES=${BENCH_HASHES:-sha512 yescrypt}
DOMAIN=bench.test
PASSWORD="bench-$$-password"

die() { echo "run_pop3_bench: $*" >&2; exit 1; }

BENCH=$BUILD/tools/bench/mp-bench-pop3
CTL=$BUILD/tools/merpatictl
for b in "$BENCH" "$CTL" "$BUILD/frontend/merpati-frontend"; do
	[[ -x $b ]] || die "$b is missing: build $BUILD first"
done
NUSERS=0
for c in $CLIENTS; do
	[[ $c =~ ^[1-9][0-9]*$ ]] || die "BENCH_CLIENTS wants numbers"
	((c > NUSERS)) && NUSERS=$c
done
for h in $HASHES; do
	[[ $h == sha512 || $h == yescrypt ]] || die "BENCH_HASHES: sha512 and/or yescrypt"
done
MAXCONN=$((NUSERS + 1000))

DIR=$(mktemp -d "${TMPDIR:-/tmp}/mp-pop3-bench.XXXXXX")
cleanup() {
	local rc=$?
	"$ROOT/dev" down --dir "$DIR" >/dev/null 2>&1 || echo "run_pop3_bench: ./dev down --dir $DIR failed" >&2
	if [[ ${KEEP_DIR:-0} == 1 ]]; then
		echo "run_pop3_bench: deployment directory kept: $DIR" >&2
	else
		rm -rf -- "$DIR"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== starting 3 nodes + 1 frontend in $DIR (build $BUILD)"
"$ROOT/dev" up --dir "$DIR" --nodes 3 --frontends 1 \
	--frontend-arg=--allow_plaintext_auth=true \
	--frontend-arg=--max_connections=$MAXCONN \
	--frontend-arg=--max_connections_per_ip=$MAXCONN >/dev/null
# shellcheck disable=SC1091
. "$DIR/cluster.env"
[[ -n ${POP3_PORT:-} ]] || die "no POP3 port in $DIR/cluster.env"
[[ -n ${IMAP_PORT:-} ]] || die "no IMAP port in $DIR/cluster.env (needed for the prefill)"

rc=0
"$CTL" domain add "$DOMAIN" >/dev/null || rc=$?
((rc == 0 || rc == 3)) || die "merpatictl domain add: exit $rc"

for h in $HASHES; do
	if [[ $h == sha512 ]]; then
		prefix=u
		hash=$(printf '%s\n' "$PASSWORD" | openssl passwd -6 -stdin)
	else
		prefix=yu
		hash=
	fi
	echo "== creating $NUSERS users ${prefix}1..${prefix}$NUSERS in $DOMAIN ($h hashes)"
	t0=$SECONDS
	users=()
	for ((i = 1; i <= NUSERS; i++)); do
		if [[ -n $hash ]]; then
			printf '%s\n' "$hash" | "$CTL" user add "$prefix$i@$DOMAIN" --hash-stdin >/dev/null
		else
			printf '%s\n' "$PASSWORD" | "$CTL" user add "$prefix$i@$DOMAIN" >/dev/null
		fi
		users+=("$prefix$i@$DOMAIN")
	done
	echo "   ($((SECONDS - t0)) s)"
	USERS=$(IFS=,; echo "${users[*]}")
	for c in $CLIENTS; do
		echo "== load: hash=$h, $c clients (one user each), ${SECS}s, prefill $PREFILL/user, $RETRS RETR/session"
		"$BENCH" --port "$POP3_PORT" --imap-port "$IMAP_PORT" --users "$USERS" \
			--password "$PASSWORD" --clients "$c" --seconds "$SECS" --size "$SIZE" \
			--prefill "$PREFILL" --retrs "$RETRS" --label "hash=$h" ||
			echo "(mp-bench-pop3 reported errors: exit $?)"
	done
done
echo "== done; stopping the deployment"
