//! PCI configuration space access and bus enumeration over [`Platform`] port I/O.
//!
//! Uses configuration mechanism #1: a dword written to `CONFIG_ADDRESS` (0xCF8) selects
//! bus/device/function and an aligned dword of configuration space; the selected dword is then
//! accessed through `CONFIG_DATA` (0xCFC..=0xCFF), byte `n` of the dword at port `0xCFC + n`.
//!
//! Every port access may be a VM exit, so [`Pci::enumerate`] does not brute-force all 256 buses:
//! it scans bus 0 and follows PCI-to-PCI bridges to their secondary buses.
//!
//! Nothing a device returns makes this module panic: odd values end up as [`PciError`]s in
//! [`PciFunction::issues`] or [`CapabilityList::error`].
//!
//! Config accesses are two port operations (select, then data) and are not atomic; callers must
//! not interleave config accesses from several CPUs or interrupt handlers.

use alloc::vec::Vec;
use core::fmt;

use crate::platform::Platform;

/// Port of the configuration address register.
pub const CONFIG_ADDRESS: u16 = 0xCF8;
/// First port of the configuration data window (four bytes wide).
pub const CONFIG_DATA: u16 = 0xCFC;
/// Size of the (non-extended) configuration space of one function.
pub const CONFIG_SPACE_SIZE: u16 = 256;

/// Offsets of configuration-space registers (common header and type 0/1 specifics).
pub mod reg {
    pub const VENDOR_ID: u16 = 0x00;
    pub const DEVICE_ID: u16 = 0x02;
    pub const COMMAND: u16 = 0x04;
    pub const STATUS: u16 = 0x06;
    pub const REVISION_ID: u16 = 0x08;
    pub const PROG_IF: u16 = 0x09;
    pub const SUBCLASS: u16 = 0x0A;
    pub const CLASS: u16 = 0x0B;
    pub const HEADER_TYPE: u16 = 0x0E;
    /// First base address register; BAR `n` is at `BAR0 + 4 * n`.
    pub const BAR0: u16 = 0x10;
    /// Type 1 (bridge) header: primary bus number.
    pub const PRIMARY_BUS: u16 = 0x18;
    /// Type 1 (bridge) header: secondary bus number.
    pub const SECONDARY_BUS: u16 = 0x19;
    /// Type 1 (bridge) header: subordinate bus number.
    pub const SUBORDINATE_BUS: u16 = 0x1A;
    /// Type 0 header: subsystem vendor ID (the subsystem device ID follows at 0x2E).
    pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2C;
    pub const SUBSYSTEM_ID: u16 = 0x2E;
    pub const CAPABILITIES_POINTER: u16 = 0x34;
    pub const INTERRUPT_LINE: u16 = 0x3C;
    pub const INTERRUPT_PIN: u16 = 0x3D;
}

/// Command register bits.
pub mod command {
    /// Respond to I/O space accesses.
    pub const IO_SPACE: u16 = 1 << 0;
    /// Respond to memory space accesses.
    pub const MEMORY_SPACE: u16 = 1 << 1;
    /// May act as bus master (DMA).
    pub const BUS_MASTER: u16 = 1 << 2;
    /// Disable legacy INTx assertion.
    pub const INTERRUPT_DISABLE: u16 = 1 << 10;
}

/// Status register bit: a capability list is present at [`reg::CAPABILITIES_POINTER`].
pub const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;

/// Header type bit 7: the device implements functions other than 0.
pub const HEADER_TYPE_MULTIFUNCTION: u8 = 0x80;
/// Header layout (header type bits 6:0) of an ordinary device.
pub const HEADER_LAYOUT_DEVICE: u8 = 0x00;
/// Header layout of a PCI-to-PCI bridge.
pub const HEADER_LAYOUT_BRIDGE: u8 = 0x01;

/// Capability IDs.
pub mod cap_id {
    pub const POWER_MANAGEMENT: u8 = 0x01;
    pub const MSI: u8 = 0x05;
    /// Vendor-specific capability (virtio uses several of them).
    pub const VENDOR_SPECIFIC: u8 = 0x09;
    pub const PCI_EXPRESS: u8 = 0x10;
    pub const MSI_X: u8 = 0x11;
}

/// Vendor ID read from an absent function.
pub const VENDOR_ABSENT: u16 = 0xFFFF;

/// Lowest offset a capability may live at (the standard header occupies 0x00..0x40).
const CAP_MIN_OFFSET: u8 = 0x40;

/// Errors of config access, and problems found in what a device returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciError {
    /// Device >= 32 or function >= 8.
    InvalidAddress(PciAddress),
    /// The access `offset..offset + width` does not fit in the 256-byte configuration space.
    OffsetOutOfRange { offset: u16, width: u8 },
    /// No function responds at this address (vendor ID 0xffff).
    NoDevice(PciAddress),
    /// A capability pointer (read at config offset `at`) points into the header or is otherwise
    /// unusable; the capability list was truncated there.
    BadCapabilityPointer { at: u8, pointer: u8 },
    /// The capability list points back to `pointer`, already visited; truncated there.
    CapabilityLoop { pointer: u8 },
    /// BAR `index` is a 64-bit memory BAR but there is no following slot for its upper half.
    Bar64InLastSlot { index: u8 },
    /// BAR `index` is a memory BAR of a reserved type.
    BarReservedType { index: u8, raw: u32 },
    /// BAR `index` reads back no writable address bits after sizing (size would be 0 or 2^32+).
    BarNoSize { index: u8, raw: u32, sized: u32 },
    /// BAR `index` is an I/O BAR whose range does not fit in the 16-bit x86 port space.
    BarIoOutOfRange { index: u8, raw: u32, size: u32 },
}

impl fmt::Display for PciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidAddress(a) => write!(
                f,
                "invalid PCI address (bus {:#x} device {:#x} function {:#x})",
                a.bus, a.device, a.function
            ),
            Self::OffsetOutOfRange { offset, width } => write!(
                f,
                "config access of {width} byte(s) at {offset:#x} is outside config space"
            ),
            Self::NoDevice(a) => write!(f, "no PCI function at {a}"),
            Self::BadCapabilityPointer { at, pointer } => {
                write!(f, "bad capability pointer {pointer:#04x} at {at:#04x}")
            }
            Self::CapabilityLoop { pointer } => {
                write!(f, "capability list loops back to {pointer:#04x}")
            }
            Self::Bar64InLastSlot { index } => {
                write!(f, "BAR{index} is 64-bit but has no upper slot")
            }
            Self::BarReservedType { index, raw } => {
                write!(f, "BAR{index} has reserved type ({raw:#010x})")
            }
            Self::BarNoSize { index, raw, sized } => write!(
                f,
                "BAR{index} ({raw:#010x}) has no size (reads {sized:#010x} after sizing)"
            ),
            Self::BarIoOutOfRange { index, raw, size } => write!(
                f,
                "BAR{index} I/O range {:#x}+{size:#x} exceeds the port space",
                raw & !0x3
            ),
        }
    }
}

/// Bus/device/function of a PCI function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    pub bus: u8,
    /// 0..32
    pub device: u8,
    /// 0..8
    pub function: u8,
}

impl PciAddress {
    pub const fn new(bus: u8, device: u8, function: u8) -> Self {
        Self {
            bus,
            device,
            function,
        }
    }

    /// Device < 32 and function < 8.
    pub const fn is_valid(&self) -> bool {
        self.device < 32 && self.function < 8
    }

    /// The `CONFIG_ADDRESS` value selecting the dword containing `offset` (enable bit set).
    pub const fn config_address(&self, offset: u16) -> u32 {
        0x8000_0000
            | (self.bus as u32) << 16
            | ((self.device & 0x1F) as u32) << 11
            | ((self.function & 0x7) as u32) << 8
            | (offset & 0xFC) as u32
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{:x}",
            self.bus, self.device, self.function
        )
    }
}

/// A decoded, sized base address register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bar {
    /// I/O space range.
    Io { port: u16, size: u32 },
    /// Memory space range.
    Memory {
        addr: u64,
        size: u64,
        /// Occupies two BAR slots (this one and the next).
        is_64: bool,
        prefetchable: bool,
    },
}

impl Bar {
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        match *self {
            Self::Io { size, .. } => u64::from(size),
            Self::Memory { size, .. } => size,
        }
    }

    /// Port (I/O) or physical address (memory) of the range.
    pub fn base(&self) -> u64 {
        match *self {
            Self::Io { port, .. } => u64::from(port),
            Self::Memory { addr, .. } => addr,
        }
    }

    pub fn is_io(&self) -> bool {
        matches!(self, Self::Io { .. })
    }
}

impl fmt::Display for Bar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Io { port, size } => write!(f, "io {port:#x}+{size:#x}"),
            Self::Memory {
                addr,
                size,
                is_64,
                prefetchable,
            } => {
                write!(f, "mem{}", if is_64 { 64 } else { 32 })?;
                if prefetchable {
                    write!(f, " pf")?;
                }
                write!(f, " {addr:#x}+{size:#x}")
            }
        }
    }
}

/// One entry of a capability list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    /// Capability ID (see [`cap_id`]).
    pub id: u8,
    /// Config-space offset of the capability (its ID byte).
    pub offset: u8,
}

/// The result of walking a capability list: the entries found, and why the walk stopped early if
/// it did (the entries before the problem are still returned).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapabilityList {
    pub caps: Vec<Capability>,
    pub error: Option<PciError>,
}

impl CapabilityList {
    /// First capability with this ID.
    pub fn find(&self, id: u8) -> Option<Capability> {
        self.caps.iter().copied().find(|c| c.id == id)
    }

    /// All capabilities with this ID, in list order.
    pub fn with_id(&self, id: u8) -> impl Iterator<Item = Capability> + '_ {
        self.caps.iter().copied().filter(move |c| c.id == id)
    }
}

/// Everything enumeration learns about one function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciFunction {
    pub address: PciAddress,
    pub vendor_id: u16,
    pub device_id: u16,
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
    pub revision: u8,
    /// Raw header type, including the multifunction bit 7.
    pub header_type: u8,
    /// Subsystem vendor and device ID (type 0 headers; 0 for bridges). A transitional virtio
    /// device carries its device type in `subsystem_id`.
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
    pub interrupt_line: u8,
    /// 0 = none, 1..=4 = INTA#..INTD#.
    pub interrupt_pin: u8,
    /// BARs by slot. The slot after a 64-bit BAR (its upper half) is `None`, as are unimplemented
    /// BARs and those listed in `issues`. Type 0 headers have six slots, bridges two.
    pub bars: [Option<Bar>; 6],
    /// Capability list in list order (possibly truncated; see `issues`).
    pub capabilities: Vec<Capability>,
    /// Secondary bus number, for PCI-to-PCI bridges.
    pub secondary_bus: Option<u8>,
    /// Problems found while probing (bad BARs, broken capability list).
    pub issues: Vec<PciError>,
}

impl PciFunction {
    /// Header layout (header type without the multifunction bit).
    pub fn header_layout(&self) -> u8 {
        self.header_type & !HEADER_TYPE_MULTIFUNCTION
    }

    pub fn is_multifunction(&self) -> bool {
        self.header_type & HEADER_TYPE_MULTIFUNCTION != 0
    }

    pub fn is_bridge(&self) -> bool {
        self.header_layout() == HEADER_LAYOUT_BRIDGE
    }

    /// BAR in slot `index` (None if out of range, unimplemented or the upper half of a 64-bit BAR).
    pub fn bar(&self, index: usize) -> Option<Bar> {
        self.bars.get(index).copied().flatten()
    }

    /// First capability with this ID.
    pub fn find_capability(&self, id: u8) -> Option<Capability> {
        self.capabilities.iter().copied().find(|c| c.id == id)
    }

    /// All capabilities with this ID, in list order.
    pub fn capabilities_with_id(&self, id: u8) -> impl Iterator<Item = Capability> + '_ {
        self.capabilities
            .iter()
            .copied()
            .filter(move |c| c.id == id)
    }

    /// Vendor-specific capabilities (ID 0x09), in list order.
    pub fn vendor_capabilities(&self) -> impl Iterator<Item = Capability> + '_ {
        self.capabilities_with_id(cap_id::VENDOR_SPECIFIC)
    }
}

/// One line, lspci style:
/// `00:01.0 [ff00]: 1234:f100 rev 00 irq 10 pin A BAR0 io 0xc000+0x10 caps [09@40,11@50]`.
/// `irq`/`pin` are left out when the pin is 0; a bridge adds `secondary-bus NN`; each issue is
/// appended as ` !<issue>`.
impl fmt::Display for PciFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{:02x}{:02x}]: {:04x}:{:04x} rev {:02x}",
            self.address, self.class, self.subclass, self.vendor_id, self.device_id, self.revision
        )?;
        match self.interrupt_pin {
            0 => {}
            pin @ 1..=4 => write!(
                f,
                " irq {} pin {}",
                self.interrupt_line,
                char::from(b'A' + pin - 1)
            )?,
            pin => write!(f, " irq {} pin ?{pin}", self.interrupt_line)?,
        }
        for (i, bar) in self.bars.iter().enumerate() {
            if let Some(bar) = bar {
                write!(f, " BAR{i} {bar}")?;
            }
        }
        if let Some(bus) = self.secondary_bus {
            write!(f, " secondary-bus {bus:02x}")?;
        }
        if !self.capabilities.is_empty() {
            write!(f, " caps [")?;
            for (i, cap) in self.capabilities.iter().enumerate() {
                if i > 0 {
                    write!(f, ",")?;
                }
                write!(f, "{:02x}@{:02x}", cap.id, cap.offset)?;
            }
            write!(f, "]")?;
        }
        for issue in &self.issues {
            write!(f, " !{issue}")?;
        }
        Ok(())
    }
}

/// Configuration access and enumeration through a [`Platform`].
pub struct Pci<'p, P: Platform + ?Sized> {
    platform: &'p P,
}

impl<'p, P: Platform + ?Sized> Pci<'p, P> {
    pub fn new(platform: &'p P) -> Self {
        Self { platform }
    }

    fn check(addr: PciAddress, offset: u16, width: u8) -> Result<(), PciError> {
        if !addr.is_valid() {
            return Err(PciError::InvalidAddress(addr));
        }
        if u32::from(offset) + u32::from(width) > u32::from(CONFIG_SPACE_SIZE) {
            return Err(PciError::OffsetOutOfRange { offset, width });
        }
        Ok(())
    }

    /// Select the dword containing `offset`; returns the data port for byte `offset & 3`.
    fn select(&self, addr: PciAddress, offset: u16) -> u16 {
        self.platform
            .outl(CONFIG_ADDRESS, addr.config_address(offset));
        CONFIG_DATA + (offset & 3)
    }

    // Unchecked accessors: `addr` valid, access naturally aligned and inside config space.
    fn raw_read8(&self, addr: PciAddress, offset: u16) -> u8 {
        let port = self.select(addr, offset);
        self.platform.inb(port)
    }
    fn raw_read16(&self, addr: PciAddress, offset: u16) -> u16 {
        let port = self.select(addr, offset);
        self.platform.inw(port)
    }
    fn raw_read32(&self, addr: PciAddress, offset: u16) -> u32 {
        let port = self.select(addr, offset);
        self.platform.inl(port)
    }
    fn raw_write16(&self, addr: PciAddress, offset: u16, value: u16) {
        let port = self.select(addr, offset);
        self.platform.outw(port, value);
    }
    fn raw_write32(&self, addr: PciAddress, offset: u16, value: u32) {
        let port = self.select(addr, offset);
        self.platform.outl(port, value);
    }

    /// Read `width` bytes at a checked but not naturally aligned offset, from the one or two
    /// aligned dwords it touches.
    fn read_unaligned(&self, addr: PciAddress, offset: u16, width: u8) -> u32 {
        let base = offset & !3;
        let shift = u32::from(offset & 3) * 8;
        let mut combined = u64::from(self.raw_read32(addr, base));
        if (offset & 3) + u16::from(width) > 4 {
            combined |= u64::from(self.raw_read32(addr, base + 4)) << 32;
        }
        (combined >> shift) as u32
    }

    /// Write bytes one at a time (for accesses not naturally aligned). Byte writes touch only
    /// the addressed bytes, so neighbouring write-1-to-clear bits are not disturbed.
    fn write_bytes(&self, addr: PciAddress, offset: u16, bytes: &[u8]) {
        for (o, &b) in (offset..).zip(bytes) {
            let port = self.select(addr, o);
            self.platform.outb(port, b);
        }
    }

    pub fn read8(&self, addr: PciAddress, offset: u16) -> Result<u8, PciError> {
        Self::check(addr, offset, 1)?;
        Ok(self.raw_read8(addr, offset))
    }

    pub fn read16(&self, addr: PciAddress, offset: u16) -> Result<u16, PciError> {
        Self::check(addr, offset, 2)?;
        if offset & 1 == 0 {
            Ok(self.raw_read16(addr, offset))
        } else {
            Ok(self.read_unaligned(addr, offset, 2) as u16)
        }
    }

    pub fn read32(&self, addr: PciAddress, offset: u16) -> Result<u32, PciError> {
        Self::check(addr, offset, 4)?;
        if offset & 3 == 0 {
            Ok(self.raw_read32(addr, offset))
        } else {
            Ok(self.read_unaligned(addr, offset, 4))
        }
    }

    pub fn write8(&self, addr: PciAddress, offset: u16, value: u8) -> Result<(), PciError> {
        Self::check(addr, offset, 1)?;
        let port = self.select(addr, offset);
        self.platform.outb(port, value);
        Ok(())
    }

    pub fn write16(&self, addr: PciAddress, offset: u16, value: u16) -> Result<(), PciError> {
        Self::check(addr, offset, 2)?;
        if offset & 1 == 0 {
            self.raw_write16(addr, offset, value);
        } else {
            self.write_bytes(addr, offset, &value.to_le_bytes());
        }
        Ok(())
    }

    pub fn write32(&self, addr: PciAddress, offset: u16, value: u32) -> Result<(), PciError> {
        Self::check(addr, offset, 4)?;
        if offset & 3 == 0 {
            self.raw_write32(addr, offset, value);
        } else {
            self.write_bytes(addr, offset, &value.to_le_bytes());
        }
        Ok(())
    }

    /// Whether a function responds at `addr` (vendor ID is not 0xffff).
    pub fn is_present(&self, addr: PciAddress) -> Result<bool, PciError> {
        Ok(self.read16(addr, reg::VENDOR_ID)? != VENDOR_ABSENT)
    }

    /// The command register.
    pub fn command(&self, addr: PciAddress) -> Result<u16, PciError> {
        self.read16(addr, reg::COMMAND)
    }

    /// Set `bits` in the command register (16-bit write, leaving the status register alone).
    /// Returns the new value. Fails with [`PciError::NoDevice`] if nothing is at `addr`.
    pub fn set_command_bits(&self, addr: PciAddress, bits: u16) -> Result<u16, PciError> {
        if !self.is_present(addr)? {
            return Err(PciError::NoDevice(addr));
        }
        let old = self.raw_read16(addr, reg::COMMAND);
        let new = old | bits;
        if new != old {
            self.raw_write16(addr, reg::COMMAND, new);
        }
        Ok(new)
    }

    /// Let the function master the bus (needed for DMA, and for MSI delivery).
    pub fn enable_bus_master(&self, addr: PciAddress) -> Result<(), PciError> {
        self.set_command_bits(addr, command::BUS_MASTER).map(|_| ())
    }

    /// Let the function decode I/O and memory accesses to its BARs.
    pub fn enable_io_mem(&self, addr: PciAddress) -> Result<(), PciError> {
        self.set_command_bits(addr, command::IO_SPACE | command::MEMORY_SPACE)
            .map(|_| ())
    }

    /// Walk the capability list of the function at `addr`. Empty if status bit 4 is clear.
    /// Stops (keeping what was found) at a pointer below 0x40 or at an offset already visited.
    pub fn capabilities(&self, addr: PciAddress) -> Result<CapabilityList, PciError> {
        Self::check(addr, 0, 1)?;
        Ok(self.walk_capabilities(addr))
    }

    fn walk_capabilities(&self, addr: PciAddress) -> CapabilityList {
        let mut list = CapabilityList::default();
        if self.raw_read16(addr, reg::STATUS) & STATUS_CAPABILITIES_LIST == 0 {
            return list;
        }
        let mut at = reg::CAPABILITIES_POINTER as u8;
        let mut pointer = self.raw_read8(addr, reg::CAPABILITIES_POINTER) & 0xFC;
        // One bit per dword in 0x40..=0xFC: at most 48 steps before a repeat.
        let mut visited: u64 = 0;
        while pointer != 0 {
            if pointer < CAP_MIN_OFFSET {
                list.error = Some(PciError::BadCapabilityPointer { at, pointer });
                break;
            }
            let bit = 1u64 << ((pointer - CAP_MIN_OFFSET) / 4);
            if visited & bit != 0 {
                list.error = Some(PciError::CapabilityLoop { pointer });
                break;
            }
            visited |= bit;
            let header = self.raw_read16(addr, u16::from(pointer));
            list.caps.push(Capability {
                id: header as u8,
                offset: pointer,
            });
            at = pointer + 1;
            pointer = (header >> 8) as u8 & 0xFC;
        }
        list
    }

    /// Read and decode the function at `addr`, sizing its BARs. `Ok(None)` if absent.
    pub fn probe(&self, addr: PciAddress) -> Result<Option<PciFunction>, PciError> {
        if !self.is_present(addr)? {
            return Ok(None);
        }
        Ok(Some(self.probe_present(addr)))
    }

    fn probe_present(&self, addr: PciAddress) -> PciFunction {
        let ids = self.raw_read32(addr, reg::VENDOR_ID);
        let class = self.raw_read32(addr, reg::REVISION_ID);
        let header_type = (self.raw_read32(addr, 0x0C) >> 16) as u8;
        let irq = self.raw_read32(addr, reg::INTERRUPT_LINE);
        let mut issues = Vec::new();

        let layout = header_type & !HEADER_TYPE_MULTIFUNCTION;
        let bar_count = match layout {
            HEADER_LAYOUT_DEVICE => 6,
            HEADER_LAYOUT_BRIDGE => 2,
            _ => 0,
        };
        let bars = self.size_bars(addr, bar_count, &mut issues);
        let secondary_bus =
            (layout == HEADER_LAYOUT_BRIDGE).then(|| self.raw_read8(addr, reg::SECONDARY_BUS));
        let caps = self.walk_capabilities(addr);
        issues.extend(caps.error);
        let subsystem = if layout == HEADER_LAYOUT_DEVICE {
            self.raw_read32(addr, reg::SUBSYSTEM_VENDOR_ID)
        } else {
            0
        };

        PciFunction {
            address: addr,
            vendor_id: ids as u16,
            device_id: (ids >> 16) as u16,
            class: (class >> 24) as u8,
            subclass: (class >> 16) as u8,
            prog_if: (class >> 8) as u8,
            revision: class as u8,
            header_type,
            subsystem_vendor_id: subsystem as u16,
            subsystem_id: (subsystem >> 16) as u16,
            interrupt_line: irq as u8,
            interrupt_pin: (irq >> 8) as u8,
            bars,
            capabilities: caps.caps,
            secondary_bus,
            issues,
        }
    }

    /// Write all-ones to the BAR at `offset`, read back, restore. Returns (original, read-back).
    fn size_slot(&self, addr: PciAddress, offset: u16) -> (u32, u32) {
        let original = self.raw_read32(addr, offset);
        self.raw_write32(addr, offset, u32::MAX);
        let sized = self.raw_read32(addr, offset);
        self.raw_write32(addr, offset, original);
        (original, sized)
    }

    /// Decode and size the first `count` BARs, with I/O and memory decode off meanwhile.
    fn size_bars(
        &self,
        addr: PciAddress,
        count: u8,
        issues: &mut Vec<PciError>,
    ) -> [Option<Bar>; 6] {
        let mut bars = [None; 6];
        if count == 0 {
            return bars;
        }
        let cmd = self.raw_read16(addr, reg::COMMAND);
        let decode = cmd & (command::IO_SPACE | command::MEMORY_SPACE);
        if decode != 0 {
            self.raw_write16(addr, reg::COMMAND, cmd & !decode);
        }

        let mut index = 0u8;
        while index < count {
            let offset = reg::BAR0 + 4 * u16::from(index);
            let (raw, sized) = self.size_slot(addr, offset);
            let slot = usize::from(index);
            index += 1;
            if sized == 0 {
                continue; // unimplemented
            }
            if raw & 1 != 0 {
                let mask = sized & !0x3;
                if mask == 0 {
                    issues.push(PciError::BarNoSize {
                        index: index - 1,
                        raw,
                        sized,
                    });
                    continue;
                }
                // Lowest writable address bit = size; devices decoding only 16 address bits
                // read 0 in the upper half, which the lowest-bit rule handles.
                let size = mask.isolate_lowest_one();
                let port = raw & !0x3;
                if u64::from(port) + u64::from(size) > 0x1_0000 {
                    issues.push(PciError::BarIoOutOfRange {
                        index: index - 1,
                        raw,
                        size,
                    });
                    continue;
                }
                bars[slot] = Some(Bar::Io {
                    port: port as u16,
                    size,
                });
                continue;
            }
            let prefetchable = raw & 0x8 != 0;
            let (addr_bits, mask, is_64) = match (raw >> 1) & 0x3 {
                0b00 => (u64::from(raw & !0xF), u64::from(sized & !0xF), false),
                0b10 => {
                    if index >= count {
                        issues.push(PciError::Bar64InLastSlot { index: index - 1 });
                        continue;
                    }
                    let (raw_hi, sized_hi) = self.size_slot(addr, offset + 4);
                    index += 1;
                    (
                        u64::from(raw_hi) << 32 | u64::from(raw & !0xF),
                        u64::from(sized_hi) << 32 | u64::from(sized & !0xF),
                        true,
                    )
                }
                _ => {
                    issues.push(PciError::BarReservedType {
                        index: index - 1,
                        raw,
                    });
                    continue;
                }
            };
            if mask == 0 {
                issues.push(PciError::BarNoSize {
                    index: slot as u8,
                    raw,
                    sized,
                });
                continue;
            }
            bars[slot] = Some(Bar::Memory {
                addr: addr_bits,
                size: mask.isolate_lowest_one(),
                is_64,
                prefetchable,
            });
        }

        if decode != 0 {
            self.raw_write16(addr, reg::COMMAND, cmd);
        }
        bars
    }

    /// Find every function reachable from bus 0 through PCI-to-PCI bridges, sorted by address.
    ///
    /// Per bus: function 0 of each device; functions 1..8 only if function 0 is multifunction.
    /// Each bus is scanned at most once, so bridges pointing at an already-scanned bus (or at
    /// bus 0) cannot make this loop.
    pub fn enumerate(&self) -> Vec<PciFunction> {
        let mut found = Vec::new();
        let mut scanned = [0u64; 4];
        let mut pending: Vec<u8> = Vec::new();
        pending.push(0);
        while let Some(bus) = pending.pop() {
            let (word, bit) = (usize::from(bus / 64), 1u64 << (bus % 64));
            if scanned[word] & bit != 0 {
                continue;
            }
            scanned[word] |= bit;
            for device in 0..32 {
                let f0 = PciAddress::new(bus, device, 0);
                if self.raw_read16(f0, reg::VENDOR_ID) == VENDOR_ABSENT {
                    continue;
                }
                let first = self.probe_present(f0);
                let functions = if first.is_multifunction() { 8 } else { 1 };
                let mut push = |f: PciFunction| {
                    if let Some(secondary) = f.secondary_bus {
                        pending.push(secondary);
                    }
                    found.push(f);
                };
                push(first);
                for function in 1..functions {
                    let a = PciAddress::new(bus, device, function);
                    if self.raw_read16(a, reg::VENDOR_ID) != VENDOR_ABSENT {
                        push(self.probe_present(a));
                    }
                }
            }
        }
        found.sort_by_key(|f| f.address);
        found
    }
}

#[cfg(test)]
#[path = "pci_tests.rs"]
mod tests;
