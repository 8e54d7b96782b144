//! `tieralloc-bench --callgrind`: instructions per 64-byte alloc+free pair.
//!
//! Dynamic count: `valgrind --tool=callgrind` runs the `pair` binary for each
//! allocator at two loop counts N1 < N2; (Ir(N2) − Ir(N1)) / (N2 − N1) is the
//! cost of one loop iteration with start-up and first-use set-up cancelled out,
//! and the same slope of the `none` loop (a stand-in allocator returning a static
//! buffer) is subtracted. Valgrind does not implement the rseq system call, so
//! glibc registers no rseq area under it and tieralloc runs in its locked mode
//! there.
//!
//! Static count of tieralloc's rseq fast path: `objdump` disassembles
//! `pairs_tieralloc` (the loop, one unmangled symbol in `pair`), and a walk from
//! the entry finds the first loop that runs without a `call`, a `lock`-prefixed
//! instruction or a trap. At each branch it first takes the side that the
//! locked-mode run under callgrind (`--dump-instr=yes`) executed on most
//! iterations — that profile settles every branch outside the per-CPU
//! operations, such as the size-class lookup — and otherwise the fall-through
//! side, backtracking from dead ends (the locked branch calls `sched_getcpu`
//! and takes a lock, so the walk ends up in the rseq sections, where the
//! fall-through side is the one where the pop finds an object and the push finds
//! room). Its length minus the same walk's on `pairs_none` is the count. Code is
//! disassembled from each address the walk reaches, so the data word before each
//! rseq abort handler (`.long RSEQ_SIG`) never misaligns the instruction stream.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::allocs;

/// Loop counts of the two runs whose difference gives the slope.
fn counts(quick: bool) -> (u64, u64) {
    if quick {
        (10_000, 60_000)
    } else {
        (200_000, 1_200_000)
    }
}

/// Runs `cmd`; its stdout, or an error naming it.
fn output(cmd: &mut Command) -> Result<(String, String), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Builds `pair` (release) next to this executable and returns its path;
/// with `hardened`, with the crate's feature `hardened` (the C library's
/// build), into a target directory of its own beside this one
/// (`target/hardened/release/pair`), so that neither build replaces the other.
fn build_pair(hardened: bool) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let dir = exe.parent().ok_or("executable has no directory")?;
    let target = dir.parent().ok_or("executable's directory has no parent")?;
    let (target, dir) = if hardened {
        let t = target.join("hardened");
        let d = t.join(
            dir.file_name()
                .ok_or("executable's directory has no name")?,
        );
        (t, d)
    } else {
        (target.to_path_buf(), dir.to_path_buf())
    };
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "-p",
        "tieralloc-bench",
        "--bin",
        "pair",
    ]);
    if hardened {
        cmd.args(["--features", "tieralloc/hardened"]);
    }
    // Build into the same target directory as this binary (`.../target/release/`).
    cmd.env("CARGO_TARGET_DIR", &target);
    println!("building pair: {cmd:?}");
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("cargo build of `pair` failed".into());
    }
    let pair = dir.join("pair");
    pair.exists()
        .then_some(pair)
        .ok_or_else(|| format!("{} not found after the build", dir.display()))
}

/// Total instructions (callgrind `summary:`) and pair's stderr, for `pair alloc n`.
fn callgrind_ir(pair: &Path, alloc: &str, n: u64, scratch: &Path) -> Result<(u64, String), String> {
    let out = scratch.join(format!("callgrind.{alloc}.{n}.out"));
    let (_, stderr) = output(
        Command::new("valgrind")
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(pair)
            .arg(alloc)
            .arg(n.to_string()),
    )?;
    let text = std::fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let _ = std::fs::remove_file(&out);
    let ir = total_ir(&text, &out)?;
    let notes = stderr
        .lines()
        .filter(|l| !l.starts_with("=="))
        .collect::<Vec<_>>()
        .join("; ");
    Ok((ir, notes))
}

/// The instruction total of a callgrind output file's text (`summary:` or
/// `totals:`), read from `out`.
fn total_ir(text: &str, out: &Path) -> Result<u64, String> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no instruction total in {}", out.display()))
}

/// One dynamic measurement.
pub struct Count {
    pub alloc: &'static str,
    /// Instructions per loop iteration (baseline not yet subtracted).
    pub slope: f64,
    pub notes: String,
}

/// Runs everything; returns the markdown report (also printed).
pub fn run(quick: bool) -> Result<String, String> {
    output(Command::new("valgrind").arg("--version"))
        .map_err(|e| format!("valgrind is needed ({e})"))?;
    let pair = build_pair(false)?;
    let scratch =
        std::env::temp_dir().join(format!("tieralloc-bench-callgrind-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let (n1, n2) = counts(quick);
    let mut rows = Vec::new();
    for &alloc in std::iter::once(&"none").chain(allocs::NAMES) {
        let (a, notes) = callgrind_ir(&pair, alloc, n1, &scratch)?;
        let (b, _) = callgrind_ir(&pair, alloc, n2, &scratch)?;
        let slope = (b as f64 - a as f64) / (n2 - n1) as f64;
        println!("{alloc:<17} {slope:8.1} instructions per loop iteration   {notes}");
        rows.push(Count {
            alloc,
            slope,
            notes,
        });
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let base = rows[0].slope;

    let stat = static_rseq(&pair);
    let getcpu = stat.as_ref().map_or(String::new(), |s| {
        format!(
            "; {:.0} of them in glibc's `sched_getcpu`, which under valgrind (no rseq area) takes its slow path; \
             natively it reads the rseq area",
            s.getcpu
        )
    });
    let mut md = String::new();
    let _ = writeln!(md, "<!-- generated by `cargo run --release -p tieralloc-bench -- --callgrind`; do not edit -->");
    let _ = writeln!(
        md,
        "Instructions per 64-byte alloc+free pair, {}; `valgrind --tool=callgrind` on `pair ALLOC N` \
         (benches/src/bin/pair.rs) at N = {n1} and {n2}, slope between the two, minus the empty loop's \
         ({base:.1} instructions per iteration: a stand-in allocator returning a static buffer).\n",
        crate::report::today()
    );
    let _ = writeln!(
        md,
        "| allocator | instructions per pair | note |\n|---|---:|---|"
    );
    for r in &rows[1..] {
        let note = match r.alloc {
            "tieralloc" => format!(
                "under valgrind glibc registers no rseq area, so this is the **locked** mode{getcpu}: see the static count below for the rseq mode"
            ),
            "tieralloc-locked" => format!("per-CPU locks{getcpu}"),
            _ => String::new(),
        };
        let _ = writeln!(md, "| {} | {:.1} | {note} |", r.alloc, r.slope - base);
    }
    let rust_pair = stat.as_ref().ok().map(|s| s.tier as i64 - s.none as i64);
    // The same pair with feature `hardened`, the C library's build: the
    // C pair's like-for-like comparison.
    let hardened = build_pair(true).and_then(|p| static_rseq(&p));
    let rust_hardened = hardened
        .as_ref()
        .ok()
        .map(|s| s.tier as i64 - s.none as i64);
    match stat {
        Ok(s) => {
            let _ = writeln!(
                md,
                "\ntieralloc **rseq** fast path, counted statically (valgrind cannot run it): {} instructions per pair \
                 ({} in the loop of `pairs_tieralloc` on the path where the per-CPU pop finds an object and the push finds room, \
                 minus {} in the loop of `pairs_none`). The path, from `objdump -d` of the `pair` binary:\n\n```text\n{}```",
                s.tier as i64 - s.none as i64,
                s.tier,
                s.none,
                s.listing
            );
        }
        Err(e) => {
            let _ = writeln!(md, "\nstatic count of the rseq path unavailable: {e}");
        }
    }
    match hardened {
        Ok(s) => {
            let _ = writeln!(
                md,
                "\nThe same, built with feature `hardened` (as the C library is: the allocation clears the \
                 object's key word, the free checks and writes it): {} instructions per pair ({} in the loop, \
                 minus {}):\n\n```text\n{}```",
                s.tier as i64 - s.none as i64,
                s.tier,
                s.none,
                s.listing
            );
        }
        Err(e) => {
            let _ = writeln!(
                md,
                "\nstatic count of the rseq path with `hardened` unavailable: {e}"
            );
        }
    }
    c_abi(&mut md, quick, rust_pair, rust_hardened)?;
    println!("\n{md}");
    Ok(md)
}

// ---------------------------------------------------------------------------
// The C ABI: libtieralloc.so and the C allocators under LD_PRELOAD.
// ---------------------------------------------------------------------------

/// The C allocators and the library each is preloaded from (`None`: glibc,
/// nothing preloaded); `none` is the stub of `preload/bench/bump.c`.
const C_ALLOCS: &[(&str, Option<&str>)] = &[
    ("glibc", None),
    (
        "jemalloc",
        Some("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
    ),
    (
        "mimalloc",
        Some("/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"),
    ),
    (
        "tcmalloc",
        Some("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"),
    ),
];

/// The repository's root (the bench crate's parent).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// Builds `libtieralloc.so` (release) into this executable's target
/// directory and returns its path.
fn build_preload() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let dir = exe.parent().ok_or("executable has no directory")?;
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "-p", "tieralloc-preload"]);
    if let Some(target) = dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    println!("building libtieralloc.so: {cmd:?}");
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("cargo build of tieralloc-preload failed".into());
    }
    let lib = dir.join("libtieralloc.so");
    lib.exists()
        .then_some(lib)
        .ok_or_else(|| format!("{} not found after the build", dir.display()))
}

/// One callgrind run of `cpair 64 N 1000` with `preload` preloaded:
/// total instructions and, per symbol of `syms`, instructions per address.
fn c_run(
    cpair: &Path,
    preload: Option<&Path>,
    n: u64,
    syms: &[&str],
    out: &Path,
) -> Result<(u64, Vec<HashMap<u64, u64>>), String> {
    let mut cmd = Command::new("valgrind");
    cmd.args(["--tool=callgrind", "--dump-instr=yes"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(cpair)
        .args(["64", &n.to_string(), "1000"])
        .env_remove("LD_PRELOAD");
    if let Some(p) = preload {
        cmd.env("LD_PRELOAD", p);
    }
    output(&mut cmd)?;
    let text = std::fs::read_to_string(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let _ = std::fs::remove_file(out);
    let total = total_ir(&text, out)?;
    Ok((
        total,
        syms.iter().map(|s| parse_instr_counts(&text, s)).collect(),
    ))
}

/// Compiles a C file with `cc -O2` and `extra` flags into `out`.
fn cc(src: &Path, out: &Path, extra: &[&str]) -> Result<(), String> {
    output(
        Command::new("cc")
            .arg("-O2")
            .args(extra)
            .arg("-o")
            .arg(out)
            .arg(src),
    )
    .map(|_| ())
}

/// Appends the C ABI section to `md`: dynamic counts of the C allocators'
/// pair and the static count of libtieralloc.so's rseq path (`malloc` and
/// `free` from entry to `ret`), against `rust_pair`, the Rust sized pair's
/// static count, and `rust_hardened`, the same with feature `hardened`.
fn c_abi(
    md: &mut String,
    quick: bool,
    rust_pair: Option<i64>,
    rust_hardened: Option<i64>,
) -> Result<(), String> {
    let root = repo_root();
    let lib = build_preload()?;
    let scratch = std::env::temp_dir().join(format!("tieralloc-bench-c-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let cpair = scratch.join("cpair");
    let stub = scratch.join("bump.so");
    let r = (|| {
        cc(&root.join("preload/bench/pair.c"), &cpair, &[])?;
        cc(
            &root.join("preload/bench/bump.c"),
            &stub,
            &["-shared", "-fPIC"],
        )?;
        let (n1, n2) = counts(quick);
        let out = scratch.join("callgrind.out");
        let slope = |preload: Option<&Path>, syms: &[&str]| -> Result<(f64, Vec<f64>), String> {
            let (a, pa) = c_run(&cpair, preload, n1, syms, &out)?;
            let (b, pb) = c_run(&cpair, preload, n2, syms, &out)?;
            let per = |x: u64, y: u64| (y as f64 - x as f64) / (n2 - n1) as f64;
            let sum = |m: &HashMap<u64, u64>| m.values().sum::<u64>();
            let syms = pa
                .iter()
                .zip(&pb)
                .map(|(x, y)| per(sum(x), sum(y)))
                .collect();
            Ok((per(a, b), syms))
        };
        // The stub: the loop, the calls and the PLT jumps, plus its own malloc and free.
        let (none, own) = slope(Some(&stub), &["malloc", "free"])?;
        let calls = none - own.iter().sum::<f64>();
        println!("C stub: {none:.1} instructions per iteration, {calls:.1} of them outside malloc and free");
        let mut rows = Vec::new();
        for &(name, path) in C_ALLOCS {
            if let Some(p) = path {
                if !Path::new(p).exists() {
                    return Err(format!("{p} missing (apt-get install -y libjemalloc2 libmimalloc2.0 libtcmalloc-minimal4)"));
                }
            }
            let (x, _) = slope(path.map(Path::new), &[])?;
            println!("C {name:<10} {:8.1} instructions per pair", x - calls);
            rows.push((name, x - calls));
        }
        let (x, _) = slope(Some(&lib), &[])?;
        println!(
            "C tieralloc  {:8.1} instructions per pair (locked mode)",
            x - calls
        );
        rows.push(("tieralloc", x - calls));

        // The rseq path of libtieralloc.so, walked statically.
        let mut paths = Vec::new();
        for sym in ["malloc", "free"] {
            let (start, size) = symbol(&lib, sym)?;
            let mut d = Disasm {
                bin: &lib,
                end: start + size,
                cache: HashMap::new(),
                counts: HashMap::new(),
                hot: 1,
            };
            let path = shortest_path_to_ret(&mut d, start)
                .ok_or_else(|| format!("no call-free path from {sym} to a ret"))?;
            let mut listing = String::new();
            for a in &path {
                let _ = writeln!(listing, "{a:8x}  {}", d.cache[a].text);
            }
            if !listing.contains("fs:") {
                return Err(format!(
                    "the path through {sym} does not read the rseq area (fs:)"
                ));
            }
            paths.push((sym, path.len(), listing));
        }
        Ok((calls, rows, paths))
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    let (calls, rows, paths) = r?;
    let _ = writeln!(
        md,
        "\n## The C ABI\n\nInstructions inside the allocator per `malloc(64)` + `free` pair of \
         `preload/bench/pair.c` under `LD_PRELOAD` (callgrind, slope between the same N as above, \
         less what the loop, the calls and the PLT jumps cost: {calls:.1} per pair, the slope with the stub \
         allocator of `preload/bench/bump.c` less the stub's own `malloc` and `free`). \
         libtieralloc.so is built as shipped (feature `hardened`: double frees caught).\n"
    );
    let _ = writeln!(
        md,
        "| allocator | instructions per pair | note |\n|---|---:|---|"
    );
    for (name, x) in &rows {
        let note = if *name == "tieralloc" {
            "locked mode (no rseq area under valgrind); the rseq path is counted below"
        } else {
            ""
        };
        let _ = writeln!(md, "| {name} | {x:.1} | {note} |");
    }
    let total: usize = paths.iter().map(|p| p.1).sum();
    let mut vs = rust_pair.map_or(String::new(), |r| {
        format!(
            "; the Rust sized pair above, inlined in its loop, is {r}: the C pair is {} more",
            total as i64 - r
        )
    });
    if let Some(h) = rust_hardened {
        let _ = write!(
            vs,
            "; like for like, with `hardened` on both sides, the Rust sized pair is {h}: the C pair \
             is {} more (what the unsized free costs: the page-map lookup of the class and the slot test)",
            total as i64 - h
        );
    }
    let _ = writeln!(
        md,
        "\nlibtieralloc.so's **rseq** path, counted statically from entry to `ret` (the shortest path \
         through the rseq section without a call: the class shares no line, the per-CPU pop finds an \
         object and the push finds room): `malloc` {} + `free` {} = {total} instructions per pair{vs}.\n",
        paths[0].1, paths[1].1
    );
    for (sym, _, listing) in &paths {
        let _ = writeln!(md, "`{sym}`:\n\n```text\n{listing}```\n");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Static path walk.
// ---------------------------------------------------------------------------

struct Insn {
    text: String,
    next: u64,
}

struct Disasm<'a> {
    bin: &'a Path,
    end: u64,
    cache: HashMap<u64, Insn>,
    /// Executions per instruction address in a profiled run (may be empty).
    counts: HashMap<u64, u64>,
    /// Executions that make an address hot.
    hot: u64,
}

/// Parses objdump lines `  3aa09:\tmov    r15,...` into (address, text).
fn parse_objdump(out: &str) -> Vec<(u64, String)> {
    out.lines()
        .filter_map(|l| {
            let (a, rest) = l.split_once(":\t")?;
            let addr = u64::from_str_radix(a.trim(), 16).ok()?;
            Some((addr, rest.trim().to_string()))
        })
        .collect()
}

impl Disasm<'_> {
    /// The instruction at `addr`, disassembling from exactly there if needed.
    fn at(&mut self, addr: u64) -> Option<&Insn> {
        if !self.cache.contains_key(&addr) {
            let stop = (addr + 96).min(self.end);
            let (out, _) = output(
                Command::new("objdump")
                    .args(["-d", "--no-show-raw-insn", "-M", "intel"])
                    .arg(format!("--start-address={addr:#x}"))
                    .arg(format!("--stop-address={stop:#x}"))
                    .arg(self.bin),
            )
            .ok()?;
            let v = parse_objdump(&out);
            // Keep instructions whose successor is known and that cannot have
            // been cut off by the stop address (x86 instructions are <= 15 bytes).
            for w in v.windows(2) {
                if w[1].0 + 15 < stop || stop == self.end {
                    self.cache.entry(w[0].0).or_insert(Insn {
                        text: w[0].1.clone(),
                        next: w[1].0,
                    });
                }
            }
            if v.len() == 1 && stop == self.end {
                self.cache.entry(v[0].0).or_insert(Insn {
                    text: v[0].1.clone(),
                    next: self.end,
                });
            }
        }
        self.cache.get(&addr)
    }
}

/// Jump target of a `j*` instruction's text (`jne    3ab80 <f+0x220>`).
fn target(text: &str) -> Option<u64> {
    let op = text.split_whitespace().nth(1)?;
    u64::from_str_radix(op, 16).ok()
}

/// Where control may go after the instruction `text` (whose successor in
/// the listing is `next`), or `None` where a fast path cannot go: a call, a
/// jump through a register or memory (a tail call through the GOT), a
/// locked instruction, a trap or a system call. A `ret` has no successor.
fn successors(text: &str, next: u64) -> Option<Vec<u64>> {
    let mnem = text.split_whitespace().next().unwrap_or("");
    if text.contains("lock ")
        || mnem.starts_with("call")
        || (mnem == "jmp" && target(text).is_none())
        || matches!(mnem, "ud2" | "int3" | "hlt" | "syscall" | "(bad)")
    {
        return None;
    }
    Some(if mnem.starts_with("ret") {
        Vec::new()
    } else if mnem == "jmp" {
        target(text).into_iter().collect()
    } else if mnem.starts_with('j') {
        std::iter::once(next).chain(target(text)).collect()
    } else {
        vec![next]
    })
}

/// The shortest path from `entry` to a `ret` through an instruction that
/// reads the rseq area (`fs:`), without calls, locked instructions, traps or
/// cycles: a function's rseq fast path (where the class of the request
/// shares no line, the pop finds an object and the push finds room; a
/// branch to an extra check, such as the owner test of the classes under a
/// line, makes a path longer), inside the function (`entry` to `d.end`).
/// Returns the path's addresses, the `ret` included.
fn shortest_path_to_ret(d: &mut Disasm<'_>, entry: u64) -> Option<Vec<u64>> {
    fn walk(
        d: &mut Disasm<'_>,
        addr: u64,
        path: &mut Vec<u64>,
        best: &mut Option<Vec<u64>>,
        budget: &mut u32,
    ) {
        // The fast path stays inside the function: the rseq sections' abort
        // handlers and the cold paths lie outside it.
        if addr < path.first().copied().unwrap_or(addr)
            || addr >= d.end
            || path.contains(&addr)
            || *budget == 0
            || best.as_ref().is_some_and(|b| path.len() + 1 >= b.len())
        {
            return;
        }
        *budget -= 1;
        let Some((text, next)) = d.at(addr).map(|i| (i.text.clone(), i.next)) else {
            return;
        };
        let Some(succ) = successors(&text, next) else {
            return;
        };
        if succ.is_empty() {
            // A ret. One before the rseq section is a way out (a null pointer,
            // the epilogue a slow call returns through), not the fast path.
            if path.iter().any(|a| d.cache[a].text.contains("fs:")) {
                path.push(addr);
                *best = Some(path.clone());
                path.pop();
            }
            return;
        }
        path.push(addr);
        for s in succ {
            walk(d, s, path, best, budget);
        }
        path.pop();
    }
    let mut best = None;
    let mut budget = 200_000;
    walk(d, entry, &mut Vec::new(), &mut best, &mut budget);
    best
}

/// First cycle reachable from `entry` without calls, locked instructions or
/// traps, fall-through edges first. Returns the cycle's addresses.
fn hot_cycle(d: &mut Disasm<'_>, entry: u64) -> Option<Vec<u64>> {
    fn walk(d: &mut Disasm<'_>, addr: u64, path: &mut Vec<u64>, budget: &mut u32) -> Option<usize> {
        if let Some(i) = path.iter().position(|&a| a == addr) {
            return Some(i);
        }
        if *budget == 0 || path.len() > 600 {
            return None;
        }
        *budget -= 1;
        let (text, next) = {
            let i = d.at(addr)?;
            (i.text.clone(), i.next)
        };
        // A ret, like a call, leaves the loop.
        let mut succ = successors(&text, next).filter(|s| !s.is_empty())?;
        // The profiled run's hot side first; stable, so fall-through stays first otherwise.
        let hot = |a: &u64| d.counts.get(a).is_some_and(|&c| c >= d.hot);
        succ.sort_by_key(|a| !hot(a));
        path.push(addr);
        for s in succ {
            if let Some(i) = walk(d, s, path, budget) {
                return Some(i);
            }
        }
        path.pop();
        None
    }
    let mut path = Vec::new();
    let mut budget = 200_000;
    let i = walk(d, entry, &mut path, &mut budget)?;
    Some(path[i..].to_vec())
}

/// A symbol's address and size from `nm -S`.
fn symbol(bin: &Path, name: &str) -> Result<(u64, u64), String> {
    let (out, _) = output(Command::new("nm").args(["-S", "--defined-only"]).arg(bin))?;
    out.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4 && f[3] == name)
                .then(|| {
                    Some((
                        u64::from_str_radix(f[0], 16).ok()?,
                        u64::from_str_radix(f[1], 16).ok()?,
                    ))
                })
                .flatten()
        })
        .ok_or_else(|| format!("symbol {name} not found in {}", bin.display()))
}

struct Static {
    tier: usize,
    none: usize,
    listing: String,
    /// Instructions per pair spent in glibc's `sched_getcpu` in the locked run under valgrind.
    getcpu: f64,
}

/// Length of the hot loop of `sym`, and its listing; `profile`: executions per
/// address from callgrind and the count that makes an address hot.
fn loop_of(
    bin: &Path,
    sym: &str,
    profile: (HashMap<u64, u64>, u64),
) -> Result<(usize, String), String> {
    let (start, size) = symbol(bin, sym)?;
    let mut d = Disasm {
        bin,
        end: start + size,
        cache: HashMap::new(),
        counts: profile.0,
        hot: profile.1,
    };
    let cycle =
        hot_cycle(&mut d, start).ok_or_else(|| format!("no call-free loop found in {sym}"))?;
    let mut listing = String::new();
    for a in &cycle {
        let _ = writeln!(listing, "{a:8x}  {}", d.cache[a].text);
    }
    Ok((cycle.len(), listing))
}

/// Executions per instruction of each function of `syms` in `pair alloc n`
/// under callgrind (`--dump-instr=yes`).
fn instr_counts(
    pair: &Path,
    alloc: &str,
    n: u64,
    syms: &[&str],
    scratch: &Path,
) -> Result<Vec<HashMap<u64, u64>>, String> {
    let out = scratch.join(format!("callgrind.instr.{alloc}.out"));
    output(
        Command::new("valgrind")
            .args(["--tool=callgrind", "--dump-instr=yes"])
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(pair)
            .arg(alloc)
            .arg(n.to_string()),
    )?;
    let text = std::fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let _ = std::fs::remove_file(&out);
    Ok(syms.iter().map(|s| parse_instr_counts(&text, s)).collect())
}

/// Per-instruction costs of the function named `sym` in a callgrind file
/// written with `--dump-instr=yes` (positions: `instr line`, event Ir).
fn parse_instr_counts(text: &str, sym: &str) -> HashMap<u64, u64> {
    // Function ids are named once, in an `fn=` or `cfn=` line: `fn=(12) name`.
    let mut names: HashMap<&str, &str> = HashMap::new();
    for l in text.lines() {
        for key in ["fn=", "cfn="] {
            if let Some(rest) = l.strip_prefix(key) {
                if let Some((id, name)) = rest.split_once(' ') {
                    names.insert(id, name.trim());
                }
            }
        }
    }
    let mut counts = HashMap::new();
    let mut inside = false;
    let mut addr: u64 = 0;
    let mut after_calls = false;
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("fn=") {
            let id = rest.split(' ').next().unwrap_or("");
            inside = names.get(id).is_some_and(|n| *n == sym);
            continue;
        }
        if l.starts_with("calls=") {
            after_calls = true;
            continue;
        }
        let mut f = l.split_whitespace();
        let Some(pos) = f.next() else { continue };
        let new = if let Some(h) = pos.strip_prefix("0x") {
            u64::from_str_radix(h, 16).ok()
        } else if let Some(d) = pos.strip_prefix('+') {
            d.parse::<u64>().ok().map(|d| addr + d)
        } else if let Some(d) = pos.strip_prefix('-') {
            d.parse::<u64>().ok().map(|d| addr - d)
        } else if pos == "*" {
            Some(addr)
        } else {
            None // a spec line (fl=, fi=, cfn=, jump=, ...)
        };
        let Some(new) = new else { continue };
        addr = new;
        // A call line's cost is the callee's, not this instruction's.
        if inside && !std::mem::take(&mut after_calls) {
            let _line = f.next();
            let ir: u64 = f.next().and_then(|c| c.parse().ok()).unwrap_or(0);
            *counts.entry(addr).or_insert(0) += ir;
        }
    }
    counts
}

fn static_rseq(bin: &Path) -> Result<Static, String> {
    let scratch =
        std::env::temp_dir().join(format!("tieralloc-bench-instr-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let n = 20_000;
    let profiles = instr_counts(
        bin,
        "tieralloc",
        n,
        &["pairs_tieralloc", "sched_getcpu"],
        &scratch,
    );
    let _ = std::fs::remove_dir_all(&scratch);
    let mut profiles = profiles?.into_iter();
    let (profile, getcpu) = (
        profiles.next().unwrap_or_default(),
        profiles.next().unwrap_or_default(),
    );
    let getcpu = getcpu.values().sum::<u64>() as f64 / n as f64;
    if profile.is_empty() {
        return Err("no per-instruction profile of pairs_tieralloc from callgrind".into());
    }
    let (tier, listing) = loop_of(bin, "pairs_tieralloc", (profile, n / 2))?;
    let (none, _) = loop_of(bin, "pairs_none", (HashMap::new(), 1))?;
    if !listing.contains("fs:") {
        return Err(
            "the loop found does not read the rseq area (fs:): layout not understood".into(),
        );
    }
    Ok(Static {
        tier,
        none,
        listing,
        getcpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objdump_lines_and_targets_parse() {
        let v = parse_objdump("000000000003a960 <pairs_tieralloc>:\n   3a960:\tpush   rbp\n   3aa86:\tjne    3ab80 <pairs_tieralloc+0x220>\n");
        assert_eq!(
            v,
            vec![
                (0x3a960, "push   rbp".to_string()),
                (0x3aa86, "jne    3ab80 <pairs_tieralloc+0x220>".to_string())
            ]
        );
        assert_eq!(target(&v[1].1), Some(0x3ab80));
        assert_eq!(target("jmp    QWORD PTR [rax]"), None);
    }

    /// A disassembly of `prog` (address, text) that ends at `end`, without a profile.
    fn disasm_of(prog: &[(u64, &str)], end: u64) -> Disasm<'static> {
        let mut cache = HashMap::new();
        for (i, (a, t)) in prog.iter().enumerate() {
            let next = prog.get(i + 1).map_or(end, |p| p.0);
            cache.insert(
                *a,
                Insn {
                    text: t.to_string(),
                    next,
                },
            );
        }
        Disasm {
            bin: Path::new("/nonexistent"),
            end,
            cache,
            counts: HashMap::new(),
            hot: 1,
        }
    }

    #[test]
    fn the_walk_finds_the_call_free_loop() {
        // entry: test; je out; loop: cmp; jne slow; inc; jmp loop; slow: call; jmp loop; out: ret
        let prog = [
            (0x10, "test   rdi,rdi"),
            (0x13, "je     40 <f+0x30>"),
            (0x15, "cmp    rax,rbx"),
            (0x18, "jne    30 <f+0x20>"),
            (0x1a, "inc    rax"),
            (0x1d, "jmp    15 <f+0x5>"),
            (0x30, "call   100 <g>"),
            (0x35, "jmp    15 <f+0x5>"),
            (0x40, "ret"),
        ];
        let mut d = disasm_of(&prog, 0x41);
        assert_eq!(hot_cycle(&mut d, 0x10), Some(vec![0x15, 0x18, 0x1a, 0x1d]));
        // A profile that says the branch at 0x18 is taken sends the walk through 0x30,
        // which calls: the walk backtracks to the fall-through side.
        d.counts.insert(0x30, 10);
        d.hot = 5;
        assert_eq!(hot_cycle(&mut d, 0x10), Some(vec![0x15, 0x18, 0x1a, 0x1d]));
    }

    #[test]
    fn the_walk_to_ret_skips_calls_and_cycles() {
        // entry: test; je locked; (rseq) cmp; jae longer; mov fs:; ret;
        // locked: call; jmp entry; longer: mov fs:; nop; jmp ret
        let prog = [
            (0x10, "test   rdi,rdi"),
            (0x13, "je     30 <f+0x20>"),
            (0x15, "cmp    rax,rbx"),
            (0x18, "jae    40 <f+0x30>"),
            (0x1a, "mov    eax,DWORD PTR fs:[rax+0x4]"),
            (0x1d, "ret"),
            (0x30, "call   100 <g>"),
            (0x35, "jmp    10 <f>"),
            (0x40, "mov    ecx,DWORD PTR fs:[rax+0x8]"),
            (0x43, "nop"),
            (0x44, "jmp    1d <f+0xd>"),
        ];
        let mut d = disasm_of(&prog, 0x46);
        let rseq = vec![0x10, 0x13, 0x15, 0x18, 0x1a, 0x1d];
        assert_eq!(shortest_path_to_ret(&mut d, 0x10), Some(rseq.clone()));
        // The branch to the call is a dead end; without the short side, the
        // longer rseq path is the one.
        d.cache.get_mut(&0x1a).unwrap().text = "jmp    40 <f+0x30>".into();
        assert_eq!(
            shortest_path_to_ret(&mut d, 0x10),
            Some(vec![0x10, 0x13, 0x15, 0x18, 0x40, 0x43, 0x44, 0x1d])
        );
        d.cache.get_mut(&0x1a).unwrap().text = "mov    eax,DWORD PTR fs:[rax+0x4]".into();
        // A ret before the rseq section is a way out, not the path.
        d.cache.get_mut(&0x13).unwrap().text = "je     1d <f+0xd>".into();
        assert_eq!(shortest_path_to_ret(&mut d, 0x10), Some(rseq));
        // A tail call through the GOT is a way out, not a ret: the walk
        // takes the longer path to the ret.
        d.cache.get_mut(&0x1d).unwrap().text = "jmp    QWORD PTR [rip+0x6cf7]".into();
        d.cache.get_mut(&0x44).unwrap().text = "ret".into();
        assert_eq!(
            shortest_path_to_ret(&mut d, 0x10),
            Some(vec![0x10, 0x13, 0x15, 0x18, 0x40, 0x43, 0x44])
        );
        // Without a ret, there is no path.
        d.cache.get_mut(&0x44).unwrap().text = "jmp    10 <f>".into();
        assert_eq!(shortest_path_to_ret(&mut d, 0x10), None);
    }

    #[test]
    fn callgrind_instruction_positions_parse() {
        let text = "positions: instr line\nevents: Ir\nfn=(1) other\n0x100 1 5\n\
                    cfn=(2) target\nfn=(2)\n0x200 3 7\n+4 * 7\ncalls=7 0x900\n+2 5 700\n+3 * 7\n-9 * 1\nfn=(1)\n+1 * 9\n";
        let c = parse_instr_counts(text, "target");
        assert_eq!(c.get(&0x200), Some(&8));
        assert_eq!(c.get(&0x204), Some(&7));
        assert_eq!(c.get(&0x206), None);
        assert_eq!(c.get(&0x209), Some(&7));
        assert_eq!(c.len(), 3);
    }
}
