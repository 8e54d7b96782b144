//! COM1 (0x3F8) console, polled, and the `print!`/`println!` macros.
//!
//! One lock serialises whole `print!` calls so lines of different CPUs do not
//! interleave. Printing never allocates, so it is safe inside the allocator's
//! failure paths, fault handlers and the panic handler (which takes the lock
//! by force if a CPU died holding it).

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

use x86_64::instructions::port::Port;

const COM1: u16 = 0x3F8;

pub struct Serial;

static LOCK: AtomicBool = AtomicBool::new(false);

pub fn init() {
    // SAFETY: COM1's registers; the kernel owns the UART and programs it once at boot.
    unsafe {
        Port::<u8>::new(COM1 + 1).write(0x00); // no interrupts
        Port::<u8>::new(COM1 + 3).write(0x80); // DLAB
        Port::<u8>::new(COM1).write(0x01); // 115200 baud
        Port::<u8>::new(COM1 + 1).write(0x00);
        Port::<u8>::new(COM1 + 3).write(0x03); // 8N1
        Port::<u8>::new(COM1 + 2).write(0xC7); // FIFO
        Port::<u8>::new(COM1 + 4).write(0x03); // DTR | RTS
    }
}

fn put(b: u8) {
    // SAFETY: COM1's status and data registers, written under `LOCK`.
    unsafe {
        let mut lsr = Port::<u8>::new(COM1 + 5);
        while lsr.read() & 0x20 == 0 {
            core::hint::spin_loop();
        }
        Port::<u8>::new(COM1).write(b);
    }
}

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                put(b'\r');
            }
            put(b);
        }
        Ok(())
    }
}

/// Interrupts stay as they are: a CPU that waits here with interrupts on still
/// answers TLB shootdowns.
pub fn print_args(args: fmt::Arguments) {
    while LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        crate::smp::relax();
    }
    let _ = Serial.write_fmt(args);
    LOCK.store(false, Ordering::Release);
}

/// For the panic and fault handlers: waits a while for the lock, then takes it anyway.
pub fn print_force(args: fmt::Arguments) {
    let mut tries = 0u64;
    while LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        tries += 1;
        if tries > 50_000_000 {
            break;
        }
        crate::smp::relax();
    }
    let _ = Serial.write_fmt(args);
    LOCK.store(false, Ordering::Release);
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::serial::print_args(format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::serial::print_args(format_args!("{}\n", format_args!($($arg)*))) };
}

/// ISA debug exit device (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`):
/// QEMU ends with status `(code << 1) | 1`.
pub mod exit {
    use x86_64::instructions::port::Port;

    /// QEMU exit status 33.
    pub const SUCCESS: u32 = 0x10;
    /// QEMU exit status 35.
    pub const FAILURE: u32 = 0x11;

    pub fn qemu_exit(code: u32) -> ! {
        // SAFETY: QEMU's isa-debug-exit port; writing it ends the machine.
        unsafe { Port::<u32>::new(0xf4).write(code) };
        // Without the device (a real machine, or QEMU without it): stop here.
        loop {
            x86_64::instructions::interrupts::disable();
            x86_64::instructions::hlt();
        }
    }

    pub fn success() -> ! {
        qemu_exit(SUCCESS)
    }

    pub fn failure() -> ! {
        qemu_exit(FAILURE)
    }
}
