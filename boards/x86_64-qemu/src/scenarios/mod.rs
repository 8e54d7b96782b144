//! Scenarios, chosen with `-append "scenario=NAME"`; each returns true on
//! success (the kernel then exits QEMU with status 33, else 35).
//!
//! | name          | what                                                                 |
//! |---------------|----------------------------------------------------------------------|
//! | `boot`        | boot and basic heap use (Box, Vec, String, a large object), stats     |
//! | `main`        | the main job: a mixed collections workload on every CPU with cross-CPU frees, stats table and per-CPU summary |
//! | `many_boxes`  | blog_os's `many_boxes_long_lived` ×10, plus 10,000 long-lived boxes    |
//! | `stress`      | every CPU: churn with content checks, cross-CPU frees through a shared queue |
//! | `oom`         | allocate until null (small `-m`), keep running, free, allocate again  |
//! | `scavenge`    | large objects and scavenging give frames back to the frame allocator |
//! | `guard`       | a stack overflow on CPU 1 hits its guard page and is reported         |
//! | `double_free` | (feature `checks`) a double free panics with a clear message (exit 35) |
//! | `foreign_free`| (feature `checks`) a free of a pointer outside the heap panics (exit 35) |
//! | `bench`       | tieralloc vs linked_list_allocator, same boot; 1-CPU vs all-CPU stress |

use crate::{println, Machine};

pub mod basic;
pub mod bench;
pub mod faults;
pub mod work;

pub fn run(name: &str, m: &Machine) -> bool {
    match name {
        "boot" => basic::boot(m),
        "main" => work::main(m),
        "many_boxes" => basic::many_boxes(m),
        "stress" => work::stress(m),
        "oom" => basic::oom(m),
        "scavenge" => basic::scavenge(m),
        "guard" => faults::guard(m),
        "double_free" => faults::double_free(m),
        "foreign_free" => faults::foreign_free(m),
        "bench" => bench::bench(m),
        _ => {
            println!("unknown scenario {name:?}");
            false
        }
    }
}

/// The crate's one deterministic generator (xorshift64*).
pub use tieralloc::internals::Rng;

/// The scenarios' draws over [`Rng`].
pub trait Draw {
    /// Uniform in `lo..=hi`, as `lo + next % (hi - lo + 1)` (the sequence the
    /// published kernel numbers were measured on).
    fn between(&mut self, lo: u64, hi: u64) -> u64;
}

impl Draw for Rng {
    #[inline(always)]
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// Checks a condition, printing what failed; returns it.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($arg:tt)*) => {{
        let ok = $cond;
        if !ok {
            $crate::println!("CHECK FAILED: {} ({})", format_args!($($arg)*), stringify!($cond));
        }
        ok
    }};
}
