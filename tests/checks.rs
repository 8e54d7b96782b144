//! Bad input is detected: double frees, foreign and interior pointers, wrong
//! layouts. Each test has its own heap (a `static`), calls the inherent
//! `Heap::allocate`/`Heap::deallocate` (panicking through `GlobalAlloc` would be
//! undefined behaviour), catches the panic, checks that the message names the
//! address (`{:p}`) and, where the message gives them, the span and the class;
//! then checks that the same heap still works and that nothing was corrupted by
//! the detection (`still_works`).
//!
//! Some checks are always on (large objects and tiny objects validate their span
//! on every free, and a free before any allocation is refused); they are tested
//! in both modes. The rest need feature `checks` and live in `mod with_checks`.
//!
//! What is *not* detected, by design:
//! * without `checks`, a bad free of a small object (double free, foreign or
//!   interior pointer, wrong class) of up to 16 KiB (`PROMOTE_MIN`): it is
//!   pushed into a cache as is (over 16 KiB a free that finds no span of its
//!   class takes the validated large path);
//! * a tiny object freed twice while its block is still the CPU's current block
//!   (its live count still holds the bias, so the count stays positive), or while
//!   another sub-object of the block is live (the count reaches 0 one free early
//!   and the block is returned under the live sub-object);
//! * a double free of a small or tiny object after its memory was handed out again
//!   (the second free then frees the new owner's object);
//! * a double free of a large object after its pages were taken by a new span.
#![cfg(feature = "linux")]

mod common;

use core::alloc::Layout;
use std::panic::{catch_unwind, AssertUnwindSafe};

use common::{lay, single_cpu_heap};
use tieralloc::internals::{size_to_class, TINY_CLASS};
use tieralloc::{Heap, LockedSlots, MmapSource, SingleCpu, PAGE_BYTES, TINY_BLOCK};

/// The hosted heaps' geometry (Go's classes).
#[cfg(feature = "checks")]
const GO: &tieralloc::Geometry = &tieralloc::Geometry::GO;

type H2 = Heap<MmapSource, LockedSlots<2>>;
type H1 = Heap<MmapSource, SingleCpu>;

const fn heap2() -> H2 {
    Heap::new(MmapSource::new(), LockedSlots::new(|| 0))
}

fn class_of(size: usize) -> usize {
    size_to_class(size).index()
}

/// Start of the one-page span holding `p` (classes used here have one-page spans).
fn page_of(p: *mut u8) -> usize {
    p as usize & !(PAGE_BYTES - 1)
}

/// Runs `f`, which must panic, and returns the panic message.
fn panic_message(f: impl FnOnce()) -> String {
    let err = catch_unwind(AssertUnwindSafe(f)).expect_err("expected the bad free to panic");
    if let Some(s) = err.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = err.downcast_ref::<&str>() {
        s.to_string()
    } else {
        panic!("panic payload is not a string")
    }
}

/// Asserts `msg` contains each of `parts`.
fn assert_names(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(
            msg.contains(p),
            "panic message {msg:?} does not contain {p:?}"
        );
    }
}

fn addr(p: *const u8) -> String {
    format!("{p:p}")
}

/// The heap still works after a caught panic: objects of every kind come back
/// distinct and writable, invariants hold, and draining every cache to the spans
/// (which re-checks every cached object against its span) succeeds.
fn still_works<S: tieralloc::PageSource + Sync, C: tieralloc::Cpu>(heap: &Heap<S, C>) {
    heap.check_invariants();
    let mut objs = Vec::new();
    for i in 0..600usize {
        let size = [1, 7, 8, 12, 16, 24, 64, 256, 1000, 5000, 40_000, 300_000][i % 12];
        let l = lay(size);
        let p = heap.allocate(l);
        assert!(!p.is_null());
        // SAFETY: a fresh object of `size` bytes.
        unsafe { p.write_bytes(i as u8, size) };
        objs.push((p, l, i as u8));
    }
    let mut addrs: Vec<usize> = objs.iter().map(|o| o.0 as usize).collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), objs.len(), "an object was handed out twice");
    for &(p, l, b) in &objs {
        // SAFETY: live, written above.
        let s = unsafe { core::slice::from_raw_parts(p, l.size()) };
        assert!(s.iter().all(|&x| x == b), "object {p:p} corrupted");
    }
    for (p, l, _) in objs {
        // SAFETY: ours, freed once.
        unsafe { heap.deallocate(p, l) };
    }
    heap.check_invariants();
    heap.scavenge();
    heap.check_invariants();
}

// ------------------------------------------------------------ always on

/// A large object freed twice: while its span idles in the page heap's
/// large-span cache, and after the cache gave the span's pages back.
#[test]
fn large_double_free() {
    static HEAP: H2 = heap2();
    let l = lay(100_000);
    let p = HEAP.allocate(l);
    assert!(!p.is_null());
    unsafe { HEAP.deallocate(p, l) };
    let msg = panic_message(|| unsafe { HEAP.deallocate(p, l) });
    assert_names(
        &msg,
        &[&addr(p), "double free", "idle in the large-span cache"],
    );
    // Give the idle span back (scavenge empties the cache), then free again.
    HEAP.scavenge();
    let msg = panic_message(|| unsafe { HEAP.deallocate(p, l) });
    assert_names(
        &msg,
        &[&addr(p), "not a live object of this heap", "double free"],
    );
    still_works(&HEAP);
}

/// An object that `realloc` promoted to a span of its own (over 16 KiB) is
/// freed by the large path, which validates it in both modes: a double free
/// and a foreign pointer freed with its size are reported.
#[test]
fn promoted_double_free_and_foreign_pointer() {
    static HEAP: H2 = heap2();
    let p = HEAP.allocate(lay(10_000));
    assert!(!p.is_null());
    let q = unsafe { HEAP.reallocate(p, lay(10_000), 20_000) };
    assert!(!q.is_null());
    unsafe { HEAP.deallocate(q, lay(20_000)) };
    let msg = panic_message(|| unsafe { HEAP.deallocate(q, lay(20_000)) });
    assert_names(
        &msg,
        &[&addr(q), "double free", "idle in the large-span cache"],
    );
    let x = [0u64; 4];
    let f = x.as_ptr() as *mut u8;
    let msg = panic_message(|| unsafe { HEAP.deallocate(f, lay(20_000)) });
    assert_names(&msg, &[&addr(f), "not a live object of this heap"]);
    still_works(&HEAP);
}

/// A sized free over 4 KiB asks the page map what the object is (`realloc`
/// may have kept it in a larger slot, or promoted it), so a foreign pointer
/// freed with such a size is reported in both modes, and a layout larger than
/// the object's slot is reported with `checks`.
#[test]
fn medium_foreign_pointer_and_oversized_layout() {
    static HEAP: H2 = heap2();
    still_works(&HEAP);
    let x = [0u64; 4];
    let f = x.as_ptr() as *mut u8;
    for size in [4097, 10_000, 16_000] {
        let msg = panic_message(|| unsafe { HEAP.deallocate(f, lay(size)) });
        assert_names(&msg, &[&addr(f)]);
        HEAP.check_invariants();
    }
    // Kept in its 8 KiB slot by a shrinking realloc, freed by its new layout.
    let p = HEAP.allocate(lay(8192));
    let q = unsafe { HEAP.reallocate(p, lay(8192), 5000) };
    assert_eq!(q, p);
    #[cfg(feature = "checks")]
    {
        let msg = panic_message(|| unsafe { HEAP.deallocate(q, lay(12_000)) });
        assert_names(&msg, &[&addr(q), "layout of class", "slot of class"]);
    }
    unsafe { HEAP.deallocate(q, lay(5000)) };
    still_works(&HEAP);
}

/// An interior pointer of a large object (same page, later page, last byte).
#[test]
fn large_interior_pointer() {
    static HEAP: H1 = single_cpu_heap();
    let l = lay(5 * PAGE_BYTES);
    let p = HEAP.allocate(l);
    assert!(!p.is_null());
    for off in [8, PAGE_BYTES, 5 * PAGE_BYTES - 1] {
        let q = p.wrapping_add(off);
        let msg = panic_message(|| unsafe { HEAP.deallocate(q, l) });
        assert_names(
            &msg,
            &[
                &addr(q),
                "not the start of a large object",
                &format!("span {:#x}", p as usize),
                "Large",
            ],
        );
        HEAP.check_invariants();
    }
    // The object itself is intact and frees normally.
    unsafe {
        p.write_bytes(3, l.size());
        HEAP.deallocate(p, l);
    }
    still_works(&HEAP);
}

/// A pointer that is no object of the heap, freed with a large layout.
#[test]
fn large_foreign_pointer() {
    static HEAP: H2 = heap2();
    still_works(&HEAP);
    let x = [0u64; 4];
    let q = x.as_ptr() as *mut u8;
    let msg = panic_message(|| unsafe { HEAP.deallocate(q, lay(100_000)) });
    assert_names(&msg, &[&addr(q), "not a live object of this heap"]);
    let b = Box::into_raw(Box::new([0u8; 64])) as *mut u8;
    let msg = panic_message(|| unsafe { HEAP.deallocate(b, lay(100_000)) });
    assert_names(&msg, &[&addr(b), "not a live object of this heap"]);
    drop(unsafe { Box::from_raw(b as *mut [u8; 64]) });
    still_works(&HEAP);
}

/// A small object freed with a large layout.
#[test]
fn small_object_freed_as_large() {
    static HEAP: H2 = heap2();
    let p = HEAP.allocate(lay(64));
    let msg = panic_message(|| unsafe { HEAP.deallocate(p, lay(100_000)) });
    assert_names(
        &msg,
        &[
            &addr(p),
            "not the start of a large object",
            &format!("span {:#x}", page_of(p)),
            "Small",
            &format!("class {}", class_of(64)),
        ],
    );
    unsafe { HEAP.deallocate(p, lay(64)) };
    still_works(&HEAP);
}

/// A tiny object freed twice after its block was retired and emptied: the
/// block's live count is 0, so the second free is caught.
#[test]
fn tiny_double_free_of_a_retired_block() {
    static HEAP: H2 = heap2();
    let l12 = Layout::from_size_align(12, 4).unwrap();
    let l15 = Layout::from_size_align(15, 1).unwrap();
    let l8 = lay(8);
    // 12 bytes start a block and three times 15 fill it to 57; 8 more at
    // alignment 8 do not fit, and leaving more room they make a new block
    // current, retiring the first.
    let t1 = HEAP.allocate(l12);
    let fill: Vec<*mut u8> = (0..3).map(|_| HEAP.allocate(l15)).collect();
    let t2 = HEAP.allocate(l8);
    assert!(!t1.is_null() && !t2.is_null());
    let block = |p: *mut u8| p as usize & !(TINY_BLOCK - 1);
    assert!(fill.iter().all(|&f| block(f) == block(t1)));
    assert_ne!(block(t1), block(t2), "t2 must be in a new block");
    for f in fill {
        unsafe { HEAP.deallocate(f, l15) };
    }
    unsafe { HEAP.deallocate(t1, l12) }; // the block's last sub-object: block freed
    let msg = panic_message(|| unsafe { HEAP.deallocate(t1, l12) });
    assert_names(
        &msg,
        &[
            &addr(t1),
            "double free of tiny object",
            &format!("block {t1:p}"),
            &format!("span {:#x}", page_of(t1)),
            &format!("class {}", TINY_CLASS.index()),
            "live count was 0",
        ],
    );
    unsafe { HEAP.deallocate(t2, l8) };
    still_works(&HEAP);
}

/// A tiny object freed twice after its block went back to its span and the
/// span to the page heap: the page no longer maps to a tiny-class span.
#[test]
fn tiny_double_free_after_scavenge() {
    static HEAP: H1 = single_cpu_heap();
    let l = lay(8);
    let t = HEAP.allocate(l);
    unsafe { HEAP.deallocate(t, l) };
    HEAP.scavenge(); // retires the block, which is empty: back to the page heap
    let msg = panic_message(|| unsafe { HEAP.deallocate(t, l) });
    assert_names(&msg, &[&addr(t), "not a tiny object of this heap"]);
    still_works(&HEAP);
}

/// A foreign pointer freed with a tiny layout.
#[test]
fn tiny_foreign_pointer() {
    static HEAP: H2 = heap2();
    still_works(&HEAP);
    let x = 0u64;
    let q = &x as *const u64 as *mut u8;
    let msg = panic_message(|| unsafe { HEAP.deallocate(q, lay(8)) });
    assert_names(&msg, &[&addr(q), "not a tiny object of this heap"]);
    // A small object of another class freed with a tiny layout.
    let p = HEAP.allocate(lay(32));
    let msg = panic_message(|| unsafe { HEAP.deallocate(p, lay(8)) });
    assert_names(&msg, &[&addr(p), "not a tiny object of this heap"]);
    unsafe { HEAP.deallocate(p, lay(32)) };
    // An object of the tiny blocks' class that is not a block: it has no live
    // sub-objects, and the report leaves its count alone.
    let q = HEAP.allocate(lay(TINY_BLOCK));
    for _ in 0..2 {
        let msg = panic_message(|| unsafe { HEAP.deallocate(q, lay(8)) });
        assert_names(
            &msg,
            &[
                &addr(q),
                "not tiny",
                "live count was 0",
                &format!("class {}", TINY_CLASS.index()),
            ],
        );
    }
    unsafe { HEAP.deallocate(q, lay(TINY_BLOCK)) };
    still_works(&HEAP);
}

/// A free before the heap ever allocated.
#[test]
fn free_before_any_allocation() {
    static HEAP: H2 = heap2();
    let x = [0u64; 8];
    let q = x.as_ptr() as *mut u8;
    let msg = panic_message(|| unsafe { HEAP.deallocate(q, lay(64)) });
    // With `checks` the pointer is found foreign first; without, the heap has no caches yet.
    assert_names(&msg, &[&addr(q)]);
    still_works(&HEAP);
}

// ------------------------------------------------------------ feature `checks`

#[cfg(feature = "checks")]
mod with_checks {
    use super::*;
    use crate::common::{set_slot, slots_heap};
    use tieralloc::internals::ObjectKind;

    /// Freed twice in a row: the object is in a per-CPU cache.
    #[test]
    fn small_double_free_in_cache() {
        static HEAP: H2 = heap2();
        for size in [16, 64, 1024, 8192] {
            let l = lay(size);
            let p = HEAP.allocate(l);
            unsafe { HEAP.deallocate(p, l) };
            let msg = panic_message(|| unsafe { HEAP.deallocate(p, l) });
            let mut parts = vec![
                addr(p),
                "double free".into(),
                "already free in a cache".into(),
                format!("class {}", class_of(size)),
            ];
            if GO.span_pages(size_to_class(size)).get() == 1 {
                parts.push(format!("span {:#x}", page_of(p)));
            }
            assert_names(&msg, &parts.iter().map(|s| s.as_str()).collect::<Vec<_>>());
            HEAP.check_invariants();
        }
        still_works(&HEAP);
    }

    /// Freed on one CPU slot, freed again on another: still in a cache.
    #[test]
    fn small_double_free_across_slots() {
        static HEAP: Heap<MmapSource, LockedSlots<2>> = slots_heap();
        let l = lay(48);
        let p = HEAP.allocate(l);
        set_slot(1);
        unsafe { HEAP.deallocate(p, l) };
        set_slot(0);
        let msg = panic_message(|| unsafe { HEAP.deallocate(p, l) });
        assert_names(
            &msg,
            &[
                &addr(p),
                "already free in a cache",
                &format!("class {}", class_of(48)),
            ],
        );
        still_works(&HEAP);
        set_slot(1);
        still_works(&HEAP);
    }

    /// Freed, returned to its span by `scavenge`, freed again. A neighbour keeps
    /// the span alive, so the object is found free in its span.
    #[test]
    fn small_double_free_after_scavenge() {
        static HEAP: H2 = heap2();
        let l = lay(64);
        let p = HEAP.allocate(l);
        let q = HEAP.allocate(l);
        assert_eq!(page_of(p), page_of(q), "one span");
        unsafe { HEAP.deallocate(p, l) };
        HEAP.scavenge();
        let msg = panic_message(|| unsafe { HEAP.deallocate(p, l) });
        assert_names(
            &msg,
            &[
                &addr(p),
                "double free",
                &format!("span {:#x}", page_of(p)),
                &format!("class {}", class_of(64)),
                "the object is already free",
            ],
        );
        assert!(!msg.contains("in a cache"), "{msg}");
        HEAP.check_invariants();
        unsafe { HEAP.deallocate(q, l) };
        still_works(&HEAP);

        // With no neighbour the span itself went back to the page heap: the
        // address is no longer in the heap at all.
        let p = HEAP.allocate(l);
        unsafe { HEAP.deallocate(p, l) };
        HEAP.scavenge();
        let msg = panic_message(|| unsafe { HEAP.deallocate(p, l) });
        assert_names(&msg, &[&addr(p), "not a pointer into this heap"]);
        still_works(&HEAP);
    }

    /// Freed, then pushed out of the per-CPU cache *and* the transfer cache by
    /// freeing more than both hold, then freed again.
    #[test]
    fn small_double_free_after_flush() {
        static HEAP: H1 = single_cpu_heap();
        let l = lay(64);
        let ObjectKind::Small(c) = ObjectKind::of(64, 8) else {
            unreachable!()
        };
        // Enough frees to fill the CPU stack and the transfer cache, then some.
        let first = tieralloc::internals::capacity(c)
            + tieralloc::internals::transfer_capacity(GO, c, tieralloc::internals::TRANSFER_BYTES)
            + 116;
        let objs: Vec<*mut u8> = (0..first + 500).map(|_| HEAP.allocate(l)).collect();
        let p = objs[0];
        // A neighbour in p's span stays live, so the span stays.
        let keep = objs[1..]
            .iter()
            .position(|&o| page_of(o) == page_of(p))
            .map(|i| i + 1)
            .expect("a neighbour");
        let others: Vec<*mut u8> = objs
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != 0 && i != keep)
            .map(|(_, &o)| o)
            .collect();
        // 128 fill the cache (capacity of 64 B), then batches of 64 fill the
        // transfer cache (1,024); later flushes go to the spans.
        for &o in &others[..first] {
            unsafe { HEAP.deallocate(o, l) };
        }
        unsafe { HEAP.deallocate(p, l) };
        // p is among the 128 newest; 200 more frees flush it to its span.
        for &o in &others[first..first + 200] {
            unsafe { HEAP.deallocate(o, l) };
        }
        let msg = panic_message(|| unsafe { HEAP.deallocate(p, l) });
        assert_names(
            &msg,
            &[
                &addr(p),
                "double free",
                &format!("span {:#x}", page_of(p)),
                &format!("class {}", class_of(64)),
                "the object is already free",
            ],
        );
        assert!(
            !msg.contains("in a cache"),
            "p should have left the caches: {msg}"
        );
        HEAP.check_invariants();
        for &o in &others[first + 200..] {
            unsafe { HEAP.deallocate(o, l) };
        }
        unsafe { HEAP.deallocate(objs[keep], l) };
        still_works(&HEAP);
    }

    /// Pointers that are no object of this heap.
    #[test]
    fn small_foreign_pointers() {
        static HEAP: H2 = heap2();
        static OTHER: H1 = single_cpu_heap();
        still_works(&HEAP);
        let l = lay(64);
        // A stack address.
        let x = [0u64; 8];
        let q = x.as_ptr() as *mut u8;
        let msg = panic_message(|| unsafe { HEAP.deallocate(q, l) });
        assert_names(&msg, &[&addr(q), "not a pointer into this heap"]);
        // A Box from the system allocator.
        let b = Box::into_raw(Box::new([7u8; 64])) as *mut u8;
        let msg = panic_message(|| unsafe { HEAP.deallocate(b, l) });
        assert_names(&msg, &[&addr(b), "not a pointer into this heap"]);
        assert_eq!(unsafe { *b.add(63) }, 7);
        drop(unsafe { Box::from_raw(b as *mut [u8; 64]) });
        // An object of another tieralloc heap.
        let o = OTHER.allocate(l);
        let msg = panic_message(|| unsafe { HEAP.deallocate(o, l) });
        assert_names(&msg, &[&addr(o), "not a pointer into this heap"]);
        unsafe { OTHER.deallocate(o, l) };
        still_works(&OTHER);
        still_works(&HEAP);
    }

    /// `p + 8` of a 64-byte object.
    #[test]
    fn small_interior_pointer() {
        static HEAP: H2 = heap2();
        let l = lay(64);
        let p = HEAP.allocate(l);
        let q = p.wrapping_add(8);
        let msg = panic_message(|| unsafe { HEAP.deallocate(q, l) });
        assert_names(
            &msg,
            &[
                &addr(q),
                "interior",
                &format!("inside object {p:p}"),
                &format!("span {:#x}", page_of(p)),
                &format!("class {}", class_of(64)),
                "64 B",
            ],
        );
        // The object is still live: a second interior free is caught as well,
        // and the real free works.
        let q = p.wrapping_add(63);
        let msg = panic_message(|| unsafe { HEAP.deallocate(q, l) });
        assert_names(&msg, &[&addr(q), "interior"]);
        unsafe { HEAP.deallocate(p, l) };
        still_works(&HEAP);
    }

    /// Allocated as 64 B, freed as 256 B: class mismatch.
    #[test]
    fn small_wrong_layout() {
        static HEAP: H2 = heap2();
        let p = HEAP.allocate(lay(64));
        let msg = panic_message(|| unsafe { HEAP.deallocate(p, lay(256)) });
        assert_names(
            &msg,
            &[
                &addr(p),
                &format!("layout of class {} (256 B)", class_of(256)),
                &format!("span {:#x} holds class {} (64 B)", page_of(p), class_of(64)),
            ],
        );
        // Smaller, same-kind layout of another class too.
        let msg = panic_message(|| unsafe { HEAP.deallocate(p, lay(48)) });
        assert_names(&msg, &[&addr(p), &format!("holds class {}", class_of(64))]);
        unsafe { HEAP.deallocate(p, lay(64)) };
        still_works(&HEAP);
    }

    /// A large object freed with a small layout.
    #[test]
    fn large_object_freed_as_small() {
        static HEAP: H2 = heap2();
        let l = lay(100_000);
        let p = HEAP.allocate(l);
        let msg = panic_message(|| unsafe { HEAP.deallocate(p, lay(64)) });
        assert_names(
            &msg,
            &[
                &addr(p),
                &format!("class {}", class_of(64)),
                &format!("span {:#x} is Large", p as usize),
            ],
        );
        unsafe { HEAP.deallocate(p, l) };
        still_works(&HEAP);
    }

    /// A freed large object freed again as a small one.
    #[test]
    fn freed_large_object_freed_as_small() {
        static HEAP: H2 = heap2();
        let l = lay(100_000);
        let p = HEAP.allocate(l);
        unsafe { HEAP.deallocate(p, l) };
        let msg = panic_message(|| unsafe { HEAP.deallocate(p, lay(64)) });
        assert_names(&msg, &[&addr(p), "not a pointer into this heap"]);
        still_works(&HEAP);
    }
}
