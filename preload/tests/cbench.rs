//! The C benchmark shapes of `preload/bench/` (`simple.c`, `larson.c`,
//! `paretoalloc.c`, `rptest.c`, `xmalloc.c`, run by `preload/cbench.sh`)
//! under `LD_PRELOAD=libtieralloc.so`, briefly: each with 1 thread and with 4
//! (more threads than the machine's 2 cores; xmalloc with 1 and 2
//! producer/consumer pairs, 2 and 4 threads), larson also with `-s`
//! (`free_sized`, which tieralloc exports). Every program checks the tag of
//! each object before freeing it and exits non-zero on a mismatch or a NULL;
//! here each run must exit 0 and print its result line with the thread count
//! and a positive ops count; under `tests/c/reissue.c`, a shim that hands out a
//! live object a second time, each must exit 1 naming the overwritten object.
//! `cbench_script_quick` runs `preload/cbench.sh -q`
//! (every shape under all five allocators, tiny parameters) and checks its
//! table. Needs `cc`; the script also needs Debian's `time libjemalloc2
//! libmimalloc2.0 libtcmalloc-minimal4`. A missing tool fails the test, it
//! never skips.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{compile_bench, compile_shared, lib, manifest_dir, require, run};

const LIMIT: Duration = Duration::from_secs(60);

/// Runs `bench/<shape>` with `args` under the library; returns its result line
/// after checking it: `shape=<shape> threads=<threads> ... ops=N ...`, N > 0.
fn shape(shape: &str, args: &[&str], threads: u32) -> String {
    let exe = compile_bench(shape);
    let mut cmd = Command::new(&exe);
    cmd.args(args);
    let r = run(cmd, Some(&lib()), LIMIT);
    assert!(r.ok(), "{shape} {args:?} failed: {}", r.describe());
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("shape="))
        .unwrap_or_else(|| panic!("{shape} {args:?}: no result line: {}", r.describe()))
        .to_string();
    let field = |key: &str| {
        line.split(' ')
            .find_map(|f| f.strip_prefix(key))
            .unwrap_or_else(|| panic!("{shape} {args:?}: no {key} in {line:?}"))
            .to_string()
    };
    assert_eq!(field("shape="), shape, "{line}");
    assert_eq!(field("threads="), threads.to_string(), "{args:?}: {line}");
    let ops: u64 = field("ops=")
        .parse()
        .unwrap_or_else(|e| panic!("{shape} {args:?}: ops in {line:?}: {e}"));
    assert!(ops > 0, "{shape} {args:?}: no operations: {line}");
    assert!(
        r.secs < 10.0,
        "{shape} {args:?} took {:.1} s, meant to be brief",
        r.secs
    );
    println!("{line} ({:.2} s)", r.secs);
    line
}

#[test]
fn simple() {
    for t in ["1", "4"] {
        shape("simple", &["-t", t, "-n", "100000"], t.parse().unwrap());
    }
}

#[test]
fn larson() {
    for t in ["1", "4"] {
        let line = shape(
            "larson",
            &["-t", t, "-r", "40", "-o", "5000"],
            t.parse().unwrap(),
        );
        assert!(line.contains(" free=free "), "{line}");
        let line = shape(
            "larson",
            &["-t", t, "-r", "40", "-o", "5000", "-s"],
            t.parse().unwrap(),
        );
        // dlsym finds tieralloc's free_sized, from the same object as its free.
        assert!(line.contains(" free=free_sized "), "{line}");
    }
    // The fixed-time mode ends after the first round past the deadline.
    let line = shape("larson", &["-t", "4", "-d", "0.2", "-o", "2000"], 4);
    assert!(!line.contains(" rounds=1 "), "{line}");
}

#[test]
fn paretoalloc() {
    for t in ["1", "4"] {
        shape(
            "paretoalloc",
            &["-t", t, "-w", "20000", "-n", "1000000"],
            t.parse().unwrap(),
        );
    }
}

#[test]
fn rptest() {
    for t in ["1", "4"] {
        let line = shape(
            "rptest",
            &["-t", t, "-w", "1000", "-i", "400", "-b", "200"],
            t.parse().unwrap(),
        );
        assert!(!line.contains(" remote_frees=0 "), "{line}");
    }
}

#[test]
fn xmalloc() {
    for (pairs, threads) in [("1", 2), ("2", 4)] {
        shape("xmalloc", &["-p", pairs, "-n", "1000000"], threads);
    }
}

/// The tags catch an allocator that hands out a live object again: each
/// shape, under `tests/c/reissue.c` (over glibc's malloc), exits 1 with the
/// object's address and what overwrote its tag.
#[test]
fn a_live_object_handed_out_twice_is_caught() {
    let so = compile_shared("reissue");
    for (name, args) in [
        ("simple", &["-t", "1", "-n", "1000"][..]),
        ("larson", &["-t", "1", "-r", "2"]),
        ("paretoalloc", &["-t", "1", "-w", "8000", "-n", "20000"]),
        ("rptest", &["-t", "1", "-w", "8000", "-i", "10"]),
        ("xmalloc", &["-p", "1", "-n", "20000"]),
    ] {
        let mut cmd = Command::new(compile_bench(name));
        cmd.args(args);
        let r = run(cmd, Some(&so), LIMIT);
        assert_eq!(r.code, Some(1), "{name} {args:?}: {}", r.describe());
        assert!(
            r.stderr.starts_with(&format!("{name}: object 0x"))
                && r.stderr.contains(" overwritten: "),
            "{name} {args:?}: {}",
            r.describe()
        );
    }
}

/// `preload/cbench.sh -q`: every row under every allocator, and the table.
#[test]
fn cbench_script_quick() {
    require("cc", "gcc");
    require("/usr/bin/time", "time");
    for (so, package) in [
        ("libjemalloc.so.2", "libjemalloc2"),
        ("libmimalloc.so.2", "libmimalloc2.0"),
        ("libtcmalloc_minimal.so.4", "libtcmalloc-minimal4"),
    ] {
        require(&format!("/usr/lib/x86_64-linux-gnu/{so}"), package);
    }
    let mut cmd = Command::new(manifest_dir().join("cbench.sh"));
    cmd.arg("-q").env("TIERALLOC_LIB", lib()).env_remove("ONLY");
    let r = run(cmd, None, Duration::from_secs(300));
    assert!(r.ok(), "cbench.sh -q failed: {}", r.describe());
    for row in [
        "| simple, 1 thread |",
        "| larson, 1 thread |",
        "| larson -s, 1 thread |",
        "| paretoalloc, 1 thread |",
        "| rptest, ",
        "| xmalloc, 1+1 threads |",
        "| **geometric mean** |",
    ] {
        assert!(r.stdout.contains(row), "no row {row:?}: {}", r.describe());
    }
    assert!(
        r.stdout.contains("tieralloc free_sized;"),
        "larson -s did not use tieralloc's free_sized: {}",
        r.describe()
    );
    println!("{}", r.stdout.trim());
}
