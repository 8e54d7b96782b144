//! Real programs under `LD_PRELOAD=libtieralloc.so`.
//!
//! `cargo test --release -p tieralloc-preload` runs them all; the library
//! under test is the `libtieralloc.so` of the test's profile, which the tests
//! build with the cargo that runs them (`lib()`). They need `cc`,
//! `sqlite3` and `/usr/bin/python3.11` with Debian's `libpython3.11-testsuite`;
//! a missing tool fails the test with the package to install, it never skips.
//!
//! * `c_api`: `tests/c/malloc_test.c`, every exported function and its edge cases.
//! * `invalid_pointers_abort_with_the_address`: `free`/`realloc`/`free_sized`
//!   of foreign, interior and stack pointers abort, naming the address.
//! * `double_frees_abort_with_the_address`: `tests/c/double_free.c`, double
//!   frees of every size wherever the object sits, frees of slots never handed
//!   out, and live objects that look free, which must not abort.
//! * `threads`: `tests/c/threads.c`, 8 threads, cross-thread frees, content checks.
//! * `fork_while_threads_allocate`: `tests/c/fork.c`.
//! * `sqlite_workload`: `tests/sql/workload.sql` (200k rows, indexes, joins,
//!   GROUP BY, sorts), answers checked against arithmetic done here and
//!   against the same run under glibc.
//! * `python_test_suite`: CPython's own tests with `PYTHONMALLOC=malloc`, first
//!   under glibc, then under tieralloc: tieralloc may fail nothing glibc passes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{compile, lib, manifest_dir, out_dir, require, run, Run};

const PYTHON: &str = "/usr/bin/python3.11";
const SQLITE: &str = "sqlite3";

// ------------------------------------------------------------------ layout

/// The C layer passes 16-byte-aligned requests to the core as (size rounded
/// up to 16, align 8) to stay on the inlined class lookup: that is sound only
/// if the class chosen for a multiple of 16 is itself a multiple of 16.
#[test]
fn size_classes_keep_16_byte_alignment() {
    use core_alloc::internals::size_to_class;
    for n in (16..=core_alloc::MAX_SMALL_SIZE).step_by(16) {
        let c = size_to_class(n);
        assert!(!c.is_large(), "size {n} is not small");
        assert_eq!(
            core_alloc::Geometry::GO.size(c) % 16,
            0,
            "size {n} -> class {} of {} bytes, not a multiple of 16",
            c.index(),
            core_alloc::Geometry::GO.size(c)
        );
    }
}

// -------------------------------------------------------------------- C API

#[test]
fn c_api() {
    let exe = compile("malloc_test");
    let r = run(Command::new(&exe), Some(&lib()), Duration::from_secs(120));
    assert!(
        r.ok() && r.stdout.contains("checks passed"),
        "malloc_test failed: {}",
        r.describe()
    );
    println!("{}", r.stdout.trim());
}

#[test]
fn invalid_pointers_abort_with_the_address() {
    let exe = compile("malloc_test");
    let lib = lib();
    for (kind, func) in [
        ("stack", "free"),
        ("interior", "free"),
        ("mmap", "free"),
        ("global", "free"),
        ("realloc", "realloc"),
        ("free_sized", "free_sized"),
        ("usable", "free"),
    ] {
        let mut cmd = Command::new(&exe);
        cmd.args(["invalid", kind]);
        let r = run(cmd, Some(&lib), Duration::from_secs(30));
        assert_eq!(
            r.signal,
            Some(libc::SIGABRT),
            "{kind}: expected an abort: {}",
            r.describe()
        );
        let addr = r.stdout.trim();
        assert!(
            addr.starts_with("0x"),
            "{kind}: no address printed: {}",
            r.describe()
        );
        let want = format!("tieralloc: {func}(): invalid pointer {addr}");
        assert!(
            r.stderr.contains(&want),
            "{kind}: stderr lacks {want:?}: {}",
            r.describe()
        );
    }
}

/// `tests/c/double_free.c`: double frees of every size and wherever the
/// object sits (a CPU's cache, its span after many other frees, the large-span
/// cache), `realloc` and `free_sized` of a freed object, and frees of slots
/// never handed out (above the object: in its span; below it: carved into the
/// cache with it) abort, naming the address; live objects holding the key of a
/// free one are freed normally.
#[test]
fn double_frees_abort_with_the_address() {
    let exe = compile("double_free");
    let lib = lib();
    // What stderr must hold: a double free named with the function, a
    // slot never handed out, or any invalid pointer.
    enum Want {
        Double(&'static str),
        Never,
        Invalid,
    }
    use Want::*;
    let cases = [
        ("double", "64", Double("free")),
        ("double", "48", Double("free")),
        ("double", "10000", Double("free")),
        ("double", "32768", Double("free")),
        ("double", "100000", Double("free")),
        ("realloc", "64", Double("realloc")),
        ("realloc", "10000", Double("realloc")),
        ("free_sized", "64", Double("free_sized")),
        ("flushed", "64", Double("free")),
        ("flushed", "48", Double("free")),
        ("flushed", "10000", Double("free")),
        ("thread", "64", Double("free")),
        ("thread", "48", Double("free")),
        ("above", "48", Never),
        ("above", "64", Never),
        ("above", "10000", Never),
        ("below", "64", Never),
        ("below", "48", Never),
        // A large object whose pages went back to the page heap: no span
        // remembers it, so it reads as a foreign pointer.
        ("double", "8388608", Invalid),
    ];
    for (kind, size, want) in cases {
        let mut cmd = Command::new(&exe);
        cmd.args([kind, size]);
        let r = run(cmd, Some(&lib), Duration::from_secs(60));
        assert_eq!(
            r.signal,
            Some(libc::SIGABRT),
            "{kind} {size}: expected an abort: {}",
            r.describe()
        );
        let addr = r.stdout.trim();
        assert!(
            addr.starts_with("0x"),
            "{kind} {size}: no address printed: {}",
            r.describe()
        );
        let want = match want {
            Double(f) => {
                format!("tieralloc: double free of {addr}: {f}() of an object that is already free")
            }
            Never => format!(
                "tieralloc: free(): invalid pointer {addr}: a slot this allocator never handed out"
            ),
            Invalid => format!("tieralloc: free(): invalid pointer {addr}"),
        };
        assert!(
            r.stderr.contains(&want),
            "{kind} {size}: stderr lacks {want:?}: {}",
            r.describe()
        );
    }
    for size in ["48", "64", "10000"] {
        let mut cmd = Command::new(&exe);
        cmd.args(["lookalike", size]);
        let r = run(cmd, Some(&lib), Duration::from_secs(60));
        assert!(
            r.ok() && r.stdout.contains("lookalike: OK"),
            "lookalike {size}: {}",
            r.describe()
        );
    }
}

// ------------------------------------------------------------ threads, fork

#[test]
fn threads() {
    let exe = compile("threads");
    let mut cmd = Command::new(&exe);
    cmd.args(["8", "40"]);
    let r = run(cmd, Some(&lib()), Duration::from_secs(300));
    assert!(
        r.ok() && r.stdout.contains("threads: OK"),
        "threads failed: {}",
        r.describe()
    );
    println!("{} ({:.1} s)", r.stdout.trim(), r.secs);
}

#[test]
fn fork_while_threads_allocate() {
    let exe = compile("fork");
    let mut cmd = Command::new(&exe);
    cmd.arg("100");
    let r = run(cmd, Some(&lib()), Duration::from_secs(300));
    assert!(
        r.ok() && r.stdout.contains("fork: OK"),
        "fork failed: {}",
        r.describe()
    );
    println!("{} ({:.1} s)", r.stdout.trim(), r.secs);
}

// ------------------------------------------------------------------- sqlite

/// The answers of `tests/sql/workload.sql`, computed without SQLite.
fn sqlite_expected() -> String {
    const N: u64 = 200_000;
    struct Row {
        id: u64,
        grp: u64,
        name: String,
        val: u64,
        pad: u64,
    }
    let mut rows: Vec<Row> = (1..=N)
        .map(|x| Row {
            id: x,
            grp: x % 1000,
            name: format!("name{x}"),
            val: (x * 7919) % 100_003,
            pad: 20 + x % 200,
        })
        .collect();
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    let sum = |rows: &[Row], f: &dyn Fn(&Row) -> u64| rows.iter().map(f).sum::<u64>();

    line(format!(
        "q1|{}|{}|{}",
        rows.len(),
        sum(&rows, &|r| r.val),
        sum(&rows, &|r| r.pad)
    ));

    let in_group1 = |g: u64| format!("group{g}").starts_with("group1");
    let q2: Vec<&Row> = rows.iter().filter(|r| in_group1(r.grp)).collect();
    line(format!(
        "q2|{}|{}",
        q2.len(),
        q2.iter().map(|r| r.val).sum::<u64>()
    ));

    let mut groups: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for r in &rows {
        let e = groups.entry(r.grp).or_default();
        e.0 += 1;
        e.1 += r.val;
    }
    let mut by_sum: Vec<(u64, u64, u64)> = groups.iter().map(|(&g, &(n, s))| (g, n, s)).collect();
    by_sum.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    for (g, n, s) in &by_sum[..3] {
        line(format!("q3|{g}|{n}|{s}"));
    }

    line(format!(
        "q4|{}",
        rows.iter().map(|r| r.val).collect::<BTreeSet<_>>().len()
    ));

    let mut names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    line(format!("q5|{}", names[100_000]));

    let ids: BTreeSet<u64> = rows.iter().map(|r| r.id).collect();
    line(format!(
        "q6|{}",
        rows.iter()
            .filter(|r| r.grp == 5 && r.id >= 1 && ids.contains(&(r.id - 1)))
            .count()
    ));

    let mut concat: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for r in &rows {
        let e = concat.entry(r.grp).or_default();
        e.0 += 1;
        e.1 += r.name.len() as u64;
    }
    line(format!(
        "q7|{}",
        concat.values().map(|&(n, len)| len + n - 1).sum::<u64>()
    ));

    line(format!("q8|{}", 50_000.min(rows.len())));

    for r in rows.iter_mut().filter(|r| r.id % 3 == 0) {
        r.val += 1;
        r.pad += 1;
    }
    rows.retain(|r| r.id % 10 != 0);
    line(format!(
        "q9|{}|{}|{}",
        rows.len(),
        sum(&rows, &|r| r.val),
        sum(&rows, &|r| r.pad)
    ));

    let mut u: BTreeMap<u64, (u64, &str)> = BTreeMap::new();
    for r in &rows {
        let e = u.entry(r.grp).or_insert((0, ""));
        e.0 += 1;
        e.1 = e.1.max(r.name.as_str());
    }
    let max_m = u.values().map(|v| v.1).max().unwrap_or("");
    line(format!(
        "q10|{}|{}|{}",
        u.len(),
        u.values().map(|v| v.0).sum::<u64>(),
        max_m
    ));

    line(format!(
        "q11|{}",
        rows.iter()
            .filter(|r| (1000..=2000).contains(&r.val))
            .count()
    ));
    out
}

#[test]
fn sqlite_workload() {
    require(SQLITE, "sqlite3");
    let sql = manifest_dir().join("tests/sql/workload.sql");
    let expected = sqlite_expected();
    let lib = lib();
    let go = |preload: Option<&Path>| {
        let mut cmd = Command::new(SQLITE);
        cmd.args(["-batch", "-bail", ":memory:"])
            .stdin(std::fs::File::open(&sql).expect("open workload.sql"));
        run(cmd, preload, Duration::from_secs(600))
    };
    let glibc = go(None);
    assert!(
        glibc.ok(),
        "sqlite3 under glibc failed: {}",
        glibc.describe()
    );
    assert_eq!(glibc.stdout, expected, "sqlite3 under glibc disagrees with the computed answers (workload.sql and sqlite_expected out of step?)");
    let ours = go(Some(&lib));
    assert!(
        ours.ok(),
        "sqlite3 under tieralloc failed: {}",
        ours.describe()
    );
    assert_eq!(
        ours.stdout, expected,
        "sqlite3 under tieralloc gave wrong answers"
    );
    println!(
        "sqlite3: glibc {:.1} s, tieralloc {:.1} s, answers as computed",
        glibc.secs, ours.secs
    );
}

// ------------------------------------------------------------------- python

/// Modules of CPython's test suite, together about a minute under glibc on
/// a 2-core machine: containers, strings, numbers, regex, JSON, compression,
/// threads, fork, os, gc.
pub const PYTHON_TESTS: &[&str] = &[
    "test_list",
    "test_dict",
    "test_set",
    "test_unicode",
    "test_json",
    "test_re",
    "test_bytes",
    "test_collections",
    "test_functools",
    "test_sort",
    "test_deque",
    "test_struct",
    "test_long",
    "test_float",
    "test_decimal",
    "test_zlib",
    "test_threading",
    "test_mmap",
    "test_fork1",
    "test_os",
    "test_gc",
    "test_hashlib",
    "test_string",
    "test_csv",
];

struct PyResult {
    run: Run,
    /// Test cases with a `<failure>` or `<error>` in the JUnit report.
    failed_cases: BTreeSet<String>,
    /// Modules regrtest lists as failed or crashed.
    failed_modules: BTreeSet<String>,
}

/// Failed test cases of regrtest's `--junit-xml` report.
fn junit_failures(xml: &str) -> BTreeSet<String> {
    let mut failed = BTreeSet::new();
    for chunk in xml.split("<testcase ").skip(1) {
        let name = chunk
            .split("name=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("?")
            .to_string();
        let head_end = chunk.find('>').unwrap_or(chunk.len());
        if chunk[..head_end].ends_with('/') {
            continue; // self-closed: passed
        }
        let body = chunk.split("</testcase>").next().unwrap_or("");
        if body.contains("<failure") || body.contains("<error") {
            failed.insert(name);
        }
    }
    failed
}

/// Modules under regrtest's "N test(s) failed:" / "crashed" headings.
fn regrtest_failed_modules(out: &str) -> BTreeSet<String> {
    let mut mods = BTreeSet::new();
    let mut take = false;
    for line in out.lines() {
        let t = line.trim();
        if !line.starts_with(' ') {
            take = t.ends_with(':')
                && (t.contains("failed") || t.contains("crashed"))
                && !t.contains("again");
            continue;
        }
        if take {
            mods.extend(
                t.split_whitespace()
                    .filter(|w| w.starts_with("test_"))
                    .map(str::to_string),
            );
        }
    }
    mods
}

#[test]
fn regrtest_report_parsers() {
    // Shapes taken from python3.11 -m test --junit-xml on a failing module.
    let xml = r#"<testsuites tests="4" errors="1" failures="1"><testsuite tests="3" errors="1" failures="1"><testcase name="test_demo.T.test_bad" status="run" result="completed" time="0.0"><system-out /><system-err /><failure type="AssertionError" message="1 != 2">Traceback
</failure></testcase><testcase name="test_demo.T.test_err" status="run" result="completed" time="0.0"><system-out /><system-err /><error type="RuntimeError" message="x">Traceback
</error></testcase><testcase name="test_demo.T.test_ok" status="run" result="completed" time="0.0" /><testcase name="test_demo.T.test_skip" status="run" result="completed" time="0.0"><skipped message="no">no</skipped></testcase></testsuite><testsuite tests="1" errors="0" failures="0"><testcase name="test_demo2.U.test_ok" status="run" result="completed" time="0.0" /></testsuite></testsuites>"#;
    let got: Vec<String> = junit_failures(xml).into_iter().collect();
    assert_eq!(got, ["test_demo.T.test_bad", "test_demo.T.test_err"]);
    let out = "== Tests result: FAILURE ==\n\n1 test OK.\n\n2 tests failed:\n    test_demo test_other\n\n1 test altered the execution environment:\n    test_env\n\nTotal duration: 93 ms\nTests result: FAILURE\n";
    let mods: Vec<String> = regrtest_failed_modules(out).into_iter().collect();
    assert_eq!(mods, ["test_demo", "test_other"]);
}

fn run_python(label: &str, modules: &[&str], preload: Option<&Path>) -> PyResult {
    let dir = out_dir().join(format!("python-{label}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let xml = dir.join("junit.xml");
    let mut cmd = Command::new(PYTHON);
    cmd.current_dir(&dir)
        .env("PYTHONMALLOC", "malloc")
        .env_remove("PYTHONPATH")
        .args(["-m", "test", "--timeout", "900", "--junit-xml"])
        .arg(&xml)
        .args(modules)
        .stdin(Stdio::null());
    let run = run(cmd, preload, Duration::from_secs(1500));
    assert!(
        run.signal.is_none() && run.stdout.contains("Tests result:"),
        "python ({label}) did not finish its test run: {}",
        run.describe()
    );
    let failed_cases = std::fs::read_to_string(&xml)
        .map(|x| junit_failures(&x))
        .unwrap_or_default();
    let failed_modules = regrtest_failed_modules(&run.stdout);
    PyResult {
        run,
        failed_cases,
        failed_modules,
    }
}

#[test]
fn python_test_suite() {
    require(PYTHON, "python3.11");
    assert!(
        Path::new("/usr/lib/python3.11/test/test_list.py").exists(),
        "CPython's test suite is missing: apt-get install -y libpython3.11-testsuite (never skipped)"
    );
    let lib = lib();

    // The library really is in the process.
    let mut probe = Command::new(PYTHON);
    probe
        .env("PYTHONMALLOC", "malloc")
        .args(["-c", "print(open('/proc/self/maps').read())"]);
    let r = run(probe, Some(&lib), Duration::from_secs(60));
    assert!(
        r.ok() && r.stdout.contains("libtieralloc.so"),
        "python3.11 did not load the library: {}",
        r.describe()
    );

    let glibc = run_python("glibc", PYTHON_TESTS, None);
    let ours = run_python("tieralloc", PYTHON_TESTS, Some(&lib));
    println!(
        "python3.11 -m test ({} modules): glibc {:.1} s, {} failed cases {:?}; tieralloc {:.1} s, {} failed cases {:?}",
        PYTHON_TESTS.len(),
        glibc.run.secs,
        glibc.failed_cases.len(),
        glibc.failed_modules,
        ours.run.secs,
        ours.failed_cases.len(),
        ours.failed_modules
    );
    let new_cases: BTreeSet<_> = ours
        .failed_cases
        .difference(&glibc.failed_cases)
        .cloned()
        .collect();
    let new_modules: BTreeSet<_> = ours
        .failed_modules
        .difference(&glibc.failed_modules)
        .cloned()
        .collect();
    if new_cases.is_empty() && new_modules.is_empty() {
        return;
    }
    // A module that failed only under tieralloc gets one more run, alone, to
    // tell an allocator failure from a timing flake of a loaded machine.
    let rerun: Vec<&str> = new_modules
        .iter()
        .map(String::as_str)
        .chain(
            new_cases
                .iter()
                .filter_map(|c| c.split('.').find(|p| p.starts_with("test_"))),
        )
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    eprintln!("failures only under tieralloc: cases {new_cases:?}, modules {new_modules:?}; re-running {rerun:?}");
    let again = run_python("tieralloc-rerun", &rerun, Some(&lib));
    assert!(
        again.failed_cases.is_empty() && again.failed_modules.is_empty() && again.run.ok(),
        "python3.11 fails under tieralloc where glibc passes (twice): cases {:?}, modules {:?}\nfirst run: {}\nre-run: {}",
        again.failed_cases,
        again.failed_modules,
        ours.run.describe(),
        again.run.describe()
    );
}
