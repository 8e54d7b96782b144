//! Shared by the test programs (`programs.rs`, `options.rs`, `aslimit.rs`,
//! `cbench.rs`): the library under test, compiling the C programs and the
//! benchmark shapes, running a program under `LD_PRELOAD` with a time limit.
//! Each test crate uses part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// The library under test: `libtieralloc.so` of this test's profile, built
/// here with the cargo that runs the test (the library target builds only a
/// cdylib, which `cargo test` does not build on its own), once per process.
pub fn lib() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("current_exe");
            // target/<profile>/deps/<test> → target/<profile>
            let dir = exe
                .parent()
                .and_then(|d| d.parent())
                .expect("target/<profile>/deps");
            let release = dir.file_name().is_some_and(|n| n == "release");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-p", "tieralloc-preload", "--lib"]);
            if release {
                cmd.arg("--release");
            }
            if cfg!(feature = "checks") {
                cmd.args(["--features", "checks"]);
            }
            let st = cmd
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("run cargo build");
            assert!(st.success(), "cargo build of libtieralloc.so failed");
            let so = dir.join("libtieralloc.so");
            assert!(so.is_file(), "{} is missing after the build", so.display());
            so
        })
        .clone()
}

pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn out_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("preload-tests");
    std::fs::create_dir_all(&d).expect("create the test output dir");
    d
}

/// Fails loudly (never skips) when a tool is missing.
pub fn require(path: &str, package: &str) {
    let found = if path.contains('/') {
        Path::new(path).exists()
    } else {
        Command::new("sh")
            .args(["-c", &format!("command -v {path}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(found, "{path} not found: install Debian's `{package}` (apt-get install -y {package}); these tests never skip");
}

/// Compiles `tests/c/<name>.c` into the test output dir, once per test run
/// (tests run in parallel and share programs).
pub fn compile(name: &str) -> PathBuf {
    build(
        "tests/c",
        name,
        "",
        &["-O2", "-g", "-fno-builtin", "-Wall", "-pthread"],
        &["-ldl"],
    )
}

/// Compiles `tests/c/<name>.c` as a shared library to preload,
/// `<name>.so` in the test output dir, once per test run.
pub fn compile_shared(name: &str) -> PathBuf {
    build(
        "tests/c",
        name,
        ".so",
        &["-O2", "-Wall", "-shared", "-fPIC"],
        &["-ldl"],
    )
}

/// Compiles the benchmark shape `bench/<name>.c` (with `bench/cbench.h`) as
/// `preload/cbench.sh` does, into the test output dir, once per test run.
pub fn compile_bench(name: &str) -> PathBuf {
    build(
        "bench",
        name,
        "",
        &["-O2", "-g", "-Wall", "-pthread"],
        &["-lm"],
    )
}

/// `cc FLAGS -o OUT/<dir's last part>-<name><suffix> DIR/<name>.c LIBS`
/// (`OUT/<name><suffix>` for `tests/c`), once per output and test run.
fn build(dir: &str, name: &str, suffix: &str, flags: &[&str], libs: &[&str]) -> PathBuf {
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let key = format!("{dir}/{name}{suffix}");
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(exe) = built.get(&key) {
        return exe.clone();
    }
    require("cc", "gcc");
    let src = manifest_dir().join(dir).join(format!("{name}.c"));
    let exe = if dir == "tests/c" {
        out_dir().join(format!("{name}{suffix}"))
    } else {
        out_dir().join(format!("{}-{name}{suffix}", dir.replace('/', "-")))
    };
    let out = Command::new("cc")
        .args(flags)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .args(libs)
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "cc {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    built.insert(key, exe.clone());
    exe
}

pub struct Run {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub secs: f64,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
    pub fn describe(&self) -> String {
        let tail = |s: &str| {
            let s = s.trim_end();
            let start = s.len().saturating_sub(4000);
            let start = (start..s.len())
                .find(|&i| s.is_char_boundary(i))
                .unwrap_or(s.len());
            s[start..].to_string()
        };
        format!(
            "exit code {:?}, signal {:?}, {:.1} s\n--- stdout (tail) ---\n{}\n--- stderr (tail) ---\n{}",
            self.code,
            self.signal,
            self.secs,
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }
}

/// Runs `cmd` (with `LD_PRELOAD=lib` when given) and kills it after `limit`.
pub fn run(mut cmd: Command, preload: Option<&Path>, limit: Duration) -> Run {
    use std::os::unix::process::ExitStatusExt;
    match preload {
        Some(p) => cmd.env("LD_PRELOAD", p),
        None => cmd.env_remove("LD_PRELOAD"),
    };
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    let pid = child.id() as i32;
    let (mut so, mut se) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = so.read_to_end(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = se.read_to_end(&mut s);
        s
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(limit) {
        Ok(s) => s.expect("wait"),
        Err(_) => {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = rx.recv();
            let out = String::from_utf8_lossy(&t_out.join().unwrap()).into_owned();
            let err = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
            panic!(
                "{:?} timed out after {limit:?} (deadlock?)\n--- stdout ---\n{}\n--- stderr ---\n{}",
                cmd.get_program(),
                &out[out.len().saturating_sub(3000)..],
                &err[err.len().saturating_sub(3000)..]
            );
        }
    };
    let r = Run {
        code: status.code(),
        signal: status.signal(),
        stdout: String::from_utf8_lossy(&t_out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&t_err.join().unwrap()).into_owned(),
        secs: start.elapsed().as_secs_f64(),
    };
    if preload.is_some() {
        assert!(
            !r.stderr.contains("cannot be preloaded"),
            "the dynamic linker refused the library; the program ran without it:\n{}",
            r.stderr
        );
    }
    r
}
