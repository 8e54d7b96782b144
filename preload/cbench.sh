#!/usr/bin/env bash
# The C benchmark shapes of preload/bench/ (simple, larson, paretoalloc,
# rptest, xmalloc) under glibc, jemalloc, mimalloc, tcmalloc and tieralloc:
# wall time and peak RSS, median of N runs, as a Markdown table with
# tieralloc's time over mimalloc's and over jemalloc's and a geometric-mean
# row. Peak RSS is /usr/bin/time's %M; the wall time is taken around the
# same /usr/bin/time command to the microsecond (its own %e has 10 ms steps,
# too coarse for the 0.05-0.2 s runs of the fastest allocators).
#
#   preload/cbench.sh [-n RUNS] [-o OUT.md] [-q]
#
#   -n RUNS     runs per shape row and allocator (default 5; the median is shown)
#   -o OUT.md   also write the table to OUT.md
#   -q          quick: tiny parameters and 1 run (unless -n), to check that it all works
#   ONLY        shapes to run, comma-separated (default: all of
#               simple,larson,paretoalloc,rptest,xmalloc)
#   SKIP_BUILD  set to use target/release/libtieralloc.so as it is
#   TIERALLOC_LIB  the libtieralloc.so to measure instead (nothing is built)
#
# Rows: every shape with 1 thread and with one thread per CPU where the shape
# has both (rptest frees across threads, so it runs with one per CPU only;
# xmalloc with 1 producer/consumer pair and with CPUs/2 pairs, once when
# that is 1), larson also with -s (free_sized, where the allocator has it).
# Runs are interleaved (run 1 of every row and allocator, then run 2, ...;
# each run starts at the next allocator in turn) so that a change in machine
# load spreads over all of them. Every run must exit 0 and print its result
# line with a positive ops count. Needs: cc, /usr/bin/time (Debian `time`),
# libjemalloc2, libmimalloc2.0, libtcmalloc-minimal4.
set -euo pipefail
export LC_ALL=C # a '.' in EPOCHREALTIME and in the programs' numbers

RUNS=5
RUNS_SET=
OUT=
QUICK=
while getopts "n:o:qh" opt; do
    case $opt in
    n) RUNS=$OPTARG RUNS_SET=1 ;;
    o) OUT=$OPTARG ;;
    q) QUICK=1 ;;
    *) sed -n '2,28p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
(($# == 0)) || { sed -n '2,28p' "$0"; exit 2; }
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "cbench.sh: -n $RUNS: expected a positive number" >&2; exit 2; }
[[ -n $QUICK && -z $RUNS_SET ]] && RUNS=1

NAME=cbench.sh
. "$(dirname "$0")/common.sh"
need_common

all_shapes=(simple larson paretoalloc rptest xmalloc)
IFS=, read -r -a shapes <<<"${ONLY:-$(IFS=,; echo "${all_shapes[*]}")}"
((${#shapes[@]} > 0)) || die "ONLY names no shape"
for s in "${shapes[@]}"; do
    [[ " ${all_shapes[*]} " == *" $s "* ]] || die "ONLY: unknown shape $s (shapes: ${all_shapes[*]})"
done

set_up_allocators cbench
for s in "${shapes[@]}"; do
    cc -O2 -pthread -Wall -o "$work/$s" "$here/bench/$s.c" -lm || die "cc bench/$s.c failed"
done

# The rows: ROW -> "shape args..." (full and quick parameters) and a label.
# The full parameters take about 0.5-1 s under glibc on an idle 2-core machine
# (less when the machine is loaded and the threads of a run take turns).
cpus=$(nproc)
pairs=$((cpus / 2 > 1 ? cpus / 2 : 1))
# 1 and N, once when N is 1
one_and() { printf '%s\n' 1 "$1" | sort -un; }
plural() { (($1 == 1)) && echo "1 thread" || echo "$1 threads"; }
rows=()
declare -A cmd label
add() { # add ROW LABEL FULL-ARGS QUICK-ARGS (the first word of the args: the shape)
    rows+=("$1")
    label[$1]=$2
    if [[ -n $QUICK ]]; then cmd[$1]=$4; else cmd[$1]=$3; fi
}
selected() { [[ " ${shapes[*]} " == *" $1 "* ]]; }
if selected simple; then
    for t in $(one_and "$cpus"); do
        add "simple-$t" "simple, $(plural "$t")" "simple -t $t -n 1500000" "simple -t $t -n 2000"
    done
fi
if selected larson; then
    for s in "" "-s"; do
        for t in $(one_and "$cpus"); do
            # glibc's arenas contend on the frees of other threads' objects:
            # 1 thread gets 2000 rounds, more threads 500.
            add "larson$s-$t" "larson${s:+ -s}, $(plural "$t")" "larson -t $t -r $((t == 1 ? 2000 : 500)) $s" \
                "larson -t $t -r 3 -o 2000 $s"
        done
    done
fi
if selected paretoalloc; then
    for t in $(one_and "$cpus"); do
        add "paretoalloc-$t" "paretoalloc, $(plural "$t")" "paretoalloc -t $t -n 20000000" \
            "paretoalloc -t $t -w 2000 -n 20000"
    done
fi
if selected rptest; then
    add "rptest-$cpus" "rptest, $(plural "$cpus")" "rptest -t $cpus -i 4000" "rptest -t $cpus -w 200 -i 40 -b 100"
fi
if selected xmalloc; then
    for p in $(one_and "$pairs"); do
        add "xmalloc-$p" "xmalloc, $p+$p threads" "xmalloc -p $p -n 4000000" "xmalloc -p $p -n 20000"
    done
fi

# run ROW ALLOC I: one timed run; appends "wall maxrss_kb" to $work/ROW.ALLOC
run() {
    local row=$1 alloc=$2 i=$3 out=$work/$1.$2.$3
    local -a args
    read -r -a args <<<"${cmd[$row]}"
    args[0]=$work/${args[0]}
    local -a pre=(env -u LD_PRELOAD)
    [[ -n ${lib[$alloc]} ]] && pre=(env LD_PRELOAD="${lib[$alloc]}")
    local rc=0 t0 t1
    t0=$EPOCHREALTIME
    /usr/bin/time -f '%M' -o "$out.time" "${pre[@]}" "${args[@]}" </dev/null >"$out.out" 2>"$out.err" || rc=$?
    t1=$EPOCHREALTIME
    if ((rc != 0)) || grep -q "cannot be preloaded" "$out.err"; then
        cat "$out.out" >&2
        cat "$out.err" >&2
        die "${cmd[$row]} under $alloc failed (exit $rc)"
    fi
    local result ops
    result=$(grep '^shape=' "$out.out" | tail -1) || true
    ops=$(sed -n 's/.* ops=\([0-9]*\) .*/\1/p' <<<"$result")
    if [[ -z $ops || $ops == 0 ]]; then
        cat "$out.out" "$out.err" >&2
        die "${cmd[$row]} under $alloc: no result line with a positive ops count"
    fi
    if [[ $row == larson-s-* ]]; then
        sed -n 's/.* free=\([^ ]*\).*/\1/p' <<<"$result" >"$work/free.$alloc"
    fi
    # The last line of the -o file is ours (a non-zero exit adds one before it).
    awk -v a="$t0" -v b="$t1" -v m="$(tail -1 "$out.time")" 'BEGIN { printf "%.4f %s\n", b - a, m }' >>"$work/$row.$alloc"
    echo "  ${cmd[$row]} / $alloc run $i: $(tail -1 "$work/$row.$alloc") (${result##* ops_per_s=} ops/s)" >&2
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$root" diff --quiet HEAD -- 2>/dev/null || commit="$commit (+ uncommitted changes)"
echo "cbench.sh: $RUNS runs each of ${#rows[@]} rows; $cpus CPUs; load average $load_start" >&2
for ((i = 1; i <= RUNS; i++)); do
    for row in "${rows[@]}"; do
        for ((k = 0; k < ${#allocs[@]}; k++)); do
            run "$row" "${allocs[$(((i - 1 + k) % ${#allocs[@]}))]}" "$i"
        done
    done
done

# median FILE COLUMN
median() { awk -v c="$2" '{ print $c }' "$1" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

{
    printf '| shape |'
    for a in "${allocs[@]}"; do printf ' %s s |' "$a"; done
    for a in "${allocs[@]}"; do printf ' %s MiB |' "$a"; done
    printf ' tieralloc / mimalloc | tieralloc / jemalloc |\n'
    printf '| --- |'
    for _ in "${allocs[@]}" "${allocs[@]}" x x; do printf ' ---: |'; done
    printf '\n'
    for row in "${rows[@]}"; do
        line=()
        for a in "${allocs[@]}"; do line+=("$(median "$work/$row.$a" 1)"); done
        for a in "${allocs[@]}"; do line+=("$(median "$work/$row.$a" 2)"); done
        echo "${label[$row]}|${line[*]}"
    done | awk -F'|' '
        {
            split($2, v, " ")
            printf "| %s |", $1
            for (j = 1; j <= 5; j++) { printf " %.3f |", v[j]; lw[j] += log(v[j]) }
            for (j = 6; j <= 10; j++) { printf " %.1f |", v[j] / 1024; lr[j] += log(v[j] / 1024) }
            # tieralloc is column 5, jemalloc 2, mimalloc 3.
            t = v[5]; m = v[3]; je = v[2]
            printf " %.2f | %.2f |\n", t / m, t / je
            lm += log(t / m); lj += log(t / je); n++
        }
        END {
            printf "| **geometric mean** |"
            for (j = 1; j <= 5; j++) printf " %.3f |", exp(lw[j] / n)
            for (j = 6; j <= 10; j++) printf " %.1f |", exp(lr[j] / n)
            printf " **%.2f** | **%.2f** |\n", exp(lm / n), exp(lj / n)
        }'
    echo
    echo "Median of $RUNS runs: wall seconds (process start to exit) and peak RSS (/usr/bin/time); ratios below 1: tieralloc is faster."
    if [[ -f $work/free.tieralloc ]]; then
        printf 'larson -s freed with:'
        for a in "${allocs[@]}"; do printf ' %s %s;' "$a" "$(cat "$work/free.$a")"; done
        printf ' (free-fallback: the allocator exports no free_sized)\n'
    fi
    echo "Commit $commit, $(date -u +%Y-%m-%d); machine: $cpus CPUs, $(uname -r), glibc $(ldd --version | head -1 | sed 's/.* //'); load average $load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end."
} | tee ${OUT:+"$OUT"}
