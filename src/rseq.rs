//! Restartable sequences: per-CPU cache operations without atomics on Linux
//! x86-64 (tcmalloc's per-CPU slabs). See `lib.rs` for the overview and
//! [`crate::cache`] for the slab layout.
//!
//! Each operation is a short critical section that reads the CPU id from the
//! thread's rseq area, finds that CPU's cache, and commits with **one plain
//! store** (a class's stack word: length and malloc count packed together). If
//! the thread is preempted, migrated or signalled inside the section, the kernel
//! moves it to the abort handler, which starts the whole section again on
//! whatever CPU it now runs: nothing before the commit is visible, so a restart
//! is always safe.
//!
//! We use glibc's registration (glibc ≥ 2.35 registers every thread): the
//! loader exports `__rseq_offset` (the area's offset from the thread pointer)
//! and `__rseq_size` (0 when glibc did not register). We do not register an
//! area of our own when glibc did not: a library cannot guarantee an area at
//! one fixed thread-pointer offset in every thread, so that case (and old
//! kernels, seccomp filters, glibc < 2.35) falls back to the locked per-CPU path.
//!
//! **Stopping a CPU.** A drain from another CPU needs the cache to itself. It
//! sets the [`STOP`](crate::cache::STOP) bit in the length field of every stack
//! word of that cache (and a stop mark in its tiny word), then issues
//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ)` so that every section in
//! flight on that CPU restarts, and checks that the marks are still there (a
//! section that read a word before the mark and committed after it overwrites
//! the mark; then it marks and fences again). A marked length is at least
//! `STOP`, above every capacity, so a pop sees it as "nothing to pop" and a push
//! as "full": the sections need no separate stop check.

use core::arch::asm;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicI64, AtomicU8, Ordering};

use crate::sizeclass::NUM_CLASSES;

/// The signature glibc registered the area with; it must precede each abort handler.
pub const RSEQ_SIG: u32 = 0x5305_3053;

/// Offsets in the kernel's `struct rseq`.
const RSEQ_CPU_ID: usize = 4;

/// The slabs as the critical sections see them. Written once at set-up, before
/// the heap publishes it. Per-class fields are arrays indexed by the class, so
/// that a section addresses them with the class index scaled in the operand;
/// index 0 (class 0 has no stack) has `word` = CPU 0's cache itself and `cap` =
/// 0, and the word sections ([`load`], [`store_if`], [`add`], [`carve`]) use it.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    /// `__rseq_offset`: the rseq area's offset from the thread pointer.
    pub rseq_off: i64,
    /// Number of CPU caches; a CPU id at or above it fails the section.
    pub count: u32,
    /// Per class, the address of its stack word in CPU 0's cache; the stack's
    /// slots follow the word (slot `i` at `word + 8 + 8 i`), and CPU `k`'s
    /// word is [`STRIDE`] · `k` bytes further.
    pub word: [u64; NUM_CLASSES],
    /// Per class, the capacity of its stack.
    pub cap: [u32; NUM_CLASSES],
}

/// A [`Desc`] kept in place — inside the heap, so that the fast paths address
/// it from the heap's own address instead of loading a pointer first — and
/// published once. Its `rseq_off`, 0 until then, is stored last (Release) and
/// read first (Acquire): 0 can never be glibc's offset (the word at the thread
/// pointer is the TCB's self pointer, see [`available`]), so it doubles as the
/// "not set up, or locked mode" test.
pub struct Published(UnsafeCell<Desc>);

// SAFETY: the fields other than the offset are written once, before the offset
// is published with Release, and only read after an Acquire load of it found it
// non-zero; the offset itself is only accessed atomically.
unsafe impl Sync for Published {}

impl Published {
    /// Unpublished.
    pub const fn new() -> Self {
        Published(UnsafeCell::new(Desc {
            rseq_off: 0,
            count: 0,
            word: [0; NUM_CLASSES],
            cap: [0; NUM_CLASSES],
        }))
    }

    fn off(&self) -> &AtomicI64 {
        // SAFETY: the field is an aligned i64 that lives as long as `self`, and
        // is only ever accessed through this atomic view.
        unsafe { AtomicI64::from_ptr(core::ptr::addr_of_mut!((*self.0.get()).rseq_off)) }
    }

    /// Copies `d` in and publishes it.
    ///
    /// # Safety
    /// Called at most once, before any [`Published::get`] can see a non-zero
    /// offset; `d.rseq_off` is not 0.
    pub unsafe fn publish(&self, d: &Desc) {
        assert!(
            d.rseq_off != 0,
            "tieralloc: rseq offset 0 cannot be published"
        );
        let p = self.0.get();
        // SAFETY: nobody reads these fields before the Release store below
        // makes the offset non-zero (the caller's promise).
        unsafe {
            core::ptr::addr_of_mut!((*p).count).write(d.count);
            core::ptr::addr_of_mut!((*p).word).write(d.word);
            core::ptr::addr_of_mut!((*p).cap).write(d.cap);
        }
        self.off().store(d.rseq_off, Ordering::Release);
    }

    /// The descriptor and its rseq offset; the offset is 0 if not published
    /// (and then the descriptor must not be used).
    #[inline(always)]
    pub fn get(&self) -> (*const Desc, i64) {
        (self.0.get(), self.off().load(Ordering::Acquire))
    }
}

impl Default for Published {
    fn default() -> Self {
        Self::new()
    }
}

/// Bytes between consecutive CPU caches (a constant of the layout, so the
/// sections multiply by an immediate).
pub const STRIDE: usize = core::mem::size_of::<crate::cache::CpuCache>();

// Field offsets used by the assembly below (checked at compile time).
const D_COUNT: usize = 8;
const D_WORD: usize = 16;
const D_CAP: usize = D_WORD + 8 * NUM_CLASSES;
const _: () = {
    assert!(core::mem::offset_of!(Desc, rseq_off) == 0);
    assert!(core::mem::offset_of!(Desc, count) == D_COUNT);
    assert!(core::mem::offset_of!(Desc, word) == D_WORD);
    assert!(core::mem::offset_of!(Desc, cap) == D_CAP);
    // `imul r64, r64, imm32`.
    assert!(STRIDE < i32::MAX as usize);
};

/// The start of every section that works on one word of the current CPU's
/// cache: label 2 arms the section (points the rseq area's `rseq_cs` at
/// descriptor 3), label 4 starts it — reads `cpu_id`, fails to label 5 if it
/// is out of range, and leaves in `{t}` the address of the word in this CPU's
/// cache, CPU 0's being `$word` (an operand string: a class's `word` entry, or
/// entry 0 — the cache itself — for the word sections, which add a field
/// offset). Operands: `{off}` (`__rseq_offset`), `{d}` (the [`Desc`]), scratch
/// `{t}` and `{w}`, and the constants `{cpu}`, `{count}`, `{stride}`, `{word}`.
macro_rules! rseq_enter {
    ($word:literal) => {
        concat!(
            "2:\n",
            "lea {w}, [rip + 3f]\n",
            "mov qword ptr fs:[{off} + 8], {w}\n",
            "4:\n",
            "mov {t:e}, dword ptr fs:[{off} + {cpu}]\n",
            "cmp {t:e}, dword ptr [{d} + {count}]\n",
            "jae 5f\n",
            "imul {t}, {t}, {stride}\n",
            "add {t}, qword ptr ",
            $word,
            "\n"
        )
    };
}

/// One section of the common shape, as `asm!`: [`rseq_enter!`] (the current
/// CPU's word address in `{t}`; `$word` as there), the body up to its commit
/// store, label 6, [`rseq_cold!`], the failure exit (at label 5),
/// [`rseq_end!`]; then the section's own operands and those every such section
/// uses: the descriptor `d`, the rseq area offset `off` (the caller's
/// variables, named first), scratch registers `t` and `w`, and the layout
/// constants.
macro_rules! rseq_section {
    ($d:ident, $off:ident, $word:literal; [$($body:tt)*]; fail: [$($fail:tt)*]; $($ops:tt)*) => {
        asm!(
            rseq_enter!($word),
            $($body)*
            "6:",
            rseq_cold!(),
            $($fail)*
            rseq_end!(),
            $($ops)*
            d = in(reg) $d,
            off = in(reg) $off,
            t = out(reg) _,
            w = out(reg) _,
            cpu = const RSEQ_CPU_ID,
            count = const D_COUNT,
            stride = const STRIDE,
            word = const D_WORD,
            options(nostack),
        )
    };
}
/// Opens the out-of-line part of a section (its own text section, off the hot
/// path): the abort handler, preceded by the signature. The kernel checks
/// that the 4 bytes before `abort_ip` (label 7) are `RSEQ_SIG` and has cleared
/// `rseq_cs`, so the handler re-arms and restarts from label 2. The caller
/// adds its failure exit (label 5) and closes with [`rseq_end!`].
macro_rules! rseq_cold {
    () => {
        concat!(
            ".pushsection .text.unlikely.tieralloc_rseq, \"ax\", @progbits\n",
            ".long 0x53053053\n",
            "7:\n",
            "jmp 2b\n",
            "5:\n"
        )
    };
}

/// Closes the out-of-line part and emits the section's descriptor in
/// `__rseq_cs`: `{ version 0, flags 0, start_ip (label 4), post_commit_offset
/// (label 6 − label 4), abort_ip (label 7) }`, 32-byte aligned as the kernel
/// requires; label 3 names it.
macro_rules! rseq_end {
    () => {
        concat!(
            ".popsection\n",
            ".pushsection __rseq_cs, \"aw\"\n",
            ".balign 32\n",
            "3:\n",
            ".long 0, 0\n",
            ".quad 4b, 6b - 4b, 7b\n",
            ".popsection\n"
        )
    };
}

const _: () = assert!(
    RSEQ_SIG == 0x5305_3053,
    "keep rseq_cold! in step with RSEQ_SIG"
);

// The sections below share one shape:
//   2: arm   — point the rseq area's rseq_cs at this section's descriptor (label 3)
//   4: start — read cpu_id, bounds-check it, find the class's stack word
//      ...   — compute; writes only to free slots, which nobody reads yet
//      commit — one store of the class's stack word
//   6: end of the critical section (post-commit); success falls through
//   out of line: RSEQ_SIG, 7: abort handler (re-arm: jump to 2),
//                5: failure exit (stack empty/full/stopped, CPU out of range)
// A stopped stack word (length ≥ STOP) fails both the "empty" test of a pop
// (length − 1 ≥ cap) and the "full" test of a push (length ≥ cap).

/// Pops the top object of class `c`'s stack on the current CPU, counting one
/// malloc in the same store (stack word: length in the low 16 bits, mallocs
/// above). Null if the stack is empty or the CPU's cache is stopped.
///
/// # Safety
/// `d` describes live slabs, `off` is its `rseq_off`, `c` is below
/// `NUM_CLASSES`, and the calling thread has a registered rseq area at `off`
/// (glibc's, checked by [`available`]).
#[inline(always)]
pub unsafe fn pop(d: *const Desc, off: i64, c: usize) -> *mut u8 {
    let p: usize;
    // SAFETY: the caller vouches for the descriptor, the class and the rseq
    // area; the section only reads the slabs, and writes one stack word of the
    // current CPU's cache as its commit.
    unsafe {
        rseq_section!(
            d, off, "[{d} + {c} * 8 + {word}]";
            [
                "mov {w}, qword ptr [{t}]",
                "movzx {p:e}, {w:x}",
                "dec {p:e}",
                "cmp {p:e}, dword ptr [{d} + {c} * 4 + {cap}]",
                "jae 5f",
                "mov {p}, qword ptr [{t} + {p} * 8 + 8]",
                "add {w}, 0xffff",
                "mov qword ptr [{t}], {w}",
            ];
            fail: [
                "xor {p:e}, {p:e}",
                "jmp 6b",
            ];
            c = in(reg) c,
            p = out(reg) p,
            cap = const D_CAP,
        );
    }
    p as *mut u8
}

/// Pushes `obj` on the class's stack on the current CPU. False if the stack is
/// full or the CPU's cache is stopped.
///
/// # Safety
/// As [`pop`].
#[inline(always)]
pub unsafe fn push(d: *const Desc, off: i64, c: usize, obj: *mut u8) -> bool {
    // SAFETY: as in `pop`; the slot write above the stack length is invisible
    // until the commit store. The failure exit jumps straight to the caller's
    // slow path (the `label` operand).
    unsafe {
        rseq_section!(
            d, off, "[{d} + {c} * 8 + {word}]";
            [
                "mov {w}, qword ptr [{t}]",
                "movzx {n:e}, {w:x}",
                "cmp {n:e}, dword ptr [{d} + {c} * 4 + {cap}]",
                "jae 5f",
                "mov qword ptr [{t} + {n} * 8 + 8], {obj}",
                "inc {w}",
                "mov qword ptr [{t}], {w}",
            ];
            fail: [
                "jmp {fail}",
            ];
            c = in(reg) c,
            obj = in(reg) obj,
            n = out(reg) _,
            cap = const D_CAP,
            fail = label { return false; },
        );
    }
    true
}

/// Pushes up to `n` objects from `src` onto the class's stack on the current
/// CPU (as many as fit); returns how many. Counts no malloc.
///
/// # Safety
/// As [`pop`]; `src` points to `n` readable pointers.
#[inline]
pub unsafe fn push_batch(
    d: *const Desc,
    off: i64,
    c: usize,
    src: *const *mut u8,
    n: usize,
) -> usize {
    let k: usize;
    // SAFETY: as in `push`: slots above the length are written first, then one
    // commit store publishes them.
    unsafe {
        rseq_section!(
            d, off, "[{d} + {c} * 8 + {word}]";
            [
                "mov {w}, qword ptr [{t}]",
                "movzx {i:e}, {w:x}",
                "mov {k:e}, dword ptr [{d} + {c} * 4 + {cap}]",
                "sub {k}, {i}",
                "jbe 5f",
                "cmp {k}, {n}",
                "cmova {k}, {n}",
                "test {k}, {k}",
                "jz 5f",
                "lea {x}, [{t} + {i} * 8 + 8]",
                "xor {i:e}, {i:e}",
                "9:",
                "mov {y}, qword ptr [{src} + {i} * 8]",
                "mov qword ptr [{x} + {i} * 8], {y}",
                "inc {i}",
                "cmp {i}, {k}",
                "jb 9b",
                "add {w}, {k}",
                "mov qword ptr [{t}], {w}",
            ];
            fail: [
                "xor {k:e}, {k:e}",
                "jmp 6b",
            ];
            c = in(reg) c,
            src = in(reg) src,
            n = in(reg) n,
            i = out(reg) _,
            k = out(reg) k,
            x = out(reg) _,
            y = out(reg) _,
            cap = const D_CAP,
        );
    }
    k
}

/// Pops up to `n` objects from the top of the class's stack on the current CPU
/// into `dst`; returns how many. Counts no malloc.
///
/// # Safety
/// As [`pop`]; `dst` points to room for `n` pointers.
#[inline]
pub unsafe fn pop_batch(d: *const Desc, off: i64, c: usize, dst: *mut *mut u8, n: usize) -> usize {
    let k: usize;
    // SAFETY: as in `pop`: copying out is a read; the commit store shortens the stack.
    // If the section restarts, `dst` is simply written again.
    unsafe {
        rseq_section!(
            d, off, "[{d} + {c} * 8 + {word}]";
            [
                "mov {w}, qword ptr [{t}]",
                "movzx {k:e}, {w:x}",
                "cmp {k:e}, dword ptr [{d} + {c} * 4 + {cap}]",
                "ja 5f",
                "cmp {k}, {n}",
                "cmova {k}, {n}",
                "test {k}, {k}",
                "jz 5f",
                "sub {w}, {k}",
                "movzx {x:e}, {w:x}",
                "lea {x}, [{t} + {x} * 8 + 8]",
                "xor {i:e}, {i:e}",
                "9:",
                "mov {y}, qword ptr [{x} + {i} * 8]",
                "mov qword ptr [{dst} + {i} * 8], {y}",
                "inc {i}",
                "cmp {i}, {k}",
                "jb 9b",
                "mov qword ptr [{t}], {w}",
            ];
            fail: [
                "xor {k:e}, {k:e}",
                "jmp 6b",
            ];
            c = in(reg) c,
            dst = in(reg) dst,
            n = in(reg) n,
            i = out(reg) _,
            k = out(reg) k,
            x = out(reg) _,
            y = out(reg) _,
            cap = const D_CAP,
        );
    }
    k
}

/// Reads the word at byte offset `field` of the current CPU's cache; returns
/// the CPU index and the value (`None` if the CPU is out of range).
///
/// # Safety
/// As [`pop`]; `field` is the offset of an aligned `u64` inside a cache.
#[inline(always)]
pub unsafe fn load(d: *const Desc, off: i64, field: usize) -> Option<(usize, u64)> {
    let cpu: usize;
    let v: u64;
    let ok: u32;
    // SAFETY: as in `pop`; the section has no commit (it only reads the cache),
    // and is a restartable section only so that cpu and value belong together.
    // Arming it writes the rseq area's `rseq_cs`, so it is not `readonly`.
    unsafe {
        asm!(
            "2:",
            "lea {w}, [rip + 3f]",
            "mov qword ptr fs:[{off} + 8], {w}",
            "4:",
            "mov {c:e}, dword ptr fs:[{off} + {cpu}]",
            "cmp {c:e}, dword ptr [{d} + {count}]",
            "jae 5f",
            "imul {t}, {c}, {stride}",
            "add {t}, qword ptr [{d} + {word}]",
            "mov {v}, qword ptr [{t} + {f}]",
            "mov {ok:e}, 1",
            "6:",
            rseq_cold!(),
            "xor {ok:e}, {ok:e}",
            "jmp 6b",
            rseq_end!(),
            d = in(reg) d,
            off = in(reg) off,
            f = in(reg) field,
            t = out(reg) _,
            w = out(reg) _,
            c = out(reg) cpu,
            v = out(reg) v,
            ok = out(reg) ok,
            cpu = const RSEQ_CPU_ID,
            count = const D_COUNT,
            stride = const STRIDE,
            word = const D_WORD,
            options(nostack),
        );
    }
    if ok != 0 {
        Some((cpu, v))
    } else {
        None
    }
}

/// Stores `new` into the word at byte offset `field` of CPU `cpu`'s cache if
/// the thread still runs on `cpu` and the word still holds `expected`
/// (librseq's `cmpeqv_storev`). Returns whether it stored.
///
/// # Safety
/// As [`load`].
#[inline(always)]
pub unsafe fn store_if(
    d: *const Desc,
    off: i64,
    cpu: usize,
    field: usize,
    expected: u64,
    new: u64,
) -> bool {
    // SAFETY: as in `pop`; the single store is the commit.
    unsafe {
        asm!(
            "2:",
            "lea {w}, [rip + 3f]",
            "mov qword ptr fs:[{off} + 8], {w}",
            "4:",
            "mov {w:e}, dword ptr fs:[{off} + {cpuf}]",
            "cmp {w}, {c}",
            "jne 5f",
            "imul {t}, {c}, {stride}",
            "add {t}, qword ptr [{d} + {word}]",
            "cmp qword ptr [{t} + {f}], {e}",
            "jne 5f",
            "mov qword ptr [{t} + {f}], {n}",
            "6:",
            rseq_cold!(),
            "jmp {fail}",
            rseq_end!(),
            d = in(reg) d,
            off = in(reg) off,
            c = in(reg) cpu,
            f = in(reg) field,
            e = in(reg) expected,
            n = in(reg) new,
            t = out(reg) _,
            w = out(reg) _,
            cpuf = const RSEQ_CPU_ID,
            stride = const STRIDE,
            word = const D_WORD,
            fail = label { return false; },
            options(nostack),
        );
    }
    true
}

/// Adds `delta` to the word at byte offset `field` of the current CPU's cache
/// (the store is the commit). False if the CPU is out of range.
///
/// # Safety
/// As [`load`].
#[inline(always)]
pub unsafe fn add(d: *const Desc, off: i64, field: usize, delta: u64) -> bool {
    // SAFETY: as in `pop`; the single store is the commit.
    unsafe {
        rseq_section!(
            d, off, "[{d} + {word}]";
            [
                "mov {w}, qword ptr [{t} + {f}]",
                "add {w}, {delta}",
                "mov qword ptr [{t} + {f}], {w}",
            ];
            fail: [
                "jmp {fail}",
            ];
            f = in(reg) field,
            delta = in(reg) delta,
            fail = label { return false; },
        );
    }
    true
}

/// Carves `size` bytes at alignment `amask + 1` from the current CPU's tiny
/// block (the tiny word at byte offset `field`, packed as
/// [`crate::cache::Tiny`]): bumps its offset and sub-object count with one
/// commit store. Null if there is no block, it has no room (a stopped word
/// never has), or the CPU is out of range.
///
/// # Safety
/// As [`load`]; `field` is the tiny word's offset, `amask + 1` a power of two.
#[inline(always)]
pub unsafe fn carve(d: *const Desc, off: i64, field: usize, size: usize, amask: usize) -> *mut u8 {
    let p: usize;
    // SAFETY: as in `pop`; the single store of the new tiny word is the commit.
    unsafe {
        rseq_section!(
            d, off, "[{d} + {word}]";
            [
                "mov {w}, qword ptr [{t} + {f}]",
                // off = ((w >> 48) & FIELD_MASK) rounded up to the alignment; end = off + size
                "mov {o}, {w}",
                "shr {o}, 48",
                "and {o:e}, {fmask}",
                "add {o}, {amask}",
                "mov {x}, {amask}",
                "not {x}",
                "and {o}, {x}",
                "lea {x}, [{o} + {size}]",
                "cmp {x}, {tiny}",
                "ja 5f",
                // block = sign-extended low 48 bits; none → fail
                "mov {p}, {w}",
                "shl {p}, 16",
                "jz 5f",
                "sar {p}, 16",
                // new = (w & (2^48 - 1)) | end << 48 | (n + 1) << 56
                "shl {x}, 48",
                "shr {w}, 56",
                "inc {w}",
                "shl {w}, 56",
                "or {w}, {x}",
                "mov {x}, {p}",
                "shl {x}, 16",
                "shr {x}, 16",
                "or {w}, {x}",
                "add {p}, {o}",
                "mov qword ptr [{t} + {f}], {w}",
            ];
            fail: [
                "xor {p:e}, {p:e}",
                "jmp 6b",
            ];
            f = in(reg) field,
            size = in(reg) size,
            amask = in(reg) amask,
            o = out(reg) _,
            x = out(reg) _,
            p = out(reg) p,
            tiny = const crate::TINY_BLOCK,
            fmask = const crate::cache::Tiny::FIELD_MASK,
        );
    }
    p as *mut u8
}

// ------------------------------------------------------------------ set-up

/// Where rseq stands for this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Availability {
    /// glibc registered an area for every thread; here is its thread-pointer offset.
    Glibc(i64),
    /// No usable area (glibc < 2.35, rseq disabled by tunable or seccomp, old kernel).
    Unavailable,
}

const UNKNOWN: u8 = 0;
const PROBING: u8 = 1;
const YES: u8 = 2;
const NO: u8 = 3;
static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);
static OFFSET: core::sync::atomic::AtomicI64 = core::sync::atomic::AtomicI64::new(0);

/// Finds glibc's rseq area, once. While the probe runs (it calls `dlsym`, which
/// may allocate and so re-enter the heap), callers get `Unavailable` and use
/// the locked path.
pub fn available() -> Availability {
    match STATE.load(Ordering::Acquire) {
        YES => return Availability::Glibc(OFFSET.load(Ordering::Relaxed)),
        NO | PROBING => return Availability::Unavailable,
        _ => {}
    }
    if STATE
        .compare_exchange(UNKNOWN, PROBING, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return available_after_race();
    }
    let found = probe();
    if let Some(off) = found {
        OFFSET.store(off, Ordering::Relaxed);
        STATE.store(YES, Ordering::Release);
        Availability::Glibc(off)
    } else {
        STATE.store(NO, Ordering::Release);
        Availability::Unavailable
    }
}

fn available_after_race() -> Availability {
    match STATE.load(Ordering::Acquire) {
        YES => Availability::Glibc(OFFSET.load(Ordering::Relaxed)),
        _ => Availability::Unavailable,
    }
}

/// Forces the locked path for the rest of the process (tests, and a knob for
/// users who distrust rseq). Returns false if rseq was already in use.
pub fn disable() -> bool {
    STATE
        .compare_exchange(UNKNOWN, NO, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
        || STATE.load(Ordering::Acquire) == NO
}

fn probe() -> Option<i64> {
    if std::env::var_os("TIERALLOC_NO_RSEQ").is_some() {
        return None;
    }
    // SAFETY: dlsym with a NUL-terminated name; the symbols, when present, are
    // glibc's `ptrdiff_t __rseq_offset` and `unsigned int __rseq_size`.
    let (off, size) = unsafe {
        let off = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr());
        let size = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr());
        if off.is_null() || size.is_null() {
            return None;
        }
        (*(off as *const isize) as i64, *(size as *const u32))
    };
    // glibc reports the area's feature size: 32 in 2.35, 20 (the original
    // fields: cpu_id_start, cpu_id, rseq_cs, flags) where the fix for the
    // extensible-rseq ABI is applied. We need the first three fields.
    if size < 20 {
        return None;
    }
    // The area is inside the thread's control block, never at the thread
    // pointer itself ([`Published`] relies on it: 0 means unpublished).
    if off == 0 {
        return None;
    }
    // The area must be live for this thread: cpu_id is set (not -1/-2).
    // SAFETY: glibc's area is at fs:[off] for every thread, at least 32 bytes.
    let cpu = unsafe { cpu_id(off) };
    if (cpu as i32) < 0 {
        return None;
    }
    // Drains of idle CPUs need the expedited-rseq membarrier; register for it.
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ,
            0,
            0,
        )
    };
    MEMBARRIER_OK.store(r == 0, Ordering::Relaxed);
    Some(off)
}

const MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ: libc::c_int = 1 << 7;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ: libc::c_int = 1 << 8;
const MEMBARRIER_CMD_FLAG_CPU: libc::c_int = 1 << 0;
static MEMBARRIER_OK: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Restarts any critical section in flight on `cpu` (so it sees a `stop` word
/// set before this call). False if the kernel cannot do it.
pub fn fence_cpu(cpu: usize) -> bool {
    if !MEMBARRIER_OK.load(Ordering::Relaxed) {
        return false;
    }
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ,
            MEMBARRIER_CMD_FLAG_CPU,
            cpu as libc::c_int,
        )
    };
    r == 0
}

/// The calling thread's CPU, from the rseq area at thread-pointer offset `off`
/// (a hint: the thread may move right after).
///
/// # Safety
/// `off` is the offset of a registered rseq area (as [`load`]).
#[inline(always)]
pub unsafe fn cpu_id(off: i64) -> u32 {
    let cpu: u32;
    // SAFETY: the caller's area is mapped for every thread; a plain read.
    unsafe {
        asm!("mov {c:e}, dword ptr fs:[{o} + {cpu}]", o = in(reg) off, cpu = const RSEQ_CPU_ID, c = out(reg) cpu, options(nostack, readonly, preserves_flags));
    }
    cpu
}

/// The calling thread's CPU according to rseq, if available.
pub fn current_cpu() -> Option<usize> {
    match available() {
        // SAFETY: glibc's registered area.
        Availability::Glibc(off) => Some(unsafe { cpu_id(off) } as usize),
        Availability::Unavailable => None,
    }
}
