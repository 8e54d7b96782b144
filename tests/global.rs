//! A test binary whose own global allocator is `LinuxHeap`: ordinary Rust code
//! (collections, strings, trait objects, threads, sorting) runs on tieralloc.
//!
//! The test harness allocates through the same heap, so the statistics are
//! checked with bounds, not exact values. Tests take `GATE` shared; the ones
//! that measure the heap take it exclusively, so no other test's data is alive
//! while they look.
#![cfg(feature = "linux")]

use std::alloc::{alloc, alloc_zeroed, dealloc, realloc, Layout};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::{mpsc, Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread;

use tieralloc::LinuxHeap;

#[global_allocator]
static A: LinuxHeap = LinuxHeap::new();

const MIB: u64 = 1 << 20;

static GATE: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    GATE.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    GATE.write().unwrap_or_else(|e| e.into_inner())
}

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// After everything a test made is dropped: scavenge, and the heap holds
/// little (what the harness and other threads' caches keep).
fn assert_heap_drained(label: &str) {
    A.scavenge();
    A.check_invariants();
    let st = A.stats();
    println!("{label}: after drop + scavenge\n{st}");
    assert!(
        st.heap_inuse < 4 * MIB,
        "{label}: {} B in use after dropping everything\n{st}",
        st.heap_inuse
    );
    assert!(
        st.heap_alloc < 2 * MIB,
        "{label}: {} B live after dropping everything\n{st}",
        st.heap_alloc
    );
    assert!(st.large_alloc < 2 * MIB, "{label}\n{st}");
    assert!(
        st.heap_idle - st.heap_released < 8 * MIB,
        "{label}: free memory not released\n{st}"
    );
    assert_eq!(st.heap_idle, st.heap_sys - st.heap_inuse, "{label}\n{st}");
}

#[test]
fn vec_grows_to_100_mb_and_goes_back() {
    let _g = exclusive();
    let before = A.stats();
    let n = 100 * MIB as usize / 8;
    let mut v: Vec<u64> = Vec::new();
    for i in 0..n as u64 {
        v.push(mix(i));
    }
    let during = A.stats();
    println!("with a 100 MB Vec\n{during}");
    assert!(during.mallocs > before.mallocs);
    assert!(during.heap_alloc >= 100 * MIB, "{during}");
    assert!(during.large_alloc >= 100 * MIB, "{during}");
    assert!(during.heap_inuse >= during.heap_alloc, "{during}");
    assert!(
        during.by_size[0].mallocs > before.by_size[0].mallocs,
        "the Vec's buffer is a large object"
    );
    for (i, &x) in v.iter().enumerate().step_by(4093) {
        assert_eq!(x, mix(i as u64));
    }
    assert_eq!(
        v.iter().fold(0u64, |a, &x| a ^ x),
        (0..n as u64).fold(0, |a, i| a ^ mix(i))
    );
    // Shrink (in place) and grow again.
    v.truncate(1000);
    v.shrink_to_fit();
    assert_eq!(v.len(), 1000);
    assert!(v.iter().enumerate().all(|(i, &x)| x == mix(i as u64)));
    drop(v);
    assert_heap_drained("vec");
}

#[test]
fn vec_of_zeroes_is_zero_after_dirty_reuse() {
    let _g = exclusive();
    A.set_retain_bytes(256 << 20); // keep freed pages dirty so they are reused dirty
    for round in 0..3 {
        let dirty = vec![0xA5u8; 50 << 20];
        assert!(dirty.iter().step_by(4096).all(|&b| b == 0xA5));
        drop(black_box(dirty));
        let z = vec![0u8; 50 << 20];
        assert!(
            z.iter().all(|&b| b == 0),
            "round {round}: vec![0; 50 MB] not zero"
        );
        drop(z);
        for size in [24usize, 100, 1000, 5000, 30000] {
            let d: Vec<Vec<u8>> = (0..64).map(|_| vec![0x5Au8; size]).collect();
            drop(black_box(d));
            let z: Vec<Vec<u8>> = (0..64).map(|_| vec![0u8; size]).collect();
            assert!(
                z.iter().all(|v| v.iter().all(|&b| b == 0)),
                "round {round}: vec![0; {size}] not zero"
            );
        }
    }
    A.set_retain_bytes(tieralloc::internals::DEFAULT_RETAIN_BYTES);
    assert_heap_drained("zeroed");
}

#[test]
fn strings_and_format() {
    let _g = shared();
    let mut s = String::new();
    for i in 0..200_000 {
        write!(s, "{i},").unwrap();
    }
    let parts: Vec<&str> = s.trim_end_matches(',').split(',').collect();
    assert_eq!(parts.len(), 200_000);
    assert!(parts
        .iter()
        .enumerate()
        .all(|(i, p)| p.parse::<usize>().unwrap() == i));
    let mut pieces = Vec::new();
    for i in 0..100_000u64 {
        pieces.push(format!(
            "{:>8}-{:x}-{}",
            i,
            mix(i),
            "x".repeat((i % 40) as usize)
        ));
    }
    let joined = pieces.join("|");
    assert_eq!(joined.split('|').count(), 100_000);
    for (i, p) in joined.split('|').enumerate().step_by(997) {
        assert_eq!(
            p,
            format!("{:>8}-{:x}-{}", i, mix(i as u64), "x".repeat(i % 40))
        );
    }
    let upper = joined.to_uppercase();
    assert_eq!(upper.len(), joined.len());
}

#[test]
fn hashmap_and_btreemap_with_a_million_entries() {
    let _g = shared();
    const N: u64 = 1_000_000;
    let mut h: HashMap<u64, String> = HashMap::new();
    for i in 0..N {
        h.insert(mix(i), i.to_string());
    }
    assert_eq!(h.len(), N as usize);
    for i in (0..N).step_by(101) {
        assert_eq!(h[&mix(i)], i.to_string());
    }
    let mut b: BTreeMap<String, u64> = BTreeMap::new();
    for (k, v) in h.drain() {
        b.insert(v, k);
    }
    assert!(h.is_empty());
    assert_eq!(b.len(), N as usize);
    for (s, &k) in b.iter().step_by(103) {
        assert_eq!(k, mix(s.parse().unwrap()));
    }
    // Remove every other key; the rest stay intact.
    for i in (0..N).step_by(2) {
        assert_eq!(b.remove(&i.to_string()), Some(mix(i)));
    }
    assert_eq!(b.len(), N as usize / 2);
    assert!(b.iter().all(|(s, &k)| k == mix(s.parse().unwrap())));
}

trait Shape: Send + Sync {
    fn area(&self) -> u64;
    fn name(&self) -> String;
}

struct Small(u8);
struct Mid([u64; 40]);
struct Big(Box<[u8; 40_000]>, u64);
#[repr(align(64))]
struct Aligned64(u64);
#[repr(align(4096))]
struct Page(u64);
#[repr(align(65536))]
struct Huge(u64);
struct Zst;

impl Shape for Small {
    fn area(&self) -> u64 {
        self.0 as u64
    }
    fn name(&self) -> String {
        "small".into()
    }
}
impl Shape for Mid {
    fn area(&self) -> u64 {
        self.0.iter().sum()
    }
    fn name(&self) -> String {
        "mid".into()
    }
}
impl Shape for Big {
    fn area(&self) -> u64 {
        self.0.iter().map(|&b| b as u64).sum::<u64>() + self.1
    }
    fn name(&self) -> String {
        "big".into()
    }
}
impl Shape for Aligned64 {
    fn area(&self) -> u64 {
        assert_eq!(self as *const _ as usize % 64, 0);
        self.0
    }
    fn name(&self) -> String {
        "a64".into()
    }
}
impl Shape for Page {
    fn area(&self) -> u64 {
        assert_eq!(self as *const _ as usize % 4096, 0);
        self.0
    }
    fn name(&self) -> String {
        "page".into()
    }
}
impl Shape for Huge {
    fn area(&self) -> u64 {
        assert_eq!(self as *const _ as usize % 65536, 0);
        self.0
    }
    fn name(&self) -> String {
        "huge".into()
    }
}
impl Shape for Zst {
    fn area(&self) -> u64 {
        0
    }
    fn name(&self) -> String {
        String::new()
    }
}

fn make_shape(i: u64) -> Box<dyn Shape> {
    match i % 7 {
        0 => Box::new(Small(i as u8)),
        1 => Box::new(Mid([i; 40])),
        2 => Box::new(Big(Box::new([1; 40_000]), i)),
        3 => Box::new(Aligned64(i)),
        4 => Box::new(Page(i)),
        5 if i % 49 == 5 => Box::new(Huge(i)),
        5 => Box::new(Small(3)),
        _ => Box::new(Zst),
    }
}

fn shape_area(i: u64) -> u64 {
    match i % 7 {
        0 => (i as u8) as u64,
        1 => 40 * i,
        2 => 40_000 + i,
        3 | 4 => i,
        5 if i % 49 == 5 => i,
        5 => 3,
        _ => 0,
    }
}

#[test]
fn boxed_trait_objects() {
    let _g = shared();
    let shapes: Vec<Box<dyn Shape>> = (0..20_000).map(make_shape).collect();
    let total: u64 = shapes.iter().map(|s| s.area()).sum();
    assert_eq!(total, (0..20_000).map(shape_area).sum::<u64>());
    let names: String = shapes
        .iter()
        .take(7)
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(names, "small,mid,big,a64,page,huge,");
    // Drop in a scrambled order.
    let mut shapes: Vec<Option<Box<dyn Shape>>> = shapes.into_iter().map(Some).collect();
    for i in 0..shapes.len() {
        let j = (mix(i as u64) as usize) % shapes.len();
        shapes[j] = None;
    }
    assert!(shapes.iter().flatten().all(|s| s.area() < u64::MAX));
}

#[test]
fn arc_shared_between_8_threads() {
    let _g = shared();
    let words: Arc<Vec<String>> =
        Arc::new((0..100_000u64).map(|i| format!("w{:x}", mix(i))).collect());
    let sink: Arc<Mutex<VecDeque<Box<dyn Shape>>>> = Arc::new(Mutex::new(VecDeque::new()));
    let handles: Vec<_> = (0..8u64)
        .map(|t| {
            let words = Arc::clone(&words);
            let sink = Arc::clone(&sink);
            thread::spawn(move || {
                let mut count = 0usize;
                let mut local = HashMap::new();
                for (i, w) in words.iter().enumerate().skip(t as usize).step_by(8) {
                    assert_eq!(*w, format!("w{:x}", mix(i as u64)));
                    *local.entry(w.len()).or_insert(0usize) += 1;
                    count += 1;
                    // Objects made here are dropped by whichever thread pops them.
                    let mut q = sink.lock().unwrap();
                    q.push_back(make_shape(i as u64));
                    if q.len() > 64 {
                        let s = q.pop_front().unwrap();
                        drop(q);
                        assert!(s.area() < u64::MAX);
                    }
                }
                (
                    count,
                    local.values().sum::<usize>(),
                    Arc::strong_count(&words) >= 2,
                )
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        let (c, s, shared) = h.join().unwrap();
        assert_eq!(c, s);
        assert!(shared);
        total += c;
    }
    assert_eq!(total, 100_000);
    assert_eq!(Arc::strong_count(&words), 1);
    let words = Arc::try_unwrap(words).expect("sole owner");
    assert_eq!(words.len(), 100_000);
}

#[test]
fn threads_allocate_and_free_in_parallel() {
    let _g = shared();
    let (tx, rx) = mpsc::channel::<Vec<String>>();
    let freer = thread::spawn(move || {
        let mut n = 0usize;
        for batch in rx {
            for (j, s) in batch.iter().enumerate() {
                assert!(s.starts_with('t'), "batch item {j}: {s}");
            }
            n += batch.len();
        }
        n
    });
    let workers: Vec<_> = (0..8u64)
        .map(|t| {
            let tx = tx.clone();
            thread::spawn(move || {
                let mut sum = 0u64;
                for round in 0..20u64 {
                    let mut m = BTreeMap::new();
                    for i in 0..5_000u64 {
                        m.insert(mix(t << 40 | round << 20 | i), vec![i; (i % 17) as usize]);
                    }
                    sum += m.values().map(|v| v.iter().sum::<u64>()).sum::<u64>();
                    let batch: Vec<String> =
                        (0..500).map(|i| format!("t{t}r{round}i{i}")).collect();
                    tx.send(batch).unwrap();
                }
                sum
            })
        })
        .collect();
    drop(tx);
    let expected_one: u64 = (0..5_000u64).map(|i| i * (i % 17)).sum::<u64>() * 20;
    for w in workers {
        assert_eq!(w.join().unwrap(), expected_one);
    }
    assert_eq!(freer.join().unwrap(), 8 * 20 * 500);
}

#[test]
fn sort_a_million_strings() {
    let _g = shared();
    const N: u64 = 1_000_000;
    let mut v: Vec<String> = (0..N).map(|i| format!("{:016x}", mix(i))).collect();
    v.sort();
    assert!(v.windows(2).all(|w| w[0] <= w[1]));
    let mut keys: Vec<u64> = (0..N).map(mix).collect();
    keys.sort_unstable();
    assert!(v.iter().zip(&keys).all(|(s, &k)| *s == format!("{k:016x}")));
    v.dedup();
    assert_eq!(v.len(), N as usize);
}

#[test]
fn raw_global_alloc_calls() {
    let _g = shared();
    unsafe {
        // Every layout family through the std entry points, realloc across kinds.
        for (size, align) in [
            (1, 1),
            (7, 4),
            (15, 8),
            (16, 16),
            (100, 32),
            (3000, 1024),
            (40_000, 8),
            (70_000, 16384),
            (8, 4096),
        ] {
            let l = Layout::from_size_align(size, align).unwrap();
            let p = alloc(l);
            assert!(
                !p.is_null() && (p as usize).is_multiple_of(align),
                "{l:?} -> {p:p}"
            );
            p.write_bytes(0xEE, size);
            let mut cur = (p, l);
            for new in [size * 3 + 1, size / 2 + 1, 50_000, 12, 200_000, 33_000] {
                let q = realloc(cur.0, cur.1, new);
                assert!(!q.is_null() && (q as usize).is_multiple_of(align));
                let keep = cur.1.size().min(new);
                assert!(
                    core::slice::from_raw_parts(q, keep)
                        .iter()
                        .all(|&b| b == 0xEE),
                    "{l:?} realloc to {new}"
                );
                q.write_bytes(0xEE, new);
                cur = (q, Layout::from_size_align(new, align).unwrap());
            }
            dealloc(cur.0, cur.1);
            let z = alloc_zeroed(l);
            assert!(
                core::slice::from_raw_parts(z, size).iter().all(|&b| b == 0),
                "alloc_zeroed {l:?}"
            );
            dealloc(z, l);
        }
    }
}

/// `stats()` is exact only at quiescence, and libtest's own threads allocate
/// while even an exclusive test runs: between a cache flush's pop and its flow
/// count a snapshot sees up to a batch fewer frees, between a refill's push
/// and its count up to a batch more. Both windows close within microseconds.
/// The frees counted so far, as the least of a few snapshots.
fn frees_settled_low() -> u64 {
    (0..5)
        .map(|_| {
            thread::sleep(std::time::Duration::from_millis(1));
            A.stats().frees
        })
        .min()
        .unwrap()
}

/// Waits (up to a second) until the frees counted reach `want`, and returns
/// the last snapshot: a batch in flight is waited out, a lost count is not.
fn stats_once_frees_reach(want: u64) -> tieralloc::Stats {
    let mut st = A.stats();
    for _ in 0..1000 {
        if st.frees >= want {
            break;
        }
        thread::sleep(std::time::Duration::from_millis(1));
        st = A.stats();
    }
    st
}

/// Runs last in spirit: whatever order the harness picks, it waits for the
/// shared tests in flight, then checks the heap counted everything.
#[test]
fn stats_reflect_the_workload() {
    let _g = exclusive();
    let before_frees = frees_settled_low();
    let before = A.stats();
    let data: Vec<Vec<u32>> = (0..10_000)
        .map(|i| vec![i; (i % 300) as usize + 1])
        .collect();
    let big = vec![7u8; 10 << 20];
    let during = A.stats();
    assert!(
        during.mallocs >= before.mallocs + 10_001,
        "mallocs {} -> {}",
        before.mallocs,
        during.mallocs
    );
    let bytes: u64 = data.iter().map(|v| (v.len() * 4) as u64).sum::<u64>() + (10 << 20);
    assert!(
        during.heap_alloc >= bytes,
        "heap_alloc {} < {bytes} live\n{during}",
        during.heap_alloc
    );
    assert!(during.heap_alloc > before.heap_alloc);
    assert!(during.heap_inuse >= during.heap_alloc, "{during}");
    assert!(during.heap_sys >= during.heap_inuse);
    assert!(during.cpus >= 1 && during.arenas >= 1 && during.meta_sys > 0);
    assert!(
        data.iter()
            .enumerate()
            .all(|(i, v)| v.iter().all(|&x| x == i as u32))
            && big.iter().all(|&b| b == 7)
    );
    drop(data);
    drop(big);
    let after = stats_once_frees_reach(before_frees + 10_001);
    assert!(
        after.frees >= before_frees + 10_001,
        "frees {before_frees} -> {}\n{after}",
        after.frees
    );
    assert!(
        after.heap_alloc + (10 << 20) <= during.heap_alloc + MIB,
        "freeing did not lower heap_alloc\n{after}"
    );
    assert_heap_drained("stats");
}
