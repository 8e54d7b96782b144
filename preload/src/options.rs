//! The environment variables, read once at set-up without allocating. See
//! `lib.rs` for when set-up runs and `preload/README.md` for the user's view.
//!
//! | variable | values | default |
//! | --- | --- | --- |
//! | `TIERALLOC_SHOW_STATS` | `0`, `1`: print the `Stats` table to stderr at exit | `0` |
//! | `TIERALLOC_VERBOSE` | `0`, `1`: report the set-up and warnings to stderr | `0` |
//! | `TIERALLOC_DECAY_MS` | milliseconds; `0` turns the decay off | `1000` |
//! | `TIERALLOC_RETAIN_BYTES` | bytes, with an optional `K`, `M` or `G` (binary) | 16 MiB |
//! | `TIERALLOC_BACKGROUND_THREAD` | `0`, `1`: a thread polls the decay every quarter period | `0` |
//! | `TIERALLOC_NO_RSEQ` | `0`, `1`: per-CPU locks instead of rseq (read by the core too) | `0` |
//!
//! Invariant: reading never allocates and never calls into the heap. The
//! values come from glibc's `getenv`, which only walks `environ`; a bad
//! value is reported with one line on stderr from a stack buffer
//! ([`crate::report::Out`]) and the default is kept. An empty value counts
//! as unset.

use core::ffi::{c_char, CStr};

use crate::report::Out;

/// The options of one process (values already parsed; `None`: the default).
#[derive(Clone, Copy, Default)]
pub(crate) struct Options {
    pub(crate) show_stats: bool,
    pub(crate) verbose: bool,
    /// `Some(0)`: decay off.
    pub(crate) decay_ms: Option<u64>,
    pub(crate) retain_bytes: Option<usize>,
    pub(crate) background_thread: bool,
    pub(crate) no_rseq: bool,
}

/// Reads every variable, warning about bad values on stderr.
pub(crate) fn read() -> Options {
    Options {
        show_stats: flag(c"TIERALLOC_SHOW_STATS"),
        verbose: flag(c"TIERALLOC_VERBOSE"),
        decay_ms: number(
            c"TIERALLOC_DECAY_MS",
            false,
            "a number of milliseconds (0: off)",
        ),
        retain_bytes: number(
            c"TIERALLOC_RETAIN_BYTES",
            true,
            "a number of bytes, optionally with K, M or G",
        )
        .map(|b| b.min(usize::MAX as u64) as usize),
        background_thread: flag(c"TIERALLOC_BACKGROUND_THREAD"),
        no_rseq: flag(c"TIERALLOC_NO_RSEQ"),
    }
}

/// The value of `name`, if set and not empty.
fn get(name: &CStr) -> Option<&'static [u8]> {
    // SAFETY: a NUL-terminated name; a non-null result points into the
    // environment, a NUL-terminated string that stays (nobody calls setenv
    // during our set-up, and the bytes are used before it returns).
    unsafe {
        let v: *const c_char = libc::getenv(name.as_ptr());
        if v.is_null() {
            return None;
        }
        let b = CStr::from_ptr(v).to_bytes();
        (!b.is_empty()).then_some(b)
    }
}

/// A `0`/`1` variable.
fn flag(name: &CStr) -> bool {
    match get(name) {
        None | Some(b"0") => false,
        Some(b"1") => true,
        Some(v) => {
            bad(name, v, "0 or 1");
            false
        }
    }
}

/// A decimal number, with a binary `K`/`M`/`G` suffix when `suffix`.
fn number(name: &CStr, suffix: bool, expected: &str) -> Option<u64> {
    let v = get(name)?;
    let parsed = parse_number(v, suffix);
    if parsed.is_none() {
        bad(name, v, expected);
    }
    parsed
}

/// `digits[K|M|G]`, no sign, no overflow.
pub(crate) fn parse_number(v: &[u8], suffix: bool) -> Option<u64> {
    let (digits, shift) = match v.last() {
        Some(b'k' | b'K') if suffix => (&v[..v.len() - 1], 10),
        Some(b'm' | b'M') if suffix => (&v[..v.len() - 1], 20),
        Some(b'g' | b'G') if suffix => (&v[..v.len() - 1], 30),
        _ => (v, 0),
    };
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add((d - b'0') as u64)?;
    }
    n.checked_mul(1 << shift)
}

/// `tieralloc: ignoring NAME=VALUE: expected …; the default is kept`.
fn bad(name: &CStr, value: &[u8], expected: &str) {
    let mut o = Out::stderr();
    o.bytes(b"tieralloc: ignoring ");
    o.bytes(name.to_bytes());
    o.bytes(b"=");
    // A hostile value could be long: the first 64 bytes say enough.
    o.bytes(&value[..value.len().min(64)]);
    o.bytes(b": expected ");
    o.bytes(expected.as_bytes());
    o.bytes(b"; the default is kept\n");
    o.finish();
}
