//! The PCI devices of this machine, enumerated once through `drivers::pci` (BAR sizing writes
//! to the BARs, so it happens before any driver uses a device).

use crate::platform::KernelPlatform;
use alloc::vec::Vec;
use drivers::pci::{Pci, PciFunction};
use spin::Once;

static DEVICES: Once<Vec<PciFunction>> = Once::new();

pub fn devices() -> &'static [PciFunction] {
    DEVICES.call_once(|| Pci::new(&KernelPlatform).enumerate())
}

pub fn find(vendor: u16, device: u16) -> Option<&'static PciFunction> {
    devices()
        .iter()
        .find(|f| f.vendor_id == vendor && f.device_id == device)
}
