//! Scenario `churn`: long- and short-lived objects of random sizes (8..=256 B),
//! every object's contents written and checked at its free.
#![no_std]
#![no_main]

use cortex_m_qemu::{check, hprintln, init_heap, pass, print_stats, Churn, HEAP};
use cortex_m_rt::entry;

/// Operations of the churn.
const OPS: u64 = 100_000;

#[entry]
fn main() -> ! {
    init_heap("churn");
    // 24 long-lived objects (one op in 64 replaces one) and 40 short-lived ones:
    // about 8.4 KiB requested, up to 16 KiB with the class rounding of a small
    // heap (80 objects ran this 32 KiB heap out of memory after ~280,000 ops).
    let mut c = Churn::new(0x2545_f491, 24, 40);
    while c.ops < OPS {
        c.step();
    }
    let live = c.finish();
    hprintln!(
        "churn: {} ops, {} bytes allocated, {} objects live at the end, all contents intact",
        c.ops,
        c.bytes,
        live
    );
    drop(c);
    let st = HEAP.stats();
    check!(
        st.live_objects() == 0,
        "{} objects live after the churn",
        st.live_objects()
    );
    check!(st.mallocs >= OPS, "mallocs {} < ops {}", st.mallocs, OPS);
    print_stats();
    hprintln!("cortex-m: churn ok");
    pass()
}
