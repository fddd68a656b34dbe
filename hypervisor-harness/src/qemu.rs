//! Boot the same image under QEMU: same streaming, KTAP summary and exit codes, and QEMU's
//! own KVM counters through QMP `query-stats`.

use crate::backends::disk::{DiskCache, DiskKind, DiskSpec};
use crate::backends::net::spec::{BackendSpec, NetSpec, NicModel};
use crate::devices::lock;
use crate::devices::serial::MAX_LINE;
use crate::error::HarnessError;
use crate::ktap::{KtapParser, KtapSummary};
use crate::shared::{Accel, Outcome};
use crate::vmm::console_wiring::{ConsoleTarget, NamedPort};
use crate::vmm::exits::{KvmStats, PhaseLog, PhaseMark};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmm_sys_util::tempdir::TempDir;

#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub qemu: String,
    pub kernel: PathBuf,
    pub mem: u64,
    pub cmdline: String,
    pub timeout: Duration,
    pub accel: Accel,
    pub serial_log: Option<PathBuf>,
    pub verbose: bool,
    /// Disks, as for our harness: virtio-blk-pci devices and IDE drives in this order.
    pub disks: Vec<DiskSpec>,
    /// `--iothread`: each virtio-blk disk served by an `-object iothread` of its own, with
    /// QEMU's default adaptive polling (poll-max-ns 32768): QEMU as its users tune it for
    /// speed. IDE drives stay on the main loop (QEMU gives them no iothread).
    pub iothread: bool,
    /// `--cache-none`: virtio-blk drives with `cache=none,aio=io_uring` (O_DIRECT, many
    /// requests in flight on the host) instead of QEMU's page cache and thread pool.
    pub virtio_cache_none: bool,
    /// NICs, as for our harness, in this order. QEMU cannot reach our in-process peer, so a
    /// `peer` backend becomes a `-netdev stream` to a `hypervisor-harness peer --listen` child,
    /// one per NIC: each `peer` NIC has a network of its own, as under our harness.
    pub nets: Vec<NetSpec>,
    /// `--balloon`: a `virtio-balloon-pci` with QEMU's defaults; `--balloon-target` (bytes of
    /// guest memory) goes to it by QMP `balloon` once QEMU runs.
    pub balloon: bool,
    pub balloon_target: Option<u64>,
    /// `--console socket:PATH`: virtio-serial-pci with a virtconsole on a listening socket
    /// chardev, and a virtserialport per `--console-port` (QEMU's defaults).
    pub console: Option<ConsoleTarget>,
    pub console_ports: Vec<NamedPort>,
    /// QEMU's own human monitor and QMP on these UNIX sockets (`-monitor`, `-qmp`), beside
    /// the QMP socket this runner polls. A run that QEMU ends with status 0 then counts as quit
    /// by the monitor.
    pub monitor: Option<PathBuf>,
    pub qmp: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct QemuResult {
    pub outcome: Outcome,
    pub ktap: KtapSummary,
    /// "vm" and "vcpu" (summed over vCPUs), from the last successful query-stats.
    pub stats: Option<KvmStats>,
    pub accel: &'static str,
    pub elapsed: Duration,
    /// QEMU's KVM exit count at the guest's `# phase:` lines, read by QMP right after the line
    /// arrives (a QMP round trip late: the guest keeps running meanwhile).
    pub phases: Vec<PhaseMark>,
    /// What was dropped or cut to keep the harness's memory bounded.
    pub notes: Vec<String>,
}

/// Splits QEMU's serial output into lines for the KTAP parser, keeping at most [`MAX_LINE`]
/// bytes of a line (as the harness's own serial device does): a guest that never prints a
/// newline cannot grow the harness's memory.
#[derive(Debug, Default)]
struct LineBuffer {
    line: Vec<u8>,
    overflowed: bool,
    /// Lines cut to [`MAX_LINE`].
    cut: u64,
}

impl LineBuffer {
    /// Take bytes from `chunk` up to and including the first newline. Returns how many were
    /// taken and, if a newline was among them, the completed line (without `\n` or `\r`).
    fn feed(&mut self, chunk: &[u8]) -> (usize, Option<String>) {
        let newline = chunk.iter().position(|&b| b == b'\n');
        let taken = newline.map_or(chunk.len(), |i| i + 1);
        let body = &chunk[..newline.unwrap_or(taken)];
        let room = MAX_LINE - self.line.len();
        if body.len() > room {
            self.overflowed = true;
        }
        self.line.extend_from_slice(&body[..body.len().min(room)]);
        if newline.is_none() {
            return (taken, None);
        }
        if std::mem::take(&mut self.overflowed) {
            self.cut += 1;
        }
        let text = String::from_utf8_lossy(&self.line)
            .trim_end_matches('\r')
            .to_string();
        self.line.clear();
        (taken, Some(text))
    }
}

/// /dev/kvm opens read/write.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

pub fn resolve_accel(a: Accel) -> Result<&'static str, HarnessError> {
    match a {
        Accel::Tcg => Ok("tcg"),
        Accel::Kvm if kvm_usable() => Ok("kvm"),
        Accel::Kvm => Err(HarnessError::Unavailable(
            "--accel kvm: /dev/kvm cannot be opened read/write (try --accel tcg)".into(),
        )),
        Accel::Auto => Ok(if kvm_usable() { "kvm" } else { "tcg" }),
    }
}

/// The -cpu model. kvm_pvm cannot set IA32_ARCH_CAPABILITIES (MSR 0x10a), which QEMU 7.2's
/// `-cpu host` insists on, so that feature is dropped there. With KVM, QEMU publishes the TSC
/// frequency in CPUID 0x40000010 (as our harness does) when asked with `+invtsc` and
/// `vmware-cpuid-freq=on`, so the guest need not calibrate against the PIT; a host without an
/// invariant TSC only gets a warning and no leaf, and the guest falls back to the PIT. TCG
/// knows no TSC frequency to publish.
pub fn cpu_model(accel: &str, kvm_module: &str) -> &'static str {
    match (accel, kvm_module) {
        ("kvm", "kvm_pvm") => "host,-arch-capabilities,+invtsc,vmware-cpuid-freq=on",
        ("kvm", _) => "host,+invtsc,vmware-cpuid-freq=on",
        _ => "max",
    }
}

/// Where the peer child of `--net` number `i` listens, in the run's directory `dir`.
pub fn peer_socket(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("peer{i}.sock"))
}

/// QEMU's arguments. `peer_dir` holds the sockets the peer children listen on, one per `peer`
/// backend ([`peer_socket`]; `run` starts them; without it, `net_args` refuses a `peer` NIC).
pub fn build_args(
    cfg: &QemuConfig,
    accel: &str,
    cpu: &str,
    qmp: &Path,
    peer_dir: Option<&Path>,
) -> Result<Vec<String>, HarnessError> {
    let mut a: Vec<String> = [
        "-machine",
        "pc",
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push("-m".into());
    a.push(format!("{}M", cfg.mem >> 20));
    a.push("-kernel".into());
    a.push(cfg.kernel.display().to_string());
    a.push("-append".into());
    a.push(cfg.cmdline.clone());
    a.extend(
        [
            "-serial",
            "stdio",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ]
        .map(String::from),
    );
    a.push("-qmp".into());
    a.push(format!("unix:{},server=on,wait=off", qmp.display()));
    for (option, path) in [("-monitor", &cfg.monitor), ("-qmp", &cfg.qmp)] {
        if let Some(path) = path {
            a.push(option.into());
            let path = path.display().to_string().replace(',', ",,");
            a.push(format!("unix:{path},server=on,wait=off"));
        }
    }
    if !links_down(&cfg.nets).is_empty() {
        // Paused until QMP has taken the links down (`set_link`), then `cont`.
        a.push("-S".into());
    }
    a.push("-accel".into());
    a.push(accel.into());
    a.push("-cpu".into());
    a.push(cpu.into());
    // IDE positions as `-drive if=ide,index=N` (run() has refused a bad assignment already).
    let mut ide_index = crate::backends::disk::ide_positions(&cfg.disks)
        .unwrap_or_default()
        .into_iter();
    for (i, d) in cfg.disks.iter().enumerate() {
        let ro = if d.read_only { ",readonly=on" } else { "" };
        let file = d.path.display().to_string().replace(',', ",,");
        match d.kind {
            DiskKind::Virtio => {
                let iothread = if cfg.iothread {
                    a.push("-object".into());
                    a.push(format!("iothread,id=iothread{i}"));
                    format!(",iothread=iothread{i}")
                } else {
                    String::new()
                };
                // The disk's own `cache=none` is QEMU's too: O_DIRECT through io_uring.
                let aio = if cfg.virtio_cache_none || d.cache == DiskCache::None {
                    "cache=none,aio=io_uring"
                } else {
                    "aio=threads"
                };
                a.push("-drive".into());
                a.push(format!(
                    "file={file},format=raw,if=none,id=disk{i},{aio}{ro}"
                ));
                a.push("-device".into());
                // QEMU's own defaults otherwise: a transitional device, MSI-X on.
                let vectors = if d.msix { "" } else { ",vectors=0" };
                // queues=N: QEMU's num-queues (its default otherwise).
                let queues = match d.queues {
                    1 => String::new(),
                    n => format!(",num-queues={n}"),
                };
                a.push(format!(
                    "virtio-blk-pci,drive=disk{i}{vectors}{queues}{iothread}"
                ));
            }
            DiskKind::Ide => {
                let Some(index) = ide_index.next() else {
                    continue;
                };
                a.push("-drive".into());
                a.push(format!(
                    "file={file},format=raw,if=ide,index={index},aio=threads{ro}"
                ));
            }
        }
    }
    a.extend(net_args(&cfg.nets, peer_dir)?);
    if cfg.balloon {
        a.push("-device".into());
        a.push("virtio-balloon-pci".into());
    }
    if let Some(target) = &cfg.console {
        a.extend(console_args(target, &cfg.console_ports)?);
    }
    Ok(a)
}

/// QEMU's arguments for `--console` and its `--console-port`s.
fn console_args(target: &ConsoleTarget, ports: &[NamedPort]) -> Result<Vec<String>, HarnessError> {
    let ConsoleTarget::Socket(path) = target else {
        return Err(HarnessError::Usage(
            "--console stdio: under qemu the terminal carries the serial port; use socket:PATH"
                .into(),
        ));
    };
    // QEMU's option syntax doubles a comma inside a value.
    let path_arg = |p: &Path| p.display().to_string().replace(',', ",,");
    let mut a = vec!["-device".into(), "virtio-serial-pci".into()];
    let chardev = |a: &mut Vec<String>, id: &str, p: &Path| {
        a.push("-chardev".into());
        a.push(format!(
            "socket,id={id},path={},server=on,wait=off",
            path_arg(p)
        ));
    };
    chardev(&mut a, "console0", path);
    a.extend(["-device".into(), "virtconsole,chardev=console0".into()]);
    for (i, port) in ports.iter().enumerate() {
        let id = format!("console-port{i}");
        chardev(&mut a, &id, &port.path);
        a.push("-device".into());
        a.push(format!(
            "virtserialport,chardev={id},name={}",
            port.name.replace(',', ",,")
        ));
    }
    Ok(a)
}

/// The netdev ids (`net{i}`, as [`net_args`] names them) of the NICs with `link=down`.
pub fn links_down(nets: &[NetSpec]) -> Vec<String> {
    nets.iter()
        .enumerate()
        .filter(|(_, n)| !n.link_up)
        .map(|(i, _)| format!("net{i}"))
        .collect()
}

/// `-netdev` and `-device` for each NIC. The device keeps QEMU's default properties (the
/// guest driver must cope with what a user gets), except what several queue pairs need:
/// `mq=on` and `vectors=2N+2` (a vector per queue, one for config, one for the control queue).
pub fn net_args(nets: &[NetSpec], peer_dir: Option<&Path>) -> Result<Vec<String>, HarnessError> {
    let mut a = Vec::new();
    for (i, n) in nets.iter().enumerate() {
        let id = format!("net{i}");
        if n.faults.is_some() {
            return Err(HarnessError::Usage(format!(
                "--net {i}: faults= is our harness's backend wrapper; QEMU has none"
            )));
        }
        let stream = |path: &Path| {
            let path = path.display().to_string().replace(',', ",,");
            format!("stream,id={id},server=off,addr.type=unix,addr.path={path}")
        };
        let netdev = match &n.backend {
            BackendSpec::Peer => stream(&peer_socket(
                peer_dir.ok_or_else(|| {
                    HarnessError::Other(format!("--net {}: no peer socket to attach to", i))
                })?,
                i,
            )),
            BackendSpec::Stream(path) => stream(path),
            BackendSpec::User(opts) => format!("user,id={id}{}", opts.qemu_suffix()),
            BackendSpec::Tap { name, vnet_hdr } => {
                let vnet_hdr = if *vnet_hdr { "on" } else { "off" };
                format!("tap,id={id},ifname={name},script=no,downscript=no,vnet_hdr={vnet_hdr}")
            }
        };
        let queues = match (&n.backend, n.queues) {
            (_, 1) => String::new(),
            (BackendSpec::Tap { .. }, q) => format!(",queues={q}"),
            (b, _) => {
                return Err(HarnessError::Usage(format!(
                    "--net {i}: queues={} under QEMU needs a tap backend (QEMU's {} netdev has \
                     one queue)",
                    n.queues,
                    b.kind()
                )))
            }
        };
        a.push("-netdev".into());
        a.push(format!("{netdev}{queues}"));
        let mac = n.mac_or_default(i).map(|b| format!("{b:02x}")).join(":");
        let device = match n.model {
            NicModel::VirtioNet if n.queues > 1 => format!(
                "virtio-net-pci,netdev={id},mac={mac},mq=on,vectors={}",
                2 * u32::from(n.queues) + 2
            ),
            NicModel::VirtioNet => format!("virtio-net-pci,netdev={id},mac={mac}"),
            NicModel::E1000 => format!("e1000,netdev={id},mac={mac}"),
            NicModel::Rtl8139 => format!("rtl8139,netdev={id},mac={mac}"),
        };
        a.push("-device".into());
        a.push(device);
    }
    Ok(a)
}

/// A `hypervisor-harness peer --listen PATH` child (this same binary), for QEMU's `peer`
/// NICs; killed when dropped.
struct PeerChild(Child);

impl PeerChild {
    /// How long the child may take to start listening.
    const START_TIMEOUT: Duration = Duration::from_secs(10);

    fn start(socket: &Path, verbose: bool) -> Result<Self, HarnessError> {
        let exe = std::env::current_exe()
            .map_err(|e| HarnessError::Other(format!("cannot find our own binary: {e}")))?;
        if verbose {
            eprintln!(
                "harness: {} peer --listen {}",
                exe.display(),
                socket.display()
            );
        }
        let child = Command::new(&exe)
            .arg("peer")
            .arg("--listen")
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| HarnessError::Other(format!("cannot start the peer: {e}")))?;
        let mut peer = PeerChild(child);
        // QEMU's stream client gives up if nobody listens yet, so wait until a connection is
        // accepted (the peer sees one client come and go).
        let deadline = Instant::now() + Self::START_TIMEOUT;
        loop {
            if let Some(st) = peer
                .0
                .try_wait()
                .map_err(|e| HarnessError::Other(format!("waiting for the peer: {e}")))?
            {
                return Err(HarnessError::Other(format!(
                    "the peer (`{} peer --listen`) exited before listening: {st}",
                    exe.display()
                )));
            }
            if UnixStream::connect(socket).is_ok() {
                return Ok(peer);
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Other(format!(
                    "the peer did not listen on {} within {:?}",
                    socket.display(),
                    Self::START_TIMEOUT
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for PeerChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// QEMU's exit status with isa-debug-exit is (V << 1) | 1.
pub fn status_outcome(code: Option<i32>) -> Outcome {
    match code {
        Some(c) if c & 1 == 1 => Outcome::DebugExit((c >> 1) as u32),
        Some(0) => Outcome::Abnormal(
            "QEMU exited with status 0 without a debug-exit (guest reset or triple fault?)".into(),
        ),
        Some(c) => Outcome::Abnormal(format!("QEMU exited with status {c}")),
        None => Outcome::Abnormal("QEMU was killed by a signal".into()),
    }
}

/// Sum the numeric stats of a query-stats answer.
pub fn parse_query_stats(ret: &Value) -> std::collections::BTreeMap<String, u64> {
    let mut m = std::collections::BTreeMap::new();
    for provider in ret.as_array().into_iter().flatten() {
        for s in provider["stats"].as_array().into_iter().flatten() {
            if let (Some(name), Some(v)) = (s["name"].as_str(), s["value"].as_u64()) {
                *m.entry(name.to_string()).or_insert(0) += v;
            }
        }
    }
    m
}

struct Qmp {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Qmp {
    fn connect(path: &Path, stop: &AtomicBool) -> Option<Self> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let s = loop {
            if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                return None;
            }
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut q = Qmp {
            w: s.try_clone().ok()?,
            r: BufReader::new(s),
        };
        let mut greeting = String::new();
        q.r.read_line(&mut greeting).ok()?;
        q.cmd(&json!({"execute": "qmp_capabilities"}))?;
        Some(q)
    }

    /// Send a command; return its "return" value (skipping events).
    fn cmd(&mut self, c: &Value) -> Option<Value> {
        let mut line = c.to_string();
        line.push('\n');
        self.w.write_all(line.as_bytes()).ok()?;
        loop {
            let mut l = String::new();
            if self.r.read_line(&mut l).ok()? == 0 {
                return None;
            }
            let v: Value = serde_json::from_str(&l).ok()?;
            if let Some(r) = v.get("return") {
                return Some(r.clone());
            }
            if v.get("error").is_some() {
                return Some(Value::Null);
            }
        }
    }

    fn stats(&mut self) -> Option<KvmStats> {
        let mut out = KvmStats::new();
        for target in ["vm", "vcpu"] {
            let r =
                self.cmd(&json!({"execute": "query-stats", "arguments": {"target": target}}))?;
            let m = parse_query_stats(&r);
            if !m.is_empty() {
                out.insert(target.to_string(), m);
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

pub fn run(cfg: &QemuConfig) -> Result<QemuResult, HarnessError> {
    crate::vmm::boot::check_cmdline(&cfg.cmdline).map_err(HarnessError::Usage)?;
    crate::backends::disk::ide_positions(&cfg.disks).map_err(HarnessError::Usage)?;
    let meta = std::fs::metadata(&cfg.kernel).map_err(|e| {
        HarnessError::Image(format!("cannot open kernel {}: {e}", cfg.kernel.display()))
    })?;
    if !meta.is_file() {
        return Err(HarnessError::Image(format!(
            "{} is not a file",
            cfg.kernel.display()
        )));
    }
    let accel = resolve_accel(cfg.accel)?;
    // QEMU creates the QMP socket itself, so it goes into a fresh directory of ours (removed,
    // socket and all, when this function returns).
    let qmp_dir = TempDir::new_with_prefix(std::env::temp_dir().join("hh-qmp-"))
        .map_err(|e| HarnessError::Other(format!("cannot create a temporary directory: {e}")))?;
    let qmp_path = qmp_dir.as_path().join("qmp.sock");
    let platform = crate::platform::Platform::detect();
    let args = build_args(
        cfg,
        accel,
        cpu_model(accel, &platform.kvm),
        &qmp_path,
        Some(qmp_dir.as_path()),
    )?;
    // One peer child per `peer` NIC; they live until this function returns, after QEMU has
    // exited.
    let _peers = cfg
        .nets
        .iter()
        .enumerate()
        .filter(|(_, n)| n.backend == BackendSpec::Peer)
        .map(|(i, _)| PeerChild::start(&peer_socket(qmp_dir.as_path(), i), cfg.verbose))
        .collect::<Result<Vec<_>, _>>()?;
    if cfg.verbose {
        eprintln!("harness: platform: {platform}");
        eprintln!("harness: {} {}", cfg.qemu, args.join(" "));
    }
    let start = Instant::now();
    let mut child = Command::new(&cfg.qemu)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                HarnessError::Unavailable(format!("QEMU ({}) is not installed", cfg.qemu))
            } else {
                HarnessError::Unavailable(format!("cannot start {}: {e}", cfg.qemu))
            }
        })?;

    let ktap = Arc::new(Mutex::new(KtapParser::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let last_stats: Arc<Mutex<Option<KvmStats>>> = Arc::default();
    let phases: Arc<Mutex<PhaseLog>> = Arc::default();
    // Pokes to the QMP poller: None after the KTAP plan completes, Some(marker) at a phase line.
    // Bounded: a guest that prints phase lines faster than QMP answers loses marks (counted by
    // the poller's PhaseLog), never the harness's memory.
    let (poke_tx, poke_rx) = mpsc::sync_channel::<Option<String>>(64);

    // Serial reader: QEMU's stdout is the guest's COM1.
    let stdout = child.stdout.take();
    let mut sink: Box<dyn Write + Send> = match &cfg.serial_log {
        Some(p) => Box::new(std::fs::File::create(p).map_err(|e| {
            HarnessError::Usage(format!("cannot create --serial-log {}: {e}", p.display()))
        })?),
        None => Box::new(std::io::stdout()),
    };
    let (k2, ph1) = (ktap.clone(), phases.clone());
    let reader = std::thread::spawn(move || {
        let Some(out) = stdout else { return 0 };
        let mut r = BufReader::new(out);
        let mut lines = LineBuffer::default();
        loop {
            let chunk = match r.fill_buf() {
                Ok([]) | Err(_) => break,
                Ok(c) => c,
            };
            let (taken, line) = lines.feed(chunk);
            let _ = sink.write_all(&chunk[..taken]);
            r.consume(taken);
            let Some(line) = line else { continue };
            let _ = sink.flush();
            if let Some(marker) = line.trim_start().strip_prefix("# phase: ") {
                if poke_tx.try_send(Some(marker.trim().to_string())).is_err() {
                    lock(&ph1).dropped += 1;
                }
            }
            let mut k = lock(&k2);
            k.feed(&line);
            if k.summary().complete {
                let _ = poke_tx.try_send(None);
            }
        }
        lines.cut
    });

    // QMP poller: keeps the last stats answer; polls every 200 ms and right after the KTAP
    // plan completes (the guest exits just after).
    let (s2, l2, p2, ph2) = (
        stop.clone(),
        last_stats.clone(),
        qmp_path.clone(),
        phases.clone(),
    );
    let links_down = links_down(&cfg.nets);
    let balloon_target = cfg.balloon_target.filter(|_| cfg.balloon);
    let poller = std::thread::spawn(move || {
        let Some(mut q) = Qmp::connect(&p2, &s2) else {
            return;
        };
        if let Some(bytes) = balloon_target {
            // The guest waits a few seconds for a target to appear.
            q.cmd(&json!({"execute": "balloon", "arguments": {"value": bytes}}));
        }
        if !links_down.is_empty() {
            // QEMU started paused (-S): the links go down before the guest's first instruction.
            // A refused set_link still lets the guest run, to fail its link test.
            for id in &links_down {
                q.cmd(&json!({"execute": "set_link", "arguments": {"name": id, "up": false}}));
            }
            q.cmd(&json!({"execute": "cont"}));
        }
        let mut marker = None;
        while !s2.load(Ordering::SeqCst) {
            match q.stats() {
                Some(s) => {
                    if let Some(m) = marker.take() {
                        let exits = s.get("vcpu").and_then(|v| v.get("exits")).copied();
                        lock(&ph2).record(PhaseMark::kvm_only(m, exits));
                    }
                    *lock(&l2) = Some(s);
                }
                None => {
                    if q.cmd(&json!({"execute": "query-status"})).is_none() {
                        return; // connection gone
                    }
                }
            }
            if let Ok(Some(m)) = poke_rx.recv_timeout(Duration::from_millis(200)) {
                marker = Some(m);
            }
        }
    });

    // With a monitor of the user's, status 0 is its `quit` (a guest reset would give 0 as
    // well; the guest's own end is a debug-exit status, which is odd).
    let monitored = cfg.monitor.is_some() || cfg.qmp.is_some();
    let outcome = loop {
        match child.try_wait() {
            Ok(Some(st)) if monitored && st.code() == Some(0) => break Outcome::Quit,
            Ok(Some(st)) => break status_outcome(st.code()),
            Ok(None) => {}
            Err(e) => break Outcome::Abnormal(format!("waiting for QEMU: {e}")),
        }
        if start.elapsed() >= cfg.timeout {
            let _ = child.kill();
            let _ = child.wait();
            break Outcome::Timeout(cfg.timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    stop.store(true, Ordering::SeqCst);
    let lines_cut = reader.join().unwrap_or(0);
    let _ = poller.join();
    let summary = lock(&ktap).summary();
    let stats = lock(&last_stats).clone();
    let (phases, phase_note) = {
        let mut log = lock(&phases);
        (std::mem::take(&mut log.marks), log.note())
    };
    let notes = phase_note
        .into_iter()
        .chain(
            (lines_cut > 0)
                .then(|| format!("{lines_cut} serial lines longer than {MAX_LINE} bytes were cut")),
        )
        .collect();
    Ok(QemuResult {
        outcome,
        ktap: summary,
        stats,
        accel,
        elapsed,
        phases,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_lines_are_split_and_bounded() {
        let mut lb = LineBuffer::default();
        // A line split across chunks, then two in one chunk (the second taken on the next call).
        assert_eq!(lb.feed(b"ok 1 a"), (6, None));
        assert_eq!(lb.feed(b"bc\r\nok 2"), (4, Some("ok 1 abc".to_string())));
        assert_eq!(lb.feed(b"ok 2\n"), (5, Some("ok 2".to_string())));
        // A guest that never prints a newline: the buffer stops at MAX_LINE.
        let junk = vec![b'x'; 4096];
        for _ in 0..(3 * MAX_LINE / junk.len()) {
            assert_eq!(lb.feed(&junk).0, junk.len());
            assert!(lb.line.len() <= MAX_LINE);
        }
        let (_, line) = lb.feed(b"tail\n");
        assert_eq!(line.map(|l| l.len()), Some(MAX_LINE));
        assert_eq!(lb.cut, 1);
        assert_eq!(lb.feed(b"short\n").1.as_deref(), Some("short"));
        assert_eq!(lb.cut, 1);
    }

    /// A configuration with these `--disk` arguments and nothing else of note.
    fn config(disks: &[&str]) -> QemuConfig {
        QemuConfig {
            qemu: "qemu-system-x86_64".into(),
            kernel: "/k".into(),
            mem: 256 << 20,
            cmdline: "tests=all".into(),
            timeout: Duration::from_secs(1),
            accel: Accel::Tcg,
            serial_log: None,
            verbose: false,
            disks: disks.iter().map(|d| DiskSpec::parse(d).unwrap()).collect(),
            iothread: false,
            virtio_cache_none: false,
            nets: Vec::new(),
            balloon: false,
            balloon_target: None,
            console: None,
            console_ports: Vec::new(),
            monitor: None,
            qmp: None,
        }
    }

    /// The `-netdev`/`-device` pairs for these `--net` arguments.
    fn nets(nets: &[&str], peer: Option<&Path>) -> Result<String, HarnessError> {
        let nets: Vec<NetSpec> = nets.iter().map(|n| NetSpec::parse(n).unwrap()).collect();
        net_args(&nets, peer).map(|a| a.join(" "))
    }

    #[test]
    fn console_args_are_a_virtio_serial_pci_with_socket_chardevs() {
        let ports = [NamedPort::parse("org.test.echo=socket:/run/p,1").unwrap()];
        let a = console_args(&ConsoleTarget::Socket("/run/c0".into()), &ports).unwrap();
        assert_eq!(
            a.join(" "),
            "-device virtio-serial-pci \
             -chardev socket,id=console0,path=/run/c0,server=on,wait=off \
             -device virtconsole,chardev=console0 \
             -chardev socket,id=console-port0,path=/run/p,,1,server=on,wait=off \
             -device virtserialport,chardev=console-port0,name=org.test.echo"
        );
        assert!(matches!(
            console_args(&ConsoleTarget::Stdio, &[]),
            Err(HarnessError::Usage(_))
        ));
    }

    #[test]
    fn net_args_per_backend() {
        let peer = Some(Path::new("/run/p,q"));
        assert_eq!(
            nets(&["virtio"], peer).unwrap(),
            "-netdev stream,id=net0,server=off,addr.type=unix,addr.path=/run/p,,q/peer0.sock \
             -device virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56"
        );
        // A peer of its own for each `peer` NIC.
        assert_eq!(
            nets(&["e1000", "virtio:user", "rtl8139"], peer).unwrap(),
            "-netdev stream,id=net0,server=off,addr.type=unix,addr.path=/run/p,,q/peer0.sock \
             -device e1000,netdev=net0,mac=52:54:00:12:34:56 \
             -netdev user,id=net1 -device virtio-net-pci,netdev=net1,mac=52:54:00:12:34:57 \
             -netdev stream,id=net2,server=off,addr.type=unix,addr.path=/run/p,,q/peer2.sock \
             -device rtl8139,netdev=net2,mac=52:54:00:12:34:58"
        );
        assert_eq!(
            nets(
                &[
                    "virtio:user",
                    "e1000:stream:/s",
                    "rtl8139:user,mac=02:00:00:00:00:0a"
                ],
                None
            )
            .unwrap(),
            "-netdev user,id=net0 -device virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56 \
             -netdev stream,id=net1,server=off,addr.type=unix,addr.path=/s \
             -device e1000,netdev=net1,mac=52:54:00:12:34:57 \
             -netdev user,id=net2 -device rtl8139,netdev=net2,mac=02:00:00:00:00:0a"
        );
        assert_eq!(
            nets(&["virtio:tap:t0,vnet_hdr=off"], None).unwrap(),
            "-netdev tap,id=net0,ifname=t0,script=no,downscript=no,vnet_hdr=off \
             -device virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56"
        );
        // Several queue pairs: the tap's queues, the device's mq and one vector per queue
        // plus config and control.
        assert_eq!(
            nets(&["virtio:tap:t0,queues=3"], None).unwrap(),
            "-netdev tap,id=net0,ifname=t0,script=no,downscript=no,vnet_hdr=on,queues=3 \
             -device virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56,mq=on,vectors=8"
        );
        match nets(&["virtio:user,queues=2"], None) {
            Err(HarnessError::Usage(m)) => assert!(m.contains("needs a tap backend"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(nets(&["virtio"], None).is_err());
        // link=down: the netdev ids QMP's set_link takes down before `cont`.
        let specs: Vec<NetSpec> = ["virtio:user", "virtio:user,link=down"]
            .iter()
            .map(|n| NetSpec::parse(n).unwrap())
            .collect();
        assert_eq!(links_down(&specs), ["net1"]);
        assert!(links_down(&specs[..1]).is_empty());
    }

    #[test]
    fn disk_args() {
        let cfg = config(&[
            "virtio:/a,b.img,ro",
            "ide:/c.img",
            "virtio:/d.img,msix=off",
            "virtio:/e.img,queues=4",
        ]);
        let args = build_args(&cfg, "tcg", "max", Path::new("/q"), None).unwrap();
        let a = args.join(" ");
        assert!(
            a.contains("-device virtio-blk-pci,drive=disk3,num-queues=4"),
            "{a}"
        );
        // QEMU's own device as a user types it: no disable-legacy, no vectors, unless asked.
        assert!(
            args.contains(&"virtio-blk-pci,drive=disk0".to_string()),
            "{a}"
        );
        assert!(a.contains("-drive file=/a,,b.img,format=raw,if=none,id=disk0,aio=threads,readonly=on -device virtio-blk-pci,drive=disk0"), "{a}");
        assert!(
            a.contains("-device virtio-blk-pci,drive=disk2,vectors=0"),
            "{a}"
        );
        assert!(
            a.contains("-drive file=/c.img,format=raw,if=ide,index=0,aio=threads"),
            "{a}"
        );
    }

    #[test]
    fn iothread_per_virtio_disk() {
        let cfg = QemuConfig {
            iothread: true,
            ..config(&["virtio:/a.img", "ide:/c.img", "virtio:/d.img,msix=off"])
        };
        let a = build_args(&cfg, "tcg", "max", Path::new("/q"), None)
            .unwrap()
            .join(" ");
        assert!(
            a.contains(
                "-object iothread,id=iothread0 \
                 -drive file=/a.img,format=raw,if=none,id=disk0,aio=threads \
                 -device virtio-blk-pci,drive=disk0,iothread=iothread0"
            ),
            "{a}"
        );
        assert!(
            a.contains("-device virtio-blk-pci,drive=disk2,vectors=0,iothread=iothread2"),
            "{a}"
        );
        // The IDE drive stays on QEMU's main loop; only virtio disks get an iothread.
        assert!(!a.contains("iothread1"), "{a}");
        assert_eq!(a.matches("-object iothread").count(), 2, "{a}");
        // Without --iothread: QEMU's defaults, no iothread at all.
        let plain = build_args(
            &config(&["virtio:/a.img"]),
            "tcg",
            "max",
            Path::new("/q"),
            None,
        )
        .unwrap()
        .join(" ");
        assert!(!plain.contains("iothread"), "{plain}");
    }

    #[test]
    fn cache_none_is_io_uring_on_virtio_drives_only() {
        let cfg = QemuConfig {
            iothread: true,
            virtio_cache_none: true,
            ..config(&["virtio:/a.img,ro", "ide:/c.img"])
        };
        let a = build_args(&cfg, "tcg", "max", Path::new("/q"), None)
            .unwrap()
            .join(" ");
        assert!(
            a.contains(
                "-object iothread,id=iothread0 \
                 -drive file=/a.img,format=raw,if=none,id=disk0,cache=none,aio=io_uring,readonly=on \
                 -device virtio-blk-pci,drive=disk0,iothread=iothread0"
            ),
            "{a}"
        );
        assert!(
            a.contains("-drive file=/c.img,format=raw,if=ide,index=0,aio=threads"),
            "{a}"
        );
    }

    /// `--disk virtio:PATH,cache=none` asks QEMU for the same: that drive alone.
    #[test]
    fn a_disks_cache_none_is_qemus_cache_none_with_io_uring() {
        let a = build_args(
            &config(&["virtio:/a.img,cache=none", "virtio:/b.img,cache=writeback"]),
            "tcg",
            "max",
            Path::new("/q"),
            None,
        )
        .unwrap()
        .join(" ");
        assert!(
            a.contains("-drive file=/a.img,format=raw,if=none,id=disk0,cache=none,aio=io_uring "),
            "{a}"
        );
        assert!(
            a.contains("-drive file=/b.img,format=raw,if=none,id=disk1,aio=threads "),
            "{a}"
        );
    }

    #[test]
    fn ide_drive_indices() {
        let ide = |disks: &[&str]| -> Vec<String> {
            let a = build_args(&config(disks), "tcg", "max", Path::new("/q"), None).unwrap();
            a.iter().filter(|x| x.contains("if=ide")).cloned().collect()
        };
        assert_eq!(
            ide(&["ide:/s.img,index=1,ro"]),
            ["file=/s.img,format=raw,if=ide,index=1,aio=threads,readonly=on"]
        );
        assert_eq!(
            ide(&["ide:/a,index=2", "virtio:/v", "ide:/b", "ide:/c"]),
            [
                "file=/a,format=raw,if=ide,index=2,aio=threads",
                "file=/b,format=raw,if=ide,index=0,aio=threads",
                "file=/c,format=raw,if=ide,index=1,aio=threads",
            ]
        );
        // A bad assignment is a usage error before QEMU is started.
        let r = run(&config(&["ide:/a,index=3", "ide:/b,index=3"]));
        match r {
            Err(HarnessError::Usage(m)) => assert!(m.contains("already taken"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn args() {
        let cfg = config(&[]);
        let a = build_args(&cfg, "tcg", "max", Path::new("/tmp/q.sock"), None)
            .unwrap()
            .join(" ");
        assert!(a.contains("-machine pc -nodefaults -no-reboot -display none -m 256M -kernel /k"));
        assert!(a.contains("-append tests=all -serial stdio"));
        assert!(a.contains("-device isa-debug-exit,iobase=0xf4,iosize=0x04"));
        assert!(a.contains("-qmp unix:/tmp/q.sock,server=on,wait=off"));
        assert!(a.ends_with("-accel tcg -cpu max"));
        assert!(build_args(&cfg, "kvm", "host", Path::new("/q"), None)
            .unwrap()
            .join(" ")
            .ends_with("-accel kvm -cpu host"));
        // The user's monitors go to QEMU beside the runner's own QMP socket.
        let monitored = QemuConfig {
            monitor: Some("/tmp/m".into()),
            qmp: Some("/tmp/a,b".into()),
            ..config(&[])
        };
        let a = build_args(&monitored, "tcg", "max", Path::new("/tmp/q.sock"), None)
            .unwrap()
            .join(" ");
        assert!(a.contains("-qmp unix:/tmp/q.sock,server=on,wait=off"));
        assert!(a.contains("-monitor unix:/tmp/m,server=on,wait=off"));
        assert!(a.contains("-qmp unix:/tmp/a,,b,server=on,wait=off"));
        assert_eq!(
            cpu_model("kvm", "kvm_pvm"),
            "host,-arch-capabilities,+invtsc,vmware-cpuid-freq=on"
        );
        assert_eq!(
            cpu_model("kvm", "kvm_intel"),
            "host,+invtsc,vmware-cpuid-freq=on"
        );
        assert_eq!(cpu_model("tcg", "kvm_pvm"), "max");
    }

    #[test]
    fn exit_status() {
        assert_eq!(status_outcome(Some(33)), Outcome::DebugExit(0x10));
        assert_eq!(status_outcome(Some(35)), Outcome::DebugExit(0x11));
        assert_eq!(status_outcome(Some(37)), Outcome::DebugExit(0x12));
        assert!(matches!(status_outcome(Some(0)), Outcome::Abnormal(_)));
        assert!(matches!(status_outcome(Some(2)), Outcome::Abnormal(_)));
        assert!(matches!(status_outcome(None), Outcome::Abnormal(_)));
    }

    #[test]
    fn query_stats() {
        let v: Value = serde_json::from_str(
            r#"[{"provider":"kvm","qom-path":"/machine/unattached/device[0]",
                 "stats":[{"name":"exits","value":10},{"name":"halt_poll_fail_hist","value":[1,2]}]},
                {"provider":"kvm","qom-path":"/machine/unattached/device[1]",
                 "stats":[{"name":"exits","value":5},{"name":"io_exits","value":3}]}]"#,
        )
        .unwrap();
        let m = parse_query_stats(&v);
        assert_eq!(m.get("exits"), Some(&15));
        assert_eq!(m.get("io_exits"), Some(&3));
        assert!(!m.contains_key("halt_poll_fail_hist"));
        assert!(parse_query_stats(&Value::Null).is_empty());
    }
}
