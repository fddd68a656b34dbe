//! One ATA channel (up to two drives) as a taskfile state machine: the command block registers
//! (with the LBA48 two-deep register FIFOs), the device control register, per-drive status and
//! error, the PIO data buffer and the commands. No port or bus glue: [`super::piix`] maps ports
//! to [`AtaChannel::read_reg`] / [`AtaChannel::write_reg`] and runs DMA through
//! [`super::bmdma`].
//!
//! Everything completes synchronously, so the guest never has to observe BSY (except while SRST
//! is held). INTRQ follows the ATA rules: asserted when a PIO data-in block is ready, after each
//! PIO data-out block and at command completion; negated by a status read, a command write or
//! SRST. As in QEMU, an assertion while nIEN is set is dropped, and a line already asserted does
//! not produce a second edge.

use super::bmdma::DmaRequest;
use super::identify::*;
use crate::backends::disk::{DiskBackend, SECTOR_SIZE};
use crate::devices::Interrupt;
use bitflags::bitflags;
use std::sync::Arc;
use vm_memory::ByteValued;

const SECTOR: usize = SECTOR_SIZE as usize;
// IDENTIFY data goes out through the PIO buffer as one block.
const _: () = assert!(IDENTIFY_LEN == SECTOR);

/// The command block registers, by their offset from the block's base (ATA-7 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskfileReg {
    Data = 0,
    /// Read: error; write: features.
    ErrorFeature = 1,
    Count = 2,
    LbaLow = 3,
    LbaMid = 4,
    LbaHigh = 5,
    Device = 6,
    /// Read: status (acknowledges INTRQ); write: command.
    StatusCommand = 7,
}

impl TaskfileReg {
    /// In offset order.
    pub const ALL: [Self; 8] = [
        Self::Data,
        Self::ErrorFeature,
        Self::Count,
        Self::LbaLow,
        Self::LbaMid,
        Self::LbaHigh,
        Self::Device,
        Self::StatusCommand,
    ];

    /// The register at `offset` of the command block, if any.
    pub fn at(offset: u64) -> Option<Self> {
        usize::try_from(offset)
            .ok()
            .and_then(|o| Self::ALL.get(o))
            .copied()
    }
}

bitflags! {
    /// Status / alternate status register.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Status: u8 {
        /// Busy: the other bits are not valid.
        const BSY = 0x80;
        /// Device ready.
        const DRDY = 0x40;
        /// Device fault.
        const DF = 0x20;
        /// Seek complete (obsolete), kept set as drives do.
        const DSC = 0x10;
        /// Data request: a data block can move.
        const DRQ = 0x08;
        /// The command failed; the error register says why.
        const ERR = 0x01;
    }
}

bitflags! {
    /// Error register (valid when [`Status::ERR`] is set; diagnostic code after a reset).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ErrorReg: u8 {
        /// Uncorrectable data error (the backend failed).
        const UNC = 0x40;
        /// ID (address) not found: outside the disk, or a bad CHS address.
        const IDNF = 0x10;
        /// Command aborted.
        const ABRT = 0x04;
        /// Address mark not found; after a reset, diagnostic code 01h "no error".
        const AMNF = 0x01;
    }
}

bitflags! {
    /// Device control register (control block, write-only).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct DeviceControl: u8 {
        /// High order byte: reads of the LBA48 registers return the previous bytes.
        const HOB = 0x80;
        /// Software reset of both devices on the channel.
        const SRST = 0x04;
        /// Interrupts disabled (INTRQ not asserted).
        const NIEN = 0x02;
    }
}

bitflags! {
    /// Device/head register. All eight bits read back as written.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct DeviceReg: u8 {
        /// Obsolete, traditionally set.
        const OBS7 = 0x80;
        /// LBA addressing (else CHS).
        const LBA = 0x40;
        /// Obsolete, traditionally set.
        const OBS5 = 0x20;
        /// Selects device 1 (slave).
        const DEV = 0x10;
        /// LBA bits 27:24 (LBA28) or the head number (CHS).
        const HEAD = 0x0f;
    }
}

// Commands.
pub const CMD_READ_SECTORS: u8 = 0x20;
pub const CMD_READ_SECTORS_NR: u8 = 0x21;
pub const CMD_READ_SECTORS_EXT: u8 = 0x24;
pub const CMD_READ_DMA_EXT: u8 = 0x25;
pub const CMD_READ_NATIVE_MAX_EXT: u8 = 0x27;
pub const CMD_WRITE_SECTORS: u8 = 0x30;
pub const CMD_WRITE_SECTORS_NR: u8 = 0x31;
pub const CMD_WRITE_SECTORS_EXT: u8 = 0x34;
pub const CMD_WRITE_DMA_EXT: u8 = 0x35;
pub const CMD_SEEK: u8 = 0x70;
/// RECALIBRATE (obsolete): any of 10h-1Fh.
pub const CMD_RECALIBRATE_FIRST: u8 = 0x10;
pub const CMD_RECALIBRATE_LAST: u8 = 0x1f;
/// The ATA-1 opcodes of STANDBY IMMEDIATE, IDLE IMMEDIATE, STANDBY and IDLE: 94h-97h.
pub const CMD_OLD_POWER_FIRST: u8 = 0x94;
pub const CMD_OLD_POWER_LAST: u8 = 0x97;
pub const CMD_DIAGNOSTIC: u8 = 0x90;
pub const CMD_INIT_PARAMS: u8 = 0x91;
pub const CMD_READ_DMA: u8 = 0xc8;
pub const CMD_READ_DMA_NR: u8 = 0xc9;
pub const CMD_WRITE_DMA: u8 = 0xca;
pub const CMD_WRITE_DMA_NR: u8 = 0xcb;
pub const CMD_STANDBY_IMMEDIATE: u8 = 0xe0;
pub const CMD_IDLE_IMMEDIATE: u8 = 0xe1;
pub const CMD_STANDBY: u8 = 0xe2;
pub const CMD_IDLE: u8 = 0xe3;
pub const CMD_CHECK_POWER: u8 = 0xe5;
pub const CMD_FLUSH_CACHE: u8 = 0xe7;
pub const CMD_FLUSH_CACHE_EXT: u8 = 0xea;
pub const CMD_IDENTIFY: u8 = 0xec;
pub const CMD_SET_FEATURES: u8 = 0xef;
pub const CMD_READ_NATIVE_MAX: u8 = 0xf8;

/// SET FEATURES subcommands (features register).
mod set_features {
    /// Set the transfer mode from the count register (ATA-7 §6.49.13): PIO default (00h, 01h),
    /// PIO flow control modes (08h + n), multiword DMA (20h + n), Ultra DMA (40h + n).
    pub const TRANSFER_MODE: u8 = 0x03;
    pub const PIO_DEFAULT: u8 = 0x00;
    pub const PIO_DEFAULT_NO_IORDY: u8 = 0x01;
    pub const PIO_FLOW_CONTROL: u8 = 0x08;
    pub const MULTIWORD_DMA: u8 = 0x20;
    pub const ULTRA_DMA: u8 = 0x40;
    /// Accepted and ignored: write cache on/off (02h/82h), read look-ahead off/on (55h/AAh),
    /// reverting to power-on defaults off/on (66h/CCh).
    pub const IGNORED: [u8; 6] = [0x02, 0x82, 0x55, 0xaa, 0x66, 0xcc];
}

/// CHECK POWER MODE's answer in the count register.
const POWER_MODE_ACTIVE_OR_IDLE: u8 = 0xff;

/// Largest LBA28 capacity (IDENTIFY words 60-61).
pub const LBA28_MAX_SECTORS: u64 = 0x0fff_ffff;

pub const MODEL: &str = "HARNESS IDE DISK";
pub const FIRMWARE: &str = "1.0";

/// The transfer mode chosen with SET FEATURES (reflected in IDENTIFY words 63 and 88).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pio,
    MultiwordDma(u8),
    UltraDma(u8),
}

/// A disk on the channel.
pub struct Drive {
    disk: Box<dyn DiskBackend>,
    serial: String,
    status: Status,
    error: ErrorReg,
    mode: Mode,
    /// CHS translation (INITIALIZE DEVICE PARAMETERS may change heads and sectors per track).
    heads: u16,
    spt: u16,
}

impl Drive {
    /// `index`: 0..=3 in attach order (used for the serial number).
    pub fn new(disk: Box<dyn DiskBackend>, index: usize) -> Self {
        Self {
            disk,
            serial: format!("HARNESS{:013}", index + 1),
            status: Status::DRDY | Status::DSC,
            error: ErrorReg::AMNF,
            mode: Mode::UltraDma(5),
            heads: 16,
            spt: 63,
        }
    }

    pub fn disk(&self) -> &dyn DiskBackend {
        &*self.disk
    }

    fn sectors(&self) -> u64 {
        self.disk.sectors()
    }

    fn cylinders(&self) -> u16 {
        let per_cyl = self.heads as u64 * self.spt as u64;
        (self.sectors() / per_cyl.max(1)).min(16383) as u16
    }

    /// IDENTIFY DEVICE data, integrity word included.
    pub fn identify(&self) -> IdentifyData {
        let sectors = self.sectors();
        let lba28 = sectors.min(LBA28_MAX_SECTORS);
        let cyls = self.cylinders();
        let chs = cyls as u64 * self.heads as u64 * self.spt as u64;
        let selected = |n: u8| 1u16 << (DMA_MODE_SELECTED_SHIFT + n);
        let (mwdma_selected, udma_selected) = match self.mode {
            Mode::Pio => (0, 0),
            Mode::MultiwordDma(n) => (selected(n), 0),
            Mode::UltraDma(n) => (0, selected(n)),
        };
        let mut id = IdentifyData {
            general_config: GENERAL_CONFIG_FIXED.into(),
            cylinders: cyls.into(),
            heads: self.heads.into(),
            sectors_per_track: self.spt.into(),
            serial: ata_string(&self.serial),
            firmware: ata_string(FIRMWARE),
            model: ata_string(MODEL),
            max_sectors_per_multiple: MULTIPLE_NOT_SUPPORTED.into(),
            capabilities: (CAP_IORDY | CAP_LBA | CAP_DMA).into(),
            capabilities_2: WORD_VALID.into(),
            pio_timing: LEGACY_TIMING_MODE_2.into(),
            dma_timing: LEGACY_TIMING_MODE_2.into(),
            field_validity: (VALID_54_58 | VALID_64_70 | VALID_88).into(),
            current_cylinders: cyls.into(),
            current_heads: self.heads.into(),
            current_sectors_per_track: self.spt.into(),
            current_chs_sectors: le_words(chs),
            lba28_sectors: le_words(lba28),
            multiword_dma: (MWDMA_0_2_SUPPORTED | mwdma_selected).into(),
            pio_modes: PIO_3_4_SUPPORTED.into(),
            min_mwdma_cycle_ns: MIN_CYCLE_NS.into(),
            recommended_mwdma_cycle_ns: MIN_CYCLE_NS.into(),
            min_pio_cycle_ns: MIN_CYCLE_NS.into(),
            min_pio_iordy_cycle_ns: MIN_CYCLE_NS.into(),
            major_version: MAJOR_VERSION_ATA4_TO_7.into(),
            commands_supported: (FEATURE_NOP | FEATURE_WRITE_CACHE).into(),
            commands_supported_2: (WORD_VALID
                | FEATURE2_FLUSH_CACHE_EXT
                | FEATURE2_FLUSH_CACHE
                | FEATURE2_LBA48)
                .into(),
            commands_supported_ext: WORD_VALID.into(),
            commands_enabled: (FEATURE_NOP | FEATURE_WRITE_CACHE).into(),
            commands_enabled_2: (FEATURE2_FLUSH_CACHE_EXT | FEATURE2_FLUSH_CACHE | FEATURE2_LBA48)
                .into(),
            commands_default: WORD_VALID.into(),
            ultra_dma: (UDMA_0_5_SUPPORTED | udma_selected).into(),
            hardware_reset_result: HW_RESET_RESULT.into(),
            lba48_sectors: le_words(sectors),
            sector_size: WORD_VALID.into(),
            ..IdentifyData::zeroed()
        };
        id.seal();
        id
    }
}

/// A taskfile register with its "previous content" (the LBA48 high-order byte).
#[derive(Debug, Clone, Copy, Default)]
struct Fifo {
    cur: u8,
    prev: u8,
}

impl Fifo {
    fn push(&mut self, v: u8) {
        self.prev = self.cur;
        self.cur = v;
    }
    fn set(&mut self, v: u8) {
        self.cur = v;
        self.prev = 0;
    }
}

/// What the PIO data buffer is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pio {
    Idle,
    /// Device to host: the buffer holds a block; `remaining` blocks after it.
    In {
        lba: u64,
        remaining: u32,
    },
    /// IDENTIFY data in the buffer (one block).
    InOnce,
    /// Host to device: the buffer collects a block for `lba`; `remaining` including it.
    Out {
        lba: u64,
        remaining: u32,
    },
}

/// The outcome of a DMA transfer, reported back by the bus-master engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaStatus {
    Ok,
    /// The engine failed (PRD table too short, or an address outside guest memory).
    Aborted,
    /// The backend failed.
    MediaError,
}

pub struct AtaChannel {
    drives: [Option<Drive>; 2],
    feature: Fifo,
    count: Fifo,
    lba_low: Fifo,
    lba_mid: Fifo,
    lba_high: Fifo,
    device: DeviceReg,
    control: DeviceControl,
    irq: Arc<dyn Interrupt>,
    irq_pending: bool,
    /// Set on every INTRQ assertion; the bus-master interrupt bit follows it.
    irq_latch: bool,
    pio: Pio,
    buf: Box<[u8; SECTOR]>,
    pos: usize,
    /// A DMA command waiting for the bus-master engine: (drive, request).
    dma: Option<(usize, DmaRequest)>,
}

impl AtaChannel {
    pub fn new(master: Option<Drive>, slave: Option<Drive>, irq: Arc<dyn Interrupt>) -> Self {
        let mut c = Self {
            drives: [master, slave],
            feature: Fifo::default(),
            count: Fifo::default(),
            lba_low: Fifo::default(),
            lba_mid: Fifo::default(),
            lba_high: Fifo::default(),
            device: DeviceReg::empty(),
            control: DeviceControl::empty(),
            irq,
            irq_pending: false,
            irq_latch: false,
            pio: Pio::Idle,
            buf: Box::new([0; SECTOR]),
            pos: 0,
            dma: None,
        };
        c.signature();
        c
    }

    pub fn drive(&self, i: usize) -> Option<&Drive> {
        self.drives.get(i).and_then(|d| d.as_ref())
    }

    fn any_drive(&self) -> bool {
        self.drives.iter().any(|d| d.is_some())
    }

    fn selected(&self) -> usize {
        usize::from(self.device.contains(DeviceReg::DEV))
    }

    fn cur(&mut self) -> Option<&mut Drive> {
        let i = self.selected();
        self.drives[i].as_mut()
    }

    /// Whether INTRQ is pending (asserted and not yet acknowledged).
    pub fn irq_pending(&self) -> bool {
        self.irq_pending
    }

    /// True once after each INTRQ assertion (for the bus-master interrupt bit).
    pub fn take_irq_latch(&mut self) -> bool {
        std::mem::take(&mut self.irq_latch)
    }

    fn raise(&mut self) {
        if self.control.contains(DeviceControl::NIEN) {
            return;
        }
        self.irq_latch = true;
        if !self.irq_pending {
            self.irq_pending = true;
            let _ = self.irq.trigger();
        }
    }

    /// Status of the selected drive; 0 for an absent drive. For an absent slave that is what
    /// QEMU does; for an absent master beside a slave it is the ATA standard's rule for a
    /// "device 1 only" channel (status and alternate status read 0, commands are not executed).
    /// QEMU instead shows a phantom master there: status DRDY, IDENTIFY aborted, signature
    /// 0xFF/0xFF. Guests must cope with both, and the two VMMs between them exercise both.
    fn status_value(&self) -> Status {
        match self.drive(self.selected()) {
            Some(d) if self.control.contains(DeviceControl::SRST) => d.status | Status::BSY,
            Some(d) => d.status,
            None => Status::empty(),
        }
    }

    /// The alternate status register (does not acknowledge INTRQ).
    pub fn alt_status(&self) -> Status {
        self.status_value()
    }

    /// A read of command block register `reg`, one byte, or the data port.
    pub fn read_reg(&mut self, reg: TaskfileReg, data: &mut [u8]) {
        if reg == TaskfileReg::Data && matches!(data.len(), 2 | 4) {
            self.read_data(data);
            return;
        }
        let hob = self.control.contains(DeviceControl::HOB);
        let pick = |f: Fifo| if hob { f.prev } else { f.cur };
        let present = self.any_drive();
        let v = match reg {
            TaskfileReg::Data => 0xff,
            TaskfileReg::ErrorFeature => match self.drive(self.selected()) {
                Some(d) => d.error.bits(),
                None => 0,
            },
            _ if !present => 0,
            TaskfileReg::Count => pick(self.count),
            TaskfileReg::LbaLow => pick(self.lba_low),
            TaskfileReg::LbaMid => pick(self.lba_mid),
            TaskfileReg::LbaHigh => pick(self.lba_high),
            TaskfileReg::Device => self.device.bits(),
            TaskfileReg::StatusCommand => {
                self.irq_pending = false;
                self.status_value().bits()
            }
        };
        data.fill(v);
    }

    /// A write to command block register `reg`.
    pub fn write_reg(&mut self, reg: TaskfileReg, data: &[u8]) {
        if reg == TaskfileReg::Data {
            if matches!(data.len(), 2 | 4) {
                self.write_data(data);
            }
            return;
        }
        let Some(&v) = data.first() else { return };
        if reg != TaskfileReg::StatusCommand {
            // A write to any command block register clears HOB.
            self.control.remove(DeviceControl::HOB);
        }
        match reg {
            TaskfileReg::Data => {}
            TaskfileReg::ErrorFeature => self.feature.push(v),
            TaskfileReg::Count => self.count.push(v),
            TaskfileReg::LbaLow => self.lba_low.push(v),
            TaskfileReg::LbaMid => self.lba_mid.push(v),
            TaskfileReg::LbaHigh => self.lba_high.push(v),
            TaskfileReg::Device => self.device = DeviceReg::from_bits_retain(v),
            TaskfileReg::StatusCommand => self.command(v),
        }
    }

    /// A write to the device control register.
    pub fn write_control(&mut self, v: DeviceControl) {
        let was_reset = self.control.contains(DeviceControl::SRST);
        self.control = v;
        let reset = v.contains(DeviceControl::SRST);
        if reset && !was_reset {
            // Reset begins: everything in flight is dropped.
            self.pio = Pio::Idle;
            self.pos = 0;
            self.dma = None;
            self.irq_pending = false;
        } else if !reset && was_reset {
            self.signature();
        }
    }

    /// The state after a reset or EXECUTE DEVICE DIAGNOSTIC: drive 0 selected, the ATA
    /// signature in the taskfile, DRDY.
    fn signature(&mut self) {
        self.pio = Pio::Idle;
        self.pos = 0;
        self.dma = None;
        self.device = DeviceReg::empty();
        self.feature.set(0);
        self.count.set(1);
        self.lba_low.set(1);
        self.lba_mid.set(0);
        self.lba_high.set(0);
        for d in self.drives.iter_mut().flatten() {
            d.status = Status::DRDY | Status::DSC;
            d.error = ErrorReg::AMNF;
        }
    }

    fn read_data(&mut self, data: &mut [u8]) {
        let n = data.len();
        let readable = matches!(self.pio, Pio::In { .. } | Pio::InOnce)
            && self.cur().is_some_and(|d| d.status.contains(Status::DRQ));
        if !readable || self.pos + n > SECTOR {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        if self.pos == SECTOR {
            self.block_read();
        }
    }

    fn write_data(&mut self, data: &[u8]) {
        let n = data.len();
        let writable = matches!(self.pio, Pio::Out { .. })
            && self.cur().is_some_and(|d| d.status.contains(Status::DRQ));
        if !writable || self.pos + n > SECTOR {
            return;
        }
        self.buf[self.pos..self.pos + n].copy_from_slice(data);
        self.pos += n;
        if self.pos == SECTOR {
            self.block_written();
        }
    }

    /// The host took the whole data-in block.
    fn block_read(&mut self) {
        self.pos = 0;
        match self.pio {
            Pio::In { lba, remaining } if remaining > 0 => self.load_sector(lba, remaining - 1),
            _ => {
                self.pio = Pio::Idle;
                if let Some(d) = self.cur() {
                    d.status = Status::DRDY | Status::DSC;
                }
            }
        }
    }

    /// Read sector `lba` into the buffer and offer it (DRQ + INTRQ).
    fn load_sector(&mut self, lba: u64, remaining_after: u32) {
        let i = self.selected();
        let Some(d) = self.drives[i].as_ref() else {
            return;
        };
        match d.disk.read_at(lba * SECTOR_SIZE, &mut self.buf[..]) {
            Ok(()) => {
                self.pio = Pio::In {
                    lba: lba + 1,
                    remaining: remaining_after,
                };
                self.pos = 0;
                self.set_status(Status::DRDY | Status::DSC | Status::DRQ, ErrorReg::empty());
                self.raise();
            }
            Err(_) => self.fail(ErrorReg::UNC),
        }
    }

    /// The host filled a data-out block: write it, then ask for the next or complete.
    fn block_written(&mut self) {
        self.pos = 0;
        let Pio::Out { lba, remaining } = self.pio else {
            return;
        };
        let i = self.selected();
        let Some(d) = self.drives[i].as_ref() else {
            return;
        };
        if d.disk.write_at(lba * SECTOR_SIZE, &self.buf[..]).is_err() {
            self.fail(ErrorReg::UNC);
            return;
        }
        if remaining > 1 {
            self.pio = Pio::Out {
                lba: lba + 1,
                remaining: remaining - 1,
            };
            self.set_status(Status::DRDY | Status::DSC | Status::DRQ, ErrorReg::empty());
        } else {
            self.pio = Pio::Idle;
            self.set_status(Status::DRDY | Status::DSC, ErrorReg::empty());
        }
        self.raise();
    }

    fn set_status(&mut self, status: Status, error: ErrorReg) {
        if let Some(d) = self.cur() {
            d.status = status;
            d.error = error;
        }
    }

    /// End the command with ERR and `error`, and interrupt.
    fn fail(&mut self, error: ErrorReg) {
        self.pio = Pio::Idle;
        self.pos = 0;
        self.dma = None;
        self.set_status(Status::DRDY | Status::DSC | Status::ERR, error);
        self.raise();
    }

    /// End a non-data command successfully, and interrupt.
    fn done(&mut self) {
        self.set_status(Status::DRDY | Status::DSC, ErrorReg::empty());
        self.raise();
    }

    /// LBA28 address (or CHS, translated), and count (0 = 256).
    fn lba28(&self, d: &Drive) -> Option<(u64, u32)> {
        let count = match self.count.cur {
            0 => 256,
            n => n as u32,
        };
        let head = (self.device & DeviceReg::HEAD).bits();
        if self.device.contains(DeviceReg::LBA) {
            let lba = (head as u64) << 24
                | (self.lba_high.cur as u64) << 16
                | (self.lba_mid.cur as u64) << 8
                | self.lba_low.cur as u64;
            Some((lba, count))
        } else {
            let cyl = (self.lba_high.cur as u64) << 8 | self.lba_mid.cur as u64;
            let head = head as u64;
            let sector = self.lba_low.cur as u64;
            if sector == 0 || head >= d.heads as u64 || sector > d.spt as u64 {
                return None;
            }
            Some((
                (cyl * d.heads as u64 + head) * d.spt as u64 + sector - 1,
                count,
            ))
        }
    }

    /// LBA48 address and count (0 = 65536).
    fn lba48(&self) -> (u64, u32) {
        let lba = [
            self.lba_low.cur,
            self.lba_mid.cur,
            self.lba_high.cur,
            self.lba_low.prev,
            self.lba_mid.prev,
            self.lba_high.prev,
        ]
        .iter()
        .enumerate()
        .fold(0u64, |a, (i, b)| a | (*b as u64) << (8 * i));
        let count = match (self.count.prev as u32) << 8 | self.count.cur as u32 {
            0 => 65536,
            n => n,
        };
        (lba, count)
    }

    /// The address and count of a read/write command, checked against the disk.
    fn range(&self, ext: bool) -> Result<(u64, u32), ErrorReg> {
        let d = self.drive(self.selected()).ok_or(ErrorReg::ABRT)?;
        let (lba, count) = if ext {
            self.lba48()
        } else {
            self.lba28(d).ok_or(ErrorReg::IDNF)?
        };
        match lba.checked_add(count as u64) {
            Some(end) if end <= d.sectors() => Ok((lba, count)),
            _ => Err(ErrorReg::IDNF),
        }
    }

    fn command(&mut self, cmd: u8) {
        let i = self.selected();
        let Some(d) = self.drives[i].as_ref() else {
            // Commands to an absent drive are not executed (QEMU: an absent slave; ATA: an
            // absent master on a "device 1 only" channel).
            return;
        };
        if d.status.intersects(Status::BSY | Status::DRQ)
            || self.control.contains(DeviceControl::SRST)
        {
            return;
        }
        let read_only = d.disk.read_only();
        let sectors = d.sectors();
        self.irq_pending = false;
        self.pio = Pio::Idle;
        self.pos = 0;
        self.dma = None;
        match cmd {
            CMD_IDENTIFY => {
                let id = match self.drives[i].as_ref() {
                    Some(d) => d.identify(),
                    None => return,
                };
                self.buf.copy_from_slice(id.as_slice());
                self.pio = Pio::InOnce;
                self.set_status(Status::DRDY | Status::DSC | Status::DRQ, ErrorReg::empty());
                self.raise();
            }
            CMD_READ_SECTORS | CMD_READ_SECTORS_NR | CMD_READ_SECTORS_EXT => {
                match self.range(cmd == CMD_READ_SECTORS_EXT) {
                    Ok((lba, count)) => self.load_sector(lba, count - 1),
                    Err(e) => self.fail(e),
                }
            }
            CMD_WRITE_SECTORS | CMD_WRITE_SECTORS_NR | CMD_WRITE_SECTORS_EXT => {
                match self.range(cmd == CMD_WRITE_SECTORS_EXT) {
                    Err(e) => self.fail(e),
                    Ok(_) if read_only => self.fail(ErrorReg::ABRT),
                    Ok((lba, count)) => {
                        // DRQ for the first block, without an interrupt.
                        self.pio = Pio::Out {
                            lba,
                            remaining: count,
                        };
                        self.set_status(
                            Status::DRDY | Status::DSC | Status::DRQ,
                            ErrorReg::empty(),
                        );
                    }
                }
            }
            CMD_READ_DMA | CMD_READ_DMA_NR | CMD_READ_DMA_EXT | CMD_WRITE_DMA
            | CMD_WRITE_DMA_NR | CMD_WRITE_DMA_EXT => {
                let ext = matches!(cmd, CMD_READ_DMA_EXT | CMD_WRITE_DMA_EXT);
                let write = matches!(cmd, CMD_WRITE_DMA | CMD_WRITE_DMA_NR | CMD_WRITE_DMA_EXT);
                match self.range(ext) {
                    Err(e) => self.fail(e),
                    Ok(_) if write && read_only => self.fail(ErrorReg::ABRT),
                    Ok((lba, sectors)) => {
                        self.dma = Some((
                            i,
                            DmaRequest {
                                lba,
                                sectors,
                                to_memory: !write,
                            },
                        ));
                        // As QEMU: DRQ while the transfer waits for the engine.
                        self.set_status(
                            Status::DRDY | Status::DSC | Status::DRQ,
                            ErrorReg::empty(),
                        );
                    }
                }
            }
            CMD_FLUSH_CACHE | CMD_FLUSH_CACHE_EXT => {
                match self.drives[i].as_ref().map(|d| d.disk.flush()) {
                    Some(Err(_)) => self.fail(ErrorReg::UNC),
                    _ => self.done(),
                }
            }
            CMD_SET_FEATURES => {
                use set_features::*;
                let (feature, value) = (self.feature.cur, self.count.cur);
                // The mode number is the low 3 bits; PIO 0-4, multiword DMA 0-2, UDMA 0-5.
                let n = value & 7;
                let mode = match (feature, value & !7) {
                    (TRANSFER_MODE, PIO_DEFAULT) if value <= PIO_DEFAULT_NO_IORDY => {
                        Some(Some(Mode::Pio))
                    }
                    (TRANSFER_MODE, PIO_FLOW_CONTROL) if n <= 4 => Some(Some(Mode::Pio)),
                    (TRANSFER_MODE, MULTIWORD_DMA) if n <= 2 => Some(Some(Mode::MultiwordDma(n))),
                    (TRANSFER_MODE, ULTRA_DMA) if n <= 5 => Some(Some(Mode::UltraDma(n))),
                    _ if IGNORED.contains(&feature) => Some(None),
                    _ => None,
                };
                match mode {
                    Some(m) => {
                        if let (Some(m), Some(d)) = (m, self.cur()) {
                            d.mode = m;
                        }
                        self.done();
                    }
                    None => self.fail(ErrorReg::ABRT),
                }
            }
            CMD_INIT_PARAMS => {
                let heads = u16::from((self.device & DeviceReg::HEAD).bits()) + 1;
                let spt = self.count.cur as u16;
                if let Some(d) = self.cur() {
                    if spt != 0 {
                        d.heads = heads;
                        d.spt = spt;
                    }
                }
                self.done();
            }
            CMD_DIAGNOSTIC => {
                self.signature();
                self.raise();
            }
            CMD_READ_NATIVE_MAX => {
                let max = sectors.min(LBA28_MAX_SECTORS) - 1;
                self.lba_low.set(max as u8);
                self.lba_mid.set((max >> 8) as u8);
                self.lba_high.set((max >> 16) as u8);
                self.device = self.device.difference(DeviceReg::HEAD)
                    | DeviceReg::from_bits_retain((max >> 24) as u8) & DeviceReg::HEAD;
                self.done();
            }
            CMD_READ_NATIVE_MAX_EXT => {
                let max = sectors - 1;
                for (k, f) in [&mut self.lba_low, &mut self.lba_mid, &mut self.lba_high]
                    .into_iter()
                    .enumerate()
                {
                    f.prev = (max >> (24 + 8 * k)) as u8;
                    f.cur = (max >> (8 * k)) as u8;
                }
                self.done();
            }
            CMD_CHECK_POWER => {
                self.count.set(POWER_MODE_ACTIVE_OR_IDLE);
                self.done();
            }
            CMD_STANDBY_IMMEDIATE
            | CMD_IDLE_IMMEDIATE
            | CMD_STANDBY
            | CMD_IDLE
            | CMD_OLD_POWER_FIRST..=CMD_OLD_POWER_LAST
            | CMD_RECALIBRATE_FIRST..=CMD_RECALIBRATE_LAST
            | CMD_SEEK => self.done(),
            _ => self.fail(ErrorReg::ABRT),
        }
    }

    /// The DMA transfer waiting for the engine, if any.
    pub fn dma_request(&self) -> Option<(usize, DmaRequest)> {
        self.dma
    }

    /// The engine finished (or gave up on) the pending DMA transfer.
    pub fn dma_done(&mut self, status: DmaStatus) {
        let Some((drive, _)) = self.dma.take() else {
            return;
        };
        let (st, err) = match status {
            DmaStatus::Ok => (Status::DRDY | Status::DSC, ErrorReg::empty()),
            DmaStatus::Aborted => (Status::DRDY | Status::DSC | Status::ERR, ErrorReg::ABRT),
            DmaStatus::MediaError => (Status::DRDY | Status::DSC | Status::ERR, ErrorReg::UNC),
        };
        if let Some(d) = self.drives[drive].as_mut() {
            d.status = st;
            d.error = err;
        }
        self.raise();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::backends::disk::RawDisk;
    use crate::devices::test_util::CountingIrq;
    use std::path::{Path, PathBuf};

    /// A self-deleting image file (std only).
    pub struct TempImage(PathBuf);

    impl TempImage {
        pub fn new(sectors: u64) -> Self {
            use std::sync::atomic::{AtomicU64, Ordering};
            static N: AtomicU64 = AtomicU64::new(0);
            let p = std::env::temp_dir().join(format!(
                "ide-test-{}-{}.img",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let data: Vec<u8> = (0..sectors * SECTOR_SIZE)
                .map(|i| pattern(i / SECTOR_SIZE, (i % SECTOR_SIZE) as usize))
                .collect();
            std::fs::write(&p, data).unwrap();
            Self(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
        pub fn open(&self, ro: bool) -> RawDisk {
            RawDisk::open(&self.0, ro).unwrap()
        }
        pub fn sector(&self, lba: u64) -> Vec<u8> {
            let all = std::fs::read(&self.0).unwrap();
            all[(lba * SECTOR_SIZE) as usize..][..SECTOR].to_vec()
        }
    }

    impl Drop for TempImage {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// The initial content of byte `i` of sector `lba`.
    pub fn pattern(lba: u64, i: usize) -> u8 {
        (lba as u8).wrapping_mul(31) ^ (i as u8) ^ ((lba >> 8) as u8)
    }

    fn channel(img: &TempImage, ro: bool) -> (AtaChannel, Arc<CountingIrq>) {
        let irq = Arc::new(CountingIrq::default());
        let c = AtaChannel::new(
            Some(Drive::new(Box::new(img.open(ro)), 0)),
            None,
            irq.clone(),
        );
        (c, irq)
    }

    fn w(c: &mut AtaChannel, reg: TaskfileReg, v: u8) {
        c.write_reg(reg, &[v]);
    }

    fn r(c: &mut AtaChannel, reg: TaskfileReg) -> u8 {
        let mut b = [0u8];
        c.read_reg(reg, &mut b);
        b[0]
    }

    fn status(c: &mut AtaChannel) -> Status {
        Status::from_bits_retain(r(c, TaskfileReg::StatusCommand))
    }

    fn error(c: &mut AtaChannel) -> ErrorReg {
        ErrorReg::from_bits_retain(r(c, TaskfileReg::ErrorFeature))
    }

    fn lba28_cmd(c: &mut AtaChannel, lba: u32, count: u8, cmd: u8) {
        w(c, TaskfileReg::Count, count);
        w(c, TaskfileReg::LbaLow, lba as u8);
        w(c, TaskfileReg::LbaMid, (lba >> 8) as u8);
        w(c, TaskfileReg::LbaHigh, (lba >> 16) as u8);
        w(c, TaskfileReg::Device, 0xe0 | ((lba >> 24) as u8 & 0x0f));
        w(c, TaskfileReg::StatusCommand, cmd);
    }

    fn lba48_cmd(c: &mut AtaChannel, lba: u64, count: u16, cmd: u8) {
        w(c, TaskfileReg::Count, (count >> 8) as u8);
        w(c, TaskfileReg::LbaLow, (lba >> 24) as u8);
        w(c, TaskfileReg::LbaMid, (lba >> 32) as u8);
        w(c, TaskfileReg::LbaHigh, (lba >> 40) as u8);
        w(c, TaskfileReg::Count, count as u8);
        w(c, TaskfileReg::LbaLow, lba as u8);
        w(c, TaskfileReg::LbaMid, (lba >> 8) as u8);
        w(c, TaskfileReg::LbaHigh, (lba >> 16) as u8);
        w(c, TaskfileReg::Device, 0x40);
        w(c, TaskfileReg::StatusCommand, cmd);
    }

    fn read_block(c: &mut AtaChannel) -> Vec<u8> {
        let mut out = vec![0u8; SECTOR];
        for chunk in out.chunks_mut(2) {
            c.read_reg(TaskfileReg::Data, chunk);
        }
        out
    }

    fn identify(c: &mut AtaChannel) -> [u16; 256] {
        w(c, TaskfileReg::Device, 0xa0);
        w(c, TaskfileReg::StatusCommand, CMD_IDENTIFY);
        assert_eq!(status(c), Status::DRDY | Status::DSC | Status::DRQ);
        let b = read_block(c);
        assert_eq!(status(c), Status::DRDY | Status::DSC);
        let mut words = [0u16; 256];
        for (i, w) in words.iter_mut().enumerate() {
            *w = u16::from_le_bytes([b[2 * i], b[2 * i + 1]]);
        }
        words
    }

    /// The block as the data port hands it out, word by word.
    fn words(id: &IdentifyData) -> [u16; 256] {
        let b = id.as_slice();
        std::array::from_fn(|i| u16::from_le_bytes([b[2 * i], b[2 * i + 1]]))
    }

    fn string(words: &[u16]) -> String {
        words
            .iter()
            .flat_map(|w| [(w >> 8) as u8 as char, *w as u8 as char])
            .collect::<String>()
            .trim_end()
            .to_string()
    }

    #[test]
    fn identify_content() {
        let img = TempImage::new(64);
        let (mut c, irq) = channel(&img, false);
        let id = identify(&mut c);
        assert_eq!(irq.count(), 1);
        assert_eq!(string(&id[27..47]), MODEL);
        assert_eq!(string(&id[23..27]), FIRMWARE);
        assert!(!string(&id[10..20]).is_empty());
        assert_eq!(id[49] & (3 << 8), 3 << 8);
        assert_eq!(id[60] as u32 | (id[61] as u32) << 16, 64);
        assert_eq!(id[83] & (1 << 10), 1 << 10);
        assert_eq!(id[86] & (1 << 10), 1 << 10);
        assert_eq!(id[83] & (3 << 12), 3 << 12);
        let lba48: u64 = (0..4).map(|i| (id[100 + i] as u64) << (16 * i)).sum();
        assert_eq!(lba48, 64);
        assert_eq!(id[63] & 7, 7);
        assert_eq!(id[88] & 0x3f, 0x3f);
        assert_eq!(id[255] & 0xff, 0xa5);
        let sum = id.iter().fold(0u8, |s, w| {
            s.wrapping_add(*w as u8).wrapping_add((w >> 8) as u8)
        });
        assert_eq!(sum, 0, "checksum");
    }

    #[test]
    fn identify_caps_lba28_capacity() {
        // A sparse 200 GiB image: more than 2^28 sectors.
        let img = TempImage::new(1);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(img.path())
            .unwrap();
        let sectors = 0x1000_0000u64 + 8;
        f.set_len(sectors * SECTOR_SIZE).unwrap();
        let d = Drive::new(Box::new(img.open(true)), 0);
        let id = words(&d.identify());
        assert_eq!(id[60] as u32 | (id[61] as u32) << 16, 0x0fff_ffff);
        let lba48: u64 = (0..4).map(|i| (id[100 + i] as u64) << (16 * i)).sum();
        assert_eq!(lba48, sectors);
    }

    #[test]
    fn set_features_transfer_mode_shows_in_identify() {
        let img = TempImage::new(8);
        let (mut c, _) = channel(&img, false);
        w(&mut c, TaskfileReg::ErrorFeature, 0x03);
        w(&mut c, TaskfileReg::Count, 0x22);
        w(&mut c, TaskfileReg::StatusCommand, CMD_SET_FEATURES);
        assert_eq!(status(&mut c), Status::DRDY | Status::DSC);
        let id = identify(&mut c);
        assert_eq!(id[63], 0x0407);
        assert_eq!(id[88], 0x003f);
        w(&mut c, TaskfileReg::ErrorFeature, 0x03);
        w(&mut c, TaskfileReg::Count, 0x47); // UDMA 7: not supported
        w(&mut c, TaskfileReg::StatusCommand, CMD_SET_FEATURES);
        assert_eq!(status(&mut c), Status::DRDY | Status::DSC | Status::ERR);
        assert_eq!(error(&mut c), ErrorReg::ABRT);
    }

    #[test]
    fn lba28_and_lba48_decoding() {
        let img = TempImage::new(8);
        let (mut c, _) = channel(&img, false);
        w(&mut c, TaskfileReg::Count, 0);
        w(&mut c, TaskfileReg::LbaLow, 0x44);
        w(&mut c, TaskfileReg::LbaMid, 0x33);
        w(&mut c, TaskfileReg::LbaHigh, 0x22);
        w(&mut c, TaskfileReg::Device, 0xe1);
        let d = c.drive(0).unwrap();
        assert_eq!(c.lba28(d), Some((0x0122_3344, 256)));
        lba48_cmd(&mut c, 0, 0, 0); // just program
        assert_eq!(c.lba48(), (0, 65536));
        w(&mut c, TaskfileReg::Count, 0x12);
        w(&mut c, TaskfileReg::LbaLow, 0xa1);
        w(&mut c, TaskfileReg::LbaMid, 0xa2);
        w(&mut c, TaskfileReg::LbaHigh, 0xa3);
        w(&mut c, TaskfileReg::Count, 0x34);
        w(&mut c, TaskfileReg::LbaLow, 0xb1);
        w(&mut c, TaskfileReg::LbaMid, 0xb2);
        w(&mut c, TaskfileReg::LbaHigh, 0xb3);
        assert_eq!(c.lba48(), (0xa3a2_a1b3_b2b1, 0x1234));
        // HOB readback selects the previous values; any register write clears HOB.
        c.write_control(DeviceControl::HOB);
        assert_eq!(r(&mut c, TaskfileReg::Count), 0x12);
        assert_eq!(r(&mut c, TaskfileReg::LbaHigh), 0xa3);
        c.write_control(DeviceControl::empty());
        assert_eq!(r(&mut c, TaskfileReg::Count), 0x34);
        c.write_control(DeviceControl::HOB);
        w(&mut c, TaskfileReg::ErrorFeature, 0);
        assert_eq!(r(&mut c, TaskfileReg::LbaLow), 0xb1);
        // CHS: cylinder 1, head 2, sector 3 with 16 heads and 63 sectors per track.
        w(&mut c, TaskfileReg::LbaLow, 3);
        w(&mut c, TaskfileReg::LbaMid, 1);
        w(&mut c, TaskfileReg::LbaHigh, 0);
        w(&mut c, TaskfileReg::Device, 0xa2);
        let d = c.drive(0).unwrap();
        assert_eq!(c.lba28(d).unwrap().0, (16 + 2) * 63 + 2);
    }

    #[test]
    fn pio_read_multi_sector() {
        let img = TempImage::new(16);
        let (mut c, irq) = channel(&img, false);
        lba28_cmd(&mut c, 3, 3, CMD_READ_SECTORS);
        for k in 0..3u64 {
            assert_eq!(irq.count(), k + 1, "one interrupt per block");
            assert_eq!(c.alt_status(), Status::DRDY | Status::DSC | Status::DRQ);
            assert!(c.irq_pending());
            assert_eq!(status(&mut c), Status::DRDY | Status::DSC | Status::DRQ);
            assert!(!c.irq_pending(), "status read acknowledges");
            assert_eq!(read_block(&mut c), img.sector(3 + k));
        }
        assert_eq!(irq.count(), 3, "no interrupt after the last block");
        assert_eq!(status(&mut c), Status::DRDY | Status::DSC);
        // Extra data reads return 0 and change nothing.
        let mut b = [0xaau8; 2];
        c.read_reg(TaskfileReg::Data, &mut b);
        assert_eq!(b, [0, 0]);
    }

    #[test]
    fn pio_read_lba48_dwords() {
        let img = TempImage::new(16);
        let (mut c, irq) = channel(&img, false);
        lba48_cmd(&mut c, 14, 2, CMD_READ_SECTORS_EXT);
        for k in 0..2u64 {
            status(&mut c);
            let mut out = vec![0u8; SECTOR];
            for chunk in out.chunks_mut(4) {
                c.read_reg(TaskfileReg::Data, chunk);
            }
            assert_eq!(out, img.sector(14 + k));
        }
        assert_eq!(irq.count(), 2);
        assert_eq!(status(&mut c), Status::DRDY | Status::DSC);
    }

    #[test]
    fn pio_write_multi_sector() {
        let img = TempImage::new(16);
        let (mut c, irq) = channel(&img, false);
        lba48_cmd(&mut c, 5, 2, CMD_WRITE_SECTORS_EXT);
        assert_eq!(irq.count(), 0, "no interrupt before the first block");
        for k in 0..2u8 {
            assert_eq!(status(&mut c), Status::DRDY | Status::DSC | Status::DRQ);
            for j in 0..256u16 {
                c.write_reg(TaskfileReg::Data, &(j ^ (k as u16) << 8).to_le_bytes());
            }
            assert_eq!(irq.count(), k as u64 + 1, "interrupt after each block");
        }
        assert_eq!(status(&mut c), Status::DRDY | Status::DSC);
        let s = img.sector(6);
        assert_eq!(&s[..4], &[0, 1, 1, 1]);
        assert_eq!(img.sector(7), {
            let mut v = vec![0u8; SECTOR];
            for (i, b) in v.iter_mut().enumerate() {
                *b = pattern(7, i);
            }
            v
        });
        // Extra writes are ignored.
        c.write_reg(TaskfileReg::Data, &[1, 2]);
        assert_eq!(img.sector(4)[0], pattern(4, 0));
    }

    #[test]
    fn nien_suppresses_interrupts() {
        let img = TempImage::new(16);
        let (mut c, irq) = channel(&img, false);
        c.write_control(DeviceControl::NIEN);
        lba28_cmd(&mut c, 0, 2, CMD_READ_SECTORS);
        read_block(&mut c);
        read_block(&mut c);
        w(&mut c, TaskfileReg::StatusCommand, CMD_FLUSH_CACHE);
        assert_eq!(irq.count(), 0);
        assert!(!c.irq_pending());
        assert!(!c.take_irq_latch());
        c.write_control(DeviceControl::empty());
        w(&mut c, TaskfileReg::StatusCommand, CMD_FLUSH_CACHE);
        assert_eq!(irq.count(), 1);
        assert!(c.take_irq_latch());
    }

    #[test]
    fn errors() {
        let img = TempImage::new(16);
        let (mut c, irq) = channel(&img, false);
        lba28_cmd(&mut c, 15, 2, CMD_READ_SECTORS);
        assert_eq!(status(&mut c), Status::DRDY | Status::DSC | Status::ERR);
        assert_eq!(error(&mut c), ErrorReg::IDNF);
        assert_eq!(irq.count(), 1);
        lba48_cmd(&mut c, 1 << 40, 1, CMD_WRITE_DMA_EXT);
        assert_eq!(error(&mut c), ErrorReg::IDNF);
        lba48_cmd(&mut c, 0, 0, CMD_READ_DMA_EXT); // 65536 sectors
        assert_eq!(error(&mut c), ErrorReg::IDNF);
        w(&mut c, TaskfileReg::StatusCommand, 0x00);
        assert_eq!(status(&mut c), Status::DRDY | Status::DSC | Status::ERR);
        assert_eq!(error(&mut c), ErrorReg::ABRT);
        w(&mut c, TaskfileReg::StatusCommand, 0xb0); // SMART: not supported
        assert_eq!(error(&mut c), ErrorReg::ABRT);
        // A good command clears the error.
        w(&mut c, TaskfileReg::StatusCommand, CMD_IDLE_IMMEDIATE);
        assert_eq!(status(&mut c), Status::DRDY | Status::DSC);
        assert_eq!(error(&mut c), ErrorReg::empty());

        let (mut ro, _) = channel(&img, true);
        lba28_cmd(&mut ro, 0, 1, CMD_WRITE_SECTORS);
        assert_eq!(status(&mut ro), Status::DRDY | Status::DSC | Status::ERR);
        assert_eq!(error(&mut ro), ErrorReg::ABRT);
        lba28_cmd(&mut ro, 0, 1, CMD_WRITE_DMA);
        assert_eq!(error(&mut ro), ErrorReg::ABRT);
        w(&mut ro, TaskfileReg::StatusCommand, CMD_FLUSH_CACHE);
        assert_eq!(status(&mut ro), Status::DRDY | Status::DSC);
        assert_eq!(img.sector(0)[0], pattern(0, 0));
    }

    /// A backend that fails: the command ends with ERR and UNC (and its interrupt), no data is
    /// offered, no later block is asked for; once the disk heals the drive works again.
    #[test]
    fn failing_backend_gets_an_error_status() {
        use crate::backends::mem_disk::{Fault, Faults, MemDisk};
        let disk = MemDisk::zeroed(16, false).unwrap();
        let irq = Arc::new(CountingIrq::default());
        let drive = Drive::new(Box::new(disk.clone()), 0);
        let mut c = AtaChannel::new(Some(drive), None, irq.clone());
        let failed = Status::DRDY | Status::DSC | Status::ERR;
        for fault in [Fault::Eio, Fault::ShortRead] {
            disk.set_faults(Faults {
                read: Some(fault),
                ..Faults::NONE
            });
            lba48_cmd(&mut c, 1, 2, CMD_READ_SECTORS_EXT);
            assert_eq!(status(&mut c), failed, "{fault:?}");
            assert_eq!(error(&mut c), ErrorReg::UNC, "{fault:?}");
            let mut b = [0xaau8; 2];
            c.read_reg(TaskfileReg::Data, &mut b);
            assert_eq!(b, [0, 0], "no data after a failed read");
        }
        assert_eq!(irq.count(), 2);
        disk.set_faults(Faults {
            write: Some(Fault::NoSpace),
            flush: Some(Fault::Eio),
            ..Faults::NONE
        });
        lba28_cmd(&mut c, 3, 2, CMD_WRITE_SECTORS);
        assert_eq!(status(&mut c), Status::DRDY | Status::DSC | Status::DRQ);
        for j in 0..256u16 {
            c.write_reg(TaskfileReg::Data, &j.to_le_bytes());
        }
        assert_eq!(status(&mut c), failed, "ENOSPC");
        assert_eq!(error(&mut c), ErrorReg::UNC);
        c.write_reg(TaskfileReg::Data, &[1, 2]);
        assert_eq!(status(&mut c), failed, "no second block asked for");
        w(&mut c, TaskfileReg::StatusCommand, CMD_FLUSH_CACHE_EXT);
        assert_eq!(status(&mut c), failed, "flush EIO");
        assert_eq!(error(&mut c), ErrorReg::UNC);
        assert_eq!(irq.count(), 4);
        disk.set_faults(Faults::NONE);
        lba28_cmd(&mut c, 0, 1, CMD_READ_SECTORS);
        assert_eq!(status(&mut c), Status::DRDY | Status::DSC | Status::DRQ);
        assert_eq!(read_block(&mut c), vec![0; SECTOR]);
        assert_eq!(status(&mut c), Status::DRDY | Status::DSC);
    }

    #[test]
    fn soft_reset_signature() {
        let img = TempImage::new(16);
        let (mut c, _) = channel(&img, false);
        lba28_cmd(&mut c, 3, 2, CMD_READ_SECTORS);
        w(&mut c, TaskfileReg::ErrorFeature, 0x55);
        c.write_control(DeviceControl::SRST);
        assert!(c.alt_status().contains(Status::BSY));
        c.write_control(DeviceControl::empty());
        assert_eq!(c.alt_status(), Status::DRDY | Status::DSC);
        assert_eq!(r(&mut c, TaskfileReg::Count), 1);
        assert_eq!(r(&mut c, TaskfileReg::LbaLow), 1);
        assert_eq!(r(&mut c, TaskfileReg::LbaMid), 0);
        assert_eq!(r(&mut c, TaskfileReg::LbaHigh), 0);
        assert_eq!(r(&mut c, TaskfileReg::Device) & DeviceReg::DEV.bits(), 0);
        assert_eq!(error(&mut c), ErrorReg::AMNF);
        // The aborted transfer is gone.
        let mut b = [0xffu8; 2];
        c.read_reg(TaskfileReg::Data, &mut b);
        assert_eq!(b, [0, 0]);
    }

    #[test]
    fn absent_drives() {
        let img = TempImage::new(16);
        let (mut c, irq) = channel(&img, false);
        // Slave absent: status and error read 0, commands are ignored.
        w(&mut c, TaskfileReg::Device, 0xb0);
        assert_eq!(status(&mut c), Status::empty());
        assert_eq!(c.alt_status(), Status::empty());
        w(&mut c, TaskfileReg::StatusCommand, CMD_IDENTIFY);
        assert_eq!(status(&mut c), Status::empty());
        assert_eq!(irq.count(), 0);
        // No drive at all: every register reads 0 (as QEMU).
        let irq = Arc::new(CountingIrq::default());
        let mut e = AtaChannel::new(None, None, irq.clone());
        for reg in &TaskfileReg::ALL[1..] {
            w(&mut e, *reg, 0x5a);
        }
        for reg in &TaskfileReg::ALL[1..] {
            assert_eq!(r(&mut e, *reg), 0, "register {reg:?}");
        }
        assert_eq!(irq.count(), 0);
    }

    #[test]
    fn any_access_is_harmless() {
        let img = TempImage::new(4);
        let (mut c, _) = channel(&img, false);
        let mut seed = 0x1234_5678u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for _ in 0..200_000 {
            let v = next();
            let reg = TaskfileReg::ALL[(v & 7) as usize];
            let len = [0usize, 1, 2, 3, 4, 8][(v >> 3) as usize % 6];
            let mut buf = vec![(v >> 8) as u8; len];
            match (v >> 16) % 4 {
                0 => c.read_reg(reg, &mut buf),
                1 => c.write_reg(reg, &buf),
                2 => c.write_control(
                    DeviceControl::from_bits_retain((v >> 24) as u8)
                        .difference(DeviceControl::SRST),
                ),
                _ => {
                    if let Some((_, req)) = c.dma_request() {
                        assert!(req.lba + req.sectors as u64 <= 4);
                    }
                    c.dma_done(DmaStatus::Ok);
                }
            }
        }
    }
}
