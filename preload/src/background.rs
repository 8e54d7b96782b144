//! The optional background thread (`TIERALLOC_BACKGROUND_THREAD=1`, off by
//! default, like jemalloc's `background_thread`): it polls the heap's decay
//! every quarter of the decay period, so that a program that goes quiet
//! still gives its idle memory back. See `lib.rs` for when it starts and how
//! it survives `fork`.
//!
//! Invariant: the thread never allocates and holds no heap lock while it
//! sleeps; [`Heap::decay`](core_alloc::Heap::decay) only try-locks the page
//! heap, so the thread can never block an allocating thread, nor `fork`'s
//! `lock_all`.

use core::ffi::c_void;
use core::mem::MaybeUninit;
use core::ptr::null_mut;

/// Stack of the thread: it calls the decay and `nanosleep`, nothing deeper.
const STACK_BYTES: usize = 64 << 10;

/// Starts a detached thread that calls [`crate::HEAP`]'s decay every
/// `period_ms` milliseconds, with every signal blocked. Returns whether the
/// thread was created.
///
/// `pthread_create` allocates (the thread's TLS vectors): callers must be
/// where a nested `malloc` is served normally (no heap lock held).
pub(crate) fn start(period_ms: u64) -> bool {
    // The period rides in the argument pointer: no allocation for it.
    let arg = period_ms.clamp(1, usize::MAX as u64) as usize as *mut c_void;
    let mut attr = MaybeUninit::<libc::pthread_attr_t>::uninit();
    let mut all = MaybeUninit::<libc::sigset_t>::uninit();
    let mut old = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: each pthread/sigset call gets pointers to our own live locals,
    // initialised by the call before it (attr_init, sigfillset); the attribute
    // is destroyed after use, the signal mask restored.
    unsafe {
        if libc::pthread_attr_init(attr.as_mut_ptr()) != 0 {
            return false;
        }
        libc::pthread_attr_setdetachstate(attr.as_mut_ptr(), libc::PTHREAD_CREATE_DETACHED);
        let min = libc::sysconf(libc::_SC_THREAD_STACK_MIN).max(0) as usize;
        libc::pthread_attr_setstacksize(attr.as_mut_ptr(), STACK_BYTES.max(min));
        libc::sigfillset(all.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), old.as_mut_ptr());
        let mut t = MaybeUninit::<libc::pthread_t>::uninit();
        // The thread inherits the mask: it never runs a signal handler.
        let r = libc::pthread_create(t.as_mut_ptr(), attr.as_ptr(), run, arg);
        libc::pthread_sigmask(libc::SIG_SETMASK, old.as_ptr(), null_mut());
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        if r == 0 {
            libc::pthread_setname_np(t.assume_init(), c"tieralloc-bg".as_ptr());
        }
        r == 0
    }
}

extern "C" fn run(arg: *mut c_void) -> *mut c_void {
    let period_ms = arg as usize as u64;
    let ts = libc::timespec {
        tv_sec: (period_ms / 1000) as libc::time_t,
        tv_nsec: ((period_ms % 1000) * 1_000_000) as libc::c_long,
    };
    loop {
        // SAFETY: a valid timespec; an early wake-up (a signal cannot reach
        // this thread, but a ptrace stop can) only ticks early.
        unsafe { libc::nanosleep(&ts, null_mut()) };
        crate::HEAP.decay();
    }
}
