//! The VMM: the only code that talks to KVM. It builds the machine, runs the vCPU and turns
//! exits into bus calls.

pub mod balloon_control;
pub mod balloon_wiring;
pub mod boot;
pub mod console_wiring;
pub mod device_manager;
pub mod dispatch;
pub mod e1000_wiring;
pub mod emulated_nic_thread;
pub mod exit_recorder;
pub mod exits;
pub mod floor_wiring;
pub mod ide_wiring;
pub mod memory;
pub mod monitor_target;
pub mod net_wiring;
pub mod pio;
pub mod rtl8139_wiring;
pub mod teardown;
pub mod timing;
pub mod vcpu;
pub mod virtio_wiring;
pub mod vm;
mod watchdog;

use crate::backends::disk::{DiskSpec, OpenedDisks};
use crate::backends::net::spec::{NetSpec, NicModel};
use crate::devices::bus::Bus;
use crate::devices::debug_exit::{DebugExit, ExitRequest, DEBUG_EXIT_LEN, DEBUG_EXIT_PORT};
use crate::devices::ide::piix::MAX_DRIVES as MAX_IDE_DRIVES;
use crate::devices::pci::host_bridge::HostBridge;
use crate::devices::serial::{LineTee, SerialDevice, COM1_BASE, COM1_GSI, COM1_LEN};
use crate::devices::{lock, Interrupt};
use crate::error::HarnessError;
use crate::ktap::{KtapParser, KtapSummary};
use device_manager::DeviceManager;
use dispatch::IoExit;
use exits::{Dir, ExitCounters, KvmStats, PhaseLog, PhaseMark, Reason};
use kvm_ioctls::VcpuExit;
use memory::GuestMem;
use monitor_target::{QuitRequest, VirtioFunction, VmView};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use vcpu::CpuSnapshot;

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub kernel: PathBuf,
    pub mem: u64,
    pub cmdline: String,
    pub timeout: Duration,
    /// End the run when the vCPU makes no port or MMIO exit for this long
    /// (`--stall-timeout`): a guest spinning without I/O.
    pub stall_timeout: Option<Duration>,
    pub serial_log: Option<PathBuf>,
    pub verbose: bool,
    /// Disks in guest order (`--disk`).
    pub disks: Vec<DiskSpec>,
    /// NICs in guest order (`--net`), after the virtio disks.
    pub nets: Vec<NetSpec>,
    pub io_mode: IoMode,
    /// Hand the VM's teardown to a helper process ([`teardown`]): for a process that exits
    /// right after the run.
    pub hand_off_teardown: bool,
    /// Add a virtio-balloon (`--balloon`).
    pub balloon: bool,
    /// With it, the guest memory to ask for from the start (`--balloon-target`, bytes).
    pub balloon_target: Option<u64>,
    /// Add a virtio-console with port 0 there (`--console`).
    pub console: Option<console_wiring::ConsoleTarget>,
    /// With it, named extra ports (`--console-port`).
    pub console_ports: Vec<console_wiring::NamedPort>,
    /// Serve QEMU's human monitor on this UNIX socket (`--monitor unix:PATH`).
    pub monitor: Option<PathBuf>,
    /// Serve QMP on this UNIX socket (`--qmp unix:PATH`).
    pub qmp: Option<PathBuf>,
    /// The threads' seccomp filters (`--seccomp`, `--seccomp-selftest`).
    pub seccomp: crate::seccomp::SeccompConfig,
    /// Test only (`--stuck-device-selftest`): the vCPU thread never comes back from its first
    /// port or MMIO exit, so that the watchdog's hard deadline ends the process.
    pub stuck_device_selftest: bool,
}

/// Where virtio queue processing runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IoMode {
    /// A dedicated I/O thread woken by the notify ioeventfd; completions by irqfd.
    Thread,
    /// In the vCPU thread, on the notify exit (no ioeventfd).
    Inline,
}

#[derive(Debug, Clone)]
pub enum VmEnd {
    DebugExit(u32),
    /// The vCPU where the timeout found it.
    Timeout(CpuSnapshot),
    /// No port or MMIO exit for `seconds` (`--stall-timeout`).
    NoProgress {
        seconds: u64,
        cpu: CpuSnapshot,
    },
    /// The monitor's `quit`.
    Quit,
    Shutdown(CpuSnapshot),
    InternalError {
        suberror: u32,
        cpu: CpuSnapshot,
    },
    FailEntry {
        reason: u64,
        cpu: CpuSnapshot,
    },
    Unexpected {
        what: String,
        cpu: CpuSnapshot,
    },
}

impl VmEnd {
    /// The vCPU's state, for the ends that carry it.
    pub fn cpu_mut(&mut self) -> Option<&mut CpuSnapshot> {
        match self {
            VmEnd::DebugExit(_) | VmEnd::Quit => None,
            VmEnd::Timeout(cpu)
            | VmEnd::NoProgress { cpu, .. }
            | VmEnd::Shutdown(cpu)
            | VmEnd::InternalError { cpu, .. }
            | VmEnd::FailEntry { cpu, .. }
            | VmEnd::Unexpected { cpu, .. } => Some(cpu),
        }
    }
}

/// The last port or MMIO exit, for a report.
#[derive(Debug, Clone, Copy)]
struct LastIo {
    port: bool,
    addr: u64,
    dir: Dir,
    len: usize,
}

impl LastIo {
    fn port(port: u16, dir: Dir, len: usize) -> Self {
        Self {
            port: true,
            addr: port.into(),
            dir,
            len,
        }
    }

    fn mmio(addr: u64, dir: Dir, len: usize) -> Self {
        Self {
            port: false,
            addr,
            dir,
            len,
        }
    }
}

impl std::fmt::Display for LastIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.port { "port" } else { "MMIO" };
        let dir = match self.dir {
            Dir::Read => "read",
            Dir::Write => "write",
        };
        write!(f, "{what} {:#x} {dir} ({} B)", self.addr, self.len)
    }
}

#[derive(Debug, Clone)]
pub struct RunResult {
    pub end: VmEnd,
    pub counters: ExitCounters,
    pub kvm_stats: KvmStats,
    pub ktap: KtapSummary,
    /// The floor device's BAR0 (I/O) and BAR1 (MMIO) addresses.
    pub floor_bars: (u64, u64),
    pub elapsed: Duration,
    pub notes: Vec<String>,
    /// Counter snapshots at the guest's `# phase:` lines.
    pub phases: Vec<PhaseMark>,
    /// Start-up phases and resident memory.
    pub timing: timing::TimingJson,
}

fn verbose(cfg: &RunConfig, msg: &str) {
    if cfg.verbose {
        eprintln!("harness: {msg}");
    }
}

/// Element size of the last KVM_EXIT_IO, as KVM reported it (checked by [`pio`]).
fn io_size(vcpu: &mut kvm_ioctls::VcpuFd) -> u8 {
    // SAFETY: called right after KVM_RUN returned KVM_EXIT_IO, so `io` is the active member.
    unsafe { vcpu.get_kvm_run().__bindgen_anon_1.io.size }
}

/// Copy the result of a string `in` into kvm_run's data area (at most count * size bytes).
fn io_in_data(vcpu: &mut kvm_ioctls::VcpuFd, buf: &[u8]) {
    let run = vcpu.get_kvm_run();
    // SAFETY: `io` is the active member after KVM_EXIT_IO.
    let io = unsafe { run.__bindgen_anon_1.io };
    let len = buf.len().min(io.size as usize * io.count as usize);
    let base = run as *mut kvm_bindings::kvm_run as *mut u8;
    // SAFETY: KVM places the count * size data bytes at data_offset inside the kvm_run
    // mapping (the same area kvm-ioctls hands out as the IoIn slice); len is within that.
    unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), base.add(io.data_offset as usize), len) };
}

/// A port or MMIO exit, noted for the watchdog. Under `--stuck-device-selftest` the vCPU thread
/// stays in it as in a device handler that never returns (kicks and all), for the watchdog's
/// hard deadline to end.
fn noted(watchdog: &watchdog::Watchdog, io: LastIo, stuck_device_selftest: bool) -> Option<LastIo> {
    watchdog.note_exit(&io);
    if stuck_device_selftest {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    Some(io)
}

/// Guest RAM layout check plus the host-memory check, as usage errors.
pub fn check_mem(mem: u64) -> Result<(), HarnessError> {
    memory::check_host(mem).map_err(HarnessError::Usage)
}

/// Build the machine, run it to the end and collect the counters.
pub fn run(cfg: &RunConfig) -> Result<RunResult, HarnessError> {
    crate::seccomp::configure(cfg.seccomp).map_err(HarnessError::Other)?;
    let mut machine = Machine::build(cfg)?;
    // The monitors live until the run ends: a `quit` after that finds no socket.
    let mut monitors = Vec::new();
    let sockets = [
        (&cfg.monitor, crate::monitor::Protocol::Hmp),
        (&cfg.qmp, crate::monitor::Protocol::Qmp),
    ];
    if sockets.iter().any(|(path, _)| path.is_some()) {
        let view: Arc<dyn crate::monitor::MonitorTarget> = Arc::new(machine.monitor_view());
        for (path, protocol) in sockets {
            if let Some(path) = path {
                let server = crate::monitor::MonitorServer::start(path, protocol, view.clone())
                    .map_err(HarnessError::Usage)?;
                monitors.push(server);
            }
        }
    }
    // From here to the end of the teardown: once a limit is reached, the run is over within
    // the grace, or the watchdog ends the process.
    let watch = watchdog::RunWatch::start(
        watchdog::Limits {
            timeout: cfg.timeout,
            stall_timeout: cfg.stall_timeout,
        },
        machine.quit.clone(),
        watchdog::print_and_exit(watchdog::HARD_DEADLINE_GRACE),
    )?;
    let (end, counters, elapsed) = machine.run_vcpu(&watch, cfg.stuck_device_selftest)?;
    drop(monitors);
    let mut result = machine.report(end, counters, elapsed);
    // The guest is done and its results are read: destroying the VM need not hold up our exit.
    if cfg.hand_off_teardown {
        if let Err(e) = teardown::hand_off() {
            result
                .notes
                .push(format!("VM teardown stays in this process: {e}"));
        }
    }
    drop(machine);
    drop(watch);
    Ok(result)
}

/// A machine built and ready to run: the VM with its vCPU and devices, and the handles the run
/// loop and the report read. Fields drop in order: the vCPU and the devices before the VM and
/// its memory.
struct Machine {
    vcpu: kvm_ioctls::VcpuFd,
    pio: Bus,
    mmio: Bus,
    serial: Arc<Mutex<SerialDevice>>,
    exit_req: ExitRequest,
    ktap: Arc<Mutex<KtapParser>>,
    /// `# phase: <marker>` lines from the guest: the run loop snapshots the counters there.
    phase_lines: Arc<Mutex<PhaseLog>>,
    /// Set with each new marker, so the run loop takes the lock only when there is one.
    phase_pending: Arc<AtomicBool>,
    /// When the serial port gave the first `KTAP version` line.
    first_ktap: Arc<OnceLock<Instant>>,
    marks: timing::BootMarks,
    floor_bars: (u64, u64),
    /// The virtio functions, whose transports report what their drivers did wrong.
    virtio: Vec<virtio_wiring::Attached>,
    /// The virtio disks' I/O threads, whose CPU time each phase mark takes.
    io_thread_clocks: Vec<crate::thread_cpu::ThreadCpuClock>,
    /// The NICs, whose counters the report carries.
    nics: Vec<net_wiring::AttachedNic>,
    /// The e1000 NICs (after the virtio ones on the bus), likewise.
    e1000s: Vec<e1000_wiring::AttachedE1000>,
    /// The RTL8139 NICs (after the e1000s), likewise.
    rtl8139s: Vec<rtl8139_wiring::AttachedRtl8139>,
    /// `faults=`: each faulty NIC's `--net` index and its fault counts, for the report.
    net_faults: Vec<(usize, crate::backends::net::faulty::SharedFaultCounts)>,
    /// The exit counters, shared with the monitor while the vCPU runs.
    counters: Arc<Mutex<ExitCounters>>,
    /// The functions on the PCI bus, for the monitor.
    pci_functions: Vec<(
        crate::devices::pci::Bdf,
        crate::devices::pci::SharedFunction,
    )>,
    /// What the monitor's `balloon` commands drive (`--balloon`).
    balloon: Option<Arc<dyn balloon_control::BalloonControl>>,
    /// The balloon itself, whose notes (RSS at each phase mark) the report carries.
    balloon_device: Option<balloon_wiring::AttachedBalloon>,
    console_device: Option<console_wiring::AttachedConsole>,
    /// Set by the monitor's `quit`.
    quit: QuitRequest,
    vm: vm::Vm,
    mem: GuestMem,
}

impl Machine {
    /// Guest memory with the kernel and its boot information, the VM, its devices and the vCPU
    /// at the PVH entry.
    fn build(cfg: &RunConfig) -> Result<Self, HarnessError> {
        check_mem(cfg.mem)?;
        boot::check_cmdline(&cfg.cmdline).map_err(HarnessError::Usage)?;
        let mem = memory::create(cfg.mem).map_err(HarnessError::Other)?;
        let entry = boot::load_kernel(&mem, &cfg.kernel).map_err(|e| match e {
            boot::BootError::Image(m) => HarnessError::Image(m),
            boot::BootError::Other(m) => HarnessError::Other(m),
        })?;
        boot::write_boot_info(&mem, cfg.mem, &cfg.cmdline).map_err(|e| match e {
            boot::BootError::Image(m) | boot::BootError::Other(m) => HarnessError::Other(m),
        })?;
        if cfg.verbose {
            // Only then: detecting the platform reads /proc/cpuinfo.
            verbose(
                cfg,
                &format!("platform: {}", crate::platform::Platform::detect()),
            );
        }
        verbose(
            cfg,
            &format!(
                "kernel {} PVH entry {entry:#x}, {} MiB RAM, cmdline {:?}",
                cfg.kernel.display(),
                cfg.mem >> 20,
                cfg.cmdline
            ),
        );

        let disks = OpenedDisks::open(&cfg.disks, virtio_wiring::MAX_DISKS, MAX_IDE_DRIVES)
            .map_err(HarnessError::Usage)?;
        // Each NIC's default MAC is fixed first by its place among all `--net`s, as QEMU
        // numbers them; each model's wiring checks its own (what it cannot attach is a usage
        // error), the INTx lines counted over all of them.
        let net_specs: Vec<NetSpec> = cfg
            .nets
            .iter()
            .enumerate()
            .map(|(i, s)| NetSpec {
                mac: Some(s.mac_or_default(i)),
                ..s.clone()
            })
            .collect();
        for spec in &net_specs {
            match spec.model {
                NicModel::VirtioNet => net_wiring::check_spec(spec)?,
                NicModel::E1000 => {}
                NicModel::Rtl8139 => rtl8139_wiring::check_spec(spec)?,
            }
        }
        virtio_wiring::check_intx_lines(
            disks.virtio.len(),
            net_specs.len(),
            cfg.balloon,
            cfg.console.is_some(),
        )?;
        let balloon_intx = disks.virtio.len() + net_specs.len();
        let console_intx = balloon_intx + usize::from(cfg.balloon);
        let any_virtio_net = net_specs.iter().any(|s| s.model == NicModel::VirtioNet);
        // Backends open before anything else starts, so a missing one is an error up front.
        let mut nets = Vec::with_capacity(net_specs.len());
        let mut net_faults = Vec::new();
        for (k, spec) in net_specs.into_iter().enumerate() {
            let backend = net_wiring::open_backend(&spec.backend)?;
            let (backend, faults) = crate::backends::net::faulty::wrap(backend, spec.faults)
                .map_err(|e| HarnessError::Other(format!("--net faults=: epoll/eventfd: {e}")))?;
            net_faults.extend(faults.map(|f| (k, f)));
            let backend = exit_recorder::wrap_net(backend, spec.model.name());
            nets.push((spec, backend));
        }
        let mut vm = vm::Vm::open()?;
        vm.setup(&mem)?;
        let other =
            |what: &str, e: &dyn std::fmt::Display| HarnessError::Other(format!("{what}: {e}"));

        // Devices.
        let mut dm = DeviceManager::new(&mut vm);
        let ktap = Arc::new(Mutex::new(KtapParser::new()));
        let out: Box<dyn Write + Send> = match &cfg.serial_log {
            Some(p) => Box::new(std::fs::File::create(p).map_err(|e| {
                HarnessError::Usage(format!("cannot create --serial-log {}: {e}", p.display()))
            })?),
            None => Box::new(std::io::stdout()),
        };
        let k2 = ktap.clone();
        let phase_lines: Arc<Mutex<PhaseLog>> = Arc::default();
        let phase_pending = Arc::new(AtomicBool::new(false));
        let (p2, pp2) = (phase_lines.clone(), phase_pending.clone());
        let first_ktap: Arc<OnceLock<Instant>> = Arc::default();
        let fk2 = first_ktap.clone();
        let tee = LineTee::new(
            out,
            Box::new(move |line| {
                if fk2.get().is_none() && line.trim_start().starts_with("KTAP version") {
                    let _ = fk2.set(Instant::now());
                }
                lock(&k2).feed(line);
                if let Some(marker) = line.trim_start().strip_prefix("# phase: ") {
                    lock(&p2).push(marker.trim());
                    pp2.store(true, Ordering::Release);
                }
            }),
        );
        let com1_irq: Arc<dyn Interrupt> = dm.irqfd(COM1_GSI)?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(com1_irq, tee)));
        let exit_req = ExitRequest::default();
        dm.insert_pio("com1", COM1_BASE, COM1_LEN, serial.clone())?;
        dm.insert_pio(
            "debug-exit",
            DEBUG_EXIT_PORT,
            DEBUG_EXIT_LEN,
            Arc::new(Mutex::new(DebugExit::new(exit_req.clone()))),
        )?;
        let host_bridge = dm.next_bdf()?;
        dm.add_pci(host_bridge, Arc::new(Mutex::new(HostBridge::new())));
        let floor_bars = floor_wiring::attach(&mut dm)?;
        // Disks, in guest order. virtio disks are one PCI function each; IDE disks share one
        // PIIX-style controller (primary master, primary slave, secondary master, secondary slave).
        // One GSI routing table for every virtio function's MSI routes.
        let n_virtio_disks = disks.virtio.len();
        let router = if n_virtio_disks > 0 || any_virtio_net || cfg.balloon || cfg.console.is_some()
        {
            Some(Arc::new(Mutex::new(virtio_wiring::GsiRouter::new(
                &dm.vm.kvm, &dm.vm.fd,
            )?)))
        } else {
            None
        };
        let (virtio, io_thread_clocks) = match &router {
            Some(router) => {
                let attached =
                    virtio_wiring::attach_all(&mut dm, &mem, disks.virtio, cfg.io_mode, router)?;
                for note in &attached.notes {
                    verbose(cfg, note);
                }
                (attached.functions, attached.io_thread_clocks)
            }
            None => (Vec::new(), Vec::new()),
        };
        // NICs take PCI slots and INTx lines in `--net` order, whatever their model, as
        // QEMU's `-device` order gives them; each model numbers its own (virtio-net0, e1000-0).
        let (mut nics, mut e1000s, mut rtl8139s) = (Vec::new(), Vec::new(), Vec::new());
        for (k, (spec, backend)) in nets.into_iter().enumerate() {
            let gsi = *virtio_wiring::INTX_GSIS
                .get(n_virtio_disks + k)
                .ok_or_else(|| HarnessError::Usage("--net: too many INTx functions".into()))?;
            let note = match spec.model {
                NicModel::VirtioNet => {
                    let router = router.as_ref().ok_or_else(|| {
                        HarnessError::Other("virtio-net without a GSI router".into())
                    })?;
                    let n = nics.len();
                    let (nic, note) = net_wiring::attach(
                        &mut dm,
                        &mem,
                        n,
                        &spec,
                        backend,
                        gsi,
                        cfg.io_mode,
                        router,
                    )?;
                    nics.push(nic);
                    note
                }
                NicModel::E1000 => {
                    let n = e1000s.len();
                    let (nic, note) = e1000_wiring::attach(&mut dm, &mem, n, &spec, backend, gsi)?;
                    e1000s.push(nic);
                    note
                }
                NicModel::Rtl8139 => {
                    let n = rtl8139s.len();
                    let (nic, note) =
                        rtl8139_wiring::attach(&mut dm, &mem, n, &spec, backend, gsi)?;
                    rtl8139s.push(nic);
                    note
                }
            };
            verbose(cfg, &note);
        }
        let balloon_device = match (&router, cfg.balloon) {
            (Some(router), true) => {
                let (b, note) = balloon_wiring::attach(
                    &mut dm,
                    &mem,
                    virtio_wiring::INTX_GSIS[balloon_intx],
                    cfg.io_mode,
                    router,
                    cfg.balloon_target,
                )?;
                verbose(cfg, &note);
                Some(b)
            }
            _ => None,
        };
        let console_device = match (&router, &cfg.console) {
            (Some(router), Some(target)) => {
                let (c, note) = console_wiring::attach(
                    &mut dm,
                    &mem,
                    virtio_wiring::INTX_GSIS[console_intx],
                    cfg.io_mode,
                    router,
                    target,
                    &cfg.console_ports,
                )?;
                verbose(cfg, &note);
                Some(c)
            }
            _ => None,
        };
        ide_wiring::attach(&mut dm, &mem, disks.ide)?;
        let pci_functions = dm.pci_functions();
        let (pio, mmio) = dm.finish()?;

        // vCPU.
        let vcpu = vm
            .fd
            .create_vcpu(0)
            .map_err(|e| other("KVM_CREATE_VCPU", &e))?;
        let note = vcpu::setup_cpuid(&vm.kvm, &vcpu).map_err(HarnessError::Other)?;
        vm.notes.push(note);
        vcpu::setup_registers(&vcpu, entry).map_err(HarnessError::Other)?;
        if let Err(e) = vcpu::setup_msrs(&vcpu) {
            vm.notes.push(format!("MSR setup: {e}"));
        }
        for n in &vm.notes {
            verbose(cfg, n);
        }
        Ok(Self {
            vcpu,
            pio,
            mmio,
            serial,
            exit_req,
            ktap,
            phase_lines,
            phase_pending,
            first_ktap,
            marks: timing::BootMarks::default(),
            floor_bars,
            virtio,
            io_thread_clocks,
            nics,
            e1000s,
            rtl8139s,
            net_faults,
            counters: Arc::default(),
            pci_functions,
            balloon: balloon_device.as_ref().map(|b| b.control.clone()),
            balloon_device,
            console_device,
            quit: QuitRequest::default(),
            vm,
            mem,
        })
    }

    /// What the monitor sees of the machine while it runs.
    fn monitor_view(&self) -> VmView {
        let virtio = self
            .virtio
            .iter()
            .chain(self.nics.iter().map(|n| &n.function))
            .chain(self.balloon_device.iter().map(|b| &b.function))
            .chain(self.console_device.iter().map(|c| &c.function))
            .map(|a| {
                // The function's slot: the PCI entry that is this very device.
                let bdf = self
                    .pci_functions
                    .iter()
                    .find(|(_, f)| std::ptr::addr_eq(Arc::as_ptr(f), Arc::as_ptr(&a.dev)))
                    .map_or(crate::devices::pci::Bdf::new(0xff, 0x1f, 7), |(b, _)| *b);
                VirtioFunction {
                    name: a.name.clone(),
                    bdf,
                    dev: a.dev.clone(),
                }
            })
            .collect();
        VmView {
            counters: self.counters.clone(),
            vm_stats: exits::stats_fd(&self.vm.fd).ok(),
            vcpu_stats: exits::stats_fd(&self.vcpu).ok(),
            pci: self.pci_functions.clone(),
            virtio,
            mem: self.mem.clone(),
            balloon: self.balloon.clone(),
            quit: self.quit.clone(),
        }
    }

    /// Run the vCPU on a thread of its own under its seccomp filter, this thread waiting: what
    /// follows the run (the report, the teardown's fork, the JSON file) needs system calls the
    /// vCPU's filter leaves out.
    fn run_vcpu(
        &mut self,
        watch: &watchdog::RunWatch,
        stuck_device_selftest: bool,
    ) -> Result<(VmEnd, ExitCounters, Duration), HarnessError> {
        std::thread::scope(|scope| {
            let vcpu_thread = std::thread::Builder::new()
                .name("vcpu0".into())
                .spawn_scoped(scope, || {
                    // The watchdog kicks this thread; its limits count from here.
                    let watchdog = watch.watch_this_thread();
                    // Read at each phase mark; opened before the filter forbids it.
                    let vcpu_stats = exits::stats_fd(&self.vcpu).ok();
                    crate::seccomp::enter(crate::seccomp::ThreadKind::Vcpu);
                    let start = Instant::now();
                    let (end, counters) =
                        self.run_loop(&watchdog, vcpu_stats.as_ref(), stuck_device_selftest);
                    self.marks.mark_end();
                    let elapsed = start.elapsed();
                    drop(watchdog);
                    Ok((end, counters, elapsed))
                })
                .map_err(|e| HarnessError::Other(format!("vCPU thread: {e}")))?;
            vcpu_thread
                .join()
                .map_err(|_| HarnessError::Other("the vCPU thread panicked".into()))?
        })
    }

    /// Run the vCPU until the guest exits, the VM ends abnormally or the watchdog fires.
    fn run_loop(
        &mut self,
        watchdog: &watchdog::Watchdog,
        vcpu_stats: Option<&std::os::fd::OwnedFd>,
        stuck_device_selftest: bool,
    ) -> (VmEnd, ExitCounters) {
        let Self {
            vcpu,
            pio,
            mmio,
            exit_req,
            phase_lines,
            phase_pending,
            mem,
            marks,
            counters,
            quit,
            balloon_device,
            io_thread_clocks,
            ..
        } = self;
        // This is the vCPU thread: its own clock, for the phase marks.
        let vcpu_clock = crate::thread_cpu::ThreadCpuClock::current().ok();
        // Taken per exit, never across KVM_RUN, so the monitor reads it while the vCPU runs.
        let counters = &**counters;
        // The data of the last `out`, and the reusable buffer of the last `in`.
        let mut out_buf: Vec<u8> = Vec::new();
        let mut in_buf: Vec<u8> = Vec::new();
        let mut last_io: Option<LastIo> = None;
        let mut end = loop {
            if phase_pending.swap(false, Ordering::Acquire) {
                let mut log = lock(phase_lines);
                for marker in log.take_inbox() {
                    if let Some(b) = balloon_device {
                        b.mark(&marker, mem);
                    }
                    let mark = PhaseMark::take(marker, &lock(counters), vcpu_stats)
                        .with_cpu(io_thread_clocks, vcpu_clock.as_ref());
                    log.record(mark);
                }
            }
            if let Some(v) = exit_req.get() {
                break VmEnd::DebugExit(v);
            }
            if quit.requested() {
                break VmEnd::Quit;
            }
            if let Some(seconds) = watchdog.stalled() {
                break VmEnd::NoProgress {
                    seconds,
                    cpu: vcpu::snapshot(vcpu, mem),
                };
            }
            if watchdog.timed_out() {
                break VmEnd::Timeout(vcpu::snapshot(vcpu, mem));
            }
            let mut pio_exit: Option<(u16, Dir)> = None;
            marks.mark_first_run();
            let exit = match vcpu.run() {
                Ok(e) => e,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    lock(counters).record(Reason::Intr);
                    continue;
                }
                Err(e) => {
                    let cpu = vcpu::snapshot(vcpu, mem);
                    break VmEnd::Unexpected {
                        what: format!("KVM_RUN failed: {e}"),
                        cpu,
                    };
                }
            };
            match exit {
                // Port I/O is handled after the match, once the borrow of kvm_run's data ends and
                // its element size can be read: see `pio`.
                VcpuExit::IoOut(port, data) => {
                    let io = LastIo::port(port, Dir::Write, data.len());
                    last_io = noted(watchdog, io, stuck_device_selftest);
                    out_buf.clear();
                    out_buf.extend_from_slice(data);
                    pio_exit = Some((port, Dir::Write));
                }
                VcpuExit::IoIn(port, data) => {
                    let io = LastIo::port(port, Dir::Read, data.len());
                    last_io = noted(watchdog, io, stuck_device_selftest);
                    in_buf.clear();
                    in_buf.resize(data.len(), 0);
                    pio_exit = Some((port, Dir::Read));
                }
                VcpuExit::MmioWrite(addr, data) => {
                    let io = LastIo::mmio(addr, Dir::Write, data.len());
                    last_io = noted(watchdog, io, stuck_device_selftest);
                    dispatch::dispatch(pio, mmio, counters, IoExit::MmioWrite { addr, data });
                }
                VcpuExit::MmioRead(addr, data) => {
                    let io = LastIo::mmio(addr, Dir::Read, data.len());
                    last_io = noted(watchdog, io, stuck_device_selftest);
                    dispatch::dispatch(pio, mmio, counters, IoExit::MmioRead { addr, data });
                }
                VcpuExit::Hlt => {
                    // Only without an in-kernel LAPIC; nothing can wake us, so it's the end.
                    lock(counters).record(Reason::Hlt);
                    let cpu = vcpu::snapshot(vcpu, mem);
                    break VmEnd::Unexpected {
                        what: "guest halted (KVM_EXIT_HLT)".into(),
                        cpu,
                    };
                }
                VcpuExit::IrqWindowOpen => lock(counters).record(Reason::IrqWindow),
                VcpuExit::Intr => lock(counters).record(Reason::Intr),
                VcpuExit::Shutdown => {
                    lock(counters).record(Reason::Shutdown);
                    break VmEnd::Shutdown(vcpu::snapshot(vcpu, mem));
                }
                VcpuExit::InternalError => {
                    lock(counters).record(Reason::InternalError);
                    // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                    // active union member.
                    let suberror = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    break VmEnd::InternalError {
                        suberror,
                        cpu: vcpu::snapshot(vcpu, mem),
                    };
                }
                VcpuExit::FailEntry(reason, _) => {
                    lock(counters).record(Reason::FailEntry);
                    break VmEnd::FailEntry {
                        reason,
                        cpu: vcpu::snapshot(vcpu, mem),
                    };
                }
                VcpuExit::SystemEvent(ty, _) => {
                    lock(counters).record(Reason::SystemEvent);
                    let what = format!("KVM_EXIT_SYSTEM_EVENT type {ty}");
                    break VmEnd::Unexpected {
                        what,
                        cpu: vcpu::snapshot(vcpu, mem),
                    };
                }
                other_exit => {
                    lock(counters).record(Reason::Other);
                    let what = format!("unexpected exit {other_exit:?}");
                    break VmEnd::Unexpected {
                        what,
                        cpu: vcpu::snapshot(vcpu, mem),
                    };
                }
            }
            // `count` accesses of `size` bytes each at the same port (`rep ins/outs`).
            if let Some((port, dir)) = pio_exit {
                let size = io_size(vcpu);
                match dir {
                    Dir::Write => {
                        let data = &out_buf;
                        dispatch::dispatch(
                            pio,
                            mmio,
                            counters,
                            IoExit::PortOut { port, size, data },
                        );
                    }
                    Dir::Read => {
                        let data = &mut in_buf;
                        dispatch::dispatch(
                            pio,
                            mmio,
                            counters,
                            IoExit::PortIn { port, size, data },
                        );
                        io_in_data(vcpu, &in_buf);
                    }
                }
            }
        };
        if let Some(cpu) = end.cpu_mut() {
            cpu.last_io = last_io.map(|io| io.to_string());
        }
        let counters = lock(counters).clone();
        (end, counters)
    }

    /// Drain the serial line and the phase log, read KVM's statistics, and collect the result.
    /// (The machine stays alive, so that its teardown can be handed off: see [`teardown`].)
    fn report(&mut self, end: VmEnd, counters: ExitCounters, elapsed: Duration) -> RunResult {
        lock(&self.serial).finish();
        let phases = {
            let mut log = lock(&self.phase_lines);
            self.vm.notes.extend(log.note());
            std::mem::take(&mut log.marks)
        };
        self.vm.notes.extend(lock(&self.serial).note());
        for function in &self.virtio {
            self.vm.notes.extend(function.notes());
        }
        self.vm
            .notes
            .extend(crate::devices::virtio::drain::drains_cut_note());
        for nic in &self.nics {
            self.vm.notes.extend(nic.notes());
        }
        for nic in &self.e1000s {
            self.vm.notes.extend(nic.notes());
        }
        for nic in &self.rtl8139s {
            self.vm.notes.extend(nic.notes());
        }
        for (nic, counts) in &self.net_faults {
            let counts = *lock(counts);
            let note = crate::backends::net::faulty::FaultNote { nic: *nic, counts };
            if let Ok(json) = serde_json::to_string(&note) {
                let prefix = crate::backends::net::faulty::FAULTS_NOTE;
                self.vm.notes.push(format!("{prefix}{json}"));
            }
        }
        if let Some(b) = &self.balloon_device {
            self.vm.notes.extend(b.notes(&self.mem));
        }
        if let Some(c) = &self.console_device {
            self.vm.notes.extend(c.notes());
        }

        let mut kvm_stats = KvmStats::new();
        for (scope, fd) in [
            ("vm", exits::stats_fd(&self.vm.fd)),
            ("vcpu0", exits::stats_fd(&self.vcpu)),
        ] {
            match fd.and_then(|fd| exits::read_stats(&fd)) {
                Ok(s) => {
                    kvm_stats.insert(scope.to_string(), s.into_iter().collect());
                }
                Err(e) => self.vm.notes.push(format!("{scope} stats: {e}")),
            }
        }
        let summary = lock(&self.ktap).summary();
        self.marks.first_ktap = self.first_ktap.get().copied();
        use vm_memory::GuestMemoryBackend;
        let guest_host_addr = self
            .mem
            .get_host_address(vm_memory::GuestAddress(0))
            .ok()
            .map(|p| p as u64);
        let timing = self.marks.to_json(guest_host_addr);
        RunResult {
            end,
            counters,
            kvm_stats,
            ktap: summary,
            floor_bars: self.floor_bars,
            elapsed,
            notes: std::mem::take(&mut self.vm.notes),
            phases,
            timing,
        }
    }
}
