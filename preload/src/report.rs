//! Text out of the allocator without allocating: a stack buffer that
//! implements [`core::fmt::Write`] and flushes to a file descriptor with
//! `write(2)` or to a C `FILE *` with `fwrite`. See `lib.rs` for the layer's
//! invariants.
//!
//! Invariant: [`Out`] never allocates and never calls into the heap; with a
//! [`Sink::File`] it calls `fwrite`, which may allocate the stream's buffer,
//! so callers gather their figures first and hold no heap lock while
//! writing (the heap's own calls never hold one across a return anyway).

use core::ffi::c_void;
use core::fmt;

/// Bytes buffered before a flush.
const BUF_BYTES: usize = 1024;

/// Where [`Out`] writes.
#[derive(Clone, Copy)]
pub(crate) enum Sink {
    /// A file descriptor, through `write(2)` (stderr: 2).
    Fd(i32),
    /// A C stream, through `fwrite`.
    File(*mut libc::FILE),
}

/// A stack buffer in front of a [`Sink`].
///
/// Invariant: `len <= BUF_BYTES`; `buf[..len]` is what has not been flushed.
pub(crate) struct Out {
    buf: [u8; BUF_BYTES],
    len: usize,
    sink: Sink,
    /// A write to the sink failed (later ones are skipped).
    failed: bool,
}

impl Out {
    pub(crate) const fn new(sink: Sink) -> Self {
        Out {
            buf: [0; BUF_BYTES],
            len: 0,
            sink,
            failed: false,
        }
    }

    /// Standard error.
    pub(crate) const fn stderr() -> Self {
        Self::new(Sink::Fd(2))
    }

    /// Appends bytes, flushing whenever the buffer fills.
    pub(crate) fn bytes(&mut self, mut s: &[u8]) {
        while !s.is_empty() {
            if self.len == BUF_BYTES {
                self.flush();
            }
            let n = s.len().min(BUF_BYTES - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
            self.len += n;
            s = &s[n..];
        }
    }

    /// Appends `v` in hexadecimal with a `0x` prefix.
    pub(crate) fn hex(&mut self, mut v: usize) {
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
        self.bytes(&d[i..]);
    }

    /// Appends `v` in decimal.
    pub(crate) fn dec(&mut self, mut v: u64) {
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
        self.bytes(&d[i..]);
    }

    /// Writes out what is buffered.
    pub(crate) fn flush(&mut self) {
        let mut done = 0;
        while done < self.len && !self.failed {
            let rest = &self.buf[done..self.len];
            let n = match self.sink {
                // SAFETY: writing our own initialised bytes to a descriptor.
                Sink::Fd(fd) => unsafe {
                    libc::write(fd, rest.as_ptr().cast::<c_void>(), rest.len())
                },
                // SAFETY: the caller's stream (`malloc_info`'s contract: a
                // valid `FILE *`), our own bytes.
                Sink::File(f) => unsafe {
                    libc::fwrite(rest.as_ptr().cast::<c_void>(), 1, rest.len(), f) as isize
                },
            };
            if n > 0 {
                done += n as usize;
            } else if n < 0 && matches!(self.sink, Sink::Fd(_)) && last_errno() == libc::EINTR {
                continue;
            } else {
                self.failed = true;
            }
        }
        self.len = 0;
    }

    /// Flushes and says whether every write succeeded.
    pub(crate) fn finish(mut self) -> bool {
        self.flush();
        !self.failed
    }
}

impl fmt::Write for Out {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.bytes(s.as_bytes());
        Ok(())
    }
}

fn last_errno() -> i32 {
    // SAFETY: glibc's thread-local errno.
    unsafe { *libc::__errno_location() }
}
