//! Free memory decays by time (`pageheap::scavenger`, "Decay"): memory that
//! stays free and unused for the decay period goes back to the source at the
//! next poll, whatever the program does next — here nothing but malloc/free
//! pairs that hit a CPU cache, the case no page-heap event would catch. The
//! source's clock is moved by hand ([`CheckedSource::set_now_ms`]), and the
//! source's own page states say what was released.
#![cfg(feature = "linux")]

use core::alloc::Layout;

use tieralloc::internals::CheckedSource;
use tieralloc::{Cpu, Heap, LinuxCpu, MmapSource, PageSource, SingleCpu, DEFAULT_RETAIN_BYTES};

type Counting = CheckedSource<MmapSource, { MmapSource::ARENA_BYTES }>;

const MIB: usize = 1 << 20;

/// Builds a peak of `mib` MiB (small and large objects, every byte
/// written) and frees it all.
fn peak_and_free<C: Cpu>(h: &Heap<Counting, C>, mib: usize) {
    let mut objs = Vec::new();
    let mut total = 0;
    let mut k = 0usize;
    while total < mib * MIB {
        let size = if k.is_multiple_of(2) { 256 } else { 96 * 1024 };
        let l = Layout::from_size_align(size, 8).unwrap();
        let p = h.allocate(l);
        assert!(!p.is_null());
        // SAFETY: a fresh object of `size` bytes.
        unsafe { p.write_bytes(k as u8, size) };
        objs.push((p, l));
        total += size;
        k += 1;
    }
    for (p, l) in objs {
        // SAFETY: allocated above with `l`.
        unsafe { h.deallocate(p, l) };
    }
}

/// Bytes of arena pages the source holds Ready (what costs memory).
fn ready(h: &Heap<Counting, impl Cpu>) -> usize {
    h.source().arena_bytes().1
}

/// `n` malloc/free pairs of one small size: after the first, every one hits
/// the CPU cache.
fn pairs<C: Cpu>(h: &Heap<Counting, C>, n: usize) {
    let l = Layout::from_size_align(64, 8).unwrap();
    for i in 0..n {
        let p = h.allocate(l);
        assert!(!p.is_null());
        // SAFETY: a fresh 64-byte object.
        unsafe {
            p.write_bytes(i as u8, 64);
            h.deallocate(core::hint::black_box(p), l);
        }
    }
}

fn decays<C: Cpu>(h: &Heap<Counting, C>) {
    let src = h.source();
    src.set_now_ms(10_000);
    peak_and_free(h, 64);
    let peak = ready(h);
    assert!(
        peak > 60 * MIB,
        "the pacer keeps the freed peak ({peak} B Ready)"
    );
    // A whole period of cache-hitting pairs after the free: nothing decays
    // yet (the memory was in use during the slot the free ended).
    let mut t = 10_000;
    while t < 10_000 + 1_000 {
        t += 50;
        src.set_now_ms(t);
        pairs(h, 5_000);
    }
    // (The pairs' own span is new Ready memory.)
    assert!(
        ready(h) >= peak,
        "released before the memory was idle for a whole period"
    );
    // Another slot and a half of the same: what stayed idle goes, down to
    // the retained floor.
    while t < 10_000 + 1_400 {
        t += 50;
        src.set_now_ms(t);
        pairs(h, 5_000);
    }
    let kept = ready(h);
    assert!(
        kept <= DEFAULT_RETAIN_BYTES + 4 * MIB,
        "{kept} B Ready after the decay period (floor {DEFAULT_RETAIN_BYTES})"
    );
    let st = h.stats();
    assert_eq!(
        st.heap_released as usize,
        src.arena_bytes().0,
        "the heap's released bytes are the source's Prepared bytes"
    );
    // The heap still works, and reuses released memory before it grows.
    let sys = st.heap_sys;
    peak_and_free(h, 32);
    assert_eq!(h.stats().heap_sys, sys, "the rebuild grew the heap");
    h.check_invariants();
}

/// Locked caches (every malloc pops under the CPU's slot).
#[test]
fn idle_memory_decays_under_cache_hits_single_cpu() {
    let h = Heap::new(Counting::new(MmapSource::new()), SingleCpu::new());
    decays(&h);
}

/// rseq caches (every malloc a restartable sequence; tests/rseq.rs already
/// requires rseq of the machine the tests run on). The rseq fast path exists
/// on x86_64 only; elsewhere `LinuxCpu` runs locked and the test still runs.
#[test]
fn idle_memory_decays_under_cache_hits_linux_cpu() {
    let h = Box::new(Heap::new(Counting::new(MmapSource::new()), LinuxCpu::new()));
    decays(&h);
    if cfg!(target_arch = "x86_64") {
        assert!(h.stats().rseq, "the pairs ran on the rseq fast path");
    }
}

/// `set_decay_ms(u64::MAX)` keeps everything the pacer allows; a shorter
/// period releases sooner; the explicit poll [`Heap::decay`] works alone.
#[test]
fn decay_period_is_configurable() {
    let h = Heap::new(Counting::new(MmapSource::new()), SingleCpu::new());
    let src = h.source();
    h.set_decay_ms(u64::MAX);
    src.set_now_ms(1);
    peak_and_free(&h, 48);
    let peak = ready(&h);
    for t in 1..100 {
        src.set_now_ms(1 + t * 1_000);
        assert_eq!(h.decay(), 0);
    }
    assert_eq!(ready(&h), peak, "decay off: nothing released");

    h.set_decay_ms(100);
    let mut released = 0;
    for t in 0..10 {
        src.set_now_ms(200_000 + t * 25);
        released += h.decay();
    }
    assert!(released > 0, "a 100 ms period released nothing in 250 ms");
    assert_eq!(
        peak - ready(&h),
        released,
        "Heap::decay reports what the source saw"
    );
    assert!(ready(&h) <= DEFAULT_RETAIN_BYTES + 4 * MIB);
    assert!(MmapSource::CLOCK && MmapSource::new().now_ms() > 0);
}

/// A large buffer freed just before a pause (the C realloc-growth case of
/// issue 15): the first cache-hitting activity after the pause releases it,
/// without another period of activity. The free itself polls, so the slots
/// of the pause count as idle from it.
#[test]
fn memory_freed_before_a_pause_goes_at_the_next_activity() {
    for shrink in [false, true] {
        let h = Heap::new(Counting::new(MmapSource::new()), SingleCpu::new());
        let src = h.source();
        src.set_now_ms(10_000);
        pairs(&h, 5_000);
        let l = Layout::from_size_align(48 * MIB, 8).unwrap();
        let p = h.allocate(l);
        assert!(!p.is_null());
        // SAFETY: a fresh object of 48 MiB.
        unsafe { p.write_bytes(1, l.size()) };
        src.set_now_ms(10_100);
        let q = if shrink {
            // SAFETY: ours, allocated with `l`: shrunk to a small object (a move).
            unsafe { h.reallocate(p, l, 1024) }
        } else {
            // SAFETY: ours, allocated with `l`.
            unsafe { h.deallocate(p, l) };
            core::ptr::null_mut()
        };
        let before = ready(&h);
        assert!(before > 48 * MIB, "{before} B Ready after the free");
        src.set_now_ms(11_600);
        pairs(&h, 5_000);
        let after = ready(&h);
        assert!(
            after <= DEFAULT_RETAIN_BYTES + 4 * MIB,
            "shrink {shrink}: {after} B Ready at the first activity after a 1.5 s pause"
        );
        if shrink {
            // SAFETY: the 1 KiB object `reallocate` returned.
            unsafe { h.deallocate(q, Layout::from_size_align(1024, 8).unwrap()) };
        }
        h.check_invariants();
    }
}
