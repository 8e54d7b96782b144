//! The tiny allocator (Go's, with live counts): requests under
//! [`TINY_SIZE`](crate::TINY_SIZE) bytes at alignment at most 8 are
//! bump-allocated in the CPU's current 64-byte block ([`TINY_BLOCK`], one
//! cache line, so no two CPUs carve in one line). See `lib.rs` (allocation
//! step 5, free step 5) and [`super`].
//!
//! A block is an object of the geometry's tiny class ([`Geometry::tiny_class`](crate::Geometry::tiny_class)). While it is some CPU's current
//! block its live count holds [`TINY_BIAS`]; each free subtracts 1 and
//! retiring the block subtracts `TINY_BIAS - n` (`n` = sub-objects carved),
//! so the count reaches 0 exactly when the block is no longer current and
//! every sub-object is dead; then the block goes back as a class object.
//!
//! The CPU's tiny state is one word ([`Tiny`]); a carve reads it and commits
//! the new word only if the word and the CPU are unchanged.

use core::ptr::null_mut;

use crate::percpu::{Caches, Cpu, Tiny, TinyEvent};
use crate::source::PageSource;
use crate::span::{Span, SpanState};
use crate::sync::atomic::{AtomicU8, Ordering};
use crate::units::Addr;
use crate::{TINY_BLOCK, TINY_ROOM};

use super::Heap;

/// Bias added to a tiny block's live count while a CPU is still carving from
/// it (more than the 64 sub-objects a block can hold).
pub(crate) const TINY_BIAS: u8 = 128;
const _: () = assert!(TINY_BIAS as usize > TINY_BLOCK);

/// The live count of tiny block `block`: its last byte, past the
/// [`TINY_ROOM`] bytes its tiny objects use.
///
/// # Safety
/// `block` is a live object of the tiny class, used as a tiny block (or
/// about to be: the caller stores its first count), for as long as the
/// count is used.
#[inline]
unsafe fn tiny_counter<'a>(block: *mut u8) -> &'a AtomicU8 {
    // SAFETY: the caller's promise: byte `TINY_ROOM` of the block is ours,
    // and while the block is a tiny block no tiny object covers it and it
    // is only accessed atomically.
    unsafe { &*block.add(TINY_ROOM).cast::<AtomicU8>() }
}

impl<S: PageSource, C: Cpu> Heap<S, C> {
    /// Allocates a tiny object: the carve fast path, else a new block.
    #[inline(always)]
    pub(super) fn alloc_tiny(&self, size: usize, align: usize) -> *mut u8 {
        let size = size.max(1);
        // Go's alignment rule, raised to the layout's.
        let a = if size.is_multiple_of(8) {
            8
        } else if size.is_multiple_of(4) {
            4
        } else if size.is_multiple_of(2) {
            2
        } else {
            1
        }
        .max(align);
        if let Some(f) = self.slabs.fast() {
            let p = f.carve(size, a);
            if !p.is_null() {
                return p;
            }
        }
        self.alloc_tiny_slow(size, a)
    }

    #[cfg_attr(rseq, inline(never))]
    fn alloc_tiny_slow(&self, size: usize, a: usize) -> *mut u8 {
        let Some(s) = self.caches() else {
            return null_mut();
        };
        s.enroll();
        // In rseq mode `alloc_tiny` has just tried this carve.
        if !s.uses_rseq() {
            let p = s.carve_tiny(size, a);
            if !p.is_null() {
                return p;
            }
        }
        self.alloc_tiny_block(s, size)
    }

    /// A new block for a sub-object of `size` bytes: it becomes the CPU's
    /// current block unless that one has at least as much room left (then
    /// the sub-object gets a block of its own).
    #[cold]
    #[inline(never)]
    fn alloc_tiny_block(&self, s: Caches<'_, C, S>, size: usize) -> *mut u8 {
        let b = self.alloc_small(S::GEOMETRY.tiny_class);
        if b.is_null() {
            return b;
        }
        s.count_event(TinyEvent::BlocksTaken, 1);
        #[cfg(feature = "checks")]
        self.mark_tiny_block(b, true);
        // SAFETY: `b` is a fresh tiny-class object, ours: a tiny block now.
        let counter = unsafe { tiny_counter(b) };
        while let Some((cpu, t)) = s.tiny() {
            if t.stopped() || (t.block != 0 && size >= t.off) {
                break; // being drained, or the current block has at least as much room left: keep it
            }
            counter.store(TINY_BIAS, Ordering::Release);
            let new = Tiny {
                block: b as usize,
                off: size,
                n: 1,
            };
            if s.replace_tiny(cpu, t, new) {
                if t.block != 0 {
                    self.retire_tiny(s, t);
                }
                return b;
            }
        }
        // A block of its own for this one sub-object.
        counter.store(1, Ordering::Release);
        s.count_event(TinyEvent::MallocsRetired, 1);
        b
    }

    /// Stops carving from a block that was some CPU's current tiny block.
    pub(super) fn retire_tiny(&self, s: Caches<'_, C, S>, t: Tiny) {
        s.count_event(TinyEvent::MallocsRetired, t.n as u64);
        let block = Addr::new(t.block);
        let bias = TINY_BIAS - t.n as u8;
        // SAFETY: the block is live: we hold its bias.
        let before = unsafe { tiny_counter(block.as_ptr()) }.fetch_sub(bias, Ordering::AcqRel);
        if before == bias {
            self.free_tiny_block(s, block.as_ptr());
        }
    }

    fn free_tiny_block(&self, s: Caches<'_, C, S>, b: *mut u8) {
        #[cfg(feature = "checks")]
        self.mark_tiny_block(b, false);
        s.count_event(TinyEvent::BlocksFreed, 1);
        self.free_small(b, S::GEOMETRY.tiny_class);
    }

    /// Frees a tiny object: its block's live count goes down by one; the last
    /// free gives the block back.
    pub(super) fn free_tiny(&self, p: *mut u8) {
        // SAFETY: non-null page-map entries are live spans.
        let span = match unsafe { self.map.lookup::<S>(Addr::of(p)).as_ref() } {
            Some(span) if span.state == SpanState::Small && span.class == S::GEOMETRY.tiny_class => span,
            _ => panic!("tieralloc: free of tiny object {p:p}: not a tiny object of this heap (foreign pointer, wrong layout, or double free)"),
        };
        let idx = span.index_of(Addr::of(p)).0;
        // With `checks`, a slot that is no tiny block now (a block freed,
        // an object of the tiny class handed out whole) is reported before
        // its last byte, which is then not a count, is touched.
        #[cfg(feature = "checks")]
        if span.tiny_word(idx / 64).load(Ordering::Acquire) & (1 << (idx % 64)) == 0 {
            self.report_tiny(p, span, idx, 0);
        }
        // SAFETY: `p` lies in object `idx` of a live tiny-class span; if it
        // is a live tiny object, that object is a tiny block. If it is not
        // (a double free, a wrong layout; without `checks`), the byte is
        // still the span's, and the check below undoes the change and
        // reports when it can tell.
        let counter = unsafe { tiny_counter(span.object(idx)) };
        let before = counter.fetch_sub(1, Ordering::AcqRel);
        if before == 0 || before > TINY_BIAS {
            // Undo, so the report leaves the count as it was.
            counter.fetch_add(1, Ordering::AcqRel);
            self.report_tiny(p, span, idx, before);
        }
        let Some(s) = self.slabs.get::<S>() else {
            unreachable!("a tiny object exists, so the slabs were set up");
        };
        s.count_event(TinyEvent::Frees, 1);
        if before == 1 {
            self.free_tiny_block(s, span.object(idx));
        }
    }

    /// Panics: a tiny free of `p`, in object `idx` of `span`, whose live
    /// count read `before`, found no live tiny object there.
    #[cold]
    fn report_tiny(&self, p: *mut u8, span: &Span, idx: usize, before: u8) -> ! {
        panic!(
            "tieralloc: double free of tiny object {p:p}, or a tiny-layout free of an object that is not tiny (block {:p} of span {:#x}, class {}, live count was {before})",
            span.object(idx),
            span.start,
            S::GEOMETRY.tiny_class.index()
        )
    }

    /// With `checks`: records whether tiny-class object `b` is a tiny block.
    #[cfg(feature = "checks")]
    fn mark_tiny_block(&self, b: *mut u8, on: bool) {
        // SAFETY: `b` is a live object of a tiny-class span.
        let span = unsafe { &*self.map.lookup::<S>(Addr::of(b)) };
        let idx = span.index_of(Addr::of(b)).0;
        let w = span.tiny_word(idx / 64);
        if on {
            w.fetch_or(1 << (idx % 64), Ordering::AcqRel);
        } else {
            w.fetch_and(!(1 << (idx % 64)), Ordering::AcqRel);
        }
    }
}
