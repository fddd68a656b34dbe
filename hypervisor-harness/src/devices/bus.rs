//! A bus: a range map from addresses to devices. One instance for port I/O, one for MMIO.

use super::lock;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// A device on a bus. `offset` is relative to the start of the range it was inserted at.
/// Implementations must accept any offset and any slice length without panicking.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Debug, PartialEq, Eq)]
pub enum BusError {
    ZeroLength {
        name: String,
    },
    Overflow {
        name: String,
    },
    Overlap {
        name: String,
        base: u64,
        len: u64,
        other: String,
    },
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusError::ZeroLength { name } => write!(f, "device {name}: zero-length range"),
            BusError::Overflow { name } => write!(f, "device {name}: range wraps around"),
            BusError::Overlap {
                name,
                base,
                len,
                other,
            } => write!(
                f,
                "device {name} at {base:#x}+{len:#x} overlaps device {other}"
            ),
        }
    }
}

impl std::error::Error for BusError {}

#[derive(Clone)]
pub struct BusRange {
    pub base: u64,
    pub len: u64,
    pub name: Arc<str>,
    device: SharedDevice,
}

/// Outcome of one access: which device (if any) took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    Device { name: Arc<str>, base: u64 },
    Unclaimed,
}

#[derive(Default)]
pub struct Bus {
    map: BTreeMap<u64, BusRange>,
    pub unclaimed_reads: u64,
    pub unclaimed_writes: u64,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(
        &mut self,
        name: &str,
        base: u64,
        len: u64,
        device: SharedDevice,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength { name: name.into() });
        }
        let last = base
            .checked_add(len - 1)
            .ok_or(BusError::Overflow { name: name.into() })?;
        // The nearest range starting at or below `last` is the only one that can overlap.
        if let Some((_, r)) = self.map.range(..=last).next_back() {
            if r.base + (r.len - 1) >= base {
                return Err(BusError::Overlap {
                    name: name.into(),
                    base,
                    len,
                    other: r.name.to_string(),
                });
            }
        }
        self.map.insert(
            base,
            BusRange {
                base,
                len,
                name: name.into(),
                device,
            },
        );
        Ok(())
    }

    /// The range containing the whole access `[addr, addr + size)`, if any.
    pub fn find(&self, addr: u64, size: usize) -> Option<&BusRange> {
        let (_, r) = self.map.range(..=addr).next_back()?;
        let off = addr - r.base;
        let end = off.checked_add(size.max(1) as u64)?;
        (end <= r.len).then_some(r)
    }

    pub fn ranges(&self) -> impl Iterator<Item = &BusRange> {
        self.map.values()
    }

    pub fn read(&mut self, addr: u64, data: &mut [u8]) -> Claim {
        match self.find(addr, data.len()) {
            Some(r) => {
                lock(&r.device).read(addr - r.base, data);
                Claim::Device {
                    name: r.name.clone(),
                    base: r.base,
                }
            }
            None => {
                data.fill(0xff);
                self.unclaimed_reads += 1;
                Claim::Unclaimed
            }
        }
    }

    pub fn write(&mut self, addr: u64, data: &[u8]) -> Claim {
        match self.find(addr, data.len()) {
            Some(r) => {
                lock(&r.device).write(addr - r.base, data);
                Claim::Device {
                    name: r.name.clone(),
                    base: r.base,
                }
            }
            None => {
                self.unclaimed_writes += 1;
                Claim::Unclaimed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Scratch {
        bytes: [u8; 8],
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Scratch {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.bytes.get(offset as usize + i).copied().unwrap_or(0);
            }
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
            for (i, b) in data.iter().enumerate() {
                if let Some(slot) = self.bytes.get_mut(offset as usize + i) {
                    *slot = *b;
                }
            }
        }
    }

    fn dev() -> Arc<Mutex<Scratch>> {
        Arc::new(Mutex::new(Scratch::default()))
    }

    #[test]
    fn overlap_rejected() {
        let mut bus = Bus::new();
        bus.insert("a", 0x100, 0x10, dev()).unwrap();
        assert!(matches!(
            bus.insert("b", 0x108, 4, dev()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert("c", 0xf8, 0x10, dev()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert("d", 0x0, 0x1000, dev()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert("e", 0x100, 1, dev()),
            Err(BusError::Overlap { .. })
        ));
        // Adjacent ranges are fine.
        bus.insert("f", 0x110, 4, dev()).unwrap();
        bus.insert("g", 0xf0, 0x10, dev()).unwrap();
        assert_eq!(
            bus.insert("z", 5, 0, dev()),
            Err(BusError::ZeroLength { name: "z".into() })
        );
        assert!(matches!(
            bus.insert("w", u64::MAX, 2, dev()),
            Err(BusError::Overflow { .. })
        ));
        bus.insert("top", u64::MAX, 1, dev()).unwrap();
    }

    #[test]
    fn dispatch_with_offset() {
        let mut bus = Bus::new();
        let d = dev();
        bus.insert("a", 0x3f8, 8, d.clone()).unwrap();
        let claim = bus.write(0x3fa, &[1, 2]);
        assert_eq!(
            claim,
            Claim::Device {
                name: "a".into(),
                base: 0x3f8
            }
        );
        assert_eq!(d.lock().unwrap().last_write, Some((2, vec![1, 2])));
        let mut buf = [0u8; 2];
        bus.read(0x3fa, &mut buf);
        assert_eq!(buf, [1, 2]);
    }

    #[test]
    fn unclaimed_access_reads_ones() {
        let mut bus = Bus::new();
        bus.insert("a", 0x100, 4, dev()).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(bus.read(0x200, &mut buf), Claim::Unclaimed);
        assert_eq!(buf, [0xff; 4]);
        // Straddles the end of the device: not claimed.
        let mut buf = [0u8; 4];
        assert_eq!(bus.read(0x102, &mut buf), Claim::Unclaimed);
        assert_eq!(buf, [0xff; 4]);
        assert_eq!(bus.write(0x104, &[0]), Claim::Unclaimed);
        assert_eq!(bus.write(u64::MAX, &[0, 0]), Claim::Unclaimed);
        assert_eq!(bus.unclaimed_reads, 2);
        assert_eq!(bus.unclaimed_writes, 2);
    }
}
