//! Spans: runs of pages carved into objects of one size class (Go's `mspan`).
//! See `lib.rs` for the overview.
//!
//! A span's metadata lives in a [`Span`] record from a fixed-size pool, outside
//! the span's own pages, so the pages can go back to the page heap and to the
//! source while the record is reused. The allocation bitmap has one bit per
//! object (1 = handed out: live, or free in a per-CPU or transfer cache).
//! Carving takes the lowest free object with Go's `nextFreeFast` trick: a 64-bit
//! `alloc_cache` holds the complement of one bitmap word, scanned by
//! count-trailing-zeros.
//!
//! Invariants (all fields guarded by the lock of whoever owns the span: the
//! class's central lock for small spans, the page heap lock for large spans and
//! free records):
//! * `alloc_count == popcount(alloc_bits)` over the first `nelems` bits;
//! * bits at and above `nelems` are always 0;
//! * `alloc_cache == !alloc_bits[cache_word] & valid_mask(cache_word)`, minus
//!   nothing: it is refreshed on every change to that word;
//! * every word below `cache_word` is full (no zero bits among its valid bits);
//! * `nelems <= 64 · nwords`, and `bits` points to the record's own tail
//!   (three bitmaps of `nwords` words with `checks`, one without).

use core::ptr::null_mut;

use crate::sizeclass::{ClassInfo, Geometry, SizeClass};

#[cfg(feature = "hardened")]
use crate::sync::atomic::{AtomicU32, Ordering};
use crate::units::{Addr, AtomicOwner, PageSize, Pages};
use crate::PAGE_BYTES;

/// Most objects any span holds: class 1 (8 B) in one 8 KiB page.
pub const MAX_OBJECTS: usize = PAGE_BYTES / 8;
// A record counts its objects in a `u16` and its bitmap words in a `u8`.
const _: () = assert!(MAX_OBJECTS <= u16::MAX as usize && MAX_OBJECTS / 64 <= u8::MAX as usize);

/// What a span is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SpanState {
    /// The record is on the pool's free list.
    Dead = 0,
    /// Small objects of `class`, owned by `central[class]`.
    Small = 1,
    /// One large object.
    Large = 2,
    /// Memory managed by its user (stacks), not by central lists.
    Manual = 3,
    /// A freed large object's span kept whole by the page heap's large cache
    /// for the next large allocation of its size; no object lives in it.
    Idle = 4,
}

/// Which central list a small span is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ListId {
    /// On no list (being built, or large).
    None = 0,
    /// Has free objects.
    Partial = 1,
    /// Every object handed out.
    Full = 2,
}

/// Metadata of one span. Aligned to 8 bytes, so that the bitmap words of
/// its tail, right after it, are aligned on 32-bit targets too; its fields
/// are in falling order of alignment, so that it has no padding (64 bytes
/// on 64-bit targets, 48 on 32-bit ones: with the one-word bitmap of a
/// region heap, six records fill a 512-byte page, or eight on 32-bit),
/// except that the ones the C free reads without a lock come first:
/// `start`, `carved`, `slot_inv` and `elemsize`, and `owner` for the
/// classes under a line (the first 26 bytes on 64-bit targets), so that
/// they lie in one cache line in most records (all but those starting in a
/// line's last 24 bytes), where a free whose record is out of cache waits
/// for one line.
#[repr(C, align(8))]
pub struct Span {
    /// First byte of the span; page aligned.
    pub start: Addr,
    /// With `hardened`: one past the highest object ever taken since the
    /// span was carved (the high-water mark of `take`). Carving takes the
    /// lowest free object, so every object below it has been taken at
    /// least once, and none at or above it ever has: the C free's slot test
    /// ([`Span::is_carved_unlocked`]). Written under the owner's lock, read
    /// without it (Relaxed: it only grows while the span lives).
    #[cfg(all(feature = "hardened", target_pointer_width = "64"))]
    carved: CarvedMark,
    /// With `hardened`: the inverse modulo 2³² of `elemsize`'s odd part,
    /// for the C free's slot test ([`Span::is_carved_unlocked`]).
    #[cfg(all(feature = "hardened", target_pointer_width = "64"))]
    slot_inv: u32,
    /// Bytes per object (for large spans: the span's bytes).
    pub elemsize: u32,
    /// Go's `divMul` of `elemsize` (0 for large spans): see [`Span::index_of`].
    pub div_mul: u32,
    /// Classes whose objects share cache lines ([`Geometry::shares_lines`](crate::Geometry::shares_lines)):
    /// the CPU whose cache takes this span's objects, or none before the
    /// first refill (`units::Owner`). It changes only under the class's central lock, and only
    /// while no object of the span is out, so every object out was taken by
    /// the owner. A free on another CPU goes to the class's remote list, not
    /// to that CPU's cache, so no CPU is handed an object whose line-mates
    /// live on another (false sharing). Exact in both modes: with locked
    /// slots the test runs inside the CPU's slot, under rseq inside the
    /// push's restartable sequence, which compares it with the CPU id it
    /// commits on (`percpu::rseq::Fast::push_owned`). Relaxed: a free reads
    /// it while one of the span's objects is out, when it cannot change.
    pub owner: AtomicOwner,
    /// Objects in the span (1 for large spans; at most `MAX_OBJECTS`).
    pub nelems: u16,
    /// Objects handed out (bits set in `alloc_bits`).
    pub alloc_count: u16,
    /// Index of the bitmap word mirrored in `alloc_cache`.
    pub cache_word: u8,
    /// Words of each bitmap in the record's tail (see `bitmap_words`).
    pub nwords: u8,
    /// Next span on the list (`list`) the span is on.
    pub next: *mut Span,
    /// Previous span on that list.
    pub prev: *mut Span,
    /// The record's tail, right after it in the same block ([`record_tail`]
    /// bytes): `alloc_bits`, `nwords` words with one bit per object, set
    /// while the object is out of the span (handed out, or in a cache); with
    /// `checks`, then `cached_bits`, as many words: objects that are free
    /// but still cached (per-CPU or transfer), so a second free of them is
    /// caught; then `tiny_bits`, as many words: objects of the tiny class
    /// that are tiny blocks now, so a tiny free of anything else is caught.
    bits: *mut u64,
    /// Complement of `alloc_bits[cache_word]`, restricted to valid objects.
    pub alloc_cache: u64,
    /// With `hardened` on 32-bit targets: as on 64-bit ones, placed after
    /// the words so that the record has no padding.
    #[cfg(all(feature = "hardened", not(target_pointer_width = "64")))]
    carved: CarvedMark,
    /// With `hardened` on 32-bit targets: as on 64-bit ones.
    #[cfg(all(feature = "hardened", not(target_pointer_width = "64")))]
    slot_inv: u32,
    /// Length in pages ([`Span::npages`]; a span of more than `u32::MAX`
    /// pages is never made).
    pages: u32,
    /// The size class of its objects ([`SizeClass::LARGE`] unless `Small`).
    pub class: SizeClass,
    /// What the span is used for.
    pub state: SpanState,
    /// Which list of its owner it is on.
    pub list: ListId,
    /// The pages were not known to be zero when the span was made.
    pub needzero: bool,
}

/// A span's `carved`: the count, one past the highest object taken.
#[cfg(feature = "hardened")]
struct CarvedMark(AtomicU32);

#[cfg(feature = "hardened")]
impl CarvedMark {
    const fn new() -> Self {
        CarvedMark(AtomicU32::new(0))
    }

    #[inline(always)]
    fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    #[inline(always)]
    fn set(&self, n: u32) {
        self.0.store(n, Ordering::Relaxed);
    }
}

/// The inverse of odd `m` modulo 2³²: Newton's iteration, each step of
/// which doubles the low bits that are right, from the three that
/// `m · m ≡ 1 (mod 8)` gives (3, 6, 12, 24, 48).
#[cfg(feature = "hardened")]
const fn odd_inverse(m: u32) -> u32 {
    debug_assert!(m % 2 == 1);
    let mut x = m;
    let mut i = 0;
    while i < 4 {
        x = x.wrapping_mul(2u32.wrapping_sub(m.wrapping_mul(x)));
        i += 1;
    }
    x
}

/// The word of a free object of a size class that holds `hardened`'s key
/// (`heap::hardened`): the second, so that the remote list's link (the
/// first) never overwrites it.
#[cfg(feature = "hardened")]
pub(crate) const KEY_WORD: usize = 1;

/// `hardened`'s mark of an object at `p` carved from its span and never
/// handed out, under the heap's secret `secret` (`heap::hardened`: the
/// key `secret ^ p`, its low bit flipped).
#[cfg(feature = "hardened")]
#[inline(always)]
pub(crate) const fn carved_mark(secret: usize, p: usize) -> usize {
    secret ^ p ^ 1
}

/// The C free's slot test for the classes whose spans are one page, from
/// the class alone (feature `hardened`): no read of the span record. The
/// span starts at the page of the address, so the offset is the address's
/// low bits. Every slot of such a span holds the carved mark from the
/// span's birth on ([`Span::mark_slots`]), so the key read that follows
/// tells a slot never handed out from one handed out (what `carved` tells
/// in a span that is not marked), and the test need only say whether the
/// offset starts one of the span's objects.
///
/// It is [`Span::is_carved_unlocked`]'s bijection with one load for both
/// of its constants: per class, the word `m⁻¹ · 2³² + s` (`size = m · 2ˢ`,
/// `m` odd, `m⁻¹` modulo 2³²), whose low byte is the rotate's count (a
/// 32-bit rotate reads only the count's low 5 bits); the rotated offset
/// `r` times that word is `f(offset) · 2³² + r · s` modulo 2⁶⁴, with
/// `f(offset) = r · m⁻¹ mod 2³²` in the high half but for the carry of
/// `r · s`. For the start of object `q`, `r = q · m < 2¹³` and `r · s`
/// stays in the low half, so the product is below `nelems · 2³²`, the
/// class's bound, exactly when `q < nelems`. For any other offset `f` is at
/// least `nelems` (the bijection), and the carry, below 32, could only
/// bring it under the bound by wrapping past 2³², from an `f` within 32 of
/// it. No offset of a page does that in any geometry shipped: the test
/// `page_slots_agree_with_slot_at` walks every offset of every class of
/// every one of them, and a new geometry is held to the same walk.
///
/// A class whose spans are longer has bound 0: every address fails, and
/// the caller tests the record instead.
#[cfg(feature = "hardened")]
#[repr(C)]
pub(crate) struct PageSlots {
    rot_inv: [u64; crate::sizeclass::NUM_CLASSES],
    bound: [u64; crate::sizeclass::NUM_CLASSES],
}

#[cfg(feature = "hardened")]
impl PageSlots {
    /// The table that covers no class: every address fails.
    pub(crate) const EMPTY: PageSlots = PageSlots {
        rot_inv: [0; crate::sizeclass::NUM_CLASSES],
        bound: [0; crate::sizeclass::NUM_CLASSES],
    };

    /// The table of geometry `g`.
    pub(crate) const fn of(g: &Geometry) -> PageSlots {
        let mut t = PageSlots::EMPTY;
        let mut i = 1;
        while i < g.count {
            let r = &g.rows[i];
            if r.npages == 1 {
                let tz = r.size.trailing_zeros();
                t.rot_inv[i] = (odd_inverse(r.size >> tz) as u64) << 32 | tz as u64;
                t.bound[i] = (r.objects as u64) << 32;
            }
            i += 1;
        }
        t
    }

    /// Whether every class of index `1..n` is tested here.
    pub(crate) const fn covers_below(&self, n: usize) -> bool {
        let mut i = 1;
        while i < n {
            if self.rot_inv[i] == 0 {
                return false;
            }
            i += 1;
        }
        true
    }

    /// Whether class `c` is tested here: its spans are one page (the word
    /// holds an odd inverse; it is 0 for the others).
    #[inline(always)]
    pub(crate) fn covers(&self, c: SizeClass) -> bool {
        // SAFETY: as in `starts_slot`.
        unsafe { *self.rot_inv.get_unchecked(c.index()) != 0 }
    }

    /// Whether `addr`, in a span of the class of index `i` (of one page of
    /// `page_bytes` bytes, a power of two up to 2¹³, if the class is
    /// covered), starts one of its objects; false for every address if the
    /// class's spans are longer. The class comes as its index, not as a
    /// [`SizeClass`], so that the C free indexes the table with the byte
    /// it compared already (one register, not a copy).
    ///
    /// # Safety
    /// `i < NUM_CLASSES`.
    #[inline(always)]
    pub(crate) unsafe fn starts_slot(&self, i: usize, addr: Addr, page_bytes: usize) -> bool {
        // SAFETY: `i < NUM_CLASSES` (the caller's), the length of both
        // arrays.
        let (ri, bound) = unsafe { (*self.rot_inv.get_unchecked(i), *self.bound.get_unchecked(i)) };
        let off = (addr.get() as u32) & (page_bytes as u32 - 1);
        (off.rotate_right(ri as u32) as u64).wrapping_mul(ri) < bound
    }
}

/// Words of each bitmap of a span record in a heap of geometry `g` whose
/// spans are the geometry's: one bit per object of the fullest span (and at
/// least one word, for stack pools of up to 64 stacks).
pub const fn bitmap_words(g: &Geometry) -> usize {
    let w = g.max_objects.div_ceil(64);
    if w == 0 {
        1
    } else {
        w
    }
}

/// Bytes that follow each span record in its block, for bitmaps of `words`
/// words: the bitmaps ([`Span`]'s `bits`).
pub const fn record_tail(words: usize) -> usize {
    let maps = if cfg!(feature = "checks") { 3 } else { 1 };
    words * maps * core::mem::size_of::<u64>()
}

/// Whether every span of geometry `g`, with the geometry's bitmaps
/// ([`bitmap_words`]), has a bitmap word for the slot that may start at
/// index `nelems` in its tail: a span with no tail room has no such slot,
/// and one with fewer objects than its bitmap's bits has the word. Then
/// [`Span::is_handed_out_unlocked`] needs no bound in a heap whose spans
/// are the geometry's (a source of large arenas; small arenas stretch
/// theirs, see `pageheap::stretched`).
#[cfg_attr(feature = "hardened", allow(dead_code))] // its user is cfg'd off there
pub const fn tail_slots_in_bitmap(g: &Geometry) -> bool {
    let bits = 64 * bitmap_words(g);
    let mut c = 1;
    while c < g.count {
        let r = &g.rows[c];
        let span = r.npages as usize * g.page_bytes();
        if r.objects as usize >= bits && r.objects as usize * r.size as usize != span {
            return false;
        }
        c += 1;
    }
    true
}

/// Bit `idx` of the alloc bitmap at `bits`, read without the span's lock.
/// Others may rewrite its word under the lock: it is read whole, with one
/// aligned load, through no reference.
///
/// # Safety
/// `bits` is a span's alloc bitmap (with the provenance of its record's
/// block) and `idx < 64 · nwords`, so the word is in it.
#[inline(always)]
unsafe fn bit_unlocked(bits: *const u64, idx: usize) -> bool {
    // SAFETY: the caller's bound.
    let w = unsafe { bits.add(idx / 64).read_volatile() };
    w & (1 << (idx % 64)) != 0
}

/// What an address is in a span of small objects ([`Span::slot_at_unlocked`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotAt {
    /// The start of a slot handed out.
    HandedOut,
    /// The start of a slot free in the span.
    Free,
    /// Not the start of a slot.
    NotASlot,
}

impl Span {
    /// Initialises a record for `npages` pages of `page` at `start`, used as
    /// `state`, with bitmaps of `nwords` words.
    ///
    /// # Safety
    /// `this` points to writable room for a `Span` (possibly uninitialised)
    /// followed by `nwords` words (three times `nwords` with `checks`), in one
    /// block, 8-byte aligned, that `this` may access.
    pub unsafe fn init(
        this: *mut Span,
        start: Addr,
        npages: Pages,
        page: PageSize,
        state: SpanState,
        nwords: usize,
    ) {
        let maps = if cfg!(feature = "checks") { 3 } else { 1 };
        debug_assert!(npages.get() <= u32::MAX as usize && nwords <= u8::MAX as usize);
        // SAFETY: the caller gives us the record and its tail; every field
        // and every tail word is written here.
        unsafe {
            let bits = this.add(1).cast::<u64>();
            bits.write_bytes(0, nwords * maps);
            this.write(Span {
                next: null_mut(),
                prev: null_mut(),
                start,
                pages: npages.get() as u32,
                class: SizeClass::LARGE,
                state,
                list: ListId::None,
                needzero: true,
                elemsize: npages.bytes(page).min(u32::MAX as usize) as u32,
                nelems: 1,
                div_mul: 0,
                alloc_count: 0,
                cache_word: 0,
                nwords: nwords as u8,
                alloc_cache: 0,
                bits,
                owner: AtomicOwner::new(),
                #[cfg(feature = "hardened")]
                carved: CarvedMark::new(),
                #[cfg(feature = "hardened")]
                slot_inv: 0,
            })
        }
    }

    /// Turns a fresh span into one of small objects of `class`, whose row
    /// of the heap's geometry is `info`.
    pub fn init_small(&mut self, class: SizeClass, info: ClassInfo) {
        debug_assert!(!class.is_large() && info.npages as usize == self.npages().get());
        assert!(info.objects as usize <= 64 * self.nwords as usize);
        self.class = class;
        self.state = SpanState::Small;
        self.div_mul = info.div_mul;
        self.carve(info.size as usize, info.objects as usize);
        self.owner.store(crate::units::Owner::NONE);
    }

    /// With `hardened`: writes [`carved_mark`] into the key word of every
    /// object of this fresh span of small objects, so that a free of one
    /// never handed out is caught by its key, with no test of `carved`
    /// ([`PageSlots`]).
    ///
    /// # Safety
    /// No object of the span has been taken; its memory is the caller's to
    /// write (the span's lock).
    #[cfg(feature = "hardened")]
    pub unsafe fn mark_slots(&self, secret: usize) {
        debug_assert!(self.alloc_count == 0 && self.state == SpanState::Small);
        for i in 0..self.nelems as usize {
            let p = self.object(i);
            // SAFETY: object `i` of the span, at least two words (the
            // smallest class a non-tiny request reaches is 16 bytes, and
            // tiny blocks are 64), free and the caller's.
            unsafe {
                p.cast::<usize>()
                    .add(KEY_WORD)
                    .write(carved_mark(secret, p as usize))
            };
        }
    }

    /// Turns a fresh Manual span into a pool of `n` objects of `size`
    /// bytes (stacks): none handed out.
    pub fn init_pool(&mut self, size: usize, n: usize) {
        debug_assert!((1..=64).contains(&n));
        self.carve(size, n);
    }

    /// Carves the span into `n` objects of `size` bytes, none handed out.
    fn carve(&mut self, size: usize, n: usize) {
        self.elemsize = size as u32;
        self.nelems = n as u16;
        self.alloc_count = 0;
        self.alloc_bits_mut().fill(0);
        self.cache_word = 0;
        self.alloc_cache = self.valid_mask(0);
        #[cfg(feature = "hardened")]
        {
            self.carved.set(0);
            let size = size as u32;
            self.slot_inv = odd_inverse(if size == 0 {
                1
            } else {
                size >> size.trailing_zeros()
            });
        }
    }

    /// The allocation bitmap, one bit per object (the record's tail).
    #[inline]
    pub fn alloc_bits(&self) -> &[u64] {
        // SAFETY: `bits` points to `nwords` words of this record's tail,
        // written at `init` (the type's invariant), guarded with the record.
        unsafe { core::slice::from_raw_parts(self.bits, self.nwords as usize) }
    }

    /// Word `w` of the allocation bitmap (`w < words()`).
    #[inline(always)]
    fn bits_at(&self, w: usize) -> u64 {
        debug_assert!(w < self.nwords as usize);
        // SAFETY: callers pass `w < words() <= nwords`: a word of the tail.
        unsafe { *self.bits.add(w) }
    }

    /// Sets word `w` of the allocation bitmap (`w < words()`).
    #[inline(always)]
    fn set_bits_at(&mut self, w: usize, v: u64) {
        debug_assert!(w < self.nwords as usize);
        // SAFETY: as in `bits_at`; `&mut self` is the record's owner.
        unsafe { *self.bits.add(w) = v }
    }

    /// The allocation bitmap, to change it.
    #[inline]
    fn alloc_bits_mut(&mut self) -> &mut [u64] {
        // SAFETY: as in `alloc_bits`; `&mut self` is the record's owner.
        unsafe { core::slice::from_raw_parts_mut(self.bits, self.nwords as usize) }
    }

    /// With `checks`: word `w` of the cached bitmap (see `bits`).
    #[cfg(feature = "checks")]
    #[inline]
    pub fn cached_word(&self, w: usize) -> &crate::sync::atomic::AtomicU64 {
        assert!(w < self.nwords as usize);
        // SAFETY: the cached words follow the alloc words in the tail
        // (`init` zeroed them; zero is a valid atomic), and are only used
        // atomically.
        unsafe {
            &*self
                .bits
                .add(self.nwords as usize + w)
                .cast::<crate::sync::atomic::AtomicU64>()
        }
    }

    /// With `checks`: word `w` of the tiny-block bitmap (see `bits`).
    #[cfg(feature = "checks")]
    #[inline]
    pub fn tiny_word(&self, w: usize) -> &crate::sync::atomic::AtomicU64 {
        assert!(w < self.nwords as usize);
        // SAFETY: the tiny words follow the cached words in the tail (`init`
        // zeroed them; zero is a valid atomic), and are only used atomically.
        unsafe {
            &*self
                .bits
                .add(2 * self.nwords as usize + w)
                .cast::<crate::sync::atomic::AtomicU64>()
        }
    }

    /// Length in pages.
    #[inline(always)]
    pub fn npages(&self) -> Pages {
        Pages::new(self.pages as usize)
    }

    /// Sets the length (a resize in place: never more than `u32::MAX` pages).
    #[inline]
    pub fn set_npages(&mut self, n: Pages) {
        debug_assert!(n.get() <= u32::MAX as usize);
        self.pages = n.get() as u32;
    }

    /// One past the last byte, in a heap of pages of `page`.
    #[inline]
    pub fn end(&self, page: PageSize) -> Addr {
        self.start.add_pages(self.npages(), page)
    }

    /// Bits of word `w` that stand for real objects.
    #[inline]
    fn valid_mask(&self, w: usize) -> u64 {
        let n = self.nelems as usize;
        let lo = w * 64;
        if n >= lo + 64 {
            !0
        } else if n <= lo {
            0
        } else {
            (1u64 << (n - lo)) - 1
        }
    }

    fn words(&self) -> usize {
        (self.nelems as usize).div_ceil(64)
    }

    /// Every object handed out.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.alloc_count == self.nelems
    }

    /// Address of object `idx`.
    #[inline]
    pub fn object(&self, idx: usize) -> *mut u8 {
        (self.start + idx * self.elemsize as usize).as_ptr()
    }

    /// Index of the object containing `addr` (Go's magic divide), and whether
    /// `addr` is exactly its start.
    #[inline]
    pub fn index_of(&self, addr: Addr) -> (usize, bool) {
        let off = addr - self.start;
        // `(off * div_mul) >> 32 == off / elemsize` for every offset in the
        // span (the geometry's invariant); 0 for a large span.
        let idx = ((off as u64).wrapping_mul(self.div_mul as u64) >> 32) as usize;
        (idx, idx * self.elemsize as usize == off)
    }

    /// Is object `idx` handed out?
    #[inline]
    pub fn is_allocated(&self, idx: usize) -> bool {
        idx < self.nelems as usize && self.alloc_bits()[idx / 64] & (1 << (idx % 64)) != 0
    }

    /// Is object `idx` handed out, read without the span's lock (C's
    /// unsized free). Exact for an object the caller holds, whose bit no one
    /// else may change; a snapshot for any other.
    #[inline(always)]
    pub fn is_allocated_unlocked(&self, idx: usize) -> bool {
        if idx >= self.nelems as usize {
            return false;
        }
        // SAFETY: `idx < nelems <= 64 · nwords`: a word of the bitmap.
        unsafe { bit_unlocked(self.bits, idx) }
    }

    /// What `addr` is in this span of small objects, the alloc bit read as
    /// [`Span::is_allocated_unlocked`] reads it: the start of a handed-out
    /// slot, of a free one, or neither (an interior or outside address).
    #[inline(always)]
    pub fn slot_at_unlocked(&self, addr: Addr) -> SlotAt {
        let (idx, exact) = self.index_of(addr);
        if !exact || idx >= self.nelems as usize {
            SlotAt::NotASlot
        } else if self.is_allocated_unlocked(idx) {
            SlotAt::HandedOut
        } else {
            SlotAt::Free
        }
    }

    /// Whether `addr` starts a handed-out slot of this span of small
    /// objects, the alloc bit read as [`Span::is_allocated_unlocked`] reads
    /// it: [`Span::slot_at_unlocked`]`(addr) == HandedOut`, in fewer
    /// instructions, for the C free's fast path. `bounded` is false only in
    /// a heap whose geometry satisfies [`tail_slots_in_bitmap`] (a constant
    /// of the heap, so the test folds away), and then the index is not
    /// compared with `nelems`.
    ///
    /// One multiply gives both answers (Lemire, Kaser and Kurz's
    /// divisibility test on Go's magic): with `c = div_mul = ⌈2³²/size⌉`,
    /// `c · size = 2³² + e` (`0 ≤ e < size`), an offset `q · size + r`
    /// multiplies to `q · 2³² + q · e + r · c`. Go's invariant (the quotient
    /// `(off · c) >> 32` is exact for every offset in the span) is that
    /// `q · e + r · c < 2³²`, so the low half is exactly `q · e + r · c`:
    /// at least `c` whenever `r > 0`. A low half below `c` is therefore a
    /// slot's start, never an interior address; it misses a start only if
    /// `q · e ≥ c`, which no shipped geometry allows (the test
    /// `the_fast_slot_test_agrees_with_slot_at` walks every offset), and a
    /// miss only sends the free to the checking path.
    ///
    /// The span is named by a pointer to its record, not a reference, so
    /// that the alloc bitmap's word is read at its fixed place right after
    /// the record (where `bits` points) with the record block's
    /// provenance: one load fewer than through `bits`.
    ///
    /// # Safety
    /// `span` points to a live span record, with its block's provenance (a
    /// page-map entry's pointer, or the block's own); `addr` is in the span
    /// (its page-map entry holds it) and the span is `Small`; unless
    /// `bounded`, its geometry satisfies [`tail_slots_in_bitmap`], so that
    /// the word read is in the bitmap.
    #[inline(always)]
    pub unsafe fn is_handed_out_unlocked(span: *const Span, addr: Addr, bounded: bool) -> bool {
        // SAFETY: the caller's live record and address in it; its fields
        // are read in place, through no reference.
        let (start, div_mul, nelems) = unsafe { ((*span).start, (*span).div_mul, (*span).nelems) };
        let m = ((addr - start) as u64).wrapping_mul(div_mul as u64);
        if m as u32 >= div_mul {
            return false; // not the start of a slot
        }
        let idx = (m >> 32) as usize;
        if bounded && idx >= nelems as usize {
            return false;
        }
        // SAFETY: `idx <= nelems` (the offset is inside the span), and
        // `idx < 64 · nwords` (`bounded` above, or the geometry's promise:
        // a slot starting at `nelems` exists only where the bitmap has a
        // word for it), so the word is in the alloc bitmap, which starts
        // right after the record (`bits`' invariant) and which the
        // caller's provenance covers. The word's bits from `nelems` on are
        // never set (`take` keeps to `valid_mask`, `carve` clears them), so
        // the tail's slot reads as not handed out.
        unsafe { bit_unlocked(span.add(1).cast(), idx) }
    }

    /// Whether `addr` starts a slot of this span of small objects that the
    /// span has taken at least once since it was carved: one handed out, in
    /// a cache, or back in the span after a free. With feature `hardened`
    /// that is the C free's slot test, in fewer instructions than
    /// [`Span::is_handed_out_unlocked`]: a slot taken before and free now
    /// holds its key (`heap::hardened`: freed or carved), which the free
    /// reads next, so only a slot never taken needs the span to tell it
    /// apart, and those are exactly the slots at or above `carved`.
    ///
    /// One rotate, one multiply and one compare answer both questions (is
    /// `addr` a slot's start, and is the slot below `carved`): with
    /// `elemsize = m · 2ˢ`, `m` odd, the map `f(x) = ror(x, s) · m⁻¹` on
    /// 32-bit words is a bijection (a rotate and a multiply by an odd
    /// number, modulo 2³²), and for `q < carved ≤ nelems` the word
    /// `q · elemsize` is below 2³² (a span is far smaller), so its low `s`
    /// bits are zero and `f(q · elemsize) = q · m · m⁻¹ = q`. Every `q`
    /// below `carved` is therefore the image of exactly the start of slot
    /// `q`, and any other offset (an interior address, a slot never taken)
    /// maps at or above `carved`. The offset is taken modulo 2³², which is
    /// the offset itself: `addr` is in the span (the caller's promise).
    ///
    /// # Safety
    /// `span` points to a live span record (a page-map entry's pointer, or
    /// the block's own); `addr` is in the span (its page-map entry holds
    /// it) and the span is `Small`.
    #[cfg(feature = "hardened")]
    #[inline(always)]
    pub unsafe fn is_carved_unlocked(span: *const Span, addr: Addr) -> bool {
        // SAFETY: the caller's live record and address in it; the fields
        // are read in place, through no reference but the atomic's own.
        let (start, size, inv, carved) = unsafe {
            (
                (*span).start,
                (*span).elemsize,
                (*span).slot_inv,
                (*span).carved.get(),
            )
        };
        // SAFETY: a small span's objects are at least 8 bytes.
        let shift = unsafe { core::num::NonZeroU32::new_unchecked(size) }.trailing_zeros();
        let off = (addr.get() as u32).wrapping_sub(start.get() as u32);
        off.rotate_right(shift).wrapping_mul(inv) < carved
    }

    /// Takes the lowest free object (Go's `nextFreeFast`, then `nextFree`).
    #[inline]
    pub fn take(&mut self) -> Option<usize> {
        if self.alloc_cache == 0 {
            // The cached word is exhausted: advance to the next word with a free bit.
            let words = self.words();
            let mut w = self.cache_word as usize + 1;
            while w < words && !self.bits_at(w) & self.valid_mask(w) == 0 {
                w += 1;
            }
            if w >= words {
                return None;
            }
            self.cache_word = w as u8;
            self.alloc_cache = !self.bits_at(w) & self.valid_mask(w);
        }
        let bit = self.alloc_cache.trailing_zeros() as usize;
        self.alloc_cache &= self.alloc_cache - 1;
        let w = self.cache_word as usize;
        self.set_bits_at(w, self.bits_at(w) | 1 << bit);
        self.alloc_count += 1;
        let idx = w * 64 + bit;
        #[cfg(feature = "hardened")]
        if idx as u32 >= self.carved.get() {
            self.carved.set(idx as u32 + 1);
        }
        Some(idx)
    }

    /// Gives object `idx` back to the span. Returns false (and changes nothing)
    /// if it was not handed out.
    #[inline]
    pub fn put(&mut self, idx: usize) -> bool {
        let (w, bit) = (idx / 64, 1u64 << (idx % 64));
        if idx >= self.nelems as usize || self.bits_at(w) & bit == 0 {
            return false;
        }
        self.set_bits_at(w, self.bits_at(w) & !bit);
        self.alloc_count -= 1;
        let cw = self.cache_word as usize;
        if w == cw {
            self.alloc_cache |= bit;
        } else if w < cw {
            // Keep allocation lowest-first: move the cache down to this word.
            self.cache_word = w as u8;
            self.alloc_cache = !self.bits_at(w) & self.valid_mask(w);
        }
        true
    }

    /// Walks the span and panics if an invariant is broken.
    pub fn check_invariants(&self) {
        assert_eq!(
            self.bits.cast_const(),
            (self as *const Span).wrapping_add(1).cast::<u64>(),
            "span {:#x}: bitmaps not right after the record",
            self.start
        );
        let words = self.words();
        let mut count = 0;
        for (w, &bits) in self.alloc_bits().iter().enumerate() {
            assert_eq!(
                bits & !self.valid_mask(w),
                0,
                "span {:#x}: bits beyond nelems",
                self.start
            );
            count += bits.count_ones();
        }
        assert_eq!(
            count,
            u32::from(self.alloc_count),
            "span {:#x}: alloc_count != popcount",
            self.start
        );
        let cw = self.cache_word as usize;
        if cw < words {
            assert_eq!(
                self.alloc_cache,
                !self.alloc_bits()[cw] & self.valid_mask(cw),
                "span {:#x}: stale alloc cache",
                self.start
            );
        }
        for w in 0..cw.min(words) {
            assert_eq!(
                !self.alloc_bits()[w] & self.valid_mask(w),
                0,
                "span {:#x}: free object below cache_word",
                self.start
            );
        }
        #[cfg(feature = "hardened")]
        {
            let carved = self.carved.get() as usize;
            assert!(
                carved <= self.nelems as usize,
                "span {:#x}: carved {carved} past nelems",
                self.start
            );
            for idx in carved..self.nelems as usize {
                assert!(
                    !self.is_allocated(idx),
                    "span {:#x}: object {idx} out, at or above carved {carved}",
                    self.start
                );
            }
        }
    }
}

/// A doubly-linked list of spans through `Span::next/prev`, guarded by its owner's lock.
pub struct SpanList {
    head: *mut Span,
    len: usize,
}

// SAFETY: the list only links span records; whoever owns the list (behind a lock)
// owns the links.
unsafe impl Send for SpanList {}

impl SpanList {
    pub const fn new() -> Self {
        SpanList {
            head: null_mut(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    pub fn first(&self) -> *mut Span {
        self.head
    }

    /// # Safety
    /// `s` is a live record on no list, owned by the caller's lock.
    pub unsafe fn push(&mut self, s: *mut Span) {
        // SAFETY: the caller owns `s` and the list.
        unsafe {
            (*s).prev = null_mut();
            (*s).next = self.head;
            if !self.head.is_null() {
                (*self.head).prev = s;
            }
        }
        self.head = s;
        self.len += 1;
    }

    /// # Safety
    /// `s` is on this list.
    pub unsafe fn remove(&mut self, s: *mut Span) {
        // SAFETY: `s` and its neighbours are on this list, which the caller owns.
        unsafe {
            let (p, n) = ((*s).prev, (*s).next);
            if p.is_null() {
                self.head = n;
            } else {
                (*p).next = n;
            }
            if !n.is_null() {
                (*n).prev = p;
            }
            (*s).next = null_mut();
            (*s).prev = null_mut();
        }
        self.len -= 1;
    }

    /// Iterates the records (the list must not change meanwhile).
    pub fn iter(&self) -> impl Iterator<Item = *mut Span> + '_ {
        let mut cur = self.head;
        core::iter::from_fn(move || {
            if cur.is_null() {
                return None;
            }
            let s = cur;
            // SAFETY: records on the list are live while the owner's lock is held.
            cur = unsafe { (*s).next };
            Some(s)
        })
    }
}

impl Default for SpanList {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sizeclass::GO;
    use std::vec::Vec;

    /// A span record with its tail, as the page heap's pool hands them out.
    struct Rec(*mut Span, std::alloc::Layout);

    impl core::ops::Deref for Rec {
        type Target = Span;
        fn deref(&self) -> &Span {
            // SAFETY: initialised in `small`, alive until drop.
            unsafe { &*self.0 }
        }
    }

    impl core::ops::DerefMut for Rec {
        fn deref_mut(&mut self) -> &mut Span {
            // SAFETY: as in `deref`; `&mut self` owns the record.
            unsafe { &mut *self.0 }
        }
    }

    impl Drop for Rec {
        fn drop(&mut self) {
            // SAFETY: allocated in `small` with this layout.
            unsafe { std::alloc::dealloc(self.0.cast(), self.1) }
        }
    }

    /// The record is what every span pays besides its bitmap: 64 bytes on
    /// 64-bit targets, 48 on 32-bit ones; `hardened`'s high-water mark
    /// and inverse add 8 bytes.
    #[test]
    fn records_are_small() {
        let want = if cfg!(target_pointer_width = "64") {
            64
        } else {
            48
        } + if cfg!(feature = "hardened") { 8 } else { 0 };
        assert_eq!(core::mem::size_of::<Span>(), want);
    }

    /// The fields the C free reads without a lock are the record's first
    /// (see [`Span`]).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn the_c_frees_fields_come_first() {
        let end = core::mem::offset_of!(Span, owner) + core::mem::size_of::<AtomicOwner>();
        assert_eq!(core::mem::offset_of!(Span, start), 0);
        assert!(core::mem::offset_of!(Span, div_mul) < end);
        #[cfg(feature = "hardened")]
        {
            assert!(core::mem::offset_of!(Span, carved) < end);
            assert!(core::mem::offset_of!(Span, slot_inv) < end);
            assert!(core::mem::offset_of!(Span, elemsize) < end);
        }
        assert!(end <= 26);
    }

    fn small(class: usize) -> Rec {
        small_in(&GO, class)
    }

    /// A span of `class` of geometry `g`, with `g`'s bitmaps.
    fn small_in(g: &Geometry, class: usize) -> Rec {
        let c = SizeClass::new(class).unwrap();
        let l = std::alloc::Layout::from_size_align(
            core::mem::size_of::<Span>() + record_tail(bitmap_words(g)),
            core::mem::align_of::<Span>(),
        )
        .unwrap();
        // SAFETY: a non-zero size.
        let p = unsafe { std::alloc::alloc(l) }.cast::<Span>();
        assert!(!p.is_null());
        // SAFETY: room for a Span and its tail.
        unsafe {
            Span::init(
                p,
                Addr::new(0x10_0000),
                g.span_pages(c),
                g.page(),
                SpanState::Small,
                bitmap_words(g),
            )
        };
        let mut s = Rec(p, l);
        s.init_small(c, g.info(c));
        s
    }

    /// The C free's one-multiply slot test says "handed out" exactly where
    /// `slot_at_unlocked` does, at every byte of every class's span of every
    /// geometry shipped, with and without its bound (where the geometry
    /// allows none), every second object handed out; and Go's geometry
    /// needs no bound.
    #[test]
    fn the_fast_slot_test_agrees_with_slot_at() {
        assert!(tail_slots_in_bitmap(&GO));
        let mut geometries = std::vec![&GO];
        geometries.extend(crate::sizeclass::REGION_GEOMETRIES.iter());
        for g in geometries {
            let unbounded = tail_slots_in_bitmap(g);
            for class in 1..g.count {
                let mut s = small_in(g, class);
                let n = s.nelems as usize;
                for _ in 0..n {
                    s.take().unwrap();
                }
                for i in (1..n).step_by(2) {
                    assert!(s.put(i));
                }
                let bytes = g.span_pages(SizeClass::new(class).unwrap()).get() * g.page_bytes();
                let (mut starts, mut out) = (0, 0);
                for off in 0..bytes {
                    let a = s.start + off;
                    let want = s.slot_at_unlocked(a);
                    starts += (want != SlotAt::NotASlot) as usize;
                    out += (want == SlotAt::HandedOut) as usize;
                    let want = want == SlotAt::HandedOut;
                    // SAFETY: `a` is in the span, of small objects; unbounded
                    // only where the geometry allows it.
                    unsafe {
                        let r = s.0.cast_const();
                        assert_eq!(
                            Span::is_handed_out_unlocked(r, a, true),
                            want,
                            "{class} +{off}"
                        );
                        if unbounded {
                            assert_eq!(
                                Span::is_handed_out_unlocked(r, a, false),
                                want,
                                "{class} +{off}"
                            );
                        }
                    }
                }
                assert_eq!((starts, out), (n, n.div_ceil(2)), "class {class}");
            }
        }
    }

    /// `hardened`'s slot test against a shadow model: over random takes and
    /// puts, in a span of every class of every geometry shipped, an address
    /// passes exactly when it starts a slot that was ever taken, and every
    /// slot never taken is free in the span.
    #[cfg(feature = "hardened")]
    #[test]
    fn the_carved_test_matches_a_shadow_of_every_take() {
        let mut geometries = std::vec![&GO];
        geometries.extend(crate::sizeclass::REGION_GEOMETRIES.iter());
        let mut rng = crate::testing::Rng::new(16);
        for g in geometries {
            for class in 1..g.count {
                let mut s = small_in(g, class);
                let n = s.nelems as usize;
                let size = s.elemsize as usize;
                let bytes = g.span_pages(SizeClass::new(class).unwrap()).get() * g.page_bytes();
                let mut taken = std::vec![false; n];
                let mut out: Vec<usize> = Vec::new();
                for step in 0..3 * n.min(200) {
                    if out.is_empty() || rng.below(3) != 0 {
                        if let Some(i) = s.take() {
                            taken[i] = true;
                            out.push(i);
                        }
                    } else {
                        let i = out.swap_remove(rng.below(out.len()));
                        assert!(s.put(i));
                    }
                    if step % 16 != 0 {
                        continue;
                    }
                    s.check_invariants();
                    // Every slot's start, its last byte, and the span's tail.
                    for i in 0..=n {
                        for off in [i * size, (i * size + size - 1).min(bytes - 1)] {
                            if off >= bytes {
                                continue;
                            }
                            let want = off % size == 0 && taken.get(i) == Some(&true);
                            // SAFETY: `off` is in the span, of small objects.
                            let got = unsafe {
                                Span::is_carved_unlocked(s.0.cast_const(), s.start + off)
                            };
                            assert_eq!(got, want, "class {class} +{off}");
                        }
                    }
                }
                // Then every byte of the span, as the steps left it: only
                // the starts of slots ever taken pass.
                for off in 0..bytes {
                    let want = off % size == 0 && taken.get(off / size) == Some(&true);
                    // SAFETY: `off` is in the span, of small objects.
                    let got = unsafe { Span::is_carved_unlocked(s.0.cast_const(), s.start + off) };
                    assert_eq!(got, want, "class {class} +{off}");
                }
            }
        }
    }

    /// The class-only slot test of one-page spans says "starts an object"
    /// exactly at the starts of a span's objects, at every byte of a page,
    /// for every class of every geometry shipped, at pages below and above
    /// 4 GiB; and never for a class whose spans are longer.
    #[cfg(feature = "hardened")]
    #[test]
    fn page_slots_agree_with_slot_at() {
        let mut geometries = std::vec![&GO];
        geometries.extend(crate::sizeclass::REGION_GEOMETRIES.iter());
        for g in geometries {
            let t = PageSlots::of(g);
            let page = g.page_bytes();
            for class in 1..g.count {
                let c = SizeClass::new(class).unwrap();
                let r = g.info(c);
                let covered = r.npages == 1;
                assert_eq!(t.covers(c), covered, "class {class}");
                let size = r.size as usize;
                for base in [
                    0x10_0000usize,
                    u32::MAX as usize - page + 1,
                    0x7f12_3456_0000u64 as usize & !(page - 1),
                ] {
                    for off in 0..page {
                        let want = covered && off % size == 0 && off / size < r.objects as usize;
                        // SAFETY: a class index.
                        let got = unsafe { t.starts_slot(class, Addr::new(base + off), page) };
                        assert_eq!(got, want, "class {class} at {base:#x} +{off}");
                    }
                }
            }
        }
    }

    /// A fresh span's objects all carry the carved mark after `mark_slots`,
    /// and nothing past its objects is written.
    #[cfg(feature = "hardened")]
    #[test]
    fn mark_slots_marks_every_object() {
        let page = GO.page_bytes();
        let l = std::alloc::Layout::from_size_align(page, page).unwrap();
        for class in [2usize, 5, 6, 19, 31, 32] {
            let c = SizeClass::new(class).unwrap();
            assert_eq!(GO.span_pages(c).get(), 1);
            // SAFETY: a non-zero size.
            let mem = unsafe { std::alloc::alloc_zeroed(l) };
            assert!(!mem.is_null());
            let mut s = small(class);
            s.start = Addr::of(mem);
            let secret = 0x5eed_0000_1234_5678u64 as usize;
            // SAFETY: no object taken; the page is ours.
            unsafe { s.mark_slots(secret) };
            let size = s.elemsize as usize;
            let word = core::mem::size_of::<usize>();
            for off in (0..page).step_by(word) {
                // SAFETY: in the page.
                let w = unsafe { mem.add(off).cast::<usize>().read() };
                let (i, within) = (off / size, off % size);
                if i < s.nelems as usize && within == word * KEY_WORD {
                    assert_eq!(
                        w,
                        carved_mark(secret, mem as usize + i * size),
                        "class {class} +{off}"
                    );
                } else {
                    assert_eq!(w, 0, "class {class} +{off}");
                }
            }
            // SAFETY: allocated above with `l`.
            unsafe { std::alloc::dealloc(mem, l) };
        }
    }

    #[cfg(feature = "hardened")]
    #[test]
    fn odd_inverses_are_inverses() {
        let mut rng = crate::testing::Rng::new(32);
        let odd = (0..1 << 16)
            .map(|m| 2 * m + 1)
            .chain((0..1 << 16).map(|_| rng.next_u64() as u32 | 1));
        for m in odd.chain([u32::MAX]) {
            assert_eq!(m.wrapping_mul(odd_inverse(m)), 1, "{m}");
        }
    }

    #[test]
    fn takes_lowest_first_and_refills_cache_on_free() {
        for class in [1usize, 2, 3, 5, 26, 35, 67] {
            let mut s = small(class);
            let n = s.nelems as usize;
            let got: Vec<usize> = (0..n).map(|_| s.take().unwrap()).collect();
            assert_eq!(got, (0..n).collect::<Vec<_>>(), "class {class}");
            assert!(s.take().is_none());
            assert!(s.is_full());
            s.check_invariants();
            // Free a few scattered objects; they come back lowest first.
            let mut frees: Vec<usize> = std::vec![n - 1, 0, n / 2, n / 3];
            frees.sort();
            frees.dedup();
            frees.reverse();
            for &i in &frees {
                assert!(s.put(i));
                assert!(!s.put(i), "second put of {i} must fail");
                s.check_invariants();
            }
            let mut want = frees.clone();
            want.sort();
            let again: Vec<usize> = (0..want.len()).map(|_| s.take().unwrap()).collect();
            assert_eq!(again, want, "class {class}");
            s.check_invariants();
        }
    }

    #[test]
    fn index_of_finds_object_starts() {
        let s = small(45); // 4864 B objects over 3 pages
        for i in 0..s.nelems as usize {
            let a = Addr::of(s.object(i));
            assert_eq!(s.index_of(a), (i, true));
            assert_eq!(s.index_of(a + 1), (i, false));
            assert_eq!(s.index_of(a + 4863), (i, false));
        }
    }

    #[test]
    fn list_push_remove() {
        let a = small(1);
        let b = small(1);
        let c = small(1);
        let mut l = SpanList::new();
        // SAFETY: fresh records on no list.
        unsafe {
            l.push(a.0);
            l.push(b.0);
            l.push(c.0);
            assert_eq!(l.len(), 3);
            l.remove(b.0);
            assert_eq!(l.iter().collect::<Vec<_>>(), [c.0, a.0]);
            l.remove(c.0);
            l.remove(a.0);
        }
        assert!(l.is_empty());
    }
}
