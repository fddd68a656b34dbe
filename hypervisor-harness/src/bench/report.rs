//! Bench results: a plain-text table and JSON, both naming the platform.

use super::blk::BlkSectionJson;
use super::BenchLine;
use crate::platform::{Platform, PlatformJson};
use crate::shared::RunJson;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(v: &[f64]) -> Option<Stat> {
        if v.is_empty() {
            return None;
        }
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: s[0],
            max: s[n - 1],
        })
    }
}

#[derive(Debug, Clone)]
pub struct FloorRow {
    pub name: String,
    pub line: BenchLine,
    /// Exits the harness counted at this measurement's address (None: no fixed address).
    pub exits: Option<u64>,
}

impl FloorRow {
    pub fn exits_per_op(&self) -> Option<f64> {
        match (self.exits, self.line.n) {
            (Some(e), Some(n)) if n > 0 => Some(e as f64 / n as f64),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct BootRow {
    pub vmm: String,
    /// Wall seconds from spawn to exit.
    pub time: Option<Stat>,
    /// The first run's --exits-json document.
    pub json: Option<RunJson<'static>>,
    pub note: Option<String>,
}

impl BootRow {
    pub fn unavailable(vmm: &str, why: &str) -> Self {
        Self {
            vmm: vmm.into(),
            time: None,
            json: None,
            note: Some(format!("n/a: {why}")),
        }
    }

    pub fn from_runs(
        vmm: &str,
        time: Option<Stat>,
        json: Option<RunJson<'static>>,
        note: Option<String>,
    ) -> Self {
        Self {
            vmm: vmm.into(),
            time,
            json,
            note,
        }
    }

    /// Exit counts of one boot.
    pub fn exits(&self) -> Option<BootExits> {
        let j = self.json.as_ref()?;
        let stat = |scope: &str, name: &str| {
            j.kvm_stats
                .as_deref()
                .and_then(|s| s.get(scope))
                .and_then(|m| m.get(name))
                .copied()
        };
        if self.vmm == "run" {
            let by_reason = |r: &str| {
                j.exits
                    .as_ref()
                    .and_then(|e| e.by_reason.get(r))
                    .copied()
                    .unwrap_or(0)
            };
            Some(BootExits {
                userspace: j.exits.as_ref().map(|e| e.total),
                kvm: stat("vcpu0", "exits"),
                io: Some(by_reason("io")),
                mmio: Some(by_reason("mmio")),
            })
        } else {
            Some(BootExits {
                userspace: None,
                kvm: stat("vcpu", "exits"),
                io: stat("vcpu", "io_exits"),
                mmio: stat("vcpu", "mmio_exits"),
            })
        }
    }
}

/// Exits of one boot. `userspace`: exits the harness handled (exact; harness only). `kvm`: KVM's
/// own vCPU "exits" statistic (includes exits KVM handles in the kernel). `io`/`mmio`: the
/// harness's exact counts, or QEMU's KVM io_exits/mmio_exits (kvm_pvm may leave those at 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BootExits {
    pub userspace: Option<u64>,
    pub kvm: Option<u64>,
    pub io: Option<u64>,
    pub mmio: Option<u64>,
}

pub struct BenchReport {
    pub platform: Platform,
    pub floor: Vec<FloorRow>,
    pub floor_note: Option<String>,
    pub harness: BootRow,
    pub qemu: BootRow,
    pub runs: u32,
    /// The storage section (absent with `--skip-storage`).
    pub blk: Option<super::blk::BlkSection>,
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}"))
        .unwrap_or_else(|| "-".into())
}

impl BenchReport {
    pub fn ratio(&self) -> Option<f64> {
        match (self.harness.time, self.qemu.time) {
            (Some(h), Some(q)) if q.median > 0.0 => Some(h.median / q.median),
            _ => None,
        }
    }

    pub fn to_text(&self) -> String {
        let mut s = format!("platform: {}\n\n", self.platform);
        s += "floor (harness, cmdline bench=floor)\n";
        s += &format!(
            "  {:<24} {:>12} {:>12} {:>12} {:>10} {:>10} {:>9}  {}\n",
            "path", "median ns", "min ns", "max ns", "ops", "exits", "exits/op", "other"
        );
        for r in &self.floor {
            let extra: Vec<String> = r
                .line
                .extra
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            s += &format!(
                "  {:<24} {:>12} {:>12} {:>12} {:>10} {:>10} {:>9}  {}\n",
                r.name,
                opt(r.line.ns, 0),
                opt(r.line.min, 0),
                opt(r.line.max, 0),
                r.line.n.map(|n| n.to_string()).unwrap_or("-".into()),
                r.exits.map(|n| n.to_string()).unwrap_or("-".into()),
                opt(r.exits_per_op(), 3),
                extra.join(" ")
            );
        }
        if self.floor.is_empty() {
            s += "  (the guest printed no `# bench: floor.*` lines)\n";
        }
        if let Some(n) = &self.floor_note {
            s += &format!("  note: {n}\n");
        }
        s += &format!(
            "\nboot (tests=none, wall time spawn->exit, {} runs)\n",
            self.runs
        );
        s += &format!(
            "  {:<10} {:>10} {:>10} {:>10} {:>12} {:>12} {:>10} {:>10}\n",
            "vmm", "median s", "min s", "max s", "user exits", "kvm exits", "io", "mmio"
        );
        for (label, r) in [("harness", &self.harness), ("qemu", &self.qemu)] {
            let (t, e) = (r.time, r.exits());
            let na = if r.time.is_none() { "n/a" } else { "-" };
            let num = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or(na.into());
            s += &format!(
                "  {:<10} {:>10} {:>10} {:>10} {:>12} {:>12} {:>10} {:>10}\n",
                label,
                t.map(|t| format!("{:.3}", t.median)).unwrap_or(na.into()),
                t.map(|t| format!("{:.3}", t.min)).unwrap_or(na.into()),
                t.map(|t| format!("{:.3}", t.max)).unwrap_or(na.into()),
                num(e.and_then(|e| e.userspace)),
                num(e.and_then(|e| e.kvm)),
                num(e.and_then(|e| e.io)),
                num(e.and_then(|e| e.mmio))
            );
            if let Some(n) = &r.note {
                s += &format!("             note: {n}\n");
            }
        }
        if let Some(acc) = self.qemu.json.as_ref().and_then(|j| j.accel.as_deref()) {
            s += &format!("  qemu accel: {acc}\n");
        }
        s += "  user exits: handled by the VMM in userspace (exact, harness only); kvm exits: KVM's\n  vCPU `exits` statistic (also counts exits handled inside KVM); qemu io/mmio: KVM stats\n";
        s += &format!(
            "  ratio harness/qemu (median): {}\n",
            self.ratio()
                .map(|r| format!("{r:.2}"))
                .unwrap_or("n/a".into())
        );
        if let Some(b) = &self.blk {
            s += &b.to_text();
        }
        s
    }

    /// The report as `bench --json` writes it.
    pub fn to_json(&self) -> BenchJson<'_> {
        BenchJson {
            platform: self.platform.to_json(),
            floor: self
                .floor
                .iter()
                .map(|r| FloorJson {
                    name: &r.name,
                    ns: r.line.ns,
                    min: r.line.min,
                    max: r.line.max,
                    n: r.line.n,
                    exits: r.exits,
                    exits_per_op: r.exits_per_op(),
                    extra: &r.line.extra,
                })
                .collect(),
            floor_note: self.floor_note.as_deref(),
            boot: BootSectionJson {
                runs: self.runs,
                harness: self.harness.to_json(),
                qemu: self.qemu.to_json(),
                ratio_harness_over_qemu: self.ratio(),
            },
            storage: self.blk.as_ref().map(|b| b.to_json()),
        }
    }
}

impl BootRow {
    fn to_json(&self) -> BootJson<'_> {
        BootJson {
            time_s: self.time,
            exits: self.exits(),
            accel: self.json.as_ref().and_then(|j| j.accel.as_deref()),
            note: self.note.as_deref(),
        }
    }
}

/// `bench --json`: the whole report.
#[derive(Debug, Serialize)]
pub struct BenchJson<'a> {
    pub platform: PlatformJson,
    pub floor: Vec<FloorJson<'a>>,
    pub floor_note: Option<&'a str>,
    pub boot: BootSectionJson<'a>,
    /// Absent (null) with `--skip-storage`.
    pub storage: Option<BlkSectionJson<'a>>,
}

/// One floor measurement.
#[derive(Debug, Serialize)]
pub struct FloorJson<'a> {
    pub name: &'a str,
    pub ns: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub n: Option<u64>,
    pub exits: Option<u64>,
    pub exits_per_op: Option<f64>,
    /// The bench line's other keys, as the guest printed them.
    pub extra: &'a BTreeMap<String, String>,
}

/// The boot section.
#[derive(Debug, Serialize)]
pub struct BootSectionJson<'a> {
    pub runs: u32,
    pub harness: BootJson<'a>,
    pub qemu: BootJson<'a>,
    pub ratio_harness_over_qemu: Option<f64>,
}

/// One VMM's boot runs.
#[derive(Debug, Serialize)]
pub struct BootJson<'a> {
    /// Wall seconds, spawn to exit.
    pub time_s: Option<Stat>,
    pub exits: Option<BootExits>,
    pub accel: Option<&'a str>,
    pub note: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stats() {
        assert_eq!(Stat::of(&[]), None);
        assert_eq!(
            Stat::of(&[3.0, 1.0, 2.0]),
            Some(Stat {
                median: 2.0,
                min: 1.0,
                max: 3.0
            })
        );
        assert_eq!(Stat::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
    }

    #[test]
    fn report_with_qemu_missing() {
        let line = super::super::parse_bench_line(
            "# bench: floor.port_out_userspace ns=60000 min=1 max=2 n=100 x=y",
        )
        .unwrap();
        let rep = BenchReport {
            platform: Platform {
                kvm: "kvm_pvm".into(),
                nested: true,
            },
            floor: vec![FloorRow {
                name: "port_out_userspace".into(),
                line,
                exits: Some(100),
            }],
            floor_note: None,
            harness: BootRow::from_runs(
                "run",
                Stat::of(&[0.1, 0.2]),
                Some(
                    serde_json::from_value(json!({
                        "vmm": "harness",
                        "platform": {"kvm": "kvm_pvm", "nested": true, "description": "x"},
                        "outcome": {"kind": "debug_exit", "guest_value": 16, "exit_code": 0,
                                    "message": null},
                        "ktap": {"plan": 0, "passed": 0, "failed": 0, "skipped": 0,
                                 "complete": true, "missing": []},
                        "elapsed_ms": 1.0,
                        "exits": {"total": 50, "by_reason": {"io": 40}, "by_device": [],
                                  "by_addr": [], "mmio_addr_overflow": 0,
                                  "pio_addr_overflow": 0},
                        "kvm_stats": null, "notes": [], "phases": []
                    }))
                    .unwrap(),
                ),
                None,
            ),
            qemu: BootRow::unavailable("qemu", "QEMU is not installed"),
            runs: 2,
            blk: None,
        };
        let t = rep.to_text();
        assert!(t.contains("kvm_pvm"));
        assert!(t.contains("1.000"));
        assert!(t.contains("n/a"));
        let j = serde_json::to_value(rep.to_json()).unwrap();
        assert_eq!(j["platform"]["kvm"], "kvm_pvm");
        assert_eq!(j["floor"][0]["exits_per_op"], 1.0);
        assert_eq!(j["boot"]["harness"]["exits"]["userspace"], 50);
        assert_eq!(j["boot"]["harness"]["exits"]["io"], 40);
        assert!(j["boot"]["qemu"]["time_s"].is_null());
        assert!(j["boot"]["ratio_harness_over_qemu"].is_null());
    }
}
