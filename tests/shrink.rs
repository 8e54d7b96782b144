//! Shrinking in place: `realloc` keeps an object of a size class where it is
//! when the new size is over 4 KiB and fills at least half of its slot
//! (`heap::stays_in_class`), even though the new size sorts to a smaller
//! class. The sized free that follows, with the new layout, finds the slot's
//! class through the page map; the statistics count the object in its slot.
#![cfg(feature = "linux")]

mod common;

use core::alloc::Layout;

use common::{check_pattern as check, fill_pattern as fill, lay, single_cpu_heap};
use tieralloc::internals::SHRINK_MIN;
use tieralloc::internals::{size_to_class, SizeClass, NUM_CLASSES};
use tieralloc::{Heap, MmapSource, SingleCpu};

/// The hosted heaps' geometry (Go's classes).
const GO: &tieralloc::Geometry = &tieralloc::Geometry::GO;

type H1 = Heap<MmapSource, SingleCpu>;

/// Every class over 4 KiB: shrinking to any size from half the slot (but over
/// 4 KiB) up to the slot keeps the object and its bytes; the slot is still
/// the object's (`usable_size`), and its class counts it until the free.
#[test]
fn every_class_keeps_shrinking_objects_in_their_slot() {
    static HEAP: H1 = single_cpu_heap();
    let mut kept = 0;
    for c in (1..NUM_CLASSES).map(|c| SizeClass::new(c).unwrap()) {
        let size = GO.size(c);
        if size <= SHRINK_MIN {
            continue;
        }
        let lo = (size / 2).max(SHRINK_MIN + 1);
        for (k, new) in [size - 1, (lo + size) / 2, lo].into_iter().enumerate() {
            let seed = (c.index() + k) as u8;
            let p = HEAP.allocate(lay(size));
            assert!(!p.is_null());
            fill(p, size, seed);
            // SAFETY: live with `size` bytes.
            let q = unsafe { HEAP.reallocate(p, lay(size), new) };
            assert_eq!(q, p, "class {} ({size} B) shrunk to {new}", c.index());
            check(q, new, seed);
            assert_eq!(HEAP.try_usable_size(q), Some(size));
            let st = HEAP.stats();
            assert_eq!(
                st.by_size[c.index()].mallocs - st.by_size[c.index()].frees,
                1,
                "{st}"
            );
            kept += u32::from(size_to_class(new) != c);
            // SAFETY: live with `new` bytes (its current layout).
            unsafe { HEAP.deallocate(q, lay(new)) };
            let st = HEAP.stats();
            assert_eq!(
                st.by_size[c.index()].mallocs,
                st.by_size[c.index()].frees,
                "{st}"
            );
        }
    }
    assert!(kept > 30, "only {kept} shrinks crossed a class boundary");
    let st = HEAP.stats();
    assert_eq!(st.heap_alloc, 0, "{st}");
    assert_eq!(st.mallocs, st.frees, "{st}");
    HEAP.check_invariants();
}

/// Below half of the slot, or down to 4 KiB and less, the object moves to its
/// new class: the waste stays bounded, and sizes of up to 4 KiB keep the free
/// (no page-map lookup), which trusts the layout's class.
#[test]
fn shrinking_below_half_or_to_4k_moves() {
    static HEAP: H1 = single_cpu_heap();
    for (size, new) in [(8192, 4000), (8192, 4096), (4096, 2500), (32768, 16000)] {
        let p = HEAP.allocate(lay(size));
        fill(p, size, 9);
        // SAFETY: live with `size` bytes.
        let q = unsafe { HEAP.reallocate(p, lay(size), new) };
        assert!(!q.is_null() && q != p, "{size} -> {new} moves");
        check(q, new, 9);
        assert_eq!(HEAP.try_usable_size(q), Some(GO.size(size_to_class(new))));
        // SAFETY: live with `new` bytes.
        unsafe { HEAP.deallocate(q, lay(new)) };
    }
    let st = HEAP.stats();
    assert_eq!(st.heap_alloc, 0, "{st}");
    HEAP.check_invariants();
}

/// A kept object grows back in place up to its slot, then moves (and is not
/// promoted while it fits its slot, even over 16 KiB).
#[test]
fn kept_object_grows_back_within_its_slot() {
    static HEAP: H1 = single_cpu_heap();
    let p = HEAP.allocate(lay(32_768));
    fill(p, 32_768, 1);
    let mut size = 32_768;
    for new in [17_000, 30_000, 20_000, 32_768] {
        // SAFETY: live with `size` bytes.
        let q = unsafe { HEAP.reallocate(p, lay(size), new) };
        assert_eq!(q, p, "{size} -> {new} in its slot");
        check(q, size.min(new), 1);
        fill(q, new, 1);
        size = new;
        assert_eq!(HEAP.stats().large_alloc, 0, "not promoted");
    }
    // SAFETY: live with `size` bytes.
    let q = unsafe { HEAP.reallocate(p, lay(size), 40_000) };
    assert!(q != p);
    check(q, size, 1);
    // SAFETY: live with 40,000 bytes.
    unsafe { HEAP.deallocate(q, lay(40_000)) };
    let st = HEAP.stats();
    assert_eq!(st.heap_alloc, 0, "{st}");
    HEAP.check_invariants();
}

/// Over-aligned objects keep their alignment and slot when shrunk in place.
#[test]
fn over_aligned_objects_shrink_in_place() {
    static HEAP: H1 = single_cpu_heap();
    for align in [16, 64, 256, 4096] {
        let l = Layout::from_size_align(8192, align).unwrap();
        let p = HEAP.allocate(l);
        assert_eq!(p as usize % align, 0);
        fill(p, 8192, 3);
        // SAFETY: live with layout `l`.
        let q = unsafe { HEAP.reallocate(p, l, 5000) };
        assert_eq!(q, p, "align {align}");
        check(q, 5000, 3);
        // SAFETY: live with 5000 bytes at `align`.
        unsafe { HEAP.deallocate(q, Layout::from_size_align(5000, align).unwrap()) };
    }
    let st = HEAP.stats();
    assert_eq!(st.heap_alloc, 0, "{st}");
    HEAP.check_invariants();
}
