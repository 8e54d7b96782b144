//! The per-CPU tier (Go's `mcache`, shaped like tcmalloc's per-CPU slabs).
//! See `lib.rs` for the overview.
//!
//! Each CPU owns one cache ([`cache::CpuCache`]): for every size class a
//! bounded stack of free object pointers, the CPU's current tiny block, and
//! a few counters. An allocation pops from the stack of its class, a free
//! pushes onto it — on whichever CPU the free happens, so a remote free costs
//! nothing extra (the classes under a cache line aside: see `heap::small`).
//! An empty stack is refilled with a batch from the class's central list; a
//! full one sends its top batch back. In rseq mode a stack that keeps
//! sending batches back only to take them again grows to hold them, within
//! a per-CPU budget, and gives the growth back when its class idles
//! ([`limit`]).
//!
//! [`Slabs`] is the front's one door to this tier. It owns the [`Cpu`] and
//! reaches the caches one of two ways, fixed when the heap sets itself up:
//!
//! * **locked** ([`locked`]): through the CPU slot's exclusivity
//!   ([`Cpu::with_current`]: interrupts off in a kernel, a per-slot lock
//!   elsewhere);
//! * **rseq** (`rseq`, Linux x86-64 only): restartable sequences that
//!   commit each operation with one plain store, no lock and no atomic.
//!
//! Both use the word formats of [`word`], so one set of invariants covers
//! both. Which commit mechanism is compiled in is decided in one place below
//! (`Sections`, `Fast`); without rseq, `Fast` is an uninhabited type and the
//! rseq arms of every operation compile to nothing.
//!
//! **Publication.** Set-up writes the caches, then publishes the rseq
//! description (if any), then the caches' address (Release). An operation
//! reads the caches' address (Acquire) first and the mode after it, so every
//! operation on published caches agrees on the mode.

mod cache;
pub mod cpu;
#[cfg(rseq)]
mod limit;
#[cfg(feature = "linux")]
pub mod linux;
mod locked;
#[cfg(rseq)]
mod rseq;
mod word;

use core::marker::PhantomData;
use core::ptr::null_mut;

use crate::sizeclass::{Geometry, SizeClass, NUM_CLASSES};
use crate::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

pub(crate) use cache::{batch, class_cache_bytes, CacheLayout, Shape, TinyEvent, MAX_CAPACITY};
pub use cache::{capacity, CACHE_BOUND_BYTES};
pub(crate) use cpu::Cpu;
pub(crate) use word::Tiny;

use cache::{CpuCache, NUM_TINY_EVENTS};
use locked::Locked;

/// The size steps of the C `malloc`'s fast path ([`Fast::pop_step`]): its
/// 16-byte alignment; the fast path takes sizes up to `SIZE_TO_CLASS8_MAX`.
pub(crate) const SIZE_STEP: usize = 16;
/// Steps of [`SIZE_STEP`] bytes up to `SIZE_TO_CLASS8_MAX`.
pub(crate) const SIZE_STEPS: usize = crate::sizeclass::SIZE_TO_CLASS8_MAX / SIZE_STEP;
const _: () = assert!(SIZE_STEPS * SIZE_STEP == crate::sizeclass::SIZE_TO_CLASS8_MAX);

// The one choice of the commit mechanism besides slot exclusivity.
#[cfg(not(rseq))]
pub(crate) use locked::{Fast, Sections};
#[cfg(rseq)]
pub(crate) use rseq::{rseq_cpu_id, Fast, Sections};

/// The per-CPU caches of a heap, and how to reach them.
///
/// Invariants: `caches` is null until set-up, then points to `count` caches
/// that live for ever; `sections` is published (rseq mode) only if it was
/// published before `caches` was stored, and never changes after.
pub(crate) struct Slabs<C: Cpu> {
    cpu: C,
    /// The restartable sequences (inline, so the fast paths address them
    /// from the heap's own address).
    sections: Sections,
    caches: AtomicPtr<u8>,
    count: AtomicUsize,
    /// TinyEvent updates that found no reachable cache (rseq mode, a CPU id
    /// out of range), by [`TinyEvent`].
    spill: [AtomicU64; NUM_TINY_EVENTS],
    /// With no [`Shape::FIXED`] layout: the caches' layout, which `install`
    /// writes after the caches in their block (so that it costs the heap
    /// value one word) before `caches` is published; read only after an
    /// Acquire load found `caches`.
    layout: AtomicPtr<CacheLayout>,
}

// SAFETY: the caches are reached only under the exclusivity rules above
// (slot exclusivity, which `C: Cpu` promises, or one-store rseq commits);
// everything else is atomics and a write-once descriptor (`Sections`).
unsafe impl<C: Cpu> Sync for Slabs<C> {}
// SAFETY: as above; nothing is tied to the creating thread.
unsafe impl<C: Cpu + Send> Send for Slabs<C> {}

impl<C: Cpu> Slabs<C> {
    /// No caches yet, keyed by `cpu`.
    pub(crate) const fn new(cpu: C) -> Self {
        Slabs {
            cpu,
            sections: Sections::new(),
            caches: AtomicPtr::new(null_mut()),
            count: AtomicUsize::new(0),
            spill: [const { AtomicU64::new(0) }; NUM_TINY_EVENTS],
            layout: AtomicPtr::new(null_mut()),
        }
    }

    /// The CPU mapping.
    pub(crate) fn cpu(&self) -> &C {
        &self.cpu
    }

    /// The rseq area offset the caches of `layout` will be published with,
    /// if they will be: the CPU mapping offers an area, the sections are
    /// compiled in and the layout is the one they address
    /// ([`CacheLayout::GO`]). Asked once, at set-up; its answer sizes the
    /// block ([`Slabs::bytes`]) and is handed to [`Slabs::install`].
    pub(crate) fn rseq_plan(&self, layout: &CacheLayout) -> Option<i64> {
        self.cpu
            .rseq_offset()
            .filter(|_| *layout == CacheLayout::GO)
    }

    /// Bytes below the caches: the rseq guard (`rseq::GUARD_BYTES`) when
    /// they are published for the sections, else none.
    const fn guard_bytes(rseq: bool) -> usize {
        #[cfg(rseq)]
        if rseq {
            return rseq::GUARD_BYTES;
        }
        let _ = rseq;
        0
    }

    /// Bytes of memory for `count` caches of `layout` (64-byte aligned,
    /// zeroed): the rseq guard first if `rseq` ([`Slabs::rseq_plan`]), then
    /// the caches, and after them, with no fixed layout, the layout itself.
    pub(crate) const fn bytes<K: Shape>(count: usize, layout: &CacheLayout, rseq: bool) -> usize {
        let installed = if K::FIXED.is_none() {
            core::mem::size_of::<CacheLayout>()
        } else {
            0
        };
        Self::guard_bytes(rseq) + count * layout.stride() + installed
    }

    /// The published restartable sequences, for the fast paths (always
    /// `None` in locked mode and before set-up).
    #[inline(always)]
    pub(crate) fn fast(&self) -> Option<Fast> {
        self.sections.get()
    }

    /// The published restartable sequences, for a caller that knows them
    /// published (see [`Sections::get_published`]): `Some` with no test
    /// where they are compiled in, else `None`.
    ///
    /// # Safety
    /// As [`Sections::get_published`].
    #[inline(always)]
    pub(crate) unsafe fn fast_published(&self) -> Option<Fast> {
        // SAFETY: forwarded from the caller.
        unsafe { self.sections.get_published() }
    }

    /// The caches, once set up; `shape` is the one they were installed
    /// with (the heap's constant).
    #[inline(always)]
    pub(crate) fn get<K: Shape>(&self) -> Option<Caches<'_, C, K>> {
        let caches = self.caches.load(Ordering::Acquire);
        if caches.is_null() {
            return None;
        }
        let layout = match K::FIXED {
            Some(l) => l,
            // SAFETY: `caches` is published, so `install` wrote the layout
            // and its address before (Release/Acquire); it lives for ever.
            None => unsafe { &*self.layout.load(Ordering::Relaxed) },
        };
        Some(Caches {
            slabs: self,
            caches,
            layout,
            _shape: PhantomData,
        })
    }

    /// Sets up `count` caches of `layout` in `mem`, for a heap of geometry
    /// `g`, in rseq mode at area offset `rseq` if it is `Some` (the
    /// set-up's [`Slabs::rseq_plan`]).
    ///
    /// # Safety
    /// Called once (the heap's set-up lock); `mem` is
    /// [`Slabs::bytes`]`::<K>(count, layout, rseq.is_some())` bytes, zeroed,
    /// 64-byte aligned and ours for ever; `count` is `cpu.count()`; `layout`
    /// is `shape`'s if that is `Fixed`, and every later `get` passes the
    /// same `shape`; `rseq` is `rseq_plan(layout)`.
    pub(crate) unsafe fn install<K: Shape>(
        &self,
        mem: *mut u8,
        count: usize,
        layout: &CacheLayout,
        g: &Geometry,
        rseq: Option<i64>,
    ) -> Caches<'_, C, K> {
        // SAFETY: the block starts with the guard, if any (`bytes`).
        let caches = unsafe { mem.add(Self::guard_bytes(rseq.is_some())) };
        if K::FIXED.is_none() {
            // SAFETY: the block has room for the layout after the caches
            // (`bytes`), 8-byte aligned (the stride is a multiple of 64);
            // once, before `caches` is published: nobody reads it yet.
            unsafe {
                let at = caches.add(count * layout.stride()).cast::<CacheLayout>();
                at.write(*layout);
                self.layout.store(at, Ordering::Relaxed);
            }
        }
        if let Some(off) = rseq {
            // SAFETY: once, with caches that live for ever after a zeroed
            // guard that nothing else uses; `count` is the CPU mapping's,
            // above every CPU id when it offers an area (`Cpu::rseq_offset`),
            // and `off` is that area.
            unsafe { self.sections.publish(caches, count, off, g) };
        }
        self.count.store(count, Ordering::Relaxed);
        self.caches.store(caches, Ordering::Release);
        self.get::<K>().expect("just installed")
    }

    /// Racy sums over every cache's words (of `layout`, the heap's):
    /// exact at quiescence.
    pub(crate) fn totals<K: Shape>(&self) -> Totals {
        let mut t = Totals {
            cpus: 0,
            rseq: false,
            pops: [0; NUM_CLASSES],
            cached: [0; NUM_CLASSES],
            events: core::array::from_fn(|k| self.spill[k].load(Ordering::Relaxed)),
            tiny_current: 0,
        };
        let Some(s) = self.get::<K>() else {
            return t;
        };
        let layout = s.layout();
        t.cpus = s.count();
        t.rseq = s.uses_rseq();
        for i in 0..s.count() {
            // Racy reads of words other CPUs write with plain stores: each
            // word is read whole.
            let cache = s.locked().cache(i);
            for c in layout.small_classes() {
                let w = cache.word(c);
                t.pops[c.index()] += cache.pops(c);
                t.cached[c.index()] += w.len() as u64;
            }
            for k in TinyEvent::ALL {
                t.events[k as usize] += cache.counter(k);
            }
            t.tiny_current += cache.tiny().n as u64;
        }
        t
    }
}

/// What [`Slabs::totals`] sums.
pub(crate) struct Totals {
    /// Caches.
    pub(crate) cpus: usize,
    /// Whether operations commit with restartable sequences.
    pub(crate) rseq: bool,
    /// Per class: mallocs counted by pops, cumulative.
    pub(crate) pops: [u64; NUM_CLASSES],
    /// Per class: free objects on the stacks now.
    pub(crate) cached: [u64; NUM_CLASSES],
    /// Per [`TinyEvent`], cumulative.
    pub(crate) events: [u64; NUM_TINY_EVENTS],
    /// Sub-objects carved from the current tiny blocks.
    pub(crate) tiny_current: u64,
}

impl Totals {
    /// TinyEvent `k`'s sum.
    pub(crate) fn event(&self, k: TinyEvent) -> u64 {
        self.events[k as usize]
    }
}

/// The caches of a heap once set up: every method commits by a
/// restartable sequence in rseq mode, else under the current CPU's slot.
/// Three words, so it travels in registers; the layout is the heap's
/// constant, so once inlined it is an immediate. Having one proves the caches were
/// published, and so (see "Publication") that the mode each method reads is
/// the heap's mode for good.
pub(crate) struct Caches<'a, C: Cpu, K> {
    slabs: &'a Slabs<C>,
    caches: *mut u8,
    /// The installed layout (`K::FIXED`'s, or the one written at install).
    layout: &'a CacheLayout,
    _shape: PhantomData<K>,
}

impl<C: Cpu, K> Clone for Caches<'_, C, K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C: Cpu, K> Copy for Caches<'_, C, K> {}

impl<'a, C: Cpu, K: Shape> Caches<'a, C, K> {
    /// The caches' layout: the type's constant, if it has one.
    #[inline(always)]
    fn layout(&self) -> &'a CacheLayout {
        K::FIXED.unwrap_or(self.layout)
    }

    /// The sections, in rseq mode.
    #[inline(always)]
    fn fast(&self) -> Option<Fast> {
        // SAFETY: a `Caches` is made only from an Acquire load that found
        // the caches published (`Slabs::get`).
        unsafe { self.slabs.sections.get_settled() }
    }

    /// The slot-exclusive way to the caches.
    #[inline(always)]
    fn locked(&self) -> Locked<'a, C, K> {
        Locked {
            cpu: &self.slabs.cpu,
            caches: self.caches,
            layout: self.layout,
            _shape: PhantomData,
        }
    }

    /// Whether operations commit with restartable sequences.
    #[inline(always)]
    pub(crate) fn uses_rseq(&self) -> bool {
        self.fast().is_some()
    }

    /// For a slow path: in rseq mode with an area of the heap's own
    /// (glibc registered none), registers the calling thread's area if it
    /// has not yet (`rseq::Fast::enroll`).
    #[inline(always)]
    pub(crate) fn enroll(&self) {
        if let Some(f) = self.fast() {
            f.enroll();
        }
    }

    /// Objects moved per refill or flush of class `c`.
    #[inline(always)]
    pub(crate) fn batch(&self, c: SizeClass) -> usize {
        self.layout().batch(c)
    }

    /// Number of caches.
    pub(crate) fn count(&self) -> usize {
        self.slabs.count.load(Ordering::Relaxed)
    }

    /// Pops an object of class `c` on the current CPU, counting a malloc;
    /// with it, whether that malloc is due a decay tick. Null and true if
    /// there is none: the fast path tests the flag alone, and only a tick
    /// or a miss go on to test the pointer (one test and branch fewer per
    /// malloc than a null test first).
    #[inline(always)]
    pub(crate) fn pop(&self, c: SizeClass) -> (*mut u8, bool) {
        match self.fast() {
            Some(f) => f.pop(c),
            None => self.locked().pop(c),
        }
    }

    /// Pushes `p` on the current CPU; false if the stack is full (or unreachable).
    #[inline(always)]
    pub(crate) fn push(&self, c: SizeClass, p: *mut u8) -> bool {
        match self.fast() {
            Some(f) => f.push(c, p),
            None => self.locked().push(c, p),
        }
    }

    /// Pushes `p` on the current CPU's stack unless `elsewhere`, asked with
    /// that CPU's index, says the object belongs to another CPU. `None`: not
    /// pushed, it belongs elsewhere; `Some(false)`: the stack is full. In
    /// locked mode the question is asked inside the CPU's slot, so the
    /// answer is exact; in rseq mode it is a hint (the thread may move).
    #[inline(always)]
    pub(crate) fn push_owned(
        &self,
        c: SizeClass,
        p: *mut u8,
        elsewhere: impl FnOnce(usize) -> bool,
    ) -> Option<bool> {
        match self.fast() {
            Some(f) => (!elsewhere(f.cpu())).then(|| f.push(c, p)),
            None => self.locked().push_owned(c, p, elsewhere),
        }
    }

    /// Pushes as many of `objs` as fit on the current CPU; returns how many.
    pub(crate) fn push_batch(&self, c: SizeClass, objs: &[*mut u8]) -> usize {
        match self.fast() {
            Some(f) => f.push_batch(c, objs),
            None => self.locked().push_batch(c, objs),
        }
    }

    /// Pops up to `out.len()` objects on the current CPU; returns how many.
    pub(crate) fn pop_batch(&self, c: SizeClass, out: &mut [*mut u8]) -> usize {
        match self.fast() {
            Some(f) => f.pop_batch(c, out),
            None => self.locked().pop_batch(c, out),
        }
    }

    /// In rseq mode, the current CPU's cache if its stacks grow
    /// ([`limit`]); `None` in locked mode, whose stacks keep their
    /// capacities.
    #[cfg(rseq)]
    fn growing(&self) -> Option<CpuCache<'a>> {
        let f = self.fast()?;
        let cpu = f.cpu();
        (self.layout().grows() && cpu < self.count()).then(|| self.locked().cache(cpu))
    }

    /// Class `c`'s stack on the current CPU ran dry (a refill, about to
    /// push a batch; `g` is the heap's geometry): in rseq mode,
    /// settles its limit, or raises a settled one ([`limit`]). If the CPU's
    /// growth budget is spent, first takes it back from other classes that
    /// grew: their objects above their capacities go to `flush` (lock order:
    /// whatever `flush` takes), their limits back down.
    #[inline(always)]
    pub(crate) fn underflowed(
        &self,
        c: SizeClass,
        g: &Geometry,
        flush: impl FnMut(SizeClass, &[*mut u8]),
    ) {
        #[cfg(rseq)]
        if let Some(cache) = self.growing() {
            if !cache.settle_limit(c) {
                let pops = cache.word(c).pops();
                cache.grow_limit(
                    c,
                    g.size(c),
                    pops,
                    || self.fast().is_some_and(|f| f.relocate(&cache, c)),
                    |need| self.reclaim(&cache, c, need, g, flush),
                );
            }
        }
        #[cfg(not(rseq))]
        let _ = (c, g, flush);
    }

    /// Takes at least `need` bytes of growth back from the idle classes
    /// other than `c` that grew in `cache` (the current CPU's when read),
    /// the classes after `c` first; see [`Caches::reclaim_class`].
    #[cfg(rseq)]
    #[cold]
    fn reclaim(
        &self,
        cache: &CpuCache<'_>,
        c: SizeClass,
        need: usize,
        g: &Geometry,
        mut flush: impl FnMut(SizeClass, &[*mut u8]),
    ) {
        let classes = self.layout().small_classes();
        let after = classes.clone().skip_while(|&v| v != c).skip(1);
        let mut freed = 0;
        for v in after.chain(classes.take_while(|&v| v != c)) {
            if freed >= need {
                break;
            }
            if cache.has_grown(v) && cache.idle(v) {
                freed += self.reclaim_class(cache, v, g.size(v), &mut flush);
            }
        }
    }

    /// The idle check, at a decay tick of the current CPU (every 4,096
    /// mallocs of a class there): a class that grew and had no malloc here
    /// since the last check gives its growth back ([`Caches::reclaim_class`]),
    /// so that a phase's batches do not stay on the CPU after it ends.
    #[inline(always)]
    #[cfg_attr(not(rseq), allow(unused_mut))] // only rseq stacks grow
    pub(crate) fn shed_idle(&self, g: &Geometry, mut flush: impl FnMut(SizeClass, &[*mut u8])) {
        #[cfg(rseq)]
        if let Some(cache) = self.growing() {
            if cache.grown().load(Ordering::Relaxed) == 0 {
                return;
            }
            for v in self.layout().small_classes() {
                if cache.has_grown(v) {
                    if cache.idle(v) {
                        self.reclaim_class(&cache, v, g.size(v), &mut flush);
                    }
                    cache.mark_seen(v);
                }
            }
        }
        #[cfg(not(rseq))]
        let _ = (g, flush);
    }

    /// Sends class `v`'s objects above its capacity to `flush` (lock order:
    /// whatever `flush` takes), then lowers its limit in `cache` to its
    /// length; the bytes of growth given back. The objects come from the
    /// current CPU's stack: if the thread moved, that is not `cache`'s, and
    /// `cache`'s limit comes down only as far as its length allows.
    #[cfg(rseq)]
    #[cold]
    fn reclaim_class(
        &self,
        cache: &CpuCache<'_>,
        v: SizeClass,
        size: usize,
        flush: &mut impl FnMut(SizeClass, &[*mut u8]),
    ) -> usize {
        let Some(f) = self.fast() else { return 0 };
        let cap = self.layout().cap(v);
        let mut buf = [null_mut(); MAX_CAPACITY];
        loop {
            let len = cache.word(v).len();
            if len <= cap {
                break;
            }
            let k = f.pop_batch(v, &mut buf[..(len - cap).min(MAX_CAPACITY)]);
            if k == 0 {
                break;
            }
            flush(v, &buf[..k]);
        }
        cache.lower_limit(v, size)
    }

    /// A push of class `c` on the current CPU failed (a flush of
    /// `size`-byte objects): in rseq mode, settles the stack's limit if it
    /// was not yet (true: the push failed on that, try it again), else
    /// counts the overflow against it ([`limit`]).
    #[inline(always)]
    pub(crate) fn overflowed(&self, c: SizeClass, size: usize) -> bool {
        #[cfg(rseq)]
        if let Some(cache) = self.growing() {
            if cache.settle_limit(c) {
                return true;
            }
            cache.note_overflow(c, size);
        }
        #[cfg(not(rseq))]
        let _ = (c, size);
        false
    }

    /// Carves `size` bytes at alignment `a` (a power of two) from the current
    /// CPU's tiny block, in one entry; null if there is no block or no room.
    #[inline(always)]
    pub(crate) fn carve_tiny(&self, size: usize, a: usize) -> *mut u8 {
        match self.fast() {
            Some(f) => f.carve(size, a),
            None => self.locked().carve(size, a),
        }
    }

    /// The current CPU's index and tiny state; `None` if unreachable (rseq:
    /// the CPU id is out of range).
    pub(crate) fn tiny(&self) -> Option<(usize, Tiny)> {
        match self.fast() {
            Some(f) => f.tiny(),
            None => Some(self.locked().tiny()),
        }
    }

    /// Stores `new` as cache `i`'s tiny state if it still is `old` (and, with
    /// rseq, the thread still runs on CPU `i`).
    pub(crate) fn replace_tiny(&self, i: usize, old: Tiny, new: Tiny) -> bool {
        match self.fast() {
            Some(f) => f.replace_tiny(i, old, new),
            None => self.locked().replace_tiny(i, old, new),
        }
    }

    /// Adds to a counter of the current CPU's cache (any CPU's in a race:
    /// only the sum over CPUs matters), or to the heap-wide spill if no
    /// cache is reachable.
    pub(crate) fn count_event(&self, k: TinyEvent, delta: u64) {
        match self.fast() {
            Some(f) => {
                if !f.add(k, delta) {
                    self.slabs.spill[k as usize].fetch_add(delta, Ordering::Relaxed);
                }
            }
            None => self.locked().add(k, delta),
        }
    }

    /// The CPU the caller runs on (a hint in rseq mode: `u32::MAX` for an
    /// unregistered thread).
    pub(crate) fn current_cpu(&self) -> usize {
        match self.fast() {
            Some(f) => f.cpu(),
            None => self.locked().current_cpu(),
        }
    }

    /// The CPU whose stack of class `c` holds `p`, if one does: a racy
    /// scan of every cache (each slot read whole), taking no slot, so an
    /// object moving between stacks meanwhile may be missed.
    /// (Feature `hardened`'s slow search.)
    #[cfg(feature = "hardened")]
    pub(crate) fn holder(&self, c: SizeClass, p: *mut u8) -> Option<usize> {
        (0..self.count()).find(|&i| self.locked().cache(i).holds(c, p))
    }

    /// Runs `f` with cache `i` to itself, from any CPU: its slot, plus in
    /// rseq mode the stop protocol. `None` if exclusivity cannot be had
    /// (rseq mode without the expedited-rseq membarrier, or a CPU that
    /// stays busy).
    fn exclusive<R>(&self, i: usize, f: impl FnOnce(&CpuCache<'_>) -> R) -> Option<R> {
        let cache = self.locked().cache(i);
        self.slabs.cpu.with_slot(i, || match self.fast() {
            Some(fast) => fast.exclusive(&cache, i, || f(&cache)),
            None => Some(f(&cache)),
        })
    }

    /// Takes cache `i`'s tiny block out (a drain); `None` if it had none or
    /// the cache was unreachable. A stopped word reads as a full block.
    pub(crate) fn take_tiny(&self, i: usize) -> Option<Tiny> {
        self.exclusive(i, |cache| cache.take_tiny())
            .filter(|t| t.block != 0)
    }

    /// Empties cache `i`'s stacks (a drain), handing each class's objects to
    /// `flush` inside the cache's exclusivity (lock order: slot, then
    /// whatever `flush` takes). False if the cache was unreachable.
    pub(crate) fn drain(&self, i: usize, mut flush: impl FnMut(SizeClass, &[*mut u8])) -> bool {
        self.exclusive(i, |cache| {
            let mut buf = [null_mut(); MAX_CAPACITY];
            for c in self.layout().small_classes() {
                // A grown stack takes several batches.
                loop {
                    let k = cache.pop_batch(c, &mut buf);
                    if k == 0 {
                        break;
                    }
                    flush(c, &buf[..k]);
                }
            }
        })
        .is_some()
    }
}
