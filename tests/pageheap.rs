//! The page heap tier alone: [`PageHeap`] and [`PageMap`] driven directly,
//! over the real [`MmapSource`] and over [`CheckedSource`] (a recording source
//! that forwards to `MmapSource`, logs every call and checks the state machine
//! of `source/mod.rs` for every OS page (`ready` only on Prepared pages, `release`
//! only on Ready ones, `free` only of whole reservations, no overlap...).
//!
//! Every test drives a harness ([`H`]) that, after every step, runs
//! `PageHeap::check_invariants`, compares the page heap's accounting with the
//! spans the test holds and (for the checking source) with the source's own view of which
//! pages are Ready and which Prepared, checks the page map, and checks a tag
//! written into the first and last word of every live span (so a span whose
//! pages were released, handed out twice or overlapped is noticed).
#![cfg(feature = "linux")]

use core::ptr::NonNull;

use tieralloc::internals::SizeClass;
use tieralloc::internals::CHUNK_PAGES;
use tieralloc::internals::{Addr, Call, CheckedSource, Pages, Rng, Span, SpanState};
use tieralloc::internals::{PageHeap, PageMap, PageStats};
use tieralloc::{MmapSource, PageSource, CHUNK_BYTES, PAGE_BYTES};

/// Go's page, the page of every source these tests use.
const GO_PAGE: tieralloc::internals::PageSize = tieralloc::internals::PageSize::GO;

/// The hosted heaps' geometry (Go's classes).
const GO: &tieralloc::Geometry = &tieralloc::Geometry::GO;

const MIB: usize = 1 << 20;

// ------------------------------------------------------------------ recorder

/// The recording, checking source of these tests, over mmap, with 64 MiB
/// and 4 MiB arenas.
type Rec64 = CheckedSource<MmapSource, { 64 << 20 }>;
type Rec4 = CheckedSource<MmapSource, { 4 << 20 }>;

// ------------------------------------------------------------------ harness

/// What the harness asks of a source beyond `PageSource`.
trait Probe: PageSource {
    /// Panics unless every page of the range is Ready.
    fn assert_ready(&self, _addr: usize, _bytes: usize) {}
    /// `(prepared, ready)` bytes of arena pages, if the source knows.
    fn arena_state(&self) -> Option<(usize, usize)> {
        None
    }
}

impl Probe for MmapSource {}

impl<const A: usize> Probe for CheckedSource<MmapSource, A> {
    fn assert_ready(&self, addr: usize, bytes: usize) {
        CheckedSource::assert_ready(self, addr, bytes);
    }
    fn arena_state(&self) -> Option<(usize, usize)> {
        Some(self.arena_bytes())
    }
}

/// A span the test holds.
#[derive(Clone, Copy, Debug)]
struct Sp {
    s: NonNull<Span>,
    start: usize,
    npages: usize,
}

impl Sp {
    fn end(&self) -> usize {
        self.start + self.npages * PAGE_BYTES
    }
    fn bytes(&self) -> usize {
        self.npages * PAGE_BYTES
    }
    fn page(&self, i: usize) -> usize {
        self.start + i * PAGE_BYTES
    }
    fn state(&self) -> SpanState {
        // SAFETY: live span records are only read here.
        unsafe { self.s.as_ref().state }
    }
}

fn tag(sp: &Sp) -> u64 {
    (sp.start as u64) ^ 0x5eed_f00d_dead_beef
}

/// A page heap, its page map and its source, with the spans a test holds.
struct H<S: Probe> {
    src: S,
    heap: Box<PageHeap>,
    map: Box<PageMap>,
    live: Vec<Sp>,
}

impl<S: Probe> H<S> {
    fn new(src: S) -> Self {
        let h = H {
            src,
            heap: Box::new(PageHeap::new()),
            map: Box::new(PageMap::new()),
            live: Vec::new(),
        };
        h.check();
        h
    }

    fn stats(&self) -> PageStats {
        self.heap.stats(GO_PAGE)
    }

    fn dirty_pages(&self) -> usize {
        let st = self.stats();
        ((st.sys - st.inuse - st.released) as usize) / PAGE_BYTES
    }

    /// Checks a fresh span and takes it into `live`.
    fn adopt(
        &mut self,
        s: NonNull<Span>,
        npages: usize,
        align_pages: usize,
        state: SpanState,
    ) -> Sp {
        // SAFETY: a fresh span, ours.
        let (start, n, needzero, st) = unsafe {
            (
                s.as_ref().start.get(),
                s.as_ref().npages().get(),
                s.as_ref().needzero,
                s.as_ref().state,
            )
        };
        let sp = Sp {
            s,
            start,
            npages: n,
        };
        assert_eq!(n, npages);
        assert_eq!(st, state);
        assert_eq!(
            start % (align_pages * PAGE_BYTES),
            0,
            "span {start:#x} of {npages} pages not aligned to {align_pages} pages"
        );
        for other in &self.live {
            assert!(
                sp.end() <= other.start || other.end() <= sp.start,
                "span {start:#x}+{npages} overlaps {:#x}+{}",
                other.start,
                other.npages
            );
        }
        self.src.assert_ready(start, sp.bytes());
        self.assert_mapped(&sp, 0, npages);
        let (first, last) = (start as *mut u64, (sp.end() - 8) as *mut u64);
        // SAFETY: the span's memory is ours and Ready.
        unsafe {
            if !needzero {
                assert_eq!(
                    (first.read_volatile(), last.read_volatile()),
                    (0, 0),
                    "span {start:#x}: needzero false but memory not zero"
                );
            }
            first.write_volatile(tag(&sp));
            last.write_volatile(!tag(&sp));
        }
        self.live.push(sp);
        self.check();
        sp
    }

    /// A span of `npages` pages (state Manual), aligned to `align_pages` pages.
    fn take(&mut self, npages: usize, align_pages: usize) -> Sp {
        let s = self
            .heap
            .alloc_span(
                &self.src,
                &self.map,
                Pages::new(npages),
                align_pages,
                SpanState::Manual,
            )
            .expect("alloc_span");
        self.adopt(s, npages, align_pages, SpanState::Manual)
    }

    /// A large object of `bytes` at alignment `align` (bytes).
    fn large(&mut self, bytes: usize, align: usize) -> Sp {
        let s = self
            .heap
            .alloc_large(&self.src, &self.map, bytes, align)
            .expect("alloc_large");
        let npages = tieralloc::internals::large_pages(bytes, GO_PAGE)
            .unwrap()
            .get();
        self.adopt(s, npages, (align / PAGE_BYTES).max(1), SpanState::Large)
    }

    fn assert_mapped(&self, sp: &Sp, from: usize, to: usize) {
        for i in from..to {
            let p = sp.page(i);
            for a in [p, p + PAGE_BYTES / 2, p + PAGE_BYTES - 1] {
                assert_eq!(
                    self.map.span_of(Addr::new(a), GO_PAGE),
                    sp.s.as_ptr(),
                    "page map at {a:#x} (page {i} of span {:#x})",
                    sp.start
                );
            }
        }
    }

    fn assert_unmapped(&self, from: usize, npages: usize) {
        for i in 0..npages {
            let p = from + i * PAGE_BYTES;
            for a in [p, p + PAGE_BYTES - 1] {
                assert!(
                    self.map.span_of(Addr::new(a), GO_PAGE).is_null(),
                    "page map at {a:#x} not null"
                );
            }
        }
    }

    fn check_tags(&self, sp: &Sp) {
        // SAFETY: live span, Ready.
        unsafe {
            assert_eq!(
                (sp.start as *const u64).read_volatile(),
                tag(sp),
                "span {:#x}: first word changed",
                sp.start
            );
            assert_eq!(
                ((sp.end() - 8) as *const u64).read_volatile(),
                !tag(sp),
                "span {:#x}: last word changed",
                sp.start
            );
        }
    }

    fn forget(&mut self, sp: &Sp) -> Sp {
        let i = self
            .live
            .iter()
            .position(|x| x.s == sp.s)
            .expect("not a live span of this test");
        self.live.swap_remove(i)
    }

    /// Frees a span (large ones through `free_large`).
    fn free(&mut self, sp: Sp) {
        let sp = self.forget(&sp);
        self.check_tags(&sp);
        // SAFETY: our span, on no list, nothing refers to it.
        unsafe {
            if sp.state() == SpanState::Large {
                self.heap.free_large(&self.src, sp.s);
                // These tests follow pages through the bitmap, the summaries and
                // the map: give the span back at once instead of letting it idle
                // in the large-span cache (tested on its own below).
                self.heap.flush_large_cache(&self.src);
            } else {
                self.heap.free_span(&self.src, sp.s);
            }
        }
        self.assert_unmapped(sp.start, sp.npages);
        self.check();
    }

    /// `resize_large` to `npages`; on success checks the map and re-tags.
    fn resize(&mut self, sp: &mut Sp, npages: usize) -> bool {
        let i = self.live.iter().position(|x| x.s == sp.s).unwrap();
        self.check_tags(sp);
        let old = sp.npages;
        // SAFETY: a live large span of ours.
        let ok = unsafe { self.heap.resize_large(&self.src, sp.s, Pages::new(npages)) };
        // SAFETY: live span record.
        let (start, n) = unsafe { (sp.s.as_ref().start.get(), sp.s.as_ref().npages().get()) };
        assert_eq!(start, sp.start, "resize moved the span");
        if !ok {
            assert_eq!(n, old, "failed resize changed the span");
            self.assert_mapped(sp, 0, old);
            self.check();
            return false;
        }
        assert_eq!(n, npages);
        // SAFETY: live span record.
        assert_eq!(
            unsafe { sp.s.as_ref().elemsize } as usize,
            (npages * PAGE_BYTES).min(u32::MAX as usize)
        );
        // The old last word (if still inside) is dropped; write the new one.
        sp.npages = npages;
        self.live[i] = *sp;
        if npages < old {
            self.assert_unmapped(sp.end(), old - npages);
        }
        self.assert_mapped(sp, 0, npages);
        self.src.assert_ready(sp.start, sp.bytes());
        // SAFETY: the span's memory, Ready.
        unsafe { ((sp.end() - 8) as *mut u64).write_volatile(!tag(sp)) };
        self.check();
        true
    }

    /// Everything the harness can check about the current state.
    fn check(&self) {
        self.heap.check_invariants();
        let st = self.stats();
        let inuse: usize = self.live.iter().map(|s| s.bytes()).sum();
        assert_eq!(st.inuse as usize, inuse, "inuse bytes vs spans held");
        assert_eq!(st.spans as usize, self.live.len(), "span records in use");
        let large: usize = self
            .live
            .iter()
            .filter(|s| s.state() == SpanState::Large)
            .map(|s| s.bytes())
            .sum();
        assert_eq!(st.large.live_bytes as usize, large, "large live bytes");
        assert_eq!(
            st.large.mallocs - st.large.frees,
            self.live
                .iter()
                .filter(|s| s.state() == SpanState::Large)
                .count() as u64
        );
        assert!(
            st.released <= st.sys - st.inuse,
            "released pages beyond free pages"
        );
        if let Some((prepared, ready)) = self.src.arena_state() {
            assert_eq!(
                prepared + ready,
                st.sys as usize,
                "arena pages the source holds vs sys"
            );
            assert_eq!(
                prepared, st.released as usize,
                "Prepared arena pages vs released"
            );
        }
        for sp in &self.live {
            assert_eq!(
                self.map.span_of(Addr::new(sp.start), GO_PAGE),
                sp.s.as_ptr()
            );
            assert_eq!(
                self.map.span_of(Addr::new(sp.end() - 1), GO_PAGE),
                sp.s.as_ptr()
            );
            self.check_tags(sp);
        }
    }

    fn free_all(&mut self) {
        while let Some(sp) = self.live.last().copied() {
            self.free(sp);
        }
    }
}

fn releases(log: &[Call]) -> Vec<(usize, usize)> {
    log.iter()
        .filter_map(|e| {
            if let Call::Release(a, b) = *e {
                Some((a, b))
            } else {
                None
            }
        })
        .collect()
}

fn readies(log: &[Call]) -> Vec<(usize, usize)> {
    log.iter()
        .filter_map(|e| {
            if let Call::Ready(a, b) = *e {
                Some((a, b))
            } else {
                None
            }
        })
        .collect()
}

fn reserves(log: &[Call]) -> Vec<(usize, usize)> {
    log.iter()
        .filter_map(|e| {
            if let Call::Reserve(a, b) = *e {
                Some((a, b))
            } else {
                None
            }
        })
        .collect()
}

// ------------------------------------------------------------------ first fit

fn first_fit<S: Probe>(src: S) {
    let mut h = H::new(src);
    let a = h.take(3, 1);
    let b = h.take(5, 1);
    let c = h.take(7, 1);
    // A fresh arena is carved lowest first: the spans are contiguous.
    assert_eq!(b.start, a.end());
    assert_eq!(c.start, b.end());
    let (b_start, b_pages) = (b.start, b.npages);
    h.free(b);
    // A span of B's size reuses B's address.
    let b2 = h.take(b_pages, 1);
    assert_eq!(b2.start, b_start);
    h.free(b2);
    // So does anything smaller (lowest address first), and the rest of the hole
    // is used next.
    let x = h.take(2, 1);
    assert_eq!(x.start, b_start);
    let y = h.take(3, 1);
    assert_eq!(y.start, b_start + 2 * PAGE_BYTES);
    h.free(x);
    h.free(y);
    // Larger than the hole: after C.
    let z = h.take(b_pages + 1, 1);
    assert_eq!(z.start, c.end());
    // An aligned request skips the hole when no aligned start fits in it.
    let hole_aligned = b_start.next_multiple_of(4 * PAGE_BYTES);
    let w = h.take(4, 4);
    if hole_aligned + 4 * PAGE_BYTES <= b_start + b_pages * PAGE_BYTES {
        assert_eq!(w.start, hole_aligned);
    } else {
        assert!(w.start >= z.end());
    }
    h.free_all();
}

#[test]
fn first_fit_mmap() {
    first_fit(MmapSource::new());
}

#[test]
fn first_fit_recorded() {
    first_fit(Rec64::new(MmapSource::new()));
}

// ------------------------------------------------------------------ coalescing

fn coalescing<S: Probe>(src: S) {
    let mut h = H::new(src);
    for order in [[1usize, 2], [2, 1]] {
        let a = h.take(2, 1);
        let b = h.take(3, 1);
        let c = h.take(4, 1);
        let d = h.take(1, 1);
        assert_eq!((b.start, c.start, d.start), (a.end(), b.end(), c.end()));
        let (b_start, bc) = (b.start, b.npages + c.npages);
        let mut bc_spans = [None, Some(b), Some(c)];
        for i in order {
            let s = bc_spans[i].take().unwrap();
            h.free(s);
        }
        // B and C are one free run now: B+C pages fit at B.
        let e = h.take(bc, 1);
        assert_eq!(e.start, b_start);
        assert_eq!(e.end(), d.start);
        h.free(e);
        // And it is one run, not two: B+C+... splits lowest first.
        let f = h.take(1, 1);
        assert_eq!(f.start, b_start);
        let g = h.take(bc - 1, 1);
        assert_eq!(g.start, b_start + PAGE_BYTES);
        h.free(f);
        h.free(g);
        h.free(a);
        h.free(d);
    }
    // Everything coalesced back into one run: the arena's whole length fits at
    // its start again.
    let st = h.stats();
    assert_eq!(st.inuse, 0);
    let all = (st.sys as usize) / PAGE_BYTES;
    let whole = h.take(all, 1);
    assert_eq!(
        h.stats().arenas,
        1,
        "a span as long as the arena must fit in it once everything is free"
    );
    h.free(whole);
}

#[test]
fn coalescing_mmap() {
    coalescing(MmapSource::new());
}

#[test]
fn coalescing_recorded() {
    coalescing(Rec64::new(MmapSource::new()));
}

// ------------------------------------------------------------------ large spans

#[test]
fn large_spans_of_many_sizes() {
    let mut h = H::new(Rec64::new(MmapSource::new()));
    let mut spans = Vec::new();
    for bytes in [
        1,
        4096,
        PAGE_BYTES,
        PAGE_BYTES + 1,
        40_000,
        MIB,
        CHUNK_BYTES - 1,
        CHUNK_BYTES,
        CHUNK_BYTES + 1,
        9 * MIB + 7,
    ] {
        let sp = h.large(bytes, 8);
        assert_eq!(sp.npages, bytes.div_ceil(PAGE_BYTES));
        spans.push(sp);
    }
    assert_eq!(
        h.stats().arenas,
        1,
        "all of these fit in the first 64 MiB arena"
    );
    assert_eq!(h.stats().large.mallocs, spans.len() as u64);
    h.src.take_log();

    // Larger than an arena: a new arena sized for it (whole chunks).
    for (bytes, arena) in [
        (100 * MIB, 100 * MIB),
        (100 * MIB + 1, 104 * MIB),
        (64 * MIB + PAGE_BYTES, 68 * MIB),
    ] {
        let before = h.stats();
        let sp = h.large(bytes, 8);
        let log = h.src.take_log();
        let st = h.stats();
        assert_eq!(
            reserves(&log).len(),
            1,
            "one new arena for {bytes:#x}: {log:?}"
        );
        assert_eq!(reserves(&log)[0].1, arena, "arena size for {bytes:#x}");
        assert_eq!(st.arenas, before.arenas + 1);
        assert_eq!(st.sys, before.sys + arena as u64);
        assert_eq!(reserves(&log)[0].0, sp.start, "the object starts the arena");
        // Only the object's pages were made Ready.
        assert_eq!(readies(&log).iter().map(|r| r.1).sum::<usize>(), sp.bytes());
        spans.push(sp);
    }
    // Freed, its arena serves the same size again at the same address.
    let i = spans.iter().position(|s| s.bytes() == 100 * MIB).unwrap();
    let big = spans.swap_remove(i);
    let big_start = big.start;
    h.free(big);
    let again = h.large(100 * MIB, 8);
    assert_eq!(again.start, big_start);
    assert_eq!(
        h.stats().arenas,
        4,
        "no new arena for a size that fits a free one"
    );
    spans.push(again);

    for sp in spans {
        h.free(sp);
    }
    let st = h.stats();
    assert_eq!((st.inuse, st.large.live_bytes), (0, 0));
    assert_eq!(st.large.mallocs, st.large.frees);
}

#[test]
fn zero_byte_large_object_is_one_page() {
    // `Heap::allocate` sends a zero-size layout with alignment above a page here.
    let mut h = H::new(Rec64::new(MmapSource::new()));
    for _ in 0..3 {
        let sp = h.large(0, 2 * PAGE_BYTES);
        assert_eq!(sp.npages, 1);
        h.free(sp);
        assert_eq!(h.stats().large.live_bytes, 0);
    }
}

// ------------------------------------------------------------------ alignment

fn alignments<S: Probe>(src: S) {
    let mut h = H::new(src);
    // A first span, so that later requests meet an arena that exists already.
    let first = h.take(1, 1);
    let mut held = Vec::new();
    let mut align = PAGE_BYTES;
    while align <= 64 * MIB {
        for npages in [1, 3, 600] {
            let sp = h.large(npages * PAGE_BYTES, align);
            assert_eq!(
                sp.start % align,
                0,
                "{npages} pages at alignment {align:#x}: {:#x}",
                sp.start
            );
            held.push(sp);
        }
        // Free one of each size again, to leave odd holes behind.
        let sp = held.swap_remove(held.len() - 2);
        h.free(sp);
        align *= 2;
    }
    for sp in held {
        h.free(sp);
    }
    h.free(first);
    // Again, into the holes of a heap with several arenas.
    let mut align = PAGE_BYTES;
    while align <= 64 * MIB {
        let sp = h.large(5 * PAGE_BYTES, align);
        assert_eq!(
            sp.start % align,
            0,
            "5 pages at alignment {align:#x} after frees: {:#x}",
            sp.start
        );
        h.free(sp);
        align *= 2;
    }
}

#[test]
fn alignments_mmap() {
    alignments(MmapSource::new());
}

#[test]
fn alignments_recorded() {
    alignments(Rec64::new(MmapSource::new()));
}

/// Arenas are chunk (4 MiB) aligned and no more; an alignment above that must
/// still be an alignment of the address, not of the page index in the arena.
#[test]
fn alignments_above_arena_alignment() {
    alignments(Rec64::skewed(MmapSource::new()));
    let mut h = H::new(Rec64::skewed(MmapSource::new()));
    let a = h.take(1, 1);
    let (base, _) = h.src.arenas()[0];
    assert_eq!(base % CHUNK_BYTES, 0);
    assert_ne!(
        base % (2 * CHUNK_BYTES),
        0,
        "the skewed source gives a base aligned to 4 MiB only"
    );
    for align in [2 * CHUNK_BYTES, 4 * CHUNK_BYTES, 16 * CHUNK_BYTES] {
        let sp = h.large(PAGE_BYTES, align);
        assert_eq!(
            sp.start % align,
            0,
            "alignment {align:#x}: got {:#x} in arena {base:#x}",
            sp.start
        );
        h.free(sp);
    }
    h.free(a);
}

// ------------------------------------------------------------------ resize_large

fn resize<S: Probe>(src: S) {
    let mut h = H::new(src);
    h.heap.set_retain_bytes(usize::MAX, GO_PAGE);
    let mut a = h.large(10 * PAGE_BYTES, 8);
    let b = h.large(5 * PAGE_BYTES, 8);
    assert_eq!(b.start, a.end());
    // The next pages are in use: refused, nothing changes.
    assert!(!h.resize(&mut a, 12));
    assert!(!h.resize(&mut a, 11));
    // Same size: trivially fine.
    assert!(h.resize(&mut a, 10));
    let b_start = b.start;
    h.free(b);
    // Now free: grows in place, into part of the hole and then all of it and beyond.
    assert!(h.resize(&mut a, 12));
    assert_eq!(h.stats().large.live_bytes as usize, 12 * PAGE_BYTES);
    assert!(h.resize(&mut a, 40));
    assert!(a.end() > b_start + 5 * PAGE_BYTES);
    // Shrinks in place; the tail is free and first fit finds it.
    assert!(h.resize(&mut a, 4));
    assert_eq!(h.stats().large.live_bytes as usize, 4 * PAGE_BYTES);
    let c = h.take(8, 1);
    assert_eq!(c.start, a.end());
    // Blocked again by c.
    assert!(!h.resize(&mut a, 5));
    h.free(c);
    assert!(h.resize(&mut a, 5));
    assert!(h.resize(&mut a, 1));
    // Growing over the end of the arena is refused.
    let arena_pages = (h.stats().sys as usize) / PAGE_BYTES;
    assert!(!h.resize(&mut a, arena_pages + 1));
    // Growing to the end of the arena (when a is at its start) works.
    // `a` was the first span of the only arena: it can grow to the whole arena.
    assert_eq!(h.stats().arenas, 1);
    assert!(h.resize(&mut a, arena_pages));
    assert!(h.resize(&mut a, 1));
    h.free(a);
}

#[test]
fn resize_large_mmap() {
    resize(MmapSource::new());
}

#[test]
fn resize_large_recorded() {
    resize(Rec64::new(MmapSource::new()));
}

/// Growing in place over released pages makes exactly those Ready.
#[test]
fn resize_large_over_released_pages() {
    let mut h = H::new(Rec64::new(MmapSource::new()));
    h.heap.set_retain_bytes(usize::MAX, GO_PAGE);
    let mut a = h.large(4 * PAGE_BYTES, 8);
    let b = h.large(6 * PAGE_BYTES, 8);
    let c = h.large(2 * PAGE_BYTES, 8);
    let b_start = b.start;
    h.free(b);
    // Release the top 4 pages of b's hole only.
    h.src.take_log();
    assert_eq!(h.heap.scavenge(&h.src, 4), 4);
    let log = h.src.take_log();
    assert_eq!(releases(&log), [(b_start + 2 * PAGE_BYTES, 4 * PAGE_BYTES)]);
    h.check();
    // Grow a over 2 dirty pages: no ready call.
    assert!(h.resize(&mut a, 6));
    assert_eq!(readies(&h.src.take_log()), []);
    // Then over the released ones: ready exactly on them.
    assert!(h.resize(&mut a, 10));
    assert_eq!(
        readies(&h.src.take_log()),
        [(b_start + 2 * PAGE_BYTES, 4 * PAGE_BYTES)]
    );
    assert!(!h.resize(&mut a, 11));
    h.free(c);
    h.free(a);
}

// ------------------------------------------------------------------ page map

fn page_map<S: Probe>(src: S) {
    let mut h = H::new(src);
    let stack = 0u64;
    let boxed = Box::new(0u64);
    let outside = [
        0usize,
        1,
        4096,
        &stack as *const u64 as usize,
        &*boxed as *const u64 as usize,
        usize::MAX >> 1,
        usize::MAX,
    ];
    for a in outside {
        assert!(
            h.map.span_of(Addr::new(a), GO_PAGE).is_null(),
            "{a:#x} before any arena"
        );
    }
    let pad = h.take(1, 1);
    // 600 pages crosses a chunk boundary (512 pages) of the map.
    let spans: Vec<Sp> = [1usize, 2, 7, 600, 1, 513]
        .iter()
        .map(|&n| h.take(n, 1))
        .collect();
    for sp in &spans {
        h.assert_mapped(sp, 0, sp.npages);
        // A span's neighbours are other spans or free pages.
        let before = h.map.span_of(Addr::new(sp.start - 1), GO_PAGE);
        assert_ne!(before, sp.s.as_ptr());
        let after = h.map.span_of(Addr::new(sp.end()), GO_PAGE);
        assert_ne!(after, sp.s.as_ptr());
    }
    // Past the last span: free pages of the arena map to null.
    let top = spans.iter().map(|s| s.end()).max().unwrap();
    h.assert_unmapped(top, 10);
    for a in outside {
        assert!(
            h.map.span_of(Addr::new(a), GO_PAGE).is_null(),
            "{a:#x} with arenas"
        );
    }
    // Freed spans map to null on every page; the others are untouched.
    for (i, sp) in spans.iter().enumerate() {
        if i % 2 == 1 {
            h.free(*sp);
        }
    }
    for (i, sp) in spans.iter().enumerate() {
        if i % 2 == 0 {
            h.assert_mapped(sp, 0, sp.npages);
        } else {
            h.assert_unmapped(sp.start, sp.npages);
        }
    }
    // A new span over a freed one takes its entries.
    let again = h.take(1, 1);
    assert_eq!(again.start, spans[1].start);
    h.assert_mapped(&again, 0, 1);
    h.free_all();
    h.assert_unmapped(pad.start, (top - pad.start) / PAGE_BYTES);
}

#[test]
fn page_map_mmap() {
    page_map(MmapSource::new());
}

#[test]
fn page_map_recorded() {
    page_map(Rec64::new(MmapSource::new()));
}

/// With the recorder we know where the arenas are: just outside them is null.
#[test]
fn page_map_outside_arenas() {
    let mut h = H::new(Rec4::new(MmapSource::new()));
    // Fill three 4 MiB arenas entirely.
    let spans: Vec<Sp> = (0..3).map(|_| h.take(CHUNK_PAGES, 1)).collect();
    let arenas = h.src.arenas();
    assert_eq!(arenas.len(), 3);
    for &(base, bytes) in &arenas {
        let covered = |a: usize| arenas.iter().any(|&(b, n)| b <= a && a < b + n);
        for a in [
            base.wrapping_sub(1),
            base.wrapping_sub(PAGE_BYTES),
            base + bytes,
            base + bytes + PAGE_BYTES - 1,
        ] {
            if !covered(a) {
                assert!(
                    h.map.span_of(Addr::new(a), GO_PAGE).is_null(),
                    "{a:#x} just outside arena {base:#x}"
                );
            }
        }
        let sp = spans
            .iter()
            .find(|s| s.start == base)
            .expect("a span fills each arena");
        h.assert_mapped(sp, 0, CHUNK_PAGES);
    }
    // A span never straddles two arenas, even contiguous ones: 2 chunks need a new arena.
    let two = h.take(2 * CHUNK_PAGES, 1);
    assert_eq!(h.src.arenas().len(), 4);
    h.assert_mapped(&two, 0, two.npages);
    h.free_all();
}

// ------------------------------------------------------------------ small spans

#[test]
fn small_spans_for_classes() {
    let mut h = H::new(Rec64::new(MmapSource::new()));
    let mut got = Vec::new();
    for c in SizeClass::small_classes() {
        let s = h.heap.alloc_small_span(&h.src, &h.map, c).expect("span");
        // SAFETY: fresh span record.
        let span = unsafe { s.as_ref() };
        assert_eq!(span.state, SpanState::Small);
        assert_eq!(span.class, c);
        assert_eq!(span.npages(), GO.span_pages(c));
        assert_eq!(span.nelems as usize, GO.objects(c));
        assert_eq!(span.alloc_count, 0);
        h.src
            .assert_ready(span.start.get(), span.npages().bytes(GO_PAGE));
        let sp = Sp {
            s,
            start: span.start.get(),
            npages: span.npages().get(),
        };
        h.assert_mapped(&sp, 0, sp.npages);
        got.push(sp);
    }
    assert_eq!(h.stats().spans as usize, got.len());
    for sp in got {
        // SAFETY: ours, unused.
        unsafe { h.heap.free_span(&h.src, sp.s) };
        h.assert_unmapped(sp.start, sp.npages);
    }
    h.check();
}

// ------------------------------------------------------------------ scavenger

/// Scavenging releases the highest free pages first, in maximal runs, the last
/// run clipped to keep its highest pages.
#[test]
fn scavenge_releases_highest_first() {
    let mut h = H::new(Rec64::new(MmapSource::new()));
    h.heap.set_retain_bytes(usize::MAX, GO_PAGE);
    let s: Vec<Sp> = (0..6).map(|_| h.take(16, 1)).collect();
    h.free(s[1]);
    h.free(s[3]);
    h.free(s[4]); // coalesces with s[3]: one 32-page run
    h.src.take_log();
    assert_eq!(h.dirty_pages(), 48);

    // 40 pages: all of s3+s4 (one call), then the top 8 pages of s1.
    assert_eq!(h.heap.scavenge(&h.src, 40), 40);
    let log = h.src.take_log();
    assert_eq!(
        releases(&log),
        [
            (s[3].start, 32 * PAGE_BYTES),
            (s[1].start + 8 * PAGE_BYTES, 8 * PAGE_BYTES)
        ],
        "{log:?}"
    );
    assert_eq!(log.len(), 2, "only releases: {log:?}");
    assert_eq!(h.dirty_pages(), 8);
    h.check();

    // Everything else.
    assert_eq!(h.heap.scavenge(&h.src, usize::MAX), 8);
    assert_eq!(releases(&h.src.take_log()), [(s[1].start, 8 * PAGE_BYTES)]);
    // Nothing left: no calls.
    assert_eq!(h.heap.scavenge(&h.src, usize::MAX), 0);
    assert_eq!(h.src.take_log(), []);
    assert_eq!(h.stats().scavenged_total as usize, 48 * PAGE_BYTES);
    h.check();

    // Reuse: the released pages are made Ready, exactly the released runs, before
    // the span is handed out (the harness also checks every page is Ready).
    let x = h.take(20, 1); // s1's hole is 16 pages: goes to s3+s4's 32
    assert_eq!(x.start, s[3].start);
    assert_eq!(readies(&h.src.take_log()), [(s[3].start, 20 * PAGE_BYTES)]);
    let y = h.take(16, 1);
    assert_eq!(y.start, s[1].start);
    assert_eq!(readies(&h.src.take_log()), [(s[1].start, 16 * PAGE_BYTES)]);
    h.free_all();
}

/// A range that is partly dirty, partly released: `ready` on the released runs only.
#[test]
fn reuse_readies_only_released_runs() {
    let mut h = H::new(Rec64::new(MmapSource::new()));
    h.heap.set_retain_bytes(usize::MAX, GO_PAGE);
    let s: Vec<Sp> = (0..5).map(|_| h.take(8, 1)).collect();
    h.free(s[1]);
    h.free(s[2]);
    h.free(s[3]);
    // One dirty run s1..s3 (24 pages); release its top 12: s3 and the top half of s2.
    assert_eq!(h.heap.scavenge(&h.src, 12), 12);
    h.src.take_log();
    let big = h.take(24, 1);
    assert_eq!(big.start, s[1].start);
    let log = h.src.take_log();
    assert_eq!(
        readies(&log),
        [(s[2].start + 4 * PAGE_BYTES, 12 * PAGE_BYTES)],
        "{log:?}"
    );
    h.free_all();
}

/// Scavenging goes down through arenas by address: the highest arena first.
#[test]
fn scavenge_across_arenas() {
    let mut h = H::new(Rec4::new(MmapSource::new()));
    h.heap.set_retain_bytes(usize::MAX, GO_PAGE);
    // Three 4 MiB arenas, filled, then each with a free run of 100 pages and one of 50.
    let mut frees = Vec::new();
    for _ in 0..3 {
        let a = h.take(100, 1);
        let _b = h.take(10, 1);
        let c = h.take(50, 1);
        let _d = h.take(CHUNK_PAGES - 160, 1);
        frees.push(a);
        frees.push(c);
    }
    let mut holes: Vec<(usize, usize)> = frees.iter().map(|s| (s.start, s.npages)).collect();
    for sp in frees {
        h.free(sp);
    }
    assert_eq!(h.stats().arenas, 3);
    assert_eq!(h.dirty_pages(), 450);
    h.src.take_log();
    // Expected order: runs by address, highest first; 300 pages stop inside one.
    holes.sort_by_key(|h| core::cmp::Reverse(h.0));
    let mut want = Vec::new();
    let mut left = 300;
    for &(a, n) in &holes {
        if left == 0 {
            break;
        }
        let k = n.min(left);
        want.push((a + (n - k) * PAGE_BYTES, k * PAGE_BYTES));
        left -= k;
    }
    assert_eq!(h.heap.scavenge(&h.src, 300), 300);
    assert_eq!(releases(&h.src.take_log()), want);
    h.check();
    h.free_all();
}

/// The in-use share of the scavenger's allowance (`pageheap::RETAIN_INUSE_DIVISOR`).
const INUSE_DIVISOR: usize = tieralloc::internals::RETAIN_INUSE_DIVISOR;
/// The hysteresis of the scavenger (`pageheap::RELEASE_GAP_DIVISOR`).
const GAP_DIVISOR: usize = tieralloc::internals::RELEASE_GAP_DIVISOR;

/// Churns one one-page span `MIN_EPOCH_PAGES.get() * (PEAK_EPOCHS + 2)` times: enough
/// epochs of traffic at a tiny size for the scavenger to forget an old peak.
fn age_out_peak<S: Probe>(h: &mut H<S>, mut each_free: impl FnMut(&mut H<S>, Sp)) {
    for _ in
        0..tieralloc::internals::MIN_EPOCH_PAGES.get() * (tieralloc::internals::PEAK_EPOCHS + 2) / 2
    {
        let sp = h.take(1, 1);
        each_free(h, sp);
    }
}

/// Freeing lots of memory releases only what exceeds the scavenger's allowance
/// (`PageHeap::dirty_allowance`), going an eighth of it below, from the highest
/// dirty pages; the allowance is never below `max(retain, inuse / INUSE_DIVISOR)`
/// nor above `max(retain, peak * 3/2 - inuse)`. Freeing the whole heap keeps
/// the peak's footprint (one epoch); once a small churn has aged the peak out,
/// only `retain` is kept.
#[test]
fn retained_budget() {
    let mut h = H::new(Rec64::new(MmapSource::new()));
    let retain_pages = 512; // 4 MiB
    h.heap.set_retain_bytes(retain_pages * PAGE_BYTES, GO_PAGE);
    let mut spans: Vec<Sp> = (0..80).map(|_| h.take(64, 1)).collect(); // 40 MiB
    let peak = 80 * 64;
    let mut rng = Rng::new(7);
    let mut released_any = false;
    let mut free_and_check = |h: &mut H<Rec64>, sp: Sp| {
        let dirty_before = h.dirty_pages();
        h.src.take_log();
        let n = sp.npages;
        h.free(sp);
        let log = h.src.take_log();
        let inuse = h.stats().inuse as usize / PAGE_BYTES;
        let allowance = h.heap.dirty_allowance(GO_PAGE).get();
        assert!(
            allowance >= retain_pages.max(inuse / INUSE_DIVISOR),
            "allowance {allowance} inuse {inuse}"
        );
        assert!(
            allowance <= retain_pages.max(peak + peak / INUSE_DIVISOR - inuse),
            "allowance {allowance} inuse {inuse}"
        );
        let dirty = dirty_before + n;
        let rel = releases(&log);
        if dirty > allowance {
            let target = allowance - allowance / GAP_DIVISOR;
            assert_eq!(h.dirty_pages(), target, "trimmed to an eighth below the allowance: dirty_before {dirty_before} inuse {inuse} allowance {allowance} rel {rel:x?}");
            assert_eq!(
                rel.iter().map(|r| r.1).sum::<usize>(),
                (dirty - target) * PAGE_BYTES
            );
            // Highest first: everything released lies above every page still dirty.
            let live: Vec<(usize, usize)> = h.live.iter().map(|s| (s.start, s.end())).collect();
            let top_dirty = h
                .src
                .ready_pages()
                .into_iter()
                .filter(|&p| !live.iter().any(|&(a, b)| a <= p && p < b))
                .max();
            let low_released = rel.iter().map(|r| r.0).min().unwrap();
            if let Some(t) = top_dirty {
                assert!(
                    t < low_released,
                    "dirty page {t:#x} above released {low_released:#x}"
                );
            }
            released_any = true;
        } else {
            assert_eq!(rel, [], "released within the allowance");
            assert_eq!(h.dirty_pages(), dirty);
        }
        assert!(h.dirty_pages() <= allowance);
    };
    while !spans.is_empty() {
        let sp = spans.swap_remove(rng.below(spans.len()));
        free_and_check(&mut h, sp);
    }
    assert_eq!(
        h.dirty_pages(),
        peak,
        "freeing the whole heap keeps it for a rebuild"
    );
    age_out_peak(&mut h, &mut free_and_check);
    assert!(released_any);
    assert_eq!(
        h.heap.dirty_allowance(GO_PAGE).get(),
        retain_pages,
        "the peak aged out: only retain is kept"
    );
    assert!(h.dirty_pages() <= retain_pages);

    // An unlimited budget: nothing is ever released.
    h.heap.set_retain_bytes(usize::MAX, GO_PAGE);
    let spans: Vec<Sp> = (0..80).map(|_| h.take(64, 1)).collect();
    h.src.take_log();
    for sp in spans {
        h.free(sp);
    }
    age_out_peak(&mut h, |h, sp| h.free(sp));
    assert_eq!(releases(&h.src.take_log()), []);

    // No budget: the in-use share keeps a little while spans are live, and
    // once the peak ages out everything dirty goes.
    h.heap.set_retain_bytes(0, GO_PAGE);
    let spans: Vec<Sp> = (0..10).map(|_| h.take(64, 1)).collect();
    for sp in spans {
        h.free(sp);
        assert!(h.dirty_pages() <= h.heap.dirty_allowance(GO_PAGE).get());
    }
    age_out_peak(&mut h, |h, sp| {
        h.free(sp);
        assert!(h.dirty_pages() <= h.heap.dirty_allowance(GO_PAGE).get());
    });
    assert!(h.dirty_pages() <= 1, "{}", h.dirty_pages());
}

/// The in-use term of the allowance: a big live heap keeps a share of itself dirty.
#[test]
fn retained_budget_scales_with_inuse() {
    let mut h = H::new(Rec64::new(MmapSource::new()));
    h.heap.set_retain_bytes(0, GO_PAGE);
    let keep = h.large(48 * MIB, 8); // 6144 pages in use: at least 6144 / INUSE_DIVISOR kept
    let spans: Vec<Sp> = (0..8).map(|_| h.take(64, 1)).collect(); // 512 pages
    h.src.take_log();
    for sp in spans {
        h.free(sp);
    }
    assert_eq!(
        releases(&h.src.take_log()),
        [],
        "512 dirty pages are within 6144 / INUSE_DIVISOR"
    );
    assert_eq!(h.dirty_pages(), 512);
    h.free(keep);
    // Nothing in use: kept until the peak ages out, then all released.
    age_out_peak(&mut h, |h, sp| h.free(sp));
    assert!(h.dirty_pages() <= 1, "{}", h.dirty_pages());
}

// ------------------------------------------------------------------ state machine

/// New arena pages start released (Prepared); every page is made Ready only
/// when first handed out, and only once.
#[test]
fn new_arena_pages_start_released() {
    let mut h = H::new(Rec64::new(MmapSource::new()));
    let a = h.take(3, 1);
    let log = h.src.take_log();
    let res = reserves(&log);
    assert_eq!(res.len(), 1);
    assert_eq!(res[0].1, Rec64::ARENA_BYTES);
    assert!(log.contains(&Call::Commit(res[0].0, res[0].1)), "{log:?}");
    assert_eq!(readies(&log), [(a.start, 3 * PAGE_BYTES)]);
    let st = h.stats();
    assert_eq!(st.released as usize, Rec64::ARENA_BYTES - 3 * PAGE_BYTES);
    let b = h.take(2, 1);
    assert_eq!(readies(&h.src.take_log()), [(b.start, 2 * PAGE_BYTES)]);
    h.free(a);
    // a's pages are dirty now: no ready when reused.
    let c = h.take(3, 1);
    assert_eq!(c.start, a.start);
    assert_eq!(readies(&h.src.take_log()), []);
    h.free_all();
}

/// Random spans of random sizes and alignments, frees, resizes and scavenges;
/// every step fully checked. The recorder catches any call out of state.
fn stress<S: Probe>(src: S, seed: u64, steps: usize) {
    let mut h = H::new(src);
    let mut rng = Rng::new(seed);
    h.heap.set_retain_bytes(2 * MIB, GO_PAGE);
    let (mut grown, mut shrunk, mut refused) = (0, 0, 0);
    for step in 0..steps {
        match rng.below(100) {
            0..=44 => {
                let npages = match rng.below(10) {
                    0..=5 => 1 + rng.below(8),
                    6..=8 => 1 + rng.below(300),
                    _ => 400 + rng.below(3000),
                };
                let max_shift = if rng.below(8) == 0 { 13 } else { 4 };
                let align = 1usize << rng.below(max_shift);
                if rng.below(2) == 0 {
                    h.take(npages, align);
                } else {
                    h.large(
                        npages * PAGE_BYTES - rng.below(PAGE_BYTES),
                        align * PAGE_BYTES,
                    );
                }
            }
            45..=79 if !h.live.is_empty() => {
                let i = rng.below(h.live.len());
                let sp = h.live[i];
                h.free(sp);
            }
            80..=94 => {
                let larges: Vec<Sp> = h
                    .live
                    .iter()
                    .copied()
                    .filter(|s| s.state() == SpanState::Large)
                    .collect();
                if !larges.is_empty() {
                    let mut sp = larges[rng.below(larges.len())];
                    let n = 1 + rng.below(2 * sp.npages + 8);
                    let old = sp.npages;
                    let next_free = n <= old
                        || h.live
                            .iter()
                            .all(|o| o.start >= sp.start + n * PAGE_BYTES || o.end() <= sp.end());
                    let ok = h.resize(&mut sp, n);
                    // It must succeed when shrinking; growing may also be refused at an arena end.
                    if n <= old {
                        assert!(ok, "step {step}: shrink refused");
                    }
                    if !next_free {
                        assert!(!ok, "step {step}: grew over a live span");
                    }
                    match (ok, n > old) {
                        (true, true) => grown += 1,
                        (true, false) => shrunk += 1,
                        (false, _) => refused += 1,
                    }
                }
            }
            95..=97 => {
                let k = rng.below(2000);
                h.heap.scavenge(&h.src, k);
                h.check();
            }
            _ => {
                h.heap.set_retain_bytes(rng.below(8) * MIB, GO_PAGE);
            }
        }
    }
    assert!(
        grown > 0 && shrunk > 0 && refused > 0,
        "resizes: {grown} grown, {shrunk} shrunk, {refused} refused"
    );
    h.free_all();
    h.heap.scavenge(&h.src, usize::MAX);
    h.check();
    let st = h.stats();
    assert_eq!(st.inuse, 0);
    assert_eq!(
        st.released, st.sys,
        "everything released after a full scavenge"
    );
}

#[test]
fn stress_recorded() {
    stress(Rec64::new(MmapSource::new()), 1, 3000);
}

#[test]
fn stress_recorded_small_arenas() {
    stress(Rec4::new(MmapSource::new()), 2, 3000);
}

#[test]
fn stress_skewed() {
    stress(Rec4::skewed(MmapSource::new()), 3, 3000);
}

#[test]
fn stress_mmap() {
    stress(MmapSource::new(), 4, 3000);
}
