//! [`MmapSource`]: arenas from the Linux kernel through `mmap`, as Go's
//! `runtime/mem_linux.go` gets them.
//!
//! | Method     | Transition          | How (Go's function)                                                     |
//! |------------|---------------------|-------------------------------------------------------------------------|
//! | `reserve`  | None → Reserved     | `mmap(hint, PROT_NONE, PRIVATE\|ANONYMOUS\|NORESERVE)`, over-reserve and trim for alignment (`sysReserve`, `sysReserveAligned`) |
//! | `commit`   | Reserved → Prepared | `mprotect(PROT_READ\|PROT_WRITE)`; the pages stay untouched and cost no RSS (`sysMap`) |
//! | `ready`    | Prepared → Ready    | nothing but `MADV_HUGEPAGE` on the whole 2 MiB huge pages inside (`sysUsed`) |
//! | `release`  | Ready → Prepared    | `madvise(MADV_DONTNEED)`; the range reads as zero afterwards (`sysUnused`) |
//! | `hugepage` | (hint)              | `MADV_HUGEPAGE` on the 2 MiB-aligned interior (`sysHugePage`)           |
//! | `fault`    | Ready/Prepared → Reserved | `mmap(MAP_FIXED, PROT_NONE)` over the range, dropping its contents (`sysFault`) |
//! | `free`     | any → None          | `munmap` (`sysFree`); the address space is free again (`CAN_UNRESERVE`) |
//! | `alloc`    | None → Ready        | `mmap(NULL, PROT_READ\|PROT_WRITE, PRIVATE\|ANONYMOUS)` (`sysAlloc`)     |
//!
//! The page map's window ([`PageSource::WINDOW_BYTES`]) is 16 GiB on 64-bit
//! targets (16 MiB of slots, one `alloc`, touched only where arenas are)
//! and 1 GiB on 32-bit ones; under an address-space limit (`RLIMIT_AS`) it
//! is no larger than the limit, so its slots take a thousandth of it.
//!
//! Differences from Go 1.20:
//! * `commit` uses `mprotect` where Go's `sysMap` maps the range again with
//!   `MAP_FIXED`. The range was never touched while Reserved (or was replaced by
//!   a fresh `PROT_NONE` mapping in `fault`), so it reads as zero either way.
//! * `release` skips Go's `MADV_NOHUGEPAGE` on the (at most two) partial huge
//!   pages at unaligned ends. That trick stops `khugepaged` from collapsing a
//!   partly released huge page back into 2 MiB of RSS, but every flag change
//!   splits a VMA, and a heap that releases many small runs can then hit
//!   `vm.max_map_count` (65530 by default), after which `mmap`, `mprotect` and
//!   even `munmap` fail with `ENOMEM`. Plain `MADV_DONTNEED` never splits a VMA.
//! * The huge page size is fixed at 2 MiB (x86-64 and arm64 with 4 KiB pages)
//!   instead of being read from
//!   `/sys/kernel/mm/transparent_hugepage/hpage_pmd_size`. A wrong guess only
//!   makes the hint less useful.
//! * `reserve`, when the kernel does not take the hint and its choice is not
//!   aligned, first tries the aligned address just below that choice, and
//!   only then over-reserves by the alignment and trims (Go always
//!   over-reserves): under an address-space limit (`RLIMIT_AS`) the last
//!   arena that fits leaves no room for the excess.
//! * `alloc` maps with no hint (as Go's `sysAlloc` does) so that metadata does
//!   not land between arenas and break their contiguity.
//!
//! Nothing here allocates: every method is a system call or two on the caller's
//! stack.

use crate::sync::atomic::{AtomicUsize, Ordering};
use core::ffi::c_void;
use core::ptr::{self, NonNull};

use super::{Exhausted, PageSource};

/// Where the first arena is looked for: Go's first arena hint on amd64,
/// `0x00c0 << 32`; on 32-bit targets 1 GiB, below the kernel's top-down
/// `mmap` area.
#[cfg(target_pointer_width = "64")]
pub const DEFAULT_HINT: usize = 0x00c0_0000_0000;
/// Where the first arena is looked for: 1 GiB, below the kernel's top-down
/// `mmap` area (Go's amd64 hint, `0x00c0 << 32`, on 64-bit targets).
#[cfg(not(target_pointer_width = "64"))]
pub const DEFAULT_HINT: usize = 0x4000_0000;

/// A hint for a test's private reservations, far from the others': `n` of
/// 1..=3 picks one of three.
#[cfg(test)]
const fn test_hint(n: usize) -> usize {
    if usize::BITS == 64 {
        (0x2b00 + 0x100 * n) << (usize::BITS / 2)
    } else {
        0x5000_0000 + n * 0x1000_0000
    }
}

/// The transparent huge page size assumed for `MADV_HUGEPAGE` hints.
const HUGE_PAGE: usize = 2 << 20;

/// Flags of every reservation: address space only, no swap accounting.
const RESERVE_FLAGS: libc::c_int = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;

/// A [`PageSource`] over anonymous `mmap` memory, for hosted Linux.
///
/// Reservations are placed at ascending address hints, starting at
/// [`DEFAULT_HINT`] and continuing from the end of the last reservation, so the
/// heap's arenas tend to be contiguous; where the kernel puts a reservation
/// elsewhere the source simply continues from there.
///
/// All state is one atomic (the next hint), so the source is `Send + Sync` and
/// usable in a `static`.
#[derive(Debug)]
pub struct MmapSource {
    /// Address at which the next reservation is tried (not `MAP_FIXED`).
    /// Where the next reservation is looked for, stored `^ DEFAULT_HINT` so
    /// that the default is zero bytes (a `static` source stays in `.bss`).
    next_hint: AtomicUsize,
}

impl MmapSource {
    /// A source whose first reservation is tried at [`DEFAULT_HINT`].
    pub const fn new() -> Self {
        Self::with_hint(DEFAULT_HINT)
    }

    /// A source whose first reservation is tried at `hint` (0: let the kernel
    /// choose). Handy to keep two heaps' arenas apart, as Go keeps user arenas
    /// apart from the heap's.
    pub const fn with_hint(hint: usize) -> Self {
        MmapSource {
            next_hint: AtomicUsize::new(hint ^ DEFAULT_HINT),
        }
    }
}

impl MmapSource {
    /// Moves the hint past the reservation `base..base+bytes` and returns
    /// `base`: the next reservation is tried right after it. A race between
    /// two reservations only costs contiguity, never correctness.
    fn advance(&self, base: NonNull<u8>, bytes: usize) -> NonNull<u8> {
        self.next_hint.store(
            (base.as_ptr() as usize).wrapping_add(bytes) ^ DEFAULT_HINT,
            Ordering::Relaxed,
        );
        base
    }
}

impl Default for MmapSource {
    fn default() -> Self {
        Self::new()
    }
}

/// `(x + a - 1) & !(a - 1)` for a power of two `a`, or `None` on overflow.
#[inline]
fn align_up(x: usize, a: usize) -> Option<usize> {
    Some(x.checked_add(a - 1)? & !(a - 1))
}

/// `mmap` with `PROT_NONE` and [`RESERVE_FLAGS`] at the address hint `hint`
/// (not `MAP_FIXED`). `None` on `MAP_FAILED`.
fn map_none(hint: usize, bytes: usize) -> Option<NonNull<u8>> {
    // SAFETY: without MAP_FIXED the kernel picks a range that overlaps no
    // existing mapping, so this cannot disturb any memory; the hint is only a
    // number and needs no provenance.
    let p = unsafe {
        libc::mmap(
            ptr::without_provenance_mut::<c_void>(hint),
            bytes,
            libc::PROT_NONE,
            RESERVE_FLAGS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        None
    } else {
        NonNull::new(p.cast::<u8>())
    }
}

/// `munmap` that skips empty ranges and ignores errors.
///
/// # Safety
/// `addr..addr+bytes` is a range of this source's own mappings that nothing
/// will access any more.
unsafe fn unmap(addr: *mut u8, bytes: usize) {
    if bytes != 0 {
        // SAFETY: the caller owns the range and has given it up.
        unsafe { libc::munmap(addr.cast::<c_void>(), bytes) };
    }
}

/// `MADV_HUGEPAGE` over the whole huge pages inside `addr..addr+bytes`; errors
/// (no THP support, `EINVAL`) are ignored, as Go ignores them.
///
/// # Safety
/// The range is a mapping of this source in the Prepared or Ready state.
unsafe fn advise_huge(addr: NonNull<u8>, bytes: usize) {
    let start = addr.as_ptr() as usize;
    let (Some(beg), Some(end)) = (align_up(start, HUGE_PAGE), start.checked_add(bytes)) else {
        return;
    };
    let end = end & !(HUGE_PAGE - 1);
    if beg < end {
        // SAFETY: `beg..end` lies inside the caller's range; MADV_HUGEPAGE only
        // changes a VMA flag and never the contents.
        unsafe {
            libc::madvise(
                addr.as_ptr().add(beg - start).cast::<c_void>(),
                end - beg,
                libc::MADV_HUGEPAGE,
            )
        };
    }
}

// SAFETY: ranges come from mmap without MAP_FIXED (never overlapping a live
// mapping) and are only unmapped by `free`; after `ready`/`alloc` the range is
// PROT_READ|PROT_WRITE private anonymous memory; fresh, DONTNEED'ed and
// refaulted anonymous pages read as zero (ZEROED); DONTNEED returns the pages
// to the kernel (CAN_RELEASE); `munmap` in `free` gives the address space
// back (CAN_UNRESERVE); PAGE_SIZE is checked against sysconf in tests;
// no method allocates, and all state is atomic.
unsafe impl PageSource for MmapSource {
    const PAGE_SIZE: usize = 4096;
    const ARENA_BYTES: usize = 64 << 20;
    const ZEROED: bool = true;
    const CAN_RELEASE: bool = true;
    const CAN_UNRESERVE: bool = true;
    const CLOCK: bool = true;
    const WINDOW_BYTES: usize = if usize::BITS >= 64 { 16 << 30 } else { 1 << 30 };

    /// [`PageSource::WINDOW_BYTES`], or the soft `RLIMIT_AS` if lower.
    fn window_bytes(&self) -> usize {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a valid rlimit to write; the call has no other effect.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) };
        if rc == 0 && lim.rlim_cur != libc::RLIM_INFINITY {
            Self::WINDOW_BYTES.min(usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX))
        } else {
            Self::WINDOW_BYTES
        }
    }

    /// `CLOCK_MONOTONIC_COARSE` (the vDSO, no system call; a few ms of
    /// resolution, plenty for a decay period of a second), plus one so that
    /// it is never 0.
    fn now_ms(&self) -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec to write; the call has no other effect.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000 + 1
    }

    /// None → Reserved with `mmap(PROT_NONE)`; Go's `sysReserve`, and
    /// `sysReserveAligned` when the kernel's choice is not aligned.
    fn reserve(&self, bytes: usize, align: usize) -> Option<NonNull<u8>> {
        if bytes == 0 || !align.is_power_of_two() {
            return None;
        }
        let bytes = bytes.checked_next_multiple_of(Self::PAGE_SIZE)?;
        let align = align.max(Self::PAGE_SIZE);
        let hint =
            align_up(self.next_hint.load(Ordering::Relaxed) ^ DEFAULT_HINT, align).unwrap_or(0);

        // First try exactly `bytes` at the (aligned) hint: when the kernel takes
        // the hint, or happens to choose an aligned address, there is nothing to trim.
        let p = map_none(hint, bytes)?;
        let base = if p.as_ptr() as usize & (align - 1) == 0 {
            p
        } else {
            let at = p.as_ptr() as usize;
            // SAFETY: `p` is the mapping just made and nobody has seen it.
            unsafe { unmap(at as *mut u8, bytes) };
            // The kernel's choice is where room was (below its last mapping,
            // top down): first try the aligned address just under it, which
            // needs no more address space than `bytes` (under an
            // address-space limit the over-reservation may not fit).
            if let Some(q) = map_none(at & !(align - 1), bytes) {
                if q.as_ptr() as usize & (align - 1) == 0 {
                    return Some(self.advance(q, bytes));
                }
                // SAFETY: as above.
                unsafe { unmap(q.as_ptr(), bytes) };
            }
            // Over-reserve so that an aligned run of `bytes` surely lies inside
            // (mmap results are PAGE_SIZE-aligned), then trim head and tail.
            let size = bytes.checked_add(align - Self::PAGE_SIZE)?;
            let q = map_none(hint, size)?;
            let start = q.as_ptr() as usize;
            let head = align_up(start, align)? - start;
            let tail = size - head - bytes;
            // SAFETY: head and tail lie inside the mapping just made, which
            // nobody has seen; `head + bytes + tail == size`.
            unsafe {
                unmap(q.as_ptr(), head);
                unmap(q.as_ptr().add(head + bytes), tail);
                NonNull::new_unchecked(q.as_ptr().add(head))
            }
        };
        Some(self.advance(base, bytes))
    }

    /// Reserved → Prepared with `mprotect(PROT_READ|PROT_WRITE)`; Go's `sysMap`.
    /// Fails where the kernel refuses (strict overcommit, `vm.max_map_count`).
    unsafe fn commit(&self, addr: NonNull<u8>, bytes: usize) -> Result<(), Exhausted> {
        // SAFETY: the range is a Reserved part of one of our mappings; making it
        // accessible does not touch any memory of anyone else.
        let rc = unsafe {
            libc::mprotect(
                addr.as_ptr().cast::<c_void>(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(Exhausted)
        }
    }

    /// Prepared → Ready: the memory is already accessible, so only the huge
    /// page hint of Go's `sysUsed` remains. Never fails.
    unsafe fn ready(&self, addr: NonNull<u8>, bytes: usize) -> Result<(), Exhausted> {
        // SAFETY: the range is Prepared (caller's precondition).
        unsafe { advise_huge(addr, bytes) };
        Ok(())
    }

    /// Ready → Prepared with `madvise(MADV_DONTNEED)`; Go's `sysUnused` (minus
    /// its `MADV_NOHUGEPAGE` on the partial ends, see the module docs).
    unsafe fn release(&self, addr: NonNull<u8>, bytes: usize) {
        // SAFETY: the range is Ready and the caller will not access it until it
        // is Ready again; DONTNEED on private anonymous memory drops the pages,
        // which then read as zero.
        unsafe { libc::madvise(addr.as_ptr().cast::<c_void>(), bytes, libc::MADV_DONTNEED) };
    }

    /// `MADV_HUGEPAGE` on the 2 MiB-aligned interior; Go's `sysHugePage`.
    unsafe fn hugepage(&self, addr: NonNull<u8>, bytes: usize) {
        // SAFETY: the range is Ready or Prepared (caller's precondition).
        unsafe { advise_huge(addr, bytes) };
    }

    /// Ready or Prepared → Reserved: a fresh `PROT_NONE` mapping over the range
    /// with `MAP_FIXED`, which drops the contents; Go's `sysFault`.
    unsafe fn fault(&self, addr: NonNull<u8>, bytes: usize) {
        // SAFETY: MAP_FIXED replaces exactly `addr..addr+bytes`, which is ours
        // and which nothing will access any more (caller's precondition).
        let p = unsafe {
            libc::mmap(
                addr.as_ptr().cast::<c_void>(),
                bytes,
                libc::PROT_NONE,
                libc::MAP_FIXED | RESERVE_FLAGS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            // The kernel could not make a new mapping (vm.max_map_count). Still
            // make it a guard: drop the contents and the access rights in place.
            // Should even that fail, the range stays accessible but unused.
            // SAFETY: as above; both calls only affect the caller's range.
            unsafe {
                libc::madvise(addr.as_ptr().cast::<c_void>(), bytes, libc::MADV_DONTNEED);
                libc::mprotect(addr.as_ptr().cast::<c_void>(), bytes, libc::PROT_NONE);
            }
        }
    }

    /// Any state → None with `munmap`; Go's `sysFree`.
    unsafe fn free(&self, addr: NonNull<u8>, bytes: usize) {
        // SAFETY: the range is one that `reserve` or `alloc` returned and the
        // caller gives it up.
        unsafe { unmap(addr.as_ptr(), bytes) };
    }

    /// None → Ready in one `mmap(NULL, PROT_READ|PROT_WRITE)`; Go's `sysAlloc`.
    /// No hint, so metadata stays out of the arenas' ascending run.
    fn alloc(&self, bytes: usize) -> Option<NonNull<u8>> {
        if bytes == 0 {
            return None;
        }
        let bytes = bytes.checked_next_multiple_of(Self::PAGE_SIZE)?;
        // SAFETY: a fresh private anonymous mapping at a kernel-chosen address
        // overlaps nothing.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            None
        } else {
            NonNull::new(p.cast::<u8>())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::in_child;
    use core::ptr::{read_volatile, write_volatile};

    const PS: usize = MmapSource::PAGE_SIZE;
    const MIB: usize = 1 << 20;

    fn reserve_ready(src: &MmapSource, bytes: usize, align: usize) -> NonNull<u8> {
        let p = src.reserve(bytes, align).expect("reserve");
        // SAFETY: `p..p+bytes` was just reserved (Reserved); `commit` makes it Prepared.
        unsafe {
            src.commit(p, bytes).expect("commit");
            src.ready(p, bytes).expect("ready");
        }
        p
    }

    fn all_zero(p: NonNull<u8>, bytes: usize) -> bool {
        (0..bytes)
            .step_by(512)
            // SAFETY: callers pass a Ready range of `bytes` bytes, and `i < bytes`.
            .all(|i| unsafe { read_volatile(p.as_ptr().add(i)) } == 0)
            // SAFETY: as above: `bytes - 1` is the range's last byte.
            && unsafe { read_volatile(p.as_ptr().add(bytes - 1)) } == 0
    }

    /// Resident bytes of the range `p..p+bytes` alone (`mincore`), which the
    /// other tests' allocations running meanwhile do not move.
    fn resident_bytes(p: NonNull<u8>, bytes: usize) -> usize {
        let mut vec = std::vec![0u8; bytes.div_ceil(PS)];
        // SAFETY: `p` is page aligned and `p..p+bytes` is mapped (the
        // caller's reservation); `vec` has one byte per page of it.
        let r = unsafe { libc::mincore(p.as_ptr().cast(), bytes, vec.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore");
        vec.iter().filter(|&&b| b & 1 != 0).count() * PS
    }

    #[test]
    fn page_size_matches_kernel() {
        // SAFETY: `sysconf` has no preconditions.
        let ps = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        assert_eq!(ps, 4096);
        assert_eq!(ps as usize, MmapSource::PAGE_SIZE);
    }

    #[test]
    fn reserve_is_aligned() {
        let src = MmapSource::new();
        for &align in &[4096, 2 * MIB, 64 * MIB] {
            for &bytes in &[PS, 3 * PS, 2 * MIB, 64 * MIB] {
                let p = src.reserve(bytes, align).expect("reserve");
                assert_eq!(
                    p.as_ptr() as usize % align,
                    0,
                    "align {align:#x} bytes {bytes:#x}"
                );
                // SAFETY: `p..p+bytes` is exactly the reservation just made, never accessed.
                unsafe { src.free(p, bytes) };
            }
        }
        // A hint that cannot be honoured (unaligned, kernel-chosen) still aligns.
        let src = MmapSource::with_hint(0);
        let p = src.reserve(64 * MIB, 64 * MIB).unwrap();
        assert_eq!(p.as_ptr() as usize % (64 * MIB), 0);
        // SAFETY: `p` is exactly the reservation just made, never accessed.
        unsafe { src.free(p, 64 * MIB) };
    }

    #[test]
    fn reserve_rejects_bad_arguments() {
        let src = MmapSource::new();
        assert!(src.reserve(0, PS).is_none());
        assert!(src.reserve(PS, 3 * PS).is_none());
        assert!(src.reserve(usize::MAX - PS, PS).is_none());
        assert!(src
            .reserve(1 << (usize::BITS - 1), 1 << (usize::BITS - 1))
            .is_none());
        // Address space exhaustion is reported, not panicked on.
        // (Three quarters of the address space: no gap that large exists
        // in a running process on 32-bit targets, nor in 47 bits.)
        assert!(src
            .reserve((usize::MAX / 4 * 3 + 1) & !(PS - 1), PS)
            .is_none());
    }

    /// The mapped size of this process (first field of /proc/self/statm),
    /// read with plain system calls into a stack buffer: usable in a forked
    /// child, which must not allocate.
    fn mapped_bytes_no_alloc() -> usize {
        let mut buf = [0u8; 64];
        // SAFETY: a NUL-terminated path; `read` writes at most `buf.len()`
        // bytes into the stack buffer; the descriptor is ours to close.
        let n = unsafe {
            let fd = libc::open(c"/proc/self/statm".as_ptr(), libc::O_RDONLY);
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            libc::close(fd);
            n
        };
        let digits = buf[..n.max(0) as usize]
            .iter()
            .take_while(|b| b.is_ascii_digit());
        digits.fold(0, |v, &b| v * 10 + (b - b'0') as usize) * PS
    }

    /// Under an address-space limit with room for one 64 MiB arena and a
    /// little more, but not for the over-reservation by the alignment (64
    /// MiB more), a reservation whose hint is taken by another mapping, and
    /// for which the kernel chooses an unaligned address, still succeeds
    /// aligned: at the aligned address below the kernel's choice.
    #[test]
    fn aligned_reserve_needs_no_excess_under_a_limit() {
        let bytes = MmapSource::ARENA_BYTES;
        // The hint: an aligned reservation of our own (taken in the child too).
        let occupy = MmapSource::with_hint(test_hint(3));
        let taken = occupy.reserve(bytes, bytes).expect("reserve");
        let hint = taken.as_ptr() as usize;
        let st = in_child(|| {
            let lim = libc::rlimit {
                rlim_cur: (mapped_bytes_no_alloc() + bytes + 8 * MIB) as libc::rlim_t,
                rlim_max: libc::RLIM_INFINITY,
            };
            // SAFETY: lowers this (forked) process's own limit.
            if unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) } != 0 {
                // SAFETY: ends the child.
                unsafe { libc::_exit(2) };
            }
            // A page at the top of the gap where the kernel puts mappings
            // (top down), so that its choice for the arena, just below the
            // page, is not aligned (the top of the gap may be: glibc's
            // thread arenas are 64 MiB aligned).
            if let Some(r) = map_none(0, bytes + PS) {
                // SAFETY: the mapping just made, but its last page.
                unsafe { unmap(r.as_ptr(), bytes) };
            }
            let src = MmapSource::with_hint(hint);
            match src.reserve(bytes, bytes) {
                Some(p) if (p.as_ptr() as usize).is_multiple_of(bytes) && p != taken => {}
                // SAFETY: ends the child.
                _ => unsafe { libc::_exit(1) },
            }
        });
        // SAFETY: exactly the reservation made above, never accessed.
        unsafe { occupy.free(taken, bytes) };
        assert!(st.exited_ok(), "status {:#x}", st.status());
    }

    #[test]
    fn arenas_ascend_contiguously_from_hint() {
        // A private hint far from the other tests' reservations.
        let hint = test_hint(1);
        let src = MmapSource::with_hint(hint);
        let a = src
            .reserve(MmapSource::ARENA_BYTES, MmapSource::ARENA_BYTES)
            .unwrap();
        let b = src
            .reserve(MmapSource::ARENA_BYTES, MmapSource::ARENA_BYTES)
            .unwrap();
        assert_eq!(a.as_ptr() as usize, hint);
        assert_eq!(b.as_ptr() as usize, hint + MmapSource::ARENA_BYTES);
        // SAFETY: `a` and `b` are exactly the reservations just made, never accessed.
        unsafe {
            src.free(a, MmapSource::ARENA_BYTES);
            src.free(b, MmapSource::ARENA_BYTES);
        }
    }

    #[test]
    fn committed_memory_reads_zero_and_is_writable() {
        let src = MmapSource::new();
        let bytes = 4 * MIB;
        let p = src.reserve(bytes, 2 * MIB).unwrap();
        // SAFETY: `mid` lies inside the 4 MiB reservation and goes Reserved → Prepared → Ready
        // before any access; `free` gets the whole reservation, unused afterwards.
        unsafe {
            // Commit only the middle; the rest stays Reserved.
            let mid = NonNull::new_unchecked(p.as_ptr().add(MIB));
            src.commit(mid, 2 * MIB).unwrap();
            src.ready(mid, 2 * MIB).unwrap();
            assert!(all_zero(mid, 2 * MIB));
            write_volatile(mid.as_ptr(), 0xab);
            write_volatile(mid.as_ptr().add(2 * MIB - 1), 0xcd);
            assert_eq!(read_volatile(mid.as_ptr()), 0xab);
            src.hugepage(mid, 2 * MIB);
            src.free(p, bytes);
        }
    }

    #[test]
    fn release_zeroes() {
        let src = MmapSource::new();
        let bytes = 3 * MIB + 5 * PS; // unaligned ends
        let p = reserve_ready(&src, bytes, PS);
        // SAFETY: the range is Ready (`reserve_ready`) and untouched between `release` and `ready`;
        // `free` gets exactly the reservation, unused afterwards.
        unsafe {
            for i in (0..bytes).step_by(PS) {
                write_volatile(p.as_ptr().add(i), 0x5a);
            }
            src.release(p, bytes);
            src.ready(p, bytes).unwrap();
            assert!(all_zero(p, bytes));
            src.free(p, bytes);
        }
    }

    #[test]
    fn release_returns_rss() {
        let src = MmapSource::new();
        let bytes = 32 * MIB;
        let p = reserve_ready(&src, bytes, 2 * MIB);
        // The range's own pages, not the process's RSS: other tests run
        // concurrently and move that by tens of MiB either way.
        let before = resident_bytes(p, bytes);
        // SAFETY: `p..p+bytes` is Ready (`reserve_ready`) and `i < bytes`.
        unsafe {
            for i in (0..bytes).step_by(PS) {
                write_volatile(p.as_ptr().add(i), 1);
            }
        }
        let touched = resident_bytes(p, bytes);
        // SAFETY: the range is Ready and is not accessed again before `free`.
        unsafe { src.release(p, bytes) };
        let after = resident_bytes(p, bytes);
        assert_eq!(before, 0, "a fresh reservation is not resident");
        assert_eq!(touched, bytes, "every touched page is resident");
        assert_eq!(after, 0, "release gives every page back");
        // SAFETY: `p..p+bytes` is exactly the reservation, not accessed again.
        unsafe { src.free(p, bytes) };
    }

    /// Runs `f` in a forked child and returns its raw wait status. The child
    /// only touches memory and `_exit`s, which is safe even though the test
    /// harness is multi-threaded.

    #[test]
    fn fault_makes_access_fault() {
        let src = MmapSource::new();
        let bytes = 4 * PS;
        let p = reserve_ready(&src, bytes, PS);
        let addr = p.as_ptr() as usize;
        // Sanity check of the harness: a Ready page can be written by the child.
        // SAFETY: page 1 of `p` is Ready; the write is to the forked child's copy.
        let st = in_child(|| unsafe { write_volatile((addr + PS) as *mut u8, 1) });
        assert!(st.exited_ok(), "status {:#x}", st.status());

        // SAFETY: page 1 is Ready when written; pages 1..3 are Ready and the parent does not touch
        // them again until they are made Ready again below.
        unsafe {
            write_volatile(p.as_ptr().add(PS), 0x77);
            src.fault(NonNull::new_unchecked(p.as_ptr().add(PS)), 2 * PS);
        }
        // SAFETY: deliberately faults: page 1 is now PROT_NONE, so the write kills the child with
        // SIGSEGV before anything is written, which is what the test checks.
        let st = in_child(|| unsafe { write_volatile((addr + PS) as *mut u8, 1) });
        assert!(st.segfaulted(), "status {:#x}", st.status());
        // SAFETY: as above: the last byte of page 2, also PROT_NONE, faults in the child.
        let st = in_child(|| unsafe {
            read_volatile((addr + 3 * PS - 1) as *const u8);
        });
        assert!(st.segfaulted(), "status {:#x}", st.status());
        // The neighbours stay Ready.
        // SAFETY: pages 0 and 3 are still Ready; the writes go to the forked child's copy.
        let st = in_child(|| unsafe {
            write_volatile(addr as *mut u8, 1);
            write_volatile((addr + 3 * PS) as *mut u8, 1);
        });
        assert!(st.exited_ok(), "status {:#x}", st.status());

        // Reserved again: commit + ready bring it back, zeroed.
        // SAFETY: pages 1..3 are Reserved after `fault`, then Prepared and Ready before `all_zero`
        // reads them; `free` gets exactly the reservation, unused afterwards.
        unsafe {
            let g = NonNull::new_unchecked(p.as_ptr().add(PS));
            src.commit(g, 2 * PS).unwrap();
            src.ready(g, 2 * PS).unwrap();
            assert!(all_zero(g, 2 * PS));
            src.free(p, bytes);
        }
    }

    #[test]
    fn free_then_reserve_again() {
        let src = MmapSource::with_hint(test_hint(2));
        let bytes = MmapSource::ARENA_BYTES;
        let p = reserve_ready(&src, bytes, bytes);
        // SAFETY: `p` is Ready (`reserve_ready`); `free` gets exactly the reservation, then unused.
        unsafe {
            write_volatile(p.as_ptr(), 9);
            src.free(p, bytes);
        }
        let q = reserve_ready(&src, bytes, bytes);
        assert_eq!(q.as_ptr() as usize % bytes, 0);
        assert!(all_zero(q, bytes));
        // SAFETY: `q..q+bytes` is exactly the reservation, not accessed again.
        unsafe { src.free(q, bytes) };
    }

    #[test]
    fn alloc_is_ready_and_zeroed() {
        let src = MmapSource::new();
        assert!(src.alloc(0).is_none());
        let p = src.alloc(10_000).unwrap(); // rounded up to 3 pages
        assert_eq!(p.as_ptr() as usize % PS, 0);
        let bytes = 3 * PS;
        assert!(all_zero(p, bytes));
        // SAFETY: `p` is Ready from `alloc(10_000)`, 3 pages; `free` gets exactly that range,
        // unused afterwards.
        unsafe {
            write_volatile(p.as_ptr().add(bytes - 1), 3);
            src.free(p, bytes);
        }
        assert!(src.alloc(usize::MAX).is_none());
    }

    #[test]
    fn usable_from_a_static() {
        static SRC: MmapSource = MmapSource::new();
        fn assert_sync<T: Send + Sync>(_: &T) {}
        assert_sync(&SRC);
        let p = SRC.reserve(PS, PS).unwrap();
        // SAFETY: `p` is exactly the reservation just made, never accessed.
        unsafe { SRC.free(p, PS) };
    }
}
