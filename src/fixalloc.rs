//! Fixed-size pools for the allocator's own metadata (Go's `mfixalloc.go`).
//! See `lib.rs` for the overview.
//!
//! Span structs and tiny-block counters must not come from the heap they
//! describe. A [`FixAlloc<T>`] carves records of one type out of
//! [`FIX_CHUNK_BYTES`] chunks taken straight from the [`PageSource`] and keeps
//! freed records on an intrusive free list (linked through their first word).
//! Chunks are never returned: metadata is a small, bounded fraction of the heap.
//!
//! Invariants: `inuse` equals the number of records handed out and not freed;
//! `sys_bytes` equals the bytes of chunks obtained from the source. The caller
//! serialises access (the page heap lock), which `&mut self` expresses.

use core::marker::PhantomData;
use core::mem::{align_of, size_of};
use core::ptr::{null_mut, NonNull};

use crate::source::PageSource;

/// Bytes taken from the source per chunk (Go's `_FixAllocChunk`).
pub const FIX_CHUNK_BYTES: usize = 16 * 1024;

struct FreeRecord {
    next: *mut FreeRecord,
}

/// A pool of records of type `T`.
pub struct FixAlloc<T> {
    /// Freed records, linked through their first word.
    free: *mut FreeRecord,
    /// Unused tail of the current chunk.
    chunk: *mut u8,
    chunk_left: usize,
    /// Records handed out and not freed.
    inuse: usize,
    /// Bytes obtained from the source.
    sys_bytes: usize,
    _t: PhantomData<T>,
}

// SAFETY: the pool owns its chunks outright; the raw pointers are into memory
// nobody else references, and access is serialised by `&mut self`.
unsafe impl<T> Send for FixAlloc<T> {}

impl<T> FixAlloc<T> {
    /// Bytes per record of a `T` followed by `tail` bytes that belong to it
    /// (a span's bitmaps), aligned for `T` and the free-list link.
    pub const fn record_bytes(tail: usize) -> usize {
        let a = if align_of::<T>() > align_of::<FreeRecord>() {
            align_of::<T>()
        } else {
            align_of::<FreeRecord>()
        };
        let t = size_of::<T>() + tail;
        let s = if t > size_of::<FreeRecord>() {
            t
        } else {
            size_of::<FreeRecord>()
        };
        s.next_multiple_of(a)
    }

    /// An empty pool; it takes nothing from the source until the first `alloc`.
    pub const fn new() -> Self {
        FixAlloc {
            free: null_mut(),
            chunk: null_mut(),
            chunk_left: 0,
            inuse: 0,
            sys_bytes: 0,
            _t: PhantomData,
        }
    }

    /// An `alloc_with(_, tail)` now would not take a chunk from the source.
    pub fn has_room(&self, tail: usize) -> bool {
        !self.free.is_null() || self.chunk_left >= Self::record_bytes(tail)
    }

    /// Gives the pool a chunk of `bytes` from elsewhere (the page heap's own
    /// pages, for a heap over small arenas); it counts in `sys_bytes`. The
    /// rest of the current chunk, under a record, is dropped.
    ///
    /// # Safety
    /// `chunk` is `bytes` of Ready memory, aligned for `T`, the pool's for ever.
    pub unsafe fn add_chunk(&mut self, chunk: NonNull<u8>, bytes: usize) {
        debug_assert!(chunk.as_ptr().addr().is_multiple_of(align_of::<T>()));
        self.chunk = chunk.as_ptr();
        self.chunk_left = bytes;
        self.sys_bytes += bytes;
    }

    /// Records in use.
    pub fn inuse(&self) -> usize {
        self.inuse
    }

    /// Bytes this pool took from the source.
    pub fn sys_bytes(&self) -> usize {
        self.sys_bytes
    }

    /// Uninitialised room for one `T` and `tail` bytes after it (the pointer
    /// may reach them), or `None` when the source is exhausted. The memory is
    /// zero only if the record is fresh and `S::ZEROED`; callers initialise
    /// every field. Every `alloc_with` of one pool passes the
    /// same `tail`: a freed record is handed out again as it is.
    pub fn alloc_with<S: PageSource>(&mut self, source: &S, tail: usize) -> Option<NonNull<T>> {
        let record = Self::record_bytes(tail);
        if let Some(rec) = NonNull::new(self.free) {
            // SAFETY: records on the free list are ours, aligned, and hold a `FreeRecord`.
            self.free = unsafe { rec.as_ref().next };
            self.inuse += 1;
            return Some(rec.cast());
        }
        if self.chunk_left < record {
            let bytes = if record > FIX_CHUNK_BYTES {
                record
            } else {
                FIX_CHUNK_BYTES
            };
            let chunk = source.alloc(bytes)?;
            self.sys_bytes += bytes.next_multiple_of(S::PAGE_SIZE);
            self.chunk = chunk.as_ptr();
            self.chunk_left = bytes;
        }
        let p = self.chunk;
        // SAFETY: `chunk_left >= record`, so the advanced pointer stays in (or one past) the chunk.
        self.chunk = unsafe { self.chunk.add(record) };
        self.chunk_left -= record;
        self.inuse += 1;
        // SAFETY: chunk pointers come from a successful `source.alloc`, never null.
        Some(unsafe { NonNull::new_unchecked(p.cast()) })
    }

    /// Returns a record to the pool.
    ///
    /// # Safety
    /// `p` came from `self.alloc_with`, is not used afterwards, and any `T` in it has
    /// been dropped (or needs no drop).
    pub unsafe fn free(&mut self, p: NonNull<T>) {
        let rec = p.cast::<FreeRecord>().as_ptr();
        // SAFETY: the record is ours again and large and aligned enough for a `FreeRecord`.
        unsafe { rec.write(FreeRecord { next: self.free }) };
        self.free = rec;
        self.inuse -= 1;
    }
}

impl<T> Default for FixAlloc<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, feature = "linux"))]
mod tests {
    use super::*;
    use crate::source::MmapSource;

    #[test]
    fn reuses_freed_records_and_counts() {
        let src = MmapSource::new();
        let mut pool: FixAlloc<[u64; 5]> = FixAlloc::new();
        let mut got = std::vec::Vec::new();
        for i in 0..2000u64 {
            let p = pool.alloc_with(&src, 0).unwrap();
            // SAFETY: fresh record of the right type.
            unsafe { p.as_ptr().write([i; 5]) };
            got.push(p);
        }
        assert_eq!(pool.inuse(), 2000);
        let per_chunk = FIX_CHUNK_BYTES / FixAlloc::<[u64; 5]>::record_bytes(0);
        assert_eq!(
            pool.sys_bytes(),
            2000usize.div_ceil(per_chunk) * FIX_CHUNK_BYTES
        );
        for (i, p) in got.iter().enumerate() {
            // SAFETY: written above and still live.
            assert_eq!(unsafe { p.as_ptr().read() }, [i as u64; 5]);
        }
        let last = got.pop().unwrap();
        // SAFETY: from this pool, not used again.
        unsafe { pool.free(last) };
        assert_eq!(
            pool.alloc_with(&src, 0).unwrap(),
            last,
            "LIFO reuse of the freed record"
        );
        assert_eq!(pool.inuse(), 2000);
    }
}
