//! The user network's DHCP server (RFC 2131), as QEMU's slirp behaves: one lease per client
//! MAC from a pool of [`POOL_SIZE`] addresses starting at `dhcpstart`, the host alias as
//! router and server identifier, the DNS address as the name server. Replies go to the
//! client's MAC and the limited broadcast address (the client has no address yet). Under
//! `restrict=on` the lease names neither router nor name server, as slirp's does.

use super::frame::{parse_udp, udp_frame, UdpDatagram};
use super::options::UserOptions;
use smoltcp::wire::{
    DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress, Ipv4Address,
};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
/// Addresses in the pool (slirp's NB_BOOTP_CLIENTS).
pub const POOL_SIZE: usize = 16;
/// Lease time offered, seconds (slirp's LEASE_TIME: a day).
pub const LEASE_SECONDS: u32 = 24 * 3600;
const OPT_DNS: u8 = 6;
/// The BOOTP header's `file` field (128 bytes), where slirp names `bootfile=`.
const FILE_FIELD: std::ops::Range<usize> = 108..236;

/// What the server did, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DhcpCounters {
    pub offers: u64,
    pub acks: u64,
    pub naks: u64,
    /// Requests that could not be served: malformed, or the pool is full.
    pub ignored: u64,
}

pub struct DhcpServer {
    server: Ipv4Address,
    mask: Ipv4Address,
    dns: Ipv4Address,
    bootfile: Option<String>,
    restrict: bool,
    pool_start: u32,
    /// The MAC holding each pool address.
    leases: [Option<EthernetAddress>; POOL_SIZE],
    server_mac: EthernetAddress,
    pub counters: DhcpCounters,
}

impl DhcpServer {
    pub fn new(opts: &UserOptions, server_mac: EthernetAddress) -> Self {
        Self {
            server: opts.host,
            mask: opts.mask(),
            dns: opts.dns,
            bootfile: opts.bootfile.clone(),
            restrict: opts.restrict,
            pool_start: u32::from(opts.dhcp_start),
            leases: [None; POOL_SIZE],
            server_mac,
            counters: DhcpCounters::default(),
        }
    }

    /// The client's address: its lease, else the first free pool address inside the
    /// network, if any.
    fn lease_for(&mut self, mac: EthernetAddress) -> Option<Ipv4Address> {
        let i = match self.leases.iter().position(|l| *l == Some(mac)) {
            Some(i) => i,
            None => {
                let i = self.leases.iter().position(Option::is_none)?;
                self.leases[i] = Some(mac);
                i
            }
        };
        Some(Ipv4Address::from(self.pool_start + i as u32))
    }

    /// A frame from the guest: if it is a DHCP request for this server, the reply frame.
    pub fn handle(&mut self, frame: &[u8]) -> Option<Vec<u8>> {
        let UdpDatagram {
            src_mac,
            dst_port,
            payload,
            ..
        } = parse_udp(frame)?;
        if dst_port != SERVER_PORT {
            return None;
        }
        let reply = self.reply(payload);
        if reply.is_none() {
            self.counters.ignored += 1;
        }
        let (repr, lease) = reply?;
        let mut options = [0u8; 4];
        options.copy_from_slice(&self.dns.octets());
        let dns = [DhcpOption {
            kind: OPT_DNS,
            data: &options,
        }];
        let repr = DhcpRepr {
            additional_options: if lease && !self.restrict { &dns } else { &[] },
            ..repr
        };
        let mut payload = vec![0u8; repr.buffer_len()];
        repr.emit(&mut DhcpPacket::new_unchecked(&mut payload[..]))
            .ok()?;
        if let Some(name) = &self.bootfile {
            // Options checked its length: at most 127 bytes, so the field ends in a NUL.
            payload[FILE_FIELD][..name.len()].copy_from_slice(name.as_bytes());
        }
        Some(udp_frame(
            self.server_mac,
            src_mac,
            (self.server, SERVER_PORT),
            (Ipv4Address::BROADCAST, CLIENT_PORT),
            &payload,
        ))
    }

    /// The reply's fields, and whether it carries a lease's options.
    fn reply(&mut self, payload: &[u8]) -> Option<(DhcpRepr<'static>, bool)> {
        let packet = DhcpPacket::new_checked(payload).ok()?;
        let req = DhcpRepr::parse(&packet).ok()?;
        let mac = req.client_hardware_address;
        let (message_type, your_ip) = match req.message_type {
            DhcpMessageType::Discover => (DhcpMessageType::Offer, self.lease_for(mac)?),
            DhcpMessageType::Request => {
                if req.server_identifier.is_some_and(|s| s != self.server) {
                    return None; // the client took another server's offer
                }
                let lease = self.lease_for(mac)?;
                let asked = req
                    .requested_ip
                    .or((!req.client_ip.is_unspecified()).then_some(req.client_ip));
                if asked.is_some_and(|a| a != lease) {
                    (DhcpMessageType::Nak, Ipv4Address::UNSPECIFIED)
                } else {
                    (DhcpMessageType::Ack, lease)
                }
            }
            _ => return None,
        };
        let lease = message_type != DhcpMessageType::Nak;
        match message_type {
            DhcpMessageType::Offer => self.counters.offers += 1,
            DhcpMessageType::Ack => self.counters.acks += 1,
            _ => self.counters.naks += 1,
        }
        Some((
            DhcpRepr {
                message_type,
                transaction_id: req.transaction_id,
                secs: 0,
                client_hardware_address: mac,
                client_ip: Ipv4Address::UNSPECIFIED,
                your_ip,
                server_ip: self.server,
                router: (lease && !self.restrict).then_some(self.server),
                subnet_mask: lease.then_some(self.mask),
                relay_agent_ip: Ipv4Address::UNSPECIFIED,
                broadcast: req.broadcast,
                requested_ip: None,
                client_identifier: None,
                server_identifier: Some(self.server),
                parameter_request_list: None,
                dns_servers: None,
                max_size: None,
                lease_duration: lease.then_some(LEASE_SECONDS),
                renew_duration: None,
                rebind_duration: None,
                additional_options: &[],
            },
            lease,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    const SERVER_MAC: EthernetAddress = EthernetAddress([0x52, 0x55, 10, 0, 2, 2]);

    fn request(kind: DhcpMessageType, mac: EthernetAddress, asked: Option<Ipv4Address>) -> Vec<u8> {
        let repr = DhcpRepr {
            message_type: kind,
            transaction_id: 0x1234,
            secs: 0,
            client_hardware_address: mac,
            client_ip: Ipv4Address::UNSPECIFIED,
            your_ip: Ipv4Address::UNSPECIFIED,
            server_ip: Ipv4Address::UNSPECIFIED,
            router: None,
            subnet_mask: None,
            relay_agent_ip: Ipv4Address::UNSPECIFIED,
            broadcast: false,
            requested_ip: asked,
            client_identifier: Some(mac),
            server_identifier: None,
            parameter_request_list: Some(&[1, 3, 6]),
            dns_servers: None,
            max_size: None,
            lease_duration: None,
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        };
        let mut payload = vec![0u8; repr.buffer_len()];
        repr.emit(&mut DhcpPacket::new_unchecked(&mut payload[..]))
            .unwrap();
        udp_frame(
            mac,
            EthernetAddress::BROADCAST,
            (Ipv4Address::UNSPECIFIED, CLIENT_PORT),
            (Ipv4Address::BROADCAST, SERVER_PORT),
            &payload,
        )
    }

    fn answer(server: &mut DhcpServer, frame: &[u8]) -> (DhcpMessageType, Ipv4Address, Vec<u8>) {
        let reply = server.handle(frame).expect("a reply");
        let d = parse_udp(&reply).unwrap();
        let asker = parse_udp(frame).unwrap().src_mac;
        assert_eq!((d.src_port, d.dst_port, d.dst_mac), (67, 68, asker));
        let p = DhcpPacket::new_checked(d.payload).unwrap();
        let r = DhcpRepr::parse(&p).unwrap();
        let dns = p
            .options()
            .find(|o| o.kind == OPT_DNS)
            .map(|o| o.data.to_vec())
            .unwrap_or_default();
        if r.message_type != DhcpMessageType::Nak {
            assert_eq!(r.router, Some(Ipv4Address::new(10, 0, 2, 2)));
            assert_eq!(r.subnet_mask, Some(Ipv4Address::new(255, 255, 255, 0)));
        }
        (r.message_type, r.your_ip, dns)
    }

    #[test]
    fn discover_request_ack_from_dhcpstart() {
        let mut s = DhcpServer::new(&UserOptions::default(), SERVER_MAC);
        let (kind, ip, dns) = answer(&mut s, &request(DhcpMessageType::Discover, CLIENT, None));
        assert_eq!(
            (kind, ip),
            (DhcpMessageType::Offer, Ipv4Address::new(10, 0, 2, 15))
        );
        assert_eq!(dns, [10, 0, 2, 3]);
        let (kind, ip, _) = answer(&mut s, &request(DhcpMessageType::Request, CLIENT, Some(ip)));
        assert_eq!(
            (kind, ip),
            (DhcpMessageType::Ack, Ipv4Address::new(10, 0, 2, 15))
        );
        // Another MAC gets the next address; a wrong request is refused.
        let other = EthernetAddress([2, 0, 0, 0, 0, 9]);
        let (_, ip, _) = answer(&mut s, &request(DhcpMessageType::Discover, other, None));
        assert_eq!(ip, Ipv4Address::new(10, 0, 2, 16));
        let wrong = Some(Ipv4Address::new(10, 0, 2, 15));
        let (kind, _, _) = answer(&mut s, &request(DhcpMessageType::Request, other, wrong));
        assert_eq!(kind, DhcpMessageType::Nak);
        assert_eq!(
            (s.counters.offers, s.counters.acks, s.counters.naks),
            (2, 1, 1)
        );
    }

    #[test]
    fn pool_runs_out() {
        let mut s = DhcpServer::new(&UserOptions::default(), SERVER_MAC);
        for i in 0..POOL_SIZE as u8 {
            let mac = EthernetAddress([2, 0, 0, 0, 1, i]);
            assert!(s
                .handle(&request(DhcpMessageType::Discover, mac, None))
                .is_some());
        }
        let late = EthernetAddress([2, 0, 0, 0, 2, 0]);
        assert!(s
            .handle(&request(DhcpMessageType::Discover, late, None))
            .is_none());
        assert_eq!(s.counters.ignored, 1);
        // Not DHCP at all: not ours, not counted.
        assert!(s.handle(&[0u8; 60]).is_none());
        assert_eq!(s.counters.ignored, 1);
    }

    #[test]
    fn bootfile_is_in_the_offers_file_field() {
        let pairs = [("bootfile".to_string(), "boot/pxe.0".to_string())];
        let mut s = DhcpServer::new(&UserOptions::parse(&pairs).unwrap(), SERVER_MAC);
        let reply = s
            .handle(&request(DhcpMessageType::Discover, CLIENT, None))
            .unwrap();
        let file = &parse_udp(&reply).unwrap().payload[FILE_FIELD];
        assert_eq!(&file[..10], b"boot/pxe.0");
        assert!(file[10..].iter().all(|&b| b == 0));
        // Without it the field stays empty.
        let mut s = DhcpServer::new(&UserOptions::default(), SERVER_MAC);
        let reply = s
            .handle(&request(DhcpMessageType::Discover, CLIENT, None))
            .unwrap();
        assert!(parse_udp(&reply).unwrap().payload[FILE_FIELD]
            .iter()
            .all(|&b| b == 0));
    }
}
