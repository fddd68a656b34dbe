//! Attaches the exit-floor device: a PCI function with an I/O BAR and an MMIO BAR, two
//! ioeventfd sinks, and a doorbell whose ioeventfd raises the device's interrupt.

use super::device_manager::DeviceManager;
use crate::devices::floor::{self, FloorFunction, FloorIo, FloorMmio, FloorStats};
use crate::devices::lock;
use crate::devices::Interrupt;
use crate::error::HarnessError;
use kvm_ioctls::IoEventAddress;
use std::sync::{Arc, Mutex};

/// Returns the BAR0 (I/O) and BAR1 (MMIO) addresses.
pub fn attach(dm: &mut DeviceManager) -> Result<(u64, u64), HarnessError> {
    let other = |what: &str, e: &dyn std::fmt::Display| HarnessError::Other(format!("{what}: {e}"));
    let bar0 = dm.alloc_io_bar(floor::BAR0_SIZE)?;
    let bar1 = dm.alloc_mmio_bar(floor::BAR1_SIZE)?;
    let function = Arc::new(Mutex::new(FloorFunction::new()));
    {
        let mut f = lock(&function);
        let c = f.config_mut();
        c.set_bar_address(0, bar0)
            .map_err(|e| other("floor BAR0", &e))?;
        c.set_bar_address(1, bar1)
            .map_err(|e| other("floor BAR1", &e))?;
        c.enable(DeviceManager::DECODE_ALL);
    }
    let bdf = dm.next_bdf()?;
    dm.add_pci(bdf, function.clone());

    let irq: Arc<dyn Interrupt> = dm.irqfd(floor::GSI as u32)?;
    let stats = Arc::new(FloorStats::default());
    dm.insert_pio(
        "floor-bar0",
        bar0,
        floor::BAR0_SIZE,
        Arc::new(Mutex::new(FloorIo::new(
            irq.clone(),
            stats.clone(),
            function.clone(),
        ))),
    )?;
    dm.insert_mmio(
        "floor-bar1",
        bar1,
        floor::BAR1_SIZE,
        Arc::new(Mutex::new(FloorMmio::new(stats.clone(), function.clone()))),
    )?;
    // The sinks are non-blocking and never read (the counter saturates harmlessly far beyond
    // any run); the doorbell is blocking, read by its thread.
    let _ = dm.ioeventfd(
        IoEventAddress::Pio(bar0 + floor::IO_IOEVENTFD),
        libc::EFD_NONBLOCK,
    );
    let _ = dm.ioeventfd(
        IoEventAddress::Mmio(bar1 + floor::MMIO_IOEVENTFD),
        libc::EFD_NONBLOCK,
    );
    if let Some(doorbell) = dm.ioeventfd(IoEventAddress::Pio(bar0 + floor::IO_DOORBELL), 0) {
        floor::spawn_doorbell_thread(doorbell, irq, stats, function)
            .map_err(|e| other("doorbell thread", &e))?;
    }
    Ok((bar0, bar1))
}
