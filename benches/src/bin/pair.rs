//! `pair ALLOC [N]`: N alloc+free pairs of 64 bytes (align 8) through
//! `GlobalAlloc` on the allocator named ALLOC (one of tieralloc-bench's names),
//! or on `none`, a stand-in that returns a static buffer and frees nothing (the
//! empty-loop baseline). Made to be counted: `valgrind --tool=callgrind pair
//! tieralloc 1000000`; `tieralloc-bench --callgrind` runs it for every allocator
//! at two values of N and reports (instructions / pair) with the baseline's
//! subtracted. Prints the tieralloc mode on stderr.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;
use std::hint::black_box;
use std::process;

use tieralloc_bench::allocs;

/// The loop being counted; each allocator gets its own non-generic copy below.
#[inline(always)]
fn pair_loop<A: GlobalAlloc>(a: &A, n: u64) {
    for i in 0..n {
        // The size is opaque to the optimiser on every iteration, as it is behind
        // the `__rust_alloc` shim of a real `#[global_allocator]` (and for an
        // allocator behind FFI): the size class is computed per call, not folded
        // or hoisted out of the loop.
        // SAFETY: 64/8 is a valid layout.
        let l = unsafe { Layout::from_size_align_unchecked(black_box(64), 8) };
        // SAFETY: non-zero layout; freed with the same layout.
        unsafe {
            let p = a.alloc(l);
            if p.is_null() {
                process::abort()
            }
            p.write(i as u8);
            a.dealloc(black_box(p), black_box(l));
        }
    }
}

/// One unmangled, never-inlined function per allocator, so that
/// `objdump --disassemble=pairs_tieralloc` finds exactly the loop being counted.
macro_rules! loops {
    ($($name:literal => $f:ident($a:expr);)*) => {
        $(
            #[no_mangle]
            #[inline(never)]
            pub extern "C" fn $f(n: u64) {
                pair_loop($a, n)
            }
        )*
        /// The loop for `name`, if known.
        fn find(name: &str) -> Option<extern "C" fn(u64)> {
            match name {
                $($name => Some($f),)*
                _ => None,
            }
        }
    };
}

loops! {
    "none" => pairs_none(&NONE);
    "tieralloc" => pairs_tieralloc(&allocs::TIERALLOC);
    "tieralloc-locked" => pairs_tieralloc_locked(&allocs::TIERALLOC_LOCKED);
    "glibc" => pairs_glibc(&std::alloc::System);
    "mimalloc" => pairs_mimalloc(&allocs::MIMALLOC);
    "jemalloc" => pairs_jemalloc(&allocs::JEMALLOC);
    "talc" => pairs_talc(allocs::talc_heap());
    "rlsf" => pairs_rlsf(allocs::rlsf_heap());
    "buddy" => pairs_buddy(allocs::buddy_heap());
    "linked_list" => pairs_linked_list(allocs::lla_heap());
}

/// The baseline: an "allocator" that returns one static buffer.
struct NoAlloc(UnsafeCell<[u8; 64]>);
// SAFETY: only ever used from one thread (the pair loop), and only its address escapes.
unsafe impl Sync for NoAlloc {}
// SAFETY: hands out the same 64-byte buffer for a 64-byte layout; used by one
// thread that frees every object before asking again.
unsafe impl GlobalAlloc for NoAlloc {
    #[inline(always)]
    unsafe fn alloc(&self, _: Layout) -> *mut u8 {
        black_box(self.0.get().cast())
    }
    #[inline(always)]
    unsafe fn dealloc(&self, p: *mut u8, _: Layout) {
        black_box(p);
    }
}
static NONE: NoAlloc = NoAlloc(UnsafeCell::new([0; 64]));

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(name), n) = (args.next(), args.next()) else {
        eprintln!(
            "usage: pair ALLOC [N]   (ALLOC: none, {})",
            allocs::NAMES.join(", ")
        );
        process::exit(2)
    };
    let n: u64 = n
        .map_or(Some(1_000_000), |s| s.parse().ok())
        .unwrap_or_else(|| {
            eprintln!("pair: N must be a number");
            process::exit(2)
        });
    let Some(run) = find(&name) else {
        eprintln!(
            "pair: unknown allocator `{name}` (none, {})",
            allocs::NAMES.join(", ")
        );
        process::exit(2)
    };
    run(n);
    match name.as_str() {
        "tieralloc" => eprintln!("pair: tieralloc mode: {}", allocs::tieralloc_mode()),
        "tieralloc-locked" => eprintln!("pair: tieralloc-locked: per-CPU locks"),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_allocator_has_a_loop() {
        for n in allocs::NAMES.iter().chain(&["none"]) {
            find(n).unwrap_or_else(|| panic!("{n}"))(1000);
        }
        assert!(find("nope").is_none());
    }
}
