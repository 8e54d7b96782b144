//! Multi-CPU workloads: the main job (collections churn on every CPU) and the
//! raw stress (content-checked objects with cross-CPU frees), both with a
//! shared queue through which objects allocated on one CPU are freed on another.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BinaryHeap};
use alloc::string::String;
use alloc::vec::Vec;
use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicU64, Ordering};

use spin::Mutex;

use super::{Draw, Rng};
use crate::kheap::HEAP;
use crate::percpu::{MAX_CPUS, PERCPU};
use crate::time::{per_sec, Secs, Watch};
use crate::{check, println, smp, Machine};

/// A bounded FIFO of `(address, size)` pairs that never allocates.
pub struct Queue {
    ring: Mutex<Ring>,
}

struct Ring {
    buf: [(usize, usize); 4096],
    head: usize,
    len: usize,
}

impl Queue {
    pub const fn new() -> Queue {
        Queue {
            ring: Mutex::new(Ring {
                buf: [(0, 0); 4096],
                head: 0,
                len: 0,
            }),
        }
    }
    /// False when full.
    pub fn push(&self, v: (usize, usize)) -> bool {
        let mut r = self.ring.lock();
        if r.len == r.buf.len() {
            return false;
        }
        let i = (r.head + r.len) % r.buf.len();
        r.buf[i] = v;
        r.len += 1;
        true
    }
    /// Pushes as many of `vs` as fit; returns how many.
    pub fn push_many(&self, vs: &[(usize, usize)]) -> usize {
        let mut r = self.ring.lock();
        let n = vs.len().min(r.buf.len() - r.len);
        for &v in &vs[..n] {
            let i = (r.head + r.len) % r.buf.len();
            r.buf[i] = v;
            r.len += 1;
        }
        n
    }
    /// Pops up to `out.len()` entries; returns how many.
    pub fn pop_many(&self, out: &mut [(usize, usize)]) -> usize {
        let mut r = self.ring.lock();
        let n = out.len().min(r.len);
        for o in out[..n].iter_mut() {
            *o = r.buf[r.head];
            r.head = (r.head + 1) % r.buf.len();
            r.len -= 1;
        }
        n
    }
    pub fn pop(&self) -> Option<(usize, usize)> {
        let mut r = self.ring.lock();
        if r.len == 0 {
            return None;
        }
        let v = r.buf[r.head];
        r.head = (r.head + 1) % r.buf.len();
        r.len -= 1;
        Some(v)
    }
}

impl Default for Queue {
    fn default() -> Self {
        Self::new()
    }
}

/// One inbox per CPU: a CPU posts objects to another CPU's inbox and frees what
/// arrives in its own, so every object that travels is freed on another CPU.
pub struct Mailboxes([Queue; MAX_CPUS]);

impl Mailboxes {
    pub const fn new() -> Mailboxes {
        Mailboxes([const { Queue::new() }; MAX_CPUS])
    }
    /// Posts to a CPU other than `from` (chosen by `r`) among `n`; false when its inbox is full.
    pub fn post(&self, from: usize, n: usize, r: u64, v: (usize, usize)) -> bool {
        let to = if n <= 1 {
            from
        } else {
            (from + 1 + (r % (n as u64 - 1)) as usize) % n
        };
        self.0[to].push(v)
    }
    /// The inbox of CPU `to`.
    pub fn inbox(&self, to: usize) -> &Queue {
        &self.0[to]
    }
    pub fn take(&self, me: usize) -> Option<(usize, usize)> {
        self.0[me].pop()
    }
    /// Empties every inbox.
    pub fn pop_any(&self) -> Option<(usize, usize)> {
        self.0.iter().find_map(|q| q.pop())
    }
}

/// Per-CPU results of a workload.
#[derive(Clone, Copy, Default)]
pub struct Tally {
    pub ops: u64,
    pub cross_frees: u64,
    pub errors: u64,
    pub ns: u64,
}

pub struct Tallies([Mutex<Tally>; MAX_CPUS]);

impl Default for Tallies {
    fn default() -> Self {
        Self::new()
    }
}

impl Default for Mailboxes {
    fn default() -> Self {
        Self::new()
    }
}

impl Tallies {
    pub const fn new() -> Tallies {
        Tallies(
            [const {
                Mutex::new(Tally {
                    ops: 0,
                    cross_frees: 0,
                    errors: 0,
                    ns: 0,
                })
            }; MAX_CPUS],
        )
    }
    pub fn set(&self, cpu: usize, t: Tally) {
        *self.0[cpu].lock() = t;
        PERCPU[cpu].ops.fetch_add(t.ops, Ordering::Relaxed);
        PERCPU[cpu]
            .cross_frees
            .fetch_add(t.cross_frees, Ordering::Relaxed);
    }
    pub fn get(&self, cpu: usize) -> Tally {
        *self.0[cpu].lock()
    }
    pub fn total(&self, n: usize) -> Tally {
        let mut s = Tally::default();
        for i in 0..n {
            let t = self.get(i);
            s.ops += t.ops;
            s.cross_frees += t.cross_frees;
            s.errors += t.errors;
            s.ns = s.ns.max(t.ns);
        }
        s
    }
    pub fn print(&self, n: usize) {
        println!(
            "{:>4} {:>12} {:>12} {:>8} {:>10} {:>12}",
            "cpu", "ops", "cross-frees", "errors", "time", "ops/s"
        );
        for i in 0..n {
            let t = self.get(i);
            println!(
                "{:>4} {:>12} {:>12} {:>8} {:>10} {:>12}",
                i,
                t.ops,
                t.cross_frees,
                t.errors,
                Secs(t.ns),
                per_sec(t.ops, t.ns)
            );
        }
        let t = self.total(n);
        println!(
            "{:>4} {:>12} {:>12} {:>8} {:>10} {:>12}",
            "all",
            t.ops,
            t.cross_frees,
            t.errors,
            Secs(t.ns),
            per_sec(t.ops, t.ns)
        );
    }
}

// ------------------------------------------------------------------ main

/// A message sent to another CPU, freed there.
struct Msg {
    from: usize,
    seq: u64,
    data: Vec<u64>,
    note: String,
}

fn msg_value(from: usize, seq: u64, j: usize) -> u64 {
    (from as u64) << 48 ^ seq << 8 ^ j as u64
}

fn check_msg(m: &Msg) -> bool {
    m.data
        .iter()
        .enumerate()
        .all(|(j, &x)| x == msg_value(m.from, m.seq, j))
        && m.note == alloc::format!("msg {} from cpu {}", m.seq, m.from)
}

/// One CPU's share of the main job.
fn main_worker(cpu: usize, ncpus: usize, rounds: u64, q: &Mailboxes, tally: &Tallies) {
    let w = Watch::start();
    let mut rng = Rng::new(cpu as u64 * 7919 + 1);
    let mut t = Tally::default();
    let err = |ok: bool, t: &mut Tally| {
        if !ok {
            t.errors += 1;
        }
    };
    // Long-lived state, churned and checked throughout.
    let mut map: BTreeMap<u64, String> = BTreeMap::new();
    let mut keep: Vec<Box<[u32]>> = Vec::new();
    let mut seq = 0u64;
    for r in 0..rounds {
        // BTreeMap<u64, String>: inserts and removals, values checked.
        for _ in 0..12 {
            let k = rng.next_u64() % 2048;
            let v = alloc::format!("cpu{cpu}:key{k}");
            if let Some(old) = map.insert(k, v) {
                err(old == alloc::format!("cpu{cpu}:key{k}"), &mut t);
            }
            t.ops += 1;
        }
        for _ in 0..10 {
            let k = rng.next_u64() % 2048;
            if let Some(v) = map.remove(&k) {
                err(v == alloc::format!("cpu{cpu}:key{k}"), &mut t);
            }
            t.ops += 1;
        }
        // Short-lived Vec and String.
        let n = rng.between(1, 300);
        let v: Vec<u64> = (0..n).map(|x| x * 3 + cpu as u64).collect();
        err(
            v.iter().sum::<u64>() == 3 * n * (n - 1) / 2 + n * cpu as u64,
            &mut t,
        );
        let mut s = String::new();
        let parts = rng.between(1, 24);
        for _ in 0..parts {
            s.push_str("tieralloc");
        }
        err(s.len() as u64 == parts * 9, &mut t);
        t.ops += 2;
        // BinaryHeap: push, then pop in order.
        let mut h = BinaryHeap::new();
        for _ in 0..rng.between(8, 96) {
            h.push(rng.next_u64() % 100_000);
        }
        let mut last = u64::MAX;
        while let Some(x) = h.pop() {
            err(x <= last, &mut t);
            last = x;
        }
        t.ops += 1;
        // Long-lived boxes of varied sizes.
        let len = rng.between(1, 256) as usize;
        keep.push(alloc::vec![r as u32; len].into_boxed_slice());
        if keep.len() > 600 {
            let i = (rng.next_u64() % keep.len() as u64) as usize;
            let b = keep.swap_remove(i);
            let v0 = b[0];
            err(b.iter().all(|&x| x == v0), &mut t);
        }
        t.ops += 1;
        // Large objects now and then.
        if r % 32 == (cpu as u64) % 32 {
            let size = rng.between(40 << 10, 1 << 20) as usize;
            let mut big = alloc::vec![0u8; size];
            big[size - 1] = r as u8;
            big[size / 2] = 0x77;
            err(
                big[size - 1] == r as u8 && big[size / 2] == 0x77 && big[0] == 0,
                &mut t,
            );
            t.ops += 1;
        }
        // Kernel stacks from the heap's stack allocator, now and then with a guard page.
        if r % 16 == 0 {
            let guard = r % 256 == 0;
            match HEAP.alloc_stack(16 << 10, guard) {
                Some(st) => {
                    // SAFETY: the stack is ours: write its lowest and highest words.
                    unsafe {
                        (st.base.as_ptr() as *mut u64).write(r);
                        (st.top().sub(8) as *mut u64).write(!r);
                        err(
                            (st.base.as_ptr() as *const u64).read() == r
                                && (st.top().sub(8) as *const u64).read() == !r,
                            &mut t,
                        );
                    }
                    err(st.size >= 16 << 10 && st.has_guard() == guard, &mut t);
                    // SAFETY: from this heap, no longer used.
                    unsafe { HEAP.free_stack(st) };
                }
                None => err(false, &mut t),
            }
            t.ops += 1;
        }
        // Cross-CPU: send a message, receive up to two (from any CPU) and free them here.
        seq += 1;
        let dl = rng.between(1, 64) as usize;
        let m = Box::new(Msg {
            from: cpu,
            seq,
            data: (0..dl).map(|j| msg_value(cpu, seq, j)).collect(),
            note: alloc::format!("msg {seq} from cpu {cpu}"),
        });
        let p = Box::into_raw(m);
        if !q.post(cpu, ncpus, rng.next_u64(), (p as usize, 0)) {
            // SAFETY: not queued: still ours.
            drop(unsafe { Box::from_raw(p) });
        }
        for _ in 0..2 {
            if let Some((a, _)) = q.take(cpu) {
                // SAFETY: queued by `Box::into_raw`; popped once.
                let m = unsafe { Box::from_raw(a as *mut Msg) };
                err(check_msg(&m), &mut t);
                if m.from != cpu {
                    t.cross_frees += 1;
                }
                drop(m);
            }
        }
        t.ops += 3;
    }
    for (k, v) in &map {
        err(*v == alloc::format!("cpu{cpu}:key{k}"), &mut t);
    }
    drop(map);
    drop(keep);
    t.ns = w.ns();
    tally.set(cpu, t);
}

/// The main job: the mixed workload on every CPU at once, then the heap's
/// statistics and a per-CPU summary.
pub fn main(m: &Machine) -> bool {
    static Q: Mailboxes = Mailboxes::new();
    static T: Tallies = Tallies::new();
    let n = m.cpus_online;
    let rounds: u64 = m
        .info
        .arg("rounds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(4000);
    let live0 = HEAP.stats().live_objects();
    println!("main: {n} CPUs x {rounds} rounds of BTreeMap/String/Vec/BinaryHeap/Box churn, large objects, kernel stacks, cross-CPU frees");
    let w = Watch::start();
    smp::run_on(n, &|cpu| main_worker(cpu, n, rounds, &Q, &T));
    let ns = w.ns();
    // Messages still queued: free them on the BSP (more cross-CPU frees).
    let mut left = 0;
    let mut bad = 0;
    while let Some((a, _)) = Q.pop_any() {
        // SAFETY: as in the worker.
        let msg = unsafe { Box::from_raw(a as *mut Msg) };
        if !check_msg(&msg) {
            bad += 1;
        }
        left += 1;
    }
    let st = HEAP.stats();
    println!(
        "main: done in {} ({left} queued messages freed by CPU 0)",
        Secs(ns)
    );
    #[cfg(feature = "lla-heap")]
    {
        let h = crate::kheap::LLA_GLOBAL.lock();
        println!(
            "--- global heap: linked_list_allocator: {} bytes used, {} free ---",
            h.used(),
            h.free()
        );
        println!("(the statistics below are tieralloc's own heap, which this image does not use globally)");
    }
    println!("--- heap statistics (tieralloc) ---");
    println!("{st}");
    let ss = HEAP.stack_stats();
    println!("stacks: {ss:?}");
    println!("--- per-CPU summary ---");
    T.print(n);
    let tot = T.total(n);
    println!(
        "main: {} ops on {n} CPUs, {} cross-CPU frees, {} ops/s overall",
        tot.ops,
        tot.cross_frees,
        per_sec(tot.ops, ns)
    );
    let mut ok = check!(
        tot.errors == 0 && bad == 0,
        "content checks ({} errors, {bad} bad messages)",
        tot.errors
    );
    ok &= check!(
        st.live_objects() == live0,
        "live objects back to {live0} (now {})",
        st.live_objects()
    );
    ok &= check!(n == 1 || tot.cross_frees > 0, "cross-CPU frees happened");
    for i in 0..n {
        ok &= check!(T.get(i).ops > 0, "CPU {i} did work");
    }
    HEAP.check_invariants();
    println!("main: heap invariants hold");
    ok
}

// ---------------------------------------------------------------- stress

/// Tags and checks stress objects: word 0 = tag, word 1 = size, the rest derived.
#[inline(always)]
fn fill(p: *mut u8, size: usize, tag: u64, full: bool) {
    let w = p as *mut u64;
    let words = size / 8;
    // SAFETY: `p` is a live object of `size` bytes (a multiple of 8, >= 16).
    unsafe {
        w.write(tag);
        w.add(1).write(size as u64);
        if full {
            for k in 2..words {
                w.add(k).write(tag.rotate_left(k as u32) ^ k as u64);
            }
        } else if words > 2 {
            w.add(words - 1).write(!tag);
        }
    }
}

#[inline(always)]
fn verify(p: *mut u8, size: usize, full: bool) -> Option<u64> {
    let w = p as *const u64;
    let words = size / 8;
    // SAFETY: as in `fill`.
    unsafe {
        let tag = w.read();
        if w.add(1).read() != size as u64 {
            return None;
        }
        if full {
            for k in 2..words {
                if w.add(k).read() != tag.rotate_left(k as u32) ^ k as u64 {
                    return None;
                }
            }
        } else if words > 2 && w.add(words - 1).read() != !tag {
            return None;
        }
        Some(tag)
    }
}

/// A stress object's size: mostly 16..=512 B, sometimes up to 16 KiB.
#[inline(always)]
fn stress_size(rng: &mut Rng) -> usize {
    let r = rng.next_u64();
    if r.is_multiple_of(64) {
        ((r >> 8) % (16 << 10)) as usize / 8 * 8 + 16
    } else {
        ((r >> 8) % 497) as usize / 8 * 8 + 16
    }
}

/// Objects travel in batches of this many (one inbox lock per batch).
const BATCH: usize = 32;

/// One CPU of the stress: `live` slots churned `ops` times; one replaced object
/// in four is posted (in batches) to another CPU's inbox instead of being freed
/// here, and the CPU frees whatever arrives in its own inbox (allocated elsewhere).
#[allow(clippy::too_many_arguments)]
pub fn stress_worker<A: GlobalAlloc>(
    a: &A,
    cpu: usize,
    ncpus: usize,
    ops: u64,
    live: usize,
    q: &Mailboxes,
    full: bool,
    budget_ns: u64,
) -> Tally {
    let w = Watch::start();
    let mut rng = Rng::new(0x5eed + cpu as u64);
    let mut t = Tally::default();
    let mut slots: Vec<(usize, usize)> = alloc::vec![(0, 0); live];
    let mut out = [(0usize, 0usize); BATCH];
    let mut nout = 0;
    let mut inb = [(0usize, 0usize); BATCH];
    let mut seq = 0u64;
    let tag_of = |cpu: usize, seq: u64| (cpu as u64) << 56 | seq;
    let free = |a: &A, p: usize, size: usize, t: &mut Tally, me: usize| {
        match verify(p as *mut u8, size, full) {
            Some(tag) => {
                if (tag >> 56) as usize != me {
                    t.cross_frees += 1;
                }
            }
            None => t.errors += 1,
        }
        // SAFETY: allocated by `a` with this layout, freed once.
        unsafe { a.dealloc(p as *mut u8, Layout::from_size_align_unchecked(size, 8)) };
    };
    let mut target = if ncpus > 1 { (cpu + 1) % ncpus } else { cpu };
    for i in 0..ops {
        if i % 256 == 0 && w.ns() > budget_ns {
            break;
        }
        let k = (rng.next_u64() % live as u64) as usize;
        let (old, old_size) = slots[k];
        if old != 0 {
            if i % 4 == 0 {
                out[nout] = (old, old_size);
                nout += 1;
                if nout == BATCH {
                    let sent = q.inbox(target).push_many(&out);
                    for &(p, s) in &out[sent..] {
                        free(a, p, s, &mut t, cpu);
                    }
                    nout = 0;
                    if ncpus > 1 {
                        target = (target + 1) % ncpus;
                        if target == cpu {
                            target = (target + 1) % ncpus;
                        }
                    }
                }
            } else {
                free(a, old, old_size, &mut t, cpu);
            }
        }
        let size = stress_size(&mut rng);
        // SAFETY: non-zero size, align 8.
        let p = unsafe { a.alloc(Layout::from_size_align_unchecked(size, 8)) };
        if p.is_null() {
            t.errors += 1;
            slots[k] = (0, 0);
        } else {
            seq += 1;
            fill(p, size, tag_of(cpu, seq), full);
            slots[k] = (p as usize, size);
        }
        if i % (BATCH as u64 * 4) == 0 {
            let n = q.inbox(cpu).pop_many(&mut inb);
            for &(qp, qs) in &inb[..n] {
                free(a, qp, qs, &mut t, cpu);
            }
        }
        t.ops += 1;
    }
    for &(p, s) in out[..nout].iter().chain(slots.iter()) {
        if p != 0 {
            free(a, p, s, &mut t, cpu);
        }
    }
    t.ns = w.ns();
    t
}

/// Frees what is left in the queue (after all workers stopped).
pub fn drain<A: GlobalAlloc>(a: &A, q: &Mailboxes, full: bool) -> (u64, u64) {
    let (mut n, mut bad) = (0, 0);
    while let Some((p, s)) = q.pop_any() {
        if verify(p as *mut u8, s, full).is_none() {
            bad += 1;
        }
        // SAFETY: as in the worker.
        unsafe { a.dealloc(p as *mut u8, Layout::from_size_align_unchecked(s, 8)) };
        n += 1;
    }
    (n, bad)
}

/// Every CPU stresses the tieralloc heap concurrently with cross-CPU frees and full content checks.
pub fn stress(m: &Machine) -> bool {
    static Q: Mailboxes = Mailboxes::new();
    static T: Tallies = Tallies::new();
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let n = m.cpus_online;
    let ops: u64 = m
        .info
        .arg("ops")
        .and_then(|s| s.parse().ok())
        .unwrap_or(150_000);
    let live0 = HEAP.stats().live_objects();
    println!("stress: {n} CPUs x {ops} ops, 2,000 live objects each (16 B..16 KiB), 1 in 4 freed by another CPU (batches of 32), full content checks");
    let w = Watch::start();
    smp::run_on(n, &|cpu| {
        let t = stress_worker(&HEAP, cpu, n, ops, 2000, &Q, true, u64::MAX);
        SEEN.fetch_add(1, Ordering::SeqCst);
        T.set(cpu, t);
    });
    let ns = w.ns();
    let (left, bad) = drain(&HEAP, &Q, true);
    T.print(n);
    let tot = T.total(n);
    let st = HEAP.stats();
    println!(
        "stress: {} ops in {} ({} ops/s), {} cross-CPU frees, {left} left in the queue",
        tot.ops,
        Secs(ns),
        per_sec(tot.ops, ns),
        tot.cross_frees
    );
    println!("{st}");
    let mut ok = check!(
        tot.errors == 0 && bad == 0,
        "content checks ({} errors, {bad} bad)",
        tot.errors
    );
    ok &= check!(n == 1 || tot.cross_frees > 0, "cross-CPU frees happened");
    ok &= check!(
        st.live_objects() == live0,
        "live objects back to {live0} (now {})",
        st.live_objects()
    );
    HEAP.check_invariants();
    if n > 1 {
        ok &= remote_drains_under_load(n, ops / 2);
    }
    ok
}

/// CPUs 1.. run the stress workload while CPU 0 keeps draining their caches
/// (`HEAP.scavenge()`, `HEAP.stats()`): every drain is a remote section of a
/// busy CPU's slot (`percpu::KernelCpu`: `remote`, an NMI round trip, wait
/// for `busy` = 0), racing that CPU's owner sections; the scavenger's page
/// releases add TLB-shootdown NMIs on top. Any overlap of an owner and a
/// remote section hands one object out twice or loses it, which the
/// workers' full content checks and the live count catch.
fn remote_drains_under_load(n: usize, ops: u64) -> bool {
    static Q: Mailboxes = Mailboxes::new();
    static T: Tallies = Tallies::new();
    static DONE: AtomicU64 = AtomicU64::new(0);
    static DRAINS: AtomicU64 = AtomicU64::new(0);
    let live0 = HEAP.stats().live_objects();
    DONE.store(0, Ordering::SeqCst);
    smp::run_on(n, &|cpu| {
        if cpu == 0 {
            let mut k = 0;
            while DONE.load(Ordering::Acquire) < n as u64 - 1 {
                if k % 2 == 0 {
                    HEAP.scavenge();
                } else {
                    core::hint::black_box(HEAP.stats());
                }
                k += 1;
            }
            DRAINS.store(k, Ordering::SeqCst);
            T.set(0, Tally::default());
        } else {
            // Workers 1..n exchange objects among themselves (indices shifted by one).
            let t = stress_worker(&HEAP, cpu - 1, n - 1, ops, 2000, &Q, true, u64::MAX);
            T.set(cpu, t);
            DONE.fetch_add(1, Ordering::AcqRel);
        }
    });
    let (_, bad) = drain(&HEAP, &Q, true);
    let tot = T.total(n);
    let st = HEAP.stats();
    println!(
        "stress: remote drains under load: {} drains of busy CPUs' caches by CPU 0 while {} CPUs did {} ops",
        DRAINS.load(Ordering::SeqCst),
        n - 1,
        tot.ops
    );
    let mut ok = check!(
        tot.errors == 0 && bad == 0,
        "content checks under remote drains ({} errors, {bad} bad)",
        tot.errors
    );
    ok &= check!(
        DRAINS.load(Ordering::SeqCst) > 0,
        "CPU 0 drained while the others worked"
    );
    ok &= check!(
        st.live_objects() == live0,
        "live objects back to {live0} after remote drains (now {})",
        st.live_objects()
    );
    HEAP.check_invariants();
    ok & slot_exclusion(n, ops)
}

/// The heap's CPU slots exclude each other (`tieralloc::Cpu`'s contract, as
/// `percpu::KernelCpu` implements it): CPUs 1.. do read-modify-writes of their
/// own slot's counter inside `with_current` (owner sections), CPU 0 does the
/// same to theirs inside `with_slot` (remote sections, each with an NMI round
/// trip). Plain loads and stores, so an overlap loses an update.
fn slot_exclusion(n: usize, ops: u64) -> bool {
    use tieralloc::Cpu;
    static COUNT: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
    static OWNER: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
    static REMOTE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
    static DONE: AtomicU64 = AtomicU64::new(0);
    static REMOTES: AtomicU64 = AtomicU64::new(0);
    // The read-modify-write, spread over a few instructions to widen the window.
    fn bump(c: &AtomicU64) {
        let v = c.load(Ordering::Relaxed);
        for _ in 0..8 {
            core::hint::spin_loop();
        }
        c.store(core::hint::black_box(v) + 1, Ordering::Relaxed);
    }
    DONE.store(0, Ordering::SeqCst);
    REMOTES.store(0, Ordering::SeqCst);
    for i in 0..MAX_CPUS {
        COUNT[i].store(0, Ordering::SeqCst);
        OWNER[i].store(0, Ordering::SeqCst);
        REMOTE[i].store(0, Ordering::SeqCst);
    }
    let cpu = HEAP.cpu();
    smp::run_on(n, &|me| {
        if me == 0 {
            let mut j = 1;
            while DONE.load(Ordering::Acquire) < n as u64 - 1 {
                cpu.with_slot(j, || bump(&COUNT[j]));
                REMOTE[j].fetch_add(1, Ordering::Relaxed);
                REMOTES.fetch_add(1, Ordering::Relaxed);
                j = if j + 1 == n { 1 } else { j + 1 };
            }
        } else {
            // At least `ops / 4` sections, and on until CPU 0 has done 300
            // remote ones (an NMI round trip each) or 20 s have passed.
            let w = Watch::start();
            let mut k = 0u64;
            while k < ops / 4 || (REMOTES.load(Ordering::Relaxed) < 300 && w.ns() < 20_000_000_000)
            {
                let i = cpu.with_current(|i| {
                    bump(&COUNT[i]);
                    i
                });
                OWNER[i].fetch_add(1, Ordering::Relaxed);
                k += 1;
            }
            DONE.fetch_add(1, Ordering::AcqRel);
        }
    });
    let mut ok = true;
    let mut remote_total = 0;
    for i in 1..n {
        let (c, o, r) = (
            COUNT[i].load(Ordering::SeqCst),
            OWNER[i].load(Ordering::SeqCst),
            REMOTE[i].load(Ordering::SeqCst),
        );
        remote_total += r;
        ok &= check!(
            c == o + r,
            "slot {i}: counter {c} != {o} owner + {r} remote sections (sections overlapped)"
        );
    }
    let owner_total: u64 = (1..n).map(|i| OWNER[i].load(Ordering::SeqCst)).sum();
    println!("stress: slot exclusion: {owner_total} owner and {remote_total} remote sections on {} slots, no update lost: {}", n - 1, if ok { "yes" } else { "NO" });
    ok & check!(remote_total > 0, "remote sections happened")
}
