//! The bus-master IDE engine of one channel (SFF-8038i / PIIX): command, status and PRD table
//! pointer registers, and a synchronous transfer that walks the PRD table in guest memory.
//!
//! Register block (8 bytes per channel): +0 command (bit 0 start/stop, bit 3 direction: 1 =
//! write to memory), +2 status (bit 0 active, bit 1 error and bit 2 interrupt write-1-to-clear,
//! bits 5/6 drive DMA capable), +4 PRD table pointer (dword aligned). Accesses of any width are
//! handled byte by byte, as QEMU does.
//!
//! A PRD entry is 8 bytes: a 32-bit physical address, a 16-bit byte count (0 = 64 KiB, bit 0
//! ignored) and, in the last dword, bit 31 = end of table. The walk is bounded by
//! [`MAX_PRD_ENTRIES`] (a 64 KiB table), and every guest access goes through vm-memory's
//! checked accessors: an address outside guest RAM is a bus-master error, never a host access.

use crate::backends::disk::{DiskBackend, SECTOR_SIZE};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

pub const REG_COMMAND: u64 = 0;
pub const REG_STATUS: u64 = 2;
pub const REG_PRD: u64 = 4;

pub const CMD_START: u8 = 0x01;
pub const CMD_WRITE_TO_MEMORY: u8 = 0x08;

pub const ST_ACTIVE: u8 = 0x01;
pub const ST_ERROR: u8 = 0x02;
pub const ST_INTERRUPT: u8 = 0x04;
pub const ST_DRIVE0_DMA: u8 = 0x20;
pub const ST_DRIVE1_DMA: u8 = 0x40;

/// Most PRD entries walked for one transfer (a whole 64 KiB table).
pub const MAX_PRD_ENTRIES: usize = 8192;

const PRD_EOT: u32 = 1 << 31;

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
    command: u8,
    status: u8,
    prd: u32,
    /// A reusable bounce buffer (at most one PRD region, 64 KiB).
    scratch: Vec<u8>,
}

impl BmDma {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn status(&self) -> u8 {
        self.status
    }

    pub fn command(&self) -> u8 {
        self.command
    }

    pub fn prd_table(&self) -> u32 {
        self.prd
    }

    /// Firmware's view: which drives are set up for DMA (status bits 5/6).
    pub fn set_drive_capable(&mut self, drive0: bool, drive1: bool) {
        self.status &= !(ST_DRIVE0_DMA | ST_DRIVE1_DMA);
        if drive0 {
            self.status |= ST_DRIVE0_DMA;
        }
        if drive1 {
            self.status |= ST_DRIVE1_DMA;
        }
    }

    /// The engine runs: started and not yet finished.
    pub fn is_active(&self) -> bool {
        self.status & ST_ACTIVE != 0
    }

    /// The drive raised INTRQ (the interrupt bit latches its rising edge).
    pub fn set_interrupt(&mut self) {
        self.status |= ST_INTERRUPT;
    }

    fn read_byte(&self, offset: u64) -> u8 {
        match offset {
            REG_COMMAND => self.command,
            REG_STATUS => self.status,
            4..=7 => (self.prd >> (8 * (offset - 4))) as u8,
            _ => 0,
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
            match o {
                REG_COMMAND => {
                    let was = self.command & CMD_START != 0;
                    let now = v & CMD_START != 0;
                    if was && !now {
                        // Stop: whatever was in flight is abandoned.
                        self.status &= !ST_ACTIVE;
                    } else if !was && now {
                        self.status |= ST_ACTIVE;
                        event = BmEvent::Started;
                    }
                    self.command = v & (CMD_START | CMD_WRITE_TO_MEMORY);
                }
                REG_STATUS => {
                    let keep = self.status & ST_ACTIVE;
                    let w1c = self.status & (ST_ERROR | ST_INTERRUPT) & !v;
                    self.status = keep | w1c | (v & (ST_DRIVE0_DMA | ST_DRIVE1_DMA));
                }
                4..=7 => {
                    let shift = 8 * (o - 4);
                    let mask = 0xffu32 << shift;
                    self.prd = ((self.prd & !mask) | ((v as u32) << shift)) & !3;
                }
                _ => {}
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
                self.status &= !ST_ACTIVE
            }
            DmaOutcome::PrdTooShort | DmaOutcome::MemoryFault => {
                self.status = (self.status & !ST_ACTIVE) | ST_ERROR;
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
            let mut raw = [0u8; 8];
            if mem.read_slice(&mut raw, GuestAddress(entry)).is_err() {
                return DmaOutcome::MemoryFault;
            }
            entry += 8;
            let addr = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) & !1;
            let flags = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
            let len = match flags & 0xfffe {
                0 => 0x1_0000u64,
                n => n as u64,
            };
            let eot = flags & PRD_EOT != 0;
            let chunk = len.min(total - done) as usize;
            self.scratch.resize(chunk, 0);
            let buf = &mut self.scratch[..chunk];
            let gpa = GuestAddress(addr as u64);
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
            let flags = count as u32 | if eot { PRD_EOT } else { 0 };
            let mut e = addr.to_le_bytes().to_vec();
            e.extend_from_slice(&flags.to_le_bytes());
            mem.write_slice(&e, GuestAddress(table + 8 * i as u64))
                .unwrap();
        }
    }

    fn started(table: u32, to_memory: bool) -> BmDma {
        let mut bm = BmDma::new();
        bm.write(REG_PRD, &table.to_le_bytes());
        let dir = if to_memory { CMD_WRITE_TO_MEMORY } else { 0 };
        assert_eq!(bm.write(REG_COMMAND, &[dir | CMD_START]), BmEvent::Started);
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
        bm.write(REG_PRD, &0x1234_5677u32.to_le_bytes());
        let mut d = [0u8; 4];
        bm.read(REG_PRD, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x1234_5674);
        bm.write(REG_PRD + 2, &[0xcd, 0xab]);
        assert_eq!(bm.prd_table(), 0xabcd_5674);
        bm.write(REG_COMMAND, &[0xff]);
        assert_eq!(bm.command(), CMD_START | CMD_WRITE_TO_MEMORY);
        assert_eq!(bm.status(), ST_ACTIVE);
        bm.set_interrupt();
        bm.status |= ST_ERROR;
        // Write 1 clears error/interrupt; active is read-only; bits 5/6 are plain RW.
        bm.write(REG_STATUS, &[ST_INTERRUPT | ST_DRIVE0_DMA | ST_ACTIVE]);
        assert_eq!(bm.status(), ST_ACTIVE | ST_ERROR | ST_DRIVE0_DMA);
        bm.write(REG_STATUS, &[ST_ERROR]);
        assert_eq!(bm.status(), ST_ACTIVE);
        bm.write(REG_COMMAND, &[0]);
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
        assert_eq!(bm.status() & ST_ERROR, 0);
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
        assert_eq!(bm.status() & (ST_ACTIVE | ST_ERROR), ST_ERROR);
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
            assert_eq!(bm.status() & (ST_ACTIVE | ST_ERROR), ST_ERROR);
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
