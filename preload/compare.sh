#!/usr/bin/env bash
# Real programs under glibc, jemalloc, mimalloc, tcmalloc and tieralloc:
# wall time, CPU time and peak RSS (/usr/bin/time), median of N runs, as a
# Markdown table with ratios to glibc.
#
#   preload/compare.sh [-n RUNS] [-o OUT.md]
#
#   RUNS        runs per program and allocator (default 3; the median is shown)
#   PY_TESTS    the CPython test modules to time (default: a CPU-bound subset)
#   SKIP_BUILD  set to use target/release/libtieralloc.so as it is
#   TIERALLOC_LIB  the libtieralloc.so to measure instead (nothing is built)
#
# Programs: `python3.11 -m test $PY_TESTS` with PYTHONMALLOC=malloc, the
# SQLite workload of tests/sql/workload.sql (200k rows), and tests/c/threads.c
# (8 threads, 200 rounds). Runs are interleaved (run 1 of every allocator,
# then run 2, ...) so that a change in machine load spreads over all of them.
# Every run must succeed, and SQLite's answers must equal glibc's.
# Needs: cc, /usr/bin/time (Debian `time`), sqlite3, python3.11 with
# libpython3.11-testsuite, libjemalloc2, libmimalloc2.0, libtcmalloc-minimal4.
set -euo pipefail

RUNS=3
OUT=
while getopts "n:o:h" opt; do
    case $opt in
    n) RUNS=$OPTARG ;;
    o) OUT=$OPTARG ;;
    *) sed -n '2,21p' "$0"; exit 2 ;;
    esac
done

NAME=compare.sh
. "$(dirname "$0")/common.sh"
PY=/usr/bin/python3.11
PY_TESTS=${PY_TESTS:-"test_list test_dict test_set test_unicode test_json test_re test_bytes test_collections test_sort test_long test_decimal"}

need_common
need sqlite3 sqlite3
need $PY python3.11
need /usr/lib/python3.11/test/test_list.py libpython3.11-testsuite

set_up_allocators compare
cc -O2 -fno-builtin -pthread -o "$work/threads" "$here/tests/c/threads.c" || die "cc threads.c failed"
programs=(python sqlite threads)
declare -A label=(
    [python]="python3.11 -m test ($(wc -w <<<"$PY_TESTS") modules)"
    [sqlite]="sqlite3 workload.sql (200k rows)"
    [threads]="threads.c (8 threads)"
)

# run PROGRAM ALLOC I: one timed run; appends "wall user+sys maxrss_kb" to $work/PROGRAM.ALLOC
run() {
    local prog=$1 alloc=$2 i=$3 out=$work/$1.$2.$3
    local -a cmd
    case $prog in
    python) cmd=(env PYTHONMALLOC=malloc $PY -m test $PY_TESTS) ;;
    sqlite) cmd=(sqlite3 -batch -bail :memory:) ;;
    threads) cmd=("$work/threads" 8 200) ;;
    esac
    local -a pre=(env -u LD_PRELOAD)
    [[ -n ${lib[$alloc]} ]] && pre=(env LD_PRELOAD="${lib[$alloc]}")
    local rc=0
    if [[ $prog == sqlite ]]; then
        (cd "$work" && /usr/bin/time -f '%e %U %S %M' -o "$out.time" "${pre[@]}" "${cmd[@]}" \
            <"$here/tests/sql/workload.sql" >"$out.out" 2>"$out.err") || rc=$?
    else
        (cd "$work" && /usr/bin/time -f '%e %U %S %M' -o "$out.time" "${pre[@]}" "${cmd[@]}" \
            </dev/null >"$out.out" 2>"$out.err") || rc=$?
    fi
    if ((rc != 0)) || grep -q "cannot be preloaded" "$out.err"; then
        tail -20 "$out.out" "$out.err" >&2
        die "$prog under $alloc failed (exit $rc)"
    fi
    if [[ $prog == sqlite ]] && ! cmp -s "$out.out" "$work/sqlite.glibc.1.out"; then
        die "sqlite under $alloc: answers differ from glibc's"
    fi
    # The last line of the -o file is ours (a non-zero exit adds one before it).
    tail -1 "$out.time" | awk '{ printf "%s %.2f %s\n", $1, $2 + $3, $4 }' >>"$work/$prog.$alloc"
    echo "  $prog/$alloc run $i: $(tail -1 "$work/$prog.$alloc")" >&2
}

echo "compare.sh: $RUNS runs each; $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for ((i = 1; i <= RUNS; i++)); do
    for prog in "${programs[@]}"; do
        for alloc in "${allocs[@]}"; do
            run "$prog" "$alloc" "$i"
        done
    done
done

# median FILE COLUMN
median() { awk -v c="$2" '{ print $c }' "$1" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

{
    echo "| program | allocator | wall s | × glibc | CPU s | × glibc | peak RSS MiB | × glibc |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    for prog in "${programs[@]}"; do
        gw=$(median "$work/$prog.glibc" 1)
        gc=$(median "$work/$prog.glibc" 2)
        gr=$(median "$work/$prog.glibc" 3)
        for alloc in "${allocs[@]}"; do
            w=$(median "$work/$prog.$alloc" 1)
            c=$(median "$work/$prog.$alloc" 2)
            r=$(median "$work/$prog.$alloc" 3)
            awk -v p="${label[$prog]}" -v a="$alloc" -v w="$w" -v c="$c" -v r="$r" -v gw="$gw" -v gc="$gc" -v gr="$gr" \
                'BEGIN { printf "| %s | %s | %.2f | %.2f | %.2f | %.2f | %.1f | %.2f |\n", p, a, w, w / gw, c, c / gc, r / 1024, r / gr }'
        done
    done
    echo
    echo "Median of $RUNS runs; CPU = user + sys; peak RSS = the largest process (getrusage of children)."
    echo "Machine: $(nproc) CPUs, $(uname -r), $(ldd --version | head -1 | sed 's/.*) //') glibc; load average at the end $(cut -d' ' -f1-3 /proc/loadavg)."
} | tee ${OUT:+"$OUT"}
