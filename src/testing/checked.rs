//! [`CheckedSource`]: a [`PageSource`] that forwards to another one,
//! observes every call, and checks it against the state machine of
//! [`crate::source`] for every OS page — the test harness of any source, and
//! of any tier above one.
//!
//! | call        | checked before forwarding                                  | state after |
//! |-------------|------------------------------------------------------------|-------------|
//! | `reserve`   | length a non-zero multiple of `PAGE_SIZE`, alignment a power of two ≥ it; the result aligned and overlapping no live range | Reserved |
//! | `commit`    | inside one range, every page Reserved                      | Prepared (on success) |
//! | `ready`     | inside one range, every page Prepared                      | Ready (on success) |
//! | `release`   | inside one range, every page Ready                         | Prepared |
//! | `hugepage`  | inside one range, every page Ready or Prepared             | unchanged |
//! | `fault`     | inside one range, every page Ready or Prepared             | Reserved |
//! | `free`      | exactly a range `reserve` or `alloc` returned              | gone |
//! | `alloc`     | (forwarded whole to the inner source's `alloc`)            | Ready |
//!
//! With [`CheckedSource::set_address_limit`], `reserve` and `alloc` fail
//! (return `None`) when the bytes of live ranges would exceed a limit, as
//! `mmap` does under `RLIMIT_AS`; `free` gives the bytes back.
//!
//! A violation panics with the call, the range and the offending page. Every
//! call is also logged ([`CheckedSource::take_log`]) and counted, and the
//! state of every page can be asked ([`CheckedSource::assert_ready`],
//! [`CheckedSource::arena_bytes`]).
//!
//! The bookkeeping lives in a `std` mutex and `Vec`s, from the process's
//! global allocator: use it under a heap that is *not* the global allocator
//! (the integration tests use the system allocator), or it would re-enter the
//! heap it serves.

use core::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::vec::Vec;

use crate::source::{Exhausted, PageSource};

/// The state of one OS page of a range the source handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageState {
    /// Address space only; any access faults.
    Reserved,
    /// The heap's, contents undefined; not to be touched.
    Prepared,
    /// Usable memory.
    Ready,
}

/// One call to the source, as `(address, bytes)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// `reserve` returned this range.
    Reserve(usize, usize),
    /// `commit` succeeded.
    Commit(usize, usize),
    /// `ready` succeeded.
    Ready(usize, usize),
    /// `release`.
    Release(usize, usize),
    /// `hugepage`.
    Hugepage(usize, usize),
    /// `fault`.
    Fault(usize, usize),
    /// `free`.
    Free(usize, usize),
    /// `alloc` returned this range (rounded up to pages).
    Alloc(usize, usize),
}

/// Calls made so far, by kind (successful ones; cumulative).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// `reserve`.
    pub reserve: usize,
    /// `commit`.
    pub commit: usize,
    /// `ready`.
    pub ready: usize,
    /// Bytes made Ready by `ready`.
    pub ready_bytes: usize,
    /// `release`.
    pub release: usize,
    /// Bytes released by `release`.
    pub released_bytes: usize,
    /// `fault`.
    pub fault: usize,
    /// `free`.
    pub free: usize,
    /// `alloc`.
    pub alloc: usize,
}

impl CallCounts {
    const ZERO: CallCounts = CallCounts {
        reserve: 0,
        commit: 0,
        ready: 0,
        ready_bytes: 0,
        release: 0,
        released_bytes: 0,
        fault: 0,
        free: 0,
        alloc: 0,
    };

    fn count(&mut self, c: &Call) {
        match c {
            Call::Reserve(..) => self.reserve += 1,
            Call::Commit(..) => self.commit += 1,
            Call::Ready(_, b) => {
                self.ready += 1;
                self.ready_bytes += b;
            }
            Call::Release(_, b) => {
                self.release += 1;
                self.released_bytes += b;
            }
            Call::Hugepage(..) => {}
            Call::Fault(..) => self.fault += 1,
            Call::Free(..) => self.free += 1,
            Call::Alloc(..) => self.alloc += 1,
        }
    }
}

struct Range {
    addr: usize,
    bytes: usize,
    /// What the inner source returned (differs from `addr..` when skewed).
    inner: (usize, usize),
    /// From `alloc` (metadata) rather than `reserve` (arenas).
    meta: bool,
    pages: Vec<PageState>,
}

struct State {
    ranges: Vec<Range>,
    log: Vec<Call>,
    counts: CallCounts,
    /// OS pages of arena (not metadata) ranges that are Prepared and Ready.
    arena_prepared: usize,
    arena_ready: usize,
}

impl State {
    fn record(&mut self, c: Call) {
        self.counts.count(&c);
        self.log.push(c);
    }
}

/// A checking, recording [`PageSource`] over `S` (see the module docs);
/// `ARENA` is its `ARENA_BYTES` (a multiple of `CHUNK_BYTES`, or any size
/// over a source of small arenas), so tests can
/// make the page heap grow in smaller steps than the inner source's.
///
/// With [`skewed`](CheckedSource::skewed), every reservation is aligned to
/// exactly the requested alignment and never to twice it (a valid, if
/// unlucky, source), so an arena is only as aligned as the heap asked for.
pub struct CheckedSource<S: PageSource, const ARENA: usize> {
    inner: S,
    skew: bool,
    /// A clock set by the test ([`CheckedSource::set_now_ms`]); 0: the inner one.
    now: AtomicU64,
    /// Most bytes of live ranges ([`CheckedSource::set_address_limit`]).
    limit: AtomicUsize,
    /// Most bytes of the page map's window ([`CheckedSource::set_window_bytes`]).
    window: AtomicUsize,
    st: Mutex<State>,
}

impl<S: PageSource, const ARENA: usize> CheckedSource<S, ARENA> {
    const OS: usize = S::PAGE_SIZE;

    /// Checks and records the calls on `inner` (usable in a `static`).
    pub const fn new(inner: S) -> Self {
        Self::with_skew(inner, false)
    }

    /// As [`new`](Self::new), with reservations aligned to exactly what is asked.
    pub const fn skewed(inner: S) -> Self {
        Self::with_skew(inner, true)
    }

    const fn with_skew(inner: S, skew: bool) -> Self {
        const { assert!(ARENA > 0 && (S::SMALL_ARENAS || ARENA.is_multiple_of(crate::CHUNK_BYTES))) };
        CheckedSource {
            inner,
            skew,
            now: AtomicU64::new(0),
            limit: AtomicUsize::new(usize::MAX),
            window: AtomicUsize::new(usize::MAX),
            st: Mutex::new(State {
                ranges: Vec::new(),
                log: Vec::new(),
                counts: CallCounts::ZERO,
                arena_prepared: 0,
                arena_ready: 0,
            }),
        }
    }

    /// From now on the source's clock reads `ms` (non-zero), until set again:
    /// a test moves time by hand. Only a source whose inner one has a clock
    /// (`S::CLOCK`) is polled by the heap.
    pub fn set_now_ms(&self, ms: u64) {
        assert!(ms != 0, "the clock never reads 0");
        self.now.store(ms, Ordering::Relaxed);
    }

    /// The wrapped source.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// From now on `reserve` and `alloc` fail when the live ranges would
    /// come to more than `bytes` (an address-space limit; `usize::MAX`: none).
    pub fn set_address_limit(&self, bytes: usize) {
        self.limit.store(bytes, Ordering::Relaxed);
    }

    /// The page map's window is to be at most `bytes` (0: none), from the
    /// heap's first arena on: a test places arenas inside it and outside.
    /// Set before the heap's first arena.
    pub fn set_window_bytes(&self, bytes: usize) {
        self.window.store(bytes, Ordering::Relaxed);
    }

    /// Bytes of the live ranges (reservations and `alloc`s), what the
    /// address limit counts.
    pub fn mapped_bytes(&self) -> usize {
        let st = self.st.lock().unwrap();
        st.ranges.iter().map(|r| r.bytes).sum()
    }

    /// Whether `bytes` more would exceed the address limit.
    fn over_limit(&self, bytes: usize) -> bool {
        self.mapped_bytes().saturating_add(bytes) > self.limit.load(Ordering::Relaxed)
    }

    /// Checks the module preconditions and that every page of
    /// `addr..addr+bytes` lies in one range and is in one of `from`; returns
    /// the range's index.
    fn find(st: &State, what: &str, addr: usize, bytes: usize, from: &[PageState]) -> usize {
        assert!(
            addr.is_multiple_of(Self::OS),
            "{what}({addr:#x}, {bytes:#x}): address not page aligned"
        );
        assert!(
            bytes > 0 && bytes.is_multiple_of(Self::OS),
            "{what}({addr:#x}, {bytes:#x}): bad length"
        );
        let i = st
            .ranges
            .iter()
            .position(|r| r.addr <= addr && addr + bytes <= r.addr + r.bytes)
            .unwrap_or_else(|| {
                panic!("{what}({addr:#x}, {bytes:#x}): not inside one range of this source")
            });
        let r = &st.ranges[i];
        let lo = (addr - r.addr) / Self::OS;
        for (k, s) in r.pages[lo..lo + bytes / Self::OS].iter().enumerate() {
            assert!(
                from.contains(s),
                "{what}({addr:#x}, {bytes:#x}): page {:#x} is {s:?}, expected one of {from:?}",
                addr + k * Self::OS
            );
        }
        i
    }

    fn set(st: &mut State, i: usize, addr: usize, bytes: usize, to: PageState) {
        let r = &mut st.ranges[i];
        let lo = (addr - r.addr) / Self::OS;
        let (mut prepared, mut ready) = (st.arena_prepared as isize, st.arena_ready as isize);
        for s in &mut r.pages[lo..lo + bytes / Self::OS] {
            if !r.meta {
                for (state, d) in [(*s, -1), (to, 1)] {
                    match state {
                        PageState::Prepared => prepared += d,
                        PageState::Ready => ready += d,
                        PageState::Reserved => {}
                    }
                }
            }
            *s = to;
        }
        (st.arena_prepared, st.arena_ready) = (prepared as usize, ready as usize);
    }

    fn add(&self, r: Range, call: Call) {
        let mut st = self.st.lock().unwrap();
        for o in &st.ranges {
            assert!(
                r.addr + r.bytes <= o.addr || o.addr + o.bytes <= r.addr,
                "{call:?} overlaps live range {:#x}+{:#x}",
                o.addr,
                o.bytes
            );
        }
        st.ranges.push(r);
        st.record(call);
    }

    /// The calls made so far, by kind.
    pub fn calls(&self) -> CallCounts {
        self.st.lock().unwrap().counts
    }

    /// The calls since the last `take_log`.
    pub fn take_log(&self) -> Vec<Call> {
        core::mem::take(&mut self.st.lock().unwrap().log)
    }

    /// Bytes of arena (not metadata) pages that are (Prepared, Ready); arena
    /// pages are never Reserved while a heap holds them.
    pub fn arena_bytes(&self) -> (usize, usize) {
        let st = self.st.lock().unwrap();
        (st.arena_prepared * Self::OS, st.arena_ready * Self::OS)
    }

    /// Addresses of the Ready arena pages (OS pages).
    pub fn ready_pages(&self) -> Vec<usize> {
        let st = self.st.lock().unwrap();
        let mut v = Vec::new();
        for r in st.ranges.iter().filter(|r| !r.meta) {
            for (k, s) in r.pages.iter().enumerate() {
                if *s == PageState::Ready {
                    v.push(r.addr + k * Self::OS);
                }
            }
        }
        v
    }

    /// The reservations (arenas) live now, `(addr, bytes)`, by address.
    pub fn arenas(&self) -> Vec<(usize, usize)> {
        let st = self.st.lock().unwrap();
        let mut v: Vec<_> = st
            .ranges
            .iter()
            .filter(|r| !r.meta)
            .map(|r| (r.addr, r.bytes))
            .collect();
        v.sort();
        v
    }

    /// Panics unless every page of `addr..addr + bytes` is Ready (memory a
    /// caller may touch).
    pub fn assert_ready(&self, addr: usize, bytes: usize) {
        let st = self.st.lock().unwrap();
        Self::find(&st, "use", addr, bytes, &[PageState::Ready]);
    }

    /// The state of the OS page at `addr`, if it is in a live range.
    pub fn page_state(&self, addr: usize) -> Option<PageState> {
        let st = self.st.lock().unwrap();
        let r = st
            .ranges
            .iter()
            .find(|r| r.addr <= addr && addr < r.addr + r.bytes)?;
        Some(r.pages[(addr - r.addr) / Self::OS])
    }
}

// SAFETY: every method checks the caller's preconditions (panicking on a
// violation) and forwards to `S` with ranges inside what `S` returned, so
// `S`'s promises carry over; the constants are `S`'s except ARENA_BYTES, a
// multiple of CHUNK_BYTES (checked in `new`). The bookkeeping allocates from
// the global allocator, never from a heap built on this source (the module
// docs' condition of use).
unsafe impl<S: PageSource, const ARENA: usize> PageSource for CheckedSource<S, ARENA> {
    const PAGE_SIZE: usize = S::PAGE_SIZE;
    const ARENA_BYTES: usize = ARENA;
    const ZEROED: bool = S::ZEROED;
    const CAN_RELEASE: bool = S::CAN_RELEASE;
    const CAN_UNRESERVE: bool = S::CAN_UNRESERVE;
    const CLOCK: bool = S::CLOCK;
    const SMALL_ARENAS: bool = S::SMALL_ARENAS;
    const GEOMETRY: &'static crate::sizeclass::Geometry = S::GEOMETRY;
    const WINDOW_BYTES: usize = S::WINDOW_BYTES;

    fn bound(&self) -> Option<usize> {
        self.inner.bound()
    }

    fn largest_free(&self, align: usize) -> usize {
        if self.skew {
            self.inner.largest_free(2 * align).saturating_sub(align)
        } else {
            self.inner.largest_free(align)
        }
    }

    /// The inner source's, no larger than the address limit or the
    /// test's ([`CheckedSource::set_window_bytes`]).
    fn window_bytes(&self) -> usize {
        self.inner
            .window_bytes()
            .min(self.limit.load(Ordering::Relaxed))
            .min(self.window.load(Ordering::Relaxed))
    }

    fn now_ms(&self) -> u64 {
        match self.now.load(Ordering::Relaxed) {
            0 => self.inner.now_ms(),
            ms => ms,
        }
    }

    fn reserve(&self, bytes: usize, align: usize) -> Option<NonNull<u8>> {
        assert!(
            bytes > 0 && bytes.is_multiple_of(Self::OS),
            "reserve({bytes:#x}): bad length"
        );
        assert!(
            align.is_power_of_two() && align >= Self::OS,
            "reserve: bad alignment {align:#x}"
        );
        if self.over_limit(bytes) {
            return None;
        }
        let (addr, inner) = if self.skew {
            // Aligned to `align`, never to `2 * align`.
            let ib = bytes + align;
            let q = self.inner.reserve(ib, 2 * align)?.as_ptr() as usize;
            (q + align, (q, ib))
        } else {
            let q = self.inner.reserve(bytes, align)?.as_ptr() as usize;
            (q, (q, bytes))
        };
        assert_eq!(
            addr % align,
            0,
            "reserve: the inner source ignored the alignment"
        );
        self.add(
            Range {
                addr,
                bytes,
                inner,
                meta: false,
                pages: std::vec![PageState::Reserved; bytes / Self::OS],
            },
            Call::Reserve(addr, bytes),
        );
        NonNull::new(addr as *mut u8)
    }

    unsafe fn commit(&self, addr: NonNull<u8>, bytes: usize) -> Result<(), Exhausted> {
        let a = addr.as_ptr() as usize;
        let mut st = self.st.lock().unwrap();
        let i = Self::find(&st, "commit", a, bytes, &[PageState::Reserved]);
        // SAFETY: checked: a Reserved part of one of our reservations.
        unsafe { self.inner.commit(addr, bytes) }?;
        Self::set(&mut st, i, a, bytes, PageState::Prepared);
        st.record(Call::Commit(a, bytes));
        Ok(())
    }

    unsafe fn ready(&self, addr: NonNull<u8>, bytes: usize) -> Result<(), Exhausted> {
        let a = addr.as_ptr() as usize;
        let mut st = self.st.lock().unwrap();
        let i = Self::find(&st, "ready", a, bytes, &[PageState::Prepared]);
        // SAFETY: checked: Prepared.
        unsafe { self.inner.ready(addr, bytes) }?;
        Self::set(&mut st, i, a, bytes, PageState::Ready);
        st.record(Call::Ready(a, bytes));
        Ok(())
    }

    unsafe fn release(&self, addr: NonNull<u8>, bytes: usize) {
        let a = addr.as_ptr() as usize;
        let mut st = self.st.lock().unwrap();
        let i = Self::find(&st, "release", a, bytes, &[PageState::Ready]);
        // SAFETY: checked: Ready.
        unsafe { self.inner.release(addr, bytes) };
        Self::set(&mut st, i, a, bytes, PageState::Prepared);
        st.record(Call::Release(a, bytes));
    }

    unsafe fn hugepage(&self, addr: NonNull<u8>, bytes: usize) {
        let a = addr.as_ptr() as usize;
        let mut st = self.st.lock().unwrap();
        Self::find(
            &st,
            "hugepage",
            a,
            bytes,
            &[PageState::Ready, PageState::Prepared],
        );
        // SAFETY: checked: Ready or Prepared.
        unsafe { self.inner.hugepage(addr, bytes) };
        st.record(Call::Hugepage(a, bytes));
    }

    unsafe fn fault(&self, addr: NonNull<u8>, bytes: usize) {
        let a = addr.as_ptr() as usize;
        let mut st = self.st.lock().unwrap();
        let i = Self::find(
            &st,
            "fault",
            a,
            bytes,
            &[PageState::Ready, PageState::Prepared],
        );
        // SAFETY: checked: Ready or Prepared.
        unsafe { self.inner.fault(addr, bytes) };
        Self::set(&mut st, i, a, bytes, PageState::Reserved);
        st.record(Call::Fault(a, bytes));
    }

    unsafe fn free(&self, addr: NonNull<u8>, bytes: usize) {
        let a = addr.as_ptr() as usize;
        let mut st = self.st.lock().unwrap();
        let i = st
            .ranges
            .iter()
            .position(|r| r.addr == a && r.bytes == bytes)
            .unwrap_or_else(|| {
                panic!("free({a:#x}, {bytes:#x}): not exactly a range this source returned")
            });
        let r = st.ranges.swap_remove(i);
        if !r.meta {
            st.arena_prepared -= r
                .pages
                .iter()
                .filter(|&&s| s == PageState::Prepared)
                .count();
            st.arena_ready -= r.pages.iter().filter(|&&s| s == PageState::Ready).count();
        }
        // SAFETY: exactly what the inner source returned.
        unsafe {
            self.inner
                .free(NonNull::new_unchecked(r.inner.0 as *mut u8), r.inner.1)
        };
        st.record(Call::Free(a, bytes));
    }

    fn alloc(&self, bytes: usize) -> Option<NonNull<u8>> {
        if self.over_limit(bytes.next_multiple_of(Self::OS)) {
            return None;
        }
        let p = self.inner.alloc(bytes)?;
        let a = p.as_ptr() as usize;
        let b = bytes.next_multiple_of(Self::OS);
        self.add(
            Range {
                addr: a,
                bytes: b,
                inner: (a, b),
                meta: true,
                pages: std::vec![PageState::Ready; b / Self::OS],
            },
            Call::Alloc(a, b),
        );
        Some(p)
    }
}
