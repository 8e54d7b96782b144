//! One CPU's cache ([`CpuCache`]): its layout, its bounds, and the
//! operations on it by whoever has it to itself. See [`super`] for the tier
//! and [`super::word`] for the words' formats.
//!
//! **Layout.** A cache is the tiny word, a few counters, then for every size
//! class its stack word followed by its `capacity(c)` slots ([`STACK_AT`]),
//! so a pop or a push finds both from one address and touches one or two
//! adjacent lines. The restartable sequences address the words by the byte
//! offsets below ([`TINY_FIELD`], [`word_field`]) and step from one CPU's
//! cache to the next by [`STRIDE`].
//!
//! **Bound on stranded memory.** Class `c` holds at most [`capacity`]`(c)`
//! objects: `clamp(CLASS_CACHE_BYTES / size, 2, MAX_CAPACITY)`. The sum over
//! the classes, [`CACHE_BOUND_BYTES`] (about 1.3 MiB), bounds the free memory
//! one CPU can hold; `Heap::scavenge` drains it.
//!
//! Invariants (guarded by the CPU's exclusivity, or committed by one store):
//! * `len(c) <= capacity(c)`; the stack's first `len(c)` slots are free
//!   objects of class `c`, each handed out by its span (alloc bit set);
//! * if the tiny word names a block, that block's live count is the tiny
//!   allocator's bias plus the live sub-objects minus the `n` carved so far
//!   (see `heap::tiny`).

use crate::sizeclass::{SizeClass, CLASSES, NUM_CLASSES};
use crate::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::word::{StackWord, Tiny, Word};

/// A cache word, written by one CPU at a time and read racily by others.
pub(crate) type AtomicWord = AtomicUsize;

/// Bytes of objects a class's stack is sized for.
pub(crate) const CLASS_CACHE_BYTES: usize = 16 * 1024;
/// Most objects any class's stack holds.
pub(crate) const MAX_CAPACITY: usize = 128;
/// Fewest objects any class's stack holds.
pub(crate) const MIN_CAPACITY: usize = 2;

const fn capacity_of(i: usize) -> usize {
    if i == 0 {
        return 0;
    }
    let n = CLASS_CACHE_BYTES / CLASSES[i].size as usize;
    if n < MIN_CAPACITY {
        MIN_CAPACITY
    } else if n > MAX_CAPACITY {
        MAX_CAPACITY
    } else {
        n
    }
}

/// Capacity of class `c`'s stack (0 for [`SizeClass::LARGE`]).
pub const fn capacity(c: SizeClass) -> usize {
    capacity_of(c.index())
}

/// Objects moved per refill or flush of class `c`: half its stack, at least 1
/// (tcmalloc's `num_objects_to_move`).
pub(crate) const fn batch(c: SizeClass) -> usize {
    let b = capacity(c) / 2;
    if b == 0 {
        1
    } else {
        b
    }
}

/// [`capacity`] of every class, as a table: the push path reads it instead
/// of dividing.
pub(crate) const CAPACITY: [u16; NUM_CLASSES] = {
    let mut t = [0u16; NUM_CLASSES];
    let mut i = 0;
    while i < NUM_CLASSES {
        t[i] = capacity_of(i) as u16;
        i += 1;
    }
    t
};

/// Index in the cache's words of class `i`'s stack word (entry `NUM_CLASSES`:
/// the total); its `capacity` slots follow the word.
pub(crate) const STACK_AT: [usize; NUM_CLASSES + 1] = {
    let mut o = [0; NUM_CLASSES + 1];
    let mut i = 1;
    while i < NUM_CLASSES {
        o[i + 1] = o[i] + 1 + capacity_of(i);
        i += 1;
    }
    o
};

/// Words (stack words and slots) of one cache's stacks.
pub(crate) const STACK_WORDS: usize = STACK_AT[NUM_CLASSES];

/// Most bytes of free objects one CPU's cache can hold (about 1.3 MiB):
/// `Σ capacity(c) · size(c)` over the classes.
pub const CACHE_BOUND_BYTES: usize = {
    let mut sum = 0;
    let mut i = 1;
    while i < NUM_CLASSES {
        sum += capacity_of(i) * CLASSES[i].size as usize;
        i += 1;
    }
    sum
};

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

/// One CPU's cache. All-zero bytes are a valid empty cache. Every field is a
/// word the restartable sequences address by offset (on 64-bit targets).
#[repr(C, align(64))]
pub(crate) struct CpuCache {
    /// The current tiny block, packed ([`Tiny`]); 0 = none.
    tiny: TinyCell,
    counters: [AtomicU64; NUM_TINY_EVENTS],
    /// Per class `i` at [`STACK_AT`]`[i]`: the stack word ([`StackWord`]),
    /// then the stack's `capacity` slots, bottom first (object addresses).
    stacks: [AtomicWord; STACK_WORDS],
    /// 32-bit targets: per class, the wraps of the stack word's 16-bit pops
    /// field (mallocs = carries · 2^16 + pops).
    #[cfg(not(target_pointer_width = "64"))]
    carries: [AtomicWord; NUM_CLASSES],
}

/// Bytes between consecutive CPU caches (a constant of the layout, so that
/// the sections multiply by an immediate).
#[cfg_attr(not(rseq), allow(dead_code))] // the layout the sections address
pub(crate) const STRIDE: usize = core::mem::size_of::<CpuCache>();

/// Byte offset of the tiny word in a cache.
#[cfg_attr(not(rseq), allow(dead_code))] // the layout the sections address
pub(crate) const TINY_FIELD: usize = core::mem::offset_of!(CpuCache, tiny);

/// Byte offset of counter `k` in a cache.
#[cfg_attr(not(rseq), allow(dead_code))] // the layout the sections address
pub(crate) const fn counter_field(k: TinyEvent) -> usize {
    core::mem::offset_of!(CpuCache, counters) + core::mem::size_of::<AtomicU64>() * k as usize
}

/// Byte offset of class `c`'s stack word in a cache.
#[cfg_attr(not(rseq), allow(dead_code))] // the layout the sections address
pub(crate) const fn word_field(c: SizeClass) -> usize {
    core::mem::offset_of!(CpuCache, stacks) + core::mem::size_of::<Word>() * STACK_AT[c.index()]
}

impl CpuCache {
    /// Slot `i` of class `c`'s stack.
    #[inline(always)]
    fn slot(&self, c: SizeClass, i: usize) -> &AtomicWord {
        debug_assert!(!c.is_large() && i < capacity(c));
        // SAFETY: `c` is a small class and `i < capacity(c)` (callers keep
        // `len <= capacity`), so the index is inside class `c`'s stack.
        unsafe { self.stacks.get_unchecked(STACK_AT[c.index()] + 1 + i) }
    }

    /// Class `c`'s stack word, unchecked: a `SizeClass` index is below NUM_CLASSES.
    #[inline(always)]
    pub(crate) fn stack_word(&self, c: SizeClass) -> &AtomicWord {
        // SAFETY: `STACK_AT[i] < STACK_WORDS` for every class index (class 0's
        // is 0: class 1's word, which no operation on class 0 writes).
        unsafe {
            self.stacks
                .get_unchecked(*STACK_AT.get_unchecked(c.index()))
        }
    }

    /// The tiny word.
    #[inline(always)]
    #[cfg_attr(not(rseq), allow(dead_code))] // the stop protocol's
    #[cfg(target_pointer_width = "64")]
    pub(crate) fn tiny_word(&self) -> &AtomicU64 {
        &self.tiny.word
    }

    /// TinyEvent `k`'s word.
    #[inline(always)]
    pub(crate) fn counter_word(&self, k: TinyEvent) -> &AtomicU64 {
        &self.counters[k as usize]
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

    /// Mallocs counted by pops of class `c`, cumulative (a racy read).
    pub(crate) fn pops(&self, c: SizeClass) -> u64 {
        let w = self.word(c).pops();
        #[cfg(not(target_pointer_width = "64"))]
        let w =
            w + ((self.carries[c.index()].load(Ordering::Relaxed) as u64) << StackWord::POPS_BITS);
        w
    }

    /// The tiny state.
    pub(crate) fn tiny(&self) -> Tiny {
        Tiny::unpack(self.tiny.load())
    }

    /// Bytes of free objects held.
    #[cfg(test)]
    pub(crate) fn cached_bytes(&self) -> usize {
        SizeClass::small_classes()
            .map(|c| self.len(c) * CLASSES[c.index()].size as usize)
            .sum()
    }

    // Exclusive operations: the caller holds this cache's slot (locked mode)
    // or has stopped it (rseq mode). They keep the same word formats as the
    // sections, and leave the STOP bit as they found it.

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
            let carry = &self.carries[c.index()];
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
        // SAFETY: a class index is below NUM_CLASSES.
        if n == unsafe { *CAPACITY.get_unchecked(c.index()) } as usize {
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
        // SAFETY: a class index is below NUM_CLASSES.
        let k = objs
            .len()
            .min(unsafe { *CAPACITY.get_unchecked(c.index()) } as usize - n);
        for (j, &p) in objs[..k].iter().enumerate() {
            self.slot(c, n + j).store(p as Word, Ordering::Relaxed);
        }
        self.stack_word(c).store(w + k, Ordering::Relaxed);
        k
    }

    /// Pops up to `out.len()` objects from the top; returns how many.
    pub(crate) fn pop_batch(&self, c: SizeClass, out: &mut [*mut u8]) -> usize {
        let w = self.stack_word(c).load(Ordering::Relaxed);
        let n = StackWord(w).len();
        let k = out.len().min(n);
        for (j, o) in out[..k].iter_mut().enumerate() {
            *o = self.slot(c, n - k + j).load(Ordering::Relaxed) as *mut u8;
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
        if t.block == 0 || off + size > crate::TINY_BLOCK {
            return core::ptr::null_mut();
        }
        let next = Tiny {
            block: t.block,
            off: off + size,
            n: t.n + 1,
        };
        self.tiny.store(next.pack());
        (t.block + off) as *mut u8
    }

    /// Stores `new` as the tiny state if it still is `old`.
    pub(crate) fn replace_tiny(&self, old: Tiny, new: Tiny) -> bool {
        if self.tiny.load() == old.pack() {
            self.tiny.store(new.pack());
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
        let t = Tiny::unpack(self.tiny.load());
        self.tiny.store(0);
        Tiny {
            off: t.off.min(crate::TINY_BLOCK),
            ..t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zeroed() -> std::boxed::Box<CpuCache> {
        let b: std::boxed::Box<core::mem::MaybeUninit<CpuCache>> = std::boxed::Box::new_zeroed();
        // SAFETY: all-zero bytes are a valid empty cache (documented on the type).
        unsafe { b.assume_init() }
    }

    #[test]
    fn capacities_and_bound() {
        for c in SizeClass::small_classes() {
            let cap = capacity(c);
            assert!((MIN_CAPACITY..=MAX_CAPACITY).contains(&cap));
            assert!(batch(c) >= 1 && batch(c) <= cap);
            assert!(cap <= u16::MAX as usize);
            assert_eq!(CAPACITY[c.index()] as usize, cap);
        }
        assert_eq!(capacity(SizeClass::new(1).unwrap()), 128);
        assert_eq!(capacity(SizeClass::new(67).unwrap()), 2);
        assert_eq!(capacity(SizeClass::LARGE), 0);
        // The documented bound: about 1.3 MiB per CPU.
        const { assert!(CACHE_BOUND_BYTES < 1536 * 1024 && CACHE_BOUND_BYTES > 1024 * 1024) };
    }

    #[test]
    fn push_pop_batches_and_word_format() {
        let cache = zeroed();
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
        assert_eq!(cache.cached_bytes(), CLASSES[c.index()].size as usize);
    }

    #[test]
    fn pops_count_past_the_word_field() {
        // 32-bit targets keep 16 bits of pops in the stack word and carry
        // the rest: a count past 2^16 must survive the wrap.
        let cache = zeroed();
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
        let cache = zeroed();
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
