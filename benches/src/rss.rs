//! Peak RSS: the bench binary re-executes itself as `--rss-child ALLOC WORKLOAD`,
//! which runs that one workload once on that one allocator (`none`: builds the
//! workload's inputs and runs nothing, the harness baseline) and prints its
//! peak RSS. The child reads `VmHWM` from `/proc/self/status`: the high-water
//! mark of its own address space. (`ru_maxrss` of a child is not usable here:
//! Linux folds the pre-exec high-water mark, i.e. the forked copy of this large
//! parent, into it.)

use std::path::Path;
use std::process::{Command, Stdio};

/// The line the child prints.
const TAG: &str = "tieralloc-bench-vmhwm-kib";

/// The calling process's peak RSS in KiB (`VmHWM`), if the kernel reports it.
pub fn self_peak_kib() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The child's report line.
pub fn child_report() -> String {
    format!("{TAG} {}", self_peak_kib().unwrap_or(-1))
}

/// Runs one child; its peak RSS in KiB.
pub fn child_peak_kib(exe: &Path, alloc: &str, workload: &str, quick: bool) -> Result<i64, String> {
    let mut cmd = Command::new(exe);
    cmd.args(["--rss-child", alloc, workload]);
    if quick {
        cmd.arg("--quick");
    }
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    if !out.status.success() {
        return Err(format!(
            "--rss-child {alloc} {workload} failed: {}",
            out.status
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(TAG))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|&k| k > 0)
        .ok_or_else(|| format!("--rss-child {alloc} {workload}: no peak RSS reported"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_peak_is_readable() {
        let k = self_peak_kib().expect("VmHWM");
        assert!(k > 100, "{k}");
        assert!(child_report().starts_with(TAG));
    }
}
