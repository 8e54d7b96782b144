//! The page map (Go's `spanOf`): any address to its span in O(1), read
//! without a lock. See `lib.rs` for the overview and [`super`] for the page
//! heap.
//!
//! A two-level radix table over the [`CHUNK_BYTES`] chunks of a 48-bit
//! address space (x86-64 and AArch64 user and kernel halves, taken modulo
//! 2^48), or of the whole address space of a 32-bit target: the first level is inline, a second-level table comes from the
//! source the first time an arena lands under it, and each chunk entry points
//! into its arena's per-page `spans` array (Go's `heapArena.spans`), whose
//! entries also carry a small span's class ([`Entry`]). Entries
//! are published with release stores and read with acquire loads; tables and
//! arenas' metadata blocks are never freed (a released arena's block is
//! retired with all its slots null, see `arenas`), so a reader never sees
//! freed memory.
//!
//! In front of the table, over a source that asks for it
//! ([`PageSource::WINDOW_BYTES`], `mmap`), a *window*: one flat array of
//! slots, one per page of a fixed range from the first arena up (16 GiB on
//! Linux), taken when the heap makes that arena. An arena that lies wholly
//! inside the window uses the window's slots for its pages as its `spans`
//! array, and the radix table has no entry for it; any other arena (past
//! the window's end, across an edge) is in the radix table only. A lookup
//! is then a subtraction, a comparison and one load in the window; only a
//! null entry there (no window, an address outside it, or a page of no live
//! span) goes on to the radix table's three dependent loads. The window's
//! slots are not counted in the heap's metadata bytes: an arena in the
//! window leaves the slots of its own metadata block untouched, and those
//! are counted.
//!
//! Invariant: for every page of a live span, the entry that its arena uses
//! (the window's slot or the radix table's) holds that span, and the other
//! holds null; every other page of an arena holds null in both; an address
//! outside every arena maps to null (through no entry, or one into a
//! retired block or the window). Written under the heap lock, read without.

use core::mem::size_of;
use core::ptr::null_mut;

use crate::sizeclass::SizeClass;
use crate::source::{PageSource, SourcePage};
use crate::span::{Span, SpanState};
use crate::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use crate::units::{Addr, PageSize, Pages};
use crate::CHUNK_BYTES;

/// Address bits covered by the page map: 48 on 64-bit targets, the whole
/// address space on 32-bit ones.
pub(crate) const ADDR_BITS: usize = if usize::BITS >= 48 {
    48
} else {
    usize::BITS as usize
};
const CHUNK_SHIFT: usize = CHUNK_BYTES.trailing_zeros() as usize;
const MAP_BITS: usize = ADDR_BITS - CHUNK_SHIFT; // 26 on 64-bit, 10 on 32-bit
/// The first level: 4,096 entries (32 KiB, inline) on 64-bit; on 32-bit half
/// the bits, so that neither level costs more than a few hundred bytes.
const L1_BITS: usize = if MAP_BITS >= 24 { 12 } else { MAP_BITS / 2 };
const L2_BITS: usize = MAP_BITS - L1_BITS; // 14 on 64-bit, 5 on 32-bit
const L1_ENTRIES: usize = 1 << L1_BITS;
const L2_ENTRIES: usize = 1 << L2_BITS;
/// The covered bits of an address (all of them on 32-bit).
const ADDR_MASK: usize = usize::MAX >> (usize::BITS as usize - ADDR_BITS);

/// One page's entry in an arena's `spans` array: an [`Entry`], published
/// with a release store and read with an acquire load. All-zero bytes are
/// the null entry (fresh and cleared slots are written with zeros).
#[repr(transparent)]
pub(crate) struct SpanSlot(AtomicUsize);

impl SpanSlot {
    /// The entry.
    #[inline(always)]
    pub(crate) fn load(&self, order: Ordering) -> Entry {
        Entry(self.0.load(order))
    }

    /// Points the entry at `span` (or null), with the class of a small span
    /// (see [`Entry`]).
    ///
    /// # Safety
    /// `span` is null or a live span whose `state` and `class` stay as they
    /// are while the entry holds it.
    #[inline]
    pub(crate) unsafe fn store(&self, span: *mut Span, order: Ordering) {
        // SAFETY: forwarded from the caller.
        self.0.store(unsafe { Entry::of(span) }.0, order)
    }
}

/// What a page's slot holds: its span (or null) and, on 64-bit targets,
/// the size class of a span of small objects in the low byte, so that a
/// free learns its object's class from the slot it loads anyway and not
/// from the span record one load further on (the C ABI's free waits on
/// that class before its push). The span's address is kept shifted left
/// by 8 bits: records are only 8-aligned, but the top 9 bits of every
/// address a 64-bit target maps are copies of one bit (canonical 48- and
/// 57-bit addresses), so an arithmetic shift right gives it back
/// ([`Entry::of`] checks it). 32-bit targets keep the plain address and
/// read the class from the record.
///
/// Invariant: `span()` is null or a live span (the page map's); the class
/// byte is nonzero exactly when that span is in state `Small`, and then it
/// is the span's class.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Entry(usize);

/// Bits of an entry below the span's address (64-bit targets).
#[cfg(target_pointer_width = "64")]
const CLASS_BITS: u32 = 8;

impl Entry {
    /// The entry of `span` (null: the null entry).
    ///
    /// # Safety
    /// `span` is null or a live span.
    #[inline]
    unsafe fn of(span: *mut Span) -> Entry {
        #[cfg(target_pointer_width = "64")]
        {
            // SAFETY: the caller's live span.
            let class = match unsafe { span.as_ref() } {
                Some(s) if s.state == SpanState::Small => s.class.index(),
                _ => 0,
            };
            let e = Entry(span.expose_provenance() << CLASS_BITS | class);
            assert!(
                e.span() == span,
                "tieralloc: span record {span:p} is not a canonical address"
            );
            e
        }
        #[cfg(not(target_pointer_width = "64"))]
        {
            Entry(span.expose_provenance())
        }
    }

    /// The span, or null.
    #[inline(always)]
    pub(crate) fn span(self) -> *mut Span {
        #[cfg(target_pointer_width = "64")]
        let a = ((self.0 as isize) >> CLASS_BITS) as usize;
        #[cfg(not(target_pointer_width = "64"))]
        let a = self.0;
        core::ptr::with_exposed_provenance_mut(a)
    }

    /// The class of the span if it holds small objects; `None` for a null
    /// entry and for every other span.
    #[inline(always)]
    pub(crate) fn small_class(self) -> Option<SizeClass> {
        #[cfg(target_pointer_width = "64")]
        {
            let c = self.0 as u8;
            // SAFETY: a class byte is 0 or a class index (the invariant).
            (c != 0).then(|| unsafe { SizeClass::new_unchecked(c) })
        }
        #[cfg(not(target_pointer_width = "64"))]
        {
            // SAFETY: a non-null entry is a live span (the invariant).
            unsafe { self.span().as_ref() }
                .filter(|s| s.state == SpanState::Small)
                .map(|s| s.class)
        }
    }

    /// [`Entry::small_class`]'s index, or 0 for `None`: on 64-bit targets
    /// the entry's low byte, which one compare with a class index splits
    /// into "null or another span" and the classes on either side of it.
    #[inline(always)]
    pub(crate) fn class_index(self) -> usize {
        #[cfg(target_pointer_width = "64")]
        {
            self.0 as u8 as usize
        }
        #[cfg(not(target_pointer_width = "64"))]
        {
            self.small_class().map_or(0, |c| c.index())
        }
    }
}
type L2 = [AtomicPtr<SpanSlot>; L2_ENTRIES];

/// A small arena's entry in the map's list ([`PageSource::SMALL_ARENAS`]
/// sources): its bounds and page slots, and the next arena up. Written once
/// before the arena is published, except `next`, which an insertion below
/// the next arena changes (release store, after the new arena's own `next`).
pub(crate) struct ArenaLink {
    /// First byte (page aligned).
    pub(crate) base: Addr,
    /// One past the last byte of the arena's pages.
    pub(crate) end: Addr,
    /// One slot per page.
    pub(crate) spans: *mut SpanSlot,
    /// The arena above this one, or null.
    pub(crate) next: AtomicPtr<ArenaLink>,
}

/// Address → span, for every page of every arena (see the module docs).
pub struct PageMap {
    l1: [AtomicPtr<L2>; L1_ENTRIES],
    /// Small arenas only: the lowest arena; the list is in address order.
    small: AtomicPtr<ArenaLink>,
    /// The window's first byte (chunk aligned), written once before
    /// `win_pages`.
    win_base: AtomicUsize,
    /// The window's slots, one per page, written once before `win_pages`.
    win_slots: AtomicPtr<SpanSlot>,
    /// Pages of the window: 0 until it is opened (then no address is in
    /// it), published last with a release store.
    win_pages: AtomicUsize,
    /// The window's pages as the C free's fast path sees them
    /// ([`PageMap::window_entry_fast`]): 0 until the heap has published its
    /// restartable sequences (for ever in locked mode), then `win_pages`.
    /// So a lookup that finds a span of small objects through it was made
    /// after the sections were published, and may use them untested.
    fast_pages: AtomicUsize,
}

impl PageMap {
    /// An empty map: every address maps to null.
    pub const fn new() -> Self {
        PageMap {
            l1: [const { AtomicPtr::new(null_mut()) }; L1_ENTRIES],
            small: AtomicPtr::new(null_mut()),
            win_base: AtomicUsize::new(0),
            win_slots: AtomicPtr::new(null_mut()),
            win_pages: AtomicUsize::new(0),
            fast_pages: AtomicUsize::new(0),
        }
    }

    /// The span holding `addr` in a heap over `S`, or null (see
    /// [`PageMap::span_of`]).
    #[inline(always)]
    pub(crate) fn lookup<S: PageSource>(&self, addr: Addr) -> *mut Span {
        self.entry::<S>(addr).span()
    }

    /// The entry of the page holding `addr` in a heap over `S` (null if
    /// `addr` is in no live span of the heap): a walk of the arena list for
    /// a source of small arenas (a few regions, so a few arenas), the radix
    /// table otherwise.
    #[inline]
    pub(crate) fn entry<S: PageSource>(&self, addr: Addr) -> Entry {
        if !S::SMALL_ARENAS {
            return if S::WINDOW_BYTES != 0 {
                self.entry_of(addr, S::PAGE)
            } else {
                self.radix_entry(addr, S::PAGE)
            };
        }
        let mut a = self.small.load(Ordering::Acquire);
        // SAFETY: published links are in arena metadata, never freed.
        while let Some(l) = unsafe { a.as_ref() } {
            if addr < l.base {
                break;
            }
            if addr < l.end {
                // SAFETY: `addr` is inside the arena, whose `spans` has a slot per page.
                return unsafe {
                    (*l.spans.add(S::PAGE.page_at(addr - l.base))).load(Ordering::Acquire)
                };
            }
            a = l.next.load(Ordering::Acquire);
        }
        Entry(0)
    }

    /// [`PageMap::entry`] for a caller that knows the window settled, which
    /// reads the window as [`PageMap::window_entry_settled`] does.
    ///
    /// # Safety
    /// As [`PageMap::window_entry_settled`].
    #[inline(always)]
    pub(crate) unsafe fn entry_settled<S: PageSource>(&self, addr: Addr) -> Entry {
        if S::SMALL_ARENAS || S::WINDOW_BYTES == 0 {
            return self.entry::<S>(addr);
        }
        // SAFETY: forwarded from the caller.
        let e = unsafe { self.window_entry_settled::<S>(addr) };
        self.or_radix(e, addr, S::PAGE)
    }

    /// Publishes the small arena `link` above `below` (or as the lowest
    /// arena), before `above`. Called under the heap lock.
    ///
    /// # Safety
    /// `link` is a fully written link of a new arena between `below` and
    /// `above`, which are published links (or null), and lives for ever.
    pub(crate) unsafe fn insert_small(
        &self,
        link: *mut ArenaLink,
        below: *mut ArenaLink,
        above: *mut ArenaLink,
    ) {
        // SAFETY: the caller's promises; the new link is published last.
        unsafe {
            (*link).next.store(above, Ordering::Release);
            match below.as_ref() {
                Some(b) => b.next.store(link, Ordering::Release),
                None => self.small.store(link, Ordering::Release),
            }
        }
    }

    /// The span holding `addr`, or null if `addr` is not in a live span of
    /// this heap, whose pages are `page` (its source's, a constant).
    #[inline]
    pub fn span_of(&self, addr: Addr, page: PageSize) -> *mut Span {
        self.entry_of(addr, page).span()
    }

    /// The radix table's entry of a span of small objects holding `addr`
    /// in a heap over `S` (a source of large arenas), with its class: for
    /// the C free, which looks in the window first
    /// ([`PageMap::window_entry_fast`]).
    #[inline(always)]
    pub(crate) fn radix_small_entry<S: PageSource>(
        &self,
        addr: Addr,
    ) -> Option<(SizeClass, Entry)> {
        debug_assert!(!S::SMALL_ARENAS);
        let e = self.radix_entry(addr, S::PAGE);
        e.small_class().map(|c| (c, e))
    }

    /// The window's entry for `addr` in a heap over `S`: null outside the
    /// window and for every page of the window that is in no live span of
    /// an arena inside it (see the module docs). The window's base, length
    /// and slots are read plainly (so that they fold into the instructions
    /// that use them), for a caller that knows the window settled.
    ///
    /// # Safety
    /// The window was settled ([`PageHeap::settle_window`]) before
    /// something that this thread has synchronised with since (the heap's
    /// per-CPU caches were published after it): its fields no longer change.
    ///
    /// [`PageHeap::settle_window`]: super::PageHeap::settle_window
    #[inline(always)]
    pub(crate) unsafe fn window_entry_settled<S: PageSource>(&self, addr: Addr) -> Entry {
        // SAFETY: the caller's promise: the fields' last writes happened
        // before this read, and no write races with it.
        unsafe {
            Self::window_slot(
                *self.win_pages.as_ptr(),
                *self.win_base.as_ptr(),
                *self.win_slots.as_ptr(),
                addr,
                S::PAGE,
            )
        }
    }

    /// The window's entry for `addr`, as [`PageMap::window_entry_settled`],
    /// for the C free's fast path, and bounded by the fast window
    /// (`fast_pages`): null before the heap published its restartable
    /// sequences, and always in locked mode. It needs nothing of its
    /// caller: an entry of a span of small objects is Acquire-loaded from
    /// a Release store made after the sections were published (every such
    /// span is made after set-up), so it proves them published and orders
    /// the caller's plain reads of them after it.
    #[inline(always)]
    pub(crate) fn window_entry_fast<S: PageSource>(&self, addr: Addr) -> Entry {
        // SAFETY: the fields are read plainly, so that they fold into the
        // instructions that use them. The base and the slots were written
        // once, before `win_pages` was published, and that before
        // `fast_pages` became non-zero, once, in the set-up; with `n == 0`
        // no slot is read. A caller freeing a live object synchronised with
        // its allocation, which came after the set-up: it races with no
        // write. Only a bad free (a pointer this heap never returned) that
        // runs during the set-up races, and it may see `n == 0`.
        unsafe {
            Self::window_slot(
                *self.fast_pages.as_ptr(),
                *self.win_base.as_ptr(),
                *self.win_slots.as_ptr(),
                addr,
                S::PAGE,
            )
        }
    }

    /// [`PageMap::window_entry_settled`] for pages of `page`, reading the
    /// window's fields atomically (a window that may open meanwhile).
    #[inline(always)]
    fn window_entry_in(&self, addr: Addr, page: PageSize) -> Entry {
        let n = self.win_pages.load(Ordering::Acquire);
        // SAFETY: the base and the slots were written before `win_pages`
        // was published (Release), which the load above acquired.
        unsafe {
            Self::window_slot(
                n,
                self.win_base.load(Ordering::Relaxed),
                self.win_slots.load(Ordering::Relaxed),
                addr,
                page,
            )
        }
    }

    /// The window's slot for `addr`, given the window's pages, base and
    /// slots as read (null outside it).
    ///
    /// # Safety
    /// `slots` has `n` slots: the three are the window's own, read after
    /// its publication.
    #[inline(always)]
    unsafe fn window_slot(
        n: usize,
        base: usize,
        slots: *mut SpanSlot,
        addr: Addr,
        page: PageSize,
    ) -> Entry {
        let i = page.page_at(addr.get().wrapping_sub(base));
        if i >= n {
            return Entry(0);
        }
        // SAFETY: `i < n`: one of the window's slots (never freed).
        unsafe { (*slots.add(i)).load(Ordering::Acquire) }
    }

    /// [`PageMap::span_of`]'s entry.
    #[inline(always)]
    fn entry_of(&self, addr: Addr, page: PageSize) -> Entry {
        self.or_radix(self.window_entry_in(addr, page), addr, page)
    }

    /// `e`, the window's entry for `addr`, or the radix table's if that is
    /// null (outside the window, or no live span there).
    #[inline(always)]
    fn or_radix(&self, e: Entry, addr: Addr, page: PageSize) -> Entry {
        match e {
            Entry(0) => self.radix_entry(addr, page),
            e => e,
        }
    }

    /// The radix table's entry for `addr`.
    #[inline(always)]
    fn radix_entry(&self, addr: Addr, page: PageSize) -> Entry {
        let a = addr.get() & ADDR_MASK;
        let l2 = self.l1[a >> (CHUNK_SHIFT + L2_BITS)].load(Ordering::Acquire);
        if l2.is_null() {
            return Entry(0);
        }
        // SAFETY: published L2 tables are never freed.
        let chunk = unsafe { (*l2)[(a >> CHUNK_SHIFT) & (L2_ENTRIES - 1)].load(Ordering::Acquire) };
        if chunk.is_null() {
            return Entry(0);
        }
        // SAFETY: a chunk entry points at the chunk's slots (one per page) of
        // an arena's spans array, and metadata blocks are never freed.
        unsafe { (*chunk.add(page.page_at(a & (CHUNK_BYTES - 1)))).load(Ordering::Acquire) }
    }

    /// Points the chunk holding `addr` at `slots` (one per page, or
    /// null to unpublish). Returns false if the source could not supply an
    /// L2 table; adds the bytes of a new table to `meta`.
    pub(crate) fn set_chunk<S: PageSource>(
        &self,
        source: &S,
        addr: Addr,
        slots: *mut SpanSlot,
        meta: &mut usize,
    ) -> bool {
        let a = addr.get() & ADDR_MASK;
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

impl PageMap {
    /// Opens the window: `bytes` (whole chunks, fewer if the address space
    /// ends sooner) from `base`, the first arena's first byte, with one slot
    /// per page from `source`, whose `alloc` reads as zero (`ZEROED`).
    /// Called once, under the heap lock; false, with no window, if the
    /// source had no memory for the slots.
    pub(crate) fn open_window<S: PageSource>(&self, source: &S, base: Addr, bytes: usize) -> bool {
        debug_assert!(S::ZEROED && self.win_pages.load(Ordering::Relaxed) == 0);
        let bytes = bytes.min(usize::MAX - base.get()) & !(CHUNK_BYTES - 1);
        let pages = S::PAGE.page_at(bytes);
        if pages == 0 {
            return false;
        }
        let Some(slots) = source.alloc(pages * size_of::<SpanSlot>()) else {
            return false;
        };
        self.win_base.store(base.get(), Ordering::Relaxed);
        self.win_slots
            .store(slots.as_ptr().cast(), Ordering::Relaxed);
        self.win_pages.store(pages, Ordering::Release);
        true
    }

    /// Opens the fast window ([`PageMap::window_entry_fast`]) to the whole
    /// window: called once, by the heap's set-up, after it published its
    /// restartable sequences (never in locked mode).
    pub(crate) fn open_fast_window(&self) {
        self.fast_pages
            .store(self.win_pages.load(Ordering::Relaxed), Ordering::Release);
    }

    /// The window's slots for an arena of `npages` pages of `page` from
    /// `base`, if it lies wholly inside the window; `None` if it does not
    /// (its pages then go in the radix table) or there is no window.
    pub(crate) fn window_slots(
        &self,
        base: Addr,
        npages: Pages,
        page: PageSize,
    ) -> Option<*mut SpanSlot> {
        let n = self.win_pages.load(Ordering::Relaxed);
        let first = page.page_at(
            base.get()
                .wrapping_sub(self.win_base.load(Ordering::Relaxed)),
        );
        // SAFETY: `first + npages <= n`: slots of the window.
        (first < n && n - first >= npages.get())
            .then(|| unsafe { self.win_slots.load(Ordering::Relaxed).add(first) })
    }

    /// Unpublishes the chunk holding `addr` if its entry still points at
    /// `slots` (those of a released arena, whose block is to be reused); an
    /// entry that a newer arena has taken over is left alone. Called under
    /// the heap lock (the only writer), so a load and a store suffice.
    pub(crate) fn clear_chunk(&self, addr: Addr, slots: *mut SpanSlot) {
        let a = addr.get() & ADDR_MASK;
        let l2 = self.l1[a >> (CHUNK_SHIFT + L2_BITS)].load(Ordering::Acquire);
        // SAFETY: published L2 tables are never freed.
        if let Some(l2) = unsafe { l2.as_ref() } {
            let e = &l2[(a >> CHUNK_SHIFT) & (L2_ENTRIES - 1)];
            if e.load(Ordering::Relaxed) == slots {
                e.store(null_mut(), Ordering::Release);
            }
        }
    }
}

impl Default for PageMap {
    fn default() -> Self {
        Self::new()
    }
}

const _: () = assert!(CHUNK_BYTES.is_power_of_two());

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sizeclass::GO;
    use crate::units::Pages;

    /// A span record with the geometry's bitmaps, in its own block.
    #[repr(C, align(8))]
    struct Record([u64; 8 + 3 * WORDS]);
    const WORDS: usize = crate::span::bitmap_words(&GO);

    fn span(r: &mut Record, state: SpanState) -> *mut Span {
        let s = r.0.as_mut_ptr().cast::<Span>();
        let pages = Pages::new(GO.info(SizeClass::new(5).unwrap()).npages as usize);
        // SAFETY: the record and its tail (three bitmaps at most) fit in the block.
        unsafe { Span::init(s, Addr::new(1 << 22), pages, GO.page(), state, WORDS) };
        s
    }

    #[test]
    fn an_entry_carries_a_small_span_s_class_and_nothing_else_s() {
        let mut r = Record([0; 8 + 3 * WORDS]);
        let s = span(&mut r, SpanState::Small);
        let c = SizeClass::new(5).unwrap();
        // SAFETY: `s` is a live record of ours.
        unsafe { (*s).init_small(c, GO.info(c)) };
        let slot = SpanSlot(AtomicUsize::new(0));
        assert_eq!(slot.load(Ordering::Relaxed), Entry(0));
        assert!(Entry(0).span().is_null() && Entry(0).small_class().is_none());
        // SAFETY: `s` is live.
        unsafe { slot.store(s, Ordering::Relaxed) };
        let e = slot.load(Ordering::Relaxed);
        assert_eq!((e.span(), e.small_class()), (s, Some(c)));
        for state in [SpanState::Large, SpanState::Manual, SpanState::Idle] {
            let mut r = Record([0; 8 + 3 * WORDS]);
            let s = span(&mut r, state);
            // SAFETY: `s` is live.
            unsafe { slot.store(s, Ordering::Relaxed) };
            let e = slot.load(Ordering::Relaxed);
            assert_eq!((e.span(), e.small_class()), (s, None), "{state:?}");
        }
        // SAFETY: null.
        unsafe { slot.store(null_mut(), Ordering::Relaxed) };
        assert_eq!(slot.load(Ordering::Relaxed), Entry(0));
    }

    /// Records of a higher-half kernel (x86-64, AArch64, RISC-V) come back
    /// from the shifted address whole.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn higher_half_addresses_survive_the_shift() {
        for a in [
            0xffff_8000_0000_0040_usize,
            0xffff_ffff_ffff_fff8,
            0xff80_0000_0000_0008, // 57-bit (LA57, Sv57)
            0x0000_7fff_ffff_fff8,
            0x007f_ffff_ffff_fff8,
            8,
        ] {
            let e = Entry(a << CLASS_BITS | 67);
            assert_eq!(e.span() as usize, a);
            assert_eq!(e.small_class(), SizeClass::new(67));
        }
    }
}
