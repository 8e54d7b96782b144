//! Scenario `bench`: tieralloc against embedded-alloc's `LlffHeap` and
//! `TlsfHeap` and talc on 1, 2 and 4 harts at once, each driven through
//! `GlobalAlloc` (`alloc` and `dealloc` called directly; none is the global
//! allocator) over a 4 MiB region of its own: tieralloc over the global
//! heap's region (which this firmware never gives to the global heap), the
//! others over regions of this binary's `.bss` (16 MiB of the 32 MiB the
//! firmware is linked into). tieralloc is a `Heap<RegionSource,
//! LockedSlots<4>>` like the global heap: over 4 MiB it is tiered, with a
//! per-CPU cache per hart; the other three are one heap behind one lock
//! (embedded-alloc's `critical-section`, the board's cross-hart lock; talc's
//! `lock_api` spin lock).
//!
//! Workload per hart: 64 live slots of 8..=256 B, filled before the clock
//! starts; then `OPS` times: a random slot's block is checked (first, middle
//! and last byte) and freed, and a new one allocated and filled (one
//! operation = one free + one alloc). Every run builds a fresh heap value in
//! its static slot; hart 0 gives it the region, the `k` harts of the run
//! meet at a barrier (the others sleep in `wfi` at another), and guest time
//! runs from the barrier's release to the last finisher's arrival at the end
//! barrier (CLINT `mtime`; early finishers sleep). The rate is operations of
//! all `k` harts per µs of guest time.
//!
//! Under `-icount shift=0` (`make qemu-bench-riscv`) QEMU runs the harts in
//! turn, one instruction is one ns of guest time, and guest time counts the
//! instructions of every hart: a heap that scales perfectly keeps its 1-hart
//! rate at 4 harts, and a hart that spins on a lock held by a hart that is
//! not running burns guest time. Without `-icount` guest time follows the
//! host's clock. Three rounds; the median of each is reported.
#![no_std]
#![no_main]
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

use core::alloc::{GlobalAlloc, Layout};
use core::hint::black_box;
use core::mem::MaybeUninit;
use core::ptr::{self, addr_of, addr_of_mut};
use core::sync::atomic::{AtomicUsize, Ordering};

use riscv_qemu::{
    arm_slice_timer, check, check_in, hart_id, mtime, pass, println, set_slice_ticks, take_region,
    wait_all_harts, Rng, SleepBarrier, SliceRelax, HARTS, HEAP_BYTES, MTIME_HZ, TARGET,
};
use spin::Mutex;
use tieralloc::{Heap, LockedSlots, RegionSource};

type Tier = Heap<RegionSource, LockedSlots<HARTS, SliceRelax>>;
type Llff = embedded_alloc::LlffHeap;
type Tlsf = embedded_alloc::TlsfHeap;
type Talc = talc::TalcLock<spin::mutex::SpinMutex<(), SliceRelax>, talc::source::Manual>;

const HEAPS: [&str; 4] = ["tieralloc", "llff", "tlsf", "talc"];
const KS: [usize; 3] = [1, 2, 4];
const ROUNDS: usize = 3;
/// Operations (free + alloc) per hart per run.
const OPS: usize = 10_000;
/// How far ahead the running harts keep a timer deadline (10 µs: QEMU's
/// -icount slices become about 2,500 instructions, a few operations).
const SLICE_TICKS: u32 = 100;
/// Live slots per hart.
const N: usize = 64;

/// The peers' regions.
#[repr(C, align(512))]
struct Region([u8; HEAP_BYTES]);
static mut REGIONS: [Region; 3] = [const { Region([0; HEAP_BYTES]) }; 3];

// One slot per heap: hart 0 writes a fresh value into it before every run.
static mut TIER: MaybeUninit<Tier> = MaybeUninit::uninit();
static mut LLFF: MaybeUninit<Llff> = MaybeUninit::uninit();
static mut TLSF: MaybeUninit<Tlsf> = MaybeUninit::uninit();
static mut TALC: MaybeUninit<Talc> = MaybeUninit::uninit();

fn hart_slot() -> usize {
    hart_id()
}

/// Every hart, around each run (the harts not in it sleep here).
static ALL: SleepBarrier = SleepBarrier::new();
/// The run's harts, at the start and at the end of the timed loop.
static START: SleepBarrier = SleepBarrier::new();
static END: SleepBarrier = SleepBarrier::new();
/// The run: heap index and hart count (written by hart 0 before `ALL`).
static HEAP_NOW: AtomicUsize = AtomicUsize::new(0);
static K_NOW: AtomicUsize = AtomicUsize::new(0);
/// Set by hart 0 when the bench is over.
static OVER: AtomicUsize = AtomicUsize::new(0);
/// mtime at the start's release and at the last finisher.
static TIMES: Mutex<(u64, u64)> = Mutex::new((0, 0));

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

/// One hart's part of a run of `k` harts on `a`.
///
/// # Safety
///
/// `a` is a fresh heap, used only by the run's harts until the run ends.
unsafe fn run<A: GlobalAlloc>(a: &A, k: usize, seed: u32) {
    let mut rng = Rng::new(seed);
    let mut ptrs = [ptr::null_mut::<u8>(); N];
    let mut sizes = [0usize; N];
    let mut tags = [0u32; N];
    let mut tag = seed;
    for i in 0..N {
        tag = tag.wrapping_add(1);
        sizes[i] = rng.range(8, 256);
        tags[i] = tag;
        ptrs[i] = get(a, sizes[i], tag);
    }
    START.wait(k, || TIMES.lock().0 = mtime());
    for op in 0..OPS {
        if op % 16 == 0 {
            arm_slice_timer(SLICE_TICKS as u64);
        }
        let i = rng.next_u32() as usize % N;
        put(a, ptrs[i], sizes[i], tags[i]);
        tag = tag.wrapping_add(1);
        sizes[i] = rng.range(8, 256);
        tags[i] = tag;
        ptrs[i] = get(a, sizes[i], tag);
    }
    END.wait(k, || TIMES.lock().1 = mtime());
    for i in 0..N {
        put(a, ptrs[i], sizes[i], tags[i]);
    }
}

/// Hart 0: a fresh heap `h` in its slot over its region.
fn setup(h: usize, tier_region: *mut u8) {
    // SAFETY: each slot is written with a fresh heap value before the region
    // is given to it, by hart 0 while the other harts sleep at `ALL`; the
    // previous run's heap freed every block and is never used again, so the
    // region is this heap's alone.
    unsafe {
        match h {
            0 => {
                let t = (*addr_of_mut!(TIER)).write(Heap::new(
                    RegionSource::empty(),
                    LockedSlots::new(hart_slot),
                ));
                if t.source().try_set_region(tier_region, HEAP_BYTES).is_err() {
                    check!(false, "bench: tieralloc refused the region");
                }
                check!(
                    !t.is_fine(),
                    "bench: the 4 MiB tieralloc heap is fine, not tiered"
                );
            }
            1 => {
                let r = addr_of_mut!(REGIONS[0]) as usize;
                (*addr_of_mut!(LLFF))
                    .write(Llff::empty())
                    .init(r, HEAP_BYTES);
            }
            2 => {
                let r = addr_of_mut!(REGIONS[1]) as usize;
                (*addr_of_mut!(TLSF))
                    .write(Tlsf::empty())
                    .init(r, HEAP_BYTES);
            }
            _ => {
                let r = addr_of_mut!(REGIONS[2]).cast::<u8>();
                let l = (*addr_of_mut!(TALC)).write(Talc::new(talc::source::Manual));
                check!(
                    l.lock().claim(r, HEAP_BYTES).is_some(),
                    "bench: talc refused the region"
                );
            }
        }
    }
}

/// Every hart: its part of the run hart 0 set up (if it is in it).
fn part(hart: usize, round: usize) {
    let h = HEAP_NOW.load(Ordering::Relaxed);
    let k = K_NOW.load(Ordering::Relaxed);
    if hart >= k {
        return;
    }
    let seed = 0x1234_5678 ^ ((round as u32) << 8) ^ ((hart as u32) << 16) ^ (k as u32) << 24;
    // SAFETY: hart 0 wrote slot `h` before `ALL` released this hart (the
    // barrier orders it), and the run's harts are the only users until `ALL`.
    unsafe {
        match h {
            0 => run((*addr_of!(TIER)).assume_init_ref(), k, seed),
            1 => run((*addr_of!(LLFF)).assume_init_ref(), k, seed),
            2 => run((*addr_of!(TLSF)).assume_init_ref(), k, seed),
            _ => run((*addr_of!(TALC)).assume_init_ref(), k, seed),
        }
    }
}

/// A fixed-point number: the value, and its decimals.
#[derive(Clone, Copy)]
struct Fx(u64, u32);

impl core::fmt::Display for Fx {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let d = 10u64.pow(self.1);
        write!(f, "{}.{:0w$}", self.0 / d, self.0 % d, w = self.1 as usize)
    }
}

// The results are indexed [heap][hart count][round], the loops run rounds outermost.
#[allow(clippy::needless_range_loop)]
#[no_mangle]
extern "C" fn hart_main(hart: usize) -> ! {
    if hart != 0 {
        check_in();
        let mut round = 0;
        loop {
            ALL.wait(HARTS, || ());
            if OVER.load(Ordering::Acquire) != 0 {
                loop {
                    core::hint::spin_loop();
                }
            }
            part(hart, round / (HEAPS.len() * KS.len()));
            ALL.wait(HARTS, || ());
            round += 1;
        }
    }
    wait_all_harts();
    set_slice_ticks(SLICE_TICKS);
    // SAFETY: called once; this firmware never calls init_heap.
    let tier_region = unsafe { take_region() };
    println!(
        "riscv: bench on virt ({}), {} harts; tieralloc (Heap<RegionSource, LockedSlots<4, SliceRelax>>), llff, tlsf, talc, each over its own {} KiB region; churn 8..=256 B, {} live per hart, {} ops per hart; {} rounds, medians",
        TARGET,
        HARTS,
        HEAP_BYTES / 1024,
        N,
        OPS,
        ROUNDS
    );
    // ticks[heap][k][round]
    let mut ticks = [[[0u64; ROUNDS]; 3]; 4];
    for round in 0..ROUNDS {
        for h in 0..HEAPS.len() {
            for (ki, k) in KS.iter().enumerate() {
                setup(h, tier_region);
                HEAP_NOW.store(h, Ordering::Relaxed);
                K_NOW.store(*k, Ordering::Relaxed);
                ALL.wait(HARTS, || ());
                part(0, round);
                ALL.wait(HARTS, || ());
                let (t0, t1) = *TIMES.lock();
                check!(t1 > t0, "bench: no time passed ({} .. {})", t0, t1);
                ticks[h][ki][round] = t1 - t0;
            }
        }
    }
    OVER.store(1, Ordering::Release);
    ALL.wait(HARTS, || ());
    // Rates in thousandths of an operation per µs (10 mtime ticks).
    let mut rate = [[0u64; 3]; 4];
    for h in 0..HEAPS.len() {
        for (ki, k) in KS.iter().enumerate() {
            let mut v = ticks[h][ki];
            v.sort_unstable();
            let t = v[ROUNDS / 2];
            let ops = (OPS * k) as u64;
            rate[h][ki] = ops * 1000 * (MTIME_HZ / 1_000_000) / t;
        }
    }
    let unit = "operations per us of guest time, all harts together; one operation = free + alloc";
    for (ki, k) in KS.iter().enumerate() {
        println!(
            "bench: churn 8..=256 B, {} live per hart, {} hart{}: {} {}, {} {}, {} {}, {} {} ({})",
            N,
            k,
            if *k == 1 { "" } else { "s" },
            HEAPS[0],
            Fx(rate[0][ki], 3),
            HEAPS[1],
            Fx(rate[1][ki], 3),
            HEAPS[2],
            Fx(rate[2][ki], 3),
            HEAPS[3],
            Fx(rate[3][ki], 3),
            unit
        );
    }
    let ratio = |h: usize, ki: usize| Fx(rate[h][ki] * 100 / rate[h][0].max(1), 2);
    println!(
        "bench: scaling 4 harts / 1 hart: {} {}, {} {}, {} {}, {} {} (rate at 4 harts / rate at 1 hart)",
        HEAPS[0],
        ratio(0, 2),
        HEAPS[1],
        ratio(1, 2),
        HEAPS[2],
        ratio(2, 2),
        HEAPS[3],
        ratio(3, 2)
    );
    println!();
    println!("| heap | 1 hart | 2 harts | 4 harts | 4 harts / 1 hart |");
    println!("|------|-------:|--------:|--------:|-----------------:|");
    for h in 0..HEAPS.len() {
        println!(
            "| {} | {} | {} | {} | {} |",
            HEAPS[h],
            Fx(rate[h][0], 3),
            Fx(rate[h][1], 3),
            Fx(rate[h][2], 3),
            ratio(h, 2)
        );
    }
    println!();
    println!("riscv: bench ok");
    pass()
}
