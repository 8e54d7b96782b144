# Sourced by the comparison scripts (cbench.sh, compare.sh, rss.sh), which
# set NAME to their own name first: the paths, the error and prerequisite
# checks, libtieralloc.so and the allocators' table they all use.

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
libdir=/usr/lib/x86_64-linux-gnu

die() { echo "$NAME: $*" >&2; exit 1; }
# need FILE-OR-COMMAND PACKAGE: dies naming the Debian package to install.
need() { [[ -e $1 ]] || command -v "$1" >/dev/null 2>&1 || die "$1 not found: apt-get install -y $2"; }

# What every comparison needs: the C compiler, /usr/bin/time, and the three
# other allocators' libraries.
need_common() {
    need cc gcc
    need /usr/bin/time time
    need $libdir/libjemalloc.so.2 libjemalloc2
    need $libdir/libmimalloc.so.2 libmimalloc2.0
    need $libdir/libtcmalloc_minimal.so.4 libtcmalloc-minimal4
}

# Builds libtieralloc.so (unless SKIP_BUILD or TIERALLOC_LIB is set), makes
# the scratch directory $work (removed at exit, named after PREFIX), and
# fills `allocs` (the order of every table) and `lib` (allocator -> library,
# "" for glibc). tier: TIERALLOC_LIB, else the build's library.
set_up_allocators() {
    tier=${TIERALLOC_LIB:-${CARGO_TARGET_DIR:-$root/target}/release/libtieralloc.so}
    if [[ -z ${SKIP_BUILD:-} && -z ${TIERALLOC_LIB:-} ]]; then
        (cd "$root" && cargo build --release -p tieralloc-preload >&2) || die "cargo build failed"
    fi
    [[ -f $tier ]] || die "$tier missing"
    work=$(mktemp -d "/tmp/tieralloc-$1.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    allocs=(glibc jemalloc mimalloc tcmalloc tieralloc)
    declare -gA lib=(
        [glibc]=""
        [jemalloc]=$libdir/libjemalloc.so.2
        [mimalloc]=$libdir/libmimalloc.so.2
        [tcmalloc]=$libdir/libtcmalloc_minimal.so.4
        [tieralloc]=$tier
    )
}
