//! Stacks (Go's `stack.go`), adapted to explicit free: thread stacks for a
//! kernel or a runtime built on the heap. See `lib.rs` for the overview.
//!
//! ```text
//!  alloc(bytes, guard) / free(stack)
//!        │
//!  StackCache   per-CPU, per order: a bounded array of free stacks            (slot exclusivity)
//!        │ refill to half / drain to half
//!  pool[order]  per order: spans carved into stacks, one bit per stack          (the order's lock)
//!        │ a 32-page Manual span / an empty span
//!  pageheap     also: large stacks and guarded stacks as Manual spans of their own   (the heap lock)
//! ```
//!
//! **Orders.** A stack of `bytes <= MAX_ORDER_STACK` gets the smallest power of
//! two from [`MIN_STACK`] = 8 KiB up that holds it: orders 8, 16, 32 and 64 KiB
//! ([`NUM_ORDERS`] = 4). Go starts at 2 KiB because a goroutine stack grows by
//! copying; a kernel stack cannot grow, holds interrupt frames and deep driver
//! call chains, and 8 KiB ([`MIN_STACK`]) is the least a
//! kernel thread lives with (Linux's smallest `THREAD_SIZE` on 64-bit is 16 KiB).
//!
//! **Pools.** Stacks of order `o` are carved from spans of [`STACK_SPAN_BYTES`]
//! (256 KiB, 32 stacks of 8 KiB down to 4 of 64 KiB) that the page
//! heap hands out as `SpanState::Manual`, aligned to 256 KiB, so **every
//! pooled stack is aligned to its size** (`sp & !(size - 1)` finds its base).
//! `pool[o]` keeps the spans that still have a free stack; a span whose last
//! stack comes back returns to the page heap at once (Go does so when the GC is
//! off).
//!
//! **Per-CPU cache.** [`StackCache`] holds up to [`cache_capacity`]`(o)` free
//! stacks of each order: 8, 4, 2 and 1 (that is [`STACK_CACHE_BYTES`] = 64 KiB
//! per order). An empty cache is refilled to half its capacity (at least one)
//! from the pool; a free into a full cache first drains its oldest stacks to the
//! pool, down to half. So one CPU strands at most [`STACK_CACHE_BOUND_BYTES`] =
//! 256 KiB of free stacks; [`StackAlloc::drain`] gives them back. (Go's
//! `_StackCacheSize` = 32 KiB, refill and drain to 16 KiB.)
//!
//! **Large stacks** (`bytes > MAX_ORDER_STACK`) are whole pages, a Manual span
//! of their own, freed straight to the page heap (Go keeps a `stackLarge` free
//! list per size for the GC's sake; here the page heap's first fit serves).
//!
//! **Guarded stacks** are a Manual span of their own, `bytes` rounded up to
//! pages plus one page below: its [`GUARD_BYTES`] (one heap page, all the
//! source pages in it) are made a guard with [`PageSource::fault`], so running
//! off the bottom of the stack faults (with `FrameSource`, the kernel's
//! page-fault handler recognises it with `FrameSource::is_guard`). A guarded
//! stack is never cached or carved. Its free makes the guard usable again with
//! `commit` + `ready` before the span goes back to the page heap (the page heap
//! only holds Ready or released pages). If that fails (a kernel out of frames),
//! the stack's memory is released and the span is kept for good: its address
//! space leaks, counted in [`StackStats::leaked_spans`]. A source without an MMU
//! (`RegionSource`) cannot enforce the guard; on Linux each guard costs a VMA.
//!
//! Differences from Go: pooled spans keep their free stacks in the span's
//! allocation bitmap (`Span::alloc_bits`, lowest free first, as small-object
//! spans do) rather than in a `manualFreeList` threaded through the free stacks,
//! so a free stack's memory is never written and a second free of a stack that
//! reached its span is caught by the bit (a second free into the same CPU cache
//! is caught by a scan of that cache; one into another CPU's cache is caught when
//! both reach the span).
//!
//! Lock order: CPU slot → `pool[o]` (one order at a time) → page heap. A pool
//! lock is never held with a central lock, so the two are unordered.
//!
//! Invariants (`pool[o]`'s lock guards its spans' `alloc_bits`, `alloc_count`,
//! `list` and links):
//! * a span on `pool[o].partial` has `0 < alloc_count < nelems` and `list ==
//!   Partial`; a span of order `o` not on it is full (`list == Full`);
//! * `pool[o].carved == Σ alloc_count` over the order's spans: stacks in use or
//!   in some CPU cache;
//! * `StackCache::stacks[o][..len[o]]` are distinct free stacks of order `o`
//!   whose bits are set in their spans; `len[o] <= cache_capacity(o)`.

use core::ptr::{null_mut, NonNull};

use crate::pageheap::Below;
use crate::source::{PageSource, SourcePage};
use crate::span::{ListId, Span, SpanList, SpanState};
use crate::sync::atomic::{AtomicUsize, Ordering};
use crate::sync::{Lock, Padded, RelaxStrategy};
use crate::units::{Addr, PageSize, Pages};
use crate::PAGE_BYTES;

/// Smallest stack, order 0, and the granule of every stack size: 8 KiB (one
/// of Go's pages; a whole number of the heap's pages, which are at most that).
pub const MIN_STACK: usize = PAGE_BYTES;
/// Number of pooled sizes: `MIN_STACK << o` for `o < NUM_ORDERS`.
pub const NUM_ORDERS: usize = 4;
/// Largest pooled stack, `MIN_STACK << (NUM_ORDERS - 1)` = 64 KiB; bigger ones are large stacks.
pub const MAX_ORDER_STACK: usize = MIN_STACK << (NUM_ORDERS - 1);
/// Bytes of a pool span: 256 KiB.
pub const STACK_SPAN_BYTES: usize = 32 * MIN_STACK;

/// The pages of `bytes` (a multiple of [`MIN_STACK`]) in a heap of `page`,
/// which divides [`MIN_STACK`].
const fn stack_pages(bytes: usize, page: PageSize) -> Pages {
    assert!(
        MIN_STACK.is_multiple_of(page.bytes()),
        "stacks need pages of at most 8 KiB"
    );
    Pages::of_whole_bytes(bytes, page)
}
/// Bytes of free stacks a CPU cache holds per order (at least one stack).
pub const STACK_CACHE_BYTES: usize = 64 << 10;
/// Array slots per order in a [`StackCache`]: the capacity of order 0.
pub const CACHE_SLOTS: usize = STACK_CACHE_BYTES / MIN_STACK;
/// Bytes below a guarded stack that fault on access: 8 KiB.
pub const GUARD_BYTES: usize = MIN_STACK;

const _: () = assert!(
    STACK_SPAN_BYTES / MIN_STACK <= 64,
    "a pool span's stacks must fit one bitmap word"
);
const _: () = assert!(STACK_SPAN_BYTES >= MAX_ORDER_STACK);

/// Usable bytes of a stack of order `o`.
pub const fn order_size(o: usize) -> usize {
    MIN_STACK << o
}

/// The order that serves `bytes` (0 for `bytes <= MIN_STACK`), or `None` for a
/// large stack.
pub const fn order_of(bytes: usize) -> Option<usize> {
    if bytes <= MIN_STACK {
        Some(0)
    } else if bytes > MAX_ORDER_STACK {
        None
    } else {
        Some((bytes.next_power_of_two() / MIN_STACK).trailing_zeros() as usize)
    }
}

/// Free stacks of order `o` a CPU cache holds at most: `STACK_CACHE_BYTES / size`, at least 1.
pub const fn cache_capacity(o: usize) -> usize {
    let n = STACK_CACHE_BYTES / order_size(o);
    if n == 0 {
        1
    } else {
        n
    }
}

/// Stacks moved by a refill or a drain: half the capacity, at least 1.
const fn cache_batch(o: usize) -> usize {
    let b = cache_capacity(o) / 2;
    if b == 0 {
        1
    } else {
        b
    }
}

/// Most bytes of free stacks one CPU cache holds: `Σ cache_capacity(o) * order_size(o)` = 256 KiB.
pub const STACK_CACHE_BOUND_BYTES: usize = {
    let mut sum = 0;
    let mut o = 0;
    while o < NUM_ORDERS {
        sum += cache_capacity(o) * order_size(o);
        o += 1;
    }
    sum
};

const _: () = assert!(cache_capacity(0) <= CACHE_SLOTS);

/// Whether a request for `bytes` (with or without a guard) goes through a CPU
/// cache. The heap front can skip entering its CPU slot when it does not.
pub const fn uses_cache(bytes: usize, guard: bool) -> bool {
    !guard && bytes <= MAX_ORDER_STACK
}

/// How a stack was made, for its free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StackKind {
    /// Carved from a pool span of this order.
    Order(u8),
    /// A span of its own, starting at `base`.
    Large,
    /// A span of its own whose first `GUARD_BYTES` are a guard.
    Guarded,
    /// A block of a fine heap (a small region heap), no guard.
    Block,
}

/// A stack handed out by [`Heap::alloc_stack`](crate::Heap::alloc_stack):
/// `[base, base + size)` is the caller's until it gives the `Stack` back to
/// [`Heap::free_stack`](crate::Heap::free_stack). Stacks grow down:
/// start with the stack pointer at [`top`](Stack::top).
///
/// Leave `base` and `size` as they are; `free` checks them against the heap's
/// records and panics on a mismatch.
#[derive(Debug)]
pub struct Stack {
    /// Lowest usable byte (page aligned; aligned to `size` for pooled
    /// stacks; to 16 bytes in a fine heap, see [`Heap::is_fine`](crate::Heap::is_fine)).
    pub base: NonNull<u8>,
    /// Usable bytes (the order's size, or whole pages), guard excluded.
    pub size: usize,
    kind: StackKind,
}

// SAFETY: a `Stack` is the exclusive handle of memory owned by the heap on the
// holder's behalf; nothing in it is tied to the thread or CPU that made it, and
// the heap side of a free takes its own locks.
unsafe impl Send for Stack {}
// SAFETY: `&Stack` only reads two plain fields.
unsafe impl Sync for Stack {}

impl Stack {
    /// A stack that is a fine heap's block of `size` bytes at `base`.
    pub(crate) fn from_block(base: NonNull<u8>, size: usize) -> Stack {
        Stack {
            base,
            size,
            kind: StackKind::Block,
        }
    }

    /// One past the highest usable byte: the initial stack pointer.
    pub fn top(&self) -> *mut u8 {
        self.base.as_ptr().wrapping_add(self.size)
    }

    /// Whether the [`GUARD_BYTES`] below `base` fault on access.
    pub fn has_guard(&self) -> bool {
        self.kind == StackKind::Guarded
    }

    /// The order of a pooled stack; `None` for large and guarded stacks (which
    /// never go through a CPU cache).
    pub fn order(&self) -> Option<usize> {
        match self.kind {
            StackKind::Order(o) => Some(o as usize),
            _ => None,
        }
    }

    /// Whether `addr` lies in `[base, base + size)`.
    pub fn contains(&self, addr: usize) -> bool {
        addr.wrapping_sub(self.base.as_ptr() as usize) < self.size
    }
}

/// One CPU's free stacks, per order. Guarded by the CPU slot's exclusivity.
/// Valid when all bytes are zero (the heap allocates these with its per-CPU
/// caches, from zeroed memory).
#[repr(C)]
pub struct StackCache {
    /// Stacks in `stacks[o]`; at most `cache_capacity(o)`.
    len: [u32; NUM_ORDERS],
    /// `stacks[o][..len[o]]`: free stacks of order `o`, oldest first.
    stacks: [[*mut u8; CACHE_SLOTS]; NUM_ORDERS],
}

// SAFETY: the pointers are free stacks the cache owns; whoever holds the
// `&mut StackCache` (the CPU slot's owner) may use them from any CPU.
unsafe impl Send for StackCache {}

impl StackCache {
    /// An empty cache (the same as all-zero bytes).
    pub const fn new() -> Self {
        StackCache {
            len: [0; NUM_ORDERS],
            stacks: [[null_mut(); CACHE_SLOTS]; NUM_ORDERS],
        }
    }

    /// Free stacks of order `o` in the cache.
    pub fn len(&self, o: usize) -> usize {
        self.len[o] as usize
    }

    /// No stack of any order is cached.
    #[cfg(all(test, feature = "linux"))]
    pub fn is_empty(&self) -> bool {
        self.len.iter().all(|&n| n == 0)
    }

    /// Bytes of free stacks held; at most [`STACK_CACHE_BOUND_BYTES`].
    #[cfg(all(test, feature = "linux"))]
    pub fn cached_bytes(&self) -> usize {
        (0..NUM_ORDERS).map(|o| self.len(o) * order_size(o)).sum()
    }
}

impl Default for StackCache {
    fn default() -> Self {
        Self::new()
    }
}

/// One order's pool (Go's `stackpool[order]`).
struct Pool {
    /// Spans with a free stack (`list == Partial`).
    partial: SpanList,
    /// Spans of this order, partial or full.
    spans: usize,
    /// Stacks carved and not back in their spans (in use or in a CPU cache).
    carved: usize,
}

impl Pool {
    const fn new() -> Self {
        Pool {
            partial: SpanList::new(),
            spans: 0,
            carved: 0,
        }
    }
}

/// A point-in-time view of the stack allocator (exact when no operation is in flight).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackStats {
    /// Stacks handed out and not freed.
    pub inuse_stacks: u64,
    /// Usable bytes of those.
    pub inuse_bytes: u64,
    /// Free pooled stacks sitting in CPU caches, in bytes.
    pub cached_bytes: u64,
    /// Spans held by the order pools.
    pub pool_spans: u64,
    /// Spans of large and guarded stacks in use (one each).
    pub dedicated_spans: u64,
    /// Guarded stacks in use.
    pub guarded_stacks: u64,
    /// Spans kept for good because a guard could not be made usable again.
    pub leaked_spans: u64,
    /// Bytes taken from the page heap for stacks: pool spans, dedicated spans
    /// (guard pages included) and leaked spans (Go's `StackSys`).
    pub sys_bytes: u64,
}

/// The stack allocator: order pools over the page heap. `X` is how a waiting
/// CPU relaxes (the heap's `Cpu::Relax`). Per-CPU [`StackCache`]s are owned by
/// the caller (the heap's per-CPU caches) and lent to each call.
pub struct StackAlloc<X: RelaxStrategy> {
    pools: [Padded<Lock<Pool, X>>; NUM_ORDERS],
    /// Stacks and usable bytes handed out, pooled ones.
    pooled_inuse: AtomicUsize,
    pooled_inuse_bytes: AtomicUsize,
    /// Large and guarded stacks handed out, their usable bytes, and their spans' bytes.
    dedicated_inuse: AtomicUsize,
    dedicated_inuse_bytes: AtomicUsize,
    dedicated_span_bytes: AtomicUsize,
    guarded: AtomicUsize,
    leaked_spans: AtomicUsize,
    leaked_bytes: AtomicUsize,
}

impl<X: RelaxStrategy> Default for StackAlloc<X> {
    fn default() -> Self {
        Self::new()
    }
}

impl<X: RelaxStrategy> StackAlloc<X> {
    /// No stacks, no spans. Usable in a `static`.
    pub const fn new() -> Self {
        StackAlloc {
            pools: [const { Padded(Lock::new(Pool::new())) }; NUM_ORDERS],
            pooled_inuse: AtomicUsize::new(0),
            pooled_inuse_bytes: AtomicUsize::new(0),
            dedicated_inuse: AtomicUsize::new(0),
            dedicated_inuse_bytes: AtomicUsize::new(0),
            dedicated_span_bytes: AtomicUsize::new(0),
            guarded: AtomicUsize::new(0),
            leaked_spans: AtomicUsize::new(0),
            leaked_bytes: AtomicUsize::new(0),
        }
    }

    /// A stack of at least `bytes` usable bytes (at least [`MIN_STACK`]), with
    /// a guard below it if `guard`; `None` when the page heap is out of memory.
    ///
    /// `cache` is a CPU cache the caller has to itself (normally the current
    /// CPU's, its slot held), or `None` to go straight to the pools. Large and
    /// guarded stacks ignore it (see [`uses_cache`]).
    pub fn alloc<S: PageSource>(
        &self,
        below: &Below<'_, S, X>,
        cache: Option<&mut StackCache>,
        bytes: usize,
        guard: bool,
    ) -> Option<Stack> {
        if guard {
            return self.alloc_guarded(below, bytes);
        }
        let Some(o) = order_of(bytes) else {
            return self.alloc_large(below, bytes);
        };
        let p = match cache {
            Some(c) => self.cache_pop(below, c, o)?,
            None => {
                let mut one = [null_mut()];
                if self.pool_take(below, o, &mut one) == 0 {
                    return None;
                }
                one[0]
            }
        };
        let size = order_size(o);
        self.pooled_inuse.fetch_add(1, Ordering::Relaxed);
        self.pooled_inuse_bytes.fetch_add(size, Ordering::Relaxed);
        Some(Stack {
            base: NonNull::new(p)?,
            size,
            kind: StackKind::Order(o as u8),
        })
    }

    /// Gives `stack` back: a pooled stack into `cache` (or its pool when `None`),
    /// a large or guarded one to the page heap.
    ///
    /// # Safety
    /// `stack` came from this allocator over the same heap (`below`), and
    /// nothing runs on it or uses its memory any more. `cache`, if given, is
    /// the caller's alone for the call (normally the current CPU's, slot held).
    ///
    /// # Panics
    /// If `stack` is not a live stack of this heap (its fields changed, a foreign
    /// stack, or some double frees: see the module docs).
    pub unsafe fn free<S: PageSource>(
        &self,
        below: &Below<'_, S, X>,
        cache: Option<&mut StackCache>,
        stack: Stack,
    ) {
        match stack.kind {
            StackKind::Order(o) => {
                let o = o as usize;
                let p = stack.base.as_ptr();
                // SAFETY: a live span (see `live_span`).
                let span = unsafe { live_span(below, p).as_ref() };
                let fits = o < NUM_ORDERS
                    && stack.size == order_size(o)
                    && span.npages() == stack_pages(STACK_SPAN_BYTES, S::PAGE)
                    && span.elemsize as usize == stack.size
                    && span.nelems > 1
                    && (Addr::of(p) - span.start).is_multiple_of(stack.size);
                assert!(
                    fits,
                    "tieralloc: free of stack {p:p} ({} B): not a stack of order {o} \
                     (span {:#x}, {} pages, {} B each)",
                    stack.size,
                    span.start,
                    span.npages(),
                    span.elemsize
                );
                self.pooled_inuse.fetch_sub(1, Ordering::Relaxed);
                self.pooled_inuse_bytes
                    .fetch_sub(stack.size, Ordering::Relaxed);
                match cache {
                    Some(c) => self.cache_push(below, c, o, p),
                    None => self.pool_put(below, o, &[p]),
                }
            }
            StackKind::Block => panic!(
                "tieralloc: free of stack {:p}: a fine heap's stack, not this heap's",
                stack.base
            ),
            StackKind::Large | StackKind::Guarded => {
                let p = stack.base.as_ptr();
                let guarded = stack.kind == StackKind::Guarded;
                let g = if guarded { GUARD_BYTES } else { 0 };
                let s = live_span(below, p);
                // SAFETY: a live span (see `live_span`).
                let span = unsafe { s.as_ref() };
                let fits = span.nelems == 1
                    && span.start + g == Addr::of(p)
                    && span.npages().bytes(S::PAGE) == stack.size + g;
                assert!(
                    fits,
                    "tieralloc: free of {} stack {p:p} ({} B): span {:#x} of {} pages does not match",
                    if guarded { "guarded" } else { "large" },
                    stack.size,
                    span.start,
                    span.npages()
                );
                let span_bytes = span.npages().bytes(S::PAGE);
                self.dedicated_inuse.fetch_sub(1, Ordering::Relaxed);
                self.dedicated_inuse_bytes
                    .fetch_sub(stack.size, Ordering::Relaxed);
                self.dedicated_span_bytes
                    .fetch_sub(span_bytes, Ordering::Relaxed);
                if guarded {
                    self.guarded.fetch_sub(1, Ordering::Relaxed);
                    // SAFETY: the span start is a non-null, source-page-aligned address.
                    let gp = unsafe { NonNull::new_unchecked(span_start(s)) };
                    // SAFETY: the guard was faulted (Reserved); commit makes it
                    // Prepared, ready makes it Ready, as the page heap requires of
                    // the pages it gets back.
                    let usable = unsafe {
                        below.source.commit(gp, GUARD_BYTES).is_ok()
                            && below.source.ready(gp, GUARD_BYTES).is_ok()
                    };
                    if !usable {
                        // SAFETY: the stack's pages are Ready and the caller is
                        // done with them; the span is kept, never reused.
                        unsafe { below.source.release(stack.base, stack.size) };
                        self.leaked_spans.fetch_add(1, Ordering::Relaxed);
                        self.leaked_bytes.fetch_add(span_bytes, Ordering::Relaxed);
                        return;
                    }
                }
                // SAFETY: a live Manual span of its own, on no list, handed over
                // by the caller; every page is Ready again.
                unsafe { below.heap.lock().free_span(below.source, s) };
            }
        }
    }

    /// Gives every stack in `cache` back to the pools (empty spans then go back
    /// to the page heap): for scavenging, or when a CPU goes offline.
    ///
    /// The caller holds `cache`'s CPU slot.
    pub fn drain<S: PageSource>(&self, below: &Below<'_, S, X>, cache: &mut StackCache) {
        for o in 0..NUM_ORDERS {
            let n = cache.len(o);
            if n > 0 {
                self.pool_put(below, o, &cache.stacks[o][..n]);
                cache.len[o] = 0;
            }
        }
    }

    /// Counters; `cached_bytes` is derived, so exact only at quiescence.
    pub fn stats(&self) -> StackStats {
        let (mut spans, mut carved_bytes) = (0, 0);
        for (o, p) in self.pools.iter().enumerate() {
            let p = p.0.lock();
            spans += p.spans;
            carved_bytes += p.carved * order_size(o);
        }
        let pooled_bytes = self.pooled_inuse_bytes.load(Ordering::Relaxed);
        let r = |a: &AtomicUsize| a.load(Ordering::Relaxed) as u64;
        StackStats {
            inuse_stacks: r(&self.pooled_inuse) + r(&self.dedicated_inuse),
            inuse_bytes: (pooled_bytes as u64) + r(&self.dedicated_inuse_bytes),
            cached_bytes: carved_bytes.saturating_sub(pooled_bytes) as u64,
            pool_spans: spans as u64,
            dedicated_spans: r(&self.dedicated_inuse),
            guarded_stacks: r(&self.guarded),
            leaked_spans: r(&self.leaked_spans),
            sys_bytes: (spans * STACK_SPAN_BYTES) as u64
                + r(&self.dedicated_span_bytes)
                + r(&self.leaked_bytes),
        }
    }

    /// Takes every pool lock and keeps it (for `fork`: the heap's `lock_all`
    /// takes them after the CPU slots and central locks, before the page heap).
    pub fn lock_all(&self) {
        for p in &self.pools {
            core::mem::forget(p.0.lock());
        }
    }

    /// Releases what [`lock_all`](Self::lock_all) took.
    ///
    /// # Safety
    /// The calling thread (or, in a forked child, its parent thread) called `lock_all`.
    pub unsafe fn unlock_all(&self) {
        for p in &self.pools {
            // SAFETY: taken and forgotten by `lock_all` (the caller's promise).
            unsafe { p.0.force_unlock() };
        }
    }

    /// Walks every pool and panics with a message on a broken invariant.
    pub fn check_invariants(&self) {
        for (o, p) in self.pools.iter().enumerate() {
            let p = p.0.lock();
            assert!(
                p.partial.len() <= p.spans,
                "stack pool {o}: more partial spans than spans"
            );
            assert!(
                p.carved <= p.spans * (STACK_SPAN_BYTES / order_size(o)),
                "stack pool {o}: carved count"
            );
            for s in p.partial.iter() {
                // SAFETY: spans on the list are live under the pool lock.
                let span = unsafe { &*s };
                assert!(
                    span.state == SpanState::Manual
                        && span.list == ListId::Partial
                        && span.elemsize as usize == order_size(o)
                        && span.alloc_count > 0
                        && !span.is_full(),
                    "stack pool {o}: bad partial span {:#x}",
                    span.start
                );
                span.check_invariants();
            }
        }
    }

    // ------------------------------------------------------------ internals

    /// Pops a stack of order `o` from `c`, refilling it to half from the pool when empty.
    fn cache_pop<S: PageSource>(
        &self,
        below: &Below<'_, S, X>,
        c: &mut StackCache,
        o: usize,
    ) -> Option<*mut u8> {
        if c.len[o] == 0 {
            let n = self.pool_take(below, o, &mut c.stacks[o][..cache_batch(o)]);
            c.len[o] = n as u32;
            if n == 0 {
                return None;
            }
        }
        c.len[o] -= 1;
        Some(c.stacks[o][c.len[o] as usize])
    }

    /// Pushes a free stack of order `o` into `c`, draining the oldest ones to
    /// half capacity first when it is full.
    fn cache_push<S: PageSource>(
        &self,
        below: &Below<'_, S, X>,
        c: &mut StackCache,
        o: usize,
        p: *mut u8,
    ) {
        let n = c.len(o);
        assert!(
            !c.stacks[o][..n].contains(&p),
            "tieralloc: stack {p:p} freed twice (already in this CPU's stack cache)"
        );
        let cap = cache_capacity(o);
        let n = if n >= cap {
            let k = n - cache_batch(o).min(cap - 1);
            self.pool_put(below, o, &c.stacks[o][..k]);
            c.stacks[o].copy_within(k..n, 0);
            n - k
        } else {
            n
        };
        c.stacks[o][n] = p;
        c.len[o] = (n + 1) as u32;
    }

    /// Fills `out` with free stacks of order `o`, lowest first, taking spans from
    /// the page heap as needed; returns how many (fewer only when the heap is out
    /// of memory).
    fn pool_take<S: PageSource>(
        &self,
        below: &Below<'_, S, X>,
        o: usize,
        out: &mut [*mut u8],
    ) -> usize {
        let size = order_size(o);
        let mut pool = self.pools[o].0.lock();
        let mut got = 0;
        while got < out.len() {
            let mut s = pool.partial.first();
            if s.is_null() {
                let Some(new) = below.heap.lock().alloc_span(
                    below.source,
                    below.map,
                    const { stack_pages(STACK_SPAN_BYTES, S::PAGE) },
                    const { stack_pages(STACK_SPAN_BYTES, S::PAGE).get() },
                    SpanState::Manual,
                ) else {
                    break;
                };
                s = new.as_ptr();
                // SAFETY: a fresh span, on no list, ours under the pool lock.
                unsafe {
                    init_pool_span(&mut *s, size);
                    (*s).list = ListId::Partial;
                    pool.partial.push(s);
                }
                pool.spans += 1;
            }
            // SAFETY: spans on the list are live and guarded by the pool lock.
            let span = unsafe { &mut *s };
            while got < out.len() {
                let Some(idx) = span.take() else { break };
                out[got] = (span.start + idx * size).as_ptr();
                got += 1;
            }
            if span.is_full() {
                // SAFETY: `s` is on the partial list.
                unsafe { pool.partial.remove(s) };
                span.list = ListId::Full;
            }
        }
        pool.carved += got;
        got
    }

    /// Returns free stacks of order `o` to their spans; a span that empties
    /// goes back to the page heap.
    fn pool_put<S: PageSource>(&self, below: &Below<'_, S, X>, o: usize, stacks: &[*mut u8]) {
        let size = order_size(o);
        let mut pool = self.pools[o].0.lock();
        for &p in stacks {
            let s = below.map.lookup::<S>(Addr::of(p));
            // SAFETY: non-null page-map entries are live spans.
            let span = match unsafe { s.as_mut() } {
                Some(span)
                    if span.state == SpanState::Manual
                        && span.elemsize as usize == size
                        && span.nelems > 1 =>
                {
                    span
                }
                _ => panic!(
                    "tieralloc: stack {p:p} of order {o} is not in a stack span of this heap"
                ),
            };
            let idx = (Addr::of(p) - span.start) / size;
            let was_full = span.is_full();
            assert!(
                span.put(idx),
                "tieralloc: stack {p:p} (span {:#x}, order {o}) freed twice",
                span.start
            );
            pool.carved -= 1;
            // SAFETY: the span is on the list its `list` field names, under the pool lock.
            unsafe {
                if was_full {
                    span.list = ListId::Partial;
                    pool.partial.push(s);
                }
                if span.alloc_count == 0 {
                    pool.partial.remove(s);
                    span.list = ListId::None;
                    pool.spans -= 1;
                    below
                        .heap
                        .lock()
                        .free_span(below.source, NonNull::new_unchecked(s));
                }
            }
        }
    }

    /// A large stack: `bytes` rounded up to whole pages, a span of its own.
    fn alloc_large<S: PageSource>(&self, below: &Below<'_, S, X>, bytes: usize) -> Option<Stack> {
        let size = bytes.checked_next_multiple_of(MIN_STACK)?;
        let s = below.heap.lock().alloc_span(
            below.source,
            below.map,
            stack_pages(size, S::PAGE),
            1,
            SpanState::Manual,
        )?;
        self.dedicated_inuse.fetch_add(1, Ordering::Relaxed);
        self.dedicated_inuse_bytes
            .fetch_add(size, Ordering::Relaxed);
        self.dedicated_span_bytes.fetch_add(size, Ordering::Relaxed);
        Some(Stack {
            base: NonNull::new(span_start(s))?,
            size,
            kind: StackKind::Large,
        })
    }

    /// A guarded stack: `bytes` rounded up to whole pages (at least
    /// `MIN_STACK`) above a faulted page, a span of its own.
    fn alloc_guarded<S: PageSource>(&self, below: &Below<'_, S, X>, bytes: usize) -> Option<Stack> {
        let size = bytes.max(MIN_STACK).checked_next_multiple_of(MIN_STACK)?;
        let span_bytes = size.checked_add(GUARD_BYTES)?;
        let s = below.heap.lock().alloc_span(
            below.source,
            below.map,
            stack_pages(span_bytes, S::PAGE),
            1,
            SpanState::Manual,
        )?;
        let start = span_start(s);
        // SAFETY: the span's pages are Ready and ours; GUARD_BYTES is a whole
        // number of source pages (PAGE_SIZE divides PAGE_BYTES); nothing will
        // access the guard until `free` makes it Ready again.
        unsafe {
            below
                .source
                .fault(NonNull::new_unchecked(start), GUARD_BYTES)
        };
        self.dedicated_inuse.fetch_add(1, Ordering::Relaxed);
        self.dedicated_inuse_bytes
            .fetch_add(size, Ordering::Relaxed);
        self.dedicated_span_bytes
            .fetch_add(span_bytes, Ordering::Relaxed);
        self.guarded.fetch_add(1, Ordering::Relaxed);
        Some(Stack {
            base: NonNull::new(start.wrapping_add(GUARD_BYTES))?,
            size,
            kind: StackKind::Guarded,
        })
    }
}

/// First byte of a span as a pointer.
fn span_start(s: NonNull<Span>) -> *mut u8 {
    // SAFETY: a live span record (the caller's).
    unsafe { (*s.as_ptr()).start.as_ptr() }
}

/// Sets a fresh Manual span up as a pool span of `size`-byte stacks.
fn init_pool_span(span: &mut Span, size: usize) {
    span.init_pool(size, STACK_SPAN_BYTES / size);
}

/// The live Manual span holding `p`; panics with the address otherwise.
fn live_span<S: PageSource, X>(below: &Below<'_, S, X>, p: *mut u8) -> NonNull<Span> {
    let s = below.map.lookup::<S>(Addr::of(p));
    // SAFETY: non-null page-map entries are live spans; the fields read here
    // are set before the span is published and do not change while it lives.
    match unsafe { s.as_ref() } {
        // SAFETY: `s` is non-null in this arm.
        Some(span) if span.state == SpanState::Manual => unsafe { NonNull::new_unchecked(s) },
        Some(span) => panic!("tieralloc: free of stack {p:p}: span {:#x} is {:?}, not a stack", span.start, span.state),
        None => panic!("tieralloc: free of stack {p:p}: not a live stack of this heap (double free or foreign pointer)"),
    }
}

#[cfg(all(test, feature = "linux"))]
mod tests {
    use super::*;
    use crate::pageheap::{HeapLock, PageHeap, PageMap};
    use crate::source::MmapSource;
    use crate::testing::in_child;
    use core::ptr::{read_volatile, write_volatile};
    use spin::relax::Spin;
    use std::boxed::Box;
    use std::sync::{Arc, Mutex};
    use std::vec::Vec;

    /// A page heap over mmap, as the heap front has it.
    struct World {
        source: MmapSource,
        map: Box<PageMap>,
        heap: Box<HeapLock<Spin>>,
        stacks: StackAlloc<Spin>,
    }

    impl World {
        fn new() -> World {
            World {
                source: MmapSource::with_hint(0),
                map: Box::new(PageMap::new()),
                heap: Box::new(Lock::new(PageHeap::new())),
                stacks: StackAlloc::new(),
            }
        }
        fn below(&self) -> Below<'_, MmapSource, Spin> {
            Below {
                source: &self.source,
                map: &self.map,
                heap: &self.heap,
                #[cfg(feature = "hardened")]
                secret: None,
            }
        }
        fn alloc(&self, cache: Option<&mut StackCache>, bytes: usize, guard: bool) -> Stack {
            self.stacks
                .alloc(&self.below(), cache, bytes, guard)
                .expect("stack")
        }
        fn free(&self, cache: Option<&mut StackCache>, s: Stack) {
            // SAFETY: callers pass a stack this world's `alloc` gave them and stop using it; the
            // double-free tests pass a stale copy on purpose, which `free` panics on before use.
            unsafe { self.stacks.free(&self.below(), cache, s) }
        }
        fn inuse(&self) -> u64 {
            self.heap.lock().stats(crate::units::PageSize::GO).inuse
        }
        fn check(&self) {
            self.stacks.check_invariants();
            self.heap.lock().check_invariants();
        }
    }

    /// A cache as the heap makes them: from zeroed memory.
    fn zeroed_cache() -> Box<StackCache> {
        let layout = std::alloc::Layout::new::<StackCache>();
        // SAFETY: non-zero size; all-zero bytes are a valid empty cache
        // (documented), and the box takes the allocation with its layout.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!p.is_null());
        // SAFETY: `p` is non-null, zeroed and of `StackCache`'s layout: a valid empty cache.
        let c = unsafe { Box::from_raw(p.cast::<StackCache>()) };
        assert!(c.is_empty());
        c
    }

    /// Writes `tag` over the whole stack (as u64 words).
    fn fill(s: &Stack, tag: u64) {
        let p = s.base.as_ptr().cast::<u64>();
        for i in 0..s.size / 8 {
            // SAFETY: `s` is a live stack of `s.size` bytes, 8-aligned, and `i < s.size / 8`.
            unsafe { write_volatile(p.add(i), tag ^ i as u64) };
        }
    }

    fn check_fill(s: &Stack, tag: u64) {
        let p = s.base.as_ptr().cast::<u64>();
        for i in (0..s.size / 8).step_by(61).chain([s.size / 8 - 1]) {
            assert_eq!(
                // SAFETY: as in `fill`: `s` is live, 8-aligned, and `i < s.size / 8`.
                unsafe { read_volatile(p.add(i)) },
                tag ^ i as u64,
                "stack {:p} overwritten at word {i}",
                s.base
            );
        }
    }

    use crate::testing::Rng;

    #[test]
    fn orders_and_bounds() {
        assert_eq!(MIN_STACK, 8192);
        assert_eq!(MAX_ORDER_STACK, 65536);
        assert_eq!(order_of(0), Some(0));
        assert_eq!(order_of(1), Some(0));
        assert_eq!(order_of(8192), Some(0));
        assert_eq!(order_of(8193), Some(1));
        assert_eq!(order_of(16384), Some(1));
        assert_eq!(order_of(20000), Some(2));
        assert_eq!(order_of(32768), Some(2));
        assert_eq!(order_of(65536), Some(3));
        assert_eq!(order_of(65537), None);
        assert_eq!([0, 1, 2, 3].map(cache_capacity), [8, 4, 2, 1]);
        assert_eq!(STACK_CACHE_BOUND_BYTES, 256 << 10);
        assert!(uses_cache(65536, false) && !uses_cache(65537, false) && !uses_cache(8192, true));
    }

    #[test]
    fn many_stacks_every_order_across_caches() {
        let w = World::new();
        let mut caches: Vec<Box<StackCache>> = (0..4).map(|_| zeroed_cache()).collect();
        let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
        let sizes = [1, 4096, 8192, 8193, 16384, 20000, 32768, 40000, 65536];
        let mut live: Vec<(Stack, u64)> = Vec::new();
        for i in 0..600u64 {
            let bytes = sizes[rng.below(sizes.len())];
            let c = rng.below(caches.len());
            let s = w.alloc(Some(&mut caches[c]), bytes, false);
            assert!(s.size >= bytes.max(MIN_STACK));
            assert_eq!(s.size, order_size(order_of(bytes).unwrap()));
            assert_eq!(
                s.base.as_ptr() as usize % s.size,
                0,
                "pooled stacks are aligned to their size"
            );
            assert!(!s.has_guard());
            assert_eq!(s.top() as usize, s.base.as_ptr() as usize + s.size);
            fill(&s, i << 32);
            live.push((s, i << 32));
        }
        // No two stacks overlap.
        let mut ranges: Vec<(usize, usize)> = live
            .iter()
            .map(|(s, _)| (s.base.as_ptr() as usize, s.size))
            .collect();
        ranges.sort();
        for p in ranges.windows(2) {
            assert!(
                p[0].0 + p[0].1 <= p[1].0,
                "stacks {:#x} and {:#x} overlap",
                p[0].0,
                p[1].0
            );
        }
        let st = w.stacks.stats();
        assert_eq!(st.inuse_stacks, 600);
        assert_eq!(
            st.inuse_bytes,
            live.iter().map(|(s, _)| s.size as u64).sum::<u64>()
        );
        assert_eq!(st.dedicated_spans, 0);
        assert_eq!(w.inuse(), st.pool_spans * STACK_SPAN_BYTES as u64);
        w.check();

        // Free in a shuffled order, each from a random cache (or none).
        for i in (1..live.len()).rev() {
            live.swap(i, rng.below(i + 1));
        }
        for (n, (s, tag)) in live.into_iter().enumerate() {
            check_fill(&s, tag);
            let c = rng.below(caches.len() + 1);
            if c == caches.len() {
                w.free(None, s);
            } else {
                w.free(Some(&mut caches[c]), s);
            }
            for c in &caches {
                assert!(c.cached_bytes() <= STACK_CACHE_BOUND_BYTES);
                for o in 0..NUM_ORDERS {
                    assert!(c.len(o) <= cache_capacity(o));
                }
            }
            if n % 100 == 0 {
                w.check();
            }
        }
        let st = w.stacks.stats();
        assert_eq!((st.inuse_stacks, st.inuse_bytes), (0, 0));
        let cached: usize = caches.iter().map(|c| c.cached_bytes()).sum();
        assert_eq!(st.cached_bytes, cached as u64);
        assert!(cached > 0);
        // Stacks in caches are reused before the pools are touched.
        let s = w.alloc(Some(&mut caches[0]), 8192, false);
        w.free(Some(&mut caches[0]), s);

        for c in caches.iter_mut() {
            w.stacks.drain(&w.below(), c);
            assert!(c.is_empty());
        }
        let st = w.stacks.stats();
        assert_eq!(st, StackStats::default(), "everything went back");
        assert_eq!(w.inuse(), 0, "empty spans went back to the page heap");
        w.check();
    }

    #[test]
    fn empty_span_goes_back_at_once() {
        let w = World::new();
        let a = w.alloc(None, 10_000, false);
        assert_eq!(a.order(), Some(1));
        assert_eq!(w.stacks.stats().pool_spans, 1);
        assert_eq!(w.inuse(), STACK_SPAN_BYTES as u64);
        // A whole span's worth of order 3 stacks, then one more: a second span.
        let b: Vec<Stack> = (0..STACK_SPAN_BYTES / MAX_ORDER_STACK + 1)
            .map(|_| w.alloc(None, 65536, false))
            .collect();
        assert_eq!(w.stacks.stats().pool_spans, 3);
        w.free(None, a);
        assert_eq!(w.stacks.stats().pool_spans, 2);
        assert_eq!(w.inuse(), 2 * STACK_SPAN_BYTES as u64);
        for s in b {
            w.free(None, s);
        }
        assert_eq!(w.stacks.stats().pool_spans, 0);
        assert_eq!(w.inuse(), 0);
        w.check();
    }

    #[test]
    fn cache_refills_and_drains_by_halves() {
        let w = World::new();
        let mut c = zeroed_cache();
        let a = w.alloc(Some(&mut c), 8192, false);
        // The refill took half the capacity, one of which was handed out.
        assert_eq!(c.len(0), cache_batch(0) - 1);
        let more: Vec<Stack> = (0..20)
            .map(|_| w.alloc(Some(&mut c), 8192, false))
            .collect();
        w.free(Some(&mut c), a);
        let mut peak = 0;
        for s in more {
            w.free(Some(&mut c), s);
            peak = peak.max(c.len(0));
            assert!(c.len(0) <= cache_capacity(0));
        }
        assert_eq!(peak, cache_capacity(0));
        // Order 3 holds one stack: a second free drains the first.
        let x = w.alloc(Some(&mut c), 65536, false);
        let y = w.alloc(Some(&mut c), 65536, false);
        w.free(Some(&mut c), x);
        w.free(Some(&mut c), y);
        assert_eq!(c.len(3), 1);
        w.stacks.drain(&w.below(), &mut c);
        assert_eq!(w.inuse(), 0);
    }

    #[test]
    fn large_stacks() {
        let w = World::new();
        let a = w.alloc(None, 100_000, false);
        assert_eq!(a.size, 13 * PAGE_BYTES);
        assert_eq!(a.order(), None);
        assert_eq!(a.base.as_ptr() as usize % PAGE_BYTES, 0);
        let mut c = zeroed_cache();
        let b = w.alloc(Some(&mut c), 1 << 20, false);
        assert!(c.is_empty(), "large stacks bypass the cache");
        fill(&a, 1);
        fill(&b, 2);
        check_fill(&a, 1);
        let st = w.stacks.stats();
        assert_eq!(
            (st.dedicated_spans, st.inuse_bytes, st.sys_bytes),
            (2, (13 << 13) + (1 << 20), (13 << 13) + (1 << 20))
        );
        assert_eq!(w.inuse(), st.sys_bytes);
        w.free(Some(&mut c), a);
        w.free(None, b);
        assert_eq!(w.stacks.stats(), StackStats::default());
        assert_eq!(w.inuse(), 0);
        w.check();
    }

    /// Runs `f` in a forked child and returns its raw wait status (as in
    /// `source::mmap`'s tests: the child only touches memory and `_exit`s).

    #[test]
    fn guarded_stack_faults_below_base() {
        let w = World::new();
        let mut c = zeroed_cache();
        let s = w.alloc(Some(&mut c), 100_000, true);
        assert!(c.is_empty(), "guarded stacks bypass the cache");
        assert!(s.has_guard());
        assert_eq!(s.order(), None);
        assert_eq!(s.size, 13 * PAGE_BYTES);
        fill(&s, 7);
        check_fill(&s, 7);
        let base = s.base.as_ptr() as usize;
        let top = s.top() as usize;
        // SAFETY: the first and last bytes of the live, Ready stack, written in the child's copy.
        let st = in_child(|| unsafe {
            write_volatile(base as *mut u8, 1);
            write_volatile((top - 1) as *mut u8, 1);
        });
        assert!(st.exited_ok(), "status {:#x}", st.status());
        // One byte below the stack, and the bottom of the guard.
        // SAFETY: deliberately faults: `base - 1` is in the guard (PROT_NONE), so the child
        // dies of SIGSEGV before anything is written, which is what the test checks.
        let st = in_child(|| unsafe { write_volatile((base - 1) as *mut u8, 1) });
        assert!(st.segfaulted(), "status {:#x}", st.status());
        // SAFETY: as above: the guard's lowest byte, also PROT_NONE, faults in the child.
        let st = in_child(|| unsafe {
            read_volatile((base - GUARD_BYTES) as *const u8);
        });
        assert!(st.segfaulted(), "status {:#x}", st.status());
        let stats = w.stacks.stats();
        assert_eq!(
            (stats.guarded_stacks, stats.dedicated_spans, stats.sys_bytes),
            (1, 1, (14 * PAGE_BYTES) as u64)
        );
        assert_eq!(w.inuse(), stats.sys_bytes);

        // Freed: the guard is usable again, and the pages are reused first fit.
        w.free(Some(&mut c), s);
        assert_eq!(w.inuse(), 0);
        assert_eq!(w.stacks.stats(), StackStats::default());
        let again = w.alloc(None, 14 * PAGE_BYTES, false);
        assert_eq!(again.order(), None);
        assert_eq!(
            again.base.as_ptr() as usize,
            base - GUARD_BYTES,
            "the span's pages are reused"
        );
        let a = again.base.as_ptr() as usize;
        // SAFETY: `a` is the base of the live stack `again`, Ready; written in the child's copy.
        let st = in_child(|| unsafe { write_volatile(a as *mut u8, 1) });
        assert!(
            st.exited_ok(),
            "the former guard page must be Ready again: status {:#x}",
            st.status()
        );
        fill(&again, 9);
        w.free(None, again);
        // Tiny requests still get MIN_STACK above the guard.
        let t = w.alloc(None, 1, true);
        assert_eq!(t.size, MIN_STACK);
        w.free(None, t);
        assert_eq!(w.inuse(), 0);
        w.check();
    }

    #[test]
    #[should_panic(expected = "freed twice")]
    fn double_free_into_one_cache_panics() {
        let w = World::new();
        let mut c = zeroed_cache();
        let s = w.alloc(Some(&mut c), 8192, false);
        let twin = Stack {
            base: s.base,
            size: s.size,
            kind: s.kind,
        };
        w.free(Some(&mut c), s);
        w.free(Some(&mut c), twin);
    }

    #[test]
    #[should_panic(expected = "freed twice")]
    fn double_free_into_pool_panics() {
        let w = World::new();
        let keep = w.alloc(None, 8192, false); // keeps the span alive
        let s = w.alloc(None, 8192, false);
        let twin = Stack {
            base: s.base,
            size: s.size,
            kind: s.kind,
        };
        w.free(None, s);
        w.free(None, twin);
        unreachable!("{keep:?}");
    }

    #[test]
    #[should_panic(expected = "not a live stack")]
    fn double_free_of_large_panics() {
        let w = World::new();
        let s = w.alloc(None, 1 << 20, false);
        let twin = Stack {
            base: s.base,
            size: s.size,
            kind: s.kind,
        };
        w.free(None, s);
        w.free(None, twin);
    }

    #[test]
    #[should_panic(expected = "not a stack of order")]
    fn changed_size_panics() {
        let w = World::new();
        let mut s = w.alloc(None, 8192, false);
        s.size = 16384;
        w.free(None, s);
    }

    #[test]
    fn lock_all_then_unlock_all() {
        let w = World::new();
        w.stacks.lock_all();
        assert!(w.stacks.pools.iter().all(|p| p.0.is_locked()));
        // SAFETY: this thread called `lock_all` just above.
        unsafe { w.stacks.unlock_all() };
        let s = w.alloc(None, 8192, false);
        w.free(None, s);
        assert_eq!(w.inuse(), 0);
    }

    #[test]
    fn threads_exchange_stacks() {
        let w = Arc::new(World::new());
        let shared: Arc<Mutex<Vec<(Stack, u64)>>> = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (w, shared) = (w.clone(), shared.clone());
                std::thread::spawn(move || {
                    let mut cache = zeroed_cache();
                    let mut rng = Rng::new(0x1234_5678 + t * 0x9e37_79b9);
                    let sizes = [8192, 12000, 32768, 65536, 100_000];
                    for i in 0..3000u64 {
                        if rng.below(2) == 0 {
                            let bytes = sizes[rng.below(sizes.len())];
                            let guard = rng.below(50) == 0;
                            let s = w.alloc(Some(&mut cache), bytes, guard);
                            let tag = (t << 56) | (i << 8);
                            fill(&s, tag);
                            shared.lock().unwrap().push((s, tag));
                        } else {
                            let got = {
                                let mut v = shared.lock().unwrap();
                                let n = v.len();
                                if n == 0 {
                                    None
                                } else {
                                    Some(v.swap_remove(rng.below(n)))
                                }
                            };
                            if let Some((s, tag)) = got {
                                check_fill(&s, tag);
                                w.free(Some(&mut cache), s);
                            }
                        }
                        assert!(cache.cached_bytes() <= STACK_CACHE_BOUND_BYTES);
                    }
                    cache
                })
            })
            .collect();
        let mut caches: Vec<Box<StackCache>> =
            threads.into_iter().map(|h| h.join().unwrap()).collect();
        for (s, tag) in shared.lock().unwrap().drain(..) {
            check_fill(&s, tag);
            w.free(None, s);
        }
        for c in caches.iter_mut() {
            w.stacks.drain(&w.below(), c);
        }
        assert_eq!(w.stacks.stats(), StackStats::default());
        assert_eq!(w.inuse(), 0);
        w.check();
    }
}
