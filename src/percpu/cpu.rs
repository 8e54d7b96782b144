//! Which CPU am I on, and exclusive access to that CPU's cache.
//! See `lib.rs` for the overview and `percpu/mod.rs` for the per-CPU tier.
//!
//! The per-CPU tier keeps one cache per CPU index. A [`Cpu`]
//! implementation says how many indices there are and lends exclusive access to
//! one of them: in a kernel by turning interrupts off on the current CPU, on
//! Linux by a per-slot lock taken on the CPU the thread runs on (the slot is
//! almost never contended, so the lock costs one uncontended atomic).
//!
//! Invariant: `count()` is constant once it has been called, and at most one
//! execution at a time is inside `with_current`/`with_slot` for a given index.
//!
//! **Interrupt handlers.** A slot's exclusivity is not enough for a heap that
//! interrupt handlers use: a refill or a flush takes a central list's lock
//! *outside* `with_current`, and growth takes the page heap's, so a handler
//! that interrupts its own CPU there spins for ever on a lock the interrupted
//! code holds. [`Cpu::operation`] closes that gap: the heap runs every
//! operation inside it, so a `Cpu` that holds handlers off for all of it
//! (interrupts masked on the calling CPU, or a `critical-section`) makes every
//! lock of the heap one that is only ever held with handlers off.

use core::marker::PhantomData;

use crate::sync::atomic::{AtomicBool, Ordering};

pub use spin::relax::{RelaxStrategy, Spin};

#[cfg(feature = "linux")]
pub use super::linux::{LinuxCpu, SpinThenYield, MAX_CPUS};

/// A source of CPU indices with exclusive access to per-CPU slots.
///
/// # Safety
///
/// Implementers promise that `count()` never changes after its first call and
/// is at least 1, that `with_current` passes an index `< count()`, and that no two
/// closures run by `with_current` or `with_slot` for the same index overlap in
/// time (on any CPU or thread). The heap relies on this for its per-CPU caches,
/// which it mutates without further synchronisation.
///
/// # Interrupt handlers
///
/// The heap may be called from an interrupt (or signal) handler only if
/// [`Cpu::GUARDS_OPERATIONS`] is true and [`Cpu::operation`] holds every
/// handler that may call the heap off on the calling CPU for the whole of its
/// closure, and nests (an inner call leaves them off and the outermost
/// restores what it found). Then no lock of the
/// heap is ever taken with handlers able to run on that CPU, and a handler
/// never waits for code it interrupted. `with_current` and `with_slot` must
/// still be exclusive on their own: the heap calls them inside `operation`,
/// but also, in a drain, for another CPU's slot. The default `operation`
/// holds nothing off: with it, no handler may use the heap. A kernel whose
/// `with_current` disables interrupts satisfies this only if `operation`
/// does as well.
pub unsafe trait Cpu: Sync {
    /// What a CPU does while it waits for a lock of the heap (spin in a kernel,
    /// spin then yield on Linux, where the holder may have been preempted).
    type Relax: RelaxStrategy;

    /// Number of per-CPU slots.
    fn count(&self) -> usize;

    /// Runs `f(i)` with exclusive access to slot `i`, the calling CPU's slot.
    fn with_current<R>(&self, f: impl FnOnce(usize) -> R) -> R;

    /// Runs `f()` with exclusive access to slot `i` (any slot, from any CPU):
    /// used to drain another CPU's cache.
    fn with_slot<R>(&self, i: usize, f: impl FnOnce() -> R) -> R;

    /// Whether the heap runs each operation inside [`Cpu::operation`]: set it
    /// with `operation` for a heap that interrupt handlers use. The default,
    /// `false`, keeps the fast paths free of the call.
    const GUARDS_OPERATIONS: bool = false;

    /// Whether [`Cpu::operation`] also excludes every other heap operation,
    /// on every CPU, for the whole of its closure: one slot, and `operation`
    /// a critical section that is a lock across cores as well (the
    /// `critical-section` crate's contract). Only with
    /// [`Cpu::GUARDS_OPERATIONS`]. A fine heap (a small region heap) then
    /// takes no lock of its own. The default, `false`, claims nothing.
    const EXCLUSIVE_OPERATIONS: bool = false;

    /// Runs one whole heap operation, `f` (an allocation, a free, a
    /// `realloc`, a stack, a scavenge, the statistics), if
    /// [`Cpu::GUARDS_OPERATIONS`]. A `Cpu` whose heap serves interrupt
    /// handlers holds them off for all of `f` (see "Interrupt handlers"
    /// above); the default runs `f` as it is.
    #[inline(always)]
    fn operation<R>(&self, f: impl FnOnce() -> R) -> R {
        f()
    }

    /// Takes slot `i`'s exclusivity and keeps it until [`Cpu::release_slot`]:
    /// for whole-heap pauses such as `fork` handlers.
    fn acquire_slot(&self, i: usize);

    /// The thread-pointer offset of the rseq area when per-CPU operations can
    /// commit with restartable sequences instead of slot exclusivity (Linux
    /// x86-64 only); `None` (the default) for slot exclusivity. `Some` only
    /// if [`Cpu::count`] is above every CPU id the kernel can report: the
    /// fast paths' sections index the caches with the id unchecked.
    fn rseq_offset(&self) -> Option<i64> {
        None
    }

    /// Gives back what [`Cpu::acquire_slot`] took.
    ///
    /// # Safety
    /// The caller holds slot `i` through `acquire_slot`.
    unsafe fn release_slot(&self, i: usize);
}

/// One lock per slot, each on its own cache line so CPUs do not false-share.
#[repr(align(64))]
pub struct SlotLock {
    held: AtomicBool,
}

impl SlotLock {
    /// An unheld lock.
    pub const fn new() -> Self {
        SlotLock {
            held: AtomicBool::new(false),
        }
    }

    /// Waits (relaxing with `X`) until the lock is ours, runs `f`, releases.
    #[inline(always)]
    pub fn with<X: RelaxStrategy, R>(&self, f: impl FnOnce() -> R) -> R {
        if self
            .held
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_slow::<X>();
        }
        // Released on return and on unwind (a `checks` panic inside must not
        // leave the slot locked for good).
        struct Unlock<'a>(&'a AtomicBool);
        impl Drop for Unlock<'_> {
            #[inline(always)]
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _unlock = Unlock(&self.held);
        f()
    }

    /// Takes the lock and keeps it until [`SlotLock::release`].
    pub fn acquire<X: RelaxStrategy>(&self) {
        if self
            .held
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_slow::<X>();
        }
    }

    /// Releases the lock.
    ///
    /// # Safety
    /// The caller took it with [`SlotLock::acquire`].
    pub unsafe fn release(&self) {
        self.held.store(false, Ordering::Release);
    }

    #[cold]
    #[inline(never)]
    fn lock_slow<X: RelaxStrategy>(&self) {
        loop {
            while self.held.load(Ordering::Relaxed) {
                X::relax();
            }
            if self
                .held
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }
}

impl Default for SlotLock {
    fn default() -> Self {
        Self::new()
    }
}

/// A single slot shared by everyone behind one lock: for single-CPU systems,
/// early boot, and tests.
pub struct SingleCpu {
    lock: SlotLock,
}

impl SingleCpu {
    /// One slot, unlocked.
    pub const fn new() -> Self {
        SingleCpu {
            lock: SlotLock::new(),
        }
    }
}

impl Default for SingleCpu {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: one slot, index 0 always, and every access goes through the same lock.
unsafe impl Cpu for SingleCpu {
    type Relax = Spin;
    fn count(&self) -> usize {
        1
    }
    #[inline(always)]
    fn with_current<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        self.lock.with::<Spin, _>(|| f(0))
    }
    fn with_slot<R>(&self, i: usize, f: impl FnOnce() -> R) -> R {
        debug_assert_eq!(i, 0);
        self.lock.with::<Spin, _>(f)
    }
    fn acquire_slot(&self, _i: usize) {
        self.lock.acquire::<Spin>();
    }
    unsafe fn release_slot(&self, _i: usize) {
        // SAFETY: the caller holds the lock (trait contract).
        unsafe { self.lock.release() }
    }
}

/// `N` slots behind `N` locks, the slot chosen by a caller-supplied function of
/// the current execution (a thread-local in tests, a CPU id elsewhere). The
/// choice may be wrong or stale — the lock keeps it correct — so any mapping
/// works; a good one keeps each slot mostly on one CPU.
pub struct LockedSlots<const N: usize, X = Spin> {
    locks: [SlotLock; N],
    current: fn() -> usize,
    _relax: PhantomData<fn() -> X>,
}

impl<const N: usize, X> LockedSlots<N, X> {
    /// `current` names the caller's slot (taken modulo `N`); `X` says how to wait
    /// for a busy slot or heap lock.
    pub const fn new(current: fn() -> usize) -> Self {
        assert!(N > 0);
        LockedSlots {
            locks: [const { SlotLock::new() }; N],
            current,
            _relax: PhantomData,
        }
    }
}

// SAFETY: every index is reduced modulo N, and every access to slot i goes
// through `locks[i]`.
unsafe impl<const N: usize, X: RelaxStrategy> Cpu for LockedSlots<N, X> {
    type Relax = X;
    fn count(&self) -> usize {
        N
    }
    #[inline(always)]
    fn with_current<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        let i = (self.current)() % N;
        self.locks[i].with::<X, _>(|| f(i))
    }
    fn with_slot<R>(&self, i: usize, f: impl FnOnce() -> R) -> R {
        self.locks[i % N].with::<X, _>(f)
    }
    fn acquire_slot(&self, i: usize) {
        self.locks[i % N].acquire::<X>();
    }
    unsafe fn release_slot(&self, i: usize) {
        // SAFETY: the caller holds the lock (trait contract).
        unsafe { self.locks[i % N].release() }
    }
}

/// One slot behind the `critical-section` crate (feature `critical-section`):
/// every heap operation runs inside `critical_section::with`, so the heap
/// may be used from interrupt handlers (see [`Cpu`], "Interrupt handlers").
///
/// This is what `embedded-alloc` does around its heaps. On one core the
/// firmware's implementation masks interrupts (`cortex-m`'s
/// `critical-section-single-core`, `riscv`'s); on several cores it is also a
/// lock across cores, so one slot shared by all of them is still exclusive.
/// A critical section nests, so the sections the heap opens inside an
/// operation cost only a save and restore of the interrupt state.
#[cfg(feature = "critical-section")]
pub struct CriticalSectionCpu {
    /// The state the section kept open by [`Cpu::acquire_slot`] restores.
    held: core::cell::Cell<Option<critical_section::RestoreState>>,
}

#[cfg(feature = "critical-section")]
impl CriticalSectionCpu {
    /// The one slot.
    pub const fn new() -> Self {
        CriticalSectionCpu {
            held: core::cell::Cell::new(None),
        }
    }
}

#[cfg(feature = "critical-section")]
impl Default for CriticalSectionCpu {
    fn default() -> Self {
        Self::new()
    }
}

/// `critical_section::with`, inlined into the heap's fast paths (an
/// optimiser for size keeps `with` out of line: a call, and the closure's
/// captures through memory). The guard restores the state on unwinding too.
#[cfg(feature = "critical-section")]
#[inline(always)]
fn in_section<R>(f: impl FnOnce() -> R) -> R {
    struct Section(critical_section::RestoreState);
    impl Drop for Section {
        #[inline(always)]
        fn drop(&mut self) {
            // SAFETY: the state `acquire` returned below, released once, in
            // the reverse order of acquisition (sections nest lexically here).
            unsafe { critical_section::release(self.0) }
        }
    }
    // SAFETY: released by the guard's drop, on every path out of `f`.
    let _section = Section(unsafe { critical_section::acquire() });
    f()
}

// SAFETY: `held` is touched only inside a critical section (by
// `acquire_slot`/`release_slot`, which keep one open between them).
#[cfg(feature = "critical-section")]
unsafe impl Sync for CriticalSectionCpu {}

// SAFETY: one slot, index 0; every closure runs inside a critical section,
// which excludes every other critical section on every core, so no two
// overlap.
#[cfg(feature = "critical-section")]
unsafe impl Cpu for CriticalSectionCpu {
    type Relax = Spin;
    fn count(&self) -> usize {
        1
    }
    #[inline(always)]
    fn with_current<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        in_section(|| f(0))
    }
    fn with_slot<R>(&self, i: usize, f: impl FnOnce() -> R) -> R {
        debug_assert_eq!(i, 0);
        in_section(f)
    }
    const GUARDS_OPERATIONS: bool = true;
    // A critical section excludes every other one, on every core.
    const EXCLUSIVE_OPERATIONS: bool = true;
    #[inline(always)]
    fn operation<R>(&self, f: impl FnOnce() -> R) -> R {
        in_section(f)
    }
    fn acquire_slot(&self, _i: usize) {
        // SAFETY: released by `release_slot` with the state acquired here,
        // in the order the crate requires (the trait's caller pairs them).
        let state = unsafe { critical_section::acquire() };
        self.held.set(Some(state));
    }
    unsafe fn release_slot(&self, _i: usize) {
        let state = self.held.take().expect("release_slot without acquire_slot");
        // SAFETY: the state `acquire_slot` got, released once.
        unsafe { critical_section::release(state) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn slots_exclude_each_other() {
        static SLOTS: LockedSlots<2> = LockedSlots::new(|| 0);
        let inside = Arc::new(AtomicUsize::new(0));
        let counter = Arc::new(AtomicUsize::new(0));
        let threads: std::vec::Vec<_> = (0..4)
            .map(|_| {
                let inside = inside.clone();
                let counter = counter.clone();
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        SLOTS.with_current(|i| {
                            assert_eq!(i, 0);
                            assert_eq!(
                                inside.fetch_add(1, Ordering::SeqCst),
                                0,
                                "two holders of slot 0"
                            );
                            // A non-atomic-style read-modify-write that would lose updates without the lock.
                            let v = counter.load(Ordering::Relaxed);
                            counter.store(v + 1, Ordering::Relaxed);
                            inside.fetch_sub(1, Ordering::SeqCst);
                        })
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counter.load(Ordering::SeqCst), 80_000);
    }

    /// The host's `critical-section` (its `std` implementation, a global
    /// reentrant lock) makes the one slot exclusive across threads too: for
    /// the tiers (16 MiB) and for a fine heap (1 MiB), which then takes no
    /// lock of its own (`EXCLUSIVE_OPERATIONS`).
    #[cfg(feature = "critical-section")]
    #[test]
    fn critical_section_cpu_heap_from_threads() {
        // Four threads of up to 200 objects below `max` bytes each.
        for (len, max) in [(16 << 20, 4000), (1 << 20, 1000)] {
            critical_section_heap_from_threads(len, max);
        }
    }

    #[cfg(feature = "critical-section")]
    fn critical_section_heap_from_threads(len: usize, max: usize) {
        use crate::{Heap, RegionSource};
        use core::alloc::Layout;
        let mut memory = std::vec![0u8; len];
        // SAFETY: the region outlives the heap (declared before it).
        let source = unsafe { RegionSource::new(memory.as_mut_ptr(), memory.len()) };
        let heap = Heap::new(source, CriticalSectionCpu::new());
        assert_eq!(heap.is_fine(), len <= crate::FINE_MAX_BYTES);
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let heap = &heap;
                s.spawn(move || {
                    let mut rng = crate::testing::Rng::new(t as u64 + 1);
                    let mut live: std::vec::Vec<(*mut u8, Layout)> = std::vec::Vec::new();
                    for _ in 0..20_000 {
                        if live.len() > 200 || (!live.is_empty() && rng.below(2) == 0) {
                            let (p, l) = live.swap_remove(rng.below(live.len()));
                            // SAFETY: a live object of `l.size()` bytes, ours.
                            let ok = unsafe { core::slice::from_raw_parts(p, l.size()) }
                                .iter()
                                .all(|&b| b == t);
                            assert!(ok, "object {p:p} overwritten");
                            // SAFETY: allocated with `l`, not used afterwards.
                            unsafe { heap.deallocate(p, l) };
                        } else {
                            let l = Layout::from_size_align(1 + rng.below(max), 8).unwrap();
                            let p = heap.allocate(l);
                            assert!(!p.is_null());
                            // SAFETY: a fresh object of `l.size()` bytes.
                            unsafe { p.write_bytes(t, l.size()) };
                            live.push((p, l));
                        }
                    }
                    for (p, l) in live {
                        // SAFETY: as above.
                        unsafe { heap.deallocate(p, l) };
                    }
                });
            }
        });
        let st = heap.stats();
        assert_eq!(st.mallocs, st.frees);
        heap.check_invariants();
        // `heap`, declared after `memory`, is dropped before it.
    }

    #[test]
    fn single_cpu_is_slot_zero() {
        let c = SingleCpu::new();
        assert_eq!(c.count(), 1);
        assert_eq!(c.with_current(|i| i), 0);
        assert_eq!(c.with_slot(0, || 7), 7);
    }
}
