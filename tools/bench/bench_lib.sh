# bench_lib.sh: what run_imap_bench.sh and run_pop3_bench.sh share, sourced
# by them after `set -euo pipefail`: finding the build, checking its
# binaries, starting a deployment in a temporary directory that is stopped
# (./dev down) and removed on exit, failure or Ctrl-C, and making the
# benchmark's domain and users with merpatictl.
#
# Globals it sets: ROOT, BUILD (exported as MERPATI_BUILD_DIR), CTL, DIR,
# whatever $DIR/cluster.env defines, and BENCH_USER_LIST. It needs
# BENCH_NAME (the prefix of its messages), DOMAIN and PASSWORD from the
# caller. Never: touch a deployment it did not start.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CTL=

die() { echo "$BENCH_NAME: $*" >&2; exit 1; }

# bench_build [BUILD_DIR]: BUILD is BUILD_DIR, else $MERPATI_BUILD_DIR, else
# <repo>/build; used as it is, never rebuilt.
bench_build() {
	BUILD=${1:-${MERPATI_BUILD_DIR:-$ROOT/build}}
	BUILD=$(cd "$BUILD" && pwd)
	export MERPATI_BUILD_DIR=$BUILD
	CTL=$BUILD/tools/merpatictl
}

# bench_need_bins BIN...: each must be executable (with merpatictl and the
# frontend, which every run needs).
bench_need_bins() {
	local b
	for b in "$@" "$CTL" "$BUILD/frontend/merpati-frontend"; do
		[[ -x $b ]] || die "$b is missing: build $BUILD first"
	done
}

bench_cleanup() {
	local rc=$?
	"$ROOT/dev" down --dir "$DIR" >/dev/null 2>&1 || echo "$BENCH_NAME: ./dev down --dir $DIR failed" >&2
	if [[ ${KEEP_DIR:-0} == 1 ]]; then
		echo "$BENCH_NAME: deployment directory kept: $DIR" >&2
	else
		rm -rf -- "$DIR"
	fi
	exit "$rc"
}

# bench_up TEMPLATE MAXCONN: a temporary directory mktemp makes from
# TEMPLATE in $TMPDIR, the cleanup trap, then 3 storage nodes and one
# frontend (plaintext auth, MAXCONN connections in all and per IP) in it;
# its cluster.env is sourced.
bench_up() {
	local template=$1 maxconn=$2
	DIR=$(mktemp -d "${TMPDIR:-/tmp}/$template")
	trap bench_cleanup EXIT
	trap 'exit 130' INT TERM
	echo "== starting 3 nodes + 1 frontend in $DIR (build $BUILD)"
	"$ROOT/dev" up --dir "$DIR" --nodes 3 --frontends 1 \
		--frontend-arg=--allow_plaintext_auth=true \
		--frontend-arg=--max_connections="$maxconn" \
		--frontend-arg=--max_connections_per_ip="$maxconn" >/dev/null
	# shellcheck disable=SC1091
	. "$DIR/cluster.env"
}

# bench_domain_add: DOMAIN, which may exist already (exit 3).
bench_domain_add() {
	local rc=0
	"$CTL" domain add "$DOMAIN" >/dev/null || rc=$?
	((rc == 0 || rc == 3)) || die "merpatictl domain add: exit $rc"
}

# bench_sha512_hash: PASSWORD's SHA512-crypt hash on stdout.
bench_sha512_hash() {
	printf '%s\n' "$PASSWORD" | openssl passwd -6 -stdin
}

# bench_add_users PREFIX N [HASH]: users PREFIX1..PREFIXN in DOMAIN with
# PASSWORD, or with the imported HASH (`user add --hash-stdin`) if one is
# given; BENCH_USER_LIST gets them comma-separated.
bench_add_users() {
	local prefix=$1 n=$2 hash=${3:-} i
	local users=()
	for ((i = 1; i <= n; i++)); do
		if [[ -n $hash ]]; then
			printf '%s\n' "$hash" | "$CTL" user add "$prefix$i@$DOMAIN" --hash-stdin >/dev/null
		else
			printf '%s\n' "$PASSWORD" | "$CTL" user add "$prefix$i@$DOMAIN" >/dev/null
		fi
		users+=("$prefix$i@$DOMAIN")
	done
	# shellcheck disable=SC2034 # read by the sourcing script
	BENCH_USER_LIST=$(IFS=,; echo "${users[*]}")
}
