//! `bench --ci-profile`: a short, deterministic storage run that checks the exact userspace
//! exit counts of the fixed paths (IDE PIO, IDE DMA, virtio-blk MSI-X with queues on an I/O
//! thread and inline) against `hypervisor-harness/bench-profile.json`. It asserts counts,
//! never timings: the guest's `blk_ops=N` sizes every row by count, so the same build gives the
//! same counts on any machine, and a change that adds an exit to a hot path fails CI.
//!
//! KVM's own exit count (timer ticks included) varies from run to run, so only the harness's
//! userspace exits at the disk's devices are compared.

use super::blk::{make_image, rows_of, BlkRow};
use super::{common_args, spawn_self};
use crate::error::{HarnessError, EXIT_FAILED, EXIT_PASSED};
use crate::shared::{kernel_or_default, BenchArgs};
use serde::{Deserialize, Serialize};
use std::path::Path;
use vmm_sys_util::tempdir::TempDir;

/// The checked-in expectation, built in so that the check runs from any directory.
pub const EXPECTED: &str = include_str!("../../bench-profile.json");
/// Where [`EXPECTED`] lives in the tree, for the message that asks to update it.
pub const EXPECTED_PATH: &str = "hypervisor-harness/bench-profile.json";

/// Operations per row (the guest's `blk_ops=`); a queue-depth-32 row still submits 32.
pub const BLK_OPS: u64 = 2;

/// One row's count: `user_exits` over `n` I/Os.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRow {
    pub vmm: String,
    pub path: String,
    pub workload: String,
    pub n: u64,
    pub user_exits: u64,
}

impl ProfileRow {
    fn key(&self) -> (&str, &str, &str) {
        (&self.vmm, &self.path, &self.workload)
    }

    fn name(&self) -> String {
        format!("{} {} {}", self.vmm, self.path, self.workload)
    }

    pub fn per_io(&self) -> f64 {
        self.user_exits as f64 / self.n.max(1) as f64
    }

    /// A measured row with its exits (only our harness counts them per device).
    pub fn of(r: &BlkRow) -> Option<Self> {
        let per_io = r.user_exits_per_io?;
        Some(Self {
            vmm: r.vmm.clone(),
            path: r.path.clone(),
            workload: r.workload.clone(),
            n: r.n,
            // `per_io` is an integer count over `n`, so this gives the count back exactly.
            user_exits: (per_io * r.n as f64).round() as u64,
        })
    }
}

/// The profile document (`bench-profile.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// The guest's `blk_ops=` the counts were taken with.
    pub blk_ops: u64,
    pub rows: Vec<ProfileRow>,
}

impl Profile {
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("bad profile document: {e}"))
    }

    /// The document as bench-profile.json holds it: one row per line, so that a change in
    /// the counts is a readable diff.
    pub fn to_json_text(&self) -> String {
        let rows: Vec<String> = self
            .rows
            .iter()
            .map(|r| format!("    {}", serde_json::to_string(r).unwrap_or_default()))
            .collect();
        format!(
            "{{\n  \"blk_ops\": {},\n  \"rows\": [\n{}\n  ]\n}}\n",
            self.blk_ops,
            rows.join(",\n")
        )
    }

    pub fn to_text(&self) -> String {
        let mut s = format!(
            "  {:<16} {:<14} {:<20} {:>6} {:>10} {:>10}\n",
            "vmm", "path", "workload", "n", "exits", "exits/io"
        );
        for r in &self.rows {
            s += &format!(
                "  {:<16} {:<14} {:<20} {:>6} {:>10} {:>10.3}\n",
                r.vmm,
                r.path,
                r.workload,
                r.n,
                r.user_exits,
                r.per_io()
            );
        }
        s
    }
}

/// Every difference between the expectation and a measurement, one line each (empty: equal).
pub fn diff(expected: &Profile, measured: &Profile) -> Vec<String> {
    let mut out = Vec::new();
    if expected.blk_ops != measured.blk_ops {
        out.push(format!(
            "blk_ops: expected {}, measured {}",
            expected.blk_ops, measured.blk_ops
        ));
    }
    for e in &expected.rows {
        match measured.rows.iter().find(|m| m.key() == e.key()) {
            None => out.push(format!("{}: missing from the run", e.name())),
            Some(m) if m.n != e.n => {
                out.push(format!("{}: {} I/Os, expected {}", e.name(), m.n, e.n))
            }
            Some(m) if m.user_exits != e.user_exits => out.push(format!(
                "{}: {} exits per I/O, expected {} ({:+} exits over {} I/Os)",
                e.name(),
                fmt_per_io(m.per_io()),
                fmt_per_io(e.per_io()),
                m.user_exits as i64 - e.user_exits as i64,
                m.n
            )),
            Some(_) => {}
        }
    }
    for m in &measured.rows {
        if !expected.rows.iter().any(|e| e.key() == m.key()) {
            out.push(format!("{}: not in the expectation", m.name()));
        }
    }
    out
}

fn fmt_per_io(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The runs: (label, `--io-mode`, guest paths). IDE does not depend on the I/O mode.
const RUNS: [(&str, &str, &str); 2] = [
    ("harness-thread", "thread", "virtio_msix,ide_pio,ide_dma"),
    ("harness-inline", "inline", "virtio_msix"),
];

/// Run the profile under our harness and compare; 0 when every count matches, 1 when not.
pub fn cmd_ci_profile(a: &BenchArgs) -> Result<i32, HarnessError> {
    let expected = Profile::parse(EXPECTED)
        .map_err(|e| HarnessError::Other(format!("{EXPECTED_PATH}: {e}")))?;
    let kernel = kernel_or_default(&a.kernel)?;
    if !kernel.is_file() {
        return Err(HarnessError::Image(format!(
            "cannot open kernel {}",
            kernel.display()
        )));
    }
    let dir = TempDir::new_with_prefix(std::env::temp_dir().join("hh-profile-"))
        .map_err(|e| HarnessError::Other(format!("cannot create a temporary directory: {e}")))?;
    eprintln!("bench: ci profile ({} runs in parallel)...", RUNS.len());
    // The two runs are independent VMs; running them side by side halves the wall time.
    let results: Vec<Result<Vec<BlkRow>, HarnessError>> = std::thread::scope(|s| {
        let handles: Vec<_> = RUNS
            .iter()
            .map(|&(label, mode, paths)| {
                let (kernel, dir) = (&kernel, dir.as_path());
                s.spawn(move || profile_run(a, kernel, dir, label, mode, paths))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(HarnessError::Other(
                        "a profile run's thread panicked".into(),
                    ))
                })
            })
            .collect()
    });
    let mut rows = Vec::new();
    for r in results {
        rows.extend(r?.iter().filter_map(ProfileRow::of));
    }
    let measured = Profile {
        blk_ops: BLK_OPS,
        rows,
    };
    print!(
        "ci profile: userspace exits at the disk's devices\n{}",
        measured.to_text()
    );
    let diffs = diff(&expected, &measured);
    if diffs.is_empty() {
        println!(
            "ci profile: all {} rows match {EXPECTED_PATH}",
            expected.rows.len()
        );
        return Ok(EXIT_PASSED);
    }
    println!("ci profile: the exit counts differ from {EXPECTED_PATH}:");
    for d in &diffs {
        println!("  {d}");
    }
    print!(
        "if the change is intended, this run's counts for {EXPECTED_PATH} are:\n{}",
        measured.to_json_text()
    );
    Ok(EXIT_FAILED)
}

fn profile_run(
    a: &BenchArgs,
    kernel: &Path,
    dir: &Path,
    label: &str,
    io_mode: &str,
    paths: &str,
) -> Result<Vec<BlkRow>, HarnessError> {
    let mut cmdline = format!("bench=blk blk_ops={BLK_OPS} blk_paths={paths}");
    if a.ci_profile_inject_exit {
        cmdline += " blk_extra_exit=1";
    }
    let (virtio, ide) = (
        dir.join(format!("{label}-virtio.img")),
        dir.join(format!("{label}-ide.img")),
    );
    make_image(&virtio)?;
    make_image(&ide)?;
    let mut args = common_args("run", kernel, a, &cmdline);
    args.extend([
        "--disk".to_string(),
        format!("virtio:{}", virtio.display()),
        "--disk".to_string(),
        format!("ide:{}", ide.display()),
        "--io-mode".to_string(),
        io_mode.to_string(),
    ]);
    let r = spawn_self(&args, &format!("profile-{label}"))?;
    let fail = |why: String| HarnessError::Other(format!("ci profile run {label}: {why}"));
    if r.code != 0 {
        return Err(fail(format!("exit code {}: {}", r.code, r.last_err)));
    }
    let doc = r.json.map_err(fail)?;
    Ok(rows_of(label, &r.stdout, &doc.phases))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(vmm: &str, path: &str, workload: &str, n: u64, user_exits: u64) -> ProfileRow {
        ProfileRow {
            vmm: vmm.into(),
            path: path.into(),
            workload: workload.into(),
            n,
            user_exits,
        }
    }

    #[test]
    fn the_checked_in_expectation_covers_the_fixed_paths() {
        let p = Profile::parse(EXPECTED).unwrap();
        assert_eq!(p.blk_ops, BLK_OPS);
        for (vmm, path) in [
            ("harness-thread", "ide_pio"),
            ("harness-thread", "ide_dma"),
            ("harness-thread", "virtio_msix"),
            ("harness-inline", "virtio_msix"),
        ] {
            assert!(
                p.rows.iter().any(|r| r.vmm == vmm && r.path == path),
                "{vmm} {path} missing"
            );
        }
    }

    #[test]
    fn one_extra_exit_per_io_is_reported() {
        let expected = Profile {
            blk_ops: 2,
            rows: vec![
                row("harness-thread", "ide_dma", "randread_4k_qd1", 2, 25),
                row("harness-inline", "virtio_msix", "randread_4k_qd32", 32, 1),
            ],
        };
        assert!(diff(&expected, &expected).is_empty());
        let mut measured = expected.clone();
        measured.rows[0].user_exits += 2;
        assert_eq!(
            diff(&expected, &measured),
            [
                "harness-thread ide_dma randread_4k_qd1: 13.5 exits per I/O, expected 12.5 \
              (+2 exits over 2 I/Os)"
            ]
        );
        // A single extra exit in a whole row shows too.
        let mut measured = expected.clone();
        measured.rows[1].user_exits = 2;
        assert_eq!(diff(&expected, &measured).len(), 1);
    }

    #[test]
    fn missing_and_unexpected_rows_and_counts() {
        let expected = Profile {
            blk_ops: 2,
            rows: vec![row(
                "harness-thread",
                "ide_pio",
                "seqread_128k_qd1",
                2,
                1041,
            )],
        };
        let measured = Profile {
            blk_ops: 4,
            rows: vec![
                row("harness-thread", "ide_pio", "seqread_128k_qd1", 4, 2082),
                row("harness-thread", "ide_pio", "randread_4k_qd1", 4, 96),
            ],
        };
        assert_eq!(
            diff(&expected, &measured),
            [
                "blk_ops: expected 2, measured 4",
                "harness-thread ide_pio seqread_128k_qd1: 4 I/Os, expected 2",
                "harness-thread ide_pio randread_4k_qd1: not in the expectation",
            ]
        );
        let empty = Profile {
            blk_ops: 2,
            rows: vec![],
        };
        assert_eq!(
            diff(&expected, &empty),
            ["harness-thread ide_pio seqread_128k_qd1: missing from the run"]
        );
    }

    #[test]
    fn rows_from_blk_rows_give_the_count_back() {
        let b = BlkRow {
            vmm: "harness-thread".into(),
            path: "ide_dma".into(),
            workload: "seqread_128k_qd1".into(),
            n: 3,
            bytes: 0,
            total_ns: 1.0,
            p50_ns: None,
            p99_ns: None,
            user_exits_per_io: Some(37.0 / 3.0),
            kvm_exits_per_io: None,
            io_thread_cpu_ns_per_io: None,
            vcpu_cpu_ns_per_io: None,
            batch_p50_ns: vec![],
        };
        assert_eq!(ProfileRow::of(&b).unwrap().user_exits, 37);
        let qemu = BlkRow {
            user_exits_per_io: None,
            ..b.clone()
        };
        assert_eq!(ProfileRow::of(&qemu), None);
        assert!(Profile::parse("{").is_err());
        let p = Profile {
            blk_ops: 2,
            rows: vec![ProfileRow::of(&b).unwrap()],
        };
        assert_eq!(Profile::parse(&p.to_json_text()).unwrap(), p);
    }
}
