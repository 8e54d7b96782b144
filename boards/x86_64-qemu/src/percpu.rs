//! Per-CPU blocks reached through GS base, per-CPU GDT/TSS (IST stacks for
//! double faults and page faults), and [`KernelCpu`], the kernel's
//! implementation of [`tieralloc::Cpu`].
//!
//! CPU indices are dense (`0` = the BSP, APs `1..` in start order); APIC ids
//! may be sparse and are kept in the block. `gs:[8]` holds the index, so
//! reading it is one instruction that migration cannot split (there is no
//! migration here anyway: one kernel thread per CPU).

use core::arch::asm;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use tieralloc::cpu::{RelaxStrategy, SlotLock};
use tieralloc::Cpu;
use x86_64::instructions::interrupts;
use x86_64::registers::model_specific::Msr;
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// Most CPUs the kernel brings up.
pub const MAX_CPUS: usize = 16;
const IST_BYTES: usize = 16 * 1024;

#[repr(C, align(128))]
pub struct PerCpu {
    /// `gs:[0]`: the block's own address.
    self_ptr: UnsafeCell<u64>,
    /// `gs:[8]`: the dense CPU index.
    index: UnsafeCell<u64>,
    pub apic_id: AtomicU32,
    pub online: AtomicBool,
    /// Last TLB shootdown generation this CPU has flushed for.
    pub tlb_acked: AtomicU64,
    /// Work counters for the per-CPU summaries.
    pub ops: AtomicU64,
    pub cross_frees: AtomicU64,
    /// The CPU's kernel stack `[lo, hi)` and its guard page(s) `[guard_lo, lo)`.
    pub stack_lo: AtomicU64,
    pub stack_hi: AtomicU64,
    pub guard_lo: AtomicU64,
    tss: UnsafeCell<TaskStateSegment>,
    gdt: UnsafeCell<[u64; 5]>,
}

// SAFETY: the UnsafeCell fields are written only by the owning CPU during its set-up.
unsafe impl Sync for PerCpu {}

impl PerCpu {
    const fn new() -> PerCpu {
        PerCpu {
            self_ptr: UnsafeCell::new(0),
            index: UnsafeCell::new(0),
            apic_id: AtomicU32::new(0),
            online: AtomicBool::new(false),
            tlb_acked: AtomicU64::new(0),
            ops: AtomicU64::new(0),
            cross_frees: AtomicU64::new(0),
            stack_lo: AtomicU64::new(0),
            stack_hi: AtomicU64::new(0),
            guard_lo: AtomicU64::new(0),
            tss: UnsafeCell::new(TaskStateSegment::new()),
            gdt: UnsafeCell::new([0; 5]),
        }
    }
}

pub static PERCPU: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];

#[repr(C, align(16))]
struct IstStacks([[u8; IST_BYTES]; MAX_CPUS]);
static mut DF_STACKS: IstStacks = IstStacks([[0; IST_BYTES]; MAX_CPUS]);
static mut PF_STACKS: IstStacks = IstStacks([[0; IST_BYTES]; MAX_CPUS]);

/// CPUs found in the MADT (1 until then); fixed before the heap is first used,
/// so it is the heap's slot count.
static CPU_COUNT: AtomicUsize = AtomicUsize::new(1);
/// GS base is set on the BSP: `current()` is valid.
static GS_READY: AtomicBool = AtomicBool::new(false);

pub fn set_cpu_count(n: usize) {
    CPU_COUNT.store(n.clamp(1, MAX_CPUS), Ordering::SeqCst);
}

pub fn cpu_count() -> usize {
    CPU_COUNT.load(Ordering::Relaxed)
}

/// The calling CPU's dense index.
#[inline(always)]
pub fn current() -> usize {
    if !GS_READY.load(Ordering::Relaxed) {
        return 0;
    }
    let i: u64;
    // SAFETY: GS base points at this CPU's block, whose second word is the index.
    unsafe { asm!("mov {}, gs:[8]", out(reg) i, options(nostack, readonly, preserves_flags)) };
    i as usize
}

pub fn this() -> &'static PerCpu {
    &PERCPU[current()]
}

const IA32_GS_BASE: u32 = 0xC000_0101;
const IA32_TSC_AUX: u32 = 0xC000_0103;

/// Points GS base at block `index`, loads the CPU's GDT (with its TSS: IST 1 =
/// double-fault stack, IST 2 = page-fault stack) and the shared IDT.
///
/// # Safety
/// Called once per CPU, on that CPU, with interrupts off.
pub unsafe fn init_this_cpu(index: usize, apic_id: u32) {
    let b = &PERCPU[index];
    // SAFETY: only this CPU touches its block's cells, once.
    unsafe {
        *b.self_ptr.get() = b as *const PerCpu as u64;
        *b.index.get() = index as u64;
        Msr::new(IA32_GS_BASE).write(b as *const PerCpu as u64);
        Msr::new(IA32_TSC_AUX).write(index as u64);
    }
    b.apic_id.store(apic_id, Ordering::SeqCst);
    if index == 0 {
        GS_READY.store(true, Ordering::SeqCst);
    }
    // SAFETY: as above; the stacks are this CPU's alone.
    unsafe {
        let tss = &mut *b.tss.get();
        let df = (&raw mut DF_STACKS.0[index]) as u64 + IST_BYTES as u64;
        let pf = (&raw mut PF_STACKS.0[index]) as u64 + IST_BYTES as u64;
        tss.interrupt_stack_table[0] = VirtAddr::new(df);
        tss.interrupt_stack_table[1] = VirtAddr::new(pf);
        let base = tss as *const TaskStateSegment as u64;
        let limit = (core::mem::size_of::<TaskStateSegment>() - 1) as u64;
        let gdt = &mut *b.gdt.get();
        gdt[0] = 0;
        gdt[1] = 0x00AF_9A00_0000_FFFF; // 0x08 code
        gdt[2] = 0x00CF_9200_0000_FFFF; // 0x10 data
        gdt[3] = (limit & 0xFFFF) | ((base & 0xFF_FFFF) << 16) | (0x89 << 40) | (((limit >> 16) & 0xF) << 48) | (((base >> 24) & 0xFF) << 56);
        gdt[4] = base >> 32;
        let ptr = x86_64::structures::DescriptorTablePointer {
            limit: (core::mem::size_of::<[u64; 5]>() - 1) as u16,
            base: VirtAddr::new(gdt.as_ptr() as u64),
        };
        x86_64::instructions::tables::lgdt(&ptr);
        asm!(
            "push 0x08",
            "lea {t}, [rip + 2f]",
            "push {t}",
            "retfq",
            "2:",
            "mov {s:x}, 0x10",
            "mov ds, {s:x}",
            "mov es, {s:x}",
            "mov ss, {s:x}",
            t = out(reg) _,
            s = out(reg) _,
        );
        x86_64::instructions::tables::load_tss(x86_64::structures::gdt::SegmentSelector(0x18));
    }
    crate::interrupts::load_idt();
}

/// Records the CPU's stack and the guard below it (for fault reports).
pub fn set_stack(index: usize, guard_lo: u64, lo: u64, hi: u64) {
    let b = &PERCPU[index];
    b.guard_lo.store(guard_lo, Ordering::SeqCst);
    b.stack_lo.store(lo, Ordering::SeqCst);
    b.stack_hi.store(hi, Ordering::SeqCst);
}

/// The CPU whose stack guard holds `addr`, if any.
pub fn guard_owner(addr: u64) -> Option<usize> {
    PERCPU.iter().position(|b| {
        let (g, lo) = (b.guard_lo.load(Ordering::Relaxed), b.stack_lo.load(Ordering::Relaxed));
        g < lo && (g..lo).contains(&addr)
    })
}

/// What a CPU does while it waits for a heap lock: spin, but answer TLB
/// shootdowns (the lock holder may be waiting for this CPU's answer with
/// interrupts off here).
pub struct KRelax;

impl RelaxStrategy for KRelax {
    #[inline(always)]
    fn relax() {
        crate::smp::relax();
    }
}

/// The heap's CPU mapping: slot = dense CPU index; exclusivity = interrupts
/// off on this CPU plus the slot's lock (which other CPUs take to drain the
/// slot for `stats()`/`scavenge()`).
pub struct KernelCpu {
    locks: [SlotLock; MAX_CPUS],
}

impl KernelCpu {
    pub const fn new() -> KernelCpu {
        KernelCpu { locks: [const { SlotLock::new() }; MAX_CPUS] }
    }
}

impl Default for KernelCpu {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs `f` with interrupts off, restoring the previous state.
#[inline(always)]
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    let was = interrupts::are_enabled();
    if was {
        interrupts::disable();
    }
    let r = f();
    if was {
        interrupts::enable();
    }
    r
}

// SAFETY: `count()` is fixed before the heap's first use (set_cpu_count runs
// before any allocation) and is in 1..=MAX_CPUS; `with_current` passes the
// calling CPU's index, < count because only counted CPUs are started; every
// access to slot i, from any CPU, holds `locks[i]`.
unsafe impl Cpu for KernelCpu {
    type Relax = KRelax;

    fn count(&self) -> usize {
        cpu_count()
    }

    #[inline(always)]
    fn with_current<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        without_interrupts(|| {
            let i = current();
            self.locks[i].with::<KRelax, _>(|| f(i))
        })
    }

    fn with_slot<R>(&self, i: usize, f: impl FnOnce() -> R) -> R {
        without_interrupts(|| self.locks[i].with::<KRelax, _>(f))
    }

    fn acquire_slot(&self, i: usize) {
        self.locks[i].acquire::<KRelax>();
    }

    unsafe fn release_slot(&self, i: usize) {
        // SAFETY: the caller holds it (trait contract).
        unsafe { self.locks[i].release() }
    }
}
