//! Physical memory: the frame allocator over the usable RAM of the PVH memory
//! map, and the kernel's page tables through the `x86_64` crate.
//!
//! * All RAM below 4 GiB is mapped at [`PHYS_OFFSET`] by the boot page tables,
//!   so [`OffsetPageTable`] can walk and edit any table.
//! * Frames come from a bump pointer over the usable ranges (above the kernel
//!   image) and, once returned, from an intrusive free list threaded through
//!   the free frames themselves. One lock; a free-frame counter readable
//!   without it.
//! * Unmapping is done by the heap's `FrameSource`, which calls
//!   [`crate::smp::shootdown_range`] so that other CPUs drop stale translations
//!   before a frame is reused (the `x86_64` crate flushes only the local TLB).

use core::sync::atomic::{AtomicUsize, Ordering};

use spin::Mutex;
use x86_64::structures::paging::{
    FrameAllocator, FrameDeallocator, OffsetPageTable, PageTable, PageTableFlags, PhysFrame,
    Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

use crate::boot::{BootInfo, MemEntry};

/// Where all physical memory below [`PHYS_MAPPED`] appears (2 MiB pages, set up by the trampoline).
pub const PHYS_OFFSET: u64 = 0xffff_8000_0000_0000;
/// Bytes of physical memory mapped at `PHYS_OFFSET` (and identity-mapped).
pub const PHYS_MAPPED: u64 = 4 << 30;
pub const FRAME: u64 = 4096;

pub fn phys_to_virt(p: u64) -> *mut u8 {
    (PHYS_OFFSET + p) as *mut u8
}

const MAX_REGIONS: usize = 32;

struct Frames {
    regions: [(u64, u64); MAX_REGIONS],
    n: usize,
    /// Region the bump pointer is in, and the next never-used frame there.
    cur: usize,
    next: u64,
    /// First frame of the free list (0: empty; frame 0 is never handed out).
    free_head: u64,
}

static FRAMES: Mutex<Frames> = Mutex::new(Frames {
    regions: [(0, 0); MAX_REGIONS],
    n: 0,
    cur: 0,
    next: 0,
    free_head: 0,
});
static FREE: AtomicUsize = AtomicUsize::new(0);
static TOTAL: AtomicUsize = AtomicUsize::new(0);

/// Builds the frame allocator from the usable RAM of the memory map, above the
/// kernel image (and above 1 MiB: low memory holds the AP trampoline and the
/// loader's tables) and below [`PHYS_MAPPED`].
pub fn init_frames(info: &BootInfo) {
    let (_, kend) = crate::boot::kernel_range();
    let floor = kend.max(1 << 20).next_multiple_of(FRAME);
    let mut f = FRAMES.lock();
    let mut total = 0;
    for &MemEntry { addr, size, kind } in info.memmap() {
        if kind != 1 {
            continue;
        }
        let start = addr.max(floor).next_multiple_of(FRAME);
        let end = (addr + size).min(PHYS_MAPPED) & !(FRAME - 1);
        if start < end && f.n < MAX_REGIONS {
            let n = f.n;
            f.regions[n] = (start, end);
            f.n += 1;
            total += ((end - start) / FRAME) as usize;
        }
    }
    let n = f.n;
    f.regions[..n].sort_unstable();
    f.cur = 0;
    f.next = if f.n > 0 { f.regions[0].0 } else { 0 };
    f.free_head = 0;
    TOTAL.store(total, Ordering::SeqCst);
    FREE.store(total, Ordering::SeqCst);
}

/// Frames not handed out (never used or returned).
pub fn free_frames() -> usize {
    FREE.load(Ordering::SeqCst)
}

/// Usable frames managed by the allocator.
pub fn total_frames() -> usize {
    TOTAL.load(Ordering::SeqCst)
}

/// One 4 KiB frame (contents undefined), or `None` when RAM is exhausted.
pub fn alloc_frame() -> Option<u64> {
    let mut f = FRAMES.lock();
    if f.free_head != 0 {
        let p = f.free_head;
        // SAFETY: free frames hold the next link in their first word, mapped at PHYS_OFFSET.
        f.free_head = unsafe { (phys_to_virt(p) as *const u64).read() };
        FREE.fetch_sub(1, Ordering::SeqCst);
        return Some(p);
    }
    while f.cur < f.n {
        let (_, end) = f.regions[f.cur];
        if f.next < end {
            let p = f.next;
            f.next += FRAME;
            FREE.fetch_sub(1, Ordering::SeqCst);
            return Some(p);
        }
        f.cur += 1;
        if f.cur < f.n {
            f.next = f.regions[f.cur].0;
        }
    }
    None
}

/// Gives a frame back.
///
/// # Safety
/// `p` came from [`alloc_frame`] and nothing uses it any more (no mapping, no TLB entry).
pub unsafe fn free_frame(p: u64) {
    debug_assert!(p.is_multiple_of(FRAME) && p != 0);
    let mut f = FRAMES.lock();
    // SAFETY: the frame is ours again and mapped at PHYS_OFFSET.
    unsafe { (phys_to_virt(p) as *mut u64).write(f.free_head) };
    f.free_head = p;
    FREE.fetch_add(1, Ordering::SeqCst);
}

/// `x86_64`-crate frame allocator handle over the global frame allocator.
#[derive(Clone, Copy, Default, Debug)]
pub struct KFrames;

// SAFETY: every frame handed out is unused usable RAM, handed out once until freed.
unsafe impl FrameAllocator<Size4KiB> for KFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        alloc_frame().map(|p| PhysFrame::containing_address(PhysAddr::new(p)))
    }
}

impl FrameDeallocator<Size4KiB> for KFrames {
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame<Size4KiB>) {
        // SAFETY: forwarded from the caller.
        unsafe { free_frame(frame.start_address().as_u64()) }
    }
}

/// The kernel's page tables (the boot PML4, shared by every CPU) as an
/// `OffsetPageTable` over the physical-memory window.
///
/// # Safety
/// Call once: two mappers over the same tables would alias.
pub unsafe fn kernel_page_table() -> OffsetPageTable<'static> {
    // SAFETY: the PML4 is mapped at PHYS_OFFSET and outlives the kernel.
    let l4 = unsafe { &mut *(phys_to_virt(crate::boot::pml4_phys()) as *mut PageTable) };
    // SAFETY: all of RAM (and so every page table) is mapped at PHYS_OFFSET.
    unsafe { OffsetPageTable::new(l4, VirtAddr::new(PHYS_OFFSET)) }
}

/// Is `addr` mapped (present) in the kernel's page tables? Reads the tables
/// without the mapper's lock (for fault handlers).
pub fn is_mapped(addr: u64) -> bool {
    let Ok(va) = VirtAddr::try_new(addr) else {
        return false;
    };
    let mut table = phys_to_virt(crate::boot::pml4_phys()) as *const PageTable;
    let idx = [va.p4_index(), va.p3_index(), va.p2_index(), va.p1_index()];
    for (level, i) in idx.iter().enumerate() {
        // SAFETY: page tables are mapped at PHYS_OFFSET.
        let e = unsafe { &(&*table)[*i] };
        if !e.flags().contains(PageTableFlags::PRESENT) {
            return false;
        }
        if level == 3 || e.flags().contains(PageTableFlags::HUGE_PAGE) {
            return true;
        }
        table = phys_to_virt(e.addr().as_u64()) as *const PageTable;
    }
    true
}
