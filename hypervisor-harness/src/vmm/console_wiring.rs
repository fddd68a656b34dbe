//! Attaches the virtio-console (`--console`, `--console-port`): one virtio-pci function named
//! `virtio-console`, wired like the balloon (MSI-X or INTx, an I/O thread on the notify
//! ioeventfds), and a host thread per port that moves bytes between the port and its target.
//!
//! Port 0 goes to the harness's terminal (`--console stdio`: stdout, and stdin as input) or to
//! a UNIX socket the harness listens on (`--console socket:PATH`), one client at a time.
//! `--console-port NAME=socket:PATH` adds named ports (the device then offers MULTIPORT). A
//! client's bytes reach the guest through the port's bounded input; the thread runs the
//! port's receive pass as they arrive, and the control queue's when a client comes or goes.
//! The run's report carries a `console-counters:` note.

use super::device_manager::DeviceManager;
use super::memory::GuestMem;
use super::virtio_wiring::{function_irq, place, Attached, GsiRouter};
use super::IoMode;
use crate::devices::lock;
use crate::devices::virtio::console::port::PortShared;
use crate::devices::virtio::console::{Console, ConsoleCounters, CONTROL_RX_QUEUE};
use crate::devices::virtio::io_thread;
use crate::devices::virtio::transport_pci::{self, QueueWorker, VirtioPciDevice};
use crate::error::HarnessError;
use kvm_ioctls::IoEventAddress;
use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The terminal size the console reports (SIZE).
pub const COLS: u16 = 80;
pub const ROWS: u16 = 25;
/// Most ports besides port 0.
pub const MAX_EXTRA_PORTS: usize = 3;

/// Where a port goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleTarget {
    /// The harness's stdout, and stdin as input.
    Stdio,
    /// A UNIX socket the harness listens on.
    Socket(PathBuf),
}

impl ConsoleTarget {
    /// `stdio` or `socket:PATH`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            _ if s == "stdio" => Ok(Self::Stdio),
            Some(("socket", path)) if !path.is_empty() => Ok(Self::Socket(path.into())),
            _ => Err(format!("{s:?}: expected stdio or socket:PATH")),
        }
    }
}

/// A named extra port: `NAME=socket:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub path: PathBuf,
}

impl NamedPort {
    pub fn parse(s: &str) -> Result<Self, String> {
        let Some((name, target)) = s.split_once('=') else {
            return Err(format!("{s:?}: expected NAME=socket:PATH"));
        };
        if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{name:?}: a port name is 1 to 64 printable characters"
            ));
        }
        match ConsoleTarget::parse(target)? {
            ConsoleTarget::Socket(path) => Ok(Self {
                name: name.to_string(),
                path,
            }),
            ConsoleTarget::Stdio => Err(format!("{s:?}: an extra port goes to a socket")),
        }
    }
}

/// The attached console, kept for the run's report.
pub struct AttachedConsole {
    pub function: Attached,
    ports: Vec<Arc<PortShared>>,
    counters: Arc<Mutex<ConsoleCounters>>,
}

impl AttachedConsole {
    /// One `console-counters:` line, then the transport's notes.
    pub fn notes(&self) -> Vec<String> {
        let mut line = String::from("console-counters:");
        for (id, p) in self.ports.iter().enumerate() {
            let c = p.counters();
            let name = p.name.as_deref().unwrap_or("console");
            line.push_str(&format!(
                " port{id}({name}) to_guest={} from_guest={} dropped={} input_lost={} \
                 connections={};",
                c.to_guest, c.from_guest, c.dropped, c.input_lost, c.host_connections
            ));
        }
        let c = *lock(&self.counters);
        line.push_str(&format!(
            " bad_control={} control_dropped={} malformed_chains={} stray_notifies={} \
             drains_cut={}",
            c.bad_control, c.control_dropped, c.malformed_chains, c.stray_notifies, c.drains_cut
        ));
        let mut notes = vec![line];
        notes.extend(self.function.notes());
        notes
    }
}

/// Copy `from` into `port` until EOF, running `kick` (the receive pass) after each read and
/// while the port's input is full.
fn pump(mut from: impl Read, port: &PortShared, kick: &dyn Fn()) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let mut done = 0;
        while done < n {
            done += port.push_input(&buf[done..n], Duration::from_millis(5), || {
                kick();
                true
            });
        }
        kick();
    }
}

/// Attach the console on INTx `gsi`: port 0 to `target`, then `extra` named ports.
pub fn attach(
    dm: &mut DeviceManager,
    mem: &GuestMem,
    gsi: u8,
    io_mode: IoMode,
    router: &Arc<Mutex<GsiRouter>>,
    target: &ConsoleTarget,
    extra: &[NamedPort],
) -> Result<(AttachedConsole, String), HarnessError> {
    let name = "virtio-console".to_string();
    if extra.len() > MAX_EXTRA_PORTS {
        return Err(HarnessError::Usage(format!(
            "--console-port: at most {MAX_EXTRA_PORTS}"
        )));
    }
    // Sockets are bound before the guest starts, so a client may connect at once.
    let mut listeners = Vec::new();
    let mut ports = vec![Arc::new(PortShared::new(None, true))];
    let targets = std::iter::once((None, target.clone())).chain(
        extra
            .iter()
            .map(|p| (Some(p.name.clone()), ConsoleTarget::Socket(p.path.clone()))),
    );
    for (i, (port_name, t)) in targets.enumerate() {
        if i > 0 {
            ports.push(Arc::new(PortShared::new(port_name, false)));
        }
        let listener = match &t {
            ConsoleTarget::Stdio => None,
            ConsoleTarget::Socket(path) => {
                // As QEMU's server=on, a stale socket file is replaced.
                let _ = std::fs::remove_file(path);
                Some(UnixListener::bind(path).map_err(|e| {
                    HarnessError::Usage(format!("--console: {}: {e}", path.display()))
                })?)
            }
        };
        listeners.push(listener);
    }
    let console = Console::new(ports.clone(), COLS, ROWS);
    let counters = console.counters();
    let vectors = transport_pci::msix_vectors(2 * ports.len() + 2) as usize;
    let irq = function_irq(dm, router, &name, vectors, gsi)?;
    let dev = VirtioPciDevice::with_msix(Box::new(console), mem.clone(), irq, gsi, true)
        .map_err(|e| HarnessError::Other(format!("{name}: {e}")))?;
    let num_queues = dev.num_queues();
    let dev = Arc::new(Mutex::new(dev));
    let (bar, bdf) = place(dm, &name, &dev)?;
    let mut mode = "inline";
    if io_mode == IoMode::Thread {
        let mut notifies = Vec::new();
        for q in 0..num_queues {
            let addr = bar + VirtioPciDevice::notify_offset(q);
            if let Some(evt) = dm.ioeventfd(IoEventAddress::Mmio(addr), libc::EFD_NONBLOCK) {
                notifies.push((q, evt));
            }
        }
        if !notifies.is_empty() {
            io_thread::spawn(&format!("{name}-io"), dev.clone(), notifies)
                .map_err(|e| HarnessError::Other(format!("{name}: I/O thread: {e}")))?;
            mode = "thread";
        }
    }
    let worker = QueueWorker::new(&dev);
    let multiport = ports.len() > 1;
    for (id, (port, listener)) in ports.iter().zip(listeners).enumerate() {
        let (port, worker) = (port.clone(), worker.clone());
        let rx = Console::rx_queue(id);
        let spawned = std::thread::Builder::new()
            .name(format!("{name}-port{id}"))
            .spawn(move || {
                crate::seccomp::enter(crate::seccomp::ThreadKind::ConsolePort);
                // A pass cut at its bound (input-bounded here) resumes at the next kick.
                let kick = || {
                    worker.process(rx);
                };
                let kick_control = || {
                    if multiport {
                        worker.process(CONTROL_RX_QUEUE);
                    }
                };
                let Some(listener) = listener else {
                    port.connect(Box::new(std::io::stdout()));
                    kick_control();
                    pump(std::io::stdin(), &port, &kick);
                    return;
                };
                for stream in listener.incoming() {
                    let Ok(stream) = stream else {
                        continue;
                    };
                    let Ok(writer) = stream.try_clone() else {
                        continue;
                    };
                    port.connect(Box::new(writer));
                    kick_control();
                    pump(stream, &port, &kick);
                    port.disconnect();
                    kick_control();
                }
            });
        spawned.map_err(|e| HarnessError::Other(format!("{name}: port thread: {e}")))?;
    }
    let to = |t: &ConsoleTarget| match t {
        ConsoleTarget::Stdio => "stdio".to_string(),
        ConsoleTarget::Socket(p) => p.display().to_string(),
    };
    let note = format!(
        "{name} at {bdf}, BAR0 {bar:#x}, INTx GSI {gsi}, {vectors} MSI-X vectors, I/O {mode}, \
         port 0 to {}, {} named ports{}",
        to(target),
        extra.len(),
        if multiport { " (MULTIPORT)" } else { "" }
    );
    Ok((
        AttachedConsole {
            function: Attached { name, dev },
            ports,
            counters,
        },
        note,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_named_ports_parse() {
        assert_eq!(ConsoleTarget::parse("stdio"), Ok(ConsoleTarget::Stdio));
        assert_eq!(
            ConsoleTarget::parse("socket:/tmp/c.sock"),
            Ok(ConsoleTarget::Socket("/tmp/c.sock".into()))
        );
        for bad in ["", "socket:", "unix:/x", "file:/x", "stdio:x"] {
            assert!(ConsoleTarget::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            NamedPort::parse("org.test.echo=socket:/tmp/p"),
            Ok(NamedPort {
                name: "org.test.echo".into(),
                path: "/tmp/p".into()
            })
        );
        for bad in ["x", "=socket:/p", "a b=socket:/p", "n=stdio", "n=/p"] {
            assert!(NamedPort::parse(bad).is_err(), "{bad}");
        }
        assert!(NamedPort::parse(&format!("{}=socket:/p", "n".repeat(65))).is_err());
    }
}
