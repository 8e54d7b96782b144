//! Running a closure in a forked child, for tests of what must fault (guard
//! pages, faulted ranges): the parent sees how the child ended.

/// How a forked child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChildExit(libc::c_int);

impl ChildExit {
    /// The child returned from the closure (exit status 0).
    pub fn exited_ok(self) -> bool {
        libc::WIFEXITED(self.0) && libc::WEXITSTATUS(self.0) == 0
    }

    /// The child died of SIGSEGV.
    pub fn segfaulted(self) -> bool {
        libc::WIFSIGNALED(self.0) && libc::WTERMSIG(self.0) == libc::SIGSEGV
    }

    /// The raw `waitpid` status.
    pub fn status(self) -> libc::c_int {
        self.0
    }
}

/// Runs `f` in a forked child with SIGSEGV at its default action, and
/// waits for it.
///
/// `f` runs in a copy of the process with only the calling thread: it should
/// do plain memory accesses (what these tests probe), nothing that takes a
/// lock another thread may have held at the fork.
pub fn in_child(f: impl FnOnce()) -> ChildExit {
    // SAFETY: the child only runs `f` (plain memory accesses, the caller's
    // promise) and the async-signal-safe `signal` and `_exit`; the parent
    // only waits for it.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // Default action for SIGSEGV: no std handler in the way.
            libc::signal(libc::SIGSEGV, libc::SIG_DFL);
            f();
            libc::_exit(0);
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid, "waitpid");
        ChildExit(status)
    }
}
