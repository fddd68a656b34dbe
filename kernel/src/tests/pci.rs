//! PCI enumeration: whatever the platform has (our harness or QEMU), decoded without complaint.

use crate::ktap::Outcome;
use crate::{check, pci, println};
use drivers::pci::PciAddress;

pub fn enumerate() -> Outcome {
    let devices = pci::devices();
    for f in devices {
        println!("# lspci {}", f);
    }
    check!(!devices.is_empty(), "no PCI functions found");
    let root = devices
        .iter()
        .find(|f| f.address == PciAddress::new(0, 0, 0));
    check!(
        root.is_some_and(|f| f.class == 0x06 && f.subclass == 0x00),
        "00:00.0 is not a host bridge"
    );
    let troubled: alloc::vec::Vec<_> = devices.iter().filter(|f| !f.issues.is_empty()).collect();
    check!(
        troubled.is_empty(),
        "functions with decode problems: {:?}",
        troubled
            .iter()
            .map(|f| (f.address, f.issues.clone()))
            .collect::<alloc::vec::Vec<_>>()
    );
    Outcome::Pass
}
