# tieralloc: build, test and benchmark entry points (CI runs `make test` via .ci/run).
#
#   make deps    install everything `make test` needs (Debian 12, as root); make deps-run: what `make run` needs;
#                make deps-cortex-m: what `make run-cortex-m` needs; make deps-riscv: what `make run-riscv` needs
#   make run     boot the x86_64 kernel under QEMU (boards/x86_64-qemu): -smp 4 -m 512M, heap statistics
#   make run-cortex-m  boot the Cortex-M firmware under QEMU's lm3s6965evb (boards/cortex-m-qemu): the main loop
#                churns while the SysTick handler allocates, then the heap statistics
#   make qemu-bench-cortex-m  the firmware's scenario bench: tieralloc against embedded-alloc llff/tlsf and talc over
#                one 32 KiB region, SysTick ticks per operation, heap efficiency (ICOUNT=1: QEMU -icount shift=0)
#   make run-riscv  boot the RISC-V firmware under qemu-system-riscv32 -M virt -smp 4 (boards/riscv-qemu): four harts
#                churn and free each other's objects, then the heap statistics and the per-hart summary
#   make qemu-bench-riscv  the RISC-V firmware's scenario bench: tieralloc against embedded-alloc llff/tlsf and talc
#                on 1, 2 and 4 harts at once, operations per mtime tick and the 4-hart/1-hart ratio (-icount shift=0)
#   make test    every test: formatting, clippy, docs and packaging, the crate (with and without checks), the no_std builds for every
#                embedded target, the crate's tests on a 32-bit host (make test-32), the bench crate, a bench smoke run, and the QEMU
#                scenarios of the kernel, of the Cortex-M firmware and of the RISC-V firmware (qemu-tests)
#   make demo    the hosted demo (examples/demo.rs: LinuxHeap as a program's global allocator)
#   make bench   the allocator comparison (benches/); make bench-callgrind: instructions per pair;
#                make bench-efficiency: heap efficiency over small regions against the embedded heaps
#                make bench-code-size: flash and static RAM of a minimal firmware per heap
#   make compare real programs under LD_PRELOAD with each allocator (preload/compare.sh);
#                make compare-rss: the resident set they end at (preload/rss.sh; needs nodejs too)
#                make bench-c: the C benchmark shapes (larson, xmalloc, ...) under each allocator (preload/cbench.sh)
#   make qemu-X  boot the kernel with scenario X (boot, main, many_boxes, stress, oom, scavenge, guard, bench)

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

CARGO ?= cargo
NOSTD_TARGET := x86_64-unknown-none
# The other no_std targets the crate builds for (make test checks each, with and
# without `checks`): Cortex-M0/M0+ (no compare-and-swap), Cortex-M4F, RV32IMAC,
# AArch64 and RV64GC.
EMBEDDED_TARGETS := thumbv6m-none-eabi thumbv7em-none-eabihf riscv32imac-unknown-none-elf \
	aarch64-unknown-none riscv64gc-unknown-none-elf
# A 32-bit host, to run the crate's own tests with 32-bit pointers.
HOST32_TARGET := i686-unknown-linux-gnu

BOARD := boards/x86_64-qemu
# The Cortex-M firmware (QEMU lm3s6965evb): Cortex-M3, and the same firmware for Cortex-M0.
CM_BOARD := boards/cortex-m-qemu
CM_TARGETS := thumbv7m-none-eabi thumbv6m-none-eabi
# The RISC-V firmware (QEMU riscv32 virt, four harts; the same firmware for
# riscv64gc-unknown-none-elf, one of EMBEDDED_TARGETS, boots on qemu-system-riscv64).
RV_BOARD := boards/riscv-qemu
RV_TARGET := riscv32imac-unknown-none-elf

.PHONY: deps deps-run deps-cortex-m deps-riscv test test-32 run run-cortex-m qemu-bench-cortex-m run-riscv qemu-bench-riscv demo bench bench-callgrind bench-efficiency bench-code-size compare compare-rss bench-c-pair bench-c

# What `make run` needs: the kernel's Rust target and QEMU.
deps-run:
	@command -v rustup >/dev/null || { echo "make deps: rustup not found on PATH" >&2; exit 1; }
	@if ! rustup target list --installed | grep -qx '$(NOSTD_TARGET)'; then \
		echo "make deps: rustup target add $(NOSTD_TARGET)"; \
		rustup target add $(NOSTD_TARGET) || { echo "make deps: FAILED to add target $(NOSTD_TARGET)" >&2; exit 1; }; \
	fi
	@if ! command -v qemu-system-x86_64 >/dev/null; then \
		echo "make deps: installing qemu-system-x86"; \
		export DEBIAN_FRONTEND=noninteractive; \
		{ apt-get update && apt-get install -y --no-install-recommends qemu-system-x86; } \
			|| { echo "make deps: FAILED to install qemu-system-x86" >&2; exit 1; }; \
		command -v qemu-system-x86_64 >/dev/null || { echo "make deps: qemu-system-x86_64 still not on PATH" >&2; exit 1; }; \
	fi

# What `make run-cortex-m` needs: the firmware's Rust targets and qemu-system-arm.
deps-cortex-m:
	@command -v rustup >/dev/null || { echo "make deps: rustup not found on PATH" >&2; exit 1; }
	@for t in $(CM_TARGETS); do \
		rustup target list --installed | grep -qx "$$t" && continue; \
		echo "make deps: rustup target add $$t"; \
		rustup target add "$$t" || { echo "make deps: FAILED to add target $$t" >&2; exit 1; }; \
	done
	@if ! command -v qemu-system-arm >/dev/null; then \
		echo "make deps: installing qemu-system-arm"; \
		export DEBIAN_FRONTEND=noninteractive; \
		{ apt-get update && apt-get install -y --no-install-recommends qemu-system-arm; } \
			|| { echo "make deps: FAILED to install qemu-system-arm" >&2; exit 1; }; \
		command -v qemu-system-arm >/dev/null || { echo "make deps: qemu-system-arm still not on PATH" >&2; exit 1; }; \
	fi

# What `make run-riscv` needs: the firmware's Rust target and qemu-system-riscv32.
deps-riscv:
	@command -v rustup >/dev/null || { echo "make deps: rustup not found on PATH" >&2; exit 1; }
	@if ! rustup target list --installed | grep -qx '$(RV_TARGET)'; then \
		echo "make deps: rustup target add $(RV_TARGET)"; \
		rustup target add $(RV_TARGET) || { echo "make deps: FAILED to add target $(RV_TARGET)" >&2; exit 1; }; \
	fi
	@if ! command -v qemu-system-riscv32 >/dev/null; then \
		echo "make deps: installing qemu-system-misc"; \
		export DEBIAN_FRONTEND=noninteractive; \
		{ apt-get update && apt-get install -y --no-install-recommends qemu-system-misc; } \
			|| { echo "make deps: FAILED to install qemu-system-misc" >&2; exit 1; }; \
		command -v qemu-system-riscv32 >/dev/null || { echo "make deps: qemu-system-riscv32 still not on PATH" >&2; exit 1; }; \
	fi

# What `make test` needs besides: rustfmt and clippy, the embedded and 32-bit
# targets (and a 32-bit libc to link against), the Cortex-M and RISC-V
# firmwares' targets and QEMUs, and the real programs of the LD_PRELOAD tests.
deps: deps-run deps-cortex-m deps-riscv
	@for t in $(EMBEDDED_TARGETS) $(HOST32_TARGET); do \
		rustup target list --installed | grep -qx "$$t" && continue; \
		echo "make deps: rustup target add $$t"; \
		rustup target add "$$t" || { echo "make deps: FAILED to add target $$t" >&2; exit 1; }; \
	done
	@if ! $(CARGO) fmt --version >/dev/null 2>&1; then \
		echo "make deps: rustup component add rustfmt"; \
		rustup component add rustfmt || { echo "make deps: FAILED to add rustfmt" >&2; exit 1; }; \
	fi
	@if ! $(CARGO) clippy --version >/dev/null 2>&1; then \
		echo "make deps: rustup component add clippy"; \
		rustup component add clippy || { echo "make deps: FAILED to add clippy" >&2; exit 1; }; \
	fi
	@missing=""; for p in $(PRELOAD_PKGS); do dpkg -s "$$p" >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "make deps: installing$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		{ apt-get update && apt-get install -y --no-install-recommends $$missing; } \
			|| { echo "make deps: FAILED to install$$missing" >&2; exit 1; }; \
	fi

# Real programs for the LD_PRELOAD tests and the comparison (preload/).
PRELOAD_PKGS := gcc python3.11 libpython3.11-testsuite sqlite3 libjemalloc2 libmimalloc2.0 libtcmalloc-minimal4 time \
	gcc-multilib

# The crate and the board also deny unsafe blocks without a `// SAFETY:` line and
# unsafe fns without `# Safety` (their own `#![warn(...)]`, made errors here).

test: deps
	$(CARGO) fmt --all -- --check
	cd $(BOARD) && $(CARGO) fmt --all -- --check
	cd $(CM_BOARD) && $(CARGO) fmt --all -- --check
	cd $(RV_BOARD) && $(CARGO) fmt --all -- --check
	cd benches/firmware && $(CARGO) fmt --all -- --check
	$(CARGO) clippy --features linux --all-targets -- -D warnings
	$(CARGO) clippy --features linux,checks,critical-section --all-targets -- -D warnings
	$(CARGO) clippy --features linux,hardened --all-targets -- -D warnings
	$(CARGO) clippy --no-default-features --features x86_64 --target $(NOSTD_TARGET) --lib -- -D warnings
	$(CARGO) clippy -p tieralloc-preload -p tieralloc-bench -p qemu-tests --all-targets -- -D warnings
	cd $(BOARD) && $(CARGO) clippy --release -- -D warnings
	cd $(CM_BOARD) && $(CARGO) clippy --release --features checks -- -D warnings
	cd $(CM_BOARD) && $(CARGO) clippy --release --target thumbv6m-none-eabi -- -D warnings
	cd $(RV_BOARD) && $(CARGO) clippy --release -- -D warnings
	cd $(RV_BOARD) && $(CARGO) clippy --release --features checks -- -D warnings
	cd $(RV_BOARD) && $(CARGO) clippy --release --target riscv64gc-unknown-none-elf -- -D warnings
	cd benches/firmware && $(CARGO) clippy --release -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps -p tieralloc
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps -p tieralloc --features linux,x86_64,critical-section
	$(CARGO) doc --workspace --no-deps
	$(CARGO) publish --dry-run -p tieralloc --allow-dirty
	$(CARGO) test --features linux,checks,critical-section
	$(CARGO) test --release --features linux
	$(CARGO) test --release --features linux,hardened --lib --test hardened --test c_fast
	$(CARGO) build --no-default-features --target $(NOSTD_TARGET) --lib
	$(CARGO) build --no-default-features --features x86_64 --target $(NOSTD_TARGET) --lib
	for t in $(EMBEDDED_TARGETS); do \
		$(CARGO) clippy --target "$$t" --lib -- -D warnings; \
		$(CARGO) clippy --target "$$t" --lib --features checks,critical-section -- -D warnings; \
		$(CARGO) build --release --target "$$t" --lib; \
	done
	$(MAKE) test-32
	$(CARGO) test -p tieralloc-bench
	$(CARGO) run --release -p tieralloc-bench -- --quick
	$(CARGO) run --release -p tieralloc-bench -- --efficiency --quick
	$(CARGO) run --release -p tieralloc-bench -- --code-size --quick
	$(CARGO) test -p qemu-tests
	$(CARGO) test --release -p tieralloc-preload

# The crate's tests on a 32-bit host (the pointer-width parts: page map, cache
# words, tiny state). The page-heap tests each reserve up to hundreds of MiB
# that no heap unmaps, more than a 32-bit address space holds over a whole
# file, so each of them runs in a process of its own.
test-32:
	$(CARGO) test --target $(HOST32_TARGET) --features linux --lib \
		$(patsubst tests/%.rs,--test %,$(filter-out tests/pageheap.rs tests/hardened.rs,$(wildcard tests/*.rs)))
	for t in $$($(CARGO) test -q --target $(HOST32_TARGET) --features linux --test pageheap -- --list --format terse | sed -n 's/: test$$//p'); do \
		$(CARGO) test -q --target $(HOST32_TARGET) --features linux --test pageheap -- --exact "$$t"; \
	done

run: deps-run
	$(BOARD)/run.sh

# The Cortex-M firmware's main workload (scenario irq); other scenarios:
# boards/cortex-m-qemu/run.sh boot|churn|oom|double_free (TARGET=thumbv6m-none-eabi for Cortex-M0).
run-cortex-m: deps-cortex-m
	$(CM_BOARD)/run.sh irq

# Scenario bench of the Cortex-M firmware: tieralloc against embedded-alloc's
# LlffHeap and TlsfHeap and talc over one 32 KiB region, SysTick cycles per
# operation and heap efficiency. ICOUNT=1 passes `-icount shift=0` to QEMU
# (guest time from the instruction count: repeatable numbers).
qemu-bench-cortex-m: deps-cortex-m
	$(if $(filter 1,$(ICOUNT)),QEMU_EXTRA_ARGS="-icount shift=0") $(CM_BOARD)/run.sh bench

# The RISC-V firmware's main workload (scenario stress); other scenarios:
# boards/riscv-qemu/run.sh boot|oom|double_free|bench (TARGET=riscv64gc-unknown-none-elf
# QEMU=qemu-system-riscv64 for RV64GC).
run-riscv: deps-riscv
	$(RV_BOARD)/run.sh stress

# Scenario bench of the RISC-V firmware: tieralloc against embedded-alloc's
# LlffHeap and TlsfHeap and talc, each over its own 4 MiB region, on 1, 2 and
# 4 harts at once. Always under `-icount shift=0`: QEMU runs the harts in
# turn and guest time counts their instructions, so a hart that spins on a
# lock burns guest time as it would burn a core's.
qemu-bench-riscv: deps-riscv
	QEMU_EXTRA_ARGS="-icount shift=0" $(RV_BOARD)/run.sh bench

demo:
	$(CARGO) run --release --features linux --example demo

qemu-%: deps-run
	$(BOARD)/run.sh $*

# The full allocator comparison (about 4 minutes; writes benches/results/bench.md and bench.svg).
bench:
	$(CARGO) run --release -p tieralloc-bench

# Heap efficiency and churn over small regions against the embedded heaps (writes
# benches/results/efficiency.md; about a minute).
bench-efficiency:
	$(CARGO) run --release -p tieralloc-bench -- --efficiency

# Flash (code, tables) and static RAM of a minimal Cortex-M4F firmware per heap
# (builds benches/firmware for thumbv7em-none-eabihf; writes benches/results/code-size.md).
bench-code-size:
	$(CARGO) run --release -p tieralloc-bench -- --code-size

# Instructions per alloc+free pair under valgrind (writes benches/results/callgrind.md).
bench-callgrind:
	@command -v valgrind >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get update && apt-get install -y --no-install-recommends valgrind binutils; }
	$(CARGO) run --release -p tieralloc-bench -- --callgrind

# Wall time and peak RSS of real programs under glibc, jemalloc, mimalloc, tcmalloc and tieralloc.
compare: deps
	preload/compare.sh

compare-rss: deps
	@command -v node >/dev/null || { echo "make compare-rss: node not found: apt-get install -y nodejs" >&2; exit 1; }
	preload/rss.sh

# What the C library's double-free detection costs: malloc/free pairs under
# libtieralloc.so with and without `hardened`, and glibc (about 2 minutes).
bench-c-pair: deps
	preload/pair.sh

# The C benchmark shapes of preload/bench/ (simple, larson with and without
# free_sized, paretoalloc, rptest, xmalloc) under glibc, jemalloc, mimalloc,
# tcmalloc and tieralloc: median wall time and peak RSS of 5 runs (about 2.5 minutes).
bench-c: deps
	preload/cbench.sh
