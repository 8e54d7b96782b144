//! Scenario `boot`: all four harts come up, each prints its index and
//! allocates a Box, a Vec and a String from the shared heap (through its own
//! per-hart cache); hart 0 waits for the others and prints the statistics.
#![no_std]
#![no_main]
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

extern crate alloc;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::{AtomicUsize, Ordering};
use riscv_qemu::{check, init_heap, pass, print_stats, println, wait_heap, HARTS, HEAP};

/// Harts that finished their allocations.
static DONE: AtomicUsize = AtomicUsize::new(0);

fn work(hart: usize) {
    let b = Box::new(0x1234_5678u32 + hart as u32);
    check!(*b == 0x1234_5678 + hart as u32, "Box holds {:#x}", *b);
    let v: Vec<u32> = (0..1000).map(|i| i * (hart as u32 + 1)).collect();
    let sum: u32 = v.iter().sum();
    check!(sum == 499_500 * (hart as u32 + 1), "Vec sum {}", sum);
    let mut s = String::new();
    for i in 0..50 {
        write!(s, "{i},").unwrap();
    }
    check!(s.len() == 140 && s.starts_with("0,1,2,"), "String {:?}", s);
    let boxes: Vec<Box<[u8; 100]>> = (0..20).map(|i| Box::new([i as u8; 100])).collect();
    check!(
        boxes
            .iter()
            .enumerate()
            .all(|(i, b)| b.iter().all(|x| *x == i as u8)),
        "boxes corrupted"
    );
    let big = alloc::vec![hart as u8; 6000];
    check!(
        big.iter().all(|x| *x == hart as u8),
        "6000-byte Vec corrupted"
    );
    println!(
        "boot: hart {} up: Box {:p}, Vec of 1000 u32 at {:p}, String of {} B, 20 boxes of 100 B, one Vec of 6000 B at {:p}",
        hart,
        &*b,
        v.as_ptr(),
        s.len(),
        big.as_ptr()
    );
}

#[no_mangle]
extern "C" fn hart_main(hart: usize) -> ! {
    if hart == 0 {
        init_heap("boot");
    } else {
        wait_heap();
    }
    work(hart);
    DONE.fetch_add(1, Ordering::AcqRel);
    if hart != 0 {
        loop {
            core::hint::spin_loop();
        }
    }
    while DONE.load(Ordering::Acquire) < HARTS {
        core::hint::spin_loop();
    }
    let st = HEAP.stats();
    check!(
        st.live_objects() == 0,
        "{} objects still live after every drop",
        st.live_objects()
    );
    check!(st.mallocs >= 4 * 25, "mallocs {}", st.mallocs);
    check!(st.cpus == HARTS as u64, "{} per-CPU caches", st.cpus);
    print_stats();
    println!("riscv: boot ok");
    pass()
}
