//! What every firmware of the code-size bench shares: the heap region, the
//! panic handler, and the workload — a few allocations of different sizes,
//! written, read and freed, so that the allocation, free and realloc paths
//! are all linked in and none is optimised away.
#![no_std]

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::hint::black_box;

/// Bytes of the heap region.
pub const HEAP_BYTES: usize = 32 * 1024;

/// The heap region, handed to the heap by each firmware's `main`.
pub static mut HEAP_MEM: [u8; HEAP_BYTES] = [0; HEAP_BYTES];

/// The region's start.
pub fn heap_start() -> *mut u8 {
    // Only the address is taken; the heap owns the bytes afterwards.
    core::ptr::addr_of_mut!(HEAP_MEM).cast()
}

/// Allocates, writes, grows, reads and frees; returns a checksum so nothing is dead.
pub fn workload(round: u32) -> u32 {
    let mut sum = 0u32;
    let mut v: Vec<u32> = Vec::new();
    for i in 0..black_box(100u32) {
        v.push(i ^ round);
    }
    let b = black_box(Box::new([round as u8; 200]));
    let big: Vec<u8> = black_box(alloc::vec![1u8; black_box(3000)]);
    for x in &v {
        sum = sum.wrapping_add(*x);
    }
    sum = sum.wrapping_add(b[7] as u32 + big[2999] as u32);
    drop(big);
    drop(b);
    sum
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    cortex_m::asm::udf()
}
