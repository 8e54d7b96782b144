//! Statistics are exact at quiescence: a model of every allocation (class by
//! `ObjectKind::of`, tiny blocks by address) predicts each counter of `stats()`.
//!
//! Each test has a fresh heap with four slots, chosen by a thread-local that
//! the test changes between operations: one thread simulates several CPUs.
#![cfg(feature = "linux")]

mod common;

use core::alloc::Layout;
use std::collections::HashMap;

use common::slots_heap;
use tieralloc::internals::ObjectKind;
use tieralloc::internals::{SizeClass, NUM_CLASSES};
use tieralloc::{
    Heap, LockedSlots, MmapSource, Stats, MAX_SMALL_SIZE, PAGE_BYTES, TINY_BLOCK, TINY_ROOM,
    TINY_SIZE,
};

/// Go's page, the page of every source these tests use.
const GO_PAGE: tieralloc::internals::PageSize = tieralloc::internals::PageSize::GO;

/// The hosted heaps' geometry (Go's classes).
const GO: &tieralloc::Geometry = &tieralloc::Geometry::GO;

const SLOTS: usize = 4;

/// Runs this thread on `slot` (modulo `SLOTS`), as `H` sees it.
fn set_slot(i: usize) {
    common::set_slot(i % SLOTS);
}

/// Slots chosen by `common::slot_of_thread`.
type H = Heap<MmapSource, LockedSlots<SLOTS>>;

#[derive(Clone, Copy, Debug)]
struct Live {
    p: usize,
    size: usize,
    align: usize,
    /// Promoted by `realloc` to a span of its own (counted as large): the
    /// span's bytes.
    own: Option<u64>,
    /// The class of the slot the object sits in, when `realloc` shrank it in
    /// place and its layout sorts to a smaller class.
    slot: Option<SizeClass>,
}

impl Live {
    fn layout(&self) -> Layout {
        Layout::from_size_align(self.size, self.align).unwrap()
    }
    /// How the heap counts the object: a promoted one as large, one shrunk in
    /// place in its slot's class.
    fn kind(&self) -> ObjectKind {
        match ObjectKind::of(self.size, self.align) {
            ObjectKind::Small(_) if self.own.is_some() => ObjectKind::Large,
            ObjectKind::Small(c) => ObjectKind::Small(self.slot.unwrap_or(c)),
            k => k,
        }
    }
    /// The size class of a small-sized object (promoted or not).
    fn size_class(&self) -> Option<SizeClass> {
        match ObjectKind::of(self.size, self.align) {
            ObjectKind::Small(c) => Some(c),
            _ => None,
        }
    }
    /// A large or promoted object's accounted bytes: its pages.
    fn large_bytes(&self) -> u64 {
        match ObjectKind::of(self.size, self.align) {
            ObjectKind::Small(_) if self.own.is_some() => self.own.unwrap(),
            _ => page_round(self.size),
        }
    }
}

/// What the heap should report, maintained alongside every operation.
struct Model {
    mallocs: [u64; NUM_CLASSES],
    frees: [u64; NUM_CLASSES],
    tiny_mallocs: u64,
    tiny_frees: u64,
    /// Live tiny sub-objects per 64-byte block.
    tiny_live: HashMap<usize, u32>,
    /// Per slot: the current tiny block and the bytes used in it.
    current: [Option<(usize, usize)>; SLOTS],
    /// Live large bytes, page-rounded.
    large_bytes: u64,
    live: Vec<Live>,
}

/// A large object's accounted bytes: its pages ([`tieralloc::internals::large_pages`]).
fn page_round(n: usize) -> u64 {
    (tieralloc::internals::large_pages(n, GO_PAGE)
        .unwrap()
        .bytes(GO_PAGE)) as u64
}

/// Go's tiny alignment rule (as documented in `heap.rs`), raised to the layout's.
fn tiny_align(size: usize, align: usize) -> usize {
    let a = if size.is_multiple_of(8) {
        8
    } else if size.is_multiple_of(4) {
        4
    } else if size.is_multiple_of(2) {
        2
    } else {
        1
    };
    a.max(align)
}

impl Model {
    fn new() -> Model {
        Model {
            mallocs: [0; NUM_CLASSES],
            frees: [0; NUM_CLASSES],
            tiny_mallocs: 0,
            tiny_frees: 0,
            tiny_live: HashMap::new(),
            current: [None; SLOTS],
            large_bytes: 0,
            live: Vec::new(),
        }
    }

    /// Records an allocation the heap made on `slot` and checks where a tiny
    /// object landed: in the slot's current block if it fits, else at the
    /// start of a new block (which becomes current if it leaves more room).
    fn on_alloc(&mut self, slot: usize, o: Live) {
        self.live.push(o);
        match o.kind() {
            ObjectKind::Tiny => {
                self.tiny_mallocs += 1;
                let size = o.size.max(1);
                let a = tiny_align(size, o.align);
                if let Some((b, off)) = self.current[slot] {
                    let at = off.next_multiple_of(a);
                    if at + size <= TINY_ROOM {
                        assert_eq!(o.p, b + at, "tiny {o:?} on slot {slot}: expected in the current block {b:#x} at {at}");
                        self.current[slot] = Some((b, at + size));
                        *self.tiny_live.entry(b).or_default() += 1;
                        return;
                    }
                }
                assert_eq!(
                    o.p % TINY_BLOCK,
                    0,
                    "tiny {o:?} on slot {slot}: a new block starts the object"
                );
                assert!(
                    !self.tiny_live.contains_key(&o.p),
                    "block {:#x} handed out while live",
                    o.p
                );
                self.tiny_live.insert(o.p, 1);
                match self.current[slot] {
                    Some((_, off)) if size >= off => {}
                    _ => self.current[slot] = Some((o.p, size)),
                }
            }
            ObjectKind::Small(c) => self.mallocs[c.index()] += 1,
            ObjectKind::Large => {
                self.mallocs[0] += 1;
                self.large_bytes += o.large_bytes();
            }
        }
    }

    fn on_free(&mut self, o: Live) {
        match o.kind() {
            ObjectKind::Tiny => {
                self.tiny_frees += 1;
                let b = o.p & !(TINY_BLOCK - 1);
                let n = self
                    .tiny_live
                    .get_mut(&b)
                    .expect("tiny block of a live object");
                *n -= 1;
                if *n == 0 {
                    self.tiny_live.remove(&b);
                }
            }
            ObjectKind::Small(c) => self.frees[c.index()] += 1,
            ObjectKind::Large => {
                self.frees[0] += 1;
                self.large_bytes -= o.large_bytes();
            }
        }
    }

    /// `scavenge()` retires every slot's tiny block.
    fn on_scavenge(&mut self) {
        self.current = [None; SLOTS];
    }

    fn tiny_blocks(&self) -> u64 {
        let mut blocks: Vec<usize> = self.tiny_live.keys().copied().collect();
        blocks.extend(self.current.iter().flatten().map(|&(b, _)| b));
        blocks.sort_unstable();
        blocks.dedup();
        blocks.len() as u64
    }

    /// Checks every counter of `st` against the model.
    fn check(&self, st: &Stats, when: &str) {
        let ctx = || format!("{when}\n{st}");
        assert_eq!(st.cpus, SLOTS as u64, "{}", ctx());
        assert_eq!(st.by_size[0].size, 0, "{}", ctx());
        for c in 0..NUM_CLASSES {
            if c > 0 {
                assert_eq!(
                    st.by_size[c].size,
                    GO.size(SizeClass::new(c).unwrap()) as u64,
                    "class {c} size"
                );
            }
            assert_eq!(
                st.by_size[c].mallocs,
                self.mallocs[c],
                "class {c} mallocs: {}",
                ctx()
            );
            assert_eq!(
                st.by_size[c].frees,
                self.frees[c],
                "class {c} frees: {}",
                ctx()
            );
        }
        assert_eq!(st.tiny_mallocs, self.tiny_mallocs, "{}", ctx());
        assert_eq!(st.tiny_frees, self.tiny_frees, "{}", ctx());
        assert_eq!(st.tiny_blocks, self.tiny_blocks(), "tiny blocks: {}", ctx());
        assert_eq!(st.large_alloc, self.large_bytes, "{}", ctx());

        let mallocs = self.mallocs.iter().sum::<u64>() + self.tiny_mallocs;
        let frees = self.frees.iter().sum::<u64>() + self.tiny_frees;
        assert_eq!(st.mallocs, mallocs, "{}", ctx());
        assert_eq!(st.frees, frees, "{}", ctx());
        assert_eq!(
            st.mallocs - st.frees,
            self.live.len() as u64,
            "mallocs - frees = live objects: {}",
            ctx()
        );
        assert_eq!(st.live_objects(), self.live.len() as u64);

        let small: u64 = self
            .live
            .iter()
            .filter_map(|o| match o.kind() {
                ObjectKind::Small(c) => Some(GO.size(c) as u64),
                _ => None,
            })
            .sum();
        let large: u64 = self
            .live
            .iter()
            .filter(|o| o.kind() == ObjectKind::Large)
            .map(|o| o.large_bytes())
            .sum();
        assert_eq!(large, self.large_bytes);
        assert_eq!(
            st.heap_alloc,
            small + large + TINY_BLOCK as u64 * self.tiny_blocks(),
            "heap_alloc: {}",
            ctx()
        );

        assert_eq!(st.heap_idle, st.heap_sys - st.heap_inuse, "{}", ctx());
        assert!(st.heap_released <= st.heap_idle, "{}", ctx());
        assert!(
            st.heap_alloc + st.cached_bytes <= st.heap_inuse,
            "{}",
            ctx()
        );
        assert!(st.heap_inuse <= st.heap_sys, "{}", ctx());
        assert_eq!(st.heap_sys % PAGE_BYTES as u64, 0);
        assert_eq!(st.heap_inuse % PAGE_BYTES as u64, 0);
        assert!(
            st.spans
                >= self
                    .live
                    .iter()
                    .filter(|o| o.kind() == ObjectKind::Large)
                    .count() as u64,
            "{}",
            ctx()
        );
        assert!(st.arenas >= 1 && st.meta_sys > 0, "{}", ctx());
    }
}

/// Allocates on `slot`, fills, and records.
fn alloc(h: &H, m: &mut Model, slot: usize, size: usize, align: usize, zeroed: bool) -> Live {
    set_slot(slot);
    let l = Layout::from_size_align(size, align).unwrap();
    let p = if zeroed {
        h.allocate_zeroed(l)
    } else {
        h.allocate(l)
    };
    assert!(!p.is_null(), "{l:?}");
    assert_eq!(p as usize % align, 0, "{p:p} for {l:?}");
    // SAFETY: a fresh object of `size` bytes.
    unsafe { p.write_bytes(0xC3, size) };
    let o = Live {
        p: p as usize,
        size,
        align,
        own: None,
        slot: None,
    };
    m.on_alloc(slot % SLOTS, o);
    o
}

fn free(h: &H, m: &mut Model, slot: usize, idx: usize) {
    set_slot(slot);
    let o = m.live.swap_remove(idx);
    // SAFETY: live, allocated by `h` with this layout.
    unsafe { h.deallocate(o.p as *mut u8, o.layout()) };
    m.on_free(o);
}

/// Reallocates live object `idx` on `slot` and records what happened: in
/// place (same small class, or a large object resized in its pages) changes no
/// counter but the large bytes; a move is an allocation of the new kind and a
/// free of the old.
fn realloc(h: &H, m: &mut Model, slot: usize, idx: usize, new_size: usize) -> bool {
    set_slot(slot);
    let o = m.live[idx];
    // SAFETY: live, allocated by `h` with this layout.
    let q = unsafe { h.reallocate(o.p as *mut u8, o.layout(), new_size) } as usize;
    assert!(q != 0);
    // A class object stays in its slot by the shrink-in-place rule.
    let cur = match o.kind() {
        ObjectKind::Small(c) => Some(c),
        _ => None,
    };
    let stays = cur.is_some_and(|a| common::stays_in_slot(a, new_size, o.align));
    if stays {
        assert_eq!(q, o.p, "realloc {o:?} to {new_size}: stays in its slot");
    }
    let n = Live {
        p: q,
        size: new_size,
        align: o.align,
        own: None,
        slot: cur.filter(|&a| stays && ObjectKind::of(new_size, o.align) != ObjectKind::Small(a)),
    };
    // A promoted object's span: its class's pages when resized in place, or
    // (moved) an idle span of up to twice as many.
    let own =
        (!stays && common::promoted_after(o.layout(), o.own.is_some(), new_size)).then(|| {
            match (o.kind(), ObjectKind::of(new_size, o.align)) {
                (ObjectKind::Large, ObjectKind::Small(c))
                    if q == o.p && o.own.is_some() && o.size_class() == Some(c) =>
                {
                    o.own.unwrap()
                }
                (_, ObjectKind::Small(c)) if q == o.p => page_round(GO.size(c)),
                (_, ObjectKind::Small(c)) => {
                    let got = h.try_usable_size(q as *mut u8).unwrap() as u64;
                    let exact = page_round(GO.size(c));
                    assert!(
                        exact <= got && got <= 2 * exact,
                        "promoted into {got} bytes, class pages {exact}"
                    );
                    got
                }
                _ => unreachable!("promoted objects are small-sized"),
            }
        });
    let n = Live { own, ..n };
    if q == o.p {
        match (o.kind(), n.kind()) {
            (ObjectKind::Small(a), ObjectKind::Small(b)) => {
                assert_eq!(a, b, "in place only within a class")
            }
            (ObjectKind::Large, ObjectKind::Large) => {
                m.large_bytes = m.large_bytes - o.large_bytes() + n.large_bytes();
            }
            (a, b) => panic!("realloc {a:?} -> {b:?} stayed in place"),
        }
        m.live[idx] = n;
        true
    } else {
        m.live.swap_remove(idx);
        m.on_alloc(slot % SLOTS, n);
        m.on_free(o);
        false
    }
}

/// Layouts covering every reachable class twice (the class's own size and the
/// smallest size that maps to it), tiny sizes at every alignment, over-aligned
/// small objects, and large objects, some over-aligned.
fn workload() -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    for c in 2..NUM_CLASSES {
        let size = GO.size(SizeClass::new(c).unwrap());
        let prev = GO.size(SizeClass::new(c - 1).unwrap());
        for s in [size, prev + 1] {
            let s = s.max(TINY_SIZE);
            assert_eq!(
                ObjectKind::of(s, 8),
                ObjectKind::Small(SizeClass::new(c).unwrap()),
                "size {s}"
            );
            v.push((s, 8));
        }
    }
    for size in 1..TINY_SIZE {
        for align in [1, 2, 4, 8] {
            v.push((size, align));
        }
    }
    for (size, align) in [
        (8, 16),
        (3, 32),
        (100, 64),
        (1000, 256),
        (5000, 4096),
        (8192, 8192),
        (MAX_SMALL_SIZE, 16),
    ] {
        assert!(
            matches!(ObjectKind::of(size, align), ObjectKind::Small(_)),
            "{size}/{align}"
        );
        v.push((size, align));
    }
    for (size, align) in [
        (MAX_SMALL_SIZE + 1, 8),
        (40_000, 8),
        (100_000, 8),
        (1 << 20, 8),
        (5 << 20, 8),
        (65536, 65536),
        (10, 16384),
        (PAGE_BYTES * 7 + 3, 8),
    ] {
        assert_eq!(
            ObjectKind::of(size, align),
            ObjectKind::Large,
            "{size}/{align}"
        );
        v.push((size, align));
    }
    v
}

#[test]
fn fresh_heap_reports_nothing() {
    static HEAP: H = slots_heap();
    let st = HEAP.stats();
    assert_eq!(st.heap_sys, 0);
    assert_eq!(st.heap_inuse, 0);
    assert_eq!(st.heap_alloc, 0);
    assert_eq!(st.mallocs, 0);
    assert_eq!(st.frees, 0);
    assert_eq!(st.tiny_blocks, 0);
    assert_eq!(st.arenas, 0);
    assert_eq!(st.spans, 0);
    for c in 1..NUM_CLASSES {
        assert_eq!(
            st.by_size[c].size,
            GO.size(SizeClass::new(c).unwrap()) as u64
        );
    }
    HEAP.check_invariants();
}

#[test]
fn stats_are_exact_at_quiescence() {
    static HEAP: H = slots_heap();
    let h = &HEAP;
    let mut m = Model::new();
    let work = workload();

    // Three rounds of the whole workload, each object from a different slot.
    let mut k = 0usize;
    for round in 0..3 {
        for &(size, align) in &work {
            alloc(h, &mut m, k % 7, size, align, (k + round).is_multiple_of(5));
            k += 1;
        }
        m.check(&h.stats(), &format!("after allocation round {round}"));
    }
    h.check_invariants();

    // Free about half of the objects (from yet other slots), then re-check.
    let mut i = 0;
    while i < m.live.len() {
        free(h, &mut m, i + 1, i);
        i += 2;
    }
    m.check(&h.stats(), "after freeing some");

    // Reallocs of every kind: within a class, across classes and kinds,
    // large grown and shrunk (in place when the pages allow).
    let mut j = 0;
    let n = m.live.len();
    let (mut in_place_small, mut in_place_large, mut moved) = (0, 0, 0);
    for idx in (0..n).step_by(5) {
        let old = m.live[idx].size;
        let large = m.live[idx].kind() == ObjectKind::Large;
        let new_size = match j % 6 {
            0 => old + 1,
            1 => (old / 2).max(1),
            2 => old * 3,
            3 => 3,
            4 => 50_000,
            _ => old + PAGE_BYTES,
        };
        match (realloc(h, &mut m, j, idx, new_size), large) {
            (true, false) => in_place_small += 1,
            (true, true) => in_place_large += 1,
            (false, _) => moved += 1,
        }
        j += 1;
        if j % 16 == 0 {
            m.check(&h.stats(), &format!("after {j} reallocs"));
        }
    }
    m.check(&h.stats(), "after reallocs");
    println!(
        "reallocs: {in_place_small} small in place, {in_place_large} large in place, {moved} moved"
    );
    assert!(in_place_small > 0 && in_place_large > 0 && moved > 0);
    let kept = m.live.iter().filter(|o| o.slot.is_some()).count();
    println!("{kept} objects kept in a larger slot");
    assert!(kept > 0, "no realloc shrank a class object in place");
    h.check_invariants();

    // Tiny objects freed on other slots than they were made on, all of them.
    let mut idx = 0;
    while idx < m.live.len() {
        if m.live[idx].kind() == ObjectKind::Tiny {
            free(h, &mut m, idx + 3, idx);
        } else {
            idx += 1;
        }
    }
    m.check(&h.stats(), "after freeing every tiny object");
    assert!(m.tiny_blocks() <= SLOTS as u64);

    // More allocations on top, then everything freed.
    for (r, &(size, align)) in work.iter().enumerate().rev() {
        alloc(h, &mut m, r, size, align, false);
    }
    m.check(&h.stats(), "after refilling");
    while !m.live.is_empty() {
        let idx = m.live.len() / 2;
        free(h, &mut m, idx, idx);
    }
    let st = h.stats();
    m.check(&st, "after freeing everything");
    assert_eq!(st.mallocs, st.frees);
    assert_eq!(
        st.heap_alloc,
        TINY_BLOCK as u64 * st.tiny_blocks,
        "only current tiny blocks remain\n{st}"
    );
    assert_eq!(st.large_alloc, 0);
    h.check_invariants();

    h.scavenge();
    m.on_scavenge();
    let st = h.stats();
    m.check(&st, "after scavenge");
    assert_eq!(st.tiny_blocks, 0);
    assert_eq!(st.heap_alloc, 0);
    assert_eq!(st.heap_inuse, 0);
    assert_eq!(st.cached_bytes, 0);
    assert_eq!(st.spans, 0);
    assert_eq!(st.heap_released, st.heap_idle);
    assert!(
        st.scavenged_total > 0,
        "the pages used were dirty and are released now\n{st}"
    );
    h.check_invariants();
}

/// A tiny block's sub-objects on one slot, freed one by one from other slots:
/// the block stays counted until the last one dies and the block is retired.
#[test]
fn tiny_blocks_live_until_their_last_object() {
    static HEAP: H = slots_heap();
    let h = &HEAP;
    let mut m = Model::new();
    // TINY_ROOM 1-byte objects fill one block exactly (its last byte is its
    // live count); the next starts another.
    let block = |p: usize| p & !(TINY_BLOCK - 1);
    for _ in 0..=TINY_ROOM {
        alloc(h, &mut m, 2, 1, 1, false);
    }
    let first = m.live[0].p;
    assert!(
        m.live[..TINY_ROOM].iter().all(|o| block(o.p) == first),
        "{TINY_ROOM} one-byte objects share a block"
    );
    assert_ne!(block(m.live[TINY_ROOM].p), first);
    m.check(&h.stats(), "a block and one more tiny");
    assert_eq!(h.stats().tiny_blocks, 2);
    // Free the first block's objects from slots 0, 1, 3; it is not current any more.
    for k in 0..TINY_ROOM {
        let idx = m.live.iter().position(|o| block(o.p) == first).unwrap();
        free(h, &mut m, [0, 1, 3][k % 3], idx);
        let st = h.stats();
        m.check(&st, &format!("freed {} of the full block", k + 1));
        assert_eq!(st.tiny_blocks, if k < TINY_ROOM - 1 { 2 } else { 1 });
    }
    // The current block survives without live objects until scavenge().
    free(h, &mut m, 1, 0);
    let st = h.stats();
    m.check(&st, "current block empty");
    assert_eq!(st.tiny_blocks, 1);
    assert_eq!(st.heap_alloc, TINY_BLOCK as u64);
    h.scavenge();
    m.on_scavenge();
    let st = h.stats();
    m.check(&st, "scavenged");
    assert_eq!(st.tiny_blocks, 0);
    assert_eq!(st.heap_alloc, 0);
}

#[test]
fn display_shows_headline_fields_and_a_row_per_used_class() {
    static HEAP: H = slots_heap();
    let h = &HEAP;
    let mut m = Model::new();
    let used = [16usize, 17, 48, 1024, 1025, 32768];
    for (i, &s) in used.iter().enumerate() {
        for k in 0..=i {
            alloc(h, &mut m, k, s, 8, false);
        }
    }
    alloc(h, &mut m, 0, 5, 1, false);
    alloc(h, &mut m, 0, 100_000, 8, false);
    free(h, &mut m, 1, 0);
    let st = h.stats();
    m.check(&st, "display workload");
    let text = st.to_string();
    println!("{text}");
    let lines: Vec<&str> = text.lines().collect();

    let line = |name: &str| -> &str {
        lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no `{name}` line in\n{text}"))
    };
    for (name, value) in [
        ("heap_sys", st.heap_sys),
        ("heap_inuse", st.heap_inuse),
        ("heap_idle", st.heap_idle),
        ("heap_released", st.heap_released),
        ("heap_alloc", st.heap_alloc),
        ("cached", st.cached_bytes),
        ("meta_sys", st.meta_sys),
    ] {
        let l = line(name);
        assert_eq!(
            l.split_whitespace().nth(1),
            Some(value.to_string().as_str()),
            "`{name}` line: {l}"
        );
    }
    // Byte counts are also shown in readable units.
    assert!(
        line("heap_sys").contains(&format!("({} MiB)", st.heap_sys >> 20)),
        "{}",
        line("heap_sys")
    );
    let l = line("mallocs");
    assert!(
        l.contains(&st.mallocs.to_string()) && l.contains(&format!("frees {:>12}", st.frees)),
        "{l}"
    );
    assert!(l.ends_with(&format!("live {}", st.live_objects())), "{l}");
    let l = line("tiny");
    assert!(
        l.contains(&st.tiny_mallocs.to_string())
            && l.ends_with(&format!("blocks {}", st.tiny_blocks)),
        "{l}"
    );
    let l = line("large");
    assert!(
        l.contains(&st.by_size[0].mallocs.to_string())
            && l.ends_with(&format!("bytes {}", st.large_alloc)),
        "{l}"
    );
    let l = line("arenas");
    assert!(
        l.contains(&format!("spans {}", st.spans)) && l.contains(&format!("cpus {}", st.cpus)),
        "{l}"
    );

    // The class table: a header, then one row per used class, in order.
    let header = lines.iter().position(|l| {
        l.split_whitespace().collect::<Vec<_>>() == ["class", "size", "mallocs", "frees", "live"]
    });
    let header = header.unwrap_or_else(|| panic!("no class table header in\n{text}"));
    let rows: Vec<Vec<u64>> = lines[header + 1..]
        .iter()
        .map(|l| {
            l.split_whitespace()
                .map(|t| t.parse().expect("numeric row"))
                .collect()
        })
        .collect();
    let want: Vec<Vec<u64>> = (1..NUM_CLASSES)
        .filter(|&c| st.by_size[c].mallocs != 0)
        .map(|c| {
            let r = st.by_size[c];
            vec![c as u64, r.size, r.mallocs, r.frees, r.live()]
        })
        .collect();
    assert_eq!(rows, want, "class rows of\n{text}");
    let mut classes: Vec<usize> = used
        .iter()
        .map(|&s| match ObjectKind::of(s, 8) {
            ObjectKind::Small(c) => c.index(),
            k => panic!("{s}: {k:?}"),
        })
        .collect();
    classes.dedup();
    assert_eq!(
        rows.len(),
        classes.len(),
        "one row per used class: {classes:?}\n{text}"
    );
    // The tiny block's object of the tiny class is not a user object of it.
    assert!(rows.iter().all(|r| r[2] >= 1));
}

/// A batch freed and re-allocated moves no span to the page heap and back:
/// central keeps one empty span per class (counted in `heap_inuse`, as Go
/// counts mcentral's spans), and `scavenge` returns it.
#[test]
fn central_keeps_one_empty_span_per_class_until_scavenge() {
    static HEAP: H = slots_heap();
    set_slot(0);
    let l = Layout::from_size_align(256, 8).unwrap();
    let ObjectKind::Small(c) = ObjectKind::of(256, 8) else {
        panic!("256 bytes is a small class")
    };
    // Three spans' worth beyond what the CPU stack and the transfer cache hold.
    let n = 3 * GO.objects(c)
        + tieralloc::internals::transfer_capacity(GO, c, tieralloc::internals::TRANSFER_BYTES)
        + tieralloc::internals::capacity(c);
    let mut ps: Vec<*mut u8> = (0..n).map(|_| HEAP.allocate(l)).collect();
    assert!(ps.iter().all(|p| !p.is_null()));
    let spans_live = HEAP.stats().spans;
    for &p in ps.iter().rev() {
        // SAFETY: allocated above with `l`.
        unsafe { HEAP.deallocate(p, l) };
    }
    let st = HEAP.stats();
    assert!(
        st.spans >= 1 && st.spans < spans_live,
        "emptied spans went back, one kept:\n{st}"
    );
    // The same batch again: served from the CPU stack, the transfer cache and the kept span.
    ps.clear();
    ps.extend((0..n).map(|_| HEAP.allocate(l)));
    for &p in ps.iter() {
        // SAFETY: as above.
        unsafe { HEAP.deallocate(p, l) };
    }
    HEAP.check_invariants();
    HEAP.scavenge();
    let st = HEAP.stats();
    assert_eq!(
        (st.spans, st.heap_inuse, st.heap_alloc),
        (0, 0, 0),
        "scavenge returned the kept span:\n{st}"
    );
    HEAP.check_invariants();
}
