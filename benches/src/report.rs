//! Results: the terminal tables, `results/bench.md` and the chart `results/bench.svg`
//! (hand-written SVG, no dependencies).

use std::fmt::Write as _;

use crate::allocs::{GLIBC, MIMALLOC_NAME};

/// Median of `v` (sorted in place); 0 for an empty slice.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One workload's results.
pub struct Row {
    pub workload: &'static str,
    pub threads: usize,
    pub ops: u64,
    pub op: &'static str,
    /// Per allocator (in [`Results::allocs`] order): Mops/s of every round, sorted.
    pub rounds: Vec<Vec<f64>>,
    /// Per allocator: the median.
    pub mops: Vec<f64>,
    /// Per allocator: peak RSS above the baseline child's, KiB (if measured).
    pub rss_kib: Option<Vec<Option<i64>>>,
    /// Peak RSS of the baseline child (the harness with this workload's inputs), KiB.
    pub rss_base_kib: Option<i64>,
    /// Per allocator: some round ran out of time budget and stopped early.
    pub cut: Vec<bool>,
}

impl Row {
    pub fn new(
        workload: &'static str,
        threads: usize,
        ops: u64,
        op: &'static str,
        mut rounds: Vec<Vec<f64>>,
    ) -> Row {
        let mops = rounds.iter_mut().map(|r| median(r)).collect();
        let cut = vec![false; rounds.len()];
        Row {
            workload,
            threads,
            ops,
            op,
            rounds,
            mops,
            rss_kib: None,
            rss_base_kib: None,
            cut,
        }
    }
}

/// Everything a run produced, plus what the report header needs.
pub struct Results {
    pub allocs: Vec<&'static str>,
    pub rows: Vec<Row>,
    pub rounds: usize,
    pub command: String,
    pub date: String,
    pub machine: String,
    pub tieralloc_mode: &'static str,
    /// Seconds one run may take before its threads stop early.
    pub budget_s: f64,
    pub seconds: f64,
}

impl Results {
    fn index(&self, name: &str) -> Option<usize> {
        self.allocs.iter().position(|a| *a == name)
    }

    /// Median Mops/s of `alloc` on row `r` divided by `base`'s.
    pub fn ratio(&self, r: &Row, alloc: usize, base: &str) -> Option<f64> {
        let b = r.mops[self.index(base)?];
        (b > 0.0).then(|| r.mops[alloc] / b)
    }
}

/// Prints one workload's table to stdout.
pub fn print_row(res: &Results, r: &Row) {
    let width = res.allocs.iter().map(|a| a.len()).max().unwrap_or(9).max(9);
    println!(
        "\n{}  ({} threads, {} ops per round, op = {})",
        r.workload, r.threads, r.ops, r.op
    );
    println!(
        "  {:<width$}  {:>9}  {:>9}  {:>19}  {:>9}  {:>11}",
        "allocator", "Mops/s", "ns/op", "min..max Mops/s", "vs glibc", "vs mimalloc"
    );
    for (i, a) in res.allocs.iter().enumerate() {
        let ratio = |b: &str| {
            res.ratio(r, i, b)
                .map_or("-".to_string(), |x| format!("{x:.2}x"))
        };
        let (lo, hi) = (
            r.rounds[i].first().copied().unwrap_or(0.0),
            r.rounds[i].last().copied().unwrap_or(0.0),
        );
        println!(
            "  {:<width$}  {:>9.2}  {:>9.1}  {:>19}  {:>9}  {:>11}{}",
            a,
            r.mops[i],
            1e3 / r.mops[i],
            format!("{lo:.2}..{hi:.2}"),
            ratio(GLIBC),
            ratio(MIMALLOC_NAME),
            if r.cut[i] {
                "  (stopped early: time budget)"
            } else {
                ""
            }
        );
    }
}

/// Prints the peak-RSS table to stdout.
pub fn print_rss(res: &Results) {
    let Some((lo, hi)) = base_range(res) else {
        return;
    };
    println!(
        "\npeak RSS, MiB above the harness alone ({lo:.1}..{hi:.1} MiB; one child process per allocator and workload)"
    );
    print!("  {:<12}", "workload");
    for a in &res.allocs {
        print!(" {:>9}", short(a));
    }
    println!();
    for r in &res.rows {
        let Some(rss) = &r.rss_kib else { continue };
        print!("  {:<12}", r.workload);
        for v in rss {
            print!(" {:>9}", v.map_or("-".into(), mib));
        }
        println!();
    }
}

/// Smallest and largest baseline RSS, MiB.
fn base_range(res: &Results) -> Option<(f64, f64)> {
    let v: Vec<f64> = res
        .rows
        .iter()
        .filter_map(|r| r.rss_base_kib)
        .map(|k| k as f64 / 1024.0)
        .collect();
    let lo = v.iter().copied().reduce(f64::min)?;
    Some((lo, v.iter().copied().fold(lo, f64::max)))
}

fn short(a: &str) -> &str {
    match a {
        "tieralloc-locked" => "tier-lock",
        "linked_list" => "lla",
        _ => a,
    }
}

/// MiB with one decimal; a difference below the baseline (noise of a few
/// pages) shows as 0.0.
fn mib(kib: i64) -> String {
    format!("{:.1}", kib.max(0) as f64 / 1024.0)
}

/// The geometric mean of tieralloc's ratio to `base` over every row.
fn geomean(res: &Results, alloc: usize, base: &str) -> Option<f64> {
    let v: Vec<f64> = res
        .rows
        .iter()
        .filter_map(|r| res.ratio(r, alloc, base))
        .collect();
    (!v.is_empty()).then(|| (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp())
}

/// `results/bench.md`: header, throughput table, RSS table.
pub fn markdown(res: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "<!-- generated by `{}`; do not edit -->", res.command);
    let _ = writeln!(
        s,
        "Measured {} on {}, with `{}` ({} interleaved rounds per workload, median reported; {:.0} s in all).\n\
         tieralloc mode: {}. Every allocator is driven in the same process through `GlobalAlloc`.\n",
        res.date, res.machine, res.command, res.rounds, res.seconds, res.tieralloc_mode
    );
    let _ = writeln!(
        s,
        "Throughput in million ops per second (higher is better), ratio to glibc in parentheses. \
         † = the allocator's threads stopped at the {:.1} s time budget per run and the rate is over the ops done by then \
         (same live set and shape, fewer ops).\n",
        res.budget_s
    );
    // tieralloc (the first column) against mimalloc as well, when both ran.
    let vs_mi = res.allocs.first().is_some_and(|a| *a != MIMALLOC_NAME)
        && res.index(MIMALLOC_NAME).is_some();
    let _ = write!(s, "| workload | threads | op |");
    for a in &res.allocs {
        let _ = write!(s, " {a} |");
    }
    if vs_mi {
        let _ = write!(s, " {} / mimalloc |", res.allocs[0]);
    }
    let _ = write!(s, "\n|---|---:|---|");
    for _ in &res.allocs {
        let _ = write!(s, "---:|");
    }
    if vs_mi {
        s.push_str("---:|");
    }
    s.push('\n');
    for r in &res.rows {
        let _ = write!(s, "| {} | {} | {} |", r.workload, r.threads, r.op);
        for (i, a) in res.allocs.iter().enumerate() {
            let ratio = if *a == GLIBC {
                String::new()
            } else {
                res.ratio(r, i, GLIBC)
                    .map_or(String::new(), |x| format!(" ({x:.2}x)"))
            };
            let m = r.mops[i];
            let v = if m >= 100.0 {
                format!("{m:.0}")
            } else if m >= 1.0 {
                format!("{m:.1}")
            } else {
                format!("{m:.3}")
            };
            let v = if r.cut[i] { format!("{v}†") } else { v };
            if i == 0 {
                let _ = write!(s, " **{v}{ratio}** |");
            } else {
                let _ = write!(s, " {v}{ratio} |");
            }
        }
        if vs_mi {
            let _ = write!(
                s,
                " {} |",
                res.ratio(r, 0, MIMALLOC_NAME)
                    .map_or("-".into(), |x| format!("{x:.2}x"))
            );
        }
        s.push('\n');
    }
    let _ = write!(s, "| geometric mean vs glibc | | |");
    for (i, _) in res.allocs.iter().enumerate() {
        let _ = write!(
            s,
            " {} |",
            geomean(res, i, GLIBC).map_or("-".into(), |x| format!("{x:.2}x"))
        );
    }
    if vs_mi {
        let _ = write!(
            s,
            " {} |",
            geomean(res, 0, MIMALLOC_NAME).map_or("-".into(), |x| format!("{x:.2}x"))
        );
    }
    s.push('\n');
    if let Some((lo, hi)) = base_range(res) {
        let _ = writeln!(
            s,
            "\nPeak RSS in MiB (lower is better) above the harness alone with the same inputs ({lo:.1}..{hi:.1} MiB), \
             one child process per allocator and workload (`--rss-child ALLOC WORKLOAD`, `VmHWM` of the child); \
             the fixed-arena allocators count only the arena pages they touched:\n"
        );
        let _ = write!(s, "| workload |");
        for a in &res.allocs {
            let _ = write!(s, " {a} |");
        }
        let _ = write!(s, "\n|---|");
        for _ in &res.allocs {
            let _ = write!(s, "---:|");
        }
        s.push('\n');
        for r in &res.rows {
            let Some(rss) = &r.rss_kib else { continue };
            let _ = write!(s, "| {} |", r.workload);
            for v in rss {
                let _ = write!(s, " {} |", v.map_or("-".into(), mib));
            }
            s.push('\n');
        }
    }
    s
}

const COLORS: &[&str] = &[
    "#d62728", "#ff9896", "#7f7f7f", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2",
    "#bcbd22",
];

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `results/bench.svg`: per workload, one horizontal bar per allocator, its
/// throughput relative to glibc on a log scale (glibc = 1).
pub fn svg(res: &Results) -> String {
    let (lo, hi) = (0.01f64, 10.0f64);
    let (left, plot_w, top) = (120.0, 620.0, 78.0);
    let bar = 8.0;
    let group = bar * res.allocs.len() as f64 + 12.0;
    let height = top + group * res.rows.len() as f64 + 40.0;
    let width = left + plot_w + 56.0;
    let x = |v: f64| left + plot_w * ((v.clamp(lo, hi).ln() - lo.ln()) / (hi.ln() - lo.ln()));
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="11">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="{left}" y="16" font-size="13" font-weight="bold">Throughput relative to glibc (log scale; right of 1 is faster)</text>"##
    );
    let _ = writeln!(
        s,
        r##"<text x="{left}" y="31" fill="#555">{}</text>"##,
        esc(&format!("{}, {}", res.date, res.machine))
    );
    // Legend.
    for (i, a) in res.allocs.iter().enumerate() {
        let lx = left + (i % 5) as f64 * 124.0;
        let ly = 42.0 + (i / 5) as f64 * 14.0;
        let _ = writeln!(
            s,
            r##"<rect x="{lx}" y="{ly}" width="10" height="10" fill="{}"/>"##,
            COLORS[i % COLORS.len()]
        );
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}">{}</text>"##,
            lx + 14.0,
            ly + 9.0,
            esc(a)
        );
    }
    // Grid.
    let bottom = top + group * res.rows.len() as f64;
    for t in [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0] {
        let tx = x(t);
        let (stroke, w) = if t == 1.0 {
            ("#000", 1.2)
        } else {
            ("#ddd", 1.0)
        };
        let _ = writeln!(
            s,
            r##"<line x1="{tx:.1}" y1="{top}" x2="{tx:.1}" y2="{bottom}" stroke="{stroke}" stroke-width="{w}"/>"##
        );
        let _ = writeln!(
            s,
            r##"<text x="{tx:.1}" y="{:.0}" text-anchor="middle">{t}x</text>"##,
            bottom + 14.0
        );
    }
    // Bars.
    for (g, r) in res.rows.iter().enumerate() {
        let gy = top + g as f64 * group;
        let _ = writeln!(
            s,
            r##"<text x="{:.0}" y="{:.1}" text-anchor="end" font-weight="bold">{}</text>"##,
            left - 6.0,
            gy + group / 2.0 - 2.0,
            esc(r.workload)
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.0}" y="{:.1}" text-anchor="end" fill="#555">{} thr</text>"##,
            left - 6.0,
            gy + group / 2.0 + 11.0,
            r.threads
        );
        for (i, a) in res.allocs.iter().enumerate() {
            let Some(v) = res.ratio(r, i, GLIBC) else {
                continue;
            };
            let y = gy + i as f64 * bar;
            let (x0, x1) = (x(1.0).min(x(v)), x(1.0).max(x(v)));
            let _ = writeln!(
                s,
                r##"<rect x="{x0:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}: {:.2} Mops/s, {v:.2}x glibc</title></rect>"##,
                (x1 - x0).max(1.0),
                bar - 1.0,
                COLORS[i % COLORS.len()],
                esc(r.workload),
                esc(a),
                r.mops[i]
            );
            if i == 0 {
                let (tx, anchor) = if v >= 1.0 {
                    (x1 + 3.0, "start")
                } else {
                    (x0 - 3.0, "end")
                };
                let _ = writeln!(
                    s,
                    r##"<text x="{tx:.1}" y="{:.1}" font-size="9" text-anchor="{anchor}">{v:.2}x</text>"##,
                    y + bar - 1.5
                );
            }
        }
    }
    let _ = writeln!(
        s,
        r##"<text x="{left}" y="{:.0}" fill="#555">bars clamp at 0.01x and 10x; hover a bar for Mops/s</text>"##,
        bottom + 30.0
    );
    s.push_str("</svg>\n");
    s
}

/// "CPU model, N cores (hypervisor), Linux x.y, glibc a.b".
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let vm = if cpuinfo.contains(" hypervisor") {
        ", virtual machine"
    } else {
        ""
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // SAFETY: returns a static NUL-terminated string.
    let glibc = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) }
        .to_string_lossy()
        .into_owned();
    format!(
        "{model}, {cores} cores{vm}, Linux {}, glibc {glibc}",
        kernel.trim()
    )
}

/// Today's date (UTC), `YYYY-MM-DD`.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil(secs / 86_400);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil(days: u64) -> (i64, u32, u32) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Results {
        let allocs = vec!["tieralloc", "glibc", "mimalloc"];
        let rows = vec![
            Row::new(
                "pairs-64",
                1,
                100,
                "alloc+free",
                vec![
                    vec![3.0, 1.0, 2.0],
                    vec![1.0, 1.0, 1.0],
                    vec![4.0, 4.0, 4.0],
                ],
            ),
            Row {
                rss_kib: Some(vec![Some(1024), None, Some(2048)]),
                rss_base_kib: Some(4096),
                ..Row::new(
                    "churn-512",
                    1,
                    100,
                    "x",
                    vec![vec![0.5], vec![1.0], vec![100.0]],
                )
            },
        ];
        Results {
            allocs,
            rows,
            rounds: 3,
            command: "cargo run".into(),
            date: today(),
            machine: machine(),
            tieralloc_mode: "rseq",
            budget_s: 1.0,
            seconds: 1.0,
        }
    }

    #[test]
    fn median_and_ratio() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
        let r = sample();
        assert_eq!(r.rows[0].mops, vec![2.0, 1.0, 4.0]);
        assert_eq!(r.ratio(&r.rows[0], 0, GLIBC), Some(2.0));
        assert_eq!(r.ratio(&r.rows[0], 0, "nope"), None);
        assert!((geomean(&r, 0, GLIBC).unwrap() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn markdown_and_svg_mention_everything() {
        let r = sample();
        let md = markdown(&r);
        assert!(
            md.contains(
                "| pairs-64 | 1 | alloc+free | **2.0 (2.00x)** | 1.0 | 4.0 (4.00x) | 0.50x |"
            ),
            "{md}"
        );
        assert!(md.contains("| churn-512 | 1.0 | - | 2.0 |"), "{md}");
        let svg = svg(&r);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for a in &r.allocs {
            assert!(svg.contains(a));
        }
        assert_eq!(svg.matches("<rect").count(), 1 + 3 + 6);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(civil(19_782), (2024, 2, 29));
        assert_eq!(today().len(), 10);
    }
}
