//! PCI: configuration mechanism #1 (ports 0xCF8 address, 0xCFC..0xCFF data) over a set of
//! functions on bus 0.

pub mod config;
pub mod host_bridge;
pub mod msix;

use super::bus::BusDevice;
use super::{le_value, lock};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub const CONFIG_ADDRESS_PORT: u64 = 0xcf8;
pub const CONFIG_IO_LEN: u64 = 8;

/// Where firmware (the harness) starts assigning BARs.
pub const IO_BAR_START: u64 = 0xc000;
pub const MMIO_BAR_START: u64 = 0xc000_0000;

/// A PCI function's configuration space as the guest sees it.
pub trait PciFunction: Send {
    fn config_read(&mut self, offset: u64, data: &mut [u8]);
    fn config_write(&mut self, offset: u64, data: &[u8]);
}

/// bus/device/function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bdf {
    pub bus: u8,
    pub dev: u8,
    pub func: u8,
}

impl Bdf {
    pub const fn new(bus: u8, dev: u8, func: u8) -> Self {
        Self { bus, dev, func }
    }
}

impl std::fmt::Display for Bdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.dev, self.func)
    }
}

pub type SharedFunction = Arc<Mutex<dyn PciFunction>>;

/// The 0xCF8..0xCFF port range.
#[derive(Default)]
pub struct PciConfigIo {
    address: u32,
    functions: BTreeMap<Bdf, SharedFunction>,
}

impl PciConfigIo {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, bdf: Bdf, f: SharedFunction) {
        self.functions.insert(bdf, f);
    }

    /// The selected function and register (dword-aligned), if the enable bit is set.
    fn target(&self) -> Option<(&SharedFunction, u64)> {
        if self.address & 0x8000_0000 == 0 {
            return None;
        }
        let bdf = Bdf::new(
            (self.address >> 16) as u8,
            ((self.address >> 11) & 0x1f) as u8,
            ((self.address >> 8) & 0x7) as u8,
        );
        let reg = (self.address & 0xfc) as u64;
        self.functions.get(&bdf).map(|f| (f, reg))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 if offset - 4 + data.len() as u64 <= 4 => match self.target() {
                Some((f, reg)) => lock(f).config_read(reg + offset - 4, data),
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => self.address = le_value(data) as u32 & 0x80ff_fffc,
            4..=7 if offset - 4 + data.len() as u64 <= 4 => {
                if let Some((f, reg)) = self.target() {
                    lock(f).config_write(reg + offset - 4, data);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host_bridge::HostBridge;
    use super::*;

    fn select(io: &mut PciConfigIo, dev: u8, reg: u8) {
        let addr = 0x8000_0000u32 | (dev as u32) << 11 | reg as u32;
        io.write(0, &addr.to_le_bytes());
    }

    fn read32(io: &mut PciConfigIo) -> u32 {
        let mut b = [0u8; 4];
        io.read(4, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn mechanism_one() {
        let mut io = PciConfigIo::new();
        io.add(Bdf::new(0, 0, 0), Arc::new(Mutex::new(HostBridge::new())));
        select(&mut io, 0, 0);
        assert_eq!(read32(&mut io), 0x1237_8086);
        let mut b = [0u8; 4];
        io.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x8000_0000);
        // Word read at 0xCFE gives the device id.
        let mut w = [0u8; 2];
        io.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x1237);
        select(&mut io, 0, 8);
        assert_eq!(read32(&mut io) >> 8, 0x06_00_00);
        // Absent function.
        select(&mut io, 3, 0);
        assert_eq!(read32(&mut io), 0xffff_ffff);
        // Enable bit clear.
        io.write(0, &0u32.to_le_bytes());
        assert_eq!(read32(&mut io), 0xffff_ffff);
        // Odd accesses don't panic and read ones.
        let mut w = [0u8; 2];
        io.read(7, &mut w);
        assert_eq!(w, [0xff, 0xff]);
        io.write(1, &[1, 2]);
        io.write(99, &[1]);
        let mut big = [0u8; 8];
        io.read(4, &mut big);
        assert_eq!(big, [0xff; 8]);
    }
}
