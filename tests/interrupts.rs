//! Interrupt safety (`Cpu::operation`): a heap whose `Cpu` holds handlers
//! off for each whole operation may be used from a handler that interrupts
//! the heap's own caller on the same CPU.
//!
//! The "CPU" is the test's main thread and the "interrupt" a `SIGALRM` from
//! an interval timer: `SigCpu` blocks the signal for each heap operation, as
//! firmware masks interrupts (`CriticalSectionCpu`). The main thread churns
//! content-checked objects of every kind — tiny, small, past a line, large —
//! so refills, flushes, central lists and the page heap are all in use, while
//! the handler allocates, checks and frees objects of its own, keeping some
//! across runs. Without the signal blocked for whole operations this
//! deadlocks: a handler that lands while the main thread holds a central or
//! page-heap lock spins on it for ever.
//!
//! The file has its own `main` (`harness = false`): `SIGALRM` goes to any
//! thread of the process that does not block it, so the process must have
//! one thread, the one that churns. (Built with the `linux` feature only.)

mod common;

use core::alloc::Layout;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::cell::UnsafeCell;

use common::Rng;
use tieralloc::cpu::Spin;
use tieralloc::{Cpu, Heap, MmapSource, RegionSource};

/// Nesting depth of the sections with `SIGALRM` blocked (one thread only:
/// the main thread and its handler).
static DEPTH: AtomicUsize = AtomicUsize::new(0);

/// One slot; every heap operation runs with `SIGALRM` blocked on the
/// calling thread. Single-threaded use only (the test's main thread and the
/// handler that interrupts it).
struct SigCpu;

fn sigalrm_set() -> libc::sigset_t {
    // SAFETY: `sigemptyset`/`sigaddset` initialise the set we own.
    unsafe {
        let mut set: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGALRM);
        set
    }
}

/// Runs `f` with `SIGALRM` blocked; nests (the outermost section restores
/// the mask it found).
fn blocked<R>(f: impl FnOnce() -> R) -> R {
    if DEPTH.load(Ordering::Relaxed) > 0 {
        // Already blocked by an enclosing section of this thread.
        DEPTH.fetch_add(1, Ordering::Relaxed);
        let r = f();
        DEPTH.fetch_sub(1, Ordering::Relaxed);
        return r;
    }
    let set = sigalrm_set();
    // SAFETY: plain `pthread_sigmask` calls on this thread with sets we own.
    let mut old: libc::sigset_t = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) },
        0
    );
    DEPTH.store(1, Ordering::Relaxed);
    let r = f();
    DEPTH.store(0, Ordering::Relaxed);
    // SAFETY: restores the mask saved above.
    assert_eq!(
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut()) },
        0
    );
    r
}

// SAFETY: one slot (index 0); its users are one thread and a signal handler
// of that thread, and every access runs with the signal blocked, so no two
// closures overlap.
unsafe impl Cpu for SigCpu {
    type Relax = Spin;
    fn count(&self) -> usize {
        1
    }
    fn with_current<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        blocked(|| f(0))
    }
    fn with_slot<R>(&self, _i: usize, f: impl FnOnce() -> R) -> R {
        blocked(f)
    }
    const GUARDS_OPERATIONS: bool = true;
    // One thread and its handler, every operation with the signal blocked:
    // no two operations overlap (the fine heap then takes no lock).
    const EXCLUSIVE_OPERATIONS: bool = true;
    fn operation<R>(&self, f: impl FnOnce() -> R) -> R {
        blocked(f)
    }
    fn acquire_slot(&self, _i: usize) {
        unimplemented!("no fork in this test")
    }
    unsafe fn release_slot(&self, _i: usize) {
        unimplemented!("no fork in this test")
    }
}

static HEAP: Heap<MmapSource, SigCpu> = Heap::new(MmapSource::new(), SigCpu);
/// A region heap of 2 MiB: a fine heap (one lock, every operation inside the
/// `Cpu`'s section), driven by the same churn in a second round.
static FINE: Heap<RegionSource, SigCpu> = Heap::new(RegionSource::empty(), SigCpu);
/// Which heap the round drives: `FINE` when set.
static ON_FINE: AtomicBool = AtomicBool::new(false);

fn heap_alloc(layout: Layout) -> *mut u8 {
    if ON_FINE.load(Ordering::Relaxed) {
        FINE.allocate(layout)
    } else {
        HEAP.allocate(layout)
    }
}

/// # Safety
/// `p` is a live object of the round's heap with `layout`.
unsafe fn heap_free(p: *mut u8, layout: Layout) {
    // SAFETY: forwarded from the caller.
    unsafe {
        if ON_FINE.load(Ordering::Relaxed) {
            FINE.deallocate(p, layout)
        } else {
            HEAP.deallocate(p, layout)
        }
    }
}

/// A live object: where, its layout, and the byte its contents repeat.
#[derive(Clone, Copy)]
struct Obj {
    p: *mut u8,
    layout: Layout,
    tag: u8,
}

fn layout_for(rng: &mut Rng) -> Layout {
    let size = match rng.below(100) {
        0..=29 => 1 + rng.below(15),            // tiny
        30..=79 => 16 + rng.below(1009),        // small, under and past a line
        80..=95 => 1025 + rng.below(31 * 1024), // small, up to 32 KiB
        _ => 32 * 1024 + rng.below(200 * 1024), // large
    };
    let align = if rng.below(8) == 0 { 64 } else { 8 };
    Layout::from_size_align(size, align).unwrap()
}

/// Allocates and fills an object; `None` when the heap is out of memory.
fn make(rng: &mut Rng, tag: u8) -> Option<Obj> {
    let layout = layout_for(rng);
    let p = heap_alloc(layout);
    if p.is_null() {
        return None;
    }
    assert_eq!(p as usize % layout.align(), 0);
    // SAFETY: a fresh object of `layout.size()` bytes.
    unsafe { p.write_bytes(tag, layout.size()) };
    Some(Obj { p, layout, tag })
}

/// Checks an object's contents, then frees it.
fn check_and_free(o: Obj, who: &str) {
    // SAFETY: a live object of `o.layout.size()` bytes, ours.
    let bytes = unsafe { core::slice::from_raw_parts(o.p, o.layout.size()) };
    if let Some(i) = bytes.iter().position(|&b| b != o.tag) {
        panic!(
            "{who}: object {:p} ({:?}) byte {i} is {:#x}, not {:#x}",
            o.p, o.layout, bytes[i], o.tag
        );
    }
    // SAFETY: allocated with this layout, not used afterwards.
    unsafe { heap_free(o.p, o.layout) };
}

/// The handler's own state: it runs only on the main thread, between the
/// main thread's heap operations (the signal is blocked inside them), so it
/// needs no lock; it must not allocate through the process allocator.
struct HandlerState {
    rng: Rng,
    kept: [Option<Obj>; 64],
    runs: usize,
    ops: usize,
}

struct Shared(UnsafeCell<HandlerState>);
// SAFETY: touched only by the main thread and its own signal handler, which
// never runs while the main thread touches it (see `handler_state`).
unsafe impl Sync for Shared {}

static HANDLER: Shared = Shared(UnsafeCell::new(HandlerState {
    rng: Rng::from_state(0x1234_5678_9abc_def1),
    kept: [None; 64],
    runs: 0,
    ops: 0,
}));

extern "C" fn on_alarm(_sig: libc::c_int) {
    // SAFETY: only this handler mutates the state while the timer runs; the
    // main thread reads it after the timer is stopped.
    let st = unsafe { &mut *HANDLER.0.get() };
    st.runs += 1;
    // A burst of short-lived objects, and a few that stay across runs (so
    // that the handler's frees also refill and flush the caches).
    let mut burst: [Option<Obj>; 8] = [None; 8];
    let tag = (st.runs % 200) as u8 + 40;
    for b in burst.iter_mut() {
        *b = make(&mut st.rng, tag);
        st.ops += 1;
    }
    for o in burst.into_iter().flatten() {
        check_and_free(o, "handler");
        st.ops += 1;
    }
    let slot = st.rng.below(st.kept.len());
    if let Some(o) = st.kept[slot].take() {
        check_and_free(o, "handler (kept)");
        st.ops += 1;
    }
    st.kept[slot] = make(&mut st.rng, tag.wrapping_add(1));
    st.ops += 1;
}

fn set_timer(usec: libc::suseconds_t) {
    let t = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: usec,
        },
        it_value: libc::timeval {
            tv_sec: 0,
            tv_usec: usec,
        },
    };
    // SAFETY: a plain `setitimer` with a value we own.
    assert_eq!(
        unsafe { libc::setitimer(libc::ITIMER_REAL, &t, core::ptr::null_mut()) },
        0
    );
}

fn main() {
    handlers_allocate_while_the_main_thread_churns("tiers (MmapSource)");
    let region: &'static mut [u8] = vec![0u8; 2 << 20].leak();
    // SAFETY: the buffer is leaked and the heap's alone; `FINE` is unused so far.
    unsafe { FINE.source().set_region(region.as_mut_ptr(), region.len()) };
    assert!(FINE.is_fine());
    ON_FINE.store(true, Ordering::Relaxed);
    handlers_allocate_while_the_main_thread_churns("fine heap (2 MiB region)");
    eprintln!("interrupts: ok");
}

fn handlers_allocate_while_the_main_thread_churns(which: &str) {
    // SAFETY: installs a handler for SIGALRM, which nothing else in this
    // test binary uses (this file holds one test).
    unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = on_alarm as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGALRM, &sa, core::ptr::null_mut()),
            0
        );
    }
    // The main thread's bookkeeping comes from the process allocator and is
    // set up before the timer starts, so the handler never interrupts it.
    let mut live: Vec<Option<Obj>> = vec![None; 4000];
    let mut rng = Rng::new(7);
    const OPS: usize = 1_200_000;
    set_timer(250);
    for op in 0..OPS {
        let i = rng.below(live.len());
        match live[i].take() {
            Some(o) => check_and_free(o, "main"),
            None => live[i] = make(&mut rng, (op % 31) as u8 + 1),
        }
    }
    set_timer(0);
    for o in live.into_iter().flatten() {
        check_and_free(o, "main");
    }
    // SAFETY: the timer is stopped and the handler has returned (signals are
    // delivered synchronously to this thread at its next unblock or return).
    let st = unsafe { &mut *HANDLER.0.get() };
    for o in st.kept.iter_mut().filter_map(|o| o.take()) {
        check_and_free(o, "handler (kept)");
    }
    eprintln!(
        "interrupts: {which}: main {OPS} operations, handler {} runs, {} operations",
        st.runs, st.ops
    );
    assert!(st.runs >= 100, "the handler ran only {} times", st.runs);
    st.runs = 0;
    st.ops = 0;
    let (s, fine) = (HEAP.stats(), FINE.stats());
    assert_eq!(s.mallocs, s.frees, "{s}");
    assert_eq!(fine.mallocs, fine.frees, "{fine}");
    HEAP.check_invariants();
    FINE.check_invariants();
}
