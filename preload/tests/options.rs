//! The C library's options and reports, as real programs under
//! `LD_PRELOAD=libtieralloc.so` (`tests/c/options.c`, `tests/c/decay.c`):
//!
//! * the environment variables by their output (`TIERALLOC_SHOW_STATS`,
//!   `TIERALLOC_VERBOSE`, bad values warned about and ignored,
//!   `TIERALLOC_NO_RSEQ`), and set-up re-entry (the background thread's
//!   creation allocates, also in forked children) without deadlock;
//! * `malloc_stats`, `malloc_info` (well-formed XML with the program's
//!   figures) and `mallopt`;
//! * the decay: after a 64 MiB realloc-grown buffer shrinks to 1 KiB and the
//!   program pauses, the resident set (`/proc/self/statm`) falls to about the
//!   retained floor — through the next small activity, or through the
//!   background thread with no activity at all — and stays high with the
//!   decay off.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{compile, lib, require, run, Run};

const LIMIT: Duration = Duration::from_secs(120);
const PYTHON: &str = "/usr/bin/python3.11";

/// Runs `tests/c/<prog>` with `args` under the library, with `env` set and
/// every `TIERALLOC_*` variable of the test's own environment removed.
fn run_with(prog: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let exe = compile(prog);
    let mut cmd = Command::new(&exe);
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TIERALLOC_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let r = run(cmd, Some(&lib()), LIMIT);
    assert!(
        r.ok(),
        "{prog} {args:?} with {env:?} failed: {}",
        r.describe()
    );
    r
}

/// The `tieralloc:` lines of stderr.
fn ours(r: &Run) -> Vec<&str> {
    r.stderr
        .lines()
        .filter(|l| l.starts_with("tieralloc:"))
        .collect()
}

// ------------------------------------------------------------------ options

#[test]
fn show_stats_prints_the_table_at_exit() {
    let r = run_with("options", &["quiet"], &[("TIERALLOC_SHOW_STATS", "1")]);
    let err = &r.stderr;
    let head = err
        .find("tieralloc: statistics at exit")
        .unwrap_or_else(|| panic!("no statistics: {}", r.describe()));
    // After the program's own output, with Go's terms and the class table.
    for want in [
        "heap_sys",
        "heap_inuse",
        "heap_idle",
        "heap_released",
        "heap_alloc",
        "mallocs",
        "class    size      mallocs        frees       live",
    ] {
        assert!(err[head..].contains(want), "no {want:?}: {}", r.describe());
    }
    assert_eq!(r.stdout, "ok\n");
    let quiet = run_with("options", &["quiet"], &[]);
    assert_eq!(quiet.stderr, "", "no option, no output");
}

#[test]
fn verbose_reports_mode_cpus_and_options() {
    let r = run_with(
        "options",
        &["quiet"],
        &[
            ("TIERALLOC_VERBOSE", "1"),
            ("TIERALLOC_DECAY_MS", "250"),
            ("TIERALLOC_RETAIN_BYTES", "2M"),
        ],
    );
    let lines = ours(&r);
    assert_eq!(lines.len(), 1, "one line: {}", r.describe());
    let l = lines[0];
    assert!(
        l.starts_with("tieralloc: set up: rseq mode, ")
            || l.starts_with("tieralloc: set up: locked mode"),
        "{l}"
    );
    let cpus: usize = l
        .split(", ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no CPU count in {l}"));
    assert!(cpus >= 1, "{l}");
    for want in [
        "CPUs;",
        "decay 250 ms",
        "retained floor 2097152 bytes",
        "background thread off",
        "show stats off",
    ] {
        assert!(l.contains(want), "no {want:?} in {l}");
    }
    let off = run_with(
        "options",
        &["quiet"],
        &[("TIERALLOC_VERBOSE", "1"), ("TIERALLOC_DECAY_MS", "0")],
    );
    assert!(ours(&off)[0].contains("decay off"), "{}", off.describe());
    let bg = run_with(
        "options",
        &["quiet"],
        &[
            ("TIERALLOC_VERBOSE", "1"),
            ("TIERALLOC_BACKGROUND_THREAD", "1"),
        ],
    );
    let l = ours(&bg);
    assert!(l[0].contains("background thread on"), "{}", bg.describe());
    assert_eq!(
        l[1],
        "tieralloc: background thread started: the decay is polled every 250 ms"
    );
}

/// `TIERALLOC_NO_RSEQ=1` is read during the heap's set-up, inside the first
/// allocation: an allocating read deadlocked there once. It must give the
/// locked mode, and the programs must work in it.
#[test]
fn no_rseq_selects_the_locked_mode() {
    let r = run_with(
        "options",
        &["quiet"],
        &[("TIERALLOC_NO_RSEQ", "1"), ("TIERALLOC_VERBOSE", "1")],
    );
    assert!(
        ours(&r)[0].starts_with("tieralloc: set up: locked mode (TIERALLOC_NO_RSEQ=1), "),
        "{}",
        r.describe()
    );
    assert_eq!(r.stdout, "ok\n");
    let t = run_with("threads", &["4", "20"], &[("TIERALLOC_NO_RSEQ", "1")]);
    assert!(t.stdout.contains("threads: OK"), "{}", t.describe());
    let s = run_with(
        "options",
        &["quiet"],
        &[("TIERALLOC_NO_RSEQ", "1"), ("TIERALLOC_SHOW_STATS", "1")],
    );
    assert!(s.stderr.contains("(locked)"), "{}", s.describe());
}

#[test]
fn bad_values_warn_and_keep_the_defaults() {
    let r = run_with(
        "options",
        &["quiet"],
        &[
            ("TIERALLOC_VERBOSE", "1"),
            ("TIERALLOC_SHOW_STATS", "yes"),
            ("TIERALLOC_DECAY_MS", "-5"),
            ("TIERALLOC_RETAIN_BYTES", "12Q"),
            ("TIERALLOC_BACKGROUND_THREAD", "2"),
            ("TIERALLOC_NO_RSEQ", "on"),
        ],
    );
    let lines = ours(&r);
    let expect = [
        "tieralloc: ignoring TIERALLOC_SHOW_STATS=yes: expected 0 or 1; the default is kept",
        "tieralloc: ignoring TIERALLOC_DECAY_MS=-5: expected a number of milliseconds (0: off); the default is kept",
        "tieralloc: ignoring TIERALLOC_RETAIN_BYTES=12Q: expected a number of bytes, optionally with K, M or G; the default is kept",
        "tieralloc: ignoring TIERALLOC_BACKGROUND_THREAD=2: expected 0 or 1; the default is kept",
        "tieralloc: ignoring TIERALLOC_NO_RSEQ=on: expected 0 or 1; the default is kept",
    ];
    assert_eq!(&lines[..5], &expect, "{}", r.describe());
    let setup = lines[5];
    for want in [
        "decay 1000 ms",
        "retained floor 16777216 bytes",
        "background thread off",
        "show stats off",
    ] {
        assert!(setup.contains(want), "no {want:?} in {setup}");
    }
    assert!(
        !setup.contains("TIERALLOC_NO_RSEQ"),
        "NO_RSEQ=on was taken: {setup}"
    );
    assert!(!r.stderr.contains("statistics at exit"));
    assert_eq!(lines.len(), 6, "{}", r.describe());
    // A bad value alone (no VERBOSE) still warns, once.
    let one = run_with("options", &["quiet"], &[("TIERALLOC_DECAY_MS", "1e3")]);
    assert_eq!(ours(&one).len(), 1, "{}", one.describe());
}

/// Every option at once, in both modes, in a program that forks: the
/// background thread's creation allocates (its TLS) inside our set-up, in the
/// parent at load and in every child at its first allocation.
#[test]
fn set_up_reentry_does_not_deadlock() {
    for no_rseq in ["0", "1"] {
        let r = run_with(
            "options",
            &["fork"],
            &[
                ("TIERALLOC_NO_RSEQ", no_rseq),
                ("TIERALLOC_VERBOSE", "1"),
                ("TIERALLOC_SHOW_STATS", "1"),
                ("TIERALLOC_BACKGROUND_THREAD", "1"),
                ("TIERALLOC_DECAY_MS", "40"),
                ("TIERALLOC_RETAIN_BYTES", "0"),
            ],
        );
        assert_eq!(
            r.stdout,
            "child threads 2\nchild threads 2\nchild threads 2\nparent threads 2\n",
            "the background thread runs in the parent and again in each child: {}",
            r.describe()
        );
        assert!(r.stderr.contains("statistics at exit"), "{}", r.describe());
    }
    let plain = run_with("options", &["fork"], &[]);
    assert!(
        plain.stdout.ends_with("parent threads 1\n"),
        "{}",
        plain.describe()
    );
}

// -------------------------------------------------------- reports, mallopt

/// Attributes of `<tag ...>` elements in document order, read by python3's
/// XML parser (which also proves the document well-formed).
fn parse_xml(xml: &str) -> Vec<String> {
    require(PYTHON, "python3.11");
    let script = "import sys, xml.dom.minidom as m\n\
        d = m.parseString(sys.stdin.read())\n\
        r = d.documentElement\n\
        assert r.tagName == 'malloc' and r.getAttribute('version') == '1'\n\
        for e in r.getElementsByTagName('*'):\n\
        \x20   p = e.parentNode.tagName\n\
        \x20   print(p, e.tagName, e.getAttribute('type'), e.getAttribute('size') or e.getAttribute('total'), e.getAttribute('count'))\n";
    let mut child = Command::new(PYTHON)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .env_remove("LD_PRELOAD")
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(xml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "malloc_info's XML does not parse:\n{xml}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn malloc_stats_and_malloc_info_report_the_heap() {
    let r = run_with("options", &["stats"], &[]);
    let held: u64 = r
        .stdout
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("held "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", r.describe()));
    // malloc_stats: glibc's lines, then the table.
    let in_use: Vec<u64> = r
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("in use bytes     ="))
        .map(|n| n.trim().parse().unwrap())
        .collect();
    assert_eq!(in_use.len(), 2, "{}", r.describe());
    // 1000 objects of 100 bytes in 112-byte slots, 1 MiB, and stdio's buffer.
    let lo = held;
    let hi = held + held / 8 + 64 * 1024;
    assert!(
        (lo..hi).contains(&in_use[0]),
        "in use {} for {held} held: {}",
        in_use[0],
        r.describe()
    );
    for want in [
        "Arena 0:",
        "system bytes     =",
        "Total (incl. mmap):",
        "heap_alloc",
        "class    size",
    ] {
        assert!(r.stderr.contains(want), "no {want:?}: {}", r.describe());
    }
    // malloc_info: the program's figures.
    let xml = &r.stdout[r.stdout.find("<malloc").expect("no <malloc")..];
    let rows = parse_xml(xml);
    let size_rows: Vec<Vec<&str>> = rows
        .iter()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .filter(|f| f[0] == "sizes" && f[1] == "size")
        .collect();
    let objs: u64 = size_rows.iter().map(|f| f[4].parse::<u64>().unwrap()).sum();
    let bytes: u64 = size_rows.iter().map(|f| f[3].parse::<u64>().unwrap()).sum();
    assert!((1000..1010).contains(&objs), "{objs} small objects: {xml}");
    assert!(
        size_rows.iter().any(|f| f[4] == "1000"),
        "no class with the 1000 objects: {xml}"
    );
    let mmap = rows
        .iter()
        .find(|l| l.starts_with("malloc total mmap "))
        .unwrap_or_else(|| panic!("no mmap total: {xml}"));
    assert_eq!(mmap, "malloc total mmap 1048576 1", "{xml}");
    assert_eq!(
        bytes + 1048576,
        in_use[0],
        "malloc_info and malloc_stats agree"
    );
    let system = rows
        .iter()
        .find(|l| l.starts_with("heap system current "))
        .unwrap_or_else(|| panic!("no system current: {xml}"));
    let system: u64 = system.split(' ').nth(3).unwrap().parse().unwrap();
    assert!(system >= in_use[0], "{system} < {}", in_use[0]);
}

#[test]
fn mallopt_returns_0_for_options_it_does_not_support() {
    let r = run_with("options", &["mallopt"], &[]);
    assert_eq!(
        r.stdout,
        "mallopt -3 1048576 = 0\n\
         mallopt -8 2 = 0\n\
         mallopt -2 0 = 0\n\
         mallopt 1 0 = 0\n\
         mallopt 12345 1 = 0\n\
         mallopt -1 1048576 = 1\n\
         mallopt -1 -5 = 0\n\
         malloc_info(1) = 22\n",
        "{}",
        r.describe()
    );
}

// -------------------------------------------------------------------- decay

/// `decay STEP PAUSE_MS PAIRS`: (peak, end) resident KiB.
fn decay(args: &[&str], env: &[(&str, &str)]) -> (u64, u64) {
    let r = run_with("decay", args, env);
    let field = |name: &str| -> u64 {
        r.stdout
            .split_whitespace()
            .find_map(|f| f.strip_prefix(name))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name}: {}", r.describe()))
    };
    (field("peak_kb="), field("end_kb="))
}

const MIB_KB: u64 = 1024;

/// The realloc-growth program of issue 15: grown one byte at a time to 64
/// MiB, shrunk to 1 KiB, 1.5 s of sleep, 100,000 malloc/free pairs. It
/// ended at 133 MB before the decay (jemalloc: 27-33 MB).
#[test]
fn decay_releases_the_grown_buffer_after_the_pause() {
    let (peak, end) = decay(&["1", "1500", "100000"], &[]);
    assert!(peak > 64 * MIB_KB, "peak {peak} KiB");
    assert!(
        end < 24 * MIB_KB,
        "{end} KiB resident after the decay period (floor 16 MiB)"
    );
    // Without the floor, almost nothing stays.
    let (_, bare) = decay(&["1", "1500", "100000"], &[("TIERALLOC_RETAIN_BYTES", "0")]);
    assert!(
        bare < 8 * MIB_KB,
        "{bare} KiB resident with no retained floor"
    );
}

#[test]
fn decay_off_keeps_the_memory() {
    let (peak, end) = decay(&["1", "1500", "100000"], &[("TIERALLOC_DECAY_MS", "0")]);
    assert!(
        end > 64 * MIB_KB && end + 4 * MIB_KB > peak,
        "{end} KiB resident of a {peak} KiB peak with the decay off"
    );
}

/// No activity at all after the pause: only the background thread polls.
#[test]
fn background_thread_releases_a_quiet_program() {
    let (_, quiet) = decay(&["1", "2000", "0"], &[]);
    assert!(
        quiet > 64 * MIB_KB,
        "{quiet} KiB: released with no activity and no thread?"
    );
    let (_, bg) = decay(&["1", "2000", "0"], &[("TIERALLOC_BACKGROUND_THREAD", "1")]);
    assert!(
        bg < 24 * MIB_KB,
        "{bg} KiB resident after 2 s with the background thread"
    );
}

/// Where glibc registers no rseq area (its tunable off here; glibc before
/// 2.35 everywhere), the heap registers one of its own in every thread and
/// keeps the rseq mode: the set-up line says so, and threaded and forking
/// programs work in it.
#[test]
fn without_glibcs_area_the_heap_registers_its_own() {
    let off = ("GLIBC_TUNABLES", "glibc.pthread.rseq=0");
    let r = run_with("options", &["quiet"], &[off, ("TIERALLOC_VERBOSE", "1")]);
    assert!(
        ours(&r)[0].starts_with(
            "tieralloc: set up: rseq mode (an area of its own: glibc registered none), "
        ),
        "{}",
        r.describe()
    );
    assert_eq!(r.stdout, "ok\n");
    let t = run_with("threads", &["8", "20"], &[off]);
    assert!(t.stdout.contains("threads: OK"), "{}", t.describe());
    let f = run_with(
        "options",
        &["fork"],
        &[off, ("TIERALLOC_BACKGROUND_THREAD", "1")],
    );
    assert_eq!(
        f.stdout,
        "child threads 2\nchild threads 2\nchild threads 2\nparent threads 2\n",
        "{}",
        f.describe()
    );
}
