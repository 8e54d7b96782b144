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
    // 48 long-lived objects (one op in 64 replaces one) and 112 short-lived
    // ones: about 21 KiB requested of the 32 KiB heap's 31 KiB of blocks.
    let mut c = Churn::new(0x2545_f491, 48, 112);
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
