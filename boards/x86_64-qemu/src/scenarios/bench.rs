//! The bench: the same workloads on tieralloc (the kernel heap) and on a
//! `linked_list_allocator::LockedHeap` over its own region, in the same boot,
//! single CPU; then the stress workload on 1 CPU and on every CPU, for both.
//!
//! Each tieralloc run does a fixed number of operations (or stops at its time
//! budget); each linked_list_allocator run stops at its time budget. Set-up
//! (filling the live set) and tear-down are not timed. Rates are operations per
//! second of the emulated machine's TSC.

use alloc::vec::Vec;
use core::alloc::{GlobalAlloc, Layout};

use linked_list_allocator::LockedHeap;

use super::work::{drain, stress_worker, Mailboxes, Tallies};
use super::{Draw, Rng};
use crate::kheap::HEAP;
use crate::time::{per_sec, Secs, Watch};
use crate::{check, kheap, print, println, smp, Machine};

#[derive(Clone, Copy, Default)]
struct Run {
    ops: u64,
    ns: u64,
    errors: u64,
}

impl Run {
    fn rate(&self) -> u64 {
        per_sec(self.ops, self.ns)
    }
}

/// `live` objects of `lo..=hi` bytes, each op frees a random one and allocates a replacement.
fn churn<A: GlobalAlloc>(
    a: &A,
    live: usize,
    lo: u64,
    hi: u64,
    max_ops: u64,
    budget_ns: u64,
) -> Run {
    let mut rng = Rng::new(live as u64 ^ hi);
    let mut slots: Vec<(*mut u8, usize)> = Vec::with_capacity(live);
    let mut r = Run::default();
    for _ in 0..live {
        let s = rng.between(lo, hi) as usize;
        // SAFETY: non-zero size.
        let p = unsafe { a.alloc(Layout::from_size_align_unchecked(s, 8)) };
        if p.is_null() {
            r.errors += 1;
            break;
        }
        // SAFETY: fresh object of `s` >= 8 bytes.
        unsafe { (p as *mut u64).write(s as u64) };
        slots.push((p, s));
    }
    if slots.len() < live {
        free_all(a, &slots);
        return r;
    }
    let w = Watch::start();
    while r.ops < max_ops {
        if r.ops % 256 == 0 && w.ns() > budget_ns {
            break;
        }
        let k = (rng.next_u64() % live as u64) as usize;
        let (p, s) = slots[k];
        // SAFETY: live object of `s` bytes, tagged with its size.
        unsafe {
            if (p as *const u64).read() != s as u64 {
                r.errors += 1;
            }
            a.dealloc(p, Layout::from_size_align_unchecked(s, 8));
        }
        let s = rng.between(lo, hi) as usize;
        // SAFETY: non-zero size.
        let p = unsafe { a.alloc(Layout::from_size_align_unchecked(s, 8)) };
        if p.is_null() {
            r.errors += 1;
            slots[k] = (core::ptr::null_mut(), 0);
            break;
        }
        // SAFETY: fresh.
        unsafe { (p as *mut u64).write(s as u64) };
        slots[k] = (p, s);
        r.ops += 1;
    }
    r.ns = w.ns();
    free_all(a, &slots);
    r
}

fn free_all<A: GlobalAlloc>(a: &A, slots: &[(*mut u8, usize)]) {
    for &(p, s) in slots {
        if !p.is_null() {
            // SAFETY: live objects of their sizes.
            unsafe { a.dealloc(p, Layout::from_size_align_unchecked(s, 8)) };
        }
    }
}

/// Allocate `batch` objects of `size`, free them in reverse; an op = one alloc + one free.
fn lifo<A: GlobalAlloc>(a: &A, batch: usize, size: usize, max_ops: u64, budget_ns: u64) -> Run {
    let mut v: Vec<*mut u8> = Vec::with_capacity(batch);
    let l = Layout::from_size_align(size, 8).unwrap();
    let mut r = Run::default();
    let w = Watch::start();
    while r.ops < max_ops && w.ns() < budget_ns {
        for i in 0..batch {
            // SAFETY: non-zero size.
            let p = unsafe { a.alloc(l) };
            if p.is_null() {
                r.errors += 1;
                break;
            }
            // SAFETY: fresh.
            unsafe { p.write(i as u8) };
            v.push(p);
        }
        while let Some(p) = v.pop() {
            // SAFETY: live.
            unsafe {
                if *p != v.len() as u8 {
                    r.errors += 1;
                }
                a.dealloc(p, l);
            }
            r.ops += 1;
        }
    }
    r.ns = w.ns();
    r
}

/// A FIFO of `depth` objects of `lo..=hi` bytes: allocate the newest, free the oldest.
fn fifo<A: GlobalAlloc>(
    a: &A,
    depth: usize,
    lo: u64,
    hi: u64,
    max_ops: u64,
    budget_ns: u64,
) -> Run {
    let mut rng = Rng::new(depth as u64);
    let mut ring: Vec<(*mut u8, usize)> = alloc::vec![(core::ptr::null_mut(), 0); depth];
    let mut r = Run::default();
    let w = Watch::start();
    let mut i = 0;
    while r.ops < max_ops {
        if r.ops % 256 == 0 && w.ns() > budget_ns {
            break;
        }
        let (p, s) = ring[i];
        if !p.is_null() {
            // SAFETY: live.
            unsafe { a.dealloc(p, Layout::from_size_align_unchecked(s, 8)) };
        }
        let s = rng.between(lo, hi) as usize;
        // SAFETY: non-zero size.
        let p = unsafe { a.alloc(Layout::from_size_align_unchecked(s, 8)) };
        if p.is_null() {
            r.errors += 1;
            ring[i] = (core::ptr::null_mut(), 0);
            break;
        }
        // SAFETY: fresh.
        unsafe { p.write(1) };
        ring[i] = (p, s);
        i = (i + 1) % depth;
        r.ops += 1;
    }
    r.ns = w.ns();
    free_all(a, &ring);
    r
}

/// Grow a buffer from 16 B to 64 KiB by doubling with `realloc`, free it; an op = one realloc.
fn realloc_grow<A: GlobalAlloc>(a: &A, max_ops: u64, budget_ns: u64) -> Run {
    let mut r = Run::default();
    let w = Watch::start();
    while r.ops < max_ops && w.ns() < budget_ns {
        let mut size = 16;
        // SAFETY: non-zero size.
        let mut p = unsafe { a.alloc(Layout::from_size_align_unchecked(size, 8)) };
        if p.is_null() {
            r.errors += 1;
            break;
        }
        // SAFETY: fresh.
        unsafe { p.write(0x42) };
        while size < 64 << 10 {
            // SAFETY: `p` is live with `size` bytes.
            let q = unsafe { a.realloc(p, Layout::from_size_align_unchecked(size, 8), size * 2) };
            if q.is_null() {
                r.errors += 1;
                break;
            }
            size *= 2;
            p = q;
            // SAFETY: live, `size` bytes.
            unsafe {
                if *p != 0x42 {
                    r.errors += 1;
                }
                p.add(size - 1).write(1);
            }
            r.ops += 1;
        }
        // SAFETY: live with the current size.
        unsafe { a.dealloc(p, Layout::from_size_align_unchecked(size, 8)) };
    }
    r.ns = w.ns();
    r
}

fn ratio_x100(a: u64, b: u64) -> u64 {
    (a as u128 * 100 / (b.max(1) as u128)) as u64
}

struct X100(u64);
impl core::fmt::Display for X100 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{:02}x", self.0 / 100, self.0 % 100)
    }
}

impl X100 {
    /// The value as nanoseconds (`12.34 ns`).
    fn to_ns(&self) -> alloc::string::String {
        alloc::format!("{}.{:02} ns", self.0 / 100, self.0 % 100)
    }
}

pub fn bench(m: &Machine) -> bool {
    let scale: u64 = m
        .info
        .arg("scale")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let t_budget: u64 = 1_500_000_000 * scale; // per tieralloc run, ns
    let l_budget: u64 = 2_000_000_000 * scale; // per linked_list_allocator run, ns
    let lla: &'static LockedHeap =
        kheap::new_lla(64 << 20).expect("bench: cannot map 64 MiB for the LockedHeap");
    println!("bench: tieralloc (kernel heap) vs linked_list_allocator::LockedHeap over its own 64 MiB region, same boot, CPU 0");
    println!(
        "bench: tieralloc runs stop at {} or their op count, linked_list_allocator runs at {}",
        Secs(t_budget),
        Secs(l_budget)
    );
    println!(
        "{:<36} {:>14} {:>14} {:>10}",
        "workload (single CPU)", "tieralloc/s", "lla/s", "ratio"
    );
    let mut ok = true;
    let mut churn_ratio = 0;
    let mut all_ahead = true;
    type W = fn(&dyn GlobalAllocDyn, u64, u64) -> Run;
    let workloads: [(&str, W, u64); 6] = [
        (
            "churn 10,000 live, 8..512 B",
            |a, n, b| a.churn(10_000, 8, 512, n, b),
            2_000_000,
        ),
        (
            "lifo batches of 1,000 x 64 B",
            |a, n, b| a.lifo(1000, 64, n, b),
            2_000_000,
        ),
        (
            "fifo depth 1,000, 16..256 B",
            |a, n, b| a.fifo(1000, 16, 256, n, b),
            2_000_000,
        ),
        (
            "churn 2,000 live, 8 B..4 KiB",
            |a, n, b| a.churn(2000, 8, 4096, n, b),
            2_000_000,
        ),
        (
            "churn 64 live, 64..256 KiB",
            |a, n, b| a.churn(64, 64 << 10, 256 << 10, n, b),
            200_000,
        ),
        (
            "realloc 16 B -> 64 KiB doubling",
            |a, n, b| a.realloc_grow(n, b),
            1_000_000,
        ),
    ];
    const REPS: u64 = 5;
    // `only=WORDS`: run just the single-CPU workloads whose name starts with WORDS,
    // spaces written as `_` (`only=churn_64`), to profile one workload from the
    // host; the stress part is skipped.
    let only = m.info.arg("only");
    for (name, f, max_ops) in workloads {
        if only.is_some_and(|w| !name.replace(' ', "_").starts_with(w)) {
            continue;
        }
        // An untimed warm-up slice each (growing the heap to the workload's
        // size, first touches of fresh frames by the emulator), then interleaved
        // timed slices (tieralloc, lla, tieralloc, ...) so both see the same host load.
        let wt = f(&HEAP, max_ops / REPS / 2, t_budget / REPS / 2);
        let wl = f(lla, max_ops / REPS / 2, l_budget / REPS / 2);
        let (mut t, mut l) = (
            Run {
                errors: wt.errors,
                ..Run::default()
            },
            Run {
                errors: wl.errors,
                ..Run::default()
            },
        );
        for _ in 0..REPS {
            let a = f(&HEAP, max_ops / REPS, t_budget / REPS);
            let b = f(lla, max_ops / REPS, l_budget / REPS);
            t = Run {
                ops: t.ops + a.ops,
                ns: t.ns + a.ns,
                errors: t.errors + a.errors,
            };
            l = Run {
                ops: l.ops + b.ops,
                ns: l.ns + b.ns,
                errors: l.errors + b.errors,
            };
        }
        let ratio = ratio_x100(t.rate(), l.rate());
        if churn_ratio == 0 {
            churn_ratio = ratio;
        }
        let ahead = t.rate() > l.rate();
        all_ahead &= ahead;
        println!(
            "{:<36} {:>14} {:>14} {:>10}{}",
            name,
            t.rate(),
            l.rate(),
            X100(ratio),
            if ahead { "" } else { "  (behind)" }
        );
        ok &= check!(
            t.errors == 0 && l.errors == 0,
            "{name}: errors (tieralloc {}, lla {})",
            t.errors,
            l.errors
        );
    }
    if only.is_some() {
        return ok;
    }
    println!("bench: churn with 10,000 live objects <= 512 B: tieralloc/linked_list_allocator = {} (target 50x: {})", X100(churn_ratio), if churn_ratio >= 5000 { "met" } else { "NOT met" });
    println!(
        "bench: tieralloc ahead on every single-CPU workload: {}",
        if all_ahead { "yes" } else { "NO" }
    );
    ok &= check!(
        churn_ratio >= 1000,
        "tieralloc at least 10x linked_list_allocator on churn"
    );

    // What the kernel's CPU mapping costs per heap operation here, and what
    // the previous protocol (save RFLAGS with pushfq, cli if needed, a lock
    // cmpxchg on the slot's lock) cost in the same boot. Best of 10 runs.
    {
        use tieralloc::Cpu;
        static OLD_LOCK: tieralloc::cpu::SlotLock = tieralloc::cpu::SlotLock::new();
        let cpu = HEAP.cpu();
        let best_ns_x100 = |f: &dyn Fn()| {
            let iters = 20_000u64;
            let mut best = u64::MAX;
            for _ in 0..10 {
                let w = Watch::start();
                for _ in 0..iters {
                    f();
                }
                best = best.min(w.ns() * 100 / iters);
            }
            best
        };
        let empty = best_ns_x100(&|| {
            core::hint::black_box(crate::percpu::current());
        });
        let new = best_ns_x100(&|| {
            core::hint::black_box(cpu.with_current(core::hint::black_box));
        });
        let old = best_ns_x100(&|| {
            core::hint::black_box(pushfq_without_interrupts(|| {
                OLD_LOCK.with::<crate::percpu::KRelax, _>(|| {
                    core::hint::black_box(crate::percpu::current())
                })
            }));
        });
        let ns = |x: u64| X100(x.saturating_sub(empty)).to_ns();
        println!("bench: KernelCpu::with_current (IF shadow + owner flag, no atomics): {} per call; the previous entry (pushfq, slot lock cmpxchg): {} (best of 10, loop overhead subtracted)", ns(new), ns(old));
    }

    // Multi-CPU: the stress workload (cross-CPU frees through per-CPU inboxes), 1 CPU vs 2 vs all.
    let n = m.cpus_online;
    let mut counts: Vec<usize> = alloc::vec![1, 2, n];
    counts.dedup();
    counts.retain(|&c| c <= n);
    println!("bench: stress workload (2,000 live objects per CPU, 16 B..16 KiB, 1 in 4 freed by another CPU in batches of 32), ops/s summed over CPUs");
    print!("{:<24}", "stress");
    for &c in &counts {
        print!(" {:>12}", alloc::format!("{c} CPU/s"));
    }
    println!(" {:>10}", alloc::format!("{n}/1 CPU"));
    let base;
    // Baseline: what the emulator gives in parallel, with no allocator involved
    // (each CPU churns a private array with the same random-number work).
    {
        static T: Tallies = Tallies::new();
        print!("{:<24}", "no allocation (baseline)");
        let mut rates: Vec<u64> = Vec::new();
        // Best of three slices per CPU count: one slice can lose most of its
        // time to the host (other processes on its two cores), and a low
        // 1-CPU sample would inflate the ceiling the check below compares with.
        for &cpus in &counts {
            let mut best = 0;
            for _ in 0..3 {
                smp::run_on(cpus, &|cpu| {
                    let w = Watch::start();
                    let mut rng = Rng::new(cpu as u64 + 99);
                    let mut local = [0u64; 2000];
                    let mut ops = 0;
                    while ops < 2_000_000 && (ops % 256 != 0 || w.ns() < t_budget / 3) {
                        let k = (rng.next_u64() % 2000) as usize;
                        local[k] = local[k].wrapping_add(rng.next_u64());
                        ops += 1;
                    }
                    core::hint::black_box(&local);
                    T.set(
                        cpu,
                        super::work::Tally {
                            ops,
                            cross_frees: 0,
                            errors: 0,
                            ns: w.ns(),
                        },
                    );
                });
                let tot = T.total(cpus);
                best = best.max(per_sec(tot.ops, tot.ns));
            }
            rates.push(best);
        }
        for r in &rates {
            print!(" {:>12}", r);
        }
        println!(
            " {:>10}",
            X100(ratio_x100(*rates.last().unwrap(), rates[0]))
        );
        base = (rates[0], *rates.last().unwrap());
    }
    let mut results = [(0u64, 0u64); 2];
    for (k, which) in ["tieralloc", "linked_list_allocator"].iter().enumerate() {
        let budget = if k == 0 { t_budget } else { l_budget };
        let ops = if k == 0 { 600_000 } else { 150_000 };
        let mut rates: Vec<u64> = Vec::new();
        for &cpus in &counts {
            static Q: Mailboxes = Mailboxes::new();
            static T: Tallies = Tallies::new();
            smp::run_on(cpus, &|cpu| {
                let t = if k == 0 {
                    stress_worker(&HEAP, cpu, cpus, ops, 2000, &Q, false, budget)
                } else {
                    stress_worker(lla, cpu, cpus, ops, 2000, &Q, false, budget)
                };
                T.set(cpu, t);
            });
            let (_, bad) = if k == 0 {
                drain(&HEAP, &Q, false)
            } else {
                drain(lla, &Q, false)
            };
            let tot = T.total(cpus);
            ok &= check!(
                tot.errors == 0 && bad == 0,
                "stress {which} on {cpus} CPUs: errors {} bad {bad}",
                tot.errors
            );
            rates.push(per_sec(tot.ops, tot.ns));
        }
        let (r1, rn) = (rates[0], *rates.last().unwrap());
        results[k] = (r1, rn);
        print!("{:<24}", which);
        for r in &rates {
            print!(" {:>12}", r);
        }
        println!(" {:>10}", X100(ratio_x100(rn, r1)));
    }
    println!(
        "bench: {n}-CPU stress: tieralloc {} ops/s = {} of its 1-CPU rate (linked_list_allocator: {}); tieralloc = {} linked_list_allocator at {n} CPUs",
        results[0].1,
        X100(ratio_x100(results[0].1, results[0].0)),
        X100(ratio_x100(results[1].1, results[1].0)),
        X100(ratio_x100(results[0].1, results[1].1))
    );
    println!(
        "bench: (QEMU TCG: {n} virtual CPUs share the host's cores; the allocation-free baseline reaches {} of its 1-CPU rate, the ceiling for any allocator here)",
        X100(ratio_x100(base.1, base.0))
    );
    // Collapse = what a one-lock heap does here: linked_list_allocator, measured
    // in the same boot on the same workload. The emulator's own ceiling (the
    // baseline) is printed for context; on a loaded 2-core host it moves by 2x
    // between boots, too much to check against.
    let t_scale = ratio_x100(results[0].1, results[0].0);
    let l_scale = ratio_x100(results[1].1, results[1].0);
    let b_scale = ratio_x100(base.1, base.0);
    println!(
        "bench: tieralloc's {n}/1-CPU scaling relative to the baseline's: {}",
        X100(ratio_x100(t_scale, b_scale))
    );
    ok &= check!(
        n == 1 || t_scale >= 3 * l_scale.max(1),
        "tieralloc's {n}-CPU throughput does not collapse like the one-lock heap's (its {n}/1-CPU scaling >= 3x linked_list_allocator's)"
    );
    ok
}

/// Object-safe wrapper so one table drives both allocators.
trait GlobalAllocDyn {
    fn churn(&self, live: usize, lo: u64, hi: u64, max_ops: u64, budget: u64) -> Run;
    fn lifo(&self, batch: usize, size: usize, max_ops: u64, budget: u64) -> Run;
    fn fifo(&self, depth: usize, lo: u64, hi: u64, max_ops: u64, budget: u64) -> Run;
    fn realloc_grow(&self, max_ops: u64, budget: u64) -> Run;
}

impl<A: GlobalAlloc> GlobalAllocDyn for A {
    fn churn(&self, live: usize, lo: u64, hi: u64, max_ops: u64, budget: u64) -> Run {
        churn(self, live, lo, hi, max_ops, budget)
    }
    fn lifo(&self, batch: usize, size: usize, max_ops: u64, budget: u64) -> Run {
        lifo(self, batch, size, max_ops, budget)
    }
    fn fifo(&self, depth: usize, lo: u64, hi: u64, max_ops: u64, budget: u64) -> Run {
        fifo(self, depth, lo, hi, max_ops, budget)
    }
    fn realloc_grow(&self, max_ops: u64, budget: u64) -> Run {
        realloc_grow(self, max_ops, budget)
    }
}

/// The kernel's previous section entry, for the comparison above: RFLAGS
/// read with `pushfq`, interrupts off if they were on, restored after.
#[inline(always)]
fn pushfq_without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    let was = x86_64::instructions::interrupts::are_enabled();
    if was {
        x86_64::instructions::interrupts::disable();
    }
    let r = f();
    if was {
        x86_64::instructions::interrupts::enable();
    }
    r
}
