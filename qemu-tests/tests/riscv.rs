//! Boots the riscv-qemu firmware (QEMU's riscv32 virt machine, four harts,
//! tieralloc over a 4 MiB region with one per-CPU cache per hart) once per
//! scenario and checks the UART log and QEMU's exit status (0 = the firmware
//! says pass through the SiFive test device, 1 = fail). The boot, stress and
//! oom scenarios also run built for riscv64gc-unknown-none-elf on
//! qemu-system-riscv64. See `src/lib.rs`, module `riscv`.

use qemu_tests::riscv::{boot, boot64, boot_with, check_qemu, FAIL, PASS};
use qemu_tests::Run;

fn clean(r: &Run) -> &Run {
    r.expect_no("CHECK FAILED")
        .expect_no("PANIC")
        .expect_no("TRAP")
}

/// All four harts allocate Box, Vec and String; the statistics table is printed.
#[test]
fn rv_boot_on_four_harts() {
    let r = boot("boot", 30);
    clean(r.expect_status(PASS))
        .expect_line("riscv: boot on virt (riscv32imac-unknown-none-elf), 4 harts, tieralloc heap of 4096 KiB")
        .expect_line("is_fine false")
        .expect_line("--- heap statistics (tieralloc) ---")
        .expect_line("heap_sys")
        .expect_line("cpus 4 (locked)")
        .expect_line("class    size      mallocs        frees       live")
        .expect_line("riscv: boot ok");
    for h in 0..4 {
        r.expect_line(&format!("boot: hart {h} up: Box 0x"));
    }
    assert!(
        r.log.trim_end().ends_with("riscv: boot ok"),
        "not the last line:\n{}",
        r.log
    );
}

/// The main workload: four harts churn at once and free each other's objects
/// through the mailbox; live objects and bytes go back to the start.
#[test]
fn rv_stress_four_harts_with_cross_hart_frees() {
    let r = boot("stress", 120);
    clean(r.expect_status(PASS))
        .expect_line("riscv: stress on virt (riscv32imac-unknown-none-elf), 4 harts")
        .expect_line("--- heap statistics (tieralloc) ---")
        .expect_line("--- per-hart summary ---")
        .expect_line("all contents intact")
        .expect_line("stress: live bytes 0 at the start, 0 at the end")
        .expect_line("riscv: stress ok");
    for h in 0..4 {
        let line = r
            .line(&format!("hart {h} (slot {h} of LockedSlots<4>): "))
            .unwrap_or_else(|| panic!("no summary for hart {h}; log:\n{}", r.log));
        let ops: u64 = line
            .split("): ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("cannot parse {line:?}"));
        assert!(ops > 0, "{line}");
        assert!(line.contains("remote frees"), "{line}");
    }
    let line = r.line("stress: 4 harts, ").unwrap();
    let remote: u64 = line
        .split("posted, ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {line:?}"));
    assert!(remote > 0, "no cross-hart frees: {line}");
}

/// Allocation until null (hart 0 alone, then all harts at once); the firmware
/// keeps running; after the frees as much fits again.
#[test]
fn rv_out_of_memory_returns_null_and_recovers() {
    let r = boot("oom", 60);
    clean(r.expect_status(PASS))
        .expect_line("before null")
        .expect_line("the firmware is still running")
        .expect_line("oom: second round of 64 KiB blocks:")
        .expect_line("oom: all 4 harts at once: ")
        .expect_line("riscv: oom ok");
}

/// A double free through `alloc::alloc::dealloc` panics with the address
/// (tieralloc's `checks`: the 4 MiB heap is tiered, so only `checks` catches
/// it) and QEMU exits with the failure status.
#[test]
fn rv_double_free_is_detected_under_checks() {
    let r = boot("double_free", 30);
    r.expect_status(FAIL)
        .expect_line("double_free: allocated 0x")
        .expect_line("PANIC (hart 0): ")
        .expect_no("NOT detected");
    let freed = r
        .line("freeing 0x")
        .and_then(|l| l.split("freeing ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .unwrap();
    r.expect_line(&format!("tieralloc: double free of {freed} "));
}

/// The number after `name ` in `line` (up to a comma, space or parenthesis).
fn number_after(line: &str, name: &str) -> f64 {
    line.split(&format!(" {name} "))
        .nth(1)
        .and_then(|s| s.split([',', ' ', '(']).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no number for {name} in {line:?}"))
}

/// The bench under `-icount shift=0` (as `make qemu-bench-riscv` runs it):
/// tieralloc, llff, tlsf and talc on 1, 2 and 4 harts; a rate for every heap
/// and hart count, and the 4-hart/1-hart ratios (no speed asserts).
#[test]
fn rv_bench() {
    let r = boot_with("bench", &["-icount", "shift=0"], 180);
    clean(r.expect_status(PASS))
        .expect_line("riscv: bench on virt (riscv32imac-unknown-none-elf), 4 harts")
        .expect_line("| heap | 1 hart | 2 harts | 4 harts | 4 harts / 1 hart |")
        .expect_line("riscv: bench ok");
    for k in ["1 hart:", "2 harts:", "4 harts:"] {
        let line = r
            .line(&format!("bench: churn 8..=256 B, 64 live per hart, {k} "))
            .unwrap_or_else(|| panic!("no bench line for {k}; log:\n{}", r.log));
        for h in ["tieralloc", "llff", "tlsf", "talc"] {
            let v = number_after(line, h);
            assert!(v > 0.0, "{h} reports {v} in {line:?}");
        }
        assert!(line.ends_with(')'), "no unit in {line:?}");
    }
    let line = r.line("bench: scaling 4 harts / 1 hart: ").unwrap();
    for h in ["tieralloc", "llff", "tlsf", "talc"] {
        let v = number_after(line, h);
        assert!(v > 0.0, "{h} ratio {v} in {line:?}");
        r.expect_line(&format!("| {h} | "));
    }
}

/// The same firmware built for RV64GC boots on qemu-system-riscv64 -M virt.
#[test]
fn rv64_firmware_runs() {
    for (scenario, timeout) in [("boot", 30), ("stress", 120), ("oom", 60)] {
        let r = boot64(scenario, timeout);
        clean(r.expect_status(PASS))
            .expect_line(&format!(
                "riscv: {scenario} on virt (riscv64gc-unknown-none-elf), 4 harts"
            ))
            .expect_line("is_fine false")
            .expect_line(&format!("riscv: {scenario} ok"));
    }
}

/// The runner fails loudly (never skips) without qemu-system-riscv32 or the target.
#[test]
fn rv_missing_qemu_or_target_is_an_error() {
    let e = check_qemu("/nonexistent/qemu-system-riscv32").unwrap_err();
    assert!(
        e.contains("apt-get install qemu-system-misc") && e.contains("make deps"),
        "{e}"
    );
    let e = qemu_tests::check_rust_target(
        "riscv99zz-unknown-none-elf",
        &qemu_tests::riscv::board_dir(),
    )
    .unwrap_err();
    assert!(
        e.contains("rustup target add riscv99zz-unknown-none-elf"),
        "{e}"
    );
}
