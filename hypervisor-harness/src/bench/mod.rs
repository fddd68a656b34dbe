//! `bench`: the floor (what one exit costs, per path) and boot time against QEMU.
//! Every run is a child process (our own binary), so each VM gets a fresh process; its
//! `--exits-json` document is read back as the [`RunJson`] it wrote.

pub mod blk;
pub mod blk_targets;
pub mod compare;
pub mod console;
pub mod net;
mod net_tap;
pub mod net_user;
pub mod profile;
pub mod progress;
pub mod report;
pub mod report_html;

use crate::error::HarnessError;
use crate::platform::Platform;
use crate::shared::{kernel_or_default, write_json, Accel, BenchAction, BenchArgs, RunJson};
use crate::vmm::exits::ExitsJson;
use report::{BenchReport, BootPhases, BootRow, FloorRow, Stat};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;
use vmm_sys_util::tempdir::TempDir;
use vmm_sys_util::tempfile::TempFile;

/// One `# bench: <name> key=value ...` diagnostic.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchLine {
    pub name: String,
    pub ns: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub n: Option<u64>,
    /// Keys we don't know, kept as they came.
    pub extra: BTreeMap<String, String>,
}

/// Parse a KTAP diagnostic line `# bench: floor.x ns=1 min=1 max=2 n=10`. Malformed lines
/// (no name, a token without `=`, a known key with a non-numeric value) give None.
pub fn parse_bench_line(line: &str) -> Option<BenchLine> {
    let rest = line
        .trim_start()
        .strip_prefix('#')?
        .trim_start()
        .strip_prefix("bench:")?;
    let mut toks = rest.split_whitespace();
    let name = toks.next()?;
    if name.contains('=') {
        return None;
    }
    let mut b = BenchLine {
        name: name.to_string(),
        ns: None,
        min: None,
        max: None,
        n: None,
        extra: BTreeMap::new(),
    };
    for t in toks {
        let (k, v) = t.split_once('=')?;
        if k.is_empty() {
            return None;
        }
        match k {
            "ns" => b.ns = Some(v.parse().ok()?),
            "min" => b.min = Some(v.parse().ok()?),
            "max" => b.max = Some(v.parse().ok()?),
            "n" => b.n = Some(v.parse().ok()?),
            _ => {
                b.extra.insert(k.to_string(), v.to_string());
            }
        }
    }
    Some(b)
}

/// Where each floor measurement exits: (space, offset from its BAR, BAR index).
pub fn floor_site(name: &str) -> Option<(&'static str, u64, usize)> {
    use crate::devices::floor::*;
    Some(match name {
        "port_out_userspace" => ("pio", IO_USERSPACE, 0),
        "port_out_ioeventfd" => ("pio", IO_IOEVENTFD, 0),
        "notify_irq_roundtrip" => ("pio", IO_DOORBELL, 0),
        "mmio_write_userspace" => ("mmio", MMIO_USERSPACE, 1),
        "mmio_write_ioeventfd" => ("mmio", MMIO_IOEVENTFD, 1),
        _ => return None,
    })
}

/// Exits recorded at (space, addr) in a `run --exits-json` document's `exits`.
pub fn exits_at(exits: &ExitsJson, space: &str, addr: u64) -> u64 {
    exits
        .by_addr
        .iter()
        .filter(|e| e.space == space && e.addr == addr)
        .map(|e| e.count)
        .sum()
}

pub struct ChildRun {
    pub code: i32,
    pub stdout: String,
    pub last_err: String,
    pub secs: f64,
    /// CLOCK_MONOTONIC just before the spawn (the child reports its first KVM_RUN on it).
    pub spawn_monotonic_ns: u64,
    /// Its `--exits-json` document, or why there is none.
    pub json: Result<RunJson<'static>, String>,
}

/// A child's `--exits-json` document: missing, empty (the child never wrote it) and malformed
/// are errors that say which.
fn read_run_json(path: &Path) -> Result<RunJson<'static>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read its --exits-json {}: {e}", path.display()))?;
    if text.trim().is_empty() {
        return Err("it wrote no --exits-json document".into());
    }
    serde_json::from_str(&text).map_err(|e| format!("its --exits-json document is malformed: {e}"))
}

/// Spawn our own binary with `args` (plus `--exits-json` to a temp file).
pub fn spawn_self(args: &[String], tag: &str) -> Result<ChildRun, HarnessError> {
    spawn_self_under(&[], args, tag)
}

/// [`spawn_self`] under `wrapper` (a command that runs ours, e.g. `ip netns exec NS`), or
/// directly when it is empty.
pub fn spawn_self_under(
    wrapper: &[String],
    args: &[String],
    tag: &str,
) -> Result<ChildRun, HarnessError> {
    progress::child(tag, || spawn_child(wrapper, args, tag))
}

fn spawn_child(wrapper: &[String], args: &[String], tag: &str) -> Result<ChildRun, HarnessError> {
    let exe = std::env::current_exe()
        .map_err(|e| HarnessError::Other(format!("cannot find our own binary: {e}")))?;
    // The child's --exits-json: an empty file until it writes one, removed when dropped.
    let json_file =
        TempFile::new_with_prefix(std::env::temp_dir().join(format!("hh-bench-{tag}-")))
            .map_err(|e| HarnessError::Other(format!("cannot create a temporary file: {e}")))?;
    let json_path = json_file.as_path();
    let spawn_monotonic_ns = crate::vmm::timing::monotonic_ns();
    let start = Instant::now();
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let out = cmd
        .args(args)
        .arg("--exits-json")
        .arg(json_path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| HarnessError::Other(format!("cannot spawn the harness: {e}")))?;
    let secs = start.elapsed().as_secs_f64();
    let json = read_run_json(json_path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last_err = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .unwrap_or("")
        .to_string();
    Ok(ChildRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        last_err,
        secs,
        spawn_monotonic_ns,
        json,
    })
}

fn common_args(sub: &str, kernel: &Path, a: &BenchArgs, cmdline: &str) -> Vec<String> {
    vec![
        sub.into(),
        "--kernel".into(),
        kernel.display().to_string(),
        "--mem".into(),
        format!("{}M", a.mem >> 20),
        "--cmdline".into(),
        cmdline.into(),
        "--timeout".into(),
        a.timeout.to_string(),
    ]
}

fn fatal(code: i32) -> bool {
    matches!(code, 64 | 65 | 69 | 70)
}

fn floor_section(
    kernel: &Path,
    a: &BenchArgs,
) -> Result<(Vec<FloorRow>, Option<String>), HarnessError> {
    let r = spawn_self(&common_args("run", kernel, a, "bench=floor"), "floor")?;
    if fatal(r.code) {
        return Err(HarnessError::Other(format!(
            "floor run failed: {}",
            r.last_err
        )));
    }
    let exit_note =
        (r.code != 0).then(|| format!("floor run exit code {}: {}", r.code, r.last_err));
    let json_note = r.json.as_ref().err().map(|e| format!("floor run: {e}"));
    let note = match (exit_note, json_note) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    };
    let doc = r.json.as_ref().ok();
    let bars = doc.and_then(|j| j.floor);
    let exits = doc.and_then(|j| j.exits.as_ref());
    let mut rows = Vec::new();
    for line in r.stdout.lines() {
        let Some(b) = parse_bench_line(line) else {
            continue;
        };
        let Some(short) = b.name.strip_prefix("floor.") else {
            continue;
        };
        let exits = match (floor_site(short), doc) {
            (Some((space, off, bar)), Some(_)) => {
                let base = bars.map_or(0, |f| if bar == 0 { f.bar0 } else { f.bar1 });
                Some(exits.map_or(0, |e| exits_at(e, space, base + off)))
            }
            _ => None,
        };
        rows.push(FloorRow {
            name: short.to_string(),
            line: b,
            exits,
        });
    }
    Ok((rows, note))
}

fn boot_runs(
    sub: &str,
    kernel: &Path,
    a: &BenchArgs,
    extra: &[String],
) -> Result<BootRow, HarnessError> {
    let mut args = common_args(sub, kernel, a, "tests=none");
    args.extend(["--serial-log".to_string(), "/dev/null".to_string()]);
    args.extend_from_slice(extra);
    let mut times = Vec::new();
    // Every run's (spawn time, document), for the phases.
    let mut docs = Vec::new();
    let mut note = None;
    for i in 0..a.runs {
        let r = spawn_self(&args, &format!("{sub}{i}"))?;
        if r.code == 69 && sub == "qemu" {
            return Ok(BootRow::unavailable(sub, &r.last_err));
        }
        if fatal(r.code) {
            return Err(HarnessError::Other(format!(
                "{sub} boot run failed: {}",
                r.last_err
            )));
        }
        if r.code != 0 && note.is_none() {
            note = Some(format!("exit code {}: {}", r.code, r.last_err));
        }
        times.push(r.secs);
        match r.json {
            Ok(j) => docs.push((r.spawn_monotonic_ns, r.secs, j)),
            Err(e) if note.is_none() => note = Some(format!("run {i}: {e}")),
            Err(_) => {}
        }
    }
    let phases = (!docs.is_empty())
        .then(|| BootPhases::of(docs.iter().map(|(spawn, secs, j)| (*spawn, *secs, j))));
    // The first run's document stays in the row, as before.
    let first_json = docs.into_iter().next().map(|(_, _, j)| j);
    let mut row = BootRow::from_runs(sub, Stat::of(&times), first_json, note);
    row.phases = phases;
    row.samples_s = times;
    Ok(row)
}

/// The storage section's VMMs. Our harness with its queues on an I/O thread (adaptive polling
/// at its default), without polling, with `cache=none` (O_DIRECT through io_uring), and inline
/// in the vCPU thread; QEMU with its defaults, with an iothread (its default adaptive
/// polling), and with that plus `cache=none,aio=io_uring`. The tuned configurations run the
/// virtio paths only: IDE has no iothread, polling or io_uring on either side.
fn storage_vmms(qemu_extra: Vec<String>) -> Vec<blk::StorageVmm> {
    let all = "virtio_polled,virtio_msix,ide_pio,ide_dma";
    let virtio = "virtio_polled,virtio_msix";
    let io_mode = |mode: &str| vec!["--io-mode".to_string(), mode.to_string()];
    let qemu_with = |flags: &[&str]| {
        let mut args = qemu_extra.clone();
        args.extend(flags.iter().map(|f| f.to_string()));
        args
    };
    let vmm = |label, sub, args, paths, virtio_opts| blk::StorageVmm {
        label,
        sub,
        args,
        paths,
        virtio_opts,
    };
    vec![
        vmm("harness-thread", "run", io_mode("thread"), all, ""),
        vmm(
            "harness-thread-nopoll",
            "run",
            io_mode("thread"),
            virtio,
            ",poll-max-ns=0",
        ),
        vmm(
            "harness-thread-io_uring",
            "run",
            io_mode("thread"),
            virtio,
            ",cache=none",
        ),
        vmm("harness-inline", "run", io_mode("inline"), virtio, ""),
        vmm("qemu", "qemu", qemu_with(&[]), all, ""),
        vmm(
            "qemu-iothread",
            "qemu",
            qemu_with(&["--iothread"]),
            virtio,
            "",
        ),
        vmm(
            "qemu-iothread-io_uring",
            "qemu",
            qemu_with(&["--iothread", "--cache-none"]),
            virtio,
            "",
        ),
    ]
}

/// `bench --json`'s document: where the run came from, then the report.
#[derive(serde::Serialize)]
struct BenchDoc<'a> {
    meta: report_html::RunMeta,
    #[serde(flatten)]
    report: report::BenchJson<'a>,
}

pub fn cmd_bench(a: &BenchArgs) -> Result<i32, HarnessError> {
    match &a.action {
        Some(BenchAction::Compare { a, b, threshold }) => {
            return compare::cmd_compare(a, b, *threshold)
        }
        Some(BenchAction::Report { json, out }) => return report_html::cmd_report(json, out),
        None => {}
    }
    if a.ci_profile {
        return profile::cmd_ci_profile(a);
    }
    let kernel = kernel_or_default(&a.kernel)?;
    if !kernel.is_file() {
        return Err(HarnessError::Image(format!(
            "cannot open kernel {}",
            kernel.display()
        )));
    }
    let platform = Platform::detect();
    let storage_runs = if a.skip_storage {
        0
    } else {
        storage_vmms(vec![]).len()
    };
    let net_runs = if a.skip_net {
        0
    } else {
        net::peer_configs().len()
            + net::stream_configs(Path::new("peer.sock"), &[]).len()
            + net::tap_configs(net_tap::TAP_NAME, &[], &[]).len()
    };
    // The floor, three VMMs' boots, storage, network, the console under both VMMs.
    progress::begin((1 + 3 * a.runs as usize + storage_runs + net_runs + 2) as u64);
    progress::stage(&format!("platform {platform}; floor run"));
    let (floor, floor_note) = floor_section(&kernel, a)?;
    progress::stage(&format!("boot runs under the harness ({})", a.runs));
    let harness = boot_runs("run", &kernel, a, &[])?;
    // QEMU with each accelerator on the same image; `qemu` (the row and JSON key of old) is
    // the one --qemu-accel names, auto meaning KVM when QEMU could use it.
    let qemu_boot = |accel: &str| {
        progress::stage(&format!("boot runs under QEMU -accel {accel} ({})", a.runs));
        boot_runs(
            "qemu",
            &kernel,
            a,
            &[
                "--accel".into(),
                accel.into(),
                "--qemu".into(),
                a.qemu.clone(),
            ],
        )
    };
    let qemu_kvm = qemu_boot("kvm")?;
    let qemu_tcg = qemu_boot("tcg")?;
    let qemu_primary = match a.qemu_accel {
        Accel::Kvm => Accel::Kvm,
        Accel::Tcg => Accel::Tcg,
        Accel::Auto if qemu_kvm.time.is_some() => Accel::Kvm,
        Accel::Auto => Accel::Tcg,
    };
    let accel = qemu_primary.name();
    let blk = if a.skip_storage {
        None
    } else {
        let qemu_extra = vec![
            "--accel".to_string(),
            accel.to_string(),
            "--qemu".to_string(),
            a.qemu.clone(),
        ];
        let vmms = storage_vmms(qemu_extra);
        // The disk images, removed with the directory when it drops.
        let dir =
            TempDir::new_with_prefix(blk::image_dir_base().join("hh-bench-")).map_err(|e| {
                HarnessError::Other(format!("cannot create a temporary directory: {e}"))
            })?;
        Some(blk::run_section(
            |sub, cmdline| common_args(sub, &kernel, a, cmdline),
            &vmms,
            dir.as_path(),
        )?)
    };
    let net = if a.skip_net {
        None
    } else {
        let qemu_extra = vec![
            "--accel".to_string(),
            accel.to_string(),
            "--qemu".to_string(),
            a.qemu.clone(),
        ];
        let floor_roundtrip_ns = floor
            .iter()
            .find(|r| r.name == "notify_irq_roundtrip")
            .and_then(|r| r.line.ns);
        // The peer's socket, removed with the directory when it drops.
        let dir =
            TempDir::new_with_prefix(std::env::temp_dir().join("hh-bench-net-")).map_err(|e| {
                HarnessError::Other(format!("cannot create a temporary directory: {e}"))
            })?;
        Some(net::run_section(
            &|sub, cmdline| common_args(sub, &kernel, a, cmdline),
            &qemu_extra,
            dir.as_path(),
            false,
            floor_roundtrip_ns,
        )?)
    };
    let console = {
        let qemu_extra = [
            "--accel".to_string(),
            accel.to_string(),
            "--qemu".to_string(),
            a.qemu.clone(),
        ];
        let dir = TempDir::new_with_prefix(std::env::temp_dir().join("hh-bench-console-"))
            .map_err(|e| {
                HarnessError::Other(format!("cannot create a temporary directory: {e}"))
            })?;
        console::run_section(
            &|sub, cmdline| common_args(sub, &kernel, a, cmdline),
            &qemu_extra,
            dir.as_path(),
        )?
    };
    let rep = BenchReport {
        platform,
        floor,
        floor_note,
        harness,
        qemu_kvm,
        qemu_tcg,
        qemu_primary,
        runs: a.runs,
        blk,
        net,
        console: Some(console),
    };
    progress::end();
    print!("{}", rep.to_text());
    let doc = BenchDoc {
        meta: report_html::RunMeta::now(&rep.platform.kvm),
        report: rep.to_json(),
    };
    if let Some(p) = &a.json {
        write_json(p, &doc)?;
    }
    if let Some(dir) = &a.report {
        let doc = serde_json::to_value(&doc).map_err(|e| HarnessError::Other(e.to_string()))?;
        let svgs = report_html::write_report(&doc, dir)?;
        eprintln!(
            "bench: report with {} charts in {}",
            svgs.len(),
            dir.join("index.html").display()
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_lines() {
        let b = parse_bench_line(
            "# bench: floor.port_out_userspace ns=61234 min=58000 max=90000 n=1000 ring=3",
        )
        .unwrap();
        assert_eq!(b.name, "floor.port_out_userspace");
        assert_eq!(
            (b.ns, b.min, b.max, b.n),
            (Some(61234.0), Some(58000.0), Some(90000.0), Some(1000))
        );
        assert_eq!(b.extra.get("ring").map(String::as_str), Some("3"));
        assert!(parse_bench_line("#bench: floor.x ns=1.5").is_some());
        for bad in [
            "bench: floor.x ns=1",
            "# bench:",
            "# bench: ns=1",
            "# bench: floor.x ns=abc",
            "# bench: floor.x junk",
            "# bench: floor.x =5",
            "# other: x",
            "ok 1 x",
        ] {
            assert_eq!(parse_bench_line(bad), None, "{bad}");
        }
    }

    #[test]
    fn exits_lookup() {
        let doc: ExitsJson = serde_json::from_value(serde_json::json!({
        "total": 1009, "by_reason": {"io": 1002, "mmio": 7}, "by_device": [],
        "mmio_addr_overflow": 0, "pio_addr_overflow": 0,
        "by_addr": [
            {"space": "pio", "addr": 0xc000, "device": "floor", "dir": "write", "count": 1000},
            {"space": "pio", "addr": 0xc000, "device": "floor", "dir": "read", "count": 2},
            {"space": "mmio", "addr": 0xc000, "device": "floor", "dir": "write", "count": 7},
        ]}))
        .unwrap();
        assert_eq!(exits_at(&doc, "pio", 0xc000), 1002);
        assert_eq!(exits_at(&doc, "mmio", 0xc000), 7);
        assert_eq!(exits_at(&doc, "pio", 0xc004), 0);
        assert_eq!(floor_site("mmio_write_ioeventfd"), Some(("mmio", 0x100, 1)));
        assert_eq!(floor_site("loop_ring3"), None);
    }

    #[test]
    fn storage_vmms_keep_the_defaults_beside_the_tuned() {
        let q = vec!["--qemu".to_string(), "q".to_string()];
        let vmms = storage_vmms(q.clone());
        let labels: Vec<&str> = vmms.iter().map(|v| v.label).collect();
        assert_eq!(
            labels,
            [
                "harness-thread",
                "harness-thread-nopoll",
                "harness-thread-io_uring",
                "harness-inline",
                "qemu",
                "qemu-iothread",
                "qemu-iothread-io_uring"
            ]
        );
        let by = |l: &str| vmms.iter().find(|v| v.label == l).unwrap();
        // Today's rows as they were: every path, no disk options, QEMU's defaults.
        for l in ["harness-thread", "qemu"] {
            assert_eq!(by(l).paths, "virtio_polled,virtio_msix,ide_pio,ide_dma");
            assert_eq!(by(l).virtio_opts, "");
        }
        assert_eq!(by("qemu").args, q);
        assert_eq!(by("harness-thread").args, ["--io-mode", "thread"]);
        assert_eq!(by("harness-inline").args, ["--io-mode", "inline"]);
        assert_eq!(by("harness-thread-nopoll").virtio_opts, ",poll-max-ns=0");
        assert_eq!(by("harness-thread-io_uring").virtio_opts, ",cache=none");
        assert_eq!(by("qemu-iothread").args[2..], ["--iothread"]);
        assert_eq!(
            by("qemu-iothread-io_uring").args[2..],
            ["--iothread", "--cache-none"]
        );
        for v in &vmms {
            assert_eq!(v.sub == "qemu", blk::QEMU_VMMS.contains(&v.label), "{v:?}");
        }
        // The tuned configurations run the virtio paths only.
        for l in [
            "harness-thread-nopoll",
            "harness-thread-io_uring",
            "harness-inline",
            "qemu-iothread",
            "qemu-iothread-io_uring",
        ] {
            assert_eq!(by(l).paths, "virtio_polled,virtio_msix", "{l}");
        }
    }

    #[test]
    fn child_json_errors_say_what_went_wrong() {
        let dir = TempDir::new_with_prefix(std::env::temp_dir().join("hh-bench-test-")).unwrap();
        let path = dir.as_path().join("exits.json");
        let err = read_run_json(&path).unwrap_err();
        assert!(err.starts_with("cannot read its --exits-json"), "{err}");
        std::fs::write(&path, "").unwrap();
        assert_eq!(
            read_run_json(&path).unwrap_err(),
            "it wrote no --exits-json document"
        );
        for bad in ["{", "[]", r#"{"vmm": "harness"}"#, r#"{"vmm": 5}"#] {
            std::fs::write(&path, bad).unwrap();
            let err = read_run_json(&path).unwrap_err();
            assert!(
                err.starts_with("its --exits-json document is malformed: "),
                "{err}"
            );
        }
    }
}
