//! [`Extents`]: the free list of the page sources that carve arenas out of one
//! fixed range of addresses ([`RegionSource`](super::RegionSource) and the
//! x86-64 `FrameSource`).
//!
//! A fixed array of `N` free extents `[start, end)`, in absolute addresses (so
//! alignment is absolute), kept sorted by `start`, non-empty and merged with
//! their neighbours: the list holds one entry per hole between live
//! reservations, and can only fill up with `N` disjoint holes. When it is full,
//! [`Extents::take`] skips a fit that would split an extent (the split needs one
//! more entry), and [`Extents::give_back`] of a range that touches no free extent
//! forgets the range: it leaks, and is never handed out twice.
//!
//! Nothing allocates; the owner keeps the list behind its lock.

use core::ops::Range;

/// A free run `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Extent {
    start: usize,
    end: usize,
}

const NO_EXTENT: Extent = Extent { start: 0, end: 0 };

/// A sorted, coalescing list of at most `N` free extents. See the module docs.
pub(crate) struct Extents<const N: usize> {
    /// Number of valid entries in `ext`.
    n: usize,
    /// `ext[..n]`: sorted by `start`, non-empty, non-adjacent.
    ext: [Extent; N],
}

impl<const N: usize> Extents<N> {
    /// An empty list (nothing free).
    pub(crate) const fn new() -> Self {
        Extents {
            n: 0,
            ext: [NO_EXTENT; N],
        }
    }

    /// Number of free extents (holes); at most `N`.
    pub(crate) fn len(&self) -> usize {
        self.n
    }

    /// The free extents, lowest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        self.ext[..self.n].iter().map(|e| e.start..e.end)
    }

    /// Bytes free, summed over all extents.
    pub(crate) fn bytes(&self) -> usize {
        self.iter().map(|r| r.end - r.start).sum()
    }

    /// The longest range [`Extents::take`] could return at alignment `align`.
    pub(crate) fn largest(&self, align: usize) -> usize {
        self.iter()
            .filter_map(|r| {
                Some(
                    r.end
                        .saturating_sub(r.start.checked_next_multiple_of(align)?),
                )
            })
            .max()
            .unwrap_or(0)
    }

    fn remove(&mut self, i: usize) {
        self.ext.copy_within(i + 1..self.n, i);
        self.n -= 1;
    }

    fn insert(&mut self, i: usize, e: Extent) {
        debug_assert!(self.n < N);
        self.ext.copy_within(i..self.n, i + 1);
        self.ext[i] = e;
        self.n += 1;
    }

    /// First fit of `len` bytes at alignment `align` (a power of two): takes
    /// `[start, start + len)` out of the list and returns `start`. A fit that
    /// would split an extent in two is skipped while the list is full.
    pub(crate) fn take(&mut self, len: usize, align: usize) -> Option<usize> {
        for i in 0..self.n {
            let e = self.ext[i];
            let Some(start) = e.start.checked_next_multiple_of(align) else {
                continue;
            };
            let Some(end) = start.checked_add(len) else {
                continue;
            };
            if end > e.end {
                continue;
            }
            match (start > e.start, end < e.end) {
                (false, false) => self.remove(i),
                (true, false) => self.ext[i].end = start,
                (false, true) => self.ext[i].start = end,
                (true, true) => {
                    if self.n == N {
                        continue; // the split needs an entry we do not have
                    }
                    self.ext[i].end = start;
                    self.insert(
                        i + 1,
                        Extent {
                            start: end,
                            end: e.end,
                        },
                    );
                }
            }
            return Some(start);
        }
        None
    }

    /// Gives `[start, end)` (non-empty, not free) back, merging it with its
    /// neighbours. With a full list, a range that touches no free extent is
    /// forgotten (see the module docs).
    pub(crate) fn give_back(&mut self, start: usize, end: usize) {
        self.give_back_fenced(start, end, |_| false);
    }

    /// As [`Extents::give_back`], but never merges across an address where
    /// `fence` is true (the boundary between two regions, whose pointers
    /// come from different bases), so every extent stays inside one region.
    pub(crate) fn give_back_fenced(
        &mut self,
        start: usize,
        end: usize,
        fence: impl Fn(usize) -> bool,
    ) {
        // Index of the first extent after the range.
        let i = self.ext[..self.n].partition_point(|e| e.start < start);
        debug_assert!(
            i == 0 || self.ext[i - 1].end <= start,
            "free of a free range"
        );
        debug_assert!(
            i == self.n || end <= self.ext[i].start,
            "free of a free range"
        );
        let join_prev = i > 0 && self.ext[i - 1].end == start && !fence(start);
        let join_next = i < self.n && self.ext[i].start == end && !fence(end);
        match (join_prev, join_next) {
            (true, true) => {
                self.ext[i - 1].end = self.ext[i].end;
                self.remove(i);
            }
            (true, false) => self.ext[i - 1].end = end,
            (false, true) => self.ext[i].start = start,
            (false, false) => {
                if self.n < N {
                    self.insert(i, Extent { start, end });
                }
                // Otherwise the range is forgotten: it leaks, it is never
                // handed out twice.
            }
        }
    }

    /// If the last (highest) extent ends at `end`, removes it and returns its
    /// start (for a bump pointer sitting right above the list).
    #[cfg_attr(not(feature = "x86_64"), allow(dead_code))]
    pub(crate) fn take_last_ending_at(&mut self, end: usize) -> Option<usize> {
        let last = self.ext[..self.n].last()?;
        if last.end != end {
            return None;
        }
        let start = last.start;
        self.n -= 1;
        Some(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    const PS: usize = 4096;

    fn list<const N: usize>(x: &Extents<N>) -> Vec<(usize, usize)> {
        x.iter().map(|r| (r.start, r.end)).collect()
    }

    /// A list holding `ranges` (given in order, each merged in as it comes).
    fn with<const N: usize>(ranges: &[(usize, usize)]) -> Extents<N> {
        let mut x = Extents::new();
        for &(s, e) in ranges {
            x.give_back(s, e);
        }
        x
    }

    #[test]
    fn empty() {
        let mut x = Extents::<4>::new();
        assert_eq!(x.len(), 0);
        assert_eq!(x.bytes(), 0);
        assert_eq!(x.take(PS, PS), None);
        assert_eq!(x.take_last_ending_at(0), None);
    }

    #[test]
    fn first_fit_in_order() {
        let mut x = with::<4>(&[(0, 16 * PS)]);
        assert_eq!(x.take(4 * PS, PS), Some(0));
        assert_eq!(x.take(PS, PS), Some(4 * PS));
        assert_eq!(list(&x), [(5 * PS, 16 * PS)]);
        assert_eq!(x.bytes(), 11 * PS);
        // Exactly the rest: the extent goes away.
        assert_eq!(x.take(11 * PS, PS), Some(5 * PS));
        assert_eq!(x.len(), 0);
        assert_eq!(x.take(PS, PS), None);
    }

    #[test]
    fn alignment_is_absolute_and_splits() {
        // The extent starts one page past a 64 KiB boundary.
        let base = 0x10_0000;
        let mut x = with::<4>(&[(base + PS, base + 64 * PS)]);
        // Aligned start in the middle: head and tail stay, as two extents.
        assert_eq!(x.take(PS, 65536), Some(base + 65536));
        assert_eq!(
            list(&x),
            [
                (base + PS, base + 65536),
                (base + 65536 + PS, base + 64 * PS)
            ]
        );
        // The hole before is reused first-fit.
        assert_eq!(x.take(2 * PS, 2 * PS), Some(base + 2 * PS));
        assert_eq!(x.take(PS, PS), Some(base + PS));
        // Aligned start, end at the end of an extent: the head stays.
        assert_eq!(x.take(8 * PS, 8 * PS), Some(base + 8 * PS));
        assert_eq!(
            list(&x),
            [
                (base + 4 * PS, base + 8 * PS),
                (base + 65536 + PS, base + 64 * PS)
            ]
        );
        // No fit for the alignment.
        assert_eq!(x.take(PS, 1 << 30), None);
        assert_eq!(x.take(65 * PS, PS), None);
    }

    #[test]
    fn overflow_is_no_fit() {
        let top = usize::MAX - PS + 1;
        let mut x = with::<4>(&[(PS, 2 * PS), (top - 2 * PS, top)]);
        assert_eq!(x.take(usize::MAX, PS), None);
        assert_eq!(x.take(PS, 1 << (usize::BITS - 1)), None);
        assert_eq!(x.take(0, 0), None);
        assert_eq!(x.take(2 * PS, PS), Some(top - 2 * PS));
        assert_eq!(list(&x), [(PS, 2 * PS)]);
    }

    #[test]
    fn give_back_merges_with_neighbours() {
        let mut x = Extents::<8>::new();
        x.give_back(2 * PS, 4 * PS);
        x.give_back(6 * PS, 8 * PS);
        x.give_back(10 * PS, 12 * PS);
        assert_eq!(x.len(), 3);
        // Join with the previous extent, then with the next, then both.
        x.give_back(4 * PS, 5 * PS);
        assert_eq!(
            list(&x),
            [(2 * PS, 5 * PS), (6 * PS, 8 * PS), (10 * PS, 12 * PS)]
        );
        x.give_back(9 * PS, 10 * PS);
        assert_eq!(
            list(&x),
            [(2 * PS, 5 * PS), (6 * PS, 8 * PS), (9 * PS, 12 * PS)]
        );
        x.give_back(8 * PS, 9 * PS);
        assert_eq!(list(&x), [(2 * PS, 5 * PS), (6 * PS, 12 * PS)]);
        // Below everything, then between without touching.
        x.give_back(0, PS);
        assert_eq!(list(&x), [(0, PS), (2 * PS, 5 * PS), (6 * PS, 12 * PS)]);
        x.give_back(PS, 2 * PS);
        x.give_back(5 * PS, 6 * PS);
        assert_eq!(list(&x), [(0, 12 * PS)]);
        assert_eq!(x.bytes(), 12 * PS);
    }

    #[test]
    fn full_list() {
        const N: usize = 4;
        let pages = |v: &[(usize, usize)]| -> Vec<(usize, usize)> {
            v.iter().map(|&(s, e)| (s * PS, e * PS)).collect()
        };
        // N disjoint holes: full.
        let holes = pages(&[(1, 4), (5, 6), (8, 9), (10, 11)]);
        let mut x = with::<N>(&holes);
        assert_eq!(x.len(), N);
        // A range touching no hole is forgotten ...
        x.give_back(20 * PS, 21 * PS);
        assert_eq!(list(&x), holes);
        // ... one touching a hole still merges.
        x.give_back(4 * PS, 5 * PS);
        assert_eq!(list(&x), pages(&[(1, 6), (8, 9), (10, 11)]));
        x.give_back(20 * PS, 22 * PS);
        assert_eq!(x.len(), N);
        // A split needs an entry: skipped while full, the next fit is used.
        assert_eq!(x.take(PS, 2 * PS), Some(8 * PS));
        assert_eq!(list(&x), pages(&[(1, 6), (10, 11), (20, 22)]));
        // With room again, the split is made.
        assert_eq!(x.take(PS, 2 * PS), Some(2 * PS));
        assert_eq!(list(&x), pages(&[(1, 2), (3, 6), (10, 11), (20, 22)]));
    }

    #[test]
    fn take_last_ending_at() {
        let mut x = with::<4>(&[(0, PS), (2 * PS, 3 * PS)]);
        assert_eq!(x.take_last_ending_at(PS), None);
        assert_eq!(x.take_last_ending_at(4 * PS), None);
        assert_eq!(x.take_last_ending_at(3 * PS), Some(2 * PS));
        assert_eq!(list(&x), [(0, PS)]);
        assert_eq!(x.take_last_ending_at(PS), Some(0));
        assert_eq!(x.len(), 0);
    }
}
