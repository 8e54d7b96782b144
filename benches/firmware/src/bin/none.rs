//! The baseline: the same firmware and workload over an allocator that has
//! no heap (every allocation fails), whose code is next to nothing; its
//! `.text` is subtracted from the others'.
#![no_std]
#![no_main]

use core::alloc::{GlobalAlloc, Layout};
use core::hint::black_box;
use cortex_m_rt::entry;
use firmware_size::workload;

struct NoHeap;

// SAFETY: never hands out memory.
unsafe impl GlobalAlloc for NoHeap {
    unsafe fn alloc(&self, _: Layout) -> *mut u8 {
        black_box(core::ptr::null_mut())
    }
    unsafe fn dealloc(&self, p: *mut u8, _: Layout) {
        black_box(p);
    }
}

#[global_allocator]
static HEAP: NoHeap = NoHeap;

#[entry]
fn main() -> ! {
    let mut round = 0u32;
    loop {
        black_box(workload(round));
        round = round.wrapping_add(1);
    }
}
