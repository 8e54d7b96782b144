//! [`FailingSource`]: out-of-memory injection around any [`PageSource`].
//!
//! The wrapper forwards every method to the inner source and has the same
//! constants, but keeps a **budget**: the number of bytes still allowed to
//! enter the Ready state.
//!
//! | Method    | Transition          | Budget                                                      |
//! |-----------|---------------------|-------------------------------------------------------------|
//! | `reserve` | None → Reserved     | not limited                                                 |
//! | `commit`  | Reserved → Prepared | not limited                                                 |
//! | `ready`   | Prepared → Ready    | takes `bytes`; `Err(Exhausted)` (taking nothing, range stays Prepared) when fewer remain |
//! | `alloc`   | None → Ready        | takes `bytes` rounded up to `PAGE_SIZE`; `None` (taking nothing) when fewer remain |
//! | `release` | Ready → Prepared    | gives `bytes` back (refund), so a heap that released memory can make it Ready again |
//! | `hugepage`| (hint)              | none                                                        |
//! | `fault`   | → Reserved          | none: the range may have been Ready or only Prepared, and the wrapper cannot tell |
//! | `free`    | any → None          | none, for the same reason                                   |
//!
//! So the budget counts Ready transitions minus releases. A test that wants
//! the bytes of faulted or freed Ready memory back calls
//! [`FailingSource::set_budget`]. A failure of the inner source also refunds
//! what was taken. The budget is one atomic: no lock, no allocation.

use crate::sync::atomic::{AtomicUsize, Ordering};
use core::ptr::NonNull;

use super::{Exhausted, PageSource};

/// A [`PageSource`] that fails once a budget of Ready bytes is spent.
#[derive(Debug)]
pub struct FailingSource<S: PageSource> {
    inner: S,
    /// Bytes still allowed to become Ready.
    budget: AtomicUsize,
}

impl<S: PageSource> FailingSource<S> {
    /// Wraps `inner`, allowing `budget_bytes` bytes to become Ready
    /// (`usize::MAX`: effectively unlimited).
    pub const fn new(inner: S, budget_bytes: usize) -> Self {
        FailingSource {
            inner,
            budget: AtomicUsize::new(budget_bytes),
        }
    }

    /// Sets the bytes still allowed to become Ready.
    pub fn set_budget(&self, bytes: usize) {
        self.budget.store(bytes, Ordering::SeqCst);
    }

    /// Bytes still allowed to become Ready.
    pub fn budget(&self) -> usize {
        self.budget.load(Ordering::SeqCst)
    }

    /// The wrapped source.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Unwraps the source.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Takes `bytes` from the budget, all or nothing.
    fn take(&self, bytes: usize) -> bool {
        self.budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(bytes))
            .is_ok()
    }

    /// Gives `bytes` back to the budget (saturating).
    fn refund(&self, bytes: usize) {
        let _ = self
            .budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                Some(b.saturating_add(bytes))
            });
    }
}

// SAFETY: every method forwards to `inner` (a `PageSource`) with the same
// arguments, or fails without touching it, so `inner`'s promises carry over;
// the constants are `inner`'s; the budget is an atomic, so nothing allocates
// and `&self` works from any thread.
unsafe impl<S: PageSource> PageSource for FailingSource<S> {
    const PAGE_SIZE: usize = S::PAGE_SIZE;
    const ARENA_BYTES: usize = S::ARENA_BYTES;
    const ZEROED: bool = S::ZEROED;
    const CAN_RELEASE: bool = S::CAN_RELEASE;
    const CAN_UNRESERVE: bool = S::CAN_UNRESERVE;
    const CLOCK: bool = S::CLOCK;

    fn bound(&self) -> Option<usize> {
        self.inner.bound()
    }

    fn now_ms(&self) -> u64 {
        self.inner.now_ms()
    }

    /// None → Reserved, not limited.
    fn reserve(&self, bytes: usize, align: usize) -> Option<NonNull<u8>> {
        self.inner.reserve(bytes, align)
    }

    /// Reserved → Prepared, not limited.
    unsafe fn commit(&self, addr: NonNull<u8>, bytes: usize) -> Result<(), Exhausted> {
        // SAFETY: forwarded with the caller's precondition (range Reserved).
        unsafe { self.inner.commit(addr, bytes) }
    }

    /// Prepared → Ready, taking `bytes` of budget.
    unsafe fn ready(&self, addr: NonNull<u8>, bytes: usize) -> Result<(), Exhausted> {
        if !self.take(bytes) {
            return Err(Exhausted);
        }
        // SAFETY: forwarded with the caller's precondition (range Prepared).
        let r = unsafe { self.inner.ready(addr, bytes) };
        if r.is_err() {
            self.refund(bytes);
        }
        r
    }

    /// Ready → Prepared, refunding `bytes`.
    unsafe fn release(&self, addr: NonNull<u8>, bytes: usize) {
        // SAFETY: forwarded with the caller's precondition (range Ready, unused).
        unsafe { self.inner.release(addr, bytes) };
        self.refund(bytes);
    }

    unsafe fn hugepage(&self, addr: NonNull<u8>, bytes: usize) {
        // SAFETY: forwarded with the caller's precondition.
        unsafe { self.inner.hugepage(addr, bytes) }
    }

    /// → Reserved, no refund.
    unsafe fn fault(&self, addr: NonNull<u8>, bytes: usize) {
        // SAFETY: forwarded with the caller's precondition.
        unsafe { self.inner.fault(addr, bytes) }
    }

    /// → None, no refund.
    unsafe fn free(&self, addr: NonNull<u8>, bytes: usize) {
        // SAFETY: forwarded with the caller's precondition.
        unsafe { self.inner.free(addr, bytes) }
    }

    /// None → Ready through the inner source's `alloc`, taking `bytes`
    /// rounded up to `PAGE_SIZE`.
    fn alloc(&self, bytes: usize) -> Option<NonNull<u8>> {
        let rounded = bytes.checked_next_multiple_of(Self::PAGE_SIZE)?;
        if !self.take(rounded) {
            return None;
        }
        let p = self.inner.alloc(bytes);
        if p.is_none() {
            self.refund(rounded);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The budget rules, against any inner source whose memory is usable.
    fn budget_rules<S: PageSource>(inner: S) {
        let ps = S::PAGE_SIZE;
        let src = FailingSource::new(inner, 4 * ps);
        assert_eq!(src.budget(), 4 * ps);

        // Reserve and commit are free of charge, even past the budget.
        let bytes = 8 * ps;
        let p = src.reserve(bytes, ps).unwrap();
        // SAFETY: `p..p+bytes` was just reserved by `src` and is Reserved.
        unsafe { src.commit(p, bytes).unwrap() };
        assert_eq!(src.budget(), 4 * ps);

        // Ready takes budget; too large a request takes nothing.
        // SAFETY: page 3 of the 8-page reservation: in bounds, and non-null as `p` is.
        let second = unsafe { NonNull::new_unchecked(p.as_ptr().add(3 * ps)) };
        // SAFETY: all 8 pages were committed (Prepared) and each `ready` gets pages not yet
        // Ready; only pages 0..4, which are Ready by then, are written.
        unsafe {
            src.ready(p, 3 * ps).unwrap();
            assert_eq!(src.budget(), ps);
            assert_eq!(src.ready(second, 2 * ps), Err(Exhausted));
            assert_eq!(src.budget(), ps);
            src.ready(second, ps).unwrap();
            assert_eq!(src.budget(), 0);
            assert_eq!(
                src.ready(NonNull::new_unchecked(p.as_ptr().add(4 * ps)), ps),
                Err(Exhausted)
            );
            p.as_ptr().write_bytes(0x42, 4 * ps);
        }

        // Release refunds, and the memory can be made Ready again.
        // SAFETY: pages 0..3 are Ready, untouched between `release` and `ready`; only Ready pages
        // are read and written.
        unsafe {
            src.release(p, 3 * ps);
            assert_eq!(src.budget(), 3 * ps);
            src.ready(p, 3 * ps).unwrap();
            assert_eq!(src.budget(), 0);
            if S::ZEROED {
                assert_eq!(*p.as_ptr(), 0);
            }
            p.as_ptr().write_bytes(1, 3 * ps);
        }

        // alloc takes whole pages, fails without taking anything.
        assert!(src.alloc(1).is_none());
        src.set_budget(2 * ps);
        assert!(src.alloc(2 * ps + 1).is_none());
        assert_eq!(src.budget(), 2 * ps);
        let a = src.alloc(ps + 1).unwrap();
        assert_eq!(src.budget(), 0);
        // SAFETY: `a` is Ready from `alloc(ps + 1)`, which rounds up to 2 pages.
        unsafe { a.as_ptr().write_bytes(7, 2 * ps) };

        // Free and fault do not refund.
        // SAFETY: page 3 (`second`) is Ready, and `a` and `p` are exactly the ranges `alloc` and
        // `reserve` returned; none of them is accessed again.
        unsafe {
            src.fault(second, ps);
            src.free(a, 2 * ps);
            src.free(p, bytes);
        }
        assert_eq!(src.budget(), 0);
        src.set_budget(usize::MAX);
        // SAFETY: `q` is a Ready page just allocated, never accessed; `free` gets exactly it.
        unsafe {
            let q = src.alloc(ps).unwrap();
            src.release(q, ps); // saturating refund
            assert_eq!(src.budget(), usize::MAX);
            src.free(q, ps);
        }
        assert_eq!(FailingSource::<S>::PAGE_SIZE, S::PAGE_SIZE);
    }

    /// A failure of the inner source refunds what was taken.
    fn inner_failure_refunds<S: PageSource>(inner: S) {
        // More than any address space (or test region) holds.
        let src = FailingSource::new(inner, usize::MAX);
        assert!(src.alloc((usize::MAX / 4 * 3 + 1) & !0xffff).is_none());
        assert_eq!(src.budget(), usize::MAX);
    }

    #[test]
    fn with_region_source() {
        use super::super::RegionSource;
        use std::alloc::{alloc, dealloc, Layout};
        let layout = Layout::from_size_align(64 * 4096, 4096).unwrap();
        // SAFETY: the layout has a non-zero size.
        let buf = unsafe { alloc(layout) };
        assert!(!buf.is_null());
        // SAFETY: `buf` is a live, writable 64-page allocation, reached only through this source.
        budget_rules(unsafe { RegionSource::new(buf, 64 * 4096) });
        // SAFETY: as above; the previous source over `buf` was dropped inside `budget_rules`.
        inner_failure_refunds(unsafe { RegionSource::new(buf, 64 * 4096) });
        // The region is too small for 32 pages: the inner failure refunds too.
        // SAFETY: the first 16 pages of `buf`; the earlier sources over it are gone.
        let src = FailingSource::new(unsafe { RegionSource::new(buf, 16 * 4096) }, 1 << 20);
        assert!(src.alloc(32 * 4096).is_none());
        assert_eq!(src.budget(), 1 << 20);
        // SAFETY: `buf` came from `alloc(layout)`, and `src` is not used again.
        unsafe { dealloc(buf, layout) };
    }

    #[cfg(feature = "linux")]
    #[test]
    fn with_mmap_source() {
        budget_rules(super::super::MmapSource::new());
        inner_failure_refunds(super::super::MmapSource::new());
    }

    #[test]
    fn const_and_static() {
        use super::super::RegionSource;
        static SRC: FailingSource<RegionSource> = FailingSource::new(RegionSource::empty(), 0);
        fn assert_sync<T: Send + Sync>(_: &T) {}
        assert_sync(&SRC);
        assert_eq!(SRC.budget(), 0);
        assert!(SRC.alloc(4096).is_none());
    }
}
