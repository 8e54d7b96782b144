//! Restartable sequences: per-CPU cache operations without atomics on Linux
//! x86-64 (tcmalloc's per-CPU slabs). See `lib.rs` for the overview,
//! [`super`] for the tier, [`super::cache`] for the layout and
//! [`super::word`] for the formats the sections decode.
//!
//! Each operation is a short critical section that reads the CPU id from the
//! thread's rseq area, finds that CPU's cache, and commits with **one plain
//! store** (a class's stack word: length and malloc count packed together). If
//! the thread is preempted, migrated or signalled inside the section, the kernel
//! moves it to the abort handler, which starts the whole section again on
//! whatever CPU it now runs: nothing before the commit is visible, so a restart
//! is always safe.
//!
//! **The area.** Where glibc registered one (glibc ≥ 2.35 registers every
//! thread), we use it: the loader exports `__rseq_offset` (the area's offset
//! from the thread pointer) and `__rseq_size` (0 when glibc did not register).
//! Where it did not (glibc < 2.35, its tunable `glibc.pthread.rseq=0`), we
//! register an **area of our own**: a `struct rseq` in the static TLS block
//! of the module the crate is linked into, addressed with the initial-exec
//! model, so that it lies at one thread-pointer offset in every thread (the
//! loader places such a block at start-up, or in its reserve for `dlopen`,
//! and refuses to load the module otherwise). Its `cpu_id` starts as −1 in
//! every thread, so a thread that has not registered yet finds the guard
//! ([`GUARD_CPUS`]) and takes a slow path, which registers it
//! ([`Fast::enroll`]); if the kernel refuses, the area says −2 for good and
//! the thread keeps to the slow paths. Without either (old kernels, seccomp
//! filters) the heap uses the locked per-CPU path.
//!
//! **Stopping a CPU.** A drain from another CPU needs the cache to itself
//! ([`Fast::exclusive`]). It sets the [`STOP`](StackWord::STOP) bit in the length field of every stack
//! word of that cache (and a stop mark in its tiny word), then issues
//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ)` so that every section in
//! flight on that CPU restarts, and checks that the marks are still there (a
//! section that read a word before the mark and committed after it overwrites
//! the mark; then it marks and fences again). A marked length is at least
//! `STOP`, above every capacity, so a pop sees it as "nothing to pop" and a push
//! as "full": the sections need no separate stop check.

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;

use crate::sizeclass::{Geometry, SizeClass, NUM_CLASSES};
use crate::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicUsize, Ordering};
use crate::units::Owner;

use super::cache::{counter_field, word_field, CpuCache, TinyEvent, STRIDE, TINY_FIELD};
use super::word::{StackWord, Tiny};
use super::{SIZE_STEP, SIZE_STEPS};

/// The signature glibc registers its area with, and we ours; it must precede
/// each abort handler.
pub(crate) const RSEQ_SIG: u32 = 0x5305_3053;

/// Offsets in the kernel's `struct rseq`.
const RSEQ_CPU_ID: usize = 4;

/// The CPU ids below 0 that a thread's area can hold: −1 before the kernel
/// registered it (`RSEQ_CPU_ID_UNINITIALIZED`), −2 when the
/// registration failed (`RSEQ_CPU_ID_REGISTRATION_FAILED`). The caches
/// published for the sections are preceded by that many zeroed caches,
/// the **guard**, which the fast paths' pop and push find for those ids
/// instead of testing the id: a zero stack word is empty for a pop and a
/// zero limit full for a push, so both fail before they write anything.
pub(crate) const GUARD_CPUS: usize = 2;

/// Bytes of the guard below CPU 0's cache ([`GUARD_CPUS`] caches).
pub(crate) const GUARD_BYTES: usize = GUARD_CPUS * STRIDE;

/// The slabs as the critical sections see them. Per-class fields are arrays
/// indexed by the class, so that a section addresses them with the class
/// index scaled in the operand; index 0 (class 0 has no stack) has `word` =
/// CPU 0's cache itself, and the word sections ([`load`], [`store_if`],
/// [`add`], [`carve`]) use it. A stack's capacity is not here: it is the
/// CPU's own limit word right before the stack word (`super::limit`), which
/// a push compares the length against.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
struct Desc {
    /// `__rseq_offset`: the rseq area's offset from the thread pointer.
    rseq_off: i64,
    /// Number of CPU caches; a CPU id at or above it fails the sections
    /// other than [`pop`], [`push`] and [`push_owned`], which need no test:
    /// the kernel never reports an id at or above it
    /// ([`Sections::publish`]), and a negative one finds the guard
    /// ([`GUARD_CPUS`]).
    count: u32,
    /// Per class, the address of its stack word in CPU 0's cache; the stack's
    /// slots follow the word (slot `i` at `word + 8 + 8 i`), its limit word
    /// precedes it (the limit in its low 32 bits, at `word - 8`), and CPU
    /// `k`'s word is [`STRIDE`] · `k` bytes further.
    word: [u64; NUM_CLASSES],
    /// Per step of [`SIZE_STEP`] bytes, `i` for the sizes up to
    /// `SIZE_STEP · (i + 1)`: the `word` entry of the class that serves them,
    /// so that the C `malloc` goes from its size to the stack word with one
    /// load ([`Fast::pop_step`]).
    by_step: [u64; SIZE_STEPS],
}

/// The restartable sequences of one heap: a [`Desc`] kept in place — inside
/// the heap, so that the fast paths address it from the heap's own address
/// instead of loading a pointer first — and published once. Its `rseq_off`,
/// 0 until then, is stored last (Release) and read first (Acquire): 0 can
/// never be glibc's offset (the word at the thread pointer is the TCB's self
/// pointer, see [`available`]), so it doubles as the "not set up, or locked
/// mode" test.
pub(crate) struct Sections(UnsafeCell<Desc>);

// SAFETY: the fields other than the offset are written once, before the offset
// is published with Release, and only read after an Acquire load of it found it
// non-zero; the offset itself is only accessed atomically.
unsafe impl Sync for Sections {}

impl Sections {
    /// Unpublished: every [`Sections::get`] is `None`.
    pub(crate) const fn new() -> Self {
        Sections(UnsafeCell::new(Desc {
            rseq_off: 0,
            count: 0,
            word: [0; NUM_CLASSES],
            by_step: [0; SIZE_STEPS],
        }))
    }

    fn off(&self) -> &AtomicI64 {
        // SAFETY: the field is an aligned i64 that lives as long as `self`, and
        // is only ever accessed through this atomic view.
        unsafe { AtomicI64::from_ptr(core::ptr::addr_of_mut!((*self.0.get()).rseq_off)) }
    }

    /// The rseq area's offset, glibc's or our own, if this process can use
    /// restartable sequences (see [`available`]).
    pub(crate) fn available() -> Option<i64> {
        match available() {
            Availability::Glibc(off) | Availability::Own(off) => Some(off),
            Availability::Unavailable => None,
        }
    }

    /// Describes the `count` caches at `caches`, whose heap's classes are
    /// `g`'s, and publishes the description: from then on every per-CPU
    /// operation of the heap commits with a section at `rseq_off` (the
    /// area [`available`] found). Returns whether it did (always, where the sections are
    /// compiled in).
    ///
    /// # Safety
    /// Called at most once; `caches` points to `count` zeroed caches that
    /// live for ever, right after [`GUARD_BYTES`] zeroed bytes that live for
    /// ever and that nothing writes (the guard); `count` is above every CPU
    /// id the kernel reports (the possible CPUs); `rseq_off` is the offset
    /// [`available`] found (so not 0).
    pub(crate) unsafe fn publish(
        &self,
        caches: *mut u8,
        count: usize,
        rseq_off: i64,
        g: &Geometry,
    ) -> bool {
        assert!(
            rseq_off != 0,
            "tieralloc: rseq offset 0 cannot be published"
        );
        let p = self.0.get();
        let base = caches as u64;
        let word: [u64; NUM_CLASSES] = core::array::from_fn(|i| {
            // Class 0 has no stack: its entry is the cache itself.
            base + match SizeClass::new(i) {
                Some(c) if !c.is_large() => word_field(c) as u64,
                _ => 0,
            }
        });
        let by_step =
            core::array::from_fn(|i| word[g.size_to_class_small(SIZE_STEP * (i + 1) - 1).index()]);
        // SAFETY: nobody reads these fields before the Release store below
        // makes the offset non-zero (called once, before any `get` sees it).
        unsafe {
            core::ptr::addr_of_mut!((*p).count).write(count as u32);
            core::ptr::addr_of_mut!((*p).word).write(word);
            core::ptr::addr_of_mut!((*p).by_step).write(by_step);
        }
        self.off().store(rseq_off, Ordering::Release);
        true
    }

    /// The sections, read as settled: a plain load, so that repeated
    /// checks of the mode fold into one.
    ///
    /// # Safety
    /// The caller observed the caches published (an Acquire load that found
    /// them), which happens after [`Sections::publish`], if ever, and after
    /// which the descriptor never changes.
    #[inline(always)]
    pub(crate) unsafe fn get_settled(&self) -> Option<Fast> {
        // SAFETY: no write to the descriptor happens after the caches were
        // published, and that publication happened-before our observation
        // of it (the caller's promise): a plain read races with nothing.
        let off = unsafe { (*self.0.get()).rseq_off };
        if off != 0 {
            Some(Fast {
                d: self.0.get(),
                off,
            })
        } else {
            None
        }
    }

    /// The sections, known published: always `Some`, with no test (the
    /// `Option` is for the stand-in's sake, where there are none).
    ///
    /// # Safety
    /// The caller observed something that happened after
    /// [`Sections::publish`] (a Release store made after it, Acquire-loaded):
    /// the descriptor no longer changes.
    #[inline(always)]
    pub(crate) unsafe fn get_published(&self) -> Option<Fast> {
        // SAFETY: as in `get_settled`, by the caller's promise.
        let off = unsafe { (*self.0.get()).rseq_off };
        debug_assert!(off != 0);
        Some(Fast {
            d: self.0.get(),
            off,
        })
    }

    /// The sections, once published.
    #[inline(always)]
    pub(crate) fn get(&self) -> Option<Fast> {
        let off = self.off().load(Ordering::Acquire);
        if off != 0 {
            Some(Fast {
                d: self.0.get(),
                off,
            })
        } else {
            None
        }
    }
}

/// Published [`Sections`]: each method runs one section on the calling
/// thread's current CPU. Only [`Sections::get`] makes one, so holding it
/// proves the descriptor describes live caches and that every thread has an
/// rseq area at its offset (glibc's, registered, or our own, registered or
/// saying −1 or −2) — which is what every section needs.
#[derive(Clone, Copy)]
pub(crate) struct Fast {
    d: *const Desc,
    off: i64,
}

impl Fast {
    /// Pops an object of class `c`, counting a malloc; with it, whether
    /// that malloc is due a decay tick ([`StackWord::ticks`]). Null and true
    /// if the stack is empty or stopped (see [`super::Slabs::pop`]).
    #[inline(always)]
    pub(crate) fn pop(self, c: SizeClass) -> (*mut u8, bool) {
        // SAFETY: a `Fast` is a published descriptor (see the type); a class
        // index is below NUM_CLASSES.
        let (p, w) = unsafe { pop(self.d, self.off, c.index()) };
        (p, w.ticks())
    }

    /// [`Fast::pop`] for the C `malloc` of a size in step `i` (`1 +
    /// SIZE_STEP · i ..= SIZE_STEP · (i + 1)` bytes, `i <` [`SIZE_STEPS`]):
    /// of the class that serves those sizes, found from the step.
    #[inline(always)]
    pub(crate) fn pop_step(self, i: usize) -> (*mut u8, bool) {
        assert!(i < SIZE_STEPS);
        // SAFETY: a `Fast` is a published descriptor (see the type); entry
        // `i` of `by_step`, in bounds, is a class's `word` entry.
        let (p, w) = unsafe { pop_step(self.d, self.off, i) };
        (p, w.ticks())
    }

    /// Pushes `p` on class `c`'s stack; false if it is full or stopped.
    #[inline(always)]
    pub(crate) fn push(self, c: SizeClass, p: *mut u8) -> bool {
        // SAFETY: as in `pop`.
        unsafe { push(self.d, self.off, c.index(), p) }
    }

    /// [`Fast::push`] of an object whose span `owner` names the CPU whose
    /// cache may take it (the classes under a line): `None`, having pushed
    /// nothing, if the current CPU is another ([`Owner::is_not_cpu`]);
    /// `Some(false)` if the stack is full or stopped. The owner is compared
    /// with the CPU id inside the section, so the answer holds for the CPU
    /// the push commits on (a thread that moves restarts it).
    #[inline(always)]
    pub(crate) fn push_owned(self, c: SizeClass, p: *mut u8, owner: Owner) -> Option<bool> {
        // SAFETY: as in `pop`.
        unsafe { push_owned(self.d, self.off, c.index(), p, owner.bits()) }
    }

    /// Pushes as many of `objs` as fit; returns how many.
    #[inline]
    pub(crate) fn push_batch(self, c: SizeClass, objs: &[*mut u8]) -> usize {
        // SAFETY: as in `pop`; `objs` is a valid slice.
        unsafe { push_batch(self.d, self.off, c.index(), objs.as_ptr(), objs.len()) }
    }

    /// Pops up to `out.len()` objects; returns how many.
    #[inline]
    pub(crate) fn pop_batch(self, c: SizeClass, out: &mut [*mut u8]) -> usize {
        // SAFETY: as in `pop`; `out` is a valid slice.
        unsafe { pop_batch(self.d, self.off, c.index(), out.as_mut_ptr(), out.len()) }
    }

    /// Moves class `c`'s stack in `cache`, the current CPU's, to its grown
    /// slots, if it is empty and still where it started; whether it moved
    /// (`super::limit`). Fails if the thread runs elsewhere now.
    pub(crate) fn relocate(self, cache: &CpuCache<'_>, c: SizeClass) -> bool {
        let Some(to) = cache.grown_slots(c) else {
            return false;
        };
        // SAFETY: as in `pop`; `to` is the grown stack of the cache whose
        // starting stack is `from`, and the section moves only that one.
        unsafe { relocate(self.d, self.off, c.index(), cache.start_slots(c), to) }
    }

    /// Carves `size` bytes at alignment `a` (a power of two) from the tiny
    /// block; null if there is none, it has no room or it is stopped.
    #[inline(always)]
    pub(crate) fn carve(self, size: usize, a: usize) -> *mut u8 {
        // SAFETY: as in `pop`; TINY_FIELD is the caches' tiny word.
        unsafe { carve(self.d, self.off, TINY_FIELD, size, a - 1) }
    }

    /// The current CPU's index and tiny state (`None` if the CPU is out of range).
    #[inline(always)]
    pub(crate) fn tiny(self) -> Option<(usize, Tiny)> {
        // SAFETY: as in `pop`; TINY_FIELD is a word of the cache.
        unsafe { load(self.d, self.off, TINY_FIELD) }.map(|(i, w)| (i, Tiny::unpack(w)))
    }

    /// Stores `new` as CPU `cpu`'s tiny state if the thread still runs there
    /// and the state still is `old`.
    #[inline(always)]
    pub(crate) fn replace_tiny(self, cpu: usize, old: Tiny, new: Tiny) -> bool {
        // SAFETY: as in `tiny`.
        unsafe { store_if(self.d, self.off, cpu, TINY_FIELD, old.pack(), new.pack()) }
    }

    /// Adds `delta` to counter `k` of the current CPU; false if out of range.
    #[inline(always)]
    pub(crate) fn add(self, k: TinyEvent, delta: u64) -> bool {
        // SAFETY: as in `tiny`; the counter is a word of the cache.
        unsafe { add(self.d, self.off, counter_field(k), delta) }
    }

    /// For a slow path: registers the calling thread's area if the heap
    /// uses the area of our own and the thread has not registered it yet
    /// (its `cpu_id` still −1), so that its next operations take the fast
    /// paths. One read of the area otherwise.
    #[inline(always)]
    pub(crate) fn enroll(self) {
        if self.cpu() == u32::MAX as usize {
            enroll_thread(self.off);
        }
    }

    /// The calling thread's CPU id (a hint: the thread may move right after;
    /// `u32::MAX` while the thread is not registered).
    #[inline(always)]
    pub(crate) fn cpu(self) -> usize {
        // SAFETY: every thread has an area at the offset (see the type).
        unsafe { cpu_id(self.off) as usize }
    }

    /// Runs `f` with cache `i` to itself, from any CPU. The caller holds
    /// slot `i` (so no other drain runs); sections on that CPU are stopped:
    /// mark, fence, check — a section that read a word before its mark and
    /// committed after it erased the mark; after the fence no section that
    /// started before it can commit, so marks that survive a fence stay.
    /// Re-mark what was erased and fence again, [`STOP_ATTEMPTS`] times at
    /// most. `None` if the kernel cannot fence (no expedited-rseq
    /// membarrier) or the CPU stays too busy.
    pub(crate) fn exclusive<R>(
        self,
        cache: &CpuCache<'_>,
        i: usize,
        f: impl FnOnce() -> R,
    ) -> Option<R> {
        for _ in 0..STOP_ATTEMPTS {
            mark_stopped(cache);
            if !fence_cpu(i) {
                break;
            }
            if all_stopped(cache) {
                let r = f();
                unmark_stopped(cache);
                return Some(r);
            }
        }
        unmark_stopped(cache);
        None
    }
}

/// Mark-and-fence rounds a drain tries before leaving a busy CPU's cache alone.
const STOP_ATTEMPTS: usize = 16;

/// Marks every stack word and the tiny word of `cache` stopped (before a
/// fence). Atomic read-modify-writes, but a section that read a word before
/// the mark may still overwrite it with one plain store: see [`all_stopped`].
fn mark_stopped(cache: &CpuCache<'_>) {
    for c in SizeClass::small_classes() {
        cache
            .stack_word(c)
            .fetch_or(StackWord::STOP, Ordering::SeqCst);
    }
    let _ = cache
        .tiny_word()
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
            let t = Tiny::unpack(w);
            (!t.stopped()).then_some(
                Tiny {
                    off: Tiny::STOPPED_OFF,
                    ..t
                }
                .pack(),
            )
        });
}

/// Whether every mark set by [`mark_stopped`] is still there.
fn all_stopped(cache: &CpuCache<'_>) -> bool {
    SizeClass::small_classes().all(|c| cache.word(c).is_stopped()) && cache.tiny().stopped()
}

/// Clears the marks. A tiny word still stopped (the drain did not take it)
/// becomes full: the next tiny allocation on that CPU retires the block,
/// losing only its unused bytes.
fn unmark_stopped(cache: &CpuCache<'_>) {
    for c in SizeClass::small_classes() {
        cache
            .stack_word(c)
            .fetch_and(!StackWord::STOP, Ordering::SeqCst);
    }
    let _ = cache
        .tiny_word()
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
            let t = Tiny::unpack(w);
            t.stopped().then_some(t.full().pack())
        });
}

// Field offsets used by the assembly below (checked at compile time).
const D_COUNT: usize = 8;
const D_WORD: usize = 16;
const D_BY_STEP: usize = D_WORD + 8 * NUM_CLASSES;
const _: () = {
    assert!(core::mem::offset_of!(Desc, rseq_off) == 0);
    assert!(core::mem::offset_of!(Desc, count) == D_COUNT);
    assert!(core::mem::offset_of!(Desc, word) == D_WORD);
    assert!(core::mem::offset_of!(Desc, by_step) == D_BY_STEP);
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
///
/// `any:` the same without the range test, for the sections of the fast
/// paths ([`pop`], [`push`], [`push_owned`]), whose first access to the
/// word fails them in the guard ([`GUARD_CPUS`]): `cpu_id` is read
/// sign-extended, so an unregistered thread's −1 or −2 finds the zeroed
/// caches below CPU 0's, and every other id is below `count`
/// ([`Sections::publish`]). No `{count}` operand.
///
/// `owned:` the `any:` form with the owner test of [`push_owned`] between
/// reading `cpu_id` and finding the cache: the id's low 16 bits against
/// `{owner}`'s, leaving the section uncommitted for the label operand
/// `{elsewhere}` if they differ.
macro_rules! rseq_enter {
    ($word:literal) => {
        concat!(
            rseq_arm!(),
            "mov {t:e}, dword ptr fs:[{off} + {cpu}]\n",
            "cmp {t:e}, dword ptr [{d} + {count}]\n",
            "jae 5f\n",
            rseq_cache!($word)
        )
    };
    (any: $word:literal) => {
        concat!(
            rseq_arm!(),
            "movsxd {t}, dword ptr fs:[{off} + {cpu}]\n",
            rseq_cache!($word)
        )
    };
    (owned: $word:literal) => {
        concat!(
            rseq_arm!(),
            "movsxd {t}, dword ptr fs:[{off} + {cpu}]\n",
            "cmp {t:x}, {owner:x}\n",
            "jne {elsewhere}\n",
            rseq_cache!($word)
        )
    };
}

/// Label 2 arms the section (the rseq area's `rseq_cs` at descriptor 3);
/// label 4 starts it. Shared by both forms of [`rseq_enter!`].
macro_rules! rseq_arm {
    () => {
        concat!(
            "2:\n",
            "lea {w}, [rip + 3f]\n",
            "mov qword ptr fs:[{off} + 8], {w}\n",
            "4:\n"
        )
    };
}

/// From the CPU index in `{t}` to its word: CPU 0's (`$word`) plus
/// [`STRIDE`] per CPU. Shared by both forms of [`rseq_enter!`].
macro_rules! rseq_cache {
    ($word:literal) => {
        concat!(
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
/// constants. A section that names a place after `$word` gets `w`'s last
/// value there (the word it committed, on success).
macro_rules! rseq_section {
    (any: $d:ident, $off:ident, $word:literal; [$($body:tt)*]; fail: [$($fail:tt)*]; $($ops:tt)*) => {
        rseq_section!(@asm [rseq_enter!(any: $word)], [], $d, $off, _; [$($body)*]; fail: [$($fail)*]; $($ops)*)
    };
    (owned: $d:ident, $off:ident, $word:literal; [$($body:tt)*]; fail: [$($fail:tt)*]; $($ops:tt)*) => {
        rseq_section!(@asm [rseq_enter!(owned: $word)], [], $d, $off, _; [$($body)*]; fail: [$($fail)*]; $($ops)*)
    };
    (any: $d:ident, $off:ident, $word:literal, $w:tt; [$($body:tt)*]; fail: [$($fail:tt)*]; $($ops:tt)*) => {
        rseq_section!(@asm [rseq_enter!(any: $word)], [], $d, $off, $w; [$($body)*]; fail: [$($fail)*]; $($ops)*)
    };
    ($d:ident, $off:ident, $word:literal; [$($body:tt)*]; fail: [$($fail:tt)*]; $($ops:tt)*) => {
        rseq_section!(@asm [rseq_enter!($word)], [count = const D_COUNT,], $d, $off, _; [$($body)*]; fail: [$($fail)*]; $($ops)*)
    };
    ($d:ident, $off:ident, $word:literal, $w:tt; [$($body:tt)*]; fail: [$($fail:tt)*]; $($ops:tt)*) => {
        rseq_section!(@asm [rseq_enter!($word)], [count = const D_COUNT,], $d, $off, $w; [$($body)*]; fail: [$($fail)*]; $($ops)*)
    };
    (@asm [$($enter:tt)*], [$($bound:tt)*], $d:ident, $off:ident, $w:tt; [$($body:tt)*]; fail: [$($fail:tt)*]; $($ops:tt)*) => {
        asm!(
            $($enter)*,
            $($body)*
            "6:",
            rseq_cold!(),
            $($fail)*
            rseq_end!(),
            $($ops)*
            d = in(reg) $d,
            off = in(reg) $off,
            t = out(reg) _,
            w = out(reg) $w,
            cpu = const RSEQ_CPU_ID,
            $($bound)*
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
// (the length field read signed, STOP its sign bit: length − 1 < 0) and the
// "full" test of a push (length ≥ limit, and every limit is below STOP). A
// pop does not test the limit: a stack whose limit was lowered below its
// length still pops. The slots are where the slots pointer (the word after
// the stack word) says: a stack that grew has moved (`super::limit`).
// The length field, STOP included, is read with one 16-bit `movzx` (a pop:
// `movsx`, STOP being the field's sign bit).
const _: () = assert!(
    StackWord::LEN_BITS == 16
        && StackWord::POPS_SHIFT == 16
        && StackWord::STOP == 1 << (StackWord::LEN_BITS - 1)
);

/// The pop section, its `word` entry at `$entry` (an operand string over
/// `{d}` and the caller's `$ops`, which name the entry's index).
macro_rules! pop_section {
    ($d:ident, $off:ident, $entry:literal; $($ops:tt)*) => {{
        let p: usize;
        let w: usize;
        rseq_section!(
            any: $d, $off, $entry, w;
            [
                "mov {w}, qword ptr [{t}]",
                "movsx {p:e}, {w:x}",
                "dec {p:e}",
                "js 5f",
                "mov {s}, qword ptr [{t} + 8]",
                "mov {p}, qword ptr [{s} + {p} * 8]",
                "add {w}, {pop}",
                "mov qword ptr [{t}], {w}",
            ];
            fail: [
                "xor {p:e}, {p:e}",
                "xor {w:e}, {w:e}",
                "jmp 6b",
            ];
            $($ops)*
            p = out(reg) p,
            s = out(reg) _,
            pop = const StackWord::POP_DELTA,
        );
        (p as *mut u8, StackWord(w))
    }};
}

/// Pops the top object of class `c`'s stack on the current CPU, counting one
/// malloc in the same store (stack word: length in the low 16 bits, mallocs
/// above). Null and a zero word if the stack is empty or the CPU's cache is
/// stopped (a word that [`StackWord::ticks`], so that the caller's one rare
/// test covers both); else the object and the stack word it committed.
///
/// # Safety
/// `d` describes live slabs, `off` is its `rseq_off`, `c` is below
/// `NUM_CLASSES`, and the calling thread has an rseq area at `off` (the one
/// [`available`] found), registered or saying −1 or −2.
#[inline(always)]
unsafe fn pop(d: *const Desc, off: i64, c: usize) -> (*mut u8, StackWord) {
    // SAFETY: the caller vouches for the descriptor, the class and the rseq
    // area; the section only reads the slabs, and writes one stack word of the
    // current CPU's cache as its commit.
    unsafe { pop_section!(d, off, "[{d} + {c} * 8 + {word}]"; c = in(reg) c,) }
}

/// [`pop`] of the class that serves step `i` of the sizes ([`Desc::by_step`]).
///
/// # Safety
/// As [`pop`], with `i <` [`SIZE_STEPS`] instead of a class.
#[inline(always)]
unsafe fn pop_step(d: *const Desc, off: i64, i: usize) -> (*mut u8, StackWord) {
    // SAFETY: as in `pop`: `by_step[i]` is a class's `word` entry.
    unsafe {
        pop_section!(d, off, "[{d} + {i} * 8 + {word} + {steps}]"; i = in(reg) i, steps = const D_BY_STEP - D_WORD,)
    }
}

/// The push section ([`push`], [`push_owned`]): `$enter` is the form of
/// [`rseq_enter!`], `$ops` the operands it and the failure exit (`{fail}`)
/// need besides the stack's.
macro_rules! push_section {
    ($enter:ident: $d:ident, $off:ident, $c:ident, $obj:ident; $($ops:tt)*) => {
        rseq_section!(
            $enter: $d, $off, "[{d} + {c} * 8 + {word}]";
            [
                "mov {w}, qword ptr [{t}]",
                "movzx {n:e}, {w:x}",
                "cmp {n:e}, dword ptr [{t} - 8]",
                "jae 5f",
                "mov {s}, qword ptr [{t} + 8]",
                "mov qword ptr [{s} + {n} * 8], {obj}",
                "add {w}, {push}",
                "mov qword ptr [{t}], {w}",
            ];
            fail: [
                "jmp {fail}",
            ];
            c = in(reg) $c,
            obj = in(reg) $obj,
            n = out(reg) _,
            s = out(reg) _,
            push = const StackWord::PUSH_DELTA,
            $($ops)*
        )
    };
}

/// Pushes `obj` on the class's stack on the current CPU. False if the stack is
/// full or the CPU's cache is stopped.
///
/// # Safety
/// As [`pop`].
#[inline(always)]
unsafe fn push(d: *const Desc, off: i64, c: usize, obj: *mut u8) -> bool {
    // SAFETY: as in `pop`; the slot write above the stack length is invisible
    // until the commit store. The failure exit jumps straight to the caller's
    // slow path (the `label` operand).
    unsafe { push_section!(any: d, off, c, obj; fail = label { return false; },) }
    true
}

/// [`push`] unless the current CPU's id differs from `owner` in its low 16
/// bits ([`Owner::is_not_cpu`]): `None` then, having written nothing;
/// `Some(false)` if the stack is full or the CPU's cache is stopped. An id of
/// the guard (−1, −2) that passes the compare finds a zero limit: full.
///
/// # Safety
/// As [`pop`].
#[inline(always)]
unsafe fn push_owned(d: *const Desc, off: i64, c: usize, obj: *mut u8, owner: u16) -> Option<bool> {
    // SAFETY: as in `push`; the owner test only reads, and leaves the
    // section (uncommitted) through a label of its own.
    unsafe {
        push_section!(owned: d, off, c, obj;
            owner = in(reg) owner,
            fail = label { return Some(false); },
            elsewhere = label { return None; },
        )
    }
    Some(true)
}

/// Pushes up to `n` objects from `src` onto the class's stack on the current
/// CPU (as many as fit); returns how many. Counts no malloc.
///
/// # Safety
/// As [`pop`]; `src` points to `n` readable pointers.
#[inline]
unsafe fn push_batch(d: *const Desc, off: i64, c: usize, src: *const *mut u8, n: usize) -> usize {
    let k: usize;
    // SAFETY: as in `push`: slots above the length are written first, then one
    // commit store publishes them.
    unsafe {
        rseq_section!(
            d, off, "[{d} + {c} * 8 + {word}]";
            [
                "mov {w}, qword ptr [{t}]",
                "movzx {i:e}, {w:x}",
                "mov {k:e}, dword ptr [{t} - 8]",
                "sub {k}, {i}",
                "jbe 5f",
                "cmp {k}, {n}",
                "cmova {k}, {n}",
                "test {k}, {k}",
                "jz 5f",
                "mov {x}, qword ptr [{t} + 8]",
                "lea {x}, [{x} + {i} * 8]",
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
unsafe fn pop_batch(d: *const Desc, off: i64, c: usize, dst: *mut *mut u8, n: usize) -> usize {
    let k: usize;
    // SAFETY: as in `pop`: copying out is a read; the commit store shortens the stack.
    // If the section restarts, `dst` is simply written again.
    unsafe {
        rseq_section!(
            d, off, "[{d} + {c} * 8 + {word}]";
            [
                "mov {w}, qword ptr [{t}]",
                "movzx {k:e}, {w:x}",
                "cmp {k:e}, {mask}",
                "ja 5f",
                "cmp {k}, {n}",
                "cmova {k}, {n}",
                "test {k}, {k}",
                "jz 5f",
                "sub {w}, {k}",
                "movzx {x:e}, {w:x}",
                "mov {y}, qword ptr [{t} + 8]",
                "lea {x}, [{y} + {x} * 8]",
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
            mask = const StackWord::LEN_MASK,
        );
    }
    k
}

/// Moves class `c`'s stack on the current CPU from the slots at `from` to
/// those at `to`, by storing `to` as its slots pointer (the commit), if the
/// stack is empty and not stopped and its pointer is `from` (which names one
/// CPU's stack: a thread that moved finds another pointer and fails).
/// Whether it moved.
///
/// # Safety
/// As [`pop`]; `to` is the address of the class's grown stack in the cache
/// whose stack is at `from` (`CpuCache::grown_slots`).
#[inline]
unsafe fn relocate(d: *const Desc, off: i64, c: usize, from: usize, to: usize) -> bool {
    // SAFETY: as in `pop`; the one store is the commit, and an empty stack
    // has no objects in the slots it leaves.
    unsafe {
        rseq_section!(
            d, off, "[{d} + {c} * 8 + {word}]";
            [
                "mov {w}, qword ptr [{t}]",
                "test {w:x}, {w:x}",
                "jnz 5f",
                "cmp qword ptr [{t} + 8], {from}",
                "jne 5f",
                "mov qword ptr [{t} + 8], {to}",
            ];
            fail: [
                "jmp {fail}",
            ];
            c = in(reg) c,
            from = in(reg) from,
            to = in(reg) to,
            fail = label { return false; },
        );
    }
    true
}

/// Reads the word at byte offset `field` of the current CPU's cache; returns
/// the CPU index and the value (`None` if the CPU is out of range).
///
/// # Safety
/// As [`pop`]; `field` is the offset of an aligned `u64` inside a cache.
#[inline(always)]
unsafe fn load(d: *const Desc, off: i64, field: usize) -> Option<(usize, u64)> {
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
unsafe fn store_if(
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
unsafe fn add(d: *const Desc, off: i64, field: usize, delta: u64) -> bool {
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
/// [`Tiny`]): bumps its offset and sub-object count with one
/// commit store. Null if there is no block, it has no room (a stopped word
/// never has), or the CPU is out of range.
///
/// # Safety
/// As [`load`]; `field` is the tiny word's offset, `amask + 1` a power of two.
#[inline(always)]
unsafe fn carve(d: *const Desc, off: i64, field: usize, size: usize, amask: usize) -> *mut u8 {
    let p: usize;
    // SAFETY: as in `pop`; the single store of the new tiny word is the commit.
    unsafe {
        rseq_section!(
            d, off, "[{d} + {word}]";
            [
                "mov {w}, qword ptr [{t} + {f}]",
                // off = ((w >> OFF_SHIFT) & FIELD_MASK) rounded up to the alignment; end = off + size
                "mov {o}, {w}",
                "shr {o}, {offs}",
                "and {o:e}, {fmask}",
                "add {o}, {amask}",
                "mov {x}, {amask}",
                "not {x}",
                "and {o}, {x}",
                "lea {x}, [{o} + {size}]",
                "cmp {x}, {tiny}",
                "ja 5f",
                // block = sign-extended low BLOCK_BITS bits; none → fail
                "mov {p}, {w}",
                "shl {p}, {ext}",
                "jz 5f",
                "sar {p}, {ext}",
                // new = (w & (2^BLOCK_BITS - 1)) | end << OFF_SHIFT | (n + 1) << N_SHIFT
                "shl {x}, {offs}",
                "shr {w}, {ns}",
                "inc {w}",
                "shl {w}, {ns}",
                "or {w}, {x}",
                "mov {x}, {p}",
                "shl {x}, {ext}",
                "shr {x}, {ext}",
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
            tiny = const crate::TINY_ROOM,
            fmask = const Tiny::FIELD_MASK,
            offs = const Tiny::OFF_SHIFT,
            ns = const Tiny::N_SHIFT,
            ext = const 64 - Tiny::BLOCK_BITS,
        );
    }
    p as *mut u8
}

// ------------------------------------------------------------------ set-up

/// Where rseq stands for this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Availability {
    /// glibc registered an area for every thread; here is its thread-pointer offset.
    Glibc(i64),
    /// glibc registered none, and the probing thread registered the area of
    /// our own ([`OWN_AREA`]); here is its thread-pointer offset. Every
    /// other thread registers on its first slow path ([`Fast::enroll`]).
    Own(i64),
    /// No usable area (rseq refused by the kernel or a seccomp filter, an
    /// old kernel, `TIERALLOC_NO_RSEQ=1`).
    Unavailable,
}

const UNKNOWN: u8 = 0;
const PROBING: u8 = 1;
const YES: u8 = 2;
const NO: u8 = 3;
static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);
static OFFSET: AtomicI64 = AtomicI64::new(0);
/// Whether `OFFSET` is the area of our own (set before `STATE` says `YES`).
static OWN: AtomicBool = AtomicBool::new(false);
/// The probing thread's thread pointer (`fs:0`, glibc's TCB self-pointer)
/// while `STATE` is `PROBING`.
static PROBER: AtomicUsize = AtomicUsize::new(0);

/// How long a thread that finds another one probing waits (yielding) before
/// it gives up and takes the locked path, in nanoseconds: the probe is two
/// `dlsym` calls and the membarrier registration, which may take
/// milliseconds; it may also wait for the loader's lock, which the waiting
/// thread may hold (a `malloc` from inside `dlopen`), and then the wait ends
/// here instead of never.
const PROBE_WAIT_NS: u64 = 200_000_000;

/// Finds the rseq area to use, glibc's or our own, once. While the probe runs (it calls `dlsym`, which
/// may allocate and so re-enter the heap), the probing thread's own calls get
/// `Unavailable` and use the locked path; another thread's wait for the
/// probe to finish (at most [`PROBE_WAIT_NS`]), so that a heap set up
/// meanwhile is not left in locked mode for good.
pub(crate) fn available() -> Availability {
    match STATE.load(Ordering::Acquire) {
        YES => return found(),
        NO => return Availability::Unavailable,
        PROBING => return wait_for_probe(),
        _ => {}
    }
    if STATE
        .compare_exchange(UNKNOWN, PROBING, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return wait_for_probe();
    }
    PROBER.store(thread_pointer(), Ordering::Relaxed);
    match probe() {
        Some((off, own)) => {
            OFFSET.store(off, Ordering::Relaxed);
            OWN.store(own, Ordering::Relaxed);
            STATE.store(YES, Ordering::Release);
            found()
        }
        None => {
            STATE.store(NO, Ordering::Release);
            Availability::Unavailable
        }
    }
}

/// The calling thread's `cpu_id` in the area [`available`] found, if any
/// (for the tests: −1 before a thread registered the area of our own).
pub(crate) fn rseq_cpu_id() -> Option<i32> {
    match available() {
        // SAFETY: the area the probe found is at `off` in every thread.
        Availability::Glibc(off) | Availability::Own(off) => Some(unsafe { cpu_id(off) } as i32),
        Availability::Unavailable => None,
    }
}

/// The probe's result, once `STATE` said `YES` (Acquire).
fn found() -> Availability {
    let off = OFFSET.load(Ordering::Relaxed);
    if OWN.load(Ordering::Relaxed) {
        Availability::Own(off)
    } else {
        Availability::Glibc(off)
    }
}

/// [`available`] when a probe has begun: its result, once it is known; for
/// the probing thread itself (re-entered through `dlsym`), or after
/// [`PROBE_WAIT_NS`], `Unavailable`.
fn wait_for_probe() -> Availability {
    let mut deadline = None;
    loop {
        match STATE.load(Ordering::Acquire) {
            YES => return found(),
            NO => return Availability::Unavailable,
            _ => {}
        }
        // PROBER is written right after PROBING: a thread that reads it
        // before that sees 0 or a finished prober's pointer, neither its own
        // (its own probe, begun, would have stored it first).
        if PROBER.load(Ordering::Relaxed) == thread_pointer() {
            return Availability::Unavailable;
        }
        let now = monotonic_ns();
        match deadline {
            None => deadline = Some(now.saturating_add(PROBE_WAIT_NS)),
            Some(d) if now >= d => return Availability::Unavailable,
            Some(_) => {}
        }
        // SAFETY: a syscall without arguments.
        unsafe { libc::sched_yield() };
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds (`u64::MAX` if the clock cannot be
/// read, which ends a wait at once).
fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; the vDSO call does not allocate.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) } != 0 {
        return u64::MAX;
    }
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// This thread's thread pointer: the word at `fs:0`, glibc's TCB
/// self-pointer (distinct for every live thread).
fn thread_pointer() -> usize {
    let tp: usize;
    // SAFETY: on x86-64 Linux with glibc, fs:0 holds the TCB's address.
    unsafe {
        asm!("mov {tp}, qword ptr fs:[0]", tp = out(reg) tp, options(nostack, readonly, preserves_flags));
    }
    tp
}

/// `TIERALLOC_NO_RSEQ=1` refuses rseq. Read with `getenv`, which does not
/// allocate: the probe may run inside the heap's first allocation, where an
/// allocating read (`std::env`) would re-enter the heap. Any other value
/// (`0`, empty, a typo) keeps rseq; the C library reports bad values.
fn rseq_refused() -> bool {
    // SAFETY: a NUL-terminated name; glibc's getenv only reads `environ`, and
    // a non-null result is a NUL-terminated string that outlives this call.
    unsafe {
        let v = libc::getenv(c"TIERALLOC_NO_RSEQ".as_ptr());
        !v.is_null() && core::ffi::CStr::from_ptr(v).to_bytes() == b"1"
    }
}

/// The area to use and whether it is our own, or `None` (see
/// [`Availability`]).
fn probe() -> Option<(i64, bool)> {
    if rseq_refused() {
        return None;
    }
    let (off, own) = match glibc_area() {
        GlibcArea::Registered(off) => (off, false),
        GlibcArea::Unusable => return None,
        GlibcArea::None => {
            let off = own_offset();
            // SAFETY: `off` is the area of our own, and `glibc_area` found
            // that glibc registered none.
            if !unsafe { register_own(off) } {
                return None;
            }
            (off, true)
        }
    };
    // The area is inside the thread's control block or its static TLS,
    // never at the thread pointer itself ([`Sections`] relies on it: 0
    // means unpublished).
    if off == 0 {
        return None;
    }
    // The area must be live for this thread: cpu_id is set (not -1/-2).
    // SAFETY: the area is at fs:[off] for every thread, at least 32 bytes.
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
    Some((off, own))
}

/// What glibc did about rseq.
enum GlibcArea {
    /// It registered an area for every thread, at this offset.
    Registered(i64),
    /// It registered none: it is older than 2.35 (no symbols), or its
    /// registration was turned off or failed (`__rseq_size` 0).
    None,
    /// It registered one that we cannot use.
    Unusable,
}

fn glibc_area() -> GlibcArea {
    // SAFETY: dlsym with a NUL-terminated name; the symbols, when present, are
    // glibc's `ptrdiff_t __rseq_offset` and `unsigned int __rseq_size`.
    let (off, size) = unsafe {
        let off = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr());
        let size = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr());
        if off.is_null() || size.is_null() {
            return GlibcArea::None;
        }
        (*(off as *const isize) as i64, *(size as *const u32))
    };
    // glibc reports the area's feature size: 32 in 2.35, 20 (the original
    // fields: cpu_id_start, cpu_id, rseq_cs, flags) where the fix for the
    // extensible-rseq ABI is applied. We need the first three fields.
    match size {
        0 => GlibcArea::None,
        1..20 => GlibcArea::Unusable,
        _ => GlibcArea::Registered(off),
    }
}

/// Bytes of the area of our own: the kernel's `struct rseq` of its first
/// ABI (`cpu_id_start`, `cpu_id`, `rseq_cs`, `flags`, padding), the length
/// every kernel with rseq accepts; it must be aligned to them.
const OWN_AREA_BYTES: u32 = 32;

/// The area of our own's symbol: global, for the crate's code in every
/// codegen unit, but hidden, so that it never leaves the module it is
/// linked into; named with the crate's version, so that two versions linked
/// into one module never clash.
macro_rules! own_area {
    () => {
        concat!(
            "tieralloc_rseq_area_",
            env!("CARGO_PKG_VERSION_MAJOR"),
            "_",
            env!("CARGO_PKG_VERSION_MINOR"),
            "_",
            env!("CARGO_PKG_VERSION_PATCH")
        )
    };
}

// The area of our own, one per thread in the static TLS block: `cpu_id`
// (the second word) starts as −1, `RSEQ_CPU_ID_UNINITIALIZED`, in every
// thread (the loader copies this image into each new thread's block), and
// the rest as 0.
global_asm!(
    concat!(".pushsection .tdata.", own_area!(), ",\"awT\",@progbits"),
    ".p2align 5",
    concat!(".globl ", own_area!()),
    concat!(".hidden ", own_area!()),
    concat!(".type ", own_area!(), ",@object"),
    concat!(".size ", own_area!(), ",32"),
    concat!(own_area!(), ":"),
    ".long 0",
    ".long -1",
    ".quad 0",
    ".long 0",
    ".long 0",
    ".quad 0",
    ".popsection",
);

/// The area of our own's thread-pointer offset, the same in every thread
/// (initial-exec TLS: one GOT word the loader fills, or, in an executable,
/// an immediate the linker puts in its place).
#[inline(always)]
fn own_offset() -> i64 {
    let off: i64;
    // SAFETY: reads the GOT word of the area's TLS offset, which the loader
    // wrote before any code of the module ran and never changes.
    unsafe {
        asm!(
            concat!("mov {off}, qword ptr [rip + ", own_area!(), "@GOTTPOFF]"),
            off = out(reg) off,
            options(nostack, pure, readonly, preserves_flags)
        );
    }
    off
}

/// Registers the calling thread's area of our own at thread-pointer offset
/// `off` with the kernel; whether it is registered now. If the kernel
/// refuses (another area is registered for the thread, a seccomp filter,
/// no rseq), the area's `cpu_id` becomes −2, `RSEQ_CPU_ID_REGISTRATION_FAILED`,
/// so that the thread's slow paths do not ask again.
///
/// # Safety
/// `off` is [`own_offset`], and no other area is registered for the thread
/// in the process's use of rseq (glibc registered none).
unsafe fn register_own(off: i64) -> bool {
    let area = (thread_pointer() as i64 + off) as *mut u8;
    // SAFETY: `area` is this thread's area of our own (static TLS, aligned
    // to 32, as long as the thread lives, and the kernel writes it only
    // while the thread runs); the signature precedes every abort handler.
    let r = unsafe { libc::syscall(libc::SYS_rseq, area, OWN_AREA_BYTES, 0, RSEQ_SIG) };
    if r == 0 {
        return true;
    }
    // SAFETY: the thread's own area, not registered: the kernel does not write it.
    unsafe {
        area.add(RSEQ_CPU_ID)
            .cast::<i32>()
            .write_volatile(RSEQ_CPU_ID_REGISTRATION_FAILED)
    };
    false
}

/// `cpu_id` of an area whose registration failed.
const RSEQ_CPU_ID_REGISTRATION_FAILED: i32 = -2;

/// [`Fast::enroll`]'s work, out of line: registers the calling thread's
/// area if the process uses the area of our own.
#[cold]
#[inline(never)]
fn enroll_thread(off: i64) {
    if OWN.load(Ordering::Relaxed) {
        // SAFETY: in own-area mode `off` is the area of our own (it is the
        // published offset, which the probe found), and glibc registered none.
        unsafe { register_own(off) };
    }
}

const MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ: libc::c_int = 1 << 7;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ: libc::c_int = 1 << 8;
const MEMBARRIER_CMD_FLAG_CPU: libc::c_int = 1 << 0;
static MEMBARRIER_OK: AtomicBool = AtomicBool::new(false);

/// Restarts any critical section in flight on `cpu` (so it sees a `stop` word
/// set before this call). False if the kernel cannot do it.
fn fence_cpu(cpu: usize) -> bool {
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
/// `off` is the offset of the calling thread's rseq area (as [`pop`]).
#[inline(always)]
unsafe fn cpu_id(off: i64) -> u32 {
    let cpu: u32;
    // SAFETY: the caller's area is mapped for every thread; a plain read.
    unsafe {
        asm!("mov {c:e}, dword ptr fs:[{o} + {cpu}]", o = in(reg) off, cpu = const RSEQ_CPU_ID, c = out(reg) cpu, options(nostack, readonly, preserves_flags));
    }
    cpu
}

#[cfg(test)]
mod tests {
    use super::super::cache::CacheLayout;
    use super::*;

    /// `count` zeroed caches from the system allocator, their limits settled
    /// (as the slow paths settle them), published as sections.
    struct Published {
        sections: std::boxed::Box<Sections>,
        /// The block: the guard, then the caches.
        block: *mut u8,
        layout: std::alloc::Layout,
        count: usize,
    }

    impl Published {
        fn new(count: usize) -> Published {
            // Another test may be probing right now: `available` waits for it.
            let (Availability::Glibc(off) | Availability::Own(off)) = available() else {
                panic!("this machine's kernel offers rseq: the test needs it");
            };
            let layout = std::alloc::Layout::from_size_align(
                GUARD_BYTES + count * CacheLayout::GO.stride(),
                64,
            )
            .unwrap();
            // SAFETY: a non-zero layout.
            let block = unsafe { std::alloc::alloc_zeroed(layout) };
            // SAFETY: the caches follow the guard in the block.
            let mem = unsafe { block.add(GUARD_BYTES) };
            for i in 0..count {
                // SAFETY: `i < count` zeroed caches of the layout in the block.
                let cache = unsafe { CpuCache::at(mem, i, &CacheLayout::GO) };
                for c in CacheLayout::GO.small_classes() {
                    cache.settle_limit(c);
                }
            }
            let sections = std::boxed::Box::new(Sections::new());
            // SAFETY: once; zeroed caches after a zeroed guard, all of which
            // outlive every use (dropped last); `count` is above this
            // machine's CPU ids (the tests check it where they rely on it).
            assert!(unsafe { sections.publish(mem.cast(), count, off, &Geometry::GO) });
            Published {
                sections,
                block,
                layout,
                count,
            }
        }
        fn fast(&self) -> Fast {
            self.sections.get().expect("published")
        }
        fn cache(&self, i: usize) -> CpuCache<'_> {
            assert!(i < self.count);
            // SAFETY: `i < count` zeroed caches of the layout in the block,
            // after the guard.
            unsafe { CpuCache::at(self.block.add(GUARD_BYTES), i, &CacheLayout::GO) }
        }
        /// Whether the guard is still all zero.
        fn guard_is_zero(&self) -> bool {
            // SAFETY: the block's first GUARD_BYTES bytes, initialised (zeroed).
            let g = unsafe { core::slice::from_raw_parts(self.block, GUARD_BYTES) };
            g.iter().all(|&b| b == 0)
        }
    }

    impl Drop for Published {
        fn drop(&mut self) {
            // SAFETY: allocated in `new` with this layout; nothing refers to it any more.
            unsafe { std::alloc::dealloc(self.block, self.layout) };
        }
    }

    /// The sections against real caches: a stopped cache fails every section
    /// (and nothing else does), exclusive operations see through the STOP bit
    /// and keep it, and unmarking restores the stacks as they were.
    #[test]
    fn sections_respect_stop_marks() {
        let count = 64; // above any CPU id this test can run on (checked below)
        let p = Published::new(count);
        let f = p.fast();
        let c = SizeClass::new(5).unwrap();
        let objs: std::vec::Vec<*mut u8> = (1..=4).map(|i| (i * 0x1000) as *mut u8).collect();
        assert_eq!(f.push_batch(c, &objs[..3]), 3);
        assert!(f.cpu() < count);
        for i in 0..count {
            mark_stopped(&p.cache(i));
            assert!(all_stopped(&p.cache(i)));
        }
        assert_eq!(
            f.pop(c),
            (core::ptr::null_mut(), true),
            "a stopped stack pops nothing, and says so in the tick"
        );
        assert!(!f.push(c, objs[3]), "a stopped stack takes nothing");
        let mut out = [core::ptr::null_mut(); 4];
        assert_eq!(f.pop_batch(c, &mut out), 0);
        assert_eq!(f.push_batch(c, &objs), 0);
        assert!(
            f.carve(8, 8).is_null(),
            "a stopped tiny word carves nothing"
        );
        // Which cache holds the three depends on where the thread ran; find it.
        let holder = (0..count)
            .find(|&i| p.cache(i).len(c) == 3)
            .expect("three objects on one CPU");
        let cache = p.cache(holder);
        let mut out = [core::ptr::null_mut(); 2];
        assert_eq!(
            cache.pop_batch(c, &mut out),
            2,
            "exclusive ops see through STOP"
        );
        assert_eq!(out, [objs[1], objs[2]]);
        assert!(cache.push(c, objs[3]));
        assert!(cache.word(c).is_stopped(), "exclusive ops keep the mark");
        for i in 0..count {
            unmark_stopped(&p.cache(i));
            assert!(!p.cache(i).word(c).is_stopped());
        }
        let mut got = std::vec::Vec::new();
        loop {
            let q = f.pop(c).0;
            if q.is_null() {
                break;
            }
            got.push(q);
        }
        // The thread may have migrated between sections; count over all caches.
        let left: usize = (0..count).map(|i| p.cache(i).len(c)).sum();
        assert_eq!(got.len() + left, 2, "objects kept across stop and unmark");
    }

    /// A stopped tiny word refuses carves; unmarked, it reads full.
    #[test]
    fn stopped_tiny_word_reads_full_after() {
        let p = Published::new(64);
        let cache = p.cache(0);
        let t = Tiny {
            block: 0x7000_0000_0010,
            off: 5,
            n: 2,
        };
        assert!(cache.replace_tiny(Tiny::NONE, t));
        mark_stopped(&cache);
        assert!(cache.tiny().stopped());
        assert!(
            cache.tiny().off + 1 > crate::TINY_BLOCK,
            "no carve fits a stopped word"
        );
        unmark_stopped(&cache);
        assert_eq!(cache.tiny(), t.full());
        mark_stopped(&cache);
        let taken = cache.take_tiny();
        assert_eq!((taken.block, taken.n), (t.block, 2));
        assert!(taken.off <= crate::TINY_BLOCK);
        assert_eq!(cache.tiny(), Tiny::NONE);
    }

    /// The tiny sections: a carve commits one store of the packed word; the
    /// load/replace pair installs a block only on the CPU it read.
    #[test]
    fn tiny_sections() {
        let p = Published::new(64);
        let f = p.fast();
        let (cpu, t) = f.tiny().expect("registered CPU in range");
        assert_eq!(t, Tiny::NONE);
        let block = 0x7000_0000_0040usize;
        let new = Tiny {
            block,
            off: 0,
            n: 0,
        };
        // The thread may migrate between the load and the replace: then the
        // replace refuses, which is its contract; retry until it lands.
        let mut cpu = cpu;
        while !f.replace_tiny(cpu, p.cache(cpu).tiny(), new) {
            cpu = f.tiny().unwrap().0;
        }
        let q = f.carve(3, 1);
        if !q.is_null() {
            assert_eq!(q as usize, block);
        }
        assert!(f.add(TinyEvent::Frees, 2));
        let total: u64 = (0..64).map(|i| p.cache(i).counter(TinyEvent::Frees)).sum();
        assert_eq!(total, 2);
    }

    /// A thread whose area holds no CPU (−1 before registration, −2 when it
    /// failed) pops nothing and pushes nothing: the fast sections find the
    /// guard, which stays zero; the checked sections refuse the id.
    #[test]
    fn an_unregistered_thread_finds_the_guard() {
        let p = Published::new(64);
        let sections: &Sections = &p.sections;
        let c = SizeClass::new(5).unwrap();
        let (pushed, popped) = std::thread::scope(|s| {
            s.spawn(|| {
                let f = sections.get().expect("published");
                let obj = 0x1000 as *mut u8;
                let area = (thread_pointer() as i64 + f.off) as *mut u8;
                // SAFETY: `available` found glibc's symbol, a `u32`.
                let size = unsafe {
                    let sym = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr());
                    *(sym as *const u32)
                };
                // SAFETY: glibc registered `area` for this thread with `size`
                // bytes (or 32, its first ABI's size) and RSEQ_SIG;
                // unregistering it only stops the kernel's updates, and this
                // thread runs no section afterwards but the ones below,
                // which find no CPU.
                let gone = [32u32, size].iter().any(|&len| unsafe {
                    libc::syscall(libc::SYS_rseq, area, len, 1, RSEQ_SIG) == 0
                });
                assert!(gone, "the kernel unregistered the area");
                let mut seen = std::vec::Vec::new();
                for id in [-1i32, -2] {
                    // SAFETY: the area is this thread's and unregistered: the
                    // kernel no longer writes its cpu_id.
                    unsafe { area.add(RSEQ_CPU_ID).cast::<i32>().write_volatile(id) };
                    assert_eq!(f.cpu(), id as u32 as usize);
                    seen.push((f.push(c, obj), f.pop(c).0.is_null()));
                    assert!(f.tiny().is_none(), "a checked section refuses id {id}");
                }
                seen
            })
            .join()
            .unwrap()
            .into_iter()
            .fold((false, true), |(a, b), (x, y)| (a || x, b && y))
        });
        assert!(!pushed, "no push lands for a thread with no CPU");
        assert!(popped, "no pop finds an object for a thread with no CPU");
        assert!(p.guard_is_zero(), "the guard stays zero");
        let stacked: usize = (0..p.count).map(|i| p.cache(i).len(c)).sum();
        assert_eq!(stacked, 0);
    }

    /// Pushes `obj` on class `c`'s stack and pops with `pop` until the pop
    /// returns it, 100 rounds at most; the last pop's object. The thread may
    /// migrate between the push and the pop; then the object waits on the
    /// other CPU's stack, and the next round tries again.
    fn round_trip(f: Fast, c: SizeClass, obj: *mut u8, pop: impl Fn() -> *mut u8) -> *mut u8 {
        let mut got = core::ptr::null_mut();
        for _ in 0..100 {
            assert!(f.push(c, obj));
            got = pop();
            if got == obj {
                break;
            }
        }
        got
    }

    /// A pop that finds nothing returns null and says "tick", by class and
    /// by step, so that the fast path's one rare test covers the miss; one
    /// that finds an object early in a fresh stack is due no tick.
    #[test]
    fn a_miss_says_tick() {
        let p = Published::new(64);
        let f = p.fast();
        let c = SizeClass::new(5).unwrap();
        assert_eq!(f.pop(c), (core::ptr::null_mut(), true));
        for i in 0..SIZE_STEPS {
            assert_eq!(f.pop_step(i), (core::ptr::null_mut(), true), "step {i}");
        }
        let obj = 0x10_0000 as *mut u8;
        for _ in 0..100 {
            assert!(f.push(c, obj));
            let (q, tick) = f.pop(c);
            // The thread may have moved between the two: a miss, then.
            assert_eq!(tick, q.is_null(), "{q:?}");
            if q == obj {
                return;
            }
        }
        panic!("no pop found its push in 100 tries");
    }

    /// `pop_step(i)` pops from the class that serves step `i`'s sizes: for
    /// every step, what a push on that class left.
    #[test]
    fn a_step_pops_the_class_of_its_sizes() {
        let p = Published::new(64);
        let f = p.fast();
        for i in 0..SIZE_STEPS {
            let c = Geometry::GO.size_to_class_small(SIZE_STEP * (i + 1) - 1);
            assert!(Geometry::GO.size(c) >= SIZE_STEP * (i + 1));
            let obj = (0x10_0000 + 0x1000 * i) as *mut u8;
            let got = round_trip(f, c, obj, || f.pop_step(i).0);
            assert_eq!(got, obj, "step {i} pops class {}", c.index());
            for k in 0..p.count {
                let cache = p.cache(k);
                let mut out = [core::ptr::null_mut(); 128];
                let _ = cache.pop_batch(c, &mut out);
            }
        }
    }

    /// The area of our own lies at one thread-pointer offset, aligned as
    /// the kernel demands, and starts every thread unregistered (−1).
    #[test]
    fn the_area_of_our_own_starts_unregistered_in_every_thread() {
        let off = own_offset();
        assert!(off < 0, "static TLS lies below the thread pointer: {off}");
        let seen: std::vec::Vec<(i64, usize, u32)> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    let area = (thread_pointer() as i64 + own_offset()) as usize;
                    // SAFETY: this thread's area of our own, unregistered
                    // (glibc registered its own here, or the probe ran on
                    // another thread).
                    (own_offset(), area % OWN_AREA_BYTES as usize, unsafe {
                        cpu_id(own_offset())
                    })
                })
                .join()
                .unwrap()
            })
            .collect();
        for (o, misalign, cpu) in seen {
            assert_eq!(o, off);
            assert_eq!(misalign, 0);
            assert_eq!(cpu as i32, -1);
        }
    }

    /// Set in the process [`without_glibcs_area_threads_register_their_own`]
    /// starts under `glibc.pthread.rseq=0`.
    const OWN_AREA_CHILD: &str = "TIERALLOC_TEST_OWN_AREA_CHILD";

    /// With glibc's registration turned off, the probe registers the area
    /// of our own; every other thread starts unregistered (−1: pops and
    /// pushes find the guard), registers on [`Fast::enroll`] and then pops
    /// what it pushed; a thread whose registration the kernel refuses
    /// (another area is registered for it) says −2 from then on and finds
    /// the guard. Runs itself in a process of its own, started with the
    /// tunable.
    #[test]
    fn without_glibcs_area_threads_register_their_own() {
        if std::env::var_os(OWN_AREA_CHILD).is_none() {
            let name = "percpu::rseq::tests::without_glibcs_area_threads_register_their_own";
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", name, "--test-threads", "1"])
                .env("GLIBC_TUNABLES", "glibc.pthread.rseq=0")
                .env(OWN_AREA_CHILD, "1")
                .output()
                .expect("the test binary runs");
            let stdout = std::string::String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("1 passed"),
                "{}\n{stdout}\n{}",
                out.status,
                std::string::String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        // SAFETY: dlsym with a NUL-terminated name; glibc's `__rseq_size`.
        let glibc_size = unsafe {
            let sym = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr());
            (!sym.is_null()).then(|| *(sym as *const u32))
        };
        assert_ne!(glibc_size, Some(32), "the tunable turned glibc's area off");
        assert_eq!(available(), Availability::Own(own_offset()));
        let p = Published::new(64);
        let sections: &Sections = &p.sections;
        let c = SizeClass::new(5).unwrap();
        let threads = 2 * std::thread::available_parallelism().map_or(2, |n| n.get()) + 1;
        std::thread::scope(|s| {
            for t in 0..threads {
                s.spawn(move || {
                    let f = sections.get().expect("published");
                    let obj = (0x10_0000 + 0x1000 * t) as *mut u8;
                    assert_eq!(f.cpu() as u32 as i32, -1, "unregistered at first");
                    assert!(!f.push(c, obj), "the guard is full");
                    assert_eq!(
                        f.pop(c),
                        (core::ptr::null_mut(), true),
                        "the guard is empty"
                    );
                    f.enroll();
                    assert!(f.cpu() < p.count, "registered: cpu {}", f.cpu());
                    // Registered already: nothing to do.
                    f.enroll();
                    assert_eq!(round_trip(f, c, obj, || f.pop(c).0), obj);
                });
            }
        });
        // A thread with another area registered: the kernel refuses ours.
        std::thread::scope(|s| {
            s.spawn(|| {
                #[repr(C, align(32))]
                struct Area([u32; 8]);
                let other = std::boxed::Box::new(Area([0, u32::MAX, 0, 0, 0, 0, 0, 0]));
                let at = &*other as *const Area as *mut Area;
                // SAFETY: a 32-byte aligned area that outlives its
                // registration (unregistered below, before it is dropped).
                let r = unsafe { libc::syscall(libc::SYS_rseq, at, 32u32, 0, RSEQ_SIG) };
                assert_eq!(r, 0, "registered another area");
                let f = sections.get().expect("published");
                f.enroll();
                assert_eq!(f.cpu() as u32 as i32, -2, "refused, for good");
                assert!(!f.push(c, 0x1000 as *mut u8));
                assert_eq!(f.pop(c), (core::ptr::null_mut(), true));
                // SAFETY: unregisters the area registered above.
                let r = unsafe { libc::syscall(libc::SYS_rseq, at, 32u32, 1, RSEQ_SIG) };
                assert_eq!(r, 0, "unregistered the other area");
                drop(other);
            });
        });
        assert!(p.guard_is_zero(), "the guard stays zero");
    }
}
