//! The per-class state below the CPUs — each class's central list, its
//! remote list and its flow counters, and the slots of the transfer caches —
//! in one block carved from the source when the heap sets itself up, so that
//! the `Heap` value stays small enough for a microcontroller's `.bss` (its
//! size is in `lib.rs`) and a bounded source gets transfer caches sized to
//! it. See [`super`] and `lib.rs`.
//!
//! Layout: `[Classes][transfer slots of class 1][… class 2]…`, the slots of
//! class `c` numbering [`transfer_capacity`]`(c, budget)`. Written once
//! under the set-up lock, before the per-CPU caches are published, and
//! never freed: whoever sees the caches sees this block.

use core::mem::size_of;

use crate::central::{Central, Remote, TRANSFER_BYTES, TRANSFER_MIN, TRANSFER_SLOTS};
use crate::percpu::batch;
use crate::sizeclass::{Geometry, SizeClass, MAX_SHARING, NUM_CLASSES};
use crate::sync::{Lock, Padded};

use super::stats::Flow;

/// Remote lists: one per line-sharing class of any geometry, class 0 included.
const SHARING: usize = MAX_SHARING;

/// What each class keeps below the CPUs (see the module docs).
pub(super) struct Classes<X> {
    /// Per class: its central list, behind its own lock.
    pub(super) central: [Padded<Lock<Central, X>>; NUM_CLASSES],
    /// Per line-sharing class: objects freed off their owner's CPU.
    pub(super) remote: [Padded<Remote>; SHARING],
    /// Per class: objects moving between tiers, for [`super::Heap::stats`].
    pub(super) flow: [Flow; NUM_CLASSES],
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
/// never used). The classes under a line keep none: a batch of them could
/// reach another CPU.
pub const fn transfer_capacity(g: &Geometry, c: SizeClass, budget: usize) -> usize {
    if c.is_large() || c.index() >= g.count || g.shares_lines(c) {
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

impl<X> Classes<X> {
    /// Offset of the first transfer slot.
    const SLOTS_OFF: usize = size_of::<Classes<X>>().next_multiple_of(size_of::<*mut u8>());

    /// Bytes of the block for `budget` (see [`transfer_budget`]).
    pub(super) fn bytes(g: &Geometry, budget: usize) -> usize {
        let slots: usize = g
            .small_classes()
            .map(|c| transfer_capacity(g, c, budget))
            .sum();
        Self::SLOTS_OFF + slots * size_of::<*mut u8>()
    }

    /// Writes an empty `Classes` at `p` and gives each central its slots.
    ///
    /// # Safety
    /// `p` is [`Classes::bytes`]`(budget)` writable bytes aligned to a cache
    /// line, the heap's for ever.
    pub(super) unsafe fn init(g: &Geometry, p: *mut u8, budget: usize) -> *mut Classes<X> {
        let this = p.cast::<Classes<X>>();
        let mut slot = Self::SLOTS_OFF;
        // SAFETY: every field is written in place (no `Classes` on the stack:
        // it is kilobytes); the slots lie in the block past the struct, a
        // disjoint range per class.
        unsafe {
            for c in 0..NUM_CLASSES {
                let central = &raw mut (*this).central[c];
                central.write(Padded(Lock::new(Central::new())));
                (&raw mut (*this).flow[c]).write(Flow::new());
                if let Some(class) = SizeClass::new(c) {
                    let cap = transfer_capacity(g, class, budget);
                    if cap > 0 {
                        (*central).0.get_mut().set_transfer(p.add(slot).cast(), cap);
                        slot += cap * size_of::<*mut u8>();
                    }
                }
            }
            for c in 0..SHARING {
                (&raw mut (*this).remote[c]).write(Padded(Remote::new()));
            }
        }
        debug_assert_eq!(slot, Self::bytes(g, budget));
        this
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
                if GO.shares_lines(c) {
                    assert_eq!(cap, 0);
                    continue;
                }
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
        assert_eq!(
            Classes::<spin::relax::Spin>::bytes(&GO, small),
            Classes::<spin::relax::Spin>::SLOTS_OFF
        );
    }
}
