//! `--efficiency`: the embedded comparison over small fixed regions, as talc
//! measures heap efficiency. Each run gives a fresh heap of each allocator one
//! region of the same size and drives it through `GlobalAlloc`:
//!
//! * **fill** — allocate sizes uniform in `lo..=hi` (alignment 8) until the
//!   first null; efficiency = live requested bytes then / region bytes;
//! * **mixed** — fill, then four rounds of freeing a random half of the live
//!   objects and refilling to the first null; efficiency = the mean over the
//!   four refills;
//! * **churn** — fill to half the region, then free a random live object and
//!   allocate a new one, timed (million ops per second, each op a free and an
//!   allocation); a null is counted and the op moves on.
//!
//! Everything a heap keeps inside the region counts against it (tieralloc's
//! carved metadata, the peers' block headers); state outside the region does
//! not (the peers' heap structs, tieralloc's `Heap` value). Requests are the
//! same for every allocator in a run (one seed per run).

use std::alloc::{GlobalAlloc, Layout};
use std::fmt::Write as _;
use std::ptr::NonNull;
use std::time::Instant;

use crate::allocs::{LockedTlsf, Talc};
use tieralloc::internals::Rng;
use tieralloc::{Heap, RegionSource, SingleCpu};

/// The allocators of this comparison, in report order.
pub const NAMES: [&str; 5] = ["tieralloc", "linked_list", "talc", "rlsf", "buddy"];

/// Region sizes of the efficiency rows.
pub const REGIONS: [usize; 4] = [64 << 10, 256 << 10, 1 << 20, 16 << 20];

/// Region sizes of the churn rows.
pub const CHURN_REGIONS: [usize; 2] = [64 << 10, 1 << 20];

/// One region of `len` bytes, page-aligned, owned by the run.
struct Region {
    p: *mut u8,
    len: usize,
}

impl Region {
    fn new(len: usize) -> Region {
        let layout = Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!p.is_null(), "out of memory for a {len}-byte region");
        Region { p, len }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; every heap over it is gone.
        unsafe { std::alloc::dealloc(self.p, Layout::from_size_align(self.len, 4096).unwrap()) };
    }
}

/// A fresh heap of allocator `name` over `r`, or `None` if it refused the region.
///
/// # Safety
/// `r` outlives the heap, and nothing else uses it meanwhile.
unsafe fn heap_over(name: &str, r: &Region) -> Option<Box<dyn GlobalAlloc>> {
    let (p, len) = (r.p, r.len);
    // Every `unsafe` below hands the heap the region, which is valid,
    // writable and the heap's alone for its life (the caller's promise).
    Some(match name {
        "tieralloc" => {
            // SAFETY: see above.
            let source = unsafe { RegionSource::new(p, len) };
            Box::new(Heap::new(source, SingleCpu::new()))
        }
        "linked_list" => {
            let h = linked_list_allocator::LockedHeap::empty();
            // SAFETY: see above.
            unsafe { h.lock().init(p, len) };
            Box::new(h)
        }
        "talc" => {
            let h = Talc::new(talc::source::Manual);
            // SAFETY: see above.
            unsafe { h.lock().claim(p, len) }?;
            Box::new(h)
        }
        "rlsf" => {
            let h = LockedTlsf::new();
            let block = NonNull::slice_from_raw_parts(NonNull::new(p)?, len);
            // SAFETY: see above.
            unsafe { h.insert(block) }?;
            Box::new(h)
        }
        "buddy" => {
            let h = buddy_system_allocator::LockedHeap::<32>::empty();
            // SAFETY: see above.
            unsafe { h.lock().init(p as usize, len) };
            Box::new(h)
        }
        _ => return None,
    })
}

/// A live object.
#[derive(Clone, Copy)]
struct Obj {
    p: *mut u8,
    l: Layout,
}

fn layout(rng: &mut Rng, lo: usize, hi: usize) -> Layout {
    Layout::from_size_align(rng.range(lo, hi), 8).unwrap()
}

/// Allocates until the first null.
fn fill(h: &dyn GlobalAlloc, rng: &mut Rng, lo: usize, hi: usize, live: &mut Vec<Obj>) {
    loop {
        let l = layout(rng, lo, hi);
        // SAFETY: a valid, non-zero layout.
        let p = unsafe { h.alloc(l) };
        if p.is_null() {
            return;
        }
        // Touch the object, so that an allocator handing out memory it does
        // not have would fault here rather than report a good number.
        // SAFETY: a fresh object of at least one byte.
        unsafe { std::hint::black_box(p).write(1) };
        live.push(Obj { p, l });
    }
}

fn live_bytes(live: &[Obj]) -> usize {
    live.iter().map(|o| o.l.size()).sum()
}

fn free_all(h: &dyn GlobalAlloc, live: &mut Vec<Obj>) {
    for o in live.drain(..) {
        // SAFETY: a live object of `h` with its layout.
        unsafe { h.dealloc(o.p, o.l) };
    }
}

/// A workload of the efficiency table.
#[derive(Clone, Copy)]
pub struct Shape {
    /// Row label.
    pub name: &'static str,
    lo: usize,
    hi: usize,
    mixed: bool,
}

/// The rows: fill and mixed, 8..=512 B and 8..=4096 B.
pub const SHAPES: [Shape; 4] = [
    Shape {
        name: "fill 8..=512 B",
        lo: 8,
        hi: 512,
        mixed: false,
    },
    Shape {
        name: "fill 8..=4096 B",
        lo: 8,
        hi: 4096,
        mixed: false,
    },
    Shape {
        name: "mixed 8..=512 B",
        lo: 8,
        hi: 512,
        mixed: true,
    },
    Shape {
        name: "mixed 8..=4096 B",
        lo: 8,
        hi: 4096,
        mixed: true,
    },
];

/// Efficiency of allocator `name` on `shape` over a `len`-byte region (seed
/// `seed`); `None` if the allocator refused the region.
pub fn efficiency(name: &str, shape: Shape, len: usize, seed: u64) -> Option<f64> {
    let r = Region::new(len);
    // SAFETY: `r` outlives the heap (dropped after it, below).
    let h = unsafe { heap_over(name, &r) }?;
    let mut rng = Rng::new(seed);
    let mut live = Vec::new();
    fill(&*h, &mut rng, shape.lo, shape.hi, &mut live);
    let mut eff = live_bytes(&live) as f64 / len as f64;
    if shape.mixed {
        let mut sum = 0.0;
        for _ in 0..4 {
            let mut kept = Vec::with_capacity(live.len());
            for o in live.drain(..) {
                if rng.below(2) == 0 {
                    // SAFETY: a live object of `h` with its layout.
                    unsafe { h.dealloc(o.p, o.l) };
                } else {
                    kept.push(o);
                }
            }
            live = kept;
            fill(&*h, &mut rng, shape.lo, shape.hi, &mut live);
            sum += live_bytes(&live) as f64 / len as f64;
        }
        eff = sum / 4.0;
    }
    free_all(&*h, &mut live);
    drop(h);
    drop(r);
    Some(eff)
}

/// Churn of allocator `name` over a `len`-byte region: `ops` free+alloc
/// pairs over a live set of half the region. Returns million pairs per
/// second and the nulls seen, or `Err(reached)` (the fraction of the region
/// it could fill) when the heap cannot hold half the region.
pub fn churn(name: &str, len: usize, ops: usize, seed: u64) -> Option<Result<(f64, usize), f64>> {
    let r = Region::new(len);
    // SAFETY: `r` outlives the heap (dropped after it, below).
    let h = unsafe { heap_over(name, &r) }?;
    let mut rng = Rng::new(seed);
    let mut live: Vec<Obj> = Vec::new();
    let target = len / 2;
    while live_bytes(&live) < target {
        let l = layout(&mut rng, 8, 512);
        // SAFETY: a valid, non-zero layout.
        let p = unsafe { h.alloc(l) };
        if p.is_null() {
            let reached = live_bytes(&live) as f64 / len as f64;
            free_all(&*h, &mut live);
            return Some(Err(reached));
        }
        live.push(Obj { p, l });
    }
    // The requests, drawn before the clock starts.
    let plan: Vec<(usize, Layout)> = (0..ops)
        .map(|_| (rng.below(live.len()), layout(&mut rng, 8, 512)))
        .collect();
    let mut nulls = 0;
    let t = Instant::now();
    for &(i, l) in &plan {
        let o = live[i];
        // SAFETY: a live object of `h` with its layout.
        unsafe { h.dealloc(o.p, o.l) };
        // SAFETY: a valid, non-zero layout.
        let p = unsafe { h.alloc(l) };
        if p.is_null() {
            nulls += 1;
            // Keep the slot live with the smallest object instead, or (a
            // heap of size classes, whose 8-byte class may have no room
            // left) with an object of the size just freed, which fits where
            // it was.
            let small = Layout::from_size_align(8, 8).unwrap();
            // SAFETY: as above.
            let (p, l) = match unsafe { h.alloc(small) } {
                p if !p.is_null() => (p, small),
                // SAFETY: as above.
                _ => (unsafe { h.alloc(o.l) }, o.l),
            };
            assert!(
                !p.is_null(),
                "{name}: neither an 8-byte object nor the one just freed fits after a free"
            );
            live[i] = Obj { p, l };
        } else {
            live[i] = Obj {
                p: std::hint::black_box(p),
                l,
            };
        }
    }
    let secs = t.elapsed().as_secs_f64();
    free_all(&*h, &mut live);
    drop(h);
    drop(r);
    Some(Ok((ops as f64 / secs / 1e6, nulls)))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn kib(len: usize) -> String {
    if len >= 1 << 20 {
        format!("{} MiB", len >> 20)
    } else {
        format!("{} KiB", len >> 10)
    }
}

/// The whole comparison as markdown (`quick`: two regions, one seed, a
/// short churn; for the smoke run).
pub fn run(quick: bool, command: &str, date: &str) -> String {
    let regions: &[usize] = if quick { &REGIONS[..2] } else { &REGIONS };
    let churn_regions: &[usize] = if quick {
        &CHURN_REGIONS[..1]
    } else {
        &CHURN_REGIONS
    };
    let ops = if quick { 20_000 } else { 2_000_000 };
    let mut md = String::new();
    let _ = writeln!(
        md,
        "<!-- generated by `{command}`; do not edit -->\n\
         Measured {date} with `{command}`. Each heap gets a fresh region of the row's size \
         and is driven through `GlobalAlloc` (alignment 8). Efficiency: live requested \
         bytes at the first failed allocation over the region's bytes (fill), or the mean \
         of that over four rounds of freeing a random half and refilling (mixed); mean of \
         the seeds. Metadata a heap keeps inside the region counts against it; state \
         outside it (the heap value itself) does not. \"0 %\": not one allocation succeeded.\n"
    );
    let _ = writeln!(md, "| region | workload | {} |", NAMES.join(" | "));
    let _ = writeln!(md, "|---|---|{}", "---:|".repeat(NAMES.len()));
    for &len in regions {
        let seeds: u64 = if quick {
            1
        } else if len >= 16 << 20 {
            2
        } else {
            5
        };
        for shape in SHAPES {
            let mut row = format!("| {} | {} |", kib(len), shape.name);
            for name in NAMES {
                let effs: Vec<f64> = (1..=seeds)
                    .filter_map(|s| efficiency(name, shape, len, s))
                    .collect();
                let cell = if effs.is_empty() {
                    " refused |".to_string()
                } else {
                    let m = effs.iter().sum::<f64>() / effs.len() as f64;
                    format!(" {:.1} % |", 100.0 * m)
                };
                row.push_str(&cell);
                eprint!(".");
            }
            let _ = writeln!(md, "{row}");
        }
    }
    eprintln!();
    let _ = writeln!(
        md,
        "\nChurn over a live set of half the region (sizes 8..=512 B): million free+alloc \
         pairs per second, median of 3 runs of {ops} pairs; a failed allocation is replaced \
         by an 8-byte one and counted.\n"
    );
    let _ = writeln!(md, "| region | {} |", NAMES.join(" | "));
    let _ = writeln!(md, "|---|{}", "---:|".repeat(NAMES.len()));
    for &len in churn_regions {
        let mut row = format!("| {} |", kib(len));
        for name in NAMES {
            let runs: Vec<_> = (1..=3).filter_map(|s| churn(name, len, ops, s)).collect();
            let cell = if runs.is_empty() {
                " refused |".to_string()
            } else if let Some(Err(reached)) = runs.iter().find(|r| r.is_err()) {
                format!(" holds only {:.0} % |", 100.0 * reached)
            } else {
                let rates: Vec<f64> = runs.iter().map(|r| r.unwrap().0).collect();
                let nulls: usize = runs.iter().map(|r| r.unwrap().1).sum();
                if nulls > 0 {
                    format!(" {:.1} ({nulls} nulls) |", median(rates))
                } else {
                    format!(" {:.1} |", median(rates))
                }
            };
            row.push_str(&cell);
            eprint!(".");
        }
        let _ = writeln!(md, "{row}");
    }
    eprintln!();
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_peer_fills_a_64k_region() {
        for name in &NAMES[1..] {
            let e = efficiency(name, SHAPES[0], 64 << 10, 1).unwrap();
            assert!(e > 0.5 && e <= 1.0, "{name}: {e}");
        }
    }

    #[test]
    fn tieralloc_fills_a_large_region() {
        let e = efficiency("tieralloc", SHAPES[2], 16 << 20, 1).unwrap();
        assert!(e > 0.3 && e <= 1.0, "{e}");
    }
}
