//! Promotion: `realloc` that grows an object past `PROMOTE_MIN` (16 KiB), by at
//! most twice its size, gives it a span of its own, so that it can keep growing in place; such an object
//! is freed with its ordinary sized layout, answers `usable_size` with its
//! pages, and shrinks in place while it stays over the threshold.
#![cfg(feature = "linux")]

mod common;

use core::alloc::Layout;

use common::{check_pattern as check, fill_pattern as fill, lay, single_cpu_heap};
use tieralloc::internals::size_to_class;
use tieralloc::internals::PROMOTE_MIN;
use tieralloc::{Heap, MmapSource, SingleCpu, PAGE_BYTES};

/// Go's page, the page of every source these tests use.
const GO_PAGE: tieralloc::internals::PageSize = tieralloc::internals::PageSize::GO;

/// The hosted heaps' geometry (Go's classes).
const GO: &tieralloc::Geometry = &tieralloc::Geometry::GO;

type H1 = Heap<MmapSource, SingleCpu>;

/// A buffer doubling from 16 B to 1 MiB is copied at every class boundary up
/// to the threshold, moves once into a span of its own, then grows in place.
#[test]
fn doubling_buffer_grows_in_place_once_promoted() {
    static HEAP: H1 = single_cpu_heap();
    let mut size = 16;
    let mut p = HEAP.allocate(lay(size));
    assert!(!p.is_null());
    fill(p, size, 1);
    let mut moves_after = 0;
    while size < 1 << 20 {
        // SAFETY: `p` is live with `size` bytes.
        let q = unsafe { HEAP.reallocate(p, lay(size), size * 2) };
        assert!(!q.is_null());
        check(q, size, 1);
        if size * 2 > PROMOTE_MIN {
            let promoted_now = size <= PROMOTE_MIN;
            if !promoted_now && q != p {
                moves_after += 1;
            }
            assert_eq!(
                HEAP.try_usable_size(q),
                Some(
                    tieralloc::internals::large_pages(size * 2, GO_PAGE)
                        .unwrap()
                        .bytes(GO_PAGE)
                ),
                "{} bytes have a span of their own",
                size * 2
            );
        }
        size *= 2;
        p = q;
        fill(p, size, 1);
    }
    assert_eq!(
        moves_after, 0,
        "nothing stands after the span in a fresh heap"
    );
    let st = HEAP.stats();
    assert_eq!(st.large_alloc, 1 << 20, "{st}");
    // SAFETY: live with `size` bytes.
    unsafe { HEAP.deallocate(p, lay(size)) };
    let st = HEAP.stats();
    assert_eq!(st.large_alloc, 0, "{st}");
    assert_eq!(st.mallocs, st.frees, "{st}");
    HEAP.check_invariants();
}

/// A promoted object keeps its class sizes in place, shrinks in place while
/// over the threshold, is freed with any layout of its size, and moves back
/// into a class below the threshold.
#[test]
fn promoted_object_resizes_and_frees_by_its_layout() {
    static HEAP: H1 = single_cpu_heap();
    let p = HEAP.allocate(lay(10_000));
    assert!(!p.is_null());
    fill(p, 10_000, 2);
    assert_eq!(
        HEAP.try_usable_size(p),
        Some(GO.size(size_to_class(10_000)))
    );
    // SAFETY: live with 10,000 bytes.
    let q = unsafe { HEAP.reallocate(p, lay(10_000), 20_000) };
    assert!(!q.is_null() && q != p, "promotion moves the object");
    check(q, 10_000, 2);
    let pages = 3; // class 20480, in whole pages
    assert_eq!(HEAP.try_usable_size(q), Some(pages * PAGE_BYTES));
    assert_eq!(HEAP.stats().large_alloc, (pages * PAGE_BYTES) as u64);
    fill(q, 20_000, 3);
    // Same class: in place. Another class over the threshold: in place, span trimmed.
    // SAFETY: live with 20,000 bytes.
    assert_eq!(unsafe { HEAP.reallocate(q, lay(20_000), 20_400) }, q);
    // SAFETY: live with 20,400 bytes.
    assert_eq!(unsafe { HEAP.reallocate(q, lay(20_400), 17_000) }, q);
    assert_eq!(
        HEAP.try_usable_size(q),
        Some(3 * PAGE_BYTES),
        "class 18432 in whole pages"
    );
    // SAFETY: live with 17,000 bytes.
    let r = unsafe { HEAP.reallocate(q, lay(17_000), 16_400) };
    assert_eq!(r, q, "16,400 bytes are still over the threshold");
    assert_eq!(HEAP.try_usable_size(q), Some(3 * PAGE_BYTES));
    check(q, 16_400, 3);
    // Below the threshold the object goes back to a class.
    // SAFETY: live with 16,400 bytes.
    let s = unsafe { HEAP.reallocate(q, lay(16_400), 9_000) };
    assert!(!s.is_null() && s != q);
    check(s, 9_000, 3);
    assert_eq!(HEAP.try_usable_size(s), Some(GO.size(size_to_class(9_000))));
    assert_eq!(HEAP.stats().large_alloc, 0, "the span went back");
    // SAFETY: live with 9,000 bytes.
    unsafe { HEAP.deallocate(s, lay(9_000)) };
    // A promoted object freed by its sized layout.
    let a = HEAP.allocate(lay(15_000));
    // SAFETY: live with 15,000 bytes.
    let b = unsafe { HEAP.reallocate(a, lay(15_000), 30_000) };
    assert!(!b.is_null());
    assert_eq!(HEAP.try_usable_size(b), Some(4 * PAGE_BYTES));
    // SAFETY: live with 30,000 bytes.
    unsafe { HEAP.deallocate(b, lay(30_000)) };
    let st = HEAP.stats();
    assert_eq!(st.heap_alloc, 0, "{st}");
    assert_eq!(st.mallocs, st.frees, "{st}");
    HEAP.check_invariants();
}

/// A large object shrinks in place to a size over the threshold (a class size
/// no longer needs a move); a class object that shrinks by at most half stays
/// in its slot (not promoted), one that shrinks further moves to its class.
#[test]
fn shrinking_keeps_the_span_or_the_class() {
    static HEAP: H1 = single_cpu_heap();
    let big = HEAP.allocate(lay(100_000));
    assert!(!big.is_null());
    fill(big, 100_000, 4);
    // SAFETY: live with 100,000 bytes.
    let p = unsafe { HEAP.reallocate(big, lay(100_000), 20_000) };
    assert_eq!(p, big, "shrunk in place");
    check(p, 20_000, 4);
    assert_eq!(HEAP.try_usable_size(p), Some(3 * PAGE_BYTES));
    let c = HEAP.allocate(lay(32_000));
    fill(c, 32_000, 5);
    // SAFETY: live with 32,000 bytes.
    let d = unsafe { HEAP.reallocate(c, lay(32_000), 20_000) };
    assert_eq!(d, c, "kept in its slot");
    check(d, 20_000, 5);
    assert_eq!(
        HEAP.try_usable_size(d),
        Some(GO.size(size_to_class(32_000)))
    );
    assert_eq!(
        HEAP.stats().large_alloc,
        3 * PAGE_BYTES as u64,
        "not promoted"
    );
    // SAFETY: live with 20,000 bytes.
    let e = unsafe { HEAP.reallocate(d, lay(20_000), 12_000) };
    assert!(!e.is_null() && e != d, "below half of the slot: moved");
    check(e, 12_000, 5);
    assert_eq!(
        HEAP.try_usable_size(e),
        Some(GO.size(size_to_class(12_000)))
    );
    // SAFETY: live with these layouts.
    unsafe {
        HEAP.deallocate(p, lay(20_000));
        HEAP.deallocate(e, lay(12_000));
    }
    let st = HEAP.stats();
    assert_eq!(st.heap_alloc, 0, "{st}");
    assert_eq!(st.mallocs, st.frees, "{st}");
    HEAP.check_invariants();
}

/// Threads grow, shrink and free buffers across the threshold concurrently;
/// every byte is checked.
#[test]
fn concurrent_growth_across_the_threshold() {
    static HEAP: Heap<MmapSource, tieralloc::LockedSlots<2>> = common::slots_heap();
    std::thread::scope(|s| {
        for t in 0..4usize {
            s.spawn(move || {
                common::set_slot(t % 2);
                let mut rng = common::Rng::new(t as u64 + 7);
                for round in 0..200 {
                    let seed = (round + t) as u8;
                    let mut size = rng.range(1, 4096);
                    let mut p = HEAP.allocate(lay(size));
                    assert!(!p.is_null());
                    fill(p, size, seed);
                    for _ in 0..6 {
                        let new = rng.range(size / 2 + 1, size * 3).min(200_000);
                        // SAFETY: live with `size` bytes.
                        let q = unsafe { HEAP.reallocate(p, lay(size), new) };
                        assert!(!q.is_null());
                        check(q, size.min(new), seed);
                        fill(q, new, seed);
                        (p, size) = (q, new);
                    }
                    // SAFETY: live with `size` bytes.
                    unsafe { HEAP.deallocate(p, lay(size)) };
                }
            });
        }
    });
    let st = HEAP.stats();
    assert_eq!(st.mallocs, st.frees, "{st}");
    assert_eq!(st.large_alloc, 0, "{st}");
    HEAP.check_invariants();
}

/// The pattern of a doubling `Vec` freed and rebuilt: each build is promoted at
/// 32 KiB and grows in place to 64 KiB, so it frees an idle span of 64 KiB.
/// The next promotion takes that span whole (up to twice its pages), so the
/// next growth to 64 KiB needs no page-heap work and the heap stays put
/// instead of walking up through fresh pages.
#[test]
fn rebuilt_buffer_reuses_the_span_it_grew_into() {
    static HEAP: H1 = single_cpu_heap();
    let build = || {
        let mut size = 16;
        let mut p = HEAP.allocate(lay(size));
        assert!(!p.is_null());
        fill(p, size, 6);
        let mut promoted = (core::ptr::null_mut(), 0);
        while size < 64 << 10 {
            // SAFETY: `p` is live with `size` bytes.
            let q = unsafe { HEAP.reallocate(p, lay(size), size * 2) };
            assert!(!q.is_null());
            check(q, size.min(4096), 6);
            fill(q, (size * 2).min(4096), 6);
            if size == 16 << 10 {
                promoted = (q, HEAP.try_usable_size(q).unwrap());
            }
            (p, size) = (q, size * 2);
        }
        // SAFETY: live with 64 KiB.
        unsafe { HEAP.deallocate(p, lay(size)) };
        (promoted, p)
    };
    let ((first, usable), end) = build();
    assert_eq!(usable, 4 * PAGE_BYTES, "a fresh heap promotes into 32 KiB");
    assert_eq!(end, first, "and grows in place");
    let inuse = HEAP.stats().heap_inuse;
    for _ in 0..50 {
        let ((p, usable), end) = build();
        assert_eq!(p, first, "the idle span is reused");
        assert_eq!(usable, 8 * PAGE_BYTES, "taken whole");
        assert_eq!(end, p);
    }
    let st = HEAP.stats();
    assert_eq!(st.heap_inuse, inuse, "no new pages:\n{st}");
    assert_eq!(st.mallocs, st.frees, "{st}");
    HEAP.check_invariants();
}

/// C's `realloc` path (`reallocate_unsized`): the page map, not a layout, says
/// what the object is, so an over-aligned large object of one page (whose
/// usable size looks like a class size), a class object and a promoted
/// object all resize correctly; a pointer that is no object is reported.
#[test]
fn unsized_realloc_finds_the_object_by_the_page_map() {
    static HEAP: H1 = single_cpu_heap();
    // One page, its own span: 8 KiB usable, the size of a class.
    let big_align = Layout::from_size_align(100, 64 << 10).unwrap();
    let a = HEAP.allocate(big_align);
    assert!(!a.is_null() && (a as usize).is_multiple_of(64 << 10));
    assert_eq!(HEAP.try_usable_size(a), Some(PAGE_BYTES));
    fill(a, 100, 7);
    // SAFETY: a live non-tiny object; (20,000, 8) is a layout.
    let b = unsafe { HEAP.reallocate_unsized(a, 20_000, 8) };
    assert!(!b.is_null());
    check(b, 100, 7);
    assert_eq!(
        HEAP.try_usable_size(b),
        Some(3 * PAGE_BYTES),
        "grown in place"
    );
    // Shrunk under the threshold: moved into a class, the span freed.
    // SAFETY: as above.
    let c = unsafe { HEAP.reallocate_unsized(b, 3_000, 8) };
    assert!(!c.is_null() && c != b);
    check(c, 100, 7);
    assert_eq!(HEAP.try_usable_size(c), Some(GO.size(size_to_class(3_000))));
    // Within its class: in place. Past the threshold at more than twice the
    // size: a class object. At most twice: promoted.
    // SAFETY: as above.
    assert_eq!(unsafe { HEAP.reallocate_unsized(c, 2_900, 8) }, c);
    // SAFETY: as above.
    let c = unsafe { HEAP.reallocate_unsized(c, 17_000, 8) };
    assert!(!c.is_null());
    check(c, 100, 7);
    assert_eq!(
        HEAP.try_usable_size(c),
        Some(GO.size(size_to_class(17_000)))
    );
    // SAFETY: as above.
    let d = unsafe { HEAP.reallocate_unsized(c, 30_000, 8) };
    assert!(!d.is_null());
    check(d, 100, 7);
    assert!(HEAP.try_usable_size(d).unwrap() >= 4 * PAGE_BYTES);
    // SAFETY: a live object.
    unsafe { HEAP.deallocate_unsized(d) };
    let st = HEAP.stats();
    assert_eq!(st.heap_alloc, 0, "{st}");
    assert_eq!(st.mallocs, st.frees, "{st}");
    HEAP.check_invariants();
    // Freed: reported with the address.
    let err = std::panic::catch_unwind(|| {
        // SAFETY: deliberately bad; the heap reports it before touching anything.
        unsafe { HEAP.reallocate_unsized(d, 40_000, 8) }
    })
    .expect_err("a freed object is reported");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains(&format!("{d:p}")), "{msg}");
    HEAP.check_invariants();
}
