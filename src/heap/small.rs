//! Small objects: the per-CPU fast paths, refills from central and flushes
//! to it, and the owner/remote frees of the classes under a cache line.
//! See `lib.rs` (allocation steps 2–4, free steps 2–4) and [`super`].
//!
//! **Classes under a line** (8..=48 B, [`Geometry::shares_lines`](crate::Geometry::shares_lines)): their
//! spans belong to the CPU that carves them ([`crate::span::Span::owner`]).
//! A free on another CPU — one page-map lookup tells — pushes the object
//! onto the class's lock-free remote list ([`Remote`]) instead of that CPU's
//! cache; the next refill of the class, the free that brings the list to
//! [`REMOTE_MAX`], or `scavenge` returns the list to the spans. So no CPU is
//! handed an object whose line-mates live on another CPU (mimalloc's owner
//! pages, per CPU rather than per thread).
//!
//! Lock order: the CPU slot is never held while `central[c]` is taken, except
//! by a drain (`Caches::drain`), which holds the slot of the CPU it drains.

use core::ptr::{null_mut, NonNull};

use crate::central::REMOTE_MAX;
#[cfg(feature = "checks")]
use crate::checks;
use crate::pageheap::{Below, Entry};
use crate::percpu::{Caches, Cpu, Fast, MAX_CAPACITY, SIZE_STEP};
use crate::sizeclass::SizeClass;
use crate::source::PageSource;
#[cfg(feature = "hardened")]
use crate::span::PageSlots;
use crate::span::Span;
use crate::units::Addr;

use super::Heap;

/// The largest request [`Heap::allocate_fast`] serves: the end of the
/// one-load size lookup (1 KiB).
pub const MALLOC_FAST_MAX: usize = crate::sizeclass::SIZE_TO_CLASS8_MAX;

/// `r`, as a value the compiler cannot see the origin of: the heap's
/// address computed once into a register, which every access of the path
/// then indexes, where LLVM would otherwise take a static heap's address
/// afresh (a `lea` per use) instead of keeping it. An empty `asm!`: no
/// instruction.
#[cfg(all(feature = "hardened", rseq))]
#[inline(always)]
fn in_register<T>(r: &T) -> &T {
    let mut p = core::ptr::from_ref(r);
    // SAFETY: the assembly is empty: `p` comes out as it went in, and
    // nothing is read or written through it (`nomem` is what lets LLVM
    // merge two of these).
    #[allow(clippy::pointers_in_nomem_asm_block)]
    unsafe {
        core::arch::asm!("/* {0} */", inout(reg) p, options(pure, nomem, nostack, preserves_flags))
    };
    // SAFETY: `p` is `r`, borrowed for as long.
    unsafe { &*p }
}

/// Where there is no `asm!` fast path, `r` itself.
#[cfg(all(feature = "hardened", not(rseq)))]
#[inline(always)]
fn in_register<T>(r: &T) -> &T {
    r
}

impl<S: PageSource, C: Cpu> Heap<S, C> {
    /// The rseq fast path: one load of the descriptor, one section; anything
    /// else (set-up, locked mode, empty stack) goes to [`Heap::alloc_small_slow`].
    #[inline(always)]
    pub(super) fn alloc_small(&self, c: SizeClass) -> *mut u8 {
        if let Some(f) = self.slabs.fast() {
            let (p, tick) = f.pop(c);
            // A miss says `tick` too: the common pop tests nothing else.
            if tick {
                if p.is_null() {
                    return self.alloc_small_slow(c);
                }
                self.pop_tick();
            }
            // SAFETY: a pop that returns null says `tick` (`Slabs::pop`),
            // and that case returned above. Said, so that a caller's test of
            // the result folds away, as the pop tests null no more.
            unsafe { core::hint::assert_unchecked(!p.is_null()) };
            // SAFETY: an object of class `c`, ours now.
            #[cfg(feature = "hardened")]
            unsafe {
                super::hardened::clear_key(p)
            };
            #[cfg(feature = "checks")]
            checks::on_alloc::<S>(&self.map, p);
            return p;
        }
        self.alloc_small_slow(c)
    }

    /// Whether [`Heap::allocate_fast`] and [`Heap::deallocate_fast`] serve
    /// at all: not for a region heap, a `Cpu` that guards operations, or
    /// feature `checks` (whose checks are on the usual paths).
    const C_FAST_PATHS: bool =
        !S::SMALL_ARENAS && !C::GUARDS_OPERATIONS && !cfg!(feature = "checks");

    /// With `hardened`: whether the C free tests the slots of classes whose
    /// spans are one page from the class alone ([`PageSlots`]), which
    /// relies on every such span marking its objects at birth (the
    /// heap's [`Below`](crate::pageheap::Below) says so).
    #[cfg(feature = "hardened")]
    pub(super) const PAGE_SLOTS_MARKED: bool = Self::C_FAST_PATHS;

    /// [`PageSlots`] of the heap's geometry.
    #[cfg(feature = "hardened")]
    pub(super) const PAGE_SLOTS: PageSlots = PageSlots::of(S::GEOMETRY);

    /// [`Heap::PAGE_SLOTS`] as the C free reads it: the heap's copy where
    /// there is one (see the field).
    #[cfg(feature = "hardened")]
    #[inline(always)]
    fn page_slots(&self) -> &PageSlots {
        // SAFETY: written once at set-up, before any reader (see the field).
        #[cfg(rseq)]
        return unsafe { &*self.page_slots.get() };
        #[cfg(not(rseq))]
        return &Self::PAGE_SLOTS;
    }

    /// With `hardened`: whether [`PageSlots`] tests every class that shares
    /// lines (true for Go's geometry), so that the C free of such a class
    /// that fails its table goes no further.
    #[cfg(feature = "hardened")]
    const SHARED_IN_PAGE_SLOTS: bool =
        Self::PAGE_SLOTS.covers_below(S::GEOMETRY.tiny_class.index());

    /// Whether the C free's slot test may skip its bound
    /// ([`crate::span::tail_slots_in_bitmap`]; true for Go's geometry).
    /// With `hardened` the test is another, which needs no bound.
    #[cfg(not(feature = "hardened"))]
    const TAILS_IN_BITMAP: bool = crate::span::tail_slots_in_bitmap(S::GEOMETRY);

    /// The C ABI's `malloc` fast path: an object of at least `size` bytes
    /// (`1..=`[`MALLOC_FAST_MAX`]), aligned to 16, popped from this CPU's
    /// cache with no lock and no call, or null when more is needed (rseq
    /// mode off or not yet set up, an empty stack, the decay's tick, a size
    /// out of range, a region heap, a `Cpu` that guards operations, feature
    /// `checks`), in which case the caller allocates the usual way
    /// ([`Heap::allocate`] with alignment 16). Never a tiny object, so an
    /// unsized free of the result needs no tiny-block check.
    ///
    /// The class is the one of `(size - 1) | 15`: the smallest class of at
    /// least `size` rounded up to 16 (class sizes are multiples of 8, so none
    /// lies between), whose size is a multiple of 16 (checked in the tests
    /// for every size), as [`Heap::allocate`] would choose.
    #[inline(always)]
    pub fn allocate_fast(&self, size: usize) -> *mut u8 {
        if !Self::C_FAST_PATHS {
            return null_mut();
        }
        if size.wrapping_sub(1) >= MALLOC_FAST_MAX {
            return null_mut();
        }
        let Some(f) = self.slabs.fast() else {
            return null_mut();
        };
        // The step of the size, whose class the descriptor keeps.
        let (p, tick) = f.pop_step((size - 1) / SIZE_STEP);
        // A miss says `tick` too: the common pop tests nothing else.
        if tick {
            if p.is_null() {
                return p;
            }
            // SAFETY: an object of class `c`, ours now.
            #[cfg(feature = "hardened")]
            unsafe {
                super::hardened::clear_key(p)
            };
            if S::CLOCK {
                // SAFETY: not null (tested above).
                return self
                    .tick_then(unsafe { NonNull::new_unchecked(p) })
                    .as_ptr();
            }
            return p;
        }
        // SAFETY: a pop that returns null says `tick` (`Slabs::pop`). Said,
        // so that the compiler does not fold the two tests back into one
        // path (it would, where nothing is stored between them).
        unsafe { core::hint::assert_unchecked(!p.is_null()) };
        // SAFETY: as above.
        #[cfg(feature = "hardened")]
        unsafe {
            super::hardened::clear_key(p)
        };
        p
    }

    /// The C ABI's `free` fast path: frees `p` and returns true, or returns
    /// false, having changed nothing, when more is needed — whatever
    /// [`Heap::allocate_fast`] leaves to the usual way, a large object, null,
    /// and anything that is not plainly a live object of a class (a foreign
    /// or interior pointer, a slot free in its span, a suspect key under
    /// `hardened`) — in which case the caller frees `p` with
    /// [`Heap::try_deallocate_unsized`], which reports. One page-map lookup
    /// for the class, the span and, for the classes under a line, its owner.
    ///
    /// # Safety
    /// As [`Heap::try_deallocate_unsized`].
    #[inline(always)]
    pub unsafe fn deallocate_fast(&self, p: *mut u8) -> bool {
        let mut freed = true;
        // SAFETY: forwarded from the caller.
        unsafe { self.deallocate_fast_or(p, |_| freed = false) };
        freed
    }

    /// [`Heap::deallocate_fast`], calling `otherwise(p)` instead of
    /// returning false: a caller's fallback is then a call at the end of the
    /// path that declined, not a test of a result after the whole fast path.
    /// It gets `p` back, so that it need capture nothing the path holds
    /// anyway (a closure that captures `p` is one more register to carry).
    ///
    /// # Safety
    /// As [`Heap::try_deallocate_unsized`].
    #[inline(always)]
    pub unsafe fn deallocate_fast_or(&self, p: *mut u8, otherwise: impl FnOnce(*mut u8)) {
        // SAFETY: forwarded from the caller.
        unsafe { self.deallocate_fast_holding(p, 0, otherwise) }
    }

    /// C23's `free_sized(p, size)` fast path: as [`Heap::deallocate_fast`],
    /// and it also declines when `p`'s slot is smaller than `size` (a wrong
    /// size, which the checking path reports), so a sized free makes the one
    /// page-map lookup that an unsized one makes.
    ///
    /// # Safety
    /// As [`Heap::try_deallocate_unsized`].
    #[inline(always)]
    pub unsafe fn deallocate_fast_sized(&self, p: *mut u8, size: usize) -> bool {
        let mut freed = true;
        // SAFETY: forwarded from the caller.
        unsafe { self.deallocate_fast_sized_or(p, size, |_| freed = false) };
        freed
    }

    /// [`Heap::deallocate_fast_sized`], calling `otherwise` instead of
    /// returning false (see [`Heap::deallocate_fast_or`]).
    ///
    /// # Safety
    /// As [`Heap::try_deallocate_unsized`].
    #[inline(always)]
    pub unsafe fn deallocate_fast_sized_or(
        &self,
        p: *mut u8,
        size: usize,
        otherwise: impl FnOnce(*mut u8),
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { self.deallocate_fast_holding(p, size, otherwise) }
    }

    /// [`Heap::deallocate_fast_or`] of an object whose slot must hold `size`
    /// bytes (0: any).
    ///
    /// # Safety
    /// As [`Heap::try_deallocate_unsized`].
    #[inline(always)]
    unsafe fn deallocate_fast_holding(
        &self,
        p: *mut u8,
        size: usize,
        otherwise: impl FnOnce(*mut u8),
    ) {
        if !Self::C_FAST_PATHS {
            return otherwise(p);
        }
        if S::WINDOW_BYTES == 0 {
            let Some(f) = self.slabs.fast() else {
                return otherwise(p);
            };
            // SAFETY: forwarded from the caller.
            return unsafe { self.deallocate_fast_radix(f, p, size, otherwise) };
        }
        // The class from the page's entry, not from the span record: the
        // push's address waits on it (see `pageheap::map::Entry`). Through
        // the fast window, which is empty until the sections are published
        // and in locked mode, so that a small class's entry proves them
        // published: no test of the mode.
        let e = self.map.window_entry_fast::<S>(Addr::of(p));
        let i = e.class_index();
        // One compare for the classes above the line-sharing ones (their
        // free has no owner test), then the rest (a constant, at least 1,
        // so that a null entry is never among the first).
        let unshared = S::GEOMETRY.tiny_class.index().max(1);
        if i >= unshared {
            // SAFETY: `i` is the index of `e`'s small class (not 0), one
            // that shares no lines.
            let c = unsafe { SizeClass::new_unchecked(i as u8) };
            // With `hardened`, a class of one-page spans passes its table,
            // and the others take their record's test out of line, so that
            // this path joins no other before its push. The table and the
            // stack words are both the heap's: one register holds its
            // address for both (see `in_register`).
            #[cfg(feature = "hardened")]
            {
                let this = in_register(self);
                // SAFETY: `e` is a small class's entry, Acquire-loaded from
                // a Release store made after the sections were published
                // (`PageMap::window_entry_fast`).
                let Some(f) = (unsafe { this.slabs.fast_published() }) else {
                    return otherwise(p);
                };
                // SAFETY: `i` is a class index.
                if unsafe {
                    this.page_slots()
                        .starts_slot(i, Addr::of(p), S::GEOMETRY.page_bytes())
                } {
                    // SAFETY: forwarded from the caller; `e` is `p`'s entry,
                    // and `p` starts one of its slots (marked at birth: see
                    // `deallocate_fast_found`).
                    return unsafe {
                        this.deallocate_fast_slot(f, p, size, c, false, e, otherwise)
                    };
                }
                // SAFETY: forwarded from the caller; `e` is `p`'s entry.
                return unsafe { Self::deallocate_fast_long(p, i, e, self, size, otherwise) };
            }
            // SAFETY: as in the block above.
            #[cfg(not(feature = "hardened"))]
            let Some(f) = (unsafe { self.slabs.fast_published() }) else {
                return otherwise(p);
            };
            // SAFETY: forwarded from the caller; `e` is `p`'s entry.
            #[cfg(not(feature = "hardened"))]
            return unsafe { self.deallocate_fast_found(f, p, size, c, false, e, otherwise) };
        }
        // SAFETY: forwarded from the caller; `e` is `p`'s entry, `i` its
        // class index (0: none) and below `unshared`.
        unsafe { self.deallocate_fast_shared(p, size, i, e, otherwise) }
    }

    /// [`Heap::deallocate_fast_holding`] past its one compare for an entry
    /// of no class or of a class that shares lines.
    ///
    /// # Safety
    /// As [`Heap::try_deallocate_unsized`]; `e` is `p`'s entry in the fast
    /// window and `i` its class index, below the geometry's tiny class.
    #[inline(always)]
    unsafe fn deallocate_fast_shared(
        &self,
        p: *mut u8,
        size: usize,
        i: usize,
        e: Entry,
        otherwise: impl FnOnce(*mut u8),
    ) {
        // With `hardened`, the slot test of a one-page class first: it
        // fails for the null entry (index 0 has no objects in the table),
        // so the classes that pass need no test of the index. (Its block is
        // the one below it again: as one block under `slot || i != 0`, LLVM
        // sees that the table's index 0 never passes and tests `i` first.)
        #[cfg(feature = "hardened")]
        // SAFETY: `i` is below the tiny class's index, a class index.
        if unsafe {
            self.page_slots()
                .starts_slot(i, Addr::of(p), S::GEOMETRY.page_bytes())
        } {
            // SAFETY: forwarded from the caller; `e` is `p`'s entry, `i`
            // its class (the table passes no address for index 0), and `p`
            // starts a slot of its span.
            return unsafe { Self::deallocate_fast_shared_slot(p, i, e, self, size, otherwise) };
        }
        #[cfg(feature = "hardened")]
        if Self::SHARED_IN_PAGE_SLOTS && i != 0 {
            // A class the table tests, at no object's start.
            return otherwise(p);
        }
        if i != 0 {
            // SAFETY: `i` is the index of `e`'s small class (not 0).
            let c = unsafe { SizeClass::new_unchecked(i as u8) };
            // SAFETY: as in `deallocate_fast_holding`.
            let Some(f) = (unsafe { self.slabs.fast_published() }) else {
                return otherwise(p);
            };
            // SAFETY: forwarded from the caller; `e` is `p`'s entry.
            return unsafe { self.deallocate_fast_found(f, p, size, c, true, e, otherwise) };
        }
        if !e.span().is_null() {
            return otherwise(p);
        }
        // Outside the fast window (all of it in locked mode), or in a page
        // of no live span there.
        let Some(f) = self.slabs.fast() else {
            return otherwise(p);
        };
        // SAFETY: forwarded from the caller.
        unsafe { self.deallocate_fast_outside(f, p, size, otherwise) }
    }

    /// [`Heap::deallocate_fast_slot`] of a class that shares lines, whose
    /// slot test passed: out of line, a tail call, so that the path of the
    /// other classes is the one that falls through to the return (one jump
    /// fewer there, and none more here: this one ends in its own return).
    ///
    /// # Safety
    /// As [`Heap::deallocate_fast_slot`], with `i` the index of `e`'s class
    /// (not 0). The parameters come in the order the caller holds them in
    /// registers (the address, the class index, the entry), so that the
    /// call is a jump and nothing else.
    #[cfg(feature = "hardened")]
    #[inline(never)]
    #[allow(improper_ctypes_definitions)] // Rust's own types: called from Rust only
    unsafe extern "C" fn deallocate_fast_shared_slot(
        p: *mut u8,
        i: usize,
        e: Entry,
        this: &Self,
        size: usize,
        otherwise: impl FnOnce(*mut u8),
    ) {
        // SAFETY: the caller's class index, not 0.
        let c = unsafe { SizeClass::new_unchecked(i as u8) };
        // SAFETY: as in `deallocate_fast_holding`.
        let Some(f) = (unsafe { this.slabs.fast_published() }) else {
            return otherwise(p);
        };
        // SAFETY: forwarded from the caller.
        unsafe { this.deallocate_fast_slot(f, p, size, c, true, e, otherwise) }
    }

    /// The rest of [`Heap::deallocate_fast_found`] for a class that shares
    /// no lines and failed the table of one-page slots: the record's test
    /// (a class of longer spans), out of line, a tail call. Parameters as in
    /// [`Heap::deallocate_fast_shared_slot`].
    ///
    /// # Safety
    /// As [`Heap::deallocate_fast_found`], with `i` the index of `e`'s
    /// class (not 0), one that shares no lines.
    #[cfg(feature = "hardened")]
    #[inline(never)]
    #[allow(improper_ctypes_definitions)] // Rust's own types: called from Rust only
    unsafe extern "C" fn deallocate_fast_long(
        p: *mut u8,
        i: usize,
        e: Entry,
        this: &Self,
        size: usize,
        otherwise: impl FnOnce(*mut u8),
    ) {
        // SAFETY: the caller's class index, not 0.
        let c = unsafe { SizeClass::new_unchecked(i as u8) };
        // SAFETY: `e` is a small class's entry, of class `c`, and holds `p`.
        if !unsafe { this.starts_long_slot(c, e, Addr::of(p)) } {
            return otherwise(p);
        }
        // SAFETY: as in `deallocate_fast_holding`.
        let Some(f) = (unsafe { this.slabs.fast_published() }) else {
            return otherwise(p);
        };
        // SAFETY: forwarded from the caller; `p` starts a slot taken once.
        unsafe { this.deallocate_fast_slot(f, p, size, c, false, e, otherwise) }
    }

    /// With `hardened`, the slot test of a class the one-page table does
    /// not cover (a class of longer spans): `a` starts a slot of `e`'s span
    /// that was ever taken (its record's `carved`). False for a covered
    /// class, whose table said no already.
    ///
    /// # Safety
    /// `e` is a small class's entry, of class `c`, whose span holds `a`.
    #[cfg(feature = "hardened")]
    #[inline(always)]
    unsafe fn starts_long_slot(&self, c: SizeClass, e: Entry, a: Addr) -> bool {
        // SAFETY: `e.span()` is a live span of small objects (a small
        // class's entry) that holds `a`, the caller's.
        !self.page_slots().covers(c) && unsafe { Span::is_carved_unlocked(e.span(), a) }
    }

    /// [`Heap::deallocate_fast_radix`] out of line, for an address outside
    /// the window, so that the path through the window carries none of it.
    ///
    /// # Safety
    /// As [`Heap::try_deallocate_unsized`].
    #[inline(never)]
    #[allow(improper_ctypes_definitions)] // Rust's own types: called from Rust only
    unsafe extern "C" fn deallocate_fast_outside(
        &self,
        f: Fast,
        p: *mut u8,
        size: usize,
        otherwise: impl FnOnce(*mut u8),
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { self.deallocate_fast_radix(f, p, size, otherwise) }
    }

    /// [`Heap::deallocate_fast_holding`] through the page map's radix
    /// table: every address over a source without a window.
    ///
    /// # Safety
    /// As [`Heap::try_deallocate_unsized`].
    #[inline(always)]
    unsafe fn deallocate_fast_radix(
        &self,
        f: Fast,
        p: *mut u8,
        size: usize,
        otherwise: impl FnOnce(*mut u8),
    ) {
        let Some((c, e)) = self.map.radix_small_entry::<S>(Addr::of(p)) else {
            return otherwise(p);
        };
        let shares = S::GEOMETRY.shares_lines(c);
        // SAFETY: forwarded from the caller; `e` is `p`'s entry.
        unsafe { self.deallocate_fast_found(f, p, size, c, shares, e, otherwise) }
    }

    /// [`Heap::deallocate_fast_holding`] once `p`'s entry `e`, of a span
    /// of small objects of class `c`, is found.
    ///
    /// # Safety
    /// As [`Heap::try_deallocate_unsized`]; `e` is the page map's entry
    /// for `p`'s page, `c` its class and `shares` whether `c` shares lines
    /// ([`Geometry::shares_lines`](crate::Geometry::shares_lines)).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)] // one inlined path, split for its callers
    unsafe fn deallocate_fast_found(
        &self,
        f: Fast,
        p: *mut u8,
        size: usize,
        c: SizeClass,
        shares: bool,
        e: Entry,
        otherwise: impl FnOnce(*mut u8),
    ) {
        let a = Addr::of(p);
        // With `hardened`, the key read below tells a slot free again after
        // a free from one handed out, so the span need only say whether the
        // slot was ever taken; without it, the alloc bit says it all.
        #[cfg(feature = "hardened")]
        // SAFETY: `e` is a small class's entry, so its class index is `c`'s
        // (below `NUM_CLASSES`) and `e.span()` a live span, of small
        // objects, that holds `a`. A span of a class the table covers is one
        // page, marked at birth (`C_FAST_PATHS`: `PAGE_SLOTS_MARKED`); the
        // record's test serves the others.
        let slot = unsafe {
            self.page_slots()
                .starts_slot(e.class_index(), a, S::GEOMETRY.page_bytes())
                || self.starts_long_slot(c, e, a)
        };
        #[cfg(not(feature = "hardened"))]
        // SAFETY: `e.span()` is a live span (a small class's entry), named
        // with the provenance its entry exposed; `a` is in it, a span of
        // small objects (the class byte); `C_FAST_PATHS` means a source of
        // large arenas, whose spans are the geometry's.
        let slot = unsafe { Span::is_handed_out_unlocked(e.span(), a, !Self::TAILS_IN_BITMAP) };
        if !slot {
            return otherwise(p);
        }
        // SAFETY: forwarded from the caller; `p` starts a slot (above).
        unsafe { self.deallocate_fast_slot(f, p, size, c, shares, e, otherwise) }
    }

    /// [`Heap::deallocate_fast_found`] past its slot test.
    ///
    /// # Safety
    /// As [`Heap::deallocate_fast_found`], and `p` starts a slot of `e`'s
    /// span that was handed out at least once (without `hardened`: is
    /// handed out now).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)] // one inlined path, split for its callers
    unsafe fn deallocate_fast_slot(
        &self,
        f: Fast,
        p: *mut u8,
        size: usize,
        c: SizeClass,
        shares: bool,
        e: Entry,
        otherwise: impl FnOnce(*mut u8),
    ) {
        // SAFETY: a small class's entry holds a live span.
        let span = unsafe { &*e.span() };
        // `size != 0` first: for `deallocate_fast` (0) the lookup of the
        // class's size, and its bounds check, fold away.
        if size != 0 && size > S::GEOMETRY.size(c) {
            return otherwise(p);
        }
        // SAFETY: `p` starts a handed-out object of class `c`, the caller's.
        #[cfg(feature = "hardened")]
        if !unsafe { self.mark_free_unless_suspect(p) } {
            return otherwise(p);
        }
        if shares {
            // The owner test inside the push: exact for the CPU it commits on.
            match f.push_owned(c, p, span.owner.load()) {
                Some(true) => {}
                Some(false) => self.free_small_slow_c(p, c),
                None => self.free_remote(p, c),
            }
        } else if !f.push(c, p) {
            self.free_small_slow_c(p, c)
        }
    }

    /// [`Heap::free_small_slow`] for the C fast path: `extern "C"`, so it
    /// cannot unwind (see [`Heap::tick_then`]).
    #[cold]
    #[inline(never)]
    #[allow(improper_ctypes_definitions)] // Rust's own types: called from Rust only
    extern "C" fn free_small_slow_c(&self, p: *mut u8, c: SizeClass) {
        self.free_small_slow(p, c)
    }

    /// The decay's poll, then `p`: out of line, so that [`Heap::allocate_fast`]
    /// calls nothing on its path (and, `p` being known non-null, a caller's
    /// test of the result folds away, which leaves the call in tail position).
    ///
    /// `extern "C"`, as every call the C fast paths make: such a function
    /// cannot unwind (a panic aborts), so the C library's `malloc` and
    /// `free` may end in a jump to it, with no frame of their own.
    #[cold]
    #[inline(never)]
    extern "C" fn tick_then(&self, p: NonNull<u8>) -> NonNull<u8> {
        self.pop_tick();
        p
    }

    /// A pop due a decay tick (every 4,096th malloc of a class on a CPU):
    /// the decay's poll, and the idle check of the CPU's grown stacks
    /// (`percpu::limit`), whose objects go back to central.
    #[cold]
    #[inline(never)]
    fn pop_tick(&self) {
        self.decay_tick(true);
        if let Some(s) = self.caches() {
            let below = self.below();
            s.shed_idle(S::GEOMETRY, |v, objs| self.flush_reclaimed(v, objs, &below));
        }
    }

    /// Objects of class `v` that a CPU's stack gave back with its growth
    /// (`percpu::limit`): to their spans, past the transfer cache, so that
    /// spans a finished phase emptied serve the next one.
    fn flush_reclaimed(&self, v: SizeClass, objs: &[*mut u8], below: &Below<'_, S, C::Relax>) {
        self.central(v).lock().give_back(v, objs, below);
        self.flow(v).flushed_from_slabs(objs.len());
    }

    #[cfg_attr(rseq, inline(never))]
    #[cfg_attr(not(rseq), inline(always))]
    fn alloc_small_slow(&self, c: SizeClass) -> *mut u8 {
        let Some(s) = self.caches() else {
            return null_mut();
        };
        s.enroll();
        // In rseq mode `alloc_small` has just tried this pop.
        let (mut p, tick) = if s.uses_rseq() {
            (null_mut(), false)
        } else {
            s.pop(c)
        };
        if tick && !p.is_null() {
            self.pop_tick();
        }
        if p.is_null() {
            p = self.refill(s, c);
        }
        #[cfg(feature = "checks")]
        if !p.is_null() {
            checks::on_alloc::<S>(&self.map, p);
        }
        #[cfg(feature = "hardened")]
        if !p.is_null() {
            // SAFETY: an object of class `c`, ours now.
            unsafe { super::hardened::clear_key(p) };
        }
        p
    }

    /// Takes a batch from central: all but one go to the current CPU's stack
    /// (whatever does not fit goes back), the last is the caller's.
    #[cold]
    #[inline(never)]
    fn refill(&self, s: Caches<'_, C, S>, c: SizeClass) -> *mut u8 {
        self.decay_tick(true);
        let mut buf = [null_mut(); MAX_CAPACITY];
        let want = s.batch(c);
        let below = self.below();
        let cpu = s.current_cpu();
        let mut n = self.take(c, &mut buf[..want], cpu);
        if n == 0 {
            // Out of memory: objects cached anywhere may make whole spans
            // free, whose pages this class can use (a small heap lives on this).
            self.drain_caches(&below);
            n = self.take(c, &mut buf[..want], cpu);
            if n == 0 {
                return null_mut();
            }
        }
        #[cfg(feature = "hardened")]
        self.mark_carved(&buf[..n - 1]);
        let flow = self.flow(c);
        s.underflowed(c, S::GEOMETRY, |v, objs| {
            self.flush_reclaimed(v, objs, &below)
        });
        let pushed = s.push_batch(c, &buf[..n - 1]);
        flow.pushed_to_slabs(pushed);
        if pushed < n - 1 {
            // The stack filled meanwhile (another thread on this CPU, or a migration).
            // They never reached a stack or a user, so no flow counts them.
            self.central(c)
                .lock()
                .flush(c, &buf[pushed..n - 1], &below, cpu);
        }
        flow.malloc_direct();
        buf[n - 1]
    }

    /// Fills `buf` for CPU `cpu`'s cache from class `c`'s central list
    /// (objects freed off their owner's CPU go back to their spans first,
    /// where their owners' refills find them); the number taken.
    fn take(&self, c: SizeClass, buf: &mut [*mut u8], cpu: usize) -> usize {
        let below = self.below();
        let mut central = self.central(c).lock();
        if S::GEOMETRY.shares_lines(c) {
            central.give_back_remote(c, self.remote(c), &below);
        }
        central.refill(c, buf, &below, cpu)
    }

    /// A region heap with no room left for class `c` (its refill has already
    /// drained every cache): one object of the next kept class up that has a
    /// free slot whose objects are `align`-aligned, or null. The slots of a
    /// region's partly used spans are the last of its memory, and a larger
    /// slot serves a smaller object; its free finds the slot's class through
    /// the page map, as every free of a region heap does
    /// ([`Heap::frees_by_map`]).
    #[cold]
    #[inline(never)]
    pub(super) fn alloc_borrowed(&self, c: SizeClass, align: usize) -> *mut u8 {
        let Some(s) = self.slabs.get::<S>() else {
            return null_mut();
        };
        for k in self.set_up_classes().kept() {
            let size = S::GEOMETRY.size(k);
            if size <= S::GEOMETRY.size(c) || !size.is_multiple_of(align) {
                continue;
            }
            let mut buf = [null_mut(); 1];
            if self.take(k, &mut buf, s.current_cpu()) == 1 {
                self.flow(k).malloc_direct();
                #[cfg(feature = "checks")]
                checks::on_alloc::<S>(&self.map, buf[0]);
                #[cfg(feature = "hardened")]
                // SAFETY: an object of class `k`, ours now.
                unsafe {
                    super::hardened::clear_key(buf[0])
                };
                return buf[0];
            }
        }
        null_mut()
    }

    /// Whether `p`, of a class whose objects share lines, belongs to another
    /// CPU than `cpu`: its span's owner ([`crate::span::Span::owner`]) is
    /// not `cpu` ([`crate::units::Owner::is_not_cpu`]). One page-map lookup
    /// and one load.
    #[inline(always)]
    fn owned_elsewhere(&self, p: *mut u8, cpu: usize) -> bool {
        Self::entry_owned_elsewhere(self.map.entry::<S>(Addr::of(p)), cpu)
    }

    /// [`Heap::owned_elsewhere`] of the object whose page-map entry is `e`.
    #[inline(always)]
    fn entry_owned_elsewhere(e: Entry, cpu: usize) -> bool {
        // SAFETY: non-null page-map entries are live spans.
        match unsafe { e.span().as_ref() } {
            Some(s) => s.owner.load().is_not_cpu(cpu),
            None => false, // not ours: the normal path reports it (with `checks`)
        }
    }

    /// A free of an object another CPU owns: onto the class's remote list
    /// (no lock), from which the next refill returns it to its span, so this
    /// CPU's cache never hands out an object whose line-mates live elsewhere.
    ///
    /// `extern "C"`, so that the C fast path may end in a jump to it (see
    /// [`Heap::tick_then`]); nothing in it is meant to panic, and a panic
    /// in an allocator's free could not unwind safely anyway.
    #[inline(never)]
    #[allow(improper_ctypes_definitions)] // Rust's own types: called from Rust only
    extern "C" fn free_remote(&self, p: *mut u8, c: SizeClass) {
        let r = self.remote(c);
        self.flow(c).free_direct();
        // SAFETY: a freed object of a line-sharing class: 8..=48 bytes,
        // 8-aligned, and no one else's.
        if unsafe { r.push(p) } >= REMOTE_MAX {
            let below = self.below();
            self.central(c).lock().give_back_remote(c, r, &below);
        }
    }

    /// Frees `p`, an object of class `c`; with feature `hardened`, first
    /// checks and writes its key (`heap::hardened`), aborting on a double
    /// free.
    #[inline(always)]
    pub(super) fn free_small(&self, p: *mut u8, c: SizeClass) {
        // SAFETY: the callers free objects of class `c` that they own (or
        // free ones: what this detects).
        #[cfg(feature = "hardened")]
        if let Err(e) = unsafe { self.mark_free(p, c) } {
            super::hardened::bad_free(p, e);
        }
        self.free_small_marked(p, c)
    }

    /// [`Heap::free_small`] after the key (with feature `hardened`).
    #[inline(always)]
    pub(super) fn free_small_marked(&self, p: *mut u8, c: SizeClass) {
        #[cfg(feature = "checks")]
        checks::on_free::<S, _>(&self.map, p, c, || self.central(c).lock());
        if let Some(f) = self.slabs.fast() {
            if S::GEOMETRY.shares_lines(c) {
                return self.free_sharing(p, c, f);
            }
            if f.push(c, p) {
                return;
            }
        }
        self.free_small_slow(p, c)
    }

    /// rseq mode, a class whose objects share lines: the owner check, then the
    /// push. Out of line, so that the other classes' path stays short and
    /// straight (and the static count of `make bench-callgrind` follows it).
    #[inline(never)]
    fn free_sharing(&self, p: *mut u8, c: SizeClass, f: Fast) {
        // SAFETY: `f` is the published caches, which the heap's set-up
        // publishes after it settled the window.
        let e = unsafe { self.map.entry_settled::<S>(Addr::of(p)) };
        // SAFETY: non-null page-map entries are live spans.
        let Some(span) = (unsafe { e.span().as_ref() }) else {
            // Not ours: the usual path reports it (with `checks`).
            return self.free_small_slow(p, c);
        };
        match f.push_owned(c, p, span.owner.load()) {
            Some(true) => {}
            Some(false) => self.free_small_slow(p, c),
            None => self.free_remote(p, c),
        }
    }

    #[cfg_attr(rseq, inline(never))]
    #[cfg_attr(not(rseq), inline(always))]
    fn free_small_slow(&self, p: *mut u8, c: SizeClass) {
        let Some(s) = self.slabs.get::<S>() else {
            panic!("tieralloc: free of {p:p} before any allocation");
        };
        s.enroll();
        // In rseq mode `free_small` has just tried this push.
        if s.uses_rseq() {
            return self.flush_push(s, c, p);
        }
        let pushed = if S::GEOMETRY.shares_lines(c) {
            match s.push_owned(c, p, |i| self.owned_elsewhere(p, i)) {
                Some(pushed) => pushed,
                None => return self.free_remote(p, c),
            }
        } else {
            s.push(c, p)
        };
        if !pushed {
            self.flush_push(s, c, p);
        }
    }

    /// The stack is full: send its top batch to central, then push `p` (or, if
    /// the stack stays unreachable, hand `p` to central directly).
    #[cold]
    #[inline(never)]
    fn flush_push(&self, s: Caches<'_, C, S>, c: SizeClass, p: *mut u8) {
        if s.overflowed(c, S::GEOMETRY.size(c)) && s.push(c, p) {
            return; // the push failed on a limit not settled yet
        }
        self.decay_tick(true);
        let below = self.below();
        let flow = self.flow(c);
        for _ in 0..4 {
            let mut buf = [null_mut(); MAX_CAPACITY];
            let k = s.pop_batch(c, &mut buf[..s.batch(c)]);
            if k > 0 {
                // The CPU read after the pop: one a migration just left
                // costs the batch its home shard, nothing more.
                let cpu = s.current_cpu();
                self.central(c).lock().flush(c, &buf[..k], &below, cpu);
                flow.flushed_from_slabs(k);
            }
            if s.push(c, p) {
                return;
            }
        }
        self.central(c)
            .lock()
            .flush(c, &[p], &below, s.current_cpu());
        flow.free_direct();
    }

    /// Frees `p`, whose layout sorts to class `c` with a size over 4 KiB: the
    /// page map says what it is — an object of its span's class (at least
    /// `c`, larger if `realloc` shrank it in place), or an object with a span
    /// of its own (promoted). A foreign pointer or a double free finds no
    /// class span and the large path reports it.
    #[inline(never)]
    pub(super) fn free_by_map(&self, p: *mut u8, c: SizeClass) {
        match self.class_of(p) {
            Some(slot) => {
                #[cfg(feature = "checks")]
                checks::on_layout(S::GEOMETRY, p, c, slot);
                #[cfg(not(feature = "checks"))]
                let _ = c;
                self.free_small(p, slot)
            }
            None => self.free_large(p),
        }
    }

    /// The class of the span holding `p`, if that is a span of small objects
    /// (else `p` has a span of its own, or is not an object of this heap).
    pub(super) fn class_of(&self, p: *mut u8) -> Option<SizeClass> {
        self.map.entry::<S>(Addr::of(p)).small_class()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LockedSlots, RegionSource};
    use core::alloc::Layout;
    use core::cell::Cell;
    use std::vec;
    use std::vec::Vec;

    std::thread_local! {
        static CPU: Cell<usize> = const { Cell::new(0) };
    }

    fn which_cpu() -> usize {
        CPU.with(|c| c.get())
    }

    /// `n` objects of `size` bytes, handed out and given up (alloc bits set,
    /// as the objects a flush takes from a stack have; under `checks`
    /// marked cached, as a free marks them), and their class.
    fn objects(
        h: &Heap<RegionSource, LockedSlots<2>>,
        size: usize,
        n: usize,
    ) -> (Vec<*mut u8>, SizeClass) {
        let l = Layout::from_size_align(size, 8).unwrap();
        let v: Vec<*mut u8> = (0..n).map(|_| h.allocate(l)).collect();
        assert!(v.iter().all(|p| !p.is_null()));
        let c = h.class_of(v[0]).unwrap();
        assert!(v.iter().all(|&p| h.class_of(p) == Some(c)));
        #[cfg(feature = "checks")]
        for &p in &v {
            checks::on_free::<RegionSource, _>(&h.map, p, c, || h.central(c).lock());
        }
        (v, c)
    }

    /// A refill takes its own CPU's transfer shard first, then, for a class
    /// whose objects have lines of their own, the other CPUs'; for a class
    /// under a line never another CPU's.
    #[test]
    fn transfer_shards_keep_each_cpu_s_objects() {
        let mut memory = vec![0u64; 2 << 20];
        // SAFETY: the region outlives the heap (declared after it, so
        // dropped first).
        let source = unsafe { RegionSource::new(memory.as_mut_ptr().cast(), memory.len() * 8) };
        let h = Heap::new(source, LockedSlots::<2>::new(which_cpu));
        let below = h.below();

        let (objs, c) = objects(&h, 64, 8);
        assert!(!RegionSource::GEOMETRY.shares_lines(c));
        let (a, b) = objs.split_at(4);
        {
            let mut central = h.central(c).lock();
            central.flush(c, a, &below, 0);
            central.flush(c, b, &below, 1);
            assert_eq!(central.transfer_len(), 8);
            let mut out = [null_mut(); 4];
            assert_eq!(central.refill(c, &mut out, &below, 1), 4);
            assert_eq!(&out[..], b, "CPU 1 gets back what it flushed");
            let mut out = [null_mut(); 2];
            assert_eq!(central.refill(c, &mut out, &below, 1), 2);
            assert_eq!(&out[..], &a[2..], "then CPU 0's, before any span");
            assert_eq!(central.transfer_len(), 2);
            central.check_invariants(c);
            central.flush(c, &out, &below, 0);
            central.flush(c, b, &below, 1);
        }

        let (objs, c) = objects(&h, 32, 4);
        assert!(RegionSource::GEOMETRY.shares_lines(c));
        let mut central = h.central(c).lock();
        central.flush(c, &objs, &below, 0);
        let mut out = [null_mut(); 4];
        assert_eq!(central.refill(c, &mut out, &below, 1), 4);
        assert!(
            out.iter().all(|p| !objs.contains(p)),
            "never CPU 0's objects"
        );
        assert_eq!(central.transfer_len(), 4);
        central.flush(c, &out, &below, 1);
        let mut out = [null_mut(); 4];
        assert_eq!(central.refill(c, &mut out, &below, 0), 4);
        assert_eq!(&out[..], &objs[..]);
        central.check_invariants(c);
        central.flush(c, &out, &below, 0);
        drop(central);
        h.scavenge();
        h.check_invariants();
    }
}
