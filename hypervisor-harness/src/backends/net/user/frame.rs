//! Ethernet/IPv4/UDP frames built and taken apart by hand, for what the user network answers
//! outside smoltcp's sockets (DHCP from a client without an address, proxied UDP).

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Address, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
};

/// A UDP datagram in an IPv4 Ethernet frame, checksums checked.
#[derive(Debug)]
pub struct UdpDatagram<'a> {
    pub src_mac: EthernetAddress,
    pub dst_mac: EthernetAddress,
    pub src_ip: Ipv4Address,
    pub dst_ip: Ipv4Address,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: &'a [u8],
}

/// The frame's UDP datagram, or `None` for anything else (or a malformed one).
pub fn parse_udp(frame: &[u8]) -> Option<UdpDatagram<'_>> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let caps = ChecksumCapabilities::default();
    let ip_bytes = &frame[EthernetFrame::<&[u8]>::header_len()..];
    let ip = Ipv4Packet::new_checked(ip_bytes).ok()?;
    let ip_repr = Ipv4Repr::parse(&ip, &caps).ok()?;
    if ip_repr.next_header != IpProtocol::Udp {
        return None;
    }
    let header_len = usize::from(ip.header_len());
    let udp_bytes = &ip_bytes[header_len..header_len + ip_repr.payload_len];
    let udp = UdpPacket::new_checked(udp_bytes).ok()?;
    let (src, dst) = (ip_repr.src_addr.into(), ip_repr.dst_addr.into());
    let repr = UdpRepr::parse(&udp, &src, &dst, &caps).ok()?;
    Some(UdpDatagram {
        src_mac: eth.src_addr(),
        dst_mac: eth.dst_addr(),
        src_ip: ip_repr.src_addr,
        dst_ip: ip_repr.dst_addr,
        src_port: repr.src_port,
        dst_port: repr.dst_port,
        payload: &udp_bytes[8..],
    })
}

/// A complete frame carrying `payload` from `src` to `dst` (address, port).
pub fn udp_frame(
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    src: (Ipv4Address, u16),
    dst: (Ipv4Address, u16),
    payload: &[u8],
) -> Vec<u8> {
    let udp = UdpRepr {
        src_port: src.1,
        dst_port: dst.1,
    };
    let ip = Ipv4Repr {
        src_addr: src.0,
        dst_addr: dst.0,
        next_header: IpProtocol::Udp,
        payload_len: udp.header_len() + payload.len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: src_mac,
        dst_addr: dst_mac,
        ethertype: EthernetProtocol::Ipv4,
    };
    let caps = ChecksumCapabilities::default();
    let mut frame = vec![0u8; eth.buffer_len() + ip.buffer_len() + ip.payload_len];
    let mut f = EthernetFrame::new_unchecked(&mut frame[..]);
    eth.emit(&mut f);
    let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
    ip.emit(&mut p, &caps);
    udp.emit(
        &mut UdpPacket::new_unchecked(p.payload_mut()),
        &IpAddress::Ipv4(src.0),
        &IpAddress::Ipv4(dst.0),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &caps,
    );
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let a = EthernetAddress([2, 0, 0, 0, 0, 1]);
        let b = EthernetAddress([2, 0, 0, 0, 0, 2]);
        let f = udp_frame(
            a,
            b,
            (Ipv4Address::new(10, 0, 2, 2), 53),
            (Ipv4Address::new(10, 0, 2, 15), 4000),
            b"hello",
        );
        let d = parse_udp(&f).unwrap();
        assert_eq!(
            (d.src_mac, d.dst_mac, d.src_port, d.dst_port),
            (a, b, 53, 4000)
        );
        assert_eq!(d.dst_ip, Ipv4Address::new(10, 0, 2, 15));
        assert_eq!(d.payload, b"hello");
        let mut bad = f.clone();
        *bad.last_mut().unwrap() ^= 1; // the UDP checksum no longer matches
        assert!(parse_udp(&bad).is_none());
        assert!(parse_udp(&f[..30]).is_none());
    }
}
