//! The MSI-X table and PBA.

use super::*;
use crate::devices::pci::msix::{Msix, Trigger};

/// An MSI-X table of 1..=2048 vectors (header: a size byte, or 0xff and a 16-bit size), then
/// operations: table reads and writes of any width and offset, PBA reads, message control,
/// triggers and resets. Checks the masking and pending rules after each.
pub fn msix(data: &[u8]) {
    let mut r = Reader(data);
    let n = match r.u8() {
        0xff => r.u16() % 2100,
        b => (b % 8) as u16,
    };
    let mut m = Msix::new(n);
    let vectors = m.vectors();
    assert!((1..=2048).contains(&vectors));
    let vector = |r: &mut Reader| match r.u8() {
        b if b < 0xf0 => b as u16 % (vectors + 1),
        _ => r.u16(),
    };
    let offset = |r: &mut Reader| match r.u8() % 4 {
        0 => vector(r) as u64 * 16 + 4 * (r.u8() % 4) as u64,
        1 => r.u16() as u64,
        2 => u64::MAX - r.u8() as u64,
        _ => r.u64(),
    };
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        match r.u8() % 7 {
            0 => {
                let off = offset(&mut r);
                let mut b = vec![0u8; r.width()];
                m.read_table(off, &mut b);
                if off % 16 == 12 && b.len() == 4 {
                    assert_eq!(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & !1, 0);
                }
                if off % 16 == 0 && matches!(b.len(), 4 | 8) {
                    assert_eq!(b[0] & 3, 0, "address low bits");
                }
            }
            1 => {
                let off = offset(&mut r);
                let width = r.width();
                let v = r.value(width);
                let was_pending: Vec<bool> = (0..vectors).map(|v| m.is_pending(v)).collect();
                let w = m.write_table(off, &v);
                if let Some((v, msg)) = w.deliver {
                    assert!(was_pending[v as usize] && !m.is_pending(v) && !m.is_masked(v));
                    assert_eq!(m.message(v), Some(msg));
                }
                if let Some((v, _)) = w.changed {
                    assert!(v < vectors);
                }
            }
            2 => {
                let off = offset(&mut r);
                let mut b = vec![0u8; r.width()];
                m.read_pba(off, &mut b);
                if off == 8 * ((vectors as u64 - 1) / 64) && b.len() == 8 {
                    let bits = u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
                    let used = (vectors - 1) % 64 + 1;
                    if used < 64 {
                        assert_eq!(bits >> used, 0, "PBA bits beyond the table");
                    }
                }
            }
            3 => {
                let was_pending: Vec<bool> = (0..vectors).map(|v| m.is_pending(v)).collect();
                for (v, msg) in m.set_control(r.u16()) {
                    assert!(was_pending[v as usize] && !m.is_pending(v));
                    assert_eq!(m.message(v), Some(msg));
                }
            }
            4 | 5 => {
                let v = vector(&mut r);
                let (enabled, masked) = (m.enabled(), m.is_masked(v));
                match m.trigger(v) {
                    Trigger::Deliver(msg) => {
                        assert!(enabled && !masked && v < vectors);
                        assert_eq!(m.message(v), Some(msg));
                    }
                    Trigger::Pending => assert!(enabled && masked && m.is_pending(v)),
                    Trigger::Dropped => assert!(!enabled || v >= vectors),
                }
            }
            _ => m.reset(),
        }
        assert_eq!(m.vectors(), vectors);
        if m.enabled() {
            for v in 0..vectors {
                assert!(!m.is_pending(v) || m.is_masked(v), "vector {v} stuck");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::test_util::random;

    #[test]
    fn msix_random_programs() {
        random(0x5eed_0004, 3000, 400, &[], msix);
    }
}
