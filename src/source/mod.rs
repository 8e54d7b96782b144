//! The OS boundary: where arenas come from. See `lib.rs` for the overview.
//!
//! A [`PageSource`] hands out address ranges and moves them between Go's four
//! memory states (`runtime/mem.go`):
//!
//! ```text
//!            reserve                commit                 ready
//!   None ─────────────▶ Reserved ─────────────▶ Prepared ─────────────▶ Ready
//!     ▲                   ▲  ▲                     ▲   ◀─────────────────┘
//!     │      free         │  │       fault         │        release
//!     └───────────────────┘  └─────────────────────┼──────────────────── (from Ready or Prepared)
//!                                                  │
//!   alloc = reserve + commit + ready (None → Ready, for the allocator's own metadata)
//! ```
//!
//! `free` of a whole reservation is also how the heap gives back an arena
//! that has become wholly free, where the source says that this returns
//! address space a later `reserve` can use ([`PageSource::CAN_UNRESERVE`]):
//! the heap does so when reservations start failing (an address-space limit,
//! a 32-bit process), and before it gives up on an allocation.
//!
//! * **None** — the range is not the heap's; nothing may touch it.
//! * **Reserved** — address space is set aside; any access faults. A guard page
//!   lives in this state.
//! * **Prepared** — the range is the heap's and cheap to make usable, but its
//!   contents are undefined (or zero, see [`PageSource::ZEROED`]) and it may not
//!   cost physical memory. Accessing it is not allowed until [`PageSource::ready`].
//! * **Ready** — readable and writable memory.
//!
//! Preconditions, stated once: every `addr` is aligned to [`PageSource::PAGE_SIZE`],
//! every `bytes` is a non-zero multiple of it, and the range lies inside one range
//! returned by [`PageSource::reserve`] (or [`PageSource::alloc`]) and currently
//! in the state the method moves it out of.
//!
//! A page source must never allocate through the heap it serves (no `Vec`, no
//! `format!`, no printing that allocates): it runs with the heap lock held.

mod extents;
pub mod failing;
#[cfg(feature = "x86_64")]
pub mod frames;
#[cfg(feature = "linux")]
pub mod mmap;
pub mod region;

pub use failing::FailingSource;
#[cfg(feature = "x86_64")]
pub use frames::FrameSource;
#[cfg(feature = "linux")]
pub use mmap::MmapSource;
pub use region::{RegionError, RegionSource, MAX_REGIONS, MIN_REGION_BYTES};

use crate::sizeclass::Geometry;
use crate::units::PageSize;
use core::ptr::NonNull;

/// The source could not provide memory (out of address space or of physical memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted;

/// A supplier of arenas: the bottom tier.
///
/// # Safety
///
/// Implementers promise that:
/// * a range returned by `reserve` or `alloc` does not overlap any other range
///   the source has returned and not yet taken back with `free`;
/// * after a successful `ready` (or `alloc`) the range is readable and writable
///   memory, owned exclusively by the caller, until it leaves the Ready state;
/// * the constants below describe the source truthfully (the heap skips zeroing
///   on the strength of [`PageSource::ZEROED`]);
/// * no method allocates through the heap that is built on top of the source,
///   and every method may be called from any thread or CPU (`&self`), with the
///   heap lock possibly held.
pub unsafe trait PageSource {
    /// Granule of every transition (the OS or MMU page), a power of two that
    /// divides the heap's page ([`PageSource::GEOMETRY`]'s).
    const PAGE_SIZE: usize;
    /// Bytes the heap asks for each time it grows: a multiple of
    /// [`crate::CHUNK_BYTES`]. 64 MiB on Linux, as in Go. With
    /// [`PageSource::SMALL_ARENAS`], the most an arena takes at once.
    const ARENA_BYTES: usize;
    /// The source hands out parts of fixed regions of any size (a board's RAM):
    /// arenas are then any whole number of heap pages, page aligned, each as
    /// large as [`PageSource::largest_free`] allows up to `ARENA_BYTES`, with
    /// their metadata inside; the page map is a list of arenas rather than a
    /// radix table over 4 MiB chunks, span records come from arena pages, and
    /// the per-CPU caches are sized by [`PageSource::bound`] when the heap sets
    /// itself up (see `percpu::cache`). False (the default): arenas are whole
    /// chunks, chunk aligned, and the caches have one size known at compile
    /// time.
    const SMALL_ARENAS: bool = false;
    /// Memory made Ready from Prepared reads as zero, whether it was never used
    /// or was given back with `release`.
    const ZEROED: bool;
    /// `release` really gives memory back (and so the scavenger is worth running).
    const CAN_RELEASE: bool;
    /// `free` of a reservation gives its address space back for later
    /// `reserve`s (an `munmap`), so that when a reservation fails the heap
    /// frees the arenas that are wholly free and tries again, and while
    /// reservations keep failing frees each arena as soon as it is wholly
    /// free (`pageheap::arenas`, "Growing and releasing arenas"). False (the
    /// default): the heap never frees an arena. Ignored with
    /// [`PageSource::SMALL_ARENAS`] (their arenas are never freed).
    const CAN_UNRESERVE: bool = false;
    /// [`PageSource::now_ms`] reads a clock, so free memory can decay by time
    /// (`pageheap::scavenger`, "Decay"). False (the default): the heap never
    /// polls a clock and its fast paths carry no tick.
    const CLOCK: bool = false;
    /// The most bytes of address space, from the first arena up, that the
    /// page map covers with one flat array of page slots (a slot of a
    /// pointer's size per heap page, 1/1,024 of the window over Go's
    /// pages), which it takes with `alloc` when the heap makes its first
    /// arena: a lookup there is one load, not the radix table's three (the
    /// C ABI's `free` makes one per call). For a source of large arenas
    /// ([`PageSource::SMALL_ARENAS`] false) whose memory reads as zero
    /// ([`PageSource::ZEROED`]) and whose `alloc` costs physical memory only
    /// for the pages touched (an `mmap`); 0 (the default): no window. See
    /// [`PageSource::window_bytes`].
    const WINDOW_BYTES: usize = 0;
    /// The page size and size-class table of a heap over this source
    /// ([`Geometry`]): Go's 8 KiB pages and 68 classes by default.
    const GEOMETRY: &'static Geometry = &Geometry::GO;

    /// None → Reserved: set aside `bytes` of address space aligned to `align`
    /// (a power of two, at least `PAGE_SIZE`). Go's `sysReserve`.
    fn reserve(&self, bytes: usize, align: usize) -> Option<NonNull<u8>>;

    /// Reserved → Prepared: make the range the heap's. Go's `sysMap`.
    ///
    /// # Safety
    /// The range is Reserved (see the module preconditions).
    unsafe fn commit(&self, addr: NonNull<u8>, bytes: usize) -> Result<(), Exhausted>;

    /// Prepared → Ready: make the range usable. Go's `sysUsed`. May fail where it
    /// needs physical memory (a kernel out of frames); the range then stays Prepared.
    ///
    /// # Safety
    /// The range is Prepared.
    unsafe fn ready(&self, addr: NonNull<u8>, bytes: usize) -> Result<(), Exhausted>;

    /// Ready → Prepared: give the physical memory back, keep the range. Go's
    /// `sysUnused`. A no-op where `CAN_RELEASE` is false.
    ///
    /// # Safety
    /// The range is Ready and nothing will read or write it until it is made Ready again.
    unsafe fn release(&self, addr: NonNull<u8>, bytes: usize);

    /// A hint that the Ready range would profit from huge pages. Go's `sysHugePage`.
    ///
    /// # Safety
    /// The range is Ready or Prepared.
    unsafe fn hugepage(&self, addr: NonNull<u8>, bytes: usize) {
        let _ = (addr, bytes);
    }

    /// Ready or Prepared → Reserved: make the range fault on access (a guard).
    /// Go's `sysFault`.
    ///
    /// # Safety
    /// The range is Ready or Prepared and nothing will access it any more.
    unsafe fn fault(&self, addr: NonNull<u8>, bytes: usize);

    /// Any state → None: return the range. Go's `sysFree`. `addr`/`bytes` must be
    /// exactly a range that `reserve` or `alloc` returned.
    ///
    /// # Safety
    /// Nothing will access the range any more.
    unsafe fn free(&self, addr: NonNull<u8>, bytes: usize);

    /// The window's bytes for this heap, at most
    /// [`PageSource::WINDOW_BYTES`] (the default): fewer under an
    /// address-space limit, so that the window's slots stay a thousandth of it.
    fn window_bytes(&self) -> usize {
        Self::WINDOW_BYTES
    }

    /// The most bytes this source will ever supply, if it is bounded (a fixed
    /// region); `None` (the default) for an address space or a frame
    /// allocator. The heap sizes what it keeps per class by it when it sets
    /// itself up, so that a heap of kilobytes does not carve caches sized for
    /// gigabytes.
    fn bound(&self) -> Option<usize> {
        None
    }

    /// The longest range `reserve(bytes, align)` could return now, for a
    /// source with [`PageSource::SMALL_ARENAS`]; 0 (the default) if unknown.
    fn largest_free(&self, align: usize) -> usize {
        let _ = align;
        0
    }

    /// Milliseconds of a monotonic clock (any origin but 0), when
    /// [`PageSource::CLOCK`] is true; 0 otherwise. Called with the heap's
    /// locks possibly held, as every method: it must not allocate or block.
    fn now_ms(&self) -> u64 {
        0
    }

    /// None → Ready in one step, for the allocator's own metadata. Go's `sysAlloc`.
    /// The memory reads as zero when `ZEROED` is true.
    fn alloc(&self, bytes: usize) -> Option<NonNull<u8>> {
        let bytes = bytes.checked_next_multiple_of(Self::PAGE_SIZE)?;
        let p = self.reserve(bytes, Self::PAGE_SIZE)?;
        // SAFETY: `p..p+bytes` was just reserved and is in the Reserved state.
        if unsafe { self.commit(p, bytes) }.is_err() {
            // SAFETY: the range is ours and nobody has seen it.
            unsafe { self.free(p, bytes) };
            return None;
        }
        // SAFETY: the range was just committed and is Prepared.
        if unsafe { self.ready(p, bytes) }.is_err() {
            // SAFETY: as above.
            unsafe { self.free(p, bytes) };
            return None;
        }
        Some(p)
    }
}

/// What the heap derives from a source's constants, fixed by them (a blanket
/// impl: no source can override it).
pub(crate) trait SourcePage: PageSource {
    /// The heap's page ([`PageSource::GEOMETRY`]'s), evaluated at compile time.
    const PAGE: PageSize = Self::GEOMETRY.page();
    /// Pages in a [`crate::CHUNK_BYTES`] chunk.
    const CHUNK_PAGES: usize = crate::CHUNK_BYTES >> Self::PAGE.shift();
}

impl<S: PageSource + ?Sized> SourcePage for S {}
