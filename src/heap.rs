//! The front: [`Heap`], which ties the tiers together and implements
//! [`GlobalAlloc`]. See `lib.rs` for the overview and the numbered paths.
//!
//! Requests are sorted by [`Kind`]: tiny (under 16 bytes, alignment at most 8),
//! small (a size class, up to 32 KiB; larger alignments pick a class whose size is
//! a multiple of the alignment) and large (whole pages from the page heap). The
//! same function sorts `dealloc`'s layout, so a sized free of up to 4 KiB finds
//! its class with one table load and no page-map lookup. Over 4 KiB
//! ([`SHRINK_MIN`]) the page map decides: `realloc` keeps a shrinking
//! object in its larger class ([`stays_in_class`]) and moves a growing one
//! to a span of its own ([`PROMOTE_MIN`]), so the layout no longer names the
//! object's class.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{null_mut, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use spin::mutex::SpinMutex;

use crate::cache::{self, Counter, Slabs, Tiny, TINY_BIAS, TINY_FIELD};
use crate::central::{Below, Central, HeapLock, Remote, REMOTE_MAX};
use crate::cpu::Cpu;
use crate::pageheap::{tiny_counter, PageHeap, PageMap};
use crate::sizeclass::{
    class_for, size_to_class_medium, size_to_class_small, SizeClass, LAST_SHARING_CLASS,
    NUM_CLASSES, SMALL_SIZE_MAX, TINY_CLASS,
};
use crate::source::PageSource;
use crate::span::SpanState;
use crate::stack::{self, Stack, StackAlloc, StackCache, StackStats};
use crate::stats::Stats;
use crate::{MAX_SMALL_SIZE, PAGE_BYTES, TINY_BLOCK, TINY_SIZE};

/// Objects that `realloc` grows past this size (16 KiB), by at most twice
/// their size, move to a span of their own even while their size still has a
/// class: they are *promoted*.
/// Growing buffers (a doubling `Vec`, a C string built with `realloc`) then
/// grow in place into free neighbouring pages instead of being copied at every
/// class boundary up to 32 KiB and beyond, as jemalloc's page-granular extents
/// above 16 KiB do. A promoted object's span is its class size in whole pages
/// (at most a third more than the class), or an idle span of up to twice that
/// from the large-span cache (`PageHeap::alloc_promoted`); it is freed,
/// resized and reported by the large-object path. A sized free of a size over
/// [`SHRINK_MIN`] cannot know whether the object was promoted, so it looks at
/// the page map (one lookup).
pub const PROMOTE_MIN: usize = 16 << 10;

/// `realloc` keeps a shrinking class object in its slot only at sizes over
/// this (4 KiB; see [`stays_in_class`]), so the sized frees of larger sizes
/// ask the page map for the object's class, and frees of up to 4 KiB — most
/// frees, and the only ones the fast path serves — trust their layout and
/// need no lookup. Below 4 KiB the copy a shrink saves is small: in the
/// `churn-32k` bench model, the rule from 1 KiB up would save 27 % of the
/// bytes `realloc` copies, from 4 KiB up 25 %.
pub const SHRINK_MIN: usize = 4 << 10;

/// Whether `realloc` to `new_size` (sorting as `new`) keeps an object of class
/// `c` where it is: the new size sorts to the same class, or — the
/// **shrink-in-place** rule, mimalloc's — it is over [`SHRINK_MIN`], fits the
/// class and uses at least half of it. A sized free of such an object finds
/// its class through the page map (sizes over `SHRINK_MIN` always do), so the
/// object's layout may name a smaller class than its slot. Keeping the
/// object saves the copy (most of the cost of `realloc` between 4 and
/// 32 KiB), and wastes at most what a class twice as coarse would.
pub const fn stays_in_class(c: SizeClass, new_size: usize, new: Kind) -> bool {
    match new {
        Kind::Small(b) => {
            b.index() == c.index()
                || (new_size > SHRINK_MIN && new_size <= c.size() && new_size >= c.size() / 2)
        }
        _ => false,
    }
}

/// Pages of a promoted object of class `c`: its class size, rounded up to
/// whole pages, so that every size of the class fits in place.
fn promoted_pages(c: SizeClass) -> Option<usize> {
    crate::pageheap::large_pages(c.size())
}

/// How a request is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Packed into a 64-byte block ([`TINY_BLOCK`]) with other tiny objects.
    Tiny,
    /// An object of a size class, through the per-CPU cache.
    Small(SizeClass),
    /// A span of its own.
    Large,
}

impl Kind {
    /// Sorts a request; a pure function of `(size, align)`. The common case
    /// (16..=1024 bytes, alignment at most 8) costs two compares and a table
    /// load.
    #[inline(always)]
    pub const fn of(size: usize, align: usize) -> Kind {
        if align <= 8 && size.wrapping_sub(TINY_SIZE) <= SMALL_SIZE_MAX - TINY_SIZE {
            return Kind::Small(size_to_class_small(size));
        }
        Self::of_rest(size, align)
    }

    #[inline(always)]
    const fn of_rest(size: usize, align: usize) -> Kind {
        if align <= 8 && size <= MAX_SMALL_SIZE {
            if size < TINY_SIZE {
                Kind::Tiny
            } else {
                // `of` took 16..=SMALL_SIZE_MAX.
                Kind::Small(size_to_class_medium(size))
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

/// Objects of one class moving between tiers, counted outside the fast path so
/// that `stats()` can derive frees from the per-CPU malloc counts:
/// `frees = Σ len − to_slabs + from_slabs + Σ pops + direct_frees`.
struct Flow {
    /// Central → per-CPU stacks.
    to_slabs: AtomicU64,
    /// Per-CPU stacks → central.
    from_slabs: AtomicU64,
    /// Central → user without passing a stack (a refill's last object).
    direct_mallocs: AtomicU64,
    /// User → central without passing a stack (a stack that could not take it).
    direct_frees: AtomicU64,
}

impl Flow {
    const fn new() -> Self {
        Flow {
            to_slabs: AtomicU64::new(0),
            from_slabs: AtomicU64::new(0),
            direct_mallocs: AtomicU64::new(0),
            direct_frees: AtomicU64::new(0),
        }
    }
}

/// The allocator: per-CPU caches over central lists over a page heap over `S`.
///
/// `Heap::new` is `const`; the heap sets itself up on first use (the per-CPU
/// caches come from the source then). All methods are thread-safe.
pub struct Heap<S: PageSource, C: Cpu> {
    source: S,
    cpu: C,
    /// The per-CPU caches (`cpu.count()` of them), or null before set-up.
    slabs: AtomicPtr<Slabs>,
    /// A copy of the slabs' descriptor, published once the slabs are set up
    /// in rseq mode: its offset is the one word the fast paths read before
    /// their section.
    #[cfg(all(feature = "linux", target_arch = "x86_64"))]
    fast: crate::rseq::Published,
    init: SpinMutex<usize, C::Relax>,
    pages: HeapLock<C::Relax>,
    map: PageMap,
    central: [Padded<SpinMutex<Central, C::Relax>>; NUM_CLASSES],
    /// Per line-sharing class: objects freed off their owner's CPU.
    remote: [Padded<Remote>; LAST_SHARING_CLASS as usize + 1],
    flow: [Flow; NUM_CLASSES],
    /// Counter updates that found no reachable CPU cache.
    spill: [AtomicU64; 4],
    /// Stacks (Go's stackpool and stackcache), with a per-CPU cache array set up
    /// next to the slabs.
    stacks: StackAlloc<C::Relax>,
    stack_caches: AtomicPtr<StackCache>,
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
            slabs: AtomicPtr::new(null_mut()),
            #[cfg(all(feature = "linux", target_arch = "x86_64"))]
            fast: crate::rseq::Published::new(),
            init: SpinMutex::new(0),
            pages: SpinMutex::new(PageHeap::new()),
            map: PageMap::new(),
            central: [const { Padded(SpinMutex::new(Central::new())) }; NUM_CLASSES],
            remote: [const { Padded(Remote::new()) }; LAST_SHARING_CLASS as usize + 1],
            flow: [const { Flow::new() }; NUM_CLASSES],
            spill: [const { AtomicU64::new(0) }; 4],
            stacks: StackAlloc::new(),
            stack_caches: AtomicPtr::new(null_mut()),
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
        Below {
            source: &self.source,
            map: &self.map,
            heap: &self.pages,
        }
    }

    /// The per-CPU caches, setting them up on first use; `None` if the source
    /// cannot supply them.
    #[inline(always)]
    fn slabs(&self) -> Option<&Slabs> {
        let s = self.slabs.load(Ordering::Acquire);
        if !s.is_null() {
            // SAFETY: published slabs live for ever.
            return Some(unsafe { &*s });
        }
        self.init_slabs()
    }

    #[cold]
    #[inline(never)]
    fn init_slabs(&self) -> Option<&Slabs> {
        let mut meta = self.init.lock();
        let s = self.slabs.load(Ordering::Acquire);
        if !s.is_null() {
            // SAFETY: as above.
            return Some(unsafe { &*s });
        }
        let count = self.cpu.count().max(1);
        let bytes = Slabs::bytes(count);
        let stack_bytes = count * core::mem::size_of::<StackCache>();
        let p = self.source.alloc(bytes)?;
        let sc = self.source.alloc(stack_bytes)?;
        if !S::ZEROED {
            // SAFETY: fresh Ready memory; all-zero is a valid empty cache of either kind.
            unsafe {
                p.as_ptr().write_bytes(0, bytes);
                sc.as_ptr().write_bytes(0, stack_bytes);
            }
        }
        *meta = bytes.next_multiple_of(S::PAGE_SIZE) + stack_bytes.next_multiple_of(S::PAGE_SIZE);
        self.stack_caches
            .store(sc.as_ptr().cast(), Ordering::Release);
        // SAFETY: the block is ours for ever, zeroed, page aligned and large enough.
        let s = unsafe { Slabs::init(p.as_ptr(), count, self.cpu.rseq_offset()) };
        self.slabs.store(s, Ordering::Release);
        // SAFETY: just initialised.
        let s = unsafe { &*s };
        #[cfg(all(feature = "linux", target_arch = "x86_64"))]
        if let Some(d) = s.fast_desc() {
            // SAFETY: once (the slabs are set up once, under the init lock);
            // the fast paths read nothing of `fast` before its offset, and the
            // offset is glibc's, never 0.
            unsafe { self.fast.publish(d) };
        }
        Some(s)
    }

    /// Whether per-CPU operations use restartable sequences (Linux x86-64 with
    /// glibc's rseq area) rather than the CPU slot's lock. Sets the heap up.
    pub fn uses_rseq(&self) -> bool {
        self.slabs().is_some_and(|s| s.uses_rseq())
    }

    // ---------------------------------------------------------------- small

    /// The rseq fast path: one load of the descriptor, one section; anything
    /// else (set-up, locked mode, empty stack) goes to [`Heap::alloc_small_slow`].
    #[inline(always)]
    fn alloc_small(&self, c: SizeClass) -> *mut u8 {
        #[cfg(all(feature = "linux", target_arch = "x86_64"))]
        {
            let (d, off) = self.fast.get();
            if off != 0 {
                // SAFETY: a published descriptor describes live slabs in rseq
                // mode, chosen because glibc's area exists for every thread; a
                // class index is below NUM_CLASSES.
                let p = unsafe { crate::rseq::pop(d, off, c.index()) };
                if !p.is_null() {
                    #[cfg(feature = "checks")]
                    checks::on_alloc(&self.map, p);
                    return p;
                }
            }
        }
        self.alloc_small_slow(c)
    }

    #[cfg_attr(all(feature = "linux", target_arch = "x86_64"), inline(never))]
    #[cfg_attr(not(all(feature = "linux", target_arch = "x86_64")), inline(always))]
    fn alloc_small_slow(&self, c: SizeClass) -> *mut u8 {
        let Some(slabs) = self.slabs() else {
            return null_mut();
        };
        // In rseq mode `alloc_small` has just tried this pop.
        let mut p = if slabs.uses_rseq() {
            null_mut()
        } else {
            slabs.pop(&self.cpu, c)
        };
        if p.is_null() {
            p = self.refill(slabs, c);
        }
        #[cfg(feature = "checks")]
        if !p.is_null() {
            checks::on_alloc(&self.map, p);
        }
        p
    }

    /// Takes a batch from central: all but one go to the current CPU's stack
    /// (whatever does not fit goes back), the last is the caller's.
    #[cold]
    #[inline(never)]
    fn refill(&self, slabs: &Slabs, c: SizeClass) -> *mut u8 {
        let mut buf = [null_mut(); cache::MAX_CAPACITY];
        let want = cache::batch(c.index());
        let below = self.below();
        let owner = if c.shares_lines() {
            (self.current_cpu(slabs) as u32).wrapping_add(1) // 0 (no owner) for an unregistered -1
        } else {
            0
        };
        let n = {
            let mut central = self.central[c.index()].0.lock();
            if c.shares_lines() {
                // Objects freed off their owner's CPU go back to their spans
                // first, where their owners' refills find them.
                central.give_back_remote(c, &self.remote[c.index()].0, &below);
            }
            central.refill(c, &mut buf[..want], &below, owner)
        };
        if n == 0 {
            return null_mut();
        }
        let flow = &self.flow[c.index()];
        let pushed = slabs.push_batch(&self.cpu, c, &buf[..n - 1]);
        flow.to_slabs.fetch_add(pushed as u64, Ordering::Relaxed);
        if pushed < n - 1 {
            // The stack filled meanwhile (another thread on this CPU, or a migration).
            // They never reached a stack or a user, so no flow counts them.
            self.central[c.index()]
                .0
                .lock()
                .flush(c, &buf[pushed..n - 1], &below);
        }
        flow.direct_mallocs.fetch_add(1, Ordering::Relaxed);
        buf[n - 1]
    }

    /// The CPU the caller runs on (a hint), for the owner of refilled spans.
    fn current_cpu(&self, slabs: &Slabs) -> usize {
        #[cfg(all(feature = "linux", target_arch = "x86_64"))]
        if slabs.uses_rseq() {
            // SAFETY: rseq mode: the offset is glibc's, registered for every thread.
            return unsafe { crate::rseq::cpu_id(self.fast.get().1) } as usize;
        }
        let _ = slabs;
        self.cpu.with_current(|i| i)
    }

    /// Whether `p`, of a class whose objects share lines, belongs to another
    /// CPU than `cpu`: its span's owner ([`crate::span::Span::owner`]) is
    /// another CPU. One page-map lookup and one load.
    #[inline(always)]
    fn owned_elsewhere(&self, p: *mut u8, cpu: usize) -> bool {
        // SAFETY: non-null page-map entries are live spans.
        match unsafe { self.map.span_of(p as usize).as_ref() } {
            Some(s) => {
                let o = s.owner.load(Ordering::Relaxed);
                o != 0 && o != (cpu as u32).wrapping_add(1)
            }
            None => false, // not ours: the normal path reports it (with `checks`)
        }
    }

    /// A free of an object another CPU owns: onto the class's remote list
    /// (no lock), from which the next refill returns it to its span, so this
    /// CPU's cache never hands out an object whose line-mates live elsewhere.
    #[inline(never)]
    fn free_remote(&self, p: *mut u8, c: SizeClass) {
        let r = &self.remote[c.index()].0;
        self.flow[c.index()]
            .direct_frees
            .fetch_add(1, Ordering::Relaxed);
        // SAFETY: a freed object of a line-sharing class: 8..=48 bytes,
        // 8-aligned, and no one else's.
        if unsafe { r.push(p) } >= REMOTE_MAX {
            let below = self.below();
            self.central[c.index()]
                .0
                .lock()
                .give_back_remote(c, r, &below);
        }
    }

    #[inline(always)]
    fn free_small(&self, p: *mut u8, c: SizeClass) {
        #[cfg(feature = "checks")]
        checks::on_free(&self.map, &self.central[c.index()].0, p, c);
        #[cfg(all(feature = "linux", target_arch = "x86_64"))]
        {
            let (d, off) = self.fast.get();
            if off != 0 {
                if c.shares_lines() {
                    return self.free_sharing(p, c, d, off);
                }
                // SAFETY: as in `alloc_small`.
                if unsafe { crate::rseq::push(d, off, c.index(), p) } {
                    return;
                }
            }
        }
        self.free_small_slow(p, c)
    }

    /// rseq mode, a class whose objects share lines: the owner check, then the
    /// push. Out of line, so that the other classes' path stays short and
    /// straight (and the static count of `make bench-callgrind` follows it).
    #[cfg(all(feature = "linux", target_arch = "x86_64"))]
    #[inline(never)]
    fn free_sharing(&self, p: *mut u8, c: SizeClass, d: *const crate::rseq::Desc, off: i64) {
        // SAFETY: rseq mode (offset published): glibc's area exists.
        if self.owned_elsewhere(p, unsafe { crate::rseq::cpu_id(off) } as usize) {
            return self.free_remote(p, c);
        }
        // SAFETY: as in `alloc_small`.
        if unsafe { crate::rseq::push(d, off, c.index(), p) } {
            return;
        }
        self.free_small_slow(p, c)
    }

    #[cfg_attr(all(feature = "linux", target_arch = "x86_64"), inline(never))]
    #[cfg_attr(not(all(feature = "linux", target_arch = "x86_64")), inline(always))]
    fn free_small_slow(&self, p: *mut u8, c: SizeClass) {
        let slabs = self.slabs.load(Ordering::Acquire);
        assert!(
            !slabs.is_null(),
            "tieralloc: free of {p:p} before any allocation"
        );
        // SAFETY: published slabs live for ever.
        let slabs = unsafe { &*slabs };
        // In rseq mode `free_small` has just tried this push.
        if slabs.uses_rseq() {
            return self.flush_push(slabs, c, p);
        }
        let pushed = if c.shares_lines() {
            match slabs.push_owned(&self.cpu, c, p, |i| self.owned_elsewhere(p, i)) {
                Some(pushed) => pushed,
                None => return self.free_remote(p, c),
            }
        } else {
            slabs.push(&self.cpu, c, p)
        };
        if !pushed {
            self.flush_push(slabs, c, p);
        }
    }

    /// The stack is full: send its top batch to central, then push `p` (or, if
    /// the stack stays unreachable, hand `p` to central directly).
    #[cold]
    #[inline(never)]
    fn flush_push(&self, slabs: &Slabs, c: SizeClass, p: *mut u8) {
        let below = self.below();
        let flow = &self.flow[c.index()];
        for _ in 0..4 {
            let mut buf = [null_mut(); cache::MAX_CAPACITY];
            let k = slabs.pop_batch(&self.cpu, c, &mut buf[..cache::batch(c.index())]);
            if k > 0 {
                self.central[c.index()].0.lock().flush(c, &buf[..k], &below);
                flow.from_slabs.fetch_add(k as u64, Ordering::Relaxed);
            }
            if slabs.push(&self.cpu, c, p) {
                return;
            }
        }
        self.central[c.index()].0.lock().flush(c, &[p], &below);
        flow.direct_frees.fetch_add(1, Ordering::Relaxed);
    }

    // ----------------------------------------------------------------- tiny

    /// Go's tiny allocator with live counts: sub-objects are bump-allocated in
    /// the CPU's current 64-byte block ([`TINY_BLOCK`], one cache line, so no
    /// two CPUs carve in one line). While a block is current its count holds
    /// `TINY_BIAS`; each free subtracts 1 and retiring the block subtracts
    /// `TINY_BIAS - n` (n = sub-objects carved), so the count reaches 0 exactly
    /// when the block is no longer current and every sub-object is dead.
    ///
    /// The CPU's tiny state is one word ([`Tiny`]); a carve reads it and commits
    /// the new word only if the word and the CPU are unchanged.
    #[inline(always)]
    fn alloc_tiny(&self, size: usize, align: usize) -> *mut u8 {
        let size = size.max(1);
        // Go's alignment rule, raised to the layout's.
        let a = if size.is_multiple_of(8) {
            8
        } else if size.is_multiple_of(4) {
            4
        } else if size.is_multiple_of(2) {
            2
        } else {
            1
        }
        .max(align);
        #[cfg(all(feature = "linux", target_arch = "x86_64"))]
        {
            let (d, off) = self.fast.get();
            if off != 0 {
                // SAFETY: as in `alloc_small`; word entry 0 addresses the caches
                // themselves, TINY_FIELD is their tiny word, `a` a power of two.
                let p = unsafe { crate::rseq::carve(d, off, TINY_FIELD, size, a - 1) };
                if !p.is_null() {
                    return p;
                }
            }
        }
        self.alloc_tiny_slow(size, a)
    }

    #[cfg_attr(all(feature = "linux", target_arch = "x86_64"), inline(never))]
    fn alloc_tiny_slow(&self, size: usize, a: usize) -> *mut u8 {
        let Some(slabs) = self.slabs() else {
            return null_mut();
        };
        // In rseq mode `alloc_tiny` has just tried this carve.
        if !slabs.uses_rseq() {
            let p = slabs.carve_tiny(&self.cpu, size, a);
            if !p.is_null() {
                return p;
            }
        }
        self.alloc_tiny_block(slabs, size)
    }

    /// Adds to a per-CPU counter (or to the heap-wide spill if no CPU cache is
    /// reachable right now).
    fn count(&self, slabs: &Slabs, k: Counter, delta: u64) {
        if !slabs.add(&self.cpu, k, delta) {
            self.spill[k as usize].fetch_add(delta, Ordering::Relaxed);
        }
    }

    #[cold]
    #[inline(never)]
    fn alloc_tiny_block(&self, slabs: &Slabs, size: usize) -> *mut u8 {
        let b = self.alloc_small(TINY_CLASS);
        if b.is_null() {
            return b;
        }
        self.count(slabs, Counter::TinyBlocksTaken, 1);
        // SAFETY: `b` is an object of a live tiny-class span.
        let span = unsafe { &*self.map.span_of(b as usize) };
        let counter = tiny_counter(span, span.index_of(b as usize).0);
        while let Some((cpu, w)) = slabs.load(&self.cpu, TINY_FIELD) {
            let t = Tiny::unpack(w);
            if t.stopped() || (t.block != 0 && size >= t.off) {
                break; // being drained, or the current block has at least as much room left: keep it
            }
            counter.store(TINY_BIAS, Ordering::Release);
            if slabs.store_if(
                &self.cpu,
                cpu,
                TINY_FIELD,
                w,
                Tiny {
                    block: b as usize,
                    off: size,
                    n: 1,
                }
                .pack(),
            ) {
                if t.block != 0 {
                    self.retire_tiny(slabs, t);
                }
                return b;
            }
        }
        // A block of its own for this one sub-object.
        counter.store(1, Ordering::Release);
        self.count(slabs, Counter::TinyMallocsRetired, 1);
        b
    }

    /// Stops carving from a block that was some CPU's current tiny block.
    fn retire_tiny(&self, slabs: &Slabs, t: Tiny) {
        self.count(slabs, Counter::TinyMallocsRetired, t.n as u64);
        let b = t.block as *mut u8;
        // SAFETY: the block is live (we hold its bias), so its span and counters are.
        let span = unsafe { &*self.map.span_of(t.block) };
        let bias = TINY_BIAS - t.n as u8;
        let before = tiny_counter(span, span.index_of(t.block).0).fetch_sub(bias, Ordering::AcqRel);
        if before == bias {
            self.free_tiny_block(slabs, b);
        }
    }

    fn free_tiny_block(&self, slabs: &Slabs, b: *mut u8) {
        self.count(slabs, Counter::TinyBlocksFreed, 1);
        self.free_small(b, TINY_CLASS);
    }

    fn free_tiny(&self, p: *mut u8) {
        let s = self.map.span_of(p as usize);
        // SAFETY: non-null page-map entries are live spans.
        let span = match unsafe { s.as_ref() } {
            Some(span) if span.state == SpanState::Small && span.class == TINY_CLASS => span,
            _ => panic!("tieralloc: free of tiny object {p:p}: not a tiny object of this heap (foreign pointer, wrong layout, or double free)"),
        };
        let idx = span.index_of(p as usize).0;
        let counter = tiny_counter(span, idx);
        let before = counter.fetch_sub(1, Ordering::AcqRel);
        if before == 0 || before > TINY_BIAS {
            // Undo, so the report leaves the count as it was.
            counter.fetch_add(1, Ordering::AcqRel);
            panic!(
                "tieralloc: double free of tiny object {p:p}, or a tiny-layout free of an object that is not tiny (block {:p} of span {:#x}, class {}, live count was {before})",
                span.object(idx),
                span.start,
                TINY_CLASS.index()
            );
        }
        // SAFETY: a tiny object exists, so the slabs were set up.
        let slabs = unsafe { &*self.slabs.load(Ordering::Acquire) };
        self.count(slabs, Counter::TinyFrees, 1);
        if before == 1 {
            self.free_tiny_block(slabs, span.object(idx));
        }
    }

    // ---------------------------------------------------------------- large

    fn alloc_large(&self, size: usize, align: usize) -> Option<(NonNull<u8>, bool)> {
        let s = self
            .pages
            .lock()
            .alloc_large(&self.source, &self.map, size, align)?;
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
            Some(span) if span.state == SpanState::Idle => panic!(
                "tieralloc: double free of large object {p:p} (span {:#x}, {} pages, idle in the large-span cache)",
                span.start, span.npages
            ),
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
            Kind::Large => self
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
        match Kind::of(layout.size(), layout.align()) {
            Kind::Tiny => self.free_tiny(p),
            // Sizes up to 1 KiB never get here: `Kind::of`'s first branch bounds
            // them, so the compiler drops this test from the fast path.
            Kind::Small(c) if layout.size() > SHRINK_MIN => self.free_by_map(p, c),
            Kind::Small(c) => self.free_small(p, c),
            Kind::Large => self.free_large(p),
        }
    }

    /// Frees `p`, whose layout sorts to class `c` with a size over 4 KiB: the
    /// page map says what it is — an object of its span's class (at least
    /// `c`, larger if `realloc` shrank it in place), or an object with a span
    /// of its own (promoted). A foreign pointer or a double free finds no
    /// class span and the large path reports it.
    #[inline(never)]
    fn free_by_map(&self, p: *mut u8, c: SizeClass) {
        match self.class_of(p) {
            Some(slot) => {
                #[cfg(feature = "checks")]
                checks::on_layout(p, c, slot);
                let _ = c;
                self.free_small(p, slot)
            }
            None => self.free_large(p),
        }
    }

    /// The class of the span holding `p`, if that is a span of small objects
    /// (else `p` has a span of its own, or is not an object of this heap).
    fn class_of(&self, p: *mut u8) -> Option<SizeClass> {
        // SAFETY: non-null page-map entries are live spans.
        unsafe { self.map.span_of(p as usize).as_ref() }
            .filter(|s| s.state == SpanState::Small)
            .map(|s| s.class)
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

    /// Resizes in place when the class does not change, when a class object
    /// shrinks within its slot ([`stays_in_class`]), or when an object with a
    /// span of its own can shrink or grow its pages into free neighbours;
    /// otherwise moves. An object that grows past [`PROMOTE_MIN`] moves to a
    /// span of its own (it is *promoted*), so that later growth can happen in
    /// place instead of copying at every class boundary.
    ///
    /// # Safety
    /// As [`GlobalAlloc::realloc`].
    pub unsafe fn reallocate(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (old_size, align) = (layout.size(), layout.align());
        let new = Kind::of(new_size, align);
        // What the object is: over 4 KiB the page map says (its slot's class,
        // or a span of its own: large or promoted).
        let (old, own) = match Kind::of(old_size, align) {
            Kind::Small(c) if old_size > SHRINK_MIN => match self.class_of(p) {
                Some(slot) => (Kind::Small(slot), None),
                None => (Kind::Small(c), Some(self.large_span(p))),
            },
            Kind::Large => (Kind::Large, Some(self.large_span(p))),
            k => (k, None),
        };
        match (old, own) {
            (Kind::Small(a), None) if stays_in_class(a, new_size, new) => return p,
            // A promoted object's span holds its whole class (see `promoted_pages`).
            (Kind::Small(a), Some(_)) if new == Kind::Small(a) => return p,
            _ => {}
        }
        // SAFETY: forwarded from the caller; `old` and `own` describe `p`.
        unsafe { self.resize_or_move(p, old_size, old, own, new_size, new, align) }
    }

    /// Resizes `p` without its layout (C's `realloc`), finding what it is
    /// through the page map as [`Heap::deallocate_unsized`] does: a class
    /// object (old size: its class size) or an object with a span of its own
    /// (its span's bytes). Otherwise as [`Heap::reallocate`], with the new
    /// layout `(new_size, align)`.
    ///
    /// # Safety
    /// `p` is a live, non-tiny object of this heap; `(new_size, align)` is a
    /// valid layout. On success `p` must not be used again.
    pub unsafe fn reallocate_unsized(&self, p: *mut u8, new_size: usize, align: usize) -> *mut u8 {
        let new = Kind::of(new_size, align);
        // SAFETY: non-null page-map entries are live spans.
        match unsafe { self.map.span_of(p as usize).as_ref() } {
            Some(span) if span.state == SpanState::Small => {
                let c = span.class;
                if stays_in_class(c, new_size, new) {
                    return p;
                }
                // SAFETY: the caller's live object of class `c`.
                unsafe {
                    self.resize_or_move(p, c.size(), Kind::Small(c), None, new_size, new, align)
                }
            }
            _ => {
                // A span of its own, or not an object (reported here).
                let s = self.large_span(p);
                // SAFETY: a live large span (checked), the caller's.
                let bytes = unsafe { (*s.as_ptr()).npages } * PAGE_BYTES;
                // SAFETY: the caller's object, with its span.
                unsafe { self.resize_or_move(p, bytes, Kind::Large, Some(s), new_size, new, align) }
            }
        }
    }

    /// The common part of `realloc`: `p` holds `old_size` bytes, sorts as
    /// `old`, and has span `own` to itself if it is large or promoted.
    ///
    /// # Safety
    /// As [`GlobalAlloc::realloc`], with `old`/`own` true of `p` and `new`
    /// sorting `(new_size, align)`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn resize_or_move(
        &self,
        p: *mut u8,
        old_size: usize,
        old: Kind,
        own: Option<NonNull<crate::span::Span>>,
        new_size: usize,
        new: Kind,
        align: usize,
    ) -> *mut u8 {
        // Pages for the new size if it may keep a span of its own.
        let pages = match new {
            Kind::Large => crate::pageheap::large_pages(new_size),
            Kind::Small(c) if new_size > PROMOTE_MIN => promoted_pages(c),
            _ => None,
        };
        if let (Some(s), Some(npages)) = (own, pages) {
            // SAFETY: the caller owns the object, so its span is live and ours.
            if unsafe { self.pages.lock().resize_large(&self.source, s, npages) } {
                return p;
            }
        }
        // `Layout::from_size_align(new_size, align)` must hold (GlobalAlloc's
        // contract); an impossible size is refused, never allocated.
        if new_size > isize::MAX as usize - (align - 1) {
            return null_mut();
        }
        // Each kind computed once: no `allocate`/`deallocate` re-sorting.
        let q = match new {
            Kind::Tiny => self.alloc_tiny(new_size, align),
            // Growing past the threshold by at most twice, as buffers grow
            // (a doubling `Vec`, appends): promote (or, short of pages, take a
            // class object if central still has one). A jump from a much
            // smaller object is not taken for a growing buffer.
            Kind::Small(c)
                if new_size > old_size && new_size / 2 <= old_size && pages.is_some() =>
            {
                let s =
                    (self.pages.lock()).alloc_promoted(&self.source, &self.map, c.size(), align);
                match s {
                    // SAFETY: a fresh large span, ours.
                    Some(s) => unsafe { (*s.as_ptr()).start as *mut u8 },
                    None => self.alloc_small(c),
                }
            }
            Kind::Small(c) => self.alloc_small(c),
            Kind::Large => self
                .alloc_large(new_size, align)
                .map_or(null_mut(), |(q, _)| q.as_ptr()),
        };
        if !q.is_null() {
            // SAFETY: both blocks are live, distinct, and at least this long;
            // `p` is the caller's object of kind `old`.
            unsafe {
                core::ptr::copy_nonoverlapping(p, q, old_size.min(new_size));
            }
            match (own, old) {
                // SAFETY: the caller hands the object over; its span is ours.
                (Some(s), _) => unsafe { self.pages.lock().free_large(&self.source, s) },
                (None, Kind::Tiny) => self.free_tiny(p),
                (None, Kind::Small(c)) => self.free_small(p, c),
                (None, Kind::Large) => unreachable!("a large object has its own span"),
            }
        }
        q
    }

    // ------------------------------------------------------ unsized (C ABI)

    /// Bytes usable at `p` if `p` is the start of an object slot of this heap
    /// (its class size, or its large span's bytes); `None` for foreign and
    /// interior pointers and freed large objects. Never panics, never allocates.
    /// (A freed small object's slot still answers: its span is live.)
    pub fn try_usable_size(&self, p: *mut u8) -> Option<usize> {
        let s = self.map.span_of(p as usize);
        // SAFETY: non-null page-map entries are live spans.
        match unsafe { s.as_ref() } {
            Some(span) if span.state == SpanState::Small && span.index_of(p as usize).1 => {
                Some(span.class.size())
            }
            Some(span) if span.state == SpanState::Large && span.start == p as usize => {
                Some(span.npages * PAGE_BYTES)
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
        let s = self.map.span_of(p as usize);
        // SAFETY: non-null page-map entries are live spans.
        match unsafe { s.as_ref() } {
            Some(span) if span.state == SpanState::Small => self.free_small(p, span.class),
            Some(span) if span.state == SpanState::Large || span.state == SpanState::Idle => self.free_large(p),
            _ => panic!("tieralloc: free of {p:p}: not a pointer into this heap (foreign pointer or double free)"),
        }
    }

    /// Takes every lock of the heap (CPU slots, central lists, page heap, set-up),
    /// so that no operation is half done: call before `fork`.
    pub fn lock_all(&self) {
        core::mem::forget(self.init.lock());
        if !self.slabs.load(Ordering::Acquire).is_null() {
            for i in 0..self.cpu.count() {
                self.cpu.acquire_slot(i);
            }
        }
        for c in &self.central {
            core::mem::forget(c.0.lock());
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
            for c in &self.central {
                c.0.force_unlock();
            }
            if !self.slabs.load(Ordering::Acquire).is_null() {
                for i in 0..self.cpu.count() {
                    self.cpu.release_slot(i);
                }
            }
            self.init.force_unlock();
        }
    }

    // --------------------------------------------------------------- stacks

    /// A stack of at least `bytes` (Go's stack allocator: power-of-two orders of
    /// 8–64 KiB carved from spans through a per-CPU stack cache, larger stacks
    /// from the page heap). With `guard`, the page below the stack faults on
    /// access (the source's Reserved state); guarded stacks have spans of their own.
    pub fn alloc_stack(&self, bytes: usize, guard: bool) -> Option<Stack> {
        let below = self.below();
        self.slabs()?;
        let caches = self.stack_caches.load(Ordering::Acquire);
        if caches.is_null() || !stack::uses_cache(bytes, guard) {
            return self.stacks.alloc(&below, None, bytes, guard);
        }
        // SAFETY: `i < count` and slot `i` is held for the closure.
        self.cpu.with_current(|i| {
            self.stacks
                .alloc(&below, Some(unsafe { &mut *caches.add(i) }), bytes, guard)
        })
    }

    /// Frees a stack.
    ///
    /// # Safety
    /// `stack` came from this heap's `alloc_stack` and nothing uses it any more.
    pub unsafe fn free_stack(&self, stack: Stack) {
        let below = self.below();
        let caches = self.stack_caches.load(Ordering::Acquire);
        if caches.is_null() || stack.order().is_none() {
            // SAFETY: forwarded from the caller.
            return unsafe { self.stacks.free(&below, None, stack) };
        }
        // SAFETY: forwarded from the caller; `i < count` and slot `i` is held.
        self.cpu
            .with_current(|i| unsafe { self.stacks.free(&below, Some(&mut *caches.add(i)), stack) })
    }

    /// Stack statistics (stack spans also count in `heap_inuse`, as pages in use).
    pub fn stack_stats(&self) -> StackStats {
        self.stacks.stats()
    }

    // ------------------------------------------------------- whole-heap ops

    /// Gives back every CPU's cached objects and tiny block, empties the
    /// transfer caches, and releases all free pages to the source (Go's
    /// `debug.FreeOSMemory`). Returns the bytes released by this call.
    ///
    /// In rseq mode another CPU's cache is drained only if the kernel offers the
    /// expedited-rseq membarrier (Linux ≥ 5.10); otherwise those caches (at most
    /// [`cache::CACHE_BOUND_BYTES`] each) stay as they are.
    pub fn scavenge(&self) -> usize {
        let below = self.below();
        let slabs = self.slabs.load(Ordering::Acquire);
        if !slabs.is_null() {
            // SAFETY: published slabs live for ever.
            let slabs = unsafe { &*slabs };
            // First the tiny blocks (retiring one may free it into some CPU's stack),
            // retired outside the CPU's exclusivity.
            for i in 0..slabs.count() {
                if let Some(t) = slabs
                    .with_exclusive(&self.cpu, i, |cache| cache.take_tiny())
                    .filter(|t| t.block != 0)
                {
                    self.retire_tiny(slabs, t);
                }
            }
            for i in 0..slabs.count() {
                let mut buf = [null_mut(); cache::MAX_CAPACITY];
                slabs.with_exclusive(&self.cpu, i, |cache| {
                    for c in SizeClass::small_classes() {
                        let k = cache.pop_batch(c, &mut buf);
                        if k > 0 {
                            self.central[c.index()].0.lock().flush(c, &buf[..k], &below);
                            self.flow[c.index()]
                                .from_slabs
                                .fetch_add(k as u64, Ordering::Relaxed);
                        }
                    }
                });
            }
        }
        for c in SizeClass::small_classes() {
            let mut central = self.central[c.index()].0.lock();
            if c.shares_lines() {
                central.give_back_remote(c, &self.remote[c.index()].0, &below);
            }
            central.drain_transfer(c, &below);
        }
        let sc = self.stack_caches.load(Ordering::Acquire);
        if !sc.is_null() {
            for i in 0..self.cpu.count() {
                // SAFETY: `i < count`, slot `i` held.
                self.cpu
                    .with_slot(i, || self.stacks.drain(&below, unsafe { &mut *sc.add(i) }));
            }
        }
        let mut h = self.pages.lock();
        h.flush_large_cache(&self.source);
        h.scavenge(&self.source, usize::MAX) * PAGE_BYTES
    }

    /// Sets the dirty free memory always kept before the scavenger releases
    /// pages (default [`crate::pageheap::DEFAULT_RETAIN_BYTES`]); the
    /// scavenger's allowance is this or the room under 1.5 times the recent
    /// in-use peak, whichever is larger (see `pageheap`, "Scavenger policy").
    /// A floor above 16 MiB also lets the large-span cache hold a quarter of
    /// it (at most 32 MiB; see [`crate::pageheap::LARGE_CACHE_MAX_PAGES`]).
    pub fn set_retain_bytes(&self, bytes: usize) {
        self.pages.lock().set_retain_bytes(bytes);
    }

    /// A snapshot of the heap's statistics; exact when no operation is in flight.
    ///
    /// Per class, mallocs are counted by the per-CPU pops (packed into the stack
    /// words) plus direct hand-outs; frees are derived from the flow of objects
    /// between tiers: `frees = Σ stack lengths − to_slabs + from_slabs + pops + direct_frees`.
    pub fn stats(&self) -> Stats {
        let mut st = Stats::default();
        let mut pops = [0u64; NUM_CLASSES];
        let mut lens = [0u64; NUM_CLASSES];
        let mut k = [0u64; 4];
        for (i, s) in self.spill.iter().enumerate() {
            k[i] = s.load(Ordering::Relaxed);
        }
        let mut tiny_current = 0u64;
        let slabs = self.slabs.load(Ordering::Acquire);
        if !slabs.is_null() {
            // SAFETY: published slabs live for ever.
            let slabs = unsafe { &*slabs };
            st.cpus = slabs.count() as u64;
            st.rseq = slabs.uses_rseq();
            for i in 0..slabs.count() {
                // Racy reads of words other CPUs write with plain stores: each word
                // is read whole; the totals are exact at quiescence.
                let cache = slabs.cache(i);
                for c in 1..NUM_CLASSES {
                    let w = cache.word(c);
                    pops[c] += w >> 16;
                    lens[c] += w & cache::LEN_MASK;
                }
                for (j, kind) in [
                    Counter::TinyMallocsRetired,
                    Counter::TinyFrees,
                    Counter::TinyBlocksTaken,
                    Counter::TinyBlocksFreed,
                ]
                .into_iter()
                .enumerate()
                {
                    k[j] += cache.counter(kind);
                }
                tiny_current += cache.tiny().n as u64;
                st.cached_bytes += cache.cached_bytes() as u64;
            }
        }
        for c in SizeClass::small_classes() {
            let i = c.index();
            let f = &self.flow[i];
            let (to, from, dm, df) = (
                f.to_slabs.load(Ordering::Relaxed),
                f.from_slabs.load(Ordering::Relaxed),
                f.direct_mallocs.load(Ordering::Relaxed),
                f.direct_frees.load(Ordering::Relaxed),
            );
            st.by_size[i].size = c.size() as u64;
            st.by_size[i].mallocs = pops[i] + dm;
            st.by_size[i].frees = (lens[i] + from + pops[i] + df).wrapping_sub(to);
            st.cached_bytes += (self.central[i].0.lock().transfer_len() * c.size()) as u64;
            if c.shares_lines() {
                st.cached_bytes += (self.remote[i].0.len() * c.size()) as u64;
            }
        }
        // Tiny blocks are objects of the tiny class, but not user objects of it.
        let t = TINY_CLASS.index();
        st.by_size[t].mallocs = st.by_size[t].mallocs.wrapping_sub(k[2]);
        st.by_size[t].frees = st.by_size[t].frees.wrapping_sub(k[3]);
        st.tiny_mallocs = k[0] + tiny_current;
        st.tiny_frees = k[1];
        st.tiny_blocks = k[2].wrapping_sub(k[3]);
        let ps = self.pages.lock().stats();
        st.cached_bytes += ps.large_cached;
        st.by_size[0].mallocs = ps.large.mallocs;
        st.by_size[0].frees = ps.large.frees;
        st.large_alloc = ps.large.live_bytes;
        let ss = self.stacks.stats();
        st.stack_sys = ss.sys_bytes;
        st.stacks = ss.inuse_stacks;
        st.stack_inuse = ss.inuse_bytes;
        st.heap_sys = ps.sys;
        st.heap_inuse = ps.inuse.saturating_sub(ss.sys_bytes);
        st.heap_idle = ps.sys - ps.inuse;
        st.heap_released = ps.released;
        st.meta_sys = ps.meta_sys + *self.init.lock() as u64;
        st.arenas = ps.arenas;
        st.spans = ps.spans;
        st.scavenged_total = ps.scavenged_total;
        // Wrapping sums: a snapshot taken while other threads allocate and free
        // may see a free before its allocation (a transiently "negative" count);
        // that must not panic on overflow. Exact at quiescence.
        st.heap_alloc = st
            .large_alloc
            .wrapping_add(st.tiny_blocks.wrapping_mul(TINY_BLOCK as u64))
            .wrapping_add(
                st.by_size[1..]
                    .iter()
                    .map(|r| r.live().wrapping_mul(r.size))
                    .fold(0, u64::wrapping_add),
            );
        st.mallocs = st
            .by_size
            .iter()
            .map(|r| r.mallocs)
            .fold(st.tiny_mallocs, u64::wrapping_add);
        st.frees = st
            .by_size
            .iter()
            .map(|r| r.frees)
            .fold(st.tiny_frees, u64::wrapping_add);
        st
    }

    /// Walks every tier and panics with a message on the first broken invariant.
    /// Call it at quiescence (tests, the `checks` feature's users).
    pub fn check_invariants(&self) {
        for c in SizeClass::small_classes() {
            self.central[c.index()].0.lock().check_invariants(c);
        }
        self.stacks.check_invariants();
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
        assert!(
            old & b == 0,
            "tieralloc: object {p:p} (span {:#x}) carved while cached",
            span.start
        );
    }

    /// An object goes back to its span from a cache.
    pub fn unmark_cached(span: &Span, idx: usize, p: *mut u8) {
        let (w, b) = bit(idx);
        let old = span.cached_bits[w].fetch_and(!b, Ordering::Relaxed);
        assert!(
            old & b != 0,
            "tieralloc: object {p:p} (span {:#x}) returned to its span but was not free",
            span.start
        );
    }

    /// A cached object is handed to the user.
    pub fn on_alloc(map: &PageMap, p: *mut u8) {
        // SAFETY: cached objects are in live spans.
        let span = unsafe { &*map.span_of(p as usize) };
        let (w, b) = bit(span.index_of(p as usize).0);
        let old = span.cached_bits[w].fetch_and(!b, Ordering::Relaxed);
        assert!(
            old & b != 0,
            "tieralloc: object {p:p} (span {:#x}, class {}) handed out twice",
            span.start,
            span.class.index()
        );
    }

    /// A sized free over 4 KiB found the object in a slot of class `slot`: the
    /// layout's class `c` must fit in it (it may be smaller: `realloc` shrinks
    /// in place).
    pub fn on_layout(p: *mut u8, c: SizeClass, slot: SizeClass) {
        if c.size() > slot.size() {
            panic!(
                "tieralloc: free of {p:p} with a layout of class {} ({} B), but it sits in a slot of class {} ({} B)",
                c.index(),
                c.size(),
                slot.index(),
                slot.size()
            );
        }
    }

    /// The user frees `p` as an object of class `c`: check it is one, live.
    pub fn on_free<X: spin::RelaxStrategy>(
        map: &PageMap,
        central: &SpinMutex<Central, X>,
        p: *mut u8,
        c: SizeClass,
    ) {
        let s = map.span_of(p as usize);
        // SAFETY: non-null page-map entries are live spans.
        let Some(span) = (unsafe { s.as_ref() }) else {
            panic!("tieralloc: free of {p:p}: not a pointer into this heap (foreign pointer, or a freed large object)");
        };
        if span.state == SpanState::Idle {
            panic!("tieralloc: free of {p:p}: not a pointer into this heap (a freed large object, idle in the large-span cache)");
        }
        if span.state != SpanState::Small {
            panic!(
                "tieralloc: free of {p:p} as a class {} object, but span {:#x} is {:?}",
                c.index(),
                span.start,
                span.state
            );
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
            (
                allocated,
                if allocated {
                    span.cached_bits[w].fetch_or(b, Ordering::Relaxed)
                } else {
                    0
                },
            )
        };
        if !allocated {
            panic!("tieralloc: double free of {p:p} (span {:#x}, class {}): the object is already free", span.start, c.index());
        }
        if old & b != 0 {
            panic!("tieralloc: double free of {p:p} (span {:#x}, class {}): the object is already free in a cache", span.start, c.index());
        }
    }
}
