//! The page heap (Go's `mheap`): spans of pages for the tiers above, large
//! objects, and the memory of the arenas. See `lib.rs` for the overview.
//!
//! Rooms, each with its own invariants:
//!
//! * [`arenas`] — the contiguous ranges taken from the [`PageSource`], sorted
//!   by address, and the tree that finds the lowest one with room; first fit
//!   over the whole heap in O(log n); smaller arenas when a reservation
//!   fails, and wholly free ones given back while address space is short. Each arena's pages are a bitmap with
//!   summaries ([`pagealloc`], Go's `pageAlloc` chunk).
//! * [`map`] — address → span in O(1), read without a lock ([`PageMap`]).
//! * [`large_cache`] — freed large spans kept whole for the next request of
//!   their size, and the page rounding of large objects ([`large_pages`]).
//! * [`scavenger`] — which dirty free pages go back to the source, and when
//!   (the policy essay, the [`scavenger::Pacer`]).
//!
//! This file holds [`PageHeap`] itself — spans in and out, large objects,
//! in-place resizing, the counters — and the interface the tiers above use
//! ([`Below`], [`HeapLock`]).
//!
//! Counting identities (checked by [`PageHeap::check_invariants`]):
//! `sys_pages = Σ arena pages` (of the live arenas: a released arena's pages
//! leave `sys_pages`, its released pages `released_pages`); `inuse_pages + meta_pages = sys_pages − Σ free pages`
//! (idle large spans count as in use); `released_pages = Σ released pages`.
//!
//! Locking: everything in [`PageHeap`] is guarded by the heap lock (the
//! [`HeapLock`] around it in [`crate::Heap`]); `&mut self` stands for it.
//! Lock order: per-CPU slot → central (or a stack pool) → page heap. The
//! page heap takes no other lock.

mod arenas;
pub(crate) mod large_cache;
mod map;
pub(crate) mod pagealloc;
pub(crate) mod scavenger;

use core::ptr::{null_mut, NonNull};

use crate::fixalloc::FixAlloc;
use crate::sizeclass::{ClassInfo, Geometry, SizeClass};
use crate::source::{PageSource, SourcePage};
use crate::span::{bitmap_words, record_tail, Span, SpanState};
use crate::sync::Lock;
use crate::units::{ArenaSlot, PageIdx, PageSize, Pages};

use arenas::{Arena, Arenas};
use large_cache::LargeCache;
use scavenger::Scavenger;

pub use large_cache::{
    large_pages, LARGE_CACHE_LIMIT_PAGES, LARGE_CACHE_MAX_PAGES, LARGE_CACHE_MAX_SPAN_PAGES,
};
pub(crate) use map::Entry;
pub use map::PageMap;
pub use scavenger::{
    Decay, Pacer, DEFAULT_DECAY_MS, DEFAULT_RETAIN_BYTES, MIN_EPOCH_PAGES, PEAK_EPOCHS,
    RELEASE_GAP_DIVISOR, RETAIN_INUSE_DIVISOR,
};

/// The heap lock: the page heap behind a spin lock whose waiters relax with `X`.
pub type HeapLock<X> = Lock<PageHeap, X>;

/// What the tiers above the page heap (central lists, stack pools) need
/// from it: the source, the page map, and the page heap behind its lock.
pub struct Below<'a, S: PageSource, X> {
    /// The page source.
    pub source: &'a S,
    /// The page map (read without a lock).
    pub map: &'a PageMap,
    /// The page heap.
    pub heap: &'a HeapLock<X>,
    /// With `hardened`: the secret under which a fresh span of small
    /// objects of one page marks its objects carved
    /// ([`crate::span::Span::mark_slots`]), or `None` where no fast path
    /// relies on the marks.
    #[cfg(feature = "hardened")]
    pub secret: Option<usize>,
}

/// Large-object counters (guarded by the heap lock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LargeCounts {
    /// Large objects allocated, cumulative.
    pub mallocs: u64,
    /// Large objects freed, cumulative.
    pub frees: u64,
    /// Bytes of live large spans.
    pub live_bytes: u64,
}

/// A point-in-time view of the page heap's accounting, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageStats {
    /// Bytes of all arenas.
    pub sys: u64,
    /// Bytes in live spans (idle large spans included).
    pub inuse: u64,
    /// Bytes of free pages released to the source.
    pub released: u64,
    /// Bytes of metadata (arena blocks, page-map tables, span and tiny pools).
    pub meta_sys: u64,
    /// Arenas.
    pub arenas: u64,
    /// Live span records.
    pub spans: u64,
    /// Large-object counters.
    pub large: LargeCounts,
    /// Bytes released by the scavenger, cumulative.
    pub scavenged_total: u64,
    /// Bytes of idle large spans (counted in `inuse`).
    pub large_cached: u64,
    /// Times wholly free arenas were given back to the source, cumulative
    /// (address space short: see `arenas`).
    pub arenas_freed: u64,
}

/// Records per chunk of arena pages for a metadata pool of a heap over small
/// arenas (rounded up to whole pages).
const SMALL_POOL_RECORDS: usize = 4;

/// Longest span a heap over small arenas stretches its small spans to
/// ([`span_target_for`]): Go's one page of 8 KiB.
pub const MAX_SPAN_TARGET: usize = 8 << 10;

/// Bytes of a bounded source per byte of span target: a heap over small
/// arenas stretches each small span to about `bound / SPAN_TARGET_DIV`
/// bytes (at most [`MAX_SPAN_TARGET`]), a whole multiple of its geometry's
/// span. Short spans strand little memory in each class's partly used
/// span, which decides a region of kilobytes; long ones spread a span's
/// record (its links and bitmap) and the page map over more objects, which
/// decides a region of megabytes.
pub const SPAN_TARGET_DIV: usize = 2048;

/// The span target for a source bounded by `bound` (0: the geometry's spans).
pub const fn span_target_for(bound: Option<usize>) -> usize {
    match bound {
        None => 0,
        Some(b) => {
            let t = b / SPAN_TARGET_DIV;
            if t > MAX_SPAN_TARGET {
                MAX_SPAN_TARGET
            } else {
                t
            }
        }
    }
}

/// Most objects a stretched span holds (unless its geometry's span holds
/// more): every span record carries a bitmap as long as the fullest span's,
/// so the smallest classes' spans stretch no further than four words of it.
pub const MAX_STRETCHED_OBJECTS: usize = 128;

/// Class `c`'s row of `g` with its span stretched to a whole multiple of
/// itself of at most `target` bytes and [`MAX_STRETCHED_OBJECTS`] objects
/// (or left as it is).
pub const fn stretched(g: &Geometry, c: SizeClass, target: usize) -> ClassInfo {
    let mut r = g.info(c);
    let span = r.npages as usize * g.page_bytes();
    let mut k = target / span;
    let most = MAX_STRETCHED_OBJECTS / r.objects as usize;
    if k > most {
        k = most;
    }
    if k > 1 {
        r.npages *= k as u32;
        r.objects = ((r.npages as usize * g.page_bytes()) / r.size as usize) as u32;
    }
    r
}

/// Words of each span bitmap for `g` stretched to `target`: the most
/// objects any stretched span holds, and at least one word (stack pools
/// hold up to 64 stacks).
pub const fn stretched_words(g: &Geometry, target: usize) -> usize {
    let mut most = 0;
    let mut i = 1;
    while i < g.count {
        if let Some(c) = SizeClass::new(i) {
            let n = stretched(g, c, target).objects as usize;
            if n > most {
                most = n;
            }
        }
        i += 1;
    }
    let w = most.div_ceil(64);
    if w == 0 {
        1
    } else {
        w
    }
}

/// Pages a span was carved from.
struct Run {
    slot: ArenaSlot,
    start: PageIdx,
    /// The pages may hold old data.
    needzero: bool,
}

/// The page heap. See the module documentation.
pub struct PageHeap {
    /// The arenas and their pages.
    arenas: Arenas,
    /// Span records (never from the heap itself).
    spans: FixAlloc<Span>,
    /// Pages of all arenas.
    sys_pages: Pages,
    /// Pages in live spans (idle large spans included).
    inuse_pages: Pages,
    /// Free pages that are released (Σ over the arenas).
    released_pages: Pages,
    /// Bytes of arena metadata and page-map tables.
    meta_bytes: usize,
    /// Small spans are stretched to about this many bytes, and every span
    /// record has bitmaps of `span_words` words (0: not chosen yet; see
    /// [`PageHeap::span_shape`]).
    span_target: usize,
    span_words: usize,
    /// Arena pages that hold span records and tiny counters (small arenas
    /// only): in use for ever, counted with the metadata, not as heap.
    meta_pages: Pages,
    /// Large-object counters.
    large: LargeCounts,
    /// Idle large spans.
    large_cache: LargeCache,
    /// The scavenger's clock, floor and totals.
    scavenger: Scavenger,
    /// Times wholly free arenas were released to the source (cumulative).
    arenas_freed: u64,
}

// SAFETY: the raw pointers are to metadata owned by this heap; all access is
// serialised by the heap lock that wraps the PageHeap.
unsafe impl Send for PageHeap {}

impl Default for PageHeap {
    fn default() -> Self {
        Self::new()
    }
}

impl PageHeap {
    /// An empty page heap: no arenas until the first span. Its pages are its
    /// source's (`S::GEOMETRY`'s); the methods that do not take the source
    /// take the page size.
    pub const fn new() -> Self {
        PageHeap {
            arenas: Arenas::new(),
            spans: FixAlloc::new(),
            sys_pages: Pages::ZERO,
            inuse_pages: Pages::ZERO,
            released_pages: Pages::ZERO,
            meta_bytes: 0,
            meta_pages: Pages::ZERO,
            span_target: 0,
            span_words: 0,
            large: LargeCounts {
                mallocs: 0,
                frees: 0,
                live_bytes: 0,
            },
            large_cache: LargeCache::new(),
            scavenger: Scavenger::new(),
            arenas_freed: 0,
        }
    }

    /// The arena a live span lies in.
    ///
    /// # Safety
    /// `s` is a live span record of this heap.
    unsafe fn arena_of(&self, s: *const Span) -> *mut Arena {
        // SAFETY: the caller's live span; an arena with a live span is never
        // released, and metadata blocks are never freed.
        let a = self.arenas.holding(unsafe { (*s).start });
        debug_assert!(!a.is_null(), "a live span lies in an arena");
        a
    }

    /// Most bytes the large-span cache holds now (see [`LARGE_CACHE_MAX_PAGES`]).
    pub fn large_cache_max_bytes(&self, page: PageSize) -> usize {
        self.large_cache.max_pages().bytes(page)
    }

    /// Bytes held by idle large spans.
    pub fn large_cached_bytes(&self, page: PageSize) -> usize {
        self.large_cache.pages().bytes(page)
    }

    /// Pages in spans that hold objects: in use, less the large-span cache's
    /// idle spans (which the scavenger counts with the dirty free pages).
    fn live_pages(&self) -> Pages {
        self.inuse_pages - self.large_cache.pages()
    }

    /// Settles the page map's window of a source that has one
    /// ([`PageSource::WINDOW_BYTES`]): takes the first arena now if there is
    /// none yet, which opens the window, or gives the window up if that
    /// arena cannot be made. Afterwards the window's fields never change, so
    /// whoever synchronises with a publication made after this reads them
    /// plainly ([`PageMap::window_entry_settled`]). The heap calls it before
    /// it publishes its per-CPU caches.
    pub fn settle_window<S: PageSource>(&mut self, source: &S, map: &PageMap) {
        if S::WINDOW_BYTES == 0 || self.arenas.window_settled() {
            return;
        }
        // Failure leaves no arena and gives the window up below.
        let _ = self.grow(source, map, Pages::new(1), 1);
        self.arenas.give_up_window();
    }

    /// A new arena for `npages` at `align_pages` ([`Arenas::grow`]), its
    /// pages counted as the source's and released (Reserved until used).
    fn grow<S: PageSource>(
        &mut self,
        source: &S,
        map: &PageMap,
        npages: Pages,
        align_pages: usize,
    ) -> Option<ArenaSlot> {
        let slot = self
            .arenas
            .grow(source, map, npages, align_pages, &mut self.meta_bytes)?;
        let pages = self.arenas.get(slot).npages;
        self.sys_pages += pages;
        self.released_pages += pages;
        Some(slot)
    }

    /// Takes `npages` pages aligned to `align_pages` (a power of two), first fit,
    /// making released pages Ready.
    fn alloc_pages<S: PageSource>(
        &mut self,
        source: &S,
        map: &PageMap,
        npages: Pages,
        align_pages: usize,
    ) -> Option<Run> {
        debug_assert!(npages > Pages::ZERO && align_pages.is_power_of_two());
        let need = npages.checked_add(Pages::new(align_pages - 1))?;
        let slot = match self.arenas.find(need) {
            Some(slot) => slot,
            None => self.grow(source, map, npages, align_pages)?,
        };
        let a = self.arenas.get_mut(slot);
        let start = a.find_aligned(npages, align_pages)?;
        // Make released pages Ready first, so a failure leaves everything as it was.
        if !a.make_ready(source, start, npages) {
            return None;
        }
        let taken = a.alloc_range(start, npages);
        self.released_pages -= Pages::new(taken.scavenged);
        self.inuse_pages += npages;
        self.scavenger.pacer.tick(npages, self.live_pages());
        self.scavenger.decay.note(self.idle_pages());
        self.arenas.update_leaf(slot);
        let needzero = taken.dirty > 0 || (taken.scavenged > 0 && !S::ZEROED);
        Some(Run {
            slot,
            start,
            needzero,
        })
    }

    /// For a heap over small arenas, pages for a metadata pool: records do
    /// not come from the source there, where every byte is the heap's to
    /// share. Null when the arenas have no room (the pool then asks the
    /// source, as elsewhere).
    fn meta_chunk<S: PageSource>(
        &mut self,
        source: &S,
        map: &PageMap,
        bytes: usize,
    ) -> Option<(NonNull<u8>, usize)> {
        let n = Pages::of_bytes(bytes, S::PAGE)?;
        // Highest fit, so that records gather at the top of the arena and
        // leave first fit's free ranges whole; the first chunk (no arena yet)
        // comes with the arena's growth.
        let top = self
            .arenas
            .slots()
            .rev()
            .find_map(|slot| Some((slot, self.arenas.get(slot).find_last(n)?)));
        let (slot, start) = match top {
            Some(fit) => fit,
            None => {
                let run = self.alloc_pages(source, map, n, 1)?;
                self.inuse_pages -= n;
                self.meta_pages += n;
                let p = self.arenas.get(run.slot).addr_of(run.start);
                return Some((NonNull::new(p.as_ptr())?, n.bytes(S::PAGE)));
            }
        };
        let a = self.arenas.get_mut(slot);
        if !a.make_ready(source, start, n) {
            return None;
        }
        let taken = a.alloc_range(start, n);
        let p = a.addr_of(start);
        self.released_pages -= Pages::new(taken.scavenged);
        self.meta_pages += n;
        self.arenas.update_leaf(slot);
        Some((NonNull::new(p.as_ptr())?, n.bytes(S::PAGE)))
    }

    /// For a heap over small arenas, gives the metadata pool `pool` picks a
    /// chunk of arena pages when it has no room ([`PageHeap::meta_chunk`]);
    /// if the arenas have none either, the pool asks the source as elsewhere.
    fn feed_pool<S: PageSource, T>(
        &mut self,
        source: &S,
        map: &PageMap,
        pool: fn(&mut PageHeap) -> &mut FixAlloc<T>,
        tail: usize,
    ) {
        if !S::SMALL_ARENAS || pool(self).has_room(tail) {
            return;
        }
        let want = SMALL_POOL_RECORDS * FixAlloc::<T>::record_bytes(tail);
        if let Some((p, bytes)) = self.meta_chunk(source, map, want) {
            // SAFETY: Ready arena pages, page aligned, never freed.
            unsafe { pool(self).add_chunk(p, bytes) };
        }
    }

    /// Gives pages back to their arena (which the next [`PageHeap::trim`]
    /// releases if it is now wholly free and address space is short).
    fn free_pages(&mut self, slot: ArenaSlot, start: PageIdx, npages: Pages) {
        self.arenas.get_mut(slot).free_range(start, npages);
        self.inuse_pages -= npages;
        self.scavenger.pacer.tick(npages, self.live_pages());
        self.arenas.update_leaf(slot);
        self.arenas.note_free(slot);
    }

    /// Releases every wholly free arena to the source (see `arenas`,
    /// "Growing and releasing arenas"), for a source that gives address
    /// space back; the dirty pages among them count as released by the
    /// scavenger. Returns the pages released.
    fn release_free_arenas<S: PageSource>(&mut self, source: &S) -> Pages {
        let (pages, released) = self.arenas.release_free(source);
        if pages > Pages::ZERO {
            let dirty = pages - released;
            self.sys_pages -= pages;
            self.released_pages -= released;
            self.scavenger.released_total += dirty;
            self.scavenger.decay.released(dirty);
            self.arenas_freed += 1;
        }
        pages
    }

    /// Address space is short (the last growth fell back or failed, over a
    /// source that gives it back): a failed request larger than the heap may
    /// still succeed once caches are drained and the arenas they kept are
    /// released.
    pub fn address_short(&self) -> bool {
        self.arenas.short()
    }

    /// A span of `npages` pages at `align_pages` alignment in state `state`, its
    /// page-map entries set; `None` if the source is exhausted.
    pub fn alloc_span<S: PageSource>(
        &mut self,
        source: &S,
        map: &PageMap,
        npages: Pages,
        align_pages: usize,
        state: SpanState,
    ) -> Option<NonNull<Span>> {
        self.alloc_span_as(source, map, npages, align_pages, state, |_| {})
    }

    /// [`PageHeap::alloc_span`], with `init` applied to the new span before
    /// its page-map entries are set (which carry a small span's class).
    fn alloc_span_as<S: PageSource>(
        &mut self,
        source: &S,
        map: &PageMap,
        npages: Pages,
        align_pages: usize,
        state: SpanState,
        init: impl FnOnce(&mut Span),
    ) -> Option<NonNull<Span>> {
        if npages.get() > u32::MAX as usize {
            return None; // more than a record counts (and than any source has)
        }
        let (_, words) = self.span_shape(source);
        let tail = record_tail(words);
        self.feed_pool(source, map, |h| &mut h.spans, tail);
        let rec = match self.spans.alloc_with(source, tail) {
            Some(r) => r,
            None if self.release_for_retry(source) => self.spans.alloc_with(source, tail)?,
            None => return None,
        };
        let found = match self.alloc_pages(source, map, npages, align_pages) {
            None if self.release_for_retry(source) => {
                self.alloc_pages(source, map, npages, align_pages)
            }
            r => r,
        };
        let Some(run) = found else {
            // SAFETY: just taken from the pool, unused.
            unsafe { self.spans.free(rec) };
            return None;
        };
        let arena = self.arenas.get(run.slot);
        let addr = arena.addr_of(run.start);
        let s = rec.as_ptr();
        // SAFETY: `rec` is room for a Span; then the span is ours until published.
        unsafe {
            Span::init(s, addr, npages, S::PAGE, state, words);
            (*s).needzero = run.needzero;
            init(&mut *s);
            // SAFETY: a live span in its final state and class.
            arena.set_map(run.start, npages, s);
        }
        Some(rec)
    }

    /// The span target ([`span_target_for`]) and the words of each span
    /// bitmap: for a heap over small arenas a function of the source's
    /// bound, fixed the first time a span is made (every span record has
    /// bitmaps for it); else the geometry's spans.
    fn span_shape<S: PageSource>(&mut self, source: &S) -> (usize, usize) {
        if !S::SMALL_ARENAS {
            return (0, bitmap_words(S::GEOMETRY));
        }
        if self.span_words == 0 {
            self.span_target = span_target_for(source.bound());
            self.span_words = stretched_words(S::GEOMETRY, self.span_target);
        }
        (self.span_target, self.span_words)
    }

    /// A span for small objects of `class`.
    pub fn alloc_small_span<S: PageSource>(
        &mut self,
        source: &S,
        map: &PageMap,
        class: SizeClass,
    ) -> Option<NonNull<Span>> {
        let (target, _) = self.span_shape(source);
        let info = stretched(S::GEOMETRY, class, target);
        self.alloc_span_as(
            source,
            map,
            Pages::new(info.npages as usize),
            1,
            SpanState::Small,
            |s| s.init_small(class, info),
        )
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
        // SAFETY: the caller hands the span over; its arena is live.
        let (arena, start, npages) = unsafe {
            (*s).state = SpanState::Dead;
            let arena = &*self.arena_of(s);
            (arena, arena.page_of((*s).start), (*s).npages())
        };
        // SAFETY: null.
        unsafe { arena.set_map(start, npages, null_mut()) };
        let slot = arena.slot;
        self.free_pages(slot, start, npages);
        // SAFETY: the record is unused now.
        unsafe { self.spans.free(span) };
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
        let npages = large_pages(bytes, S::PAGE)?;
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
        let npages = large_pages(bytes, S::PAGE)?;
        self.alloc_large_pages(source, map, npages, npages + npages, align)
    }

    /// A large span of `npages` pages, or an idle one of up to `max` pages
    /// (the largest such).
    fn alloc_large_pages<S: PageSource>(
        &mut self,
        source: &S,
        map: &PageMap,
        npages: Pages,
        max: Pages,
        align: usize,
    ) -> Option<NonNull<Span>> {
        let align_pages = S::PAGE.page_at(align).max(1);
        let s = match self.large_cache.take(npages, max, align_pages, S::PAGE) {
            Some(s) => {
                self.scavenger.decay.note(self.idle_pages());
                s
            }
            None => self.alloc_span(source, map, npages, align_pages, SpanState::Large)?,
        };
        // SAFETY: a live large span, ours.
        let got = unsafe { (*s.as_ptr()).npages() };
        self.large.mallocs += 1;
        self.large.live_bytes += got.bytes(S::PAGE) as u64;
        Some(s)
    }

    /// Frees a large object's span: into the large-span cache if it takes
    /// the span's size (evicting older idle spans as needed), else back to
    /// the heap.
    ///
    /// # Safety
    /// As [`PageHeap::free_span`]; the span is `Large`.
    pub unsafe fn free_large<S: PageSource>(&mut self, source: &S, span: NonNull<Span>) {
        // SAFETY: the caller hands us a live large span.
        let npages = unsafe { (*span.as_ptr()).npages() };
        self.large.frees += 1;
        self.large.live_bytes -= npages.bytes(S::PAGE) as u64;
        if LargeCache::takes(npages) {
            while !self.large_cache.has_room(npages) {
                self.evict_cached();
            }
            // SAFETY: the caller hands the span over (on no list); there is room.
            unsafe { self.large_cache.push(span) };
            self.trim(source);
            return;
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.free_span(source, span) };
    }

    /// Gives the pages of span `s` past its first `npages` back to the heap (no trim).
    ///
    /// # Safety
    /// `s` is a live span of more than `npages` pages, owned by the caller.
    unsafe fn cut_tail(&mut self, s: *mut Span, npages: Pages, page: PageSize) {
        // SAFETY: live span and arena; the tail pages are ours.
        let (arena, start, old) = unsafe {
            let arena = &*self.arena_of(s);
            (arena, arena.page_of((*s).start), (*s).npages())
        };
        // SAFETY: null.
        unsafe { arena.set_map(start + npages, old - npages, null_mut()) };
        let slot = arena.slot;
        self.free_pages(slot, start + npages, old - npages);
        // SAFETY: live span, the caller's.
        unsafe {
            (*s).set_npages(npages);
            (*s).elemsize = npages.bytes(page).min(u32::MAX as usize) as u32;
        }
    }

    /// Gives one idle span back to the heap (no trim): see [`LargeCache::victim`].
    fn evict_cached(&mut self) {
        let s = self
            .large_cache
            .victim()
            .expect("evict from an empty large-span cache");
        // SAFETY: `s` is on its cache list: an idle span.
        unsafe { self.uncache(s) };
    }

    /// Gives every idle span back to the heap (no trim).
    fn evict_all_cached(&mut self) {
        while self.large_cache.count() > 0 {
            self.evict_cached();
        }
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
    unsafe fn uncache(&mut self, s: NonNull<Span>) {
        // SAFETY: as the caller promises.
        unsafe {
            self.large_cache.remove(s);
            self.return_span(s);
        }
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
        npages: Pages,
    ) -> bool {
        let s = span.as_ptr();
        // SAFETY: live span and arena.
        let (slot, start, old) = unsafe {
            let arena = &*self.arena_of(s);
            (arena.slot, arena.page_of((*s).start), (*s).npages())
        };
        if npages == old {
            return true;
        }
        if npages.get() > u32::MAX as usize {
            return false;
        }
        if npages < old {
            // SAFETY: the caller's live span.
            unsafe { self.cut_tail(s, npages, S::PAGE) };
            self.large.live_bytes -= (old - npages).bytes(S::PAGE) as u64;
            self.trim(source);
        } else {
            let extra = npages - old;
            if (start + npages).from_start() > self.arenas.get(slot).npages {
                return false;
            }
            // Idle spans of the large-span cache in the way are free memory:
            // if only they stand in the way, give them back to the heap.
            for evict in [false, true] {
                let mut p = start + old;
                while p < start + npages {
                    let t = self.arenas.get(slot).span_at(p);
                    // SAFETY: non-null map entries are live span records.
                    match unsafe { t.as_ref() } {
                        None => p += Pages::ONE,
                        Some(idle) if idle.state == SpanState::Idle => {
                            p = self.arenas.get(slot).page_of(idle.end(S::PAGE));
                            if evict {
                                // SAFETY: an idle span on its cache list, ours under the heap lock.
                                unsafe { self.uncache(NonNull::from(idle)) };
                            }
                        }
                        Some(_) => return false,
                    }
                }
            }
            let a = self.arenas.get_mut(slot);
            if !a.is_free(start + old, extra) {
                return false;
            }
            if !a.make_ready(source, start + old, extra) {
                return false;
            }
            let taken = a.alloc_range(start + old, extra);
            self.released_pages -= Pages::new(taken.scavenged);
            self.inuse_pages += extra;
            self.scavenger.pacer.tick(extra, self.live_pages());
            self.arenas.update_leaf(slot);
            // SAFETY: a live large span (its state and class stay).
            unsafe { self.arenas.get(slot).set_map(start + old, extra, s) };
            // SAFETY: live span, the caller's.
            unsafe { (*s).set_npages(npages) };
            self.large.live_bytes += extra.bytes(S::PAGE) as u64;
        }
        // SAFETY: live span.
        unsafe { (*s).elemsize = npages.bytes(S::PAGE).min(u32::MAX as usize) as u32 };
        true
    }

    /// Accounting snapshot.
    pub fn stats(&self, page: PageSize) -> PageStats {
        let meta = self.meta_bytes + self.spans.sys_bytes();
        PageStats {
            sys: (self.sys_pages - self.meta_pages).bytes(page) as u64,
            inuse: self.inuse_pages.bytes(page) as u64,
            released: self.released_pages.bytes(page) as u64,
            meta_sys: meta as u64,
            arenas: self.arenas.len() as u64,
            spans: self.spans.inuse() as u64,
            large: self.large,
            scavenged_total: self.scavenger.released_total.bytes(page) as u64,
            large_cached: self.large_cache.pages().bytes(page) as u64,
            arenas_freed: self.arenas_freed,
        }
    }

    /// Walks every arena and checks the heap's counting identities; panics with
    /// a message on the first violation.
    pub fn check_invariants(&self) {
        let (sys, free, released) = self.arenas.check_invariants();
        assert_eq!(sys, self.sys_pages, "sys_pages");
        assert_eq!(
            sys - free,
            self.inuse_pages + self.meta_pages,
            "inuse_pages + meta_pages != pages not free"
        );
        assert_eq!(released, self.released_pages, "released_pages");
        self.large_cache.check_invariants();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sizeclass::{GO, REGION_GEOMETRY};

    /// Stretched spans are whole multiples of the geometry's, at most the
    /// target (or the geometry's span when that is longer), keep the tail
    /// bound, fit the bitmaps, and the magic divide stays exact over them.
    #[test]
    fn stretched_spans_keep_the_geometry_s_invariants() {
        for g in [&REGION_GEOMETRY, &GO] {
            for target in [0, 512, 2048, 3000, 4096, MAX_SPAN_TARGET] {
                let words = stretched_words(g, target);
                for c in g.small_classes() {
                    let base = g.info(c);
                    let r = stretched(g, c, target);
                    let span = r.npages as usize * g.page_bytes();
                    let base_span = base.npages as usize * g.page_bytes();
                    assert!(r.npages.is_multiple_of(base.npages), "{c:?} at {target}");
                    assert!(span <= target.max(base_span), "{c:?} at {target}");
                    assert!(
                        span + base_span > target
                            || r.objects + base.objects > MAX_STRETCHED_OBJECTS as u32,
                        "{c:?} at {target}: stretched too little"
                    );
                    assert!(
                        r.objects as usize <= MAX_STRETCHED_OBJECTS.max(base.objects as usize),
                        "{c:?} at {target}: stretched too far"
                    );
                    assert_eq!((r.size, r.div_mul), (base.size, base.div_mul));
                    assert_eq!(r.objects as usize, span / r.size as usize);
                    assert!(span - r.objects as usize * r.size as usize <= span / g.spec.tail_div);
                    assert!(r.objects as usize <= 64 * words);
                    let size = r.size as usize;
                    for i in 0..=r.objects as usize {
                        for off in [i * size, (i * size).saturating_sub(1)] {
                            let q = ((off as u64 * r.div_mul as u64) >> 32) as usize;
                            assert_eq!(q, off / size, "{c:?} at {target}, offset {off}");
                        }
                    }
                }
            }
            // No target: the geometry's own spans and bitmaps.
            assert_eq!(stretched_words(g, 0), crate::span::bitmap_words(g));
        }
    }

    /// Small regions keep the geometry's spans; from 4 MiB they stretch, up
    /// to Go's 8 KiB.
    #[test]
    fn span_target_grows_with_the_region() {
        assert_eq!(span_target_for(None), 0);
        assert_eq!(span_target_for(Some(64 << 10)), 32);
        assert!(stretched_words(&REGION_GEOMETRY, span_target_for(Some(1 << 20))) <= 4);
        assert_eq!(span_target_for(Some(16 << 20)), MAX_SPAN_TARGET);
        assert_eq!(span_target_for(Some(usize::MAX)), MAX_SPAN_TARGET);
        let mut prev = 0;
        for shift in 10..usize::BITS {
            let t = span_target_for(Some(1 << shift));
            assert!(t >= prev);
            prev = t;
        }
    }
}
