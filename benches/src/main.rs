//! tieralloc-bench: single-threaded allocator comparison, every allocator driven
//! through `core::alloc::GlobalAlloc` in the same process.
//!
//! Run (from the repository root):
//!
//! ```text
//! cargo run --release -p tieralloc-bench               # full run (well under 2 minutes on 2 cores)
//! cargo run --release -p tieralloc-bench -- --quick    # smoke run, a second or two (used by `make test`)
//! cargo run --release -p tieralloc-bench -- --rounds 9 --only churn
//! ```
//!
//! Workloads (sizes and operation sequences are generated once per workload from a
//! fixed seed, before any timing, and replayed identically for every allocator):
//!
//! * `pairs-64`   alloc(64 B, align 8) then dealloc, N times.
//! * `pairs-skew` the same with sizes drawn uniformly from 8..=512.
//! * `churn-512`  a pool of 10,000 live objects, sizes `rand(4..rand(16..512))` (talc's skew);
//!   each step frees a random slot and allocates a new size there, or (1/7 of
//!   the steps) reallocs the slot to a new size. Every object carries a tag at its
//!   start and end that is verified before it is freed or reallocated (the run
//!   aborts loudly on a mismatch). The initial fill and the final drain are not timed.
//! * `churn-32k`  the same with 2,000 live objects, max 32 KiB.
//! * `churn-1m`   the same with 200 live objects, max 1 MiB.
//!
//! One op = one alloc+free pair or one realloc. Rounds are interleaved (round r runs
//! every allocator once, then round r+1 starts) and the median round is reported.
//!
//! The binary's own `#[global_allocator]` stays the system allocator: the allocators
//! under test only see the requests the workloads make through them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::process;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use linked_list_allocator::LockedHeap;

// ---------------------------------------------------------------------------
// The allocators under test.
// ---------------------------------------------------------------------------

/// tieralloc as a hosted program would use it (mmap arenas, per-CPU caches).
static TIERALLOC: tieralloc::LinuxHeap = tieralloc::LinuxHeap::new();

/// Name used for the ratio column against linked_list_allocator.
const LLA: &str = "linked_list";
/// Name used for the ratio column against glibc malloc.
const SYSTEM: &str = "system";

/// Every allocator the benchmark runs, in table order. Adding an allocator is one
/// line here, e.g. `contender("mimalloc", &mimalloc::MiMalloc)`, or for an arena
/// allocator `contender("talc", talc_heap())` with a helper like [`lla_heap`].
fn contenders() -> Vec<Contender> {
    vec![
        contender("tieralloc", &TIERALLOC),
        contender(SYSTEM, &System),
        contender(LLA, lla_heap()),
    ]
}

/// Bytes reserved (MAP_NORESERVE, touched on demand) for each arena allocator.
/// The largest live set is churn-1m's: 200 objects averaging ~256 KiB, ~50 MiB.
const ARENA_BYTES: usize = 1 << 30;

/// Maps an anonymous, lazily backed arena of `bytes`; never unmapped.
fn mmap_arena(bytes: usize) -> *mut u8 {
    // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        eprintln!(
            "tieralloc-bench: mmap of a {bytes}-byte arena failed: {}",
            std::io::Error::last_os_error()
        );
        process::exit(2);
    }
    p.cast()
}

/// linked_list_allocator over one [`ARENA_BYTES`] arena, initialised on first use.
fn lla_heap() -> &'static LockedHeap {
    static HEAP: LockedHeap = LockedHeap::empty();
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let base = mmap_arena(ARENA_BYTES);
        // SAFETY: the arena is valid, writable, unused by anything else, and lives
        // for the rest of the process; `OnceLock` makes this run once.
        unsafe { HEAP.lock().init(base, ARENA_BYTES) };
    });
    &HEAP
}

/// An allocator with its workloads monomorphised for it (no dynamic dispatch per op).
struct Contender {
    name: &'static str,
    run: Box<dyn Fn(&Workload) -> Duration>,
}

fn contender<A: GlobalAlloc + Sync + 'static>(name: &'static str, a: &'static A) -> Contender {
    Contender {
        name,
        run: Box::new(move |w: &Workload| w.run(a, name)),
    }
}

// ---------------------------------------------------------------------------
// Deterministic inputs.
// ---------------------------------------------------------------------------

/// xorshift64* (Vigna): small, fast, and the same sequence on every run.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `lo..hi` (`lo < hi`).
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        debug_assert!(lo < hi);
        lo + ((self.next_u64() as u128 * (hi - lo) as u128) >> 64) as usize
    }
    /// talc's skewed size: `rand(4..rand(16..max))`.
    fn skew(&mut self, max: usize) -> usize {
        let hi = self.range(16, max);
        self.range(4, hi)
    }
}

/// One churn step: the slot to replace and the new size; the top bit marks a realloc.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Step(u32, u32);

const REALLOC_BIT: u32 = 1 << 31;

impl Step {
    fn slot(self) -> usize {
        self.0 as usize
    }
    fn size(self) -> usize {
        (self.1 & !REALLOC_BIT) as usize
    }
    fn is_realloc(self) -> bool {
        self.1 & REALLOC_BIT != 0
    }
}

#[derive(PartialEq, Eq, Debug)]
struct ChurnPlan {
    /// Sizes of the initial fill, one per slot.
    init: Vec<u32>,
    steps: Vec<Step>,
}

impl ChurnPlan {
    fn new(seed: u64, live: usize, max: usize, steps: usize) -> Self {
        assert!(max < REALLOC_BIT as usize && live <= u32::MAX as usize);
        let mut rng = Rng::new(seed);
        let init = (0..live).map(|_| rng.skew(max) as u32).collect();
        let steps = (0..steps)
            .map(|_| {
                let slot = rng.range(0, live) as u32;
                let realloc = rng.range(0, 7) == 0;
                let size = rng.skew(max) as u32;
                Step(slot, size | if realloc { REALLOC_BIT } else { 0 })
            })
            .collect();
        ChurnPlan { init, steps }
    }
}

enum Shape {
    /// Alloc+free pairs of one size.
    PairsFixed {
        size: usize,
        n: u64,
    },
    /// Alloc+free pairs cycling through a pre-generated ring of sizes (a power of two long).
    PairsRing {
        sizes: Vec<u16>,
        n: u64,
    },
    Churn(ChurnPlan),
}

struct Workload {
    name: &'static str,
    shape: Shape,
}

impl Workload {
    fn ops(&self) -> u64 {
        match &self.shape {
            Shape::PairsFixed { n, .. } | Shape::PairsRing { n, .. } => *n,
            Shape::Churn(p) => p.steps.len() as u64,
        }
    }

    /// Runs the workload once on `a`; returns the timed part.
    fn run<A: GlobalAlloc + ?Sized>(&self, a: &A, who: &str) -> Duration {
        match &self.shape {
            Shape::PairsFixed { size, n } => pairs_fixed(a, *size, *n),
            Shape::PairsRing { sizes, n } => pairs_ring(a, sizes, *n),
            Shape::Churn(plan) => churn(a, plan, who, self.name),
        }
    }
}

/// Ops per workload; `scale` divides them for `--quick`.
fn workloads(scale: u64) -> Vec<Workload> {
    let pairs = 20_000_000 / scale;
    let mut ring = Rng::new(0x5eed_0002);
    let sizes = (0..1 << 16).map(|_| ring.range(8, 513) as u16).collect();
    vec![
        Workload {
            name: "pairs-64",
            shape: Shape::PairsFixed { size: 64, n: pairs },
        },
        Workload {
            name: "pairs-skew",
            shape: Shape::PairsRing { sizes, n: pairs },
        },
        Workload {
            name: "churn-512",
            shape: Shape::Churn(ChurnPlan::new(
                0x5eed_0003,
                10_000,
                512,
                (200_000 / scale) as usize,
            )),
        },
        Workload {
            name: "churn-32k",
            shape: Shape::Churn(ChurnPlan::new(
                0x5eed_0004,
                2_000,
                32 << 10,
                (400_000 / scale) as usize,
            )),
        },
        Workload {
            name: "churn-1m",
            shape: Shape::Churn(ChurnPlan::new(
                0x5eed_0005,
                200,
                1 << 20,
                (100_000 / scale) as usize,
            )),
        },
    ]
}

// ---------------------------------------------------------------------------
// Workloads.
// ---------------------------------------------------------------------------

const ALIGN: usize = 8;

fn layout(size: usize) -> Layout {
    match Layout::from_size_align(size, ALIGN) {
        Ok(l) => l,
        Err(_) => unreachable!("bad benchmark layout {size}"),
    }
}

#[cold]
#[inline(never)]
fn out_of_memory(size: usize) -> ! {
    eprintln!("tieralloc-bench: allocation of {size} bytes (align {ALIGN}) returned null");
    process::abort()
}

fn pairs_fixed<A: GlobalAlloc + ?Sized>(a: &A, size: usize, n: u64) -> Duration {
    let l = layout(size);
    let t = Instant::now();
    for i in 0..n {
        // SAFETY: `l` has a non-zero size; `p` is freed with the layout it was allocated with.
        unsafe {
            let p = a.alloc(l);
            if p.is_null() {
                out_of_memory(size)
            }
            p.write(i as u8);
            a.dealloc(black_box(p), l);
        }
    }
    t.elapsed()
}

fn pairs_ring<A: GlobalAlloc + ?Sized>(a: &A, sizes: &[u16], n: u64) -> Duration {
    assert!(sizes.len().is_power_of_two());
    let mask = sizes.len() - 1;
    let t = Instant::now();
    for i in 0..n {
        let size = sizes[i as usize & mask] as usize;
        let l = layout(size);
        // SAFETY: as in `pairs_fixed`.
        unsafe {
            let p = a.alloc(l);
            if p.is_null() {
                out_of_memory(size)
            }
            p.write(i as u8);
            a.dealloc(black_box(p), l);
        }
    }
    t.elapsed()
}

/// A live object of the churn pool, tagged at both ends.
struct Obj {
    ptr: *mut u8,
    size: usize,
    tag: u32,
}

/// The word written at the end of an object, derived from its tag.
fn tail_of(tag: u32) -> u32 {
    tag.rotate_left(16) ^ 0xA5C3_5A3C
}

/// Tag of the object that step `step` puts into `slot` (step 0 = initial fill).
fn tag_for(slot: usize, step: usize) -> u32 {
    (step as u32).wrapping_mul(0x9E37_79B1) ^ (slot as u32).wrapping_mul(0x85EB_CA77) ^ 0x1234_5678
}

/// Bytes of tag at each end of an object of `size >= 4` bytes: 4, or `size / 2`
/// for objects under 8 bytes so that head and tail never overlap.
fn tag_len(size: usize) -> usize {
    (size / 2).min(4)
}

/// Writes the low `n` bytes of `v` (little-endian) at `p`.
/// # Safety
/// `p..p+n` is writable, `n <= 4`.
unsafe fn put(p: *mut u8, v: u32, n: usize) {
    // SAFETY: caller.
    unsafe { std::ptr::copy_nonoverlapping(v.to_le_bytes().as_ptr(), p, n) }
}

/// Reads `n` bytes at `p` as the low bytes of a little-endian word.
/// # Safety
/// `p..p+n` is readable, `n <= 4`.
unsafe fn get(p: *const u8, n: usize) -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: caller.
    unsafe { std::ptr::copy_nonoverlapping(p, b.as_mut_ptr(), n) };
    u32::from_le_bytes(b)
}

/// The low `n` bytes of `v`.
fn low(v: u32, n: usize) -> u32 {
    if n >= 4 {
        v
    } else {
        v & ((1 << (8 * n)) - 1)
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Corruption {
    what: &'static str,
    expected: u32,
    found: u32,
}

impl Obj {
    /// # Safety
    /// `size >= 4`; the object must later be freed through the same allocator.
    unsafe fn new<A: GlobalAlloc + ?Sized>(a: &A, size: usize, tag: u32) -> Obj {
        // SAFETY: size >= 4, so the layout is non-zero.
        let ptr = unsafe { a.alloc(layout(size)) };
        if ptr.is_null() {
            out_of_memory(size)
        }
        let o = Obj { ptr, size, tag };
        // SAFETY: `ptr` is a fresh allocation of `size` bytes.
        unsafe { o.stamp() };
        o
    }

    /// Writes the head and tail tags.
    /// # Safety
    /// `ptr` is a live allocation of at least `size >= 4` bytes.
    unsafe fn stamp(&self) {
        let n = tag_len(self.size);
        // SAFETY: both ranges are in bounds and disjoint (2 * n <= size).
        unsafe {
            put(self.ptr, self.tag, n);
            put(self.ptr.add(self.size - n), tail_of(self.tag), n);
        }
    }

    /// The head tag as stored now.
    fn head(&self) -> u32 {
        // SAFETY: `self` is live (an Obj only ever describes a live allocation of `size` bytes).
        unsafe { get(self.ptr, tag_len(self.size)) }
    }

    fn verify(&self) -> Result<(), Corruption> {
        let n = tag_len(self.size);
        let head = self.head();
        // SAFETY: as in `head`.
        let tail = unsafe { get(self.ptr.add(self.size - n), n) };
        if head != low(self.tag, n) {
            return Err(Corruption {
                what: "head tag",
                expected: low(self.tag, n),
                found: head,
            });
        }
        if tail != low(tail_of(self.tag), n) {
            return Err(Corruption {
                what: "tail tag",
                expected: low(tail_of(self.tag), n),
                found: tail,
            });
        }
        Ok(())
    }

    /// # Safety
    /// The object was allocated by `a` and is not used afterwards.
    unsafe fn free<A: GlobalAlloc + ?Sized>(&self, a: &A) {
        // SAFETY: allocated by `a` with this layout (caller).
        unsafe { a.dealloc(self.ptr, layout(self.size)) }
    }

    /// Reallocs to `new_size` with a new tag; checks that the head survived the move.
    /// # Safety
    /// The object was allocated by `a`; `new_size >= 4`.
    unsafe fn realloc<A: GlobalAlloc + ?Sized>(
        &mut self,
        a: &A,
        new_size: usize,
        tag: u32,
    ) -> Result<(), Corruption> {
        let kept = tag_len(self.size);
        // SAFETY: allocated by `a` with this layout; new_size is non-zero and small.
        let p = unsafe { a.realloc(self.ptr, layout(self.size), new_size) };
        if p.is_null() {
            out_of_memory(new_size)
        }
        self.ptr = p;
        self.size = new_size;
        // SAFETY: the first min(old, new) >= 4 >= kept bytes were copied over.
        let head = unsafe { get(p, kept) };
        if head != low(self.tag, kept) {
            return Err(Corruption {
                what: "head tag after realloc",
                expected: low(self.tag, kept),
                found: head,
            });
        }
        self.tag = tag;
        // SAFETY: live allocation of `new_size` bytes.
        unsafe { self.stamp() };
        Ok(())
    }
}

#[cold]
#[inline(never)]
fn corrupted(who: &str, workload: &str, slot: usize, o: &Obj, c: Corruption) -> ! {
    eprintln!(
        "tieralloc-bench: HEAP CORRUPTION in allocator `{who}`, workload `{workload}`: slot {slot}, \
         object {:p} of {} bytes: {} is {:#010x}, expected {:#010x}",
        o.ptr, o.size, c.what, c.found, c.expected
    );
    process::abort()
}

fn churn<A: GlobalAlloc + ?Sized>(a: &A, plan: &ChurnPlan, who: &str, workload: &str) -> Duration {
    // Untimed fill.
    let mut pool: Vec<Obj> = plan
        .init
        .iter()
        .enumerate()
        // SAFETY: sizes are >= 4; every object is freed through `a` below.
        .map(|(slot, &size)| unsafe { Obj::new(a, size as usize, tag_for(slot, 0)) })
        .collect();

    let t = Instant::now();
    for (k, &step) in plan.steps.iter().enumerate() {
        let slot = step.slot();
        let o = &mut pool[slot];
        if let Err(c) = o.verify() {
            corrupted(who, workload, slot, o, c)
        }
        let tag = tag_for(slot, k + 1);
        if step.is_realloc() {
            // SAFETY: `o` came from `a`; sizes are >= 4.
            if let Err(c) = unsafe { o.realloc(a, step.size(), tag) } {
                corrupted(who, workload, slot, o, c)
            }
        } else {
            // SAFETY: `o` came from `a` and is replaced right away.
            unsafe {
                o.free(a);
                *o = Obj::new(a, step.size(), tag);
            }
        }
    }
    let elapsed = t.elapsed();

    // Untimed drain, checking every survivor.
    for (slot, o) in pool.iter().enumerate() {
        if let Err(c) = o.verify() {
            corrupted(who, workload, slot, o, c)
        }
        // SAFETY: `o` came from `a`; the pool is dropped right after.
        unsafe { o.free(a) };
    }
    elapsed
}

// ---------------------------------------------------------------------------
// Driver and report.
// ---------------------------------------------------------------------------

struct Options {
    quick: bool,
    rounds: usize,
    only: Option<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: tieralloc-bench [--quick] [--rounds N] [--only SUBSTRING]\n\
         \n  --quick         shrink every workload (smoke run, used by `make test`)\
         \n  --rounds N      interleaved rounds per workload, median reported (default 5, quick 3)\
         \n  --only SUBSTR   run only the workloads whose name contains SUBSTR"
    );
    process::exit(2)
}

fn parse_args() -> Options {
    let mut quick = false;
    let mut rounds = None;
    let mut only = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--rounds" => {
                rounds = Some(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .filter(|&r| r > 0)
                        .unwrap_or_else(|| usage()),
                )
            }
            "--only" => only = Some(args.next().unwrap_or_else(|| usage())),
            "-h" | "--help" => usage(),
            _ => {
                eprintln!("tieralloc-bench: unknown argument `{a}`");
                usage()
            }
        }
    }
    Options {
        quick,
        rounds: rounds.unwrap_or(if quick { 3 } else { 5 }),
        only,
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Results of one workload: per contender, Mops/s of every round.
fn run_workload(w: &Workload, cs: &[Contender], rounds: usize) -> Vec<Vec<f64>> {
    let ops = w.ops() as f64;
    let mut mops = vec![Vec::with_capacity(rounds); cs.len()];
    for round in 0..rounds {
        // Every allocator once per round; the starting allocator rotates so that no
        // allocator always runs first (cold caches) or right after a slow one.
        for k in 0..cs.len() {
            let i = (round + k) % cs.len();
            let d = (cs[i].run)(w);
            mops[i].push(ops / d.as_secs_f64().max(1e-9) / 1e6);
        }
    }
    mops
}

fn print_table(w: &Workload, cs: &[Contender], mops: &mut [Vec<f64>]) {
    let width = cs.iter().map(|c| c.name.len()).max().unwrap_or(9).max(9);
    let med: Vec<f64> = mops.iter_mut().map(|m| median(m)).collect();
    let base = |name: &str| cs.iter().position(|c| c.name == name).map(|i| med[i]);
    let (lla, sys) = (base(LLA), base(SYSTEM));
    println!("\n{}  ({} ops per round)", w.name, w.ops());
    println!(
        "  {:<width$}  {:>9}  {:>9}  {:>19}  {:>8}  {:>9}",
        "allocator", "Mops/s", "ns/op", "min..max Mops/s", "vs lla", "vs system"
    );
    for (i, c) in cs.iter().enumerate() {
        let ratio = |b: Option<f64>| b.map_or("-".to_string(), |b| format!("{:.2}x", med[i] / b));
        let (lo, hi) = (
            mops[i].first().copied().unwrap_or(0.0),
            mops[i].last().copied().unwrap_or(0.0),
        );
        println!(
            "  {:<width$}  {:>9.2}  {:>9.1}  {:>19}  {:>8}  {:>9}",
            c.name,
            med[i],
            1e3 / med[i],
            format!("{lo:.2}..{hi:.2}"),
            ratio(lla),
            ratio(sys)
        );
    }
}

fn main() {
    let opts = parse_args();
    let start = Instant::now();
    let cs = contenders();
    let ws: Vec<Workload> = workloads(if opts.quick { 100 } else { 1 })
        .into_iter()
        .filter(|w| opts.only.as_deref().is_none_or(|s| w.name.contains(s)))
        .collect();
    if ws.is_empty() {
        eprintln!(
            "tieralloc-bench: no workload matches --only {:?}",
            opts.only.unwrap_or_default()
        );
        process::exit(2);
    }

    println!(
        "tieralloc-bench{}: single thread, {} interleaved rounds, median round reported",
        if opts.quick { " --quick" } else { "" },
        opts.rounds
    );
    println!("  op = one alloc+free pair or one realloc; ratios are throughput (higher = faster)");
    for w in &ws {
        let mut mops = run_workload(w, &cs, opts.rounds);
        print_table(w, &cs, &mut mops);
    }
    println!("\ntotal {:.1} s", start.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_deterministic() {
        assert_eq!(
            ChurnPlan::new(7, 100, 512, 1000),
            ChurnPlan::new(7, 100, 512, 1000)
        );
        assert_ne!(
            ChurnPlan::new(7, 100, 512, 1000),
            ChurnPlan::new(8, 100, 512, 1000)
        );
    }

    #[test]
    fn skew_sizes_stay_in_range_and_realloc_is_about_one_in_seven() {
        let p = ChurnPlan::new(1, 50, 32 << 10, 70_000);
        assert!(p
            .init
            .iter()
            .all(|&s| (4..32 << 10).contains(&(s as usize))));
        assert!(p
            .steps
            .iter()
            .all(|s| (4..32 << 10).contains(&s.size()) && s.slot() < 50));
        let reallocs = p.steps.iter().filter(|s| s.is_realloc()).count();
        assert!((9_000..11_000).contains(&reallocs), "{reallocs}");
    }

    #[test]
    fn every_workload_runs_on_every_contender() {
        let cs = contenders();
        for w in workloads(10_000) {
            for c in &cs {
                (c.run)(&w);
            }
        }
    }

    #[test]
    fn a_clobbered_tag_is_caught() {
        // SAFETY: the object is freed through System at the end.
        unsafe {
            let mut o = Obj::new(&System, 40, 0xdead_beef);
            assert_eq!(o.verify(), Ok(()));
            o.ptr.add(39).write(0);
            assert_eq!(o.verify().unwrap_err().what, "tail tag");
            o.stamp();
            o.ptr.write(1);
            assert_eq!(o.verify().unwrap_err().what, "head tag");
            o.stamp();
            assert_eq!(o.realloc(&System, 4000, 1), Ok(()));
            assert_eq!(o.verify(), Ok(()));
            assert_eq!(o.realloc(&System, 5, 2), Ok(()));
            assert_eq!(o.verify(), Ok(()));
            o.ptr.add(4).write(!o.ptr.add(4).read());
            assert_eq!(o.verify().unwrap_err().what, "tail tag");
            o.free(&System);
        }
    }

    #[test]
    fn small_objects_keep_head_and_tail_apart() {
        for size in 4..16 {
            // SAFETY: freed through System below.
            unsafe {
                let o = Obj::new(&System, size, 0x0102_0304 ^ size as u32);
                assert_eq!(o.verify(), Ok(()), "size {size}");
                o.free(&System);
            }
        }
    }
}
