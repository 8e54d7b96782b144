//! Boots the cortex-m-qemu firmware (QEMU's lm3s6965evb, Cortex-M3 with
//! 64 KiB of SRAM, tieralloc over a 32 KiB region) once per scenario and checks
//! the semihosting console and QEMU's exit status (0 = the firmware says pass,
//! 1 = fail). The boot, churn, oom and irq scenarios also run built for
//! thumbv6m-none-eabi (Cortex-M0: atomics through portable-atomic and
//! critical-section). See `src/lib.rs`, module `cortex_m`.

use qemu_tests::cortex_m::{boot, check_qemu, FAIL, PASS, V6M, V7M};
use qemu_tests::Run;

fn clean(r: &Run) -> &Run {
    r.expect_no("CHECK FAILED")
        .expect_no("PANIC")
        .expect_no("HARD FAULT")
}

/// Box, Vec and String on the heap; the statistics table is printed.
#[test]
fn cm_boot_and_basic_heap() {
    let r = boot(V7M, "boot", 30);
    clean(r.expect_status(PASS))
        .expect_line("cortex-m: boot on lm3s6965evb (thumbv7m-none-eabi), tieralloc heap of 32 KiB")
        .expect_line("boot: Box 0x")
        .expect_line("--- heap statistics (tieralloc) ---")
        .expect_line("heap_sys")
        .expect_line("class    size      mallocs        frees       live")
        .expect_line("cortex-m: boot ok");
}

/// Long- and short-lived objects of 8..=256 B, contents checked at every free.
#[test]
fn cm_churn_long_and_short_lived() {
    let r = boot(V7M, "churn", 60);
    clean(r.expect_status(PASS))
        .expect_line("churn: 100000 ops")
        .expect_line("all contents intact")
        .expect_line("cortex-m: churn ok");
}

/// Allocation until null; the firmware keeps running; after the frees as much fits again.
#[test]
fn cm_out_of_memory_returns_null_and_recovers() {
    let r = boot(V7M, "oom", 30);
    clean(r.expect_status(PASS))
        .expect_line("before null")
        .expect_line("the firmware is still running")
        .expect_line("oom: second round of 64 B blocks:")
        .expect_line("cortex-m: oom ok");
}

/// The SysTick handler allocates, checks and frees while the main loop churns.
#[test]
fn cm_systick_handler_allocates_while_main_churns() {
    let r = boot(V7M, "irq", 60);
    clean(r.expect_status(PASS))
        .expect_line("all contents intact")
        .expect_line("--- heap statistics (tieralloc) ---")
        .expect_line("--- per-CPU summary ---")
        .expect_line("cortex-m: irq ok");
    let line = r.line("SysTick handler ").unwrap();
    let runs: u64 = line
        .split("SysTick handler ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {line:?}"));
    assert!(runs >= 2000, "too few SysTick runs: {line}");
}

/// The bench: tieralloc, llff, tlsf and talc in turn over one 32 KiB region;
/// one line per workload with a number for every heap (no speed asserts).
#[test]
fn cm_bench() {
    let r = boot(V7M, "bench", 120);
    clean(r.expect_status(PASS))
        .expect_line("cortex-m: bench on lm3s6965evb (thumbv7m-none-eabi)")
        .expect_line("cortex-m: bench ok");
    for w in ["churn", "lifo", "fifo", "grow", "efficiency"] {
        let line = r
            .line(&format!("bench: {w} "))
            .unwrap_or_else(|| panic!("no bench line for {w}; log:\n{}", r.log));
        for h in ["tieralloc ", "llff ", "tlsf ", "talc "] {
            let v: f64 = line
                .split(&format!(" {h}"))
                .nth(1)
                .and_then(|s| s.split([',', ' ']).next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no number for {h}in {line:?}"));
            assert!(v > 0.0, "{h}reports {v} in {line:?}");
        }
        assert!(line.ends_with(')'), "no unit in {line:?}");
    }
    // Heap efficiency is a percentage of the region.
    let eff = r.line("bench: efficiency").unwrap();
    assert!(eff.contains("(% of the region live)"), "{eff}");
}

/// A double free panics with the address and QEMU exits with the failure
/// status (the 32 KiB heap is a fine heap, which catches it with or without
/// `checks`; the scenario is built with `checks`, as the issue asks).
#[test]
fn cm_double_free_is_detected_under_checks() {
    let r = boot(V7M, "double_free", 30);
    r.expect_status(FAIL)
        .expect_line("double_free: allocated 0x")
        .expect_line("PANIC: ")
        .expect_line("tieralloc: free of 0x")
        .expect_no("NOT detected");
    // The reported address is the one freed twice.
    let freed = r
        .line("freeing 0x")
        .and_then(|l| l.split("freeing ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .unwrap();
    r.expect_line(&format!("tieralloc: free of {freed}: double free"));
}

/// The same firmware built for Cortex-M0 (thumbv6m) boots on the same machine.
#[test]
fn cm_thumbv6m_firmware_runs() {
    for (scenario, timeout) in [("boot", 30), ("churn", 60), ("oom", 30), ("irq", 60)] {
        let r = boot(V6M, scenario, timeout);
        clean(r.expect_status(PASS))
            .expect_line(&format!(
                "cortex-m: {scenario} on lm3s6965evb (thumbv6m-none-eabi)"
            ))
            .expect_line(&format!("cortex-m: {scenario} ok"));
    }
}

/// The runner fails loudly (never skips) without qemu-system-arm or a target.
#[test]
fn cm_missing_qemu_or_target_is_an_error() {
    let e = check_qemu("/nonexistent/qemu-system-arm").unwrap_err();
    assert!(
        e.contains("apt-get install qemu-system-arm") && e.contains("make deps"),
        "{e}"
    );
    let e = qemu_tests::check_rust_target("thumbv9z-none-eabi", &qemu_tests::cortex_m::board_dir())
        .unwrap_err();
    assert!(e.contains("rustup target add thumbv9z-none-eabi"), "{e}");
}
