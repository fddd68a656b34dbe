//! Completing a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM) for a backend that only takes
//! complete frames: the driver has put the pseudo-header sum at `csum_start + csum_offset`;
//! the Internet checksum (RFC 1071) of everything from `csum_start` to the end goes there.

/// The checksum range does not fit the frame (the frame is dropped and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadChecksumRange;

/// Check that a checksum starting at `start`, stored at `start + offset`, fits `len` bytes.
pub fn check_range(len: usize, start: u16, offset: u16) -> Result<(), BadChecksumRange> {
    let field = start as usize + offset as usize;
    if (start as usize) < len && field + 2 <= len {
        Ok(())
    } else {
        Err(BadChecksumRange)
    }
}

/// The one's-complement sum of `data` as 16-bit big-endian words (odd tail padded), unfolded.
fn sum(data: &[u8]) -> u64 {
    let (words, tail) = data.as_chunks::<2>();
    let mut s: u64 = words.iter().map(|&w| u16::from_be_bytes(w) as u64).sum();
    if let [last] = tail {
        s += (*last as u64) << 8;
    }
    s
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Finish the checksum in place.
pub fn complete(frame: &mut [u8], start: u16, offset: u16) -> Result<(), BadChecksumRange> {
    check_range(frame.len(), start, offset)?;
    let at = start as usize + offset as usize;
    let c = !fold(sum(&frame[start as usize..]));
    // 0 becomes 0xffff (the same value in one's complement): for UDP a 0 would mean "no
    // checksum" (Linux's skb_checksum_help does the same).
    let c = if c == 0 { 0xffff } else { c };
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// The checksum of `data` is valid (sums to 0xffff), for tests.
pub fn verifies(data: &[u8]) -> bool {
    fold(sum(data)) == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4/UDP frame whose checksum field holds the pseudo-header sum, as a driver leaves
    /// it with NEEDS_CSUM (csum_start 34, csum_offset 6).
    fn partial_udp(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&[192, 168, 76, 2]);
        ip[16..20].copy_from_slice(&[192, 168, 76, 1]);
        let udp_len = (8 + payload.len()) as u16;
        f[34..36].copy_from_slice(&4000u16.to_be_bytes());
        f[36..38].copy_from_slice(&7u16.to_be_bytes());
        f[38..40].copy_from_slice(&udp_len.to_be_bytes());
        f.extend_from_slice(payload);
        // Pseudo header: addresses, protocol, UDP length; not complemented.
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[26..34]);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&udp_len.to_be_bytes());
        let p = fold(sum(&pseudo));
        f[40..42].copy_from_slice(&p.to_be_bytes());
        f
    }

    #[test]
    fn completes_a_udp_checksum() {
        for payload in [&b"hello"[..], b"even", b""] {
            let mut f = partial_udp(payload);
            complete(&mut f, 34, 6).unwrap();
            // Verify: pseudo header + UDP segment sums to all ones.
            let mut all = Vec::new();
            all.extend_from_slice(&f[26..34]);
            all.extend_from_slice(&[0, 17]);
            all.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            all.extend_from_slice(&f[34..]);
            assert!(verifies(&all), "{payload:?}");
        }
    }

    #[test]
    fn ranges_outside_the_frame_are_refused() {
        let mut f = vec![0u8; 60];
        assert_eq!(complete(&mut f, 60, 0), Err(BadChecksumRange));
        assert_eq!(complete(&mut f, 34, 25), Err(BadChecksumRange));
        assert_eq!(complete(&mut f, u16::MAX, u16::MAX), Err(BadChecksumRange));
        assert!(complete(&mut f, 34, 24).is_ok());
    }
}
