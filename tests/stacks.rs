//! Stacks through the heap front: per-CPU stack caches, guard pages, statistics,
//! and scavenging everything back.
#![cfg(feature = "linux")]

use tieralloc::LinuxHeap;

static HEAP: LinuxHeap = LinuxHeap::new();

#[test]
fn stacks_through_the_heap() {
    let mut stacks = Vec::new();
    for (i, bytes) in [8192usize, 12_000, 16384, 30_000, 65536, 100_000, 1 << 20]
        .iter()
        .cycle()
        .take(70)
        .enumerate()
    {
        let guard = i % 5 == 0;
        let s = HEAP.alloc_stack(*bytes, guard).expect("stack");
        assert!(s.size >= *bytes);
        assert_eq!(s.has_guard(), guard);
        // SAFETY: the stack's usable bytes are ours.
        unsafe { s.base.as_ptr().write_bytes(i as u8, s.size) };
        stacks.push((s, i as u8));
    }
    let st = HEAP.stats();
    assert_eq!(st.stacks, 70, "{st}");
    assert!(st.stack_inuse >= 70 * 8192);
    assert!(st.stack_sys >= st.stack_inuse);
    assert_eq!(
        st.heap_idle,
        st.heap_sys - st.heap_inuse - st.stack_sys,
        "{st}"
    );
    for (s, v) in stacks {
        // SAFETY: written above.
        let bytes = unsafe { core::slice::from_raw_parts(s.base.as_ptr(), s.size) };
        assert!(bytes.iter().all(|&b| b == v), "stack contents changed");
        // SAFETY: from this heap, no longer used.
        unsafe { HEAP.free_stack(s) };
    }
    HEAP.check_invariants();
    HEAP.scavenge();
    let st = HEAP.stats();
    assert_eq!(st.stacks, 0);
    assert_eq!(
        st.stack_sys, 0,
        "every stack span went back to the page heap:\n{st}"
    );
    assert_eq!(st.heap_inuse, 0, "{st}");
    HEAP.check_invariants();
}
