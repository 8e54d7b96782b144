//! tieralloc-bench: allocator comparison through `GlobalAlloc`. See `main.rs`
//! for the command line; this library holds what the bench binary and the
//! `pair` binary (instruction counts under callgrind) share.

pub mod allocs;
pub mod callgrind;
pub mod codesize;
pub mod efficiency;
pub mod report;
pub mod rss;
pub mod workloads;

#[cfg(test)]
mod tests {
    use std::alloc::GlobalAlloc;

    use crate::allocs::{self, Visitor};
    use crate::workloads::{workloads, Workload};

    struct RunAll<'a>(&'a [Workload]);
    impl Visitor for RunAll<'_> {
        type Out = ();
        fn visit<A: GlobalAlloc + Sync + 'static>(self, name: &'static str, a: &'static A) {
            for w in self.0 {
                w.run(a, name, std::time::Duration::from_secs(60));
            }
        }
    }

    #[test]
    fn every_workload_runs_on_every_allocator() {
        let ws = workloads(10_000);
        for n in allocs::NAMES {
            allocs::visit(n, RunAll(&ws)).unwrap();
        }
    }
}
