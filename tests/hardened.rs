//! Feature `hardened` on Rust's `GlobalAlloc` path: a confirmed double free
//! aborts the process after printing the address (an allocator must not
//! unwind), and a live object holding a freed one's key is freed normally.
//! The aborting case runs in a child: this test binary re-run with
//! `TIERALLOC_HARDENED_CHILD` set.

use std::alloc::{GlobalAlloc, Layout};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use tieralloc::LinuxHeap;

static HEAP: LinuxHeap = LinuxHeap::new();

const CHILD: &str = "TIERALLOC_HARDENED_CHILD";

/// In the child: a sized double free of `size` bytes, after printing the
/// address on stdout.
fn double_free(size: usize) {
    let l = Layout::from_size_align(size, 8).unwrap();
    // SAFETY: a valid layout; the second free is the bug under test.
    unsafe {
        let p = HEAP.alloc(l);
        println!("{p:p}");
        HEAP.dealloc(p, l);
        HEAP.dealloc(p, l);
    }
    println!("not aborted");
}

#[test]
fn a_double_free_aborts_with_the_address() {
    if let Ok(size) = std::env::var(CHILD) {
        double_free(size.parse().unwrap());
        return;
    }
    for size in [64, 1000, 10_000] {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_double_free_aborts_with_the_address",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, size.to_string())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGABRT),
            "{size} B: expected an abort: {stdout}\n{stderr}"
        );
        // The harness's own words may precede it on the line.
        let addr = stdout
            .split_whitespace()
            .find(|w| w.starts_with("0x"))
            .unwrap_or_else(|| panic!("{size} B: no address printed: {stdout}\n{stderr}"));
        let want = format!("tieralloc: double free of {addr}: an object that is already free");
        assert!(
            stderr.contains(&want),
            "{size} B: stderr lacks {want:?}: {stderr}"
        );
        assert!(!stdout.contains("not aborted"), "{size} B: {stdout}");
    }
}

#[test]
fn a_live_object_holding_a_freed_key_is_freed() {
    let l = Layout::from_size_align(64, 8).unwrap();
    // SAFETY: each object is freed once; reading `p`'s second word after
    // its free reads the key this test needs (the memory stays mapped).
    unsafe {
        let p = HEAP.alloc(l);
        HEAP.dealloc(p, l);
        let key = p.cast::<usize>().add(1).read();
        for _ in 0..100 {
            let q = HEAP.alloc(l);
            // q's key: the secret ^ q.
            q.cast::<usize>()
                .add(1)
                .write(key ^ p as usize ^ q as usize);
            HEAP.dealloc(q, l);
        }
        let a = HEAP.alloc(l);
        let b = HEAP.alloc(l);
        assert_ne!(a, b);
        HEAP.dealloc(a, l);
        HEAP.dealloc(b, l);
    }
    HEAP.check_invariants();
}

#[test]
fn the_fast_free_leaves_a_double_free_to_the_checking_path() {
    static H: LinuxHeap = LinuxHeap::new();
    let l = Layout::from_size_align(64, 16).unwrap();
    // SAFETY: `p` is freed once by the fast path; the second free is the bug
    // under test, which both paths must refuse without freeing.
    unsafe {
        H.deallocate(H.allocate(l), l); // set-up
        let p = H.allocate(l);
        assert!(!p.is_null());
        if !H.deallocate_fast(p) {
            assert!(!H.uses_rseq(), "the rseq fast path declined a live object");
            H.try_deallocate_unsized(p).unwrap();
        }
        assert!(
            !H.deallocate_fast(p),
            "a double free of {p:p} taken by the fast path"
        );
        assert!(
            matches!(
                H.try_deallocate_unsized(p),
                Err(tieralloc::BadFree::DoubleFree(_))
            ),
            "the checking path must report {p:p}"
        );
        // The heap still serves, and hands `p` out once only.
        let a = H.allocate(l);
        let b = H.allocate(l);
        assert!(!a.is_null() && !b.is_null() && a != b);
        H.deallocate(a, l);
        H.deallocate(b, l);
    }
    H.check_invariants();
}
