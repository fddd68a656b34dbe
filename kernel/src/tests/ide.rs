//! IDE/ATA through the guest driver on every drive the PIIX function has: both channels,
//! master and slave, probed at each open (one `# ide:` line per position, once per boot). On
//! each ATA drive: every sector by PIO and by bus-master DMA (the channel's engine), writes the
//! host checks, the end of the disk, and completion by the channel's IRQ (14 or 15) through the
//! IOAPIC. Empty, floating and non-ATA positions are reported and skipped; a drive that is there
//! but misbehaves fails the test. Runs against our harness's PIIX model and QEMU's `-drive
//! if=ide` alike.

use super::disk;
use crate::arch::{apic, ioapic, vectors};
use crate::ktap::Outcome;
use crate::platform::{Dma, KernelPlatform, PLATFORM};
use crate::{check, fail, pattern, pci, println, try_or_fail};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use drivers::ata::bmdma::BusMasterDma;
use drivers::ata::ide::{ChannelId, ChannelPorts, Drive, IdeChannel, Presence};
use drivers::ata::AtaError;
use drivers::pci::{Pci, PciFunction};
use drivers::platform::{DmaBuffer, Platform};

/// Sectors per request: 128 KiB.
const CHUNK: u64 = 256;

/// The PIIX IDE function (8086:7010), with bus mastering on.
pub fn find_controller() -> Option<&'static PciFunction> {
    let f = pci::find(0x8086, 0x7010)?;
    Pci::new(&PLATFORM).enable_bus_master(f.address).ok()?;
    Some(f)
}

/// One ATA drive found by [`open_all`].
#[derive(Clone, Copy)]
pub struct Found {
    pub channel: ChannelId,
    pub drive: Drive,
    pub sectors: u64,
}

impl Found {
    /// "secondary master" and the like.
    pub fn position(&self) -> String {
        alloc::format!("{} {}", self.channel.name(), self.drive.name())
    }
}

/// The controller's channels and the ATA drives on them.
pub struct Ide {
    pub function: &'static PciFunction,
    channels: [Option<IdeChannel<'static, KernelPlatform>>; 2],
    /// In position order: primary master, primary slave, secondary master, secondary slave.
    pub drives: Vec<Found>,
}

impl Ide {
    /// The channel a drive of [`Ide::drives`] is on.
    pub fn channel(&mut self, id: ChannelId) -> &mut IdeChannel<'static, KernelPlatform> {
        self.channels[usize::from(id.is_secondary())]
            .as_mut()
            .expect("a channel with a found drive was opened")
    }

    /// The channel's bus-master engine (BAR4, + 8 for the secondary).
    pub fn bus_master(
        &self,
        id: ChannelId,
    ) -> Result<BusMasterDma<'static, KernelPlatform>, AtaError> {
        BusMasterDma::from_pci(&PLATFORM, self.function, id.is_secondary())
    }
}

static REPORTED: AtomicBool = AtomicBool::new(false);

/// Probe all four positions. `Err(Skip)` without a controller or without any ATA drive;
/// `Err(Fail)` if a drive is there but misbehaves.
pub fn open_all() -> Result<Ide, Outcome> {
    let Some(function) = find_controller() else {
        return Err(Outcome::Skip("no PIIX IDE controller"));
    };
    let report = !REPORTED.swap(true, Ordering::Relaxed);
    let mut ide = Ide {
        function,
        channels: [None, None],
        drives: Vec::new(),
    };
    let mut errors = Vec::new();
    for id in ChannelId::ALL {
        let Some(ports) = ChannelPorts::from_pci(function, id.is_secondary()) else {
            if report {
                println!(
                    "# ide: {} channel: native mode without I/O BARs, skipped",
                    id.name()
                );
            }
            continue;
        };
        let mut ch = IdeChannel::new(&PLATFORM, ports);
        let found = ch.probe_drives();
        for (drive, presence) in Drive::ALL.into_iter().zip(found) {
            let position = alloc::format!("{} {}", id.name(), drive.name());
            match presence {
                Ok(Presence::Ata) => {
                    let Some(info) = ch.info(drive) else {
                        continue;
                    };
                    if report {
                        println!(
                            "# ide: {}: ATA disk {:?} serial {:?}, {} sectors, lba48 {}, dma {}",
                            position, info.model, info.serial, info.sectors, info.lba48, info.dma
                        );
                    }
                    ide.drives.push(Found {
                        channel: id,
                        drive,
                        sectors: info.sectors,
                    });
                }
                Ok(other) => {
                    if report {
                        println!("# ide: {}: {}, skipped", position, other);
                    }
                }
                Err(e) => {
                    if report {
                        println!("# ide: {}: error: {}", position, e);
                    }
                    errors.push(alloc::format!("{}: {}", position, e));
                }
            }
        }
        ide.channels[usize::from(id.is_secondary())] = Some(ch);
    }
    if !errors.is_empty() {
        return Err(Outcome::Fail(errors.join("; ")));
    }
    if ide.drives.is_empty() {
        return Err(Outcome::Skip("no ATA drive at any IDE position"));
    }
    Ok(ide)
}

/// Run `test` on every ATA drive; the first failure names the drive's position.
fn on_every_drive(mut test: impl FnMut(&mut Ide, Found) -> Outcome) -> Outcome {
    let mut ide = match open_all() {
        Ok(v) => v,
        Err(outcome) => return outcome,
    };
    let drives = ide.drives.clone();
    for found in drives {
        match test(&mut ide, found) {
            Outcome::Pass => println!("# ide: {}: passed", found.position()),
            Outcome::Fail(m) => {
                return Outcome::Fail(alloc::format!("{}: {}", found.position(), m))
            }
            Outcome::Skip(why) => println!("# ide: {}: skipped: {}", found.position(), why),
        }
    }
    Outcome::Pass
}

pub fn pio_integrity() -> Outcome {
    if disk::seed().is_none() {
        return Outcome::Skip("no disk_seed= on the command line");
    }
    on_every_drive(pio_on)
}

fn pio_on(ide: &mut Ide, d: Found) -> Outcome {
    let (drive, cap) = (d.drive, d.sectors);
    let ide = ide.channel(d.channel);
    let mut buf = vec![0u8; (CHUNK * 512) as usize];
    let mut lba = 0;
    while lba < cap {
        let n = (cap - lba).min(CHUNK);
        let part = &mut buf[..n as usize * 512];
        try_or_fail!(ide.read_pio(drive, lba, part), "PIO read {}+{}", lba, n);
        if let Some(bad) = disk::first_bad_sector(cap, lba, part) {
            fail!("sector {} does not hold the image pattern", bad);
        }
        lba += n;
    }
    check!(
        matches!(
            ide.read_pio(drive, cap, &mut buf[..512]),
            Err(AtaError::OutOfRange { .. })
        ),
        "PIO read at the capacity was not refused"
    );
    check!(
        matches!(
            ide.write_pio(drive, cap - 1, &buf[..1024]),
            Err(AtaError::OutOfRange { .. })
        ),
        "PIO write across the end was not refused"
    );
    if let Some(wseed) = disk::write_seed() {
        // PIO writes cost an exit per word: only a few sectors.
        let start = pattern::write_region_start(cap);
        let mut data = vec![0u8; (pattern::IDE_PIO_WRITE_SECTORS * 512) as usize];
        pattern::fill(wseed, start, &mut data);
        try_or_fail!(ide.write_pio(drive, start, &data), "PIO write {}", start);
        try_or_fail!(ide.flush(drive), "flush");
        data.fill(0);
        try_or_fail!(ide.read_pio(drive, start, &mut data), "read back");
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
    on_every_drive(dma_on)
}

fn dma_on(ide: &mut Ide, d: Found) -> Outcome {
    let (drive, cap) = (d.drive, d.sectors);
    let mut bm = try_or_fail!(ide.bus_master(d.channel), "bus master");
    let ide = ide.channel(d.channel);
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
        try_or_fail!(bm.read(ide, drive, lba, buf), "DMA read {}+{}", lba, n);
        if let Some(bad) = disk::first_bad_sector(cap, lba, buf.as_slice()) {
            fail!("sector {} does not hold the image pattern", bad);
        }
        lba += n;
    }
    let mut one = try_or_fail!(Dma::new(512), "dma");
    check!(
        matches!(
            bm.read(ide, drive, cap, &mut one),
            Err(AtaError::OutOfRange { .. })
        ),
        "DMA read at the capacity was not refused"
    );
    if let Some(wseed) = disk::write_seed() {
        let start = pattern::write_region_start(cap) + pattern::IDE_PIO_WRITE_SECTORS;
        let n = pattern::WRITE_REGION_SECTORS - pattern::IDE_PIO_WRITE_SECTORS;
        let mut part = try_or_fail!(Dma::new(n as usize * 512), "dma");
        pattern::fill(wseed, start, part.as_mut_slice());
        try_or_fail!(bm.write(ide, drive, start, &part), "DMA write {}", start);
        try_or_fail!(ide.flush(drive), "flush");
        part.as_mut_slice().fill(0);
        try_or_fail!(bm.read(ide, drive, start, &mut part), "read back");
        if let Some(bad) = pattern::first_mismatch(wseed, start, part.as_slice()) {
            fail!("sector {} did not read back as written", bad);
        }
    }
    Outcome::Pass
}

/// PIO and DMA completing by the channel's IRQ (14 primary, 15 secondary) through the IOAPIC
/// instead of polling, on every drive.
pub fn interrupts() -> Outcome {
    if disk::seed().is_none() {
        return Outcome::Skip("no disk_seed= on the command line");
    }
    on_every_drive(interrupts_on)
}

fn interrupts_on(ide: &mut Ide, d: Found) -> Outcome {
    let Some(seed) = disk::seed() else {
        return Outcome::Skip("no disk_seed= on the command line");
    };
    if !d.channel.is_compatibility_mode(ide.function) {
        return Outcome::Skip("channel in native mode (PCI interrupt, not ISA)");
    }
    let (drive, irq) = (d.drive, d.channel.legacy_irq());
    let vector = match d.channel {
        ChannelId::Primary => vectors::IDE_PRIMARY,
        ChannelId::Secondary => vectors::IDE_SECONDARY,
    };
    let bm = ide.bus_master(d.channel);
    let ide = ide.channel(d.channel);
    ioapic::route(irq, vector, ioapic::Trigger::Edge, apic::id());
    let before = PLATFORM.interrupt_count(vector);
    ide.set_interrupt(Some(vector));
    let mut buf = vec![0u8; 8 * 512];
    let pio = ide.read_pio(drive, 8, &mut buf);
    let pio_ok = pio.is_ok() && pattern::first_mismatch(seed, 8, &buf).is_none();
    let after_pio = PLATFORM.interrupt_count(vector);
    let dma = bm.and_then(|mut bm| {
        let mut b = PLATFORM
            .dma_alloc(8 * 512, 4096)
            .map_err(AtaError::Platform)?;
        let r = bm.read(ide, drive, 16, &mut b);
        let ok = pattern::first_mismatch(seed, 16, b.as_slice()).is_none();
        PLATFORM.dma_free(b);
        r.map(|()| ok)
    });
    let after_dma = PLATFORM.interrupt_count(vector);
    ide.set_interrupt(None);
    ioapic::mask(irq);
    try_or_fail!(pio, "interrupt-driven PIO read");
    check!(pio_ok, "interrupt-driven PIO read returned wrong data");
    check!(
        try_or_fail!(dma, "interrupt-driven DMA read"),
        "interrupt-driven DMA read returned wrong data"
    );
    println!(
        "# ide irq {}: {} interrupts for an 8-sector PIO read, {} for a DMA read",
        irq,
        after_pio - before,
        after_dma - after_pio
    );
    check!(
        after_pio - before >= 8,
        "PIO: {} interrupts on IRQ {} for 8 sectors",
        after_pio - before,
        irq
    );
    check!(
        after_dma > after_pio,
        "DMA: no completion interrupt on IRQ {}",
        irq
    );
    Outcome::Pass
}

/// The first drive gets the checked region written (its first sectors by PIO, the rest by
/// DMA) and flushed (FLUSH CACHE), then announces it and sleeps: the host kills the VMM with
/// SIGKILL at the announcement and checks the image file. Never in `all`.
pub fn durability() -> Outcome {
    let Some(wseed) = disk::write_seed() else {
        return Outcome::Skip("no write_seed=");
    };
    let mut ide = match open_all() {
        Ok(v) => v,
        Err(outcome) => return outcome,
    };
    let d = ide.drives[0];
    let mut bm = try_or_fail!(ide.bus_master(d.channel), "bus master");
    let ch = ide.channel(d.channel);
    let start = pattern::write_region_start(d.sectors);
    let pio_sectors = pattern::IDE_PIO_WRITE_SECTORS;
    let mut pio = vec![0u8; (pio_sectors * 512) as usize];
    pattern::fill(wseed, start, &mut pio);
    try_or_fail!(ch.write_pio(d.drive, start, &pio), "PIO write {}", start);
    let dma_start = start + pio_sectors;
    let dma_sectors = pattern::WRITE_REGION_SECTORS - pio_sectors;
    let mut part = try_or_fail!(Dma::new(dma_sectors as usize * 512), "dma");
    pattern::fill(wseed, dma_start, part.as_mut_slice());
    try_or_fail!(
        bm.write(ch, d.drive, dma_start, &part),
        "DMA write {}",
        dma_start
    );
    try_or_fail!(ch.flush(d.drive), "flush");
    println!("# durability: flush acknowledged ({})", d.position());
    loop {
        PLATFORM.wait_for_interrupt(PLATFORM.interrupt_epoch());
    }
}
