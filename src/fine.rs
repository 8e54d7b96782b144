//! The fine heap: every object of a small region heap in one two-level
//! segregated-fit heap (TLSF) over granules of two words, with a boundary
//! bitmap and no header on allocated blocks.
//!
//! **Why.** The tiers round every object up to a size class and every span
//! up to pages, and keep per-CPU caches, central lists and a page map; over
//! a region of tens of kilobytes that rounding and that metadata are a third
//! of the memory, and a microcontroller has no second CPU to cache for. A
//! region heap of at most [`FINE_MAX_BYTES`] (decided when it sets itself
//! up, from the source's bound; `Heap::prefer_tiers` opts out) is served
//! from here instead: one lock, blocks rounded to a granule, metadata of
//! one bit per granule.
//!
//! **Blocks.** An arena is `granules` granules of [`GRANULE`] bytes (two
//! words: 8 bytes on 32-bit targets, 16 on 64-bit), cut into blocks of two
//! granules or more that cover it without gaps. The block of a request of
//! `size` bytes is `want_of(size)` granules long, or one more where the
//! rest of a free block was one granule (too short to be a block; aligned
//! requests place themselves so that their front gap is empty or a block),
//! so a sized free can check its layout against the block.
//!
//! **Boundary bitmap.** One bit per granule, set where a block starts, and
//! one more bit past the end, always set; and, for a free block only, the
//! bit of its second granule (its *marker*: no block starts there, since
//! blocks are two granules or more). So a block at `i` is free exactly when
//! bit `i + 1` is set; an allocated block's length is the distance to the
//! next set bit (`free` and `usable_size` without a layout); and a pointer
//! whose bit is clear is not a block start. The bits are the heap's alone,
//! so no content of an allocated block can make it look free.
//!
//! **Free blocks** hold, in their first words, `next` and `prev` (a doubly
//! linked list per bin; `prev` of a list's first block is the address of
//! its bin's head word, and `next` is a block's first word, so unlinking
//! needs no case), then their length in granules, which is also their last
//! word (the footer). A freed block finds a free left neighbour through the
//! footer candidate, the word before it: it passes only if the granule that
//! many before holds a marked block of that length, which then ends exactly
//! here. No two free blocks are ever adjacent.
//!
//! **Bins.** Lengths below [`EXACT`] granules have a bin each; above, each
//! power of two is split in [`SUB`] bins (TLSF's second level). A request
//! scans a few blocks of its own bin for a fit (first fit, as the bin's
//! blocks may be shorter than the request) and otherwise takes the first
//! block of the next non-empty bin (found in a bitmap of bins), splitting
//! off the rest.
//!
//! **Quick lists.** A freed block of at most [`QUICK_MAX`] + 1 granules
//! goes first to a singly linked list of blocks of exactly its length (as
//! dlmalloc's fastbins and rpmalloc's caches do), while the cached
//! granules stay under an eighth of the arenas; a request of `n` granules
//! takes the first block of list `n`, else of list `n + 1` (a block one
//! granule longer is also its block). A hit is a pop and a bit: no bin
//! search, no split, no merge. A cached block keeps its marker (so it is
//! not allocated: a second free of it is still a double free) and holds
//! its length with [`CACHED`] in word 2, which is how a merge tells it from
//! a listed free block and leaves it alone (words 1 and 3 locate the
//! marker's bitmap word and bit, for the pop). When the lists cannot serve a
//! request and the bins cannot either, the cached blocks go back to the
//! bins, merged, and the request tries again: the quick lists never make
//! an allocation fail.
//!
//! **Memory.** At set-up the heap reserves the source's largest free extent
//! (its state at the start, the bitmap after it); when it runs out it
//! reserves the largest one again (memory added since, e.g. by
//! `RegionSource::add_region`), up to [`MAX_ARENAS`] arenas. Nothing goes
//! back to the source.
//!
//! **Bad frees.** A pointer outside every arena, not at a block start, at a
//! free block, or with a layout whose length is not the block's is refused
//! with [`Refused`], nothing changed; the heap panics with the address.

use core::mem::size_of;
use core::ptr::{self, NonNull};

use crate::source::PageSource;

/// The unit of the fine heap's blocks: two words.
pub(crate) const GRANULE: usize = 2 * size_of::<usize>();

/// A region heap whose source holds at most this many bytes when the heap
/// sets itself up is a fine heap (see [`crate::Heap::prefer_tiers`]).
pub const FINE_MAX_BYTES: usize = 2 << 20;

/// Most arenas one fine heap holds.
pub(crate) const MAX_ARENAS: usize = 8;

const WORD: usize = size_of::<usize>();
const BITS: usize = usize::BITS as usize;

/// Block lengths `1..EXACT` granules have a bin each.
const EXACT: usize = 32;
/// Bins per power of two above `EXACT`.
const SUB: usize = 4;
const SUB_SHIFT: u32 = SUB.trailing_zeros();
/// An arena, and so a block, is shorter than `2^(MAX_LOG + 1)` granules
/// (16 MiB on 32-bit targets, 32 MiB on 64-bit: a fine heap sets itself up
/// in at most [`FINE_MAX_BYTES`], and a larger region added later is taken
/// in arenas of that size); each power of two more costs `SUB` bin words.
const MAX_LOG: u32 = 20;
const MAX_GRANULES: usize = (1 << (MAX_LOG + 1)) - 1;
const FIRST_LOG: u32 = EXACT.trailing_zeros();
/// Bins: `EXACT - 1` exact ones, then `SUB` per power of two.
const NBINS: usize = EXACT - 1 + (MAX_LOG - FIRST_LOG + 1) as usize * SUB;
const BIN_WORDS: usize = NBINS.div_ceil(BITS);
/// Blocks of its own bin a request looks at before it takes a larger bin's.
const SCAN: usize = 8;
/// Requests of at most this many granules are served from the quick lists;
/// blocks of `2..=QUICK_MAX + 1` granules are cached there on free (list
/// `n - 2` holds blocks of `n`).
const QUICK_MAX: usize = 32;
/// Word 2 of a cached block: its length, with this bit (no length has it).
const CACHED: usize = 1 << (usize::BITS - 1);
/// The quick lists hold at most 1/`QUICK_SHARE` of the arenas' granules,
/// and never more than `QUICK_CAP` (enough for a high hit rate whatever
/// the heap's size: there are only `QUICK_MAX` lengths).
const QUICK_SHARE: usize = 4;
const QUICK_CAP: usize = 4096;
/// See [`Fine::keep`].
const QUICK_KEEP: usize = 8;

/// Granules of the block of a request of `size` bytes: at least two (a
/// free block needs two for its links, length and marker).
#[inline(always)]
pub(crate) const fn want_of(size: usize) -> usize {
    let n = size.saturating_add(GRANULE - 1) / GRANULE;
    if n < 2 {
        2
    } else {
        n
    }
}

/// The bin of a block of `n >= 1` granules.
#[inline(always)]
const fn bin_of(n: usize) -> usize {
    if n < EXACT {
        n - 1
    } else {
        let log = usize::BITS - 1 - n.leading_zeros();
        let sub = (n >> (log - SUB_SHIFT)) & (SUB - 1);
        EXACT - 1 + (log - FIRST_LOG) as usize * SUB + sub
    }
}

/// Why the fine heap refused a free or a size query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Outside every arena, or not a block start (interior pointer).
    NotABlock,
    /// A free block (a double free).
    Free,
    /// The layout's size is not the block's (a wrong layout).
    WrongSize {
        /// The block's usable bytes.
        block: usize,
    },
}

/// One arena: `granules` granules from `base`, its bitmap at `bits`.
///
/// Invariant: bit `i` of the bitmap (`0 <= i <= granules`) is set iff a
/// block starts at granule `i` or `i == granules`.
#[derive(Clone, Copy)]
struct Arena {
    base: usize,
    granules: usize,
    bits: *mut usize,
}

impl Arena {
    const NONE: Arena = Arena {
        base: 0,
        granules: 0,
        bits: ptr::null_mut(),
    };

    #[inline(always)]
    fn contains(&self, a: usize) -> bool {
        a.wrapping_sub(self.base) < self.granules * GRANULE
    }

    #[inline(always)]
    fn index(&self, a: usize) -> usize {
        (a - self.base) / GRANULE
    }

    #[inline(always)]
    fn at(&self, i: usize) -> usize {
        self.base + i * GRANULE
    }

    #[inline(always)]
    fn bit(&self, i: usize) -> bool {
        // SAFETY: `i <= granules`, inside the bitmap (invariant of `Arena`).
        unsafe { *self.bits.add(i / BITS) >> (i % BITS) & 1 != 0 }
    }

    #[inline(always)]
    fn set(&self, i: usize) {
        // SAFETY: as in `bit`; the bitmap is the heap's, under its lock.
        unsafe { *self.bits.add(i / BITS) |= 1 << (i % BITS) }
    }

    /// The bitmap word of bit `i` (`i <= granules`) and the bit's mask.
    #[inline(always)]
    fn word_of(&self, i: usize) -> (*mut usize, usize) {
        // SAFETY: within the bitmap, as in `bit`.
        (unsafe { self.bits.add(i / BITS) }, 1 << (i % BITS))
    }

    #[inline(always)]
    fn clear(&self, i: usize) {
        // SAFETY: as in `set`.
        unsafe { *self.bits.add(i / BITS) &= !(1 << (i % BITS)) }
    }

    /// The first set bit after `i` (`i < granules`): the next block's start.
    #[inline(always)]
    fn next_set(&self, i: usize) -> usize {
        let mut w = (i + 1) / BITS;
        // SAFETY: `w` stays within the bitmap: bit `granules` is set.
        let mut word = unsafe { *self.bits.add(w) } & (usize::MAX << ((i + 1) % BITS));
        while word == 0 {
            w += 1;
            // SAFETY: as above.
            word = unsafe { *self.bits.add(w) };
        }
        w * BITS + word.trailing_zeros() as usize
    }
}

/// The fine heap's state (under the heap's lock, carved at the start of the
/// first arena).
pub(crate) struct Fine {
    /// Per bin, the first free block's address, or 0.
    heads: [usize; NBINS],
    /// Per length `n` in `2..=QUICK_MAX + 1` (at `n - 2`), the first cached
    /// block of `n` granules, or 0; word 0 of each is the next.
    quick: [usize; QUICK_MAX],
    /// Granules in cached blocks; invariant: `cached <= cache_cap` but for
    /// the last block pushed (see [`Fine::retire`]).
    cached: usize,
    /// Most granules the quick lists hold: 1/[`QUICK_SHARE`] of the
    /// arenas', at most [`QUICK_CAP`].
    cache_cap: usize,
    /// Granules the quick lists leave in the bins (1/[`QUICK_KEEP`] of the
    /// arenas'): a block is cached only while the bins hold more than this
    /// and the cached ones together, so a heap more than that full is a
    /// plain TLSF heap (the cached blocks' holes are not for other lengths,
    /// and a heap short of room needs them).
    keep: usize,
    /// `min(cache_cap, binned - keep)`, kept as `binned` changes: a block
    /// is cached while `cached` is below it.
    quick_limit: usize,
    /// Bit `b`: bin `b` is not empty.
    nonempty: [usize; BIN_WORDS],
    arenas: [Arena; MAX_ARENAS],
    count: usize,
    /// Granules of the arenas, and of them those in free blocks on the
    /// bins' lists: the allocated ones are the rest but for the cached
    /// ones (kept so, the fast paths count nothing but `cached`).
    granules: usize,
    binned: usize,
    mallocs: u64,
    frees: u64,
    /// Bytes reserved from the source, and of them the bitmaps and this.
    sys_bytes: usize,
    meta_bytes: usize,
    /// Stacks handed out ([`crate::Heap::alloc_stack`]) and their bytes.
    stacks: usize,
    stack_bytes: usize,
}

/// What [`Fine::stats`] reports.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FineStats {
    pub(crate) sys_bytes: usize,
    pub(crate) meta_bytes: usize,
    pub(crate) live_bytes: usize,
    /// Bytes in cached blocks (the quick lists).
    pub(crate) cached_bytes: usize,
    pub(crate) mallocs: u64,
    pub(crate) frees: u64,
    pub(crate) arenas: usize,
    pub(crate) stacks: usize,
    pub(crate) stack_bytes: usize,
}

// SAFETY: the raw pointers are the heap's own memory, reached only under the
// lock that holds the `Fine`.
unsafe impl Send for Fine {}

/// The bitmap words of an arena of up to `len` bytes.
const fn bitmap_words(len: usize) -> usize {
    (len / GRANULE + 1).div_ceil(BITS)
}

impl Fine {
    /// Sets a fine heap up in the largest free extent of `source`, its state
    /// at the start: a pointer to it, written in place by `wrap`, or `None`
    /// if the source has no extent that holds the state, a bitmap and a
    /// granule. `T` is the lock around the state (`wrap(fine)` builds it);
    /// its address is aligned to `align_of::<T>()`.
    pub(crate) fn create<S: PageSource, T>(
        source: &S,
        wrap: impl FnOnce(Fine) -> T,
        inner: impl FnOnce(&mut T) -> &mut Fine,
    ) -> Option<NonNull<T>> {
        let align = S::PAGE_SIZE.max(core::mem::align_of::<T>());
        let len = source.largest_free(align).min(MAX_GRANULES * GRANULE);
        let head = size_of::<T>().next_multiple_of(WORD);
        if len < head + bitmap_words(len) * WORD + 3 * GRANULE {
            return None;
        }
        let start = source.reserve(len, align)?;
        // SAFETY: fresh Reserved memory of `len` bytes.
        unsafe {
            if source.commit(start, len).is_err() || source.ready(start, len).is_err() {
                source.free(start, len);
                return None;
            }
        }
        let t = start.cast::<T>();
        let mut fine = Fine {
            heads: [0; NBINS],
            quick: [0; QUICK_MAX],
            cached: 0,
            cache_cap: 0,
            keep: 0,
            quick_limit: 0,
            nonempty: [0; BIN_WORDS],
            arenas: [Arena::NONE; MAX_ARENAS],
            count: 0,
            granules: 0,
            binned: 0,
            mallocs: 0,
            frees: 0,
            sys_bytes: 0,
            meta_bytes: 0,
            stacks: 0,
            stack_bytes: 0,
        };
        fine.sys_bytes = len;
        fine.meta_bytes = head;
        // SAFETY: `t` is aligned for `T` and the extent holds `head >= size_of::<T>()` bytes, ours.
        unsafe { t.as_ptr().write(wrap(fine)) };
        // SAFETY: just written; the heap publishes it only after this returns.
        let f = inner(unsafe { &mut *t.as_ptr() });
        let a = start.as_ptr() as usize;
        // SAFETY: `[a + head, a + len)` is ours and holds a bitmap and a granule (checked above).
        unsafe { f.add_arena(a + head, a + len) };
        Some(t)
    }

    /// Makes `[lo, hi)` an arena: its bitmap at `lo`, then one free block.
    ///
    /// # Safety
    /// `[lo, hi)` is Ready memory of this heap's alone, `lo` word aligned,
    /// long enough for its bitmap and a granule; `count < MAX_ARENAS`.
    unsafe fn add_arena(&mut self, lo: usize, hi: usize) {
        let words = bitmap_words(hi - lo);
        let base = (lo + words * WORD).next_multiple_of(GRANULE);
        let granules = (hi - base) / GRANULE;
        debug_assert!(granules >= 2 && granules < words * BITS);
        let bits = lo as *mut usize;
        // SAFETY: `words` words at `lo`, ours (the caller's promise).
        unsafe { bits.write_bytes(0, words) };
        let ar = Arena {
            base,
            granules,
            bits,
        };
        ar.set(0);
        ar.set(granules);
        self.arenas[self.count] = ar;
        self.count += 1;
        self.meta_bytes += base - lo;
        self.cache_cap = (self.cache_cap + granules / QUICK_SHARE).min(QUICK_CAP);
        self.keep += granules / QUICK_KEEP;
        self.granules += granules;
        // SAFETY: the arena's one block, free.
        unsafe { self.insert(&ar, 0, granules) };
    }

    /// Reserves the source's largest free extent as a new arena; whether
    /// one with at least `need` granules was added.
    fn grow<S: PageSource>(&mut self, source: &S, need: usize) -> bool {
        if self.count == MAX_ARENAS {
            return false;
        }
        let len = source
            .largest_free(S::PAGE_SIZE)
            .min(MAX_GRANULES * GRANULE);
        let want = need
            .saturating_mul(GRANULE)
            .saturating_add(bitmap_words(len) * WORD + GRANULE);
        if len < want {
            return false;
        }
        let Some(start) = source.reserve(len, S::PAGE_SIZE) else {
            return false;
        };
        // SAFETY: fresh Reserved memory of `len` bytes.
        unsafe {
            if source.commit(start, len).is_err() || source.ready(start, len).is_err() {
                source.free(start, len);
                return false;
            }
        }
        self.sys_bytes += len;
        let a = start.as_ptr() as usize;
        // SAFETY: the extent is ours, page aligned, long enough (checked).
        unsafe { self.add_arena(a, a + len) };
        true
    }

    // ------------------------------------------------------------ lists

    #[inline(always)]
    fn arena_of(&self, a: usize) -> Option<&Arena> {
        // Most fine heaps have one arena.
        if self.arenas[0].contains(a) {
            return Some(&self.arenas[0]);
        }
        self.arenas[..self.count]
            .iter()
            .skip(1)
            .find(|ar| ar.contains(a))
    }

    /// Whether block `i` of `ar` (a block start) is not allocated (free on
    /// a bin's list, or cached): its marker, the bit of its second granule
    /// (no allocated block has a bit there).
    #[inline(always)]
    fn is_free(ar: &Arena, i: usize) -> bool {
        ar.bit(i + 1)
    }

    /// Whether block `i` of `ar` is free on a bin's list (not cached): the
    /// blocks a merge may take.
    #[inline(always)]
    fn is_listed(ar: &Arena, i: usize) -> bool {
        Self::is_free(ar, i) && Self::free_len(ar.at(i)) & CACHED == 0
    }

    /// The length of the free block at `a` (with [`CACHED`] if cached).
    #[inline(always)]
    fn free_len(a: usize) -> usize {
        // SAFETY: a free block keeps its length in word 2.
        unsafe { *((a + 2 * WORD) as *const usize) }
    }

    /// Makes block `i` of `ar`, `n >= 2` granules, free: its links, its
    /// length at both ends, its marker, its bin's list.
    ///
    /// # Safety
    /// Block `i` is `n` granules that no one uses, not on a list.
    #[inline(always)]
    unsafe fn insert(&mut self, ar: &Arena, i: usize, n: usize) {
        debug_assert!(n >= 2);
        let a = ar.at(i);
        let b = bin_of(n);
        let head = self.heads[b];
        let w = a as *mut usize;
        // SAFETY: the block's words are ours (the caller's promise); `head`
        // is a free block, its `prev` word ours.
        unsafe {
            w.write(head);
            w.add(1).write(&self.heads[b] as *const usize as usize);
            w.add(2).write(n);
            ((a + n * GRANULE - WORD) as *mut usize).write(n);
            if head != 0 {
                (head as *mut usize).add(1).write(a);
            }
        }
        self.heads[b] = a;
        self.nonempty[b / BITS] |= 1 << (b % BITS);
        self.binned += n;
        self.set_quick_limit();
        ar.set(i + 1);
    }

    /// Takes free block `i` of `ar` (`n` granules) off its list and clears
    /// its marker.
    ///
    /// # Safety
    /// Block `i` is a free block of `n` granules, on its list.
    #[inline(always)]
    unsafe fn unlink(&mut self, ar: &Arena, i: usize, n: usize) {
        let w = ar.at(i) as *mut usize;
        // SAFETY: the block's links are a list's: `prev` is a head word or a
        // free block (whose first word is `next`), `next` 0 or a free block.
        unsafe {
            let next = w.read();
            let prev = w.add(1).read();
            (prev as *mut usize).write(next);
            if next != 0 {
                (next as *mut usize).add(1).write(prev);
            }
        }
        let b = bin_of(n);
        if self.heads[b] == 0 {
            self.nonempty[b / BITS] &= !(1 << (b % BITS));
        }
        self.binned -= n;
        self.set_quick_limit();
        ar.clear(i + 1);
    }

    /// Recomputes [`Fine::quick_limit`] after `binned` changed.
    #[inline(always)]
    fn set_quick_limit(&mut self) {
        self.quick_limit = self.cache_cap.min(self.binned.saturating_sub(self.keep));
    }

    /// The first non-empty bin at or after `b`.
    #[inline(always)]
    fn nonempty_from(&self, b: usize) -> Option<usize> {
        let mut w = b / BITS;
        if w >= BIN_WORDS {
            return None;
        }
        let mut word = self.nonempty[w] & (usize::MAX << (b % BITS));
        loop {
            if word != 0 {
                return Some(w * BITS + word.trailing_zeros() as usize);
            }
            w += 1;
            if w == BIN_WORDS {
                return None;
            }
            word = self.nonempty[w];
        }
    }

    // ------------------------------------------------------- operations

    /// A block for `size` bytes aligned to `align` (a power of two), from the
    /// lists or, when they have none, from a new arena of the source.
    #[inline(always)]
    pub(crate) fn alloc<S: PageSource>(
        &mut self,
        source: &S,
        size: usize,
        align: usize,
    ) -> *mut u8 {
        if size <= QUICK_MAX * GRANULE && align <= GRANULE {
            // Small: `want_of` without its overflow guard.
            let n = size.div_ceil(GRANULE).max(2);
            if let Some(p) = self.pop_quick(n) {
                return p as *mut u8;
            }
            return self.alloc_binned(source, n, align);
        }
        self.alloc_binned(source, want_of(size), align)
    }

    /// A cached block for `n <= QUICK_MAX` granules: of list `n`, else of
    /// list `n + 1`.
    #[inline(always)]
    fn pop_quick(&mut self, n: usize) -> Option<usize> {
        let mut k = n - 2;
        let mut a = self.quick[k];
        if a == 0 {
            k += 1;
            a = self.quick[k];
            if a == 0 {
                return None;
            }
        }
        let w = a as *const usize;
        // SAFETY: a cached block: word 0 is the next on its list, words 1
        // and 3 its marker's bitmap word and mask (see `retire`).
        unsafe {
            self.quick[k] = w.read();
            *(w.add(1).read() as *mut usize) &= !w.add(3).read();
        }
        self.cached -= k + 2;
        self.mallocs += 1;
        Some(a)
    }

    /// A block for `n` granules at `align` from the bins, after the quick
    /// lists could not serve it; when the bins have none, the quick lists
    /// go back to them, then a new arena of the source.
    #[inline(never)]
    fn alloc_binned<S: PageSource>(&mut self, source: &S, n: usize, align: usize) -> *mut u8 {
        let align = align.max(GRANULE);
        // What fits at any alignment: the front a placement may skip.
        let need = if align == GRANULE {
            n
        } else {
            match n.checked_add(2 * (align / GRANULE)) {
                Some(x) => x,
                None => return ptr::null_mut(),
            }
        };
        if need > MAX_GRANULES {
            return ptr::null_mut();
        }
        // A request past the quick lists' lengths would carve a block their
        // cached blocks might have merged into: they go back first
        // (dlmalloc's consolidation of its fastbins before a large request).
        if need > QUICK_MAX + 1 {
            self.flush_quick();
        }
        let mut found = self.find(n, need, align);
        if found.is_none() && self.flush_quick() {
            found = self.find(n, need, align);
        }
        if found.is_none() && self.grow(source, need) {
            found = self.find(n, need, align);
        }
        let Some((p, _)) = found else {
            return ptr::null_mut();
        };
        self.mallocs += 1;
        p as *mut u8
    }

    /// Where `n` granules at `align` go in free block `[a, a + len)`: the
    /// first aligned start whose front is empty or a block (two granules).
    #[inline(always)]
    fn place(a: usize, len: usize, n: usize, align: usize) -> Option<usize> {
        // `align` is a power of two: a mask, not a division.
        let mut s = (a + align - 1) & !(align - 1);
        if s - a == GRANULE {
            s += align;
        }
        (s + n * GRANULE <= a + len * GRANULE).then_some(s)
    }

    /// Finds and carves a block for `n` granules at `align` (`need`: what
    /// fits at any alignment); its start and length.
    #[inline(always)]
    fn find(&mut self, n: usize, need: usize, align: usize) -> Option<(usize, usize)> {
        let last = bin_of(need);
        let mut b = bin_of(n);
        loop {
            let x = self.nonempty_from(b)?;
            let mut a = self.heads[x];
            // Past `last` every block is longer than `need`: the first fits.
            // In the bins before, a block may be too short or badly placed:
            // look at a few.
            let limit = if x > last { 1 } else { SCAN };
            let mut looked = 0;
            while a != 0 && looked < limit {
                let len = Self::free_len(a);
                if let Some(s) = Self::place(a, len, n, align) {
                    let ar = *self.arena_of(a).expect("a free block lies in an arena");
                    // SAFETY: `a` is a free block of `len` granules on its list.
                    return Some((s, unsafe { self.carve(&ar, a, len, s, n) }));
                }
                // SAFETY: `a` is a free block: its first word is `next`.
                a = unsafe { *(a as *const usize) };
                looked += 1;
            }
            b = x + 1;
        }
    }

    /// Takes free block `a` (`len` granules) off its list and hands out
    /// `[start, start + n)`, giving the front and the tail back as free
    /// blocks (their neighbours are not free: free blocks never touch). A
    /// tail of one granule cannot be a block: it stays with the allocation.
    /// Returns the allocated block's length.
    ///
    /// # Safety
    /// `a` is a free block of `ar` of `len` granules; `start` is a `place` in it.
    #[inline(always)]
    unsafe fn carve(&mut self, ar: &Arena, a: usize, len: usize, start: usize, n: usize) -> usize {
        let i = ar.index(a);
        // SAFETY: the caller's promise.
        unsafe { self.unlink(ar, i, len) };
        let front = (start - a) / GRANULE;
        let si = i + front;
        if front > 0 {
            ar.set(si);
            // SAFETY: the front (two granules or more), a block of its own now.
            unsafe { self.insert(ar, i, front) };
        }
        match len - front - n {
            0 => n,
            1 => n + 1,
            tail => {
                ar.set(si + n);
                // SAFETY: the tail, a block of its own now.
                unsafe { self.insert(ar, si + n, tail) };
                n
            }
        }
    }

    /// The allocated block at `p`, checked: its arena, granule index and length.
    #[inline(always)]
    fn block(&self, p: usize) -> Result<(Arena, usize, usize), Refused> {
        let ar = *self.arena_of(p).ok_or(Refused::NotABlock)?;
        if !(p - ar.base).is_multiple_of(GRANULE) {
            return Err(Refused::NotABlock);
        }
        let i = ar.index(p);
        if !ar.bit(i) {
            return Err(Refused::NotABlock);
        }
        if Self::is_free(&ar, i) {
            return Err(Refused::Free);
        }
        Ok((ar, i, ar.next_set(i) - i))
    }

    /// Whether a block of `len` granules is the block of a request of `size`
    /// bytes (exact, or one granule more: a tail that could not be a block).
    #[inline(always)]
    fn fits_layout(len: usize, size: usize) -> Result<(), Refused> {
        let want = want_of(size);
        if len == want || len == want + 1 {
            Ok(())
        } else {
            Err(Refused::WrongSize {
                block: len * GRANULE,
            })
        }
    }

    /// The usable bytes of the allocated block at `p`.
    pub(crate) fn usable(&self, p: *mut u8) -> Result<usize, Refused> {
        self.block(p as usize).map(|(_, _, n)| n * GRANULE)
    }

    /// Frees the block at `p`; with `size`, checks that it is the block of a
    /// request of `size` bytes. Returns the block's bytes.
    #[inline(always)]
    pub(crate) fn free(&mut self, p: *mut u8, size: Option<usize>) -> Result<usize, Refused> {
        let (ar, i, n) = self.block(p as usize)?;
        if let Some(s) = size {
            Self::fits_layout(n, s)?;
        }
        self.frees += 1;
        // SAFETY: block `i` of `ar` is allocated, `n` granules, given back.
        unsafe { self.retire(&ar, i, n) };
        Ok(n * GRANULE)
    }

    /// Gives back block `i` of `n` granules: to its quick list while they
    /// have room (a block that overshoots the cap is the last one in), to
    /// the bins otherwise.
    ///
    /// # Safety
    /// Block `i` of `ar` is `n >= 2` granules long, allocated, and no one's.
    #[inline(always)]
    unsafe fn retire(&mut self, ar: &Arena, i: usize, n: usize) {
        if n <= QUICK_MAX + 1 && self.cached < self.quick_limit {
            let a = ar.at(i);
            let w = a as *mut usize;
            let (word, mask) = ar.word_of(i + 1);
            // SAFETY: the block's four words or more are ours (two granules);
            // `word` is the bitmap's. Words 1 and 3 say where the marker is,
            // so that taking the block needs no arena.
            unsafe {
                w.write(self.quick[n - 2]);
                w.add(1).write(word as usize);
                w.add(2).write(n | CACHED);
                w.add(3).write(mask);
                *word |= mask;
            }
            self.quick[n - 2] = a;
            self.cached += n;
        } else {
            // SAFETY: the caller's promise.
            unsafe { self.release_binned(ar, i, n) };
        }
    }

    /// [`Fine::release`], out of the inlined fast paths.
    ///
    /// # Safety
    /// As for [`Fine::release`].
    #[inline(never)]
    unsafe fn release_binned(&mut self, ar: &Arena, i: usize, n: usize) {
        // SAFETY: the caller's promise.
        unsafe { self.release(ar, i, n) }
    }

    /// Gives every cached block back to the bins, merged with its free
    /// neighbours; whether there was any.
    pub(crate) fn flush_quick(&mut self) -> bool {
        if self.cached == 0 {
            return false;
        }
        for k in 0..QUICK_MAX {
            let mut a = core::mem::take(&mut self.quick[k]);
            while a != 0 {
                // SAFETY: a cached block: word 0 is the next on its list.
                let next = unsafe { *(a as *const usize) };
                let ar = *self.arena_of(a).expect("a cached block lies in an arena");
                let i = ar.index(a);
                ar.clear(i + 1);
                // SAFETY: block `i`, `k + 2` granules, no one's: cached until
                // now, its marker cleared (as an allocated block's is).
                unsafe { self.release(&ar, i, k + 2) };
                a = next;
            }
        }
        self.cached = 0;
        true
    }

    /// Makes block `i` of `n` granules free, merged with free neighbours
    /// (listed ones: cached blocks stay as they are).
    ///
    /// # Safety
    /// Block `i` of `ar` is `n` granules long, allocated (or a tail just
    /// cut from an allocated block), and no one's; `n >= 2`, or its right
    /// neighbour is listed free.
    #[inline(always)]
    unsafe fn release(&mut self, ar: &Arena, i: usize, n: usize) {
        let (mut i, mut n) = (i, n);
        let j = i + n;
        if j < ar.granules && Self::is_listed(ar, j) {
            let m = Self::free_len(ar.at(j));
            // SAFETY: a free block of `m` granules.
            unsafe { self.unlink(ar, j, m) };
            ar.clear(j);
            n += m;
        }
        if let Some((k, m)) = Self::free_left(ar, i) {
            // SAFETY: a free block of `m` granules.
            unsafe { self.unlink(ar, k, m) };
            ar.clear(i);
            i = k;
            n += m;
        }
        // SAFETY: `[i, i + n)` is one block now, no one's, `n >= 2`.
        unsafe { self.insert(ar, i, n) };
    }

    /// The free block that ends where block `i` starts, if any: its start
    /// and length. The footer candidate (the word before `i`) is the
    /// caller's data if the block before is allocated; a candidate passes
    /// only if a free block (its bits say so, exactly) of that length
    /// starts there, and then it is the left neighbour. A cached block
    /// never passes: its length word has [`CACHED`].
    #[inline(always)]
    fn free_left(ar: &Arena, i: usize) -> Option<(usize, usize)> {
        if i < 2 {
            return None;
        }
        // SAFETY: the last word of the block before, ours.
        let m = unsafe { *((ar.at(i) - WORD) as *const usize) };
        if m < 2 || m > i {
            return None;
        }
        let k = i - m;
        let free = ar.bit(k) && ar.bit(k + 1) && Self::free_len(ar.at(k)) == m;
        free.then_some((k, m))
    }

    /// Resizes the block at `p` (of a request of `old` bytes, if known) to
    /// `new` bytes at `align`: in place when the block or its free right
    /// neighbour allows, else by a new block, a copy and a free. Null (and
    /// `p` untouched) when there is no room.
    pub(crate) fn realloc<S: PageSource>(
        &mut self,
        source: &S,
        p: *mut u8,
        old: Option<usize>,
        new: usize,
        align: usize,
    ) -> Result<*mut u8, Refused> {
        let a = p as usize;
        let (ar, i, n) = self.block(a)?;
        if let Some(s) = old {
            Self::fits_layout(n, s)?;
        }
        let m = want_of(new);
        if a & (align.max(GRANULE) - 1) == 0 {
            let j = i + n;
            let right_free = j < ar.granules && Self::is_listed(&ar, j);
            if m <= n {
                let t = n - m;
                if t >= 2 || (t == 1 && right_free) {
                    ar.set(i + m);
                    // SAFETY: the tail `[i + m, i + n)` is cut off, no one's;
                    // two granules, or its right neighbour is free.
                    unsafe { self.release(&ar, i + m, t) };
                }
                return Ok(p);
            }
            if right_free {
                let room = Self::free_len(ar.at(j));
                if n + room >= m {
                    // SAFETY: the free block right of ours, `room` granules.
                    unsafe { self.unlink(&ar, j, room) };
                    ar.clear(j);
                    let rest = n + room - m;
                    // A rest of one granule stays with the block.
                    if rest >= 2 {
                        ar.set(i + m);
                        // SAFETY: what is left of it, a block of its own.
                        unsafe { self.insert(&ar, i + m, rest) };
                    }
                    return Ok(p);
                }
            }
        }
        let q = self.alloc(source, new, align);
        if q.is_null() {
            return Ok(q);
        }
        // SAFETY: both blocks are ours and distinct; the old one holds `n`
        // granules, the new one at least `new` bytes.
        unsafe { ptr::copy_nonoverlapping(p, q, (n * GRANULE).min(new)) };
        self.frees += 1;
        // SAFETY: the old block, allocated and given back.
        unsafe { self.retire(&ar, i, n) };
        Ok(q)
    }

    /// Counts the block just handed out (`out`) or given back as a stack
    /// of `bytes`, not an object.
    pub(crate) fn count_stack(&mut self, bytes: usize, out: bool) {
        if out {
            self.mallocs -= 1;
            self.stacks += 1;
            self.stack_bytes += bytes;
        } else {
            self.frees -= 1;
            self.stacks -= 1;
            self.stack_bytes -= bytes;
        }
    }

    /// Granules in allocated blocks.
    fn live_granules(&self) -> usize {
        self.granules - self.binned - self.cached
    }

    /// The heap's counts.
    pub(crate) fn stats(&self) -> FineStats {
        FineStats {
            sys_bytes: self.sys_bytes,
            meta_bytes: self.meta_bytes,
            live_bytes: self.live_granules() * GRANULE,
            cached_bytes: self.cached * GRANULE,
            mallocs: self.mallocs,
            frees: self.frees,
            arenas: self.count,
            stacks: self.stacks,
            stack_bytes: self.stack_bytes,
        }
    }

    /// Free blocks on the lists.
    #[cfg(test)]
    fn free_blocks(&self) -> usize {
        let mut n = 0;
        for &h in &self.heads {
            let mut a = h;
            while a != 0 {
                n += 1;
                // SAFETY: a free block's first word is `next`.
                a = unsafe { *(a as *const usize) };
            }
        }
        n
    }

    /// Walks every arena and every list; panics on the first broken
    /// invariant: blocks of two granules or more cover the arenas, free
    /// blocks (marked) are on the list of their bin with their length
    /// written twice and no bit inside, never adjacent, cached blocks
    /// (marked, their length with [`CACHED`]) on the quick list of their
    /// length, and the allocated and cached granules add up.
    pub(crate) fn check_invariants(&self) {
        let mut free_seen = 0usize;
        let mut cached_seen = 0usize;
        let mut cached = 0usize;
        let mut live = 0usize;
        for ar in &self.arenas[..self.count] {
            assert!(
                ar.bit(0) && ar.bit(ar.granules),
                "fine: arena ends unmarked"
            );
            let mut i = 0;
            let mut prev_free = false;
            while i < ar.granules {
                let a = ar.at(i);
                assert!(ar.bit(i), "fine: {a:#x} is no block start");
                let free = Self::is_listed(ar, i);
                let n = if Self::is_free(ar, i) && !free {
                    let n = Self::free_len(a) & !CACHED;
                    assert!(
                        (2..=QUICK_MAX + 1).contains(&n) && i + n <= ar.granules,
                        "fine: cached block {a:#x} of {n}"
                    );
                    assert_eq!(
                        ar.next_set(i + 1),
                        i + n,
                        "fine: a bit inside cached block {a:#x}"
                    );
                    cached_seen += 1;
                    cached += n;
                    n
                } else if free {
                    let n = Self::free_len(a);
                    assert!(
                        n >= 2 && i + n <= ar.granules,
                        "fine: free block {a:#x} of {n}"
                    );
                    assert!(!prev_free, "fine: adjacent free blocks at {a:#x}");
                    assert_eq!(
                        ar.next_set(i + 1),
                        i + n,
                        "fine: a bit inside free block {a:#x}"
                    );
                    // SAFETY: the footer of a free block.
                    let foot = unsafe { *((a + n * GRANULE - WORD) as *const usize) };
                    assert_eq!(foot, n, "fine: free block {a:#x} footer");
                    free_seen += 1;
                    n
                } else {
                    let n = ar.next_set(i) - i;
                    assert!(n >= 2, "fine: allocated block {a:#x} of one granule");
                    live += n;
                    n
                };
                prev_free = free;
                i += n;
            }
        }
        let mut listed = 0usize;
        for (b, h) in self.heads.iter().enumerate() {
            let nonempty = self.nonempty[b / BITS] >> (b % BITS) & 1 != 0;
            assert_eq!(nonempty, *h != 0, "fine: bin {b}'s bit");
            let mut prev = h as *const usize as usize;
            let mut a = *h;
            while a != 0 {
                let ar = self
                    .arena_of(a)
                    .expect("fine: a listed block outside the arenas");
                let i = ar.index(a);
                assert!(
                    ar.bit(i) && Self::is_free(ar, i),
                    "fine: listed block {a:#x} unmarked"
                );
                assert_eq!(
                    bin_of(Self::free_len(a)),
                    b,
                    "fine: block {a:#x} in bin {b}"
                );
                // SAFETY: a free block's second word is `prev`.
                let back = unsafe { *((a + WORD) as *const usize) };
                assert_eq!(back, prev, "fine: {a:#x} prev");
                listed += 1;
                prev = a;
                // SAFETY: a free block's first word is `next`.
                a = unsafe { *(a as *const usize) };
            }
        }
        assert_eq!(listed, free_seen, "fine: listed and free blocks");
        let mut quick = 0usize;
        for (k, &h) in self.quick.iter().enumerate() {
            let mut a = h;
            while a != 0 {
                let ar = self
                    .arena_of(a)
                    .expect("fine: a cached block outside the arenas");
                let i = ar.index(a);
                assert!(
                    ar.bit(i) && Self::is_free(ar, i),
                    "fine: cached block {a:#x} unmarked"
                );
                assert_eq!(
                    Self::free_len(a),
                    (k + 2) | CACHED,
                    "fine: cached block {a:#x} on quick list {k}"
                );
                let (word, mask) = ar.word_of(i + 1);
                // SAFETY: a cached block's words 1 and 3.
                let (w1, w3) = unsafe {
                    (
                        *((a + WORD) as *const usize),
                        *((a + 3 * WORD) as *const usize),
                    )
                };
                assert!(
                    w1 == word as usize && w3 == mask,
                    "fine: cached block {a:#x} locates its marker wrong"
                );
                quick += 1;
                // SAFETY: a cached block's first word is `next`.
                a = unsafe { *(a as *const usize) };
            }
        }
        assert_eq!(quick, cached_seen, "fine: cached blocks on the quick lists");
        assert_eq!(cached, self.cached, "fine: cached granules");
        assert!(
            self.cached < self.cache_cap + QUICK_MAX + 1,
            "fine: {} granules cached, cap {}",
            self.cached,
            self.cache_cap
        );
        assert_eq!(live, self.live_granules(), "fine: allocated granules");
        let total: usize = self.arenas[..self.count].iter().map(|a| a.granules).sum();
        assert_eq!(total, self.granules, "fine: the arenas' granules");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::RegionSource;
    use crate::testing::Rng;
    use std::vec::Vec;

    /// A fine heap over a fresh region of `len` bytes, used in place (its
    /// lists point at its bins); the region is leaked.
    fn heap(len: usize) -> (RegionSource, &'static mut Fine) {
        let buf: &'static mut [u64] = Vec::leak(std::vec![0u64; len / 8]);
        // SAFETY: the buffer lives for ever and is the source's alone.
        let src = unsafe { RegionSource::new(buf.as_mut_ptr().cast(), len) };
        let p = Fine::create(&src, |f| f, |f| f).expect("room for a fine heap");
        // SAFETY: created in the leaked buffer, ours alone.
        (src, unsafe { &mut *p.as_ptr() })
    }

    #[test]
    fn bins_cover_lengths_in_order() {
        let mut last = 0;
        for n in 1..(1 << 20) {
            let b = bin_of(n);
            assert!(b == last || b == last + 1, "{n}");
            last = b;
        }
        assert!(bin_of(MAX_GRANULES) == NBINS - 1);
        for n in 1..EXACT {
            assert_eq!(bin_of(n), n - 1);
        }
    }

    #[test]
    fn fills_a_small_region_almost_whole() {
        let (src, f) = heap(64 << 10);
        let mut n = 0usize;
        loop {
            let p = f.alloc(&src, 24, 8);
            if p.is_null() {
                break;
            }
            n += 1;
        }
        f.check_invariants();
        let st = f.stats();
        assert!(
            st.meta_bytes * 100 <= 3 * (64 << 10),
            "meta {}",
            st.meta_bytes
        );
        // All but less than one block of the reserved bytes hold objects.
        let blk = want_of(24) * GRANULE;
        assert!(st.sys_bytes + 64 >= 64 << 10, "sys {}", st.sys_bytes);
        assert!(
            st.sys_bytes - st.meta_bytes - n * blk < blk,
            "{n} blocks, {st:?}"
        );
    }

    #[test]
    fn bad_frees_are_refused_and_change_nothing() {
        let (src, f) = heap(16 << 10);
        let p = f.alloc(&src, 40, 8);
        let q = f.alloc(&src, 40, 8);
        assert_eq!(
            f.free(p.wrapping_add(GRANULE), None),
            Err(Refused::NotABlock)
        );
        assert_eq!(f.free(p.wrapping_add(1), None), Err(Refused::NotABlock));
        let mut x = 0u8;
        assert_eq!(f.free(&mut x, None), Err(Refused::NotABlock));
        assert_eq!(
            f.free(p, Some(200)),
            Err(Refused::WrongSize {
                block: want_of(40) * GRANULE
            })
        );
        assert_eq!(f.free(p, Some(40)), Ok(want_of(40) * GRANULE));
        assert_eq!(f.free(p, Some(40)), Err(Refused::Free));
        assert_eq!(f.usable(p), Err(Refused::Free));
        f.check_invariants();
        assert_eq!(f.free(q, None), Ok(want_of(40) * GRANULE));
        f.check_invariants();
        assert_eq!(f.stats().live_bytes, 0);
        assert_eq!(f.free_blocks(), 1);
    }

    /// Allocated blocks whose contents look like free-list links and
    /// footers (a doubly linked list of the caller's, a length word at the
    /// end) are never taken for free blocks: their neighbours' frees leave
    /// them whole.
    #[test]
    fn contents_never_look_free() {
        let (src, f) = heap(16 << 10);
        let size = 4 * WORD;
        let p = f.alloc(&src, size, 8) as usize;
        let a = f.alloc(&src, size, 8) as usize;
        let b = f.alloc(&src, size, 8) as usize;
        let q = f.alloc(&src, size, 8) as usize;
        let words = |x: usize| x as *mut usize;
        // SAFETY: the blocks are ours, `size` bytes each.
        unsafe {
            // `a.prev = b`, `b.next = a`: what a free block's links look like.
            words(a).add(1).write(b);
            words(b).write(a);
            // `a`'s last word: the distance from `p` to `b`, as a footer would
            // be if `p` and `a` were one free block.
            words(a).add(3).write((b - p) / GRANULE);
            words(b).add(2).write((b - p) / GRANULE);
            words(b).add(3).write((b - p) / GRANULE);
        }
        f.free(p as *mut u8, Some(size)).unwrap();
        f.check_invariants();
        f.free(q as *mut u8, Some(size)).unwrap();
        f.check_invariants();
        assert_eq!(f.usable(a as *mut u8), Ok(size));
        assert_eq!(f.usable(b as *mut u8), Ok(size));
        // SAFETY: `a` and `b` are live.
        unsafe {
            assert_eq!(words(a).add(1).read(), b);
            assert_eq!(words(b).read(), a);
        }
        f.free(b as *mut u8, Some(size)).unwrap();
        f.free(a as *mut u8, Some(size)).unwrap();
        f.check_invariants();
        assert_eq!(f.free_blocks(), 1);
    }

    /// Freed small blocks wait on the quick lists (marked, so a second free
    /// is refused, and never merged), are taken again by requests of their
    /// length or one less, and go back to the bins, merged, when a request
    /// finds no room otherwise: a heap of cached blocks still serves an
    /// allocation of almost the whole arena.
    #[test]
    fn quick_lists_cache_and_give_back() {
        let (src, f) = heap(32 << 10);
        let size = 5 * GRANULE;
        let n = want_of(size);
        // A third of the heap: the bins keep the rest.
        let blocks: Vec<*mut u8> = (0..f.granules / 3 / n)
            .map(|_| f.alloc(&src, size, 8))
            .collect();
        assert!(blocks.iter().all(|p| !p.is_null()));
        assert_eq!(f.free_blocks(), 1);
        // Every other block: the cached ones sit between allocated ones.
        for &p in blocks.iter().step_by(2) {
            assert_eq!(f.free(p, Some(size)), Ok(n * GRANULE));
        }
        f.check_invariants();
        assert_eq!(f.free_blocks(), 1, "a freed block went to the bins");
        let cached = f.stats().cached_bytes;
        assert_eq!(cached, blocks.len().div_ceil(2) * n * GRANULE);
        // A cached block is not allocated: a second free and a size query are refused.
        assert_eq!(f.free(blocks[0], Some(size)), Err(Refused::Free));
        assert_eq!(f.free(blocks[0], None), Err(Refused::Free));
        assert_eq!(f.usable(blocks[0]), Err(Refused::Free));
        // A request one granule shorter takes a cached block (its block is
        // one granule longer), the last one cached first.
        let q = f.alloc(&src, size - GRANULE, 8);
        assert!(blocks.iter().step_by(2).any(|&b| b == q));
        assert_eq!(f.usable(q), Ok(n * GRANULE));
        assert_eq!(f.free(q, Some(size - GRANULE)), Ok(n * GRANULE));
        // The rest, freed: cached up to the cap, the others merged in the bins.
        for &p in blocks.iter().skip(1).step_by(2) {
            f.free(p, Some(size)).unwrap();
        }
        f.check_invariants();
        assert!(f.stats().cached_bytes > 0);
        assert_eq!(f.stats().live_bytes, 0);
        // Almost the whole arena: only after the quick lists are given back.
        let room = f.granules * GRANULE - 2 * GRANULE;
        let big = f.alloc(&src, room, 8);
        assert!(!big.is_null(), "{:?}", f.stats());
        assert_eq!(f.stats().cached_bytes, 0);
        f.check_invariants();
        f.free(big, Some(room)).unwrap();
        f.check_invariants();
        assert_eq!(f.free_blocks(), 1);
    }

    /// A heap fuller than `1 - 1/QUICK_KEEP` caches nothing: it is a plain
    /// TLSF heap, every freed block merged at once.
    #[test]
    fn a_full_heap_caches_nothing() {
        let (src, f) = heap(32 << 10);
        let size = 5 * GRANULE;
        let mut blocks = Vec::new();
        loop {
            let p = f.alloc(&src, size, 8);
            if p.is_null() {
                break;
            }
            blocks.push(p);
        }
        let freed = blocks.len() / 10;
        for &p in blocks.iter().take(freed) {
            f.free(p, Some(size)).unwrap();
        }
        f.check_invariants();
        assert!(freed * want_of(size) < f.keep);
        assert_eq!(f.stats().cached_bytes, 0);
        assert_eq!(f.free_blocks(), 1, "the freed run is one block");
    }

    /// Growing in place never takes a cached right neighbour: the block moves.
    #[test]
    fn realloc_leaves_cached_neighbours_alone() {
        let (src, f) = heap(16 << 10);
        let a = f.alloc(&src, 4 * GRANULE, 8);
        let b = f.alloc(&src, 4 * GRANULE, 8);
        let _c = f.alloc(&src, 4 * GRANULE, 8);
        // SAFETY: `a` holds four granules.
        unsafe { a.write_bytes(0x5A, 4 * GRANULE) };
        f.free(b, Some(4 * GRANULE)).unwrap();
        assert_eq!(f.usable(b), Err(Refused::Free));
        let a2 = f
            .realloc(&src, a, Some(4 * GRANULE), 6 * GRANULE, 8)
            .unwrap();
        assert!(a2 != a && a2 != b);
        for o in 0..4 * GRANULE {
            // SAFETY: the moved block's bytes.
            assert_eq!(unsafe { *a2.add(o) }, 0x5A);
        }
        f.check_invariants();
    }

    #[test]
    fn aligned_blocks_give_their_front_back() {
        let (src, f) = heap(64 << 10);
        let _pad = f.alloc(&src, 8, 8);
        for align in [16, 32, 64, 256, 4096] {
            let p = f.alloc(&src, 100, align);
            assert!(!p.is_null() && (p as usize).is_multiple_of(align));
            assert_eq!(f.usable(p), Ok(want_of(100) * GRANULE));
            f.check_invariants();
        }
    }

    /// Random allocations, frees and reallocs against a shadow model: every
    /// block's bytes keep their pattern, blocks never overlap, the
    /// invariants hold, and after freeing all the arena is one block again.
    #[test]
    fn shadow_model() {
        for seed in 1..6u64 {
            let (src, f) = heap(256 << 10);
            let mut rng = Rng::new(seed);
            let mut live: Vec<(usize, usize, u8, usize)> = Vec::new();
            for step in 0..40_000 {
                let r = rng.below(10);
                if r < 5 || live.is_empty() {
                    let size = if rng.below(8) == 0 {
                        rng.below(6000)
                    } else {
                        1 + rng.below(300)
                    };
                    let wide = rng.below(6) == 0;
                    let align: usize = 1 << rng.below(if wide { 10 } else { 4 });
                    let p = f.alloc(&src, size, align);
                    if p.is_null() {
                        continue;
                    }
                    assert!((p as usize).is_multiple_of(align));
                    let tag = step as u8;
                    // SAFETY: a fresh block of at least `size` bytes.
                    unsafe { p.write_bytes(tag, size) };
                    let blk = f.usable(p).unwrap();
                    assert!(blk == want_of(size) * GRANULE || blk == (want_of(size) + 1) * GRANULE);
                    live.push((p as usize, size, tag, blk));
                } else if r < 8 {
                    let k = rng.below(live.len());
                    let (p, size, tag, blk) = live.swap_remove(k);
                    for o in 0..size {
                        // SAFETY: the block's bytes, live.
                        assert_eq!(unsafe { *((p + o) as *const u8) }, tag);
                    }
                    assert_eq!(f.free(p as *mut u8, Some(size)), Ok(blk));
                } else {
                    let k = rng.below(live.len());
                    let (p, size, tag, _) = live[k];
                    let new = 1 + rng.below(2000);
                    let q = f.realloc(&src, p as *mut u8, Some(size), new, 8).unwrap();
                    if q.is_null() {
                        continue;
                    }
                    for o in 0..size.min(new) {
                        // SAFETY: the moved or resized block's bytes.
                        assert_eq!(unsafe { *(q.add(o)) }, tag);
                    }
                    // SAFETY: the block holds `new` bytes.
                    unsafe { q.write_bytes(tag, new) };
                    live[k] = (q as usize, new, tag, f.usable(q).unwrap());
                }
                if step % 2000 == 0 {
                    f.check_invariants();
                    let mut spans: Vec<(usize, usize)> =
                        live.iter().map(|&(p, _, _, blk)| (p, p + blk)).collect();
                    spans.sort();
                    assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "overlap");
                    let sum: usize = live.iter().map(|&(_, _, _, blk)| blk).sum();
                    assert_eq!(f.stats().live_bytes, sum);
                }
            }
            for (p, size, _, _) in live.drain(..) {
                f.free(p as *mut u8, Some(size)).unwrap();
            }
            f.check_invariants();
            assert!(f.flush_quick() || f.free_blocks() == 1);
            f.check_invariants();
            assert_eq!(f.free_blocks(), 1);
        }
    }
}
