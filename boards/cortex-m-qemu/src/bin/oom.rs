//! Scenario `oom`: allocate until the heap returns null, show that the
//! firmware keeps running, free everything, and allocate as much again.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::alloc::{alloc, dealloc, Layout};
use core::hint::black_box;
use core::ptr;
use cortex_m_qemu::{check, hprintln, init_heap, pass, print_stats, HEAP, HEAP_BYTES};
use cortex_m_rt::entry;

/// Allocates blocks of `size` bytes until null, each linked to the previous
/// one through its first word and filled after it; returns the list and the count.
fn fill(size: usize) -> (*mut u8, usize) {
    let l = Layout::from_size_align(size, 4).unwrap();
    let mut head: *mut u8 = ptr::null_mut();
    let mut n = 0;
    loop {
        // SAFETY: `l` has a non-zero size.
        let p = black_box(unsafe { alloc(l) });
        if p.is_null() {
            break;
        }
        // SAFETY: `p` is a fresh block of `size` >= 8 bytes, 4-aligned.
        unsafe {
            p.cast::<*mut u8>().write(head);
            ptr::write_bytes(p.add(4), (n & 0xff) as u8, size - 4);
        }
        head = p;
        n += 1;
    }
    (head, n)
}

/// Checks and frees the list [`fill`] made; returns the count.
fn free_all(mut head: *mut u8, size: usize, count: usize) -> usize {
    let l = Layout::from_size_align(size, 4).unwrap();
    let mut n = 0;
    while !head.is_null() {
        let i = count - 1 - n;
        // SAFETY: every block on the list is live, `size` bytes, written by `fill`.
        let next = unsafe {
            let body = core::slice::from_raw_parts(head.add(4), size - 4);
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

#[entry]
fn main() -> ! {
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
    for (round, size) in [(1, 64usize), (2, 200), (3, 24), (4, 64)] {
        let (head, n) = fill(size);
        let st = HEAP.stats();
        hprintln!(
            "oom: round {}: {} blocks of {} B ({} B, {}% of the region) before null; heap_inuse {} B",
            round,
            n,
            size,
            n * size,
            n * size * 100 / HEAP_BYTES,
            st.heap_inuse
        );
        check!(n > 0, "oom: round {}: nothing allocated", round);
        // Still running: a further request of the same size fails cleanly too,
        // and work that needs no heap goes on.
        // SAFETY: non-zero size.
        let again = black_box(unsafe { alloc(Layout::from_size_align(size, 4).unwrap()) });
        check!(again.is_null(), "oom: a request after null succeeded");
        let mut x = 1u32;
        for i in 0..1000u32 {
            x = black_box(x.wrapping_mul(1_664_525).wrapping_add(i));
        }
        hprintln!(
            "oom: round {}: the firmware is still running ({:#x})",
            round,
            x
        );
        let freed = free_all(head, size, n);
        check!(freed == n, "oom: freed {} of {}", freed, n);
        let st = HEAP.stats();
        check!(
            st.live_objects() == 0,
            "oom: {} live after the frees",
            st.live_objects()
        );
        if size == 64 {
            if first == 0 {
                first = n;
            } else {
                hprintln!("oom: second round of 64 B blocks: {} (first {})", n, first);
                check!(
                    n * 10 >= first * 9,
                    "oom: only {} of {} blocks after the frees",
                    n,
                    first
                );
            }
        }
    }
    // Memory is usable again: ordinary allocations after the last round.
    let v: alloc::vec::Vec<u32> = (0..2000).collect();
    check!(v.iter().sum::<u32>() == 1_999_000, "Vec after oom");
    drop(v);
    print_stats();
    hprintln!("cortex-m: oom ok");
    pass()
}
