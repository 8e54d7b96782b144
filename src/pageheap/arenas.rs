//! Arenas: the contiguous ranges the page heap takes from its source, and
//! the tree that finds the lowest one with room. See [`super`].
//!
//! An arena is at least `S::ARENA_BYTES` (64 MiB on Linux), larger when one
//! request needs more; a whole number of [`CHUNK_BYTES`] chunks and chunk
//! aligned. Its pages are managed by [`ArenaPages`] (a bitmap with summaries:
//! address-ordered first fit in O(log pages), implicit coalescing). Arenas
//! are kept sorted by address in [`Arenas`], so "lowest slot first" is
//! address order, and a segment tree of each arena's longest free run finds
//! the lowest arena that can serve a request in O(log arenas): allocation is
//! first fit over the whole heap.
//!
//! An arena's metadata block — `[Arena][spans: one slot per page][ArenaPages
//! bitmaps]` — comes from `PageSource::alloc` and is never freed. The table
//! of arenas and its tree are a block of their own, which doubles (4, 8, …
//! [`MAX_ARENAS`] slots) as arenas are added, so a heap of one arena keeps a
//! few dozen bytes of it.
//!
//! ## Growing and releasing arenas
//!
//! A new arena asks for `max(S::ARENA_BYTES, what the request needs)`; when
//! the reservation (or its commit, or its metadata block) fails, for half as
//! much, and so on down to what the request needs, in whole chunks. A heap
//! that had to fall back is *short* of address space (an `RLIMIT_AS`, a
//! 32-bit process) until a growth of the full size succeeds again. Where the
//! source gives address space back ([`PageSource::CAN_UNRESERVE`]; never for
//! small arenas), an arena's life is then:
//!
//! ```text
//!              grow                   wholly free, while short;
//!   (none) ──────────────▶ Live ───── or any wholly free arena ────▶ Released
//!     ▲   reserve + commit   │ ▲       when an allocation fails       │ free (the whole
//!     │   + metadata block   │ │                                      │ reservation) and
//!     │                      └─┘ spans in and out                     │ retire the block
//!     └───────────────────────────────────────────────────────────────┘
//!              (a later grow may reuse the retired block)
//! ```
//!
//! A released arena leaves the table (the slots above it move down, the
//! tree is rebuilt), so `find` and `grow` never see it; its pages were all
//! free, so no span, page-map entry or large-span cache entry refers to it.
//! Its metadata block is *retired*, not freed: the page map is read without
//! the lock, and a reader that loaded a chunk entry of the released range
//! just before it was released may still read the block's slots, which are
//! all null (every page was free). The chunk entries stay pointing at them,
//! so an address in the released range maps to null, until a new arena
//! covers the chunk (its entry replaces the old one) or the block is reused
//! by a new arena, which first clears the entries that still point into it.
//! So a retired block costs its bytes (about 70 KiB per 64 MiB arena) and no
//! address space is lost to repeated release and growth: the blocks are
//! reused, each for an arena of at most the pages it was laid out for.
//!
//! [`Arena`] is where page indices meet addresses: everything below it
//! ([`ArenaPages`]) counts pages of one arena as plain numbers; everything
//! above it uses [`PageIdx`], [`Pages`] and [`Addr`].
//!
//! Invariants (guarded by the heap lock): `arenas[..narenas]` are live and
//! sorted by base, non-overlapping, each `slot` field its index; every
//! retired block's `block_pages` slots are null; `pending` implies `short`;
//! `tree_cap` is the smallest power of two `>= narenas` (at least 1); leaf
//! `tree_cap + i` is arena `i`'s longest free run (0 past `narenas`), every
//! inner node the max of its children.

use core::mem::size_of;
use core::ptr::{null_mut, NonNull};

use crate::source::PageSource;
use crate::source::SourcePage;
use crate::span::Span;
use crate::sync::atomic::{AtomicPtr, Ordering};
use crate::units::{Addr, ArenaSlot, PageIdx, PageSize, Pages};
use crate::CHUNK_BYTES;

use super::map::{ArenaLink, PageMap, SpanSlot};
use super::pagealloc::{ArenaPages, Taken};

/// Most arenas a heap can have (64 GiB of 64 MiB arenas; more when arenas are larger).
pub(crate) const MAX_ARENAS: usize = 4096;

/// Header of an arena's metadata block.
pub(crate) struct Arena {
    /// First byte; chunk aligned.
    pub(crate) base: Addr,
    /// Pages in the arena (a whole number of chunks).
    pub(crate) npages: Pages,
    /// The heap's page (its source's).
    pub(crate) page: PageSize,
    /// Index in [`Arenas`] (changes when an arena is inserted below it).
    pub(crate) slot: ArenaSlot,
    /// Page → span for this arena's pages (what the page map points into):
    /// the block's own slots, or the page map's window's for an arena
    /// wholly inside it (the block's then stay null).
    spans: *mut SpanSlot,
    /// Which pages are free, which free pages are released.
    pub(crate) pages: ArenaPages,
    /// The arena's entry in the page map's list (small arenas only).
    link: ArenaLink,
    /// Pages the metadata block is laid out for (`npages <= block_pages`):
    /// its slots and bitmaps have room for that many, so that a retired block
    /// can be reused by any arena up to that size.
    block_pages: Pages,
    /// The next retired block (on [`Arenas`]' retired list only).
    next_retired: *mut Arena,
}

impl Arena {
    /// The page holding `addr` (inside the arena).
    #[inline]
    pub(crate) fn page_of(&self, addr: Addr) -> PageIdx {
        PageIdx::new(self.page.page_at(addr - self.base))
    }

    /// The address of page `page`.
    #[inline]
    pub(crate) fn addr_of(&self, page: PageIdx) -> Addr {
        self.base.add_pages(page.from_start(), self.page)
    }

    /// One past the last byte.
    pub(crate) fn end(&self) -> Addr {
        self.base.add_pages(self.npages, self.page)
    }

    /// The page slots of the arena's metadata block (`block_pages` of
    /// them), whether or not `spans` is they.
    fn own_slots(&self) -> *mut SpanSlot {
        let off = Arenas::meta_layout(self.block_pages.get()).1;
        // SAFETY: the block is laid out by `meta_layout(block_pages)`.
        unsafe {
            (self as *const Arena)
                .cast::<u8>()
                .cast_mut()
                .add(off)
                .cast()
        }
    }

    /// The span page `p` belongs to, or null.
    pub(crate) fn span_at(&self, p: PageIdx) -> *mut Span {
        debug_assert!(p.from_start() < self.npages);
        // SAFETY: `p < npages` and `spans` has npages slots.
        unsafe { (*self.spans.add(p.get())).load(Ordering::Acquire) }.span()
    }

    /// Points the map entries of `n` pages from `start` at `span` (or null),
    /// with its class if it is a span of small objects (`map::Entry`): so a
    /// span is published in its final state and class.
    ///
    /// # Safety
    /// `span` is null or a live span whose `state` and `class` stay as they
    /// are until its entries are pointed elsewhere.
    pub(crate) unsafe fn set_map(&self, start: PageIdx, n: Pages, span: *mut Span) {
        assert!((start + n).from_start() <= self.npages);
        for p in start.get()..(start + n).get() {
            // SAFETY: `p < npages` (checked above), `spans` has npages
            // slots; the span as the caller promises.
            unsafe { (*self.spans.add(p)).store(span, Ordering::Release) };
        }
    }

    /// The longest free run.
    pub(crate) fn max_free_run(&self) -> Pages {
        Pages::new(self.pages.max_free_run())
    }

    /// The highest free run of `n` pages (see [`ArenaPages::find_last`]).
    pub(crate) fn find_last(&self, n: Pages) -> Option<PageIdx> {
        self.pages.find_last(n.get()).map(PageIdx::new)
    }

    /// Whether the `n` pages from `start` are all free.
    pub(crate) fn is_free(&self, start: PageIdx, n: Pages) -> bool {
        self.pages.is_free(start.get(), n.get())
    }

    /// Marks `n` free pages from `start` in use.
    pub(crate) fn alloc_range(&mut self, start: PageIdx, n: Pages) -> Taken {
        self.pages.alloc_range(start.get(), n.get())
    }

    /// Marks `n` pages from `start` free (dirty).
    pub(crate) fn free_range(&mut self, start: PageIdx, n: Pages) {
        self.pages.free_range(start.get(), n.get());
    }

    /// First fit of `n` free pages whose *address* is aligned to
    /// `align_pages` pages. `ArenaPages::find_aligned` aligns the page index
    /// within the arena, which is the address alignment only up to the arena
    /// base's own alignment (a chunk, or what `grow` asked for); above it,
    /// try each aligned address in turn (at most `npages / align_pages` of
    /// them, a few).
    pub(crate) fn find_aligned(&self, n: Pages, align_pages: usize) -> Option<PageIdx> {
        let skew = self.page.page_at(self.base.get()) & (align_pages - 1);
        if skew == 0 {
            return self
                .pages
                .find_aligned(n.get(), align_pages)
                .map(PageIdx::new);
        }
        let mut s = align_pages - skew;
        while s.checked_add(n.get())? <= self.npages.get() {
            if self.pages.is_free(s, n.get()) {
                return Some(PageIdx::new(s));
            }
            s += align_pages;
        }
        None
    }

    /// Makes the released pages of the free range `n` pages from `start`
    /// Ready. On failure, the runs already made Ready are released again, so
    /// the range is exactly as before, and false is returned.
    pub(crate) fn make_ready<S: PageSource>(
        &mut self,
        source: &S,
        start: PageIdx,
        n: Pages,
    ) -> bool {
        let (base, page) = (self.base, self.page);
        let run_ptr = |p: usize| {
            // SAFETY: arena addresses are never null.
            unsafe { NonNull::new_unchecked(base.add_pages(Pages::new(p), page).as_ptr()) }
        };
        let (mut ok_runs, mut failed) = (0usize, false);
        self.pages.released_runs(start.get(), n.get(), |p, k| {
            if !failed {
                // SAFETY: released free pages are in the Prepared state.
                match unsafe { source.ready(run_ptr(p), Pages::new(k).bytes(page)) } {
                    Ok(()) => ok_runs += 1,
                    Err(_) => failed = true,
                }
            }
        });
        if failed {
            self.pages.released_runs(start.get(), n.get(), |p, k| {
                if ok_runs > 0 {
                    ok_runs -= 1;
                    // SAFETY: this run was made Ready above and nothing has used it.
                    unsafe { source.release(run_ptr(p), Pages::new(k).bytes(page)) };
                }
            });
        }
        !failed
    }

    /// Releases up to `max` dirty free pages, highest first; returns how many.
    pub(crate) fn release_dirty<S: PageSource>(&mut self, source: &S, max: Pages) -> Pages {
        let (base, page) = (self.base, self.page);
        Pages::new(self.pages.scavenge(max.get(), |s, n| {
            let p = base.add_pages(Pages::new(s), page).as_ptr();
            // SAFETY: dirty free pages are Ready and nothing uses them; `p` is non-null.
            unsafe { source.release(NonNull::new_unchecked(p), Pages::new(n).bytes(page)) };
        }))
    }
}

/// The arenas of a heap, sorted by address, with the tree over their longest
/// free runs (see the module docs for the invariants).
pub(crate) struct Arenas {
    /// `cap` arena slots, then `2 * cap` tree nodes, in one block from the
    /// source that doubles when full ([`Arenas::make_room`]); null with `cap`
    /// 0 before the first arena. Slots from `narenas` on are unused.
    arenas: *mut *mut Arena,
    narenas: usize,
    /// Segment tree over arena slots, `tree_cap` leaves: leaf `tree_cap + i` =
    /// longest free run of arena `i` (0 for empty slots); inner node `1..tree_cap`
    /// = max of its children. Entries from `2 * tree_cap` on are unused.
    tree: *mut u32,
    /// Slots of the block (a power of two, at most [`MAX_ARENAS`], `tree_cap <= cap`).
    cap: usize,
    /// Leaves of `tree`: the smallest power of two `>= narenas` (at least 1), so a
    /// heap of one arena walks no tree at all, one of a few arenas a level or two.
    /// log2 of `tree_cap` (0 for 1: all-zero bytes are the empty set).
    tree_log: u32,
    /// Metadata blocks of released arenas, linked by `next_retired`, for
    /// reuse by new arenas (never freed: see "Growing and releasing arenas").
    retired: *mut Arena,
    /// The last growth had to fall back to a smaller arena or failed, and
    /// the source gives address space back: wholly free arenas are released.
    short: bool,
    /// While `short`: an arena became wholly free since the last
    /// [`Arenas::release_free`].
    pending: bool,
    /// The page map's window has been asked for (at the first arena).
    window_tried: bool,
}

// SAFETY: the raw pointers are to arena metadata owned by this heap; all
// access is serialised by the heap lock around the page heap.
unsafe impl Send for Arenas {}

/// A leaf value: a free run, saturated to the tree's `u32`.
fn leaf(run: Pages) -> u32 {
    run.get().min(u32::MAX as usize) as u32
}

impl Arenas {
    pub(crate) const fn new() -> Self {
        Arenas {
            arenas: null_mut(),
            narenas: 0,
            tree: null_mut(),
            cap: 0,
            tree_log: 0,
            retired: null_mut(),
            short: false,
            pending: false,
            window_tried: false,
        }
    }

    /// Whether the page map's window is settled: opened, or given up, at the
    /// first arena; it never changes afterwards.
    pub(crate) fn window_settled(&self) -> bool {
        self.window_tried
    }

    /// Gives the window up if it is not settled yet (the first arena could
    /// not be made when the window was to be settled): no window, for ever.
    pub(crate) fn give_up_window(&mut self) {
        self.window_tried = true;
    }

    /// Whether address space is short (the last growth fell back or failed,
    /// over a source that gives it back): a failed allocation may then
    /// succeed once wholly free arenas are released.
    pub(crate) fn short(&self) -> bool {
        self.short
    }

    /// Marks address space short (an allocation failed), where the source
    /// gives it back.
    pub(crate) fn set_short<S: PageSource>(&mut self) {
        self.short = S::CAN_UNRESERVE && !S::SMALL_ARENAS;
    }

    /// Metadata blocks: the live arenas' and the retired ones.
    #[cfg(test)]
    fn blocks(&self) -> usize {
        let mut n = self.narenas;
        let mut r = self.retired;
        // SAFETY: retired blocks are never freed.
        while let Some(a) = unsafe { r.as_ref() } {
            n += 1;
            r = a.next_retired;
        }
        n
    }

    /// Whether an arena became wholly free while address space was short.
    pub(crate) fn pending(&self) -> bool {
        self.pending
    }

    /// Pages of `slot` were freed: if address space is short and the arena
    /// is now wholly free, the next [`Arenas::release_free`] releases it.
    #[inline]
    pub(crate) fn note_free(&mut self, slot: ArenaSlot) {
        if self.short {
            let a = self.get(slot);
            if a.pages.free_pages() == a.npages.get() {
                self.pending = true;
            }
        }
    }

    /// The arena slots.
    fn slots_raw(&self) -> &[*mut Arena] {
        if self.cap == 0 {
            return &[];
        }
        // SAFETY: `cap` slots at `arenas` (the block's invariant).
        unsafe { core::slice::from_raw_parts(self.arenas, self.cap) }
    }

    /// The arena slots, to change them.
    fn slots_raw_mut(&mut self) -> &mut [*mut Arena] {
        if self.cap == 0 {
            return &mut [];
        }
        // SAFETY: as above; `&mut self` is the heap lock.
        unsafe { core::slice::from_raw_parts_mut(self.arenas, self.cap) }
    }

    /// The tree nodes.
    fn tree(&self) -> &[u32] {
        if self.cap == 0 {
            return &[];
        }
        // SAFETY: `2 * cap` nodes at `tree` (the block's invariant).
        unsafe { core::slice::from_raw_parts(self.tree, 2 * self.cap) }
    }

    /// The tree nodes, to change them.
    fn tree_mut(&mut self) -> &mut [u32] {
        if self.cap == 0 {
            return &mut [];
        }
        // SAFETY: as above; `&mut self` is the heap lock.
        unsafe { core::slice::from_raw_parts_mut(self.tree, 2 * self.cap) }
    }

    /// Makes room for one more arena: when every slot is taken, moves the
    /// slots and the tree to a block twice the size (4 slots the first
    /// time) and gives the old block back. False if the source has no room
    /// or the heap has [`MAX_ARENAS`] arenas.
    fn make_room<S: PageSource>(&mut self, source: &S, meta_bytes: &mut usize) -> bool {
        if self.narenas < self.cap {
            return true;
        }
        if self.cap == MAX_ARENAS {
            return false;
        }
        let cap = (2 * self.cap).max(4);
        let bytes = Self::block_bytes(cap);
        let Some(block) = source.alloc(bytes) else {
            return false;
        };
        let arenas = block.as_ptr().cast::<*mut Arena>();
        // SAFETY: the block is `bytes` fresh Ready bytes, page aligned: `cap`
        // slots, then `2 * cap` nodes (4-byte aligned after pointer slots).
        // The old block's contents are copied before it is freed; its tree
        // fits in the new one's first `2 * old cap` nodes.
        unsafe {
            let tree = arenas.add(cap).cast::<u32>();
            tree.write_bytes(0, 2 * cap);
            if self.cap > 0 {
                arenas.copy_from_nonoverlapping(self.arenas, self.narenas);
                tree.copy_from_nonoverlapping(self.tree, 2 * self.cap);
                // Exactly the range `alloc` returned: rounded to the source's page.
                let old = Self::block_bytes(self.cap).next_multiple_of(S::PAGE_SIZE);
                source.free(NonNull::new_unchecked(self.arenas.cast()), old);
                *meta_bytes -= old;
            }
            self.tree = tree;
        }
        self.arenas = arenas;
        self.cap = cap;
        *meta_bytes += bytes.next_multiple_of(S::PAGE_SIZE);
        true
    }

    /// Bytes of a block of `cap` slots.
    fn block_bytes(cap: usize) -> usize {
        cap * size_of::<*mut Arena>() + 2 * cap * size_of::<u32>()
    }

    /// Leaves of the segment tree: the smallest power of two `>= narenas`.
    #[inline(always)]
    fn tree_cap(&self) -> usize {
        1 << self.tree_log
    }

    /// Number of arenas.
    pub(crate) fn len(&self) -> usize {
        self.narenas
    }

    /// The arena in `slot`.
    pub(crate) fn get(&self, slot: ArenaSlot) -> &Arena {
        assert!(slot.get() < self.narenas);
        // SAFETY: slots below narenas hold live arenas.
        unsafe { &*self.slots_raw()[slot.get()] }
    }

    /// The arena in `slot`, to change its pages.
    pub(crate) fn get_mut(&mut self, slot: ArenaSlot) -> &mut Arena {
        assert!(slot.get() < self.narenas);
        // SAFETY: slots below narenas hold live arenas, and `&mut self`
        // (the heap lock) makes this the only reference.
        unsafe { &mut *self.slots_raw()[slot.get()] }
    }

    /// The slots, lowest address first.
    pub(crate) fn slots(&self) -> impl DoubleEndedIterator<Item = ArenaSlot> {
        (0..self.narenas).map(ArenaSlot::new)
    }

    /// Recomputes `slot`'s leaf of the arena tree and its ancestors, stopping
    /// as soon as a node keeps its value (then so do all above it). Most
    /// spans leave their arena's longest free run unchanged, so this is
    /// usually one comparison rather than `log2(tree_cap)` levels.
    pub(crate) fn update_leaf(&mut self, slot: ArenaSlot) {
        let v = if slot.get() < self.narenas {
            leaf(self.get(slot).max_free_run())
        } else {
            0
        };
        let mut i = self.tree_cap() + slot.get();
        let tree = self.tree_mut();
        if tree[i] == v {
            return;
        }
        tree[i] = v;
        while i > 1 {
            i /= 2;
            let m = tree[2 * i].max(tree[2 * i + 1]);
            if tree[i] == m {
                return;
            }
            tree[i] = m;
        }
    }

    /// The lowest arena whose longest free run is at least `need` pages.
    pub(crate) fn find(&self, need: Pages) -> Option<ArenaSlot> {
        let tree = self.tree();
        if self.narenas == 0 || need.get() > u32::MAX as usize || (tree[1] as usize) < need.get() {
            return None;
        }
        let mut i = 1;
        while i < self.tree_cap() {
            i = if tree[2 * i] as usize >= need.get() {
                2 * i
            } else {
                2 * i + 1
            };
        }
        Some(ArenaSlot::new(i - self.tree_cap()))
    }

    /// Takes a new arena from the source big enough for `npages` at
    /// `align_pages`, publishes its pages in `map`, and inserts it in address
    /// order. Adds its metadata bytes to `meta`. `None` if the source has no
    /// room, or the heap has `MAX_ARENAS` arenas.
    pub(crate) fn grow<S: PageSource>(
        &mut self,
        source: &S,
        map: &PageMap,
        npages: Pages,
        align_pages: usize,
        meta_bytes: &mut usize,
    ) -> Option<ArenaSlot> {
        if !self.make_room(source, meta_bytes) {
            return None;
        }
        if S::SMALL_ARENAS {
            return self.grow_small(source, map, npages, align_pages, meta_bytes);
        }
        let want = npages
            .get()
            .checked_mul(S::PAGE.bytes())?
            .checked_next_multiple_of(CHUNK_BYTES)?;
        let full = want.max(S::ARENA_BYTES);
        let align = (align_pages.checked_mul(S::PAGE.bytes())?).max(CHUNK_BYTES);
        // Half as much each time it fails, in whole chunks, down to `want`.
        let mut bytes = full;
        loop {
            if let Some(slot) = self.grow_one(source, map, bytes, align, meta_bytes) {
                if bytes == full {
                    self.short = false;
                    self.pending = false;
                }
                return Some(slot);
            }
            self.set_short::<S>();
            if bytes == want {
                return None;
            }
            bytes = (bytes / 2).next_multiple_of(CHUNK_BYTES).max(want);
        }
    }

    /// One arena of exactly `bytes` (whole chunks) at `align`: reserved,
    /// committed, with a metadata block (a retired one if one is large
    /// enough), its chunks published in `map`, inserted in address order.
    /// `None`, with nothing kept but a metadata block (retired), if any step fails.
    fn grow_one<S: PageSource>(
        &mut self,
        source: &S,
        map: &PageMap,
        bytes: usize,
        align: usize,
        meta_bytes: &mut usize,
    ) -> Option<ArenaSlot> {
        let arena_pages = Pages::of_whole_bytes(bytes, S::PAGE);
        let base = source.reserve(bytes, align)?;
        // SAFETY: just reserved, Reserved state.
        if unsafe { source.commit(base, bytes) }.is_err() {
            // SAFETY: ours, untouched.
            unsafe { source.free(base, bytes) };
            return None;
        }
        let base_addr = Addr::of(base.as_ptr());
        const {
            assert!(S::WINDOW_BYTES == 0 || (S::ZEROED && !S::SMALL_ARENAS));
        }
        if S::WINDOW_BYTES != 0 && !self.window_tried {
            self.window_tried = true;
            map.open_window(
                source,
                base_addr,
                source.window_bytes().min(S::WINDOW_BYTES),
            );
        }
        let window = map.window_slots(base_addr, arena_pages, S::PAGE);
        let arena = if let Some(old) = self.take_retired::<S>(map, arena_pages) {
            // SAFETY: a retired block, now ours alone, laid out for at least
            // `arena_pages` pages; its slots are all null, and so are the
            // window's for the arena (no live span has a page there).
            unsafe {
                let block_pages = (*old).block_pages;
                Self::write_meta::<S>(
                    old.cast(),
                    base_addr,
                    arena_pages,
                    block_pages,
                    false,
                    window,
                )
            }
        } else {
            let meta = Self::meta_layout(arena_pages.get()).0;
            let Some(m) = source.alloc(meta) else {
                // SAFETY: ours, untouched.
                unsafe { source.free(base, bytes) };
                return None;
            };
            *meta_bytes += meta.next_multiple_of(S::PAGE_SIZE);
            // SAFETY: `m` is `meta` fresh Ready bytes, page aligned.
            unsafe {
                Self::write_meta::<S>(
                    m.as_ptr(),
                    base_addr,
                    arena_pages,
                    arena_pages,
                    !S::ZEROED,
                    window,
                )
            }
        };
        // An arena in the window is found there; the radix table has only
        // the others.
        let chunks = if window.is_some() {
            0
        } else {
            arena_pages.get() / S::CHUNK_PAGES
        };
        for c in 0..chunks {
            // SAFETY: `spans` has arena_pages slots.
            let slots = unsafe { (*arena).spans.add(c * S::CHUNK_PAGES) };
            if !map.set_chunk(source, base_addr + c * CHUNK_BYTES, slots, meta_bytes) {
                // Unpublish what we published (no memory for a page-map table).
                for d in 0..c {
                    map.set_chunk(source, base_addr + d * CHUNK_BYTES, null_mut(), meta_bytes);
                }
                // SAFETY: no span was made in the arena; nobody refers to it.
                unsafe { source.free(base, bytes) };
                self.retire(arena);
                return None;
            }
        }
        Some(self.insert(arena))
    }

    /// Puts the metadata block of `arena` (released, or never published) on
    /// the retired list.
    fn retire(&mut self, arena: *mut Arena) {
        // SAFETY: the block is ours; nothing else writes its header.
        unsafe { (*arena).next_retired = self.retired };
        self.retired = arena;
    }

    /// The smallest retired block laid out for at least `npages` pages, off
    /// the list (so that a heap that releases and grows the same arenas
    /// again reuses the same blocks), with the page-map entries of the arena
    /// it last held cleared where they still point into it (so that no
    /// address of the old range maps into the new arena).
    fn take_retired<S: PageSource>(&mut self, map: &PageMap, npages: Pages) -> Option<*mut Arena> {
        let mut best: Option<*mut *mut Arena> = None;
        let mut link: *mut *mut Arena = &raw mut self.retired;
        // SAFETY: the retired list holds blocks of this heap, never freed;
        // `&mut self` is the heap lock, so the links are ours to change.
        unsafe {
            while let Some(a) = (*link).as_ref() {
                let better = best.is_none_or(|b| a.block_pages < (**b).block_pages);
                if a.block_pages >= npages && better {
                    best = Some(link);
                }
                link = &raw mut (**link).next_retired;
            }
            let link = best?;
            let a = &mut **link;
            *link = a.next_retired;
            a.next_retired = null_mut();
            if a.spans == a.own_slots() {
                for c in 0..a.npages.get() / S::CHUNK_PAGES {
                    map.clear_chunk(a.base + c * CHUNK_BYTES, a.spans.add(c * S::CHUNK_PAGES));
                }
            }
            Some(a)
        }
    }

    /// Releases every wholly free arena: `free`s its reservation, takes it
    /// out of the table and retires its metadata block. Returns the pages
    /// released and how many of them were released (Prepared) pages. Ends
    /// [`Arenas::pending`].
    pub(crate) fn release_free<S: PageSource>(&mut self, source: &S) -> (Pages, Pages) {
        self.pending = false;
        let (mut pages, mut released) = (Pages::ZERO, Pages::ZERO);
        if !S::CAN_UNRESERVE || S::SMALL_ARENAS {
            return (pages, released);
        }
        for i in (0..self.narenas).rev() {
            let slot = ArenaSlot::new(i);
            let a = self.get(slot);
            if a.pages.free_pages() != a.npages.get() {
                continue;
            }
            let (base, n) = (a.base, a.npages);
            pages += n;
            released += Pages::new(a.pages.released_pages());
            let arena = self.slots_raw()[slot.get()];
            self.remove(slot);
            // SAFETY: exactly the reservation `grow_one` made (`n` pages of
            // `S::PAGE` from `base`, a non-null address); every page is free,
            // so nothing refers to it.
            unsafe { source.free(NonNull::new_unchecked(base.as_ptr()), n.bytes(S::PAGE)) };
            self.retire(arena);
        }
        (pages, released)
    }

    /// Takes the arena in `slot` out of the table: the slots above move down
    /// and the tree is rebuilt for the arenas left.
    fn remove(&mut self, slot: ArenaSlot) {
        let n = self.narenas;
        let slots = self.slots_raw_mut();
        slots.copy_within(slot.get() + 1..n, slot.get());
        slots[n - 1] = null_mut();
        for (s, &a) in slots.iter().enumerate().take(n - 1).skip(slot.get()) {
            // SAFETY: live arenas.
            unsafe { (*a).slot = ArenaSlot::new(s) };
        }
        self.narenas -= 1;
        self.tree_log = self.narenas.max(1).next_power_of_two().trailing_zeros();
        self.rebuild_tree();
    }

    /// Sets every leaf of the tree (`tree_cap` of them) and every inner node.
    fn rebuild_tree(&mut self) {
        let cap = self.tree_cap();
        for s in 0..cap {
            let v = if s < self.narenas {
                leaf(self.get(ArenaSlot::new(s)).max_free_run())
            } else {
                0
            };
            self.tree_mut()[cap + s] = v;
        }
        let tree = self.tree_mut();
        for i in (1..cap).rev() {
            tree[i] = tree[2 * i].max(tree[2 * i + 1]);
        }
    }

    /// Bytes of the metadata block of an arena of `npages` pages, and the
    /// offsets of its page slots and page bitmaps in it.
    fn meta_layout(npages: usize) -> (usize, usize, usize) {
        let spans_off = size_of::<Arena>().next_multiple_of(64);
        let pages_off = (spans_off + npages * size_of::<SpanSlot>()).next_multiple_of(64);
        (
            pages_off + ArenaPages::meta_bytes(npages),
            spans_off,
            pages_off,
        )
    }

    /// Lays out the metadata block of a new arena of `npages` pages at
    /// `base` in `m`, a block for `block_pages` pages
    /// ([`Arenas::meta_layout`] of them): its header, page slots (all null;
    /// written as such when `zero_slots`) and page bitmaps.
    ///
    /// # Safety
    /// `npages <= block_pages`; `m` is `meta_layout(block_pages).0` Ready
    /// bytes, 64-byte aligned, the arena's until it is retired; its
    /// `block_pages` slots are already zero unless `zero_slots`; `window`,
    /// if given, is the page map's window's `npages` slots for the arena,
    /// all null, which the arena then uses instead of the block's.
    unsafe fn write_meta<S: PageSource>(
        m: *mut u8,
        base: Addr,
        npages: Pages,
        block_pages: Pages,
        zero_slots: bool,
        window: Option<*mut SpanSlot>,
    ) -> *mut Arena {
        debug_assert!(npages <= block_pages);
        let (_, spans_off, pages_off) = Self::meta_layout(block_pages.get());
        // SAFETY: the caller's block holds the three parts, which do not
        // overlap (the bitmaps of `npages <= block_pages` pages fit in
        // those of `block_pages`).
        unsafe {
            let spans = m.add(spans_off).cast::<SpanSlot>();
            if zero_slots {
                spans
                    .cast::<u8>()
                    .write_bytes(0, block_pages.get() * size_of::<SpanSlot>());
            }
            let spans = window.unwrap_or(spans);
            let pages = ArenaPages::init(NonNull::new_unchecked(m.add(pages_off)), npages.get());
            let a = m.cast::<Arena>();
            a.write(Arena {
                base,
                npages,
                page: S::PAGE,
                slot: ArenaSlot::new(0),
                spans,
                pages,
                link: ArenaLink {
                    base,
                    end: base.add_pages(npages, S::PAGE),
                    spans,
                    next: AtomicPtr::new(null_mut()),
                },
                block_pages,
                next_retired: null_mut(),
            });
            a
        }
    }

    /// [`Arenas::grow`] for a source of small arenas: one reservation, as
    /// long as the source's longest free range (at most `S::ARENA_BYTES`,
    /// at least what the request needs), holding the pages and, above them,
    /// their metadata block.
    fn grow_small<S: PageSource>(
        &mut self,
        source: &S,
        map: &PageMap,
        npages: Pages,
        align_pages: usize,
        meta_bytes: &mut usize,
    ) -> Option<ArenaSlot> {
        let page = S::PAGE.bytes();
        let align = align_pages.checked_mul(page)?;
        let need = npages.get().checked_mul(page)?;
        let cap = S::ARENA_BYTES.max(need.checked_add(Self::meta_layout(npages.get()).0)?);
        let bytes = source.largest_free(align).min(cap) & !(S::PAGE_SIZE - 1);
        // The most pages whose metadata fits above them (the block starts
        // 64-byte and source-page aligned).
        let meta_at = |n: usize| (n * page).next_multiple_of(S::PAGE_SIZE.max(64));
        let mut n = bytes / page;
        while n > 0 && meta_at(n) + Self::meta_layout(n).0 > bytes {
            let over = meta_at(n) + Self::meta_layout(n).0 - bytes;
            n -= over.div_ceil(page).min(n);
        }
        if n < npages.get() || n == 0 {
            return None;
        }
        let base = source.reserve(bytes, align)?;
        let meta = Self::meta_layout(n).0;
        let m = base.as_ptr().wrapping_add(meta_at(n));
        // SAFETY: just reserved, Reserved state; then Prepared, and the
        // metadata part (source-page aligned, to the end) made Ready. The
        // pages stay Prepared: the arena's bitmap starts them released.
        let ready = unsafe {
            source.commit(base, bytes).is_ok()
                && source
                    .ready(NonNull::new_unchecked(m), bytes - meta_at(n))
                    .is_ok()
        };
        if !ready {
            // SAFETY: ours, untouched.
            unsafe { source.free(base, bytes) };
            return None;
        }
        debug_assert!(meta_at(n) + meta <= bytes);
        // SAFETY: `meta_at(n) + meta <= bytes`: the block lies inside the
        // reservation, above the arena's pages, 64-byte aligned; Ready (and
        // not zero: the region's old bytes).
        let arena = unsafe {
            Self::write_meta::<S>(
                m,
                Addr::of(base.as_ptr()),
                Pages::new(n),
                Pages::new(n),
                true,
                None,
            )
        };
        *meta_bytes += bytes - n * page;
        let slot = self.insert(arena);
        let link_of = |s: usize| {
            self.slots_raw()[..self.narenas]
                .get(s)
                // SAFETY: live arenas.
                .map_or(null_mut(), |&a| unsafe { &raw mut (*a).link })
        };
        let below = slot.get().checked_sub(1).map_or(null_mut(), link_of);
        let above = link_of(slot.get() + 1);
        // SAFETY: the new arena's link is written and lives for ever, between
        // its published neighbours in address order.
        unsafe { map.insert_small(&raw mut (*arena).link, below, above) };
        Some(slot)
    }

    /// The arena holding `addr`, or null: a binary search of the slots,
    /// which are in address order (a span record does not keep its arena).
    pub(crate) fn holding(&self, addr: Addr) -> *mut Arena {
        let slots = &self.slots_raw()[..self.narenas];
        let i = slots.partition_point(|&a| {
            // SAFETY: live arenas.
            unsafe { (*a).base <= addr }
        });
        match i.checked_sub(1).map(|i| slots[i]) {
            // SAFETY: a live arena.
            Some(a) if addr < unsafe { (*a).end() } => a,
            _ => core::ptr::null_mut(),
        }
    }

    /// Inserts `arena` in address order; returns its slot.
    fn insert(&mut self, arena: *mut Arena) -> ArenaSlot {
        // SAFETY: a live arena, just made.
        let base = unsafe { (*arena).base };
        debug_assert!(self.narenas < self.cap, "make_room first");
        let n = self.narenas;
        let slots = self.slots_raw_mut();
        let pos = slots[..n].partition_point(|&a| {
            // SAFETY: live arenas.
            unsafe { (*a).base < base }
        });
        slots.copy_within(pos..n, pos + 1);
        slots[pos] = arena;
        for (s, &a) in slots.iter().enumerate().take(n + 1).skip(pos) {
            // SAFETY: live arenas.
            unsafe { (*a).slot = ArenaSlot::new(s) };
        }
        self.narenas += 1;
        if self.narenas > self.tree_cap() {
            // Double the tree and build it afresh (O(arenas), once per doubling).
            self.tree_log += 1;
            self.rebuild_tree();
        } else {
            for s in pos..self.narenas {
                self.update_leaf(ArenaSlot::new(s));
            }
        }
        ArenaSlot::new(pos)
    }

    /// Checks the arenas' and the tree's invariants; returns the arenas'
    /// (pages, free pages, released pages).
    pub(crate) fn check_invariants(&self) -> (Pages, Pages, Pages) {
        let (mut sys, mut free, mut released) = (Pages::ZERO, Pages::ZERO, Pages::ZERO);
        if self.cap == 0 {
            assert_eq!(self.narenas, 0, "arenas without a table");
            return (sys, free, released);
        }
        for slot in self.slots() {
            let a = self.get(slot);
            assert_eq!(a.slot, slot, "arena {:#x}: slot index stale", a.base);
            if slot.get() > 0 {
                assert!(
                    self.get(ArenaSlot::new(slot.get() - 1)).end() <= a.base,
                    "arenas unsorted or overlapping"
                );
            }
            a.pages.check_invariants();
            assert_eq!(
                self.tree()[self.tree_cap() + slot.get()],
                leaf(a.max_free_run()),
                "arena tree leaf stale"
            );
            sys += a.npages;
            free += Pages::new(a.pages.free_pages());
            released += Pages::new(a.pages.released_pages());
        }
        assert!(
            self.tree_cap().is_power_of_two()
                && self.narenas <= self.tree_cap()
                && self.tree_cap() <= self.cap.max(1)
                && self.cap <= MAX_ARENAS,
            "tree_cap {}",
            self.tree_cap()
        );
        assert!(
            self.tree_cap() == 1 || self.narenas > self.tree_cap() / 2,
            "tree_cap {} too big for {} arenas",
            self.tree_cap(),
            self.narenas
        );
        for slot in self.narenas..self.tree_cap() {
            assert_eq!(
                self.tree()[self.tree_cap() + slot],
                0,
                "empty arena slot {slot} in the tree"
            );
        }
        let tree = self.tree();
        for i in 1..self.tree_cap() {
            assert_eq!(
                tree[i],
                tree[2 * i].max(tree[2 * i + 1]),
                "arena tree node {i}"
            );
        }
        assert!(!self.pending || self.short, "pending without short");
        let mut r = self.retired;
        // SAFETY: retired blocks are never freed; their slots are in the block.
        while let Some(a) = unsafe { r.as_ref() } {
            for p in 0..a.block_pages.get() {
                // SAFETY: `p < block_pages`, the block's slots.
                let e = unsafe { (*a.own_slots().add(p)).load(Ordering::Relaxed) };
                assert!(
                    e.span().is_null() && e.small_class().is_none(),
                    "retired block {:#x}: slot {p} not null",
                    a.base
                );
            }
            r = a.next_retired;
        }
        (sys, free, released)
    }
}

/// Growing and releasing arenas under an address-space limit, against a
/// model of the live spans: the page heap over a checking source
/// ([`CheckedSource`]: every transition checked, `free` only of whole
/// reservations) whose `reserve` and `alloc` fail past a limit, as `mmap`
/// does under `RLIMIT_AS`.
#[cfg(all(test, feature = "linux"))]
mod tests {
    use std::boxed::Box;
    use std::vec::Vec;

    use super::super::{PageHeap, PageMap};
    use super::*;
    use crate::source::MmapSource;
    use crate::span::SpanState;
    use crate::testing::{CheckedSource, Rng};

    type Src = CheckedSource<MmapSource, { 64 << 20 }>;
    const PAGE: PageSize = PageSize::GO;
    const MIB: usize = 1 << 20;
    /// Pages of a 1 MiB span.
    const MIB_PAGES: usize = MIB / PageSize::GO.bytes();
    /// What a growth may need besides its arena: the metadata block of a
    /// 64 MiB arena, a page-map table, the arena table and a span-record chunk.
    const SLACK: usize = MIB;

    /// A span the model holds: its record, first byte and pages.
    #[derive(Clone, Copy)]
    struct Live {
        s: NonNull<Span>,
        start: usize,
        npages: usize,
    }

    struct World {
        src: Src,
        map: Box<PageMap>,
        heap: PageHeap,
        live: Vec<Live>,
        limit: usize,
        /// The most arenas seen in the page map's window at once.
        windowed: core::cell::Cell<usize>,
    }

    impl World {
        fn new(limit: usize) -> World {
            let src = Src::new(MmapSource::new());
            src.set_address_limit(limit);
            World {
                src,
                map: Box::new(PageMap::new()),
                heap: PageHeap::new(),
                live: Vec::new(),
                limit,
                windowed: core::cell::Cell::new(0),
            }
        }

        /// A span of `npages`; on failure, checks that the source really had
        /// no room for the smallest arena that could hold it, and that no
        /// wholly free arena was kept.
        fn take(&mut self, npages: usize) -> Option<Live> {
            let s = self.heap.alloc_span(
                &self.src,
                &self.map,
                Pages::new(npages),
                1,
                SpanState::Large,
            );
            let Some(s) = s else {
                let want = (npages * PAGE.bytes()).next_multiple_of(CHUNK_BYTES);
                let mapped = self.src.mapped_bytes();
                assert!(
                    mapped + want + SLACK > self.limit,
                    "{npages} pages failed with {mapped:#x} of {:#x} mapped",
                    self.limit
                );
                assert!(
                    self.heap.address_short(),
                    "a failure marks address space short"
                );
                self.assert_none_wholly_free();
                self.check();
                return None;
            };
            // SAFETY: a live span record just made.
            let start = unsafe { s.as_ref() }.start.get();
            let l = Live { s, start, npages };
            self.live.push(l);
            self.check();
            Some(l)
        }

        fn free(&mut self, i: usize) {
            let l = self.live.swap_remove(i);
            // SAFETY: a live span of this heap, on no list, unused.
            unsafe { self.heap.free_span(&self.src, l.s) };
            if self.heap.address_short() {
                self.assert_none_wholly_free();
            }
            self.check();
        }

        fn free_all(&mut self, rng: &mut Rng) {
            while !self.live.is_empty() {
                let i = rng.below(self.live.len());
                self.free(i);
            }
        }

        fn assert_none_wholly_free(&self) {
            for slot in self.heap.arenas.slots() {
                let a = self.heap.arenas.get(slot);
                assert!(
                    a.pages.free_pages() < a.npages.get(),
                    "arena {:#x} wholly free, kept",
                    a.base
                );
            }
        }

        /// The model's span holding `addr`, if any.
        fn span_at(&self, addr: usize) -> *mut Span {
            self.live
                .iter()
                .find(|l| l.start <= addr && addr < l.start + l.npages * PAGE.bytes())
                .map_or(null_mut(), |l| l.s.as_ptr())
        }

        /// The heap's identities; its arenas are exactly the source's
        /// reservations; the page map agrees with the model at every live
        /// span's ends.
        fn check(&self) {
            self.heap.check_invariants();
            let mine: Vec<(usize, usize)> = self
                .heap
                .arenas
                .slots()
                .map(|s| {
                    let a = self.heap.arenas.get(s);
                    (a.base.get(), a.npages.bytes(PAGE))
                })
                .collect();
            assert_eq!(
                mine,
                self.src.arenas(),
                "arenas against the source's reservations"
            );
            let mut windowed = 0;
            for s in self.heap.arenas.slots() {
                let a = self.heap.arenas.get(s);
                let w = self.map.window_slots(a.base, a.npages, PAGE);
                assert_eq!(
                    w.unwrap_or(a.own_slots()),
                    a.spans,
                    "arena {:#x}: the window's slots exactly when it lies in the window",
                    a.base
                );
                windowed += usize::from(w.is_some());
            }
            self.windowed.set(self.windowed.get().max(windowed));
            let inuse: usize = self.live.iter().map(|l| l.npages).sum();
            assert_eq!(self.heap.stats(PAGE).inuse, (inuse * PAGE.bytes()) as u64);
            for l in &self.live {
                let last = l.start + l.npages * PAGE.bytes() - 1;
                for a in [l.start, last] {
                    assert_eq!(self.map.span_of(Addr::new(a), PAGE), l.s.as_ptr());
                }
            }
        }

        /// Every address of `addrs` maps to the model's span or to null.
        fn check_addrs(&self, addrs: &[usize]) {
            for &a in addrs {
                assert_eq!(
                    self.map.span_of(Addr::new(a), PAGE),
                    self.span_at(a),
                    "page map at {a:#x}"
                );
            }
        }

        /// 1 MiB spans until one fails; returns the bytes obtained.
        fn fill(&mut self) -> usize {
            let mut n = 0;
            while self.take(MIB_PAGES).is_some() {
                n += MIB;
            }
            n
        }
    }

    impl Drop for World {
        fn drop(&mut self) {
            let mut rng = Rng::new(1);
            self.free_all(&mut rng);
        }
    }

    /// Under a limit of 150 MiB: reservations fall back to smaller arenas,
    /// so 1 MiB spans fill the limit (less a chunk and the metadata); freed,
    /// every arena goes back to the source at once (address space is
    /// short); a 64 MiB span then fits; and rounds of fill and free reuse
    /// the retired metadata blocks (no more blocks after the first), while every
    /// address of the earlier rounds maps to its span or to null.
    #[test]
    fn arenas_fall_back_and_go_back_under_a_limit() {
        let limit = 150 * MIB;
        let mut w = World::new(limit);
        let mut rng = Rng::new(7);
        let first = w.fill();
        assert!(
            first + CHUNK_BYTES + 2 * SLACK >= limit,
            "filled {first:#x} of {limit:#x}"
        );
        assert!(
            w.heap.stats(PAGE).arenas > 2,
            "smaller arenas after the 64 MiB ones"
        );
        assert!(w.windowed.get() > 0, "the first arena is in the window");
        let mut seen: Vec<usize> = w.live.iter().map(|l| l.start).collect();
        w.free_all(&mut rng);
        assert_eq!(w.heap.stats(PAGE).arenas, 0, "every arena released");
        assert!(w.src.arenas().is_empty());
        w.check_addrs(&seen);

        let big = w
            .take(64 * MIB / PAGE.bytes())
            .expect("64 MiB after freeing everything");
        w.check_addrs(&seen);
        w.free(w.live.iter().position(|l| l.start == big.start).unwrap());

        let mut blocks = 0;
        for round in 0..3 {
            let again = w.fill();
            assert!(
                again + CHUNK_BYTES >= first,
                "round {round}: {again:#x} of {first:#x}"
            );
            seen.extend(w.live.iter().map(|l| l.start));
            w.check_addrs(&seen);
            let b = w.heap.arenas.blocks();
            if round > 0 {
                assert!(
                    b <= blocks,
                    "round {round}: metadata blocks {blocks} -> {b}"
                );
            }
            blocks = b;
            w.free_all(&mut rng);
            w.check_addrs(&seen);
        }
        assert!(w.heap.stats(PAGE).arenas_freed > 0);
    }

    /// Random spans of 1 page to 9,000 pages, freed in random order, in
    /// phases of growth and shrinking, under a limit of 100 MiB: arenas are
    /// released, and a request fails only when the source has no room
    /// for the smallest arena that could hold it and no wholly free arena is
    /// left to release (checked in `World::take`), and the heap, the source
    /// and the page map agree with the model after every step.
    #[test]
    fn random_spans_under_a_limit() {
        for seed in 1..=3 {
            let mut w = World::new(100 * MIB);
            let mut rng = Rng::new(seed);
            let mut seen = Vec::new();
            let (mut ok, mut failed) = (0, 0);
            for step in 0..1500 {
                // Phases of growth and of shrinking, so that arenas fill,
                // fail, empty and go back.
                let grow = if (step / 150) % 2 == 0 { 75 } else { 15 };
                if w.live.is_empty() || rng.below(100) < grow {
                    let n = match rng.below(10) {
                        0 => rng.range(2048, 9000),
                        1..=3 => rng.range(64, 1100),
                        _ => rng.range(1, 63),
                    };
                    match w.take(n) {
                        Some(l) => {
                            ok += 1;
                            seen.push(l.start);
                        }
                        None => failed += 1,
                    }
                } else {
                    let i = rng.below(w.live.len());
                    w.free(i);
                }
            }
            w.check_addrs(&seen);
            let freed = w.heap.stats(PAGE).arenas_freed;
            assert!(
                ok > 500 && failed > 0 && freed > 0,
                "seed {seed}: {ok} spans, {failed} failures, {freed} releases"
            );
        }
    }

    /// Without a limit nothing changes: one 64 MiB arena, never released,
    /// and address space never short.
    #[test]
    fn no_limit_no_release() {
        let mut w = World::new(usize::MAX);
        let mut rng = Rng::new(3);
        for _ in 0..40 {
            w.take(MIB_PAGES).unwrap();
        }
        w.free_all(&mut rng);
        assert!(!w.heap.address_short());
        let st = w.heap.stats(PAGE);
        assert_eq!((st.arenas, st.arenas_freed), (1, 0));
    }
}
