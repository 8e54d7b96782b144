//! [`LinuxCpu`]: CPU indices on hosted Linux, from `sched_getcpu`, with
//! restartable sequences where the kernel offers them. See `lib.rs` for the
//! overview and [`super`] for the per-CPU tier.
//!
//! Where a thread can have an rseq area (x86-64: glibc's, from 2.35, or
//! else one of the heap's own, `super::rseq`),
//! per-CPU operations commit with restartable sequences and the slot locks
//! are taken only by drains and `fork` handlers. Otherwise CPU exclusivity is
//! a per-slot lock (one uncontended atomic per operation, taken on the CPU
//! the thread runs on, so it is almost never contended): a thread migrated
//! between reading its CPU id and taking the lock simply uses another CPU's
//! slot for one operation, which is correct.

use crate::sync::atomic::{AtomicUsize, Ordering};

use super::cpu::{Cpu, RelaxStrategy, SlotLock};
use super::Sections;

/// Most CPU slots; CPUs beyond share slots (modulo), and then the heap does
/// not use restartable sequences (they index the caches by CPU id).
pub const MAX_CPUS: usize = 4096;

/// Waits for a heap lock: a short spin, then `sched_yield`, since the holder
/// may have been preempted (more threads than cores).
pub struct SpinThenYield;

impl RelaxStrategy for SpinThenYield {
    #[inline]
    fn relax() {
        for _ in 0..16 {
            core::hint::spin_loop();
        }
        // SAFETY: sched_yield has no preconditions.
        unsafe { libc::sched_yield() };
    }
}

/// Number of possible CPU ids, from `/sys/devices/system/cpu/possible` ("0-N"),
/// read with plain syscalls: this runs inside `malloc` the first time, so it must
/// not allocate (glibc's `sysconf(_SC_NPROCESSORS_CONF)` may). `None` if unknown.
fn possible_cpus() -> Option<usize> {
    let mut buf = [0u8; 64];
    // SAFETY: a NUL-terminated path; open/read/close on a local buffer.
    let n = unsafe {
        let fd = libc::open(
            c"/sys/devices/system/cpu/possible".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return None;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    if n <= 0 {
        return None;
    }
    // The highest id is the last number in the list ("0-3", "0", "0-3,8-11").
    let text = &buf[..n as usize];
    let mut last = None;
    let mut cur: Option<usize> = None;
    for &b in text {
        if b.is_ascii_digit() {
            cur = Some(cur.unwrap_or(0) * 10 + (b - b'0') as usize);
        } else if let Some(v) = cur.take() {
            last = Some(v);
        }
    }
    cur.or(last).map(|max_id| max_id + 1)
}

/// CPU ids from `sched_getcpu` (glibc reads them from the thread's rseq area),
/// one locked slot per configured CPU.
pub struct LinuxCpu {
    locks: [SlotLock; MAX_CPUS],
    /// Number of slots, 0 until first asked; with [`LinuxCpu::EXACT`] set
    /// when it is the number of possible CPU ids (every id is below it).
    count: AtomicUsize,
    /// rseq refused (`new_locked`); false (the zero byte) allows it.
    no_rseq: bool,
}

impl LinuxCpu {
    /// Per-CPU operations through rseq where available, else per-slot locks.
    pub const fn new() -> Self {
        LinuxCpu {
            locks: [const { SlotLock::new() }; MAX_CPUS],
            count: AtomicUsize::new(0),
            no_rseq: false,
        }
    }

    /// Per-CPU operations always through per-slot locks (the fallback mode).
    pub const fn new_locked() -> Self {
        LinuxCpu {
            locks: [const { SlotLock::new() }; MAX_CPUS],
            count: AtomicUsize::new(0),
            no_rseq: true,
        }
    }

    /// The flag of `count` that says it covers every CPU id.
    const EXACT: usize = 1 << (usize::BITS - 1);

    /// `count` with its flag, computed on first use (racers compute the
    /// same value).
    #[inline(always)]
    fn slots(&self) -> usize {
        let n = self.count.load(Ordering::Relaxed);
        if n != 0 {
            return n;
        }
        let n = match possible_cpus() {
            Some(n) if (1..=MAX_CPUS).contains(&n) => n | Self::EXACT,
            Some(n) => n.clamp(1, MAX_CPUS),
            None => MAX_CPUS,
        };
        self.count.store(n, Ordering::Relaxed);
        n
    }

    #[inline(always)]
    fn current(&self) -> usize {
        // SAFETY: sched_getcpu has no preconditions; it returns -1 on failure.
        let id = unsafe { libc::sched_getcpu() };
        let n = self.count();
        if id < 0 {
            0
        } else if (id as usize) < n {
            id as usize
        } else {
            id as usize % n
        }
    }
}

impl Default for LinuxCpu {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: `count` is computed once (racers compute the same value) and is
// between 1 and MAX_CPUS; every index passed on is `< count`, and each slot is
// reached only through its own lock; `rseq_offset` is `Some` only when
// `count` is the kernel's number of possible CPU ids, above every id.
unsafe impl Cpu for LinuxCpu {
    type Relax = SpinThenYield;

    #[inline(always)]
    fn count(&self) -> usize {
        self.slots() & !Self::EXACT
    }

    #[inline(always)]
    fn with_current<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        let i = self.current();
        self.locks[i].with::<SpinThenYield, _>(|| f(i))
    }

    fn with_slot<R>(&self, i: usize, f: impl FnOnce() -> R) -> R {
        self.locks[i].with::<SpinThenYield, _>(f)
    }
    fn rseq_offset(&self) -> Option<i64> {
        if self.no_rseq || self.slots() & Self::EXACT == 0 {
            return None;
        }
        Sections::available()
    }

    fn acquire_slot(&self, i: usize) {
        self.locks[i].acquire::<SpinThenYield>();
    }
    unsafe fn release_slot(&self, i: usize) {
        // SAFETY: the caller holds the lock (trait contract).
        unsafe { self.locks[i].release() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn possible_cpus_covers_the_current_cpu() {
        let n = possible_cpus().expect("this machine has /sys");
        assert!((1..=MAX_CPUS).contains(&n));
        // SAFETY: no preconditions.
        let id = unsafe { libc::sched_getcpu() };
        assert!(id >= 0 && (id as usize) < n, "cpu {id} outside 0..{n}");
        let cpu = LinuxCpu::new();
        assert_eq!(cpu.count(), n);
        assert!(cpu.with_current(|i| i) < cpu.count());
        assert_ne!(
            cpu.slots() & LinuxCpu::EXACT,
            0,
            "every id is below the count"
        );
    }
}
