//! IDE/ATA: taskfile PIO and bus-master DMA.
//!
//! - [`ide`]: one IDE channel (command block + control block ports) driven through the taskfile
//!   registers: soft reset, detection, IDENTIFY DEVICE, PIO READ/WRITE SECTORS (LBA28 and LBA48),
//!   FLUSH CACHE, polled or interrupt-driven completion.
//! - [`bmdma`]: Bus Master IDE DMA (PIIX style, the I/O BAR4 of the IDE function): PRD tables,
//!   READ/WRITE DMA (and EXT).
//!
//! Every port access may be a VM exit, so the drivers avoid redundant ones: sector data moves with
//! one [`PortStrings::ins16`] per sector, the device register is written only as part of a
//! command (and re-selection waits only when the drive changes), and the alternate status register
//! is read only for the 400 ns settle time the specification requires after a command.

use core::fmt;

use crate::platform::{Platform, PlatformError};

pub mod bmdma;
pub mod ide;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod positions_tests;

use ide::{ErrorReg, Status};

/// Bytes per (logical) sector. Devices reporting other logical sector sizes are not supported.
pub const SECTOR_SIZE: usize = 512;

/// Word-string port I/O: a whole sector in one call.
///
/// The defaults are loops over [`Platform::inw`] / [`Platform::outw`] (one access per word). A
/// kernel overrides them with `rep insw` / `rep outsw`, which under a VMM is one exit for a
/// 512-byte `rep insw` instead of 256:
///
/// ```ignore
/// impl PortStrings for KernelPlatform {
///     fn ins16(&self, port: u16, buf: &mut [u16]) {
///         // SAFETY: writes exactly buf.len() words to buf; port access is allowed by the TSS.
///         unsafe {
///             core::arch::asm!("rep insw", in("dx") port, inout("rdi") buf.as_mut_ptr() => _,
///                 inout("rcx") buf.len() => _, options(nostack, preserves_flags));
///         }
///     }
/// }
/// ```
pub trait PortStrings: Platform {
    /// Read `buf.len()` words from `port`.
    fn ins16(&self, port: u16, buf: &mut [u16]) {
        for w in buf {
            *w = self.inw(port);
        }
    }

    /// Write the words of `buf` to `port`.
    fn outs16(&self, port: u16, buf: &[u16]) {
        for &w in buf {
            self.outw(port, w);
        }
    }
}

/// What a driver was waiting for when it gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFor {
    /// BSY to clear (after reset, or before selecting a drive).
    NotBusy,
    /// DRQ: the device ready to transfer a data block.
    DataRequest,
    /// BSY and DRQ clear: command completion.
    Completion,
    /// An interrupt on the channel's vector.
    Interrupt,
    /// The bus-master engine to finish (active bit clear or interrupt bit set).
    DmaEngine,
}

/// Why IDENTIFY DEVICE data was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentifyProblem {
    /// Every word is 0x0000.
    AllZero,
    /// Every word is 0xFFFF.
    AllOnes,
    /// Word 255 carries the 0xA5 signature but the bytes do not sum to zero.
    Checksum,
    /// Word 0 bit 15 set: not an ATA device.
    NotAta,
    /// Word 49 bit 9 clear: no LBA addressing (CHS-only devices are not supported).
    NoLba,
}

/// Errors of the IDE/ATA drivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtaError {
    /// Nothing answers: the bus floats (status reads 0xFF) or the drive is absent (status 0).
    NoDevice,
    /// IDENTIFY DEVICE was aborted and the signature (LBA mid/high) names a non-ATA device, e.g.
    /// 0x14/0xEB for ATAPI or 0x3C/0xC3 for SATA.
    NotAta { lba_mid: u8, lba_high: u8 },
    /// IDENTIFY DEVICE data is unusable.
    InvalidIdentify(IdentifyProblem),
    /// The drive has not been identified (call `identify` first).
    NotIdentified,
    /// Buffer length is not a multiple of [`SECTOR_SIZE`].
    BufferLength { len: usize },
    /// The request reaches past the end of the device. Refused before any I/O.
    OutOfRange { lba: u64, count: u64, capacity: u64 },
    /// An LBA48 command was required (or forced) but the drive lacks the 48-bit feature set.
    Lba48Unsupported,
    /// A bounded wait expired. `status` is the last status (ATA status, or bus-master status when
    /// waiting for [`WaitFor::DmaEngine`]).
    Timeout { waiting_for: WaitFor, status: u8 },
    /// ERR with ABRT: command aborted (unsupported, or a parameter out of range).
    Aborted { error: ErrorReg },
    /// ERR with IDNF: the address was not found (beyond the device, or unreadable ID).
    IdNotFound { error: ErrorReg },
    /// ERR with UNC: uncorrectable data error.
    Uncorrectable { error: ErrorReg },
    /// ERR with ICRC: interface CRC error (Ultra DMA).
    InterfaceCrc { error: ErrorReg },
    /// ERR with some other error bits.
    DeviceError { status: Status, error: ErrorReg },
    /// DF: device fault.
    DeviceFault { status: Status, error: ErrorReg },
    /// The bus-master status register reported an error (e.g. a PCI master/target abort).
    BusMaster { bm_status: u8 },
    /// The DMA engine stopped before the device finished (PRD table too short) or the device
    /// still asserted BSY/DRQ after the transfer.
    DmaIncomplete { bm_status: u8, status: u8 },
    /// A DMA region is unusable for bus-master DMA: odd address or length, empty, or above 4 GiB.
    BadDmaRegion { phys: u64, len: usize },
    /// The function has no I/O BAR4 (no bus-master registers).
    NoBusMaster,
    /// A platform call failed (DMA allocation).
    Platform(PlatformError),
}

impl From<PlatformError> for AtaError {
    fn from(e: PlatformError) -> Self {
        Self::Platform(e)
    }
}

impl fmt::Display for AtaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDevice => write!(f, "no device"),
            Self::NotAta { lba_mid, lba_high } => {
                write!(
                    f,
                    "not an ATA device (signature {lba_mid:#04x}/{lba_high:#04x})"
                )
            }
            Self::InvalidIdentify(p) => write!(f, "invalid IDENTIFY data: {p:?}"),
            Self::NotIdentified => write!(f, "drive not identified"),
            Self::BufferLength { len } => {
                write!(f, "buffer length {len} is not a multiple of {SECTOR_SIZE}")
            }
            Self::OutOfRange {
                lba,
                count,
                capacity,
            } => write!(
                f,
                "{count} sector(s) at LBA {lba} exceed capacity {capacity}"
            ),
            Self::Lba48Unsupported => write!(f, "drive does not support LBA48"),
            Self::Timeout {
                waiting_for,
                status,
            } => write!(
                f,
                "timeout waiting for {waiting_for:?} (status {status:#04x})"
            ),
            Self::Aborted { error } => write!(f, "command aborted (error {:#04x})", error.bits()),
            Self::IdNotFound { error } => write!(f, "ID not found (error {:#04x})", error.bits()),
            Self::Uncorrectable { error } => {
                write!(f, "uncorrectable data error (error {:#04x})", error.bits())
            }
            Self::InterfaceCrc { error } => {
                write!(f, "interface CRC error (error {:#04x})", error.bits())
            }
            Self::DeviceError { status, error } => write!(
                f,
                "device error (status {:#04x}, error {:#04x})",
                status.bits(),
                error.bits()
            ),
            Self::DeviceFault { status, error } => write!(
                f,
                "device fault (status {:#04x}, error {:#04x})",
                status.bits(),
                error.bits()
            ),
            Self::BusMaster { bm_status } => {
                write!(f, "bus-master DMA error (status {bm_status:#04x})")
            }
            Self::DmaIncomplete { bm_status, status } => write!(
                f,
                "DMA incomplete (bus-master status {bm_status:#04x}, status {status:#04x})"
            ),
            Self::BadDmaRegion { phys, len } => {
                write!(f, "unusable DMA region {phys:#x}+{len:#x}")
            }
            Self::NoBusMaster => write!(f, "no bus-master I/O BAR"),
            Self::Platform(e) => write!(f, "platform: {e}"),
        }
    }
}
