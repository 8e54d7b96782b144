#!/usr/bin/env bash
# What the C library's double-free detection costs: preload/bench/pair.c
# (N malloc(SIZE)/free pairs, ns per pair) under libtieralloc.so built with
# the `hardened` feature (the default) and without it, and under glibc, in
# interleaved rounds (one run of each per round), medians.
#
#   preload/pair.sh [-r ROUNDS] [-n PAIRS] [SIZE...]   (defaults: 15, 20000000, 64 10000)
set -euo pipefail

ROUNDS=15
PAIRS=20000000
while getopts "r:n:h" opt; do
    case $opt in
    r) ROUNDS=$OPTARG ;;
    n) PAIRS=$OPTARG ;;
    *) sed -n '2,8p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
SIZES=("${@:-64}")
[ $# -eq 0 ] && SIZES=(64 10000)

root=$(cd "$(dirname "$0")/.." && pwd)
off_dir="$root/target/pair-unhardened"
cargo build -q --release -p tieralloc-preload --manifest-path "$root/Cargo.toml"
CARGO_TARGET_DIR="$off_dir" cargo build -q --release -p tieralloc-preload \
    --no-default-features --manifest-path "$root/Cargo.toml"
on_lib="$root/target/release/libtieralloc.so"
off_lib="$off_dir/release/libtieralloc.so"
bin=$(mktemp -d)/pair
cc -O2 -o "$bin" "$root/preload/bench/pair.c"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "| size | glibc (ns/pair) | tieralloc without \`hardened\` | tieralloc (\`hardened\`, default) | cost of \`hardened\` |"
echo "|---:|---:|---:|---:|---:|"
for size in "${SIZES[@]}"; do
    g=() off=() on=()
    for _ in $(seq "$ROUNDS"); do
        g+=("$("$bin" "$size" "$PAIRS")")
        off+=("$(LD_PRELOAD="$off_lib" "$bin" "$size" "$PAIRS")")
        on+=("$(LD_PRELOAD="$on_lib" "$bin" "$size" "$PAIRS")")
    done
    mg=$(printf '%s\n' "${g[@]}" | median)
    moff=$(printf '%s\n' "${off[@]}" | median)
    mon=$(printf '%s\n' "${on[@]}" | median)
    cost=$(awk -v a="$mon" -v b="$moff" 'BEGIN {printf "%+.1f %%", (a / b - 1) * 100}')
    echo "| $size | $mg | $moff | $mon | $cost |"
done
