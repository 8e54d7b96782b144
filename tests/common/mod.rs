//! Helpers shared by the integration tests. A test file includes them with
//! `mod common;`; not every file uses every helper.
#![allow(dead_code)]

use core::alloc::Layout;
use std::cell::Cell;

use tieralloc::internals::SizeClass;
use tieralloc::internals::{ObjectKind, PROMOTE_MIN, SHRINK_MIN};
#[cfg(feature = "linux")]
use tieralloc::{cpu::RelaxStrategy, Heap, LockedSlots, MmapSource, SingleCpu};

/// Go's page, the page of every source these tests use.
const GO_PAGE: tieralloc::internals::PageSize = tieralloc::internals::PageSize::GO;

/// The hosted heaps' geometry (Go's classes).
pub const GO: &tieralloc::Geometry = &tieralloc::Geometry::GO;

// ------------------------------------------------------------------- RNG

/// The crate's one test generator (xorshift64*).
#[allow(unused_imports)] // not every test file draws numbers
pub use tieralloc::internals::Rng;

// ------------------------------------------------------------- CPU slots

thread_local! {
    /// The simulated CPU slot of this test thread.
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// The slot function of the tests' `LockedSlots` heaps: whatever this thread
/// set with [`set_slot`] (0 until then).
pub fn slot_of_thread() -> usize {
    SLOT.with(|s| s.get())
}

/// Makes this thread use slot `i` (taken modulo the heap's slot count).
pub fn set_slot(i: usize) {
    SLOT.with(|s| s.set(i));
}

// ----------------------------------------------------------------- heaps

/// A heap over mmap with `N` locked slots, chosen by [`slot_of_thread`].
#[cfg(feature = "linux")]
pub const fn slots_heap<const N: usize, X: RelaxStrategy>() -> Heap<MmapSource, LockedSlots<N, X>> {
    Heap::new(MmapSource::new(), LockedSlots::new(slot_of_thread))
}

/// A heap over mmap for one CPU.
#[cfg(feature = "linux")]
pub const fn single_cpu_heap() -> Heap<MmapSource, SingleCpu> {
    Heap::new(MmapSource::new(), SingleCpu::new())
}

/// What a live object costs in `heap_alloc`: its class size, or its pages;
/// 0 for a tiny object (counted through the shared 64-byte blocks).
pub fn rounded(l: Layout) -> u64 {
    rounded_in(GO, l)
}

/// [`rounded`] in a heap of geometry `g`.
pub fn rounded_in(g: &tieralloc::Geometry, l: Layout) -> u64 {
    let page = tieralloc::internals::PageSize::from_shift(g.page_shift());
    match ObjectKind::of_in(g, l.size(), l.align()) {
        ObjectKind::Tiny => 0,
        ObjectKind::Small(c) => g.size(c) as u64,
        ObjectKind::Large => {
            (tieralloc::internals::large_pages(l.size(), page)
                .unwrap()
                .bytes(page)) as u64
        }
    }
}

/// Whether `realloc` to `new` bytes (at `align`) keeps an object that sits in
/// a slot of class `slot` where it is, the heap's rule restated independently
/// of it: the new size sorts to that class, or it is over 4 KiB, fits the
/// slot and fills at least half of it.
pub fn stays_in_slot(slot: SizeClass, new: usize, align: usize) -> bool {
    match ObjectKind::of(new, align) {
        ObjectKind::Small(b) if b == slot => true,
        ObjectKind::Small(_) => {
            new > SHRINK_MIN && new <= GO.size(slot) && new >= GO.size(slot) / 2
        }
        _ => false,
    }
}

/// Whether `realloc` of an object of layout `old` (with a span of its own if
/// `own`) to `new` bytes leaves it with a span of its own, when the object is
/// small before and after and does not stay in its slot ([`stays_in_slot`]):
/// the rule of [`PROMOTE_MIN`], stated independently of how the heap gets
/// there (in place or by moving).
pub fn promoted_after(old: Layout, own: bool, new: usize) -> bool {
    let (a, b) = (
        ObjectKind::of(old.size(), old.align()),
        ObjectKind::of(new, old.align()),
    );
    match (a, b) {
        (ObjectKind::Small(x), ObjectKind::Small(y)) if x == y => own,
        (_, ObjectKind::Small(_)) if new > PROMOTE_MIN => {
            own || a == ObjectKind::Large || (new > old.size() && new / 2 <= old.size())
        }
        _ => false,
    }
}

/// The layout of `size` bytes at alignment 8.
pub fn lay(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// Fills `size` bytes at `p` with a pattern of `seed` and the byte's offset.
pub fn fill_pattern(p: *mut u8, size: usize, seed: u8) {
    for i in 0..size {
        // SAFETY: the caller's object has `size` bytes.
        unsafe { *p.add(i) = seed ^ (i as u8) ^ ((i >> 8) as u8) };
    }
}

/// Checks the pattern of [`fill_pattern`] on the first `size` bytes at `p`.
pub fn check_pattern(p: *mut u8, size: usize, seed: u8) {
    for i in 0..size {
        // SAFETY: as in `fill_pattern`.
        let got = unsafe { *p.add(i) };
        assert_eq!(
            got,
            seed ^ (i as u8) ^ ((i >> 8) as u8),
            "byte {i} of {p:p}"
        );
    }
}
