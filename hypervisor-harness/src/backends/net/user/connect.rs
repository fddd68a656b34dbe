//! Host connects that do not block the device thread: a guest SYN to the host alias starts a
//! non-blocking connect to the host's loopback and is held back (its retransmissions
//! ignored) until epoll says the socket is writable. Connected: the flow's listener is made
//! and the held SYN handed to smoltcp, which answers it. Refused: the SYN goes to smoltcp
//! with no listener, which resets it, as before. A connect pending past the half-open
//! timeout is abandoned.

use super::{TcpFlow, UserBackend, TCP_BUFFER};
use smoltcp::socket::tcp;
use smoltcp::wire::{IpAddress, IpEndpoint, IpListenEndpoint, Ipv4Address};
use std::io;
use std::net::{SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};

/// A host connect in progress for a guest's SYN.
pub(super) struct Connecting {
    id: u64,
    host: TcpStream,
    pub(super) guest: IpEndpoint,
    port: u16,
    syn: Vec<u8>,
    started: Instant,
}

/// A non-blocking TCP socket connecting to `addr`: in progress, or already done.
fn connect_nonblocking(addr: SocketAddrV4) -> io::Result<TcpStream> {
    // SAFETY: socket(2) with constant arguments; it returns a new descriptor or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket just made and owned by nothing else; the stream closes it.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: connect(2) reads `size_of::<sockaddr_in>()` bytes from a valid `sockaddr_in`.
    let r = unsafe {
        libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    let err = io::Error::last_os_error();
    if r == 0 || err.raw_os_error() == Some(libc::EINPROGRESS) {
        Ok(stream)
    } else {
        Err(err)
    }
}

impl UserBackend {
    /// Flows and half-open flows for the limits, pending connects among both.
    pub(super) fn flow_counts(&self) -> (usize, usize) {
        let half_open = self.flows.iter().filter(|f| !f.established).count();
        let pending = self.connecting.len();
        (self.flows.len() + pending, half_open + pending)
    }

    /// Start the host connect for a guest SYN to the host alias's `port`; false if it failed
    /// at once (the SYN then goes to smoltcp unheard: a reset).
    pub(super) fn start_connect(&mut self, guest: IpEndpoint, port: u16, syn: &[u8]) -> bool {
        let host = match connect_nonblocking(SocketAddrV4::new(Ipv4Address::LOCALHOST, port)) {
            Ok(h) => h,
            Err(_) => {
                self.counters.tcp_refused_by_host += 1;
                return false;
            }
        };
        let id = self.next_id;
        let watched = self.epoll.ctl(
            ControlOperation::Add,
            host.as_raw_fd(),
            EpollEvent::new(EventSet::OUT, id),
        );
        if watched.is_err() {
            self.counters.tcp_refused_by_host += 1;
            return false;
        }
        self.next_id += 1;
        self.connecting.push(Connecting {
            id,
            host,
            guest,
            port,
            syn: syn.to_vec(),
            started: Instant::now(),
        });
        true
    }

    /// Settle the connects that finished: a flow and its SYN for each that connected, the SYN
    /// alone (a reset) for each refused.
    pub(super) fn finish_connects(&mut self) {
        let mut i = 0;
        while i < self.connecting.len() {
            let c = &self.connecting[i];
            let failed = !matches!(c.host.take_error(), Ok(None));
            let connected = !failed && c.host.peer_addr().is_ok();
            if !failed && !connected {
                i += 1;
                continue;
            }
            let c = self.connecting.swap_remove(i);
            let flow = if connected {
                self.add_proxied_flow(c.id, c.host, c.port)
            } else {
                self.unwatch(&c.host);
                false
            };
            if flow {
                self.counters.tcp_opened += 1;
            } else {
                self.counters.tcp_refused_by_host += 1;
            }
            self.wire.inbound.push_back(c.syn);
            let now = self.now();
            self.iface.poll(now, &mut self.wire, &mut self.sockets);
        }
    }

    /// A listener on the host alias's `port` for the held SYN, and its flow; false (the host
    /// socket closed and unwatched) if smoltcp refused the listener.
    fn add_proxied_flow(&mut self, id: u64, host: TcpStream, port: u16) -> bool {
        let _ = host.set_nodelay(true);
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
            tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
        );
        let endpoint = IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(self.opts.host)),
            port,
        };
        // No delayed ACK: frames reach smoltcp a TX batch at a time (`flush`), so this is one
        // ACK per batch; smoltcp's 10 ms delay stalled the guest's sender (186 -> 222 MB/s).
        s.set_ack_delay(None);
        if s.listen(endpoint).is_err() {
            self.unwatch(&host);
            return false;
        }
        let now = Instant::now();
        self.flows.push(TcpFlow {
            id,
            handle: self.sockets.add(s),
            host,
            port,
            started: now,
            last_active: now,
            accepted: false,
            established: false,
            host_eof: false,
            host_write_shut: false,
            want_write: false,
            host_dead: false,
            expired: false,
            interest: EventSet::OUT,
        });
        true
    }

    fn unwatch(&self, host: &TcpStream) {
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            host.as_raw_fd(),
            EpollEvent::default(),
        );
    }

    /// Abandon connects pending past the half-open timeout (the guest's SYN is dropped);
    /// returns the time until the next could be.
    pub(super) fn expire_connects(&mut self) -> Option<Duration> {
        let timeout = self.limits.half_open_timeout;
        let mut next: Option<Duration> = None;
        let mut i = 0;
        while i < self.connecting.len() {
            let age = self.connecting[i].started.elapsed();
            if age >= timeout {
                let c = self.connecting.swap_remove(i);
                self.unwatch(&c.host);
                self.counters.tcp_closed_half_open += 1;
            } else {
                let left = timeout - age;
                next = Some(next.map_or(left, |n| n.min(left)));
                i += 1;
            }
        }
        next
    }
}
