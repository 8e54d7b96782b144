//! Scenario `stress` (the board's main workload, `make run-riscv`): all four
//! harts churn at once, objects of 8..=256 B and one in 32 of up to 4 KiB,
//! short- and long-lived, every object's contents checked at its free; and
//! cross-hart frees: each hart posts some of its objects to a shared mailbox
//! (a fixed array behind a spin lock, in `.bss`, so posting allocates
//! nothing) and takes and frees (after checking them) objects the other
//! harts posted. Hart 0 waits for all, drains the mailbox, prints the heap
//! statistics and a per-hart summary, and checks that the live objects and
//! bytes went back to what they were at the start.
#![no_std]
#![no_main]
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

extern crate alloc;

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use riscv_qemu::{
    check, hart_id, init_heap, mtime, pass, print_stats, println, wait_heap, Obj, Rng, HARTS, HEAP,
    MTIME_HZ,
};
use spin::Mutex;
use tieralloc::TINY_BLOCK;

/// Operations per hart.
const OPS: u32 = 4_000_000;
/// Short- and long-lived slots per hart.
const SHORT: usize = 48;
const LONG: usize = 16;
/// Mailbox capacity.
const CAP: usize = 64;

/// An object in the mailbox: the object, its tag, the hart that made it.
struct Posted {
    obj: Obj,
    tag: u32,
    from: usize,
}

static MAILBOX: Mutex<[Option<Posted>; CAP]> = Mutex::new([const { None }; CAP]);

/// Per hart: operations, bytes allocated (KiB), objects posted, remote frees
/// (objects of other harts freed here), local frees.
static OPS_DONE: [AtomicU32; HARTS] = [const { AtomicU32::new(0) }; HARTS];
static KIB: [AtomicU32; HARTS] = [const { AtomicU32::new(0) }; HARTS];
static POSTED: [AtomicU32; HARTS] = [const { AtomicU32::new(0) }; HARTS];
static REMOTE: [AtomicU32; HARTS] = [const { AtomicU32::new(0) }; HARTS];
static LOCAL: [AtomicU32; HARTS] = [const { AtomicU32::new(0) }; HARTS];

/// Harts done with their operations (they keep taking from the mailbox until all are).
static CHURNED: AtomicUsize = AtomicUsize::new(0);
/// Harts done with everything (all their objects freed).
static DONE: AtomicUsize = AtomicUsize::new(0);

/// Set by hart 0 once it has read the heap's statistics at the start: the
/// other harts wait for it, so that none of their mallocs is counted before
/// the run (the heap is ready earlier, at `init_heap`).
static GO: AtomicBool = AtomicBool::new(false);

/// Posts `obj` unless the mailbox is full (then gives it back).
fn post(obj: Obj, tag: u32) -> Option<(Obj, u32)> {
    let mut m = MAILBOX.lock();
    match m.iter_mut().find(|s| s.is_none()) {
        Some(slot) => {
            *slot = Some(Posted {
                obj,
                tag,
                from: hart_id(),
            });
            None
        }
        None => Some((obj, tag)),
    }
}

/// Takes an object another hart posted, if there is one.
fn take() -> Option<Posted> {
    let me = hart_id();
    let mut m = MAILBOX.lock();
    m.iter_mut()
        .find(|s| s.as_ref().is_some_and(|p| p.from != me))
        .and_then(|s| s.take())
}

/// Checks and frees an object another hart made; false if there was none.
fn free_one_remote(hart: usize) -> bool {
    // Taken out of the mailbox first: the free runs outside its lock.
    let Some(p) = take() else { return false };
    check!(
        p.obj.check(p.tag),
        "stress: object at {:#x} ({} B) from hart {} corrupted",
        p.obj.addr(),
        p.obj.len(),
        p.from
    );
    drop(p.obj);
    REMOTE[hart].fetch_add(1, Ordering::Relaxed);
    true
}

fn churn(hart: usize) {
    let mut rng = Rng::new(0x2545_f491 ^ (hart as u32 * 0x9e37_79b9));
    let mut short: Vec<Option<(Obj, u32)>> = Vec::with_capacity(SHORT);
    let mut long: Vec<Option<(Obj, u32)>> = Vec::with_capacity(LONG);
    short.resize_with(SHORT, || None);
    long.resize_with(LONG, || None);
    let mut tag = (hart as u32) << 28;
    let (mut bytes, mut posted, mut local) = (0u64, 0u32, 0u32);
    for op in 0..OPS {
        let r = rng.next_u32();
        let slot = if r & 63 == 0 {
            &mut long[(r >> 8) as usize % LONG]
        } else {
            &mut short[(r >> 8) as usize % SHORT]
        };
        if let Some((o, t)) = slot.take() {
            check!(
                o.check(t),
                "stress: object at {:#x} ({} B) corrupted",
                o.addr(),
                o.len()
            );
            // One object in eight goes to another hart to be freed.
            if (r >> 16) & 7 == 0 {
                match post(o, t) {
                    None => posted += 1,
                    Some((o, _)) => {
                        drop(o);
                        local += 1;
                    }
                }
            } else {
                drop(o);
                local += 1;
            }
        }
        let len = if (r >> 20) & 31 == 0 {
            rng.range(257, 4096)
        } else {
            rng.range(8, 256)
        };
        tag = tag.wrapping_add(0x61c8_8647);
        *slot = Some((Obj::new(len, tag), tag));
        bytes += len as u64;
        if op % 8 == 7 {
            free_one_remote(hart);
        }
    }
    OPS_DONE[hart].store(OPS, Ordering::Relaxed);
    KIB[hart].store((bytes >> 10) as u32, Ordering::Relaxed);
    CHURNED.fetch_add(1, Ordering::AcqRel);
    // Keep freeing what the others post until every hart has churned.
    while CHURNED.load(Ordering::Acquire) < HARTS {
        if !free_one_remote(hart) {
            core::hint::spin_loop();
        }
    }
    for slot in short.iter_mut().chain(long.iter_mut()) {
        if let Some((o, t)) = slot.take() {
            check!(o.check(t), "stress: object at {:#x} corrupted", o.addr());
            local += 1;
        }
    }
    POSTED[hart].store(posted, Ordering::Relaxed);
    LOCAL[hart].fetch_add(local, Ordering::Relaxed);
}

#[no_mangle]
extern "C" fn hart_main(hart: usize) -> ! {
    if hart != 0 {
        wait_heap();
        while !GO.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
        churn(hart);
        DONE.fetch_add(1, Ordering::AcqRel);
        loop {
            core::hint::spin_loop();
        }
    }
    init_heap("stress");
    let start = HEAP.stats();
    GO.store(true, Ordering::Release);
    let t = mtime();
    churn(0);
    DONE.fetch_add(1, Ordering::AcqRel);
    while DONE.load(Ordering::Acquire) < HARTS {
        core::hint::spin_loop();
    }
    let elapsed = mtime() - t;
    // What is left in the mailbox: hart 0 frees it (remote frees too, unless its own).
    let mut drained = 0;
    loop {
        let p = MAILBOX.lock().iter_mut().find_map(|s| s.take());
        let Some(p) = p else { break };
        check!(
            p.obj.check(p.tag),
            "stress: object at {:#x} from hart {} corrupted",
            p.obj.addr(),
            p.from
        );
        drained += 1;
    }
    let end = HEAP.stats();
    print_stats();
    println!("--- per-hart summary ---");
    let (mut ops, mut remote, mut posted) = (0u64, 0u64, 0u64);
    for h in 0..HARTS {
        let (o, r, p) = (
            OPS_DONE[h].load(Ordering::Relaxed),
            REMOTE[h].load(Ordering::Relaxed),
            POSTED[h].load(Ordering::Relaxed),
        );
        println!(
            "hart {} (slot {} of LockedSlots<{}>): {} ops, {} KiB allocated, {} posted to the mailbox, {} remote frees (objects of other harts), {} local frees",
            h,
            h,
            HARTS,
            o,
            KIB[h].load(Ordering::Relaxed),
            p,
            r,
            LOCAL[h].load(Ordering::Relaxed)
        );
        ops += o as u64;
        remote += r as u64;
        posted += p as u64;
    }
    println!(
        "stress: {} harts, {} ops, {} objects posted, {} freed by another hart, {} drained by hart 0 at the end; {} ms of guest time; all contents intact",
        HARTS,
        ops,
        posted,
        remote,
        drained,
        elapsed * 1000 / MTIME_HZ
    );
    check!(
        remote + drained == posted,
        "posted {} but freed {} + {}",
        posted,
        remote,
        drained
    );
    check!(ops == HARTS as u64 * OPS as u64, "ops {}", ops);
    check!(remote > 0, "no cross-hart frees");
    check!(
        end.mallocs - start.mallocs >= ops,
        "mallocs {} for {} ops",
        end.mallocs - start.mallocs,
        ops
    );
    check!(
        end.live_objects() == start.live_objects(),
        "live objects {} at the end, {} at the start",
        end.live_objects(),
        start.live_objects()
    );
    // Live bytes outside the tiny blocks (each hart may keep its current
    // 64-byte block for the next tiny object, with nothing live in it).
    let live = |s: &tieralloc::Stats| s.heap_alloc - s.tiny_blocks * TINY_BLOCK as u64;
    println!(
        "stress: live bytes {} at the start, {} at the end (heap_alloc {}, {} empty tiny blocks of {} B kept by the per-hart caches)",
        live(&start),
        live(&end),
        end.heap_alloc,
        end.tiny_blocks,
        TINY_BLOCK
    );
    check!(
        live(&end) == live(&start) && end.tiny_blocks <= HARTS as u64,
        "live bytes {} (tiny blocks {}) at the end, {} at the start",
        live(&end),
        end.tiny_blocks,
        live(&start)
    );
    println!("riscv: stress ok");
    pass()
}
