//! Scenario `irq` (the board's main workload, `make run-cortex-m`): SysTick
//! fires every 100 µs of the guest clock, and its handler allocates, fills,
//! checks and frees objects, and keeps a ring of objects alive across its
//! runs, while the main loop churns long- and short-lived objects. A heap
//! operation masks interrupts (`CriticalSectionCpu`), so a tick that falls
//! inside one runs as soon as it ends, between two of the main loop's
//! operations; every object's contents are checked at its free.
#![no_std]
#![no_main]

use core::hint::black_box;
use core::sync::atomic::{AtomicU32, Ordering};
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_qemu::{check, hprintln, init_heap, pass, print_stats, Churn, Obj, Rng, HEAP};
use cortex_m_rt::{entry, exception};

/// Handler runs; only the handler writes them (a load and a store, no
/// read-modify-write, so it also builds for thumbv6m).
static TICKS: AtomicU32 = AtomicU32::new(0);
/// Objects the handler allocated.
static IRQ_ALLOCS: AtomicU32 = AtomicU32::new(0);
/// Set by the handler when an object it checked was corrupted.
static IRQ_BAD: AtomicU32 = AtomicU32::new(0);
/// Set by main when the handler should free its ring and stop allocating.
static STOP: AtomicU32 = AtomicU32::new(0);

/// SysTick reload: the machine's core clock is 12 MHz, so 1,200 cycles = 100 µs.
const RELOAD: u32 = 1_200;
/// The handler must have run at least this often, over at least this many main-loop ops.
const MIN_TICKS: u32 = 2_000;
const MIN_OPS: u64 = 100_000;
/// If the ticks have not come by then, SysTick does not fire.
const MAX_OPS: u64 = 5_000_000;

#[exception]
fn SysTick() {
    static mut RING: [Option<(Obj, u32)>; 8] = [const { None }; 8];
    static mut RNG: Rng = Rng::new(0x1357_9bdf);
    static mut TAG: u32 = 0x8000_0000;
    if STOP.load(Ordering::Relaxed) != 0 {
        for slot in RING.iter_mut() {
            if let Some((o, t)) = slot.take() {
                if !o.check(t) {
                    IRQ_BAD.store(1, Ordering::Relaxed);
                }
            }
        }
        return;
    }
    let mut allocs = 0;
    // Two objects that live for the handler's run only.
    for _ in 0..2 {
        *TAG = TAG.wrapping_add(0x61c8_8647);
        let o = Obj::new(RNG.range(8, 256), *TAG);
        black_box(o.addr());
        if !o.check(*TAG) {
            IRQ_BAD.store(1, Ordering::Relaxed);
        }
        allocs += 1;
    }
    // One ring slot replaced: its object lives across eight runs, over the main loop's work.
    let i = RNG.next_u32() as usize % RING.len();
    if let Some((o, t)) = RING[i].take() {
        if !o.check(t) {
            IRQ_BAD.store(1, Ordering::Relaxed);
        }
    }
    *TAG = TAG.wrapping_add(0x61c8_8647);
    RING[i] = Some((Obj::new(RNG.range(8, 256), *TAG), *TAG));
    allocs += 1;
    IRQ_ALLOCS.store(
        IRQ_ALLOCS.load(Ordering::Relaxed) + allocs,
        Ordering::Relaxed,
    );
    TICKS.store(TICKS.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

#[entry]
fn main() -> ! {
    init_heap("irq");
    let mut p = cortex_m::Peripherals::take().unwrap();
    let mut c = Churn::new(0x2545_f491, 16, 32);
    p.SYST.set_clock_source(SystClkSource::Core);
    p.SYST.set_reload(RELOAD - 1);
    p.SYST.clear_current();
    p.SYST.enable_interrupt();
    p.SYST.enable_counter();
    while TICKS.load(Ordering::Relaxed) < MIN_TICKS || c.ops < MIN_OPS {
        c.step();
        check!(
            c.ops < MAX_OPS,
            "irq: only {} SysTick runs in {} main-loop ops: SysTick does not fire",
            TICKS.load(Ordering::Relaxed),
            c.ops
        );
    }
    // One more tick frees the handler's ring; then SysTick goes off.
    STOP.store(1, Ordering::Relaxed);
    let t = TICKS.load(Ordering::Relaxed);
    cortex_m::peripheral::SCB::set_pendst();
    cortex_m::asm::dsb();
    cortex_m::asm::isb();
    p.SYST.disable_interrupt();
    p.SYST.disable_counter();
    let live = c.finish();
    check!(
        IRQ_BAD.load(Ordering::Relaxed) == 0,
        "irq: the handler found a corrupted object"
    );
    let ticks = TICKS.load(Ordering::Relaxed);
    check!(ticks >= t, "irq: ticks went back");
    hprintln!(
        "irq: main loop {} ops ({} bytes, {} objects live at the end); SysTick handler {} runs, {} objects allocated, checked and freed in it; all contents intact",
        c.ops,
        c.bytes,
        live,
        ticks,
        IRQ_ALLOCS.load(Ordering::Relaxed)
    );
    drop(c);
    let st = HEAP.stats();
    check!(
        st.live_objects() == 0,
        "irq: {} objects live at the end",
        st.live_objects()
    );
    print_stats();
    hprintln!("--- per-CPU summary ---");
    hprintln!(
        "cpu 0 (one slot, CriticalSectionCpu): {} mallocs, {} frees; {} of the mallocs in the SysTick handler",
        st.mallocs,
        st.frees,
        IRQ_ALLOCS.load(Ordering::Relaxed)
    );
    hprintln!("cortex-m: irq ok");
    pass()
}
