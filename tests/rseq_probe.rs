//! Heaps set up at once, on several threads, while the process's one probe
//! for glibc's rseq area runs: every one of them takes the rseq mode (a
//! thread that finds another one probing waits for its result). Its own
//! test binary, so that its heaps make the process's first probe.

#![cfg(all(feature = "linux", target_arch = "x86_64"))]

use std::alloc::Layout;
use std::sync::Barrier;

use tieralloc::LinuxHeap;

const HEAPS: usize = 8;
static H: [LinuxHeap; HEAPS] = [const { LinuxHeap::new() }; HEAPS];

#[test]
fn heaps_set_up_during_the_probe_all_take_the_rseq_mode() {
    let go = Barrier::new(HEAPS);
    let l = Layout::from_size_align(64, 8).unwrap();
    std::thread::scope(|s| {
        for h in &H {
            let go = &go;
            s.spawn(move || {
                go.wait();
                let p = h.allocate(l);
                assert!(!p.is_null());
                // SAFETY: just allocated with this layout.
                unsafe { h.deallocate(p, l) };
            });
        }
    });
    let rseq: Vec<bool> = H.iter().map(|h| h.uses_rseq()).collect();
    if std::env::var_os("TIERALLOC_NO_RSEQ").is_some_and(|v| v == "1") {
        assert!(rseq.iter().all(|&r| !r), "{rseq:?}");
    } else {
        assert!(rseq.iter().all(|&r| r), "heaps in rseq mode: {rseq:?}");
    }
}
