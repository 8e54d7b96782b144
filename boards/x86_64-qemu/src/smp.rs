//! SMP: the local APIC, the CPU list from the ACPI MADT, AP start-up
//! (INIT-SIPI-SIPI into a real-mode trampoline at 0x8000 that goes 16 → 32 →
//! 64-bit), work dispatch to all CPUs, and cross-CPU TLB shootdown.

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use spin::Mutex;

use crate::interrupts::{VEC_SPURIOUS, VEC_WAKE};
use crate::memory::phys_to_virt;
use crate::percpu::{self, MAX_CPUS, PERCPU};
use crate::{println, time};

// ------------------------------------------------------------------ LAPIC

const LAPIC_BASE: u64 = 0xFEE0_0000;
const REG_ID: u64 = 0x20;
const REG_TPR: u64 = 0x80;
const REG_EOI: u64 = 0xB0;
const REG_SVR: u64 = 0xF0;
const REG_ICR_LO: u64 = 0x300;
const REG_ICR_HI: u64 = 0x310;

fn lapic_read(reg: u64) -> u32 {
    // SAFETY: the LAPIC page is identity-mapped (first 4 GiB).
    unsafe { core::ptr::read_volatile((LAPIC_BASE + reg) as *const u32) }
}

fn lapic_write(reg: u64, v: u32) {
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile((LAPIC_BASE + reg) as *mut u32, v) }
}

pub fn lapic_id() -> u32 {
    lapic_read(REG_ID) >> 24
}

pub fn lapic_eoi() {
    lapic_write(REG_EOI, 0);
}

/// Software-enables this CPU's LAPIC (spurious vector 0xFF) and accepts all priorities.
pub fn lapic_enable() {
    lapic_write(REG_TPR, 0);
    lapic_write(REG_SVR, 0x100 | VEC_SPURIOUS as u32);
}

fn icr_wait() {
    while lapic_read(REG_ICR_LO) & (1 << 12) != 0 {
        core::hint::spin_loop();
    }
}

fn send_ipi(apic_id: u32, low: u32) {
    icr_wait();
    lapic_write(REG_ICR_HI, apic_id << 24);
    lapic_write(REG_ICR_LO, low);
    icr_wait();
}

/// An NMI to the CPU with APIC id `apic_id` (taken even with interrupts off;
/// its handler acknowledges with `percpu::nmi_ack`).
pub fn send_nmi(apic_id: u32) {
    send_ipi(apic_id, 0x0000_4400); // NMI, assert
}

/// A fixed IPI to every CPU but this one.
fn broadcast(vector: u8) {
    icr_wait();
    lapic_write(REG_ICR_HI, 0);
    lapic_write(REG_ICR_LO, (0b11 << 18) | vector as u32);
    icr_wait();
}

/// Masks the legacy PICs: the kernel takes no device interrupts.
pub fn mask_pic() {
    use x86_64::instructions::port::Port;
    // SAFETY: the PICs' data ports; masking every line only stops interrupts.
    unsafe {
        Port::<u8>::new(0x21).write(0xFF);
        Port::<u8>::new(0xA1).write(0xFF);
    }
}

// ------------------------------------------------------------------- MADT

/// APIC ids of the enabled CPUs in the MADT (BSP included), or just the BSP.
pub fn find_cpus(rsdp: u64, out: &mut [u32; MAX_CPUS]) -> usize {
    let bsp = lapic_id();
    let mut n = 0;
    let push = |id: u32, out: &mut [u32; MAX_CPUS], n: &mut usize| {
        if *n < MAX_CPUS && !out[..*n].contains(&id) {
            out[*n] = id;
            *n += 1;
        }
    };
    push(bsp, out, &mut n);
    if rsdp == 0 {
        return n;
    }
    // SAFETY: ACPI tables are in the first 4 GiB, which the physical map covers,
    // and are only read.
    let rd8 = |a: u64| unsafe { *phys_to_virt(a) };
    // SAFETY: as `rd8`.
    let rd32 = |a: u64| unsafe { (phys_to_virt(a) as *const u32).read_unaligned() };
    // SAFETY: as `rd8`.
    let rd64 = |a: u64| unsafe { (phys_to_virt(a) as *const u64).read_unaligned() };
    let sig = |a: u64| -> [u8; 4] { [rd8(a), rd8(a + 1), rd8(a + 2), rd8(a + 3)] };
    // RSDP: "RSD PTR ", revision @15, RSDT @16, XSDT @24.
    let (root, wide) = if rd8(rsdp + 15) >= 2 && rd64(rsdp + 24) != 0 {
        (rd64(rsdp + 24), true)
    } else {
        (rd32(rsdp + 16) as u64, false)
    };
    let len = rd32(root + 4) as u64;
    let step = if wide { 8 } else { 4 };
    let mut e = root + 36;
    while e + step <= root + len {
        let t = if wide { rd64(e) } else { rd32(e) as u64 };
        e += step;
        if sig(t) != *b"APIC" {
            continue;
        }
        let mlen = rd32(t + 4) as u64;
        let mut p = t + 44;
        while p + 2 <= t + mlen {
            let (kind, l) = (rd8(p), rd8(p + 1) as u64);
            if l < 2 {
                break;
            }
            match kind {
                0 if rd32(p + 4) & 1 != 0 => push(rd8(p + 3) as u32, out, &mut n),
                9 if rd32(p + 8) & 1 != 0 => push(rd32(p + 4), out, &mut n),
                _ => {}
            }
            p += l;
        }
    }
    n
}

// ------------------------------------------------------------- trampoline

const TRAMPOLINE: u64 = 0x8000;

global_asm!(
    r#"
    .section .text.ap_tramp, "ax"
    .global ap_tramp_start
    .global ap_tramp_end
    .global ap_cr3
    .global ap_efer
    .global ap_stack
    .global ap_entry
    .global ap_arg
    .code16
ap_tramp_start:
    cli
    cld
    xor ax, ax
    mov ds, ax
    lgdt [AP_GDTR_ABS]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    .byte 0x66, 0xea                /* ljmpl 0x08:ap_pm32 */
    .long ap_pm32 - ap_tramp_start + 0x8000
    .word 0x08

    .code32
ap_pm32:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov eax, cr4
    or eax, 0x620                   /* PAE | OSFXSR | OSXMMEXCPT */
    mov cr4, eax
    mov eax, dword ptr [AP_CR3_ABS]
    mov cr3, eax
    mov ecx, 0xC0000080
    rdmsr
    or eax, dword ptr [AP_EFER_ABS]
    wrmsr
    mov eax, cr0
    or eax, 0x80010001
    mov cr0, eax
    .byte 0xea                      /* ljmp 0x18:ap_lm64 */
    .long ap_lm64 - ap_tramp_start + 0x8000
    .word 0x18

    .code64
ap_lm64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov rsp, qword ptr [rip + ap_stack]
    mov rdi, qword ptr [rip + ap_arg]
    mov rax, qword ptr [rip + ap_entry]
    xor ebp, ebp
    call rax
    ud2

    .balign 8
ap_gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF        /* 0x08: 32-bit code */
    .quad 0x00CF92000000FFFF        /* 0x10: data */
    .quad 0x00AF9A000000FFFF        /* 0x18: 64-bit code */
ap_gdtr:
    .word 31
    .long ap_gdt - ap_tramp_start + 0x8000
    .balign 8
ap_cr3:   .quad 0
ap_efer:  .quad 0
ap_stack: .quad 0
ap_entry: .quad 0
ap_arg:   .quad 0
ap_tramp_end:
    .set AP_GDTR_ABS, ap_gdtr - ap_tramp_start + 0x8000
    .set AP_CR3_ABS, ap_cr3 - ap_tramp_start + 0x8000
    .set AP_EFER_ABS, ap_efer - ap_tramp_start + 0x8000
"#
);

unsafe extern "C" {
    static ap_tramp_start: u8;
    static ap_tramp_end: u8;
    static ap_cr3: u8;
    static ap_efer: u8;
    static ap_stack: u8;
    static ap_entry: u8;
    static ap_arg: u8;
}

/// Writes a trampoline variable in the copy at 0x8000.
fn patch(var: *const u8, v: u64) {
    let off = var as u64 - (&raw const ap_tramp_start) as u64;
    // SAFETY: the copy at TRAMPOLINE is ours; the variables are 8-byte aligned inside it.
    unsafe { core::ptr::write_volatile(phys_to_virt(TRAMPOLINE + off) as *mut u64, v) };
}

/// CPUs that have come up (BSP included).
static ONLINE: AtomicUsize = AtomicUsize::new(1);
static AP_READY: AtomicBool = AtomicBool::new(false);

pub fn online() -> usize {
    ONLINE.load(Ordering::SeqCst)
}

/// Starts every CPU in `apic_ids` but the BSP, one at a time. Each gets index
/// 1.. in order and a stack from `kheap::alloc_cpu_stack` (with a guard page).
pub fn start_aps(apic_ids: &[u32]) {
    let bsp = lapic_id();
    let start = (&raw const ap_tramp_start) as u64;
    let len = (&raw const ap_tramp_end) as u64 - start;
    // SAFETY: 0x8000.. is usable low RAM the frame allocator never hands out.
    unsafe {
        core::ptr::copy_nonoverlapping(start as *const u8, phys_to_virt(TRAMPOLINE), len as usize)
    };
    let efer = x86_64::registers::model_specific::Efer::read_raw() & ((1 << 8) | (1 << 11) | 1);
    patch(&raw const ap_cr3, crate::boot::pml4_phys());
    patch(&raw const ap_efer, efer);
    patch(&raw const ap_entry, ap_main as *const () as u64);
    let mut index = 1;
    for &id in apic_ids {
        if id == bsp || index >= MAX_CPUS {
            continue;
        }
        let Some((guard_lo, lo, hi)) = crate::kheap::alloc_cpu_stack(index) else {
            println!("smp: no stack for CPU {index} (APIC {id})");
            break;
        };
        percpu::set_stack(index, guard_lo, lo, hi);
        patch(&raw const ap_stack, hi);
        patch(&raw const ap_arg, ((id as u64) << 32) | index as u64);
        AP_READY.store(false, Ordering::SeqCst);
        send_ipi(id, 0x0000_4500); // INIT, assert
        time::delay_us(10_000);
        send_ipi(id, 0x0000_4600 | (TRAMPOLINE >> 12) as u32); // SIPI
        time::delay_us(200);
        if !AP_READY.load(Ordering::SeqCst) {
            send_ipi(id, 0x0000_4600 | (TRAMPOLINE >> 12) as u32);
        }
        let w = time::Watch::start();
        while !AP_READY.load(Ordering::SeqCst) && w.ns() < 5_000_000_000 {
            core::hint::spin_loop();
        }
        if !AP_READY.load(Ordering::SeqCst) {
            println!("smp: CPU with APIC id {id} did not come up");
            continue;
        }
        index += 1;
    }
}

extern "C" fn ap_main(arg: u64) -> ! {
    let index = (arg & 0xFFFF_FFFF) as usize;
    let apic_id = (arg >> 32) as u32;
    // SAFETY: first thing on this CPU, interrupts are off.
    unsafe { percpu::init_this_cpu(index, apic_id) };
    lapic_enable();
    let me = &PERCPU[index];
    me.tlb_acked
        .store(SHOOT_GEN.load(Ordering::SeqCst), Ordering::SeqCst);
    // Online before the BSP goes on: from now on shootdowns wait for this CPU.
    me.online.store(true, Ordering::SeqCst);
    ONLINE.fetch_add(1, Ordering::SeqCst);
    flush_tlb();
    AP_READY.store(true, Ordering::SeqCst);
    idle_loop(index)
}

// --------------------------------------------------------------- dispatch

#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    ncpus: usize,
}
// SAFETY: the closure is Sync and outlives the job (run_on waits for every CPU).
unsafe impl Send for Job {}

static JOB: Mutex<Option<Job>> = Mutex::new(None);
static JOB_GEN: AtomicU64 = AtomicU64::new(0);
static JOB_DONE: AtomicUsize = AtomicUsize::new(0);

fn idle_loop(index: usize) -> ! {
    let mut seen = 0;
    loop {
        x86_64::instructions::interrupts::disable();
        let g = JOB_GEN.load(Ordering::Acquire);
        if g == seen {
            // Atomically enable interrupts and halt: a wake IPI cannot slip in
            // between. (The per-CPU IF shadow is set around it.)
            percpu::enable_and_hlt();
            continue;
        }
        seen = g;
        // Jobs run with interrupts off: kernel work here is not preemptible, so
        // the heap's per-CPU sections read only the per-CPU IF shadow. Interrupts
        // are on only while idle in `hlt`; TLB shootdowns and the heap's remote
        // drains reach busy CPUs as NMIs.
        let job = *JOB.lock();
        if let Some(job) = job {
            if index < job.ncpus {
                // SAFETY: see `Job`.
                unsafe { (*job.f)(index) };
                JOB_DONE.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
}

/// Runs `f(i)` on CPUs `0..n` (the caller, the BSP, is CPU 0) and waits for all.
pub fn run_on<F: Fn(usize) + Sync>(n: usize, f: &F) {
    let n = n.clamp(1, online());
    assert_eq!(percpu::current(), 0, "run_on is for the BSP");
    let dynf: &(dyn Fn(usize) + Sync) = f;
    // SAFETY: only the lifetime is erased; we wait below until no CPU uses it.
    let ptr: *const (dyn Fn(usize) + Sync) = unsafe { core::mem::transmute(dynf) };
    *JOB.lock() = Some(Job { f: ptr, ncpus: n });
    JOB_DONE.store(0, Ordering::SeqCst);
    JOB_GEN.fetch_add(1, Ordering::AcqRel);
    if n > 1 {
        broadcast(VEC_WAKE);
    }
    f(0);
    while JOB_DONE.load(Ordering::Acquire) < n - 1 {
        relax();
    }
    *JOB.lock() = None;
}

// ------------------------------------------------------------ shootdown

static SHOOT_LOCK: AtomicBool = AtomicBool::new(false);
static SHOOT_GEN: AtomicU64 = AtomicU64::new(0);
pub static SHOOTDOWNS: AtomicU64 = AtomicU64::new(0);

fn flush_tlb() {
    x86_64::instructions::tlb::flush_all();
}

/// Flushes this CPU's TLB if a shootdown is pending for it.
#[inline(always)]
pub fn poll_shootdown() {
    if ONLINE.load(Ordering::Relaxed) <= 1 {
        return;
    }
    let g = SHOOT_GEN.load(Ordering::Acquire);
    let me = &PERCPU[percpu::current()];
    if me.tlb_acked.load(Ordering::Relaxed) < g {
        flush_tlb();
        // fetch_max: an NMI may nest inside this very function; acks never go back.
        me.tlb_acked.fetch_max(g, Ordering::AcqRel);
    }
}

/// Spin-wait step for every lock in the kernel: answers shootdowns.
#[inline(always)]
pub fn relax() {
    poll_shootdown();
    core::hint::spin_loop();
}

/// Makes every other online CPU flush its TLB, and waits until all have.
/// Called after a mapping was removed or weakened (the caller flushes its own
/// TLB entry), before the frame can be reused.
///
/// The request goes out as an NMI to each online CPU: the caller may hold the
/// heap lock and the page source's lock, and another CPU may be spinning for
/// one of them with interrupts off (inside `with_current`), where a maskable
/// IPI would never be taken. CPUs also answer from their spin loops ([`relax`]).
/// CPUs not yet online (still in the real-mode trampoline) get nothing: they
/// load CR3 fresh and are counted only once their IDT is up.
pub fn tlb_shootdown() {
    if ONLINE.load(Ordering::SeqCst) <= 1 {
        return;
    }
    while SHOOT_LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        relax();
    }
    let me = percpu::current();
    let g = SHOOT_GEN.fetch_add(1, Ordering::AcqRel) + 1;
    PERCPU[me].tlb_acked.store(g, Ordering::Release);
    SHOOTDOWNS.fetch_add(1, Ordering::Relaxed);
    for (i, c) in PERCPU.iter().enumerate() {
        if i != me && c.online.load(Ordering::SeqCst) && c.tlb_acked.load(Ordering::Acquire) < g {
            send_nmi(c.apic_id.load(Ordering::Relaxed));
        }
    }
    for (i, c) in PERCPU.iter().enumerate() {
        if i == me || !c.online.load(Ordering::SeqCst) {
            continue;
        }
        while c.tlb_acked.load(Ordering::Acquire) < g {
            core::hint::spin_loop();
        }
    }
    SHOOT_LOCK.store(false, Ordering::Release);
}

/// Marks the BSP online (its block is PERCPU[0]).
pub fn bsp_online() {
    PERCPU[0].online.store(true, Ordering::SeqCst);
}

/// `tieralloc::source::frames::Config::shootdown`: the source unmapped
/// `[addr, addr + bytes)` and flushed this CPU; make every other CPU flush too.
pub fn shootdown_range(_addr: x86_64::VirtAddr, _bytes: u64) {
    tlb_shootdown();
}
