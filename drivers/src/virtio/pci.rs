//! virtio-pci modern transport (virtio 1.x §4.1).

use alloc::vec::Vec;
use core::fmt;
use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicBool, Ordering};

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::queue::{QueueError, VirtQueue};
use super::{feature, status};
use crate::pci::{self as pcibus, cap_id, Bar, Pci, PciAddress, PciError, PciFunction};
use crate::platform::{MmioRegion, Platform, PlatformError};

/// Offset of a field of a PCI capability structure, from the capability's start.
macro_rules! cap_field {
    ($ty:ty, $field:ident) => {
        offset_of!($ty, $field) as u16
    };
}

/// Offset of a field of MSI-X table entry `index`, from the table's start.
macro_rules! msix_entry_field {
    ($index:expr, $field:ident) => {
        MSIX_ENTRY_SIZE * $index as u64 + offset_of!(MsixTableEntry, $field) as u64
    };
}

/// PCI vendor ID of virtio devices.
pub const VIRTIO_VENDOR_ID: u16 = 0x1AF4;
/// Modern device IDs are 0x1040 + virtio device type.
pub const MODERN_DEVICE_ID_BASE: u16 = 0x1040;
/// Device IDs of modern (virtio 1.x only) devices.
pub const MODERN_DEVICE_IDS: core::ops::RangeInclusive<u16> = 0x1040..=0x107F;
/// Device IDs of transitional devices (legacy and modern interfaces; §4.1.2.1). Their virtio
/// device type is the PCI subsystem device ID. Stock QEMU presents these on a PCI (not PCIe)
/// bus unless told `disable-legacy=on`.
pub const TRANSITIONAL_DEVICE_IDS: core::ops::RangeInclusive<u16> = 0x1000..=0x103F;

/// Virtio device types (§5).
pub mod device_type {
    pub const NET: u16 = 1;
    pub const BLOCK: u16 = 2;
    pub const CONSOLE: u16 = 3;
    pub const ENTROPY: u16 = 4;
    pub const BALLOON: u16 = 5;
}

/// The virtio device type of `function`, if a modern driver may try to bind it: a modern ID
/// (0x1040 + type), or a transitional ID with the type in the subsystem device ID. Whether a
/// transitional device really carries the modern capabilities is found by [`VirtioPci::new`],
/// which refuses one without them ([`VirtioError::MissingCapability`]).
pub fn virtio_device_type(function: &PciFunction) -> Option<u16> {
    if function.vendor_id != VIRTIO_VENDOR_ID {
        return None;
    }
    match function.device_id {
        id if MODERN_DEVICE_IDS.contains(&id) => Some(id - MODERN_DEVICE_ID_BASE),
        id if TRANSITIONAL_DEVICE_IDS.contains(&id) && function.subsystem_id != 0 => {
            Some(function.subsystem_id)
        }
        _ => None,
    }
}

/// How a driver should take a device's interrupts, from what the device offers: MSI-X when it
/// has a usable table, INTx when it has an interrupt pin routed to an existing IOAPIC input,
/// polling when it has neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptPlan {
    /// MSI-X with this many vectors: the `wanted` count if the table holds that many, else one
    /// vector shared by the config change and every queue.
    Msix { vectors: usize },
    /// INTx on this interrupt line (IOAPIC input).
    Intx { line: u8 },
    /// No interrupt mechanism: poll.
    Polled,
}

impl InterruptPlan {
    /// Choose for `function`, whose MSI-X table has `msix_table_size` entries (None: no MSI-X
    /// capability, or a table that does not fit its BAR), wanting `wanted` vectors, on a machine
    /// whose interrupt controller has `irq_inputs` inputs.
    pub fn choose(
        function: &PciFunction,
        msix_table_size: Option<u16>,
        wanted: usize,
        irq_inputs: u32,
    ) -> Self {
        match msix_table_size {
            Some(n) if usize::from(n) >= wanted.max(1) => return Self::Msix { vectors: wanted },
            Some(n) if n >= 1 => return Self::Msix { vectors: 1 },
            _ => {}
        }
        // Line 0xFF means "unknown / not connected" (PCI firmware convention).
        let line = function.interrupt_line;
        if (1..=4).contains(&function.interrupt_pin) && line != 0xFF && u32::from(line) < irq_inputs
        {
            Self::Intx { line }
        } else {
            Self::Polled
        }
    }
}

impl fmt::Display for InterruptPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Msix { vectors } => write!(f, "msix ({vectors} vectors)"),
            Self::Intx { line } => write!(f, "intx (line {line})"),
            Self::Polled => write!(f, "polled (no MSI-X, no interrupt line)"),
        }
    }
}

/// Where a function's MSI-X table lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MsixTable {
    bar: u8,
    offset: u64,
    entries: u16,
}

/// The MSI-X table of `function`, if it has an MSI-X capability whose table lies inside a
/// memory BAR (a table anywhere else is unusable).
fn msix_table<P: Platform + ?Sized>(
    pci: &Pci<'_, P>,
    function: &PciFunction,
) -> Result<Option<MsixTable>, VirtioError> {
    let Some(cap) = function.find_capability(cap_id::MSI_X) else {
        return Ok(None);
    };
    let o = u16::from(cap.offset);
    let control = pci.read16(function.address, o + cap_field!(MsixCap, message_control))?;
    let entries = (control & 0x7FF) + 1;
    let table = pci.read32(function.address, o + cap_field!(MsixCap, table))?;
    let t = MsixTable {
        bar: (table & 7) as u8,
        offset: u64::from(table & !7),
        entries,
    };
    let fits = match function.bar(usize::from(t.bar)) {
        Some(Bar::Memory { size, .. }) => t.offset + MSIX_ENTRY_SIZE * u64::from(entries) <= size,
        _ => false,
    };
    Ok(fits.then_some(t))
}

/// Entries in the usable MSI-X table of `function` (None: no MSI-X, or a table outside its BAR).
pub fn msix_table_size<P: Platform + ?Sized>(
    platform: &P,
    function: &PciFunction,
) -> Result<Option<u16>, VirtioError> {
    Ok(msix_table(&Pci::new(platform), function)?.map(|t| t.entries))
}

/// `cfg_type` values of the virtio vendor capabilities.
pub mod cfg_type {
    pub const COMMON: u8 = 1;
    pub const NOTIFY: u8 = 2;
    pub const ISR: u8 = 3;
    pub const DEVICE: u8 = 4;
    pub const PCI: u8 = 5;
}

/// `struct virtio_pci_cap` (§4.1.4), a vendor capability in PCI config space.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct VirtioPciCap {
    pub cap_vndr: u8,
    pub cap_next: u8,
    pub cap_len: u8,
    /// One of [`cfg_type`].
    pub cfg_type: u8,
    pub bar: u8,
    pub id: u8,
    pub padding: [u8; 2],
    /// Where the structure starts in the BAR.
    pub offset: U32,
    pub length: U32,
}

/// `struct virtio_pci_notify_cap` (§4.1.4.4): the capability of [`cfg_type::NOTIFY`].
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct VirtioPciNotifyCap {
    pub cap: VirtioPciCap,
    pub notify_off_multiplier: U32,
}

/// `struct virtio_pci_common_cfg` (§4.1.4.3), in MMIO. Accessed field by field through
/// [`Platform`]'s MMIO functions at the offsets of [`common`], each with its own width.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct CommonCfg {
    pub device_feature_select: U32,
    pub device_feature: U32,
    pub driver_feature_select: U32,
    pub driver_feature: U32,
    pub config_msix_vector: U16,
    pub num_queues: U16,
    pub device_status: u8,
    pub config_generation: u8,
    pub queue_select: U16,
    pub queue_size: U16,
    pub queue_msix_vector: U16,
    pub queue_enable: U16,
    pub queue_notify_off: U16,
    pub queue_desc: U64,
    pub queue_driver: U64,
    pub queue_device: U64,
}

/// The MSI-X capability in PCI config space (PCI Local Bus 3.0 §6.8.2).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct MsixCap {
    pub cap_id: u8,
    pub cap_next: u8,
    /// Table size - 1 in bits 0..11, [`MSIX_FUNCTION_MASK`], [`MSIX_ENABLE`].
    pub message_control: U16,
    /// BAR indicator in bits 0..3, offset in the BAR above.
    pub table: U32,
    pub pba: U32,
}

/// One entry of an MSI-X table, in MMIO.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct MsixTableEntry {
    pub message_address: U32,
    pub message_upper_address: U32,
    pub message_data: U32,
    /// Bit 0 masks the vector.
    pub vector_control: U32,
}

const _: () = assert!(size_of::<VirtioPciCap>() == 16 && offset_of!(VirtioPciCap, offset) == 8);
const _: () = assert!(size_of::<VirtioPciNotifyCap>() == 20);
const _: () = assert!(
    size_of::<CommonCfg>() == 0x38
        && offset_of!(CommonCfg, device_status) == 0x14
        && offset_of!(CommonCfg, queue_desc) == 0x20
);
const _: () = assert!(size_of::<MsixCap>() == 12);
const _: () = assert!(size_of::<MsixTableEntry>() == 16);

/// Offsets in [`CommonCfg`], for MMIO accesses.
pub mod common {
    use super::CommonCfg;
    use core::mem::{offset_of, size_of};

    pub const DEVICE_FEATURE_SELECT: u64 = offset_of!(CommonCfg, device_feature_select) as u64;
    pub const DEVICE_FEATURE: u64 = offset_of!(CommonCfg, device_feature) as u64;
    pub const DRIVER_FEATURE_SELECT: u64 = offset_of!(CommonCfg, driver_feature_select) as u64;
    pub const DRIVER_FEATURE: u64 = offset_of!(CommonCfg, driver_feature) as u64;
    pub const CONFIG_MSIX_VECTOR: u64 = offset_of!(CommonCfg, config_msix_vector) as u64;
    pub const NUM_QUEUES: u64 = offset_of!(CommonCfg, num_queues) as u64;
    pub const DEVICE_STATUS: u64 = offset_of!(CommonCfg, device_status) as u64;
    pub const CONFIG_GENERATION: u64 = offset_of!(CommonCfg, config_generation) as u64;
    pub const QUEUE_SELECT: u64 = offset_of!(CommonCfg, queue_select) as u64;
    pub const QUEUE_SIZE: u64 = offset_of!(CommonCfg, queue_size) as u64;
    pub const QUEUE_MSIX_VECTOR: u64 = offset_of!(CommonCfg, queue_msix_vector) as u64;
    pub const QUEUE_ENABLE: u64 = offset_of!(CommonCfg, queue_enable) as u64;
    pub const QUEUE_NOTIFY_OFF: u64 = offset_of!(CommonCfg, queue_notify_off) as u64;
    pub const QUEUE_DESC: u64 = offset_of!(CommonCfg, queue_desc) as u64;
    pub const QUEUE_DRIVER: u64 = offset_of!(CommonCfg, queue_driver) as u64;
    pub const QUEUE_DEVICE: u64 = offset_of!(CommonCfg, queue_device) as u64;
    /// Minimum length of the common configuration structure.
    pub const LEN: u32 = size_of::<CommonCfg>() as u32;
}

/// "No MSI-X vector" for config_msix_vector / queue_msix_vector.
pub const NO_VECTOR: u16 = 0xFFFF;
/// ISR bit: a queue has used buffers.
pub const ISR_QUEUE: u8 = 1;
/// ISR bit: the device configuration changed.
pub const ISR_CONFIG: u8 = 2;
/// x86 MSI message address base (destination APIC ID goes in bits 12..20).
pub const MSI_ADDRESS_BASE: u32 = 0xFEE0_0000;
/// MSI-X message control: enable.
pub const MSIX_ENABLE: u16 = 1 << 15;
/// MSI-X message control: function mask.
pub const MSIX_FUNCTION_MASK: u16 = 1 << 14;

/// Bytes of one [`MsixTableEntry`].
const MSIX_ENTRY_SIZE: u64 = size_of::<MsixTableEntry>() as u64;

/// Bounded number of status polls while waiting for a reset to complete.
const RESET_POLLS: u32 = 1_000_000;
/// Bounded number of config_generation retries.
const GENERATION_RETRIES: u32 = 64;

/// Errors of the virtio-pci transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioError {
    Pci(PciError),
    Platform(PlatformError),
    Queue(QueueError),
    /// Not a device a modern virtio driver may bind (vendor, or a device ID outside the modern
    /// and transitional ranges).
    NotVirtio {
        vendor_id: u16,
        device_id: u16,
    },
    /// A required virtio capability (cfg_type) is absent.
    MissingCapability(u8),
    /// A virtio capability is malformed (too short, reserved BAR, ...).
    BadCapability {
        offset: u8,
        cfg_type: u8,
    },
    /// A virtio capability refers to an I/O BAR (modern transport needs memory BARs).
    IoBar {
        cfg_type: u8,
        bar: u8,
    },
    /// A virtio capability refers to a BAR that is absent.
    MissingBar {
        cfg_type: u8,
        bar: u8,
    },
    /// A capability's region is not inside its BAR.
    RegionOutsideBar {
        cfg_type: u8,
        bar: u8,
        offset: u32,
        length: u32,
    },
    /// The device did not read 0 after reset within the bounded wait.
    ResetTimeout,
    /// The device does not offer VIRTIO_F_VERSION_1 (legacy only). FAILED was set.
    NoVersion1 {
        offered: u64,
    },
    /// The device did not keep FEATURES_OK set. FAILED was set.
    FeaturesRejected {
        requested: u64,
    },
    /// The queue does not exist (queue_size 0 or index ≥ num_queues).
    QueueUnavailable(u16),
    /// queue_notify_off * multiplier + 2 lies outside the notify region.
    BadNotifyOffset {
        queue: u16,
        offset: u64,
    },
    /// The device has no MSI-X capability, or its table does not fit in its BAR.
    NoMsix,
    /// More vectors were requested than the MSI-X table has entries (or none at all).
    MsixTableTooSmall {
        requested: usize,
        table_size: u16,
    },
    /// The device refused an MSI-X vector (read back NO_VECTOR). `queue` is None for config.
    VectorRejected {
        queue: Option<u16>,
    },
    /// Device config access outside the device config region (or there is none).
    ConfigOutOfRange {
        offset: u64,
        width: u8,
    },
    /// config_generation kept changing.
    ConfigUnstable,
    /// The device set DEVICE_NEEDS_RESET.
    DeviceNeedsReset,
    /// A wait ran past its deadline.
    Timeout,
}

impl fmt::Display for VirtioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pci(e) => write!(f, "PCI: {e}"),
            Self::Platform(e) => write!(f, "platform: {e}"),
            Self::Queue(e) => write!(f, "queue: {e}"),
            other => write!(f, "virtio-pci: {other:?}"),
        }
    }
}

impl From<PciError> for VirtioError {
    fn from(e: PciError) -> Self {
        Self::Pci(e)
    }
}
impl From<PlatformError> for VirtioError {
    fn from(e: PlatformError) -> Self {
        Self::Platform(e)
    }
}
impl From<QueueError> for VirtioError {
    fn from(e: QueueError) -> Self {
        Self::Queue(e)
    }
}

/// How the device signals used buffers and config changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterruptMode {
    /// No interrupts (all MSI-X vectors NO_VECTOR); completion is polled.
    Polled,
    /// MSI-X, delivered to local APIC `dest_apic_id`. `vectors[0]` is the x86 vector for config
    /// changes (table entry 0); queue `q` uses table entry `min(1 + q, len - 1)`, whose x86
    /// vector is `vectors[entry]`. So `[cfg, q0, q1, ...]`, or `[shared]` for one vector.
    Msix { dest_apic_id: u8, vectors: Vec<u8> },
    /// Legacy INTx: the caller routes the PCI interrupt line to x86 `vector` (IOAPIC); the
    /// driver acknowledges through the ISR register.
    Intx { vector: u8 },
}

impl fmt::Display for InterruptMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Polled => write!(f, "polled"),
            Self::Msix { vectors, .. } => write!(f, "msix ({} vectors)", vectors.len()),
            Self::Intx { vector } => write!(f, "intx (vector {vector:#x})"),
        }
    }
}

/// ISR status (read clears it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IsrStatus {
    /// A queue interrupt (bit 0).
    pub queue: bool,
    /// A configuration change (bit 1).
    pub config: bool,
}

/// A mapped sub-range of a BAR.
#[derive(Debug, Clone, Copy)]
struct Window {
    region: MmioRegion,
    /// Offset of the window inside `region`.
    offset: u64,
    len: u64,
}

/// Parsed location of one virtio capability.
#[derive(Debug, Clone, Copy)]
struct CapInfo {
    cap_offset: u8,
    bar: u8,
    offset: u32,
    length: u32,
}

#[derive(Debug, Clone, Copy)]
struct QueueInfo {
    index: u16,
    notify_offset: u64,
    /// MSI-X table entry used, if any.
    msix_entry: Option<u16>,
}

/// A virtio-pci modern device.
pub struct VirtioPci<'p, P: Platform + ?Sized> {
    platform: &'p P,
    address: PciAddress,
    common: Window,
    notify: Window,
    notify_multiplier: u32,
    isr: Window,
    device: Option<Window>,
    /// Config-space offset of the VIRTIO_PCI_CAP_PCI_CFG capability.
    pci_cfg_cap: Option<u8>,
    mode: InterruptMode,
    msix_table: Option<Window>,
    msix_cap: Option<u8>,
    queues: Vec<QueueInfo>,
    features: u64,
    /// The ISR's config bit, seen by a queue wait (reading the ISR clears it) and not yet
    /// taken by [`Self::take_config_interrupt`].
    config_isr_seen: AtomicBool,
    /// The interrupt count of the vector that signals config changes, when last taken.
    config_vector_count: u64,
}

impl<'p, P: Platform + ?Sized> VirtioPci<'p, P> {
    /// Find and map the virtio capabilities of `function`, enable memory decode and bus
    /// mastering. Does not touch the device status yet.
    pub fn new(platform: &'p P, function: &PciFunction) -> Result<Self, VirtioError> {
        if virtio_device_type(function).is_none() {
            return Err(VirtioError::NotVirtio {
                vendor_id: function.vendor_id,
                device_id: function.device_id,
            });
        }
        let pci = Pci::new(platform);
        let addr = function.address;
        let mut found: [Option<CapInfo>; 6] = [None; 6];
        let mut notify_multiplier = 0;
        let mut first_error = None;
        for cap in function.vendor_capabilities() {
            let o = u16::from(cap.offset);
            let cap_len = pci.read8(addr, o + cap_field!(VirtioPciCap, cap_len))?;
            let ty = pci.read8(addr, o + cap_field!(VirtioPciCap, cfg_type))?;
            if !(1..=5).contains(&ty) || found[usize::from(ty)].is_some() {
                continue; // unknown type, or a later instance of one we have
            }
            let bar = pci.read8(addr, o + cap_field!(VirtioPciCap, bar))?;
            let min_len = if ty == cfg_type::NOTIFY {
                size_of::<VirtioPciNotifyCap>()
            } else {
                size_of::<VirtioPciCap>()
            } as u8;
            if cap_len < min_len || u16::from(cap.offset) + u16::from(cap_len) > 256 {
                first_error.get_or_insert(VirtioError::BadCapability {
                    offset: cap.offset,
                    cfg_type: ty,
                });
                continue;
            }
            if bar > 5 {
                // Reserved BAR values: the spec says to ignore such a capability.
                continue;
            }
            let info = CapInfo {
                cap_offset: cap.offset,
                bar,
                offset: pci.read32(addr, o + cap_field!(VirtioPciCap, offset))?,
                length: pci.read32(addr, o + cap_field!(VirtioPciCap, length))?,
            };
            if ty != cfg_type::PCI {
                if let Err(e) = check_region(function, ty, &info) {
                    first_error.get_or_insert(e);
                    continue;
                }
            }
            if ty == cfg_type::NOTIFY {
                let at = o + cap_field!(VirtioPciNotifyCap, notify_off_multiplier);
                notify_multiplier = pci.read32(addr, at)?;
            }
            found[usize::from(ty)] = Some(info);
        }
        let require = |ty: u8| -> Result<CapInfo, VirtioError> {
            found[usize::from(ty)].ok_or(first_error.unwrap_or(VirtioError::MissingCapability(ty)))
        };
        let common_cap = require(cfg_type::COMMON)?;
        let notify_cap = require(cfg_type::NOTIFY)?;
        let isr_cap = require(cfg_type::ISR)?;
        if common_cap.length < common::LEN {
            return Err(VirtioError::BadCapability {
                offset: common_cap.cap_offset,
                cfg_type: cfg_type::COMMON,
            });
        }
        if isr_cap.length < 1 {
            return Err(VirtioError::BadCapability {
                offset: isr_cap.cap_offset,
                cfg_type: cfg_type::ISR,
            });
        }

        pci.enable_io_mem(addr)?;
        pci.enable_bus_master(addr)?;

        let mut mapper = BarMapper::new(platform, function);
        let common = mapper.window(
            common_cap.bar,
            common_cap.offset.into(),
            common_cap.length.into(),
        )?;
        let notify = mapper.window(
            notify_cap.bar,
            notify_cap.offset.into(),
            notify_cap.length.into(),
        )?;
        let isr = mapper.window(isr_cap.bar, isr_cap.offset.into(), isr_cap.length.into())?;
        let device = match found[usize::from(cfg_type::DEVICE)] {
            Some(c) => Some(mapper.window(c.bar, c.offset.into(), c.length.into())?),
            None => None,
        };

        // MSI-X table location (programmed only if the caller asks for MSI-X). The capability
        // is kept even when its table is unusable, so that MSI-X can still be switched off.
        let msix_cap = function.find_capability(cap_id::MSI_X).map(|c| c.offset);
        let msix_table = match msix_table(&pci, function)? {
            Some(t) => {
                Some(mapper.window(t.bar, t.offset, MSIX_ENTRY_SIZE * u64::from(t.entries))?)
            }
            None => None,
        };

        Ok(Self {
            platform,
            address: addr,
            common,
            notify,
            notify_multiplier,
            isr,
            device,
            pci_cfg_cap: found[usize::from(cfg_type::PCI)].map(|c| c.cap_offset),
            mode: InterruptMode::Polled,
            msix_table,
            msix_cap,
            queues: Vec::new(),
            features: 0,
            config_isr_seen: AtomicBool::new(false),
            config_vector_count: 0,
        })
    }

    /// PCI address of the function.
    pub fn address(&self) -> PciAddress {
        self.address
    }

    /// Config-space offset of the PCI configuration access capability, if the device has one.
    pub fn pci_cfg_capability(&self) -> Option<u8> {
        self.pci_cfg_cap
    }

    /// The `notify_off_multiplier` of the notify capability.
    pub fn notify_multiplier(&self) -> u32 {
        self.notify_multiplier
    }

    /// The interrupt mode set by [`Self::begin_init`].
    pub fn interrupt_mode(&self) -> &InterruptMode {
        &self.mode
    }

    /// Features negotiated by [`Self::begin_init`].
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Current device status byte.
    pub fn status(&self) -> u8 {
        self.read8(&self.common, common::DEVICE_STATUS)
    }

    /// Whether the device set DEVICE_NEEDS_RESET.
    pub fn needs_reset(&self) -> bool {
        self.status() & status::DEVICE_NEEDS_RESET != 0
    }

    /// `Err(DeviceNeedsReset)` if the device asked for a reset.
    pub fn check_status(&self) -> Result<(), VirtioError> {
        if self.needs_reset() {
            Err(VirtioError::DeviceNeedsReset)
        } else {
            Ok(())
        }
    }

    /// Number of queues the device offers.
    pub fn num_queues(&self) -> u16 {
        self.read16(&self.common, common::NUM_QUEUES)
    }

    /// Reset the device (write 0, wait for 0 to read back, bounded).
    pub fn reset(&mut self) -> Result<(), VirtioError> {
        self.write8(&self.common, common::DEVICE_STATUS, 0);
        for _ in 0..RESET_POLLS {
            if self.status() == 0 {
                self.queues.clear();
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err(VirtioError::ResetTimeout)
    }

    /// Set FAILED in the device status.
    pub fn set_failed(&self) {
        let s = self.status();
        self.write8(&self.common, common::DEVICE_STATUS, s | status::FAILED);
    }

    fn add_status(&self, bits: u8) {
        let s = self.status();
        self.write8(&self.common, common::DEVICE_STATUS, s | bits);
    }

    /// Steps 1-6 of §3.1.1: reset, ACKNOWLEDGE, DRIVER, feature negotiation (VERSION_1 is
    /// required and always requested; the driver features are `wanted & offered`),
    /// FEATURES_OK (checked). Then sets up the interrupt mode (MSI-X table and config vector).
    /// Returns the negotiated features. On an error after ACKNOWLEDGE, FAILED is set.
    pub fn begin_init(&mut self, wanted: u64, mode: InterruptMode) -> Result<u64, VirtioError> {
        self.reset()?;
        self.add_status(status::ACKNOWLEDGE);
        let r = self.negotiate(wanted, mode);
        if r.is_err() {
            self.set_failed();
        }
        r
    }

    fn negotiate(&mut self, wanted: u64, mode: InterruptMode) -> Result<u64, VirtioError> {
        self.add_status(status::DRIVER);
        let offered = self.device_features();
        if offered & feature::VERSION_1 == 0 {
            return Err(VirtioError::NoVersion1 { offered });
        }
        let requested = (wanted | feature::VERSION_1) & offered;
        for sel in 0..2u32 {
            self.write32(&self.common, common::DRIVER_FEATURE_SELECT, sel);
            self.write32(
                &self.common,
                common::DRIVER_FEATURE,
                (requested >> (32 * sel)) as u32,
            );
        }
        self.add_status(status::FEATURES_OK);
        if self.status() & status::FEATURES_OK == 0 {
            return Err(VirtioError::FeaturesRejected { requested });
        }
        self.features = requested;
        self.setup_interrupts(mode)?;
        Ok(requested)
    }

    /// The 64 device feature bits.
    pub fn device_features(&self) -> u64 {
        let mut features = 0u64;
        for sel in 0..2u32 {
            self.write32(&self.common, common::DEVICE_FEATURE_SELECT, sel);
            let v = self.read32(&self.common, common::DEVICE_FEATURE);
            features |= u64::from(v) << (32 * sel);
        }
        features
    }

    /// Turn MSI-X off (it survives a device reset, and while it is on the device never uses
    /// INTx).
    fn disable_msix(&self, pci: &Pci<'p, P>) -> Result<(), VirtioError> {
        if let Some(cap) = self.msix_cap {
            let ctrl_off = u16::from(cap) + cap_field!(MsixCap, message_control);
            let control = pci.read16(self.address, ctrl_off)?;
            if control & MSIX_ENABLE != 0 {
                pci.write16(self.address, ctrl_off, control & !MSIX_ENABLE)?;
            }
        }
        Ok(())
    }

    fn setup_interrupts(&mut self, mode: InterruptMode) -> Result<(), VirtioError> {
        let pci = Pci::new(self.platform);
        match &mode {
            InterruptMode::Polled => {
                self.disable_msix(&pci)?;
                self.write16(&self.common, common::CONFIG_MSIX_VECTOR, NO_VECTOR);
            }
            InterruptMode::Intx { .. } => {
                self.disable_msix(&pci)?;
                self.write16(&self.common, common::CONFIG_MSIX_VECTOR, NO_VECTOR);
                // Make sure INTx is not disabled in the command register.
                let cmd = pci.read16(self.address, pcibus::reg::COMMAND)?;
                if cmd & pcibus::command::INTERRUPT_DISABLE != 0 {
                    pci.write16(
                        self.address,
                        pcibus::reg::COMMAND,
                        cmd & !pcibus::command::INTERRUPT_DISABLE,
                    )?;
                }
            }
            InterruptMode::Msix {
                dest_apic_id,
                vectors,
            } => {
                let (Some(cap), Some(table)) = (self.msix_cap, self.msix_table) else {
                    return Err(VirtioError::NoMsix);
                };
                let table_size = (table.len / MSIX_ENTRY_SIZE) as u16;
                if vectors.is_empty() || vectors.len() > usize::from(table_size) {
                    return Err(VirtioError::MsixTableTooSmall {
                        requested: vectors.len(),
                        table_size,
                    });
                }
                let ctrl_off = u16::from(cap) + cap_field!(MsixCap, message_control);
                let control = pci.read16(self.address, ctrl_off)?;
                // Mask the whole function while the table is being written.
                pci.write16(self.address, ctrl_off, control | MSIX_FUNCTION_MASK)?;
                for (i, &v) in vectors.iter().enumerate() {
                    let address = MSI_ADDRESS_BASE | (u32::from(*dest_apic_id) << 12);
                    self.write32(&table, msix_entry_field!(i, message_address), address);
                    self.write32(&table, msix_entry_field!(i, message_upper_address), 0);
                    self.write32(&table, msix_entry_field!(i, message_data), u32::from(v));
                    // Unmasked.
                    self.write32(&table, msix_entry_field!(i, vector_control), 0);
                }
                let control = (control | MSIX_ENABLE) & !MSIX_FUNCTION_MASK;
                pci.write16(self.address, ctrl_off, control)?;
                self.write16(&self.common, common::CONFIG_MSIX_VECTOR, 0);
                if self.read16(&self.common, common::CONFIG_MSIX_VECTOR) == NO_VECTOR {
                    return Err(VirtioError::VectorRejected { queue: None });
                }
            }
        }
        self.mode = mode;
        // Interrupts before this driver (of an earlier user of the vector) are not its news.
        self.config_vector_count = self
            .config_vector()
            .map_or(0, |v| self.platform.interrupt_count(v));
        Ok(())
    }

    /// Set up queue `index` with a new [`VirtQueue`] of at most `max_size` entries (the device's
    /// size if smaller; rounded down to a power of two) and enable it. FAILED is set on error.
    pub fn setup_queue(
        &mut self,
        index: u16,
        max_size: u16,
    ) -> Result<VirtQueue<'p, P>, VirtioError> {
        let r = self.try_setup_queue(index, max_size);
        if r.is_err() {
            self.set_failed();
        }
        r
    }

    fn try_setup_queue(
        &mut self,
        index: u16,
        max_size: u16,
    ) -> Result<VirtQueue<'p, P>, VirtioError> {
        if index >= self.num_queues() {
            return Err(VirtioError::QueueUnavailable(index));
        }
        self.write16(&self.common, common::QUEUE_SELECT, index);
        let device_size = self.read16(&self.common, common::QUEUE_SIZE);
        if device_size == 0 {
            return Err(VirtioError::QueueUnavailable(index));
        }
        let want = device_size.min(max_size).min(super::queue::MAX_QUEUE_SIZE);
        if want == 0 {
            return Err(VirtioError::QueueUnavailable(index));
        }
        // Largest power of two ≤ want.
        let size = 1u16 << (15 - want.leading_zeros() as u16);
        let queue = VirtQueue::new(self.platform, size)?;
        let notify_off = self.read16(&self.common, common::QUEUE_NOTIFY_OFF);
        let notify_offset = u64::from(notify_off) * u64::from(self.notify_multiplier);
        if notify_offset + 2 > self.notify.len {
            return Err(VirtioError::BadNotifyOffset {
                queue: index,
                offset: notify_offset,
            });
        }
        self.write16(&self.common, common::QUEUE_SIZE, size);
        self.write64(&self.common, common::QUEUE_DESC, queue.desc_phys());
        self.write64(&self.common, common::QUEUE_DRIVER, queue.avail_phys());
        self.write64(&self.common, common::QUEUE_DEVICE, queue.used_phys());
        let msix_entry = match &self.mode {
            InterruptMode::Msix { vectors, .. } => Some((1 + index).min(vectors.len() as u16 - 1)),
            _ => None,
        };
        self.write16(
            &self.common,
            common::QUEUE_MSIX_VECTOR,
            msix_entry.unwrap_or(NO_VECTOR),
        );
        if msix_entry.is_some() && self.read16(&self.common, common::QUEUE_MSIX_VECTOR) == NO_VECTOR
        {
            return Err(VirtioError::VectorRejected { queue: Some(index) });
        }
        self.write16(&self.common, common::QUEUE_ENABLE, 1);
        self.queues.retain(|q| q.index != index);
        self.queues.push(QueueInfo {
            index,
            notify_offset,
            msix_entry,
        });
        let mut queue = queue;
        queue.set_event_idx(self.features & feature::RING_EVENT_IDX != 0);
        Ok(queue)
    }

    /// Final step: DRIVER_OK.
    pub fn driver_ok(&mut self) -> Result<(), VirtioError> {
        self.add_status(status::DRIVER_OK);
        self.check_status()
    }

    /// Tell the device queue `index` has new buffers.
    pub fn notify(&self, index: u16) {
        if let Some(q) = self.queues.iter().find(|q| q.index == index) {
            self.write16(&self.notify, q.notify_offset, index);
        }
    }

    /// Read (and thereby clear) the ISR status. A config bit is also kept for
    /// [`Self::take_config_interrupt`], so that a queue wait does not swallow it.
    pub fn read_isr(&self) -> IsrStatus {
        let v = self.read8(&self.isr, 0);
        let isr = IsrStatus {
            queue: v & ISR_QUEUE != 0,
            config: v & ISR_CONFIG != 0,
        };
        if isr.config {
            self.config_isr_seen.store(true, Ordering::Relaxed);
        }
        isr
    }

    /// x86 vector that signals configuration changes, in MSI-X (table entry 0, which with one
    /// vector is shared with the queues) or INTx mode.
    pub fn config_vector(&self) -> Option<u8> {
        match &self.mode {
            InterruptMode::Polled => None,
            InterruptMode::Intx { vector } => Some(*vector),
            InterruptMode::Msix { vectors, .. } => vectors.first().copied(),
        }
    }

    /// Whether the device raised a configuration-change interrupt since the last call,
    /// judged from interrupts alone, without reading the configuration: MSI-X, the config
    /// vector fired (with one shared vector, any interrupt of the function counts); INTx, the
    /// line fired and the ISR's config bit was set (read here, acknowledging the line, or
    /// seen by a queue wait since). Polled mode has no interrupt: always false.
    pub fn take_config_interrupt(&mut self) -> bool {
        let Some(vector) = self.config_vector() else {
            return false;
        };
        let count = self.platform.interrupt_count(vector);
        let fired = count != self.config_vector_count;
        self.config_vector_count = count;
        match self.mode {
            InterruptMode::Intx { .. } => {
                if fired {
                    let _ = self.read_isr();
                    // The line is deasserted now; let the next assertion through.
                    self.platform.ack_interrupt(vector);
                }
                self.config_isr_seen.swap(false, Ordering::Relaxed)
            }
            _ => fired,
        }
    }

    /// x86 vector that signals queue `index`, in MSI-X or INTx mode.
    pub fn queue_vector(&self, index: u16) -> Option<u8> {
        match &self.mode {
            InterruptMode::Polled => None,
            InterruptMode::Intx { vector } => Some(*vector),
            InterruptMode::Msix { vectors, .. } => {
                let q = self.queues.iter().find(|q| q.index == index)?;
                vectors.get(usize::from(q.msix_entry?)).copied()
            }
        }
    }

    /// Wait until `poll` returns `Some`, up to `timeout_ns`. Polled mode spins; MSI-X mode
    /// sleeps in `wait_for_interrupt` until the queue's vector count moves; INTx mode reads
    /// the ISR (acknowledging it, which deasserts the line) before each poll and sleeps when no
    /// queue interrupt is pending. A device that
    /// sets DEVICE_NEEDS_RESET ends the wait with an error.
    pub fn wait_for<R>(
        &self,
        queue: u16,
        timeout_ns: u64,
        mut poll: impl FnMut() -> Option<R>,
    ) -> Result<R, VirtioError> {
        let deadline = self.platform.now_ns().saturating_add(timeout_ns);
        let vector = self.queue_vector(queue);
        let intx = matches!(self.mode, InterruptMode::Intx { .. });
        loop {
            let epoch = self.platform.interrupt_epoch();
            let seen = vector.map(|v| self.platform.interrupt_count(v));
            // INTx is level-triggered: reading the ISR deasserts the line. Read it before
            // polling so a completion that raced with the read is still seen by the poll.
            let isr = match (intx, vector) {
                (true, Some(v)) => {
                    let isr = self.read_isr();
                    // The line is deasserted now; let the next assertion through.
                    self.platform.ack_interrupt(v);
                    isr
                }
                _ => IsrStatus::default(),
            };
            if let Some(r) = poll() {
                return Ok(r);
            }
            self.check_status()?;
            if self.platform.now_ns() >= deadline {
                return Err(VirtioError::Timeout);
            }
            match (&self.mode, vector, seen) {
                (InterruptMode::Msix { .. }, Some(v), Some(seen)) => {
                    if self.platform.interrupt_count(v) == seen {
                        self.platform.wait_for_interrupt(epoch);
                    }
                }
                (InterruptMode::Intx { .. }, _, _) => {
                    if !isr.queue {
                        self.platform.wait_for_interrupt(epoch);
                    }
                }
                _ => core::hint::spin_loop(),
            }
        }
    }

    /// Wait for the next used entry of `queue` (see [`Self::wait_for`]).
    pub fn wait_used(
        &self,
        index: u16,
        queue: &mut VirtQueue<'p, P>,
        timeout_ns: u64,
    ) -> Result<(u64, u32), VirtioError> {
        self.wait_for(index, timeout_ns, || queue.pop_used())?
            .map_err(VirtioError::Queue)
    }

    /// The config_generation counter.
    pub fn config_generation(&self) -> u8 {
        self.read8(&self.common, common::CONFIG_GENERATION)
    }

    fn device_window(&self, offset: u64, width: u8) -> Result<&Window, VirtioError> {
        match &self.device {
            Some(w) if offset + u64::from(width) <= w.len => Ok(w),
            _ => Err(VirtioError::ConfigOutOfRange { offset, width }),
        }
    }

    pub fn config_read8(&self, offset: u64) -> Result<u8, VirtioError> {
        let w = self.device_window(offset, 1)?;
        Ok(self.read8(w, offset))
    }

    pub fn config_read16(&self, offset: u64) -> Result<u16, VirtioError> {
        let w = self.device_window(offset, 2)?;
        Ok(self.read16(w, offset))
    }

    pub fn config_read32(&self, offset: u64) -> Result<u32, VirtioError> {
        let w = self.device_window(offset, 4)?;
        Ok(self.read32(w, offset))
    }

    /// Write a 32-bit device configuration field (the few writable ones, such as the
    /// balloon's `actual`).
    pub fn config_write32(&self, offset: u64, value: u32) -> Result<(), VirtioError> {
        let w = self.device_window(offset, 4)?;
        self.write32(w, offset, value);
        Ok(())
    }

    /// 64-bit config field, read as two 32-bit halves under the config_generation retry loop.
    pub fn config_read64(&self, offset: u64) -> Result<u64, VirtioError> {
        let w = *self.device_window(offset, 8)?;
        for _ in 0..GENERATION_RETRIES {
            let before = self.config_generation();
            let lo = self.read32(&w, offset);
            let hi = self.read32(&w, offset + 4);
            if self.config_generation() == before {
                return Ok(u64::from(lo) | u64::from(hi) << 32);
            }
        }
        Err(VirtioError::ConfigUnstable)
    }

    fn read8(&self, w: &Window, off: u64) -> u8 {
        self.platform.mmio_read8(&w.region, w.offset + off)
    }
    fn read16(&self, w: &Window, off: u64) -> u16 {
        self.platform.mmio_read16(&w.region, w.offset + off)
    }
    fn read32(&self, w: &Window, off: u64) -> u32 {
        self.platform.mmio_read32(&w.region, w.offset + off)
    }
    fn write8(&self, w: &Window, off: u64, v: u8) {
        self.platform.mmio_write8(&w.region, w.offset + off, v)
    }
    fn write16(&self, w: &Window, off: u64, v: u16) {
        self.platform.mmio_write16(&w.region, w.offset + off, v)
    }
    fn write32(&self, w: &Window, off: u64, v: u32) {
        self.platform.mmio_write32(&w.region, w.offset + off, v)
    }
    fn write64(&self, w: &Window, off: u64, v: u64) {
        self.write32(w, off, v as u32);
        self.write32(w, off + 4, (v >> 32) as u32);
    }
}

/// Check a capability's region lies inside a memory BAR.
fn check_region(function: &PciFunction, ty: u8, c: &CapInfo) -> Result<(), VirtioError> {
    let bar = function
        .bar(usize::from(c.bar))
        .ok_or(VirtioError::MissingBar {
            cfg_type: ty,
            bar: c.bar,
        })?;
    if bar.is_io() {
        return Err(VirtioError::IoBar {
            cfg_type: ty,
            bar: c.bar,
        });
    }
    if u64::from(c.offset) + u64::from(c.length) > bar.size() {
        return Err(VirtioError::RegionOutsideBar {
            cfg_type: ty,
            bar: c.bar,
            offset: c.offset,
            length: c.length,
        });
    }
    Ok(())
}

/// Maps each memory BAR at most once.
struct BarMapper<'a, 'p, P: Platform + ?Sized> {
    platform: &'p P,
    function: &'a PciFunction,
    mapped: [Option<MmioRegion>; 6],
}

impl<'a, 'p, P: Platform + ?Sized> BarMapper<'a, 'p, P> {
    fn new(platform: &'p P, function: &'a PciFunction) -> Self {
        Self {
            platform,
            function,
            mapped: [None; 6],
        }
    }

    fn window(&mut self, bar: u8, offset: u64, len: u64) -> Result<Window, VirtioError> {
        let slot = usize::from(bar);
        let region = match self.mapped.get(slot).copied().flatten() {
            Some(r) => r,
            None => {
                let b = self
                    .function
                    .bar(slot)
                    .ok_or(VirtioError::MissingBar { cfg_type: 0, bar })?;
                let r = self.platform.map_mmio(b.base(), b.size())?;
                self.mapped[slot] = Some(r);
                r
            }
        };
        Ok(Window {
            region,
            offset,
            len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::fake::{self, FakePlatform, Inert};
    use std::boxed::Box;
    use std::vec;

    const F_FLUSH: u64 = 1 << 9;

    fn platform(features: u64, queues: Vec<u16>) -> FakePlatform {
        let config = (0u8..16).collect();
        FakePlatform::new(Box::new(Inert { features, config }), queues)
    }

    fn status_of(p: &FakePlatform) -> u8 {
        p.dev.borrow().status
    }

    #[test]
    fn init_sequence_polled() {
        let p = platform(feature::VERSION_1 | F_FLUSH | 1 << 40, vec![64, 8]);
        let f = p.function();
        let mut t = VirtioPci::new(&p, &f).unwrap();
        assert_eq!(t.notify_multiplier(), fake::NOTIFY_MULT);
        assert_eq!(t.pci_cfg_capability(), Some(fake::CAP_PCI as u8));
        let got = t
            .begin_init(F_FLUSH | 1 << 5, InterruptMode::Polled)
            .unwrap();
        assert_eq!(got, feature::VERSION_1 | F_FLUSH);
        assert_eq!(p.dev.borrow().driver_features, feature::VERSION_1 | F_FLUSH);
        let q = t.setup_queue(0, 16).unwrap();
        assert_eq!(q.size(), 16);
        let q1 = t.setup_queue(1, 1000).unwrap();
        assert_eq!(q1.size(), 8, "device maximum wins");
        t.driver_ok().unwrap();
        {
            let d = p.dev.borrow();
            assert_eq!(
                d.status_log,
                vec![0, 1, 3, 11, 15],
                "reset, ACK, DRIVER, FEATURES_OK, DRIVER_OK"
            );
            let r = d.regs[0];
            assert_eq!((r.size, r.enabled, r.msix), (16, true, NO_VECTOR));
            assert_eq!(
                (r.desc, r.driver, r.device),
                (q.desc_phys(), q.avail_phys(), q.used_phys())
            );
            assert_eq!(d.config_msix, NO_VECTOR);
        }
        // Bus mastering and memory decode enabled.
        let cmd = Pci::new(&p)
            .read16(fake::ADDR, pcibus::reg::COMMAND)
            .unwrap();
        assert_eq!(cmd & 0x6, 0x6);
        // Notify writes the queue index at its own address (the fake checks the address).
        p.dev.borrow_mut().auto_process = false;
        t.notify(1);
        t.notify(0);
        assert_eq!(p.dev.borrow().notifies, vec![1, 0]);
    }

    #[test]
    fn no_version_1_fails() {
        let p = platform(F_FLUSH, vec![8]);
        let mut t = VirtioPci::new(&p, &p.function()).unwrap();
        assert_eq!(
            t.begin_init(F_FLUSH, InterruptMode::Polled),
            Err(VirtioError::NoVersion1 { offered: F_FLUSH })
        );
        assert_ne!(status_of(&p) & status::FAILED, 0);
        assert_eq!(status_of(&p) & status::FEATURES_OK, 0);
    }

    #[test]
    fn features_ok_not_accepted() {
        let p = platform(feature::VERSION_1, vec![8]);
        p.dev.borrow_mut().accept_features = false;
        let mut t = VirtioPci::new(&p, &p.function()).unwrap();
        assert_eq!(
            t.begin_init(0, InterruptMode::Polled),
            Err(VirtioError::FeaturesRejected {
                requested: feature::VERSION_1
            })
        );
        assert_ne!(status_of(&p) & status::FAILED, 0);
    }

    #[test]
    fn queue_size_zero_and_missing_queue() {
        let p = platform(feature::VERSION_1, vec![0]);
        let mut t = VirtioPci::new(&p, &p.function()).unwrap();
        t.begin_init(0, InterruptMode::Polled).unwrap();
        assert_eq!(
            t.setup_queue(0, 8).err(),
            Some(VirtioError::QueueUnavailable(0))
        );
        assert_ne!(status_of(&p) & status::FAILED, 0);
        t.begin_init(0, InterruptMode::Polled).unwrap();
        assert_eq!(status_of(&p) & status::FAILED, 0, "reset clears FAILED");
        assert_eq!(
            t.setup_queue(1, 8).err(),
            Some(VirtioError::QueueUnavailable(1))
        );
    }

    #[test]
    fn msix_programming() {
        let p = platform(feature::VERSION_1, vec![8]);
        let mut t = VirtioPci::new(&p, &p.function()).unwrap();
        t.begin_init(
            0,
            InterruptMode::Msix {
                dest_apic_id: 2,
                vectors: vec![0x40, 0x41],
            },
        )
        .unwrap();
        let _q = t.setup_queue(0, 8).unwrap();
        t.driver_ok().unwrap();
        let d = p.dev.borrow();
        let word = |e: usize, o: usize| {
            u32::from_le_bytes(d.msix_table[16 * e + o..16 * e + o + 4].try_into().unwrap())
        };
        assert_eq!(
            (word(0, 0), word(0, 4), word(0, 8), word(0, 12)),
            (0xFEE0_2000, 0, 0x40, 0)
        );
        assert_eq!(
            (word(1, 0), word(1, 8), word(1, 12)),
            (0xFEE0_2000, 0x41, 0)
        );
        let cfg = p.cfg.borrow();
        let control = u16::from_le_bytes([cfg[fake::CAP_MSIX + 2], cfg[fake::CAP_MSIX + 3]]);
        assert_eq!(control & (MSIX_ENABLE | MSIX_FUNCTION_MASK), MSIX_ENABLE);
        assert_eq!(d.config_msix, 0);
        assert_eq!(d.regs[0].msix, 1);
        assert_eq!(t.queue_vector(0), Some(0x41));
    }

    #[test]
    fn msix_vector_rejected_or_too_many() {
        let p = platform(feature::VERSION_1, vec![8]);
        p.dev.borrow_mut().accept_vectors = false;
        let mut t = VirtioPci::new(&p, &p.function()).unwrap();
        let mode = InterruptMode::Msix {
            dest_apic_id: 0,
            vectors: vec![0x40],
        };
        assert_eq!(
            t.begin_init(0, mode),
            Err(VirtioError::VectorRejected { queue: None })
        );
        assert_ne!(status_of(&p) & status::FAILED, 0);
        let mode = InterruptMode::Msix {
            dest_apic_id: 0,
            vectors: vec![0x40; 9],
        };
        assert_eq!(
            t.begin_init(0, mode),
            Err(VirtioError::MsixTableTooSmall {
                requested: 9,
                table_size: 8
            })
        );
    }

    /// Rewrite a 16-bit field of the fake function's config space.
    fn set_cfg16(p: &FakePlatform, offset: usize, v: u16) {
        p.cfg.borrow_mut()[offset..offset + 2].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn modern_and_transitional_ids_bind() {
        let p = platform(feature::VERSION_1, vec![8]);
        assert_eq!(virtio_device_type(&p.function()), Some(device_type::BLOCK));
        // Stock QEMU's virtio-blk-pci: transitional ID 0x1001, type in the subsystem ID.
        set_cfg16(&p, 0x02, 0x1001);
        set_cfg16(&p, 0x2C, VIRTIO_VENDOR_ID);
        set_cfg16(&p, 0x2E, device_type::BLOCK);
        let f = p.function();
        assert_eq!((f.subsystem_vendor_id, f.subsystem_id), (0x1AF4, 2));
        assert_eq!(virtio_device_type(&f), Some(device_type::BLOCK));
        let mut t = VirtioPci::new(&p, &f).unwrap();
        t.begin_init(0, InterruptMode::Polled).unwrap();
        // A transitional net device is a net device, whatever its legacy ID says.
        set_cfg16(&p, 0x2E, device_type::NET);
        assert_eq!(virtio_device_type(&p.function()), Some(device_type::NET));
    }

    #[test]
    fn ids_a_modern_driver_must_not_bind() {
        let p = platform(feature::VERSION_1, vec![8]);
        for (vendor, device, subsystem) in [
            (0x8086, 0x1042, 2),           // not the virtio vendor
            (VIRTIO_VENDOR_ID, 0x1080, 2), // past the modern range
            (VIRTIO_VENDOR_ID, 0x1001, 0), // transitional without a device type
        ] {
            set_cfg16(&p, 0x00, vendor);
            set_cfg16(&p, 0x02, device);
            set_cfg16(&p, 0x2E, subsystem);
            let f = p.function();
            assert_eq!(virtio_device_type(&f), None, "{vendor:04x}:{device:04x}");
            assert!(matches!(
                VirtioPci::new(&p, &f),
                Err(VirtioError::NotVirtio { .. })
            ));
        }
    }

    #[test]
    fn transitional_without_modern_capabilities_is_refused() {
        let p = platform(feature::VERSION_1, vec![8]);
        set_cfg16(&p, 0x02, 0x1001);
        set_cfg16(&p, 0x2E, device_type::BLOCK);
        // A legacy-only device: the capability list holds just MSI-X.
        p.cfg.borrow_mut()[0x34] = fake::CAP_MSIX as u8;
        assert!(matches!(
            VirtioPci::new(&p, &p.function()),
            Err(VirtioError::MissingCapability(cfg_type::COMMON))
        ));
    }

    #[test]
    fn interrupt_plan_follows_the_capabilities() {
        let p = platform(feature::VERSION_1, vec![8]);
        let f = p.function();
        let table = msix_table_size(&p, &f).unwrap();
        assert_eq!(table, Some(fake::MSIX_ENTRIES as u16));
        assert_eq!(
            InterruptPlan::choose(&f, table, 2, 24),
            InterruptPlan::Msix { vectors: 2 }
        );
        // A table smaller than wanted: one shared vector.
        assert_eq!(
            InterruptPlan::choose(&f, Some(1), 2, 24),
            InterruptPlan::Msix { vectors: 1 }
        );
        // No MSI-X: the fake's INTA# on line 11.
        p.cfg.borrow_mut()[0x34] = fake::CAP_COMMON as u8;
        p.cfg.borrow_mut()[fake::CAP_PCI + 1] = 0; // end the list before MSI-X
        let f = p.function();
        assert_eq!(msix_table_size(&p, &f).unwrap(), None);
        assert_eq!(
            InterruptPlan::choose(&f, None, 2, 24),
            InterruptPlan::Intx { line: 11 }
        );
        // A line the interrupt controller does not have, an unknown line, no pin: poll.
        assert_eq!(InterruptPlan::choose(&f, None, 2, 8), InterruptPlan::Polled);
        p.cfg.borrow_mut()[0x3C] = 0xFF;
        assert_eq!(
            InterruptPlan::choose(&p.function(), None, 2, 24),
            InterruptPlan::Polled
        );
        p.cfg.borrow_mut()[0x3C] = 11;
        p.cfg.borrow_mut()[0x3D] = 0;
        assert_eq!(
            InterruptPlan::choose(&p.function(), None, 2, 24),
            InterruptPlan::Polled
        );
    }

    #[test]
    fn msix_table_outside_its_bar_is_unusable() {
        let p = platform(feature::VERSION_1, vec![8]);
        let at = fake::CAP_MSIX + 4;
        let table = fake::BAR_SIZE as u32 - 16; // BIR 0, room for one entry of eight
        p.cfg.borrow_mut()[at..at + 4].copy_from_slice(&table.to_le_bytes());
        assert_eq!(msix_table_size(&p, &p.function()).unwrap(), None);
    }

    #[test]
    fn reset_waits_and_times_out() {
        let p = platform(feature::VERSION_1, vec![8]);
        p.dev.borrow_mut().reset_lag = 5;
        let mut t = VirtioPci::new(&p, &p.function()).unwrap();
        t.reset().unwrap();
        assert_eq!(
            p.dev.borrow().lag_left,
            0,
            "driver polled until status read 0"
        );
        p.dev.borrow_mut().reset_lag = u32::MAX;
        assert_eq!(t.reset(), Err(VirtioError::ResetTimeout));
    }

    #[test]
    fn bad_capabilities() {
        let p = platform(feature::VERSION_1, vec![8]);
        // Common config region runs past the 16 KiB BAR.
        p.cfg.borrow_mut()[fake::CAP_COMMON + 12..fake::CAP_COMMON + 16]
            .copy_from_slice(&0x10000u32.to_le_bytes());
        assert_eq!(
            VirtioPci::new(&p, &p.function()).err(),
            Some(VirtioError::RegionOutsideBar {
                cfg_type: 1,
                bar: 0,
                offset: 0,
                length: 0x10000
            })
        );
        let p = platform(feature::VERSION_1, vec![8]);
        p.cfg.borrow_mut()[fake::CAP_NOTIFY + 3] = 9; // unknown type: notify missing
        assert_eq!(
            VirtioPci::new(&p, &p.function()).err(),
            Some(VirtioError::MissingCapability(cfg_type::NOTIFY))
        );
        let p = platform(feature::VERSION_1, vec![8]);
        p.cfg.borrow_mut()[fake::CAP_ISR + 4] = 2; // BAR2 is not implemented
        assert_eq!(
            VirtioPci::new(&p, &p.function()).err(),
            Some(VirtioError::MissingBar {
                cfg_type: cfg_type::ISR,
                bar: 2
            })
        );
    }

    #[test]
    fn io_bar_is_refused() {
        let p = platform(feature::VERSION_1, vec![8]);
        let mut f = p.function();
        f.bars[0] = Some(Bar::Io {
            port: 0xC000,
            size: 0x4000,
        });
        assert_eq!(
            VirtioPci::new(&p, &f).err(),
            Some(VirtioError::IoBar {
                cfg_type: 1,
                bar: 0
            })
        );
    }

    #[test]
    fn device_config_reads() {
        let p = platform(feature::VERSION_1, vec![8]);
        let t = VirtioPci::new(&p, &p.function()).unwrap();
        assert_eq!(t.config_read8(3), Ok(3));
        assert_eq!(t.config_read16(2), Ok(0x0302));
        assert_eq!(t.config_read32(4), Ok(0x0706_0504));
        p.dev.borrow_mut().generation_bumps = 3; // torn reads: retried
        assert_eq!(t.config_read64(8), Ok(0x0F0E_0D0C_0B0A_0908));
        assert_eq!(p.dev.borrow().generation_bumps, 0);
        p.dev.borrow_mut().generation_bumps = u32::MAX;
        assert_eq!(t.config_read64(0), Err(VirtioError::ConfigUnstable));
        assert_eq!(
            t.config_read32(0xFE),
            Err(VirtioError::ConfigOutOfRange {
                offset: 0xFE,
                width: 4
            })
        );
    }

    #[test]
    fn needs_reset_and_timeout_in_wait() {
        let p = platform(feature::VERSION_1, vec![8]);
        let mut t = VirtioPci::new(&p, &p.function()).unwrap();
        t.begin_init(0, InterruptMode::Polled).unwrap();
        let mut q = t.setup_queue(0, 8).unwrap();
        t.driver_ok().unwrap();
        q.add(&[(0x1000, 1)], &[], 1).unwrap();
        t.notify(0);
        // Inert device: never completes.
        assert_eq!(t.wait_used(0, &mut q, 1_000_000), Err(VirtioError::Timeout));
        p.dev.borrow_mut().status |= status::DEVICE_NEEDS_RESET;
        assert!(t.needs_reset());
        assert_eq!(
            t.wait_used(0, &mut q, 1_000_000),
            Err(VirtioError::DeviceNeedsReset)
        );
    }

    #[test]
    fn isr_read_clears() {
        let p = platform(feature::VERSION_1, vec![8]);
        let t = VirtioPci::new(&p, &p.function()).unwrap();
        p.dev.borrow_mut().isr = ISR_QUEUE | ISR_CONFIG;
        assert_eq!(
            t.read_isr(),
            IsrStatus {
                queue: true,
                config: true
            }
        );
        assert_eq!(t.read_isr(), IsrStatus::default());
    }
}
