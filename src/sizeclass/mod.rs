//! Size classes: Go 1.20's 67 small-object classes plus class 0 ("large"),
//! generated at compile time by a port of Go's `mksizeclasses.go`, with O(1)
//! size → class lookup.
//!
//! See lib.rs for the overview. This module is the bottom of the object
//! arithmetic: every other tier asks it "which class holds a request of this
//! layout", "how big is an object / a span of this class", and "which object
//! does this byte offset fall in". It holds no state and takes no lock; all
//! of its tables are `static`s computed by `const fn` at compile time (no
//! pasted table) by [`geometry`], the port of Go 1.20's
//! `runtime/mksizeclasses.go` for any page size (which also generates the
//! tables of region heaps: smaller pages, their own classes). With Go's
//! parameters ([`GO`]) it does this:
//!
//! 1. step `size` from 8 to [`MAX_SMALL_SIZE`] by `align`, starting at
//!    `align = 8`; at each power of two the step becomes 256 if
//!    `size >= 2048`, else `size / 8` if `size >= 128`, else 16 if
//!    `size >= 32`;
//! 2. span bytes start at [`PAGE_BYTES`] and grow by [`PAGE_BYTES`] while
//!    `span % size > span / 8` (tail waste at most 12.5%);
//! 3. a size with the same (pages, objects) pair as the previous class
//!    replaces that class's size, so each class is the largest size with its
//!    pair;
//! 4. each size is raised to `(S / (S / size)) & !127` when that is larger
//!    (same object count, 128-aligned);
//! 5. there are exactly [`NUM_CLASSES`] = 68 classes, and the 32-bit magic
//!    divisor passes the Lemire–Kaser–Kurz test (both asserted at compile
//!    time; the brute-force check of the divisor is a unit test).
//!
//! # Invariants
//!
//! (checked at compile time unless noted; "S" is a class's span bytes)
//!
//! - `CLASSES[0]` is all zeros and stands for [`SizeClass::LARGE`].
//! - For `1 <= c < NUM_CLASSES`: sizes strictly increase with `c`, each is a
//!   multiple of 8, and `CLASSES[67].size == MAX_SMALL_SIZE`.
//! - `objects == S / size`, `1 <= objects <= MAX_OBJS_PER_SPAN` (1024), and
//!   the tail waste `S - size * objects <= S / 8`.
//! - `object_index(off) == off / size` for every `0 <= off <= S`
//!   (Go's `divMul`; exhaustively checked by the unit tests).
//! - `size_to_class(n)` is the smallest class with `size >= n` for
//!   `1 <= n <= MAX_SMALL_SIZE` (exhaustively checked by the unit tests).
//! - `class_for(n, align)` is the smallest class with `size >= n` and
//!   `size % align == 0`, or LARGE; because spans start [`PAGE_BYTES`]-aligned,
//!   every object of that class is `align`-aligned. It is a pure function of
//!   `(n, align)`, so the free path recomputes the allocation path's answer.
//!
//! One deliberate difference from Go: entry 0 of `size_to_class8` is class 1
//! (Go has 0 there and never looks a zero size up), so a zero-byte request
//! gets the smallest class rather than "large".

mod geometry;

#[cfg(test)]
pub(crate) use geometry::REGION_GEOMETRIES;
pub(crate) use geometry::REGION_GEOMETRY;
pub use geometry::{Geometry, Spacing, Spec, GO};

#[cfg(any(doc, test))]
use crate::PAGE_BYTES;
use crate::{MAX_SMALL_SIZE, TINY_BLOCK};

/// Number of size classes, class 0 ("large") included (Go's `_NumSizeClasses`).
pub const NUM_CLASSES: usize = 68;

/// Granularity of [`GO`]`.to_class8`: sizes up to [`SIZE_TO_CLASS8_MAX`] are
/// looked up in steps of 8 bytes (Go's `smallSizeDiv`).
pub const SMALL_SIZE_DIV: usize = 8;
/// Largest size looked up in [`GO`]`.to_class8` (Go's `smallSizeMax`).
pub const SIZE_TO_CLASS8_MAX: usize = 1024;
/// Granularity of [`GO`]`.to_class128` for sizes above [`SIZE_TO_CLASS8_MAX`]
/// (Go's `largeSizeDiv`); every class above 1024 bytes is a multiple of it.
pub const LARGE_SIZE_DIV: usize = 128;

/// Entries of [`GO`]`.to_class8`: `SIZE_TO_CLASS8_MAX / SMALL_SIZE_DIV + 1` = 129.
pub const SIZE_TO_CLASS8_LEN: usize = SIZE_TO_CLASS8_MAX / SMALL_SIZE_DIV + 1;
/// Entries of [`GO`]`.to_class128`:
/// `(MAX_SMALL_SIZE - SIZE_TO_CLASS8_MAX) / LARGE_SIZE_DIV + 1` = 249.
pub const SIZE_TO_CLASS128_LEN: usize = (MAX_SMALL_SIZE - SIZE_TO_CLASS8_MAX) / LARGE_SIZE_DIV + 1;

/// A size class index; 0 means "large object" (a span of its own).
///
/// Only values `< NUM_CLASSES` can be built, so every accessor indexes
/// `CLASSES` in bounds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
#[repr(transparent)]
pub struct SizeClass(u8);

impl SizeClass {
    /// Class 0: the object is large and has a span of its own.
    pub const LARGE: SizeClass = SizeClass(0);

    /// The class with index `i`, or `None` unless `i < NUM_CLASSES`.
    pub const fn new(i: usize) -> Option<SizeClass> {
        if i < NUM_CLASSES {
            Some(SizeClass(i as u8))
        } else {
            None
        }
    }

    /// The class with index `i`, unchecked.
    ///
    /// # Safety
    /// `i < NUM_CLASSES` (the type's invariant).
    #[cfg_attr(not(target_pointer_width = "64"), allow(dead_code))] // page-map entries
    #[inline(always)]
    pub(crate) const unsafe fn new_unchecked(i: u8) -> SizeClass {
        debug_assert!((i as usize) < NUM_CLASSES);
        SizeClass(i)
    }

    /// The class index, `0..NUM_CLASSES`.
    #[inline]
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// Whether this is [`SizeClass::LARGE`] (class 0).
    #[inline]
    pub const fn is_large(self) -> bool {
        self.0 == 0
    }

    /// The small classes, 1 through 67, in increasing size.
    pub fn small_classes() -> impl Iterator<Item = SizeClass> + Clone {
        (1..NUM_CLASSES as u8).map(SizeClass)
    }
}

/// One row of the table, produced at compile time by Go's generation
/// algorithm. Row 0 (LARGE) is all zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassInfo {
    /// Bytes per object.
    pub size: u32,
    /// Pages ([`PAGE_BYTES`] each) per span.
    pub npages: u32,
    /// Objects per span: `npages * PAGE_BYTES / size`.
    pub objects: u32,
    /// `u32::MAX / size + 1`; see [`Geometry::object_index`].
    pub div_mul: u32,
}

impl ClassInfo {
    pub(crate) const ZERO: ClassInfo = ClassInfo {
        size: 0,
        npages: 0,
        objects: 0,
        div_mul: 0,
    };
}

/// The class table, indexed by [`SizeClass::index`]; entry 0 all zeros
/// (Go's, from the direct port: [`Geometry::GO`] is checked against it).
#[cfg(any(doc, test))]
pub static CLASSES: [ClassInfo; NUM_CLASSES] = generate_classes();

/// The most objects any span holds (1024, class 1's 8-byte objects in one
/// page): the size of a span's per-object bitmaps (Go's `maxObjsPerSpan`).
pub const MAX_OBJS_PER_SPAN: usize = geometry::GO_CONST.max_objects;

/// Line-sharing classes of any geometry, class 0 included: every
/// geometry's tiny class index is at most this (asserted by the generator),
/// so arrays over the sharing classes have this many entries.
pub const MAX_SHARING: usize = 8;

/// The class of tiny blocks: the tiny allocator packs requests below
/// [`TINY_SIZE`](crate::TINY_SIZE) into objects of this class, whose size is [`TINY_BLOCK`]
/// (Go's `tinySpanClass`, with a cache line for Go's 16 bytes). Its spans are
/// one page, so their objects are line aligned.
pub const TINY_CLASS: SizeClass = size_to_class(TINY_BLOCK);

const _: () = assert!(
    GO_CONST_SIZE_OF_TINY == TINY_BLOCK
        && TINY_CLASS.index() == 6
        && geometry::GO_CONST.rows[6].npages == 1
);
const GO_CONST_SIZE_OF_TINY: usize = geometry::GO_CONST.rows[TINY_CLASS.index()].size as usize;
const _: () = assert!(SIZE_TO_CLASS8_LEN == 129 && SIZE_TO_CLASS128_LEN == 249);
const _: () = assert!(MAX_OBJS_PER_SPAN == 1024);
const _: () = assert!(NUM_CLASSES <= u8::MAX as usize + 1);

/// The class holding objects of `size` bytes (alignment at most 8): O(1)
/// through `GO.to_class8` for `size <= 1024` and `GO.to_class128` up
/// to [`MAX_SMALL_SIZE`]. Size 0 maps like size 1 (class 1); sizes above
/// `MAX_SMALL_SIZE` give [`SizeClass::LARGE`].
#[inline]
pub const fn size_to_class(size: usize) -> SizeClass {
    GO.size_to_class(size)
}

/// The class for a request of `size` bytes at alignment `align` (a power of
/// two): the smallest class whose size is `>= size` and a multiple of `align`,
/// so that every object of it, at `span_base + i * size` with `span_base`
/// [`PAGE_BYTES`]-aligned, is `align`-aligned.
///
/// Returns [`SizeClass::LARGE`] when no small class qualifies
/// (`size > MAX_SMALL_SIZE`, `align > PAGE_BYTES`, or no class fits). A pure
/// function of its arguments, so the free path recomputes the allocation
/// path's class from the same layout. For `align <= 8` this is just
/// [`size_to_class`] (every class is a multiple of 8); larger alignments walk
/// the classes upward from there (at most 67 steps).
#[inline]
pub const fn class_for(size: usize, align: usize) -> SizeClass {
    debug_assert!(align.is_power_of_two());
    GO.class_for(size, align)
}

// ---------------------------------------------------------------------------
// Compile-time generation (a port of Go 1.20's mksizeclasses.go).

/// Go's `makeClasses` followed by `computeDivMagic` for every class.
#[cfg(any(doc, test))]
const fn generate_classes() -> [ClassInfo; NUM_CLASSES] {
    let g = geometry::GO_CONST;
    assert!(g.count == NUM_CLASSES, "number of size classes has changed");
    assert!(
        g.rows[NUM_CLASSES - 1].size as usize == MAX_SMALL_SIZE,
        "last class is not MAX_SMALL_SIZE"
    );
    let mut i = 0;
    while i < SIZE_TO_CLASS8_LEN {
        assert!(g.to_class8[i] != 0);
        i += 1;
    }
    let mut i = 0;
    while i < SIZE_TO_CLASS128_LEN {
        assert!(g.to_class128[i] != 0);
        i += 1;
    }
    g.rows
}

pub(crate) const fn div_mul_for(size: usize) -> u32 {
    u32::MAX / size as u32 + 1
}

/// Go's `computeDivMagic` test (Lemire, Kaser, Kurz, "Faster Remainder by
/// Direct Computation", arXiv:1902.01961, algorithm 2): `n / d` is
/// `n * ceil(2^F / d) >> F` for every `n <= max` with `F` fractional bits;
/// panics (a compile error) unless `F <= 32`. The exhaustive check of the
/// exact runtime formula is the unit test `magic_divide_is_exact`.
pub(crate) const fn check_div_magic(d: usize, max: usize) {
    let n_bits = (usize::BITS - max.leading_zeros()) as u64; // Go's bits.Len
    let d = d as u64;
    let f = if d.is_power_of_two() {
        d.trailing_zeros() as u64
    } else {
        let mut l = 0;
        while d > ((1u64 << (n_bits + l)) % d) + (1u64 << l) {
            l += 1;
        }
        n_bits + l
    };
    assert!(
        f <= 32,
        "size class requires more than 32 bits of precision"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;
    use std::string::String;
    use std::vec::Vec;

    /// The 67 rows of the table in the comment at the top of Go 1.20's
    /// `runtime/sizeclasses.go`: class, bytes/obj, bytes/span,
    /// objects, tail waste, max waste (%), min align.
    const GO_TABLE: [(usize, usize, usize, usize, usize, &str, usize); 67] = [
        (1, 8, 8192, 1024, 0, "87.50", 8),
        (2, 16, 8192, 512, 0, "43.75", 16),
        (3, 24, 8192, 341, 8, "29.24", 8),
        (4, 32, 8192, 256, 0, "21.88", 32),
        (5, 48, 8192, 170, 32, "31.52", 16),
        (6, 64, 8192, 128, 0, "23.44", 64),
        (7, 80, 8192, 102, 32, "19.07", 16),
        (8, 96, 8192, 85, 32, "15.95", 32),
        (9, 112, 8192, 73, 16, "13.56", 16),
        (10, 128, 8192, 64, 0, "11.72", 128),
        (11, 144, 8192, 56, 128, "11.82", 16),
        (12, 160, 8192, 51, 32, "9.73", 32),
        (13, 176, 8192, 46, 96, "9.59", 16),
        (14, 192, 8192, 42, 128, "9.25", 64),
        (15, 208, 8192, 39, 80, "8.12", 16),
        (16, 224, 8192, 36, 128, "8.15", 32),
        (17, 240, 8192, 34, 32, "6.62", 16),
        (18, 256, 8192, 32, 0, "5.86", 256),
        (19, 288, 8192, 28, 128, "12.16", 32),
        (20, 320, 8192, 25, 192, "11.80", 64),
        (21, 352, 8192, 23, 96, "9.88", 32),
        (22, 384, 8192, 21, 128, "9.51", 128),
        (23, 416, 8192, 19, 288, "10.71", 32),
        (24, 448, 8192, 18, 128, "8.37", 64),
        (25, 480, 8192, 17, 32, "6.82", 32),
        (26, 512, 8192, 16, 0, "6.05", 512),
        (27, 576, 8192, 14, 128, "12.33", 64),
        (28, 640, 8192, 12, 512, "15.48", 128),
        (29, 704, 8192, 11, 448, "13.93", 64),
        (30, 768, 8192, 10, 512, "13.94", 256),
        (31, 896, 8192, 9, 128, "15.52", 128),
        (32, 1024, 8192, 8, 0, "12.40", 1024),
        (33, 1152, 8192, 7, 128, "12.41", 128),
        (34, 1280, 8192, 6, 512, "15.55", 256),
        (35, 1408, 16384, 11, 896, "14.00", 128),
        (36, 1536, 8192, 5, 512, "14.00", 512),
        (37, 1792, 16384, 9, 256, "15.57", 256),
        (38, 2048, 8192, 4, 0, "12.45", 2048),
        (39, 2304, 16384, 7, 256, "12.46", 256),
        (40, 2688, 8192, 3, 128, "15.59", 128),
        (41, 3072, 24576, 8, 0, "12.47", 1024),
        (42, 3200, 16384, 5, 384, "6.22", 128),
        (43, 3456, 24576, 7, 384, "8.83", 128),
        (44, 4096, 8192, 2, 0, "15.60", 4096),
        (45, 4864, 24576, 5, 256, "16.65", 256),
        (46, 5376, 16384, 3, 256, "10.92", 256),
        (47, 6144, 24576, 4, 0, "12.48", 2048),
        (48, 6528, 32768, 5, 128, "6.23", 128),
        (49, 6784, 40960, 6, 256, "4.36", 128),
        (50, 6912, 49152, 7, 768, "3.37", 256),
        (51, 8192, 8192, 1, 0, "15.61", 8192),
        (52, 9472, 57344, 6, 512, "14.28", 256),
        (53, 9728, 49152, 5, 512, "3.64", 512),
        (54, 10240, 40960, 4, 0, "4.99", 2048),
        (55, 10880, 32768, 3, 128, "6.24", 128),
        (56, 12288, 24576, 2, 0, "11.45", 4096),
        (57, 13568, 40960, 3, 256, "9.99", 256),
        (58, 14336, 57344, 4, 0, "5.35", 2048),
        (59, 16384, 16384, 1, 0, "12.49", 8192),
        (60, 18432, 73728, 4, 0, "11.11", 2048),
        (61, 19072, 57344, 3, 128, "3.57", 128),
        (62, 20480, 40960, 2, 0, "6.87", 4096),
        (63, 21760, 65536, 3, 256, "6.25", 256),
        (64, 24576, 24576, 1, 0, "11.45", 8192),
        (65, 27264, 81920, 3, 128, "10.00", 128),
        (66, 28672, 57344, 2, 0, "4.91", 4096),
        (67, 32768, 32768, 1, 0, "12.50", 8192),
    ];

    /// Go's `printComment` columns for class `c`, `prev` the previous size.
    fn go_row(c: SizeClass, prev: usize) -> (usize, usize, usize, usize, String, usize) {
        let size = GO.size(c);
        let span = GO.span_bytes(c);
        let objects = span / size;
        let tail = span - size * objects;
        let max_waste = ((size - prev - 1) * objects + tail) as f64 / span as f64;
        (
            size,
            span,
            objects,
            tail,
            format!("{:.2}", 100.0 * max_waste),
            GO.min_align(c),
        )
    }

    /// The first small class with size >= n (linear scan), LARGE if none.
    fn scan(n: usize) -> SizeClass {
        SizeClass::small_classes()
            .find(|&c| GO.size(c) >= n)
            .unwrap_or(SizeClass::LARGE)
    }

    #[test]
    fn table_matches_go() {
        let mut prev = 0;
        for (row, c) in GO_TABLE.iter().zip(SizeClass::small_classes()) {
            let &(class, size, span, objects, tail, waste, align) = row;
            assert_eq!(class, c.index());
            let got = go_row(c, prev);
            assert_eq!(
                got,
                (size, span, objects, tail, String::from(waste), align),
                "class {class}"
            );
            assert_eq!(GO.objects(c), objects);
            assert_eq!(GO.span_pages(c).bytes(GO.page()), span);
            prev = size;
        }
        assert_eq!(SizeClass::small_classes().count(), GO_TABLE.len());
        assert_eq!(CLASSES.len(), NUM_CLASSES);
    }

    #[test]
    fn class_zero_is_large() {
        assert_eq!(
            CLASSES[0],
            ClassInfo {
                size: 0,
                npages: 0,
                objects: 0,
                div_mul: 0
            }
        );
        let l = SizeClass::LARGE;
        assert!(l.is_large() && l.index() == 0);
        assert_eq!(
            (
                GO.size(l),
                GO.span_pages(l).get(),
                GO.span_bytes(l),
                GO.objects(l)
            ),
            (0, 0, 0, 0)
        );
        assert_eq!(GO.object_index(l, 123_456), 0);
        assert_eq!(GO.min_align(l), PAGE_BYTES);
        assert_eq!(SizeClass::new(0), Some(SizeClass::LARGE));
        assert_eq!(SizeClass::new(67).map(|c| GO.size(c)), Some(MAX_SMALL_SIZE));
        assert_eq!(SizeClass::new(NUM_CLASSES), None);
    }

    #[test]
    fn rows_are_consistent() {
        for c in SizeClass::small_classes() {
            let i = CLASSES[c.index()];
            assert_eq!(GO.info(c), i);
            assert_eq!(i.objects as usize, GO.span_bytes(c) / GO.size(c));
            assert_eq!(i.div_mul, (u32::MAX / i.size).wrapping_add(1));
            assert!(GO.objects(c) <= MAX_OBJS_PER_SPAN);
            assert_eq!(GO.size(c) % GO.min_align(c), 0);
            // Sizes of 32 bytes and more are 16-byte aligned (Go's heap bitmap rule).
            assert!(GO.size(c) < 32 || GO.size(c).is_multiple_of(16), "{c:?}");
        }
        assert_eq!(
            SizeClass::small_classes().map(|c| GO.objects(c)).max(),
            Some(MAX_OBJS_PER_SPAN)
        );
        assert_eq!(GO.size(TINY_CLASS), TINY_BLOCK);
    }

    /// Go's footer: the smallest size from which every later class has at
    /// least the given alignment.
    #[test]
    fn alignment_footer_matches_go() {
        let mut min_aligns = [0usize; GO.spec.page_shift as usize + 1];
        for c in SizeClass::small_classes() {
            let bits = GO.min_align(c).trailing_zeros() as usize;
            for (i, m) in min_aligns.iter_mut().enumerate() {
                if i > bits {
                    *m = 0;
                } else if *m == 0 {
                    *m = GO.size(c);
                }
            }
        }
        let mut footer = Vec::new();
        for (bits, &size) in min_aligns.iter().enumerate() {
            if size == 0 {
                break;
            }
            if bits + 1 < min_aligns.len() && size == min_aligns[bits + 1] {
                continue;
            }
            footer.push((1usize << bits, size));
        }
        let go = [
            (8, 8),
            (16, 32),
            (32, 256),
            (64, 512),
            (128, 768),
            (4096, 28672),
            (8192, 32768),
        ];
        assert_eq!(footer, go);
    }

    #[test]
    fn lookup_table_lengths() {
        assert_eq!(GO.to_class8.len(), 129);
        assert_eq!(GO.to_class128.len(), 249);
        for (i, &c) in GO.to_class8.iter().enumerate() {
            assert_eq!(
                SizeClass(c),
                scan(i * SMALL_SIZE_DIV),
                "size_to_class8[{i}]"
            );
        }
        for (i, &c) in GO.to_class128.iter().enumerate() {
            assert_eq!(
                SizeClass(c),
                scan(SIZE_TO_CLASS8_MAX + i * LARGE_SIZE_DIV),
                "size_to_class128[{i}]"
            );
        }
    }

    #[test]
    fn size_to_class_every_size() {
        for n in 1..=MAX_SMALL_SIZE {
            let c = size_to_class(n);
            assert_eq!(c, scan(n), "size {n}");
            assert!(!c.is_large() && GO.size(c) >= n);
            // The fast paths' tables agree with the reference lookup.
            if n <= SIZE_TO_CLASS8_MAX {
                assert_eq!(GO.size_to_class_small(n), c, "byte table, size {n}");
            } else {
                assert_eq!(GO.size_to_class(n), c, "128-byte table, size {n}");
            }
        }
        assert_eq!(size_to_class(0).index(), 1);
        assert_eq!(GO.size_to_class_small(0).index(), 1);
        for n in [
            MAX_SMALL_SIZE + 1,
            MAX_SMALL_SIZE + 8,
            1 << 20,
            usize::MAX - 7,
            usize::MAX,
        ] {
            assert!(size_to_class(n).is_large(), "size {n}");
        }
    }

    #[test]
    fn class_for_every_size_and_align() {
        for shift in 0..=14 {
            let align = 1usize << shift;
            for n in 1..=MAX_SMALL_SIZE {
                let want = if align > PAGE_BYTES {
                    SizeClass::LARGE
                } else {
                    SizeClass::small_classes()
                        .find(|&c| GO.size(c) >= n && GO.size(c).is_multiple_of(align))
                        .unwrap_or(SizeClass::LARGE)
                };
                let got = class_for(n, align);
                assert_eq!(got, want, "size {n} align {align}");
                if !got.is_large() {
                    assert!(GO.size(got) >= n && GO.size(got).is_multiple_of(align));
                    assert!(GO.min_align(got) >= align);
                }
            }
            assert!(class_for(MAX_SMALL_SIZE + 1, align).is_large());
            assert!(class_for(usize::MAX, align).is_large());
            assert_eq!(class_for(0, align), class_for(1, align));
        }
        // Spot checks: a page-aligned page, and 4 KiB alignment skipping 4864.
        assert_eq!(GO.size(class_for(8192, 8192)), 8192);
        assert_eq!(GO.size(class_for(4097, 4096)), 8192);
        assert_eq!(GO.size(class_for(20000, 8192)), 24576);
        assert!(class_for(8, 16384).is_large());
    }

    /// Go's brute-force check of the 32-bit magic divide, for every offset
    /// from 0 to the span's end inclusive.
    #[test]
    fn magic_divide_is_exact() {
        let mut checked = 0u64;
        for c in SizeClass::small_classes() {
            let size = GO.size(c);
            for off in 0..=GO.span_bytes(c) {
                let got = GO.object_index(c, off);
                if got != off / size {
                    panic!(
                        "class {} size {size} off {off}: {got} != {}",
                        c.index(),
                        off / size
                    );
                }
            }
            checked += GO.span_bytes(c) as u64 + 1;
        }
        // Sum over the 67 classes of (span bytes + 1).
        assert_eq!(checked, 1_376_323);
    }
}
