//! Bench results: a plain-text table and JSON, both naming the platform.

use super::blk::BlkSectionJson;
use super::net::NetSectionJson;
use super::BenchLine;
use crate::platform::{Platform, PlatformJson};
use crate::shared::{Accel, RunJson};
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
    /// Phases and per-boot figures over every run whose document came back.
    pub phases: Option<BootPhases>,
    /// Every run's wall seconds, in order: the samples `bench compare` tests.
    pub samples_s: Vec<f64>,
}

/// A boot's phases and per-boot figures, each a [`Stat`] over the runs that reported it
/// (None when none did: QEMU reports no phases, only its KVM statistics).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BootPhases {
    /// The bench's spawn of the child to its first KVM_RUN (fork, exec and the loader included).
    pub spawn_to_first_run_ms: Option<Stat>,
    /// The child's main to its first KVM_RUN, wall.
    pub start_to_first_run_ms: Option<Stat>,
    /// The child's process CPU time (since exec, all threads) at its first KVM_RUN.
    pub cpu_to_first_run_ms: Option<Stat>,
    /// The first KVM_RUN to the first KTAP line on the serial port.
    pub first_run_to_ktap_ms: Option<Stat>,
    /// The first KTAP line to the guest's exit.
    pub ktap_to_exit_ms: Option<Stat>,
    /// Spawn to exit, wall.
    pub total_ms: Option<Stat>,
    /// The child's process CPU time at the end of the run loop.
    pub cpu_total_ms: Option<Stat>,
    /// KVM's `insn_emulation` (ring-0 instructions emulated, on kvm_pvm).
    pub insn_emulation: Option<Stat>,
    /// VmRSS beyond the resident part of guest memory, KiB.
    pub overhead_rss_kib: Option<Stat>,
    /// The resident part of guest memory, KiB.
    pub guest_rss_kib: Option<Stat>,
    /// KVM's vCPU exit statistics by kind (`*_exits`), as KVM names them.
    pub kvm_exits: BTreeMap<String, Stat>,
    /// The exits the VMM handled in userspace, by reason (the harness's own counters).
    pub user_exits: BTreeMap<String, Stat>,
}

impl BootPhases {
    /// From each run's (spawn CLOCK_MONOTONIC ns, wall seconds, --exits-json document).
    pub fn of<'a>(runs: impl IntoIterator<Item = (u64, f64, &'a RunJson<'static>)>) -> Self {
        let mut cols: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
        let mut kvm: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut user: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for (spawn_ns, secs, j) in runs {
            let mut put = |k: &'static str, v: Option<f64>| {
                if let Some(v) = v {
                    cols.entry(k).or_default().push(v);
                }
            };
            put("total", Some(secs * 1e3));
            if let Some(t) = &j.timing {
                put(
                    "spawn",
                    t.first_run_monotonic_ns
                        .filter(|&n| n >= spawn_ns && spawn_ns > 0)
                        .map(|n| (n - spawn_ns) as f64 / 1e6),
                );
                put("start", t.start_to_first_run_ms);
                put("cpu", t.cpu_to_first_run_ms);
                put("ktap", t.first_run_to_ktap_ms);
                put("exit", t.ktap_to_exit_ms);
                put("cpu_total", t.cpu_total_ms);
                put("overhead", t.overhead_rss_kib().map(|k| k as f64));
                put("guest", t.guest_rss_kib.map(|k| k as f64));
            }
            // The harness's vCPU is "vcpu0"; QEMU's query-stats gives "vcpu".
            let vcpu = j
                .kvm_stats
                .as_deref()
                .and_then(|s| s.get("vcpu0").or_else(|| s.get("vcpu")));
            if let Some(m) = vcpu {
                put("insn", m.get("insn_emulation").map(|&v| v as f64));
                for (k, v) in m.iter().filter(|(k, _)| k.ends_with("exits")) {
                    kvm.entry(k.clone()).or_default().push(*v as f64);
                }
            }
            if let Some(e) = &j.exits {
                for (k, v) in &e.by_reason {
                    user.entry(k.to_string()).or_default().push(*v as f64);
                }
            }
        }
        let stat = |k: &str| cols.get(k).and_then(|v| Stat::of(v));
        let stats = |m: BTreeMap<String, Vec<f64>>| {
            m.into_iter()
                .filter_map(|(k, v)| Some((k, Stat::of(&v)?)))
                .collect()
        };
        Self {
            spawn_to_first_run_ms: stat("spawn"),
            start_to_first_run_ms: stat("start"),
            cpu_to_first_run_ms: stat("cpu"),
            first_run_to_ktap_ms: stat("ktap"),
            ktap_to_exit_ms: stat("exit"),
            total_ms: stat("total"),
            cpu_total_ms: stat("cpu_total"),
            insn_emulation: stat("insn"),
            overhead_rss_kib: stat("overhead"),
            guest_rss_kib: stat("guest"),
            kvm_exits: stats(kvm),
            user_exits: stats(user),
        }
    }

    /// The phase table, one indented line each.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let mut line = |what: &str, v: Option<Stat>, unit: &str, prec: usize| {
            if let Some(v) = v {
                s += &format!(
                    "    {what:<40} {:>10.prec$} {:>10.prec$} {:>10.prec$} {unit}\n",
                    v.median, v.min, v.max
                );
            }
        };
        line(
            "spawn -> first KVM_RUN, wall",
            self.spawn_to_first_run_ms,
            "ms",
            2,
        );
        line(
            "main -> first KVM_RUN, wall",
            self.start_to_first_run_ms,
            "ms",
            2,
        );
        line(
            "process CPU at first KVM_RUN",
            self.cpu_to_first_run_ms,
            "ms",
            2,
        );
        line(
            "first KVM_RUN -> first KTAP line",
            self.first_run_to_ktap_ms,
            "ms",
            2,
        );
        line("first KTAP line -> exit", self.ktap_to_exit_ms, "ms", 2);
        line("total, spawn -> exit", self.total_ms, "ms", 2);
        line("process CPU at exit", self.cpu_total_ms, "ms", 2);
        line(
            "emulated instructions (insn_emulation)",
            self.insn_emulation,
            "",
            0,
        );
        line(
            "RSS beyond guest memory touched",
            self.overhead_rss_kib,
            "KiB",
            0,
        );
        line("guest memory resident", self.guest_rss_kib, "KiB", 0);
        let kinds = |m: &BTreeMap<String, Stat>| {
            m.iter()
                .filter(|(_, v)| v.max > 0.0)
                .map(|(k, v)| format!("{k}={}", v.median))
                .collect::<Vec<_>>()
                .join(" ")
        };
        if !self.kvm_exits.is_empty() {
            s += &format!(
                "    exits by kind, KVM (median): {}\n",
                kinds(&self.kvm_exits)
            );
        }
        if !self.user_exits.is_empty() {
            s += &format!(
                "    exits by kind, userspace (median): {}\n",
                kinds(&self.user_exits)
            );
        }
        s
    }
}

/// The targets for an empty run, each with what was measured and whether it was met.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    pub what: &'static str,
    pub limit: f64,
    pub measured: Option<f64>,
    pub met: Option<bool>,
}

impl Target {
    fn new(what: &'static str, limit: f64, measured: Option<f64>) -> Self {
        Self {
            what,
            limit,
            measured,
            met: measured.map(|m| m <= limit),
        }
    }
}

impl BootRow {
    pub fn unavailable(vmm: &str, why: &str) -> Self {
        Self {
            vmm: vmm.into(),
            time: None,
            json: None,
            note: Some(format!("n/a: {why}")),
            phases: None,
            samples_s: Vec::new(),
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
            phases: None,
            samples_s: Vec::new(),
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
    pub qemu_kvm: BootRow,
    pub qemu_tcg: BootRow,
    /// Which of the two is `qemu`, the row and JSON key of old (--qemu-accel).
    pub qemu_primary: Accel,
    pub runs: u32,
    /// The storage section (absent with `--skip-storage`).
    pub blk: Option<super::blk::BlkSection>,
    /// The network section (absent with `--skip-net`).
    pub net: Option<super::net::NetSection>,
    /// The console section (16550 against virtio-console).
    pub console: Option<super::console::ConsoleSection>,
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}"))
        .unwrap_or_else(|| "-".into())
}

/// The ratio of two medians.
fn ratio(a: &BootRow, b: &BootRow) -> Option<f64> {
    match (a.time, b.time) {
        (Some(h), Some(q)) if q.median > 0.0 => Some(h.median / q.median),
        _ => None,
    }
}

impl BenchReport {
    /// The QEMU row --qemu-accel chose.
    pub fn qemu(&self) -> &BootRow {
        match self.qemu_primary {
            Accel::Tcg => &self.qemu_tcg,
            _ => &self.qemu_kvm,
        }
    }

    /// The other QEMU row, and its label.
    fn qemu_other(&self) -> (&'static str, &BootRow) {
        match self.qemu_primary {
            Accel::Tcg => ("qemu-kvm", &self.qemu_kvm),
            _ => ("qemu-tcg", &self.qemu_tcg),
        }
    }

    pub fn ratio(&self) -> Option<f64> {
        ratio(&self.harness, self.qemu())
    }

    pub fn ratio_kvm(&self) -> Option<f64> {
        ratio(&self.harness, &self.qemu_kvm)
    }

    pub fn ratio_tcg(&self) -> Option<f64> {
        ratio(&self.harness, &self.qemu_tcg)
    }

    /// The targets, from the measurements.
    pub fn targets(&self) -> Vec<Target> {
        let p = self.harness.phases.as_ref();
        let med = |f: fn(&BootPhases) -> Option<Stat>| p.and_then(f).map(|s| s.median);
        vec![
            Target::new(
                "empty run, wall ms",
                20.0,
                self.harness.time.map(|t| t.median * 1e3),
            ),
            Target::new("harness/QEMU-TCG time", 0.2, self.ratio_tcg()),
            Target::new(
                "CPU ms, process start -> guest entry",
                8.0,
                med(|p| p.cpu_to_first_run_ms),
            ),
            Target::new(
                "emulated ring-0 instructions",
                2000.0,
                med(|p| p.insn_emulation),
            ),
            Target::new(
                "MiB RSS beyond guest memory touched",
                5.0,
                med(|p| p.overhead_rss_kib).map(|k| k / 1024.0),
            ),
        ]
    }

    fn targets_text(&self) -> String {
        let parts: Vec<String> = self
            .targets()
            .iter()
            .map(|t| {
                let verdict = match t.met {
                    Some(true) => "met",
                    Some(false) => "missed",
                    None => "not measured",
                };
                let m = t.measured.map(|m| format!("{m:.2}")).unwrap_or("-".into());
                format!("{} <= {}: {m} {verdict}", t.what, t.limit)
            })
            .collect();
        format!("  targets: {}\n", parts.join("; "))
    }

    pub fn to_text(&self) -> String {
        let mut s = format!("platform: {}\n\n", self.platform);
        s += "floor (harness, cmdline bench=floor)\n";
        s += &format!(
            "  {:<24} {:>12} {:>12} {:>12} {:>10} {:>10} {:>9}  {}\n",
            "path", "median ns", "min ns", "max ns", "ops", "exits", "exits/op", "other"
        );
        for r in &self.floor {
            // The batches' p50s are samples for `bench compare` (in the JSON), not a column.
            let extra: Vec<String> = r
                .line
                .extra
                .iter()
                .filter(|(k, _)| k.as_str() != "batch_p50")
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
        let (other_label, other) = self.qemu_other();
        for (label, r) in [
            ("harness", &self.harness),
            ("qemu", self.qemu()),
            (other_label, other),
        ] {
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
        if let Some(acc) = self.qemu().json.as_ref().and_then(|j| j.accel.as_deref()) {
            s += &format!("  qemu accel: {acc}\n");
        }
        s += "  user exits: handled by the VMM in userspace (exact, harness only); kvm exits: KVM's\n  vCPU `exits` statistic (also counts exits handled inside KVM); qemu io/mmio: KVM stats\n";
        s += &format!(
            "  ratio harness/qemu (median): {}\n",
            self.ratio()
                .map(|r| format!("{r:.2}"))
                .unwrap_or("n/a".into())
        );
        let fmt_ratio = |r: Option<f64>| r.map(|r| format!("{r:.3}")).unwrap_or("n/a".into());
        s += &format!(
            "  ratio harness/qemu-kvm: {}, harness/qemu-tcg: {}\n",
            fmt_ratio(self.ratio_kvm()),
            fmt_ratio(self.ratio_tcg())
        );
        if let Some(p) = &self.harness.phases {
            s += &format!(
                "  harness phases over {} runs: {:>10} {:>10} {:>10}\n",
                self.runs, "median", "min", "max"
            );
            s += &p.to_text();
        }
        s += &self.targets_text();
        if let Some(b) = &self.blk {
            s += &b.to_text();
        }
        if let Some(n) = &self.net {
            s += &n.to_text();
        }
        if let Some(c) = &self.console {
            s += &c.to_text();
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
                qemu: self.qemu().to_json(),
                ratio_harness_over_qemu: self.ratio(),
                qemu_kvm: self.qemu_kvm.to_json(),
                qemu_tcg: self.qemu_tcg.to_json(),
                ratio_harness_over_qemu_kvm: self.ratio_kvm(),
                ratio_harness_over_qemu_tcg: self.ratio_tcg(),
                targets: self.targets(),
            },
            storage: self.blk.as_ref().map(|b| b.to_json()),
            net: self.net.as_ref().map(|n| n.to_json()),
            console: self.console.as_ref().map(|c| c.to_json()),
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
            phases: self.phases.as_ref(),
            time_samples_s: &self.samples_s,
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
    /// Absent (null) with `--skip-net`.
    pub net: Option<NetSectionJson<'a>>,
    pub console: Option<super::console::ConsoleSectionJson<'a>>,
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
    pub qemu_kvm: BootJson<'a>,
    pub qemu_tcg: BootJson<'a>,
    pub ratio_harness_over_qemu_kvm: Option<f64>,
    pub ratio_harness_over_qemu_tcg: Option<f64>,
    /// The targets for an empty run, measured.
    pub targets: Vec<Target>,
}

/// One VMM's boot runs.
#[derive(Debug, Serialize)]
pub struct BootJson<'a> {
    /// Wall seconds, spawn to exit.
    pub time_s: Option<Stat>,
    pub exits: Option<BootExits>,
    pub accel: Option<&'a str>,
    pub note: Option<&'a str>,
    /// The phases and per-boot figures (None for a VMM that never ran).
    pub phases: Option<&'a BootPhases>,
    /// Every run's wall seconds (empty for a VMM that never ran).
    pub time_samples_s: &'a [f64],
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

    fn harness_doc(timing: serde_json::Value, insn: u64, io: u64) -> RunJson<'static> {
        serde_json::from_value(json!({
            "vmm": "harness",
            "platform": {"kvm": "kvm_pvm", "nested": true, "description": "x"},
            "outcome": {"kind": "debug_exit", "guest_value": 16, "exit_code": 0, "message": null},
            "ktap": {"plan": 0, "passed": 0, "failed": 0, "skipped": 0, "complete": true,
                     "missing": []},
            "elapsed_ms": 1.0,
            "exits": {"total": io, "by_reason": {"io": io}, "by_device": [], "by_addr": [],
                      "mmio_addr_overflow": 0, "pio_addr_overflow": 0},
            "kvm_stats": {"vcpu0": {"exits": io + 5, "io_exits": io, "halt_exits": 0,
                                    "insn_emulation": insn}},
            "notes": [], "phases": [],
            "timing": timing
        }))
        .unwrap()
    }

    #[test]
    fn phases_over_runs() {
        let docs = [
            harness_doc(
                json!({"start_to_first_run_ms": 4.0, "cpu_to_first_run_ms": 3.0,
                       "first_run_monotonic_ns": 1_005_000_000u64,
                       "first_run_to_ktap_ms": 10.0, "ktap_to_exit_ms": 1.0,
                       "vm_rss_kib": 6000, "guest_rss_kib": 2000}),
                3000,
                40,
            ),
            harness_doc(
                json!({"start_to_first_run_ms": 2.0, "cpu_to_first_run_ms": 1.0,
                       "first_run_monotonic_ns": 2_003_000_000u64,
                       "first_run_to_ktap_ms": 30.0, "ktap_to_exit_ms": 3.0,
                       "vm_rss_kib": 5000, "guest_rss_kib": null}),
                1000,
                60,
            ),
            // An old child without `timing`: only its wall time and stats count.
            serde_json::from_value(json!({
                "vmm": "harness",
                "platform": {"kvm": "kvm_pvm", "nested": true, "description": "x"},
                "outcome": {"kind": "debug_exit", "guest_value": 16, "exit_code": 0,
                            "message": null},
                "ktap": {"plan": 0, "passed": 0, "failed": 0, "skipped": 0,
                         "complete": true, "missing": []},
                "elapsed_ms": 1.0, "kvm_stats": null, "notes": [], "phases": []
            }))
            .unwrap(),
        ];
        let runs = [
            (1_000_000_000, 0.020, &docs[0]),
            (2_000_000_000, 0.040, &docs[1]),
            (3_000_000_000, 0.030, &docs[2]),
        ];
        let p = BootPhases::of(runs);
        let st = |median, min, max| Some(Stat { median, min, max });
        assert_eq!(p.spawn_to_first_run_ms, st(4.0, 3.0, 5.0));
        assert_eq!(p.start_to_first_run_ms, st(3.0, 2.0, 4.0));
        assert_eq!(p.cpu_to_first_run_ms, st(2.0, 1.0, 3.0));
        assert_eq!(p.first_run_to_ktap_ms, st(20.0, 10.0, 30.0));
        assert_eq!(p.ktap_to_exit_ms, st(2.0, 1.0, 3.0));
        assert_eq!(p.total_ms, st(30.0, 20.0, 40.0));
        assert_eq!(p.insn_emulation, st(2000.0, 1000.0, 3000.0));
        // Only the run that could read its guest mapping gives an overhead.
        assert_eq!(p.overhead_rss_kib, st(4000.0, 4000.0, 4000.0));
        assert_eq!(p.kvm_exits["io_exits"], st(50.0, 40.0, 60.0).unwrap());
        assert_eq!(p.kvm_exits["exits"], st(50.0 + 5.0, 45.0, 65.0).unwrap());
        assert!(!p.kvm_exits.contains_key("insn_emulation"));
        assert_eq!(p.user_exits["io"], st(50.0, 40.0, 60.0).unwrap());
        let t = p.to_text();
        assert!(t.contains("first KVM_RUN -> first KTAP line"), "{t}");
        assert!(t.contains("io_exits=50"), "{t}");
        assert!(!t.contains("halt_exits"), "{t}");
        // A spawn mark after the child's entry (clocks gone wrong) is left out, not negative.
        let p = BootPhases::of([(9_000_000_000, 0.02, &docs[0])]);
        assert_eq!(p.spawn_to_first_run_ms, None);
    }

    #[test]
    fn targets_from_measurements() {
        let doc = harness_doc(
            json!({"cpu_to_first_run_ms": 3.0, "vm_rss_kib": 10240, "guest_rss_kib": 2048}),
            2500,
            10,
        );
        let mut harness = BootRow::from_runs("run", Stat::of(&[0.010]), None, None);
        harness.phases = Some(BootPhases::of([(0, 0.010, &doc)]));
        let rep = BenchReport {
            platform: Platform {
                kvm: "kvm_pvm".into(),
                nested: true,
            },
            floor: vec![],
            floor_note: None,
            harness,
            qemu_kvm: BootRow::unavailable("qemu", "no KVM"),
            qemu_tcg: BootRow::from_runs("qemu", Stat::of(&[0.100]), None, None),
            qemu_primary: Accel::Tcg,
            runs: 1,
            blk: None,
            net: None,
            console: None,
        };
        let met: Vec<Option<bool>> = rep.targets().iter().map(|t| t.met).collect();
        // 10 ms <= 20; 0.1 <= 0.2; 3 CPU-ms <= 8; 2500 > 2000; 8 MiB > 5.
        assert_eq!(
            met,
            [Some(true), Some(true), Some(true), Some(false), Some(false)]
        );
        let t = rep.to_text();
        assert!(
            t.contains("targets: empty run, wall ms <= 20: 10.00 met"),
            "{t}"
        );
        assert!(
            t.contains("harness/qemu-kvm: n/a, harness/qemu-tcg: 0.100"),
            "{t}"
        );
        assert!(t.contains("  qemu-kvm "), "{t}");
        let j = serde_json::to_value(rep.to_json()).unwrap();
        assert_eq!(
            j["boot"]["ratio_harness_over_qemu"],
            j["boot"]["ratio_harness_over_qemu_tcg"]
        );
        assert!(j["boot"]["ratio_harness_over_qemu_kvm"].is_null());
        assert_eq!(j["boot"]["targets"][3]["met"], false);
        assert_eq!(
            j["boot"]["harness"]["phases"]["insn_emulation"]["median"],
            2500.0
        );
        // Nothing measured: no verdict.
        let none = BootRow::unavailable("run", "no KVM");
        let rep = BenchReport {
            harness: none,
            ..rep
        };
        assert!(rep.targets().iter().all(|t| t.met.is_none()));
        assert!(rep.to_text().contains("not measured"));
    }

    #[test]
    fn boot_rows_keep_every_run() {
        let mut row = BootRow::from_runs("run", Stat::of(&[0.03, 0.01, 0.02]), None, None);
        row.samples_s = vec![0.03, 0.01, 0.02];
        let j = serde_json::to_value(row.to_json()).unwrap();
        assert_eq!(j["time_samples_s"], json!([0.03, 0.01, 0.02]));
        assert_eq!(j["time_s"]["median"], 0.02);
        let j = serde_json::to_value(BootRow::unavailable("qemu", "no").to_json()).unwrap();
        assert_eq!(j["time_samples_s"], json!([]));
    }

    #[test]
    fn report_with_qemu_missing() {
        let line = super::super::parse_bench_line(
            "# bench: floor.port_out_userspace ns=60000 min=1 max=2 n=100 x=y batch_p50=1,2",
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
            qemu_kvm: BootRow::unavailable("qemu", "QEMU is not installed"),
            qemu_tcg: BootRow::unavailable("qemu", "QEMU is not installed"),
            qemu_primary: Accel::Kvm,
            runs: 2,
            blk: None,
            net: None,
            console: None,
        };
        let t = rep.to_text();
        assert!(t.contains("x=y") && !t.contains("batch_p50"), "{t}");
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
