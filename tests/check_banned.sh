#!/bin/sh
# check_banned.sh SOURCE_DIR: fail if any .c/.h under the code folders calls
# a banned function: strcpy, strcat, sprintf, vsprintf, gets (STYLE.md; use
# snprintf/memcpy). Matches whole identifiers followed by "(", so snprintf,
# strncpy, fgets and my_gets are fine. Lines that are comments (starting with
# "*", "/*" or "//") are skipped, so prose may name the functions. Build
# directories (build*) are never scanned.
#
# check_banned.sh --self-test: checks the checker on small trees in a
# temporary directory (each banned call found, look-alikes not).
set -u

if [ "${1:-}" = "--self-test" ]; then
	self=$0
	tmp=$(mktemp -d "${TMPDIR:-/tmp}/check_banned.XXXXXX") || exit 2
	trap 'rm -rf "$tmp"' EXIT
	fail=0
	n=0
	for call in 'strcpy(a, b);' 'x = strcat (a, b);' '(void)sprintf(buf, "%d", 1);' \
		    'vsprintf(buf, fmt, ap);' 'if (gets(buf) == NULL)' 'return strcpy(d,s);'; do
		n=$((n + 1))
		mkdir -p "$tmp/bad$n/tools"
		printf 'int f(void)\n{\n\t%s\n}\n' "$call" > "$tmp/bad$n/tools/x.c"
		sh "$self" "$tmp/bad$n" > /dev/null
		rc=$?
		if [ "$rc" -ne 1 ]; then
			echo "self-test: not caught (rc $rc): $call"
			fail=1
		fi
	done
	mkdir -p "$tmp/good/common" "$tmp/good/tests/build-x"
	cat > "$tmp/good/common/ok.h" <<'EOT'
/* Never call strcpy() here: use memcpy(). */
 * nor sprintf(buf, ...) in prose
// gets(buf) is banned
int n = snprintf(buf, sizeof(buf), "%d", 1);
vsnprintf(buf, sizeof(buf), fmt, ap);
strncpy(a, b, n); fgets(buf, n, f); my_gets(x); strcpy_s(a, n, b);
const char *name = "strcat";
EOT
	printf 'strcpy(a, b);\n' > "$tmp/good/tests/build-x/gen.c"
	out=$(sh "$self" "$tmp/good")
	rc=$?
	if [ "$rc" -ne 0 ]; then
		echo "self-test: false positive (rc $rc):"
		echo "$out"
		fail=1
	fi
	[ "$fail" -eq 0 ] && echo "check_banned self-test: ok ($n banned calls caught, no false positives)"
	exit "$fail"
fi

root=${1:-.}
cd "$root" || { echo "check_banned: no such directory: $root" >&2; exit 2; }

dirs=""
for d in common storage-node replication frontend tools tests; do
	[ -d "$d" ] && dirs="$dirs $d"
done
[ -n "$dirs" ] || { echo "check_banned: no source folders under $root" >&2; exit 2; }

# shellcheck disable=SC2086 # $dirs is a list of plain folder names
hits=$(find $dirs -type d -name 'build*' -prune -o \
		-type f \( -name '*.c' -o -name '*.h' \) -print |
	sort |
	while IFS= read -r f; do
		grep -nHE '(^|[^A-Za-z0-9_])(strcpy|strcat|sprintf|vsprintf|gets)[[:space:]]*\(' "$f"
	done |
	grep -vE '^[^:]+:[0-9]+:[[:space:]]*(\*|/\*|//)')

if [ -n "$hits" ]; then
	echo "banned functions (use snprintf/memcpy):"
	echo "$hits"
	exit 1
fi
echo "check_banned: no banned functions in$dirs"
exit 0
