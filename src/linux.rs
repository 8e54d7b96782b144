//! The hosted Linux configuration: [`LinuxHeap`] = mmap arenas + per-CPU
//! caches keyed by the CPU id ([`LinuxCpu`]). See `lib.rs` for the overview.

use core::alloc::{GlobalAlloc, Layout};
use core::ops::Deref;

use crate::heap::Heap;
use crate::percpu::linux::LinuxCpu;
use crate::source::MmapSource;

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
    /// A heap over mmap'd 64 MiB arenas; takes nothing from the OS until first
    /// use. Per-CPU operations use rseq where glibc registered it (check
    /// `uses_rseq()` or `stats().rseq`), else per-CPU locks.
    pub const fn new() -> Self {
        LinuxHeap {
            heap: Heap::new(MmapSource::new(), LinuxCpu::new()),
        }
    }

    /// As [`LinuxHeap::new`], but always with per-CPU locks (never rseq).
    pub const fn new_locked() -> Self {
        LinuxHeap {
            heap: Heap::new(MmapSource::new(), LinuxCpu::new_locked()),
        }
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
