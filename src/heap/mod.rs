//! The front: [`Heap`], which ties the tiers together and implements
//! [`GlobalAlloc`]. See `lib.rs` for the overview and the numbered paths.
//!
//! Requests are sorted by [`ObjectKind`]: tiny (under 16 bytes, alignment at
//! most 8; [`tiny`]), small (a size class, up to 32 KiB; larger alignments
//! pick a class whose size is a multiple of the alignment; [`small`]) and
//! large (whole pages from the page heap; [`large`]). The same function sorts
//! `dealloc`'s layout, so a sized free of up to 4 KiB finds its class with one
//! table load and no page-map lookup. Over 4 KiB ([`SHRINK_MIN`]) the page map
//! decides: `realloc` keeps a shrinking object in its larger class
//! ([`stays_in_class`]) and moves a growing one to a span of its own
//! ([`PROMOTE_MIN`]), so the layout no longer names the object's class.
//!
//! Rooms: this file (the type, its set-up, `GlobalAlloc`, the unsized C
//! entry points, whole-heap operations), [`small`] (small objects and the
//! owner/remote frees of the classes under a line), [`tiny`], [`large`]
//! (large objects, promotion, `realloc`), [`stacks`] (the stack front) and
//! [`stats`] (deriving [`Stats`] from the flows between tiers).

mod fine;
#[cfg(feature = "hardened")]
mod hardened;
mod large;
mod small;
pub use small::MALLOC_FAST_MAX;
mod stacks;
mod state;
mod stats;
mod tiny;

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::null_mut;

pub use large::{stays_in_class, PROMOTE_MIN, SHRINK_MIN};
pub use state::transfer_capacity;

use crate::central::{Central, Remote};
use crate::pageheap::{Below, HeapLock, PageHeap, PageMap};
use crate::percpu::{class_cache_bytes, CacheLayout, Caches, Cpu, Shape, Slabs};
use crate::sizeclass::{Geometry, SizeClass, SIZE_TO_CLASS8_MAX};
use crate::source::{PageSource, SourcePage};
use crate::span::{SlotAt, SpanState};
use crate::stack::{StackAlloc, StackCache};
use crate::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use crate::sync::Lock;
use crate::units::Addr;
#[cfg(doc)]
use crate::Stats;
use crate::TINY_SIZE;

use state::{Classes, Pad};
use stats::Flow;

/// How a request is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    /// Packed into a 64-byte block ([`crate::TINY_BLOCK`]) with other tiny objects.
    Tiny,
    /// An object of a size class, through the per-CPU cache.
    Small(SizeClass),
    /// A span of its own.
    Large,
}

impl ObjectKind {
    /// Sorts a request in Go's geometry ([`Geometry::GO`]); see
    /// [`ObjectKind::of_in`].
    #[inline(always)]
    pub const fn of(size: usize, align: usize) -> ObjectKind {
        Self::of_in(&Geometry::GO, size, align)
    }

    /// Sorts a request in geometry `g`; a pure function of `(size, align)`.
    /// The common case (16..=1024 bytes, alignment at most 8) costs two
    /// compares and a table load.
    #[inline(always)]
    pub const fn of_in(g: &Geometry, size: usize, align: usize) -> ObjectKind {
        if align <= 8 && size.wrapping_sub(TINY_SIZE) <= SIZE_TO_CLASS8_MAX - TINY_SIZE {
            return ObjectKind::Small(g.size_to_class_small(size));
        }
        Self::of_rest(g, size, align)
    }

    #[inline(always)]
    const fn of_rest(g: &Geometry, size: usize, align: usize) -> ObjectKind {
        if align <= 8 && size <= g.spec.max_small {
            if size < TINY_SIZE {
                ObjectKind::Tiny
            } else {
                // `of_in` took 16..=SIZE_TO_CLASS8_MAX.
                ObjectKind::Small(g.size_to_class(size))
            }
        } else {
            let c = g.class_for(size, align);
            if c.is_large() {
                ObjectKind::Large
            } else {
                ObjectKind::Small(c)
            }
        }
    }
}

/// Why a free or a `realloc` of a pointer cannot go ahead
/// ([`Heap::try_deallocate_unsized`], [`Heap::try_live_size`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadFree {
    /// Not the start of an object of this heap: a foreign or interior
    /// pointer, or a large object freed before whose span is gone.
    NotAnObject,
    /// The object is already free (a double free), found where
    /// [`FreeSite`] says.
    DoubleFree(FreeSite),
    /// The start of a slot that no allocation returned: free in its span,
    /// or carved into a cache and never handed out. Told from a double free
    /// by the key of feature `hardened`; without it, a slot free in its span
    /// is a [`BadFree::DoubleFree`].
    NeverHandedOut(FreeSite),
}

impl core::fmt::Display for BadFree {
    /// What was found, in words: "an object that is already free (in a
    /// CPU's cache)", "a slot never handed out (in its span)", "not an
    /// object of this heap".
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BadFree::DoubleFree(site) => {
                write!(f, "an object that is already free ({})", site.describe())
            }
            BadFree::NeverHandedOut(site) => {
                write!(f, "a slot never handed out ({})", site.describe())
            }
            BadFree::NotAnObject => f.write_str("not an object of this heap"),
        }
    }
}

/// Where a free object was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeSite {
    /// A CPU's cache (its stack of the object's class).
    CpuCache,
    /// Its class's transfer cache.
    TransferCache,
    /// Its class's remote list (objects freed off their span's CPU).
    RemoteList,
    /// Back in its span.
    Span,
    /// An idle large span in the large-span cache.
    LargeCache,
    /// A free list of a fine heap (a small region heap).
    FreeList,
}

impl FreeSite {
    /// The place, in words.
    pub const fn describe(self) -> &'static str {
        match self {
            FreeSite::CpuCache => "in a CPU's cache",
            FreeSite::TransferCache => "in the transfer cache",
            FreeSite::RemoteList => "in the remote list",
            FreeSite::Span => "in its span",
            FreeSite::LargeCache => "in the large-span cache",
            FreeSite::FreeList => "in a free list",
        }
    }
}

/// What [`Heap::slot_at`] found at a pointer.
enum Slot {
    /// The start of an object of this class, handed out (its alloc bit).
    Small(SizeClass),
    /// The start of a live large object.
    Large,
}

/// The allocator: per-CPU caches over central lists over a page heap over `S`.
///
/// `Heap::new` is `const`; the heap sets itself up on first use (the per-CPU
/// caches come from the source then). All methods are thread-safe.
///
/// Lock order (see `lib.rs`): CPU slot → `central[c]` (one class at a time)
/// → the page heap; a stack pool instead of a central lock, never both; the
/// set-up lock `init` before all of them.
///
/// `repr(C)` with the per-CPU tier first: the fast paths address it at small
/// offsets from the heap's address, next to nothing else they need.
#[repr(C)]
pub struct Heap<S: PageSource, C: Cpu> {
    /// The per-CPU tier: the `Cpu`, the caches, the restartable sequences.
    slabs: Slabs<C>,
    /// The secret of the free objects' keys (next to the slabs: every free
    /// reads it); set at set-up, before the caches are published.
    #[cfg(feature = "hardened")]
    key: hardened::FreeKey,
    /// The C free's slot table ([`crate::span::PageSlots`]) in the heap
    /// itself where the heap has the restartable sequences: the free then
    /// indexes it and the stack words from one register, the heap's
    /// address, instead of taking the constant's address too. Empty (every
    /// test fails) until the set-up fills it, so that the static stays all
    /// zeros (`.bss`); written once, before the fast window opens, and read
    /// only after an entry found there.
    #[cfg(all(feature = "hardened", rseq))]
    page_slots: core::cell::UnsafeCell<crate::span::PageSlots>,
    source: S,
    /// Set-up lock; guards the bytes of per-CPU metadata taken from the source.
    init: Lock<usize, C::Relax>,
    /// The page heap (its lock is the heap lock).
    pages: HeapLock<C::Relax>,
    /// Address → span, read without a lock.
    map: PageMap,
    /// Per class: central list, remote list, flow counters; carved at set-up
    /// ([`state`]), null before.
    classes: AtomicPtr<Classes<C::Relax>>,
    /// Stacks (Go's stackpool), with a per-CPU stack cache array set up next
    /// to the slabs.
    stacks: StackAlloc<C::Relax>,
    /// One per CPU, or null (before set-up, and for ever in a region heap).
    stack_caches: AtomicPtr<StackCache>,
    /// When the decay is next worth polling (the source's ms; 0: at once).
    /// Only read and written where `S::CLOCK`.
    decay_next: AtomicU64,
    /// The fine heap that serves every object of a small region heap
    /// ([`fine`]), carved at set-up; null in a tiered heap and before.
    fine: AtomicPtr<fine::FineLock<C>>,
    /// The heap is served by the tiers (decided at set-up, or by
    /// [`Heap::prefer_tiers`]); only region heaps ever read it.
    tiered: AtomicBool,
}

// SAFETY: all shared state is behind locks, atomics, or the per-CPU exclusivity
// that `C: Cpu` promises; `S` is Sync.
unsafe impl<S: PageSource + Sync, C: Cpu> Sync for Heap<S, C> {}
// SAFETY: as above; the heap owns no thread-bound state.
unsafe impl<S: PageSource + Send, C: Cpu + Send> Send for Heap<S, C> {}

/// Where the per-CPU caches of a heap over `S` keep each class's stack: a
/// constant of the source's geometry, so that every offset and capacity
/// folds into the code, or for a source of fixed regions
/// ([`PageSource::SMALL_ARENAS`]) computed at set-up from its bound, so that
/// a heap of kilobytes does not carve caches sized for gigabytes.
impl<S: PageSource> Shape for S {
    const FIXED: Option<&'static CacheLayout> = if S::SMALL_ARENAS {
        None
    } else {
        Some(&CacheLayout::unbounded(S::GEOMETRY))
    };
}

impl<S: PageSource, C: Cpu> Heap<S, C> {
    /// A heap over `source`, with per-CPU caches keyed by `cpu`. Takes nothing
    /// from the source until the first allocation.
    pub const fn new(source: S, cpu: C) -> Self {
        const {
            let g = S::GEOMETRY;
            assert!(
                g.page_bytes() <= crate::PAGE_BYTES && g.max_objects <= crate::span::MAX_OBJECTS,
                "the source's geometry has pages over 8 KiB or spans of over 1,024 objects"
            );
            assert!(
                g.page_bytes().is_multiple_of(S::PAGE_SIZE),
                "the source's PAGE_SIZE does not divide its geometry's page"
            );
        }
        Heap {
            source,
            slabs: Slabs::new(cpu),
            #[cfg(feature = "hardened")]
            key: hardened::FreeKey::new(),
            #[cfg(all(feature = "hardened", rseq))]
            page_slots: core::cell::UnsafeCell::new(crate::span::PageSlots::EMPTY),
            init: Lock::new(0),
            pages: Lock::new(PageHeap::new()),
            map: PageMap::new(),
            classes: AtomicPtr::new(null_mut()),
            stacks: StackAlloc::new(),
            stack_caches: AtomicPtr::new(null_mut()),
            decay_next: AtomicU64::new(0),
            fine: AtomicPtr::new(null_mut()),
            tiered: AtomicBool::new(false),
        }
    }

    /// What a request of `(size, align)` is in this heap: its kind in the
    /// geometry ([`ObjectKind::of_in`]), with a small class, for a region
    /// heap of tens of kilobytes, the coarser class it is served from
    /// (`state::coarse_div`). The heap sets itself up first there, so the
    /// choice is fixed before any object exists, and an allocation and its
    /// free always agree.
    #[inline(always)]
    fn kind(&self, size: usize, align: usize) -> ObjectKind {
        let k = ObjectKind::of_in(S::GEOMETRY, size, align);
        if S::SMALL_ARENAS && align <= 8 {
            if let ObjectKind::Small(c) = k {
                if self.caches().is_some() {
                    return ObjectKind::Small(self.set_up_classes().coarse(c));
                }
            }
        }
        k
    }

    /// Whether a sized free (or `realloc`) of `size` bytes finds the slot's
    /// class through the page map rather than from the layout: over
    /// [`SHRINK_MIN`] (the slot may be larger: `realloc` shrinks in place),
    /// and at every size in a region heap, whose out-of-room allocations
    /// borrow larger slots ([`Heap::alloc_borrowed`]).
    #[inline(always)]
    const fn frees_by_map(size: usize) -> bool {
        S::SMALL_ARENAS || size > SHRINK_MIN
    }

    /// The page source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// The CPU mapping.
    pub fn cpu(&self) -> &C {
        self.slabs.cpu()
    }

    fn below(&self) -> Below<'_, S, C::Relax> {
        Below {
            source: &self.source,
            map: &self.map,
            heap: &self.pages,
            #[cfg(feature = "hardened")]
            secret: Self::PAGE_SLOTS_MARKED.then(|| self.key.secret()),
        }
    }

    /// The per-class state, once the heap is set up.
    fn classes(&self) -> Option<&Classes<C::Relax>> {
        // SAFETY: non-null only once `set_up` wrote the block, which lives for ever.
        unsafe { self.classes.load(Ordering::Acquire).as_ref() }
    }

    /// Class `c`'s state, on a path that has the per-CPU caches (so the heap
    /// is set up).
    #[inline]
    fn set_up_classes(&self) -> &Classes<C::Relax> {
        match self.classes() {
            Some(cl) => cl,
            None => unreachable!("tieralloc: the per-class state is set up with the caches"),
        }
    }

    /// Class `c`'s central list (the heap is set up).
    #[inline]
    fn central(&self, c: SizeClass) -> &Lock<Central, C::Relax> {
        self.set_up_classes().central(c)
    }

    /// Class `c`'s flow counters (the heap is set up).
    #[inline]
    fn flow(&self, c: SizeClass) -> &Flow {
        self.set_up_classes().flow(c)
    }

    /// Line-sharing class `c`'s remote list (the heap is set up).
    #[inline]
    fn remote(&self, c: SizeClass) -> &Remote {
        self.set_up_classes().remote(c)
    }

    /// The per-CPU caches, setting them up on first use; `None` if the source
    /// cannot supply them.
    #[inline(always)]
    fn caches(&self) -> Option<Caches<'_, C, S>> {
        match self.slabs.get::<S>() {
            Some(s) => Some(s),
            None => self.set_up(),
        }
    }

    #[cold]
    #[inline(never)]
    fn set_up(&self) -> Option<Caches<'_, C, S>> {
        let mut meta = self.init.lock();
        if let Some(s) = self.slabs.get::<S>() {
            return Some(s);
        }
        if S::SMALL_ARENAS && !self.fine.load(Ordering::Acquire).is_null() {
            return None;
        }
        // The C free reads the window plainly once the caches are out.
        self.pages.lock().settle_window(&self.source, &self.map);
        let count = self.cpu().count().max(1);
        let bound = self.source.bound();
        let budget = state::transfer_budget(bound);
        // One CPU contends for no line: pack the centrals.
        let pad = if count == 1 { Pad::Packed } else { Pad::Lines };
        // A region heap of tens of kilobytes serves from fewer classes.
        let coarse = if S::SMALL_ARENAS {
            state::coarse_div(bound)
        } else {
            0
        };
        let shards = state::transfer_shards(count);
        let class_bytes = Classes::<C::Relax>::bytes(S::GEOMETRY, budget, shards, pad, coarse);
        let cl = self.source.alloc(class_bytes)?;
        let layout = match S::FIXED {
            Some(l) => *l,
            None => CacheLayout::serving(
                S::GEOMETRY,
                class_cache_bytes(bound),
                Some(&state::coarse_classes(S::GEOMETRY, coarse)),
            ),
        };
        let rseq = self.slabs.rseq_plan(&layout);
        let bytes = Slabs::<C>::bytes::<S>(count, &layout, rseq.is_some());
        // A region heap keeps no stack caches: its stacks come straight from
        // the pools, and its memory goes to objects.
        let stack_bytes = if S::SMALL_ARENAS {
            0
        } else {
            count * core::mem::size_of::<StackCache>()
        };
        let p = self.source.alloc(bytes)?;
        let sc = match stack_bytes {
            0 => None,
            n => Some(self.source.alloc(n)?),
        };
        if !S::ZEROED {
            // SAFETY: fresh Ready memory; all-zero is a valid empty cache of either kind.
            unsafe {
                p.as_ptr().write_bytes(0, bytes);
                if let Some(sc) = sc {
                    sc.as_ptr().write_bytes(0, stack_bytes);
                }
            }
        }
        *meta = class_bytes.next_multiple_of(S::PAGE_SIZE)
            + bytes.next_multiple_of(S::PAGE_SIZE)
            + stack_bytes.next_multiple_of(S::PAGE_SIZE);
        // SAFETY: `class_bytes` fresh bytes, page aligned, ours for ever.
        let classes =
            unsafe { Classes::init(S::GEOMETRY, cl.as_ptr(), budget, shards, pad, coarse) };
        #[cfg(feature = "hardened")]
        {
            let now = if S::CLOCK { self.source.now_ms() } else { 0 };
            let here = &now as *const u64 as usize;
            let seed = (self as *const Self as usize as u64).rotate_left(32)
                ^ cl.as_ptr() as usize as u64
                ^ (here as u64).rotate_left(16)
                ^ now;
            self.key.set(seed);
            // SAFETY: once, under the set-up lock, before the fast window
            // opens: no reader yet (see the field).
            #[cfg(rseq)]
            unsafe {
                *self.page_slots.get() = Self::PAGE_SLOTS
            };
        }
        // Published before the caches: whoever sees those sees this.
        self.classes.store(classes, Ordering::Release);
        // A region heap set up with tiers stays tiered.
        self.tiered.store(true, Ordering::Release);
        if let Some(sc) = sc {
            self.stack_caches
                .store(sc.as_ptr().cast(), Ordering::Release);
        }
        // SAFETY: once, under the set-up lock; the block is ours for ever,
        // zeroed, page aligned, `bytes(count)` long, and `count` is the CPU
        // mapping's (its `count` never changes), `rseq` the plan `bytes` had.
        let caches = unsafe {
            self.slabs
                .install::<S>(p.as_ptr(), count, &layout, S::GEOMETRY, rseq)
        };
        // After the sections: a C free that finds a small span through the
        // fast window may use them untested.
        if caches.uses_rseq() {
            self.map.open_fast_window();
        }
        Some(caches)
    }

    /// Runs a whole operation inside [`Cpu::operation`] if the `Cpu` asks for
    /// it ([`Cpu::GUARDS_OPERATIONS`]). The fast paths test the constant
    /// themselves, so that with the default they are the same code as
    /// without it (a closure would be a call LLVM need not inline).
    #[inline(always)]
    fn guarded<R>(&self, f: impl FnOnce() -> R) -> R {
        if C::GUARDS_OPERATIONS {
            self.cpu().operation(f)
        } else {
            f()
        }
    }

    /// Whether per-CPU operations use restartable sequences (Linux x86-64 with
    /// glibc's rseq area) rather than the CPU slot's lock. Sets the heap up.
    pub fn uses_rseq(&self) -> bool {
        self.guarded(|| self.fine().is_none() && self.caches().is_some_and(|s| s.uses_rseq()))
    }

    // ----------------------------------------------------------- operations

    /// Allocates `layout`, or returns null (impossible layout or out of memory).
    #[inline(always)]
    pub fn allocate(&self, layout: Layout) -> *mut u8 {
        if C::GUARDS_OPERATIONS {
            if let Some(f) = self.fine_ready() {
                let (size, align) = (layout.size(), layout.align());
                return self
                    .cpu()
                    .operation(|| f.lock().alloc(&self.source, size, align));
            }
            return self.cpu().operation(|| self.allocate_unguarded(layout));
        }
        self.allocate_unguarded(layout)
    }

    /// The operation itself, inside the caller's [`Cpu::operation`] if any.
    #[inline(always)]
    fn allocate_unguarded(&self, layout: Layout) -> *mut u8 {
        if let Some(f) = self.fine() {
            return f.lock().alloc(&self.source, layout.size(), layout.align());
        }
        match self.kind(layout.size(), layout.align()) {
            ObjectKind::Tiny => self.alloc_tiny(layout.size(), layout.align()),
            ObjectKind::Small(c) => {
                let p = self.alloc_small(c);
                if S::SMALL_ARENAS && p.is_null() {
                    return self.alloc_borrowed(c, layout.align());
                }
                p
            }
            ObjectKind::Large => self
                .alloc_large(layout.size(), layout.align())
                .map_or(null_mut(), |(p, _)| p.as_ptr()),
        }
    }

    /// Frees `p`, allocated with `layout`.
    ///
    /// # Safety
    /// `p` was returned by this heap for `layout` (or a layout of the same kind)
    /// and is not used afterwards.
    #[inline(always)]
    pub unsafe fn deallocate(&self, p: *mut u8, layout: Layout) {
        if C::GUARDS_OPERATIONS {
            if let Some(f) = self.fine_ready() {
                let size = layout.size();
                let r = self.cpu().operation(|| f.lock().free(p, Some(size)));
                if let Err(why) = r {
                    self.fine_refused(p, why);
                }
                return;
            }
            // SAFETY: forwarded from the caller.
            return self
                .cpu()
                .operation(|| unsafe { self.deallocate_unguarded(p, layout) });
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.deallocate_unguarded(p, layout) }
    }

    /// The operation itself, inside the caller's [`Cpu::operation`] if any.
    #[inline(always)]
    unsafe fn deallocate_unguarded(&self, p: *mut u8, layout: Layout) {
        if let Some(f) = self.fine() {
            let r = f.lock().free(p, Some(layout.size()));
            if let Err(why) = r {
                self.fine_refused(p, why);
            }
            return;
        }
        match self.kind(layout.size(), layout.align()) {
            ObjectKind::Tiny => self.free_tiny(p),
            // Sizes up to 1 KiB never get here: `ObjectKind::of`'s first branch
            // bounds them, so the compiler drops this test from the fast path.
            ObjectKind::Small(c) if Self::frees_by_map(layout.size()) => self.free_by_map(p, c),
            ObjectKind::Small(c) => self.free_small(p, c),
            ObjectKind::Large => self.free_large(p),
        }
    }

    /// Allocates zeroed memory; large objects known to be fresh from the source are not written.
    pub fn allocate_zeroed(&self, layout: Layout) -> *mut u8 {
        if C::GUARDS_OPERATIONS {
            return self
                .cpu()
                .operation(|| self.allocate_zeroed_unguarded(layout));
        }
        self.allocate_zeroed_unguarded(layout)
    }

    /// The operation itself, inside the caller's [`Cpu::operation`] if any.
    #[inline(always)]
    fn allocate_zeroed_unguarded(&self, layout: Layout) -> *mut u8 {
        if let Some(f) = self.fine() {
            let p = f.lock().alloc(&self.source, layout.size(), layout.align());
            if !p.is_null() {
                // SAFETY: a fresh block of at least `size` bytes.
                unsafe { p.write_bytes(0, layout.size()) };
            }
            return p;
        }
        match self.kind(layout.size(), layout.align()) {
            ObjectKind::Large => match self.alloc_large(layout.size(), layout.align()) {
                Some((p, needzero)) => {
                    if needzero {
                        // SAFETY: the span holds at least `size` bytes, ours.
                        unsafe { p.as_ptr().write_bytes(0, layout.size()) };
                    }
                    p.as_ptr()
                }
                None => null_mut(),
            },
            _ => {
                let p = self.allocate(layout);
                if !p.is_null() {
                    // SAFETY: a fresh object of at least `size` bytes.
                    unsafe { p.write_bytes(0, layout.size()) };
                }
                p
            }
        }
    }

    // ------------------------------------------------------ unsized (C ABI)

    /// Bytes usable at `p` if `p` is the start of an object slot of this heap
    /// (its class size, or its large span's bytes); `None` for foreign and
    /// interior pointers and freed large objects. Never panics, never allocates.
    /// (A freed small object's slot still answers: its span is live.)
    pub fn try_usable_size(&self, p: *mut u8) -> Option<usize> {
        if S::SMALL_ARENAS {
            if let Some(r) = self.guarded(|| self.fine().map(|f| f.lock().usable(p).ok())) {
                return r;
            }
        }
        // SAFETY: non-null page-map entries are live spans.
        match unsafe { self.map.lookup::<S>(Addr::of(p)).as_ref() } {
            Some(span) if span.state == SpanState::Small && span.index_of(Addr::of(p)).1 => {
                Some(S::GEOMETRY.size(span.class))
            }
            Some(span) if span.state == SpanState::Large && span.start == Addr::of(p) => {
                Some(span.npages().bytes(S::PAGE))
            }
            _ => None,
        }
    }

    /// As [`Heap::try_usable_size`], panicking with the address when `p` is not an object.
    pub fn usable_size(&self, p: *mut u8) -> usize {
        match self.try_usable_size(p) {
            Some(n) => n,
            None => panic!(
                "tieralloc: {p:p} is not an object of this heap (foreign or interior pointer)"
            ),
        }
    }

    /// Frees `p` without its layout, finding the span through the page map (C's
    /// `free`). Objects must not be tiny: the C ABI asks for 16-byte alignment,
    /// which never makes tiny objects.
    ///
    /// # Safety
    /// `p` is a live, non-tiny object of this heap and is not used afterwards.
    pub unsafe fn deallocate_unsized(&self, p: *mut u8) {
        if C::GUARDS_OPERATIONS {
            // SAFETY: forwarded from the caller.
            return self
                .cpu()
                .operation(|| unsafe { self.deallocate_unsized_unguarded(p) });
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.deallocate_unsized_unguarded(p) }
    }

    /// The operation itself, inside the caller's [`Cpu::operation`] if any.
    #[inline(always)]
    unsafe fn deallocate_unsized_unguarded(&self, p: *mut u8) {
        if let Some(f) = self.fine() {
            let r = f.lock().free(p, None);
            if let Err(why) = r {
                self.fine_refused(p, why);
            }
            return;
        }
        // SAFETY: non-null page-map entries are live spans.
        match unsafe { self.map.lookup::<S>(Addr::of(p)).as_ref() } {
            Some(span) if span.state == SpanState::Small => self.free_small(p, span.class),
            Some(span) if span.state == SpanState::Large || span.state == SpanState::Idle => {
                self.free_large(p)
            }
            _ => panic!("tieralloc: free of {p:p}: not a pointer into this heap (foreign pointer or double free)"),
        }
    }

    /// C's `free`, checked: frees `p` if it starts a live object of this
    /// heap, else returns why not and changes nothing. Caught: foreign and
    /// interior pointers, slots free in their spans, large objects already
    /// freed while their span idles in the large-span cache, and with
    /// feature `hardened` objects free anywhere (see `heap::hardened`).
    /// Objects must not be tiny (as [`Heap::deallocate_unsized`]).
    ///
    /// # Safety
    /// If `p` is a live object of this heap, it is the caller's and is not
    /// used afterwards; no other thread frees `p` meanwhile.
    #[inline(always)]
    pub unsafe fn try_deallocate_unsized(&self, p: *mut u8) -> Result<(), BadFree> {
        if C::GUARDS_OPERATIONS {
            // SAFETY: forwarded from the caller.
            return self
                .cpu()
                .operation(|| unsafe { self.try_deallocate_unsized_unguarded(p) });
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.try_deallocate_unsized_unguarded(p) }
    }

    /// The operation itself, inside the caller's [`Cpu::operation`] if any.
    #[inline(always)]
    unsafe fn try_deallocate_unsized_unguarded(&self, p: *mut u8) -> Result<(), BadFree> {
        if let Some(f) = self.fine() {
            let r = f.lock().free(p, None);
            return r.map(|_| ()).map_err(Self::fine_bad_free);
        }
        // SAFETY: forwarded from the caller.
        match unsafe { self.slot_at(p) }? {
            Slot::Small(c) => {
                // SAFETY: `p` starts a handed-out object of class `c`,
                // the caller's unless it is free (which this checks).
                #[cfg(feature = "hardened")]
                unsafe {
                    self.mark_free(p, c)?
                };
                self.free_small_marked(p, c);
            }
            Slot::Large => self.free_large(p),
        }
        Ok(())
    }

    /// The bytes usable at `p` if it starts a live object of this heap
    /// (C's `realloc` asks before it resizes), else why not: the checks of
    /// [`Heap::try_deallocate_unsized`], without the free.
    ///
    /// # Safety
    /// No other thread frees `p` meanwhile.
    pub unsafe fn try_live_size(&self, p: *mut u8) -> Result<usize, BadFree> {
        self.guarded(|| {
            if let Some(f) = self.fine() {
                let r = f.lock().usable(p);
                return r.map_err(Self::fine_bad_free);
            }
            // SAFETY: forwarded from the caller.
            match unsafe { self.slot_at(p) }? {
                Slot::Small(c) => {
                    // SAFETY: as in `try_deallocate_unsized`.
                    #[cfg(feature = "hardened")]
                    unsafe {
                        self.check_key(p, c)?
                    };
                    Ok(S::GEOMETRY.size(c))
                }
                Slot::Large => self.try_usable_size(p).ok_or(BadFree::NotAnObject),
            }
        })
    }

    /// What `p` is the start of: a handed-out object of a class, a live
    /// large object, or (`Err`) neither. Reads the alloc bit without the
    /// span's lock (exact for an object the caller holds).
    ///
    /// # Safety
    /// No other thread frees `p` meanwhile.
    #[inline(always)]
    unsafe fn slot_at(&self, p: *mut u8) -> Result<Slot, BadFree> {
        let a = Addr::of(p);
        // SAFETY: non-null page-map entries are live spans.
        match unsafe { self.map.lookup::<S>(a).as_ref() } {
            Some(span) if span.state == SpanState::Small => {
                match span.slot_at_unlocked(a) {
                    SlotAt::NotASlot => return Err(BadFree::NotAnObject),
                    SlotAt::HandedOut => return Ok(Slot::Small(span.class)),
                    SlotAt::Free => {}
                }
                #[cfg(feature = "hardened")]
                // SAFETY: `p` starts a slot of a live span (no one frees
                // it meanwhile: the caller's promise).
                if !unsafe { self.key_says_freed(p) } {
                    return Err(BadFree::NeverHandedOut(FreeSite::Span));
                }
                Err(BadFree::DoubleFree(FreeSite::Span))
            }
            Some(span) if span.start == a && span.state == SpanState::Large => Ok(Slot::Large),
            Some(span) if span.start == a && span.state == SpanState::Idle => {
                Err(BadFree::DoubleFree(FreeSite::LargeCache))
            }
            _ => Err(BadFree::NotAnObject),
        }
    }

    // ------------------------------------------------------- whole-heap ops

    /// Gives back every CPU's cached objects and tiny block, empties the
    /// transfer caches, and releases all free pages to the source (Go's
    /// `debug.FreeOSMemory`). Returns the bytes released by this call. A
    /// fine heap gives its quick lists back to its bins (and releases nothing).
    ///
    /// In rseq mode another CPU's cache is drained only if the kernel offers the
    /// expedited-rseq membarrier (Linux ≥ 5.10); otherwise those caches (at most
    /// [`crate::CACHE_BOUND_BYTES`] each) stay as they are.
    pub fn scavenge(&self) -> usize {
        self.guarded(|| {
            if let Some(f) = self.fine() {
                // Its quick lists go back to its bins; nothing goes back to the source.
                f.lock().flush_quick();
                return 0;
            }
            let below = self.below();
            self.drain_caches(&below);
            let mut h = self.pages.lock();
            h.flush_large_cache(&self.source);
            h.scavenge(&self.source, usize::MAX) * S::PAGE.bytes()
        })
    }

    /// Returns every CPU's cached objects and tiny block, the transfer
    /// caches, the remote lists and the stack caches to their spans, so that
    /// spans with no live object go back to the page heap: the first half of
    /// [`Heap::scavenge`], and what an allocation the page heap cannot serve
    /// does before it tries once more. Holds no lock on entry.
    pub(super) fn drain_caches(&self, below: &Below<'_, S, C::Relax>) {
        if let Some(s) = self.slabs.get::<S>() {
            // First the tiny blocks (retiring one may free it into some CPU's
            // stack), retired outside the CPU's exclusivity.
            for i in 0..s.count() {
                if let Some(t) = s.take_tiny(i) {
                    self.retire_tiny(s, t);
                }
            }
            for i in 0..s.count() {
                s.drain(i, |c, objs| {
                    self.central(c).lock().flush(c, objs, below, i);
                    self.flow(c).flushed_from_slabs(objs.len());
                });
            }
        }
        if let Some(cl) = self.classes() {
            for c in cl.kept() {
                let mut central = self.central(c).lock();
                if S::GEOMETRY.shares_lines(c) {
                    central.give_back_remote(c, self.remote(c), below);
                }
                central.drain_transfer(c, below);
            }
        }
        self.drain_stack_caches(below);
    }

    /// Sets the dirty free memory always kept before the scavenger releases
    /// pages (default [`crate::DEFAULT_RETAIN_BYTES`]); the scavenger's
    /// allowance is this or the room under 1.5 times the recent in-use peak,
    /// whichever is larger (see `pageheap::scavenger`). A floor above 16 MiB
    /// also lets the large-span cache hold a quarter of it (at most 32 MiB).
    pub fn set_retain_bytes(&self, bytes: usize) {
        self.guarded(|| {
            self.pages.lock().set_retain_bytes(bytes, S::PAGE);
        })
    }

    /// Sets the decay period: free memory that stays unused for `ms`
    /// milliseconds goes back to the source (default
    /// [`crate::DEFAULT_DECAY_MS`]; `u64::MAX` turns the decay off, 0
    /// restores the default). Only sources with a clock decay
    /// ([`PageSource::CLOCK`]: `MmapSource`).
    pub fn set_decay_ms(&self, ms: u64) {
        self.guarded(|| {
            self.pages.lock().set_decay_ms(ms);
            self.decay_next.store(0, Ordering::Relaxed);
        })
    }

    /// The decay period in milliseconds ([`crate::DEFAULT_DECAY_MS`] unless
    /// [`Heap::set_decay_ms`] set another; `u64::MAX`: off).
    pub fn decay_ms(&self) -> u64 {
        self.guarded(|| self.pages.lock().decay_ms())
    }

    /// Releases the free memory that has stayed unused for the decay period
    /// (see [`Heap::set_decay_ms`]), if the clock says a quarter of the
    /// period has passed since the last look; returns the bytes released.
    /// The heap calls it itself on its slower paths and every 4,096th
    /// malloc of a class on a CPU; a program that goes quiet and wants its
    /// memory back anyway can call it from a thread of its own every quarter
    /// period (the C library's `TIERALLOC_BACKGROUND_THREAD`).
    pub fn decay(&self) -> usize {
        self.guarded(|| self.decay_poll())
    }

    /// The decay's poll (see [`Heap::decay`]), inside an operation: one
    /// clock read and one load unless a slot has ended. Never waits for the
    /// heap lock: if another CPU holds it, the next poll looks again.
    #[cold]
    #[inline(never)]
    fn decay_poll(&self) -> usize {
        if !S::CLOCK {
            return 0;
        }
        let now = self.source.now_ms();
        if now < self.decay_next.load(Ordering::Relaxed) {
            return 0;
        }
        self.decay_poll_at(now)
    }

    /// The poll itself at `now`, whether or not a slot has ended.
    fn decay_poll_at(&self, now: u64) -> usize {
        let Some(mut h) = self.pages.try_lock() else {
            return 0;
        };
        let (released, next) = h.decay(&self.source, now);
        self.decay_next.store(next, Ordering::Relaxed);
        released * S::PAGE.bytes()
    }

    /// Polls the decay when the source has a clock and `due` (a tick of the
    /// fast path, or a slower path): compiled out for sources without one.
    #[inline(always)]
    fn decay_tick(&self, due: bool) {
        if S::CLOCK && due {
            self.decay_poll();
        }
    }

    /// Polls the decay after a large object's pages went back to the page
    /// heap, even inside a slot: the poll marks the memory idle from now on
    /// (see `pageheap::scavenger`, "Decay"), so that after a pause the
    /// next activity finds it idle through the pause.
    #[inline]
    fn decay_after_free(&self) {
        if S::CLOCK {
            self.decay_poll_at(self.source.now_ms());
        }
    }

    /// Walks every tier and panics with a message on the first broken invariant.
    /// Call it at quiescence (tests, the `checks` feature's users).
    pub fn check_invariants(&self) {
        self.guarded(|| {
            if let Some(f) = self.fine() {
                f.lock().check_invariants();
            }
            if let Some(cl) = self.classes() {
                for c in cl.kept() {
                    self.central(c).lock().check_invariants(c);
                }
            }
            self.stacks.check_invariants();
            self.pages.lock().check_invariants();
        })
    }

    /// Takes every lock of the heap (CPU slots, central lists, stack pools,
    /// page heap, set-up), so that no operation is half done: call before `fork`.
    pub fn lock_all(&self) {
        core::mem::forget(self.init.lock());
        // SAFETY: set once to a lock carved for ever.
        if let Some(f) = unsafe { self.fine.load(Ordering::Acquire).as_ref() } {
            f.hold(self.cpu());
        }
        if self.slabs.get::<S>().is_some() {
            for i in 0..self.cpu().count() {
                self.cpu().acquire_slot(i);
            }
        }
        if let Some(cl) = self.classes() {
            for c in cl.centrals() {
                core::mem::forget(c.lock());
            }
        }
        self.stacks.lock_all();
        core::mem::forget(self.pages.lock());
    }

    /// Releases what [`Heap::lock_all`] took (in the parent and in the child after `fork`).
    ///
    /// # Safety
    /// The calling thread (or, in a forked child, its parent thread) called `lock_all`.
    pub unsafe fn unlock_all(&self) {
        // SAFETY: each lock was taken and forgotten by `lock_all`.
        unsafe {
            self.pages.force_unlock();
            self.stacks.unlock_all();
            if let Some(cl) = self.classes() {
                for c in cl.centrals() {
                    c.force_unlock();
                }
            }
            if self.slabs.get::<S>().is_some() {
                for i in 0..self.cpu().count() {
                    self.cpu().release_slot(i);
                }
            }
            if let Some(f) = self.fine.load(Ordering::Acquire).as_ref() {
                f.unhold(self.cpu());
            }
            self.init.force_unlock();
        }
    }
}

// SAFETY: `allocate` returns null or a block of at least `layout.size()` bytes
// aligned to `layout.align()` that no other live allocation overlaps; the free
// paths take blocks back only as their owners hand them over.
unsafe impl<S: PageSource + Sync, C: Cpu> GlobalAlloc for Heap<S, C> {
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.allocate(layout)
    }

    #[inline(always)]
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: forwarded from the caller.
        unsafe { self.deallocate(p, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.allocate_zeroed(layout)
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        unsafe { self.reallocate(p, layout, new_size) }
    }
}
