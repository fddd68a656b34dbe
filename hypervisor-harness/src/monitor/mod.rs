//! The monitor of a running VM: QEMU's human monitor (`--monitor unix:PATH`, [`hmp`]) and QMP
//! (`--qmp unix:PATH`, [`qmp`]) on UNIX sockets, and the one-shot client (`monitor PATH
//! COMMAND`, [`client`]). The parsers and executors are pure, over a [`MonitorTarget`] view of
//! the VM that `vmm` implements; this file holds the socket side. Each socket is served by one
//! thread, one client at a time in turn (as QEMU serves one client per monitor). Nothing a
//! client sends can stop the VM, except `quit`.

pub mod client;
pub mod hmp;
pub mod qmp;

use crate::vmm::balloon_control::BalloonControl;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The longest command line taken; a longer one is answered with an error and skipped.
pub const MAX_LINE: usize = 4096;
/// How long a reply may wait for a client that does not read before the client is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle server looks at its stop flag.
const POLL: Duration = Duration::from_millis(50);

/// A PCI function as its configuration space shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PciFunctionInfo {
    /// `00:02.0`.
    pub bdf: String,
    pub vendor: u16,
    pub device: u16,
    /// Class, subclass and programming interface.
    pub class: [u8; 3],
    pub command: u16,
    /// (BAR index, decoded address, is I/O, is 64-bit) for each BAR in use.
    pub bars: Vec<PciBarInfo>,
    /// INTx pin (1 = INTA, 0 none) and the line register.
    pub irq_pin: u8,
    pub irq_line: u8,
    pub msix: Option<MsixInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciBarInfo {
    pub index: u8,
    pub addr: u64,
    pub io: bool,
    pub mem64: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsixInfo {
    pub table_size: u16,
    pub enabled: bool,
    pub function_masked: bool,
    /// BAR index and offset of the table.
    pub table_bar: u8,
    pub table_offset: u32,
    /// The table's entries, where the VMM can read them (its own virtio functions).
    pub entries: Vec<MsixEntryInfo>,
}

/// One MSI-X table entry as the driver programmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixEntryInfo {
    pub vector: u16,
    pub addr: u64,
    pub data: u32,
    pub masked: bool,
    pub pending: bool,
}

/// One virtqueue as the transport and guest memory show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueInfo {
    pub index: u16,
    pub size: u16,
    pub ready: bool,
    /// The rings' `idx` fields in guest memory (None before the queue is set up or when the
    /// ring is outside guest memory).
    pub avail_idx: Option<u16>,
    pub used_idx: Option<u16>,
    /// Exits at the queue's notify register (notifies that came by ioeventfd never exit).
    pub notify_exits: u64,
    /// Notifies of this queue the transport saw, by ioeventfd and by exit.
    pub notifies: u64,
    /// Interrupts the device raised for this queue.
    pub interrupts: u64,
    /// The MSI-X vector its interrupts go to (None: none assigned).
    pub msix_vector: Option<u16>,
}

/// A virtio function's queues (each with its own counters) and its transport's totals.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VirtioQueuesInfo {
    pub name: String,
    pub bdf: String,
    pub status: u8,
    pub notifies: u64,
    pub queue_interrupts: u64,
    pub config_interrupts: u64,
    pub queues: Vec<QueueInfo>,
}

/// One statistic of a `query-stats` provider.
pub type Stat = (String, u64);

/// What the monitor may see of, and do to, a running VM. `vmm` implements it over the live
/// machine; the unit tests over a fake.
pub trait MonitorTarget: Send + Sync {
    /// Whether the vCPU is still running (not yet quit or ended).
    fn running(&self) -> bool;
    /// The harness's exit counters, as `--exits` prints them.
    fn exits_table(&self) -> String;
    /// Stats for QMP `query-stats`, per target (`vm` or `vcpu`): (provider, qom-path, stats)
    /// per provider, as QEMU shapes its answer.
    fn stats(&self, target: StatsTarget) -> Vec<StatsProvider>;
    fn pci(&self) -> Vec<PciFunctionInfo>;
    fn queues(&self) -> Vec<VirtioQueuesInfo>;
    fn balloon(&self) -> Option<Arc<dyn BalloonControl>>;
    /// End the run: the vCPU leaves KVM_RUN and the run ends as quit by the monitor.
    fn quit(&self);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsTarget {
    Vm,
    Vcpu,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsProvider {
    /// `kvm` (KVM_GET_STATS_FD, as QEMU reports it) or `harness` (our userspace exit counters).
    pub provider: String,
    pub qom_path: Option<String>,
    pub stats: Vec<Stat>,
}

/// Which language a socket speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Hmp,
    Qmp,
}

/// `unix:PATH`, as QEMU's `-monitor` / `-qmp` spell a socket (the only kind taken here).
pub fn parse_socket_spec(spec: &str) -> Result<PathBuf, String> {
    match spec.strip_prefix("unix:") {
        Some(path) if !path.is_empty() => Ok(PathBuf::from(path.split(',').next().unwrap_or(""))),
        _ => Err(format!("{spec:?}: expected unix:PATH")),
    }
}

/// A conversation with one client: bytes in, reply bytes out. The framing is shared.
trait Session {
    /// How the client's bytes split into commands.
    fn framing(&self) -> Framing;
    /// What to send when the client connects.
    fn greeting(&mut self) -> String;
    /// The reply to one line, and whether the client is done (after `quit`).
    fn line(&mut self, line: &str) -> (String, bool);
    /// The reply to a line longer than [`MAX_LINE`] (which is skipped).
    fn overlong(&mut self) -> String;
}

/// A listening monitor socket and its thread; dropping it stops the thread and removes the
/// socket file.
pub struct MonitorServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl MonitorServer {
    /// Listen on `path` (a stale socket file there is replaced) and serve clients in turn.
    pub fn start(
        path: &Path,
        protocol: Protocol,
        target: Arc<dyn MonitorTarget>,
    ) -> Result<Self, String> {
        if std::fs::symlink_metadata(path).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_socket()
        }) {
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path)
            .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name(match protocol {
                Protocol::Hmp => "monitor".into(),
                Protocol::Qmp => "qmp".into(),
            })
            .spawn(move || {
                crate::seccomp::enter(crate::seccomp::ThreadKind::Monitor);
                serve(&listener, protocol, &*target, &stop2)
            })
            .map_err(|e| format!("monitor thread: {e}"))?;
        Ok(Self {
            stop,
            thread: Some(thread),
            path: path.to_path_buf(),
        })
    }
}

impl Drop for MonitorServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(
    listener: &UnixListener,
    protocol: Protocol,
    target: &dyn MonitorTarget,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let quit = match protocol {
                    Protocol::Hmp => converse(stream, &mut hmp::HmpSession::new(target), stop),
                    Protocol::Qmp => converse(stream, &mut qmp::QmpSession::new(target), stop),
                };
                if quit {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                std::thread::sleep(POLL)
            }
            // Out of fds, say: the VM runs on, and the next round may accept.
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Serve one client until it leaves, breaks the conversation, or quits the VM (returns true).
fn converse(mut stream: UnixStream, session: &mut dyn Session, stop: &AtomicBool) -> bool {
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(POLL)).is_err()
        || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
    {
        return false;
    }
    if stream.write_all(session.greeting().as_bytes()).is_err() {
        return false;
    }
    let mut lines = Splitter::new(session.framing());
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        let n = match stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        for item in lines.feed(&buf[..n]) {
            let (reply, quit) = match item {
                Line::Text(l) => session.line(&l),
                Line::Overlong => (session.overlong(), false),
            };
            // A client that stops reading is dropped after WRITE_TIMEOUT, not waited for.
            if stream.write_all(reply.as_bytes()).is_err() {
                return quit;
            }
            if quit {
                return true;
            }
        }
    }
    false
}

/// HMP takes a command per line; QMP a JSON value at a time, newline or not (as QEMU's JSON
/// streamer takes them: qemu.qmp sends none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Lines,
    Json,
}

enum Splitter {
    Lines(LineSplitter),
    Json(JsonSplitter),
}

impl Splitter {
    fn new(framing: Framing) -> Self {
        match framing {
            Framing::Lines => Self::Lines(LineSplitter::default()),
            Framing::Json => Self::Json(JsonSplitter::default()),
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> Vec<Line> {
        match self {
            Self::Lines(s) => s.feed(bytes),
            Self::Json(s) => s.feed(bytes),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Line {
    Text(String),
    /// A line over MAX_LINE bytes, dropped.
    Overlong,
}

/// Splits a byte stream into lines of at most [`MAX_LINE`] bytes; holds at most that much.
#[derive(Default)]
struct LineSplitter {
    pending: Vec<u8>,
    /// Inside a line already reported as overlong: drop until its newline.
    skipping: bool,
}

impl LineSplitter {
    fn feed(&mut self, mut bytes: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (chunk, rest, ended) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            if !self.skipping {
                if self.pending.len() + chunk.len() > MAX_LINE {
                    self.pending.clear();
                    self.skipping = true;
                    out.push(Line::Overlong);
                } else {
                    self.pending.extend_from_slice(chunk);
                }
            }
            if ended {
                if !self.skipping {
                    let text = String::from_utf8_lossy(&self.pending);
                    out.push(Line::Text(text.trim_end_matches('\r').to_string()));
                }
                self.pending.clear();
                self.skipping = false;
            }
        }
        out
    }
}

/// Splits a byte stream into top-level JSON values by bracket depth, outside strings. Text
/// that cannot be JSON (at the top level, or a stray token inside a value) is handed on at the
/// next newline, for the parser to reject; the rest of such a line is dropped with it.
#[derive(Default)]
struct JsonSplitter {
    pending: Vec<u8>,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// Holding text that is not JSON, until its newline.
    junk: bool,
    /// Inside input already reported as overlong: drop until a newline.
    skipping: bool,
}

/// What may stand between strings inside a JSON value: numbers, true/false/null, punctuation
/// and whitespace.
fn between_strings(b: u8) -> bool {
    b.is_ascii_whitespace() || b.is_ascii_digit() || b",:-+.Eaeflnrstu".contains(&b)
}

impl JsonSplitter {
    fn feed(&mut self, bytes: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.skipping {
                self.skipping = b != b'\n';
                continue;
            }
            if self.pending.len() >= MAX_LINE {
                *self = Self {
                    skipping: b != b'\n',
                    ..Self::default()
                };
                out.push(Line::Overlong);
                continue;
            }
            if self.junk {
                if b == b'\n' {
                    out.push(self.take());
                } else {
                    self.pending.push(b);
                }
                continue;
            }
            if self.in_string {
                self.pending.push(b);
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b' ' | b'\t' | b'\r' | b'\n' if self.depth == 0 => {}
                b'{' | b'[' => {
                    self.depth += 1;
                    self.pending.push(b);
                }
                b'}' | b']' if self.depth > 0 => {
                    self.depth -= 1;
                    self.pending.push(b);
                    if self.depth == 0 {
                        out.push(self.take());
                    }
                }
                b'"' if self.depth > 0 => {
                    self.in_string = true;
                    self.pending.push(b);
                }
                _ if self.depth > 0 && between_strings(b) => self.pending.push(b),
                _ => {
                    self.junk = true;
                    self.pending.push(b);
                }
            }
        }
        out
    }

    fn take(&mut self) -> Line {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        *self = Self::default();
        Line::Text(text)
    }
}

#[cfg(test)]
pub(crate) mod fake;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_bounded() {
        let mut s = LineSplitter::default();
        assert_eq!(s.feed(b"info st"), vec![]);
        assert_eq!(
            s.feed(b"atus\r\nhelp\n"),
            vec![Line::Text("info status".into()), Line::Text("help".into())]
        );
        let long = vec![b'x'; MAX_LINE + 1];
        assert_eq!(s.feed(&long), vec![Line::Overlong]);
        assert_eq!(s.feed(&long), vec![], "the rest of that line is dropped");
        assert_eq!(s.feed(b"xx\nquit\n"), vec![Line::Text("quit".into())]);
        assert!(s.pending.is_empty());
        let exact = vec![b'y'; MAX_LINE];
        let got = s.feed(&[&exact[..], b"\n"].concat());
        assert_eq!(got, vec![Line::Text("y".repeat(MAX_LINE))]);
    }

    #[test]
    fn json_values_are_split_with_or_without_newlines() {
        let text = |v: &[&str]| {
            v.iter()
                .map(|s| Line::Text(s.to_string()))
                .collect::<Vec<_>>()
        };
        let mut s = JsonSplitter::default();
        assert_eq!(
            s.feed(br#"{"execute": "a"}{"execute":"b", "x": "}{\"["}"#),
            text(&[r#"{"execute": "a"}"#, r#"{"execute":"b", "x": "}{\"["}"#])
        );
        assert_eq!(s.feed(b"  {\"a\": [1, true,\n"), vec![]);
        assert_eq!(s.feed(b"null]}\n"), text(&["{\"a\": [1, true,\nnull]}"]));
        // Not JSON: handed on at the newline, and the next value still splits.
        assert_eq!(s.feed(b"garbage {\n"), text(&["garbage {"]));
        assert_eq!(s.feed(b"{bad\n[2]"), text(&["{bad", "[2]"]));
        assert_eq!(s.feed(&vec![b'{'; MAX_LINE + 10]), vec![Line::Overlong]);
        assert_eq!(s.feed(b"}}}\n{}"), text(&["{}"]));
        assert!(s.pending.is_empty() && s.depth == 0);
    }

    #[test]
    fn socket_specs() {
        assert_eq!(
            parse_socket_spec("unix:/tmp/m.sock").unwrap(),
            PathBuf::from("/tmp/m.sock")
        );
        assert_eq!(
            parse_socket_spec("unix:/tmp/q,server=on,wait=off").unwrap(),
            PathBuf::from("/tmp/q")
        );
        for bad in ["/tmp/m.sock", "unix:", "tcp:1:2", "stdio"] {
            assert!(parse_socket_spec(bad).is_err(), "{bad}");
        }
    }

    /// Over a real socket: a client that floods, one that leaves mid-line, one that sends an
    /// overlong line, then one that quits; each is served in turn.
    #[test]
    fn clients_in_turn_over_a_socket() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hh-mon-").unwrap();
        let path = dir.as_path().join("m.sock");
        let target = Arc::new(fake::FakeTarget::default());
        let server = MonitorServer::start(&path, Protocol::Hmp, target.clone()).unwrap();

        let mut half = UnixStream::connect(&path).unwrap();
        half.write_all(b"info sta").unwrap();
        drop(half);

        // It never reads its replies: once they fill the socket, it is dropped (its writes
        // may then fail), and the next client is served.
        let mut flood = UnixStream::connect(&path).unwrap();
        for _ in 0..2000 {
            let _ = flood.write_all(b"bogus\ninfo status\n");
        }
        let _ = flood.write_all(&vec![b'z'; 3 * MAX_LINE]);
        let _ = flood.write_all(b"\n");
        drop(flood);

        let reply = client::hmp_command(&path, "info status").unwrap();
        assert_eq!(reply.trim(), "VM status: running");
        assert!(!target.quit_called());
        let reply = client::hmp_command(&path, "quit").unwrap();
        assert_eq!(reply.trim(), "");
        assert!(target.quit_called());
        drop(server);
        assert!(!path.exists(), "the socket file is removed");
    }
}
