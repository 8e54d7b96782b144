//! PVH entry: the Xen ELF note that QEMU's `-kernel` looks for, the 32 → 64-bit
//! trampoline, the boot page tables, and the parsing of `hvm_start_info`.
//!
//! State at entry (Xen's PVH boot ABI, as QEMU's `-kernel` provides it):
//! 32-bit protected mode, paging off, flat segments, interrupts off, no
//! stack, `EBX` = physical address of
//! `hvm_start_info`. The trampoline builds page tables that map the first 4 GiB
//! twice with 2 MiB pages — identity (where the kernel runs and the local APIC
//! lives) and at [`crate::memory::PHYS_OFFSET`] (the physical-memory window the
//! `x86_64` crate's `OffsetPageTable` walks) — enables long mode, zeroes `.bss`
//! and calls [`crate::kmain`] with the start-info address.

use core::arch::global_asm;

global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                 /* namesz */
    .long 8                 /* descsz */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad _start32
    .balign 4

    .section .data.boottables, "aw"
    .balign 4096
    .global boot_pml4
boot_pml4:
    .quad boot_pdpt + 0x3           /* 0x0000_0000_0000_0000: identity, first 4 GiB */
    .fill 255, 8, 0
    .quad boot_pdpt + 0x3           /* 0xffff_8000_0000_0000: PHYS_OFFSET, same 4 GiB */
    .fill 255, 8, 0
boot_pdpt:
    .quad boot_pd + 0x0003
    .quad boot_pd + 0x1003
    .quad boot_pd + 0x2003
    .quad boot_pd + 0x3003
    .fill 508, 8, 0
boot_pd:
    .fill 2048, 8, 0                /* filled by _start32: 2048 x 2 MiB pages */

    .balign 8
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF        /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF        /* 0x10: data */
boot_gdt_end:
boot_gdtr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .text.boot, "ax"
    .code32
    .global _start32
_start32:
    cli
    cld
    mov esi, ebx                    /* hvm_start_info, kept in esi */
    mov esp, offset boot_stack_top

    /* 2048 PD entries: entry i maps 2 MiB page i (present, writable, huge). */
    xor ecx, ecx
1:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov dword ptr [boot_pd + ecx * 8], eax
    mov dword ptr [boot_pd + ecx * 8 + 4], 0
    inc ecx
    cmp ecx, 2048
    jb 1b

    mov eax, cr4
    or eax, 0x620                   /* PAE | OSFXSR | OSXMMEXCPT */
    mov cr4, eax
    mov eax, offset boot_pml4
    mov cr3, eax
    mov ecx, 0xC0000080             /* IA32_EFER */
    rdmsr
    or eax, 0x100                   /* LME */
    wrmsr
    mov eax, cr0
    or eax, 0x80010001              /* PG | WP | PE */
    mov cr0, eax
    lgdt [boot_gdtr]
    .byte 0xea                      /* ljmp 0x08:start64 (encoded by hand: rust-lld rejects the 16-bit reloc) */
    .long start64
    .word 0x08

    .code64
start64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    lea rsp, [rip + boot_stack_top]
    lea rdi, [rip + __bss_start]
    lea rcx, [rip + __bss_end]
    sub rcx, rdi
    xor eax, eax
    rep stosb                       /* zero .bss (the boot stack is in it, still unused) */
    mov edi, esi
    xor ebp, ebp
    call kmain
2:
    cli
    hlt
    jmp 2b
"#
);

/// The BSP's boot stack (the APs get theirs from the heap).
#[repr(C, align(4096))]
pub struct Stack<const N: usize>(pub [u8; N]);

pub const BOOT_STACK_BYTES: usize = 256 * 1024;

#[unsafe(no_mangle)]
#[used]
static mut boot_stack: Stack<BOOT_STACK_BYTES> = Stack([0; BOOT_STACK_BYTES]);

global_asm!(
    r#"
    .global boot_stack_top
    .set boot_stack_top, boot_stack + {size}
"#,
    size = const BOOT_STACK_BYTES
);

unsafe extern "C" {
    static boot_pml4: u8;
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// Physical address of the boot PML4 (the kernel's only address space).
pub fn pml4_phys() -> u64 {
    (&raw const boot_pml4) as u64
}

/// `[start, end)` of the kernel image (physical = virtual).
pub fn kernel_range() -> (u64, u64) {
    (
        (&raw const __kernel_start) as u64,
        (&raw const __kernel_end) as u64,
    )
}

/// `[lo, hi)` of the BSP's boot stack.
pub fn boot_stack_range() -> (u64, u64) {
    let lo = (&raw const boot_stack) as u64;
    (lo, lo + BOOT_STACK_BYTES as u64)
}

pub const MAX_MEMMAP: usize = 64;
pub const MAX_CMDLINE: usize = 256;

/// A memory map entry of `hvm_start_info` (type 1 = usable RAM).
#[derive(Clone, Copy, Debug, Default)]
pub struct MemEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// What the kernel keeps of `hvm_start_info` (copied out before low memory is reused).
pub struct BootInfo {
    pub memmap: [MemEntry; MAX_MEMMAP],
    pub memmap_len: usize,
    pub cmdline: [u8; MAX_CMDLINE],
    pub cmdline_len: usize,
    pub rsdp: u64,
}

impl BootInfo {
    pub fn memmap(&self) -> &[MemEntry] {
        &self.memmap[..self.memmap_len]
    }

    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }

    /// The value of `key=value` on the command line.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.cmdline()
            .split_ascii_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    }
}

/// Reads `hvm_start_info` at physical `addr` (identity-mapped).
///
/// # Safety
/// `addr` is the address the PVH loader passed in EBX, and low memory is still untouched.
pub unsafe fn parse_start_info(addr: u64) -> Result<BootInfo, &'static str> {
    let p = addr as *const u8;
    // SAFETY: the fields read are inside `hvm_start_info` at `addr` (the caller's promise).
    let rd32 = |off: usize| unsafe { (p.add(off) as *const u32).read_unaligned() };
    // SAFETY: as `rd32`.
    let rd64 = |off: usize| unsafe { (p.add(off) as *const u64).read_unaligned() };
    if rd32(0) != 0x336e_c578 {
        return Err("hvm_start_info: bad magic (not booted through PVH?)");
    }
    let version = rd32(4);
    let mut info = BootInfo {
        memmap: [MemEntry::default(); MAX_MEMMAP],
        memmap_len: 0,
        cmdline: [0; MAX_CMDLINE],
        cmdline_len: 0,
        rsdp: rd64(32),
    };
    let cmd = rd64(24);
    if cmd != 0 {
        let c = cmd as *const u8;
        let mut n = 0;
        // SAFETY: a NUL-terminated string from the loader.
        while n < MAX_CMDLINE && unsafe { *c.add(n) } != 0 {
            // SAFETY: byte `n` is before the NUL found just above.
            info.cmdline[n] = unsafe { *c.add(n) };
            n += 1;
        }
        info.cmdline_len = n;
    }
    if version < 1 {
        return Err("hvm_start_info: version 0 has no memory map");
    }
    let map = rd64(40) as *const u8;
    let entries = (rd32(48) as usize).min(MAX_MEMMAP);
    for i in 0..entries {
        // SAFETY: `entries` records of 24 bytes at `map`.
        let e = unsafe { map.add(i * 24) };
        // SAFETY: the fields read are inside record `i`.
        let rd = |off: usize| unsafe { (e.add(off) as *const u64).read_unaligned() };
        info.memmap[i] = MemEntry {
            addr: rd(0),
            size: rd(8),
            kind: rd(16) as u32,
        };
    }
    info.memmap_len = entries;
    Ok(info)
}
