//! Boots the riscv-qemu firmware (QEMU's riscv32 virt machine, four harts,
//! tieralloc over a 4 MiB region with one per-CPU cache per hart) once per
//! scenario and checks the UART log and QEMU's exit status (0 = the firmware
//! says pass through the SiFive test device, 1 = fail). See `src/lib.rs`,
//! module `riscv`.

use qemu_tests::riscv::{boot, check_qemu, PASS};
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
