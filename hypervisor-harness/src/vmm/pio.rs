//! One KVM_EXIT_IO turned into bus calls, as a pure function of (port, size, data).
//!
//! KVM reports a port access as `count` elements of `size` bytes (1, 2 or 4) in one data area:
//! `count` is 1 for `in`/`out` and the repeat count for `rep ins`/`rep outs`. Each element is
//! one access of `size` bytes at the same port, so a 4-byte `rep insb` is four one-byte reads,
//! never one four-byte read. `size` and the data length come from KVM (and through it from the
//! guest), so nothing here trusts them: an element size other than 1, 2 or 4 makes no access
//! at all (an `in` then reads all-ones), and a trailing partial element is not an access.

use crate::devices::bus::{Bus, Claim};

/// The element size of an I/O exit, if it is one an x86 port access can have.
fn element_size(size: u8) -> Option<usize> {
    matches!(size, 1 | 2 | 4).then_some(size as usize)
}

/// An `out` or `rep outs`: `data` is `count * size` bytes, one write per element. Returns the
/// claim of the first access (`Unclaimed` if none was made), for the exit counters.
pub fn write(bus: &mut Bus, port: u16, size: u8, data: &[u8]) -> Claim {
    let Some(size) = element_size(size) else {
        return Claim::Unclaimed;
    };
    let mut claim = None;
    for element in data.chunks_exact(size) {
        let c = bus.write(port as u64, element);
        claim.get_or_insert(c);
    }
    claim.unwrap_or(Claim::Unclaimed)
}

/// An `in` or `rep ins`: fills `data` (`count * size` bytes) with one read per element.
/// Bytes that belong to no whole element read 0xff.
pub fn read(bus: &mut Bus, port: u16, size: u8, data: &mut [u8]) -> Claim {
    let Some(size) = element_size(size) else {
        data.fill(0xff);
        return Claim::Unclaimed;
    };
    let mut claim = None;
    let mut elements = data.chunks_exact_mut(size);
    for element in &mut elements {
        let c = bus.read(port as u64, element);
        claim.get_or_insert(c);
    }
    elements.into_remainder().fill(0xff);
    claim.unwrap_or(Claim::Unclaimed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::BusDevice;
    use std::sync::{Arc, Mutex};

    /// Records every access's width; reads return a running byte counter.
    #[derive(Default)]
    struct Log {
        reads: Vec<usize>,
        writes: Vec<Vec<u8>>,
        next: u8,
    }

    impl BusDevice for Log {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            self.reads.push(data.len());
            for b in data {
                self.next += 1;
                *b = self.next;
            }
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.writes.push(data.to_vec());
        }
    }

    fn rig() -> (Bus, Arc<Mutex<Log>>) {
        let mut bus = Bus::new();
        let log = Arc::new(Mutex::new(Log::default()));
        bus.insert("log", 0x1f0, 8, log.clone()).unwrap();
        (bus, log)
    }

    #[test]
    fn rep_insb_of_four_is_four_byte_reads() {
        let (mut bus, log) = rig();
        let mut data = [0u8; 4];
        let claim = read(&mut bus, 0x1f0, 1, &mut data);
        assert!(matches!(claim, Claim::Device { .. }));
        assert_eq!(log.lock().unwrap().reads, [1, 1, 1, 1]);
        assert_eq!(data, [1, 2, 3, 4]);
        // A plain 4-byte `in` stays one access.
        let (mut bus, log) = rig();
        read(&mut bus, 0x1f0, 4, &mut data);
        assert_eq!(log.lock().unwrap().reads, [4]);
        // rep insw of three words: three 2-byte reads.
        let (mut bus, log) = rig();
        let mut six = [0u8; 6];
        read(&mut bus, 0x1f0, 2, &mut six);
        assert_eq!(log.lock().unwrap().reads, [2, 2, 2]);
    }

    #[test]
    fn rep_outs_is_split_into_elements() {
        let (mut bus, log) = rig();
        write(&mut bus, 0x1f0, 1, &[1, 2, 3, 4]);
        assert_eq!(
            log.lock().unwrap().writes,
            [vec![1], vec![2], vec![3], vec![4]]
        );
        let (mut bus, log) = rig();
        write(&mut bus, 0x1f0, 2, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            log.lock().unwrap().writes,
            [vec![1, 2], vec![3, 4], vec![5, 6], vec![7, 8]]
        );
    }

    #[test]
    fn odd_sizes_and_lengths_never_panic() {
        let (mut bus, log) = rig();
        for size in [0u8, 3, 8, 255] {
            let mut d = [0u8; 5];
            assert_eq!(read(&mut bus, 0x1f0, size, &mut d), Claim::Unclaimed);
            assert_eq!(d, [0xff; 5]);
            assert_eq!(write(&mut bus, 0x1f0, size, &[1; 5]), Claim::Unclaimed);
        }
        assert!(log.lock().unwrap().reads.is_empty());
        // A trailing partial element is no access and reads ones.
        let mut d = [0u8; 5];
        read(&mut bus, 0x1f0, 2, &mut d);
        assert_eq!(log.lock().unwrap().reads, [2, 2]);
        assert_eq!(d[4], 0xff);
        write(&mut bus, 0x1f0, 4, &[1, 2, 3]);
        assert!(log.lock().unwrap().writes.is_empty());
        // Empty data: nothing, unclaimed.
        assert_eq!(read(&mut bus, 0x1f0, 1, &mut []), Claim::Unclaimed);
        // Unclaimed ports read ones per element.
        let mut d = [0u8; 2];
        assert_eq!(read(&mut bus, 0xffff, 1, &mut d), Claim::Unclaimed);
        assert_eq!(d, [0xff; 2]);
    }
}
