//! Geometries: a page size and the size-class table Go's `mksizeclasses.go`
//! generates for it. See [`super`] for the table the hosted and kernel heaps
//! use ([`Spec::GO`], Go 1.20's 68 classes over 8 KiB pages), and `lib.rs`
//! for the overview.
//!
//! `mksizeclasses.go` is a function of the page size: it grows each class's
//! span by a page until the tail waste is at most an eighth, and merges
//! sizes with the same (pages, objects) pair. Run with a smaller page it
//! gives a proper table for that page — shorter spans, and classes placed
//! where few-object spans waste least — not Go's table cut short. A heap
//! over a fixed region of kilobytes needs exactly that: with 8 KiB pages a
//! 64 KiB region is eight spans, fewer than the classes a mixed workload
//! touches. [`Spec`] holds the generator's parameters; [`Geometry::generate`]
//! is the generator (a `const fn`, so every table is computed at compile
//! time and checked by its assertions); [`REGION_GEOMETRIES`] are the tables
//! for region heaps, picked by region size with [`Geometry::for_region`].
//!
//! What the parameters trade (measured by `make bench-efficiency` against
//! the embedded heaps): a smaller page and shorter spans leave less memory
//! stranded in each class's partly used span — what decides a 64 KiB
//! region, where twenty-odd classes each hold one — while finer spacing and
//! a tighter tail bound round requests up less — what decides regions of
//! megabytes, where the stranded spans are a rounding error and the per-object
//! rounding is most of the waste.
//!
//! # Invariants of every generated geometry
//!
//! (asserted by the generator, so a table that breaks one does not compile;
//! the exhaustive checks are the unit tests)
//!
//! - `rows[0]` is all zeros ([`SizeClass::LARGE`]); `1 <= c < count` are
//!   the small classes, sizes strictly increasing multiples of 8, the last
//!   one `max_small`; rows at and past `count` are zeros; `count <=
//!   NUM_CLASSES`.
//! - `objects == span / size >= 1` and the tail `span - size * objects <=
//!   span / tail_div`, with `span = npages << page_shift`.
//! - the 32-bit magic divisor is exact for every offset in a span.
//! - `size_to_class(n)` is the smallest class with `size >= n`, or LARGE
//!   above `max_small`.
//! - the class of [`TINY_BLOCK`] bytes exists and pages are whole blocks, so
//!   tiny blocks are line aligned.
//! - every span is at least `min_span` bytes, unless that would put more
//!   than `max_objects` objects in it (then it is the fewest pages that hold
//!   `max_objects`, or as many as the tail bound needs).

use super::{
    div_mul_for, ClassInfo, SizeClass, LARGE_SIZE_DIV, NUM_CLASSES, SIZE_TO_CLASS128_LEN,
    SIZE_TO_CLASS8_LEN, SIZE_TO_CLASS8_MAX, SMALL_SIZE_DIV,
};
use crate::units::{PageSize, Pages};
use crate::TINY_BLOCK;

/// How class sizes are spaced: the step from one candidate size to the next
/// is set at each power of two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spacing {
    /// Go's: 8 below 32 bytes, 16 below 128, `size / 8` below 2 KiB, then 256.
    Go,
    /// `max(8, size / d)` (`d` a power of two), at least 128 from 1 KiB
    /// (the lookup's step there), 256 from 2 KiB: `d = 8` is
    /// Go's spacing with 8-byte steps up to 128 bytes, `d = 16` halves every
    /// step from 128 bytes on.
    Fine(usize),
}

/// The parameters of `mksizeclasses.go`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    /// log2 of the page bytes.
    pub page_shift: u32,
    /// Largest small object; larger ones are large objects (page runs).
    pub max_small: usize,
    /// Candidate sizes.
    pub spacing: Spacing,
    /// A span grows by a page while its tail waste exceeds `span / tail_div`
    /// (Go: 8).
    pub tail_div: usize,
    /// After merging, each size up to 1 KiB is raised to the largest
    /// multiple of `raise_div` with the same object count (Go: 128; 8 gives
    /// few-object spans their whole room); above 1 KiB the multiple is
    /// always 128, the granularity of the lookup there.
    pub raise_div: usize,
    /// Fewest bytes in a span (rounded up to pages; 0: one page). Each span
    /// has a record (its list links and bitmap, tens of bytes): over small
    /// pages a one-page span would pay that for a handful of objects.
    pub min_span: usize,
    /// Most objects in a span (0: no limit): `min_span` gives way to it, so
    /// that the smallest classes' spans keep the bitmap every span record
    /// carries short.
    pub max_objects: usize,
}

impl Spec {
    /// Go 1.20: 8 KiB pages, 32 KiB largest small object, 68 classes.
    pub const GO: Spec = Spec {
        page_shift: 13,
        max_small: 32768,
        spacing: Spacing::Go,
        tail_div: 8,
        raise_div: LARGE_SIZE_DIV,
        min_span: 0,
        max_objects: 0,
    };
}

/// A page size and its class table (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// How it was generated.
    pub spec: Spec,
    /// Classes, class 0 (LARGE) included.
    pub count: usize,
    /// Per class; zeros at 0 and from `count` on.
    pub rows: [ClassInfo; NUM_CLASSES],
    /// `to_class8[i]`: the first class with `size >= 8 * i`, 0 (LARGE) if
    /// none (entry 0 is class 1, as in Go's `size_to_class8` apart from that entry).
    pub to_class8: [u8; SIZE_TO_CLASS8_LEN],
    /// `to_class128[i]`: the first class with `size >= 1024 + 128 * i`, 0 if none.
    pub to_class128: [u8; SIZE_TO_CLASS128_LEN],
    /// `to_class8` with one entry per size up to 1024 bytes:
    /// entry `s` is `to_class8[ceil(s / 8)]`, so the fast paths look a size
    /// up with one load and no rounding.
    pub to_class1: [u8; SIZE_TO_CLASS8_MAX + 1],
    /// The class of [`TINY_BLOCK`]-byte objects.
    pub tiny_class: SizeClass,
    /// Most objects in any span of this geometry.
    pub max_objects: usize,
}

impl Geometry {
    /// Go 1.20's: 8 KiB pages, 68 classes up to 32 KiB (the hosted and
    /// kernel sources' geometry, [`crate::PageSource::GEOMETRY`]'s default).
    pub const GO: Geometry = Geometry::generate(Spec::GO);

    /// Runs `mksizeclasses.go` with `spec` (see the module docs for what it
    /// asserts).
    pub const fn generate(spec: Spec) -> Geometry {
        let page = 1usize << spec.page_shift;
        assert!(spec.max_small <= super::MAX_SMALL_SIZE);
        // The fast paths take every size up to SIZE_TO_CLASS8_MAX as small.
        assert!(spec.max_small >= SIZE_TO_CLASS8_MAX);
        assert!(spec.raise_div.is_power_of_two() && spec.raise_div >= SMALL_SIZE_DIV);
        let mut sizes = [0usize; NUM_CLASSES];
        let mut npages = [0usize; NUM_CLASSES];
        let mut n = 1; // classes so far, the dummy class 0 included

        let mut align = 8;
        let mut size = align;
        while size <= spec.max_small {
            if size.is_power_of_two() {
                align = match spec.spacing {
                    Spacing::Go if size >= 2048 => 256,
                    Spacing::Go if size >= 128 => size / 8,
                    Spacing::Go if size >= 32 => 16,
                    Spacing::Go => align,
                    Spacing::Fine(_) if size >= 2048 => 256,
                    // From 1 KiB on, sizes are looked up by 128-byte steps.
                    Spacing::Fine(d) if size >= 1024 && size / d < 128 => 128,
                    Spacing::Fine(d) if size / d > 8 => size / d,
                    Spacing::Fine(_) => 8,
                };
            }
            assert!(align.is_power_of_two(), "incorrect alignment");

            let mut span = spec.min_span;
            if spec.max_objects > 0 && span > spec.max_objects * size {
                span = spec.max_objects * size;
            }
            let mut span = span.next_multiple_of(page);
            if span == 0 {
                span = page;
            }
            while span % size > span / spec.tail_div {
                span += page;
            }
            let pages = span / page;

            if n > 1 && pages == npages[n - 1] && span / size == span / sizes[n - 1] {
                sizes[n - 1] = size;
            } else {
                assert!(n < NUM_CLASSES, "more size classes than NUM_CLASSES");
                sizes[n] = size;
                npages[n] = pages;
                n += 1;
            }
            size += align;
        }
        assert!(
            sizes[n - 1] == spec.max_small,
            "last class is not max_small"
        );

        // From the top down, so that each class is raised with the next
        // one's final size known.
        let mut c = n - 1;
        while c >= 1 {
            let span = npages[c] * page;
            let step = if sizes[c] <= SIZE_TO_CLASS8_MAX {
                spec.raise_div
            } else {
                LARGE_SIZE_DIV
            };
            let mut raised = (span / (span / sizes[c])) & !(step - 1);
            // Raising never crosses into the 128-byte lookup's range.
            if sizes[c] <= SIZE_TO_CLASS8_MAX && raised > SIZE_TO_CLASS8_MAX {
                raised = SIZE_TO_CLASS8_MAX;
            }
            // The last class stays at max_small: a size above it is large;
            // and no class is raised to the next (with `min_span` a class
            // can take more pages than the next one).
            if raised > sizes[c] && c + 1 < n && raised < sizes[c + 1] {
                sizes[c] = raised;
            }
            c -= 1;
        }

        let mut rows = [ClassInfo::ZERO; NUM_CLASSES];
        let mut max_objects = 0;
        let mut c = 1;
        while c < n {
            let size = sizes[c];
            let span = npages[c] * page;
            let objects = span / size;
            assert!(size % 8 == 0, "class size not a multiple of 8");
            assert!(sizes[c - 1] < size, "class sizes not increasing");
            assert!(size <= SIZE_TO_CLASS8_MAX || size % LARGE_SIZE_DIV == 0);
            assert!(objects >= 1 && span - size * objects <= span / spec.tail_div);
            super::check_div_magic(size, span);
            rows[c] = ClassInfo {
                size: size as u32,
                npages: npages[c] as u32,
                objects: objects as u32,
                div_mul: div_mul_for(size),
            };
            if objects > max_objects {
                max_objects = objects;
            }
            c += 1;
        }

        let mut to_class8 = [0u8; SIZE_TO_CLASS8_LEN];
        let mut i = 0;
        while i < SIZE_TO_CLASS8_LEN {
            to_class8[i] = first_at_least(&rows, n, i * SMALL_SIZE_DIV);
            i += 1;
        }
        let mut to_class128 = [0u8; SIZE_TO_CLASS128_LEN];
        let mut i = 0;
        while i < SIZE_TO_CLASS128_LEN {
            to_class128[i] = first_at_least(&rows, n, SIZE_TO_CLASS8_MAX + i * LARGE_SIZE_DIV);
            i += 1;
        }

        let mut to_class1 = [0u8; SIZE_TO_CLASS8_MAX + 1];
        let mut i = 0;
        while i <= SIZE_TO_CLASS8_MAX {
            to_class1[i] = to_class8[i.div_ceil(SMALL_SIZE_DIV)];
            i += 1;
        }

        let tiny = to_class8[TINY_BLOCK / SMALL_SIZE_DIV];
        assert!(
            (tiny as usize) <= super::MAX_SHARING,
            "more line-sharing classes than MAX_SHARING"
        );
        assert!(
            rows[tiny as usize].size as usize == TINY_BLOCK && page.is_multiple_of(TINY_BLOCK),
            "no class of TINY_BLOCK bytes, or pages that are not whole blocks"
        );
        Geometry {
            spec,
            count: n,
            rows,
            to_class8,
            to_class128,
            to_class1,
            tiny_class: SizeClass(tiny),
            max_objects,
        }
    }

    /// Bytes per page.
    #[inline]
    pub const fn page_bytes(&self) -> usize {
        1 << self.spec.page_shift
    }

    /// log2 of the page bytes.
    #[inline(always)]
    pub const fn page_shift(&self) -> u32 {
        self.spec.page_shift
    }

    /// The page, as the unit the page heap converts with.
    #[inline(always)]
    pub(crate) const fn page(&self) -> PageSize {
        PageSize::from_shift(self.spec.page_shift)
    }

    /// The class of `c`'s row.
    #[inline]
    pub const fn info(&self, c: SizeClass) -> ClassInfo {
        self.rows[c.index()]
    }

    /// Bytes per object of class `c` (0 for LARGE).
    #[inline(always)]
    pub const fn size(&self, c: SizeClass) -> usize {
        self.rows[c.index()].size as usize
    }

    /// Pages per span of class `c` (0 for LARGE).
    #[inline(always)]
    pub const fn span_pages(&self, c: SizeClass) -> Pages {
        Pages::new(self.rows[c.index()].npages as usize)
    }

    /// Bytes per span of class `c` (0 for LARGE).
    #[inline(always)]
    pub const fn span_bytes(&self, c: SizeClass) -> usize {
        (self.rows[c.index()].npages as usize) << self.spec.page_shift
    }

    /// Objects per span of class `c` (0 for LARGE).
    #[inline(always)]
    pub const fn objects(&self, c: SizeClass) -> usize {
        self.rows[c.index()].objects as usize
    }

    /// Go's `divMul` of class `c`: `u32::MAX / size + 1` (0 for LARGE).
    #[inline(always)]
    pub const fn div_mul(&self, c: SizeClass) -> u32 {
        self.rows[c.index()].div_mul
    }

    /// Object index of byte offset `off` from a span start of class `c`:
    /// `(off * div_mul) >> 32`, which is `off / size` for every `off` in the
    /// span (the generator checks it); 0 for LARGE.
    #[inline(always)]
    pub const fn object_index(&self, c: SizeClass, off: usize) -> usize {
        ((off as u64).wrapping_mul(self.div_mul(c) as u64) >> 32) as usize
    }

    /// Whether two objects of class `c` can lie in one cache line: the
    /// classes below [`Geometry::tiny_class`] (see
    /// `Span::owner`).
    #[inline(always)]
    pub const fn shares_lines(&self, c: SizeClass) -> bool {
        c.index() != 0 && c.index() < self.tiny_class.index()
    }

    /// The alignment every object of class `c` is guaranteed (spans start
    /// page aligned): `1 << min(trailing_zeros(size), page_shift)`; a page
    /// for LARGE.
    #[inline]
    pub const fn min_align(&self, c: SizeClass) -> usize {
        let tz = self.size(c).trailing_zeros(); // usize::BITS for LARGE
        1 << if tz < self.spec.page_shift {
            tz
        } else {
            self.spec.page_shift
        }
    }

    /// [`Geometry::size_to_class`] for `size <= SIZE_TO_CLASS8_MAX`: one load.
    #[inline(always)]
    pub const fn size_to_class_small(&self, size: usize) -> SizeClass {
        debug_assert!(size <= SIZE_TO_CLASS8_MAX);
        SizeClass(self.to_class1[size])
    }

    /// The smallest class holding `size` bytes (alignment at most 8), or
    /// LARGE above `max_small`.
    #[inline]
    pub const fn size_to_class(&self, size: usize) -> SizeClass {
        if size <= SIZE_TO_CLASS8_MAX {
            SizeClass(self.to_class8[size.div_ceil(SMALL_SIZE_DIV)])
        } else if size <= self.spec.max_small {
            SizeClass(self.to_class128[(size - SIZE_TO_CLASS8_MAX).div_ceil(LARGE_SIZE_DIV)])
        } else {
            SizeClass::LARGE
        }
    }

    /// The smallest class with `size >= size` whose size is a multiple of
    /// `align` (a power of two), so that its objects, at page-aligned span
    /// starts, are `align`-aligned; LARGE if none. A pure function of
    /// `(size, align)`, so the free path recomputes the allocation's class.
    #[inline]
    pub const fn class_for(&self, size: usize, align: usize) -> SizeClass {
        let first = self.size_to_class(size);
        if align <= SMALL_SIZE_DIV || first.is_large() {
            return first;
        }
        self.class_for_aligned(first.index(), align)
    }

    /// The slow half of [`Geometry::class_for`]: the first class from
    /// `from` whose size is a multiple of `align` (`8 < align`), or LARGE.
    #[cold]
    const fn class_for_aligned(&self, from: usize, align: usize) -> SizeClass {
        if align > self.page_bytes() {
            return SizeClass::LARGE;
        }
        let mut c = from;
        while c < self.count {
            if self.rows[c].size as usize & (align - 1) == 0 {
                return SizeClass(c as u8);
            }
            c += 1;
        }
        SizeClass::LARGE
    }

    /// The small classes of this geometry, in increasing size.
    pub fn small_classes(&self) -> impl Iterator<Item = SizeClass> + Clone {
        (1..self.count as u8).map(SizeClass)
    }

    /// The geometry for a region heap of `bytes` bytes: the first of
    /// the region geometries whose bound holds it.
    pub fn for_region(bytes: usize) -> &'static Geometry {
        let mut i = 0;
        while i + 1 < REGION_GEOMETRIES.len() && bytes > REGION_BOUNDS[i] {
            i += 1;
        }
        &REGION_GEOMETRIES[i]
    }
}

/// The first class of `rows[..n]` with `size >= want`, 0 if none.
const fn first_at_least(rows: &[ClassInfo; NUM_CLASSES], n: usize, want: usize) -> u8 {
    let mut c = 1;
    while c < n {
        if rows[c].size as usize >= want {
            return c as u8;
        }
        c += 1;
    }
    0
}

/// Go 1.20's geometry (the table of [`super::CLASSES`]).
pub static GO: Geometry = GO_CONST;

/// [`GO`] as a constant, for the tables computed from it at compile time.
pub(crate) const GO_CONST: Geometry = Geometry::GO;

/// Region heaps up to `REGION_BOUNDS[i]` bytes take `REGION_GEOMETRIES[i]`;
/// larger ones the last.
pub const REGION_BOUNDS: [usize; 1] = [256 << 10];

/// The geometries of region heaps, smallest regions first: up to 256 KiB,
/// 128-byte pages, Go's tail bound and objects over 1 KiB as page runs,
/// where every class's partly used span counts; above, 512-byte pages,
/// spans of at least 2 KiB, a tail bound of a sixteenth and steps of a
/// sixteenth of the size, where rounding is most of the waste, and classes
/// up to 4 KiB.
pub static REGION_GEOMETRIES: [Geometry; 2] = [
    Geometry::generate(Spec {
        page_shift: 7,
        max_small: 1024,
        spacing: Spacing::Fine(8),
        tail_div: 8,
        raise_div: 8,
        min_span: 0,
        max_objects: 0,
    }),
    REGION_GEOMETRY,
];

/// The geometry of [`crate::RegionSource`] heaps (the second of
/// [`REGION_GEOMETRIES`]): 512-byte pages, so that a region of kilobytes
/// holds tens of spans, spans of at least 2 KiB, so that a span's record
/// (its links and bitmap) is spread over enough objects, and 62 classes up
/// to 4 KiB. A heap over a region of megabytes stretches the spans further
/// (`pageheap::span_target_for`).
pub(crate) const REGION_GEOMETRY: Geometry = Geometry::generate(Spec {
    page_shift: 9,
    max_small: 4096,
    spacing: Spacing::Fine(16),
    tail_div: 16,
    raise_div: 8,
    min_span: 2048,
    max_objects: 128,
});

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn all() -> Vec<&'static Geometry> {
        let mut v = std::vec![&GO];
        v.extend(REGION_GEOMETRIES.iter());
        v
    }

    #[test]
    fn go_is_the_crate_table() {
        assert_eq!(GO.rows, super::super::CLASSES);
        assert_eq!(GO.count, NUM_CLASSES);
        assert_eq!(GO.tiny_class, super::super::TINY_CLASS);
        assert_eq!(GO.max_objects, super::super::MAX_OBJS_PER_SPAN);
    }

    #[test]
    fn rows_hold_their_invariants() {
        for g in all() {
            let page = g.page_bytes();
            assert!(g.count <= NUM_CLASSES && g.count > 1);
            assert_eq!(g.rows[0], ClassInfo::ZERO);
            for c in g.count..NUM_CLASSES {
                assert_eq!(g.rows[c], ClassInfo::ZERO, "{:?} row {c}", g.spec);
            }
            let mut prev = 0;
            let mut most = 0;
            for c in g.small_classes() {
                let r = g.info(c);
                let (size, span) = (r.size as usize, r.npages as usize * page);
                assert!(size > prev && size % 8 == 0, "{:?} {c:?}", g.spec);
                assert_eq!(r.objects as usize, span / size);
                assert!(span - size * r.objects as usize <= span / g.spec.tail_div);
                assert_eq!(r.div_mul, div_mul_for(size));
                // The magic divide is exact over the whole span.
                for off in 0..=span {
                    let q = ((off as u64 * r.div_mul as u64) >> 32) as usize;
                    assert_eq!(q, off / size, "{:?} {c:?} offset {off}", g.spec);
                }
                assert!(
                    span >= g.spec.min_span || r.objects as usize >= g.spec.max_objects,
                    "{:?} {c:?}: a span under min_span that max_objects does not ask for",
                    g.spec
                );
                most = most.max(r.objects as usize);
                prev = size;
            }
            assert_eq!(prev, g.spec.max_small);
            assert_eq!(most, g.max_objects);
            let t = g.info(g.tiny_class);
            assert_eq!(t.size as usize, TINY_BLOCK);
            assert!(t.npages as usize * page >= g.spec.min_span);
        }
        // A region heap's spans hold at most 128 objects: two bitmap words.
        assert_eq!(REGION_GEOMETRY.max_objects, 128);
    }

    #[test]
    fn lookup_is_the_smallest_fit_at_every_size_and_alignment() {
        for g in all() {
            for n in 0..=g.spec.max_small + 4096 {
                let want = g
                    .small_classes()
                    .find(|&c| g.info(c).size as usize >= n.max(1))
                    .unwrap_or(SizeClass::LARGE);
                assert_eq!(g.size_to_class(n), want, "{:?} size {n}", g.spec);
                let mut align = 16;
                while align <= 2 * g.page_bytes() {
                    let want = g
                        .small_classes()
                        .find(|&c| {
                            let s = g.info(c).size as usize;
                            s >= n.max(1) && s.is_multiple_of(align) && align <= g.page_bytes()
                        })
                        .unwrap_or(SizeClass::LARGE);
                    assert_eq!(g.class_for(n, align), want, "{:?} {n} at {align}", g.spec);
                    align *= 2;
                }
            }
        }
    }

    #[test]
    fn regions_pick_by_size() {
        assert!(core::ptr::eq(
            Geometry::for_region(8 << 10),
            &REGION_GEOMETRIES[0]
        ));
        assert!(core::ptr::eq(
            Geometry::for_region(256 << 10),
            &REGION_GEOMETRIES[0]
        ));
        assert!(core::ptr::eq(
            Geometry::for_region((256 << 10) + 1),
            &REGION_GEOMETRIES[1]
        ));
        assert!(core::ptr::eq(
            Geometry::for_region(usize::MAX),
            &REGION_GEOMETRIES[1]
        ));
        // Small pages and short spans for the small regions: no span of the
        // first geometry is over 1 KiB, and both have a class every 8 bytes
        // up to 48 (Go: 8, 16, 24, 32, 48).
        let g = &REGION_GEOMETRIES[0];
        for c in g.small_classes() {
            assert!(g.info(c).npages as usize * g.page_bytes() <= 1024, "{c:?}");
        }
        for g in &REGION_GEOMETRIES {
            for n in (8..=48).step_by(8) {
                assert_eq!(g.info(g.size_to_class(n)).size as usize, n, "{:?}", g.spec);
            }
        }
    }
}
