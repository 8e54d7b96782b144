//! tieralloc as the C allocator: `LD_PRELOAD=libtieralloc.so program`.
//!
//! Exports glibc's malloc family over one static [`LinuxHeap`] (which is also
//! this library's own `#[global_allocator]`, so Rust code inside uses the same
//! heap and nothing here depends on another allocator):
//!
//! | function | semantics (glibc's) |
//! | --- | --- |
//! | `malloc(n)` | 16-byte aligned (`max_align_t`); `malloc(0)` is a unique pointer; ENOMEM + NULL on failure |
//! | `free(p)` | unsized: the span is found through the page map; NULL is a no-op; a pointer this heap never returned aborts with its address |
//! | `calloc(n, m)` | overflow of `n * m` fails with ENOMEM; fresh large spans are not rewritten |
//! | `realloc(p, n)` | `realloc(NULL, n)` = `malloc(n)`; `realloc(p, 0)` frees `p` and returns NULL; on failure `p` is untouched; a small object shrinks in place while it would use at least half its slot; growth goes through the core's unsized `realloc` (past 16 KiB the buffer gets a span of its own and grows in place when the pages after it are free) |
//! | `reallocarray(p, n, m)` | `realloc` with an overflow check |
//! | `posix_memalign(&p, a, n)` | EINVAL unless `a` is a power of two multiple of `sizeof(void *)`; ENOMEM on failure |
//! | `aligned_alloc(a, n)` | C17/DR 460 (and glibc 2.38+): EINVAL + NULL unless `a` is a power of two |
//! | `memalign(a, n)` | glibc: `a` below 16 means 16, a non-power of two rounds up, `a > SIZE_MAX/2 + 1` is EINVAL |
//! | `valloc(n)` / `pvalloc(n)` | page aligned; `pvalloc` rounds the size up to whole pages |
//! | `malloc_usable_size(p)` | the object's slot size (class size, or the large span's bytes); 0 for NULL or a foreign pointer |
//! | `free_sized(p, n)` / `free_aligned_sized(p, a, n)` | C23; the size is only checked against the slot (larger aborts), the free is unsized |
//! | `malloc_trim(pad)` | [`Heap::scavenge`](core_alloc::Heap::scavenge): 1 if memory went back to the OS |
//! | `mallinfo2()` / `mallinfo()` | from [`Heap::stats`](core_alloc::Heap::stats) |
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
//!   [`Heap::try_usable_size`](core_alloc::Heap::try_usable_size), which never
//!   panics, before any core call that would panic on them. Invalid ones are
//!   reported with `write(2)` from a stack buffer and `abort()`: reporting never
//!   allocates.
//! * **fork.** `pthread_atfork(lock_all, unlock_all, unlock_all)` is registered
//!   on the first allocation. An atomic state word makes that one-shot and
//!   re-entrant: if `pthread_atfork` itself calls `malloc` (glibc 2.36 does not
//!   for its first 48 handlers, but may past that), the inner call sees
//!   "registering" and allocates normally; no heap lock is held meanwhile.
//!   Being registered first, our prepare handler runs last and our child
//!   handler first, so other libraries' handlers may allocate.
//! * **Threads.** The heap keeps per-CPU caches, not per-thread ones: threads
//!   created before or after the library is loaded need no set-up and leave
//!   nothing behind when they exit.

use core::alloc::Layout;
use core::ffi::{c_int, c_void};
use core::ptr::null_mut;
use core::sync::atomic::{AtomicU8, Ordering};

use core_alloc::{LinuxHeap, MAX_SMALL_SIZE};

/// The one heap: behind the C functions and Rust's allocator alike.
#[global_allocator]
static HEAP: LinuxHeap = LinuxHeap::new();

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
    ensure_atfork();
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

/// The slot size of `p`, or abort naming `func` and the address.
#[inline(always)]
fn checked_usable(func: &str, p: *mut c_void) -> usize {
    match HEAP.try_usable_size(p.cast()) {
        Some(n) => n,
        None => invalid_pointer(func, p, None),
    }
}

/// Writes `tieralloc: <func>(): invalid pointer 0x…` to stderr and aborts,
/// without allocating.
#[cold]
#[inline(never)]
fn invalid_pointer(func: &str, p: *mut c_void, detail: Option<(&str, usize)>) -> ! {
    let mut buf = Msg {
        buf: [0; 256],
        len: 0,
    };
    buf.push(b"tieralloc: ");
    buf.push(func.as_bytes());
    buf.push(b"(): invalid pointer ");
    buf.hex(p as usize);
    match detail {
        Some((what, n)) => {
            buf.push(b": ");
            buf.push(what.as_bytes());
            buf.dec(n);
        }
        None => buf.push(b": not the start of a live object of this allocator (foreign, interior or freed pointer)"),
    }
    buf.push(b"\n");
    // SAFETY: writing our stack buffer to fd 2, then abort (no unwinding).
    unsafe {
        libc::write(2, buf.buf.as_ptr().cast(), buf.len);
        libc::abort()
    }
}

/// A fixed stack buffer for the abort message.
struct Msg {
    buf: [u8; 256],
    len: usize,
}

impl Msg {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }
    fn hex(&mut self, mut v: usize) {
        let mut d = [0u8; 18];
        let mut i = d.len();
        loop {
            i -= 1;
            d[i] = b"0123456789abcdef"[v & 15];
            v >>= 4;
            if v == 0 {
                break;
            }
        }
        i -= 2;
        d[i] = b'0';
        d[i + 1] = b'x';
        self.push(&d[i..]);
    }
    fn dec(&mut self, mut v: usize) {
        let mut d = [0u8; 20];
        let mut i = d.len();
        loop {
            i -= 1;
            d[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&d[i..]);
    }
}

// --------------------------------------------------------------------- fork

/// 0: not registered; 1: registering (a nested malloc passes through); 2: done.
static ATFORK: AtomicU8 = AtomicU8::new(0);

#[inline(always)]
fn ensure_atfork() {
    if ATFORK.load(Ordering::Relaxed) == 0 {
        register_atfork();
    }
}

#[cold]
#[inline(never)]
fn register_atfork() {
    if ATFORK
        .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
    {
        // SAFETY: plain function pointers with the C ABI. Failure (ENOMEM) leaves
        // fork unprotected, as it would be without the handlers.
        unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child)) };
        ATFORK.store(2, Ordering::Release);
    }
}

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
}

// -------------------------------------------------------------- the C ABI

/// # Safety
/// C's `malloc`.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    alloc_layout(plain_layout(size))
}

/// # Safety
/// C's `free`: `p` is NULL or a live pointer from this allocator.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    checked_usable("free", p);
    // SAFETY: `p` starts a live slot of this heap (checked above) and the
    // C ABI never makes tiny objects.
    unsafe { HEAP.deallocate_unsized(p.cast()) };
}

/// # Safety
/// C's `calloc`.
#[no_mangle]
pub unsafe extern "C" fn calloc(n: usize, m: usize) -> *mut c_void {
    ensure_atfork();
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
    if p.is_null() {
        return;
    }
    let usable = checked_usable("free_sized", p);
    if size > usable {
        invalid_pointer(
            "free_sized",
            p,
            Some(("size larger than the object's slot: ", size)),
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
            Some(("size larger than the object's slot: ", size)),
        );
    }
    if align.is_power_of_two() && p as usize & (align - 1) != 0 {
        invalid_pointer(
            "free_aligned_sized",
            p,
            Some(("pointer not aligned to ", align)),
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
