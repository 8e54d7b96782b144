#!/usr/bin/env bash
# Memory given back (issue 15): the resident set that real programs end at
# under glibc, jemalloc, mimalloc, tcmalloc and tieralloc, median of N runs,
# as a Markdown table. Not a timing: peak and end RSS only.
#
#   preload/rss.sh [-n RUNS] [-o OUT.md]
#
#   RUNS        runs per program and allocator (default 3; the median is shown)
#   SKIP_BUILD  set to use the built libtieralloc.so as it is
#   TIERALLOC_LIB  the libtieralloc.so to measure instead (nothing is built)
#
# Programs:
#   realloc  tests/c/decay.c: a buffer grown by realloc one byte at a time to
#            64 MiB, shrunk to 1 KiB, 1.5 s of sleep, 100,000 malloc/free
#            pairs of 64 bytes; "end" is the RSS after the pairs
#   node     bench/graphs.js: 8 object graphs of 200,000 nodes with malloc'd
#            Buffers built and dropped (gc()), then 2 s of light activity;
#            "end" is the RSS then
#   frag     bench/frag.c: 20 cycles of 128 MiB of one small size (32, 56,
#            ... 488 bytes), all but 1/16 freed, the survivors freed two
#            cycles later; "end" is the plateau (largest RSS of cycles 10-19)
# "peak" is the largest RSS of the process (/usr/bin/time's %M).
# Needs: cc, /usr/bin/time, node (Debian `nodejs`), libjemalloc2,
# libmimalloc2.0, libtcmalloc-minimal4.
set -euo pipefail

RUNS=3
OUT=
while getopts "n:o:h" opt; do
    case $opt in
    n) RUNS=$OPTARG ;;
    o) OUT=$OPTARG ;;
    *) sed -n '2,26p' "$0"; exit 2 ;;
    esac
done

NAME=rss.sh
. "$(dirname "$0")/common.sh"
need_common
need node nodejs

set_up_allocators rss
cc -O2 -fno-builtin -o "$work/decay" "$here/tests/c/decay.c" || die "cc decay.c failed"
cc -O2 -fno-builtin -o "$work/frag" "$here/bench/frag.c" || die "cc frag.c failed"
programs=(realloc node frag)
declare -A label=(
    [realloc]="realloc growth to 64 MiB, shrink, pause, pairs: end"
    [node]="node, 8 object graphs built and dropped: end"
    [frag]="20 fragmentation cycles: plateau"
)
declare -A field=([realloc]=end_kb [node]=end_kb [frag]=plateau_kb)

# run PROGRAM ALLOC I: appends "end_kb peak_kb" to $work/PROGRAM.ALLOC
run() {
    local prog=$1 alloc=$2 i=$3 out=$work/$1.$2.$3
    local -a cmd
    case $prog in
    realloc) cmd=("$work/decay" 1 1500 100000) ;;
    node) cmd=(node --expose-gc "$here/bench/graphs.js") ;;
    frag) cmd=("$work/frag") ;;
    esac
    local -a pre=(env -u LD_PRELOAD)
    [[ -n ${lib[$alloc]} ]] && pre=(env LD_PRELOAD="${lib[$alloc]}")
    (cd "$work" && /usr/bin/time -f '%M' -o "$out.time" "${pre[@]}" "${cmd[@]}" </dev/null >"$out.out" 2>"$out.err") \
        || { tail -20 "$out.out" "$out.err" >&2; die "$prog under $alloc failed"; }
    grep -q "cannot be preloaded" "$out.err" && die "$prog: the dynamic linker refused ${lib[$alloc]}"
    local end
    end=$(grep -o "${field[$prog]}=[0-9]*" "$out.out" | tail -1 | cut -d= -f2)
    [[ -n $end ]] || die "$prog under $alloc printed no ${field[$prog]}"
    echo "$end $(tail -1 "$out.time")" >>"$work/$prog.$alloc"
    echo "  $prog/$alloc run $i: $(tail -1 "$work/$prog.$alloc")" >&2
}

echo "rss.sh: $RUNS runs each; $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for ((i = 1; i <= RUNS; i++)); do
    for prog in "${programs[@]}"; do
        for alloc in "${allocs[@]}"; do
            run "$prog" "$alloc" "$i"
        done
    done
done

median() { awk -v c="$2" '{ print $c }' "$1" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

{
    echo "| program | allocator | end RSS MiB | × glibc | peak RSS MiB | × glibc |"
    echo "| --- | --- | ---: | ---: | ---: | ---: |"
    for prog in "${programs[@]}"; do
        ge=$(median "$work/$prog.glibc" 1)
        gp=$(median "$work/$prog.glibc" 2)
        for alloc in "${allocs[@]}"; do
            e=$(median "$work/$prog.$alloc" 1)
            p=$(median "$work/$prog.$alloc" 2)
            awk -v l="${label[$prog]}" -v a="$alloc" -v e="$e" -v p="$p" -v ge="$ge" -v gp="$gp" \
                'BEGIN { printf "| %s | %s | %.1f | %.2f | %.1f | %.2f |\n", l, a, e / 1024, e / ge, p / 1024, p / gp }'
        done
    done
    echo
    echo "Median of $RUNS runs. Machine: $(nproc) CPUs, $(uname -r), $(ldd --version | head -1 | sed 's/.*) //') glibc; load average at the end $(cut -d' ' -f1-3 /proc/loadavg)."
} | tee ${OUT:+"$OUT"}
