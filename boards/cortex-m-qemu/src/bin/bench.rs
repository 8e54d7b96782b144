//! Scenario `bench`: tieralloc against embedded-alloc's `LlffHeap` and
//! `TlsfHeap` and talc, each driven through `GlobalAlloc` (`alloc`, `dealloc`,
//! `realloc` called directly; none is the global allocator) over the same
//! 32 KiB static region: four regions of 32 KiB do not fit the 64 KiB of SRAM,
//! so every slice builds a fresh heap value in its own static slot, gives it
//! the region, runs one workload and abandons it (every block freed) before
//! the next heap gets the region.
//!
//! The clock is SysTick as a free-running 24-bit down counter at the core
//! clock (reload 0xFF_FFFF; its exception counts the wraps). Numbers are ticks
//! of the machine's 12 MHz SysTick clock per operation, in QEMU's guest time:
//! without `-icount` it follows the host's time, with `-icount shift=0` one
//! tick is 83⅓ guest instructions; either way they compare the heaps with each
//! other, not with real silicon. Five rounds; in each,
//! every workload runs one slice per heap in turn; the median is reported.
#![no_std]
#![no_main]

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;
use core::hint::black_box;
use core::mem::MaybeUninit;
use core::ptr::{self, addr_of_mut};
use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_qemu::{check, hprintln, pass, take_region, Rng, HEAP_BYTES, TARGET};
use cortex_m_rt::{entry, exception};
use tieralloc::{CriticalSectionCpu, Heap, RegionSource};

type Tier = Heap<RegionSource, CriticalSectionCpu>;
type Llff = embedded_alloc::LlffHeap;
type Tlsf = embedded_alloc::TlsfHeap;
type Talc = talc::TalcLock<IrqLock, talc::source::Manual>;

/// talc's lock: masks interrupts like the critical sections of the other three
/// heaps (a spinlock would not build for thumbv6m, which has no compare-and-swap).
pub struct IrqLock {
    was_enabled: Cell<bool>,
}

// SAFETY: one core; the cell is only touched with interrupts masked.
unsafe impl Sync for IrqLock {}

// SAFETY: while locked, interrupts are masked on the only core, so nothing else
// runs that could take the lock (the bench never locks it twice).
unsafe impl lock_api::RawMutex for IrqLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: IrqLock = IrqLock {
        was_enabled: Cell::new(false),
    };
    type GuardMarker = lock_api::GuardNoSend;
    fn lock(&self) {
        let was = cortex_m::register::primask::read().is_inactive();
        cortex_m::interrupt::disable();
        self.was_enabled.set(was);
    }
    fn try_lock(&self) -> bool {
        self.lock();
        true
    }
    unsafe fn unlock(&self) {
        if self.was_enabled.get() {
            // SAFETY: interrupts were enabled when the lock was taken.
            unsafe { cortex_m::interrupt::enable() };
        }
    }
}

const HEAPS: [&str; 4] = ["tieralloc", "llff", "tlsf", "talc"];
const ROUNDS: usize = 5;
const RELOAD: u32 = 0x00FF_FFFF;

/// SysTick wraps (only the handler writes it: a load and a store, so it also builds for thumbv6m).
static WRAPS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    WRAPS.store(WRAPS.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// Core cycles since the clock started.
fn now() -> u64 {
    loop {
        let w = WRAPS.load(Ordering::Relaxed);
        let cvr = SYST::get_current();
        if WRAPS.load(Ordering::Relaxed) == w {
            return ((w as u64) << 24) + (RELOAD - cvr) as u64;
        }
    }
}

// One slot per heap: a fresh value is written into it before every slice.
static mut TIER: MaybeUninit<Tier> = MaybeUninit::uninit();
static mut LLFF: MaybeUninit<Llff> = MaybeUninit::uninit();
static mut TLSF: MaybeUninit<Tlsf> = MaybeUninit::uninit();
static mut TALC: MaybeUninit<Talc> = MaybeUninit::uninit();

/// The workloads; each returns (operations, result) where the result is cycles
/// (measured around the loop) or, for `eff`, tenths of a percent.
#[derive(Clone, Copy, PartialEq)]
enum Work {
    Churn,
    Lifo,
    Fifo,
    Grow,
    Eff,
}

const WORKS: [(Work, &str, &str); 5] = [
    (
        Work::Churn,
        "churn 8..=256 B, 64 live",
        "12 MHz SysTick ticks per free+alloc",
    ),
    (
        Work::Lifo,
        "lifo 64 x 64 B",
        "12 MHz SysTick ticks per alloc or free",
    ),
    (
        Work::Fifo,
        "fifo ring 64, 16..=256 B",
        "12 MHz SysTick ticks per free+alloc",
    ),
    (
        Work::Grow,
        "grow 16 B..8 KiB by realloc",
        "12 MHz SysTick ticks per alloc/realloc/free",
    ),
    (
        Work::Eff,
        "efficiency 8..=256 B until null",
        "% of the region live",
    ),
];

fn lay(size: usize) -> Layout {
    Layout::from_size_align(size, 4).unwrap()
}

fn pattern(tag: u32) -> u8 {
    (tag.wrapping_mul(0x9e37_79b9) >> 24) as u8 | 1
}

/// Allocates and fills `size` bytes from `tag`.
///
/// # Safety
///
/// `a` is an initialised heap.
unsafe fn get<A: GlobalAlloc>(a: &A, size: usize, tag: u32) -> *mut u8 {
    let p = black_box(a.alloc(lay(size)));
    check!(!p.is_null(), "bench: a {} B allocation failed", size);
    ptr::write_bytes(p, pattern(tag), size);
    p
}

/// Checks (first, middle and last byte) and frees what [`get`] returned.
///
/// # Safety
///
/// `p` came from [`get`] on `a` with `size` and `tag`, and is live.
unsafe fn put<A: GlobalAlloc>(a: &A, p: *mut u8, size: usize, tag: u32) {
    let b = pattern(tag);
    check!(
        *p == b && *p.add(size / 2) == b && *p.add(size - 1) == b,
        "bench: block at {:p} ({} B) corrupted",
        p,
        size
    );
    a.dealloc(p, lay(size));
}

const N: usize = 64;

/// Runs `w` on `a` (fresh over the region); returns (operations, cycles or tenths of %).
///
/// # Safety
///
/// `a` is a fresh heap over the [`HEAP_BYTES`] region, used by nothing else.
unsafe fn run<A: GlobalAlloc>(a: &A, w: Work, seed: u32) -> (u64, u64) {
    let mut rng = Rng::new(seed);
    let mut ptrs = [ptr::null_mut::<u8>(); N];
    let mut sizes = [0usize; N];
    let mut tags = [0u32; N];
    let mut tag = seed;
    match w {
        Work::Churn | Work::Fifo => {
            let (lo, hi) = if w == Work::Churn {
                (8, 256)
            } else {
                (16, 256)
            };
            for i in 0..N {
                tag = tag.wrapping_add(1);
                sizes[i] = rng.range(lo, hi);
                tags[i] = tag;
                ptrs[i] = get(a, sizes[i], tag);
            }
            const STEPS: usize = 2_000;
            let t = now();
            for s in 0..STEPS {
                let i = if w == Work::Churn {
                    rng.next_u32() as usize % N
                } else {
                    s % N
                };
                put(a, ptrs[i], sizes[i], tags[i]);
                tag = tag.wrapping_add(1);
                sizes[i] = rng.range(lo, hi);
                tags[i] = tag;
                ptrs[i] = get(a, sizes[i], tag);
            }
            let c = now() - t;
            for i in 0..N {
                put(a, ptrs[i], sizes[i], tags[i]);
            }
            (STEPS as u64, c)
        }
        Work::Lifo => {
            const BATCHES: usize = 40;
            let t = now();
            for _ in 0..BATCHES {
                for i in 0..N {
                    tag = tag.wrapping_add(1);
                    tags[i] = tag;
                    ptrs[i] = get(a, 64, tag);
                }
                for i in (0..N).rev() {
                    put(a, ptrs[i], 64, tags[i]);
                }
            }
            ((BATCHES * N * 2) as u64, now() - t)
        }
        Work::Grow => {
            const REPS: usize = 20;
            let mut ops = 0;
            let t = now();
            for r in 0..REPS {
                let b = (r as u8) | 1;
                let mut size = 16;
                let mut p = black_box(a.alloc(lay(size)));
                check!(!p.is_null(), "bench: grow: 16 B failed");
                ptr::write_bytes(p, b, size);
                ops += 1;
                while size < 8 * 1024 {
                    let q = black_box(a.realloc(p, lay(size), size * 2));
                    check!(
                        !q.is_null(),
                        "bench: grow: realloc to {} B failed",
                        size * 2
                    );
                    check!(
                        *q == b && *q.add(size - 1) == b,
                        "bench: grow: contents lost at {} B",
                        size
                    );
                    ptr::write_bytes(q.add(size), b, size);
                    p = q;
                    size *= 2;
                    ops += 1;
                }
                a.dealloc(p, lay(size));
                ops += 1;
            }
            (ops, now() - t)
        }
        Work::Eff => {
            // Blocks linked through their first word; their size in the second.
            let mut head: *mut u8 = ptr::null_mut();
            let mut live = 0usize;
            let mut n = 0u64;
            loop {
                let size = rng.range(8, 256);
                let p = black_box(a.alloc(lay(size)));
                if p.is_null() {
                    break;
                }
                p.cast::<*mut u8>().write(head);
                p.add(4).cast::<usize>().write(size);
                head = p;
                live += size;
                n += 1;
            }
            let mut freed = 0;
            while !head.is_null() {
                let next = head.cast::<*mut u8>().read();
                let size = head.add(4).cast::<usize>().read();
                a.dealloc(head, lay(size));
                freed += size;
                head = next;
            }
            check!(
                freed == live,
                "bench: efficiency: freed {} of {} B",
                freed,
                live
            );
            (n, (live as u64 * 1000) / HEAP_BYTES as u64)
        }
    }
}

/// One slice: a fresh heap `h` over `region`, workload `w`; (operations, result).
fn slice(h: usize, region: *mut u8, w: Work, seed: u32) -> (u64, u64) {
    // SAFETY: each slot is written with a fresh, never-initialised heap value
    // before the region is given to it; the heap of the previous slice freed
    // every block and is never used again, so the region is this heap's alone.
    unsafe {
        match h {
            0 => {
                let t = (*addr_of_mut!(TIER))
                    .write(Heap::new(RegionSource::empty(), CriticalSectionCpu::new()));
                if t.source().try_set_region(region, HEAP_BYTES).is_err() {
                    check!(false, "bench: tieralloc refused the region");
                }
                run(&*t, w, seed)
            }
            1 => {
                let l = (*addr_of_mut!(LLFF)).write(Llff::empty());
                l.init(region as usize, HEAP_BYTES);
                run(&*l, w, seed)
            }
            2 => {
                let l = (*addr_of_mut!(TLSF)).write(Tlsf::empty());
                l.init(region as usize, HEAP_BYTES);
                run(&*l, w, seed)
            }
            _ => {
                let l = (*addr_of_mut!(TALC)).write(Talc::new(talc::source::Manual));
                check!(
                    l.lock().claim(region, HEAP_BYTES).is_some(),
                    "bench: talc refused the region"
                );
                run(&*l, w, seed)
            }
        }
    }
}

/// A fixed-point number: the value, and its decimals (1 or 2).
#[derive(Clone, Copy)]
struct Fx(u64, u32);

impl core::fmt::Display for Fx {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let d = 10u64.pow(self.1);
        write!(f, "{}.{:0w$}", self.0 / d, self.0 % d, w = self.1 as usize)
    }
}

fn median(mut v: [u64; ROUNDS]) -> u64 {
    v.sort_unstable();
    v[ROUNDS / 2]
}

#[entry]
fn main() -> ! {
    // SAFETY: called once; this firmware never calls init_heap.
    let region = unsafe { take_region() };
    let mut cp = cortex_m::Peripherals::take().unwrap();
    cp.SYST.set_clock_source(SystClkSource::Core);
    cp.SYST.set_reload(RELOAD);
    cp.SYST.clear_current();
    cp.SYST.enable_interrupt();
    cp.SYST.enable_counter();
    hprintln!(
        "cortex-m: bench on lm3s6965evb ({}), one {} KiB region at {:p} for tieralloc, llff, tlsf, talc in turn; {} rounds, medians",
        TARGET,
        HEAP_BYTES / 1024,
        region,
        ROUNDS
    );
    // results[work][heap][round], operations of the last round.
    let mut res = [[[0u64; ROUNDS]; 4]; 5];
    let mut ops = [[0u64; 4]; 5];
    for round in 0..ROUNDS {
        for (wi, (w, _, _)) in WORKS.iter().enumerate() {
            let seed = 0x1234_5678 ^ ((round as u32) << 8) ^ wi as u32;
            for (h, (rh, oh)) in res[wi].iter_mut().zip(ops[wi].iter_mut()).enumerate() {
                let (n, r) = slice(h, region, *w, seed);
                check!(n > 0, "bench: no operations");
                rh[round] = r;
                *oh = n;
            }
        }
    }
    for (wi, (w, name, unit)) in WORKS.iter().enumerate() {
        let mut v = [Fx(0, 1); 4];
        for (h, x) in v.iter_mut().enumerate() {
            let m = median(res[wi][h]);
            // Cycles per operation in hundredths, or tenths of a percent.
            *x = if *w == Work::Eff {
                Fx(m, 1)
            } else {
                Fx(m * 100 / ops[wi][h], 2)
            };
        }
        hprintln!(
            "bench: {}: {} {}, {} {}, {} {}, {} {} ({})",
            name,
            HEAPS[0],
            v[0],
            HEAPS[1],
            v[1],
            HEAPS[2],
            v[2],
            HEAPS[3],
            v[3],
            unit
        );
    }
    hprintln!("cortex-m: bench ok");
    pass()
}
