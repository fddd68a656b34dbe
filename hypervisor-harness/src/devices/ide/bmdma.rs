//! The bus-master IDE engine of one channel (SFF-8038i / PIIX): command, status and PRD table
//! pointer registers, and a synchronous transfer that walks the PRD table in guest memory.
//!
//! Register block (8 bytes per channel, [`BmReg`]): +0 command ([`BmCommand`]), +2 status
//! ([`BmStatus`]: error and interrupt write-1-to-clear, active read-only), +4 PRD table pointer
//! (dword aligned). Accesses of any width are handled byte by byte, as QEMU does.
//!
//! A PRD entry ([`PrdEntry`]) is 8 bytes: a 32-bit physical address, a 16-bit byte count (0 =
//! 64 KiB, bit 0 ignored) and 16 bits of flags with end of table in bit 15. The walk is bounded
//! by [`MAX_PRD_ENTRIES`] (a 64 KiB table), and every guest access goes through vm-memory's
//! checked accessors: an address outside guest RAM is a bus-master error, never a host access.

use crate::backends::disk::{DiskBackend, SECTOR_SIZE};
use bitflags::bitflags;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemory};

/// Bytes of one channel's bus-master block (the secondary's follows the primary's).
pub const CHANNEL_BLOCK_LEN: u64 = 8;

/// A register of one channel's bus-master block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BmReg {
    Command,
    Status,
    /// Byte `n` (0..4, least significant first) of the PRD table pointer.
    PrdTable(u8),
}

impl BmReg {
    /// Offset of the PRD table pointer's first byte.
    pub const PRD_TABLE: u64 = 4;

    /// The register byte at `offset` of the block; the reserved bytes (1, 3) are none.
    pub fn at(offset: u64) -> Option<Self> {
        match offset {
            0 => Some(Self::Command),
            2 => Some(Self::Status),
            4..=7 => Some(Self::PrdTable((offset - Self::PRD_TABLE) as u8)),
            _ => None,
        }
    }

    pub fn offset(self) -> u64 {
        match self {
            Self::Command => 0,
            Self::Status => 2,
            Self::PrdTable(n) => Self::PRD_TABLE + u64::from(n),
        }
    }
}

bitflags! {
    /// Bus-master command register.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct BmCommand: u8 {
        /// Start (1) / stop (0) the engine.
        const START = 0x01;
        /// Direction: the engine writes memory (device to memory, a READ DMA).
        const WRITE_TO_MEMORY = 0x08;
    }
}

bitflags! {
    /// Bus-master status register.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct BmStatus: u8 {
        /// The engine is active (read-only).
        const ACTIVE = 0x01;
        /// DMA error (write 1 to clear).
        const ERROR = 0x02;
        /// The drive raised INTRQ (write 1 to clear).
        const INTERRUPT = 0x04;
        /// Drive 0 is DMA capable (read/write, for software).
        const DRIVE0_DMA = 0x20;
        /// Drive 1 is DMA capable (read/write, for software).
        const DRIVE1_DMA = 0x40;
    }
}

/// One physical region descriptor as it lies in guest memory (little-endian fields).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrdEntry {
    addr: u32,
    byte_count: u16,
    flags: u16,
}

// SAFETY: three integers with no padding between or after them (4 + 2 + 2 bytes, alignment 4),
// and every bit pattern is a valid value.
unsafe impl ByteValued for PrdEntry {}

impl PrdEntry {
    /// Flags: the last entry of the table.
    pub const EOT: u16 = 0x8000;

    /// An entry for `byte_count` bytes at `addr` (0 = 64 KiB).
    pub fn new(addr: u32, byte_count: u16, last: bool) -> Self {
        Self {
            addr: addr.to_le(),
            byte_count: byte_count.to_le(),
            flags: if last { Self::EOT.to_le() } else { 0 },
        }
    }

    /// Where the region starts (bit 0 is ignored).
    pub fn addr(&self) -> u64 {
        u64::from(u32::from_le(self.addr) & !1)
    }

    /// Bytes in the region: 2..=65536 (bit 0 is ignored, 0 means 64 KiB).
    pub fn len(&self) -> u64 {
        match u16::from_le(self.byte_count) & !1 {
            0 => 0x1_0000,
            n => u64::from(n),
        }
    }

    /// Never true: an entry describes at least 2 bytes.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn is_last(&self) -> bool {
        u16::from_le(self.flags) & Self::EOT != 0
    }
}

/// Most PRD entries walked for one transfer (a whole 64 KiB table).
pub const MAX_PRD_ENTRIES: usize = 8192;

/// A DMA command as the drive sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaRequest {
    pub lba: u64,
    /// 1..=65536.
    pub sectors: u32,
    /// Device to memory (READ DMA).
    pub to_memory: bool,
}

/// How a transfer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaOutcome {
    /// All data moved. `prd_left`: the table described more memory than the transfer used.
    Done { prd_left: bool },
    /// The table ended (EOT, or [`MAX_PRD_ENTRIES`] without EOT) before the transfer did.
    PrdTooShort,
    /// A PRD entry or a data buffer outside guest memory, or bus mastering disabled.
    MemoryFault,
    /// The disk failed.
    DiskError,
}

/// What a register write asks the controller to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BmEvent {
    None,
    /// The start bit went from 0 to 1: run a pending DMA command.
    Started,
}

#[derive(Debug, Default)]
pub struct BmDma {
    command: BmCommand,
    status: BmStatus,
    prd: u32,
    /// A reusable bounce buffer (at most one PRD region, 64 KiB).
    scratch: Vec<u8>,
}

impl BmDma {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn status(&self) -> BmStatus {
        self.status
    }

    pub fn command(&self) -> BmCommand {
        self.command
    }

    pub fn prd_table(&self) -> u32 {
        self.prd
    }

    /// Firmware's view: which drives are set up for DMA (status bits 5/6).
    pub fn set_drive_capable(&mut self, drive0: bool, drive1: bool) {
        self.status.set(BmStatus::DRIVE0_DMA, drive0);
        self.status.set(BmStatus::DRIVE1_DMA, drive1);
    }

    /// The engine runs: started and not yet finished.
    pub fn is_active(&self) -> bool {
        self.status.contains(BmStatus::ACTIVE)
    }

    /// The drive raised INTRQ (the interrupt bit latches its rising edge).
    pub fn set_interrupt(&mut self) {
        self.status.insert(BmStatus::INTERRUPT);
    }

    fn read_byte(&self, offset: u64) -> u8 {
        match BmReg::at(offset) {
            Some(BmReg::Command) => self.command.bits(),
            Some(BmReg::Status) => self.status.bits(),
            Some(BmReg::PrdTable(n)) => (self.prd >> (8 * n)) as u8,
            None => 0,
        }
    }

    /// A read of `data.len()` bytes at `offset` (0..8) of this channel's block.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .map_or(0, |o| self.read_byte(o));
        }
    }

    /// A write; the caller runs a pending transfer on [`BmEvent::Started`].
    pub fn write(&mut self, offset: u64, data: &[u8]) -> BmEvent {
        let mut event = BmEvent::None;
        for (i, &v) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i as u64) else {
                break;
            };
            match BmReg::at(o) {
                Some(BmReg::Command) => {
                    let v = BmCommand::from_bits_truncate(v);
                    let was = self.command.contains(BmCommand::START);
                    let now = v.contains(BmCommand::START);
                    if was && !now {
                        // Stop: whatever was in flight is abandoned.
                        self.status.remove(BmStatus::ACTIVE);
                    } else if !was && now {
                        self.status.insert(BmStatus::ACTIVE);
                        event = BmEvent::Started;
                    }
                    self.command = v;
                }
                Some(BmReg::Status) => {
                    let v = BmStatus::from_bits_truncate(v);
                    let keep = self.status & BmStatus::ACTIVE;
                    let w1c = (self.status & (BmStatus::ERROR | BmStatus::INTERRUPT)) - v;
                    self.status = keep | w1c | (v & (BmStatus::DRIVE0_DMA | BmStatus::DRIVE1_DMA));
                }
                Some(BmReg::PrdTable(n)) => {
                    let shift = 8 * n;
                    let mask = 0xffu32 << shift;
                    self.prd = ((self.prd & !mask) | ((v as u32) << shift)) & !3;
                }
                None => {}
            }
        }
        event
    }

    /// Move the data of `req` between `disk` and guest memory along the PRD table, and update
    /// the status register: active cleared (unless the table was longer than the transfer),
    /// error set on a fault. The interrupt bit is left to the drive's INTRQ.
    /// `bus_master`: the PCI command register's bus master enable.
    pub fn transfer<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        disk: &dyn DiskBackend,
        req: &DmaRequest,
        bus_master: bool,
    ) -> DmaOutcome {
        let outcome = if bus_master {
            self.walk(mem, disk, req)
        } else {
            DmaOutcome::MemoryFault
        };
        match outcome {
            DmaOutcome::Done { prd_left: true } => {}
            DmaOutcome::Done { prd_left: false } | DmaOutcome::DiskError => {
                self.status.remove(BmStatus::ACTIVE)
            }
            DmaOutcome::PrdTooShort | DmaOutcome::MemoryFault => {
                self.status.remove(BmStatus::ACTIVE);
                self.status.insert(BmStatus::ERROR);
            }
        }
        outcome
    }

    fn walk<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        disk: &dyn DiskBackend,
        req: &DmaRequest,
    ) -> DmaOutcome {
        let total = req.sectors as u64 * SECTOR_SIZE;
        let Some(base) = req.lba.checked_mul(SECTOR_SIZE) else {
            return DmaOutcome::DiskError;
        };
        let mut done = 0u64;
        let mut entry = self.prd as u64;
        for _ in 0..MAX_PRD_ENTRIES {
            let Ok(prd) = mem.read_obj::<PrdEntry>(GuestAddress(entry)) else {
                return DmaOutcome::MemoryFault;
            };
            entry += size_of::<PrdEntry>() as u64;
            let (len, eot) = (prd.len(), prd.is_last());
            let chunk = len.min(total - done) as usize;
            self.scratch.resize(chunk, 0);
            let buf = &mut self.scratch[..chunk];
            let gpa = GuestAddress(prd.addr());
            let pos = base + done;
            if req.to_memory {
                if disk.read_at(pos, buf).is_err() {
                    return DmaOutcome::DiskError;
                }
                if mem.write_slice(buf, gpa).is_err() {
                    return DmaOutcome::MemoryFault;
                }
            } else {
                if mem.read_slice(buf, gpa).is_err() {
                    return DmaOutcome::MemoryFault;
                }
                if disk.write_at(pos, buf).is_err() {
                    return DmaOutcome::DiskError;
                }
            }
            done += chunk as u64;
            if done == total {
                return DmaOutcome::Done {
                    prd_left: !eot || chunk as u64 != len,
                };
            }
            if eot {
                return DmaOutcome::PrdTooShort;
            }
        }
        DmaOutcome::PrdTooShort
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::ide::ata::tests::{pattern, TempImage};
    use vm_memory::GuestMemoryMmap;

    const RAM: u64 = 4 << 20;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
    }

    fn prd(mem: &GuestMemoryMmap<()>, table: u64, entries: &[(u32, u16, bool)]) {
        for (i, &(addr, count, eot)) in entries.iter().enumerate() {
            mem.write_obj(
                PrdEntry::new(addr, count, eot),
                GuestAddress(table + 8 * i as u64),
            )
            .unwrap();
        }
    }

    const COMMAND: u64 = 0;
    const STATUS: u64 = 2;

    fn started(table: u32, to_memory: bool) -> BmDma {
        let mut bm = BmDma::new();
        bm.write(BmReg::PRD_TABLE, &table.to_le_bytes());
        let dir = if to_memory {
            BmCommand::WRITE_TO_MEMORY
        } else {
            BmCommand::empty()
        };
        let start = dir | BmCommand::START;
        assert_eq!(bm.write(COMMAND, &[start.bits()]), BmEvent::Started);
        assert!(bm.is_active());
        bm
    }

    fn expected(lba: u64, sectors: u64) -> Vec<u8> {
        (0..sectors * SECTOR_SIZE)
            .map(|i| pattern(lba + i / SECTOR_SIZE, (i % SECTOR_SIZE) as usize))
            .collect()
    }

    #[test]
    fn registers() {
        let mut bm = BmDma::new();
        bm.write(BmReg::PRD_TABLE, &0x1234_5677u32.to_le_bytes());
        let mut d = [0u8; 4];
        bm.read(BmReg::PRD_TABLE, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x1234_5674);
        bm.write(BmReg::PRD_TABLE + 2, &[0xcd, 0xab]);
        assert_eq!(bm.prd_table(), 0xabcd_5674);
        bm.write(COMMAND, &[0xff]);
        assert_eq!(bm.command(), BmCommand::START | BmCommand::WRITE_TO_MEMORY);
        assert_eq!(bm.status(), BmStatus::ACTIVE);
        bm.set_interrupt();
        bm.status |= BmStatus::ERROR;
        // Write 1 clears error/interrupt; active is read-only; bits 5/6 are plain RW.
        let v = BmStatus::INTERRUPT | BmStatus::DRIVE0_DMA | BmStatus::ACTIVE;
        bm.write(STATUS, &[v.bits()]);
        assert_eq!(
            bm.status(),
            BmStatus::ACTIVE | BmStatus::ERROR | BmStatus::DRIVE0_DMA
        );
        bm.write(STATUS, &[BmStatus::ERROR.bits()]);
        assert_eq!(bm.status(), BmStatus::ACTIVE);
        bm.write(COMMAND, &[0]);
        assert!(!bm.is_active());
        // Odd offsets and widths.
        let mut big = [0xaau8; 16];
        bm.read(3, &mut big);
        bm.read(u64::MAX, &mut big);
        bm.write(u64::MAX - 1, &[1, 2, 3, 4]);
        bm.write(1, &[0xff; 9]);
    }

    #[test]
    fn read_dma_multiple_entries() {
        let img = TempImage::new(64);
        let disk = img.open(false);
        let m = mem();
        // 3 sectors: 1000 + 36 + 500 bytes (a sector straddles entries).
        prd(
            &m,
            0x1000,
            &[
                (0x10000, 1000, false),
                (0x20000, 36, false),
                (0x30001, 500, true),
            ],
        );
        let mut bm = started(0x1000, true);
        let req = DmaRequest {
            lba: 7,
            sectors: 3,
            to_memory: true,
        };
        assert_eq!(
            bm.transfer(&m, &disk, &req, true),
            DmaOutcome::Done { prd_left: false }
        );
        assert!(!bm.is_active());
        let want = expected(7, 3);
        let mut got = vec![0u8; 1536];
        m.read_slice(&mut got[..1000], GuestAddress(0x10000))
            .unwrap();
        m.read_slice(&mut got[1000..1036], GuestAddress(0x20000))
            .unwrap();
        m.read_slice(&mut got[1036..], GuestAddress(0x30000))
            .unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn write_dma_count_zero_is_64k_and_lands_in_file() {
        let img = TempImage::new(256);
        let disk = img.open(false);
        let m = mem();
        let data: Vec<u8> = (0..0x10000u32 + 512)
            .map(|i| ((i * 7) >> 3) as u8)
            .collect();
        m.write_slice(&data, GuestAddress(0x100000)).unwrap();
        prd(&m, 0x2000, &[(0x100000, 0, false), (0x110000, 512, true)]);
        let mut bm = started(0x2000, false);
        let req = DmaRequest {
            lba: 100,
            sectors: 129,
            to_memory: false,
        };
        assert_eq!(
            bm.transfer(&m, &disk, &req, true),
            DmaOutcome::Done { prd_left: false }
        );
        let file = std::fs::read(img.path()).unwrap();
        assert_eq!(&file[100 * 512..229 * 512], &data[..]);
        assert_eq!(file[99 * 512], pattern(99, 0));
        assert_eq!(file[229 * 512], pattern(229, 0));
    }

    #[test]
    fn longer_table_keeps_active() {
        let img = TempImage::new(8);
        let disk = img.open(false);
        let m = mem();
        prd(&m, 0x1000, &[(0x10000, 0, true)]);
        let mut bm = started(0x1000, true);
        let req = DmaRequest {
            lba: 0,
            sectors: 1,
            to_memory: true,
        };
        assert_eq!(
            bm.transfer(&m, &disk, &req, true),
            DmaOutcome::Done { prd_left: true }
        );
        assert!(bm.is_active());
        assert!(!bm.status().contains(BmStatus::ERROR));
    }

    #[test]
    fn short_table_is_an_error() {
        let img = TempImage::new(8);
        let disk = img.open(false);
        let m = mem();
        prd(&m, 0x1000, &[(0x10000, 512, true)]);
        let mut bm = started(0x1000, true);
        let req = DmaRequest {
            lba: 0,
            sectors: 2,
            to_memory: true,
        };
        assert_eq!(bm.transfer(&m, &disk, &req, true), DmaOutcome::PrdTooShort);
        assert_eq!(
            bm.status() & (BmStatus::ACTIVE | BmStatus::ERROR),
            BmStatus::ERROR
        );
    }

    #[test]
    fn addresses_outside_ram() {
        let img = TempImage::new(8);
        let disk = img.open(false);
        let m = mem();
        let req = DmaRequest {
            lba: 0,
            sectors: 1,
            to_memory: true,
        };
        // Data buffer beyond RAM, and straddling its end.
        for addr in [0xfff0_0000u32, RAM as u32 - 256] {
            prd(&m, 0x1000, &[(addr, 512, true)]);
            let mut bm = started(0x1000, true);
            assert_eq!(bm.transfer(&m, &disk, &req, true), DmaOutcome::MemoryFault);
            assert_eq!(
                bm.status() & (BmStatus::ACTIVE | BmStatus::ERROR),
                BmStatus::ERROR
            );
        }
        // The table itself beyond RAM.
        let mut bm = started(0xffff_fff8, true);
        assert_eq!(bm.transfer(&m, &disk, &req, true), DmaOutcome::MemoryFault);
        // Bus mastering disabled.
        prd(&m, 0x1000, &[(0x10000, 512, true)]);
        let mut bm = started(0x1000, true);
        assert_eq!(bm.transfer(&m, &disk, &req, false), DmaOutcome::MemoryFault);
        let req = DmaRequest {
            to_memory: false,
            ..req
        };
        prd(&m, 0x1000, &[(RAM as u32, 512, true)]);
        let mut bm = started(0x1000, false);
        assert_eq!(bm.transfer(&m, &disk, &req, true), DmaOutcome::MemoryFault);
        assert_eq!(img.sector(0)[0], pattern(0, 0));
    }

    #[test]
    fn missing_eot_is_bounded() {
        let img = TempImage::new(64);
        let disk = img.open(false);
        let m = mem();
        // More entries than the bound, none with EOT, 2 bytes each: the bound ends the walk.
        let entry = [0x00, 0x00, 0x30, 0x00, 2, 0, 0, 0];
        for i in 0..(MAX_PRD_ENTRIES as u64 + 16) {
            m.write_slice(&entry, GuestAddress(0x10000 + i * 8))
                .unwrap();
        }
        for i in 0..8 {
            m.write_slice(&entry, GuestAddress(RAM - 64 + i * 8))
                .unwrap();
        }
        let req = DmaRequest {
            lba: 0,
            sectors: 64,
            to_memory: true,
        };
        let mut bm = started(0x10000, true);
        assert_eq!(bm.transfer(&m, &disk, &req, true), DmaOutcome::PrdTooShort);
        // A table running off the end of RAM stops there.
        let mut bm = started(RAM as u32 - 64, true);
        assert_eq!(bm.transfer(&m, &disk, &req, true), DmaOutcome::MemoryFault);
    }
}
