//! `bench compare A.json B.json`: two `bench --json` documents, row by row.
//!
//! Each row's timing is a set of samples: a storage, floor or network round-trip row's
//! per-batch p50s (the guest splits the row into up to 16 batches in time order and prints each
//! batch's median), a network rate row's pps over each sixteenth of its time, a console row's
//! ns per KiB over each of 16 batches of its writes, a boot row's runs.
//! Batches share one run's conditions (the machine's load, the host's page cache), so with one
//! document a side the test tells whether that run differed, not whether the build did. Given
//! several documents a side (`A1.json,A2.json,...`), a row's samples are instead the median of
//! each run: a rank test over the runs, which needs 4 or more a side to reach p < 0.05.
//! For those the change in median comes with a 95% bootstrap interval and a two-sided
//! Mann-Whitney U test, and a row is flagged only when the change is significant (p < 0.05)
//! AND worse than the threshold. A row with a single sample on either side (the TCP rows, a
//! document from before the samples) shows its change and is never flagged:
//! one number per run cannot tell a slowdown from noise.
//!
//! Exits per operation do not depend on noise and are compared exactly: any change of at least
//! one exit over the row is flagged. Rows sized by time differ in their operation count, so a
//! constant one-off exit inside the row moves the per-operation figure by less than one exit
//! over the row, which is not a change.

use crate::error::{HarnessError, EXIT_FAILED, EXIT_PASSED};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The confidence of the interval, and the test's significance level.
const ALPHA: f64 = 0.05;
const BOOTSTRAP_RESAMPLES: usize = 2000;

/// One row of a document: its timing samples and, where counted, its exits per operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Measure {
    /// `storage harness-thread ide_pio seqread_128k_qd1`, `floor port_out_userspace`, ...
    pub key: String,
    pub unit: &'static str,
    pub higher_is_better: bool,
    pub samples: Vec<f64>,
    /// (exits per operation, operations).
    pub exits: Option<(f64, u64)>,
}

fn num(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}

fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("?")
}

fn array<'a>(v: &'a Value, k: &str) -> &'a [Value] {
    v.get(k)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn floats(v: &Value, k: &str) -> Vec<f64> {
    array(v, k).iter().filter_map(Value::as_f64).collect()
}

/// Every comparable row of a `bench --json` document. Not an object with a `boot` or
/// `floor` section: an error that says so.
pub fn measures(doc: &Value) -> Result<Vec<Measure>, String> {
    if !doc.is_object() || (doc.get("boot").is_none() && doc.get("floor").is_none()) {
        return Err("not a `bench --json` document (no boot or floor section)".into());
    }
    let mut out = Vec::new();
    for r in array(doc, "floor") {
        let n = r.get("n").and_then(Value::as_u64);
        out.push(Measure {
            key: format!("floor {}", text(r, "name")),
            unit: "ns",
            higher_is_better: false,
            samples: r
                .get("extra")
                .and_then(|e| e.get("batch_p50"))
                .and_then(Value::as_str)
                .and_then(|v| v.split(',').map(|x| x.parse().ok()).collect())
                .unwrap_or_else(|| num(r, "ns").into_iter().collect()),
            exits: num(r, "exits_per_op").zip(n),
        });
    }
    if let Some(boot) = doc.get("boot") {
        for vmm in ["harness", "qemu_kvm", "qemu_tcg"] {
            let Some(b) = boot.get(vmm) else { continue };
            let mut samples = floats(b, "time_samples_s");
            if samples.is_empty() {
                samples.extend(b.get("time_s").and_then(|t| num(t, "median")));
            }
            out.push(Measure {
                key: format!("boot {vmm}"),
                unit: "s",
                higher_is_better: false,
                samples,
                exits: None,
            });
        }
    }
    if let Some(storage) = doc.get("storage") {
        let samples = array(storage, "samples");
        for r in array(storage, "rows") {
            let id = |v: &Value| {
                format!(
                    "{} {} {}",
                    text(v, "vmm"),
                    text(v, "path"),
                    text(v, "workload")
                )
            };
            let key = id(r);
            let mut s: Vec<f64> = samples
                .iter()
                .find(|x| id(x) == key)
                .map(|x| floats(x, "p50_ns"))
                .unwrap_or_default();
            if s.is_empty() {
                s.extend(num(r, "p50_ns"));
            }
            let n = r.get("n").and_then(Value::as_u64);
            out.push(Measure {
                key: format!("storage {key}"),
                unit: "ns",
                higher_is_better: false,
                samples: s,
                exits: num(r, "user_exits_per_io").zip(n),
            });
        }
    }
    if let Some(net) = doc.get("net") {
        for r in array(net, "rows") {
            let key = format!(
                "net {} {} {} q{} {}",
                text(r, "vmm"),
                text(r, "nic"),
                text(r, "backend"),
                r.get("queues").and_then(Value::as_u64).unwrap_or(1),
                text(r, "workload")
            );
            // RTT rows are latencies; the others are rates.
            let (unit, higher_is_better, v) = match num(r, "pps") {
                Some(pps) if text(r, "workload") != "rtt_udp" => ("pps", true, Some(pps)),
                _ => ("ns", false, num(r, "p50_ns")),
            };
            let mut samples = floats(r, "samples");
            if samples.is_empty() {
                samples.extend(v);
            }
            out.push(Measure {
                key,
                unit,
                higher_is_better,
                samples,
                exits: None,
            });
        }
    }
    if let Some(console) = doc.get("console") {
        for r in array(console, "rows") {
            let mut samples = floats(r, "samples_ns_per_kib");
            if samples.is_empty() {
                samples.extend(num(r, "ns_per_kib"));
            }
            // KVM's exit count moves with timer interrupts: not an exact figure, not compared.
            out.push(Measure {
                key: format!("console {} {}", text(r, "vmm"), text(r, "name")),
                unit: "ns/KiB",
                higher_is_better: false,
                samples,
                exits: None,
            });
        }
    }
    out.retain(|m| !m.samples.is_empty() || m.exits.is_some());
    Ok(out)
}

/// What became of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Significantly worse, by more than the threshold.
    Regressed,
    /// Significantly better, by more than the threshold.
    Improved,
    /// Within noise or the threshold.
    Unchanged,
    /// A single sample on a side: shown, never flagged.
    Untested,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
    pub key: String,
    pub unit: &'static str,
    pub median_a: Option<f64>,
    pub median_b: Option<f64>,
    /// B's median over A's, minus one.
    pub change: Option<f64>,
    /// The 95% bootstrap interval of `change`.
    pub interval: Option<(f64, f64)>,
    /// Mann-Whitney U, two-sided.
    pub p: Option<f64>,
    pub verdict: Verdict,
    /// (A, B) exits per operation, when both counted them.
    pub exits: Option<(f64, f64)>,
    pub exits_changed: bool,
}

impl RowChange {
    pub fn flagged(&self) -> bool {
        self.verdict == Verdict::Regressed || self.exits_changed
    }
}

pub struct Comparison {
    pub threshold: f64,
    pub rows: Vec<RowChange>,
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
}

impl Comparison {
    pub fn regressed(&self) -> bool {
        self.rows.iter().any(RowChange::flagged)
    }

    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{:<52} {:>11} {:>11} {:>8} {:>18} {:>7} {:>17}  verdict\n",
            "row", "A median", "B median", "change", "95% CI", "p", "exits/op A -> B"
        );
        let pct = |v: f64| format!("{:+.1}%", v * 100.0);
        let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".to_string(), f);
        for r in &self.rows {
            let exits = r
                .exits
                .map_or("-".into(), |(a, b)| format!("{a:.3} -> {b:.3}"));
            let mut verdict = match r.verdict {
                Verdict::Regressed => "SLOWER",
                Verdict::Improved => "faster",
                Verdict::Unchanged => "same",
                Verdict::Untested => "1 sample, not tested",
            }
            .to_string();
            if r.exits_changed {
                verdict += ", EXITS CHANGED";
            }
            s += &format!(
                "{:<52} {:>11} {:>11} {:>8} {:>18} {:>7} {:>17}  {verdict}\n",
                r.key,
                opt(r.median_a, &|v| fmt_value(v, r.unit)),
                opt(r.median_b, &|v| fmt_value(v, r.unit)),
                opt(r.change, &pct),
                r.interval
                    .map_or("-".into(), |(lo, hi)| format!("[{}, {}]", pct(lo), pct(hi))),
                opt(r.p, &|p| if p < 1e-4 {
                    "<0.0001".into()
                } else {
                    format!("{p:.4}")
                }),
                exits,
            );
        }
        for k in &self.only_in_a {
            s += &format!("{k}: only in A\n");
        }
        for k in &self.only_in_b {
            s += &format!("{k}: only in B\n");
        }
        let flagged = self.rows.iter().filter(|r| r.flagged()).count();
        s += &format!(
            "{flagged} of {} rows regressed (timing: significant at p < {ALPHA} and worse than \
             {:.1}%; exits per op: any change)\n",
            self.rows.len(),
            self.threshold * 100.0
        );
        s
    }
}

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "ns" if v >= 1e6 => format!("{:.2} ms", v / 1e6),
        "ns" if v >= 1e3 => format!("{:.1} us", v / 1e3),
        "ns" => format!("{v:.0} ns"),
        "s" => format!("{:.1} ms", v * 1e3),
        "pps" => format!("{:.0}k pps", v / 1e3),
        _ => format!("{v:.3} {unit}"),
    }
}

/// Several runs of one side as one: each row's samples become the median of every run that
/// has the row, its exits the first run's. One run stays as it is.
pub fn pool(runs: Vec<Vec<Measure>>) -> Vec<Measure> {
    if runs.len() == 1 {
        return runs.into_iter().next().unwrap_or_default();
    }
    let mut out: Vec<Measure> = Vec::new();
    for run in runs {
        for m in run {
            let med = median(&m.samples);
            match out.iter_mut().find(|o| o.key == m.key) {
                Some(o) => o.samples.extend(med),
                None => out.push(Measure {
                    samples: med.into_iter().collect(),
                    ..m
                }),
            }
        }
    }
    out
}

/// Compare every row present in both, `threshold` a fraction (0.10 for 10%).
pub fn compare(a: &[Measure], b: &[Measure], threshold: f64) -> Comparison {
    let mut rows = Vec::new();
    let mut only_in_a = Vec::new();
    for ma in a {
        let Some(mb) = b.iter().find(|m| m.key == ma.key) else {
            only_in_a.push(ma.key.clone());
            continue;
        };
        rows.push(compare_row(ma, mb, threshold));
    }
    let only_in_b = b
        .iter()
        .filter(|m| !a.iter().any(|x| x.key == m.key))
        .map(|m| m.key.clone())
        .collect();
    Comparison {
        threshold,
        rows,
        only_in_a,
        only_in_b,
    }
}

fn compare_row(a: &Measure, b: &Measure, threshold: f64) -> RowChange {
    let (median_a, median_b) = (median(&a.samples), median(&b.samples));
    let change = match (median_a, median_b) {
        (Some(x), Some(y)) if x > 0.0 => Some(y / x - 1.0),
        _ => None,
    };
    let tested = a.samples.len() >= 2 && b.samples.len() >= 2;
    let (interval, p) = if tested {
        (
            bootstrap_interval(&a.samples, &b.samples),
            Some(mann_whitney_p(&a.samples, &b.samples)),
        )
    } else {
        (None, None)
    };
    let verdict = match (change, p) {
        (Some(c), Some(p)) if p < ALPHA && c.abs() > threshold => {
            // For a rate a rise is good; for a time it is bad.
            if (c > 0.0) == a.higher_is_better {
                Verdict::Improved
            } else {
                Verdict::Regressed
            }
        }
        (_, Some(_)) => Verdict::Unchanged,
        _ => Verdict::Untested,
    };
    let exits = a.exits.zip(b.exits);
    let exits_changed = exits.is_some_and(|((ea, na), (eb, nb))| {
        // Less than one exit over the smaller row is the same count (see the module comment).
        (ea - eb).abs() * na.min(nb).max(1) as f64 > 1.0 - 1e-9
    });
    RowChange {
        key: a.key.clone(),
        unit: a.unit,
        median_a,
        median_b,
        change,
        interval,
        p,
        verdict,
        exits: exits.map(|((ea, _), (eb, _))| (ea, eb)),
        exits_changed,
    }
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// A fixed-seed xorshift64*, so that the same two documents always give the same interval.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// The percentile bootstrap's 95% interval of median(B) / median(A) - 1.
pub fn bootstrap_interval(a: &[f64], b: &[f64]) -> Option<(f64, f64)> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut resample = |v: &[f64]| -> Option<f64> {
        let r: Vec<f64> = (0..v.len()).map(|_| v[rng.below(v.len())]).collect();
        median(&r)
    };
    let mut changes = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    for _ in 0..BOOTSTRAP_RESAMPLES {
        let (ma, mb) = (resample(a)?, resample(b)?);
        if ma > 0.0 {
            changes.push(mb / ma - 1.0);
        }
    }
    if changes.is_empty() {
        return None;
    }
    changes.sort_by(f64::total_cmp);
    let at = |q: f64| changes[((changes.len() - 1) as f64 * q).round() as usize];
    Some((at(ALPHA / 2.0), at(1.0 - ALPHA / 2.0)))
}

/// Mann-Whitney U's two-sided p-value: exact (the distribution of U counted) for small samples
/// without ties, else the normal approximation with the tie and continuity corrections.
pub fn mann_whitney_p(a: &[f64], b: &[f64]) -> f64 {
    let (n1, n2) = (a.len(), b.len());
    if n1 == 0 || n2 == 0 {
        return 1.0;
    }
    // U of A: pairs where A's value is above B's, a tie counting half.
    let mut u = 0f64;
    for x in a {
        for y in b {
            u += match x.total_cmp(y) {
                std::cmp::Ordering::Greater => 1.0,
                std::cmp::Ordering::Equal => 0.5,
                std::cmp::Ordering::Less => 0.0,
            };
        }
    }
    let mut all: Vec<f64> = a.iter().chain(b).copied().collect();
    all.sort_by(f64::total_cmp);
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < all.len() {
        let j = all[i..].iter().take_while(|&&v| v == all[i]).count();
        tie_term += (j * j * j - j) as f64;
        i += j;
    }
    let (f1, f2) = (n1 as f64, n2 as f64);
    let mean = f1 * f2 / 2.0;
    if tie_term == 0.0 && n1 <= 30 && n2 <= 30 {
        // Arrangements of the two samples giving each U, by the recurrence
        // c(m, n, u) = c(m - 1, n, u - n) + c(m, n - 1, u).
        let max_u = n1 * n2;
        let mut counts = vec![vec![vec![0f64; max_u + 1]; n2 + 1]; n1 + 1];
        // With no A or no B there is one arrangement, of U = 0.
        for row in counts.iter_mut() {
            row[0][0] = 1.0;
        }
        for by_u in counts[0].iter_mut() {
            by_u[0] = 1.0;
        }
        for m in 1..=n1 {
            for n in 1..=n2 {
                for k in 0..=m * n {
                    let with_top_in_a = if k >= n { counts[m - 1][n][k - n] } else { 0.0 };
                    counts[m][n][k] = with_top_in_a + counts[m][n - 1][k];
                }
            }
        }
        let dist = &counts[n1][n2];
        let total: f64 = dist.iter().sum();
        let extreme = u.min(f1 * f2 - u) as usize;
        let tail: f64 = dist[..=extreme].iter().sum();
        return (2.0 * tail / total).min(1.0);
    }
    let n = f1 + f2;
    let var = f1 * f2 / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)));
    if var <= 0.0 {
        return 1.0;
    }
    let z = ((u - mean).abs() - 0.5).max(0.0) / var.sqrt();
    (2.0 * normal_upper_tail(z)).min(1.0)
}

/// P(Z > z) for a standard normal, by the complementary error function (Numerical Recipes'
/// Chebyshev fit, relative error below 1.2e-7).
fn normal_upper_tail(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let poly = -x * x - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    let erfc = if x >= 0.0 { erfc } else { 2.0 - erfc };
    erfc / 2.0
}

/// A document from a file: unreadable, not JSON, or not a bench document is a usage error
/// (exit code 64) that names the file.
fn read_doc(path: &Path) -> Result<Vec<Measure>, HarnessError> {
    let usage = |why: String| HarnessError::Usage(format!("{}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| usage(format!("cannot read it: {e}")))?;
    let doc: Value =
        serde_json::from_str(&text).map_err(|e| usage(format!("not valid JSON: {e}")))?;
    measures(&doc).map_err(usage)
}

/// `bench compare`: 0 when nothing regressed, 1 when something did. Each side is one or more
/// documents (runs of one build).
pub fn cmd_compare(a: &[PathBuf], b: &[PathBuf], threshold_pct: f64) -> Result<i32, HarnessError> {
    if !(threshold_pct.is_finite() && threshold_pct >= 0.0) {
        return Err(HarnessError::Usage(format!(
            "--threshold {threshold_pct}: a percentage of 0 or more"
        )));
    }
    let side = |paths: &[PathBuf]| -> Result<Vec<Measure>, HarnessError> {
        if paths.is_empty() {
            return Err(HarnessError::Usage(
                "compare: a side without documents".into(),
            ));
        }
        Ok(pool(
            paths
                .iter()
                .map(|p| read_doc(p))
                .collect::<Result<_, _>>()?,
        ))
    };
    let (ma, mb) = (side(a)?, side(b)?);
    let c = compare(&ma, &mb, threshold_pct / 100.0);
    let names = |paths: &[PathBuf]| {
        let v: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        v.join(", ")
    };
    println!("A: {}\nB: {}", names(a), names(b));
    print!("{}", c.to_text());
    Ok(if c.regressed() {
        EXIT_FAILED
    } else {
        EXIT_PASSED
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Samples around `center` with a spread of +-`spread` (a fraction), from a seeded noise.
    fn noisy(center: f64, spread: f64, n: usize, seed: u64) -> Vec<f64> {
        let mut rng = Rng(seed);
        (0..n)
            .map(|_| center * (1.0 + spread * (rng.below(2001) as f64 / 1000.0 - 1.0)))
            .collect()
    }

    fn storage_doc(rows: &[(&str, Vec<f64>, f64)]) -> Value {
        json!({
            "floor": [],
            "boot": {},
            "storage": {
                "rows": rows.iter().map(|(path, s, exits)| json!({
                    "vmm": "harness-thread", "path": path, "workload": "randread_4k_qd1",
                    "n": 1000, "p50_ns": median(s), "user_exits_per_io": exits,
                })).collect::<Vec<_>>(),
                "samples": rows.iter().map(|(path, s, _)| json!({
                    "vmm": "harness-thread", "path": path, "workload": "randread_4k_qd1",
                    "p50_ns": s,
                })).collect::<Vec<_>>(),
                "notes": [],
            },
        })
    }

    fn rows(seed: u64, slow_dma: f64, dma_exits: f64) -> Value {
        storage_doc(&[
            ("ide_pio", noisy(900_000.0, 0.05, 16, seed), 24.0),
            (
                "ide_dma",
                noisy(60_000.0 * slow_dma, 0.05, 16, seed + 1),
                dma_exits,
            ),
            ("virtio_msix", noisy(20_000.0, 0.08, 16, seed + 2), 0.0),
        ])
    }

    fn run(a: &Value, b: &Value) -> Comparison {
        compare(&measures(a).unwrap(), &measures(b).unwrap(), 0.10)
    }

    #[test]
    fn a_20_percent_slowdown_in_one_row_is_flagged() {
        let c = run(&rows(1, 1.0, 12.5), &rows(100, 1.2, 12.5));
        assert!(c.regressed(), "{}", c.to_text());
        let flagged: Vec<&str> = c
            .rows
            .iter()
            .filter(|r| r.flagged())
            .map(|r| r.key.as_str())
            .collect();
        assert_eq!(flagged, ["storage harness-thread ide_dma randread_4k_qd1"]);
        let dma = &c.rows[1];
        assert_eq!(dma.verdict, Verdict::Regressed);
        let (lo, hi) = dma.interval.unwrap();
        assert!(lo > 0.10 && hi < 0.30 && lo < 0.2 && 0.2 < hi, "{lo} {hi}");
        assert!(dma.p.unwrap() < 0.001);
        assert!(c.to_text().contains("SLOWER"), "{}", c.to_text());
        // Faster is reported, not flagged.
        let c = run(&rows(100, 1.2, 12.5), &rows(1, 1.0, 12.5));
        assert!(!c.regressed(), "{}", c.to_text());
        assert_eq!(c.rows[1].verdict, Verdict::Improved);
    }

    #[test]
    fn two_runs_of_the_same_build_stay_quiet() {
        for seed in [1u64, 7, 40, 1000, 31337] {
            let c = run(&rows(seed, 1.0, 12.5), &rows(seed * 3 + 17, 1.0, 12.5));
            assert!(!c.regressed(), "{}", c.to_text());
            assert!(c.rows.iter().all(|r| r.verdict == Verdict::Unchanged));
        }
        // Resampled from one run: the same build, noise only.
        let a = noisy(60_000.0, 0.05, 16, 5);
        let mut rng = Rng(77);
        let b: Vec<f64> = (0..16).map(|_| a[rng.below(a.len())]).collect();
        let c = run(
            &storage_doc(&[("ide_dma", a, 12.5)]),
            &storage_doc(&[("ide_dma", b, 12.5)]),
        );
        assert!(!c.regressed(), "{}", c.to_text());
    }

    #[test]
    fn a_changed_exit_count_is_flagged() {
        let c = run(&rows(1, 1.0, 12.5), &rows(1, 1.0, 13.5));
        assert!(c.regressed());
        let dma = &c.rows[1];
        assert!(dma.exits_changed && dma.verdict == Verdict::Unchanged);
        assert!(c.to_text().contains("EXITS CHANGED"), "{}", c.to_text());
        // Fewer exits is a change too.
        assert!(run(&rows(1, 1.0, 12.5), &rows(1, 1.0, 11.5)).regressed());
        // One extra exit in a whole row of 1000 I/Os is flagged...
        assert!(run(&rows(1, 1.0, 12.5), &rows(1, 1.0, 12.501)).regressed());
        // ...but a one-off exit weighing differently over rows of different length is not.
        let m = |per_io: f64, n: u64| Measure {
            key: "storage x".into(),
            unit: "ns",
            higher_is_better: false,
            samples: vec![1.0],
            exits: Some((per_io, n)),
        };
        let c = compare(
            &[m(12.0 + 1.0 / 4000.0, 4000)],
            &[m(12.0 + 1.0 / 5000.0, 5000)],
            0.1,
        );
        assert!(!c.regressed(), "{}", c.to_text());
    }

    #[test]
    fn single_samples_are_shown_and_never_flagged() {
        let doc = |ns: f64, boot: f64| {
            json!({
                "floor": [{"name": "port_out_userspace", "ns": ns, "n": 1000,
                           "exits": 1000, "exits_per_op": 1.0}],
                "boot": {"harness": {"time_s": {"median": boot, "min": boot, "max": boot}},
                         "qemu_kvm": {"time_s": null}},
                "storage": null,
            })
        };
        let c = run(&doc(50_000.0, 0.02), &doc(100_000.0, 0.04));
        assert!(!c.regressed(), "{}", c.to_text());
        assert_eq!(c.rows.len(), 2, "qemu_kvm has no time");
        assert!(c.rows.iter().all(|r| r.verdict == Verdict::Untested));
        assert!((c.rows[0].change.unwrap() - 1.0).abs() < 1e-12);
        assert!(c.to_text().contains("1 sample, not tested"));
        // Boot samples over the runs are tested.
        let runs = |t: &[f64]| json!({"boot": {"harness": {"time_samples_s": t}}});
        let c = run(
            &runs(&[0.020, 0.021, 0.019, 0.020, 0.022]),
            &runs(&[0.030, 0.031, 0.029, 0.032, 0.030]),
        );
        assert_eq!(c.rows[0].verdict, Verdict::Regressed, "{}", c.to_text());
    }

    /// A document with a network rate row, a round-trip row and a console row, each from
    /// 16 noisy samples; `slow` scales the console row's time and divides the rate row's pps.
    fn net_console_doc(seed: u64, slow_console: f64, slow_tx: f64) -> Value {
        let net = |workload: &str, key: &str, v: Vec<f64>| {
            json!({"vmm": "harness-thread", "nic": "virtio-net", "backend": "peer",
                   "queues": 1, "workload": workload, key: v[0], "samples": v})
        };
        json!({
            "floor": [],
            "net": {"rows": [
                net("tx_64", "pps", noisy(1e6 / slow_tx, 0.05, 16, seed)),
                net("rtt_udp", "p50_ns", noisy(40_000.0, 0.05, 16, seed + 1)),
            ]},
            "console": {"rows": [{"vmm": "harness", "name": "virtio_tx", "ns_per_kib": 1100.0,
                                  "samples_ns_per_kib":
                                      noisy(1100.0 * slow_console, 0.05, 16, seed + 2)}]},
        })
    }

    #[test]
    fn net_and_console_rows_are_tested_on_their_samples() {
        let keys = |c: &Comparison| -> Vec<String> {
            c.rows
                .iter()
                .filter(|r| r.flagged())
                .map(|r| r.key.clone())
                .collect()
        };
        let a = measures(&net_console_doc(1, 1.0, 1.0)).unwrap();
        assert_eq!(a.len(), 3);
        assert!(a.iter().all(|m| m.samples.len() == 16), "{a:?}");
        assert_eq!(a[2].key, "console harness virtio_tx");
        for seed in [3u64, 50, 999] {
            let c = run(
                &net_console_doc(1, 1.0, 1.0),
                &net_console_doc(seed, 1.0, 1.0),
            );
            assert!(!c.regressed(), "{}", c.to_text());
        }
        let c = run(&net_console_doc(1, 1.0, 1.0), &net_console_doc(2, 1.2, 1.0));
        assert_eq!(keys(&c), ["console harness virtio_tx"], "{}", c.to_text());
        let c = run(&net_console_doc(1, 1.0, 1.0), &net_console_doc(2, 1.0, 1.2));
        assert_eq!(
            keys(&c),
            ["net harness-thread virtio-net peer q1 tx_64"],
            "{}",
            c.to_text()
        );
        // A document from before the samples: one number a row, shown, not tested.
        let old = json!({"floor": [], "console": {"rows": [
            {"vmm": "qemu", "name": "serial_tx", "ns_per_kib": 5e7}]}});
        let m = measures(&old).unwrap();
        assert_eq!(m[0].samples, [5e7]);
        assert_eq!(run(&old, &old).rows[0].verdict, Verdict::Untested);
    }

    #[test]
    fn floor_batches_are_its_samples() {
        let doc = |batches: &str| {
            json!({"floor": [{"name": "port_out_userspace", "ns": 1.0, "n": 1600,
                              "exits": 1600, "exits_per_op": 1.0,
                              "extra": {"batch_p50": batches, "ring": "3"}}]})
        };
        let a = measures(&doc("100,101,99,100,102,98,100,101")).unwrap();
        assert_eq!(a[0].samples.len(), 8);
        let b = measures(&doc("130,131,129,130,132,128,130,131")).unwrap();
        assert_eq!(compare(&a, &b, 0.1).rows[0].verdict, Verdict::Regressed);
        // A malformed list falls back to the one median.
        assert_eq!(measures(&doc("1,x")).unwrap()[0].samples, [1.0]);
    }

    #[test]
    fn network_rows_are_rates_or_round_trips() {
        let doc = |pps: f64, rtt: f64| {
            json!({"boot": {}, "net": {"rows": [
                {"vmm": "harness-thread", "nic": "virtio", "backend": "peer", "queues": 1,
                 "workload": "tx_1514", "pps": pps, "p50_ns": null},
                {"vmm": "harness-thread", "nic": "virtio", "backend": "peer", "queues": 1,
                 "workload": "rtt_udp", "pps": 1000.0, "p50_ns": rtt},
            ]}})
        };
        let a = measures(&doc(200_000.0, 50_000.0)).unwrap();
        assert_eq!(a[0].key, "net harness-thread virtio peer q1 tx_1514");
        assert_eq!((a[0].unit, a[0].higher_is_better), ("pps", true));
        assert_eq!(
            (a[1].unit, a[1].samples.as_slice()),
            ("ns", &[50_000.0][..])
        );
        let c = compare(&a, &measures(&doc(100_000.0, 100_000.0)).unwrap(), 0.1);
        assert!(c.rows.iter().all(|r| r.verdict == Verdict::Untested));
        assert!(!c.regressed());
        assert!(c.to_text().contains("200k pps"), "{}", c.to_text());
    }

    #[test]
    fn rows_only_on_one_side_are_listed() {
        let a = storage_doc(&[("ide_pio", vec![1.0, 2.0], 1.0)]);
        let b = storage_doc(&[("ide_dma", vec![1.0, 2.0], 1.0)]);
        let c = run(&a, &b);
        assert!(c.rows.is_empty() && !c.regressed());
        assert_eq!(
            c.only_in_a,
            ["storage harness-thread ide_pio randread_4k_qd1"]
        );
        assert_eq!(
            c.only_in_b,
            ["storage harness-thread ide_dma randread_4k_qd1"]
        );
    }

    #[test]
    fn several_runs_a_side_are_tested_over_the_runs() {
        let side = |seeds: std::ops::Range<u64>, slow: f64| {
            pool(
                seeds
                    .map(|s| measures(&rows(s, slow, 12.5)).unwrap())
                    .collect(),
            )
        };
        let a = side(0..5, 1.0);
        assert_eq!(a.len(), 3);
        assert_eq!(a[1].samples.len(), 5, "one median per run");
        assert_eq!(a[1].exits, Some((12.5, 1000)));
        let c = compare(&a, &side(10..15, 1.0), 0.10);
        assert!(!c.regressed(), "{}", c.to_text());
        let c = compare(&a, &side(20..25, 1.2), 0.10);
        let flagged: Vec<&str> = c
            .rows
            .iter()
            .filter(|r| r.flagged())
            .map(|r| r.key.as_str())
            .collect();
        assert_eq!(flagged, ["storage harness-thread ide_dma randread_4k_qd1"]);
        // Two runs a side can never be significant (the smallest p is 1/3): shown, not flagged.
        let c = compare(&side(0..2, 1.0), &side(20..22, 1.2), 0.10);
        assert!(!c.regressed(), "{}", c.to_text());
        assert!(c.rows[1].p.unwrap() > 0.3);
        // One run stays as it is.
        let one = measures(&rows(3, 1.0, 12.5)).unwrap();
        assert_eq!(pool(vec![one.clone()]), one);
    }

    #[test]
    fn mann_whitney_against_known_values() {
        // Complete separation of 5 and 5: the exact two-sided p is 2/252.
        let p = mann_whitney_p(&[1.0, 2.0, 3.0, 4.0, 5.0], &[6.0, 7.0, 8.0, 9.0, 10.0]);
        assert!((p - 2.0 / 252.0).abs() < 1e-12, "{p}");
        // Interleaved: nothing to see.
        let p = mann_whitney_p(&[1.0, 3.0, 5.0, 7.0], &[2.0, 4.0, 6.0, 8.0]);
        assert!(p > 0.5, "{p}");
        // All tied: the normal approximation with no variance says nothing.
        assert_eq!(mann_whitney_p(&[1.0; 4], &[1.0; 4]), 1.0);
        // Large, separated: tiny p by the normal approximation.
        let a: Vec<f64> = (0..40).map(f64::from).collect();
        let b: Vec<f64> = (40..80).map(f64::from).collect();
        assert!(mann_whitney_p(&a, &b) < 1e-10);
        assert!((normal_upper_tail(1.959_964) - 0.025).abs() < 1e-6);
        assert!((normal_upper_tail(0.0) - 0.5).abs() < 1e-7);
    }

    #[test]
    fn the_command_line() {
        use crate::cli::{Cli, Cmd};
        use crate::shared::BenchAction;
        use clap::Parser;
        let parse = |args: &[&str]| {
            Cli::try_parse_from(["hh", "bench"].iter().chain(args).copied()).map(|c| c.cmd)
        };
        let Ok(Cmd::Bench(b)) = parse(&["compare", "a.json", "b.json", "--threshold", "5"]) else {
            panic!()
        };
        let Some(BenchAction::Compare { a, b, threshold }) = b.action else {
            panic!()
        };
        assert_eq!(
            (a, b, threshold),
            (vec!["a.json".into()], vec!["b.json".into()], 5.0)
        );
        let Ok(Cmd::Bench(b)) = parse(&["compare", "a1,a2", "b1,b2,b3"]) else {
            panic!()
        };
        let Some(BenchAction::Compare { a, b, .. }) = b.action else {
            panic!()
        };
        assert_eq!((a.len(), b.len()), (2, 3));
        let Ok(Cmd::Bench(b)) = parse(&["compare", "a", "b"]) else {
            panic!()
        };
        assert!(
            matches!(b.action, Some(BenchAction::Compare { threshold, .. }) if threshold == 10.0)
        );
        let Ok(Cmd::Bench(b)) = parse(&["--runs", "2"]) else {
            panic!()
        };
        assert!(b.action.is_none());
        assert!(parse(&["compare", "a"]).is_err());
        assert!(parse(&["--runs", "2", "compare", "a", "b"]).is_err());
    }

    #[test]
    fn bad_documents_are_usage_errors() {
        assert!(measures(&json!([])).is_err());
        assert!(measures(&json!({"vmm": "harness"})).is_err());
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix(
            std::env::temp_dir().join("hh-compare-test-"),
        )
        .unwrap();
        let good = dir.as_path().join("good.json");
        std::fs::write(&good, rows(1, 1.0, 12.5).to_string()).unwrap();
        let missing = dir.as_path().join("missing.json");
        let bad = dir.as_path().join("bad.json");
        std::fs::write(&bad, "{ not json").unwrap();
        for (a, b, what) in [
            (&missing, &good, "cannot read it"),
            (&good, &bad, "not valid JSON"),
        ] {
            let e =
                cmd_compare(std::slice::from_ref(a), std::slice::from_ref(b), 10.0).unwrap_err();
            assert_eq!(e.exit_code(), 64);
            assert!(e.to_string().contains(what), "{e}");
        }
        let (good, slow) = (vec![good], vec![dir.as_path().join("slow.json")]);
        assert_eq!(cmd_compare(&good, &good, -1.0).unwrap_err().exit_code(), 64);
        assert_eq!(cmd_compare(&good, &[], 10.0).unwrap_err().exit_code(), 64);
        assert_eq!(cmd_compare(&good, &good, 10.0), Ok(EXIT_PASSED));
        std::fs::write(&slow[0], rows(100, 1.2, 12.5).to_string()).unwrap();
        assert_eq!(cmd_compare(&good, &slow, 10.0), Ok(EXIT_FAILED));
        // The same slowdown under a 25% threshold is not a regression.
        assert_eq!(cmd_compare(&good, &slow, 25.0), Ok(EXIT_PASSED));
    }
}
