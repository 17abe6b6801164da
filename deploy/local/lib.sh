# shellcheck shell=bash
# lib.sh: what ./dev shares between its commands: messages, the Debian
# package check, the CMake/Ninja builds. Sourced by ./dev (bash), never run.
#
# It must never install anything that is already installed, never run
# apt-get update when nothing is missing, and never rebuild a build directory
# given in MERPATI_BUILD_DIR (a test that runs inside that build set it).

MP_ROOT=${MP_ROOT:?lib.sh needs MP_ROOT}
MP_PACKAGES_FILE="$MP_ROOT/deploy/local/packages.txt"
MP_CLUSTER_PY="$MP_ROOT/deploy/local/cluster.py"

mp_say() { printf 'dev: %s\n' "$*" >&2; }
mp_die() { printf 'dev: error: %s\n' "$*" >&2; exit 1; }

# The package names of packages.txt, one a line.
mp_packages() {
	sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' "$MP_PACKAGES_FILE"
}

# Install the packages of packages.txt that are missing. Set
# MERPATI_SKIP_DEPS=1 to skip the check (a machine that is not Debian).
mp_ensure_packages() {
	[[ ${MERPATI_SKIP_DEPS:-0} == 1 ]] && return 0
	command -v dpkg-query >/dev/null ||
		mp_die "dpkg-query not found: ./dev installs Debian packages; install those of deploy/local/packages.txt yourself and set MERPATI_SKIP_DEPS=1"
	local p st missing=()
	while read -r p; do
		st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
		[[ $st == "install ok installed" ]] || missing+=("$p")
	done < <(mp_packages)
	((${#missing[@]} == 0)) && return 0

	local sudo=()
	if ((EUID != 0)); then
		command -v sudo >/dev/null ||
			mp_die "missing packages (${missing[*]}), not root and no sudo: install them as root"
		sudo=(sudo)
	fi
	mp_say "installing missing packages: ${missing[*]}"
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		--no-install-recommends "${missing[@]}"
}

# The build directory the commands use: MERPATI_BUILD_DIR or ./build.
mp_build_dir() {
	if [[ -n ${MERPATI_BUILD_DIR:-} ]]; then
		(cd "$MERPATI_BUILD_DIR" 2>/dev/null && pwd) ||
			mp_die "MERPATI_BUILD_DIR=$MERPATI_BUILD_DIR is not a directory"
	else
		printf '%s\n' "$MP_ROOT/build"
	fi
}

# mp_configure DIR [cmake args...]: configure DIR (Ninja, RelWithDebInfo).
# Re-running it on a configured tree is cheap and applies changed options.
mp_configure() {
	local dir=$1
	shift
	cmake -G Ninja -S "$MP_ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@"
}

# mp_build DIR [cmake args...] [-- ninja targets...]: configure and build.
mp_build() {
	local dir=$1 cm=() targets=()
	shift
	while (($#)); do
		if [[ $1 == -- ]]; then
			shift
			targets=("$@")
			break
		fi
		cm+=("$1")
		shift
	done
	mp_configure "$dir" "${cm[@]}" && ninja -C "$dir" "${targets[@]}"
}

# Make sure the binaries a deployment needs exist, building them into ./build
# unless MERPATI_BUILD_DIR names a build to use as it is.
# mp_need_binaries [extra ninja targets...]
mp_need_binaries() {
	local dir
	dir=$(mp_build_dir)
	if [[ -z ${MERPATI_BUILD_DIR:-} ]]; then
		# Quietly: ninja re-runs cmake itself when a CMakeLists.txt changed.
		if [[ ! -f $dir/build.ninja ]]; then
			mp_configure "$dir" >&2 || mp_die "cmake failed"
		fi
		ninja -C "$dir" --quiet merpati-node merpatictl "$@" >&2 ||
			mp_die "build failed"
	fi
	mp_check_binaries
}

mp_check_binaries() {
	local dir
	dir=$(mp_build_dir)
	[[ -x $dir/storage-node/merpati-node && -x $dir/tools/merpatictl ]] ||
		mp_die "no merpati-node / merpatictl in $dir (build it: ./dev build)"
}

# Run cluster.py with the build directory the commands use.
mp_cluster() {
	python3 "$MP_CLUSTER_PY" --build-dir "$(mp_build_dir)" "$@"
}
