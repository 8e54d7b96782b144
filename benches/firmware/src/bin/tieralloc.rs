//! The workload with the tieralloc heap as the global allocator.
#![no_std]
#![no_main]

use core::hint::black_box;
use cortex_m_rt::entry;
use firmware_size::{heap_start, workload, HEAP_BYTES};
use tieralloc::{CriticalSectionCpu, Heap, RegionSource};

#[global_allocator]
static HEAP: Heap<RegionSource, CriticalSectionCpu> =
    Heap::new(RegionSource::empty(), CriticalSectionCpu::new());

#[entry]
fn main() -> ! {
    // SAFETY: the region is the heap's alone, set once before any allocation.
    unsafe { HEAP.source().set_region(heap_start(), HEAP_BYTES) };
    let mut round = 0u32;
    loop {
        black_box(workload(round));
        round = round.wrapping_add(1);
    }
}
