//! The Internet checksum (RFC 1071) and the TCP/UDP-over-IPv4 pieces a NIC driver needs for
//! checksum offload: preparing a frame whose L4 checksum the device finishes
//! ([`prepare_partial_checksum`]), finishing one the device left partial
//! ([`complete_partial_checksum`]), and checking one ([`verify_l4_checksum`]).
//!
//! Frames are Ethernet II (no VLAN tag) carrying IPv4; anything else is "not for us" (`None`).

use super::TxChecksum;

/// Bytes of an Ethernet II header.
pub const ETH_HEADER_LEN: usize = 14;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// IPv4 protocol numbers.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// Where the checksum field sits in a TCP and a UDP header.
pub const TCP_CHECKSUM_OFFSET: u16 = 16;
pub const UDP_CHECKSUM_OFFSET: u16 = 6;

/// The 32-bit one's-complement accumulation of `data` as big-endian 16-bit words (an odd last
/// byte is padded with zero), added to `initial`. Fold with [`fold`].
pub fn sum_words(data: &[u8], initial: u32) -> u32 {
    let mut sum = u64::from(initial);
    let (words, rest) = data.as_chunks::<2>();
    for w in words {
        sum += u64::from(u16::from_be_bytes(*w));
    }
    if let [last] = rest {
        sum += u64::from(*last) << 8;
    }
    // Fold the carries so the running sum fits 32 bits again (a u64 cannot overflow here: a
    // frame has far fewer than 2^48 words).
    while sum >> 32 != 0 {
        sum = (sum & 0xFFFF_FFFF) + (sum >> 32);
    }
    sum as u32
}

/// Fold a 32-bit accumulation into 16 bits (end-around carry), not complemented.
pub fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum of `data`: the complement of its folded one's-complement sum.
pub fn internet_checksum(data: &[u8]) -> u16 {
    !fold(sum_words(data, 0))
}

/// What [`parse_ipv4_l4`] found in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4L4 {
    /// Offset of the TCP/UDP header in the frame.
    pub l4_start: usize,
    /// Bytes of the L4 header and payload (IPv4 total length minus its header).
    pub l4_len: usize,
    /// [`IPPROTO_TCP`] or [`IPPROTO_UDP`].
    pub protocol: u8,
    /// Offset of the checksum field inside the L4 header.
    pub checksum_offset: u16,
    /// The one's-complement sum of the pseudo-header (addresses, protocol, L4 length).
    pub pseudo_sum: u32,
}

/// Find the TCP or UDP segment of an Ethernet + IPv4 frame: `None` for other EtherTypes or
/// protocols, fragments (only a whole datagram has a checksum to compute), and headers that
/// do not fit the frame or contradict each other.
pub fn parse_ipv4_l4(frame: &[u8]) -> Option<Ipv4L4> {
    let ip = frame.get(ETH_HEADER_LEN..)?;
    if u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_IPV4 || ip.len() < 20 {
        return None;
    }
    let (version, ihl) = (ip[0] >> 4, usize::from(ip[0] & 0xF) * 4);
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let fragment = u16::from_be_bytes([ip[6], ip[7]]);
    // More-fragments flag, or a fragment offset.
    if version != 4 || ihl < 20 || total < ihl || total > ip.len() || fragment & 0x3FFF != 0 {
        return None;
    }
    let protocol = ip[9];
    let (checksum_offset, min_header) = match protocol {
        IPPROTO_TCP => (TCP_CHECKSUM_OFFSET, 20),
        IPPROTO_UDP => (UDP_CHECKSUM_OFFSET, 8),
        _ => return None,
    };
    let l4_len = total - ihl;
    if l4_len < min_header {
        return None;
    }
    let mut pseudo = sum_words(&ip[12..20], 0);
    pseudo = sum_words(&[0, protocol], pseudo);
    pseudo = sum_words(&(l4_len as u16).to_be_bytes(), pseudo);
    Some(Ipv4L4 {
        l4_start: ETH_HEADER_LEN + ihl,
        l4_len,
        protocol,
        checksum_offset,
        pseudo_sum: pseudo,
    })
}

/// Make `frame` (Ethernet + IPv4 + TCP/UDP) ready for a device that finishes its L4 checksum:
/// write the folded pseudo-header sum into the checksum field and say where the device must
/// sum from and store ([`TxChecksum::Partial`]). `None` (the frame untouched) when the frame is
/// not such a segment, or its IP total length does not reach the end of the frame (the device
/// sums to the end, so padding after the datagram would be summed too).
pub fn prepare_partial_checksum(frame: &mut [u8]) -> Option<TxChecksum> {
    let l4 = parse_ipv4_l4(frame)?;
    if l4.l4_start + l4.l4_len != frame.len() {
        return None;
    }
    let at = l4.l4_start + usize::from(l4.checksum_offset);
    frame[at..at + 2].copy_from_slice(&fold(l4.pseudo_sum).to_be_bytes());
    Some(TxChecksum::Partial {
        start: l4.l4_start as u16,
        offset: l4.checksum_offset,
    })
}

/// Finish a checksum left partial (virtio's NEEDS_CSUM): sum `frame[start..]`, whose field at
/// `start + offset` holds the pseudo-header sum, and store the complement there. `false` (the
/// frame untouched) if the field is not inside the frame.
pub fn complete_partial_checksum(frame: &mut [u8], start: usize, offset: usize) -> bool {
    let Some(at) = start.checked_add(offset) else {
        return false;
    };
    if at.checked_add(2).is_none_or(|end| end > frame.len()) {
        return false;
    }
    let checksum = !fold(sum_words(&frame[start..], 0));
    frame[at..at + 2].copy_from_slice(&checksum.to_be_bytes());
    true
}

/// Check the TCP/UDP checksum of an Ethernet + IPv4 frame: `Some(true)` if it is right (or a
/// UDP datagram without one, checksum 0), `Some(false)` if wrong, `None` if the frame is not a
/// whole TCP/UDP-over-IPv4 segment.
pub fn verify_l4_checksum(frame: &[u8]) -> Option<bool> {
    let l4 = parse_ipv4_l4(frame)?;
    let segment = &frame[l4.l4_start..l4.l4_start + l4.l4_len];
    let field = usize::from(l4.checksum_offset);
    if l4.protocol == IPPROTO_UDP && segment[field..field + 2] == [0, 0] {
        return Some(true);
    }
    Some(fold(sum_words(segment, l4.pseudo_sum)) == 0xFFFF)
}

/// Check the IPv4 header checksum of an Ethernet + IPv4 frame (`None`: not IPv4, or too short).
pub fn verify_ipv4_header(frame: &[u8]) -> Option<bool> {
    let ip = frame.get(ETH_HEADER_LEN..)?;
    if u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]) != ETHERTYPE_IPV4 {
        return None;
    }
    let ihl = usize::from(*ip.first()? & 0xF) * 4;
    let header = ip.get(..ihl).filter(|_| ihl >= 20)?;
    Some(fold(sum_words(header, 0)) == 0xFFFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// RFC 1071 §3's example: words 0001 f203 f4f5 f6f7 sum to ddf2 (carries folded), so the
    /// checksum is 220d.
    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum_words(&data, 0)), 0xddf2);
        assert_eq!(internet_checksum(&data), 0x220d);
        // An odd length pads with a zero byte: 0001 f200 -> f201 -> 0dfe.
        assert_eq!(internet_checksum(&[0x00, 0x01, 0xf2]), 0x0dfe);
        // Summing in pieces (even-length pieces) is the same as at once.
        assert_eq!(
            fold(sum_words(&data[4..], sum_words(&data[..4], 0))),
            0xddf2
        );
    }

    /// A frame from 192.168.76.2:40000 to 192.168.76.1:7, UDP payload "hi!" (by hand:
    /// pseudo-header c0a8+4c02+c0a8+4c01+0011+000b = 0x2196f -> 0x1971; with the UDP header
    /// 9c40+0007+000b and the payload 6869+2100 (odd byte padded): 0x33f2a -> 0x3f2d, checksum
    /// 0xc0d2). IPv4 header: 4500+001f+0001+0000+4011+addresses = 0x29e84 -> 0x9e86, checksum
    /// 0x6179.
    fn udp_frame() -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[0x02, 0, 0, 0x76, 0, 1]); // dst MAC
        f.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]); // src MAC
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[
            0x45, 0x00, 0x00, 0x1f, // version/IHL, TOS, total length 31
            0x00, 0x01, 0x00, 0x00, // id 1, no fragmentation
            0x40, 0x11, 0x61, 0x79, // TTL 64, UDP, header checksum
            192, 168, 76, 2, 192, 168, 76, 1,
        ]);
        f.extend_from_slice(&[0x9c, 0x40, 0x00, 0x07, 0x00, 0x0b, 0xc0, 0xd2]);
        f.extend_from_slice(b"hi!");
        f
    }

    /// A TCP SYN from 10.0.0.1:1234 to 10.0.0.2:80, seq 1, window 0x7210, no options
    /// (by hand: pseudo 0a00+0001+0a00+0002+0006+0014 = 0x141d; header 04d2+0050+0000+0001
    /// +0000+0000+5002+7210 = 0xc735; total 0xdb52, checksum 0x24ad).
    fn tcp_frame() -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[
            0x45, 0, 0, 40, 0, 0, 0x40, 0, 0x40, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ]);
        f.extend_from_slice(&[
            0x04, 0xd2, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0x72, 0x10, 0x24, 0xad, 0,
            0,
        ]);
        f
    }

    #[test]
    fn known_packets_verify() {
        let udp = udp_frame();
        assert_eq!(verify_ipv4_header(&udp), Some(true));
        assert_eq!(verify_l4_checksum(&udp), Some(true));
        assert_eq!(verify_l4_checksum(&tcp_frame()), Some(true));
        let mut bad = udp.clone();
        bad[udp.len() - 1] ^= 1;
        assert_eq!(verify_l4_checksum(&bad), Some(false));
        let mut bad = tcp_frame();
        bad[14 + 20 + 4] ^= 0x80; // sequence number
        assert_eq!(verify_l4_checksum(&bad), Some(false));
        // UDP without a checksum is fine.
        let mut none = udp.clone();
        none[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
        assert_eq!(verify_l4_checksum(&none), Some(true));
    }

    #[test]
    fn prepare_then_complete_gives_the_known_checksum() {
        for (frame, start, offset, want) in [
            (udp_frame(), 34u16, 6u16, 0xc0d2u16),
            (tcp_frame(), 34, 16, 0x24ad),
        ] {
            let mut f = frame.clone();
            f[usize::from(start + offset)..][..2].copy_from_slice(&[0xAA, 0x55]); // garbage
            assert_eq!(
                prepare_partial_checksum(&mut f),
                Some(TxChecksum::Partial { start, offset })
            );
            let at = usize::from(start + offset);
            // The field now holds the folded pseudo-header sum (hand-computed above).
            let pseudo = u16::from_be_bytes([f[at], f[at + 1]]);
            assert_eq!(pseudo, if offset == 6 { 0x1971 } else { 0x141d });
            assert!(complete_partial_checksum(
                &mut f,
                start.into(),
                offset.into()
            ));
            assert_eq!(u16::from_be_bytes([f[at], f[at + 1]]), want);
            assert_eq!(f, frame);
        }
    }

    #[test]
    fn not_for_offload() {
        // ARP.
        let mut arp = udp_frame();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(prepare_partial_checksum(&mut arp), None);
        // ICMP.
        let mut icmp = udp_frame();
        icmp[14 + 9] = 1;
        assert_eq!(prepare_partial_checksum(&mut icmp), None);
        // A fragment (MF set).
        let mut frag = udp_frame();
        frag[14 + 6] = 0x20;
        assert_eq!(prepare_partial_checksum(&mut frag), None);
        // Total length past the frame, or padding after the datagram.
        let mut short = udp_frame();
        short.pop();
        assert_eq!(prepare_partial_checksum(&mut short), None);
        let mut padded = udp_frame();
        padded.resize(60, 0);
        assert_eq!(prepare_partial_checksum(&mut padded), None);
        assert_eq!(
            verify_l4_checksum(&padded),
            Some(true),
            "padding is not summed"
        );
        // Too short to hold anything.
        assert_eq!(prepare_partial_checksum(&mut [0u8; 13]), None);
        assert_eq!(verify_ipv4_header(&[0u8; 10]), None);
    }

    #[test]
    fn complete_refuses_fields_outside_the_frame() {
        let mut f = [0u8; 40];
        assert!(!complete_partial_checksum(&mut f, 34, 6));
        assert!(!complete_partial_checksum(&mut f, usize::MAX, 2));
        assert!(!complete_partial_checksum(&mut f, 2, usize::MAX));
        assert_eq!(f, [0u8; 40]);
        assert!(complete_partial_checksum(&mut f, 34, 4));
        assert_eq!(&f[38..40], &[0xFF, 0xFF], "sum 0 complements to ffff");
    }
}
