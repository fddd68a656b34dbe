//! IDE/ATA through the guest driver on the primary channel's master: every sector by PIO and by
//! bus-master DMA, writes the host checks, the end of the disk, and IRQ 14 through the IOAPIC.
//! Runs against our harness's PIIX model and QEMU's `-drive if=ide` alike.

use super::disk;
use crate::arch::{apic, ioapic, vectors};
use crate::ktap::Outcome;
use crate::platform::{Dma, KernelPlatform, PLATFORM};
use crate::{check, fail, pattern, pci, println, try_or_fail};
use alloc::vec;
use drivers::ata::bmdma::BusMasterDma;
use drivers::ata::ide::{ChannelPorts, Drive, IdeChannel};
use drivers::ata::AtaError;
use drivers::pci::{Pci, PciFunction};
use drivers::platform::{DmaBuffer, Platform};

/// ISA IRQ of the primary channel.
const PRIMARY_IRQ: u8 = 14;
/// Sectors per request: 128 KiB.
const CHUNK: u64 = 256;

/// The PIIX IDE function (8086:7010), with bus mastering on.
pub fn find_controller() -> Option<&'static PciFunction> {
    let f = pci::find(0x8086, 0x7010)?;
    Pci::new(&PLATFORM).enable_bus_master(f.address).ok()?;
    Some(f)
}

/// The primary channel with its master identified, or why not.
pub fn open_primary() -> Result<(IdeChannel<'static, KernelPlatform>, u64), Outcome> {
    let Some(f) = find_controller() else {
        return Err(Outcome::Skip("no PIIX IDE controller"));
    };
    let ports = ChannelPorts::from_pci(f, false).unwrap_or(ChannelPorts::PRIMARY);
    let mut ide = IdeChannel::new(&PLATFORM, ports);
    if let Err(e) = ide.soft_reset() {
        return match e {
            AtaError::NoDevice => Err(Outcome::Skip("no drive on the primary IDE channel")),
            e => Err(Outcome::Fail(alloc::format!("IDE reset: {}", e))),
        };
    }
    match ide.probe(Drive::Master) {
        Ok(Some(info)) => {
            println!(
                "# ide: {:?} serial {:?}, {} sectors, lba48 {}, dma {}",
                info.model, info.serial, info.sectors, info.lba48, info.dma
            );
            let sectors = info.sectors;
            Ok((ide, sectors))
        }
        Ok(None) => Err(Outcome::Skip("no drive on the primary IDE channel")),
        Err(e) => Err(Outcome::Fail(alloc::format!("IDENTIFY: {}", e))),
    }
}

macro_rules! open_or_return {
    () => {
        match open_primary() {
            Ok(v) => v,
            Err(outcome) => return outcome,
        }
    };
}

pub fn pio_integrity() -> Outcome {
    if disk::seed().is_none() {
        return Outcome::Skip("no disk_seed= on the command line");
    }
    let (mut ide, cap) = open_or_return!();
    let mut buf = vec![0u8; (CHUNK * 512) as usize];
    let mut lba = 0;
    while lba < cap {
        let n = (cap - lba).min(CHUNK);
        let part = &mut buf[..n as usize * 512];
        try_or_fail!(
            ide.read_pio(Drive::Master, lba, part),
            "PIO read {}+{}",
            lba,
            n
        );
        if let Some(bad) = disk::first_bad_sector(cap, lba, part) {
            fail!("sector {} does not hold the image pattern", bad);
        }
        lba += n;
    }
    check!(
        matches!(
            ide.read_pio(Drive::Master, cap, &mut buf[..512]),
            Err(AtaError::OutOfRange { .. })
        ),
        "PIO read at the capacity was not refused"
    );
    check!(
        matches!(
            ide.write_pio(Drive::Master, cap - 1, &buf[..1024]),
            Err(AtaError::OutOfRange { .. })
        ),
        "PIO write across the end was not refused"
    );
    if let Some(wseed) = disk::write_seed() {
        // PIO writes cost an exit per word: only a few sectors.
        let start = pattern::write_region_start(cap);
        let mut data = vec![0u8; (pattern::IDE_PIO_WRITE_SECTORS * 512) as usize];
        pattern::fill(wseed, start, &mut data);
        try_or_fail!(
            ide.write_pio(Drive::Master, start, &data),
            "PIO write {}",
            start
        );
        try_or_fail!(ide.flush(Drive::Master), "flush");
        data.fill(0);
        try_or_fail!(ide.read_pio(Drive::Master, start, &mut data), "read back");
        if let Some(bad) = pattern::first_mismatch(wseed, start, &data) {
            fail!("sector {} did not read back as written", bad);
        }
    }
    Outcome::Pass
}

pub fn dma_integrity() -> Outcome {
    if disk::seed().is_none() {
        return Outcome::Skip("no disk_seed= on the command line");
    }
    let (mut ide, cap) = open_or_return!();
    let Some(f) = find_controller() else {
        return Outcome::Skip("no PIIX IDE controller");
    };
    let mut bm = try_or_fail!(BusMasterDma::from_pci(&PLATFORM, f, false), "bus master");
    // The transfer length is the buffer's: a full chunk, and one exact buffer for the tail.
    let mut chunk = try_or_fail!(Dma::new((CHUNK * 512) as usize), "dma");
    let mut lba = 0;
    while lba < cap {
        let n = (cap - lba).min(CHUNK);
        let mut tail;
        let buf: &mut DmaBuffer = if n == CHUNK {
            &mut chunk
        } else {
            tail = try_or_fail!(Dma::new(n as usize * 512), "dma");
            &mut tail
        };
        try_or_fail!(
            bm.read(&mut ide, Drive::Master, lba, buf),
            "DMA read {}+{}",
            lba,
            n
        );
        if let Some(bad) = disk::first_bad_sector(cap, lba, buf.as_slice()) {
            fail!("sector {} does not hold the image pattern", bad);
        }
        lba += n;
    }
    let mut one = try_or_fail!(Dma::new(512), "dma");
    check!(
        matches!(
            bm.read(&mut ide, Drive::Master, cap, &mut one),
            Err(AtaError::OutOfRange { .. })
        ),
        "DMA read at the capacity was not refused"
    );
    if let Some(wseed) = disk::write_seed() {
        let start = pattern::write_region_start(cap) + pattern::IDE_PIO_WRITE_SECTORS;
        let n = pattern::WRITE_REGION_SECTORS - pattern::IDE_PIO_WRITE_SECTORS;
        let mut part = try_or_fail!(Dma::new(n as usize * 512), "dma");
        pattern::fill(wseed, start, part.as_mut_slice());
        try_or_fail!(
            bm.write(&mut ide, Drive::Master, start, &part),
            "DMA write {}",
            start
        );
        try_or_fail!(ide.flush(Drive::Master), "flush");
        part.as_mut_slice().fill(0);
        try_or_fail!(
            bm.read(&mut ide, Drive::Master, start, &mut part),
            "read back"
        );
        if let Some(bad) = pattern::first_mismatch(wseed, start, part.as_slice()) {
            fail!("sector {} did not read back as written", bad);
        }
    }
    Outcome::Pass
}

/// PIO and DMA completing by IRQ 14 through the IOAPIC instead of polling.
pub fn interrupts() -> Outcome {
    let Some(seed) = disk::seed() else {
        return Outcome::Skip("no disk_seed= on the command line");
    };
    let (mut ide, _cap) = open_or_return!();
    let Some(f) = find_controller() else {
        return Outcome::Skip("no PIIX IDE controller");
    };
    let vector = vectors::IDE_PRIMARY;
    ioapic::route(PRIMARY_IRQ, vector, ioapic::Trigger::Edge, apic::id());
    let before = PLATFORM.interrupt_count(vector);
    ide.set_interrupt(Some(vector));
    let mut buf = vec![0u8; 8 * 512];
    let pio = ide.read_pio(Drive::Master, 8, &mut buf);
    let pio_ok = pio.is_ok() && pattern::first_mismatch(seed, 8, &buf).is_none();
    let after_pio = PLATFORM.interrupt_count(vector);
    let dma = BusMasterDma::from_pci(&PLATFORM, f, false).and_then(|mut bm| {
        let mut b = PLATFORM
            .dma_alloc(8 * 512, 4096)
            .map_err(AtaError::Platform)?;
        let r = bm.read(&mut ide, Drive::Master, 16, &mut b);
        let ok = pattern::first_mismatch(seed, 16, b.as_slice()).is_none();
        PLATFORM.dma_free(b);
        r.map(|()| ok)
    });
    let after_dma = PLATFORM.interrupt_count(vector);
    ide.set_interrupt(None);
    ioapic::mask(PRIMARY_IRQ);
    try_or_fail!(pio, "interrupt-driven PIO read");
    check!(pio_ok, "interrupt-driven PIO read returned wrong data");
    check!(
        try_or_fail!(dma, "interrupt-driven DMA read"),
        "interrupt-driven DMA read returned wrong data"
    );
    println!(
        "# ide irq: {} interrupts for an 8-sector PIO read, {} for a DMA read",
        after_pio - before,
        after_dma - after_pio
    );
    check!(
        after_pio - before >= 8,
        "PIO: {} interrupts for 8 sectors",
        after_pio - before
    );
    check!(after_dma > after_pio, "DMA: no completion interrupt");
    Outcome::Pass
}
