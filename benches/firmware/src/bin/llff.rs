//! The workload with the llff heap as the global allocator.
#![no_std]
#![no_main]

use core::hint::black_box;
use cortex_m_rt::entry;
use firmware_size::{heap_start, workload, HEAP_BYTES};

#[global_allocator]
static HEAP: embedded_alloc::LlffHeap = embedded_alloc::LlffHeap::empty();

#[entry]
fn main() -> ! {
    // SAFETY: the region is the heap's alone, set once before any allocation.
    unsafe { HEAP.init(heap_start() as usize, HEAP_BYTES) };
    let mut round = 0u32;
    loop {
        black_box(workload(round));
        round = round.wrapping_add(1);
    }
}
