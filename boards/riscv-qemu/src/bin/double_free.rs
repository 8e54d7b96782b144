//! Scenario `double_free` (feature `checks`): freeing the same pointer twice
//! through `alloc::alloc::dealloc` panics in tieralloc with the address; the
//! panic handler prints it and QEMU exits with the failure status. Reaching
//! the end is the failure.
#![no_std]
#![no_main]
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

extern crate alloc;

use alloc::alloc::{dealloc, Layout};
use alloc::boxed::Box;
use core::hint::black_box;
use riscv_qemu::{fail, init_heap, println, wait_heap};

#[no_mangle]
extern "C" fn hart_main(hart: usize) -> ! {
    if hart != 0 {
        wait_heap();
        loop {
            core::hint::spin_loop();
        }
    }
    init_heap("double_free");
    let b = Box::new([7u64; 6]);
    let keep = Box::new([9u64; 6]);
    let p = Box::into_raw(b).cast::<u8>();
    let l = Layout::new::<[u64; 6]>();
    println!(
        "double_free: allocated {:p} and {:p}; freeing {:p} twice",
        p, &*keep, p
    );
    // SAFETY: the first free is legitimate (the Box's own block and layout);
    // the second is the bug under test, which `checks` turns into a panic.
    unsafe {
        dealloc(p, l);
        dealloc(black_box(p), l);
    }
    println!("double_free: NOT detected");
    fail()
}
