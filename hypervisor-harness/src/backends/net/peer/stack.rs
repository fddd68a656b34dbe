//! The peer's TCP/IP stack: a smoltcp `Interface` over an in-memory wire, and the services of
//! the network contract on its sockets. Frames go in with [`PeerStack::input`] (processed at
//! once) and come out with [`PeerStack::output`]; nothing here makes a system call.

use super::pattern::{Fnv1a64, PatternStream};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, HardwareAddress, Icmpv4Message, Icmpv4Packet,
    IpAddress, IpCidr, IpEndpoint, IpProtocol, Ipv4Address, Ipv4Packet, TcpPacket,
};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The peer's address (network contract).
pub const PEER_IP: Ipv4Address = Ipv4Address::new(192, 168, 76, 1);
pub const PEER_PREFIX_LEN: u8 = 24;
pub const PEER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x76, 0x00, 0x01];

/// Frames waiting for the guest, at most; beyond, a frame is dropped and counted.
pub const RX_QUEUE_FRAMES: usize = 4096;
/// The UDP source adds datagrams only while fewer frames than this wait, so that a flood of
/// any count holds a bounded amount of host memory and follows the guest's pace.
pub const SOURCE_QUEUE_FRAMES: usize = 256;
/// TCP connections per service at once; a SYN beyond finds no listener (RST).
pub const MAX_CONNECTIONS_PER_PORT: usize = 64;
/// Pending UDP source requests; a request beyond is refused and counted.
pub const MAX_SOURCE_JOBS: usize = 64;
/// Largest UDP source datagram payload (1500 - 20 - 8).
pub const MAX_UDP_PAYLOAD: usize = 1472;

/// Ethernet MTU in smoltcp's sense (header included, no FCS).
const ETHERNET_MTU: usize = 1514;
/// Large windows (the buffers set the window scale) so a 16 MiB transfer is not
/// window-bound.
const BULK_BUFFER: usize = 1 << 20;
const SMALL_BUFFER: usize = 4096;
const ECHO_BUFFER: usize = 256 << 10;
const UDP_SLOTS: usize = 128;
/// The keep-alive of a connection whose FIN is out: smoltcp 0.14 forgets a FIN that is the
/// only thing unacknowledged when three duplicate ACKs arrive (its fast retransmit has no
/// data to resend and drops the retransmit timer), and this timer is then the only one left
/// to send it again.
const FIN_GUARD: smoltcp::time::Duration = smoltcp::time::Duration::from_millis(1000);

/// The services' counters, shared with every [`PeerHandle`] (atomics: the stack may live in a
/// device thread while a test or report reads them).
#[derive(Debug, Default)]
struct PeerStats {
    icmp_echo_requests: AtomicU64,
    udp_echo_datagrams: AtomicU64,
    udp_echo_bytes: AtomicU64,
    udp_echo_dropped: AtomicU64,
    udp_discard_datagrams: AtomicU64,
    udp_discard_bytes: AtomicU64,
    udp_source_requests: AtomicU64,
    udp_source_bad_requests: AtomicU64,
    udp_source_datagrams: AtomicU64,
    tcp_accepted: AtomicU64,
    tcp_echo_bytes: AtomicU64,
    tcp_sink_bytes: AtomicU64,
    tcp_sink_reports: AtomicU64,
    tcp_source_bytes: AtomicU64,
    tcp_source_done: AtomicU64,
    rx_queue_overflows: AtomicU64,
}

/// A snapshot of the peer's per-service counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerCounters {
    /// ICMP echo requests addressed to the peer (each is answered by smoltcp).
    pub icmp_echo_requests: u64,
    /// UDP 7: datagrams (and payload bytes) echoed; dropped when the socket was full.
    pub udp_echo_datagrams: u64,
    pub udp_echo_bytes: u64,
    pub udp_echo_dropped: u64,
    /// UDP 9: datagrams and payload bytes discarded.
    pub udp_discard_datagrams: u64,
    pub udp_discard_bytes: u64,
    /// UDP 19: valid requests, malformed (or over the job limit) requests, datagrams sent.
    pub udp_source_requests: u64,
    pub udp_source_bad_requests: u64,
    pub udp_source_datagrams: u64,
    /// TCP connections accepted on any port.
    pub tcp_accepted: u64,
    /// TCP 7 bytes echoed; TCP 9 bytes received and reports sent; TCP 19 bytes queued and
    /// streams completed.
    pub tcp_echo_bytes: u64,
    pub tcp_sink_bytes: u64,
    pub tcp_sink_reports: u64,
    pub tcp_source_bytes: u64,
    pub tcp_source_done: u64,
    /// Frames for the guest dropped because [`RX_QUEUE_FRAMES`] were waiting.
    pub rx_queue_overflows: u64,
}

/// Reads a peer's [`PeerCounters`] from anywhere (cheap to clone).
#[derive(Debug, Clone)]
pub struct PeerHandle(Arc<PeerStats>);

impl PeerHandle {
    pub fn counters(&self) -> PeerCounters {
        let s = &*self.0;
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PeerCounters {
            icmp_echo_requests: r(&s.icmp_echo_requests),
            udp_echo_datagrams: r(&s.udp_echo_datagrams),
            udp_echo_bytes: r(&s.udp_echo_bytes),
            udp_echo_dropped: r(&s.udp_echo_dropped),
            udp_discard_datagrams: r(&s.udp_discard_datagrams),
            udp_discard_bytes: r(&s.udp_discard_bytes),
            udp_source_requests: r(&s.udp_source_requests),
            udp_source_bad_requests: r(&s.udp_source_bad_requests),
            udp_source_datagrams: r(&s.udp_source_datagrams),
            tcp_accepted: r(&s.tcp_accepted),
            tcp_echo_bytes: r(&s.tcp_echo_bytes),
            tcp_sink_bytes: r(&s.tcp_sink_bytes),
            tcp_sink_reports: r(&s.tcp_sink_reports),
            tcp_source_bytes: r(&s.tcp_source_bytes),
            tcp_source_done: r(&s.tcp_source_done),
            rx_queue_overflows: r(&s.rx_queue_overflows),
        }
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The frames waiting for the guest, and a pool of their buffers (no allocation per frame once
/// warm).
#[derive(Default)]
struct Outbound {
    queue: VecDeque<Vec<u8>>,
    pool: Vec<Vec<u8>>,
    overflows: u64,
}

impl Outbound {
    fn recycle(&mut self, mut frame: Vec<u8>) {
        if self.pool.len() < SOURCE_QUEUE_FRAMES {
            frame.clear();
            self.pool.push(frame);
        }
    }
}

/// smoltcp's `phy::Device`: one inbound frame at a time (so the listeners are replaced
/// between SYNs), and the outbound queue.
struct Wire {
    inbound: Vec<u8>,
    has_inbound: bool,
    out: Outbound,
}

struct InboundToken<'a>(&'a [u8]);
struct OutboundToken<'a>(&'a mut Outbound);

impl RxToken for InboundToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl TxToken for OutboundToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = self.0.pool.pop().unwrap_or_default();
        frame.resize(len, 0);
        let r = f(&mut frame);
        if self.0.queue.len() >= RX_QUEUE_FRAMES {
            self.0.overflows += 1;
            self.0.recycle(frame);
        } else {
            self.0.queue.push_back(frame);
        }
        r
    }
}

impl Device for Wire {
    type RxToken<'a> = InboundToken<'a>;
    type TxToken<'a> = OutboundToken<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(InboundToken<'_>, OutboundToken<'_>)> {
        if !self.has_inbound {
            return None;
        }
        self.has_inbound = false;
        Some((InboundToken(&self.inbound), OutboundToken(&mut self.out)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<OutboundToken<'_>> {
        // A full queue holds TCP back in its socket instead of dropping its segments.
        (self.out.queue.len() < RX_QUEUE_FRAMES).then_some(OutboundToken(&mut self.out))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = ETHERNET_MTU;
        caps
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TcpService {
    Echo,
    Sink,
    Source,
}

impl TcpService {
    const ALL: [TcpService; 3] = [Self::Echo, Self::Sink, Self::Source];

    fn port(self) -> u16 {
        match self {
            Self::Echo => 7,
            Self::Sink => 9,
            Self::Source => 19,
        }
    }

    /// (rx, tx) buffer sizes: large where the bulk flows.
    fn buffers(self) -> (usize, usize) {
        match self {
            Self::Echo => (ECHO_BUFFER, ECHO_BUFFER),
            Self::Sink => (BULK_BUFFER, SMALL_BUFFER),
            Self::Source => (SMALL_BUFFER, BULK_BUFFER),
        }
    }
}

enum Session {
    Echo,
    Sink {
        bytes: u64,
        fnv: Fnv1a64,
        reported: bool,
    },
    Source {
        request: [u8; 16],
        have: usize,
        /// The stream and the bytes still to send, once the request is complete.
        stream: Option<(Box<PatternStream>, u64)>,
        closed: bool,
    },
}

struct Connection {
    handle: SocketHandle,
    service: TcpService,
    session: Session,
    /// The service is done sending: the FIN goes once every byte sent is acknowledged.
    closing: bool,
}

/// A UDP 19 request in progress.
struct SourceJob {
    to: IpEndpoint,
    remaining: u32,
    next: u32,
    size: usize,
}

/// The peer: smoltcp and the contract's services.
pub struct PeerStack {
    iface: Interface,
    wire: Wire,
    sockets: SocketSet<'static>,
    listeners: Vec<(TcpService, Option<SocketHandle>)>,
    connections: Vec<Connection>,
    udp_echo: SocketHandle,
    udp_discard: SocketHandle,
    udp_source: SocketHandle,
    jobs: VecDeque<SourceJob>,
    scratch: Vec<u8>,
    epoch: Instant,
    /// Added to the clock: tests move time on without waiting for it.
    clock_skew: Duration,
    stats: Arc<PeerStats>,
}

fn tcp_listener(service: TcpService) -> tcp::Socket<'static> {
    let (rx, tx) = service.buffers();
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; rx]),
        tcp::SocketBuffer::new(vec![0; tx]),
    );
    s.set_nagle_enabled(false);
    // ACK at once: a delayed ACK's timer only fires when the device calls `poll`, and a
    // guest waiting on it would stall for the whole delay.
    s.set_ack_delay(None);
    s.listen(service.port())
        .expect("a fresh socket listens on a nonzero port");
    s
}

fn udp_socket(port: u16) -> udp::Socket<'static> {
    let buffer = || {
        udp::PacketBuffer::new(
            vec![udp::PacketMetadata::EMPTY; UDP_SLOTS],
            vec![0; UDP_SLOTS * MAX_UDP_PAYLOAD],
        )
    };
    let mut s = udp::Socket::new(buffer(), buffer());
    s.bind(port).expect("a fresh socket binds a nonzero port");
    s
}

impl Default for PeerStack {
    fn default() -> Self {
        Self::new()
    }
}

impl PeerStack {
    pub fn new() -> Self {
        let mut wire = Wire {
            inbound: Vec::with_capacity(super::MAX_FRAME),
            has_inbound: false,
            out: Outbound::default(),
        };
        let epoch = Instant::now();
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(PEER_MAC)));
        let mut iface = Interface::new(config, &mut wire, SmolInstant::ZERO);
        iface.update_ip_addrs(|addrs| {
            addrs
                .push(IpCidr::new(IpAddress::Ipv4(PEER_IP), PEER_PREFIX_LEN))
                .expect("room for one address");
        });
        let mut sockets = SocketSet::new(Vec::new());
        let listeners = TcpService::ALL
            .iter()
            .map(|&s| (s, Some(sockets.add(tcp_listener(s)))))
            .collect();
        let udp_echo = sockets.add(udp_socket(7));
        let udp_discard = sockets.add(udp_socket(9));
        let udp_source = sockets.add(udp_socket(19));
        Self {
            iface,
            wire,
            sockets,
            listeners,
            connections: Vec::new(),
            udp_echo,
            udp_discard,
            udp_source,
            jobs: VecDeque::new(),
            scratch: vec![0; 64 << 10],
            epoch,
            clock_skew: Duration::ZERO,
            stats: Arc::default(),
        }
    }

    pub fn handle(&self) -> PeerHandle {
        PeerHandle(self.stats.clone())
    }

    fn now(&self) -> SmolInstant {
        let t = self.epoch.elapsed() + self.clock_skew;
        SmolInstant::from_micros(t.as_micros() as i64)
    }

    /// Move the stack's clock on by `d` (its timers then fire at the next poll).
    #[cfg(test)]
    pub(super) fn advance_clock(&mut self, d: Duration) {
        self.clock_skew += d;
    }

    /// One frame from the wire, processed now: replies are in the output queue on return.
    /// Garbage is smoltcp's to ignore.
    pub fn input(&mut self, frame: &[u8]) {
        self.count_icmp(frame);
        if self.is_syn_of_a_connection(frame) {
            return;
        }
        self.wire.inbound.clear();
        self.wire.inbound.extend_from_slice(frame);
        self.wire.has_inbound = true;
        self.run();
    }

    /// The next frame for the wire; the UDP source refills the queue as it drains. Hand the
    /// frame back with [`Self::recycle`] to keep its buffer.
    pub fn output(&mut self) -> Option<Vec<u8>> {
        if !self.jobs.is_empty() && self.wire.out.queue.len() < SOURCE_QUEUE_FRAMES / 2 {
            self.run();
        }
        self.wire.out.queue.pop_front()
    }

    pub fn recycle(&mut self, frame: Vec<u8>) {
        self.wire.out.recycle(frame);
    }

    /// Hosts that left the wire (a switch client that disconnected): end the UDP source jobs
    /// and TCP connections toward `ips` (the sockets removed without a RST: nobody is there
    /// to take it), and drop the frames queued for `macs`. Otherwise a flood would go on to
    /// whoever next has that address. Returns (jobs, connections) ended.
    pub fn forget_hosts(&mut self, ips: &[Ipv4Address], macs: &[[u8; 6]]) -> (usize, usize) {
        let gone = |addr: IpAddress| matches!(addr, IpAddress::Ipv4(a) if ips.contains(&a));
        let jobs = self.jobs.len();
        self.jobs.retain(|j| !gone(j.to.addr));
        let jobs = jobs - self.jobs.len();
        let sockets = &mut self.sockets;
        let connections = self.connections.len();
        self.connections.retain(|c| {
            let to_gone = sockets
                .get::<tcp::Socket>(c.handle)
                .remote_endpoint()
                .is_some_and(|e| gone(e.addr));
            if to_gone {
                sockets.remove(c.handle);
            }
            !to_gone
        });
        let connections = connections - self.connections.len();
        let out = &mut self.wire.out;
        let (kept, dropped): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut out.queue)
            .into_iter()
            .partition(|f| f.first_chunk::<6>().is_none_or(|dst| !macs.contains(dst)));
        out.queue = kept;
        for f in dropped {
            out.recycle(f);
        }
        (jobs, connections)
    }

    /// Frames waiting in the output queue.
    pub fn queued(&self) -> usize {
        self.wire.out.queue.len()
    }

    /// Timers (retransmits, ARP retries, delayed ACKs) and services; returns how long until
    /// the stack needs `poll` again (`None`: not until a frame moves).
    pub fn poll(&mut self) -> Option<Duration> {
        self.run();
        let now = self.now();
        self.iface
            .poll_delay(now, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
    }

    fn run(&mut self) {
        loop {
            let now = self.now();
            self.iface.poll(now, &mut self.wire, &mut self.sockets);
            if !self.serve() {
                break;
            }
        }
        let overflows = std::mem::take(&mut self.wire.out.overflows);
        add(&self.stats.rx_queue_overflows, overflows);
    }

    /// A SYN from an address and port that already have a connection here: a duplicate, or
    /// a retransmission that the connection's own SYN-ACK timer answers. smoltcp hands a
    /// segment to the first socket that takes it, and a fresh listener in a lower slot takes
    /// a SYN: its second connection then answers the client's ACK, which it does not know,
    /// with a RST that is in the first connection's window and resets it. So it is dropped.
    fn is_syn_of_a_connection(&self, frame: &[u8]) -> bool {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return false;
        };
        if eth.ethertype() != EthernetProtocol::Ipv4 {
            return false;
        }
        let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
            return false;
        };
        if ip.next_header() != IpProtocol::Tcp || ip.dst_addr() != PEER_IP {
            return false;
        }
        let Ok(seg) = TcpPacket::new_checked(ip.payload()) else {
            return false;
        };
        if !seg.syn() || seg.ack() {
            return false;
        }
        let from = IpEndpoint::new(IpAddress::Ipv4(ip.src_addr()), seg.src_port());
        self.connections.iter().any(|c| {
            let s = self.sockets.get::<tcp::Socket>(c.handle);
            s.remote_endpoint() == Some(from)
                && s.local_endpoint().is_some_and(|l| l.port == seg.dst_port())
        })
    }

    fn count_icmp(&self, frame: &[u8]) {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return;
        };
        if eth.ethertype() != EthernetProtocol::Ipv4 {
            return;
        }
        let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
            return;
        };
        if ip.next_header() != IpProtocol::Icmp || ip.dst_addr() != PEER_IP {
            return;
        }
        if Icmpv4Packet::new_checked(ip.payload())
            .is_ok_and(|icmp| icmp.msg_type() == Icmpv4Message::EchoRequest)
        {
            add(&self.stats.icmp_echo_requests, 1);
        }
    }

    /// The services' work after smoltcp moved frames; true if it queued anything to send (so
    /// smoltcp should run again).
    fn serve(&mut self) -> bool {
        let mut progress = self.accept();
        progress |= self.serve_tcp();
        progress |= self.serve_udp();
        progress
    }

    /// A listener that took a SYN becomes a connection, and a fresh listener takes its place.
    fn accept(&mut self) -> bool {
        let mut progress = false;
        for i in 0..self.listeners.len() {
            let (service, slot) = self.listeners[i];
            if let Some(h) = slot {
                if self.sockets.get::<tcp::Socket>(h).is_listening() {
                    continue;
                }
                add(&self.stats.tcp_accepted, 1);
                self.connections.push(Connection {
                    handle: h,
                    service,
                    session: match service {
                        TcpService::Echo => Session::Echo,
                        TcpService::Sink => Session::Sink {
                            bytes: 0,
                            fnv: Fnv1a64::default(),
                            reported: false,
                        },
                        TcpService::Source => Session::Source {
                            request: [0; 16],
                            have: 0,
                            stream: None,
                            closed: false,
                        },
                    },
                    closing: false,
                });
                self.listeners[i].1 = None;
                progress = true;
            }
            let open = self
                .connections
                .iter()
                .filter(|c| c.service == service)
                .count();
            if open < MAX_CONNECTIONS_PER_PORT {
                self.listeners[i].1 = Some(self.sockets.add(tcp_listener(service)));
            }
        }
        progress
    }

    fn serve_tcp(&mut self) -> bool {
        let mut progress = false;
        let stats = &*self.stats;
        let scratch = &mut self.scratch;
        let sockets = &mut self.sockets;
        self.connections.retain_mut(|c| {
            let s = sockets.get_mut::<tcp::Socket>(c.handle);
            match &mut c.session {
                Session::Echo => loop {
                    let room = s.send_capacity() - s.send_queue();
                    let take = room.min(scratch.len());
                    let got = match s.recv_slice(&mut scratch[..take]) {
                        Ok(n) if n > 0 => n,
                        _ => break,
                    };
                    let sent = s.send_slice(&scratch[..got]).unwrap_or(0);
                    add(&stats.tcp_echo_bytes, sent as u64);
                    progress = true;
                },
                Session::Sink {
                    bytes,
                    fnv,
                    reported,
                } => {
                    while let Ok(n) = s.recv(|data| {
                        fnv.update(data);
                        (data.len(), data.len())
                    }) {
                        if n == 0 {
                            break;
                        }
                        *bytes += n as u64;
                        add(&stats.tcp_sink_bytes, n as u64);
                    }
                    if !*reported && s.state() == tcp::State::CloseWait {
                        let mut report = [0u8; 16];
                        report[..8].copy_from_slice(&bytes.to_le_bytes());
                        report[8..].copy_from_slice(&fnv.0.to_le_bytes());
                        // A fresh connection's send buffer is empty: the 16 bytes fit.
                        if s.send_slice(&report) == Ok(16) {
                            add(&stats.tcp_sink_reports, 1);
                        }
                        c.closing = true;
                        *reported = true;
                        progress = true;
                    }
                }
                Session::Source {
                    request,
                    have,
                    stream,
                    closed,
                } => {
                    if stream.is_none() {
                        if let Ok(n) = s.recv_slice(&mut request[*have..]) {
                            *have += n;
                        }
                        if *have == 16 {
                            let len = u64::from_le_bytes(request[..8].try_into().unwrap());
                            let seed = u64::from_le_bytes(request[8..].try_into().unwrap());
                            *stream = Some((Box::new(PatternStream::new(seed)), len));
                        }
                    } else {
                        // Anything after the request is ignored.
                        while s.recv(|d| (d.len(), d.len())).is_ok_and(|n| n > 0) {}
                    }
                    if let Some((pattern, remaining)) = stream {
                        while *remaining > 0 && s.can_send() {
                            let n = s
                                .send(|buf| {
                                    let n = buf.len().min(*remaining as usize);
                                    pattern.fill(&mut buf[..n]);
                                    (n, n)
                                })
                                .unwrap_or(0);
                            if n == 0 {
                                break;
                            }
                            *remaining -= n as u64;
                            add(&stats.tcp_source_bytes, n as u64);
                            progress = true;
                        }
                        if *remaining == 0 && !*closed {
                            c.closing = true;
                            *closed = true;
                            add(&stats.tcp_source_done, 1);
                            progress = true;
                        }
                    } else if s.state() == tcp::State::CloseWait && !*closed {
                        // The guest closed before its request was whole.
                        c.closing = true;
                        *closed = true;
                        progress = true;
                    }
                }
            }
            if let Session::Echo = c.session {
                if s.state() == tcp::State::CloseWait && s.recv_queue() == 0 && !c.closing {
                    c.closing = true;
                    progress = true;
                }
            }
            // The FIN goes alone, after the data is acknowledged: smoltcp 0.14, the guest's
            // stack too, takes no FIN from a resent segment whose data it already has (it
            // judges the segment by its payload alone, which is old), and answers it with
            // duplicate ACKs instead. A bare FIN at the next sequence number is always taken.
            // The guest's own senders wait so too (the kernel's stream_pattern).
            if c.closing && s.send_queue() == 0 && s.may_send() {
                s.set_keep_alive(Some(FIN_GUARD));
                s.close();
                c.closing = false;
                progress = true;
            }
            // Closed, in TIME-WAIT, or back to LISTEN after an RST in SYN-RECEIVED: done.
            let done = matches!(
                s.state(),
                tcp::State::Closed | tcp::State::TimeWait | tcp::State::Listen
            );
            if done {
                sockets.remove(c.handle);
            }
            !done
        });
        progress
    }

    fn serve_udp(&mut self) -> bool {
        let stats = &*self.stats;
        let mut progress = false;
        // Echo: the datagram back to its sender.
        loop {
            let s = self.sockets.get_mut::<udp::Socket>(self.udp_echo);
            let (len, to) = match s.recv() {
                Ok((data, meta)) => {
                    self.scratch[..data.len()].copy_from_slice(data);
                    (data.len(), meta.endpoint)
                }
                Err(_) => break,
            };
            if s.send_slice(&self.scratch[..len], to).is_ok() {
                add(&stats.udp_echo_datagrams, 1);
                add(&stats.udp_echo_bytes, len as u64);
                progress = true;
            } else {
                add(&stats.udp_echo_dropped, 1);
            }
        }
        let s = self.sockets.get_mut::<udp::Socket>(self.udp_discard);
        while let Ok((data, _)) = s.recv() {
            add(&stats.udp_discard_datagrams, 1);
            add(&stats.udp_discard_bytes, data.len() as u64);
        }
        // Source: requests, then datagrams while the output queue is short.
        let s = self.sockets.get_mut::<udp::Socket>(self.udp_source);
        while let Ok((data, meta)) = s.recv() {
            let size = data
                .get(4..6)
                .map_or(0, |b| usize::from(u16::from_le_bytes([b[0], b[1]])));
            let valid = data.len() == 8
                && data[6..8] == [0, 0]
                && (1..=MAX_UDP_PAYLOAD).contains(&size)
                && self.jobs.len() < MAX_SOURCE_JOBS;
            if !valid {
                add(&stats.udp_source_bad_requests, 1);
                continue;
            }
            add(&stats.udp_source_requests, 1);
            let count = u32::from_le_bytes(data[..4].try_into().unwrap());
            if count > 0 {
                self.jobs.push_back(SourceJob {
                    to: meta.endpoint,
                    remaining: count,
                    next: 0,
                    size,
                });
            }
        }
        while let Some(job) = self.jobs.front_mut() {
            if self.wire.out.queue.len() >= SOURCE_QUEUE_FRAMES || !s.can_send() {
                break;
            }
            let k = job.next;
            let sent = s.send_with(job.size, job.to, |buf| {
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = (k as usize + i) as u8;
                }
                buf.len()
            });
            if sent.is_err() {
                break;
            }
            add(&stats.udp_source_datagrams, 1);
            progress = true;
            job.next += 1;
            job.remaining -= 1;
            if job.remaining == 0 {
                self.jobs.pop_front();
            }
        }
        progress
    }
}
