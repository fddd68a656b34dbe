//! Attaches the PIIX3 IDE controller: one PCI function for all `--disk ide:` images, each at
//! its position (primary master, primary slave, secondary master, secondary slave; any may be
//! empty), the legacy command/control ports of both channels, BAR4 for bus-master DMA (8 bytes
//! per channel), and irqfds on GSI 14 and 15 (ISA edge interrupts). Each port range is its own
//! bus region so exits are counted per range.

use super::device_manager::DeviceManager;
use super::memory::GuestMem;
use crate::backends::disk::{DiskBackend, RawDisk};
use crate::devices::ide::piix::{self, IdePort, PiixFunction, PiixIde, Port, BAR4, BAR4_SIZE};
use crate::devices::{lock, Interrupt};
use crate::error::HarnessError;
use std::sync::{Arc, Mutex};

/// Returns the BM-DMA BAR4 port base, or None when there are no IDE disks (no controller).
pub fn attach(
    dm: &mut DeviceManager,
    mem: &GuestMem,
    opened: [Option<RawDisk>; piix::MAX_DRIVES],
) -> Result<Option<u64>, HarnessError> {
    if opened.iter().all(Option::is_none) {
        return Ok(None);
    }
    let bar4 = dm.alloc_io_bar(BAR4_SIZE)?;
    let primary: Arc<dyn Interrupt> = dm.irqfd(piix::PRIMARY_GSI)?;
    let secondary: Arc<dyn Interrupt> = dm.irqfd(piix::SECONDARY_GSI)?;
    let disks = opened.map(|d| d.map(|d| Box::new(d) as Box<dyn DiskBackend>));
    let ide =
        PiixIde::new(mem.clone(), disks, [primary, secondary]).map_err(HarnessError::Usage)?;
    let ide = Arc::new(Mutex::new(ide));
    lock(&ide)
        .config_mut()
        .set_bar_address(BAR4, bar4)
        .map_err(|e| HarnessError::Other(format!("IDE BAR4: {e}")))?;
    let bdf = dm.next_bdf()?;
    dm.add_pci(bdf, Arc::new(Mutex::new(PiixFunction::new(ide.clone()))));

    let regions = [
        (
            "ide0-cmd",
            piix::PRIMARY_CMD,
            piix::CMD_LEN,
            Port::Command(0),
        ),
        (
            "ide0-ctl",
            piix::PRIMARY_CTL,
            piix::CTL_LEN,
            Port::Control(0),
        ),
        (
            "ide1-cmd",
            piix::SECONDARY_CMD,
            piix::CMD_LEN,
            Port::Command(1),
        ),
        (
            "ide1-ctl",
            piix::SECONDARY_CTL,
            piix::CTL_LEN,
            Port::Control(1),
        ),
        ("ide-bmdma", bar4, BAR4_SIZE, Port::BusMaster),
    ];
    for (name, base, len, port) in regions {
        dm.insert_pio(
            name,
            base,
            len,
            Arc::new(Mutex::new(IdePort::new(ide.clone(), port))),
        )?;
    }
    Ok(Some(bar4))
}
