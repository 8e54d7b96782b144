//! A heap `static` is all zero bytes before its first use, so it lands in
//! `.bss` (no flash or file bytes for it, nothing to copy at boot) rather than
//! `.data`. Checked against the linker's section symbols of this test binary.

use tieralloc::{Heap, RegionSource, SingleCpu};

static REGION_HEAP: Heap<RegionSource, SingleCpu> =
    Heap::new(RegionSource::empty(), SingleCpu::new());

#[cfg(feature = "linux")]
static LINUX_HEAP: tieralloc::LinuxHeap = tieralloc::LinuxHeap::new();

extern "C" {
    /// The start of `.bss` (GNU ld and lld define it).
    static __bss_start: u8;
    /// The end of the image, after `.bss`.
    static _end: u8;
}

fn in_bss<T>(x: &T) -> bool {
    // Only the symbols' addresses are taken, never their bytes.
    let (lo, hi) = (
        core::ptr::addr_of!(__bss_start) as usize,
        core::ptr::addr_of!(_end) as usize,
    );
    let a = x as *const T as usize;
    lo <= a && a + core::mem::size_of::<T>() <= hi
}

#[test]
fn region_heap_static_is_zero_initialised() {
    assert!(
        in_bss(&REGION_HEAP),
        "Heap<RegionSource, SingleCpu> ({} bytes) is not in .bss: its const value has non-zero bytes",
        core::mem::size_of_val(&REGION_HEAP)
    );
}

#[cfg(feature = "linux")]
#[test]
fn linux_heap_static_is_zero_initialised() {
    assert!(
        in_bss(&LINUX_HEAP),
        "LinuxHeap ({} bytes) is not in .bss: its const value has non-zero bytes",
        core::mem::size_of_val(&LINUX_HEAP)
    );
}

/// The static state of a single-CPU region heap fits a microcontroller's
/// RAM: at most 4 KiB on a 32-bit target, where the page map's first level
/// is 32 entries (on 64-bit it is 4,096, 32 KiB, for a 48-bit address space).
/// Everything per class comes from the source at set-up.
#[test]
fn region_heap_static_is_small() {
    let n = core::mem::size_of_val(&REGION_HEAP);
    if cfg!(target_pointer_width = "32") {
        assert!(
            n <= 4096,
            "Heap<RegionSource, SingleCpu> is {n} bytes on 32-bit"
        );
    } else {
        assert!(
            n <= 40 << 10,
            "Heap<RegionSource, SingleCpu> is {n} bytes on 64-bit"
        );
    }
    std::println!("Heap<RegionSource, SingleCpu>: {n} bytes");
}
