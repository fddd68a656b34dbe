//! Intel 82540EM (e1000, PCI 8086:100E) on the [`Nic`] trait.
//!
//! BAR0 is the register file. Bring-up: reset (CTRL.RST, bounded wait), the MAC from the
//! EEPROM through EERD with the EEPROM checksum checked, RAL/RAH and a cleared MTA, link up
//! (CTRL.SLU; STATUS.LU says whether it is), then legacy RX and TX descriptor rings of a
//! configurable size. RX buffers are 2048 bytes, all from one DMA region; so are the TX
//! buffers, one per descriptor. TX writes TDT once per [`Nic::flush`]; finished descriptors
//! come back by their DD bit. With [`E1000Options::tx_checksum`] a TCP/UDP checksum is
//! finished by the device through a context descriptor (written again only when the offsets
//! change) and a data descriptor with POPTS.TXSM.
//!
//! A device that misbehaves ends in a counted drop or a [`NicError::Device`], never a hang or
//! a write outside the driver's buffers: every wait is bounded by the platform clock, RX
//! lengths are checked against the buffer, and head registers are checked against the ring.

pub mod regs;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use core::fmt;
use core::sync::atomic::{fence, Ordering};

use regs::{
    eerd, mdic, reg, tctl, ContextDesc, Ctrl, DataDesc, Intr, Rctl, RxDesc, RxErrors, RxStatus,
    Status, Tctl, TxCmd, TxDesc, TxStatus,
};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::{
    LinkState, MacAddress, Nic, NicCounters, NicError, NicEvents, Offloads, RxInfo, TxChecksum,
    ETH_FRAME_MAX,
};
use crate::pci::{Bar, Pci, PciError, PciFunction};
use crate::platform::{DmaBuffer, MmioRegion, Platform, PlatformError};

pub const VENDOR_INTEL: u16 = 0x8086;
pub const DEVICE_82540EM: u16 = 0x100E;

/// Bytes of each RX and TX buffer (RCTL.BSIZE 2048).
pub const BUFFER_SIZE: usize = 2048;
/// Largest ring the driver sets up (RDLEN/TDLEN allow more; this bounds the DMA asked for).
pub const MAX_RING: u16 = 4096;
const DESC_SIZE: usize = 16;
/// RX descriptors given back per RDT write while frames keep coming (at most a quarter of the
/// ring): fewer exits than one per frame. Once the ring was found full, or the device reported
/// an overrun (RXO), every descriptor goes back at once until the ring is drained: QEMU's
/// e1000 with frames queued for a full ring stalled its RX (until the guest transmitted) when
/// buffers came back in batches (net_rx_flood), and not when they came back one by one.
const RX_RETURN_BATCH: u16 = 32;

/// How long the device may take to reset, answer an EEPROM read or a PHY access.
const RESET_TIMEOUT_NS: u64 = 100_000_000;
const EEPROM_TIMEOUT_NS: u64 = 10_000_000;
const MDIC_TIMEOUT_NS: u64 = 10_000_000;

/// Whether `f` is a function this driver binds.
pub fn is_e1000(f: &PciFunction) -> bool {
    f.vendor_id == VENDOR_INTEL && f.device_id == DEVICE_82540EM
}

/// How the driver learns of the device's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E1000Interrupts {
    /// The caller polls.
    Polled,
    /// The legacy PCI line, routed by the caller to `vector` (level-triggered).
    Intx { vector: u8 },
}

/// What to set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E1000Options {
    /// RX and TX descriptors: multiples of 8 (a 128-byte ring length), 8..=[`MAX_RING`].
    pub rx_ring: u16,
    pub tx_ring: u16,
    /// Finish TCP/UDP checksums in the device (context descriptors).
    pub tx_checksum: bool,
    /// Interrupt throttling (ITR) in 256 ns units; 0 turns moderation off.
    pub itr: u16,
    pub interrupts: E1000Interrupts,
}

impl Default for E1000Options {
    fn default() -> Self {
        Self {
            rx_ring: 256,
            tx_ring: 256,
            tx_checksum: true,
            itr: 0,
            interrupts: E1000Interrupts::Polled,
        }
    }
}

/// Why the device could not be brought up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E1000Error {
    Pci(PciError),
    Platform(PlatformError),
    /// Not an 82540EM.
    NotE1000 {
        vendor_id: u16,
        device_id: u16,
    },
    /// BAR0 is missing or not a memory BAR.
    NoRegisterBar,
    /// A ring size that is not a multiple of 8 in 8..=MAX_RING.
    BadRingSize(u16),
    /// CTRL.RST did not clear in time.
    ResetTimeout,
    /// An EEPROM read (EERD) did not finish in time.
    EepromTimeout {
        word: u16,
    },
    /// The EEPROM's words 0..0x40 do not sum to 0xBABA.
    EepromChecksum {
        sum: u16,
    },
    /// A PHY access (MDIC) did not finish in time, or the device flagged an error.
    Phy,
}

impl From<PciError> for E1000Error {
    fn from(e: PciError) -> Self {
        Self::Pci(e)
    }
}

impl From<PlatformError> for E1000Error {
    fn from(e: PlatformError) -> Self {
        Self::Platform(e)
    }
}

impl fmt::Display for E1000Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pci(e) => write!(f, "pci: {e}"),
            Self::Platform(e) => write!(f, "platform: {e}"),
            Self::NotE1000 {
                vendor_id,
                device_id,
            } => write!(f, "{vendor_id:04x}:{device_id:04x} is not an 82540EM"),
            Self::NoRegisterBar => write!(f, "BAR0 is not a memory BAR"),
            Self::BadRingSize(n) => write!(f, "ring of {n} descriptors (a multiple of 8)"),
            Self::ResetTimeout => write!(f, "reset did not complete"),
            Self::EepromTimeout { word } => write!(f, "EEPROM read of word {word:#x} timed out"),
            Self::EepromChecksum { sum } => {
                write!(
                    f,
                    "EEPROM checksum {sum:#06x}, not {:#06x}",
                    regs::EEPROM_SUM
                )
            }
            Self::Phy => write!(f, "PHY access failed"),
        }
    }
}

/// Extra counters beside [`NicCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct E1000Counters {
    /// RX descriptors written back with a length of 0 or past the buffer.
    pub rx_bad_length: u64,
    /// RX descriptors the device flagged with errors, or not ending a frame.
    pub rx_errors: u64,
    /// RXO interrupts: the device ran out of RX descriptors.
    pub rx_overruns: u64,
    /// Context descriptors written (checksum offsets changed).
    pub tx_contexts: u64,
}

/// A descriptor ring and its buffers, each one DMA region.
struct Ring {
    descs: DmaBuffer,
    buffers: DmaBuffer,
    size: u16,
}

impl Ring {
    fn desc_ptr(&self, i: u16) -> *mut u8 {
        debug_assert!(i < self.size);
        // In bounds: `descs` holds `size` descriptors.
        self.descs
            .as_mut_ptr()
            .wrapping_add(usize::from(i) * DESC_SIZE)
    }

    fn read<T: FromBytes>(&self, i: u16) -> T {
        const { assert!(size_of::<T>() == DESC_SIZE) };
        // SAFETY: descriptor `i` lies inside `descs` (i < size), which is 4096-aligned, so
        // the 16-byte slot is aligned for the descriptor structs (8-byte alignment); the device
        // may write it at any time, hence the volatile read of a type valid for any bytes.
        unsafe { self.desc_ptr(i).cast::<T>().read_volatile() }
    }

    fn write<T: IntoBytes + Immutable>(&self, i: u16, desc: T) {
        const { assert!(size_of::<T>() == DESC_SIZE) };
        // SAFETY: as in `read`: an aligned slot inside our own DMA region.
        unsafe { self.desc_ptr(i).cast::<T>().write_volatile(desc) }
    }

    fn buffer_phys(&self, i: u16) -> u64 {
        self.buffers.phys() + (usize::from(i) * BUFFER_SIZE) as u64
    }

    fn buffer(&mut self, i: u16) -> &mut [u8] {
        let start = usize::from(i) * BUFFER_SIZE;
        &mut self.buffers.as_mut_slice()[start..start + BUFFER_SIZE]
    }

    fn next(&self, i: u16) -> u16 {
        if i + 1 == self.size {
            0
        } else {
            i + 1
        }
    }
}

/// An 82540EM, up and running.
pub struct E1000<'p, P: Platform + ?Sized> {
    platform: &'p P,
    mmio: MmioRegion,
    mac: MacAddress,
    options: E1000Options,
    rx: Ring,
    /// Next RX descriptor the device will complete.
    rx_next: u16,
    /// Descriptors given back but not yet told to the device (RDT written lazily).
    rx_unreturned: u16,
    /// The device said the ring ran low: give buffers back one by one until it is drained.
    rx_pressure: bool,
    /// A descriptor without EOP came: drop through the one that ends that frame.
    rx_discarding: bool,
    tx: Ring,
    /// Next free TX descriptor (the tail we will write).
    tx_tail: u16,
    /// Oldest TX descriptor not reclaimed yet.
    tx_clean: u16,
    /// TX descriptors queued since the last flush.
    tx_unflushed: u16,
    /// Checksum offsets of the last context descriptor (start, insert, TCP), if any.
    tx_context: Option<(u8, u8, bool)>,
    link: LinkState,
    vectors: [u8; 1],
    interrupts_on: bool,
    failed: Option<&'static str>,
    counters: NicCounters,
    extra: E1000Counters,
}

/// The interrupt causes the driver enables. Not TXDW: finished TX descriptors are reclaimed
/// when the driver next sends or polls, as the virtio-net driver never asks for TX
/// interrupts. A TX interrupt per batch costs the guest an interrupt and an ICR read (on an
/// emulated device, several exits) and tells it nothing its next send does not find.
const IMS_MASK: Intr = Intr::RXT0
    .union(Intr::RXO)
    .union(Intr::RXDMT0)
    .union(Intr::LSC);

impl<'p, P: Platform + ?Sized> E1000<'p, P> {
    /// Bring the device up: bus mastering, reset, MAC from the EEPROM (checksum checked),
    /// receive address and multicast table, link, rings, then RX and TX enabled. Interrupts
    /// stay masked until [`Nic::set_interrupts`].
    pub fn new(
        platform: &'p P,
        function: &PciFunction,
        options: E1000Options,
    ) -> Result<Self, E1000Error> {
        if !is_e1000(function) {
            return Err(E1000Error::NotE1000 {
                vendor_id: function.vendor_id,
                device_id: function.device_id,
            });
        }
        for n in [options.rx_ring, options.tx_ring] {
            if !(8..=MAX_RING).contains(&n) || !n.is_multiple_of(8) {
                return Err(E1000Error::BadRingSize(n));
            }
        }
        let Some(Bar::Memory { addr, size, .. }) = function.bar(0) else {
            return Err(E1000Error::NoRegisterBar);
        };
        let pci = Pci::new(platform);
        pci.enable_io_mem(function.address)?;
        pci.enable_bus_master(function.address)?;
        let mmio = platform.map_mmio(addr, size.min(reg::BAR0_LEN))?;

        let probe = Probe { platform, mmio };
        probe.reset()?;
        let mac = probe.read_mac()?;
        let rx = Ring::alloc(platform, options.rx_ring)?;
        let tx = match Ring::alloc(platform, options.tx_ring) {
            Ok(t) => t,
            Err(e) => {
                rx.free(platform);
                return Err(e);
            }
        };
        let mut nic = Self {
            platform,
            mmio,
            mac,
            options,
            rx,
            rx_next: 0,
            rx_unreturned: 0,
            rx_pressure: false,
            rx_discarding: false,
            tx,
            tx_tail: 0,
            tx_clean: 0,
            tx_unflushed: 0,
            tx_context: None,
            link: LinkState::Down,
            vectors: [match options.interrupts {
                E1000Interrupts::Intx { vector } => vector,
                E1000Interrupts::Polled => 0,
            }],
            interrupts_on: false,
            failed: None,
            counters: NicCounters::default(),
            extra: E1000Counters::default(),
        };
        nic.program();
        Ok(nic)
    }

    fn read32(&self, offset: u64) -> u32 {
        self.platform.mmio_read32(&self.mmio, offset)
    }

    fn write32(&self, offset: u64, value: u32) {
        self.platform.mmio_write32(&self.mmio, offset, value)
    }

    /// Everything after reset: addresses, link, rings, RX/TX on.
    fn program(&mut self) {
        let m = self.mac;
        self.write32(reg::IMC, u32::MAX);
        self.read32(reg::ICR);
        self.write32(reg::RAL0, u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
        self.write32(
            reg::RAH0,
            u32::from(u16::from_le_bytes([m[4], m[5]])) | regs::RAH_AV,
        );
        for i in 0..reg::MTA_LEN {
            self.write32(reg::MTA + 4 * i, 0);
        }
        let ctrl = Ctrl::from_bits_retain(self.read32(reg::CTRL));
        self.write32(
            reg::CTRL,
            (ctrl | Ctrl::SLU | Ctrl::ASDE)
                .difference(Ctrl::PHY_RST)
                .bits(),
        );

        // RX: every descriptor owned by the device but one (RDT one behind RDH).
        for i in 0..self.rx.size {
            let d = RxDesc {
                buffer_addr: self.rx.buffer_phys(i),
                ..RxDesc::default()
            };
            self.rx.write(i, d);
        }
        for i in 0..self.tx.size {
            self.tx.write(i, TxDesc::default());
        }
        fence(Ordering::SeqCst);
        let rx_phys = self.rx.descs.phys();
        self.write32(reg::RDBAL, rx_phys as u32);
        self.write32(reg::RDBAH, (rx_phys >> 32) as u32);
        self.write32(reg::RDLEN, u32::from(self.rx.size) * DESC_SIZE as u32);
        self.write32(reg::RDH, 0);
        self.write32(reg::RDT, u32::from(self.rx.size - 1));
        self.write32(reg::RDTR, 0);
        self.rx_next = 0;
        self.rx_pressure = false;
        self.rx_discarding = false;
        self.rx_unreturned = 0;

        let tx_phys = self.tx.descs.phys();
        self.write32(reg::TDBAL, tx_phys as u32);
        self.write32(reg::TDBAH, (tx_phys >> 32) as u32);
        self.write32(reg::TDLEN, u32::from(self.tx.size) * DESC_SIZE as u32);
        self.write32(reg::TDH, 0);
        self.write32(reg::TDT, 0);
        self.tx_tail = 0;
        self.tx_clean = 0;
        self.tx_unflushed = 0;
        self.tx_context = None;

        self.write32(reg::ITR, u32::from(self.options.itr));
        self.write32(reg::TIPG, regs::TIPG_82540_COPPER);
        self.write32(
            reg::TCTL,
            (Tctl::EN | Tctl::PSP).bits()
                | tctl::CT_DEFAULT << tctl::CT_SHIFT
                | tctl::COLD_FULL_DUPLEX << tctl::COLD_SHIFT,
        );
        self.write32(
            reg::RCTL,
            (Rctl::EN | Rctl::BAM | Rctl::BSIZE_2048 | Rctl::SECRC).bits(),
        );
        self.read_link();
        if self.interrupts_on {
            self.write32(reg::IMS, IMS_MASK.bits());
        }
    }

    fn read_link(&mut self) -> LinkState {
        let status = Status::from_bits_retain(self.read32(reg::STATUS));
        self.link = if status.contains(Status::LU) {
            LinkState::Up
        } else {
            LinkState::Down
        };
        self.link
    }

    /// Read PHY register `reg` of the internal PHY over MDIC (bounded wait).
    pub fn phy_read(&self, phy_reg: u32) -> Result<u16, E1000Error> {
        self.write32(
            reg::MDIC,
            mdic::OP_READ | mdic::PHY_ADDR << mdic::PHY_SHIFT | (phy_reg & 0x1F) << mdic::REG_SHIFT,
        );
        let start = self.platform.now_ns();
        loop {
            let v = self.read32(reg::MDIC);
            if v & mdic::ERROR != 0 {
                return Err(E1000Error::Phy);
            }
            if v & mdic::READY != 0 {
                return Ok((v & mdic::DATA_MASK) as u16);
            }
            if self.platform.now_ns().saturating_sub(start) > MDIC_TIMEOUT_NS {
                return Err(E1000Error::Phy);
            }
            core::hint::spin_loop();
        }
    }

    /// Reset the device and set it up again (rings emptied, TX in flight lost). Clears a
    /// previous device error if the reset succeeds.
    pub fn reset(&mut self) -> Result<(), E1000Error> {
        Probe {
            platform: self.platform,
            mmio: self.mmio,
        }
        .reset()?;
        self.failed = None;
        self.program();
        Ok(())
    }

    /// The e1000-specific counters.
    pub fn extra_counters(&self) -> E1000Counters {
        self.extra
    }

    /// Descriptors in each ring.
    pub fn ring_sizes(&self) -> (u16, u16) {
        (self.rx.size, self.tx.size)
    }

    /// For diagnosis: the device's RDH, RDT, TDH, TDT and ICR (which a read clears), then
    /// the driver's next RX descriptor, TX tail and oldest unreclaimed TX descriptor, and the
    /// status byte of the next RX descriptor.
    pub fn ring_state(&self) -> [u32; 9] {
        [
            self.read32(reg::RDH),
            self.read32(reg::RDT),
            self.read32(reg::TDH),
            self.read32(reg::TDT),
            self.read32(reg::ICR),
            u32::from(self.rx_next),
            u32::from(self.tx_tail),
            u32::from(self.tx_clean),
            u32::from(self.rx.read::<RxDesc>(self.rx_next).status),
        ]
    }

    /// The device error that stopped the driver, if any.
    pub fn failure(&self) -> Option<&'static str> {
        self.failed
    }

    fn check(&self) -> Result<(), NicError> {
        match self.failed {
            Some(what) => Err(NicError::Device(what)),
            None => Ok(()),
        }
    }

    /// Stop using the device: interrupts masked, RX and TX off.
    fn fail(&mut self, what: &'static str) -> NicError {
        if self.failed.is_none() {
            self.failed = Some(what);
            self.write32(reg::IMC, u32::MAX);
            self.write32(reg::RCTL, 0);
            self.write32(reg::TCTL, 0);
        }
        NicError::Device(what)
    }

    /// The head registers must lie inside their rings; a device that says otherwise is
    /// broken (its DMA would go past our descriptors).
    pub fn check_heads(&mut self) -> Result<(), NicError> {
        self.check()?;
        if self.read32(reg::RDH) >= u32::from(self.rx.size) {
            return Err(self.fail("RDH out of range"));
        }
        if self.read32(reg::TDH) >= u32::from(self.tx.size) {
            return Err(self.fail("TDH out of range"));
        }
        Ok(())
    }

    /// TX descriptors free to fill (one stays empty so a full ring differs from an empty one).
    fn tx_free(&self) -> u16 {
        let used = (self.tx_tail + self.tx.size - self.tx_clean) % self.tx.size;
        self.tx.size - 1 - used
    }

    /// Tell the device about RX descriptors given back (RDT is the last one it may fill).
    fn return_rx(&mut self) {
        if self.rx_unreturned > 0 {
            fence(Ordering::SeqCst);
            let tail = (self.rx_next + self.rx.size - 1) % self.rx.size;
            self.write32(reg::RDT, u32::from(tail));
            self.rx_unreturned = 0;
            self.counters.notifies += 1;
        }
    }

    fn rx_ready(&self) -> bool {
        RxStatus::from_bits_retain(self.rx.read::<RxDesc>(self.rx_next).status)
            .contains(RxStatus::DD)
    }

    fn tx_done(&self) -> bool {
        self.tx_clean != self.tx_tail
            && TxStatus::from_bits_retain(self.tx.read::<TxDesc>(self.tx_clean).status)
                .contains(TxStatus::DD)
    }
}

impl Ring {
    fn alloc<P: Platform + ?Sized>(platform: &P, size: u16) -> Result<Self, E1000Error> {
        let descs = platform.dma_alloc(usize::from(size) * DESC_SIZE, 4096)?;
        let buffers = match platform.dma_alloc(usize::from(size) * BUFFER_SIZE, 4096) {
            Ok(b) => b,
            Err(e) => {
                platform.dma_free(descs);
                return Err(e.into());
            }
        };
        Ok(Self {
            descs,
            buffers,
            size,
        })
    }

    fn free<P: Platform + ?Sized>(self, platform: &P) {
        platform.dma_free(self.descs);
        platform.dma_free(self.buffers);
    }
}

/// The registers before there are rings: reset and EEPROM.
struct Probe<'p, P: Platform + ?Sized> {
    platform: &'p P,
    mmio: MmioRegion,
}

impl<P: Platform + ?Sized> Probe<'_, P> {
    fn reset(&self) -> Result<(), E1000Error> {
        let p = self.platform;
        p.mmio_write32(&self.mmio, reg::IMC, u32::MAX);
        p.mmio_write32(&self.mmio, reg::RCTL, 0);
        p.mmio_write32(&self.mmio, reg::TCTL, 0);
        let ctrl = p.mmio_read32(&self.mmio, reg::CTRL);
        p.mmio_write32(&self.mmio, reg::CTRL, ctrl | Ctrl::RST.bits());
        let start = p.now_ns();
        while p.mmio_read32(&self.mmio, reg::CTRL) & Ctrl::RST.bits() != 0 {
            if p.now_ns().saturating_sub(start) > RESET_TIMEOUT_NS {
                return Err(E1000Error::ResetTimeout);
            }
            core::hint::spin_loop();
        }
        p.mmio_write32(&self.mmio, reg::IMC, u32::MAX);
        p.mmio_read32(&self.mmio, reg::ICR);
        Ok(())
    }

    fn eeprom_word(&self, word: u16) -> Result<u16, E1000Error> {
        let p = self.platform;
        p.mmio_write32(
            &self.mmio,
            reg::EERD,
            eerd::START | u32::from(word) << eerd::ADDR_SHIFT,
        );
        let start = p.now_ns();
        loop {
            let v = p.mmio_read32(&self.mmio, reg::EERD);
            if v & eerd::DONE != 0 {
                return Ok((v >> eerd::DATA_SHIFT) as u16);
            }
            if p.now_ns().saturating_sub(start) > EEPROM_TIMEOUT_NS {
                return Err(E1000Error::EepromTimeout { word });
            }
            core::hint::spin_loop();
        }
    }

    /// Words 0..3 are the MAC, little-endian byte pairs; the whole checksummed range is read
    /// first so a bad EEPROM is refused.
    fn read_mac(&self) -> Result<MacAddress, E1000Error> {
        let mut sum = 0u16;
        let mut mac = [0u8; 6];
        for w in 0..regs::EEPROM_CHECKSUM_WORDS {
            let v = self.eeprom_word(w)?;
            sum = sum.wrapping_add(v);
            if w < 3 {
                let i = usize::from(w) * 2;
                mac[i..i + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
        if sum != regs::EEPROM_SUM {
            return Err(E1000Error::EepromChecksum { sum });
        }
        Ok(mac)
    }
}

impl<P: Platform + ?Sized> Drop for E1000<'_, P> {
    fn drop(&mut self) {
        // Stop DMA before the rings go back to the platform.
        self.write32(reg::IMC, u32::MAX);
        self.write32(reg::RCTL, 0);
        self.write32(reg::TCTL, 0);
        let _ = Probe {
            platform: self.platform,
            mmio: self.mmio,
        }
        .reset();
        let p = self.platform;
        let empty = || Ring {
            // SAFETY: a zero-length buffer is never dereferenced; it only stands in for the
            // rings moved out below and is forgotten, not given to `dma_free`.
            descs: unsafe { DmaBuffer::from_raw_parts(core::ptr::null_mut(), 0, 0) },
            // SAFETY: as above.
            buffers: unsafe { DmaBuffer::from_raw_parts(core::ptr::null_mut(), 0, 0) },
            size: 0,
        };
        core::mem::replace(&mut self.rx, empty()).free(p);
        core::mem::replace(&mut self.tx, empty()).free(p);
    }
}

impl<P: Platform + ?Sized> Nic for E1000<'_, P> {
    fn mac(&self) -> MacAddress {
        self.mac
    }

    fn link(&mut self) -> LinkState {
        self.read_link()
    }

    fn offloads(&self) -> Offloads {
        Offloads {
            tx_checksum: self.options.tx_checksum,
            rx_checksum: false,
        }
    }

    fn send(&mut self, frame: &[u8], checksum: TxChecksum) -> Result<(), NicError> {
        self.check()?;
        if frame.len() < 14 || frame.len() > ETH_FRAME_MAX {
            self.counters.tx_drops += 1;
            return Err(NicError::BadFrameLength(frame.len()));
        }
        if self.link == LinkState::Down {
            self.counters.tx_drops += 1;
            return Err(NicError::LinkDown);
        }
        let context = match checksum {
            TxChecksum::Complete => None,
            TxChecksum::Partial { .. } if !self.options.tx_checksum => {
                self.counters.tx_drops += 1;
                return Err(NicError::OffloadUnavailable);
            }
            TxChecksum::Partial { start, offset } => {
                let insert = usize::from(start) + usize::from(offset);
                if start > 255 || insert > 255 || insert + 2 > frame.len() {
                    self.counters.tx_drops += 1;
                    return Err(NicError::BadFrameLength(frame.len()));
                }
                // TCP's checksum sits 16 bytes in, UDP's 6.
                Some((start as u8, insert as u8, offset == 16))
            }
        };
        let needed = if context.is_some() && context != self.tx_context {
            2
        } else {
            1
        };
        if self.tx_free() < needed {
            self.reclaim()?;
            if self.tx_free() < needed {
                // A full ring is also where a broken TDH would leave us: check it then.
                self.check_heads()?;
                return Err(NicError::TxFull);
            }
        }
        if let Some(ctx @ (css, cso, tcp)) = context {
            if needed == 2 {
                let tucmd = (TxCmd::DEXT | TxCmd::RS).bits()
                    | regs::TUCMD_IP
                    | if tcp { regs::TUCMD_TCP } else { 0 };
                let d = ContextDesc {
                    tucss: css,
                    tucso: cso,
                    tucse: 0,
                    cmd_and_length: u32::from(tucmd) << 24,
                    ..ContextDesc::default()
                };
                self.tx.write(self.tx_tail, d);
                self.tx_tail = self.tx.next(self.tx_tail);
                self.tx_unflushed += 1;
                self.tx_context = Some(ctx);
                self.extra.tx_contexts += 1;
            }
        }
        let i = self.tx_tail;
        self.tx.buffer(i)[..frame.len()].copy_from_slice(frame);
        let addr = self.tx.buffer_phys(i);
        let cmd = TxCmd::EOP | TxCmd::IFCS | TxCmd::RS;
        if context.is_some() {
            let d = DataDesc {
                buffer_addr: addr,
                cmd_and_length: frame.len() as u32
                    | regs::DTYP_DATA
                    | u32::from((cmd | TxCmd::DEXT).bits()) << 24,
                status: 0,
                popts: regs::POPTS_TXSM,
                special: 0,
            };
            self.tx.write(i, d);
        } else {
            let d = TxDesc {
                buffer_addr: addr,
                length: frame.len() as u16,
                cmd: cmd.bits(),
                ..TxDesc::default()
            };
            self.tx.write(i, d);
        }
        self.tx_tail = self.tx.next(i);
        self.tx_unflushed += 1;
        self.counters.tx_packets += 1;
        self.counters.tx_bytes += frame.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), NicError> {
        self.check()?;
        if self.tx_unflushed == 0 {
            return Ok(());
        }
        fence(Ordering::SeqCst);
        self.write32(reg::TDT, u32::from(self.tx_tail));
        self.tx_unflushed = 0;
        self.counters.notifies += 1;
        Ok(())
    }

    fn reclaim(&mut self) -> Result<usize, NicError> {
        self.check()?;
        let mut n = 0;
        while self.tx_done() {
            // Only frames count: a context descriptor carries none.
            let lower = self.tx.read::<DataDesc>(self.tx_clean).cmd_and_length;
            let is_context =
                lower & (u32::from(TxCmd::DEXT.bits()) << 24) != 0 && lower & (0xF << 20) == 0;
            self.tx.write(self.tx_clean, TxDesc::default());
            self.tx_clean = self.tx.next(self.tx_clean);
            if !is_context {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Descriptors the device has not given back (a checksum context counts as one).
    fn tx_in_flight(&self) -> usize {
        usize::from((self.tx_tail + self.tx.size - self.tx_clean) % self.tx.size)
    }

    fn receive(&mut self, deliver: &mut dyn FnMut(&[u8], RxInfo)) -> Result<bool, NicError> {
        self.check()?;
        loop {
            if !self.rx_ready() {
                self.rx_pressure = false;
                self.return_rx();
                return Ok(false);
            }
            fence(Ordering::Acquire);
            let i = self.rx_next;
            if self.rx_unreturned == 0 && !self.rx_pressure {
                // The last descriptor the device owns is filled: the ring is full (the
                // device may be holding frames back or dropping them).
                let last = (i + self.rx.size - 2) % self.rx.size;
                self.rx_pressure = RxStatus::from_bits_retain(self.rx.read::<RxDesc>(last).status)
                    .contains(RxStatus::DD);
            }
            let d = self.rx.read::<RxDesc>(i);
            let len = usize::from(d.length);
            let status = RxStatus::from_bits_retain(d.status);
            let good = if len == 0 || len > BUFFER_SIZE {
                self.extra.rx_bad_length += 1;
                false
            } else if d.errors & RxErrors::all().bits() != 0
                || !status.contains(RxStatus::EOP)
                || self.rx_discarding
            {
                // A frame over several descriptors (never with 2048-byte buffers and LPE
                // off) is dropped whole: this part, and the rest through its EOP.
                self.extra.rx_errors += 1;
                false
            } else {
                true
            };
            self.rx_discarding = !status.contains(RxStatus::EOP);
            if good {
                let frame = &self.rx.buffer(i)[..len];
                deliver(frame, RxInfo::default());
                self.counters.rx_packets += 1;
                self.counters.rx_bytes += len as u64;
            } else {
                self.counters.rx_drops += 1;
            }
            // Back to the device: our buffer address again (whatever it wrote there).
            self.rx.write(
                i,
                RxDesc {
                    buffer_addr: self.rx.buffer_phys(i),
                    ..RxDesc::default()
                },
            );
            self.rx_next = self.rx.next(i);
            self.rx_unreturned += 1;
            if self.rx_pressure || self.rx_unreturned >= RX_RETURN_BATCH.min(self.rx.size / 4) {
                self.return_rx();
            }
            if good {
                return Ok(true);
            }
        }
    }

    fn set_interrupts(&mut self, enabled: bool) -> bool {
        if matches!(self.options.interrupts, E1000Interrupts::Polled) {
            return false;
        }
        self.interrupts_on = enabled;
        if enabled {
            self.write32(reg::IMS, IMS_MASK.bits());
        } else {
            self.write32(reg::IMC, u32::MAX);
        }
        true
    }

    fn handle_interrupt(&mut self) -> NicEvents {
        let icr = Intr::from_bits_retain(self.read32(reg::ICR));
        if self.interrupts_on {
            self.platform.ack_interrupt(self.vectors[0]);
            // ICR latches masked causes too (TXDW): only an enabled one raised the line.
            if icr.intersects(IMS_MASK) {
                self.counters.interrupts += 1;
            }
        }
        let mut events = NicEvents::default();
        if icr.contains(Intr::LSC) {
            self.read_link();
            events.link_changed = true;
        }
        if icr.contains(Intr::RXO) {
            self.rx_pressure = true;
        }
        if icr.contains(Intr::RXO) {
            self.extra.rx_overruns += 1;
            self.counters.rx_drops += 1;
        }
        if icr.intersects(Intr::RXO | Intr::RXDMT0) && self.failed.is_none() {
            // The ring ran low: a sane device's heads are inside it.
            let _ = self.check_heads();
        }
        if self.failed.is_none() {
            events.rx = icr.intersects(Intr::RXT0 | Intr::RXO) || self.rx_ready();
            events.tx = icr.contains(Intr::TXDW) || self.tx_done();
        }
        events
    }

    fn interrupt_vectors(&self) -> &[u8] {
        if self.interrupts_on {
            &self.vectors
        } else {
            &[]
        }
    }

    fn counters(&self) -> NicCounters {
        self.counters
    }
}
