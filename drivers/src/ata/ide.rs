//! One IDE channel driven through the taskfile registers (PIO).
//!
//! Protocol facts from ATA/ATAPI-6:
//! - Command block (from the base, e.g. 0x1F0): data (0, 16-bit), error/features (1), sector
//!   count (2), LBA low/mid/high (3..=5), device (6), status/command (7). Control block (e.g.
//!   0x3F6): alternate status (read) / device control (write).
//! - Status is not valid until 400 ns after a command (or device selection) is written; reading
//!   the alternate status register provides that delay without acknowledging the interrupt.
//! - After a PIO data block the host waits one PIO cycle before reading status (done here with
//!   the clock, no port access).
//! - LBA48 registers are two-deep FIFOs: the high-order ("previous") byte is written first, then
//!   the low-order ("current") one.
//! - PIO data-in raises INTRQ for each block with DRQ set; PIO data-out sets DRQ for the first
//!   block without an interrupt and raises INTRQ after every block (the last one: completion).
//!   Reading the status register acknowledges INTRQ.

use alloc::boxed::Box;
use alloc::string::String;
use bitflags::bitflags;
use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{AtaError, IdentifyProblem, PortStrings, WaitFor, SECTOR_SIZE};
use crate::pci::{Bar, PciFunction};

/// Command block register offsets.
pub mod reg {
    pub const DATA: u16 = 0;
    /// Read: error register.
    pub const ERROR: u16 = 1;
    /// Write: features register.
    pub const FEATURES: u16 = 1;
    pub const SECTOR_COUNT: u16 = 2;
    pub const LBA_LOW: u16 = 3;
    pub const LBA_MID: u16 = 4;
    pub const LBA_HIGH: u16 = 5;
    pub const DEVICE: u16 = 6;
    /// Read: status register (acknowledges INTRQ).
    pub const STATUS: u16 = 7;
    /// Write: command register.
    pub const COMMAND: u16 = 7;
}

/// ATA command opcodes.
pub mod cmd {
    pub const READ_SECTORS: u8 = 0x20;
    pub const READ_SECTORS_EXT: u8 = 0x24;
    pub const READ_DMA_EXT: u8 = 0x25;
    pub const WRITE_SECTORS: u8 = 0x30;
    pub const WRITE_SECTORS_EXT: u8 = 0x34;
    pub const WRITE_DMA_EXT: u8 = 0x35;
    pub const READ_DMA: u8 = 0xC8;
    pub const WRITE_DMA: u8 = 0xCA;
    pub const FLUSH_CACHE: u8 = 0xE7;
    pub const FLUSH_CACHE_EXT: u8 = 0xEA;
    pub const IDENTIFY_DEVICE: u8 = 0xEC;
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
        /// Seek complete (obsolete) / service.
        const DSC = 0x10;
        /// Data request: ready to transfer a data block.
        const DRQ = 0x08;
        /// Corrected data (obsolete).
        const CORR = 0x04;
        /// Index (obsolete).
        const IDX = 0x02;
        /// Error: see the error register.
        const ERR = 0x01;
    }
}

bitflags! {
    /// Error register (valid when [`Status::ERR`] is set).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ErrorReg: u8 {
        /// Interface CRC error (Ultra DMA); bad block in old devices.
        const ICRC = 0x80;
        /// Uncorrectable data error.
        const UNC = 0x40;
        /// Media changed.
        const MC = 0x20;
        /// ID (address) not found.
        const IDNF = 0x10;
        /// Media change request.
        const MCR = 0x08;
        /// Command aborted.
        const ABRT = 0x04;
        /// No media / track 0 not found (obsolete).
        const NM = 0x02;
        /// Address mark not found (obsolete) / media error.
        const AMNF = 0x01;
    }
}

bitflags! {
    /// Device/head register. Bits 3:0 carry LBA bits 27:24 in LBA28 commands.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct DeviceReg: u8 {
        /// Obsolete, traditionally set.
        const OBS7 = 0x80;
        /// LBA addressing.
        const LBA = 0x40;
        /// Obsolete, traditionally set.
        const OBS5 = 0x20;
        /// Selects device 1 (slave).
        const DEV = 0x10;
        /// LBA bits 27:24 (LBA28) / head number.
        const HEAD = 0x0F;
    }
}

bitflags! {
    /// Device control register (write-only, control block).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct DeviceControl: u8 {
        /// High order byte: reads of the LBA48 registers return the "previous" bytes.
        const HOB = 0x80;
        /// Software reset of both devices on the channel.
        const SRST = 0x04;
        /// Interrupts disabled (INTRQ not asserted).
        const NIEN = 0x02;
    }
}

/// Device 0 or device 1 on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drive {
    Master,
    Slave,
}

impl Drive {
    /// Both positions of a channel, master first.
    pub const ALL: [Self; 2] = [Self::Master, Self::Slave];

    pub fn name(self) -> &'static str {
        match self {
            Self::Master => "master",
            Self::Slave => "slave",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Master => 0,
            Self::Slave => 1,
        }
    }

    /// Device register bits selecting this drive (LBA mode, obsolete bits set).
    pub fn device_bits(self) -> DeviceReg {
        let base = DeviceReg::OBS7 | DeviceReg::LBA | DeviceReg::OBS5;
        match self {
            Self::Master => base,
            Self::Slave => base | DeviceReg::DEV,
        }
    }
}

/// One of the two channels of an IDE controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelId {
    Primary,
    Secondary,
}

impl ChannelId {
    /// Both channels, primary first.
    pub const ALL: [Self; 2] = [Self::Primary, Self::Secondary];

    pub fn name(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Secondary => "secondary",
        }
    }

    pub fn is_secondary(self) -> bool {
        self == Self::Secondary
    }

    /// The channel's ISA IRQ in compatibility mode: 14 (primary) or 15 (secondary).
    pub fn legacy_irq(self) -> u8 {
        match self {
            Self::Primary => 14,
            Self::Secondary => 15,
        }
    }

    /// The channel's legacy ports.
    pub fn legacy_ports(self) -> ChannelPorts {
        match self {
            Self::Primary => ChannelPorts::PRIMARY,
            Self::Secondary => ChannelPorts::SECONDARY,
        }
    }

    /// Whether the channel of a PCI IDE function (class 01:01) runs in compatibility mode
    /// (programming interface bit 0 / bit 2 clear): legacy ports and [`ChannelId::legacy_irq`].
    pub fn is_compatibility_mode(self, function: &PciFunction) -> bool {
        let native_bit = if self.is_secondary() { 0x04 } else { 0x01 };
        function.prog_if & native_bit == 0
    }
}

/// What one drive position holds, as [`IdeChannel::probe_position`] found it. Only
/// [`Presence::Ata`] is usable; the others are reported and skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// An ATA device answered IDENTIFY DEVICE; [`IdeChannel::info`] holds what it said.
    Ata,
    /// No device: the status reads 0 (the ATA rule for an absent device), or IDENTIFY is
    /// aborted with the "no device" signature 0xFF/0xFF (QEMU's empty master beside a slave).
    Empty,
    /// Nothing drives the bus: the status reads 0xFF.
    Floating,
    /// A device that is not ATA: IDENTIFY DEVICE aborted with this signature in LBA mid/high
    /// (0x14/0xEB: ATAPI; 0x3C/0xC3, 0x69/0x96: SATA bridges).
    NotAta { lba_mid: u8, lba_high: u8 },
}

impl core::fmt::Display for Presence {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::Ata => write!(f, "ATA disk"),
            Self::Empty => write!(f, "empty"),
            Self::Floating => write!(f, "floating bus (status 0xff)"),
            Self::NotAta {
                lba_mid: 0x14,
                lba_high: 0xEB,
            } => write!(f, "ATAPI device (signature 0x14/0xeb), not ATA"),
            Self::NotAta { lba_mid, lba_high } => write!(
                f,
                "not an ATA device (signature {lba_mid:#04x}/{lba_high:#04x})"
            ),
        }
    }
}

/// LBA mid/high after an aborted IDENTIFY when no device is there (QEMU's signature for an
/// empty position; also what a bus with pull-ups returns).
const NO_DEVICE_SIGNATURE: (u8, u8) = (0xFF, 0xFF);

/// Port bases of one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelPorts {
    /// Command block base (data register).
    pub command: u16,
    /// Alternate status / device control port.
    pub control: u16,
}

impl ChannelPorts {
    /// Legacy primary channel (IRQ 14).
    pub const PRIMARY: Self = Self {
        command: 0x1F0,
        control: 0x3F6,
    };
    /// Legacy secondary channel (IRQ 15).
    pub const SECONDARY: Self = Self {
        command: 0x170,
        control: 0x376,
    };

    /// Ports of channel `secondary` of a PCI IDE function (class 01:01). A channel in native
    /// mode (programming interface bit 0 / bit 2) uses BAR0/BAR1 (BAR2/BAR3), the control port
    /// being at offset 2 of the second BAR; a channel in compatibility mode uses the legacy ports.
    /// `None` if a native-mode channel lacks its I/O BARs.
    pub fn from_pci(function: &PciFunction, secondary: bool) -> Option<Self> {
        let id = if secondary {
            ChannelId::Secondary
        } else {
            ChannelId::Primary
        };
        if id.is_compatibility_mode(function) {
            return Some(id.legacy_ports());
        }
        let first = if secondary { 2 } else { 0 };
        // The taskfile spans 8 ports from the command base and the control register sits at
        // offset 2 of its BAR: a smaller BAR would put our accesses on someone else's ports.
        // (Enumeration already checked that each BAR ends below 0x10000.)
        match (function.bar(first), function.bar(first + 1)) {
            (
                Some(Bar::Io {
                    port: cmd,
                    size: cmd_size,
                }),
                Some(Bar::Io {
                    port: ctl,
                    size: ctl_size,
                }),
            ) if cmd_size >= 8 && ctl_size >= 3 => Some(Self {
                command: cmd,
                control: ctl.checked_add(2)?,
            }),
            _ => None,
        }
    }
}

/// Bounds of the waits, in nanoseconds of [`crate::platform::Platform::now_ns`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Per data block, and for command completion.
    pub command_ns: u64,
    /// BSY to clear after a soft reset (the specification allows 31 s).
    pub reset_ns: u64,
    /// FLUSH CACHE completion (the specification allows 30 s).
    pub flush_ns: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            command_ns: 10_000_000_000,
            reset_ns: 31_000_000_000,
            flush_ns: 30_000_000_000,
        }
    }
}

/// How the 400 ns settle time after writing a command is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Settle {
    /// Read the alternate status register once (what the specification suggests; one port
    /// access, which on a VMM takes far longer than 400 ns).
    #[default]
    AltStatus,
    /// Spin on the clock: no port access.
    Clock,
}

/// The 256 words of IDENTIFY DEVICE data (ATA/ATAPI-6 §8.15), with the words this driver reads
/// named. Words, not bytes: they come through the 16-bit data port, so the fields are native
/// `u16` (strings hold two characters per word, the first in the high byte).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct IdentifyData {
    /// Word 0: bit 15 clear for an ATA device.
    pub general_config: u16,
    pub words_1_9: [u16; 9],
    /// Words 10..=19.
    pub serial: [u16; 10],
    pub words_20_22: [u16; 3],
    /// Words 23..=26.
    pub firmware: [u16; 4],
    /// Words 27..=46.
    pub model: [u16; 20],
    pub words_47_48: [u16; 2],
    /// Word 49: bit 8 DMA, bit 9 LBA.
    pub capabilities: u16,
    pub words_50_59: [u16; 10],
    /// Words 60..=61, low word first: sectors addressable by LBA28 commands.
    pub lba28_sectors: [u16; 2],
    pub words_62_82: [u16; 21],
    /// Word 83: bit 10 the 48-bit address feature set, bit 13 FLUSH CACHE EXT; valid when
    /// bits 15..14 are 01.
    pub command_sets: u16,
    pub words_84_99: [u16; 16],
    /// Words 100..=103, low word first: sectors addressable by LBA48 commands.
    pub lba48_sectors: [u16; 4],
    pub words_104_254: [u16; 151],
    /// Word 255: signature 0xA5 in the low byte, checksum in the high.
    pub integrity: u16,
}

const _: () = assert!(size_of::<IdentifyData>() == 512);
const _: () = assert!(offset_of!(IdentifyData, serial) == 2 * 10);
const _: () = assert!(offset_of!(IdentifyData, model) == 2 * 27);
const _: () = assert!(offset_of!(IdentifyData, capabilities) == 2 * 49);
const _: () = assert!(offset_of!(IdentifyData, lba28_sectors) == 2 * 60);
const _: () = assert!(offset_of!(IdentifyData, command_sets) == 2 * 83);
const _: () = assert!(offset_of!(IdentifyData, lba48_sectors) == 2 * 100);
const _: () = assert!(offset_of!(IdentifyData, integrity) == 2 * 255);

/// What IDENTIFY DEVICE reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveInfo {
    /// Words 27..=46, spaces trimmed.
    pub model: String,
    /// Words 10..=19, spaces trimmed.
    pub serial: String,
    /// Words 23..=26, spaces trimmed.
    pub firmware: String,
    /// Words 60..=61: sectors addressable by LBA28 commands.
    pub lba28_sectors: u32,
    /// Word 83 bit 10: the 48-bit address feature set.
    pub lba48: bool,
    /// Words 100..=103 (0 unless `lba48`).
    pub lba48_sectors: u64,
    /// Word 49 bit 8.
    pub dma: bool,
    /// Word 83 bit 13.
    pub flush_ext: bool,
    /// Capacity in sectors: the LBA48 count if supported and non-zero, else the LBA28 count.
    pub sectors: u64,
    /// The raw words.
    pub words: Box<[u16; 256]>,
}

impl DriveInfo {
    /// Parse and validate IDENTIFY DEVICE data.
    pub fn parse(words: &[u16; 256]) -> Result<Self, AtaError> {
        if words.iter().all(|&w| w == 0) {
            return Err(AtaError::InvalidIdentify(IdentifyProblem::AllZero));
        }
        if words.iter().all(|&w| w == 0xFFFF) {
            return Err(AtaError::InvalidIdentify(IdentifyProblem::AllOnes));
        }
        let id: &IdentifyData = zerocopy::transmute_ref!(words);
        // Word 255: integrity word, valid if its low byte is the signature 0xA5.
        if id.integrity & 0xFF == 0xA5 {
            let sum = words.iter().fold(0u8, |s, &w| {
                s.wrapping_add(w as u8).wrapping_add((w >> 8) as u8)
            });
            if sum != 0 {
                return Err(AtaError::InvalidIdentify(IdentifyProblem::Checksum));
            }
        }
        if id.general_config & 0x8000 != 0 {
            return Err(AtaError::InvalidIdentify(IdentifyProblem::NotAta));
        }
        if id.capabilities & (1 << 9) == 0 {
            return Err(AtaError::InvalidIdentify(IdentifyProblem::NoLba));
        }
        // Words 82..=84 are valid when bit 14 is one and bit 15 zero.
        let w83 = if id.command_sets & 0xC000 == 0x4000 {
            id.command_sets
        } else {
            0
        };
        let lba48 = w83 & (1 << 10) != 0;
        let [lo, hi] = id.lba28_sectors;
        let lba28_sectors = u32::from(lo) | u32::from(hi) << 16;
        let lba48_sectors = if lba48 {
            id.lba48_sectors
                .iter()
                .rev()
                .fold(0u64, |acc, &w| acc << 16 | u64::from(w))
        } else {
            0
        };
        let sectors = if lba48 && lba48_sectors != 0 {
            lba48_sectors
        } else {
            u64::from(lba28_sectors)
        };
        Ok(Self {
            model: ata_string(&id.model),
            serial: ata_string(&id.serial),
            firmware: ata_string(&id.firmware),
            lba28_sectors,
            lba48,
            lba48_sectors,
            dma: id.capabilities & (1 << 8) != 0,
            flush_ext: w83 & (1 << 13) != 0,
            sectors,
            words: Box::new(*words),
        })
    }
}

/// An IDENTIFY string: two characters per word, the first in the high byte. Non-printable bytes
/// become '?'; leading and trailing spaces are trimmed.
pub fn ata_string(words: &[u16]) -> String {
    let mut s = String::with_capacity(words.len() * 2);
    for &w in words {
        for b in [(w >> 8) as u8, w as u8] {
            s.push(if (0x20..0x7F).contains(&b) {
                char::from(b)
            } else {
                '?'
            });
        }
    }
    String::from(s.trim_matches(' '))
}

/// Last sector an LBA28 command can reach is 0x0FFF_FFFE; requests ending beyond
/// `LBA28_LIMIT` use the EXT commands.
pub const LBA28_LIMIT: u64 = 0x0FFF_FFFF;
/// Most sectors in one LBA28 command (count register 0).
pub const LBA28_MAX_SECTORS: u64 = 256;
/// Most sectors in one LBA48 command (count registers 0).
pub const LBA48_MAX_SECTORS: u64 = 65536;

/// Duration of a PIO mode 0 cycle: the wait after a data block before reading status.
const PIO_CYCLE_NS: u64 = 600;
/// Settle time after writing the command (or device) register.
const SETTLE_NS: u64 = 400;

/// One command's share of a request: sectors `lba..lba + count`, LBA48 form or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub lba: u64,
    pub count: u64,
    pub ext: bool,
}

/// One IDE channel: up to two drives behind the same taskfile.
///
/// Call [`IdeChannel::soft_reset`] (or [`IdeChannel::set_interrupt`]) first: it programs the
/// device control register (nIEN set by default: polled completion).
pub struct IdeChannel<'p, P: PortStrings + ?Sized> {
    platform: &'p P,
    ports: ChannelPorts,
    /// Bounds of the waits.
    pub timeouts: Timeouts,
    /// How to provide the settle time after a command.
    pub settle: Settle,
    /// Use the EXT (LBA48) commands for every request (the drive must support them).
    pub force_lba48: bool,
    irq_vector: Option<u8>,
    /// The drive the device register selects, known idle (`None` after a reset or an error).
    selected: Option<Drive>,
    drives: [Option<DriveInfo>; 2],
}

impl<'p, P: PortStrings + ?Sized> IdeChannel<'p, P> {
    /// A channel at `ports`. No port access.
    pub fn new(platform: &'p P, ports: ChannelPorts) -> Self {
        Self {
            platform,
            ports,
            timeouts: Timeouts::default(),
            settle: Settle::default(),
            force_lba48: false,
            irq_vector: None,
            selected: None,
            drives: [None, None],
        }
    }

    pub fn ports(&self) -> ChannelPorts {
        self.ports
    }

    /// What IDENTIFY reported for `drive`, if it has been identified.
    pub fn info(&self, drive: Drive) -> Option<&DriveInfo> {
        self.drives[drive.index()].as_ref()
    }

    /// The interrupt vector completion is awaited on, if interrupt-driven.
    pub fn interrupt_vector(&self) -> Option<u8> {
        self.irq_vector
    }

    fn control_bits(&self) -> DeviceControl {
        if self.irq_vector.is_some() {
            DeviceControl::empty()
        } else {
            DeviceControl::NIEN
        }
    }

    /// `Some(vector)`: clear nIEN and wait for completion on `vector` (the kernel routes the
    /// channel's IRQ there). `None`: set nIEN and poll. Writes the device control register.
    pub fn set_interrupt(&mut self, vector: Option<u8>) {
        self.irq_vector = vector;
        self.platform
            .outb(self.ports.control, self.control_bits().bits());
    }

    // ---- register access -------------------------------------------------------------------

    fn port(&self, reg: u16) -> u16 {
        self.ports.command + reg
    }

    pub(crate) fn status(&self) -> Status {
        Status::from_bits_retain(self.platform.inb(self.port(reg::STATUS)))
    }

    fn alt_status(&self) -> Status {
        Status::from_bits_retain(self.platform.inb(self.ports.control))
    }

    fn error_reg(&self) -> ErrorReg {
        ErrorReg::from_bits_retain(self.platform.inb(self.port(reg::ERROR)))
    }

    fn write_reg(&self, reg: u16, value: u8) {
        self.platform.outb(self.port(reg), value);
    }

    fn spin_until(&self, since: u64, ns: u64) {
        while self.platform.now_ns().wrapping_sub(since) < ns {
            core::hint::spin_loop();
        }
    }

    /// The 400 ns after a command or device-register write, before status is valid.
    pub(crate) fn settle(&self, since: u64) {
        match self.settle {
            Settle::AltStatus => {
                self.alt_status();
            }
            Settle::Clock => self.spin_until(since, SETTLE_NS),
        }
    }

    /// The interrupt count to compare against later, if interrupt-driven.
    pub(crate) fn irq_snapshot(&self) -> Option<u64> {
        self.irq_vector.map(|v| self.platform.interrupt_count(v))
    }

    /// Map a status with ERR or DF to an error (reads the error register).
    fn device_error(&self, status: Status) -> AtaError {
        let error = self.error_reg();
        if status.contains(Status::DF) {
            AtaError::DeviceFault { status, error }
        } else if error.contains(ErrorReg::UNC) {
            AtaError::Uncorrectable { error }
        } else if error.contains(ErrorReg::IDNF) {
            AtaError::IdNotFound { error }
        } else if error.contains(ErrorReg::ICRC) {
            AtaError::InterfaceCrc { error }
        } else if error.contains(ErrorReg::ABRT) {
            AtaError::Aborted { error }
        } else {
            AtaError::DeviceError { status, error }
        }
    }

    /// Wait until the interrupt count of the channel's vector moves past `*snapshot`; then
    /// `*snapshot` is the new count. Bounded by `deadline` (a `now_ns` value).
    pub(crate) fn wait_interrupt(
        &mut self,
        snapshot: &mut u64,
        start: u64,
        timeout: u64,
    ) -> Result<(), AtaError> {
        let Some(vector) = self.irq_vector else {
            return Ok(());
        };
        loop {
            let epoch = self.platform.interrupt_epoch();
            let now = self.platform.interrupt_count(vector);
            if now != *snapshot {
                *snapshot = now;
                // The caller reads the status register next, which clears INTRQ.
                self.platform.ack_interrupt(vector);
                return Ok(());
            }
            if self.platform.now_ns().wrapping_sub(start) >= timeout {
                self.selected = None;
                return Err(AtaError::Timeout {
                    waiting_for: WaitFor::Interrupt,
                    status: self.alt_status().bits(),
                });
            }
            self.platform.wait_for_interrupt(epoch);
        }
    }

    /// Poll (or, with `irq` set, wait for interrupts and then read) the status register until
    /// BSY is clear and either DRQ is set (`want` = [`WaitFor::DataRequest`]) or DRQ is clear
    /// (`want` = [`WaitFor::Completion`] or [`WaitFor::NotBusy`]). ERR/DF end the wait with the
    /// mapped error; a floating bus (0xFF) with [`AtaError::NoDevice`].
    pub(crate) fn wait(
        &mut self,
        want: WaitFor,
        mut irq: Option<u64>,
        timeout: u64,
    ) -> Result<Status, AtaError> {
        let start = self.platform.now_ns();
        loop {
            if let Some(snapshot) = irq.as_mut() {
                self.wait_interrupt(snapshot, start, timeout)?;
            }
            let status = self.status();
            if status.bits() == 0xFF {
                self.selected = None;
                return Err(AtaError::NoDevice);
            }
            if !status.contains(Status::BSY) {
                if want != WaitFor::NotBusy && status.intersects(Status::ERR | Status::DF) {
                    return Err(self.device_error(status));
                }
                let drq = status.contains(Status::DRQ);
                match want {
                    WaitFor::DataRequest if drq => return Ok(status),
                    WaitFor::Completion | WaitFor::NotBusy if !drq => return Ok(status),
                    _ => {}
                }
            }
            if self.platform.now_ns().wrapping_sub(start) >= timeout {
                self.selected = None;
                return Err(AtaError::Timeout {
                    waiting_for: want,
                    status: status.bits(),
                });
            }
        }
    }

    // ---- reset and identification ----------------------------------------------------------

    /// Software reset of both drives: SRST for at least 5 µs, then wait 2 ms and for BSY to clear
    /// (bounded by [`Timeouts::reset_ns`]). Leaves nIEN as configured. Forgets identified drives.
    /// [`AtaError::NoDevice`] if the bus floats (status 0xFF).
    pub fn soft_reset(&mut self) -> Result<(), AtaError> {
        self.selected = None;
        self.drives = [None, None];
        if self.alt_status().bits() == 0xFF {
            return Err(AtaError::NoDevice);
        }
        let ctl = self.control_bits();
        self.platform
            .outb(self.ports.control, (ctl | DeviceControl::SRST).bits());
        let t = self.platform.now_ns();
        self.spin_until(t, 5_000);
        self.platform.outb(self.ports.control, ctl.bits());
        let t = self.platform.now_ns();
        self.spin_until(t, 2_000_000);
        // Device 0 is selected after a reset, but a VMM may finish the reset later than the
        // 2 ms (QEMU runs SRST in a bottom half on its main loop): until then the drive
        // selected before stays selected and ignores a device-register write, and an absent
        // slave reads status 0, which looks idle. So the reset is done only when BSY is clear
        // and device 0 reads back as selected; while it does not, select it again (never
        // writing the taskfile while BSY).
        let timeout = self.timeouts.reset_ns;
        let start = self.platform.now_ns();
        loop {
            let status = self.status();
            if status.bits() == 0xFF {
                return Err(AtaError::NoDevice);
            }
            if !status.contains(Status::BSY) {
                let device = DeviceReg::from_bits_retain(self.platform.inb(self.port(reg::DEVICE)));
                if !device.contains(DeviceReg::DEV) {
                    return Ok(());
                }
                self.write_reg(reg::DEVICE, Drive::Master.device_bits().bits());
            }
            if self.platform.now_ns().wrapping_sub(start) >= timeout {
                return Err(AtaError::Timeout {
                    waiting_for: WaitFor::NotBusy,
                    status: status.bits(),
                });
            }
        }
    }

    /// Select `drive` by writing `device` (which must carry the drive's DEV bit), wait the settle
    /// time and for the drive to be idle (BSY and DRQ clear). Callers skip this when the drive
    /// is already selected and known idle; the device register is then just a taskfile write.
    pub(crate) fn select(&mut self, drive: Drive, device: u8) -> Result<(), AtaError> {
        self.write_reg(reg::DEVICE, device);
        let t = self.platform.now_ns();
        self.settle(t);
        self.wait(WaitFor::NotBusy, None, self.timeouts.command_ns)?;
        self.selected = Some(drive);
        Ok(())
    }

    /// Issue IDENTIFY DEVICE to `drive`, parse and remember the result.
    ///
    /// [`AtaError::NoDevice`] if the bus floats or the status reads 0 after the command (no
    /// drive); [`AtaError::NotAta`] if the command is aborted with a packet/SATA signature.
    pub fn identify(&mut self, drive: Drive) -> Result<&DriveInfo, AtaError> {
        self.drives[drive.index()] = None;
        if self.alt_status().bits() == 0xFF {
            return Err(AtaError::NoDevice);
        }
        self.selected = None;
        self.select(drive, drive.device_bits().bits())?;
        let irq = self.irq_snapshot();
        self.write_reg(reg::COMMAND, cmd::IDENTIFY_DEVICE);
        let t = self.platform.now_ns();
        self.settle(t);
        if self.status().is_empty() {
            self.selected = None;
            return Err(AtaError::NoDevice);
        }
        let words = match self.wait(WaitFor::DataRequest, irq, self.timeouts.command_ns) {
            Ok(_) => {
                let mut words = [0u16; 256];
                self.platform.ins16(self.port(reg::DATA), &mut words);
                let t = self.platform.now_ns();
                self.spin_until(t, PIO_CYCLE_NS);
                self.wait(WaitFor::Completion, None, self.timeouts.command_ns)?;
                words
            }
            Err(AtaError::Aborted { error }) => {
                let lba_mid = self.platform.inb(self.port(reg::LBA_MID));
                let lba_high = self.platform.inb(self.port(reg::LBA_HIGH));
                self.selected = None;
                if (lba_mid, lba_high) == NO_DEVICE_SIGNATURE {
                    return Err(AtaError::NoDevice);
                }
                if (lba_mid, lba_high) != (0, 0) {
                    return Err(AtaError::NotAta { lba_mid, lba_high });
                }
                return Err(AtaError::Aborted { error });
            }
            Err(e) => return Err(e),
        };
        let info = DriveInfo::parse(&words)?;
        Ok(self.drives[drive.index()].insert(info))
    }

    /// What position `drive` holds: IDENTIFY DEVICE, with an absent drive, a floating bus and
    /// a non-ATA device classified instead of failed. `Err` only for a device that is there
    /// and misbehaves (times out, reports an error, sends unusable IDENTIFY data).
    pub fn probe_position(&mut self, drive: Drive) -> Result<Presence, AtaError> {
        if self.alt_status().bits() == 0xFF {
            return Ok(Presence::Floating);
        }
        let result = self.identify(drive).map(|_| ());
        match result {
            Ok(()) => Ok(Presence::Ata),
            Err(AtaError::NoDevice) if self.alt_status().bits() == 0xFF => Ok(Presence::Floating),
            Err(AtaError::NoDevice) => Ok(Presence::Empty),
            Err(AtaError::NotAta { lba_mid, lba_high }) => {
                Ok(Presence::NotAta { lba_mid, lba_high })
            }
            Err(e) => Err(e),
        }
    }

    /// Soft-reset the channel and probe both positions, master first. A floating channel is
    /// [`Presence::Floating`] for both; a reset that fails otherwise is that error for both.
    pub fn probe_drives(&mut self) -> [Result<Presence, AtaError>; 2] {
        match self.soft_reset() {
            Ok(()) => Drive::ALL.map(|d| self.probe_position(d)),
            Err(AtaError::NoDevice) => [Ok(Presence::Floating); 2],
            Err(e) => [Err(e); 2],
        }
    }

    /// [`IdeChannel::identify`], with an absent drive as `Ok(None)`.
    pub fn probe(&mut self, drive: Drive) -> Result<Option<&DriveInfo>, AtaError> {
        match self.identify(drive) {
            Ok(_) => Ok(self.info(drive)),
            Err(AtaError::NoDevice) => Ok(None),
            Err(e) => Err(e),
        }
    }

    // ---- requests ---------------------------------------------------------------------------

    /// Check a request of `len` bytes at `lba` against the buffer rules and the capacity. No port
    /// access. Returns the sector count.
    pub(crate) fn check_request(
        &self,
        drive: Drive,
        lba: u64,
        len: usize,
    ) -> Result<u64, AtaError> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(AtaError::BufferLength { len });
        }
        let info = self.info(drive).ok_or(AtaError::NotIdentified)?;
        let count = (len / SECTOR_SIZE) as u64;
        match lba.checked_add(count) {
            Some(end) if end <= info.sectors => {}
            _ => {
                return Err(AtaError::OutOfRange {
                    lba,
                    count,
                    capacity: info.sectors,
                })
            }
        }
        if self.force_lba48 && !info.lba48 {
            return Err(AtaError::Lba48Unsupported);
        }
        Ok(count)
    }

    /// The next command of a request: `remaining` sectors at `lba`, at most `limit` of them.
    /// LBA28 when one LBA28 command covers it (or the drive lacks LBA48), else LBA48.
    pub(crate) fn plan(&self, drive: Drive, lba: u64, remaining: u64) -> Chunk {
        let lba48 = self.info(drive).is_some_and(|i| i.lba48);
        let fits28 = remaining <= LBA28_MAX_SECTORS && lba + remaining <= LBA28_LIMIT;
        if lba48 && (self.force_lba48 || !fits28) {
            Chunk {
                lba,
                count: remaining.min(LBA48_MAX_SECTORS),
                ext: true,
            }
        } else {
            Chunk {
                lba,
                count: remaining.min(LBA28_MAX_SECTORS),
                ext: false,
            }
        }
    }

    /// Select the drive and write the taskfile of a read/write command (high-order bytes first
    /// for LBA48), then the command register. Returns the time of the command write.
    pub(crate) fn issue(
        &mut self,
        drive: Drive,
        chunk: Chunk,
        command: u8,
    ) -> Result<u64, AtaError> {
        let Chunk { lba, count, ext } = chunk;
        // The count register value 0 means the maximum (256 / 65536).
        let n = count as u32;
        let device = if ext {
            drive.device_bits().bits()
        } else {
            drive.device_bits().bits() | ((lba >> 24) as u8 & DeviceReg::HEAD.bits())
        };
        // A change of drive selects first (and waits); otherwise the device register is simply
        // the last taskfile write.
        let reselect = self.selected != Some(drive);
        if reselect {
            self.select(drive, device)?;
        }
        if ext {
            self.write_reg(reg::SECTOR_COUNT, (n >> 8) as u8);
            self.write_reg(reg::LBA_LOW, (lba >> 24) as u8);
            self.write_reg(reg::LBA_MID, (lba >> 32) as u8);
            self.write_reg(reg::LBA_HIGH, (lba >> 40) as u8);
        }
        self.write_reg(reg::SECTOR_COUNT, n as u8);
        self.write_reg(reg::LBA_LOW, lba as u8);
        self.write_reg(reg::LBA_MID, (lba >> 8) as u8);
        self.write_reg(reg::LBA_HIGH, (lba >> 16) as u8);
        if !reselect {
            self.write_reg(reg::DEVICE, device);
        }
        self.write_reg(reg::COMMAND, command);
        Ok(self.platform.now_ns())
    }

    /// Read `buf.len() / 512` sectors at `lba` by PIO (READ SECTORS, or READ SECTORS EXT when
    /// needed or forced). Splits requests larger than one command allows.
    pub fn read_pio(&mut self, drive: Drive, lba: u64, buf: &mut [u8]) -> Result<(), AtaError> {
        let count = self.check_request(drive, lba, buf.len())?;
        let mut done = 0;
        while done < count {
            let chunk = self.plan(drive, lba + done, count - done);
            let start = done as usize * SECTOR_SIZE;
            let end = start + chunk.count as usize * SECTOR_SIZE;
            self.pio_in(drive, chunk, &mut buf[start..end])?;
            done += chunk.count;
        }
        Ok(())
    }

    /// Write `buf.len() / 512` sectors at `lba` by PIO (WRITE SECTORS, or the EXT form).
    pub fn write_pio(&mut self, drive: Drive, lba: u64, buf: &[u8]) -> Result<(), AtaError> {
        let count = self.check_request(drive, lba, buf.len())?;
        let mut done = 0;
        while done < count {
            let chunk = self.plan(drive, lba + done, count - done);
            let start = done as usize * SECTOR_SIZE;
            let end = start + chunk.count as usize * SECTOR_SIZE;
            self.pio_out(drive, chunk, &buf[start..end])?;
            done += chunk.count;
        }
        Ok(())
    }

    fn pio_in(&mut self, drive: Drive, chunk: Chunk, buf: &mut [u8]) -> Result<(), AtaError> {
        let command = if chunk.ext {
            cmd::READ_SECTORS_EXT
        } else {
            cmd::READ_SECTORS
        };
        let mut irq = self.irq_snapshot();
        let t = self.issue(drive, chunk, command)?;
        if irq.is_none() {
            self.settle(t);
        }
        let timeout = self.timeouts.command_ns;
        for sector in buf.as_chunks_mut::<SECTOR_SIZE>().0 {
            // Data-in: an interrupt precedes every block.
            self.wait(WaitFor::DataRequest, irq, timeout)?;
            irq = self.irq_snapshot();
            self.read_sector_data(sector);
            let t = self.platform.now_ns();
            self.spin_until(t, PIO_CYCLE_NS);
        }
        // No interrupt after the last block: poll once to see completion (or an error).
        self.wait(WaitFor::Completion, None, timeout)?;
        Ok(())
    }

    fn pio_out(&mut self, drive: Drive, chunk: Chunk, buf: &[u8]) -> Result<(), AtaError> {
        let command = if chunk.ext {
            cmd::WRITE_SECTORS_EXT
        } else {
            cmd::WRITE_SECTORS
        };
        let t = self.issue(drive, chunk, command)?;
        self.settle(t);
        let timeout = self.timeouts.command_ns;
        // Data-out: DRQ for the first block comes without an interrupt.
        let mut irq = None;
        for sector in buf.as_chunks::<SECTOR_SIZE>().0 {
            self.wait(WaitFor::DataRequest, irq, timeout)?;
            irq = self.irq_snapshot();
            self.write_sector_data(sector);
            let t = self.platform.now_ns();
            self.spin_until(t, PIO_CYCLE_NS);
        }
        self.wait(WaitFor::Completion, irq, timeout)?;
        Ok(())
    }

    fn read_sector_data(&self, dst: &mut [u8]) {
        let port = self.port(reg::DATA);
        // SAFETY: every bit pattern is a valid u16 and u8, so viewing the aligned middle of the
        // byte slice as words is sound.
        let (head, words, _) = unsafe { dst.align_to_mut::<u16>() };
        if cfg!(target_endian = "little") && head.is_empty() && words.len() == SECTOR_SIZE / 2 {
            self.platform.ins16(port, words);
        } else {
            let mut tmp = [0u16; SECTOR_SIZE / 2];
            self.platform.ins16(port, &mut tmp);
            for (d, w) in dst.as_chunks_mut::<2>().0.iter_mut().zip(tmp) {
                *d = w.to_le_bytes();
            }
        }
    }

    fn write_sector_data(&self, src: &[u8]) {
        let port = self.port(reg::DATA);
        // SAFETY: as in `read_sector_data`; the view is only read.
        let (head, words, _) = unsafe { src.align_to::<u16>() };
        if cfg!(target_endian = "little") && head.is_empty() && words.len() == SECTOR_SIZE / 2 {
            self.platform.outs16(port, words);
        } else {
            let mut tmp = [0u16; SECTOR_SIZE / 2];
            for (w, s) in tmp.iter_mut().zip(src.as_chunks::<2>().0) {
                *w = u16::from_le_bytes(*s);
            }
            self.platform.outs16(port, &tmp);
        }
    }

    /// FLUSH CACHE (FLUSH CACHE EXT on drives that support it): write the drive's cache to the
    /// media. Bounded by [`Timeouts::flush_ns`].
    pub fn flush(&mut self, drive: Drive) -> Result<(), AtaError> {
        let info = self.info(drive).ok_or(AtaError::NotIdentified)?;
        let command = if info.lba48 && info.flush_ext {
            cmd::FLUSH_CACHE_EXT
        } else {
            cmd::FLUSH_CACHE
        };
        if self.selected != Some(drive) {
            self.select(drive, drive.device_bits().bits())?;
        }
        let irq = self.irq_snapshot();
        self.write_reg(reg::COMMAND, command);
        let t = self.platform.now_ns();
        if irq.is_none() {
            self.settle(t);
        }
        self.wait(WaitFor::Completion, irq, self.timeouts.flush_ns)?;
        Ok(())
    }
}

#[cfg(test)]
#[path = "ide_tests.rs"]
mod tests;
