//! The page heap (Go's `mheap`): arenas, the page → span map, spans of pages,
//! large objects, and the scavenger. See `lib.rs` for the overview.
//!
//! * **Arenas** are contiguous ranges taken from the [`PageSource`], at least
//!   `S::ARENA_BYTES` (64 MiB on Linux), larger when one request needs more; each
//!   is a whole number of [`CHUNK_BYTES`] chunks and chunk aligned. Arenas are kept
//!   sorted by address, so "lowest slot first" is address order.
//! * **Pages** inside an arena are managed by [`ArenaPages`]: a bitmap with
//!   summaries, address-ordered first fit in O(log pages), implicit coalescing.
//!   Across arenas a segment tree of each arena's longest free run finds the
//!   lowest arena that can serve a request in O(log arenas). Allocation is
//!   therefore first fit over the whole heap in O(log n).
//! * **The page map** ([`PageMap`]) maps any address to its span in O(1): a
//!   two-level radix table over 4 MiB chunks of the 48-bit address space,
//!   whose leaves point into each arena's `spans` array (Go's `heapArena.spans`).
//!   It is read without a lock; entries are published with release stores.
//! * **Scavenger**: free pages are *dirty* (Ready) or *released* (Prepared,
//!   given back through `PageSource::release`). New arena pages start released,
//!   as in Go. After every free the scavenger compares the dirty free pages with
//!   an *allowance* and, when they exceed it, releases the highest ones (see
//!   "Scavenger policy" below); [`PageHeap::scavenge`] releases everything
//!   (Go's `debug.FreeOSMemory`). Allocation is first fit over all free pages,
//!   released ones included, so released memory is reused before the heap grows.
//!
//! ## Scavenger policy
//!
//! Releasing a dirty page costs a system call now and a page fault (with a
//! zeroed page, or a whole zeroed huge page) when it is used again; keeping it
//! costs memory. A page worth releasing is one the heap will not need again
//! soon. The live heap of a churning program wanders: it dips and comes back,
//! and the pages freed by a dip are exactly the ones the rebound needs. A budget
//! tied to the *current* in-use size shrinks in the dip just when the dirty
//! pages grow, so it releases the very pages that are faulted back moments
//! later (the `churn-1m` benchmark, a ~70 MiB footprint, released and faulted
//! back about 200 MiB per 100,000 operations this way). So the allowance follows the *recent peak* of the
//! in-use heap, with "recent" measured in page-heap traffic (this is `no_std`:
//! there is no clock, so, as jemalloc's decay ticks on allocator events, time
//! here is pages allocated and freed):
//!
//! * **Epochs.** An epoch ends when the pages allocated plus pages freed since it
//!   began reach the epoch's in-use peak (at least [`MIN_EPOCH_PAGES`]): one
//!   turnover of the live heap, roughly what Go's GC cycle is. The peak in-use
//!   size of each of the last [`PEAK_EPOCHS`] epochs (and of the current one) is
//!   kept; the recent peak `P` is their maximum.
//! * **Shrinks.** A heap that shrinks keeps the allowance of its old peak for
//!   `PEAK_EPOCHS` epochs of traffic at its new size. Those epochs are as short
//!   as the new heap is small (at least 4 MiB of traffic), so a heap that shrank
//!   for good has its memory released after a few turnovers of what remains,
//!   while a heap that frees everything and builds it again (a request, a batch,
//!   a benchmark round) reuses its dirty pages instead of releasing them and
//!   faulting them back: freeing the whole heap is one epoch, and the rebuild
//!   ends the next one only when it is complete. (Releasing at once when the
//!   heap halved, as an earlier rule did, released 70 MiB a round on
//!   `churn-1m`, whose rounds free everything, and tripled its page faults.)
//!   A heap that goes idle keeps its dirty pages until traffic resumes or
//!   [`PageHeap::scavenge`] (`Heap::scavenge`) is called, as jemalloc without
//!   its background thread does.
//! * **Allowance.** Dirty free pages kept:
//!   `allowance = max(retain, P + P / RETAIN_INUSE_DIVISOR - inuse)`, so the
//!   Ready footprint (in use + dirty) stays within `1.5 * P` or `inuse + retain`.
//!   As `P >= inuse`, this is never below the old budget `inuse / 2`.
//! * **Hysteresis.** When dirty exceeds the allowance, release down to
//!   `allowance - allowance / RELEASE_GAP_DIVISOR` (Go's `reduceExtra` goes a
//!   little below its goal for the same reason), so a heap hovering at the limit
//!   releases in batches of an eighth of the allowance instead of on every free.
//! * **Which pages.** The highest dirty pages go first. Allocation is address
//!   ordered first fit, so the low pages are the ones reused soonest and the high
//!   ones the coldest; released pages therefore gather at the top, and first fit
//!   takes the dirty pages below them before it reaches released ones.
//!
//! The allowance never holds back an explicit [`PageHeap::scavenge`], and the
//! counters (`released_pages`, `scavenged_pages_total`) are moved only by the
//! pages actually released or made Ready, so the statistics stay exact.
//!
//! Locking: everything in [`PageHeap`] is guarded by the heap lock (the
//! `spin::Mutex` around it in [`crate::Heap`]); `&mut self` stands for it.
//! Lock order: per-CPU slot → central → page heap. The page heap takes no other lock.

use core::mem::size_of;
use core::ptr::{null_mut, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU8, Ordering};

use crate::fixalloc::FixAlloc;
use crate::pagealloc::ArenaPages;
use crate::sizeclass::SizeClass;
use crate::source::PageSource;
use crate::span::{Span, SpanList, SpanState, TinyCounts};
use crate::{CHUNK_BYTES, CHUNK_PAGES, PAGE_BYTES, PAGE_SHIFT};

/// Most arenas a heap can have (64 GiB of 64 MiB arenas; more when arenas are larger).
pub const MAX_ARENAS: usize = 4096;

/// Address bits covered by the page map (x86-64 and AArch64 user and kernel halves,
/// taken modulo 2^48).
pub const ADDR_BITS: usize = 48;
const CHUNK_SHIFT: usize = PAGE_SHIFT + CHUNK_PAGES.trailing_zeros() as usize;
const MAP_BITS: usize = ADDR_BITS - CHUNK_SHIFT; // 26
const L1_BITS: usize = 12;
const L2_BITS: usize = MAP_BITS - L1_BITS; // 14
const L1_ENTRIES: usize = 1 << L1_BITS;
const L2_ENTRIES: usize = 1 << L2_BITS;
const ADDR_MASK: usize = (1 << ADDR_BITS) - 1;

/// Dirty free memory (bytes) the scavenger always keeps, whatever the heap's
/// size: below this nothing is released (the `retain` of the allowance).
pub const DEFAULT_RETAIN_BYTES: usize = 16 << 20;

/// The allowance keeps the Ready footprint within `P * (1 + 1 / RETAIN_INUSE_DIVISOR)`,
/// `P` the recent peak of the in-use heap (see "Scavenger policy"): fragmentation
/// holes of a busy heap are reused soon, and releasing them only to fault them back
/// in costs far more than it saves (Go keeps about 10% over its heap goal, which is
/// twice the live heap; jemalloc keeps dirty pages for seconds).
pub const RETAIN_INUSE_DIVISOR: usize = 2;

/// Epochs whose in-use peaks make up the recent peak (besides the current one):
/// a lasting shrink is forgotten after this many turnovers of the smaller heap.
/// `churn-1m` wanders by about a third of its heap over a few turnovers.
pub const PEAK_EPOCHS: usize = 4;

/// Shortest epoch, in pages of traffic (allocated + freed): one chunk, 4 MiB, so
/// that a tiny heap does not age its peak on every span.
pub const MIN_EPOCH_PAGES: usize = CHUNK_PAGES;

/// Once over the allowance, the scavenger releases down to
/// `allowance - allowance / RELEASE_GAP_DIVISOR`: batches of 1/8 of the allowance.
pub const RELEASE_GAP_DIVISOR: usize = 8;

/// The scavenger's clock and memory of the recent in-use peak (see "Scavenger
/// policy" in the module docs). All counts are in pages; guarded by the heap lock.
///
/// Invariant: `epoch_peak >= inuse` of the page heap at all times (it starts an
/// epoch at the in-use size and only in-use growth raises it), so
/// `recent_peak() >= inuse` too.
#[derive(Clone, Copy, Debug)]
pub struct Pacer {
    /// Pages allocated plus pages freed since the current epoch began.
    traffic: usize,
    /// Highest in-use size in the current epoch.
    epoch_peak: usize,
    /// In-use peaks of the last `PEAK_EPOCHS` epochs (a ring; 0 before the heap has had that many).
    past: [usize; PEAK_EPOCHS],
    /// Slot of `past` the next finished epoch goes to.
    next: usize,
    /// Epochs finished (for tests and statistics).
    epochs: u64,
}

impl Pacer {
    pub const fn new() -> Self {
        Pacer {
            traffic: 0,
            epoch_peak: 0,
            past: [0; PEAK_EPOCHS],
            next: 0,
            epochs: 0,
        }
    }

    /// Records `pages` of traffic (allocated or freed) after which `inuse` pages are in use.
    #[inline]
    pub fn tick(&mut self, pages: usize, inuse: usize) {
        self.traffic = self.traffic.saturating_add(pages);
        if inuse > self.epoch_peak {
            self.epoch_peak = inuse;
        }
        // One turnover of the heap at its size in this epoch (so that freeing
        // the whole heap is one epoch, not many ever shorter ones).
        if self.traffic >= self.epoch_peak.max(MIN_EPOCH_PAGES) {
            self.past[self.next] = self.epoch_peak;
            self.next = (self.next + 1) % PEAK_EPOCHS;
            self.epoch_peak = inuse;
            self.traffic = 0;
            self.epochs += 1;
        }
    }

    /// Highest in-use size of the current epoch and the last `PEAK_EPOCHS`.
    #[inline]
    pub fn recent_peak(&self) -> usize {
        self.past.iter().fold(self.epoch_peak, |m, &p| m.max(p))
    }

    /// Epochs finished so far.
    pub fn epochs(&self) -> u64 {
        self.epochs
    }

    /// Dirty free pages the scavenger keeps with `inuse` pages in use and a
    /// retained floor of `retain` pages: `max(retain, P + P / RETAIN_INUSE_DIVISOR - inuse)`,
    /// `P` the recent peak.
    #[inline]
    pub fn allowance(&self, inuse: usize, retain: usize) -> usize {
        let peak = self.recent_peak().max(inuse);
        let footprint = peak.saturating_add(peak / RETAIN_INUSE_DIVISOR);
        retain.max(footprint - inuse)
    }
}

impl Default for Pacer {
    fn default() -> Self {
        Self::new()
    }
}

type SpanSlot = AtomicPtr<Span>;
type L2 = [AtomicPtr<SpanSlot>; L2_ENTRIES];

/// Address → span, for every page of every arena.
///
/// Invariant: for every page of a live span, the entry holds that span; every
/// other page of an arena holds null. Written under the heap lock, read without.
pub struct PageMap {
    l1: [AtomicPtr<L2>; L1_ENTRIES],
}

impl PageMap {
    pub const fn new() -> Self {
        PageMap {
            l1: [const { AtomicPtr::new(null_mut()) }; L1_ENTRIES],
        }
    }

    /// The span holding `addr`, or null if `addr` is not in a live span of this heap.
    #[inline]
    pub fn span_of(&self, addr: usize) -> *mut Span {
        let a = addr & ADDR_MASK;
        let l2 = self.l1[a >> (CHUNK_SHIFT + L2_BITS)].load(Ordering::Acquire);
        if l2.is_null() {
            return null_mut();
        }
        // SAFETY: published L2 tables are never freed.
        let chunk = unsafe { (*l2)[(a >> CHUNK_SHIFT) & (L2_ENTRIES - 1)].load(Ordering::Acquire) };
        if chunk.is_null() {
            return null_mut();
        }
        // SAFETY: a chunk entry points at CHUNK_PAGES slots of an arena's spans array,
        // and arenas are never freed.
        unsafe { (*chunk.add((a >> PAGE_SHIFT) & (CHUNK_PAGES - 1))).load(Ordering::Acquire) }
    }

    /// Points the chunk holding `addr` at `slots` (CHUNK_PAGES entries).
    /// Returns false if the source could not supply an L2 table.
    fn set_chunk<S: PageSource>(
        &self,
        source: &S,
        addr: usize,
        slots: *mut SpanSlot,
        meta: &mut usize,
    ) -> bool {
        let a = addr & ADDR_MASK;
        let e1 = &self.l1[a >> (CHUNK_SHIFT + L2_BITS)];
        let mut l2 = e1.load(Ordering::Acquire);
        if l2.is_null() {
            let bytes = size_of::<L2>();
            let Some(p) = source.alloc(bytes) else {
                return false;
            };
            *meta += bytes;
            if !S::ZEROED {
                // SAFETY: fresh Ready memory of `bytes` bytes; null pointers are all-zero.
                unsafe { p.as_ptr().write_bytes(0, bytes) };
            }
            l2 = p.as_ptr().cast();
            e1.store(l2, Ordering::Release);
        }
        // SAFETY: `l2` is a published table.
        unsafe { (*l2)[(a >> CHUNK_SHIFT) & (L2_ENTRIES - 1)].store(slots, Ordering::Release) };
        true
    }
}

impl Default for PageMap {
    fn default() -> Self {
        Self::new()
    }
}

/// Header of an arena's metadata block: `[Arena][spans: npages slots][ArenaPages meta]`,
/// obtained with `PageSource::alloc`, never freed.
pub struct Arena {
    /// First byte; chunk aligned.
    pub base: usize,
    /// Pages in the arena (multiple of CHUNK_PAGES).
    pub npages: usize,
    /// Index in `PageHeap::arenas` (changes when an arena is inserted below it).
    slot: usize,
    /// Page → span for this arena's pages.
    spans: *mut SpanSlot,
    pub pages: ArenaPages,
}

impl Arena {
    fn page_of(&self, addr: usize) -> usize {
        (addr - self.base) >> PAGE_SHIFT
    }
    fn addr_of(&self, page: usize) -> usize {
        self.base + (page << PAGE_SHIFT)
    }
}

/// Large-object counters (guarded by the heap lock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LargeCounts {
    pub mallocs: u64,
    pub frees: u64,
    /// Bytes of live large spans.
    pub live_bytes: u64,
}

/// A point-in-time view of the page heap's accounting, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageStats {
    pub sys: u64,
    pub inuse: u64,
    pub released: u64,
    pub meta_sys: u64,
    pub arenas: u64,
    pub spans: u64,
    pub large: LargeCounts,
    pub scavenged_total: u64,
    /// Bytes of idle large spans (counted in `inuse`).
    pub large_cached: u64,
}

/// Lists of the large-span cache: one per [`cache_class`] up to
/// [`LARGE_CACHE_MAX_SPAN_PAGES`] (pages 1..=8, then four per doubling).
pub const LARGE_CACHE_SIZES: usize = 8 + 4 * 4;

/// The cache's list for a span of `npages` pages (at most
/// [`LARGE_CACHE_MAX_SPAN_PAGES`]).
#[inline]
fn large_cache_index(npages: usize) -> usize {
    CACHE_INDEX[npages] as usize
}

/// [`large_cache_index_of`] of every span size the cache takes.
static CACHE_INDEX: [u8; LARGE_CACHE_MAX_SPAN_PAGES + 1] = {
    let mut t = [0u8; LARGE_CACHE_MAX_SPAN_PAGES + 1];
    let mut n = 1;
    while n <= LARGE_CACHE_MAX_SPAN_PAGES {
        t[n] = large_cache_index_of(n) as u8;
        n += 1;
    }
    t
};

const fn large_cache_index_of(npages: usize) -> usize {
    let npages = cache_class(npages);
    if npages <= 8 {
        return npages - 1;
    }
    let lg = (npages - 1).ilog2() as usize; // 3..=6
    8 + (lg - 3) * 4 + ((npages - 1) >> (lg - 2)) - 4
}
/// Most pages one cached large span may have (1 MiB): bigger objects are rare
/// enough that the page bitmap's cost does not matter.
pub const LARGE_CACHE_MAX_SPAN_PAGES: usize = (1 << 20) / PAGE_BYTES;
/// Most pages all cached large spans hold together with the default retained
/// floor (4 MiB), reported in `Stats::cached_bytes` and returned by `scavenge`
/// and before the heap grows. A heap told to retain more
/// ([`PageHeap::set_retain_bytes`]) may cache a quarter of its floor, up to
/// [`LARGE_CACHE_LIMIT_PAGES`]: idle spans count against the same allowance as
/// dirty free pages, so this changes which memory is kept, not how much.
pub const LARGE_CACHE_MAX_PAGES: usize = (4 << 20) / PAGE_BYTES;
/// The cache's bound for any retained floor (32 MiB).
pub const LARGE_CACHE_LIMIT_PAGES: usize = (32 << 20) / PAGE_BYTES;

/// Pages of a large object of `bytes` (`None` on overflow): whole pages up to
/// 64 KiB and above 1 MiB; in between, rounded up to a [`cache_class`] (four
/// sizes per doubling, as jemalloc spaces its large classes), so that a span
/// idling in the large-span cache fits the next request of about its size.
/// At most 25% over the request (11% at 9 pages; untouched tail pages cost no
/// memory until used). This is the object's usable size and what `heap_alloc`
/// counts.
#[inline]
pub const fn large_pages(bytes: usize) -> Option<usize> {
    let Some(b) = bytes.checked_add(PAGE_BYTES - 1) else {
        return None;
    };
    let n = b >> crate::PAGE_SHIFT;
    if n <= 8 {
        return Some(if n == 0 { 1 } else { n });
    }
    if n > LARGE_CACHE_MAX_SPAN_PAGES {
        return Some(n);
    }
    Some(cache_class(n))
}

/// The size class of a span of `npages` pages (at most
/// [`LARGE_CACHE_MAX_SPAN_PAGES`]) for the large-span cache's lists: pages
/// 1..=8, then jemalloc's spacing of four sizes per doubling (10, 12, 14, 16,
/// 20, ... 128 pages), rounding up. A request takes only a span of exactly
/// its page count from its class's list (spans resized by `realloc` may have
/// other counts); a promotion may take one of up to twice its count.
const fn cache_class(npages: usize) -> usize {
    if npages <= 8 {
        return npages;
    }
    let sh = (npages - 1).ilog2() - 2;
    (((npages - 1) >> sh) + 1) << sh
}

/// The page heap. See the module documentation.
pub struct PageHeap {
    /// Arenas sorted by `base`; `arenas[..narenas]` are live.
    arenas: [*mut Arena; MAX_ARENAS],
    narenas: usize,
    /// Segment tree over arena slots, `tree_cap` leaves: leaf `tree_cap + i` =
    /// longest free run of arena `i` (0 for empty slots); inner node `1..tree_cap`
    /// = max of its children. Entries from `2 * tree_cap` on are unused.
    tree: [u32; 2 * MAX_ARENAS],
    /// Leaves of `tree`: the smallest power of two `>= narenas` (at least 1), so a
    /// heap of one arena walks no tree at all, one of a few arenas a level or two.
    tree_cap: usize,
    spans: FixAlloc<Span>,
    tiny: FixAlloc<TinyCounts>,
    /// Pages of all arenas.
    sys_pages: usize,
    /// Pages in live spans.
    inuse_pages: usize,
    /// Free pages that are released (Σ arena released_pages).
    released_pages: usize,
    /// Bytes of arena metadata and page-map tables.
    meta_bytes: usize,
    /// Dirty free memory always kept by the scavenger (the allowance's floor).
    retain_bytes: usize,
    /// Most pages idle in the large-span cache: [`LARGE_CACHE_MAX_PAGES`], or a
    /// quarter of a larger `retain_bytes` up to [`LARGE_CACHE_LIMIT_PAGES`].
    cache_max_pages: usize,
    /// The scavenger's traffic clock and recent in-use peak.
    pacer: Pacer,
    scavenged_pages_total: u64,
    pub large: LargeCounts,
    /// Idle large spans, one list per size (newest first): each span in state
    /// `Idle`, on the list of its page count, its page-map entries still naming
    /// it and its pages counted in `inuse_pages`; `cached_pages` is the sum of
    /// their pages (at most [`LARGE_CACHE_MAX_PAGES`]), `ncached` their number.
    large_cache: [SpanList; LARGE_CACHE_SIZES],
    ncached: usize,
    cached_pages: usize,
}

// SAFETY: the raw pointers are to metadata owned by this heap; all access is
// serialised by the heap lock that wraps the PageHeap.
unsafe impl Send for PageHeap {}

impl PageHeap {
    pub const fn new() -> Self {
        PageHeap {
            arenas: [null_mut(); MAX_ARENAS],
            narenas: 0,
            tree: [0; 2 * MAX_ARENAS],
            tree_cap: 1,
            spans: FixAlloc::new(),
            tiny: FixAlloc::new(),
            sys_pages: 0,
            inuse_pages: 0,
            released_pages: 0,
            meta_bytes: 0,
            retain_bytes: DEFAULT_RETAIN_BYTES,
            cache_max_pages: LARGE_CACHE_MAX_PAGES,
            pacer: Pacer::new(),
            scavenged_pages_total: 0,
            large: LargeCounts {
                mallocs: 0,
                frees: 0,
                live_bytes: 0,
            },
            large_cache: [const { SpanList::new() }; LARGE_CACHE_SIZES],
            ncached: 0,
            cached_pages: 0,
        }
    }

    /// Sets how many bytes of dirty free pages are always kept (the floor of the
    /// scavenger's allowance, see [`PageHeap::dirty_allowance`]; `usize::MAX`: never
    /// release on free).
    pub fn set_retain_bytes(&mut self, bytes: usize) {
        self.retain_bytes = bytes;
        self.cache_max_pages =
            (bytes / 4 / PAGE_BYTES).clamp(LARGE_CACHE_MAX_PAGES, LARGE_CACHE_LIMIT_PAGES);
        while self.cached_pages > self.cache_max_pages {
            self.evict_cached();
        }
    }

    /// Most bytes the large-span cache holds now (see [`LARGE_CACHE_MAX_PAGES`]).
    pub fn large_cache_max_bytes(&self) -> usize {
        self.cache_max_pages * PAGE_BYTES
    }

    /// Dirty free pages the scavenger keeps now: `max(retain, P * 3/2 - inuse)`
    /// with `P` the recent in-use peak (see
    /// "Scavenger policy" in the module docs). After every free, dirty free pages
    /// are at most this.
    pub fn dirty_allowance(&self) -> usize {
        self.pacer
            .allowance(self.live_pages(), self.retain_bytes / PAGE_BYTES)
    }

    /// Pages in spans that hold objects: in use, less the large-span cache's
    /// idle spans (which the scavenger counts with the dirty free pages).
    fn live_pages(&self) -> usize {
        self.inuse_pages - self.cached_pages
    }

    /// The scavenger's clock and recent peak, for tests and statistics.
    pub fn pacer(&self) -> &Pacer {
        &self.pacer
    }

    fn arena(&self, slot: usize) -> &Arena {
        // SAFETY: slots below narenas hold live arenas.
        unsafe { &*self.arenas[slot] }
    }

    /// Recomputes arena `slot`'s leaf of the arena tree and its ancestors,
    /// stopping as soon as a node keeps its value (then so do all above it). Most
    /// spans leave their arena's longest free run unchanged, so this is usually
    /// one comparison rather than `log2(tree_cap)` levels.
    fn update_leaf(&mut self, slot: usize) {
        let v = if slot < self.narenas {
            self.arena(slot).pages.max_free_run().min(u32::MAX as usize) as u32
        } else {
            0
        };
        let mut i = self.tree_cap + slot;
        if self.tree[i] == v {
            return;
        }
        self.tree[i] = v;
        while i > 1 {
            i /= 2;
            let m = self.tree[2 * i].max(self.tree[2 * i + 1]);
            if self.tree[i] == m {
                return;
            }
            self.tree[i] = m;
        }
    }

    /// Lowest arena slot whose longest free run is at least `need` pages.
    fn find_arena(&self, need: usize) -> Option<usize> {
        if need > u32::MAX as usize || (self.tree[1] as usize) < need {
            return None;
        }
        let mut i = 1;
        while i < self.tree_cap {
            i = if self.tree[2 * i] as usize >= need {
                2 * i
            } else {
                2 * i + 1
            };
        }
        Some(i - self.tree_cap)
    }

    /// Takes a new arena from the source big enough for `npages` at `align_pages`.
    fn grow<S: PageSource>(
        &mut self,
        source: &S,
        map: &PageMap,
        npages: usize,
        align_pages: usize,
    ) -> Option<usize> {
        if self.narenas == MAX_ARENAS {
            return None;
        }
        let want = npages
            .checked_mul(PAGE_BYTES)?
            .checked_next_multiple_of(CHUNK_BYTES)?;
        let bytes = want.max(S::ARENA_BYTES);
        let arena_pages = bytes / PAGE_BYTES;
        let align = (align_pages.checked_mul(PAGE_BYTES)?).max(CHUNK_BYTES);
        let base = source.reserve(bytes, align)?;
        // SAFETY: just reserved, Reserved state.
        if unsafe { source.commit(base, bytes) }.is_err() {
            // SAFETY: ours, untouched.
            unsafe { source.free(base, bytes) };
            return None;
        }
        let spans_off = size_of::<Arena>().next_multiple_of(64);
        let pages_off = (spans_off + arena_pages * size_of::<SpanSlot>()).next_multiple_of(64);
        let meta = pages_off + ArenaPages::meta_bytes(arena_pages);
        let Some(m) = source.alloc(meta) else {
            // SAFETY: ours, untouched.
            unsafe { source.free(base, bytes) };
            return None;
        };
        let base = base.as_ptr() as usize;
        let m = m.as_ptr();
        // SAFETY: `m` is `meta` fresh Ready bytes, page aligned; the three parts do not overlap.
        let arena = unsafe {
            let spans = m.add(spans_off).cast::<SpanSlot>();
            if !S::ZEROED {
                spans
                    .cast::<u8>()
                    .write_bytes(0, arena_pages * size_of::<SpanSlot>());
            }
            let pages = ArenaPages::init(NonNull::new_unchecked(m.add(pages_off)), arena_pages);
            let a = m.cast::<Arena>();
            a.write(Arena {
                base,
                npages: arena_pages,
                slot: 0,
                spans,
                pages,
            });
            a
        };
        self.meta_bytes += meta.next_multiple_of(S::PAGE_SIZE);
        for c in 0..arena_pages / CHUNK_PAGES {
            // SAFETY: `spans` has arena_pages slots.
            let slots = unsafe { (*arena).spans.add(c * CHUNK_PAGES) };
            if !map.set_chunk(source, base + c * CHUNK_BYTES, slots, &mut self.meta_bytes) {
                // Unpublish what we published; the metadata block is leaked (rare: no memory at all).
                for d in 0..c {
                    map.set_chunk(
                        source,
                        base + d * CHUNK_BYTES,
                        null_mut(),
                        &mut self.meta_bytes,
                    );
                }
                // SAFETY: no span was made in the arena; nobody refers to it.
                unsafe { source.free(NonNull::new_unchecked(base as *mut u8), bytes) };
                return None;
            }
        }
        // Insert sorted by base.
        let pos = self.arenas[..self.narenas].partition_point(|&a| {
            // SAFETY: live arenas.
            unsafe { (*a).base < base }
        });
        self.arenas.copy_within(pos..self.narenas, pos + 1);
        self.arenas[pos] = arena;
        self.narenas += 1;
        for s in pos..self.narenas {
            // SAFETY: live arenas.
            unsafe { (*self.arenas[s]).slot = s };
        }
        if self.narenas > self.tree_cap {
            // Double the tree and build it afresh (O(arenas), once per doubling).
            self.tree_cap *= 2;
            let cap = self.tree_cap;
            for s in 0..cap {
                self.tree[cap + s] = if s < self.narenas {
                    self.arena(s).pages.max_free_run().min(u32::MAX as usize) as u32
                } else {
                    0
                };
            }
            for i in (1..cap).rev() {
                self.tree[i] = self.tree[2 * i].max(self.tree[2 * i + 1]);
            }
        } else {
            for s in pos..self.narenas {
                self.update_leaf(s);
            }
        }
        self.sys_pages += arena_pages;
        self.released_pages += arena_pages;
        Some(pos)
    }

    /// Takes `npages` pages aligned to `align_pages` (a power of two), first fit,
    /// making released pages Ready. Returns the arena slot, the first page and
    /// whether the memory may hold old data.
    fn alloc_pages<S: PageSource>(
        &mut self,
        source: &S,
        map: &PageMap,
        npages: usize,
        align_pages: usize,
    ) -> Option<(usize, usize, bool)> {
        debug_assert!(npages > 0 && align_pages.is_power_of_two());
        let need = npages.checked_add(align_pages - 1)?;
        let (slot, start) = match self.find_arena(need) {
            Some(slot) => (slot, find_aligned(self.arena(slot), npages, align_pages)?),
            None => {
                let slot = self.grow(source, map, npages, align_pages)?;
                (slot, find_aligned(self.arena(slot), npages, align_pages)?)
            }
        };
        // Make released pages Ready first, so a failure leaves everything as it was.
        let arena = self.arenas[slot];
        // SAFETY: live arena; only its `pages` and base are used.
        let a = unsafe { &mut *arena };
        if !make_ready(source, a, start, npages) {
            return None;
        }
        let taken = a.pages.alloc_range(start, npages);
        self.released_pages -= taken.scavenged;
        self.inuse_pages += npages;
        self.pacer.tick(npages, self.live_pages());
        self.update_leaf(slot);
        let needzero = taken.dirty > 0 || (taken.scavenged > 0 && !S::ZEROED);
        Some((slot, start, needzero))
    }

    /// Gives pages back to their arena.
    fn free_pages(&mut self, slot: usize, start: usize, npages: usize) {
        // SAFETY: live arena.
        let a = unsafe { &mut *self.arenas[slot] };
        a.pages.free_range(start, npages);
        self.inuse_pages -= npages;
        self.pacer.tick(npages, self.live_pages());
        self.update_leaf(slot);
    }

    /// A span of `npages` pages at `align_pages` alignment in state `state`, its
    /// page-map entries set; `None` if the source is exhausted.
    pub fn alloc_span<S: PageSource>(
        &mut self,
        source: &S,
        map: &PageMap,
        npages: usize,
        align_pages: usize,
        state: SpanState,
    ) -> Option<NonNull<Span>> {
        let rec = match self.spans.alloc(source) {
            Some(r) => r,
            None if self.release_for_retry(source) => self.spans.alloc(source)?,
            None => return None,
        };
        let found = match self.alloc_pages(source, map, npages, align_pages) {
            None if self.release_for_retry(source) => {
                self.alloc_pages(source, map, npages, align_pages)
            }
            r => r,
        };
        let Some((slot, start, needzero)) = found else {
            // SAFETY: just taken from the pool, unused.
            unsafe { self.spans.free(rec) };
            return None;
        };
        let arena = self.arenas[slot];
        // SAFETY: live arena.
        let addr = unsafe { (*arena).addr_of(start) };
        let s = rec.as_ptr();
        // SAFETY: `rec` is room for a Span; then the span is ours until published.
        unsafe {
            Span::init(s, addr, npages, arena.cast(), state);
            (*s).needzero = needzero;
            self.set_map(arena, start, npages, s);
        }
        Some(rec)
    }

    /// Out of memory: gives every idle large span back to the heap and releases
    /// every dirty free page to the source, so that a retry can have the
    /// source make Ready the pages it needs (a kernel's frames, a budget) from
    /// memory the heap was only keeping for reuse. Returns whether anything was
    /// given back (a retry can succeed).
    fn release_for_retry<S: PageSource>(&mut self, source: &S) -> bool {
        let had_cached = self.ncached > 0;
        self.evict_all_cached();
        let released = self.scavenge(source, usize::MAX);
        had_cached || released > 0
    }

    /// Points the page map entries of `npages` pages at `span` (or null).
    ///
    /// # Safety
    /// `arena` is live and the pages are inside it.
    unsafe fn set_map(&self, arena: *mut Arena, start: usize, npages: usize, span: *mut Span) {
        for p in start..start + npages {
            // SAFETY: `p < arena.npages` (caller), `spans` has npages slots.
            unsafe { (*(*arena).spans.add(p)).store(span, Ordering::Release) };
        }
    }

    /// A span for small objects of `class`, with tiny counters for the tiny class.
    pub fn alloc_small_span<S: PageSource>(
        &mut self,
        source: &S,
        map: &PageMap,
        class: SizeClass,
    ) -> Option<NonNull<Span>> {
        let tiny = if class == crate::sizeclass::TINY_CLASS {
            let t = self.tiny.alloc(source)?;
            // SAFETY: room for the counters; zero is a valid `AtomicU8`.
            unsafe {
                t.as_ptr()
                    .cast::<u8>()
                    .write_bytes(0, size_of::<TinyCounts>())
            };
            t.as_ptr()
        } else {
            null_mut()
        };
        let Some(s) = self.alloc_span(source, map, class.span_pages(), 1, SpanState::Small) else {
            if let Some(t) = NonNull::new(tiny) {
                // SAFETY: unused record from this pool.
                unsafe { self.tiny.free(t) };
            }
            return None;
        };
        // SAFETY: the span is ours (not yet on any list).
        unsafe {
            (*s.as_ptr()).init_small(class);
            (*s.as_ptr()).tiny.store(tiny, Ordering::Relaxed);
        }
        Some(s)
    }

    /// Returns a span's pages to the heap and its record to the pool, then lets
    /// the scavenger trim the dirty free pages to its allowance.
    ///
    /// # Safety
    /// `span` came from this heap, is on no list, and nothing refers to its objects.
    pub unsafe fn free_span<S: PageSource>(&mut self, source: &S, span: NonNull<Span>) {
        // SAFETY: forwarded from the caller.
        unsafe { self.return_span(span) };
        self.trim(source);
    }

    /// [`PageHeap::free_span`] without the trim.
    ///
    /// # Safety
    /// As [`PageHeap::free_span`].
    unsafe fn return_span(&mut self, span: NonNull<Span>) {
        let s = span.as_ptr();
        // SAFETY: the caller hands the span over.
        let (arena, start, npages) = unsafe {
            let arena = (*s).arena.cast::<Arena>();
            let tiny = (*s).tiny.swap(null_mut(), Ordering::Relaxed);
            if let Some(t) = NonNull::new(tiny) {
                self.tiny.free(t);
            }
            (*s).state = SpanState::Dead;
            (arena, (*arena).page_of((*s).start), (*s).npages)
        };
        // SAFETY: the span's pages are in `arena`.
        unsafe { self.set_map(arena, start, npages, null_mut()) };
        // SAFETY: live arena.
        let slot = unsafe { (*arena).slot };
        self.free_pages(slot, start, npages);
        // SAFETY: the record is unused now.
        unsafe { self.spans.free(span) };
    }

    /// Dirty free pages now.
    fn dirty_pages(&self) -> usize {
        self.sys_pages - self.inuse_pages - self.released_pages
    }

    /// Releases dirty free pages beyond [`PageHeap::dirty_allowance`], highest
    /// first, down to `allowance - allowance / RELEASE_GAP_DIVISOR` (the hysteresis
    /// of "Scavenger policy").
    fn trim<S: PageSource>(&mut self, source: &S) {
        if !S::CAN_RELEASE {
            return;
        }
        // Within the retained floor nothing is released: skip the pacer's sums.
        let dirty = self.dirty_pages() + self.cached_pages;
        if dirty <= self.retain_bytes / PAGE_BYTES {
            return;
        }
        let allowance = self.dirty_allowance();
        // Idle large spans are dirty memory nobody uses, as free pages are: they
        // count against the same allowance, and go back to the heap first when
        // it is exceeded (so the cache never raises the footprint's bound).
        if dirty > allowance {
            // Down to the hysteresis target: idle spans go back to the heap
            // first (an evicted span's pages stay dirty, so this does not
            // change `dirty`), only as many as the release needs, so that a
            // small overshoot does not empty the cache.
            let target = allowance - allowance / RELEASE_GAP_DIVISOR;
            let excess = dirty - target;
            while self.ncached > 0 && self.dirty_pages() < excess {
                self.evict_cached();
            }
            self.scavenge(source, excess);
        }
    }

    /// Releases up to `max_pages` dirty free pages, highest addresses first.
    /// Returns the pages released. `usize::MAX` releases everything.
    pub fn scavenge<S: PageSource>(&mut self, source: &S, max_pages: usize) -> usize {
        if !S::CAN_RELEASE {
            return 0;
        }
        let mut left = max_pages;
        for slot in (0..self.narenas).rev() {
            if left == 0 {
                break;
            }
            // SAFETY: live arena.
            let a = unsafe { &mut *self.arenas[slot] };
            let base = a.base;
            let n = a.pages.scavenge(left, |s, n| {
                let p = (base + s * PAGE_BYTES) as *mut u8;
                // SAFETY: dirty free pages are Ready and nothing uses them; `p` is non-null.
                unsafe { source.release(NonNull::new_unchecked(p), n * PAGE_BYTES) };
            });
            left -= n;
        }
        let done = max_pages - left;
        self.released_pages += done;
        self.scavenged_pages_total += done as u64;
        done
    }

    /// A span for a large object of `bytes` (`None` if the source is
    /// exhausted): an idle span of exactly [`large_pages`] pages from the
    /// large-span cache, else fresh pages. The object gets exactly that many.
    pub fn alloc_large<S: PageSource>(
        &mut self,
        source: &S,
        map: &PageMap,
        bytes: usize,
        align: usize,
    ) -> Option<NonNull<Span>> {
        // A zero-byte object still gets (and is accounted as) one page.
        let npages = large_pages(bytes)?;
        self.alloc_large_pages(source, map, npages, npages, align)
    }

    /// A span for an object of `bytes` that `realloc` promotes out of its
    /// size class (see `heap::PROMOTE_MIN`): as [`alloc_large`](Self::alloc_large),
    /// but the idle span taken is the largest of up to twice the pages, whole.
    /// A buffer that grows is likely to grow again into that room, where a
    /// span of its exact size may have a live neighbour (then every rebuild
    /// of the buffer would be copied twice); and a buffer promoted, grown in
    /// place and freed (the pattern of a doubling `Vec`) leaves an idle span
    /// of twice its promoted size, which would otherwise serve no promotion
    /// and walk the heap up through fresh pages. The pages were already held
    /// idle, so taking them keeps as much memory as before.
    pub fn alloc_promoted<S: PageSource>(
        &mut self,
        source: &S,
        map: &PageMap,
        bytes: usize,
        align: usize,
    ) -> Option<NonNull<Span>> {
        let npages = large_pages(bytes)?;
        self.alloc_large_pages(source, map, npages, 2 * npages, align)
    }

    /// A large span of `npages` pages, or an idle one of up to `max` pages
    /// (the largest such).
    fn alloc_large_pages<S: PageSource>(
        &mut self,
        source: &S,
        map: &PageMap,
        npages: usize,
        max: usize,
        align: usize,
    ) -> Option<NonNull<Span>> {
        let align_pages = (align / PAGE_BYTES).max(1);
        let s = match self.take_cached(npages, max, align_pages) {
            Some(s) => s,
            None => self.alloc_span(source, map, npages, align_pages, SpanState::Large)?,
        };
        // SAFETY: a live large span, ours.
        let got = unsafe { (*s.as_ptr()).npages };
        self.large.mallocs += 1;
        self.large.live_bytes += (got * PAGE_BYTES) as u64;
        Some(s)
    }

    /// The newest idle span of exactly `npages` pages (`max == npages`), or
    /// else of the most pages up to `max`, whose start has the alignment,
    /// made `Large` again. Searches the lists of the classes from `max` down
    /// to `npages`: each holds a handful of spans, nearly all of its class's
    /// page count.
    fn take_cached(
        &mut self,
        npages: usize,
        max: usize,
        align_pages: usize,
    ) -> Option<NonNull<Span>> {
        if npages > LARGE_CACHE_MAX_SPAN_PAGES || self.ncached == 0 {
            return None;
        }
        let max = max.min(LARGE_CACHE_MAX_SPAN_PAGES);
        let fits = |s: *mut Span, hi: usize| {
            // SAFETY: listed spans are live records.
            let n = unsafe { (*s).npages };
            n >= npages
                && n <= hi
                && (unsafe { (*s).start } / PAGE_BYTES).is_multiple_of(align_pages)
        };
        let s = (large_cache_index(npages)..=large_cache_index(max))
            .rev()
            .find_map(|i| self.large_cache[i].iter().find(|&s| fits(s, max)))
            .unwrap_or(null_mut());
        if s.is_null() {
            return None;
        }
        // SAFETY: `s` is on its list; the record is live and ours again.
        let got = unsafe {
            let got = (*s).npages;
            self.large_cache[large_cache_index(got)].remove(s);
            (*s).state = SpanState::Large;
            (*s).needzero = true;
            got
        };
        self.ncached -= 1;
        self.cached_pages -= got;
        NonNull::new(s)
    }

    /// Gives the pages of span `s` past its first `npages` back to the heap (no trim).
    ///
    /// # Safety
    /// `s` is a live span of more than `npages` pages, owned by the caller.
    unsafe fn cut_tail(&mut self, s: *mut Span, npages: usize) {
        // SAFETY: live span and arena; the tail pages are ours.
        unsafe {
            let arena = (*s).arena.cast::<Arena>();
            let (start, old) = ((*arena).page_of((*s).start), (*s).npages);
            self.set_map(arena, start + npages, old - npages, null_mut());
            self.free_pages((*arena).slot, start + npages, old - npages);
            (*s).npages = npages;
            (*s).elemsize = (npages * PAGE_BYTES).min(u32::MAX as usize) as u32;
        }
    }

    /// Gives one idle span back to the heap (no trim): the newest of the size
    /// class that holds the most spans (by count times class size).
    fn evict_cached(&mut self) {
        let mut best = (0, 0);
        for (i, l) in self.large_cache.iter().enumerate() {
            // SAFETY: listed spans are live records.
            let pages = if l.is_empty() {
                0
            } else {
                l.len() * cache_class(unsafe { (*l.first()).npages })
            };
            if pages > best.1 {
                best = (i, pages);
            }
        }
        let s = self.large_cache[best.0].first();
        debug_assert!(!s.is_null());
        // SAFETY: `s` is on that list: an idle span.
        unsafe { self.uncache(s) };
    }

    /// Returns every idle large span's pages to the heap (for scavenging, and
    /// before the heap would otherwise fail).
    pub fn flush_large_cache<S: PageSource>(&mut self, source: &S) {
        self.evict_all_cached();
        self.trim(source);
    }

    /// Takes idle span `s` off its cache list and gives its pages back to the heap (no trim).
    ///
    /// # Safety
    /// `s` is an idle span on its cache list.
    unsafe fn uncache(&mut self, s: *mut Span) {
        // SAFETY: as the caller promises.
        unsafe {
            let npages = (*s).npages;
            self.large_cache[large_cache_index(npages)].remove(s);
            self.ncached -= 1;
            self.cached_pages -= npages;
            self.return_span(NonNull::new_unchecked(s));
        }
    }

    /// The arena page just after span `s` (in `s`'s arena).
    fn page_after(&self, s: &Span) -> usize {
        // SAFETY: a live span's arena is live.
        unsafe { (*s.arena.cast::<Arena>()).page_of(s.start) + s.npages }
    }

    /// Gives every idle span back to the heap (no trim).
    fn evict_all_cached(&mut self) {
        while self.ncached > 0 {
            self.evict_cached();
        }
    }

    /// Bytes held by idle large spans.
    pub fn large_cached_bytes(&self) -> usize {
        self.cached_pages * PAGE_BYTES
    }

    /// Frees a large object's span.
    ///
    /// # Safety
    /// As [`PageHeap::free_span`]; the span is `Large`.
    pub unsafe fn free_large<S: PageSource>(&mut self, source: &S, span: NonNull<Span>) {
        // SAFETY: the caller hands us a live large span.
        let bytes = unsafe { (*span.as_ptr()).npages * PAGE_BYTES };
        self.large.frees += 1;
        self.large.live_bytes -= bytes as u64;
        let npages = bytes / PAGE_BYTES;
        if npages <= LARGE_CACHE_MAX_SPAN_PAGES {
            while self.cached_pages + npages > self.cache_max_pages {
                self.evict_cached();
            }
            // SAFETY: the caller hands the span over (on no list); it stays whole.
            unsafe {
                (*span.as_ptr()).state = SpanState::Idle;
                self.large_cache[large_cache_index(npages)].push(span.as_ptr());
            }
            self.ncached += 1;
            self.cached_pages += npages;
            self.trim(source);
            return;
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.free_span(source, span) };
    }

    /// Resizes a large span in place to `npages`: shrinking frees the tail, growing
    /// takes the following pages if they are free. Returns false if it cannot.
    ///
    /// # Safety
    /// `span` is a live large span of this heap, owned by the caller.
    pub unsafe fn resize_large<S: PageSource>(
        &mut self,
        source: &S,
        span: NonNull<Span>,
        npages: usize,
    ) -> bool {
        let s = span.as_ptr();
        // SAFETY: live span and arena.
        let (arena, start, old) = unsafe {
            let arena = (*s).arena.cast::<Arena>();
            (arena, (*arena).page_of((*s).start), (*s).npages)
        };
        // SAFETY: live arena.
        let slot = unsafe { (*arena).slot };
        if npages == old {
            return true;
        }
        if npages < old {
            // SAFETY: the caller's live span.
            unsafe { self.cut_tail(s, npages) };
            self.large.live_bytes -= ((old - npages) * PAGE_BYTES) as u64;
            self.trim(source);
        } else {
            let extra = npages - old;
            // SAFETY: live arena.
            if start + npages > unsafe { (*arena).npages } {
                return false;
            }
            // Idle spans of the large-span cache in the way are free memory:
            // if only they stand in the way, give them back to the heap.
            for evict in [false, true] {
                let mut p = start + old;
                while p < start + npages {
                    // SAFETY: `p` is a page of the arena; its map slot holds a live span or null.
                    let t = unsafe { (*(*arena).spans.add(p)).load(Ordering::Acquire) };
                    // SAFETY: non-null map entries are live span records.
                    match unsafe { t.as_ref() } {
                        None => p += 1,
                        Some(idle) if idle.state == SpanState::Idle => {
                            p = self.page_after(idle);
                            if evict {
                                // SAFETY: an idle span on its cache list, ours under the heap lock.
                                unsafe { self.uncache(t) };
                            }
                        }
                        Some(_) => return false,
                    }
                }
            }
            // SAFETY: live arena.
            let a = unsafe { &mut *arena };
            if !a.pages.is_free(start + old, extra) {
                return false;
            }
            if !make_ready(source, a, start + old, extra) {
                return false;
            }
            let taken = a.pages.alloc_range(start + old, extra);
            self.released_pages -= taken.scavenged;
            self.inuse_pages += extra;
            self.pacer.tick(extra, self.live_pages());
            self.update_leaf(slot);
            // SAFETY: pages inside the arena; live span.
            unsafe {
                self.set_map(arena, start + old, extra, s);
                (*s).npages = npages;
            }
            self.large.live_bytes += (extra * PAGE_BYTES) as u64;
        }
        // SAFETY: live span.
        unsafe { (*s).elemsize = (npages * PAGE_BYTES).min(u32::MAX as usize) as u32 };
        true
    }

    /// Accounting snapshot.
    pub fn stats(&self) -> PageStats {
        let meta = self.meta_bytes + self.spans.sys_bytes() + self.tiny.sys_bytes();
        PageStats {
            sys: (self.sys_pages * PAGE_BYTES) as u64,
            inuse: (self.inuse_pages * PAGE_BYTES) as u64,
            released: (self.released_pages * PAGE_BYTES) as u64,
            meta_sys: meta as u64,
            arenas: self.narenas as u64,
            spans: self.spans.inuse() as u64,
            large: self.large,
            scavenged_total: self.scavenged_pages_total * PAGE_BYTES as u64,
            large_cached: (self.cached_pages * PAGE_BYTES) as u64,
        }
    }

    /// Walks every arena and checks the heap's counting identities; panics with
    /// a message on the first violation.
    pub fn check_invariants(&self) {
        let (mut sys, mut free, mut released) = (0, 0, 0);
        for slot in 0..self.narenas {
            let a = self.arena(slot);
            assert_eq!(a.slot, slot, "arena {:#x}: slot index stale", a.base);
            if slot > 0 {
                assert!(
                    self.arena(slot - 1).base + self.arena(slot - 1).npages * PAGE_BYTES <= a.base,
                    "arenas unsorted or overlapping"
                );
            }
            a.pages.check_invariants();
            assert_eq!(
                self.tree[self.tree_cap + slot] as usize,
                a.pages.max_free_run().min(u32::MAX as usize),
                "arena tree leaf stale"
            );
            sys += a.npages;
            free += a.pages.free_pages();
            released += a.pages.released_pages();
        }
        assert_eq!(sys, self.sys_pages, "sys_pages");
        assert_eq!(
            sys - free,
            self.inuse_pages,
            "inuse_pages != pages not free"
        );
        assert_eq!(released, self.released_pages, "released_pages");
        assert!(
            self.tree_cap.is_power_of_two()
                && self.narenas <= self.tree_cap
                && self.tree_cap <= MAX_ARENAS,
            "tree_cap {}",
            self.tree_cap
        );
        let (mut cached, mut n) = (0, 0);
        for (i, l) in self.large_cache.iter().enumerate() {
            for s in l.iter() {
                // SAFETY: cached spans are live records.
                let s = unsafe { &*s };
                assert!(
                    s.state == SpanState::Idle
                        && s.npages <= LARGE_CACHE_MAX_SPAN_PAGES
                        && large_cache_index(s.npages) == i,
                    "cached large span {:#x}",
                    s.start
                );
                cached += s.npages;
                n += 1;
            }
        }
        assert_eq!(
            (cached, n),
            (self.cached_pages, self.ncached),
            "cached_pages, ncached"
        );
        assert!(self.cached_pages <= self.cache_max_pages);
        assert!(
            self.tree_cap == 1 || self.narenas > self.tree_cap / 2,
            "tree_cap {} too big for {} arenas",
            self.tree_cap,
            self.narenas
        );
        for slot in self.narenas..self.tree_cap {
            assert_eq!(
                self.tree[self.tree_cap + slot],
                0,
                "empty arena slot {slot} in the tree"
            );
        }
        for i in 1..self.tree_cap {
            assert_eq!(
                self.tree[i],
                self.tree[2 * i].max(self.tree[2 * i + 1]),
                "arena tree node {i}"
            );
        }
    }
}

impl Default for PageHeap {
    fn default() -> Self {
        Self::new()
    }
}

/// First fit of `npages` free pages in `a` whose *address* is aligned to
/// `align_pages` pages. `ArenaPages::find_aligned` aligns the page index within
/// the arena, which is the address alignment only up to the arena base's own
/// alignment (a chunk, or what `grow` asked for); above it, try each aligned
/// address in turn (at most `a.npages / align_pages` of them, a few).
fn find_aligned(a: &Arena, npages: usize, align_pages: usize) -> Option<usize> {
    let skew = (a.base >> PAGE_SHIFT) & (align_pages - 1);
    if skew == 0 {
        return a.pages.find_aligned(npages, align_pages);
    }
    let mut s = align_pages - skew;
    while s.checked_add(npages)? <= a.npages {
        if a.pages.is_free(s, npages) {
            return Some(s);
        }
        s += align_pages;
    }
    None
}

/// Makes the released pages of free range `[start, start+n)` of `a` Ready. On
/// failure, the runs already made Ready are released again, so the range is
/// exactly as before, and false is returned.
fn make_ready<S: PageSource>(source: &S, a: &mut Arena, start: usize, n: usize) -> bool {
    let base = a.base;
    let run_ptr = |p: usize| {
        // SAFETY: arena addresses are never null.
        unsafe { NonNull::new_unchecked((base + p * PAGE_BYTES) as *mut u8) }
    };
    let (mut ok_runs, mut failed) = (0usize, false);
    a.pages.released_runs(start, n, |p, k| {
        if !failed {
            // SAFETY: released free pages are in the Prepared state.
            match unsafe { source.ready(run_ptr(p), k * PAGE_BYTES) } {
                Ok(()) => ok_runs += 1,
                Err(_) => failed = true,
            }
        }
    });
    if failed {
        a.pages.released_runs(start, n, |p, k| {
            if ok_runs > 0 {
                ok_runs -= 1;
                // SAFETY: this run was made Ready above and nothing has used it.
                unsafe { source.release(run_ptr(p), k * PAGE_BYTES) };
            }
        });
    }
    !failed
}

/// Live count of a tiny block in the span's counters.
#[inline]
pub fn tiny_counter(span: &Span, idx: usize) -> &AtomicU8 {
    let t = span.tiny.load(Ordering::Relaxed);
    debug_assert!(!t.is_null());
    // SAFETY: tiny-class spans always carry counters for as long as they are live.
    unsafe { &(*t)[idx] }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_pages_and_cache_classes() {
        assert_eq!(large_pages(0), Some(1));
        assert_eq!(large_pages(1), Some(1));
        assert_eq!(large_pages(8 * PAGE_BYTES + 1), Some(10));
        assert_eq!(large_pages(16 * PAGE_BYTES + 1), Some(20));
        assert_eq!(large_pages(1 << 20), Some(128));
        assert_eq!(
            large_pages((1 << 20) + 1),
            Some(129),
            "whole pages above 1 MiB"
        );
        assert_eq!(large_pages(usize::MAX), None);
        assert_eq!(cache_class(8), 8);
        assert_eq!(cache_class(9), 10);
        assert_eq!(cache_class(17), 20);
        assert_eq!(cache_class(128), 128);
        let mut prev = 0;
        for n in 1..=LARGE_CACHE_MAX_SPAN_PAGES {
            let r = cache_class(n);
            assert!(r >= n && r >= prev, "monotone and never short: {n} -> {r}");
            assert!(r * 4 <= n * 5, "at most 25% over: {n} -> {r}");
            prev = r;
        }
        // Four classes per doubling between 64 KiB and 1 MiB, each its own cache list.
        let sizes: std::collections::BTreeSet<usize> = (1..=128).map(cache_class).collect();
        assert_eq!(sizes.len(), LARGE_CACHE_SIZES);
        let idx: std::vec::Vec<usize> = sizes.iter().map(|&n| large_cache_index(n)).collect();
        assert_eq!(idx, (0..LARGE_CACHE_SIZES).collect::<std::vec::Vec<_>>());
    }

    /// Epochs end after one turnover of the in-use heap (at least MIN_EPOCH_PAGES).
    #[test]
    fn pacer_epoch_is_one_turnover() {
        let mut p = Pacer::new();
        let inuse = 4 * MIN_EPOCH_PAGES;
        p.tick(inuse, inuse); // the heap filled: one turnover already
        assert_eq!(p.epochs(), 1);
        for _ in 0..3 {
            p.tick(MIN_EPOCH_PAGES, inuse);
        }
        assert_eq!(p.epochs(), 1, "three quarters of a turnover");
        p.tick(MIN_EPOCH_PAGES, inuse);
        assert_eq!(p.epochs(), 2);
        // A tiny heap still needs MIN_EPOCH_PAGES of traffic.
        let mut q = Pacer::new();
        q.tick(MIN_EPOCH_PAGES - 1, 1);
        assert_eq!(q.epochs(), 0);
        q.tick(1, 1);
        assert_eq!(q.epochs(), 1);
    }

    /// The recent peak survives PEAK_EPOCHS further epochs, then is forgotten.
    #[test]
    fn pacer_forgets_peak_after_peak_epochs() {
        let mut p = Pacer::new();
        let (big, small) = (8 * MIN_EPOCH_PAGES, 5 * MIN_EPOCH_PAGES);
        p.tick(big, big);
        p.tick(big - small, small); // a dip, same epoch (traffic < big)
        assert_eq!(p.recent_peak(), big);
        let mut epochs = p.epochs();
        let mut turnovers = 0;
        while p.recent_peak() == big {
            p.tick(small, small);
            assert_eq!(
                p.epochs(),
                epochs + 1,
                "each tick of `small` pages is one epoch"
            );
            epochs += 1;
            turnovers += 1;
        }
        assert_eq!(turnovers, PEAK_EPOCHS + 1);
        assert_eq!(p.recent_peak(), small);
    }

    /// allowance = max(retain, P * 3/2 - inuse), P the recent peak.
    #[test]
    fn pacer_allowance() {
        let mut p = Pacer::new();
        p.tick(1000, 1000);
        assert_eq!(p.recent_peak(), 1000);
        assert_eq!(p.allowance(1000, 0), 500, "at the peak: the in-use share");
        assert_eq!(p.allowance(1000, 800), 800, "the retained floor");
        assert_eq!(p.allowance(600, 0), 900, "a dip keeps the peak's footprint");
        assert_eq!(
            p.allowance(0, 7),
            1500,
            "everything freed: the peak's footprint, until the peak ages out"
        );
        assert_eq!(p.allowance(2000, 0), 1000, "above the recorded peak");
        assert_eq!(Pacer::new().allowance(0, 7), 7, "no peak: only retain");
        assert_eq!(Pacer::new().allowance(0, usize::MAX), usize::MAX);
    }

    /// Freeing the whole heap is one epoch; the rebuild ends the next only when
    /// it is complete, so the old peak survives both.
    #[test]
    fn pacer_keeps_the_peak_through_free_all_and_rebuild() {
        let mut p = Pacer::new();
        let big = 16 * MIN_EPOCH_PAGES;
        p.tick(big, big); // built: one epoch (traffic reached the peak)
        let e = p.epochs();
        for k in 1..=16 {
            p.tick(MIN_EPOCH_PAGES, big - k * MIN_EPOCH_PAGES);
        }
        assert_eq!(
            p.epochs(),
            e + 1,
            "freeing everything ended exactly one epoch"
        );
        for k in 1..=16 {
            p.tick(MIN_EPOCH_PAGES, k * MIN_EPOCH_PAGES);
            assert_eq!(p.recent_peak(), big);
        }
        assert!(p.epochs() <= e + 2);
    }
}
