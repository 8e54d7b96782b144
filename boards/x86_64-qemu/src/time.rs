//! Time: the TSC, calibrated once against PIT channel 2.

use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::instructions::port::Port;

static TSC_HZ: AtomicU64 = AtomicU64::new(1_000_000_000);

#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Measures the TSC rate over 50 ms of PIT channel 2 (gate through port 0x61, polled OUT).
pub fn calibrate() {
    const PIT_HZ: u64 = 1_193_182;
    const TICKS: u64 = PIT_HZ / 20; // 50 ms
                                    // SAFETY: the PIT's channel-2 and gate ports, used once at boot by the BSP alone.
    unsafe {
        let mut p61 = Port::<u8>::new(0x61);
        let mut cmd = Port::<u8>::new(0x43);
        let mut ch2 = Port::<u8>::new(0x42);
        let v = p61.read();
        p61.write(v & !0x03); // gate low, speaker off
        cmd.write(0b1011_0000); // channel 2, lo/hi, mode 0, binary
        ch2.write(TICKS as u8);
        ch2.write((TICKS >> 8) as u8);
        let v = p61.read();
        p61.write(v | 0x01); // gate high: counting starts
        let t0 = rdtsc();
        let mut spins = 0u64;
        while p61.read() & 0x20 == 0 {
            spins += 1;
            if spins > 200_000_000 {
                break;
            }
        }
        let t1 = rdtsc();
        let hz = (t1 - t0) * 20;
        if hz > 1_000_000 {
            TSC_HZ.store(hz, Ordering::SeqCst);
        }
    }
}

pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Nanoseconds for a TSC difference.
pub fn ticks_to_ns(t: u64) -> u64 {
    ((t as u128) * 1_000_000_000 / tsc_hz() as u128) as u64
}

pub fn now_ns() -> u64 {
    ticks_to_ns(rdtsc())
}

pub fn delay_us(us: u64) {
    let end = rdtsc() + tsc_hz() / 1_000_000 * us;
    while rdtsc() < end {
        core::hint::spin_loop();
    }
}

/// A stopwatch.
pub struct Watch(u64);

impl Watch {
    pub fn start() -> Watch {
        Watch(rdtsc())
    }
    pub fn ns(&self) -> u64 {
        ticks_to_ns(rdtsc() - self.0)
    }
    pub fn secs_f(&self) -> Secs {
        Secs(self.ns())
    }
}

/// Nanoseconds shown as seconds with 3 decimals (no floating point in this kernel).
#[derive(Clone, Copy)]
pub struct Secs(pub u64);

impl core::fmt::Display for Secs {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{}.{:03} s",
            self.0 / 1_000_000_000,
            self.0 / 1_000_000 % 1000
        )
    }
}

/// Operations per second for `ops` done in `ns`.
pub fn per_sec(ops: u64, ns: u64) -> u64 {
    ((ops as u128) * 1_000_000_000 / (ns.max(1) as u128)) as u64
}
