//! Scenario `boot`: the heap serves Box, Vec and String; the statistics count
//! what was done, and everything freed is no longer live.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use cortex_m_qemu::{check, hprintln, init_heap, pass, print_stats, HEAP, HEAP_BYTES};
use cortex_m_rt::entry;

#[entry]
fn main() -> ! {
    init_heap("boot");
    {
        let b = Box::new(0x1234_5678u32);
        check!(*b == 0x1234_5678, "Box holds {:#x}", *b);
        let v: Vec<u32> = (0..1000).collect();
        let sum: u32 = v.iter().sum();
        check!(sum == 499_500, "Vec sum {}", sum);
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
        let big = alloc::vec![7u8; 6000];
        check!(big.iter().all(|x| *x == 7), "6000-byte Vec corrupted");
        hprintln!(
            "boot: Box {:p}, Vec of 1000 u32 at {:p}, String of {} B, 20 boxes of 100 B, one Vec of 6000 B at {:p}",
            &*b,
            v.as_ptr(),
            s.len(),
            big.as_ptr()
        );
        let st = HEAP.stats();
        check!(st.mallocs >= 25, "mallocs {}", st.mallocs);
        check!(st.live_objects() >= 24, "live {}", st.live_objects());
    }
    let st = HEAP.stats();
    check!(
        st.live_objects() == 0,
        "{} objects still live after every drop",
        st.live_objects()
    );
    check!(
        st.heap_sys > 0 && st.heap_sys <= HEAP_BYTES as u64,
        "heap_sys {} for a region of {}",
        st.heap_sys,
        HEAP_BYTES
    );
    print_stats();
    hprintln!("cortex-m: boot ok");
    pass()
}
