//! The per-CPU tier (Go's `mcache`, shaped like tcmalloc's per-CPU slabs).
//! See `lib.rs` for the overview.
//!
//! Each CPU slot owns one [`CpuCache`]: for every size class a bounded stack of
//! free object pointers, the CPU's current tiny block, and its counters. An
//! allocation pops from the stack of its class, a free pushes onto it — on
//! whichever CPU the free happens, so a remote free costs nothing extra. An empty
//! stack is refilled with a batch from the class's central list; a full one sends
//! its oldest batch back.
//!
//! **Bound on stranded memory.** Class `c` holds at most [`capacity`]`(c)`
//! objects: `clamp(CLASS_CACHE_BYTES / size, 2, MAX_CAPACITY)`. The sum over the
//! classes, [`CACHE_BOUND_BYTES`] (about 1.3 MiB), bounds the free memory one CPU
//! can hold; [`crate::Heap::scavenge`] drains it.
//!
//! Invariants (the CPU slot's exclusivity guards everything here):
//! * `len[c] <= capacity(c)`; `slots[OFFSET[c] .. OFFSET[c] + len[c]]` are free
//!   objects of class `c`, each handed out by its span (alloc bit set);
//! * if `tiny_block` is non-null, its live count holds the tiny bias
//!   [`TINY_BIAS`] minus the `tiny_n` sub-objects carved from it... plus the
//!   sub-objects still live (see [`crate::heap`] for the counting).

use crate::sizeclass::{SizeClass, CLASSES, NUM_CLASSES};

/// Bytes of objects a class's stack is sized for.
pub const CLASS_CACHE_BYTES: usize = 16 * 1024;
/// Most objects any class's stack holds.
pub const MAX_CAPACITY: usize = 128;
/// Fewest objects any class's stack holds.
pub const MIN_CAPACITY: usize = 2;

/// Capacity of class `c`'s stack (0 for class 0).
pub const fn capacity(c: usize) -> usize {
    if c == 0 {
        return 0;
    }
    let n = CLASS_CACHE_BYTES / CLASSES[c].size as usize;
    if n < MIN_CAPACITY {
        MIN_CAPACITY
    } else if n > MAX_CAPACITY {
        MAX_CAPACITY
    } else {
        n
    }
}

/// Objects moved per refill or flush of class `c`: half the stack.
pub const fn batch(c: usize) -> usize {
    let b = capacity(c) / 2;
    if b == 0 {
        1
    } else {
        b
    }
}

const fn offsets() -> [usize; NUM_CLASSES + 1] {
    let mut o = [0; NUM_CLASSES + 1];
    let mut c = 1;
    while c < NUM_CLASSES {
        o[c + 1] = o[c] + capacity(c);
        c += 1;
    }
    o
}

/// Start of class `c`'s stack in `CpuCache::slots`.
pub const OFFSET: [usize; NUM_CLASSES + 1] = offsets();
/// Object slots of one CPU cache.
pub const TOTAL_SLOTS: usize = OFFSET[NUM_CLASSES];

/// Most bytes of free objects one CPU cache can hold.
pub const CACHE_BOUND_BYTES: usize = {
    let mut sum = 0;
    let mut c = 1;
    while c < NUM_CLASSES {
        sum += capacity(c) * CLASSES[c].size as usize;
        c += 1;
    }
    sum
};

/// Bias added to a tiny block's live count while a CPU is still carving from it
/// (more than the 16 sub-objects a block can hold).
pub const TINY_BIAS: u8 = 32;

/// Per-CPU counters; exact when read with the slot held.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct CacheCounters {
    pub mallocs: [u64; NUM_CLASSES],
    pub frees: [u64; NUM_CLASSES],
    pub tiny_mallocs: u64,
    pub tiny_frees: u64,
    /// Tiny blocks (class-2 objects) taken and given back.
    pub tiny_blocks_taken: u64,
    pub tiny_blocks_freed: u64,
}

/// One CPU's cache. All-zero bytes are a valid empty cache.
#[repr(C, align(64))]
pub struct CpuCache {
    len: [u16; NUM_CLASSES],
    /// Current tiny block, or null.
    pub tiny_block: *mut u8,
    /// Live count of `tiny_block`.
    pub tiny_count: *const core::sync::atomic::AtomicU8,
    /// Bytes of `tiny_block` used so far.
    pub tiny_off: usize,
    /// Sub-objects carved from `tiny_block` so far.
    pub tiny_n: usize,
    pub counters: CacheCounters,
    slots: [*mut u8; TOTAL_SLOTS],
}

impl CpuCache {
    /// Pops a free object of class `c`.
    #[inline(always)]
    pub fn pop(&mut self, c: SizeClass) -> Option<*mut u8> {
        let i = c.index();
        let n = self.len[i] as usize;
        if n == 0 {
            return None;
        }
        self.len[i] = (n - 1) as u16;
        Some(self.slots[OFFSET[i] + n - 1])
    }

    /// Pushes a free object of class `c`; false if the stack is full.
    #[inline(always)]
    pub fn push(&mut self, c: SizeClass, p: *mut u8) -> bool {
        let i = c.index();
        let n = self.len[i] as usize;
        if n == capacity(i) {
            return false;
        }
        self.slots[OFFSET[i] + n] = p;
        self.len[i] = (n + 1) as u16;
        true
    }

    /// Objects cached for class `c`.
    pub fn len(&self, c: SizeClass) -> usize {
        self.len[c.index()] as usize
    }

    /// The empty stack of class `c`, to be filled by a refill; the caller then
    /// calls [`CpuCache::set_len`].
    pub fn refill_room(&mut self, c: SizeClass) -> &mut [*mut u8] {
        let i = c.index();
        debug_assert_eq!(self.len[i], 0);
        &mut self.slots[OFFSET[i]..OFFSET[i] + batch(i)]
    }

    /// Sets the number of objects after a refill.
    pub fn set_len(&mut self, c: SizeClass, n: usize) {
        debug_assert!(n <= capacity(c.index()));
        self.len[c.index()] = n as u16;
    }

    /// Hands the oldest `k` objects of class `c` to `f` and drops them from the
    /// stack (the most recently freed, cache-hot objects stay).
    pub fn take_oldest(&mut self, c: SizeClass, k: usize, f: impl FnOnce(&[*mut u8])) {
        let i = c.index();
        let n = self.len[i] as usize;
        let k = k.min(n);
        let base = OFFSET[i];
        f(&self.slots[base..base + k]);
        self.slots.copy_within(base + k..base + n, base);
        self.len[i] = (n - k) as u16;
    }

    /// Bytes of free objects held.
    pub fn cached_bytes(&self) -> usize {
        (1..NUM_CLASSES).map(|c| self.len[c] as usize * CLASSES[c].size as usize).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacities_and_bound() {
        for c in 1..NUM_CLASSES {
            let cap = capacity(c);
            assert!((MIN_CAPACITY..=MAX_CAPACITY).contains(&cap));
            assert!(batch(c) >= 1 && batch(c) <= cap);
            assert!(cap <= u16::MAX as usize);
        }
        assert_eq!(capacity(1), 128);
        assert_eq!(capacity(67), 2);
        // The documented bound: about 1.3 MiB per CPU.
        assert!(CACHE_BOUND_BYTES < 1536 * 1024, "bound {}", CACHE_BOUND_BYTES);
        assert!(CACHE_BOUND_BYTES > 1024 * 1024, "bound {}", CACHE_BOUND_BYTES);
    }

    #[test]
    fn push_pop_take_oldest() {
        let mut b: std::boxed::Box<core::mem::MaybeUninit<CpuCache>> = std::boxed::Box::new_zeroed();
        // SAFETY: all-zero bytes are a valid empty cache (documented on the type).
        let cache = unsafe { b.assume_init_mut() };
        let c = SizeClass::new(67).unwrap();
        assert!(cache.pop(c).is_none());
        assert!(cache.push(c, 1 as *mut u8));
        assert!(cache.push(c, 2 as *mut u8));
        assert!(!cache.push(c, 3 as *mut u8), "capacity 2");
        let mut seen = std::vec::Vec::new();
        cache.take_oldest(c, 1, |o| seen.extend_from_slice(o));
        assert_eq!(seen, [1 as *mut u8]);
        assert_eq!(cache.pop(c), Some(2 as *mut u8));
        assert_eq!(cache.len(c), 0);
    }
}
