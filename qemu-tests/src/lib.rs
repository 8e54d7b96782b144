//! Host-side QEMU runner for the `boards/x86_64-qemu` kernel, (module
//! [`cortex_m`]) the `boards/cortex-m-qemu` firmware and (module [`riscv`])
//! the `boards/riscv-qemu` firmware.
//!
//! [`images`] builds the kernel once per test process (three images: default,
//! `checks`, `lla-heap`) with `cargo build --release` in the board's own
//! workspace; [`boot`] starts `qemu-system-x86_64` on one image with a
//! scenario (`-append "scenario=NAME ..."`), under a hard timeout (QEMU is
//! killed), and returns the serial log and QEMU's exit status. The kernel ends
//! every run through isa-debug-exit: status [`PASS`] (33) or [`FAIL`] (35).
//!
//! Nothing is skipped: a missing `qemu-system-x86_64` (`qemu-system-arm`,
//! `qemu-system-riscv32`), a missing `x86_64-unknown-none`
//! (`thumbv7m-none-eabi`, `thumbv6m-none-eabi`, `riscv32imac-unknown-none-elf`)
//! target or a failed build makes every test of that board fail with a
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
    check_qemu_tool(qemu, "qemu-system-x86_64", "qemu-system-x86")
}

/// Checks that `qemu` (standing for `bin`, from Debian package `pkg`) runs.
pub fn check_qemu_tool(qemu: &str, bin: &str, pkg: &str) -> Result<String, String> {
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
            "cannot run `{qemu}` ({e}): the QEMU tests need {bin} \
             (Debian: apt-get install {pkg}; or run `make deps`)"
        )),
    }
}

fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Checks that the `x86_64-unknown-none` target is installed (when rustup is there to ask).
fn check_target() -> Result<(), String> {
    check_rust_target("x86_64-unknown-none", &board_dir())
}

/// Checks that the Rust target `target` is installed for the toolchain that
/// `dir` uses (when rustup is there to ask; without rustup the build says).
pub fn check_rust_target(target: &str, dir: &Path) -> Result<(), String> {
    let Ok(o) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(dir)
        .output()
    else {
        return Ok(()); // no rustup: the build below will say if the target is missing
    };
    if o.status.success()
        && !String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.trim() == target)
    {
        return Err(format!("the Rust target {target} is not installed: run `rustup target add {target}` (or `make deps`)"));
    }
    Ok(())
}

/// The variables of the outer cargo that must not reach a board's own build.
const OUTER_CARGO_VARS: [&str; 9] = [
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "RUSTC_WRAPPER",
    "CARGO_MANIFEST_DIR",
    "CARGO_PKG_NAME",
];

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
    for v in OUTER_CARGO_VARS {
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

/// Runs are serialised (one QEMU at a time: the scenarios measure and use every CPU).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Boots `b` and waits for QEMU to exit, killing it at the timeout. Runs are
/// serialised (one QEMU at a time: the scenarios measure and use every CPU).
pub fn boot(b: &Boot) -> Run {
    let mut cmd = Command::new(qemu_bin());
    cmd.args(qemu_args(b));
    run_qemu(cmd, b.timeout)
}

/// Runs the QEMU command `cmd` (one at a time), collects stdout, then
/// stderr after a marker line, and kills it at `timeout`.
fn run_qemu(mut cmd: Command, timeout: Duration) -> Run {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let qemu = cmd.get_program().to_string_lossy().into_owned();
    let t = Instant::now();
    let mut child = cmd
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
            Ok(None) if t.elapsed() > timeout => {
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

/// The Cortex-M board, `boards/cortex-m-qemu`: firmware for QEMU's
/// `lm3s6965evb` (Cortex-M3, 64 KiB of SRAM), one binary per scenario, built
/// for `thumbv7m-none-eabi` and `thumbv6m-none-eabi` (Cortex-M0 code, which
/// runs on the same machine). The console and the exit status go through
/// semihosting: status [`cortex_m::PASS`] (0) or [`cortex_m::FAIL`] (1, also
/// what QEMU itself exits with when it fails: the tests check the log too).
pub mod cortex_m {
    use super::*;

    /// `SYS_EXIT` with `ADP_Stopped_ApplicationExit` (the firmware's `pass()`).
    pub const PASS: i32 = 0;
    /// Any other `SYS_EXIT` reason (the firmware's `fail()`, its panic handler).
    pub const FAIL: i32 = 1;
    /// The Cortex-M3 target (every scenario).
    pub const V7M: &str = "thumbv7m-none-eabi";
    /// The Cortex-M0 target (no compare-and-swap: the portable-atomic path).
    pub const V6M: &str = "thumbv6m-none-eabi";
    /// The scenarios built without features.
    pub const SCENARIOS: [&str; 4] = ["boot", "churn", "oom", "irq"];
    /// The scenarios built for thumbv7m only: `bench` (tieralloc against
    /// embedded-alloc's llff and tlsf and talc, SysTick cycles per operation).
    pub const V7M_ONLY: [&str; 1] = ["bench"];

    /// `boards/cortex-m-qemu`.
    pub fn board_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards/cortex-m-qemu")
    }

    /// The QEMU binary: `$QEMU_ARM` or `qemu-system-arm`.
    pub fn qemu_bin() -> String {
        std::env::var("QEMU_ARM").unwrap_or_else(|_| "qemu-system-arm".into())
    }

    /// Checks that `qemu` runs; the error says what to install.
    pub fn check_qemu(qemu: &str) -> Result<String, String> {
        check_qemu_tool(qemu, "qemu-system-arm", "qemu-system-arm")
    }

    /// `cargo build --release --target T [--features F] --bin ...` in the
    /// board crate; copies each binary to `target/images/T/NAME.elf`.
    fn build(target: &str, features: &str, bins: &[&str]) -> Result<(), String> {
        let dir = board_dir();
        let mut cmd = Command::new(cargo_bin());
        cmd.current_dir(&dir)
            .args(["build", "--release", "--target", target]);
        if !features.is_empty() {
            cmd.args(["--features", features]);
        }
        for b in bins {
            cmd.args(["--bin", b]);
        }
        for v in OUTER_CARGO_VARS {
            cmd.env_remove(v);
        }
        let t = Instant::now();
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run cargo ({e})"))?;
        if !out.status.success() {
            return Err(format!(
                "building the firmware for {target} (features `{features}`) failed in {}:\n{}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let images = dir.join("target/images").join(target);
        std::fs::create_dir_all(&images).map_err(|e| e.to_string())?;
        for b in bins {
            let built = dir.join("target").join(target).join("release").join(b);
            let dst = images.join(format!("{b}.elf"));
            std::fs::copy(&built, &dst)
                .map_err(|e| format!("copy {} -> {}: {e}", built.display(), dst.display()))?;
        }
        eprintln!(
            "qemu-tests: built {} for {target} (features `{features}`) in {:.1} s",
            bins.join(", "),
            t.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Builds every image once per process: the scenarios for both targets,
    /// `bench` for thumbv7m, and `double_free` with `checks` for thumbv7m. Panics with the reason if
    /// QEMU, a target or the build is missing.
    fn built() -> &'static Path {
        static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        let r = DIR.get_or_init(|| {
            let v = check_qemu(&qemu_bin())?;
            eprintln!("qemu-tests: {v}");
            for t in [V7M, V6M] {
                check_rust_target(t, &board_dir())?;
            }
            build(V7M, "", &[&SCENARIOS[..], &V7M_ONLY[..]].concat())?;
            build(V7M, "checks", &["double_free"])?;
            build(V6M, "", &SCENARIOS)?;
            Ok(board_dir().join("target/images"))
        });
        match r {
            Ok(d) => d,
            Err(e) => panic!("qemu-tests (cortex-m) cannot run: {e}"),
        }
    }

    /// The image of `scenario` for `target` (built on first use).
    pub fn image(target: &str, scenario: &str) -> PathBuf {
        built().join(target).join(format!("{scenario}.elf"))
    }

    /// The QEMU command line for `image`.
    pub fn qemu_args(image: &Path) -> Vec<String> {
        [
            "-M",
            "lm3s6965evb",
            "-nographic",
            "-monitor",
            "none",
            "-serial",
            "none",
            "-semihosting-config",
            "enable=on,target=native",
            "-kernel",
            &image.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Boots `scenario` built for `target` and waits for QEMU to exit,
    /// killing it after `timeout_s` seconds.
    pub fn boot(target: &str, scenario: &str, timeout_s: u64) -> Run {
        let img = image(target, scenario);
        let mut cmd = Command::new(qemu_bin());
        cmd.args(qemu_args(&img));
        run_qemu(cmd, Duration::from_secs(timeout_s))
    }
}

/// The RISC-V board, `boards/riscv-qemu`: M-mode firmware for QEMU's riscv32
/// `virt` machine with four harts (`-smp 4 -m 64M -bios none`), one binary
/// per scenario, built for `riscv32imac-unknown-none-elf` (and
/// `riscv64gc-unknown-none-elf` for `qemu-system-riscv64`: [`riscv::boot64`]). The console is the
/// UART (QEMU's stdout); the firmware exits through the SiFive test device:
/// status [`riscv::PASS`] (0) or [`riscv::FAIL`] (1, also what QEMU itself
/// exits with when it fails: the tests check the log too).
pub mod riscv {
    use super::*;

    /// The test device's `FINISHER_PASS` (the firmware's `pass()`).
    pub const PASS: i32 = 0;
    /// `FINISHER_FAIL` with code 1 (the firmware's `fail()`, its panic and trap handlers).
    pub const FAIL: i32 = 1;
    /// The firmware's target.
    pub const TARGET: &str = "riscv32imac-unknown-none-elf";
    /// The same firmware for RV64GC, booted on `qemu-system-riscv64 -M virt`.
    pub const TARGET64: &str = "riscv64gc-unknown-none-elf";
    /// The scenarios the RV64GC build boots.
    pub const SCENARIOS64: [&str; 3] = ["boot", "stress", "oom"];
    /// The scenarios built without features.
    pub const SCENARIOS: [&str; 4] = ["boot", "stress", "oom", "bench"];

    /// `boards/riscv-qemu`.
    pub fn board_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards/riscv-qemu")
    }

    /// The QEMU binary: `$QEMU_RISCV32` or `qemu-system-riscv32`.
    pub fn qemu_bin() -> String {
        std::env::var("QEMU_RISCV32").unwrap_or_else(|_| "qemu-system-riscv32".into())
    }

    /// The RV64 QEMU binary: `$QEMU_RISCV64` or `qemu-system-riscv64`.
    pub fn qemu_bin64() -> String {
        std::env::var("QEMU_RISCV64").unwrap_or_else(|_| "qemu-system-riscv64".into())
    }

    /// Checks that `qemu` runs; the error says what to install.
    pub fn check_qemu(qemu: &str) -> Result<String, String> {
        check_qemu_tool(qemu, "qemu-system-riscv32", "qemu-system-misc")
    }

    /// `cargo build --release --target T [--features F] --bin ...` in the
    /// board crate; copies each binary to `target/images/T/NAME.elf`.
    fn build(target: &str, features: &str, bins: &[&str]) -> Result<(), String> {
        let dir = board_dir();
        let mut cmd = Command::new(cargo_bin());
        cmd.current_dir(&dir)
            .args(["build", "--release", "--target", target]);
        if !features.is_empty() {
            cmd.args(["--features", features]);
        }
        for b in bins {
            cmd.args(["--bin", b]);
        }
        for v in OUTER_CARGO_VARS {
            cmd.env_remove(v);
        }
        let t = Instant::now();
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run cargo ({e})"))?;
        if !out.status.success() {
            return Err(format!(
                "building the firmware for {target} (features `{features}`) failed in {}:\n{}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let images = dir.join("target/images").join(target);
        std::fs::create_dir_all(&images).map_err(|e| e.to_string())?;
        for b in bins {
            let built = dir.join("target").join(target).join("release").join(b);
            let dst = images.join(format!("{b}.elf"));
            std::fs::copy(&built, &dst)
                .map_err(|e| format!("copy {} -> {}: {e}", built.display(), dst.display()))?;
        }
        eprintln!(
            "qemu-tests: built {} for {target} (features `{features}`) in {:.1} s",
            bins.join(", "),
            t.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Builds every image once per process: the scenarios, and `double_free`
    /// with `checks`. Panics with the reason if QEMU, the target or the build
    /// is missing.
    fn built() -> &'static Path {
        static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        let r = DIR.get_or_init(|| {
            let v = check_qemu(&qemu_bin())?;
            eprintln!("qemu-tests: {v}");
            check_rust_target(TARGET, &board_dir())?;
            build(TARGET, "", &SCENARIOS)?;
            build(TARGET, "checks", &["double_free"])?;
            Ok(board_dir().join("target/images").join(TARGET))
        });
        match r {
            Ok(d) => d,
            Err(e) => panic!("qemu-tests (riscv) cannot run: {e}"),
        }
    }

    /// Builds the RV64GC images once per process (`SCENARIOS64`); panics with
    /// the reason if qemu-system-riscv64, the target or the build is missing.
    fn built64() -> &'static Path {
        static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        let r = DIR.get_or_init(|| {
            let v = check_qemu_tool(&qemu_bin64(), "qemu-system-riscv64", "qemu-system-misc")?;
            eprintln!("qemu-tests: {v}");
            check_rust_target(TARGET64, &board_dir())?;
            build(TARGET64, "", &SCENARIOS64)?;
            Ok(board_dir().join("target/images").join(TARGET64))
        });
        match r {
            Ok(d) => d,
            Err(e) => panic!("qemu-tests (riscv64) cannot run: {e}"),
        }
    }

    /// Boots `scenario` of the RV64GC build on `qemu-system-riscv64 -M virt`
    /// (same machine arguments), killing it after `timeout_s` seconds.
    pub fn boot64(scenario: &str, timeout_s: u64) -> Run {
        let img = built64().join(format!("{scenario}.elf"));
        let mut cmd = Command::new(qemu_bin64());
        cmd.args(qemu_args(&img, &[]));
        run_qemu(cmd, Duration::from_secs(timeout_s))
    }

    /// The image of `scenario` (built on first use).
    pub fn image(scenario: &str) -> PathBuf {
        built().join(format!("{scenario}.elf"))
    }

    /// The QEMU command line for `image`, with `extra` arguments (e.g.
    /// `["-icount", "shift=0"]`) before `-kernel`.
    pub fn qemu_args(image: &Path, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = [
            "-M",
            "virt",
            "-smp",
            "4",
            "-m",
            "64M",
            "-bios",
            "none",
            "-nographic",
            "-monitor",
            "none",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
        a.push("-kernel".into());
        a.push(image.display().to_string());
        a
    }

    /// Boots `scenario` and waits for QEMU to exit, killing it after
    /// `timeout_s` seconds.
    pub fn boot(scenario: &str, timeout_s: u64) -> Run {
        boot_with(scenario, &[], timeout_s)
    }

    /// [`boot`] with more QEMU arguments.
    pub fn boot_with(scenario: &str, extra: &[&str], timeout_s: u64) -> Run {
        let img = image(scenario);
        let mut cmd = Command::new(qemu_bin());
        cmd.args(qemu_args(&img, extra));
        run_qemu(cmd, Duration::from_secs(timeout_s))
    }
}
