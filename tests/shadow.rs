//! Differential test of the whole heap against a shadow model.
//!
//! A seeded xorshift RNG drives random allocations (every size class, tiny,
//! large up to 4 MiB, alignments from 1 to 2 MiB), zeroed allocations, frees,
//! reallocations (grow, shrink, in place or moving, across kinds) and the odd
//! `scavenge()`. The model records every live object with a fill seed; the
//! test checks alignment, non-overlap (a `BTreeMap` of ranges), contents
//! (before every free and realloc), and every 50k operations the heap's
//! invariants and its statistics against the model.
//!
//! Each `#[test]` has a heap of its own (a `static`), so the statistics are
//! exact. Several CPUs are simulated in one thread by a thread-local slot index
//! read by the `LockedSlots` mapping; the multi-CPU variants switch it between
//! operations, so objects allocated "on CPU 0" are freed "on CPU 3".
#![cfg(feature = "linux")]

mod common;

use core::alloc::Layout;
use std::collections::{BTreeMap, BTreeSet};

use common::{set_slot, slots_heap, Rng};
use tieralloc::internals::large_pages;
use tieralloc::internals::ObjectKind;
use tieralloc::internals::{SizeClass, NUM_CLASSES};
use tieralloc::{
    Cpu, Heap, LockedSlots, MmapSource, PageSource, MAX_SMALL_SIZE, TINY_BLOCK, TINY_SIZE,
};

/// Go's page, the page of every source these tests use.
const GO_PAGE: tieralloc::internals::PageSize = tieralloc::internals::PageSize::GO;

/// The hosted heaps' geometry (Go's classes).
const GO: &tieralloc::Geometry = &tieralloc::Geometry::GO;

/// Operations per test; four tests make 1.2M per run.
const OPS: usize = 300_000;
/// Heap invariants and statistics are checked this often.
const CHECK_EVERY: usize = 50_000;
/// Objects up to this size are filled and verified completely; larger ones at
/// the head, the tail and the start of every 4 KiB.
const FULL_FILL: usize = 64 << 10;
const LARGE_MAX: usize = 4 << 20;

/// The simulated CPU is the thread's slot (`common::set_slot`).
type TestHeap = Heap<MmapSource, LockedSlots<4>>;

// --------------------------------------------------------------- pattern

#[inline(always)]
fn pat(seed: u8, i: usize) -> u8 {
    seed ^ (i as u8).wrapping_mul(7) ^ ((i >> 8) as u8).rotate_left(3) ^ ((i >> 16) as u8)
}

/// Calls `f` with the byte ranges of an object of `size` that carry the pattern.
fn samples(size: usize, mut f: impl FnMut(usize, usize)) {
    if size <= FULL_FILL {
        f(0, size);
        return;
    }
    f(0, 256);
    let mut k = 4096;
    while k + 64 <= size - 256 {
        f(k, k + 64);
        k += 4096;
    }
    f(size - 256, size);
}

fn fill(p: *mut u8, size: usize, seed: u8) {
    samples(size, |a, b| {
        for i in a..b {
            // SAFETY: `i < size`, the object is ours.
            unsafe { *p.add(i) = pat(seed, i) };
        }
    });
}

/// Checks the pattern at the sampled positions below `limit`.
fn verify(p: *mut u8, size: usize, seed: u8, limit: usize, what: &dyn Fn() -> String) {
    samples(size, |a, b| {
        for i in a..b.min(limit) {
            // SAFETY: `i < size`, the object is ours.
            let got = unsafe { *p.add(i) };
            let want = pat(seed, i);
            if got != want {
                panic!(
                    "corrupt object {p:p} ({}): byte {i} is {got:#04x}, want {want:#04x}",
                    what()
                );
            }
        }
    });
}

// ----------------------------------------------------------------- model

/// What a live object costs in `heap_alloc`: its slot's class size (`slot`,
/// when `realloc` shrank it in place, else its layout's class), or its pages
/// (large, or promoted: `own` holds the promoted span's bytes); `None` for a
/// tiny object (counted through the shared 64-byte blocks).
fn rounded(layout: Layout, own: Option<u64>, slot: Option<SizeClass>) -> Option<u64> {
    match ObjectKind::of(layout.size(), layout.align()) {
        ObjectKind::Tiny => None,
        ObjectKind::Small(_) if own.is_some() => own,
        ObjectKind::Small(_) if slot.is_some() => slot.map(|c| GO.size(c) as u64),
        _ => Some(common::rounded(layout)),
    }
}

/// Index into `by_size` (0 = large or promoted), or `None` for tiny.
fn class_index(layout: Layout, own: bool, slot: Option<SizeClass>) -> Option<usize> {
    match ObjectKind::of(layout.size(), layout.align()) {
        ObjectKind::Tiny => None,
        ObjectKind::Small(_) if own => Some(0),
        ObjectKind::Small(c) => Some(slot.unwrap_or(c).index()),
        ObjectKind::Large => Some(0),
    }
}

#[derive(Clone, Copy)]
struct Obj {
    p: *mut u8,
    layout: Layout,
    seed: u8,
    id: u64,
    /// A small-sized object with a span of its own (promoted by `realloc`):
    /// the span's bytes.
    own: Option<u64>,
    /// The class of the slot the object sits in, when `realloc` shrank it in
    /// place and its layout sorts to a smaller class.
    slot: Option<SizeClass>,
}

struct Model {
    live: Vec<Obj>,
    /// start → (end, id) of every live object.
    ranges: BTreeMap<usize, (usize, u64)>,
    /// Σ `rounded` over the non-tiny live objects.
    nontiny_bytes: u64,
    next_id: u64,
}

impl Model {
    fn new() -> Model {
        Model {
            live: Vec::new(),
            ranges: BTreeMap::new(),
            nontiny_bytes: 0,
            next_id: 0,
        }
    }

    fn insert_range(&mut self, p: *mut u8, size: usize, id: u64) {
        let start = p as usize;
        let end = start + size;
        if let Some((&s, &(e, other))) = self.ranges.range(..=start).next_back() {
            assert!(
                e <= start,
                "object {id} at {start:#x}..{end:#x} overlaps object {other} at {s:#x}..{e:#x}"
            );
        }
        if let Some((&s, &(e, other))) = self.ranges.range(start..).next() {
            assert!(
                s >= end,
                "object {id} at {start:#x}..{end:#x} overlaps object {other} at {s:#x}..{e:#x}"
            );
        }
        self.ranges.insert(start, (end, id));
    }

    fn remove_range(&mut self, p: *mut u8) {
        self.ranges
            .remove(&(p as usize))
            .expect("range of a live object");
    }

    fn add(
        &mut self,
        p: *mut u8,
        layout: Layout,
        seed: u8,
        own: Option<u64>,
        slot: Option<SizeClass>,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.insert_range(p, layout.size(), id);
        self.nontiny_bytes += rounded(layout, own, slot).unwrap_or(0);
        self.live.push(Obj {
            p,
            layout,
            seed,
            id,
            own,
            slot,
        });
        id
    }

    fn take(&mut self, i: usize) -> Obj {
        let o = self.live.swap_remove(i);
        self.remove_range(o.p);
        self.nontiny_bytes -= rounded(o.layout, o.own, o.slot).unwrap_or(0);
        o
    }
}

// ------------------------------------------------------------- requests

/// A size: mostly small, every class boundary, tiny, and some large.
fn gen_size(rng: &mut Rng) -> usize {
    let r = rng.below_hi(1000);
    if r < 150 {
        rng.range(1, TINY_SIZE) // tiny and the 16-byte class
    } else if r < 550 {
        rng.range(16, 1024)
    } else if r < 750 {
        // A class size exactly, or one byte either side: every class is hit.
        let c = SizeClass::new(rng.range(1, NUM_CLASSES - 1)).unwrap();
        (GO.size(c) + rng.below_hi(3)).saturating_sub(1).max(1)
    } else if r < 985 {
        rng.range(1025, MAX_SMALL_SIZE)
    } else {
        // Large, log-uniform from 32 KiB + 1 to 4 MiB.
        let bits = rng.range(15, 21);
        let lo = (1usize << bits) + 1;
        let hi = (1usize << (bits + 1)).min(LARGE_MAX);
        rng.range(lo, hi)
    }
}

fn gen_align(rng: &mut Rng) -> usize {
    let r = rng.below_hi(1000);
    if r < 420 {
        8
    } else if r < 680 {
        16
    } else if r < 985 {
        1 << rng.below_hi(13) // 1..=4096
    } else if r < 995 {
        8192 << rng.below_hi(3) // 8, 16, 32 KiB
    } else if r < 999 {
        64 << 10
    } else {
        2 << 20
    }
}

fn gen_layout(rng: &mut Rng) -> Layout {
    let size = gen_size(rng);
    let align = gen_align(rng);
    Layout::from_size_align(size, align).unwrap()
}

fn gen_new_size(rng: &mut Rng, old: usize) -> usize {
    let n = match rng.below_hi(100) {
        0..=29 => {
            let d = rng.range(1, 64);
            if rng.below_hi(2) == 0 {
                old + d
            } else {
                old.saturating_sub(d)
            }
        }
        30..=54 => old * rng.range(2, 4),
        55..=79 => rng.range(1, old),
        _ => gen_size(rng),
    };
    n.clamp(1, LARGE_MAX + (LARGE_MAX >> 1))
}

// ------------------------------------------------------------------ test

struct Run<'a, C: Cpu> {
    heap: &'a Heap<MmapSource, C>,
    rng: Rng,
    m: Model,
    cpus: usize,
    ops: usize,
    /// allocs, zeroed allocs, frees, reallocs (moved), reallocs (in place),
    /// scavenges, promotions, shrinks kept in a larger slot.
    counts: [u64; 8],
    classes_seen: [bool; NUM_CLASSES],
    max_live: usize,
}

impl<C: Cpu> Run<'_, C> {
    fn describe(o: &Obj) -> impl Fn() -> String + '_ {
        move || {
            format!(
                "id {}, size {}, align {}",
                o.id,
                o.layout.size(),
                o.layout.align()
            )
        }
    }

    fn check_ptr(&self, p: *mut u8, layout: Layout, what: &str) {
        assert!(!p.is_null(), "{what} of {layout:?} returned null");
        assert_eq!(
            p as usize % layout.align(),
            0,
            "{what} of {layout:?} returned misaligned {p:p}"
        );
    }

    fn alloc(&mut self, zeroed: bool) {
        let layout = gen_layout(&mut self.rng);
        let p = if zeroed {
            self.heap.allocate_zeroed(layout)
        } else {
            self.heap.allocate(layout)
        };
        self.check_ptr(
            p,
            layout,
            if zeroed {
                "allocate_zeroed"
            } else {
                "allocate"
            },
        );
        if zeroed {
            // SAFETY: a fresh block of `size` bytes.
            let s = unsafe { core::slice::from_raw_parts(p, layout.size()) };
            if let Some(i) = s.iter().position(|&b| b != 0) {
                panic!(
                    "allocate_zeroed({layout:?}) = {p:p}: byte {i} is {:#04x}",
                    s[i]
                );
            }
        }
        self.counts[zeroed as usize] += 1;
        if let Some(c) = class_index(layout, false, None) {
            self.classes_seen[c] = true;
        }
        let seed = self.rng.next_u64() as u8;
        fill(p, layout.size(), seed);
        self.m.add(p, layout, seed, None, None);
    }

    fn free(&mut self) {
        let i = self.rng.below_hi(self.m.live.len());
        let o = self.m.take(i);
        verify(
            o.p,
            o.layout.size(),
            o.seed,
            usize::MAX,
            &Self::describe(&o),
        );
        self.counts[2] += 1;
        // SAFETY: a live object of this heap with its layout.
        unsafe { self.heap.deallocate(o.p, o.layout) };
    }

    fn realloc(&mut self) {
        let i = self.rng.below_hi(self.m.live.len());
        let o = self.m.take(i);
        let old = o.layout.size();
        verify(o.p, old, o.seed, usize::MAX, &Self::describe(&o));
        let new_size = gen_new_size(&mut self.rng, old);
        // SAFETY: a live object of this heap with its layout; `new_size > 0`
        // and rounds to a valid layout.
        let q = unsafe { self.heap.reallocate(o.p, o.layout, new_size) };
        let new_layout = Layout::from_size_align(new_size, o.layout.align()).unwrap();
        self.check_ptr(q, new_layout, "reallocate");
        self.counts[if q == o.p { 4 } else { 3 }] += 1;
        let what = || {
            format!(
                "realloc of id {} from {old} to {new_size} bytes, align {}",
                o.id,
                o.layout.align()
            )
        };
        // The slot a class object sits in, and whether it stays there.
        let align = o.layout.align();
        let cur = match ObjectKind::of(old, align) {
            ObjectKind::Small(c) if o.own.is_none() => Some(o.slot.unwrap_or(c)),
            _ => None,
        };
        let stays = cur.is_some_and(|a| common::stays_in_slot(a, new_size, align));
        let slot =
            cur.filter(|&a| stays && ObjectKind::of(new_size, align) != ObjectKind::Small(a));
        if stays {
            assert_eq!(q, o.p, "{}: stays in its slot ({:?})", what(), cur);
        }
        self.counts[7] += u64::from(slot.is_some() && o.slot.is_none());
        let promoted = !stays && common::promoted_after(o.layout, o.own.is_some(), new_size);
        let own = promoted.then(|| {
            let ObjectKind::Small(c) = ObjectKind::of(new_size, o.layout.align()) else {
                unreachable!("promoted objects are small-sized")
            };
            let exact = (large_pages(GO.size(c), GO_PAGE).unwrap().bytes(GO_PAGE)) as u64;
            if ObjectKind::of(old, o.layout.align()) == ObjectKind::Small(c) {
                o.own.expect("the same class keeps the span")
            } else if q == o.p {
                exact
            } else {
                // A move takes the class's pages, or an idle span of up to twice as many.
                let got = self.heap.try_usable_size(q).expect("a live object") as u64;
                assert!(
                    exact <= got && got <= 2 * exact,
                    "{}: promoted into {got} bytes, class pages {exact}",
                    what()
                );
                got
            }
        });
        self.counts[6] += u64::from(own.is_some() && o.own.is_none());
        verify(q, old, o.seed, new_size, &what);
        fill(q, new_size, o.seed);
        self.m.add(q, new_layout, o.seed, own, slot);
    }

    /// The heap's invariants and statistics against the model.
    fn check(&self) {
        self.heap.check_invariants();
        let st = self.heap.stats();
        let live = self.m.live.len() as u64;
        assert_eq!(
            st.mallocs - st.frees,
            live,
            "mallocs - frees != live objects\n{st}"
        );
        assert_eq!(st.heap_idle, st.heap_sys - st.heap_inuse);
        assert!(st.heap_released <= st.heap_idle, "released > idle\n{st}");
        assert!(
            st.heap_alloc + st.cached_bytes <= st.heap_inuse,
            "alloc + cached > inuse\n{st}"
        );
        assert_eq!(
            st.heap_alloc - TINY_BLOCK as u64 * st.tiny_blocks,
            self.m.nontiny_bytes,
            "heap_alloc of non-tiny objects\n{st}"
        );
        // Per class live counts, and the large bytes.
        let mut by_class = [0u64; NUM_CLASSES];
        let mut tiny = 0u64;
        let mut large_bytes = 0u64;
        let mut blocks = BTreeSet::new();
        for o in &self.m.live {
            match class_index(o.layout, o.own.is_some(), o.slot) {
                Some(c) => {
                    by_class[c] += 1;
                    if c == 0 {
                        large_bytes += rounded(o.layout, o.own, o.slot).unwrap();
                    }
                }
                None => {
                    tiny += 1;
                    blocks.insert(o.p as usize & !(TINY_BLOCK - 1));
                }
            }
        }
        for (c, row) in st.by_size.iter().enumerate() {
            assert_eq!(row.live(), by_class[c], "live objects of class {c}\n{st}");
        }
        assert_eq!(st.large_alloc, large_bytes, "large_alloc\n{st}");
        assert_eq!(
            st.tiny_mallocs - st.tiny_frees,
            tiny,
            "live tiny objects\n{st}"
        );
        // Every block with a live tiny object is live; beyond those, at most one
        // current (possibly empty) block per CPU.
        let b = blocks.len() as u64;
        assert!(
            b <= st.tiny_blocks && st.tiny_blocks <= b + st.cpus,
            "tiny_blocks {} with {b} blocks holding live tiny objects\n{st}",
            st.tiny_blocks
        );
    }

    /// `scavenge()` empties every cache, retires the current tiny blocks and
    /// releases every free page.
    fn scavenge(&mut self) {
        self.heap.scavenge();
        self.counts[5] += 1;
        let st = self.heap.stats();
        assert_eq!(st.cached_bytes, 0, "cached bytes after scavenge\n{st}");
        assert_eq!(
            st.heap_released, st.heap_idle,
            "dirty pages after scavenge\n{st}"
        );
        let blocks: BTreeSet<usize> = self
            .m
            .live
            .iter()
            .filter(|o| class_index(o.layout, o.own.is_some(), o.slot).is_none())
            .map(|o| o.p as usize & !(TINY_BLOCK - 1))
            .collect();
        assert_eq!(
            st.tiny_blocks,
            blocks.len() as u64,
            "tiny blocks after scavenge\n{st}"
        );
    }

    fn step(&mut self, op: usize) {
        if self.cpus > 1 && self.rng.below_hi(4) == 0 {
            set_slot(self.rng.below_hi(self.cpus));
        }
        // The live set breathes between a few hundred and several thousand objects.
        let target = [300, 4000, 800, 6000][(op / 25_000) % 4];
        let (alloc, realloc) = if self.m.live.len() < target {
            (600, 100)
        } else {
            (340, 100)
        };
        let r = self.rng.below_hi(1000);
        if self.rng.below_hi(20_000) == 0 {
            self.scavenge();
        } else if self.m.live.is_empty() || r < alloc {
            let zeroed = self.rng.below_hi(8) == 0;
            self.alloc(zeroed);
        } else if r < alloc + realloc {
            self.realloc();
        } else {
            self.free();
        }
    }

    fn run(mut self) {
        for op in 0..self.ops {
            self.step(op);
            self.max_live = self.max_live.max(self.m.live.len());
            if (op + 1) % CHECK_EVERY == 0 {
                self.check();
            }
        }
        self.check();
        let c = self.counts;
        eprintln!(
            "{} ops: {} allocs, {} zeroed, {} frees, {} reallocs moved, {} in place ({} kept in a larger slot), {} promoted, {} scavenges; max live {}",
            self.ops, c[0], c[1], c[2], c[3], c[4], c[7], c[6], c[5], self.max_live
        );
        assert!(c[6] > 0, "no realloc promoted an object");
        assert!(c[7] > 0, "no realloc shrank an object in place");
        eprintln!("{}", self.heap.stats());
        // Class 1 (8 bytes) is never used by the heap: a request under 16 bytes
        // is tiny when its alignment is at most 8, and needs a multiple of 16 otherwise.
        let missing: Vec<usize> = (0..NUM_CLASSES)
            .filter(|&c| c != 1 && !self.classes_seen[c])
            .collect();
        assert!(
            missing.is_empty(),
            "size classes never allocated: {missing:?}"
        );
        // Free everything, in random order, from random CPUs.
        while !self.m.live.is_empty() {
            if self.cpus > 1 {
                set_slot(self.rng.below_hi(self.cpus));
            }
            self.free();
        }
        self.check();
        let st = self.heap.stats();
        assert_eq!(st.mallocs, st.frees);
        assert_eq!(
            st.heap_alloc,
            st.tiny_blocks * TINY_BLOCK as u64,
            "only current tiny blocks remain\n{st}"
        );
        let released = self.heap.scavenge();
        self.heap.check_invariants();
        let st = self.heap.stats();
        assert!(released as u64 <= st.heap_released);
        assert_eq!(st.heap_inuse, 0, "{st}");
        assert_eq!(st.heap_alloc, 0, "{st}");
        assert_eq!(st.tiny_blocks, 0, "{st}");
        assert_eq!(st.large_alloc, 0, "{st}");
        assert_eq!(st.cached_bytes, 0, "{st}");
        assert_eq!(st.spans, 0, "{st}");
        assert_eq!(st.heap_released, st.heap_idle, "{st}");
        const { assert!(MmapSource::CAN_RELEASE) };
    }
}

fn shadow(heap: &'static TestHeap, seed: u64, cpus: usize) {
    set_slot(0);
    Run {
        heap,
        rng: Rng::new(seed),
        m: Model::new(),
        cpus,
        ops: OPS,
        counts: [0; 8],
        classes_seen: [false; NUM_CLASSES],
        max_live: 0,
    }
    .run();
}

macro_rules! shadow_test {
    ($name:ident, $seed:expr, $cpus:expr) => {
        #[test]
        fn $name() {
            static HEAP: TestHeap = slots_heap();
            shadow(&HEAP, $seed, $cpus);
        }
    };
}

shadow_test!(shadow_one_cpu_a, 0x5eed_0001, 1);
shadow_test!(shadow_one_cpu_b, 0x5eed_0002, 1);
shadow_test!(shadow_four_cpus_a, 0x5eed_0003, 4);
shadow_test!(shadow_four_cpus_b, 0x5eed_0004, 4);
