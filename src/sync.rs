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

/// The atomics of the tiers (re-exported from `core`).
pub(crate) mod atomic {
    #[allow(unused_imports)] // each configuration uses some
    pub(crate) use core::sync::atomic::{
        AtomicBool, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
    };
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
