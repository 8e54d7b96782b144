//! [`LinuxCpu`]: CPU indices on hosted Linux, from `sched_getcpu`, with
//! restartable sequences where glibc registered them. See `lib.rs` for the
//! overview and [`super`] for the per-CPU tier.
//!
//! Where glibc registered an rseq area (glibc 2.35 and later, on x86-64),
//! per-CPU operations commit with restartable sequences and the slot locks
//! are taken only by drains and `fork` handlers. Otherwise CPU exclusivity is
//! a per-slot lock (one uncontended atomic per operation, taken on the CPU
//! the thread runs on, so it is almost never contended): a thread migrated
//! between reading its CPU id and taking the lock simply uses another CPU's
//! slot for one operation, which is correct.

use crate::sync::atomic::{AtomicUsize, Ordering};

use super::cpu::{Cpu, RelaxStrategy, SlotLock};
use super::Sections;

/// Most CPU slots; CPUs beyond share slots (modulo).
pub const MAX_CPUS: usize = 256;

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
/// not allocate (glibc's `sysconf(_SC_NPROCESSORS_CONF)` may). `MAX_CPUS` if unknown.
fn possible_cpus() -> usize {
    let mut buf = [0u8; 64];
    // SAFETY: a NUL-terminated path; open/read/close on a local buffer.
    let n = unsafe {
        let fd = libc::open(
            c"/sys/devices/system/cpu/possible".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return MAX_CPUS;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    if n <= 0 {
        return MAX_CPUS;
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
    match cur.or(last) {
        Some(max_id) => max_id + 1,
        None => MAX_CPUS,
    }
}

/// CPU ids from `sched_getcpu` (glibc reads them from the thread's rseq area),
/// one locked slot per configured CPU.
pub struct LinuxCpu {
    locks: [SlotLock; MAX_CPUS],
    /// Number of slots, 0 until first asked.
    count: AtomicUsize,
    /// Use restartable sequences when glibc offers them.
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
// reached only through its own lock.
unsafe impl Cpu for LinuxCpu {
    type Relax = SpinThenYield;

    #[inline(always)]
    fn count(&self) -> usize {
        let n = self.count.load(Ordering::Relaxed);
        if n != 0 {
            return n;
        }
        let n = possible_cpus().clamp(1, MAX_CPUS);
        self.count.store(n, Ordering::Relaxed);
        n
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
        if self.no_rseq {
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
        let n = possible_cpus();
        assert!((1..=4096).contains(&n));
        // SAFETY: no preconditions.
        let id = unsafe { libc::sched_getcpu() };
        assert!(id >= 0 && (id as usize) < n, "cpu {id} outside 0..{n}");
        let cpu = LinuxCpu::new();
        assert_eq!(cpu.count(), n.min(MAX_CPUS));
        assert!(cpu.with_current(|i| i) < cpu.count());
    }
}
