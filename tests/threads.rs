//! Multi-thread stress: more threads than cores, every kind of object, remote
//! frees, and exact accounting once everything is joined.
//!
//! Every test has a heap of its own (a `static`), so the statistics checked at
//! the end are exact. Heaps keyed by `LockedSlots<4>` choose the slot from a
//! thread-local that each thread sets (several threads share each slot, and
//! the churn tests also "migrate" threads between slots while they run);
//! `LinuxHeap` uses the real CPU ids from `sched_getcpu`.
#![cfg(feature = "linux")]

mod common;

use core::alloc::Layout;
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use common::{set_slot, slots_heap, Rng};
use tieralloc::cpu::SpinThenYield;
use tieralloc::internals::ObjectKind;
use tieralloc::internals::NUM_CLASSES;
use tieralloc::{Cpu, Heap, LinuxHeap, LockedSlots, MmapSource, PageSource, TINY_BLOCK};

// ------------------------------------------------------------------ helpers

/// Four slots shared by 8 or 16 threads, chosen by `common::slot_of_thread`.
/// Waiting threads yield (more threads than cores: a spinning waiter would
/// burn the time slice of the holder).
type Slots4 = Heap<MmapSource, LockedSlots<4, SpinThenYield>>;

/// A live object: address, layout and the seed of its contents. Plain data, so
/// it can be sent to another thread.
#[derive(Clone, Copy, Debug)]
struct Obj {
    p: usize,
    size: usize,
    align: usize,
    seed: u8,
}

impl Obj {
    fn layout(&self) -> Layout {
        Layout::from_size_align(self.size, self.align).unwrap()
    }
}

#[inline(always)]
fn pat(seed: u8, i: usize) -> u8 {
    seed.wrapping_add(i as u8) ^ ((i >> 8) as u8)
}

fn fill(o: &Obj) {
    // SAFETY: `o` is a live object of `o.size` bytes owned by the caller.
    let s = unsafe { core::slice::from_raw_parts_mut(o.p as *mut u8, o.size) };
    for (i, b) in s.iter_mut().enumerate() {
        *b = pat(o.seed, i);
    }
}

/// Checks the first `upto` bytes of `o` hold `o`'s pattern.
fn verify(o: &Obj, upto: usize, what: &str) {
    // SAFETY: `o` is a live object of at least `upto` bytes owned by the caller.
    let s = unsafe { core::slice::from_raw_parts(o.p as *const u8, upto) };
    let ok = s
        .iter()
        .enumerate()
        .fold(true, |ok, (i, &b)| ok & (b == pat(o.seed, i)));
    if !ok {
        let i = s
            .iter()
            .enumerate()
            .position(|(i, &b)| b != pat(o.seed, i))
            .unwrap();
        panic!(
            "{what}: object {:#x} (size {}, align {}) corrupt at byte {i}: {:#04x}, expected {:#04x}",
            o.p,
            o.size,
            o.align,
            s[i],
            pat(o.seed, i)
        );
    }
}

/// A random layout: tiny (1..15 B, every alignment up to 8), small of every
/// class, small with large alignments, and large up to 1 MiB.
fn gen_layout(rng: &mut Rng, tiny_percent: usize) -> (usize, usize) {
    let r = rng.below(100);
    if r < tiny_percent {
        return (1 + rng.below(15), rng.pick(&[1, 2, 4, 8]));
    }
    match rng.below(100) {
        0..=44 => (16 + rng.below(512 - 16 + 1), 8),
        45..=79 => (513 + rng.below(32768 - 513 + 1), 8),
        80..=91 => (
            1 + rng.below(4096),
            rng.pick(&[16, 32, 64, 128, 256, 512, 4096]),
        ),
        92..=97 => (32769 + rng.below(96 << 10), rng.pick(&[8, 8, 8, 16 << 10])),
        _ => (32769 + rng.below((1 << 20) - 32768), 8),
    }
}

fn alloc_obj<S: PageSource + Sync, C: Cpu>(
    h: &Heap<S, C>,
    rng: &mut Rng,
    size: usize,
    align: usize,
) -> Obj {
    let l = Layout::from_size_align(size, align).unwrap();
    let p = if rng.below(8) == 0 {
        let p = h.allocate_zeroed(l);
        assert!(!p.is_null(), "out of memory for {l:?}");
        // SAFETY: fresh object of `size` bytes.
        let s = unsafe { core::slice::from_raw_parts(p, size) };
        assert!(
            s.iter().all(|&b| b == 0),
            "allocate_zeroed({l:?}) returned dirty memory at {p:p}"
        );
        p
    } else {
        h.allocate(l)
    };
    assert!(!p.is_null(), "out of memory for {l:?}");
    assert_eq!(p as usize % align, 0, "{p:p} misaligned for {l:?}");
    let o = Obj {
        p: p as usize,
        size,
        align,
        seed: rng.next_u64() as u8,
    };
    fill(&o);
    o
}

fn free_obj<S: PageSource + Sync, C: Cpu>(h: &Heap<S, C>, o: Obj, what: &str) {
    verify(&o, o.size, what);
    // SAFETY: `o` is live, allocated by `h` with this layout, and dropped here.
    unsafe { h.deallocate(o.p as *mut u8, o.layout()) };
}

/// Reallocates `o` to `new_size` (same alignment), checks the preserved prefix
/// and refills it. Returns the object and whether it moved (a move is one more
/// allocation in the statistics; an in-place resize is none).
fn realloc_obj<S: PageSource + Sync, C: Cpu>(
    h: &Heap<S, C>,
    rng: &mut Rng,
    o: Obj,
    new_size: usize,
    what: &str,
) -> (Obj, bool) {
    verify(&o, o.size, what);
    // SAFETY: `o` is live, allocated by `h` with this layout.
    let q = unsafe { h.reallocate(o.p as *mut u8, o.layout(), new_size) };
    assert!(!q.is_null(), "realloc {} -> {new_size} failed", o.size);
    assert_eq!(
        q as usize % o.align,
        0,
        "realloc result {q:p} misaligned to {}",
        o.align
    );
    let moved = Obj { p: q as usize, ..o };
    verify(&moved, o.size.min(new_size), "realloc kept prefix");
    let n = Obj {
        p: q as usize,
        size: new_size,
        align: o.align,
        seed: rng.next_u64() as u8,
    };
    fill(&n);
    (n, q as usize != o.p)
}

/// A new size for a realloc: nearby (often the same class or in-place large
/// resize) or anything.
fn realloc_size(rng: &mut Rng, old: usize) -> usize {
    match rng.below(4) {
        0 => (old + rng.below(64)).max(1),
        1 => (old - rng.below(old.min(64))).max(1),
        2 if old > 32768 => (old + rng.below(256 << 10)).min(1 << 20),
        _ => gen_layout(rng, 20).0,
    }
}

/// The checks at quiescence after every test: the identities of `stats.rs`,
/// nothing live but the current tiny blocks, then everything back to the OS.
fn check_quiescent<S: PageSource + Sync, C: Cpu>(h: &Heap<S, C>, label: &str, expect_mallocs: u64) {
    h.check_invariants();
    let st = h.stats();
    println!("{label}: after join\n{st}");
    assert_eq!(st.mallocs, st.frees, "{label}: objects leaked\n{st}");
    assert_eq!(
        st.mallocs, expect_mallocs,
        "{label}: mallocs != allocations made\n{st}"
    );
    assert_eq!(st.tiny_mallocs, st.tiny_frees, "{label}\n{st}");
    for c in 0..NUM_CLASSES {
        assert_eq!(
            st.by_size[c].mallocs, st.by_size[c].frees,
            "{label}: class {c}\n{st}"
        );
    }
    assert_eq!(st.large_alloc, 0, "{label}\n{st}");
    assert!(
        st.tiny_blocks <= st.cpus,
        "{label}: {} tiny blocks for {} slots\n{st}",
        st.tiny_blocks,
        st.cpus
    );
    assert_eq!(
        st.heap_alloc,
        TINY_BLOCK as u64 * st.tiny_blocks,
        "{label}: only current tiny blocks may stay\n{st}"
    );
    assert_eq!(st.heap_idle, st.heap_sys - st.heap_inuse, "{label}\n{st}");
    assert!(st.heap_released <= st.heap_idle, "{label}\n{st}");
    assert!(
        st.heap_alloc + st.cached_bytes <= st.heap_inuse,
        "{label}\n{st}"
    );

    h.scavenge();
    h.check_invariants();
    let st = h.stats();
    println!("{label}: after scavenge\n{st}");
    assert_eq!(st.heap_inuse, 0, "{label}\n{st}");
    assert_eq!(st.heap_alloc, 0, "{label}\n{st}");
    assert_eq!(st.tiny_blocks, 0, "{label}\n{st}");
    assert_eq!(st.cached_bytes, 0, "{label}\n{st}");
    assert_eq!(st.spans, 0, "{label}: spans left after scavenge\n{st}");
    assert_eq!(st.heap_idle, st.heap_sys, "{label}\n{st}");
    assert_eq!(st.heap_released, st.heap_idle, "{label}\n{st}");
    assert_eq!(st.mallocs, st.frees, "{label}\n{st}");
}

// -------------------------------------------------------- independent churn

/// One thread's churn: a pool of up to `pool` live objects, random alloc, free
/// and realloc, contents verified before every free and realloc. With
/// `migrate`, the thread changes slot now and then (a `LockedSlots` heap; the
/// `LinuxHeap` ignores the slot). Returns the allocations it made, reallocs
/// that moved included.
fn churn<S: PageSource + Sync, C: Cpu>(
    h: &Heap<S, C>,
    seed: u64,
    ops: usize,
    pool: usize,
    migrate: bool,
) -> u64 {
    let mut rng = Rng::new(seed);
    let mut made = 0;
    let mut live: Vec<Obj> = Vec::with_capacity(pool);
    for _ in 0..ops {
        if migrate && rng.below(64) == 0 {
            set_slot(rng.below(8));
        }
        let r = rng.below(100);
        if live.is_empty() || (live.len() < pool && r < 45) {
            let (size, align) = gen_layout(&mut rng, 30);
            live.push(alloc_obj(h, &mut rng, size, align));
            made += 1;
        } else if r < 85 {
            let i = rng.below(live.len());
            let o = live.swap_remove(i);
            free_obj(h, o, "churn free");
        } else {
            let i = rng.below(live.len());
            let new_size = realloc_size(&mut rng, live[i].size);
            let (o, moved) = realloc_obj(h, &mut rng, live[i], new_size, "churn realloc");
            live[i] = o;
            made += moved as u64;
        }
    }
    for o in live {
        free_obj(h, o, "churn drain");
    }
    made
}

fn run_churn<S: PageSource + Sync + 'static, C: Cpu + 'static>(
    h: &'static Heap<S, C>,
    label: &str,
    threads: usize,
    ops: usize,
    pool: usize,
    migrate: bool,
    scavenger: bool,
) {
    let t0 = Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Optionally a thread that scavenges and reads the statistics while the
    // others run (both are legal at any time).
    let bg = scavenger.then(|| {
        let done = done.clone();
        thread::spawn(move || {
            let mut rounds = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                h.scavenge();
                let st = h.stats();
                assert!(
                    st.heap_inuse <= st.heap_sys && st.heap_released <= st.heap_sys,
                    "{st}"
                );
                rounds += 1;
                thread::sleep(std::time::Duration::from_millis(2));
            }
            rounds
        })
    });
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            thread::spawn(move || {
                // Threads t and t + 4 (and t + 8 ...) share slot t % 4.
                set_slot(t);
                churn(h, 1000 + t as u64, ops, pool, migrate)
            })
        })
        .collect();
    let made: u64 = handles
        .into_iter()
        .map(|j| j.join().expect("churn thread panicked"))
        .sum();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = bg.map(|j| j.join().expect("scavenger thread panicked"));
    println!(
        "{label}: {threads} threads x {ops} ops in {:?}, scavenger rounds {rounds:?}",
        t0.elapsed()
    );
    check_quiescent(h, label, made);
}

#[test]
fn churn_8_threads_locked_slots() {
    static H: Slots4 = slots_heap();
    run_churn(&H, "churn/8/slots4", 8, 40_000, 300, false, false);
}

#[test]
fn churn_16_threads_locked_slots_migrating() {
    static H: Slots4 = slots_heap();
    run_churn(&H, "churn/16/slots4/migrate", 16, 20_000, 200, true, false);
}

#[test]
fn churn_16_threads_linux_heap() {
    static H: LinuxHeap = LinuxHeap::new();
    run_churn(&H, "churn/16/linux", 16, 20_000, 200, false, false);
}

/// No retained budget (every freed page goes back to the OS at once, and is
/// made ready again on reuse) and a thread that scavenges all the while.
#[test]
fn churn_8_threads_linux_heap_concurrent_scavenge() {
    static H: LinuxHeap = LinuxHeap::new();
    H.set_retain_bytes(0);
    run_churn(&H, "churn/8/linux/scavenging", 8, 40_000, 300, false, true);
}

// ---------------------------------------------------- producer / consumer

/// `producers` threads allocate and fill objects and route each one to a
/// random consumer (batches of 32 through bounded channels); `consumers`
/// threads verify, sometimes realloc (a remote free of the old object), and
/// free. Every free is on another thread than the allocation; consecutive tiny
/// objects, which share 64-byte blocks, go to different consumers, so a
/// block's sub-objects die on several threads at once.
fn run_prodcons<S: PageSource + Sync + 'static, C: Cpu + 'static>(
    h: &'static Heap<S, C>,
    label: &str,
    producers: usize,
    consumers: usize,
    per_producer: usize,
    tiny_percent: usize,
) {
    const BATCH: usize = 32;
    let t0 = Instant::now();
    let mut txs = Vec::new();
    let mut cons = Vec::new();
    for k in 0..consumers {
        let (tx, rx) = mpsc::sync_channel::<Vec<Obj>>(8);
        txs.push(tx);
        cons.push(thread::spawn(move || {
            // Consumers take slots after the producers': with 4 slots some
            // consumers share a slot with a producer, some with each other.
            set_slot(producers + k);
            let mut rng = Rng::new(77 + k as u64);
            let (mut n, mut reallocs) = (0u64, 0u64);
            for batch in rx {
                for o in batch {
                    n += 1;
                    if rng.below(8) == 0 {
                        let new_size = realloc_size(&mut rng, o.size);
                        let (o, moved) = realloc_obj(h, &mut rng, o, new_size, "consumer realloc");
                        reallocs += moved as u64;
                        free_obj(h, o, "consumer free after realloc");
                    } else {
                        free_obj(h, o, "consumer free");
                    }
                }
            }
            (n, reallocs)
        }));
    }
    let prods: Vec<_> = (0..producers)
        .map(|p| {
            let txs = txs.clone();
            thread::spawn(move || {
                set_slot(p);
                let mut rng = Rng::new(5000 + p as u64);
                let mut out: Vec<Vec<Obj>> =
                    (0..txs.len()).map(|_| Vec::with_capacity(BATCH)).collect();
                for _ in 0..per_producer {
                    let (size, align) = gen_layout(&mut rng, tiny_percent);
                    let o = alloc_obj(h, &mut rng, size, align);
                    let k = rng.below(txs.len());
                    out[k].push(o);
                    if out[k].len() == BATCH {
                        txs[k]
                            .send(core::mem::replace(&mut out[k], Vec::with_capacity(BATCH)))
                            .unwrap();
                    }
                }
                for (k, b) in out.into_iter().enumerate() {
                    if !b.is_empty() {
                        txs[k].send(b).unwrap();
                    }
                }
            })
        })
        .collect();
    drop(txs);
    for j in prods {
        j.join().expect("producer panicked");
    }
    let (mut consumed, mut reallocs) = (0, 0);
    for j in cons {
        let (n, r) = j.join().expect("consumer panicked");
        consumed += n;
        reallocs += r;
    }
    let made = (producers * per_producer) as u64;
    assert_eq!(consumed, made, "{label}: objects lost in transit");
    println!("{label}: {producers}P/{consumers}C x {per_producer} objects ({reallocs} remote reallocs that moved) in {:?}", t0.elapsed());
    check_quiescent(h, label, made + reallocs);
}

#[test]
fn producer_consumer_8_threads_locked_slots() {
    static H: Slots4 = slots_heap();
    run_prodcons(&H, "prodcons/4+4/slots4", 4, 4, 60_000, 40);
}

#[test]
fn producer_consumer_16_threads_locked_slots() {
    static H: Slots4 = slots_heap();
    run_prodcons(&H, "prodcons/8+8/slots4", 8, 8, 30_000, 40);
}

#[test]
fn producer_consumer_16_threads_linux_heap() {
    static H: LinuxHeap = LinuxHeap::new();
    run_prodcons(&H, "prodcons/8+8/linux", 8, 8, 30_000, 40);
}

/// Only tiny objects: every block's sub-objects are spread over 8 consumers,
/// so the block's last free races with its owner retiring it.
#[test]
fn producer_consumer_tiny_only() {
    static H: Slots4 = slots_heap();
    run_prodcons(&H, "prodcons/tiny/slots4", 4, 8, 300_000, 100);
}

#[test]
fn producer_consumer_tiny_only_linux_heap() {
    static H: LinuxHeap = LinuxHeap::new();
    run_prodcons(&H, "prodcons/tiny/linux", 8, 4, 150_000, 100);
}

/// A ObjectKind sanity check the workloads above rely on: the generators cover
/// tiny, every small path and large.
#[test]
fn generators_cover_every_kind() {
    let mut rng = Rng::new(1);
    let (mut tiny, mut small, mut large) = (0, 0, 0);
    let mut classes = [false; NUM_CLASSES];
    for _ in 0..200_000 {
        let (s, a) = gen_layout(&mut rng, 30);
        match ObjectKind::of(s, a) {
            ObjectKind::Tiny => tiny += 1,
            ObjectKind::Small(c) => {
                small += 1;
                classes[c.index()] = true;
            }
            ObjectKind::Large => large += 1,
        }
    }
    assert!(tiny > 0 && small > 0 && large > 0);
    let missing: Vec<_> = (2..NUM_CLASSES).filter(|&c| !classes[c]).collect();
    assert!(missing.is_empty(), "classes never generated: {missing:?}");
}
