#!/usr/bin/env bash
# Builds the riscv-qemu firmware and boots one scenario under QEMU's riscv32
# virt machine with four harts (what `make run-riscv` does, with scenario stress).
#
#   boards/riscv-qemu/run.sh [SCENARIO]
#
# SCENARIO: boot, stress (the default: all harts churn at once and free each
# other's objects through a shared mailbox; heap statistics and the per-hart
# summary at the end), oom, double_free (built with FEATURES=checks; it must
# fail), bench (tieralloc against embedded-alloc's llff and tlsf and talc on
# 1, 2 and 4 harts; run it with QEMU_EXTRA_ARGS="-icount shift=0", which
# `make qemu-bench-riscv` does).
#
# Environment: TARGET (riscv32imac-unknown-none-elf), FEATURES (checks),
# QEMU (qemu-system-riscv32), TIMEOUT (seconds, 120), QEMU_EXTRA_ARGS (more
# QEMU arguments, split at spaces, e.g. "-icount shift=0": one instruction per
# ns of guest time, the harts run in turn).
# The UART is QEMU's stdout; the firmware ends through the SiFive test
# device: QEMU exits with 0 when it reports success, 1 otherwise.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

scenario="${1:-stress}"
target="${TARGET:-riscv32imac-unknown-none-elf}"
features="${FEATURES:-}"
[ "$scenario" = double_free ] && features="${features:-checks}"
qemu="${QEMU:-qemu-system-riscv32}"
command -v "$qemu" >/dev/null || {
    echo "run.sh: $qemu not found: install qemu-system-misc (make deps-riscv)" >&2
    exit 1
}

# The board is its own workspace with its own target and flags (.cargo/config.toml).
env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_TARGET -u CARGO_TARGET_DIR \
    "${CARGO:-cargo}" build --release --target "$target" --bin "$scenario" ${features:+--features "$features"}

echo "run.sh: $qemu -M virt -smp 4 -m 64M${QEMU_EXTRA_ARGS:+ $QEMU_EXTRA_ARGS}, $target, scenario $scenario" >&2
set +e
timeout --foreground "${TIMEOUT:-120}" "$qemu" \
    -M virt -smp 4 -m 64M -bios none -nographic -monitor none \
    ${QEMU_EXTRA_ARGS:-} \
    -kernel "target/$target/release/$scenario" </dev/null
status=$?
set -e
case $status in
    0) echo "run.sh: scenario $scenario passed (QEMU exit status 0)" >&2; exit 0 ;;
    124) echo "run.sh: scenario $scenario timed out after ${TIMEOUT:-120} s (QEMU killed)" >&2 ;;
    *) echo "run.sh: scenario $scenario FAILED (QEMU exit status $status)" >&2 ;;
esac
exit 1
