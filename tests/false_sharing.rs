//! No two CPUs are handed objects on one cache line (false sharing: Hoard's
//! cache-scratch). Tiny blocks are lines ([`TINY_BLOCK`]) carved only by their
//! CPU; objects of the classes under a line (8..=48 B) come only from spans
//! their CPU owns, and a free on another CPU goes to the class's remote list,
//! not to that CPU's cache. So live objects that share a line were all
//! allocated on one CPU.
#![cfg(feature = "linux")]

mod common;

use core::alloc::Layout;
use std::collections::HashMap;

use common::{check_pattern, fill_pattern, set_slot, slots_heap, Rng};
use tieralloc::internals::ObjectKind;
use tieralloc::internals::REMOTE_MAX;
use tieralloc::{Heap, LockedSlots, MmapSource, TINY_BLOCK, TINY_SIZE};

/// The hosted heaps' geometry (Go's classes).
const GO: &tieralloc::Geometry = &tieralloc::Geometry::GO;

const SLOTS: usize = 4;
type H = Heap<MmapSource, LockedSlots<SLOTS>>;

struct Obj {
    p: *mut u8,
    layout: Layout,
    /// The slot that allocated it.
    slot: usize,
    seed: u8,
}

fn line(p: *mut u8) -> usize {
    p as usize & !(TINY_BLOCK - 1)
}

/// Whether objects of this layout can share a line with other objects: tiny
/// ones, and those of the classes under 64 bytes.
fn shares_lines(l: Layout) -> bool {
    match ObjectKind::of(l.size(), l.align()) {
        ObjectKind::Tiny => true,
        ObjectKind::Small(c) => GO.shares_lines(c),
        ObjectKind::Large => false,
    }
}

/// Lines an object covers.
fn lines_of(p: *mut u8, l: Layout) -> impl Iterator<Item = usize> {
    (line(p)..=line(p.wrapping_add(l.size() - 1))).step_by(TINY_BLOCK)
}

/// Live objects per line: the slot that allocated them, and how many.
type Lines = HashMap<usize, (usize, usize)>;

/// Tiny objects of every size and alignment and objects of 16..63 bytes,
/// allocated on four simulated CPUs in turn and freed from any of them (so
/// that many frees are remote), mixed with objects of the 64-byte class, with
/// drains in between. At every step every live object on a line was allocated
/// by the same slot, no 64-byte object lands on such a line, and every object
/// keeps its bytes.
#[test]
fn objects_of_different_cpus_never_share_a_line() {
    static HEAP: H = slots_heap();
    let mut rng = Rng::new(0x7e1e);
    let mut live: Vec<Obj> = Vec::new();
    let mut lines = Lines::new();
    let (mut tiny_allocs, mut small_allocs, mut remote_frees) = (0, 0, 0);
    for step in 0..60_000usize {
        let slot = rng.below(SLOTS);
        set_slot(slot);
        if step % 15_000 == 14_999 {
            HEAP.scavenge(); // drains every slot's tiny block and stacks, and the remote lists
        }
        if !live.is_empty() && (rng.below(5) < 2 || live.len() > 3_000) {
            let o = live.swap_remove(rng.below(live.len()));
            check_pattern(o.p, o.layout.size(), o.seed);
            if shares_lines(o.layout) {
                remote_frees += usize::from(o.slot != slot);
                for l in lines_of(o.p, o.layout) {
                    let e = lines.get_mut(&l).expect("line of a live object");
                    e.1 -= 1;
                    if e.1 == 0 {
                        lines.remove(&l);
                    }
                }
            }
            // SAFETY: allocated below with this layout, freed once.
            unsafe { HEAP.deallocate(o.p, o.layout) };
            continue;
        }
        let layout = match rng.below(8) {
            0 => Layout::from_size_align(TINY_BLOCK, 8).unwrap(),
            1 | 2 => Layout::from_size_align(rng.range(TINY_SIZE, TINY_BLOCK - 1), 8).unwrap(),
            _ => {
                let size = rng.range(1, TINY_SIZE - 1);
                let align = rng.pick(&[1, 2, 4, 8]).min(size.next_power_of_two());
                Layout::from_size_align(size, align).unwrap()
            }
        };
        let p = HEAP.allocate(layout);
        assert!(!p.is_null());
        assert_eq!(p as usize % layout.align(), 0);
        let seed = step as u8;
        fill_pattern(p, layout.size(), seed);
        if shares_lines(layout) {
            if ObjectKind::of(layout.size(), layout.align()) == ObjectKind::Tiny {
                tiny_allocs += 1;
                assert_eq!(
                    lines_of(p, layout).count(),
                    1,
                    "tiny {p:p} ({layout:?}) crosses a line"
                );
            } else {
                small_allocs += 1;
            }
            for l in lines_of(p, layout) {
                let e = lines.entry(l).or_insert((slot, 0));
                assert_eq!(
                    e.0,
                    slot,
                    "{p:p} ({layout:?}) allocated on slot {slot} shares line {l:#x} with {} live objects of slot {}",
                    e.1,
                    e.0
                );
                e.1 += 1;
            }
        } else {
            assert!(
                !lines.contains_key(&line(p)),
                "{p:p} ({layout:?}) on a line with live tiny or sub-line objects"
            );
        }
        live.push(Obj {
            p,
            layout,
            slot,
            seed,
        });
    }
    assert!(tiny_allocs > 15_000, "{tiny_allocs} tiny allocations");
    assert!(
        small_allocs > 5_000,
        "{small_allocs} allocations of 16..63 B"
    );
    assert!(remote_frees > 5_000, "{remote_frees} frees on another slot");
    for o in live {
        check_pattern(o.p, o.layout.size(), o.seed);
        // SAFETY: as above.
        unsafe { HEAP.deallocate(o.p, o.layout) };
    }
    HEAP.scavenge();
    let st = HEAP.stats();
    assert_eq!(st.mallocs, st.frees, "{st}");
    assert_eq!(st.heap_alloc, 0, "{st}");
    assert_eq!(st.cached_bytes, 0, "{st}");
    HEAP.check_invariants();
}

/// Hoard's cache-scratch, step by step: slot 0 allocates objects of 16 bytes
/// back to back and hands one to slot 1, which frees it and allocates its
/// own. Slot 1 must not get the object back (its line-mate lives on slot 0),
/// nor any object on a line of slot 0's; slot 0 freeing its own object gets
/// it straight back from its cache.
#[test]
fn a_remote_free_is_not_reused_by_the_freeing_cpu() {
    static HEAP: H = slots_heap();
    let l = Layout::from_size_align(16, 8).unwrap();
    set_slot(0);
    let mine: Vec<*mut u8> = (0..64).map(|_| HEAP.allocate(l)).collect();
    let handed = mine[33];
    let kept: Vec<*mut u8> = mine.iter().copied().filter(|&p| p != handed).collect();
    set_slot(1);
    // SAFETY: allocated above with `l`.
    unsafe { HEAP.deallocate(handed, l) };
    let theirs: Vec<*mut u8> = (0..200).map(|_| HEAP.allocate(l)).collect();
    for &q in &theirs {
        assert_ne!(q, handed, "slot 1 got back the object it freed for slot 0");
        assert!(
            kept.iter().all(|&p| line(p) != line(q)),
            "slot 1's {q:p} is on a line of slot 0's objects"
        );
    }
    set_slot(0);
    let p = kept[5];
    // SAFETY: as above.
    unsafe { HEAP.deallocate(p, l) };
    assert_eq!(HEAP.allocate(l), p, "a local free is reused at once (LIFO)");
    set_slot(1);
    for q in theirs {
        // SAFETY: as above.
        unsafe { HEAP.deallocate(q, l) };
    }
    set_slot(0);
    for p in kept {
        // SAFETY: as above.
        unsafe { HEAP.deallocate(p, l) };
    }
    HEAP.scavenge();
    let st = HEAP.stats();
    assert_eq!(
        (st.mallocs, st.heap_alloc, st.cached_bytes),
        (st.frees, 0, 0),
        "{st}"
    );
}

/// Remote frees with no refill of their class to take them: the remote list
/// returns them to their spans once it holds REMOTE_MAX, so it strands at
/// most that many objects; the statistics count them as cached meanwhile.
#[test]
fn the_remote_list_is_bounded() {
    static HEAP: H = slots_heap();
    let l = Layout::from_size_align(48, 8).unwrap();
    set_slot(2);
    let objs: Vec<*mut u8> = (0..3 * REMOTE_MAX).map(|_| HEAP.allocate(l)).collect();
    set_slot(3);
    for (k, &p) in objs.iter().enumerate() {
        // SAFETY: allocated above with `l`.
        unsafe { HEAP.deallocate(p, l) };
        let st = HEAP.stats();
        assert!(
            st.cached_bytes <= ((REMOTE_MAX + 128) * 48) as u64,
            "after {} remote frees: {} B cached\n{st}",
            k + 1,
            st.cached_bytes
        );
        assert_eq!(st.mallocs - st.frees, (objs.len() - k - 1) as u64);
    }
    HEAP.check_invariants();
    HEAP.scavenge();
    let st = HEAP.stats();
    assert_eq!(
        (st.heap_alloc, st.cached_bytes, st.heap_inuse),
        (0, 0, 0),
        "{st}"
    );
}
