#!/usr/bin/env bash
# Builds the cortex-m-qemu firmware and boots one scenario under QEMU's
# lm3s6965evb (what `make run-cortex-m` does, with scenario irq).
#
#   boards/cortex-m-qemu/run.sh [SCENARIO]
#
# SCENARIO: boot, churn, oom, irq (the default: the main loop churns while the
# SysTick handler allocates; heap statistics and the per-CPU summary at the
# end), double_free (built with FEATURES=checks; it must fail), bench
# (tieralloc against embedded-alloc's llff and tlsf and talc, SysTick cycles).
#
# Environment: TARGET (thumbv7m-none-eabi; thumbv6m-none-eabi builds the
# Cortex-M0 firmware, which runs on the same machine), FEATURES (checks),
# QEMU (qemu-system-arm), TIMEOUT (seconds, 60), QEMU_EXTRA_ARGS (more QEMU
# arguments, split at spaces, e.g. "-icount shift=0": one instruction per ns
# of guest time, deterministic SysTick readings).
# Semihosting carries the console (QEMU's stdout) and the exit status:
# 0 when the firmware reports success, 1 otherwise.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

scenario="${1:-irq}"
target="${TARGET:-thumbv7m-none-eabi}"
features="${FEATURES:-}"
[ "$scenario" = double_free ] && features="${features:-checks}"
qemu="${QEMU:-qemu-system-arm}"
command -v "$qemu" >/dev/null || {
    echo "run.sh: $qemu not found: install qemu-system-arm (make deps-run)" >&2
    exit 1
}

# The board is its own workspace with its own targets and flags (.cargo/config.toml).
env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_TARGET -u CARGO_TARGET_DIR \
    "${CARGO:-cargo}" build --release --target "$target" --bin "$scenario" ${features:+--features "$features"}

echo "run.sh: qemu-system-arm -M lm3s6965evb${QEMU_EXTRA_ARGS:+ $QEMU_EXTRA_ARGS}, $target, scenario $scenario" >&2
set +e
timeout --foreground "${TIMEOUT:-60}" "$qemu" \
    -M lm3s6965evb -nographic -monitor none -serial none \
    -semihosting-config enable=on,target=native \
    ${QEMU_EXTRA_ARGS:-} \
    -kernel "target/$target/release/$scenario" </dev/null
status=$?
set -e
case $status in
    0) echo "run.sh: scenario $scenario passed (QEMU exit status 0)" >&2; exit 0 ;;
    124) echo "run.sh: scenario $scenario timed out after ${TIMEOUT:-60} s (QEMU killed)" >&2 ;;
    *) echo "run.sh: scenario $scenario FAILED (QEMU exit status $status)" >&2 ;;
esac
exit 1
