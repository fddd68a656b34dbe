//! `user`: user-mode networking without root or TAP, as QEMU's `-netdev user` (slirp) gives
//! it. A host-side endpoint (smoltcp, as the peer) plays the guest's network:
//! - a DHCP server ([`dhcp`]) leasing from `dhcpstart` with the host alias as router and
//!   `dns` as name server;
//! - the host alias (`host`, x.x.x.2) and the DNS address answering ARP and ping;
//! - the guest's TCP connections to the host alias proxied to the host's own loopback: a
//!   guest connect to HOST:P is a host connect to 127.0.0.1:P (refused there: a RST to the
//!   guest), bytes both ways, a FIN either way becomes a FIN the other way, a reset a reset.
//! - the guest's UDP flows to the host alias proxied likewise, one connected host socket per
//!   flow ([`udp`]);
//! - a read-only TFTP server at the host alias's port 69 for `tftp=DIR` ([`tftp`]);
//! - a DNS forwarder at the `dns` address's port 53 to the host's resolver ([`dns`]).
//!
//! - `hostfwd=` rules ([`hostfwd`]): host loopback ports forwarded into the guest, a flow
//!   like the proxied ones but opened from the host alias's side.
//!
//! Nothing is routed out: frames to any other address are dropped and counted, whatever
//! `restrict=` says. `restrict=on` refuses the proxy too, leaving DHCP, ARP, ping and the
//! `hostfwd=` flows: the guest's SYNs to the host alias are dropped, as slirp drops them (its
//! connect times out rather than being reset).
//! Flows are bounded by [`limits::FlowLimits`].
//!
//! # Readiness
//! [`NetBackend::rx_ready_fd`] is an epoll set holding an eventfd (written by `poll` when
//! frames wait, as the peer does) and each flow's host socket, watched for reading only while
//! the flow's smoltcp socket has room (so a guest that does not read is not a busy loop) and
//! for writing only while guest bytes wait for the host socket.

mod connect;
pub mod dhcp;
pub mod dns;
#[cfg(test)]
mod flood_tests;
pub mod frame;
pub mod hostfwd;
pub mod limits;
pub mod options;
pub mod tftp;
pub mod udp;

use super::{BackendCounters, FrameMeta, NetBackend, NetBackendError, MAX_FRAME};
use limits::{Expiry, FlowLimits, Refusal};
use options::UserOptions;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, HardwareAddress, IpAddress, IpCidr,
    IpEndpoint, IpProtocol, Ipv4Address, Ipv4Packet, TcpPacket,
};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Frames waiting for the guest, at most (smoltcp holds TCP back beyond).
pub const RX_QUEUE_FRAMES: usize = 1024;
/// Each proxied TCP flow's smoltcp buffers, each way.
const TCP_BUFFER: usize = 256 << 10;
const MIN_FRAME: usize = 14;
const ETHERNET_MTU: usize = 1514;
/// The epoll token of the readiness eventfd; flows use their ids (from 1).
const READY_TOKEN: u64 = 0;
/// The epoll token of the UDP proxy's own epoll set (its host sockets).
const UDP_TOKEN: u64 = u64::MAX;

/// What the user network did, for reports and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UserCounters {
    pub dhcp: dhcp::DhcpCounters,
    /// TCP flows proxied to the host, in all; open now.
    pub tcp_opened: u64,
    pub tcp_open: u64,
    /// Guest SYNs refused: the host refused (nothing listening), a limit, `restrict=on` (those
    /// dropped).
    pub tcp_refused_by_host: u64,
    pub tcp_refused_too_many: u64,
    pub tcp_refused_half_open: u64,
    pub tcp_refused_restricted: u64,
    /// `hostfwd=` connections forwarded into the guest; failed for a host-side reason.
    pub tcp_forwarded: u64,
    pub tcp_forward_failed: u64,
    /// Flows the limiter closed.
    pub tcp_closed_half_open: u64,
    pub tcp_closed_idle: u64,
    /// Bytes guest to host and host to guest.
    pub tcp_bytes_to_host: u64,
    pub tcp_bytes_to_guest: u64,
    /// The UDP proxy's flows and datagrams.
    pub udp: udp::UdpCounters,
    /// The TFTP server's transfers.
    pub tftp: tftp::TftpCounters,
    /// The DNS forwarder's queries.
    pub dns: dns::DnsCounters,
    /// IPv4 frames for addresses nothing answers (nothing is routed out).
    pub dropped_not_routed: u64,
    /// Frames for the guest dropped because [`RX_QUEUE_FRAMES`] were waiting.
    pub rx_queue_overflows: u64,
}

/// smoltcp's device: the guest's frames of this TX batch, and the queue toward the guest.
#[derive(Default)]
struct Wire {
    inbound: VecDeque<Vec<u8>>,
    out: VecDeque<Vec<u8>>,
    overflows: u64,
}

struct Inbound(Vec<u8>);
struct Outbound<'a>(&'a mut Wire);

impl RxToken for Inbound {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Outbound<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        self.0.push(frame);
        r
    }
}

impl Wire {
    fn push(&mut self, frame: Vec<u8>) {
        if self.out.len() >= RX_QUEUE_FRAMES {
            self.overflows += 1;
        } else {
            self.out.push_back(frame);
        }
    }
}

impl Device for Wire {
    type RxToken<'a> = Inbound;
    type TxToken<'a> = Outbound<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(Inbound, Outbound<'_>)> {
        let frame = self.inbound.pop_front()?;
        Some((Inbound(frame), Outbound(self)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<Outbound<'_>> {
        (self.out.len() < RX_QUEUE_FRAMES).then_some(Outbound(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = ETHERNET_MTU;
        caps
    }
}

/// One guest TCP connection and its host socket.
struct TcpFlow {
    id: u64,
    handle: SocketHandle,
    host: TcpStream,
    port: u16,
    started: Instant,
    last_active: Instant,
    /// The smoltcp socket has left LISTEN (it took its SYN).
    accepted: bool,
    established: bool,
    /// The host closed its write half (its FIN, passed on to the guest).
    host_eof: bool,
    /// The guest's FIN was passed on (`shutdown(Write)` of the host socket).
    host_write_shut: bool,
    /// Guest bytes wait for the host socket to take them.
    want_write: bool,
    /// The host socket is finished with (an error or a reset).
    host_dead: bool,
    /// The limiter closed it (counted once).
    expired: bool,
    interest: EventSet,
}

pub struct UserBackend {
    opts: UserOptions,
    mac: EthernetAddress,
    iface: Interface,
    wire: Wire,
    sockets: SocketSet<'static>,
    dhcp: dhcp::DhcpServer,
    flows: Vec<TcpFlow>,
    connecting: Vec<connect::Connecting>,
    next_id: u64,
    udp: udp::UdpProxy,
    tftp: tftp::TftpServer,
    dns: dns::DnsForwarder,
    listeners: Vec<hostfwd::Listener>,
    local_port_seq: u16,
    limits: FlowLimits,
    counters: UserCounters,
    backend_counters: BackendCounters,
    epoll: Epoll,
    ready: EventFd,
    signalled: bool,
    epoch: Instant,
}

impl UserBackend {
    pub fn new(opts: UserOptions) -> std::io::Result<Self> {
        Self::with_limits(opts, FlowLimits::default())
    }

    pub fn with_limits(opts: UserOptions, limits: FlowLimits) -> std::io::Result<Self> {
        // slirp's MAC for its own addresses: 52:55 and the IPv4 address.
        let h = opts.host.octets();
        let mac = EthernetAddress([0x52, 0x55, h[0], h[1], h[2], h[3]]);
        let mut wire = Wire::default();
        let config = Config::new(HardwareAddress::Ethernet(mac));
        let mut iface = Interface::new(config, &mut wire, SmolInstant::ZERO);
        iface.update_ip_addrs(|addrs| {
            for a in [opts.host, opts.dns] {
                addrs
                    .push(IpCidr::new(IpAddress::Ipv4(a), opts.prefix_len))
                    .expect("room for two addresses");
            }
        });
        let epoll = Epoll::new()?;
        let ready = EventFd::new(EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            ready.as_raw_fd(),
            EpollEvent::new(EventSet::IN, READY_TOKEN),
        )?;
        let udp = udp::UdpProxy::new(mac)?;
        epoll.ctl(
            ControlOperation::Add,
            udp.ready_fd(),
            EpollEvent::new(EventSet::IN, UDP_TOKEN),
        )?;
        let tftp = tftp::TftpServer::new(opts.tftp.as_deref(), mac)?;
        let listeners = hostfwd::listen(&opts.hostfwd)?;
        let backend = Self {
            dhcp: dhcp::DhcpServer::new(&opts, mac),
            opts,
            mac,
            iface,
            wire,
            sockets: SocketSet::new(Vec::new()),
            flows: Vec::new(),
            connecting: Vec::new(),
            next_id: 1,
            udp,
            tftp,
            dns: dns::DnsForwarder::from_host(),
            listeners,
            local_port_seq: 0,
            limits,
            counters: UserCounters::default(),
            backend_counters: BackendCounters::default(),
            epoll,
            ready,
            signalled: false,
            epoch: Instant::now(),
        };
        backend.watch_listeners()?;
        Ok(backend)
    }

    /// The host alias's MAC.
    pub fn mac(&self) -> EthernetAddress {
        self.mac
    }

    pub fn user_counters(&self) -> UserCounters {
        let mut c = self.counters;
        c.dhcp = self.dhcp.counters;
        c.tcp_open = self.flows.len() as u64;
        c.udp = self.udp.counters();
        c.tftp = self.tftp.counters();
        c.dns = self.dns.counters;
        c
    }

    fn now(&self) -> SmolInstant {
        SmolInstant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// One frame from the guest, answered now.
    fn input(&mut self, frame: &[u8]) {
        if let Some(reply) = self.dhcp.handle(frame) {
            self.wire.push(reply);
            return;
        }
        if self.udp_input(frame) {
            return;
        }
        if let Some((dst, syn_from)) = self.classify(frame) {
            if !self.answers(dst) {
                self.counters.dropped_not_routed += 1;
                return;
            }
            if let Some((guest, port)) = syn_from {
                if dst == self.opts.host && self.opts.restrict {
                    // Dropped, not reset: slirp's restrict=on drops the guest's segments.
                    self.counters.tcp_refused_restricted += 1;
                    return;
                }
                if dst == self.opts.host && self.open_tcp(guest, port, frame) {
                    // Held until the host connect settles ([`connect`]).
                    return;
                }
            }
        }
        // smoltcp takes the batch in one poll at `flush` (or the next receive/poll): one ACK
        // and one host write per flow for the batch instead of one per segment.
        self.wire.inbound.push_back(frame.to_vec());
    }

    fn answers(&self, dst: Ipv4Address) -> bool {
        dst == self.opts.host
            || dst == self.opts.dns
            || dst == Ipv4Address::BROADCAST
            || dst == self.opts.broadcast()
            || dst.is_multicast()
    }

    /// An IPv4 frame's destination and, for a TCP SYN, the guest's endpoint and the port.
    fn classify(&self, frame: &[u8]) -> Option<(Ipv4Address, Option<(IpEndpoint, u16)>)> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        if eth.ethertype() != EthernetProtocol::Ipv4 {
            return None;
        }
        let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
        let dst = ip.dst_addr();
        if ip.next_header() != IpProtocol::Tcp {
            return Some((dst, None));
        }
        let syn = TcpPacket::new_checked(ip.payload())
            .ok()
            .filter(|t| t.syn() && !t.ack())
            .map(|t| {
                (
                    IpEndpoint::new(IpAddress::Ipv4(ip.src_addr()), t.src_port()),
                    t.dst_port(),
                )
            });
        Some((dst, syn))
    }

    /// A guest SYN to the host alias's `port`: a host connect, the SYN held until it settles
    /// (true), unless the SYN is a retransmission or a limit says no (false: it goes on to
    /// smoltcp, whose listener takes a retransmission and which resets the rest).
    fn open_tcp(&mut self, guest: IpEndpoint, port: u16, syn: &[u8]) -> bool {
        if self.connecting.iter().any(|c| c.guest == guest) {
            return true;
        }
        let sockets = &self.sockets;
        let known = self.flows.iter().any(|f| {
            let s = sockets.get::<tcp::Socket>(f.handle);
            (f.port == port && s.is_listening()) || s.remote_endpoint() == Some(guest)
        });
        if known {
            return false;
        }
        let (flows, half_open) = self.flow_counts();
        match self.limits.admit(flows, half_open) {
            Ok(()) => {}
            Err(Refusal::TooMany) => {
                self.counters.tcp_refused_too_many += 1;
                return false;
            }
            Err(Refusal::TooManyHalfOpen) => {
                self.counters.tcp_refused_half_open += 1;
                return false;
            }
        }
        self.start_connect(guest, port, syn)
    }

    fn run(&mut self) {
        self.accept_forwarded();
        self.finish_connects();
        loop {
            let now = self.now();
            self.iface.poll(now, &mut self.wire, &mut self.sockets);
            if !self.pump() {
                break;
            }
        }
        let wire = &mut self.wire;
        self.udp.pump(|f| wire.push(f));
        self.counters.rx_queue_overflows += std::mem::take(&mut self.wire.overflows);
        self.update_interests();
    }

    /// Bytes between each flow's smoltcp socket and its host socket; closes finished flows.
    /// True if anything moved (smoltcp should run again).
    fn pump(&mut self) -> bool {
        let mut progress = false;
        let counters = &mut self.counters;
        let sockets = &mut self.sockets;
        let epoll = &self.epoll;
        let now = Instant::now();
        self.flows.retain_mut(|f| {
            let s = sockets.get_mut::<tcp::Socket>(f.handle);
            f.accepted |= !s.is_listening();
            f.established |= s.may_send() || s.may_recv();
            // Guest to host, as far as the host socket takes it.
            f.want_write = false;
            while !f.host_dead && s.can_recv() {
                let host = &mut f.host;
                match s.recv(|d| match host.write(d) {
                    Ok(n) => (n, Ok(n)),
                    Err(e) => (0, Err(e)),
                }) {
                    Ok(Ok(0)) | Err(_) => break,
                    Ok(Ok(n)) => {
                        counters.tcp_bytes_to_host += n as u64;
                        f.last_active = now;
                        progress = true;
                    }
                    Ok(Err(e)) if e.kind() == ErrorKind::WouldBlock => {
                        f.want_write = true;
                        break;
                    }
                    Ok(Err(_)) => {
                        f.host_dead = true;
                        s.abort();
                        progress = true;
                    }
                }
            }
            // The guest's FIN, once its bytes are all written.
            if f.established && !s.may_recv() && s.recv_queue() == 0 && !f.host_write_shut {
                let _ = f.host.shutdown(Shutdown::Write);
                f.host_write_shut = true;
            }
            // Host to guest, as far as the smoltcp socket has room.
            while !f.host_dead && !f.host_eof && s.can_send() {
                let host = &mut f.host;
                match s.send(|buf| match host.read(buf) {
                    Ok(n) => (n, Ok(n)),
                    Err(e) => (0, Err(e)),
                }) {
                    Ok(Ok(0)) => {
                        f.host_eof = true;
                        s.close();
                        progress = true;
                    }
                    Ok(Ok(n)) => {
                        counters.tcp_bytes_to_guest += n as u64;
                        f.last_active = now;
                        progress = true;
                    }
                    Ok(Err(e)) if e.kind() == ErrorKind::WouldBlock => break,
                    Ok(Err(_)) | Err(_) => {
                        f.host_dead = true;
                        s.abort();
                        progress = true;
                    }
                }
            }
            let finished = match s.state() {
                tcp::State::Closed | tcp::State::TimeWait => true,
                // Back to LISTEN after a RST in SYN-RECEIVED.
                tcp::State::Listen => f.accepted,
                _ => false,
            };
            if finished {
                // A guest that reset (not after both FINs) resets the host side too.
                if !(f.host_eof && f.host_write_shut) && !f.host_dead {
                    reset_on_close(&f.host);
                }
                let _ = epoll.ctl(
                    ControlOperation::Delete,
                    f.host.as_raw_fd(),
                    EpollEvent::default(),
                );
                sockets.remove(f.handle);
            }
            !finished
        });
        progress
    }

    /// Watch each host socket for what its flow can act on now.
    fn update_interests(&mut self) {
        for f in &mut self.flows {
            let s = self.sockets.get::<tcp::Socket>(f.handle);
            let mut want = EventSet::empty();
            if !f.host_dead && !f.host_eof && s.may_send() && s.send_queue() < s.send_capacity() {
                want |= EventSet::IN;
            }
            if f.want_write && !f.host_dead {
                want |= EventSet::OUT;
            }
            if want != f.interest {
                let ev = EpollEvent::new(want, f.id);
                if self
                    .epoll
                    .ctl(ControlOperation::Modify, f.host.as_raw_fd(), ev)
                    .is_ok()
                {
                    f.interest = want;
                }
            }
        }
    }

    /// Close the flows past a limit; returns the time until the next could expire.
    fn expire(&mut self) -> Option<Duration> {
        let now = Instant::now();
        let mut next: Option<Duration> = None;
        for f in self.flows.iter_mut().filter(|f| !f.expired) {
            let (age, idle) = (now - f.started, now - f.last_active);
            match self.limits.expired(f.established, age, idle) {
                Some(why) => {
                    match why {
                        Expiry::HalfOpen => self.counters.tcp_closed_half_open += 1,
                        Expiry::Idle => self.counters.tcp_closed_idle += 1,
                    }
                    // A RST to the guest; pump then drops the flow (and resets the host).
                    self.sockets.get_mut::<tcp::Socket>(f.handle).abort();
                    f.expired = true;
                }
                None => {
                    let left = self.limits.next_expiry(f.established, age, idle);
                    next = Some(next.map_or(left, |n| n.min(left)));
                }
            }
        }
        next
    }

    fn clear_ready(&mut self) {
        if self.signalled {
            let _ = self.ready.read();
            self.signalled = false;
        }
    }

    /// Whether a host socket is ready (the epoll set holds more than the eventfd's event).
    fn host_ready(&self) -> bool {
        let mut events = [EpollEvent::default(); 8];
        self.epoll
            .wait(0, &mut events)
            .is_ok_and(|n| events[..n].iter().any(|e| e.data() != READY_TOKEN))
    }
}

/// SO_LINGER with a zero timeout: closing the socket sends a RST instead of a FIN.
fn reset_on_close(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `size_of::<linger>()` bytes from a valid `linger` for an open
    // socket we own; a failure only leaves the default FIN close.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

impl NetBackend for UserBackend {
    fn describe(&self) -> String {
        format!(
            "user:{}/{}{}",
            self.opts.net,
            self.opts.prefix_len,
            if self.opts.restrict { ",restrict" } else { "" }
        )
    }

    fn transmit(&mut self, _meta: &FrameMeta, frame: &[u8]) -> Result<(), NetBackendError> {
        if !(MIN_FRAME..=MAX_FRAME).contains(&frame.len()) {
            self.backend_counters.tx_dropped += 1;
            return Ok(());
        }
        self.backend_counters.tx_frames += 1;
        self.backend_counters.tx_bytes += frame.len() as u64;
        self.input(frame);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), NetBackendError> {
        if !self.wire.inbound.is_empty() {
            self.run();
        }
        Ok(())
    }

    fn receive(&mut self, buf: &mut [u8]) -> Result<Option<(usize, FrameMeta)>, NetBackendError> {
        if !self.wire.inbound.is_empty() || (self.wire.out.is_empty() && self.host_ready()) {
            self.run();
        }
        while let Some(frame) = self.wire.out.pop_front() {
            if frame.len() <= buf.len() {
                buf[..frame.len()].copy_from_slice(&frame);
                self.backend_counters.rx_frames += 1;
                self.backend_counters.rx_bytes += frame.len() as u64;
                return Ok(Some((frame.len(), FrameMeta::default())));
            }
            self.backend_counters.rx_dropped += 1;
        }
        self.clear_ready();
        Ok(None)
    }

    fn rx_ready_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    fn poll(&mut self) -> Option<Duration> {
        let expiry = match (self.expire(), self.expire_connects()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let udp_expiry = self.udp.expire(&self.limits);
        let wire = &mut self.wire;
        let tftp_resend = self.tftp.tick(|f| wire.push(f));
        self.run();
        if !self.wire.out.is_empty() && !self.signalled {
            self.ready.write(1).ok();
            self.signalled = true;
        }
        let now = self.now();
        let stack = self
            .iface
            .poll_delay(now, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()));
        [stack, expiry, udp_expiry, tftp_resend]
            .into_iter()
            .flatten()
            .min()
    }

    fn counters(&self) -> BackendCounters {
        let mut c = self.backend_counters;
        c.rx_dropped += self.counters.rx_queue_overflows;
        c
    }
}
