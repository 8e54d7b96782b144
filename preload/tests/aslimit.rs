//! Address-space limits (`RLIMIT_AS`, `ulimit -v`), as a real program under
//! `LD_PRELOAD=libtieralloc.so` and under glibc: `tests/c/aslimit.c` limits
//! itself with `setrlimit` to its mapped size at start plus a headroom, then
//!
//! * fills the headroom with 1 MiB blocks, and with 100-byte blocks: the
//!   first NULL comes within 10 % of glibc's, in the same test, and near the
//!   headroom itself for the 1 MiB blocks;
//! * frees everything and allocates 64 MiB, which succeeds, and fills again
//!   as far as the first time;
//! * maps 128 MiB itself under a headroom of 160 MiB, leaving 32 MiB, of
//!   which it still allocates at least 75 %;
//!
//! and every NULL comes with `errno == ENOMEM`, never an abort (the program
//! exits 0).

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::{compile, lib, run};

const LIMIT: Duration = Duration::from_secs(120);

/// The `key=value` fields of the program's output line, checked for a clean
/// exit and for `ENOMEM` in every `errno` field.
fn aslimit(args: &[&str], tieralloc: bool) -> BTreeMap<String, String> {
    let exe = compile("aslimit");
    let mut cmd = Command::new(&exe);
    cmd.args(args);
    let who = if tieralloc { "tieralloc" } else { "glibc" };
    let r = run(cmd, tieralloc.then(lib).as_deref(), LIMIT);
    assert!(r.ok(), "aslimit {args:?} under {who}: {}", r.describe());
    let fields: BTreeMap<String, String> = r
        .stdout
        .split_whitespace()
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in &fields {
        if k.starts_with("errno") || k.ends_with("errno") {
            assert_eq!(
                v, "ENOMEM",
                "{k} of aslimit {args:?} under {who}: {}",
                r.stdout
            );
        }
    }
    fields
}

fn kib(fields: &BTreeMap<String, String>, key: &str) -> usize {
    fields
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {fields:?}"))
}

const HEADROOM_MIB: usize = 150;

#[test]
fn first_null_within_a_tenth_of_glibc() {
    let headroom = HEADROOM_MIB.to_string();
    for size in ["1048576", "100"] {
        let args = ["fill", &headroom, size];
        let ours = kib(&aslimit(&args, true), "total_kib");
        let glibc = kib(&aslimit(&args, false), "total_kib");
        assert!(
            ours * 10 >= glibc * 9,
            "blocks of {size} bytes under {HEADROOM_MIB} MiB: tieralloc {ours} KiB, glibc {glibc} KiB"
        );
        if size == "1048576" {
            // Less than a 4 MiB chunk and the metadata short of the headroom.
            assert!(
                ours + 6 * 1024 >= HEADROOM_MIB * 1024,
                "1 MiB blocks under {HEADROOM_MIB} MiB: {ours} KiB"
            );
        }
    }
}

#[test]
fn malloc_64_mib_after_freeing_everything() {
    let headroom = HEADROOM_MIB.to_string();
    for size in ["1048576", "100", "40000"] {
        let f = aslimit(&["refill", &headroom, size], true);
        assert_eq!(f["big"], "ok", "blocks of {size} bytes: {f:?}");
        let (first, again) = (kib(&f, "total_kib"), kib(&f, "again_kib"));
        assert!(
            again + 4 * 1024 >= first,
            "blocks of {size} bytes: the second fill got {again} KiB, the first {first} KiB"
        );
    }
}

#[test]
fn most_of_the_last_32_mib() {
    let ours = kib(&aslimit(&["squeeze", "160", "128"], true), "total_kib");
    let glibc = kib(&aslimit(&["squeeze", "160", "128"], false), "total_kib");
    assert!(
        ours * 4 >= 32 * 1024 * 3,
        "32 MiB left: tieralloc {ours} KiB (glibc {glibc} KiB)"
    );
}
