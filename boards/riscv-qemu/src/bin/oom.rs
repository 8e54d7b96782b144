//! Scenario `oom`: allocate until the heap returns null, show that the
//! firmware keeps running, free everything, and allocate as much again.
//! Hart 0 fills the heap alone with blocks of 64 KiB (large objects, from the
//! page heap), 200 B and 24 B, then 64 KiB again (at least 90 % of the first
//! round's count must fit); then all four harts fill it at once with 1 KiB
//! blocks until each sees null, and free them.
#![no_std]
#![no_main]
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

extern crate alloc;

use alloc::alloc::{alloc, dealloc, Layout};
use core::hint::black_box;
use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};
use riscv_qemu::{
    check, init_heap, pass, print_stats, println, wait_heap, Barrier, HARTS, HEAP, HEAP_BYTES,
};

/// A pointer's bytes (and alignment): the link at the start of every block.
const W: usize = core::mem::size_of::<usize>();

/// Allocates blocks of `size` bytes until null, each linked to the previous
/// one through its first word and filled after it; returns the list and the count.
fn fill(size: usize) -> (*mut u8, usize) {
    let l = Layout::from_size_align(size, W).unwrap();
    let mut head: *mut u8 = ptr::null_mut();
    let mut n = 0;
    loop {
        // SAFETY: `l` has a non-zero size.
        let p = black_box(unsafe { alloc(l) });
        if p.is_null() {
            break;
        }
        // SAFETY: `p` is a fresh block of `size` >= 2 * W bytes, W-aligned.
        unsafe {
            p.cast::<*mut u8>().write(head);
            ptr::write_bytes(p.add(W), (n & 0xff) as u8, size - W);
        }
        head = p;
        n += 1;
    }
    (head, n)
}

/// Checks and frees the list [`fill`] made; returns the count.
fn free_all(mut head: *mut u8, size: usize, count: usize) -> usize {
    let l = Layout::from_size_align(size, W).unwrap();
    let mut n = 0;
    while !head.is_null() {
        let i = count - 1 - n;
        // SAFETY: every block on the list is live, `size` bytes, written by `fill`.
        let next = unsafe {
            let body = core::slice::from_raw_parts(head.add(W), size - W);
            check!(
                body.iter().all(|b| *b == (i & 0xff) as u8),
                "oom: block {} at {:p} corrupted",
                i,
                head
            );
            let next = head.cast::<*mut u8>().read();
            dealloc(head, l);
            next
        };
        head = next;
        n += 1;
    }
    n
}

static BARRIER: Barrier = Barrier::new();
/// Blocks of the all-harts round, per hart.
static COUNTS: [AtomicUsize; HARTS] = [const { AtomicUsize::new(0) }; HARTS];

/// The all-harts round: 1 KiB blocks until null on every hart at once.
fn together(hart: usize) {
    BARRIER.wait(HARTS);
    let (head, n) = fill(1024);
    COUNTS[hart].store(n, Ordering::Relaxed);
    // Nobody frees before everybody has seen null.
    BARRIER.wait(HARTS);
    let freed = free_all(head, 1024, n);
    check!(freed == n, "oom: hart {} freed {} of {}", hart, freed, n);
    BARRIER.wait(HARTS);
}

#[no_mangle]
extern "C" fn hart_main(hart: usize) -> ! {
    if hart != 0 {
        wait_heap();
        together(hart);
        loop {
            core::hint::spin_loop();
        }
    }
    init_heap("oom");
    // A request larger than the whole region fails at once.
    // SAFETY: non-zero size.
    let huge = black_box(unsafe { alloc(Layout::from_size_align(HEAP_BYTES * 2, 8).unwrap()) });
    check!(
        huge.is_null(),
        "a {} B request succeeded: {:p}",
        HEAP_BYTES * 2,
        huge
    );

    let mut first = 0;
    for (round, size) in [(1, 64 * 1024usize), (2, 200), (3, 24), (4, 64 * 1024)] {
        let (head, n) = fill(size);
        let st = HEAP.stats();
        println!(
            "oom: round {}: {} blocks of {} B ({} KiB, {}% of the region) before null; heap_inuse {} KiB",
            round,
            n,
            size,
            n * size / 1024,
            n * size * 100 / HEAP_BYTES,
            st.heap_inuse / 1024
        );
        check!(n > 0, "oom: round {}: nothing allocated", round);
        // Still running: a further request of the same size fails cleanly too,
        // and work that needs no heap goes on.
        // SAFETY: non-zero size.
        let again = black_box(unsafe { alloc(Layout::from_size_align(size, W).unwrap()) });
        check!(again.is_null(), "oom: a request after null succeeded");
        let mut x = 1u32;
        for i in 0..1000u32 {
            x = black_box(x.wrapping_mul(1_664_525).wrapping_add(i));
        }
        println!(
            "oom: round {}: the firmware is still running ({:#x})",
            round, x
        );
        let freed = free_all(head, size, n);
        check!(freed == n, "oom: freed {} of {}", freed, n);
        let st = HEAP.stats();
        check!(
            st.live_objects() == 0,
            "oom: {} live after the frees",
            st.live_objects()
        );
        if size == 64 * 1024 {
            if first == 0 {
                first = n;
            } else {
                println!(
                    "oom: second round of 64 KiB blocks: {} (first {})",
                    n, first
                );
                check!(
                    n * 10 >= first * 9,
                    "oom: only {} of {} blocks after the frees",
                    n,
                    first
                );
            }
        }
    }
    together(0);
    let counts: [usize; HARTS] = core::array::from_fn(|h| COUNTS[h].load(Ordering::Relaxed));
    let total: usize = counts.iter().sum();
    println!(
        "oom: all {} harts at once: {:?} blocks of 1 KiB before null ({} KiB, {}% of the region), all freed",
        HARTS,
        counts,
        total,
        total * 1024 * 100 / HEAP_BYTES
    );
    // Which hart gets how much depends on how QEMU schedules them (one may
    // take it all in one time slice); together they fill the region.
    check!(
        total * 1024 * 10 >= HEAP_BYTES * 8,
        "oom: all harts together got only {} KiB",
        total
    );
    // Memory is usable again: ordinary allocations after the last round.
    let v: alloc::vec::Vec<u32> = (0..2000).collect();
    check!(v.iter().sum::<u32>() == 1_999_000, "Vec after oom");
    drop(v);
    let st = HEAP.stats();
    check!(
        st.live_objects() == 0,
        "oom: {} live at the end",
        st.live_objects()
    );
    print_stats();
    println!("riscv: oom ok");
    pass()
}
