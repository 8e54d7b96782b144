//! Heap statistics in Go's `runtime.MemStats` terms. See `lib.rs` for the overview.
//!
//! Identities that hold at quiescence (no allocation or free in flight):
//! * `heap_idle == heap_sys - heap_inuse - stack_sys` and `heap_released <= heap_idle`;
//! * `mallocs - frees` = live objects (tiny sub-objects included);
//! * `heap_alloc == Σ by_size[c].live() · by_size[c].size` (classes ≥ 1)
//!   `+ large_alloc + 64 · tiny_blocks + fine_alloc` — each live object counted at its
//!   class-rounded size, large objects at their page-rounded size, tiny
//!   sub-objects through the 64-byte blocks they share;
//! * `heap_alloc + cached_bytes <= heap_inuse` (the rest is free room in spans).

use core::fmt;

use crate::sizeclass::NUM_CLASSES;

/// Counts for one size class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Bytes per object (0 for class 0, large objects).
    pub size: u64,
    /// Objects allocated, cumulative.
    pub mallocs: u64,
    /// Objects freed, cumulative.
    pub frees: u64,
}

impl ClassStats {
    /// Live objects.
    pub fn live(&self) -> u64 {
        self.mallocs.wrapping_sub(self.frees)
    }
}

/// A snapshot of the heap. Byte counts unless the name says objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Bytes of arenas obtained from the page source (Go's HeapSys).
    pub heap_sys: u64,
    /// Bytes in spans with at least one object, or in large objects (HeapInuse);
    /// stack spans are not included (they are `stack_sys`).
    pub heap_inuse: u64,
    /// Bytes in free pages: `heap_sys - heap_inuse` (HeapIdle).
    pub heap_idle: u64,
    /// Bytes of free pages given back to the source (HeapReleased).
    pub heap_released: u64,
    /// Bytes of live objects, class-rounded (HeapAlloc).
    pub heap_alloc: u64,
    /// Objects allocated, cumulative (Mallocs); tiny sub-objects included.
    pub mallocs: u64,
    /// Objects freed, cumulative (Frees).
    pub frees: u64,
    /// Bytes of large objects live (page-rounded).
    pub large_alloc: u64,
    /// Tiny sub-objects allocated, cumulative.
    pub tiny_mallocs: u64,
    /// Tiny sub-objects freed, cumulative.
    pub tiny_frees: u64,
    /// Live 64-byte tiny blocks ([`crate::TINY_BLOCK`]; each holds up to 63 tiny objects).
    pub tiny_blocks: u64,
    /// Bytes of free objects held in per-CPU and transfer caches.
    pub cached_bytes: u64,
    /// Bytes of live objects of a fine heap (a region heap of at most
    /// [`crate::FINE_MAX_BYTES`]; see `Heap::is_fine`), granule-rounded:
    /// all of `heap_alloc` there, 0 in a tiered heap.
    pub fine_alloc: u64,
    /// Bytes of the allocator's own metadata (span records, arena maps, caches).
    pub meta_sys: u64,
    /// Bytes of spans holding stacks (Go's StackSys / StackInuse).
    pub stack_sys: u64,
    /// Stacks in use.
    pub stacks: u64,
    /// Usable bytes of the stacks in use.
    pub stack_inuse: u64,
    /// Arenas obtained.
    pub arenas: u64,
    /// Live spans (small and large).
    pub spans: u64,
    /// Bytes given back by the scavenger, cumulative.
    pub scavenged_total: u64,
    /// Per-CPU caches.
    pub cpus: u64,
    /// Per-CPU operations commit with restartable sequences (else: the CPU slot's lock).
    pub rseq: bool,
    /// Per class; index = class, class 0 = large objects.
    pub by_size: [ClassStats; NUM_CLASSES],
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            heap_sys: 0,
            heap_inuse: 0,
            heap_idle: 0,
            heap_released: 0,
            heap_alloc: 0,
            mallocs: 0,
            frees: 0,
            large_alloc: 0,
            tiny_mallocs: 0,
            tiny_frees: 0,
            tiny_blocks: 0,
            cached_bytes: 0,
            fine_alloc: 0,
            meta_sys: 0,
            stack_sys: 0,
            stacks: 0,
            stack_inuse: 0,
            arenas: 0,
            spans: 0,
            scavenged_total: 0,
            cpus: 0,
            rseq: false,
            by_size: [ClassStats::default(); NUM_CLASSES],
        }
    }
}

impl Stats {
    /// Live objects, tiny ones included.
    pub fn live_objects(&self) -> u64 {
        self.mallocs.wrapping_sub(self.frees)
    }
}

struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 10 << 30 {
            write!(f, "{} GiB", b >> 30)
        } else if b >= 10 << 20 {
            write!(f, "{} MiB", b >> 20)
        } else if b >= 10 << 10 {
            write!(f, "{} KiB", b >> 10)
        } else {
            write!(f, "{b} B")
        }
    }
}

/// A readable table: the totals, then one row per size class that was used.
impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "heap_sys      {:>12}  ({})",
            self.heap_sys,
            Bytes(self.heap_sys)
        )?;
        writeln!(
            f,
            "heap_inuse    {:>12}  ({})",
            self.heap_inuse,
            Bytes(self.heap_inuse)
        )?;
        writeln!(
            f,
            "heap_idle     {:>12}  ({})",
            self.heap_idle,
            Bytes(self.heap_idle)
        )?;
        writeln!(
            f,
            "heap_released {:>12}  ({})",
            self.heap_released,
            Bytes(self.heap_released)
        )?;
        writeln!(
            f,
            "heap_alloc    {:>12}  ({})",
            self.heap_alloc,
            Bytes(self.heap_alloc)
        )?;
        writeln!(
            f,
            "cached        {:>12}  ({})",
            self.cached_bytes,
            Bytes(self.cached_bytes)
        )?;
        writeln!(
            f,
            "meta_sys      {:>12}  ({})",
            self.meta_sys,
            Bytes(self.meta_sys)
        )?;
        writeln!(
            f,
            "stack_sys     {:>12}  ({}; {} stacks, {} in use)",
            self.stack_sys,
            Bytes(self.stack_sys),
            self.stacks,
            Bytes(self.stack_inuse)
        )?;
        writeln!(
            f,
            "mallocs       {:>12}  frees {:>12}  live {}",
            self.mallocs,
            self.frees,
            self.live_objects()
        )?;
        writeln!(
            f,
            "tiny          {:>12}  frees {:>12}  blocks {}",
            self.tiny_mallocs, self.tiny_frees, self.tiny_blocks
        )?;
        writeln!(
            f,
            "large         {:>12}  frees {:>12}  bytes {}",
            self.by_size[0].mallocs, self.by_size[0].frees, self.large_alloc
        )?;
        writeln!(
            f,
            "arenas {}  spans {}  cpus {} ({})  scavenged {}",
            self.arenas,
            self.spans,
            self.cpus,
            if self.rseq { "rseq" } else { "locked" },
            Bytes(self.scavenged_total)
        )?;
        writeln!(
            f,
            "{:>5} {:>7} {:>12} {:>12} {:>10}",
            "class", "size", "mallocs", "frees", "live"
        )?;
        for (c, row) in self.by_size.iter().enumerate().skip(1) {
            if row.mallocs != 0 {
                writeln!(
                    f,
                    "{:>5} {:>7} {:>12} {:>12} {:>10}",
                    c,
                    row.size,
                    row.mallocs,
                    row.frees,
                    row.live()
                )?;
            }
        }
        Ok(())
    }
}
