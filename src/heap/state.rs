//! The per-class state below the CPUs — each class's central list, its
//! remote list and its flow counters, and the slots of the transfer caches —
//! in one block carved from the source when the heap sets itself up, so that
//! the `Heap` value stays small enough for a microcontroller's `.bss` (its
//! size is in `lib.rs`) and a bounded source gets transfer caches sized to
//! it. See [`super`] and `lib.rs`.
//!
//! Layout: `[Classes][centrals][flows][remotes][transfer slots of class
//! 1][… class 2]…`: one central and one flow per class of the geometry
//! (class 0 included), one remote list per line-sharing class of any
//! geometry, the transfer cache of class `c` taking
//! `Central::transfer_words` of its [`transfer_capacity`]`(c, budget)` and
//! the heap's [`transfer_shards`]. Centrals and remote lists take a cache
//! line each ([`Padded`]) unless the heap has one CPU ([`Pad::Packed`]):
//! nothing shares their lines then. Written once under the set-up lock,
//! before the per-CPU caches are published, and never freed: whoever sees
//! the caches sees this block.

use core::marker::PhantomData;
use core::mem::{align_of, size_of};

use crate::central::{Central, Remote, TRANSFER_BYTES, TRANSFER_MIN, TRANSFER_SLOTS};
use crate::percpu::batch;
use crate::sizeclass::{Geometry, SizeClass, MAX_SHARING, NUM_CLASSES};
use crate::sync::{Lock, Padded};

use super::stats::Flow;

/// Remote lists: one per line-sharing class of any geometry, class 0 included.
const SHARING: usize = MAX_SHARING;

/// Whether centrals and remote lists take a line each.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Pad {
    /// A cache line each (several CPUs take their locks).
    Lines,
    /// Packed (one CPU: no line is contended).
    Packed,
}

/// Where each part of the block lies, in bytes from its start.
#[derive(Clone, Copy, Debug)]
struct Plan {
    central: usize,
    central_stride: usize,
    flow: usize,
    remote: usize,
    remote_stride: usize,
    slots: usize,
}

impl Plan {
    /// The block of a heap with `slots` per-class slots (class 0 and the
    /// classes kept: [`coarse_classes`]).
    const fn new<X>(slots: usize, pad: Pad) -> Plan {
        let (central_stride, central_align, remote_stride, remote_align) = match pad {
            Pad::Lines => (
                size_of::<Padded<Lock<Central, X>>>(),
                align_of::<Padded<Lock<Central, X>>>(),
                size_of::<Padded<Remote>>(),
                align_of::<Padded<Remote>>(),
            ),
            Pad::Packed => (
                size_of::<Lock<Central, X>>(),
                align_of::<Lock<Central, X>>(),
                size_of::<Remote>(),
                align_of::<Remote>(),
            ),
        };
        let central = size_of::<Classes<X>>().next_multiple_of(central_align);
        let flow = (central + slots * central_stride).next_multiple_of(align_of::<Flow>());
        let remote = (flow + slots * size_of::<Flow>()).next_multiple_of(remote_align);
        let slots = (remote + SHARING * remote_stride).next_multiple_of(align_of::<*mut u8>());
        Plan {
            central,
            central_stride,
            flow,
            remote,
            remote_stride,
            slots,
        }
    }
}

/// What each class keeps below the CPUs (see the module docs): the head of
/// the block, which finds the rest.
///
/// Invariant: `base` is the block (this head at its start) with the
/// provenance of all of it, laid out by `plan`; `count` is the geometry's.
pub(super) struct Classes<X> {
    base: *mut u8,
    count: usize,
    plan: Plan,
    /// Per class: the class its objects are served from ([`coarse_classes`]).
    coarse: [u8; NUM_CLASSES],
    /// Per class: its slot among the centrals and flows (a class not kept:
    /// its coarse class's); class 0 has slot 0, the kept classes 1.. in
    /// order. `slots` of them in all.
    slot: [u8; NUM_CLASSES],
    slots: usize,
    _relax: PhantomData<X>,
}

/// How finely a heap over a source bounded by `bound` keeps its classes: 0
/// keeps every class; `d` keeps a class up to 512 bytes only if it is at
/// least `1 + 1/d` times the last one kept, larger ones more finely
/// ([`coarse_classes`]; and the first, the tiny class and the last).
/// Every class of a region heap holds a partly used span, so in a region of
/// tens of kilobytes fewer classes strand less than their rounding wastes:
/// `d` is a 64 KiB-th of the bound, so 64 KiB keeps steps of a doubling
/// (up to 512 B), 256 KiB of a quarter, 512 KiB of an eighth, 1 MiB and up every class.
pub(super) const fn coarse_div(bound: Option<usize>) -> usize {
    match bound {
        None => 0,
        Some(b) => {
            let d = b / (64 << 10);
            if d >= 16 {
                0
            } else if d < 1 {
                1
            } else {
                d
            }
        }
    }
}

/// How much finer than [`coarse_div`] classes of `size` bytes are kept: 1
/// up to 512 bytes, `size / 512` above. A span of a small class holds
/// dozens of objects, so a class more strands much of a span; one of 2 KiB
/// objects holds one or two, so a class more strands little, and a finer
/// step saves more than it costs.
const fn per_span(size: usize) -> usize {
    if size > 512 {
        size / 512
    } else {
        1
    }
}

/// The class each class of `g` is served from with [`coarse_div`] `d`: the
/// class itself, or the next one kept above it (so its objects fit). A
/// class is kept if it is at least `1 + 1/(d · per_span(size))` times the
/// last one kept.
pub(super) const fn coarse_classes(g: &Geometry, d: usize) -> [u8; NUM_CLASSES] {
    let mut out = [0u8; NUM_CLASSES];
    let mut keep = [false; NUM_CLASSES];
    let mut last = 0;
    let mut i = 1;
    while i < g.count {
        let size = g.rows[i].size as usize;
        keep[i] = d == 0
            || i == 1
            || i == g.count - 1
            || i == g.tiny_class.index()
            || size >= last + last / (d * per_span(size));
        if keep[i] {
            last = size;
        }
        i += 1;
    }
    let mut next = g.count - 1;
    let mut i = g.count - 1;
    while i >= 1 {
        if keep[i] {
            next = i;
        }
        out[i] = next as u8;
        i -= 1;
    }
    out
}

/// Most shards of a transfer cache: CPUs past the first [`MAX_SHARDS`] share
/// shards (CPU `k` uses shard `k % shards`), which bounds the slots' memory
/// on machines of many CPUs.
pub(super) const MAX_SHARDS: usize = 16;

/// Shards of the transfer caches of a heap over `cpus` CPUs.
pub(super) const fn transfer_shards(cpus: usize) -> usize {
    if cpus == 0 {
        1
    } else if cpus > MAX_SHARDS {
        MAX_SHARDS
    } else {
        cpus
    }
}

/// Bytes of free objects each class's transfer cache may hold, for a source
/// bounded by `bound` bytes ([`crate::PageSource::bound`]): [`TRANSFER_BYTES`]
/// for an unbounded one, a 1024th of the region for a bounded one (so the
/// caches of all classes hold at most about 6 % of it).
pub(super) const fn transfer_budget(bound: Option<usize>) -> usize {
    match bound {
        None => TRANSFER_BYTES,
        Some(b) if b / 1024 < TRANSFER_BYTES => b / 1024,
        Some(_) => TRANSFER_BYTES,
    }
}

/// Transfer cache capacity of class `c` with `budget` bytes per class:
/// `budget / size` objects, at most `TRANSFER_SLOTS`. With the full budget
/// at least `TRANSFER_MIN`; with a smaller one, none unless it holds four
/// of the per-CPU tier's batches (a cache that cannot take a flush whole is
/// never used). The capacity of the whole cache: each of its shards has as
/// many slots, and all of them together hold no more (`central`).
pub const fn transfer_capacity(g: &Geometry, c: SizeClass, budget: usize) -> usize {
    if c.is_large() || c.index() >= g.count {
        return 0;
    }
    let n = budget / g.size(c);
    let n = if n > TRANSFER_SLOTS {
        TRANSFER_SLOTS
    } else {
        n
    };
    if budget >= TRANSFER_BYTES {
        if n < TRANSFER_MIN {
            TRANSFER_MIN
        } else {
            n
        }
    } else if n < 4 * batch(c) {
        0
    } else {
        n
    }
}

/// Per class of `g`: its slot among the per-class state of a heap whose
/// classes are served as `coarse` says, and the number of slots.
const fn slots_of(g: &Geometry, coarse: &[u8; NUM_CLASSES]) -> ([u8; NUM_CLASSES], usize) {
    let mut slot = [0u8; NUM_CLASSES];
    let mut n = 1;
    let mut i = 1;
    while i < g.count {
        if coarse[i] as usize == i {
            slot[i] = n as u8;
            n += 1;
        }
        i += 1;
    }
    let mut i = 1;
    while i < g.count {
        slot[i] = slot[coarse[i] as usize];
        i += 1;
    }
    (slot, n)
}

impl<X> Classes<X> {
    /// Bytes of the block for `budget` (see [`transfer_budget`]),
    /// `shards` transfer shards ([`transfer_shards`]) and [`coarse_div`]
    /// `coarse`.
    pub(super) const fn bytes(
        g: &Geometry,
        budget: usize,
        shards: usize,
        pad: Pad,
        coarse: usize,
    ) -> usize {
        let table = coarse_classes(g, coarse);
        let mut slots = 0;
        let mut i = 1;
        while i < g.count {
            if let Some(c) = SizeClass::new(i) {
                if table[i] as usize == i {
                    slots += Central::transfer_words(transfer_capacity(g, c, budget), shards);
                }
            }
            i += 1;
        }
        let (_, n) = slots_of(g, &table);
        Plan::new::<X>(n, pad).slots + slots * size_of::<*mut u8>()
    }

    /// Writes an empty block at `p` and gives each central its transfer
    /// shards.
    ///
    /// # Safety
    /// `p` is [`Classes::bytes`]`(g, budget, shards, pad, coarse)` writable
    /// bytes aligned to a cache line, the heap's for ever.
    pub(super) unsafe fn init(
        g: &Geometry,
        p: *mut u8,
        budget: usize,
        shards: usize,
        pad: Pad,
        coarse: usize,
    ) -> *mut Classes<X> {
        let table = coarse_classes(g, coarse);
        let (slot_of, nslots) = slots_of(g, &table);
        let plan = Plan::new::<X>(nslots, pad);
        let this = p.cast::<Classes<X>>();
        let mut slot = plan.slots;
        // SAFETY: every part is written in place, inside the block (the
        // plan's offsets, each aligned for its type since `p` is line
        // aligned); the slots lie past the remotes, a disjoint range per class.
        unsafe {
            this.write(Classes {
                base: p,
                count: g.count,
                plan,
                coarse: table,
                slot: slot_of,
                slots: nslots,
                _relax: PhantomData,
            });
            for k in 0..nslots {
                p.add(plan.central + k * plan.central_stride)
                    .cast::<Lock<Central, X>>()
                    .write(Lock::new(Central::new()));
                p.add(plan.flow + k * size_of::<Flow>())
                    .cast::<Flow>()
                    .write(Flow::new());
            }
            for (c, class) in SizeClass::small_classes()
                .enumerate()
                .map(|(i, c)| (i + 1, c))
                .take(g.count - 1)
            {
                let cap = transfer_capacity(g, class, budget);
                if table[c] as usize == c && cap > 0 {
                    let central = p
                        .add(plan.central + slot_of[c] as usize * plan.central_stride)
                        .cast::<Lock<Central, X>>();
                    let words = p.add(slot).cast::<usize>();
                    let n = Central::transfer_words(cap, shards);
                    // The lengths; the slots need no zeros (nor, untouched,
                    // memory).
                    words.write_bytes(0, shards);
                    (*central)
                        .get_mut()
                        .set_transfer(words, cap, shards, !g.shares_lines(class));
                    slot += n * size_of::<usize>();
                }
            }
            for c in 0..SHARING {
                p.add(plan.remote + c * plan.remote_stride)
                    .cast::<Remote>()
                    .write(Remote::new());
            }
        }
        debug_assert_eq!(slot, Self::bytes(g, budget, shards, pad, coarse));
        this
    }

    /// Class `c`'s slot among the centrals and flows.
    #[inline(always)]
    fn slot(&self, c: SizeClass) -> usize {
        debug_assert!(c.index() < self.count);
        // SAFETY: a `SizeClass` index is below NUM_CLASSES; entries are
        // below `slots` (`slots_of`).
        unsafe { *self.slot.get_unchecked(c.index()) as usize }
    }

    /// Class `c`'s central list (a class not kept: its coarse class's).
    #[inline]
    pub(super) fn central(&self, c: SizeClass) -> &Lock<Central, X> {
        // SAFETY: a slot below `slots`: its central lies in the block,
        // written at `init` (the type's invariant).
        unsafe {
            &*self
                .base
                .add(self.plan.central + self.slot(c) * self.plan.central_stride)
                .cast()
        }
    }

    /// The small classes the heap serves from (each with a slot of its own).
    pub(super) fn kept(&self) -> impl Iterator<Item = SizeClass> + '_ {
        SizeClass::small_classes()
            .take(self.count.saturating_sub(1))
            .filter(|&c| self.coarse(c) == c)
    }

    /// The class objects of class `c` are served from.
    #[inline(always)]
    pub(super) fn coarse(&self, c: SizeClass) -> SizeClass {
        // SAFETY: a `SizeClass` index is below NUM_CLASSES.
        let m = unsafe { *self.coarse.get_unchecked(c.index()) };
        SizeClass::new(m as usize)
            .filter(|m| !m.is_large())
            .unwrap_or(c)
    }

    /// Every central list, class 0's (never used) included.
    pub(super) fn centrals(&self) -> impl Iterator<Item = &Lock<Central, X>> {
        // SAFETY: slots below `slots` lie in the block, written at `init`.
        (0..self.slots).map(|k| unsafe {
            &*self
                .base
                .add(self.plan.central + k * self.plan.central_stride)
                .cast::<Lock<Central, X>>()
        })
    }

    /// Class `c`'s flow counters (a class not kept: its coarse class's).
    #[inline]
    pub(super) fn flow(&self, c: SizeClass) -> &Flow {
        // SAFETY: as in `central`.
        unsafe {
            &*self
                .base
                .add(self.plan.flow + self.slot(c) * size_of::<Flow>())
                .cast()
        }
    }

    /// Line-sharing class `c`'s remote list.
    #[inline]
    pub(super) fn remote(&self, c: SizeClass) -> &Remote {
        assert!(c.index() < SHARING);
        // SAFETY: `c < SHARING`: its remote lies in the block, written at `init`.
        unsafe {
            &*self
                .base
                .add(self.plan.remote + c.index() * self.plan.remote_stride)
                .cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sizeclass::GO;

    /// A transfer cache takes at least four flushes of the per-CPU tier, or
    /// there is none; it holds at most its budget (or `TRANSFER_MIN` objects).
    #[test]
    fn transfer_capacity_holds_four_batches() {
        for bound in [
            None,
            Some(64 << 20),
            Some(16 << 20),
            Some(1 << 20),
            Some(64 << 10),
        ] {
            let budget = transfer_budget(bound);
            for c in GO.small_classes() {
                let cap = transfer_capacity(&GO, c, budget);
                if bound.is_none() {
                    assert!(cap >= TRANSFER_MIN, "class {}", c.index());
                }
                assert!(
                    cap == 0 || cap >= 4 * batch(c),
                    "class {} bound {bound:?}",
                    c.index()
                );
                assert!(
                    cap <= TRANSFER_SLOTS
                        && cap * GO.size(c) <= budget.max(TRANSFER_MIN * GO.size(c))
                );
            }
            assert_eq!(transfer_capacity(&GO, SizeClass::LARGE, budget), 0);
        }
        // A region of kilobytes keeps no transfer cache at all.
        let small = transfer_budget(Some(256 << 10));
        assert!(GO
            .small_classes()
            .all(|c| transfer_capacity(&GO, c, small) == 0));
        for pad in [Pad::Lines, Pad::Packed] {
            for shards in [1, 2, MAX_SHARDS] {
                assert_eq!(
                    Classes::<spin::relax::Spin>::bytes(&GO, small, shards, pad, 0),
                    Plan::new::<spin::relax::Spin>(GO.count, pad).slots
                );
            }
        }
        assert_eq!(
            (transfer_shards(0), transfer_shards(1), transfer_shards(3)),
            (1, 1, 3)
        );
        assert_eq!(transfer_shards(4 * MAX_SHARDS), MAX_SHARDS);
    }
}

#[cfg(test)]
mod coarse_tests {
    use super::*;
    use crate::sizeclass::{GO, REGION_GEOMETRY};
    use std::vec::Vec;

    /// Every class is served from a kept class at least as large; kept
    /// classes serve themselves; the first, tiny and last classes are kept;
    /// a coarser `d` keeps fewer; `d = 0` keeps all.
    #[test]
    fn coarse_classes_serve_from_a_kept_class_that_fits() {
        for g in [&REGION_GEOMETRY, &GO] {
            let mut prev_kept = 0;
            for d in [1, 2, 4, 8, 15, 0] {
                let t = coarse_classes(g, d);
                let mut kept = 0;
                for c in g.small_classes() {
                    let m = SizeClass::new(t[c.index()] as usize).unwrap();
                    assert!(!m.is_large() && m.index() < g.count && m.index() >= c.index());
                    assert!(g.size(m) >= g.size(c));
                    assert_eq!(t[m.index()] as usize, m.index(), "{m:?} is kept");
                    if m == c {
                        kept += 1;
                    }
                }
                for keep in [1, g.count - 1, g.tiny_class.index()] {
                    assert_eq!(t[keep] as usize, keep, "d {d}");
                }
                if d == 0 {
                    assert_eq!(kept, g.count - 1);
                }
                assert!(kept >= prev_kept, "d {d}: {kept} < {prev_kept}");
                prev_kept = kept;
            }
        }
        // Per-class state for the kept classes only: one slot each (class 0
        // has slot 0), a class not kept shares its coarse class's.
        for g in [&REGION_GEOMETRY, &GO] {
            for d in [1, 4, 0] {
                let t = coarse_classes(g, d);
                let (slot, n) = slots_of(g, &t);
                let kept: Vec<usize> = (1..g.count).filter(|&c| t[c] as usize == c).collect();
                assert_eq!(n, kept.len() + 1);
                for (k, &c) in kept.iter().enumerate() {
                    assert_eq!(slot[c] as usize, k + 1);
                }
                for c in 1..g.count {
                    assert_eq!(slot[c], slot[t[c] as usize]);
                }
                let packed = Classes::<spin::relax::Spin>::bytes(g, 0, 1, Pad::Packed, d);
                let all = Classes::<spin::relax::Spin>::bytes(g, 0, 1, Pad::Packed, 0);
                assert!(packed <= all && (d == 0 || packed < all), "{d}");
            }
        }
        assert_eq!(coarse_div(None), 0);
        assert_eq!(coarse_div(Some(8 << 10)), 1);
        assert_eq!(coarse_div(Some(64 << 10)), 1);
        assert_eq!(coarse_div(Some(256 << 10)), 4);
        assert_eq!(coarse_div(Some(1 << 20)), 0);
    }
}
