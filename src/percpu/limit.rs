//! Stack limits that grow where a class's batches outgrow its stack. The
//! stacks of the layout the restartable sequences address
//! ([`CacheLayout::GO`](super::CacheLayout) where they are compiled in) hold
//! `cap(c)` objects at first and up to `max(c)` once grown: tcmalloc's
//! dynamic per-CPU capacity, grown on the evidence gperftools' thread caches
//! use. See [`super`] for the tier.
//!
//! **Why.** A program that frees a batch larger than a stack and then
//! allocates it again (glibc's `bench-malloc-simple` with 1,600 objects, a
//! parser's nodes, a request's buffers) sends the batch through central
//! twice per round, under its lock. A stack as large as the batch keeps it
//! on the CPU. Making every stack that large would let one CPU strand
//! 512 KiB per class, so a stack grows only where such round trips happen,
//! all growth on one CPU draws on one budget ([`GROWTH_BYTES`]), and a class
//! that goes idle gives its growth back.
//!
//! **Words** (the header of the layout, per class): the *limit word*, before
//! the stack word, holds the limit in its low 32 bits (what a push section
//! compares the length against), the pops count when the stack last ran
//! dry (24 bits) and the overflows since then (8 bits). The *slots pointer*,
//! after the stack word, is the address of the stack's slot 0. The *seen
//! word* holds the pops count the last idle check saw. All are 0 in a fresh
//! cache: a limit of 0 fails every push, and the failed push's slow path
//! settles the stack (pointer, then limit at `cap(c)`), so no pass over
//! every class's words runs at set-up.
//!
//! **Policy.**
//! * *Grow* when a stack runs dry (a refill) after [`MIN_OVERFLOWS_TO_GROW`]
//!   or more overflows (flushes) since it last ran dry, all within a round
//!   trip (at most twice its limit and a batch popped since then): raise the
//!   limit by one batch per such overflow, up to `max(c)`. That is a batch
//!   too large for the stack, freed and allocated again. A random walk of
//!   frees and mallocs (a server's steady state) rarely crosses a whole stack
//!   twice and back that fast, and a stack that only fills (a consumer's) or
//!   only empties (a producer's) never does.
//! * *Move* first, if the limit is to pass `cap(c)`: a stack starts in
//!   slots packed with the other classes', and moves, once, to its own
//!   `max(c)` slots (the pointer changes, in a section that commits only if
//!   the stack is empty), so that a class that never grows costs no page of
//!   slots it does not use.
//! * *Shrink* by one batch at every [`OVERFLOWS_TO_SHRINK`]-th overflow since
//!   the stack last ran dry, not below `cap(c)` nor below the length.
//! * *Reclaim*, when the budget has no room for a growth: from other classes
//!   that grew and are idle, their objects above `cap(c)` to central and
//!   their limits down; then grow as far as the budget allows.
//! * *Shed* at the CPU's decay ticks (every 4,096th malloc of a class on
//!   it): a class that grew and had no malloc on the CPU since the previous
//!   tick is idle, and is reclaimed.
//!
//! **Bound.** The cache head's `grown` is always at least `Σ (limit(c) −
//! cap(c)) · size(c)` and at most [`GROWTH_BYTES`]: a grow reserves its
//! bytes before it raises the limit, a shrink lowers the limit before it
//! gives them back, and neither goes below the length it reads. So one
//! CPU's stacks hold at most `CACHE_BOUND_BYTES` (plus, while a shrink races
//! a push on the same CPU, that push's object).
//!
//! **Concurrency.** Limit and seen words and the budget change by atomic
//! operations from whichever thread runs the slow path (one that moved to
//! another CPU meanwhile changes the CPU it read, inside that CPU's
//! accounting); the sections only read them. A push that read the old limit
//! commits against it: after a grow that is merely conservative, after a
//! shrink it is the race above. The slots pointer goes 0 → start (a
//! compare-and-swap when settling, before the limit is published with
//! Release) → grown (the relocating section, on the CPU itself), never back;
//! a limit passes `cap(c)` only once the pointer is at the grown slots. So no
//! limit ever exceeds the slots of the stack the pointer names, which is what
//! the sections' slot writes rely on.

use super::cache::{AtomicWord, CpuCache, GROWTH_BYTES};
use super::word::Word;
use crate::sizeclass::SizeClass;
use crate::sync::atomic::{AtomicUsize, Ordering};

/// Overflows since a grown stack last ran dry that lower its limit by one
/// batch.
pub(crate) const OVERFLOWS_TO_SHRINK: usize = 3;

/// Fewest overflows since a stack last ran dry that let it grow.
pub(crate) const MIN_OVERFLOWS_TO_GROW: usize = 2;

/// A limit word, unpacked (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Limit {
    /// Objects the stack may hold; 0 = not settled yet (`cap(c)`).
    limit: usize,
    /// The stack word's pops count when the stack last ran dry, modulo
    /// 2^[`Limit::POPS_BITS`].
    pops: usize,
    /// Overflows since the stack last ran dry, stopping at
    /// [`Limit::MAX_OVERFLOWS`] (a stack that only overflows: a consumer's).
    overflows: usize,
}

impl Limit {
    const POPS_SHIFT: u32 = 32;
    const POPS_BITS: u32 = 24;
    const OVERFLOWS_SHIFT: u32 = Self::POPS_SHIFT + Self::POPS_BITS;
    const LIMIT_MASK: Word = (1 << Self::POPS_SHIFT) - 1;
    const POPS_MASK: Word = (1 << Self::POPS_BITS) - 1;
    const MAX_OVERFLOWS: usize = (1 << (Word::BITS - Self::OVERFLOWS_SHIFT)) - 1;

    const fn unpack(w: Word) -> Limit {
        Limit {
            limit: w & Self::LIMIT_MASK,
            pops: (w >> Self::POPS_SHIFT) & Self::POPS_MASK,
            overflows: w >> Self::OVERFLOWS_SHIFT,
        }
    }

    const fn pack(self) -> Word {
        self.limit
            | (self.pops & Self::POPS_MASK) << Self::POPS_SHIFT
            | self.overflows << Self::OVERFLOWS_SHIFT
    }
}

/// Reserves `bytes` of `budget`; false if that would pass [`GROWTH_BYTES`].
fn reserve(budget: &AtomicUsize, bytes: usize) -> bool {
    budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |g| {
            (g + bytes <= GROWTH_BYTES).then_some(g + bytes)
        })
        .is_ok()
}

impl CpuCache<'_> {
    /// Class `c`'s limit: what a push section compares the length against
    /// (0 until settled).
    #[cfg(test)]
    pub(crate) fn limit(&self, c: SizeClass) -> usize {
        Limit::unpack(self.limit_word(c).load(Ordering::Relaxed)).limit
    }

    /// Settles class `c`'s stack if it was not settled yet: its slots
    /// pointer at the stack it starts with, then its limit at its capacity
    /// (Release: a section that reads the limit finds the pointer). Whether
    /// it was not (so a push that failed may have failed on that).
    pub(crate) fn settle_limit(&self, c: SizeClass) -> bool {
        let w: &AtomicWord = self.limit_word(c);
        if w.load(Ordering::Acquire) != 0 {
            return false;
        }
        // Failing means another thread settled it meanwhile: settled either
        // way. The pointer only ever goes 0 -> start -> grown.
        let _ = self.slots_word(c).compare_exchange(
            0,
            self.start_slots(c),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let _ = w.compare_exchange(
            0,
            self.layout().cap(c),
            Ordering::Release,
            Ordering::Relaxed,
        );
        true
    }

    /// Class `c`'s stack ran dry (a refill of `size`-byte objects), its
    /// word's pops count at `pops`: grows its limit after a round trip (see
    /// the module docs), moving the stack first with `relocate` and taking
    /// budget back with `reclaim` (each at most once) where needed. Either
    /// way, starts the next round trip here. Whether the limit rose.
    pub(crate) fn grow_limit(
        &self,
        c: SizeClass,
        size: usize,
        pops: u64,
        relocate: impl FnOnce() -> bool,
        reclaim: impl FnOnce(usize),
    ) -> bool {
        let layout = self.layout();
        let (cap, max, step) = (layout.cap(c), layout.max(c), layout.batch(c));
        let pops = pops as usize & Limit::POPS_MASK;
        let w = self.limit_word(c);
        let mut relocate = Some(relocate);
        let mut reclaim = Some(reclaim);
        let mut old = w.load(Ordering::Relaxed);
        loop {
            let l = Limit::unpack(old);
            if l.limit == 0 {
                return false; // not settled
            }
            let popped = pops.wrapping_sub(l.pops) & Limit::POPS_MASK;
            let round_trip = l.overflows >= MIN_OVERFLOWS_TO_GROW && popped <= 2 * (l.limit + step);
            // As many of the batches as the slots and the budget allow.
            let mut limit = if round_trip {
                (l.limit + l.overflows * step).min(max)
            } else {
                l.limit
            };
            if limit > cap && !self.has_grown_slots(c) {
                // Past `cap` only in the grown slots.
                let moved = relocate.take().is_some_and(|f| f());
                if !moved && !self.has_grown_slots(c) {
                    limit = l.limit.min(cap);
                }
            }
            // The objects the limit rises by, as many as the budget has room
            // for; when it has none, after taking it back from other classes
            // (once).
            let mut more = limit.saturating_sub(l.limit);
            if more > 0 && !reserve(self.grown(), more * size) {
                if let Some(f) = reclaim.take() {
                    f(more * size);
                }
                while more > 0 && !reserve(self.grown(), more * size) {
                    more /= 2;
                }
            }
            let (limit, bytes) = (l.limit + more, more * size);
            let new = Limit {
                limit,
                pops,
                overflows: 0,
            };
            match w.compare_exchange(old, new.pack(), Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return bytes > 0,
                Err(now) => {
                    if bytes > 0 {
                        self.grown().fetch_sub(bytes, Ordering::Relaxed);
                    }
                    old = now;
                }
            }
        }
    }

    /// Lowers class `c`'s grown limit as far as its length allows, not
    /// below its capacity (its objects above the capacity went back to
    /// central just before: [`super::Caches`]' reclaim), giving the bytes
    /// back to the budget; how many.
    pub(crate) fn lower_limit(&self, c: SizeClass, size: usize) -> usize {
        let cap = self.layout().cap(c);
        self.update_limit(c, size, |l| {
            // The length masks a drain's STOP bit off.
            let limit = cap.max(self.word(c).len()).min(l.limit);
            (l.limit > cap && limit < l.limit).then_some(Limit { limit, ..l })
        })
    }

    /// Replaces class `c`'s limit word by what `f` makes of it (nothing if
    /// `f` says `None`), a limit no higher than before, and gives the bytes
    /// of the `size`-byte objects it came down by back to the budget; those
    /// bytes.
    fn update_limit(
        &self,
        c: SizeClass,
        size: usize,
        mut f: impl FnMut(Limit) -> Option<Limit>,
    ) -> usize {
        // `f` reads the stack's length, so its last answer (the one stored) is
        // kept rather than asked again.
        let mut stored = None;
        let Ok(old) = self
            .limit_word(c)
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                stored = f(Limit::unpack(w));
                stored.map(Limit::pack)
            })
        else {
            return 0;
        };
        let (old, new) = (Limit::unpack(old), stored.expect("the update stored it"));
        debug_assert!(new.limit <= old.limit);
        let freed = (old.limit - new.limit) * size;
        if freed > 0 {
            self.grown().fetch_sub(freed, Ordering::Relaxed);
        }
        freed
    }

    /// Whether class `c` had no malloc on this CPU since the last idle
    /// check saw it ([`CpuCache::mark_seen`]); a class never seen is not
    /// idle.
    pub(crate) fn idle(&self, c: SizeClass) -> bool {
        self.seen_word(c).load(Ordering::Relaxed) == self.word(c).pops() as Word
    }

    /// Records class `c`'s pops count for the next idle check.
    pub(crate) fn mark_seen(&self, c: SizeClass) {
        self.seen_word(c)
            .store(self.word(c).pops() as Word, Ordering::Relaxed);
    }

    /// Whether class `c`'s limit is above its capacity.
    pub(crate) fn has_grown(&self, c: SizeClass) -> bool {
        Limit::unpack(self.limit_word(c).load(Ordering::Relaxed)).limit > self.layout().cap(c)
    }

    /// Whether class `c`'s stack has moved to its grown slots (for good).
    fn has_grown_slots(&self, c: SizeClass) -> bool {
        let p = self.slots_word(c).load(Ordering::Relaxed);
        p != 0 && Some(p) == self.grown_slots(c)
    }

    /// Class `c`'s stack overflowed (a flush of `size`-byte objects): counts
    /// the overflow, and every [`OVERFLOWS_TO_SHRINK`]-th one since the
    /// stack last ran dry lowers a grown limit by one batch, giving its
    /// bytes back to the budget.
    pub(crate) fn note_overflow(&self, c: SizeClass, size: usize) {
        let layout = self.layout();
        let (cap, step) = (layout.cap(c), layout.batch(c));
        self.update_limit(c, size, |l| {
            if l.limit == 0 {
                return None; // not settled: nothing to count against
            }
            let overflows = (l.overflows + 1).min(Limit::MAX_OVERFLOWS);
            let mut limit = l.limit;
            if l.limit > cap && overflows.is_multiple_of(OVERFLOWS_TO_SHRINK) {
                // The length masks a drain's STOP bit off.
                let len = self.word(c).len().min(l.limit);
                limit = (l.limit - step).max(cap).max(len);
            }
            Some(Limit {
                limit,
                overflows,
                ..l
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::percpu::cache::{CacheLayout, CLASS_CACHE_BYTES, GROWN_CLASS_BYTES};
    use crate::sizeclass::Geometry;

    static GROWING: CacheLayout =
        CacheLayout::growing(&Geometry::GO, CLASS_CACHE_BYTES, GROWN_CLASS_BYTES);

    /// A zeroed cache of [`GROWING`], leaked (tests only).
    fn cache() -> CpuCache<'static> {
        let l = std::alloc::Layout::from_size_align(GROWING.stride(), 64).unwrap();
        // SAFETY: a non-zero size.
        let mem = unsafe { std::alloc::alloc_zeroed(l) };
        assert!(!mem.is_null());
        // SAFETY: one zeroed cache of the layout, never freed.
        unsafe { CpuCache::at(mem, 0, &GROWING) }
    }

    fn class(size: usize) -> SizeClass {
        (1..Geometry::GO.count)
            .filter_map(SizeClass::new)
            .find(|&c| Geometry::GO.size(c) == size)
            .unwrap()
    }

    #[test]
    fn limit_word_round_trips() {
        for l in [
            Limit {
                limit: 0,
                pops: 0,
                overflows: 0,
            },
            Limit {
                limit: 2048,
                pops: Limit::POPS_MASK,
                overflows: Limit::MAX_OVERFLOWS,
            },
        ] {
            assert_eq!(Limit::unpack(l.pack()), l);
        }
    }

    /// What the sections' relocation does, by hand (no CPU to run on).
    fn relocate(cache: &CpuCache<'_>, c: SizeClass) -> bool {
        assert_eq!(cache.word(c).len(), 0, "only an empty stack moves");
        let to = cache.grown_slots(c).unwrap();
        cache
            .slots_word(c)
            .compare_exchange(
                cache.start_slots(c),
                to,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Unsettled until the first slow path. A stack that overflowed and ran
    /// dry again within a round trip grows by a batch per overflow, moving
    /// to its grown slots; one that ran dry without overflowing, or slowly,
    /// keeps its limit; every third overflow since it last ran dry gives a
    /// batch back, never below the capacity or the length.
    #[test]
    fn limits_grow_on_round_trips_and_shrink_on_overflows() {
        let cache = cache();
        let c = class(256);
        let (cap, max, step) = (GROWING.cap(c), GROWING.max(c), GROWING.batch(c));
        assert_eq!((cap, max, step), (64, 2048, 32));
        assert_eq!(
            (cache.limit(c), cache.slots_word(c).load(Ordering::Relaxed)),
            (0, 0)
        );
        assert!(
            !cache.grow_limit(c, 256, 0, || unreachable!(), |_| unreachable!()),
            "unsettled"
        );
        assert!(cache.settle_limit(c));
        assert!(!cache.settle_limit(c), "settled once");
        assert_eq!(cache.limit(c), cap);
        assert_eq!(
            cache.slots_word(c).load(Ordering::Relaxed),
            cache.start_slots(c)
        );
        let budget = |cache: &CpuCache<'_>| cache.grown().load(Ordering::Relaxed);

        // Ran dry with no overflow since: nothing says a larger stack helps.
        assert!(!cache.grow_limit(c, 256, 100, || unreachable!(), |_| unreachable!()));
        // Five overflows at the capacity count, and give nothing back.
        for _ in 0..5 {
            cache.note_overflow(c, 256);
        }
        assert_eq!(cache.limit(c), cap);
        // Dry again after 2 · (64 + 32) pops: a round trip; five batches more.
        assert!(cache.grow_limit(
            c,
            256,
            100 + 192,
            || relocate(&cache, c),
            |_| unreachable!()
        ));
        assert_eq!(cache.limit(c), cap + 5 * step);
        assert_eq!(
            Some(cache.slots_word(c).load(Ordering::Relaxed)),
            cache.grown_slots(c)
        );
        assert_eq!(budget(&cache), 5 * step * 256);

        // Overflows, then dry only after more pops than a round trip: no growth.
        cache.note_overflow(c, 256);
        cache.note_overflow(c, 256);
        let far = 292 + 2 * (cache.limit(c) + step) + 1;
        assert!(!cache.grow_limit(c, 256, far as u64, || unreachable!(), |_| unreachable!()));
        assert_eq!(cache.limit(c), cap + 5 * step);
        // One overflow in a round trip is a random walk's: no growth either.
        cache.note_overflow(c, 256);
        assert!(!cache.grow_limit(
            c,
            256,
            far as u64 + 1,
            || unreachable!(),
            |_| unreachable!()
        ));
        assert_eq!(cache.limit(c), cap + 5 * step);

        // Every third overflow gives a batch back.
        for i in 1..=3 * OVERFLOWS_TO_SHRINK {
            cache.note_overflow(c, 256);
            assert_eq!(
                cache.limit(c),
                cap + 5 * step - i / OVERFLOWS_TO_SHRINK * step
            );
        }
        assert_eq!(
            budget(&cache),
            (cache.limit(c) - cap) * 256,
            "the budget follows"
        );
        // A stack holding more than a batch below its limit shrinks only to its length.
        let n = cache.limit(c) - 5;
        cache.stack_word(c).store(n, Ordering::Relaxed);
        for _ in 0..OVERFLOWS_TO_SHRINK {
            cache.note_overflow(c, 256);
        }
        assert_eq!(cache.limit(c), n);
        assert_eq!(budget(&cache), (n - cap) * 256);
        cache.stack_word(c).store(0, Ordering::Relaxed);
        // And never below the capacity.
        for _ in 0..100 * OVERFLOWS_TO_SHRINK {
            cache.note_overflow(c, 256);
        }
        assert_eq!((cache.limit(c), budget(&cache)), (cap, 0));
    }

    /// A stack that cannot move (not empty) keeps its capacity as limit.
    #[test]
    fn a_stack_grows_only_where_it_moved() {
        let cache = cache();
        let c = class(64);
        cache.settle_limit(c);
        cache.note_overflow(c, 64);
        cache.note_overflow(c, 64);
        let mut asked = false;
        assert!(!cache.grow_limit(
            c,
            64,
            0,
            || {
                asked = true;
                false
            },
            |_| unreachable!()
        ));
        assert!(asked, "a round trip asks the stack to move");
        assert_eq!(cache.limit(c), GROWING.cap(c));
        assert_eq!(cache.grown().load(Ordering::Relaxed), 0);
        assert_eq!(
            cache.slots_word(c).load(Ordering::Relaxed),
            cache.start_slots(c)
        );
    }

    /// All classes together grow no further than the budget, each within its
    /// slots.
    #[test]
    fn growth_shares_one_budget() {
        let cache = cache();
        for c in GROWING.small_classes() {
            cache.settle_limit(c);
            if cache.grown_slots(c).is_none() {
                continue;
            }
            for _ in 0..100 {
                for _ in 0..Limit::MAX_OVERFLOWS + 1 {
                    cache.note_overflow(c, Geometry::GO.size(c));
                }
                cache.grow_limit(c, Geometry::GO.size(c), 0, || relocate(&cache, c), |_| {});
            }
        }
        let grown: usize = GROWING
            .small_classes()
            .map(|c| (cache.limit(c) - GROWING.cap(c)) * Geometry::GO.size(c))
            .sum();
        assert_eq!(grown, cache.grown().load(Ordering::Relaxed));
        assert!(
            grown <= GROWTH_BYTES && grown > GROWTH_BYTES * 3 / 4,
            "{grown}"
        );
        assert!(GROWING
            .small_classes()
            .all(|c| cache.limit(c) <= GROWING.max(c)));
    }
}
