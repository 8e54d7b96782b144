//! Release-mode double-free detection (feature `hardened`, which the C
//! library turns on). See `lib.rs` ("Hardening") and [`super`].
//!
//! glibc's tcache key, fitted to per-CPU arrays of object pointers. Every
//! free object of a size class carries a **key** in its second word (the
//! first is the remote list's link): `secret ^ address`, the secret chosen
//! per heap at set-up ([`FreeKey`]). The words say:
//!
//! * `key`: freed (by a free: [`Heap::mark_free`]);
//! * `key ^ 1`: carved from its span into a cache by a refill and never
//!   handed out ([`Heap::mark_carved`]), or, in a heap with the C fast
//!   paths, never handed out at all in a span of one page, every object of
//!   which is marked so at the span's birth
//!   ([`crate::span::Span::mark_slots`]);
//! * anything else: handed out — every small allocation clears the word
//!   (one store, [`clear_key`]) — or never carved.
//!
//! A free first reads the word (one load, one compare against the key and
//! its neighbour): a word that is neither goes ahead. One that is may be a
//! second free — of an object in a CPU's stack, the transfer cache, the
//! remote list or its span — or a live object whose data happens to equal
//! the key: the slow search ([`Heap::find_free`], under the class's central
//! lock) looks for the object in every one of those places, so a live
//! object is never reported, whatever it holds. A slot still in its span
//! that was never carved has no key to find: the unsized free tests its
//! alloc bit ([`super::Heap::try_deallocate_unsized`]), and the C free's
//! fast path, in a span of one page, the mark the slot got at the span's
//! birth (its test of the slot needs only the class:
//! [`crate::span::PageSlots`]), in a longer span the span's high-water mark
//! of carving, at or above which no slot was ever taken
//! ([`crate::span::Span::is_carved_unlocked`]): every slot below it holds
//! its key when it is not handed out.
//!
//! Invariants: an object of a size class that is free in a cache (CPU
//! stack, transfer cache, remote list) holds `key` or `key ^ 1` in its
//! second word; an object handed out holds there what its user wrote (0
//! until then); every small object is at least two words (the smallest
//! class a non-tiny request reaches is 16 bytes, and tiny blocks are 64).
//!
//! Not covered: tiny objects (they share blocks: a tiny free is checked by
//! its block's live count instead) and a double free racing with the
//! object's move between tiers on another CPU, which the search may miss
//! (it looks [`CONFIRM_TRIES`] times) and then treats as a live object.

use crate::percpu::Cpu;
use crate::sizeclass::SizeClass;
use crate::source::PageSource;
use crate::span::{carved_mark, SpanState, KEY_WORD};
use crate::sync::atomic::{AtomicUsize, Ordering};
use crate::units::Addr;

use super::{BadFree, FreeSite, Heap};

/// Times the slow search looks for a suspect object before treating it as
/// live (an object in flight between a CPU's stack and central is in no
/// place the search sees, for the moment it takes to move).
pub(crate) const CONFIRM_TRIES: usize = 3;

/// A heap's secret: free objects carry `secret ^ address`
/// ([`FreeKey::of`]). Chosen at set-up from addresses that ASLR places
/// (the heap's, its metadata's, the set-up's stack) and the source's
/// clock, mixed: unknown to the data a program stores, which is what keeps
/// a live object from looking free (the search would still clear it).
pub(crate) struct FreeKey(AtomicUsize);

impl FreeKey {
    pub(crate) const fn new() -> Self {
        FreeKey(AtomicUsize::new(0))
    }

    /// Sets the secret from `seed` (once, at set-up, before any object
    /// exists).
    pub(crate) fn set(&self, seed: u64) {
        self.0.store(mix(seed) as usize, Ordering::Relaxed);
    }

    /// The key of the object at `p`.
    #[inline(always)]
    pub(crate) fn of(&self, p: *mut u8) -> usize {
        self.secret() ^ p as usize
    }

    /// The secret itself.
    #[inline(always)]
    pub(crate) fn secret(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// splitmix64's finaliser: every bit of the seed moves about half the bits.
const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The key word of the object at `p`.
///
/// # Safety
/// `p` is an object of a size class (at least two words, word aligned).
#[inline(always)]
unsafe fn key_word(p: *mut u8) -> *mut usize {
    // SAFETY: the caller's object holds a second word.
    unsafe { p.cast::<usize>().add(KEY_WORD) }
}

/// Whether a key word that differs from the key by `d` (the word `^` the
/// key) says "free" (`key`, `d == 0`) or "carved" (`key ^ 1`, `d == 1`): the
/// one test of the fast path.
#[inline(always)]
const fn suspect(d: usize) -> bool {
    d < 2
}

/// An object is handed out: its word no longer says free (one store).
///
/// # Safety
/// `p` is an object of a size class, the caller's.
#[inline(always)]
pub(super) unsafe fn clear_key(p: *mut u8) {
    // SAFETY: as the caller promises.
    unsafe { key_word(p).write(0) }
}

/// The Rust path's report: panics with the address and what was found,
/// and aborts, since an allocator must not unwind: the panic's message is
/// printed first, then the unwinding drops a guard that aborts (on Linux,
/// `std::process::abort`; elsewhere a second panic, which a panic while
/// unwinding turns into an abort). No lock is held.
#[cold]
#[inline(never)]
pub(super) fn bad_free(p: *mut u8, e: BadFree) -> ! {
    struct Abort;
    impl Drop for Abort {
        fn drop(&mut self) {
            #[cfg(feature = "linux")]
            std::process::abort();
            #[cfg(not(feature = "linux"))]
            panic!("tieralloc: aborting after a bad free");
        }
    }
    let _abort = Abort;
    match e {
        BadFree::DoubleFree(_) => panic!("tieralloc: double free of {p:p}: {e}"),
        _ => panic!("tieralloc: free of {p:p}: {e}"),
    }
}

impl<S: PageSource, C: Cpu> Heap<S, C> {
    /// A free of `p`, an object of class `c`: checks its key word, then
    /// writes the key. `Err` if the slow search found the object free.
    ///
    /// # Safety
    /// `p` is an object of class `c` of this heap, the caller's (or free:
    /// what this detects).
    #[inline(always)]
    pub(super) unsafe fn mark_free(&self, p: *mut u8, c: SizeClass) -> Result<(), BadFree> {
        let k = self.key.of(p);
        // SAFETY: as the caller promises.
        let d = unsafe { key_word(p).read() } ^ k;
        if suspect(d) {
            self.confirm(p, c, d == 0)?;
        }
        // SAFETY: as above.
        unsafe { key_word(p).write(k) };
        Ok(())
    }

    /// [`Heap::mark_free`] for a fast path: writes the key and returns true
    /// unless the word is suspect, when it changes nothing and returns false
    /// (the caller then frees `p` through the checking path).
    ///
    /// # Safety
    /// As [`Heap::mark_free`].
    #[inline(always)]
    pub(super) unsafe fn mark_free_unless_suspect(&self, p: *mut u8) -> bool {
        let k = self.key.of(p);
        // SAFETY: as the caller promises.
        let w = unsafe { key_word(p) };
        // SAFETY: as above.
        if suspect(unsafe { w.read() } ^ k) {
            return false;
        }
        // SAFETY: as above.
        unsafe { w.write(k) };
        true
    }

    /// `realloc`'s check of `p`, an object of class `c`: as
    /// [`Heap::mark_free`], without writing.
    ///
    /// # Safety
    /// As [`Heap::mark_free`].
    #[inline]
    pub(super) unsafe fn check_key(&self, p: *mut u8, c: SizeClass) -> Result<(), BadFree> {
        // SAFETY: as the caller promises.
        let d = unsafe { key_word(p).read() } ^ self.key.of(p);
        if suspect(d) {
            self.confirm(p, c, d == 0)?;
        }
        Ok(())
    }

    /// Whether `p`, a slot free in its span, was freed (holds its key)
    /// rather than never handed out.
    ///
    /// # Safety
    /// `p` is an object of a size class in a live span.
    pub(super) unsafe fn key_says_freed(&self, p: *mut u8) -> bool {
        // SAFETY: as the caller promises.
        unsafe { key_word(p).read() == self.key.of(p) }
    }

    /// A refill carved `objs` into a cache: those not freed before (whose
    /// word is not their key) are marked as carved, so that a free of one
    /// before it is handed out is caught.
    pub(super) fn mark_carved(&self, objs: &[*mut u8]) {
        let secret = self.key.secret();
        for &p in objs {
            // SAFETY: objects of a size class, free, ours (the refill's).
            unsafe {
                let w = key_word(p);
                if w.read() != secret ^ p as usize {
                    w.write(carved_mark(secret, p as usize));
                }
            }
        }
    }

    /// The slow path of a suspect free: looks for `p` wherever a free
    /// object of class `c` may be, [`CONFIRM_TRIES`] times; `Err` naming
    /// the place if found (a double free if the word said `freed`, a slot
    /// never handed out if it said carved), `Ok` if not: a live object.
    #[cold]
    #[inline(never)]
    fn confirm(&self, p: *mut u8, c: SizeClass, freed: bool) -> Result<(), BadFree> {
        for _ in 0..CONFIRM_TRIES {
            if let Some(site) = self.find_free(p, c) {
                return Err(if freed {
                    BadFree::DoubleFree(site)
                } else {
                    BadFree::NeverHandedOut(site)
                });
            }
            // Let a batch in flight between a stack and central land.
            for _ in 0..1024 {
                core::hint::spin_loop();
            }
        }
        Ok(())
    }

    /// Where `p`, of class `c`, sits free, if it does: a CPU's stack, the
    /// transfer cache, the remote list, or its span (alloc bit clear).
    /// Under `central[c]`, so nothing moves between the stacks and central
    /// meanwhile; the stacks are read racily (a pop or push may run).
    pub(super) fn find_free(&self, p: *mut u8, c: SizeClass) -> Option<FreeSite> {
        let s = self.slabs.get::<S>()?;
        let mut central = self.central(c).lock();
        if s.holder(c, p).is_some() {
            return Some(FreeSite::CpuCache);
        }
        if central.transfer_holds(p) {
            return Some(FreeSite::TransferCache);
        }
        if S::GEOMETRY.shares_lines(c) && central.remote_holds(self.remote(c), p) {
            return Some(FreeSite::RemoteList);
        }
        // SAFETY: non-null page-map entries are live spans; a small span's
        // bits are guarded by its class's central lock, which we hold.
        let span = unsafe { self.map.lookup::<S>(Addr::of(p)).as_ref() }?;
        let (idx, exact) = span.index_of(Addr::of(p));
        (span.state == SpanState::Small
            && span.class == c
            && exact
            && idx < span.nelems as usize
            && !span.is_allocated(idx))
        .then_some(FreeSite::Span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RegionSource, SingleCpu};
    use core::alloc::Layout;
    use std::vec;
    use std::vec::Vec;

    /// A heap over a fresh 16 MiB region (kept alive by the returned buffer).
    fn heap() -> (Heap<RegionSource, SingleCpu>, Vec<u64>) {
        let mut memory = vec![0u64; 2 << 20];
        // SAFETY: the region is ours for as long as the heap is used (the
        // caller keeps both and drops the heap first).
        let source = unsafe { RegionSource::new(memory.as_mut_ptr().cast(), memory.len() * 8) };
        (Heap::new(source, SingleCpu::new()), memory)
    }

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).unwrap()
    }

    /// The class `heap` serves `size` from, and its slot size.
    fn class_of(heap: &Heap<RegionSource, SingleCpu>, p: *mut u8) -> (SizeClass, usize) {
        let c = heap.class_of(p).expect("a small object");
        (c, RegionSource::GEOMETRY.size(c))
    }

    #[test]
    fn a_second_free_is_found_in_the_cpu_cache_and_changes_nothing() {
        let (heap, _m) = heap();
        let p = heap.allocate(layout(64));
        // SAFETY: `p` is ours; the second free is the bug under test.
        unsafe {
            assert_eq!(heap.try_deallocate_unsized(p), Ok(()));
            assert_eq!(
                heap.try_deallocate_unsized(p),
                Err(BadFree::DoubleFree(FreeSite::CpuCache))
            );
            assert_eq!(
                heap.try_live_size(p),
                Err(BadFree::DoubleFree(FreeSite::CpuCache))
            );
        }
        // The report changed nothing: `p` comes back once.
        let a = heap.allocate(layout(64));
        let b = heap.allocate(layout(64));
        assert_eq!(a, p);
        assert_ne!(a, b);
        heap.check_invariants();
    }

    #[test]
    fn a_second_free_is_found_where_the_object_went() {
        let (heap, _m) = heap();
        // Every other object stays live, so every span stays one of the class.
        let objs: Vec<_> = (0..8000).map(|_| heap.allocate(layout(64))).collect();
        let p = objs[4000];
        // SAFETY: each object is freed once, `p` twice (the bug under test).
        unsafe {
            for &q in objs[..4000].iter().step_by(2) {
                heap.try_deallocate_unsized(q).unwrap();
            }
            heap.try_deallocate_unsized(p).unwrap();
            for &q in objs[4002..].iter().step_by(2) {
                heap.try_deallocate_unsized(q).unwrap();
            }
            let site = heap.find_free(p, class_of(&heap, p).0);
            assert!(
                matches!(site, Some(FreeSite::TransferCache | FreeSite::Span)),
                "{site:?}"
            );
            assert_eq!(
                heap.try_deallocate_unsized(p),
                Err(BadFree::DoubleFree(site.unwrap()))
            );
        }
        heap.check_invariants();
    }

    /// Go's geometry (a region heap's spans may be a single batch, with no
    /// slot left above the one handed out).
    #[cfg(feature = "linux")]
    #[test]
    fn a_second_free_is_found_in_the_transfer_cache() {
        let (heap, _m) = heap();
        let objs: Vec<_> = (0..4000).map(|_| heap.allocate(layout(64))).collect();
        let (p, rest) = (objs[0], &objs[1..]);
        let c = class_of(&heap, p).0;
        // SAFETY: each object is freed once, `p` twice (the bug under test).
        unsafe {
            // Fill the CPU's stack, then free `p` near its top: the next
            // flush takes it to the transfer cache, which has room.
            let mut others = rest.iter().step_by(2);
            for &q in others.by_ref().take(256) {
                heap.try_deallocate_unsized(q).unwrap();
            }
            heap.try_deallocate_unsized(p).unwrap();
            for &q in others {
                if heap.find_free(p, c) != Some(FreeSite::CpuCache) {
                    break;
                }
                heap.try_deallocate_unsized(q).unwrap();
            }
            assert_eq!(heap.find_free(p, c), Some(FreeSite::TransferCache));
            assert_eq!(
                heap.try_deallocate_unsized(p),
                Err(BadFree::DoubleFree(FreeSite::TransferCache))
            );
        }
        heap.check_invariants();
    }

    #[test]
    fn slots_never_handed_out_are_told_from_double_frees() {
        let heap = crate::LinuxHeap::new();
        let p = heap.allocate(layout(64));
        let c = heap.class_of(p).expect("a small object");
        let size = crate::Geometry::GO.size(c);
        // The refill handed out the highest object of its batch and cached
        // the ones below; the one above is still in the span.
        let below = p.wrapping_sub(size);
        let above = p.wrapping_add(size);
        assert_eq!(heap.find_free(below, c), Some(FreeSite::CpuCache));
        assert_eq!(heap.find_free(above, c), Some(FreeSite::Span));
        // SAFETY: frees of slots never handed out: the bug under test.
        unsafe {
            assert_eq!(
                heap.try_deallocate_unsized(below),
                Err(BadFree::NeverHandedOut(FreeSite::CpuCache))
            );
            assert_eq!(
                heap.try_deallocate_unsized(above),
                Err(BadFree::NeverHandedOut(FreeSite::Span))
            );
            assert_eq!(
                heap.try_deallocate_unsized(p.wrapping_add(8)),
                Err(BadFree::NotAnObject)
            );
            heap.try_deallocate_unsized(p).unwrap();
        }
        heap.check_invariants();
    }

    #[test]
    fn live_objects_holding_a_key_are_freed() {
        let (heap, _m) = heap();
        for round in 0..100 {
            let p = heap.allocate(layout(64));
            let q = heap.allocate(layout(64));
            // SAFETY: live objects of 64 bytes, ours; each freed once.
            unsafe {
                *p.cast::<usize>().add(1) = heap.key.of(p);
                *q.cast::<usize>().add(1) = heap.key.of(q) ^ 1;
                if round % 2 == 0 {
                    heap.try_deallocate_unsized(p).unwrap();
                    heap.try_deallocate_unsized(q).unwrap();
                } else {
                    // The sized (Rust) path confirms the same way.
                    heap.deallocate(p, layout(64));
                    heap.deallocate(q, layout(64));
                }
            }
        }
        let a = heap.allocate(layout(64));
        let b = heap.allocate(layout(64));
        assert_ne!(a, b);
        heap.check_invariants();
    }

    /// CPU of the remote-list test's heap (a thread-local, so tests on
    /// other threads keep their own).
    fn which_cpu() -> usize {
        CPU.with(|c| c.get())
    }

    std::thread_local! {
        static CPU: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
    }

    #[test]
    fn a_second_free_is_found_on_the_remote_list() {
        let mut memory = vec![0u64; 2 << 20];
        // SAFETY: the region outlives the heap (declared after it, so
        // dropped first).
        let source = unsafe { RegionSource::new(memory.as_mut_ptr().cast(), memory.len() * 8) };
        let heap = Heap::new(source, crate::LockedSlots::<2>::new(which_cpu));
        let p = heap.allocate(layout(32));
        let c = heap.class_of(p).unwrap();
        assert!(RegionSource::GEOMETRY.shares_lines(c));
        // Freed on the CPU that does not own its span: onto the remote list.
        CPU.with(|cpu| cpu.set(1));
        // SAFETY: `p` is ours; the second free is the bug under test.
        unsafe {
            heap.try_deallocate_unsized(p).unwrap();
            assert_eq!(heap.find_free(p, c), Some(FreeSite::RemoteList));
            assert_eq!(
                heap.try_deallocate_unsized(p),
                Err(BadFree::DoubleFree(FreeSite::RemoteList))
            );
        }
        CPU.with(|cpu| cpu.set(0));
        heap.check_invariants();
    }

    #[test]
    fn allocation_clears_the_key() {
        let (heap, _m) = heap();
        let p = heap.allocate(layout(64));
        // SAFETY: `p` is ours, freed once; then allocated again.
        unsafe {
            heap.deallocate(p, layout(64));
            assert_eq!(*p.cast::<usize>().add(1), heap.key.of(p));
            assert_eq!(heap.allocate(layout(64)), p);
            assert_eq!(*p.cast::<usize>().add(1), 0);
            heap.deallocate(p, layout(64));
        }
    }

    /// A heap on `mmap` (a region heap's large-span cache may be off).
    #[cfg(feature = "linux")]
    #[test]
    fn a_freed_large_object_is_found_in_the_large_span_cache() {
        let heap = crate::LinuxHeap::new();
        let p = heap.allocate(layout(100_000));
        // SAFETY: `p` is ours; the second free is the bug under test.
        unsafe {
            assert_eq!(heap.try_live_size(p), Ok(heap.usable_size(p)));
            heap.try_deallocate_unsized(p).unwrap();
            assert_eq!(
                heap.try_deallocate_unsized(p),
                Err(BadFree::DoubleFree(FreeSite::LargeCache))
            );
        }
        heap.check_invariants();
    }

    #[test]
    fn suspect_words_are_the_key_and_its_neighbour() {
        let k = 0x5a5a_1234_0000_00f0_u64 as usize;
        // `suspect` takes the word `^` the key.
        let d = |w: usize| w ^ k;
        assert!(suspect(d(k)));
        assert!(suspect(d(k ^ 1)));
        assert!(!suspect(d(k ^ 2)));
        assert!(!suspect(d(0)));
        assert!(!suspect(d(!k)));
    }

    #[test]
    fn keys_differ_by_address_and_by_secret() {
        let a = FreeKey::new();
        let b = FreeKey::new();
        a.set(1);
        b.set(2);
        let p = 0x1000 as *mut u8;
        let q = 0x1010 as *mut u8;
        assert_ne!(a.of(p), a.of(q));
        assert_ne!(a.of(p), b.of(p));
        assert_eq!(a.of(p) ^ a.of(q), 0x1000 ^ 0x1010);
        // Neither key nor its carved neighbour is a small address or zero.
        assert!(a.of(p) > 1 << 20 && b.of(p) > 1 << 20);
    }
}
