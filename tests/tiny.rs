//! Tiny blocks are cache lines ([`TINY_BLOCK`]): a CPU carves tiny objects only
//! from its own current block, so live tiny objects that share a line were all
//! carved on one CPU, and two CPUs never write one line through the tiny
//! allocator (false sharing: Hoard's cache-scratch).
#![cfg(feature = "linux")]

mod common;

use core::alloc::Layout;
use std::collections::HashMap;

use common::{check_pattern, fill_pattern, set_slot, slots_heap, Rng};
use tieralloc::heap::Kind;
use tieralloc::{Heap, LockedSlots, MmapSource, TINY_BLOCK, TINY_SIZE};

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

/// Tiny objects of every size and alignment, allocated on four simulated CPUs
/// in turn and freed from any of them, mixed with objects of the tiny blocks'
/// own class and of the classes below a line, with drains in between. At every
/// step each tiny object lies inside one line, and every live tiny object on
/// that line was allocated by the same slot; every object keeps its bytes.
#[test]
fn tiny_objects_of_different_cpus_never_share_a_line() {
    static HEAP: H = slots_heap();
    let mut rng = Rng::new(0x7e1e);
    let mut live: Vec<Obj> = Vec::new();
    // Line → (slot, live tiny objects on it).
    let mut lines: HashMap<usize, (usize, usize)> = HashMap::new();
    let mut tiny_allocs = 0;
    for step in 0..60_000usize {
        let slot = rng.below(SLOTS);
        set_slot(slot);
        if step % 15_000 == 14_999 {
            HEAP.scavenge(); // drains every slot's tiny block and stacks
        }
        if !live.is_empty() && (rng.below(5) < 2 || live.len() > 3_000) {
            let o = live.swap_remove(rng.below(live.len()));
            check_pattern(o.p, o.layout.size(), o.seed);
            if Kind::of(o.layout.size(), o.layout.align()) == Kind::Tiny {
                let e = lines
                    .get_mut(&line(o.p))
                    .expect("line of a live tiny object");
                e.1 -= 1;
                if e.1 == 0 {
                    lines.remove(&line(o.p));
                }
            }
            // SAFETY: allocated below with this layout, freed once.
            unsafe { HEAP.deallocate(o.p, o.layout) };
            continue;
        }
        let layout = match rng.below(8) {
            0 => Layout::from_size_align(TINY_BLOCK, 8).unwrap(),
            1 => Layout::from_size_align(rng.range(TINY_SIZE, TINY_BLOCK - 1), 8).unwrap(),
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
        if Kind::of(layout.size(), layout.align()) == Kind::Tiny {
            tiny_allocs += 1;
            assert_eq!(
                line(p),
                line(p.wrapping_add(layout.size() - 1)),
                "tiny {p:p} ({layout:?}) crosses a line"
            );
            let e = lines.entry(line(p)).or_insert((slot, 0));
            assert_eq!(
                e.0,
                slot,
                "tiny {p:p} allocated on slot {slot} shares line {:#x} with {} live tiny objects of slot {}",
                line(p),
                e.1,
                e.0
            );
            e.1 += 1;
        } else {
            // No object of a class (of a line or less) sits on a line with live tiny objects.
            assert!(
                !lines.contains_key(&line(p)),
                "{p:p} ({layout:?}) on a line with live tiny objects"
            );
        }
        live.push(Obj {
            p,
            layout,
            slot,
            seed,
        });
    }
    assert!(tiny_allocs > 20_000, "{tiny_allocs} tiny allocations");
    // Objects of every slot were freed on other slots along the way.
    assert!(live.iter().any(|o| o.slot != 0));
    for o in live {
        check_pattern(o.p, o.layout.size(), o.seed);
        // SAFETY: as above.
        unsafe { HEAP.deallocate(o.p, o.layout) };
    }
    HEAP.scavenge();
    let st = HEAP.stats();
    assert_eq!(st.mallocs, st.frees, "{st}");
    assert_eq!(st.heap_alloc, 0, "{st}");
    HEAP.check_invariants();
}
