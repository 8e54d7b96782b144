//! The stack front: stacks from the heap's stack allocator ([`crate::stack`],
//! Go's stackpool and stackcache) through a per-CPU stack cache, set up with
//! the per-CPU caches. See `lib.rs` ("Stacks") and [`super`].
//!
//! A stack cache is reached under its CPU's slot ([`Cpu::with_current`]),
//! in rseq mode too: stacks are rare enough that the slot lock costs nothing
//! that matters.

use crate::pageheap::Below;
use crate::percpu::Cpu;
use crate::source::PageSource;
use crate::stack::{self, Stack, StackStats};
use crate::sync::atomic::Ordering;

use super::Heap;

impl<S: PageSource, C: Cpu> Heap<S, C> {
    /// A stack of at least `bytes` (Go's stack allocator: power-of-two orders of
    /// 8–64 KiB carved from spans through a per-CPU stack cache, larger stacks
    /// from the page heap). With `guard`, the page below the stack faults on
    /// access (the source's Reserved state); guarded stacks have spans of their own.
    pub fn alloc_stack(&self, bytes: usize, guard: bool) -> Option<Stack> {
        self.guarded(|| {
            if let Some(f) = self.fine() {
                return Self::fine_stack(f, &self.source, bytes);
            }
            let below = self.below();
            self.caches()?;
            let caches = self.stack_caches.load(Ordering::Acquire);
            if caches.is_null() || !stack::uses_cache(bytes, guard) {
                return self.stacks.alloc(&below, None, bytes, guard);
            }
            self.cpu().with_current(|i| {
                // SAFETY: `i < count` (the caches were set up for `count` CPUs)
                // and slot `i` is held for the closure, so the cache is ours alone.
                let cache = unsafe { &mut *caches.add(i) };
                self.stacks.alloc(&below, Some(cache), bytes, guard)
            })
        })
    }

    /// Frees a stack.
    ///
    /// # Safety
    /// `stack` came from this heap's `alloc_stack` and nothing uses it any more.
    pub unsafe fn free_stack(&self, stack: Stack) {
        self.guarded(|| {
            if let Some(f) = self.fine() {
                let mut g = f.lock();
                if let Err(why) = g.free(stack.base.as_ptr(), Some(stack.size)) {
                    drop(g);
                    self.fine_refused(stack.base.as_ptr(), why);
                }
                g.count_stack(stack.size, false);
                return;
            }
            let below = self.below();
            let caches = self.stack_caches.load(Ordering::Acquire);
            if caches.is_null() || stack.order().is_none() {
                // SAFETY: forwarded from the caller.
                return unsafe { self.stacks.free(&below, None, stack) };
            }
            // SAFETY: forwarded from the caller; `i < count` and slot `i` is held.
            self.cpu().with_current(|i| unsafe {
                self.stacks.free(&below, Some(&mut *caches.add(i)), stack)
            })
        })
    }

    /// Stack statistics (stack spans also count in `heap_inuse`, as pages in use).
    pub fn stack_stats(&self) -> StackStats {
        self.guarded(|| match self.fine() {
            Some(f) => {
                let st = f.lock().stats();
                StackStats {
                    inuse_stacks: st.stacks as u64,
                    inuse_bytes: st.stack_bytes as u64,
                    sys_bytes: st.stack_bytes as u64,
                    ..StackStats::default()
                }
            }
            None => self.stacks.stats(),
        })
    }

    /// Gives every CPU's cached stacks back to the pools (`scavenge`).
    pub(super) fn drain_stack_caches(&self, below: &Below<'_, S, C::Relax>) {
        let sc = self.stack_caches.load(Ordering::Acquire);
        if sc.is_null() {
            return;
        }
        for i in 0..self.cpu().count() {
            // SAFETY: `i < count`, and slot `i` is held for the closure.
            self.cpu()
                .with_slot(i, || self.stacks.drain(below, unsafe { &mut *sc.add(i) }));
        }
    }
}
