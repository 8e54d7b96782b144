//! What every scenario of the RISC-V board shares: an M-mode firmware for
//! `qemu-system-riscv32 -M virt -smp 4 -bios none` whose heap is tieralloc
//! over a 4 MiB static region, tiered (more than [`tieralloc::FINE_MAX_BYTES`])
//! with one per-CPU cache per hart behind [`LockedSlots<4>`].
//!
//! * **Entry** ([`global_asm!`] below, not riscv-rt): QEMU starts all four
//!   harts at `_start` at once. Each reads `mhartid`, keeps it in `tp` (read
//!   back by [`hart_id`]), takes its own 64 KiB stack below `_stacks_end`,
//!   installs the trap vector; hart 0 zeroes `.bss` (everything is linked in
//!   RAM, so `.data` is already in place) and sets a release word in `.data`,
//!   on which the others spin; then every hart calls the scenario's
//!   `hart_main(hart)`. Harts beyond [`HARTS`] park. Interrupts stay off
//!   (`mie` cleared, `mstatus.MIE` never set): that is what `LockedSlots`
//!   needs (a hart is never interrupted inside the heap).
//! * **Console**: the NS16550 UART at 0x1000_0000, [`print!`]/[`println!`]
//!   behind a lock that is held for a whole line, so the harts' lines do not
//!   interleave (reentrant on one hart, so a panic inside a print still prints).
//! * **Exit**: the SiFive test device at 0x10_0000: [`pass`] (QEMU exits with
//!   status 0), [`fail`] (status 1). A failed [`check!`], a panic or a trap
//!   prints the reason and fails.
//! * **Heap**: [`HEAP`], the global allocator; hart 0 gives it the region
//!   ([`init_heap`]) while the others wait ([`wait_heap`]).
//! * **critical-section**: a cross-hart spin lock, reentrant on one hart (the
//!   owner's id and a nesting count), for embedded-alloc's heaps in the bench.
//! * **Time**: the CLINT's `mtime` ([`mtime`], 10 MHz).
//!
//! Each scenario is one binary in `src/bin/`; hart 0 prints
//! `riscv: <scenario> ok` as the last line and calls [`pass`].
#![no_std]
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::arch::{asm, global_asm};
use core::fmt::{self, Write};
use core::ptr::addr_of_mut;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use tieralloc::{Heap, LockedSlots, RegionSource};

/// Harts the firmware runs on (QEMU `-smp 4`); further harts park at entry.
pub const HARTS: usize = 4;

/// Bytes of the global heap's region: over [`tieralloc::FINE_MAX_BYTES`], so tiered.
pub const HEAP_BYTES: usize = 4 << 20;

/// The target the firmware was built for.
pub const TARGET: &str = if cfg!(target_arch = "riscv64") {
    "riscv64gc-unknown-none-elf"
} else {
    "riscv32imac-unknown-none-elf"
};

/// NS16550 UART: transmit holding register (offset 0), line status (offset 5).
const UART: usize = 0x1000_0000;
/// SiFive test device ("finisher").
const TEST_DEVICE: usize = 0x10_0000;
/// CLINT `mtime` (64-bit, 10 MHz).
const MTIME: usize = 0x0200_BFF8;
/// CLINT `mtimecmp`: one 64-bit word per hart.
const MTIMECMP: usize = 0x0200_4000;
/// CLINT `msip`: one 32-bit word per hart; writing 1 raises the hart's
/// software interrupt (used only to wake it from `wfi`, see [`SleepBarrier`]).
const MSIP: usize = 0x0200_0000;
/// `mtime` ticks per second.
pub const MTIME_HZ: u64 = 10_000_000;

// The entry: see the module docs. `a0` holds mhartid throughout; hart i's
// stack is the 64 KiB (1 << 16, STACK_BYTES in link.x) below
// `_stacks_end - i * 64 KiB`.
global_asm!(
    r#"
    .section .text.entry, "ax"
    .globl _start
_start:
    csrr    a0, mhartid
    csrw    mie, zero
    la      t0, {trap}
    csrw    mtvec, t0
    li      t0, {harts}
    bgeu    a0, t0, 9f
    mv      tp, a0
    la      sp, _stacks_end
    slli    t1, a0, {stack_shift}
    sub     sp, sp, t1
    bnez    a0, 3f
    la      t0, __bss_start
    la      t1, __bss_end
1:  bgeu    t0, t1, 2f
    sw      zero, 0(t0)
    addi    t0, t0, 4
    j       1b
2:  fence   rw, rw
    la      t0, BOOT_RELEASE
    li      t1, 1
    sw      t1, 0(t0)
    j       4f
3:  la      t0, BOOT_RELEASE
5:  lw      t1, 0(t0)
    beqz    t1, 5b
    fence   rw, rw
4:  call    hart_main
9:  wfi
    j       9b

    .section .data, "aw"
    .balign 4
    .globl BOOT_RELEASE
BOOT_RELEASE:
    .word   0
"#,
    trap = sym trap_entry,
    harts = const HARTS,
    stack_shift = const 16,
);

// The trap vector (direct mode, 4-aligned): nothing traps on purpose.
global_asm!(
    r#"
    .section .text, "ax"
    .balign 4
    .globl trap_entry
trap_entry:
    csrr    a0, mcause
    csrr    a1, mepc
    csrr    a2, mtval
    csrr    a3, mhartid
    call    {handler}
8:  j       8b
"#,
    handler = sym trap_handler,
);

extern "C" {
    fn trap_entry();
}

/// A trap is always a failure: prints the cause and fails.
extern "C" fn trap_handler(mcause: usize, mepc: usize, mtval: usize, hart: usize) -> ! {
    println!(
        "TRAP on hart {}: mcause {:#x}, mepc {:#x}, mtval {:#x}",
        hart, mcause, mepc, mtval
    );
    fail()
}

/// The calling hart's index (`mhartid`, kept in `tp` since entry).
#[inline(always)]
pub fn hart_id() -> usize {
    let id: usize;
    // SAFETY: reads `tp`, which the entry set to mhartid and nothing else writes
    // (no thread-local storage in this firmware).
    unsafe { asm!("mv {0}, tp", out(reg) id, options(nomem, nostack, preserves_flags)) };
    id
}

/// `mtime`: 10 MHz ticks since reset.
pub fn mtime() -> u64 {
    #[cfg(target_arch = "riscv64")]
    {
        // SAFETY: the CLINT's mtime register, always readable.
        unsafe { core::ptr::read_volatile(MTIME as *const u64) }
    }
    #[cfg(not(target_arch = "riscv64"))]
    loop {
        // SAFETY: the CLINT's mtime register (two 32-bit halves), always readable.
        let (hi, lo, hi2) = unsafe {
            let p = MTIME as *const u32;
            (
                core::ptr::read_volatile(p.add(1)),
                core::ptr::read_volatile(p),
                core::ptr::read_volatile(p.add(1)),
            )
        };
        if hi == hi2 {
            return ((hi as u64) << 32) | lo as u64;
        }
    }
}

/// Sets the calling hart's `mtimecmp` to `ticks` from now. The timer
/// interrupt stays disabled (`mie.MTIE` clear), so nothing happens on the
/// hart; but under `-icount` QEMU gives each hart a slice of the
/// instructions until the next timer deadline, so a deadline that the
/// running harts keep pushing `ticks` ahead makes QEMU switch harts every
/// `ticks / HARTS` or so instead of every 25 ms of guest time: the harts
/// interleave finely, as they would run at once on hardware (see the bench).
pub fn arm_slice_timer(ticks: u64) {
    let at = mtime() + ticks;
    let p = (MTIMECMP + 8 * hart_id()) as *mut u32;
    // SAFETY: the calling hart's mtimecmp (two 32-bit halves: the high half
    // first parks it in the far future, so it never passes through a value
    // below `at`).
    unsafe {
        core::ptr::write_volatile(p.add(1), u32::MAX);
        core::ptr::write_volatile(p, at as u32);
        core::ptr::write_volatile(p.add(1), (at >> 32) as u32);
    }
}

/// When non-zero, the `mtimecmp` lead that every spin of this firmware's
/// locks keeps (see [`SliceRelax`]); 0 (the default) leaves the timer alone.
static SLICE_TICKS: AtomicU32 = AtomicU32::new(0);

/// Makes every spin of the firmware's locks ([`HartLock`], and the locks of
/// the heaps that wait with [`SliceRelax`]) re-arm the hart's slice timer
/// ([`arm_slice_timer`]) `ticks` ahead: a hart that spins on a lock whose
/// holder QEMU is not running then burns one short slice, not the 25 ms
/// QEMU gives when no deadline is near. For the bench.
pub fn set_slice_ticks(ticks: u32) {
    SLICE_TICKS.store(ticks, Ordering::Relaxed);
}

/// One spin of a lock wait: re-arms the slice timer if [`set_slice_ticks`] asked.
#[inline]
pub fn relax() {
    let t = SLICE_TICKS.load(Ordering::Relaxed);
    if t != 0 {
        arm_slice_timer(t as u64);
    }
    core::hint::spin_loop();
}

/// A [`spin::relax::RelaxStrategy`] (the one tieralloc's `LockedSlots` and
/// spin's mutexes take) that spins with [`relax`].
pub struct SliceRelax;

impl spin::relax::RelaxStrategy for SliceRelax {
    #[inline]
    fn relax() {
        relax();
    }
}

// ---- console ----

/// A lock that the owning hart may take again (its nested takes are no-ops):
/// the console's, and the critical section's.
pub struct HartLock {
    owner: AtomicUsize,
    depth: AtomicUsize,
}

const NOBODY: usize = usize::MAX;

impl HartLock {
    pub const fn new() -> Self {
        HartLock {
            owner: AtomicUsize::new(NOBODY),
            depth: AtomicUsize::new(0),
        }
    }
    /// Takes the lock (or nests); every call is paired with one [`HartLock::release`].
    pub fn acquire(&self) {
        let me = hart_id();
        if self.owner.load(Ordering::Relaxed) == me {
            self.depth.fetch_add(1, Ordering::Relaxed);
            return;
        }
        while self
            .owner
            .compare_exchange_weak(NOBODY, me, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            relax();
        }
        self.depth.store(1, Ordering::Relaxed);
    }
    /// Gives back one [`HartLock::acquire`] of the calling hart.
    pub fn release(&self) {
        if self.depth.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.owner.store(NOBODY, Ordering::Release);
        }
    }
}

impl Default for HartLock {
    fn default() -> Self {
        Self::new()
    }
}

static CONSOLE: HartLock = HartLock::new();

struct Uart;

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            // SAFETY: the virt machine's NS16550 registers; LSR bit 5 = THR empty.
            unsafe {
                while core::ptr::read_volatile((UART + 5) as *const u8) & 0x20 == 0 {}
                core::ptr::write_volatile(UART as *mut u8, b);
            }
        }
        Ok(())
    }
}

/// Writes `args` to the UART under the console lock (what [`print!`] calls).
pub fn print_args(args: fmt::Arguments) {
    CONSOLE.acquire();
    let _ = Uart.write_fmt(args);
    CONSOLE.release();
}

/// Prints to the UART (the whole text under the console lock).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::print_args(format_args!($($arg)*)) };
}

/// Prints a line to the UART; the line is written under the console lock, so
/// lines of different harts never interleave.
#[macro_export]
macro_rules! println {
    () => { $crate::print_args(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::print_args(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Fails the scenario with a message unless `cond` holds.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            $crate::println!("CHECK FAILED (hart {}): {}", $crate::hart_id(), format_args!($($arg)+));
            $crate::fail();
        }
    };
}

// ---- exit ----

fn finish(code: u32) -> ! {
    // SAFETY: the SiFive test device; the write ends QEMU.
    unsafe { core::ptr::write_volatile(TEST_DEVICE as *mut u32, code) };
    loop {
        // SAFETY: waits for an interrupt that never comes (QEMU has exited).
        unsafe { asm!("wfi", options(nomem, nostack)) };
    }
}

/// Exits QEMU with status 0.
pub fn pass() -> ! {
    finish(0x5555)
}

/// Exits QEMU with status 1.
pub fn fail() -> ! {
    finish((1 << 16) | 0x3333)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("PANIC (hart {}): {}", hart_id(), info);
    fail()
}

// ---- critical-section ----

static CS: HartLock = HartLock::new();

struct HartsCriticalSection;
critical_section::set_impl!(HartsCriticalSection);

// SAFETY: `acquire` excludes every other hart until the matching `release`
// (a spin lock on the owner's id), and nests on the owning hart; interrupts
// are never enabled in this firmware, so nothing else runs on that hart.
unsafe impl critical_section::Impl for HartsCriticalSection {
    unsafe fn acquire() -> critical_section::RawRestoreState {
        CS.acquire();
    }
    unsafe fn release(_: critical_section::RawRestoreState) {
        CS.release();
    }
}

// ---- heap ----

/// The heap region, page-aligned (the region heap's pages are 512 bytes).
#[repr(C, align(512))]
pub struct Region(pub [u8; HEAP_BYTES]);

/// In `.bss`: hart 0 zeroes it at entry.
static mut REGION: Region = Region([0; HEAP_BYTES]);

/// The global allocator: one per-CPU cache per hart, slot `mhartid`.
#[global_allocator]
pub static HEAP: Heap<RegionSource, LockedSlots<HARTS>> =
    Heap::new(RegionSource::empty(), LockedSlots::new(hart_id));

/// Set by hart 0 once the heap has its region.
static HEAP_READY: AtomicU32 = AtomicU32::new(0);

/// Harts that reached [`init_heap`]/[`wait_heap`].
static ARRIVED: AtomicUsize = AtomicUsize::new(0);

/// Hart 0: waits (1 s of guest time at most) until every hart is up, gives the
/// heap its region, checks that it is tiered, prints the banner and lets the
/// other harts allocate. Call first thing in `hart_main` on hart 0.
pub fn init_heap(scenario: &str) {
    wait_all_harts();
    // SAFETY: called once, on hart 0, before any allocation (the other harts
    // wait in `wait_heap`); the region is a static used by nothing else,
    // handed over to the heap for good.
    let r = unsafe {
        HEAP.source()
            .try_set_region(addr_of_mut!(REGION).cast::<u8>(), HEAP_BYTES)
    };
    if let Err(e) = r {
        println!("riscv: set_region refused the region: {}", e);
        fail();
    }
    let fine = HEAP.is_fine();
    println!(
        "riscv: {} on virt ({}), {} harts, tieralloc heap of {} KiB at {:p} (Heap static {} B), is_fine {}",
        scenario,
        TARGET,
        HARTS,
        HEAP_BYTES / 1024,
        addr_of_mut!(REGION),
        core::mem::size_of_val(&HEAP),
        fine
    );
    check!(
        !fine,
        "a {} KiB region must give a tiered heap",
        HEAP_BYTES / 1024
    );
    HEAP_READY.store(1, Ordering::Release);
}

/// Harts 1..: waits until hart 0 has set the heap up ([`init_heap`]).
pub fn wait_heap() {
    ARRIVED.fetch_add(1, Ordering::AcqRel);
    while HEAP_READY.load(Ordering::Acquire) == 0 {
        core::hint::spin_loop();
    }
}

/// Hart 0: waits until harts 1.. have checked in (through [`wait_heap`] or
/// [`Barrier::wait`]), failing after one second of guest time (QEMU run
/// with fewer than [`HARTS`] harts).
pub fn wait_all_harts() {
    let t = mtime();
    while ARRIVED.load(Ordering::Acquire) < HARTS - 1 {
        check!(
            mtime() - t < MTIME_HZ,
            "only {} of {} harts came up (QEMU -smp {}?)",
            ARRIVED.load(Ordering::Relaxed) + 1,
            HARTS,
            HARTS
        );
        core::hint::spin_loop();
    }
}

/// Marks the calling hart (1..) up for [`wait_all_harts`] without waiting for the heap.
pub fn check_in() {
    ARRIVED.fetch_add(1, Ordering::AcqRel);
}

/// The global heap's region itself, for scenario `bench`, which never calls
/// [`init_heap`] (the global heap stays empty: the bench allocates nothing
/// through it) and gives the region to the tieralloc heaps it measures.
///
/// # Safety
///
/// Call at most once, and never in a firmware that calls [`init_heap`]: the
/// caller owns the [`HEAP_BYTES`] bytes (512-aligned) from then on.
pub unsafe fn take_region() -> *mut u8 {
    addr_of_mut!(REGION).cast::<u8>()
}

/// Prints the heap statistics table.
pub fn print_stats() {
    let st = HEAP.stats();
    println!("--- heap statistics (tieralloc) ---");
    print!("{}", st);
    println!("---");
}

/// A reusable barrier for `n` harts (a generation count).
pub struct Barrier {
    count: AtomicUsize,
    generation: AtomicUsize,
}

impl Barrier {
    pub const fn new() -> Self {
        Barrier {
            count: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }
    /// Waits until `n` harts have called `wait(n)` in this generation;
    /// returns true on the last to arrive.
    pub fn wait(&self, n: usize) -> bool {
        let g = self.generation.load(Ordering::Acquire);
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == n {
            self.count.store(0, Ordering::Relaxed);
            self.generation.store(g.wrapping_add(1), Ordering::Release);
            return true;
        }
        while self.generation.load(Ordering::Acquire) == g {
            core::hint::spin_loop();
        }
        false
    }
}

impl Default for Barrier {
    fn default() -> Self {
        Self::new()
    }
}

/// A reusable barrier whose waiters sleep in `wfi` instead of spinning: the
/// last to arrive wakes every other hart with a software interrupt (CLINT
/// `msip`). For measurements under `-icount`, where QEMU runs the harts in
/// turn and a spinning hart would burn guest time that the others' work is
/// measured in. The wake-up needs `mie.MSIE`, which [`SleepBarrier::wait`]
/// sets; `mstatus.MIE` stays clear, so the interrupt only ends `wfi` and is
/// never taken (no trap). A spurious wake-up (a stale `msip`) just makes a
/// waiter look at the generation again.
pub struct SleepBarrier {
    count: AtomicUsize,
    generation: AtomicUsize,
}

impl SleepBarrier {
    pub const fn new() -> Self {
        SleepBarrier {
            count: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    /// Waits until `n` harts have called `wait(n, ..)` in this generation;
    /// the last to arrive runs `last` before it releases the others (and
    /// returns true).
    pub fn wait(&self, n: usize, last: impl FnOnce()) -> bool {
        let me = hart_id();
        // SAFETY: sets mie.MSIE so that a software interrupt ends `wfi`;
        // mstatus.MIE stays clear, so no interrupt is ever taken.
        unsafe { asm!("csrs mie, {0}", in(reg) 1usize << 3, options(nomem, nostack)) };
        let g = self.generation.load(Ordering::Acquire);
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == n {
            last();
            self.count.store(0, Ordering::Relaxed);
            self.generation.store(g.wrapping_add(1), Ordering::Release);
            for h in (0..HARTS).filter(|h| *h != me) {
                // SAFETY: hart h's msip word in the CLINT.
                unsafe { core::ptr::write_volatile((MSIP + 4 * h) as *mut u32, 1) };
            }
            return true;
        }
        loop {
            // SAFETY: our own msip word: cleared before the generation is
            // looked at, so a wake-up sent after the look keeps `wfi` from sleeping.
            unsafe { core::ptr::write_volatile((MSIP + 4 * me) as *mut u32, 0) };
            if self.generation.load(Ordering::Acquire) != g {
                return false;
            }
            // SAFETY: waits for the software interrupt (or returns at once if it is pending).
            unsafe { asm!("wfi", options(nomem, nostack)) };
        }
    }
}

impl Default for SleepBarrier {
    fn default() -> Self {
        Self::new()
    }
}

// ---- workload helpers ----

/// xorshift32: a small, fast RNG for sizes and lifetimes.
#[derive(Clone, Debug)]
pub struct Rng(u32);

impl Rng {
    pub const fn new(seed: u32) -> Self {
        Rng(if seed == 0 { 0x9e37_79b9 } else { seed })
    }
    pub fn next_u32(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
    /// Uniform in `lo..=hi` (near enough).
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.next_u32() as usize % (hi - lo + 1)
    }
}

/// A heap object whose bytes follow from a tag, so that any corruption (a
/// slot handed out twice, a stray write by the heap) is seen when it is checked.
pub struct Obj(Box<[u8]>);

impl Obj {
    /// `len` bytes, filled from `tag`.
    pub fn new(len: usize, tag: u32) -> Obj {
        let mut v: Vec<u8> = Vec::with_capacity(len);
        for i in 0..len {
            v.push(Self::byte(tag, i));
        }
        let o = Obj(v.into_boxed_slice());
        core::hint::black_box(o.addr());
        o
    }
    fn byte(tag: u32, i: usize) -> u8 {
        (tag.wrapping_mul(31).wrapping_add(i as u32 * 7) ^ (tag >> 8)) as u8
    }
    /// Whether the contents still are what `tag` made.
    pub fn check(&self, tag: u32) -> bool {
        self.0
            .iter()
            .enumerate()
            .all(|(i, b)| *b == Self::byte(tag, i))
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn addr(&self) -> usize {
        self.0.as_ptr() as usize
    }
}
