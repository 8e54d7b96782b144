//! Deriving [`Stats`] from the flows of objects between the tiers. See
//! [`crate::stats`] for the identities the snapshot keeps, and [`super`].
//!
//! The fast paths count nothing but the mallocs packed into the stack words
//! (a pop adds one in the same store that commits it). Frees are derived,
//! per class, from the objects that moved between the tiers outside the fast
//! path ([`Flow`]):
//!
//! `frees = Σ stack lengths − to_slabs + from_slabs + Σ pops + direct_frees`
//!
//! (every object on a stack got there by a free or a refill; every object
//! that left a stack left by a malloc or a flush).

use crate::percpu::{Cpu, TinyEvent};
use crate::source::{PageSource, SourcePage};
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::{Stats, TINY_BLOCK};

use super::Heap;

/// Objects of one class moving between tiers, counted outside the fast path.
pub(super) struct Flow {
    /// Central → per-CPU stacks.
    to_slabs: AtomicU64,
    /// Per-CPU stacks → central.
    from_slabs: AtomicU64,
    /// Central → user without passing a stack (a refill's last object).
    direct_mallocs: AtomicU64,
    /// User → central without passing a stack (a stack that could not take
    /// it, or a remote free).
    direct_frees: AtomicU64,
}

impl Flow {
    pub(super) const fn new() -> Self {
        Flow {
            to_slabs: AtomicU64::new(0),
            from_slabs: AtomicU64::new(0),
            direct_mallocs: AtomicU64::new(0),
            direct_frees: AtomicU64::new(0),
        }
    }

    /// `n` objects went from central to a stack.
    pub(super) fn pushed_to_slabs(&self, n: usize) {
        self.to_slabs.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// `n` objects went from a stack to central.
    pub(super) fn flushed_from_slabs(&self, n: usize) {
        self.from_slabs.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// One object went from central to the user.
    pub(super) fn malloc_direct(&self) {
        self.direct_mallocs.fetch_add(1, Ordering::Relaxed);
    }

    /// One object went from the user to central (or the remote list).
    pub(super) fn free_direct(&self) {
        self.direct_frees.fetch_add(1, Ordering::Relaxed);
    }
}

impl<S: PageSource, C: Cpu> Heap<S, C> {
    /// A snapshot of the heap's statistics; exact when no operation is in flight.
    ///
    /// Per class, mallocs are counted by the per-CPU pops (packed into the stack
    /// words) plus direct hand-outs; frees are derived from the flow of objects
    /// between tiers: `frees = Σ stack lengths − to_slabs + from_slabs + pops + direct_frees`.
    pub fn stats(&self) -> Stats {
        self.guarded(|| {
            if let Some(f) = self.fine() {
                let st = f.lock().stats();
                return Self::fine_stats(st);
            }
            let mut st = Stats::default();
            let t = self.slabs.totals::<S>();
            st.cpus = t.cpus as u64;
            st.rseq = t.rseq;
            let classes = self.classes();
            for c in S::GEOMETRY.small_classes() {
                let i = c.index();
                st.by_size[i].size = S::GEOMETRY.size(c) as u64;
                // Before set-up nothing has moved; a class not kept has
                // moved nothing (its objects are its coarse class's).
                let Some(cl) = classes.filter(|cl| cl.coarse(c) == c) else {
                    continue;
                };
                let f = cl.flow(c);
                let (to, from, dm, df) = (
                    f.to_slabs.load(Ordering::Relaxed),
                    f.from_slabs.load(Ordering::Relaxed),
                    f.direct_mallocs.load(Ordering::Relaxed),
                    f.direct_frees.load(Ordering::Relaxed),
                );
                let row = &mut st.by_size[i];
                row.mallocs = t.pops[i] + dm;
                row.frees = (t.cached[i] + from + t.pops[i] + df).wrapping_sub(to);
                st.cached_bytes += t.cached[i] * S::GEOMETRY.size(c) as u64;
                st.cached_bytes +=
                    (cl.central(c).lock().transfer_len() * S::GEOMETRY.size(c)) as u64;
                if S::GEOMETRY.shares_lines(c) {
                    st.cached_bytes += (cl.remote(c).len() * S::GEOMETRY.size(c)) as u64;
                }
            }
            // Tiny blocks are objects of the tiny class, but not user objects of it.
            let blocks_taken = t.event(TinyEvent::BlocksTaken);
            let blocks_freed = t.event(TinyEvent::BlocksFreed);
            let tc = &mut st.by_size[S::GEOMETRY.tiny_class.index()];
            tc.mallocs = tc.mallocs.wrapping_sub(blocks_taken);
            tc.frees = tc.frees.wrapping_sub(blocks_freed);
            st.tiny_mallocs = t.event(TinyEvent::MallocsRetired) + t.tiny_current;
            st.tiny_frees = t.event(TinyEvent::Frees);
            st.tiny_blocks = blocks_taken.wrapping_sub(blocks_freed);
            let ps = self.pages.lock().stats(S::PAGE);
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
        })
    }
}
