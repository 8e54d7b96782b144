//! [`FrameSource`]: arenas for an x86-64 kernel, made of physical frames mapped
//! into a window of kernel virtual addresses with the `x86_64` crate (feature
//! `x86_64`). See the [module docs](super) for the state machine.
//!
//! The kernel sets a window `[start, start + len)` of its address space aside for
//! the heap (for example 64 GiB at `0xffff_9000_0000_0000`) and hands the source
//! its [`Mapper`] and its frame allocator at boot ([`FrameSource::init`]).
//! Address space is bookkeeping; frames are taken only when a range becomes Ready.
//!
//! | Method     | Transition          | How                                                                   |
//! |------------|---------------------|-----------------------------------------------------------------------|
//! | `reserve`  | None → Reserved     | first fit in a fixed list of free holes, else a bump pointer, with alignment |
//! | `commit`   | Reserved → Prepared | bookkeeping only: no frame yet (forgets guards in the range)          |
//! | `ready`    | Prepared → Ready    | per 4 KiB page: take a frame, zero it, `map_to`, `invlpg`; out of frames midway: undo this call's pages, `Err(Exhausted)` |
//! | `release`  | Ready → Prepared    | per page: `unmap`, `invlpg`, [shoot down](#tlb-shootdown-on-several-cpus), `deallocate_frame`; unmapped pages are skipped |
//! | `hugepage` | (hint)              | nothing                                                               |
//! | `fault`    | → Reserved          | as `release`, and the range is recorded as a guard ([`FrameSource::is_guard`]) |
//! | `free`     | any → None          | as `release`, then the range goes back to the hole list               |
//! | `alloc`    | None → Ready        | the trait's default: `reserve` + `commit` + `ready`                   |
//!
//! `ZEROED` is true: every frame is zeroed when it is mapped, either through the
//! new mapping or through the kernel's direct map of physical memory
//! ([`Zero`]). `CAN_RELEASE` is true: released frames go back to the kernel's
//! frame allocator at once.
//!
//! # Guards
//!
//! `fault` leaves the range unmapped, so any access page-faults. The kernel's
//! page-fault handler can tell a guard hit (a stack overflow, see
//! [`Heap::alloc_stack`](crate::Heap::alloc_stack)) from other faults with [`FrameSource::is_guard`]`(cr2)`:
//! it reads a fixed table of [`MAX_GUARDS`] ranges with plain atomic loads, takes
//! no lock and is safe in an exception handler. A guard is forgotten when its
//! range is committed, made Ready or freed. When the table is full a new guard
//! is still enforced by the MMU but `is_guard` does not know it (counted in
//! [`FrameSource::untracked_guards`]).
//!
//! # TLB shootdown on several CPUs
//!
//! Unmapping a page invalidates it on the calling CPU only (`invlpg`, or
//! [`Config::flush_local`]). Other CPUs may still hold a translation of the page
//! to its old frame — loaded by an access before the release or by a
//! speculative page walk. The heap never touches a released page, so the stale
//! entry is harmless **until the page is made Ready again with another frame**:
//! a CPU with the old entry would then read and write the old frame, which by
//! now belongs to someone else. On a multi-CPU kernel, [`Config::shootdown`] must
//! therefore invalidate `[addr, addr + bytes)` on every other CPU and return only
//! when they have done it; the source calls it after unmapping a batch of pages
//! and before giving their frames back. Two cautions:
//!
//! * It runs with the heap lock and this source's lock held, while other CPUs
//!   may be spinning for the heap lock with interrupts off (the per-CPU caches
//!   are used with interrupts off). An IPI-and-wait shootdown must therefore let
//!   those CPUs answer: make the heap's `Cpu::Relax` strategy (and any other
//!   interrupts-off spin loop) poll for pending shootdown requests and serve them,
//!   or send the shootdown as an NMI.
//! * The default flags include `GLOBAL`, and a CR3 reload (`tlb::flush_all`)
//!   does not drop global entries: remote CPUs must use `invlpg` per page (or
//!   `invpcid` all-contexts-including-globals, or toggle `CR4.PGE`).
//!
//! A stale entry for a page turned into a guard is as bad: an overflow on that
//! CPU would write through it into a frame now used elsewhere instead of
//! faulting. The page heap releases pages on its own (beyond its retained
//! budget, and in `Heap::scavenge`), stacks fault guards, and a failed `ready`
//! unmaps what it mapped, so every multi-CPU kernel needs the hook. Mapping a
//! page needs no remote flush: x86 does not cache not-present translations.
//!
//! Nothing here allocates: the hole list and the guard table are fixed arrays,
//! page tables come from the kernel's frame allocator.

use crate::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use core::ptr::{self, NonNull};

use spin::Mutex;
use x86_64::structures::paging::{
    FrameAllocator, FrameDeallocator, Mapper, Page, PageTableFlags, PhysFrame, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

use super::extents::Extents;
use super::{Exhausted, PageSource};

/// The MMU page: every transition works on whole 4 KiB pages.
const PAGE: u64 = 4096;

/// Capacity of the free-hole list (holes below the bump pointer).
pub const MAX_EXTENTS: usize = 64;

/// Capacity of the guard table read by [`FrameSource::is_guard`].
pub const MAX_GUARDS: usize = 256;

/// Pages unmapped before one shootdown and the return of their frames (the
/// frames wait on the stack meanwhile: 8 bytes each, 1 KiB in all).
const UNMAP_BATCH: usize = 128;

/// Bits of a guard entry holding the length in pages; the first page's index in
/// the window sits above them.
const GUARD_LEN_BITS: u32 = 28;
const GUARD_LEN_MAX: u64 = (1 << GUARD_LEN_BITS) - 1;

/// Flags of every heap page unless [`Config::flags`] says otherwise:
/// `PRESENT | WRITABLE | GLOBAL` (the heap is the same in every address space).
pub const DEFAULT_FLAGS: PageTableFlags = PageTableFlags::PRESENT
    .union(PageTableFlags::WRITABLE)
    .union(PageTableFlags::GLOBAL);

/// How a frame is zeroed before the heap sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zero {
    /// Write zeros through the new mapping, right after `map_to` and `invlpg`.
    ThroughMapping,
    /// Write zeros at `offset + physical address` before mapping: the kernel maps
    /// all physical memory at `offset` (as `OffsetPageTable` requires).
    PhysOffset(u64),
}

/// The kernel's choices for a [`FrameSource`].
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Page table flags of heap pages; must contain `PRESENT | WRITABLE`. Add
    /// `NO_EXECUTE` only once `EFER.NXE` is set (else the bit is reserved and
    /// every access faults).
    pub flags: PageTableFlags,
    /// How frames are zeroed.
    pub zero: Zero,
    /// Invalidates one page on the calling CPU ([`flush_local`]: `invlpg`).
    pub flush_local: fn(VirtAddr),
    /// Invalidates `[addr, addr + bytes)` on every other CPU and waits for it
    /// (see [the module docs](self#tlb-shootdown-on-several-cpus)). Default:
    /// [`no_shootdown`], right for one CPU only.
    pub shootdown: fn(VirtAddr, u64),
}

impl Config {
    /// [`DEFAULT_FLAGS`], zeroing through the mapping, `invlpg`, no shootdown.
    pub const DEFAULT: Config = Config {
        flags: DEFAULT_FLAGS,
        zero: Zero::ThroughMapping,
        flush_local,
        shootdown: no_shootdown,
    };
}

impl Default for Config {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// `invlpg addr` on the calling CPU (nothing on other architectures, where the
/// source only runs in tests).
pub fn flush_local(addr: VirtAddr) {
    #[cfg(target_arch = "x86_64")]
    x86_64::instructions::tlb::flush(addr);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

/// No cross-CPU invalidation: for a kernel on one CPU.
pub fn no_shootdown(_addr: VirtAddr, _bytes: u64) {}

/// No invalidation at all: for page tables that no CPU walks (host tests).
pub fn no_flush(_addr: VirtAddr) {}

// The window is in `u64` and the hole list in `usize` addresses: the source is
// only built for 64-bit x86, where the two are the same width, so `as` converts
// between them losslessly.
const _: () = assert!(size_of::<usize>() == size_of::<u64>());

/// Everything behind the lock: the kernel's paging parts and the window's
/// address space.
struct Inner<M, F> {
    mapper: M,
    frames: F,
    /// Offset of the first byte never handed out (or given back at the top):
    /// `[bump, len)` is free.
    bump: u64,
    /// Free runs below `bump`, as addresses (window start + offset); none ends
    /// at `bump` (it would have lowered `bump`).
    holes: Extents<MAX_EXTENTS>,
}

impl<M, F> Inner<M, F> {
    /// First fit of `bytes` at absolute alignment `align` (`base` is the window
    /// start): holes first, then the bump pointer. Returns the offset.
    fn carve(&mut self, base: u64, len: u64, bytes: u64, align: u64) -> Option<u64> {
        if let Some(a) = self.holes.take(bytes as usize, align as usize) {
            return Some(a as u64 - base);
        }
        let start = (base + self.bump).checked_next_multiple_of(align)? - base;
        let end = start.checked_add(bytes)?;
        if end > len {
            return None;
        }
        if start > self.bump {
            // The alignment gap becomes a hole (with a full list it is lost).
            // No hole ends at `bump`, so it goes last and merges with none.
            self.holes
                .give_back((base + self.bump) as usize, (base + start) as usize);
        }
        self.bump = end;
        Some(start)
    }

    /// Gives `[start, end)` back (offsets from the window start `base`): to the
    /// bump pointer if it is the top, else to the hole list, merged with its
    /// neighbours (with a full list a range touching no hole is forgotten:
    /// address space leaks, it is never handed out twice).
    fn give_back(&mut self, base: u64, start: u64, end: u64) {
        debug_assert!(end <= self.bump, "free of a range never reserved");
        if end == self.bump {
            self.bump = start;
            if let Some(s) = self.holes.take_last_ending_at((base + start) as usize) {
                self.bump = s as u64 - base;
            }
            return;
        }
        self.holes
            .give_back((base + start) as usize, (base + end) as usize);
    }
}

/// A [`PageSource`] over a window of kernel virtual addresses, backed by frames
/// mapped on demand. See the module documentation.
///
/// `M` is the kernel's page table (`OffsetPageTable`, `RecursivePageTable`, ...)
/// and `F` its frame allocator; both move into the source at [`init`](Self::init)
/// and stay behind its lock (reach them with [`with_parts`](Self::with_parts)).
///
/// `FrameSource<M, F>` is `Send + Sync` when `M` and `F` are `Send`: all mutable
/// state is behind a spin mutex or atomic, so no `unsafe impl` is needed.
pub struct FrameSource<M, F> {
    /// `None` until `init`.
    state: Mutex<Option<Inner<M, F>>>,
    /// First byte of the window (canonical, 4 KiB aligned).
    start: u64,
    /// Bytes in the window (a multiple of 4 KiB).
    len: u64,
    config: Config,
    /// Frames mapped by this source right now (page-table frames excluded).
    mapped: AtomicUsize,
    /// Guard ranges, each `first_page << GUARD_LEN_BITS | npages` with the page
    /// index counted from `start`; 0 is an empty slot. Written under `state`,
    /// read without a lock.
    guards: [AtomicU64; MAX_GUARDS],
    /// Guards that did not fit in `guards`.
    untracked: AtomicUsize,
}

/// Is `a` a canonical x86-64 address (bits 63..47 all equal)?
const fn canonical(a: u64) -> bool {
    let top = a >> 47;
    top == 0 || top == 0x1_ffff
}

impl<M, F> FrameSource<M, F> {
    /// A source over `[window_start, window_start + window_len)` with
    /// [`Config::DEFAULT`]. Usable in a `static`; hands out nothing until
    /// [`init`](Self::init).
    ///
    /// # Panics
    /// (At compile time in a `static`.) If the window is empty, not 4 KiB
    /// aligned, not canonical, or crosses the canonical hole.
    pub const fn new(window_start: u64, window_len: u64) -> Self {
        Self::with_config(window_start, window_len, Config::DEFAULT)
    }

    /// As [`new`](Self::new), with the kernel's [`Config`].
    ///
    /// # Panics
    /// As [`new`](Self::new); and if `config.flags` lacks `PRESENT | WRITABLE`.
    pub const fn with_config(window_start: u64, window_len: u64, config: Config) -> Self {
        assert!(
            window_len > 0 && window_start.is_multiple_of(PAGE) && window_len.is_multiple_of(PAGE),
            "FrameSource: window must be non-empty and 4 KiB aligned"
        );
        let last = match window_start.checked_add(window_len - 1) {
            Some(l) => l,
            None => panic!("FrameSource: window overflows"),
        };
        assert!(
            canonical(window_start) && canonical(last) && window_start >> 47 == last >> 47,
            "FrameSource: window must be canonical and in one half"
        );
        assert!(
            config
                .flags
                .contains(PageTableFlags::PRESENT.union(PageTableFlags::WRITABLE)),
            "FrameSource: flags must contain PRESENT | WRITABLE"
        );
        FrameSource {
            state: Mutex::new(None),
            start: window_start,
            len: window_len,
            config,
            mapped: AtomicUsize::new(0),
            guards: [const { AtomicU64::new(0) }; MAX_GUARDS],
            untracked: AtomicUsize::new(0),
        }
    }

    /// Hands the source the kernel's page table and frame allocator (once, at
    /// boot, when both exist). Until then `reserve` returns `None`.
    ///
    /// # Panics
    /// If called twice.
    pub fn init(&self, mapper: M, frames: F) {
        let mut s = self.state.lock();
        assert!(s.is_none(), "FrameSource::init called twice");
        *s = Some(Inner {
            mapper,
            frames,
            bump: 0,
            holes: Extents::new(),
        });
    }

    /// Runs `f` on the page table and the frame allocator (for example to read
    /// the free-frame count, or to map something else with the same parts);
    /// `None` before [`init`](Self::init). `f` runs under the source's lock:
    /// it must not allocate from the heap built on this source, nor unmap or
    /// remap the window.
    pub fn with_parts<R>(&self, f: impl FnOnce(&mut M, &mut F) -> R) -> Option<R> {
        let mut s = self.state.lock();
        let inner = s.as_mut()?;
        Some(f(&mut inner.mapper, &mut inner.frames))
    }

    /// The window: `(start, bytes)`.
    pub fn window(&self) -> (VirtAddr, u64) {
        (VirtAddr::new(self.start), self.len)
    }

    /// Frames currently mapped into the window by this source (page-table frames
    /// not included).
    pub fn frames_mapped(&self) -> usize {
        self.mapped.load(Ordering::Relaxed)
    }

    /// Bytes of the window currently reserved (handed out and not freed).
    pub fn reserved_bytes(&self) -> u64 {
        let s = self.state.lock();
        s.as_ref().map_or(0, |i| i.bump - i.holes.bytes() as u64)
    }

    /// Whether `addr` lies in a range made a guard by `fault` and not since
    /// committed, made Ready or freed. Lock-free: safe to call from the
    /// page-fault handler, even when the faulting code holds the heap's locks.
    pub fn is_guard(&self, addr: VirtAddr) -> bool {
        let a = addr.as_u64();
        if a < self.start || a - self.start >= self.len {
            return false;
        }
        let page = (a - self.start) / PAGE;
        self.guards.iter().any(|g| {
            let v = g.load(Ordering::Acquire);
            let (first, n) = (v >> GUARD_LEN_BITS, v & GUARD_LEN_MAX);
            n != 0 && page >= first && page < first + n
        })
    }

    /// Guards made while the guard table was full (enforced, but unknown to
    /// [`is_guard`](Self::is_guard)).
    pub fn untracked_guards(&self) -> usize {
        self.untracked.load(Ordering::Relaxed)
    }

    /// Window page index of `addr`.
    fn page_index(&self, addr: u64) -> u64 {
        (addr - self.start) / PAGE
    }

    /// Records pages `[first, first + n)` as a guard. Caller holds `state`.
    fn add_guard(&self, mut first: u64, mut n: u64) {
        while n > 0 {
            let k = n.min(GUARD_LEN_MAX);
            let v = first << GUARD_LEN_BITS | k;
            match self.guards.iter().find(|g| g.load(Ordering::Relaxed) == 0) {
                Some(g) => g.store(v, Ordering::Release),
                None => {
                    self.untracked.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            first += k;
            n -= k;
        }
    }

    /// Forgets the guard pages within `[first, first + n)`, splitting entries that
    /// stick out. Caller holds `state`.
    fn clear_guards(&self, first: u64, n: u64) {
        let end = first + n;
        for i in 0..MAX_GUARDS {
            let v = self.guards[i].load(Ordering::Relaxed);
            let (gs, gn) = (v >> GUARD_LEN_BITS, v & GUARD_LEN_MAX);
            let ge = gs + gn;
            if gn == 0 || ge <= first || gs >= end {
                continue;
            }
            // Keep what lies outside the range: a head in place, a tail in a new slot.
            let head = first.saturating_sub(gs);
            let tail = ge.saturating_sub(end);
            let keep = if head > 0 {
                gs << GUARD_LEN_BITS | head
            } else {
                0
            };
            self.guards[i].store(keep, Ordering::Release);
            if tail > 0 {
                // The tail is still a guard; if no slot is free it is forgotten.
                if head == 0 {
                    self.guards[i].store(end << GUARD_LEN_BITS | tail, Ordering::Release);
                } else {
                    self.add_guard(end, tail);
                }
            }
        }
    }
}

impl<M, F> FrameSource<M, F>
where
    M: Mapper<Size4KiB>,
    F: FrameAllocator<Size4KiB> + FrameDeallocator<Size4KiB>,
{
    /// Maps one page to a fresh, zeroed frame. `Err` when no frame is left (for
    /// the page or its page tables) or the page cannot be mapped.
    fn map_one(&self, inner: &mut Inner<M, F>, page: Page<Size4KiB>) -> Result<(), Exhausted> {
        let frame: PhysFrame<Size4KiB> = inner.frames.allocate_frame().ok_or(Exhausted)?;
        if let Zero::PhysOffset(off) = self.config.zero {
            let p = ptr::with_exposed_provenance_mut::<u8>(
                (off + frame.start_address().as_u64()) as usize,
            );
            // SAFETY: the kernel maps all physical memory at `off` (the contract of
            // `Zero::PhysOffset`), and the frame allocator just gave us this frame
            // exclusively (the contract of `FrameAllocator`).
            unsafe { p.write_bytes(0, PAGE as usize) };
        }
        // SAFETY: `page` lies in the window, which the kernel gave to this source
        // alone, and is Prepared, hence unmapped; `frame` is fresh and mapped
        // nowhere else, so the new mapping aliases nothing.
        match unsafe {
            inner
                .mapper
                .map_to(page, frame, self.config.flags, &mut inner.frames)
        } {
            Ok(flush) => {
                flush.ignore();
                (self.config.flush_local)(page.start_address());
            }
            Err(e) => {
                // SAFETY: the frame was never mapped; it is unused.
                unsafe { inner.frames.deallocate_frame(frame) };
                debug_assert!(
                    matches!(
                        e,
                        x86_64::structures::paging::mapper::MapToError::FrameAllocationFailed
                    ),
                    "FrameSource: cannot map {:#x}: {e:?}",
                    page.start_address().as_u64()
                );
                return Err(Exhausted);
            }
        }
        if self.config.zero == Zero::ThroughMapping {
            let p = ptr::with_exposed_provenance_mut::<u8>(page.start_address().as_u64() as usize);
            // SAFETY: the page was just mapped writable to a frame of ours and
            // invalidated on this CPU; no other CPU has a translation of it (not
            // present translations are not cached, and the last unmap was shot down).
            unsafe { p.write_bytes(0, PAGE as usize) };
        }
        Ok(())
    }

    /// Unmaps the mapped pages of `[addr, addr + bytes)` (skipping unmapped ones)
    /// and returns their frames, in batches: unmap and `invlpg`, shoot down,
    /// then deallocate. Returns the frames returned.
    fn unmap_range(&self, inner: &mut Inner<M, F>, addr: u64, bytes: u64) -> usize {
        let mut total = 0;
        let mut at = addr;
        let end = addr + bytes;
        while at < end {
            let batch_start = at;
            let mut frames =
                [PhysFrame::<Size4KiB>::containing_address(PhysAddr::zero()); UNMAP_BATCH];
            let mut k = 0;
            while at < end && k < UNMAP_BATCH {
                // Inside the window, so canonical; 4 KiB aligned.
                let page = Page::<Size4KiB>::containing_address(VirtAddr::new(at));
                if let Ok((frame, flush)) = inner.mapper.unmap(page) {
                    flush.ignore();
                    (self.config.flush_local)(page.start_address());
                    frames[k] = frame;
                    k += 1;
                }
                at += PAGE;
            }
            if k > 0 {
                (self.config.shootdown)(VirtAddr::new(batch_start), at - batch_start);
                for &f in &frames[..k] {
                    // SAFETY: the frame was mapped only at the page just unmapped
                    // and invalidated everywhere; nothing uses it any more.
                    unsafe { inner.frames.deallocate_frame(f) };
                }
                total += k;
            }
        }
        self.mapped.fetch_sub(total, Ordering::Relaxed);
        total
    }
}

// SAFETY: `reserve` hands out disjoint ranges of the window (holes and the space
// above the bump pointer are disjoint from every live reservation; the list is
// only changed under the lock), and the kernel gave the window to this source
// alone; after `ready` every page of the range is mapped PRESENT | WRITABLE
// (checked in the constructor) to a frame of its own, zeroed first (ZEROED);
// `release` returns the frames to the kernel (CAN_RELEASE); nothing allocates
// (fixed arrays, page tables from the frame allocator); all state is behind a
// spin mutex or atomics, so every method works through `&self` from any CPU.
unsafe impl<M, F> PageSource for FrameSource<M, F>
where
    M: Mapper<Size4KiB> + Send,
    F: FrameAllocator<Size4KiB> + FrameDeallocator<Size4KiB> + Send,
{
    const PAGE_SIZE: usize = PAGE as usize;
    const ARENA_BYTES: usize = crate::CHUNK_BYTES * 16;
    const ZEROED: bool = true;
    const CAN_RELEASE: bool = true;

    /// None → Reserved: first fit among the holes, else the bump pointer.
    fn reserve(&self, bytes: usize, align: usize) -> Option<NonNull<u8>> {
        if bytes == 0 || !align.is_power_of_two() {
            return None;
        }
        let bytes = (bytes as u64).checked_next_multiple_of(PAGE)?;
        let align = (align as u64).max(PAGE);
        let mut s = self.state.lock();
        let inner = s.as_mut()?;
        let off = inner.carve(self.start, self.len, bytes, align)?;
        NonNull::new(ptr::with_exposed_provenance_mut::<u8>(
            (self.start + off) as usize,
        ))
    }

    /// Reserved → Prepared: bookkeeping only (no frame is taken); a guard in
    /// the range is forgotten.
    unsafe fn commit(&self, addr: NonNull<u8>, bytes: usize) -> Result<(), Exhausted> {
        let _s = self.state.lock();
        self.clear_guards(self.page_index(addr.as_ptr() as u64), bytes as u64 / PAGE);
        Ok(())
    }

    /// Prepared → Ready: a zeroed frame for every page. If frames run out midway
    /// the pages mapped by this call are unmapped and their frames returned, so
    /// the range is Prepared again, and `Err(Exhausted)` is returned.
    unsafe fn ready(&self, addr: NonNull<u8>, bytes: usize) -> Result<(), Exhausted> {
        let mut s = self.state.lock();
        let inner = s.as_mut().ok_or(Exhausted)?;
        let start = addr.as_ptr() as u64;
        let n = bytes as u64 / PAGE;
        for i in 0..n {
            let page = Page::<Size4KiB>::containing_address(VirtAddr::new(start + i * PAGE));
            if self.map_one(inner, page).is_err() {
                self.mapped.fetch_add(i as usize, Ordering::Relaxed);
                self.unmap_range(inner, start, i * PAGE);
                return Err(Exhausted);
            }
        }
        self.mapped.fetch_add(n as usize, Ordering::Relaxed);
        self.clear_guards(self.page_index(start), n);
        Ok(())
    }

    /// Ready → Prepared: unmap, invalidate, return the frames. Pages that are
    /// not mapped are skipped.
    unsafe fn release(&self, addr: NonNull<u8>, bytes: usize) {
        let mut s = self.state.lock();
        if let Some(inner) = s.as_mut() {
            self.unmap_range(inner, addr.as_ptr() as u64, bytes as u64);
        }
    }

    /// Ready or Prepared → Reserved: as `release`, and the range is recorded as
    /// a guard for [`FrameSource::is_guard`].
    unsafe fn fault(&self, addr: NonNull<u8>, bytes: usize) {
        let mut s = self.state.lock();
        if let Some(inner) = s.as_mut() {
            let a = addr.as_ptr() as u64;
            self.unmap_range(inner, a, bytes as u64);
            self.clear_guards(self.page_index(a), bytes as u64 / PAGE);
            self.add_guard(self.page_index(a), bytes as u64 / PAGE);
        }
    }

    /// Any state → None: unmap what is mapped, forget guards, and give the
    /// range back to the window.
    unsafe fn free(&self, addr: NonNull<u8>, bytes: usize) {
        let Some(bytes) = (bytes as u64).checked_next_multiple_of(PAGE) else {
            return;
        };
        let a = addr.as_ptr() as u64;
        if a < self.start || a - self.start > self.len || bytes > self.len - (a - self.start) {
            debug_assert!(false, "FrameSource: free of a range outside the window");
            return;
        }
        let mut s = self.state.lock();
        if let Some(inner) = s.as_mut() {
            self.unmap_range(inner, a, bytes);
            self.clear_guards(self.page_index(a), bytes / PAGE);
            let off = a - self.start;
            inner.give_back(self.start, off, off + bytes);
        }
    }
}

impl<M, F> core::fmt::Debug for FrameSource<M, F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut d = f.debug_struct("FrameSource");
        d.field("start", &format_args!("{:#x}", self.start))
            .field("len", &format_args!("{:#x}", self.len))
            .field("frames_mapped", &self.frames_mapped());
        // try_lock: formatting must not deadlock against a holder of the lock.
        if let Some(s) = self.state.try_lock() {
            d.field("init", &s.is_some());
            if let Some(i) = s.as_ref() {
                d.field("bump", &format_args!("{:#x}", i.bump))
                    .field("holes", &i.holes.len());
            }
        }
        d.finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{alloc_zeroed, Layout};
    use std::vec::Vec;
    use x86_64::structures::paging::{OffsetPageTable, PageTable, Translate};

    /// Simulated physical memory: 16 MiB of host memory; physical address `p`
    /// is host address `phys_base + p`. Frame 0 holds the level-4 table.
    const PHYS_BYTES: u64 = 16 << 20;
    const WINDOW: u64 = 0xffff_9000_0000_0000;
    const WINDOW_LEN: u64 = 64 << 30;
    const PS: usize = PAGE as usize;
    /// Garbage the fake frame allocator leaves in every frame it hands out.
    const DIRTY: u8 = 0xa5;

    /// Frame allocator over the simulated memory: a free list, then a bump
    /// pointer, with an optional budget of frames it may still hand out.
    struct Frames {
        base: u64,
        next: u64,
        free: Vec<u64>,
        budget: usize,
        outstanding: usize,
    }

    impl Frames {
        fn free_count(&self) -> usize {
            self.free.len() + ((PHYS_BYTES - self.next) / PAGE) as usize
        }
        fn scribble(&self, phys: u64) {
            // SAFETY: inside the simulated memory, a frame nobody else uses.
            unsafe { ((self.base + phys) as *mut u8).write_bytes(DIRTY, PS) };
        }
    }

    // SAFETY: every frame is handed out once until it comes back.
    unsafe impl FrameAllocator<Size4KiB> for Frames {
        fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
            if self.budget == 0 {
                return None;
            }
            let p = match self.free.pop() {
                Some(p) => p,
                None if self.next < PHYS_BYTES => {
                    self.next += PAGE;
                    self.next - PAGE
                }
                None => return None,
            };
            self.budget -= 1;
            self.outstanding += 1;
            self.scribble(p);
            Some(PhysFrame::containing_address(PhysAddr::new(p)))
        }
    }

    impl FrameDeallocator<Size4KiB> for Frames {
        unsafe fn deallocate_frame(&mut self, frame: PhysFrame<Size4KiB>) {
            let p = frame.start_address().as_u64();
            assert!(
                p != 0 && p < self.next && !self.free.contains(&p),
                "bad or double frame free {p:#x}"
            );
            self.outstanding -= 1;
            self.budget = self.budget.saturating_add(1);
            self.free.push(p);
        }
    }

    type Src = FrameSource<OffsetPageTable<'static>, Frames>;

    /// A fresh machine: simulated memory (leaked), a source over the window,
    /// initialised with an `OffsetPageTable` and a frame budget.
    fn machine(budget: usize) -> (Src, u64) {
        let layout = Layout::from_size_align(PHYS_BYTES as usize, 2 << 20).unwrap();
        // SAFETY: non-zero size.
        let base = unsafe { alloc_zeroed(layout) } as u64;
        assert!(base != 0);
        let config = Config {
            flags: DEFAULT_FLAGS | PageTableFlags::NO_EXECUTE,
            zero: Zero::PhysOffset(base),
            flush_local: no_flush,
            shootdown: no_shootdown,
        };
        let src = FrameSource::with_config(WINDOW, WINDOW_LEN, config);
        // SAFETY: frame 0 of the simulated memory is a zeroed table, and all of
        // it is at `base`.
        let l4 = unsafe { &mut *(base as *mut PageTable) };
        let mapper = unsafe { OffsetPageTable::new(l4, VirtAddr::new(base)) };
        let frames = Frames {
            base,
            next: PAGE,
            free: Vec::with_capacity(4096),
            budget,
            outstanding: 0,
        };
        src.init(mapper, frames);
        (src, base)
    }

    fn phys_of(src: &Src, va: u64) -> Option<u64> {
        src.with_parts(|m, _| m.translate_addr(VirtAddr::new(va)))
            .unwrap()
            .map(|p| p.as_u64())
    }

    fn outstanding(src: &Src) -> usize {
        src.with_parts(|_, f| f.outstanding).unwrap()
    }

    fn nn(a: u64) -> NonNull<u8> {
        NonNull::new(a as *mut u8).unwrap()
    }

    /// Every page of the range is mapped (to distinct frames) or none is.
    fn mapped_pages(src: &Src, a: NonNull<u8>, bytes: usize) -> usize {
        let a = a.as_ptr() as u64;
        (0..bytes as u64 / PAGE)
            .filter(|i| phys_of(src, a + i * PAGE).is_some())
            .count()
    }

    #[test]
    fn nothing_before_init() {
        static S: FrameSource<OffsetPageTable<'static>, Frames> =
            FrameSource::new(WINDOW, WINDOW_LEN);
        fn assert_sync<T: Send + Sync>(_: &T) {}
        assert_sync(&S);
        assert!(S.reserve(PS, PS).is_none());
        assert!(S.with_parts(|_, _| ()).is_none());
        assert_eq!(S.frames_mapped(), 0);
        assert!(!S.is_guard(VirtAddr::new(WINDOW)));
        assert_eq!(Src::ARENA_BYTES, 64 << 20);
    }

    #[test]
    fn reserve_aligns_and_reuses_holes() {
        let (src, _) = machine(usize::MAX);
        let a = src.reserve(PS, PS).unwrap();
        assert_eq!(a.as_ptr() as u64, WINDOW);
        let b = src.reserve(Src::ARENA_BYTES, Src::ARENA_BYTES).unwrap();
        assert_eq!(b.as_ptr() as u64, WINDOW + Src::ARENA_BYTES as u64);
        // The alignment gap became a hole and is used first.
        let c = src.reserve(3 * PS, 2 * PS).unwrap();
        assert_eq!(c.as_ptr() as u64, WINDOW + 2 * PAGE);
        assert_eq!(src.reserved_bytes(), PAGE + (64 << 20) + 3 * PAGE);
        // Too big or bad arguments.
        assert!(src.reserve(WINDOW_LEN as usize, PS).is_none());
        assert!(src.reserve(0, PS).is_none());
        assert!(src.reserve(PS, 3 * PS).is_none());
        unsafe {
            src.free(b, Src::ARENA_BYTES);
            src.free(c, 3 * PS);
            src.free(a, PS);
        }
        assert_eq!(src.reserved_bytes(), 0);
        // Everything merged back into the bump pointer.
        assert_eq!(src.reserve(PS, PS).unwrap().as_ptr() as u64, WINDOW);
    }

    #[test]
    fn ready_maps_zeroed_frames_and_release_returns_them() {
        let (src, base) = machine(usize::MAX);
        let bytes = 64 * PS;
        let a = src.reserve(bytes, 2 << 20).unwrap();
        let av = a.as_ptr() as u64;
        unsafe { src.commit(a, bytes).unwrap() };
        assert_eq!(mapped_pages(&src, a, bytes), 0);
        unsafe { src.ready(a, bytes).unwrap() };
        assert_eq!(src.frames_mapped(), 64);
        // 64 data frames plus the page tables (PDPT, PD, PT) created on the way.
        assert_eq!(outstanding(&src), 64 + 3);
        let mut seen = Vec::new();
        for i in 0..64 {
            let p = phys_of(&src, av + i * PAGE).expect("mapped");
            assert_eq!(p % PAGE, 0);
            let host = unsafe { core::slice::from_raw_parts((base + p) as *const u8, PS) };
            assert!(host.iter().all(|&b| b == 0), "frame of page {i} not zeroed");
            seen.push(p);
            // Write through "physical memory" for the next round.
            unsafe { ((base + p) as *mut u8).write_bytes(0x77, PS) };
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 64, "two pages share a frame");
        let flags = src.with_parts(|m, _| match m.translate(VirtAddr::new(av)) {
            x86_64::structures::paging::mapper::TranslateResult::Mapped { flags, .. } => flags,
            r => panic!("{r:?}"),
        });
        assert_eq!(flags, Some(DEFAULT_FLAGS | PageTableFlags::NO_EXECUTE));

        unsafe { src.release(a, bytes) };
        assert_eq!(mapped_pages(&src, a, bytes), 0);
        assert_eq!(src.frames_mapped(), 0);
        assert_eq!(outstanding(&src), 3, "only the page tables stay");

        // Ready again: zeroed again although the frames held 0x77.
        unsafe { src.ready(a, bytes).unwrap() };
        for i in 0..64 {
            let p = phys_of(&src, av + i * PAGE).unwrap();
            let host = unsafe { core::slice::from_raw_parts((base + p) as *const u8, PS) };
            assert!(host.iter().all(|&b| b == 0));
        }
        assert_eq!(outstanding(&src), 64 + 3);
        unsafe { src.free(a, bytes) };
        assert_eq!(outstanding(&src), 3);
        assert_eq!(src.reserved_bytes(), 0);
    }

    #[test]
    fn release_skips_unmapped_pages() {
        let (src, _) = machine(usize::MAX);
        let bytes = 16 * PS;
        let a = src.reserve(bytes, PS).unwrap();
        let av = a.as_ptr() as u64;
        unsafe {
            src.commit(a, bytes).unwrap();
            // Only the middle 4 pages become Ready.
            src.ready(nn(av + 6 * PAGE), 4 * PS).unwrap();
            assert_eq!(mapped_pages(&src, a, bytes), 4);
            src.release(a, bytes);
            assert_eq!(mapped_pages(&src, a, bytes), 0);
            assert_eq!(src.frames_mapped(), 0);
            src.fault(a, bytes);
            src.free(a, bytes);
        }
        assert_eq!(outstanding(&src), 3);
    }

    #[test]
    fn exhaustion_midway_rolls_back() {
        // Budget: the 3 page tables and 10 data frames.
        let (src, _) = machine(13);
        let bytes = 32 * PS;
        let a = src.reserve(bytes, PS).unwrap();
        unsafe {
            src.commit(a, bytes).unwrap();
            assert_eq!(src.ready(a, bytes), Err(Exhausted));
        }
        assert_eq!(
            mapped_pages(&src, a, bytes),
            0,
            "partial mapping left behind"
        );
        assert_eq!(src.frames_mapped(), 0);
        assert_eq!(outstanding(&src), 3);
        assert_eq!(src.with_parts(|_, f| f.budget).unwrap(), 10);
        // A range that fits still works, and the failed one works once it fits.
        unsafe {
            src.ready(a, 10 * PS).unwrap();
            assert_eq!(mapped_pages(&src, a, bytes), 10);
            assert_eq!(
                src.ready(nn(a.as_ptr() as u64 + 10 * PAGE), PS),
                Err(Exhausted)
            );
            src.release(a, 10 * PS);
        }
        // `alloc` (reserve + commit + ready) gives the address space back on failure.
        let before = src.reserved_bytes();
        assert!(src.alloc(11 * PS).is_none());
        assert_eq!(src.reserved_bytes(), before);
        let m = src.alloc(10 * PS).unwrap();
        assert_eq!(src.frames_mapped(), 10);
        unsafe { src.free(m, 10 * PS) };
        assert_eq!(src.frames_mapped(), 0);
        // A frame-less machine cannot even build its page tables.
        let (dry, _) = machine(2);
        let d = dry.reserve(PS, PS).unwrap();
        unsafe {
            dry.commit(d, PS).unwrap();
            assert_eq!(dry.ready(d, PS), Err(Exhausted));
        }
        assert_eq!(dry.frames_mapped(), 0);
        // The data frame came first and went back; the PDPT made before running dry stays.
        assert_eq!(outstanding(&dry), 1);
    }

    #[test]
    fn guards_are_recorded_and_cleared() {
        let (src, _) = machine(usize::MAX);
        let bytes = 8 * PS;
        let a = src.reserve(bytes, PS).unwrap();
        let av = a.as_ptr() as u64;
        unsafe {
            src.commit(a, bytes).unwrap();
            src.ready(a, bytes).unwrap();
            src.fault(nn(av + PAGE), 2 * PS);
        }
        assert_eq!(mapped_pages(&src, a, bytes), 6);
        assert_eq!(src.frames_mapped(), 6);
        let g = |off: u64| src.is_guard(VirtAddr::new(av + off));
        assert!(!g(0) && !g(PAGE - 1));
        assert!(g(PAGE) && g(2 * PAGE + 4095));
        assert!(!g(3 * PAGE));
        assert!(!src.is_guard(VirtAddr::new(WINDOW - 1)));
        // Made Ready again: no longer a guard.
        unsafe {
            src.commit(nn(av + PAGE), 2 * PS).unwrap();
            assert!(!g(PAGE));
            src.ready(nn(av + PAGE), 2 * PS).unwrap();
        }
        assert_eq!(mapped_pages(&src, a, bytes), 8);
        // A guard split by a partial ready keeps its other parts.
        unsafe {
            src.fault(a, 6 * PS);
            src.commit(nn(av + 2 * PAGE), PS).unwrap();
            src.ready(nn(av + 2 * PAGE), PS).unwrap();
        }
        assert!(g(0) && g(PAGE + 7) && !g(2 * PAGE) && g(3 * PAGE) && g(5 * PAGE) && !g(6 * PAGE));
        // Freed: forgotten.
        unsafe { src.free(a, bytes) };
        assert!(!g(0) && !g(3 * PAGE));
        assert_eq!(src.frames_mapped(), 0);
        assert_eq!(src.untracked_guards(), 0);
        // The table is bounded: guards beyond MAX_GUARDS are enforced but untracked.
        let r = src.reserve(2 * (MAX_GUARDS + 2) * PS, PS).unwrap();
        let rv = r.as_ptr() as u64;
        for i in 0..MAX_GUARDS as u64 + 2 {
            unsafe { src.fault(nn(rv + 2 * i * PAGE), PS) };
        }
        assert_eq!(src.untracked_guards(), 2);
        assert!(src.is_guard(VirtAddr::new(rv)));
        assert!(!src.is_guard(VirtAddr::new(rv + 2 * (MAX_GUARDS as u64 + 1) * PAGE)));
        unsafe { src.free(r, 2 * (MAX_GUARDS + 2) * PS) };
        assert!(!src.is_guard(VirtAddr::new(rv)));
    }

    #[test]
    fn arena_sized_cycle_returns_every_frame() {
        let (src, _) = machine(usize::MAX);
        let bytes = 8 << 20; // 2048 frames of the 4095 available
        let a = src.reserve(bytes, Src::ARENA_BYTES).unwrap();
        let before = src.with_parts(|_, f| f.free_count()).unwrap();
        unsafe {
            src.commit(a, bytes).unwrap();
            src.ready(a, bytes).unwrap();
        }
        assert_eq!(src.frames_mapped(), 2048);
        let tables = before - 2048 - src.with_parts(|_, f| f.free_count()).unwrap();
        assert_eq!(tables, 2 + 4, "PDPT, PD and one PT per 2 MiB");
        unsafe { src.release(a, bytes) };
        assert_eq!(
            src.with_parts(|_, f| f.free_count()).unwrap(),
            before - tables
        );
        unsafe { src.free(a, bytes) };
    }

    #[test]
    #[should_panic(expected = "init called twice")]
    fn init_twice_panics() {
        let (src, base) = machine(1);
        let l4 = std::boxed::Box::leak(std::boxed::Box::new(PageTable::new()));
        // SAFETY: never used to map anything (init panics first).
        let mapper = unsafe { OffsetPageTable::new(l4, VirtAddr::new(base)) };
        src.init(
            mapper,
            Frames {
                base,
                next: PAGE,
                free: Vec::new(),
                budget: 0,
                outstanding: 0,
            },
        );
    }
}
