# tieralloc: build, test and benchmark entry points (CI runs `make test` via .ci/run).
#
#   make deps    install the toolchain target and system packages (Debian 12, as root)
#   make run     boot the x86_64 kernel under QEMU (boards/x86_64-qemu): -smp 4 -m 512M, heap statistics
#   make test    every test: formatting (rustfmt), the crate (with and without checks), the no_std builds, the bench crate,
#                a bench smoke run, and the QEMU scenarios of the kernel (qemu-tests)
#   make demo    the hosted demo (examples/demo.rs: LinuxHeap as a program's global allocator)
#   make bench   the allocator comparison (benches/); make bench-callgrind: instructions per pair
#   make compare real programs under LD_PRELOAD with each allocator (preload/compare.sh)
#   make qemu-X  boot the kernel with scenario X (boot, main, many_boxes, stress, oom, scavenge, guard, bench)
#   make bench   the full allocator comparison (benches/, a minute or so)

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

CARGO ?= cargo
NOSTD_TARGET := x86_64-unknown-none

BOARD := boards/x86_64-qemu

.PHONY: deps test run demo bench bench-callgrind compare

deps:
	@command -v rustup >/dev/null || { echo "make deps: rustup not found on PATH" >&2; exit 1; }
	@if ! rustup target list --installed | grep -qx '$(NOSTD_TARGET)'; then \
		echo "make deps: rustup target add $(NOSTD_TARGET)"; \
		rustup target add $(NOSTD_TARGET) || { echo "make deps: FAILED to add target $(NOSTD_TARGET)" >&2; exit 1; }; \
	fi
	@if ! $(CARGO) fmt --version >/dev/null 2>&1; then \
		echo "make deps: rustup component add rustfmt"; \
		rustup component add rustfmt || { echo "make deps: FAILED to add rustfmt" >&2; exit 1; }; \
	fi
	@if ! command -v qemu-system-x86_64 >/dev/null; then \
		echo "make deps: installing qemu-system-x86"; \
		export DEBIAN_FRONTEND=noninteractive; \
		{ apt-get update && apt-get install -y --no-install-recommends qemu-system-x86; } \
			|| { echo "make deps: FAILED to install qemu-system-x86" >&2; exit 1; }; \
		command -v qemu-system-x86_64 >/dev/null || { echo "make deps: qemu-system-x86_64 still not on PATH" >&2; exit 1; }; \
	fi
	@missing=""; for p in $(PRELOAD_PKGS); do dpkg -s "$$p" >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "make deps: installing$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		{ apt-get update && apt-get install -y --no-install-recommends $$missing; } \
			|| { echo "make deps: FAILED to install$$missing" >&2; exit 1; }; \
	fi

# Real programs for the LD_PRELOAD tests and the comparison (preload/).
PRELOAD_PKGS := gcc python3.11 libpython3.11-testsuite sqlite3 libjemalloc2 libmimalloc2.0 libtcmalloc-minimal4 time

test: deps
	$(CARGO) fmt --all -- --check
	cd $(BOARD) && $(CARGO) fmt --all -- --check
	$(CARGO) test --features linux,checks
	$(CARGO) test --release --features linux
	$(CARGO) build --no-default-features --target $(NOSTD_TARGET) --lib
	$(CARGO) build --no-default-features --features x86_64 --target $(NOSTD_TARGET) --lib
	$(CARGO) test -p tieralloc-bench
	$(CARGO) run --release -p tieralloc-bench -- --quick
	$(CARGO) test -p qemu-tests
	$(CARGO) test --release -p tieralloc-preload

run: deps
	$(BOARD)/run.sh

demo:
	$(CARGO) run --release --features linux --example demo

qemu-%: deps
	$(BOARD)/run.sh $*

# The full allocator comparison (about 4 minutes; writes benches/results/bench.md and bench.svg).
bench:
	$(CARGO) run --release -p tieralloc-bench

# Instructions per alloc+free pair under valgrind (writes benches/results/callgrind.md).
bench-callgrind:
	@command -v valgrind >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get update && apt-get install -y --no-install-recommends valgrind binutils; }
	$(CARGO) run --release -p tieralloc-bench -- --callgrind

# Wall time and peak RSS of real programs under glibc, jemalloc, mimalloc, tcmalloc and tieralloc.
compare: deps
	preload/compare.sh
