//! Bus Master IDE DMA (SFF-8038i / PIIX): the I/O BAR4 of a PCI IDE function holds 8 ports per
//! channel (primary at +0, secondary at +8):
//!
//! - +0 command: bit 0 start/stop, bit 3 direction (1 = the engine writes memory, i.e. a device
//!   read). The direction must not change while the engine is active.
//! - +2 status: bit 0 active, bit 1 error, bit 2 interrupt (bits 1 and 2 are cleared by writing
//!   1), bits 5/6 "drive 0/1 DMA capable" (read/write, preserved here), bit 7 simplex.
//! - +4 PRD table address (dword, 4-byte aligned; the table must not cross 64 KiB).
//!
//! A PRD entry is {u32 physical address, u16 byte count (0 = 64 KiB), u16 flags with EOT in bit
//! 15}. A region must be even-aligned, below 4 GiB and must not cross a 64 KiB boundary.
//!
//! Sequence per command: PRD table, direction (engine stopped), clear error/interrupt, issue the
//! ATA command, start; on completion stop the engine, read ATA status, check the bus-master error.

use alloc::vec::Vec;
use bitflags::bitflags;
use core::mem::size_of;
use core::sync::atomic::{fence, Ordering};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::ide::{cmd, Chunk, Drive, IdeChannel};
use super::{AtaError, PortStrings, WaitFor, SECTOR_SIZE};
use crate::pci::{Bar, PciFunction};
use crate::platform::{DmaBuffer, Platform};

/// Register offsets within a channel's 8 bus-master ports.
pub mod reg {
    pub const COMMAND: u16 = 0;
    pub const STATUS: u16 = 2;
    pub const PRD_TABLE: u16 = 4;
}

/// Offset of the secondary channel's registers in BAR4.
pub const SECONDARY_OFFSET: u16 = 8;

bitflags! {
    /// Bus-master command register.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct BmCommand: u8 {
        /// Start (1) / stop (0) the engine.
        const START = 0x01;
        /// Direction: the engine writes memory (device-to-memory, a READ DMA).
        const WRITE_TO_MEMORY = 0x08;
    }
}

bitflags! {
    /// Bus-master status register.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct BmStatus: u8 {
        /// The engine is active.
        const ACTIVE = 0x01;
        /// DMA error (write 1 to clear).
        const ERROR = 0x02;
        /// The IDE interrupt was raised (write 1 to clear).
        const INTERRUPT = 0x04;
        /// Drive 0 is DMA capable (read/write, for software).
        const DRIVE0_DMA = 0x20;
        /// Drive 1 is DMA capable (read/write, for software).
        const DRIVE1_DMA = 0x40;
        /// Only one channel can do DMA at a time.
        const SIMPLEX = 0x80;
    }
}

/// PRD flags: end of table.
pub const PRD_EOT: u16 = 0x8000;
/// Bytes one PRD entry can describe (encoded as 0).
pub const PRD_MAX_BYTES: usize = 0x1_0000;
/// Size of the PRD table this driver allocates (one page: 512 entries).
pub const PRD_TABLE_BYTES: usize = 4096;

/// One physical region descriptor, as the engine reads it from the PRD table.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct PrdEntry {
    pub phys: U32,
    /// Byte count; 0 means 64 KiB.
    pub byte_count: U16,
    /// [`PRD_EOT`] or 0.
    pub flags: U16,
}

const _: () = assert!(size_of::<PrdEntry>() == 8);

impl PrdEntry {
    pub const fn new(phys: u32, byte_count: u16, flags: u16) -> Self {
        Self {
            phys: U32::new(phys),
            byte_count: U16::new(byte_count),
            flags: U16::new(flags),
        }
    }

    /// Bytes described.
    pub fn len(&self) -> usize {
        match self.byte_count.get() {
            0 => PRD_MAX_BYTES,
            n => usize::from(n),
        }
    }

    /// Never true: an entry describes 1..=65536 bytes. (For symmetry with `len`.)
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn is_end(&self) -> bool {
        self.flags.get() & PRD_EOT != 0
    }

    /// The 8 bytes of the entry as the engine reads them (little-endian).
    pub fn to_bytes(&self) -> [u8; 8] {
        zerocopy::transmute!(*self)
    }
}

/// A physically contiguous piece of DMA memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaRegion {
    pub phys: u64,
    pub len: usize,
}

/// Describe `regions` (in order) as PRD entries: each split at 64 KiB boundaries, the last entry
/// marked EOT. Errors on an empty list, and on empty, odd or above-4-GiB regions.
pub fn build_prd(regions: &[DmaRegion]) -> Result<Vec<PrdEntry>, AtaError> {
    let total: usize = regions.iter().map(|r| r.len).sum();
    let (entries, _) = fill_prd(regions, 0, total, usize::MAX)?;
    if entries.is_empty() {
        return Err(AtaError::BadDmaRegion { phys: 0, len: 0 });
    }
    Ok(entries)
}

/// PRD entries for the bytes `skip..skip + max_bytes` of `regions`, at most `max_entries`
/// of them; if the table fills up, the transfer is cut back to a whole number of sectors
/// (unless `max_entries` is unlimited, as for [`build_prd`]). Returns the entries (the last
/// marked EOT) and the number of bytes they describe.
fn fill_prd(
    regions: &[DmaRegion],
    skip: usize,
    max_bytes: usize,
    max_entries: usize,
) -> Result<(Vec<PrdEntry>, usize), AtaError> {
    for r in regions {
        let end = r.phys.checked_add(r.len as u64);
        if r.len == 0 || r.phys & 1 != 0 || r.len & 1 != 0 || end.is_none_or(|e| e > 1 << 32) {
            return Err(AtaError::BadDmaRegion {
                phys: r.phys,
                len: r.len,
            });
        }
    }
    let mut entries: Vec<PrdEntry> = Vec::new();
    let mut skip = skip;
    let mut bytes = 0usize;
    'regions: for r in regions {
        if skip >= r.len {
            skip -= r.len;
            continue;
        }
        let mut phys = r.phys + skip as u64;
        let mut left = r.len - skip;
        skip = 0;
        while left > 0 && bytes < max_bytes {
            if entries.len() == max_entries {
                break 'regions;
            }
            let to_boundary = PRD_MAX_BYTES - (phys as usize & (PRD_MAX_BYTES - 1));
            let n = left.min(to_boundary).min(max_bytes - bytes);
            // 65536 wraps to a byte count of 0, as the format wants.
            entries.push(PrdEntry::new(phys as u32, n as u16, 0));
            phys += n as u64;
            left -= n;
            bytes += n;
        }
        if bytes >= max_bytes {
            break;
        }
    }
    if max_entries != usize::MAX {
        // Cut back to a sector boundary (the table filled in the middle of a sector).
        let mut excess = bytes % SECTOR_SIZE;
        while excess > 0 {
            let last = entries.last_mut().expect("excess implies entries");
            let len = last.len();
            if len > excess {
                last.byte_count.set((len - excess) as u16);
                bytes -= excess;
                excess = 0;
            } else {
                entries.pop();
                bytes -= len;
                excess -= len;
            }
        }
    }
    if let Some(last) = entries.last_mut() {
        last.flags |= U16::new(PRD_EOT);
    }
    Ok((entries, bytes))
}

/// The bus-master registers of one channel and its PRD table.
pub struct BusMasterDma<'p, P: Platform + ?Sized> {
    platform: &'p P,
    base: u16,
    table: Option<DmaBuffer>,
    table_phys: u32,
    /// Last value written to the command register (`None`: unknown).
    command: Option<BmCommand>,
    /// The read/write bits of the status register, written back when clearing.
    keep: BmStatus,
    table_loaded: bool,
    /// Bound of the wait for the engine after the device completed.
    pub engine_timeout_ns: u64,
}

impl<'p, P: Platform + ?Sized> BusMasterDma<'p, P> {
    /// Bus-master registers at I/O port `base` (BAR4, plus 8 for the secondary channel).
    /// Allocates the PRD table and stops the engine.
    pub fn new(platform: &'p P, base: u16) -> Result<Self, AtaError> {
        let table = platform.dma_alloc(PRD_TABLE_BYTES, PRD_TABLE_BYTES)?;
        if table.phys() % 4 != 0
            || table.phys() + PRD_TABLE_BYTES as u64 > 1 << 32
            || table.phys() >> 16 != (table.phys() + PRD_TABLE_BYTES as u64 - 1) >> 16
        {
            let (phys, len) = (table.phys(), table.len());
            platform.dma_free(table);
            return Err(AtaError::BadDmaRegion { phys, len });
        }
        let table_phys = table.phys() as u32;
        let status = BmStatus::from_bits_retain(platform.inb(base + reg::STATUS));
        let mut me = Self {
            platform,
            base,
            table: Some(table),
            table_phys,
            command: None,
            keep: status & (BmStatus::DRIVE0_DMA | BmStatus::DRIVE1_DMA),
            table_loaded: false,
            engine_timeout_ns: 1_000_000_000,
        };
        me.write_command(BmCommand::empty());
        Ok(me)
    }

    /// The bus-master registers of a PCI IDE function's channel (I/O BAR4).
    pub fn from_pci(
        platform: &'p P,
        function: &PciFunction,
        secondary: bool,
    ) -> Result<Self, AtaError> {
        match function.bar(4) {
            Some(Bar::Io { port, size }) if size >= 16 => {
                let offset = if secondary { SECONDARY_OFFSET } else { 0 };
                Self::new(platform, port + offset)
            }
            _ => Err(AtaError::NoBusMaster),
        }
    }

    pub fn base(&self) -> u16 {
        self.base
    }

    /// Entries the PRD table holds.
    pub fn max_entries(&self) -> usize {
        PRD_TABLE_BYTES / size_of::<PrdEntry>()
    }

    /// The bus-master status register.
    pub fn status(&self) -> BmStatus {
        BmStatus::from_bits_retain(self.platform.inb(self.base + reg::STATUS))
    }

    fn write_command(&mut self, value: BmCommand) {
        self.platform.outb(self.base + reg::COMMAND, value.bits());
        self.command = Some(value);
    }

    fn write_table(&mut self, entries: &[PrdEntry]) {
        let table = self.table.as_mut().expect("table lives until drop");
        let (slots, _) = <[PrdEntry]>::mut_from_prefix_with_elems(
            table.as_mut_slice(),
            PRD_TABLE_BYTES / size_of::<PrdEntry>(),
        )
        .expect("the table holds PRD_TABLE_BYTES");
        for (slot, e) in slots.iter_mut().zip(entries) {
            *slot = *e;
        }
    }
}

impl<P: Platform + ?Sized> Drop for BusMasterDma<'_, P> {
    fn drop(&mut self) {
        if let Some(table) = self.table.take() {
            self.platform.dma_free(table);
        }
    }
}

impl<'p, P: PortStrings + ?Sized> BusMasterDma<'p, P> {
    /// READ DMA (EXT when needed or forced by the channel) of `buf.len() / 512` sectors at `lba`
    /// into `buf`.
    pub fn read(
        &mut self,
        ide: &mut IdeChannel<'p, P>,
        drive: Drive,
        lba: u64,
        buf: &mut DmaBuffer,
    ) -> Result<(), AtaError> {
        let region = [DmaRegion {
            phys: buf.phys(),
            len: buf.len(),
        }];
        self.transfer(ide, drive, lba, &region, false)
    }

    /// WRITE DMA (or EXT) of `buf` to `buf.len() / 512` sectors at `lba`.
    pub fn write(
        &mut self,
        ide: &mut IdeChannel<'p, P>,
        drive: Drive,
        lba: u64,
        buf: &DmaBuffer,
    ) -> Result<(), AtaError> {
        let region = [DmaRegion {
            phys: buf.phys(),
            len: buf.len(),
        }];
        self.transfer(ide, drive, lba, &region, true)
    }

    /// Scatter-gather DMA: sectors at `lba` from (`write`) or into the concatenation of
    /// `regions`.
    ///
    /// # Safety
    /// For a read, the device writes to the physical memory the regions name: they must be DMA
    /// memory the caller owns and nothing else may access during the call.
    pub unsafe fn transfer_regions(
        &mut self,
        ide: &mut IdeChannel<'p, P>,
        drive: Drive,
        lba: u64,
        regions: &[DmaRegion],
        write: bool,
    ) -> Result<(), AtaError> {
        self.transfer(ide, drive, lba, regions, write)
    }

    fn transfer(
        &mut self,
        ide: &mut IdeChannel<'p, P>,
        drive: Drive,
        lba: u64,
        regions: &[DmaRegion],
        write: bool,
    ) -> Result<(), AtaError> {
        let total: usize = regions.iter().map(|r| r.len).sum();
        let count = ide.check_request(drive, lba, total)?;
        // Validate every region before any I/O.
        fill_prd(regions, 0, 0, usize::MAX)?;
        let mut done = 0u64;
        while done < count {
            let plan = ide.plan(drive, lba + done, count - done);
            let (entries, bytes) = fill_prd(
                regions,
                done as usize * SECTOR_SIZE,
                plan.count as usize * SECTOR_SIZE,
                self.max_entries(),
            )?;
            let chunk = Chunk {
                count: (bytes / SECTOR_SIZE) as u64,
                ..plan
            };
            self.command(ide, drive, chunk, &entries, write)?;
            done += chunk.count;
        }
        Ok(())
    }

    fn command(
        &mut self,
        ide: &mut IdeChannel<'p, P>,
        drive: Drive,
        chunk: Chunk,
        entries: &[PrdEntry],
        write: bool,
    ) -> Result<(), AtaError> {
        self.write_table(entries);
        // The table (and, for writes, the data) must be in memory before the engine starts.
        fence(Ordering::SeqCst);
        if !self.table_loaded {
            self.platform
                .outl(self.base + reg::PRD_TABLE, self.table_phys);
            self.table_loaded = true;
        }
        let direction = if write {
            BmCommand::empty()
        } else {
            BmCommand::WRITE_TO_MEMORY
        };
        if self.command != Some(direction) {
            self.write_command(direction);
        }
        self.platform.outb(
            self.base + reg::STATUS,
            (self.keep | BmStatus::ERROR | BmStatus::INTERRUPT).bits(),
        );
        let opcode = match (write, chunk.ext) {
            (false, false) => cmd::READ_DMA,
            (false, true) => cmd::READ_DMA_EXT,
            (true, false) => cmd::WRITE_DMA,
            (true, true) => cmd::WRITE_DMA_EXT,
        };
        let irq = ide.irq_snapshot();
        let t = ide.issue(drive, chunk, opcode)?;
        self.write_command(direction | BmCommand::START);
        let result = match irq {
            Some(snapshot) => self.complete_interrupt(ide, snapshot),
            None => self.complete_polled(ide, t),
        };
        if self.command != Some(direction) {
            self.write_command(direction);
        }
        fence(Ordering::SeqCst);
        if result.is_err() {
            // The table register survives, but re-arm everything after a failure.
            self.table_loaded = false;
            self.command = None;
        }
        result
    }

    /// nIEN set: the device raises no interrupt, so the bus-master interrupt bit stays clear.
    /// Wait for the device to finish (BSY and DRQ clear), then for the engine to go idle.
    fn complete_polled(&mut self, ide: &mut IdeChannel<'p, P>, t: u64) -> Result<(), AtaError> {
        ide.settle(t);
        match ide.wait(WaitFor::Completion, None, ide.timeouts.command_ns) {
            Err(AtaError::Timeout { status, .. }) => {
                let bm = self.status();
                if bm.contains(BmStatus::ERROR) {
                    return Err(AtaError::BusMaster {
                        bm_status: bm.bits(),
                    });
                }
                if !bm.contains(BmStatus::ACTIVE) {
                    return Err(AtaError::DmaIncomplete {
                        bm_status: bm.bits(),
                        status,
                    });
                }
                return Err(AtaError::Timeout {
                    waiting_for: WaitFor::Completion,
                    status,
                });
            }
            other => other?,
        };
        let bm = self.wait_engine()?;
        self.write_command(self.command.unwrap_or(BmCommand::empty()) - BmCommand::START);
        if bm.contains(BmStatus::ERROR) {
            return Err(AtaError::BusMaster {
                bm_status: bm.bits(),
            });
        }
        Ok(())
    }

    fn wait_engine(&self) -> Result<BmStatus, AtaError> {
        let start = self.platform.now_ns();
        loop {
            let bm = self.status();
            if !bm.contains(BmStatus::ACTIVE)
                || bm.intersects(BmStatus::ERROR | BmStatus::INTERRUPT)
            {
                return Ok(bm);
            }
            if self.platform.now_ns().wrapping_sub(start) > self.engine_timeout_ns {
                return Err(AtaError::Timeout {
                    waiting_for: WaitFor::DmaEngine,
                    status: bm.bits(),
                });
            }
        }
    }

    /// nIEN clear: wait for interrupts until the bus-master status shows the interrupt (or an
    /// error), stop the engine, then read the ATA status (acknowledging the interrupt).
    fn complete_interrupt(
        &mut self,
        ide: &mut IdeChannel<'p, P>,
        mut snapshot: u64,
    ) -> Result<(), AtaError> {
        let start = self.platform.now_ns();
        let timeout = ide.timeouts.command_ns;
        let bm = loop {
            ide.wait_interrupt(&mut snapshot, start, timeout)?;
            let bm = self.status();
            if bm.intersects(BmStatus::INTERRUPT | BmStatus::ERROR) {
                break bm;
            }
        };
        self.write_command(self.command.unwrap_or(BmCommand::empty()) - BmCommand::START);
        if bm.contains(BmStatus::ERROR) {
            // Still acknowledge the device.
            ide.status();
            return Err(AtaError::BusMaster {
                bm_status: bm.bits(),
            });
        }
        // Status reads ERR/DF as errors; BSY or DRQ still set means the PRD table ran out.
        match ide.wait(WaitFor::Completion, None, 0) {
            Err(AtaError::Timeout { status, .. }) => Err(AtaError::DmaIncomplete {
                bm_status: bm.bits(),
                status,
            }),
            other => other.map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ata::fake::{self, pattern, Disk, Fake, BM, IDNF};
    use crate::ata::ide::{ChannelPorts, ErrorReg, Timeouts};
    use alloc::vec;

    const MS: u64 = 1_000_000;

    fn r(phys: u64, len: usize) -> DmaRegion {
        DmaRegion { phys, len }
    }

    fn e(phys: u32, byte_count: u16, flags: u16) -> PrdEntry {
        PrdEntry::new(phys, byte_count, flags)
    }

    fn setup(f: &Fake) -> (IdeChannel<'_, Fake>, BusMasterDma<'_, Fake>) {
        let mut ch = IdeChannel::new(f, ChannelPorts::PRIMARY);
        ch.timeouts = Timeouts {
            command_ns: 50 * MS,
            reset_ns: 100 * MS,
            flush_ns: 80 * MS,
        };
        ch.soft_reset().unwrap();
        ch.identify(Drive::Master).unwrap();
        let bm = BusMasterDma::new(f, BM).unwrap();
        f.clear_log();
        (ch, bm)
    }

    fn patterns(lba: u64, n: u64) -> Vec<u8> {
        (lba..lba + n).flat_map(pattern).collect()
    }

    #[test]
    fn prd_splits_at_64k_and_marks_the_end() {
        assert_eq!(
            build_prd(&[r(0xFFF0, 0x20)]).unwrap(),
            [e(0xFFF0, 0x10, 0), e(0x1_0000, 0x10, PRD_EOT)]
        );
        // Exactly 64 KiB is encoded as 0.
        let one = build_prd(&[r(0x2_0000, 0x1_0000)]).unwrap();
        assert_eq!(one, [e(0x2_0000, 0, PRD_EOT)]);
        assert_eq!(one[0].len(), 0x1_0000);
        assert_eq!(
            build_prd(&[r(0x1_0000, 0x2_0000), r(0x8000_0000, 0x200)]).unwrap(),
            [
                e(0x1_0000, 0, 0),
                e(0x2_0000, 0, 0),
                e(0x8000_0000, 0x200, PRD_EOT)
            ]
        );
        // An unaligned 128 KiB buffer takes three entries.
        let three = build_prd(&[r(0x3_8000, 0x2_0000)]).unwrap();
        assert_eq!(
            three,
            [
                e(0x3_8000, 0x8000, 0),
                e(0x4_0000, 0, 0),
                e(0x5_0000, 0x8000, PRD_EOT)
            ]
        );
        assert_eq!(e(0, 0, 0).to_bytes(), [0; 8]);
        assert_eq!(
            e(0x1234_5678, 0x9ABC, PRD_EOT).to_bytes(),
            [0x78, 0x56, 0x34, 0x12, 0xBC, 0x9A, 0x00, 0x80]
        );
    }

    #[test]
    fn prd_rejects_unusable_regions() {
        for bad in [
            r(0x1001, 0x200),
            r(0x1000, 0x201),
            r(0x1000, 0),
            r(0x1_0000_0000, 0x200),
            r(0xFFFF_FF00, 0x200),
        ] {
            assert_eq!(
                build_prd(&[r(0x4000, 0x200), bad]),
                Err(AtaError::BadDmaRegion {
                    phys: bad.phys,
                    len: bad.len
                })
            );
        }
        assert!(build_prd(&[]).is_err());
        assert!(build_prd(&[r(0xFFFF_FE00, 0x200)]).is_ok());
    }

    #[test]
    fn prd_table_limit_cuts_at_a_sector_boundary() {
        let regions = [r(0x1000, 300), r(0x3000, 300), r(0x5000, 424)];
        let (entries, bytes) = fill_prd(&regions, 0, 1024, 2).unwrap();
        assert_eq!(bytes, 512);
        assert_eq!(entries, [e(0x1000, 300, 0), e(0x3000, 212, PRD_EOT)]);
        // Continue from there.
        let (entries, bytes) = fill_prd(&regions, 512, 512, 2).unwrap();
        assert_eq!(bytes, 512);
        assert_eq!(entries, [e(0x3000 + 212, 88, 0), e(0x5000, 424, PRD_EOT)]);
    }

    #[test]
    fn dma_read_write_round_trip() {
        let f = Fake::new(Some(Disk::new(10_000, false)), None);
        let (mut ch, mut bm) = setup(&f);
        let mut buf = f.dma_alloc(4 * 512, 4096).unwrap();
        bm.read(&mut ch, Drive::Master, 10, &mut buf).unwrap();
        assert!(buf.as_slice() == patterns(10, 4));
        assert_eq!(f.writes(7), [cmd::READ_DMA]);
        assert_eq!(
            f.st.borrow().bm_cmd,
            BmCommand::WRITE_TO_MEMORY.bits(),
            "stopped"
        );

        for (i, b) in buf.as_mut_slice().iter_mut().enumerate() {
            *b = (i % 241) as u8;
        }
        bm.write(&mut ch, Drive::Master, 500, &buf).unwrap();
        assert_eq!(
            f.st.borrow().bm_cmd,
            0,
            "stopped, direction memory-to-device"
        );
        let mut back = vec![0u8; 4 * 512];
        ch.read_pio(Drive::Master, 500, &mut back).unwrap();
        assert!(back[..] == *buf.as_slice());
        assert_eq!(
            f.writes(7),
            [cmd::READ_DMA, cmd::WRITE_DMA, cmd::READ_SECTORS]
        );
        assert!(f.violations().is_empty(), "{:?}", f.violations());
        f.dma_free(buf);
    }

    #[test]
    fn dma_port_accesses() {
        let f = Fake::new(Some(Disk::new(10_000, false)), None);
        let (mut ch, mut bm) = setup(&f);
        let mut buf = f.dma_alloc(8 * 512, 4096).unwrap();
        bm.read(&mut ch, Drive::Master, 0, &mut buf).unwrap();
        // PRD address, direction, clear status, 6 taskfile, start, settle, status, BM status,
        // stop.
        assert_eq!(
            f.log().len(),
            1 + 1 + 1 + 6 + 1 + 1 + 1 + 1 + 1,
            "{:?}",
            f.log()
        );
        f.clear_log();
        bm.read(&mut ch, Drive::Master, 8, &mut buf).unwrap();
        assert_eq!(f.log().len(), 12, "PRD address and direction not rewritten");
        assert!(buf.as_slice() == patterns(8, 8));
        f.dma_free(buf);
    }

    #[test]
    fn dma_buffer_across_64k_and_lba48() {
        let f = Fake::new(Some(Disk::new(1 << 36, true)), None);
        let (mut ch, mut bm) = setup(&f);
        let mut buf = f.alloc_at(0x2_FF00, 3 * 512);
        let lba = 0x9_0000_0000;
        bm.read(&mut ch, Drive::Master, lba, &mut buf).unwrap();
        assert!(buf.as_slice() == patterns(lba, 3));
        buf.as_mut_slice().fill(0xEE);
        bm.write(&mut ch, Drive::Master, lba + 1, &buf).unwrap();
        assert_eq!(f.disk(0, |d| d.store[&(lba + 3)]), [0xEE; 512]);
        assert_eq!(f.writes(7), [cmd::READ_DMA_EXT, cmd::WRITE_DMA_EXT]);
        // The fake flags any PRD entry crossing 64 KiB.
        assert!(f.violations().is_empty(), "{:?}", f.violations());
    }

    #[test]
    fn dma_splits_large_requests() {
        let f = Fake::new(Some(Disk::new(10_000, false)), None);
        let (mut ch, mut bm) = setup(&f);
        let mut buf = f.dma_alloc(300 * 512, 4096).unwrap();
        bm.read(&mut ch, Drive::Master, 100, &mut buf).unwrap();
        assert!(buf.as_slice() == patterns(100, 300));
        assert_eq!(f.writes(7), [cmd::READ_DMA; 2]);
        assert_eq!(f.writes(2), [0, 44]);
        assert!(f.violations().is_empty(), "{:?}", f.violations());
    }

    #[test]
    fn scatter_gather_regions() {
        let f = Fake::new(Some(Disk::new(10_000, false)), None);
        let (mut ch, mut bm) = setup(&f);
        let a = f.alloc_at(0x40_0000, 512 + 256);
        let b = f.alloc_at(0x50_0000, 256);
        let regions = [r(a.phys(), a.len()), r(b.phys(), b.len())];
        // SAFETY: both regions are fake DMA memory owned by this test and untouched meanwhile.
        unsafe { bm.transfer_regions(&mut ch, Drive::Master, 77, &regions, false) }.unwrap();
        let mut got = a.as_slice().to_vec();
        got.extend_from_slice(b.as_slice());
        assert!(got == patterns(77, 2));
        assert!(f.violations().is_empty(), "{:?}", f.violations());
    }

    #[test]
    fn dma_errors() {
        let f = Fake::new(Some(Disk::new(10_000, false)), None);
        let (mut ch, mut bm) = setup(&f);
        let mut buf = f.dma_alloc(2 * 512, 4096).unwrap();
        f.disk(0, |d| d.bm_fail = true);
        assert_eq!(
            bm.read(&mut ch, Drive::Master, 0, &mut buf),
            Err(AtaError::BusMaster {
                bm_status: BmStatus::ERROR.bits()
            })
        );
        assert_eq!(f.st.borrow().bm_cmd & 1, 0, "engine stopped");
        f.disk(0, |d| d.bm_fail = false);
        // The next command clears the error bit and works.
        bm.read(&mut ch, Drive::Master, 0, &mut buf).unwrap();
        assert!(buf.as_slice() == patterns(0, 2));

        f.disk(0, |d| d.fail = Some((1, IDNF)));
        assert_eq!(
            bm.read(&mut ch, Drive::Master, 0, &mut buf),
            Err(AtaError::IdNotFound {
                error: ErrorReg::IDNF
            })
        );
        assert_eq!(f.st.borrow().bm_cmd & 1, 0, "engine stopped");
        f.disk(0, |d| d.fail = None);

        f.clear_log();
        assert!(matches!(
            bm.read(&mut ch, Drive::Master, 9_999, &mut buf),
            Err(AtaError::OutOfRange { .. })
        ));
        let odd = f.alloc_at(0x60_0001, 512);
        assert_eq!(
            bm.write(&mut ch, Drive::Master, 0, &odd),
            Err(AtaError::BadDmaRegion {
                phys: 0x60_0001,
                len: 512
            })
        );
        assert!(f.log().is_empty(), "refused before any I/O");

        f.disk(0, |d| d.stuck_busy = true);
        assert!(matches!(
            bm.read(&mut ch, Drive::Master, 0, &mut buf),
            Err(AtaError::Timeout { .. })
        ));
        assert_eq!(
            f.st.borrow().bm_cmd & 1,
            0,
            "engine stopped after a timeout"
        );
        assert!(f.violations().is_empty(), "{:?}", f.violations());
    }

    #[test]
    fn interrupt_driven_dma() {
        let f = Fake::new(Some(Disk::new(10_000, true)), None);
        f.disk(0, |d| d.busy_reads = 2);
        let (mut ch, mut bm) = setup(&f);
        ch.set_interrupt(Some(fake::VECTOR));
        let mut buf = f.dma_alloc(3 * 512, 4096).unwrap();
        bm.read(&mut ch, Drive::Master, 30, &mut buf).unwrap();
        assert!(buf.as_slice() == patterns(30, 3));
        f.disk(0, |d| d.bm_fail = true);
        assert!(matches!(
            bm.read(&mut ch, Drive::Master, 30, &mut buf),
            Err(AtaError::BusMaster { .. })
        ));
        f.disk(0, |d| d.bm_fail = false);
        f.st.borrow_mut().lose_irqs = true;
        assert!(matches!(
            bm.read(&mut ch, Drive::Master, 30, &mut buf),
            Err(AtaError::Timeout {
                waiting_for: WaitFor::Interrupt,
                ..
            })
        ));
        assert!(f.violations().is_empty(), "{:?}", f.violations());
    }

    #[test]
    fn from_pci_and_table_lifetime() {
        let f = Fake::new(Some(Disk::new(100, false)), None);
        let mut func = fake::piix_function();
        assert!(matches!(
            BusMasterDma::from_pci(&f, &func, false),
            Err(AtaError::NoBusMaster)
        ));
        func.bars[4] = Some(Bar::Io {
            port: 0xC000,
            size: 16,
        });
        let bm = BusMasterDma::from_pci(&f, &func, true).unwrap();
        assert_eq!(bm.base(), 0xC008);
        assert_eq!(bm.table_phys % 4096, 0);
        assert_eq!(f.live_allocs(), 1);
        drop(bm);
        assert_eq!(f.live_allocs(), 0, "PRD table freed");
    }
}
