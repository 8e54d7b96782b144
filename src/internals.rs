//! Internals for the crate's own integration tests, benchmarks and boards
//! (Go's `export_test.go`). **Not part of the public contract:** anything
//! here may change or go away in any release.

pub use crate::central::{REMOTE_MAX, TRANSFER_BYTES};
pub use crate::heap::transfer_capacity;
pub use crate::heap::{stays_in_class, ObjectKind, PROMOTE_MIN, SHRINK_MIN};
pub use crate::pageheap::{
    large_pages, Below, Decay, HeapLock, LargeCounts, Pacer, PageHeap, PageMap, PageStats,
    DEFAULT_RETAIN_BYTES, LARGE_CACHE_LIMIT_PAGES, LARGE_CACHE_MAX_PAGES,
    LARGE_CACHE_MAX_SPAN_PAGES, MIN_EPOCH_PAGES, PEAK_EPOCHS, RELEASE_GAP_DIVISOR,
    RETAIN_INUSE_DIVISOR,
};
pub use crate::percpu::capacity;
pub use crate::sizeclass::NUM_CLASSES;
pub use crate::sizeclass::{class_for, size_to_class, SizeClass, TINY_CLASS};
pub use crate::span::{Span, SpanState};
pub use crate::stack::STACK_CACHE_BOUND_BYTES;
pub use crate::units::{Addr, PageIdx, PageSize, Pages};

/// Go's pages in a chunk (`CHUNK_BYTES / PAGE_BYTES`).
pub const CHUNK_PAGES: usize = crate::CHUNK_BYTES / crate::PAGE_BYTES;

pub use crate::testing::Rng;

/// The calling thread's CPU id in the rseq area the process uses (glibc's
/// or the heap's own): −1 while the thread has not registered the heap's
/// own, −2 if that failed; `None` if the process uses no area.
#[cfg(rseq)]
pub fn rseq_cpu_id() -> Option<i32> {
    crate::percpu::rseq_cpu_id()
}
#[cfg(feature = "linux")]
pub use crate::testing::{in_child, ChildExit};
#[cfg(any(test, feature = "linux"))]
pub use crate::testing::{Call, CallCounts, CheckedSource, PageState};
