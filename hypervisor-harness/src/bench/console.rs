//! The console section: throughput of the emulated 16550 (an exit per byte, and one per status
//! read) against virtio-console's port 0, under our harness and QEMU, with KVM exits per KiB
//! from the rows' phase marks. The guest's `bench=console` writes both; the host drains port
//! 0's socket (`--console socket:PATH`) and checks it got every byte.

use super::blk::phases;
use super::{parse_bench_line, spawn_self};
use crate::error::HarnessError;
use serde::Serialize;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleRow {
    pub vmm: String,
    /// `serial_tx` or `virtio_tx`.
    pub name: String,
    pub ns_per_kib: f64,
    pub kib: u64,
    pub kvm_exits_per_kib: Option<f64>,
    /// Each batch's ns per KiB, in the order written (the guest's `batch_ns_per_kib=`): what
    /// `bench compare` tests. Empty from a guest that printed none.
    pub samples_ns_per_kib: Vec<f64>,
}

impl ConsoleRow {
    pub fn bytes_per_sec(&self) -> f64 {
        if self.ns_per_kib > 0.0 {
            1024.0 * 1e9 / self.ns_per_kib
        } else {
            0.0
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ConsoleSection {
    pub rows: Vec<ConsoleRow>,
    pub notes: Vec<String>,
}

/// Read everything the child's port 0 sends, connecting once its socket is there; stops
/// trying when `done` is set. Returns the bytes received.
fn drain(path: &Path, done: &AtomicBool) -> u64 {
    let stream = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(_) if done.load(Ordering::SeqCst) => return 0,
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let mut stream = stream;
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    total
}

/// Run `bench=console` under our harness and QEMU (`qemu_extra`: its accelerator and binary);
/// sockets go into `dir`.
pub fn run_section(
    base_args: &dyn Fn(&str, &str) -> Vec<String>,
    qemu_extra: &[String],
    dir: &Path,
) -> Result<ConsoleSection, HarnessError> {
    let mut section = ConsoleSection::default();
    for (label, sub, extra) in [("harness", "run", &[][..]), ("qemu", "qemu", qemu_extra)] {
        super::progress::stage(&format!("console under {label}"));
        let sock = dir.join(format!("console-{label}.sock"));
        let mut args = base_args(sub, "bench=console");
        args.extend([
            "--console".to_string(),
            format!("socket:{}", sock.display()),
        ]);
        args.extend(extra.iter().cloned());
        let done = Arc::new(AtomicBool::new(false));
        let drainer = {
            let (sock, done) = (sock.clone(), done.clone());
            std::thread::spawn(move || drain(&sock, &done))
        };
        let r = spawn_self(&args, &format!("console-{label}"));
        done.store(true, Ordering::SeqCst);
        let received = drainer.join().unwrap_or(0);
        let r = r?;
        if r.code == 69 && sub == "qemu" {
            section.notes.push(format!("{label}: n/a ({})", r.last_err));
            continue;
        }
        if r.code != 0 {
            section
                .notes
                .push(format!("{label}: exit code {}: {}", r.code, r.last_err));
        }
        let marks = r.json.as_ref().map_or(&[][..], |j| &j.phases[..]);
        let marks = phases(marks);
        for b in r.stdout.lines().filter_map(parse_bench_line) {
            let Some(name) = b.name.strip_prefix("console.") else {
                continue;
            };
            let (Some(ns), Some(kib)) = (b.ns, b.n) else {
                continue;
            };
            let exits = marks.get(b.name.as_str()).and_then(|(begin, end)| {
                let (a, z) = (begin.kvm_exits?, end.kvm_exits?);
                Some(z.saturating_sub(a) as f64 / kib.max(1) as f64)
            });
            if name == "virtio_tx" && received != kib * 1024 {
                section.notes.push(format!(
                    "{label}: the host received {received} of the guest's {} console bytes",
                    kib * 1024
                ));
            }
            section.rows.push(ConsoleRow {
                vmm: label.to_string(),
                name: name.to_string(),
                ns_per_kib: ns,
                kib,
                kvm_exits_per_kib: exits,
                samples_ns_per_kib: b
                    .extra
                    .get("batch_ns_per_kib")
                    .and_then(|v| v.split(',').map(|x| x.parse().ok()).collect())
                    .unwrap_or_default(),
            });
        }
    }
    Ok(section)
}

/// One row as `bench --json` writes it.
#[derive(Debug, Serialize)]
pub struct ConsoleRowJson<'a> {
    pub vmm: &'a str,
    pub name: &'a str,
    pub kib: u64,
    pub ns_per_kib: f64,
    pub bytes_per_s: f64,
    pub kvm_exits_per_kib: Option<f64>,
    pub samples_ns_per_kib: &'a [f64],
}

#[derive(Debug, Serialize)]
pub struct ConsoleSectionJson<'a> {
    pub rows: Vec<ConsoleRowJson<'a>>,
    pub notes: &'a [String],
}

impl ConsoleSection {
    pub fn to_json(&self) -> ConsoleSectionJson<'_> {
        ConsoleSectionJson {
            rows: self
                .rows
                .iter()
                .map(|r| ConsoleRowJson {
                    vmm: &r.vmm,
                    name: &r.name,
                    kib: r.kib,
                    ns_per_kib: r.ns_per_kib,
                    bytes_per_s: r.bytes_per_sec(),
                    kvm_exits_per_kib: r.kvm_exits_per_kib,
                    samples_ns_per_kib: &r.samples_ns_per_kib,
                })
                .collect(),
            notes: &self.notes,
        }
    }

    pub fn to_text(&self) -> String {
        let mut out = String::from(
            "\nconsole (guest -> host, port 0 against COM1)\n  \
             vmm      row         KiB     KiB/s  exits/KiB  vs 16550\n",
        );
        for r in &self.rows {
            let serial = self
                .rows
                .iter()
                .find(|s| s.vmm == r.vmm && s.name == "serial_tx")
                .map(|s| s.bytes_per_sec());
            let speedup = match serial {
                Some(s) if s > 0.0 && r.name != "serial_tx" => {
                    format!("{:.0}x", r.bytes_per_sec() / s)
                }
                _ => "-".into(),
            };
            out.push_str(&format!(
                "  {:<8} {:<10} {:>5} {:>9.0} {:>10} {:>9}\n",
                r.vmm,
                r.name,
                r.kib,
                r.bytes_per_sec() / 1024.0,
                r.kvm_exits_per_kib
                    .map_or("-".into(), |e| format!("{e:.2}")),
                speedup
            ));
        }
        for n in &self.notes {
            out.push_str(&format!("  note: {n}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_throughput_exits_and_the_ratio() {
        let row = |vmm: &str, name: &str, ns: f64, exits: f64| ConsoleRow {
            vmm: vmm.into(),
            name: name.into(),
            ns_per_kib: ns,
            kib: 8,
            kvm_exits_per_kib: Some(exits),
            samples_ns_per_kib: vec![ns, ns * 1.5],
        };
        let s = ConsoleSection {
            rows: vec![
                row("harness", "serial_tx", 1e8, 2048.0),
                row("harness", "virtio_tx", 1e5, 0.05),
            ],
            notes: vec!["qemu: n/a".into()],
        };
        assert_eq!(s.rows[0].bytes_per_sec(), 10240.0);
        let t = s.to_text();
        assert!(t.contains("serial_tx"), "{t}");
        assert!(t.contains("2048.00"), "{t}");
        assert!(t.contains("1000x"), "{t}");
        assert!(t.contains("note: qemu: n/a"), "{t}");
        let j = serde_json::to_value(s.to_json()).unwrap();
        assert_eq!(j["rows"][1]["name"], "virtio_tx");
        assert_eq!(j["rows"][1]["kvm_exits_per_kib"], 0.05);
        assert_eq!(j["rows"][0]["bytes_per_s"], 10240.0);
        assert_eq!(
            j["rows"][0]["samples_ns_per_kib"],
            serde_json::json!([1e8, 1.5e8])
        );
    }
}
