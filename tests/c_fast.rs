//! The C ABI's fast paths, `Heap::allocate_fast` and `Heap::deallocate_fast`:
//! the class they pick, the alignment, and that the free declines (changing
//! nothing) whatever it cannot prove to be a live object of a class, so that
//! the checking path reports it.

#![cfg(all(feature = "linux", target_arch = "x86_64"))]

use std::alloc::Layout;

use tieralloc::internals::CheckedSource;
use tieralloc::{
    BadFree, FreeSite, Heap, LinuxCpu, LinuxHeap, MmapSource, PageSource, MALLOC_FAST_MAX,
};

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

        // The slots around the one live object of a class: carved into a
        // cache by its refill, never taken from their span (past the
        // batch), or past the span. None was handed out. (Without
        // `hardened` a slot carved into a cache reads as handed out.)
        let sizes: &[usize] = if cfg!(feature = "hardened") {
            // Classes of one-page spans (their slots tested from the class,
            // never-taken ones by their mark) and of longer ones (the
            // record's `carved`): 1408 B and 3072 B spans are 2 and 3 pages.
            &[16, 48, 64, 80, 144, 512, 1024, 1408, 3072]
        } else {
            &[]
        };
        for &size in sizes {
            let p = h.allocate(layout16(size));
            let mut in_span = 0;
            for k in (-64isize..64).filter(|&k| k != 0) {
                let q = p.wrapping_offset(size as isize * k);
                assert!(
                    !h.deallocate_fast(q),
                    "{size} B: slot {k} from a live one freed"
                );
                match h.try_deallocate_unsized(q) {
                    Err(BadFree::NeverHandedOut(FreeSite::Span)) => in_span += 1,
                    Err(_) => {}
                    Ok(()) => panic!("{size} B: slot {k} from a live one freed"),
                }
            }
            assert!(in_span > 0, "{size} B: no slot was still in its span");
            if !h.deallocate_fast(p) {
                assert!(!fast(), "the fast free declined a live object");
                h.try_deallocate_unsized(p).unwrap();
            }
        }
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

type Windowed = Heap<CheckedSource<MmapSource, { MmapSource::ARENA_BYTES }>, LinuxCpu>;

/// The fast free finds a span through the page map's window when its arena
/// lies in it, and through the radix table otherwise (no window at all, or
/// an arena past its end): in both it frees live objects of every small
/// class and declines an interior pointer, a slot free in its span and a
/// large object, and nothing is lost.
#[test]
fn the_fast_free_serves_inside_and_outside_the_window() {
    const ARENA: usize = MmapSource::ARENA_BYTES;
    // window bytes, and whether to fill the first arena first (so that the
    // objects land in the second, past a one-arena window).
    for (window, fill_first) in [(usize::MAX, false), (0, false), (ARENA, true)] {
        let h: Box<Windowed> = Box::new(Heap::new(
            CheckedSource::new(MmapSource::new()),
            LinuxCpu::new(),
        ));
        h.source().set_window_bytes(window);
        let filler = fill_first.then(|| {
            // The whole first arena, so that what follows needs a second.
            let l = Layout::from_size_align(ARENA, 16).unwrap();
            let p = h.allocate(l);
            assert!(!p.is_null());
            (p, l)
        });
        let mut freed = 0;
        // SAFETY: every pointer handed to the free paths is a live object
        // freed once, or one the paths must refuse without touching it.
        unsafe {
            for size in (16..=MALLOC_FAST_MAX).step_by(16) {
                let l = layout16(size);
                let objs: Vec<*mut u8> = (0..64).map(|_| h.allocate(l)).collect();
                for &p in &objs {
                    assert!(!p.is_null());
                    p.write_bytes(0x5a, size);
                }
                if let Some((f, fl)) = filler {
                    // In the second arena, past the window.
                    let (lo, hi) = (f as usize, f as usize + fl.size());
                    assert!(objs.iter().all(|&p| (p as usize) < lo || p as usize >= hi));
                }
                let p = objs[0];
                if size > 16 {
                    assert!(
                        !h.deallocate_fast(p.add(8)),
                        "{size} B: interior pointer freed"
                    );
                    assert_eq!(
                        h.try_deallocate_unsized(p.add(8)),
                        Err(BadFree::NotAnObject)
                    );
                }
                for &p in &objs {
                    assert!(std::slice::from_raw_parts(p, size)
                        .iter()
                        .all(|&b| b == 0x5a));
                    if h.deallocate_fast(p) {
                        freed += 1;
                    } else {
                        assert!(
                            !fast() || !h.uses_rseq(),
                            "{size} B: a live object declined"
                        );
                        h.try_deallocate_unsized(p).unwrap();
                    }
                }
            }
            let big = h.allocate(layout16(100_000));
            assert!(!h.deallocate_fast(big));
            h.try_deallocate_unsized(big).unwrap();
            let a = h.allocate(layout16(4096));
            if !h.deallocate_fast(a) {
                h.try_deallocate_unsized(a).unwrap();
            }
            h.scavenge(); // the caches go back: `a` is free in its span
            assert!(!h.deallocate_fast(a), "a free slot freed");
            assert!(h.try_deallocate_unsized(a).is_err());
            if let Some((f, fl)) = filler {
                h.deallocate(f, fl);
            }
        }
        if fast() && h.uses_rseq() {
            assert!(freed > 0, "window {window:#x}: the fast free freed nothing");
        }
        let arenas = h.source().arenas().len();
        assert_eq!(arenas, if fill_first { 2 } else { 1 }, "window {window:#x}");
        h.check_invariants();
    }
}
