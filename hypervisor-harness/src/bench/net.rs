//! The network section of `bench`: the guest's `bench=net` over virtio-net, under our harness
//! (queues on I/O threads, and inline on the notify exit; one and two queue pairs) and under
//! QEMU, against the backends side by side: the in-process `peer`, a `stream` to a
//! `hypervisor-harness peer --listen` child (both VMMs attach to it), and `tap` with
//! `vnet_hdr` on and off inside a network namespace of its own, where the machine allows one.
//! The fully emulated NICs, e1000 and RTL8139, run the same workloads on the same backends
//! (TAP without `vnet_hdr`: they have no header to carry it), so that every row has its
//! paravirtual counterpart.
//!
//! Exits per packet come from the phase snapshots at the guest's `# phase:` lines, as storage
//! does: userspace exits at the NIC's devices, and KVM's count of every exit; interrupts per
//! packet from the guest's own count on the NIC's vectors. The per-packet denominator is every
//! frame the NIC moved during the row (`frames=` on the guest's line).

use super::blk::{device_exits_between, phases};
use super::{net_tap, parse_bench_line, BenchLine, ChildRun};
use crate::error::HarnessError;
use crate::vmm::exits::PhaseMark;
use crate::vmm::net_wiring::NicJson;
use serde::Serialize;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workloads the guest runs, in its order.
pub const WORKLOADS: [&str; 7] = [
    "tx_1514", "tx_64", "rx_1514", "rx_64", "rtt_udp", "tcp_tx", "tcp_rx",
];

/// Rows whose packets move in bulk (the exits target); `rtt_udp` is one packet at a time.
pub fn is_bulk(workload: &str) -> bool {
    workload != "rtt_udp"
}

/// The NIC models of the section, as `--net` and the guest's `net_model=` name them.
pub const NICS: [&str; 3] = ["virtio", "e1000", "rtl8139"];

/// The fully emulated NICs (every register access traps).
pub const EMULATED_NICS: [&str; 2] = ["e1000", "rtl8139"];

/// How rows name a NIC model, which is also the device-name prefix of its exits in the
/// harness's counters (`virtio-net0-notify`, `e1000-0-regs`, `rtl8139-0-io`).
pub fn nic_name(model: &str) -> &str {
    match model {
        "virtio" => "virtio-net",
        other => other,
    }
}

/// One `net.<workload>` row of one configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetRow {
    /// `harness-thread`, `harness-inline`, `qemu`.
    pub vmm: String,
    pub nic: String,
    /// `peer`, `stream`, `tap`, `tap-novnet`.
    pub backend: String,
    pub queues: u16,
    pub workload: String,
    /// The row's own unit: frames sent, datagrams received, round trips, TCP frames.
    #[serde(skip)]
    pub n: u64,
    #[serde(skip)]
    pub bytes: u64,
    #[serde(skip)]
    pub total_ns: f64,
    /// Every frame the NIC moved in the row.
    #[serde(skip)]
    pub frames: u64,
    #[serde(skip)]
    pub irqs: Option<u64>,
    /// RX rows: datagrams asked of the source.
    #[serde(skip)]
    pub requested: Option<u64>,
    pub p50_ns: Option<f64>,
    pub p99_ns: Option<f64>,
    /// Userspace exits at the NIC per packet (harness only).
    pub user_exits_per_packet: Option<f64>,
    /// Every exit KVM counted during the row, per packet (QEMU's from QMP, approximate).
    pub kvm_exits_per_packet: Option<f64>,
    /// What `bench compare` tests, in the order measured: each batch's p50 in ns for a
    /// latency row, each slice's pps for a rate row (the guest's `batch_p50=` or
    /// `batch_pps=`); empty from a guest that printed none, or a malformed list.
    pub samples: Vec<f64>,
}

impl NetRow {
    /// Packets for the per-packet figures: every frame moved, or the row's count if the guest
    /// reported none.
    pub fn packets(&self) -> u64 {
        if self.frames > 0 {
            self.frames
        } else {
            self.n
        }
    }

    pub fn pps(&self) -> Option<f64> {
        (self.total_ns > 0.0).then(|| self.n as f64 / self.total_ns * 1e9)
    }

    pub fn mb_per_s(&self) -> Option<f64> {
        (self.total_ns > 0.0).then(|| self.bytes as f64 / self.total_ns * 1e3)
    }

    pub fn irqs_per_packet(&self) -> Option<f64> {
        let p = self.packets();
        self.irqs.filter(|_| p > 0).map(|i| i as f64 / p as f64)
    }

    /// RX rows: datagrams asked for that never arrived.
    pub fn drops(&self) -> Option<u64> {
        self.requested.map(|r| r.saturating_sub(self.n))
    }

    fn from_line(cfg: &NetConfig, b: &BenchLine) -> Option<Self> {
        let workload = b.name.strip_prefix("net.")?;
        let num = |k: &str| b.extra.get(k).and_then(|v| v.parse::<u64>().ok());
        Some(Self {
            vmm: cfg.vmm.to_string(),
            nic: nic_name(cfg.nic).into(),
            backend: cfg.backend.to_string(),
            queues: cfg.queues,
            workload: workload.to_string(),
            n: b.n?,
            bytes: num("bytes")?,
            total_ns: num("total_ns")? as f64,
            frames: num("frames").unwrap_or(0),
            irqs: num("irqs"),
            requested: num("requested"),
            p50_ns: b.ns,
            p99_ns: b.extra.get("p99").and_then(|v| v.parse().ok()),
            user_exits_per_packet: None,
            kvm_exits_per_packet: None,
            samples: b
                .extra
                .get("batch_p50")
                .or(b.extra.get("batch_pps"))
                .and_then(|v| v.split(',').map(|x| x.parse().ok()).collect())
                .unwrap_or_default(),
        })
    }
}

/// One child run of the guest benchmark: which VMM, attached how.
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub vmm: &'static str,
    /// `run` or `qemu`.
    pub sub: &'static str,
    /// The NIC model ([`NICS`]).
    pub nic: &'static str,
    pub backend: &'static str,
    pub queues: u16,
    /// Arguments after the common ones (`--net`, `--io-mode`, QEMU's).
    pub args: Vec<String>,
    /// A command the child runs under (`ip netns exec NS`), empty for none.
    pub wrapper: Vec<String>,
}

/// The guest's remarks worth a note: its `# net bench:` lines, a skipped test, and the reason
/// a failed one gave (the diagnostic line just before its `not ok`).
pub fn guest_remarks(stdout: &str) -> impl Iterator<Item = String> + '_ {
    let mut previous = "";
    stdout.lines().filter_map(move |l| {
        let l = l.trim();
        let prev = std::mem::replace(&mut previous, l);
        if let Some(n) = l.strip_prefix("# net bench: ") {
            Some(n.to_string())
        } else if l.starts_with("ok ") && l.contains("# SKIP") {
            Some(l.to_string())
        } else if l.starts_with("not ok ") {
            Some(format!("{l}: {}", prev.trim_start_matches("# ")))
        } else {
            None
        }
    })
}

/// Rows of one child run, with exits per packet from its phase marks.
pub fn rows_of(cfg: &NetConfig, stdout: &str, phase_marks: &[PhaseMark]) -> Vec<NetRow> {
    let marks = phases(phase_marks);
    stdout
        .lines()
        .filter_map(parse_bench_line)
        .filter_map(|b| {
            let mut row = NetRow::from_line(cfg, &b)?;
            let packets = row.packets();
            if let (Some((begin, end)), true) = (marks.get(b.name.as_str()), packets > 0) {
                // Per-device counts exist only under our harness (QEMU's come from QMP).
                if !end.device_exits.is_empty() {
                    let dev = device_exits_between(begin, end, &[nic_name(cfg.nic)]);
                    row.user_exits_per_packet = Some(dev as f64 / packets as f64);
                }
                row.kvm_exits_per_packet = match (begin.kvm_exits, end.kvm_exits) {
                    (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / packets as f64),
                    _ => None,
                };
            }
            Some(row)
        })
        .collect()
}

/// The guest's command line for NIC model `nic` with `queues` pairs.
pub fn guest_cmdline(nic: &str, queues: u16, quick: bool) -> String {
    let mut c = format!("bench=net net_model={nic} net_pairs={queues}");
    if quick {
        c += " net_quick=1";
    }
    c
}

/// What the harness's NIC counters (its `net-counters` note) say about a run: which queues
/// carried frames, and the device's drops by reason.
pub fn device_note(notes: &[String]) -> Option<String> {
    let nic = notes.iter().find_map(|n| NicJson::from_note(n))?;
    let queues: Vec<String> = nic
        .queues
        .iter()
        .filter(|q| q.queue != "ctrl")
        .map(|q| format!("{} {}", q.queue, q.frames))
        .collect();
    let mut s = format!(
        "device: {} of {} pairs active; frames {}",
        nic.active_pairs,
        nic.pairs,
        queues.join(", ")
    );
    if !nic.drops.is_empty() {
        let drops: Vec<String> = nic.drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
        s += &format!("; drops {}", drops.join(", "));
    }
    Some(s)
}

/// A `hypervisor-harness peer --listen PATH` child, killed when dropped.
pub struct PeerChild {
    child: Child,
    pub socket: PathBuf,
}

impl PeerChild {
    const START_TIMEOUT: Duration = Duration::from_secs(10);

    pub fn start(socket: &Path) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find our binary: {e}"))?;
        let child = Command::new(exe)
            .arg("peer")
            .arg("--listen")
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start `peer --listen`: {e}"))?;
        let mut peer = Self {
            child,
            socket: socket.to_path_buf(),
        };
        // QEMU's stream client gives up if nobody listens yet: wait until a connect works.
        let deadline = Instant::now() + Self::START_TIMEOUT;
        loop {
            if let Ok(Some(st)) = peer.child.try_wait() {
                return Err(format!("`peer --listen` exited before listening: {st}"));
            }
            if UnixStream::connect(socket).is_ok() {
                return Ok(peer);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "`peer --listen` did not listen on {} within {:?}",
                    socket.display(),
                    Self::START_TIMEOUT
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for PeerChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--net` for one NIC.
fn net_arg(nic: &str, backend: &str, queues: u16) -> String {
    let mut a = format!("{nic}:{backend}");
    if queues > 1 {
        a += &format!(",queues={queues}");
    }
    a
}

/// The harness configurations on the in-process peer: virtio-net in both I/O modes with one
/// and two pairs, then each emulated NIC (their registers are served on the vCPU thread, so
/// the I/O mode does not apply to them).
pub fn peer_configs() -> Vec<NetConfig> {
    let mut v = Vec::new();
    for (vmm, mode) in [("harness-thread", "thread"), ("harness-inline", "inline")] {
        for queues in [1, 2] {
            v.push(NetConfig {
                vmm,
                sub: "run",
                nic: "virtio",
                backend: "peer",
                queues,
                args: vec![
                    "--net".into(),
                    net_arg("virtio", "peer", queues),
                    "--io-mode".into(),
                    mode.into(),
                ],
                wrapper: vec![],
            });
        }
    }
    for nic in EMULATED_NICS {
        v.push(NetConfig {
            vmm: "harness",
            sub: "run",
            nic,
            backend: "peer",
            queues: 1,
            args: vec!["--net".into(), net_arg(nic, "peer", 1)],
            wrapper: vec![],
        });
    }
    v
}

/// The harness's and QEMU's configuration of `nic` on one backend (`--net` NIC:`backend`).
fn both_vmms(
    nic: &'static str,
    label: &'static str,
    backend: &str,
    wrapper: &[String],
    qemu_extra: &[String],
) -> [NetConfig; 2] {
    let net = net_arg(nic, backend, 1);
    let mut harness_args = vec!["--net".to_string(), net.clone()];
    let vmm = if nic == "virtio" {
        harness_args.extend(["--io-mode".to_string(), "thread".to_string()]);
        "harness-thread"
    } else {
        "harness"
    };
    let mut qemu_args = vec!["--net".to_string(), net];
    qemu_args.extend_from_slice(qemu_extra);
    [
        NetConfig {
            vmm,
            sub: "run",
            nic,
            backend: label,
            queues: 1,
            args: harness_args,
            wrapper: wrapper.to_vec(),
        },
        NetConfig {
            vmm: "qemu",
            sub: "qemu",
            nic,
            backend: label,
            queues: 1,
            args: qemu_args,
            wrapper: wrapper.to_vec(),
        },
    ]
}

/// Our harness and QEMU on one stream peer at `socket`, each NIC model in turn.
pub fn stream_configs(socket: &Path, qemu_extra: &[String]) -> Vec<NetConfig> {
    let backend = format!("stream:{}", socket.display());
    NICS.into_iter()
        .flat_map(|nic| both_vmms(nic, "stream", &backend, &[], qemu_extra))
        .collect()
}

/// Our harness and QEMU on the TAP device `tap`, each run under `wrapper` (inside the TAP's
/// namespace): virtio-net with `vnet_hdr` on and off, the emulated NICs with it off.
pub fn tap_configs(tap: &str, wrapper: &[String], qemu_extra: &[String]) -> Vec<NetConfig> {
    let mut v = Vec::new();
    for (backend, vnet_hdr) in [("tap", "on"), ("tap-novnet", "off")] {
        let spec = format!("tap:{tap},vnet_hdr={vnet_hdr}");
        v.extend(both_vmms("virtio", backend, &spec, wrapper, qemu_extra));
    }
    for nic in EMULATED_NICS {
        let spec = format!("tap:{tap},vnet_hdr=off");
        v.extend(both_vmms(nic, "tap-novnet", &spec, wrapper, qemu_extra));
    }
    v
}

/// The whole network section.
#[derive(Debug, Default)]
pub struct NetSection {
    pub rows: Vec<NetRow>,
    pub notes: Vec<String>,
    /// The floor's notify-to-interrupt round trip (median ns), for the RTT target.
    pub floor_roundtrip_ns: Option<f64>,
}

/// Runs one child: its arguments, the wrapper it runs under, a tag for its temp files.
pub type SpawnChild<'a> =
    dyn FnMut(&[String], &[String], &str) -> Result<ChildRun, HarnessError> + 'a;

/// A subcommand's common arguments (kernel, memory, timeout) for a guest command line.
pub type BaseArgs<'a> = dyn Fn(&str, &str) -> Vec<String> + 'a;

/// Run each configuration and collect its rows; `spawn` runs one child (args, wrapper, tag).
pub fn run_configs(
    section: &mut NetSection,
    configs: &[NetConfig],
    base_args: &BaseArgs,
    quick: bool,
    spawn: &mut SpawnChild,
) -> Result<(), HarnessError> {
    for cfg in configs {
        let label = format!(
            "{} {} {} q{}",
            cfg.vmm,
            nic_name(cfg.nic),
            cfg.backend,
            cfg.queues
        );
        super::progress::stage(&format!("network under {label}"));
        let mut args = base_args(cfg.sub, &guest_cmdline(cfg.nic, cfg.queues, quick));
        args.extend(cfg.args.iter().cloned());
        let r = spawn(
            &args,
            &cfg.wrapper,
            &format!(
                "net-{}-{}-{}-q{}",
                cfg.vmm, cfg.nic, cfg.backend, cfg.queues
            ),
        )?;
        if r.code == 69 && cfg.sub == "qemu" {
            section.notes.push(format!("{label}: n/a ({})", r.last_err));
            continue;
        }
        if r.code != 0 {
            section
                .notes
                .push(format!("{label}: exit code {}: {}", r.code, r.last_err));
        }
        match &r.json {
            Err(e) => section.notes.push(format!("{label}: {e}")),
            Ok(j) => {
                if let Some(n) = device_note(&j.notes) {
                    section.notes.push(format!("{label}: {n}"));
                }
            }
        }
        section
            .notes
            .extend(guest_remarks(&r.stdout).map(|n| format!("{label}: {n}")));
        let marks = r.json.as_ref().map_or(&[][..], |j| &j.phases[..]);
        let got = rows_of(cfg, &r.stdout, marks);
        if got.is_empty() {
            section
                .notes
                .push(format!("{label}: the guest printed no net rows"));
        }
        section.rows.extend(got);
    }
    Ok(())
}

/// The whole section: the peer rows, then both VMMs on one stream peer, then TAP. `base_args`
/// gives a subcommand's common arguments (kernel, memory, the guest's command line); the peer's
/// socket goes into `dir`, which the caller removes.
pub fn run_section(
    base_args: &BaseArgs,
    qemu_extra: &[String],
    dir: &Path,
    quick: bool,
    floor_roundtrip_ns: Option<f64>,
) -> Result<NetSection, HarnessError> {
    let mut section = NetSection {
        floor_roundtrip_ns,
        ..NetSection::default()
    };
    let mut spawn = |args: &[String], wrapper: &[String], tag: &str| {
        super::spawn_self_under(wrapper, args, tag)
    };
    run_configs(&mut section, &peer_configs(), base_args, quick, &mut spawn)?;
    super::net_user::run_rows(&mut section, base_args, qemu_extra, quick, &mut spawn)?;
    let socket = dir.join("peer.sock");
    match PeerChild::start(&socket) {
        Ok(peer) => {
            let configs = stream_configs(&peer.socket, qemu_extra);
            run_configs(&mut section, &configs, base_args, quick, &mut spawn)?;
        }
        Err(e) => section.notes.push(format!("stream rows skipped: {e}")),
    }
    if let Some(why) = net_tap::unavailable() {
        section.notes.push(format!("tap rows skipped: {why}"));
        return Ok(section);
    }
    let wrapper = net_tap::TapNamespace::wrapper_for(&net_tap::TapNamespace::name());
    for cfg in tap_configs(net_tap::TAP_NAME, &wrapper, qemu_extra) {
        // A namespace and TAP device of its own per run: a persistent TAP keeps the offloads
        // its last user set (TUNSETOFFLOAD), so a vnet_hdr=off run after a vnet_hdr=on one
        // would be handed partial checksums it has no header to learn of.
        let ns = match net_tap::TapNamespace::create() {
            Ok(ns) => ns,
            Err(e) => {
                section.notes.push(format!(
                    "tap rows skipped: no namespace with a TAP device: {e}"
                ));
                break;
            }
        };
        match net_tap::LinuxPeer::start(&ns) {
            Ok(services) => {
                let r = run_configs(
                    &mut section,
                    std::slice::from_ref(&cfg),
                    base_args,
                    quick,
                    &mut spawn,
                );
                // The services go before their namespace.
                drop(services);
                drop(ns);
                r?;
            }
            Err(e) => {
                section
                    .notes
                    .push(format!("tap rows skipped: the Linux-side services: {e}"));
                break;
            }
        }
    }
    Ok(section)
}

/// One of the issue's targets, measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetTarget {
    pub what: &'static str,
    /// `<=` or `>=`.
    pub op: &'static str,
    pub limit: f64,
    pub measured: Option<f64>,
    /// Which row the measurement came from.
    pub row: Option<String>,
    pub met: Option<bool>,
}

impl NetTarget {
    pub(super) fn new(
        what: &'static str,
        op: &'static str,
        limit: f64,
        found: Option<(f64, String)>,
    ) -> Self {
        let (measured, row) = found.map_or((None, None), |(m, r)| (Some(m), Some(r)));
        Self {
            what,
            op,
            limit,
            measured,
            row,
            met: measured.map(|m| if op == ">=" { m >= limit } else { m <= limit }),
        }
    }
}

fn row_label(r: &NetRow) -> String {
    format!(
        "{} {} {} q{} {}",
        r.vmm, r.nic, r.backend, r.queues, r.workload
    )
}

fn is_emulated(r: &NetRow) -> bool {
    r.nic != nic_name("virtio")
}

/// `a` over `b`, when both exist and the ratio is a number.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? / b?).filter(|v| v.is_finite())
}

impl NetSection {
    /// The QEMU row this one compares with: same NIC, workload and pairs, same backend, or
    /// for `peer` QEMU's stream to a peer child (QEMU has no in-process peer).
    pub fn qemu_counterpart(&self, r: &NetRow) -> Option<&NetRow> {
        if r.vmm == "qemu" {
            return None;
        }
        let same = |backend: &str| {
            self.rows.iter().find(|q| {
                q.vmm == "qemu"
                    && q.nic == r.nic
                    && q.backend == backend
                    && q.queues == r.queues
                    && q.workload == r.workload
            })
        };
        same(&r.backend).or_else(|| (r.backend == "peer").then(|| same("stream")).flatten())
    }

    /// This row's packets per second over QEMU's (for RTT: QEMU's p50 over ours, so that
    /// above 1 is better there too).
    pub fn ratio_to_qemu(&self, r: &NetRow) -> Option<f64> {
        let q = self.qemu_counterpart(r)?;
        if r.workload == "rtt_udp" {
            return Some(q.p50_ns? / r.p50_ns?);
        }
        ratio(r.pps(), q.pps())
    }

    /// The row of `nic` that `r` (a virtio-net row) compares with for the virtio-over-emulated
    /// summary: same VMM kind, backend and workload, one queue pair.
    fn emulated_counterpart(&self, r: &NetRow, nic: &str) -> Option<&NetRow> {
        let vmm_kind = |v: &str| v.starts_with("harness");
        self.rows.iter().find(|e| {
            e.nic == nic
                && vmm_kind(&e.vmm) == vmm_kind(&r.vmm)
                && e.backend == r.backend
                && e.workload == r.workload
                && e.queues == 1
        })
    }

    /// virtio-net's figure over `e`'s (pps; for RTT the emulated NIC's p50 over virtio-net's,
    /// so that above 1 means virtio-net is ahead there too).
    fn virtio_over(v: &NetRow, e: &NetRow) -> Option<f64> {
        if v.workload == "rtt_udp" {
            ratio(e.p50_ns, v.p50_ns)
        } else {
            ratio(v.pps(), e.pps())
        }
    }

    /// The virtio-net rows the summary compares: one queue pair, threaded on our harness, on
    /// the in-process peer (ours) and on the stream peer (QEMU's), per workload.
    fn summary_bases(&self, workload: &str) -> Vec<&NetRow> {
        let mut v: Vec<&NetRow> = self
            .rows
            .iter()
            .filter(|r| r.nic == nic_name("virtio") && r.workload == workload && r.queues == 1)
            .filter(|r| {
                (r.vmm == "harness-thread" && r.backend == "peer")
                    || (r.vmm == "qemu" && r.backend == "stream")
            })
            .collect();
        v.sort_by_key(|r| r.vmm != "harness-thread");
        v
    }

    /// One line per workload: virtio-net over e1000 and over RTL8139, under each VMM.
    pub fn summary_lines(&self) -> Vec<String> {
        let f = |v: Option<f64>| v.map(|v| format!("{v:.1}x")).unwrap_or("-".into());
        WORKLOADS
            .iter()
            .filter_map(|w| {
                let parts: Vec<String> = self
                    .summary_bases(w)
                    .into_iter()
                    .map(|v| {
                        let per_nic: Vec<String> = EMULATED_NICS
                            .iter()
                            .map(|nic| {
                                let e = self.emulated_counterpart(v, nic);
                                format!("{} {nic}", f(e.and_then(|e| Self::virtio_over(v, e))))
                            })
                            .collect();
                        let vmm = if v.vmm == "qemu" { "qemu" } else { "harness" };
                        format!("{vmm} ({}) {}", v.backend, per_nic.join(", "))
                    })
                    .collect();
                (!parts.is_empty()).then(|| {
                    let what = if *w == "rtt_udp" {
                        "p50 latency"
                    } else {
                        "pps"
                    };
                    format!(
                        "virtio-net over emulated, {w} ({what}): {}",
                        parts.join("; ")
                    )
                })
            })
            .collect()
    }

    /// The issue's targets, from this run.
    pub fn targets(&self) -> Vec<NetTarget> {
        let harness = || {
            self.rows
                .iter()
                .filter(|r| r.vmm.starts_with("harness") && !is_emulated(r))
        };
        let emulated = || {
            self.rows
                .iter()
                .filter(|r| r.vmm.starts_with("harness") && is_emulated(r))
        };
        // An emulated NIC's rows with QEMU's on the same backend.
        let emulated_shared = || {
            emulated().filter_map(|r| {
                let q = self.qemu_counterpart(r)?;
                (q.backend == r.backend).then_some((r, q))
            })
        };
        // Bulk: the worst harness row, every exit KVM saw.
        let worst_exits = harness()
            .filter(|r| is_bulk(&r.workload))
            .filter_map(|r| Some((r.kvm_exits_per_packet?, row_label(r))))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        // RTT: the best harness row on the in-process peer (the floor of every network row),
        // over the floor's notify-to-interrupt round trip.
        let rtt = self
            .floor_roundtrip_ns
            .filter(|f| *f > 0.0)
            .and_then(|floor| {
                harness()
                    .filter(|r| r.workload == "rtt_udp" && r.backend == "peer")
                    .filter_map(|r| Some((r.p50_ns? / floor, row_label(r))))
                    .min_by(|a, b| a.0.total_cmp(&b.0))
            });
        // Packets per second against QEMU on every row both ran on the same backend.
        let worst_ratio = harness()
            .filter(|r| r.workload != "rtt_udp")
            .filter(|r| {
                self.qemu_counterpart(r)
                    .is_some_and(|q| q.backend == r.backend)
            })
            .filter_map(|r| Some((self.ratio_to_qemu(r)?, row_label(r))))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        // Emulated NICs: every exit KVM saw per packet, ours over QEMU's for the same guest
        // (the worst row), and packets per second against QEMU (the worst row).
        let worst_emulated_exits = emulated_shared()
            .filter_map(|(r, q)| {
                Some((
                    ratio(r.kvm_exits_per_packet, q.kvm_exits_per_packet)?,
                    row_label(r),
                ))
            })
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let worst_emulated_ratio = emulated_shared()
            .filter(|(r, _)| r.workload != "rtt_udp")
            .filter_map(|(r, _)| Some((self.ratio_to_qemu(r)?, row_label(r))))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        // virtio-net over e1000 in 64-byte packets per second, on our harness's peer rows.
        let virtio_over_e1000 = self
            .summary_bases("tx_64")
            .into_iter()
            .chain(self.summary_bases("rx_64"))
            .filter(|v| v.vmm == "harness-thread")
            .filter_map(|v| {
                let e = self.emulated_counterpart(v, "e1000")?;
                Some((Self::virtio_over(v, e)?, row_label(e)))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0));
        vec![
            NetTarget::new(
                "bulk exits/packet (worst harness row)",
                "<=",
                0.1,
                worst_exits,
            ),
            NetTarget::new(
                "UDP RTT p50 / floor notify->irq round trip (best harness peer row)",
                "<=",
                1.5,
                rtt,
            ),
            NetTarget::new(
                "harness/QEMU pps on shared rows (worst row)",
                ">=",
                1.2,
                worst_ratio,
            ),
            NetTarget::new(
                "emulated NIC kvm exits/packet over QEMU's (worst row)",
                "<=",
                1.0,
                worst_emulated_exits,
            ),
            NetTarget::new(
                "emulated NIC harness/QEMU pps (worst row)",
                ">=",
                1.2,
                worst_emulated_ratio,
            ),
            NetTarget::new(
                "virtio-net/e1000 64-byte pps (harness peer, worst of tx_64 and rx_64)",
                ">=",
                10.0,
                virtio_over_e1000,
            ),
            super::net_user::throughput_target(self),
        ]
    }

    pub fn to_text(&self) -> String {
        let mut s = String::from(
            "\nnetwork (guest bench=net over virtio-net, e1000 and RTL8139; pps and MB/s over the \
             row's time)\n",
        );
        let head = format!(
            "  {:<14} {:<10} {:<10} {:>2} {:<8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} \
             {:>7}\n",
            "vmm",
            "nic",
            "backend",
            "q",
            "workload",
            "pps",
            "MB/s",
            "p50 us",
            "p99 us",
            "exits/pk",
            "kvm ex/pk",
            "irqs/pk",
            "drops",
            "x qemu"
        );
        s += &head;
        let f = |v: Option<f64>, p: usize| v.map(|v| format!("{v:.p$}")).unwrap_or("-".into());
        let order = |w: &str| WORKLOADS.iter().position(|x| *x == w).unwrap_or(usize::MAX);
        let mut sorted: Vec<&NetRow> = self.rows.iter().collect();
        let nic_order = |n: &str| {
            NICS.iter()
                .position(|x| nic_name(x) == n)
                .unwrap_or(usize::MAX)
        };
        sorted.sort_by(|a, b| {
            (
                order(&a.workload),
                nic_order(&a.nic),
                &a.backend,
                a.queues,
                &a.vmm,
            )
                .cmp(&(
                    order(&b.workload),
                    nic_order(&b.nic),
                    &b.backend,
                    b.queues,
                    &b.vmm,
                ))
        });
        for r in sorted {
            s += &format!(
                "  {:<14} {:<10} {:<10} {:>2} {:<8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} \
                 {:>7}\n",
                r.vmm,
                r.nic,
                r.backend,
                r.queues,
                r.workload,
                f(r.pps(), 0),
                f(r.mb_per_s(), 1),
                f(r.p50_ns.map(|v| v / 1e3), 1),
                f(r.p99_ns.map(|v| v / 1e3), 1),
                f(r.user_exits_per_packet, 3),
                f(r.kvm_exits_per_packet, 3),
                f(r.irqs_per_packet(), 3),
                r.drops().map(|d| d.to_string()).unwrap_or("-".into()),
                f(self.ratio_to_qemu(r), 2),
            );
        }
        if self.rows.is_empty() {
            s += "  (no rows)\n";
        }
        s +=
            "  pps: the row's packets (frames sent, datagrams received, round trips, TCP frames)\n";
        s += "  per second; MB/s: Ethernet frame bytes (TCP: payload); per packet: per frame the\n";
        s += "  NIC moved. exits/pk: userspace exits at the NIC (harness); kvm ex/pk: every exit\n";
        s += "  KVM counted in the row (QEMU: QMP query-stats at the phase lines, approximate);\n";
        s += "  irqs/pk: the guest's interrupts on the NIC's vectors; drops: datagrams asked of\n";
        s +=
            "  the source that never came. x qemu: pps over QEMU's on the same backend and pairs\n";
        s += "  (peer rows: QEMU's stream to a peer child); rtt_udp: QEMU's p50 over ours.\n";
        for l in self.summary_lines() {
            s += &format!("  {l}\n");
        }
        s += &format!("  targets: {}\n", self.targets_text());
        for n in &self.notes {
            s += &format!("  note: {n}\n");
        }
        s
    }

    fn targets_text(&self) -> String {
        self.targets()
            .iter()
            .map(|t| {
                let verdict = match t.met {
                    Some(true) => "met",
                    Some(false) => "missed",
                    None => "not measured",
                };
                let m = t.measured.map(|m| format!("{m:.3}")).unwrap_or("-".into());
                let row = t
                    .row
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                format!("{} {} {}: {m}{row} {verdict}", t.what, t.op, t.limit)
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The section as `net` in `bench --json`.
    pub fn to_json(&self) -> NetSectionJson<'_> {
        NetSectionJson {
            rows: self
                .rows
                .iter()
                .map(|r| NetRowJson {
                    row: r,
                    pps: r.pps(),
                    mb_per_s: r.mb_per_s(),
                    irqs_per_packet: r.irqs_per_packet(),
                    ratio_to_qemu: self.ratio_to_qemu(r),
                    n: r.n,
                    drops: r.drops(),
                })
                .collect(),
            notes: &self.notes,
            floor_roundtrip_ns: self.floor_roundtrip_ns,
            summary: self.summary_lines(),
            targets: self.targets(),
        }
    }
}

/// `net` in `bench --json`.
#[derive(Debug, Serialize)]
pub struct NetSectionJson<'a> {
    pub rows: Vec<NetRowJson<'a>>,
    pub notes: &'a [String],
    pub floor_roundtrip_ns: Option<f64>,
    /// virtio-net over each emulated NIC, per workload (the text's summary lines).
    pub summary: Vec<String>,
    pub targets: Vec<NetTarget>,
}

/// One row: the issue's fields, plus the row's packet count and (RX rows) its drops.
#[derive(Debug, Serialize)]
pub struct NetRowJson<'a> {
    #[serde(flatten)]
    pub row: &'a NetRow,
    pub pps: Option<f64>,
    pub mb_per_s: Option<f64>,
    pub irqs_per_packet: Option<f64>,
    /// pps over QEMU's on the same backend and pairs (`peer`: QEMU's stream to a peer
    /// child); for `rtt_udp` QEMU's p50 over ours, so that above 1 means faster here too.
    pub ratio_to_qemu: Option<f64>,
    pub n: u64,
    pub drops: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn marks(v: serde_json::Value) -> Vec<PhaseMark> {
        serde_json::from_value(v).unwrap()
    }

    fn cfg(vmm: &'static str, backend: &'static str, queues: u16) -> NetConfig {
        nic_cfg(vmm, "virtio", backend, queues)
    }

    fn nic_cfg(
        vmm: &'static str,
        nic: &'static str,
        backend: &'static str,
        queues: u16,
    ) -> NetConfig {
        NetConfig {
            vmm,
            sub: if vmm == "qemu" { "qemu" } else { "run" },
            nic,
            backend,
            queues,
            args: vec![],
            wrapper: vec![],
        }
    }

    /// What the guest prints for one run (tx, rx with drops, rtt), and a malformed line.
    const OUT: &str = "\
# phase: begin net.tx_64\n\
# phase: end net.tx_64\n\
# bench: net.tx_64 n=1000 bytes=60000 total_ns=1000000 frames=1000 irqs=10\n\
# bench: net.rx_64 n=900 bytes=54000 total_ns=2000000 frames=901 irqs=90 requested=1024 drops=124\n\
# bench: net.rtt_udp ns=40000 p99=90000 min=1 max=2 n=100 bytes=12000 total_ns=5000000 frames=200 irqs=100\n\
# bench: net.tx_1514 n=5\n\
# bench: blk.virtio_msix.randread_4k_qd1 ns=1 n=1 bytes=1 total_ns=1\n";

    #[test]
    fn rows_keep_their_samples() {
        let out = "\
# bench: net.tx_64 n=1000 bytes=60000 total_ns=1000000 batch_pps=900,1100\n\
# bench: net.rtt_udp ns=4 p99=9 min=1 max=9 n=3 bytes=1 total_ns=5 batch_p50=4,5\n\
# bench: net.rx_64 n=9 bytes=9 total_ns=9 batch_pps=1,x\n";
        let rows = rows_of(&cfg("harness-thread", "peer", 1), out, &[]);
        assert_eq!(rows[0].samples, [900.0, 1100.0]);
        assert_eq!(rows[1].samples, [4.0, 5.0]);
        assert!(
            rows[2].samples.is_empty(),
            "a malformed list: no samples, still a row"
        );
        let j = serde_json::to_value(&rows[0]).unwrap();
        assert_eq!(j["samples"], json!([900.0, 1100.0]));
    }

    #[test]
    fn rows_and_exits_per_packet() {
        let doc = marks(json!([
            {"marker": "begin net.tx_64", "device_exits": {"virtio-net0-notify": 10, "com1": 5}, "kvm_exits": 1000},
            {"marker": "end net.tx_64", "device_exits": {"virtio-net0-notify": 60, "com1": 900}, "kvm_exits": 1100},
        ]));
        let rows = rows_of(&cfg("harness-thread", "peer", 2), OUT, &doc);
        assert_eq!(rows.len(), 3, "the malformed and the blk line are dropped");
        let tx = &rows[0];
        assert_eq!(
            (
                tx.vmm.as_str(),
                tx.backend.as_str(),
                tx.queues,
                tx.workload.as_str()
            ),
            ("harness-thread", "peer", 2, "tx_64")
        );
        assert_eq!(tx.user_exits_per_packet, Some(0.05), "com1 does not count");
        assert_eq!(tx.kvm_exits_per_packet, Some(0.1));
        assert_eq!(tx.irqs_per_packet(), Some(0.01));
        assert_eq!(tx.pps(), Some(1e6));
        assert_eq!(tx.mb_per_s(), Some(60.0));
        assert_eq!(tx.drops(), None);
        let rx = &rows[1];
        assert_eq!(rx.drops(), Some(124));
        assert_eq!(rx.packets(), 901);
        assert_eq!(rx.user_exits_per_packet, None, "no phase marks for it");
        let rtt = &rows[2];
        assert_eq!((rtt.p50_ns, rtt.p99_ns), (Some(40000.0), Some(90000.0)));
        assert_eq!(rtt.irqs_per_packet(), Some(0.5));
        let q = rows_of(
            &cfg("qemu", "stream", 1),
            OUT,
            &marks(json!([
                {"marker": "begin net.tx_64", "device_exits": {}, "kvm_exits": 10},
                {"marker": "end net.tx_64", "device_exits": {}, "kvm_exits": 510},
            ])),
        );
        assert_eq!(
            q[0].user_exits_per_packet, None,
            "QEMU has no per-device counts"
        );
        assert_eq!(q[0].kvm_exits_per_packet, Some(0.5));
    }

    fn section() -> NetSection {
        let mut rows = Vec::new();
        for (c, factor) in [
            (cfg("harness-thread", "peer", 1), 3.0),
            (cfg("harness-thread", "stream", 1), 1.5),
            (cfg("qemu", "stream", 1), 1.0),
        ] {
            for mut r in rows_of(&c, OUT, &[]) {
                r.total_ns /= factor;
                if let Some(p) = r.p50_ns.as_mut() {
                    *p /= factor;
                }
                r.kvm_exits_per_packet = Some(0.05 * factor);
                rows.push(r);
            }
        }
        NetSection {
            rows,
            notes: vec!["qemu tap: n/a".into()],
            floor_roundtrip_ns: Some(10000.0),
        }
    }

    #[test]
    fn ratios_and_targets() {
        let s = section();
        let find = |vmm: &str, backend: &str, w: &str| {
            s.rows
                .iter()
                .find(|r| r.vmm == vmm && r.backend == backend && r.workload == w)
                .unwrap()
        };
        assert_eq!(
            s.ratio_to_qemu(find("harness-thread", "stream", "tx_64")),
            Some(1.5)
        );
        assert_eq!(
            s.ratio_to_qemu(find("harness-thread", "peer", "tx_64")),
            Some(3.0),
            "peer rows compare with QEMU's stream"
        );
        assert_eq!(
            s.ratio_to_qemu(find("harness-thread", "peer", "rtt_udp")),
            Some(3.0)
        );
        assert_eq!(s.ratio_to_qemu(find("qemu", "stream", "tx_64")), None);
        let t = s.targets();
        // Worst bulk exits: the peer row, 0.15 > 0.1.
        assert_eq!(t[0].measured, Some(0.15000000000000002));
        assert_eq!(t[0].met, Some(false));
        assert!(t[0]
            .row
            .as_deref()
            .unwrap()
            .starts_with("harness-thread virtio-net peer q1 "));
        // RTT: 40 us / 3 over a 10 us floor.
        assert!((t[1].measured.unwrap() - 4.0 / 3.0).abs() < 1e-9);
        assert_eq!(t[1].met, Some(true));
        // Pps: only the stream rows are shared, 1.5 >= 1.2.
        assert_eq!(t[2].measured, Some(1.5));
        assert_eq!(t[2].met, Some(true));
        let text = s.to_text();
        assert!(
            text.contains("harness-thread virtio-net peer        1 tx_64"),
            "{text}"
        );
        assert!(
            text.contains("bulk exits/packet (worst harness row) <= 0.1: 0.150"),
            "{text}"
        );
        assert!(text.contains("note: qemu tap: n/a"), "{text}");
        // Nothing measured: no verdicts.
        let empty = NetSection::default();
        assert!(empty.targets().iter().all(|t| t.met.is_none()));
        assert!(empty.to_text().contains("(no rows)"));
    }

    #[test]
    fn json_rows_have_the_issue_fields() {
        let s = section();
        let j = serde_json::to_value(s.to_json()).unwrap();
        let row = j["rows"][0].as_object().unwrap();
        let mut keys: Vec<&str> = row.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "backend",
                "drops",
                "irqs_per_packet",
                "kvm_exits_per_packet",
                "mb_per_s",
                "n",
                "nic",
                "p50_ns",
                "p99_ns",
                "pps",
                "queues",
                "ratio_to_qemu",
                "samples",
                "user_exits_per_packet",
                "vmm",
                "workload"
            ]
        );
        assert_eq!(j["rows"][0]["nic"], "virtio-net");
        assert_eq!(j["rows"][0]["pps"], 3e6);
        assert_eq!(j["rows"][0]["ratio_to_qemu"], 3.0);
        assert_eq!(j["rows"][1]["drops"], 124);
        assert_eq!(j["targets"][2]["op"], ">=");
        assert_eq!(j["floor_roundtrip_ns"], 10000.0);
    }

    #[test]
    fn configs() {
        let p = peer_configs();
        assert_eq!(p.len(), 6);
        assert_eq!(
            p[1].args,
            ["--net", "virtio:peer,queues=2", "--io-mode", "thread"]
        );
        assert_eq!(
            (p[4].vmm, p[4].nic, p[4].args.as_slice()),
            (
                "harness",
                "e1000",
                &["--net".to_string(), "e1000:peer".into()][..]
            )
        );
        assert_eq!(p[5].nic, "rtl8139");
        let s = stream_configs(Path::new("/tmp/x.sock"), &["--accel".into(), "kvm".into()]);
        assert_eq!(s.len(), 6, "both VMMs for each of the three NICs");
        assert_eq!(s[0].args[1], "virtio:stream:/tmp/x.sock");
        assert_eq!(
            s[1].args,
            ["--net", "virtio:stream:/tmp/x.sock", "--accel", "kvm"]
        );
        assert_eq!(
            (s[2].vmm, s[2].args.as_slice()),
            (
                "harness",
                &["--net".to_string(), "e1000:stream:/tmp/x.sock".into()][..]
            ),
            "no --io-mode for an emulated NIC"
        );
        assert_eq!((s[5].vmm, s[5].nic), ("qemu", "rtl8139"));
        let t = tap_configs("hhtap0", &["ip".into(), "netns".into()], &[]);
        assert_eq!(t.len(), 8);
        assert_eq!(
            (t[2].backend, t[2].args[1].as_str()),
            ("tap-novnet", "virtio:tap:hhtap0,vnet_hdr=off")
        );
        assert_eq!(t[3].wrapper, ["ip", "netns"]);
        assert_eq!(
            (t[6].backend, t[6].args[1].as_str()),
            ("tap-novnet", "rtl8139:tap:hhtap0,vnet_hdr=off")
        );
        assert_eq!(
            guest_cmdline("e1000", 2, true),
            "bench=net net_model=e1000 net_pairs=2 net_quick=1"
        );
    }

    /// The emulated NICs' rows: their exits counted under their own device names, compared
    /// with QEMU's same NIC (never with virtio-net), and set against virtio-net per workload.
    #[test]
    fn emulated_rows_targets_and_summary() {
        let doc = marks(json!([
            {"marker": "begin net.tx_64", "device_exits": {"virtio-net0-notify": 1, "e1000-0-regs": 100}, "kvm_exits": 1000},
            {"marker": "end net.tx_64", "device_exits": {"virtio-net0-notify": 900, "e1000-0-regs": 3100}, "kvm_exits": 5000},
        ]));
        let e = rows_of(&nic_cfg("harness", "e1000", "peer", 1), OUT, &doc);
        assert_eq!(e[0].nic, "e1000");
        assert_eq!(e[0].user_exits_per_packet, Some(3.0), "only e1000-* exits");
        let mut s = section();
        let mut add = |c: NetConfig, pps_factor: f64, exits: f64| {
            for mut r in rows_of(&c, OUT, &[]) {
                r.total_ns *= pps_factor;
                if let Some(p) = r.p50_ns.as_mut() {
                    *p *= 2.0;
                }
                r.kvm_exits_per_packet = Some(exits);
                s.rows.push(r);
            }
        };
        // virtio-net's peer row runs at 3x the base rate: e1000 at 1/4 of it, 12x apart.
        add(nic_cfg("harness", "e1000", "peer", 1), 4.0, 4.0);
        add(nic_cfg("harness", "e1000", "stream", 1), 2.0, 4.0);
        add(nic_cfg("qemu", "e1000", "stream", 1), 3.0, 5.0);
        add(nic_cfg("harness", "rtl8139", "stream", 1), 2.0, 6.0);
        add(nic_cfg("qemu", "rtl8139", "stream", 1), 1.0, 5.0);
        let find = |nic: &str, vmm: &str, backend: &str| {
            s.rows
                .iter()
                .find(|r| r.nic == nic && r.vmm == vmm && r.backend == backend)
                .unwrap()
        };
        let q = s
            .qemu_counterpart(find("e1000", "harness", "stream"))
            .unwrap();
        assert_eq!((q.nic.as_str(), q.vmm.as_str()), ("e1000", "qemu"));
        assert_eq!(
            s.ratio_to_qemu(find("e1000", "harness", "stream")),
            Some(1.5)
        );
        let t = s.targets();
        // The six of the NIC issues, then the user-mode one (no user rows here).
        assert_eq!(t.len(), 7);
        assert_eq!(t[6].measured, None);
        // The virtio-net targets ignore the emulated rows (their exits would be the worst).
        assert_eq!(t[0].measured, Some(0.15000000000000002));
        assert_eq!(t[2].measured, Some(1.5));
        // Exits: RTL8139's 6 over QEMU's 5 is the worst; missed.
        assert_eq!(t[3].measured, Some(1.2));
        assert!(
            t[3].row.as_deref().unwrap().contains("rtl8139"),
            "{:?}",
            t[3]
        );
        assert_eq!(t[3].met, Some(false));
        // Pps: RTL8139 on the stream at half QEMU's rate.
        assert_eq!(t[4].measured, Some(0.5));
        assert_eq!(t[4].met, Some(false));
        // virtio-net over e1000 at 64 bytes: 3x the base against a quarter of it.
        assert_eq!(t[5].measured, Some(12.0));
        assert_eq!(t[5].met, Some(true));
        let lines = s.summary_lines();
        assert_eq!(lines.len(), 3, "tx_64, rx_64, rtt_udp: {lines:?}");
        assert_eq!(
            lines[0],
            "virtio-net over emulated, tx_64 (pps): harness (peer) 12.0x e1000, - rtl8139; \
             qemu (stream) 3.0x e1000, 1.0x rtl8139"
        );
        // RTT: the emulated rows' p50 is twice the base, virtio-net's peer row a third of it.
        assert!(
            lines[2].starts_with(
                "virtio-net over emulated, rtt_udp (p50 latency): harness (peer) 6.0x e1000"
            ),
            "{}",
            lines[2]
        );
        let text = s.to_text();
        assert!(text.contains(&lines[0]), "{text}");
        assert!(
            text.contains("harness        e1000      peer        1 tx_64"),
            "{text}"
        );
    }

    #[test]
    fn notes_from_the_guest_and_the_device() {
        let out = "# net: virtio-net 00:02.0: mac ...\n\
                   # net bench: rtt_udp: 2 echoes lost\n\
                   ok 1 floor # SKIP no floor\n\
                   # TX stuck with 3 frames in flight\n\
                   not ok 2 net\n";
        let got: Vec<String> = guest_remarks(out).collect();
        assert_eq!(
            got,
            [
                "rtt_udp: 2 echoes lost",
                "ok 1 floor # SKIP no floor",
                "not ok 2 net: TX stuck with 3 frames in flight"
            ]
        );
        let note = r#"net-counters: {"name":"virtio-net0","backend":"peer","pairs":2,"active_pairs":2,"queues":[{"queue":"rx0","frames":5,"bytes":1,"drops":0,"notifies":0,"interrupts":0},{"queue":"tx0","frames":6,"bytes":1,"drops":0,"notifies":0,"interrupts":0},{"queue":"ctrl","frames":1,"bytes":1,"drops":0,"notifies":0,"interrupts":0}],"drops":{"rx_overrun":7}}"#;
        assert_eq!(
            device_note(&["other".into(), note.into()]).as_deref(),
            Some("device: 2 of 2 pairs active; frames rx0 5, tx0 6; drops rx_overrun 7")
        );
        assert_eq!(device_note(&["other".into()]), None);
    }
}
