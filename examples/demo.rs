//! The hosted demo behind `make run`: a multi-threaded workload on `LinuxHeap`
//! as this program's `#[global_allocator]`, then the heap's statistics.
//!
//! (The x86_64 QEMU board replaces this as the main job when it lands.)
//!
//! Run: `cargo run --release --features linux --example demo`

use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

#[global_allocator]
static HEAP: tieralloc::LinuxHeap = tieralloc::LinuxHeap::new();

/// A tiny deterministic RNG so every run does the same work.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Churn on one thread: long-lived maps and vectors, short-lived strings and
/// boxes, the odd large buffer; returns a checksum of what it verified.
fn worker(id: u64, rounds: usize, tx: mpsc::Sender<Vec<u64>>) -> u64 {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (id + 1));
    let mut long_lived: BTreeMap<u64, String> = BTreeMap::new();
    let mut boxes: Vec<Box<[u64]>> = Vec::new();
    let mut heap = BinaryHeap::new();
    let mut sum = 0u64;
    for r in 0..rounds {
        // Short-lived: strings and small boxes.
        let key = rng.below(10_000);
        let s = format!("thread {id} round {r} key {key}");
        sum = sum.wrapping_add(s.len() as u64);
        long_lived.insert(key, s);
        if long_lived.len() > 5_000 {
            let k = *long_lived.keys().next().unwrap();
            let v = long_lived.remove(&k).unwrap();
            assert!(
                v.starts_with(&format!("thread {id} ")),
                "corrupted entry {v:?}"
            );
        }
        let n = 1 + rng.below(64) as usize;
        boxes.push((0..n as u64).map(|i| i ^ key).collect());
        if boxes.len() > 2_000 {
            let i = rng.below(boxes.len() as u64) as usize;
            let b = boxes.swap_remove(i);
            for (j, &x) in b.iter().enumerate() {
                assert_eq!(
                    x ^ (j as u64),
                    b[0],
                    "corrupted box (element 0 holds the key)"
                );
            }
        }
        heap.push(rng.below(1 << 20));
        if heap.len() > 1_000 {
            sum = sum.wrapping_add(heap.pop().unwrap());
        }
        // Now and then a large buffer (a span of its own).
        if r % 500 == 0 {
            let big = vec![id as u8; 256 * 1024 + rng.below(1 << 20) as usize];
            assert!(big.iter().all(|&b| b == id as u8));
        }
        // Cross-thread frees: hand a vector to the consumer thread.
        if r % 8 == 0 {
            let v: Vec<u64> = (0..16 + rng.below(512))
                .map(|i| i.wrapping_mul(id + 1))
                .collect();
            tx.send(v).unwrap();
        }
    }
    sum
}

fn main() {
    let threads = 4;
    let rounds = 60_000;
    let start = Instant::now();
    let (tx, rx) = mpsc::channel::<Vec<u64>>();
    let consumer = thread::spawn(move || {
        let mut freed = 0u64;
        let mut by_len: HashMap<usize, u64> = HashMap::new();
        for v in rx {
            let m = v.get(1).copied().unwrap_or(0);
            assert!(v
                .iter()
                .enumerate()
                .all(|(i, &x)| x == (i as u64).wrapping_mul(m.max(1))));
            *by_len.entry(v.len()).or_default() += 1;
            freed += 1;
        }
        (freed, by_len.len())
    });
    let workers: Vec<_> = (0..threads)
        .map(|id| {
            let tx = tx.clone();
            thread::spawn(move || worker(id, rounds, tx))
        })
        .collect();
    drop(tx);
    let sums: Vec<u64> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let (remote_frees, lens) = consumer.join().unwrap();
    let elapsed = start.elapsed();

    println!(
        "tieralloc hosted demo: {threads} worker threads x {rounds} rounds + 1 consumer thread"
    );
    println!("  checksums {sums:x?}; {remote_frees} vectors freed on another thread ({lens} distinct lengths)");
    println!("  wall time {:.2} s\n", elapsed.as_secs_f64());
    let st = HEAP.stats();
    println!("== heap statistics after the workload ==\n{st}");
    let released = HEAP.scavenge();
    let st = HEAP.stats();
    println!("== after scavenge() (released {} KiB) ==", released / 1024);
    println!(
        "heap_sys {} KiB, heap_inuse {} KiB, heap_released {} KiB, heap_alloc {} KiB, live objects {}",
        st.heap_sys / 1024,
        st.heap_inuse / 1024,
        st.heap_released / 1024,
        st.heap_alloc / 1024,
        st.live_objects()
    );
    HEAP.check_invariants();
    println!("invariants: ok");
}
