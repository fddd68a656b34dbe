//! `hypervisor-harness peer --listen PATH`: the peer served over a listening UNIX socket to any
//! number of `-netdev stream` clients (QEMU's `server=off`, or our `stream:PATH` backend), as a
//! learning L2 switch whose ports are the clients and the peer's own stack.
//!
//! A frame's source MAC is learned for the port it came in on. A frame for a learned MAC goes
//! to that port only; a broadcast or multicast frame goes to every other port, the stack
//! included; a unicast frame for an unknown MAC goes to every other client (the stack takes
//! only its own MAC, 02:00:00:76:00:01). A client that sends a length of 0 or over
//! [`MAX_FRAME`] has desynchronised its stream: it is counted and dropped, the others go on.
//! A client that does not read has frames dropped (counted) once 1 MiB waits for it. The
//! stack's own output (a UDP flood, say) is held back while any client has more than 256 KiB
//! waiting, and goes on when that client has taken it: the loop waits for POLLOUT while bytes
//! wait, and comes round at once when a write took them all (no POLLOUT comes then).
//!
//! One thread, one `poll(2)` loop. SIGTERM and SIGINT end it with exit status 0 and a summary
//! line on stderr; the socket file is removed at start (if stale) and at exit.

use super::{PeerStack, PEER_MAC};
use crate::backends::net::stream::{FrameReader, FrameWriter};
use crate::backends::net::MAX_FRAME;
use crate::error::HarnessError;
use smoltcp::wire::Ipv4Address;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Bytes waiting for one client before frames to it are dropped.
const CLIENT_WRITE_BUFFER: usize = 1 << 20;
/// The stack's output is taken only while every client has less than this waiting, so a UDP
/// flood follows the slowest reader instead of filling buffers.
const STACK_PACE: usize = 256 << 10;
/// The stack's frames switched per turn of the loop at most, so that clients are read and
/// signals seen between them even when they go nowhere (their client gone).
const PUMP_BATCH: usize = 4096;

/// What the switch counted, printed at exit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SwitchCounters {
    pub clients_accepted: u64,
    pub clients_dropped: u64,
    pub frames_in: u64,
    pub frames_to_stack: u64,
    pub frames_delivered: u64,
    pub frames_flooded: u64,
    /// Frames for a client whose buffer was full.
    pub dropped_full: u64,
    /// Frames shorter than an Ethernet header.
    pub dropped_runt: u64,
    /// Clients dropped for a bad length prefix.
    pub framing_errors: u64,
    /// UDP source jobs and TCP connections of the stack ended because the client their
    /// address was learned on went away.
    pub flows_ended: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Port {
    Stack,
    Client(u64),
}

struct Client {
    id: u64,
    sock: UnixStream,
    reader: FrameReader,
    writer: FrameWriter,
}

struct Switch {
    stack: PeerStack,
    clients: Vec<Client>,
    macs: HashMap<[u8; 6], Port>,
    /// IPv4 source addresses (of IPv4 and ARP frames) by the client port they came in on.
    ips: HashMap<Ipv4Address, Port>,
    next_id: u64,
    counters: SwitchCounters,
    verbose: bool,
}

/// Removes the socket file when the server ends.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Bind `path`, removing a stale socket file first; a live listener there is an error.
fn bind(path: &Path) -> Result<UnixListener, HarnessError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(HarnessError::Usage(format!(
                "peer --listen {}: exists and is not a socket",
                path.display()
            )));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(HarnessError::Unavailable(format!(
                "peer --listen {}: in use by a live listener",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|e| {
            HarnessError::Other(format!(
                "peer --listen {}: cannot remove the stale socket: {e}",
                path.display()
            ))
        })?;
    }
    UnixListener::bind(path)
        .map_err(|e| HarnessError::Other(format!("peer --listen {}: {e}", path.display())))
}

/// SIGTERM and SIGINT as a readable fd (blocked as signals, so they end the loop, not us).
fn termination_signals() -> io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data, filled by sigemptyset/sigaddset before use; the mask is
    // changed for this (the only) thread; signalfd returns a new fd we own or -1.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Serve the peer on `path` until SIGTERM or SIGINT.
pub fn serve(path: &Path, verbose: bool) -> Result<SwitchCounters, HarnessError> {
    let signals =
        termination_signals().map_err(|e| HarnessError::Other(format!("peer: signalfd: {e}")))?;
    let listener = bind(path)?;
    let _file = SocketFile(path.to_path_buf());
    listener
        .set_nonblocking(true)
        .map_err(|e| HarnessError::Other(format!("peer: {e}")))?;
    if verbose {
        eprintln!("peer: listening on {}", path.display());
    }
    let mut sw = Switch {
        stack: PeerStack::new(),
        clients: Vec::new(),
        macs: HashMap::new(),
        ips: HashMap::new(),
        next_id: 0,
        counters: SwitchCounters::default(),
        verbose,
    };
    let mut fds: Vec<libc::pollfd> = Vec::new();
    loop {
        let timeout = sw.stack.poll().map_or(-1, |d| {
            // Round up so a timer due in 0.3 ms does not spin.
            d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
        });
        let held_back = sw.pump_stack();
        sw.flush_all();
        // Held back for a client that has since taken it all (no POLLOUT will come, and the
        // stack's output, a UDP flood say, would wait for some client to send), or at the
        // batch's end: go round again at once, after a look at the sockets.
        let timeout = if held_back && !sw.any_client_behind() {
            0
        } else {
            timeout
        };
        fds.clear();
        let fd = |fd: RawFd, events| libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        fds.push(fd(signals.as_raw_fd(), libc::POLLIN));
        fds.push(fd(listener.as_raw_fd(), libc::POLLIN));
        for c in &sw.clients {
            let out = if c.writer.pending() > 0 {
                libc::POLLOUT
            } else {
                0
            };
            fds.push(fd(c.sock.as_raw_fd(), libc::POLLIN | out));
        }
        // SAFETY: `fds` is a valid array of fds.len() pollfds for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(HarnessError::Other(format!("peer: poll: {e}")));
        }
        if fds[0].revents != 0 {
            break;
        }
        if fds[1].revents != 0 {
            sw.accept(&listener);
        }
        // Clients in the order polled; ids, since a client may be dropped on the way.
        let ready: Vec<(u64, i16)> = fds[2..]
            .iter()
            .zip(&sw.clients)
            .filter(|(p, _)| p.revents != 0)
            .map(|(p, c)| (c.id, p.revents))
            .collect();
        for (id, revents) in ready {
            if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                sw.read_client(id);
            }
        }
    }
    let c = sw.counters;
    eprintln!(
        "peer: {} clients ({} dropped), {} frames in, {} to the stack, {} delivered, {} flooded, \
         {} dropped (full), {} runts, {} framing errors, {} flows of gone clients ended",
        c.clients_accepted,
        c.clients_dropped,
        c.frames_in,
        c.frames_to_stack,
        c.frames_delivered,
        c.frames_flooded,
        c.dropped_full,
        c.dropped_runt,
        c.framing_errors,
        c.flows_ended
    );
    Ok(c)
}

/// The sender's IPv4 address of an IPv4 or ARP (Ethernet/IPv4) frame.
fn source_ipv4(frame: &[u8]) -> Option<Ipv4Address> {
    let at = match frame.get(12..14)? {
        [0x08, 0x00] => 14 + 12,
        [0x08, 0x06] => 14 + 14,
        _ => return None,
    };
    let a: [u8; 4] = frame.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Address::from(a))
}

impl Switch {
    fn accept(&mut self, listener: &UnixListener) {
        loop {
            match listener.accept() {
                Ok((sock, _)) => {
                    if sock.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let id = self.next_id;
                    self.next_id += 1;
                    self.counters.clients_accepted += 1;
                    if self.verbose {
                        eprintln!("peer: client {id} connected");
                    }
                    self.clients.push(Client {
                        id,
                        sock,
                        reader: FrameReader::default(),
                        writer: FrameWriter::new(CLIENT_WRITE_BUFFER),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn drop_client(&mut self, id: u64, why: &str) {
        let port = Port::Client(id);
        self.clients.retain(|c| c.id != id);
        let macs: Vec<[u8; 6]> = self
            .macs
            .iter()
            .filter(|(_, p)| **p == port)
            .map(|(m, _)| *m)
            .collect();
        self.macs.retain(|_, p| *p != port);
        let ips: Vec<Ipv4Address> = self
            .ips
            .iter()
            .filter(|(_, p)| **p == port)
            .map(|(a, _)| *a)
            .collect();
        self.ips.retain(|_, p| *p != port);
        let (jobs, connections) = self.stack.forget_hosts(&ips, &macs);
        self.counters.flows_ended += (jobs + connections) as u64;
        self.counters.clients_dropped += 1;
        if self.verbose {
            eprintln!("peer: client {id} dropped: {why}");
        }
    }

    /// Read what one client sent and switch its frames.
    fn read_client(&mut self, id: u64) {
        let Some(i) = self.clients.iter().position(|c| c.id == id) else {
            return;
        };
        let c = &mut self.clients[i];
        match c.reader.fill(&mut c.sock) {
            Ok(0) => return self.drop_client(id, "closed"),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return
            }
            Err(e) => return self.drop_client(id, &format!("read: {e}")),
        }
        let mut frame = [0u8; MAX_FRAME];
        loop {
            let c = &mut self.clients[i];
            let len = match c.reader.next_frame() {
                Ok(Some(f)) => {
                    frame[..f.len()].copy_from_slice(f);
                    f.len()
                }
                Ok(None) => return,
                Err(e) => {
                    self.counters.framing_errors += 1;
                    return self.drop_client(id, &e.to_string());
                }
            };
            self.switch(Port::Client(id), &frame[..len]);
        }
    }

    /// Send one frame from `from` where it belongs.
    fn switch(&mut self, from: Port, frame: &[u8]) {
        self.counters.frames_in += 1;
        let (Some(dst), Some(src)) = (frame.first_chunk::<6>(), frame.get(6..12)) else {
            self.counters.dropped_runt += 1;
            return;
        };
        if frame.len() < 14 {
            self.counters.dropped_runt += 1;
            return;
        }
        let src: [u8; 6] = src.try_into().expect("six bytes");
        if src[0] & 1 == 0 && from != Port::Stack {
            self.macs.insert(src, from);
            if let Some(ip) = source_ipv4(frame) {
                self.ips.insert(ip, from);
            }
        }
        let to_stack = from != Port::Stack && (dst[0] & 1 != 0 || *dst == PEER_MAC);
        if to_stack {
            self.counters.frames_to_stack += 1;
            self.stack.input(frame);
        }
        if *dst == PEER_MAC {
            return;
        }
        if dst[0] & 1 == 0 {
            if let Some(&port) = self.macs.get(dst) {
                if let (Port::Client(id), true) = (port, port != from) {
                    self.deliver(id, frame);
                    self.counters.frames_delivered += 1;
                }
                return;
            }
        }
        self.counters.frames_flooded += 1;
        let others: Vec<u64> = self
            .clients
            .iter()
            .map(|c| c.id)
            .filter(|&id| Port::Client(id) != from)
            .collect();
        for id in others {
            self.deliver(id, frame);
        }
    }

    fn deliver(&mut self, id: u64, frame: &[u8]) {
        if let Some(c) = self.clients.iter_mut().find(|c| c.id == id) {
            if !c.writer.push(frame) {
                self.counters.dropped_full += 1;
            }
        }
    }

    /// Whether some client has more than [`STACK_PACE`] waiting (then it also waits for
    /// POLLOUT).
    fn any_client_behind(&self) -> bool {
        self.clients.iter().any(|c| c.writer.pending() > STACK_PACE)
    }

    /// Switch the stack's frames while every client keeps up, at most [`PUMP_BATCH`] of
    /// them; true if it stopped for a client that is behind or at the batch's end (the stack
    /// may have more).
    fn pump_stack(&mut self) -> bool {
        for _ in 0..PUMP_BATCH {
            if self.any_client_behind() {
                return true;
            }
            let Some(frame) = self.stack.output() else {
                return false;
            };
            self.switch(Port::Stack, &frame);
            self.stack.recycle(frame);
        }
        true
    }

    fn flush_all(&mut self) {
        let mut broken = Vec::new();
        for c in &mut self.clients {
            if let Err(e) = c.writer.flush(&mut c.sock) {
                broken.push((c.id, e));
            }
        }
        for (id, e) in broken {
            self.drop_client(id, &format!("write: {e}"));
        }
    }
}
