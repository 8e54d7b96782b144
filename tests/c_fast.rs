//! The C ABI's fast paths, `Heap::allocate_fast` and `Heap::deallocate_fast`:
//! the class they pick, the alignment, and that the free declines (changing
//! nothing) whatever it cannot prove to be a live object of a class, so that
//! the checking path reports it.

#![cfg(all(feature = "linux", target_arch = "x86_64"))]

use std::alloc::Layout;

use tieralloc::{BadFree, LinuxHeap, MALLOC_FAST_MAX};

// A heap per test: the tests run at once, and one of them scavenges.
static SIZES: LinuxHeap = LinuxHeap::new();
static DECLINES: LinuxHeap = LinuxHeap::new();
static LOCKED: LinuxHeap = LinuxHeap::new_locked();

/// Whether the fast paths serve at all: with `checks` every operation takes
/// the checking path.
fn fast() -> bool {
    !cfg!(feature = "checks")
}

/// The allocation the C library makes when the fast path declines.
fn layout16(size: usize) -> Layout {
    Layout::from_size_align(size.max(16).next_multiple_of(16), 16).unwrap()
}

/// Sets up `h` (its first allocation) and returns it.
fn ready(h: &'static LinuxHeap) -> &'static LinuxHeap {
    let p = h.allocate(Layout::from_size_align(64, 8).unwrap());
    assert!(!p.is_null());
    // SAFETY: just allocated with this layout.
    unsafe { h.deallocate(p, Layout::from_size_align(64, 8).unwrap()) };
    h
}

#[test]
fn the_fast_path_serves_every_size_as_the_aligned_path_would() {
    let h = ready(&SIZES);
    assert!(h.uses_rseq(), "this machine should run the rseq path");
    let mut served = 0;
    for size in 1..=MALLOC_FAST_MAX {
        // Its slot as the usual path gives it.
        let q = h.allocate(layout16(size));
        assert!(!q.is_null());
        let want = h.try_usable_size(q).unwrap();
        // SAFETY: just allocated with this layout.
        unsafe { h.deallocate(q, layout16(size)) };

        let p = h.allocate_fast(size);
        if !fast() {
            assert!(p.is_null(), "{size} B: a fast allocation under checks");
            continue;
        }
        if p.is_null() {
            continue; // an empty stack or the decay's tick: the caller's fallback
        }
        served += 1;
        assert_eq!(p as usize % 16, 0, "{size} B at {p:p}");
        assert_eq!(h.try_usable_size(p), Some(want), "{size} B at {p:p}");
        assert_eq!(want % 16, 0, "{size} B: slot of {want} B");
        // SAFETY: `p` is live and ours; written within its size.
        unsafe {
            p.write_bytes(0xa5, size);
            assert!(
                h.deallocate_fast(p),
                "{size} B at {p:p}: the fast free declined"
            );
        }
    }
    // Almost every request finds an object (the stacks were just filled by the frees).
    assert!(
        !fast() || served > MALLOC_FAST_MAX * 9 / 10,
        "served {served}"
    );
    for size in [0, MALLOC_FAST_MAX + 1, 100_000, usize::MAX] {
        assert!(h.allocate_fast(size).is_null(), "{size} B");
    }
    h.check_invariants();
}

#[test]
fn the_fast_free_declines_what_it_cannot_prove() {
    let h = ready(&DECLINES);
    // SAFETY: every pointer handed to the free paths below is either a live
    // object freed once, or one the paths must refuse without touching it.
    unsafe {
        // A large object: the checking path frees it.
        let big = h.allocate(layout16(100_000));
        assert!(!h.deallocate_fast(big));
        h.try_deallocate_unsized(big).unwrap();

        // An interior pointer: declined, then reported; the object stays live.
        let p = h.allocate(layout16(64));
        p.write_bytes(7, 64);
        assert!(!h.deallocate_fast(p.add(16)));
        assert_eq!(
            h.try_deallocate_unsized(p.add(16)),
            Err(BadFree::NotAnObject)
        );
        assert_eq!(h.try_usable_size(p), Some(64));
        assert!(std::slice::from_raw_parts(p, 64).iter().all(|&b| b == 7));
        if !h.deallocate_fast(p) {
            assert!(!fast(), "the fast free declined a live object");
            h.try_deallocate_unsized(p).unwrap();
        }

        // A sized free: a size the slot holds is freed, a larger one declined.
        let q = h.allocate(layout16(100));
        q.write_bytes(9, 100);
        assert!(
            !h.deallocate_fast_sized(q, 113),
            "113 B freed from a 112 B slot"
        );
        assert_eq!(h.try_usable_size(q), Some(112));
        assert!(std::slice::from_raw_parts(q, 100).iter().all(|&b| b == 9));
        if !h.deallocate_fast_sized(q, 112) {
            assert!(!fast(), "the sized fast free declined a live object");
            h.try_deallocate_unsized(q).unwrap();
        }

        // A foreign pointer (the stack).
        let mut local = [0u64; 8];
        let f = local.as_mut_ptr().cast::<u8>();
        assert!(!h.deallocate_fast(f));
        assert_eq!(h.try_deallocate_unsized(f), Err(BadFree::NotAnObject));
        assert_eq!(local, [0; 8]);

        // A slot that no allocation returned (free in its span).
        let a = h.allocate(layout16(4096));
        let b = h.allocate(layout16(4096));
        for q in [a, b] {
            if !h.deallocate_fast(q) {
                assert!(!fast(), "the fast free declined a live object");
                h.try_deallocate_unsized(q).unwrap();
            }
        }
        h.scavenge(); // the caches go back: a and b are free in their span
        assert!(!h.deallocate_fast(a));
        assert!(h.try_deallocate_unsized(a).is_err());
    }
    h.check_invariants();
}

#[test]
fn the_locked_mode_takes_the_usual_paths() {
    let h = ready(&LOCKED);
    assert!(!h.uses_rseq());
    assert!(h.allocate_fast(64).is_null());
    let p = h.allocate(layout16(64));
    // SAFETY: live, ours, freed once.
    unsafe {
        assert!(!h.deallocate_fast(p));
        h.try_deallocate_unsized(p).unwrap();
    }
    h.check_invariants();
}
