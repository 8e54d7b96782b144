//! Single-CPU scenarios: boot, many boxes, out of memory, scavenging.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::hint::black_box;

use super::{Draw, Rng};
use crate::kheap::HEAP;
use crate::time::Watch;
use crate::{check, memory, println, Machine};

/// Boot and basic heap use.
pub fn boot(m: &Machine) -> bool {
    let b = Box::new(41u64);
    let mut v: Vec<u32> = (0..1000).collect();
    v.push(1000);
    let mut s = String::from("hello from the ");
    s.push_str(crate::kheap::GLOBAL_HEAP_NAME);
    s.push_str(" heap");
    let big = alloc::vec![7u8; 1 << 20];
    println!(
        "boot: box {:p}, vec {:p}, string {:p} {s:?}, 1 MiB vec {:p}",
        &*b,
        v.as_ptr(),
        s.as_ptr(),
        big.as_ptr()
    );
    let mut ok = check!(*b == 41, "box");
    ok &= check!(v.iter().sum::<u32>() == 500_500, "vec sum");
    ok &= check!(big.iter().all(|&x| x == 7), "large vec contents");
    ok &= check!(m.cpus_online == m.cpus_found, "all CPUs online");
    drop(big);
    // A raw round trip through the tieralloc heap itself (whatever the global heap is).
    let l = Layout::from_size_align(100, 8).unwrap();
    let p = HEAP.allocate(l);
    ok &= check!(!p.is_null(), "tieralloc allocate");
    // SAFETY: just allocated with `l`.
    unsafe {
        p.write_bytes(0xab, 100);
        HEAP.deallocate(p, l);
    }
    HEAP.check_invariants();
    println!("{}", HEAP.stats());
    println!(
        "boot: free frames {} of {}",
        memory::free_frames(),
        m.ram_frames
    );
    ok
}

/// blog_os's heap tests, ten times larger: `many_boxes_long_lived` keeps one
/// box alive across 1,024,000 short-lived ones; here 10,000 long-lived boxes
/// (checked at the end) live across them, plus `large_vec` with n = 10,000.
pub fn many_boxes(_m: &Machine) -> bool {
    const HEAP_SIZE_X10: u64 = 10 * 100 * 1024;
    let w = Watch::start();
    let before = HEAP.stats().live_objects();
    let long_lived = Box::new(1u64);
    let mut keep: Vec<Box<u64>> = Vec::with_capacity(10_000);
    let mut ok = true;
    for i in 0..HEAP_SIZE_X10 {
        let x = Box::new(i);
        if **black_box(&x) != i {
            ok = false;
        }
        if i % 102 == 0 && keep.len() < 10_000 {
            keep.push(Box::new(i ^ 0x5555));
        }
    }
    ok &= check!(*long_lived == 1, "long-lived box intact");
    ok &= check!(keep.len() == 10_000, "kept 10,000");
    ok &= check!(
        keep.iter()
            .enumerate()
            .all(|(k, b)| **b == (k as u64 * 102) ^ 0x5555),
        "long-lived contents"
    );
    // large_vec
    let n = 10_000u64;
    let v: Vec<u64> = (0..n).collect();
    ok &= check!(v.iter().sum::<u64>() == (n - 1) * n / 2, "large_vec sum");
    // Several simultaneous large-ish boxes of growing size (blog_os `simple_allocation` spirit).
    let boxes: Vec<Box<[u8]>> = (0..64)
        .map(|k| alloc::vec![k as u8; 1 << (k % 17)].into_boxed_slice())
        .collect();
    ok &= check!(
        boxes
            .iter()
            .enumerate()
            .all(|(k, b)| b.len() == 1 << (k % 17) && b.iter().all(|&x| x == k as u8)),
        "sized boxes"
    );
    drop(boxes);
    drop(v);
    drop(keep);
    drop(long_lived);
    let st = HEAP.stats();
    println!(
        "many_boxes: {} short-lived + 10,000 long-lived boxes in {}",
        HEAP_SIZE_X10,
        w.secs_f()
    );
    println!("{st}");
    ok &= check!(
        st.live_objects() == before,
        "live objects back to {before} (now {})",
        st.live_objects()
    );
    HEAP.check_invariants();
    ok
}

/// Allocates until the heap returns null, at whatever `-m` QEMU was given;
/// the kernel keeps running, frees everything and allocates again.
pub fn oom(_m: &Machine) -> bool {
    let big = Layout::from_size_align(1 << 20, 4096).unwrap();
    let small = Layout::from_size_align(200, 8).unwrap();
    let mut ok = true;
    // Room for every pointer, reserved before memory runs out.
    let mut bigs: Vec<*mut u8> = Vec::with_capacity(4096);
    let mut smalls: Vec<*mut u8> = Vec::with_capacity(1 << 20);
    println!("oom: free frames at start {}", memory::free_frames());
    let w = Watch::start();
    loop {
        let p = HEAP.allocate(big);
        if p.is_null() {
            break;
        }
        // SAFETY: a fresh 1 MiB object.
        unsafe { p.write_bytes(0x5a, 1 << 20) };
        bigs.push(p);
        if bigs.len() == bigs.capacity() {
            break;
        }
    }
    println!(
        "oom: {} x 1 MiB objects before null; free frames {}",
        bigs.len(),
        memory::free_frames()
    );
    let mut small_nulls = 0;
    while smalls.len() < smalls.capacity() {
        let p = HEAP.allocate(small);
        if p.is_null() {
            small_nulls += 1;
            if small_nulls == 3 {
                break;
            }
            continue;
        }
        // SAFETY: a fresh 200-byte object.
        unsafe { p.write_bytes(0xa5, 200) };
        smalls.push(p);
    }
    println!(
        "oom: then {} x 200 B objects before null (3 nulls in a row); free frames {}; the kernel is still running",
        smalls.len(),
        memory::free_frames()
    );
    ok &= check!(!bigs.is_empty(), "some large objects");
    ok &= check!(small_nulls == 3, "small allocations returned null");
    ok &= check!(bigs.len() < bigs.capacity(), "memory did run out");
    // Contents intact, then free everything.
    // SAFETY: every pointer is a live object of its layout.
    unsafe {
        ok &= check!(
            bigs.iter()
                .all(|&p| *p == 0x5a && *p.add((1 << 20) - 1) == 0x5a),
            "large contents"
        );
        ok &= check!(
            smalls.iter().all(|&p| *p == 0xa5 && *p.add(199) == 0xa5),
            "small contents"
        );
        for &p in &smalls {
            HEAP.deallocate(p, small);
        }
        for &p in &bigs {
            HEAP.deallocate(p, big);
        }
    }
    let first = bigs.len();
    smalls.clear();
    bigs.clear();
    let released = HEAP.scavenge();
    println!(
        "oom: freed all; scavenged {} KiB; free frames {}",
        released >> 10,
        memory::free_frames()
    );
    // Usable again: at least 90% of the first round.
    loop {
        let p = HEAP.allocate(big);
        if p.is_null() {
            break;
        }
        // SAFETY: fresh.
        unsafe { p.write_bytes(0x11, 1 << 20) };
        bigs.push(p);
        if bigs.len() == bigs.capacity() {
            break;
        }
    }
    println!(
        "oom: second round: {} x 1 MiB objects (first round {first})",
        bigs.len()
    );
    ok &= check!(
        bigs.len() * 10 >= first * 9,
        "memory usable again after frees"
    );
    for &p in &bigs {
        // SAFETY: live objects of `big`.
        unsafe { HEAP.deallocate(p, big) };
    }
    // Ordinary allocation still works.
    let v: Vec<u64> = (0..10_000).collect();
    ok &= check!(v.iter().sum::<u64>() == 49_995_000, "vec after oom");
    drop(v);
    HEAP.check_invariants();
    println!("oom: done in {}\n{}", w.secs_f(), HEAP.stats());
    ok
}

/// Large objects and scavenging return frames to the frame allocator.
pub fn scavenge(_m: &Machine) -> bool {
    let mut ok = true;
    // Warm up: the heap's first arena and caches exist.
    drop(Box::new(0u64));
    HEAP.scavenge();
    let f0 = memory::free_frames();
    let mapped0 = HEAP.source().frames_mapped();
    let s0 = HEAP.stats();
    println!(
        "scavenge: start: free frames {f0}, heap frames mapped {mapped0}, meta {} KiB",
        s0.meta_sys >> 10
    );
    let mut rng = Rng::new(7);
    let mut large: Vec<(*mut u8, Layout)> = Vec::with_capacity(300);
    for i in 0..300 {
        let size = rng.between(40 << 10, 2 << 20) as usize;
        let l = Layout::from_size_align(size, if i % 7 == 0 { 1 << 16 } else { 8 }).unwrap();
        let p = HEAP.allocate(l);
        ok &= check!(!p.is_null(), "large allocation {i}");
        if p.is_null() {
            continue;
        }
        // SAFETY: fresh object of `size` bytes.
        unsafe {
            p.write_bytes(i as u8, size);
        }
        large.push((p, l));
    }
    let small: Vec<Box<[u64]>> = (0..20_000)
        .map(|i| alloc::vec![i as u64; (i % 64) + 1].into_boxed_slice())
        .collect();
    let f1 = memory::free_frames();
    let s1 = HEAP.stats();
    println!(
        "scavenge: {} large objects ({} MiB) + 20,000 small: free frames {f1} (-{}), heap_sys {} MiB",
        large.len(),
        s1.large_alloc >> 20,
        f0 - f1,
        s1.heap_sys >> 20
    );
    // SAFETY: live objects of their layouts.
    unsafe {
        for (i, &(p, l)) in large.iter().enumerate() {
            ok &= check!(
                *p == i as u8 && *p.add(l.size() - 1) == i as u8,
                "large object {i} contents"
            );
            HEAP.deallocate(p, l);
        }
    }
    ok &= check!(
        small
            .iter()
            .enumerate()
            .all(|(i, b)| b.len() == (i % 64) + 1 && b.iter().all(|&x| x == i as u64)),
        "small contents"
    );
    drop(small);
    large.clear();
    large.shrink_to_fit();
    let f2a = memory::free_frames();
    let released = HEAP.scavenge();
    let f2 = memory::free_frames();
    let mapped2 = HEAP.source().frames_mapped();
    let s2 = HEAP.stats();
    println!(
        "scavenge: freed all: free frames {f2a}; scavenge released {} KiB; free frames {f2}",
        released >> 10
    );
    println!("{s2}");
    // What may legitimately stay: heap metadata (never freed) and page tables
    // built for the heap window (the x86_64 crate does not free empty tables):
    // at most one PT per 2 MiB, one PD per 1 GiB, one PDPT, of the window used.
    let meta_pages = ((s2.meta_sys - s0.meta_sys) as usize).div_ceil(4096);
    let pt_bound =
        (s2.heap_sys as usize).div_ceil(2 << 20) + (s2.heap_sys as usize).div_ceil(1 << 30) + 1;
    let kept = f0 as isize - f2 as isize;
    println!(
        "scavenge: frames not back: {kept} (bound: {meta_pages} metadata + {pt_bound} page-table frames); heap frames mapped {mapped0} -> {mapped2}; heap_inuse {} B, cached {} B",
        s2.heap_inuse, s2.cached_bytes
    );
    ok &= check!(
        s2.heap_inuse == 0 && s2.cached_bytes == 0,
        "heap empty after scavenge"
    );
    ok &= check!(s2.heap_released == s2.heap_idle, "every free page released");
    ok &= check!(
        mapped2 <= mapped0 + meta_pages,
        "mapped heap frames back to start + metadata ({mapped2} vs {mapped0} + {meta_pages})"
    );
    ok &= check!(
        kept <= (meta_pages + pt_bound) as isize,
        "free-frame count back to start within the bound"
    );
    HEAP.check_invariants();
    ok
}
