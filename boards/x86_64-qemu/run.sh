#!/usr/bin/env bash
# Builds the x86_64-qemu kernel and boots it under QEMU (what `make run` does).
#
#   boards/x86_64-qemu/run.sh [SCENARIO] [key=value ...]
#
# SCENARIO defaults to `main` (every CPU runs the mixed workload, then the heap
# statistics and a per-CPU summary are printed). Other scenarios: boot,
# many_boxes, stress, oom (use MEM=48M), scavenge, guard, bench; with
# FEATURES=checks also double_free and foreign_free. key=value words go to the
# kernel command line (e.g. `rounds=1000`, `ops=100000`; for bench, `scale=N`
# multiplies the time budgets and `only=WORDS` runs just the single-CPU
# workloads whose name starts with WORDS, spaces as `_`: `only=churn_64`).
#
# Profiling the guest from the host: QEMU=<a wrapper adding -perfmap> under
# `perf record` labels the JIT's samples with guest addresses (`guest-0x...`).
#
# Environment: SMP (4), MEM (512M), FEATURES (cargo features of the board:
# checks, lla-heap), QEMU (qemu-system-x86_64), TIMEOUT (seconds, 300),
# ICOUNT=1 (`-icount shift=0`: the guest clock counts guest instructions, one
# per nanosecond, so `bench` compares instruction counts, free of host noise).
# Exit status: 0 when the kernel reports success (QEMU status 33), 1 otherwise.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

scenario="${1:-main}"
[ $# -gt 0 ] && shift
qemu="${QEMU:-qemu-system-x86_64}"
command -v "$qemu" >/dev/null || {
    echo "run.sh: $qemu not found: install qemu-system-x86 (make deps)" >&2
    exit 1
}

# The board is its own workspace with its own target and flags (.cargo/config.toml).
env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_TARGET -u CARGO_TARGET_DIR \
    "${CARGO:-cargo}" build --release --target x86_64-unknown-none ${FEATURES:+--features "$FEATURES"}

append="scenario=$scenario${*:+ $*}"
echo "run.sh: qemu -smp ${SMP:-4} -m ${MEM:-512M} -append \"$append\"" >&2
set +e
timeout --foreground "${TIMEOUT:-300}" "$qemu" \
    -machine q35 -cpu max -smp "${SMP:-4}" -m "${MEM:-512M}" ${ICOUNT:+-icount shift=0} \
    -display none -serial stdio -monitor none -no-reboot \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -kernel target/x86_64-unknown-none/release/x86_64-qemu \
    -append "$append"
status=$?
set -e
case $status in
    33) echo "run.sh: scenario $scenario passed (QEMU exit status 33)" >&2; exit 0 ;;
    35) echo "run.sh: scenario $scenario FAILED (QEMU exit status 35)" >&2 ;;
    124) echo "run.sh: scenario $scenario timed out after ${TIMEOUT:-300} s (QEMU killed)" >&2 ;;
    *) echo "run.sh: QEMU exited with status $status (1: QEMU itself failed)" >&2 ;;
esac
exit 1
