//! The heap over one fixed region: the embedded / no-MMU configuration
//! (`Heap<RegionSource, SingleCpu>`). The region cannot give memory back
//! (`CAN_RELEASE` is false) and is not zeroed (`ZEROED` is false).
//!
//! Each test has a heap of its own (a `static` built with
//! `RegionSource::empty()`, given its region at the start of the test, as a
//! kernel would at boot), over a leaked 64 MiB buffer.

mod common;

use core::alloc::Layout;

use common::{rounded_in, Rng};
use tieralloc::internals::CheckedSource;
use tieralloc::{Heap, PageSource, RegionSource, SingleCpu, Stats, TINY_BLOCK};

/// The region source under the checking source, so every test also checks
/// the heap's calls against the state machine and the region's reservations
/// against each other.
type Source = CheckedSource<RegionSource, { RegionSource::ARENA_BYTES }>;
type RegionHeap = Heap<Source, SingleCpu>;

const MIB: usize = 1 << 20;
const REGION: usize = 64 * MIB;

/// A fresh heap (checked source) over a leaked, zeroed region of `len` bytes.
fn heap_of(len: usize) -> Box<RegionHeap> {
    let buf: &'static mut [u8] = vec![0u8; len].leak();
    let heap = Box::new(Heap::new(
        Source::new(RegionSource::empty()),
        SingleCpu::new(),
    ));
    // SAFETY: the buffer is leaked and unused; the heap has not used its source.
    unsafe {
        heap.source()
            .inner()
            .set_region(buf.as_mut_ptr(), buf.len())
    };
    heap
}

/// [`heap_of`], served by the tiers even where the region is small enough
/// for a fine heap ([`Heap::prefer_tiers`]).
fn tiered_heap_of(len: usize) -> Box<RegionHeap> {
    let heap = heap_of(len);
    assert!(heap.prefer_tiers());
    heap
}

/// A 64 MiB region filled with `byte`, leaked, given to `heap`'s source.
fn give_region(heap: &RegionHeap, byte: u8) -> (usize, usize) {
    let buf: &'static mut [u8] = vec![byte; REGION].leak();
    let (base, len) = (buf.as_mut_ptr(), buf.len());
    // SAFETY: the buffer is leaked, so it is valid for the rest of the process
    // and nothing else uses it; the heap has not used its source yet.
    unsafe { heap.source().inner().set_region(base, len) };
    (base as usize, len)
}

/// Mixed requests: tiny, small of every size, large up to 2 MiB; mostly
/// 8-aligned, some up to 64 KiB.
fn mixed_layout(rng: &mut Rng) -> Layout {
    let size = match rng.range(0, 99) {
        0..=14 => rng.range(1, 15),
        15..=64 => rng.range(16, 1024),
        65..=89 => rng.range(1025, 32768),
        _ => rng.range(32769, 2 * MIB),
    };
    let align = match rng.range(0, 99) {
        0..=79 => 8,
        80..=89 => 16,
        90..=98 => 1 << rng.range(0, 12),
        _ => 64 << 10,
    };
    Layout::from_size_align(size, align).unwrap()
}

#[inline(always)]
fn pat(tag: u8, i: usize) -> u8 {
    tag ^ (i as u8).wrapping_mul(13) ^ (i >> 9) as u8
}

/// Writes the pattern (all of a small object; head, tail and every 4 KiB of a large one).
fn fill(p: *mut u8, size: usize, tag: u8) {
    for i in sample(size) {
        // SAFETY: `i < size`, the object is ours.
        unsafe { *p.add(i) = pat(tag, i) };
    }
}

fn verify(p: *mut u8, size: usize, tag: u8) {
    for i in sample(size) {
        // SAFETY: `i < size`, the object is ours.
        let b = unsafe { *p.add(i) };
        assert_eq!(
            b,
            pat(tag, i),
            "object {p:p} of {size} bytes corrupt at byte {i}"
        );
    }
}

fn sample(size: usize) -> impl Iterator<Item = usize> {
    let full = size <= 64 << 10;
    (0..size).filter(move |&i| full || i < 64 || i >= size - 64 || i % 4096 < 16)
}

#[derive(Clone, Copy)]
struct Obj {
    p: *mut u8,
    layout: Layout,
    tag: u8,
}

fn check(heap: &RegionHeap, live: &[Obj], rel: &mut Released) -> Stats {
    check_within(heap, live, rel, REGION)
}

/// Bytes `o` takes in `heap`'s accounting: none for a tiny object (its
/// block counts), else its slot or span. The class of a small object is the
/// heap's (a region of tens of kilobytes serves from coarser classes than
/// the geometry's), so the slot is asked of the heap; that it holds the
/// object's size is checked against the geometry.
fn slot_bytes(heap: &RegionHeap, o: &Obj) -> u64 {
    if heap.is_fine() {
        // A fine heap's block: the size rounded to the granule (two words),
        // at least two granules, or one granule more (a rest too short to
        // be a block of its own).
        let n = heap.usable_size(o.p);
        let granule = 2 * core::mem::size_of::<usize>();
        let want = o.layout.size().next_multiple_of(granule).max(2 * granule);
        assert!(n == want || n == want + granule, "{:p}: {n} B", o.p);
        return n as u64;
    }
    let g = rounded_in(Source::GEOMETRY, o.layout);
    if g == 0 {
        return 0;
    }
    let n = heap.usable_size(o.p) as u64;
    assert!(
        n >= g,
        "{:p}: a slot of {n} B for {:?} (the geometry's: {g})",
        o.p,
        o.layout
    );
    n
}

/// [`check`] for a heap whose regions hold `regions` bytes in all.
fn check_within(heap: &RegionHeap, live: &[Obj], rel: &mut Released, regions: usize) -> Stats {
    heap.check_invariants();
    let st = heap.stats();
    assert_eq!(st.mallocs - st.frees, live.len() as u64, "{st}");
    assert_eq!(
        st.heap_alloc - TINY_BLOCK as u64 * st.tiny_blocks,
        live.iter().map(|o| slot_bytes(heap, o)).sum::<u64>(),
        "{st}"
    );
    assert_eq!(st.heap_idle, st.heap_sys - st.heap_inuse);
    assert!(st.heap_sys <= regions as u64, "{st}");
    rel.check(&st);
    // Nothing is ever given back. (Pages of a new arena start out "released",
    // i.e. Prepared, as in Go, so `heap_released` counts the pages never used
    // yet; it can only shrink while the heap does not grow, see `Released`.)
    assert_eq!(
        st.scavenged_total, 0,
        "a region cannot release memory\n{st}"
    );
    assert!(st.heap_released <= st.heap_idle, "{st}");
    st
}

/// Watches that `heap_released` never grows unless the heap does: a region
/// source releases nothing, so only fresh arena pages are ever "released".
struct Released {
    sys: u64,
    released: u64,
}

impl Released {
    fn new() -> Released {
        Released {
            sys: 0,
            released: 0,
        }
    }
    fn check(&mut self, st: &Stats) {
        // Span records come from arena pages over a region: heap_sys gives
        // them to meta_sys, and the two together never shrink.
        let sys = st.heap_sys + st.meta_sys;
        assert!(sys >= self.sys, "heap_sys + meta_sys shrank\n{st}");
        let grown = sys - self.sys;
        assert!(
            st.heap_released <= self.released + grown,
            "heap_released grew from {} to {} with heap_sys grown by {grown}: memory was released\n{st}",
            self.released,
            st.heap_released
        );
        self.sys = sys;
        self.released = st.heap_released;
    }
}

/// Allocates `mixed_layout`s until the first null; returns the objects.
fn fill_region(heap: &RegionHeap, seed: u64, (base, len): (usize, usize)) -> Vec<Obj> {
    let mut rng = Rng::new(seed);
    let mut live = Vec::new();
    loop {
        let l = mixed_layout(&mut rng);
        let p = heap.allocate(l);
        if p.is_null() {
            break;
        }
        assert_eq!(p as usize % l.align(), 0, "{l:?} at {p:p}");
        assert!(
            p as usize >= base && p as usize + l.size() <= base + len,
            "{l:?} at {p:p} is outside the region"
        );
        let tag = live.len() as u8;
        fill(p, l.size(), tag);
        live.push(Obj { p, layout: l, tag });
        assert!(live.len() < 10_000_000, "the region never ran out");
    }
    live
}

fn free_all(heap: &RegionHeap, live: &mut Vec<Obj>) {
    for o in live.drain(..) {
        verify(o.p, o.layout.size(), o.tag);
        // SAFETY: a live object of this heap, with its layout.
        unsafe { heap.deallocate(o.p, o.layout) };
    }
}

fn bytes(live: &[Obj]) -> usize {
    live.iter().map(|o| o.layout.size()).sum()
}

#[test]
fn fill_free_and_fill_again() {
    static HEAP: RegionHeap =
        Heap::new(CheckedSource::new(RegionSource::empty()), SingleCpu::new());
    const { assert!(!RegionSource::CAN_RELEASE && !RegionSource::ZEROED) };
    let region = give_region(&HEAP, 0x5A);
    let mut rel = Released::new();

    let mut first = fill_region(&HEAP, 1, region);
    let first_bytes = bytes(&first);
    let first_count = first.len();
    let st = check(&HEAP, &first, &mut rel);
    // The region is used: more than 3/4 of it holds objects.
    assert!(
        first_bytes > REGION / 4 * 3,
        "only {first_bytes} bytes of 64 MiB before the first null\n{st}"
    );
    // Once full, further requests of every kind fail cleanly.
    for (size, align) in [
        (1, 1),
        (100, 8),
        (5000, 8),
        (40000, 8),
        (MIB, 8),
        (8 * MIB, 4096),
    ] {
        let l = Layout::from_size_align(size, align).unwrap();
        let p = HEAP.allocate(l);
        if !p.is_null() {
            // A small class may still have a free object: fine, give it back.
            assert!(size <= 40000, "{l:?} succeeded in a full region");
            // SAFETY: just allocated with `l`.
            unsafe { HEAP.deallocate(p, l) };
        }
        assert!(HEAP
            .allocate_zeroed(Layout::from_size_align(4 * MIB, 8).unwrap())
            .is_null());
    }
    assert_eq!(HEAP.scavenge(), 0);
    check(&HEAP, &first, &mut rel);
    for o in &first {
        verify(o.p, o.layout.size(), o.tag);
    }

    free_all(&HEAP, &mut first);
    let st = check(&HEAP, &[], &mut rel);
    assert_eq!(st.heap_alloc, st.tiny_blocks * TINY_BLOCK as u64, "{st}");
    assert_eq!(HEAP.scavenge(), 0);
    let st = check(&HEAP, &[], &mut rel);
    assert_eq!((st.heap_inuse, st.heap_alloc, st.spans), (0, 0, 0), "{st}");

    // The same sequence again reaches about as far: the region was reused.
    let mut second = fill_region(&HEAP, 1, region);
    let second_bytes = bytes(&second);
    let st = check(&HEAP, &second, &mut rel);
    let diff = first_bytes.abs_diff(second_bytes);
    assert!(
        diff * 10 <= first_bytes,
        "first fill {first_bytes} bytes ({} objects), second {second_bytes} ({} objects)\n{st}",
        first_count,
        second.len()
    );
    // A different sequence too.
    free_all(&HEAP, &mut second);
    let mut third = fill_region(&HEAP, 2, region);
    let third_bytes = bytes(&third);
    check(&HEAP, &third, &mut rel);
    assert!(
        third_bytes > REGION / 4 * 3,
        "only {third_bytes} bytes on the third fill"
    );
    free_all(&HEAP, &mut third);
    assert_eq!(HEAP.scavenge(), 0);
    let st = check(&HEAP, &[], &mut rel);
    assert_eq!(
        (st.heap_inuse, st.heap_alloc, st.mallocs - st.frees),
        (0, 0, 0),
        "{st}"
    );
}

#[test]
fn small_objects_fill_the_region() {
    static HEAP: RegionHeap =
        Heap::new(CheckedSource::new(RegionSource::empty()), SingleCpu::new());
    let region = give_region(&HEAP, 0);
    let mut rel = Released::new();
    for round in 0..2 {
        let mut live = Vec::new();
        let l = Layout::from_size_align(64, 8).unwrap();
        loop {
            let p = HEAP.allocate(l);
            if p.is_null() {
                break;
            }
            assert!(p as usize >= region.0 && (p as usize) < region.0 + region.1);
            let tag = live.len() as u8;
            fill(p, 64, tag);
            live.push(Obj { p, layout: l, tag });
        }
        let st = check(&HEAP, &live, &mut rel);
        // Arenas are 4 MiB, chunk aligned, and metadata comes from the region too.
        assert!(
            live.len() * 64 > REGION / 10 * 8,
            "round {round}: {} objects of 64 B\n{st}",
            live.len()
        );
        free_all(&HEAP, &mut live);
        assert_eq!(HEAP.scavenge(), 0);
        let st = check(&HEAP, &[], &mut rel);
        assert_eq!(st.heap_inuse, 0, "{st}");
    }
}

/// Checks that `allocate_zeroed` returns all-zero memory for a spread of layouts.
fn zeroed_round(heap: &RegionHeap, rng: &mut Rng, live: &mut Vec<Obj>) {
    for _ in 0..3000 {
        let l = mixed_layout(rng);
        let p = heap.allocate_zeroed(l);
        assert!(!p.is_null(), "{l:?}");
        assert_eq!(p as usize % l.align(), 0);
        // SAFETY: a fresh block of `size` bytes.
        let s = unsafe { core::slice::from_raw_parts(p, l.size()) };
        if let Some(i) = s.iter().position(|&b| b != 0) {
            panic!("allocate_zeroed({l:?}) = {p:p}: byte {i} is {:#04x}", s[i]);
        }
        // Dirty it for the next round.
        // SAFETY: ours.
        unsafe { p.write_bytes(0xAA, l.size()) };
        live.push(Obj {
            p,
            layout: l,
            tag: 0,
        });
        if live.len() > 120 {
            let o = live.swap_remove(rng.range(0, live.len() - 1));
            // SAFETY: a live object with its layout.
            unsafe { heap.deallocate(o.p, o.layout) };
        }
    }
}

#[test]
fn allocate_zeroed_zeroes_dirty_memory() {
    static HEAP: RegionHeap =
        Heap::new(CheckedSource::new(RegionSource::empty()), SingleCpu::new());
    // The region starts out dirty: never-used memory is not zero either.
    give_region(&HEAP, 0xAA);
    let mut rel = Released::new();
    let mut rng = Rng::new(3);
    let mut live = Vec::new();
    zeroed_round(&HEAP, &mut rng, &mut live);
    check(&HEAP, &live, &mut rel);

    // Dirty memory that was used and freed, through every kind and class.
    for o in live.drain(..) {
        // SAFETY: as above.
        unsafe { HEAP.deallocate(o.p, o.layout) };
    }
    let mut dirty = Vec::new();
    for size in (1..=32768)
        .step_by(97)
        .chain([40000, 100_000, MIB, 3 * MIB])
    {
        let l = Layout::from_size_align(size, 8).unwrap();
        let p = HEAP.allocate(l);
        assert!(!p.is_null());
        // SAFETY: ours.
        unsafe { p.write_bytes(0xAA, size) };
        dirty.push((p, l));
    }
    for (p, l) in dirty.drain(..) {
        // SAFETY: ours, with its layout.
        unsafe { HEAP.deallocate(p, l) };
    }
    HEAP.scavenge(); // flushes the caches back to the spans (releases nothing)
    check(&HEAP, &[], &mut rel);
    for _ in 0..3 {
        zeroed_round(&HEAP, &mut rng, &mut live);
    }
    // Large objects whose pages were dirtied, freed and taken again.
    for size in [40000, 100_000, MIB, 3 * MIB] {
        let l = Layout::from_size_align(size, 8).unwrap();
        let p = HEAP.allocate(l);
        // SAFETY: ours.
        unsafe { p.write_bytes(0xAA, size) };
        // SAFETY: ours, with its layout.
        unsafe { HEAP.deallocate(p, l) };
        let q = HEAP.allocate_zeroed(l);
        // SAFETY: a fresh block of `size` bytes.
        let s = unsafe { core::slice::from_raw_parts(q, size) };
        assert!(
            s.iter().all(|&b| b == 0),
            "allocate_zeroed({size}) after a free of dirty pages"
        );
        // SAFETY: ours, with its layout.
        unsafe { HEAP.deallocate(q, l) };
    }
    check(&HEAP, &live, &mut rel);
    for o in live.drain(..) {
        // SAFETY: as above.
        unsafe { HEAP.deallocate(o.p, o.layout) };
    }
    assert_eq!(HEAP.scavenge(), 0);
    let st = check(&HEAP, &[], &mut rel);
    assert_eq!((st.heap_inuse, st.heap_alloc), (0, 0), "{st}");
}

/// A heap that runs out, is given a second region elsewhere in memory while
/// its objects are live, and goes on to fill that one too: its new objects
/// come from the new region, and every object of both keeps its contents.
#[test]
fn a_second_region_extends_a_full_heap() {
    static HEAP: RegionHeap =
        Heap::new(CheckedSource::new(RegionSource::empty()), SingleCpu::new());
    const SMALL: usize = 12 * MIB;
    let one: &'static mut [u8] = vec![0x11; SMALL].leak();
    let (b1, l1) = (one.as_mut_ptr() as usize, one.len());
    // SAFETY: the buffer is leaked, so it is valid for the rest of the
    // process and nothing else uses it; the heap has not used its source yet.
    unsafe { HEAP.source().inner().set_region(one.as_mut_ptr(), l1) };
    let mut rel = Released::new();
    let mut live = fill_region(&HEAP, 5, (b1, l1));
    assert!(!live.is_empty(), "nothing fit in the first region");
    check(&HEAP, &live, &mut rel);

    // A second region, not adjacent to the first (a separate allocation,
    // with a gap kept from the first just in case the system put them side
    // by side).
    let two: &'static mut [u8] = vec![0x22; REGION].leak();
    let (b2, l2) = (two.as_mut_ptr() as usize, two.len());
    assert!(b2 + l2 <= b1 || b1 + l1 <= b2, "the buffers overlap");
    // SAFETY: as above, for the second buffer; disjoint from the first.
    unsafe { HEAP.source().inner().add_region(two.as_mut_ptr(), l2) }.expect("add_region");
    assert_eq!(HEAP.source().inner().regions(), 2);
    // A region that overlaps is refused, and changes nothing.
    // SAFETY: refused, so never used.
    let again = unsafe {
        HEAP.source()
            .inner()
            .add_region((b2 + 4096) as *mut u8, 8192)
    };
    assert!(
        matches!(again, Err(tieralloc::source::RegionError::Overlaps { .. })),
        "{again:?}"
    );

    let mut rng = Rng::new(6);
    let mut in_second = 0;
    loop {
        let l = mixed_layout(&mut rng);
        let p = HEAP.allocate(l);
        if p.is_null() {
            break;
        }
        let a = p as usize;
        let inside = |b: usize, len: usize| a >= b && a + l.size() <= b + len;
        assert!(
            inside(b1, l1) || inside(b2, l2),
            "{l:?} at {p:p} outside both regions"
        );
        if inside(b2, l2) {
            in_second += l.size();
        }
        let tag = live.len() as u8;
        fill(p, l.size(), tag);
        live.push(Obj { p, layout: l, tag });
    }
    // The second region is used as the first was (more than half of it
    // holds objects: arenas are whole 4 MiB chunks, and the first null
    // comes with a request of up to 2 MiB).
    assert!(
        in_second > l2 / 2,
        "only {in_second} bytes of objects in the second region"
    );
    check_within(&HEAP, &live, &mut rel, SMALL + REGION);
    free_all(&HEAP, &mut live);
    let st = check_within(&HEAP, &live, &mut rel, SMALL + REGION);
    assert_eq!(st.mallocs, st.frees, "{st}");
}

/// Regions far under a 4 MiB chunk, from 8 KiB, at addresses no chunk
/// boundary aligns: the heap takes one arena of whatever the region has
/// left after its set-up, its span records from that arena's pages, and
/// fills it with objects of one size (at least `min_share` % of the region
/// in 64-byte objects) and then of mixed sizes, twice, contents checked.
#[test]
fn regions_under_a_chunk_serve_allocations() {
    // (region, share in 64-byte objects: tiered, fine)
    for (tiers, len, min_share) in [
        (8 << 10, 0, 75),
        (16 << 10, 0, 85),
        (64 << 10, 30, 95),
        (256 << 10, 50, 97),
        (MIB, 60, 97),
        (3 * MIB, 70, 70),
    ]
    .into_iter()
    .flat_map(|(len, t, f)| [(true, len, t), (false, len, f)])
    {
        let buf: &'static mut [u8] = vec![0x3Cu8; len + 4096].leak();
        // An odd offset: the region's start is not even page aligned.
        // SAFETY: `100 + len` bytes inside the leaked buffer, nothing else uses them.
        let (base, region) = unsafe {
            (
                buf.as_mut_ptr().add(100),
                buf.as_mut_ptr().add(100) as usize,
            )
        };
        let heap = Box::new(Heap::new(
            CheckedSource::<RegionSource, { RegionSource::ARENA_BYTES }>::new(RegionSource::empty()),
            SingleCpu::new(),
        ));
        // SAFETY: as above; the heap has not used its source yet.
        unsafe { heap.source().inner().set_region(base, len) };
        if tiers {
            heap.prefer_tiers();
        }
        assert_eq!(heap.is_fine(), !tiers && len <= tieralloc::FINE_MAX_BYTES);
        let mut rel = Released::new();
        let mut counts = Vec::new();
        for round in 0..2 {
            let l = Layout::from_size_align(64, 8).unwrap();
            let mut live = Vec::new();
            loop {
                let p = heap.allocate(l);
                if p.is_null() {
                    break;
                }
                assert!(
                    p as usize >= region && p as usize + 64 <= region + len,
                    "{p:p} outside the region"
                );
                let tag = live.len() as u8;
                fill(p, 64, tag);
                live.push(Obj { p, layout: l, tag });
            }
            let st = check_within(&heap, &live, &mut rel, len);
            assert!(
                !live.is_empty(),
                "{len} B region, round {round}: not one object\n{st}"
            );
            assert!(
                bytes(&live) * 100 >= min_share * len,
                "{len} B region, round {round}: {} B of 64-byte objects\n{st}",
                bytes(&live)
            );
            assert_eq!(st.arenas, 1, "{st}");
            counts.push(live.len());
            free_all(&heap, &mut live);
            if len >= MIB {
                // The freed objects sit in the caches; a large object of half
                // the region, out of pages at first, gets them back and fits.
                let big = Layout::from_size_align(len / 2, 8).unwrap();
                let p = heap.allocate(big);
                assert!(
                    !p.is_null(),
                    "{len} B region: half of it after a fill and free\n{}",
                    heap.stats()
                );
                fill(p, big.size(), 7);
                verify(p, big.size(), 7);
                // SAFETY: just allocated with `big`.
                unsafe { heap.deallocate(p, big) };
            }
            assert_eq!(heap.scavenge(), 0);
            let st = check_within(&heap, &[], &mut rel, len);
            assert_eq!(st.heap_inuse, 0, "{st}");
            // Mixed sizes fit too, and go back.
            let mut rng = Rng::new(len as u64);
            loop {
                let l = Layout::from_size_align(rng.range(1, 3000), 8).unwrap();
                let p = heap.allocate(l);
                if p.is_null() {
                    break;
                }
                assert!(p as usize >= region && p as usize + l.size() <= region + len);
                let tag = live.len() as u8;
                fill(p, l.size(), tag);
                live.push(Obj { p, layout: l, tag });
            }
            assert!(!live.is_empty(), "{len} B region: no mixed object");
            check_within(&heap, &live, &mut rel, len);
            // No scavenge: the next fill, out of pages, takes back what the
            // caches hold of these classes.
            free_all(&heap, &mut live);
        }
        // The second fill gets what the caches held back: it reaches the
        // first's count but for fragmentation. Its spans fill the holes
        // between the spans the mixed round left cached objects in, and when
        // those spans are freed (at the first failure) their runs, of other
        // lengths, leave a few pages each that a 64-byte span cannot use.
        // Without the reclaim, what the mixed round freed into the caches
        // would stay there.
        assert!(
            counts[1] * 100 >= counts[0] * 90,
            "{len} B region: the second fill reached {counts:?}"
        );
    }
}

/// A region heap sizes its per-CPU caches by its region: what one class's
/// stack holds after many frees grows with the region (a 512th of it per
/// class, from 64 B to 16 KiB), so a heap of kilobytes keeps a few objects
/// of a class where one of megabytes keeps a hundred.
#[test]
fn caches_are_sized_by_the_region() {
    let held = |len: usize| {
        let buf: &'static mut [u8] = vec![0u8; len].leak();
        let heap = Box::new(Heap::new(RegionSource::empty(), SingleCpu::new()));
        // SAFETY: the buffer is leaked and unused; the heap has not used its source.
        unsafe { heap.source().set_region(buf.as_mut_ptr(), buf.len()) };
        assert!(heap.prefer_tiers());
        let l = Layout::from_size_align(64, 8).unwrap();
        let ps: Vec<*mut u8> = (0..200).map(|_| heap.allocate(l)).collect();
        assert!(ps.iter().all(|p| !p.is_null()));
        for &p in &ps {
            // SAFETY: allocated above with `l`.
            unsafe { heap.deallocate(p, l) };
        }
        heap.check_invariants();
        let st = heap.stats();
        assert_eq!(st.heap_alloc, 0, "{st}");
        st.cached_bytes as usize
    };
    // 64 KiB: 128 B per class, two 64-byte objects; no transfer caches.
    assert!(held(64 << 10) <= 2 * 64, "{}", held(64 << 10));
    // 8 MiB and more: 16 KiB per class, and the caches take all 200.
    assert_eq!(held(16 << 20) % 64, 0);
    assert!(held(16 << 20) >= 128 * 64, "{}", held(16 << 20));
}

/// A region heap of tens of kilobytes serves from fewer classes: every size
/// from 8 to 4096 bytes, allocated in a 64 KiB region, lands in about a
/// dozen classes (steps of a doubling up to 512 B, finer above), each object
/// still at least its size and its contents intact; in a 16 MiB region every
/// class serves.
#[test]
fn small_regions_serve_from_fewer_classes() {
    let classes_used = |len: usize| {
        let heap = tiered_heap_of(len);
        for size in (16..=4096).step_by(8) {
            let l = Layout::from_size_align(size, 8).unwrap();
            let p = heap.allocate(l);
            assert!(!p.is_null(), "{size} B in a {len} B region");
            assert!(heap.usable_size(p) >= size);
            fill(p, size, size as u8);
            verify(p, size, size as u8);
            // SAFETY: just allocated with `l`.
            unsafe { heap.deallocate(p, l) };
        }
        heap.check_invariants();
        let st = heap.stats();
        assert_eq!(st.heap_alloc, 0, "{st}");
        st.by_size.iter().skip(1).filter(|r| r.mallocs > 0).count()
    };
    let small = classes_used(64 << 10);
    let large = classes_used(16 << 20);
    assert!(small <= 14, "{small} classes in 64 KiB");
    assert!(large >= 60, "{large} classes in 16 MiB");
}

/// A region heap out of pages for one class lends it the free slots of a
/// larger class's partly used span: after 40-byte objects fill a 64 KiB
/// region, the last of them sit in the slots a 200-byte object's span had
/// left, each intact; freed by their layouts (the page map names the slot's
/// class), they leave the heap as it was, and a second fill takes as many.
#[test]
fn a_full_region_lends_larger_slots() {
    let heap = tiered_heap_of(64 << 10);
    let big = Layout::from_size_align(200, 8).unwrap();
    let small = Layout::from_size_align(40, 8).unwrap();
    let anchor = heap.allocate(big);
    assert!(!anchor.is_null());
    let lender = heap.usable_size(anchor);
    let fill_small = |live: &mut Vec<Obj>| loop {
        let p = heap.allocate(small);
        if p.is_null() {
            break;
        }
        let tag = live.len() as u8;
        fill(p, small.size(), tag);
        live.push(Obj {
            p,
            layout: small,
            tag,
        });
        assert!(live.len() < 10_000, "the region never ran out");
    };
    let mut live = Vec::new();
    fill_small(&mut live);
    let own = heap.usable_size(live[0].p);
    assert!(own < lender, "40 B in {own} B slots, 200 B in {lender} B");
    let lent = live
        .iter()
        .filter(|o| heap.usable_size(o.p) == lender)
        .count();
    assert!(
        lent >= 1,
        "no 40-byte object took a free {lender}-byte slot"
    );
    let mut all = live.clone();
    all.push(Obj {
        p: anchor,
        layout: big,
        tag: 0,
    });
    check_within(&heap, &all, &mut Released::new(), 64 << 10);
    let first = live.len();
    free_all(&heap, &mut live);
    heap.check_invariants();
    fill_small(&mut live);
    assert_eq!(live.len(), first, "the second fill took a different count");
    free_all(&heap, &mut live);
    // SAFETY: allocated above with `big`.
    unsafe { heap.deallocate(anchor, big) };
    heap.check_invariants();
    let st = heap.stats();
    assert_eq!((st.heap_alloc, st.mallocs - st.frees), (0, 0), "{st}");
}
