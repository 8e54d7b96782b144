//! Scenario `double_free` (feature `checks`): freeing the same pointer twice
//! panics in tieralloc with the address; the panic handler prints it and QEMU
//! exits with the failure status. Reaching the end is the failure.
#![no_std]
#![no_main]

use core::alloc::Layout;
use core::hint::black_box;
use cortex_m_qemu::{fail, hprintln, init_heap, HEAP};
use cortex_m_rt::entry;

#[entry]
fn main() -> ! {
    init_heap("double_free");
    let l = Layout::from_size_align(48, 8).unwrap();
    let p = HEAP.allocate(l);
    let q = HEAP.allocate(l);
    hprintln!(
        "double_free: allocated {:p} and {:p}; freeing {:p} twice",
        p,
        q,
        p
    );
    // SAFETY: the first free is legitimate; the second is the bug under test,
    // which the `checks` feature turns into a panic before any state changes.
    unsafe {
        HEAP.deallocate(p, l);
        HEAP.deallocate(black_box(p), l);
    }
    hprintln!("double_free: NOT detected");
    fail()
}
