//! Double-free and foreign-pointer detection (feature `checks`). See `lib.rs`
//! for the overview.
//!
//! Each span carries `cached_bits`: objects that are free but still held by a
//! per-CPU or transfer cache. A live object has its alloc bit set and its
//! cached bit clear; a cached one both set; one back in its span neither.
//! Every tier may call these checks; they call no tier (they read spans and
//! the page map, and take a lock only through the closure a caller passes).
//!
//! A failed check panics with the address, its span and its class. Checks
//! that must decide under a lock decide there and panic after releasing it
//! (the panic may allocate).

use crate::pageheap::PageMap;
use crate::sizeclass::{Geometry, SizeClass};
use crate::source::PageSource;
use crate::span::{Span, SpanState};
use crate::sync::atomic::Ordering;
use crate::units::Addr;

fn bit(idx: usize) -> (usize, u64) {
    (idx / 64, 1u64 << (idx % 64))
}

/// An object enters a cache straight from its span.
pub(crate) fn mark_cached(span: &Span, idx: usize, p: *mut u8) {
    let (w, b) = bit(idx);
    let old = span.cached_word(w).fetch_or(b, Ordering::Relaxed);
    assert!(
        old & b == 0,
        "tieralloc: object {p:p} (span {:#x}) carved while cached",
        span.start
    );
}

/// An object goes back to its span from a cache.
pub(crate) fn unmark_cached(span: &Span, idx: usize, p: *mut u8) {
    let (w, b) = bit(idx);
    let old = span.cached_word(w).fetch_and(!b, Ordering::Relaxed);
    assert!(
        old & b != 0,
        "tieralloc: object {p:p} (span {:#x}) returned to its span but was not free",
        span.start
    );
}

/// A cached object is handed to the user.
pub(crate) fn on_alloc<S: PageSource>(map: &PageMap, p: *mut u8) {
    // SAFETY: cached objects are in live spans.
    let span = unsafe { &*map.lookup::<S>(Addr::of(p)) };
    let (w, b) = bit(span.index_of(Addr::of(p)).0);
    let old = span.cached_word(w).fetch_and(!b, Ordering::Relaxed);
    assert!(
        old & b != 0,
        "tieralloc: object {p:p} (span {:#x}, class {}) handed out twice",
        span.start,
        span.class.index()
    );
}

/// A sized free over 4 KiB found the object in a slot of class `slot`: the
/// layout's class `c` must fit in it (it may be smaller: `realloc` shrinks
/// in place).
pub(crate) fn on_layout(g: &Geometry, p: *mut u8, c: SizeClass, slot: SizeClass) {
    if g.size(c) > g.size(slot) {
        panic!(
            "tieralloc: free of {p:p} with a layout of class {} ({} B), but it sits in a slot of class {} ({} B)",
            c.index(),
            g.size(c),
            slot.index(),
            g.size(slot)
        );
    }
}

/// The user frees `p` as an object of class `c`: check it is one, live.
/// `lock` takes the lock that guards the class's alloc bits (its central
/// lock) and returns its guard.
pub(crate) fn on_free<S: PageSource, G>(
    map: &PageMap,
    p: *mut u8,
    c: SizeClass,
    lock: impl FnOnce() -> G,
) {
    let g = S::GEOMETRY;
    // SAFETY: non-null page-map entries are live spans.
    let Some(span) = (unsafe { map.lookup::<S>(Addr::of(p)).as_ref() }) else {
        panic!("tieralloc: free of {p:p}: not a pointer into this heap (foreign pointer, or a freed large object)");
    };
    if span.state == SpanState::Idle {
        panic!("tieralloc: free of {p:p}: not a pointer into this heap (a freed large object, idle in the large-span cache)");
    }
    if span.state != SpanState::Small {
        panic!(
            "tieralloc: free of {p:p} as a class {} object, but span {:#x} is {:?}",
            c.index(),
            span.start,
            span.state
        );
    }
    if span.class != c {
        panic!(
            "tieralloc: free of {p:p} with a layout of class {} ({} B), but span {:#x} holds class {} ({} B)",
            c.index(),
            g.size(c),
            span.start,
            span.class.index(),
            span.elemsize
        );
    }
    let (idx, exact) = span.index_of(Addr::of(p));
    if !exact {
        panic!(
            "tieralloc: free of interior pointer {p:p}: inside object {:p} of span {:#x} (class {}, {} B)",
            span.object(idx),
            span.start,
            c.index(),
            g.size(c)
        );
    }
    let (w, b) = bit(idx);
    let (allocated, old) = {
        let _guard = lock();
        let allocated = span.is_allocated(idx);
        (
            allocated,
            if allocated {
                span.cached_word(w).fetch_or(b, Ordering::Relaxed)
            } else {
                0
            },
        )
    };
    if !allocated {
        panic!(
            "tieralloc: double free of {p:p} (span {:#x}, class {}): the object is already free",
            span.start,
            c.index()
        );
    }
    if old & b != 0 {
        panic!("tieralloc: double free of {p:p} (span {:#x}, class {}): the object is already free in a cache", span.start, c.index());
    }
}
