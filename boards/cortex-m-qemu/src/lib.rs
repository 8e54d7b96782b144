//! What every scenario of the Cortex-M board shares: the heap (tieralloc over
//! a 32 KiB region of the lm3s6965's 64 KiB of SRAM, every operation inside a
//! critical section), the semihosting console, the exit through `SYS_EXIT`,
//! the panic handler, a small RNG and the churn workload.
//!
//! Each scenario is one binary in `src/bin/`: it calls [`init_heap`] first
//! (except `bench`, which takes the region with [`take_region`] instead),
//! prints `cortex-m: <scenario> ok` as its last line and calls [`pass`]
//! (QEMU exits with status 0). A failed check, a panic or a fault prints the
//! reason and calls [`fail`] (QEMU exits with status 1).
#![no_std]
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::hint::black_box;
use core::ptr::addr_of_mut;

use cortex_m_rt::{exception, ExceptionFrame};
use cortex_m_semihosting::debug;
pub use cortex_m_semihosting::{hprint, hprintln};
use tieralloc::{CriticalSectionCpu, Heap, RegionSource};

/// Bytes of the heap region.
pub const HEAP_BYTES: usize = 32 * 1024;

/// The heap region, page-aligned so that all of it is usable (the region
/// heap's pages are 512 bytes).
#[repr(C, align(512))]
struct Region([u8; HEAP_BYTES]);

/// In `.bss`: cortex-m-rt zeroes it before `main`.
static mut REGION: Region = Region([0; HEAP_BYTES]);

/// The global allocator: one CPU slot, every heap operation inside
/// `critical_section::with` (cortex-m's single-core implementation masks
/// interrupts), so the SysTick handler may allocate and free.
#[global_allocator]
pub static HEAP: Heap<RegionSource, CriticalSectionCpu> =
    Heap::new(RegionSource::empty(), CriticalSectionCpu::new());

/// The target the firmware was built for.
pub const TARGET: &str = if cfg!(target_arch = "arm") && cfg!(target_has_atomic = "ptr") {
    "thumbv7m-none-eabi"
} else {
    "thumbv6m-none-eabi"
};

/// Gives the heap its region; call once, first thing in `main`, before any allocation.
pub fn init_heap(scenario: &str) {
    // SAFETY: called once at boot, before the first allocation; the region is a
    // static used by nothing else, handed over to the heap for good.
    let r = unsafe {
        HEAP.source()
            .try_set_region(addr_of_mut!(REGION).cast::<u8>(), HEAP_BYTES)
    };
    if let Err(e) = r {
        hprintln!("cortex-m: set_region refused the region: {}", e);
        fail();
    }
    hprintln!(
        "cortex-m: {} on lm3s6965evb ({}), tieralloc heap of {} KiB at {:p} (Heap static {} B)",
        scenario,
        TARGET,
        HEAP_BYTES / 1024,
        addr_of_mut!(REGION),
        core::mem::size_of_val(&HEAP)
    );
}

/// The heap region itself, for scenario `bench`, which never calls
/// [`init_heap`] (the global heap stays empty: the bench allocates nothing
/// through it) and hands the region to one benchmarked heap at a time.
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
    // Taken first: printing runs with interrupts masked, the snapshot need not.
    let st = HEAP.stats();
    hprintln!("--- heap statistics (tieralloc) ---");
    hprint!("{}", st);
    hprintln!("---");
}

/// Exits QEMU with status 0.
pub fn pass() -> ! {
    debug::exit(debug::EXIT_SUCCESS);
    loop {
        cortex_m::asm::bkpt();
    }
}

/// Exits QEMU with status 1.
pub fn fail() -> ! {
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::bkpt();
    }
}

/// Fails the scenario with a message unless `cond` holds.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            $crate::hprintln!("CHECK FAILED: {}", format_args!($($arg)+));
            $crate::fail();
        }
    };
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    cortex_m::interrupt::disable();
    hprintln!("PANIC: {}", info);
    fail()
}

#[exception]
unsafe fn HardFault(ef: &ExceptionFrame) -> ! {
    hprintln!("HARD FAULT: {:?}", ef);
    fail()
}

#[exception]
unsafe fn DefaultHandler(irqn: i16) {
    hprintln!("unexpected exception or interrupt {}", irqn);
    fail()
}

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
        Obj(v.into_boxed_slice())
    }
    fn byte(tag: u32, i: usize) -> u8 {
        (tag.wrapping_mul(31).wrapping_add(i as u32 * 7) ^ (tag >> 8)) as u8
    }
    /// The tag its contents were made from (kept in the first bytes' pattern).
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

/// Live objects of the churn: a few long-lived ones, replaced rarely, and
/// short-lived ones, replaced at every operation.
pub struct Churn {
    rng: Rng,
    long: Vec<Option<(Obj, u32)>>,
    short: Vec<Option<(Obj, u32)>>,
    tag: u32,
    /// Operations (one allocation, and a free once the slot is full).
    pub ops: u64,
    /// Bytes allocated, cumulative.
    pub bytes: u64,
}

/// Smallest and largest object of the churn.
pub const MIN_OBJ: usize = 8;
pub const MAX_OBJ: usize = 256;

impl Churn {
    /// `long` long-lived and `short` short-lived slots.
    pub fn new(seed: u32, long: usize, short: usize) -> Churn {
        let mut c = Churn {
            rng: Rng::new(seed),
            long: Vec::with_capacity(long),
            short: Vec::with_capacity(short),
            tag: seed,
            ops: 0,
            bytes: 0,
        };
        c.long.resize_with(long, || None);
        c.short.resize_with(short, || None);
        c
    }

    /// One operation: replace a random short-lived object, and one time in
    /// 64 a random long-lived one; every freed object's contents are checked.
    pub fn step(&mut self) {
        let r = self.rng.next_u32();
        let in_long = r & 63 == 0 && !self.long.is_empty();
        let n = if in_long {
            self.long.len()
        } else {
            self.short.len()
        };
        let i = (r >> 8) as usize % n;
        let len = self.rng.range(MIN_OBJ, MAX_OBJ);
        self.tag = self.tag.wrapping_add(0x9e37_79b9);
        let tag = self.tag;
        let slot = if in_long {
            &mut self.long[i]
        } else {
            &mut self.short[i]
        };
        if let Some((o, t)) = slot.take() {
            check!(
                o.check(t),
                "churn: object at {:#x} ({} B) corrupted",
                o.addr(),
                o.len()
            );
            drop(o);
        }
        let o = Obj::new(len, tag);
        black_box(o.addr());
        *slot = Some((o, tag));
        self.ops += 1;
        self.bytes += len as u64;
    }

    /// Checks every live object and frees them all.
    pub fn finish(&mut self) -> usize {
        let mut n = 0;
        for slot in self.long.iter_mut().chain(self.short.iter_mut()) {
            if let Some((o, t)) = slot.take() {
                check!(o.check(t), "churn: object at {:#x} corrupted", o.addr());
                n += 1;
            }
        }
        n
    }
}
