//! Per-arena page bitmap with summaries.
//!
//! See lib.rs for the overview; this is the per-arena part of Go's `pageAlloc`
//! (go-malloc.md §4), plus the bookkeeping the scavenger needs (§6).
//!
//! An arena is a contiguous range of `npages` heap pages. Its state is:
//!
//! * `alloc`: one bit per page, 1 = in use. Bit `i % 64` of word `i / 64` is page `i`.
//! * `scav`: one bit per page, 1 = released ("scavenged"): the page is free and its
//!   memory is in the Prepared state, so it must be made Ready before use.
//! * a complete binary segment tree of summary values over the 64-bit words of
//!   `alloc`, stored heap-ordered (root at index 1, children of `i` at `2i` and
//!   `2i + 1`, leaf of word `w` at `nleaves + w`). The number of leaves is the number
//!   of words rounded up to a power of two; the padding leaves read "all in use".
//!   A summary holds the free run at the start of its range, the longest free run in
//!   it and the free run at its end, so first-fit descends from the root in
//!   O(log npages) and runs crossing any word or node boundary are found without
//!   scanning. Coalescing is implicit: freeing pages clears bits, and neighbouring
//!   free pages simply form a longer run in the summaries.
//!
//! Invariants (checked by [`ArenaPages::check_invariants`]):
//!
//! 1. `free_pages` equals the number of 0 bits in `alloc` (over `npages` pages).
//! 2. `released_pages` equals the number of 1 bits in `scav`.
//! 3. A scav bit is only ever set on a free page: `alloc & scav == 0` word by word.
//!    [`ArenaPages::alloc_range`] clears the scav bits of what it takes;
//!    [`ArenaPages::free_range`] leaves them 0 (freed pages are dirty, Ready memory).
//! 4. Every leaf summary equals the summary of its word, every padding leaf is
//!    all-in-use, and every inner summary is the merge of its two children.
//!
//! No memory is allocated here: the caller hands [`ArenaPages::init`] a block of
//! [`ArenaPages::meta_bytes`] bytes and the bitmaps and the tree are laid out in it.

use core::fmt;
use core::ptr::NonNull;

/// Pages covered by one bitmap word.
const WORD_PAGES: usize = u64::BITS as usize;
/// Alignment the caller promises for the metadata block (a cache line).
const META_ALIGN: usize = 64;
/// A bitmap word with every page free.
const WORD_ALL_FREE: u64 = 0;
/// A bitmap word with every page set (in use for `alloc`, released for `scav`).
const WORD_ALL_SET: u64 = !0;
/// Largest arena this module handles: summary fields are `u32`.
const MAX_NPAGES: usize = u32::MAX as usize;

/// Free-run summary of a range of pages (Go's `pallocSum`, unpacked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
struct Summary {
    /// Free pages at the start of the range.
    start: u32,
    /// Longest free run inside the range.
    max: u32,
    /// Free pages at the end of the range.
    end: u32,
}

impl Summary {
    /// Summary of a range with no free page (also the padding leaves).
    const ALL_IN_USE: Summary = Summary {
        start: 0,
        max: 0,
        end: 0,
    };
    /// Summary of a fully free word.
    const WORD_FREE: Summary = Summary {
        start: WORD_PAGES as u32,
        max: WORD_PAGES as u32,
        end: WORD_PAGES as u32,
    };

    /// Summary of one `alloc` word (1 = in use).
    fn of_word(word: u64) -> Summary {
        match word {
            WORD_ALL_FREE => Summary::WORD_FREE,
            WORD_ALL_SET => Summary::ALL_IN_USE,
            _ => Summary {
                start: word.trailing_zeros(),
                max: longest_zero_run(word),
                end: word.leading_zeros(),
            },
        }
    }

    /// Merge the summaries of two adjacent ranges of `child_len` pages each.
    fn merge(l: Summary, r: Summary, child_len: usize) -> Summary {
        let (ls, lm, le) = (l.start as usize, l.max as usize, l.end as usize);
        let (rs, rm, re) = (r.start as usize, r.max as usize, r.end as usize);
        let start = if ls == child_len { child_len + rs } else { ls };
        let end = if re == child_len { child_len + le } else { re };
        let max = lm.max(rm).max(le + rs);
        // Each is a count of free pages, so at most npages <= MAX_NPAGES (padding
        // leaves are in use): the casts are lossless.
        Summary {
            start: start as u32,
            max: max as u32,
            end: end as u32,
        }
    }
}

/// Longest run of 0 bits in `word`.
fn longest_zero_run(word: u64) -> u32 {
    let mut free = !word;
    let mut best = 0;
    while free != 0 {
        free >>= free.trailing_zeros();
        let run = free.trailing_ones();
        best = best.max(run);
        free = free.checked_shr(run).unwrap_or(0);
    }
    best
}

/// Mask of `len` bits starting at bit `lo` (`1 <= len`, `lo + len <= 64`).
fn bit_range(lo: usize, len: usize) -> u64 {
    debug_assert!(len >= 1 && lo + len <= WORD_PAGES);
    (WORD_ALL_SET >> (WORD_PAGES - len)) << lo
}

/// Lowest bit index `b` such that bits `b .. b + n` of `word` are all 0 (free),
/// for `1 <= n <= 64`; the shift-AND of Go's `findBitRange64`.
fn first_fit_in_word(word: u64, n: usize) -> Option<usize> {
    debug_assert!((1..=WORD_PAGES).contains(&n));
    // After the loop, bit i of `c` is set iff bits i .. i + n of `!word` are all set.
    let mut c = !word;
    let mut remaining = n - 1; // shifts still to fold in
    let mut step = 1;
    while remaining > 0 {
        if remaining <= step {
            c &= c >> remaining;
            break;
        }
        c &= c >> step;
        if c == 0 {
            return None;
        }
        remaining -= step;
        step *= 2;
    }
    if c == 0 {
        None
    } else {
        Some(c.trailing_zeros() as usize)
    }
}

/// Calls `f(word_index, mask)` for each word overlapping pages `[start, start + n)`,
/// `mask` selecting the pages of the range inside that word. `n >= 1`.
fn for_each_word(start: usize, n: usize, mut f: impl FnMut(usize, u64)) {
    let end = start + n;
    let mut page = start;
    while page < end {
        let w = page / WORD_PAGES;
        let lo = page % WORD_PAGES;
        let len = (WORD_PAGES - lo).min(end - page);
        f(w, bit_range(lo, len));
        page += len;
    }
}

/// What [`ArenaPages::alloc_range`] found in the range it took.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Taken {
    /// Pages in the range that were released (scav bit set): Prepared memory the
    /// caller must make Ready.
    pub scavenged: usize,
    /// Pages in the range that were not released (already Ready).
    pub dirty: usize,
}

/// Borrowed views of the metadata block.
struct Parts<'a> {
    alloc: &'a mut [u64],
    scav: &'a mut [u64],
    tree: &'a mut [Summary],
}

/// Page state of one arena: which pages are in use, which free pages are released,
/// and the summary tree for first-fit.
///
/// Invariants (see the module docs; [`ArenaPages::check_invariants`] checks them):
/// `free_pages` == number of 0 bits in `alloc`; `released_pages` == number of pages
/// with scav = 1; scav = 1 only on free pages; every summary equals the merge of its
/// children (leaves: the summary of their word; padding leaves: all in use).
pub struct ArenaPages {
    /// Pages in the arena (0 only for [`ArenaPages::empty`]).
    npages: usize,
    /// `npages / 64`: words in each bitmap.
    nwords: usize,
    /// `nwords` rounded up to a power of two: leaves of the tree.
    nleaves: usize,
    /// `nwords` words, 1 = in use.
    alloc: NonNull<u64>,
    /// `nwords` words, 1 = released.
    scav: NonNull<u64>,
    /// `2 * nleaves` summaries; index 0 unused, root at 1.
    tree: NonNull<Summary>,
    /// 0 bits in `alloc`.
    free_pages: usize,
    /// 1 bits in `scav`.
    released_pages: usize,
}

// SAFETY: an `ArenaPages` exclusively owns its metadata block (the `init` contract)
// and only touches it through `&self`/`&mut self`; nothing is tied to the creating
// thread, so moving it to another thread is sound.
unsafe impl Send for ArenaPages {}

impl ArenaPages {
    /// Byte offset of the `scav` bitmap in the metadata block.
    const fn scav_offset(nwords: usize) -> usize {
        nwords * core::mem::size_of::<u64>()
    }

    /// Byte offset of the summary tree in the metadata block.
    const fn tree_offset(nwords: usize) -> usize {
        2 * nwords * core::mem::size_of::<u64>()
    }

    /// Bytes of metadata needed for an arena of `npages` pages (`npages` a multiple
    /// of 64, `> 0`): the two bitmaps followed by the summary tree.
    pub const fn meta_bytes(npages: usize) -> usize {
        let nwords = npages.div_ceil(WORD_PAGES);
        let nleaves = nwords.next_power_of_two();
        Self::tree_offset(nwords) + 2 * nleaves * core::mem::size_of::<Summary>()
    }

    /// Lay out the state of an arena of `npages` pages in `meta`. All pages start
    /// free and released (scav = 1): fresh arena memory is Prepared, as Go's
    /// `pages.grow` marks new pages scavenged.
    ///
    /// Panics if `npages` is 0 or above `u32::MAX`. When it is not a multiple
    /// of 64, the last word's bits past `npages` stay in use for ever.
    ///
    /// # Safety
    ///
    /// `meta` must be valid for reads and writes of `meta_bytes(npages)` bytes,
    /// aligned to 64, and exclusively owned by the returned value for its whole
    /// lifetime (nothing else reads or writes it, and it stays allocated). Its prior
    /// contents do not matter: every byte is written here.
    pub unsafe fn init(meta: NonNull<u8>, npages: usize) -> ArenaPages {
        assert!(
            npages > 0 && npages as u64 <= MAX_NPAGES as u64,
            "pagealloc: arena of {npages} pages (must be nonzero, at most {MAX_NPAGES})"
        );
        debug_assert!(
            meta.as_ptr().addr().is_multiple_of(META_ALIGN),
            "pagealloc: metadata block not {META_ALIGN}-aligned"
        );
        let nwords = npages.div_ceil(WORD_PAGES);
        let nleaves = nwords.next_power_of_two();
        // SAFETY: the caller guarantees `meta` is valid for writes of
        // `meta_bytes(npages)` bytes; zero bytes are valid `u64`s and `Summary`s, so
        // afterwards the whole block is initialized for the slices made below.
        unsafe { meta.as_ptr().write_bytes(0, Self::meta_bytes(npages)) };
        // SAFETY: both offsets are below `meta_bytes(npages)`, inside the caller's block.
        let (scav, tree) = unsafe {
            (
                meta.add(Self::scav_offset(nwords)),
                meta.add(Self::tree_offset(nwords)),
            )
        };
        let mut pages = ArenaPages {
            npages,
            nwords,
            nleaves,
            alloc: meta.cast::<u64>(),
            scav: scav.cast::<u64>(),
            tree: tree.cast::<Summary>(),
            free_pages: npages,
            released_pages: npages,
        };
        let parts = pages.parts_mut();
        parts.scav.fill(WORD_ALL_SET);
        // `alloc` is already all zero: every page free. Past `npages`, the
        // last word's bits are in use for ever (and not released).
        let tail = npages % WORD_PAGES;
        if tail != 0 {
            let pad = bit_range(tail, WORD_PAGES - tail);
            parts.alloc[nwords - 1] = pad;
            parts.scav[nwords - 1] = !pad;
        }
        for (w, leaf) in parts.tree[nleaves..].iter_mut().enumerate() {
            *leaf = if w < nwords {
                Summary::of_word(parts.alloc[w])
            } else {
                Summary::ALL_IN_USE
            };
        }
        let mut first = nleaves / 2; // first node of the level being built
        let mut child_len = WORD_PAGES;
        while first >= 1 {
            for i in first..2 * first {
                parts.tree[i] = Summary::merge(parts.tree[2 * i], parts.tree[2 * i + 1], child_len);
            }
            first /= 2;
            child_len *= 2;
        }
        pages
    }

    /// An empty value usable in const context: no pages, `find` always `None`.
    #[cfg(test)]
    pub const fn empty() -> ArenaPages {
        ArenaPages {
            npages: 0,
            nwords: 0,
            nleaves: 0,
            alloc: NonNull::dangling(),
            scav: NonNull::dangling(),
            tree: NonNull::dangling(),
            free_pages: 0,
            released_pages: 0,
        }
    }

    /// Summaries in the tree: `2 * nleaves` (index 0 unused), none when empty.
    fn tree_len(&self) -> usize {
        if self.nleaves == 0 {
            0
        } else {
            2 * self.nleaves
        }
    }

    /// Read-only views of the bitmaps and the tree.
    fn parts(&self) -> (&[u64], &[u64], &[Summary]) {
        // SAFETY: for a value from `init`, the three regions are disjoint, inside the
        // block the caller gave us for our lifetime, aligned (64-aligned block, offsets
        // multiples of 8) and fully initialized by `init`; `&self` means no `&mut`
        // view exists. For `empty()` the lengths are 0 and the pointers are dangling
        // but aligned and non-null, which `from_raw_parts` allows.
        unsafe {
            (
                core::slice::from_raw_parts(self.alloc.as_ptr(), self.nwords),
                core::slice::from_raw_parts(self.scav.as_ptr(), self.nwords),
                core::slice::from_raw_parts(self.tree.as_ptr(), self.tree_len()),
            )
        }
    }

    /// Mutable views of the bitmaps and the tree.
    fn parts_mut(&mut self) -> Parts<'_> {
        // SAFETY: as in `parts`; `&mut self` makes these the only views, and the
        // three regions do not overlap, so the three `&mut` slices are disjoint.
        unsafe {
            Parts {
                alloc: core::slice::from_raw_parts_mut(self.alloc.as_ptr(), self.nwords),
                scav: core::slice::from_raw_parts_mut(self.scav.as_ptr(), self.nwords),
                tree: core::slice::from_raw_parts_mut(self.tree.as_ptr(), self.tree_len()),
            }
        }
    }

    /// Pages in the arena.
    #[cfg(test)]
    pub fn npages(&self) -> usize {
        self.npages
    }

    /// Free pages (released or not).
    pub fn free_pages(&self) -> usize {
        self.free_pages
    }

    /// Free pages whose memory is released (Prepared).
    pub fn released_pages(&self) -> usize {
        self.released_pages
    }

    /// Free pages that are not released (dirty free pages, Ready memory).
    #[cfg(test)]
    pub fn free_dirty_pages(&self) -> usize {
        self.free_pages - self.released_pages
    }

    /// Longest free run (the root's max).
    pub fn max_free_run(&self) -> usize {
        if self.npages == 0 {
            return 0;
        }
        self.parts().2[1].max as usize
    }

    /// Start of the highest free run of `n` pages (the top `n` pages of the
    /// highest free range that long), or `None`. O(npages / 64) words: for
    /// the rare allocations that should stay out of the way of first fit
    /// (metadata carved from a small arena).
    pub fn find_last(&self, n: usize) -> Option<usize> {
        if n == 0 || n > self.max_free_run() {
            return None;
        }
        let (alloc, _, _) = self.parts();
        // Free pages directly above the word being looked at.
        let mut run = 0;
        for w in (0..self.nwords).rev() {
            let word = alloc[w];
            if word == WORD_ALL_FREE {
                if run + WORD_PAGES >= n {
                    return Some(w * WORD_PAGES + WORD_PAGES - (n - run));
                }
                run += WORD_PAGES;
                continue;
            }
            for b in (0..WORD_PAGES).rev() {
                if word >> b & 1 == 0 {
                    run += 1;
                    if run == n {
                        return Some(w * WORD_PAGES + b);
                    }
                } else {
                    run = 0;
                }
            }
        }
        None
    }

    /// Leftmost start of a free run of `n` pages, or `None`. O(log npages).
    ///
    /// `n` must be at least 1 (debug-asserted; `n == 0` gives `None`).
    pub fn find(&self, n: usize) -> Option<usize> {
        debug_assert!(n >= 1, "pagealloc: find(0)");
        if n == 0 || n > self.max_free_run() {
            return None;
        }
        Some(self.descend(1, 0, self.nleaves * WORD_PAGES, n))
    }

    /// Leftmost start of a free run of `n` pages that lies inside tree node `node`
    /// (covering `len` pages from page `pos`); the node's max must be `>= n`.
    fn descend(&self, mut node: usize, mut pos: usize, mut len: usize, n: usize) -> usize {
        let (alloc, _, tree) = self.parts();
        debug_assert!(tree[node].max as usize >= n);
        while node < self.nleaves {
            let half = len / 2;
            let (l, r) = (tree[2 * node], tree[2 * node + 1]);
            if l.max as usize >= n {
                node *= 2;
            } else if l.end as usize + r.start as usize >= n {
                return pos + half - l.end as usize;
            } else {
                node = 2 * node + 1;
                pos += half;
            }
            len = half;
        }
        // A leaf whose max is >= n, so n <= 64.
        let w = node - self.nleaves;
        let bit = first_fit_in_word(alloc[w], n)
            .expect("pagealloc: summary tree out of sync with the alloc bitmap");
        pos + bit
    }

    /// Leftmost start `s >= from` of a free run of `n >= 1` pages, or `None`.
    /// O(log npages): the first word is searched with the pages below `from` masked
    /// as in use, then the canonical nodes covering the words after it are visited
    /// left to right, carrying the free run that reaches each node's start.
    fn find_from(&self, n: usize, from: usize) -> Option<usize> {
        if from >= self.npages || n > self.max_free_run() {
            return None;
        }
        if from == 0 {
            return self.find(n);
        }
        let (alloc, _, tree) = self.parts();
        let w0 = from / WORD_PAGES;
        let below_from = (1u64 << (from % WORD_PAGES)) - 1; // pages of w0 under `from`
        let first = alloc[w0] | below_from;
        if n <= WORD_PAGES {
            if let Some(bit) = first_fit_in_word(first, n) {
                return Some(w0 * WORD_PAGES + bit);
            }
        }
        let mut carry = first.leading_zeros() as usize;
        // Nodes covering leaves [w0 + 1, nleaves), bottom-up; with the range open to
        // the right end, only left-boundary nodes occur, in address order.
        let mut l = self.nleaves + w0 + 1;
        let mut r = 2 * self.nleaves;
        let mut level_first = self.nleaves; // index of the level's first node
        let mut len = WORD_PAGES; // pages per node on this level
        while l < r {
            if l % 2 == 1 {
                let s = tree[l];
                let pos = (l - level_first) * len;
                if carry + s.start as usize >= n {
                    return Some(pos - carry);
                }
                if s.max as usize >= n {
                    return Some(self.descend(l, pos, len, n));
                }
                carry = if s.start as usize == len {
                    carry + len
                } else {
                    s.end as usize
                };
                l += 1;
            }
            l /= 2;
            r /= 2;
            level_first /= 2;
            len *= 2;
        }
        None
    }

    /// Leftmost start `s` of a free run of `n` pages with `s % align_pages == 0`
    /// (`align_pages` a power of two), or `None` if there is no such run.
    ///
    /// Exact first fit, not `find(n + align_pages - 1)` rounded up: take the leftmost
    /// fit `s` at or after `from` (initially 0), round it up to `a`; if `[a, a + n)`
    /// is free that is the answer (no aligned fit can start in `[from, a)`),
    /// otherwise continue from `a`. Each round costs O(log npages + n / 64) and
    /// passes at least one aligned boundary and one free run, so there are at most
    /// min(npages / align_pages, free runs) rounds; the first usually succeeds.
    pub fn find_aligned(&self, n: usize, align_pages: usize) -> Option<usize> {
        assert!(
            align_pages.is_power_of_two(),
            "pagealloc: alignment {align_pages} is not a power of two"
        );
        if align_pages == 1 {
            // Every start is aligned: plain first fit, no re-check of the run.
            return self.find(n);
        }
        let mut from = 0;
        loop {
            let s = self.find_from(n, from)?;
            let a = s.checked_next_multiple_of(align_pages)?;
            if self.is_free(a, n) {
                return Some(a);
            }
            debug_assert!(a > s, "an aligned fit at s would have passed");
            from = a;
        }
    }

    /// Mark `[start, start + n)` in use (they must all be free: debug-asserted),
    /// clear their scav bits and update the summaries. Reports how many of the
    /// pages were released (the caller must make them Ready) and how many dirty.
    pub fn alloc_range(&mut self, start: usize, n: usize) -> Taken {
        self.check_range(start, n);
        let mut taken = Taken::default();
        if n == 0 {
            return taken;
        }
        let mut newly_used = 0;
        let parts = self.parts_mut();
        for_each_word(start, n, |w, mask| {
            debug_assert!(
                parts.alloc[w] & mask == 0,
                "pagealloc: alloc_range({start}, {n}) takes a page already in use"
            );
            let released = (parts.scav[w] & mask).count_ones() as usize;
            taken.scavenged += released;
            taken.dirty += mask.count_ones() as usize - released;
            newly_used += (mask & !parts.alloc[w]).count_ones() as usize;
            parts.alloc[w] |= mask;
            parts.scav[w] &= !mask;
        });
        self.free_pages -= newly_used;
        self.released_pages -= taken.scavenged;
        self.update(start, n);
        taken
    }

    /// Mark `[start, start + n)` free. The pages' scav bits stay 0: they are dirty
    /// (Ready memory).
    ///
    /// Panics if any page of the range is already free: that is a double free.
    pub fn free_range(&mut self, start: usize, n: usize) {
        self.check_range(start, n);
        if n == 0 {
            return;
        }
        // Check everything first so a panic leaves the state untouched.
        let (alloc, _, _) = self.parts();
        for_each_word(start, n, |w, mask| {
            let already_free = mask & !alloc[w];
            if already_free != 0 {
                let page = w * WORD_PAGES + already_free.trailing_zeros() as usize;
                panic!(
                    "pagealloc: double free: page {page} of free_range({start}, {n}) is already free"
                );
            }
        });
        let parts = self.parts_mut();
        for_each_word(start, n, |w, mask| {
            debug_assert!(
                parts.scav[w] & mask == 0,
                "pagealloc: scav bit on an in-use page"
            );
            parts.alloc[w] &= !mask;
        });
        self.free_pages += n;
        self.update(start, n);
    }

    /// Are all pages of `[start, start + n)` free? A range reaching past the arena
    /// is not. An empty range inside the arena is.
    pub fn is_free(&self, start: usize, n: usize) -> bool {
        match start.checked_add(n) {
            Some(end) if end <= self.npages => {}
            _ => return false,
        }
        if n == 0 {
            return true;
        }
        let (alloc, _, _) = self.parts();
        let mut free = true;
        for_each_word(start, n, |w, mask| free &= alloc[w] & mask == 0);
        free
    }

    /// How many pages of `[start, start + n)` are free and released; used when a
    /// caller grows a span in place. The range must lie inside the arena.
    #[cfg(test)]
    pub fn count_released(&self, start: usize, n: usize) -> usize {
        self.check_range(start, n);
        if n == 0 {
            return 0;
        }
        let (alloc, scav, _) = self.parts();
        let mut count = 0;
        for_each_word(start, n, |w, mask| {
            count += (scav[w] & !alloc[w] & mask).count_ones() as usize
        });
        count
    }

    /// Calls `f(start, n)` for each maximal run of free, released pages inside
    /// `[start, start + len)`, lowest first. The heap uses it to make exactly
    /// those pages Ready before it takes a range. The range must lie inside the arena.
    pub fn released_runs(&self, start: usize, len: usize, mut f: impl FnMut(usize, usize)) {
        self.check_range(start, len);
        if len == 0 || self.released_pages == 0 {
            return;
        }
        let (alloc, scav, _) = self.parts();
        // A word at a time: the run being collected, `[lo, hi)`, grows upward
        // across words; words with no free released page in the range cost one test.
        let mut run: Option<(usize, usize)> = None;
        for_each_word(start, len, |w, mask| {
            let mut bits = scav[w] & !alloc[w] & mask;
            let base = w * WORD_PAGES;
            if bits == 0 {
                if let Some((lo, hi)) = run.take() {
                    f(lo, hi - lo);
                }
                return;
            }
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                let k = (bits >> b).trailing_ones() as usize;
                let (lo, hi) = (base + b, base + b + k);
                run = match run {
                    Some((plo, phi)) if phi == lo => Some((plo, hi)),
                    Some((plo, phi)) => {
                        f(plo, phi - plo);
                        Some((lo, hi))
                    }
                    None => Some((lo, hi)),
                };
                bits &= !bit_range(b, k);
            }
        });
        if let Some((lo, hi)) = run {
            f(lo, hi - lo);
        }
    }

    /// Scavenge: release free, not yet released pages from the highest page down,
    /// in maximal runs (a run may span words), at most `max_pages` pages in total
    /// (the last run is clipped, keeping its highest pages). Sets the pages' scav
    /// bits and calls `release(start_page, n_pages)` once per run, highest run
    /// first; the caller returns the memory to the OS there. Returns the number of
    /// pages released. Words with no free, unreleased page cost one test each.
    ///
    /// The scav bits are set before `release` is called for a run (Go holds the
    /// pages as allocated meanwhile; here the caller holds the heap lock).
    pub fn scavenge(&mut self, max_pages: usize, mut release: impl FnMut(usize, usize)) -> usize {
        let mut budget = max_pages;
        // The run being collected, `[lo, hi)`; it grows downward across words.
        let mut pending: Option<(usize, usize)> = None;
        let mut w = self.nwords;
        while w > 0 && budget > 0 {
            w -= 1;
            let (alloc, scav, _) = self.parts();
            let mut cand = !(alloc[w] | scav[w]);
            while cand != 0 && budget > 0 {
                let top = WORD_PAGES - 1 - cand.leading_zeros() as usize;
                // Candidate bits at and directly below `top`.
                let run = (cand << (WORD_PAGES - 1 - top)).leading_ones() as usize;
                let take = run.min(budget);
                let lo_bit = top + 1 - take;
                cand &= !bit_range(top + 1 - run, run);
                budget -= take;
                self.parts_mut().scav[w] |= bit_range(lo_bit, take);
                self.released_pages += take;
                let (lo, hi) = (w * WORD_PAGES + lo_bit, w * WORD_PAGES + top + 1);
                pending = match pending {
                    Some((plo, phi)) if plo == hi => Some((lo, phi)),
                    Some((plo, phi)) => {
                        release(plo, phi - plo);
                        Some((lo, hi))
                    }
                    None => Some((lo, hi)),
                };
            }
        }
        if let Some((lo, hi)) = pending {
            release(lo, hi - lo);
        }
        max_pages - budget
    }

    /// Walk everything and panic with a message if any invariant is broken:
    /// summaries against recomputation, counters against popcounts, scav bits only
    /// on free pages. For tests and the `checks` feature. O(npages / 64).
    pub fn check_invariants(&self) {
        if self.npages == 0 {
            assert!(
                self.free_pages == 0 && self.released_pages == 0,
                "pagealloc: empty arena with pages"
            );
            return;
        }
        let (alloc, scav, tree) = self.parts();
        let mut free = 0;
        let mut released = 0;
        for w in 0..self.nwords {
            assert!(
                alloc[w] & scav[w] == 0,
                "pagealloc: word {w}: scav bits on in-use pages ({:#x})",
                alloc[w] & scav[w]
            );
            free += alloc[w].count_zeros() as usize;
            released += scav[w].count_ones() as usize;
        }
        assert_eq!(
            free, self.free_pages,
            "pagealloc: free_pages counter disagrees with the alloc bitmap"
        );
        assert_eq!(
            released, self.released_pages,
            "pagealloc: released_pages counter disagrees with the scav bitmap"
        );
        for w in 0..self.nleaves {
            let want = if w < self.nwords {
                Summary::of_word(alloc[w])
            } else {
                Summary::ALL_IN_USE
            };
            assert_eq!(
                tree[self.nleaves + w],
                want,
                "pagealloc: leaf summary of word {w} is stale"
            );
        }
        let mut first = self.nleaves / 2;
        let mut child_len = WORD_PAGES;
        while first >= 1 {
            for i in first..2 * first {
                let want = Summary::merge(tree[2 * i], tree[2 * i + 1], child_len);
                assert_eq!(
                    tree[i], want,
                    "pagealloc: summary node {i} is not the merge of its children"
                );
            }
            first /= 2;
            child_len *= 2;
        }
    }

    /// Panics unless `[start, start + n)` lies inside the arena.
    fn check_range(&self, start: usize, n: usize) {
        assert!(
            start.checked_add(n).is_some_and(|end| end <= self.npages),
            "pagealloc: range {start}+{n} outside an arena of {} pages",
            self.npages
        );
    }

    /// Recompute the summaries over the words of `[start, start + n)` and their
    /// ancestors. `n >= 1`.
    ///
    /// Once the changed nodes of a level have narrowed to one node and that node's
    /// summary comes out as it was, every ancestor's would too (a summary is a
    /// function of its children only), so the walk stops there: an allocation
    /// inside a long free run changes a few levels, not all of them.
    fn update(&mut self, start: usize, n: usize) {
        let nleaves = self.nleaves;
        let parts = self.parts_mut();
        let w0 = start / WORD_PAGES;
        let w1 = (start + n - 1) / WORD_PAGES;
        let mut changed = false;
        for w in w0..=w1 {
            let sum = Summary::of_word(parts.alloc[w]);
            changed |= parts.tree[nleaves + w] != sum;
            parts.tree[nleaves + w] = sum;
        }
        if !changed {
            return;
        }
        let (mut lo, mut hi) = ((nleaves + w0) / 2, (nleaves + w1) / 2);
        let mut child_len = WORD_PAGES;
        while lo >= 1 {
            if lo == hi {
                let sum = Summary::merge(parts.tree[2 * lo], parts.tree[2 * lo + 1], child_len);
                if parts.tree[lo] == sum {
                    return;
                }
                parts.tree[lo] = sum;
            } else {
                for i in lo..=hi {
                    parts.tree[i] =
                        Summary::merge(parts.tree[2 * i], parts.tree[2 * i + 1], child_len);
                }
            }
            lo /= 2;
            hi /= 2;
            child_len *= 2;
        }
    }
}

impl fmt::Debug for ArenaPages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArenaPages")
            .field("npages", &self.npages)
            .field("free_pages", &self.free_pages)
            .field("released_pages", &self.released_pages)
            .field("max_free_run", &self.max_free_run())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_runs_lists_released_free_runs() {
        let mut block = std::vec![0u64; ArenaPages::meta_bytes(512) / 8 + 8];
        // The Vec is 8-aligned; meta needs 64: use an aligned offset inside it.
        let base = block.as_mut_ptr() as usize;
        let aligned = base.next_multiple_of(64);
        // SAFETY: `aligned` is 64-aligned and the 8 spare words leave `meta_bytes(512)` bytes of
        // `block` after it; `block` outlives `a` and is not touched otherwise.
        let mut a = unsafe { ArenaPages::init(NonNull::new(aligned as *mut u8).unwrap(), 512) };
        let mut runs = std::vec::Vec::new();
        a.released_runs(0, 512, |s, n| runs.push((s, n)));
        assert_eq!(runs, [(0, 512)]);
        a.alloc_range(10, 100); // dirty after free
        a.free_range(10, 100);
        a.alloc_range(300, 5);
        runs.clear();
        a.released_runs(5, 400, |s, n| runs.push((s, n)));
        assert_eq!(runs, [(5, 5), (110, 190), (305, 100)]);
    }
    use std::alloc::{alloc_zeroed, dealloc, Layout};
    use std::vec;
    use std::vec::Vec;

    /// Pages in a 64 MiB arena.
    const ARENA_PAGES: usize = 8192;
    /// A non-power-of-two arena size (padding leaves in the tree).
    const ODD_PAGES: usize = 8192 + 512 * 3;

    /// An `ArenaPages` with its metadata block, freed on drop.
    struct Arena {
        pages: ArenaPages,
        meta: NonNull<u8>,
        layout: Layout,
    }

    impl Arena {
        fn new(npages: usize) -> Arena {
            let layout =
                Layout::from_size_align(ArenaPages::meta_bytes(npages), META_ALIGN).unwrap();
            // SAFETY: the layout has a nonzero size.
            let meta =
                NonNull::new(unsafe { alloc_zeroed(layout) }).expect("test allocation failed");
            // SAFETY: `meta` is a fresh block of meta_bytes(npages) bytes, 64-aligned,
            // owned by this `Arena` and freed only after `pages` is no longer used.
            let pages = unsafe { ArenaPages::init(meta, npages) };
            Arena {
                pages,
                meta,
                layout,
            }
        }
    }

    impl Drop for Arena {
        fn drop(&mut self) {
            self.pages = ArenaPages::empty();
            // SAFETY: allocated in `new` with this layout; `pages` no longer points at it.
            unsafe { dealloc(self.meta.as_ptr(), self.layout) };
        }
    }

    /// Run `scavenge` and collect the `release` calls.
    fn scavenge_calls(p: &mut ArenaPages, max: usize) -> (usize, Vec<(usize, usize)>) {
        let mut calls = Vec::new();
        let n = p.scavenge(max, |s, n| calls.push((s, n)));
        (n, calls)
    }

    /// Arena with every page in use except the given ranges.
    fn with_free(npages: usize, free: &[(usize, usize)]) -> Arena {
        let mut a = Arena::new(npages);
        a.pages.alloc_range(0, npages);
        for &(s, n) in free {
            a.pages.free_range(s, n);
        }
        a.pages.check_invariants();
        a
    }

    #[test]
    fn word_helpers() {
        assert_eq!(first_fit_in_word(0, 64), Some(0));
        assert_eq!(first_fit_in_word(1, 64), None);
        assert_eq!(first_fit_in_word(1, 63), Some(1));
        assert_eq!(first_fit_in_word(1 << 63, 63), Some(0));
        assert_eq!(first_fit_in_word(!0, 1), None);
        assert_eq!(first_fit_in_word(!(1 << 63), 1), Some(63));
        assert_eq!(first_fit_in_word(!(0b111 << 20), 3), Some(20));
        assert_eq!(first_fit_in_word(!(0b111 << 20), 4), None);
        // Two runs of 5: the lower one wins; a run of 6 is only at the top.
        let w = !((0b11111 << 3) | (0b11111 << 30) | (0b111111 << 58));
        assert_eq!(first_fit_in_word(w, 5), Some(3));
        assert_eq!(first_fit_in_word(w, 6), Some(58));
        assert_eq!(first_fit_in_word(w, 7), None);
        assert_eq!(longest_zero_run(0), 64);
        assert_eq!(longest_zero_run(!0), 0);
        assert_eq!(longest_zero_run(w), 6);
        assert_eq!(
            Summary::of_word(w),
            Summary {
                start: 0,
                max: 6,
                end: 6
            }
        );
        assert_eq!(
            Summary::of_word(0xff00),
            Summary {
                start: 8,
                max: 48,
                end: 48
            }
        );
        for n in 1..=64 {
            assert_eq!(first_fit_in_word(0, n), Some(0));
            assert_eq!(first_fit_in_word(1, n), if n < 64 { Some(1) } else { None });
        }
    }

    #[test]
    fn fresh_arena() {
        for npages in [1, 37, 64, 100, 512, ARENA_PAGES, ODD_PAGES, ODD_PAGES + 13] {
            let a = Arena::new(npages);
            let p = &a.pages;
            p.check_invariants();
            assert_eq!(p.npages(), npages);
            assert_eq!(p.free_pages(), npages);
            assert_eq!(p.released_pages(), npages);
            assert_eq!(p.free_dirty_pages(), 0);
            assert_eq!(p.max_free_run(), npages);
            assert_eq!(p.find(1), Some(0));
            assert_eq!(p.find(npages), Some(0));
            assert_eq!(p.find(npages + 1), None);
            assert!(p.is_free(0, npages));
            assert!(!p.is_free(1, npages));
            assert!(!p.is_free(usize::MAX, 2));
            assert_eq!(p.count_released(0, npages), npages);
        }
    }

    #[test]
    fn empty_is_const_and_inert() {
        const E: ArenaPages = ArenaPages::empty();
        let mut e = E;
        e.check_invariants();
        assert_eq!(e.npages(), 0);
        assert_eq!(e.max_free_run(), 0);
        assert_eq!(e.find(1), None);
        assert_eq!(e.find_aligned(1, 8), None);
        assert!(!e.is_free(0, 1));
        assert_eq!(scavenge_calls(&mut e, 100), (0, vec![]));
    }

    #[test]
    fn find_at_word_boundaries() {
        let a = with_free(ARENA_PAGES, &[(60, 8)]);
        let p = &a.pages;
        assert_eq!(p.find(1), Some(60));
        assert_eq!(p.find(8), Some(60));
        assert_eq!(p.find(9), None);
        assert_eq!(p.max_free_run(), 8);

        // Exactly one word, and runs ending / starting on a word edge.
        let a = with_free(ARENA_PAGES, &[(64, 64), (250, 6), (384, 3)]);
        let p = &a.pages;
        assert_eq!(p.find(64), Some(64));
        assert_eq!(p.find(65), None);
        assert_eq!(p.find(6), Some(64));
        let a = with_free(ARENA_PAGES, &[(250, 6), (384, 3), (8192 - 2, 2)]);
        let p = &a.pages;
        assert_eq!(p.find(6), Some(250));
        assert_eq!(p.find(4), Some(250));
        assert_eq!(p.find(3), Some(250));
        assert_eq!(p.find(7), None);
        assert_eq!(p.find(1), Some(250));
        let a = with_free(ARENA_PAGES, &[(384, 3), (8192 - 2, 2)]);
        assert_eq!(a.pages.find(3), Some(384));
        assert_eq!(a.pages.find(2), Some(384));
        let a = with_free(ARENA_PAGES, &[(8192 - 2, 2)]);
        assert_eq!(a.pages.find(2), Some(8190));
        assert_eq!(a.pages.find(1), Some(8190));
        assert_eq!(a.pages.find(3), None);
    }

    #[test]
    fn find_runs_crossing_many_words() {
        let a = with_free(ARENA_PAGES, &[(100, 1000), (2000, 3000), (7000, 1192)]);
        let p = &a.pages;
        assert_eq!(p.find(1000), Some(100));
        assert_eq!(p.find(1001), Some(2000));
        assert_eq!(p.find(1192), Some(2000));
        assert_eq!(p.find(3000), Some(2000));
        assert_eq!(p.find(3001), None);
        assert_eq!(p.max_free_run(), 3000);
        // A run across the middle of the tree (the root's left/right boundary).
        let a = with_free(ARENA_PAGES, &[(4096 - 700, 1400)]);
        assert_eq!(a.pages.find(1400), Some(4096 - 700));
        assert_eq!(a.pages.find(1401), None);
        // Padding leaves of an odd-sized arena never look free.
        let a = with_free(ODD_PAGES, &[(ODD_PAGES - 600, 600)]);
        assert_eq!(a.pages.find(600), Some(ODD_PAGES - 600));
        assert_eq!(a.pages.find(601), None);
    }

    #[test]
    fn find_from_carries_runs_across_nodes() {
        // Free: [100, 130), [150, 1100) (spans whole nodes), [2000, 2100).
        let a = with_free(ARENA_PAGES, &[(100, 30), (150, 950), (2000, 100)]);
        let p = &a.pages;
        assert_eq!(p.find_from(30, 0), Some(100));
        assert_eq!(p.find_from(30, 101), Some(150));
        assert_eq!(p.find_from(29, 101), Some(101));
        assert_eq!(p.find_from(950, 150), Some(150));
        assert_eq!(p.find_from(940, 160), Some(160));
        assert_eq!(p.find_from(941, 160), None);
        assert_eq!(p.find_from(100, 1050), Some(2000));
        assert_eq!(p.find_from(50, 1050), Some(1050));
        assert_eq!(p.find_from(1, 1100), Some(2000));
        assert_eq!(p.find_from(1, 2099), Some(2099));
        assert_eq!(p.find_from(2, 2099), None);
        assert_eq!(p.find_from(1, ARENA_PAGES), None);
        for from in 150..1100 {
            assert_eq!(p.find_from(1100 - from, from), Some(from), "from {from}");
            let next = if 1101 - from <= 100 { Some(2000) } else { None };
            assert_eq!(p.find_from(1101 - from, from), next, "from {from}");
        }
    }

    #[test]
    fn n_one_and_full() {
        let mut a = Arena::new(512);
        let p = &mut a.pages;
        for i in 0..512 {
            assert_eq!(p.find(1), Some(i));
            assert_eq!(
                p.alloc_range(i, 1),
                Taken {
                    scavenged: 1,
                    dirty: 0
                }
            );
        }
        assert_eq!(p.find(1), None);
        assert_eq!(p.max_free_run(), 0);
        assert_eq!(p.free_pages(), 0);
        p.free_range(0, 512);
        assert_eq!(p.find(512), Some(0));
        assert_eq!(p.find(513), None);
        assert_eq!(
            p.alloc_range(0, 512),
            Taken {
                scavenged: 0,
                dirty: 512
            }
        );
        p.check_invariants();
    }

    #[test]
    fn free_coalesces_neighbours() {
        let mut a = Arena::new(512);
        let p = &mut a.pages;
        p.alloc_range(0, 10);
        p.alloc_range(10, 10);
        p.alloc_range(20, 10);
        p.alloc_range(30, 482);
        p.free_range(10, 10);
        assert_eq!(p.find(10), Some(10));
        assert_eq!(p.find(11), None);
        p.free_range(0, 10);
        assert_eq!(p.find(20), Some(0));
        p.free_range(20, 10);
        assert_eq!(p.find(30), Some(0));
        assert_eq!(p.find(31), None);
        p.free_range(30, 482);
        assert_eq!(p.find(512), Some(0));
        assert_eq!(p.free_dirty_pages(), 512);
        p.check_invariants();
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_panics() {
        let mut a = Arena::new(512);
        a.pages.alloc_range(0, 100);
        a.pages.free_range(50, 10);
        a.pages.free_range(40, 20);
    }

    #[test]
    fn double_free_leaves_state_untouched() {
        let mut a = Arena::new(512);
        a.pages.alloc_range(0, 100);
        a.pages.free_range(90, 10);
        let r =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| a.pages.free_range(0, 95)));
        assert!(r.is_err());
        a.pages.check_invariants();
        assert_eq!(a.pages.free_pages(), 422);
    }

    #[test]
    fn find_aligned_is_exact_first_fit() {
        let a = with_free(512, &[(3, 8), (64, 8), (200, 100)]);
        let p = &a.pages;
        assert_eq!(p.find_aligned(8, 1), Some(3));
        assert_eq!(p.find_aligned(4, 4), Some(4));
        assert_eq!(p.find_aligned(8, 8), Some(64)); // find(15) would give 200
        assert_eq!(p.find_aligned(8, 64), Some(64));
        assert_eq!(p.find_aligned(9, 64), Some(256)); // 64 + 9 > 72
        assert_eq!(p.find_aligned(9, 8), Some(200));
        assert_eq!(p.find_aligned(44, 256), Some(256));
        assert_eq!(p.find_aligned(45, 256), None);
        assert_eq!(p.find_aligned(100, 8), Some(200));
        assert_eq!(p.find_aligned(101, 1), None);
        assert_eq!(p.find_aligned(93, 16), None);
        assert_eq!(p.find_aligned(92, 16), Some(208));
        assert_eq!(p.find_aligned(1, 1024), None);
        let a = Arena::new(512);
        assert_eq!(a.pages.find_aligned(512, 512), Some(0));
        assert_eq!(a.pages.find_aligned(1, 1 << (usize::BITS - 2)), Some(0));
    }

    #[test]
    fn scavenge_order_and_budget() {
        let mut a = Arena::new(512);
        let p = &mut a.pages;
        assert_eq!(scavenge_calls(p, 100), (0, vec![])); // all released already
        assert_eq!(
            p.alloc_range(0, 512),
            Taken {
                scavenged: 512,
                dirty: 0
            }
        );
        p.free_range(0, 100);
        p.free_range(200, 100);
        p.free_range(500, 12);
        assert_eq!(p.free_dirty_pages(), 212);
        assert_eq!(scavenge_calls(p, 0), (0, vec![]));
        assert_eq!(scavenge_calls(p, 20), (20, vec![(500, 12), (292, 8)]));
        assert_eq!(scavenge_calls(p, 142), (142, vec![(200, 92), (50, 50)]));
        assert_eq!(p.released_pages(), 162);
        p.check_invariants();
        assert_eq!(scavenge_calls(p, 1000), (50, vec![(0, 50)]));
        assert_eq!(scavenge_calls(p, 1000), (0, vec![]));
        assert_eq!(p.free_dirty_pages(), 0);
        assert_eq!(p.count_released(0, 512), 212);
        assert_eq!(p.count_released(90, 120), 20);
        // Taken counts: [90, 100) is released; freed again it is dirty, and a range
        // over [85, 100) then holds 5 released and 10 dirty pages.
        assert_eq!(
            p.alloc_range(90, 10),
            Taken {
                scavenged: 10,
                dirty: 0
            }
        );
        p.free_range(90, 10);
        assert_eq!(p.count_released(80, 30), 10);
        assert_eq!(
            p.alloc_range(85, 15),
            Taken {
                scavenged: 5,
                dirty: 10
            }
        );
        p.check_invariants();
    }

    #[test]
    fn scavenge_merges_runs_across_words() {
        let mut a = with_free(ARENA_PAGES, &[(60, 10), (100, 600), (4000, 200)]);
        let p = &mut a.pages;
        // The allocation above took released pages; everything free is dirty now.
        assert_eq!(p.released_pages(), 0);
        assert_eq!(
            scavenge_calls(p, usize::MAX),
            (810, vec![(4000, 200), (100, 600), (60, 10)])
        );
        p.check_invariants();
    }

    use crate::testing::Rng;

    fn chance(rng: &mut Rng, percent: usize) -> bool {
        rng.below(100) < percent
    }

    /// The naive model: one bool per page.
    struct Model {
        used: Vec<bool>,
        released: Vec<bool>,
    }

    impl Model {
        fn new(npages: usize) -> Model {
            Model {
                used: vec![false; npages],
                released: vec![true; npages],
            }
        }

        /// Leftmost fit of each `ns[i]`, in one scan.
        fn first_fits(&self, ns: &[usize], out: &mut [Option<usize>]) {
            out.fill(None);
            let mut run_start = 0;
            let mut run = 0;
            for (i, &u) in self.used.iter().chain(core::iter::once(&true)).enumerate() {
                if !u {
                    if run == 0 {
                        run_start = i;
                    }
                    run += 1;
                } else if run > 0 {
                    for (k, &n) in ns.iter().enumerate() {
                        if out[k].is_none() && run >= n {
                            out[k] = Some(run_start);
                        }
                    }
                    run = 0;
                }
            }
        }

        /// Leftmost fit of `n` pages starting at or after `from`.
        fn first_fit_from(&self, n: usize, from: usize) -> Option<usize> {
            let mut run = 0;
            for i in from..self.used.len() {
                run = if self.used[i] { 0 } else { run + 1 };
                if run == n {
                    return Some(i + 1 - n);
                }
            }
            None
        }

        fn find_aligned(&self, n: usize, align: usize) -> Option<usize> {
            let mut free_from = vec![0usize; self.used.len() + 1];
            for i in (0..self.used.len()).rev() {
                free_from[i] = if self.used[i] {
                    0
                } else {
                    free_from[i + 1] + 1
                };
            }
            (0..self.used.len())
                .step_by(align)
                .find(|&a| free_from[a] >= n)
        }

        fn last_fit(&self, n: usize) -> Option<usize> {
            let mut run = 0;
            for i in (0..self.used.len()).rev() {
                run = if self.used[i] { 0 } else { run + 1 };
                if run == n {
                    return Some(i);
                }
            }
            None
        }

        fn is_free(&self, s: usize, n: usize) -> bool {
            s + n <= self.used.len() && self.used[s..s + n].iter().all(|&u| !u)
        }

        fn alloc(&mut self, s: usize, n: usize) -> Taken {
            let mut t = Taken::default();
            for i in s..s + n {
                assert!(!self.used[i]);
                self.used[i] = true;
                if self.released[i] {
                    t.scavenged += 1;
                } else {
                    t.dirty += 1;
                }
                self.released[i] = false;
            }
            t
        }

        fn free(&mut self, s: usize, n: usize) {
            for u in &mut self.used[s..s + n] {
                assert!(*u);
                *u = false;
            }
        }

        fn scavenge(&mut self, max: usize) -> (usize, Vec<(usize, usize)>) {
            let mut calls: Vec<(usize, usize)> = Vec::new();
            let mut budget = max;
            let mut i = self.used.len();
            while i > 0 && budget > 0 {
                i -= 1;
                if self.used[i] || self.released[i] {
                    continue;
                }
                let hi = i + 1;
                let mut lo = hi;
                while lo > 0 && budget > 0 && !self.used[lo - 1] && !self.released[lo - 1] {
                    lo -= 1;
                    budget -= 1;
                    self.released[lo] = true;
                }
                calls.push((lo, hi - lo));
                i = lo;
            }
            (max - budget, calls)
        }

        fn count_released(&self, s: usize, n: usize) -> usize {
            (s..s + n)
                .filter(|&i| !self.used[i] && self.released[i])
                .count()
        }

        fn free_pages(&self) -> usize {
            self.used.iter().filter(|&&u| !u).count()
        }

        fn released_pages(&self) -> usize {
            self.released.iter().filter(|&&r| r).count()
        }
    }

    /// Random run length: mostly small, sometimes up to 600 pages.
    fn random_len(rng: &mut Rng) -> usize {
        match rng.below(4) {
            0 | 1 => 1 + rng.below(8),
            2 => 1 + rng.below(100),
            _ => 1 + rng.below(600),
        }
    }

    fn differential(npages: usize, ops: usize, seed: u64) {
        let mut a = Arena::new(npages);
        let p = &mut a.pages;
        let mut m = Model::new(npages);
        let mut rng = Rng::from_state(seed);
        let mut live: Vec<(usize, usize)> = Vec::new();
        let mut ns = [1, 2, 7, 64, 65, 200, 600, 0];
        let mut want = [None; 8];
        let mut taken_total = 0usize;
        for op in 0..ops {
            let fill = (npages - p.free_pages()) * 100 / npages;
            let alloc_percent = if fill > 85 {
                25
            } else if fill < 30 {
                75
            } else {
                55
            };
            let r = rng.below(100);
            if r < alloc_percent {
                let n = random_len(&mut rng);
                let s = match rng.below(10) {
                    0 | 1 => {
                        let align = 1 << rng.below(10);
                        let s = p.find_aligned(n, align);
                        assert_eq!(
                            s,
                            m.find_aligned(n, align),
                            "find_aligned({n}, {align}) op {op}"
                        );
                        s
                    }
                    3 => {
                        let s = p.find_last(n);
                        assert_eq!(s, m.last_fit(n), "find_last({n}) op {op}");
                        s
                    }
                    2 => {
                        let s = rng.below(npages);
                        let free = p.is_free(s, n);
                        assert_eq!(free, m.is_free(s, n), "is_free({s}, {n}) op {op}");
                        free.then_some(s)
                    }
                    _ => {
                        let s = p.find(n);
                        let mut one = [None];
                        m.first_fits(&[n], &mut one);
                        assert_eq!(s, one[0], "find({n}) op {op}");
                        s
                    }
                };
                if let Some(s) = s {
                    if chance(&mut rng, 5) {
                        assert_eq!(p.count_released(s, n), m.count_released(s, n));
                    }
                    let t = p.alloc_range(s, n);
                    assert_eq!(t, m.alloc(s, n), "alloc_range({s}, {n}) op {op}");
                    taken_total += t.scavenged;
                    live.push((s, n));
                }
            } else if r < 95 {
                if live.is_empty() {
                    continue;
                }
                let k = rng.below(live.len());
                let (s, n) = live.swap_remove(k);
                if n > 2 && chance(&mut rng, 30) {
                    // Free a middle part; keep both ends allocated.
                    let lo = 1 + rng.below(n - 2);
                    let len = 1 + rng.below(n - 1 - lo);
                    p.free_range(s + lo, len);
                    m.free(s + lo, len);
                    live.push((s, lo));
                    if lo + len < n {
                        live.push((s + lo + len, n - lo - len));
                    }
                } else {
                    p.free_range(s, n);
                    m.free(s, n);
                }
            } else if r < 98 {
                let max = rng.below(2000);
                assert_eq!(
                    scavenge_calls(p, max),
                    m.scavenge(max),
                    "scavenge({max}) op {op}"
                );
            } else {
                let s = rng.below(npages);
                let n = rng.below(npages - s + 1);
                assert_eq!(
                    p.count_released(s, n),
                    m.count_released(s, n),
                    "count_released op {op}"
                );
                let mut runs = Vec::new();
                p.released_runs(s, n, |a, k| runs.push((a, k)));
                let mut want: Vec<(usize, usize)> = Vec::new();
                for i in s..s + n {
                    if !m.used[i] && m.released[i] {
                        match want.last_mut() {
                            Some((a, k)) if *a + *k == i => *k += 1,
                            _ => want.push((i, 1)),
                        }
                    }
                }
                assert_eq!(runs, want, "released_runs({s}, {n}) op {op}");
            }

            ns[7] = 1 + rng.below(npages);
            m.first_fits(&ns, &mut want);
            for (k, &n) in ns.iter().enumerate() {
                assert_eq!(p.find(n), want[k], "find({n}) after op {op}");
            }
            let (n, from) = (random_len(&mut rng), rng.below(npages));
            assert_eq!(
                p.find_from(n, from),
                m.first_fit_from(n, from),
                "find_from({n}, {from}) op {op}"
            );
            if op % 1000 == 0 || op + 1 == ops {
                p.check_invariants();
                assert_eq!(p.free_pages(), m.free_pages(), "free_pages op {op}");
                assert_eq!(
                    p.released_pages(),
                    m.released_pages(),
                    "released_pages op {op}"
                );
                for i in 0..npages {
                    assert_eq!(p.is_free(i, 1), !m.used[i], "page {i} op {op}");
                    assert_eq!(
                        p.count_released(i, 1) == 1,
                        !m.used[i] && m.released[i],
                        "page {i} op {op}"
                    );
                }
            }
        }
        // The run must have exercised the interesting paths.
        assert!(taken_total > 0);
        assert!(p.released_pages() < npages);
    }

    #[test]
    fn differential_small() {
        differential(512, 70_000, 0x9e37_79b9_7f4a_7c15);
    }

    #[test]
    fn differential_arena() {
        differential(ARENA_PAGES, 70_000, 0xdead_beef_cafe_f00d);
    }

    #[test]
    fn differential_odd() {
        differential(ODD_PAGES, 70_000, 0x0123_4567_89ab_cdef);
    }

    /// An arena of a whole number of pages that is not a whole number of
    /// words (a small arena over a region): the tail of the last word is in
    /// use for ever, never found, freed or scavenged.
    #[test]
    fn differential_partial_word() {
        differential(37, 20_000, 0x5555_aaaa_1234_9876);
        differential(ODD_PAGES + 13, 70_000, 0x0f0f_f0f0_1357_2468);
    }
}
