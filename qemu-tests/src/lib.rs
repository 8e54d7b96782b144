//! Host-side QEMU runner for the `boards/x86_64-qemu` kernel.
//!
//! [`images`] builds the kernel once per test process (three images: default,
//! `checks`, `lla-heap`) with `cargo build --release` in the board's own
//! workspace; [`boot`] starts `qemu-system-x86_64` on one image with a
//! scenario (`-append "scenario=NAME ..."`), under a hard timeout (QEMU is
//! killed), and returns the serial log and QEMU's exit status. The kernel ends
//! every run through isa-debug-exit: status [`PASS`] (33) or [`FAIL`] (35).
//!
//! Nothing is skipped: a missing `qemu-system-x86_64`, a missing
//! `x86_64-unknown-none` target or a failed build makes every test fail with a
//! message that says what to install (`make deps`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// QEMU's exit status when the kernel writes 0x10 to isa-debug-exit.
pub const PASS: i32 = 33;
/// QEMU's exit status when the kernel writes 0x11 (failed check, panic, fault).
pub const FAIL: i32 = 35;

/// The kernel images, one per feature set.
#[derive(Debug, Clone)]
pub struct Images {
    /// tieralloc as the global allocator, no checks (the image `make run` boots).
    pub default: PathBuf,
    /// With tieralloc's `checks` (double free, foreign pointers panic).
    pub checks: PathBuf,
    /// linked_list_allocator as the global allocator.
    pub lla: PathBuf,
}

/// `boards/x86_64-qemu`.
pub fn board_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards/x86_64-qemu")
}

/// The QEMU binary: `$QEMU` or `qemu-system-x86_64`.
pub fn qemu_bin() -> String {
    std::env::var("QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into())
}

/// Checks that `qemu` runs; the error says what to install.
pub fn check_qemu(qemu: &str) -> Result<String, String> {
    match Command::new(qemu)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()),
        Ok(o) => Err(format!(
            "`{qemu} --version` failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Err(format!(
            "cannot run `{qemu}` ({e}): the QEMU tests need qemu-system-x86_64 \
             (Debian: apt-get install qemu-system-x86; or run `make deps`)"
        )),
    }
}

fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Checks that the `x86_64-unknown-none` target is installed (when rustup is there to ask).
fn check_target() -> Result<(), String> {
    let Ok(o) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(board_dir())
        .output()
    else {
        return Ok(()); // no rustup: the build below will say if the target is missing
    };
    if o.status.success()
        && !String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.trim() == "x86_64-unknown-none")
    {
        return Err("the Rust target x86_64-unknown-none is not installed: run `rustup target add x86_64-unknown-none` (or `make deps`)".into());
    }
    Ok(())
}

/// `cargo build --release [--features F]` in the board crate; returns the copied image.
fn build(features: &str, name: &str) -> Result<PathBuf, String> {
    let dir = board_dir();
    let mut cmd = Command::new(cargo_bin());
    cmd.current_dir(&dir)
        .args(["build", "--release", "--target", "x86_64-unknown-none"]);
    if !features.is_empty() {
        cmd.args(["--features", features]);
    }
    // The board is its own workspace with its own flags: keep the outer cargo's out.
    for v in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "RUSTC_WRAPPER",
        "CARGO_MANIFEST_DIR",
        "CARGO_PKG_NAME",
    ] {
        cmd.env_remove(v);
    }
    let t = Instant::now();
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run cargo ({e})"))?;
    if !out.status.success() {
        return Err(format!(
            "building the kernel (features `{features}`) failed in {}:\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let built = dir.join("target/x86_64-unknown-none/release/x86_64-qemu");
    let images = dir.join("target/images");
    std::fs::create_dir_all(&images).map_err(|e| e.to_string())?;
    let dst = images.join(format!("{name}.elf"));
    std::fs::copy(&built, &dst)
        .map_err(|e| format!("copy {} -> {}: {e}", built.display(), dst.display()))?;
    eprintln!(
        "qemu-tests: built {} in {:.1} s",
        dst.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(dst)
}

/// Builds the three images once per process (later calls get the same result).
/// Panics with the reason if QEMU, the target or the build is missing.
pub fn images() -> &'static Images {
    static IMAGES: OnceLock<Result<Images, String>> = OnceLock::new();
    let r = IMAGES.get_or_init(|| {
        let v = check_qemu(&qemu_bin())?;
        eprintln!("qemu-tests: {v}");
        check_target()?;
        Ok(Images {
            default: build("", "default")?,
            checks: build("checks", "checks")?,
            lla: build("lla-heap", "lla-heap")?,
        })
    });
    match r {
        Ok(i) => i,
        Err(e) => panic!("qemu-tests cannot run: {e}"),
    }
}

/// One QEMU run.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// QEMU's exit status (`None` if it was killed at the timeout).
    pub status: Option<i32>,
    pub timed_out: bool,
    /// Everything the kernel wrote to COM1 (and QEMU to stderr, after it).
    pub log: String,
    pub secs: f64,
}

impl Run {
    /// Panics (printing the log) unless QEMU exited with `status`.
    pub fn expect_status(&self, status: i32) -> &Self {
        if self.status != Some(status) {
            panic!(
                "expected QEMU exit status {status}, got {:?}{} after {:.1} s; serial log:\n{}",
                self.status,
                if self.timed_out {
                    " (killed at the timeout)"
                } else {
                    ""
                },
                self.secs,
                self.log
            );
        }
        self
    }

    /// Panics (printing the log) unless the log contains `s`.
    pub fn expect_line(&self, s: &str) -> &Self {
        if !self.log.contains(s) {
            panic!("serial log lacks {s:?}; log:\n{}", self.log);
        }
        self
    }

    /// Panics (printing the log) if the log contains `s`.
    pub fn expect_no(&self, s: &str) -> &Self {
        if self.log.contains(s) {
            panic!("serial log contains {s:?}; log:\n{}", self.log);
        }
        self
    }

    /// The first line containing `s`.
    pub fn line(&self, s: &str) -> Option<&str> {
        self.log.lines().find(|l| l.contains(s))
    }
}

/// How to boot.
#[derive(Debug, Clone)]
pub struct Boot<'a> {
    pub image: &'a Path,
    pub scenario: &'a str,
    /// More `key=value` words for the kernel command line.
    pub args: &'a str,
    pub smp: u32,
    pub mem: &'a str,
    pub timeout: Duration,
}

impl<'a> Boot<'a> {
    pub fn new(image: &'a Path, scenario: &'a str) -> Self {
        Boot {
            image,
            scenario,
            args: "",
            smp: 4,
            mem: "512M",
            timeout: Duration::from_secs(120),
        }
    }
    pub fn smp(mut self, n: u32) -> Self {
        self.smp = n;
        self
    }
    pub fn mem(mut self, m: &'a str) -> Self {
        self.mem = m;
        self
    }
    pub fn args(mut self, a: &'a str) -> Self {
        self.args = a;
        self
    }
    pub fn timeout(mut self, s: u64) -> Self {
        self.timeout = Duration::from_secs(s);
        self
    }
}

/// The QEMU command line for `b` (also what `run.sh` uses).
pub fn qemu_args(b: &Boot) -> Vec<String> {
    let mut append = format!("scenario={}", b.scenario);
    if !b.args.is_empty() {
        append.push(' ');
        append.push_str(b.args);
    }
    [
        "-machine",
        "q35",
        "-cpu",
        "max",
        "-smp",
        &b.smp.to_string(),
        "-m",
        b.mem,
        "-display",
        "none",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-no-reboot",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-kernel",
        &b.image.display().to_string(),
        "-append",
        &append,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Boots `b` and waits for QEMU to exit, killing it at the timeout. Runs are
/// serialised (one QEMU at a time: the scenarios measure and use every CPU).
pub fn boot(b: &Boot) -> Run {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let qemu = qemu_bin();
    let t = Instant::now();
    let mut child = Command::new(&qemu)
        .args(qemu_args(b))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {qemu}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s.code(),
            Ok(None) if t.elapsed() > b.timeout => {
                timed_out = true;
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for QEMU: {e}"),
        }
    };
    let mut log = String::from_utf8_lossy(&out_t.join().unwrap_or_default()).replace('\r', "");
    let e = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).to_string();
    if !e.trim().is_empty() {
        log.push_str("\n--- QEMU stderr ---\n");
        log.push_str(&e);
    }
    Run {
        status,
        timed_out,
        log,
        secs: t.elapsed().as_secs_f64(),
    }
}
