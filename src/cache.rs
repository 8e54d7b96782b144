//! The per-CPU tier (Go's `mcache`, shaped like tcmalloc's per-CPU slabs).
//! See `lib.rs` for the overview.
//!
//! Each CPU owns one [`CpuCache`]: for every size class a bounded stack of
//! free object pointers, the CPU's current tiny block, and a few counters. An
//! allocation pops from the stack of its class, a free pushes onto it — on
//! whichever CPU the free happens, so a remote free costs nothing extra. An empty
//! stack is refilled with a batch from the class's central list; a full one sends
//! its top batch back.
//!
//! **Two ways in.** [`Slabs`] reaches the caches either through the CPU slot's
//! exclusivity ([`Cpu::with_current`]: interrupts off in a kernel, a per-slot
//! lock elsewhere) or, on Linux x86-64, through restartable sequences
//! ([`crate::rseq`]) that commit each operation with one plain store. Both use
//! the same word formats, so one set of invariants covers both:
//!
//! * a class's **stack word** packs the stack length (bits 0..15), the
//!   [`STOP`] bit (bit 15, set only while another CPU drains the cache in rseq
//!   mode) and the mallocs counted by pops (bits 16..64): a pop adds
//!   [`POP_DELTA`] (length − 1, mallocs + 1), a push adds 1 — each a single
//!   store. The stack's slots follow its word ([`STACK_AT`]), so an operation
//!   finds both from one address;
//! * the **tiny word** packs the current tiny block, the bytes used and the
//!   sub-objects carved ([`Tiny`]); a carve is one store of the new word.
//!
//! **Bound on stranded memory.** Class `c` holds at most [`capacity`]`(c)`
//! objects: `clamp(CLASS_CACHE_BYTES / size, 2, MAX_CAPACITY)`. The sum over the
//! classes, [`CACHE_BOUND_BYTES`] (about 1.3 MiB), bounds the free memory one CPU
//! can hold; [`crate::Heap::scavenge`] drains it.
//!
//! Invariants (guarded by the CPU's exclusivity, or committed by one store):
//! * `len(c) <= capacity(c)`; `stacks[STACK_AT[c] + 1 ..][..len(c)]` are free
//!   objects of class `c`, each handed out by its span (alloc bit set);
//! * if the tiny word names a block, that block's live count is
//!   [`TINY_BIAS`] plus the live sub-objects minus the `n` carved so far.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::cpu::Cpu;
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

/// [`capacity`] of every class, as a table: the push path reads it instead of
/// dividing.
pub const CAPACITY: [u16; NUM_CLASSES] = {
    let mut t = [0u16; NUM_CLASSES];
    let mut c = 0;
    while c < NUM_CLASSES {
        t[c] = capacity(c) as u16;
        c += 1;
    }
    t
};

/// Objects moved per refill or flush of class `c`: half the stack.
pub const fn batch(c: usize) -> usize {
    let b = capacity(c) / 2;
    if b == 0 {
        1
    } else {
        b
    }
}

const fn stack_at() -> [usize; NUM_CLASSES + 1] {
    let mut o = [0; NUM_CLASSES + 1];
    let mut c = 1;
    while c < NUM_CLASSES {
        o[c + 1] = o[c] + 1 + capacity(c);
        c += 1;
    }
    o
}

/// Index in `CpuCache::stacks` of class `c`'s stack word; its `capacity(c)`
/// slots follow the word, so a pop or push touches one or two adjacent lines.
pub const STACK_AT: [usize; NUM_CLASSES + 1] = stack_at();
/// Words (stack words and slots) of one CPU cache's stacks.
pub const STACK_WORDS: usize = STACK_AT[NUM_CLASSES];

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
/// (more than the 64 sub-objects a block can hold).
pub const TINY_BIAS: u8 = 128;
const _: () = assert!(TINY_BIAS as usize > crate::TINY_BLOCK);

/// Per-CPU event counters (besides the per-class malloc counts packed in the
/// stack words).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    /// Tiny sub-objects carved from blocks this CPU has retired.
    TinyMallocsRetired = 0,
    /// Tiny sub-objects freed.
    TinyFrees = 1,
    /// Tiny blocks (tiny-class objects) taken and given back.
    TinyBlocksTaken = 2,
    TinyBlocksFreed = 3,
}
const NUM_COUNTERS: usize = 4;

/// Mask of a stack word's length; bits 16.. count mallocs.
pub const LEN_MASK: u64 = 0x7fff;
/// Set in a stack word's length field while another CPU drains the cache (rseq
/// mode): a length of at least `STOP` exceeds every capacity, so the sections
/// see the stack as both empty and full.
pub const STOP: u64 = 0x8000;
/// Added to a stack word by a pop: length − 1, mallocs + 1.
pub const POP_DELTA: u64 = (1 << 16) - 1;

/// The tiny state packed in one word, so that a carve commits with one store:
/// block address (48 bits, sign-extended back), bytes used (bits 48..54),
/// sub-objects carved (bits 56..62). A `off` above [`TINY_BLOCK`] marks the
/// word stopped (see [`Tiny::STOPPED_OFF`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiny {
    pub block: usize,
    pub off: usize,
    pub n: usize,
}

impl Tiny {
    /// The `off` of a stopped tiny word: no carve fits, and
    /// [`crate::Heap`]'s block installer leaves such a word alone.
    pub const STOPPED_OFF: usize = 127;
    /// Width of the `off` and `n` fields (7 bits each; the rseq carve
    /// section masks with it too).
    pub const FIELD_MASK: u64 = 0x7f;

    pub const fn pack(self) -> u64 {
        (self.block as u64 & ((1 << 48) - 1)) | (self.off as u64) << 48 | (self.n as u64) << 56
    }
    pub const fn unpack(w: u64) -> Tiny {
        let block = (((w << 16) as i64) >> 16) as usize;
        Tiny {
            block,
            off: ((w >> 48) & Self::FIELD_MASK) as usize,
            n: ((w >> 56) & Self::FIELD_MASK) as usize,
        }
    }
    /// Whether a drain has stopped this word.
    pub const fn stopped(self) -> bool {
        self.off == Self::STOPPED_OFF
    }
}

const _: () = assert!(
    Tiny::STOPPED_OFF > crate::TINY_BLOCK
        && Tiny::STOPPED_OFF as u64 == Tiny::FIELD_MASK
        && STOP > MAX_CAPACITY as u64
        && LEN_MASK & STOP == 0
);

/// One CPU's cache. All-zero bytes are a valid empty cache. Every field is a
/// word the restartable sequences of [`crate::rseq`] address by offset.
#[repr(C, align(64))]
pub struct CpuCache {
    /// The current tiny block, packed ([`Tiny`]); 0 = none.
    tiny: AtomicU64,
    counters: [AtomicU64; NUM_COUNTERS],
    /// Per class `c` at [`STACK_AT`]`[c]`: the stack word — length (bits
    /// 0..15) | [`STOP`] | mallocs counted by pops (bits 16..) — then the
    /// stack's `capacity(c)` slots, bottom first (object addresses).
    stacks: [AtomicU64; STACK_WORDS],
}

/// Byte offset of the tiny word in a cache.
pub const TINY_FIELD: usize = core::mem::offset_of!(CpuCache, tiny);

/// Byte offset of a counter in a cache.
pub const fn counter_field(c: Counter) -> usize {
    core::mem::offset_of!(CpuCache, counters) + 8 * c as usize
}

/// Byte offset of class `c`'s stack word in a cache.
pub const fn word_field(c: usize) -> usize {
    core::mem::offset_of!(CpuCache, stacks) + 8 * STACK_AT[c]
}

impl CpuCache {
    /// Slot `i` of class `c`'s stack.
    #[inline(always)]
    fn slot(&self, c: usize, i: usize) -> &AtomicU64 {
        debug_assert!((1..NUM_CLASSES).contains(&c) && i < capacity(c));
        // SAFETY: `c` is a small class and `i < capacity(c)` (callers keep
        // `len <= capacity`), so the index is inside class `c`'s stack.
        unsafe { self.stacks.get_unchecked(STACK_AT[c] + 1 + i) }
    }

    /// Class `c`'s stack word, unchecked: a `SizeClass` index is below NUM_CLASSES.
    #[inline(always)]
    fn word_ref(&self, c: SizeClass) -> &AtomicU64 {
        // SAFETY: `STACK_AT[i] < STACK_WORDS` for every class index (class 0's is
        // 0: class 1's word, which no operation on class 0 writes).
        unsafe {
            self.stacks
                .get_unchecked(*STACK_AT.get_unchecked(c.index()))
        }
    }

    /// The stack word of class `c`.
    pub fn word(&self, c: usize) -> u64 {
        self.stacks[STACK_AT[c]].load(Ordering::Relaxed)
    }

    /// Objects cached for class `c`.
    pub fn len(&self, c: SizeClass) -> usize {
        (self.word(c.index()) & LEN_MASK) as usize
    }

    /// Mallocs counted by pops of class `c` on this CPU.
    pub fn pops(&self, c: usize) -> u64 {
        self.word(c) >> 16
    }

    /// A counter's value.
    pub fn counter(&self, k: Counter) -> u64 {
        self.counters[k as usize].load(Ordering::Relaxed)
    }

    /// The tiny state.
    pub fn tiny(&self) -> Tiny {
        Tiny::unpack(self.tiny.load(Ordering::Relaxed))
    }

    /// Bytes of free objects held.
    pub fn cached_bytes(&self) -> usize {
        (1..NUM_CLASSES)
            .map(|c| (self.word(c) & LEN_MASK) as usize * CLASSES[c].size as usize)
            .sum()
    }

    // Exclusive operations: the caller holds this cache's slot (locked mode) or
    // has stopped it (rseq mode). They keep the same word formats as the
    // sequences, and leave the STOP bit as they found it.

    /// Pops a free object of class `c`, counting a malloc.
    #[inline(always)]
    pub fn pop(&self, c: SizeClass) -> Option<*mut u8> {
        let i = c.index();
        let w = self.word_ref(c).load(Ordering::Relaxed);
        let n = (w & LEN_MASK) as usize;
        if n == 0 {
            return None;
        }
        let p = self.slot(i, n - 1).load(Ordering::Relaxed) as *mut u8;
        self.word_ref(c).store(w + POP_DELTA, Ordering::Relaxed);
        Some(p)
    }

    /// Pushes a free object of class `c`; false if the stack is full.
    #[inline(always)]
    pub fn push(&self, c: SizeClass, p: *mut u8) -> bool {
        let i = c.index();
        let w = self.word_ref(c).load(Ordering::Relaxed);
        let n = (w & LEN_MASK) as usize;
        // SAFETY: a class index is below NUM_CLASSES.
        if n == unsafe { *CAPACITY.get_unchecked(i) } as usize {
            return false;
        }
        self.slot(i, n).store(p as u64, Ordering::Relaxed);
        self.word_ref(c).store(w + 1, Ordering::Relaxed);
        true
    }

    /// Pushes as many of `objs` as fit; returns how many.
    pub fn push_batch(&self, c: SizeClass, objs: &[*mut u8]) -> usize {
        let i = c.index();
        let w = self.word_ref(c).load(Ordering::Relaxed);
        let n = (w & LEN_MASK) as usize;
        // SAFETY: a class index is below NUM_CLASSES.
        let k = objs
            .len()
            .min(unsafe { *CAPACITY.get_unchecked(i) } as usize - n);
        for (j, &p) in objs[..k].iter().enumerate() {
            self.slot(i, n + j).store(p as u64, Ordering::Relaxed);
        }
        self.word_ref(c).store(w + k as u64, Ordering::Relaxed);
        k
    }

    /// Pops up to `out.len()` objects from the top; returns how many.
    pub fn pop_batch(&self, c: SizeClass, out: &mut [*mut u8]) -> usize {
        let i = c.index();
        let w = self.word_ref(c).load(Ordering::Relaxed);
        let n = (w & LEN_MASK) as usize;
        let k = out.len().min(n);
        for (j, o) in out[..k].iter_mut().enumerate() {
            *o = self.slot(i, n - k + j).load(Ordering::Relaxed) as *mut u8;
        }
        self.word_ref(c).store(w - k as u64, Ordering::Relaxed);
        k
    }

    /// Takes the tiny state out (drains): the caller retires the block (a
    /// stopped word reads as a full block).
    pub fn take_tiny(&self) -> Tiny {
        let t = Tiny::unpack(self.tiny.swap(0, Ordering::Relaxed));
        Tiny {
            off: t.off.min(crate::TINY_BLOCK),
            ..t
        }
    }

    fn field(&self, off: usize) -> &AtomicU64 {
        debug_assert!(
            off == TINY_FIELD
                || (counter_field(Counter::TinyMallocsRetired)
                    ..=counter_field(Counter::TinyBlocksFreed))
                    .contains(&off)
        );
        // SAFETY: `off` names one of the AtomicU64 fields (checked above in debug builds).
        unsafe {
            &*(self as *const CpuCache)
                .cast::<u8>()
                .add(off)
                .cast::<AtomicU64>()
        }
    }

    /// Marks every stack word and the tiny word stopped (rseq mode, before a
    /// fence). Atomic read-modify-writes, but a section that read a word
    /// before the mark may still overwrite it with one plain store: see
    /// [`CpuCache::all_stopped`].
    #[cfg(all(feature = "linux", target_arch = "x86_64"))]
    fn mark_stopped(&self) {
        for &at in &STACK_AT[1..NUM_CLASSES] {
            self.stacks[at].fetch_or(STOP, Ordering::SeqCst);
        }
        let _ = self
            .tiny
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                let t = Tiny::unpack(w);
                (!t.stopped()).then_some(
                    Tiny {
                        off: Tiny::STOPPED_OFF,
                        ..t
                    }
                    .pack(),
                )
            });
    }

    /// Whether every mark set by [`CpuCache::mark_stopped`] is still there.
    #[cfg(all(feature = "linux", target_arch = "x86_64"))]
    fn all_stopped(&self) -> bool {
        (1..NUM_CLASSES).all(|c| self.word(c) & STOP != 0) && self.tiny().stopped()
    }

    /// Clears the marks. A tiny word still stopped (the drain did not take it)
    /// becomes full (`off` = [`TINY_BLOCK`](crate::TINY_BLOCK)): the next tiny
    /// allocation on that CPU retires the block, losing only its unused bytes.
    #[cfg(all(feature = "linux", target_arch = "x86_64"))]
    fn unmark_stopped(&self) {
        for &at in &STACK_AT[1..NUM_CLASSES] {
            self.stacks[at].fetch_and(!STOP, Ordering::SeqCst);
        }
        let _ = self
            .tiny
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                let t = Tiny::unpack(w);
                t.stopped().then_some(
                    Tiny {
                        off: crate::TINY_BLOCK,
                        ..t
                    }
                    .pack(),
                )
            });
    }
}

/// The per-CPU caches of a heap and how to reach them: through the CPU slot's
/// exclusivity (`Cpu::with_current`), or through restartable sequences.
///
/// Laid out as one block from the page source: this header, then `count`
/// caches. Invariant: `caches` points to `count` caches; the mode is fixed at
/// set-up (rseq exactly when the descriptor's offset is not 0).
#[repr(C, align(64))]
pub struct Slabs {
    #[cfg(all(feature = "linux", target_arch = "x86_64"))]
    desc: crate::rseq::Desc,
    count: usize,
    caches: *mut CpuCache,
}

impl Slabs {
    /// Bytes for the header and `count` caches.
    pub const fn bytes(count: usize) -> usize {
        core::mem::size_of::<Slabs>() + count * core::mem::size_of::<CpuCache>()
    }

    /// Lays out the slabs in `mem` (`bytes(count)` bytes, zeroed, 64-aligned).
    /// With `rseq_off`, operations use restartable sequences at that offset.
    ///
    /// # Safety
    /// `mem` is exclusively ours for ever, zeroed, aligned, large enough.
    pub unsafe fn init(mem: *mut u8, count: usize, rseq_off: Option<i64>) -> *mut Slabs {
        let s = mem.cast::<Slabs>();
        // SAFETY: the header comes first in the block, caches right after it.
        let caches = unsafe { mem.add(core::mem::size_of::<Slabs>()) }.cast::<CpuCache>();
        // 0 is never glibc's offset (see `rseq::Published`): it means locked mode.
        assert!(rseq_off != Some(0), "tieralloc: rseq offset 0");
        #[cfg(all(feature = "linux", target_arch = "x86_64"))]
        {
            let d = crate::rseq::Desc {
                rseq_off: rseq_off.unwrap_or(0),
                count: count as u32,
                // Class 0 has no stack: its entry is the cache itself.
                word: core::array::from_fn(|c| {
                    caches as u64 + if c == 0 { 0 } else { word_field(c) as u64 }
                }),
                cap: core::array::from_fn(|c| capacity(c) as u32),
            };
            // SAFETY: inside the header.
            unsafe { core::ptr::addr_of_mut!((*s).desc).write(d) };
        }
        // SAFETY: inside the header.
        unsafe {
            core::ptr::addr_of_mut!((*s).count).write(count);
            core::ptr::addr_of_mut!((*s).caches).write(caches);
        }
        s
    }

    /// Whether operations commit with restartable sequences (never without
    /// the Linux x86-64 fast path compiled in, so kernels pay no check).
    #[inline(always)]
    pub fn uses_rseq(&self) -> bool {
        #[cfg(all(feature = "linux", target_arch = "x86_64"))]
        return self.desc.rseq_off != 0;
        #[cfg(not(all(feature = "linux", target_arch = "x86_64")))]
        return false;
    }

    /// Number of caches.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Cache `i` (for exclusive use under its slot, or for racy reads of its words).
    pub fn cache(&self, i: usize) -> &CpuCache {
        debug_assert!(i < self.count);
        // SAFETY: `i < count`.
        unsafe { &*self.caches.add(i) }
    }

    /// The descriptor for the restartable sequences, or `None` in locked mode.
    #[cfg(all(feature = "linux", target_arch = "x86_64"))]
    pub fn fast_desc(&self) -> Option<&crate::rseq::Desc> {
        self.uses_rseq().then_some(&self.desc)
    }

    #[cfg(all(feature = "linux", target_arch = "x86_64"))]
    #[inline(always)]
    fn desc(&self) -> *const crate::rseq::Desc {
        &self.desc
    }

    #[cfg(all(feature = "linux", target_arch = "x86_64"))]
    #[inline(always)]
    fn off(&self) -> i64 {
        self.desc.rseq_off
    }

    /// Pops an object of class `c` on the current CPU (null if none), counting a malloc.
    #[inline(always)]
    pub fn pop<C: Cpu>(&self, cpu: &C, c: SizeClass) -> *mut u8 {
        #[cfg(all(feature = "linux", target_arch = "x86_64"))]
        if self.uses_rseq() {
            // SAFETY: rseq mode was chosen because glibc's area exists for every thread.
            return unsafe { crate::rseq::pop(self.desc(), self.off(), c.index()) };
        }
        cpu.with_current(|i| self.cache(i).pop(c).unwrap_or(core::ptr::null_mut()))
    }

    /// Pushes `p` on the current CPU; false if the stack is full (or unreachable).
    #[inline(always)]
    #[allow(clippy::not_unsafe_ptr_arg_deref)] // `p` is stored in a slot, never dereferenced
    pub fn push<C: Cpu>(&self, cpu: &C, c: SizeClass, p: *mut u8) -> bool {
        #[cfg(all(feature = "linux", target_arch = "x86_64"))]
        if self.uses_rseq() {
            // SAFETY: as in `pop`.
            return unsafe { crate::rseq::push(self.desc(), self.off(), c.index(), p) };
        }
        cpu.with_current(|i| self.cache(i).push(c, p))
    }

    /// Locked mode: pushes `p` on the current CPU's stack unless `elsewhere`,
    /// asked with that CPU's index, says the object belongs to another CPU.
    /// `None`: not pushed, it belongs elsewhere; `Some(false)`: the stack is full.
    #[inline(always)]
    pub fn push_owned<C: Cpu>(
        &self,
        cpu: &C,
        c: SizeClass,
        p: *mut u8,
        elsewhere: impl FnOnce(usize) -> bool,
    ) -> Option<bool> {
        cpu.with_current(|i| (!elsewhere(i)).then(|| self.cache(i).push(c, p)))
    }

    /// Pushes as many of `objs` as fit on the current CPU; returns how many.
    pub fn push_batch<C: Cpu>(&self, cpu: &C, c: SizeClass, objs: &[*mut u8]) -> usize {
        #[cfg(all(feature = "linux", target_arch = "x86_64"))]
        if self.uses_rseq() {
            // SAFETY: as in `pop`; `objs` is a valid slice.
            return unsafe {
                crate::rseq::push_batch(
                    self.desc(),
                    self.off(),
                    c.index(),
                    objs.as_ptr(),
                    objs.len(),
                )
            };
        }
        cpu.with_current(|i| self.cache(i).push_batch(c, objs))
    }

    /// Pops up to `out.len()` objects on the current CPU; returns how many.
    pub fn pop_batch<C: Cpu>(&self, cpu: &C, c: SizeClass, out: &mut [*mut u8]) -> usize {
        #[cfg(all(feature = "linux", target_arch = "x86_64"))]
        if self.uses_rseq() {
            // SAFETY: as in `pop`; `out` is a valid slice.
            return unsafe {
                crate::rseq::pop_batch(
                    self.desc(),
                    self.off(),
                    c.index(),
                    out.as_mut_ptr(),
                    out.len(),
                )
            };
        }
        cpu.with_current(|i| self.cache(i).pop_batch(c, out))
    }

    /// Carves `size` bytes at alignment `a` (a power of two) from the current
    /// CPU's tiny block, in one entry; null if there is no block or no room.
    #[inline(always)]
    pub fn carve_tiny<C: Cpu>(&self, cpu: &C, size: usize, a: usize) -> *mut u8 {
        #[cfg(all(feature = "linux", target_arch = "x86_64"))]
        if self.uses_rseq() {
            // SAFETY: as in `pop`; word entry 0 addresses the caches, TINY_FIELD is their tiny word.
            return unsafe { crate::rseq::carve(self.desc(), self.off(), TINY_FIELD, size, a - 1) };
        }
        cpu.with_current(|i| {
            let f = &self.cache(i).tiny;
            let t = Tiny::unpack(f.load(Ordering::Relaxed));
            let off = t.off.next_multiple_of(a);
            if t.block == 0 || off + size > crate::TINY_BLOCK {
                return core::ptr::null_mut();
            }
            f.store(
                Tiny {
                    block: t.block,
                    off: off + size,
                    n: t.n + 1,
                }
                .pack(),
                Ordering::Relaxed,
            );
            (t.block + off) as *mut u8
        })
    }

    /// Reads a word field (tiny or counter) of the current CPU's cache, with
    /// that CPU's index; `None` if unreachable (rseq: CPU stopped).
    #[inline(always)]
    pub fn load<C: Cpu>(&self, cpu: &C, field: usize) -> Option<(usize, u64)> {
        #[cfg(all(feature = "linux", target_arch = "x86_64"))]
        if self.uses_rseq() {
            // SAFETY: as in `pop`; `field` is a word of the cache.
            return unsafe { crate::rseq::load(self.desc(), self.off(), field) };
        }
        Some(cpu.with_current(|i| (i, self.cache(i).field(field).load(Ordering::Relaxed))))
    }

    /// Stores `new` in cache `i`'s word field if it still holds `expected` (and,
    /// with rseq, the thread still runs on CPU `i`).
    #[inline(always)]
    pub fn store_if<C: Cpu>(
        &self,
        cpu: &C,
        i: usize,
        field: usize,
        expected: u64,
        new: u64,
    ) -> bool {
        #[cfg(all(feature = "linux", target_arch = "x86_64"))]
        if self.uses_rseq() {
            // SAFETY: as in `load`.
            return unsafe {
                crate::rseq::store_if(self.desc(), self.off(), i, field, expected, new)
            };
        }
        cpu.with_slot(i, || {
            let f = self.cache(i).field(field);
            if f.load(Ordering::Relaxed) == expected {
                f.store(new, Ordering::Relaxed);
                true
            } else {
                false
            }
        })
    }

    /// Adds to a counter of the current CPU's cache (any CPU's in a race:
    /// only the sum over CPUs matters). False if unreachable.
    pub fn add<C: Cpu>(&self, cpu: &C, k: Counter, delta: u64) -> bool {
        let field = counter_field(k);
        #[cfg(all(feature = "linux", target_arch = "x86_64"))]
        if self.uses_rseq() {
            // SAFETY: as in `load`.
            return unsafe { crate::rseq::add(self.desc(), self.off(), field, delta) };
        }
        cpu.with_current(|i| {
            let f = self.cache(i).field(field);
            f.store(
                f.load(Ordering::Relaxed).wrapping_add(delta),
                Ordering::Relaxed,
            );
        });
        true
    }

    /// Runs `f` with exclusive access to cache `i` from any CPU: the slot lock,
    /// plus (rseq mode) the cache's stop word and a membarrier that restarts
    /// sections in flight on that CPU. Returns `None` if exclusivity cannot be
    /// had (rseq mode without the expedited-rseq membarrier).
    pub fn with_exclusive<C: Cpu, R>(
        &self,
        cpu: &C,
        i: usize,
        f: impl FnOnce(&CpuCache) -> R,
    ) -> Option<R> {
        cpu.with_slot(i, || {
            let cache = self.cache(i);
            #[cfg(all(feature = "linux", target_arch = "x86_64"))]
            if self.uses_rseq() {
                // Mark, fence, check: a section that read a word before its mark
                // and committed after it erased the mark; after the fence no
                // section that started before it can commit, so marks that
                // survive a fence stay. Re-mark what was erased and fence again.
                for _ in 0..STOP_ATTEMPTS {
                    cache.mark_stopped();
                    if !crate::rseq::fence_cpu(i) {
                        break;
                    }
                    if cache.all_stopped() {
                        let r = f(cache);
                        cache.unmark_stopped();
                        return Some(r);
                    }
                }
                cache.unmark_stopped();
                return None;
            }
            Some(f(cache))
        })
    }
}

/// Mark-and-fence rounds a drain tries before leaving a busy CPU's cache alone.
#[cfg(all(feature = "linux", target_arch = "x86_64"))]
const STOP_ATTEMPTS: usize = 16;

// SAFETY: the header is written once before it is published; caches are reached
// only under the exclusivity rules above.
unsafe impl Sync for Slabs {}

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
        const { assert!(CACHE_BOUND_BYTES < 1536 * 1024 && CACHE_BOUND_BYTES > 1024 * 1024) };
    }

    #[test]
    fn push_pop_batches_and_word_format() {
        let b: std::boxed::Box<core::mem::MaybeUninit<CpuCache>> = std::boxed::Box::new_zeroed();
        // SAFETY: all-zero bytes are a valid empty cache (documented on the type).
        let cache = unsafe { b.assume_init() };
        let c = SizeClass::new(67).unwrap();
        assert!(cache.pop(c).is_none());
        assert!(cache.push(c, 0x10 as *mut u8));
        assert!(cache.push(c, 0x20 as *mut u8));
        assert!(!cache.push(c, 0x30 as *mut u8), "capacity 2");
        assert_eq!(cache.pop(c), Some(0x20 as *mut u8));
        assert_eq!(cache.pops(67), 1);
        assert_eq!(cache.len(c), 1);
        let mut out = [core::ptr::null_mut(); 4];
        assert_eq!(cache.pop_batch(c, &mut out), 1);
        assert_eq!(out[0], 0x10 as *mut u8);
        assert_eq!(
            cache.push_batch(c, &[0x50 as *mut u8, 0x60 as *mut u8, 0x70 as *mut u8]),
            2
        );
        assert_eq!(cache.pop(c), Some(0x60 as *mut u8));
        assert_eq!(cache.pops(67), 2, "batches count no mallocs");
    }

    /// The rseq sections against real slabs: a stopped cache fails every
    /// section (and nothing else does), exclusive operations see through the
    /// STOP bit and keep it, and unmarking restores the stacks as they were.
    #[cfg(all(feature = "linux", target_arch = "x86_64"))]
    #[test]
    fn rseq_sections_respect_stop_marks() {
        let crate::rseq::Availability::Glibc(off) = crate::rseq::available() else {
            panic!("this machine's glibc registers rseq: the test needs it");
        };
        let count = 64; // above any CPU id this test can run on (checked below)
        let layout = std::alloc::Layout::from_size_align(Slabs::bytes(count), 64).unwrap();
        // SAFETY: non-zero layout; the block is zeroed, aligned, ours until dealloc below.
        let mem = unsafe { std::alloc::alloc_zeroed(layout) };
        // SAFETY: as above.
        let slabs = unsafe { &*Slabs::init(mem, count, Some(off)) };
        let c = SizeClass::new(5).unwrap();
        let (d, c_) = (slabs.desc(), c.index());
        let off = slabs.off();
        let objs: std::vec::Vec<*mut u8> = (1..=4).map(|i| (i * 0x1000) as *mut u8).collect();
        // SAFETY (all rseq calls below): `d` describes `slabs`, glibc's area is registered.
        let pushed = unsafe { crate::rseq::push_batch(d, off, c_, objs.as_ptr(), 3) };
        assert_eq!(pushed, 3);
        let cpu = crate::rseq::current_cpu().unwrap();
        assert!(cpu < count);
        for i in 0..count {
            slabs.cache(i).mark_stopped();
            assert!(slabs.cache(i).all_stopped());
        }
        unsafe {
            assert!(
                crate::rseq::pop(d, off, c_).is_null(),
                "a stopped stack pops nothing"
            );
            assert!(
                !crate::rseq::push(d, off, c_, objs[3]),
                "a stopped stack takes nothing"
            );
            let mut out = [core::ptr::null_mut(); 4];
            assert_eq!(crate::rseq::pop_batch(d, off, c_, out.as_mut_ptr(), 4), 0);
            assert_eq!(crate::rseq::push_batch(d, off, c_, objs.as_ptr(), 4), 0);
        }
        // Which cache holds the three depends on where the thread ran; find it.
        let holder = (0..count)
            .find(|&i| slabs.cache(i).len(c) == 3)
            .expect("three objects on one CPU");
        let cache = slabs.cache(holder);
        let mut out = [core::ptr::null_mut(); 2];
        assert_eq!(
            cache.pop_batch(c, &mut out),
            2,
            "exclusive ops see through STOP"
        );
        assert_eq!(out, [objs[1], objs[2]]);
        assert!(cache.push(c, objs[3]));
        assert!(
            cache.word(c.index()) & STOP != 0,
            "exclusive ops keep the mark"
        );
        for i in 0..count {
            slabs.cache(i).unmark_stopped();
            assert_eq!(slabs.cache(i).word(c.index()) & STOP, 0);
        }
        let mut got = std::vec::Vec::new();
        loop {
            // SAFETY: as above.
            let p = unsafe { crate::rseq::pop(d, off, c_) };
            if p.is_null() {
                break;
            }
            got.push(p);
        }
        // The thread may have migrated between sections; count over all caches.
        let left: usize = (0..count).map(|i| slabs.cache(i).len(c)).sum();
        assert_eq!(got.len() + left, 2, "objects kept across stop and unmark");
        // SAFETY: allocated above with this layout; nothing refers to it any more.
        unsafe { std::alloc::dealloc(mem, layout) };
    }

    #[test]
    fn stopped_tiny_word_refuses_carves_and_reads_full() {
        let b: std::boxed::Box<core::mem::MaybeUninit<CpuCache>> = std::boxed::Box::new_zeroed();
        // SAFETY: all-zero bytes are a valid empty cache.
        let cache = unsafe { b.assume_init() };
        cache.tiny.store(
            Tiny {
                block: 0x7000_0000_0010,
                off: 5,
                n: 2,
            }
            .pack(),
            Ordering::Relaxed,
        );
        #[cfg(all(feature = "linux", target_arch = "x86_64"))]
        {
            cache.mark_stopped();
            assert!(cache.tiny().stopped());
            assert!(
                cache.tiny().off + 1 > crate::TINY_BLOCK,
                "no carve fits a stopped word"
            );
            cache.unmark_stopped();
            assert_eq!(
                cache.tiny(),
                Tiny {
                    block: 0x7000_0000_0010,
                    off: crate::TINY_BLOCK,
                    n: 2
                }
            );
            cache.mark_stopped();
        }
        let t = cache.take_tiny();
        assert_eq!((t.block, t.n), (0x7000_0000_0010, 2));
        assert!(t.off <= crate::TINY_BLOCK);
        assert_eq!(cache.tiny().block, 0);
    }

    #[test]
    fn tiny_word_round_trips() {
        for block in [0usize, 0x7f12_3456_7890, 0xffff_9000_0000_1230] {
            for (off, n) in [(0, 0), (16, 16), (5, 3), (64, 64), (Tiny::STOPPED_OFF, 64)] {
                let t = Tiny { block, off, n };
                assert_eq!(Tiny::unpack(t.pack()), t);
            }
        }
    }
}
