//! The user network's DNS forwarder at the `dns` address (x.x.x.3), as slirp's: the guest's
//! queries to its port 53 go, unchanged, to the host's resolver (the first `nameserver` of
//! /etc/resolv.conf, on the host's loopback or elsewhere), and the answers come back from
//! the `dns` address. Each guest port's queries are one flow of the UDP proxy, closed after
//! [`IDLE`] (slirp's short expiry for DNS).
//!
//! /etc/resolv.conf is read when the backend opens: the VMM opens no file once running.
//! Without a usable `nameserver` the queries are dropped and counted.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub const PORT: u16 = 53;
/// A DNS flow's idle time before it closes.
pub const IDLE: Duration = Duration::from_secs(10);
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// What the forwarder did, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DnsCounters {
    /// Queries passed to the host's resolver.
    pub forwarded: u64,
    /// Queries dropped: no resolver, `restrict=on`, or the proxy would not take them.
    pub no_resolver: u64,
    pub restricted: u64,
    pub not_sent: u64,
}

pub struct DnsForwarder {
    /// The host's resolver, port 53; `None`: none found.
    pub resolver: Option<SocketAddr>,
    pub counters: DnsCounters,
}

impl DnsForwarder {
    /// The forwarder to the resolver /etc/resolv.conf names now.
    pub fn from_host() -> Self {
        let text = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
        Self {
            resolver: first_nameserver(&text),
            counters: DnsCounters::default(),
        }
    }
}

/// The first `nameserver ADDR` line's address (IPv4 or IPv6, a `%zone` dropped), port 53.
pub fn first_nameserver(resolv_conf: &str) -> Option<SocketAddr> {
    resolv_conf.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next()? != "nameserver" {
            return None;
        }
        let addr = words.next()?;
        let addr = addr.split_once('%').map_or(addr, |(a, _)| a);
        addr.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, PORT))
    })
}

impl super::UserBackend {
    /// A guest datagram to the `dns` address's port 53: to the host's resolver.
    pub(super) fn dns_input(&mut self, d: &super::frame::UdpDatagram<'_>) {
        let c = &mut self.dns.counters;
        if self.opts.restrict {
            c.restricted += 1;
            return;
        }
        let Some(resolver) = self.dns.resolver else {
            c.no_resolver += 1;
            return;
        };
        if self.udp.send(&self.limits, d, resolver, IDLE) {
            c.forwarded += 1;
        } else {
            c.not_sent += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::{parse_udp, udp_frame};
    use super::super::options::UserOptions;
    use super::super::{NetBackend, UserBackend};
    use super::*;
    use crate::backends::net::FrameMeta;
    use smoltcp::wire::{EthernetAddress, Ipv4Address};
    use std::net::UdpSocket;
    use std::time::Instant;

    #[test]
    fn the_first_nameserver_is_the_resolver() {
        let conf = "# generated\nsearch example.org\nnameserver 127.0.0.53\nnameserver 9.9.9.9\n";
        assert_eq!(
            first_nameserver(conf),
            Some("127.0.0.53:53".parse().unwrap())
        );
        assert_eq!(
            first_nameserver("nameserver fe80::1%eth0\n"),
            Some("[fe80::1]:53".parse().unwrap())
        );
        assert_eq!(
            first_nameserver("options edns0\nnameserver\nnameserver bogus\n"),
            None
        );
        assert_eq!(first_nameserver(""), None);
    }

    /// A query to 10.0.2.3:53 reaches the resolver (a socket of the test's on loopback) and
    /// its answer comes back from 10.0.2.3:53 to the guest's port; without a resolver, or
    /// under restrict=on, the query is dropped and counted.
    #[test]
    fn queries_go_to_the_resolver_and_answers_come_back_from_the_dns_address() {
        let resolver = UdpSocket::bind("127.0.0.1:0").unwrap();
        resolver
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let guest_mac = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let dns_ip = Ipv4Address::new(10, 0, 2, 3);
        let guest = (Ipv4Address::new(10, 0, 2, 15), 3333);
        let query = udp_frame(guest_mac, guest_mac, guest, (dns_ip, PORT), b"query");
        let mut b = UserBackend::new(UserOptions::default()).unwrap();
        b.dns.resolver = Some(resolver.local_addr().unwrap());
        b.transmit(&FrameMeta::default(), &query).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = resolver.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"query");
        resolver.send_to(b"answer", from).unwrap();
        let mut frame = vec![0u8; 65536];
        let until = Instant::now() + Duration::from_secs(1);
        let len = loop {
            b.poll();
            if let Some((n, _)) = b.receive(&mut frame).unwrap() {
                break n;
            }
            assert!(Instant::now() < until, "no answer");
            std::thread::sleep(Duration::from_millis(2));
        };
        let d = parse_udp(&frame[..len]).unwrap();
        assert_eq!((d.src_ip, d.src_port), (dns_ip, PORT));
        assert_eq!(
            (d.dst_ip, d.dst_port, d.payload),
            (guest.0, guest.1, &b"answer"[..])
        );
        assert_eq!(b.user_counters().dns.forwarded, 1);

        b.dns.resolver = None;
        b.transmit(&FrameMeta::default(), &query).unwrap();
        assert_eq!(b.user_counters().dns.no_resolver, 1);
        let on = [("restrict".to_string(), "on".to_string())];
        let mut b = UserBackend::new(UserOptions::parse(&on).unwrap()).unwrap();
        b.transmit(&FrameMeta::default(), &query).unwrap();
        assert_eq!(b.user_counters().dns.restricted, 1);
    }
}
