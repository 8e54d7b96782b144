//! The allocators under test, each a `&'static` value implementing `GlobalAlloc`.
//!
//! The benchmark binaries keep the system allocator as their own
//! `#[global_allocator]`: the allocators here only see the requests the workloads
//! make through them explicitly. Monomorphised dispatch: [`visit`] calls a
//! [`Visitor`]'s generic method with the concrete allocator type, so no workload
//! pays for dynamic dispatch per operation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::process;
use std::ptr::NonNull;
use std::sync::OnceLock;

/// tieralloc as a hosted program uses it: mmap arenas, per-CPU caches committed
/// with restartable sequences where glibc registered them.
pub static TIERALLOC: tieralloc::LinuxHeap = tieralloc::LinuxHeap::new();
/// tieralloc with per-CPU locks (the fallback mode) for comparison.
pub static TIERALLOC_LOCKED: tieralloc::LinuxHeap = tieralloc::LinuxHeap::new_locked();
pub static MIMALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
pub static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Name of glibc malloc (`std::alloc::System`), the ratio baseline.
pub const GLIBC: &str = "glibc";
/// Name of mimalloc, the second reference.
pub const MIMALLOC_NAME: &str = "mimalloc";

/// Every allocator, in table order.
pub const NAMES: &[&str] = &[
    "tieralloc",
    "tieralloc-locked",
    GLIBC,
    MIMALLOC_NAME,
    "jemalloc",
    "talc",
    "rlsf",
    "buddy",
    "linked_list",
];

/// The hosted allocators with their own threading story (the ones `pair` and
/// `--callgrind` compare by default).
pub const HOSTED: &[&str] = &[
    "tieralloc",
    "tieralloc-locked",
    GLIBC,
    MIMALLOC_NAME,
    "jemalloc",
];

/// One line per allocator for the report: what exactly is being measured.
pub fn describe(name: &str) -> &'static str {
    match name {
        "tieralloc" => {
            "tieralloc `LinuxHeap::new()` (rseq per-CPU caches where glibc registered rseq)"
        }
        "tieralloc-locked" => {
            "tieralloc `LinuxHeap::new_locked()` (per-CPU caches behind per-CPU locks)"
        }
        "glibc" => "glibc malloc through `std::alloc::System`",
        "mimalloc" => "mimalloc (crate `mimalloc`, bundled C library)",
        "jemalloc" => "jemalloc (crate `tikv-jemallocator`, bundled C library)",
        "talc" => "talc `TalcLock<spinning_top::RawSpinlock, Manual>` over a 1 GiB arena",
        "rlsf" => "rlsf `Tlsf` in a `spin::Mutex` over a 1 GiB arena",
        "buddy" => "buddy_system_allocator `LockedHeap<32>` over a 1 GiB arena",
        "linked_list" => "linked_list_allocator `LockedHeap` over a 1 GiB arena",
        _ => "?",
    }
}

/// Something generic over the allocator type; see [`visit`].
pub trait Visitor {
    type Out;
    fn visit<A: GlobalAlloc + Sync + 'static>(self, name: &'static str, a: &'static A)
        -> Self::Out;
}

/// Calls `v.visit` with the allocator called `name` (one of [`NAMES`]); `None`
/// for an unknown name. Fixed-arena allocators are set up on first use.
pub fn visit<V: Visitor>(name: &str, v: V) -> Option<V::Out> {
    Some(match name {
        "tieralloc" => v.visit("tieralloc", &TIERALLOC),
        "tieralloc-locked" => v.visit("tieralloc-locked", &TIERALLOC_LOCKED),
        "glibc" => v.visit(GLIBC, &System),
        "mimalloc" => v.visit(MIMALLOC_NAME, &MIMALLOC),
        "jemalloc" => v.visit("jemalloc", &JEMALLOC),
        "talc" => v.visit("talc", talc_heap()),
        "rlsf" => v.visit("rlsf", rlsf_heap()),
        "buddy" => v.visit("buddy", buddy_heap()),
        "linked_list" => v.visit("linked_list", lla_heap()),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------
// Fixed-arena allocators.
// ---------------------------------------------------------------------------

/// Bytes reserved (MAP_NORESERVE, touched on demand) for each arena allocator.
/// The largest live set is churn-1m's: 200 objects averaging ~256 KiB, ~50 MiB;
/// a buddy allocator rounds to powers of two and fragments, hence the slack.
pub const ARENA_BYTES: usize = 1 << 30;

/// Maps an anonymous, lazily backed arena of `bytes`; never unmapped.
pub fn mmap_arena(bytes: usize) -> *mut u8 {
    // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        eprintln!(
            "tieralloc-bench: mmap of a {bytes}-byte arena failed: {}",
            std::io::Error::last_os_error()
        );
        process::exit(2);
    }
    p.cast()
}

/// linked_list_allocator over one [`ARENA_BYTES`] arena, initialised on first use.
pub fn lla_heap() -> &'static linked_list_allocator::LockedHeap {
    static HEAP: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let base = mmap_arena(ARENA_BYTES);
        // SAFETY: the arena is valid, writable, unused by anything else, and lives
        // for the rest of the process; `OnceLock` makes this run once.
        unsafe { HEAP.lock().init(base, ARENA_BYTES) };
    });
    &HEAP
}

/// talc behind its own spin lock, over memory it is given (`claim`).
pub type Talc = talc::TalcLock<spinning_top::RawSpinlock, talc::source::Manual>;

/// talc over one [`ARENA_BYTES`] arena (claimed on first use).
pub fn talc_heap() -> &'static Talc {
    static HEAP: Talc = Talc::new(talc::source::Manual);
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let base = mmap_arena(ARENA_BYTES);
        // SAFETY: as in `lla_heap`.
        let claimed = unsafe { HEAP.lock().claim(base, ARENA_BYTES) };
        if claimed.is_none() {
            eprintln!("tieralloc-bench: talc refused its arena");
            process::exit(2);
        }
    });
    &HEAP
}

/// buddy_system_allocator over one [`ARENA_BYTES`] arena.
pub fn buddy_heap() -> &'static buddy_system_allocator::LockedHeap<32> {
    static HEAP: buddy_system_allocator::LockedHeap<32> =
        buddy_system_allocator::LockedHeap::empty();
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let base = mmap_arena(ARENA_BYTES);
        // SAFETY: as in `lla_heap`.
        unsafe { HEAP.lock().init(base as usize, ARENA_BYTES) };
    });
    &HEAP
}

/// rlsf's TLSF (FLLEN 28: blocks up to 32 B << 28 = 8 GiB, SLLEN 32).
type Tlsf = rlsf::Tlsf<'static, u32, u32, 28, 32>;

/// rlsf has no lock of its own: a `spin::Mutex` around `Tlsf`, as a kernel would.
pub struct LockedTlsf(spin::Mutex<Tlsf>);

impl LockedTlsf {
    /// A pool with no memory yet.
    pub const fn new() -> Self {
        LockedTlsf(spin::Mutex::new(Tlsf::new()))
    }

    /// Gives the pool `block`; `None` if it refused it.
    ///
    /// # Safety
    /// `block` is valid, writable memory that outlives the pool and that
    /// nothing else uses.
    pub unsafe fn insert(&self, block: NonNull<[u8]>) -> Option<()> {
        // SAFETY: forwarded from the caller.
        unsafe { self.0.lock().insert_free_block_ptr(block) }.map(|_| ())
    }
}

impl Default for LockedTlsf {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: the pool is only reached through the mutex; the arena it manages is
// process-global memory that any thread may use.
unsafe impl Sync for LockedTlsf {}
// SAFETY: as above.
unsafe impl Send for LockedTlsf {}

// SAFETY: forwards to `Tlsf` under the lock; `Tlsf` upholds the layout contract
// (size and alignment) and never hands out a block twice.
unsafe impl GlobalAlloc for LockedTlsf {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.0
            .lock()
            .allocate(layout)
            .map_or(std::ptr::null_mut(), |p| p.as_ptr())
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: `p` came from `alloc` with this alignment (caller).
        unsafe {
            self.0
                .lock()
                .deallocate(NonNull::new_unchecked(p), layout.align())
        }
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees a valid layout for `new_size`.
        let l = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: `p` came from this pool with this alignment (caller).
        let r = unsafe { self.0.lock().reallocate(NonNull::new_unchecked(p), l) };
        r.map_or(std::ptr::null_mut(), |p| p.as_ptr())
    }
}

/// rlsf over one [`ARENA_BYTES`] arena.
pub fn rlsf_heap() -> &'static LockedTlsf {
    static HEAP: LockedTlsf = LockedTlsf::new();
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let base = mmap_arena(ARENA_BYTES);
        let block = NonNull::slice_from_raw_parts(
            NonNull::new(base).unwrap_or_else(|| unreachable!()),
            ARENA_BYTES,
        );
        // SAFETY: as in `lla_heap`: the arena outlives the pool (never unmapped).
        if unsafe { HEAP.insert(block) }.is_none() {
            eprintln!("tieralloc-bench: rlsf refused its arena");
            process::exit(2);
        }
    });
    &HEAP
}

/// The mode tieralloc's per-CPU tier runs in, for the report.
pub fn tieralloc_mode() -> &'static str {
    if TIERALLOC.uses_rseq() {
        "rseq (per-CPU caches commit with restartable sequences)"
    } else {
        "LOCKED (rseq unavailable: per-CPU caches behind per-CPU locks)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Smoke;
    impl Visitor for Smoke {
        type Out = ();
        fn visit<A: GlobalAlloc + Sync + 'static>(self, name: &'static str, a: &'static A) {
            for (size, align) in [
                (1, 1),
                (8, 8),
                (64, 64),
                (100, 8),
                (4000, 64),
                (40_000, 8),
                (2 << 20, 8),
            ] {
                let l = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero layout; freed with the same layout.
                unsafe {
                    let p = a.alloc(l);
                    assert!(!p.is_null(), "{name}: {size}/{align}");
                    assert_eq!(p as usize % align, 0, "{name}: {size}/{align}");
                    p.write_bytes(0xAB, size);
                    let q = a.realloc(p, l, size * 2);
                    assert!(!q.is_null());
                    assert_eq!(q.add(size - 1).read(), 0xAB);
                    a.dealloc(q, Layout::from_size_align(size * 2, align).unwrap());
                }
            }
        }
    }

    #[test]
    fn every_allocator_allocates_aligned_and_reallocs() {
        for n in NAMES {
            assert!(visit(n, Smoke).is_some(), "{n}");
            assert_ne!(describe(n), "?");
        }
        assert!(visit("nope", Smoke).is_none());
        for h in HOSTED {
            assert!(NAMES.contains(h));
        }
    }
}
