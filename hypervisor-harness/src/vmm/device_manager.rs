//! Builds the machine's devices: the two buses, the PCI functions with BARs assigned as firmware
//! would, and the KVM plumbing (irqfd, ioeventfd) that models need. Device models stay KVM-free;
//! each `vmm/<device>.rs` attaches one kind of device through this.

use super::vm::{IrqFd, Vm};
use crate::devices::bus::{Bus, SharedDevice};
use crate::devices::pci::config::{CMD_IO, CMD_MEM};
use crate::devices::pci::{
    Bdf, PciConfigIo, SharedFunction, CONFIG_ADDRESS_PORT, CONFIG_IO_LEN, IO_BAR_START,
    MMIO_BAR_START,
};
use crate::error::HarnessError;
use kvm_ioctls::IoEventAddress;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// End of the window PCI memory BARs are assigned from (the IOAPIC sits at 0xfec0_0000).
const MMIO_BAR_END: u64 = 0xfe00_0000;
/// End of the port range for I/O BARs.
const IO_BAR_END: u64 = 0x1_0000;

pub struct DeviceManager<'v> {
    pub vm: &'v mut Vm,
    pub pio: Bus,
    pub mmio: Bus,
    pci: PciConfigIo,
    /// The functions on the bus, for the monitor's `info pci`.
    functions: Vec<(Bdf, SharedFunction)>,
    next_io: u64,
    next_mmio: u64,
    next_slot: u8,
}

impl<'v> DeviceManager<'v> {
    pub fn new(vm: &'v mut Vm) -> Self {
        Self {
            vm,
            pio: Bus::new(),
            mmio: Bus::new(),
            pci: PciConfigIo::new(),
            functions: Vec::new(),
            next_io: IO_BAR_START,
            next_mmio: MMIO_BAR_START,
            next_slot: 0,
        }
    }

    fn err(what: &str, e: impl std::fmt::Display) -> HarnessError {
        HarnessError::Other(format!("{what}: {e}"))
    }

    pub fn insert_pio(
        &mut self,
        name: &str,
        base: u64,
        len: u64,
        d: SharedDevice,
    ) -> Result<(), HarnessError> {
        self.pio
            .insert(name, base, len, d)
            .map_err(|e| Self::err("device layout", e))
    }

    pub fn insert_mmio(
        &mut self,
        name: &str,
        base: u64,
        len: u64,
        d: SharedDevice,
    ) -> Result<(), HarnessError> {
        self.mmio
            .insert(name, base, len, d)
            .map_err(|e| Self::err("device layout", e))
    }

    /// The next free device number on bus 0 (function 0).
    pub fn next_bdf(&mut self) -> Result<Bdf, HarnessError> {
        if self.next_slot >= 32 {
            return Err(HarnessError::Usage(
                "too many PCI devices (32 slots on bus 0)".into(),
            ));
        }
        let bdf = Bdf::new(0, self.next_slot, 0);
        self.next_slot += 1;
        Ok(bdf)
    }

    /// Assign `size` bytes of port space (naturally aligned, as BAR sizing requires).
    pub fn alloc_io_bar(&mut self, size: u64) -> Result<u64, HarnessError> {
        bump(&mut self.next_io, size.max(4), IO_BAR_END, "I/O")
    }

    /// Assign `size` bytes of MMIO space below 4 GiB (naturally aligned, at least a page).
    pub fn alloc_mmio_bar(&mut self, size: u64) -> Result<u64, HarnessError> {
        bump(&mut self.next_mmio, size.max(0x1000), MMIO_BAR_END, "MMIO")
    }

    /// Put a function on the PCI bus at `bdf`.
    pub fn add_pci(&mut self, bdf: Bdf, f: SharedFunction) {
        self.functions.push((bdf, f.clone()));
        self.pci.add(bdf, f);
    }

    /// The functions put on the bus so far, in slot order.
    pub fn pci_functions(&self) -> Vec<(Bdf, SharedFunction)> {
        self.functions.clone()
    }

    /// An edge interrupt on `gsi`, through an irqfd.
    pub fn irqfd(&self, gsi: u32) -> Result<Arc<IrqFd>, HarnessError> {
        self.vm.irqfd(gsi)
    }

    /// An ioeventfd for writes at `addr`; None (noted) if KVM refuses, and the write then
    /// exits to userspace like any other.
    pub fn ioeventfd(&mut self, addr: IoEventAddress, flags: i32) -> Option<EventFd> {
        self.vm.ioeventfd(addr, flags)
    }

    /// Command register bits for a function whose BARs were just assigned.
    pub const DECODE_ALL: u16 = CMD_IO | CMD_MEM;

    /// Finish: the PCI configuration ports go on the port bus; the buses are handed back.
    pub fn finish(mut self) -> Result<(Bus, Bus), HarnessError> {
        let pci = std::mem::take(&mut self.pci);
        self.insert_pio(
            "pci-config",
            CONFIG_ADDRESS_PORT,
            CONFIG_IO_LEN,
            Arc::new(Mutex::new(pci)),
        )?;
        Ok((self.pio, self.mmio))
    }
}

/// Take a naturally aligned block of `size` (rounded up to a power of two) from `*next`.
fn bump(next: &mut u64, size: u64, end: u64, space: &str) -> Result<u64, HarnessError> {
    let size = size.next_power_of_two();
    let base = next.next_multiple_of(size);
    if base.checked_add(size).is_none_or(|top| top > end) {
        return Err(HarnessError::Other(format!("out of PCI {space} space")));
    }
    *next = base + size;
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_naturally_aligned_and_bounded() {
        let mut next = 0xc004;
        assert_eq!(bump(&mut next, 0x10, 0x1_0000, "I/O").unwrap(), 0xc010);
        assert_eq!(next, 0xc020);
        assert_eq!(bump(&mut next, 0x80, 0x1_0000, "I/O").unwrap(), 0xc080);
        assert_eq!(bump(&mut next, 3, 0x1_0000, "I/O").unwrap(), 0xc100);
        let mut mmio = 0xc000_1000;
        assert_eq!(
            bump(&mut mmio, 0x8000, MMIO_BAR_END, "MMIO").unwrap(),
            0xc000_8000
        );
        let mut full = 0xfff0;
        assert!(bump(&mut full, 0x20, 0x1_0000, "I/O")
            .unwrap_err()
            .to_string()
            .contains("out of PCI I/O space"));
        assert_eq!(full, 0xfff0, "a failed allocation takes nothing");
    }
}
