//! Region heaps of at most `FINE_MAX_BYTES` are fine heaps: every object
//! from one two-word-granule heap (`tieralloc::fine`). Through the public
//! `Heap` API: the choice, efficiency, bad frees reported with the address,
//! `realloc`, stacks, added regions, and a shadow-model run against the
//! statistics.

use core::alloc::{GlobalAlloc, Layout};
use std::panic::{catch_unwind, AssertUnwindSafe};

use tieralloc::{BadFree, FreeSite, Heap, PageSource, RegionSource, SingleCpu, FINE_MAX_BYTES};

mod common;
use common::{check_pattern, fill_pattern};

type FineHeap = Heap<RegionSource, SingleCpu>;

const GRANULE: usize = 2 * core::mem::size_of::<usize>();

/// The bytes of a fine heap's block for `size` bytes (or one granule more).
fn block_of(size: usize) -> usize {
    size.next_multiple_of(GRANULE).max(2 * GRANULE)
}

fn buffer(len: usize) -> &'static mut [u8] {
    vec![0xA5u8; len].leak()
}

fn heap_of(len: usize) -> Box<FineHeap> {
    let buf = buffer(len);
    let heap = Box::new(Heap::new(RegionSource::empty(), SingleCpu::new()));
    // SAFETY: the buffer is leaked and the heap's alone; the heap has not used its source.
    unsafe { heap.source().set_region(buf.as_mut_ptr(), buf.len()) };
    heap
}

fn panic_text(f: impl FnOnce()) -> String {
    let e = catch_unwind(AssertUnwindSafe(f)).expect_err("expected a panic");
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn the_bound_decides_the_mode() {
    assert!(heap_of(8 << 10).is_fine());
    // The smallest first region a source takes serves allocations; a
    // smaller one is refused when it is given, not at the first allocation.
    let h = heap_of(tieralloc::source::MIN_REGION_BYTES + RegionSource::PAGE_SIZE);
    let l = Layout::from_size_align(1024, 8).unwrap();
    let p = h.allocate(l);
    assert!(!p.is_null() && h.is_fine(), "{}", h.stats());
    // SAFETY: just allocated with `l`.
    unsafe { h.deallocate(p, l) };
    let small = buffer(tieralloc::source::MIN_REGION_BYTES);
    let h2: Box<FineHeap> = Box::new(Heap::new(RegionSource::empty(), SingleCpu::new()));
    // SAFETY: refused, so never used.
    let r = unsafe { h2.source().try_set_region(small.as_mut_ptr(), 2048) };
    assert!(
        matches!(r, Err(tieralloc::source::RegionError::TooSmall { .. })),
        "{r:?}"
    );
    assert!(heap_of(FINE_MAX_BYTES).is_fine());
    assert!(!heap_of(FINE_MAX_BYTES + 4096).is_fine());
    let h = heap_of(64 << 10);
    assert!(h.prefer_tiers());
    assert!(!h.is_fine());
    let h = heap_of(64 << 10);
    assert!(h.is_fine());
    assert!(!h.prefer_tiers(), "a fine heap stays fine");
    // No region yet: nothing decided, allocation fails, a region later works.
    let h: Box<FineHeap> = Box::new(Heap::new(RegionSource::empty(), SingleCpu::new()));
    assert!(h.allocate(Layout::new::<u64>()).is_null());
    let buf = buffer(16 << 10);
    // SAFETY: as in `heap_of`.
    unsafe { h.source().set_region(buf.as_mut_ptr(), buf.len()) };
    let p = h.allocate(Layout::new::<u64>());
    assert!(!p.is_null() && h.is_fine());
}

/// 64-byte objects fill a 64 KiB region to within its metadata (at most
/// 3 % of it) and the heap's statistics add up.
#[test]
fn a_small_region_fills_to_its_metadata() {
    let len = 64 << 10;
    let h = heap_of(len);
    let l = Layout::from_size_align(64, 8).unwrap();
    let mut live = Vec::new();
    loop {
        let p = h.allocate(l);
        if p.is_null() {
            break;
        }
        fill_pattern(p, 64, live.len() as u8);
        live.push(p);
    }
    let st = h.stats();
    assert!(st.meta_sys * 100 <= 3 * len as u64, "{st}");
    assert!(
        live.len() * 64 + st.meta_sys as usize + 64 + 64 >= len,
        "{} objects\n{st}",
        live.len()
    );
    let blocks: u64 = live.iter().map(|&p| h.usable_size(p) as u64).sum();
    assert_eq!(st.heap_alloc, blocks);
    assert!(blocks <= live.len() as u64 * 64 + GRANULE as u64);
    assert_eq!(st.fine_alloc, st.heap_alloc);
    assert_eq!(st.mallocs - st.frees, live.len() as u64);
    assert_eq!(st.heap_idle, st.heap_sys - st.heap_inuse - st.stack_sys);
    h.check_invariants();
    for (i, &p) in live.iter().enumerate() {
        check_pattern(p, 64, i as u8);
        // SAFETY: allocated above with `l`.
        unsafe { h.deallocate(p, l) };
    }
    h.check_invariants();
    // Out of memory left the heap usable: one object of nearly the whole region fits now.
    let big = Layout::from_size_align(len - st.meta_sys as usize - 256, 8).unwrap();
    let p = h.allocate(big);
    assert!(!p.is_null(), "{}", h.stats());
    // SAFETY: just allocated with `big`.
    unsafe { h.deallocate(p, big) };
}

#[test]
fn bad_frees_panic_with_the_address_and_change_nothing() {
    let h = heap_of(32 << 10);
    let l = Layout::from_size_align(48, 8).unwrap();
    let p = h.allocate(l);
    let q = h.allocate(l);
    fill_pattern(q, 48, 9);
    // SAFETY (each closure): the pointer is refused, nothing is freed.
    let msg = panic_text(|| unsafe { h.deallocate(p.wrapping_add(GRANULE), l) });
    assert!(
        msg.contains(&format!("{:p}", p.wrapping_add(GRANULE))) && msg.contains("not an object"),
        "{msg}"
    );
    let mut x = 0u64;
    let foreign = &mut x as *mut u64 as *mut u8;
    let msg = panic_text(|| unsafe { h.deallocate(foreign, l) });
    assert!(msg.contains(&format!("{foreign:p}")), "{msg}");
    let msg = panic_text(|| unsafe { h.deallocate(p, Layout::from_size_align(400, 8).unwrap()) });
    assert!(msg.contains("wrong layout"), "{msg}");
    // SAFETY: `p` is live, allocated with `l`.
    unsafe { h.deallocate(p, l) };
    let msg = panic_text(|| unsafe { h.deallocate(p, l) });
    assert!(
        msg.contains(&format!("{p:p}")) && msg.contains("double free"),
        "{msg}"
    );
    // SAFETY: `p` is free: refused and reported.
    assert_eq!(
        unsafe { h.try_deallocate_unsized(p) },
        Err(BadFree::DoubleFree(FreeSite::FreeList))
    );
    assert_eq!(
        unsafe { h.try_live_size(p) },
        Err(BadFree::DoubleFree(FreeSite::FreeList))
    );
    assert_eq!(h.try_usable_size(p), None);
    assert_eq!(h.try_usable_size(q), Some(48));
    h.check_invariants();
    check_pattern(q, 48, 9);
    // SAFETY: `q` is live.
    unsafe { h.deallocate_unsized(q) };
    let st = h.stats();
    assert_eq!((st.mallocs, st.frees, st.heap_alloc), (2, 2, 0), "{st}");
}

#[test]
fn realloc_resizes_in_place_or_moves_intact() {
    let h = heap_of(64 << 10);
    let l = Layout::from_size_align(100, 8).unwrap();
    // SAFETY (throughout): each pointer is live with the layout given.
    unsafe {
        let p = h.alloc(l);
        fill_pattern(p, 100, 3);
        // Nothing after it: grows in place.
        let q = h.realloc(p, l, 1000);
        assert_eq!(q, p);
        check_pattern(q, 100, 3);
        // Shrinks in place.
        let r = h.realloc(q, Layout::from_size_align(1000, 8).unwrap(), 40);
        assert_eq!(r, p);
        let fence = h.alloc(l);
        // Blocked by `fence`: moves, contents kept.
        let s = h.realloc(r, Layout::from_size_align(40, 8).unwrap(), 3000);
        assert_ne!(s, r);
        check_pattern(s, 40, 3);
        // Too large for the region: null, the object untouched.
        let t = h.realloc(s, Layout::from_size_align(3000, 8).unwrap(), 1 << 20);
        assert!(t.is_null());
        check_pattern(s, 40, 3);
        // Without the layout (C's realloc), to an aligned size.
        let u = h.reallocate_unsized(s, 200, 64);
        assert!(!u.is_null() && (u as usize).is_multiple_of(64));
        check_pattern(u, 40, 3);
        h.deallocate(u, Layout::from_size_align(200, 64).unwrap());
        h.dealloc(fence, l);
    }
    h.check_invariants();
    assert_eq!(h.stats().heap_alloc, 0);
}

#[test]
fn stacks_are_blocks() {
    let h = heap_of(64 << 10);
    let s = h.alloc_stack(4000, false).expect("a stack");
    assert!((s.base.as_ptr() as usize).is_multiple_of(16) && s.size >= 4000);
    fill_pattern(s.base.as_ptr(), s.size, 1);
    let st = h.stack_stats();
    assert_eq!((st.inuse_stacks, st.inuse_bytes), (1, s.size as u64));
    let hs = h.stats();
    assert_eq!(
        (hs.stack_sys, hs.heap_alloc, hs.mallocs),
        (s.size as u64, 0, 0),
        "{hs}"
    );
    check_pattern(s.base.as_ptr(), s.size, 1);
    // SAFETY: from this heap, unused from now on.
    unsafe { h.free_stack(s) };
    assert_eq!(h.stack_stats().inuse_stacks, 0);
    h.check_invariants();
}

/// A full fine heap given a second region takes its memory as a new arena;
/// objects of both keep their contents.
#[test]
fn an_added_region_extends_a_full_heap() {
    let h = heap_of(32 << 10);
    let l = Layout::from_size_align(200, 8).unwrap();
    let fill = |live: &mut Vec<*mut u8>| loop {
        let p = h.allocate(l);
        if p.is_null() {
            break;
        }
        fill_pattern(p, 200, live.len() as u8);
        live.push(p);
    };
    let mut live = Vec::new();
    fill(&mut live);
    let first = live.len();
    let two = buffer(64 << 10);
    let (b2, l2) = (two.as_mut_ptr() as usize, two.len());
    // SAFETY: leaked, the heap's alone, disjoint from the first region.
    unsafe { h.source().add_region(two.as_mut_ptr(), l2) }.expect("add_region");
    fill(&mut live);
    let second = live[first..]
        .iter()
        .filter(|&&p| p as usize >= b2 && p as usize + 200 <= b2 + l2)
        .count();
    assert!(
        second * 200 * 100 >= l2 * 90,
        "{second} objects in the second region"
    );
    assert_eq!(h.stats().arenas, 2);
    h.check_invariants();
    for (i, &p) in live.iter().enumerate() {
        check_pattern(p, 200, i as u8);
        // SAFETY: allocated above with `l`.
        unsafe { h.deallocate(p, l) };
    }
    h.check_invariants();
    assert_eq!(h.stats().heap_alloc, 0);
}

/// Random sizes, alignments, frees and reallocs against a shadow model of
/// the live objects: contents intact, statistics exact, invariants kept, and
/// after the last free one object of the whole arena fits again.
#[test]
fn shadow_model_through_the_heap() {
    let len = 128 << 10;
    let h = heap_of(len);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
    for step in 0..100_000u32 {
        match next(10) {
            0..=4 => {
                let big = next(10) == 0;
                let size = 1 + next(if big { 5000 } else { 300 }) as usize;
                let wide = next(8) == 0;
                let align = 1usize << next(if wide { 8 } else { 4 });
                let l = Layout::from_size_align(size, align).unwrap();
                let p = if next(4) == 0 {
                    h.allocate_zeroed(l)
                } else {
                    h.allocate(l)
                };
                if p.is_null() {
                    continue;
                }
                assert!((p as usize).is_multiple_of(align));
                let tag = step as u8;
                fill_pattern(p, size, tag);
                assert!(h.usable_size(p) <= block_of(size) + GRANULE);
                live.push((p, l, tag));
            }
            5..=7 if !live.is_empty() => {
                let (p, l, tag) = live.swap_remove(next(live.len() as u64) as usize);
                check_pattern(p, l.size(), tag);
                // SAFETY: live, with its layout.
                unsafe { h.deallocate(p, l) };
            }
            8..=9 if !live.is_empty() => {
                let k = next(live.len() as u64) as usize;
                let (p, l, tag) = live[k];
                let new = 1 + next(2000) as usize;
                // SAFETY: live, with its layout.
                let q = unsafe { h.reallocate(p, l, new) };
                if q.is_null() {
                    check_pattern(p, l.size(), tag);
                    continue;
                }
                check_pattern(q, l.size().min(new), tag);
                fill_pattern(q, new, tag);
                live[k] = (q, Layout::from_size_align(new, l.align()).unwrap(), tag);
            }
            _ => {}
        }
        if step % 5000 == 0 {
            h.check_invariants();
            let st = h.stats();
            let blocks: u64 = live.iter().map(|&(p, _, _)| h.usable_size(p) as u64).sum();
            assert_eq!(st.heap_alloc, blocks, "{st}");
            assert!(live.iter().all(|&(p, l, _)| {
                let n = h.usable_size(p);
                n == block_of(l.size()) || n == block_of(l.size()) + GRANULE
            }));
            assert_eq!(st.mallocs - st.frees, live.len() as u64, "{st}");
        }
    }
    for (p, l, tag) in live.drain(..) {
        check_pattern(p, l.size(), tag);
        // SAFETY: live, with its layout.
        unsafe { h.deallocate(p, l) };
    }
    h.check_invariants();
    let st = h.stats();
    let whole = Layout::from_size_align(st.heap_sys as usize, 8).unwrap();
    let p = h.allocate(whole);
    assert!(!p.is_null(), "the arena is not one block again\n{st}");
    // SAFETY: just allocated with `whole`.
    unsafe { h.deallocate(p, whole) };
}
