//! The IDT: naked entry stubs (stable `naked_asm!`) that save the registers
//! and call [`dispatch`], which reports exceptions and serves the kernel's IPIs.
//!
//! Double faults run on IST 1 and page faults on IST 2 (per-CPU stacks in the
//! TSS), so a stack overflow into a guard page is reported by the page-fault
//! handler as "guard page hit at 0x... (stack of CPU n)" instead of escalating
//! to a triple fault.

use core::arch::naked_asm;
use core::sync::atomic::{AtomicBool, Ordering};

use x86_64::registers::control::Cr2;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

use crate::percpu;
use crate::serial::exit;

/// TLB shootdown request as a fixed IPI (unused: shootdowns go out as NMIs,
/// vector 2, see `smp::tlb_shootdown`; kept as a harmless poll).
pub const VEC_SHOOTDOWN: u8 = 0xF0;
/// Wake an idle CPU: new work posted.
pub const VEC_WAKE: u8 = 0xF1;
/// LAPIC spurious-interrupt vector.
pub const VEC_SPURIOUS: u8 = 0xFF;

/// Set by the guard-page scenario: a guard hit is the expected end of the run.
pub static EXPECT_GUARD_HIT: AtomicBool = AtomicBool::new(false);

/// Registers saved by the stubs, in stack order.
#[repr(C)]
#[derive(Debug)]
pub struct Frame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

#[unsafe(naked)]
unsafe extern "C" fn common_stub() {
    naked_asm!(
        "push rax", "push rbx", "push rcx", "push rdx", "push rsi", "push rdi", "push rbp",
        "push r8", "push r9", "push r10", "push r11", "push r12", "push r13", "push r14", "push r15",
        "mov rdi, rsp",
        "cld",
        "call {dispatch}",
        "pop r15", "pop r14", "pop r13", "pop r12", "pop r11", "pop r10", "pop r9", "pop r8",
        "pop rbp", "pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rbx", "pop rax",
        "add rsp, 16",
        "iretq",
        dispatch = sym dispatch,
    );
}

macro_rules! stubs {
    ($($name:ident = $vec:literal $(, $err:ident)?;)*) => {
        $(
            #[unsafe(naked)]
            unsafe extern "C" fn $name() {
                stubs!(@body $vec $(, $err)?);
            }
        )*
        const STUBS: &[(u8, unsafe extern "C" fn())] = &[$(($vec, $name)),*];
    };
    (@body $vec:literal, err) => {
        naked_asm!("push {v}", "jmp {c}", v = const $vec, c = sym common_stub)
    };
    (@body $vec:literal) => {
        naked_asm!("push 0", "push {v}", "jmp {c}", v = const $vec, c = sym common_stub)
    };
}

stubs! {
    isr0 = 0; isr1 = 1; isr2 = 2; isr3 = 3; isr4 = 4; isr5 = 5; isr6 = 6; isr7 = 7;
    isr8 = 8, err; isr10 = 10, err; isr11 = 11, err; isr12 = 12, err; isr13 = 13, err; isr14 = 14, err;
    isr16 = 16; isr17 = 17, err; isr18 = 18; isr19 = 19; isr20 = 20; isr21 = 21, err;
    isr_shootdown = 0xF0; isr_wake = 0xF1; isr_spurious = 0xFF;
}

#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct Gate {
    off_lo: u16,
    sel: u16,
    ist: u8,
    attr: u8,
    off_mid: u16,
    off_hi: u32,
    _zero: u32,
}

#[repr(C, align(4096))]
struct Idt([Gate; 256]);

static mut IDT: Idt = Idt([Gate {
    off_lo: 0,
    sel: 0,
    ist: 0,
    attr: 0,
    off_mid: 0,
    off_hi: 0,
    _zero: 0,
}; 256]);

/// Fills the IDT (once, on the BSP).
pub fn init_idt() {
    for &(vec, f) in STUBS {
        let addr = f as usize as u64;
        let ist = match vec {
            8 => 1,
            14 => 2,
            _ => 0,
        };
        // SAFETY: written once on the BSP before any CPU loads the IDT.
        unsafe {
            IDT.0[vec as usize] = Gate {
                off_lo: addr as u16,
                sel: 0x08,
                ist,
                attr: 0x8E, // present, DPL 0, 64-bit interrupt gate
                off_mid: (addr >> 16) as u16,
                off_hi: (addr >> 32) as u32,
                _zero: 0,
            };
        }
    }
}

/// Loads the shared IDT on this CPU.
pub fn load_idt() {
    let ptr = DescriptorTablePointer {
        limit: (256 * 16 - 1) as u16,
        base: VirtAddr::new((&raw const IDT) as u64),
    };
    // SAFETY: the IDT is static and filled.
    unsafe { x86_64::instructions::tables::lidt(&ptr) };
}

fn name(v: u64) -> &'static str {
    match v {
        0 => "divide error",
        1 => "debug",
        2 => "NMI",
        3 => "breakpoint",
        4 => "overflow",
        5 => "bound range",
        6 => "invalid opcode",
        7 => "device not available",
        8 => "double fault",
        10 => "invalid TSS",
        11 => "segment not present",
        12 => "stack-segment fault",
        13 => "general protection fault",
        14 => "page fault",
        16 => "x87 floating point",
        17 => "alignment check",
        18 => "machine check",
        19 => "SIMD floating point",
        20 => "virtualization",
        21 => "control protection",
        _ => "interrupt",
    }
}

extern "C" fn dispatch(f: &mut Frame) {
    match f.vector as u8 {
        VEC_SHOOTDOWN => {
            crate::smp::poll_shootdown();
            crate::smp::lapic_eoi();
        }
        VEC_WAKE => crate::smp::lapic_eoi(),
        // NMI: a TLB shootdown request or a heap slot's remote fence (taken even
        // with interrupts off; no EOI). The ack comes first: a locked RMW, the
        // serialising point `percpu::KernelCpu`'s remote side waits for.
        2 => {
            percpu::nmi_ack();
            crate::smp::poll_shootdown();
        }
        VEC_SPURIOUS => {}
        14 => page_fault(f),
        _ => fatal(f, ""),
    }
}

fn page_fault(f: &mut Frame) -> ! {
    let addr = Cr2::read_raw();
    let cpu = percpu::current();
    let guard_of = percpu::guard_owner(addr).or_else(|| crate::kheap::stack_guard_owner(addr));
    if let Some(owner) = guard_of {
        if owner == usize::MAX {
            crate::serial::print_force(format_args!(
                "\nguard page hit at {addr:#x} (a heap stack guard, not a CPU stack) on CPU {cpu}: rip {:#x} rsp {:#x} error {:#x}\n",
                f.rip, f.rsp, f.error
            ));
        } else {
            crate::serial::print_force(format_args!(
                "\nguard page hit at {addr:#x} (stack of CPU {owner}) on CPU {cpu}: rip {:#x} rsp {:#x} error {:#x}\n",
                f.rip, f.rsp, f.error
            ));
        }
        if EXPECT_GUARD_HIT.load(Ordering::SeqCst) {
            crate::serial::print_force(format_args!(
                "guard: stack overflow caught and reported\nscenario guard: PASS\n"
            ));
            exit::success();
        }
        exit::failure();
    }
    fatal(f, "");
}

fn fatal(f: &Frame, extra: &str) -> ! {
    let cpu = percpu::current();
    if f.vector == 14 {
        let addr = Cr2::read_raw();
        let what = if f.error & 1 == 0 {
            "not-present page"
        } else {
            "protection violation"
        };
        let rw = if f.error & 16 != 0 {
            "instruction fetch"
        } else if f.error & 2 != 0 {
            "write"
        } else {
            "read"
        };
        crate::serial::print_force(format_args!(
            "\nEXCEPTION on CPU {cpu}: page fault at {addr:#x} ({rw}, {what}; {}) rip {:#x} rsp {:#x}\n",
            crate::kheap::describe_addr(addr),
            f.rip,
            f.rsp
        ));
    } else {
        crate::serial::print_force(format_args!(
            "\nEXCEPTION on CPU {cpu}: {} (vector {}, error {:#x}) rip {:#x} rsp {:#x} rflags {:#x}{extra}\n",
            name(f.vector),
            f.vector,
            f.error,
            f.rip,
            f.rsp,
            f.rflags
        ));
    }
    crate::serial::print_force(format_args!("registers: {f:x?}\n"));
    exit::failure()
}
