//! Per-CPU blocks reached through GS base, per-CPU GDT/TSS (IST stacks for
//! double faults and page faults), and [`KernelCpu`], the kernel's
//! implementation of [`tieralloc::Cpu`].
//!
//! CPU indices are dense (`0` = the BSP, APs `1..` in start order); APIC ids
//! may be sparse and are kept in the block. `gs:[8]` holds the index, so
//! reading it is one instruction that migration cannot split (there is no
//! migration here anyway: one kernel thread per CPU).
//!
//! ## The heap's per-CPU exclusivity without atomics or flag reads
//!
//! Every heap operation enters a section of its CPU's slot
//! ([`tieralloc::Cpu::with_current`]); under QEMU TCG a `pushfq` (a helper call
//! that materialises RFLAGS) and a `lock cmpxchg` (an out-of-line atomic helper
//! with its own TLB walk) made that entry cost more than the cache operation
//! itself. [`KernelCpu`] enters with plain GS-relative moves instead:
//!
//! * **Interrupts**: the block keeps `irq_may_be_on`, a shadow of RFLAGS.IF that
//!   is 1 whenever IF may be 1 (set before the only `sti` of the kernel, in
//!   [`enable_and_hlt`], cleared after its `cli`). The kernel runs all its work
//!   with IF = 0, so the section only checks the shadow; the `pushfq`/`cli` path
//!   remains for the case where it is 1.
//! * **Owner vs. remote**: slot `i` is entered by its own CPU (the *owner*: every
//!   `with_current`, and `with_slot(i)` on CPU `i`) or by another CPU (a *remote*:
//!   `with_slot`/`acquire_slot` for drains by `Heap::scavenge`/`stats`). The
//!   owner announces itself with a plain store (`busy = 1`) and then reads
//!   `remote`; a remote serialises with other remotes through the slot's lock,
//!   sets `remote = 1`, and then makes the owner CPU execute a serialising
//!   point — an NMI whose handler acknowledges with a locked increment
//!   ([`nmi_ack`]) — before it reads `busy` and waits for 0. This is the
//!   asymmetric Dekker protocol of Linux's `membarrier`: the owner's fast path
//!   needs no fence because the rare remote side pays for one on the owner's
//!   behalf. See [`KernelCpu`] for the argument.

use core::arch::asm;
use core::cell::UnsafeCell;
use core::sync::atomic::{
    compiler_fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};

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
    /// `gs:[16]`: 1 while this CPU is inside a section of its own heap slot
    /// (owner side of [`KernelCpu`]). Written only by this CPU (plain stores),
    /// read by remotes.
    busy: AtomicU8,
    _pad: u8,
    /// `gs:[18]`: 1 whenever RFLAGS.IF may be 1 on this CPU (invariant: IF = 1
    /// ⇒ `irq_may_be_on` = 1). Written only by this CPU, by [`enable_and_hlt`].
    irq_may_be_on: AtomicU8,
    /// `gs:[19]`: 1 while another CPU holds this CPU's heap slot (remote side
    /// of [`KernelCpu`]); written only by the holder of `slot_lock`. The owner
    /// reads it and `irq_may_be_on` as one aligned 16-bit word: both 0 is its
    /// fast path.
    remote: AtomicBool,
    /// Incremented (a locked RMW) by this CPU's NMI handler: a remote waits for
    /// it to move to know that the CPU has passed a serialising point.
    nmi_count: AtomicU64,
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
    /// Serialises the remote holders of this CPU's heap slot (never taken by the owner).
    slot_lock: SlotLock,
}

/// GS-relative offsets used by the owner's fast path (checked against the layout).
const GS_INDEX: usize = core::mem::offset_of!(PerCpu, index);
const GS_BUSY: usize = core::mem::offset_of!(PerCpu, busy);
/// The aligned 16-bit word `irq_may_be_on | remote << 8`.
const GS_SLOW: usize = core::mem::offset_of!(PerCpu, irq_may_be_on);
const _: () = assert!(
    GS_INDEX == 8
        && GS_SLOW.is_multiple_of(2)
        && core::mem::offset_of!(PerCpu, remote) == GS_SLOW + 1
);

// SAFETY: the UnsafeCell fields are written only by the owning CPU during its set-up.
unsafe impl Sync for PerCpu {}

impl PerCpu {
    const fn new() -> PerCpu {
        PerCpu {
            self_ptr: UnsafeCell::new(0),
            index: UnsafeCell::new(0),
            busy: AtomicU8::new(0),
            _pad: 0,
            irq_may_be_on: AtomicU8::new(0),
            remote: AtomicBool::new(false),
            nmi_count: AtomicU64::new(0),
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
            slot_lock: SlotLock::new(),
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
        gdt[3] = (limit & 0xFFFF)
            | ((base & 0xFF_FFFF) << 16)
            | (0x89 << 40)
            | (((limit >> 16) & 0xF) << 48)
            | (((base >> 24) & 0xFF) << 56);
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
        let (g, lo) = (
            b.guard_lo.load(Ordering::Relaxed),
            b.stack_lo.load(Ordering::Relaxed),
        );
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

/// Acknowledges an NMI on this CPU (called first by the NMI handler).
///
/// The locked increment drains this CPU's store buffer, so every store it made
/// before the NMI — in particular an owner's `busy = 1` — is visible to any
/// CPU that sees the new count; and every load it makes after the NMI comes
/// after the increment, so it sees what a remote stored before reading the old
/// count.
#[inline(always)]
pub fn nmi_ack() {
    PERCPU[current()].nmi_count.fetch_add(1, Ordering::SeqCst);
}

/// Enables interrupts and halts until one arrives (atomically: `sti; hlt`),
/// then disables them again. The only place the kernel runs with IF = 1; it
/// keeps the `irq_may_be_on` shadow conservative around it.
pub fn enable_and_hlt() {
    let b = this();
    b.irq_may_be_on.store(1, Ordering::Relaxed);
    compiler_fence(Ordering::SeqCst);
    interrupts::enable_and_hlt();
    interrupts::disable();
    compiler_fence(Ordering::SeqCst);
    b.irq_may_be_on.store(0, Ordering::Relaxed);
}

/// Runs `f` with interrupts off, restoring the previous state. Reads the
/// per-CPU shadow first: when it says IF is off (always, in this kernel's
/// work), no flags are read or written.
#[inline(always)]
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    if GS_READY.load(Ordering::Relaxed) && this().irq_may_be_on.load(Ordering::Relaxed) == 0 {
        debug_assert!(!interrupts::are_enabled(), "irq_may_be_on is 0 with IF = 1");
        return f();
    }
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

/// The heap's CPU mapping: slot = dense CPU index; exclusivity = interrupts
/// off on the owner CPU plus the owner/remote protocol on the slot's flags in
/// the [`PerCpu`] block (see the module docs).
///
/// **Why no two sections of slot `i` overlap** (the [`Cpu`] contract):
///
/// 1. *Owner vs. owner*: only CPU `i` runs owner sections of slot `i`; it runs
///    them with IF = 0, and no interrupt or NMI handler of this kernel uses the
///    heap (they report through `serial::print_force`, which does not
///    allocate). Debug builds check it: a nested entry finds `busy = 1` and panics.
/// 2. *Remote vs. remote*: remotes (and `acquire_slot`) hold `slot_lock`.
/// 3. *Owner vs. remote*: the owner does `busy = 1; read remote`; the remote
///    does `remote = 1` (SeqCst), reads `nmi_count`, sends CPU `i` an NMI, waits
///    for the count to move, then waits for `busy = 0`. The handler's locked
///    increment happens after `remote = 1` was globally visible (the remote read
///    the old count after storing). Take the owner's entry: if its `busy = 1`
///    precedes that handler in program order, the locked increment made it
///    visible, so the remote sees `busy = 1` and waits until the section ends
///    (release store of `busy = 0`, paired with the remote's acquire load). If
///    the entry comes after the handler, its read of `remote` comes after the
///    locked increment, hence sees 1: the owner clears `busy` and waits until
///    `remote = 0` (release, after the remote's section). The entry cannot
///    straddle the handler harmfully: `busy = 1` before it and the read after
///    it is the second case (the owner backs off). CPUs not online run no
///    sections and get no NMI (the SeqCst `online` store of a starting CPU and
///    the remote's SeqCst `remote = 1` / `online` load order the two sides).
///
/// Cost: the owner's entry is `mov gs:[8]`, `mov gs:[busy], 1` and a 16-bit
/// load of the IF shadow and `remote`; its exit one `mov`.
/// A remote pays a cmpxchg and an NMI round trip — drains are rare.
///
/// All slot state lives in [`PERCPU`], so every `KernelCpu` value shares it
/// (a second heap over `KernelCpu` would share the exclusivity, which stays
/// sound: sections of different heaps never nest).
pub struct KernelCpu {
    _private: (),
}

impl KernelCpu {
    pub const fn new() -> KernelCpu {
        KernelCpu { _private: () }
    }
}

impl Default for KernelCpu {
    fn default() -> Self {
        Self::new()
    }
}

/// Ends an owner section (`busy = 0`, a release store), also on unwind; with
/// `true`, turns interrupts back on (the entry turned them off).
struct OwnerExit(bool);

impl Drop for OwnerExit {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: GS points at this CPU's block (the heap is used only after
        // `init_this_cpu`); a byte store to its `busy` field. No `nomem`: the
        // asm is a compiler barrier, so the section's accesses stay before it,
        // and x86 stores are release stores.
        unsafe {
            asm!("mov byte ptr gs:[{b}], 0", b = const GS_BUSY, options(nostack, preserves_flags))
        };
        if self.0 {
            interrupts::enable();
        }
    }
}

/// Enters an owner section of this CPU's slot; returns the CPU index and
/// whether interrupts were turned off for it (then [`OwnerExit`] turns them
/// back on). The caller runs the section and then drops an [`OwnerExit`].
///
/// Fast path: `mov gs:[8]` (the index), `mov byte gs:[busy], 1`, one 16-bit
/// `cmp` of the IF shadow and `remote`. Setting `busy` before looking at the
/// IF shadow is harmless: until the slow path turns interrupts off, only an
/// interrupt handler could run, and none uses the heap (a remote that sees
/// `busy` just waits a few instructions longer).
#[inline(always)]
fn owner_enter() -> (usize, bool) {
    debug_assert!(
        GS_READY.load(Ordering::Relaxed),
        "heap used before the BSP's per-CPU block"
    );
    debug_assert!(
        this().busy.load(Ordering::Relaxed) == 0,
        "heap entered while this CPU is inside a heap section (from an interrupt or NMI handler?)"
    );
    let i: u64;
    let slow: u32;
    // SAFETY: GS points at this CPU's block (the heap is used only after
    // `init_this_cpu`, see `owner_enter`'s callers): reads the index, sets
    // `busy`, reads `irq_may_be_on | remote << 8`. No `nomem`: a compiler
    // barrier, so the section's accesses stay after it. The store-load order
    // across CPUs comes from the remote's NMI (see `KernelCpu`).
    unsafe {
        asm!(
            "mov {i}, gs:[{idx}]",
            "mov byte ptr gs:[{busy}], 1",
            "movzx {s:e}, word ptr gs:[{slow}]",
            i = out(reg) i,
            s = out(reg) slow,
            idx = const GS_INDEX,
            busy = const GS_BUSY,
            slow = const GS_SLOW,
            options(nostack, preserves_flags),
        )
    };
    if slow != 0 {
        return owner_enter_slow(i as usize);
    }
    (i as usize, false)
}

/// The owner found the IF shadow or `remote` set after setting `busy`: turns
/// interrupts off if they are on, and backs off while a remote holds the slot.
#[cold]
#[inline(never)]
fn owner_enter_slow(i: usize) -> (usize, bool) {
    let was = interrupts::are_enabled();
    if was {
        interrupts::disable();
    }
    if PERCPU[i].remote.load(Ordering::Relaxed) {
        owner_wait(i);
    }
    (i, was)
}

/// The owner found `remote = 1` after setting `busy`: back off until the
/// remote is done, then enter again.
#[cold]
#[inline(never)]
fn owner_wait(i: usize) {
    let b = &PERCPU[i];
    loop {
        b.busy.store(0, Ordering::Release);
        while b.remote.load(Ordering::Acquire) {
            KRelax::relax();
        }
        b.busy.store(1, Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        if !b.remote.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// Takes CPU `i`'s slot from another CPU (or, for `acquire_slot`, from any):
/// the remote lock, `remote = 1`, the NMI round trip, then waits for `busy = 0`.
fn remote_acquire(i: usize) {
    let b = &PERCPU[i];
    b.slot_lock.acquire::<KRelax>();
    b.remote.store(true, Ordering::SeqCst);
    if i != current() && b.online.load(Ordering::SeqCst) {
        let seen = b.nmi_count.load(Ordering::SeqCst);
        crate::smp::send_nmi(b.apic_id.load(Ordering::Relaxed));
        while b.nmi_count.load(Ordering::Acquire) == seen {
            KRelax::relax();
        }
    }
    while b.busy.load(Ordering::Acquire) != 0 {
        KRelax::relax();
    }
}

/// Gives back what [`remote_acquire`] took.
fn remote_release(i: usize) {
    let b = &PERCPU[i];
    b.remote.store(false, Ordering::Release);
    // SAFETY: taken in `remote_acquire`.
    unsafe { b.slot_lock.release() };
}

// SAFETY: `count()` is fixed before the heap's first use (set_cpu_count runs
// before any allocation) and is in 1..=MAX_CPUS; `with_current` passes the
// calling CPU's index, < count because only counted CPUs are started; sections
// of one slot never overlap, by the owner/remote protocol argued on `KernelCpu`.
unsafe impl Cpu for KernelCpu {
    type Relax = KRelax;

    fn count(&self) -> usize {
        cpu_count()
    }

    #[inline(always)]
    fn with_current<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        let (i, irq) = owner_enter();
        let _exit = OwnerExit(irq);
        f(i)
    }

    #[inline(always)]
    fn with_slot<R>(&self, i: usize, f: impl FnOnce() -> R) -> R {
        if i == current() {
            // This CPU's own slot (the tiny path's compare-and-store): owner side.
            let (_, irq) = owner_enter();
            let _exit = OwnerExit(irq);
            return f();
        }
        with_remote(i, f)
    }

    fn acquire_slot(&self, i: usize) {
        remote_acquire(i);
    }

    unsafe fn release_slot(&self, i: usize) {
        remote_release(i);
    }
}

/// A remote section of slot `i` (another CPU's), interrupts off meanwhile.
#[inline(never)]
fn with_remote<R>(i: usize, f: impl FnOnce() -> R) -> R {
    without_interrupts(|| {
        remote_acquire(i);
        struct Release(usize);
        impl Drop for Release {
            fn drop(&mut self) {
                remote_release(self.0);
            }
        }
        let _r = Release(i);
        f()
    })
}
