//! Command line: `run`, `qemu`, `bench`, and the mapping from outcomes to exit codes.

use crate::backends::disk::DiskSpec;
use crate::backends::net::spec::NetSpec;
use crate::error::*;
use crate::platform::Platform;
use crate::shared::{
    kernel_or_default, outcome_code, write_json, Accel, BenchArgs, FloorBars, Outcome, OutcomeJson,
    RunJson,
};
use crate::vmm::console_wiring::{ConsoleTarget, NamedPort};
use crate::vmm::{self, memory, IoMode, RunConfig, VmEnd};
use clap::{Args, Parser, Subcommand};
use std::borrow::Cow;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "hypervisor-harness",
    version,
    about = "Boot the project's PVH kernel under KVM or QEMU, count exits, benchmark"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Boot the kernel under this harness's own KVM VMM.
    Run(RunArgs),
    /// Boot the same kernel under QEMU.
    Qemu(QemuArgs),
    /// Floor (exit cost) and boot-time benchmarks.
    Bench(BenchArgs),
    /// Send one command to a VM's monitor socket (`--monitor`, or `--qmp` with `--qmp` here;
    /// ours or QEMU's) and print the reply.
    Monitor(MonitorArgs),
    /// Serve the network peer on a UNIX socket to `-netdev stream` clients (QEMU or
    /// `--net MODEL:stream:PATH`), switching frames between them; runs until SIGTERM/SIGINT.
    Peer(PeerArgs),
}

#[derive(Args, Debug)]
pub struct PeerArgs {
    /// The socket to listen on (a stale socket file there is replaced).
    #[arg(long, value_name = "PATH")]
    pub listen: PathBuf,
    /// Log clients coming and going on stderr.
    #[arg(long, short)]
    pub verbose: bool,
}

#[derive(Args, Debug)]
pub struct MonitorArgs {
    /// The monitor's socket.
    pub path: PathBuf,
    /// The command: a human-monitor command line (`info status`), or with `--qmp` one QMP
    /// command as JSON (`{"execute": "query-status"}`).
    #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// The socket speaks QMP: negotiate capabilities, send the command, print the reply.
    #[arg(long)]
    pub qmp: bool,
}

#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Kernel image (PVH ELF). Defaults to the image this build produced.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Guest RAM: 32M..3G (K/M/G suffix; a plain number is MiB).
    #[arg(long, default_value = "256M", value_parser = memory::parse_mem)]
    pub mem: u64,
    /// Kernel command line (at most 4095 bytes).
    #[arg(long, default_value = "tests=all")]
    pub cmdline: String,
    /// Seconds before the guest is stopped (exit code 3).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub timeout: u64,
    /// Print the exit counters at the end.
    #[arg(long)]
    pub exits: bool,
    /// Write the exit counters (and the outcome) as JSON.
    #[arg(long, value_name = "PATH")]
    pub exits_json: Option<PathBuf>,
    /// Write guest serial output here instead of stdout.
    #[arg(long, value_name = "PATH")]
    pub serial_log: Option<PathBuf>,
    /// Setup details on stderr.
    #[arg(long, short)]
    pub verbose: bool,
    /// A disk: `virtio:PATH[,ro][,msix=off]` or `ide:PATH[,ro][,index=N]` (raw image).
    /// Repeatable; the guest sees them in this order. An IDE disk sits at position N as QEMU's
    /// `-drive if=ide,index=N` (0 primary master, 1 primary slave, 2 secondary master, 3
    /// secondary slave), or without `index=` at the lowest position still free. `msix=off`
    /// gives a virtio disk no MSI-X capability (QEMU's `vectors=0`), so the guest uses INTx.
    #[arg(long, value_name = "KIND:PATH[,OPTIONS]", value_parser = DiskSpec::parse)]
    pub disk: Vec<DiskSpec>,
    /// A NIC: `MODEL[:BACKEND][,mac=..][,queues=N][,vnet_hdr=on|off]`, MODEL virtio, e1000 or
    /// rtl8139; BACKEND peer (the in-process peer, the default), stream:PATH (QEMU's
    /// `-netdev stream` framing), tap:NAME or user. Repeatable: one NIC each, in order.
    #[arg(long, value_name = "MODEL[:BACKEND][,OPTIONS]", value_parser = NetSpec::parse)]
    pub net: Vec<NetSpec>,
    /// Where virtio queues are processed: on an I/O thread woken by ioeventfd (completion by
    /// irqfd), or inline in the vCPU thread on the notify exit.
    #[arg(long, value_enum, default_value = "thread")]
    pub io_mode: IoMode,
    /// Add a virtio-balloon device (under `qemu`, `-device virtio-balloon-pci`).
    #[arg(long)]
    pub balloon: bool,
    /// With --balloon: the guest memory to ask for from the start, as the monitor's
    /// `balloon <MiB>` does (a plain number is MiB; K, M or G suffix).
    #[arg(long, value_name = "SIZE", requires = "balloon", value_parser = parse_balloon_target)]
    pub balloon_target: Option<u64>,
    /// Add a virtio-console: port 0 to the terminal (`stdio`) or to a UNIX socket the harness
    /// listens on (`socket:PATH`). Under `qemu`, virtio-serial-pci with a virtconsole.
    #[arg(long, value_name = "stdio|socket:PATH", value_parser = ConsoleTarget::parse)]
    pub console: Option<ConsoleTarget>,
    /// With --console: a named extra port to a UNIX socket (MULTIPORT). Repeatable. Under
    /// `qemu`, a virtserialport with that name.
    #[arg(long, value_name = "NAME=socket:PATH", requires = "console", value_parser = NamedPort::parse)]
    pub console_port: Vec<NamedPort>,
    /// Serve QEMU's human monitor (`info status`, `info pci`, `quit`, ...) on a UNIX socket:
    /// `unix:PATH` (under `qemu`, QEMU's own `-monitor`). `quit` ends the run with success.
    #[arg(long, value_name = "unix:PATH", value_parser = crate::monitor::parse_socket_spec)]
    pub monitor: Option<PathBuf>,
    /// Serve QMP on a UNIX socket: `unix:PATH` (under `qemu`, QEMU's own `-qmp`).
    #[arg(long, value_name = "unix:PATH", value_parser = crate::monitor::parse_socket_spec)]
    pub qmp: Option<PathBuf>,
}

/// A guest memory size for --balloon-target: as --mem's sizes, without its 32 MiB floor.
fn parse_balloon_target(s: &str) -> Result<u64, String> {
    let digits = s.trim_end_matches(|c: char| !c.is_ascii_digit());
    let suffix = &s[digits.len()..];
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size (try 192 or 192M)"))?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 20,
        "k" | "kb" | "kib" => 10,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("'{s}' has an unknown unit (use K, M or G)")),
    };
    match n.checked_mul(1 << shift) {
        Some(b) if b > 0 => Ok(b),
        _ => Err(format!("'{s}' is not a size above zero")),
    }
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Run each vCPU, device I/O, NIC backend, console port, monitor and watchdog thread under
    /// a seccomp filter of its kind; a forbidden system call ends the run with exit code 148.
    /// `off` is for debugging.
    #[arg(long, value_enum, default_value = "on")]
    pub seccomp: OnOff,
    /// Test only: the first thread of this kind makes a forbidden system call once its filter
    /// is in place.
    #[arg(long, value_enum, hide = true, value_name = "KIND")]
    pub seccomp_selftest: Option<crate::seccomp::ThreadKind>,
    /// Test only: the vCPU thread never comes back from its first port or MMIO exit, as if a
    /// device handler hung, so that the watchdog's hard deadline ends the run (exit code 5).
    #[arg(long, hide = true)]
    pub stuck_device_selftest: bool,
    /// End the run (exit code 4, with the vCPU's state) when the guest makes no port or MMIO
    /// access, serial output included, for this many seconds: a guest spinning without I/O.
    /// Off by default: an idle guest waiting for interrupts is quiet too.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub stall_timeout: Option<u64>,
    /// Fuzz corpus only: write every port and MMIO exit the buses saw to FILE after the run
    /// (bounded; vmm/exit_recorder.rs).
    #[arg(long, hide = true, value_name = "FILE")]
    pub record_exits: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Args, Debug)]
pub struct QemuArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Accelerator: kvm when /dev/kvm is usable (auto), else tcg.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,
    /// The QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: String,
    /// Serve each virtio-blk disk from a QEMU iothread of its own (`-object iothread`, QEMU's
    /// default adaptive polling), as QEMU's users tune it for speed.
    #[arg(long)]
    pub iothread: bool,
    /// virtio-blk drives with `cache=none,aio=io_uring` (O_DIRECT, io_uring) instead of QEMU's
    /// page cache and thread pool.
    #[arg(long)]
    pub cache_none: bool,
}

pub fn vm_end_outcome(end: &VmEnd, timeout: u64) -> Outcome {
    match end {
        VmEnd::DebugExit(v) => Outcome::DebugExit(*v),
        VmEnd::Timeout(_) => Outcome::Timeout(timeout),
        VmEnd::NoProgress { seconds, cpu } => Outcome::Abnormal(format!(
            "no progress: no port or MMIO exit for {seconds} s (--stall-timeout) at {cpu}"
        )),
        VmEnd::Quit => Outcome::Quit,
        VmEnd::Shutdown(cpu) => {
            Outcome::Abnormal(format!("KVM_EXIT_SHUTDOWN (triple fault) at {cpu}"))
        }
        VmEnd::InternalError { suberror, cpu } => Outcome::Abnormal(format!(
            "KVM_EXIT_INTERNAL_ERROR suberror {suberror} ({}) at {cpu}",
            internal_error_name(*suberror)
        )),
        VmEnd::FailEntry { reason, cpu } => {
            Outcome::Abnormal(format!("KVM_EXIT_FAIL_ENTRY reason {reason:#x} at {cpu}"))
        }
        VmEnd::Unexpected { what, cpu } => Outcome::Abnormal(format!("{what} at {cpu}")),
    }
}

/// KVM's names for KVM_EXIT_INTERNAL_ERROR's suberrors (<linux/kvm.h>).
fn internal_error_name(suberror: u32) -> &'static str {
    match suberror {
        kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => "emulation failure",
        kvm_bindings::KVM_INTERNAL_ERROR_SIMUL_EX => "exception while delivering an exception",
        kvm_bindings::KVM_INTERNAL_ERROR_DELIVERY_EV => "exit while delivering an event",
        kvm_bindings::KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "unexpected exit reason",
        _ => "unknown",
    }
}

fn cmd_run(a: &RunArgs) -> Result<i32, HarnessError> {
    let c = &a.common;
    let cfg = RunConfig {
        kernel: kernel_or_default(&c.kernel)?,
        mem: c.mem,
        cmdline: c.cmdline.clone(),
        timeout: Duration::from_secs(c.timeout),
        stall_timeout: a.stall_timeout.map(Duration::from_secs),
        serial_log: c.serial_log.clone(),
        verbose: c.verbose,
        disks: c.disk.clone(),
        nets: c.net.clone(),
        io_mode: c.io_mode,
        // We exit right after the run.
        hand_off_teardown: true,
        balloon: c.balloon,
        balloon_target: c.balloon_target,
        console: c.console.clone(),
        console_ports: c.console_port.clone(),
        monitor: c.monitor.clone(),
        qmp: c.qmp.clone(),
        seccomp: crate::seccomp::SeccompConfig {
            enabled: a.seccomp == OnOff::On,
            selftest: a.seccomp_selftest,
        },
        stuck_device_selftest: a.stuck_device_selftest,
    };
    let recorder = a
        .record_exits
        .as_ref()
        .map(|_| vmm::exit_recorder::install());
    let r = vmm::run(&cfg)?;
    if let (Some(path), Some(rec)) = (&a.record_exits, recorder) {
        std::fs::write(path, rec.contents())
            .map_err(|e| HarnessError::Other(format!("--record-exits {}: {e}", path.display())))?;
        let (kept, elided, dropped) = rec.counts();
        eprintln!(
            "harness: recorded {kept} exits ({elided} without their data, {dropped} left out) \
             to {}",
            path.display()
        );
    }
    let outcome = vm_end_outcome(&r.end, c.timeout);
    let (code, msg) = outcome_code(&outcome, &r.ktap);
    eprintln!("{}", r.ktap);
    if outcome == Outcome::Quit {
        eprintln!("harness: the VM was quit by the monitor");
    }
    if let VmEnd::Timeout(cpu) = &r.end {
        eprintln!("harness: at the timeout the vCPU was at {cpu}");
    }
    if c.exits {
        eprint!("{}", r.counters.table());
        eprint!("{}", vmm::exits::stats_table(&r.kvm_stats));
    }
    if c.verbose {
        eprintln!(
            "harness: guest ran {:.3} s, {} exits",
            r.elapsed.as_secs_f64(),
            r.counters.total
        );
        // Each disk's counters (cache=none: what went through the ring).
        let disks = vmm::virtio_wiring::DISK_COUNTERS_NOTE;
        for n in r.notes.iter().filter(|n| n.starts_with(disks)) {
            eprintln!("harness: {n}");
        }
    }
    if let Some(p) = &c.exits_json {
        let doc = RunJson {
            vmm: "harness".into(),
            accel: None,
            platform: Platform::detect().to_json(),
            outcome: OutcomeJson::new(&outcome, code, &msg),
            ktap: (&r.ktap).into(),
            elapsed_ms: r.elapsed.as_secs_f64() * 1e3,
            floor: Some(FloorBars {
                bar0: r.floor_bars.0,
                bar1: r.floor_bars.1,
            }),
            exits: Some(r.counters.to_json()),
            kvm_stats: Some(Cow::Borrowed(&r.kvm_stats)),
            notes: Cow::Borrowed(&r.notes),
            phases: Cow::Borrowed(&r.phases),
            timing: Some(r.timing.clone()),
        };
        write_json(p, &doc)?;
    }
    if let Some(m) = msg {
        eprintln!("error: {m}");
    }
    Ok(code)
}

fn cmd_qemu(a: &QemuArgs) -> Result<i32, HarnessError> {
    let c = &a.common;
    let cfg = crate::qemu::QemuConfig {
        qemu: a.qemu.clone(),
        kernel: kernel_or_default(&c.kernel)?,
        mem: c.mem,
        cmdline: c.cmdline.clone(),
        timeout: Duration::from_secs(c.timeout),
        accel: a.accel,
        serial_log: c.serial_log.clone(),
        verbose: c.verbose,
        disks: c.disk.clone(),
        iothread: a.iothread,
        virtio_cache_none: a.cache_none,
        nets: c.net.clone(),
        balloon: c.balloon,
        balloon_target: c.balloon_target,
        console: c.console.clone(),
        console_ports: c.console_port.clone(),
        monitor: c.monitor.clone(),
        qmp: c.qmp.clone(),
    };
    let r = crate::qemu::run(&cfg)?;
    let (code, msg) = outcome_code(&r.outcome, &r.ktap);
    eprintln!("{}", r.ktap);
    if r.outcome == Outcome::Quit {
        eprintln!("harness: QEMU was quit by its monitor");
    }
    for n in &r.notes {
        eprintln!("note: {n}");
    }
    if c.exits {
        match &r.stats {
            Some(s) => eprint!(
                "QEMU {}",
                vmm::exits::stats_table(s).replace("KVM_GET_STATS_FD", "QMP query-stats")
            ),
            None => eprintln!(
                "QEMU statistics: not available (accel {}; QMP query-stats gave nothing)",
                r.accel
            ),
        }
    }
    if let Some(p) = &c.exits_json {
        let doc = RunJson {
            vmm: "qemu".into(),
            accel: Some(r.accel.into()),
            platform: Platform::detect().to_json(),
            outcome: OutcomeJson::new(&r.outcome, code, &msg),
            ktap: (&r.ktap).into(),
            elapsed_ms: r.elapsed.as_secs_f64() * 1e3,
            floor: None,
            exits: None,
            kvm_stats: r.stats.as_ref().map(Cow::Borrowed),
            notes: Cow::Borrowed(&r.notes),
            phases: Cow::Borrowed(&r.phases),
            timing: None,
        };
        write_json(p, &doc)?;
    }
    if let Some(m) = msg {
        eprintln!("error: {m}");
    }
    Ok(code)
}

/// One command to a monitor; 0 when it was answered (and, for QMP, not with an error).
fn cmd_monitor(a: &MonitorArgs) -> Result<i32, HarnessError> {
    use crate::monitor::client;
    let command = a.command.join(" ");
    if a.qmp {
        let reply = client::qmp_command(&a.path, &command).map_err(HarnessError::Unavailable)?;
        println!("{reply}");
        Ok(if reply.get("error").is_some() {
            EXIT_FAILED
        } else {
            EXIT_PASSED
        })
    } else {
        let reply = client::hmp_command(&a.path, &command).map_err(HarnessError::Unavailable)?;
        print!("{reply}");
        Ok(EXIT_PASSED)
    }
}

/// Parse arguments and run; returns the process exit code. Errors print one `error:` line.
pub fn main<I: IntoIterator<Item = OsString>>(args: I) -> i32 {
    vmm::timing::mark_process_start();
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    return 0;
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    eprintln!("error: a subcommand is required: run, qemu or bench (see --help)");
                    return EXIT_USAGE;
                }
                _ => {}
            }
            let text = e.to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("bad usage");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("error: {first} (see --help)");
            return EXIT_USAGE;
        }
    };
    let res = match &cli.cmd {
        Cmd::Run(a) => cmd_run(a),
        Cmd::Qemu(a) => cmd_qemu(a),
        Cmd::Bench(a) => crate::bench::cmd_bench(a),
        Cmd::Monitor(a) => cmd_monitor(a),
        Cmd::Peer(a) => crate::backends::net::peer::switch::serve(&a.listen, a.verbose).map(|_| 0),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("hypervisor-harness").chain(args.iter().copied()))
    }

    #[test]
    fn run_defaults() {
        let Cmd::Run(r) = parse(&["run", "--kernel", "k"]).unwrap().cmd else {
            panic!()
        };
        assert_eq!(r.common.mem, 256 << 20);
        assert_eq!(r.common.cmdline, "tests=all");
        assert_eq!(r.common.timeout, 60);
        assert!(!r.common.exits);
    }

    #[test]
    fn usage_errors() {
        for a in [
            &["run", "--mem", "12Q"][..],
            &["run", "--mem", "16M"],
            &["run", "--mem", "4G"],
            &["run", "--timeout", "0"],
            &["run", "--bogus"],
            &["qemu", "--accel", "hvf"],
            &["bench", "--runs", "0"],
            &["frobnicate"],
            &["run", "--monitor", "/tmp/m.sock"],
            &["run", "--qmp", "tcp:localhost:4444"],
            &["monitor", "/tmp/m.sock"],
        ] {
            assert!(parse(a).is_err(), "{a:?} accepted");
        }
        assert_eq!(
            main(["hh", "run", "--mem", "12Q"].map(OsString::from)),
            EXIT_USAGE
        );
        assert_eq!(main(["hh"].map(OsString::from)), EXIT_USAGE);
        assert_eq!(main(["hh", "--help"].map(OsString::from)), 0);
    }

    #[test]
    fn qemu_iothread_and_cache_none() {
        let Cmd::Qemu(q) = parse(&["qemu", "--iothread", "--cache-none"]).unwrap().cmd else {
            panic!()
        };
        assert!(q.iothread && q.cache_none);
        let Cmd::Qemu(q) = parse(&["qemu"]).unwrap().cmd else {
            panic!()
        };
        assert!(!q.iothread && !q.cache_none, "QEMU's defaults unless asked");
        assert!(parse(&["run", "--iothread"]).is_err(), "QEMU's option only");
    }

    #[test]
    fn monitor_sockets_and_client() {
        let Cmd::Run(r) = parse(&["run", "--monitor", "unix:/tmp/m", "--qmp", "unix:/tmp/q"])
            .unwrap()
            .cmd
        else {
            panic!()
        };
        assert_eq!(r.common.monitor, Some(PathBuf::from("/tmp/m")));
        assert_eq!(r.common.qmp, Some(PathBuf::from("/tmp/q")));
        let Cmd::Monitor(m) = parse(&["monitor", "/tmp/m", "info", "status"]).unwrap().cmd else {
            panic!()
        };
        assert_eq!(m.command.join(" "), "info status");
        assert!(!m.qmp);
        // Nobody listens there: the client says so, it does not hang.
        assert_eq!(
            main(["hh", "monitor", "/nonexistent/m.sock", "info", "status"].map(OsString::from)),
            EXIT_UNAVAILABLE
        );
    }

    #[test]
    fn ide_disk_index() {
        let r = match parse(&["run", "--disk", "ide:/a.img,index=3,ro"])
            .unwrap()
            .cmd
        {
            Cmd::Run(r) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(r.common.disk[0].index, Some(3));
        assert!(r.common.disk[0].read_only);
        for bad in [
            "ide:/a.img,index=4",
            "ide:/a.img,index=x",
            "virtio:/a.img,index=0",
        ] {
            assert!(parse(&["run", "--disk", bad]).is_err(), "{bad} accepted");
            assert!(parse(&["qemu", "--disk", bad]).is_err(), "{bad} accepted");
            assert_eq!(
                main(["hh", "run", "--disk", bad].map(OsString::from)),
                EXIT_USAGE
            );
        }
    }
}
