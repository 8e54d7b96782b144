//! Out-of-memory injection and recovery, through `FailingSource<MmapSource>`
//! (a budget of bytes that may become Ready), plus impossible layouts and
//! every alignment up to the arena size. Every heap's source is also under
//! the checking source, so each failure path is checked against the page
//! source's state machine too.
//!
//! Every test has a heap of its own (a `static`), so the statistics are exact.
//! Allocation failure must come back as null: never a panic or an abort.
#![cfg(feature = "linux")]

mod common;

use core::alloc::Layout;

use common::{rounded, single_cpu_heap, Rng};
use tieralloc::internals::CheckedSource;
use tieralloc::source::failing::FailingSource;
use tieralloc::{Heap, MmapSource, PageSource, SingleCpu, Stats, TINY_BLOCK};

type Source = CheckedSource<FailingSource<MmapSource>, { MmapSource::ARENA_BYTES }>;
type OomHeap = Heap<Source, SingleCpu>;

macro_rules! oom_heap {
    ($budget:expr) => {{
        static HEAP: OomHeap = Heap::new(
            CheckedSource::new(FailingSource::new(MmapSource::new(), $budget)),
            SingleCpu::new(),
        );
        &HEAP
    }};
}

/// Upper bound on allocation attempts of a fill loop: a heap that never says
/// "no" fails the test instead of eating the machine.
const MAX_ATTEMPTS: usize = 4_000_000;

// ---------------------------------------------------------------- helpers

#[derive(Clone, Copy)]
struct Obj {
    p: *mut u8,
    layout: Layout,
    tag: u8,
}

/// Writes `tag` over the object (head, tail and every 4 KiB beyond 64 KiB).
fn fill(o: &Obj) {
    let n = o.layout.size();
    // SAFETY: the object is ours and `n` bytes long.
    unsafe {
        if n <= 64 << 10 {
            o.p.write_bytes(o.tag, n);
        } else {
            let mut k = 0;
            while k < n {
                *o.p.add(k) = o.tag;
                k += 4096;
            }
            *o.p.add(n - 1) = o.tag;
        }
    }
}

fn verify(o: &Obj) {
    let n = o.layout.size();
    let check = |i: usize| {
        // SAFETY: `i < n`, the object is ours.
        let b = unsafe { *o.p.add(i) };
        assert_eq!(
            b, o.tag,
            "object {:p} ({:?}) corrupt at byte {i}",
            o.p, o.layout
        );
    };
    if n <= 64 << 10 {
        (0..n).for_each(check);
    } else {
        (0..n).step_by(4096).for_each(check);
        check(n - 1);
    }
}

/// Invariants, and the statistics against the live set.
fn check(heap: &OomHeap, live: &[Obj]) -> Stats {
    heap.check_invariants();
    let st = heap.stats();
    assert_eq!(
        st.mallocs - st.frees,
        live.len() as u64,
        "live objects\n{st}"
    );
    assert_eq!(
        st.heap_alloc - TINY_BLOCK as u64 * st.tiny_blocks,
        live.iter().map(|o| rounded(o.layout)).sum::<u64>(),
        "heap_alloc\n{st}"
    );
    assert_eq!(st.heap_idle, st.heap_sys - st.heap_inuse);
    assert!(st.heap_released <= st.heap_idle);
    assert!(st.heap_alloc + st.cached_bytes <= st.heap_inuse, "{st}");
    st
}

fn alloc_obj(heap: &OomHeap, layout: Layout, tag: u8) -> Option<Obj> {
    let p = heap.allocate(layout);
    if p.is_null() {
        return None;
    }
    assert_eq!(
        p as usize % layout.align(),
        0,
        "{layout:?} misaligned at {p:p}"
    );
    let o = Obj { p, layout, tag };
    fill(&o);
    Some(o)
}

fn free_obj(heap: &OomHeap, o: Obj) {
    verify(&o);
    // SAFETY: a live object of this heap, with its layout.
    unsafe { heap.deallocate(o.p, o.layout) };
}

/// Allocates from `next` until the heap says no; returns the objects and the
/// layout that failed.
fn fill_until_null(heap: &OomHeap, mut next: impl FnMut() -> Layout) -> (Vec<Obj>, Layout) {
    let mut live = Vec::new();
    for i in 0..MAX_ATTEMPTS {
        let l = next();
        match alloc_obj(heap, l, i as u8) {
            Some(o) => live.push(o),
            None => return (live, l),
        }
    }
    panic!(
        "no allocation failed after {MAX_ATTEMPTS} attempts (budget left {})",
        heap.source().inner().budget()
    );
}

/// Frees the objects picked by `pick(i)` and allocates their layouts again, in
/// their original order. With `strict` every re-allocation must succeed;
/// otherwise (a mix of sizes, where a freed hole may not fit the next span
/// shape) at least three quarters of them. Returns the live set.
fn free_and_reallocate(
    heap: &OomHeap,
    live: Vec<Obj>,
    pick: impl Fn(usize) -> bool,
    strict: bool,
) -> Vec<Obj> {
    let mut kept = Vec::new();
    let mut freed = Vec::new();
    for (i, o) in live.into_iter().enumerate() {
        if pick(i) {
            freed.push(o.layout);
            free_obj(heap, o);
        } else {
            kept.push(o);
        }
    }
    check(heap, &kept);
    let mut failed = 0;
    for (i, l) in freed.iter().enumerate() {
        match alloc_obj(heap, *l, 0x80 | i as u8) {
            Some(o) => kept.push(o),
            None if strict => panic!(
                "re-allocation {i} of {} ({l:?}) failed after freeing\n{}",
                freed.len(),
                heap.stats()
            ),
            None => failed += 1,
        }
    }
    eprintln!("{failed} of {} re-allocations failed", freed.len());
    assert!(
        failed * 4 <= freed.len(),
        "{failed} of {} re-allocations failed after freeing\n{}",
        freed.len(),
        heap.stats()
    );
    check(heap, &kept);
    kept
}

/// The OOM scenario: fill until null, a few more failures, check; free the
/// newest half and allocate it again; free every other object and allocate
/// those again; free all. With objects of one layout (`uniform`) every
/// re-allocation must succeed; with a mix, first fit may split a hole that a
/// later span of another shape needed, so only most of them must.
fn exhaust_and_recover(heap: &OomHeap, next: impl FnMut() -> Layout, uniform: bool) -> usize {
    let (live, failed) = fill_until_null(heap, next);
    assert!(!live.is_empty(), "nothing could be allocated");
    // Failing again does not break anything.
    for _ in 0..10 {
        assert!(
            heap.allocate(failed).is_null(),
            "{failed:?} succeeded right after failing, with no free in between"
        );
    }
    check(heap, &live);
    for o in &live {
        verify(o);
    }
    let n = live.len();
    let live = free_and_reallocate(heap, live, |i| i >= n / 2, uniform);
    let mut live = free_and_reallocate(heap, live, |i| i % 2 == 0, uniform);
    for o in live.drain(..) {
        free_obj(heap, o);
    }
    let st = check(heap, &[]);
    assert_eq!(st.mallocs, st.frees);
    heap.scavenge();
    let st = check(heap, &[]);
    assert_eq!(st.heap_inuse, 0, "{st}");
    assert_eq!(st.heap_alloc, 0, "{st}");
    assert_eq!(st.heap_released, st.heap_idle, "{st}");
    n
}

const MIB: usize = 1 << 20;

// ------------------------------------------------------------------ tests

#[test]
fn small_objects_until_null() {
    let heap = oom_heap!(8 * MIB);
    let l = Layout::from_size_align(256, 8).unwrap();
    let n = exhaust_and_recover(heap, || l, true);
    // Most of the budget went to objects, not to metadata.
    assert!(
        n * 256 > 6 * MIB && n * 256 <= 8 * MIB,
        "{n} objects of 256 B from an 8 MiB budget"
    );
}

#[test]
fn small_objects_of_every_size_until_null() {
    let heap = oom_heap!(8 * MIB);
    let mut rng = Rng::new(7);
    exhaust_and_recover(
        heap,
        || Layout::from_size_align(rng.range(1, 32768), 1 << rng.range(0, 4)).unwrap(),
        false,
    );
}

#[test]
fn large_objects_until_null() {
    let heap = oom_heap!(32 * MIB);
    let l = Layout::from_size_align(MIB, 8).unwrap();
    let n = exhaust_and_recover(heap, || l, true);
    assert!(
        (28..=32).contains(&n),
        "{n} objects of 1 MiB from a 32 MiB budget"
    );
}

#[test]
fn mixed_objects_until_null() {
    let heap = oom_heap!(48 * MIB);
    let mut rng = Rng::new(11);
    exhaust_and_recover(
        heap,
        || {
            let size = match rng.range(0, 99) {
                0..=19 => rng.range(1, 15),
                20..=79 => rng.range(16, 32768),
                _ => rng.range(32769, 3 * MIB),
            };
            let align = match rng.range(0, 99) {
                0..=89 => 8,
                _ => 1 << rng.range(4, 16),
            };
            Layout::from_size_align(size, align).unwrap()
        },
        false,
    );
}

#[test]
fn mixed_fill_keeps_going_after_first_null() {
    // After the first failure smaller requests may still fit: keep asking until
    // even the smallest ones fail, then everything must still be consistent.
    let heap = oom_heap!(16 * MIB);
    let mut rng = Rng::new(13);
    let mut live = Vec::new();
    let mut nulls = 0;
    for i in 0..MAX_ATTEMPTS {
        let size = if nulls == 0 {
            rng.range(1, 2 * MIB)
        } else {
            rng.range(1, 4096)
        };
        let l = Layout::from_size_align(size, 8).unwrap();
        match alloc_obj(heap, l, i as u8) {
            Some(o) => live.push(o),
            None => {
                nulls += 1;
                if nulls == 1000 {
                    break;
                }
            }
        }
    }
    assert_eq!(nulls, 1000);
    check(heap, &live);
    for o in live.drain(..) {
        free_obj(heap, o);
    }
    heap.scavenge();
    let st = check(heap, &[]);
    assert_eq!((st.heap_inuse, st.heap_alloc), (0, 0), "{st}");
}

#[test]
fn request_larger_than_budget() {
    let heap = oom_heap!(8 * MIB);
    // First request of all: the heap has no arena yet.
    for size in [9 * MIB, 64 * MIB, 200 * MIB] {
        let l = Layout::from_size_align(size, 8).unwrap();
        assert!(
            heap.allocate(l).is_null(),
            "{size} bytes from an 8 MiB budget"
        );
        assert!(
            heap.allocate_zeroed(l).is_null(),
            "{size} zeroed bytes from an 8 MiB budget"
        );
    }
    check(heap, &[]);
    // Small requests are still served.
    let mut live = Vec::new();
    for i in 0..2000 {
        let l = Layout::from_size_align(1 + i % 2000, 8).unwrap();
        live.push(alloc_obj(heap, l, i as u8).expect("small request after a failed huge one"));
    }
    // And the huge ones still fail, with an arena in place.
    let big = Layout::from_size_align(9 * MIB, 8).unwrap();
    assert!(heap.allocate(big).is_null());
    // Reallocating a live object to more than the budget fails and keeps it.
    let o = live.pop().unwrap();
    // SAFETY: live object with its layout.
    let q = unsafe { heap.reallocate(o.p, o.layout, 9 * MIB) };
    assert!(q.is_null());
    verify(&o);
    live.push(o);
    check(heap, &live);
    for o in live.drain(..) {
        free_obj(heap, o);
    }
    heap.scavenge();
    let st = check(heap, &[]);
    assert_eq!((st.heap_inuse, st.heap_alloc), (0, 0), "{st}");
}

#[test]
fn raise_budget_after_failure() {
    let heap = oom_heap!(16 * MIB);
    let big = Layout::from_size_align(MIB, 8).unwrap();
    let small = Layout::from_size_align(48, 8).unwrap();
    let (mut live, _) = fill_until_null(heap, || big);
    let (more, _) = fill_until_null(heap, || small);
    live.extend(more);
    assert!(heap.allocate(big).is_null());
    assert!(heap.allocate(small).is_null());
    check(heap, &live);

    heap.source().inner().set_budget(64 * MIB);
    for i in 0..32 {
        live.push(alloc_obj(heap, big, i).expect("large allocation after raising the budget"));
    }
    for i in 0..10_000 {
        live.push(
            alloc_obj(heap, small, i as u8).expect("small allocation after raising the budget"),
        );
    }
    check(heap, &live);
    for o in live.drain(..) {
        free_obj(heap, o);
    }
    heap.scavenge();
    let st = check(heap, &[]);
    assert_eq!((st.heap_inuse, st.heap_alloc), (0, 0), "{st}");
}

#[test]
fn zero_budget_from_the_start() {
    // Not even the per-CPU caches can be set up: every request fails cleanly.
    let heap = oom_heap!(0);
    for (size, align) in [
        (1, 1),
        (8, 8),
        (100, 8),
        (5000, 64),
        (40000, 8),
        (MIB, 4096),
    ] {
        let l = Layout::from_size_align(size, align).unwrap();
        assert!(heap.allocate(l).is_null(), "{l:?}");
        assert!(heap.allocate_zeroed(l).is_null(), "{l:?}");
    }
    heap.check_invariants();
    heap.source().inner().set_budget(usize::MAX);
    let mut live = Vec::new();
    for (i, (size, align)) in [
        (1, 1),
        (8, 8),
        (100, 8),
        (5000, 64),
        (40000, 8),
        (MIB, 4096),
    ]
    .into_iter()
    .enumerate()
    {
        let l = Layout::from_size_align(size, align).unwrap();
        live.push(alloc_obj(heap, l, i as u8).expect("allocation after the budget came"));
    }
    check(heap, &live);
    for o in live.drain(..) {
        free_obj(heap, o);
    }
    check(heap, &[]);
}

/// Layouts no heap can serve: more than the address space, or an alignment
/// whose over-reservation overflows it.
fn impossible_layouts() -> Vec<Layout> {
    beyond_address_space()
        .into_iter()
        .map(|(s, a)| Layout::from_size_align(s, a).unwrap())
        .collect()
}

/// Sizes near `isize::MAX` for an object of alignment `align`, which no
/// `realloc` can reach on a 64-bit target (none on a 32-bit one, whose
/// address space holds them: see [`near_max_layouts_serve_or_fail_cleanly`]).
fn impossible_sizes(align: usize) -> Vec<usize> {
    let max = isize::MAX as usize;
    if cfg!(target_pointer_width = "32") {
        return Vec::new();
    }
    vec![max - 4095, max - align + 1, max / 2 + 1, max / 4 * 3]
}

/// Valid layouts up to `isize::MAX`: impossible on a 64-bit target, whose
/// address space is 2^48 bytes, but within a 32-bit one's.
fn near_max_layouts() -> [(usize, usize); 5] {
    let max = isize::MAX as usize;
    [
        (max - 4095, 4096),
        (max - 8191, 8192),
        (max, 1),
        (max - 7, 8),
        (max / 2 + 1, 8),
    ]
}

/// Sizes and alignments beyond what the address space can place.
#[cfg(target_pointer_width = "64")]
fn beyond_address_space() -> Vec<(usize, usize)> {
    let mut v = vec![
        (1 << 62, 1 << 20),
        (1 << 50, 8),
        (1 << 48, 1),
        (1 << 48, 64 << 10),
        (1, 1 << 62),
        (1 << 40, 1 << 62),
        (4096, 1 << 50),
    ];
    v.extend(near_max_layouts());
    v
}

/// On 32-bit targets every valid layout (at most `isize::MAX` bytes, half
/// the address space) may fit: none is impossible. The sizes near
/// `isize::MAX` are [`near_max_layouts_serve_or_fail_cleanly`]'s.
#[cfg(target_pointer_width = "32")]
fn beyond_address_space() -> Vec<(usize, usize)> {
    Vec::new()
}

/// Requests of up to `isize::MAX` bytes either succeed, with every byte of
/// the object writable (a 32-bit heap with the address space to spare), or
/// return null (64-bit, or no memory for them); the heap then serves small
/// objects as before, and a 16 MiB budget never serves them.
fn near_max_on(heap: &OomHeap, budgeted: bool) {
    let small = Layout::from_size_align(100, 8).unwrap();
    let first = alloc_obj(heap, small, 1).unwrap();
    for (size, align) in near_max_layouts() {
        let l = Layout::from_size_align(size, align).unwrap();
        let p = heap.allocate(l);
        if !p.is_null() {
            assert!(
                !budgeted && cfg!(target_pointer_width = "32"),
                "{l:?} served"
            );
            assert_eq!(p as usize % align, 0);
            // SAFETY: a live object of `size` bytes.
            unsafe {
                p.write(1);
                p.add(size - 1).write(2);
                heap.deallocate(p, l);
            }
        }
        heap.check_invariants();
        let o = alloc_obj(heap, small, 2).unwrap();
        // A live object grown to it: moved with its contents, or left intact.
        // SAFETY: a live object with its layout; the new size is a valid layout.
        let q = unsafe { heap.reallocate(o.p, o.layout, size) };
        if q.is_null() {
            free_obj(heap, o);
        } else {
            assert!(
                !budgeted && cfg!(target_pointer_width = "32"),
                "{l:?} served"
            );
            // The old bytes moved with it.
            verify(&Obj {
                p: q,
                layout: o.layout,
                tag: o.tag,
            });
            let grown = Layout::from_size_align(size, o.layout.align()).unwrap();
            // SAFETY: the live, grown object, with its layout.
            unsafe { heap.deallocate(q, grown) };
        }
    }
    free_obj(heap, first);
    check(heap, &[]);
}

#[test]
fn near_max_layouts_serve_or_fail_cleanly() {
    near_max_on(oom_heap!(usize::MAX), false);
    near_max_on(oom_heap!(16 * MIB), true);
}

fn impossible_layouts_on(heap: &OomHeap) {
    let mut live = Vec::new();
    // Before any allocation, and again with live objects of every kind.
    for l in impossible_layouts() {
        assert!(heap.allocate(l).is_null(), "allocate({l:?})");
        assert!(heap.allocate_zeroed(l).is_null(), "allocate_zeroed({l:?})");
    }
    heap.check_invariants();
    for (i, (size, align)) in [
        (7, 1),
        (16, 8),
        (200, 16),
        (3000, 8),
        (32768, 8),
        (40000, 8),
        (MIB, 8),
        (5000, 1 << 16),
    ]
    .into_iter()
    .enumerate()
    {
        live.push(
            alloc_obj(
                heap,
                Layout::from_size_align(size, align).unwrap(),
                i as u8 + 1,
            )
            .unwrap(),
        );
    }
    let budget = heap.source().inner().budget();
    let before = heap.stats();
    for l in impossible_layouts() {
        assert!(heap.allocate(l).is_null(), "allocate({l:?})");
        assert!(heap.allocate_zeroed(l).is_null(), "allocate_zeroed({l:?})");
    }
    // Nothing was taken for them. (A request the heap's arenas could hold,
    // refused for want of pages, first takes back what the caches hold:
    // cached objects go back to their spans, which here all hold live ones.)
    assert_eq!(heap.source().inner().budget(), budget);
    let after = heap.stats();
    assert!(after.cached_bytes <= before.cached_bytes);
    assert_eq!(
        Stats {
            cached_bytes: before.cached_bytes,
            ..after
        },
        before
    );
    // Reallocating any live object to an impossible size fails and leaves it intact.
    for o in &live {
        for new_size in impossible_sizes(o.layout.align()) {
            if Layout::from_size_align(new_size, o.layout.align()).is_err() {
                continue;
            }
            // SAFETY: a live object with its layout; the new size is a valid layout.
            let q = unsafe { heap.reallocate(o.p, o.layout, new_size) };
            assert!(
                q.is_null(),
                "reallocate({:?} -> {new_size}) = {q:p}",
                o.layout
            );
            verify(o);
        }
    }
    check(heap, &live);
    // The heap still works.
    for i in 0..1000 {
        live.push(
            alloc_obj(
                heap,
                Layout::from_size_align(1 + i * 37 % 5000, 8).unwrap(),
                i as u8,
            )
            .unwrap(),
        );
    }
    check(heap, &live);
    for o in live.drain(..) {
        free_obj(heap, o);
    }
    heap.scavenge();
    let st = check(heap, &[]);
    assert_eq!((st.heap_inuse, st.heap_alloc, st.spans), (0, 0, 0), "{st}");
}

#[test]
fn impossible_layouts_unlimited_budget() {
    impossible_layouts_on(oom_heap!(usize::MAX));
}

#[test]
fn impossible_layouts_small_budget() {
    impossible_layouts_on(oom_heap!(16 * MIB));
}

#[test]
fn every_alignment_up_to_the_arena_size() {
    static HEAP: Heap<MmapSource, SingleCpu> = single_cpu_heap();
    let arena = MmapSource::ARENA_BYTES;
    assert_eq!(arena, 64 * MIB);
    let write = |p: *mut u8, size: usize, tag: u8| {
        // SAFETY: the block is ours, `size` bytes.
        unsafe {
            if size <= MIB {
                p.write_bytes(tag, size);
            } else {
                for k in (0..size).step_by(MIB) {
                    p.add(k).write_bytes(tag, 4096);
                }
                p.add(size - 4096).write_bytes(tag, 4096);
            }
        }
    };
    let read = |p: *mut u8, size: usize, tag: u8| {
        // SAFETY: as above.
        unsafe {
            assert_eq!(*p, tag);
            assert_eq!(*p.add((size / 2) & !(MIB - 1)), tag);
            assert_eq!(*p.add(size - 1), tag);
        }
    };
    let mut live = Vec::new();
    let mut shift = 0;
    while 1usize << shift <= arena {
        let align = 1usize << shift;
        // One at a time: allocate, check, write, free.
        for size in [1, 8, 24, 100, 4096, 40000, align] {
            for zeroed in [false, true] {
                let l = Layout::from_size_align(size, align).unwrap();
                let p = if zeroed {
                    HEAP.allocate_zeroed(l)
                } else {
                    HEAP.allocate(l)
                };
                assert!(!p.is_null(), "{l:?} (zeroed {zeroed})");
                assert_eq!(p as usize % align, 0, "{l:?} at {p:p}");
                if zeroed {
                    read(p, size, 0);
                }
                write(p, size, shift as u8);
                read(p, size, shift as u8);
                // SAFETY: ours, with its layout.
                unsafe { HEAP.deallocate(p, l) };
            }
        }
        // And kept, side by side with the other alignments.
        for size in [24, 3 * 1024, align] {
            let l = Layout::from_size_align(size, align).unwrap();
            let p = HEAP.allocate(l);
            assert!(!p.is_null(), "{l:?}");
            assert_eq!(p as usize % align, 0, "{l:?} at {p:p}");
            write(p, size, shift as u8);
            live.push((p, l, shift as u8));
        }
        shift += 1;
    }
    HEAP.check_invariants();
    let st = HEAP.stats();
    assert_eq!(st.mallocs - st.frees, live.len() as u64, "{st}");
    let sizes: u64 = live.iter().map(|&(_, l, _)| rounded(l)).sum();
    assert_eq!(
        st.heap_alloc - TINY_BLOCK as u64 * st.tiny_blocks,
        sizes,
        "{st}"
    );
    for (p, l, tag) in live.drain(..) {
        read(p, l.size(), tag);
        // SAFETY: ours, with its layout.
        unsafe { HEAP.deallocate(p, l) };
    }
    HEAP.scavenge();
    HEAP.check_invariants();
    let st = HEAP.stats();
    assert_eq!(
        (st.heap_inuse, st.heap_alloc, st.mallocs - st.frees),
        (0, 0, 0),
        "{st}"
    );
}

/// Memory the heap only keeps for reuse never makes an allocation fail: with
/// the budget spent on objects of one size, every other one freed (their pages
/// stay dirty, kept by the scavenger for a rebuild) leaves holes too small for
/// a bigger size; the heap then releases its dirty pages to the source and
/// takes the pages it needs, instead of returning null.
#[test]
fn dirty_pages_are_given_back_before_failing() {
    const MIB: usize = 1 << 20;
    let heap = oom_heap!(24 * MIB);
    heap.set_retain_bytes(usize::MAX); // keep every dirty page unless out of memory
    let small = Layout::from_size_align(96 * 1024, 8).unwrap(); // 12 pages each
    let (mut live, _) = fill_until_null(heap, || small);
    assert!(live.len() >= 100, "{} objects", live.len());
    // Free every other object: 12-page holes between live objects.
    let mut kept = Vec::new();
    for (i, o) in live.drain(..).enumerate() {
        if i % 2 == 0 {
            free_obj(heap, o);
        } else {
            kept.push(o);
        }
    }
    let st = check(heap, &kept);
    // Kept as dirty free pages or idle spans of the large-span cache.
    assert!(
        st.heap_idle - st.heap_released + st.cached_bytes >= 8 * MIB as u64,
        "dirty holes kept:\n{st}"
    );
    // 200 KiB objects fit no hole; the budget is spent on the dirty holes.
    let big = Layout::from_size_align(200 * 1024, 8).unwrap();
    let mut got = 0;
    for i in 0..10 {
        let o = alloc_obj(heap, big, 0x70 + i).unwrap_or_else(|| {
            panic!(
                "allocation {i} of 200 KiB failed with dirty pages held\n{}",
                heap.stats()
            )
        });
        kept.push(o);
        got += 1;
    }
    assert_eq!(got, 10);
    let st = check(heap, &kept);
    assert!(
        st.heap_released > 0 && st.scavenged_total > 0,
        "the dirty holes were released for the big objects:\n{st}"
    );
    for o in kept.drain(..) {
        free_obj(heap, o);
    }
    check(heap, &[]);
}
