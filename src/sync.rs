//! The synchronisation every tier shares: the lock type, cache-line padding,
//! and the atomics. See `lib.rs` for the overview and the lock order.
//!
//! Every lock of the heap is a [`Lock`]: a spin lock whose waiters relax with
//! the strategy of the heap's [`Cpu`](crate::Cpu) (spin in a kernel, spin then
//! yield on Linux). Nothing here allocates or blocks in the OS.
//!
//! The tiers take their atomic types from [`atomic`], not from `core`
//! directly, so that a target without some atomic operation has one place to
//! supply it.

pub(crate) use spin::relax::RelaxStrategy;

/// The atomics of the tiers: `core`'s where the target has them, else
/// `portable-atomic`'s (see `Cargo.toml`). 64-bit atomics are only ever
/// counters and statistics, off the fast paths, so a 32-bit target's
/// lock-based fallback for them costs nothing where it matters.
pub(crate) mod atomic {
    pub(crate) use core::sync::atomic::Ordering;

    #[cfg(target_has_atomic = "ptr")]
    #[allow(unused_imports)] // each configuration uses some
    pub(crate) use core::sync::atomic::{
        AtomicBool, AtomicPtr, AtomicU16, AtomicU32, AtomicU8, AtomicUsize,
    };
    #[cfg(not(target_has_atomic = "ptr"))]
    #[allow(unused_imports)]
    pub(crate) use portable_atomic::{
        AtomicBool, AtomicPtr, AtomicU16, AtomicU32, AtomicU8, AtomicUsize,
    };

    #[cfg(target_has_atomic = "64")]
    #[allow(unused_imports)]
    pub(crate) use core::sync::atomic::{AtomicI64, AtomicU64};
    #[cfg(not(target_has_atomic = "64"))]
    pub(crate) use portable_atomic::AtomicU64;
}

/// A lock of the heap: a spin mutex whose waiters relax with `X`.
pub(crate) type Lock<T, X> = spin::mutex::SpinMutex<T, X>;

/// Bytes of a cache line, the unit of false sharing (64 on every CPU the
/// crate targets; the tiny block is one line, [`crate::TINY_BLOCK`]).
pub(crate) const LINE_BYTES: usize = 64;

/// A value on a cache line of its own, so that two of them in an array (the
/// central lists, the remote lists, the stack pools) never share a line.
#[repr(align(64))]
pub(crate) struct Padded<T>(pub(crate) T);

const _: () = assert!(core::mem::align_of::<Padded<u8>>() == LINE_BYTES);

impl<T> core::ops::Deref for Padded<T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        &self.0
    }
}
