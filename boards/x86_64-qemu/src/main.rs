//! A PVH-booted x86_64 kernel for QEMU whose heap is tieralloc over page frames.
//!
//! Boot path: `boot.rs` (PVH note, 32 → 64-bit trampoline) → [`kmain`]: serial,
//! start info, GDT/TSS/IDT and GS base for CPU 0, TSC calibration, frame
//! allocator, heap, local APIC, the other CPUs (`smp.rs`), then the scenario
//! named on the command line (`-append "scenario=NAME"`, default `main`).
//! Every scenario ends QEMU through isa-debug-exit: status 33 = pass, 35 = fail.

#![no_std]
#![no_main]
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

extern crate alloc;

pub mod boot;
pub mod interrupts;
pub mod kheap;
pub mod memory;
pub mod percpu;
pub mod scenarios;
pub mod serial;
pub mod smp;
pub mod time;

use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

use serial::exit;

/// Boot facts for the scenarios.
pub struct Machine {
    pub info: boot::BootInfo,
    /// CPUs found in the MADT / started.
    pub cpus_found: usize,
    pub cpus_online: usize,
    pub ram_frames: usize,
}

static PANICKING: AtomicBool = AtomicBool::new(false);

#[unsafe(no_mangle)]
extern "C" fn kmain(start_info: u32) -> ! {
    // Before anything touches low memory: copy the start info out.
    // SAFETY: EBX from the PVH loader.
    let info = unsafe { boot::parse_start_info(start_info as u64) };
    interrupts::init_idt();
    // SAFETY: first thing on the BSP, interrupts off.
    unsafe { percpu::init_this_cpu(0, smp::lapic_id()) };
    let (_, boot_hi) = boot::boot_stack_range();
    let (boot_lo, _) = boot::boot_stack_range();
    percpu::set_stack(0, boot_lo, boot_lo, boot_hi);
    serial::init();
    let info = match info {
        Ok(i) => i,
        Err(e) => {
            println!("boot: {e}");
            exit::failure();
        }
    };
    let (kstart, kend) = boot::kernel_range();
    println!(
        "tieralloc x86_64-qemu kernel: PVH boot, cmdline \"{}\", image {:#x}..{:#x}",
        info.cmdline(),
        kstart,
        kend
    );
    smp::mask_pic();
    time::calibrate();
    memory::init_frames(&info);
    let ram: u64 = info
        .memmap()
        .iter()
        .filter(|e| e.kind == 1)
        .map(|e| e.size)
        .sum();
    println!(
        "memory: {} MiB usable in {} map entries; frame allocator: {} frames ({} MiB) free; TSC {} MHz",
        ram >> 20,
        info.memmap().len(),
        memory::free_frames(),
        memory::free_frames() >> 8,
        time::tsc_hz() / 1_000_000
    );
    let mut ids = [0u32; percpu::MAX_CPUS];
    let found = smp::find_cpus(info.rsdp, &mut ids);
    percpu::set_cpu_count(found);
    smp::lapic_enable();
    smp::bsp_online();
    // SAFETY: once, before the first allocation.
    unsafe { kheap::init() };
    println!(
        "heap: {} is the global allocator; tieralloc window {:#x} (+{} GiB), {} per-CPU slots",
        kheap::GLOBAL_HEAP_NAME,
        kheap::HEAP_WINDOW,
        kheap::HEAP_WINDOW_LEN >> 30,
        found
    );
    // The BSP runs with interrupts off throughout (see `smp::idle_loop`).
    smp::start_aps(&ids[..found]);
    println!(
        "smp: {} of {} CPUs online (APIC ids {:?})",
        smp::online(),
        found,
        &ids[..found]
    );
    let m = Machine {
        info,
        cpus_found: found,
        cpus_online: smp::online(),
        ram_frames: memory::total_frames(),
    };
    let name = m.info.arg("scenario").unwrap_or("main");
    println!("scenario {name}: start");
    let w = time::Watch::start();
    let ok = scenarios::run(name, &m);
    if ok {
        println!("scenario {name}: PASS in {}", w.secs_f());
        exit::success();
    } else {
        println!("scenario {name}: FAIL in {}", w.secs_f());
        exit::failure();
    }
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    x86_64::instructions::interrupts::disable();
    let cpu = percpu::current();
    if PANICKING.swap(true, Ordering::SeqCst) {
        // A second panic (another CPU, or inside the report): just stop.
        serial::print_force(format_args!("\nPANIC (again) on CPU {cpu}: {info}\n"));
        exit::failure();
    }
    serial::print_force(format_args!("\nPANIC on CPU {cpu}: {info}\n"));
    exit::failure()
}
