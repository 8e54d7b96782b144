//! Quick end-to-end smoke test of the whole stack over mmap.
#![cfg(feature = "linux")]
use core::alloc::Layout;
use tieralloc::{Heap, LockedSlots, MmapSource, TINY_BLOCK};

static HEAP: Heap<MmapSource, LockedSlots<4>> =
    Heap::new(MmapSource::new(), LockedSlots::new(|| 0));

#[test]
fn smoke() {
    let mut v = Vec::new();
    for i in 0..20000usize {
        let size = 1 + (i * 7919) % 40000;
        let l = Layout::from_size_align(size, 8).unwrap();
        let p = HEAP.allocate(l);
        assert!(!p.is_null());
        unsafe { p.write_bytes((i & 0xff) as u8, size) };
        v.push((p, l, i));
    }
    for &(p, l, i) in &v {
        let s = unsafe { core::slice::from_raw_parts(p, l.size()) };
        assert!(s.iter().all(|&b| b == (i & 0xff) as u8), "corrupt {i}");
    }
    let st = HEAP.stats();
    println!("{st}");
    for (p, l, _) in v {
        unsafe { HEAP.deallocate(p, l) };
    }
    HEAP.check_invariants();
    let st = HEAP.stats();
    println!("{st}");
    assert_eq!(
        st.heap_alloc,
        st.tiny_blocks * TINY_BLOCK as u64,
        "only the current tiny block stays"
    );
    assert!(st.tiny_blocks <= 1);
    assert_eq!(st.mallocs, st.frees);
    HEAP.scavenge();
    HEAP.check_invariants();
    let st = HEAP.stats();
    println!("{st}");
    assert_eq!(st.heap_inuse, 0);
    assert_eq!(st.heap_alloc, 0);
    assert_eq!(st.heap_released, st.heap_idle);
}
