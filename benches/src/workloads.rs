//! The workloads. Sizes and operation sequences are generated once per workload
//! from a fixed seed, before any timing, and replayed identically for every
//! allocator. Every workload calls the allocator under test only through
//! `GlobalAlloc`; its own bookkeeping (plans, pools, queues) lives in the
//! binary's global allocator (glibc) and is set up before the clock starts.
//!
//! | name | threads | one op | shape |
//! |---|---|---|---|
//! | `pairs-64` | 1 | alloc+free | alloc(64 B) then free: the fast path |
//! | `pairs-skew` | 1 | alloc+free | the same, sizes uniform in 8..=512 |
//! | `churn-512` | 1 | free+alloc or realloc | 10,000 live objects, sizes `rand(4..rand(16..512))` (talc's skew), 1/7 realloc, 1/8 of new objects 64-byte aligned |
//! | `churn-32k` | 1 | 〃 | 2,000 live objects up to 32 KiB |
//! | `churn-1m` | 1 | 〃 | 200 live objects up to 1 MiB |
//! | `xmalloc-1x1` | 2 | alloc + remote free | xmalloc-test: producers allocate (8..=256 B) into batches of 128, pass them through a queue; consumers free them |
//! | `xmalloc-4x4` | 8 | 〃 | 4 producers, 4 consumers |
//! | `larson-4` | 4 (+ successors) | free+alloc | larson server bleed: 4 lanes, each a pool of 1,000 objects (8..=1000 B) whose random slots are replaced; every 10,000 replacements the pool moves to a new thread, which frees what its predecessor allocated |
//! | `scratch-2` | 2 | one write pass | cache-scratch: main allocates one 8-byte object per thread; each thread frees it, then 1,000 times allocates its own, writes it repeatedly, frees it. False sharing makes the writes slow |
//! | `threads-2` | 2 | free+alloc or realloc | each thread its own churn-512-like pool of 2,000 objects |
//! | `threads-8` | 8 | 〃 | the same on 8 threads (over-subscribed on 2 cores) |
//!
//! Churn objects carry a tag at both ends that is checked before every free or
//! realloc and at the end (the run aborts loudly on a mismatch); producer/consumer
//! objects carry a head tag checked by the consumer.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::process;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Deterministic inputs.
// ---------------------------------------------------------------------------

pub use tieralloc::internals::Rng;

/// The generator for `seed` (the sequence the published numbers were measured on).
fn rng(seed: u64) -> Rng {
    Rng::from_state(seed)
}

/// talc's skewed size: `rand(4..rand(16..max))`.
fn skew(rng: &mut Rng, max: usize) -> usize {
    let hi = rng.uniform(16, max);
    rng.uniform(4, hi)
}

/// How a plan draws its sizes.
#[derive(Clone, Copy, Debug)]
pub enum Sizes {
    /// talc's `rand(4..rand(16..max))`.
    Skew(usize),
    /// Uniform in `lo..=hi`.
    Uniform(usize, usize),
}

impl Sizes {
    fn draw(self, rng: &mut Rng) -> usize {
        match self {
            Sizes::Skew(max) => skew(rng, max),
            Sizes::Uniform(lo, hi) => rng.uniform(lo, hi + 1),
        }
    }
    fn max(self) -> usize {
        match self {
            Sizes::Skew(max) => max,
            Sizes::Uniform(_, hi) => hi,
        }
    }
}

/// One churn step: the slot to replace and the new size, with flag bits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Step(u32, u32);

const REALLOC_BIT: u32 = 1 << 31;
const ALIGN64_BIT: u32 = 1 << 30;
const SIZE_MASK: u32 = ALIGN64_BIT - 1;

impl Step {
    pub fn slot(self) -> usize {
        self.0 as usize
    }
    pub fn size(self) -> usize {
        (self.1 & SIZE_MASK) as usize
    }
    pub fn is_realloc(self) -> bool {
        self.1 & REALLOC_BIT != 0
    }
    /// Alignment of a new object (a realloc keeps the object's alignment).
    pub fn align(self) -> usize {
        if self.1 & ALIGN64_BIT != 0 {
            64
        } else {
            ALIGN
        }
    }
}

/// Size and alignment of an initial object, packed like a step's second word.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Init(u32);

impl Init {
    pub fn size(self) -> usize {
        (self.0 & SIZE_MASK) as usize
    }
    pub fn align(self) -> usize {
        Step(0, self.0).align()
    }
}

#[derive(PartialEq, Eq, Debug)]
pub struct ChurnPlan {
    /// The initial fill, one per slot.
    pub init: Vec<Init>,
    pub steps: Vec<Step>,
}

/// Knobs of a churn plan.
#[derive(Clone, Copy, Debug)]
pub struct Mix {
    pub sizes: Sizes,
    /// One step in this many is a realloc (0: none).
    pub realloc_one_in: usize,
    /// One new object in this many is 64-byte aligned (0: none).
    pub align64_one_in: usize,
}

impl Mix {
    /// talc's churn: skewed sizes up to `max`, 1/7 realloc, 1/8 aligned to 64.
    pub const fn talc(max: usize) -> Mix {
        Mix {
            sizes: Sizes::Skew(max),
            realloc_one_in: 7,
            align64_one_in: 8,
        }
    }
}

impl ChurnPlan {
    pub fn new(seed: u64, live: usize, mix: Mix, steps: usize) -> Self {
        assert!(mix.sizes.max() < SIZE_MASK as usize && live <= u32::MAX as usize);
        let mut rng = rng(seed);
        let one_in = |rng: &mut Rng, k: usize| k != 0 && rng.uniform(0, k) == 0;
        let word = |rng: &mut Rng| {
            let size = mix.sizes.draw(rng) as u32;
            size | if one_in(rng, mix.align64_one_in) {
                ALIGN64_BIT
            } else {
                0
            }
        };
        let init = (0..live).map(|_| Init(word(&mut rng))).collect();
        let steps = (0..steps)
            .map(|_| {
                let slot = rng.uniform(0, live) as u32;
                let realloc = one_in(&mut rng, mix.realloc_one_in);
                let w = word(&mut rng);
                Step(slot, w | if realloc { REALLOC_BIT } else { 0 })
            })
            .collect();
        ChurnPlan { init, steps }
    }
}

// ---------------------------------------------------------------------------
// The workload list.
// ---------------------------------------------------------------------------

pub enum Shape {
    /// Alloc+free pairs of one size.
    PairsFixed { size: usize, n: u64 },
    /// Alloc+free pairs cycling through a pre-generated ring of sizes (a power of two long).
    PairsRing { sizes: Vec<u16>, n: u64 },
    /// Single-threaded churn.
    Churn(ChurnPlan),
    /// Independent churn, one plan per thread.
    Threads(Vec<ChurnPlan>),
    /// xmalloc-test: producers allocate, consumers free.
    Xmalloc {
        producers: usize,
        consumers: usize,
        batches_per_producer: usize,
        sizes: Vec<u16>,
    },
    /// larson: lanes whose pools move to a new thread every `per_gen` steps.
    Larson {
        lanes: Vec<ChurnPlan>,
        per_gen: usize,
    },
    /// cache-scratch.
    Scratch {
        threads: usize,
        iterations: usize,
        repetitions: usize,
        size: usize,
    },
}

pub struct Workload {
    pub name: &'static str,
    pub shape: Shape,
}

/// Objects per xmalloc batch.
pub const XBATCH: usize = 128;
/// Batches in flight per producer (bounds the producer's lead).
const XINFLIGHT: usize = 4;

impl Workload {
    /// Operations one run performs.
    pub fn ops(&self) -> u64 {
        match &self.shape {
            Shape::PairsFixed { n, .. } | Shape::PairsRing { n, .. } => *n,
            Shape::Churn(p) => p.steps.len() as u64,
            Shape::Threads(ps) | Shape::Larson { lanes: ps, .. } => {
                ps.iter().map(|p| p.steps.len() as u64).sum()
            }
            Shape::Xmalloc {
                producers,
                batches_per_producer,
                ..
            } => (producers * batches_per_producer * XBATCH) as u64,
            Shape::Scratch {
                threads,
                iterations,
                repetitions,
                ..
            } => (threads * iterations * repetitions) as u64,
        }
    }

    /// Threads doing allocator work at once.
    pub fn threads(&self) -> usize {
        match &self.shape {
            Shape::PairsFixed { .. } | Shape::PairsRing { .. } | Shape::Churn(_) => 1,
            Shape::Threads(ps) | Shape::Larson { lanes: ps, .. } => ps.len(),
            Shape::Xmalloc {
                producers,
                consumers,
                ..
            } => producers + consumers,
            Shape::Scratch { threads, .. } => *threads,
        }
    }

    /// What one op is, for the report.
    pub fn op(&self) -> &'static str {
        match &self.shape {
            Shape::PairsFixed { .. } | Shape::PairsRing { .. } => "alloc+free",
            Shape::Churn(_) | Shape::Threads(_) => "free+alloc or realloc",
            Shape::Larson { .. } => "free+alloc",
            Shape::Xmalloc { .. } => "alloc + remote free",
            Shape::Scratch { .. } => "8-byte write pass",
        }
    }

    /// Runs the workload once on `a`: the timed part and the ops it completed.
    /// Every thread stops early (at a clean point: between two ops) once `budget`
    /// has passed since it started, so that an allocator that is orders of
    /// magnitude slower on a shape costs bounded time; its throughput is then
    /// measured over fewer ops (the live set and the shape stay the same).
    pub fn run<A: GlobalAlloc + Sync + 'static>(
        &self,
        a: &'static A,
        who: &str,
        budget: Duration,
    ) -> Outcome {
        let b = budget;
        match &self.shape {
            Shape::PairsFixed { size, n } => pairs_fixed(a, *size, *n, b),
            Shape::PairsRing { sizes, n } => pairs_ring(a, sizes, *n, b),
            Shape::Churn(plan) => churn(a, plan, who, self.name, b),
            Shape::Threads(plans) => threads(a, plans, who, self.name, b),
            Shape::Xmalloc {
                producers,
                consumers,
                batches_per_producer,
                sizes,
            } => {
                let threads = (*producers, *consumers);
                xmalloc(
                    a,
                    threads,
                    *batches_per_producer,
                    sizes,
                    (who, self.name),
                    b,
                )
            }
            Shape::Larson { lanes, per_gen } => larson(a, lanes, *per_gen, who, self.name, b),
            Shape::Scratch {
                threads,
                iterations,
                repetitions,
                size,
            } => scratch(a, *threads, *iterations, *repetitions, *size, b),
        }
    }
}

/// Every workload, in report order.
pub const NAMES: &[&str] = &[
    "pairs-64",
    "pairs-skew",
    "churn-512",
    "churn-32k",
    "churn-1m",
    "xmalloc-1x1",
    "xmalloc-4x4",
    "larson-4",
    "scratch-2",
    "threads-2",
    "threads-8",
];

/// Every workload; `scale` divides the op counts (100 for `--quick`).
pub fn workloads(scale: u64) -> Vec<Workload> {
    NAMES.iter().filter_map(|n| workload(n, scale)).collect()
}

/// The workload called `name`, its inputs generated now; `scale` divides the op counts.
pub fn workload(name: &str, scale: u64) -> Option<Workload> {
    let s = |n: u64| (n / scale).max(1) as usize;
    let xsizes = || {
        let mut r = rng(0x5eed_0006);
        (0..1 << 12)
            .map(|_| r.uniform(8, 257) as u16)
            .collect::<Vec<u16>>()
    };
    let talc_threads = |threads: u64, seed: u64| {
        (0..threads)
            .map(|i| {
                ChurnPlan::new(
                    seed + i,
                    2_000,
                    Mix::talc(512),
                    s(1_000_000) / threads as usize,
                )
            })
            .collect()
    };
    let shape = match name {
        "pairs-64" => Shape::PairsFixed {
            size: 64,
            n: s(20_000_000) as u64,
        },
        "pairs-skew" => {
            let mut r = rng(0x5eed_0002);
            Shape::PairsRing {
                sizes: (0..1 << 16).map(|_| r.uniform(8, 513) as u16).collect(),
                n: s(20_000_000) as u64,
            }
        }
        "churn-512" => Shape::Churn(ChurnPlan::new(
            0x5eed_0003,
            10_000,
            Mix::talc(512),
            s(1_000_000),
        )),
        "churn-32k" => Shape::Churn(ChurnPlan::new(
            0x5eed_0004,
            2_000,
            Mix::talc(32 << 10),
            s(400_000),
        )),
        "churn-1m" => Shape::Churn(ChurnPlan::new(
            0x5eed_0005,
            200,
            Mix::talc(1 << 20),
            s(100_000),
        )),
        "xmalloc-1x1" => Shape::Xmalloc {
            producers: 1,
            consumers: 1,
            batches_per_producer: s(16_000),
            sizes: xsizes(),
        },
        "xmalloc-4x4" => Shape::Xmalloc {
            producers: 4,
            consumers: 4,
            batches_per_producer: s(4_000),
            sizes: xsizes(),
        },
        "larson-4" => {
            let per_gen = s(10_000);
            let mix = Mix {
                sizes: Sizes::Uniform(8, 1000),
                realloc_one_in: 0,
                align64_one_in: 0,
            };
            Shape::Larson {
                lanes: (0..4)
                    .map(|i| ChurnPlan::new(0x5eed_0100 + i, 1_000, mix, per_gen * 40))
                    .collect(),
                per_gen,
            }
        }
        "scratch-2" => Shape::Scratch {
            threads: 2,
            iterations: s(1_000),
            repetitions: 5_000,
            size: 8,
        },
        "threads-2" => Shape::Threads(talc_threads(2, 0x5eed_0200)),
        "threads-8" => Shape::Threads(talc_threads(8, 0x5eed_0300)),
        _ => return None,
    };
    let name = NAMES.iter().copied().find(|n| *n == name)?;
    Some(Workload { name, shape })
}

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

/// What one run measured.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// Wall time of the timed part.
    pub elapsed: Duration,
    /// Ops completed (fewer than [`Workload::ops`] if the budget ran out).
    pub ops: u64,
}

impl Outcome {
    /// Million ops per second.
    pub fn mops(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e6
    }
}

/// A thread's stopping time.
#[derive(Clone, Copy)]
struct Deadline(Instant);

impl Deadline {
    fn after(start: Instant, budget: Duration) -> Self {
        Deadline(start + budget)
    }
    fn passed(self) -> bool {
        Instant::now() >= self.0
    }
}

/// Ops between two clock reads in the fast loops, and in the slow ones.
const CHECK_FAST: u64 = 4096;
const CHECK_SLOW: usize = 32;

/// Default alignment of the workloads' objects.
pub const ALIGN: usize = 8;

fn layout(size: usize, align: usize) -> Layout {
    match Layout::from_size_align(size, align) {
        Ok(l) => l,
        Err(_) => unreachable!("bad benchmark layout {size}/{align}"),
    }
}

#[cold]
#[inline(never)]
fn out_of_memory(size: usize, align: usize) -> ! {
    eprintln!("tieralloc-bench: allocation of {size} bytes (align {align}) returned null");
    process::abort()
}

/// Keeps raw pointers movable between threads: every workload hands objects over
/// explicitly and never touches one from two threads at once.
struct SendBox<T>(T);
// SAFETY: see the type's comment.
unsafe impl<T> Send for SendBox<T> {}

/// Alloc+free pairs of one size. The size is hidden from the optimiser on every
/// iteration (`black_box`), as it is behind the `__rust_alloc` shim of a real
/// `#[global_allocator]`: an inlined Rust allocator must not get its size-class
/// lookup hoisted out of the loop when a C allocator behind FFI cannot.
fn pairs_fixed<A: GlobalAlloc + ?Sized>(a: &A, size: usize, n: u64, budget: Duration) -> Outcome {
    let t = Instant::now();
    let end = Deadline::after(t, budget);
    let mut done = n;
    for i in 0..n {
        if i % CHECK_FAST == 0 && i > 0 && end.passed() {
            done = i;
            break;
        }
        let l = layout(black_box(size), ALIGN);
        // SAFETY: `l` has a non-zero size; `p` is freed with the layout it was allocated with.
        unsafe {
            let p = a.alloc(l);
            if p.is_null() {
                out_of_memory(size, ALIGN)
            }
            p.write(i as u8);
            a.dealloc(black_box(p), black_box(l));
        }
    }
    Outcome {
        elapsed: t.elapsed(),
        ops: done,
    }
}

fn pairs_ring<A: GlobalAlloc + ?Sized>(a: &A, sizes: &[u16], n: u64, budget: Duration) -> Outcome {
    assert!(sizes.len().is_power_of_two());
    let mask = sizes.len() - 1;
    let t = Instant::now();
    let end = Deadline::after(t, budget);
    let mut done = n;
    for i in 0..n {
        if i % CHECK_FAST == 0 && i > 0 && end.passed() {
            done = i;
            break;
        }
        let size = sizes[i as usize & mask] as usize;
        let l = layout(size, ALIGN);
        // SAFETY: as in `pairs_fixed`.
        unsafe {
            let p = a.alloc(l);
            if p.is_null() {
                out_of_memory(size, ALIGN)
            }
            p.write(i as u8);
            a.dealloc(black_box(p), black_box(l));
        }
    }
    Outcome {
        elapsed: t.elapsed(),
        ops: done,
    }
}

// ---------------------------------------------------------------------------
// Tagged objects.
// ---------------------------------------------------------------------------

/// A live object of a churn pool, tagged at both ends.
pub struct Obj {
    pub ptr: *mut u8,
    pub size: usize,
    pub align: usize,
    pub tag: u32,
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
pub struct Corruption {
    pub what: &'static str,
    pub expected: u32,
    pub found: u32,
}

impl Obj {
    /// # Safety
    /// `size >= 4`; the object must later be freed through the same allocator.
    pub unsafe fn new<A: GlobalAlloc + ?Sized>(a: &A, size: usize, align: usize, tag: u32) -> Obj {
        // SAFETY: size >= 4, so the layout is non-zero.
        let ptr = unsafe { a.alloc(layout(size, align)) };
        if ptr.is_null() {
            out_of_memory(size, align)
        }
        let o = Obj {
            ptr,
            size,
            align,
            tag,
        };
        if !(ptr as usize).is_multiple_of(align) {
            misaligned(&o)
        }
        // SAFETY: `ptr` is a fresh allocation of `size` bytes.
        unsafe { o.stamp() };
        o
    }

    /// Writes the head and tail tags.
    /// # Safety
    /// `ptr` is a live allocation of at least `size >= 4` bytes.
    pub unsafe fn stamp(&self) {
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

    pub fn verify(&self) -> Result<(), Corruption> {
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
    pub unsafe fn free<A: GlobalAlloc + ?Sized>(&self, a: &A) {
        // SAFETY: allocated by `a` with this layout (caller).
        unsafe { a.dealloc(self.ptr, layout(self.size, self.align)) }
    }

    /// Reallocs to `new_size` (same alignment) with a new tag; checks that the
    /// head survived the move.
    /// # Safety
    /// The object was allocated by `a`; `new_size >= 4`.
    pub unsafe fn realloc<A: GlobalAlloc + ?Sized>(
        &mut self,
        a: &A,
        new_size: usize,
        tag: u32,
    ) -> Result<(), Corruption> {
        let kept = tag_len(self.size);
        // SAFETY: allocated by `a` with this layout; new_size is non-zero and small.
        let p = unsafe { a.realloc(self.ptr, layout(self.size, self.align), new_size) };
        if p.is_null() {
            out_of_memory(new_size, self.align)
        }
        self.ptr = p;
        self.size = new_size;
        if !(p as usize).is_multiple_of(self.align) {
            misaligned(self)
        }
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
fn misaligned(o: &Obj) -> ! {
    eprintln!(
        "tieralloc-bench: object {:p} of {} bytes is not aligned to {}",
        o.ptr, o.size, o.align
    );
    process::abort()
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

// ---------------------------------------------------------------------------
// Churn.
// ---------------------------------------------------------------------------

/// Allocates a plan's initial pool (untimed).
fn fill<A: GlobalAlloc + ?Sized>(a: &A, plan: &ChurnPlan) -> Vec<Obj> {
    plan.init
        .iter()
        .enumerate()
        // SAFETY: sizes are >= 4; every object is freed through `a` by `drain`.
        .map(|(slot, i)| unsafe { Obj::new(a, i.size(), i.align(), tag_for(slot, 0)) })
        .collect()
}

/// Replays `steps` (numbered from `first`) on `pool` until `end`; returns how
/// many it replayed.
fn replay<A: GlobalAlloc + ?Sized>(
    a: &A,
    pool: &mut [Obj],
    steps: &[Step],
    first: usize,
    who: &str,
    workload: &str,
    end: Deadline,
) -> usize {
    for (k, &step) in steps.iter().enumerate() {
        if k % CHECK_SLOW == 0 && k > 0 && end.passed() {
            return k;
        }
        let slot = step.slot();
        let o = &mut pool[slot];
        if let Err(c) = o.verify() {
            corrupted(who, workload, slot, o, c)
        }
        let tag = tag_for(slot, first + k + 1);
        if step.is_realloc() {
            // SAFETY: `o` came from `a`; sizes are >= 4.
            if let Err(c) = unsafe { o.realloc(a, step.size(), tag) } {
                corrupted(who, workload, slot, o, c)
            }
        } else {
            // SAFETY: `o` came from `a` and is replaced right away.
            unsafe {
                o.free(a);
                *o = Obj::new(a, step.size(), step.align(), tag);
            }
        }
    }
    steps.len()
}

/// Frees a pool (untimed), checking every survivor.
fn drain<A: GlobalAlloc + ?Sized>(a: &A, pool: Vec<Obj>, who: &str, workload: &str) {
    for (slot, o) in pool.iter().enumerate() {
        if let Err(c) = o.verify() {
            corrupted(who, workload, slot, o, c)
        }
        // SAFETY: `o` came from `a`; the pool is dropped right after.
        unsafe { o.free(a) };
    }
}

fn churn<A: GlobalAlloc + ?Sized>(
    a: &A,
    plan: &ChurnPlan,
    who: &str,
    workload: &str,
    budget: Duration,
) -> Outcome {
    let mut pool = fill(a, plan);
    let t = Instant::now();
    let done = replay(
        a,
        &mut pool,
        &plan.steps,
        0,
        who,
        workload,
        Deadline::after(t, budget),
    );
    let elapsed = t.elapsed();
    drain(a, pool, who, workload);
    Outcome {
        elapsed,
        ops: done as u64,
    }
}

/// Wall time of a multi-threaded run: from the earliest worker start (each worker
/// reads the clock as it leaves the start barrier) to the latest worker end.
/// Measured by the workers, not by the spawning thread, which may be descheduled
/// when the barrier opens (more threads than cores).
#[derive(Clone, Copy)]
struct Span(Instant, Instant, u64);

/// Combines the threads' spans and op counts.
fn span(spans: impl IntoIterator<Item = Span>) -> Outcome {
    let mut it = spans.into_iter();
    let Some(first) = it.next() else {
        return Outcome {
            elapsed: Duration::ZERO,
            ops: 0,
        };
    };
    let (lo, hi, ops) = it.fold((first.0, first.1, first.2), |(lo, hi, ops), s| {
        (lo.min(s.0), hi.max(s.1), ops + s.2)
    });
    Outcome {
        elapsed: hi - lo,
        ops,
    }
}

/// Independent churn on one thread per plan; timed from every pool filled to
/// every thread done.
fn threads<A: GlobalAlloc + Sync + 'static>(
    a: &'static A,
    plans: &[ChurnPlan],
    who: &str,
    workload: &str,
    budget: Duration,
) -> Outcome {
    let start = Barrier::new(plans.len());
    let end = Barrier::new(plans.len());
    std::thread::scope(|s| {
        let hs: Vec<_> = plans
            .iter()
            .map(|plan| {
                let (start, end) = (&start, &end);
                s.spawn(move || {
                    let mut pool = fill(a, plan);
                    start.wait();
                    let t0 = Instant::now();
                    let done = replay(
                        a,
                        &mut pool,
                        &plan.steps,
                        0,
                        who,
                        workload,
                        Deadline::after(t0, budget),
                    );
                    let t1 = Instant::now();
                    end.wait();
                    drain(a, pool, who, workload);
                    Span(t0, t1, done as u64)
                })
            })
            .collect();
        span(
            hs.into_iter()
                .map(|h| h.join().unwrap_or_else(|_| process::abort())),
        )
    })
}

/// larson: each lane's pool is replayed `per_gen` steps at a time, each
/// generation on a fresh thread, so that every object is freed by a thread
/// other than the one that allocated it (the allocating thread has exited).
fn larson<A: GlobalAlloc + Sync + 'static>(
    a: &'static A,
    lanes: &[ChurnPlan],
    per_gen: usize,
    who: &str,
    workload: &str,
    budget: Duration,
) -> Outcome {
    let start = Barrier::new(lanes.len());
    let end = Barrier::new(lanes.len());
    std::thread::scope(|s| {
        let hs: Vec<_> = lanes
            .iter()
            .map(|plan| {
                let (start, end) = (&start, &end);
                s.spawn(move || {
                    let mut pool = SendBox(fill(a, plan));
                    start.wait();
                    let t0 = Instant::now();
                    let stop = Deadline::after(t0, budget);
                    let mut done = 0;
                    for (g, chunk) in plan.steps.chunks(per_gen).enumerate() {
                        let n;
                        (pool, n) = std::thread::scope(|gs| {
                            gs.spawn(move || {
                                let mut pool = pool;
                                let n =
                                    replay(a, &mut pool.0, chunk, g * per_gen, who, workload, stop);
                                (pool, n)
                            })
                            .join()
                            .unwrap_or_else(|_| process::abort())
                        });
                        done += n;
                        if n < chunk.len() {
                            break;
                        }
                    }
                    let t1 = Instant::now();
                    end.wait();
                    drain(a, pool.0, who, workload);
                    Span(t0, t1, done as u64)
                })
            })
            .collect();
        span(
            hs.into_iter()
                .map(|h| h.join().unwrap_or_else(|_| process::abort())),
        )
    })
}

// ---------------------------------------------------------------------------
// Producer / consumer.
// ---------------------------------------------------------------------------

type Batch = Vec<(*mut u8, u32)>;

/// xmalloc-test: each producer fills batches of [`XBATCH`] objects and queues
/// them; consumers free whole batches and return the empty batch. Queues are
/// preallocated vectors behind mutexes, so the harness allocates nothing while
/// the clock runs; a waiting thread yields (more threads than cores).
fn xmalloc<A: GlobalAlloc + Sync + 'static>(
    a: &'static A,
    (producers, consumers): (usize, usize),
    batches_per_producer: usize,
    sizes: &[u16],
    (who, workload): (&str, &str),
    budget: Duration,
) -> Outcome {
    assert!(sizes.len().is_power_of_two());
    let mask = sizes.len() - 1;
    let inflight = XINFLIGHT * producers;
    let mut empty_q = Vec::with_capacity(inflight);
    for _ in 0..inflight {
        empty_q.push(SendBox(Batch::with_capacity(XBATCH)));
    }
    let empty = Mutex::new(empty_q);
    let full: Mutex<Vec<SendBox<Batch>>> = Mutex::new(Vec::with_capacity(inflight));
    // Batches queued, batches taken by a consumer, producers finished.
    let produced = AtomicUsize::new(0);
    let claimed = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let start = Barrier::new(producers + consumers);
    let pop = |q: &Mutex<Vec<SendBox<Batch>>>| q.lock().unwrap_or_else(|e| e.into_inner()).pop();
    let push =
        |q: &Mutex<Vec<SendBox<Batch>>>, b| q.lock().unwrap_or_else(|e| e.into_inner()).push(b);
    std::thread::scope(|s| {
        let mut hs = Vec::with_capacity(producers + consumers);
        for p in 0..producers {
            let (start, empty, full, produced, finished) =
                (&start, &empty, &full, &produced, &finished);
            hs.push(s.spawn(move || {
                let mut k = p * (sizes.len() / producers.max(1));
                start.wait();
                let t0 = Instant::now();
                let stop = Deadline::after(t0, budget);
                for b in 0..batches_per_producer {
                    if b > 0 && stop.passed() {
                        break;
                    }
                    let mut b = loop {
                        match pop(empty) {
                            Some(b) => break b,
                            None => std::thread::yield_now(),
                        }
                    };
                    for _ in 0..XBATCH {
                        let size = sizes[k & mask] as usize;
                        k += 1;
                        // SAFETY: non-zero layout; freed by a consumer with the same layout.
                        let o = unsafe { a.alloc(layout(size, ALIGN)) };
                        if o.is_null() {
                            out_of_memory(size, ALIGN)
                        }
                        // SAFETY: sizes are >= 8.
                        unsafe { o.cast::<u32>().write_unaligned(size as u32 ^ 0x5A5A_0000) };
                        b.0.push((o, size as u32));
                    }
                    push(full, b);
                    produced.fetch_add(1, Ordering::Release);
                }
                finished.fetch_add(1, Ordering::Release);
                // The producer's own span; the ops are counted by the consumers.
                Span(t0, Instant::now(), 0)
            }));
        }
        for _ in 0..consumers {
            let (start, empty, full, claimed, produced, finished) =
                (&start, &empty, &full, &claimed, &produced, &finished);
            hs.push(s.spawn(move || {
                start.wait();
                let t0 = Instant::now();
                let mut done = 0u64;
                loop {
                    let Some(mut b) = pop(full) else {
                        // Done when every producer has finished and every batch
                        // it queued has been taken.
                        if finished.load(Ordering::Acquire) == producers
                            && claimed.load(Ordering::Acquire) >= produced.load(Ordering::Acquire)
                        {
                            break;
                        }
                        std::thread::yield_now();
                        continue;
                    };
                    claimed.fetch_add(1, Ordering::AcqRel);
                    done += b.0.len() as u64;
                    for &(o, size) in &b.0 {
                        // SAFETY: a live object of `size` bytes from a producer.
                        let found = unsafe { o.cast::<u32>().read_unaligned() };
                        if found != size ^ 0x5A5A_0000 {
                            eprintln!(
                                "tieralloc-bench: HEAP CORRUPTION in allocator `{who}`, workload `{workload}`: \
                                 object {o:p} of {size} bytes has head {found:#010x}"
                            );
                            process::abort()
                        }
                        // SAFETY: allocated by a producer through `a` with this layout.
                        unsafe { a.dealloc(o, layout(size as usize, ALIGN)) };
                    }
                    b.0.clear();
                    push(empty, b);
                }
                Span(t0, Instant::now(), done)
            }));
        }
        span(
            hs.into_iter()
                .map(|h| h.join().unwrap_or_else(|_| process::abort())),
        )
    })
}

// ---------------------------------------------------------------------------
// False sharing.
// ---------------------------------------------------------------------------

/// cache-scratch (Hoard's benchmark): the calling thread allocates one object per
/// worker back to back (so they likely share a cache line) and hands them out;
/// each worker frees its object, then `iterations` times allocates one of its
/// own, writes every byte `repetitions` times, and frees it. An allocator that
/// gives a worker memory on a line another worker writes makes the writes slow.
fn scratch<A: GlobalAlloc + Sync + 'static>(
    a: &'static A,
    threads: usize,
    iterations: usize,
    repetitions: usize,
    size: usize,
    budget: Duration,
) -> Outcome {
    let l = layout(size, ALIGN);
    let handed: Vec<SendBox<*mut u8>> = (0..threads)
        .map(|_| {
            // SAFETY: non-zero layout; freed by the worker it is handed to.
            let p = unsafe { a.alloc(l) };
            if p.is_null() {
                out_of_memory(size, ALIGN)
            }
            SendBox(p)
        })
        .collect();
    let start = Barrier::new(threads);
    std::thread::scope(|s| {
        let hs: Vec<_> = handed
            .into_iter()
            .map(|h| {
                let start = &start;
                s.spawn(move || {
                    let h = h;
                    start.wait();
                    let t0 = Instant::now();
                    let stop = Deadline::after(t0, budget);
                    let mut done = 0;
                    // SAFETY: handed over by the main thread, allocated with `l`.
                    unsafe { a.dealloc(h.0, l) };
                    for _ in 0..iterations {
                        if done > 0 && stop.passed() {
                            break;
                        }
                        // SAFETY: non-zero layout; freed below.
                        let p = unsafe { a.alloc(l) };
                        if p.is_null() {
                            out_of_memory(size, ALIGN)
                        }
                        for r in 0..repetitions {
                            for k in 0..size {
                                // SAFETY: `k < size`, inside the object.
                                unsafe {
                                    let q = p.add(k);
                                    q.write_volatile((k + r) as u8);
                                    black_box(q.read_volatile());
                                }
                            }
                        }
                        // SAFETY: allocated above with `l`.
                        unsafe { a.dealloc(p, l) };
                        done += repetitions as u64;
                    }
                    Span(t0, Instant::now(), done)
                })
            })
            .collect();
        span(
            hs.into_iter()
                .map(|h| h.join().unwrap_or_else(|_| process::abort())),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    #[test]
    fn plans_are_deterministic() {
        let m = Mix::talc(512);
        assert_eq!(
            ChurnPlan::new(7, 100, m, 1000),
            ChurnPlan::new(7, 100, m, 1000)
        );
        assert_ne!(
            ChurnPlan::new(7, 100, m, 1000),
            ChurnPlan::new(8, 100, m, 1000)
        );
    }

    #[test]
    fn skew_sizes_stay_in_range_and_realloc_and_align_rates_hold() {
        let p = ChurnPlan::new(1, 50, Mix::talc(32 << 10), 70_000);
        assert!(p.init.iter().all(|i| (4..32 << 10).contains(&i.size())));
        assert!(p
            .steps
            .iter()
            .all(|s| (4..32 << 10).contains(&s.size()) && s.slot() < 50));
        let reallocs = p.steps.iter().filter(|s| s.is_realloc()).count();
        assert!((9_000..11_000).contains(&reallocs), "{reallocs}");
        let aligned = p.steps.iter().filter(|s| s.align() == 64).count();
        assert!((7_750..9_750).contains(&aligned), "{aligned}");
        assert!(p
            .steps
            .iter()
            .all(|s| s.align() == 64 || s.align() == ALIGN));
    }

    #[test]
    fn uniform_mix_has_no_realloc_or_alignment() {
        let mix = Mix {
            sizes: Sizes::Uniform(8, 1000),
            realloc_one_in: 0,
            align64_one_in: 0,
        };
        let p = ChurnPlan::new(3, 20, mix, 10_000);
        assert!(p
            .steps
            .iter()
            .all(|s| !s.is_realloc() && s.align() == ALIGN && (8..=1000).contains(&s.size())));
        assert!(p.steps.iter().any(|s| s.size() == 1000) && p.steps.iter().any(|s| s.size() == 8));
    }

    #[test]
    fn ops_and_threads_are_consistent() {
        for w in workloads(1000) {
            assert!(w.ops() > 0, "{}", w.name);
            assert!(w.threads() >= 1);
            assert!(!w.op().is_empty());
        }
        let names: Vec<_> = workloads(1000).iter().map(|w| w.name).collect();
        assert_eq!(names, NAMES);
        assert!(workload("nope", 1).is_none());
    }

    #[test]
    fn multithreaded_shapes_run_on_system() {
        for w in workloads(2000) {
            let o = w.run(&System, "glibc", Duration::from_secs(60));
            assert!(o.elapsed > Duration::ZERO, "{}", w.name);
            assert_eq!(o.ops, w.ops(), "{}", w.name);
        }
        // A budget of zero still completes a first chunk of every thread's work, then stops.
        for w in workloads(10) {
            let o = w.run(&System, "glibc", Duration::ZERO);
            assert!(
                o.ops > 0 && o.ops < w.ops(),
                "{}: {} of {}",
                w.name,
                o.ops,
                w.ops()
            );
        }
    }

    #[test]
    fn a_clobbered_tag_is_caught() {
        // SAFETY: the object is freed through System at the end.
        unsafe {
            let mut o = Obj::new(&System, 40, 64, 0xdead_beef);
            assert_eq!(o.ptr as usize % 64, 0);
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
                let o = Obj::new(&System, size, ALIGN, 0x0102_0304 ^ size as u32);
                assert_eq!(o.verify(), Ok(()), "size {size}");
                o.free(&System);
            }
        }
    }
}
