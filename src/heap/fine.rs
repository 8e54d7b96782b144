//! The fine front: a region heap of at most [`FINE_MAX_BYTES`] serves every
//! object from one fine heap ([`crate::fine`]) instead of the tiers. See
//! `lib.rs` ("Region heaps") and [`super`].
//!
//! The choice is made once, under the set-up lock, at the first operation
//! that finds the heap undecided: a fine heap if the source's bound is at
//! most [`FINE_MAX_BYTES`] (and [`Heap::prefer_tiers`] was not called), the
//! tiers otherwise. Every entry point asks [`Heap::fine`] first; for sources
//! without [`PageSource::SMALL_ARENAS`] that is a constant `None`, and their
//! code is the tiers' alone.

use crate::fine::{Fine, FineStats, Refused, FINE_MAX_BYTES};
use crate::percpu::Cpu;
use crate::source::PageSource;
use crate::stack::Stack;
use crate::sync::atomic::Ordering;
use crate::sync::Lock;
use crate::Stats;

use super::{BadFree, FreeSite, Heap};

/// The fine heap of a `Heap`, behind its lock, which the heap never takes
/// when its `Cpu` has [`Cpu::EXCLUSIVE_OPERATIONS`]: then every access runs
/// inside [`Cpu::operation`], which already excludes every other.
pub(super) struct FineLock<C: Cpu> {
    lock: Lock<Fine, C::Relax>,
}

/// Exclusive access to the fine heap while it lives (see [`FineLock::lock`]).
pub(super) struct FineGuard<'a, C: Cpu> {
    fine: &'a FineLock<C>,
}

impl<C: Cpu> FineLock<C> {
    /// Whether the lock is left alone: each operation is exclusive already.
    const BY_OPERATION: bool = C::GUARDS_OPERATIONS && C::EXCLUSIVE_OPERATIONS;

    fn new(fine: Fine) -> Self {
        FineLock {
            lock: Lock::new(fine),
        }
    }

    fn get_mut(&mut self) -> &mut Fine {
        self.lock.get_mut()
    }

    /// Exclusive access to the fine heap. Every caller is an entry point
    /// of the heap, inside its operation (`Heap::guarded` or its own
    /// `Cpu::operation`), which is what makes it exclusive without the lock
    /// under [`Cpu::EXCLUSIVE_OPERATIONS`].
    #[inline(always)]
    pub(super) fn lock(&self) -> FineGuard<'_, C> {
        if !Self::BY_OPERATION {
            core::mem::forget(self.lock.lock());
        }
        FineGuard { fine: self }
    }

    /// Holds the fine heap until [`FineLock::unhold`]: for `Heap::lock_all`
    /// (the lock, or the CPU's operation exclusivity through its one slot).
    pub(super) fn hold(&self, cpu: &C) {
        if Self::BY_OPERATION {
            cpu.acquire_slot(0);
        } else {
            core::mem::forget(self.lock.lock());
        }
    }

    /// Releases what [`FineLock::hold`] took.
    ///
    /// # Safety
    /// The caller (or, in a forked child, its parent) called `hold`.
    pub(super) unsafe fn unhold(&self, cpu: &C) {
        if Self::BY_OPERATION {
            // SAFETY: `hold` acquired slot 0 (the caller's promise).
            unsafe { cpu.release_slot(0) };
        } else {
            // SAFETY: `hold` took the lock and forgot its guard.
            unsafe { self.lock.force_unlock() };
        }
    }
}

impl<C: Cpu> core::ops::Deref for FineGuard<'_, C> {
    type Target = Fine;
    #[inline(always)]
    fn deref(&self) -> &Fine {
        // SAFETY: exclusive while the guard lives (see `FineLock::lock`).
        unsafe { &*self.fine.lock.as_mut_ptr() }
    }
}

impl<C: Cpu> core::ops::DerefMut for FineGuard<'_, C> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut Fine {
        // SAFETY: as in `deref`.
        unsafe { &mut *self.fine.lock.as_mut_ptr() }
    }
}

impl<C: Cpu> Drop for FineGuard<'_, C> {
    #[inline(always)]
    fn drop(&mut self) {
        if !FineLock::<C>::BY_OPERATION {
            // SAFETY: `FineLock::lock` took the lock and forgot its guard.
            unsafe { self.fine.lock.force_unlock() }
        }
    }
}

impl<S: PageSource, C: Cpu> Heap<S, C> {
    /// The fine heap, if this heap is one, choosing at the first call.
    #[inline(always)]
    pub(super) fn fine(&self) -> Option<&FineLock<C>> {
        if !S::SMALL_ARENAS {
            return None;
        }
        let p = self.fine.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: set once by `choose` to a lock carved for ever.
            return Some(unsafe { &*p });
        }
        if self.tiered.load(Ordering::Acquire) {
            return None;
        }
        self.choose()
    }

    /// The fine heap if this heap already is one, without choosing: what
    /// an entry point may look at before it enters [`Cpu::operation`] (the
    /// pointer is set once, to a lock that lives for ever), so that the
    /// operation's closure is the fine heap's fast path alone, small enough
    /// for an optimiser for size to inline.
    #[inline(always)]
    pub(super) fn fine_ready(&self) -> Option<&FineLock<C>> {
        if !S::SMALL_ARENAS {
            return None;
        }
        // SAFETY: null, or set once by `choose` to a lock carved for ever.
        unsafe { self.fine.load(Ordering::Acquire).as_ref() }
    }

    /// The choice between the fine heap and the tiers (see the module docs).
    /// Undecided, and `None`, while the source has no memory to set either up.
    #[cold]
    #[inline(never)]
    fn choose(&self) -> Option<&FineLock<C>> {
        let _init = self.init.lock();
        let p = self.fine.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: as in `fine`.
            return Some(unsafe { &*p });
        }
        if self.tiered.load(Ordering::Acquire) {
            return None;
        }
        match self.source.bound() {
            Some(b) if b > 0 && b <= FINE_MAX_BYTES => {
                let lock = Fine::create(&self.source, FineLock::new, FineLock::get_mut)?;
                self.fine.store(lock.as_ptr(), Ordering::Release);
                // SAFETY: just carved, for ever.
                Some(unsafe { &*lock.as_ptr() })
            }
            Some(0) => None,
            _ => {
                self.tiered.store(true, Ordering::Release);
                None
            }
        }
    }

    /// Serves this region heap from the tiers (per-CPU caches, central
    /// lists, page heap) even if its source holds at most
    /// [`FINE_MAX_BYTES`]: for a board with several CPUs that allocate at
    /// once, which trades the fine heap's efficiency for per-CPU caches.
    /// Returns whether the heap is (now) tiered: `false` if it already
    /// became a fine heap. Call it before the first allocation.
    pub fn prefer_tiers(&self) -> bool {
        let _init = self.init.lock();
        if !self.fine.load(Ordering::Acquire).is_null() {
            return false;
        }
        self.tiered.store(true, Ordering::Release);
        true
    }

    /// Whether this heap serves its objects from a fine heap (a region heap
    /// of at most [`FINE_MAX_BYTES`]; see `lib.rs`, "Region heaps"), as
    /// chosen at set-up. Sets the heap up.
    pub fn is_fine(&self) -> bool {
        self.guarded(|| self.fine().is_some())
    }

    /// Panics with the address and what `why` says about it.
    #[cold]
    #[inline(never)]
    pub(super) fn fine_refused(&self, p: *mut u8, why: Refused) -> ! {
        match why {
            Refused::NotABlock => panic!(
                "tieralloc: free of {p:p}: not an object of this heap (foreign or interior pointer)"
            ),
            Refused::Free => panic!("tieralloc: free of {p:p}: double free (the block is free)"),
            Refused::WrongSize { block } => {
                panic!("tieralloc: free of {p:p}: wrong layout (the block holds {block} bytes)")
            }
        }
    }

    /// What a refusal is as a [`BadFree`].
    pub(super) fn fine_bad_free(why: Refused) -> BadFree {
        match why {
            Refused::NotABlock | Refused::WrongSize { .. } => BadFree::NotAnObject,
            Refused::Free => BadFree::DoubleFree(FreeSite::FreeList),
        }
    }

    /// A stack from the fine heap: a block aligned to 16 bytes, no guard
    /// (a region has no MMU to enforce one).
    pub(super) fn fine_stack(f: &FineLock<C>, source: &S, bytes: usize) -> Option<Stack> {
        let bytes = bytes.max(16).next_multiple_of(16);
        let mut g = f.lock();
        let p = core::ptr::NonNull::new(g.alloc(source, bytes, 16))?;
        g.count_stack(bytes, true);
        Some(Stack::from_block(p, bytes))
    }

    /// The statistics of a fine heap: its arenas are `heap_sys` but for its
    /// state and bitmaps (`meta_sys`), its live blocks `heap_alloc` and
    /// `heap_inuse` (granule-rounded, in `fine_alloc` too), its cached
    /// blocks `cached_bytes` and `heap_inuse` too, its stacks' blocks
    /// `stack_sys`.
    pub(super) fn fine_stats(st: FineStats) -> Stats {
        let mut s = Stats {
            heap_sys: (st.sys_bytes - st.meta_bytes) as u64,
            heap_alloc: (st.live_bytes - st.stack_bytes) as u64,
            fine_alloc: (st.live_bytes - st.stack_bytes) as u64,
            cached_bytes: st.cached_bytes as u64,
            meta_sys: st.meta_bytes as u64,
            stack_sys: st.stack_bytes as u64,
            stacks: st.stacks as u64,
            stack_inuse: st.stack_bytes as u64,
            mallocs: st.mallocs,
            frees: st.frees,
            arenas: st.arenas as u64,
            cpus: 1,
            ..Stats::default()
        };
        s.heap_inuse = s.heap_alloc + s.cached_bytes;
        s.heap_idle = s.heap_sys - s.heap_inuse - s.stack_sys;
        s
    }
}
