//! The page heap's large-span cache: a freed large span idles whole and serves
//! the next large request of exactly its page count (and alignment); its
//! memory shows in `cached_bytes` and `heap_inuse`, never in `heap_alloc`; it
//! goes back to the page heap when the cache is full, when the heap would
//! otherwise fail, and on `scavenge()`.

use core::alloc::Layout;
use core::ptr::NonNull;

use tieralloc::internals::{
    large_pages, DEFAULT_RETAIN_BYTES, LARGE_CACHE_LIMIT_PAGES, LARGE_CACHE_MAX_PAGES,
    LARGE_CACHE_MAX_SPAN_PAGES,
};
use tieralloc::source::Exhausted;
use tieralloc::{Heap, PageSource, RegionSource, SingleCpu, PAGE_BYTES};

/// Go's page, the page of every heap these tests use.
const GO_PAGE: tieralloc::internals::PageSize = tieralloc::internals::PageSize::GO;

/// A region on Go's geometry (a `RegionSource` heap has pages of its own,
/// and the cache's bounds are in pages): every call and constant is the
/// region's but the geometry.
struct GoPagedRegion(RegionSource);

// SAFETY: every transition is the inner source's; the geometry's page (8 KiB)
// is a multiple of the region's PAGE_SIZE.
unsafe impl PageSource for GoPagedRegion {
    const PAGE_SIZE: usize = RegionSource::PAGE_SIZE;
    const ARENA_BYTES: usize = RegionSource::ARENA_BYTES;
    const SMALL_ARENAS: bool = RegionSource::SMALL_ARENAS;
    const ZEROED: bool = RegionSource::ZEROED;
    const CAN_RELEASE: bool = RegionSource::CAN_RELEASE;
    const CLOCK: bool = RegionSource::CLOCK;

    fn reserve(&self, bytes: usize, align: usize) -> Option<NonNull<u8>> {
        self.0.reserve(bytes, align)
    }
    unsafe fn commit(&self, addr: NonNull<u8>, bytes: usize) -> Result<(), Exhausted> {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.0.commit(addr, bytes) }
    }
    unsafe fn ready(&self, addr: NonNull<u8>, bytes: usize) -> Result<(), Exhausted> {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.0.ready(addr, bytes) }
    }
    unsafe fn release(&self, addr: NonNull<u8>, bytes: usize) {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.0.release(addr, bytes) }
    }
    unsafe fn fault(&self, addr: NonNull<u8>, bytes: usize) {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.0.fault(addr, bytes) }
    }
    unsafe fn free(&self, addr: NonNull<u8>, bytes: usize) {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.0.free(addr, bytes) }
    }
    fn alloc(&self, bytes: usize) -> Option<NonNull<u8>> {
        self.0.alloc(bytes)
    }
    fn bound(&self) -> Option<usize> {
        self.0.bound()
    }
    fn largest_free(&self, align: usize) -> usize {
        self.0.largest_free(align)
    }
}

type RegionHeap = Heap<GoPagedRegion, SingleCpu>;

/// A heap over an empty region on Go's geometry.
const fn region_heap() -> RegionHeap {
    Heap::new(GoPagedRegion(RegionSource::empty()), SingleCpu::new())
}

/// A region of `bytes`, leaked, given to `heap`'s source.
fn give_region(heap: &RegionHeap, bytes: usize) {
    let buf: &'static mut [u8] = vec![0u8; bytes].leak();
    // SAFETY: the buffer is leaked, so it is valid for the rest of the process
    // and nothing else uses it; the heap has not used its source yet.
    unsafe { heap.source().0.set_region(buf.as_mut_ptr(), buf.len()) };
}

fn lay(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

#[test]
fn freed_large_span_serves_the_next_request_of_its_size() {
    static H: RegionHeap = region_heap();
    give_region(&H, 64 << 20);
    let l = lay(100_000); // 13 pages, a span of 14
    let pages = large_pages(100_000, GO_PAGE).unwrap().get();
    assert_eq!(pages, 14);
    let p = H.allocate(l);
    assert!(!p.is_null());
    // SAFETY: allocated above with `l`.
    unsafe { p.write_bytes(0xa5, 100_000) };
    let before = H.stats();
    // SAFETY: as above.
    unsafe { H.deallocate(p, l) };
    let st = H.stats();
    assert_eq!(
        st.cached_bytes - before.cached_bytes,
        (pages * PAGE_BYTES) as u64,
        "{st}"
    );
    assert_eq!(
        st.heap_inuse, before.heap_inuse,
        "an idle span stays in use:\n{st}"
    );
    assert_eq!(
        st.heap_alloc,
        before.heap_alloc - (pages * PAGE_BYTES) as u64,
        "{st}"
    );
    assert_eq!(st.by_size[0].frees, before.by_size[0].frees + 1);
    // Another size does not take it; the same size does, and zeroed memory is zeroed.
    let q = H.allocate(lay(200_000));
    assert!(!q.is_null() && q != p);
    let z = H.allocate_zeroed(l);
    assert_eq!(
        z, p,
        "the idle span of 13 pages serves the next 13-page request"
    );
    // SAFETY: 100,000 bytes of a live object.
    assert!(
        unsafe { core::slice::from_raw_parts(z, 100_000) }
            .iter()
            .all(|&b| b == 0),
        "reused span zeroed on request"
    );
    assert_eq!(H.usable_size(z), pages * PAGE_BYTES);
    H.check_invariants();
    // SAFETY: live objects with these layouts.
    unsafe {
        H.deallocate(z, l);
        H.deallocate(q, lay(200_000));
    }
    let st = H.stats();
    assert_eq!(st.heap_alloc, 0, "{st}");
    assert_eq!(st.heap_inuse, st.cached_bytes, "{st}");
    H.scavenge();
    let st = H.stats();
    assert_eq!(
        (st.heap_inuse, st.cached_bytes, st.spans),
        (0, 0, 0),
        "scavenge empties the cache:\n{st}"
    );
    H.check_invariants();
}

#[test]
fn cache_is_bounded_and_alignment_is_respected() {
    static H: RegionHeap = region_heap();
    give_region(&H, 64 << 20);
    // More idle spans than the bound holds: some go back.
    let l = lay(64 << 10);
    let fit = LARGE_CACHE_MAX_PAGES.get() / 8;
    let ps: Vec<*mut u8> = (0..fit + 5).map(|_| H.allocate(l)).collect();
    for &p in &ps {
        // SAFETY: allocated above with `l`.
        unsafe { H.deallocate(p, l) };
    }
    let st = H.stats();
    assert_eq!(st.cached_bytes as usize, fit * (64 << 10), "{st}");
    H.check_invariants();
    // Big spans: at most LARGE_CACHE_MAX_PAGES.get() pages idle in all; bigger than
    // LARGE_CACHE_MAX_SPAN_PAGES.get() never idle.
    let big = lay(LARGE_CACHE_MAX_SPAN_PAGES.get() * PAGE_BYTES);
    let bs: Vec<*mut u8> = (0..8).map(|_| H.allocate(big)).collect();
    for &p in &bs {
        // SAFETY: as above.
        unsafe { H.deallocate(p, big) };
    }
    let st = H.stats();
    assert!(
        st.cached_bytes as usize <= LARGE_CACHE_MAX_PAGES.get() * PAGE_BYTES,
        "{st}"
    );
    let huge = lay((LARGE_CACHE_MAX_SPAN_PAGES.get() + 1) * PAGE_BYTES);
    let h = H.allocate(huge);
    let before = H.stats().cached_bytes;
    // SAFETY: as above.
    unsafe { H.deallocate(h, huge) };
    assert_eq!(
        H.stats().cached_bytes,
        before,
        "spans over 1 MiB are not kept"
    );
    // An alignment the idle spans may not have: served correctly either way.
    let a =
        Layout::from_size_align(LARGE_CACHE_MAX_SPAN_PAGES.get() * PAGE_BYTES, 1 << 20).unwrap();
    let p = H.allocate(a);
    assert!(!p.is_null() && (p as usize).is_multiple_of(1 << 20));
    // SAFETY: as above.
    unsafe { H.deallocate(p, a) };
    H.check_invariants();
}

/// A double free of a large object whose span idles in the cache is caught.
#[test]
fn double_free_of_an_idle_span_panics_with_the_address() {
    static H: RegionHeap = region_heap();
    give_region(&H, 16 << 20);
    let l = lay(50_000);
    let p = H.allocate(l);
    // SAFETY: allocated above with `l`.
    unsafe { H.deallocate(p, l) };
    let err = std::panic::catch_unwind(|| unsafe { H.deallocate(p, l) })
        .expect_err("double free must panic");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains(&format!("{p:p}")) && msg.contains("double free"),
        "{msg}"
    );
    H.check_invariants();
}

/// Idle spans go back before an allocation fails: once the heap is full, the
/// only room for a bigger request is idle spans merged back together.
#[test]
fn idle_spans_are_given_back_before_out_of_memory() {
    static H: RegionHeap = region_heap();
    give_region(&H, 16 << 20);
    let l = lay(256 << 10);
    let mut ps = Vec::new();
    loop {
        let p = H.allocate(l);
        if p.is_null() {
            break;
        }
        ps.push(p);
    }
    // The newest objects become idle spans: as many as the cache's bound holds.
    let nidle = LARGE_CACHE_MAX_PAGES.get() * PAGE_BYTES / (256 << 10);
    assert!(
        ps.len() >= nidle + 8,
        "{} objects of 256 KiB in 16 MiB",
        ps.len()
    );
    let idle = ps.split_off(ps.len() - nidle);
    for &p in &idle {
        // SAFETY: allocated above with `l`.
        unsafe { H.deallocate(p, l) };
    }
    assert_eq!(H.stats().cached_bytes as usize, nidle << 18);
    let big = lay(1 << 20);
    let b = H.allocate(big);
    assert!(
        !b.is_null(),
        "idle spans must be flushed before reporting out of memory:\n{}",
        H.stats()
    );
    assert_eq!(H.stats().cached_bytes, 0);
    // SAFETY: live objects with these layouts.
    unsafe {
        H.deallocate(b, big);
        for &p in &ps {
            H.deallocate(p, l);
        }
    }
    H.check_invariants();
}

#[test]
fn a_larger_retained_floor_lets_the_cache_hold_a_quarter_of_it() {
    static H: RegionHeap = region_heap();
    give_region(&H, 160 << 20);
    let l = lay(64 << 10);
    // Frees `n` objects of 64 KiB allocated together; returns the bytes idle after.
    let idle_after_freeing = |n: usize| {
        let ps: Vec<*mut u8> = (0..n).map(|_| H.allocate(l)).collect();
        assert!(ps.iter().all(|p| !p.is_null()));
        for &p in &ps {
            // SAFETY: allocated above with `l`.
            unsafe { H.deallocate(p, l) };
        }
        H.check_invariants();
        H.stats().cached_bytes as usize
    };
    let per_mib = (1 << 20) / (64 << 10);
    // Default floor (16 MiB): 4 MiB.
    assert_eq!(
        idle_after_freeing(8 * per_mib),
        LARGE_CACHE_MAX_PAGES.get() * PAGE_BYTES
    );
    // A 64 MiB floor: a quarter, 16 MiB.
    H.set_retain_bytes(64 << 20);
    assert_eq!(idle_after_freeing(20 * per_mib), 16 << 20);
    // Any floor: at most LARGE_CACHE_LIMIT_PAGES.get().
    H.set_retain_bytes(1 << 30);
    assert_eq!(
        idle_after_freeing(40 * per_mib),
        LARGE_CACHE_LIMIT_PAGES.get() * PAGE_BYTES
    );
    // Lowering the floor gives the excess back at once.
    H.set_retain_bytes(DEFAULT_RETAIN_BYTES);
    let st = H.stats();
    assert_eq!(
        st.cached_bytes as usize,
        LARGE_CACHE_MAX_PAGES.get() * PAGE_BYTES,
        "{st}"
    );
    assert_eq!(st.heap_alloc, 0, "{st}");
    H.check_invariants();
}

/// When the scavenger releases pages, idle spans go back to the heap only as
/// far as the release needs: here there are dirty free pages enough, so the
/// cache stays full.
#[cfg(feature = "linux")]
#[test]
fn releasing_pages_does_not_empty_the_cache_needlessly() {
    use tieralloc::{MmapSource, SingleCpu as One};
    static H: Heap<MmapSource, One> = Heap::new(MmapSource::new(), One::new());
    H.set_retain_bytes(0);
    let big = lay(3 << 19); // 1.5 MiB: never idles
    let bigs: Vec<*mut u8> = (0..40).map(|_| H.allocate(big)).collect();
    let l = lay(64 << 10);
    let small: Vec<*mut u8> = (0..LARGE_CACHE_MAX_PAGES.get() * PAGE_BYTES / (64 << 10))
        .map(|_| H.allocate(l))
        .collect();
    assert!(bigs.iter().chain(&small).all(|p| !p.is_null()));
    for &p in &small {
        // SAFETY: allocated above with `l`.
        unsafe { H.deallocate(p, l) };
    }
    assert_eq!(
        H.stats().cached_bytes as usize,
        LARGE_CACHE_MAX_PAGES.get() * PAGE_BYTES
    );
    // Freeing most of the big objects, then churning a small heap until the
    // old peak ages out (`pageheap`, "Scavenger policy"), drops the allowance
    // below the dirty memory: the scavenger releases, from the freed big
    // objects' pages.
    for &p in &bigs[..36] {
        // SAFETY: allocated above with `big`.
        unsafe { H.deallocate(p, big) };
    }
    let two = lay(2 << 20); // not cached either
    for _ in 0..4 * tieralloc::internals::PEAK_EPOCHS {
        let p = H.allocate(two);
        assert!(!p.is_null());
        // SAFETY: allocated just above with `two`.
        unsafe { H.deallocate(p, two) };
    }
    let st = H.stats();
    assert!(st.heap_released > 0, "the scavenger ran:\n{st}");
    assert_eq!(
        st.cached_bytes as usize,
        LARGE_CACHE_MAX_PAGES.get() * PAGE_BYTES,
        "idle spans kept:\n{st}"
    );
    H.check_invariants();
    for &p in &bigs[36..] {
        // SAFETY: as above.
        unsafe { H.deallocate(p, big) };
    }
    assert_eq!(H.stats().heap_alloc, 0);
    H.check_invariants();
}

/// An idle span right after a large object is free memory to `realloc`: the
/// object grows over it in place, and the cache lets it go.
#[test]
fn realloc_grows_over_idle_spans_in_place() {
    static H: RegionHeap = region_heap();
    give_region(&H, 64 << 20);
    let l = lay(64 << 10);
    let a = H.allocate(l);
    let b = H.allocate(l);
    let c = H.allocate(l);
    assert!(!a.is_null() && !b.is_null() && !c.is_null());
    assert_eq!(
        b as usize,
        a as usize + (64 << 10),
        "a fresh heap places spans one after another"
    );
    assert_eq!(c as usize, b as usize + (64 << 10));
    for (p, v) in [(a, 1u8), (c, 3)] {
        // SAFETY: live objects of 64 KiB.
        unsafe { p.write_bytes(v, 64 << 10) };
    }
    // SAFETY: allocated above with `l`.
    unsafe { H.deallocate(b, l) };
    assert_eq!(H.stats().cached_bytes, 64 << 10, "b idles in the cache");
    // a grows over b's idle pages, not into c.
    // SAFETY: `a` is live with `l`.
    let a2 = unsafe { H.reallocate(a, l, 128 << 10) };
    assert_eq!(a2, a, "grown in place over the idle span");
    assert_eq!(H.stats().cached_bytes, 0, "the idle span was given back");
    assert_eq!(H.usable_size(a), 128 << 10);
    // SAFETY: 64 KiB of `a` and of `c` are initialised.
    unsafe {
        assert!(core::slice::from_raw_parts(a, 64 << 10)
            .iter()
            .all(|&x| x == 1));
        assert!(
            core::slice::from_raw_parts(c, 64 << 10)
                .iter()
                .all(|&x| x == 3),
            "the live neighbour is untouched"
        );
    }
    H.check_invariants();
    // A live span in the way: the object moves, and keeps its contents.
    // SAFETY: `a` is live with 128 KiB.
    let a3 = unsafe { H.reallocate(a, lay(128 << 10), 192 << 10) };
    assert!(!a3.is_null() && a3 != a);
    // SAFETY: the first 64 KiB were copied.
    assert!(unsafe { core::slice::from_raw_parts(a3, 64 << 10) }
        .iter()
        .all(|&x| x == 1));
    // SAFETY: live objects with these layouts.
    unsafe {
        H.deallocate(a3, lay(192 << 10));
        H.deallocate(c, l);
    }
    assert_eq!(H.stats().heap_alloc, 0);
    H.check_invariants();
}
