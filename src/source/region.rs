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

use core::fmt;
use core::ptr::{self, NonNull};

use spin::Mutex;

use super::extents::Extents;
use super::{Exhausted, PageSource};

/// Capacity of the free-extent list.
pub const MAX_EXTENTS: usize = 64;

/// The least a source's first region must hold in whole `PAGE_SIZE` pages
/// ([`RegionSource::try_set_region`] and a first
/// [`RegionSource::add_region`] refuse less with [`RegionError::TooSmall`]):
/// room for the heap's metadata (a fine heap's state and bitmap, about
/// 0.7 KiB on 32-bit targets and 1.3 KiB on 64-bit) and some objects, so that
/// a region too small for a heap is an error at boot, not a null on every
/// allocation.
pub const MIN_REGION_BYTES: usize = 4096;

/// Most regions one source holds (the first plus [`RegionSource::add_region`]s).
pub const MAX_REGIONS: usize = 8;

/// One region handed to the source: every pointer into it derives from `base`.
#[derive(Clone, Copy)]
struct Region {
    base: *mut u8,
    len: usize,
}

impl Region {
    const NONE: Region = Region {
        base: ptr::null_mut(),
        len: 0,
    };

    /// The region's `PAGE_SIZE`-aligned interior, `[first, last)`, if any.
    fn interior(&self) -> Option<(usize, usize)> {
        let page = RegionSource::PAGE_SIZE;
        let addr = self.base as usize;
        let first = addr.checked_next_multiple_of(page)?;
        let last = addr.saturating_add(self.len) & !(page - 1);
        (!self.base.is_null() && first < last).then_some((first, last))
    }

    fn contains(&self, a: usize) -> bool {
        a.wrapping_sub(self.base as usize) < self.len
    }

    fn start(&self) -> usize {
        self.base as usize
    }

    fn end(&self) -> usize {
        self.base as usize + self.len
    }
}

/// Why [`RegionSource::add_region`] (or [`RegionSource::try_set_region`])
/// refused a region. Nothing of the source changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionError {
    /// The region holds no whole `PAGE_SIZE`-aligned page (or `base` is
    /// null), or, as the source's first region, less than
    /// [`MIN_REGION_BYTES`] of them.
    TooSmall {
        /// The region's start.
        base: usize,
        /// Its length in bytes.
        len: usize,
    },
    /// The region overlaps one the source already has.
    Overlaps {
        /// The region's start.
        base: usize,
        /// Its length in bytes.
        len: usize,
    },
    /// The source already holds [`MAX_REGIONS`] regions, or its free list
    /// ([`MAX_EXTENTS`] holes) has no room for the region's extent.
    Full,
    /// [`RegionSource::try_set_region`] on a source that already has a
    /// region: add memory with [`RegionSource::add_region`].
    AlreadySet,
}

impl fmt::Display for RegionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RegionError::TooSmall { base, len } => write!(
                f,
                "region {base:#x}+{len:#x} holds no whole {}-byte page, or less than \
                 {MIN_REGION_BYTES} bytes of them as the first region (too small for a heap)",
                RegionSource::PAGE_SIZE
            ),
            RegionError::Overlaps { base, len } => {
                write!(
                    f,
                    "region {base:#x}+{len:#x} overlaps a region of the source"
                )
            }
            RegionError::Full => write!(
                f,
                "the source holds {MAX_REGIONS} regions or {MAX_EXTENTS} free holes already"
            ),
            RegionError::AlreadySet => {
                write!(
                    f,
                    "the source has a region already (add memory with add_region)"
                )
            }
        }
    }
}

struct State {
    /// `regions[..count]`: the regions, in the order they were given. A
    /// region from a `const fn` constructor sits here before `init`.
    regions: [Region; MAX_REGIONS],
    count: usize,
    /// The extent list was built from the first region (a `const fn`
    /// constructor cannot look at addresses, so this happens on first use).
    init: bool,
    /// The free extents, as `PAGE_SIZE`-aligned absolute addresses; each lies
    /// inside one region (merges stop at region boundaries).
    free: Extents<MAX_EXTENTS>,
}

// SAFETY: the region bases are the only non-Send fields. They point to
// regions the source owns exclusively (the contract of `RegionSource::new`,
// `set_region` and `add_region`), not to anything tied to the creating
// thread, and they are only used under the mutex.
unsafe impl Send for State {}

impl State {
    const fn new(base: *mut u8, len: usize) -> Self {
        let mut regions = [Region::NONE; MAX_REGIONS];
        regions[0] = Region { base, len };
        State {
            regions,
            count: if base.is_null() || len == 0 { 0 } else { 1 },
            init: false,
            free: Extents::new(),
        }
    }

    /// Builds the initial extent list: the `PAGE_SIZE`-aligned interior of
    /// the first region.
    fn ensure_init(&mut self) {
        if self.init {
            return;
        }
        self.init = true;
        self.free = Extents::new();
        if let Some((first, last)) = self.regions[..self.count]
            .first()
            .and_then(Region::interior)
        {
            self.free.give_back(first, last);
        }
    }

    /// The region holding address `a`.
    fn region_of(&self, a: usize) -> Option<&Region> {
        self.regions[..self.count].iter().find(|r| r.contains(a))
    }

    fn add(&mut self, base: *mut u8, len: usize) -> Result<(), RegionError> {
        let r = Region { base, len };
        let least = if self.count == 0 { MIN_REGION_BYTES } else { 1 };
        let Some((first, last)) = r.interior().filter(|&(f, l)| l - f >= least) else {
            return Err(RegionError::TooSmall {
                base: base as usize,
                len,
            });
        };
        let end = (base as usize)
            .checked_add(len)
            .ok_or(RegionError::Overlaps {
                base: base as usize,
                len,
            })?;
        if self.regions[..self.count]
            .iter()
            .any(|o| (base as usize) < o.end() && o.start() < end)
        {
            return Err(RegionError::Overlaps {
                base: base as usize,
                len,
            });
        }
        if self.count == MAX_REGIONS || self.free.len() == MAX_EXTENTS {
            return Err(RegionError::Full);
        }
        self.regions[self.count] = r;
        self.count += 1;
        self.free
            .give_back_fenced(first, last, |a| a == first || a == last);
        Ok(())
    }
}

/// A [`PageSource`] over fixed byte regions: one given at construction (or
/// at boot with [`RegionSource::set_region`]), and up to [`MAX_REGIONS`] in
/// all with [`RegionSource::add_region`], which may be called while the heap
/// is in use. The regions need not be contiguous: an arena lies inside one.
///
/// A region need not be aligned: only its `PAGE_SIZE`-aligned interior is
/// used. Pointers handed out are derived from their region's base pointer, so
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

    /// Gives a source built with [`empty`](Self::empty) its memory,
    /// `base..base + len`, at boot.
    ///
    /// # Panics
    /// If the source has a region already (from [`new`](Self::new) or an
    /// earlier call: more memory goes through
    /// [`add_region`](Self::add_region)), or if the region holds no whole
    /// `PAGE_SIZE`-aligned page, with the region's address in the message.
    /// [`try_set_region`](Self::try_set_region) returns the error instead.
    ///
    /// # Safety
    /// As for [`new`](Self::new).
    pub unsafe fn set_region(&self, base: *mut u8, len: usize) {
        // SAFETY: forwarded from the caller.
        if let Err(e) = unsafe { self.try_set_region(base, len) } {
            panic!("tieralloc: RegionSource::set_region: {e}");
        }
    }

    /// As [`set_region`](Self::set_region), reporting a refusal instead of
    /// panicking; on `Err` nothing changed.
    ///
    /// # Safety
    /// As for [`new`](Self::new).
    pub unsafe fn try_set_region(&self, base: *mut u8, len: usize) -> Result<(), RegionError> {
        let mut s = self.state.lock();
        s.ensure_init();
        if s.count > 0 {
            return Err(RegionError::AlreadySet);
        }
        s.add(base, len)
    }

    /// Adds a further region, `base..base + len`, disjoint from the source's
    /// others (linked_list_allocator's `extend`, talc's `claim`), while the
    /// heap may be in use: its next arenas may come from it. On `Err`
    /// nothing changed. A source built empty may take its first region here
    /// too.
    ///
    /// From an interrupt handler's point of view this takes the source's
    /// lock, which the heap takes under its own: call it outside the heap's
    /// operations, or from inside the `Cpu`'s section.
    ///
    /// # Safety
    /// As for [`new`](Self::new), for the new region.
    pub unsafe fn add_region(&self, base: *mut u8, len: usize) -> Result<(), RegionError> {
        let mut s = self.state.lock();
        s.ensure_init();
        s.add(base, len)
    }

    /// Number of regions the source holds.
    pub fn regions(&self) -> usize {
        self.state.lock().count
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
            d.field("regions", &s.count)
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
    const PAGE_SIZE: usize = 64;
    const ARENA_BYTES: usize = 64 << 20;
    const SMALL_ARENAS: bool = true;
    const GEOMETRY: &'static crate::sizeclass::Geometry = &crate::sizeclass::REGION_GEOMETRY;
    const ZEROED: bool = false;
    const CAN_RELEASE: bool = false;

    /// The longest free extent, from its first `align`ed address.
    fn largest_free(&self, align: usize) -> usize {
        let mut s = self.state.lock();
        s.ensure_init();
        s.free.largest(align.max(Self::PAGE_SIZE))
    }

    /// The bytes of the regions given so far.
    fn bound(&self) -> Option<usize> {
        let s = self.state.lock();
        Some(s.regions[..s.count].iter().map(|r| r.len).sum())
    }

    /// None → Reserved: first fit in the free-extent list.
    fn reserve(&self, bytes: usize, align: usize) -> Option<NonNull<u8>> {
        if bytes == 0 || !align.is_power_of_two() {
            return None;
        }
        let bytes = bytes.checked_next_multiple_of(Self::PAGE_SIZE)?;
        let align = align.max(Self::PAGE_SIZE);
        let mut s = self.state.lock();
        s.ensure_init();
        let a = s.free.take(bytes, align)?;
        let r = *s.region_of(a).expect("a free extent lies inside a region");
        // SAFETY: `a - base + bytes <= len`, since every extent lies inside
        // one region, so the result stays in bounds of that region.
        NonNull::new(unsafe { r.base.add(a - r.start()) })
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
        let a = addr.as_ptr() as usize;
        let inside = s
            .region_of(a)
            .is_some_and(|r| bytes <= r.len - (a - r.start()));
        debug_assert!(inside, "free of a range outside the regions");
        if !inside {
            return;
        }
        // Cannot overflow: the range lies inside one region (checked above),
        // one allocation by the contract of `new`. Region boundaries are
        // fences: an extent never spans two regions.
        let (regions, count) = (s.regions, s.count);
        s.free.give_back_fenced(a, a + bytes, |x| {
            regions[..count]
                .iter()
                .any(|r| r.start() == x || r.end() == x)
        });
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
        let c = src.alloc(PS / 2 + 1).unwrap(); // rounded to one page
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
        let c = src.reserve(2 * PS, 2 * PS).unwrap();
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
        // Region starts a third of a page past a page boundary and ends
        // mid-page: only the 10 whole pages inside are used.
        let src = buf.source(PS / 3, 11 * PS);
        assert_eq!(src.free_bytes(), 10 * PS);
        let a = src.reserve(PS, PS).unwrap();
        assert_eq!(off(&buf, a), PS);
        let b = src.reserve(2 * PS, 2 * PS).unwrap();
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
        let buf = Buf::new(64 * PS, PS);
        // SAFETY: `buf` is live and 64 pages long, reached only through `SRC` until it is reset
        // below; `SRC` had no region before, so no old range is in use.
        unsafe { SRC.set_region(buf.p, 64 * PS) };
        let a = SRC.reserve(64 * PS, PS).unwrap();
        assert_eq!(off(&buf, a), 0);
        // SAFETY: `a` is exactly the range `reserve` returned, never accessed.
        unsafe { SRC.free(a, 64 * PS) };
        // A second `set_region` is refused (and `set_region` would panic).
        // SAFETY: refused, so nothing of `buf` is handed over twice.
        let again = unsafe { SRC.try_set_region(buf.p, 64 * PS) };
        assert_eq!(again, Err(RegionError::AlreadySet));
        assert_eq!(SRC.regions(), 1);
    }

    #[test]
    fn set_region_reports_what_it_refuses() {
        let src = RegionSource::empty();
        let buf = Buf::new(64 * PS, PS);
        // SAFETY: refused regions are never used.
        unsafe {
            assert!(matches!(
                src.try_set_region(ptr::null_mut(), 64 * PS),
                Err(RegionError::TooSmall { .. })
            ));
            assert!(matches!(
                src.try_set_region(buf.p.add(1), PS),
                Err(RegionError::TooSmall { .. })
            ));
            // Whole pages, but too few for a heap's first region.
            assert!(matches!(
                src.try_set_region(buf.p, MIN_REGION_BYTES - PS),
                Err(RegionError::TooSmall { .. })
            ));
        }
        assert_eq!(src.regions(), 0);
        // SAFETY: `buf` is live and reached only through `src`.
        unsafe { src.set_region(buf.p, 64 * PS) };
        let r = std::panic::catch_unwind(core::panic::AssertUnwindSafe(|| {
            // SAFETY: refused (a panic), so never used twice.
            unsafe { src.set_region(buf.p, 64 * PS) }
        }));
        let msg = r.unwrap_err();
        let msg = msg.downcast_ref::<std::string::String>().unwrap();
        assert!(msg.contains("add_region"), "{msg}");
    }

    #[test]
    fn added_regions_serve_arenas_and_never_merge() {
        // One buffer cut into three regions: A and B adjacent, C apart.
        let buf = Buf::new(32 * PS, PS);
        // SAFETY: the three regions are disjoint parts of `buf`, reached only
        // through `src`.
        let src = unsafe { RegionSource::new(buf.p, 8 * PS) };
        // SAFETY: as above; the refused regions are never used.
        unsafe {
            assert_eq!(src.add_region(buf.p.add(8 * PS), 8 * PS), Ok(()));
            assert_eq!(src.add_region(buf.p.add(20 * PS), 12 * PS), Ok(()));
            assert!(matches!(
                src.add_region(buf.p.add(4 * PS), 8 * PS),
                Err(RegionError::Overlaps { .. })
            ));
            assert!(matches!(
                src.add_region(buf.p.add(19 * PS), 2 * PS),
                Err(RegionError::Overlaps { .. })
            ));
        }
        assert_eq!(src.regions(), 3);
        assert_eq!(src.free_bytes(), 28 * PS);
        // A and B are adjacent, but no reservation spans them.
        assert_eq!(src.free_extents(), 3);
        assert!(src.reserve(16 * PS, PS).is_none());
        let c = src.reserve(12 * PS, PS).unwrap();
        assert_eq!(off(&buf, c), 20 * PS);
        let a = src.reserve(8 * PS, PS).unwrap();
        let b = src.reserve(8 * PS, PS).unwrap();
        assert_eq!((off(&buf, a), off(&buf, b)), (0, 8 * PS));
        assert!(src.reserve(PS, PS).is_none());
        // Freed side by side, they stay two extents.
        // SAFETY: exactly the ranges `reserve` returned, never accessed.
        unsafe {
            src.free(a, 8 * PS);
            src.free(b, 8 * PS);
            src.free(c, 12 * PS);
        }
        assert_eq!(src.free_extents(), 3);
        assert!(src.reserve(9 * PS, PS).map(|p| off(&buf, p)) == Some(20 * PS));
    }

    #[test]
    fn too_many_regions_are_refused() {
        let buf = Buf::new((64 + 2 * (MAX_REGIONS + 1)) * PS, PS);
        let src = RegionSource::empty();
        // The first region holds at least `MIN_REGION_BYTES`; later ones a page.
        // SAFETY: the first 64 pages of `buf`, reached only through `src`.
        assert_eq!(unsafe { src.add_region(buf.p, 64 * PS) }, Ok(()));
        for i in 1..=MAX_REGIONS {
            // SAFETY: disjoint pages of `buf` (every other one after the
            // first region), reached only through `src`.
            let r = unsafe { src.add_region(buf.p.add((64 + 2 * i) * PS), PS) };
            assert_eq!(r.is_ok(), i < MAX_REGIONS, "region {i}: {r:?}");
        }
        assert_eq!(src.free_bytes(), 64 * PS + (MAX_REGIONS - 1) * PS);
    }
}
