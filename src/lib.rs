//! # tieralloc: Go's three-tier allocator for kernels and Linux
//!
//! tieralloc is the Go runtime's allocator (itself descended from tcmalloc),
//! rebuilt in `no_std` Rust for programs that free explicitly. It runs as the
//! heap of a kernel (over page frames) and as a hosted Linux allocator (over
//! `mmap`), with the same tiers in both.
//!
//! ## The tiers, one line each
//!
//! ```text
//!  alloc(layout) / dealloc(ptr, layout)
//!        │
//!  cache     per-CPU: per size class, a bounded stack of free objects; the tiny block   (slot exclusivity)
//!        │ refill / flush a batch
//!  central   per size class: transfer cache of objects; partial and full spans           (one lock per class)
//!        │ a span of k pages / an empty span
//!  pageheap  arenas, page → span map, first-fit pages, large objects, scavenger          (the heap lock)
//!        │ reserve / commit / ready / release / fault / free
//!  source    PageSource: mmap (Linux) · region (fixed memory) · frames (x86_64, board)
//! ```
//!
//! Modules: [`sizeclass`] (Go's 68-class table), [`span`] (span records and
//! bitmaps), [`cache`] (per-CPU tier), [`central`], [`pageheap`] (with
//! [`pagealloc`], the per-arena page bitmap), [`source`] (the OS boundary),
//! [`fixalloc`] (metadata pools), [`cpu`] (which CPU am I on), `rseq`
//! (restartable sequences, Linux x86-64), [`heap`] (the front), [`stats`].
//!
//! ## Glossary
//!
//! * **OS page** — the source's granule, `PageSource::PAGE_SIZE` (4 KiB on x86-64).
//! * **page** — the heap's unit, [`PAGE_BYTES`] = 8 KiB = 2 OS pages (Go's page).
//! * **chunk** — [`CHUNK_BYTES`] = 512 pages = 4 MiB, the granule of the page map
//!   and of arena sizes.
//! * **arena** — a contiguous range from the source, `S::ARENA_BYTES` (64 MiB on
//!   Linux) or more.
//! * **span** — a run of pages: either carved into objects of one size class, or
//!   one large object (over [`MAX_SMALL_SIZE`] = 32 KiB).
//! * **object** — what `alloc` returns; a **tiny** object (under [`TINY_SIZE`] =
//!   16 B) shares a [`TINY_BLOCK`] (one 64-byte cache line) with other tiny objects.
//! * **frame** — a physical page (kernel backends only).
//!
//! ## The allocation path
//!
//! 1. [`heap::Kind::of`] sorts the layout: tiny, small (class from Go's
//!    `size_to_class8/128` tables, one load; 16..=1024 bytes at alignment ≤ 8
//!    take two compares and the load), or large. No lock.
//! 2. Small: pop from the class's stack in the current CPU's cache. On Linux
//!    x86-64 this is a restartable sequence ([`rseq`]) that commits with one
//!    plain store — no lock, no atomic, about 15 instructions after one load of
//!    the slabs' descriptor; elsewhere the CPU slot's exclusivity
//!    ([`cpu::Cpu::with_current`]: IRQs off in a kernel, a per-slot lock as the
//!    Linux fallback). Done in the common case.
//! 3. Empty stack: lock `central[class]`, take a batch — first from the transfer
//!    cache, else carve the lowest free objects of the first partial span
//!    (ctz over the span's 64-bit alloc cache, Go's `nextFreeFast`); for the
//!    classes under a cache line, the first of the first 8 partial spans that
//!    this CPU owns or that has no object out, which it then owns.
//! 4. No partial span: lock the page heap, take the span's pages first fit
//!    (making released pages Ready), growing by a new arena from the source if
//!    nothing fits.
//! 5. Tiny: bump-allocate in the CPU's current 64-byte block; a new block is a
//!    64-byte class object whose live count starts at a bias (see [`heap`]).
//! 6. Large: lock the page heap and take whole pages (step 4) for a span of its own.
//! 7. `realloc`: in place within a class, when a class object shrinks to over
//!    4 KiB and at least half its slot ([`heap::stays_in_class`]), or when a span
//!    of the object's own can shrink or grow into free pages after it; otherwise
//!    allocate, copy, free. An object growing past [`heap::PROMOTE_MIN`] (16 KiB)
//!    moves to a span of its own (*promotion*), so that a doubling buffer stops
//!    being copied at each class boundary.
//!
//! ## The free path
//!
//! 1. Sort the layout as above (a sized free of up to 4 KiB needs no page-map
//!    lookup; over 4 KiB one lookup finds the object's slot class — `realloc`
//!    may have kept it in a larger one — or tells a promoted object).
//! 2. Small: push onto the current CPU's stack (as in step 2 above) — whichever
//!    CPU allocated it, except for the classes under a cache line (8..=48 B):
//!    their spans belong to the CPU that carves them, and a free on another
//!    CPU (one page-map lookup tells) pushes the object onto the class's
//!    lock-free *remote list* instead, which the next refill returns to the
//!    spans. No CPU is handed an object whose line-mates live on another CPU.
//! 3. Full stack: lock `central[class]` and hand over the oldest batch, into the
//!    transfer cache if it has room (64 KiB of objects per class; none for the
//!    classes under a line), else back to the objects' spans (page map → span
//!    → magic divide → clear the bit). A span whose last object returns goes
//!    back to the page heap (its lock), except one empty span per class that
//!    central keeps for the next refill.
//! 4. Page heap: clear the pages' bits (coalescing is implicit); if dirty free
//!    pages exceed the scavenger's allowance (what fits under 1.5 times the
//!    recent in-use peak, "recent" counted in page-heap traffic), release the
//!    highest ones to the source, down to 7/8 of the allowance.
//! 5. Tiny: decrement the block's live count (one atomic); the last free returns
//!    the block as a 64-byte class object through step 2.
//! 6. Large: lock the page heap and free the span's pages (step 4).
//!
//! Lock order: CPU slot → central (one class at a time) → page heap. The
//! refill and flush steps run with no CPU slot held. Nothing
//! below calls back up, and no tier allocates through the heap: metadata comes
//! from [`fixalloc`] pools and straight from the source.
//!
//! ## Differences from Go, because Rust frees explicitly
//!
//! No sweeping: `dealloc` returns objects; the per-CPU tier holds objects, not
//! spans, so a remote free needs no atomics (one compare-and-swap for the
//! classes under a cache line, whose spans have an owner CPU — mimalloc's
//! owner pages, per CPU rather than per thread); spans move between partial and full
//! lists on free; tiny blocks keep live counts; the scavenger paces itself by the
//! recent in-use peak (counted in page-heap traffic) instead of a GC goal. With feature `checks`, double frees, foreign and
//! interior pointers panic with the address and its span and class.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(any(test, feature = "linux"))]
extern crate std;

pub mod cache;
pub mod central;
pub mod cpu;
pub mod fixalloc;
pub mod heap;
pub mod pagealloc;
pub mod pageheap;
#[cfg(all(feature = "linux", target_arch = "x86_64"))]
pub mod rseq;
pub mod sizeclass;
pub mod source;
pub mod span;
pub mod stack;
pub mod stats;

#[cfg(feature = "linux")]
mod linux;

pub use cpu::{Cpu, LockedSlots, SingleCpu};
pub use heap::Heap;
pub use source::{PageSource, RegionSource};
pub use stats::{ClassStats, Stats};

#[cfg(feature = "linux")]
pub use linux::{LinuxCpu, LinuxHeap, SpinThenYield, MAX_CPUS};
#[cfg(feature = "linux")]
pub use source::MmapSource;

/// log2 of [`PAGE_BYTES`].
pub const PAGE_SHIFT: usize = 13;
/// The heap's page: the unit of spans and of the page allocator (Go's `_PageSize`).
pub const PAGE_BYTES: usize = 1 << PAGE_SHIFT;
/// Pages in a chunk, the unit of the arena map and of arena sizes (Go's palloc chunk).
pub const CHUNK_PAGES: usize = 512;
/// `CHUNK_BYTES = CHUNK_PAGES * PAGE_BYTES` = 4 MiB.
pub const CHUNK_BYTES: usize = CHUNK_PAGES * PAGE_BYTES;
/// Largest small object; anything bigger is a large object with a span of its own.
pub const MAX_SMALL_SIZE: usize = 32768;
/// Requests below this many bytes (with alignment at most 8) are tiny objects.
pub const TINY_SIZE: usize = 16;
/// The block tiny objects are packed into: one cache line, so that the blocks
/// two CPUs carve from at the same time never share a line (no false sharing
/// between tiny objects allocated on different CPUs). Go packs 16-byte blocks;
/// the price of the line is a block kept alive by one tiny object wasting up
/// to 63 bytes instead of 15.
pub const TINY_BLOCK: usize = 64;
