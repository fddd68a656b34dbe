//! Realtek RTL8139 (PCI 10EC:8139) in C mode on the [`Nic`] trait.
//!
//! BAR0 is the I/O register window. Bring-up: software reset (CR.RST, bounded wait), the MAC
//! from IDR0..5 checked against the 93C46 EEPROM (words 7..9), then the RX ring buffer and
//! the four TX slots. Revisions 0x10 (the RTL8139 Linux's 8139too binds, our model) and 0x20
//! (QEMU's 8139C+) are accepted; the C+ descriptor mode is never entered.
//!
//! RX is one ring of 8, 16, 32 or 64 KiB, plus 16 bytes and 1536 of slack: each frame is a
//! 4-byte header (status, length with the CRC), the frame and its CRC, the next header at
//! the next dword. With RCR.WRAP a frame that reaches the end of the ring goes on into the
//! slack; the 64 KiB ring ignores WRAP and wraps the frame to the start, so there the driver
//! copies it out in two parts. After each frame CAPR is set to the next header's offset
//! minus 16. The driver keeps its own read offset and never trusts CBR or CAPR read back.
//!
//! TX is four slots used round robin (the chip sends them in that order), each a buffer of
//! [`TX_SLOT_SIZE`] bytes: [`Nic::send`] copies the frame (padded to 60 bytes), and
//! [`Nic::flush`] hands the queued slots to the chip by writing their TSD. The chip offers
//! no checksum offload.
//!
//! A device that misbehaves ends in a counted drop, a reset or a [`NicError::Device`], never
//! a hang or an access outside the driver's buffers: every wait is bounded by the platform
//! clock, RX header lengths are checked before anything is read, a TX slot the chip never
//! completes times out, and an interrupt status that cannot be cleared turns interrupts off.

pub mod eeprom;
pub mod regs;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use alloc::boxed::Box;
use core::fmt;
use core::sync::atomic::{fence, Ordering};

use regs::{
    reg, tsad, tsd, Config1, Cr, Cr9346, Intr, Msr, Rcr, RxStatus, TxSummary, EEPROM_ID,
    EEPROM_MAC_WORD, RCR_MXDMA_UNLIMITED, RCR_RBLEN_SHIFT, RCR_RXFTH_NONE, RX_LENGTH_IN_PROGRESS,
    TCR_IFG_STANDARD, TCR_MXDMA_1024, TSD_ERTXTH_256,
};

use super::{
    LinkState, MacAddress, Nic, NicCounters, NicError, NicEvents, Offloads, RxInfo, TxChecksum,
    ETH_FRAME_MAX, ETH_FRAME_MIN,
};
use crate::pci::{Bar, Pci, PciError, PciFunction};
use crate::platform::{DmaBuffer, Platform, PlatformError};

pub const VENDOR_REALTEK: u16 = 0x10EC;
pub const DEVICE_RTL8139: u16 = 0x8139;
/// PCI revisions the driver binds: the RTL8139 (as Linux's 8139too expects it, and our
/// model) and the RTL8139C+ that QEMU reports (used here in C mode only).
pub const REVISIONS: [u8; 2] = [0x10, 0x20];

/// TX slots (TSD0..3 / TSAD0..3).
pub const TX_SLOTS: usize = 4;
/// Bytes of each TX buffer.
pub const TX_SLOT_SIZE: usize = 2048;
/// Largest frame the chip sends (its TX FIFO holds 2 KiB; the datasheet's limit).
pub const TX_FRAME_MAX: usize = 1792;
const _: () = assert!(ETH_FRAME_MAX <= TX_FRAME_MAX && TX_FRAME_MAX <= TX_SLOT_SIZE);
/// Bytes past the end of the ring the chip may write: 16 (the datasheet's "+16") and room
/// for a whole frame when RCR.WRAP lets it run past the end.
pub const RX_SLACK: usize = 16 + 1536;
/// The CRC the chip stores after each frame (counted in the header's length).
const CRC_LEN: usize = 4;
const RX_HEADER_LEN: usize = 4;
/// Header lengths the driver accepts: a padded minimum frame to a 1518-byte (VLAN-tagged)
/// frame, each with its CRC.
const RX_LENGTH_MIN: usize = ETH_FRAME_MIN + CRC_LEN;
const RX_LENGTH_MAX: usize = 1518 + CRC_LEN;
// A frame whose header sits at the last dword of the ring ends inside the slack.
const _: () = assert!(RX_SLACK >= RX_HEADER_LEN + RX_LENGTH_MAX);

/// How long the chip may take to reset, and to send a handed-over frame.
const RESET_TIMEOUT_NS: u64 = 100_000_000;
const TX_TIMEOUT_NS: u64 = 1_000_000_000;
/// Interrupts in a row whose status comes back though nothing was done about it between
/// them before the driver decides the chip cannot clear ISR and stops using its interrupt.
const ISR_STORM_LIMIT: u32 = 1000;

/// The interrupt causes the driver enables. Not TOK: finished slots are reclaimed when the
/// driver next sends or polls (as the virtio-net and e1000 drivers never ask for TX
/// interrupts): a TOK interrupt costs the guest an interrupt, an ISR read and an ISR write,
/// all exits, and tells it nothing its next send does not find. TER (a TX error) stays.
const IMR_MASK: Intr = Intr::ROK
    .union(Intr::RER)
    .union(Intr::TER)
    .union(Intr::RXOVW)
    .union(Intr::PUN_LINKCHG)
    .union(Intr::FIFOOVW)
    .union(Intr::SERR);

/// Whether `f` is a function this driver binds.
pub fn is_rtl8139(f: &PciFunction) -> bool {
    f.vendor_id == VENDOR_REALTEK && f.device_id == DEVICE_RTL8139
}

/// How the driver learns of the device's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rtl8139Interrupts {
    /// The caller polls.
    Polled,
    /// The legacy PCI line, routed by the caller to `vector` (level-triggered).
    Intx { vector: u8 },
}

/// Size of the RX ring buffer (RCR.RBLEN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxBufferSize {
    K8,
    K16,
    K32,
    K64,
}

impl RxBufferSize {
    /// Bytes of the ring proper (without the slack).
    pub const fn bytes(self) -> usize {
        8192 << self.rblen()
    }

    const fn rblen(self) -> u32 {
        match self {
            Self::K8 => 0,
            Self::K16 => 1,
            Self::K32 => 2,
            Self::K64 => 3,
        }
    }

    /// The 64 KiB ring wraps frames to its start whatever RCR.WRAP says.
    const fn wraps_frames(self) -> bool {
        matches!(self, Self::K64)
    }
}

/// What to set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rtl8139Options {
    pub interrupts: Rtl8139Interrupts,
    pub rx_buffer: RxBufferSize,
}

impl Default for Rtl8139Options {
    /// 32 KiB, as Linux's 8139too: about 21 full-sized frames in flight.
    fn default() -> Self {
        Self {
            interrupts: Rtl8139Interrupts::Polled,
            rx_buffer: RxBufferSize::K32,
        }
    }
}

/// Why the device could not be brought up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rtl8139Error {
    Pci(PciError),
    Platform(PlatformError),
    /// Not an RTL8139.
    NotRtl8139 {
        vendor_id: u16,
        device_id: u16,
    },
    /// A revision other than [`REVISIONS`].
    UnsupportedRevision(u8),
    /// BAR0 is missing, not an I/O BAR, or smaller than the register window.
    NoRegisterBar,
    /// CR.RST did not clear in time.
    ResetTimeout,
    /// DMA memory above 4 GiB: RBSTART and TSAD take 32-bit addresses.
    DmaAbove4G(u64),
}

impl From<PciError> for Rtl8139Error {
    fn from(e: PciError) -> Self {
        Self::Pci(e)
    }
}

impl From<PlatformError> for Rtl8139Error {
    fn from(e: PlatformError) -> Self {
        Self::Platform(e)
    }
}

impl fmt::Display for Rtl8139Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pci(e) => write!(f, "pci: {e}"),
            Self::Platform(e) => write!(f, "platform: {e}"),
            Self::NotRtl8139 {
                vendor_id,
                device_id,
            } => write!(f, "{vendor_id:04x}:{device_id:04x} is not an RTL8139"),
            Self::UnsupportedRevision(r) => {
                write!(f, "revision {r:#04x} (0x10 or 0x20 supported)")
            }
            Self::NoRegisterBar => write!(f, "BAR0 is not an I/O BAR of 256 bytes"),
            Self::ResetTimeout => write!(f, "reset did not complete"),
            Self::DmaAbove4G(a) => write!(f, "DMA memory at {a:#x} is above 4 GiB"),
        }
    }
}

/// Where the MAC came from, and what the EEPROM said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacSource {
    /// IDR0..5 and EEPROM words 7..9 agree.
    IdrMatchesEeprom,
    /// They differ; IDR (what the chip filters on) is used.
    IdrNotEeprom { eeprom: MacAddress },
    /// Word 0 is not the Realtek ID (absent or garbage EEPROM); IDR is used.
    IdrNoEeprom { id_word: u16 },
}

/// Extra counters beside [`NicCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rtl8139Counters {
    /// RX headers with a length outside 64..=1522 (the ring was reset).
    pub rx_bad_length: u64,
    /// RX headers without ROK or with error bits (dropped, the length trusted to skip it).
    pub rx_errors: u64,
    /// Headers still marked in progress (0xFFF0) when read.
    pub rx_in_progress: u64,
    /// RXOVW / FIFOOVW reports: frames the chip had no room for.
    pub rx_overruns: u64,
    /// The chip's missed-packet count (MPC), read at each overrun: frames it had no room
    /// for (QEMU counts each attempt at a frame it queues and delivers later).
    pub rx_missed: u64,
    /// Frames that ran past the end of the ring: into the slack (WRAP) or wrapped (64 KiB).
    pub rx_past_end: u64,
    /// Resets after a broken RX ring or a stuck TX.
    pub resets: u64,
    /// TX slots completed with TUN or TABT.
    pub tx_errors: u64,
    /// TX slots the chip did not complete in time.
    pub tx_timeouts: u64,
    /// The EEPROM disagreed with IDR, or was absent.
    pub eeprom_mismatch: u64,
    pub eeprom_invalid: u64,
    /// Times the interrupt status could not be cleared (interrupts turned off).
    pub isr_storms: u64,
}

/// The TX slots: one DMA region of [`TX_SLOTS`] buffers, and which are in use.
struct TxSlots {
    buffers: DmaBuffer,
    len: [u16; TX_SLOTS],
    /// When each slot was handed to the chip.
    handed_at: [u64; TX_SLOTS],
    /// Oldest slot not reclaimed.
    clean: usize,
    /// Slots filled (handed over or not).
    used: usize,
    /// Of those, the newest ones not yet handed over.
    unflushed: usize,
}

impl TxSlots {
    fn phys(&self, i: usize) -> u64 {
        self.buffers.phys() + (i * TX_SLOT_SIZE) as u64
    }

    fn buffer(&mut self, i: usize) -> &mut [u8] {
        let start = i * TX_SLOT_SIZE;
        &mut self.buffers.as_mut_slice()[start..start + TX_SLOT_SIZE]
    }

    fn slot(&self, nth_from_clean: usize) -> usize {
        (self.clean + nth_from_clean) % TX_SLOTS
    }

    fn handed_over(&self) -> usize {
        self.used - self.unflushed
    }
}

/// An RTL8139, up and running.
pub struct Rtl8139<'p, P: Platform + ?Sized> {
    platform: &'p P,
    io: u16,
    mac: MacAddress,
    mac_source: MacSource,
    options: Rtl8139Options,
    /// The ring buffer: `rx_buffer.bytes()` plus [`RX_SLACK`].
    rx: DmaBuffer,
    /// Offset of the next header in the ring (the driver's own; CAPR is this minus 16).
    rx_offset: usize,
    /// A frame that wrapped around the end of a 64 KiB ring, put back together.
    rx_scratch: Box<[u8; RX_LENGTH_MAX]>,
    tx: TxSlots,
    link: LinkState,
    vectors: [u8; 1],
    interrupts_on: bool,
    /// Interrupt status seen with no work done since, and for how many interrupts in a row.
    isr_repeat: (u16, u32),
    progress_at_last_interrupt: u64,
    failed: Option<&'static str>,
    counters: NicCounters,
    extra: Rtl8139Counters,
}

impl<'p, P: Platform + ?Sized> Rtl8139<'p, P> {
    /// Bring the device up: I/O decode and bus mastering, reset, MAC, the RX ring and TX
    /// slots, receive and transmit on. Interrupts stay masked until [`Nic::set_interrupts`].
    pub fn new(
        platform: &'p P,
        function: &PciFunction,
        options: Rtl8139Options,
    ) -> Result<Self, Rtl8139Error> {
        if !is_rtl8139(function) {
            return Err(Rtl8139Error::NotRtl8139 {
                vendor_id: function.vendor_id,
                device_id: function.device_id,
            });
        }
        if !REVISIONS.contains(&function.revision) {
            return Err(Rtl8139Error::UnsupportedRevision(function.revision));
        }
        let io = match function.bar(0) {
            Some(Bar::Io { port, size }) if size >= reg::IO_LEN => port,
            _ => return Err(Rtl8139Error::NoRegisterBar),
        };
        let pci = Pci::new(platform);
        pci.enable_io_mem(function.address)?;
        pci.enable_bus_master(function.address)?;

        wake(platform, io);
        reset_chip(platform, io)?;
        let (mac, mac_source) = read_mac(platform, io);

        let rx_len = options.rx_buffer.bytes() + RX_SLACK;
        let rx = platform.dma_alloc(rx_len, 4096)?;
        let tx = match platform.dma_alloc(TX_SLOTS * TX_SLOT_SIZE, 4096) {
            Ok(t) => t,
            Err(e) => {
                platform.dma_free(rx);
                return Err(e.into());
            }
        };
        for end in [rx.phys() + rx.len() as u64, tx.phys() + tx.len() as u64] {
            if end > 1 << 32 {
                platform.dma_free(rx);
                platform.dma_free(tx);
                return Err(Rtl8139Error::DmaAbove4G(end));
            }
        }
        let mut extra = Rtl8139Counters::default();
        match mac_source {
            MacSource::IdrMatchesEeprom => {}
            MacSource::IdrNotEeprom { .. } => extra.eeprom_mismatch += 1,
            MacSource::IdrNoEeprom { .. } => extra.eeprom_invalid += 1,
        }
        let mut nic = Self {
            platform,
            io,
            mac,
            mac_source,
            options,
            rx,
            rx_offset: 0,
            rx_scratch: Box::new([0; RX_LENGTH_MAX]),
            tx: TxSlots {
                buffers: tx,
                len: [0; TX_SLOTS],
                handed_at: [0; TX_SLOTS],
                clean: 0,
                used: 0,
                unflushed: 0,
            },
            link: LinkState::Down,
            vectors: [match options.interrupts {
                Rtl8139Interrupts::Intx { vector } => vector,
                Rtl8139Interrupts::Polled => 0,
            }],
            interrupts_on: false,
            isr_repeat: (0, 0),
            progress_at_last_interrupt: 0,
            failed: None,
            counters: NicCounters::default(),
            extra,
        };
        nic.program();
        Ok(nic)
    }

    fn in8(&self, r: u16) -> u8 {
        self.platform.inb(self.io + r)
    }

    fn in16(&self, r: u16) -> u16 {
        self.platform.inw(self.io + r)
    }

    fn in32(&self, r: u16) -> u32 {
        self.platform.inl(self.io + r)
    }

    fn out8(&self, r: u16, v: u8) {
        self.platform.outb(self.io + r, v)
    }

    fn out16(&self, r: u16, v: u16) {
        self.platform.outw(self.io + r, v)
    }

    fn out32(&self, r: u16, v: u32) {
        self.platform.outl(self.io + r, v)
    }

    /// Everything after reset: the ring, the slots, receive and transmit on.
    fn program(&mut self) {
        self.out16(reg::IMR, 0);
        self.out16(reg::ISR, 0xFFFF);
        // Both addresses were checked to lie below 4 GiB.
        self.out32(reg::RBSTART, self.rx.phys() as u32);
        for i in 0..TX_SLOTS {
            self.out32(tsad(i), self.tx.phys(i) as u32);
        }
        // Receive and transmit on before their configuration: the chip (and QEMU) ignore
        // TCR while the transmitter is off.
        self.out8(reg::CR, (Cr::RE | Cr::TE).bits());
        let rcr = (Rcr::APM | Rcr::AB | Rcr::WRAP).bits()
            | self.options.rx_buffer.rblen() << RCR_RBLEN_SHIFT
            | RCR_MXDMA_UNLIMITED
            | RCR_RXFTH_NONE;
        self.out32(reg::RCR, rcr);
        self.out32(reg::TCR, TCR_IFG_STANDARD | TCR_MXDMA_1024);
        // No multicast groups; the stack needs only our address and broadcasts.
        self.out32(reg::MAR0, 0);
        self.out32(reg::MAR0 + 4, 0);
        self.out32(reg::MPC, 0);
        self.rx_offset = 0;
        self.out16(reg::CAPR, capr_for(0));
        self.tx.clean = 0;
        self.tx.used = 0;
        self.tx.unflushed = 0;
        self.read_link();
        if self.interrupts_on {
            self.out16(reg::IMR, IMR_MASK.bits());
        }
    }

    fn read_link(&mut self) -> LinkState {
        let msr = Msr::from_bits_retain(self.in8(reg::MSR));
        self.link = if msr.contains(Msr::LINKB) {
            LinkState::Down
        } else {
            LinkState::Up
        };
        self.link
    }

    /// Reset the chip and set it up again (the ring emptied, TX in flight lost and counted).
    /// Clears a previous device error if the reset succeeds.
    pub fn reset(&mut self) -> Result<(), Rtl8139Error> {
        self.extra.resets += 1;
        self.counters.tx_drops += self.tx.used as u64;
        if let Err(e) = reset_chip(self.platform, self.io) {
            self.fail("reset did not complete");
            return Err(e);
        }
        self.failed = None;
        self.program();
        Ok(())
    }

    /// The RTL8139-specific counters.
    pub fn extra_counters(&self) -> Rtl8139Counters {
        self.extra
    }

    /// Where the MAC came from.
    pub fn mac_source(&self) -> MacSource {
        self.mac_source
    }

    /// Bytes of the RX ring (without the slack).
    pub fn rx_buffer_bytes(&self) -> usize {
        self.options.rx_buffer.bytes()
    }

    /// For diagnosis: the chip's CR, CAPR, CBR, ISR and IMR, then the driver's RX offset,
    /// the TX slots' TSD and the driver's oldest slot and slots in use.
    pub fn ring_state(&self) -> [u32; 11] {
        [
            u32::from(self.in8(reg::CR)),
            u32::from(self.in16(reg::CAPR)),
            u32::from(self.in16(reg::CBR)),
            u32::from(self.in16(reg::ISR)),
            u32::from(self.in16(reg::IMR)),
            self.rx_offset as u32,
            self.in32(tsd(0)),
            self.in32(tsd(1)),
            self.in32(tsd(2)),
            self.in32(tsd(3)),
            (self.tx.clean << 4 | self.tx.used) as u32,
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

    /// Stop using the device: interrupts masked, receive and transmit off.
    fn fail(&mut self, what: &'static str) -> NicError {
        if self.failed.is_none() {
            self.failed = Some(what);
            self.out16(reg::IMR, 0);
            self.out8(reg::CR, 0);
        }
        NicError::Device(what)
    }

    /// The RX ring cannot be trusted any more (a wild header): reset the chip, which
    /// empties the ring and starts it again at offset 0.
    fn restart_rx(&mut self) -> Result<(), NicError> {
        match self.reset() {
            Ok(()) => Ok(()),
            Err(_) => Err(NicError::Device("reset did not complete")),
        }
    }

    /// Work done so far, to tell an interrupt that brought news from one that repeats.
    fn progress(&self) -> u64 {
        self.counters.rx_packets + self.counters.rx_drops + self.counters.tx_packets
    }

    /// The RX header at `offset` in the ring.
    fn rx_header(&self, offset: usize) -> u32 {
        assert!(offset + RX_HEADER_LEN <= self.rx.len() && offset.is_multiple_of(4));
        // SAFETY: in bounds (checked) and dword-aligned inside the 4096-aligned ring buffer;
        // the chip may write it at any time, hence volatile.
        let raw = unsafe {
            self.rx
                .as_mut_ptr()
                .add(offset)
                .cast::<u32>()
                .read_volatile()
        };
        u32::from_le(raw)
    }

    /// Copy the frame at `offset` (after its header) out of the ring, where it may run past
    /// the end: into the slack (WRAP), or wrapped to the start (64 KiB). `len` excludes the
    /// CRC and is at most [`RX_LENGTH_MAX`].
    fn rx_frame(&mut self, offset: usize, len: usize) -> &[u8] {
        let ring = self.options.rx_buffer.bytes();
        let start = offset + RX_HEADER_LEN;
        let end = start + len + CRC_LEN;
        if end > ring {
            self.extra.rx_past_end += 1;
        }
        if self.options.rx_buffer.wraps_frames() && start + len > ring {
            // The header fits before the end (offset <= ring - 4), so start <= ring.
            let first = ring - start;
            let bytes = self.rx.as_slice();
            self.rx_scratch[..first].copy_from_slice(&bytes[start..ring]);
            self.rx_scratch[first..len].copy_from_slice(&bytes[..len - first]);
            &self.rx_scratch[..len]
        } else {
            // offset < ring and len + CRC <= RX_LENGTH_MAX: inside ring + RX_SLACK.
            &self.rx.as_slice()[start..start + len]
        }
    }
}

/// CAPR for the next header at `offset`: the chip keeps it 16 behind.
fn capr_for(offset: usize) -> u16 {
    (offset as u16).wrapping_sub(16)
}

/// Take the chip out of low-power mode (CONFIG1.PMEN/LWACT off, the driver-loaded bit on):
/// older parts power up asleep. CONFIG1 is writable only with 9346CR in config-write mode.
fn wake<P: Platform + ?Sized>(p: &P, io: u16) {
    p.outb(io + reg::CR9346, Cr9346::CONFIG_WRITE.bits());
    let c1 = Config1::from_bits_retain(p.inb(io + reg::CONFIG1));
    p.outb(
        io + reg::CONFIG1,
        ((c1 | Config1::DVRLOAD) - Config1::PMEN - Config1::LWACT).bits(),
    );
    p.outb(io + reg::CR9346, 0);
}

/// CR.RST, and wait (bounded) for the chip to clear it.
fn reset_chip<P: Platform + ?Sized>(p: &P, io: u16) -> Result<(), Rtl8139Error> {
    p.outw(io + reg::IMR, 0);
    p.outb(io + reg::CR, Cr::RST.bits());
    let start = p.now_ns();
    while Cr::from_bits_retain(p.inb(io + reg::CR)).contains(Cr::RST) {
        if p.now_ns().saturating_sub(start) > RESET_TIMEOUT_NS {
            return Err(Rtl8139Error::ResetTimeout);
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// IDR0..5, checked against the EEPROM's words 7..9 when word 0 holds the Realtek ID.
fn read_mac<P: Platform + ?Sized>(p: &P, io: u16) -> (MacAddress, MacSource) {
    let mut mac = [0u8; 6];
    for (i, b) in mac.iter_mut().enumerate() {
        *b = p.inb(io + reg::IDR0 + i as u16);
    }
    let id_word = eeprom::read_word(p, io, 0);
    if id_word != EEPROM_ID {
        return (mac, MacSource::IdrNoEeprom { id_word });
    }
    let mut from_eeprom = [0u8; 6];
    for (i, pair) in from_eeprom.as_chunks_mut::<2>().0.iter_mut().enumerate() {
        let w = eeprom::read_word(p, io, EEPROM_MAC_WORD + i as u8);
        pair.copy_from_slice(&w.to_le_bytes());
    }
    if from_eeprom == mac {
        (mac, MacSource::IdrMatchesEeprom)
    } else {
        (
            mac,
            MacSource::IdrNotEeprom {
                eeprom: from_eeprom,
            },
        )
    }
}

impl<P: Platform + ?Sized> Drop for Rtl8139<'_, P> {
    fn drop(&mut self) {
        // Stop DMA before the buffers go back to the platform.
        self.out16(reg::IMR, 0);
        self.out8(reg::CR, 0);
        let _ = reset_chip(self.platform, self.io);
        // SAFETY: zero-length buffers are never dereferenced; they stand in for the buffers
        // moved out here and are dropped without going to `dma_free`.
        let empty = || unsafe { DmaBuffer::from_raw_parts(core::ptr::null_mut(), 0, 0) };
        self.platform
            .dma_free(core::mem::replace(&mut self.rx, empty()));
        self.platform
            .dma_free(core::mem::replace(&mut self.tx.buffers, empty()));
    }
}

impl<P: Platform + ?Sized> Nic for Rtl8139<'_, P> {
    fn mac(&self) -> MacAddress {
        self.mac
    }

    fn link(&mut self) -> LinkState {
        self.read_link()
    }

    fn offloads(&self) -> Offloads {
        Offloads::default()
    }

    fn send(&mut self, frame: &[u8], checksum: TxChecksum) -> Result<(), NicError> {
        self.check()?;
        if frame.len() < 14 || frame.len() > ETH_FRAME_MAX.min(TX_FRAME_MAX) {
            self.counters.tx_drops += 1;
            return Err(NicError::BadFrameLength(frame.len()));
        }
        if checksum != TxChecksum::Complete {
            self.counters.tx_drops += 1;
            return Err(NicError::OffloadUnavailable);
        }
        if self.link == LinkState::Down {
            self.counters.tx_drops += 1;
            return Err(NicError::LinkDown);
        }
        if self.tx.used == TX_SLOTS {
            self.reclaim()?;
            if self.tx.used == TX_SLOTS {
                return Err(NicError::TxFull);
            }
        }
        let i = self.tx.slot(self.tx.used);
        let len = frame.len().max(ETH_FRAME_MIN);
        let buf = self.tx.buffer(i);
        buf[..frame.len()].copy_from_slice(frame);
        buf[frame.len()..len].fill(0);
        self.tx.len[i] = len as u16;
        self.tx.used += 1;
        self.tx.unflushed += 1;
        self.counters.tx_packets += 1;
        self.counters.tx_bytes += frame.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), NicError> {
        self.check()?;
        if self.tx.unflushed == 0 {
            return Ok(());
        }
        fence(Ordering::SeqCst);
        let now = self.platform.now_ns();
        // In slot order: the chip sends from its current slot and moves on round robin.
        for n in self.tx.handed_over()..self.tx.used {
            let i = self.tx.slot(n);
            self.tx.handed_at[i] = now;
            // OWN written as 0 hands the slot to the chip.
            self.out32(tsd(i), u32::from(self.tx.len[i]) | TSD_ERTXTH_256);
            self.counters.notifies += 1;
        }
        self.tx.unflushed = 0;
        Ok(())
    }

    fn reclaim(&mut self) -> Result<usize, NicError> {
        self.check()?;
        if self.tx.handed_over() == 0 {
            return Ok(0);
        }
        // One read for the four slots instead of a TSD read each.
        let status = TxSummary(self.in16(reg::TX_SUMMARY));
        let mut n = 0;
        while self.tx.handed_over() > 0 {
            let i = self.tx.clean;
            if status.tun(i) || status.tabt(i) {
                // Lost on the wire; no retransmission (TCR.CLRABT) for a frame the stack
                // will retransmit if it matters.
                self.extra.tx_errors += 1;
                self.counters.tx_drops += 1;
            } else if !status.tok(i) {
                if self.platform.now_ns().saturating_sub(self.tx.handed_at[i]) > TX_TIMEOUT_NS {
                    self.extra.tx_timeouts += 1;
                    self.counters.tx_drops += self.tx.handed_over() as u64;
                    return Err(self.fail("TX slot never completed (TSD without TOK)"));
                }
                break;
            }
            self.tx.clean = (i + 1) % TX_SLOTS;
            self.tx.used -= 1;
            n += 1;
        }
        Ok(n)
    }

    fn tx_in_flight(&self) -> usize {
        self.tx.used
    }

    fn receive(&mut self, deliver: &mut dyn FnMut(&[u8], RxInfo)) -> Result<bool, NicError> {
        self.check()?;
        let ring = self.options.rx_buffer.bytes();
        // Each pass consumes at least a minimum frame of the ring, and consumed headers are
        // zeroed, so a lap of the ring is as far as bad frames can take it.
        for _ in 0..ring / RX_LENGTH_MIN + 1 {
            let offset = self.rx_offset;
            // Consumed headers are zeroed: a zero header means nothing new, without asking
            // the chip (an exit). Anything else may be a frame still being written, or one
            // left from before a reset: CR.BUFE decides, and the header is read again after.
            if self.rx_header(offset) == 0
                || Cr::from_bits_retain(self.in8(reg::CR)).contains(Cr::BUFE)
            {
                return Ok(false);
            }
            fence(Ordering::Acquire);
            let header = self.rx_header(offset);
            let status = RxStatus::from_bits_retain(header as u16);
            let length = (header >> 16) as u16;
            if length == RX_LENGTH_IN_PROGRESS {
                // Still being copied in (early receive): look again next time.
                self.extra.rx_in_progress += 1;
                return Ok(false);
            }
            let length = usize::from(length);
            if !(RX_LENGTH_MIN..=RX_LENGTH_MAX).contains(&length) {
                // Where the next header is cannot be known: start the ring again.
                self.extra.rx_bad_length += 1;
                self.counters.rx_drops += 1;
                self.restart_rx()?;
                return Ok(false);
            }
            let good = status.contains(RxStatus::ROK) && !status.intersects(RxStatus::ERRORS);
            let frame_len = length - CRC_LEN;
            if good {
                let frame = self.rx_frame(offset, frame_len);
                deliver(frame, RxInfo::default());
                self.counters.rx_packets += 1;
                self.counters.rx_bytes += frame_len as u64;
            } else {
                self.extra.rx_errors += 1;
                self.counters.rx_drops += 1;
            }
            // Zeroed, so a stale header is never read as a new one (and the next look at
            // this offset needs no exit).
            // SAFETY: as in `rx_header`: in bounds (offset < ring) and aligned.
            unsafe {
                self.rx
                    .as_mut_ptr()
                    .add(offset)
                    .cast::<u32>()
                    .write_volatile(0)
            };
            let next = (offset + RX_HEADER_LEN + length).next_multiple_of(4) % ring;
            self.rx_offset = next;
            fence(Ordering::SeqCst);
            self.out16(reg::CAPR, capr_for(next));
            self.counters.notifies += 1;
            if good {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn set_interrupts(&mut self, enabled: bool) -> bool {
        if matches!(self.options.interrupts, Rtl8139Interrupts::Polled) {
            return false;
        }
        self.interrupts_on = enabled;
        self.isr_repeat = (0, 0);
        let mask = if enabled { IMR_MASK.bits() } else { 0 };
        self.out16(reg::IMR, mask);
        true
    }

    fn handle_interrupt(&mut self) -> NicEvents {
        let isr = Intr::from_bits_retain(self.in16(reg::ISR));
        if !isr.is_empty() {
            // Write 1 to clear, before looking at the ring, so a frame that lands after
            // this raises a new interrupt.
            self.out16(reg::ISR, isr.bits());
        }
        if self.interrupts_on {
            self.platform.ack_interrupt(self.vectors[0]);
            // ISR latches masked causes too (TOK): only an enabled one raised the line.
            if isr.intersects(IMR_MASK) {
                self.counters.interrupts += 1;
                let progress = self.progress();
                let same =
                    progress == self.progress_at_last_interrupt && self.isr_repeat.0 == isr.bits();
                self.isr_repeat = (isr.bits(), if same { self.isr_repeat.1 + 1 } else { 0 });
                self.progress_at_last_interrupt = progress;
                if self.isr_repeat.1 >= ISR_STORM_LIMIT {
                    // The status comes back however often it is cleared: the line would
                    // fire forever. Poll instead.
                    self.extra.isr_storms += 1;
                    self.interrupts_on = false;
                    self.out16(reg::IMR, 0);
                }
            }
        }
        let mut events = NicEvents::default();
        if isr.contains(Intr::PUN_LINKCHG) {
            self.read_link();
            events.link_changed = true;
        }
        if isr.intersects(Intr::RXOVW | Intr::FIFOOVW) {
            // The chip had no room for a frame and goes on once CAPR moves: the frames
            // already in the ring are good. One drop per report, as the e1000 counts RXO;
            // MPC is kept apart, since QEMU counts a frame it holds back and delivers later
            // there too.
            self.extra.rx_overruns += 1;
            self.counters.rx_drops += 1;
            self.extra.rx_missed += u64::from(self.in32(reg::MPC) & 0xFF_FFFF);
            self.out32(reg::MPC, 0);
        }
        if self.failed.is_none() {
            events.rx = isr.intersects(Intr::ROK | Intr::RER | Intr::RXOVW | Intr::FIFOOVW)
                || !self.interrupts_on;
            events.tx = isr.intersects(Intr::TOK | Intr::TER)
                || (!self.interrupts_on && self.tx.handed_over() > 0);
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
