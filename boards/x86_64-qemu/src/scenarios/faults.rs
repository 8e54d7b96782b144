//! Scenarios that end in a reported fault: a stack overflow into a guard page,
//! and (feature `checks`) a double free and a free of a foreign pointer.

use core::alloc::Layout;
use core::hint::black_box;
use core::sync::atomic::Ordering;

use crate::interrupts::EXPECT_GUARD_HIT;
use crate::kheap::HEAP;
use crate::percpu::PERCPU;
use crate::{println, smp, Machine};

#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let mut buf = [0u8; 512];
    buf[(depth % 512) as usize] = depth as u8;
    black_box(&mut buf);
    if depth == u64::MAX {
        return 0;
    }
    let r = recurse(depth + 1);
    r + buf[(depth % 7) as usize] as u64
}

/// CPU 1 overflows its kernel stack; the page-fault handler (on its own IST
/// stack) reports "guard page hit at 0x... (stack of CPU 1)" and ends the run.
pub fn guard(m: &Machine) -> bool {
    if m.cpus_online < 2 {
        println!("guard: needs at least 2 CPUs (-smp 2)");
        return false;
    }
    let b = &PERCPU[1];
    println!(
        "guard: CPU 1 stack {:#x}..{:#x}, guard page {:#x}..{:#x}; recursing until it overflows",
        b.stack_lo.load(Ordering::SeqCst),
        b.stack_hi.load(Ordering::SeqCst),
        b.guard_lo.load(Ordering::SeqCst),
        b.stack_lo.load(Ordering::SeqCst)
    );
    EXPECT_GUARD_HIT.store(true, Ordering::SeqCst);
    smp::run_on(2, &|cpu| {
        if cpu == 1 {
            black_box(recurse(0));
        }
    });
    println!("guard: the overflow was not caught");
    false
}

/// Frees the same object twice: tieralloc's checks must panic with the address.
pub fn double_free(_m: &Machine) -> bool {
    if !cfg!(feature = "checks") {
        println!("double_free: this image was built without the `checks` feature; nothing would catch it");
        return false;
    }
    let l = Layout::from_size_align(48, 8).unwrap();
    let p = HEAP.allocate(l);
    let q = HEAP.allocate(l);
    println!("double_free: allocated {p:p} and {q:p}; freeing {p:p} twice");
    // SAFETY: the first free is legitimate; the second is the bug under test,
    // which the `checks` feature turns into a panic before any state changes.
    unsafe {
        HEAP.deallocate(p, l);
        HEAP.deallocate(black_box(p), l);
    }
    println!("double_free: NOT detected");
    false
}

/// Frees a pointer that is not in the heap window (a static) and one inside
/// the window that was never allocated: both must be reported.
pub fn foreign_free(m: &Machine) -> bool {
    if !cfg!(feature = "checks") {
        println!("foreign_free: this image was built without the `checks` feature; nothing would catch it");
        return false;
    }
    static NOT_HEAP: [u64; 8] = [0; 8];
    let l = Layout::from_size_align(64, 8).unwrap();
    let target = match m.info.arg("ptr") {
        Some("window") => (crate::kheap::HEAP_WINDOW + (48 << 30)) as *mut u8,
        _ => NOT_HEAP.as_ptr() as *mut u8,
    };
    // Make sure the heap is set up, so the check is about the pointer.
    drop(alloc::boxed::Box::new(1u64));
    println!(
        "foreign_free: freeing {target:p} ({}), which the heap never handed out",
        crate::kheap::describe_addr(target as u64)
    );
    // SAFETY: not sound, on purpose: the `checks` feature must catch it.
    unsafe { HEAP.deallocate(black_box(target), l) };
    println!("foreign_free: NOT detected");
    false
}
