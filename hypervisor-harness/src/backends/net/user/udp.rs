//! The user network's UDP proxy, as slirp's: each guest flow (its address and port, and the
//! address and port it sent to) gets one connected host socket, and the host's answers go
//! back to the guest's port from the address it sent to. A datagram to the host alias's
//! port P goes to 127.0.0.1:P; the DNS forwarder ([`super::dns`]) sends through the same
//! flows to the host's resolver. Flows are admitted by [`FlowLimits`] and closed when idle.
//!
//! The host sockets sit in an epoll set of their own, which the backend's set watches: one
//! readiness source however many flows there are, and a pump that reads only ready flows.

use super::frame::{parse_udp, udp_frame, UdpDatagram};
use super::limits::{FlowLimits, Refusal};
use smoltcp::wire::{EthernetAddress, Ipv4Address};
use std::io::{self, ErrorKind};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// The largest UDP payload that fits one 1500-byte IPv4 packet: the proxy does not fragment,
/// so a longer host datagram is dropped and counted.
pub const MAX_PAYLOAD: usize = 1500 - 20 - 8;
/// Datagrams read from one flow per pump, so that one busy flow cannot starve the others
/// (its socket stays readable, so the next pump takes more).
const READS_PER_PUMP: usize = 64;

/// What the proxy did, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UdpCounters {
    /// Flows opened in all; open now.
    pub opened: u64,
    pub open: u64,
    pub datagrams_to_host: u64,
    pub datagrams_to_guest: u64,
    pub bytes_to_host: u64,
    pub bytes_to_guest: u64,
    /// New flows refused: the flow limit, `restrict=on`, no host socket.
    pub refused_too_many: u64,
    pub refused_restricted: u64,
    pub refused_no_socket: u64,
    /// Sends the host refused (nothing listening: its ICMP came back) or could not take.
    pub host_refused: u64,
    pub host_send_errors: u64,
    /// Host datagrams longer than [`MAX_PAYLOAD`], dropped.
    pub dropped_oversize: u64,
    pub closed_idle: u64,
}

/// One guest flow and its host socket.
struct UdpFlow {
    token: u64,
    guest_mac: EthernetAddress,
    guest: (Ipv4Address, u16),
    /// Where the guest sent to: the source of the answers it gets.
    alias: (Ipv4Address, u16),
    host: UdpSocket,
    started: Instant,
    last_active: Instant,
    idle_timeout: Duration,
}

pub struct UdpProxy {
    epoll: Epoll,
    flows: Vec<UdpFlow>,
    next_token: u64,
    /// The MAC the answers come from (the host alias's).
    mac: EthernetAddress,
    counters: UdpCounters,
}

impl UdpProxy {
    pub fn new(mac: EthernetAddress) -> io::Result<Self> {
        Ok(Self {
            epoll: Epoll::new()?,
            flows: Vec::new(),
            next_token: 0,
            mac,
            counters: UdpCounters::default(),
        })
    }

    /// Readable (level-triggered) while a host socket has a datagram for the guest.
    pub fn ready_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    pub fn counters(&self) -> UdpCounters {
        UdpCounters {
            open: self.flows.len() as u64,
            ..self.counters
        }
    }

    pub fn count_restricted(&mut self) {
        self.counters.refused_restricted += 1;
    }

    /// The guest's datagram `d` to `target` on the host, through its flow (opened if new;
    /// an idle flow closes after `idle_timeout`, capped by the limits'). False if it was not
    /// sent (a limit, or the host would not take it); UDP may lose it.
    pub fn send(
        &mut self,
        limits: &FlowLimits,
        d: &UdpDatagram<'_>,
        target: SocketAddr,
        idle_timeout: Duration,
    ) -> bool {
        let guest = (d.src_ip, d.src_port);
        let alias = (d.dst_ip, d.dst_port);
        let i = match self
            .flows
            .iter()
            .position(|f| f.guest == guest && f.alias == alias)
        {
            Some(i) => i,
            None => match self.open(limits, d, target, idle_timeout) {
                Some(i) => i,
                None => return false,
            },
        };
        let f = &mut self.flows[i];
        f.guest_mac = d.src_mac;
        match f.host.send(d.payload) {
            Ok(_) => {
                f.last_active = Instant::now();
                self.counters.datagrams_to_host += 1;
                self.counters.bytes_to_host += d.payload.len() as u64;
                true
            }
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                self.counters.host_refused += 1;
                false
            }
            Err(_) => {
                self.counters.host_send_errors += 1;
                false
            }
        }
    }

    fn open(
        &mut self,
        limits: &FlowLimits,
        d: &UdpDatagram<'_>,
        target: SocketAddr,
        idle_timeout: Duration,
    ) -> Option<usize> {
        if let Err(Refusal::TooMany | Refusal::TooManyHalfOpen) = limits.admit(self.flows.len(), 0)
        {
            self.counters.refused_too_many += 1;
            return None;
        }
        let Ok(host) = connected_socket(target) else {
            self.counters.refused_no_socket += 1;
            return None;
        };
        let token = self.next_token;
        if self
            .epoll
            .ctl(
                ControlOperation::Add,
                host.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token),
            )
            .is_err()
        {
            self.counters.refused_no_socket += 1;
            return None;
        }
        self.next_token += 1;
        self.counters.opened += 1;
        let now = Instant::now();
        self.flows.push(UdpFlow {
            token,
            guest_mac: d.src_mac,
            guest: (d.src_ip, d.src_port),
            alias: (d.dst_ip, d.dst_port),
            host,
            started: now,
            last_active: now,
            idle_timeout: idle_timeout.min(limits.idle_timeout),
        });
        Some(self.flows.len() - 1)
    }

    /// The host's datagrams for the guest, as frames, into `out`.
    pub fn pump(&mut self, mut out: impl FnMut(Vec<u8>)) {
        if self.flows.is_empty() {
            return;
        }
        let mut events = [EpollEvent::default(); 32];
        let Ok(n) = self.epoll.wait(0, &mut events) else {
            return;
        };
        let mut buf = vec![0u8; 65536];
        let now = Instant::now();
        for ev in &events[..n] {
            let Some(f) = self.flows.iter_mut().find(|f| f.token == ev.data()) else {
                continue;
            };
            for _ in 0..READS_PER_PUMP {
                match f.host.recv(&mut buf) {
                    Ok(len) if len > MAX_PAYLOAD => self.counters.dropped_oversize += 1,
                    Ok(len) => {
                        f.last_active = now;
                        self.counters.datagrams_to_guest += 1;
                        self.counters.bytes_to_guest += len as u64;
                        out(udp_frame(
                            self.mac,
                            f.guest_mac,
                            f.alias,
                            f.guest,
                            &buf[..len],
                        ));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    // The ICMP of an earlier send (nothing listens there), or another error
                    // the socket reports once: counted, the flow stays.
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                        self.counters.host_refused += 1;
                    }
                    Err(_) => {
                        self.counters.host_send_errors += 1;
                        break;
                    }
                }
            }
        }
    }

    /// Close the flows idle past their time; returns how long until the next could expire.
    pub fn expire(&mut self, limits: &FlowLimits) -> Option<Duration> {
        let now = Instant::now();
        let mut next: Option<Duration> = None;
        let counters = &mut self.counters;
        let epoll = &self.epoll;
        self.flows.retain(|f| {
            let own = FlowLimits {
                idle_timeout: f.idle_timeout,
                ..*limits
            };
            // A UDP flow has no handshake: it counts as established from its first datagram.
            let (age, idle) = (now - f.started, now - f.last_active);
            if own.expired(true, age, idle).is_some() {
                counters.closed_idle += 1;
                let _ = epoll.ctl(
                    ControlOperation::Delete,
                    f.host.as_raw_fd(),
                    EpollEvent::default(),
                );
                return false;
            }
            let left = own.next_expiry(true, age, idle);
            next = Some(next.map_or(left, |n| n.min(left)));
            true
        });
        next
    }
}

impl super::UserBackend {
    /// A guest datagram for one of the user network's UDP services: proxied, answered or
    /// dropped here (true), or not one of theirs (false: smoltcp answers it, with an ICMP
    /// port unreachable).
    pub(super) fn udp_input(&mut self, frame: &[u8]) -> bool {
        let Some(d) = parse_udp(frame) else {
            return false;
        };
        if d.dst_ip == self.opts.dns && d.dst_port == super::dns::PORT {
            self.dns_input(&d);
            return true;
        }
        if d.dst_ip != self.opts.host {
            return false;
        }
        // The TFTP server, even under restrict=on (as slirp's).
        if d.dst_port == super::tftp::PORT {
            let wire = &mut self.wire;
            self.tftp.handle(&d, |f| wire.push(f));
            return true;
        }
        if self.opts.restrict {
            self.udp.count_restricted();
            return false;
        }
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, d.dst_port));
        self.udp
            .send(&self.limits, &d, target, self.limits.idle_timeout);
        true
    }
}

/// A non-blocking host socket connected to `target`, bound to loopback when the target is
/// (so that nothing but the host itself can answer it).
fn connected_socket(target: SocketAddr) -> io::Result<UdpSocket> {
    let bind: SocketAddr = match target {
        SocketAddr::V4(a) if a.ip().is_loopback() => (Ipv4Addr::LOCALHOST, 0).into(),
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(target)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    const HOST_MAC: EthernetAddress = EthernetAddress([0x52, 0x55, 10, 0, 2, 2]);
    const GUEST: Ipv4Address = Ipv4Address::new(10, 0, 2, 15);
    const ALIAS: Ipv4Address = Ipv4Address::new(10, 0, 2, 2);

    fn datagram(frame: &[u8]) -> UdpDatagram<'_> {
        parse_udp(frame).unwrap()
    }

    fn guest_frame(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
        udp_frame(
            GUEST_MAC,
            HOST_MAC,
            (GUEST, src_port),
            (ALIAS, dst_port),
            payload,
        )
    }

    /// Pump until `want` frames came back or a second passed.
    fn pump_for(p: &mut UdpProxy, want: usize) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let until = Instant::now() + Duration::from_secs(1);
        while frames.len() < want && Instant::now() < until {
            p.pump(|f| frames.push(f));
            std::thread::sleep(Duration::from_millis(2));
        }
        frames
    }

    fn echo_server() -> (UdpSocket, u16) {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        (s, port)
    }

    fn echo_one(s: &UdpSocket) -> SocketAddr {
        let mut buf = [0u8; 2048];
        let (n, from) = s.recv_from(&mut buf).unwrap();
        s.send_to(&buf[..n], from).unwrap();
        from
    }

    #[test]
    fn a_flow_reaches_loopback_and_answers_come_back_to_the_guest_port() {
        let (server, port) = echo_server();
        let mut p = UdpProxy::new(HOST_MAC).unwrap();
        let limits = FlowLimits::default();
        let target = SocketAddr::from(([127, 0, 0, 1], port));
        let f = guest_frame(4000, port, b"ping");
        assert!(p.send(&limits, &datagram(&f), target, limits.idle_timeout));
        let from = echo_one(&server);
        assert!(from.ip().is_loopback());
        let frames = pump_for(&mut p, 1);
        assert_eq!(frames.len(), 1);
        let d = parse_udp(&frames[0]).unwrap();
        assert_eq!((d.src_ip, d.src_port), (ALIAS, port));
        assert_eq!((d.dst_ip, d.dst_port, d.dst_mac), (GUEST, 4000, GUEST_MAC));
        assert_eq!((d.src_mac, d.payload), (HOST_MAC, &b"ping"[..]));
        // The same flow again: the same host socket; another guest port: a new one.
        assert!(p.send(&limits, &datagram(&f), target, limits.idle_timeout));
        assert_eq!(echo_one(&server), from);
        let g = guest_frame(4001, port, b"pong");
        assert!(p.send(&limits, &datagram(&g), target, limits.idle_timeout));
        assert_ne!(echo_one(&server), from);
        let frames = pump_for(&mut p, 2);
        let ports: Vec<u16> = frames
            .iter()
            .map(|f| parse_udp(f).unwrap().dst_port)
            .collect();
        assert_eq!(ports.len(), 2, "{ports:?}");
        assert!(ports.contains(&4000) && ports.contains(&4001));
        let c = p.counters();
        assert_eq!((c.opened, c.open), (2, 2));
        assert_eq!((c.datagrams_to_host, c.datagrams_to_guest), (3, 3));
        assert_eq!((c.bytes_to_host, c.bytes_to_guest), (12, 12));
    }

    /// Through the whole backend: the guest's datagram to the host alias reaches the host's
    /// loopback and the answer comes back as a frame; under `restrict=on` it does not.
    #[test]
    fn the_backend_proxies_to_loopback_unless_restricted() {
        use super::super::{options::UserOptions, NetBackend, UserBackend};
        use crate::backends::net::FrameMeta;
        let (server, port) = echo_server();
        let mut b = UserBackend::new(UserOptions::default()).unwrap();
        let f = guest_frame(4000, port, b"through");
        b.transmit(&FrameMeta::default(), &f).unwrap();
        echo_one(&server);
        let mut buf = vec![0u8; 65536];
        let until = Instant::now() + Duration::from_secs(1);
        let len = loop {
            b.poll();
            if let Some((n, _)) = b.receive(&mut buf).unwrap() {
                break n;
            }
            assert!(Instant::now() < until, "no answer");
            std::thread::sleep(Duration::from_millis(2));
        };
        let d = parse_udp(&buf[..len]).unwrap();
        assert_eq!(
            (d.src_ip, d.src_port, d.payload),
            (ALIAS, port, &b"through"[..])
        );
        assert_eq!(b.user_counters().udp.datagrams_to_guest, 1);

        let restricted = [("restrict".to_string(), "on".to_string())];
        let mut b = UserBackend::new(UserOptions::parse(&restricted).unwrap()).unwrap();
        b.transmit(&FrameMeta::default(), &f).unwrap();
        let mut tmp = [0u8; 16];
        server
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        assert!(
            server.recv_from(&mut tmp).is_err(),
            "restrict=on let it out"
        );
        let c = b.user_counters().udp;
        assert_eq!((c.refused_restricted, c.opened), (1, 0));
    }

    #[test]
    fn the_flow_limit_refuses_and_idle_flows_close() {
        let (_server, port) = echo_server();
        let mut p = UdpProxy::new(HOST_MAC).unwrap();
        let limits = FlowLimits {
            max_flows: 2,
            idle_timeout: Duration::from_millis(50),
            ..FlowLimits::default()
        };
        let target = SocketAddr::from(([127, 0, 0, 1], port));
        for src in [5000, 5001, 5002] {
            let f = guest_frame(src, port, b"x");
            let sent = p.send(&limits, &datagram(&f), target, Duration::from_secs(60));
            assert_eq!(sent, src != 5002, "flow from {src}");
        }
        assert_eq!(p.counters().refused_too_many, 1);
        // Capped by the limits' idle time, whatever the caller asked for.
        assert!(p.expire(&limits).unwrap() <= Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(p.expire(&limits), None);
        let c = p.counters();
        assert_eq!((c.closed_idle, c.open), (2, 0));
        // Room again.
        let f = guest_frame(5002, port, b"x");
        assert!(p.send(&limits, &datagram(&f), target, limits.idle_timeout));
    }

    #[test]
    fn oversize_and_refused_answers_are_counted_not_passed_on() {
        let (server, port) = echo_server();
        let mut p = UdpProxy::new(HOST_MAC).unwrap();
        let limits = FlowLimits::default();
        let target = SocketAddr::from(([127, 0, 0, 1], port));
        let f = guest_frame(4000, port, b"big?");
        assert!(p.send(&limits, &datagram(&f), target, limits.idle_timeout));
        let mut buf = [0u8; 16];
        let (_, from) = server.recv_from(&mut buf).unwrap();
        server.send_to(&[7u8; MAX_PAYLOAD + 1], from).unwrap();
        server.send_to(&[7u8; MAX_PAYLOAD], from).unwrap();
        let frames = pump_for(&mut p, 1);
        assert_eq!(frames.len(), 1);
        assert_eq!(parse_udp(&frames[0]).unwrap().payload.len(), MAX_PAYLOAD);
        assert_eq!(p.counters().dropped_oversize, 1);
        // Nothing listens any more: the host's ICMP comes back as a refusal.
        drop(server);
        assert!(p.send(&limits, &datagram(&f), target, limits.idle_timeout));
        let until = Instant::now() + Duration::from_secs(1);
        while p.counters().host_refused == 0 && Instant::now() < until {
            p.pump(|_| panic!("no answer expected"));
            let _ = p.send(&limits, &datagram(&f), target, limits.idle_timeout);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(p.counters().host_refused > 0);
    }
}
