//! One CPU's cache ([`CpuCache`]): its layout, its bounds, and the
//! operations on it by whoever has it to itself. See [`super`] for the tier
//! and [`super::word`] for the words' formats.
//!
//! **Layout** ([`CacheLayout`]). A cache is the tiny word, a few counters,
//! then for every size class its stack word followed by its `capacity(c)`
//! slots, so a pop or a push finds both from one address and touches one or
//! two adjacent lines. Where the stacks grow (the layout the restartable
//! sequences address, [`super::limit`]), the stack words sit in a header
//! with each class's limit word and slots pointer, and the slots follow the
//! header. The restartable sequences address the words by the byte offsets
//! below ([`TINY_FIELD`], [`word_field`]) and step from one CPU's cache to
//! the next by [`STRIDE`].
//!
//! **Bound on stranded memory.** Class `c` holds at most [`capacity`]`(c)`
//! objects, `clamp(CLASS_CACHE_BYTES / size, 2, MAX_CAPACITY)`, plus what its
//! limit grew by; all growth on one CPU is at most [`GROWTH_BYTES`]. So one
//! CPU holds at most [`CACHE_BOUND_BYTES`] (about 1.3 MiB, and 512 KiB more
//! where stacks grow) of free objects; `Heap::scavenge` drains it.
//!
//! Invariants (guarded by the CPU's exclusivity, or committed by one store):
//! * `len(c) <= limit(c) <= max(c)`, the limit being `capacity(c)` where
//!   stacks do not grow (a shrinking limit may pass under a length, never
//!   the slots: see [`super::limit`]); the stack's first `len(c)` slots are
//!   free objects of class `c`, each handed out by its span (alloc bit set);
//! * if the tiny word names a block, that block's live count is the tiny
//!   allocator's bias plus the live sub-objects minus the `n` carved so far
//!   (see `heap::tiny`).

use crate::sizeclass::{Geometry, SizeClass, NUM_CLASSES};
use crate::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::word::{StackWord, Tiny, Word};

/// A cache word, written by one CPU at a time and read racily by others.
pub(crate) type AtomicWord = AtomicUsize;

/// Bytes of objects a class's stack is sized for in a heap whose source
/// says nothing else ([`crate::PageSource::CACHE_BYTES`]'s default).
pub(crate) const CLASS_CACHE_BYTES: usize = 16 * 1024;
/// Most objects any class's stack holds.
pub(crate) const MAX_CAPACITY: usize = 128;
/// Fewest objects any class's stack holds.
pub(crate) const MIN_CAPACITY: usize = 2;
/// Bytes of objects a class's stack may grow to hold ([`super::limit`]), in
/// a layout that grows ([`CacheLayout::GO`] where the sections are compiled
/// in).
pub(crate) const GROWN_CLASS_BYTES: usize = 512 * 1024;
/// Most objects a grown stack holds.
pub(crate) const MAX_GROWN_CAPACITY: usize = 2048;

/// Where each class's stack lies in a cache, and how many objects it holds:
/// a function of the heap's geometry and its source's
/// [`CACHE_BYTES`](crate::PageSource::CACHE_BYTES), computed at compile time
/// (a heap reads it through an associated constant, so offsets and
/// capacities fold into immediates as if they were literals).
///
/// Class `c` (`1 <= c < classes`) holds `cap(c) = clamp(class_bytes /
/// size(c), MIN_CAPACITY, MAX_CAPACITY)` objects (0 if the heap serves it
/// from another class: [`CacheLayout::serving`]); its stack word is word
/// `at[c]` after the cache's head, its slots the `cap(c)` words after that.
/// Classes at and past `classes` have no stack and no word (`cap == 0`);
/// nothing asks for them, since the geometry never hands them out.
///
/// A layout that grows ([`CacheLayout::growing`], [`super::limit`]) is
/// arranged otherwise, so that a class whose stack never grows costs the
/// pages it costs in one that does not:
/// * a header of four words per class: the limit word, the stack word
///   (`at[c]`), the slots pointer (the address of the stack's slot 0), and
///   the pops count the last idle check saw;
/// * the stacks as they start, `cap(c)` slots each from `slots_at[c]`,
///   one after another as above;
/// * the grown stacks, `max(c) = clamp(grown_bytes / size(c), cap(c),
///   MAX_GROWN_CAPACITY)` slots each from `grown_at[c]`, which a stack
///   moves to (the slots pointer changes, once) when its limit first
///   passes `cap(c)`. Their pages are touched only by stacks that grew.
///
/// Elsewhere `max(c) == cap(c)`, and there are no limit words or pointers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CacheLayout {
    /// One past the last class with a stack (the geometry's `count`).
    classes: usize,
    cap: [u16; NUM_CLASSES],
    /// Slots of each stack: at least `cap`.
    max: [u16; NUM_CLASSES],
    /// Whether the stacks grow: each stack word has a limit word before it
    /// and a slots pointer after it.
    grows: bool,
    /// Word index (after the head) of each class's stack word.
    at: [u16; NUM_CLASSES],
    /// Word index of each class's first slot as the stack starts.
    slots_at: [u16; NUM_CLASSES],
    /// In a layout that grows, word index of each class's grown stack
    /// (`max(c)` slots, if more than `cap(c)`).
    grown_at: [u16; NUM_CLASSES],
    /// 32-bit targets: the word after the stacks where the carries begin.
    #[cfg(not(target_pointer_width = "64"))]
    carries_at: usize,
    /// Bytes from one cache to the next: the head and every word, rounded to
    /// a cache line (so that caches never share one).
    stride: usize,
    /// `Σ cap(c) · size(c)`: the most free memory one cache holds.
    bound: usize,
}

/// Which layout a heap's caches have, as a constant of a type (the heap's
/// source): `FIXED` is `Some` layout for every heap of the type, or `None`
/// for the one [`super::Slabs::install`] was given (computed at set-up from
/// the source's bound). A constant of the type, not a value passed along,
/// so that with `Some` every offset is an immediate wherever the code runs.
pub(crate) trait Shape {
    /// The layout, if it is the same for every heap of the type.
    const FIXED: Option<&'static CacheLayout>;
}

/// Bytes each class's stack is sized for in a heap over a source bounded by
/// `bound` bytes whose caches are sized at set-up ([`Shape::FIXED`] `None`): a
/// 512th of the source per class, between [`MIN_CLASS_CACHE_BYTES`] and
/// [`CLASS_CACHE_BYTES`]: a few objects of a class in a 64 KiB region (each
/// slot is metadata carved from the region); from 8 MiB on the unbounded
/// heaps' cache.
pub(crate) const fn class_cache_bytes(bound: Option<usize>) -> usize {
    match bound {
        None => CLASS_CACHE_BYTES,
        Some(b) => {
            let n = b / 512;
            if n < MIN_CLASS_CACHE_BYTES {
                MIN_CLASS_CACHE_BYTES
            } else if n > CLASS_CACHE_BYTES {
                CLASS_CACHE_BYTES
            } else {
                n
            }
        }
    }
}

/// Fewest bytes a class's stack is sized for ([`class_cache_bytes`]).
pub(crate) const MIN_CLASS_CACHE_BYTES: usize = 64;

impl CacheLayout {
    /// The layout of heaps on Go's geometry over unbounded sources: the only
    /// one the restartable sequences address.
    pub(crate) const GO: CacheLayout = CacheLayout::unbounded(&Geometry::GO);

    /// The layout of a heap on geometry `g` over an unbounded source: stacks
    /// sized for [`CLASS_CACHE_BYTES`], which grow where the restartable
    /// sequences are compiled in (their slow paths are what grows them).
    pub(crate) const fn unbounded(g: &Geometry) -> CacheLayout {
        if cfg!(rseq) {
            Self::growing(g, CLASS_CACHE_BYTES, GROWN_CLASS_BYTES)
        } else {
            Self::new(g, CLASS_CACHE_BYTES)
        }
    }

    /// The layout for `g` with stacks sized for `class_bytes` each.
    pub(crate) const fn new(g: &Geometry, class_bytes: usize) -> CacheLayout {
        Self::serving(g, class_bytes, None)
    }

    /// [`CacheLayout::new`] with a limit word per stack and slots for up to
    /// `grown_bytes` of objects (see the type).
    pub(crate) const fn growing(
        g: &Geometry,
        class_bytes: usize,
        grown_bytes: usize,
    ) -> CacheLayout {
        Self::build(g, class_bytes, None, grown_bytes)
    }

    /// [`CacheLayout::new`] for a heap that serves class `c` from class
    /// `served[c]` (`heap::state::coarse_classes`): a class served from
    /// another keeps its stack word but no slots, since no object of it
    /// ever reaches a stack.
    pub(crate) const fn serving(
        g: &Geometry,
        class_bytes: usize,
        served: Option<&[u8; NUM_CLASSES]>,
    ) -> CacheLayout {
        Self::build(g, class_bytes, served, 0)
    }

    /// The layout: stacks grow if `grown_bytes` is not 0.
    const fn build(
        g: &Geometry,
        class_bytes: usize,
        served: Option<&[u8; NUM_CLASSES]>,
        grown_bytes: usize,
    ) -> CacheLayout {
        let grows = grown_bytes != 0;
        let mut l = CacheLayout {
            classes: g.count,
            cap: [0; NUM_CLASSES],
            max: [0; NUM_CLASSES],
            grows,
            at: [0; NUM_CLASSES],
            slots_at: [0; NUM_CLASSES],
            grown_at: [0; NUM_CLASSES],
            #[cfg(not(target_pointer_width = "64"))]
            carries_at: 0,
            stride: 0,
            bound: 0,
        };
        let mut i = 1;
        while i < g.count {
            let size = g.rows[i].size as usize;
            let n = class_bytes / size;
            let kept = match served {
                Some(t) => t[i] as usize == i,
                None => true,
            };
            let cap = if !kept {
                0
            } else if n < MIN_CAPACITY {
                MIN_CAPACITY
            } else if n > MAX_CAPACITY {
                MAX_CAPACITY
            } else {
                n
            };
            let grown = grown_bytes / size;
            let max = if !grows || cap == 0 || grown <= cap {
                cap
            } else if grown > MAX_GROWN_CAPACITY {
                MAX_GROWN_CAPACITY
            } else {
                grown
            };
            l.cap[i] = cap as u16;
            l.max[i] = max as u16;
            l.bound += cap * size;
            i += 1;
        }
        let mut words = 0;
        if grows {
            // The header: each class's limit, stack, slots-pointer and seen
            // words together; then the stacks as they start; then the grown
            // ones.
            let mut i = 1;
            while i < g.count {
                l.at[i] = (words + 1) as u16;
                words += 4;
                i += 1;
            }
            let mut i = 1;
            while i < g.count {
                l.slots_at[i] = words as u16;
                words += l.cap[i] as usize;
                i += 1;
            }
            let mut i = 1;
            while i < g.count {
                l.grown_at[i] = words as u16;
                if l.max[i] > l.cap[i] {
                    words += l.max[i] as usize;
                }
                i += 1;
            }
        } else {
            let mut i = 1;
            while i < g.count {
                l.at[i] = words as u16;
                l.slots_at[i] = (words + 1) as u16;
                l.grown_at[i] = (words + 1) as u16;
                words += 1 + l.cap[i] as usize;
                i += 1;
            }
        }
        #[cfg(not(target_pointer_width = "64"))]
        {
            l.carries_at = words;
            words += NUM_CLASSES;
        }
        assert!(words < u16::MAX as usize);
        l.stride = (HEAD_BYTES + words * core::mem::size_of::<Word>()).next_multiple_of(64);
        l
    }

    /// Capacity of class `c`'s stack (0 for [`SizeClass::LARGE`] and for
    /// classes the geometry does not have).
    #[inline(always)]
    pub(crate) const fn cap(&self, c: SizeClass) -> usize {
        self.cap[c.index()] as usize
    }

    /// Slots of class `c`'s stack: the most objects it can hold once grown
    /// ([`CacheLayout::cap`] in a layout that does not grow).
    #[inline(always)]
    pub(crate) const fn max(&self, c: SizeClass) -> usize {
        self.max[c.index()] as usize
    }

    /// Whether each stack has a limit word ([`super::limit`]).
    #[inline(always)]
    #[cfg_attr(not(rseq), allow(dead_code))] // only the sections' layout grows
    pub(crate) const fn grows(&self) -> bool {
        self.grows
    }

    /// Objects moved per refill or flush of class `c`: half its stack, at
    /// least 1 (tcmalloc's `num_objects_to_move`).
    #[inline(always)]
    pub(crate) const fn batch(&self, c: SizeClass) -> usize {
        let b = self.cap(c) / 2;
        if b == 0 {
            1
        } else {
            b
        }
    }

    /// Bytes of one cache (and from one to the next).
    pub(crate) const fn stride(&self) -> usize {
        self.stride
    }

    /// Most bytes of free objects one cache holds.
    #[cfg(test)]
    pub(crate) const fn bound(&self) -> usize {
        self.bound
    }

    /// The classes with a stack.
    pub(crate) fn small_classes(&self) -> impl Iterator<Item = SizeClass> + Clone {
        SizeClass::small_classes().take(self.classes.saturating_sub(1))
    }

    /// Word index (after the head) of class `c`'s stack word.
    #[inline(always)]
    const fn word_at(&self, c: SizeClass) -> usize {
        self.at[c.index()] as usize
    }

    /// [`CacheLayout::word_at`] for the fast paths: no bounds check.
    #[inline(always)]
    fn word_index(&self, c: SizeClass) -> usize {
        // SAFETY: a `SizeClass` index is below NUM_CLASSES (its invariant),
        // the length of `at`.
        unsafe { *self.at.get_unchecked(c.index()) as usize }
    }

    /// Word index of class `c`'s slot 0 as its stack starts.
    #[inline(always)]
    fn slots_index(&self, c: SizeClass) -> usize {
        // SAFETY: as in `word_index`.
        unsafe { *self.slots_at.get_unchecked(c.index()) as usize }
    }

    /// [`CacheLayout::cap`] for the fast paths: no bounds check.
    #[inline(always)]
    fn capacity(&self, c: SizeClass) -> usize {
        // SAFETY: a `SizeClass` index is below NUM_CLASSES (its invariant).
        unsafe { *self.cap.get_unchecked(c.index()) as usize }
    }
}

/// Capacity of class `c`'s stack in a heap on Go's geometry with the
/// default stack bytes (0 for [`SizeClass::LARGE`]).
pub const fn capacity(c: SizeClass) -> usize {
    CacheLayout::GO.cap(c)
}

/// Objects moved per refill or flush of class `c`, in [`capacity`]'s heap.
pub(crate) const fn batch(c: SizeClass) -> usize {
    CacheLayout::GO.batch(c)
}

/// Most bytes of free objects one CPU's cache can hold in a heap on Go's
/// geometry: `Σ capacity(c) · size(c)` over the classes (about 1.3 MiB),
/// plus 512 KiB where the stacks grow to hold batches larger than they
/// start with (rseq mode: feature `linux` on x86-64).
pub const CACHE_BOUND_BYTES: usize = CacheLayout::GO.bound
    + if CacheLayout::GO.grows {
        GROWTH_BYTES
    } else {
        0
    };

/// Bytes of limits above the capacities that one CPU's stacks may have in
/// all, where they grow ([`super::limit`]): room for a 1,600-object batch
/// of 256 bytes (400 KiB, glibc's `bench-malloc-simple`) with the rest to
/// spare, and less than half the capacities' own bound.
pub(crate) const GROWTH_BYTES: usize = 512 << 10;

/// Per-CPU event counters (besides the per-class malloc counts packed in the
/// stack words).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum TinyEvent {
    /// Tiny sub-objects carved from blocks this CPU has retired.
    MallocsRetired = 0,
    /// Tiny sub-objects freed.
    Frees = 1,
    /// Tiny blocks (tiny-class objects) taken.
    BlocksTaken = 2,
    /// Tiny blocks given back.
    BlocksFreed = 3,
}

impl TinyEvent {
    /// Every counter, in field order.
    pub(crate) const ALL: [TinyEvent; NUM_TINY_EVENTS] = [
        TinyEvent::MallocsRetired,
        TinyEvent::Frees,
        TinyEvent::BlocksTaken,
        TinyEvent::BlocksFreed,
    ];
}

/// Number of [`TinyEvent`]s.
pub(crate) const NUM_TINY_EVENTS: usize = 4;

/// The tiny state ([`Tiny`], packed): one word on 64-bit targets, which the
/// restartable sequences address; on 32-bit targets its low and high
/// halves, written only under the CPU slot (32-bit targets have no
/// restartable sequences), so the pair never needs to be atomic.
#[repr(C)]
struct TinyCell {
    #[cfg(target_pointer_width = "64")]
    word: AtomicU64,
    #[cfg(not(target_pointer_width = "64"))]
    halves: [AtomicWord; 2],
}

impl TinyCell {
    #[inline(always)]
    fn load(&self) -> u64 {
        #[cfg(target_pointer_width = "64")]
        return self.word.load(Ordering::Relaxed);
        #[cfg(not(target_pointer_width = "64"))]
        return self.halves[0].load(Ordering::Relaxed) as u64
            | (self.halves[1].load(Ordering::Relaxed) as u64) << 32;
    }

    /// Stores `w`; the caller has the cache to itself.
    #[inline(always)]
    fn store(&self, w: u64) {
        #[cfg(target_pointer_width = "64")]
        self.word.store(w, Ordering::Relaxed);
        #[cfg(not(target_pointer_width = "64"))]
        {
            self.halves[0].store(w as Word, Ordering::Relaxed);
            self.halves[1].store((w >> 32) as Word, Ordering::Relaxed);
        }
    }
}

/// The fixed head of one CPU's cache: the tiny word and the counters. The
/// stacks follow it ([`CacheLayout`]). All-zero bytes are a valid empty
/// cache. Every field is a word the restartable sequences address by offset
/// (on 64-bit targets).
#[repr(C)]
pub(crate) struct CacheHead {
    /// The current tiny block, packed ([`Tiny`]); 0 = none.
    tiny: TinyCell,
    counters: [AtomicU64; NUM_TINY_EVENTS],
    /// Bytes of limits above the capacities ([`super::limit`]).
    grown: AtomicUsize,
}

/// Bytes of a cache's head; the stack words start here.
const HEAD_BYTES: usize = core::mem::size_of::<CacheHead>();

/// One CPU's cache, as its head and the words after it: per class `c` at
/// [`CacheLayout`]'s `at[c]`, the stack word ([`StackWord`]), then the
/// stack's `cap(c)` slots, bottom first (object addresses); on 32-bit
/// targets then, per class, the wraps of the stack word's 16-bit pops field
/// (mallocs = carries · 2^16 + pops).
///
/// Invariant: `base` is the cache's first byte (`head` is there, the
/// layout's words right after it), all inside one block that lives for `'a`.
#[derive(Clone, Copy)]
pub(crate) struct CpuCache<'a> {
    head: &'a CacheHead,
    base: *const u8,
    layout: &'a CacheLayout,
}

/// Bytes between consecutive CPU caches of the layout the sections address
/// (a constant, so that they multiply by an immediate).
#[cfg_attr(not(rseq), allow(dead_code))] // the layout the sections address
pub(crate) const STRIDE: usize = CacheLayout::GO.stride;

/// Byte offset of the tiny word in a cache.
#[cfg_attr(not(rseq), allow(dead_code))] // the layout the sections address
pub(crate) const TINY_FIELD: usize = core::mem::offset_of!(CacheHead, tiny);

/// Byte offset of counter `k` in a cache.
#[cfg_attr(not(rseq), allow(dead_code))] // the layout the sections address
pub(crate) const fn counter_field(k: TinyEvent) -> usize {
    core::mem::offset_of!(CacheHead, counters) + core::mem::size_of::<AtomicU64>() * k as usize
}

/// Byte offset of class `c`'s stack word in a cache of [`CacheLayout::GO`].
#[cfg_attr(not(rseq), allow(dead_code))] // the layout the sections address
pub(crate) const fn word_field(c: SizeClass) -> usize {
    HEAD_BYTES + core::mem::size_of::<Word>() * CacheLayout::GO.word_at(c)
}

impl<'a> CpuCache<'a> {
    /// Cache `i` of the caches of layout `layout` at `base`.
    ///
    /// # Safety
    /// `base` is 64-byte aligned and points to more than `i` caches of
    /// `layout` (`stride()` bytes each), initialised (all-zero bytes are),
    /// that live for `'a` and are only accessed through atomics.
    #[inline(always)]
    pub(crate) unsafe fn at(base: *mut u8, i: usize, layout: &'a CacheLayout) -> Self {
        // SAFETY: the caller's promise: cache `i` lies inside the block, its
        // head first, its words right after.
        unsafe {
            let p = base.add(i * layout.stride);
            CpuCache {
                head: &*p.cast::<CacheHead>(),
                base: p,
                layout,
            }
        }
    }

    /// Word `w` after the head.
    #[inline(always)]
    fn word_ref(&self, w: usize) -> &'a AtomicWord {
        // SAFETY: callers pass indices below the layout's word count (the
        // type's invariant puts them all inside the cache, after the head).
        unsafe {
            &*self
                .base
                .add(HEAD_BYTES + w * core::mem::size_of::<Word>())
                .cast::<AtomicWord>()
        }
    }

    /// Slot `i` of class `c`'s stack where it starts: where it always is in
    /// locked mode, whose stacks never move (their limits never grow).
    #[inline(always)]
    fn slot(&self, c: SizeClass, i: usize) -> &'a AtomicWord {
        debug_assert!(!c.is_large() && i < self.layout.cap(c));
        debug_assert!(
            !self.layout.grows || {
                let p = self.slots_word(c).load(Ordering::Relaxed);
                p == 0 || p == self.start_slots(c)
            },
            "a stack that moved is reached through its slots pointer"
        );
        // `c` is a small class and `i < cap(c)` (callers keep `len <= cap`),
        // so the index is inside class `c`'s stack.
        self.word_ref(self.layout.slots_index(c) + i)
    }

    /// Slot `i` of class `c`'s stack wherever it is: through its slots
    /// pointer once set (rseq mode: the stack may have moved to its grown
    /// slots, `super::limit`), else where it starts.
    #[inline(always)]
    fn slot_anywhere(&self, c: SizeClass, i: usize) -> &'a AtomicWord {
        debug_assert!(!c.is_large() && i < self.layout.max(c));
        if self.layout.grows {
            let p = self.slots_word(c).load(Ordering::Relaxed);
            if p != 0 {
                // SAFETY: a set slots pointer is the address of one of the
                // class's two stacks in this cache (`settle_limit`,
                // `Fast::relocate`), and callers keep `i` below its length,
                // which the limit keeps within that stack's slots.
                return unsafe { &*(p as *const AtomicWord).add(i) };
            }
        }
        self.slot(c, i)
    }

    /// Class `c`'s limit word, in a layout that grows.
    #[inline(always)]
    #[cfg_attr(not(rseq), allow(dead_code))] // only the sections' layout grows
    pub(crate) fn limit_word(&self, c: SizeClass) -> &'a AtomicWord {
        debug_assert!(self.layout.grows && !c.is_large() && c.index() < self.layout.classes);
        // A growing layout puts each small class's limit word right before
        // its stack word (word index `at[c] - 1 >= 0`).
        self.word_ref(self.layout.word_index(c) - 1)
    }

    /// Class `c`'s slots pointer (0 until settled), in a layout that grows.
    #[inline(always)]
    pub(crate) fn slots_word(&self, c: SizeClass) -> &'a AtomicWord {
        debug_assert!(self.layout.grows && !c.is_large() && c.index() < self.layout.classes);
        // The word after the stack word, in the header.
        self.word_ref(self.layout.word_index(c) + 1)
    }

    /// Class `c`'s seen word (the pops count the last idle check saw), in a
    /// layout that grows.
    #[inline(always)]
    #[cfg_attr(not(rseq), allow(dead_code))] // only the sections' layout grows
    pub(crate) fn seen_word(&self, c: SizeClass) -> &'a AtomicWord {
        debug_assert!(self.layout.grows && !c.is_large() && c.index() < self.layout.classes);
        // Two words after the stack word, in the header.
        self.word_ref(self.layout.word_index(c) + 2)
    }

    /// The address of class `c`'s stack as it starts.
    #[inline(always)]
    #[cfg_attr(not(rseq), allow(dead_code))] // only the sections' layout grows
    pub(crate) fn start_slots(&self, c: SizeClass) -> Word {
        self.word_ref(self.layout.slots_index(c)) as *const AtomicWord as Word
    }

    /// The address of class `c`'s grown stack (`max(c)` slots), in a layout
    /// that grows; `None` for a class that cannot grow.
    #[inline(always)]
    #[cfg_attr(not(rseq), allow(dead_code))] // only the sections' layout grows
    pub(crate) fn grown_slots(&self, c: SizeClass) -> Option<Word> {
        (self.layout.grows && self.layout.max(c) > self.layout.cap(c)).then(|| {
            self.word_ref(self.layout.grown_at[c.index()] as usize) as *const AtomicWord as Word
        })
    }

    /// The layout.
    #[inline(always)]
    #[cfg_attr(not(rseq), allow(dead_code))] // only the sections' layout grows
    pub(crate) fn layout(&self) -> &'a CacheLayout {
        self.layout
    }

    /// Bytes of limits above the layout's capacities, over every class
    /// ([`super::limit`]).
    #[inline(always)]
    #[cfg_attr(not(rseq), allow(dead_code))] // only the sections' layout grows
    pub(crate) fn grown(&self) -> &'a AtomicUsize {
        &self.head.grown
    }

    /// Class `c`'s stack word.
    #[inline(always)]
    pub(crate) fn stack_word(&self, c: SizeClass) -> &'a AtomicWord {
        debug_assert!(!c.is_large() && c.index() < self.layout.classes);
        self.word_ref(self.layout.word_index(c))
    }

    /// The capacity of class `c`'s stack.
    #[inline(always)]
    fn cap(&self, c: SizeClass) -> usize {
        self.layout.capacity(c)
    }

    /// The tiny word.
    #[inline(always)]
    #[cfg_attr(not(rseq), allow(dead_code))] // the stop protocol's
    #[cfg(target_pointer_width = "64")]
    pub(crate) fn tiny_word(&self) -> &'a AtomicU64 {
        &self.head.tiny.word
    }

    /// 32-bit targets: class `c`'s carries word.
    #[cfg(not(target_pointer_width = "64"))]
    #[inline(always)]
    fn carries(&self, c: SizeClass) -> &'a AtomicWord {
        self.word_ref(self.layout.carries_at + c.index())
    }

    /// TinyEvent `k`'s word.
    #[inline(always)]
    pub(crate) fn counter_word(&self, k: TinyEvent) -> &AtomicU64 {
        &self.head.counters[k as usize]
    }

    /// The stack word of class `c` (a racy read: whole, but maybe stale).
    #[inline(always)]
    pub(crate) fn word(&self, c: SizeClass) -> StackWord {
        StackWord(self.stack_word(c).load(Ordering::Relaxed))
    }

    /// Objects cached for class `c`.
    #[cfg(test)]
    pub(crate) fn len(&self, c: SizeClass) -> usize {
        self.word(c).len()
    }

    /// A counter's value.
    pub(crate) fn counter(&self, k: TinyEvent) -> u64 {
        self.counter_word(k).load(Ordering::Relaxed)
    }

    /// Whether class `c`'s stack holds `p` (a racy read: each slot whole,
    /// the stack maybe changing meanwhile). A class without a stack holds
    /// nothing.
    /// (Feature `hardened`'s slow search.)
    #[cfg(feature = "hardened")]
    pub(crate) fn holds(&self, c: SizeClass, p: *mut u8) -> bool {
        let max = self.layout.max(c);
        if c.is_large() || max == 0 {
            return false;
        }
        // A stopped word's length field reads as over the slots.
        let n = self.word(c).len().min(max);
        (0..n).any(|i| self.slot_anywhere(c, i).load(Ordering::Relaxed) == p as Word)
    }

    /// Mallocs counted by pops of class `c`, cumulative (a racy read).
    pub(crate) fn pops(&self, c: SizeClass) -> u64 {
        let w = self.word(c).pops();
        #[cfg(not(target_pointer_width = "64"))]
        let w = w + ((self.carries(c).load(Ordering::Relaxed) as u64) << StackWord::POPS_BITS);
        w
    }

    /// The tiny state.
    pub(crate) fn tiny(&self) -> Tiny {
        Tiny::unpack(self.head.tiny.load())
    }

    /// Bytes of free objects held.
    #[cfg(test)]
    pub(crate) fn cached_bytes(&self) -> usize {
        self.layout
            .small_classes()
            .map(|c| self.len(c) * Geometry::GO.size(c))
            .sum()
    }

    // Exclusive operations: the caller holds this cache's slot (locked mode)
    // or has stopped it (rseq mode). They keep the same word formats as the
    // sections, and leave the STOP bit as they found it. All but `pop_batch`
    // address the stacks where they start, which is where they stay in
    // locked mode; rseq mode only drains (`pop_batch`).

    /// Pops a free object of class `c`, counting a malloc; with it, whether
    /// that malloc is due a decay tick ([`StackWord::ticks`]).
    #[inline(always)]
    pub(crate) fn pop(&self, c: SizeClass) -> Option<(*mut u8, bool)> {
        let w = self.stack_word(c).load(Ordering::Relaxed);
        let n = StackWord(w).len();
        if n == 0 {
            return None;
        }
        let p = self.slot(c, n - 1).load(Ordering::Relaxed) as *mut u8;
        let next = w.wrapping_add(StackWord::POP_DELTA);
        #[cfg(not(target_pointer_width = "64"))]
        if next < w {
            // The pops field wrapped (32-bit): carry it.
            let carry = self.carries(c);
            carry.store(
                carry.load(Ordering::Relaxed).wrapping_add(1),
                Ordering::Relaxed,
            );
        }
        self.stack_word(c).store(next, Ordering::Relaxed);
        Some((p, StackWord(next).ticks()))
    }

    /// Pushes a free object of class `c`; false if the stack is full.
    #[inline(always)]
    pub(crate) fn push(&self, c: SizeClass, p: *mut u8) -> bool {
        let w = self.stack_word(c).load(Ordering::Relaxed);
        let n = StackWord(w).len();
        if n == self.cap(c) {
            return false;
        }
        self.slot(c, n).store(p as Word, Ordering::Relaxed);
        self.stack_word(c)
            .store(w + StackWord::PUSH_DELTA, Ordering::Relaxed);
        true
    }

    /// Pushes as many of `objs` as fit; returns how many.
    pub(crate) fn push_batch(&self, c: SizeClass, objs: &[*mut u8]) -> usize {
        let w = self.stack_word(c).load(Ordering::Relaxed);
        let n = StackWord(w).len();
        let k = objs.len().min(self.cap(c) - n);
        for (j, &p) in objs[..k].iter().enumerate() {
            self.slot(c, n + j).store(p as Word, Ordering::Relaxed);
        }
        self.stack_word(c).store(w + k, Ordering::Relaxed);
        k
    }

    /// Pops up to `out.len()` objects from the top; returns how many. The
    /// one exclusive operation of rseq mode (a drain), so it finds a stack
    /// that moved.
    pub(crate) fn pop_batch(&self, c: SizeClass, out: &mut [*mut u8]) -> usize {
        let w = self.stack_word(c).load(Ordering::Relaxed);
        let n = StackWord(w).len();
        let k = out.len().min(n);
        for (j, o) in out[..k].iter_mut().enumerate() {
            *o = self.slot_anywhere(c, n - k + j).load(Ordering::Relaxed) as *mut u8;
        }
        self.stack_word(c).store(w - k, Ordering::Relaxed);
        k
    }

    /// Carves `size` bytes at alignment `a` (a power of two) from the tiny
    /// block; null if there is none or it has no room.
    #[inline(always)]
    pub(crate) fn carve(&self, size: usize, a: usize) -> *mut u8 {
        let t = self.tiny();
        let off = t.off.next_multiple_of(a);
        if t.block == 0 || off + size > crate::TINY_ROOM {
            return core::ptr::null_mut();
        }
        let next = Tiny {
            block: t.block,
            off: off + size,
            n: t.n + 1,
        };
        self.head.tiny.store(next.pack());
        (t.block + off) as *mut u8
    }

    /// Stores `new` as the tiny state if it still is `old`.
    pub(crate) fn replace_tiny(&self, old: Tiny, new: Tiny) -> bool {
        if self.head.tiny.load() == old.pack() {
            self.head.tiny.store(new.pack());
            true
        } else {
            false
        }
    }

    /// Adds `delta` to counter `k`.
    #[inline(always)]
    pub(crate) fn add(&self, k: TinyEvent, delta: u64) {
        let f = self.counter_word(k);
        f.store(
            f.load(Ordering::Relaxed).wrapping_add(delta),
            Ordering::Relaxed,
        );
    }

    /// Takes the tiny state out (a drain): the caller retires the block (a
    /// stopped word reads as a full block).
    pub(crate) fn take_tiny(&self) -> Tiny {
        let t = Tiny::unpack(self.head.tiny.load());
        self.head.tiny.store(0);
        Tiny {
            off: t.off.min(crate::TINY_BLOCK),
            ..t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zeroed cache block of `layout`, freed on drop.
    struct Block {
        mem: *mut u8,
        layout: &'static CacheLayout,
    }

    impl Block {
        fn new(layout: &'static CacheLayout) -> Block {
            let l = std::alloc::Layout::from_size_align(layout.stride(), 64).unwrap();
            // SAFETY: a non-zero size.
            let mem = unsafe { std::alloc::alloc_zeroed(l) };
            assert!(!mem.is_null());
            Block { mem, layout }
        }

        fn cache(&self) -> CpuCache<'_> {
            // SAFETY: one zeroed cache of the layout, alive while `self` is.
            unsafe { CpuCache::at(self.mem, 0, self.layout) }
        }
    }

    impl Drop for Block {
        fn drop(&mut self) {
            let l = std::alloc::Layout::from_size_align(self.layout.stride(), 64).unwrap();
            // SAFETY: allocated in `new` with this layout.
            unsafe { std::alloc::dealloc(self.mem, l) }
        }
    }

    #[test]
    fn capacities_and_bound() {
        for c in SizeClass::small_classes() {
            let cap = capacity(c);
            assert!((MIN_CAPACITY..=MAX_CAPACITY).contains(&cap));
            assert!(batch(c) >= 1 && batch(c) <= cap);
            assert!(cap <= u16::MAX as usize);
        }
        assert_eq!(capacity(SizeClass::new(1).unwrap()), 128);
        assert_eq!(capacity(SizeClass::new(67).unwrap()), 2);
        assert_eq!(capacity(SizeClass::LARGE), 0);
        // The documented bound: about 1.3 MiB per CPU, 512 KiB more where
        // stacks grow.
        let grown = if CacheLayout::GO.grows {
            GROWTH_BYTES
        } else {
            0
        };
        assert!(CACHE_BOUND_BYTES - grown < 1536 * 1024 && CACHE_BOUND_BYTES - grown > 1024 * 1024);
        assert_eq!(CacheLayout::GO.grows, cfg!(rseq));
    }

    /// Every layout puts each class's word and slots inside the stride,
    /// one class after another, and sizes stacks by the bytes asked for.
    #[test]
    fn layouts_tile_the_cache() {
        let geometries = [&Geometry::GO, &crate::sizeclass::REGION_GEOMETRY];
        for g in geometries {
            for bytes in [64, 256, 1024, CLASS_CACHE_BYTES] {
                let l = CacheLayout::new(g, bytes);
                let mut next = 0;
                let mut bound = 0;
                for c in SizeClass::small_classes() {
                    if c.index() >= g.count {
                        assert_eq!(l.cap(c), 0);
                        continue;
                    }
                    let want = (bytes / g.size(c)).clamp(MIN_CAPACITY, MAX_CAPACITY);
                    assert_eq!(l.cap(c), want, "{bytes} B, class {}", c.index());
                    assert_eq!(l.word_at(c), next);
                    next += 1 + want;
                    bound += want * g.size(c);
                }
                assert_eq!(l.small_classes().count(), g.count - 1);
                assert_eq!(l.bound(), bound);
                let words = next
                    + if cfg!(target_pointer_width = "64") {
                        0
                    } else {
                        NUM_CLASSES
                    };
                assert!(HEAD_BYTES + words * core::mem::size_of::<Word>() <= l.stride());
                assert!(
                    l.stride().is_multiple_of(64)
                        && l.stride() < HEAD_BYTES + words * core::mem::size_of::<Word>() + 64
                );
            }
        }
    }

    /// A growing layout: a header of four words per class, then every
    /// stack as it starts (as packed as in a layout that does not grow), then
    /// the grown stacks, each `max(c)` slots, all disjoint and inside the
    /// stride; growth is a grown-bytes clamp, and no class shrinks.
    #[test]
    fn growing_layout_keeps_starting_stacks_packed() {
        let g = &Geometry::GO;
        let l = CacheLayout::growing(g, CLASS_CACHE_BYTES, GROWN_CLASS_BYTES);
        let flat = CacheLayout::new(g, CLASS_CACHE_BYTES);
        assert!(l.grows() && !flat.grows());
        let classes: std::vec::Vec<SizeClass> = l.small_classes().collect();
        let mut next = 0;
        for (k, &c) in classes.iter().enumerate() {
            assert_eq!(l.word_at(c), 4 * k + 1, "header");
            assert_eq!(l.cap(c), flat.cap(c));
            let want = (GROWN_CLASS_BYTES / g.size(c)).clamp(l.cap(c), MAX_GROWN_CAPACITY);
            assert_eq!(l.max(c), want, "class {}", c.index());
            assert_eq!(flat.max(c), flat.cap(c));
        }
        next += 4 * classes.len();
        for &c in &classes {
            assert_eq!(
                l.slots_at[c.index()] as usize,
                next,
                "starting stacks packed"
            );
            next += l.cap(c);
        }
        for &c in &classes {
            assert_eq!(l.grown_at[c.index()] as usize, next);
            if l.max(c) > l.cap(c) {
                next += l.max(c);
            }
        }
        // 32-bit targets keep the pops carries after the stacks.
        let words = next
            + if cfg!(target_pointer_width = "64") {
                0
            } else {
                NUM_CLASSES
            };
        assert!(HEAD_BYTES + words * core::mem::size_of::<Word>() <= l.stride());
        assert!(l.stride() < HEAD_BYTES + words * core::mem::size_of::<Word>() + 64);
        // Classes up to 256 bytes can hold 2,048 objects once grown.
        assert!(classes
            .iter()
            .filter(|&&c| g.size(c) <= 256)
            .all(|&c| l.max(c) == MAX_GROWN_CAPACITY));
        let b = Block::new(std::boxed::Box::leak(std::boxed::Box::new(l)));
        let cache = b.cache();
        for &c in &classes {
            assert!(cache.grown_slots(c).is_some() == (l.max(c) > l.cap(c)));
            assert_eq!(cache.slots_word(c).load(Ordering::Relaxed), 0, "unsettled");
        }
    }

    /// A layout serving some classes from others gives those a word and no
    /// slots, and a push to them fails (the caller flushes to central);
    /// every other class keeps its stack, and the cache is shorter.
    #[test]
    fn served_classes_have_no_slots() {
        let g = &crate::sizeclass::REGION_GEOMETRY;
        let mut served = [0u8; NUM_CLASSES];
        for (i, s) in served.iter_mut().enumerate().take(g.count) {
            // Every odd class is served from the next one up.
            *s = if i % 2 == 1 && i + 1 < g.count {
                i + 1
            } else {
                i
            } as u8;
        }
        let l: &'static CacheLayout = std::boxed::Box::leak(std::boxed::Box::new(
            CacheLayout::serving(g, 256, Some(&served)),
        ));
        let full = CacheLayout::new(g, 256);
        assert!(l.stride() < full.stride());
        let b = Block::new(l);
        let cache = b.cache();
        for c in l.small_classes() {
            if served[c.index()] as usize != c.index() {
                assert_eq!(l.cap(c), 0);
                assert!(!cache.push(c, 0x8 as *mut u8));
                assert!(cache.pop(c).is_none());
            } else {
                assert_eq!(l.cap(c), full.cap(c));
                assert!(cache.push(c, (0x1000 * c.index()) as *mut u8));
            }
        }
        for c in l.small_classes().filter(|c| l.cap(*c) > 0) {
            assert_eq!(
                cache.pop(c).map(|(p, _)| p as usize),
                Some(0x1000 * c.index())
            );
        }
    }

    /// A small layout's stacks hold what it says and no more.
    #[test]
    fn small_layout_stacks() {
        static SMALL: CacheLayout = CacheLayout::new(&crate::sizeclass::REGION_GEOMETRY, 64);
        let b = Block::new(&SMALL);
        let cache = b.cache();
        for c in SMALL.small_classes() {
            let cap = SMALL.cap(c);
            for k in 0..cap {
                assert!(cache.push(c, (0x1000 * c.index() + 8 * k) as *mut u8));
            }
            assert!(!cache.push(c, 0x8 as *mut u8), "full at {cap}");
        }
        for c in SMALL.small_classes() {
            let cap = SMALL.cap(c);
            for k in (0..cap).rev() {
                assert_eq!(
                    cache.pop(c).map(|(p, _)| p as usize),
                    Some(0x1000 * c.index() + 8 * k)
                );
            }
            assert!(cache.pop(c).is_none());
            assert_eq!(cache.pops(c), cap as u64);
        }
        assert_eq!(cache.tiny(), Tiny::NONE, "the stacks stay off the head");
    }

    #[test]
    fn push_pop_batches_and_word_format() {
        let b = Block::new(&CacheLayout::GO);
        let cache = b.cache();
        let c = SizeClass::new(67).unwrap();
        assert!(cache.pop(c).is_none());
        assert!(cache.push(c, 0x10 as *mut u8));
        assert!(cache.push(c, 0x20 as *mut u8));
        assert!(!cache.push(c, 0x30 as *mut u8), "capacity 2");
        assert_eq!(cache.pop(c).map(|(p, _)| p), Some(0x20 as *mut u8));
        assert_eq!(cache.word(c).pops(), 1);
        assert_eq!(cache.len(c), 1);
        let mut out = [core::ptr::null_mut(); 4];
        assert_eq!(cache.pop_batch(c, &mut out), 1);
        assert_eq!(out[0], 0x10 as *mut u8);
        assert_eq!(
            cache.push_batch(c, &[0x50 as *mut u8, 0x60 as *mut u8, 0x70 as *mut u8]),
            2
        );
        assert_eq!(cache.pop(c).map(|(p, _)| p), Some(0x60 as *mut u8));
        assert_eq!(cache.word(c).pops(), 2, "batches count no mallocs");
        assert_eq!(cache.cached_bytes(), Geometry::GO.size(c));
    }

    #[test]
    fn pops_count_past_the_word_field() {
        // 32-bit targets keep 16 bits of pops in the stack word and carry
        // the rest: a count past 2^16 must survive the wrap.
        let b = Block::new(&CacheLayout::GO);
        let cache = b.cache();
        let c = SizeClass::new(5).unwrap();
        let n = (1 << 16) + 1234;
        for i in 0..n {
            assert!(cache.push(c, (0x1000 + 16 * (i % 4)) as *mut u8));
            assert!(cache.pop(c).is_some());
        }
        assert_eq!(cache.pops(c), n as u64);
        assert_eq!(cache.len(c), 0);
    }

    #[test]
    fn tiny_carves_and_takes() {
        let b = Block::new(&CacheLayout::GO);
        let cache = b.cache();
        assert!(cache.carve(8, 8).is_null(), "no block");
        let block = 0x7000_0040usize;
        assert!(cache.replace_tiny(
            Tiny::NONE,
            Tiny {
                block,
                off: 0,
                n: 0
            }
        ));
        assert_eq!(cache.carve(3, 1) as usize, block);
        assert_eq!(cache.carve(8, 8) as usize, block + 8, "aligned up");
        assert!(cache.carve(60, 1).is_null(), "no room");
        assert_eq!(
            cache.tiny(),
            Tiny {
                block,
                off: 16,
                n: 2
            }
        );
        assert!(
            !cache.replace_tiny(Tiny::NONE, Tiny::NONE),
            "stale expectation"
        );
        let t = cache.take_tiny();
        assert_eq!((t.block, t.n), (block, 2));
        assert_eq!(cache.tiny(), Tiny::NONE);
        cache.add(TinyEvent::Frees, 3);
        assert_eq!(cache.counter(TinyEvent::Frees), 3);
    }
}
