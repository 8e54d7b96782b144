//! The central tier (Go's `mcentral`, with tcmalloc's transfer cache).
//! See `lib.rs` for the overview.
//!
//! One [`Central`] per size class, each behind its own lock. It holds:
//! * a **transfer cache**: free objects flushed by the CPUs and not yet
//!   returned to their spans, in one **shard** per CPU (modulo the shards).
//!   A refill takes its own CPU's shard first, the objects this CPU flushed
//!   last, whose lines it likely still holds; then, except for the classes
//!   under a line (whose objects belong to their CPU), the other shards:
//!   objects move CPU → CPU without touching span bitmaps, but only when the
//!   refilling CPU has none of its own (tcmalloc's sharded transfer cache,
//!   per CPU rather than per cache domain);
//! * **partial** spans (some object free) and **full** spans (every object
//!   handed out). Refills carve the lowest free objects out of the first partial
//!   span with the span's 64-bit alloc cache; when none is left a new span comes
//!   from the page heap.
//!
//! A span becomes partial on its first object returned. When its last object is
//! returned it goes back to the page heap — except one **empty span** per class,
//! kept on the partial list, so that a program that frees and re-allocates a
//! batch does not move a span to the page heap and back every time (the kept
//! span costs at most one span's pages per class; `scavenge` returns it).
//!
//! Invariants (guarded by this class's lock):
//! * every span on `partial` has `0 < free objects` and `list == Partial`; every
//!   span on `full` has no free object and `list == Full`;
//! * the first `lens[k]` slots of shard `k` are free objects of this class
//!   whose alloc bits are still set; `ntransfer`, their sum over the shards, is
//!   at most `cap`, the capacity the heap's set-up gave the class
//!   (`heap::state::transfer_capacity`), so every shard has `cap` slots and
//!   the cache as a whole holds no more than an unsharded one would;
//! * `empty` is null or the one span on `partial` with no object allocated.
//!
//! Lock order: a CPU slot, then this lock, then the page heap lock.

use core::ptr::{null_mut, NonNull};

use crate::pageheap::Below;
use crate::sizeclass::SizeClass;
use crate::source::{PageSource, SourcePage};
use crate::span::{ListId, Span, SpanList, SpanState};
use crate::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use crate::sync::RelaxStrategy;
use crate::units::{Addr, Owner};

/// Bytes of free objects a class's transfer cache is sized for: a batch of
/// this size freed on one CPU and re-allocated (on any CPU) never touches the
/// span bitmaps. Across the 67 classes this bounds the transfer caches to
/// about 4.3 MiB of free objects, which `scavenge` returns.
pub const TRANSFER_BYTES: usize = 64 * 1024;

/// Slots of each class's transfer cache (the larger classes use fewer).
pub const TRANSFER_SLOTS: usize = 1024;

/// Partial spans a refill of a line-sharing class looks through for one its
/// CPU may carve, before it takes a new span.
pub const OWNER_SCAN: usize = 8;

/// Objects a `Remote` list holds before the freer that grew it past this
/// returns them to their spans.
pub const REMOTE_MAX: usize = 256;

/// Objects of a line-sharing class freed on a CPU other than their span's
/// owner, waiting to go back to their spans: a lock-free stack linked through
/// the objects' first words. Frees push (one compare-and-swap, no lock);
/// whoever holds the class's central lock takes the whole list at once, so
/// no pop ever races a push (no ABA).
pub struct Remote {
    head: AtomicPtr<u8>,
    len: AtomicUsize,
}

impl Remote {
    pub const fn new() -> Self {
        Remote {
            head: AtomicPtr::new(null_mut()),
            len: AtomicUsize::new(0),
        }
    }

    /// Pushes the free object `p`; returns the list's length after.
    ///
    /// # Safety
    /// `p` is a free object of at least 8 bytes, 8-aligned, owned by no one
    /// else until the list is taken.
    #[inline]
    pub unsafe fn push(&self, p: *mut u8) -> usize {
        // Counted before it is linked, so a taker's subtraction never runs
        // ahead of the count: `len` is at least the objects on the list.
        let len = self.len.fetch_add(1, Ordering::Relaxed) + 1;
        let mut h = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: the object is ours and large enough for a link (caller).
            unsafe { p.cast::<*mut u8>().write(h) };
            match self
                .head
                .compare_exchange_weak(h, p, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => h = now,
            }
        }
        len
    }

    /// Objects on the list or being pushed (a snapshot).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether the list is empty (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.head.load(Ordering::Relaxed).is_null()
    }
}

impl Default for Remote {
    fn default() -> Self {
        Self::new()
    }
}

/// Fewest objects a transfer cache holds (for the largest classes, where
/// `TRANSFER_BYTES` is two objects or fewer). It is at least four batches of
/// the per-CPU tier for every class (a unit test checks it), so a transfer
/// cache always takes a whole flush.
pub const TRANSFER_MIN: usize = 4;

/// One size class's central list.
pub struct Central {
    partial: SpanList,
    full: SpanList,
    /// `shards` shards of `cap` slots each, from the heap's set-up
    /// ([`Central::set_transfer`]); null and 0 before it.
    transfer: *mut *mut u8,
    /// Objects on each shard.
    lens: *mut usize,
    shards: usize,
    cap: usize,
    ntransfer: usize,
    /// Whether a refill takes from other CPUs' shards (not for the classes
    /// whose objects share lines, each of which belongs to one CPU).
    steal: bool,
    /// The kept empty span (on `partial`), or null.
    empty: *mut Span,
    /// Spans taken from and given back to the page heap.
    pub spans_made: u64,
    pub spans_freed: u64,
}

// SAFETY: the pointers are to spans and free objects owned by this heap; the
// central lock serialises all access.
unsafe impl Send for Central {}

impl Central {
    pub const fn new() -> Self {
        Central {
            partial: SpanList::new(),
            full: SpanList::new(),
            transfer: null_mut(),
            lens: null_mut(),
            shards: 0,
            cap: 0,
            ntransfer: 0,
            steal: false,
            empty: null_mut(),
            spans_made: 0,
            spans_freed: 0,
        }
    }

    /// Free objects sitting in the transfer cache.
    pub fn transfer_len(&self) -> usize {
        self.ntransfer
    }

    /// Whether the transfer cache holds `p`.
    /// (Feature `hardened`'s slow search.)
    #[cfg(feature = "hardened")]
    pub fn transfer_holds(&mut self, p: *mut u8) -> bool {
        (0..self.shards).any(|k| {
            let (len, slots) = self.shard(k);
            slots[..*len].contains(&p)
        })
    }

    /// Whether `remote` (this class's remote list) holds `p`. Holding this
    /// central's lock is what makes walking the list safe: no one takes it
    /// meanwhile, and a push links its object before publishing it.
    /// (Feature `hardened`'s slow search.)
    #[cfg(feature = "hardened")]
    pub fn remote_holds(&mut self, remote: &Remote, p: *mut u8) -> bool {
        let mut q = remote.head.load(Ordering::Acquire);
        while !q.is_null() {
            if q == p {
                return true;
            }
            // SAFETY: an object on the list, linked by `Remote::push` before
            // it was published; the list stays whole while we hold the lock.
            q = unsafe { q.cast::<*mut u8>().read() };
        }
        false
    }

    /// Words of a transfer cache of `cap` objects over `shards` shards:
    /// what [`Central::set_transfer`] is given.
    pub const fn transfer_words(cap: usize, shards: usize) -> usize {
        if cap == 0 {
            0
        } else {
            shards * (1 + cap)
        }
    }

    /// Gives the transfer cache its words: `shards` shards (at least one)
    /// of `cap` objects, which a refill takes from other shards than its
    /// own if `steal`.
    ///
    /// # Safety
    /// `words` points at [`Central::transfer_words`]`(cap, shards)`
    /// word-aligned words, the first `shards` of them zero, that stay this
    /// central's alone for as long as the heap lives; the transfer cache is
    /// empty.
    pub unsafe fn set_transfer(
        &mut self,
        words: *mut usize,
        cap: usize,
        shards: usize,
        steal: bool,
    ) {
        debug_assert!(self.ntransfer == 0 && (cap == 0 || (!words.is_null() && shards > 0)));
        if cap == 0 {
            return;
        }
        self.lens = words;
        // SAFETY: the shards' slots follow their lengths in the caller's words.
        self.transfer = unsafe { words.add(shards) }.cast();
        self.shards = shards;
        self.cap = cap;
        self.steal = steal;
    }

    /// Shard `k`'s length and slots (`k < shards`).
    fn shard(&mut self, k: usize) -> (&mut usize, &mut [*mut u8]) {
        debug_assert!(k < self.shards);
        // SAFETY: `set_transfer`'s contract: `shards` lengths, then `shards`
        // runs of `cap` slots, ours, behind our lock; `k < shards`.
        unsafe {
            (
                &mut *self.lens.add(k),
                core::slice::from_raw_parts_mut(self.transfer.add(k * self.cap), self.cap),
            )
        }
    }

    /// Objects on shard `k` (`k < shards`).
    fn shard_len(&self, k: usize) -> usize {
        debug_assert!(k < self.shards);
        // SAFETY: as in `shard`, read only.
        unsafe { *self.lens.add(k) }
    }

    /// The shard of CPU `cpu`.
    fn shard_of(&self, cpu: usize) -> usize {
        cpu % self.shards
    }

    /// Moves up to `out.len()` objects off the top of shard `k` into `out`;
    /// how many.
    fn take_shard(&mut self, k: usize, out: &mut [*mut u8]) -> usize {
        let (len, slots) = self.shard(k);
        let m = (*len).min(out.len());
        out[..m].copy_from_slice(&slots[*len - m..*len]);
        *len -= m;
        self.ntransfer -= m;
        m
    }

    /// Fills `out` with up to `out.len()` free objects of `class`; returns how
    /// many. Fewer than asked (possibly 0) only when the source is exhausted.
    ///
    /// The objects are for CPU `cpu`'s cache. For a class whose objects
    /// share lines they come only from that CPU's own transfer shard, from
    /// spans it owns or from spans that have no object out, which it then
    /// owns (see [`Span::owner`]; a CPU index [`Owner::cpu`] cannot pack
    /// owns none).
    pub fn refill<S: PageSource, X: RelaxStrategy>(
        &mut self,
        class: SizeClass,
        out: &mut [*mut u8],
        below: &Below<'_, S, X>,
        cpu: usize,
    ) -> usize {
        let want = out.len();
        let owner = Owner::cpu(cpu);
        let own = !owner.is_none() && S::GEOMETRY.shares_lines(class);
        // 1. The transfer cache: this CPU's shard (the objects it flushed
        // last), then, where objects may change CPUs, the others'.
        let mut got = 0;
        if self.ntransfer > 0 {
            let home = self.shard_of(cpu);
            got = self.take_shard(home, out);
            if self.steal {
                for i in 1..self.shards {
                    if got == want || self.ntransfer == 0 {
                        break;
                    }
                    got += self.take_shard((home + i) % self.shards, &mut out[got..]);
                }
            }
        }
        // 2. Carve from partial spans, then from new spans.
        while got < want {
            let mut s = if own {
                self.partial_owned_by(owner)
            } else {
                self.partial.first()
            };
            if s.is_null() {
                let Some(new) = below
                    .heap
                    .lock()
                    .alloc_small_span(below.source, below.map, class)
                else {
                    break;
                };
                s = new.as_ptr();
                self.spans_made += 1;
                #[cfg(feature = "hardened")]
                if let Some(secret) = below.secret {
                    // SAFETY: a fresh span, none of its objects taken, ours
                    // under this lock.
                    unsafe {
                        if (*s).npages().get() == 1 {
                            (*s).mark_slots(secret);
                        }
                    }
                }
                // SAFETY: a fresh span on no list, ours under this lock.
                unsafe {
                    (*s).list = ListId::Partial;
                    self.partial.push(s);
                }
            }
            if s == self.empty {
                self.empty = null_mut();
            }
            // SAFETY: spans on our lists are live and guarded by our lock.
            let span = unsafe { &mut *s };
            if own {
                span.owner.store(owner);
            }
            while got < want {
                let Some(idx) = span.take() else { break };
                let p = span.object(idx);
                #[cfg(feature = "checks")]
                crate::checks::mark_cached(span, idx, p);
                out[got] = p;
                got += 1;
            }
            if span.is_full() {
                // SAFETY: `s` is on partial; moving it to full under our lock.
                unsafe {
                    self.partial.remove(s);
                    span.list = ListId::Full;
                    self.full.push(s);
                }
            }
        }
        got
    }

    /// Returns every object of `remote` (objects of `class`) to its span.
    /// Holding this central's lock is what makes taking the list safe.
    pub fn give_back_remote<S: PageSource, X: RelaxStrategy>(
        &mut self,
        class: SizeClass,
        remote: &Remote,
        below: &Below<'_, S, X>,
    ) {
        if remote.is_empty() {
            return; // no write to the list's line
        }
        let mut p = remote.head.swap(null_mut(), Ordering::Acquire);
        let mut n = 0;
        let mut last = null_mut();
        while !p.is_null() {
            // SAFETY: pushed by `Remote::push`, which wrote the link; the
            // objects are ours now (the list was taken whole).
            let next = unsafe { p.cast::<*mut u8>().read() };
            last = self.give_back_near(class, p, last, below);
            n += 1;
            p = next;
        }
        remote.len.fetch_sub(n, Ordering::Relaxed);
    }

    /// The first of the first [`OWNER_SCAN`] partial spans that `owner` may
    /// carve: its own, or one with no object out; null if none is.
    fn partial_owned_by(&self, owner: Owner) -> *mut Span {
        let mut s = self.partial.first();
        for _ in 0..OWNER_SCAN {
            if s.is_null() {
                break;
            }
            // SAFETY: spans on our lists are live and guarded by our lock.
            let span = unsafe { &*s };
            let o = span.owner.load();
            if o.is_none() || o == owner || span.alloc_count == 0 {
                return s;
            }
            s = span.next;
        }
        null_mut()
    }

    /// Takes back free objects of `class` from CPU `cpu`'s cache: onto its
    /// transfer shard if the cache has room for all of them, else to their
    /// spans.
    pub fn flush<S: PageSource, X: RelaxStrategy>(
        &mut self,
        class: SizeClass,
        objs: &[*mut u8],
        below: &Below<'_, S, X>,
        cpu: usize,
    ) {
        let n = objs.len();
        if self.cap > 0 && self.ntransfer + n <= self.cap {
            // A shard holds at most `ntransfer` objects, so this one has room.
            let k = self.shard_of(cpu);
            let (len, slots) = self.shard(k);
            slots[*len..*len + n].copy_from_slice(objs);
            *len += n;
            self.ntransfer += n;
            return;
        }
        self.give_back(class, objs, below);
    }

    /// Takes back free objects of `class` that a CPU's cache no longer
    /// wants (a grown stack's growth, given back when its class idles):
    /// straight to their spans, which may then go back to the page heap,
    /// since nobody is about to ask for them.
    pub fn give_back<S: PageSource, X: RelaxStrategy>(
        &mut self,
        class: SizeClass,
        objs: &[*mut u8],
        below: &Below<'_, S, X>,
    ) {
        let mut last = null_mut();
        for &p in objs {
            last = self.give_back_near(class, p, last, below);
        }
    }

    /// Returns every object of the transfer cache to its span, and every empty
    /// span to the page heap (for scavenging).
    pub fn drain_transfer<S: PageSource, X: RelaxStrategy>(
        &mut self,
        class: SizeClass,
        below: &Below<'_, S, X>,
    ) {
        let mut last = null_mut();
        for k in 0..self.shards {
            loop {
                let mut one = [null_mut()];
                if self.take_shard(k, &mut one) == 0 {
                    break;
                }
                last = self.give_back_near(class, one[0], last, below);
            }
        }
        let s = core::mem::replace(&mut self.empty, null_mut());
        if !s.is_null() {
            // SAFETY: the kept span is on partial, live, with no object allocated.
            unsafe { self.release_span(s, below) };
        }
    }

    /// Takes an empty span off `partial` and gives it to the page heap.
    ///
    /// # Safety
    /// `s` is on `partial`, live, with no object allocated, and not `self.empty`.
    unsafe fn release_span<S: PageSource, X: RelaxStrategy>(
        &mut self,
        s: *mut Span,
        below: &Below<'_, S, X>,
    ) {
        // SAFETY: as the caller promises; the list is ours under our lock.
        unsafe {
            self.partial.remove(s);
            (*s).list = ListId::None;
            self.spans_freed += 1;
            below
                .heap
                .lock()
                .free_span(below.source, NonNull::new_unchecked(s));
        }
    }

    /// Returns one free object to its span; frees the span when it empties.
    /// `near` is null or a live span of this class (the one the previous object of a batch went back to): an
    /// object inside it needs no page-map lookup, which is most of a batch's
    /// objects, since a CPU's stack hands them out, and gets them back, in
    /// runs from one span. Returns the span `p` went back to if it is still
    /// live (else null), for the next object.
    fn give_back_near<S: PageSource, X: RelaxStrategy>(
        &mut self,
        class: SizeClass,
        p: *mut u8,
        near: *mut Span,
        below: &Below<'_, S, X>,
    ) -> *mut Span {
        let a = Addr::of(p);
        // SAFETY: the caller's `near` is null or a live span of ours, under our lock.
        let s = match unsafe { near.as_ref() } {
            Some(n) if a >= n.start && a < n.end(S::PAGE) => near,
            _ => below.map.lookup::<S>(a),
        };
        assert!(
            !s.is_null(),
            "tieralloc: object {p:p} of class {} is not in the heap",
            class.index()
        );
        // SAFETY: the page map only holds live spans; objects of `class` are in
        // spans owned by this central, whose lock we hold.
        let span = unsafe { &mut *s };
        assert!(
            span.state == SpanState::Small && span.class == class,
            "tieralloc: object {p:p} is not of class {}",
            class.index()
        );
        let (idx, exact) = span.index_of(a);
        debug_assert!(exact);
        #[cfg(feature = "checks")]
        crate::checks::unmark_cached(span, idx, p);
        let was_full = span.is_full();
        let ok = span.put(idx);
        assert!(
            ok,
            "tieralloc: object {p:p} (span {:#x}, class {}) freed twice",
            span.start,
            class.index()
        );
        // SAFETY: the span is on the list its `list` field names, under our lock.
        unsafe {
            if was_full {
                self.full.remove(s);
                span.list = ListId::Partial;
                self.partial.push(s);
            }
            if span.alloc_count == 0 && self.empty.is_null() {
                self.empty = s;
            } else if span.alloc_count == 0 {
                self.release_span(s, below);
                return null_mut();
            }
        }
        s
    }

    /// Checks the list invariants; panics with a message on a violation.
    pub fn check_invariants(&self, class: SizeClass) {
        for s in self.partial.iter() {
            // SAFETY: listed spans are live under the caller's lock.
            let span = unsafe { &*s };
            assert!(
                span.class == class
                    && span.list == ListId::Partial
                    && !span.is_full()
                    && (span.alloc_count > 0 || s == self.empty),
                "partial span {:#x} of class {}",
                span.start,
                class.index()
            );
            span.check_invariants();
        }
        for s in self.full.iter() {
            // SAFETY: as above.
            let span = unsafe { &*s };
            assert!(
                span.class == class && span.list == ListId::Full && span.is_full(),
                "full span {:#x} of class {}",
                span.start,
                class.index()
            );
            span.check_invariants();
        }
        assert!(self.ntransfer <= self.cap);
        let mut sum = 0;
        for k in 0..self.shards {
            let len = self.shard_len(k);
            assert!(
                len <= self.cap,
                "transfer shard {k} of class {}",
                class.index()
            );
            sum += len;
        }
        assert_eq!(
            sum,
            self.ntransfer,
            "transfer shards of class {}",
            class.index()
        );
        assert!(
            self.empty.is_null()
                // SAFETY: the kept span is on `partial`, live under the caller's lock.
                || unsafe {
                    (*self.empty).alloc_count == 0 && (*self.empty).list == ListId::Partial
                },
            "kept empty span of class {}",
            class.index()
        );
    }
}

impl Default for Central {
    fn default() -> Self {
        Self::new()
    }
}
