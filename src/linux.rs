//! The hosted Linux configuration: [`LinuxHeap`] = mmap arenas + per-CPU caches
//! keyed by `sched_getcpu`. See `lib.rs` for the overview.
//!
//! CPU exclusivity here is a per-slot lock (one uncontended atomic per
//! operation, taken on the CPU the thread runs on, so it is almost never
//! contended). A thread migrated between reading its CPU id and taking the lock
//! simply uses another CPU's slot for one operation, which is correct. The
//! atomic-free rseq path is a later step.

use core::alloc::{GlobalAlloc, Layout};
use core::ops::Deref;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::cpu::{Cpu, RelaxStrategy, SlotLock};
use crate::heap::Heap;
use crate::source::MmapSource;

/// Most CPU slots; CPUs beyond share slots (modulo).
pub const MAX_CPUS: usize = 256;

/// Waits for a heap lock: a short spin, then `sched_yield`, since the holder
/// may have been preempted (more threads than cores).
pub struct SpinThenYield;

impl RelaxStrategy for SpinThenYield {
    #[inline]
    fn relax() {
        for _ in 0..16 {
            core::hint::spin_loop();
        }
        // SAFETY: sched_yield has no preconditions.
        unsafe { libc::sched_yield() };
    }
}

/// CPU ids from `sched_getcpu` (glibc reads them from the thread's rseq area),
/// one locked slot per configured CPU.
pub struct LinuxCpu {
    locks: [SlotLock; MAX_CPUS],
    /// Number of slots, 0 until first asked.
    count: AtomicUsize,
}

impl LinuxCpu {
    pub const fn new() -> Self {
        LinuxCpu { locks: [const { SlotLock::new() }; MAX_CPUS], count: AtomicUsize::new(0) }
    }

    #[inline(always)]
    fn current(&self) -> usize {
        // SAFETY: sched_getcpu has no preconditions; it returns -1 on failure.
        let id = unsafe { libc::sched_getcpu() };
        let n = self.count();
        if id < 0 {
            0
        } else if (id as usize) < n {
            id as usize
        } else {
            id as usize % n
        }
    }
}

impl Default for LinuxCpu {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: `count` is computed once (every racer computes the same value) and is
// between 1 and MAX_CPUS; every index passed on is `< count`, and each slot is
// reached only through its own lock.
unsafe impl Cpu for LinuxCpu {
    type Relax = SpinThenYield;

    #[inline(always)]
    fn count(&self) -> usize {
        let n = self.count.load(Ordering::Relaxed);
        if n != 0 {
            return n;
        }
        // SAFETY: sysconf has no preconditions.
        let conf = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
        let n = if conf < 1 { 1 } else { (conf as usize).min(MAX_CPUS) };
        self.count.store(n, Ordering::Relaxed);
        n
    }

    #[inline(always)]
    fn with_current<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        let i = self.current();
        self.locks[i].with::<SpinThenYield, _>(|| f(i))
    }

    fn with_slot<R>(&self, i: usize, f: impl FnOnce() -> R) -> R {
        self.locks[i].with::<SpinThenYield, _>(f)
    }
}

/// The allocator for hosted Linux programs:
///
/// ```
/// #[global_allocator]
/// static A: tieralloc::LinuxHeap = tieralloc::LinuxHeap::new();
/// # fn main() { let v = vec![1u8; 100]; assert_eq!(v.len(), 100); }
/// ```
pub struct LinuxHeap {
    heap: Heap<MmapSource, LinuxCpu>,
}

impl LinuxHeap {
    /// A heap over mmap'd 64 MiB arenas; takes nothing from the OS until first use.
    pub const fn new() -> Self {
        LinuxHeap { heap: Heap::new(MmapSource::new(), LinuxCpu::new()) }
    }
}

impl Default for LinuxHeap {
    fn default() -> Self {
        Self::new()
    }
}

impl Deref for LinuxHeap {
    type Target = Heap<MmapSource, LinuxCpu>;
    fn deref(&self) -> &Self::Target {
        &self.heap
    }
}

// SAFETY: forwards to `Heap`, whose `GlobalAlloc` contract this inherits.
unsafe impl GlobalAlloc for LinuxHeap {
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.heap.allocate(layout)
    }
    #[inline(always)]
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: forwarded from the caller.
        unsafe { self.heap.deallocate(p, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.heap.allocate_zeroed(layout)
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        unsafe { self.heap.reallocate(p, layout, new_size) }
    }
}
