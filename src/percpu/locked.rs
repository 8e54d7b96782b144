//! The fallback: per-CPU operations committed under the CPU slot's
//! exclusivity ([`Cpu::with_current`]: interrupts off in a kernel, a
//! per-slot lock elsewhere), and the stand-in for restartable sequences in
//! builds that have none. See [`super`] for the tier.
//!
//! Every operation enters the calling CPU's slot once and runs the cache's
//! exclusive operation ([`CpuCache`]) inside it; a drain enters another
//! CPU's slot with [`Cpu::with_slot`].

use core::ptr::null_mut;

use crate::sizeclass::SizeClass;

use core::marker::PhantomData;

use super::cache::{CacheLayout, CpuCache, Shape, TinyEvent};
use super::cpu::Cpu;
use super::word::Tiny;

/// The caches of a heap reached through slot exclusivity.
///
/// Invariant: `caches` points to `cpu.count()` caches of `layout`, 64-byte
/// aligned, that live for ever.
pub(crate) struct Locked<'a, C, K> {
    pub(crate) cpu: &'a C,
    pub(crate) caches: *mut u8,
    /// The installed layout (`K::FIXED`'s, if it has one, is used instead).
    pub(crate) layout: &'a CacheLayout,
    pub(crate) _shape: PhantomData<K>,
}

impl<'a, C: Cpu, K: Shape> Locked<'a, C, K> {
    /// Cache `i` (for exclusive use under its slot, or for racy reads of its words).
    #[inline(always)]
    pub(crate) fn cache(&self, i: usize) -> CpuCache<'a> {
        debug_assert!(i < self.cpu.count());
        // SAFETY: `i < count` (the `Cpu` contract bounds every index it
        // passes), and the caches, of `layout`, live for ever (the type's
        // invariant).
        unsafe { CpuCache::at(self.caches, i, K::FIXED.unwrap_or(self.layout)) }
    }

    /// Pops an object of class `c` on the current CPU; with it, whether
    /// that malloc is due a decay tick. Null and true if there is none (see
    /// [`super::Slabs::pop`]).
    #[inline(always)]
    pub(crate) fn pop(&self, c: SizeClass) -> (*mut u8, bool) {
        self.cpu
            .with_current(|i| self.cache(i).pop(c).unwrap_or((null_mut(), true)))
    }

    /// Pushes `p` on the current CPU; false if the stack is full.
    #[inline(always)]
    pub(crate) fn push(&self, c: SizeClass, p: *mut u8) -> bool {
        self.cpu.with_current(|i| self.cache(i).push(c, p))
    }

    /// Pushes `p` unless `elsewhere`, asked with the current CPU's index
    /// inside its slot, says the object belongs to another CPU (`None`).
    #[inline(always)]
    pub(crate) fn push_owned(
        &self,
        c: SizeClass,
        p: *mut u8,
        elsewhere: impl FnOnce(usize) -> bool,
    ) -> Option<bool> {
        self.cpu
            .with_current(|i| (!elsewhere(i)).then(|| self.cache(i).push(c, p)))
    }

    /// Pushes as many of `objs` as fit on the current CPU; returns how many.
    pub(crate) fn push_batch(&self, c: SizeClass, objs: &[*mut u8]) -> usize {
        self.cpu.with_current(|i| self.cache(i).push_batch(c, objs))
    }

    /// Pops up to `out.len()` objects on the current CPU; returns how many.
    pub(crate) fn pop_batch(&self, c: SizeClass, out: &mut [*mut u8]) -> usize {
        self.cpu.with_current(|i| self.cache(i).pop_batch(c, out))
    }

    /// Carves from the current CPU's tiny block.
    #[inline(always)]
    pub(crate) fn carve(&self, size: usize, a: usize) -> *mut u8 {
        self.cpu.with_current(|i| self.cache(i).carve(size, a))
    }

    /// The current CPU's index and tiny state.
    pub(crate) fn tiny(&self) -> (usize, Tiny) {
        self.cpu.with_current(|i| (i, self.cache(i).tiny()))
    }

    /// Stores `new` as CPU `i`'s tiny state if it still is `old`.
    pub(crate) fn replace_tiny(&self, i: usize, old: Tiny, new: Tiny) -> bool {
        self.cpu
            .with_slot(i, || self.cache(i).replace_tiny(old, new))
    }

    /// Adds to a counter of the current CPU.
    pub(crate) fn add(&self, k: TinyEvent, delta: u64) {
        self.cpu.with_current(|i| self.cache(i).add(k, delta));
    }

    /// The calling CPU's index.
    pub(crate) fn current_cpu(&self) -> usize {
        self.cpu.with_current(|i| i)
    }
}

// The stand-in, compiled where `mod.rs` chooses it.

/// Restartable sequences where none are compiled in (every target but Linux
/// x86-64): never published, so the tier always takes the [`Locked`] path.
#[cfg(not(rseq))]
pub(crate) struct Sections;

#[cfg(not(rseq))]
impl Sections {
    /// Never published.
    pub(crate) const fn new() -> Self {
        Sections
    }

    /// No rseq area can be used here.
    #[cfg_attr(not(feature = "linux"), allow(dead_code))] // `LinuxCpu` asks
    pub(crate) fn available() -> Option<i64> {
        None
    }

    /// Publishes nothing: false.
    ///
    /// # Safety
    /// None needed; `unsafe` to match the sections' signature.
    pub(crate) unsafe fn publish(
        &self,
        _caches: *mut u8,
        _count: usize,
        _off: i64,
        _g: &crate::sizeclass::Geometry,
    ) -> bool {
        false
    }

    /// Always `None`.
    #[inline(always)]
    pub(crate) fn get(&self) -> Option<Fast> {
        None
    }

    /// Always `None`.
    ///
    /// # Safety
    /// None needed; `unsafe` to match the sections' signature.
    #[inline(always)]
    pub(crate) unsafe fn get_settled(&self) -> Option<Fast> {
        None
    }

    /// Always `None` (nothing is ever published here).
    ///
    /// # Safety
    /// None needed; `unsafe` to match the sections' signature.
    #[inline(always)]
    pub(crate) unsafe fn get_published(&self) -> Option<Fast> {
        None
    }
}

/// The published sections that do not exist here: an uninhabited type, so
/// every branch on an `Option<Fast>` compiles to its `None` arm alone.
#[cfg(not(rseq))]
#[derive(Clone, Copy)]
pub(crate) enum Fast {}

#[cfg(not(rseq))]
impl Fast {
    pub(crate) fn pop(self, _c: SizeClass) -> (*mut u8, bool) {
        match self {}
    }
    pub(crate) fn pop_step(self, _i: usize) -> (*mut u8, bool) {
        match self {}
    }
    pub(crate) fn push(self, _c: SizeClass, _p: *mut u8) -> bool {
        match self {}
    }
    pub(crate) fn push_owned(
        self,
        _c: SizeClass,
        _p: *mut u8,
        _owner: crate::units::Owner,
    ) -> Option<bool> {
        match self {}
    }
    pub(crate) fn push_batch(self, _c: SizeClass, _objs: &[*mut u8]) -> usize {
        match self {}
    }
    pub(crate) fn pop_batch(self, _c: SizeClass, _out: &mut [*mut u8]) -> usize {
        match self {}
    }
    pub(crate) fn carve(self, _size: usize, _a: usize) -> *mut u8 {
        match self {}
    }
    pub(crate) fn tiny(self) -> Option<(usize, Tiny)> {
        match self {}
    }
    pub(crate) fn replace_tiny(self, _cpu: usize, _old: Tiny, _new: Tiny) -> bool {
        match self {}
    }
    pub(crate) fn add(self, _k: TinyEvent, _delta: u64) -> bool {
        match self {}
    }
    pub(crate) fn cpu(self) -> usize {
        match self {}
    }
    pub(crate) fn enroll(self) {
        match self {}
    }
    pub(crate) fn exclusive<R>(
        self,
        _cache: &CpuCache<'_>,
        _i: usize,
        _f: impl FnOnce() -> R,
    ) -> Option<R> {
        match self {}
    }
}
