//! Typed numbers at the seams between the tiers: page counts, page indices,
//! addresses, arena slots and span owners. See `lib.rs` for the overview.
//!
//! Each is a `#[repr(transparent)]` newtype over the raw number with only the
//! arithmetic that makes sense (tcmalloc's `PageId`/`Length`, Go's
//! `pageID`/`chunkIdx`, the x86_64 crate's `VirtAddr`): a page index plus a
//! page count is a page index, the distance between two page indices is a
//! page count, and a page index cannot be passed where an address or a count
//! is meant. They compile to the raw number.
//!
//! ```text
//!   Addr  ── Arena::page_of ──▶ PageIdx ── + Pages ──▶ PageIdx
//!     ▲                            │
//!     └──── Arena::addr_of ◀───────┘    Pages::bytes(page) = n · page.bytes()
//! ```
//!
//! The page's size is the heap's, not the crate's: it comes from the source's
//! [`Geometry`](crate::Geometry) (8 KiB, Go's, for hosted and kernel sources)
//! as a [`PageSize`], the one place where pages and bytes meet.

use core::fmt;
use core::ops::{Add, AddAssign, Sub, SubAssign};

use crate::sync::atomic::{AtomicU16, Ordering};

/// A heap's page size: a power of two from 2^5 to 2^20 bytes, taken from its
/// source's geometry (`S::GEOMETRY.page()`). Every conversion between
/// [`Pages`] and bytes goes through one, so a heap of 256-byte pages and one
/// of 8 KiB pages share the page heap's code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageSize {
    /// log2 of the bytes; 5..=20.
    shift: u8,
}

impl PageSize {
    /// Go's page, 8 KiB: the page of [`Geometry::GO`](crate::Geometry::GO).
    pub const GO: PageSize = PageSize::from_shift(13);

    /// The page of `1 << shift` bytes. Panics (at compile time in a const)
    /// outside 5..=20.
    pub const fn from_shift(shift: u32) -> PageSize {
        assert!(shift >= 5 && shift <= 20, "page shift out of range");
        PageSize { shift: shift as u8 }
    }

    /// log2 of the bytes.
    #[inline(always)]
    pub const fn shift(self) -> u32 {
        self.shift as u32
    }

    /// Bytes per page.
    #[inline(always)]
    pub const fn bytes(self) -> usize {
        1 << self.shift
    }

    /// The page holding byte `off` of a page-aligned range (`off / bytes`).
    #[inline(always)]
    pub const fn page_at(self, off: usize) -> usize {
        off >> self.shift
    }
}

/// A number of heap pages (tcmalloc's `Length`); their bytes depend on the
/// heap's [`PageSize`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct Pages(usize);

impl Pages {
    /// No pages.
    pub const ZERO: Pages = Pages(0);
    /// One page.
    pub const ONE: Pages = Pages(1);

    /// `n` pages.
    #[inline(always)]
    pub const fn new(n: usize) -> Pages {
        Pages(n)
    }

    /// The number of pages.
    #[inline(always)]
    pub const fn get(self) -> usize {
        self.0
    }

    /// Bytes in these pages of `page` bytes.
    #[inline(always)]
    pub const fn bytes(self, page: PageSize) -> usize {
        self.0 << page.shift
    }

    /// The pages that hold `bytes` bytes, rounded up (`None` on overflow).
    #[inline]
    pub const fn of_bytes(bytes: usize, page: PageSize) -> Option<Pages> {
        match bytes.checked_add(page.bytes() - 1) {
            Some(b) => Some(Pages(b >> page.shift)),
            None => None,
        }
    }

    /// The pages of exactly `bytes` bytes, a multiple of the page.
    #[inline(always)]
    pub const fn of_whole_bytes(bytes: usize, page: PageSize) -> Pages {
        debug_assert!(bytes.is_multiple_of(page.bytes()));
        Pages(bytes >> page.shift)
    }

    /// `self - other`, or `ZERO` if `other` is larger.
    #[inline(always)]
    pub const fn saturating_sub(self, other: Pages) -> Pages {
        Pages(self.0.saturating_sub(other.0))
    }

    /// `self + other`, or `None` on overflow.
    #[inline(always)]
    pub const fn checked_add(self, other: Pages) -> Option<Pages> {
        match self.0.checked_add(other.0) {
            Some(n) => Some(Pages(n)),
            None => None,
        }
    }
}

impl Add for Pages {
    type Output = Pages;
    #[inline(always)]
    fn add(self, o: Pages) -> Pages {
        Pages(self.0 + o.0)
    }
}

impl Sub for Pages {
    type Output = Pages;
    #[inline(always)]
    fn sub(self, o: Pages) -> Pages {
        Pages(self.0 - o.0)
    }
}

impl AddAssign for Pages {
    #[inline(always)]
    fn add_assign(&mut self, o: Pages) {
        self.0 += o.0;
    }
}

impl SubAssign for Pages {
    #[inline(always)]
    fn sub_assign(&mut self, o: Pages) {
        self.0 -= o.0;
    }
}

impl fmt::Display for Pages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl core::iter::Sum for Pages {
    fn sum<I: Iterator<Item = Pages>>(it: I) -> Pages {
        it.fold(Pages::ZERO, |a, b| a + b)
    }
}

/// A page's position inside its arena: page 0 is the arena's first
/// (the bit index of the arena's page bitmap).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct PageIdx(usize);

impl PageIdx {
    /// The arena's first page.
    pub const ZERO: PageIdx = PageIdx(0);

    /// Page `i` of an arena.
    #[inline(always)]
    pub const fn new(i: usize) -> PageIdx {
        PageIdx(i)
    }

    /// The index.
    #[inline(always)]
    pub const fn get(self) -> usize {
        self.0
    }

    /// The pages from the arena's start to this page.
    #[inline(always)]
    pub const fn from_start(self) -> Pages {
        Pages(self.0)
    }
}

impl Add<Pages> for PageIdx {
    type Output = PageIdx;
    #[inline(always)]
    fn add(self, n: Pages) -> PageIdx {
        PageIdx(self.0 + n.0)
    }
}

impl AddAssign<Pages> for PageIdx {
    #[inline(always)]
    fn add_assign(&mut self, n: Pages) {
        self.0 += n.0;
    }
}

impl Sub<Pages> for PageIdx {
    type Output = PageIdx;
    #[inline(always)]
    fn sub(self, n: Pages) -> PageIdx {
        PageIdx(self.0 - n.0)
    }
}

/// The distance between two pages of one arena.
impl Sub for PageIdx {
    type Output = Pages;
    #[inline(always)]
    fn sub(self, o: PageIdx) -> Pages {
        Pages(self.0 - o.0)
    }
}

/// An address in the heap's arenas: where a span or an arena starts.
/// Printed in hex.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct Addr(usize);

impl Addr {
    /// The address `a`.
    #[inline(always)]
    pub const fn new(a: usize) -> Addr {
        Addr(a)
    }

    /// The address of `p`.
    #[inline(always)]
    pub fn of<T>(p: *const T) -> Addr {
        Addr(p as usize)
    }

    /// The address as a number.
    #[inline(always)]
    pub const fn get(self) -> usize {
        self.0
    }

    /// The address as a pointer.
    #[inline(always)]
    pub const fn as_ptr<T>(self) -> *mut T {
        self.0 as *mut T
    }

    /// The address `pages` of `page` bytes further on.
    #[inline(always)]
    pub const fn add_pages(self, pages: Pages, page: PageSize) -> Addr {
        Addr(self.0 + pages.bytes(page))
    }
}

/// The address `bytes` further on.
impl Add<usize> for Addr {
    type Output = Addr;
    #[inline(always)]
    fn add(self, bytes: usize) -> Addr {
        Addr(self.0 + bytes)
    }
}

/// The bytes from `o` up to `self`.
impl Sub for Addr {
    type Output = usize;
    #[inline(always)]
    fn sub(self, o: Addr) -> usize {
        self.0 - o.0
    }
}

impl fmt::Debug for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::LowerHex for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

/// An arena's place in the page heap's address-ordered arena array (slot 0
/// holds the lowest arena; slots shift when an arena is inserted below).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(transparent)]
pub struct ArenaSlot(usize);

impl ArenaSlot {
    /// Slot `i`.
    #[inline(always)]
    pub const fn new(i: usize) -> ArenaSlot {
        ArenaSlot(i)
    }

    /// The slot's index.
    #[inline(always)]
    pub const fn get(self) -> usize {
        self.0
    }
}

/// The CPU whose cache takes a span's objects, for the classes whose objects
/// share cache lines ([`crate::Geometry::shares_lines`]), or
/// none. Packed for one 16-bit atomic: `i` is CPU index `i`, 65,535 is none
/// (an index of 65,535 or more has no packing and reads as none: a hint
/// lost), so that the C free compares the CPU id it reads with no add.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(transparent)]
pub struct Owner(u16);

impl Owner {
    /// No owner (a span before its first refill, or a caller that does not know its CPU).
    pub const NONE: Owner = Owner(u16::MAX);

    /// The owner for CPU index `cpu`. An index without a packing (an
    /// unregistered rseq CPU id, `-1` read as unsigned) gives [`Owner::NONE`].
    #[inline(always)]
    pub const fn cpu(cpu: usize) -> Owner {
        if cpu >= u16::MAX as usize {
            Owner::NONE
        } else {
            Owner(cpu as u16)
        }
    }

    /// The owner's 16 bits ([`Owner::NONE`]: all ones), as the per-CPU push
    /// of the classes under a line compares them with the CPU id's.
    #[inline(always)]
    #[cfg_attr(not(rseq), allow(dead_code))] // only the sections compare it
    pub(crate) const fn bits(self) -> u16 {
        self.0
    }

    /// Whether this is [`Owner::NONE`].
    #[inline(always)]
    pub const fn is_none(self) -> bool {
        self.0 == Owner::NONE.0
    }

    /// Whether this is some CPU, and not `other`.
    #[inline(always)]
    pub const fn is_other_than(self, other: Owner) -> bool {
        self.0 != Owner::NONE.0 && self.0 != other.0
    }

    /// Whether this is not CPU index `cpu`'s owner, in one compare, as the
    /// frees of the classes under a line test it (the rseq push compares
    /// the same 16 bits inside its section): unlike [`Owner::is_other_than`], [`Owner::NONE`]
    /// differs from every CPU (a span's objects are out only after a refill
    /// that knew its CPU set the owner, so a NONE span's free merely goes
    /// the remote way, which is always right), and an index without a
    /// packing compares as its low 16 bits: such a CPU id is no per-CPU
    /// cache's, so the push that follows a "same" declines it.
    #[inline(always)]
    pub const fn is_not_cpu(self, cpu: usize) -> bool {
        self.0 != cpu as u16
    }
}

/// An [`Owner`] that changes under a lock and is read without one, as a
/// hint: every access is `Relaxed` (a hint needs no ordering).
#[derive(Debug)]
#[repr(transparent)]
pub struct AtomicOwner(AtomicU16);

impl AtomicOwner {
    /// [`Owner::NONE`].
    pub const fn new() -> AtomicOwner {
        AtomicOwner(AtomicU16::new(Owner::NONE.0))
    }

    /// The owner now.
    #[inline(always)]
    pub fn load(&self) -> Owner {
        Owner(self.0.load(Ordering::Relaxed))
    }

    /// Sets the owner.
    #[inline(always)]
    pub fn store(&self, o: Owner) {
        self.0.store(o.0, Ordering::Relaxed);
    }
}

impl Default for AtomicOwner {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_indices() {
        for page in [
            PageSize::GO,
            PageSize::from_shift(7),
            PageSize::from_shift(8),
        ] {
            let pb = page.bytes();
            assert_eq!(Pages::of_bytes(0, page), Some(Pages::ZERO));
            assert_eq!(Pages::of_bytes(1, page), Some(Pages::ONE));
            assert_eq!(Pages::of_bytes(pb, page), Some(Pages::ONE));
            assert_eq!(Pages::of_bytes(pb + 1, page), Some(Pages::new(2)));
            assert_eq!(Pages::of_bytes(usize::MAX, page), None);
            assert_eq!(Pages::new(3).bytes(page), 3 * pb);
            assert_eq!(Pages::of_whole_bytes(5 * pb, page), Pages::new(5));
            assert_eq!(page.page_at(3 * pb - 1), 2);
        }
        assert_eq!(PageSize::GO.bytes(), 8192);
        assert_eq!(PageSize::from_shift(8).shift(), 8);
        let i = PageIdx::new(10) + Pages::new(5);
        assert_eq!(i, PageIdx::new(15));
        assert_eq!(i - PageIdx::new(10), Pages::new(5));
        assert_eq!(i - Pages::new(15), PageIdx::ZERO);
        assert_eq!(Pages::new(2).saturating_sub(Pages::new(3)), Pages::ZERO);
        assert_eq!(
            [Pages::ONE, Pages::new(2)].into_iter().sum::<Pages>(),
            Pages::new(3)
        );
    }

    #[test]
    fn addresses_print_in_hex() {
        let a = Addr::new(0x1000);
        assert_eq!(std::format!("{a:?} {a:#x}"), "0x1000 0x1000");
        assert_eq!((a + 16) - a, 16);
        assert_eq!(a.add_pages(Pages::ONE, PageSize::GO).get(), 0x1000 + 8192);
        let p = PageSize::from_shift(8);
        assert_eq!(a.add_pages(Pages::new(3), p).get(), 0x1000 + 768);
    }

    #[test]
    fn owners() {
        assert!(Owner::cpu(0) != Owner::NONE);
        assert!(Owner::cpu(u32::MAX as usize).is_none());
        assert!(Owner::cpu(usize::MAX).is_none());
        assert!(Owner::cpu(3).is_other_than(Owner::cpu(2)));
        assert!(!Owner::cpu(3).is_other_than(Owner::cpu(3)));
        assert!(!Owner::NONE.is_other_than(Owner::cpu(3)));
        // One compare: NONE differs from every CPU; an unpackable index
        // (an unregistered rseq id) matches NONE, and only NONE.
        for cpu in [0, 1, 3, 65_533] {
            assert!(!Owner::cpu(cpu).is_not_cpu(cpu));
            assert!(Owner::cpu(cpu + 1).is_not_cpu(cpu));
            assert!(Owner::NONE.is_not_cpu(cpu));
            assert!(Owner::cpu(cpu).is_not_cpu(u32::MAX as usize));
        }
        assert!(!Owner::NONE.is_not_cpu(u32::MAX as usize));
        let a = AtomicOwner::new();
        assert_eq!(a.load(), Owner::NONE);
        a.store(Owner::cpu(7));
        assert_eq!(a.load(), Owner::cpu(7));
    }
}

/// A `usize` kept so that all-zero bytes mean `D` (stored as `v ^ D`): a
/// heap `static` whose defaults are not zero still starts as zero bytes, in
/// `.bss` rather than `.data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OrDefault<const D: usize>(usize);

impl<const D: usize> OrDefault<D> {
    /// `D`, as all-zero bytes.
    pub(crate) const DEFAULT: Self = OrDefault(0);

    /// `v`.
    pub(crate) const fn new(v: usize) -> Self {
        OrDefault(v ^ D)
    }

    /// The value.
    #[inline(always)]
    pub(crate) const fn get(self) -> usize {
        self.0 ^ D
    }
}
