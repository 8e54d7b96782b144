//! Large objects (a span of their own), promotion, and `realloc`. See
//! `lib.rs` (allocation steps 6–7, free step 6) and [`super`].
//!
//! A large object is whole pages from the page heap ([`large_pages`]: whole
//! pages up to 64 KiB and above 1 MiB, four sizes per doubling in between, so
//! that an idle span in the large-span cache fits the next request of about
//! its size). `realloc` resizes in place where it can — within a class, a
//! class object shrinking within its slot ([`stays_in_class`]), or a span of
//! its own shrinking or growing into free pages after it — and otherwise
//! allocates, copies and frees. An object that grows past [`PROMOTE_MIN`]
//! by at most twice moves to a span of its own (*promotion*), so that a
//! growing buffer stops being copied at every class boundary.

use core::alloc::Layout;
use core::ptr::{null_mut, NonNull};

use crate::pageheap::large_pages;
use crate::percpu::Cpu;
use crate::sizeclass::{Geometry, SizeClass};
use crate::source::{PageSource, SourcePage};
use crate::span::{Span, SpanState};
use crate::units::{Addr, Pages};

use super::{Heap, ObjectKind};

/// Objects that `realloc` grows past this size (16 KiB), by at most twice
/// their size, move to a span of their own even while their size still has a
/// class: they are *promoted*.
/// Growing buffers (a doubling `Vec`, a C string built with `realloc`) then
/// grow in place into free neighbouring pages instead of being copied at every
/// class boundary up to 32 KiB and beyond, as jemalloc's page-granular extents
/// above 16 KiB do. A promoted object's span is its class size in whole pages
/// (at most a third more than the class), or an idle span of up to twice that
/// from the large-span cache (`PageHeap::alloc_promoted`); it is freed,
/// resized and reported by the large-object path. A sized free of a size over
/// [`SHRINK_MIN`] cannot know whether the object was promoted, so it looks at
/// the page map (one lookup).
pub const PROMOTE_MIN: usize = 16 << 10;

/// `realloc` keeps a shrinking class object in its slot only at sizes over
/// this (4 KiB; see [`stays_in_class`]), so the sized frees of larger sizes
/// ask the page map for the object's class, and frees of up to 4 KiB — most
/// frees, and the only ones the fast path serves — trust their layout and
/// need no lookup. Below 4 KiB the copy a shrink saves is small: in the
/// `churn-32k` bench model, the rule from 1 KiB up would save 27 % of the
/// bytes `realloc` copies, from 4 KiB up 25 %.
pub const SHRINK_MIN: usize = 4 << 10;

/// Whether `realloc` to `new_size` (sorting as `new`) keeps an object of class
/// `c` where it is: the new size sorts to the same class, or — the
/// **shrink-in-place** rule, mimalloc's — it is over [`SHRINK_MIN`], fits the
/// class and uses at least half of it. A sized free of such an object finds
/// its class through the page map (sizes over `SHRINK_MIN` always do), so the
/// object's layout may name a smaller class than its slot. Keeping the
/// object saves the copy (most of the cost of `realloc` between 4 and
/// 32 KiB), and wastes at most what a class twice as coarse would.
pub const fn stays_in_class(g: &Geometry, c: SizeClass, new_size: usize, new: ObjectKind) -> bool {
    match new {
        ObjectKind::Small(b) => {
            b.index() == c.index()
                || (new_size > SHRINK_MIN && new_size <= g.size(c) && new_size >= g.size(c) / 2)
        }
        _ => false,
    }
}

/// Pages of a promoted object of class `c`: its class size, rounded up to
/// whole pages, so that every size of the class fits in place.
fn promoted_pages(g: &Geometry, c: SizeClass) -> Option<Pages> {
    large_pages(g.size(c), g.page())
}

impl<S: PageSource, C: Cpu> Heap<S, C> {
    pub(super) fn alloc_large(&self, size: usize, align: usize) -> Option<(NonNull<u8>, bool)> {
        if S::SMALL_ARENAS {
            // The set-up's metadata comes from the source before the first
            // arena takes the rest of the region.
            self.caches()?;
        }
        self.decay_tick(true);
        // (The page heap's lock is released at the end of this statement.)
        let first = self
            .pages
            .lock()
            .alloc_large(&self.source, &self.map, size, align);
        let s = match first {
            Some(s) => s,
            None => {
                // Out of memory: cached objects may make whole spans free,
                // if the heap is large enough to hold the request at all, or
                // whole arenas, whose address space a new one can take.
                let (sys, short) = {
                    let h = self.pages.lock();
                    (h.stats(S::PAGE).sys, h.address_short())
                };
                if size.saturating_add(align) as u64 > sys && !short {
                    return None;
                }
                self.drain_caches(&self.below());
                self.pages
                    .lock()
                    .alloc_large(&self.source, &self.map, size, align)?
            }
        };
        // SAFETY: a fresh large span, ours.
        let (start, needzero) = unsafe { ((*s.as_ptr()).start, (*s.as_ptr()).needzero) };
        NonNull::new(start.as_ptr()).map(|p| (p, needzero))
    }

    /// The live large span that starts at `p`; panics with the address otherwise.
    pub(super) fn large_span(&self, p: *mut u8) -> NonNull<Span> {
        let s = self.map.lookup::<S>(Addr::of(p));
        // SAFETY: non-null page-map entries are live spans.
        match unsafe { s.as_ref() } {
            Some(span) if span.state == SpanState::Large && span.start == Addr::of(p) => NonNull::from(span),
            Some(span) if span.state == SpanState::Idle => panic!(
                "tieralloc: double free of large object {p:p} (span {:#x}, {} pages, idle in the large-span cache)",
                span.start, span.npages()
            ),
            Some(span) => panic!(
                "tieralloc: free of {p:p}: not the start of a large object (span {:#x}, {:?}, class {})",
                span.start,
                span.state,
                span.class.index()
            ),
            None => panic!("tieralloc: free of {p:p}: not a live object of this heap (double free or foreign pointer)"),
        }
    }

    pub(super) fn free_large(&self, p: *mut u8) {
        let s = self.large_span(p);
        {
            let mut h = self.pages.lock();
            // SAFETY: the caller owned the object; the span is live and large.
            unsafe { h.free_large(&self.source, s) };
        }
        self.decay_after_free();
    }

    /// Resizes in place when the class does not change, when a class object
    /// shrinks within its slot ([`stays_in_class`]), or when an object with a
    /// span of its own can shrink or grow its pages into free neighbours;
    /// otherwise moves. An object that grows past [`PROMOTE_MIN`] moves to a
    /// span of its own (it is *promoted*), so that later growth can happen in
    /// place instead of copying at every class boundary.
    ///
    /// # Safety
    /// As [`GlobalAlloc::realloc`](core::alloc::GlobalAlloc::realloc).
    pub unsafe fn reallocate(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if C::GUARDS_OPERATIONS {
            if let Some(f) = self.fine_ready() {
                let (old, align) = (layout.size(), layout.align());
                let r = self.cpu().operation(|| {
                    f.lock()
                        .realloc(&self.source, p, Some(old), new_size, align)
                });
                return r.unwrap_or_else(|why| self.fine_refused(p, why));
            }
            // SAFETY: forwarded from the caller.
            return self
                .cpu()
                .operation(|| unsafe { self.reallocate_unguarded(p, layout, new_size) });
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.reallocate_unguarded(p, layout, new_size) }
    }

    /// The operation itself, inside the caller's [`Cpu::operation`] if any.
    #[inline(always)]
    unsafe fn reallocate_unguarded(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (old_size, align) = (layout.size(), layout.align());
        if let Some(f) = self.fine() {
            let r = f
                .lock()
                .realloc(&self.source, p, Some(old_size), new_size, align);
            return r.unwrap_or_else(|why| self.fine_refused(p, why));
        }
        let new = self.kind(new_size, align);
        // What the object is: over 4 KiB the page map says (its slot's class,
        // or a span of its own: large or promoted).
        let (old, own) = match self.kind(old_size, align) {
            ObjectKind::Small(c) if Self::frees_by_map(old_size) => match self.class_of(p) {
                Some(slot) => (ObjectKind::Small(slot), None),
                None => (ObjectKind::Small(c), Some(self.large_span(p))),
            },
            ObjectKind::Large => (ObjectKind::Large, Some(self.large_span(p))),
            k => (k, None),
        };
        match (old, own) {
            (ObjectKind::Small(a), None) if stays_in_class(S::GEOMETRY, a, new_size, new) => {
                return p
            }
            // A promoted object's span holds its whole class (see `promoted_pages`).
            (ObjectKind::Small(a), Some(_)) if new == ObjectKind::Small(a) => return p,
            _ => {}
        }
        // SAFETY: forwarded from the caller; `old` and `own` describe `p`.
        unsafe { self.resize_or_move(p, old_size, old, own, new_size, new, align) }
    }

    /// Resizes `p` without its layout (C's `realloc`), finding what it is
    /// through the page map as [`Heap::deallocate_unsized`] does: a class
    /// object (old size: its class size) or an object with a span of its own
    /// (its span's bytes). Otherwise as [`Heap::reallocate`], with the new
    /// layout `(new_size, align)`.
    ///
    /// # Safety
    /// `p` is a live, non-tiny object of this heap; `(new_size, align)` is a
    /// valid layout. On success `p` must not be used again.
    pub unsafe fn reallocate_unsized(&self, p: *mut u8, new_size: usize, align: usize) -> *mut u8 {
        if C::GUARDS_OPERATIONS {
            // SAFETY: forwarded from the caller.
            return self
                .cpu()
                .operation(|| unsafe { self.reallocate_unsized_unguarded(p, new_size, align) });
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.reallocate_unsized_unguarded(p, new_size, align) }
    }

    /// The operation itself, inside the caller's [`Cpu::operation`] if any.
    #[inline(always)]
    unsafe fn reallocate_unsized_unguarded(
        &self,
        p: *mut u8,
        new_size: usize,
        align: usize,
    ) -> *mut u8 {
        if let Some(f) = self.fine() {
            let r = f.lock().realloc(&self.source, p, None, new_size, align);
            return r.unwrap_or_else(|why| self.fine_refused(p, why));
        }
        let new = self.kind(new_size, align);
        // SAFETY: non-null page-map entries are live spans.
        match unsafe { self.map.lookup::<S>(Addr::of(p)).as_ref() } {
            Some(span) if span.state == SpanState::Small => {
                let c = span.class;
                if stays_in_class(S::GEOMETRY, c, new_size, new) {
                    return p;
                }
                // SAFETY: the caller's live object of class `c`.
                unsafe {
                    self.resize_or_move(
                        p,
                        S::GEOMETRY.size(c),
                        ObjectKind::Small(c),
                        None,
                        new_size,
                        new,
                        align,
                    )
                }
            }
            _ => {
                // A span of its own, or not an object (reported here).
                let s = self.large_span(p);
                // SAFETY: a live large span (checked), the caller's.
                let bytes = unsafe { (*s.as_ptr()).npages() }.bytes(S::PAGE);
                // SAFETY: the caller's object, with its span.
                unsafe {
                    self.resize_or_move(p, bytes, ObjectKind::Large, Some(s), new_size, new, align)
                }
            }
        }
    }

    /// The common part of `realloc`: `p` holds `old_size` bytes, sorts as
    /// `old`, and has span `own` to itself if it is large or promoted.
    ///
    /// # Safety
    /// As [`GlobalAlloc::realloc`](core::alloc::GlobalAlloc::realloc), with `old`/`own` true of `p` and `new`
    /// sorting `(new_size, align)`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn resize_or_move(
        &self,
        p: *mut u8,
        old_size: usize,
        old: ObjectKind,
        own: Option<NonNull<Span>>,
        new_size: usize,
        new: ObjectKind,
        align: usize,
    ) -> *mut u8 {
        // Pages for the new size if it may keep a span of its own.
        let pages = match new {
            ObjectKind::Large => large_pages(new_size, S::PAGE),
            ObjectKind::Small(c) if new_size > PROMOTE_MIN => promoted_pages(S::GEOMETRY, c),
            _ => None,
        };
        if let (Some(s), Some(npages)) = (own, pages) {
            // SAFETY: the caller owns the object, so its span is live and ours.
            if unsafe { self.pages.lock().resize_large(&self.source, s, npages) } {
                if npages.bytes(S::PAGE) < old_size {
                    // The tail went back to the page heap.
                    self.decay_after_free();
                }
                return p;
            }
        }
        // `Layout::from_size_align(new_size, align)` must hold (GlobalAlloc's
        // contract); an impossible size is refused, never allocated.
        if new_size > isize::MAX as usize - (align - 1) {
            return null_mut();
        }
        // Each kind computed once: no `allocate`/`deallocate` re-sorting.
        let q = match new {
            ObjectKind::Tiny => self.alloc_tiny(new_size, align),
            // Growing past the threshold by at most twice, as buffers grow
            // (a doubling `Vec`, appends): promote (or, short of pages, take a
            // class object if central still has one). A jump from a much
            // smaller object is not taken for a growing buffer.
            ObjectKind::Small(c)
                if new_size > old_size && new_size / 2 <= old_size && pages.is_some() =>
            {
                let s = (self.pages.lock()).alloc_promoted(
                    &self.source,
                    &self.map,
                    S::GEOMETRY.size(c),
                    align,
                );
                match s {
                    // SAFETY: a fresh large span, ours.
                    Some(s) => unsafe { (*s.as_ptr()).start.as_ptr() },
                    None => self.alloc_small(c),
                }
            }
            ObjectKind::Small(c) => self.alloc_small(c),
            ObjectKind::Large => self
                .alloc_large(new_size, align)
                .map_or(null_mut(), |(q, _)| q.as_ptr()),
        };
        if !q.is_null() {
            // SAFETY: both blocks are live, distinct, and at least this long;
            // `p` is the caller's object of kind `old`.
            unsafe {
                core::ptr::copy_nonoverlapping(p, q, old_size.min(new_size));
            }
            match (own, old) {
                (Some(s), _) => {
                    // SAFETY: the caller hands the object over; its span is ours.
                    unsafe { self.pages.lock().free_large(&self.source, s) };
                    self.decay_after_free();
                }
                (None, ObjectKind::Tiny) => self.free_tiny(p),
                (None, ObjectKind::Small(c)) => self.free_small(p, c),
                (None, ObjectKind::Large) => unreachable!("a large object has its own span"),
            }
        }
        q
    }
}
