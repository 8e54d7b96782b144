//! The workload with the talc heap as the global allocator.
#![no_std]
#![no_main]

use core::hint::black_box;
use cortex_m_rt::entry;
use firmware_size::{heap_start, workload, HEAP_BYTES};

#[global_allocator]
static HEAP: talc::TalcLock<spinning_top::RawSpinlock, talc::source::Manual> =
    talc::TalcLock::new(talc::source::Manual);

#[entry]
fn main() -> ! {
    // SAFETY: the region is the heap's alone, claimed once before any allocation.
    if unsafe { HEAP.lock().claim(heap_start(), HEAP_BYTES) }.is_none() {
        panic!("talc refused its region");
    }
    let mut round = 0u32;
    loop {
        black_box(workload(round));
        round = round.wrapping_add(1);
    }
}
