//! The storage fast path's targets (issue 16), judged on a storage section's rows: each with
//! what was measured, whether it was met, and which rows miss it.

use super::blk::{BlkRow, BlkSection, QEMU_VMMS};
use super::profile::Profile;
use serde::Serialize;
use std::collections::BTreeSet;

/// A harness row at its best against QEMU at its best, on every virtio-blk row.
pub const MIN_RATIO_TO_QEMU_BEST: f64 = 1.2;
/// 128 KiB sequential read against the host's own `pread`.
pub const MIN_SEQREAD_OF_HOST: f64 = 0.8;
/// Polled QD1 4 KiB random read p50 with adaptive polling, µs.
pub const MAX_POLLED_P50_US: f64 = 5.0;

/// The row of the latency targets.
const LATENCY_PATH: &str = "virtio_polled";
const LATENCY_WORKLOAD: &str = "randread_4k_qd1";
const SEQREAD_WORKLOAD: &str = "seqread_128k_qd1";
/// Our harness without polling; its presence says the harness polls by default.
const NOPOLL_VMM: &str = "harness-thread-nopoll";
const POLL_VMM: &str = "harness-thread";

/// One target: `measured op limit` (op `>=` or `<=`), and the rows that miss it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StorageTarget {
    pub what: String,
    pub op: &'static str,
    pub limit: f64,
    pub measured: Option<f64>,
    /// None: not measured (a row it needs is missing).
    pub met: Option<bool>,
    /// The rows that miss it, each with its figure.
    pub misses: Vec<String>,
    /// Why it could not be measured, or where its figure came from.
    pub note: Option<String>,
}

impl StorageTarget {
    fn new(what: impl Into<String>, op: &'static str, limit: f64, measured: Option<f64>) -> Self {
        let met = measured.map(|m| if op == ">=" { m >= limit } else { m <= limit });
        Self {
            what: what.into(),
            op,
            limit,
            measured,
            met,
            misses: Vec::new(),
            note: None,
        }
    }

    fn noted(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    /// `what op limit: measured met|missed (misses)`, one line.
    pub fn to_line(&self) -> String {
        let verdict = match self.met {
            Some(true) => "met",
            Some(false) => "missed",
            None => "not measured",
        };
        let m = self.measured.map_or("-".into(), |m| format!("{m:.2}"));
        let mut s = format!(
            "{} {} {}: {m} {verdict}",
            self.what,
            self.op,
            trim_number(self.limit)
        );
        if let Some(n) = &self.note {
            s += &format!(" ({n})");
        }
        if !self.misses.is_empty() {
            s += &format!("; missed by {}", self.misses.join(", "));
        }
        s
    }
}

/// `1.2`, `5`, `24.4`: a limit as a reader writes it.
fn trim_number(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn is_harness(r: &BlkRow) -> bool {
    r.vmm.starts_with("harness")
}

fn is_qemu(r: &BlkRow) -> bool {
    QEMU_VMMS.contains(&r.vmm.as_str())
}

/// Every target, from the section's rows and the CI profile's expected exits.
pub fn evaluate(s: &BlkSection, profile: Option<&Profile>) -> Vec<StorageTarget> {
    vec![
        ratio_to_qemu_best(s),
        seqread_of_host(s),
        polled_p50(s),
        unpolled_p50(s),
        exits_within_profile(s, profile),
    ]
}

/// On every virtio-blk (path, workload), the best harness row over the best QEMU row.
fn ratio_to_qemu_best(s: &BlkSection) -> StorageTarget {
    let pairs: BTreeSet<(&str, &str)> = s
        .rows
        .iter()
        .filter(|r| is_harness(r) && r.path.starts_with("virtio"))
        .map(|r| (r.path.as_str(), r.workload.as_str()))
        .collect();
    let mut worst: Option<f64> = None;
    let mut misses = Vec::new();
    for (path, workload) in pairs {
        let best = s
            .rows
            .iter()
            .filter(|r| is_harness(r) && r.path == path && r.workload == workload)
            .filter_map(|r| Some((s.ratio_to_qemu_best(r)?, r)))
            .max_by(|(a, _), (b, _)| a.total_cmp(b));
        let Some((ratio, r)) = best else { continue };
        worst = Some(worst.map_or(ratio, |w| w.min(ratio)));
        if ratio < MIN_RATIO_TO_QEMU_BEST {
            misses.push(format!("{path} {workload} {ratio:.2} ({})", r.vmm));
        }
    }
    let mut t = StorageTarget::new(
        "virtio-blk rows, best harness / best QEMU MB/s, worst row",
        ">=",
        MIN_RATIO_TO_QEMU_BEST,
        worst,
    );
    t.misses = misses;
    t
}

/// 128 KiB sequential read: the best harness virtio row over the host's own `pread`.
fn seqread_of_host(s: &BlkSection) -> StorageTarget {
    let what = "128 KiB seqread, best harness virtio row / host pread";
    let host = s
        .rows
        .iter()
        .find(|r| r.vmm == "native" && r.workload == SEQREAD_WORKLOAD)
        .and_then(BlkRow::mb_per_s);
    let best = s
        .rows
        .iter()
        .filter(|r| is_harness(r) && r.path.starts_with("virtio"))
        .filter(|r| r.workload == SEQREAD_WORKLOAD)
        .filter_map(|r| Some((r.mb_per_s()?, r)))
        .max_by(|(a, _), (b, _)| a.total_cmp(b));
    match (best, host) {
        (Some((mb, r)), Some(h)) if h > 0.0 => {
            StorageTarget::new(what, ">=", MIN_SEQREAD_OF_HOST, Some(mb / h))
                .noted(format!("{} {}: {mb:.0} of {h:.0} MB/s", r.vmm, r.path))
        }
        _ => StorageTarget::new(what, ">=", MIN_SEQREAD_OF_HOST, None),
    }
}

fn latency_row<'a>(s: &'a BlkSection, vmm: &str) -> Option<&'a BlkRow> {
    s.rows
        .iter()
        .find(|r| r.vmm == vmm && r.path == LATENCY_PATH && r.workload == LATENCY_WORKLOAD)
}

/// With adaptive polling (our default once the harness has it: then a `-nopoll` row exists).
fn polled_p50(s: &BlkSection) -> StorageTarget {
    let what = "polled QD1 4 KiB randread p50 with polling, us";
    if latency_row(s, NOPOLL_VMM).is_none() {
        return StorageTarget::new(what, "<=", MAX_POLLED_P50_US, None)
            .noted("no harness-thread-nopoll row: this harness does not poll");
    }
    let p50 = latency_row(s, POLL_VMM)
        .and_then(|r| r.p50_ns)
        .map(|v| v / 1e3);
    StorageTarget::new(what, "<=", MAX_POLLED_P50_US, p50).noted(POLL_VMM)
}

/// Without polling, at or below QEMU's best p50 on the same row: ours over QEMU's.
fn unpolled_p50(s: &BlkSection) -> StorageTarget {
    let what = "polled QD1 4 KiB randread p50 without polling / best QEMU p50";
    // Before the harness polled, its default row was the unpolled one.
    let ours = latency_row(s, NOPOLL_VMM)
        .or_else(|| latency_row(s, POLL_VMM))
        .and_then(|r| Some((r.p50_ns? / 1e3, r)));
    let qemu = s
        .rows
        .iter()
        .filter(|r| is_qemu(r) && r.path == LATENCY_PATH && r.workload == LATENCY_WORKLOAD)
        .filter_map(|r| Some((r.p50_ns? / 1e3, r)))
        .min_by(|(a, _), (b, _)| a.total_cmp(b));
    match (ours, qemu) {
        (Some((p50, r)), Some((q, qr))) if q > 0.0 => {
            StorageTarget::new(what, "<=", 1.0, Some(p50 / q))
                .noted(format!("{} {p50:.1} us, {} {q:.1} us", r.vmm, qr.vmm))
        }
        _ => StorageTarget::new(what, "<=", 1.0, None),
    }
}

/// The CI profile's vmm for a row label: the tuned thread rows count as `harness-thread`.
fn profile_vmm(label: &str) -> &str {
    if label.starts_with("harness-thread") {
        "harness-thread"
    } else {
        label
    }
}

/// Exits per I/O not above the CI profile's on any row it has. A timed row may start or end
/// mid-batch, so it may sit 1% (plus 0.005) above a count taken over whole batches.
fn exits_within_profile(s: &BlkSection, profile: Option<&Profile>) -> StorageTarget {
    let what = "rows with userspace exits/io above the CI profile's";
    let Some(profile) = profile else {
        return StorageTarget::new(what, "<=", 0.0, None).noted("no profile");
    };
    let mut compared = 0;
    let mut misses = Vec::new();
    for r in s.rows.iter().filter(|r| is_harness(r)) {
        let Some(measured) = r.user_exits_per_io else {
            continue;
        };
        let Some(expected) = profile
            .rows
            .iter()
            .find(|p| p.vmm == profile_vmm(&r.vmm) && p.path == r.path && p.workload == r.workload)
        else {
            continue;
        };
        compared += 1;
        let limit = expected.per_io();
        if measured > limit * 1.01 + 0.005 {
            misses.push(format!(
                "{} {} {} {measured:.2} > {limit:.2}",
                r.vmm, r.path, r.workload
            ));
        }
    }
    let measured = (compared > 0).then_some(misses.len() as f64);
    let mut t =
        StorageTarget::new(what, "<=", 0.0, measured).noted(format!("{compared} rows compared"));
    t.misses = misses;
    t
}

/// The targets as lines under the storage table.
pub fn to_text(targets: &[StorageTarget]) -> String {
    targets
        .iter()
        .map(|t| format!("  target: {}\n", t.to_line()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::profile::ProfileRow;

    fn row(vmm: &str, path: &str, workload: &str, mb: f64, p50_us: f64) -> BlkRow {
        BlkRow {
            vmm: vmm.into(),
            path: path.into(),
            workload: workload.into(),
            n: 1000,
            bytes: (mb * 1e6) as u64,
            total_ns: 1e9,
            p50_ns: Some(p50_us * 1e3),
            p99_ns: None,
            user_exits_per_io: vmm.starts_with("harness").then_some(0.0),
            kvm_exits_per_io: None,
            io_thread_cpu_ns_per_io: None,
            vcpu_cpu_ns_per_io: None,
            batch_p50_ns: vec![],
        }
    }

    /// A section where our harness meets every target.
    fn good() -> BlkSection {
        let (p, m, r4, s128) = (
            "virtio_polled",
            "virtio_msix",
            "randread_4k_qd1",
            SEQREAD_WORKLOAD,
        );
        BlkSection {
            rows: vec![
                row("native", "host_pread", s128, 8000.0, 16.0),
                row("harness-thread", p, r4, 300.0, 4.0),
                row("harness-thread-nopoll", p, r4, 200.0, 20.0),
                row("harness-inline", p, r4, 100.0, 40.0),
                row("qemu", p, r4, 150.0, 25.0),
                row("qemu-iothread", p, r4, 200.0, 22.0),
                row("qemu-iothread-io_uring", p, r4, 100.0, 30.0),
                row("harness-thread", p, s128, 7000.0, 18.0),
                row("harness-inline", p, s128, 3000.0, 40.0),
                row("qemu-iothread", p, s128, 4000.0, 30.0),
                row("harness-thread", m, r4, 130.0, 70.0),
                row("qemu", m, r4, 100.0, 80.0),
                // IDE rows are not virtio-blk rows.
                row("harness-thread", "ide_dma", r4, 1.0, 300.0),
                row("qemu", "ide_dma", r4, 100.0, 200.0),
            ],
            notes: vec![],
        }
    }

    fn profile() -> Profile {
        let p = |vmm: &str, path: &str, workload: &str, n, user_exits| ProfileRow {
            vmm: vmm.into(),
            path: path.into(),
            workload: workload.into(),
            n,
            user_exits,
        };
        Profile {
            blk_ops: 2,
            rows: vec![
                p("harness-thread", "virtio_msix", "randread_4k_qd1", 2, 0),
                p("harness-inline", "virtio_msix", "randread_4k_qd32", 32, 1),
                p("harness-thread", "ide_dma", "randread_4k_qd1", 2, 25),
            ],
        }
    }

    #[test]
    fn every_target_met() {
        let mut s = good();
        s.rows[12].user_exits_per_io = Some(12.5);
        let t = evaluate(&s, Some(&profile()));
        assert_eq!(t.len(), 5);
        for target in &t {
            assert_eq!(target.met, Some(true), "{target:?}");
            assert!(target.misses.is_empty(), "{target:?}");
        }
        // Worst virtio row: virtio_msix at 130 / 100; the best harness row of each.
        assert!((t[0].measured.unwrap() - 1.3).abs() < 1e-9, "{:?}", t[0]);
        assert!((t[1].measured.unwrap() - 7000.0 / 8000.0).abs() < 1e-9);
        assert_eq!(t[2].measured, Some(4.0));
        // Without polling, against the lowest QEMU p50 (qemu-iothread's 22 us).
        assert!((t[3].measured.unwrap() - 20.0 / 22.0).abs() < 1e-9);
        assert_eq!(
            t[3].note.as_deref(),
            Some("harness-thread-nopoll 20.0 us, qemu-iothread 22.0 us")
        );
        // harness-thread virtio_msix and ide_dma (0 and 12.5 of 12.5); the tuned row counts as
        // harness-thread but the profile has no virtio_polled rows.
        assert_eq!(t[4].measured, Some(0.0));
        assert_eq!(t[4].note.as_deref(), Some("2 rows compared"));
        let text = to_text(&t);
        assert!(
            text.contains(
                "  target: virtio-blk rows, best harness / best QEMU MB/s, worst row >= 1.2: 1.30 met\n"
            ),
            "{text}"
        );
        assert!(text.contains("  target: polled QD1 4 KiB randread p50 with polling, us <= 5: 4.00 met (harness-thread)\n"), "{text}");
        assert!(
            text.contains("p50 without polling / best QEMU p50 <= 1: 0.91 met"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 5);
    }

    #[test]
    fn missed_targets_name_their_rows() {
        let mut s = good();
        // virtio_polled randread: best harness 300 MB/s against qemu-iothread's 400.
        s.rows[5] = row(
            "qemu-iothread",
            "virtio_polled",
            "randread_4k_qd1",
            400.0,
            15.0,
        );
        s.rows[1].p50_ns = Some(9e3);
        s.rows[7] = row(
            "harness-thread",
            "virtio_polled",
            SEQREAD_WORKLOAD,
            3600.0,
            30.0,
        );
        s.rows[10].user_exits_per_io = Some(1.0);
        let t = evaluate(&s, Some(&profile()));
        assert!(t.iter().all(|t| t.met == Some(false)), "{t:?}");
        assert_eq!(t[0].measured, Some(0.75));
        assert_eq!(
            t[0].misses,
            [
                "virtio_polled randread_4k_qd1 0.75 (harness-thread)",
                "virtio_polled seqread_128k_qd1 0.90 (harness-thread)"
            ]
        );
        assert_eq!(t[1].measured, Some(0.45));
        assert_eq!(
            t[1].note.as_deref(),
            Some("harness-thread virtio_polled: 3600 of 8000 MB/s")
        );
        assert_eq!(t[2].measured, Some(9.0));
        assert!((t[3].measured.unwrap() - 20.0 / 15.0).abs() < 1e-9);
        assert_eq!(t[4].measured, Some(1.0));
        assert_eq!(
            t[4].misses,
            ["harness-thread virtio_msix randread_4k_qd1 1.00 > 0.00"]
        );
        let text = to_text(&t);
        assert!(
            text.contains(
                ">= 1.2: 0.75 missed; missed by virtio_polled randread_4k_qd1 0.75 (harness-thread)"
            ),
            "{text}"
        );
        assert!(text.contains("<= 5: 9.00 missed"), "{text}");
    }

    #[test]
    fn a_missing_row_is_not_measured() {
        let mut s = good();
        // No polling in this harness yet: harness-thread is the unpolled row.
        s.rows.retain(|r| r.vmm != "harness-thread-nopoll");
        let t = evaluate(&s, None);
        assert_eq!(t[2].met, None);
        assert_eq!(
            t[2].note.as_deref(),
            Some("no harness-thread-nopoll row: this harness does not poll")
        );
        assert_eq!(t[3].met, Some(true));
        assert_eq!(
            t[3].note.as_deref(),
            Some("harness-thread 4.0 us, qemu-iothread 22.0 us")
        );
        assert_eq!(t[4].met, None, "no profile");
        // No QEMU rows and no host row at all.
        s.rows.retain(|r| r.vmm.starts_with("harness"));
        let t = evaluate(&s, Some(&profile()));
        for target in &t[..4] {
            assert_eq!(target.met, None, "{target:?}");
        }
        assert!(to_text(&t).contains("not measured"));
        // Within 1% (and 0.005) of the profile is not above it.
        let mut s = good();
        s.rows.push(BlkRow {
            user_exits_per_io: Some(1.0 / 32.0 + 0.004),
            ..row(
                "harness-inline",
                "virtio_msix",
                "randread_4k_qd32",
                1.0,
                1.0,
            )
        });
        assert_eq!(evaluate(&s, Some(&profile()))[4].measured, Some(0.0));
    }
}
