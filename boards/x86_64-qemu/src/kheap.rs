//! The kernel heap: `tieralloc::Heap` over a `FrameSource` (frames mapped on
//! demand into the window at [`HEAP_WINDOW`]) with per-CPU caches keyed by the
//! dense CPU index ([`KernelCpu`]). It is the `#[global_allocator]` unless the
//! `lla-heap` feature makes `linked_list_allocator` the global heap instead (the
//! tieralloc heap then still exists, for the bench).
//!
//! Virtual layout (all 4-level, 48-bit):
//!
//! | range                         | what                                          |
//! |-------------------------------|-----------------------------------------------|
//! | `0x0010_0000..` (identity)    | the kernel image; first 4 GiB identity-mapped |
//! | `0xffff_8000_0000_0000`       | physical memory (first 4 GiB, 2 MiB pages)   |
//! | `0xffff_9000_0000_0000` 64 GiB| tieralloc heap window (`FrameSource`)         |
//! | `0xffff_a000_0000_0000`       | fixed regions: the `lla-heap` global heap, the bench's `LockedHeap` |
//!
//! The APs' kernel stacks come from the heap's stack allocator
//! (`Heap::alloc_stack(128 KiB, guard = true)`): in the heap window, each above
//! a guard page that the `FrameSource` leaves unmapped and reports through
//! `is_guard`, so an overflow is reported as a guard hit.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicU64, Ordering};

use linked_list_allocator::LockedHeap;
use tieralloc::source::frames::{flush_local, Config, Zero};
use tieralloc::source::FrameSource;
use tieralloc::Heap;
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTableFlags, Size4KiB,
};
use x86_64::VirtAddr;

use crate::memory::{KFrames, PHYS_MAPPED, PHYS_OFFSET};
use crate::percpu::KernelCpu;

pub const HEAP_WINDOW: u64 = 0xffff_9000_0000_0000;
pub const HEAP_WINDOW_LEN: u64 = 64 << 30;
pub const REGION_WINDOW: u64 = 0xffff_a000_0000_0000;
/// Bytes of an AP's kernel stack (from `Heap::alloc_stack`, with a guard page below).
pub const CPU_STACK_BYTES: u64 = 128 * 1024;

pub type KSource = FrameSource<OffsetPageTable<'static>, KFrames>;

const CONFIG: Config = Config {
    flags: PageTableFlags::PRESENT.union(PageTableFlags::WRITABLE),
    zero: Zero::PhysOffset(PHYS_OFFSET),
    flush_local,
    shootdown: crate::smp::shootdown_range,
};

/// The tieralloc heap (the global allocator unless feature `lla-heap`).
#[cfg_attr(not(feature = "lla-heap"), global_allocator)]
pub static HEAP: Heap<KSource, KernelCpu> = Heap::new(
    FrameSource::with_config(HEAP_WINDOW, HEAP_WINDOW_LEN, CONFIG),
    KernelCpu::new(),
);

/// With feature `lla-heap`: linked_list_allocator as the global heap.
#[cfg(feature = "lla-heap")]
#[global_allocator]
pub static LLA_GLOBAL: LockedHeap = LockedHeap::empty();

pub const GLOBAL_HEAP_NAME: &str = if cfg!(feature = "lla-heap") {
    "linked_list_allocator"
} else {
    "tieralloc"
};

/// Next free byte of the fixed-region window.
static REGION_NEXT: AtomicU64 = AtomicU64::new(REGION_WINDOW);

/// Hands the page tables and the frame allocator to the heap's source.
///
/// # Safety
/// Once, on the BSP, before any allocation.
pub unsafe fn init() {
    // SAFETY: the only OffsetPageTable over the kernel's tables.
    HEAP.source()
        .init(unsafe { crate::memory::kernel_page_table() }, KFrames);
    // The scavenger keeps an eighth of RAM (at least the heap's default 16 MiB)
    // of free pages mapped: unmapping and re-mapping frames (zeroing, page-table
    // writes, TLB shootdowns) is what a kernel heap's churn must not pay.
    // `Heap::scavenge` still returns everything.
    let ram = crate::memory::total_frames() * 4096;
    HEAP.set_retain_bytes((ram / 8).max(tieralloc::DEFAULT_RETAIN_BYTES));
    #[cfg(feature = "lla-heap")]
    {
        // Half of the free RAM, at most 256 MiB, for the global linked-list heap.
        let bytes = ((crate::memory::free_frames() as u64 * 4096 / 2).min(256 << 20)) & !0xfff;
        let base = map_region(bytes).expect("lla-heap: cannot map the global heap");
        // SAFETY: a fresh mapped region, ours alone.
        unsafe { LLA_GLOBAL.lock().init(base, bytes as usize) };
    }
}

/// Maps `bytes` of fresh frames at `va` (writable); false when frames run out
/// (the pages mapped so far stay mapped).
fn map_at(va: u64, bytes: u64) -> bool {
    HEAP.source()
        .with_parts(|m, f| {
            for off in (0..bytes).step_by(4096) {
                let page = Page::<Size4KiB>::containing_address(VirtAddr::new(va + off));
                let Some(frame) = f.allocate_frame() else {
                    return false;
                };
                // SAFETY: the page lies in a window only this module maps, and is unmapped.
                match unsafe {
                    m.map_to(
                        page,
                        frame,
                        PageTableFlags::PRESENT | PageTableFlags::WRITABLE,
                        f,
                    )
                } {
                    Ok(flush) => flush.flush(),
                    Err(_) => return false,
                }
            }
            true
        })
        .unwrap_or(false)
}

/// Maps a fixed region of `bytes` in the region window (for `LockedHeap` instances).
pub fn map_region(bytes: u64) -> Option<*mut u8> {
    let bytes = bytes.next_multiple_of(4096);
    let va = REGION_NEXT.fetch_add(bytes + (2 << 20), Ordering::SeqCst);
    map_at(va, bytes).then_some(va as *mut u8)
}

/// A kernel stack for CPU `index` from the heap's stack allocator, with a
/// guard below it: `(guard_lo, lo, hi)`; `[guard_lo, lo)` faults on access
/// (unmapped by the `FrameSource`, known to `is_guard`). Never freed.
pub fn alloc_cpu_stack(_index: usize) -> Option<(u64, u64, u64)> {
    let s = HEAP.alloc_stack(CPU_STACK_BYTES as usize, true)?;
    let lo = s.base.as_ptr() as u64;
    let hi = s.top() as u64;
    debug_assert!(s.has_guard());
    let _ = s; // the CPU runs on it for ever: the stack is never freed
    Some((lo - tieralloc::GUARD_BYTES as u64, lo, hi))
}

/// A heap guard page that is not a recorded CPU stack's: `Some(usize::MAX)`.
pub fn stack_guard_owner(addr: u64) -> Option<usize> {
    let va = VirtAddr::try_new(addr).ok()?;
    HEAP.source().is_guard(va).then_some(usize::MAX)
}

/// What lies at `addr`, for fault reports.
pub fn describe_addr(addr: u64) -> &'static str {
    if (HEAP_WINDOW..HEAP_WINDOW + HEAP_WINDOW_LEN).contains(&addr) {
        if HEAP.source().is_guard(VirtAddr::new_truncate(addr)) {
            "a guard page of the heap window"
        } else {
            "the heap window"
        }
    } else if (PHYS_OFFSET..PHYS_OFFSET + PHYS_MAPPED).contains(&addr) {
        "the physical-memory map"
    } else if (REGION_WINDOW..REGION_WINDOW + (1 << 40)).contains(&addr) {
        "the fixed-region window"
    } else if addr < PHYS_MAPPED {
        "the identity map"
    } else {
        "unmapped space"
    }
}

/// The global allocator, whichever it is (for code that wants raw calls).
pub fn global() -> &'static dyn GlobalAlloc {
    #[cfg(feature = "lla-heap")]
    {
        &LLA_GLOBAL
    }
    #[cfg(not(feature = "lla-heap"))]
    {
        &HEAP
    }
}

/// A `LockedHeap` over a fresh region of `bytes` (for the bench's comparison).
pub fn new_lla(bytes: u64) -> Option<&'static LockedHeap> {
    let base = map_region(bytes)?;
    let h: &'static LockedHeap =
        alloc::boxed::Box::leak(alloc::boxed::Box::new(LockedHeap::empty()));
    // SAFETY: a fresh mapped region, given to this heap alone.
    unsafe { h.lock().init(base, bytes as usize) };
    Some(h)
}

/// `layout` for raw calls, panicking on nonsense.
pub fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).expect("layout")
}
