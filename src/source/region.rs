//! [`RegionSource`]: arenas carved out of one fixed byte region, for boards
//! without an MMU (or a kernel that hands the heap a physical window) and for
//! tests.
//!
//! The memory is always there, so the state machine is bookkeeping only:
//!
//! | Method     | Transition          | How                                                   |
//! |------------|---------------------|-------------------------------------------------------|
//! | `reserve`  | None → Reserved     | first fit (with alignment) in a sorted, coalesced list of free extents |
//! | `commit`   | Reserved → Prepared | nothing                                               |
//! | `ready`    | Prepared → Ready    | nothing                                               |
//! | `release`  | Ready → Prepared    | nothing (`CAN_RELEASE` is false)                      |
//! | `hugepage` | (hint)              | nothing                                               |
//! | `fault`    | → Reserved          | nothing: **a guard is not enforced** without an MMU; stray accesses to a faulted range go unnoticed |
//! | `free`     | any → None          | the range goes back to the free list, merged with its neighbours |
//! | `alloc`    | None → Ready        | the trait's default: `reserve` + `commit` + `ready`   |
//!
//! `ZEROED` is false: the region's contents are whatever was there, and a
//! range given back and reserved again keeps its old bytes.
//!
//! The free list is a fixed array of [`MAX_EXTENTS`] `[start, end)` extents
//! behind a spin lock; nothing allocates. Extents are kept sorted and merged,
//! so the list holds one entry per gap between live reservations: it can only
//! fill up with `MAX_EXTENTS` disjoint free holes. When it is full, `reserve`
//! skips a fit that would need one more entry, and `free` of a range that
//! touches no free extent forgets the range (it leaks, it is never handed out
//! twice).

use core::ptr::{self, NonNull};

use spin::Mutex;

use super::extents::Extents;
use super::{Exhausted, PageSource};

/// Capacity of the free-extent list.
pub const MAX_EXTENTS: usize = 64;

struct State {
    /// The region's base as given: every pointer handed out derives from it.
    base: *mut u8,
    len: usize,
    /// The extent list was built from `base`/`len` (a `const fn` constructor
    /// cannot look at addresses, so this happens on first use).
    init: bool,
    /// The free extents, as `PAGE_SIZE`-aligned absolute addresses inside the
    /// region.
    free: Extents<MAX_EXTENTS>,
}

// SAFETY: `base` is the only non-Send field. It points to a region the source
// owns exclusively (the contract of `RegionSource::new`/`set_region`), not to
// anything tied to the creating thread, and it is only used under the mutex.
unsafe impl Send for State {}

impl State {
    const fn new(base: *mut u8, len: usize) -> Self {
        State {
            base,
            len,
            init: false,
            free: Extents::new(),
        }
    }

    /// Builds the initial extent list: the `PAGE_SIZE`-aligned interior of the region.
    fn ensure_init(&mut self) {
        if self.init {
            return;
        }
        self.init = true;
        self.free = Extents::new();
        if self.base.is_null() || self.len == 0 {
            return;
        }
        let page = RegionSource::PAGE_SIZE;
        let addr = self.base as usize;
        let Some(first) = addr.checked_next_multiple_of(page) else {
            return;
        };
        let last = addr.saturating_add(self.len) & !(page - 1);
        if first < last {
            self.free.give_back(first, last);
        }
    }
}

/// A [`PageSource`] over one fixed byte region given at construction (or at
/// boot with [`RegionSource::set_region`]).
///
/// The region need not be aligned: only its `PAGE_SIZE`-aligned interior is
/// used. Pointers handed out are derived from the region's base pointer, so
/// they keep its provenance.
pub struct RegionSource {
    state: Mutex<State>,
}

impl RegionSource {
    /// A source with no memory: every `reserve` fails until
    /// [`set_region`](Self::set_region) gives it one. Usable in a `static`.
    pub const fn empty() -> Self {
        RegionSource {
            state: Mutex::new(State::new(ptr::null_mut(), 0)),
        }
    }

    /// A source over `base..base + len`.
    ///
    /// # Safety
    /// `base..base + len` is valid, readable and writable memory, inside one
    /// allocation (or memory region of the platform), and the caller hands it
    /// over exclusively: nothing else reads or writes it for as long as the
    /// source or any range it handed out is in use.
    pub const unsafe fn new(base: *mut u8, len: usize) -> Self {
        RegionSource {
            state: Mutex::new(State::new(base, len)),
        }
    }

    /// Replaces the source's region with `base..base + len` (for a `static`
    /// built with [`empty`](Self::empty) that learns its memory at boot). The
    /// old region, if any, is forgotten wholesale.
    ///
    /// # Safety
    /// As for [`new`](Self::new) for the new region; and no range handed out
    /// from the old region is still in use, nor will be given to `free` or
    /// any other method of this source.
    pub unsafe fn set_region(&self, base: *mut u8, len: usize) {
        *self.state.lock() = State::new(base, len);
    }

    /// Bytes currently free (not reserved), summed over all extents.
    pub fn free_bytes(&self) -> usize {
        let mut s = self.state.lock();
        s.ensure_init();
        s.free.bytes()
    }

    /// Number of free extents (holes) in the list; at most [`MAX_EXTENTS`].
    pub fn free_extents(&self) -> usize {
        let mut s = self.state.lock();
        s.ensure_init();
        s.free.len()
    }
}

impl Default for RegionSource {
    fn default() -> Self {
        Self::empty()
    }
}

impl core::fmt::Debug for RegionSource {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut d = f.debug_struct("RegionSource");
        // try_lock: formatting must not deadlock against a holder of the lock.
        if let Some(s) = self.state.try_lock() {
            d.field("base", &s.base)
                .field("len", &s.len)
                .field("free_extents", &s.free.len());
        }
        d.finish_non_exhaustive()
    }
}

// SAFETY: `reserve` hands out disjoint sub-ranges of a region the source owns
// exclusively (free extents are disjoint from every live reservation, and the
// list is only changed under the lock); that memory is always readable and
// writable, so a Ready range is usable; ZEROED and CAN_RELEASE are false, the
// truthful answers; nothing allocates; the state sits behind a spin mutex, so
// every method may be called through `&self` from any CPU.
unsafe impl PageSource for RegionSource {
    const PAGE_SIZE: usize = 4096;
    const ARENA_BYTES: usize = crate::CHUNK_BYTES;
    const ZEROED: bool = false;
    const CAN_RELEASE: bool = false;

    /// None → Reserved: first fit in the free-extent list.
    fn reserve(&self, bytes: usize, align: usize) -> Option<NonNull<u8>> {
        if bytes == 0 || !align.is_power_of_two() {
            return None;
        }
        let bytes = bytes.checked_next_multiple_of(Self::PAGE_SIZE)?;
        let align = align.max(Self::PAGE_SIZE);
        let mut s = self.state.lock();
        s.ensure_init();
        let off = s.free.take(bytes, align)? - s.base as usize;
        // SAFETY: `off + bytes <= len`, since extents lie inside the region, so
        // the result stays in bounds of the region's allocation.
        NonNull::new(unsafe { s.base.add(off) })
    }

    /// Reserved → Prepared: nothing to do.
    unsafe fn commit(&self, _addr: NonNull<u8>, _bytes: usize) -> Result<(), Exhausted> {
        Ok(())
    }

    /// Prepared → Ready: nothing to do.
    unsafe fn ready(&self, _addr: NonNull<u8>, _bytes: usize) -> Result<(), Exhausted> {
        Ok(())
    }

    /// Ready → Prepared: nothing to give back.
    unsafe fn release(&self, _addr: NonNull<u8>, _bytes: usize) {}

    /// Ready or Prepared → Reserved in name only: without an MMU nothing makes
    /// the range fault, so a guard placed here is not enforced.
    unsafe fn fault(&self, _addr: NonNull<u8>, _bytes: usize) {}

    /// Any state → None: back to the free list, merged with its neighbours.
    unsafe fn free(&self, addr: NonNull<u8>, bytes: usize) {
        let Some(bytes) = bytes.checked_next_multiple_of(Self::PAGE_SIZE) else {
            return;
        };
        let mut s = self.state.lock();
        s.ensure_init();
        let start = (addr.as_ptr() as usize).wrapping_sub(s.base as usize);
        debug_assert!(
            start <= s.len && bytes <= s.len - start,
            "free of a range outside the region"
        );
        if start > s.len || bytes > s.len - start {
            return;
        }
        // Cannot overflow: the range lies inside the region (checked above),
        // one allocation by the contract of `new`.
        let a = s.base as usize + start;
        s.free.give_back(a, a + bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{alloc, dealloc, Layout};

    const PS: usize = RegionSource::PAGE_SIZE;

    /// A heap buffer aligned to `align`, freed on drop.
    struct Buf {
        p: *mut u8,
        layout: Layout,
    }

    impl Buf {
        fn new(len: usize, align: usize) -> Buf {
            let layout = Layout::from_size_align(len, align).unwrap();
            // SAFETY: every test passes a non-zero `len`, so the layout has a non-zero size.
            let p = unsafe { alloc(layout) };
            assert!(!p.is_null());
            Buf { p, layout }
        }
        /// A source over `offset..offset+len` of the buffer.
        fn source(&self, offset: usize, len: usize) -> RegionSource {
            assert!(offset + len <= self.layout.size());
            // SAFETY: the range lies inside this live allocation (asserted above), which outlives
            // the source; the tests touch the memory only through ranges the source hands out.
            unsafe { RegionSource::new(self.p.add(offset), len) }
        }
    }

    impl Drop for Buf {
        fn drop(&mut self) {
            // SAFETY: `p` came from `alloc(layout)` in `new` and is freed only here.
            unsafe { dealloc(self.p, self.layout) }
        }
    }

    fn off(buf: &Buf, p: NonNull<u8>) -> usize {
        p.as_ptr() as usize - buf.p as usize
    }

    #[test]
    fn carves_in_order_and_memory_is_usable() {
        let buf = Buf::new(64 * PS, PS);
        let src = buf.source(0, 64 * PS);
        assert_eq!(src.free_bytes(), 64 * PS);
        let a = src.reserve(4 * PS, PS).unwrap();
        let b = src.reserve(PS, PS).unwrap();
        let c = src.alloc(100).unwrap(); // rounded to one page
        assert_eq!(
            (off(&buf, a), off(&buf, b), off(&buf, c)),
            (0, 4 * PS, 5 * PS)
        );
        assert_eq!(src.free_bytes(), 58 * PS);
        // SAFETY: `a` goes Reserved → Prepared → Ready before it is written, `c` is Ready from
        // `alloc`; reading `a` after `release` is sound only as RegionSource's release is a no-op.
        unsafe {
            src.commit(a, 4 * PS).unwrap();
            src.ready(a, 4 * PS).unwrap();
            a.as_ptr().write_bytes(0xee, 4 * PS);
            src.hugepage(a, 4 * PS);
            src.release(a, 4 * PS);
            src.fault(a, PS);
            // Writing c does not disturb a.
            c.as_ptr().write_bytes(1, PS);
            assert_eq!(*a.as_ptr().add(4 * PS - 1), 0xee);
        }
    }

    #[test]
    fn alignment() {
        let buf = Buf::new(32 * PS + 2 * 65536, 65536);
        let src = buf.source(0, 32 * PS + 2 * 65536);
        let a = src.reserve(PS, PS).unwrap();
        assert_eq!(off(&buf, a), 0);
        let b = src.reserve(PS, 65536).unwrap();
        assert_eq!(b.as_ptr() as usize % 65536, 0);
        assert_eq!(off(&buf, b), 65536);
        // The hole before b is reused first-fit.
        let c = src.reserve(2 * PS, 8192).unwrap();
        assert_eq!(off(&buf, c), 2 * PS);
        // An align below PAGE_SIZE is raised to PAGE_SIZE.
        let d = src.reserve(PS, 1).unwrap();
        assert_eq!(d.as_ptr() as usize % PS, 0);
        assert_eq!(off(&buf, d), PS);
        assert!(src.reserve(PS, 3 * PS).is_none());
        assert!(src.reserve(0, PS).is_none());
    }

    #[test]
    fn exhaustion_returns_none() {
        let buf = Buf::new(16 * PS, PS);
        let src = buf.source(0, 16 * PS);
        assert!(src.reserve(17 * PS, PS).is_none());
        assert!(src.reserve(usize::MAX, PS).is_none());
        assert!(src.reserve(PS, 1 << (usize::BITS - 1)).is_none());
        let a = src.reserve(16 * PS, PS).unwrap();
        assert!(src.reserve(PS, PS).is_none());
        assert!(src.alloc(1).is_none());
        // SAFETY: `a` is exactly the range `reserve` returned, never accessed.
        unsafe { src.free(a, 16 * PS) };
        assert!(src.reserve(16 * PS, PS).is_some());

        let empty = RegionSource::empty();
        assert!(empty.reserve(PS, PS).is_none());
        assert_eq!(empty.free_bytes(), 0);
        // A region smaller than a page, or with no whole aligned page, is empty.
        let tiny = buf.source(1, PS);
        assert!(tiny.reserve(PS, PS).is_none());
    }

    #[test]
    fn free_and_reserve_again() {
        let buf = Buf::new(8 * PS, PS);
        let src = buf.source(0, 8 * PS);
        let a = src.reserve(2 * PS, PS).unwrap();
        let b = src.reserve(2 * PS, PS).unwrap();
        let _c = src.reserve(4 * PS, PS).unwrap();
        assert!(src.reserve(PS, PS).is_none());
        // SAFETY: `b` is exactly a range `reserve` returned, never accessed.
        unsafe { src.free(b, 2 * PS) };
        let b2 = src.reserve(2 * PS, PS).unwrap();
        assert_eq!(b2, b);
        // SAFETY: `a` is exactly a range `reserve` returned, never accessed.
        unsafe { src.free(a, 2 * PS) };
        let a2 = src.reserve(PS, PS).unwrap();
        assert_eq!(a2, a);
        let a3 = src.reserve(PS, PS).unwrap();
        assert_eq!(off(&buf, a3), PS);
    }

    #[test]
    fn coalescing() {
        let buf = Buf::new(16 * PS, PS);
        let src = buf.source(0, 16 * PS);
        let r: std::vec::Vec<_> = (0..8).map(|_| src.reserve(2 * PS, PS).unwrap()).collect();
        assert_eq!(src.free_extents(), 0);
        // SAFETY: each `r[i]` is exactly a range `reserve` returned, freed once and never accessed.
        unsafe {
            src.free(r[1], 2 * PS);
            src.free(r[3], 2 * PS);
            src.free(r[5], 2 * PS);
            assert_eq!(src.free_extents(), 3);
            // Join with the previous extent, then with the next, then both.
            src.free(r[2], 2 * PS);
            assert_eq!(src.free_extents(), 2);
            src.free(r[4], 2 * PS);
            assert_eq!(src.free_extents(), 1);
            src.free(r[7], 2 * PS);
            src.free(r[6], 2 * PS);
            assert_eq!(src.free_extents(), 1);
            src.free(r[0], 2 * PS);
        }
        assert_eq!(src.free_extents(), 1);
        assert_eq!(src.free_bytes(), 16 * PS);
        // Everything merged back: the whole region is one fit again.
        let all = src.reserve(16 * PS, PS).unwrap();
        assert_eq!(off(&buf, all), 0);
    }

    #[test]
    fn full_extent_list() {
        let n = 2 * MAX_EXTENTS + 2;
        let buf = Buf::new(n * PS, PS);
        let src = buf.source(0, n * PS);
        let r: std::vec::Vec<_> = (0..n).map(|_| src.reserve(PS, PS).unwrap()).collect();
        // Free every other page: MAX_EXTENTS + 1 disjoint holes, one too many.
        for i in (0..n).step_by(2) {
            // SAFETY: `r[i]` is exactly a range `reserve` returned, freed once and never accessed.
            unsafe { src.free(r[i], PS) };
        }
        assert_eq!(src.free_extents(), MAX_EXTENTS);
        // The last hole was forgotten, never handed out twice.
        let got: std::vec::Vec<_> = core::iter::from_fn(|| src.reserve(PS, PS)).collect();
        assert_eq!(got.len(), MAX_EXTENTS);
        assert!(!got.contains(&r[n - 2]));
    }

    #[test]
    fn unaligned_region_base() {
        let buf = Buf::new(12 * PS, 2 * PS);
        // Region starts 100 bytes past a page boundary and ends mid-page:
        // only the 10 whole pages inside are used.
        let src = buf.source(100, 11 * PS);
        assert_eq!(src.free_bytes(), 10 * PS);
        let a = src.reserve(PS, PS).unwrap();
        assert_eq!(off(&buf, a), PS);
        let b = src.reserve(8192, 8192).unwrap();
        assert_eq!(off(&buf, b), 2 * PS);
        let rest = src.reserve(8 * PS, PS);
        assert!(rest.is_none());
        let rest = src.reserve(7 * PS, PS).unwrap();
        assert_eq!(off(&buf, rest), 4 * PS);
        assert!(src.reserve(PS, PS).is_none());
        // SAFETY: `a` is exactly a range `reserve` returned, never accessed.
        unsafe { src.free(a, PS) };
        assert_eq!(src.reserve(PS, PS), Some(a));
    }

    #[test]
    fn static_learns_its_region_at_boot() {
        static SRC: RegionSource = RegionSource::empty();
        fn assert_sync<T: Send + Sync>(_: &T) {}
        assert_sync(&SRC);
        assert!(SRC.reserve(PS, PS).is_none());
        let buf = Buf::new(8 * PS, PS);
        // SAFETY: `buf` is live and 8 pages long, reached only through `SRC` until it is reset
        // below; `SRC` had no region before, so no old range is in use.
        unsafe { SRC.set_region(buf.p, 8 * PS) };
        let a = SRC.reserve(8 * PS, PS).unwrap();
        assert_eq!(off(&buf, a), 0);
        // SAFETY: `a` is exactly the range `reserve` returned, never accessed.
        unsafe { SRC.free(a, 8 * PS) };
        // SAFETY: an empty region; the old region's only range was freed above.
        unsafe { SRC.set_region(ptr::null_mut(), 0) };
        assert!(SRC.reserve(PS, PS).is_none());
    }
}
