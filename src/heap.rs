//! The front: [`Heap`], which ties the tiers together and implements
//! [`GlobalAlloc`]. See `lib.rs` for the overview and the numbered paths.
//!
//! Requests are sorted by [`Kind`]: tiny (under 16 bytes, alignment at most 8),
//! small (a size class, up to 32 KiB; larger alignments pick a class whose size is
//! a multiple of the alignment) and large (whole pages from the page heap). The
//! same function sorts `dealloc`'s layout, so a sized free finds its class with
//! one table load and no page-map lookup.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{null_mut, NonNull};
use core::sync::atomic::{AtomicPtr, Ordering};

use spin::mutex::SpinMutex;

use crate::cache::{self, CpuCache, TINY_BIAS};
use crate::central::{Below, Central, HeapLock};
use crate::cpu::Cpu;
use crate::pageheap::{tiny_counter, PageHeap, PageMap};
use crate::sizeclass::{class_for, size_to_class, SizeClass, NUM_CLASSES, TINY_CLASS};
use crate::source::PageSource;
use crate::span::SpanState;
use crate::stats::Stats;
use crate::{MAX_SMALL_SIZE, PAGE_BYTES, TINY_SIZE};

/// How a request is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Packed into a 16-byte block with other tiny objects.
    Tiny,
    /// An object of a size class, through the per-CPU cache.
    Small(SizeClass),
    /// A span of its own.
    Large,
}

impl Kind {
    /// Sorts a request; a pure function of `(size, align)`.
    #[inline(always)]
    pub const fn of(size: usize, align: usize) -> Kind {
        if align <= 8 && size <= MAX_SMALL_SIZE {
            if size < TINY_SIZE {
                Kind::Tiny
            } else {
                Kind::Small(size_to_class(size))
            }
        } else {
            let c = class_for(size, align);
            if c.is_large() {
                Kind::Large
            } else {
                Kind::Small(c)
            }
        }
    }
}

/// A central list on its own cache line.
#[repr(align(64))]
struct Padded<T>(T);

/// The allocator: per-CPU caches over central lists over a page heap over `S`.
///
/// `Heap::new` is `const`; the heap sets itself up on first use (the per-CPU
/// caches come from the source then). All methods are thread-safe.
pub struct Heap<S: PageSource, C: Cpu> {
    source: S,
    cpu: C,
    /// `cpu.count()` caches, or null before set-up.
    caches: AtomicPtr<CpuCache>,
    init: SpinMutex<usize, C::Relax>,
    pages: HeapLock<C::Relax>,
    map: PageMap,
    central: [Padded<SpinMutex<Central, C::Relax>>; NUM_CLASSES],
}

// SAFETY: all shared state is behind locks, atomics, or the per-CPU exclusivity
// that `C: Cpu` promises; `S` is Sync.
unsafe impl<S: PageSource + Sync, C: Cpu> Sync for Heap<S, C> {}
// SAFETY: as above; the heap owns no thread-bound state.
unsafe impl<S: PageSource + Send, C: Cpu + Send> Send for Heap<S, C> {}

impl<S: PageSource, C: Cpu> Heap<S, C> {
    /// A heap over `source`, with per-CPU caches keyed by `cpu`. Takes nothing
    /// from the source until the first allocation.
    pub const fn new(source: S, cpu: C) -> Self {
        Heap {
            source,
            cpu,
            caches: AtomicPtr::new(null_mut()),
            init: SpinMutex::new(0),
            pages: SpinMutex::new(PageHeap::new()),
            map: PageMap::new(),
            central: [const { Padded(SpinMutex::new(Central::new())) }; NUM_CLASSES],
        }
    }

    /// The page source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// The CPU mapping.
    pub fn cpu(&self) -> &C {
        &self.cpu
    }

    fn below(&self) -> Below<'_, S, C::Relax> {
        Below { source: &self.source, map: &self.map, heap: &self.pages }
    }

    /// The per-CPU caches, setting them up on first use; null if the source
    /// cannot supply them.
    #[inline(always)]
    fn caches(&self) -> *mut CpuCache {
        let c = self.caches.load(Ordering::Acquire);
        if !c.is_null() {
            return c;
        }
        self.init_caches()
    }

    #[cold]
    #[inline(never)]
    fn init_caches(&self) -> *mut CpuCache {
        let mut n = self.init.lock();
        let c = self.caches.load(Ordering::Acquire);
        if !c.is_null() {
            return c;
        }
        let count = self.cpu.count().max(1);
        let bytes = count * core::mem::size_of::<CpuCache>();
        let Some(p) = self.source.alloc(bytes) else { return null_mut() };
        if !S::ZEROED {
            // SAFETY: fresh Ready memory of `bytes`; all-zero is a valid empty cache.
            unsafe { p.as_ptr().write_bytes(0, bytes) };
        }
        *n = bytes.next_multiple_of(S::PAGE_SIZE);
        let c = p.as_ptr().cast::<CpuCache>();
        self.caches.store(c, Ordering::Release);
        c
    }

    // ---------------------------------------------------------------- small

    #[inline(always)]
    fn alloc_small(&self, c: SizeClass) -> *mut u8 {
        let caches = self.caches();
        if caches.is_null() {
            return null_mut();
        }
        self.cpu.with_current(|i| {
            // SAFETY: `i < count` and the slot is ours until the closure returns.
            let cache = unsafe { &mut *caches.add(i) };
            let p = match cache.pop(c) {
                Some(p) => p,
                None => self.refill(cache, c),
            };
            if !p.is_null() {
                cache.counters.mallocs[c.index()] += 1;
                #[cfg(feature = "checks")]
                checks::on_alloc(&self.map, p);
            }
            p
        })
    }

    #[cold]
    #[inline(never)]
    fn refill(&self, cache: &mut CpuCache, c: SizeClass) -> *mut u8 {
        let n = self.central[c.index()].0.lock().refill(c, cache.refill_room(c), &self.below());
        cache.set_len(c, n);
        cache.pop(c).unwrap_or(null_mut())
    }

    #[inline(always)]
    fn free_small(&self, p: *mut u8, c: SizeClass) {
        #[cfg(feature = "checks")]
        checks::on_free(&self.map, &self.central[c.index()].0, p, c);
        let caches = self.caches.load(Ordering::Acquire);
        assert!(!caches.is_null(), "tieralloc: free of {p:p} before any allocation");
        self.cpu.with_current(|i| {
            // SAFETY: as in `alloc_small`.
            let cache = unsafe { &mut *caches.add(i) };
            self.push_free(cache, c, p);
            cache.counters.frees[c.index()] += 1;
        })
    }

    /// Puts a free object into a cache, flushing a batch if the stack is full.
    #[inline(always)]
    fn push_free(&self, cache: &mut CpuCache, c: SizeClass, p: *mut u8) {
        if !cache.push(c, p) {
            self.flush(cache, c);
            let ok = cache.push(c, p);
            debug_assert!(ok);
        }
    }

    #[cold]
    #[inline(never)]
    fn flush(&self, cache: &mut CpuCache, c: SizeClass) {
        let below = self.below();
        cache.take_oldest(c, cache::batch(c.index()), |objs| self.central[c.index()].0.lock().flush(c, objs, &below));
    }

    // ----------------------------------------------------------------- tiny

    /// Go's tiny allocator with live counts: sub-objects are bump-allocated in
    /// the CPU's current 16-byte block. While a block is current its count holds
    /// `TINY_BIAS`; each free subtracts 1 and retiring the block subtracts
    /// `TINY_BIAS - n` (n = sub-objects carved), so the count reaches 0 exactly
    /// when the block is no longer current and every sub-object is dead.
    #[inline(always)]
    fn alloc_tiny(&self, size: usize, align: usize) -> *mut u8 {
        let caches = self.caches();
        if caches.is_null() {
            return null_mut();
        }
        let size = size.max(1);
        // Go's alignment rule, raised to the layout's.
        let a = if size % 8 == 0 {
            8
        } else if size % 4 == 0 {
            4
        } else if size % 2 == 0 {
            2
        } else {
            1
        }
        .max(align);
        self.cpu.with_current(|i| {
            // SAFETY: as in `alloc_small`.
            let cache = unsafe { &mut *caches.add(i) };
            let off = cache.tiny_off.next_multiple_of(a);
            if !cache.tiny_block.is_null() && off + size <= TINY_SIZE {
                cache.tiny_off = off + size;
                cache.tiny_n += 1;
                cache.counters.tiny_mallocs += 1;
                // SAFETY: `off + size <= 16`: inside the current block.
                return unsafe { cache.tiny_block.add(off) };
            }
            self.alloc_tiny_block(cache, size)
        })
    }

    #[cold]
    #[inline(never)]
    fn alloc_tiny_block(&self, cache: &mut CpuCache, size: usize) -> *mut u8 {
        let b = match cache.pop(TINY_CLASS) {
            Some(b) => b,
            None => self.refill(cache, TINY_CLASS),
        };
        if b.is_null() {
            return b;
        }
        #[cfg(feature = "checks")]
        checks::on_alloc(&self.map, b);
        let s = self.map.span_of(b as usize);
        // SAFETY: `b` is an object of a live class-2 span.
        let span = unsafe { &*s };
        let counter: *const _ = tiny_counter(span, span.index_of(b as usize).0);
        cache.counters.tiny_blocks_taken += 1;
        cache.counters.tiny_mallocs += 1;
        if cache.tiny_block.is_null() || size < cache.tiny_off {
            // The new block leaves more room: it becomes current.
            self.retire_tiny(cache);
            // SAFETY: counters of live class-2 spans stay valid while the block is live.
            unsafe { (*counter).store(TINY_BIAS, Ordering::Release) };
            cache.tiny_block = b;
            cache.tiny_count = counter;
            cache.tiny_off = size;
            cache.tiny_n = 1;
        } else {
            // SAFETY: as above.
            unsafe { (*counter).store(1, Ordering::Release) };
        }
        b
    }

    /// Stops carving from the CPU's current tiny block.
    fn retire_tiny(&self, cache: &mut CpuCache) {
        if cache.tiny_block.is_null() {
            return;
        }
        let (b, counter, n) = (cache.tiny_block, cache.tiny_count, cache.tiny_n);
        cache.tiny_block = null_mut();
        cache.tiny_count = core::ptr::null();
        cache.tiny_off = 0;
        cache.tiny_n = 0;
        // SAFETY: the block is live (we hold its bias), so its span and counters are.
        let before = unsafe { (*counter).fetch_sub(TINY_BIAS - n as u8, Ordering::AcqRel) };
        if before == TINY_BIAS - n as u8 {
            self.free_tiny_block(cache, b);
        }
    }

    fn free_tiny_block(&self, cache: &mut CpuCache, b: *mut u8) {
        #[cfg(feature = "checks")]
        checks::on_free(&self.map, &self.central[TINY_CLASS.index()].0, b, TINY_CLASS);
        cache.counters.tiny_blocks_freed += 1;
        self.push_free(cache, TINY_CLASS, b);
    }

    fn free_tiny(&self, p: *mut u8) {
        let s = self.map.span_of(p as usize);
        // SAFETY: non-null page-map entries are live spans.
        let span = match unsafe { s.as_ref() } {
            Some(span) if span.state == SpanState::Small && span.class == TINY_CLASS => span,
            _ => panic!("tieralloc: free of tiny object {p:p}: not a tiny object of this heap (foreign pointer, wrong layout, or double free)"),
        };
        let idx = span.index_of(p as usize).0;
        let before = tiny_counter(span, idx).fetch_sub(1, Ordering::AcqRel);
        assert!(
            before != 0 && before <= TINY_BIAS,
            "tieralloc: double free of tiny object {p:p} (block {:p} of span {:#x}, class 2, live count was {before})",
            span.object(idx),
            span.start
        );
        let block = span.object(idx);
        let caches = self.caches.load(Ordering::Acquire);
        self.cpu.with_current(|i| {
            // SAFETY: as in `alloc_small`.
            let cache = unsafe { &mut *caches.add(i) };
            cache.counters.tiny_frees += 1;
            if before == 1 {
                self.free_tiny_block(cache, block);
            }
        })
    }

    // ---------------------------------------------------------------- large

    fn alloc_large(&self, size: usize, align: usize) -> Option<(NonNull<u8>, bool)> {
        let s = self.pages.lock().alloc_large(&self.source, &self.map, size, align)?;
        // SAFETY: a fresh large span, ours.
        let (start, needzero) = unsafe { ((*s.as_ptr()).start, (*s.as_ptr()).needzero) };
        NonNull::new(start as *mut u8).map(|p| (p, needzero))
    }

    /// The live large span that starts at `p`; panics with the address otherwise.
    fn large_span(&self, p: *mut u8) -> NonNull<crate::span::Span> {
        let s = self.map.span_of(p as usize);
        // SAFETY: non-null page-map entries are live spans.
        match unsafe { s.as_ref() } {
            Some(span) if span.state == SpanState::Large && span.start == p as usize => NonNull::from(span),
            Some(span) => panic!(
                "tieralloc: free of {p:p}: not the start of a large object (span {:#x}, {:?}, class {})",
                span.start,
                span.state,
                span.class.index()
            ),
            None => panic!("tieralloc: free of {p:p}: not a live object of this heap (double free or foreign pointer)"),
        }
    }

    fn free_large(&self, p: *mut u8) {
        let s = self.large_span(p);
        let mut h = self.pages.lock();
        // SAFETY: the caller owned the object; the span is live and large.
        unsafe { h.free_large(&self.source, s) };
    }

    // ----------------------------------------------------------- operations

    /// Allocates `layout`, or returns null (impossible layout or out of memory).
    #[inline(always)]
    pub fn allocate(&self, layout: Layout) -> *mut u8 {
        match Kind::of(layout.size(), layout.align()) {
            Kind::Tiny => self.alloc_tiny(layout.size(), layout.align()),
            Kind::Small(c) => self.alloc_small(c),
            Kind::Large => self.alloc_large(layout.size(), layout.align()).map_or(null_mut(), |(p, _)| p.as_ptr()),
        }
    }

    /// Frees `p`, allocated with `layout`.
    ///
    /// # Safety
    /// `p` was returned by this heap for `layout` (or a layout of the same kind)
    /// and is not used afterwards.
    #[inline(always)]
    pub unsafe fn deallocate(&self, p: *mut u8, layout: Layout) {
        match Kind::of(layout.size(), layout.align()) {
            Kind::Tiny => self.free_tiny(p),
            Kind::Small(c) => self.free_small(p, c),
            Kind::Large => self.free_large(p),
        }
    }

    /// Allocates zeroed memory; large objects known to be fresh from the source are not written.
    pub fn allocate_zeroed(&self, layout: Layout) -> *mut u8 {
        match Kind::of(layout.size(), layout.align()) {
            Kind::Large => match self.alloc_large(layout.size(), layout.align()) {
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

    /// Resizes in place when the class does not change, or a large object's
    /// pages can shrink or grow into free neighbours; otherwise moves.
    ///
    /// # Safety
    /// As [`GlobalAlloc::realloc`].
    pub unsafe fn reallocate(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        match (Kind::of(layout.size(), align), Kind::of(new_size, align)) {
            (Kind::Small(a), Kind::Small(b)) if a == b => return p,
            (Kind::Large, Kind::Large) => {
                let s = self.large_span(p);
                let npages = new_size.div_ceil(PAGE_BYTES);
                // SAFETY: the caller owns the object, so its span is live and ours.
                if unsafe { self.pages.lock().resize_large(&self.source, s, npages) } {
                    return p;
                }
            }
            _ => {}
        }
        let Ok(new_layout) = Layout::from_size_align(new_size, align) else { return null_mut() };
        let q = self.allocate(new_layout);
        if !q.is_null() {
            // SAFETY: both blocks are live, distinct, and at least this long.
            unsafe {
                core::ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                self.deallocate(p, layout);
            }
        }
        q
    }

    // ------------------------------------------------------- whole-heap ops

    /// Gives back every CPU's cached objects and tiny block, empties the
    /// transfer caches, and releases all free pages to the source (Go's
    /// `debug.FreeOSMemory`). Returns the bytes released by this call.
    pub fn scavenge(&self) -> usize {
        let caches = self.caches.load(Ordering::Acquire);
        let below = self.below();
        if !caches.is_null() {
            for i in 0..self.cpu.count() {
                self.cpu.with_slot(i, || {
                    // SAFETY: `i < count`, slot held.
                    let cache = unsafe { &mut *caches.add(i) };
                    self.retire_tiny(cache);
                    for c in SizeClass::small_classes() {
                        let n = cache.len(c);
                        if n > 0 {
                            cache.take_oldest(c, n, |objs| {
                                let mut central = self.central[c.index()].0.lock();
                                central.flush(c, objs, &below);
                                central.drain_transfer(c, &below);
                            });
                        }
                    }
                });
            }
        }
        for c in SizeClass::small_classes() {
            self.central[c.index()].0.lock().drain_transfer(c, &below);
        }
        self.pages.lock().scavenge(&self.source, usize::MAX) * PAGE_BYTES
    }

    /// Sets the dirty free memory kept before the scavenger releases pages
    /// (default [`crate::pageheap::DEFAULT_RETAIN_BYTES`]; the budget is this or
    /// 1/8 of the in-use heap, whichever is larger).
    pub fn set_retain_bytes(&self, bytes: usize) {
        self.pages.lock().set_retain_bytes(bytes);
    }

    /// A snapshot of the heap's statistics; exact when no operation is in flight.
    pub fn stats(&self) -> Stats {
        let mut st = Stats::default();
        let caches = self.caches.load(Ordering::Acquire);
        let mut tiny_taken = 0;
        let mut tiny_freed = 0;
        if !caches.is_null() {
            st.cpus = self.cpu.count() as u64;
            for i in 0..self.cpu.count() {
                self.cpu.with_slot(i, || {
                    // SAFETY: `i < count`, slot held.
                    let cache = unsafe { &*caches.add(i) };
                    let k = &cache.counters;
                    for c in 1..NUM_CLASSES {
                        st.by_size[c].mallocs += k.mallocs[c];
                        st.by_size[c].frees += k.frees[c];
                    }
                    st.tiny_mallocs += k.tiny_mallocs;
                    st.tiny_frees += k.tiny_frees;
                    tiny_taken += k.tiny_blocks_taken;
                    tiny_freed += k.tiny_blocks_freed;
                    st.cached_bytes += cache.cached_bytes() as u64;
                });
            }
        }
        for c in SizeClass::small_classes() {
            st.by_size[c.index()].size = c.size() as u64;
            st.cached_bytes += (self.central[c.index()].0.lock().transfer_len() * c.size()) as u64;
        }
        let ps = self.pages.lock().stats();
        st.by_size[0].mallocs = ps.large.mallocs;
        st.by_size[0].frees = ps.large.frees;
        st.large_alloc = ps.large.live_bytes;
        st.tiny_blocks = tiny_taken - tiny_freed;
        st.heap_sys = ps.sys;
        st.heap_inuse = ps.inuse;
        st.heap_idle = ps.sys - ps.inuse;
        st.heap_released = ps.released;
        st.meta_sys = ps.meta_sys + *self.init.lock() as u64;
        st.arenas = ps.arenas;
        st.spans = ps.spans;
        st.scavenged_total = ps.scavenged_total;
        st.heap_alloc = st.large_alloc
            + st.tiny_blocks * TINY_SIZE as u64
            + st.by_size[1..].iter().map(|r| r.live() * r.size).sum::<u64>();
        st.mallocs = st.by_size.iter().map(|r| r.mallocs).sum::<u64>() + st.tiny_mallocs;
        st.frees = st.by_size.iter().map(|r| r.frees).sum::<u64>() + st.tiny_frees;
        st
    }

    /// Walks every tier and panics with a message on the first broken invariant.
    /// Call it at quiescence (tests, the `checks` feature's users).
    pub fn check_invariants(&self) {
        for c in SizeClass::small_classes() {
            self.central[c.index()].0.lock().check_invariants(c);
        }
        self.pages.lock().check_invariants();
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

/// Double-free and foreign-pointer detection (feature `checks`).
///
/// Each span carries `cached_bits`: objects that are free but still held by a
/// per-CPU or transfer cache. A live object has its alloc bit set and its cached
/// bit clear; a cached one both set; one back in its span neither.
#[cfg(feature = "checks")]
pub(crate) mod checks {
    use core::sync::atomic::Ordering;

    use spin::mutex::SpinMutex;

    use crate::central::Central;
    use crate::pageheap::PageMap;
    use crate::sizeclass::SizeClass;
    use crate::span::{Span, SpanState};

    fn bit(idx: usize) -> (usize, u64) {
        (idx / 64, 1u64 << (idx % 64))
    }

    /// An object enters a cache straight from its span.
    pub fn mark_cached(span: &Span, idx: usize, p: *mut u8) {
        let (w, b) = bit(idx);
        let old = span.cached_bits[w].fetch_or(b, Ordering::Relaxed);
        assert!(old & b == 0, "tieralloc: object {p:p} (span {:#x}) carved while cached", span.start);
    }

    /// An object goes back to its span from a cache.
    pub fn unmark_cached(span: &Span, idx: usize, p: *mut u8) {
        let (w, b) = bit(idx);
        let old = span.cached_bits[w].fetch_and(!b, Ordering::Relaxed);
        assert!(old & b != 0, "tieralloc: object {p:p} (span {:#x}) returned to its span but was not free", span.start);
    }

    /// A cached object is handed to the user.
    pub fn on_alloc(map: &PageMap, p: *mut u8) {
        // SAFETY: cached objects are in live spans.
        let span = unsafe { &*map.span_of(p as usize) };
        let (w, b) = bit(span.index_of(p as usize).0);
        let old = span.cached_bits[w].fetch_and(!b, Ordering::Relaxed);
        assert!(old & b != 0, "tieralloc: object {p:p} (span {:#x}, class {}) handed out twice", span.start, span.class.index());
    }

    /// The user frees `p` as an object of class `c`: check it is one, live.
    pub fn on_free<X: spin::RelaxStrategy>(map: &PageMap, central: &SpinMutex<Central, X>, p: *mut u8, c: SizeClass) {
        let s = map.span_of(p as usize);
        // SAFETY: non-null page-map entries are live spans.
        let Some(span) = (unsafe { s.as_ref() }) else {
            panic!("tieralloc: free of {p:p}: not a pointer into this heap (foreign pointer, or a freed large object)");
        };
        if span.state != SpanState::Small {
            panic!("tieralloc: free of {p:p} as a class {} object, but span {:#x} is {:?}", c.index(), span.start, span.state);
        }
        if span.class != c {
            panic!(
                "tieralloc: free of {p:p} with a layout of class {} ({} B), but span {:#x} holds class {} ({} B)",
                c.index(),
                c.size(),
                span.start,
                span.class.index(),
                span.class.size()
            );
        }
        let (idx, exact) = span.index_of(p as usize);
        if !exact {
            panic!(
                "tieralloc: free of interior pointer {p:p}: inside object {:p} of span {:#x} (class {}, {} B)",
                span.object(idx),
                span.start,
                c.index(),
                c.size()
            );
        }
        // Alloc bits are guarded by the central lock; decide under it, panic after
        // it is released (the panic may allocate).
        let (w, b) = bit(idx);
        let (allocated, old) = {
            let _guard = central.lock();
            let allocated = span.is_allocated(idx);
            (allocated, if allocated { span.cached_bits[w].fetch_or(b, Ordering::Relaxed) } else { 0 })
        };
        if !allocated {
            panic!("tieralloc: double free of {p:p} (span {:#x}, class {}): the object is already free", span.start, c.index());
        }
        if old & b != 0 {
            panic!("tieralloc: double free of {p:p} (span {:#x}, class {}): the object is already free in a cache", span.start, c.index());
        }
    }
}
