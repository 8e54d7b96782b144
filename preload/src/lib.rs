//! tieralloc as the C allocator: `LD_PRELOAD=libtieralloc.so program`.
//!
//! Exports glibc's malloc family over one static [`LinuxHeap`] (which is also
//! this library's own `#[global_allocator]`, so Rust code inside uses the same
//! heap and nothing here depends on another allocator):
//!
//! | function | semantics (glibc's) |
//! | --- | --- |
//! | `malloc(n)` | 16-byte aligned (`max_align_t`); `malloc(0)` is a unique pointer; ENOMEM + NULL on failure; up to 1 KiB, once set up, first [`Heap::allocate_fast`](core_alloc::Heap::allocate_fast) (rseq mode: a pop with no call) |
//! | `free(p)` | unsized: the span is found through the page map, first by [`Heap::deallocate_fast`](core_alloc::Heap::deallocate_fast) (rseq mode: one lookup, the checks, the key, a push), which leaves anything it cannot prove live to the checking path; NULL is a no-op; a pointer this heap never returned aborts with its address, and so does a double free (`tieralloc: double free of 0x…`, feature `hardened` of the core) |
//! | `calloc(n, m)` | overflow of `n * m` fails with ENOMEM; fresh large spans are not rewritten |
//! | `realloc(p, n)` | `realloc(NULL, n)` = `malloc(n)`; `realloc(p, 0)` frees `p` and returns NULL; on failure `p` is untouched; a small object shrinks in place while it would use at least half its slot; growth goes through the core's unsized `realloc` (past 16 KiB the buffer gets a span of its own and grows in place when the pages after it are free) |
//! | `reallocarray(p, n, m)` | `realloc` with an overflow check |
//! | `posix_memalign(&p, a, n)` | EINVAL unless `a` is a power of two multiple of `sizeof(void *)`; ENOMEM on failure |
//! | `aligned_alloc(a, n)` | C17/DR 460 (and glibc 2.38+): EINVAL + NULL unless `a` is a power of two |
//! | `memalign(a, n)` | glibc: `a` below 16 means 16, a non-power of two rounds up, `a > SIZE_MAX/2 + 1` is EINVAL |
//! | `valloc(n)` / `pvalloc(n)` | page aligned; `pvalloc` rounds the size up to whole pages |
//! | `malloc_usable_size(p)` | the object's slot size (class size, or the large span's bytes); 0 for NULL or a foreign pointer |
//! | `free_sized(p, n)` / `free_aligned_sized(p, a, n)` | C23; the size is only checked against the slot (larger aborts), the free is unsized; `free_sized` first tries [`Heap::deallocate_fast_sized`](core_alloc::Heap::deallocate_fast_sized), which checks the size against the slot it finds |
//! | `malloc_trim(pad)` | [`Heap::scavenge`](core_alloc::Heap::scavenge): 1 if memory went back to the OS |
//! | `mallinfo2()` / `mallinfo()` | from [`Heap::stats`](core_alloc::Heap::stats) |
//! | `malloc_stats()` | glibc's lines on stderr (`system bytes`, `in use bytes`), then the [`Stats`](core_alloc::Stats) table |
//! | `malloc_info(0, fp)` | glibc's XML shape with tieralloc's figures (see [`malloc_info`]); `options != 0` returns `EINVAL` |
//! | `mallopt(param, value)` | `M_TRIM_THRESHOLD` sets the retained floor (returns 1); every other option returns 0 |
//!
//! ## Options
//!
//! Environment variables, read once at set-up without allocating
//! ([`options`]): `TIERALLOC_SHOW_STATS`, `TIERALLOC_VERBOSE`,
//! `TIERALLOC_DECAY_MS`, `TIERALLOC_RETAIN_BYTES`,
//! `TIERALLOC_BACKGROUND_THREAD` ([`background`]) and `TIERALLOC_NO_RSEQ`.
//! Bad values are reported on stderr and ignored. Set-up runs at the first
//! allocation or when the library is loaded (an `.init_array` entry),
//! whichever comes first; the background thread starts at load, outside any
//! `malloc`. `TIERALLOC_SHOW_STATS` prints from an `.fini_array` entry, after
//! the program's destructors. Every report is written from a stack buffer
//! ([`report`]), never allocating.
//!
//! ## Invariants of this layer
//!
//! * **No tiny objects.** Every request reaches the core with a size of at
//!   least 16 (rounded up to a multiple of 16) or an alignment above 8, so the
//!   core never packs it into a shared tiny block, and an unsized `free` may
//!   hand the object to [`Heap::deallocate_unsized`](core_alloc::Heap::deallocate_unsized).
//!   Rounding to 16 with the core's alignment 8 gives the same object as
//!   alignment 16 (the smallest class at or above a multiple of 16 is itself a
//!   multiple of 16; only classes 8 and 24 are not) while staying on the core's
//!   inlined size-to-class path; `tests/programs.rs` checks that property.
//! * **No panics, no unwinding.** Pointers from the caller are checked with
//!   [`Heap::try_deallocate_unsized`](core_alloc::Heap::try_deallocate_unsized)
//!   and [`Heap::try_live_size`](core_alloc::Heap::try_live_size), which never
//!   panic (a double free, a slot never handed out, a foreign or interior
//!   pointer is an `Err`), before any core call that would panic on them. Invalid ones are
//!   reported with `write(2)` from a stack buffer and `abort()`: reporting never
//!   allocates.
//! * **Set-up and fork.** `set_up` (the options, then
//!   `pthread_atfork(lock_all, unlock_all, unlock_all)`) runs once, on the
//!   first allocation or at load. An atomic state word makes it one-shot and
//!   re-entrant: if `pthread_atfork` or `pthread_create` calls `malloc`
//!   (glibc's `pthread_atfork` does past 48 handlers, `pthread_create`
//!   allocates the new thread's TLS), the inner call sees "setting up" and
//!   allocates normally; no heap lock is held meanwhile. Being registered
//!   first, our prepare handler runs last and our child handler first, so
//!   other libraries' handlers may allocate. A forked child has no
//!   background thread: its next allocation past the fast path (a refill,
//!   a large object) starts one (not the fork handler, where creating a
//!   thread is not safe). `malloc`'s fast path tests no set-up state: it
//!   serves only from published caches, and the allocation that publishes
//!   them takes the slow path, which sets up first.
//! * **Threads.** The heap keeps per-CPU caches, not per-thread ones: threads
//!   created before or after the library is loaded need no set-up and leave
//!   nothing behind when they exit.

use core::alloc::Layout;
use core::ffi::{c_int, c_void};
use core::fmt::Write;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use core_alloc::{BadFree, LinuxHeap, MAX_SMALL_SIZE};

mod background;
mod options;
mod report;

use report::{Out, Sink};

/// The one heap: behind the C functions and Rust's allocator alike.
#[global_allocator]
pub(crate) static HEAP: LinuxHeap = LinuxHeap::new();

/// `alignof(max_align_t)` on x86_64 and aarch64 Linux.
const MIN_ALIGN: usize = 16;

/// Largest size a request may round up to (`Layout`'s limit).
const MAX_SIZE: usize = isize::MAX as usize - (MIN_ALIGN - 1);

// ------------------------------------------------------------------ helpers

#[inline(always)]
fn set_errno(e: c_int) {
    // SAFETY: glibc's thread-local errno.
    unsafe { *libc::__errno_location() = e };
}

#[cold]
#[inline(never)]
fn enomem() -> *mut c_void {
    set_errno(libc::ENOMEM);
    null_mut()
}

/// The core layout of a 16-byte-aligned request: size rounded up to a
/// multiple of 16 (at least 16), core alignment 8. `None` if too big.
#[inline(always)]
fn plain_layout(size: usize) -> Option<Layout> {
    if size > MAX_SIZE {
        return None;
    }
    let n = if size == 0 {
        MIN_ALIGN
    } else {
        (size + (MIN_ALIGN - 1)) & !(MIN_ALIGN - 1)
    };
    // SAFETY: 8 is a power of two and `n <= isize::MAX` rounded to 8.
    Some(unsafe { Layout::from_size_align_unchecked(n, 8) })
}

/// The core layout for alignment `align` (a power of two).
#[inline(always)]
fn aligned_layout(align: usize, size: usize) -> Option<Layout> {
    if align <= MIN_ALIGN {
        plain_layout(size)
    } else {
        // Alignment above 8: the core never makes a tiny object.
        Layout::from_size_align(size.max(MIN_ALIGN), align).ok()
    }
}

/// Allocates `layout` (from the helpers above), registering the fork handlers
/// the first time; sets ENOMEM on failure.
#[inline(always)]
fn alloc_layout(layout: Option<Layout>) -> *mut c_void {
    ensure_set_up();
    match layout {
        Some(l) => {
            let p = HEAP.allocate(l);
            if p.is_null() {
                return enomem();
            }
            p.cast()
        }
        None => enomem(),
    }
}

/// The slot size of `p`, a live object, or abort naming `func` and the
/// address ([`bad_free`]).
#[inline(always)]
fn checked_usable(func: &str, p: *mut c_void) -> usize {
    // SAFETY: the caller passes a pointer it owns; if another thread frees
    // it meanwhile the program is already wrong in a way no check catches.
    match unsafe { HEAP.try_live_size(p.cast()) } {
        Ok(n) => n,
        Err(e) => bad_free(func, p, e),
    }
}

/// Reports a bad free of `p` in `func` and aborts, without allocating:
/// `tieralloc: double free of 0x…: free() of an object that is already
/// free (in a CPU's cache)`, or `tieralloc: free(): invalid pointer 0x…: …`.
#[cold]
#[inline(never)]
fn bad_free(func: &str, p: *mut c_void, e: BadFree) -> ! {
    match e {
        BadFree::DoubleFree(site) => {
            let mut o = Out::stderr();
            o.bytes(b"tieralloc: double free of ");
            o.hex(p as usize);
            o.bytes(b": ");
            o.bytes(func.as_bytes());
            o.bytes(b"() of an object that is already free (");
            o.bytes(site.describe().as_bytes());
            o.bytes(b")\n");
            o.finish();
            // SAFETY: no preconditions; no unwinding.
            unsafe { libc::abort() }
        }
        BadFree::NeverHandedOut(site) => invalid_pointer(func, p, Detail::NeverHandedOut(site)),
        BadFree::NotAnObject => invalid_pointer(func, p, Detail::None),
    }
}

/// What an invalid-pointer report says after the address.
enum Detail<'a> {
    /// Not the start of an object (the default words).
    None,
    /// Words and a number.
    Number(&'a str, usize),
    /// A slot never handed out, and where it sits.
    NeverHandedOut(core_alloc::FreeSite),
}

/// Writes `tieralloc: <func>(): invalid pointer 0x…` to stderr and aborts,
/// without allocating.
#[cold]
#[inline(never)]
fn invalid_pointer(func: &str, p: *mut c_void, detail: Detail<'_>) -> ! {
    let mut o = Out::stderr();
    o.bytes(b"tieralloc: ");
    o.bytes(func.as_bytes());
    o.bytes(b"(): invalid pointer ");
    o.hex(p as usize);
    match detail {
        Detail::Number(what, n) => {
            o.bytes(b": ");
            o.bytes(what.as_bytes());
            o.dec(n as u64);
        }
        Detail::NeverHandedOut(site) => {
            o.bytes(b": a slot this allocator never handed out (");
            o.bytes(site.describe().as_bytes());
            o.bytes(b")");
        }
        Detail::None => o.bytes(b": not the start of a live object of this allocator (foreign, interior or freed pointer)"),
    }
    o.bytes(b"\n");
    o.finish();
    // SAFETY: no preconditions; no unwinding.
    unsafe { libc::abort() }
}

// ------------------------------------------------------------------- set-up

/// Set-up has not begun.
const NOT_SET_UP: u8 = 0;
/// Set-up is running: a nested `malloc` (from `pthread_atfork`,
/// `pthread_create`) or another thread's passes through and allocates.
const SETTING_UP: u8 = 1;
/// Set up.
const SET_UP: u8 = 2;
/// A forked child whose parent ran the background thread: the child's next
/// allocation that leaves the fast path (a refill, a large object) starts
/// it again; `malloc`'s fast path tests nothing of the set-up.
const RESTART_THREAD: u8 = 3;

/// The one-shot set-up ([`set_up`]).
static SETUP: AtomicU8 = AtomicU8::new(NOT_SET_UP);

/// `TIERALLOC_SHOW_STATS`, `TIERALLOC_VERBOSE` (written by set-up before
/// [`SETUP`] becomes [`SET_UP`]).
static SHOW_STATS: AtomicBool = AtomicBool::new(false);
static VERBOSE: AtomicBool = AtomicBool::new(false);
/// The background thread's poll interval in ms if the options ask for one
/// (0: none), and whether one runs in this process.
static BACKGROUND_MS: AtomicU64 = AtomicU64::new(0);
static BACKGROUND_RUNNING: AtomicBool = AtomicBool::new(false);

/// Sets the library up on the first allocation (or at load, [`INIT`]).
#[inline(always)]
fn ensure_set_up() {
    if SETUP.load(Ordering::Relaxed) != SET_UP {
        set_up();
    }
}

/// Reads the options (without allocating, [`options`]), applies them to the
/// heap, and registers `pthread_atfork(lock_all, unlock_all, unlock_all)`.
/// One-shot and re-entrant through [`SETUP`]: no heap lock is held while
/// `pthread_atfork` runs (glibc 2.36 allocates in it past 48 handlers),
/// and a nested `malloc` sees [`SETTING_UP`] and allocates normally. Being
/// registered first, our prepare handler runs last and our child handler
/// first, so other libraries' handlers may allocate.
#[cold]
#[inline(never)]
fn set_up() {
    match SETUP.compare_exchange(NOT_SET_UP, SETTING_UP, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {}
        Err(RESTART_THREAD) => {
            if SETUP
                .compare_exchange(
                    RESTART_THREAD,
                    SETTING_UP,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                start_background_thread();
                SETUP.store(SET_UP, Ordering::Release);
            }
            return;
        }
        Err(_) => return,
    }
    let o = options::read();
    if let Some(ms) = o.decay_ms {
        // The variable's 0 is "off", the core's is "the default".
        HEAP.set_decay_ms(if ms == 0 { u64::MAX } else { ms });
    }
    if let Some(b) = o.retain_bytes {
        HEAP.set_retain_bytes(b);
    }
    SHOW_STATS.store(o.show_stats, Ordering::Relaxed);
    VERBOSE.store(o.verbose, Ordering::Relaxed);
    let decay_ms = HEAP.decay_ms();
    if o.background_thread && decay_ms != u64::MAX {
        BACKGROUND_MS.store((decay_ms / 4).max(1), Ordering::Relaxed);
    }
    // SAFETY: plain function pointers with the C ABI. Failure (ENOMEM) leaves
    // fork unprotected, as it would be without the handlers.
    let atfork =
        unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child)) }
            == 0;
    SETUP.store(SET_UP, Ordering::Release);
    if o.verbose {
        report_set_up(&o, decay_ms, atfork);
    }
}

/// Whether glibc registered an rseq area for its threads (`__rseq_size` is
/// not 0): if not, the heap's rseq mode uses an area of its own.
fn glibc_registered_rseq() -> bool {
    // SAFETY: dlsym with a NUL-terminated name; the symbol, when present, is
    // glibc's `unsigned int __rseq_size`.
    unsafe {
        let sym = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr());
        !sym.is_null() && *(sym as *const u32) != 0
    }
}

/// `TIERALLOC_VERBOSE=1`: one line on the mode, the CPUs and the options.
/// Sets the heap up to learn the mode (no allocation is in flight here).
#[cold]
fn report_set_up(o: &options::Options, decay_ms: u64, atfork: bool) {
    let rseq = HEAP.uses_rseq();
    let cpus = HEAP.stats().cpus;
    let mut out = Out::stderr();
    let _ = write!(
        out,
        "tieralloc: set up: {} mode{}, {cpus} CPUs; ",
        if rseq { "rseq" } else { "locked" },
        match (rseq, o.no_rseq, glibc_registered_rseq()) {
            (false, true, _) => " (TIERALLOC_NO_RSEQ=1)",
            (false, false, _) => " (the kernel refused rseq)",
            (true, _, false) => " (an area of its own: glibc registered none)",
            (true, _, true) => "",
        },
    );
    if decay_ms == u64::MAX {
        out.bytes(b"decay off");
    } else {
        let _ = write!(out, "decay {decay_ms} ms");
    }
    let _ = writeln!(
        out,
        ", retained floor {} bytes, background thread {}, show stats {}",
        o.retain_bytes.unwrap_or(core_alloc::DEFAULT_RETAIN_BYTES),
        match (o.background_thread, decay_ms == u64::MAX) {
            (false, _) => "off",
            (true, false) => "on",
            (true, true) => "off (the decay is off)",
        },
        if o.show_stats { "on" } else { "off" },
    );
    if !atfork {
        out.bytes(b"tieralloc: warning: pthread_atfork failed: fork() while other threads allocate may deadlock the child\n");
    }
    out.finish();
}

/// Starts the background thread if the options ask for one; called where a
/// nested `malloc` is served (at load, or a forked child's next allocation
/// past the fast path).
fn start_background_thread() {
    let ms = BACKGROUND_MS.load(Ordering::Relaxed);
    if ms == 0 || BACKGROUND_RUNNING.load(Ordering::Relaxed) {
        return;
    }
    let ok = background::start(ms);
    BACKGROUND_RUNNING.store(ok, Ordering::Relaxed);
    if VERBOSE.load(Ordering::Relaxed) {
        let mut out = Out::stderr();
        if ok {
            let _ = writeln!(
                out,
                "tieralloc: background thread started: the decay is polled every {ms} ms"
            );
        } else {
            out.bytes(b"tieralloc: warning: the background thread could not be created; the decay runs on heap activity only\n");
        }
        out.finish();
    }
}

/// At load (after libc's constructors, before the program's): the set-up,
/// then the background thread, outside any `malloc`.
extern "C" fn at_load() {
    ensure_set_up();
    start_background_thread();
}

/// At exit (after the program's destructors and `atexit` handlers):
/// `TIERALLOC_SHOW_STATS=1` prints the statistics.
extern "C" fn at_exit() {
    if SHOW_STATS.load(Ordering::Relaxed) {
        let s = HEAP.stats();
        let mut out = Out::stderr();
        out.bytes(b"tieralloc: statistics at exit (Go MemStats terms; bytes unless named)\n");
        let _ = write!(out, "{s}");
        out.finish();
    }
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = at_load;

#[used]
#[link_section = ".fini_array"]
static FINI: extern "C" fn() = at_exit;

// --------------------------------------------------------------------- fork

extern "C" fn fork_prepare() {
    HEAP.lock_all();
}

extern "C" fn fork_parent() {
    // SAFETY: this thread ran `fork_prepare`.
    unsafe { HEAP.unlock_all() };
}

extern "C" fn fork_child() {
    // SAFETY: the parent thread we were forked from ran `fork_prepare`.
    unsafe { HEAP.unlock_all() };
    // Only the forking thread lives on in the child: the child's next
    // allocation past the fast path starts a background thread of its own
    // (not here: creating a thread in a fork handler is not safe). Until
    // then the decay runs on heap activity, as it does with no thread.
    if BACKGROUND_RUNNING.swap(false, Ordering::Relaxed) {
        SETUP.store(RESTART_THREAD, Ordering::Release);
    }
}

// -------------------------------------------------------------- the C ABI

/// # Safety
/// C's `malloc`.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    // No test of the set-up here: the fast path serves only once the
    // caches are published, and the first allocation that publishes them
    // comes through `malloc_slow` (or Rust code in this library), which
    // sets up first.
    let p = HEAP.allocate_fast(size);
    if !p.is_null() {
        return p.cast();
    }
    malloc_slow(size)
}

/// `malloc` past its fast path: the set-up, sizes over 1 KiB or zero, a
/// refill, the locked mode.
#[inline(never)]
extern "C" fn malloc_slow(size: usize) -> *mut c_void {
    alloc_layout(plain_layout(size))
}

/// # Safety
/// C's `free`: `p` is NULL or a live pointer from this allocator.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: the caller's pointer (a live one is not used afterwards); the
    // C ABI never makes tiny objects. NULL finds no span, so the fast path
    // leaves it to `free_slow`.
    unsafe { HEAP.deallocate_fast_or(p.cast(), |p| free_slow(p.cast())) }
}

/// `free` past its fast path: NULL, large objects, the locked mode, and
/// every pointer that needs a report.
#[inline(never)]
extern "C" fn free_slow(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    // SAFETY: as in `free`.
    if let Err(e) = unsafe { HEAP.try_deallocate_unsized(p.cast()) } {
        bad_free("free", p, e);
    }
}

/// # Safety
/// C's `calloc`.
#[no_mangle]
pub unsafe extern "C" fn calloc(n: usize, m: usize) -> *mut c_void {
    ensure_set_up();
    let Some(l) = n.checked_mul(m).and_then(plain_layout) else {
        return enomem();
    };
    let p = HEAP.allocate_zeroed(l);
    if p.is_null() {
        return enomem();
    }
    p.cast()
}

/// # Safety
/// C's `realloc`: `p` is NULL or a live pointer from this allocator.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if p.is_null() {
        return alloc_layout(plain_layout(size));
    }
    if size == 0 {
        // glibc: free and return NULL.
        // SAFETY: forwarded from the caller.
        unsafe { free(p) };
        return null_mut();
    }
    let old = checked_usable("realloc", p);
    let Some(new) = plain_layout(size) else {
        return enomem();
    };
    let want = new.size();
    if old > MAX_SMALL_SIZE || want > old {
        // A large object (a span of its own), or any growth: the core resizes
        // a span in place when it can (shrinking frees the tail, growing takes
        // free following pages), promotes a small object growing past 16 KiB
        // to a span of its own, else moves; the page map says which the
        // object is.
        // SAFETY: a live, non-tiny object (C objects never are); `new` is a Layout.
        let q = unsafe { HEAP.reallocate_unsized(p.cast(), want, new.align()) };
        if q.is_null() {
            return enomem();
        }
        return q.cast();
    }
    // A small object (or a small-span large object from a big alignment): keep
    // it while the new size fits and would not waste more than half the slot.
    if want <= old && want * 2 >= old {
        return p;
    }
    let q = alloc_layout(Some(new));
    if !q.is_null() {
        // SAFETY: distinct live blocks of at least `min(old, want)` bytes; `p` is ours.
        unsafe {
            core::ptr::copy_nonoverlapping(p.cast::<u8>(), q.cast::<u8>(), old.min(want));
            HEAP.deallocate_unsized(p.cast());
        }
    }
    q
}

/// # Safety
/// glibc's `reallocarray`.
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, m: usize) -> *mut c_void {
    match n.checked_mul(m) {
        // SAFETY: forwarded from the caller.
        Some(size) => unsafe { realloc(p, size) },
        None => enomem(),
    }
}

/// # Safety
/// POSIX `posix_memalign`: `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(core::mem::size_of::<*mut c_void>()) {
        return libc::EINVAL;
    }
    let saved = errno();
    let p = alloc_layout(aligned_layout(align, size));
    if p.is_null() {
        set_errno(saved);
        return libc::ENOMEM;
    }
    // SAFETY: the caller's out pointer.
    unsafe { *out = p };
    0
}

fn errno() -> c_int {
    // SAFETY: glibc's thread-local errno.
    unsafe { *libc::__errno_location() }
}

/// # Safety
/// C17 `aligned_alloc`.
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return null_mut();
    }
    alloc_layout(aligned_layout(align, size))
}

/// # Safety
/// glibc's `memalign`.
#[no_mangle]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    if align > usize::MAX / 2 + 1 {
        set_errno(libc::EINVAL);
        return null_mut();
    }
    // Below MIN_ALIGN (0 included) means MIN_ALIGN; others round up to a power of two.
    alloc_layout(aligned_layout(align.max(1).next_power_of_two(), size))
}

fn os_page() -> usize {
    // SAFETY: no preconditions; glibc answers from the auxv, without allocating.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// # Safety
/// glibc's `valloc`.
#[no_mangle]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    alloc_layout(aligned_layout(os_page(), size))
}

/// # Safety
/// glibc's `pvalloc`.
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let page = os_page();
    match size.max(1).checked_next_multiple_of(page) {
        Some(n) => alloc_layout(aligned_layout(page, n)),
        None => enomem(),
    }
}

/// # Safety
/// glibc's `malloc_usable_size`: `p` is NULL or a live pointer from this allocator.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    if p.is_null() {
        return 0;
    }
    HEAP.try_usable_size(p.cast()).unwrap_or(0)
}

/// # Safety
/// C23 `free_sized`: `p` is NULL or from `malloc`/`calloc`/`realloc` with `size`.
#[no_mangle]
pub unsafe extern "C" fn free_sized(p: *mut c_void, size: usize) {
    // SAFETY: as in `free`.
    unsafe {
        HEAP.deallocate_fast_sized_or(p.cast(), size, move |p| free_sized_slow(p.cast(), size))
    }
}

/// `free_sized` past its fast path, which reports a wrong size.
#[inline(never)]
extern "C" fn free_sized_slow(p: *mut c_void, size: usize) {
    if p.is_null() {
        return;
    }
    let usable = checked_usable("free_sized", p);
    if size > usable {
        invalid_pointer(
            "free_sized",
            p,
            Detail::Number("size larger than the object's slot: ", size),
        );
    }
    // SAFETY: as in `free`.
    unsafe { HEAP.deallocate_unsized(p.cast()) };
}

/// # Safety
/// C23 `free_aligned_sized`: `p` is NULL or from `aligned_alloc(align, size)`.
#[no_mangle]
pub unsafe extern "C" fn free_aligned_sized(p: *mut c_void, align: usize, size: usize) {
    if p.is_null() {
        return;
    }
    let usable = checked_usable("free_aligned_sized", p);
    if size > usable {
        invalid_pointer(
            "free_aligned_sized",
            p,
            Detail::Number("size larger than the object's slot: ", size),
        );
    }
    if align.is_power_of_two() && p as usize & (align - 1) != 0 {
        invalid_pointer(
            "free_aligned_sized",
            p,
            Detail::Number("pointer not aligned to ", align),
        );
    }
    // SAFETY: as in `free`.
    unsafe { HEAP.deallocate_unsized(p.cast()) };
}

/// # Safety
/// glibc's `malloc_trim`; `pad` is ignored (every free page is released).
#[no_mangle]
pub unsafe extern "C" fn malloc_trim(_pad: usize) -> c_int {
    (HEAP.scavenge() > 0) as c_int
}

/// glibc's `struct mallinfo2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Mallinfo2 {
    pub arena: usize,
    pub ordblks: usize,
    pub smblks: usize,
    pub hblks: usize,
    pub hblkhd: usize,
    pub usmblks: usize,
    pub fsmblks: usize,
    pub uordblks: usize,
    pub fordblks: usize,
    pub keepcost: usize,
}

/// glibc's `struct mallinfo` (int fields, truncated as glibc does).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Mallinfo {
    pub arena: c_int,
    pub ordblks: c_int,
    pub smblks: c_int,
    pub hblks: c_int,
    pub hblkhd: c_int,
    pub usmblks: c_int,
    pub fsmblks: c_int,
    pub uordblks: c_int,
    pub fordblks: c_int,
    pub keepcost: c_int,
}

/// `arena` = bytes obtained from the OS, `uordblks` = bytes in live objects
/// (class-rounded), `fordblks` = the rest of `arena`, `hblkhd` = bytes in
/// large objects, `hblks` = live spans, `fsmblks` = bytes of free cached
/// objects, `keepcost` = bytes already released to the OS.
#[no_mangle]
pub extern "C" fn mallinfo2() -> Mallinfo2 {
    let s = HEAP.stats();
    Mallinfo2 {
        arena: s.heap_sys as usize,
        ordblks: 0,
        smblks: 0,
        hblks: s.spans as usize,
        hblkhd: s.large_alloc as usize,
        usmblks: 0,
        fsmblks: s.cached_bytes as usize,
        uordblks: s.heap_alloc as usize,
        fordblks: s.heap_sys.saturating_sub(s.heap_alloc) as usize,
        keepcost: s.heap_released as usize,
    }
}

/// As [`mallinfo2`], truncated to `int`.
#[no_mangle]
pub extern "C" fn mallinfo() -> Mallinfo {
    let m = mallinfo2();
    Mallinfo {
        arena: m.arena as c_int,
        ordblks: m.ordblks as c_int,
        smblks: m.smblks as c_int,
        hblks: m.hblks as c_int,
        hblkhd: m.hblkhd as c_int,
        usmblks: m.usmblks as c_int,
        fsmblks: m.fsmblks as c_int,
        uordblks: m.uordblks as c_int,
        fordblks: m.fordblks as c_int,
        keepcost: m.keepcost as c_int,
    }
}

/// glibc's `malloc_stats`: glibc's lines on stderr, then tieralloc's
/// statistics table (Go MemStats terms, per class). `system bytes` = bytes
/// of arenas not given back to the OS plus the allocator's metadata; `in
/// use bytes` = bytes in live objects (class-rounded); the `max mmap`
/// lines give the large objects live now (tieralloc keeps no maximum).
#[no_mangle]
pub extern "C" fn malloc_stats() {
    let s = HEAP.stats();
    let system = s.heap_sys.saturating_sub(s.heap_released) + s.meta_sys;
    let mut out = Out::stderr();
    for head in ["Arena 0:", "Total (incl. mmap):"] {
        let _ = writeln!(
            out,
            "{head}\nsystem bytes     = {system:>10}\nin use bytes     = {:>10}",
            s.heap_alloc
        );
    }
    let _ = writeln!(
        out,
        "max mmap regions = {:>10}\nmax mmap bytes   = {:>10}",
        s.by_size[0].live(),
        s.large_alloc
    );
    out.bytes(b"tieralloc statistics (Go MemStats terms; bytes unless named):\n");
    let _ = write!(out, "{s}");
    out.finish();
}

/// glibc's `malloc_info`: the XML of glibc's shape (`<malloc version="1">`,
/// one `<heap nr="0">`), with tieralloc's figures: a `<size>` row per class
/// with live objects (`count` objects, `total` bytes; glibc lists free
/// chunks there), `total type="fast"` = free objects in the caches,
/// `"rest"` = free pages not yet given back, `"mmap"` = large objects,
/// `system type="current"` = arena bytes not given back, `"max"` = arena
/// bytes obtained. `options` must be 0: otherwise it returns `EINVAL`, as
/// glibc does (the value, not errno). Returns -1 if a write failed.
///
/// # Safety
/// `fp` is a valid `FILE *` open for writing (NULL returns `EINVAL`).
#[no_mangle]
pub unsafe extern "C" fn malloc_info(options: c_int, fp: *mut libc::FILE) -> c_int {
    if options != 0 || fp.is_null() {
        return libc::EINVAL;
    }
    // The figures first; the stream (which may allocate its buffer) after.
    let s = HEAP.stats();
    let mut out = Out::new(Sink::File(fp));
    let _ = writeln!(out, "<malloc version=\"1\">\n<heap nr=\"0\">\n<sizes>");
    let mut from = 1;
    for row in &s.by_size[1..] {
        if row.live() != 0 {
            let _ = writeln!(
                out,
                "  <size from=\"{from}\" to=\"{}\" total=\"{}\" count=\"{}\"/>",
                row.size,
                row.live().wrapping_mul(row.size),
                row.live()
            );
        }
        from = row.size + 1;
    }
    out.bytes(b"</sizes>\n");
    let current = s.heap_sys.saturating_sub(s.heap_released);
    let free_pages = s.heap_idle.saturating_sub(s.heap_released);
    let totals = |out: &mut Out, mmap: bool| {
        let _ = writeln!(
            out,
            "<total type=\"fast\" count=\"0\" size=\"{}\"/>\n<total type=\"rest\" count=\"0\" size=\"{free_pages}\"/>",
            s.cached_bytes
        );
        if mmap {
            let _ = writeln!(
                out,
                "<total type=\"mmap\" count=\"{}\" size=\"{}\"/>",
                s.by_size[0].live(),
                s.large_alloc
            );
        }
        let _ = writeln!(
            out,
            "<system type=\"current\" size=\"{current}\"/>\n<system type=\"max\" size=\"{}\"/>\n\
             <aspace type=\"total\" size=\"{}\"/>\n<aspace type=\"mprotect\" size=\"{current}\"/>",
            s.heap_sys, s.heap_sys
        );
    };
    totals(&mut out, false);
    out.bytes(b"</heap>\n");
    totals(&mut out, true);
    out.bytes(b"</malloc>\n");
    if out.finish() {
        0
    } else {
        -1
    }
}

/// glibc's `mallopt`: `M_TRIM_THRESHOLD` (-1) sets the retained floor
/// ([`Heap::set_retain_bytes`](core_alloc::Heap::set_retain_bytes): free
/// memory below it is never given back) and returns 1; every other option
/// (glibc's arenas, mmap threshold, top pad, ...) means nothing here and
/// returns 0, as glibc does for an option it does not know.
#[no_mangle]
pub extern "C" fn mallopt(param: c_int, value: c_int) -> c_int {
    const M_TRIM_THRESHOLD: c_int = -1;
    match param {
        M_TRIM_THRESHOLD if value >= 0 => {
            HEAP.set_retain_bytes(value as usize);
            1
        }
        _ => 0,
    }
}
