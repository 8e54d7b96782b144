//! The per-CPU fast path under stress, in both modes: restartable sequences
//! (`LinuxHeap::new()`, where glibc registered rseq) and the locked fallback
//! (`LinuxHeap::new_locked()`).
//!
//! Threads outnumber cores 8 to 1; a chaos thread keeps moving the workers
//! between CPUs with `sched_setaffinity` and interrupts them with signals, so
//! critical sections are preempted, migrated and restarted all the time. Every
//! object carries a pattern derived from its address and size that is checked
//! before it is freed; objects cross threads through channels (remote frees).
//! A third of the objects take the C ABI's paths (`Heap::allocate_fast`,
//! `Heap::deallocate_fast`, their fallbacks), the rest the sized ones. Now
//! and then a worker allocates and frees batches larger than any per-CPU
//! stack, so that stacks grow (and move) while all this goes on.
//!
//! The rseq tests run twice: with glibc's area, and, in a process of their
//! own started with `GLIBC_TUNABLES=glibc.pthread.rseq=0`, with the area
//! the heap registers itself when glibc registers none.

#![cfg(all(feature = "linux", target_arch = "x86_64"))]

use std::alloc::Layout;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use tieralloc::internals::{rseq_cpu_id, Rng};
use tieralloc::{LinuxHeap, TINY_BLOCK};

static RSEQ_HEAP: LinuxHeap = LinuxHeap::new();
static LOCKED_HEAP: LinuxHeap = LinuxHeap::new_locked();

/// Tests in this file share the chaos machinery (signal handler); run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A request size: 10 % tiny, 80 % up to 1 KiB, 9 % up to 32 KiB, 1 % large.
fn size(r: &mut Rng) -> usize {
    match r.below(100) {
        0..=9 => 1 + r.below(15),         // tiny
        10..=89 => 16 + r.below(1008),    // small
        90..=98 => 1024 + r.below(31744), // up to 32 KiB
        _ => 32769 + r.below(200_000),    // large
    }
}

fn pattern(p: *mut u8, size: usize) -> u8 {
    ((p as usize >> 4) ^ size ^ (size >> 8)) as u8
}

fn fill(p: *mut u8, size: usize) {
    let v = pattern(p, size);
    // SAFETY: `p` is a live object of `size` bytes.
    unsafe { p.write_bytes(v, size) };
}

fn check(p: *mut u8, size: usize) {
    let v = pattern(p, size);
    // SAFETY: as above.
    let s = unsafe { std::slice::from_raw_parts(p, size) };
    if let Some(i) = s.iter().position(|&b| b != v) {
        panic!(
            "object {p:p} ({size} B) corrupted at byte {i}: {:#x} != {v:#x}",
            s[i]
        );
    }
}

/// An object: address, size, and whether it came from the C ABI's path
/// ([`c_malloc`]), in which case [`c_free`] frees it.
#[derive(Clone, Copy)]
struct Obj(usize, usize, bool);

/// What libtieralloc.so's `malloc` does: the fast path, else an allocation
/// aligned to 16 of at least 16 bytes.
fn c_malloc(heap: &LinuxHeap, size: usize) -> *mut u8 {
    let p = heap.allocate_fast(size);
    if !p.is_null() {
        return p;
    }
    heap.allocate(Layout::from_size_align(size.max(16).next_multiple_of(16), 16).unwrap())
}

/// What libtieralloc.so's `free` does: the fast path, else the checking one.
fn c_free(heap: &LinuxHeap, p: *mut u8) {
    // SAFETY: `p` came from `c_malloc` and is freed once.
    unsafe {
        if !heap.deallocate_fast(p) {
            heap.try_deallocate_unsized(p)
                .unwrap_or_else(|e| panic!("free of {p:p}: {e}"));
        }
    }
}

/// Frees `o` the way it was allocated.
fn free_obj(heap: &LinuxHeap, o: Obj) {
    check(o.0 as *mut u8, o.1);
    if o.2 {
        return c_free(heap, o.0 as *mut u8);
    }
    // SAFETY: allocated with this layout.
    unsafe { heap.deallocate(o.0 as *mut u8, Layout::from_size_align(o.1, 8).unwrap()) };
}
// SAFETY: objects are plain memory handed between threads.
unsafe impl Send for Obj {}

extern "C" fn on_signal(_: libc::c_int) {}

fn tid() -> libc::pid_t {
    // SAFETY: no preconditions.
    unsafe { libc::gettid() }
}

/// Runs the workload on `heap` with `threads` workers for `ops` operations each.
fn stress(heap: &'static LinuxHeap, threads: usize, ops: usize) {
    // SAFETY: installing a no-op handler for SIGUSR1 (no SA_RESTART: syscalls may see EINTR,
    // which the workload does not make).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    let before = heap.stats();
    let done = Arc::new(AtomicBool::new(false));
    let tids = Arc::new(Mutex::new(Vec::new()));
    let migrations = Arc::new(AtomicUsize::new(0));
    let chaos = {
        let (done, tids, migrations) = (done.clone(), tids.clone(), migrations.clone());
        thread::spawn(move || {
            let ncpu = thread::available_parallelism().map_or(1, |n| n.get());
            let mut r = Rng::new(77);
            while !done.load(Ordering::Relaxed) {
                for &t in tids.lock().unwrap().iter() {
                    // SAFETY: cpu_set_t manipulation on a local; the syscalls take plain values.
                    unsafe {
                        let mut set: libc::cpu_set_t = std::mem::zeroed();
                        libc::CPU_SET(r.below(ncpu), &mut set);
                        if libc::sched_setaffinity(t, std::mem::size_of::<libc::cpu_set_t>(), &set)
                            == 0
                        {
                            migrations.fetch_add(1, Ordering::Relaxed);
                        }
                        libc::syscall(libc::SYS_tgkill, libc::getpid(), t, libc::SIGUSR1);
                    }
                }
                // Drain every CPU's cache while the workers use them (rseq mode:
                // stop marks and membarrier fences against live sections).
                heap.scavenge();
                thread::yield_now();
            }
        })
    };
    let (tx, rx) = mpsc::channel::<Obj>();
    let rx = Arc::new(Mutex::new(rx));
    let workers: Vec<_> = (0..threads)
        .map(|w| {
            let (tx, rx, tids) = (tx.clone(), rx.clone(), tids.clone());
            thread::spawn(move || {
                tids.lock().unwrap().push(tid());
                let mut r = Rng::new(0x1234_5678 + w as u64);
                let mut live: Vec<Obj> = Vec::new();
                for i in 0..ops {
                    if live.len() < 200 || r.next_u64().is_multiple_of(2) {
                        let size = size(&mut r);
                        // One in three through the C ABI's paths.
                        let c = r.below(3) == 0;
                        let p = if c {
                            c_malloc(heap, size)
                        } else {
                            heap.allocate(Layout::from_size_align(size, 8).unwrap())
                        };
                        assert!(!p.is_null());
                        if c {
                            assert_eq!(p as usize % 16, 0, "{size} B from c_malloc at {p:p}");
                        }
                        fill(p, size);
                        live.push(Obj(p as usize, size, c));
                    } else {
                        let k = r.below(live.len());
                        let o = live.swap_remove(k);
                        if i % 3 == 0 {
                            tx.send(o).unwrap(); // freed by another thread
                        } else {
                            free_obj(heap, o);
                        }
                    }
                    // Now and then a batch larger than any stack, freed and
                    // allocated again: stacks grow, move to their grown slots
                    // and give the growth back, under the same chaos.
                    if i % 10_000 == 5_000 {
                        let size = 16 << r.below(5);
                        for round in 0..3 {
                            let batch: Vec<Obj> = (0..1_500)
                                .map(|k| {
                                    let c = (k + round) % 2 == 0;
                                    let p = if c {
                                        c_malloc(heap, size)
                                    } else {
                                        heap.allocate(Layout::from_size_align(size, 8).unwrap())
                                    };
                                    assert!(!p.is_null());
                                    fill(p, size);
                                    Obj(p as usize, size, c)
                                })
                                .collect();
                            for o in batch {
                                free_obj(heap, o);
                            }
                        }
                    }
                    // Take some remote objects to free.
                    if i % 7 == 0 {
                        if let Ok(o) = rx.lock().unwrap().try_recv() {
                            free_obj(heap, o);
                        }
                    }
                }
                for o in live {
                    free_obj(heap, o);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    drop(tx);
    for o in rx.lock().unwrap().try_iter() {
        free_obj(heap, o);
    }
    done.store(true, Ordering::Relaxed);
    chaos.join().unwrap();
    assert!(
        migrations.load(Ordering::Relaxed) > 0,
        "the chaos thread never moved a worker"
    );

    heap.check_invariants();
    let st = heap.stats();
    assert_eq!(
        st.mallocs - before.mallocs,
        st.frees - before.frees,
        "every object was freed:\n{st}"
    );
    assert!(
        st.tiny_blocks <= st.cpus,
        "at most one current tiny block per CPU:\n{st}"
    );
    assert_eq!(st.heap_alloc, TINY_BLOCK as u64 * st.tiny_blocks, "{st}");
    heap.scavenge();
    let st = heap.stats();
    assert_eq!(st.heap_alloc, 0, "{st}");
    assert_eq!(st.heap_inuse, 0, "scavenge drained every CPU cache:\n{st}");
    assert_eq!(st.cached_bytes, 0, "{st}");
    heap.check_invariants();
}

#[test]
fn rseq_mode_survives_migration_and_signals() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        RSEQ_HEAP.uses_rseq(),
        "glibc >= 2.35 on Linux registers rseq for every thread; this machine should run the rseq path"
    );
    stress(&RSEQ_HEAP, 16, 150_000);
    assert!(RSEQ_HEAP.stats().rseq);
}

#[test]
fn locked_mode_survives_migration_and_signals() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert!(!LOCKED_HEAP.uses_rseq());
    stress(&LOCKED_HEAP, 16, 150_000);
    assert!(!LOCKED_HEAP.stats().rseq);
}

/// The raw sequences, hammered by more threads than CPUs: every pushed object
/// is popped exactly once.
#[test]
fn rseq_push_pop_never_lose_or_duplicate() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    static H: LinuxHeap = LinuxHeap::new();
    assert!(H.uses_rseq());
    // Objects of one class bounce between threads through the per-CPU stacks only
    // (sizes of one class, every thread both allocates and frees); any lost or
    // duplicated slot shows up as two live objects at one address.
    let seen = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let seen = seen.clone();
            thread::spawn(move || {
                let l = Layout::from_size_align(48, 8).unwrap();
                let mut mine = Vec::new();
                for i in 0..200_000usize {
                    if i % 3 != 2 {
                        let p = H.allocate(l);
                        assert!(!p.is_null());
                        // SAFETY: fresh 48-byte object.
                        unsafe { (p as *mut u64).write(t as u64) };
                        mine.push(p as usize);
                    } else if let Some(p) = mine.pop() {
                        // SAFETY: ours, written above.
                        assert_eq!(
                            unsafe { (p as *mut u64).read() },
                            t as u64,
                            "object {p:#x} overwritten"
                        );
                        // SAFETY: allocated above with `l`.
                        unsafe { H.deallocate(p as *mut u8, l) };
                    }
                }
                let mut s = seen.lock().unwrap();
                for &p in &mine {
                    assert!(s.insert(p), "object {p:#x} handed out twice");
                }
                mine
            })
        })
        .collect();
    let all: Vec<Vec<usize>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let l = Layout::from_size_align(48, 8).unwrap();
    for p in all.into_iter().flatten() {
        // SAFETY: live objects from above.
        unsafe { H.deallocate(p as *mut u8, l) };
    }
    H.check_invariants();
    let st = H.stats();
    assert_eq!(st.mallocs, st.frees, "{st}");
}

/// Pins the calling thread to CPU `cpu`; whether it could.
fn pin(cpu: usize) -> bool {
    // SAFETY: cpu_set_t manipulation on a local; the syscall takes plain values.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The classes under a line in rseq mode: a free on a CPU other than the
/// span's owner goes to the class's remote list, by the sized path and by
/// the C one (the owner is compared inside the push), so the freeing CPU
/// never hands the object out again; a free on the owner goes on its stack
/// and comes back at once.
#[test]
fn a_free_off_the_owning_cpu_is_not_reused_there() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    static H: LinuxHeap = LinuxHeap::new();
    let l = Layout::from_size_align(16, 8).unwrap();
    assert!(pin(0), "pin to CPU 0");
    assert!(H.uses_rseq());
    let mine: Vec<*mut u8> = (0..64).map(|_| H.allocate(l)).collect();
    let c_mine: Vec<*mut u8> = (0..64).map(|_| c_malloc(&H, 16)).collect();
    assert!(mine.iter().chain(&c_mine).all(|p| !p.is_null()));
    let (handed, c_handed) = (mine[33], c_mine[33]);
    assert!(pin(1), "pin to CPU 1 (the test needs two CPUs)");
    assert_eq!(rseq_cpu_id(), Some(1));
    // SAFETY: allocated above with `l`.
    unsafe { H.deallocate(handed, l) };
    c_free(&H, c_handed);
    let theirs: Vec<*mut u8> = (0..200).map(|_| H.allocate(l)).collect();
    let c_theirs: Vec<*mut u8> = (0..200).map(|_| c_malloc(&H, 16)).collect();
    for &q in theirs.iter().chain(&c_theirs) {
        assert!(
            q != handed && q != c_handed,
            "CPU 1 got back {q:p}, which it freed for CPU 0"
        );
    }
    assert!(pin(0), "pin to CPU 0");
    let (p, c_p) = (mine[5], c_mine[5]);
    // SAFETY: allocated above with `l`.
    unsafe { H.deallocate(p, l) };
    assert_eq!(H.allocate(l), p, "a free on the owner is reused at once");
    c_free(&H, c_p);
    assert_eq!(
        c_malloc(&H, 16),
        c_p,
        "a C free on the owner is reused at once"
    );
    for (i, q) in mine.into_iter().enumerate() {
        if i != 33 {
            // SAFETY: live objects from above, allocated with `l`.
            unsafe { H.deallocate(q, l) };
        }
    }
    for (i, q) in c_mine.into_iter().enumerate() {
        if i != 33 {
            c_free(&H, q);
        }
    }
    for q in theirs {
        // SAFETY: as above.
        unsafe { H.deallocate(q, l) };
    }
    for q in c_theirs {
        c_free(&H, q);
    }
    H.check_invariants();
    H.scavenge();
    let st = H.stats();
    assert_eq!(
        (st.mallocs, st.heap_alloc, st.cached_bytes),
        (st.frees, 0, 0),
        "{st}"
    );
}

/// A batch larger than a CPU's stack, freed and allocated again round
/// after round (glibc's bench-malloc-simple): after a round the stack has
/// grown to hold it (`percpu::limit`), so it stays on the CPU instead of
/// going through central, which the cached bytes show (more than the
/// transfer cache can hold); when the program moves on to other sizes, the
/// idle check gives the growth back; a scavenge drains grown stacks whole.
#[test]
fn a_stack_grows_to_hold_a_batch_and_gives_it_back_when_idle() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    static H: LinuxHeap = LinuxHeap::new();
    assert!(pin(0), "pin to CPU 0");
    assert!(H.uses_rseq());
    let l = Layout::from_size_align(256, 8).unwrap();
    let batch = 1600;
    let bytes = (batch * 256) as u64;
    let mut ps = Vec::with_capacity(batch);
    let mut cached = Vec::new();
    for round in 0..6 {
        ps.extend((0..batch).map(|_| H.allocate(l)));
        assert!(ps.iter().all(|p| !p.is_null()));
        for (i, &p) in ps.iter().enumerate() {
            // SAFETY: fresh 256-byte objects.
            unsafe { (p as *mut usize).write(i ^ round) };
        }
        for (i, p) in ps.drain(..).enumerate() {
            // SAFETY: written above; allocated with `l`.
            unsafe {
                assert_eq!(
                    (p as *mut usize).read(),
                    i ^ round,
                    "object {p:p} overwritten"
                );
                H.deallocate(p, l);
            }
        }
        cached.push(H.stats().cached_bytes);
    }
    // The stack starts at 64 objects (16 KiB) and the transfer cache holds
    // 64 KiB of the class: most of the batch staying cached is the stack.
    assert!(
        cached[3..].iter().all(|&c| c >= bytes * 9 / 10),
        "the batch stays on the CPU once the stack has grown: {cached:?} of {bytes}"
    );
    // Another size for a while: the 256-byte class idles, and gives its growth back.
    let small = Layout::from_size_align(32, 8).unwrap();
    for _ in 0..4 * 4096 {
        let p = H.allocate(small);
        // SAFETY: allocated just above with `small`.
        unsafe { H.deallocate(p, small) };
    }
    let after = H.stats().cached_bytes;
    assert!(
        after < bytes / 2,
        "an idle grown stack went back to central: {after} of {bytes} cached"
    );
    H.check_invariants();
    H.scavenge();
    let st = H.stats();
    assert_eq!((st.cached_bytes, st.heap_alloc), (0, 0), "{st}");
    H.check_invariants();
}

/// A thread's first allocation in rseq mode registers it where the heap
/// uses an area of its own (glibc registered none): before it the area says
/// −1, after it a CPU, and the thread's next operations take the fast paths.
#[test]
fn a_new_thread_registers_on_its_first_allocation() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    static H: LinuxHeap = LinuxHeap::new();
    let l = Layout::from_size_align(64, 8).unwrap();
    let own = std::env::var_os(OWN_AREA_CHILD).is_some();
    if own {
        // SAFETY: dlsym with a NUL-terminated name; glibc's `__rseq_size`.
        let size = unsafe {
            let sym = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr());
            (!sym.is_null()).then(|| *(sym as *const u32))
        };
        assert!(matches!(size, None | Some(0)), "glibc registered no area");
    }
    assert!(H.uses_rseq());
    for _ in 0..4 {
        let (before, after) = thread::spawn(move || {
            let before = rseq_cpu_id().expect("rseq mode");
            let ps: Vec<*mut u8> = (0..32).map(|_| H.allocate(l)).collect();
            assert!(ps.iter().all(|p| !p.is_null()));
            for p in ps {
                // SAFETY: allocated above with this layout.
                unsafe { H.deallocate(p, l) };
            }
            (before, rseq_cpu_id().expect("rseq mode"))
        })
        .join()
        .unwrap();
        assert!(if own { before == -1 } else { before >= 0 }, "{before}");
        assert!(after >= 0, "registered: {after}");
    }
}

/// Set in the process that [`without_glibcs_area_the_rseq_tests_pass`] starts.
const OWN_AREA_CHILD: &str = "TIERALLOC_TEST_OWN_AREA_CHILD";

/// The rseq tests of this file, in a process where glibc registered no
/// rseq area (its tunable off): the heap registers an area of its own in
/// every thread, and passes them all.
#[test]
fn without_glibcs_area_the_rseq_tests_pass() {
    if std::env::var_os(OWN_AREA_CHILD).is_some() {
        return;
    }
    let tests = [
        "rseq_mode_survives_migration_and_signals",
        "rseq_push_pop_never_lose_or_duplicate",
        "a_stack_grows_to_hold_a_batch_and_gives_it_back_when_idle",
        "a_free_off_the_owning_cpu_is_not_reused_there",
        "a_new_thread_registers_on_its_first_allocation",
    ];
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(tests)
        .args(["--exact", "--test-threads", "1"])
        .env("GLIBC_TUNABLES", "glibc.pthread.rseq=0")
        .env(OWN_AREA_CHILD, "1")
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("{} passed", tests.len())),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
