//! The scavenger really gives memory back: RSS (from `/proc/self/statm`) drops
//! after `scavenge()`, the automatic scavenger keeps dirty free memory within
//! the retained budget, and released pages are reused before the heap grows.
//!
//! RSS is per process, so the tests of this file run one at a time (`SERIAL`),
//! each on a heap of its own (not the global allocator, which stays the system
//! one here).
#![cfg(feature = "linux")]

mod common;

use core::alloc::Layout;
use std::sync::{Mutex, MutexGuard};

use common::{single_cpu_heap, Rng};
use tieralloc::internals::ObjectKind;
use tieralloc::internals::{SizeClass, NUM_CLASSES};
use tieralloc::internals::{DEFAULT_RETAIN_BYTES, RETAIN_INUSE_DIVISOR};
use tieralloc::{Heap, MmapSource, SingleCpu, Stats, PAGE_BYTES};

/// Go's page, the page of every source these tests use.
const GO_PAGE: tieralloc::internals::PageSize = tieralloc::internals::PageSize::GO;

/// The hosted heaps' geometry (Go's classes).
const GO: &tieralloc::Geometry = &tieralloc::Geometry::GO;

type H = Heap<MmapSource, SingleCpu>;

const MIB: usize = 1 << 20;
const OS_PAGE: usize = 4096;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resident set size in bytes.
fn rss() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = s
        .split_whitespace()
        .nth(1)
        .expect("statm field 2")
        .parse()
        .expect("statm number");
    // SAFETY: sysconf has no preconditions.
    let ps = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * if ps > 0 { ps as usize } else { OS_PAGE }
}

fn mib(b: usize) -> f64 {
    b as f64 / MIB as f64
}

#[derive(Clone, Copy)]
struct Obj {
    p: *mut u8,
    l: Layout,
}

/// Allocates `size` bytes (align 8) and writes every OS page of it.
fn alloc_touched(h: &H, size: usize, byte: u8) -> Obj {
    let l = Layout::from_size_align(size, 8).unwrap();
    let p = h.allocate(l);
    assert!(!p.is_null(), "out of memory for {size} B");
    // SAFETY: a fresh object of `size` bytes.
    unsafe { p.write_bytes(byte, size) };
    Obj { p, l }
}

fn free(h: &H, o: Obj) {
    // SAFETY: allocated by `h` with this layout, dropped here.
    unsafe { h.deallocate(o.p, o.l) };
}

/// Large objects (32 KiB + 1 .. 4 MiB) totalling at least `total` bytes.
fn large_sizes(rng: &mut Rng, total: usize) -> Vec<usize> {
    let mut v = Vec::new();
    let mut sum = 0;
    while sum < total {
        let s = 32 * 1024 + 1 + rng.below(4 * MIB - 32 * 1024);
        v.push(s);
        sum += s;
    }
    v
}

/// Small objects of every class (exactly the class size, so nothing is lost
/// to rounding) totalling at least `total` bytes.
fn small_sizes(total: usize) -> Vec<usize> {
    let mut v = Vec::new();
    let mut sum = 0;
    let mut c = 2;
    while sum < total {
        let s = GO.size(SizeClass::new(c).unwrap());
        assert_eq!(
            ObjectKind::of(s, 8),
            ObjectKind::Small(SizeClass::new(c).unwrap())
        );
        v.push(s);
        sum += s;
        c = if c + 1 == NUM_CLASSES { 2 } else { c + 1 };
    }
    v
}

/// A large object's bytes: its pages ([`tieralloc::internals::large_pages`]).
fn page_round(n: usize) -> usize {
    tieralloc::internals::large_pages(n, GO_PAGE)
        .unwrap()
        .bytes(GO_PAGE)
}

fn check_identities(st: &Stats) {
    assert_eq!(st.heap_idle, st.heap_sys - st.heap_inuse, "{st}");
    assert!(st.heap_released <= st.heap_idle, "{st}");
    assert!(st.heap_alloc + st.cached_bytes <= st.heap_inuse, "{st}");
}

#[test]
fn scavenge_returns_freed_memory_to_the_os() {
    let _g = serial();
    static HEAP: H = single_cpu_heap();
    // Keep everything dirty on free, so that it is `scavenge()` that releases.
    HEAP.set_retain_bytes(usize::MAX);
    let mut rng = Rng::new(1);
    let large = large_sizes(&mut rng, 256 * MIB);
    let small = small_sizes(64 * MIB);
    let large_bytes: usize = large.iter().map(|&s| page_round(s)).sum();
    let small_bytes: usize = small.iter().sum();
    let allocated = large_bytes + small_bytes;

    let rss0 = rss();
    let mut objs: Vec<Obj> = Vec::with_capacity(large.len() + small.len());
    // Interleave large and small allocations.
    let (mut li, mut si) = (0, 0);
    while li < large.len() || si < small.len() {
        if si < small.len() && (li == large.len() || rng.below(small.len() / large.len() + 1) != 0)
        {
            objs.push(alloc_touched(&HEAP, small[si], 0x11));
            si += 1;
        } else {
            objs.push(alloc_touched(&HEAP, large[li], 0x22));
            li += 1;
        }
    }
    let rss1 = rss();
    let st1 = HEAP.stats();
    println!(
        "allocated {:.1} MiB ({} large, {} small): RSS {:.1} -> {:.1} MiB\n{st1}",
        mib(allocated),
        large.len(),
        small.len(),
        mib(rss0),
        mib(rss1)
    );
    check_identities(&st1);
    assert_eq!(st1.large_alloc as usize, large_bytes, "{st1}");
    assert!(st1.heap_alloc as usize >= allocated, "{st1}");
    assert!(st1.heap_inuse as usize >= allocated, "{st1}");
    assert!(
        rss1 - rss0 >= allocated - allocated / 20,
        "touching {:.1} MiB raised RSS by only {:.1} MiB",
        mib(allocated),
        mib(rss1 - rss0)
    );

    // Free in a scrambled order.
    for i in (1..objs.len()).rev() {
        objs.swap(i, rng.below(i + 1));
    }
    for o in objs.drain(..) {
        free(&HEAP, o);
    }
    let st2 = HEAP.stats();
    let rss2 = rss();
    println!("freed: RSS {:.1} MiB\n{st2}", mib(rss2));
    check_identities(&st2);
    assert_eq!(st2.mallocs, st2.frees);
    assert_eq!(
        st2.heap_released, st1.heap_released,
        "nothing released before scavenge() with a 1 TiB budget"
    );
    assert!(
        rss2 + allocated / 10 >= rss1,
        "RSS dropped before scavenge(): {:.1} -> {:.1} MiB",
        mib(rss1),
        mib(rss2)
    );

    let released = HEAP.scavenge();
    let st3 = HEAP.stats();
    let rss3 = rss();
    println!(
        "scavenged {:.1} MiB: RSS {:.1} MiB\n{st3}",
        mib(released),
        mib(rss3)
    );
    HEAP.check_invariants();
    check_identities(&st3);
    assert_eq!(st3.heap_inuse, 0, "{st3}");
    assert_eq!(st3.heap_alloc, 0, "{st3}");
    assert_eq!(st3.heap_released, st3.heap_idle, "{st3}");
    assert_eq!(
        st3.heap_sys, st1.heap_sys,
        "freeing or scavenging changed heap_sys"
    );
    let gained = (st3.heap_released - st1.heap_released) as usize;
    assert_eq!(
        gained, released,
        "scavenge()'s return value vs heap_released"
    );
    assert_eq!(st3.scavenged_total - st1.scavenged_total, released as u64);
    // Everything that was in use or dirty is released now: the objects plus
    // their spans' tails and the pages of the cached objects' spans.
    assert_eq!(
        gained as u64,
        st1.heap_inuse + (st1.heap_idle - st1.heap_released),
        "{st1}\n{st3}"
    );
    assert!(
        gained >= allocated && gained <= allocated + allocated / 50 + 4 * MIB,
        "released {:.1} MiB for {:.1} MiB allocated",
        mib(gained),
        mib(allocated)
    );
    assert!(
        rss1 >= rss3 + allocated * 8 / 10,
        "scavenge() released {:.1} MiB but RSS only went {:.1} -> {:.1} MiB (allocated {:.1} MiB)",
        mib(released),
        mib(rss1),
        mib(rss3),
        mib(allocated)
    );
    HEAP.set_retain_bytes(DEFAULT_RETAIN_BYTES);
}

#[test]
fn automatic_scavenger_bounds_dirty_memory() {
    let _g = serial();
    static HEAP: H = single_cpu_heap();
    const RETAIN: usize = 8 * MIB;
    HEAP.set_retain_bytes(RETAIN);
    // RSS beyond what the heap says is in use or dirty: metadata, huge-page
    // rounding, the test's own bookkeeping.
    const SLACK: usize = 16 * MIB;
    let mut rng = Rng::new(2);
    let rss0 = rss();

    // The highest in-use size so far: the scavenger's recent peak is at most this.
    let peak = std::cell::Cell::new(0usize);
    let check = |what: &str| -> Stats {
        let st = HEAP.stats();
        check_identities(&st);
        let dirty = (st.heap_idle - st.heap_released) as usize;
        let inuse = st.heap_inuse as usize;
        peak.set(peak.get().max(inuse));
        // The documented allowance (pageheap "Scavenger policy"): the retained
        // bytes, or the footprint `P * (1 + 1/RETAIN_INUSE_DIVISOR)` less what is
        // in use, `P` the recent in-use peak (at most the peak so far).
        let p = peak.get();
        let budget = RETAIN.max(p + p / RETAIN_INUSE_DIVISOR - inuse);
        assert!(
            dirty <= budget + PAGE_BYTES,
            "{what}: {:.2} MiB dirty free memory over the allowance of {:.2} MiB\n{st}",
            mib(dirty),
            mib(budget)
        );
        st
    };
    let check_rss = |what: &str, st: &Stats| {
        let r = rss();
        let dirty = (st.heap_idle - st.heap_released) as usize;
        let held = st.heap_inuse as usize + dirty;
        assert!(
            r <= rss0 + held + SLACK,
            "{what}: RSS {:.1} MiB, base {:.1} MiB + in use or dirty {:.1} MiB\n{st}",
            mib(r),
            mib(rss0),
            mib(held)
        );
    };

    // Phase 1: 200 MiB of large objects alive at once, then all freed.
    let sizes = large_sizes(&mut rng, 200 * MIB);
    let mut objs: Vec<Obj> = sizes
        .iter()
        .map(|&s| alloc_touched(&HEAP, s, 0x33))
        .collect();
    let st = check("all allocated");
    assert!(st.heap_inuse as usize >= 200 * MIB);
    for i in (1..objs.len()).rev() {
        objs.swap(i, rng.below(i + 1));
    }
    for (k, o) in objs.drain(..).enumerate() {
        free(&HEAP, o);
        let st = check("freeing");
        if k % 16 == 0 {
            check_rss("freeing", &st);
        }
    }
    let st = check("all freed");
    check_rss("all freed", &st);
    // Freeing the whole heap is one epoch of the scavenger's clock: the pages
    // are kept for a rebuild. A small heap churning afterwards ages the old
    // peak out (epochs of 4 MiB of traffic at this size), and then they go.
    // (2 MiB objects: bigger than the large-span cache takes.)
    let kept = st.scavenged_total;
    for _ in 0..4 * tieralloc::internals::PEAK_EPOCHS {
        let o = alloc_touched(&HEAP, 2 * MIB, 0x35);
        free(&HEAP, o);
        check("small churn");
    }
    let st = check("peak aged out");
    assert!(st.scavenged_total > kept, "{st}");
    // What is still in use is the large-span cache's idle spans (bounded).
    assert_eq!(st.heap_inuse, st.cached_bytes, "{st}");
    assert!(
        st.cached_bytes as usize <= tieralloc::internals::LARGE_CACHE_MAX_PAGES.get() * PAGE_BYTES,
        "{st}"
    );
    assert!(
        st.scavenged_total as usize + st.cached_bytes as usize >= 200 * MIB - RETAIN - PAGE_BYTES,
        "{st}"
    );
    let r = rss();
    println!("phase 1: RSS {:.1} -> {:.1} MiB\n{st}", mib(rss0), mib(r));
    assert!(
        r <= rss0 + RETAIN + st.cached_bytes as usize + SLACK,
        "RSS {:.1} MiB after freeing 200 MiB (base {:.1} MiB)",
        mib(r),
        mib(rss0)
    );

    // Phase 2: churn 200 MiB more through a window of up to 48 MiB live, with
    // small objects mixed in (their spans come and go too); no scavenge().
    let mut live: Vec<Obj> = Vec::new();
    let (mut live_bytes, mut churned) = (0usize, 0usize);
    let mut step = 0usize;
    while churned < 200 * MIB {
        step += 1;
        if live_bytes < 48 * MIB && rng.below(3) != 0 {
            let size = if rng.below(4) == 0 {
                16 + rng.below(32 * 1024 - 16)
            } else {
                32 * 1024 + 1 + rng.below(2 * MIB)
            };
            let o = alloc_touched(&HEAP, size, 0x44);
            live_bytes += size;
            churned += size;
            live.push(o);
        } else if !live.is_empty() {
            let o = live.swap_remove(rng.below(live.len()));
            live_bytes -= o.l.size();
            free(&HEAP, o);
        }
        let st = check("churn");
        if step.is_multiple_of(64) {
            check_rss("churn", &st);
        }
    }
    for o in live.drain(..) {
        free(&HEAP, o);
        check("drain");
    }
    let st = check("drained");
    check_rss("drained", &st);
    println!("phase 2: RSS {:.1} MiB\n{st}", mib(rss()));
    HEAP.check_invariants();
    HEAP.scavenge();
    HEAP.set_retain_bytes(DEFAULT_RETAIN_BYTES);
}

#[test]
fn released_pages_are_reused_before_growing() {
    let _g = serial();
    static HEAP: H = single_cpu_heap();
    let mut rng = Rng::new(3);
    let mut sizes = large_sizes(&mut rng, 256 * MIB);
    sizes.extend(small_sizes(32 * MIB));
    for i in (1..sizes.len()).rev() {
        sizes.swap(i, rng.below(i + 1));
    }
    let total: usize = sizes.iter().sum();

    let objs: Vec<Obj> = sizes
        .iter()
        .map(|&s| alloc_touched(&HEAP, s, 0x55))
        .collect();
    let st1 = HEAP.stats();
    for &o in &objs {
        free(&HEAP, o);
    }
    let released = HEAP.scavenge();
    let st2 = HEAP.stats();
    let rss2 = rss();
    println!(
        "round 1: {:.1} MiB; scavenged {:.1} MiB\n{st2}",
        mib(total),
        mib(released)
    );
    assert_eq!(st2.heap_inuse, 0);
    assert_eq!(st2.heap_released, st2.heap_sys, "{st2}");
    assert_eq!(st2.heap_sys, st1.heap_sys);

    // Round 2: the same objects again, every other one zeroed; the pages come
    // from the released ones, read as zero where asked, and the heap does not grow.
    let mut objs2 = Vec::with_capacity(sizes.len());
    for (i, &s) in sizes.iter().enumerate() {
        let l = Layout::from_size_align(s, 8).unwrap();
        let p = if i % 2 == 0 {
            HEAP.allocate_zeroed(l)
        } else {
            HEAP.allocate(l)
        };
        assert!(!p.is_null());
        if i % 2 == 0 {
            // SAFETY: a fresh object of `s` bytes.
            let z = unsafe { core::slice::from_raw_parts(p, s) };
            assert!(
                z.iter().all(|&b| b == 0),
                "allocate_zeroed({s}) of reused released memory not zero"
            );
        }
        // SAFETY: as above.
        unsafe { p.write_bytes(0x66, s) };
        objs2.push(Obj { p, l });
    }
    let st3 = HEAP.stats();
    let rss3 = rss();
    println!(
        "round 2: RSS {:.1} -> {:.1} MiB\n{st3}",
        mib(rss2),
        mib(rss3)
    );
    check_identities(&st3);
    assert_eq!(
        st3.heap_sys, st2.heap_sys,
        "the heap grew instead of reusing released pages\n{st2}\n{st3}"
    );
    assert_eq!(st3.arenas, st2.arenas);
    assert_eq!(
        st3.heap_inuse, st1.heap_inuse,
        "the same objects take the same pages"
    );
    assert_eq!(
        st3.heap_released,
        st2.heap_released - st3.heap_inuse,
        "in-use pages came from released ones\n{st3}"
    );
    assert!(
        rss3 >= rss2 + total * 9 / 10,
        "reused pages are backed again: RSS {:.1} -> {:.1} MiB",
        mib(rss2),
        mib(rss3)
    );
    for o in objs2 {
        // SAFETY: `o` is live, `l.size()` bytes.
        let s = unsafe { core::slice::from_raw_parts(o.p, o.l.size()) };
        assert!(s.iter().all(|&b| b == 0x66));
        free(&HEAP, o);
    }

    // Round 3, after another scavenge (which also empties the caches, so no
    // small span is left to fragment the arenas): a different mix, 1 MiB
    // objects of about the same bytes, also fits.
    HEAP.scavenge();
    let n = total / MIB;
    let objs3: Vec<Obj> = (0..n).map(|_| alloc_touched(&HEAP, MIB, 0x77)).collect();
    let st4 = HEAP.stats();
    println!("round 3\n{st4}");
    assert_eq!(
        st4.heap_sys, st2.heap_sys,
        "1 MiB objects made the heap grow\n{st4}"
    );
    for o in objs3 {
        free(&HEAP, o);
    }
    HEAP.scavenge();
    HEAP.check_invariants();
    let st5 = HEAP.stats();
    assert_eq!(st5.heap_inuse, 0);
    assert_eq!(st5.heap_released, st5.heap_sys);
}
