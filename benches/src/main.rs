//! tieralloc-bench: allocator comparison, every allocator driven through
//! `core::alloc::GlobalAlloc` in the same process.
//!
//! Run (from the repository root):
//!
//! ```text
//! cargo run --release -p tieralloc-bench               # full run, writes benches/results/bench.{md,svg} (~4 min on 2 cores)
//! cargo run --release -p tieralloc-bench -- --quick    # smoke run, a few seconds (used by `make test`)
//! cargo run --release -p tieralloc-bench -- --rounds 9 --only churn --alloc tieralloc,glibc
//! cargo run --release -p tieralloc-bench -- --callgrind  # instructions per alloc+free pair (valgrind)
//! ```
//!
//! Allocators: tieralloc (`LinuxHeap::new()`, rseq mode where available — the run
//! prints which), tieralloc-locked (`LinuxHeap::new_locked()`), glibc (`System`),
//! mimalloc, jemalloc, and talc, rlsf, buddy_system_allocator,
//! linked_list_allocator each over its own 1 GiB `MAP_NORESERVE` arena
//! (see `allocs.rs`). Workloads: see `workloads.rs`.
//!
//! Rounds are interleaved (round r runs every allocator once, starting from a
//! rotating allocator, then round r+1 starts) and the median round is reported,
//! so ratios hold on a noisy machine. One run of one allocator stops early at a
//! time budget (1.5 s; `--quick`: 30 ms) so that the O(n) arena allocators cost
//! bounded time; the report marks such rates with †. After the timed rounds,
//! peak RSS is measured in a child process per allocator and workload.
//!
//! The binary's own `#[global_allocator]` stays the system allocator: the
//! allocators under test only see the requests the workloads make through them.

use std::path::PathBuf;
use std::process;
use std::time::{Duration, Instant};

use std::alloc::GlobalAlloc;
use tieralloc_bench::allocs::{self, Visitor};
use tieralloc_bench::report::{self, Results, Row};
use tieralloc_bench::workloads::{self, Outcome, Workload};
use tieralloc_bench::{callgrind, rss};

struct Options {
    quick: bool,
    rounds: usize,
    only: Option<String>,
    allocs: Vec<&'static str>,
    rss: bool,
    out: Option<PathBuf>,
}

fn usage() -> ! {
    eprintln!(
        "usage: tieralloc-bench [--quick] [--rounds N] [--only SUBSTR] [--alloc A,B,..] [--no-rss] [--out DIR]\n\
         \x20      tieralloc-bench --callgrind [--quick]\n\
         \x20      tieralloc-bench --efficiency [--quick]\n\
         \x20      tieralloc-bench --code-size\n\
         \x20      tieralloc-bench --rss-child ALLOC WORKLOAD [--quick]\n\
         \n  --quick         shrink every workload 100x (smoke run, used by `make test`); writes nothing\
         \n  --rounds N      interleaved rounds per workload, median reported (default 5, quick 1)\
         \n  --only SUBSTR   run only the workloads whose name contains SUBSTR\
         \n  --alloc LIST    run only these allocators (comma-separated; default all: {})\
         \n  --no-rss        skip the peak-RSS child processes\
         \n  --out DIR       write bench.md and bench.svg to DIR (default: benches/results for a full,\
         \n                  unfiltered run; nothing otherwise)\
         \n  --callgrind     count instructions per 64-byte alloc+free pair with valgrind (binary `pair`)\
         \n  --efficiency    heap efficiency and churn over small regions against the embedded heaps\
         \n                  (writes benches/results/efficiency.md; --quick: smaller, writes nothing)\
         \n  --code-size     flash and static RAM of a minimal Cortex-M firmware per heap\
         \n                  (builds benches/firmware; writes benches/results/code-size.md)\
         \n  --rss-child     internal: run one workload once on one allocator (`none`: inputs only)",
        allocs::NAMES.join(",")
    );
    process::exit(2)
}

fn known_alloc(a: &str) -> &'static str {
    allocs::NAMES
        .iter()
        .copied()
        .find(|n| *n == a)
        .unwrap_or_else(|| {
            eprintln!("tieralloc-bench: unknown allocator `{a}`");
            usage()
        })
}

fn parse_args() -> Options {
    let mut quick = false;
    let mut rounds = None;
    let mut only = None;
    let mut sel = None;
    let mut rss = true;
    let mut out = None;
    let mut callgrind = false;
    let mut efficiency = false;
    let mut code_size = false;
    let mut rss_child = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--rounds" => {
                rounds = Some(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .filter(|&r| r > 0)
                        .unwrap_or_else(|| usage()),
                )
            }
            "--only" => only = Some(args.next().unwrap_or_else(|| usage())),
            "--alloc" => {
                let list = args.next().unwrap_or_else(|| usage());
                sel = Some(list.split(',').map(known_alloc).collect::<Vec<_>>());
            }
            "--no-rss" => rss = false,
            "--out" => out = Some(PathBuf::from(args.next().unwrap_or_else(|| usage()))),
            "--callgrind" => callgrind = true,
            "--efficiency" => efficiency = true,
            "--code-size" => code_size = true,
            "--rss-child" => {
                let (Some(al), Some(w)) = (args.next(), args.next()) else {
                    usage()
                };
                rss_child = Some((al, w));
            }
            "-h" | "--help" => usage(),
            _ => {
                eprintln!("tieralloc-bench: unknown argument `{a}`");
                usage()
            }
        }
    }
    if let Some((al, w)) = rss_child {
        rss_child_main(&al, &w, quick)
    }
    if callgrind {
        callgrind_main(quick)
    }
    if efficiency {
        efficiency_main(quick)
    }
    if code_size {
        code_size_main(quick)
    }
    Options {
        quick,
        rounds: rounds.unwrap_or(if quick { 1 } else { 5 }),
        only,
        allocs: sel.unwrap_or_else(|| allocs::NAMES.to_vec()),
        rss,
        out,
    }
}

/// Time one run of one allocator may take before its threads stop early.
fn budget(quick: bool) -> Duration {
    if quick {
        Duration::from_millis(30)
    } else {
        Duration::from_millis(1500)
    }
}

fn scale(quick: bool) -> u64 {
    if quick {
        100
    } else {
        1
    }
}

/// `--rss-child ALLOC WORKLOAD`: one run, then exit (the parent reads ru_maxrss).
fn rss_child_main(alloc: &str, workload: &str, quick: bool) -> ! {
    let Some(w) = workloads::workload(workload, scale(quick)) else {
        eprintln!("tieralloc-bench: unknown workload `{workload}`");
        process::exit(2)
    };
    if alloc != "none" && allocs::visit(alloc, Once(&w, budget(quick))).is_none() {
        eprintln!("tieralloc-bench: unknown allocator `{alloc}`");
        process::exit(2)
    }
    println!("{}", rss::child_report());
    process::exit(0)
}

struct Once<'a>(&'a Workload, Duration);
impl Visitor for Once<'_> {
    type Out = Outcome;
    fn visit<A: GlobalAlloc + Sync + 'static>(self, name: &'static str, a: &'static A) -> Outcome {
        self.0.run(a, name, self.1)
    }
}

fn callgrind_main(quick: bool) -> ! {
    match callgrind::run(quick) {
        Ok(md) => {
            if !quick {
                let dir = results_dir();
                let path = dir.join("callgrind.md");
                if let Err(e) =
                    std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, md))
                {
                    eprintln!("tieralloc-bench: cannot write {}: {e}", path.display());
                    process::exit(1)
                }
                println!("\nwrote {}", path.display());
            }
            process::exit(0)
        }
        Err(e) => {
            eprintln!("tieralloc-bench --callgrind: {e}");
            process::exit(1)
        }
    }
}

/// `--efficiency`: the embedded comparison over small regions (see `efficiency.rs`).
fn efficiency_main(quick: bool) -> ! {
    let command = if quick {
        "cargo run --release -p tieralloc-bench -- --efficiency --quick"
    } else {
        "cargo run --release -p tieralloc-bench -- --efficiency"
    };
    let md = tieralloc_bench::efficiency::run(quick, command, &report::today());
    println!("{md}");
    if !quick {
        let dir = results_dir();
        let path = dir.join("efficiency.md");
        if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, &md)) {
            eprintln!("tieralloc-bench: cannot write {}: {e}", path.display());
            process::exit(1)
        }
        println!("wrote {}", path.display());
    }
    process::exit(0)
}

/// `--code-size`: flash and static RAM per heap in a minimal firmware (see
/// `codesize.rs`). `--quick` builds and prints without writing.
fn code_size_main(quick: bool) -> ! {
    let command = "cargo run --release -p tieralloc-bench -- --code-size";
    let md = match tieralloc_bench::codesize::run(command, &report::today()) {
        Ok(md) => md,
        Err(e) => {
            eprintln!("tieralloc-bench --code-size: {e}");
            process::exit(1)
        }
    };
    println!("{md}");
    if !quick {
        let dir = results_dir();
        let path = dir.join("code-size.md");
        if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, &md)) {
            eprintln!("tieralloc-bench: cannot write {}: {e}", path.display());
            process::exit(1)
        }
        println!("wrote {}", path.display());
    }
    process::exit(0)
}

fn results_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results")
}

/// An allocator with the workloads monomorphised for it (no dynamic dispatch per op).
type Runner = Box<dyn Fn(&Workload) -> Outcome>;

struct MakeRunner(Duration);
impl Visitor for MakeRunner {
    type Out = Runner;
    fn visit<A: GlobalAlloc + Sync + 'static>(self, name: &'static str, a: &'static A) -> Runner {
        let budget = self.0;
        Box::new(move |w: &Workload| w.run(a, name, budget))
    }
}

/// Per allocator, Mops/s of every round, and whether any round stopped early.
fn run_workload(w: &Workload, runners: &[Runner], rounds: usize) -> (Vec<Vec<f64>>, Vec<bool>) {
    let mut mops = vec![Vec::with_capacity(rounds); runners.len()];
    let mut cut = vec![0; runners.len()];
    for round in 0..rounds {
        // Every allocator once per round; the starting allocator rotates so that no
        // allocator always runs first (cold caches) or right after a slow one.
        for k in 0..runners.len() {
            let i = (round + k) % runners.len();
            let o = runners[i](w);
            mops[i].push(o.mops());
            cut[i] += usize::from(o.ops < w.ops());
        }
    }
    // Marked when most rounds stopped early (a slow allocator), not when one
    // round did because the machine was busy.
    (mops, cut.iter().map(|&c| 2 * c > rounds).collect())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    let opts = parse_args();
    let start = Instant::now();
    let names: Vec<&str> = workloads::NAMES
        .iter()
        .copied()
        .filter(|n| opts.only.as_deref().is_none_or(|s| n.contains(s)))
        .collect();
    if names.is_empty() {
        eprintln!(
            "tieralloc-bench: no workload matches --only {:?}",
            opts.only.unwrap_or_default()
        );
        process::exit(2);
    }
    let runners: Vec<Runner> = opts
        .allocs
        .iter()
        .map(|a| allocs::visit(a, MakeRunner(budget(opts.quick))).unwrap_or_else(|| usage()))
        .collect();
    let full = !opts.quick && opts.only.is_none() && opts.allocs.len() == allocs::NAMES.len();
    let mut command = String::from("cargo run --release -p tieralloc-bench");
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        command = format!("{command} -- {}", args.join(" "));
    }

    let machine = report::machine();
    println!(
        "tieralloc-bench{}: {} interleaved rounds per workload, median reported",
        if opts.quick { " --quick" } else { "" },
        opts.rounds
    );
    println!("  machine: {machine}; load average {}", load_average());
    println!("  tieralloc mode: {}", allocs::tieralloc_mode());
    println!("  ratios are throughput ratios (higher = faster)");

    let mut rows = Vec::new();
    for name in &names {
        let w = workloads::workload(name, scale(opts.quick)).unwrap_or_else(|| unreachable!());
        let t = Instant::now();
        let (mops, cut) = run_workload(&w, &runners, opts.rounds);
        eprintln!(
            "  {:<12} {:6.1} s  (load average {})",
            w.name,
            t.elapsed().as_secs_f64(),
            load_average()
        );
        rows.push(Row {
            cut,
            ..Row::new(w.name, w.threads(), w.ops(), w.op(), mops)
        });
    }
    let mut res = Results {
        allocs: opts.allocs.clone(),
        rows,
        rounds: opts.rounds,
        command,
        date: report::today(),
        machine,
        tieralloc_mode: allocs::tieralloc_mode(),
        budget_s: budget(opts.quick).as_secs_f64(),
        seconds: 0.0,
    };
    for r in &res.rows {
        report::print_row(&res, r);
    }

    if opts.rss {
        measure_rss(&mut res, opts.quick);
        report::print_rss(&res);
    }
    res.seconds = start.elapsed().as_secs_f64();
    println!(
        "\nload average {}; total {:.1} s",
        load_average(),
        res.seconds
    );

    let out = opts.out.clone().or_else(|| full.then(results_dir));
    if let Some(dir) = out {
        let write = |file: &str, text: String| {
            let path = dir.join(file);
            if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, text))
            {
                eprintln!("tieralloc-bench: cannot write {}: {e}", path.display());
                process::exit(1)
            }
            println!("wrote {}", path.display());
        };
        write("bench.md", report::markdown(&res));
        write("bench.svg", report::svg(&res));
    }
}

/// Peak RSS per allocator and workload (quick: the first two workloads only).
fn measure_rss(res: &mut Results, quick: bool) {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("tieralloc-bench: no RSS measurement: cannot find own executable: {e}");
            return;
        }
    };
    let allocs = res.allocs.clone();
    let take = if quick { 2 } else { res.rows.len() };
    for r in res.rows.iter_mut().take(take) {
        let peak = |a: &str| match rss::child_peak_kib(&exe, a, r.workload, quick) {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("tieralloc-bench: {e}");
                None
            }
        };
        let Some(base) = peak("none") else { continue };
        r.rss_base_kib = Some(base);
        r.rss_kib = Some(allocs.iter().map(|a| peak(a).map(|k| k - base)).collect());
    }
}
